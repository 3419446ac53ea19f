/* The teacher forward pass (DESIGN §2.1) with the options the later stages
 * need, on preallocated activations.
 *
 *   ra_forward_state *s = ra_forward_state_create(model, B_max, T_max);
 *   ra_forward_opts o = {0};             // zero = plain forward, no outputs
 *   o.logits = buf;                      // [B*T, V]
 *   ra_forward_cpu(s, tokens, B, T, &o, &err);
 *
 * One call runs B rows of T tokens (B ≤ B_max, T ≤ T_max, so one state
 * serves documents of different lengths).  The same options struct drives
 * every backend (ra_forward_backend); all pointers in it are host memory.
 *
 * Per layer l (0-based), on the residual x [B*T, D]:
 *   attention_block_forward: x += o_proj(headmask(attn(rope(q,k), v)))
 *       with q/k/v = proj(RMSNorm(x; input_layernorm))
 *   mlp_block_forward:       x += down(silu(gate(h)) * up(h)),
 *       h = RMSNorm(x; post_attention_layernorm)
 * then the final RMSNorm and the LM head at the requested positions.
 *
 * Hybrid students (lib/hybrid.h) run the same loop with the layer's mixer in
 * place of attention_block_forward's attention (lib/forward_hybrid_cpu.c):
 * kept heads as softmax attention, SSM heads as DiscreteMamba2 (state and
 * conv window reset where doc_start says a document begins), combined per
 * the layout.  Options on hybrids: head_keep zeroes kept heads (both
 * layouts) and routed SSM slots before o_proj (a parallel layout's SSM heads
 * are not maskable); probabilities only of kept heads. */
#ifndef RA_FORWARD_H
#define RA_FORWARD_H

#include <stdint.h>

#include "error.h"
#include "model.h"

typedef struct ra_head_ref {
    int layer, head;
} ra_head_ref;

typedef struct ra_forward_opts {
    /* Inputs beyond the token ids.  positions [B,T]: RoPE positions; NULL =
     * t − doc_start[t] with doc_start, else t.  doc_start [B,T]: index of the
     * first token of each token's document in its row (packed rows: keys
     * before it are masked); NULL = each row is one document. */
    const int32_t *positions;
    const int32_t *doc_start;

    /* Ablation: head_keep[(b * layers + l) * H + h] == 0 zeroes query head h
     * of layer l before o_proj, for batch row b only (so one call can carry
     * a different ablation per row).  NULL keeps every head. */
    const uint8_t *head_keep;

    /* Run layers start_layer .. stop_layer−1 (stop_layer 0 = all).  With
     * start_layer > 0, start_hidden [B,T,D] is the residual entering
     * start_layer (e.g. cached from hidden_out) and tokens may be NULL. */
    int start_layer, stop_layer;
    const float *start_hidden;

    /* hidden_out: NULL, or an array of layers+1 pointers, each NULL or
     * [B,T,D]: slot l receives the residual entering layer l, slot layers
     * the residual before the final norm.  Slots start_layer..stop_layer
     * are written. */
    float *const *hidden_out;

    /* Attention probabilities of chosen heads: probs_out [n_probs, B, T, T]
     * (query × key, zeros where masked), request r = probs_heads[r].  Each
     * layer must lie in the layers run. */
    int n_probs;
    const ra_head_ref *probs_heads;
    float *probs_out;

    /* Logits: NULL = no final norm / LM head (then stop_layer may be < layers).
     * logit_counts NULL: every position, logits is [B*T, V].  Otherwise row b
     * contributes logit_counts[b] positions taken in order from
     * logit_positions (all rows' lists concatenated), and logits is
     * [Σ counts, V] in that order. */
    float *logits;
    const int32_t *logit_counts;
    const int32_t *logit_positions;
} ra_forward_opts;

/* ---------------------------------------------------------------- CPU */

/* Activations for up to B_max × T_max token rows, fp32. */
typedef struct ra_forward_state {
    const ra_model *m;
    int B_max, T_max;
    float *x;              /* residual [n, D] */
    float *xn;             /* normed block input [n, D] */
    float *q, *k, *v;      /* [n, H*hd], [n, Hkv*hd], [n, Hkv*hd] */
    float *att;            /* attention output per head [n, H*hd] */
    float *proj;           /* block output [n, D] */
    float *gate, *up;      /* [n, I]; gate receives silu(gate)*up */
    float *inv_freq;       /* [hd/2] */
    float *cos_t, *sin_t;  /* [n, hd/2] */
    int32_t *positions;    /* [n] */
    uint8_t *keep;         /* [B_max, H] this layer's head mask */
    float *hq, *hk, *hv, *ho; /* [n, hd]: one head, for requested probabilities */
    float *sel;            /* [n, D]: final-normed rows at logit positions */
    struct ra_hybrid_acts *hy; /* hybrid mixer buffers, made on first use (lib/forward_hybrid_cpu.c) */
    struct ra_decode *capture; /* set during ra_decode_prefill: layers leave their decode state there */
} ra_forward_state;

ra_forward_state *ra_forward_state_create(const ra_model *m, int B_max, int T_max);
void ra_forward_state_free(ra_forward_state *s);

/* Validate inputs and options (token ids < vocab, positions ≥ 0, doc_start
 * in range, logit positions < T, layer ranges, probs requests), then run.
 * EX_DATAERR for bad data (naming row and position), EX_USAGE for options
 * that contradict each other. */
int ra_forward_cpu(ra_forward_state *s, const int32_t *tokens, int B, int T, const ra_forward_opts *o,
                   ra_error *err);

/* The per-layer steps ra_forward_cpu runs, on s->x for B×T rows, with RoPE
 * tables already in s->cos_t / s->sin_t.  Exposed so training code can call
 * them one layer at a time. */
void attention_block_forward(ra_forward_state *s, int layer, int B, int T, const ra_forward_opts *o);
void mlp_block_forward(ra_forward_state *s, int layer, int B, int T);

/* ------------------------------------------------------- device dispatch */

typedef enum ra_device { RA_DEVICE_CPU = 0, RA_DEVICE_CUDA = 1 } ra_device;

int ra_device_parse(const char *s, ra_device *out); /* "cpu" | "cuda"; -1 otherwise */
const char *ra_device_name(ra_device d);

/* A backend: create a state for (model, B_max, T_max), run with the options
 * above, destroy.  The CUDA backend is provided by kernels/forward_cuda.h as
 *   int ra_forward_backend_cuda(const ra_forward_backend **out, ra_error *err);
 * (EX_UNAVAILABLE when no GPU is present); lib/forward.c picks it up when
 * that header exists and the build has CUDA. */
typedef struct ra_forward_backend {
    const char *name;
    int (*create)(const ra_model *m, int B_max, int T_max, void **state, ra_error *err);
    int (*run)(void *state, const int32_t *tokens, int B, int T, const ra_forward_opts *o, ra_error *err);
    void (*destroy)(void *state);
} ra_forward_backend;

extern const ra_forward_backend ra_forward_backend_cpu;

/* The backend of a device.  CUDA: EX_UNAVAILABLE with a message when the
 * binary was built without CUDA or no GPU is usable. */
int ra_forward_backend_get(ra_device d, const ra_forward_backend **out, ra_error *err);

#endif
