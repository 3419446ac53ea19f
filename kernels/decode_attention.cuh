/* The decode attention kernel of kernels/hybrid_ops.cu for head dims 8·L
 * (L dividing 32), in a header so tests/unit/test_decode_sim.cpp runs the
 * same source on the host warp simulator (tests/unit/cuda_sim.h, SSD_SIM). */
#ifndef RA_DECODE_ATTENTION_CUH
#define RA_DECODE_ATTENTION_CUH

#ifndef SSD_SIM
#define DAK_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
__device__ __forceinline__ void dak_load8(const bf16 *p, float f[8]) {
    bf16x8_to_float(*reinterpret_cast<const uint4 *>(p), f);
}
__device__ __forceinline__ float dak_exp(float x) { return __expf(x); }
__device__ __forceinline__ bf16 dak_f2bf(float x) { return __float2bfloat16(x); }
#else
#define DAK_SMEM(name) SSD_DYNAMIC_SMEM(name)
static inline void dak_load8(const bf16 *p, float f[8]) {
    uint4 u = ssd_ldg16(p);
    uint16_t h[8];
    memcpy(h, &u, 16);
    for (int i = 0; i < 8; i++) f[i] = sim_bf2f_bits(h[i]);
}
static inline float dak_exp(float x) { return expf(x); }
static inline bf16 dak_f2bf(float x) { return ssd_f2bf(x); }
#endif

/* The fast path (head dims 8·L with L dividing 32: 16, 32, 64, 128, 256):
 * each key row is read by L threads, 8 dims (one 16-byte load of K and of V)
 * each; the L partial dot products are summed with shuffles.  The block's
 * G = threads / L key groups each run an online softmax over their share
 * of the keys for QB query heads at once (q, running max, sum and the 8
 * output dims of each head in registers), and the groups are merged at the
 * end through shared memory.  Every loop trip is uniform across the block
 * (keys past the end are masked), so the shuffles never diverge. */
template <int QB>
__global__ void dak_octet_kernel(bf16 *out, const bf16 *q, int64_t ldq, const bf16 *ck, const bf16 *cv,
                                              const int32_t *first, int last, int nq, int nkv, int hd, int T_max) {
    DAK_SMEM(smem_raw);
    float *smem = reinterpret_cast<float *>(smem_raw);
    const int g = blockIdx.x % nkv, b = blockIdx.x / nkv, qg = nq / nkv;
    const int h0 = blockIdx.y * QB, nh = min(QB, qg - h0);
    const int L = hd / 8, o = threadIdx.x % L, grp = threadIdx.x / L, G = blockDim.x / L;
    const float scale = rsqrtf((float)hd);
    const int64_t base = ((int64_t)b * nkv + g) * T_max * hd + o * 8;
    const bf16 *K = ck + base, *V = cv + base;
    float qr[QB][8], acc[QB][8], m[QB], l[QB];
#pragma unroll
    for (int h = 0; h < QB; h++) {
        float f[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (h < nh) dak_load8(q + (int64_t)b * ldq + (int64_t)(g * qg + h0 + h) * hd + o * 8, f);
#pragma unroll
        for (int u = 0; u < 8; u++) qr[h][u] = f[u] * scale, acc[h][u] = 0.0f;
        m[h] = -INFINITY, l[h] = 0.0f;
    }
    const int j0 = first[b], n_it = (last - j0 + G) / G;
    for (int it = 0; it < n_it; it++) {
        const int j = j0 + it * G + grp;
        const bool valid = j <= last;
        float k[8] = {0, 0, 0, 0, 0, 0, 0, 0}, v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (valid) {
            dak_load8(K + (int64_t)j * hd, k);
            dak_load8(V + (int64_t)j * hd, v);
        }
#pragma unroll
        for (int h = 0; h < QB; h++) {
            float sc = 0.0f;
#pragma unroll
            for (int u = 0; u < 8; u++) sc += qr[h][u] * k[u];
            for (int off = L / 2; off > 0; off >>= 1) sc += __shfl_xor_sync(0xffffffffu, sc, off);
            if (valid) {
                const float mn = fmaxf(m[h], sc), c = dak_exp(m[h] - mn), p = dak_exp(sc - mn);
                l[h] = l[h] * c + p;
#pragma unroll
                for (int u = 0; u < 8; u++) acc[h][u] = acc[h][u] * c + p * v[u];
                m[h] = mn;
            }
        }
    }
    float *ms = smem, *ls = ms + G * QB, *as = ls + G * QB; /* [G][QB], [G][QB], [G][QB][hd] */
#pragma unroll
    for (int h = 0; h < QB; h++) {
        if (o == 0) ms[grp * QB + h] = m[h], ls[grp * QB + h] = l[h];
#pragma unroll
        for (int u = 0; u < 8; u++) as[(grp * QB + h) * hd + o * 8 + u] = acc[h][u];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < nh * hd; i += blockDim.x) {
        const int h = i / hd, d = i - h * hd;
        float M = -INFINITY;
        for (int k = 0; k < G; k++) M = fmaxf(M, ms[k * QB + h]);
        float sum = 0.0f, a = 0.0f;
        for (int k = 0; k < G; k++) {
            const float w = dak_exp(ms[k * QB + h] - M);
            sum += ls[k * QB + h] * w;
            a += as[(k * QB + h) * hd + d] * w;
        }
        out[(int64_t)b * nq * hd + (int64_t)(g * qg + h0 + h) * hd + d] = dak_f2bf(a / sum);
    }
}

#endif
