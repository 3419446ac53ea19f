/* The teacher forward pass on the GPU (DESIGN §2.1, §3): the CUDA backend
 * behind lib/forward.h's ra_forward_opts, plus the device-level pieces the
 * benchmark and later stages use directly.
 *
 * Weights are uploaded once as bf16, in fused layouts: q/k/v as one
 * [(H+2Hkv)·hd, D] matrix (one GEMM, RoPE and attention read it in place),
 * gate/up as one [2I, D] matrix.  Activations are bf16 in buffers sized for
 * B_max × T_max at state creation.  Per layer:
 *   xn = RMSNorm(x);  qkv = xn·Wqkvᵀ (+b);  RoPE on the q and k heads of qkv;
 *   att = flash attention (head mask fused into its output write);
 *   x += att·Woᵀ (+b)            (residual fused into the GEMM, beta = 1)
 *   xn = RMSNorm(x);  gu = xn·Wguᵀ;  act = silu(gate)·up;
 *   x += act·Wdownᵀ              (residual fused)
 * then the final RMSNorm and the LM head at the chosen rows only.
 *
 * Hybrid students (lib/hybrid.h) run the same loop with the layer's mixer
 * of kernels/forward_hybrid_cuda.cu in place of the attention block: kept
 * heads as softmax attention (fused q/k/v of the kept heads, each with its
 * own K/V), DiscreteMamba2 heads through kernels/dm2_cuda.h (state and conv
 * window reset at document starts), routed slot scatter + static adapter or
 * parallel o_proj slice + learned adapter: the arithmetic of
 * lib/forward_hybrid_cpu.c, in bf16 with fp32 sums.
 *
 * All ra_forward_opts pointers are host memory, as for the CPU backend:
 * hidden states and probabilities are copied back (bf16 -> fp32) as they
 * are produced; logits go back in chunks of rows.  Compiled only with CUDA. */
#ifndef RA_FORWARD_CUDA_H
#define RA_FORWARD_CUDA_H

#ifdef __cplusplus
extern "C" {
#endif

#include <stddef.h>
#include <stdint.h>

#include "forward.h"

/* lib/forward.c's dispatch point.  EX_UNAVAILABLE when no GPU is usable. */
int ra_forward_backend_cuda(const ra_forward_backend **out, ra_error *err);

typedef struct cuda_layer_weights {
    uint16_t *input_norm, *post_norm; /* [D] */
    uint16_t *wqkv;                   /* [(H+2Hkv)·hd, D]: q rows, then k, then v */
    uint16_t *bqkv;                   /* [(H+2Hkv)·hd] or NULL */
    uint16_t *wo;                     /* [D, H·hd] */
    uint16_t *bo;                     /* [D] or NULL */
    uint16_t *w_gate_up;              /* [2I, D]: gate rows, then up rows */
    uint16_t *w_down;                 /* [D, I] */
    uint8_t *attn_slot;               /* host [H]: 1 where the slot is a softmax attention head */
} cuda_layer_weights;

typedef struct cuda_model {
    hf_config cfg;
    uint16_t *embed;      /* [V, D] */
    uint16_t *final_norm; /* [D] */
    uint16_t *lm_head;    /* [V, D]; == embed when tied */
    cuda_layer_weights *layers;
    float *inv_freq;      /* device [hd/2] */
    size_t weight_bytes;  /* device bytes of all weights */
    struct cuda_hybrid_weights *hybrid; /* a hybrid student's mixers (forward_cuda_internal.h); NULL: teacher */
} cuda_model;

/* Upload a host model (fp32 weights, or the checkpoint's own bytes of a
 * ra_model_load_view model) as bf16.  EX_TEMPFAIL when the GPU lacks
 * memory. */
int cuda_model_upload(const ra_model *m, cuda_model **out, ra_error *err);
/* A model of this config with deterministic random weights made on the GPU
 * (uniform, std 0.02 like transformers' init; norms 1): for benchmarks. */
int cuda_model_random(const hf_config *cfg, uint64_t seed, cuda_model **out, ra_error *err);
void cuda_model_free(cuda_model *m);

typedef struct cuda_forward_state cuda_forward_state;

/* Activations for up to B_max × T_max tokens.  EX_TEMPFAIL (with a message
 * suggesting a smaller batch) when they do not fit. */
int cuda_forward_state_create(const cuda_model *m, int B_max, int T_max, cuda_forward_state **out, ra_error *err);
void cuda_forward_state_free(cuda_forward_state *s);
/* Device bytes held by the state's activations. */
size_t cuda_forward_state_bytes(const cuda_forward_state *s);

/* Run with host options, exactly as ra_forward_cpu (same validation, same
 * semantics).  If d_logits is not NULL the logits stay on the GPU: bf16
 * [rows, V] at d_logits (rows as o->logit_counts selects, all B·T when NULL)
 * and o->logits is ignored; the call then returns without waiting for the
 * GPU (cuda_synchronize before reading them). */
int cuda_forward_run(cuda_forward_state *s, const int32_t *tokens, int B, int T, const ra_forward_opts *o,
                     uint16_t *d_logits, ra_error *err);

#ifdef __cplusplus
}
#endif

#endif
