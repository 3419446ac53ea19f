/* The flash attention kernel (see kernels/attention.cu for the design).
 *
 * Kept in a header so that tests/gpu/flash_sim.cpp can compile the very same
 * kernel for the host, against a lane-by-lane simulator of the warp
 * primitives (ldmatrix, mma.sync, shuffles, barriers) written from the PTX
 * ISA's fragment layouts; the primitives below are the GPU versions.
 *
 * Fragment layouts (PTX ISA, mma.m16n8k16 with .bf16): lane = 4*g + t,
 *   A (16x16, row-major): reg0 = A[g][2t..2t+1],   reg1 = A[g+8][2t..2t+1],
 *                         reg2 = A[g][2t+8..+9],   reg3 = A[g+8][2t+8..+9];
 *   B (16x8, "col"):      reg0 = B[2t..2t+1][g],   reg1 = B[2t+8..2t+9][g];
 *   C (16x8, fp32):       c0,c1 = C[g][2t..2t+1],  c2,c3 = C[g+8][2t..2t+1].
 * The C fragments of two adjacent 8-key tiles of S are exactly the A
 * fragment of P for a 16-key step of P·V, so P never leaves registers.
 * ldmatrix.x4 gives the lane row g, columns 2t..2t+1 of each of four 8x8
 * matrices (lanes 8m..8m+7 supply the row addresses of matrix m); with
 * .trans, rows 2t..2t+1 of column g, which is the B fragment of V. */
#ifndef RA_FLASH_ATTENTION_CUH
#define RA_FLASH_ATTENTION_CUH

#ifndef FA_BR
#define FA_BR 64 /* query rows per block: 16 per warp */
#endif
#define FA_BC 64 /* key rows per tile */
#define FA_THREADS (FA_BR * 2)
/* blocks per SM the registers must allow: 512 threads at head dim ≤ 64 */
#define FA_MIN_BLOCKS(HD) ((HD) <= 64 ? 512 / FA_THREADS : 256 / FA_THREADS > 0 ? 256 / FA_THREADS : 1)

typedef struct {
    bf16 *out;
    int64_t out_stride;
    const bf16 *q;
    int64_t q_stride;
    const bf16 *k, *v;
    int64_t kv_stride;
    const int32_t *doc_start;
    const uint8_t *head_keep;
    int B, T, H, Hkv;
    float scale_log2; /* log2(e) / sqrt(hd) */
} fa_params;

#ifndef FA_SIM
__device__ __forceinline__ uint32_t smem_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

/* 16-byte global->shared copy; zero-fills when !valid (src must still be a
 * mapped address: pass the tensor base). */
__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit(void) { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait(void) {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

/* c += a · b, m16n8k16, bf16 inputs, fp32 accumulators. */
__device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi); /* .x (low half) = lo */
    return *reinterpret_cast<uint32_t *>(&h);
}

#endif /* FA_SIM */

/* Queue the copy of key/value tile kt (FA_BC rows) into one stage. */
template <int HD>
__device__ __forceinline__ void fa_load_kv(bf16 *sK, bf16 *sV, const bf16 *kb, const bf16 *vb, int64_t kv_stride,
                                           int kt, int T) {
    constexpr int LD = HD + 8, CH = HD / 8;
    for (int e = threadIdx.x; e < FA_BC * CH; e += FA_THREADS) {
        int r = e / CH, c = e - (e / CH) * CH;
        int key = kt * FA_BC + r;
        bool valid = key < T;
        int64_t off = valid ? (int64_t)key * kv_stride + c * 8 : 0;
        cp_async16(sK + r * LD + c * 8, kb + off, valid);
        cp_async16(sV + r * LD + c * 8, vb + off, valid);
    }
}

template <int HD>
__global__ void __launch_bounds__(FA_THREADS, FA_MIN_BLOCKS(HD)) flash_attention_kernel(const fa_params p) {
    constexpr int LD = HD + 8; /* padded rows: 16-byte aligned, ldmatrix conflict-free */
    constexpr int NT = FA_BC / 8; /* 8-key tiles of S per warp */
    constexpr int DT = HD / 8;    /* 8-dim tiles of O per warp */
#ifndef FA_SIM
    extern __shared__ __align__(16) unsigned char fa_smem[];
    __shared__ int s_kv_lo, s_ds_max;
#else
    unsigned char *fa_smem = fa_sim_dynamic_smem();
    static int s_kv_lo, s_ds_max; /* the simulator runs one block at a time */
#endif
    bf16 *sQ = reinterpret_cast<bf16 *>(fa_smem); /* [FA_BR][LD] */
    bf16 *sK = sQ + FA_BR * LD;                   /* [2][FA_BC][LD] */
    bf16 *sV = sK + 2 * FA_BC * LD;               /* [2][FA_BC][LD] */

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
    const int bh = blockIdx.x, b = bh / p.H, h = bh - b * p.H;
    const int qt = gridDim.y - 1 - blockIdx.y; /* the longest rows first */
    const int T = p.T, q0 = qt * FA_BR, q_end = min(q0 + FA_BR, T);
    const int64_t tok0 = (int64_t)b * T;

    if (p.head_keep && !p.head_keep[b * p.H + h]) { /* ablated head: its output is zero */
        for (int e = tid; e < (q_end - q0) * (HD / 8); e += FA_THREADS) {
            int r = e / (HD / 8), c = e - r * (HD / 8);
            *reinterpret_cast<uint4 *>(p.out + (tok0 + q0 + r) * p.out_stride + (int64_t)h * HD + c * 8) =
                make_uint4(0, 0, 0, 0);
        }
        return;
    }

    const int kvh = h / (p.H / p.Hkv);
    const bf16 *qb = p.q + tok0 * p.q_stride + (int64_t)h * HD;
    const bf16 *kb = p.k + tok0 * p.kv_stride + (int64_t)kvh * HD;
    const bf16 *vb = p.v + tok0 * p.kv_stride + (int64_t)kvh * HD;

    /* The first key any row of this tile may see, and the first key every
     * row may see: key tiles from there on need no document mask. */
    int kv_lo = 0, ds_max = 0;
    if (p.doc_start) {
        if (tid == 0) s_kv_lo = INT_MAX, s_ds_max = 0;
        __syncthreads();
        if (tid < q_end - q0) {
            int t = q0 + tid, s = p.doc_start[tok0 + t];
            if (s < 0 || s > t) s = 0; /* malformed: plain causal, as the CPU twin */
            atomicMin(&s_kv_lo, s);
            atomicMax(&s_ds_max, s);
        }
        __syncthreads();
        kv_lo = s_kv_lo, ds_max = s_ds_max;
    }
    const int kt_begin = kv_lo / FA_BC, kt_end = (q_end - 1) / FA_BC;

    /* Q tile and the first K/V tile: cp.async group 0. */
    for (int e = tid; e < FA_BR * (HD / 8); e += FA_THREADS) {
        int r = e / (HD / 8), c = e - r * (HD / 8);
        bool valid = q0 + r < T;
        cp_async16(sQ + r * LD + c * 8, qb + (valid ? (int64_t)(q0 + r) * p.q_stride + c * 8 : 0), valid);
    }
    fa_load_kv<HD>(sK, sV, kb, vb, p.kv_stride, kt_begin, T);
    cp_async_commit();

    /* This thread's two rows of the warp's 16 (C-fragment rows g and g+8). */
    const int r0 = warp * 16 + g, r1 = r0 + 8;
    const int qi0 = q0 + r0, qi1 = q0 + r1;
    int ds0 = 0, ds1 = 0;
    if (p.doc_start) {
        if (qi0 < T) {
            ds0 = p.doc_start[tok0 + qi0];
            if (ds0 < 0 || ds0 > qi0) ds0 = 0;
        }
        if (qi1 < T) {
            ds1 = p.doc_start[tok0 + qi1];
            if (ds1 < 0 || ds1 > qi1) ds1 = 0;
        }
    }

    float acc[DT][4];
#pragma unroll
    for (int d = 0; d < DT; d++) acc[d][0] = acc[d][1] = acc[d][2] = acc[d][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
    uint32_t qf[HD / 16][4];

    for (int kt = kt_begin; kt <= kt_end; kt++) {
        const int stage = (kt - kt_begin) & 1;
        if (kt < kt_end) { /* prefetch the next tile into the other stage */
            fa_load_kv<HD>(sK + (stage ^ 1) * FA_BC * LD, sV + (stage ^ 1) * FA_BC * LD, kb, vb, p.kv_stride, kt + 1,
                           T);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();

        if (kt == kt_begin) {
#pragma unroll
            for (int ks = 0; ks < HD / 16; ks++) {
                qf[ks][0] = *reinterpret_cast<const uint32_t *>(sQ + r0 * LD + ks * 16 + 2 * t4);
                qf[ks][1] = *reinterpret_cast<const uint32_t *>(sQ + r1 * LD + ks * 16 + 2 * t4);
                qf[ks][2] = *reinterpret_cast<const uint32_t *>(sQ + r0 * LD + ks * 16 + 8 + 2 * t4);
                qf[ks][3] = *reinterpret_cast<const uint32_t *>(sQ + r1 * LD + ks * 16 + 8 + 2 * t4);
            }
        }
        const bf16 *Ks = sK + stage * FA_BC * LD, *Vs = sV + stage * FA_BC * LD;

        /* S = Q · Kᵀ for this warp's 16 rows and the tile's 64 keys. */
        float s[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < HD / 16; ks++) {
#pragma unroll
            for (int nt = 0; nt < NT; nt += 2) {
                /* matrices: keys nt*8.. dims +0 / +8, keys (nt+1)*8.. dims +0 / +8 */
                uint32_t kf[4];
                const int key = nt * 8 + ((lane >> 4) << 3) + (lane & 7);
                const int dim = ks * 16 + (((lane >> 3) & 1) << 3);
                ldmatrix_x4(kf, Ks + key * LD + dim);
                mma_16816(s[nt], qf[ks], kf[0], kf[1]);
                mma_16816(s[nt + 1], qf[ks], kf[2], kf[3]);
            }
        }

        /* Scale into the log2 domain; mask future keys, keys of earlier
         * documents and (through causality) keys past T. */
        const int kbase = kt * FA_BC;
        const bool need_mask = kbase + FA_BC - 1 > q0 || kbase < ds_max;
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
#pragma unroll
            for (int c = 0; c < 4; c++) {
                float x = s[nt][c] * p.scale_log2;
                if (need_mask) {
                    const int key = kbase + nt * 8 + 2 * t4 + (c & 1);
                    const int qi = c < 2 ? qi0 : qi1, ds = c < 2 ? ds0 : ds1;
                    if (key > qi || key < ds) x = -INFINITY;
                }
                s[nt][c] = x;
            }
        }

        /* Online softmax: new row maxima over the 4 lanes sharing a row. */
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            mx0 = fmaxf(mx0, fmaxf(s[nt][0], s[nt][1]));
            mx1 = fmaxf(mx1, fmaxf(s[nt][2], s[nt][3]));
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
        /* a row with every key masked so far keeps max -inf: use 0 as the
         * base so exp2 gives 0 instead of NaN */
        const float mu0 = mn0 == -INFINITY ? 0.0f : mn0, mu1 = mn1 == -INFINITY ? 0.0f : mn1;
        const float al0 = exp2f(m0 - mu0), al1 = exp2f(m1 - mu1);
        m0 = mn0;
        m1 = mn1;
        l0 *= al0;
        l1 *= al1;
#pragma unroll
        for (int d = 0; d < DT; d++) {
            acc[d][0] *= al0;
            acc[d][1] *= al0;
            acc[d][2] *= al1;
            acc[d][3] *= al1;
        }
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            s[nt][0] = exp2f(s[nt][0] - mu0);
            s[nt][1] = exp2f(s[nt][1] - mu0);
            s[nt][2] = exp2f(s[nt][2] - mu1);
            s[nt][3] = exp2f(s[nt][3] - mu1);
            l0 += s[nt][0] + s[nt][1];
            l1 += s[nt][2] + s[nt][3];
        }

        /* O += P · V, 16 keys per step. */
#pragma unroll
        for (int kk = 0; kk < FA_BC / 16; kk++) {
            uint32_t a[4];
            a[0] = pack_bf16x2(s[2 * kk][0], s[2 * kk][1]);
            a[1] = pack_bf16x2(s[2 * kk][2], s[2 * kk][3]);
            a[2] = pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            a[3] = pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int dp = 0; dp < HD / 16; dp++) {
                /* matrices: keys +0 dims +0, keys +8 dims +0, keys +0 dims +8, keys +8 dims +8 */
                uint32_t vf[4];
                const int key = kk * 16 + (((lane >> 3) & 1) << 3) + (lane & 7);
                const int dim = dp * 16 + ((lane >> 4) << 3);
                ldmatrix_x4_trans(vf, Vs + key * LD + dim);
                mma_16816(acc[2 * dp], a, vf[0], vf[1]);
                mma_16816(acc[2 * dp + 1], a, vf[2], vf[3]);
            }
        }
        __syncthreads(); /* this stage is refilled two iterations from now */
    }

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
    if (qi0 < T) {
        bf16 *o = p.out + (tok0 + qi0) * p.out_stride + (int64_t)h * HD + 2 * t4;
#pragma unroll
        for (int d = 0; d < DT; d++)
            *reinterpret_cast<uint32_t *>(o + d * 8) = pack_bf16x2(acc[d][0] * inv0, acc[d][1] * inv0);
    }
    if (qi1 < T) {
        bf16 *o = p.out + (tok0 + qi1) * p.out_stride + (int64_t)h * HD + 2 * t4;
#pragma unroll
        for (int d = 0; d < DT; d++)
            *reinterpret_cast<uint32_t *>(o + d * 8) = pack_bf16x2(acc[d][2] * inv1, acc[d][3] * inv1);
    }
}

#endif
