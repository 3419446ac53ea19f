/* Decode benchmark of the CUDA decoder (kernels/decode_cuda.h, DESIGN §2.6
 * and §8): the Llama-3.2-1B shape as a teacher or as a hybrid student
 * (--heads kept attention heads, DiscreteMamba2 state --d-state, --layout),
 * random weights, greedy decoding at context --ctx.
 *
 *   build/bench/decode --model teacher|hybrid [--ctx 4096] [--heads 10] [--d-state 8]
 *                      [--layout parallel|routed] [--layers 16] [--steps 8] [--warmup 2]
 *                      [--start-batch 32] [--bisect 3] [--prefill-batch 4]
 *
 * Batch sweep: B = start, 2·start, ... until the decoder no longer fits in
 * GPU memory (cuda_decode_create reports EX_UNAVAILABLE), then --bisect
 * halvings between the last batch that fit and the first that did not; the
 * largest that fit is the maximum batch.  For each batch: the decoder is
 * made, its caches hold a synthetic context of ctx − warmup − steps tokens
 * per row (cuda_decode_fill_random: random KV, SSM and conv states, which
 * costs what a real context costs to attend over), then warmup + steps
 * greedy steps (one token per row, argmax on the GPU), the last `steps`
 * timed with CUDA events, so the cache ends at ctx tokens.
 * tokens/s = B · steps / time.  The prefill is timed separately on
 * --prefill-batch real prompts of ctx tokens (median of 3 after a warm-up).
 * Peak memory: device memory in use (cudaMemGetInfo) after the steps minus
 * before the model was made: weights, caches, activations, logits, library
 * workspaces.  Lines "SWEEP ..." per batch and one "RESULT ..." at the end,
 * for bench/decode.sh. */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "decode_cuda.h"
#include "forward_cuda.h"
#include "hybrid.h"
#include "hybrid_ops_cuda.h"
#include "ops_cuda.h"

#define CK(x)                                                                                    \
    do {                                                                                         \
        cudaError_t e_ = (x);                                                                    \
        if (e_ != cudaSuccess) {                                                                 \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            exit(EX_SOFTWARE);                                                                   \
        }                                                                                        \
    } while (0)

#define GIB (1024.0 * 1024.0 * 1024.0)

static size_t used_bytes(void) {
    size_t f, t;
    cuda_mem_info(&f, &t);
    return t - f;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static void usage(void) {
    fprintf(stderr, "usage: decode --model teacher|hybrid [--ctx N] [--heads N] [--d-state N] [--layout parallel|routed] "
                    "[--layers N] [--steps N] [--warmup N] [--start-batch N] [--bisect N] [--prefill-batch N]\n");
    exit(EX_USAGE);
}

static uint64_t xs = 88172645463325252ull;
static uint64_t next_rand(void) {
    xs ^= xs << 13, xs ^= xs >> 7, xs ^= xs << 17;
    return xs;
}

/* A hybrid student of config c with random weights (uniform, std 0.02 like
 * transformers' init; norms 1): `heads` kept heads spread over the layers. */
static ra_model *hybrid_model(const hf_config *c, int heads, int N, ra_layout layout) {
    ra_hybrid_config h;
    memset(&h, 0, sizeof h);
    h.layout = layout;
    h.adapter = layout == RA_LAYOUT_PARALLEL ? RA_ADAPTER_LINEAR : RA_ADAPTER_STATIC;
    h.d_state = N, h.qk_groups = 0, h.conv_kernel = RA_HYBRID_CONV_KERNEL, h.chunk = RA_HYBRID_CHUNK;
    h.ssm_head_dim = c->head_dim, h.layers = c->num_layers, h.heads = c->num_heads;
    h.keep = xcalloc((size_t)h.layers * h.heads, 1);
    for (int i = 0; i < heads; i++) h.keep[(size_t)(i * h.layers / heads) * h.heads + (7 * i) % h.heads] = 1;
    ra_error err = {0, ""};
    if (ra_hybrid_check(&h, c, "bench", &err)) ra_die_error(&err);
    ra_model *m = ra_model_shell_hybrid(c, &h);
    free(h.keep);
    ra_model_alloc_weights(m);
    ra_model_tensor *t;
    int n = ra_model_tensor_list(m, &t);
    for (int i = 0; i < n; i++) {
        int64_t numel = t[i].shape[0] * (t[i].ndim == 2 ? t[i].shape[1] : 1);
        float *w = *t[i].data;
        int is_norm = strstr(t[i].name, "norm") != NULL;
        uint64_t seed = 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1);
#pragma omp parallel for
        for (int64_t j = 0; j < numel; j++) {
            uint64_t z = seed + (uint64_t)j * 0xBF58476D1CE4E5B9ull;
            z = (z ^ (z >> 31)) * 0x94D049BB133111EBull;
            z ^= z >> 29;
            float u = (float)(z >> 40) * (1.0f / 8388608.0f) - 1.0f;
            w[j] = is_norm ? 1.0f : 0.02f * 1.7320508f * u;
        }
    }
    free(t);
    return m;
}

typedef struct {
    int ok;
    double ms_per_step, tokens_per_s, peak_gib, state_gib, decoder_gib;
} batch_result;

/* One batch: EX_UNAVAILABLE when it does not fit. */
static int run_batch(const cuda_model *m, int B, int ctx, int warmup, int steps, size_t base, batch_result *r,
                     ra_error *err) {
    memset(r, 0, sizeof *r);
    cuda_decode *d;
    int rc = cuda_decode_create(m, B, ctx, &d, err);
    if (rc) return rc;
    int32_t *tok;
    rc = cuda_malloc_try((void **)&tok, (size_t)B * sizeof(int32_t), "token ids", err);
    if (rc) {
        cuda_decode_free(d);
        return rc == EX_TEMPFAIL ? EX_UNAVAILABLE : rc;
    }
    int V = m->cfg.vocab_size;
    int32_t *h = xmalloc((size_t)B * sizeof(int32_t));
    for (int b = 0; b < B; b++) h[b] = (int32_t)(next_rand() % (uint64_t)V);
    cuda_upload(tok, h, (size_t)B * sizeof(int32_t));
    free(h);
    cuda_decode_fill_random(d, ctx - warmup - steps, (uint64_t)B);
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    cudaStream_t st = (cudaStream_t)cuda_get_stream();
    for (int i = 0; i < warmup + steps; i++) {
        if (i == warmup) CK(cudaEventRecord(e0, st));
        if ((rc = cuda_decode_step_device(d, tok, err))) ra_die_error(err);
        cuda_argmax_rows(tok, d->logits, B, V);
    }
    CK(cudaEventRecord(e1, st));
    CK(cudaEventSynchronize(e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    cuda_synchronize();
    r->ok = 1;
    r->ms_per_step = ms / steps;
    r->tokens_per_s = (double)B * steps / (ms * 1e-3);
    r->peak_gib = (double)(used_bytes() - base) / GIB;
    r->state_gib = (double)d->state_bytes / GIB;
    r->decoder_gib = (double)d->bytes / GIB;
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    cuda_free(tok);
    cuda_decode_free(d);
    return 0;
}

static double prefill_tokens_per_s(const cuda_model *m, int B, int ctx, ra_error *err) {
    cuda_decode *d;
    if (cuda_decode_create(m, B, ctx, &d, err)) ra_die_error(err);
    int V = m->cfg.vocab_size;
    int32_t *tok = xmalloc((size_t)B * ctx * sizeof(int32_t));
    for (size_t i = 0; i < (size_t)B * ctx; i++) tok[i] = (int32_t)(next_rand() % (uint64_t)V);
    float *logits = xmalloc((size_t)B * V * sizeof(float));
    double t[4];
    for (int i = 0; i < 4; i++) {
        double t0 = now_s();
        if (cuda_decode_prefill(d, tok, ctx, NULL, logits, NULL, err)) ra_die_error(err);
        cuda_synchronize();
        t[i] = now_s() - t0;
    }
    /* median of the 3 after the warm-up */
    double a = t[1], b = t[2], c = t[3], med = a > b ? (b > c ? b : (a > c ? c : a)) : (a > c ? a : (b > c ? c : b));
    free(tok), free(logits);
    cuda_decode_free(d);
    return (double)B * ctx / med;
}

int main(int argc, char **argv) {
    const char *model = NULL, *layout_s = "parallel";
    int ctx = 4096, heads = 10, N = 8, layers = 16, steps = 8, warmup = 2, start = 32, bisect = 3, pf_batch = 4;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc) usage();
        const char *k = argv[i], *v = argv[++i];
        if (!strcmp(k, "--model")) model = v;
        else if (!strcmp(k, "--layout")) layout_s = v;
        else {
            int x = atoi(v);
            if (x < 0 || (x < 1 && strcmp(k, "--bisect") && strcmp(k, "--heads") && strcmp(k, "--prefill-batch")))
                usage();
            if (!strcmp(k, "--ctx")) ctx = x;
            else if (!strcmp(k, "--heads")) heads = x;
            else if (!strcmp(k, "--d-state")) N = x;
            else if (!strcmp(k, "--layers")) layers = x;
            else if (!strcmp(k, "--steps")) steps = x;
            else if (!strcmp(k, "--warmup")) warmup = x;
            else if (!strcmp(k, "--start-batch")) start = x;
            else if (!strcmp(k, "--bisect")) bisect = x;
            else if (!strcmp(k, "--prefill-batch")) pf_batch = x;
            else usage();
        }
    }
    ra_layout layout;
    if (!model || (strcmp(model, "teacher") && strcmp(model, "hybrid")) || ra_layout_parse(layout_s, &layout) ||
        ctx <= warmup + steps)
        usage();
    int hybrid = !strcmp(model, "hybrid");
    ra_progname = "decode";
    ra_error err = {0, ""};
    if (cuda_device_init(0, &err)) ra_die_error(&err);
    char gpu[256];
    cuda_device_describe(gpu, sizeof gpu);

    hf_config c; /* Llama-3.2-1B */
    memset(&c, 0, sizeof c);
    strcpy(c.model_type, "llama");
    c.hidden_size = 2048, c.intermediate_size = 8192, c.num_layers = layers;
    c.num_heads = 32, c.num_kv_heads = 8, c.head_dim = 64, c.vocab_size = 128256;
    c.max_position_embeddings = 131072, c.rms_norm_eps = 1e-5, c.rope_theta = 500000.0;
    c.rope_type = RA_ROPE_LLAMA3, c.rope_factor = 32, c.rope_low_freq_factor = 1, c.rope_high_freq_factor = 4;
    c.rope_original_max_position_embeddings = 8192;
    c.tie_word_embeddings = 1, c.bos_token_id = -1;

    size_t base = used_bytes();
    cuda_model *m;
    ra_model *host = NULL;
    if (hybrid) {
        host = hybrid_model(&c, heads, N, layout);
        if (cuda_model_upload(host, &m, &err)) ra_die_error(&err);
    } else if (cuda_model_random(&c, 1, &m, &err)) {
        ra_die_error(&err);
    }
    double state_mb = 0;
    if (host) {
        ra_state_sizes z = ra_model_state_sizes(host);
        /* bf16 KV, fp32 SSM and conv states, as kernels/decode_cuda.h holds them */
        state_mb = ((double)z.kv_values_per_token * ctx * 2 + (double)(z.ssm_state_values + z.conv_state_values) * 4) / 1e6;
        ra_model_free(host);
    } else {
        state_mb = (double)layers * c.num_kv_heads * 2 * c.head_dim * ctx * 2 / 1e6;
    }
    fprintf(stderr, "decode: %s; %s%s; ctx %d; weights %.2f GiB; decode state %.2f MB per sequence\n", gpu,
            hybrid ? "hybrid " : "teacher", hybrid ? layout_s : "", ctx, (double)m->weight_bytes / GIB, state_mb);

    double pf = pf_batch ? prefill_tokens_per_s(m, pf_batch, ctx, &err) : 0;
    fprintf(stderr, "prefill: %d x %d tokens: %.0f tokens/s\n", pf_batch, ctx, pf);

    batch_result best = {0}, at_max = {0}, r;
    int max_ok = 0, first_bad = 0;
    for (int B = start;; B *= 2) {
        int rc = run_batch(m, B, ctx, warmup, steps, base, &r, &err);
        if (rc == EX_UNAVAILABLE) {
            fprintf(stderr, "batch %d: %s\n", B, err.msg);
            printf("SWEEP model=%s batch=%d ok=0\n", model, B);
            first_bad = B;
            break;
        }
        if (rc) ra_die_error(&err);
        printf("SWEEP model=%s batch=%d ok=1 ms_per_step=%.3f tokens_per_s=%.0f peak_gib=%.2f state_gib=%.2f "
               "decoder_gib=%.2f\n", model, B, r.ms_per_step, r.tokens_per_s, r.peak_gib, r.state_gib, r.decoder_gib);
        fflush(stdout);
        max_ok = B, at_max = r;
        if (r.tokens_per_s > best.tokens_per_s) best = r;
        if (B > (1 << 24)) break;
    }
    for (int i = 0; i < bisect && max_ok && first_bad - max_ok > 1; i++) {
        int B = max_ok + (first_bad - max_ok) / 2;
        int rc = run_batch(m, B, ctx, warmup, steps, base, &r, &err);
        if (rc && rc != EX_UNAVAILABLE) ra_die_error(&err);
        printf("SWEEP model=%s batch=%d ok=%d", model, B, !rc);
        if (!rc)
            printf(" ms_per_step=%.3f tokens_per_s=%.0f peak_gib=%.2f state_gib=%.2f decoder_gib=%.2f", r.ms_per_step,
                   r.tokens_per_s, r.peak_gib, r.state_gib, r.decoder_gib);
        printf("\n");
        fflush(stdout);
        if (rc) {
            first_bad = B;
        } else {
            max_ok = B, at_max = r;
            if (r.tokens_per_s > best.tokens_per_s) best = r;
        }
    }
    printf("RESULT model=%s layout=%s heads=%d d_state=%d ctx=%d max_batch=%d first_oom_batch=%d "
           "tokens_per_s_at_max=%.0f ms_per_step_at_max=%.3f peak_gib_at_max=%.2f best_tokens_per_s=%.0f "
           "prefill_tokens_per_s=%.0f prefill_batch=%d state_mb_per_seq=%.2f weights_gib=%.2f\n",
           model, hybrid ? layout_s : "-", hybrid ? heads : c.num_heads * layers, hybrid ? N : 0, ctx, max_ok,
           first_bad, at_max.tokens_per_s, at_max.ms_per_step, at_max.peak_gib, best.tokens_per_s, pf, pf_batch,
           state_mb, (double)m->weight_bytes / GIB);
    cuda_model_free(m);
    return max_ok ? 0 : EX_SOFTWARE;
}
