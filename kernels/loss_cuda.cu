/* The training and evaluation losses on the GPU: the CUDA twins of
 * lib/loss.c (contract in kernels/ops_backward_cuda.h, formulas in
 * lib/loss.h).
 *
 * Vocabulary rows: one block per row; each thread keeps an online
 * log-sum-exp (running maximum m, Σ exp(x − m) and a second sum weighted by
 * the same exponentials) over its strided elements of the bf16 row, and the
 * block merges the threads' states in a fixed tree.  Nothing of size [n, V]
 * is allocated; per-row results go to a small scratch array, are
 * downloaded, and summed in row order in double on the host, so the loss
 * value is deterministic.  Gradients are written bf16, elementwise, and may
 * overwrite the logits they are computed from. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "train_common.cuh"

extern "C" {
#include "loss.h"
}

#define LOSS_THREADS 256

/* ---- online log-sum-exp ----------------------------------------------------- */

struct olse {
    float m, s, w; /* max, Σ exp(x − m), Σ exp(x − m)·y */
};

__device__ __forceinline__ olse olse_init(void) { return olse{-INFINITY, 0.0f, 0.0f}; }

__device__ __forceinline__ void olse_add(olse &o, float x, float y) {
    if (x == -INFINITY) return;
    if (x > o.m) {
        float f = expf(o.m - x); /* 0 while o is empty */
        o.s = o.s * f + 1.0f;
        o.w = o.w * f + y;
        o.m = x;
    } else {
        float e = expf(x - o.m);
        o.s += e;
        o.w += e * y;
    }
}

__device__ __forceinline__ olse olse_merge(olse a, olse b) {
    float m = fmaxf(a.m, b.m);
    if (m == -INFINITY) return a;
    float fa = expf(a.m - m), fb = expf(b.m - m);
    return olse{m, a.s * fa + b.s * fb, a.w * fa + b.w * fb};
}

__device__ __forceinline__ float olse_value(const olse &o) { return o.m + logf(o.s); }

/* Block-wide merge (fixed order); every thread gets the result.  shared:
 * 32 entries.  Contains __syncthreads. */
__device__ olse block_merge(olse v, olse *shared) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        olse u{__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.s, o),
               __shfl_xor_sync(0xffffffffu, v.w, o)};
        v = olse_merge(v, u);
    }
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    olse r = olse_init();
    for (int k = 0; k < nwarps; k++) r = olse_merge(r, shared[k]);
    return r;
}

/* ---- per-row results ------------------------------------------------------------ */

static float *rows_scratch(int n) { return (float *)train_scratch(TS_ROWS, (size_t)(n > 0 ? n : 1) * sizeof(float)); }

/* Σ of the n device floats, in row order, in double. */
static double sum_rows(const float *d_rows, int n) {
    float *h = (float *)xmalloc((size_t)n * sizeof(float) + 1);
    cuda_synchronize();
    cuda_download(h, d_rows, (size_t)n * sizeof(float));
    double s = 0;
    for (int i = 0; i < n; i++) s += h[i];
    free(h);
    return s;
}

/* ---- stage 1: Frobenius distance of matrices -------------------------------------- */

/* rows[m·T + l] = Σ_{s ≤ l} (Ts − A)², one block per (m, l). */
__global__ void matrix_rows_kernel(float *rows, const float *Ts, const float *A, int T) {
    __shared__ float scratch[32];
    int64_t r = blockIdx.x;
    int l = (int)(r % T);
    const float *ts = Ts + r * T, *a = A + r * T;
    float ss = 0.0f;
    for (int s = threadIdx.x; s <= l; s += blockDim.x) {
        float d = ts[s] - a[s];
        ss += d * d;
    }
    ss = block_sum(ss, scratch);
    if (threadIdx.x == 0) rows[r] = ss;
}

/* norm[m] = sqrt(Σ_l rows[m·T + l]) in row order, double. */
__global__ void matrix_norm_kernel(double *norm, const float *rows, int BH, int T) {
    int m = blockIdx.x * blockDim.x + threadIdx.x;
    if (m >= BH) return;
    double s = 0;
    for (int l = 0; l < T; l++) s += rows[(int64_t)m * T + l];
    norm[m] = sqrt(s);
}

/* Per-matrix norms into device scratch; returns the pointer. */
static double *matrix_norms(const float *Ts, const float *A, int BH, int T) {
    size_t nrows = (size_t)BH * T, off = (nrows * sizeof(float) + 15) & ~(size_t)15;
    char *buf = (char *)train_scratch(TS_ROWS, off + (size_t)BH * sizeof(double));
    float *rows = (float *)buf;
    double *norm = (double *)(buf + off);
    matrix_rows_kernel<<<(unsigned)nrows, LOSS_THREADS, 0, ra_cuda_stream>>>(rows, Ts, A, T);
    CUDA_CHECK_LAST();
    matrix_norm_kernel<<<(BH + 127) / 128, 128, 0, ra_cuda_stream>>>(norm, rows, BH, T);
    CUDA_CHECK_LAST();
    return norm;
}

/* The mean of the norms (one download: synchronises). */
static double matrix_loss_value(const double *d_norm, int BH) {
    double *h = (double *)xmalloc((size_t)BH * sizeof(double));
    cuda_synchronize();
    cuda_download(h, d_norm, (size_t)BH * sizeof(double));
    double L = 0;
    for (int m = 0; m < BH; m++) L += h[m];
    free(h);
    return L / BH;
}

extern "C" double cuda_loss_matrix_forward(const float *Ts, const float *A, int BH, int T) {
    if (BH <= 0 || T <= 0) return 0;
    return matrix_loss_value(matrix_norms(Ts, A, BH, T), BH);
}

/* One block per matrix row (m, l), 4 columns per thread per pass: no index
 * divisions per element (the grid-stride version with three 64-bit
 * divisions per element took 4.4 ms per layer at the 1B stage-1 shape). */
__global__ void matrix_grad_kernel(float *dTs, const float *Ts, const float *A, const double *norm, int BH, int T,
                                   float dloss) {
    const int64_t r = blockIdx.x;
    const int m = (int)(r / T), l = (int)(r - (int64_t)m * T);
    const double nm = norm[m];
    const float c = nm > 0 ? (float)(dloss / (BH * nm)) : 0.0f; /* ∂‖X‖_F/∂X = X/‖X‖_F; 0 at X = 0 */
    const int64_t base = r * T;
    for (int s = 4 * threadIdx.x; s < T; s += 4 * blockDim.x) {
        const int64_t i = base + s;
        if (s + 3 < T && !(((uintptr_t)(Ts + i) | (uintptr_t)(A + i) | (uintptr_t)(dTs + i)) & 15)) {
            float4 t4 = *reinterpret_cast<const float4 *>(Ts + i), a4 = *reinterpret_cast<const float4 *>(A + i), g;
            g.x = s <= l ? c * (t4.x - a4.x) : 0.0f;
            g.y = s + 1 <= l ? c * (t4.y - a4.y) : 0.0f;
            g.z = s + 2 <= l ? c * (t4.z - a4.z) : 0.0f;
            g.w = s + 3 <= l ? c * (t4.w - a4.w) : 0.0f;
            *reinterpret_cast<float4 *>(dTs + i) = g;
        } else {
            for (int e = s; e < s + 4 && e < T; e++) dTs[base + e] = e <= l ? c * (Ts[base + e] - A[base + e]) : 0.0f;
        }
    }
}

static void matrix_grad_launch(float *dTs, const float *Ts, const float *A, const double *d_norm, int BH, int T,
                               float dloss) {
    const int64_t rows = (int64_t)BH * T;
    RA_CHECK(rows <= 2147483647);
    matrix_grad_kernel<<<(unsigned)rows, T >= 1024 ? 256 : 64, 0, ra_cuda_stream>>>(dTs, Ts, A, d_norm, BH, T, dloss);
    CUDA_CHECK_LAST();
}

extern "C" void cuda_loss_matrix_backward(float *dTs, const float *Ts, const float *A, int BH, int T, float dloss) {
    if (BH <= 0 || T <= 0) return;
    matrix_grad_launch(dTs, Ts, A, matrix_norms(Ts, A, BH, T), BH, T, dloss);
}

extern "C" double cuda_loss_matrix(float *dTs, const float *Ts, const float *A, int BH, int T, float dloss) {
    if (BH <= 0 || T <= 0) return 0;
    double *d_norm = matrix_norms(Ts, A, BH, T);
    if (dTs) matrix_grad_launch(dTs, Ts, A, d_norm, BH, T, dloss);
    return matrix_loss_value(d_norm, BH);
}

/* ---- stage 2: per-token L2 --------------------------------------------------------- */

__device__ float row_distance(const bf16 *x, const bf16 *y, int D, float *scratch) {
    float ss = 0.0f;
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        float d = __bfloat162float(x[j]) - __bfloat162float(y[j]);
        ss += d * d;
    }
    return sqrtf(block_sum(ss, scratch));
}

__global__ void l2_rows_kernel(float *dist, const bf16 *out, const bf16 *target, int D) {
    __shared__ float scratch[32];
    size_t base = (size_t)blockIdx.x * D;
    float d = row_distance(out + base, target + base, D, scratch);
    if (threadIdx.x == 0) dist[blockIdx.x] = d;
}

extern "C" double cuda_loss_l2_forward(const uint16_t *out, const uint16_t *target, int n, int D) {
    if (n <= 0) return 0;
    float *dist = rows_scratch(n);
    l2_rows_kernel<<<n, LOSS_THREADS, 0, ra_cuda_stream>>>(dist, (const bf16 *)out, (const bf16 *)target, D);
    CUDA_CHECK_LAST();
    return sum_rows(dist, n) / n;
}

__global__ void l2_grad_kernel(bf16 *dout, const bf16 *out, const bf16 *target, int n, int D, float dloss) {
    __shared__ float scratch[32];
    size_t base = (size_t)blockIdx.x * D;
    float dist = row_distance(out + base, target + base, D, scratch);
    float c = dist > 0 ? dloss / ((float)n * dist) : 0.0f;
    for (int j = threadIdx.x; j < D; j += blockDim.x)
        dout[base + j] = __float2bfloat16(c * (__bfloat162float(out[base + j]) - __bfloat162float(target[base + j])));
}

extern "C" void cuda_loss_l2_backward(uint16_t *dout, const uint16_t *out, const uint16_t *target, int n, int D,
                                      float dloss) {
    if (n <= 0 || D <= 0) return;
    l2_grad_kernel<<<n, LOSS_THREADS, 0, ra_cuda_stream>>>((bf16 *)dout, (const bf16 *)out, (const bf16 *)target, n, D,
                                                          dloss);
    CUDA_CHECK_LAST();
}

/* ---- stage 3: soft-target cross-entropy --------------------------------------------- */

/* One block per row: ce[i], lse_s[i] = lse(zs/T), lse_t[i] = lse(zt); with
 * dzs, then dzs = c·(softmax(zs/T) − softmax(zt)) with c = dloss/(n·T).
 * VEC: 8 logits per thread through 16-byte accesses (V % 8 == 0, aligned
 * rows; soft_ce_launch decides); the vocabulary pass is memory bound. */
template <bool VEC>
__global__ void soft_ce_kernel(float *ce, float *lse_s, float *lse_t, bf16 *dzs, const bf16 *zs, const bf16 *zt,
                               int V, float inv_t, float c) {
    __shared__ olse shared[32];
    const size_t base = (size_t)blockIdx.x * V;
    olse s = olse_init(), t = olse_init();
    if (VEC) {
        const uint4 *rs = reinterpret_cast<const uint4 *>(zs + base), *rt = reinterpret_cast<const uint4 *>(zt + base);
        for (int v = threadIdx.x; v < V / 8; v += blockDim.x) {
            float a[8], b[8];
            bf16x8_to_float(rs[v], a);
            bf16x8_to_float(rt[v], b);
#pragma unroll
            for (int k = 0; k < 8; k++) {
                olse_add(s, a[k] * inv_t, 0.0f);
                olse_add(t, b[k], a[k] * inv_t);
            }
        }
    } else {
        for (int v = threadIdx.x; v < V; v += blockDim.x) {
            float a = __bfloat162float(zs[base + v]) * inv_t;
            olse_add(s, a, 0.0f);
            olse_add(t, __bfloat162float(zt[base + v]), a);
        }
    }
    s = block_merge(s, shared);
    t = block_merge(t, shared);
    float ls = olse_value(s), lt = olse_value(t);
    if (threadIdx.x == 0) {
        if (ce) ce[blockIdx.x] = ls - t.w / t.s; /* lse(zs/T) − E_teacher[zs/T] */
        if (lse_s) lse_s[blockIdx.x] = ls;
        if (lse_t) lse_t[blockIdx.x] = lt;
    }
    if (!dzs) return;
    /* every thread's reads of the row are done (block_merge synchronises) */
    if (VEC) {
        const uint4 *rs = reinterpret_cast<const uint4 *>(zs + base), *rt = reinterpret_cast<const uint4 *>(zt + base);
        uint4 *rd = reinterpret_cast<uint4 *>(dzs + base);
        for (int v = threadIdx.x; v < V / 8; v += blockDim.x) {
            float a[8], b[8];
            bf16x8_to_float(rs[v], a);
            bf16x8_to_float(rt[v], b);
#pragma unroll
            for (int k = 0; k < 8; k++) a[k] = c * (expf(a[k] * inv_t - ls) - expf(b[k] - lt));
            rd[v] = float_to_bf16x8(a);
        }
    } else {
        for (int v = threadIdx.x; v < V; v += blockDim.x) {
            float a = __bfloat162float(zs[base + v]) * inv_t, b = __bfloat162float(zt[base + v]);
            dzs[base + v] = __float2bfloat16(c * (expf(a - ls) - expf(b - lt)));
        }
    }
}

static void soft_ce_launch(float *ce, float *lse_s, float *lse_t, uint16_t *dzs, const uint16_t *zs, const uint16_t *zt,
                           int n, int V, float inv_t, float c) {
    if (V % 8 == 0 && ra_aligned16(zs) && ra_aligned16(zt) && (!dzs || ra_aligned16(dzs)))
        soft_ce_kernel<true><<<n, LOSS_THREADS, 0, ra_cuda_stream>>>(ce, lse_s, lse_t, (bf16 *)dzs, (const bf16 *)zs,
                                                                     (const bf16 *)zt, V, inv_t, c);
    else
        soft_ce_kernel<false><<<n, LOSS_THREADS, 0, ra_cuda_stream>>>(ce, lse_s, lse_t, (bf16 *)dzs, (const bf16 *)zs,
                                                                      (const bf16 *)zt, V, inv_t, c);
    CUDA_CHECK_LAST();
}

extern "C" double cuda_loss_soft_ce_forward(float *lse_s, float *lse_t, const uint16_t *zs, const uint16_t *zt, int n,
                                            int V, float T, int chunk) {
    (void)chunk;
    if (n <= 0) return 0;
    float *ce = rows_scratch(n);
    soft_ce_launch(ce, lse_s, lse_t, NULL, zs, zt, n, V, 1.0f / T, 0.0f);
    return sum_rows(ce, n) / n;
}

extern "C" double cuda_loss_soft_ce_fused(uint16_t *dzs, const uint16_t *zs, const uint16_t *zt, int n, int V, float T,
                                          float dloss) {
    if (n <= 0) return 0;
    float *ce = rows_scratch(n);
    float c = (float)(dloss / ((double)n * T));
    soft_ce_launch(ce, NULL, NULL, dzs, zs, zt, n, V, 1.0f / T, c);
    return sum_rows(ce, n) / n;
}

__global__ void soft_ce_grad_kernel(bf16 *dzs, const bf16 *zs, const bf16 *zt, const float *lse_s, const float *lse_t,
                                    int V, float inv_t, float c) {
    size_t base = (size_t)blockIdx.x * V;
    float ls = lse_s[blockIdx.x], lt = lse_t[blockIdx.x];
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        float a = __bfloat162float(zs[base + v]) * inv_t, b = __bfloat162float(zt[base + v]);
        dzs[base + v] = __float2bfloat16(c * (expf(a - ls) - expf(b - lt)));
    }
}

extern "C" void cuda_loss_soft_ce_backward(uint16_t *dzs, const uint16_t *zs, const uint16_t *zt, const float *lse_s,
                                           const float *lse_t, int n, int V, float T, float dloss) {
    if (n <= 0 || V <= 0) return;
    float c = (float)(dloss / ((double)n * T));
    soft_ce_grad_kernel<<<n, LOSS_THREADS, 0, ra_cuda_stream>>>((bf16 *)dzs, (const bf16 *)zs, (const bf16 *)zt, lse_s,
                                                                lse_t, V, 1.0f / T, c);
    CUDA_CHECK_LAST();
}

/* ---- hard labels ------------------------------------------------------------------------ */

/* Host copy of the device labels (synchronises): the checks and the count
 * of counted rows are the CPU twin's, done on the host. */
static int32_t *host_labels(const int32_t *labels, int n) {
    int32_t *h = (int32_t *)xmalloc((size_t)n * sizeof(int32_t) + 1);
    cuda_synchronize();
    cuda_download(h, labels, (size_t)n * sizeof(int32_t));
    return h;
}

__global__ void ce_rows_kernel(float *row, float *lse, float *nll, const bf16 *z, const int32_t *labels, int V,
                               int ignore_index) {
    __shared__ olse shared[32];
    size_t base = (size_t)blockIdx.x * V;
    olse o = olse_init();
    for (int v = threadIdx.x; v < V; v += blockDim.x) olse_add(o, __bfloat162float(z[base + v]), 0.0f);
    o = block_merge(o, shared);
    if (threadIdx.x == 0) {
        float l = olse_value(o);
        int lab = labels[blockIdx.x];
        float r = lab == ignore_index ? 0.0f : l - __bfloat162float(z[base + lab]);
        lse[blockIdx.x] = l;
        row[blockIdx.x] = r;
        if (nll) nll[blockIdx.x] = r;
    }
}

extern "C" int cuda_loss_ce_forward(double *loss, float *lse, float *nll, int *counted, const uint16_t *z,
                                    const int32_t *labels, int n, int V, int ignore_index, int chunk, ra_error *err) {
    (void)chunk;
    *loss = 0;
    if (counted) *counted = 0;
    if (n <= 0) return 0;
    int32_t *h = host_labels(labels, n);
    int cnt = 0;
    for (int i = 0; i < n; i++) {
        if (h[i] == ignore_index) continue;
        if (h[i] < 0 || h[i] >= V) {
            int bad = h[i];
            free(h);
            return ra_fail(err, EX_DATAERR, "label of row %d is %d, expected 0..%d or the ignore index %d", i, bad,
                           V - 1, ignore_index);
        }
        cnt++;
    }
    free(h);
    if (counted) *counted = cnt;
    float *row = rows_scratch(n);
    ce_rows_kernel<<<n, LOSS_THREADS, 0, ra_cuda_stream>>>(row, lse, nll, (const bf16 *)z, labels, V, ignore_index);
    CUDA_CHECK_LAST();
    double s = sum_rows(row, n);
    if (cnt > 0) *loss = s / cnt;
    return 0;
}

__global__ void ce_grad_kernel(bf16 *dz, const bf16 *z, const int32_t *labels, const float *lse, int V,
                               int ignore_index, float c) {
    size_t base = (size_t)blockIdx.x * V;
    int lab = labels[blockIdx.x];
    bool zero = lab == ignore_index || c == 0.0f;
    float l = lse[blockIdx.x];
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        float g = zero ? 0.0f : c * expf(__bfloat162float(z[base + v]) - l) - (v == lab ? c : 0.0f);
        dz[base + v] = __float2bfloat16(g);
    }
}

extern "C" void cuda_loss_ce_backward(uint16_t *dz, const uint16_t *z, const int32_t *labels, const float *lse, int n,
                                      int V, int ignore_index, float dloss) {
    if (n <= 0 || V <= 0) return;
    int32_t *h = host_labels(labels, n);
    int cnt = 0;
    for (int i = 0; i < n; i++) cnt += h[i] != ignore_index;
    free(h);
    float c = cnt > 0 ? dloss / cnt : 0.0f;
    ce_grad_kernel<<<n, LOSS_THREADS, 0, ra_cuda_stream>>>((bf16 *)dz, (const bf16 *)z, labels, lse, V, ignore_index,
                                                           c);
    CUDA_CHECK_LAST();
}

/* ---- evaluation: KL(teacher ‖ student) ----------------------------------------------------- */

__global__ void kl_rows_kernel(float *row, float *kl, const bf16 *zs, const bf16 *zt, int V) {
    __shared__ olse shared[32];
    size_t base = (size_t)blockIdx.x * V;
    olse s = olse_init(), t = olse_init();
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        float a = __bfloat162float(zs[base + v]), b = __bfloat162float(zt[base + v]);
        olse_add(s, a, 0.0f);
        olse_add(t, b, b - a);
    }
    s = block_merge(s, shared);
    t = block_merge(t, shared);
    if (threadIdx.x == 0) {
        /* Σ p_t (log p_t − log p_s) = E_t[zt − zs] − lse(zt) + lse(zs) */
        float d = t.w / t.s - olse_value(t) + olse_value(s);
        d = d > 0 ? d : 0.0f; /* rounding can give a tiny negative for equal rows */
        row[blockIdx.x] = d;
        if (kl) kl[blockIdx.x] = d;
    }
}

extern "C" double cuda_loss_kl(float *kl, const uint16_t *zs, const uint16_t *zt, int n, int V, int chunk) {
    (void)chunk;
    if (n <= 0) return 0;
    float *row = rows_scratch(n);
    kl_rows_kernel<<<n, LOSS_THREADS, 0, ra_cuda_stream>>>(row, kl, (const bf16 *)zs, (const bf16 *)zt, V);
    CUDA_CHECK_LAST();
    return sum_rows(row, n) / n;
}

/* ---- asynchronous row variants for the training step ------------------------------------
 * No host synchronisation: per-row values go to a caller's device array
 * (summed once per micro-batch by the caller), labels must already have
 * been checked on the host. */

/* One block per row: row_loss[i] = lse(z) − z[label] (0 for an ignored
 * row); with dz (may be z), dz = c·(softmax(z) − onehot(label)), 0 for an
 * ignored row. */
__global__ void ce_rows_fused_kernel(float *row_loss, bf16 *dz, const bf16 *z, const int32_t *labels, int V,
                                     int ignore_index, float c) {
    __shared__ olse shared[32];
    size_t base = (size_t)blockIdx.x * V;
    int lab = labels[blockIdx.x];
    bool ignored = lab == ignore_index;
    float zl = ignored ? 0.0f : __bfloat162float(z[base + lab]);
    olse o = olse_init();
    for (int v = threadIdx.x; v < V; v += blockDim.x) olse_add(o, __bfloat162float(z[base + v]), 0.0f);
    o = block_merge(o, shared); /* synchronises: every read of z is done below */
    float l = olse_value(o);
    if (threadIdx.x == 0) row_loss[blockIdx.x] = ignored ? 0.0f : l - zl;
    if (!dz) return;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        float g = ignored ? 0.0f : c * expf(__bfloat162float(z[base + v]) - l) - (v == lab ? c : 0.0f);
        dz[base + v] = __float2bfloat16(g);
    }
}

extern "C" void cuda_loss_ce_rows(float *row_loss, uint16_t *dz, const uint16_t *z, const int32_t *labels, int n,
                                  int V, int ignore_index, float c) {
    if (n <= 0 || V <= 0) return;
    ce_rows_fused_kernel<<<n, LOSS_THREADS, 0, ra_cuda_stream>>>(row_loss, (bf16 *)dz, (const bf16 *)z, labels, V,
                                                                 ignore_index, c);
    CUDA_CHECK_LAST();
}

extern "C" void cuda_loss_soft_ce_rows(float *row_loss, uint16_t *dzs, const uint16_t *zs, const uint16_t *zt, int n,
                                       int V, float T, float c) {
    if (n <= 0 || V <= 0) return;
    soft_ce_launch(row_loss, NULL, NULL, dzs, zs, zt, n, V, 1.0f / T, c / T);
}
