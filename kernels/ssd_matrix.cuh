/* The materialised SSD mixing matrix on the GPU (stage 1), see
 * kernels/ssd_cuda.h; kept in a header for the host simulator like
 * kernels/ssd_kernels.cuh (include that first).
 *
 *   T[l,s] = (C_l·B_s) · exp(cum_l − cum_s) + D·[l = s]   for first[l] ≤ s ≤ l, else 0
 *
 * cum is the fp64 prefix sum of a over the whole sequence (cum_l − cum_s is
 * then exact to ~1e-16·|cum|), first[l] the last document start at or before
 * l.  Plain fp32 FMA in 32×32 tiles (C·B is fp32 here, not a tensor-core
 * product: T is the stage-1 target of an fp32 loss).
 *
 * Backward, with G = C Bᵀ, L the decay mask and dG = dT ∘ L:
 *   dC = dG B (row kernel), dB = dGᵀ C (column kernel), per head in fp32,
 *   dP[l] = Σ_s dG∘G [l,s] − Σ_{l'} dG∘G [l',l]  (row sums − column sums)
 *   da[k] = Σ_{l=k}^{next start − 1} dP[l] (0 at a start), dD = Σ tr(dT). */
#ifndef RA_SSD_MATRIX_CUH
#define RA_SSD_MATRIX_CUH

#define SSDM_TILE 32
#define SSDM_THREADS 256
#define SSDM_NJ 4 /* 32-wide column groups of N a thread accumulates: N ≤ 128 */

typedef struct ssdm_params {
    int B, T, H, G, N;
    const bf16 *Bm, *Cm;
    const float *a, *D;
    const uint8_t *starts;
    const float *dTm;
    float *Tm;
    double *cum;     /* [B,T,H] */
    int *first;      /* [B,T] */
    float *rowsum;   /* [B,T,H] */
    float *colsum;   /* [B,T,H] */
    float *dBf, *dCf; /* [B,T,H,N] per head */
    float *da, *dD;
} ssdm_params;

/* cum and first by a warp-wide scan, one warp per (b, h) (first: the h = 0
 * warps), 32 positions per pass: a thread per (b, h) walking T in order
 * took 0.9 ms per call at B 4, T 2048, 31 heads. */
static __global__ void ssdm_prefix_kernel(const ssdm_params p) {
    const int lane = threadIdx.x & 31, bh = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (bh >= p.B * p.H) return; /* the whole warp */
    const int b = bh / p.H, h = bh - b * p.H;
    double carry = 0.0;
    int fcarry = -1;
    for (int t0 = 0; t0 < p.T; t0 += 32) {
        const int t = t0 + lane;
        const int64_t bt = (int64_t)b * p.T + t;
        double v = t < p.T ? (double)p.a[bt * p.H + h] : 0.0;
        int f = h == 0 && t < p.T && p.starts && p.starts[bt] ? t : -1;
        for (int o = 1; o < 32; o <<= 1) {
            const double u = __shfl_up_sync(SSD_FULL, v, o);
            const int fu = __shfl_up_sync(SSD_FULL, f, o);
            if (lane >= o) v += u, f = fu > f ? fu : f;
        }
        v += carry;
        if (fcarry > f) f = fcarry;
        if (t < p.T) {
            p.cum[bt * p.H + h] = v;
            if (h == 0) p.first[bt] = f;
        }
        carry = __shfl_sync(SSD_FULL, v, 31);
        fcarry = __shfl_sync(SSD_FULL, f, 31);
    }
}

/* Rows r0.. (32 of them) of a [.., N] bf16 block with rows `ld` apart into
 * s[32][N + 1] as fp32 (zeros past T). */
__device__ __forceinline__ void ssdm_load(float *s, const bf16 *g, int64_t ld, int r0, int T, int N) {
    for (int e = threadIdx.x; e < SSDM_TILE * N; e += blockDim.x) {
        int r = e / N, n = e - r * N;
        s[r * (N + 1) + n] = r0 + r < T ? ssd_bf2f(g[(int64_t)(r0 + r) * ld + n]) : 0.0f;
    }
}

__device__ __forceinline__ float ssdm_dot(const float *u, const float *v, int N) {
    float acc = 0.0f;
    for (int n = 0; n < N; n++) acc += u[n] * v[n];
    return acc;
}

/* g[k] = Σ_n u[(ty + 8k)·(N+1) + n] · v[n] for a thread's 4 rows ty + 8k:
 * v read once per n for all 4 (two shared loads per FMA became 1.25). */
__device__ __forceinline__ void ssdm_dot4(float g[4], const float *u, int ty, const float *v, int N) {
    g[0] = g[1] = g[2] = g[3] = 0.0f;
    for (int n = 0; n < N; n++) {
        const float x = v[n];
#pragma unroll
        for (int k = 0; k < 4; k++) g[k] += u[(ty + 8 * k) * (N + 1) + n] * x;
    }
}

/* The decay of a tile's 32 positions from t0 of head h into shared memory:
 * cum, and first when wanted (the tile's rows). */
__device__ __forceinline__ void ssdm_load_decay(double *cum, int *first, const ssdm_params &p, int b, int h, int t0) {
    for (int i = threadIdx.x; i < SSDM_TILE; i += blockDim.x) {
        const int t = t0 + i;
        if (t >= p.T) continue;
        const int64_t bt = (int64_t)b * p.T + t;
        cum[i] = p.cum[bt * p.H + h];
        if (first) first[i] = p.first[bt];
    }
}

/* L[l,s] from the tile caches: row r = l − l0, column c = s − s0. */
__device__ __forceinline__ float ssdm_decay(const double *cumL, const int *firstL, const double *cumS, int r, int c,
                                            int l, int s) {
    if (s > l || s < firstL[r]) return 0.0f;
    return expf((float)(cumL[r] - cumS[c]));
}

/* The shared memory of the tile kernels: the decay caches (cum of the rows'
 * and the columns' positions, first of the rows'), then fp32 tiles. */
#define SSDM_DECAY_BYTES (2 * SSDM_TILE * sizeof(double) + SSDM_TILE * sizeof(int))

/* grid (nt·nt, B·H): tile (lt, st) of Tm; threads: tx = column s, ty = rows ty + 8k. */
static __global__ void __launch_bounds__(SSDM_THREADS) ssdm_forward_kernel(const ssdm_params p) {
    SSD_DYNAMIC_SMEM(smem);
    const int nt = (p.T + SSDM_TILE - 1) / SSDM_TILE;
    const int lt = blockIdx.x / nt, st = blockIdx.x - lt * nt, bh = blockIdx.y, b = bh / p.H, h = bh - b * p.H;
    const int g = h / (p.H / p.G), tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
    const int l0 = lt * SSDM_TILE, s0 = st * SSDM_TILE, N = p.N;
    float *out = p.Tm + (int64_t)bh * p.T * p.T;
    /* above the diagonal, or before the document of the tile's first row
     * (first[] grows with l): all zero */
    if (st > lt || s0 + SSDM_TILE - 1 < p.first[(int64_t)b * p.T + l0]) {
        for (int k = 0; k < 4; k++) {
            int l = l0 + ty + 8 * k, s = s0 + tx;
            if (l < p.T && s < p.T) out[(int64_t)l * p.T + s] = 0.0f;
        }
        return;
    }
    double *cumL = reinterpret_cast<double *>(smem), *cumS = cumL + SSDM_TILE;
    int *firstL = reinterpret_cast<int *>(cumS + SSDM_TILE);
    float *sC = reinterpret_cast<float *>(smem + SSDM_DECAY_BYTES), *sB = sC + SSDM_TILE * (N + 1);
    const int64_t ld = (int64_t)p.G * N;
    ssdm_load(sC, p.Cm + (int64_t)b * p.T * ld + (int64_t)g * N, ld, l0, p.T, N);
    ssdm_load(sB, p.Bm + (int64_t)b * p.T * ld + (int64_t)g * N, ld, s0, p.T, N);
    ssdm_load_decay(cumL, firstL, p, b, h, l0);
    ssdm_load_decay(cumS, nullptr, p, b, h, s0);
    __syncthreads();
    const int s = s0 + tx;
    float G[4];
    ssdm_dot4(G, sC, ty, sB + tx * (N + 1), N);
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const int r = ty + 8 * k, l = l0 + r;
        if (l >= p.T || s >= p.T) continue;
        float v = G[k] * ssdm_decay(cumL, firstL, cumS, r, tx, l, s);
        if (l == s && p.D) v += p.D[h];
        out[(int64_t)l * p.T + s] = v;
    }
}

/* dG of the tile for the thread's 4 rows (r = ty + 8k) and column tx into
 * sG, with the rows' Σ dG·G into sums[k] (rows kernel) or into sums[0]
 * (columns kernel: one column per thread).  sC holds the rows' C, sB the
 * columns' B; the decay caches are loaded. */
__device__ __forceinline__ void ssdm_tile_dg(float *sG, float sums[4], bool by_row, const ssdm_params &p,
                                             const float *dT, const float *sC, const float *sB, const double *cumL,
                                             const int *firstL, const double *cumS, int l0, int s0, int tx, int ty) {
    float G[4];
    ssdm_dot4(G, sC, ty, sB + tx * (p.N + 1), p.N);
    const int s = s0 + tx;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const int r = ty + 8 * k, l = l0 + r;
        float dg = 0.0f;
        if (l < p.T && s < p.T) {
            const float L = ssdm_decay(cumL, firstL, cumS, r, tx, l, s);
            if (L != 0.0f) {
                dg = dT[(int64_t)l * p.T + s] * L;
                sums[by_row ? k : 0] += dg * G[k];
            }
        }
        sG[r * (SSDM_TILE + 1) + tx] = dg;
    }
}

/* acc[k][j] += Σ_i sG[row(k, i)]·V[i][tx + 32j] over the tile's 32 i: rows
 * kernel (i = column ss: sG[(ty + 8k)][ss], V = B) or columns kernel (i = row
 * rr: sG[rr][(ty + 8k)], V = C).  V's element is read once for the 4 k. */
__device__ __forceinline__ void ssdm_tile_product(float acc[4][SSDM_NJ], bool by_row, const float *sG, const float *V,
                                                  int N, int tx, int ty) {
    for (int i = 0; i < SSDM_TILE; i++) {
        float v[SSDM_NJ];
#pragma unroll
        for (int j = 0; j < SSDM_NJ; j++) v[j] = tx + 32 * j < N ? V[i * (N + 1) + tx + 32 * j] : 0.0f;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const int c = ty + 8 * k;
            const float gk = by_row ? sG[c * (SSDM_TILE + 1) + i] : sG[i * (SSDM_TILE + 1) + c];
#pragma unroll
            for (int j = 0; j < SSDM_NJ; j++)
                if (tx + 32 * j < N) acc[k][j] += gk * v[j];
        }
    }
}

/* grid (nt, B·H): for rows l of tile lt, sweep s-tiles ≤ lt:
 *   dC_h[l,:] = Σ_s dG[l,s] B_s, rowsum[l] = Σ_s dG[l,s] G[l,s]. */
static __global__ void __launch_bounds__(SSDM_THREADS) ssdm_rows_kernel(const ssdm_params p) {
    SSD_DYNAMIC_SMEM(smem);
    const int lt = blockIdx.x, bh = blockIdx.y, b = bh / p.H, h = bh - b * p.H, g = h / (p.H / p.G);
    const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5, l0 = lt * SSDM_TILE, N = p.N;
    double *cumL = reinterpret_cast<double *>(smem), *cumS = cumL + SSDM_TILE;
    int *firstL = reinterpret_cast<int *>(cumS + SSDM_TILE);
    float *sC = reinterpret_cast<float *>(smem + SSDM_DECAY_BYTES), *sB = sC + SSDM_TILE * (N + 1);
    float *sG = sB + SSDM_TILE * (N + 1);
    const int64_t ld = (int64_t)p.G * N;
    const float *dT = p.dTm + (int64_t)bh * p.T * p.T;
    ssdm_load(sC, p.Cm + (int64_t)b * p.T * ld + (int64_t)g * N, ld, l0, p.T, N);
    ssdm_load_decay(cumL, firstL, p, b, h, l0);
    float acc[4][SSDM_NJ], rs[4] = {0, 0, 0, 0};
#pragma unroll
    for (int k = 0; k < 4; k++)
#pragma unroll
        for (int j = 0; j < SSDM_NJ; j++) acc[k][j] = 0.0f;
    /* s-tiles before the document of row l0 are masked for every row of the tile */
    const int f0 = p.first[(int64_t)b * p.T + l0];
    for (int st = f0 > 0 ? f0 / SSDM_TILE : 0; st <= lt; st++) {
        const int s0 = st * SSDM_TILE;
        __syncthreads(); /* sB, sG, cumS of the previous tile are consumed */
        ssdm_load(sB, p.Bm + (int64_t)b * p.T * ld + (int64_t)g * N, ld, s0, p.T, N);
        ssdm_load_decay(cumS, nullptr, p, b, h, s0);
        __syncthreads();
        ssdm_tile_dg(sG, rs, true, p, dT, sC, sB, cumL, firstL, cumS, l0, s0, tx, ty);
        __syncthreads();
        ssdm_tile_product(acc, true, sG, sB, N, tx, ty);
    }
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const int l = l0 + ty + 8 * k;
        float v = rs[k];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(SSD_FULL, v, o);
        if (l >= p.T) continue;
        const int64_t bl = (int64_t)b * p.T + l;
        if (tx == 0) p.rowsum[bl * p.H + h] = v;
#pragma unroll
        for (int j = 0; j < SSDM_NJ; j++) {
            const int n = tx + 32 * j;
            if (n < N) p.dCf[(bl * p.H + h) * N + n] = acc[k][j];
        }
    }
}

/* grid (nt, B·H): for columns s of tile st, sweep l-tiles ≥ st:
 *   dB_h[s,:] = Σ_l dG[l,s] C_l, colsum[s] = Σ_l dG[l,s] G[l,s].
 * Threads: tx = column s for the tile products (coalesced dTm rows). */
static __global__ void __launch_bounds__(SSDM_THREADS) ssdm_cols_kernel(const ssdm_params p) {
    SSD_DYNAMIC_SMEM(smem);
    const int st = blockIdx.x, bh = blockIdx.y, b = bh / p.H, h = bh - b * p.H, g = h / (p.H / p.G);
    const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5, s0 = st * SSDM_TILE, N = p.N;
    const int nt = (p.T + SSDM_TILE - 1) / SSDM_TILE;
    double *cumL = reinterpret_cast<double *>(smem), *cumS = cumL + SSDM_TILE;
    int *firstL = reinterpret_cast<int *>(cumS + SSDM_TILE);
    float *sB = reinterpret_cast<float *>(smem + SSDM_DECAY_BYTES), *sC = sB + SSDM_TILE * (N + 1);
    float *sG = sC + SSDM_TILE * (N + 1);
    float *sCol = sG + SSDM_TILE * (SSDM_TILE + 1); /* [8][32] */
    const int64_t ld = (int64_t)p.G * N;
    const float *dT = p.dTm + (int64_t)bh * p.T * p.T;
    ssdm_load(sB, p.Bm + (int64_t)b * p.T * ld + (int64_t)g * N, ld, s0, p.T, N);
    ssdm_load_decay(cumS, nullptr, p, b, h, s0);
    float acc[4][SSDM_NJ], cs[4] = {0, 0, 0, 0};
#pragma unroll
    for (int k = 0; k < 4; k++)
#pragma unroll
        for (int j = 0; j < SSDM_NJ; j++) acc[k][j] = 0.0f;
    const int s = s0 + tx;
    for (int lt = st; lt < nt; lt++) {
        const int l0 = lt * SSDM_TILE;
        /* rows whose document starts after this tile's columns (first[] grows
         * with l): masked, and so are all later tiles */
        if (p.first[(int64_t)b * p.T + l0] > s0 + SSDM_TILE - 1) break;
        __syncthreads(); /* sC, sG, the row caches of the previous tile are consumed */
        ssdm_load(sC, p.Cm + (int64_t)b * p.T * ld + (int64_t)g * N, ld, l0, p.T, N);
        ssdm_load_decay(cumL, firstL, p, b, h, l0);
        __syncthreads();
        ssdm_tile_dg(sG, cs, false, p, dT, sC, sB, cumL, firstL, cumS, l0, s0, tx, ty);
        __syncthreads();
        ssdm_tile_product(acc, false, sG, sC, N, tx, ty);
    }
    sCol[ty * 32 + tx] = cs[0];
    __syncthreads();
    if (ty == 0 && s < p.T) {
        float v = 0.0f;
        for (int k = 0; k < 8; k++) v += sCol[k * 32 + tx];
        p.colsum[((int64_t)b * p.T + s) * p.H + h] = v;
    }
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const int ss = s0 + ty + 8 * k;
        if (ss >= p.T) continue;
        const int64_t bs = (int64_t)b * p.T + ss;
#pragma unroll
        for (int j = 0; j < SSDM_NJ; j++) {
            const int n = tx + 32 * j;
            if (n < N) p.dBf[(bs * p.H + h) * N + n] = acc[k][j];
        }
    }
}

/* da by a segmented suffix sum of dP = rowsum − colsum, one warp per (b, h),
 * 32 positions per pass from the end: S[t] = dP[t] + S[t+1] unless t is the
 * last position or t+1 starts a document; da[t] = 0 at a start, else S[t]. */
static __global__ void ssdm_da_kernel(const ssdm_params p) {
    const int lane = threadIdx.x & 31, bh = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (bh >= p.B * p.H) return; /* the whole warp */
    const int b = bh / p.H, h = bh - b * p.H;
    double carry = 0.0; /* S at the first position of the pass to the right */
    for (int t0 = (p.T - 1) / 32 * 32; t0 >= 0; t0 -= 32) {
        const int t = t0 + lane;
        const int64_t bt = (int64_t)b * p.T + t, i = bt * p.H + h;
        const bool in = t < p.T;
        double v = in ? (double)p.rowsum[i] - p.colsum[i] : 0.0;
        /* closed: the segment of t ends within [t, t + span) */
        int closed = !in || t == p.T - 1 || (p.starts && p.starts[bt + 1]);
        for (int o = 1; o < 32; o <<= 1) {
            const double u = __shfl_down_sync(SSD_FULL, v, o);
            const int cu = __shfl_down_sync(SSD_FULL, closed, o);
            if (lane + o < 32) {
                if (!closed) v += u;
                closed |= cu;
            }
        }
        if (!closed) v += carry;
        if (in) p.da[i] = p.starts && p.starts[bt] ? 0.0f : (float)v;
        carry = __shfl_sync(SSD_FULL, v, 0);
    }
}

/* dD[h] = Σ_b tr(dTm[b,h]) (one block per head). */
static __global__ void ssdm_dD_kernel(const ssdm_params p) {
#ifndef SSD_SIM
    __shared__ float scratch[32];
#else
    float *scratch = sim_static_smem<float>(32);
#endif
    const int h = blockIdx.x;
    float v = 0.0f;
    for (int i = threadIdx.x; i < p.B * p.T; i += blockDim.x) {
        int b = i / p.T, l = i - b * p.T;
        v += p.dTm[(((int64_t)b * p.H + h) * p.T + l) * p.T + l];
    }
    v = ssd_block_sum(v, scratch);
    if (threadIdx.x == 0) p.dD[h] = v;
}

static inline size_t ssdm_setup(ssdm_params *p, int B, int T, int H, int G, int N, int backward, void *ws) {
    memset(p, 0, sizeof *p);
    p->B = B, p->T = T, p->H = H, p->G = G, p->N = N;
    const size_t BT = (size_t)B * T;
    char *base = (char *)ws;
    size_t off = 0;
#define SSDM_CARVE(field, type, count)                        \
    do {                                                      \
        if (base) p->field = (type *)(base + off);            \
        off += ssd_align256(sizeof(type) * (size_t)(count));  \
    } while (0)
    SSDM_CARVE(cum, double, BT * H);
    SSDM_CARVE(first, int, BT);
    if (backward) {
        SSDM_CARVE(rowsum, float, BT * H);
        SSDM_CARVE(colsum, float, BT * H);
        SSDM_CARVE(dBf, float, BT * H * N);
        SSDM_CARVE(dCf, float, BT * H * N);
    }
#undef SSDM_CARVE
    return off;
}

static inline size_t ssdm_smem_bytes(int N) {
    return SSDM_DECAY_BYTES + sizeof(float) * ((size_t)2 * SSDM_TILE * (N + 1) + SSDM_TILE * (SSDM_TILE + 1) + 8 * 32);
}

static inline void ssdm_run_prefix(const ssdm_params &p) {
    int n = p.B * p.H; /* warps, 4 per block */
    SSD_LAUNCH(ssdm_prefix_kernel, (n + 3) / 4, 1, 128, 0, p);
}

static inline void ssdm_run_forward(const ssdm_params &p) {
    const int nt = (p.T + SSDM_TILE - 1) / SSDM_TILE;
    ssdm_run_prefix(p);
    SSD_LAUNCH(ssdm_forward_kernel, (unsigned)nt * nt, p.B * p.H, SSDM_THREADS, ssdm_smem_bytes(p.N), p);
}

/* dBm, dCm: bf16 [B,T,G,N] outputs. */
static inline void ssdm_run_backward(const ssdm_params &p, bf16 *dBm, bf16 *dCm) {
    const int nt = (p.T + SSDM_TILE - 1) / SSDM_TILE;
    ssdm_run_prefix(p);
    SSD_LAUNCH(ssdm_rows_kernel, nt, p.B * p.H, SSDM_THREADS, ssdm_smem_bytes(p.N), p);
    SSD_LAUNCH(ssdm_cols_kernel, nt, p.B * p.H, SSDM_THREADS, ssdm_smem_bytes(p.N), p);
    int n = p.B * p.H;
    SSD_LAUNCH(ssdm_da_kernel, (n + 3) / 4, 1, 128, 0, p);
    if (p.dD) SSD_LAUNCH(ssdm_dD_kernel, p.H, 1, SSDM_THREADS, 0, p);
    int64_t BT = (int64_t)p.B * p.T, total = BT * p.G * p.N;
    unsigned blocks = (unsigned)((total + 255) / 256 < 65535 * 8 ? (total + 255) / 256 : 65535 * 8);
    SSD_LAUNCH(ssd_reduce_heads_kernel, blocks, 1, 256, 0, dBm, p.dBf, BT, p.H, p.G, p.N);
    SSD_LAUNCH(ssd_reduce_heads_kernel, blocks, 1, 256, 0, dCm, p.dCf, BT, p.H, p.G, p.N);
}

#endif
