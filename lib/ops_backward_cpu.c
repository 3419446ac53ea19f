/* Backward of the CPU Transformer ops (lib/ops.h, "backward" section): fp32,
 * row-major, cblas for the matrix products.  Weight gradients accumulate,
 * input gradients overwrite (see ops.h).
 *
 * Sums over rows into a weight gradient (RMSNorm weight, biases, embedding
 * rows) are split by columns between OpenMP threads rather than by rows,
 * so no two threads ever write the same element and the result does not
 * depend on the thread count. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "ops.h"

#define OMP_MIN_ELEMS 32768
/* Columns per OpenMP work item in the column-split reductions. */
#define COL_BLOCK 64

void embedding_backward(float *dtable, const float *dout, const int32_t *tokens, int n, int D) {
    if (!dtable) return;
    int blocks = (D + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for if ((int64_t)n * D >= OMP_MIN_ELEMS)
    for (int cb = 0; cb < blocks; cb++) {
        int c0 = cb * COL_BLOCK, c1 = c0 + COL_BLOCK < D ? c0 + COL_BLOCK : D;
        for (int i = 0; i < n; i++) {
            float *dst = dtable + (size_t)tokens[i] * D;
            const float *src = dout + (size_t)i * D;
            for (int j = c0; j < c1; j++) dst[j] += src[j];
        }
    }
}

/* y_j = w_j·x_j·r with r = (mean(x²) + eps)^(−1/2), so with g_j = dy_j·w_j:
 * dx_j = r·g_j − r³·x_j·(Σ_k g_k·x_k)/D. */
static void rmsnorm_backward_input(float *dx, const float *dout, const float *in, const float *weight,
                                   const float *rstd, int n, int D) {
#pragma omp parallel for if ((int64_t)n * D >= OMP_MIN_ELEMS)
    for (int i = 0; i < n; i++) {
        const float *x = in + (size_t)i * D, *dy = dout + (size_t)i * D;
        float *g = dx + (size_t)i * D;
        double dot = 0;
        for (int j = 0; j < D; j++) dot += (double)dy[j] * weight[j] * x[j];
        double r = rstd[i];
        float c = (float)(r * r * r * dot / D);
        for (int j = 0; j < D; j++) g[j] = (float)r * (dy[j] * weight[j]) - c * x[j];
    }
}

void rmsnorm_backward(float *dx, float *dweight, const float *dout, const float *in, const float *weight,
                      const float *rstd, int n, int D) {
    if (dweight) {
        int blocks = (D + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for if ((int64_t)n * D >= OMP_MIN_ELEMS)
        for (int cb = 0; cb < blocks; cb++) {
            int c0 = cb * COL_BLOCK, c1 = c0 + COL_BLOCK < D ? c0 + COL_BLOCK : D;
            double acc[COL_BLOCK] = {0};
            for (int i = 0; i < n; i++) {
                const float *x = in + (size_t)i * D, *dy = dout + (size_t)i * D;
                for (int j = c0; j < c1; j++) acc[j - c0] += (double)dy[j] * x[j] * rstd[i];
            }
            for (int j = c0; j < c1; j++) dweight[j] += (float)acc[j - c0];
        }
    }
    if (dx) rmsnorm_backward_input(dx, dout, in, weight, rstd, n, D);
}

/* db += Σ_rows dout, column blocks in parallel, double accumulators. */
static void bias_backward(float *db, const float *dout, int n, int out_dim) {
    int blocks = (out_dim + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for if ((int64_t)n * out_dim >= OMP_MIN_ELEMS)
    for (int cb = 0; cb < blocks; cb++) {
        int c0 = cb * COL_BLOCK, c1 = c0 + COL_BLOCK < out_dim ? c0 + COL_BLOCK : out_dim;
        double acc[COL_BLOCK] = {0};
        for (int i = 0; i < n; i++)
            for (int o = c0; o < c1; o++) acc[o - c0] += dout[(size_t)i * out_dim + o];
        for (int o = c0; o < c1; o++) db[o] += (float)acc[o - c0];
    }
}

void linear_backward(float *dx, float *dW, float *db, const float *dout, const float *in, const float *W, int n,
                     int in_dim, int out_dim) {
    if (n <= 0 || in_dim <= 0 || out_dim <= 0) return;
    if (dx) /* [n,in] = dout[n,out] · W[out,in] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in_dim, out_dim, 1.0f, dout, out_dim, W, in_dim,
                    0.0f, dx, in_dim);
    if (dW) /* [out,in] += doutᵀ · in */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out_dim, in_dim, n, 1.0f, dout, out_dim, in, in_dim,
                    1.0f, dW, in_dim);
    if (db) bias_backward(db, dout, n, out_dim);
}

void rope_backward(float *dx, const float *cos_t, const float *sin_t, int n, int heads, int head_dim) {
    int half = head_dim / 2;
#pragma omp parallel for if ((int64_t)n * heads * head_dim >= OMP_MIN_ELEMS)
    for (int i = 0; i < n; i++) {
        const float *c = cos_t + (size_t)i * half, *s = sin_t + (size_t)i * half;
        for (int h = 0; h < heads; h++) {
            float *g = dx + ((size_t)i * heads + h) * head_dim;
            for (int j = 0; j < half; j++) {
                /* transpose of [[c, −s], [s, c]] */
                float g1 = g[j], g2 = g[j + half];
                g[j] = g1 * c[j] + g2 * s[j];
                g[j + half] = g2 * c[j] - g1 * s[j];
            }
        }
    }
}

/* Query rows per tile, as in attention_forward. */
#define ATT_TILE 128

/* First key token t may attend to (attention_forward's rule: a malformed
 * doc start falls back to plain causal). */
static inline int first_key(const int32_t *ds, int t) { return ds && ds[t] >= 0 && ds[t] <= t ? ds[t] : 0; }

/* Softmax over row[lo..hi], zeros elsewhere in [0, n). */
static void softmax_masked_row(float *row, int n, int lo, int hi) {
    float mx = -INFINITY;
    for (int s = lo; s <= hi; s++) mx = row[s] > mx ? row[s] : mx;
    double sum = 0;
    for (int s = lo; s <= hi; s++) {
        row[s] = expf(row[s] - mx);
        sum += row[s];
    }
    float inv = (float)(1.0 / sum);
    for (int s = 0; s < n; s++) row[s] = s >= lo && s <= hi ? row[s] * inv : 0.0f;
}

/* dS = P ⊙ (dP − rowsum(P ⊙ dP)), the softmax backward, in place in dP. */
static void softmax_backward_rows(float *dP, const float *P, int rows, int nk) {
#pragma omp parallel for if ((int64_t)rows * nk >= OMP_MIN_ELEMS)
    for (int i = 0; i < rows; i++) {
        const float *p = P + (size_t)i * nk;
        float *d = dP + (size_t)i * nk;
        double dot = 0;
        for (int s = 0; s < nk; s++) dot += (double)p[s] * d[s];
        float fd = (float)dot;
        for (int s = 0; s < nk; s++) d[s] = p[s] * (d[s] - fd);
    }
}

typedef struct att_dims {
    int B, T, H, Hkv, hd;
} att_dims;

/* One (batch b, head h, query tile [t0, t1)): dq of the tile (overwrite),
 * dk, dv of the keys it sees (accumulate).  P, dP: [ATT_TILE, T] scratch. */
static void attention_backward_tile(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                    const float *k, const float *v, const int32_t *ds, att_dims d, int b, int h,
                                    int t0, float *P, float *dP) {
    int T = d.T, hd = d.hd, q_row = d.H * hd, kv_row = d.Hkv * hd, g = h / (d.H / d.Hkv);
    int t1 = t0 + ATT_TILE < T ? t0 + ATT_TILE : T, rows = t1 - t0;
    int k0 = t0;
    for (int t = t0; t < t1; t++) k0 = first_key(ds, t) < k0 ? first_key(ds, t) : k0;
    int nk = t1 - k0;
    float scale = (float)(1.0 / sqrt((double)hd));
    size_t qoff = ((size_t)b * T + t0) * q_row + (size_t)h * hd;
    size_t koff = ((size_t)b * T + k0) * kv_row + (size_t)g * hd;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, nk, hd, scale, q + qoff, q_row, k + koff, kv_row, 0.0f,
                P, nk);
#pragma omp parallel for if ((int64_t)rows * nk >= OMP_MIN_ELEMS)
    for (int i = 0; i < rows; i++) softmax_masked_row(P + (size_t)i * nk, nk, first_key(ds, t0 + i) - k0, t0 + i - k0);
    /* dV_keys += Pᵀ · dO;  dP = dO · V_keysᵀ */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, hd, rows, 1.0f, P, nk, dout + qoff, q_row, 1.0f,
                dv + koff, kv_row);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, nk, hd, 1.0f, dout + qoff, q_row, v + koff, kv_row,
                0.0f, dP, nk);
    softmax_backward_rows(dP, P, rows, nk);
    /* scores = scale·q·kᵀ:  dq = scale·dS·K,  dK += scale·dSᵀ·Q */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd, nk, scale, dP, nk, k + koff, kv_row, 0.0f,
                dq + qoff, q_row);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, hd, rows, scale, dP, nk, q + qoff, q_row, 1.0f,
                dk + koff, kv_row);
}

void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                        const float *v, const int32_t *doc_start, int B, int T, int H, int Hkv, int hd) {
    att_dims d = {B, T, H, Hkv, hd};
    size_t kv_elems = (size_t)B * T * Hkv * hd;
    memset(dk, 0, kv_elems * sizeof(float));
    memset(dv, 0, kv_elems * sizeof(float));
    size_t tile = (size_t)(T < ATT_TILE ? T : ATT_TILE) * T;
    float *P = xmalloc(tile * sizeof(float)), *dP = xmalloc(tile * sizeof(float));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t0 = 0; t0 < T; t0 += ATT_TILE)
                attention_backward_tile(dq, dk, dv, dout, q, k, v, doc_start ? doc_start + (size_t)b * T : NULL, d,
                                        b, h, t0, P, dP);
    free(P);
    free(dP);
}

void head_mask_backward(float *dout, const uint8_t *head_keep, int B, int T, int H, int hd) {
    head_mask_apply(dout, head_keep, B, T, H, hd);
}

void swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, int64_t n) {
#pragma omp parallel for if (n >= OMP_MIN_ELEMS)
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i], u = up[i], dy = dout[i];
        float sig = 1.0f / (1.0f + expf(-g));
        float silu = g * sig;
        /* d silu/dg = σ(g)·(1 + g·(1 − σ(g))) */
        if (dgate) dgate[i] = dy * u * sig * (1.0f + g * (1.0f - sig));
        if (dup) dup[i] = dy * silu;
    }
}
