/* Internals shared by the training kernels (ops_backward_cuda.cu,
 * loss_cuda.cu, optim_cuda.cu): library-owned scratch, the cuBLAS handle,
 * bf16 loads/stores that work on both bf16 and fp32 pointers, and the
 * deterministic column sums used for parameter gradients. */
#ifndef RA_TRAIN_COMMON_CUH
#define RA_TRAIN_COMMON_CUH

#include "cuda_common.cuh"
#include "ops_backward_cuda.h"
#include "ops_cuda.h"

/* Scratch slots: each is one device buffer grown on demand and kept. */
enum {
    TS_COLSUM,     /* column-sum partials */
    TS_ATT_S,      /* attention: S / P fp32 */
    TS_ATT_DP,     /* attention: dP fp32 */
    TS_ATT_PB,     /* attention: P bf16 */
    TS_ATT_DSB,    /* attention: dS bf16 */
    TS_ATT_DKV,    /* attention: dK, dV fp32 */
    TS_ADAPTER,    /* adapter: dã fp32, linear output */
    TS_ROWS,       /* losses: per-row values */
    TS_PTRS,       /* batched GEMM operand pointers (attention probabilities) */
    TS_N
};
void *train_scratch(int slot, size_t bytes);

/* The library's cuBLAS handle (training, the DM2 mixer, attention
 * probabilities, probe attribution), bound to the ops stream. */
cublasHandle_t train_blas(void);

__device__ __forceinline__ float ld_f(const bf16 *p) { return __bfloat162float(*p); }
__device__ __forceinline__ float ld_f(const float *p) { return *p; }
__device__ __forceinline__ void st_f(bf16 *p, float v) { *p = __float2bfloat16(v); }
__device__ __forceinline__ void st_f(float *p, float v) { *p = v; }

/* out[c] += scale · Σ_r f(r, c) over rows 0..n-1, for every column c < D:
 * rows are summed in blocks of COLSUM_ROWS (fp32), the blocks in order
 * (double), so the result is the same on every run.
 *   mode COLSUM_PLAIN:  f = a[r, c]
 *   mode COLSUM_RMS:    f = a[r, c] · x[r, c] · rstd[r] */
enum { COLSUM_PLAIN, COLSUM_RMS };
#define COLSUM_ROWS 256
void colsum_accumulate(float *out, int mode, const uint16_t *a, const uint16_t *x, const float *rstd, int n, int D,
                       float scale);

/* fp32 → bf16 on the device. */
void train_f32_to_bf16(uint16_t *dst, const float *src, int64_t n);

#endif
