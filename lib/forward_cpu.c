/* The forward pass on the CPU: fp32 activations, OpenBLAS GEMMs for every
 * projection and the LM head, OpenMP inside the ops (lib/ops_cpu.c). */
#include <stdlib.h>
#include <string.h>

#include "forward.h"
#include "ops.h"

ra_forward_state *ra_forward_state_create(const ra_model *m, int B_max, int T_max) {
    const hf_config *c = &m->cfg;
    ra_forward_state *s = xcalloc(1, sizeof *s);
    s->m = m;
    s->B_max = B_max;
    s->T_max = T_max;
    size_t n = (size_t)B_max * T_max, D = c->hidden_size, hd = c->head_dim;
    size_t qd = (size_t)c->num_heads * hd, kvd = (size_t)c->num_kv_heads * hd, I = c->intermediate_size;
    s->x = xmalloc(n * D * sizeof(float));
    s->xn = xmalloc(n * D * sizeof(float));
    s->q = xmalloc(n * qd * sizeof(float));
    s->k = xmalloc(n * kvd * sizeof(float));
    s->v = xmalloc(n * kvd * sizeof(float));
    s->att = xmalloc(n * qd * sizeof(float));
    s->proj = xmalloc(n * D * sizeof(float));
    s->gate = xmalloc(n * I * sizeof(float));
    s->up = xmalloc(n * I * sizeof(float));
    s->inv_freq = xmalloc(hd / 2 * sizeof(float));
    s->cos_t = xmalloc(n * (hd / 2) * sizeof(float));
    s->sin_t = xmalloc(n * (hd / 2) * sizeof(float));
    s->positions = xmalloc(n * sizeof(int32_t));
    s->keep = xmalloc((size_t)B_max * c->num_heads);
    s->hq = xmalloc(n * hd * sizeof(float));
    s->hk = xmalloc(n * hd * sizeof(float));
    s->hv = xmalloc(n * hd * sizeof(float));
    s->ho = xmalloc(n * hd * sizeof(float));
    s->sel = xmalloc(n * D * sizeof(float));
    rope_inv_freq(s->inv_freq, (int)hd, c);
    return s;
}

void ra_forward_state_free(ra_forward_state *s) {
    if (!s) return;
    float *bufs[] = {s->x,  s->xn,       s->q,     s->k,     s->v,  s->att, s->proj, s->gate, s->up,
                     s->inv_freq, s->cos_t, s->sin_t, s->hq, s->hk, s->hv,  s->ho,   s->sel};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(s->positions);
    free(s->keep);
    free(s);
}

/* Copy head h's q (after RoPE) and its key/value group's k, v into
 * contiguous [n, hd] buffers and rerun attention for that head alone: the
 * same arithmetic per (row, query) as the full call, so the probabilities
 * are those the layer used. */
static void head_probs(ra_forward_state *s, int h, int B, int T, const int32_t *doc_start, float *probs) {
    const hf_config *c = &s->m->cfg;
    int hd = c->head_dim, H = c->num_heads, Hkv = c->num_kv_heads, g = h / (H / Hkv);
    size_t n = (size_t)B * T;
    for (size_t i = 0; i < n; i++) {
        memcpy(s->hq + i * hd, s->q + (i * H + h) * hd, (size_t)hd * sizeof(float));
        memcpy(s->hk + i * hd, s->k + (i * Hkv + g) * hd, (size_t)hd * sizeof(float));
        memcpy(s->hv + i * hd, s->v + (i * Hkv + g) * hd, (size_t)hd * sizeof(float));
    }
    attention_forward(s->ho, probs, s->hq, s->hk, s->hv, doc_start, B, T, 1, 1, hd);
}

/* This layer's head mask per batch row: the caller's ablations, and zero for
 * slots that are not attention heads of the layer.  Returns 1 if any head is
 * dropped. */
static int layer_keep(ra_forward_state *s, int layer, int B, const uint8_t *head_keep) {
    const ra_model *m = s->m;
    int H = m->cfg.num_heads, layers = m->cfg.num_layers, any = 0;
    const ra_layer *L = &m->layers[layer];
    for (int b = 0; b < B; b++) {
        uint8_t *k = s->keep + (size_t)b * H;
        memset(k, 0, (size_t)H);
        for (int i = 0; i < L->n_attn_heads; i++) k[L->attn_heads[i]] = 1;
        if (head_keep)
            for (int h = 0; h < H; h++) k[h] &= head_keep[((size_t)b * layers + layer) * H + h] != 0;
        for (int h = 0; h < H; h++) any |= !k[h];
    }
    return any;
}

void attention_block_forward(ra_forward_state *s, int layer, int B, int T, const ra_forward_opts *o) {
    const hf_config *c = &s->m->cfg;
    const ra_layer *L = &s->m->layers[layer];
    int n = B * T, D = c->hidden_size, H = c->num_heads, Hkv = c->num_kv_heads, hd = c->head_dim;
    rmsnorm_forward(s->xn, NULL, s->x, L->input_norm, n, D, (float)c->rms_norm_eps);
    linear_forward(s->q, s->xn, L->wq, L->bq, n, D, H * hd);
    linear_forward(s->k, s->xn, L->wk, L->bk, n, D, Hkv * hd);
    linear_forward(s->v, s->xn, L->wv, L->bv, n, D, Hkv * hd);
    rope_forward(s->q, s->cos_t, s->sin_t, n, H, hd);
    rope_forward(s->k, s->cos_t, s->sin_t, n, Hkv, hd);
    attention_forward(s->att, NULL, s->q, s->k, s->v, o->doc_start, B, T, H, Hkv, hd);
    for (int r = 0; r < o->n_probs; r++)
        if (o->probs_heads[r].layer == layer)
            head_probs(s, o->probs_heads[r].head, B, T, o->doc_start, o->probs_out + (size_t)r * B * T * T);
    if (layer_keep(s, layer, B, o->head_keep)) head_mask_apply(s->att, s->keep, B, T, H, hd);
    linear_forward(s->proj, s->att, L->wo, L->bo, n, H * hd, D);
    residual_add(s->x, s->proj, (int64_t)n * D);
}

void mlp_block_forward(ra_forward_state *s, int layer, int B, int T) {
    const hf_config *c = &s->m->cfg;
    const ra_layer *L = &s->m->layers[layer];
    int n = B * T, D = c->hidden_size, I = c->intermediate_size;
    rmsnorm_forward(s->xn, NULL, s->x, L->post_norm, n, D, (float)c->rms_norm_eps);
    linear_forward(s->gate, s->xn, L->w_gate, NULL, n, D, I);
    linear_forward(s->up, s->xn, L->w_up, NULL, n, D, I);
    swiglu_forward(s->gate, s->gate, s->up, (int64_t)n * I);
    linear_forward(s->proj, s->gate, L->w_down, NULL, n, I, D);
    residual_add(s->x, s->proj, (int64_t)n * D);
}

static int check_inputs(const ra_forward_state *s, const int32_t *tokens, int B, int T, const ra_forward_opts *o,
                        int start, int stop, ra_error *err) {
    const hf_config *c = &s->m->cfg;
    if (s->m->hybrid)
        return ra_fail(err, EX_UNAVAILABLE, "forward: %s is a hybrid student; the hybrid forward is not built yet",
                       s->m->source);
    if (B < 1 || T < 1 || B > s->B_max || T > s->T_max)
        return ra_fail(err, EX_USAGE, "forward: batch %d × %d tokens does not fit the state (%d × %d)", B, T, s->B_max,
                       s->T_max);
    if (start < 0 || stop > c->num_layers || start > stop)
        return ra_fail(err, EX_USAGE, "forward: layers %d..%d out of range 0..%d", start, stop, c->num_layers);
    if (start > 0 && !o->start_hidden)
        return ra_fail(err, EX_USAGE, "forward: start_layer %d needs start_hidden", start);
    if (start == 0 && !tokens) return ra_fail(err, EX_USAGE, "forward: no token ids");
    if (o->logits && stop != c->num_layers)
        return ra_fail(err, EX_USAGE, "forward: logits need every layer to run (stop_layer %d < %d)", stop,
                       c->num_layers);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            size_t i = (size_t)b * T + t;
            if (start == 0 && (tokens[i] < 0 || tokens[i] >= c->vocab_size))
                return ra_fail(err, EX_DATAERR, "forward: row %d position %d: token id %d is outside the vocabulary (0..%d)",
                               b, t, tokens[i], c->vocab_size - 1);
            if (o->doc_start && (o->doc_start[i] < 0 || o->doc_start[i] > t))
                return ra_fail(err, EX_DATAERR, "forward: row %d position %d: doc_start %d, expected 0..%d", b, t,
                               o->doc_start[i], t);
            if (o->positions && o->positions[i] < 0)
                return ra_fail(err, EX_DATAERR, "forward: row %d position %d: negative RoPE position %d", b, t,
                               o->positions[i]);
        }
    for (int r = 0; r < o->n_probs; r++) {
        ra_head_ref h = o->probs_heads[r];
        if (h.layer < start || h.layer >= stop || h.head < 0 || h.head >= c->num_heads)
            return ra_fail(err, EX_USAGE, "forward: probabilities of layer %d head %d: not among the layers run (%d..%d) "
                           "and heads 0..%d", h.layer, h.head, start, stop - 1, c->num_heads - 1);
    }
    if (o->n_probs && !o->probs_out) return ra_fail(err, EX_USAGE, "forward: probabilities requested without probs_out");
    if (o->logits && o->logit_counts) {
        const int32_t *p = o->logit_positions;
        for (int b = 0; b < B; b++) {
            if (o->logit_counts[b] < 0 || o->logit_counts[b] > T)
                return ra_fail(err, EX_USAGE, "forward: row %d: %d logit positions, expected 0..%d", b, o->logit_counts[b], T);
            for (int j = 0; j < o->logit_counts[b]; j++, p++)
                if (*p < 0 || *p >= T)
                    return ra_fail(err, EX_USAGE, "forward: row %d: logit position %d outside 0..%d", b, *p, T - 1);
        }
    }
    return 0;
}

/* Final RMSNorm at the chosen rows, then the LM head: one sgemm into the
 * caller's [rows, V] buffer. */
static void logits_forward(ra_forward_state *s, int B, int T, const ra_forward_opts *o) {
    const ra_model *m = s->m;
    int D = m->cfg.hidden_size, V = m->cfg.vocab_size, rows = 0;
    if (!o->logit_counts) {
        rows = B * T;
        memcpy(s->sel, s->x, (size_t)rows * D * sizeof(float));
    } else {
        const int32_t *p = o->logit_positions;
        for (int b = 0; b < B; b++)
            for (int j = 0; j < o->logit_counts[b]; j++, p++, rows++)
                memcpy(s->sel + (size_t)rows * D, s->x + ((size_t)b * T + *p) * D, (size_t)D * sizeof(float));
    }
    if (!rows) return;
    rmsnorm_forward(s->sel, NULL, s->sel, m->final_norm, rows, D, (float)m->cfg.rms_norm_eps);
    linear_forward(o->logits, s->sel, m->lm_head, NULL, rows, D, V);
}

int ra_forward_cpu(ra_forward_state *s, const int32_t *tokens, int B, int T, const ra_forward_opts *o,
                   ra_error *err) {
    static const ra_forward_opts none;
    if (!o) o = &none;
    const hf_config *c = &s->m->cfg;
    int start = o->start_layer, stop = o->stop_layer ? o->stop_layer : c->num_layers;
    int rc = check_inputs(s, tokens, B, T, o, start, stop, err);
    if (rc) return rc;
    int n = B * T, D = c->hidden_size;
    size_t bytes = (size_t)n * D * sizeof(float);

    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            size_t i = (size_t)b * T + t;
            s->positions[i] = o->positions ? o->positions[i] : o->doc_start ? t - o->doc_start[i] : t;
        }
    rope_tables(s->cos_t, s->sin_t, s->positions, n, s->inv_freq, c->head_dim);

    if (start == 0) embedding_forward(s->x, tokens, s->m->embed, n, D);
    else memcpy(s->x, o->start_hidden, bytes);
    for (int l = start; l < stop; l++) {
        if (o->hidden_out && o->hidden_out[l]) memcpy(o->hidden_out[l], s->x, bytes);
        attention_block_forward(s, l, B, T, o);
        mlp_block_forward(s, l, B, T);
    }
    if (o->hidden_out && o->hidden_out[stop]) memcpy(o->hidden_out[stop], s->x, bytes);
    if (o->logits) logits_forward(s, B, T, o);
    return 0;
}

/* ------------------------------------------------------------ backend */

static int cpu_create(const ra_model *m, int B_max, int T_max, void **state, ra_error *err) {
    (void)err;
    *state = ra_forward_state_create(m, B_max, T_max);
    return 0;
}
static int cpu_run(void *state, const int32_t *tokens, int B, int T, const ra_forward_opts *o, ra_error *err) {
    return ra_forward_cpu(state, tokens, B, T, o, err);
}
static void cpu_destroy(void *state) { ra_forward_state_free(state); }

const ra_forward_backend ra_forward_backend_cpu = {"cpu", cpu_create, cpu_run, cpu_destroy};
