/* The teacher forward pass on the GPU; see kernels/forward_cuda.h.
 *
 * Host code only: it drives the ops of kernels/ops_cuda.h and holds no
 * kernel of its own, so tests/gpu/emulate.sh can also compile it for the CPU
 * against an emulation of those ops. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "forward_cuda.h"
#include "forward_cuda_internal.h"
#include "ops_cuda.h"
#include "train_profile.h"

extern "C" {
#include "ops.h" /* rope_inv_freq: the same host code as the CPU backend */
}

/* ---- allocation with one error path -------------------------------------- */

typedef struct {
    ra_error *err;
    int rc;
    size_t bytes;
} dev_alloc_ctx;

static void *dev_alloc(dev_alloc_ctx *a, size_t bytes, const char *what) {
    if (a->rc) return NULL;
    void *p = NULL;
    a->rc = cuda_malloc_try(&p, bytes, what, a->err);
    if (!a->rc) a->bytes += bytes;
    return p;
}

/* ---- weights ------------------------------------------------------------- */

static void model_alloc(cuda_model *cm, int biases_qkv, int bias_o, int tied, dev_alloc_ctx *a) {
    const hf_config *c = &cm->cfg;
    size_t D = c->hidden_size, V = c->vocab_size, I = c->intermediate_size, hd = c->head_dim;
    size_t qkv = (size_t)(c->num_heads + 2 * c->num_kv_heads) * hd, qd = (size_t)c->num_heads * hd;
    cm->embed = (uint16_t *)dev_alloc(a, V * D * 2, "the embedding");
    cm->final_norm = (uint16_t *)dev_alloc(a, D * 2, "model.norm");
    cm->lm_head = tied ? cm->embed : (uint16_t *)dev_alloc(a, V * D * 2, "the LM head");
    cm->inv_freq = (float *)dev_alloc(a, hd / 2 * sizeof(float), "RoPE inv_freq");
    cm->layers = (cuda_layer_weights *)xcalloc((size_t)c->num_layers, sizeof *cm->layers);
    for (int l = 0; l < c->num_layers; l++) {
        cuda_layer_weights *L = &cm->layers[l];
        L->input_norm = (uint16_t *)dev_alloc(a, D * 2, "a layer norm");
        L->post_norm = (uint16_t *)dev_alloc(a, D * 2, "a layer norm");
        L->wqkv = (uint16_t *)dev_alloc(a, qkv * D * 2, "q/k/v weights");
        L->bqkv = biases_qkv ? (uint16_t *)dev_alloc(a, qkv * 2, "q/k/v biases") : NULL;
        L->wo = (uint16_t *)dev_alloc(a, D * qd * 2, "o_proj weights");
        L->bo = bias_o ? (uint16_t *)dev_alloc(a, D * 2, "o_proj bias") : NULL;
        L->w_gate_up = (uint16_t *)dev_alloc(a, 2 * I * D * 2, "gate/up weights");
        L->w_down = (uint16_t *)dev_alloc(a, D * I * 2, "down_proj weights");
        L->attn_slot = (uint8_t *)xcalloc((size_t)c->num_heads, 1);
    }
    cm->weight_bytes = a->bytes;
}

extern "C" void cuda_model_free(cuda_model *cm) {
    if (!cm) return;
    if (cm->layers) {
        for (int l = 0; l < cm->cfg.num_layers; l++) {
            cuda_layer_weights *L = &cm->layers[l];
            cuda_free(L->input_norm), cuda_free(L->post_norm), cuda_free(L->wqkv), cuda_free(L->bqkv);
            cuda_free(L->wo), cuda_free(L->bo), cuda_free(L->w_gate_up), cuda_free(L->w_down);
            free(L->attn_slot);
        }
        cuda_hybrid_weights_free(cm->hybrid, cm->cfg.num_layers);
        free(cm->layers);
    }
    if (cm->lm_head != cm->embed) cuda_free(cm->lm_head);
    cuda_free(cm->embed), cuda_free(cm->final_norm), cuda_free(cm->inv_freq);
    free(cm);
}

static void upload_inv_freq(cuda_model *cm) {
    int hd = cm->cfg.head_dim;
    float *inv = (float *)xmalloc((size_t)(hd / 2) * sizeof(float) + 1);
    rope_inv_freq(inv, hd, &cm->cfg);
    cuda_upload(cm->inv_freq, inv, (size_t)(hd / 2) * sizeof(float));
    free(inv);
}

/* ---- weights left in the checkpoint (ra_model_load_view) ------------------- */

/* Where a view entry's weight goes on the device (NULL: nowhere). */
static uint16_t *view_dst(cuda_model *cm, const ra_model *m, float **slot) {
    const hf_config *c = &m->cfg;
    size_t D = c->hidden_size, I = c->intermediate_size, hd = c->head_dim;
    size_t qd = (size_t)c->num_heads * hd, kvd = (size_t)c->num_kv_heads * hd;
    if (slot == &((ra_model *)m)->embed) return cm->embed;
    if (slot == &((ra_model *)m)->final_norm) return cm->final_norm;
    if (slot == &((ra_model *)m)->lm_head) return cm->lm_head;
    for (int l = 0; l < c->num_layers; l++) {
        ra_layer *L = &m->layers[l];
        cuda_layer_weights *W = &cm->layers[l];
        if (slot == &L->input_norm) return W->input_norm;
        if (slot == &L->post_norm) return W->post_norm;
        if (slot == &L->wq) return W->wqkv;
        if (slot == &L->wk) return W->wqkv + qd * D;
        if (slot == &L->wv) return W->wqkv + (qd + kvd) * D;
        if (slot == &L->wo) return W->wo;
        if (slot == &L->w_gate) return W->w_gate_up;
        if (slot == &L->w_up) return W->w_gate_up + I * D;
        if (slot == &L->w_down) return W->w_down;
        if (slot == &L->bq) return W->bqkv;
        if (slot == &L->bk) return W->bqkv ? W->bqkv + qd : NULL;
        if (slot == &L->bv) return W->bqkv ? W->bqkv + qd + kvd : NULL;
        if (slot == &L->bo) return W->bo;
    }
    return NULL;
}

static void view_fill(uint16_t *host, size_t off, size_t count, void *arg) {
    ra_model_view_to_bf16(host, (const ra_model_view_entry *)arg, off, count);
}

/* The same device model as from fp32 weights (bf16 sources bit for bit:
 * bf16 -> fp32 -> bf16 is the identity), with no host fp32 copy. */
static int upload_view(const ra_model *m, cuda_model **out, ra_error *err) {
    const ra_model_view *v = m->view;
    const hf_config *c = &m->cfg;
    cuda_model *cm = (cuda_model *)xcalloc(1, sizeof *cm);
    cm->cfg = *c;
    int any_qkv_bias = 0, any_o_bias = 0;
    for (int i = 0; i < v->n; i++)
        for (int l = 0; l < c->num_layers; l++) {
            const ra_layer *L = &m->layers[l];
            any_qkv_bias |= v->e[i].slot == &L->bq || v->e[i].slot == &L->bk || v->e[i].slot == &L->bv;
            any_o_bias |= v->e[i].slot == &L->bo;
        }
    dev_alloc_ctx a = {err, 0, 0};
    model_alloc(cm, any_qkv_bias, any_o_bias, c->tie_word_embeddings, &a);
    if (a.rc) {
        cuda_model_free(cm);
        return ra_error_prefix(err, "uploading %s to the GPU", m->source[0] ? m->source : "the model");
    }
    for (int l = 0; l < c->num_layers; l++) { /* a missing part of a bias is zero */
        cuda_layer_weights *W = &cm->layers[l];
        if (W->bqkv) cuda_memset(W->bqkv, 0, (size_t)(c->num_heads + 2 * c->num_kv_heads) * c->head_dim * 2);
        if (W->bo) cuda_memset(W->bo, 0, (size_t)c->hidden_size * 2);
        for (int i = 0; i < m->layers[l].n_attn_heads; i++) W->attn_slot[m->layers[l].attn_heads[i]] = 1;
    }
    upload_inv_freq(cm);
    for (int i = 0; i < v->n; i++) {
        uint16_t *dst = view_dst(cm, m, v->e[i].slot);
        if (dst) cuda_upload_bf16_from(dst, (size_t)v->e[i].numel, view_fill, (void *)&v->e[i]);
    }
    cuda_synchronize();
    *out = cm;
    return 0;
}

extern "C" int cuda_model_upload(const ra_model *m, cuda_model **out, ra_error *err) {
    *out = NULL;
    if (m->hybrid) return cuda_hybrid_model_upload(m, out, err);
    if (m->view) return upload_view(m, out, err);
    const hf_config *c = &m->cfg;
    cuda_model *cm = (cuda_model *)xcalloc(1, sizeof *cm);
    cm->cfg = *c;
    int any_qkv_bias = 0, any_o_bias = 0;
    for (int l = 0; l < c->num_layers; l++) {
        const ra_layer *L = &m->layers[l];
        any_qkv_bias |= L->bq || L->bk || L->bv;
        any_o_bias |= L->bo != NULL;
    }
    dev_alloc_ctx a = {err, 0, 0};
    model_alloc(cm, any_qkv_bias, any_o_bias, m->lm_head == m->embed, &a);
    if (a.rc) {
        cuda_model_free(cm);
        return ra_error_prefix(err, "uploading %s to the GPU", m->source[0] ? m->source : "the model");
    }
    size_t D = c->hidden_size, V = c->vocab_size, I = c->intermediate_size, hd = c->head_dim;
    size_t qd = (size_t)c->num_heads * hd, kvd = (size_t)c->num_kv_heads * hd, qkv = qd + 2 * kvd;
    cuda_upload_bf16(cm->embed, m->embed, V * D);
    cuda_upload_bf16(cm->final_norm, m->final_norm, D);
    if (cm->lm_head != cm->embed) cuda_upload_bf16(cm->lm_head, m->lm_head, V * D);
    upload_inv_freq(cm);
    float *bias = (float *)xmalloc(qkv * sizeof(float));
    for (int l = 0; l < c->num_layers; l++) {
        const ra_layer *L = &m->layers[l];
        cuda_layer_weights *W = &cm->layers[l];
        cuda_upload_bf16(W->input_norm, L->input_norm, D);
        cuda_upload_bf16(W->post_norm, L->post_norm, D);
        cuda_upload_bf16(W->wqkv, L->wq, qd * D);
        cuda_upload_bf16(W->wqkv + qd * D, L->wk, kvd * D);
        cuda_upload_bf16(W->wqkv + (qd + kvd) * D, L->wv, kvd * D);
        if (W->bqkv) { /* a missing part of the bias is zero */
            memset(bias, 0, qkv * sizeof(float));
            if (L->bq) memcpy(bias, L->bq, qd * sizeof(float));
            if (L->bk) memcpy(bias + qd, L->bk, kvd * sizeof(float));
            if (L->bv) memcpy(bias + qd + kvd, L->bv, kvd * sizeof(float));
            cuda_upload_bf16(W->bqkv, bias, qkv);
        }
        cuda_upload_bf16(W->wo, L->wo, D * qd);
        if (W->bo) {
            if (L->bo)
                cuda_upload_bf16(W->bo, L->bo, D);
            else
                cuda_memset(W->bo, 0, D * 2);
        }
        cuda_upload_bf16(W->w_gate_up, L->w_gate, I * D);
        cuda_upload_bf16(W->w_gate_up + I * D, L->w_up, I * D);
        cuda_upload_bf16(W->w_down, L->w_down, D * I);
        for (int i = 0; i < L->n_attn_heads; i++) W->attn_slot[L->attn_heads[i]] = 1;
    }
    free(bias);
    cuda_synchronize();
    *out = cm;
    return 0;
}

extern "C" int cuda_model_random(const hf_config *c, uint64_t seed, cuda_model **out, ra_error *err) {
    *out = NULL;
    cuda_model *cm = (cuda_model *)xcalloc(1, sizeof *cm);
    cm->cfg = *c;
    dev_alloc_ctx a = {err, 0, 0};
    model_alloc(cm, c->qkv_bias, c->o_bias, c->tie_word_embeddings, &a);
    if (a.rc) {
        cuda_model_free(cm);
        return ra_error_prefix(err, "random model on the GPU");
    }
    size_t D = c->hidden_size, V = c->vocab_size, I = c->intermediate_size, hd = c->head_dim;
    size_t qd = (size_t)c->num_heads * hd, qkv = qd + 2 * (size_t)c->num_kv_heads * hd;
    const float w = 0.02f * 1.7320508f; /* uniform with std 0.02 */
    uint64_t s = seed * 1000;
    cuda_fill_uniform_bf16(cm->embed, (int64_t)(V * D), 0.0f, w, s++);
    cuda_fill_uniform_bf16(cm->final_norm, (int64_t)D, 1.0f, 0.0f, s++);
    if (cm->lm_head != cm->embed) cuda_fill_uniform_bf16(cm->lm_head, (int64_t)(V * D), 0.0f, w, s++);
    upload_inv_freq(cm);
    for (int l = 0; l < c->num_layers; l++) {
        cuda_layer_weights *W = &cm->layers[l];
        cuda_fill_uniform_bf16(W->input_norm, (int64_t)D, 1.0f, 0.0f, s++);
        cuda_fill_uniform_bf16(W->post_norm, (int64_t)D, 1.0f, 0.0f, s++);
        cuda_fill_uniform_bf16(W->wqkv, (int64_t)(qkv * D), 0.0f, w, s++);
        if (W->bqkv) cuda_fill_uniform_bf16(W->bqkv, (int64_t)qkv, 0.0f, w, s++);
        cuda_fill_uniform_bf16(W->wo, (int64_t)(D * qd), 0.0f, w, s++);
        if (W->bo) cuda_fill_uniform_bf16(W->bo, (int64_t)D, 0.0f, w, s++);
        cuda_fill_uniform_bf16(W->w_gate_up, (int64_t)(2 * I * D), 0.0f, w, s++);
        cuda_fill_uniform_bf16(W->w_down, (int64_t)(D * I), 0.0f, w, s++);
        memset(W->attn_slot, 1, (size_t)c->num_heads);
    }
    cuda_synchronize();
    *out = cm;
    return 0;
}

/* ---- state ----------------------------------------------------------------- */


extern "C" void cuda_forward_state_free(cuda_forward_state *s) {
    if (!s) return;
    void *d[] = {s->x,     s->xn,        s->qkv,       s->att,  s->gu,          s->act,
                 s->cos_t, s->sin_t,     s->tokens,    s->positions, s->doc_start, s->rows,
                 s->keep,  s->probs_heads, s->probs, s->logits};
    for (size_t i = 0; i < sizeof d / sizeof d[0]; i++) cuda_free(d[i]);
    cuda_hybrid_acts_free(s->hy);
    free(s->h_positions), free(s->h_rows), free(s->h_keep);
    free(s);
}

extern "C" int cuda_forward_state_create(const cuda_model *m, int B_max, int T_max, cuda_forward_state **out,
                                         ra_error *err) {
    *out = NULL;
    const hf_config *c = &m->cfg;
    if (B_max < 1 || T_max < 1)
        return ra_fail(err, EX_USAGE, "forward state: batch %d × %d tokens, expected positive sizes", B_max, T_max);
    cuda_forward_state *s = (cuda_forward_state *)xcalloc(1, sizeof *s);
    s->m = m, s->B_max = B_max, s->T_max = T_max;
    size_t n = (size_t)B_max * T_max, D = c->hidden_size, I = c->intermediate_size, hd = c->head_dim;
    size_t qd = (size_t)c->num_heads * hd, qkv = qd + 2 * (size_t)c->num_kv_heads * hd;
    dev_alloc_ctx a = {err, 0, 0};
    s->x = (uint16_t *)dev_alloc(&a, n * D * 2, "the residual stream");
    s->xn = (uint16_t *)dev_alloc(&a, n * D * 2, "normed activations");
    s->qkv = (uint16_t *)dev_alloc(&a, n * qkv * 2, "q/k/v activations");
    s->att = (uint16_t *)dev_alloc(&a, n * qd * 2, "attention outputs");
    s->gu = (uint16_t *)dev_alloc(&a, n * 2 * I * 2, "gate/up activations");
    s->act = (uint16_t *)dev_alloc(&a, n * I * 2, "MLP activations");
    s->cos_t = (float *)dev_alloc(&a, n * (hd / 2) * sizeof(float), "RoPE tables");
    s->sin_t = (float *)dev_alloc(&a, n * (hd / 2) * sizeof(float), "RoPE tables");
    s->tokens = (int32_t *)dev_alloc(&a, n * 4, "token ids");
    s->positions = (int32_t *)dev_alloc(&a, n * 4, "positions");
    s->doc_start = (int32_t *)dev_alloc(&a, n * 4, "document starts");
    s->rows = (int32_t *)dev_alloc(&a, n * 4, "logit rows");
    s->keep = (uint8_t *)dev_alloc(&a, (size_t)c->num_layers * B_max * c->num_heads, "head masks");
    s->bytes = a.bytes;
    if (!a.rc && m->hybrid) a.rc = cuda_hybrid_acts_create(s, 1, err);
    if (a.rc) {
        cuda_forward_state_free(s);
        return ra_error_prefix(err, "forward activations for batch %d × %d tokens", B_max, T_max);
    }
    s->h_positions = (int32_t *)xmalloc(n * 4);
    s->h_rows = (int32_t *)xmalloc(n * 4);
    s->h_keep = (uint8_t *)xmalloc((size_t)c->num_layers * B_max * c->num_heads);
    *out = s;
    return 0;
}

extern "C" size_t cuda_forward_state_bytes(const cuda_forward_state *s) { return s->bytes; }

/* ---- per layer ---------------------------------------------------------------- */

static void attention_block(cuda_forward_state *s, int l, int B, int T, const uint8_t *keep, const ra_forward_opts *o,
                            const int32_t *doc_start) {
    const cuda_model *m = s->m;
    const hf_config *c = &m->cfg;
    const cuda_layer_weights *W = &m->layers[l];
    int n = B * T, D = c->hidden_size, H = c->num_heads, Hkv = c->num_kv_heads, hd = c->head_dim;
    int qkv = (H + 2 * Hkv) * hd;
    cuda_rmsnorm_forward(s->xn, NULL, s->x, W->input_norm, n, D, (float)c->rms_norm_eps);
    train_prof_mark("forward_cuda: attention rmsnorm");
    cuda_linear_forward(s->qkv, s->xn, W->wqkv, W->bqkv, n, D, qkv);
    train_prof_mark("forward_cuda: q/k/v gemm");
    /* q and k heads are adjacent in each row: one RoPE pass over H + Hkv heads */
    cuda_rope_forward_strided(s->qkv, qkv, s->cos_t, s->sin_t, n, H + Hkv, hd);
    train_prof_mark("forward_cuda: rope");

    cuda_attention_args a;
    memset(&a, 0, sizeof a);
    a.out = s->att, a.out_stride = (int64_t)H * hd;
    a.q = s->qkv, a.q_stride = qkv;
    a.k = s->qkv + (size_t)H * hd, a.v = s->qkv + (size_t)(H + Hkv) * hd, a.kv_stride = qkv;
    a.doc_start = doc_start, a.head_keep = keep;
    a.B = B, a.T = T, a.H = H, a.Hkv = Hkv, a.hd = hd;
    cuda_attention_forward_ex(&a);
    train_prof_mark("forward_cuda: attention");

    /* probabilities the caller asked for: the same q/k the layer used, before
     * any ablation (as the CPU backend) */
    for (int r = 0; r < o->n_probs; r++) {
        if (o->probs_heads[r].layer != l) continue;
        cuda_attention_args p = a;
        p.out = NULL, p.head_keep = NULL;
        p.probs = s->probs, p.probs_heads = s->probs_heads + r, p.n_probs_heads = 1;
        cuda_attention_forward_ex(&p);
        cuda_download(o->probs_out + (size_t)r * B * T * T, s->probs, (size_t)B * T * T * sizeof(float));
    }
    cuda_linear_residual_forward(s->x, s->att, W->wo, W->bo, n, H * hd, D);
}

extern "C" void cuda_mlp_block_forward(cuda_forward_state *s, int l, int n) {
    const hf_config *c = &s->m->cfg;
    const cuda_layer_weights *W = &s->m->layers[l];
    int D = c->hidden_size, I = c->intermediate_size;
    cuda_rmsnorm_forward(s->xn, NULL, s->x, W->post_norm, n, D, (float)c->rms_norm_eps);
    cuda_linear_forward(s->gu, s->xn, W->w_gate_up, NULL, n, D, 2 * I);
    cuda_swiglu_fused_forward(s->act, s->gu, n, I);
    cuda_linear_residual_forward(s->x, s->act, W->w_down, NULL, n, I, D);
}

/* ---- the run -------------------------------------------------------------------- */

/* The same checks, in the same words, as ra_forward_cpu's. */
static int check_inputs(const cuda_forward_state *s, const int32_t *tokens, int B, int T, const ra_forward_opts *o,
                        int start, int stop, int want_logits, ra_error *err) {
    const hf_config *c = &s->m->cfg;
    if (B < 1 || T < 1 || B > s->B_max || T > s->T_max)
        return ra_fail(err, EX_USAGE, "forward: batch %d × %d tokens does not fit the state (%d × %d)", B, T, s->B_max,
                       s->T_max);
    if (start < 0 || stop > c->num_layers || start > stop)
        return ra_fail(err, EX_USAGE, "forward: layers %d..%d out of range 0..%d", start, stop, c->num_layers);
    if (start > 0 && !o->start_hidden)
        return ra_fail(err, EX_USAGE, "forward: start_layer %d needs start_hidden", start);
    if (start == 0 && !tokens) return ra_fail(err, EX_USAGE, "forward: no token ids");
    if (want_logits && stop != c->num_layers)
        return ra_fail(err, EX_USAGE, "forward: logits need every layer to run (stop_layer %d < %d)", stop,
                       c->num_layers);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            size_t i = (size_t)b * T + t;
            if (start == 0 && (tokens[i] < 0 || tokens[i] >= c->vocab_size))
                return ra_fail(err, EX_DATAERR,
                               "forward: row %d position %d: token id %d is outside the vocabulary (0..%d)", b, t,
                               tokens[i], c->vocab_size - 1);
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
            return ra_fail(err, EX_USAGE,
                           "forward: probabilities of layer %d head %d: not among the layers run (%d..%d) "
                           "and heads 0..%d",
                           h.layer, h.head, start, stop - 1, c->num_heads - 1);
    }
    if (o->n_probs && !o->probs_out)
        return ra_fail(err, EX_USAGE, "forward: probabilities requested without probs_out");
    if (s->m->hybrid) {
        int rc = cuda_hybrid_check_opts(s, o, err);
        if (rc) return rc;
    }
    if (want_logits && o->logit_counts) {
        const int32_t *p = o->logit_positions;
        for (int b = 0; b < B; b++) {
            if (o->logit_counts[b] < 0 || o->logit_counts[b] > T)
                return ra_fail(err, EX_USAGE, "forward: row %d: %d logit positions, expected 0..%d", b,
                               o->logit_counts[b], T);
            for (int j = 0; j < o->logit_counts[b]; j++, p++)
                if (*p < 0 || *p >= T)
                    return ra_fail(err, EX_USAGE, "forward: row %d: logit position %d outside 0..%d", b, *p, T - 1);
        }
    }
    return 0;
}

/* Grow-only device scratch. */
static int ensure(void **buf, size_t *cap, size_t need, size_t elem, const char *what, ra_error *err) {
    if (*cap >= need) return 0;
    cuda_free(*buf);
    *buf = NULL;
    *cap = 0;
    int rc = cuda_malloc_try(buf, need * elem, what, err);
    if (!rc) *cap = need;
    return rc;
}

/* Layer masks [l][b][h] for the layers run: attention slots of the layer and
 * the caller's ablations.  Returns 1 if any head is dropped anywhere. */
static int build_keep(cuda_forward_state *s, int B, int start, int stop, const uint8_t *head_keep) {
    const hf_config *c = &s->m->cfg;
    int H = c->num_heads, layers = c->num_layers, any = 0;
    for (int l = start; l < stop; l++)
        for (int b = 0; b < B; b++) {
            uint8_t *k = s->h_keep + ((size_t)l * B + b) * H;
            for (int h = 0; h < H; h++) {
                uint8_t v = s->m->layers[l].attn_slot[h];
                if (head_keep) v &= head_keep[((size_t)b * layers + l) * H + h] != 0;
                k[h] = v;
                any |= !v;
            }
        }
    return any;
}

static int logits_forward(cuda_forward_state *s, int B, int T, const ra_forward_opts *o, uint16_t *d_logits,
                          ra_error *err) {
    const hf_config *c = &s->m->cfg;
    int D = c->hidden_size, V = c->vocab_size;
    size_t rows = 0;
    const uint16_t *src = s->x;
    if (!o->logit_counts) {
        rows = (size_t)B * T;
    } else {
        const int32_t *p = o->logit_positions;
        for (int b = 0; b < B; b++)
            for (int j = 0; j < o->logit_counts[b]; j++, p++) s->h_rows[rows++] = b * T + *p;
        if (!rows) return 0;
        cuda_upload(s->rows, s->h_rows, rows * sizeof(int32_t));
        cuda_gather_rows(s->xn, s->x, s->rows, (int)rows, D);
        src = s->xn;
    }
    cuda_rmsnorm_forward(s->xn, NULL, src, s->m->final_norm, (int)rows, D, (float)c->rms_norm_eps);
    if (d_logits) {
        cuda_linear_forward(d_logits, s->xn, s->m->lm_head, NULL, (int)rows, D, V);
        return 0;
    }
    /* host logits: through a bounded bf16 buffer, a chunk of rows at a time */
    size_t chunk = ((size_t)256 << 20) / ((size_t)V * 2);
    if (chunk < 1) chunk = 1;
    if (chunk > rows) chunk = rows;
    int rc = ensure((void **)&s->logits, &s->logits_rows_cap, chunk, (size_t)V * 2, "a logits buffer", err);
    if (rc) return rc;
    for (size_t r0 = 0; r0 < rows; r0 += chunk) {
        size_t cnt = rows - r0 < chunk ? rows - r0 : chunk;
        cuda_linear_forward(s->logits, s->xn + r0 * D, s->m->lm_head, NULL, (int)cnt, D, V);
        cuda_download_bf16(o->logits + r0 * V, s->logits, cnt * V);
    }
    return 0;
}

extern "C" int cuda_forward_run(cuda_forward_state *s, const int32_t *tokens, int B, int T, const ra_forward_opts *o,
                                uint16_t *d_logits, ra_error *err) {
    static const ra_forward_opts none = {};
    if (!o) o = &none;
    const hf_config *c = &s->m->cfg;
    int start = o->start_layer, stop = o->stop_layer ? o->stop_layer : c->num_layers;
    int want_logits = o->logits != NULL || d_logits != NULL;
    int rc = check_inputs(s, tokens, B, T, o, start, stop, want_logits, err);
    if (rc) return rc;
    int n = B * T, D = c->hidden_size, H = c->num_heads;
    size_t nD = (size_t)n * D;

    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            size_t i = (size_t)b * T + t;
            s->h_positions[i] = o->positions ? o->positions[i] : o->doc_start ? t - o->doc_start[i] : t;
        }
    cuda_upload(s->positions, s->h_positions, (size_t)n * 4);
    cuda_rope_tables(s->cos_t, s->sin_t, s->positions, n, s->m->inv_freq, c->head_dim);
    const int32_t *doc_start = NULL;
    if (o->doc_start) {
        cuda_upload(s->doc_start, o->doc_start, (size_t)n * 4);
        doc_start = s->doc_start;
    }
    int masked = build_keep(s, B, start, stop, o->head_keep);
    if (masked) /* only the layers run were filled */
        cuda_upload(s->keep + (size_t)start * B * H, s->h_keep + (size_t)start * B * H, (size_t)(stop - start) * B * H);
    if (o->n_probs) {
        int32_t *heads = (int32_t *)xmalloc((size_t)o->n_probs * sizeof(int32_t));
        for (int r = 0; r < o->n_probs; r++) heads[r] = o->probs_heads[r].head;
        size_t cap = (size_t)s->probs_heads_cap;
        rc = ensure((void **)&s->probs_heads, &cap, (size_t)o->n_probs, sizeof(int32_t), "probability requests", err);
        if (!rc) {
            s->probs_heads_cap = (int)cap;
            cuda_upload(s->probs_heads, heads, (size_t)o->n_probs * sizeof(int32_t));
            rc = ensure((void **)&s->probs, &s->probs_cap, (size_t)B * T * T, sizeof(float),
                        "attention probabilities", err);
        }
        free(heads);
        if (rc) return rc;
    }

    if (start == 0) {
        cuda_upload(s->tokens, tokens, (size_t)n * 4);
        cuda_embedding_forward(s->x, s->tokens, s->m->embed, n, D);
    } else {
        cuda_upload_bf16(s->x, o->start_hidden, nD);
    }
    train_prof_mark("forward_cuda: inputs, embedding");
    for (int l = start; l < stop; l++) {
        if (o->hidden_out && o->hidden_out[l]) cuda_download_bf16(o->hidden_out[l], s->x, nD);
        const uint8_t *keep = masked ? s->keep + (size_t)l * B * H : NULL;
        if (s->m->hybrid || s->capture) cuda_hybrid_mixer_forward(s, l, B, T, o, doc_start);
        else attention_block(s, l, B, T, keep, o, doc_start);
        train_prof_mark("forward_cuda: mixer blocks");
        cuda_mlp_block_forward(s, l, n);
        train_prof_mark("forward_cuda: mlp blocks");
    }
    if (o->hidden_out && o->hidden_out[stop]) cuda_download_bf16(o->hidden_out[stop], s->x, nD);
    if (want_logits) {
        rc = logits_forward(s, B, T, o, d_logits, err);
        if (rc) return rc;
    }
    if (!d_logits) cuda_synchronize();
    return 0;
}

/* ---- the backend for lib/forward.c ------------------------------------------ */

typedef struct {
    cuda_model *m;
    cuda_forward_state *s;
} backend_state;

static int be_create(const ra_model *m, int B_max, int T_max, void **state, ra_error *err) {
    *state = NULL;
    backend_state *b = (backend_state *)xcalloc(1, sizeof *b);
    int rc = cuda_model_upload(m, &b->m, err);
    if (!rc) rc = cuda_forward_state_create(b->m, B_max, T_max, &b->s, err);
    if (rc) {
        cuda_model_free(b->m);
        free(b);
        return rc;
    }
    *state = b;
    return 0;
}

static int be_run(void *state, const int32_t *tokens, int B, int T, const ra_forward_opts *o, ra_error *err) {
    return cuda_forward_run(((backend_state *)state)->s, tokens, B, T, o, NULL, err);
}

static void be_destroy(void *state) {
    backend_state *b = (backend_state *)state;
    if (!b) return;
    cuda_forward_state_free(b->s);
    cuda_model_free(b->m);
    free(b);
}

static const ra_forward_backend cuda_backend = {"cuda", be_create, be_run, be_destroy};

extern "C" int ra_forward_backend_cuda(const ra_forward_backend **out, ra_error *err) {
    *out = NULL;
    int rc = cuda_device_init(0, err);
    if (rc) return rc;
    *out = &cuda_backend;
    return 0;
}
