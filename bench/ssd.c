/* Benchmark of the CUDA chunked SSD scan (kernels/ssd_cuda.h), DESIGN §8 and
 * issue 6: forward, backward and forward+backward of the SSD core on
 * B × L tokens, H heads of dim P, state N, B/C groups G (default G = H),
 * chunk 128, random bf16 inputs (uniform, decays a = −softplus(u)).
 *
 *   build/bench/ssd [--batch 4] [--seq-len 2048] [--heads 32] [--head-dim 64] [--d-state 64]
 *                   [--groups H] [--chunk 128] [--warmup 3] [--iters 20]
 *
 * Times with CUDA events after warm-up; reports medians.  "backward" alone
 * recomputes the chunk states (cuda_ssd_chunked_backward); "forward+backward"
 * is a training step: the backward reuses the states the forward left in the
 * workspace (cuda_ssd_chunked_backward_after_forward).  FLOPs, counted identically in
 * bench/torch_ref/ssd.py (the dense chunked algorithm, per token and head):
 *   forward  2·Q·(N + P)  (C Bᵀ and its product with X, full Q×Q blocks)
 *          + 4·P·N        (chunk end states, state → output)
 *   backward = 2 × forward; forward+backward = 3 × forward.
 * (The kernels skip the upper triangles, so the arithmetic they do is less.)
 * Bytes: each input read once and each output written once per pass:
 *   forward  x, B, C (bf16), a (fp32) in; y (bf16) out
 *   backward x, B, C, dy (bf16), a in; dx, dB, dC (bf16), da (fp32) out
 * Peak memory: device memory in use after the timed runs minus before the
 * tensors were made (inputs, outputs, gradients, workspace).
 * Ends with one "RESULT key=value ..." line for bench/run_ssd.sh. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "bench.h"
#include "ops_cuda.h"
#include "ssd.h"
#include "ssd_cuda.h"

#define CK(x)                                                                                    \
    do {                                                                                         \
        cudaError_t e_ = (x);                                                                    \
        if (e_ != cudaSuccess) {                                                                 \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            exit(EX_SOFTWARE);                                                                   \
        }                                                                                        \
    } while (0)

static size_t used_bytes(void) {
    size_t f, t;
    cuda_mem_info(&f, &t);
    return t - f;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float randu(void) { /* [-1, 1) */
    rng_state ^= rng_state >> 12, rng_state ^= rng_state << 25, rng_state ^= rng_state >> 27;
    return (float)(((rng_state * 0x2545F4914F6CDD1Dull) >> 40) * (1.0 / 8388608.0) * 2.0 - 1.0);
}

/* uniform [-scale, scale) bf16 on the device */
static uint16_t *dev_random_bf16(size_t n, float scale) {
    float *h = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = scale * randu();
    uint16_t *d = cuda_malloc(n * sizeof(uint16_t));
    cuda_upload_bf16(d, h, n);
    free(h);
    return d;
}
static float *dev_upload_f32(const float *h, size_t n) {
    float *d = cuda_malloc(n * sizeof(float));
    cuda_upload(d, h, n * sizeof(float));
    return d;
}

static void usage(void) {
    fprintf(stderr,
            "usage: ssd [--batch B] [--seq-len L] [--heads H] [--head-dim P] [--d-state N] [--groups G] [--chunk Q]\n"
            "           [--warmup N] [--iters N]\n");
    exit(EX_USAGE);
}

typedef struct bench_ctx {
    ssd_dims d;
    int chunk;
    uint16_t *x, *Bm, *Cm, *dy, *y, *dx, *dB, *dC;
    float *a, *D, *da, *dD;
    void *ws;
} bench_ctx;

static void run_fwd(bench_ctx *c) {
    cuda_ssd_chunked_forward(c->y, NULL, c->x, c->Bm, c->Cm, c->a, c->D, NULL, NULL, &c->d, c->chunk, c->ws);
}
static void run_bwd(bench_ctx *c) {
    cuda_ssd_chunked_backward(c->dx, c->dB, c->dC, c->da, c->dD, NULL, c->dy, c->x, c->Bm, c->Cm, c->a, c->D, NULL,
                              NULL, &c->d, c->chunk, c->ws);
}
/* a training step: the backward reuses the chunk states the forward left in the workspace */
static void run_both(bench_ctx *c) {
    run_fwd(c);
    cuda_ssd_chunked_backward_after_forward(c->dx, c->dB, c->dC, c->da, c->dD, NULL, c->dy, c->x, c->Bm, c->Cm, c->a,
                                            c->D, NULL, NULL, &c->d, c->chunk, c->ws);
}

/* median ms of iters runs of fn after warmup runs */
static float time_ms(void (*fn)(bench_ctx *), bench_ctx *c, int warmup, int iters) {
    cudaStream_t s = (cudaStream_t)cuda_get_stream();
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int i = 0; i < warmup; i++) fn(c);
    cuda_synchronize();
    float *ms = xmalloc(sizeof(float) * iters);
    for (int i = 0; i < iters; i++) {
        CK(cudaEventRecord(e0, s));
        fn(c);
        CK(cudaEventRecord(e1, s));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&ms[i], e0, e1));
    }
    float m = bench_median(ms, iters);
    free(ms);
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    return m;
}

int main(int argc, char **argv) {
    int B = 4, L = 2048, H = 32, P = 64, N = 64, G = 0, chunk = 128, warmup = 3, iters = 20;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc) usage();
        int v = atoi(argv[i + 1]);
        if (v < 1) usage();
        if (!strcmp(argv[i], "--batch")) B = v;
        else if (!strcmp(argv[i], "--seq-len")) L = v;
        else if (!strcmp(argv[i], "--heads")) H = v;
        else if (!strcmp(argv[i], "--head-dim")) P = v;
        else if (!strcmp(argv[i], "--d-state")) N = v;
        else if (!strcmp(argv[i], "--groups")) G = v;
        else if (!strcmp(argv[i], "--chunk")) chunk = v;
        else if (!strcmp(argv[i], "--warmup")) warmup = v;
        else if (!strcmp(argv[i], "--iters")) iters = v;
        else usage();
        i++;
    }
    if (!G) G = H;
    ra_progname = "ssd";
    ra_error err = {0, ""};
    if (cuda_device_init(0, &err)) ra_die_error(&err);
    bench_ctx c = {.d = {B, L, H, P, G, N}, .chunk = chunk};
    if (cuda_ssd_check_dims(&c.d, &err)) ra_die_error(&err);
    char gpu[256];
    cuda_device_describe(gpu, sizeof gpu);

    size_t before = used_bytes();
    const size_t nx = (size_t)B * L * H * P, nbc = (size_t)B * L * G * N, na = (size_t)B * L * H;
    c.x = dev_random_bf16(nx, 1), c.dy = dev_random_bf16(nx, 1);
    c.Bm = dev_random_bf16(nbc, 0.5f), c.Cm = dev_random_bf16(nbc, 0.5f);
    float *h = xmalloc(sizeof(float) * na), *ha = xmalloc(sizeof(float) * na);
    for (size_t i = 0; i < na; i++) h[i] = 2.0f * randu() - 0.5f;
    ssd_decay_forward(ha, h, (int64_t)na);
    c.a = dev_upload_f32(ha, na);
    for (int i = 0; i < H; i++) h[i] = randu();
    c.D = dev_upload_f32(h, H);
    free(h), free(ha);
    c.y = cuda_malloc(nx * 2), c.dx = cuda_malloc(nx * 2), c.dB = cuda_malloc(nbc * 2), c.dC = cuda_malloc(nbc * 2);
    c.da = cuda_malloc(na * 4), c.dD = cuda_malloc((size_t)H * 4);
    c.ws = cuda_malloc(cuda_ssd_chunked_workspace_bytes(&c.d, chunk, 1));

    float ms_f = time_ms(run_fwd, &c, warmup, iters);
    float ms_b = time_ms(run_bwd, &c, warmup, iters);
    float ms_fb = time_ms(run_both, &c, warmup, iters);
    size_t peak = used_bytes() - before;

    const double Q = chunk >= 16 && chunk <= 128 && chunk % 16 == 0 ? chunk : 128;
    const double tokens = (double)B * L;
    const double fwd_flop = tokens * H * (2.0 * Q * (N + P) + 4.0 * P * N);
    const double fwd_bytes = (double)nx * 2 * 2 + (double)nbc * 2 * 2 + (double)na * 4;
    const double bwd_bytes = (double)nx * 2 * 3 + (double)nbc * 2 * 4 + (double)na * 4 * 2;
    printf("GPU: %s\n", gpu);
    printf("SSD chunked scan, B=%d L=%d H=%d P=%d N=%d G=%d chunk=%d (median of %d after %d warm-ups)\n", B, L, H, P, N,
           G, chunk, iters, warmup);
    printf("  forward          %8.3f ms  %7.1f TFLOP/s  %7.0f GB/s\n", ms_f, fwd_flop / ms_f * 1e-9,
           fwd_bytes / ms_f * 1e-6);
    printf("  backward         %8.3f ms  %7.1f TFLOP/s  %7.0f GB/s\n", ms_b, 2 * fwd_flop / ms_b * 1e-9,
           bwd_bytes / ms_b * 1e-6);
    printf("  forward+backward %8.3f ms  %7.1f TFLOP/s  %7.0f GB/s  %.0f tokens/s\n", ms_fb,
           3 * fwd_flop / ms_fb * 1e-9, (fwd_bytes + bwd_bytes) / ms_fb * 1e-6, tokens / ms_fb * 1e3);
    printf("  peak memory %.2f GiB\n", peak / 1073741824.0);
    printf("RESULT impl=ra batch=%d seq_len=%d heads=%d head_dim=%d d_state=%d groups=%d chunk=%d fwd_ms=%.4f "
           "bwd_ms=%.4f fwdbwd_ms=%.4f tokens_per_s=%.0f tflops=%.2f gbps=%.0f peak_gib=%.2f\n",
           B, L, H, P, N, G, chunk, ms_f, ms_b, ms_fb, tokens / ms_fb * 1e3, 3 * fwd_flop / ms_fb * 1e-9,
           (fwd_bytes + bwd_bytes) / ms_fb * 1e-6, peak / 1073741824.0);

    cuda_free(c.x), cuda_free(c.dy), cuda_free(c.Bm), cuda_free(c.Cm), cuda_free(c.a), cuda_free(c.D);
    cuda_free(c.y), cuda_free(c.dx), cuda_free(c.dB), cuda_free(c.dC), cuda_free(c.da), cuda_free(c.dD);
    cuda_free(c.ws);
    return 0;
}
