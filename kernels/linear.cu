/* Linear layers: out[n,out] = in[n,in] · Wᵀ (+ bias) (+ out, for the fused
 * residual), bf16 operands, fp32 accumulation, through cuBLASLt.
 *
 * Row-major in[n,in] is column-major (in × n); row-major W[out,in] is
 * column-major (in × out), used transposed; row-major out[n,out] is
 * column-major (out × n).  So the column-major product is
 *   D(out × n) = op(A)ᵀ · B,  A = W (in × out, ld in), B = in (in × n, ld in).
 * The bias vector has one entry per row of D, which is what cuBLASLt's BIAS
 * epilogue adds.
 *
 * A heuristic query costs tens of microseconds, so plans are cached by shape,
 * epilogue and pointer alignment.  When cuBLASLt offers no algorithm (odd
 * shapes, unaligned views) or fails, cublasGemmEx plus a bias kernel does the
 * same product; RA_CUDA_GEMM=cublas forces that path. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_common.cuh"
#include "ops_cuda.h"

static cublasLtHandle_t lt_handle;
static cublasHandle_t blas_handle;
static void *lt_workspace;
static const size_t LT_WORKSPACE_BYTES = (size_t)64 << 20;
static int force_cublas = -1;

static void gemm_init(void) {
    if (lt_handle) return;
    CUBLAS_CHECK(cublasLtCreate(&lt_handle));
    CUBLAS_CHECK(cublasCreate(&blas_handle));
    lt_workspace = cuda_malloc(LT_WORKSPACE_BYTES);
    const char *env = getenv("RA_CUDA_GEMM");
    force_cublas = env && strcmp(env, "cublas") == 0;
}

/* The largest power of two (≤ 256) dividing the address. */
static uint32_t alignment_of(const void *p) {
    uintptr_t a = (uintptr_t)p;
    uint32_t al = 256;
    while (al > 1 && (a & (al - 1))) al >>= 1;
    return al;
}

typedef struct {
    int n, in_dim, out_dim, has_bias, accumulate;
    uint32_t align[4]; /* A (W), B (in), C, D */
} plan_key;

typedef struct {
    plan_key key;
    int used;
    int ok; /* 0: cuBLASLt has no algorithm for it, use the fallback */
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
    size_t workspace;
} plan;

#define PLAN_CACHE 64
static plan plans[PLAN_CACHE];
static int plan_next;

static void plan_destroy(plan *p) {
    if (!p->used) return;
    if (p->op) cublasLtMatmulDescDestroy(p->op);
    if (p->a) cublasLtMatrixLayoutDestroy(p->a);
    if (p->b) cublasLtMatrixLayoutDestroy(p->b);
    if (p->c) cublasLtMatrixLayoutDestroy(p->c);
    memset(p, 0, sizeof *p);
}

static long plan_misses;

extern "C" long cuda_linear_plan_misses(void) { return plan_misses; }

static plan *plan_get(const plan_key *k) {
    for (int i = 0; i < PLAN_CACHE; i++)
        if (plans[i].used && memcmp(&plans[i].key, k, sizeof *k) == 0) return &plans[i];
    plan_misses++;
    plan *p = &plans[plan_next];
    plan_next = (plan_next + 1) % PLAN_CACHE;
    plan_destroy(p);
    p->key = *k;
    p->used = 1;

    CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    if (k->has_bias) {
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        cudaDataType_t bt = CUDA_R_16BF;
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt));
    }
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, (uint64_t)k->in_dim, (uint64_t)k->out_dim, k->in_dim));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, (uint64_t)k->in_dim, (uint64_t)k->n, k->in_dim));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->c, CUDA_R_16BF, (uint64_t)k->out_dim, (uint64_t)k->n, k->out_dim));

    cublasLtMatmulPreference_t pref;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    size_t ws = LT_WORKSPACE_BYTES;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &k->align[0],
                                                      sizeof(uint32_t)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &k->align[1],
                                                      sizeof(uint32_t)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &k->align[2],
                                                      sizeof(uint32_t)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &k->align[3],
                                                      sizeof(uint32_t)));
    cublasLtMatmulHeuristicResult_t res;
    memset(&res, 0, sizeof res);
    int found = 0;
    cublasStatus_t st =
        cublasLtMatmulAlgoGetHeuristic(lt_handle, p->op, p->a, p->b, p->c, p->c, pref, 1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    p->ok = st == CUBLAS_STATUS_SUCCESS && found > 0 && res.state == CUBLAS_STATUS_SUCCESS;
    if (p->ok) {
        p->algo = res.algo;
        p->workspace = res.workspaceSize;
    }
    return p;
}

__global__ void add_bias_kernel(bf16 *out, const bf16 *bias, int64_t total, int out_dim) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x)
        out[e] = __float2bfloat16(__bfloat162float(out[e]) + __bfloat162float(bias[e % out_dim]));
}

static void add_bias(uint16_t *out, const uint16_t *bias, int n, int out_dim) {
    int64_t total = (int64_t)n * out_dim;
    add_bias_kernel<<<ra_grid_for(total, 256), 256, 0, ra_cuda_stream>>>((bf16 *)out, (const bf16 *)bias, total,
                                                                         out_dim);
    CUDA_CHECK_LAST();
}

static void gemm_fallback(uint16_t *out, const uint16_t *in, const uint16_t *W, const uint16_t *bias, int n,
                          int in_dim, int out_dim, int accumulate) {
    float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    CUBLAS_CHECK(cublasSetStream(blas_handle, ra_cuda_stream));
    CUBLAS_CHECK(cublasGemmEx(blas_handle, CUBLAS_OP_T, CUBLAS_OP_N, out_dim, n, in_dim, &alpha, W, CUDA_R_16BF,
                              in_dim, in, CUDA_R_16BF, in_dim, &beta, out, CUDA_R_16BF, out_dim, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
    if (bias) add_bias(out, bias, n, out_dim);
}

/* cuBLASLt; returns 0 when it has no algorithm for this case or fails. */
static int gemm_lt(uint16_t *out, const uint16_t *in, const uint16_t *W, const uint16_t *bias, int n, int in_dim,
                   int out_dim, int accumulate) {
    if (force_cublas) return 0;
    if (bias && alignment_of(bias) < 16) return 0; /* the epilogue reads the bias as aligned vectors */
    plan_key k;
    memset(&k, 0, sizeof k);
    k.n = n, k.in_dim = in_dim, k.out_dim = out_dim, k.has_bias = bias != NULL, k.accumulate = accumulate;
    k.align[0] = alignment_of(W), k.align[1] = alignment_of(in), k.align[2] = k.align[3] = alignment_of(out);
    plan *p = plan_get(&k);
    if (!p->ok) return 0;
    if (bias)
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    cublasStatus_t st = cublasLtMatmul(lt_handle, p->op, &alpha, W, p->a, in, p->b, &beta, out, p->c, out, p->c,
                                       &p->algo, lt_workspace, p->workspace, ra_cuda_stream);
    if (st == CUBLAS_STATUS_SUCCESS) return 1;
    fprintf(stderr, "ra: cuBLASLt matmul n=%d in=%d out=%d failed (%s); using cublasGemmEx for this shape\n", n,
            in_dim, out_dim, cublasGetStatusString(st));
    p->ok = 0;
    return 0;
}

static void gemm(uint16_t *out, const uint16_t *in, const uint16_t *W, const uint16_t *bias, int n, int in_dim,
                 int out_dim, int accumulate) {
    if (n <= 0 || out_dim <= 0) return;
    gemm_init();
    if (in_dim <= 0) { /* an empty sum: out = bias (+ out) */
        if (!accumulate) cuda_memset(out, 0, (size_t)n * out_dim * sizeof(uint16_t));
        if (bias) add_bias(out, bias, n, out_dim);
        return;
    }
    if (gemm_lt(out, in, W, bias, n, in_dim, out_dim, accumulate)) return;
    gemm_fallback(out, in, W, bias, n, in_dim, out_dim, accumulate);
}

extern "C" void cuda_linear_forward(uint16_t *out, const uint16_t *in, const uint16_t *W, const uint16_t *bias, int n,
                                    int in_dim, int out_dim) {
    gemm(out, in, W, bias, n, in_dim, out_dim, 0);
}

extern "C" void cuda_linear_residual_forward(uint16_t *x, const uint16_t *in, const uint16_t *W, const uint16_t *bias,
                                             int n, int in_dim, int out_dim) {
    gemm(x, in, W, bias, n, in_dim, out_dim, 1);
}
