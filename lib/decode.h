/* Recurrent decoding on the CPU for any model of the family (teacher, pure
 * SSM student, routed or parallel hybrid): a prefill over a batch of prompts
 * that leaves every layer's decode state behind, then one token per row
 * per step.
 *
 *   ra_decode *d;
 *   ra_decode_create(model, B, T_max, &d, &err);
 *   ra_decode_prefill(d, prompts, T, lens, logits, NULL, &err); // logits [B, V]
 *   for (...) ra_decode_step(d, next_tokens, logits, &err);      // [B] → [B, V]
 *   ra_decode_free(d);
 *
 * State per layer (ra_decode_layer):
 *   - the attention heads' KV cache: keys after RoPE and values, fp32,
 *     [B, n_kv, T_max, hd]; n_kv = the kept heads of a hybrid layer (each
 *     stores its own K and V, DESIGN §2.4) or num_key_value_heads of a
 *     teacher;
 *   - the SSM heads' dm2_cache (lib/dm2.h): fp32 SSM state [B, Hs, P, N] and
 *     conv state [B, conv_dim, 4] (the last 4 pre-conv inputs).
 *
 * Prompts of different lengths are LEFT-padded: row b's prompt is the last
 * lens[b] tokens of its row of the [B, T] array (the padding ids must still
 * be valid token ids; they are never seen).  Every row then shares one cache
 * index (d->len) and row b's RoPE position is d->len − d->first[b].  The
 * prefill runs the full forward (lib/forward.h, chunked SSD) with each row's
 * prompt as one document, so the step's logits continue it exactly: the
 * recurrent decode reproduces the full-sequence forward (tests/unit/
 * test_decode.c). */
#ifndef RA_DECODE_H
#define RA_DECODE_H

#include <stdint.h>

#include "dm2.h"
#include "error.h"
#include "forward.h"
#include "model.h"

typedef struct ra_decode_layer {
    int n_kv;       /* cached K/V heads (0: no attention in this layer) */
    float *k, *v;   /* [B, n_kv, T_max, hd] */
    dm2_cache *ssm; /* NULL when the layer has no SSM heads */
} ra_decode_layer;

typedef struct ra_decode {
    const ra_model *m;
    int B, T_max;
    int len;                 /* tokens in the cache (prefill T, then +1 per step) */
    int32_t *first;          /* [B] cache index of each row's first prompt token */
    ra_decode_layer *layers; /* [num_layers] */
    ra_forward_state *fs;    /* activations: B × T_max for the prefill, B × 1 per step */
    int32_t *doc_start, *positions, *counts, *logit_pos; /* prefill options [B·T_max] / [B] */
    float *scores;           /* step attention scratch [B, T_max] */
} ra_decode;

/* B ≥ 1 rows of up to T_max ≥ 1 tokens each (prompt and generated). */
int ra_decode_create(const ra_model *m, int B, int T_max, ra_decode **out, ra_error *err);
void ra_decode_free(ra_decode *d);

/* Prefill tokens [B, T] (T ≤ T_max), lens [B] (NULL: every row's prompt is
 * all T tokens; else 1 ≤ lens[b] ≤ T).  Resets the state first.  logits
 * (may be NULL): [B, V] at each row's last token; all_logits (may be NULL):
 * [B·T, V] at every position (padding rows' values are meaningless). */
int ra_decode_prefill(ra_decode *d, const int32_t *tokens, int T, const int32_t *lens, float *logits,
                      float *all_logits, ra_error *err);

/* The prompt layout both decoders share: check 1 ≤ T ≤ T_max and
 * 1 ≤ lens[b] ≤ T (lens NULL: all T), set first[b] = T − lens[b]
 * (EX_USAGE naming the row otherwise); doc_start [rows, T] for the forward:
 * each padding token a document of its own, the prompt one document. */
int ra_decode_prompt_layout(int B, int T, int T_max, const int32_t *lens, int32_t *first, ra_error *err);
void ra_decode_prompt_doc_start(int32_t *doc_start, const int32_t *first, int rows, int T);

/* Append one token per row (tokens [B]) and return the next-token logits
 * [B, V].  EX_USAGE when the cache is full (len = T_max) or no prefill ran. */
int ra_decode_step(ra_decode *d, const int32_t *tokens, float *logits, ra_error *err);

#endif
