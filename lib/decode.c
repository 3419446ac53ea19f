/* Recurrent decoding (decode.h): the prefill is the forward pass with state
 * capture, the step runs each layer's mixer on one token per row. */
#include <stdlib.h>
#include <string.h>

#include "decode.h"
#include "forward_hybrid.h"
#include "ops.h"

int ra_decode_create(const ra_model *m, int B, int T_max, ra_decode **out, ra_error *err) {
    *out = NULL;
    const hf_config *c = &m->cfg;
    if (B < 1 || T_max < 1) return ra_fail(err, EX_USAGE, "decode: batch %d x %d tokens: both must be >= 1", B, T_max);
    ra_decode *d = xcalloc(1, sizeof *d);
    d->m = m;
    d->B = B;
    d->T_max = T_max;
    d->first = xcalloc((size_t)B, sizeof(int32_t));
    d->layers = xcalloc((size_t)c->num_layers, sizeof *d->layers);
    size_t n = (size_t)B * T_max, hd = c->head_dim;
    for (int l = 0; l < c->num_layers; l++) {
        const ra_layer *L = &m->layers[l];
        ra_decode_layer *dl = &d->layers[l];
        dl->n_kv = L->n_attn_heads ? (m->hybrid ? L->n_attn_heads : c->num_kv_heads) : 0;
        if (dl->n_kv) {
            dl->k = xmalloc(n * dl->n_kv * hd * sizeof(float));
            dl->v = xmalloc(n * dl->n_kv * hd * sizeof(float));
        }
        if (L->n_ssm_heads && !(dl->ssm = dm2_cache_alloc(B, &L->ssm_cfg, err))) {
            ra_decode_free(d);
            return err && err->code ? err->code : EX_SOFTWARE;
        }
    }
    d->fs = ra_forward_state_create(m, B, T_max);
    d->doc_start = xmalloc(n * sizeof(int32_t));
    d->counts = xmalloc((size_t)B * sizeof(int32_t));
    d->logit_pos = xmalloc((size_t)B * sizeof(int32_t));
    d->positions = xmalloc((size_t)B * sizeof(int32_t));
    d->scores = xmalloc((size_t)B * c->num_heads * T_max * sizeof(float));
    *out = d;
    return 0;
}

void ra_decode_free(ra_decode *d) {
    if (!d) return;
    for (int l = 0; l < d->m->cfg.num_layers; l++) {
        free(d->layers[l].k);
        free(d->layers[l].v);
        dm2_cache_free(d->layers[l].ssm);
    }
    free(d->layers);
    ra_forward_state_free(d->fs);
    free(d->first), free(d->doc_start), free(d->counts), free(d->logit_pos), free(d->positions), free(d->scores);
    free(d);
}

int ra_decode_prompt_layout(int B, int T, int T_max, const int32_t *lens, int32_t *first, ra_error *err) {
    if (T < 1 || T > T_max) return ra_fail(err, EX_USAGE, "decode: prompt of %d tokens, expected 1..%d", T, T_max);
    for (int b = 0; b < B; b++) {
        int len = lens ? lens[b] : T;
        if (len < 1 || len > T)
            return ra_fail(err, EX_USAGE, "decode: row %d: prompt length %d, expected 1..%d", b, len, T);
        first[b] = T - len;
    }
    return 0;
}

void ra_decode_prompt_doc_start(int32_t *doc_start, const int32_t *first, int rows, int T) {
    /* padding tokens are documents of their own; the prompt is one */
    for (int b = 0; b < rows; b++)
        for (int t = 0; t < T; t++) doc_start[(size_t)b * T + t] = t < first[b] ? t : first[b];
}

int ra_decode_prefill(ra_decode *d, const int32_t *tokens, int T, const int32_t *lens, float *logits,
                      float *all_logits, ra_error *err) {
    const hf_config *c = &d->m->cfg;
    int rc = ra_decode_prompt_layout(d->B, T, d->T_max, lens, d->first, err);
    if (rc) return rc;
    ra_decode_prompt_doc_start(d->doc_start, d->first, d->B, T);
    for (int b = 0; b < d->B; b++) {
        d->counts[b] = 1;
        d->logit_pos[b] = T - 1;
    }
    d->len = 0;
    for (int l = 0; l < c->num_layers; l++)
        if (d->layers[l].ssm) dm2_cache_reset(d->layers[l].ssm, -1);
    ra_forward_opts o = {.doc_start = d->doc_start};
    if (all_logits) o.logits = all_logits;
    else if (logits) o.logits = logits, o.logit_counts = d->counts, o.logit_positions = d->logit_pos;
    d->fs->capture = d;
    rc = ra_forward_cpu(d->fs, tokens, d->B, T, &o, err);
    d->fs->capture = NULL;
    if (rc) return rc;
    if (all_logits && logits)
        for (int b = 0; b < d->B; b++)
            memcpy(logits + (size_t)b * c->vocab_size, all_logits + ((size_t)b * T + T - 1) * c->vocab_size,
                   (size_t)c->vocab_size * sizeof(float));
    d->len = T;
    return 0;
}

int ra_decode_step(ra_decode *d, const int32_t *tokens, float *logits, ra_error *err) {
    const ra_model *m = d->m;
    const hf_config *c = &m->cfg;
    ra_forward_state *s = d->fs;
    int B = d->B, D = c->hidden_size;
    if (d->len < 1) return ra_fail(err, EX_USAGE, "decode: step before prefill");
    if (d->len >= d->T_max)
        return ra_fail(err, EX_USAGE, "decode: the cache holds %d tokens, no room for another", d->T_max);
    for (int b = 0; b < B; b++) {
        if (tokens[b] < 0 || tokens[b] >= c->vocab_size)
            return ra_fail(err, EX_DATAERR, "decode: row %d: token id %d is outside the vocabulary (0..%d)", b, tokens[b],
                           c->vocab_size - 1);
        d->positions[b] = d->len - d->first[b];
    }
    embedding_forward(s->x, tokens, m->embed, B, D);
    rope_tables(s->cos_t, s->sin_t, d->positions, B, s->inv_freq, c->head_dim);
    for (int l = 0; l < c->num_layers; l++) {
        hybrid_mixer_step(s, d, l);
        mlp_block_forward(s, l, B, 1);
    }
    rmsnorm_forward(s->sel, NULL, s->x, m->final_norm, B, D, (float)c->rms_norm_eps);
    linear_forward(logits, s->sel, m->lm_head, NULL, B, D, c->vocab_size);
    d->len++;
    return 0;
}
