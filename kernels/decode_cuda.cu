/* Recurrent decoding on the GPU; see kernels/decode_cuda.h.  Host code only
 * (the per-layer step is cuda_hybrid_mixer_step in forward_hybrid_cuda.cu). */
#include <stdlib.h>
#include <string.h>

#include "decode_cuda.h"
#include "forward_cuda_internal.h"
#include "hybrid_ops_cuda.h"
#include "ops_cuda.h"

extern "C" {
#include "decode_backend.h"
}

#define PREFILL_TOKENS 16384 /* tokens per prefill group */

typedef struct {
    ra_error *err;
    int rc;
    size_t bytes;
} dec_alloc;

static void *dmalloc(dec_alloc *a, size_t bytes, const char *what) {
    if (a->rc) return NULL;
    void *p = NULL;
    a->rc = cuda_malloc_try(&p, bytes, what, a->err);
    if (!a->rc) a->bytes += bytes;
    return p;
}

/* The step's activations: a forward state of B rows of one token, built
 * here so it carries no chunked-SSD buffers (the step uses the caches). */
static cuda_forward_state *step_state_create(const cuda_model *m, int B, dec_alloc *a) {
    const hf_config *c = &m->cfg;
    cuda_forward_state *s = (cuda_forward_state *)xcalloc(1, sizeof *s);
    s->m = m, s->B_max = B, s->T_max = 1;
    size_t n = (size_t)B, D = c->hidden_size, I = c->intermediate_size, hd = c->head_dim;
    size_t qd = (size_t)c->num_heads * hd, qkv = qd + 2 * (size_t)c->num_kv_heads * hd;
    s->x = (uint16_t *)dmalloc(a, n * D * 2, "the residual stream");
    s->xn = (uint16_t *)dmalloc(a, n * D * 2, "normed activations");
    s->qkv = (uint16_t *)dmalloc(a, n * qkv * 2, "q/k/v activations");
    s->att = (uint16_t *)dmalloc(a, n * qd * 2, "attention outputs");
    s->gu = (uint16_t *)dmalloc(a, n * 2 * I * 2, "gate/up activations");
    s->act = (uint16_t *)dmalloc(a, n * I * 2, "MLP activations");
    s->cos_t = (float *)dmalloc(a, n * (hd / 2) * sizeof(float), "RoPE tables");
    s->sin_t = (float *)dmalloc(a, n * (hd / 2) * sizeof(float), "RoPE tables");
    s->tokens = (int32_t *)dmalloc(a, n * 4, "token ids");
    s->positions = (int32_t *)dmalloc(a, n * 4, "positions");
    if (!a->rc) a->rc = cuda_hybrid_acts_create(s, 0, a->err);
    return s;
}

static void step_state_free(cuda_forward_state *s) {
    if (!s) return;
    void *d[] = {s->x, s->xn, s->qkv, s->att, s->gu, s->act, s->cos_t, s->sin_t, s->tokens, s->positions};
    for (size_t i = 0; i < sizeof d / sizeof d[0]; i++) cuda_free(d[i]);
    cuda_hybrid_acts_free(s->hy);
    free(s);
}

extern "C" void cuda_decode_free(cuda_decode *d) {
    if (!d) return;
    for (int l = 0; d->layers && l < d->m->cfg.num_layers; l++) {
        cuda_decode_layer *L = &d->layers[l];
        cuda_free(L->k), cuda_free(L->v), cuda_free(L->ssm.ssm), cuda_free(L->ssm.conv);
    }
    for (int i = 0; i < 3; i++) cuda_free(d->scratch[i]);
    free(d->layers);
    cuda_forward_state_free(d->pf);
    step_state_free(d->st);
    cuda_free(d->logits), cuda_free(d->d_first);
    free(d->first), free(d->h_doc), free(d->h_counts), free(d->h_pos), free(d->h_lpos);
    free(d);
}

/* KV and SSM caches of every layer; the dm2 step scratch is shared. */
static void caches_alloc(cuda_decode *d, dec_alloc *a) {
    const cuda_model *m = d->m;
    const hf_config *c = &m->cfg;
    size_t B = d->B, hd = c->head_dim, in_max = 0, inner_max = 0, conv_max = 0;
    for (int l = 0; l < c->num_layers; l++) {
        cuda_decode_layer *L = &d->layers[l];
        L->n_kv = m->hybrid ? m->hybrid->layers[l].k : c->num_kv_heads;
        if (L->n_kv) {
            size_t bytes = B * L->n_kv * (size_t)d->T_max * hd * 2;
            L->k = (uint16_t *)dmalloc(a, bytes, "the KV cache");
            L->v = (uint16_t *)dmalloc(a, bytes, "the KV cache");
            d->state_bytes += 2 * bytes;
        }
        if (!m->hybrid || !m->hybrid->layers[l].Hs) continue;
        const dm2_config *cfg = &m->hybrid->layers[l].ssm_cfg;
        size_t ssm = B * cfg->n_heads * cfg->head_dim * cfg->d_state * 4, conv = B * dm2_conv_dim(cfg) * DM2_CONV_K * 4;
        L->has_ssm = 1;
        L->ssm.B = d->B, L->ssm.cfg = *cfg;
        L->ssm.ssm = (float *)dmalloc(a, ssm, "the SSM state");
        L->ssm.conv = (float *)dmalloc(a, conv, "the conv state");
        d->state_bytes += ssm + conv;
        if ((size_t)dm2_in_proj_dim(cfg) > in_max) in_max = dm2_in_proj_dim(cfg);
        if ((size_t)dm2_d_inner(cfg) > inner_max) inner_max = dm2_d_inner(cfg);
        if ((size_t)dm2_conv_dim(cfg) > conv_max) conv_max = dm2_conv_dim(cfg);
    }
    if (!in_max) return;
    d->scratch[0] = dmalloc(a, B * in_max * 2, "the SSM step scratch");
    d->scratch[1] = dmalloc(a, B * inner_max * 2, "the SSM step scratch");
    d->scratch[2] = dmalloc(a, B * conv_max * 4, "the SSM step scratch");
    for (int l = 0; l < c->num_layers; l++)
        if (d->layers[l].has_ssm) {
            d->layers[l].ssm.proj = (uint16_t *)d->scratch[0];
            d->layers[l].ssm.yg = (uint16_t *)d->scratch[1];
            d->layers[l].ssm.xbc = (float *)d->scratch[2];
        }
}

extern "C" int cuda_decode_create(const cuda_model *m, int B, int T_max, cuda_decode **out, ra_error *err) {
    *out = NULL;
    const hf_config *c = &m->cfg;
    if (B < 1 || T_max < 1) return ra_fail(err, EX_USAGE, "decode: batch %d x %d tokens: both must be >= 1", B, T_max);
    cuda_decode *d = (cuda_decode *)xcalloc(1, sizeof *d);
    d->m = m, d->B = B, d->T_max = T_max;
    d->prefill_rows = PREFILL_TOKENS / T_max;
    if (d->prefill_rows < 1) d->prefill_rows = 1;
    if (d->prefill_rows > B) d->prefill_rows = B;
    d->layers = (cuda_decode_layer *)xcalloc((size_t)c->num_layers, sizeof *d->layers);
    d->first = (int32_t *)xcalloc((size_t)B, sizeof(int32_t));
    d->h_doc = (int32_t *)xmalloc((size_t)d->prefill_rows * T_max * sizeof(int32_t));
    d->h_counts = (int32_t *)xmalloc((size_t)B * sizeof(int32_t));
    d->h_lpos = (int32_t *)xmalloc((size_t)B * sizeof(int32_t));
    d->h_pos = (int32_t *)xmalloc((size_t)B * sizeof(int32_t));
    dec_alloc a = {err, 0, 0};
    /* the caches first: the largest buffers fail first when B is too large */
    caches_alloc(d, &a);
    d->st = step_state_create(m, B, &a);
    d->d_first = (int32_t *)dmalloc(&a, (size_t)B * 4, "row starts");
    d->logits = (uint16_t *)dmalloc(&a, (size_t)B * c->vocab_size * 2, "the step logits");
    d->bytes = a.bytes + (d->st ? d->st->bytes : 0);
    if (!a.rc) {
        a.rc = cuda_forward_state_create(m, d->prefill_rows, T_max, &d->pf, err);
        if (!a.rc && !d->pf->hy) a.rc = cuda_hybrid_acts_create(d->pf, 1, err); /* a teacher's capture path */
        if (!a.rc) d->bytes += cuda_forward_state_bytes(d->pf);
    }
    if (a.rc) {
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err->msg);
        cuda_decode_free(d);
        return ra_fail(err, a.rc == EX_TEMPFAIL ? EX_UNAVAILABLE : a.rc,
                       "decode: batch %d x %d tokens does not fit on the GPU: %s", B, T_max, msg);
    }
    *out = d;
    return 0;
}

extern "C" int cuda_decode_prefill(cuda_decode *d, const int32_t *tokens, int T, const int32_t *lens, float *logits,
                                   float *all_logits, ra_error *err) {
    const hf_config *c = &d->m->cfg;
    size_t V = c->vocab_size;
    if (T < 1 || T > d->T_max) return ra_fail(err, EX_USAGE, "decode: prompt of %d tokens, expected 1..%d", T, d->T_max);
    for (int b = 0; b < d->B; b++) {
        int len = lens ? lens[b] : T;
        if (len < 1 || len > T)
            return ra_fail(err, EX_USAGE, "decode: row %d: prompt length %d, expected 1..%d", b, len, T);
        d->first[b] = T - len;
    }
    d->len = 0;
    for (int b0 = 0; b0 < d->B; b0 += d->prefill_rows) {
        int rb = d->B - b0 < d->prefill_rows ? d->B - b0 : d->prefill_rows;
        for (int b = 0; b < rb; b++) {
            int f = d->first[b0 + b];
            /* padding tokens are documents of their own; the prompt is one */
            for (int t = 0; t < T; t++) d->h_doc[(size_t)b * T + t] = t < f ? t : f;
            d->h_counts[b] = 1;
            d->h_lpos[b] = T - 1;
        }
        ra_forward_opts o;
        memset(&o, 0, sizeof o);
        o.doc_start = d->h_doc;
        if (all_logits) o.logits = all_logits + (size_t)b0 * T * V;
        else if (logits) o.logits = logits + (size_t)b0 * V, o.logit_counts = d->h_counts, o.logit_positions = d->h_lpos;
        d->pf->capture = d;
        d->pf->capture_row0 = b0;
        int rc = cuda_forward_run(d->pf, tokens + (size_t)b0 * T, rb, T, &o, NULL, err);
        d->pf->capture = NULL;
        if (rc) return rc;
    }
    if (all_logits && logits)
        for (int b = 0; b < d->B; b++)
            memcpy(logits + (size_t)b * V, all_logits + ((size_t)b * T + T - 1) * V, V * sizeof(float));
    cuda_upload(d->d_first, d->first, (size_t)d->B * sizeof(int32_t));
    d->len = T;
    return 0;
}

extern "C" int cuda_decode_step_device(cuda_decode *d, const int32_t *d_tokens, ra_error *err) {
    const cuda_model *m = d->m;
    const hf_config *c = &m->cfg;
    cuda_forward_state *s = d->st;
    int B = d->B, D = c->hidden_size;
    if (d->len < 1) return ra_fail(err, EX_USAGE, "decode: step before prefill");
    if (d->len >= d->T_max)
        return ra_fail(err, EX_USAGE, "decode: the cache holds %d tokens, no room for another", d->T_max);
    for (int b = 0; b < B; b++) d->h_pos[b] = d->len - d->first[b];
    cuda_upload(s->positions, d->h_pos, (size_t)B * sizeof(int32_t));
    cuda_rope_tables(s->cos_t, s->sin_t, s->positions, B, m->inv_freq, c->head_dim);
    cuda_embedding_forward(s->x, d_tokens, m->embed, B, D);
    for (int l = 0; l < c->num_layers; l++) {
        cuda_hybrid_mixer_step(s, d, l);
        cuda_mlp_block_forward(s, l, B);
    }
    cuda_rmsnorm_forward(s->xn, NULL, s->x, m->final_norm, B, D, (float)c->rms_norm_eps);
    cuda_linear_forward(d->logits, s->xn, m->lm_head, NULL, B, D, c->vocab_size);
    d->len++;
    return 0;
}

extern "C" int cuda_decode_step(cuda_decode *d, const int32_t *tokens, float *logits, ra_error *err) {
    const hf_config *c = &d->m->cfg;
    for (int b = 0; b < d->B; b++)
        if (tokens[b] < 0 || tokens[b] >= c->vocab_size)
            return ra_fail(err, EX_DATAERR, "decode: row %d: token id %d is outside the vocabulary (0..%d)", b, tokens[b],
                           c->vocab_size - 1);
    if (d->len >= 1 && d->len < d->T_max) cuda_upload(d->st->tokens, tokens, (size_t)d->B * sizeof(int32_t));
    int rc = cuda_decode_step_device(d, d->st->tokens, err);
    if (rc) return rc;
    if (logits) cuda_download_bf16(logits, d->logits, (size_t)d->B * c->vocab_size);
    cuda_synchronize();
    return 0;
}

extern "C" void cuda_decode_fill_random(cuda_decode *d, int len, uint64_t seed) {
    const hf_config *c = &d->m->cfg;
    for (int l = 0; l < c->num_layers; l++) {
        cuda_decode_layer *L = &d->layers[l];
        size_t kv = (size_t)d->B * L->n_kv * d->T_max * c->head_dim;
        if (L->n_kv) {
            cuda_fill_uniform_bf16(L->k, (int64_t)kv, 0.0f, 1.0f, seed * 64 + 4 * l);
            cuda_fill_uniform_bf16(L->v, (int64_t)kv, 0.0f, 1.0f, seed * 64 + 4 * l + 1);
        }
        if (L->has_ssm) {
            const dm2_config *cfg = &L->ssm.cfg;
            cuda_fill_uniform_f32(L->ssm.ssm, (int64_t)d->B * cfg->n_heads * cfg->head_dim * cfg->d_state, 0.1f,
                                  seed * 64 + 4 * l + 2);
            cuda_fill_uniform_f32(L->ssm.conv, (int64_t)d->B * dm2_conv_dim(cfg) * DM2_CONV_K, 1.0f,
                                  seed * 64 + 4 * l + 3);
        }
    }
    memset(d->first, 0, (size_t)d->B * sizeof(int32_t));
    cuda_upload(d->d_first, d->first, (size_t)d->B * sizeof(int32_t));
    d->len = len < d->T_max ? len : d->T_max;
    cuda_synchronize();
}

/* ---- the backend for lib/decode_backend.c ------------------------------------------------- */

typedef struct {
    cuda_model *m;
    cuda_decode *d;
} backend_state;

static int be_create(const ra_model *m, int B, int T_max, void **state, ra_error *err) {
    *state = NULL;
    backend_state *b = (backend_state *)xcalloc(1, sizeof *b);
    int rc = cuda_model_upload(m, &b->m, err);
    if (!rc) rc = cuda_decode_create(b->m, B, T_max, &b->d, err);
    if (rc) {
        cuda_model_free(b->m);
        free(b);
        return rc;
    }
    *state = b;
    return 0;
}

static int be_prefill(void *state, const int32_t *tokens, int T, const int32_t *lens, float *logits,
                      float *all_logits, ra_error *err) {
    return cuda_decode_prefill(((backend_state *)state)->d, tokens, T, lens, logits, all_logits, err);
}

static int be_step(void *state, const int32_t *tokens, float *logits, ra_error *err) {
    return cuda_decode_step(((backend_state *)state)->d, tokens, logits, err);
}

static size_t be_state_bytes(void *state) { return ((backend_state *)state)->d->state_bytes; }

static void be_destroy(void *state) {
    backend_state *b = (backend_state *)state;
    if (!b) return;
    cuda_decode_free(b->d);
    cuda_model_free(b->m);
    free(b);
}

static const ra_decode_backend cuda_decode_backend = {"cuda", be_create, be_prefill, be_step, be_state_bytes,
                                                      be_destroy};

extern "C" int ra_decode_backend_cuda(const ra_decode_backend **out, ra_error *err) {
    *out = NULL;
    int rc = cuda_device_init(0, err);
    if (rc) return rc;
    *out = &cuda_decode_backend;
    return 0;
}
