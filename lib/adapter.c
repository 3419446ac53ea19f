/* Adapters between attention and SSM outputs (lib/adapter.h).
 *
 * One per-token core serves both layouts: a token's attention features and
 * its SSM features are each a list of equal-length segments at offsets
 * from a base pointer (static: the kept / the other head slots of one
 * row; linear: one segment of D in each of two arrays).
 *
 * Backward of ã = â·σ + μs with â = (a − μa)·r, r = 1/sqrt(var_a + eps),
 * σ = sqrt(var_s + eps), given g = ∂L/∂ã (Fa features) and the direct
 * gradient gs of the SSM features (Fs of them):
 *     dμs = Σ g,   dσ = Σ g·â
 *     da_j = r·σ·(g_j − dμs/Fa − â_j·dσ/Fa)          (LayerNorm backward)
 *     ds_j = gs_j + dμs/Fs + dσ·(s_j − μs)/(Fs·σ)    (∂σ/∂s_j = (s_j − μs)/(Fs·σ)) */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "adapter.h"
#include "error.h"
#include "ops.h"

#define OMP_MIN_ELEMS 32768

typedef struct seg_layout {
    const int *a_off, *s_off; /* segment offsets (elements) */
    int na, ns, len;          /* segment counts and length */
} seg_layout;

/* Mean and population variance of the segments, two-pass in double. */
static void seg_moments(const float *base, const int *off, int nseg, int len, double *mu, double *var) {
    double s = 0, ss = 0;
    for (int k = 0; k < nseg; k++)
        for (int j = 0; j < len; j++) s += base[off[k] + j];
    double cnt = (double)nseg * len, m = s / cnt;
    for (int k = 0; k < nseg; k++)
        for (int j = 0; j < len; j++) {
            double d = base[off[k] + j] - m;
            ss += d * d;
        }
    *mu = m;
    *var = ss / cnt;
}

/* out_a (at a's offsets from out_base) = rescaled a; st = the 4 stats. */
static void rescale_forward_token(float *out_base, float *st, const float *a_base, const float *s_base,
                                  const seg_layout *L) {
    double mu_a, var_a, mu_s, var_s;
    seg_moments(a_base, L->a_off, L->na, L->len, &mu_a, &var_a);
    seg_moments(s_base, L->s_off, L->ns, L->len, &mu_s, &var_s);
    float r = (float)(1.0 / sqrt(var_a + ADAPTER_EPS)), sg = (float)sqrt(var_s + ADAPTER_EPS);
    float ma = (float)mu_a, ms = (float)mu_s;
    for (int k = 0; k < L->na; k++) {
        const float *a = a_base + L->a_off[k];
        float *o = out_base + L->a_off[k];
        for (int j = 0; j < L->len; j++) o[j] = (a[j] - ma) * r * sg + ms;
    }
    st[0] = ma, st[1] = r, st[2] = ms, st[3] = sg;
}

/* Gradients of one token.  g (at a's offsets from g_base) may be the same
 * memory as da (in place); gs_base (scaled by gs_scale) is the direct
 * gradient of the SSM features, NULL for none. */
typedef struct rescale_grads {
    float *da_base, *ds_base;
    const float *g_base, *gs_base;
    float gs_scale;
} rescale_grads;

static void rescale_backward_token(const rescale_grads *G, const float *a_base, const float *s_base, const float *st,
                                   const seg_layout *L) {
    float ma = st[0], r = st[1], ms = st[2], sg = st[3];
    double dmu = 0, dsg = 0;
    for (int k = 0; k < L->na; k++) {
        const float *g = G->g_base + L->a_off[k], *a = a_base + L->a_off[k];
        for (int j = 0; j < L->len; j++) {
            dmu += g[j];
            dsg += (double)g[j] * ((a[j] - ma) * r);
        }
    }
    double Fa = (double)L->na * L->len, Fs = (double)L->ns * L->len;
    float ca = (float)(dmu / Fa), cb = (float)(dsg / Fa), rs = r * sg;
    if (G->da_base)
        for (int k = 0; k < L->na; k++) {
            const float *g = G->g_base + L->a_off[k], *a = a_base + L->a_off[k];
            float *da = G->da_base + L->a_off[k];
            for (int j = 0; j < L->len; j++) da[j] = rs * (g[j] - ca - (a[j] - ma) * r * cb);
        }
    if (!G->ds_base) return;
    float cmu = (float)(dmu / Fs), csg = (float)(dsg / (Fs * sg));
    for (int k = 0; k < L->ns; k++) {
        const float *s = s_base + L->s_off[k], *gs = G->gs_base ? G->gs_base + L->s_off[k] : NULL;
        float *ds = G->ds_base + L->s_off[k];
        for (int j = 0; j < L->len; j++) ds[j] = (gs ? G->gs_scale * gs[j] : 0.0f) + cmu + csg * (s[j] - ms);
    }
}

/* ------------------------------------------------------------------ static */

/* Offsets of the attention and SSM slots; returns 0 when either kind is
 * missing (pass-through).  a_off, s_off hold H ints each. */
static int slot_layout(seg_layout *L, int *a_off, int *s_off, const uint8_t *attn_slot, int H, int hd) {
    L->na = L->ns = 0;
    for (int h = 0; h < H; h++) {
        if (attn_slot[h]) a_off[L->na++] = h * hd;
        else s_off[L->ns++] = h * hd;
    }
    L->a_off = a_off, L->s_off = s_off, L->len = hd;
    return L->na > 0 && L->ns > 0;
}

void adapter_static_forward(float *out, float *stats, const float *slots, const uint8_t *attn_slot, int n, int H,
                            int hd) {
    size_t row = (size_t)H * hd;
    int *a_off = xmalloc(2 * (size_t)H * sizeof(int));
    seg_layout L;
    int mixed = slot_layout(&L, a_off, a_off + H, attn_slot, H, hd);
    memcpy(out, slots, (size_t)n * row * sizeof(float));
    if (!mixed) memset(stats, 0, (size_t)n * ADAPTER_STATS * sizeof(float));
    else {
#pragma omp parallel for if ((int64_t)n * (int64_t)row >= OMP_MIN_ELEMS)
        for (int i = 0; i < n; i++)
            rescale_forward_token(out + i * row, stats + (size_t)i * ADAPTER_STATS, slots + i * row, slots + i * row,
                                  &L);
    }
    free(a_off);
}

void adapter_static_backward(float *dslots, const float *dout, const float *slots, const float *stats,
                             const uint8_t *attn_slot, int n, int H, int hd) {
    if (!dslots) return;
    size_t row = (size_t)H * hd;
    int *a_off = xmalloc(2 * (size_t)H * sizeof(int));
    seg_layout L;
    int mixed = slot_layout(&L, a_off, a_off + H, attn_slot, H, hd);
    if (!mixed) memcpy(dslots, dout, (size_t)n * row * sizeof(float));
    else {
#pragma omp parallel for if ((int64_t)n * (int64_t)row >= OMP_MIN_ELEMS)
        for (int i = 0; i < n; i++) {
            rescale_grads G = {dslots + i * row, dslots + i * row, dout + i * row, dout + i * row, 1.0f};
            rescale_backward_token(&G, slots + i * row, slots + i * row, stats + (size_t)i * ADAPTER_STATS, &L);
        }
    }
    free(a_off);
}

/* ------------------------------------------------------------------ linear */

void adapter_linear_forward(float *out, float *adapted, float *stats, const float *ssm, const float *attn,
                            const float *W, const float *b, int n, int D) {
    static const int zero = 0;
    seg_layout L = {&zero, &zero, 1, 1, D};
#pragma omp parallel for if ((int64_t)n * D >= OMP_MIN_ELEMS)
    for (int i = 0; i < n; i++)
        rescale_forward_token(adapted + (size_t)i * D, stats + (size_t)i * ADAPTER_STATS, attn + (size_t)i * D,
                              ssm + (size_t)i * D, &L);
    linear_forward(out, adapted, W, b, n, D, D);
    size_t m = (size_t)n * D;
#pragma omp parallel for if ((int64_t)m >= OMP_MIN_ELEMS)
    for (size_t i = 0; i < m; i++) out[i] = 0.5f * (ssm[i] + out[i]);
}

/* db += 0.5·Σ_rows dout (double accumulators, columns split by thread). */
static void half_bias_backward(float *db, const float *dout, int n, int D) {
#pragma omp parallel for if ((int64_t)n * D >= OMP_MIN_ELEMS)
    for (int j = 0; j < D; j++) {
        double acc = 0;
        for (int i = 0; i < n; i++) acc += dout[(size_t)i * D + j];
        db[j] += (float)(0.5 * acc);
    }
}

void adapter_linear_backward(float *dssm, float *dattn, float *dW, float *db, const float *dout, const float *ssm,
                             const float *attn, const float *adapted, const float *stats, const float *W, int n,
                             int D) {
    static const int zero = 0;
    seg_layout L = {&zero, &zero, 1, 1, D};
    if (n <= 0 || D <= 0) return;
    /* ∂L/∂(ã·Wᵀ + b) = 0.5·dout:  dã = 0.5·dout·W (into dattn, the
     * workspace), dW += 0.5·doutᵀ·ã, db += 0.5·Σ dout. */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, D, D, 0.5f, dout, D, W, D, 0.0f, dattn, D);
    if (dW) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, D, D, n, 0.5f, dout, D, adapted, D, 1.0f, dW, D);
    if (db) half_bias_backward(db, dout, n, D);
#pragma omp parallel for if ((int64_t)n * D >= OMP_MIN_ELEMS)
    for (int i = 0; i < n; i++) {
        float *g = dattn + (size_t)i * D;
        rescale_grads G = {g, dssm ? dssm + (size_t)i * D : NULL, g, dout + (size_t)i * D, 0.5f};
        rescale_backward_token(&G, attn + (size_t)i * D, ssm + (size_t)i * D, stats + (size_t)i * ADAPTER_STATS,
                               &L);
    }
}
