/* Host simulation of the flash attention kernel (kernels/flash_attention.cuh).
 *
 * The GPU kernel's source is compiled for the CPU with FA_SIM defined.  The
 * warp primitives it uses are re-implemented here lane by lane from the PTX
 * ISA's fragment layouts (ldmatrix .x4 with and without .trans, mma.sync
 * m16n8k16 bf16, shfl.xor), the 128 threads of a block run as cooperative
 * coroutines (ucontext) that meet at barriers, and cp.async copies at once.
 * The result is compared with a float64 attention on the same bf16 inputs.
 *
 * This checks the kernel's indexing, masking, online softmax and pipeline
 * logic on a machine without a GPU; it cannot check the hardware itself
 * (make test-gpu does).  Built and run by make unit / make test (g++ only). */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <algorithm>
#include <vector>

using std::min;

/* ---- the CUDA surface the kernel uses ----------------------------------- */

#define FA_SIM 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct dim3s {
    unsigned x = 0, y = 0, z = 0;
};
static dim3s threadIdx, blockIdx, gridDim, blockDim;

struct bf16 {
    uint16_t bits;
};
struct uint4 {
    uint32_t x, y, z, w;
};
static inline uint4 make_uint4(uint32_t x, uint32_t y, uint32_t z, uint32_t w) { return uint4{x, y, z, w}; }

static inline uint16_t f2bf(float f) { /* round to nearest even */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static inline float bf2f(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- cooperative threads -------------------------------------------------- */

#ifndef FA_BR /* the kernel's default, which the header would set */
#define FA_BR 64
#endif
#define NTHREADS (FA_BR * 2) /* FA_THREADS */
#define STACK_BYTES (256 * 1024)
static ucontext_t sched_ctx, thread_ctx[NTHREADS];
static int thread_done[NTHREADS];
static int current;

static void sim_yield(void) { swapcontext(&thread_ctx[current], &sched_ctx); }

struct sim_barrier {
    int n, count;
    unsigned gen;
};
static sim_barrier block_bar = {NTHREADS, 0, 0}, warp_bar[NTHREADS / 32];

static void sim_wait(sim_barrier &b) {
    unsigned g = b.gen;
    if (++b.count == b.n) {
        b.count = 0;
        b.gen++;
        return;
    }
    while (b.gen == g) sim_yield();
}

static void __syncthreads(void) { sim_wait(block_bar); }

/* per-warp mailboxes for the collective operations */
struct mailbox {
    const void *addr[32];
    uint32_t a[32][4], b[32][2];
    float f[32];
};
static mailbox box[NTHREADS / 32];

static inline int lane_id(void) { return (int)(threadIdx.x & 31); }
static inline int warp_id(void) { return (int)(threadIdx.x >> 5); }

static float __shfl_xor_sync(unsigned, float v, int o) {
    int w = warp_id(), l = lane_id();
    box[w].f[l] = v;
    sim_wait(warp_bar[w]);
    float r = box[w].f[l ^ o];
    sim_wait(warp_bar[w]);
    return r;
}

static int atomicMin(int *p, int v) {
    int old = *p;
    if (v < old) *p = v;
    return old;
}
static int atomicMax(int *p, int v) {
    int old = *p;
    if (v > old) *p = v;
    return old;
}

static void cp_async16(void *dst, const void *src, bool valid) {
    if (valid)
        memcpy(dst, src, 16);
    else
        memset(dst, 0, 16);
}
static void cp_async_commit(void) {}
template <int N>
static void cp_async_wait(void) {}

/* ldmatrix .x4: lanes 8m..8m+7 give the row addresses of matrix m; lane
 * (g = lane/4, t = lane%4) receives in r[m] elements [g][2t], [g][2t+1]; with
 * .trans, elements [2t][g], [2t+1][g]. */
static void ldmatrix_common(uint32_t r[4], const void *p, bool trans) {
    int w = warp_id(), l = lane_id();
    box[w].addr[l] = p;
    sim_wait(warp_bar[w]);
    int g = l >> 2, t = l & 3;
    for (int m = 0; m < 4; m++) {
        uint16_t lo, hi;
        if (!trans) {
            const uint16_t *row = (const uint16_t *)box[w].addr[8 * m + g];
            lo = row[2 * t], hi = row[2 * t + 1];
        } else {
            const uint16_t *row0 = (const uint16_t *)box[w].addr[8 * m + 2 * t];
            const uint16_t *row1 = (const uint16_t *)box[w].addr[8 * m + 2 * t + 1];
            lo = row0[g], hi = row1[g];
        }
        r[m] = (uint32_t)lo | ((uint32_t)hi << 16);
    }
    sim_wait(warp_bar[w]);
}
static void ldmatrix_x4(uint32_t r[4], const void *p) { ldmatrix_common(r, p, false); }
static void ldmatrix_x4_trans(uint32_t r[4], const void *p) { ldmatrix_common(r, p, true); }

/* mma.m16n8k16.row.col bf16 -> f32: rebuild A (16x16) and B (16x8) from
 * every lane's fragments, then each lane computes its C elements. */
static void mma_16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    int w = warp_id(), l = lane_id();
    memcpy(box[w].a[l], a, 16);
    box[w].b[l][0] = b0, box[w].b[l][1] = b1;
    sim_wait(warp_bar[w]);
    float A[16][16], B[16][8];
    for (int L = 0; L < 32; L++) {
        int g = L >> 2, t = L & 3;
        const uint32_t *ra = box[w].a[L];
        A[g][2 * t] = bf2f(ra[0] & 0xffff), A[g][2 * t + 1] = bf2f(ra[0] >> 16);
        A[g + 8][2 * t] = bf2f(ra[1] & 0xffff), A[g + 8][2 * t + 1] = bf2f(ra[1] >> 16);
        A[g][2 * t + 8] = bf2f(ra[2] & 0xffff), A[g][2 * t + 9] = bf2f(ra[2] >> 16);
        A[g + 8][2 * t + 8] = bf2f(ra[3] & 0xffff), A[g + 8][2 * t + 9] = bf2f(ra[3] >> 16);
        B[2 * t][g] = bf2f(box[w].b[L][0] & 0xffff), B[2 * t + 1][g] = bf2f(box[w].b[L][0] >> 16);
        B[2 * t + 8][g] = bf2f(box[w].b[L][1] & 0xffff), B[2 * t + 9][g] = bf2f(box[w].b[L][1] >> 16);
    }
    int g = l >> 2, t = l & 3;
    for (int e = 0; e < 4; e++) {
        int row = g + (e >= 2 ? 8 : 0), col = 2 * t + (e & 1);
        float s = 0;
        for (int k = 0; k < 16; k++) s += A[row][k] * B[k][col];
        c[e] += s;
    }
    sim_wait(warp_bar[w]);
}

static uint32_t pack_bf16x2(float lo, float hi) { return (uint32_t)f2bf(lo) | ((uint32_t)f2bf(hi) << 16); }

alignas(16) static unsigned char sim_smem[(FA_BR + 4 * 64) * (128 + 8) * 2]; /* the largest head dim */
static unsigned char *fa_sim_dynamic_smem(void) { return sim_smem; }

#include "flash_attention.cuh"

/* ---- running a grid ------------------------------------------------------- */

static void (*sim_entry)(void);
static void thread_main(void) {
    sim_entry();
    thread_done[current] = 1;
    /* returning resumes uc_link = sched_ctx */
}

template <int HD>
static const fa_params *kernel_params;
template <int HD>
static void run_kernel(void) {
    flash_attention_kernel<HD>(*kernel_params<HD>);
}

template <int HD>
static void sim_launch(const fa_params &p) {
    static std::vector<char> stacks((size_t)NTHREADS * STACK_BYTES);
    kernel_params<HD> = &p;
    sim_entry = run_kernel<HD>;
    gridDim.x = (unsigned)(p.B * p.H), gridDim.y = (unsigned)((p.T + FA_BR - 1) / FA_BR), gridDim.z = 1;
    blockDim.x = NTHREADS;
    memset(sim_smem, 0xFF, sizeof sim_smem); /* NaN garbage: unloaded tiles show */
    for (unsigned by = 0; by < gridDim.y; by++)
        for (unsigned bx = 0; bx < gridDim.x; bx++) {
            blockIdx.x = bx, blockIdx.y = by, blockIdx.z = 0;
            for (int i = 0; i < NTHREADS; i++) {
                getcontext(&thread_ctx[i]);
                thread_ctx[i].uc_stack.ss_sp = &stacks[(size_t)i * STACK_BYTES];
                thread_ctx[i].uc_stack.ss_size = STACK_BYTES;
                thread_ctx[i].uc_link = &sched_ctx;
                makecontext(&thread_ctx[i], thread_main, 0);
                thread_done[i] = 0;
            }
            int remaining = NTHREADS;
            while (remaining) {
                remaining = 0;
                for (int i = 0; i < NTHREADS; i++) {
                    if (thread_done[i]) continue;
                    current = i;
                    threadIdx.x = (unsigned)i;
                    swapcontext(&sched_ctx, &thread_ctx[i]);
                    remaining += !thread_done[i];
                }
            }
            if (block_bar.count || warp_bar[0].count || warp_bar[1].count || warp_bar[2].count || warp_bar[3].count) {
                fprintf(stderr, "block (%u,%u) ended with threads waiting at a barrier\n", bx, by);
                exit(1);
            }
        }
}

/* ---- the check ------------------------------------------------------------- */

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float randf(void) {
    rng ^= rng >> 12, rng ^= rng << 25, rng ^= rng >> 27;
    return (float)(((rng * 0x2545F4914F6CDD1Dull) >> 40) * (1.0 / 8388608.0) - 1.0);
}

/* docs: 0 none, else a document starts at each position with chance
 * 1/docs (29: several per 64-row tile; 151: long documents, so key tiles
 * past every row's start run unmasked). */
struct sim_case {
    int B, T, H, Hkv, hd, docs, head_mask, fused;
};

static int failures;

template <int HD>
static void check(sim_case c) {
    int B = c.B, T = c.T, H = c.H, Hkv = c.Hkv;
    int64_t qs = c.fused ? (int64_t)(H + 2 * Hkv) * HD : (int64_t)H * HD;
    int64_t kvs = c.fused ? qs : (int64_t)Hkv * HD;
    size_t n = (size_t)B * T;
    std::vector<bf16> qbuf(n * qs), kbuf(c.fused ? 0 : n * kvs), vbuf(c.fused ? 0 : n * kvs);
    for (auto &x : qbuf) x.bits = f2bf(2 * randf());
    for (auto &x : kbuf) x.bits = f2bf(2 * randf());
    for (auto &x : vbuf) x.bits = f2bf(randf());
    const bf16 *q = qbuf.data();
    const bf16 *k = c.fused ? qbuf.data() + H * HD : kbuf.data();
    const bf16 *v = c.fused ? qbuf.data() + (H + Hkv) * HD : vbuf.data();
    std::vector<int32_t> ds(n, 0);
    if (c.docs)
        for (int b = 0; b < B; b++) {
            int start = 0;
            for (int t = 0; t < T; t++) {
                if (t > 0 && (rng = rng * 6364136223846793005ull + 1, (rng >> 33) % (unsigned)c.docs == 0)) start = t;
                ds[(size_t)b * T + t] = start;
            }
        }
    std::vector<uint8_t> keep((size_t)B * H, 1);
    if (c.head_mask)
        for (auto &x : keep) x = randf() > -0.4f;
    std::vector<bf16> out(n * H * HD);
    for (auto &x : out) x.bits = 0xFFFF; /* NaN: unwritten values show */

    fa_params p;
    p.out = out.data(), p.out_stride = (int64_t)H * HD;
    p.q = q, p.q_stride = qs, p.k = k, p.v = v, p.kv_stride = kvs;
    p.doc_start = c.docs ? ds.data() : nullptr;
    p.head_keep = c.head_mask ? keep.data() : nullptr;
    p.B = B, p.T = T, p.H = H, p.Hkv = Hkv;
    p.scale_log2 = (float)(1.4426950408889634 / sqrt((double)HD));
    sim_launch<HD>(p);

    /* float64 reference */
    double num = 0, den = 0;
    size_t nan = 0;
    std::vector<double> sc(T), o(HD);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int g = h / (H / Hkv);
            for (int t = 0; t < T; t++) {
                int lo = c.docs ? ds[(size_t)b * T + t] : 0;
                double mx = -INFINITY;
                for (int j = lo; j <= t; j++) {
                    double s = 0;
                    for (int d = 0; d < HD; d++)
                        s += (double)bf2f(q[((size_t)b * T + t) * qs + h * HD + d].bits) *
                             bf2f(k[((size_t)b * T + j) * kvs + g * HD + d].bits);
                    sc[j] = s / sqrt((double)HD);
                    mx = std::max(mx, sc[j]);
                }
                double sum = 0;
                for (int j = lo; j <= t; j++) sum += (sc[j] = exp(sc[j] - mx));
                for (int d = 0; d < HD; d++) {
                    double a = 0;
                    for (int j = lo; j <= t; j++) a += sc[j] * bf2f(v[((size_t)b * T + j) * kvs + g * HD + d].bits);
                    o[d] = keep[(size_t)b * H + h] ? a / sum : 0.0;
                }
                for (int d = 0; d < HD; d++) {
                    float got = bf2f(out[((size_t)b * T + t) * H * HD + h * HD + d].bits);
                    if (isnan(got)) {
                        nan++;
                        continue;
                    }
                    num += (got - o[d]) * (got - o[d]);
                    den += o[d] * o[d];
                }
            }
        }
    double rel = sqrt(num / den);
    bool ok = nan == 0 && rel <= 1e-2;
    failures += !ok;
    printf("%s - flash sim B=%d T=%d H=%d Hkv=%d hd=%d%s%s%s: rel_l2 %.2e%s\n", ok ? "ok" : "not ok", B, T, H, Hkv,
           HD, c.docs ? " docs" : "", c.head_mask ? " head_keep" : "", c.fused ? " fused" : "", rel,
           nan ? " (NaN/unwritten values)" : "");
    fflush(stdout);
}

int main(void) {
    for (auto &w : warp_bar) w = sim_barrier{32, 0, 0};
    check<64>({1, 1, 2, 2, 64, 0, 0, 0});
    check<64>({2, 77, 4, 1, 64, 0, 0, 0});
    check<64>({1, 200, 8, 2, 64, 29, 0, 0});
    check<64>({2, 512, 2, 1, 64, 151, 0, 0});
    check<128>({1, 130, 2, 2, 128, 0, 0, 0});
    check<128>({1, 129, 8, 1, 128, 0, 1, 1});
    check<16>({2, 70, 4, 4, 16, 0, 1, 0});
    check<32>({1, 256, 2, 1, 32, 29, 0, 1});
    check<96>({1, 65, 2, 1, 96, 0, 0, 0});
    printf("%s\n", failures ? "FAILED" : "all passed");
    return failures ? 1 : 0;
}
