/* DiscreteMamba2 elementwise kernels on the GPU (see kernels/dm2_cuda.h):
 * the causal depthwise conv with document resets, the decay, the gate and
 * the one-token decode step.  Kept in a header (after ssd_kernels.cuh) so
 * tests/unit/test_ssd_sim.cpp runs them on the host simulator too.
 *
 * Activations are bf16, the small per-channel parameters (conv w and bias,
 * D, z_bias) fp32, their gradients fp32 accumulated (+=) like the CPU twins,
 * every sum in fp32 and in a fixed order (no atomics). */
#ifndef RA_DM2_KERNELS_CUH
#define RA_DM2_KERNELS_CUH

#define DM2K_K 4           /* conv taps */
#define DM2K_ROWS 64       /* least rows of a conv / gate backward block */
#define DM2K_MAX_PARTS 256 /* most row blocks (partial sums per column) of one backward */
#define DM2K_THREADS 256   /* 32 channels × 8 row lanes */

/* The conv and gate backwards sum their parameter gradients over rows
 * without atomics, so that a run gives the same bits every time: each block
 * of rows writes its column sums to a workspace of partials, and
 * dm2k_sum_parts_kernel adds them up in row-block order.  Rows per block:
 * DM2K_ROWS, or more (a multiple of 8) to keep ≤ DM2K_MAX_PARTS blocks. */
static inline int dm2k_rows_per_block(int64_t rows) {
    int64_t r = (rows + DM2K_MAX_PARTS - 1) / DM2K_MAX_PARTS;
    r = (r + 7) / 8 * 8;
    return r < DM2K_ROWS ? DM2K_ROWS : (int)r;
}
static inline int dm2k_row_blocks(int64_t rows) {
    const int rpb = dm2k_rows_per_block(rows);
    return (int)((rows + rpb - 1) / rpb);
}
/* An upper bound of dm2k_row_blocks that never decreases with rows (a
 * workspace sized for some rows fits every smaller batch). */
static inline int dm2k_max_row_blocks(int64_t rows) {
    int64_t n = (rows + DM2K_ROWS - 1) / DM2K_ROWS;
    return n < DM2K_MAX_PARTS ? (int)n : DM2K_MAX_PARTS;
}

__device__ __forceinline__ float dm2k_softplus(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }
__device__ __forceinline__ float dm2k_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

/* How many taps back from token t (row bt = b·T + t) stay in t's document:
 * min(3, t − doc start). */
__device__ __forceinline__ int dm2k_taps_back(const uint8_t *starts, int64_t bt, int t) {
    int k = 0;
    while (k < DM2K_K - 1 && k < t && !(starts && starts[bt - k])) k++;
    return k;
}

/* The conv kernels give each thread V adjacent channels: V = 8 or 4 through
 * 16- or 8-byte loads and stores when the channel count, the row strides
 * and the pointers allow it (dm2k_vec of each), else V = 1.  A thread walks
 * a run of consecutive rows keeping the inputs (and, backward, the output
 * gradients) the taps need in registers, so each row is read about once
 * instead of once per tap. */
/* Whether rows ld elements apart from p allow V-wide accesses (V bf16 = 2V bytes). */
static inline bool dm2k_vec(int V, int ld, const void *p) { return ld % V == 0 && ((uintptr_t)p % (2 * V)) == 0; }
#define DM2K_RUN 16 /* rows a forward conv thread walks */
/* Grid of either conv kernel: x over groups of 32 threads' channels. */
static inline unsigned dm2k_conv_groups(int C, int V) { return (unsigned)((C / V + 31) / 32); }
/* Forward grid y: 8 runs of DM2K_RUN rows per block (more rows loop). */
static inline unsigned dm2k_conv_fwd_blocks(int64_t rows) {
    const int64_t n = (rows + 8 * DM2K_RUN - 1) / (8 * DM2K_RUN);
    return (unsigned)(n < 65535 ? n : 65535);
}

/* The two bf16 halves of a 32-bit word as floats (low half first). */
__device__ __forceinline__ void dm2k_unpack2(float *f, uint32_t w) {
    f[0] = ssd_as_float(w << 16), f[1] = ssd_as_float(w & 0xffff0000u);
}

template <int V> __device__ __forceinline__ void dm2k_load(float f[V], const bf16 *p) {
    if constexpr (V == 8) {
        const uint4 u = ssd_ldg16(p);
        dm2k_unpack2(f, u.x), dm2k_unpack2(f + 2, u.y), dm2k_unpack2(f + 4, u.z), dm2k_unpack2(f + 6, u.w);
    } else if constexpr (V == 4) {
        const uint2 u = ssd_ldg8(p);
        dm2k_unpack2(f, u.x), dm2k_unpack2(f + 2, u.y);
    } else {
#pragma unroll
        for (int i = 0; i < V; i++) f[i] = ssd_bf2f(p[i]);
    }
}
template <int V> __device__ __forceinline__ void dm2k_store(bf16 *p, const float f[V]) {
    if constexpr (V == 8) {
        ssd_st16(p, make_uint4(ssd_pack2(f[0], f[1]), ssd_pack2(f[2], f[3]), ssd_pack2(f[4], f[5]),
                                ssd_pack2(f[6], f[7])));
    } else if constexpr (V == 4) {
        ssd_st8(p, make_uint2(ssd_pack2(f[0], f[1]), ssd_pack2(f[2], f[3])));
    } else {
#pragma unroll
        for (int i = 0; i < V; i++) p[i] = ssd_f2bf(f[i]);
    }
}
template <int V> __device__ __forceinline__ void dm2k_copy(float d[V], const float s[V]) {
#pragma unroll
    for (int i = 0; i < V; i++) d[i] = s[i];
}

/* The conv's window of past inputs: prev[k − 1] is the input k rows back,
 * avail how many of them are in the current row's document. */
template <int V>
__device__ __forceinline__ int dm2k_window_start(float prev[DM2K_K - 1][V], const bf16 *in, int ld_in, int c0,
                                                 const uint8_t *starts, int64_t r0, int t) {
    const int avail = dm2k_taps_back(starts, r0, t);
#pragma unroll
    for (int k = 1; k < DM2K_K; k++)
        if (k <= avail) dm2k_load<V>(prev[k - 1], in + (r0 - k) * ld_in + c0);
    return avail;
}
/* After row x: x becomes one row back. */
template <int V>
__device__ __forceinline__ void dm2k_window_push(float prev[DM2K_K - 1][V], int &avail, const float x[V]) {
#pragma unroll
    for (int k = DM2K_K - 2; k > 0; k--) dm2k_copy<V>(prev[k], prev[k - 1]);
    dm2k_copy<V>(prev[0], x);
    if (avail < DM2K_K - 1) avail++;
}

/* out[bt, c] = bias[c] + Σ_{k ≤ back} w[c, 3 − k] · in[bt − k, c].
 * grid (dm2k_conv_groups, any), DM2K_THREADS threads: tx = channel group,
 * ty = runs of DM2K_RUN rows, 8·gridDim.y runs apart. */
template <int V>
static __global__ void __launch_bounds__(DM2K_THREADS)
    dm2k_conv_fwd_kernel(bf16 *out, int ld_out, const bf16 *in, int ld_in, const float *w, const float *bias,
                         const uint8_t *starts, int B, int T, int C) {
    const int c0 = (blockIdx.x * 32 + (threadIdx.x & 31)) * V;
    if (c0 >= C) return;
    float wk[DM2K_K][V], b[V], prev[DM2K_K - 1][V]; /* prev[k − 1]: the input k rows back */
#pragma unroll
    for (int v = 0; v < V; v++) {
#pragma unroll
        for (int j = 0; j < DM2K_K; j++) wk[j][v] = w[(c0 + v) * DM2K_K + j];
        b[v] = bias ? bias[c0 + v] : 0.0f;
    }
    const int64_t BT = (int64_t)B * T;
    for (int64_t r0 = ((int64_t)blockIdx.y * 8 + (threadIdx.x >> 5)) * DM2K_RUN; r0 < BT;
         r0 += (int64_t)gridDim.y * 8 * DM2K_RUN) {
        int t = (int)(r0 % T);
        int avail = dm2k_window_start<V>(prev, in, ld_in, c0, starts, r0, t);
        const int64_t r1 = r0 + DM2K_RUN < BT ? r0 + DM2K_RUN : BT;
        for (int64_t bt = r0; bt < r1; bt++, t++) {
            if (t == T) t = 0;
            if (t == 0 || (starts && starts[bt])) avail = 0;
            float x[V], acc[V];
            dm2k_load<V>(x, in + bt * ld_in + c0);
#pragma unroll
            for (int v = 0; v < V; v++) acc[v] = b[v] + wk[DM2K_K - 1][v] * x[v];
#pragma unroll
            for (int k = 1; k < DM2K_K; k++)
                if (k <= avail)
#pragma unroll
                    for (int v = 0; v < V; v++) acc[v] += wk[DM2K_K - 1 - k][v] * prev[k - 1][v];
            dm2k_store<V>(out + bt * ld_out + c0, acc);
            dm2k_window_push<V>(prev, avail, x);
        }
    }
}

/* grid (dm2k_conv_groups, row blocks of rpb rows), DM2K_THREADS threads:
 * tx = channel group, ty = a run of rpb/8 consecutive rows.
 * din[r, c] = Σ_k w[c, 3 − k] · dout[r + k, c] over the outputs r + k that
 * reach back to r; the block's sums of the weight and bias gradients go to
 * part[(blockIdx.y·(DM2K_K + 1) + j)·C + c] (j = tap, DM2K_K = bias). */
template <int V>
static __global__ void __launch_bounds__(DM2K_THREADS)
    dm2k_conv_bwd_kernel(bf16 *din, int ld_din, float *part, int rpb, const bf16 *dout, int ld_dout, const bf16 *in,
                         int ld_in, const float *w, const uint8_t *starts, int B, int T, int C) {
    constexpr int S = V * (DM2K_K + 1); /* sums per thread */
#ifndef SSD_SIM
    __shared__ float red[8][S][32];
#else
    float(*red)[S][32] = reinterpret_cast<float(*)[S][32]>(sim_static_smem<float>(0));
#endif
    const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
    const int c0 = (blockIdx.x * 32 + tx) * V, run = rpb / 8;
    const int64_t BT = (int64_t)B * T, r0 = (int64_t)blockIdx.y * rpb + (int64_t)ty * run;
    float gw[DM2K_K][V], gb[V];
#pragma unroll
    for (int v = 0; v < V; v++) {
        gb[v] = 0.0f;
#pragma unroll
        for (int j = 0; j < DM2K_K; j++) gw[j][v] = 0.0f;
    }
    if (c0 < C && r0 < BT) {
        float wk[DM2K_K][V], prev[DM2K_K - 1][V], fut[DM2K_K][V]; /* fut[k]: dout k rows ahead (in this sequence) */
#pragma unroll
        for (int v = 0; v < V; v++)
#pragma unroll
            for (int j = 0; j < DM2K_K; j++) wk[j][v] = w[(c0 + v) * DM2K_K + j];
        int t = (int)(r0 % T);
        int avail = dm2k_window_start<V>(prev, in, ld_in, c0, starts, r0, t);
#pragma unroll
        for (int k = 0; k < DM2K_K; k++)
            if (t + k < T) dm2k_load<V>(fut[k], dout + (r0 + k) * ld_dout + c0);
        const int64_t r1 = r0 + run < BT ? r0 + run : BT;
        for (int64_t bt = r0; bt < r1; bt++, t++) {
            if (t == T) { /* the next sequence: its own output gradients ahead */
                t = 0;
#pragma unroll
                for (int k = 0; k < DM2K_K; k++)
                    if (k < T) dm2k_load<V>(fut[k], dout + (bt + k) * ld_dout + c0);
            }
            if (t == 0 || (starts && starts[bt])) avail = 0;
            /* as an output: the weight and bias gradients */
            float x[V];
            dm2k_load<V>(x, in + bt * ld_in + c0);
#pragma unroll
            for (int v = 0; v < V; v++) gb[v] += fut[0][v], gw[DM2K_K - 1][v] += fut[0][v] * x[v];
#pragma unroll
            for (int k = 1; k < DM2K_K; k++)
                if (k <= avail)
#pragma unroll
                    for (int v = 0; v < V; v++) gw[DM2K_K - 1 - k][v] += fut[0][v] * prev[k - 1][v];
            /* as an input: outputs t + k that reach back to t */
            int reach = 1;
            while (reach < DM2K_K && t + reach < T && !(starts && starts[bt + reach])) reach++;
            float acc[V];
#pragma unroll
            for (int v = 0; v < V; v++) acc[v] = wk[DM2K_K - 1][v] * fut[0][v];
#pragma unroll
            for (int k = 1; k < DM2K_K; k++)
                if (k < reach)
#pragma unroll
                    for (int v = 0; v < V; v++) acc[v] += wk[DM2K_K - 1 - k][v] * fut[k][v];
            dm2k_store<V>(din + bt * ld_din + c0, acc);
            dm2k_window_push<V>(prev, avail, x);
#pragma unroll
            for (int k = 0; k < DM2K_K - 1; k++) dm2k_copy<V>(fut[k], fut[k + 1]);
            if (t + DM2K_K < T) dm2k_load<V>(fut[DM2K_K - 1], dout + (bt + DM2K_K) * ld_dout + c0);
        }
    }
#pragma unroll
    for (int v = 0; v < V; v++) {
#pragma unroll
        for (int j = 0; j < DM2K_K; j++) red[ty][v * (DM2K_K + 1) + j][tx] = gw[j][v];
        red[ty][v * (DM2K_K + 1) + DM2K_K][tx] = gb[v];
    }
    __syncthreads();
    if (ty == 0 && c0 < C)
        for (int v = 0; v < V; v++)
            for (int j = 0; j <= DM2K_K; j++) {
                float sum = 0.0f;
                for (int k = 0; k < 8; k++) sum += red[k][v * (DM2K_K + 1) + j][tx];
                part[((int64_t)blockIdx.y * (DM2K_K + 1) + j) * C + c0 + v] = sum;
            }
}

/* grid ceil(ncols/32), DM2K_THREADS threads; ncols = (taps + 1)·C columns of
 * nparts rows of partials part[y·ncols + j·C + c].  Column j < taps adds to
 * dw[c·taps + j], column j = taps to dbias[c] (skipped when NULL).  Row lane
 * ty sums the rows y ≡ ty (mod 8) in order, then lane 0 the 8 lane sums in
 * order: a fixed order, so the same bits on every run. */
static __global__ void __launch_bounds__(DM2K_THREADS)
    dm2k_sum_parts_kernel(float *dw, float *dbias, const float *part, int nparts, int C, int taps) {
#ifndef SSD_SIM
    __shared__ float red[8][32];
#else
    float(*red)[32] = reinterpret_cast<float(*)[32]>(sim_static_smem<float>(0));
#endif
    const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5, ncols = (taps + 1) * C;
    const int k = blockIdx.x * 32 + tx;
    float s = 0.0f;
    if (k < ncols)
        for (int y = ty; y < nparts; y += 8) s += part[(int64_t)y * ncols + k];
    red[ty][tx] = s;
    __syncthreads();
    if (ty == 0 && k < ncols) {
        float v = 0.0f;
        for (int q = 0; q < 8; q++) v += red[q][tx];
        const int j = k / C, c = k - j * C;
        if (j < taps)
            dw[c * taps + j] += v;
        else if (dbias)
            dbias[c] += v;
    }
}

/* a[r, h] = −softplus(A_log[r·ld + h]) */
static __global__ void dm2k_decay_fwd_kernel(float *a, const bf16 *A_log, int ld, int64_t rows, int H) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < rows * H; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / H;
        int h = (int)(i - r * H);
        a[i] = -dm2k_softplus(ssd_bf2f(A_log[r * ld + h]));
    }
}

/* dA_log[r·ld_d + h] = da[r, h] · (−sigmoid(A_log)) */
static __global__ void dm2k_decay_bwd_kernel(bf16 *dA_log, int ld_d, const float *da, const bf16 *A_log, int ld, int64_t rows,
                                      int H) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < rows * H; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / H;
        int h = (int)(i - r * H);
        dA_log[r * ld_d + h] = ssd_f2bf(-da[i] * dm2k_sigmoid(ssd_bf2f(A_log[r * ld + h])));
    }
}

/* yg = y · silu(z + z_bias).  grid (ceil(inner/V/threads), any), V columns
 * of one row per thread, rows strided by the grid's y (V as for the conv). */
template <int V>
static __global__ void dm2k_gate_fwd_kernel(bf16 *yg, const bf16 *y, const bf16 *z, int ld_z, const float *z_bias,
                                            int64_t rows, int inner) {
    const int c0 = (blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (c0 >= inner) return;
    float zb[V];
#pragma unroll
    for (int v = 0; v < V; v++) zb[v] = z_bias[c0 + v];
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
        float yv[V], zv[V], o[V];
        dm2k_load<V>(yv, y + r * inner + c0);
        dm2k_load<V>(zv, z + r * ld_z + c0);
#pragma unroll
        for (int v = 0; v < V; v++) {
            const float a = zv[v] + zb[v];
            o[v] = yv[v] * a * dm2k_sigmoid(a);
        }
        dm2k_store<V>(yg + r * inner + c0, o);
    }
}

/* grid (ceil(inner/32), row blocks of rpb rows), thread (tx = column, ty = row lane):
 * dy = dyg · silu(v), dz = dyg · y · σ(v)(1 + v(1 − σ(v))); the block's
 * column sums of dz go to part[blockIdx.y·inner + c] (for dz_bias; part may
 * be NULL). */
static __global__ void __launch_bounds__(DM2K_THREADS)
    dm2k_gate_bwd_kernel(bf16 *dy, bf16 *dz, int ld_dz, float *part, int rpb, const bf16 *dyg, const bf16 *y,
                         const bf16 *z, int ld_z, const float *z_bias, int64_t rows, int inner) {
#ifndef SSD_SIM
    __shared__ float red[8][32];
#else
    float(*red)[32] = reinterpret_cast<float(*)[32]>(sim_static_smem<float>(0));
#endif
    const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5, c = blockIdx.x * 32 + tx;
    const int64_t r0 = (int64_t)blockIdx.y * rpb;
    float sum = 0.0f;
    if (c < inner) {
        const float zb = z_bias[c];
        for (int64_t r = r0 + ty; r < r0 + rpb && r < rows; r += 8) {
            const int64_t i = r * inner + c;
            const float v = ssd_bf2f(z[r * ld_z + c]) + zb, sg = dm2k_sigmoid(v), g = ssd_bf2f(dyg[i]);
            const float gz = g * ssd_bf2f(y[i]) * sg * (1.0f + v * (1.0f - sg));
            dy[i] = ssd_f2bf(g * v * sg);
            dz[r * ld_dz + c] = ssd_f2bf(gz);
            sum += gz;
        }
    }
    red[ty][tx] = sum;
    __syncthreads();
    if (ty == 0 && c < inner && part) {
        float s = 0.0f;
        for (int k = 0; k < 8; k++) s += red[k][tx];
        part[(int64_t)blockIdx.y * inner + c] = s;
    }
}

/* ---- decode ------------------------------------------------------------------------ */

/* One token, every channel of every row: shift the conv state left, append
 * proj[b, ch] (zero the state first where reset[b]) and convolve.
 * xbc [B, conv_dim] fp32. */
static __global__ void dm2k_step_conv_kernel(float *xbc, float *conv_state, const bf16 *proj, int ld_proj, const float *w,
                                      const float *bias, const uint8_t *reset, int B, int conv_dim) {
    const int64_t total = (int64_t)B * conv_dim;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int b = (int)(i / conv_dim), ch = (int)(i - (int64_t)b * conv_dim);
        float *st = conv_state + i * DM2K_K;
        const bool zero = reset && reset[b];
        float s[DM2K_K];
        for (int j = 0; j < DM2K_K - 1; j++) s[j] = zero ? 0.0f : st[j + 1];
        s[DM2K_K - 1] = ssd_bf2f(proj[(int64_t)b * ld_proj + ch]);
        float acc = bias[ch];
        for (int j = 0; j < DM2K_K; j++) {
            st[j] = s[j];
            acc += w[ch * DM2K_K + j] * s[j];
        }
        xbc[i] = acc;
    }
}

/* One block per (b, h): S = α S + x ⊗ B (S zeroed first where reset[b]),
 * y = S C + D x, yg = y · silu(z + z_bias).  Warp w takes rows p ≡ w (mod 4),
 * lanes take the state columns n. */
static __global__ void dm2k_step_ssm_kernel(bf16 *yg, float *ssm, const float *xbc, const bf16 *proj, int ld_proj,
                                     const float *D, const float *z_bias, const uint8_t *reset, int B, int H, int P,
                                     int N, int G) {
    const int bh = blockIdx.x, b = bh / H, h = bh - b * H, g = h / (H / G);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    if (b >= B) return;
    const int inner = H * P, conv_dim = inner + 2 * G * N;
    const float *xr = xbc + (int64_t)b * conv_dim;
    const float *x = xr + h * P, *Bv = xr + inner + g * N, *Cv = xr + inner + G * N + g * N;
    const bf16 *pr = proj + (int64_t)b * ld_proj;
    const float alpha = expf(-dm2k_softplus(ssd_bf2f(pr[conv_dim + inner + h])));
    const bool zero = reset && reset[b];
    float *S = ssm + (int64_t)bh * P * N;
    for (int p = warp; p < P; p += nwarps) {
        const float xp = x[p];
        float acc = 0.0f;
        for (int n = lane; n < N; n += 32) {
            float s = (zero ? 0.0f : alpha * S[(int64_t)p * N + n]) + xp * Bv[n];
            S[(int64_t)p * N + n] = s;
            acc += s * Cv[n];
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(SSD_FULL, acc, o);
        if (lane == 0) {
            const float y = acc + D[h] * xp, v = ssd_bf2f(pr[conv_dim + h * P + p]) + z_bias[h * P + p];
            yg[(int64_t)b * inner + h * P + p] = ssd_f2bf(y * v * dm2k_sigmoid(v));
        }
    }
}

/* After a forward over a prompt: the conv state (last 4 pre-conv inputs of
 * the row's last document, oldest first, 0 before it) from proj. */
static __global__ void dm2k_conv_state_kernel(float *conv_state, const bf16 *proj, int ld_proj, const uint8_t *starts, int B,
                                       int T, int conv_dim) {
    const int64_t total = (int64_t)B * conv_dim * DM2K_K;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int j = (int)(i % DM2K_K);
        const int64_t bc = i / DM2K_K;
        const int b = (int)(bc / conv_dim), ch = (int)(bc - (int64_t)b * conv_dim);
        const int t = T - DM2K_K + j;
        bool keep = t >= 0;
        for (int u = t + 1; keep && u < T; u++) /* a start after t cuts it off */
            if (starts && starts[(int64_t)b * T + u]) keep = false;
        conv_state[i] = keep ? ssd_bf2f(proj[((int64_t)b * T + t) * ld_proj + ch]) : 0.0f;
    }
}

#endif
