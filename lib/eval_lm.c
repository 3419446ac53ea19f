/* Perplexity and KD divergence over a tokens stream (eval_lm.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eval_lm.h"
#include "loss.h"

typedef struct lm_window {
    int64_t doc, start; /* tokens start .. start+len−1 of document doc */
    int len;
    int row, offset;    /* packed at row, from offset */
} lm_window;

/* Cut documents into windows of ≤ ctx tokens (≥ 2: a window of one token
 * predicts nothing) and pack them into rows of ctx tokens in order. */
static lm_window *make_windows(const ra_tokens *tk, int ctx, int *n_out, int *rows_out) {
    int n = 0, cap = 64, row = 0, fill = 0;
    lm_window *w = xmalloc((size_t)cap * sizeof *w);
    for (int64_t d = 0; d < tk->n_docs; d++) {
        int64_t len;
        ra_tokens_doc(tk, d, &len);
        for (int64_t s = 0; s + 1 < len; s += ctx) {
            int wl = (int)(len - s < ctx ? len - s : ctx);
            if (wl < 2) continue;
            if (fill + wl > ctx) row++, fill = 0;
            if (n == cap) w = xrealloc(w, (size_t)(cap *= 2) * sizeof *w);
            w[n++] = (lm_window){d, s, wl, row, fill};
            fill += wl;
        }
    }
    *n_out = n;
    *rows_out = n ? row + 1 : 0;
    return w;
}

/* The head mask repeated for B rows (forward opts take one per row). */
static uint8_t *keep_rows(const eval_model *em, int B) {
    if (!em->head_keep) return NULL;
    size_t LH = (size_t)em->m->cfg.num_layers * em->m->cfg.num_heads;
    uint8_t *k = xmalloc(LH * B);
    for (int b = 0; b < B; b++) memcpy(k + LH * b, em->head_keep, LH);
    return k;
}

/* One call's inputs: rows r0..r1−1 of the packing. */
typedef struct lm_call {
    int B, T, n; /* rows, row length, counted positions */
    int32_t *tokens, *doc_start, *counts, *positions, *labels;
} lm_call;

static void fill_call(lm_call *c, const ra_tokens *tk, const lm_window *w, int nw, int *wi, int r0, int r1) {
    c->B = r1 - r0;
    c->T = 0;
    c->n = 0;
    int first = *wi;
    for (int i = first; i < nw && w[i].row < r1; i++)
        if (w[i].offset + w[i].len > c->T) c->T = w[i].offset + w[i].len;
    for (int b = 0; b < c->B; b++) {
        for (int t = 0; t < c->T; t++) { /* padding: one-token documents of id 0 */
            c->tokens[(size_t)b * c->T + t] = 0;
            c->doc_start[(size_t)b * c->T + t] = t;
        }
        c->counts[b] = 0;
    }
    for (; *wi < nw && w[*wi].row < r1; (*wi)++) {
        const lm_window *x = &w[*wi];
        int b = x->row - r0;
        int64_t n;
        const int32_t *ids = ra_tokens_doc(tk, x->doc, &n);
        for (int j = 0; j < x->len; j++) {
            c->tokens[(size_t)b * c->T + x->offset + j] = ids[x->start + j];
            c->doc_start[(size_t)b * c->T + x->offset + j] = x->offset;
        }
        c->counts[b] += x->len - 1;
    }
    /* counted positions in row order, each row's windows in offset order */
    for (int b = 0; b < c->B; b++)
        for (int i = first; i < *wi; i++) {
            if (w[i].row - r0 != b) continue;
            for (int j = 0; j + 1 < w[i].len; j++) {
                c->positions[c->n] = w[i].offset + j;
                c->labels[c->n] = c->tokens[(size_t)b * c->T + w[i].offset + j + 1];
                c->n++;
            }
        }
}

static int run_logits(const eval_model *em, void *state, const lm_call *c, const uint8_t *keep, float *logits,
                      ra_error *err) {
    ra_forward_opts o = {0};
    o.doc_start = c->doc_start;
    o.head_keep = keep;
    o.logits = logits;
    o.logit_counts = c->counts;
    o.logit_positions = c->positions;
    return em->be->run(state, c->tokens, c->B, c->T, &o, err);
}

int eval_lm_run(const eval_model *s, const eval_model *t, const ra_tokens *tk, const eval_lm_opts *o,
                eval_lm_result *res, ra_error *err) {
    int V = s->m->cfg.vocab_size, B = o->batch, ctx = o->ctx;
    memset(res, 0, sizeof *res);
    res->documents = tk->n_docs;
    res->teacher_nll = res->kd = NAN;
    if (t && t->m->cfg.vocab_size != V)
        return ra_fail(err, EX_DATAERR, "the teacher's vocabulary has %d tokens, the model's %d: KL needs the same",
                       t->m->cfg.vocab_size, V);
    int nw, rows;
    lm_window *w = make_windows(tk, ctx, &nw, &rows);
    if (nw == 0) {
        free(w);
        return ra_fail(err, EX_DATAERR, "%s: no document has 2 tokens or more: nothing to predict", tk->name);
    }
    if (B > rows) B = rows;
    size_t n_max = (size_t)B * ctx;
    lm_call c = {0};
    c.tokens = xmalloc(n_max * sizeof(int32_t));
    c.doc_start = xmalloc(n_max * sizeof(int32_t));
    c.positions = xmalloc(n_max * sizeof(int32_t));
    c.labels = xmalloc(n_max * sizeof(int32_t));
    c.counts = xmalloc((size_t)B * sizeof(int32_t));
    float *zs = xmalloc(n_max * V * sizeof(float)), *zt = t ? xmalloc(n_max * V * sizeof(float)) : NULL;
    float *lse = xmalloc(n_max * sizeof(float)), *nll = xmalloc(n_max * sizeof(float));
    float *kl = xmalloc(n_max * sizeof(float));
    uint8_t *keep_s = keep_rows(s, B), *keep_t = t ? keep_rows(t, B) : NULL;
    void *ss = NULL, *ts = NULL;
    int rc = s->be->create(s->m, B, ctx, &ss, err);
    if (!rc && t) rc = t->be->create(t->m, B, ctx, &ts, err);
    double sum_s = 0, sum_t = 0, sum_kl = 0;
    int64_t counted = 0;
    ra_progress p;
    ra_progress_start(&p, t ? "lm (model + teacher)" : "lm", "rows", rows);
    for (int r0 = 0, wi = 0; r0 < rows && !rc; r0 += B) {
        int r1 = r0 + B < rows ? r0 + B : rows;
        fill_call(&c, tk, w, nw, &wi, r0, r1);
        double loss;
        if ((rc = run_logits(s, ss, &c, keep_s, zs, err))) break;
        if ((rc = loss_ce_forward(&loss, lse, nll, NULL, zs, c.labels, c.n, V, -100, 0, err))) break;
        for (int i = 0; i < c.n; i++) sum_s += nll[i];
        if (t) {
            if ((rc = run_logits(t, ts, &c, keep_t, zt, err))) break;
            if ((rc = loss_ce_forward(&loss, lse, nll, NULL, zt, c.labels, c.n, V, -100, 0, err))) break;
            for (int i = 0; i < c.n; i++) sum_t += nll[i];
            loss_kl(kl, zs, zt, c.n, V, 0);
            for (int i = 0; i < c.n; i++) sum_kl += kl[i];
        }
        counted += c.n;
        ra_progress_update(&p, r1);
    }
    if (!rc) ra_progress_finish(&p, rows);
    if (ss) s->be->destroy(ss);
    if (ts) t->be->destroy(ts);
    free(c.tokens), free(c.doc_start), free(c.positions), free(c.labels), free(c.counts);
    free(zs), free(zt), free(lse), free(nll), free(kl), free(keep_s), free(keep_t), free(w);
    if (rc) return rc;
    res->counted = counted;
    res->nll = sum_s / counted;
    if (t) res->teacher_nll = sum_t / counted, res->kd = sum_kl / counted;
    return 0;
}

int eval_lm(const eval_model *s, const eval_model *t, const ra_tokens *tk, const eval_lm_opts *o, eval_results *r,
            ra_error *err) {
    eval_lm_result x;
    int rc = eval_lm_run(s, t, tk, o, &x, err);
    if (rc) return rc;
    const char *cols[] = {"documents", "tokens", "nll", "ppl", "teacher_nll", "teacher_ppl", "kd"};
    eval_table *tab = eval_table_add(r, "lm", "Language modelling", t ? 7 : 4, cols);
    double row[7] = {(double)x.documents, (double)x.counted, x.nll, exp(x.nll), x.teacher_nll, exp(x.teacher_nll),
                     x.kd};
    eval_table_row(tab, row);
    eval_metric(r, row[2], "nll");
    eval_metric(r, row[3], "ppl");
    if (t) {
        eval_metric(r, row[4], "teacher_nll");
        eval_metric(r, row[5], "teacher_ppl");
        eval_metric(r, row[6], "kd");
    }
    return 0;
}
