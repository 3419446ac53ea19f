/* ra-probe's attribution on the GPU: one forward (the baseline pass of the
 * exact engine, which caches the residual entering every layer) and one
 * backward from the log-probabilities of the correct answers down to every
 * head's output, as lib/probe_attribution.c does on the CPU.
 *
 * Per layer, top down: recompute the layer from its cached input (RMSNorm
 * with rstd, q/k/v + RoPE, attention, o_proj into the residual, RMSNorm,
 * gate/up), then push the residual gradient g (fp32) through the MLP
 * (down, SwiGLU, gate/up, RMSNorm), take each head's Σ grad·output, and go
 * on through o_proj, attention, RoPE, q/k/v and the input RMSNorm.
 * Gradients are fp32; the GEMMs read bf16 copies (cuBLAS, fp32 accumulate).
 * The attention backward recomputes probabilities per query (one block per
 * query for dq, one per key for dk/dv), no atomics, so runs are
 * deterministic. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "probe_cuda_internal.cuh"
#include "train_common.cuh"

/* ---- GEMM for input gradients ------------------------------------------------ */

/* C[M, in] (fp32) = beta·C + dy[M, out] · W[out, in]   (bf16 inputs, row-major) */
static void gemm_dx(float *C, const uint16_t *dy, const uint16_t *W, int M, int out, int in, float beta) {
    float alpha = 1.0f;
    CUBLAS_CHECK(cublasGemmEx(train_blas(), CUBLAS_OP_N, CUBLAS_OP_N, in, M, out, &alpha, W, CUDA_R_16BF, in, dy,
                              CUDA_R_16BF, out, &beta, C, CUDA_R_32F, in, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

/* ---- kernels ------------------------------------------------------------------ */

__global__ void f32_to_bf16_kernel(bf16 *dst, const float *src, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16(src[i]);
}

static void to_bf16(uint16_t *dst, const float *src, int64_t n) {
    f32_to_bf16_kernel<<<ra_grid_for(n, 256), 256, 0, ra_cuda_stream>>>((bf16 *)dst, src, n);
    CUDA_CHECK_LAST();
}

/* dz[s, :] = onehot(tok[s]) − softmax(z[s, :]) */
__global__ void lm_grad_kernel(bf16 *dz, const bf16 *z, const float *lse, const int32_t *tok, int V) {
    int64_t s = blockIdx.x;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        float p = __expf(__bfloat162float(z[s * V + v]) - lse[s]);
        dz[s * V + v] = __float2bfloat16((v == tok[s] ? 1.0f : 0.0f) - p);
    }
}

/* dx[dx_row] (+)= RMSNorm backward: r·(w⊙dy) − x·r³·⟨w⊙dy, x⟩/D; one block per
 * row r of dy.  dx_rows / x_rows map rows (NULL = identity); accumulate adds
 * to dx, else overwrites it. */
__global__ void rmsnorm_bwd_kernel(float *dx, const int32_t *dx_rows, const float *dy, const bf16 *x,
                                   const int32_t *x_rows, const float *rstd, const bf16 *w, int D, int accumulate) {
    __shared__ float scratch[32];
    int r = blockIdx.x;
    const bf16 *xr = x + (int64_t)(x_rows ? x_rows[r] : r) * D;
    const float *gr = dy + (int64_t)r * D;
    float *out = dx + (int64_t)(dx_rows ? dx_rows[r] : r) * D;
    float dot = 0;
    for (int j = threadIdx.x; j < D; j += blockDim.x)
        dot += __bfloat162float(w[j]) * gr[j] * __bfloat162float(xr[j]);
    dot = block_sum(dot, scratch);
    float rs = rstd[r], c = rs * rs * rs * dot / D;
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        float v = rs * __bfloat162float(w[j]) * gr[j] - __bfloat162float(xr[j]) * c;
        out[j] = accumulate ? out[j] + v : v;
    }
}

/* SwiGLU backward over the fused gate/up buffer: d_gu = [dgate | dup] (bf16). */
__global__ void swiglu_bwd_kernel(bf16 *dgu, const bf16 *gu, const float *ds, int64_t n, int I) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n * I; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t row = i / I, j = i % I;
        float a = __bfloat162float(gu[row * 2 * I + j]), u = __bfloat162float(gu[row * 2 * I + I + j]);
        float sg = 1.0f / (1.0f + __expf(-a)), g = ds[i];
        dgu[row * 2 * I + j] = __float2bfloat16(g * u * sg * (1.0f + a * (1.0f - sg)));
        dgu[row * 2 * I + I + j] = __float2bfloat16(g * a * sg);
    }
}

/* prod[t, h] = Σ_j datt[t, h, j] · att[t, h, j]; one warp per (t, h). */
__global__ void head_dot_kernel(float *prod, const float *datt, const bf16 *att, int64_t n, int H, int hd) {
    int lane = threadIdx.x & 31;
    int64_t warps = (int64_t)gridDim.x * blockDim.x / 32;
    for (int64_t w = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) / 32; w < n * H; w += warps) {
        const float *g = datt + w * hd;
        const bf16 *a = att + w * hd;
        float s = 0;
        for (int j = lane; j < hd; j += 32) s += g[j] * __bfloat162float(a[j]);
        s = warp_sum(s);
        if (lane == 0) prod[w] = s;
    }
}

/* acc[h] += Σ_t prod[t, h] in double; one block per head, a fixed order
 * (deterministic).  Replaces a download of prod and a host loop per layer. */
__global__ void head_sum_kernel(double *acc, const float *prod, int64_t n, int H) {
    __shared__ double part[256];
    int h = blockIdx.x;
    double sum = 0;
    for (int64_t t = threadIdx.x; t < n; t += blockDim.x) sum += prod[t * H + h];
    part[threadIdx.x] = sum;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k >>= 1) {
        if ((int)threadIdx.x < k) part[threadIdx.x] += part[threadIdx.x + k];
        __syncthreads();
    }
    if (threadIdx.x == 0) acc[h] += part[0];
}

/* Inverse RoPE (rotation by −θ) on fp32 gradients of `heads` heads per row. */
__global__ void rope_bwd_kernel(float *g, int64_t row_stride, const float *cos_t, const float *sin_t, int64_t n,
                                int heads, int hd) {
    int half = hd / 2;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n * heads * half;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t row = i / (heads * half);
        int h = (int)(i / half % heads), j = (int)(i % half);
        float *v = g + row * row_stride + (int64_t)h * hd;
        float c = cos_t[row * half + j], s = sin_t[row * half + j];
        float g1 = v[j], g2 = v[j + half];
        v[j] = g1 * c + g2 * s;
        v[j + half] = g2 * c - g1 * s;
    }
}

/* Attention backward through materialised probabilities, a block of rows
 * at a time: per (row b, head h), S = Q·Kᵀ (cuBLAS, batched over b and h),
 * P = causal softmax(S·scale), dP = dO·Vᵀ, dS = P ⊙ (dP − rowsum(P ⊙ dP)),
 * dQ = dS·K·scale, dK = Σ_group dSᵀ·Q·scale, dV = Σ_group Pᵀ·dO.
 * S/P and dP are fp32, the GEMM operands bf16. */

/* Row t of S (fp32, in place → P) and its bf16 copy: causal softmax. */
__global__ void attn_softmax_kernel(float *S, bf16 *Pb, int T, float scale) {
    __shared__ float scratch[32];
    int64_t m = blockIdx.x / T;
    int t = blockIdx.x % T;
    float *row = S + (m * T + t) * T;
    bf16 *prow = Pb + (m * T + t) * T;
    float mx = -INFINITY;
    for (int s = threadIdx.x; s <= t; s += blockDim.x) mx = fmaxf(mx, row[s] * scale);
    mx = block_max(mx, scratch);
    float sum = 0;
    for (int s = threadIdx.x; s <= t; s += blockDim.x) sum += __expf(row[s] * scale - mx);
    sum = block_sum(sum, scratch);
    float inv = 1.0f / sum;
    for (int s = threadIdx.x; s < T; s += blockDim.x) {
        float p = s <= t ? __expf(row[s] * scale - mx) * inv : 0.0f;
        row[s] = p;
        prow[s] = __float2bfloat16(p);
    }
}

/* dS = P ⊙ (dP − Σ_s P·dP) · scale, bf16. */
__global__ void attn_dsoftmax_kernel(bf16 *dSb, const float *P, const float *dP, int T, float scale) {
    __shared__ float scratch[32];
    int64_t base = (int64_t)blockIdx.x * T;
    int t = blockIdx.x % T;
    float dot = 0;
    for (int s = threadIdx.x; s <= t; s += blockDim.x) dot += P[base + s] * dP[base + s];
    dot = block_sum(dot, scratch);
    for (int s = threadIdx.x; s < T; s += blockDim.x)
        dSb[base + s] = __float2bfloat16(s <= t ? P[base + s] * (dP[base + s] - dot) * scale : 0.0f);
}

/* Batched GEMM over pointer arrays (column-major arguments, as cuBLAS). */
static void gemm_batched(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void *const *A, int lda,
                         const void *const *B, int ldb, float beta, void *const *C, cudaDataType ct, int ldc,
                         int count) {
    float alpha = 1.0f;
    CUBLAS_CHECK(cublasGemmBatchedEx(train_blas(), ta, tb, m, n, k, &alpha, A, CUDA_R_16BF, lda, B, CUDA_R_16BF, ldb,
                                     &beta, C, ct, ldc, count, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

/* ---- the engine ------------------------------------------------------------------ */

/* Pointer arrays of the batched attention GEMMs, one entry per (row, head)
 * of a block of rows. */
enum { PA_Q, PA_K, PA_V, PA_DO, PA_S, PA_DP, PA_PB, PA_DSB, PA_DQ, PA_DK, PA_DV, PA_N };

typedef struct attr_bufs {
    float *g, *gmid, *dxn, *ds, *datt, *dqkv, *rstd1, *rstd2, *prod, *dh, *rstd_f, *lse_t;
    double *attr; /* [L*H] device sums */
    float *S, *dP;      /* [Bg*H, T, T] */
    uint16_t *Pb, *dSb; /* [Bg*H, T, T] */
    void **ptr;         /* device [PA_N][Bg*H] */
    void **h_ptr;
    int Bg;             /* rows per block of the attention backward */
    uint16_t *gb, *dgu, *dattb, *dqkvb, *dz, *xmid;
    int32_t *trow, *ttok;
    int32_t *h_trow, *h_ttok;
} attr_bufs;

static int attr_alloc(attr_bufs *a, const pc_state *s, int max_targets, ra_error *err) {
    memset(a, 0, sizeof *a);
    size_t n = (size_t)s->B * s->T_max, D = s->D, qd = (size_t)s->H * s->hd, I = s->I, q = s->qkvd;
    /* rows per block of the attention backward: its four [rows·H, T, T]
     * buffers (12 bytes an element) within about 8 GiB */
    size_t per_row = (size_t)s->H * s->T_max * s->T_max * 12;
    a->Bg = (int)(((size_t)8 << 30) / per_row);
    if (a->Bg < 1) a->Bg = 1;
    if (a->Bg > s->B) a->Bg = s->B;
    size_t TT = (size_t)a->Bg * s->H * s->T_max * s->T_max;
    int rc = 0;
    struct {
        void **p;
        size_t bytes;
        const char *what;
    } want[] = {
        {(void **)&a->g, n * D * 4, "residual gradients"}, {(void **)&a->gmid, n * D * 4, "residual gradients"},
        {(void **)&a->dxn, n * D * 4, "norm gradients"}, {(void **)&a->ds, n * I * 4, "MLP gradients"},
        {(void **)&a->datt, n * qd * 4, "attention gradients"}, {(void **)&a->dqkv, n * q * 4, "q/k/v gradients"},
        {(void **)&a->rstd1, n * 4, "norm statistics"}, {(void **)&a->rstd2, n * 4, "norm statistics"},
        {(void **)&a->prod, n * s->H * 4, "head attributions"},
        {(void **)&a->attr, (size_t)s->L * s->H * 8, "head attribution sums"},
        {(void **)&a->S, TT * 4, "attention scores"}, {(void **)&a->dP, TT * 4, "attention score gradients"},
        {(void **)&a->Pb, TT * 2, "attention probabilities"}, {(void **)&a->dSb, TT * 2, "attention score gradients"},
        {(void **)&a->ptr, (size_t)PA_N * a->Bg * s->H * sizeof(void *), "GEMM pointer arrays"},
        {(void **)&a->dh, (size_t)max_targets * D * 4, "LM-head gradients"},
        {(void **)&a->rstd_f, (size_t)max_targets * 4, "norm statistics"}, {(void **)&a->lse_t, (size_t)max_targets * 4, "log-sum-exp"},
        {(void **)&a->gb, n * D * 2, "gradient copies"}, {(void **)&a->dgu, n * 2 * I * 2, "gate/up gradients"},
        {(void **)&a->dattb, n * qd * 2, "gradient copies"}, {(void **)&a->dqkvb, n * q * 2, "gradient copies"},
        {(void **)&a->dz, (size_t)max_targets * s->V * 2, "logit gradients"}, {(void **)&a->xmid, n * D * 2, "residual copies"},
        {(void **)&a->trow, (size_t)max_targets * 4, "target rows"}, {(void **)&a->ttok, (size_t)max_targets * 4, "target tokens"},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0] && !rc; i++)
        rc = cuda_malloc_try(want[i].p, want[i].bytes ? want[i].bytes : 1, want[i].what, err);
    a->h_ptr = (void **)xmalloc((size_t)PA_N * a->Bg * s->H * sizeof(void *));
    a->h_trow = (int32_t *)xmalloc((size_t)max_targets * 4);
    a->h_ttok = (int32_t *)xmalloc((size_t)max_targets * 4);
    return rc;
}

static void attr_free(attr_bufs *a) {
    void *d[] = {a->g,  a->gmid, a->dxn, a->ds,   a->datt,   a->dqkv,  a->rstd1, a->rstd2, a->prod, a->attr,
                 a->S,  a->dP,   a->Pb,  a->dSb,  a->ptr,    a->dh,    a->rstd_f, a->lse_t, a->gb,
                 a->dgu, a->dattb, a->dqkvb, a->dz, a->xmid, a->trow,  a->ttok};
    for (size_t i = 0; i < sizeof d / sizeof d[0]; i++) cuda_free(d[i]);
    free(a->h_trow), free(a->h_ttok), free(a->h_ptr);
}

/* dq, dk, dv (fp32, into the q/k/v columns of a->dqkv) from s->qkv (q, k
 * after RoPE; v) and a->datt (∂J/∂ attention output).  Entries of the
 * batched GEMMs are ordered (r, b, g) with head h = g·group + r, so the
 * entries of one r touch distinct KV groups: dK and dV add up the heads of a
 * group with one call per r (beta 1 after the first), never two writers of
 * one output in a call. */
static void attention_backward(pc_state *s, attr_bufs *a, int B, int T) {
    int H = s->H, Hkv = s->Hkv, hd = s->hd, q = s->qkvd, group = H / Hkv;
    float scale = 1.0f / sqrtf((float)hd);
    to_bf16(a->dattb, a->datt, (int64_t)B * T * H * hd);
    for (int b0 = 0; b0 < B; b0 += a->Bg) {
        int nb = B - b0 < a->Bg ? B - b0 : a->Bg, cnt = nb * H, per_r = nb * Hkv;
        size_t TT = (size_t)T * T;
        void **P = a->h_ptr;
        for (int r = 0; r < group; r++)
            for (int b = 0; b < nb; b++)
                for (int g = 0; g < Hkv; g++) {
                    int i = r * per_r + b * Hkv + g, h = g * group + r;
                    size_t row0 = (size_t)(b0 + b) * T;
                    P[PA_Q * cnt + i] = s->qkv + row0 * q + (size_t)h * hd;
                    P[PA_K * cnt + i] = s->qkv + row0 * q + (size_t)(H + g) * hd;
                    P[PA_V * cnt + i] = s->qkv + row0 * q + (size_t)(H + Hkv + g) * hd;
                    P[PA_DO * cnt + i] = a->dattb + row0 * H * hd + (size_t)h * hd;
                    P[PA_S * cnt + i] = a->S + (size_t)i * TT;
                    P[PA_DP * cnt + i] = a->dP + (size_t)i * TT;
                    P[PA_PB * cnt + i] = a->Pb + (size_t)i * TT;
                    P[PA_DSB * cnt + i] = a->dSb + (size_t)i * TT;
                    P[PA_DQ * cnt + i] = a->dqkv + row0 * q + (size_t)h * hd;
                    P[PA_DK * cnt + i] = a->dqkv + row0 * q + (size_t)(H + g) * hd;
                    P[PA_DV * cnt + i] = a->dqkv + row0 * q + (size_t)(H + Hkv + g) * hd;
                }
        cuda_upload(a->ptr, P, (size_t)PA_N * cnt * sizeof(void *));
        void **D = a->ptr;
#define PA(k, off) ((const void *const *)(D + (size_t)(k) * cnt + (off)))
#define PW(k, off) ((void *const *)(D + (size_t)(k) * cnt + (off)))
        /* S[t][s] = q_t·k_s   (column-major: Sᵀ = K·Qᵀ, ld T) */
        gemm_batched(CUBLAS_OP_T, CUBLAS_OP_N, T, T, hd, PA(PA_K, 0), q, PA(PA_Q, 0), q, 0.0f, PW(PA_S, 0), CUDA_R_32F,
                     T, cnt);
        attn_softmax_kernel<<<(unsigned)((int64_t)cnt * T), 128, 0, ra_cuda_stream>>>(a->S, (bf16 *)a->Pb, T, scale);
        CUDA_CHECK_LAST();
        /* dP[t][s] = dO_t·v_s */
        gemm_batched(CUBLAS_OP_T, CUBLAS_OP_N, T, T, hd, PA(PA_V, 0), q, PA(PA_DO, 0), H * hd, 0.0f, PW(PA_DP, 0),
                     CUDA_R_32F, T, cnt);
        attn_dsoftmax_kernel<<<(unsigned)((int64_t)cnt * T), 128, 0, ra_cuda_stream>>>((bf16 *)a->dSb, a->S, a->dP, T,
                                                                                      scale);
        CUDA_CHECK_LAST();
        /* dQ[t][j] = Σ_s dS[t][s] k_s[j]   (column-major: dQᵀ = Kᵀ·dSᵀ; dS carries the scale) */
        gemm_batched(CUBLAS_OP_N, CUBLAS_OP_N, hd, T, T, PA(PA_K, 0), q, PA(PA_DSB, 0), T, 0.0f, PW(PA_DQ, 0),
                     CUDA_R_32F, q, cnt);
        /* dK[s][j] = Σ_t dS[t][s] q_t[j]   (column-major: dKᵀ = Qᵀ·dS)
         * dV[s][j] = Σ_t P[t][s] dO_t[j]   (column-major: dVᵀ = dOᵀ·P) */
        for (int r = 0; r < group; r++) {
            int off = r * per_r;
            float beta = r ? 1.0f : 0.0f;
            gemm_batched(CUBLAS_OP_N, CUBLAS_OP_T, hd, T, T, PA(PA_Q, off), q, PA(PA_DSB, off), T, beta,
                         PW(PA_DK, off), CUDA_R_32F, q, per_r);
            gemm_batched(CUBLAS_OP_N, CUBLAS_OP_T, hd, T, T, PA(PA_DO, off), H * hd, PA(PA_PB, off), T, beta,
                         PW(PA_DV, off), CUDA_R_32F, q, per_r);
        }
#undef PA
#undef PW
    }
}

/* Layer l, top down: g (∂J/∂x_{l+1}) → ∂J/∂x_l, adding Σ grad·output per head
 * into a->attr[l*H + h] (on the device). */
static void layer_backward(pc_state *s, attr_bufs *a, int l, int B, int T) {
    const cuda_layer_weights *W = &s->m->layers[l];
    int n = B * T, D = s->D, H = s->H, Hkv = s->Hkv, hd = s->hd, I = s->I, q = s->qkvd;
    float eps = (float)s->m->cfg.rms_norm_eps;

    /* recompute: x_l → attention output (s->att), x_mid, gate/up */
    cuda_copy(s->x, s->cache_x[l], (size_t)n * D * 2);
    pc_attention_out(s, l, B, T, s->att, a->rstd1, NULL);
    cuda_copy(a->xmid, s->x, (size_t)n * D * 2);
    cuda_linear_residual_forward(a->xmid, s->att, W->wo, W->bo, n, H * hd, D);
    cuda_rmsnorm_forward(s->xn, a->rstd2, a->xmid, W->post_norm, n, D, eps);
    cuda_linear_forward(s->gu, s->xn, W->w_gate_up, NULL, n, D, 2 * I);

    /* MLP backward */
    to_bf16(a->gb, a->g, (int64_t)n * D);
    gemm_dx(a->ds, a->gb, W->w_down, n, D, I, 0.0f);
    swiglu_bwd_kernel<<<ra_grid_for((int64_t)n * I, 256), 256, 0, ra_cuda_stream>>>((bf16 *)a->dgu, (const bf16 *)s->gu,
                                                                                 a->ds, n, I);
    CUDA_CHECK_LAST();
    gemm_dx(a->dxn, a->dgu, W->w_gate_up, n, 2 * I, D, 0.0f);
    cuda_copy(a->gmid, a->g, (size_t)n * D * 4);
    rmsnorm_bwd_kernel<<<n, 256, 0, ra_cuda_stream>>>(a->gmid, NULL, a->dxn, (const bf16 *)a->xmid, NULL, a->rstd2,
                                                      (const bf16 *)W->post_norm, D, 1);
    CUDA_CHECK_LAST();

    /* o_proj backward and every head's grad·output */
    to_bf16(a->gb, a->gmid, (int64_t)n * D);
    gemm_dx(a->datt, a->gb, W->wo, n, D, H * hd, 0.0f);
    head_dot_kernel<<<ra_grid_for((int64_t)n * H * 32, 256), 256, 0, ra_cuda_stream>>>(a->prod, a->datt,
                                                                                    (const bf16 *)s->att, n, H, hd);
    CUDA_CHECK_LAST();
    head_sum_kernel<<<H, 256, 0, ra_cuda_stream>>>(a->attr + (size_t)l * H, a->prod, n, H);
    CUDA_CHECK_LAST();
    if (l == 0) return;

    /* attention, RoPE, q/k/v and input norm backward */
    attention_backward(s, a, B, T);
    rope_bwd_kernel<<<ra_grid_for((int64_t)n * (H + Hkv) * hd / 2, 256), 256, 0, ra_cuda_stream>>>(
        a->dqkv, q, s->cos_t, s->sin_t, n, H + Hkv, hd);
    CUDA_CHECK_LAST();
    to_bf16(a->dqkvb, a->dqkv, (int64_t)n * q);
    gemm_dx(a->dxn, a->dqkvb, W->wqkv, n, q, D, 0.0f);
    cuda_copy(a->g, a->gmid, (size_t)n * D * 4);
    rmsnorm_bwd_kernel<<<n, 256, 0, ra_cuda_stream>>>(a->g, NULL, a->dxn, (const bf16 *)s->cache_x[l], NULL, a->rstd1,
                                                      (const bf16 *)W->input_norm, D, 1);
    CUDA_CHECK_LAST();
}

extern "C" int probe_attribution_cuda(const ra_model *m, const probe_data *d, const probe_opts *o, float *attr,
                                      probe_outcome *base, ra_error *err) {
    int B = o && o->batch > 0 ? o->batch : 128, rc;
    if (B < d->max_rows_per_item) B = d->max_rows_per_item;
    pc_state local, *sp = pc_acquire(m, d, B, &local, &rc, err);
    if (rc) return rc;
    pc_state &s = *sp;
    int max_correct = 1;
    for (int i = 0; i < d->n_items; i++) {
        const probe_item *it = &d->items[i];
        int c = it->cand_start[it->correct + 1] - it->cand_start[it->correct];
        if (c > max_correct) max_correct = c;
    }
    attr_bufs a;
    if ((rc = attr_alloc(&a, &s, B * max_correct, err))) {
        attr_free(&a);
        pc_release(sp);
        return ra_error_prefix(err, "attribution on the GPU (batch %d x %d tokens): ", B, s.T_max);
    }
    int L = s.L, H = s.H, N = d->n_items, D = s.D, V = s.V;
    double *acc = (double *)xcalloc((size_t)L * H, sizeof(double));
    cuda_memset(a.attr, 0, (size_t)L * H * sizeof(double));
    pc_unit *units = (pc_unit *)xmalloc((size_t)B * sizeof(pc_unit));
    probe_outcome *outs = (probe_outcome *)xmalloc((size_t)B * sizeof(probe_outcome));
    for (int i0 = 0; i0 < N;) {
        int i1 = i0, rows = 0, T = 0;
        while (i1 < N && rows + d->items[i1].n_rows <= B) {
            const probe_item *it = &d->items[i1];
            for (int r = 0; r < it->n_rows; r++)
                if (d->rows[it->first_row + r].n_tokens > T) T = d->rows[it->first_row + r].n_tokens;
            rows += it->n_rows;
            i1++;
        }
        pc_rope_tables(&s, T);
        pc_baseline(&s, d, i0, i1, T);
        /* ∂J/∂x_L at the correct answers' target positions (J summed over
         * prompts here, divided by N at the end) */
        int nt = 0, slot = 0;
        for (int i = i0; i < i1; i++) {
            const probe_item *it = &d->items[i];
            for (int t = it->cand_start[it->correct]; t < it->cand_start[it->correct + 1]; t++) {
                const probe_target *tg = &it->targets[t];
                a.h_trow[nt] = (slot + tg->row - it->first_row) * T + tg->pos;
                a.h_ttok[nt++] = tg->token;
            }
            slot += it->n_rows;
        }
        cuda_upload(a.trow, a.h_trow, (size_t)nt * 4);
        cuda_upload(a.ttok, a.h_ttok, (size_t)nt * 4);
        cuda_gather_rows(s.sel, s.x, a.trow, nt, D);
        cuda_rmsnorm_forward(s.sel, a.rstd_f, s.sel, s.m->final_norm, nt, D, (float)m->cfg.rms_norm_eps);
        cuda_linear_forward(s.logits, s.sel, s.m->lm_head, NULL, nt, D, V);
        probe_row_stats_kernel<<<nt, 256, 0, ra_cuda_stream>>>((const bf16 *)s.logits, V, a.lse_t, s.argmax);
        CUDA_CHECK_LAST();
        lm_grad_kernel<<<nt, 256, 0, ra_cuda_stream>>>((bf16 *)a.dz, (const bf16 *)s.logits, a.lse_t, a.ttok, V);
        CUDA_CHECK_LAST();
        gemm_dx(a.dh, a.dz, s.m->lm_head, nt, V, D, 0.0f);
        cuda_memset(a.g, 0, (size_t)rows * T * D * 4);
        rmsnorm_bwd_kernel<<<nt, 256, 0, ra_cuda_stream>>>(a.g, a.trow, a.dh, (const bf16 *)s.x, a.trow, a.rstd_f,
                                                           (const bf16 *)s.m->final_norm, D, 0);
        CUDA_CHECK_LAST();
        /* the baseline outcomes from the same pass (s.x is still the final residual) */
        if (base) {
            int nb = 0;
            for (int i = i0; i < i1; i++) units[nb++] = (pc_unit){i, -1};
            pc_score_call(&s, d, units, nb, T, outs);
            for (int i = i0; i < i1; i++) base[i] = outs[i - i0];
            pc_cache_set_base(&s, outs);
        }
        for (int l = L - 1; l >= 0; l--) layer_backward(&s, &a, l, rows, T);
        if (o && o->progress) ra_progress_update(o->progress, i1);
        i0 = i1;
    }
    cuda_download(acc, a.attr, (size_t)L * H * sizeof(double));
    for (int i = 0; i < L * H; i++) attr[i] = (float)(acc[i] / N);
    free(acc), free(units), free(outs);
    attr_free(&a);
    pc_release(sp);
    return 0;
}
