/* Causal GQA attention on the GPU.
 *
 * Two kernels:
 *  - flash_attention_kernel: the fast path (FlashAttention-2 style).  A block
 *    of 4 warps owns 64 query rows of one (batch, head); each warp 16 rows.
 *    Key/value tiles of 64 rows stream through shared memory (cp.async,
 *    double-buffered); S = Q·Kᵀ and O += P·V run on the bf16 tensor cores
 *    (mma.sync m16n8k16, fp32 accumulators); the softmax is online, in fp32,
 *    in the log2 domain.  P is rounded to bf16 for the P·V product (as
 *    FlashAttention does); the row sums use the unrounded values.
 *  - attention_rows_kernel: one block per (query row, head, batch), every
 *    score of the row in shared memory, fp32 throughout: the fallback for
 *    head dims or layouts the flash kernel does not take.
 * Probabilities, when asked for (ra-probe, MOHAWK stage 1's teacher
 * matrices), come from one batched cuBLAS GEMM S = Q·Kᵀ per (batch row,
 * head) into the fp32 output and a masked softmax over each row in place
 * (probs_softmax_kernel): the row kernel's dot products read K from global
 * memory one row per thread, 0.35 TFLOP/s; at the 1B stage-1 shape its
 * teacher matrices took 720 ms of a 1.2 s step.
 *
 * The flash kernel itself, with the fragment layouts it relies on, is in
 * kernels/flash_attention.cuh. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_common.cuh"
#include "ops_cuda.h"
#include "train_common.cuh"

#include "flash_attention.cuh"

template <int HD>
static void flash_launch(const fa_params &p) {
    constexpr int smem = (FA_BR + 4 * FA_BC) * (HD + 8) * (int)sizeof(bf16);
    static bool configured = false;
    if (!configured) {
        CUDA_CHECK(cudaFuncSetAttribute(flash_attention_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        configured = true;
    }
    dim3 grid((unsigned)(p.B * p.H), (unsigned)((p.T + FA_BR - 1) / FA_BR));
    flash_attention_kernel<HD><<<grid, FA_THREADS, smem, ra_cuda_stream>>>(p);
    CUDA_CHECK_LAST();
}

/* Returns 0 when the flash kernel has no instance for this head dim. */
static int flash_dispatch(const fa_params &p, int hd) {
    switch (hd) {
    case 16: flash_launch<16>(p); return 1;
    case 32: flash_launch<32>(p); return 1;
    case 64: flash_launch<64>(p); return 1;
    case 80: flash_launch<80>(p); return 1;
    case 96: flash_launch<96>(p); return 1;
    case 128: flash_launch<128>(p); return 1;
    default: return 0;
    }
}

/* ---- the row kernel: materialised scores, fp32 ------------------------- */

typedef struct {
    bf16 *out; /* may be NULL */
    int64_t out_stride;
    const bf16 *q;
    int64_t q_stride;
    const bf16 *k, *v;
    int64_t kv_stride;
    const int32_t *doc_start;
    const uint8_t *head_keep;
    int B, T, H, Hkv, hd;
    float scale;
} rows_params;

#define ROWS_THREADS 128

__global__ void __launch_bounds__(ROWS_THREADS) attention_rows_kernel(const rows_params p) {
    extern __shared__ float rows_smem[]; /* q row [hd], then scores [T] */
    __shared__ float scratch[32];
    const int t = blockIdx.x, h = blockIdx.y, b = blockIdx.z, tid = threadIdx.x;
    const int hd = p.hd, T = p.T;
    float *qs = rows_smem, *sc = rows_smem + hd;
    const int64_t i = (int64_t)b * T + t;
    int lo = 0;
    if (p.doc_start) {
        lo = p.doc_start[i];
        if (lo < 0 || lo > t) lo = 0;
    }
    const int g = h / (p.H / p.Hkv);
    const bf16 *qr = p.q + i * p.q_stride + (int64_t)h * hd;
    const bf16 *kb = p.k + (int64_t)b * T * p.kv_stride + (int64_t)g * hd;
    const bf16 *vb = p.v + (int64_t)b * T * p.kv_stride + (int64_t)g * hd;
    for (int d = tid; d < hd; d += ROWS_THREADS) qs[d] = __bfloat162float(qr[d]);
    __syncthreads();

    float mx = -INFINITY;
    for (int j = lo + tid; j <= t; j += ROWS_THREADS) {
        const bf16 *kr = kb + (int64_t)j * p.kv_stride;
        float acc = 0.0f;
        for (int d = 0; d < hd; d++) acc += qs[d] * __bfloat162float(kr[d]);
        acc *= p.scale;
        sc[j] = acc;
        mx = fmaxf(mx, acc);
    }
    mx = block_max(mx, scratch);
    float sum = 0.0f;
    for (int j = lo + tid; j <= t; j += ROWS_THREADS) {
        float e = expf(sc[j] - mx);
        sc[j] = e;
        sum += e;
    }
    sum = block_sum(sum, scratch); /* its barriers also publish sc[] */
    const float inv = 1.0f / sum;

    const bool keep = !p.head_keep || p.head_keep[b * p.H + h];
    bf16 *o = p.out + i * p.out_stride + (int64_t)h * hd;
    for (int d = tid; d < hd; d += ROWS_THREADS) {
        float acc = 0.0f;
        if (keep)
            for (int j = lo; j <= t; j++) acc += sc[j] * __bfloat162float(vb[(int64_t)j * p.kv_stride + d]);
        o[d] = __float2bfloat16(acc * inv);
    }
}

/* The larger of 48 KiB and the opt-in dynamic shared memory a kernel may
 * use beside `reserve` bytes of static shared memory, set as its limit. */
static int smem_optin(const void *kernel, int reserve) {
    int dev = 0, optin = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    optin -= reserve;
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, optin));
    return optin;
}

/* A whole row of T fp32 scores in shared memory: refuse a T past it. */
static void check_row_fits(size_t smem, int optin, int T, int extra, const char *what) {
    if (smem <= (size_t)optin) return;
    fprintf(stderr, "ra: %s holds a whole row in shared memory: sequence length %d is over its limit of %d\n", what,
            T, (int)(optin / sizeof(float)) - extra);
    exit(EX_SOFTWARE);
}

/* ---- probabilities: batched GEMM, then a masked softmax per row ---------- */

typedef struct {
    const bf16 *q, *k;
    int64_t q_stride, kv_stride;
    float *probs;              /* [B, n, T, T] */
    const int32_t *heads;      /* [n] or NULL = 0..H-1 */
    const int32_t *doc_start;  /* [B*T] or NULL */
    int n, B, T, H, Hkv, hd;
    float scale;
} probs_params;

/* The operands of GEMM z = b·n + hs: K and Q rows of batch row b, query head
 * heads[hs] and its KV head, and the output matrix. */
__global__ void probs_pointers_kernel(const void **kp, const void **qp, void **cp, const probs_params p) {
    int z = blockIdx.x * blockDim.x + threadIdx.x;
    if (z >= p.B * p.n) return;
    int b = z / p.n, hs = z % p.n, h = p.heads ? p.heads[hs] : hs, g = h / (p.H / p.Hkv);
    int64_t r0 = (int64_t)b * p.T;
    kp[z] = p.k + r0 * p.kv_stride + (int64_t)g * p.hd;
    qp[z] = p.q + r0 * p.q_stride + (int64_t)h * p.hd;
    cp[z] = p.probs + (int64_t)z * p.T * p.T;
}

#define PROBS_THREADS 256

/* Row t of matrix z (scores already scaled): softmax over the keys of its
 * document up to t, 0 elsewhere. */
__global__ void __launch_bounds__(PROBS_THREADS) probs_softmax_kernel(const probs_params p) {
    extern __shared__ float row[];
    __shared__ float scratch[32];
    const int t = blockIdx.x, z = blockIdx.y, T = p.T;
    float *pr = p.probs + ((int64_t)z * T + t) * T;
    int lo = 0;
    if (p.doc_start) {
        lo = p.doc_start[(int64_t)(z / p.n) * T + t];
        if (lo < 0 || lo > t) lo = 0;
    }
    float mx = -INFINITY;
    for (int j = lo + threadIdx.x; j <= t; j += PROBS_THREADS) {
        row[j] = pr[j];
        mx = fmaxf(mx, row[j]);
    }
    mx = block_max(mx, scratch);
    float sum = 0.0f;
    for (int j = lo + threadIdx.x; j <= t; j += PROBS_THREADS) {
        float e = expf(row[j] - mx);
        row[j] = e;
        sum += e;
    }
    const float inv = 1.0f / block_sum(sum, scratch);
    for (int j = threadIdx.x; j < T; j += PROBS_THREADS) pr[j] = (j >= lo && j <= t) ? row[j] * inv : 0.0f;
}

static void probs_launch(const probs_params &p) {
    static int optin = 0;
    if (!optin) optin = smem_optin((const void *)probs_softmax_kernel, 1024);
    size_t smem = (size_t)p.T * sizeof(float);
    check_row_fits(smem, optin, p.T, 0, "the attention-probability softmax");
    const int batch = p.B * p.n;
    if (batch > 65535) {
        fprintf(stderr, "ra: attention probabilities: %d heads x batch %d exceeds the grid limits\n", p.n, p.B);
        exit(EX_SOFTWARE);
    }
    void **ptrs = (void **)train_scratch(TS_PTRS, 3 * (size_t)batch * sizeof(void *));
    probs_pointers_kernel<<<(batch + 127) / 128, 128, 0, ra_cuda_stream>>>((const void **)ptrs,
                                                                          (const void **)ptrs + batch,
                                                                          ptrs + 2 * batch, p);
    CUDA_CHECK_LAST();
    /* row-major S[t, j] = Σ_d Q[t, d]·K[j, d]: column-major Sᵀ = Kᵀ·Q with K, Q
     * read as column-major [hd, T] (leading dimensions their row strides) */
    const float alpha = p.scale, beta = 0.0f;
    CUBLAS_CHECK(cublasGemmBatchedEx(train_blas(), CUBLAS_OP_T, CUBLAS_OP_N, p.T, p.T, p.hd, &alpha,
                                     (const void *const *)ptrs, CUDA_R_16BF, (int)p.kv_stride,
                                     (const void *const *)(ptrs + batch), CUDA_R_16BF, (int)p.q_stride, &beta,
                                     ptrs + 2 * batch, CUDA_R_32F, p.T, batch, CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT));
    probs_softmax_kernel<<<dim3((unsigned)p.T, (unsigned)batch), PROBS_THREADS, smem, ra_cuda_stream>>>(p);
    CUDA_CHECK_LAST();
}

static void rows_launch(const rows_params &p) {
    static int optin = 0;
    if (!optin) optin = smem_optin((const void *)attention_rows_kernel, 1024); /* room for the static scratch */
    size_t smem = (size_t)(p.hd + p.T) * sizeof(float);
    check_row_fits(smem, optin, p.T, p.hd, "attention with a head dim other than 16/32/64/80/96/128 (the row kernel)");
    dim3 grid((unsigned)p.T, (unsigned)p.H, (unsigned)p.B);
    if (grid.y > 65535 || grid.z > 65535) {
        fprintf(stderr, "ra: attention: %d heads x batch %d exceeds the grid limits\n", p.H, p.B);
        exit(EX_SOFTWARE);
    }
    attention_rows_kernel<<<grid, ROWS_THREADS, smem, ra_cuda_stream>>>(p);
    CUDA_CHECK_LAST();
}

static bool flash_layout_ok(const cuda_attention_args *a) {
    return ra_aligned16(a->q) && ra_aligned16(a->k) && ra_aligned16(a->v) && ra_aligned16(a->out) &&
           a->q_stride % 8 == 0 && a->kv_stride % 8 == 0 && a->out_stride % 8 == 0;
}

static int env_simple = -1;

extern "C" void cuda_attention_forward_ex(const cuda_attention_args *a) {
    if (a->B <= 0 || a->T <= 0 || a->H <= 0) return;
    if (a->Hkv <= 0 || a->H % a->Hkv != 0) {
        fprintf(stderr, "ra: attention: %d query heads is not a multiple of %d key/value heads\n", a->H, a->Hkv);
        exit(EX_SOFTWARE);
    }
    if (env_simple < 0) {
        const char *e = getenv("RA_CUDA_ATTENTION");
        env_simple = e && strcmp(e, "simple") == 0;
    }
    const float scale = (float)(1.0 / sqrt((double)a->hd));
    if (a->out) {
        bool done = false;
        if (!env_simple && flash_layout_ok(a)) {
            fa_params p;
            p.out = (bf16 *)a->out, p.out_stride = a->out_stride;
            p.q = (const bf16 *)a->q, p.q_stride = a->q_stride;
            p.k = (const bf16 *)a->k, p.v = (const bf16 *)a->v, p.kv_stride = a->kv_stride;
            p.doc_start = a->doc_start, p.head_keep = a->head_keep;
            p.B = a->B, p.T = a->T, p.H = a->H, p.Hkv = a->Hkv;
            p.scale_log2 = (float)(1.4426950408889634 / sqrt((double)a->hd));
            done = flash_dispatch(p, a->hd);
        }
        if (!done) {
            rows_params r;
            memset(&r, 0, sizeof r);
            r.out = (bf16 *)a->out, r.out_stride = a->out_stride;
            r.q = (const bf16 *)a->q, r.q_stride = a->q_stride;
            r.k = (const bf16 *)a->k, r.v = (const bf16 *)a->v, r.kv_stride = a->kv_stride;
            r.doc_start = a->doc_start, r.head_keep = a->head_keep;
            r.B = a->B, r.T = a->T, r.H = a->H, r.Hkv = a->Hkv, r.hd = a->hd, r.scale = scale;
            rows_launch(r);
        }
    }
    if (a->probs) {
        probs_params p;
        p.q = (const bf16 *)a->q, p.q_stride = a->q_stride;
        p.k = (const bf16 *)a->k, p.kv_stride = a->kv_stride;
        p.probs = a->probs, p.heads = a->probs_heads, p.n = a->probs_heads ? a->n_probs_heads : a->H;
        p.doc_start = a->doc_start;
        p.B = a->B, p.T = a->T, p.H = a->H, p.Hkv = a->Hkv, p.hd = a->hd, p.scale = scale;
        if (p.n > 0) probs_launch(p);
    }
}

extern "C" void cuda_attention_forward(uint16_t *out, float *probs, const uint16_t *q, const uint16_t *k,
                                       const uint16_t *v, const int32_t *doc_start, int B, int T, int H, int Hkv,
                                       int hd) {
    cuda_attention_args a;
    memset(&a, 0, sizeof a);
    a.out = out, a.out_stride = (int64_t)H * hd;
    a.q = q, a.q_stride = (int64_t)H * hd;
    a.k = k, a.v = v, a.kv_stride = (int64_t)Hkv * hd;
    a.doc_start = doc_start;
    a.probs = probs;
    a.B = B, a.T = T, a.H = H, a.Hkv = Hkv, a.hd = hd;
    cuda_attention_forward_ex(&a);
}
