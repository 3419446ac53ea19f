/* A CPU emulation of kernels/hybrid_ops_cuda.h and of the parts of
 * kernels/dm2_cuda.h the hybrid forward and decoder use, for
 * tests/gpu/emulate.sh only (see cuda_emul.c): bf16 buffers hold bf16 bits,
 * each op runs in fp32 on the CPU (the DiscreteMamba2 ops through their CPU
 * twins in lib/dm2.h) and rounds its bf16 outputs.  It checks the
 * orchestration of kernels/forward_hybrid_cuda.cu and decode_cuda.cu
 * (layouts, offsets, cache indexing, prefill groups), not the kernels. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter.h"
#include "dm2_cuda.h"
#include "dtype.h"
#include "hybrid_ops_cuda.h"
#include "ops_cuda.h"
#include "ssd_cuda.h"

static float bf(uint16_t x) { return ra_bf16_to_f32(x); }
static uint16_t tobf(float x) { return ra_f32_to_bf16(x); }

static float *f32_of(const uint16_t *x, size_t n) {
    float *f = xmalloc(n * sizeof(float) + 4);
    for (size_t i = 0; i < n; i++) f[i] = bf(x[i]);
    return f;
}

void cuda_hybrid_slots(uint16_t *slots, const uint16_t *katt, const uint16_t *ssm, const int32_t *slot_src,
                       int static_adapter, const uint8_t *ssm_keep, int n, int T, int H, int k, int Hs, int hd) {
    size_t W = (size_t)H * hd;
    float *f = xmalloc(n * W * sizeof(float) + 4), *o = xmalloc(n * W * sizeof(float) + 4);
    float *stats = xmalloc((size_t)n * ADAPTER_STATS * sizeof(float) + 4);
    uint8_t *attn = xcalloc((size_t)H, 1);
    for (int h = 0; h < H; h++) attn[h] = slot_src[h] >= 0;
    for (int r = 0; r < n; r++)
        for (int h = 0; h < H; h++)
            for (int p = 0; p < hd; p++) {
                int s = slot_src[h];
                f[r * W + h * hd + p] = s >= 0 ? bf(katt[((size_t)r * k + s) * hd + p]) : bf(ssm[((size_t)r * Hs + (-1 - s)) * hd + p]);
            }
    if (static_adapter && k && Hs) adapter_static_forward(o, stats, f, attn, n, H, hd);
    else memcpy(o, f, n * W * sizeof(float));
    for (int r = 0; r < n; r++)
        for (int h = 0; h < H; h++)
            for (int p = 0; p < hd; p++) {
                float v = o[r * W + h * hd + p];
                if (!attn[h] && ssm_keep && !ssm_keep[(r / T) * H + h]) v = 0;
                slots[r * W + h * hd + p] = tobf(v);
            }
    free(f), free(o), free(stats), free(attn);
}

void cuda_hybrid_standardize(uint16_t *adapted, const uint16_t *attn, const uint16_t *ssm, int n, int D) {
    for (int r = 0; r < n; r++) {
        const uint16_t *a = attn + (size_t)r * D, *s = ssm + (size_t)r * D;
        double ma = 0, ms = 0, va = 0, vs = 0;
        for (int j = 0; j < D; j++) ma += bf(a[j]), ms += bf(s[j]);
        ma /= D, ms /= D;
        for (int j = 0; j < D; j++) va += (bf(a[j]) - ma) * (bf(a[j]) - ma), vs += (bf(s[j]) - ms) * (bf(s[j]) - ms);
        float ra = (float)(1.0 / sqrt(va / D + ADAPTER_EPS)), sg = (float)sqrt(vs / D + ADAPTER_EPS);
        for (int j = 0; j < D; j++) adapted[(size_t)r * D + j] = tobf((bf(a[j]) - (float)ma) * ra * sg + (float)ms);
    }
}

void cuda_hybrid_mix_residual(uint16_t *x, const uint16_t *a, const uint16_t *b, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = tobf(bf(x[i]) + 0.5f * (bf(a[i]) + bf(b[i])));
}

void cuda_hybrid_starts(uint8_t *starts, const int32_t *doc_start, int n, int T) {
    for (int i = 0; i < n; i++) starts[i] = doc_start[i] == i % T;
}

void cuda_kv_cache_write(uint16_t *cache_k, uint16_t *cache_v, const uint16_t *src, int64_t ld, int64_t k_off,
                         int64_t v_off, int B, int T, int nkv, int hd, int T_max, int row0, int t0) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int g = 0; g < nkv; g++) {
                const uint16_t *s = src + ((int64_t)b * T + t) * ld + (int64_t)g * hd;
                size_t dst = (((size_t)(row0 + b) * nkv + g) * T_max + t0 + t) * hd;
                memcpy(cache_k + dst, s + k_off, (size_t)hd * 2);
                memcpy(cache_v + dst, s + v_off, (size_t)hd * 2);
            }
}

void cuda_decode_attention(uint16_t *out, const uint16_t *q, int64_t ldq, const uint16_t *cache_k,
                           const uint16_t *cache_v, const int32_t *first, int last, int B, int nq, int nkv, int hd,
                           int T_max) {
    float *sc = xmalloc(sizeof(float) * (size_t)(last + 1) + 4);
    for (int b = 0; b < B; b++)
        for (int i = 0; i < nq; i++) {
            size_t kv = ((size_t)b * nkv + i / (nq / nkv)) * T_max * hd;
            const uint16_t *qq = q + b * ldq + (int64_t)i * hd;
            float mx = -INFINITY, scale = 1.0f / sqrtf((float)hd);
            for (int j = first[b]; j <= last; j++) {
                float d = 0;
                for (int p = 0; p < hd; p++) d += bf(qq[p]) * bf(cache_k[kv + (size_t)j * hd + p]);
                sc[j] = d * scale;
                mx = fmaxf(mx, sc[j]);
            }
            double sum = 0;
            for (int j = first[b]; j <= last; j++) sum += sc[j] = expf(sc[j] - mx);
            for (int p = 0; p < hd; p++) {
                double acc = 0;
                for (int j = first[b]; j <= last; j++) acc += sc[j] * bf(cache_v[kv + (size_t)j * hd + p]);
                out[((size_t)b * nq + i) * hd + p] = tobf((float)(acc / sum));
            }
        }
    free(sc);
}

void cuda_argmax_rows(int32_t *out, const uint16_t *x, int rows, int V) {
    for (int r = 0; r < rows; r++) {
        int best = 0;
        for (int j = 1; j < V; j++)
            if (bf(x[(size_t)r * V + j]) > bf(x[(size_t)r * V + best])) best = j;
        out[r] = best;
    }
}

void cuda_fill_uniform_f32(float *x, int64_t n, float half_width, uint64_t seed) {
    uint64_t s = seed * 2654435761u + 1;
    for (int64_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        x[i] = ((float)(s >> 40) / 8388608.0f - 1.0f) * half_width;
    }
}

/* ---- DiscreteMamba2 through the CPU twins ---- */

/* Host parameters of a "device" parameter block. */
static dm2_params host_params(const cuda_dm2_params *p, const dm2_config *cfg) {
    dm2_params h;
    memset(&h, 0, sizeof h);
    size_t D = cfg->d_model, inner = dm2_d_inner(cfg);
    h.in_proj_w = f32_of(p->in_proj_w, (size_t)dm2_in_proj_dim(cfg) * D);
    h.conv_w = p->conv_w, h.conv_b = p->conv_b, h.D = p->D, h.z_bias = p->z_bias;
    h.out_proj_w = p->out_proj_w ? f32_of(p->out_proj_w, D * inner) : NULL;
    return h;
}
static void host_params_free(dm2_params *h) { free(h->in_proj_w), free(h->out_proj_w); }

static float *dev_f32(const float *h, size_t n) {
    float *d = cuda_malloc(n * sizeof(float));
    memcpy(d, h, n * sizeof(float));
    return d;
}

void cuda_dm2_params_upload(cuda_dm2_params *out, const dm2_params *p, const dm2_config *cfg) {
    size_t D = cfg->d_model, inner = dm2_d_inner(cfg), conv = dm2_conv_dim(cfg), in = dm2_in_proj_dim(cfg);
    out->in_proj_w = cuda_malloc(in * D * 2);
    cuda_upload_bf16(out->in_proj_w, p->in_proj_w, in * D);
    out->conv_w = dev_f32(p->conv_w, conv * DM2_CONV_K);
    out->conv_b = dev_f32(p->conv_b, conv);
    out->D = dev_f32(p->D, cfg->n_heads);
    out->z_bias = dev_f32(p->z_bias, inner);
    out->out_proj_w = NULL;
    if (cfg->has_out_proj) {
        out->out_proj_w = cuda_malloc(D * inner * 2);
        cuda_upload_bf16(out->out_proj_w, p->out_proj_w, D * inner);
    }
}

void cuda_dm2_params_free(cuda_dm2_params *p) {
    cuda_free(p->in_proj_w), cuda_free(p->conv_w), cuda_free(p->conv_b), cuda_free(p->D), cuda_free(p->z_bias);
    cuda_free(p->out_proj_w);
    memset(p, 0, sizeof *p);
}

size_t cuda_ssd_chunked_workspace_bytes(const ssd_dims *d, int chunk, int backward) {
    (void)chunk, (void)backward;
    return (size_t)d->B * d->H * 16;
}

/* out (bf16) of the CPU forward on u (bf16); the cache states when c. */
static void dm2_run(uint16_t *out, cuda_dm2_acts *s, cuda_dm2_cache *c, const cuda_dm2_params *p, const uint16_t *u,
                    const uint8_t *starts) {
    const dm2_config *cfg = &s->cfg;
    size_t BT = (size_t)s->B * s->T, od = dm2_out_dim(cfg);
    ra_error err = {0, ""};
    dm2_acts *a = dm2_alloc_state(s->B, s->T, cfg, &err);
    RA_CHECK(a != NULL);
    dm2_params h = host_params(p, cfg);
    float *uf = f32_of(u, BT * cfg->d_model), *of = xmalloc(BT * od * sizeof(float));
    if (c) {
        dm2_cache *hc = dm2_cache_alloc(c->B, cfg, &err);
        dm2_prefill(of, a, hc, &h, uf, starts);
        memcpy(c->ssm, hc->ssm, sizeof(float) * c->B * cfg->n_heads * cfg->head_dim * cfg->d_state);
        memcpy(c->conv, hc->conv, sizeof(float) * c->B * dm2_conv_dim(cfg) * DM2_CONV_K);
        dm2_cache_free(hc);
    } else {
        dm2_forward(of, NULL, a, &h, uf, starts);
    }
    for (size_t i = 0; i < BT * od; i++) out[i] = tobf(of[i]);
    free(uf), free(of);
    host_params_free(&h);
    dm2_free_state(a);
}

void cuda_dm2_forward(uint16_t *out, float *final_state, cuda_dm2_acts *s, const cuda_dm2_params *p,
                      const uint16_t *u, const uint8_t *starts) {
    RA_CHECK(final_state == NULL);
    dm2_run(out, s, NULL, p, u, starts);
}

void cuda_dm2_prefill(uint16_t *out, cuda_dm2_acts *s, cuda_dm2_cache *c, const cuda_dm2_params *p, const uint16_t *u,
                      const uint8_t *starts) {
    RA_CHECK(c->B == s->B);
    dm2_run(out, s, c, p, u, starts);
}

void cuda_dm2_step(uint16_t *out, cuda_dm2_cache *c, const cuda_dm2_params *p, const uint16_t *u,
                   const uint8_t *reset) {
    const dm2_config *cfg = &c->cfg;
    ra_error err = {0, ""};
    size_t od = dm2_out_dim(cfg), ssm = (size_t)c->B * cfg->n_heads * cfg->head_dim * cfg->d_state,
           conv = (size_t)c->B * dm2_conv_dim(cfg) * DM2_CONV_K;
    dm2_cache *hc = dm2_cache_alloc(c->B, cfg, &err);
    memcpy(hc->ssm, c->ssm, ssm * sizeof(float));
    memcpy(hc->conv, c->conv, conv * sizeof(float));
    dm2_params h = host_params(p, cfg);
    float *uf = f32_of(u, (size_t)c->B * cfg->d_model), *of = xmalloc(c->B * od * sizeof(float));
    dm2_step(of, hc, &h, uf, reset);
    for (size_t i = 0; i < c->B * od; i++) out[i] = tobf(of[i]);
    memcpy(c->ssm, hc->ssm, ssm * sizeof(float));
    memcpy(c->conv, hc->conv, conv * sizeof(float));
    dm2_cache_free(hc);
    host_params_free(&h);
    free(uf), free(of);
}
