/* DiscreteMamba2 decode: prefill (chunked forward that keeps the final
 * states) and the one-token recurrent step.  See dm2.h for the cache layout. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dm2.h"

static size_t ssm_floats(const dm2_config *c) { return (size_t)c->n_heads * c->head_dim * c->d_state; }
static size_t conv_floats(const dm2_config *c) { return (size_t)dm2_conv_dim(c) * DM2_CONV_K; }

dm2_cache *dm2_cache_alloc(int B, const dm2_config *cfg, ra_error *err) {
    if (dm2_check_config(cfg, err)) return NULL;
    if (B < 1) {
        ra_fail(err, EX_DATAERR, "dm2 cache: batch must be >= 1, got %d", B);
        return NULL;
    }
    dm2_cache *c = xcalloc(1, sizeof *c);
    c->B = B, c->cfg = *cfg;
    c->ssm = xcalloc((size_t)B * ssm_floats(cfg), sizeof(float));
    c->conv = xcalloc((size_t)B * conv_floats(cfg), sizeof(float));
    /* proj [B,in_dim] + conv out [B,conv_dim] + gated y [B,inner] */
    c->work = xmalloc(sizeof(float) * B * ((size_t)dm2_in_proj_dim(cfg) + dm2_conv_dim(cfg) + dm2_d_inner(cfg)));
    return c;
}

void dm2_cache_free(dm2_cache *c) {
    if (!c) return;
    free(c->ssm), free(c->conv), free(c->work), free(c);
}

void dm2_cache_reset(dm2_cache *c, int b) {
    if (b < 0) {
        memset(c->ssm, 0, sizeof(float) * c->B * ssm_floats(&c->cfg));
        memset(c->conv, 0, sizeof(float) * c->B * conv_floats(&c->cfg));
        return;
    }
    memset(c->ssm + b * ssm_floats(&c->cfg), 0, sizeof(float) * ssm_floats(&c->cfg));
    memset(c->conv + b * conv_floats(&c->cfg), 0, sizeof(float) * conv_floats(&c->cfg));
}

void dm2_prefill(float *out, dm2_acts *s, dm2_cache *c, const dm2_params *p, const float *u, const uint8_t *starts) {
    RA_CHECK(c->B == s->B);
    dm2_forward(out, c->ssm, s, p, u, starts);
    /* conv state: the last 4 pre-conv inputs of the last document of each row */
    const int T = s->T, conv = dm2_conv_dim(&s->cfg), in_dim = dm2_in_proj_dim(&s->cfg);
    for (int b = 0; b < s->B; b++) {
        int doc_start = 0;
        if (starts)
            for (int t = T - 1; t >= 0; t--)
                if (starts[(int64_t)b * T + t]) {
                    doc_start = t;
                    break;
                }
        for (int j = 0; j < DM2_CONV_K; j++) {
            int t = T - DM2_CONV_K + j;
            const float *row = t >= doc_start ? s->proj + ((int64_t)b * T + t) * in_dim : NULL;
            for (int ch = 0; ch < conv; ch++)
                c->conv[((int64_t)b * conv + ch) * DM2_CONV_K + j] = row ? row[ch] : 0.0f;
        }
    }
}

void dm2_step(float *out, dm2_cache *c, const dm2_params *p, const float *u, const uint8_t *reset) {
    const dm2_config *cfg = &c->cfg;
    const int B = c->B, D = cfg->d_model, H = cfg->n_heads, P = cfg->head_dim, N = cfg->d_state;
    const int inner = dm2_d_inner(cfg), conv = dm2_conv_dim(cfg), in_dim = dm2_in_proj_dim(cfg);
    const int gn = cfg->n_groups * N, hpg = H / cfg->n_groups;
    float *proj = c->work, *xbc = proj + (size_t)B * in_dim, *yg = xbc + (size_t)B * conv;
    if (reset)
        for (int b = 0; b < B; b++)
            if (reset[b]) dm2_cache_reset(c, b);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, in_dim, D, 1.0f, u, D, p->in_proj_w, D, 0.0f, proj,
                in_dim);
#pragma omp parallel for schedule(static) if ((int64_t)B * inner * N > 65536)
    for (int b = 0; b < B; b++) {
        const float *pr = proj + (size_t)b * in_dim;
        float *xb = xbc + (size_t)b * conv;
        for (int ch = 0; ch < conv; ch++) {
            float *st = c->conv + ((int64_t)b * conv + ch) * DM2_CONV_K;
            memmove(st, st + 1, sizeof(float) * (DM2_CONV_K - 1));
            st[DM2_CONV_K - 1] = pr[ch];
            float acc = p->conv_b[ch];
            for (int j = 0; j < DM2_CONV_K; j++) acc += p->conv_w[ch * DM2_CONV_K + j] * st[j];
            xb[ch] = acc;
        }
        float a[H];
        ssd_decay_forward(a, pr + conv + inner, H);
        for (int h = 0; h < H; h++) {
            const float *x = xb + h * P, *Bv = xb + inner + (h / hpg) * N, *Cv = xb + inner + gn + (h / hpg) * N;
            const float *z = pr + conv + h * P;
            float *S = c->ssm + ((int64_t)b * H + h) * P * N, alpha = expf(a[h]);
            for (int q = 0; q < P; q++) {
                float acc = 0;
                for (int n = 0; n < N; n++) {
                    S[q * N + n] = alpha * S[q * N + n] + x[q] * Bv[n];
                    acc += S[q * N + n] * Cv[n];
                }
                float y = acc + p->D[h] * x[q], v = z[q] + p->z_bias[h * P + q];
                yg[(size_t)b * inner + h * P + q] = y * v / (1.0f + expf(-v));
            }
        }
    }
    if (cfg->has_out_proj)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, D, inner, 1.0f, yg, inner, p->out_proj_w, inner, 0.0f,
                    out, D);
    else
        memcpy(out, yg, sizeof(float) * (size_t)B * inner);
}
