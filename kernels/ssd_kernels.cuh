/* The chunked SSD kernels (see kernels/ssd_cuda.h for the contract and
 * kernels/ssd_chunked.cu for the launches).
 *
 * Kept in a header so that tests/unit/test_ssd_sim.cpp can compile the very
 * same kernels for the host against a lane-by-lane simulator of the warp
 * primitives (tests/unit/cuda_sim.h); SSD_SIM selects that build.
 *
 * One block of SSD_THREADS = 4 warps works on one chunk of one (b, h).  A
 * chunk has Q ≤ SSD_QMAX = 128 tokens, cut into 16-row blocks; warp w owns
 * row blocks {w, 7 − w}, which balances the triangular work.  Per chunk, with
 * P[l] = Σ_{k≤l} a_k (fp32 prefix sum inside the chunk) and F[l] the last
 * document start at or before l (−1 if none):
 *   L[l,s]  = exp(P[l] − P[s])   for F[l] ≤ s ≤ l, else 0
 *   dec[l]  = exp(P[l])          when F[l] < 0 (no start so far), else 0
 *   w[s]    = L[Q−1, s],  γ = dec[Q−1]
 * P[l] − P[s] = Σ_{k=s+1..l} a_k: a start at s' cuts everything before it
 * (state reset before token s'), so only the mask F[l] ≤ s is needed.
 *
 * Forward:  chunk_outer (mode 0):  E_c = Xᵀ diag(w) B                [P×N] fp32
 *           state_fwd:             S_c = γ_{c−1} S_{c−1} + E_{c−1}   (in place)
 *           chunk_scan_fwd:        Y = ((C Bᵀ) ∘ L) X + diag(dec) C S_cᵀ + D X
 * Backward: the two forward state steps again, then
 *           chunk_outer (mode 1):  F_c = (diag(dec) dY)ᵀ C           [P×N]
 *           state_bwd:             dS_end[c] = dS_in[c+1],
 *                                  dS_in[c] = F_c + γ_c dS_end[c],  dγ_c = ⟨dS_end, S_c⟩
 *           chunk_bwd:             dX, dB, dC, da (below), ΣdY·X for dD.
 * All matrix products run on the tensor cores (mma.sync m16n8k16, bf16
 * operands, fp32 accumulators) from shared memory tiles loaded with ldmatrix;
 * the decay mask is applied to the fp32 accumulators of C Bᵀ in registers,
 * which then become the bf16 A operand of the next product (as in flash
 * attention).  States are fp32 in memory and rounded to bf16 only as an
 * operand of C S_cᵀ, dY S_c, B dS_endᵀ and X dS_end.
 *
 * da: every decay is exp of a difference of prefix sums, so the backward
 * first collects dP[l] = ∂loss/∂P[l] in shared memory:
 *   + Σ_s dseg[l,s]   (dseg = dM ∘ M, M = (C Bᵀ) ∘ L, dM = dY Xᵀ)
 *   − Σ_l dseg[l,s]   at s
 *   + ddec[l]·dec[l]  = C_l · (dec_l dY_l S_c)
 *   − dw_s·w_s at s, + Σ_s dw_s·w_s at Q−1, dw_s w_s = w_s B_s·(X_s dS_end)
 *   + dγ·γ at Q−1
 * and da[k] = Σ_{l=k}^{next start − 1} dP[l], 0 at a start (its a is unused). */
#ifndef RA_SSD_KERNELS_CUH
#define RA_SSD_KERNELS_CUH

#define SSD_QMAX 128
#define SSD_THREADS 128
#define SSD_PAD 8 /* bf16 elements of padding per shared-memory row: 16 bytes, conflict-free ldmatrix */
#define SSD_FULL 0xffffffffu

typedef struct ssd_kparams {
    int B, T, H, P, G, N;
    int Q;  /* chunk length: a multiple of 16, ≤ SSD_QMAX */
    int nc; /* number of chunks, ceil(T / Q) */
    int mode; /* chunk_outer: 0 = end states from (x, w, B), 1 = F from (dy, dec, C) */
    const bf16 *x, *Bm, *Cm, *dy;
    const float *a, *D;
    const uint8_t *starts;
    const float *init_state;
    bf16 *y, *dx, *dB, *dC;
    float *dBf, *dCf; /* per-head fp32 dB, dC [B,T,H,N] when H != G, else NULL */
    float *da, *final_state, *d_init;
    float *states;   /* [B*H, nc, P*N]: E_c, then the entry state S_c */
    float *dstates;  /* [B*H, nc, P*N]: F_c, then dS_end[c] */
    float *gam;      /* [B*H, nc] γ_c */
    float *dgam;     /* [B*H, nc, dgam_blocks] partial sums of dγ_c */
    int dgam_blocks; /* blocks of state_bwd per (b, h) */
    float *dD_part;  /* [B*H, nc] Σ dY·X per chunk */
} ssd_kparams;

/* ---- primitives: the GPU versions (the simulator defines its own) ----------- */
#ifndef SSD_SIM
#define SSD_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]

__device__ __forceinline__ uint32_t ssd_smem_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void ssd_ldsm(uint32_t r[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(ssd_smem_addr(p)));
}
__device__ __forceinline__ void ssd_ldsm_t(uint32_t r[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(ssd_smem_addr(p)));
}
/* c += a · b, m16n8k16, bf16 operands, fp32 accumulators. */
__device__ __forceinline__ void ssd_mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t ssd_pack2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); /* .x (low half) = lo */
    return *reinterpret_cast<uint32_t *>(&v);
}
__device__ __forceinline__ float ssd_bf2f(bf16 v) { return __bfloat162float(v); }
__device__ __forceinline__ bf16 ssd_f2bf(float v) { return __float2bfloat16(v); }
__device__ __forceinline__ float ssd_exp(float v) { return __expf(v); }
__device__ __forceinline__ uint4 ssd_ldg16(const bf16 *p) { return __ldg(reinterpret_cast<const uint4 *>(p)); }
__device__ __forceinline__ float4 ssd_ldg_f4(const float *p) { return __ldg(reinterpret_cast<const float4 *>(p)); }
__device__ __forceinline__ uint2 ssd_ldg8(const bf16 *p) { return __ldg(reinterpret_cast<const uint2 *>(p)); }
__device__ __forceinline__ void ssd_st16(bf16 *p, uint4 v) { *reinterpret_cast<uint4 *>(p) = v; }
__device__ __forceinline__ void ssd_st8(bf16 *p, uint2 v) { *reinterpret_cast<uint2 *>(p) = v; }
__device__ __forceinline__ float ssd_as_float(uint32_t u) { return __uint_as_float(u); }
#endif

/* ---- fragments --------------------------------------------------------------
 * mma.m16n8k16 layouts (PTX ISA), lane = 4·gq + t4:
 *   A 16×16: a0 = A[gq][2t4..+1], a1 = A[gq+8][2t4..], a2 = A[gq][2t4+8..], a3 = A[gq+8][2t4+8..]
 *   B 16×8:  b0 = B[2t4..+1][gq], b1 = B[2t4+8..+9][gq]
 *   C 16×8:  c0,c1 = C[gq][2t4..+1], c2,c3 = C[gq+8][2t4..+1]
 * ldmatrix .x4: lanes 8m..8m+7 address the rows of 8×8 matrix m; lane gets
 * row gq, columns 2t4..+1 of each (with .trans: rows 2t4..+1 of column gq). */

/* A = rows m0.., columns k0.. of a row-major tile s[m][k]. */
__device__ __forceinline__ void ssd_frag_a(uint32_t a[4], const bf16 *s, int ld, int m0, int k0) {
    int l = threadIdx.x & 31;
    ssd_ldsm(a, s + (m0 + (l & 7) + ((l >> 3) & 1) * 8) * ld + k0 + (l >> 4) * 8);
}
/* A[m][k] = s[k][m] (the tile is stored transposed). */
__device__ __forceinline__ void ssd_frag_a_t(uint32_t a[4], const bf16 *s, int ld, int m0, int k0) {
    int l = threadIdx.x & 31;
    ssd_ldsm_t(a, s + (k0 + (l & 7) + (l >> 4) * 8) * ld + m0 + ((l >> 3) & 1) * 8);
}
/* B operands of two 8-column tiles n0.. and n0+8.. (b[0..1] and b[2..3]) over
 * k0..k0+15, from a tile stored s[n][k]. */
__device__ __forceinline__ void ssd_frag_b(uint32_t b[4], const bf16 *s, int ld, int n0, int k0) {
    int l = threadIdx.x & 31;
    ssd_ldsm(b, s + (n0 + (l & 7) + (l >> 4) * 8) * ld + k0 + ((l >> 3) & 1) * 8);
}
/* The same from a tile stored s[k][n]. */
__device__ __forceinline__ void ssd_frag_b_t(uint32_t b[4], const bf16 *s, int ld, int k0, int n0) {
    int l = threadIdx.x & 31;
    ssd_ldsm_t(b, s + (k0 + (l & 7) + ((l >> 3) & 1) * 8) * ld + n0 + (l >> 4) * 8);
}

/* The accumulators of two adjacent 8-column tiles as the A operand of a
 * 16-deep product (rounded to bf16). */
__device__ __forceinline__ void ssd_acc_to_a(uint32_t a[4], const float t0[4], const float t1[4]) {
    a[0] = ssd_pack2(t0[0], t0[1]);
    a[1] = ssd_pack2(t0[2], t0[3]);
    a[2] = ssd_pack2(t1[0], t1[1]);
    a[3] = ssd_pack2(t1[2], t1[3]);
}

/* Sum over the 4 lanes of a quad (the lanes that hold one accumulator row). */
__device__ __forceinline__ float ssd_quad_sum(float v) {
    v += __shfl_xor_sync(SSD_FULL, v, 1);
    v += __shfl_xor_sync(SSD_FULL, v, 2);
    return v;
}

__device__ __forceinline__ float ssd_block_sum(float v, float *scratch /* 32 floats */) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(SSD_FULL, v, o);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : 0.0f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(SSD_FULL, v, o);
    return v;
}

/* Row block i (16 rows) of a chunk belongs to warp ssd_owner(i):
 * 0 1 2 3 3 2 1 0, so every warp gets one short and one long row block. */
__device__ __forceinline__ int ssd_owner(int i) { return ((i >> 2) & 1) ? 3 - (i & 3) : (i & 3); }

/* ---- the chunk's decays -------------------------------------------------------
 * Warp 0 writes sP[0..127] (prefix sums of a) and sF[0..127] (last document
 * start at or before the row, −1 if none); rows ≥ Qv count as a = 0, no start. */
__device__ __forceinline__ void ssd_chunk_cumsum(const ssd_kparams &p, int b, int h, int t0, int Qv, float *sP,
                                                 int *sF) {
    const int lane = threadIdx.x & 31;
    float v[4];
    int f[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int r = 4 * lane + i;
        bool ok = r < Qv;
        int64_t bt = (int64_t)b * p.T + t0 + r;
        v[i] = ok ? p.a[bt * p.H + h] : 0.0f;
        f[i] = (ok && p.starts && p.starts[bt]) ? r : -1;
    }
#pragma unroll
    for (int i = 1; i < 4; i++) v[i] += v[i - 1], f[i] = max(f[i], f[i - 1]);
    float tot = v[3];
    int fm = f[3];
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        float tv = __shfl_up_sync(SSD_FULL, tot, o);
        int tf = __shfl_up_sync(SSD_FULL, fm, o);
        if (lane >= o) tot += tv, fm = max(fm, tf);
    }
    float ex = tot - v[3];
    int fex = __shfl_up_sync(SSD_FULL, fm, 1);
    if (lane == 0) fex = -1;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        sP[4 * lane + i] = v[i] + ex;
        sF[4 * lane + i] = max(f[i], fex);
    }
}

__device__ __forceinline__ float ssd_dec(const float *sP, const int *sF, int l) {
    return sF[l] < 0 ? ssd_exp(sP[l]) : 0.0f;
}
/* w[s] = L[last, s] */
__device__ __forceinline__ float ssd_w(const float *sP, const int *sF, int last, int s) {
    return s >= sF[last] && s <= last ? ssd_exp(sP[last] - sP[s]) : 0.0f;
}

/* ---- tiles --------------------------------------------------------------------
 * Global → shared copies keep SSD_BATCH loads per thread in flight (all
 * loads of a batch are issued before any store), since one dependent load
 * per iteration would leave the block waiting on memory latency. */
#define SSD_BATCH 8

/* rows × COLS bf16 into s (row stride COLS + SSD_PAD) from global rows ld_g
 * apart; rows ≥ rows_valid and columns ≥ cols_valid are zero.  With scale,
 * row r is multiplied by scale[r] (in fp32, then rounded). */
template <int COLS>
__device__ __forceinline__ void ssd_load_rows(bf16 *s, const bf16 *g, int64_t ld_g, int rows_valid, int rows,
                                              int cols_valid, const float *scale = nullptr) {
    constexpr int LD = COLS + SSD_PAD, CV = COLS / 8;
    const bool vec = (cols_valid & 7) == 0 && (ld_g & 7) == 0 && (((uintptr_t)g) & 15) == 0;
    if (vec) {
        const int total = rows * CV;
        for (int e0 = threadIdx.x; e0 < total; e0 += SSD_BATCH * blockDim.x) {
            uint4 v[SSD_BATCH];
#pragma unroll
            for (int k = 0; k < SSD_BATCH; k++) {
                const int e = e0 + k * blockDim.x, r = e / CV, cv = e - r * CV;
                v[k] = make_uint4(0, 0, 0, 0);
                if (e < total && r < rows_valid && cv * 8 < cols_valid) v[k] = ssd_ldg16(g + r * ld_g + cv * 8);
            }
#pragma unroll
            for (int k = 0; k < SSD_BATCH; k++) {
                const int e = e0 + k * blockDim.x, r = e / CV, cv = e - r * CV;
                if (e >= total) break;
                if (scale) {
                    bf16 *h8 = reinterpret_cast<bf16 *>(&v[k]);
                    const float f = scale[r];
#pragma unroll
                    for (int q = 0; q < 8; q++) h8[q] = ssd_f2bf(ssd_bf2f(h8[q]) * f);
                }
                *reinterpret_cast<uint4 *>(s + r * LD + cv * 8) = v[k];
            }
        }
    } else {
        const int total = rows * COLS;
        for (int e0 = threadIdx.x; e0 < total; e0 += SSD_BATCH * blockDim.x) {
            float v[SSD_BATCH];
#pragma unroll
            for (int k = 0; k < SSD_BATCH; k++) {
                const int e = e0 + k * blockDim.x, r = e / COLS, col = e - r * COLS;
                v[k] = e < total && r < rows_valid && col < cols_valid ? ssd_bf2f(g[r * ld_g + col]) : 0.0f;
            }
#pragma unroll
            for (int k = 0; k < SSD_BATCH; k++) {
                const int e = e0 + k * blockDim.x, r = e / COLS, col = e - r * COLS;
                if (e >= total) break;
                s[r * LD + col] = ssd_f2bf(scale ? v[k] * scale[r] : v[k]);
            }
        }
    }
}

/* A state [P][N] (fp32, global) as bf16 into s[PP][NP + SSD_PAD], zero-padded. */
template <int PP, int NP>
__device__ __forceinline__ void ssd_load_state(bf16 *s, const float *g, int P, int N) {
    constexpr int LD = NP + SSD_PAD;
    if ((N & 3) == 0 && (((uintptr_t)g) & 15) == 0) {
        constexpr int CV = NP / 4, total = PP * CV;
        for (int e0 = threadIdx.x; e0 < total; e0 += SSD_BATCH * blockDim.x) {
            float4 v[SSD_BATCH];
#pragma unroll
            for (int k = 0; k < SSD_BATCH; k++) {
                const int e = e0 + k * blockDim.x, r = e / CV, c4 = e - r * CV;
                v[k] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                if (e < total && r < P && c4 * 4 < N) v[k] = ssd_ldg_f4(g + (int64_t)r * N + c4 * 4);
            }
#pragma unroll
            for (int k = 0; k < SSD_BATCH; k++) {
                const int e = e0 + k * blockDim.x, r = e / CV, c4 = e - r * CV;
                if (e >= total) break;
                *reinterpret_cast<uint2 *>(s + r * LD + c4 * 4) =
                    make_uint2(ssd_pack2(v[k].x, v[k].y), ssd_pack2(v[k].z, v[k].w));
            }
        }
    } else {
        constexpr int total = PP * NP;
        for (int e0 = threadIdx.x; e0 < total; e0 += SSD_BATCH * blockDim.x) {
            float v[SSD_BATCH];
#pragma unroll
            for (int k = 0; k < SSD_BATCH; k++) {
                const int e = e0 + k * blockDim.x, r = e / NP, col = e - r * NP;
                v[k] = e < total && r < P && col < N ? g[(int64_t)r * N + col] : 0.0f;
            }
#pragma unroll
            for (int k = 0; k < SSD_BATCH; k++) {
                const int e = e0 + k * blockDim.x, r = e / NP, col = e - r * NP;
                if (e >= total) break;
                s[r * LD + col] = ssd_f2bf(v[k]);
            }
        }
    }
}

/* Two adjacent output values of row r at column col (< cols) of a bf16 row. */
__device__ __forceinline__ void ssd_store2(bf16 *row, int col, int cols, float v0, float v1) {
    if (col + 1 < cols && (cols & 1) == 0) {
        *reinterpret_cast<uint32_t *>(row + col) = ssd_pack2(v0, v1);
    } else {
        if (col < cols) row[col] = ssd_f2bf(v0);
        if (col + 1 < cols) row[col + 1] = ssd_f2bf(v1);
    }
}
__device__ __forceinline__ void ssd_store2f(float *row, int col, int cols, float v0, float v1) {
    if (col < cols) row[col] = v0;
    if (col + 1 < cols) row[col + 1] = v1;
}

/* Shared-memory bytes of each kernel. */
template <int PP, int NP>
struct ssd_smem {
    static constexpr int LX = PP + SSD_PAD, LB = NP + SSD_PAD;
    static constexpr size_t outer = (size_t)SSD_QMAX * (LX + LB) * 2 + SSD_QMAX * 12;
    static constexpr size_t scan = (size_t)SSD_QMAX * (LX + 2 * LB) * 2 + (size_t)PP * LB * 2 + SSD_QMAX * 8;
    static constexpr size_t bwd =
        (size_t)SSD_QMAX * (2 * LX + 2 * LB) * 2 + (size_t)2 * PP * LB * 2 + SSD_QMAX * 12 + (32 + 16) * 4;
};

/* ---- chunk_outer: out[p][n] = Σ_s U[s][p] coef[s] V[s][n] ----------------------
 * mode 0: U = x, coef = w, V = B  → states (E_c), and gam = γ_c
 * mode 1: U = dy, coef = dec, V = C → dstates (F_c) */
template <int PP, int NP>
static __global__ void __launch_bounds__(SSD_THREADS) ssd_chunk_outer_kernel(const ssd_kparams p) {
    constexpr int LU = PP + SSD_PAD, LV = NP + SSD_PAD;
    SSD_DYNAMIC_SMEM(smem);
    bf16 *sU = reinterpret_cast<bf16 *>(smem);
    bf16 *sV = sU + SSD_QMAX * LU;
    float *sP = reinterpret_cast<float *>(sV + SSD_QMAX * LV);
    int *sF = reinterpret_cast<int *>(sP + SSD_QMAX);
    float *sCoef = reinterpret_cast<float *>(sF + SSD_QMAX);

    const int c = blockIdx.x, bh = blockIdx.y, b = bh / p.H, h = bh - b * p.H, g = h / (p.H / p.G);
    const int t0 = c * p.Q, Qv = min(p.Q, p.T - t0), nb = (Qv + 15) >> 4;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gq = lane >> 2, t4 = lane & 3;
    const int64_t tok0 = (int64_t)b * p.T + t0;

    if (warp == 0) ssd_chunk_cumsum(p, b, h, t0, Qv, sP, sF);
    const bf16 *U = (p.mode ? p.dy : p.x) + tok0 * p.H * p.P + (int64_t)h * p.P;
    const bf16 *V = (p.mode ? p.Cm : p.Bm) + tok0 * p.G * p.N + (int64_t)g * p.N;
    ssd_load_rows<PP>(sU, U, (int64_t)p.H * p.P, Qv, nb * 16, p.P);
    __syncthreads();
    for (int r = tid; r < SSD_QMAX; r += blockDim.x)
        sCoef[r] = r < Qv ? (p.mode ? ssd_dec(sP, sF, r) : ssd_w(sP, sF, Qv - 1, r)) : 0.0f;
    if (p.mode == 0 && tid == 0) p.gam[(int64_t)bh * p.nc + c] = ssd_dec(sP, sF, Qv - 1);
    __syncthreads();
    ssd_load_rows<NP>(sV, V, (int64_t)p.G * p.N, Qv, nb * 16, p.N, sCoef);
    __syncthreads();

    float *out = (p.mode ? p.dstates : p.states) + ((int64_t)bh * p.nc + c) * p.P * p.N;
    for (int mt = warp; mt < PP / 16 && mt * 16 < p.P; mt += 4) {
        float acc[NP / 8][4];
#pragma unroll
        for (int j = 0; j < NP / 8; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
        for (int kb = 0; kb < nb; kb++) {
            uint32_t fa[4];
            ssd_frag_a_t(fa, sU, LU, mt * 16, kb * 16);
#pragma unroll
            for (int nj = 0; nj < NP / 16; nj++) {
                uint32_t fb[4];
                ssd_frag_b_t(fb, sV, LV, kb * 16, nj * 16);
                ssd_mma(acc[2 * nj], fa, fb[0], fb[1]);
                ssd_mma(acc[2 * nj + 1], fa, fb[2], fb[3]);
            }
        }
        const int rA = mt * 16 + gq, rB = rA + 8;
#pragma unroll
        for (int j = 0; j < NP / 8; j++) {
            int col = j * 8 + 2 * t4;
            if (rA < p.P) ssd_store2f(out + (int64_t)rA * p.N, col, p.N, acc[j][0], acc[j][1]);
            if (rB < p.P) ssd_store2f(out + (int64_t)rB * p.N, col, p.N, acc[j][2], acc[j][3]);
        }
    }
}

/* ---- state passing -------------------------------------------------------------
 * One thread per state element of one (b, h), sequential over chunks; the
 * loads of SSD_BATCH chunks are issued before their sequential updates. */
static __global__ void __launch_bounds__(SSD_THREADS) ssd_state_fwd_kernel(const ssd_kparams p) {
    const int64_t PN = (int64_t)p.P * p.N;
    const int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int bh = blockIdx.y;
    if (e >= PN) return;
    float S = p.init_state ? p.init_state[bh * PN + e] : 0.0f;
    float *st = p.states + (int64_t)bh * p.nc * PN + e;
    const float *gam = p.gam + (int64_t)bh * p.nc;
    for (int c0 = 0; c0 < p.nc; c0 += SSD_BATCH) {
        float E[SSD_BATCH], g[SSD_BATCH];
#pragma unroll
        for (int k = 0; k < SSD_BATCH; k++)
            if (c0 + k < p.nc) E[k] = st[(c0 + k) * PN], g[k] = gam[c0 + k];
#pragma unroll
        for (int k = 0; k < SSD_BATCH; k++)
            if (c0 + k < p.nc) {
                st[(c0 + k) * PN] = S;
                S = g[k] * S + E[k];
            }
    }
    if (p.final_state) p.final_state[bh * PN + e] = S;
}

static __global__ void __launch_bounds__(SSD_THREADS) ssd_state_bwd_kernel(const ssd_kparams p) {
#ifndef SSD_SIM
    __shared__ float red[SSD_THREADS / 32][SSD_BATCH];
#else
    float(*red)[SSD_BATCH] = reinterpret_cast<float(*)[SSD_BATCH]>(sim_static_smem<float>(0));
#endif
    const int64_t PN = (int64_t)p.P * p.N;
    const int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int bh = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const bool live = e < PN;
    float *dst = p.dstates + (int64_t)bh * p.nc * PN + (live ? e : 0);
    const float *st = p.states + (int64_t)bh * p.nc * PN + (live ? e : 0);
    const float *gam = p.gam + (int64_t)bh * p.nc;
    float dS = 0.0f;
    for (int c0 = p.nc - 1; c0 >= 0; c0 -= SSD_BATCH) { /* chunks c0, c0 − 1, … */
        float f[SSD_BATCH], s[SSD_BATCH], g[SSD_BATCH], part[SSD_BATCH];
#pragma unroll
        for (int k = 0; k < SSD_BATCH; k++) {
            const int c = c0 - k;
            f[k] = s[k] = g[k] = 0.0f;
            if (c >= 0) {
                g[k] = gam[c];
                if (live) f[k] = dst[c * PN], s[k] = st[c * PN];
            }
        }
#pragma unroll
        for (int k = 0; k < SSD_BATCH; k++) {
            const int c = c0 - k;
            part[k] = 0.0f;
            if (c < 0) continue;
            if (live) dst[c * PN] = dS; /* dS_end[c] */
            part[k] = dS * s[k];
            dS = f[k] + g[k] * dS;
        }
        /* Σ over the block of dS_end·S per chunk: 8 sums with 2 barriers */
#pragma unroll
        for (int k = 0; k < SSD_BATCH; k++)
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) part[k] += __shfl_xor_sync(SSD_FULL, part[k], o);
        __syncthreads(); /* red of the previous batch is consumed */
        if (lane == 0)
#pragma unroll
            for (int k = 0; k < SSD_BATCH; k++) red[warp][k] = part[k];
        __syncthreads();
        if (threadIdx.x < SSD_BATCH && c0 - (int)threadIdx.x >= 0) {
            float v = 0.0f;
            for (int w = 0; w < (int)(blockDim.x >> 5); w++) v += red[w][threadIdx.x];
            p.dgam[((int64_t)bh * p.nc + c0 - threadIdx.x) * p.dgam_blocks + blockIdx.x] = v;
        }
    }
    if (live && p.d_init) p.d_init[bh * PN + e] = dS;
}

/* ---- chunk_scan_fwd: the output of a chunk ---------------------------------------- */
template <int PP, int NP>
static __global__ void __launch_bounds__(SSD_THREADS) ssd_chunk_scan_fwd_kernel(const ssd_kparams p) {
    constexpr int LX = PP + SSD_PAD, LB = NP + SSD_PAD;
    SSD_DYNAMIC_SMEM(smem);
    bf16 *sX = reinterpret_cast<bf16 *>(smem);
    bf16 *sB = sX + SSD_QMAX * LX;
    bf16 *sC = sB + SSD_QMAX * LB;
    bf16 *sS = sC + SSD_QMAX * LB; /* [PP][LB] entry state, p-major */
    float *sP = reinterpret_cast<float *>(sS + PP * LB);
    int *sF = reinterpret_cast<int *>(sP + SSD_QMAX);

    const int c = blockIdx.x, bh = blockIdx.y, b = bh / p.H, h = bh - b * p.H, g = h / (p.H / p.G);
    const int t0 = c * p.Q, Qv = min(p.Q, p.T - t0), nb = (Qv + 15) >> 4;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gq = lane >> 2, t4 = lane & 3;
    const int64_t tok0 = (int64_t)b * p.T + t0, ldx = (int64_t)p.H * p.P, ldbc = (int64_t)p.G * p.N;
    const bool has_state = c > 0 || p.init_state;

    if (warp == 0) ssd_chunk_cumsum(p, b, h, t0, Qv, sP, sF);
    ssd_load_rows<PP>(sX, p.x + tok0 * ldx + (int64_t)h * p.P, ldx, Qv, nb * 16, p.P);
    ssd_load_rows<NP>(sB, p.Bm + tok0 * ldbc + (int64_t)g * p.N, ldbc, Qv, nb * 16, p.N);
    ssd_load_rows<NP>(sC, p.Cm + tok0 * ldbc + (int64_t)g * p.N, ldbc, Qv, nb * 16, p.N);
    if (has_state) ssd_load_state<PP, NP>(sS, p.states + ((int64_t)bh * p.nc + c) * p.P * p.N, p.P, p.N);
    __syncthreads();

    const float Dh = p.D[h];
    for (int i = 0; i < nb; i++) {
        if (ssd_owner(i) != warp) continue;
        const int l0 = i * 16, rA = l0 + gq, rB = rA + 8;
        float acc[PP / 8][4];
#pragma unroll
        for (int j = 0; j < PP / 8; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
        uint32_t cA[NP / 16][4];
#pragma unroll
        for (int kk = 0; kk < NP / 16; kk++) ssd_frag_a(cA[kk], sC, LB, l0, kk * 16);

        if (has_state) { /* off-diagonal: diag(dec) C S_cᵀ */
#pragma unroll
            for (int kk = 0; kk < NP / 16; kk++)
#pragma unroll
                for (int pj = 0; pj < PP / 16; pj++) {
                    uint32_t fb[4];
                    ssd_frag_b(fb, sS, LB, pj * 16, kk * 16);
                    ssd_mma(acc[2 * pj], cA[kk], fb[0], fb[1]);
                    ssd_mma(acc[2 * pj + 1], cA[kk], fb[2], fb[3]);
                }
            const float dA = ssd_dec(sP, sF, rA), dB = ssd_dec(sP, sF, rB);
#pragma unroll
            for (int j = 0; j < PP / 8; j++) acc[j][0] *= dA, acc[j][1] *= dA, acc[j][2] *= dB, acc[j][3] *= dB;
        }

        const float PA = sP[rA], PB = sP[rB];
        const int FA = sF[rA], FB = sF[rB];
        for (int sb = 0; sb <= i; sb++) { /* diagonal block: ((C Bᵀ) ∘ L) X */
            const int s0 = sb * 16;
            float st[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
#pragma unroll
            for (int kk = 0; kk < NP / 16; kk++) {
                uint32_t fb[4];
                ssd_frag_b(fb, sB, LB, s0, kk * 16);
                ssd_mma(st[0], cA[kk], fb[0], fb[1]);
                ssd_mma(st[1], cA[kk], fb[2], fb[3]);
            }
#pragma unroll
            for (int j = 0; j < 2; j++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int s = s0 + 8 * j + 2 * t4 + e;
                    const float Ps = sP[s];
                    st[j][e] = s <= rA && s >= FA ? st[j][e] * ssd_exp(PA - Ps) : 0.0f;
                    st[j][2 + e] = s <= rB && s >= FB ? st[j][2 + e] * ssd_exp(PB - Ps) : 0.0f;
                }
            uint32_t pa[4];
            ssd_acc_to_a(pa, st[0], st[1]);
#pragma unroll
            for (int pj = 0; pj < PP / 16; pj++) {
                uint32_t fb[4];
                ssd_frag_b_t(fb, sX, LX, s0, pj * 16);
                ssd_mma(acc[2 * pj], pa, fb[0], fb[1]);
                ssd_mma(acc[2 * pj + 1], pa, fb[2], fb[3]);
            }
        }

        /* + D x, store */
#pragma unroll
        for (int j = 0; j < PP / 8; j++) {
            const int col = j * 8 + 2 * t4;
            if (col >= p.P) continue;
#pragma unroll
            for (int half = 0; half < 2; half++) {
                const int r = half ? rB : rA;
                if (r >= Qv) continue;
                float v0 = acc[j][2 * half] + Dh * ssd_bf2f(sX[r * LX + col]);
                float v1 = acc[j][2 * half + 1] + Dh * ssd_bf2f(sX[r * LX + col + 1]);
                ssd_store2(p.y + (tok0 + r) * ldx + (int64_t)h * p.P, col, p.P, v0, v1);
            }
        }
    }
}

/* ---- chunk_bwd ----------------------------------------------------------------------
 * Two passes over the row blocks a warp owns, both streaming 16-wide blocks
 * of the other index so that the Q×Q matrices never leave registers:
 *   columns (rows s): Gᵀ = B Cᵀ, dMᵀ = X dYᵀ → dX += (Gᵀ∘Lᵀ) dY, dB += (dMᵀ∘Lᵀ) C,
 *                     plus the end-state terms w_s (B_s dS_endᵀ), w_s (X_s dS_end)
 *   rows (rows l):    G = C Bᵀ, dM = dY Xᵀ → dC += (dM∘L) B,
 *                     plus the entry-state term dec_l (dY_l S_c)
 * G and dM are computed twice (once per pass) instead of staged through
 * shared memory. */
template <int PP, int NP>
__device__ __forceinline__ void ssd_store_dbc(const ssd_kparams &p, bf16 *out16, float *out32, int64_t tok0, int g,
                                              int h, int Qv, int rA, int rB, int t4, const float (*acc)[4]) {
    /* out16 = dB or dC (bf16, [B,T,G,N]) when heads do not share groups, else
     * out32 = per-head fp32 [B,T,H,N] reduced later */
#pragma unroll
    for (int j = 0; j < NP / 8; j++) {
        const int col = j * 8 + 2 * t4;
        if (col >= p.N) continue;
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int r = half ? rB : rA;
            if (r >= Qv) continue;
            if (out32)
                ssd_store2f(out32 + ((tok0 + r) * p.H + h) * p.N, col, p.N, acc[j][2 * half], acc[j][2 * half + 1]);
            else
                ssd_store2(out16 + ((tok0 + r) * p.G + g) * p.N, col, p.N, acc[j][2 * half], acc[j][2 * half + 1]);
        }
    }
}

template <int PP, int NP>
static __global__ void __launch_bounds__(SSD_THREADS) ssd_chunk_bwd_kernel(const ssd_kparams p) {
    constexpr int LX = PP + SSD_PAD, LB = NP + SSD_PAD;
    SSD_DYNAMIC_SMEM(smem);
    bf16 *sX = reinterpret_cast<bf16 *>(smem);
    bf16 *sdY = sX + SSD_QMAX * LX;
    bf16 *sB = sdY + SSD_QMAX * LX;
    bf16 *sC = sB + SSD_QMAX * LB;
    bf16 *sS = sC + SSD_QMAX * LB;  /* [PP][LB] entry state S_c */
    bf16 *sdS = sS + PP * LB;       /* [PP][LB] dS_end[c] */
    float *sP = reinterpret_cast<float *>(sdS + PP * LB);
    int *sF = reinterpret_cast<int *>(sP + SSD_QMAX);
    float *sDP = reinterpret_cast<float *>(sF + SSD_QMAX); /* ∂loss/∂P[l] */
    float *scratch = sDP + SSD_QMAX;                       /* 32 */
    float *sLast = scratch + 32; /* 16: the parts of dP[last] from other rows (see below) */

    const int c = blockIdx.x, bh = blockIdx.y, b = bh / p.H, h = bh - b * p.H, g = h / (p.H / p.G);
    const int t0 = c * p.Q, Qv = min(p.Q, p.T - t0), nb = (Qv + 15) >> 4, last = Qv - 1;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gq = lane >> 2, t4 = lane & 3;
    const int64_t tok0 = (int64_t)b * p.T + t0, ldx = (int64_t)p.H * p.P, ldbc = (int64_t)p.G * p.N;
    const bool has_state = c > 0 || p.init_state, has_next = c + 1 < p.nc;
    const int64_t PN = (int64_t)p.P * p.N;

    if (warp == 0) ssd_chunk_cumsum(p, b, h, t0, Qv, sP, sF);
    ssd_load_rows<PP>(sX, p.x + tok0 * ldx + (int64_t)h * p.P, ldx, Qv, nb * 16, p.P);
    ssd_load_rows<PP>(sdY, p.dy + tok0 * ldx + (int64_t)h * p.P, ldx, Qv, nb * 16, p.P);
    ssd_load_rows<NP>(sB, p.Bm + tok0 * ldbc + (int64_t)g * p.N, ldbc, Qv, nb * 16, p.N);
    ssd_load_rows<NP>(sC, p.Cm + tok0 * ldbc + (int64_t)g * p.N, ldbc, Qv, nb * 16, p.N);
    if (has_state) ssd_load_state<PP, NP>(sS, p.states + ((int64_t)bh * p.nc + c) * PN, p.P, p.N);
    if (has_next) ssd_load_state<PP, NP>(sdS, p.dstates + ((int64_t)bh * p.nc + c) * PN, p.P, p.N);
    for (int r = tid; r < SSD_QMAX; r += blockDim.x) sDP[r] = 0.0f;
    if (tid < 16) sLast[tid] = 0.0f;
    __syncthreads();

    /* Determinism: no atomics.  Row r of sDP is written only by the one lane
     * that owns it in both passes (t4 = 0 of the row's quad in warp
     * ssd_owner(r / 16)), in program order.  dP[last] also collects terms from
     * every row block (the end-state weights) and the dγ term: those go to
     * sLast[i] (row block i, a fixed warp-wide tree sum) and sLast[8], and
     * thread 0 adds them to sDP[last] in index order before the scan. */

    if (has_next && warp == 1) { /* dγ·γ at the last row */
        float v = 0.0f;
        for (int k = lane; k < p.dgam_blocks; k += 32) v += p.dgam[((int64_t)bh * p.nc + c) * p.dgam_blocks + k];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(SSD_FULL, v, o);
        if (lane == 0) sLast[8] = v * ssd_dec(sP, sF, last);
    }

    const float Dh = p.D[h];
    bf16 *dB16 = p.dBf ? nullptr : p.dB, *dC16 = p.dCf ? nullptr : p.dC;

    /* -- pass 1: row blocks of s → dX, dB -- */
    for (int i = 0; i < nb; i++) {
        if (ssd_owner(i) != warp) continue;
        const int s0 = i * 16, rA = s0 + gq, rB = rA + 8;
        float dxa[PP / 8][4], dba[NP / 8][4];
#pragma unroll
        for (int j = 0; j < PP / 8; j++) dxa[j][0] = dxa[j][1] = dxa[j][2] = dxa[j][3] = 0.0f;
#pragma unroll
        for (int j = 0; j < NP / 8; j++) dba[j][0] = dba[j][1] = dba[j][2] = dba[j][3] = 0.0f;
        uint32_t bA[NP / 16][4], xA[PP / 16][4];
#pragma unroll
        for (int kk = 0; kk < NP / 16; kk++) ssd_frag_a(bA[kk], sB, LB, s0, kk * 16);
#pragma unroll
        for (int kk = 0; kk < PP / 16; kk++) ssd_frag_a(xA[kk], sX, LX, s0, kk * 16);
        float dpA = 0.0f, dpB = 0.0f, dp_last = 0.0f;

        if (has_next) { /* end-state terms */
#pragma unroll
            for (int kk = 0; kk < NP / 16; kk++)
#pragma unroll
                for (int pj = 0; pj < PP / 16; pj++) { /* B_s dS_endᵀ */
                    uint32_t fb[4];
                    ssd_frag_b(fb, sdS, LB, pj * 16, kk * 16);
                    ssd_mma(dxa[2 * pj], bA[kk], fb[0], fb[1]);
                    ssd_mma(dxa[2 * pj + 1], bA[kk], fb[2], fb[3]);
                }
#pragma unroll
            for (int kk = 0; kk < PP / 16; kk++)
#pragma unroll
                for (int nj = 0; nj < NP / 16; nj++) { /* X_s dS_end */
                    uint32_t fb[4];
                    ssd_frag_b_t(fb, sdS, LB, kk * 16, nj * 16);
                    ssd_mma(dba[2 * nj], xA[kk], fb[0], fb[1]);
                    ssd_mma(dba[2 * nj + 1], xA[kk], fb[2], fb[3]);
                }
            float qa = 0.0f, qb = 0.0f; /* B_s · (X_s dS_end) */
#pragma unroll
            for (int j = 0; j < NP / 8; j++) {
                const int col = j * 8 + 2 * t4;
                qa += ssd_bf2f(sB[rA * LB + col]) * dba[j][0] + ssd_bf2f(sB[rA * LB + col + 1]) * dba[j][1];
                qb += ssd_bf2f(sB[rB * LB + col]) * dba[j][2] + ssd_bf2f(sB[rB * LB + col + 1]) * dba[j][3];
            }
            const float wa = ssd_w(sP, sF, last, rA), wb = ssd_w(sP, sF, last, rB);
            qa *= wa, qb *= wb; /* this lane's part of dw_s · w_s; quad-summed below */
            dpA -= qa, dpB -= qb, dp_last += qa + qb;
#pragma unroll
            for (int j = 0; j < PP / 8; j++) dxa[j][0] *= wa, dxa[j][1] *= wa, dxa[j][2] *= wb, dxa[j][3] *= wb;
#pragma unroll
            for (int j = 0; j < NP / 8; j++) dba[j][0] *= wa, dba[j][1] *= wa, dba[j][2] *= wb, dba[j][3] *= wb;
        }

        const float PA = sP[rA], PB = sP[rB];
        for (int lb = i; lb < nb; lb++) {
            const int l0 = lb * 16;
            float gt[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}}, dm[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
#pragma unroll
            for (int kk = 0; kk < NP / 16; kk++) { /* Gᵀ = B Cᵀ */
                uint32_t fb[4];
                ssd_frag_b(fb, sC, LB, l0, kk * 16);
                ssd_mma(gt[0], bA[kk], fb[0], fb[1]);
                ssd_mma(gt[1], bA[kk], fb[2], fb[3]);
            }
#pragma unroll
            for (int kk = 0; kk < PP / 16; kk++) { /* dMᵀ = X dYᵀ */
                uint32_t fb[4];
                ssd_frag_b(fb, sdY, LX, l0, kk * 16);
                ssd_mma(dm[0], xA[kk], fb[0], fb[1]);
                ssd_mma(dm[1], xA[kk], fb[2], fb[3]);
            }
#pragma unroll
            for (int j = 0; j < 2; j++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int l = l0 + 8 * j + 2 * t4 + e;
                    const float Pl = sP[l];
                    const int Fl = sF[l];
                    const float La = rA <= l && rA >= Fl ? ssd_exp(Pl - PA) : 0.0f;
                    const float Lb = rB <= l && rB >= Fl ? ssd_exp(Pl - PB) : 0.0f;
                    const float dga = dm[j][e] * La, dgb = dm[j][2 + e] * Lb;
                    dpA -= dga * gt[j][e], dpB -= dgb * gt[j][2 + e]; /* − Σ_l dseg[l, s] */
                    gt[j][e] *= La, gt[j][2 + e] *= Lb;               /* Mᵀ */
                    dm[j][e] = dga, dm[j][2 + e] = dgb;               /* dGᵀ */
                }
            uint32_t ma[4], dga4[4];
            ssd_acc_to_a(ma, gt[0], gt[1]);
            ssd_acc_to_a(dga4, dm[0], dm[1]);
#pragma unroll
            for (int pj = 0; pj < PP / 16; pj++) {
                uint32_t fb[4];
                ssd_frag_b_t(fb, sdY, LX, l0, pj * 16);
                ssd_mma(dxa[2 * pj], ma, fb[0], fb[1]);
                ssd_mma(dxa[2 * pj + 1], ma, fb[2], fb[3]);
            }
#pragma unroll
            for (int nj = 0; nj < NP / 16; nj++) {
                uint32_t fb[4];
                ssd_frag_b_t(fb, sC, LB, l0, nj * 16);
                ssd_mma(dba[2 * nj], dga4, fb[0], fb[1]);
                ssd_mma(dba[2 * nj + 1], dga4, fb[2], fb[3]);
            }
        }

        dpA = ssd_quad_sum(dpA), dpB = ssd_quad_sum(dpB);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) dp_last += __shfl_xor_sync(SSD_FULL, dp_last, o);
        if (t4 == 0) sDP[rA] += dpA, sDP[rB] += dpB;
        if (lane == 0 && has_next) sLast[i] = dp_last;
#pragma unroll
        for (int j = 0; j < PP / 8; j++) {
            const int col = j * 8 + 2 * t4;
            if (col >= p.P) continue;
#pragma unroll
            for (int half = 0; half < 2; half++) {
                const int r = half ? rB : rA;
                if (r >= Qv) continue;
                float v0 = dxa[j][2 * half] + Dh * ssd_bf2f(sdY[r * LX + col]);
                float v1 = dxa[j][2 * half + 1] + Dh * ssd_bf2f(sdY[r * LX + col + 1]);
                ssd_store2(p.dx + (tok0 + r) * ldx + (int64_t)h * p.P, col, p.P, v0, v1);
            }
        }
        ssd_store_dbc<PP, NP>(p, dB16, p.dBf, tok0, g, h, Qv, rA, rB, t4, dba);
    }

    /* -- pass 2: row blocks of l → dC -- */
    for (int i = 0; i < nb; i++) {
        if (ssd_owner(i) != warp) continue;
        const int l0 = i * 16, rA = l0 + gq, rB = rA + 8;
        float dca[NP / 8][4];
#pragma unroll
        for (int j = 0; j < NP / 8; j++) dca[j][0] = dca[j][1] = dca[j][2] = dca[j][3] = 0.0f;
        uint32_t cA[NP / 16][4], yA[PP / 16][4];
#pragma unroll
        for (int kk = 0; kk < NP / 16; kk++) ssd_frag_a(cA[kk], sC, LB, l0, kk * 16);
#pragma unroll
        for (int kk = 0; kk < PP / 16; kk++) ssd_frag_a(yA[kk], sdY, LX, l0, kk * 16);
        float dpA = 0.0f, dpB = 0.0f;

        if (has_state) { /* entry-state term: dec_l (dY_l S_c) */
#pragma unroll
            for (int kk = 0; kk < PP / 16; kk++)
#pragma unroll
                for (int nj = 0; nj < NP / 16; nj++) {
                    uint32_t fb[4];
                    ssd_frag_b_t(fb, sS, LB, kk * 16, nj * 16);
                    ssd_mma(dca[2 * nj], yA[kk], fb[0], fb[1]);
                    ssd_mma(dca[2 * nj + 1], yA[kk], fb[2], fb[3]);
                }
            float qa = 0.0f, qb = 0.0f; /* C_l · (dY_l S_c) */
#pragma unroll
            for (int j = 0; j < NP / 8; j++) {
                const int col = j * 8 + 2 * t4;
                qa += ssd_bf2f(sC[rA * LB + col]) * dca[j][0] + ssd_bf2f(sC[rA * LB + col + 1]) * dca[j][1];
                qb += ssd_bf2f(sC[rB * LB + col]) * dca[j][2] + ssd_bf2f(sC[rB * LB + col + 1]) * dca[j][3];
            }
            const float da_ = ssd_dec(sP, sF, rA), db_ = ssd_dec(sP, sF, rB);
            dpA += qa * da_, dpB += qb * db_; /* quad-summed below with the rest */
#pragma unroll
            for (int j = 0; j < NP / 8; j++) dca[j][0] *= da_, dca[j][1] *= da_, dca[j][2] *= db_, dca[j][3] *= db_;
        }

        const float PA = sP[rA], PB = sP[rB];
        const int FA = sF[rA], FB = sF[rB];
        for (int sb = 0; sb <= i; sb++) {
            const int s0 = sb * 16;
            float gt[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}}, dm[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
#pragma unroll
            for (int kk = 0; kk < NP / 16; kk++) { /* G = C Bᵀ */
                uint32_t fb[4];
                ssd_frag_b(fb, sB, LB, s0, kk * 16);
                ssd_mma(gt[0], cA[kk], fb[0], fb[1]);
                ssd_mma(gt[1], cA[kk], fb[2], fb[3]);
            }
#pragma unroll
            for (int kk = 0; kk < PP / 16; kk++) { /* dM = dY Xᵀ */
                uint32_t fb[4];
                ssd_frag_b(fb, sX, LX, s0, kk * 16);
                ssd_mma(dm[0], yA[kk], fb[0], fb[1]);
                ssd_mma(dm[1], yA[kk], fb[2], fb[3]);
            }
#pragma unroll
            for (int j = 0; j < 2; j++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int s = s0 + 8 * j + 2 * t4 + e;
                    const float Ps = sP[s];
                    const float La = s <= rA && s >= FA ? ssd_exp(PA - Ps) : 0.0f;
                    const float Lb = s <= rB && s >= FB ? ssd_exp(PB - Ps) : 0.0f;
                    const float dga = dm[j][e] * La, dgb = dm[j][2 + e] * Lb;
                    dpA += dga * gt[j][e], dpB += dgb * gt[j][2 + e]; /* + Σ_s dseg[l, s] */
                    dm[j][e] = dga, dm[j][2 + e] = dgb;               /* dG */
                }
            uint32_t dga4[4];
            ssd_acc_to_a(dga4, dm[0], dm[1]);
#pragma unroll
            for (int nj = 0; nj < NP / 16; nj++) {
                uint32_t fb[4];
                ssd_frag_b_t(fb, sB, LB, s0, nj * 16);
                ssd_mma(dca[2 * nj], dga4, fb[0], fb[1]);
                ssd_mma(dca[2 * nj + 1], dga4, fb[2], fb[3]);
            }
        }
        dpA = ssd_quad_sum(dpA), dpB = ssd_quad_sum(dpB);
        if (t4 == 0) sDP[rA] += dpA, sDP[rB] += dpB;
        ssd_store_dbc<PP, NP>(p, dC16, p.dCf, tok0, g, h, Qv, rA, rB, t4, dca);
    }

    /* -- Σ dY·X for dD -- */
    float dd = 0.0f;
    for (int e = tid; e < Qv * PP; e += blockDim.x) {
        int r = e / PP, col = e - r * PP;
        dd += ssd_bf2f(sdY[r * LX + col]) * ssd_bf2f(sX[r * LX + col]);
    }
    dd = ssd_block_sum(dd, scratch); /* its barriers also complete the sDP and sLast writes */
    if (tid == 0) {
        p.dD_part[(int64_t)bh * p.nc + c] = dd;
        float v = 0.0f;
        for (int k = 0; k <= 8; k++) v += sLast[k];
        sDP[last] += v;
    }
    __syncthreads();

    /* -- da[k] = Σ_{l=k}^{next start−1} dP[l], 0 at a start -- */
    if (warp == 0) {
        float R[4];
        int st[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int r = 4 * lane + i;
            R[i] = sDP[r];
            st[i] = r < Qv && p.starts && p.starts[tok0 + r];
        }
        R[2] += R[3], R[1] += R[2], R[0] += R[1];
        float tot = R[0];
        int first = SSD_QMAX;
#pragma unroll
        for (int i = 3; i >= 0; i--)
            if (st[i]) first = 4 * lane + i;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            float tv = __shfl_down_sync(SSD_FULL, tot, o);
            int tf = __shfl_down_sync(SSD_FULL, first, o);
            if (lane + o < 32) tot += tv, first = min(first, tf);
        }
        /* tot: Σ over lanes ≥ lane; first: first start in lanes ≥ lane */
        float after = __shfl_down_sync(SSD_FULL, tot, 1);
        int next = __shfl_down_sync(SSD_FULL, first, 1);
        if (lane == 31) after = 0.0f, next = SSD_QMAX;
        int ns[4];
#pragma unroll
        for (int i = 3; i >= 0; i--) {
            R[i] += after;
            ns[i] = next;
            if (st[i]) next = 4 * lane + i;
        }
        __syncwarp();
#pragma unroll
        for (int i = 0; i < 4; i++) sDP[4 * lane + i] = R[i];
        __syncwarp();
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int r = 4 * lane + i;
            if (r < Qv) p.da[(tok0 + r) * p.H + h] = st[i] ? 0.0f : R[i] - (ns[i] < SSD_QMAX ? sDP[ns[i]] : 0.0f);
        }
    }
}

/* ---- small reductions ----------------------------------------------------------------- */

/* dD[h] = Σ_{b,c} dD_part[b,h,c] (one block per head, deterministic). */
static __global__ void ssd_reduce_dD_kernel(float *dD, const float *part, int B, int H, int nc) {
#ifndef SSD_SIM
    __shared__ float scratch[32];
#else
    float *scratch = sim_static_smem<float>(32);
#endif
    const int h = blockIdx.x;
    float v = 0.0f;
    for (int i = threadIdx.x; i < B * nc; i += blockDim.x) {
        int b = i / nc, c = i - b * nc;
        v += part[((int64_t)b * H + h) * nc + c];
    }
    v = ssd_block_sum(v, scratch);
    if (threadIdx.x == 0) dD[h] = v;
}

/* out[b,t,g,n] = Σ_{h in g} in[b,t,h,n] (bf16 out, fp32 in). */
static __global__ void ssd_reduce_heads_kernel(bf16 *out, const float *in, int64_t BT, int H, int G, int N) {
    const int hpg = H / G;
    const int64_t total = BT * G * N;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t bt = i / ((int64_t)G * N);
        int rem = (int)(i - bt * G * N), g = rem / N, n = rem - g * N;
        const float *src = in + (bt * H + (int64_t)g * hpg) * N + n;
        float v = 0.0f;
        for (int k = 0; k < hpg; k++) v += src[(int64_t)k * N];
        out[i] = ssd_f2bf(v);
    }
}

/* ---- host-side setup ------------------------------------------------------------------ */

/* The chunk length the kernels use: `chunk` when it is a multiple of 16 in
 * [16, 128], else 128. */
static inline int ssd_chunk_len(int chunk) {
    return chunk >= 16 && chunk <= SSD_QMAX && chunk % 16 == 0 ? chunk : SSD_QMAX;
}

static inline size_t ssd_align256(size_t n) { return (n + 255) & ~(size_t)255; }

/* Fill the sizes of p and carve its workspace out of ws (when not NULL);
 * returns the workspace bytes (forward: entry states and γ; backward also
 * the state gradients, dγ partials, dD partials and, when heads share B/C
 * groups, fp32 per-head dB and dC). */
static inline size_t ssd_setup(ssd_kparams *p, int B, int T, int H, int P, int G, int N, int chunk, int backward, void *ws) {
    memset(p, 0, sizeof *p);
    p->B = B, p->T = T, p->H = H, p->P = P, p->G = G, p->N = N;
    p->Q = ssd_chunk_len(chunk);
    p->nc = (T + p->Q - 1) / p->Q;
    const size_t PN = (size_t)P * N, BHc = (size_t)B * H * p->nc;
    p->dgam_blocks = (int)((PN + SSD_THREADS - 1) / SSD_THREADS);
    char *base = (char *)ws;
    size_t off = 0;
#define SSD_CARVE(field, type, count)                                      \
    do {                                                                   \
        if (base) p->field = (type *)(base + off);                         \
        off += ssd_align256(sizeof(type) * (size_t)(count));               \
    } while (0)
    SSD_CARVE(states, float, BHc * PN);
    SSD_CARVE(gam, float, BHc);
    if (backward) {
        SSD_CARVE(dstates, float, BHc * PN);
        SSD_CARVE(dgam, float, BHc * p->dgam_blocks);
        SSD_CARVE(dD_part, float, BHc);
        if (H != G) {
            SSD_CARVE(dBf, float, (size_t)B * T * H * N);
            SSD_CARVE(dCf, float, (size_t)B * T * H * N);
        }
    }
#undef SSD_CARVE
    return off;
}

/* ---- orchestration, shared by the GPU and the simulator -------------------------------
 * SSD_LAUNCH(kernel, grid_x, grid_y, threads, smem_bytes, args...) and
 * SSD_MEMSET(ptr, bytes) are defined by the includer. */
template <int PP, int NP>
static void ssd_run_forward_states(const ssd_kparams &p0) {
    ssd_kparams p = p0;
    p.mode = 0;
    SSD_LAUNCH((ssd_chunk_outer_kernel<PP, NP>), p.nc, p.B * p.H, SSD_THREADS, (ssd_smem<PP, NP>::outer), p);
    const int64_t PN = (int64_t)p.P * p.N;
    SSD_LAUNCH(ssd_state_fwd_kernel, (unsigned)((PN + SSD_THREADS - 1) / SSD_THREADS), p.B * p.H, SSD_THREADS, 0,
               p);
}

template <int PP, int NP>
static void ssd_run_forward(const ssd_kparams &p) {
    ssd_run_forward_states<PP, NP>(p);
    SSD_LAUNCH((ssd_chunk_scan_fwd_kernel<PP, NP>), p.nc, p.B * p.H, SSD_THREADS, (ssd_smem<PP, NP>::scan), p);
}

/* dD may be NULL.  states_ready: the workspace still holds the entry states
 * and γ of a forward on the same inputs, so they are not recomputed. */
template <int PP, int NP>
static void ssd_run_backward(const ssd_kparams &p0, float *dD, bool states_ready = false) {
    ssd_kparams p = p0;
    p.final_state = nullptr;
    if (!states_ready) ssd_run_forward_states<PP, NP>(p);
    p.mode = 1;
    SSD_LAUNCH((ssd_chunk_outer_kernel<PP, NP>), p.nc, p.B * p.H, SSD_THREADS, (ssd_smem<PP, NP>::outer), p);
    SSD_LAUNCH(ssd_state_bwd_kernel, p.dgam_blocks, p.B * p.H, SSD_THREADS, 0, p);
    SSD_LAUNCH((ssd_chunk_bwd_kernel<PP, NP>), p.nc, p.B * p.H, SSD_THREADS, (ssd_smem<PP, NP>::bwd), p);
    if (dD) SSD_LAUNCH(ssd_reduce_dD_kernel, p.H, 1, SSD_THREADS, 0, dD, p.dD_part, p.B, p.H, p.nc);
    if (p.dBf) {
        int64_t BT = (int64_t)p.B * p.T, n = BT * p.G * p.N;
        unsigned blocks = (unsigned)((n + 255) / 256 < 65535 * 8 ? (n + 255) / 256 : 65535 * 8);
        SSD_LAUNCH(ssd_reduce_heads_kernel, blocks, 1, 256, 0, p.dB, p.dBf, BT, p.H, p.G, p.N);
        SSD_LAUNCH(ssd_reduce_heads_kernel, blocks, 1, 256, 0, p.dC, p.dCf, BT, p.H, p.G, p.N);
    }
}

#endif
