/* Forward-pass benchmark of the CUDA backend (DESIGN §8): a Llama-3.2-1B
 * shaped model with random bf16 weights made on the GPU, B × L tokens,
 * logits for every position kept on the GPU (bf16 [B·L, V]), as
 * bench/torch_ref/forward.py does with transformers.
 *
 *   build/bench/forward [--batch 16] [--seq-len 2048] [--layers 16] [--warmup 3] [--iters 10]
 *
 * Times each forward with CUDA events (host-side input checks and uploads
 * included), after warm-up; reports the median.  FLOPs, counted identically
 * in the reference script:
 *   matmuls   2 · tokens · (layers · (D·(H+2Hkv)·hd + H·hd·D + 3·D·I) + V·D)
 *   attention layers · 4 · B · L² · H · hd / 2      (causal: half the square)
 * Peak memory: device memory in use (cudaMemGetInfo) after the timed runs
 * minus before the model was made, i.e. weights, activations, logits and
 * library workspaces.  Also times the attention kernel and the LM-head GEMM
 * alone.  Ends with one "RESULT key=value ..." line for bench/run_forward.sh. */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "forward_cuda.h"
#include "bench.h"
#include "ops_cuda.h"

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

static void usage(void) {
    fprintf(stderr, "usage: forward [--batch B] [--seq-len L] [--layers N] [--warmup N] [--iters N]\n");
    exit(EX_USAGE);
}

int main(int argc, char **argv) {
    int B = 16, L = 2048, layers = 16, warmup = 3, iters = 10;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc) usage();
        int v = atoi(argv[i + 1]);
        if (v < 1) usage();
        if (!strcmp(argv[i], "--batch")) B = v;
        else if (!strcmp(argv[i], "--seq-len")) L = v;
        else if (!strcmp(argv[i], "--layers")) layers = v;
        else if (!strcmp(argv[i], "--warmup")) warmup = v;
        else if (!strcmp(argv[i], "--iters")) iters = v;
        else usage();
        i++;
    }
    ra_progname = "forward";
    ra_error err = {0, ""};
    if (cuda_device_init(0, &err)) ra_die_error(&err);
    char gpu[256];
    cuda_device_describe(gpu, sizeof gpu);

    /* Llama-3.2-1B */
    hf_config c;
    memset(&c, 0, sizeof c);
    strcpy(c.model_type, "llama");
    c.hidden_size = 2048, c.intermediate_size = 8192, c.num_layers = layers;
    c.num_heads = 32, c.num_kv_heads = 8, c.head_dim = 64, c.vocab_size = 128256;
    c.max_position_embeddings = 131072, c.rms_norm_eps = 1e-5, c.rope_theta = 500000.0;
    c.rope_type = RA_ROPE_LLAMA3, c.rope_factor = 32, c.rope_low_freq_factor = 1, c.rope_high_freq_factor = 4;
    c.rope_original_max_position_embeddings = 8192;
    c.tie_word_embeddings = 1, c.bos_token_id = -1;
    const double D = c.hidden_size, H = c.num_heads, Hkv = c.num_kv_heads, hd = c.head_dim, I = c.intermediate_size,
                 V = c.vocab_size;
    const double tokens = (double)B * L;
    const double matmul_params = layers * (D * (H + 2 * Hkv) * hd + H * hd * D + 3 * D * I) + V * D;
    const double flops_matmul = 2.0 * tokens * matmul_params;
    const double flops_attn = layers * 4.0 * B * (double)L * L * H * hd / 2.0;
    const double flops = flops_matmul + flops_attn;

    size_t base = used_bytes();
    cuda_model *m;
    cuda_forward_state *s;
    if (cuda_model_random(&c, 1, &m, &err)) ra_die_error(&err);
    if (cuda_forward_state_create(m, B, L, &s, &err)) ra_die_error(&err);
    uint16_t *logits;
    if (cuda_malloc_try((void **)&logits, (size_t)B * L * (size_t)V * 2, "the logits", &err)) ra_die_error(&err);
    int32_t *tok = xmalloc((size_t)B * L * sizeof(int32_t));
    uint64_t r = 88172645463325252ull;
    for (size_t i = 0; i < (size_t)B * L; i++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        tok[i] = (int32_t)(r % (uint64_t)c.vocab_size);
    }
    ra_forward_opts o;
    memset(&o, 0, sizeof o);
    fprintf(stderr, "forward: %s; B=%d L=%d layers=%d; weights %.2f GiB, activations %.2f GiB\n", gpu, B, L, layers,
            (double)m->weight_bytes / (1 << 30), (double)cuda_forward_state_bytes(s) / (1 << 30));

    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    cudaStream_t st = (cudaStream_t)cuda_get_stream();
    for (int i = 0; i < warmup; i++)
        if (cuda_forward_run(s, tok, B, L, &o, logits, &err)) ra_die_error(&err);
    cuda_synchronize();
    float *ms = xmalloc((size_t)iters * sizeof(float));
    for (int i = 0; i < iters; i++) {
        CK(cudaEventRecord(e0, st));
        if (cuda_forward_run(s, tok, B, L, &o, logits, &err)) ra_die_error(&err);
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&ms[i], e0, e1));
        fprintf(stderr, "  iteration %d: %.2f ms\n", i, ms[i]);
    }
    size_t peak = used_bytes() - base;
    float best = ms[0];
    for (int i = 1; i < iters; i++) best = ms[i] < best ? ms[i] : best;
    float med = bench_median(ms, iters);
    double sec = med / 1e3;

    /* the parts alone: attention over a fused qkv buffer, the LM head GEMM */
    int n = B * L;
    int64_t qkv_dim = (int64_t)(H + 2 * Hkv) * hd;
    uint16_t *qkv = cuda_malloc((size_t)n * qkv_dim * 2), *att = cuda_malloc((size_t)n * (size_t)(H * hd) * 2);
    cuda_fill_uniform_bf16(qkv, (int64_t)n * qkv_dim, 0.0f, 2.0f, 7);
    cuda_attention_args a;
    memset(&a, 0, sizeof a);
    a.out = att, a.out_stride = (int64_t)(H * hd), a.q = qkv, a.q_stride = qkv_dim;
    a.k = qkv + (size_t)(H * hd), a.v = qkv + (size_t)((H + Hkv) * hd), a.kv_stride = qkv_dim;
    a.B = B, a.T = L, a.H = (int)H, a.Hkv = (int)Hkv, a.hd = (int)hd;
    float t_attn[5], t_head[5];
    for (int i = 0; i < 6; i++) { /* first call warms up */
        CK(cudaEventRecord(e0, st));
        cuda_attention_forward_ex(&a);
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        if (i) CK(cudaEventElapsedTime(&t_attn[i - 1], e0, e1));
    }
    cuda_free(qkv), cuda_free(att);
    uint16_t *xn = cuda_malloc((size_t)n * (size_t)D * 2);
    cuda_fill_uniform_bf16(xn, (int64_t)n * (int64_t)D, 0.0f, 1.0f, 9);
    for (int i = 0; i < 6; i++) {
        CK(cudaEventRecord(e0, st));
        cuda_linear_forward(logits, xn, m->lm_head, NULL, n, (int)D, (int)V);
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        if (i) CK(cudaEventElapsedTime(&t_head[i - 1], e0, e1));
    }
    cuda_free(xn);
    double attn_ms = bench_median(t_attn, 5), head_ms = bench_median(t_head, 5);
    double attn_tflops = flops_attn / layers / (attn_ms / 1e3) / 1e12;
    double head_tflops = 2.0 * n * V * D / (head_ms / 1e3) / 1e12;

    printf("ra forward: %s\n", gpu);
    printf("  shape: Llama-3.2-1B (D=2048, I=8192, H=32, Hkv=8, hd=64, V=128256, tied), layers=%d, B=%d, L=%d\n",
           layers, B, L);
    printf("  time per forward: median %.2f ms, best %.2f ms (%d iterations after %d warm-up)\n", med, best, iters,
           warmup);
    printf("  tokens/s: %.0f\n", tokens / sec);
    printf("  FLOPs per forward: %.3e (matmuls %.3e + attention %.3e)\n", flops, flops_matmul, flops_attn);
    printf("  TFLOP/s: %.1f (%.1f%% of 790)\n", flops / sec / 1e12, flops / sec / 1e12 / 790 * 100);
    printf("  peak device memory: %.2f GiB\n", (double)peak / (1 << 30));
    printf("  attention kernel alone (one layer): %.3f ms, %.1f TFLOP/s\n", attn_ms, attn_tflops);
    printf("  LM head GEMM alone (%d x %d x %d): %.3f ms, %.1f TFLOP/s\n", n, (int)D, (int)V, head_ms, head_tflops);
    printf("RESULT impl=ra batch=%d seq_len=%d layers=%d ms=%.3f tokens_per_s=%.0f tflops=%.1f mfu_pct=%.1f "
           "peak_gib=%.2f attn_ms=%.3f attn_tflops=%.1f lm_head_tflops=%.1f flops=%.4e\n",
           B, L, layers, med, tokens / sec, flops / sec / 1e12, flops / sec / 1e12 / 790 * 100,
           (double)peak / (1 << 30), attn_ms, attn_tflops, head_tflops, flops);

    cuda_free(logits);
    cuda_forward_state_free(s);
    cuda_model_free(m);
    free(tok), free(ms);
    return 0;
}
