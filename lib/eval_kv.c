/* KV retrieval accuracy and coverage (eval_kv.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eval_kv.h"
#include "probe.h"

int eval_kv_score(const eval_model *em, const probe_data *d, int batch, double *acc, double *logprob, ra_error *err) {
    probe_outcome *out = xcalloc((size_t)d->n_items, sizeof *out);
    probe_opts po = {batch > 0 ? batch : 16, NULL};
    int rc = probe_eval(em->be, em->m, d, em->head_keep, &po, out, err);
    double a = 0, lp = 0;
    for (int i = 0; i < d->n_items; i++) a += out[i].correct, lp += out[i].logprob;
    *acc = d->n_items ? a / d->n_items : NAN;
    *logprob = d->n_items ? lp / d->n_items : NAN;
    free(out);
    return rc;
}

/* The key part of a metric name of a mode: choice, last_token. */
static const char *mode_key(probe_score_mode m) { return m == PROBE_SCORE_CHOICE ? "choice" : "last_token"; }

static int eval_kv_mode(const eval_model *s, const eval_model *t, ra_tokenizer *tok, const eval_kv_opts *o,
                        probe_score_mode mode, eval_results *r, ra_error *err) {
    const char *key = mode_key(mode);
    const char *cols[] = {"pairs", "samples", "acc", "logprob", "teacher_acc", "coverage"};
    char name[64], title[128];
    snprintf(name, sizeof name, "kv_%s", key);
    snprintf(title, sizeof title, "KV retrieval, %s scoring", probe_score_name(mode));
    eval_table *tab = eval_table_add(r, name, title, t ? 6 : 4, cols);
    double sum_s = 0, sum_t = 0;
    int rc = 0;
    ra_progress p;
    ra_progress_start(&p, title, "pair counts", o->n_pairs);
    for (int i = 0; i < o->n_pairs && !rc; i++) {
        probe_prompts ps;
        probe_data d;
        if ((rc = probe_prompts_generate(o->words, o->seed, o->pairs[i], o->samples, &ps, err))) {
            ra_error_prefix(err, "--pairs %d: ", o->pairs[i]);
            break;
        }
        rc = probe_data_build(&ps, tok, mode, s->m->cfg.vocab_size, &d, err);
        probe_prompts_free(&ps);
        if (rc) break;
        double row[6] = {o->pairs[i], o->samples, 0, 0, NAN, NAN};
        rc = eval_kv_score(s, &d, o->batch, &row[2], &row[3], err);
        if (!rc && t) {
            double tlp;
            rc = eval_kv_score(t, &d, o->batch, &row[4], &tlp, err);
            row[5] = row[2] / row[4];
            sum_t += row[4];
        }
        probe_data_free(&d);
        if (rc) break;
        sum_s += row[2];
        eval_table_row(tab, row);
        eval_metric(r, row[2], "kv_%s_%d_acc", key, o->pairs[i]);
        if (t) eval_metric(r, row[5], "kv_%s_%d_coverage", key, o->pairs[i]);
        ra_progress_update(&p, i + 1);
    }
    if (rc) return rc;
    ra_progress_finish(&p, o->n_pairs);
    eval_metric(r, sum_s / o->n_pairs, "kv_%s_acc", key);
    if (t) {
        eval_metric(r, sum_t / o->n_pairs, "kv_%s_teacher_acc", key);
        eval_metric(r, sum_s / sum_t, "kv_%s_coverage", key);
    }
    return 0;
}

int eval_kv(const eval_model *student, const eval_model *teacher, ra_tokenizer *tok, const eval_kv_opts *o,
            eval_results *r, ra_error *err) {
    for (int mode = PROBE_SCORE_CHOICE; mode <= PROBE_SCORE_LAST_TOKEN; mode++) {
        if (!(o->modes & (1 << mode))) continue;
        int rc = eval_kv_mode(student, teacher, tok, o, (probe_score_mode)mode, r, err);
        if (rc) return rc;
    }
    return 0;
}
