/* ra-probe's engine: prompt rows and targets, scoring from logits, plain
 * evaluation and exact ablation with a cached residual stream.  The
 * attribution backward lives in probe_attribution.c. */
#include "probe.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "atomic_file.h"
#include "tokenizer.h"

/* ------------------------------------------------------------ data building */

static probe_row *new_row(probe_data *d, int prompt, const int32_t *a, int na, const int32_t *b, int nb,
                          int n_scored) {
    d->rows = xrealloc(d->rows, (size_t)(d->n_rows + 1) * sizeof(probe_row));
    probe_row *r = &d->rows[d->n_rows++];
    r->prompt = prompt;
    r->n_tokens = na + nb;
    r->tokens = xmalloc((size_t)(na + nb) * sizeof(int32_t));
    memcpy(r->tokens, a, (size_t)na * sizeof(int32_t));
    if (nb) memcpy(r->tokens + na, b, (size_t)nb * sizeof(int32_t));
    r->n_scored = n_scored;
    r->scored_base = d->n_scored;
    d->n_scored += n_scored;
    if (r->n_tokens > d->max_tokens) d->max_tokens = r->n_tokens;
    if (n_scored > d->max_scored_per_row) d->max_scored_per_row = n_scored;
    return r;
}

/* Is (a, na) a prefix of (b, nb)? */
static int is_prefix(const int32_t *a, int na, const int32_t *b, int nb) {
    return na <= nb && memcmp(a, b, (size_t)na * sizeof(int32_t)) == 0;
}

typedef struct prefix_ref {
    const int32_t *t;
    int n;
} prefix_ref;

void probe_data_add(probe_data *d, const int32_t *prompt, int n_prompt, int n_cand, const int32_t *const *cand,
                    const int *cand_len, int correct) {
    int index = d->n_items;
    d->items = xrealloc(d->items, (size_t)(d->n_items + 1) * sizeof(probe_item));
    probe_item *it = &d->items[d->n_items++];
    memset(it, 0, sizeof *it);
    it->first_row = d->n_rows;
    it->n_cand = n_cand;
    it->correct = correct;
    it->cand_start = xmalloc((size_t)(n_cand + 1) * sizeof(int));
    int n_targets = 0;
    for (int c = 0; c < n_cand; c++) n_targets += d->mode == PROBE_SCORE_CHOICE ? cand_len[c] : 1;
    it->targets = xmalloc((size_t)n_targets * sizeof(probe_target));

    if (d->mode == PROBE_SCORE_LAST_TOKEN) {
        int m = cand_len[0];
        new_row(d, index, prompt, n_prompt, cand[0], m - 1, 1);
        it->n_rows = 1;
        it->cand_start[0] = 0;
        it->cand_start[1] = 1;
        it->targets[0] = (probe_target){it->first_row, n_prompt - 1 + m - 1, cand[0][m - 1]};
        goto done;
    }

    /* choice: the maximal proper prefixes of the candidates become rows */
    int n_pre = 0;
    prefix_ref *pre = xmalloc((size_t)(n_targets + 1) * sizeof(prefix_ref));
    for (int c = 0; c < n_cand; c++)
        for (int i = 1; i < cand_len[c]; i++) pre[n_pre++] = (prefix_ref){cand[c], i};
    int n_max = 0;
    for (int i = 0; i < n_pre; i++) {
        int absorbed = 0;
        for (int j = 0; j < n_pre && !absorbed; j++) {
            if (i == j || !is_prefix(pre[i].t, pre[i].n, pre[j].t, pre[j].n)) continue;
            /* absorbed by a longer one, or by an equal one that comes first */
            absorbed = pre[j].n > pre[i].n || j < i;
        }
        if (!absorbed) pre[n_max++] = pre[i]; /* n_max <= i: compaction in place is safe */
    }
    if (n_max == 0) new_row(d, index, prompt, n_prompt, NULL, 0, 1);
    for (int i = 0; i < n_max; i++) new_row(d, index, prompt, n_prompt, pre[i].t, pre[i].n, pre[i].n + 1);
    it->n_rows = d->n_rows - it->first_row;
    int t = 0;
    for (int c = 0; c < n_cand; c++) {
        it->cand_start[c] = t;
        for (int i = 0; i < cand_len[c]; i++) {
            /* a row whose prefix (after the prompt) starts with cand[c][:i] */
            int row = it->first_row;
            for (int r = 0; r < n_max; r++)
                if (is_prefix(cand[c], i, pre[r].t, pre[r].n)) {
                    row = it->first_row + r;
                    break;
                }
            it->targets[t++] = (probe_target){row, n_prompt - 1 + i, cand[c][i]};
        }
    }
    it->cand_start[n_cand] = t;
    free(pre);
done:
    if (it->n_rows > d->max_rows_per_item) d->max_rows_per_item = it->n_rows;
}

void probe_data_free(probe_data *d) {
    for (int i = 0; i < d->n_items; i++) {
        free(d->items[i].cand_start);
        free(d->items[i].targets);
    }
    for (int r = 0; r < d->n_rows; r++) free(d->rows[r].tokens);
    free(d->items);
    free(d->rows);
    memset(d, 0, sizeof *d);
}

static int check_ids(const ra_ids *ids, int vocab_size, int prompt, ra_error *err) {
    for (int64_t i = 0; i < ids->n; i++)
        if (ids->v[i] < 0 || ids->v[i] >= vocab_size)
            return ra_fail(err, EX_DATAERR,
                           "prompt %d: token id %d is outside the teacher's vocabulary (vocab_size %d): "
                           "tokenizer.json does not belong to this model",
                           prompt + 1, ids->v[i], vocab_size);
    return 0;
}

/* Tokens of `cont` after `prompt`: the tail of encode(prompt + cont) when
 * encode(prompt) is its prefix, else encode(cont) alone. */
int probe_continuation_ids(ra_tokenizer *tok, const char *prompt, const ra_ids *prompt_ids, const char *cont,
                           ra_ids *out, ra_error *err) {
    size_t np = strlen(prompt), nc = strlen(cont);
    char *full = xmalloc(np + nc + 1);
    memcpy(full, prompt, np);
    memcpy(full + np, cont, nc + 1);
    ra_ids all = {0};
    int rc = ra_tokenizer_encode(tok, full, np + nc, 1, &all, err);
    free(full);
    out->n = 0;
    if (rc) return rc;
    if (all.n > prompt_ids->n && memcmp(all.v, prompt_ids->v, (size_t)prompt_ids->n * sizeof(int32_t)) == 0) {
        for (int64_t i = prompt_ids->n; i < all.n; i++) ra_ids_push(out, all.v[i]);
    } else {
        rc = ra_tokenizer_encode(tok, cont, nc, 0, out, err);
    }
    ra_ids_free(&all);
    if (!rc && out->n == 0) rc = ra_fail(err, EX_DATAERR, "continuation '%s' encodes to no tokens", cont);
    return rc;
}

int probe_data_build(const probe_prompts *ps, ra_tokenizer *tok, probe_score_mode mode, int vocab_size,
                     probe_data *out, ra_error *err) {
    memset(out, 0, sizeof *out);
    out->mode = mode;
    int rc = 0;
    ra_ids p = {0};
    int K = ps->pairs;
    ra_ids *cand = xcalloc((size_t)K, sizeof(ra_ids));
    const int32_t **cand_v = xmalloc((size_t)K * sizeof(int32_t *));
    int *cand_n = xmalloc((size_t)K * sizeof(int));
    for (int i = 0; i < ps->n && !rc; i++) {
        const probe_prompt *pr = &ps->p[i];
        p.n = 0;
        if ((rc = ra_tokenizer_encode(tok, pr->text, strlen(pr->text), 1, &p, err))) break;
        if ((rc = check_ids(&p, vocab_size, i, err))) break;
        int n_cand = mode == PROBE_SCORE_CHOICE ? K : 1;
        for (int c = 0; c < n_cand && !rc; c++) {
            char buf[16];
            int value = mode == PROBE_SCORE_CHOICE ? pr->value[c] : probe_answer(pr);
            rc = probe_continuation_ids(tok, pr->text, &p, probe_continuation(value, mode, buf), &cand[c], err);
            if (!rc) rc = check_ids(&cand[c], vocab_size, i, err);
            cand_v[c] = cand[c].v;
            cand_n[c] = (int)cand[c].n;
        }
        if (rc) break;
        probe_data_add(out, p.v, (int)p.n, n_cand, cand_v, cand_n, mode == PROBE_SCORE_CHOICE ? pr->query : 0);
    }
    for (int c = 0; c < K; c++) ra_ids_free(&cand[c]);
    free(cand);
    free(cand_v);
    free(cand_n);
    ra_ids_free(&p);
    if (rc) probe_data_free(out);
    return rc;
}

int probe_data_dump_json(const probe_data *d, const char *path, ra_error *err) {
    json_t *root = json_object(), *rows = json_array(), *items = json_array();
    json_object_set_new(root, "mode", json_string(probe_score_name(d->mode)));
    for (int r = 0; r < d->n_rows; r++) {
        json_t *row = json_array();
        for (int t = 0; t < d->rows[r].n_tokens; t++) json_array_append_new(row, json_integer(d->rows[r].tokens[t]));
        json_array_append_new(rows, row);
    }
    for (int i = 0; i < d->n_items; i++) {
        const probe_item *it = &d->items[i];
        json_t *cands = json_array();
        for (int c = 0; c < it->n_cand; c++) {
            json_t *cand = json_array();
            for (int t = it->cand_start[c]; t < it->cand_start[c + 1]; t++)
                json_array_append_new(cand, json_pack("[i, i, i]", it->targets[t].row, it->targets[t].pos,
                                                      it->targets[t].token));
            json_array_append_new(cands, cand);
        }
        json_array_append_new(items, json_pack("{s:i, s:i, s:i, s:o}", "first_row", it->first_row, "n_rows",
                                               it->n_rows, "correct", it->correct, "candidates", cands));
    }
    json_object_set_new(root, "rows", rows);
    json_object_set_new(root, "items", items);
    char *text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    int rc = 0;
    if (!strcmp(path, "-")) {
        if (fputs(text, stdout) < 0 || fputc('\n', stdout) < 0 || fflush(stdout))
            rc = ra_fail(err, EX_IOERR, "stdout: write failed");
    } else {
        size_t n = strlen(text);
        text[n] = '\n'; /* replaces the NUL: written with its length */
        rc = ra_write_file_atomic(path, text, n + 1, err);
    }
    free(text);
    return rc;
}

/* ---------------------------------------------------------------- scoring */

/* Per scored position: log-sum-exp (double) and argmax of its logits row. */
static void row_stats(const float *z, int V, double *lse, int32_t *argmax) {
    float mx = z[0];
    int32_t am = 0;
    for (int v = 1; v < V; v++)
        if (z[v] > mx) mx = z[v], am = v;
    double s = 0;
    for (int v = 0; v < V; v++) s += exp((double)z[v] - mx);
    *lse = mx + log(s);
    *argmax = am;
}

int probe_item_target_scored(const probe_data *d, const probe_item *it, int t) {
    const probe_target *tg = &it->targets[t];
    const probe_row *row = &d->rows[tg->row];
    return row->scored_base - d->rows[it->first_row].scored_base + tg->pos - (row->n_tokens - row->n_scored);
}

int probe_item_n_scored(const probe_data *d, const probe_item *it) {
    const probe_row *last = &d->rows[it->first_row + it->n_rows - 1];
    return last->scored_base + last->n_scored - d->rows[it->first_row].scored_base;
}

probe_outcome probe_item_outcome(const probe_data *d, const probe_item *it, const double *lse, const int32_t *argmax,
                                 const float *target_logit) {
    probe_outcome o = {0, 0};
    double best = -INFINITY;
    int best_c = -1;
    for (int c = 0; c < it->n_cand; c++) {
        double lp = 0;
        int top1 = 0;
        for (int t = it->cand_start[c]; t < it->cand_start[c + 1]; t++) {
            int k = probe_item_target_scored(d, it, t);
            lp += (double)target_logit[t] - lse[k];
            top1 = argmax[k] == it->targets[t].token;
        }
        if (c == it->correct) {
            o.logprob = lp;
            if (d->mode == PROBE_SCORE_LAST_TOKEN) o.correct = (uint8_t)top1;
        }
        if (lp > best) best = lp, best_c = c;
    }
    if (d->mode == PROBE_SCORE_CHOICE) o.correct = best_c == it->correct;
    return o;
}

void probe_item_cand_logprobs(const probe_data *d, const probe_item *it, const double *lse, const float *target_logit,
                              double *out) {
    for (int c = 0; c < it->n_cand; c++) {
        double lp = 0;
        for (int t = it->cand_start[c]; t < it->cand_start[c + 1]; t++)
            lp += (double)target_logit[t] - lse[probe_item_target_scored(d, it, t)];
        out[c] = lp;
    }
}

/* The outcome of one item from the logits of its rows.  slot_logit[r] is the
 * logits row (in the call's logits buffer) of the first scored position of
 * the item's r-th row.  lse_buf / am_buf / tl_buf: scratch. */
static probe_outcome item_outcome(const probe_data *d, const probe_item *it, const float *logits, int V,
                                  const int *slot_logit, double *lse_buf, int32_t *am_buf, float *tl_buf,
                                  double *cand_logprob) {
    int n = 0;
    for (int r = 0; r < it->n_rows; r++) {
        const probe_row *row = &d->rows[it->first_row + r];
        for (int j = 0; j < row->n_scored; j++, n++)
            row_stats(logits + (size_t)(slot_logit[r] + j) * V, V, &lse_buf[n], &am_buf[n]);
    }
    int n_targets = it->cand_start[it->n_cand];
    for (int t = 0; t < n_targets; t++) {
        const probe_target *tg = &it->targets[t];
        const probe_row *row = &d->rows[tg->row];
        int j = tg->pos - (row->n_tokens - row->n_scored);
        tl_buf[t] = logits[(size_t)(slot_logit[tg->row - it->first_row] + j) * V + tg->token];
    }
    if (cand_logprob) probe_item_cand_logprobs(d, it, lse_buf, tl_buf, cand_logprob);
    return probe_item_outcome(d, it, lse_buf, am_buf, tl_buf);
}

/* ---------------------------------------------------------------- calls */

/* One forward call: rows of units (item, ablated head or -1), padded to T. */
typedef struct probe_call {
    int B, T;
    int32_t *tokens;      /* [B_max * T_max] */
    float *start;         /* [B_max * T_max * D] (exact at layer > 0) */
    uint8_t *keep;        /* [B_max * layers * H] */
    int32_t *counts;      /* [B_max] */
    int32_t *positions;   /* [B_max * max_scored] */
    float *logits;        /* [B_max * max_scored * V] */
    int *slot_logit;      /* [B_max]: logits row of each slot's first scored position */
    double *lse;          /* [max scored per item] */
    int32_t *am;
    float *tl;            /* [max targets per item] */
} probe_call;

static void call_alloc(probe_call *c, const ra_model *m, const probe_data *d, int B_max, int with_start) {
    int L = m->cfg.num_layers, H = m->cfg.num_heads, D = m->cfg.hidden_size, V = m->cfg.vocab_size;
    size_t tok = (size_t)B_max * d->max_tokens, sc = (size_t)B_max * d->max_scored_per_row;
    memset(c, 0, sizeof *c);
    c->tokens = xcalloc(tok, sizeof(int32_t));
    c->start = with_start ? xmalloc(tok * D * sizeof(float)) : NULL;
    c->keep = xmalloc((size_t)B_max * L * H);
    c->counts = xmalloc((size_t)B_max * sizeof(int32_t));
    c->positions = xmalloc(sc * sizeof(int32_t));
    c->logits = xmalloc(sc * V * sizeof(float));
    c->slot_logit = xmalloc((size_t)B_max * sizeof(int));
    int per_item = d->max_rows_per_item * d->max_scored_per_row;
    c->lse = xmalloc((size_t)per_item * sizeof(double));
    c->am = xmalloc((size_t)per_item * sizeof(int32_t));
    int max_targets = 1;
    for (int i = 0; i < d->n_items; i++)
        if (d->items[i].cand_start[d->items[i].n_cand] > max_targets) max_targets = d->items[i].cand_start[d->items[i].n_cand];
    c->tl = xmalloc((size_t)max_targets * sizeof(float));
}

static void call_free(probe_call *c) {
    free(c->tokens);
    free(c->start);
    free(c->keep);
    free(c->counts);
    free(c->positions);
    free(c->logits);
    free(c->slot_logit);
    free(c->lse);
    free(c->am);
    free(c->tl);
}

/* Place row r at slot b of the call: tokens (padded with id 0), its scored
 * positions; returns the next logits row. */
static int call_place_row(probe_call *c, const probe_data *d, int b, int r, int logit_row, int *npos) {
    const probe_row *row = &d->rows[r];
    int32_t *t = c->tokens + (size_t)b * c->T;
    memcpy(t, row->tokens, (size_t)row->n_tokens * sizeof(int32_t));
    memset(t + row->n_tokens, 0, (size_t)(c->T - row->n_tokens) * sizeof(int32_t));
    c->counts[b] = row->n_scored;
    for (int j = 0; j < row->n_scored; j++) c->positions[(*npos)++] = row->n_tokens - row->n_scored + j;
    c->slot_logit[b] = logit_row;
    return logit_row + row->n_scored;
}

static int batch_rows(const probe_opts *o, const probe_data *d) {
    int b = o && o->batch > 0 ? o->batch : 16;
    return b < d->max_rows_per_item ? d->max_rows_per_item : b;
}

int probe_eval(const ra_forward_backend *be, const ra_model *m, const probe_data *d, const uint8_t *head_keep,
               const probe_opts *o, probe_outcome *out, ra_error *err) {
    return probe_eval_candidates(be, m, d, head_keep, o, out, NULL, err);
}

int probe_eval_candidates(const ra_forward_backend *be, const ra_model *m, const probe_data *d,
                          const uint8_t *head_keep, const probe_opts *o, probe_outcome *out, double *cand_logprob,
                          ra_error *err) {
    /* cand_logprob: item i's candidates start at the sum of the earlier items' n_cand */
    int *cand_base = NULL;
    if (cand_logprob) {
        cand_base = xmalloc(((size_t)d->n_items + 1) * sizeof(int));
        cand_base[0] = 0;
        for (int i = 0; i < d->n_items; i++) cand_base[i + 1] = cand_base[i] + d->items[i].n_cand;
    }
    int L = m->cfg.num_layers, H = m->cfg.num_heads, V = m->cfg.vocab_size;
    int B_max = batch_rows(o, d);
    void *state;
    int rc = be->create(m, B_max, d->max_tokens, &state, err);
    if (rc) return rc;
    probe_call c;
    call_alloc(&c, m, d, B_max, 0);
    for (int i0 = 0; i0 < d->n_items && !rc;) {
        /* as many whole items as fit */
        int i1 = i0, rows = 0;
        c.T = 0;
        while (i1 < d->n_items && rows + d->items[i1].n_rows <= B_max) {
            const probe_item *it = &d->items[i1];
            for (int r = 0; r < it->n_rows; r++)
                if (d->rows[it->first_row + r].n_tokens > c.T) c.T = d->rows[it->first_row + r].n_tokens;
            rows += it->n_rows;
            i1++;
        }
        int b = 0, lrow = 0, npos = 0;
        for (int i = i0; i < i1; i++)
            for (int r = 0; r < d->items[i].n_rows; r++, b++) {
                lrow = call_place_row(&c, d, b, d->items[i].first_row + r, lrow, &npos);
                if (head_keep) memcpy(c.keep + (size_t)b * L * H, head_keep, (size_t)L * H);
            }
        ra_forward_opts fo = {0};
        fo.head_keep = head_keep ? c.keep : NULL;
        fo.logits = c.logits;
        fo.logit_counts = c.counts;
        fo.logit_positions = c.positions;
        if ((rc = be->run(state, c.tokens, rows, c.T, &fo, err))) break;
        b = 0;
        for (int i = i0; i < i1; i++) {
            out[i] = item_outcome(d, &d->items[i], c.logits, V, c.slot_logit + b, c.lse, c.am, c.tl,
                                  cand_logprob ? cand_logprob + cand_base[i] : NULL);
            b += d->items[i].n_rows;
        }
        i0 = i1;
    }
    call_free(&c);
    be->destroy(state);
    free(cand_base);
    return rc;
}

/* ------------------------------------------------------------ exact ablation */

typedef struct unit {
    int item, head; /* head −1: no ablation */
} unit;

int probe_exact(const ra_forward_backend *be, const ra_model *m, const probe_data *d, const uint8_t *measure,
                const probe_opts *o, probe_exact_result *res, ra_error *err) {
    int L = m->cfg.num_layers, H = m->cfg.num_heads, V = m->cfg.vocab_size, D = m->cfg.hidden_size;
    int B_max = batch_rows(o, d), N = d->n_items;
    void *state;
    int rc = be->create(m, B_max, d->max_tokens, &state, err);
    if (rc) return rc;
    probe_call c;
    call_alloc(&c, m, d, B_max, 1);
    /* residual entering each layer for the rows of one chunk: [B_max, T, D] per layer */
    float **cache = xcalloc((size_t)L + 1, sizeof(float *));
    for (int l = 1; l < L; l++) cache[l] = xmalloc((size_t)B_max * d->max_tokens * D * sizeof(float));
    double *sum_acc = xcalloc((size_t)L * H, sizeof(double)), *sum_lp = xcalloc((size_t)L * H, sizeof(double));
    int *chunk_slot = xmalloc((size_t)N * sizeof(int)); /* first cache row of each item in its chunk */
    unit *units = xmalloc((size_t)B_max * H * sizeof(unit));
    int64_t done = 0;

    for (int i0 = 0; i0 < N && !rc;) {
        /* a chunk: whole items filling at most B_max rows; its baseline run
         * fills the cache */
        int i1 = i0, rows = 0, T = 0;
        while (i1 < N && rows + d->items[i1].n_rows <= B_max) {
            const probe_item *it = &d->items[i1];
            chunk_slot[i1] = rows;
            for (int r = 0; r < it->n_rows; r++)
                if (d->rows[it->first_row + r].n_tokens > T) T = d->rows[it->first_row + r].n_tokens;
            rows += it->n_rows;
            i1++;
        }
        c.T = T;
        int b = 0, lrow = 0, npos = 0;
        for (int i = i0; i < i1; i++)
            for (int r = 0; r < d->items[i].n_rows; r++, b++)
                lrow = call_place_row(&c, d, b, d->items[i].first_row + r, lrow, &npos);
        ra_forward_opts fo = {0};
        fo.hidden_out = cache;
        fo.logits = c.logits;
        fo.logit_counts = c.counts;
        fo.logit_positions = c.positions;
        if ((rc = be->run(state, c.tokens, rows, T, &fo, err))) break;
        b = 0;
        for (int i = i0; i < i1; i++) {
            res->base[i] = item_outcome(d, &d->items[i], c.logits, V, c.slot_logit + b, c.lse, c.am, c.tl, NULL);
            b += d->items[i].n_rows;
        }

        /* ablations, layer by layer, starting from the cached residual */
        for (int l = 0; l < L && !rc; l++) {
            int nu = 0;
            for (int i = i0; i < i1; i++)
                for (int h = 0; h < H; h++)
                    if (!measure || measure[l * H + h]) units[nu++] = (unit){i, h};
            for (int u0 = 0; u0 < nu && !rc;) {
                int u1 = u0;
                b = 0, lrow = 0, npos = 0;
                while (u1 < nu && b + d->items[units[u1].item].n_rows <= B_max) {
                    const probe_item *it = &d->items[units[u1].item];
                    for (int r = 0; r < it->n_rows; r++, b++) {
                        int slot = chunk_slot[units[u1].item] + r;
                        lrow = call_place_row(&c, d, b, it->first_row + r, lrow, &npos);
                        if (l > 0)
                            memcpy(c.start + (size_t)b * T * D, cache[l] + (size_t)slot * T * D,
                                   (size_t)T * D * sizeof(float));
                        uint8_t *k = c.keep + (size_t)b * L * H;
                        memset(k, 1, (size_t)L * H);
                        k[l * H + units[u1].head] = 0;
                    }
                    u1++;
                }
                ra_forward_opts ao = {0};
                ao.head_keep = c.keep;
                ao.start_layer = l;
                ao.start_hidden = l > 0 ? c.start : NULL;
                ao.logits = c.logits;
                ao.logit_counts = c.counts;
                ao.logit_positions = c.positions;
                if ((rc = be->run(state, c.tokens, b, T, &ao, err))) break;
                b = 0;
                for (int u = u0; u < u1; u++) {
                    int i = units[u].item, h = units[u].head;
                    probe_outcome a = item_outcome(d, &d->items[i], c.logits, V, c.slot_logit + b, c.lse, c.am, c.tl, NULL);
                    b += d->items[i].n_rows;
                    sum_acc[l * H + h] += (double)res->base[i].correct - a.correct;
                    sum_lp[l * H + h] += res->base[i].logprob - a.logprob;
                    if (res->per_head) res->per_head[((size_t)l * H + h) * N + i] = a;
                }
                done += u1 - u0;
                if (o && o->progress) ra_progress_update(o->progress, done);
                u0 = u1;
            }
        }
        i0 = i1;
    }
    for (int i = 0; i < L * H; i++)
        if (!measure || measure[i]) {
            res->acc_drop[i] = (float)(sum_acc[i] / N);
            res->logprob_drop[i] = (float)(sum_lp[i] / N);
        }
    for (int l = 0; l <= L; l++) free(cache[l]);
    free(cache);
    free(sum_acc);
    free(sum_lp);
    free(chunk_slot);
    free(units);
    call_free(&c);
    be->destroy(state);
    return rc;
}

/* ---------------------------------------------------------------- Spearman */

static const float *rank_keys;
static int cmp_by_key(const void *a, const void *b) {
    float x = rank_keys[*(const int *)a], y = rank_keys[*(const int *)b];
    return (x > y) - (x < y);
}

/* Average ranks (1-based) with ties sharing their mean rank. */
static void ranks(const float *v, int n, double *r) {
    int *idx = xmalloc((size_t)n * sizeof(int));
    for (int i = 0; i < n; i++) idx[i] = i;
    rank_keys = v;
    qsort(idx, (size_t)n, sizeof(int), cmp_by_key);
    for (int i = 0; i < n;) {
        int j = i;
        while (j + 1 < n && v[idx[j + 1]] == v[idx[i]]) j++;
        for (int k = i; k <= j; k++) r[idx[k]] = (i + j) / 2.0 + 1;
        i = j + 1;
    }
    free(idx);
}

double probe_spearman(const float *a, const float *b, int n) {
    double *ra = xmalloc((size_t)n * sizeof(double)), *rb = xmalloc((size_t)n * sizeof(double));
    ranks(a, n, ra);
    ranks(b, n, rb);
    double ma = 0, mb = 0, sab = 0, saa = 0, sbb = 0;
    for (int i = 0; i < n; i++) ma += ra[i], mb += rb[i];
    ma /= n, mb /= n;
    for (int i = 0; i < n; i++) {
        sab += (ra[i] - ma) * (rb[i] - mb);
        saa += (ra[i] - ma) * (ra[i] - ma);
        sbb += (rb[i] - mb) * (rb[i] - mb);
    }
    free(ra);
    free(rb);
    return saa > 0 && sbb > 0 ? sab / sqrt(saa * sbb) : NAN;
}
