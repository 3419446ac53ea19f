/* A host simulator of the small CUDA surface the SSD kernels use
 * (kernels/ssd_kernels.cuh, kernels/ssd_matrix.cuh, kernels/dm2_kernels.cuh),
 * so that tests/unit/test_ssd_sim.cpp can run the very same kernel source
 * on a machine without a GPU.
 *
 * The threads of a block run as cooperative coroutines (ucontext) that meet
 * at barriers; blocks run one after another.  Warp primitives are rebuilt
 * lane by lane from the PTX ISA's definitions: shuffles, ldmatrix .x4 with
 * and without .trans, mma.sync m16n8k16 bf16 → fp32 (accumulated in fp32).
 * Shared memory is poisoned with NaN before every block, so a read of an
 * unwritten element shows.  A block whose threads all wait at different
 * barriers is reported as a deadlock.
 *
 * This checks indexing, fragment layouts, masking and block-level logic; it
 * cannot check the hardware itself (make test-gpu does). */
#ifndef RA_CUDA_SIM_H
#define RA_CUDA_SIM_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <algorithm>
#include <functional>
#include <vector>

using std::max;
using std::min;

#define SSD_SIM 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__

struct sim_dim3 {
    unsigned x = 1, y = 1, z = 1;
};
static sim_dim3 threadIdx, blockIdx, gridDim, blockDim;

struct bf16 {
    uint16_t bits;
};
struct uint4 {
    uint32_t x, y, z, w;
};
static inline uint4 make_uint4(uint32_t x, uint32_t y, uint32_t z, uint32_t w) { return uint4{x, y, z, w}; }
struct uint2 {
    uint32_t x, y;
};
static inline uint2 make_uint2(uint32_t x, uint32_t y) { return uint2{x, y}; }
struct float4 {
    float x, y, z, w;
};
static inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

static inline uint16_t sim_f2bf_bits(float f) { /* round to nearest even, as __float2bfloat16 */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static inline float sim_bf2f_bits(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline float ssd_bf2f(bf16 v) { return sim_bf2f_bits(v.bits); }
static inline bf16 ssd_f2bf(float v) { return bf16{sim_f2bf_bits(v)}; }
static inline uint32_t ssd_pack2(float lo, float hi) {
    return (uint32_t)sim_f2bf_bits(lo) | ((uint32_t)sim_f2bf_bits(hi) << 16);
}
static inline float ssd_exp(float x) { return expf(x); }
/* Vector accesses through memcpy (the host compiler's aliasing rules),
 * checking the alignment the hardware demands. */
static inline void sim_check_aligned(const void *p, uintptr_t bytes, const char *what) {
    if (((uintptr_t)p & (bytes - 1)) != 0) {
        fprintf(stderr, "%s: %p not %u-byte aligned\n", what, p, (unsigned)bytes);
        exit(1);
    }
}
static inline uint4 ssd_ldg16(const bf16 *p) {
    sim_check_aligned(p, 16, "ssd_ldg16");
    uint4 v;
    memcpy(&v, p, 16);
    return v;
}
static inline float4 ssd_ldg_f4(const float *p) {
    sim_check_aligned(p, 16, "ssd_ldg_f4");
    float4 v;
    memcpy(&v, p, 16);
    return v;
}
static inline uint2 ssd_ldg8(const bf16 *p) {
    sim_check_aligned(p, 8, "ssd_ldg8");
    uint2 v;
    memcpy(&v, p, 8);
    return v;
}
static inline void ssd_st16(bf16 *p, uint4 v) {
    sim_check_aligned(p, 16, "ssd_st16");
    memcpy(p, &v, 16);
}
static inline void ssd_st8(bf16 *p, uint2 v) {
    sim_check_aligned(p, 8, "ssd_st8");
    memcpy(p, &v, 8);
}
static inline float ssd_as_float(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- cooperative threads -------------------------------------------------- */

#define SIM_MAX_THREADS 256
#define SIM_STACK_BYTES (128 * 1024)
static ucontext_t sim_sched, sim_ctx[SIM_MAX_THREADS];
static int sim_done[SIM_MAX_THREADS];
static int sim_cur;
static long sim_progress;

struct sim_barrier {
    int n, count;
    unsigned gen;
};
static sim_barrier sim_block_bar, sim_warp_bar[SIM_MAX_THREADS / 32];

static void sim_yield(void) { swapcontext(&sim_ctx[sim_cur], &sim_sched); }

static void sim_wait(sim_barrier &b) {
    unsigned g = b.gen;
    if (++b.count == b.n) {
        b.count = 0;
        b.gen++;
        sim_progress++;
        return;
    }
    while (b.gen == g) sim_yield();
    sim_progress++;
}

static inline int sim_lane(void) { return (int)(threadIdx.x & 31); }
static inline int sim_warp(void) { return (int)(threadIdx.x >> 5); }

static void __syncthreads(void) { sim_wait(sim_block_bar); }
static void __syncwarp(unsigned = 0xffffffffu) { sim_wait(sim_warp_bar[sim_warp()]); }

/* per-warp mailboxes for the collective operations */
struct sim_mailbox {
    const void *addr[32];
    uint32_t a[32][4], b[32][2];
    uint64_t v[32];
};
static sim_mailbox sim_box[SIM_MAX_THREADS / 32];

template <class T>
static T sim_shfl_from(T v, int src, bool keep_own) {
    int w = sim_warp(), l = sim_lane();
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof v);
    sim_box[w].v[l] = bits;
    sim_wait(sim_warp_bar[w]);
    T r = v;
    if (!keep_own) memcpy(&r, &sim_box[w].v[src], sizeof r);
    sim_wait(sim_warp_bar[w]);
    return r;
}
template <class T>
static T __shfl_xor_sync(unsigned, T v, int o) { return sim_shfl_from(v, sim_lane() ^ o, false); }
template <class T>
static T __shfl_sync(unsigned, T v, int src) { return sim_shfl_from(v, src & 31, false); }
template <class T>
static T __shfl_up_sync(unsigned, T v, int d) {
    int src = sim_lane() - d;
    return sim_shfl_from(v, src < 0 ? 0 : src, src < 0);
}
template <class T>
static T __shfl_down_sync(unsigned, T v, int d) {
    int src = sim_lane() + d;
    return sim_shfl_from(v, src > 31 ? 31 : src, src > 31);
}

/* No atomicAdd: the simulated kernels sum in a fixed order so that their
 * GPU runs are bit-reproducible; an atomic in them fails to compile here. */

/* ldmatrix .x4: lanes 8m..8m+7 give the row addresses of matrix m; lane
 * (g = lane/4, t = lane%4) receives in r[m] elements [g][2t], [g][2t+1]; with
 * .trans, elements [2t][g], [2t+1][g]. */
static void sim_ldmatrix(uint32_t r[4], const void *p, bool trans) {
    int w = sim_warp(), l = sim_lane();
    if (((uintptr_t)p & 15) != 0) {
        fprintf(stderr, "ldmatrix: row address %p not 16-byte aligned (lane %d)\n", p, l);
        exit(1);
    }
    sim_box[w].addr[l] = p;
    sim_wait(sim_warp_bar[w]);
    int g = l >> 2, t = l & 3;
    for (int m = 0; m < 4; m++) {
        uint16_t lo, hi;
        if (!trans) {
            const uint16_t *row = (const uint16_t *)sim_box[w].addr[8 * m + g];
            lo = row[2 * t], hi = row[2 * t + 1];
        } else {
            const uint16_t *row0 = (const uint16_t *)sim_box[w].addr[8 * m + 2 * t];
            const uint16_t *row1 = (const uint16_t *)sim_box[w].addr[8 * m + 2 * t + 1];
            lo = row0[g], hi = row1[g];
        }
        r[m] = (uint32_t)lo | ((uint32_t)hi << 16);
    }
    sim_wait(sim_warp_bar[w]);
}
static void ssd_ldsm(uint32_t r[4], const void *p) { sim_ldmatrix(r, p, false); }
static void ssd_ldsm_t(uint32_t r[4], const void *p) { sim_ldmatrix(r, p, true); }

/* mma.m16n8k16.row.col bf16 → f32: rebuild A (16×16) and B (16×8) from every
 * lane's fragments, then each lane computes its C elements. */
static void ssd_mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    int w = sim_warp(), l = sim_lane();
    memcpy(sim_box[w].a[l], a, 16);
    sim_box[w].b[l][0] = b0, sim_box[w].b[l][1] = b1;
    sim_wait(sim_warp_bar[w]);
    float A[16][16], B[16][8];
    for (int L = 0; L < 32; L++) {
        int g = L >> 2, t = L & 3;
        const uint32_t *ra = sim_box[w].a[L];
        A[g][2 * t] = sim_bf2f_bits(ra[0] & 0xffff), A[g][2 * t + 1] = sim_bf2f_bits(ra[0] >> 16);
        A[g + 8][2 * t] = sim_bf2f_bits(ra[1] & 0xffff), A[g + 8][2 * t + 1] = sim_bf2f_bits(ra[1] >> 16);
        A[g][2 * t + 8] = sim_bf2f_bits(ra[2] & 0xffff), A[g][2 * t + 9] = sim_bf2f_bits(ra[2] >> 16);
        A[g + 8][2 * t + 8] = sim_bf2f_bits(ra[3] & 0xffff), A[g + 8][2 * t + 9] = sim_bf2f_bits(ra[3] >> 16);
        B[2 * t][g] = sim_bf2f_bits(sim_box[w].b[L][0] & 0xffff);
        B[2 * t + 1][g] = sim_bf2f_bits(sim_box[w].b[L][0] >> 16);
        B[2 * t + 8][g] = sim_bf2f_bits(sim_box[w].b[L][1] & 0xffff);
        B[2 * t + 9][g] = sim_bf2f_bits(sim_box[w].b[L][1] >> 16);
    }
    int g = l >> 2, t = l & 3;
    for (int e = 0; e < 4; e++) {
        int row = g + (e >= 2 ? 8 : 0), col = 2 * t + (e & 1);
        float s = 0;
        for (int k = 0; k < 16; k++) s += A[row][k] * B[k][col];
        c[e] += s;
    }
    sim_wait(sim_warp_bar[w]);
}

/* ---- shared memory ------------------------------------------------------- */

alignas(16) static unsigned char sim_smem_buf[232 * 1024];
alignas(16) static unsigned char sim_static_buf[48 * 1024]; /* the static shared-memory limit of a CUDA block */
#define SSD_DYNAMIC_SMEM(name) unsigned char *name = sim_smem_buf
/* A kernel's one static "__shared__ T x[n]" array (n ≤ 16 KiB). */
template <class T>
static T *sim_static_smem(size_t) {
    return reinterpret_cast<T *>(sim_static_buf);
}

/* ---- running a grid ------------------------------------------------------- */

static std::function<void()> sim_entry;
static void sim_thread_main(void) {
    sim_entry();
    sim_done[sim_cur] = 1;
    sim_progress++;
}

static void sim_launch(unsigned gx, unsigned gy, unsigned threads, std::function<void()> fn) {
    static std::vector<char> stacks((size_t)SIM_MAX_THREADS * SIM_STACK_BYTES);
    if (threads > SIM_MAX_THREADS || threads % 32) {
        fprintf(stderr, "sim_launch: %u threads unsupported\n", threads);
        exit(1);
    }
    sim_entry = fn;
    gridDim.x = gx, gridDim.y = gy, gridDim.z = 1;
    blockDim.x = threads, blockDim.y = blockDim.z = 1;
    sim_block_bar = {(int)threads, 0, 0};
    for (unsigned w = 0; w < threads / 32; w++) sim_warp_bar[w] = {32, 0, 0};
    for (unsigned by = 0; by < gy; by++)
        for (unsigned bx = 0; bx < gx; bx++) {
            blockIdx.x = bx, blockIdx.y = by, blockIdx.z = 0;
            memset(sim_smem_buf, 0xFF, sizeof sim_smem_buf);   /* NaN: unloaded tiles show */
            memset(sim_static_buf, 0xFF, sizeof sim_static_buf);
            for (unsigned i = 0; i < threads; i++) {
                getcontext(&sim_ctx[i]);
                sim_ctx[i].uc_stack.ss_sp = &stacks[(size_t)i * SIM_STACK_BYTES];
                sim_ctx[i].uc_stack.ss_size = SIM_STACK_BYTES;
                sim_ctx[i].uc_link = &sim_sched;
                makecontext(&sim_ctx[i], sim_thread_main, 0);
                sim_done[i] = 0;
            }
            int remaining = (int)threads;
            while (remaining) {
                long before = sim_progress;
                remaining = 0;
                for (unsigned i = 0; i < threads; i++) {
                    if (sim_done[i]) continue;
                    sim_cur = (int)i;
                    threadIdx.x = i, threadIdx.y = threadIdx.z = 0;
                    swapcontext(&sim_sched, &sim_ctx[i]);
                    remaining += !sim_done[i];
                }
                if (remaining && sim_progress == before) {
                    fprintf(stderr, "sim: block (%u,%u): deadlock, %d threads wait at barriers\n", bx, by, remaining);
                    exit(1);
                }
            }
            bool stuck = sim_block_bar.count != 0;
            for (unsigned w = 0; w < threads / 32; w++) stuck |= sim_warp_bar[w].count != 0;
            if (stuck) {
                fprintf(stderr, "sim: block (%u,%u) ended with threads waiting at a barrier\n", bx, by);
                exit(1);
            }
        }
}

#endif
