/* Multiple-choice log-likelihood tasks (eval_mc.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eval_jsonl.h"
#include "eval_mc.h"

int eval_mc_load(const char *path, eval_mc_set *out, ra_error *err) {
    memset(out, 0, sizeof *out);
    eval_jsonl *j = xcalloc(1, sizeof *j);
    int rc = eval_jsonl_load(path, j, err);
    if (rc) {
        free(j);
        return rc;
    }
    out->json = j;
    out->path = xstrdup(path);
    eval_name_from_path(path, out->name, sizeof out->name);
    out->items = xcalloc((size_t)j->n, sizeof *out->items);
    for (int i = 0; i < j->n && !rc; i++) {
        eval_mc_item *it = &out->items[i];
        long long gold;
        it->line = j->line[i];
        if ((rc = eval_jsonl_string(j, i, path, "context", &it->context, err))) break;
        json_t *ch = json_object_get(j->obj[i], "choices");
        if (!json_is_array(ch) || json_array_size(ch) == 0) {
            rc = ra_fail(err, EX_DATAERR, "%s:%d: 'choices' must be a non-empty array of strings", path, it->line);
            break;
        }
        if ((rc = eval_jsonl_strings(j, i, path, "choices", &it->choices, &it->n_choices, err))) break;
        out->n++;
        if ((rc = eval_jsonl_int(j, i, path, "gold", &gold, err))) break;
        if (gold < 0 || gold >= it->n_choices) {
            rc = ra_fail(err, EX_DATAERR, "%s:%d: gold %lld is out of range: %d choices, expected 0..%d", path,
                         it->line, gold, it->n_choices, it->n_choices - 1);
            break;
        }
        for (int c = 0; c < it->n_choices && !rc; c++)
            if (!it->choices[c][0]) rc = ra_fail(err, EX_DATAERR, "%s:%d: choice %d is empty", path, it->line, c);
        it->gold = (int)gold;
    }
    if (rc) eval_mc_free(out);
    return rc;
}

void eval_mc_free(eval_mc_set *s) {
    for (int i = 0; i < s->n; i++) free(s->items[i].choices);
    free(s->items);
    free(s->path);
    if (s->json) eval_jsonl_free(s->json);
    free(s->json);
    memset(s, 0, sizeof *s);
}

static int check_ids(const ra_ids *ids, int vocab_size, const eval_mc_set *s, int line, ra_error *err) {
    for (int64_t k = 0; k < ids->n; k++)
        if (ids->v[k] < 0 || ids->v[k] >= vocab_size)
            return ra_fail(err, EX_DATAERR, "%s:%d: token id %d is outside the model's vocabulary (%d): "
                           "the tokenizer does not belong to the model", s->path, line, ids->v[k], vocab_size);
    return 0;
}

int eval_mc_build(const eval_mc_set *s, ra_tokenizer *tok, int vocab_size, probe_data *d, ra_error *err) {
    memset(d, 0, sizeof *d);
    d->mode = PROBE_SCORE_CHOICE;
    ra_ids ctx = {0};
    int rc = 0;
    for (int i = 0; i < s->n && !rc; i++) {
        const eval_mc_item *it = &s->items[i];
        ctx.n = 0;
        if ((rc = ra_tokenizer_encode(tok, it->context, strlen(it->context), 1, &ctx, err))) break;
        if (ctx.n == 0) {
            rc = ra_fail(err, EX_DATAERR, "%s:%d: the context encodes to no tokens (and the tokenizer adds no BOS)",
                         s->path, it->line);
            break;
        }
        if ((rc = check_ids(&ctx, vocab_size, s, it->line, err))) break;
        ra_ids *cand = xcalloc((size_t)it->n_choices, sizeof(ra_ids));
        const int32_t **cv = xmalloc((size_t)it->n_choices * sizeof(int32_t *));
        int *cn = xmalloc((size_t)it->n_choices * sizeof(int));
        for (int c = 0; c < it->n_choices && !rc; c++) {
            rc = probe_continuation_ids(tok, it->context, &ctx, it->choices[c], &cand[c], err);
            if (rc) ra_error_prefix(err, "%s:%d: choice %d: ", s->path, it->line, c);
            else rc = check_ids(&cand[c], vocab_size, s, it->line, err);
            cv[c] = cand[c].v;
            cn[c] = (int)cand[c].n;
        }
        if (!rc) probe_data_add(d, ctx.v, (int)ctx.n, it->n_choices, cv, cn, it->gold);
        for (int c = 0; c < it->n_choices; c++) ra_ids_free(&cand[c]);
        free(cand), free(cv), free(cn);
    }
    ra_ids_free(&ctx);
    if (rc) probe_data_free(d);
    return rc;
}

int eval_mc_score(const eval_model *em, const probe_data *d, const int *cand_chars, int batch, double *acc,
                  double *acc_norm, double *ll, ra_error *err) {
    int n_cand = 0;
    for (int i = 0; i < d->n_items; i++) n_cand += d->items[i].n_cand;
    double *lp = ll ? ll : xmalloc((size_t)n_cand * sizeof(double));
    probe_outcome *out = xcalloc((size_t)d->n_items, sizeof *out);
    probe_opts po = {batch > 0 ? batch : 16, NULL};
    int rc = probe_eval_candidates(em->be, em->m, d, em->head_keep, &po, out, lp, err);
    int hits = 0, hits_norm = 0;
    for (int i = 0, base = 0; i < d->n_items && !rc; base += d->items[i++].n_cand) {
        const probe_item *it = &d->items[i];
        int best = 0, best_norm = 0;
        for (int c = 1; c < it->n_cand; c++) {
            if (lp[base + c] > lp[base + best]) best = c;
            if (lp[base + c] / cand_chars[base + c] > lp[base + best_norm] / cand_chars[base + best_norm]) best_norm = c;
        }
        hits += best == it->correct;
        hits_norm += best_norm == it->correct;
    }
    *acc = (double)hits / d->n_items;
    *acc_norm = (double)hits_norm / d->n_items;
    free(out);
    if (!ll) free(lp);
    return rc;
}

/* Unicode code points of a UTF-8 string (continuation bytes not counted). */
static int utf8_chars(const char *s) {
    int n = 0;
    for (; *s; s++) n += ((unsigned char)*s & 0xC0) != 0x80;
    return n > 0 ? n : 1;
}

int eval_mc(const eval_model *s, const eval_model *t, ra_tokenizer *tok, const eval_mc_set *set, int batch,
            eval_results *r, ra_error *err) {
    probe_data d;
    int rc = eval_mc_build(set, tok, s->m->cfg.vocab_size, &d, err);
    if (rc) return rc;
    int n_cand = 0;
    for (int i = 0; i < set->n; i++) n_cand += set->items[i].n_choices;
    int *chars = xmalloc((size_t)n_cand * sizeof(int));
    for (int i = 0, k = 0; i < set->n; i++)
        for (int c = 0; c < set->items[i].n_choices; c++) chars[k++] = utf8_chars(set->items[i].choices[c]);
    double row[5] = {set->n, 0, 0, NAN, NAN};
    if (!ra_progress_quiet) fprintf(stderr, "%s: mc %s: %d items\n", ra_progname, set->name, set->n);
    rc = eval_mc_score(s, &d, chars, batch, &row[1], &row[2], NULL, err);
    if (!rc && t) rc = eval_mc_score(t, &d, chars, batch, &row[3], &row[4], NULL, err);
    free(chars);
    probe_data_free(&d);
    if (rc) return rc;
    const char *cols[] = {"items", "acc", "acc_norm", "teacher_acc", "teacher_acc_norm"};
    char name[80], title[128];
    snprintf(name, sizeof name, "mc_%s", set->name);
    snprintf(title, sizeof title, "Multiple choice: %s", set->name);
    eval_table_row(eval_table_add(r, name, title, t ? 5 : 3, cols), row);
    eval_metric(r, row[1], "mc_%s_acc", set->name);
    eval_metric(r, row[2], "mc_%s_acc_norm", set->name);
    if (t) {
        eval_metric(r, row[3], "mc_%s_teacher_acc", set->name);
        eval_metric(r, row[4], "mc_%s_teacher_acc_norm", set->name);
    }
    return 0;
}
