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
 *    score of the row in shared memory, fp32 throughout.  It writes the
 *    probabilities when asked, and is the fallback for head dims or layouts
 *    the flash kernel does not take.
 *
 * The flash kernel itself, with the fragment layouts it relies on, is in
 * kernels/flash_attention.cuh. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_common.cuh"
#include "ops_cuda.h"

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
    float *probs; /* may be NULL: [B, n_heads, T, T] */
    const int32_t *heads; /* [n_heads] or NULL = 0..H-1 */
    int n_heads;
    int B, T, H, Hkv, hd;
    float scale;
} rows_params;

#define ROWS_THREADS 128

__global__ void __launch_bounds__(ROWS_THREADS) attention_rows_kernel(const rows_params p) {
    extern __shared__ float rows_smem[]; /* q row [hd], then scores [T] */
    __shared__ float scratch[32];
    const int t = blockIdx.x, hs = blockIdx.y, b = blockIdx.z, tid = threadIdx.x;
    const int h = p.heads ? p.heads[hs] : hs;
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

    if (p.probs) {
        float *pr = p.probs + (((int64_t)b * p.n_heads + hs) * T + t) * T;
        for (int j = tid; j < T; j += ROWS_THREADS) pr[j] = (j >= lo && j <= t) ? sc[j] * inv : 0.0f;
    }
    if (p.out) {
        const bool keep = !p.head_keep || p.head_keep[b * p.H + h];
        bf16 *o = p.out + i * p.out_stride + (int64_t)h * hd;
        for (int d = tid; d < hd; d += ROWS_THREADS) {
            float acc = 0.0f;
            if (keep)
                for (int j = lo; j <= t; j++) acc += sc[j] * __bfloat162float(vb[(int64_t)j * p.kv_stride + d]);
            o[d] = __float2bfloat16(acc * inv);
        }
    }
}

static void rows_launch(const rows_params &p) {
    static int optin = 0;
    if (!optin) {
        int dev = 0;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
        optin -= 1024; /* room for the static scratch */
        CUDA_CHECK(cudaFuncSetAttribute(attention_rows_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, optin));
    }
    size_t smem = (size_t)(p.hd + p.T) * sizeof(float);
    if (smem > (size_t)optin) {
        fprintf(stderr,
                "ra: attention probabilities (and head dims other than 16/32/64/80/96/128) need the row kernel, "
                "which holds a whole row in shared memory: sequence length %d is over its limit of %d\n",
                p.T, (int)(optin / sizeof(float)) - p.hd);
        exit(EX_SOFTWARE);
    }
    dim3 grid((unsigned)p.T, (unsigned)p.n_heads, (unsigned)p.B);
    if (grid.y > 65535 || grid.z > 65535) {
        fprintf(stderr, "ra: attention: %d heads x batch %d exceeds the grid limits\n", p.n_heads, p.B);
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
            r.probs = NULL, r.heads = NULL, r.n_heads = a->H;
            r.B = a->B, r.T = a->T, r.H = a->H, r.Hkv = a->Hkv, r.hd = a->hd, r.scale = scale;
            rows_launch(r);
        }
    }
    if (a->probs) {
        rows_params r;
        memset(&r, 0, sizeof r);
        r.out = NULL;
        r.q = (const bf16 *)a->q, r.q_stride = a->q_stride;
        r.k = (const bf16 *)a->k, r.v = (const bf16 *)a->v, r.kv_stride = a->kv_stride;
        r.doc_start = a->doc_start, r.head_keep = NULL;
        r.probs = a->probs, r.heads = a->probs_heads, r.n_heads = a->probs_heads ? a->n_probs_heads : a->H;
        r.B = a->B, r.T = a->T, r.H = a->H, r.Hkv = a->Hkv, r.hd = a->hd, r.scale = scale;
        if (r.n_heads > 0) rows_launch(r);
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
