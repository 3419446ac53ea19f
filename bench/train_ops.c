/* Timings of the CUDA training ops (kernels/ops_backward_cuda.h) at the
 * Llama-3.2-1B shape with B = 4, L = 2048 (n = 8192 tokens): what one
 * stage-3 step spends per op, for planning the CUDA train step.
 *
 *   build/bench/train_ops [--iters 5]
 *
 * Random bf16 inputs made on the GPU; each op is run once to warm up, then
 * timed over --iters runs with CUDA events; the median is printed.  No
 * correctness check here (tests/gpu/test_gpu_backward.c does that). */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops_backward_cuda.h"
#include "ops_cuda.h"
#include "optim.h"

static int iters = 5;

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Median milliseconds of fn(arg) over iters runs after one warm-up. */
static float time_ms(void (*fn)(void *), void *arg) {
    cudaEvent_t a, b;
    cudaEventCreate(&a), cudaEventCreate(&b);
    fn(arg);
    cuda_synchronize();
    float *t = malloc((size_t)iters * sizeof(float));
    for (int i = 0; i < iters; i++) {
        cudaEventRecord(a, (cudaStream_t)cuda_get_stream());
        fn(arg);
        cudaEventRecord(b, (cudaStream_t)cuda_get_stream());
        cudaEventSynchronize(b);
        cudaEventElapsedTime(&t[i], a, b);
    }
    qsort(t, (size_t)iters, sizeof *t, cmp_float);
    float m = t[iters / 2];
    free(t);
    cudaEventDestroy(a), cudaEventDestroy(b);
    return m;
}

static uint16_t *rnd_bf16(int64_t n, float half_width, uint64_t seed) {
    uint16_t *d = cuda_malloc((size_t)n * 2);
    cuda_fill_uniform_bf16(d, n, 0.0f, half_width, seed);
    return d;
}

enum { N = 8192, B = 4, T = 2048, D = 2048, H = 32, HKV = 8, HD = 64, I = 8192, V = 128256, CH = 1024 };

typedef struct bufs {
    uint16_t *x, *dy, *w, *dx, *q, *k, *v, *dq, *dk, *dv, *gu, *dgu, *act, *zs, *zt, *emb_dy;
    float *rstd, *dw, *dW, *dtable;
    int32_t *tok;
    cuda_optim *opt;
} bufs;

static void run_rmsnorm(void *p) {
    bufs *b = p;
    cuda_rmsnorm_backward(b->dx, b->dw, b->dy, b->x, b->w, b->rstd, N, D);
}
static void run_linear_gate_up(void *p) { /* gate_up: in D, out 2I */
    bufs *b = p;
    cuda_linear_backward(b->dx, b->dW, NULL, b->dgu, b->x, b->w, N, D, 2 * I);
}
static void run_attention(void *p) {
    bufs *b = p;
    cuda_attention_backward(b->dq, b->dk, b->dv, b->dy, b->q, b->k, b->v, NULL, B, T, H, HKV, HD);
}
static void run_swiglu(void *p) {
    bufs *b = p;
    cuda_swiglu_fused_backward(b->dgu, b->act, b->gu, N, I);
}
static void run_rope(void *p) {
    bufs *b = p;
    cuda_rope_backward(b->dq, b->rstd, b->rstd, N, H, HD);
}
static void run_embedding(void *p) {
    bufs *b = p;
    cuda_embedding_backward(b->dtable, b->emb_dy, b->tok, N, D);
}
static void run_soft_ce(void *p) { /* one chunk of CH positions, in place */
    bufs *b = p;
    cuda_loss_soft_ce_fused(b->zs, b->zs, b->zt, CH, V, 2.0f, 1.0f);
}
static void run_adamw(void *p) {
    bufs *b = p;
    ra_error err = {0, ""};
    if (cuda_optim_step(b->opt, 1e-4, &err)) ra_die_error(&err);
}

int main(int argc, char **argv) {
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--iters")) iters = atoi(argv[++i]);
    if (iters < 1) iters = 1;
    ra_error err = {0, ""};
    if (cuda_device_init(0, &err)) ra_die_error(&err);
    char desc[256];
    cuda_device_describe(desc, sizeof desc);
    printf("# %s; B=%d L=%d D=%d H=%d Hkv=%d hd=%d I=%d V=%d, median of %d\n", desc, B, T, D, H, HKV, HD, I, V, iters);
    bufs b;
    memset(&b, 0, sizeof b);
    b.x = rnd_bf16((int64_t)N * D, 1, 1), b.dy = rnd_bf16((int64_t)N * H * HD, 1, 2);
    b.w = rnd_bf16((int64_t)2 * I * D, 0.02f, 3), b.dx = rnd_bf16((int64_t)N * D, 1, 4);
    b.q = rnd_bf16((int64_t)N * H * HD, 1, 5), b.k = rnd_bf16((int64_t)N * HKV * HD, 1, 6);
    b.v = rnd_bf16((int64_t)N * HKV * HD, 1, 7), b.dq = rnd_bf16((int64_t)N * H * HD, 1, 8);
    b.dk = rnd_bf16((int64_t)N * HKV * HD, 1, 9), b.dv = rnd_bf16((int64_t)N * HKV * HD, 1, 10);
    b.gu = rnd_bf16((int64_t)N * 2 * I, 2, 11), b.dgu = rnd_bf16((int64_t)N * 2 * I, 1, 12);
    b.act = rnd_bf16((int64_t)N * I, 1, 13), b.emb_dy = rnd_bf16((int64_t)N * D, 1, 14);
    b.zs = rnd_bf16((int64_t)CH * V, 8, 15), b.zt = rnd_bf16((int64_t)CH * V, 8, 16);
    b.rstd = cuda_malloc((size_t)N * HD * 4);
    cuda_memset(b.rstd, 0x3f, (size_t)N * HD * 4); /* ≈ 0.75 */
    b.dw = cuda_malloc(D * 4), b.dW = cuda_malloc((size_t)2 * I * D * 4), b.dtable = cuda_malloc((size_t)V * D * 4);
    cuda_memset(b.dw, 0, D * 4), cuda_memset(b.dW, 0, (size_t)2 * I * D * 4), cuda_memset(b.dtable, 0, (size_t)V * D * 4);
    int32_t *tok = malloc((size_t)N * 4);
    for (int i = 0; i < N; i++) tok[i] = (int32_t)((uint64_t)i * 2654435761u % V);
    b.tok = cuda_malloc((size_t)N * 4);
    cuda_upload(b.tok, tok, (size_t)N * 4);
    free(tok);

    /* the optimiser over 1.24 G parameters in 16 × 7 matrices + embedding */
    ra_optim *host = ra_optim_create(NULL);
    int64_t shapes[][2] = {{V, D}, {3072, D}, {D, D}, {2 * I, D}, {D, I}};
    float *hw = calloc((size_t)V * D, sizeof(float));
    int np = 0;
    for (int l = -1; l < 16; l++)
        for (int s = l < 0 ? 0 : 1; s < (l < 0 ? 1 : 5); s++) {
            char name[64];
            snprintf(name, sizeof name, "p%d.%d", l, s);
            if (ra_optim_add(host, name, hw, hw, 2, shapes[s], &err)) ra_die_error(&err);
            np++;
        }
    if (cuda_optim_create(&b.opt, host, NULL, &err)) ra_die_error(&err);
    printf("# AdamW over %d tensors, %.3f G parameters\n", np, (double)ra_optim_trainable_numel(host) / 1e9);

    struct {
        const char *name;
        void (*fn)(void *);
    } ops[] = {
        {"rmsnorm_backward n=8192 D=2048 (dx + dweight)", run_rmsnorm},
        {"linear_backward gate_up n=8192 2048->16384 (dx + dW)", run_linear_gate_up},
        {"attention_backward B=4 T=2048 H=32 Hkv=8 (1 layer)", run_attention},
        {"swiglu_fused_backward n=8192 I=8192", run_swiglu},
        {"rope_backward n=8192 H=32", run_rope},
        {"embedding_backward n=8192 D=2048", run_embedding},
        {"soft CE fused fwd+bwd, chunk 1024 x V=128256", run_soft_ce},
        {"AdamW step (norm + update + checks)", run_adamw},
    };
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        printf("%-58s %9.3f ms\n", ops[i].name, time_ms(ops[i].fn, &b));
    size_t fr, tot;
    cuda_mem_info(&fr, &tot);
    printf("# device memory in use at the end: %.1f GiB\n", (double)(tot - fr) / (1 << 30));
    cuda_optim_free(b.opt);
    ra_optim_free(host);
    free(hw);
    return 0;
}
