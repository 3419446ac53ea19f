/* Backward of the Transformer ops and the adapters on the GPU: the CUDA
 * twins of lib/ops_backward_cpu.c and lib/adapter.c (contract in
 * kernels/ops_backward_cuda.h).
 *
 * ===================== design note: a CUDA stage-3 step =====================
 * (Implemented by kernels/model_train_cuda.cu and kernels/block_train_cuda.cu;
 * measured: tests/gpu/results/test-gpu-train-2026-11-22.md.)
 * How the next round assembles a stage-3 (end-to-end distillation) step
 * from these pieces, and what it costs in memory at the Llama-3.2-1B shape
 * (D 2048, 16 layers, H 32, Hkv 8, hd 64, I 8192, V 128256, 1.24 G
 * parameters) with B = 4, L = 2048 (n = 8192 tokens per micro-batch):
 *
 * Parameters: cuda_optim (kernels/optim_cuda.cu) mirrors the host ra_optim:
 *   fp32 master w 4.9 GB, fp32 g 4.9 GB, m + v 9.9 GB (all trainable; less
 *   with --freeze), plus the bf16 compute copies the forward reads (2.5 GB,
 *   refreshed by every step).  Teacher bf16 weights 2.5 GB.  ≈ 25 GB.
 * Forward (student), per layer, saving for the backward: the residual
 *   entering the layer x_l (bf16 n·D = 32 MB) and, cheapest in code, every
 *   intermediate the backward reads: rstd (fp32 n), normed input (32 MB),
 *   q/k/v after RoPE (n·(H+2Hkv)·hd·2 = 48 MB), attention / adapter
 *   outputs and stats (≈ 70 MB), the DM2 mixer's saved tensors (in_proj
 *   output, conv output, decays: ≈ 150 MB), x_mid (32 MB), normed x_mid
 *   (32 MB), gate_up (256 MB) and act (128 MB): ≈ 0.8 GB a layer, 13 GB in
 *   all.  Or (llm.c-style recomputation, as kernels/probe_cuda_attr.cu
 *   does) keep only x_l (0.5 GB) and recompute each layer's forward just
 *   before its backward: +33 % compute, 13 GB less.  Both fit an H200.
 * Teacher: forward only, no saved activations; its final normed hidden
 *   states hT [n, D] (32 MB) are kept for the loss.
 * Loss (row chunks of C = 1024 positions, so logits never exist for all n):
 *   for each chunk: zt = cuda_linear_forward(hT_chunk, lm_head_T) and
 *   zs = cuda_linear_forward(hS_chunk, lm_head_S) (bf16 [C, V], 263 MB
 *   each), L += cuda_loss_soft_ce_fused(zs, zs, zt, C, V, T, dloss·C/n)
 *   (gradient in place over zs, dloss scaled so chunks sum to the mean),
 *   then cuda_linear_backward(dh_chunk, dW_lm_head, NULL, zs, hS_chunk,
 *   W_lm_head, C, D, V).  Hard CE (--loss ce) is the same with
 *   cuda_loss_ce_forward/backward.
 * Backward, per layer top down (g = ∂L/∂residual, bf16 [n, D]):
 *   final norm: cuda_rmsnorm_backward; per layer: MLP (linear_backward of
 *   down_proj → swiglu_fused_backward → linear_backward of gate_up →
 *   rmsnorm_backward, residual_add into g), then the mixer: o_proj /
 *   adapter backward (cuda_adapter_*_backward), kept heads through
 *   cuda_attention_backward (scratch 384 MiB + dK/dV fp32 2·n·Hkv·hd·4 =
 *   32 MB) and cuda_rope_backward_strided over the fused q/k/v gradient,
 *   the DM2 heads through kernels/dm2_cuda.h's backward, q/k/v and in_proj
 *   linear_backward, input rmsnorm_backward, residual_add into g.
 *   Embedding: cuda_embedding_backward into the table's fp32 gradient.
 *   Activation-gradient buffers: ≈ 8 n·I-sized bf16 buffers at most live
 *   at once (≈ 0.6 GB).
 * Step: cuda_optim_step (global norm, NaN/Inf guard that leaves everything
 *   unchanged, AdamW, bf16 copies refreshed); cuda_optim_download before
 *   each checkpoint (lib/checkpoint.c writes from the host ra_optim).
 * Total ≈ 25 + 13 + 0.6 + 0.6 (logit chunks) ≈ 40 GB with saved
 * activations; ≈ 27 GB with recomputation, which is what DESIGN §8's
 * target (≤ half of PyTorch's 75 GB) asks for.  Gradient accumulation over
 * micro-batches is free (parameter gradients accumulate; dloss = 1/k).
 * Time budget (§8: ≥ 2x PyTorch's 21.7k tokens/s, so ≤ 190 ms for 8192
 * tokens): measured on the H200 (bench/train_ops.c), attention backward
 * 5.9 ms per layer with kept heads, gate_up linear backward 1.4 ms, the
 * soft CE 0.9 ms per 1024-row chunk (7.5 ms for all 8192), embedding
 * backward 3.8 ms, AdamW 12.4 ms over all 1.24 G parameters.
 * ============================================================================
 *
 * Kernels here are memory-bound and simple (scalar bf16 loads, grid-stride
 * loops); the matrix products go through cuBLAS (bf16 operands, fp32
 * accumulation; parameter gradients written in fp32 with beta = 1). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "train_common.cuh"

extern "C" {
#include "adapter.h" /* ADAPTER_EPS, ADAPTER_STATS */
}

/* ---- scratch, handle, small helpers ----------------------------------------- */

static void *scratch_ptr[TS_N];
static size_t scratch_size[TS_N];

void *train_scratch(int slot, size_t bytes) {
    if (bytes > scratch_size[slot]) {
        if (scratch_ptr[slot]) {
            cuda_synchronize(); /* earlier work may still read it */
            cuda_free(scratch_ptr[slot]);
        }
        scratch_ptr[slot] = cuda_malloc(bytes);
        scratch_size[slot] = bytes;
    }
    return scratch_ptr[slot];
}

extern "C" void cuda_train_scratch_free(void) {
    cuda_synchronize();
    for (int i = 0; i < TS_N; i++) {
        if (scratch_ptr[i]) cuda_free(scratch_ptr[i]);
        scratch_ptr[i] = NULL, scratch_size[i] = 0;
    }
}

static cublasHandle_t blas;

cublasHandle_t train_blas(void) {
    if (!blas) CUBLAS_CHECK(cublasCreate(&blas));
    CUBLAS_CHECK(cublasSetStream(blas, ra_cuda_stream));
    return blas;
}

__global__ void f32_to_bf16_train_kernel(bf16 *dst, const float *src, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16(src[i]);
}

void train_f32_to_bf16(uint16_t *dst, const float *src, int64_t n) {
    if (n <= 0) return;
    f32_to_bf16_train_kernel<<<ra_grid_for(n, 256), 256, 0, ra_cuda_stream>>>((bf16 *)dst, src, n);
    CUDA_CHECK_LAST();
}

/* ---- deterministic column sums ------------------------------------------------ */

/* Block (column tile of 32, row block): thread (lane = column, w = row
 * lane of 8) sums rows w, w+8, ... of the block; the 8 lanes are added in
 * order through shared memory; partial[row block][column]. */
__global__ void colsum_partial_kernel(float *partial, int mode, const bf16 *a, const bf16 *x, const float *rstd,
                                      int n, int D) {
    __shared__ float red[8][33];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    int c = blockIdx.x * 32 + lane, r0 = blockIdx.y * COLSUM_ROWS;
    int r1 = r0 + COLSUM_ROWS < n ? r0 + COLSUM_ROWS : n;
    float s = 0.0f;
    if (c < D)
        for (int r = r0 + w; r < r1; r += 8) {
            size_t i = (size_t)r * D + c;
            float v = __bfloat162float(a[i]);
            if (mode == COLSUM_RMS) v *= __bfloat162float(x[i]) * rstd[r];
            s += v;
        }
    red[w][lane] = s;
    __syncthreads();
    if (w == 0 && c < D) {
        float t = 0.0f;
        for (int k = 0; k < 8; k++) t += red[k][lane];
        partial[(size_t)blockIdx.y * D + c] = t;
    }
}

__global__ void colsum_finish_kernel(float *out, const float *partial, int nblocks, int D, float scale) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= D) return;
    double s = 0;
    for (int b = 0; b < nblocks; b++) s += partial[(size_t)b * D + c];
    out[c] += (float)(scale * s);
}

void colsum_accumulate(float *out, int mode, const uint16_t *a, const uint16_t *x, const float *rstd, int n, int D,
                       float scale) {
    if (n <= 0 || D <= 0) return;
    int nb = (n + COLSUM_ROWS - 1) / COLSUM_ROWS;
    float *part = (float *)train_scratch(TS_COLSUM, (size_t)nb * D * sizeof(float));
    dim3 grid((unsigned)((D + 31) / 32), (unsigned)nb);
    colsum_partial_kernel<<<grid, 256, 0, ra_cuda_stream>>>(part, mode, (const bf16 *)a, (const bf16 *)x, rstd, n, D);
    CUDA_CHECK_LAST();
    colsum_finish_kernel<<<(D + 255) / 256, 256, 0, ra_cuda_stream>>>(out, part, nb, D, scale);
    CUDA_CHECK_LAST();
}

/* ---- embedding ------------------------------------------------------------------ */

/* One thread per column, rows in order: the CPU's summation order. */
__global__ void embedding_bwd_kernel(float *dtable, const bf16 *dout, const int32_t *tokens, int n, int D) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= D) return;
    for (int i = 0; i < n; i++) {
        int tok = tokens[i];
        if (tok < 0) continue;
        dtable[(size_t)tok * D + c] += __bfloat162float(dout[(size_t)i * D + c]);
    }
}

extern "C" void cuda_embedding_backward(float *dtable, const uint16_t *dout, const int32_t *tokens, int n, int D) {
    if (!dtable || n <= 0 || D <= 0) return;
    embedding_bwd_kernel<<<(D + 127) / 128, 128, 0, ra_cuda_stream>>>(dtable, (const bf16 *)dout, tokens, n, D);
    CUDA_CHECK_LAST();
}

/* The same sums with the rows grouped by token on the host (a counting
 * sort: ids[k] occurs at rows rows[offsets[k] .. offsets[k+1]−1], in
 * ascending order): block (k, column tile) adds its token's rows in row
 * order onto the table, so the result has the bits of the kernel above
 * with one thread per (token, column) instead of one per column. */
__global__ void embedding_bwd_sorted_kernel(float *dtable, const bf16 *dout, const int32_t *rows, const int32_t *ids,
                                            const int32_t *offsets, int D) {
    int k = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= D) return;
    float *dst = dtable + (size_t)ids[k] * D + c;
    float acc = *dst;
    for (int r = offsets[k]; r < offsets[k + 1]; r++) acc += __bfloat162float(dout[(size_t)rows[r] * D + c]);
    *dst = acc;
}

extern "C" void cuda_embedding_backward_sorted(float *dtable, const uint16_t *dout, const int32_t *rows,
                                               const int32_t *ids, const int32_t *offsets, int n_ids, int D) {
    if (!dtable || n_ids <= 0 || D <= 0) return;
    dim3 grid((unsigned)n_ids, (unsigned)((D + 127) / 128));
    embedding_bwd_sorted_kernel<<<grid, 128, 0, ra_cuda_stream>>>(dtable, (const bf16 *)dout, rows, ids, offsets, D);
    CUDA_CHECK_LAST();
}

/* ---- RMSNorm ---------------------------------------------------------------------- */

/* dx = r·(w⊙dy) − x·r³·⟨w⊙dy, x⟩/D, one block per row. */
__global__ void rmsnorm_bwd_dx_kernel(bf16 *dx, const bf16 *dy, const bf16 *x, const bf16 *w, const float *rstd,
                                      int D) {
    __shared__ float scratch[32];
    size_t base = (size_t)blockIdx.x * D;
    float dot = 0.0f;
    for (int j = threadIdx.x; j < D; j += blockDim.x)
        dot += __bfloat162float(dy[base + j]) * __bfloat162float(w[j]) * __bfloat162float(x[base + j]);
    dot = block_sum(dot, scratch);
    float r = rstd[blockIdx.x], c = r * r * r * dot / D;
    for (int j = threadIdx.x; j < D; j += blockDim.x)
        dx[base + j] = __float2bfloat16(r * (__bfloat162float(dy[base + j]) * __bfloat162float(w[j])) -
                                        c * __bfloat162float(x[base + j]));
}

extern "C" void cuda_rmsnorm_backward(uint16_t *dx, float *dweight, const uint16_t *dout, const uint16_t *in,
                                      const uint16_t *weight, const float *rstd, int n, int D) {
    if (n <= 0 || D <= 0) return;
    if (dweight) colsum_accumulate(dweight, COLSUM_RMS, dout, in, rstd, n, D, 1.0f);
    if (dx) {
        rmsnorm_bwd_dx_kernel<<<n, 256, 0, ra_cuda_stream>>>((bf16 *)dx, (const bf16 *)dout, (const bf16 *)in,
                                                            (const bf16 *)weight, rstd, D);
        CUDA_CHECK_LAST();
    }
}

/* ---- linear ------------------------------------------------------------------------- */

extern "C" void cuda_linear_backward(uint16_t *dx, float *dW, float *db, const uint16_t *dout, const uint16_t *in,
                                     const uint16_t *W, int n, int in_dim, int out_dim) {
    if (n <= 0 || in_dim <= 0 || out_dim <= 0) return;
    float one = 1.0f, zero = 0.0f;
    if (dx) /* column-major dxᵀ (in × n) = W_cm (in × out) · dout_cm (out × n) */
        CUBLAS_CHECK(cublasGemmEx(train_blas(), CUBLAS_OP_N, CUBLAS_OP_N, in_dim, n, out_dim, &one, W, CUDA_R_16BF,
                                  in_dim, dout, CUDA_R_16BF, out_dim, &zero, dx, CUDA_R_16BF, in_dim,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    if (dW) /* column-major dWᵀ (in × out) += in_cm (in × n) · dout_cmᵀ (n × out) */
        CUBLAS_CHECK(cublasGemmEx(train_blas(), CUBLAS_OP_N, CUBLAS_OP_T, in_dim, out_dim, n, &one, in, CUDA_R_16BF,
                                  in_dim, dout, CUDA_R_16BF, out_dim, &one, dW, CUDA_R_32F, in_dim,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    if (db) colsum_accumulate(db, COLSUM_PLAIN, dout, NULL, NULL, n, out_dim, 1.0f);
}

/* ---- RoPE ---------------------------------------------------------------------------- */

__global__ void rope_bwd_kernel(bf16 *g, int64_t row_stride, const float *cos_t, const float *sin_t, int n, int heads,
                                int hd) {
    int half = hd / 2;
    int64_t total = (int64_t)n * heads * half;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t row = i / ((int64_t)heads * half);
        int h = (int)(i / half % heads), j = (int)(i % half);
        bf16 *v = g + row * row_stride + (int64_t)h * hd;
        float c = cos_t[row * half + j], s = sin_t[row * half + j];
        float g1 = __bfloat162float(v[j]), g2 = __bfloat162float(v[j + half]);
        v[j] = __float2bfloat16(g1 * c + g2 * s); /* transpose of [[c, −s], [s, c]] */
        v[j + half] = __float2bfloat16(g2 * c - g1 * s);
    }
}

extern "C" void cuda_rope_backward_strided(uint16_t *dx, int64_t row_stride, const float *cos_t, const float *sin_t,
                                           int n, int heads, int head_dim) {
    int64_t total = (int64_t)n * heads * (head_dim / 2);
    if (total <= 0) return;
    rope_bwd_kernel<<<ra_grid_for(total, 256), 256, 0, ra_cuda_stream>>>((bf16 *)dx, row_stride, cos_t, sin_t, n,
                                                                        heads, head_dim);
    CUDA_CHECK_LAST();
}

extern "C" void cuda_rope_backward(uint16_t *dx, const float *cos_t, const float *sin_t, int n, int heads,
                                   int head_dim) {
    cuda_rope_backward_strided(dx, (int64_t)heads * head_dim, cos_t, sin_t, n, heads, head_dim);
}

/* ---- attention ------------------------------------------------------------------------ */

__device__ __forceinline__ int first_key_of(const int32_t *ds, int t) {
    return ds && ds[t] >= 0 && ds[t] <= t ? ds[t] : 0;
}

/* Row t of matrix m (m over the matrices of one call): S (scaled scores,
 * fp32) → P in place, and its bf16 copy; keys outside [first_key, t] get 0.
 * Matrix m's document starts are at ds + m·ds_step (ds_step 0: the same
 * batch row for all). */
__global__ void att_softmax_kernel(float *S, bf16 *Pb, const int32_t *ds, int T, int64_t ds_step) {
    __shared__ float scratch[32];
    int64_t m = blockIdx.x / T;
    int t = blockIdx.x % T, lo = first_key_of(ds ? ds + m * ds_step : NULL, t);
    float *row = S + (m * T + t) * T;
    bf16 *prow = Pb + (m * T + t) * T;
    float mx = -INFINITY;
    for (int s = lo + threadIdx.x; s <= t; s += blockDim.x) mx = fmaxf(mx, row[s]);
    mx = block_max(mx, scratch);
    float sum = 0.0f;
    for (int s = lo + threadIdx.x; s <= t; s += blockDim.x) sum += expf(row[s] - mx);
    sum = block_sum(sum, scratch);
    float inv = 1.0f / sum;
    for (int s = threadIdx.x; s < T; s += blockDim.x) {
        float p = s >= lo && s <= t ? expf(row[s] - mx) * inv : 0.0f;
        row[s] = p;
        prow[s] = __float2bfloat16(p);
    }
}

/* dS = scale · P ⊙ (dP − Σ_s P·dP), bf16 (P is 0 outside the mask). */
__global__ void att_dsoftmax_kernel(bf16 *dSb, const float *P, const float *dP, int T, float scale) {
    __shared__ float scratch[32];
    int64_t base = (int64_t)blockIdx.x * T;
    float dot = 0.0f;
    for (int s = threadIdx.x; s < T; s += blockDim.x) dot += P[base + s] * dP[base + s];
    dot = block_sum(dot, scratch);
    for (int s = threadIdx.x; s < T; s += blockDim.x)
        dSb[base + s] = __float2bfloat16(scale * P[base + s] * (dP[base + s] - dot));
}

/* Strided-batched GEMM over the Hkv heads of one call (column-major
 * arguments, as cuBLAS takes them). */
static void gemm_sb(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha, const void *A,
                    int lda, long long sA, const void *B, int ldb, long long sB, float beta, void *C,
                    cudaDataType ct, int ldc, long long sC, int count) {
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(train_blas(), ta, tb, m, n, k, &alpha, A, CUDA_R_16BF, lda, sA, B,
                                            CUDA_R_16BF, ldb, sB, &beta, C, ct, ldc, sC, count, CUBLAS_COMPUTE_32F,
                                            CUBLAS_GEMM_DEFAULT));
}

/* fp32 [n, heads·hd] (compact) → bf16 rows `stride` elements apart. */
__global__ void f32_to_bf16_rows_kernel(bf16 *dst, int64_t stride, const float *src, int64_t n, int width) {
    int64_t total = n * width;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
        dst[i / width * stride + i % width] = __float2bfloat16(src[i]);
}

/* Materialised: S, P, dP and dS of `count` (batch row, KV head) matrices
 * at a time, through strided-batched GEMMs.  Batched over the batch rows
 * for one KV head when B ≥ Hkv (a hybrid layer's few kept heads: one
 * strided batch of B instead of B batches of one), else over the KV heads
 * of one batch row; one such call per position r in the GQA group. */
extern "C" void cuda_attention_backward_ex(const cuda_attention_bwd_args *a) {
    int B = a->B, T = a->T, H = a->H, Hkv = a->Hkv, hd = a->hd;
    if (B <= 0 || T <= 0 || H <= 0 || Hkv <= 0 || hd <= 0) return;
    int group = H / Hkv, kv_row = Hkv * hd;
    int64_t qs = a->q_stride, ks = a->kv_stride, os = a->dout_stride, dqs = a->dq_stride;
    float scale = (float)(1.0 / sqrt((double)hd));
    const bool by_row = B >= Hkv;
    const int count = by_row ? B : Hkv, outer = by_row ? Hkv : B;
    size_t TT = (size_t)T * T;
    float *S = (float *)train_scratch(TS_ATT_S, count * TT * 4);
    float *dP = (float *)train_scratch(TS_ATT_DP, count * TT * 4);
    uint16_t *Pb = (uint16_t *)train_scratch(TS_ATT_PB, count * TT * 2);
    uint16_t *dSb = (uint16_t *)train_scratch(TS_ATT_DSB, count * TT * 2);
    size_t kv_elems = (size_t)B * T * kv_row;
    float *dk32 = (float *)train_scratch(TS_ATT_DKV, 2 * kv_elems * 4), *dv32 = dk32 + kv_elems;
    /* strides between the batched matrices: the next batch row, or the next KV head */
    long long sQ = by_row ? (long long)T * qs : (long long)group * hd, sK = by_row ? (long long)T * ks : hd;
    long long sO = by_row ? (long long)T * os : (long long)group * hd, sDQ = by_row ? (long long)T * dqs : sO;
    long long sKV = by_row ? (long long)T * kv_row : hd, sT = (long long)TT;
    for (int o = 0; o < outer; o++) {
        /* the first matrix of the batch: batch row 0 / b, KV head g / 0 */
        size_t b0 = by_row ? 0 : (size_t)o, g0 = by_row ? (size_t)o : 0;
        const int32_t *ds = a->doc_start ? a->doc_start + b0 * T : NULL;
        size_t q0 = b0 * T * qs + g0 * group * hd, o0 = b0 * T * os + g0 * group * hd;
        size_t dq0 = b0 * T * dqs + g0 * group * hd, k0 = b0 * T * ks + g0 * hd, s0 = b0 * T * kv_row + g0 * hd;
        for (int r = 0; r < group; r++) {
            const uint16_t *Q = a->q + q0 + (size_t)r * hd, *dO = a->dout + o0 + (size_t)r * hd;
            const uint16_t *K = a->k + k0, *Vv = a->v + k0;
            float beta = r ? 1.0f : 0.0f;
            /* Sᵀ = scale · K_cmᵀ · Q_cm   (S[t][s] = scale · q_t·k_s) */
            gemm_sb(CUBLAS_OP_T, CUBLAS_OP_N, T, T, hd, scale, K, (int)ks, sK, Q, (int)qs, sQ, 0.0f, S, CUDA_R_32F, T,
                    sT, count);
            att_softmax_kernel<<<(unsigned)(count * T), 128, 0, ra_cuda_stream>>>(S, (bf16 *)Pb, ds, T,
                                                                                  by_row ? (int64_t)T : 0);
            CUDA_CHECK_LAST();
            /* dP[t][s] = dO_t · v_s */
            gemm_sb(CUBLAS_OP_T, CUBLAS_OP_N, T, T, hd, 1.0f, Vv, (int)ks, sK, dO, (int)os, sO, 0.0f, dP, CUDA_R_32F,
                    T, sT, count);
            att_dsoftmax_kernel<<<(unsigned)(count * T), 128, 0, ra_cuda_stream>>>((bf16 *)dSb, S, dP, T, scale);
            CUDA_CHECK_LAST();
            /* dQ_cm (hd × T) = K_cm · dS_cm   (dS carries the scale) */
            gemm_sb(CUBLAS_OP_N, CUBLAS_OP_N, hd, T, T, 1.0f, K, (int)ks, sK, dSb, T, sT, 0.0f,
                    a->dq + dq0 + (size_t)r * hd, CUDA_R_16BF, (int)dqs, sDQ, count);
            /* dK_cm (hd × T) += Q_cm · dS_cmᵀ;  dV_cm += dO_cm · P_cmᵀ */
            gemm_sb(CUBLAS_OP_N, CUBLAS_OP_T, hd, T, T, 1.0f, Q, (int)qs, sQ, dSb, T, sT, beta, dk32 + s0, CUDA_R_32F,
                    kv_row, sKV, count);
            gemm_sb(CUBLAS_OP_N, CUBLAS_OP_T, hd, T, T, 1.0f, dO, (int)os, sO, Pb, T, sT, beta, dv32 + s0, CUDA_R_32F,
                    kv_row, sKV, count);
        }
    }
    int64_t rows = (int64_t)B * T;
    f32_to_bf16_rows_kernel<<<ra_grid_for((int64_t)kv_elems, 256), 256, 0, ra_cuda_stream>>>(
        (bf16 *)a->dk, a->dkv_stride, dk32, rows, kv_row);
    CUDA_CHECK_LAST();
    f32_to_bf16_rows_kernel<<<ra_grid_for((int64_t)kv_elems, 256), 256, 0, ra_cuda_stream>>>(
        (bf16 *)a->dv, a->dkv_stride, dv32, rows, kv_row);
    CUDA_CHECK_LAST();
}

extern "C" void cuda_attention_backward(uint16_t *dq, uint16_t *dk, uint16_t *dv, const uint16_t *dout,
                                        const uint16_t *q, const uint16_t *k, const uint16_t *v,
                                        const int32_t *doc_start, int B, int T, int H, int Hkv, int hd) {
    cuda_attention_bwd_args a;
    a.dq = dq, a.dk = dk, a.dv = dv, a.dout = dout, a.q = q, a.k = k, a.v = v, a.doc_start = doc_start;
    a.q_stride = a.dout_stride = a.dq_stride = (int64_t)H * hd;
    a.kv_stride = a.dkv_stride = (int64_t)Hkv * hd;
    a.B = B, a.T = T, a.H = H, a.Hkv = Hkv, a.hd = hd;
    cuda_attention_backward_ex(&a);
}

/* Grow every scratch slot a training step of this shape uses, so that the
 * step itself allocates nothing (and cannot fail for memory). */
extern "C" int cuda_train_scratch_reserve(int n, int colsum_width, int B, int T, int Hkv_max, int hd,
                                          int adapter_D, ra_error *err) {
    size_t TT = (size_t)T * T;
    size_t need[TS_N] = {0};
    need[TS_COLSUM] = (size_t)((n + COLSUM_ROWS - 1) / COLSUM_ROWS) * colsum_width * 4;
    if (Hkv_max > 0) {
        size_t count = (size_t)(B >= Hkv_max ? B : Hkv_max); /* matrices per call of the attention backward */
        need[TS_ATT_S] = need[TS_ATT_DP] = count * TT * 4;
        need[TS_ATT_PB] = need[TS_ATT_DSB] = count * TT * 2;
        need[TS_ATT_DKV] = 2 * (size_t)B * T * Hkv_max * hd * 4;
    }
    need[TS_ADAPTER] = (size_t)n * adapter_D * 4;
    need[TS_ROWS] = (size_t)n * 4;
    for (int i = 0; i < TS_N; i++) {
        if (need[i] <= scratch_size[i]) continue;
        if (scratch_ptr[i]) {
            cuda_synchronize();
            cuda_free(scratch_ptr[i]);
            scratch_ptr[i] = NULL, scratch_size[i] = 0;
        }
        int rc = cuda_malloc_try(&scratch_ptr[i], need[i], "training scratch", err);
        if (rc) return rc;
        scratch_size[i] = need[i];
    }
    return 0;
}

extern "C" void cuda_head_mask_backward(uint16_t *dout, const uint8_t *head_keep, int B, int T, int H, int hd) {
    cuda_head_mask_apply(dout, head_keep, B, T, H, hd);
}

/* ---- SwiGLU -------------------------------------------------------------------------------- */

__device__ __forceinline__ void swiglu_grad(float g, float u, float dy, float *dg, float *du) {
    float sig = 1.0f / (1.0f + expf(-g));
    *dg = dy * u * sig * (1.0f + g * (1.0f - sig)); /* d silu/dg = σ(g)·(1 + g·(1 − σ(g))) */
    *du = dy * g * sig;
}

__global__ void swiglu_bwd_kernel(bf16 *dgate, bf16 *dup, const bf16 *dout, const bf16 *gate, const bf16 *up,
                                  int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float dg, du;
        swiglu_grad(__bfloat162float(gate[i]), __bfloat162float(up[i]), __bfloat162float(dout[i]), &dg, &du);
        if (dgate) dgate[i] = __float2bfloat16(dg); /* may alias dout: read above */
        if (dup) dup[i] = __float2bfloat16(du);
    }
}

extern "C" void cuda_swiglu_backward(uint16_t *dgate, uint16_t *dup, const uint16_t *dout, const uint16_t *gate,
                                     const uint16_t *up, int64_t n) {
    if (n <= 0 || (!dgate && !dup)) return;
    swiglu_bwd_kernel<<<ra_grid_for(n, 256), 256, 0, ra_cuda_stream>>>((bf16 *)dgate, (bf16 *)dup, (const bf16 *)dout,
                                                                       (const bf16 *)gate, (const bf16 *)up, n);
    CUDA_CHECK_LAST();
}

__global__ void swiglu_fused_bwd_kernel(bf16 *dgu, const bf16 *dout, const bf16 *gu, int n, int I) {
    int64_t total = (int64_t)n * I;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t row = i / I, j = i % I, g0 = row * 2 * I + j;
        float dg, du;
        swiglu_grad(__bfloat162float(gu[g0]), __bfloat162float(gu[g0 + I]), __bfloat162float(dout[i]), &dg, &du);
        dgu[g0] = __float2bfloat16(dg);
        dgu[g0 + I] = __float2bfloat16(du);
    }
}

/* 8 columns per thread through 16-byte accesses (I % 8 == 0, aligned rows). */
__global__ void swiglu_fused_bwd_vec_kernel(bf16 *dgu, const bf16 *dout, const bf16 *gu, int n, int I) {
    const int I8 = I / 8;
    const int64_t total = (int64_t)n * I8;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t row = e / I8;
        const int c = (int)(e - row * I8);
        const bf16 *g_row = gu + row * 2 * I;
        bf16 *d_row = dgu + row * 2 * I;
        float g[8], u[8], dy[8];
        bf16x8_to_float(reinterpret_cast<const uint4 *>(g_row)[c], g);
        bf16x8_to_float(reinterpret_cast<const uint4 *>(g_row + I)[c], u);
        bf16x8_to_float(reinterpret_cast<const uint4 *>(dout + row * I)[c], dy);
#pragma unroll
        for (int k = 0; k < 8; k++) swiglu_grad(g[k], u[k], dy[k], &g[k], &u[k]);
        reinterpret_cast<uint4 *>(d_row)[c] = float_to_bf16x8(g);
        reinterpret_cast<uint4 *>(d_row + I)[c] = float_to_bf16x8(u);
    }
}

extern "C" void cuda_swiglu_fused_backward(uint16_t *dgate_up, const uint16_t *dout, const uint16_t *gate_up, int n,
                                           int I) {
    int64_t total = (int64_t)n * I;
    if (total <= 0) return;
    if (I % 8 == 0 && ra_aligned16(dgate_up) && ra_aligned16(dout) && ra_aligned16(gate_up))
        swiglu_fused_bwd_vec_kernel<<<ra_grid_for(total / 8, 256), 256, 0, ra_cuda_stream>>>(
            (bf16 *)dgate_up, (const bf16 *)dout, (const bf16 *)gate_up, n, I);
    else
        swiglu_fused_bwd_kernel<<<ra_grid_for(total, 256), 256, 0, ra_cuda_stream>>>(
            (bf16 *)dgate_up, (const bf16 *)dout, (const bf16 *)gate_up, n, I);
    CUDA_CHECK_LAST();
}

/* ---- adapters ---------------------------------------------------------------------------------
 * One block per token.  A token's attention features a and SSM features s
 * are segments of `len` elements at offsets from their row bases: the
 * static layout takes them from attn_slot (slot h at h·hd), the linear one
 * has one segment of D each.  lib/adapter.c has the formulas. */

#define ADAPTER_THREADS 256
#define ADAPTER_MAX_HEADS 256

typedef struct seg_list {
    int na, ns, len;
    int a_off[ADAPTER_MAX_HEADS], s_off[ADAPTER_MAX_HEADS];
} seg_list;

/* Build the segment lists in shared memory, then sync.  Thread h reads
 * slot h's flag and warp ballots place it: the lists stay in head order
 * (thread 0 walking the H flags had cost several microseconds per token of
 * dependent global loads). */
__device__ void seg_build(seg_list *L, const uint8_t *attn_slot, int H, int len) {
    __shared__ int warp_a[ADAPTER_THREADS / 32], warp_s[ADAPTER_THREADS / 32];
    const int h = threadIdx.x, lane = h & 31, w = h >> 5;
    if (!attn_slot) {
        if (h == 0) L->len = len, L->na = L->ns = 1, L->a_off[0] = L->s_off[0] = 0;
        __syncthreads();
        return;
    }
    const bool in = h < H, att = in && attn_slot[h];
    const unsigned ma = __ballot_sync(0xffffffffu, att), ms = __ballot_sync(0xffffffffu, in && !att);
    if (lane == 0) warp_a[w] = __popc(ma), warp_s[w] = __popc(ms);
    __syncthreads();
    int pa = __popc(ma & ((1u << lane) - 1u)), ps = __popc(ms & ((1u << lane) - 1u)), na = 0, ns = 0;
    for (int v = 0; v < ADAPTER_THREADS / 32; v++) {
        if (v < w) pa += warp_a[v], ps += warp_s[v];
        na += warp_a[v], ns += warp_s[v];
    }
    if (att) L->a_off[pa] = h * len;
    else if (in) L->s_off[ps] = h * len;
    if (h == 0) L->len = len, L->na = na, L->ns = ns;
    __syncthreads();
}

/* Element e (< count·len) of a segment list → offset. */
__device__ __forceinline__ int seg_at(const int *off, int len, int e) { return off[e / len] + e % len; }

/* Two-pass mean and population variance of the segments (fp32); vec: 8
 * elements per 16-byte load (len and the row's alignment allow it). */
__device__ void seg_moments(const bf16 *base, const int *off, int nseg, int len, float *mu, float *var,
                            float *scratch, bool vec) {
    int cnt = nseg * len;
    float s = 0.0f, f[8];
    if (vec)
        for (int e = threadIdx.x * 8; e < cnt; e += blockDim.x * 8) {
            bf16x8_to_float(*reinterpret_cast<const uint4 *>(base + seg_at(off, len, e)), f);
            for (int j = 0; j < 8; j++) s += f[j];
        }
    else
        for (int e = threadIdx.x; e < cnt; e += blockDim.x) s += __bfloat162float(base[seg_at(off, len, e)]);
    float m = block_sum(s, scratch) / cnt;
    float ss = 0.0f;
    if (vec)
        for (int e = threadIdx.x * 8; e < cnt; e += blockDim.x * 8) {
            bf16x8_to_float(*reinterpret_cast<const uint4 *>(base + seg_at(off, len, e)), f);
            for (int j = 0; j < 8; j++) ss += (f[j] - m) * (f[j] - m);
        }
    else
        for (int e = threadIdx.x; e < cnt; e += blockDim.x) {
            float d = __bfloat162float(base[seg_at(off, len, e)]) - m;
            ss += d * d;
        }
    *mu = m;
    *var = block_sum(ss, scratch) / cnt;
}

/* 16-byte accesses for every segment of rows at these bases and strides. */
static bool seg_vec_ok(int len, const void *a, int64_t a_stride, const void *b, int64_t b_stride, const void *c,
                       int64_t c_stride) {
    return len % 8 == 0 && a_stride % 8 == 0 && b_stride % 8 == 0 && c_stride % 8 == 0 && ra_aligned16(a) &&
           ra_aligned16(b) && ra_aligned16(c);
}

/* out (a's offsets from out rows) = rescaled a; stats [n, 4]; a static
 * layer with no attention or no SSM slot: stats zeroed, out untouched (the
 * caller copied the slots). */
__global__ void adapter_fwd_kernel(bf16 *out, int64_t out_stride, float *stats, const bf16 *a, int64_t a_stride,
                                   const bf16 *s, int64_t s_stride, const uint8_t *attn_slot, int H, int len,
                                   bool vec) {
    __shared__ seg_list L;
    __shared__ float scratch[32];
    seg_build(&L, attn_slot, H, len);
    int64_t i = blockIdx.x;
    float *st = stats + i * ADAPTER_STATS;
    if (L.na == 0 || L.ns == 0) {
        if (threadIdx.x < ADAPTER_STATS) st[threadIdx.x] = 0.0f;
        return;
    }
    const bf16 *ar = a + i * a_stride, *sr = s + i * s_stride;
    bf16 *orow = out + i * out_stride;
    float ma, va, ms, vs;
    seg_moments(ar, L.a_off, L.na, len, &ma, &va, scratch, vec);
    seg_moments(sr, L.s_off, L.ns, len, &ms, &vs, scratch, vec);
    float r = rsqrtf(va + ADAPTER_EPS), sg = sqrtf(vs + ADAPTER_EPS);
    if (vec)
        for (int e = threadIdx.x * 8; e < L.na * len; e += blockDim.x * 8) {
            int o = seg_at(L.a_off, len, e);
            float f[8];
            bf16x8_to_float(*reinterpret_cast<const uint4 *>(ar + o), f);
            for (int j = 0; j < 8; j++) f[j] = (f[j] - ma) * r * sg + ms;
            *reinterpret_cast<uint4 *>(orow + o) = float_to_bf16x8(f);
        }
    else
        for (int e = threadIdx.x; e < L.na * len; e += blockDim.x) {
            int o = seg_at(L.a_off, len, e);
            orow[o] = __float2bfloat16((__bfloat162float(ar[o]) - ma) * r * sg + ms);
        }
    if (threadIdx.x == 0) st[0] = ma, st[1] = r, st[2] = ms, st[3] = sg;
}

/* Gradients of one token (lib/adapter.c's rescale_backward_token).  g: ∂L/∂ã
 * at a's offsets (GT = bf16 or fp32); gs (scaled by gs_scale): the direct
 * gradient of s at s's offsets.  A static layer that is not mixed: ds = g
 * passes through (da and ds are the same row there). */
template <typename GT>
__global__ void adapter_bwd_kernel(bf16 *da, int64_t da_stride, bf16 *ds, int64_t ds_stride, const GT *g,
                                   int64_t g_stride, const bf16 *gs, int64_t gs_stride, float gs_scale, const bf16 *a,
                                   int64_t a_stride, const bf16 *s, int64_t s_stride, const float *stats,
                                   const uint8_t *attn_slot, int H, int len) {
    __shared__ seg_list L;
    __shared__ float scratch[32];
    seg_build(&L, attn_slot, H, len);
    int64_t i = blockIdx.x;
    const GT *gr = g + i * g_stride;
    if (L.na == 0 || L.ns == 0) { /* pass-through (static only: g is dout, da = ds is dslots) */
        for (int e = threadIdx.x; e < H * len; e += blockDim.x) st_f(da + i * da_stride + e, ld_f(gr + e));
        return;
    }
    const float *st = stats + i * ADAPTER_STATS;
    float ma = st[0], r = st[1], ms = st[2], sg = st[3];
    const bf16 *ar = a + i * a_stride, *sr = s + i * s_stride;
    float dmu = 0.0f, dsg = 0.0f;
    for (int e = threadIdx.x; e < L.na * len; e += blockDim.x) {
        int o = seg_at(L.a_off, len, e);
        float gv = ld_f(gr + o);
        dmu += gv;
        dsg += gv * ((__bfloat162float(ar[o]) - ma) * r);
    }
    dmu = block_sum(dmu, scratch);
    dsg = block_sum(dsg, scratch);
    float Fa = (float)(L.na * len), Fs = (float)(L.ns * len);
    float ca = dmu / Fa, cb = dsg / Fa, rs = r * sg;
    __syncthreads(); /* every g read before da (which may be g's memory) is written */
    if (da)
        for (int e = threadIdx.x; e < L.na * len; e += blockDim.x) {
            int o = seg_at(L.a_off, len, e);
            float ah = (__bfloat162float(ar[o]) - ma) * r;
            da[i * da_stride + o] = __float2bfloat16(rs * (ld_f(gr + o) - ca - ah * cb));
        }
    if (!ds) return;
    float cmu = dmu / Fs, csg = dsg / (Fs * sg);
    const bf16 *gsr = gs ? gs + i * gs_stride : NULL;
    for (int e = threadIdx.x; e < L.ns * len; e += blockDim.x) {
        int o = seg_at(L.s_off, len, e);
        float direct = gsr ? gs_scale * __bfloat162float(gsr[o]) : 0.0f;
        ds[i * ds_stride + o] = __float2bfloat16(direct + cmu + csg * (__bfloat162float(sr[o]) - ms));
    }
}

extern "C" void cuda_adapter_static_forward(uint16_t *out, float *stats, const uint16_t *slots,
                                            const uint8_t *attn_slot, int n, int H, int hd) {
    if (n <= 0) return;
    int64_t row = (int64_t)H * hd;
    cuda_copy(out, slots, (size_t)n * row * 2);
    adapter_fwd_kernel<<<n, ADAPTER_THREADS, 0, ra_cuda_stream>>>((bf16 *)out, row, stats, (const bf16 *)slots, row,
                                                                 (const bf16 *)slots, row, attn_slot, H, hd,
                                                                 seg_vec_ok(hd, out, row, slots, row, slots, row));
    CUDA_CHECK_LAST();
}

extern "C" void cuda_adapter_static_backward(uint16_t *dslots, const uint16_t *dout, const uint16_t *slots,
                                             const float *stats, const uint8_t *attn_slot, int n, int H, int hd) {
    if (!dslots || n <= 0) return;
    int64_t row = (int64_t)H * hd;
    adapter_bwd_kernel<bf16><<<n, ADAPTER_THREADS, 0, ra_cuda_stream>>>(
        (bf16 *)dslots, row, (bf16 *)dslots, row, (const bf16 *)dout, row, (const bf16 *)dout, row, 1.0f,
        (const bf16 *)slots, row, (const bf16 *)slots, row, stats, attn_slot, H, hd);
    CUDA_CHECK_LAST();
}

__global__ void half_sum_kernel(bf16 *out, const bf16 *a, const bf16 *b, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = __float2bfloat16(0.5f * (__bfloat162float(a[i]) + __bfloat162float(b[i])));
}

extern "C" void cuda_adapter_linear_forward(uint16_t *out, uint16_t *adapted, float *stats, const uint16_t *ssm,
                                            const uint16_t *attn, const uint16_t *W, const uint16_t *b, int n,
                                            int D) {
    if (n <= 0 || D <= 0) return;
    adapter_fwd_kernel<<<n, ADAPTER_THREADS, 0, ra_cuda_stream>>>((bf16 *)adapted, D, stats, (const bf16 *)attn, D,
                                                                 (const bf16 *)ssm, D, NULL, 1, D,
                                                                 seg_vec_ok(D, adapted, D, attn, D, ssm, D));
    CUDA_CHECK_LAST();
    cuda_linear_forward(out, adapted, W, b, n, D, D);
    int64_t m = (int64_t)n * D;
    half_sum_kernel<<<ra_grid_for(m, 256), 256, 0, ra_cuda_stream>>>((bf16 *)out, (const bf16 *)ssm,
                                                                     (const bf16 *)out, m);
    CUDA_CHECK_LAST();
}

extern "C" void cuda_adapter_linear_backward(uint16_t *dssm, uint16_t *dattn, float *dW, float *db,
                                             const uint16_t *dout, const uint16_t *ssm, const uint16_t *attn,
                                             const uint16_t *adapted, const float *stats, const uint16_t *W, int n,
                                             int D) {
    if (n <= 0 || D <= 0) return;
    float half = 0.5f, zero = 0.0f, one = 1.0f;
    float *g = (float *)train_scratch(TS_ADAPTER, (size_t)n * D * sizeof(float));
    /* dã = 0.5·dout·W (fp32), dW += 0.5·doutᵀ·ã, db += 0.5·Σ dout */
    CUBLAS_CHECK(cublasGemmEx(train_blas(), CUBLAS_OP_N, CUBLAS_OP_N, D, n, D, &half, W, CUDA_R_16BF, D, dout,
                              CUDA_R_16BF, D, &zero, g, CUDA_R_32F, D, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    if (dW)
        CUBLAS_CHECK(cublasGemmEx(train_blas(), CUBLAS_OP_N, CUBLAS_OP_T, D, D, n, &half, adapted, CUDA_R_16BF, D,
                                  dout, CUDA_R_16BF, D, &one, dW, CUDA_R_32F, D, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
    if (db) colsum_accumulate(db, COLSUM_PLAIN, dout, NULL, NULL, n, D, 0.5f);
    adapter_bwd_kernel<float><<<n, ADAPTER_THREADS, 0, ra_cuda_stream>>>(
        (bf16 *)dattn, D, (bf16 *)dssm, D, g, D, (const bf16 *)dout, D, 0.5f, (const bf16 *)attn, D,
        (const bf16 *)ssm, D, stats, NULL, 1, D);
    CUDA_CHECK_LAST();
}
