/* Kernels of the hybrid mixer and of decoding; see kernels/hybrid_ops_cuda.h. */
#include <stdlib.h>
#include <string.h>

#include "cuda_common.cuh"
#include "hybrid_ops_cuda.h"

#define HY_EPS 1e-5f /* ADAPTER_EPS (lib/adapter.h) */

/* ---- routed slots + static adapter: one block per token -------------------- */

__device__ __forceinline__ float slot_value(const bf16 *ka, const bf16 *ss, const int32_t *src, int e, int hd) {
    int h = e / hd, p = e - h * hd, s = src[h];
    return __bfloat162float(s >= 0 ? ka[s * hd + p] : ss[(-1 - s) * hd + p]);
}

__global__ void slots_kernel(bf16 *slots, const bf16 *katt, const bf16 *ssm, const int32_t *src, int adapt,
                             const uint8_t *ssm_keep, int T, int H, int k, int Hs, int hd, bool vec) {
    __shared__ float scratch[32];
    const int64_t r = blockIdx.x;
    const int W = H * hd;
    const bf16 *ka = katt + r * k * hd, *ss = ssm + r * Hs * hd;
    float ma = 0, ms = 0, ra = 1, sg = 1;
    if (adapt) { /* two passes: means, then variances (as the CPU's two-pass moments) */
        float sa = 0, s2 = 0;
        for (int e = threadIdx.x; e < W; e += blockDim.x) {
            float v = slot_value(ka, ss, src, e, hd);
            if (src[e / hd] >= 0) sa += v;
            else s2 += v;
        }
        sa = block_sum(sa, scratch);
        s2 = block_sum(s2, scratch);
        ma = sa / (float)(k * hd), ms = s2 / (float)(Hs * hd);
        float va = 0, vs = 0;
        for (int e = threadIdx.x; e < W; e += blockDim.x) {
            float v = slot_value(ka, ss, src, e, hd);
            if (src[e / hd] >= 0) va += (v - ma) * (v - ma);
            else vs += (v - ms) * (v - ms);
        }
        va = block_sum(va, scratch);
        vs = block_sum(vs, scratch);
        ra = rsqrtf(va / (float)(k * hd) + HY_EPS), sg = sqrtf(vs / (float)(Hs * hd) + HY_EPS);
    }
    const uint8_t *keep = ssm_keep ? ssm_keep + (r / T) * H : NULL;
    if (!adapt && vec) { /* a plain scatter: 8 elements per 16-byte access */
        for (int e = threadIdx.x * 8; e < W; e += blockDim.x * 8) {
            int h = e / hd, p = e - h * hd, s = src[h];
            uint4 v = s >= 0 ? *reinterpret_cast<const uint4 *>(ka + s * hd + p)
                             : *reinterpret_cast<const uint4 *>(ss + (-1 - s) * hd + p);
            if (s < 0 && keep && !keep[h]) v = make_uint4(0, 0, 0, 0);
            *reinterpret_cast<uint4 *>(slots + r * W + e) = v;
        }
        return;
    }
    for (int e = threadIdx.x; e < W; e += blockDim.x) {
        int h = e / hd;
        float v = slot_value(ka, ss, src, e, hd);
        if (src[h] >= 0) {
            if (adapt) v = (v - ma) * ra * sg + ms;
        } else if (keep && !keep[h]) {
            v = 0.0f;
        }
        slots[r * W + e] = __float2bfloat16(v);
    }
}

extern "C" void cuda_hybrid_slots(uint16_t *slots, const uint16_t *katt, const uint16_t *ssm, const int32_t *slot_src,
                                  int static_adapter, const uint8_t *ssm_keep, int n, int T, int H, int k, int Hs,
                                  int hd) {
    if (n <= 0) return;
    int adapt = static_adapter && k > 0 && Hs > 0;
    bool vec = hd % 8 == 0 && ra_aligned16(slots) && (!k || ra_aligned16(katt)) && (!Hs || ra_aligned16(ssm));
    slots_kernel<<<n, 256, 0, ra_cuda_stream>>>((bf16 *)slots, (const bf16 *)katt, (const bf16 *)ssm, slot_src, adapt,
                                                ssm_keep, T, H, k, Hs, hd, vec);
    CUDA_CHECK_LAST();
}

/* ---- parallel layout ------------------------------------------------------------ */

__device__ void row_moments(const bf16 *x, int D, float *scratch, float *mean, float *var) {
    float s = 0;
    for (int j = threadIdx.x; j < D; j += blockDim.x) s += __bfloat162float(x[j]);
    float m = block_sum(s, scratch) / (float)D, v = 0;
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        float d = __bfloat162float(x[j]) - m;
        v += d * d;
    }
    *mean = m;
    *var = block_sum(v, scratch) / (float)D;
}

__global__ void standardize_kernel(bf16 *adapted, const bf16 *attn, const bf16 *ssm, int D) {
    __shared__ float scratch[32];
    const int64_t r = blockIdx.x;
    const bf16 *a = attn + r * D, *s = ssm + r * D;
    float ma, va, ms, vs;
    row_moments(a, D, scratch, &ma, &va);
    row_moments(s, D, scratch, &ms, &vs);
    float ra = rsqrtf(va + HY_EPS), sg = sqrtf(vs + HY_EPS);
    for (int j = threadIdx.x; j < D; j += blockDim.x)
        adapted[r * D + j] = __float2bfloat16((__bfloat162float(a[j]) - ma) * ra * sg + ms);
}

extern "C" void cuda_hybrid_standardize(uint16_t *adapted, const uint16_t *attn, const uint16_t *ssm, int n, int D) {
    if (n <= 0) return;
    standardize_kernel<<<n, 256, 0, ra_cuda_stream>>>((bf16 *)adapted, (const bf16 *)attn, (const bf16 *)ssm, D);
    CUDA_CHECK_LAST();
}

__global__ void mix_residual_kernel(bf16 *x, const bf16 *a, const bf16 *b, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        x[i] = __float2bfloat16(__bfloat162float(x[i]) +
                                0.5f * (__bfloat162float(a[i]) + __bfloat162float(b[i])));
}

extern "C" void cuda_hybrid_mix_residual(uint16_t *x, const uint16_t *a, const uint16_t *b, int64_t n) {
    if (n <= 0) return;
    mix_residual_kernel<<<ra_grid_for(n, 256), 256, 0, ra_cuda_stream>>>((bf16 *)x, (const bf16 *)a,
                                                                         (const bf16 *)b, n);
    CUDA_CHECK_LAST();
}

__global__ void starts_kernel(uint8_t *starts, const int32_t *doc_start, int n, int T) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        starts[i] = doc_start[i] == i % T;
}

extern "C" void cuda_hybrid_starts(uint8_t *starts, const int32_t *doc_start, int n, int T) {
    if (n <= 0) return;
    starts_kernel<<<ra_grid_for(n, 256), 256, 0, ra_cuda_stream>>>(starts, doc_start, n, T);
    CUDA_CHECK_LAST();
}

/* ---- KV cache -------------------------------------------------------------------- */

__global__ void kv_write_kernel(bf16 *ck, bf16 *cv, const bf16 *src, int64_t ld, int64_t k_off, int64_t v_off, int B,
                                int T, int nkv, int hd, int T_max, int row0, int t0) {
    const int64_t total = (int64_t)B * T * nkv * hd;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        int p = (int)(i % hd);
        int64_t r = i / hd;
        int g = (int)(r % nkv);
        r /= nkv;
        int t = (int)(r % T), b = (int)(r / T);
        const bf16 *s = src + r * ld + (int64_t)g * hd + p;
        int64_t dst = (((int64_t)(row0 + b) * nkv + g) * T_max + t0 + t) * hd + p;
        ck[dst] = s[k_off];
        cv[dst] = s[v_off];
    }
}

extern "C" void cuda_kv_cache_write(uint16_t *cache_k, uint16_t *cache_v, const uint16_t *src, int64_t ld,
                                    int64_t k_off, int64_t v_off, int B, int T, int nkv, int hd, int T_max, int row0,
                                    int t0) {
    int64_t total = (int64_t)B * T * nkv * hd;
    if (total <= 0) return;
    kv_write_kernel<<<ra_grid_for(total, 256), 256, 0, ra_cuda_stream>>>(
        (bf16 *)cache_k, (bf16 *)cache_v, (const bf16 *)src, ld, k_off, v_off, B, T, nkv, hd, T_max, row0, t0);
    CUDA_CHECK_LAST();
}

/* ---- decode attention ---------------------------------------------------------------
 * One block per (row, KV head) and chunk of its query heads.  Keys are taken in
 * tiles with an online softmax across tiles: scores of a tile (one thread
 * per key, the whole K row read by that thread) into shared memory, the
 * tile's max and exponentials per head, then the weighted sum of V rows,
 * each thread owning two output dims of one head for a subset of the keys
 * (coalesced V reads); the subsets are summed at the end. */

__device__ __forceinline__ float dot_row(const float *q, const bf16 *k, int hd) {
    float acc = 0;
    if ((hd & 7) == 0) {
        for (int c = 0; c < hd / 8; c++) {
            float f[8];
            bf16x8_to_float(reinterpret_cast<const uint4 *>(k)[c], f);
#pragma unroll
            for (int u = 0; u < 8; u++) acc += q[c * 8 + u] * f[u];
        }
    } else {
        for (int p = 0; p < hd; p++) acc += q[p] * __bfloat162float(k[p]);
    }
    return acc;
}

__global__ void decode_attention_kernel(bf16 *out, const bf16 *q, int64_t ldq, const bf16 *ck, const bf16 *cv,
                                        const int32_t *first, int last, int nq, int nkv, int hd, int T_max, int qb,
                                        int tile) {
    extern __shared__ float smem[];
    const int g = blockIdx.x % nkv, b = blockIdx.x / nkv, qg = nq / nkv;
    const int h0 = blockIdx.y * qb, nh = min(qb, qg - h0);
    const int half = hd / 2, pairs = nh * half, ngroups = max(1, (int)blockDim.x / pairs);
    float *q_s = smem;                 /* [nh][hd], scaled */
    float *p_s = q_s + qb * hd;        /* [nh][tile] */
    float *m_s = p_s + qb * tile;      /* [nh] running max */
    float *l_s = m_s + qb;             /* [nh] running sum */
    float *c_s = l_s + qb;             /* [nh] correction of this tile */
    float *red = c_s + qb;             /* [blockDim][2] */
    const float scale = rsqrtf((float)hd);
    const bf16 *K = ck + ((int64_t)b * nkv + g) * T_max * hd, *V = cv + ((int64_t)b * nkv + g) * T_max * hd;
    for (int i = threadIdx.x; i < nh * hd; i += blockDim.x) {
        int h = i / hd, p = i - h * hd;
        q_s[i] = scale * __bfloat162float(q[(int64_t)b * ldq + (int64_t)(g * qg + h0 + h) * hd + p]);
    }
    for (int h = threadIdx.x; h < nh; h += blockDim.x) m_s[h] = -INFINITY, l_s[h] = 0.0f;
    const int pr = threadIdx.x % pairs, grp = threadIdx.x / pairs, hq = pr / half, d = 2 * (pr - hq * half);
    const bool owner = grp < ngroups;
    float acc0 = 0, acc1 = 0;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    __syncthreads();
    for (int j0 = first[b]; j0 <= last; j0 += tile) {
        const int len = min(tile, last - j0 + 1);
        for (int jj = threadIdx.x; jj < len; jj += blockDim.x) {
            const bf16 *krow = K + (int64_t)(j0 + jj) * hd;
            for (int h = 0; h < nh; h++) p_s[h * tile + jj] = dot_row(q_s + h * hd, krow, hd);
        }
        __syncthreads();
        for (int h = warp; h < nh; h += nwarps) {
            float mx = -INFINITY;
            for (int jj = lane; jj < len; jj += 32) mx = fmaxf(mx, p_s[h * tile + jj]);
            mx = warp_max(mx);
            const float m_new = fmaxf(m_s[h], mx);
            float sum = 0;
            for (int jj = lane; jj < len; jj += 32) {
                float e = __expf(p_s[h * tile + jj] - m_new);
                p_s[h * tile + jj] = e;
                sum += e;
            }
            sum = warp_sum(sum);
            if (lane == 0) {
                float c = __expf(m_s[h] - m_new); /* 0 on the first tile */
                c_s[h] = c;
                l_s[h] = l_s[h] * c + sum;
                m_s[h] = m_new;
            }
        }
        __syncthreads();
        if (owner) {
            const float c = c_s[hq];
            acc0 *= c, acc1 *= c;
            const float *p = p_s + hq * tile;
            for (int jj = grp; jj < len; jj += ngroups) {
                float2 v = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(V + (int64_t)(j0 + jj) * hd + d));
                acc0 += p[jj] * v.x;
                acc1 += p[jj] * v.y;
            }
        }
        __syncthreads();
    }
    if (owner) red[2 * threadIdx.x] = acc0, red[2 * threadIdx.x + 1] = acc1;
    __syncthreads();
    if (owner && grp == 0) {
        for (int k = 1; k < ngroups; k++) acc0 += red[2 * (k * pairs + pr)], acc1 += red[2 * (k * pairs + pr) + 1];
        const float inv = 1.0f / l_s[hq];
        bf16 *o = out + (int64_t)b * nq * hd + (int64_t)(g * qg + h0 + hq) * hd + d;
        *reinterpret_cast<__nv_bfloat162 *>(o) = __floats2bfloat162_rn(acc0 * inv, acc1 * inv);
    }
}

#include "decode_attention.cuh"

template <int QB>
static void launch_octet(uint16_t *out, const uint16_t *q, int64_t ldq, const uint16_t *ck, const uint16_t *cv,
                         const int32_t *first, int last, int B, int nq, int nkv, int hd, int T_max) {
    const int qg = nq / nkv, chunks = (qg + QB - 1) / QB, threads = QB <= 4 ? 256 : 128, G = threads / (hd / 8);
    const size_t smem = sizeof(float) * (size_t)G * QB * (2 + hd);
    dak_octet_kernel<QB><<<dim3((unsigned)(nkv * B), (unsigned)chunks), threads, smem, ra_cuda_stream>>>(
        (bf16 *)out, (const bf16 *)q, ldq, (const bf16 *)ck, (const bf16 *)cv, first, last, nq, nkv, hd, T_max);
    CUDA_CHECK_LAST();
}

static int simple_decode_attention(void) {
    static int v = -1;
    if (v < 0) {
        const char *e = getenv("RA_DECODE_ATTENTION");
        v = e && !strcmp(e, "simple");
    }
    return v;
}

extern "C" void cuda_decode_attention(uint16_t *out, const uint16_t *q, int64_t ldq, const uint16_t *cache_k,
                                      const uint16_t *cache_v, const int32_t *first, int last, int B, int nq, int nkv,
                                      int hd, int T_max) {
    if (B <= 0 || nq <= 0) return;
    const int qg = nq / nkv, half = hd / 2;
    const bool octet = hd % 8 == 0 && 32 % (hd / 8) == 0 && ra_aligned16(q) && ldq % 8 == 0 && ra_aligned16(cache_k) &&
                       ra_aligned16(cache_v) && !simple_decode_attention();
    if (octet) {
        if (qg == 1) launch_octet<1>(out, q, ldq, cache_k, cache_v, first, last, B, nq, nkv, hd, T_max);
        else if (qg == 2) launch_octet<2>(out, q, ldq, cache_k, cache_v, first, last, B, nq, nkv, hd, T_max);
        else if (qg <= 4) launch_octet<4>(out, q, ldq, cache_k, cache_v, first, last, B, nq, nkv, hd, T_max);
        else launch_octet<8>(out, q, ldq, cache_k, cache_v, first, last, B, nq, nkv, hd, T_max);
        return;
    }
    int qb = 512 / half;
    if (qb < 1) qb = 1;
    if (qb > qg) qb = qg;
    const int chunks = (qg + qb - 1) / qb, pairs = qb * half;
    int threads = (pairs + 31) / 32 * 32;
    if (threads < 128) threads = 128;
    int tile = 8192 / qb;
    if (tile > 512) tile = 512;
    if (tile < 32) tile = 32;
    size_t smem = sizeof(float) * ((size_t)qb * hd + (size_t)qb * tile + 3 * (size_t)qb + 2 * (size_t)threads);
    decode_attention_kernel<<<dim3((unsigned)(nkv * B), (unsigned)chunks), threads, smem, ra_cuda_stream>>>(
        (bf16 *)out, (const bf16 *)q, ldq, (const bf16 *)cache_k, (const bf16 *)cache_v, first, last, nq, nkv, hd,
        T_max, qb, tile);
    CUDA_CHECK_LAST();
}

/* ---- greedy: row argmax ------------------------------------------------------------- */

__global__ void argmax_kernel(int32_t *out, const bf16 *x, int V) {
    __shared__ float bv[256];
    __shared__ int bi[256];
    const bf16 *row = x + (int64_t)blockIdx.x * V;
    float best = -INFINITY;
    int idx = 0x7fffffff;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float v = __bfloat162float(row[j]);
        if (v > best) best = v, idx = j; /* j ascending per thread: ties keep the first */
    }
    bv[threadIdx.x] = best, bi[threadIdx.x] = idx;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            float v = bv[threadIdx.x + s];
            int i = bi[threadIdx.x + s];
            if (v > bv[threadIdx.x] || (v == bv[threadIdx.x] && i < bi[threadIdx.x])) bv[threadIdx.x] = v, bi[threadIdx.x] = i;
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = bi[0] == 0x7fffffff ? 0 : bi[0];
}

extern "C" void cuda_argmax_rows(int32_t *out, const uint16_t *x, int rows, int V) {
    if (rows <= 0) return;
    argmax_kernel<<<rows, 256, 0, ra_cuda_stream>>>(out, (const bf16 *)x, V);
    CUDA_CHECK_LAST();
}

/* ---- random fp32 fill ------------------------------------------------------------------ */

__device__ __forceinline__ uint64_t hy_mix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

__global__ void fill_f32_kernel(float *x, int64_t n, float half_width, uint64_t seed) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        uint64_t r = hy_mix64(seed * 0x100000001B3ull + (uint64_t)i);
        x[i] = ((float)(r >> 40) * (1.0f / 8388608.0f) - 1.0f) * half_width;
    }
}

extern "C" void cuda_fill_uniform_f32(float *x, int64_t n, float half_width, uint64_t seed) {
    if (n <= 0) return;
    fill_f32_kernel<<<ra_grid_for(n, 256), 256, 0, ra_cuda_stream>>>(x, n, half_width, seed);
    CUDA_CHECK_LAST();
}
