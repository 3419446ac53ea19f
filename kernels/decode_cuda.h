/* Recurrent decoding on the GPU: the twin of lib/decode.h for any model of
 * the family (teacher, routed or parallel hybrid, pure SSM student).
 *
 *   cuda_model *m;  cuda_model_upload(model, &m, &err);
 *   cuda_decode *d; cuda_decode_create(m, B, T_max, &d, &err);
 *   cuda_decode_prefill(d, prompts, T, lens, logits, NULL, &err);  // host [B, T] → [B, V]
 *   for (...) cuda_decode_step(d, next_tokens, logits, &err);       // host [B] → [B, V]
 *   cuda_decode_free(d); cuda_model_free(m);
 *
 * State per layer, on the GPU:
 *   - KV cache of the attention heads, bf16 [B, n_kv, T_max, hd], keys
 *     after RoPE: n_kv = the kept heads of a hybrid layer (each its own
 *     K/V) or num_key_value_heads of a teacher layer;
 *   - SSM heads: cuda_dm2_cache (kernels/dm2_cuda.h), fp32 SSM state
 *     [B, Hs, P, N] and conv state [B, conv_dim, 4]; the step scratch is
 *     shared by the layers.
 * Prompts are LEFT-padded as in lib/decode.h: row b's prompt is the last
 * lens[b] tokens of its row; every row shares the cache index d->len and
 * row b's RoPE position is len − first[b].  The prefill is the CUDA forward
 * (kernels/forward_cuda.h, chunked SSD) with each row's prompt one document,
 * run over groups of d->prefill_rows rows (at most 16384 tokens per group)
 * so its activations stay bounded whatever B is; the layers leave their KV
 * rows, SSM and conv states in the cache as they go.  A step runs each
 * layer's mixer on one token per row (cuda_decode_attention over the cache,
 * cuda_dm2_step), then the MLP, the final norm and the LM head.
 *
 * Out of memory at creation: EX_UNAVAILABLE, the message naming the batch
 * and length that failed.  Compiled only with CUDA. */
#ifndef RA_DECODE_CUDA_H
#define RA_DECODE_CUDA_H

#ifdef __cplusplus
extern "C" {
#endif

#include <stddef.h>
#include <stdint.h>

#include "decode.h"
#include "dm2_cuda.h"
#include "forward_cuda.h"

struct ra_decode_backend; /* lib/decode_backend.h */

typedef struct cuda_decode_layer {
    int n_kv;           /* cached K/V heads (0: no attention in this layer) */
    uint16_t *k, *v;    /* [B, n_kv, T_max, hd] bf16 */
    int has_ssm;
    cuda_dm2_cache ssm; /* valid when has_ssm; proj/yg/xbc point at shared scratch */
} cuda_decode_layer;

typedef struct cuda_decode {
    const cuda_model *m;
    int B, T_max;
    int len;                   /* tokens in the cache */
    int prefill_rows;          /* rows per prefill group */
    int32_t *first;            /* host [B]: cache index of each row's first prompt token */
    int32_t *d_first;          /* device copy */
    cuda_decode_layer *layers; /* [num_layers] */
    struct cuda_forward_state *pf; /* prefill activations: prefill_rows × T_max */
    struct cuda_forward_state *st; /* step activations: B × 1 */
    uint16_t *logits;          /* device bf16 [B, V]: the last step's logits */
    size_t state_bytes;        /* KV cache + SSM + conv states (device) */
    size_t bytes;              /* every device buffer of the decoder (weights excluded) */
    /* host scratch */
    int32_t *h_doc, *h_counts, *h_pos, *h_lpos;
    void *scratch[3];          /* shared dm2 step scratch (device) */
} cuda_decode;

/* B ≥ 1 rows of up to T_max ≥ 1 tokens each.  m must outlive d. */
int cuda_decode_create(const cuda_model *m, int B, int T_max, cuda_decode **out, ra_error *err);
void cuda_decode_free(cuda_decode *d);

/* As ra_decode_prefill: tokens [B, T] host, lens [B] or NULL, logits [B, V]
 * and all_logits [B·T, V] host fp32 (either may be NULL). */
int cuda_decode_prefill(cuda_decode *d, const int32_t *tokens, int T, const int32_t *lens, float *logits,
                        float *all_logits, ra_error *err);

/* As ra_decode_step: tokens [B] host (checked against the vocabulary),
 * logits [B, V] host fp32 (may be NULL: they stay in d->logits). */
int cuda_decode_step(cuda_decode *d, const int32_t *tokens, float *logits, ra_error *err);

/* The step on device token ids [B] (not checked; for generation loops that
 * keep everything on the GPU, e.g. cuda_argmax_rows of d->logits).  Returns
 * without waiting for the GPU; the logits are in d->logits. */
int cuda_decode_step_device(cuda_decode *d, const int32_t *d_tokens, ra_error *err);

/* Benchmarks: a synthetic context of len tokens in every row (KV caches,
 * SSM and conv states filled with deterministic random values, first = 0),
 * as if a prompt of len tokens had been prefilled. */
void cuda_decode_fill_random(cuda_decode *d, int len, uint64_t seed);

/* lib/decode_backend.c's dispatch point (EX_UNAVAILABLE when no GPU). */
int ra_decode_backend_cuda(const struct ra_decode_backend **out, ra_error *err);

#ifdef __cplusplus
}
#endif

#endif
