/* The two adapters between the attention heads and the SSM heads of a
 * hybrid layer (DESIGN §2.4), forward and backward, CPU, fp32.
 *
 * Both rescale, per token, the attention output to the SSM output's mean
 * and standard deviation:
 *     μa, σa² = mean, variance of the token's attention features
 *     μs, σs² = mean, variance of the token's SSM features
 *     â = (a − μa) / sqrt(σa² + eps)            (mean 0, std 1)
 *     ã = â · sqrt(σs² + eps) + μs
 * Variances are population variances (divided by the feature count, as in
 * LayerNorm); eps = ADAPTER_EPS = 1e-5 on both sides, so the target std is
 * never 0 and its gradient stays finite.  The SSM statistics are functions
 * of the SSM output, so gradients flow into both inputs.
 *
 * static (routed layout): no parameters.  The input is the concatenation of
 *   all H head slots as o_proj sees it, slots [n, H·hd]; attn_slot[h] = 1
 *   marks the kept attention heads (their slots together are "a"), the
 *   others are SSM slots ("s").  Output: the same layout with the attention
 *   slots replaced by ã and the SSM slots copied.  A layer with no
 *   attention slot or no SSM slot is passed through unchanged (its stats
 *   row is zeroed).
 * linear (parallel layout): attn [n, D] (the kept heads after their o_proj
 *   slice) and ssm [n, D] (the full-width SSM output):
 *       out = 0.5 · (ssm + ã · Wᵀ + b),   W [D, D], b [D].
 *
 * Saved statistics: stats [n, ADAPTER_STATS] = (μa, 1/sqrt(σa²+eps), μs,
 * sqrt(σs²+eps)) per token, written by the forward, read by the backward.
 * Backward: input gradients overwrite, dW and db accumulate (lib/ops.h
 * conventions); any gradient pointer may be NULL.  Outputs never alias
 * inputs, except where a function says so.  Implemented in lib/adapter.c. */
#ifndef RA_ADAPTER_H
#define RA_ADAPTER_H

#include <stdint.h>

#define ADAPTER_EPS 1e-5f
#define ADAPTER_STATS 4

void adapter_static_forward(float *out, float *stats, const float *slots, const uint8_t *attn_slot, int n, int H,
                            int hd);
/* dslots [n, H·hd] from dout [n, H·hd]. */
void adapter_static_backward(float *dslots, const float *dout, const float *slots, const float *stats,
                             const uint8_t *attn_slot, int n, int H, int hd);

/* adapted [n, D] (saved for the backward) receives ã. */
void adapter_linear_forward(float *out, float *adapted, float *stats, const float *ssm, const float *attn,
                            const float *W, const float *b, int n, int D);
/* dssm, dattn [n, D] overwritten (dattn is also the workspace for dã, so it
 * must not be NULL); dW [D, D] and db [D] accumulate. */
void adapter_linear_backward(float *dssm, float *dattn, float *dW, float *db, const float *dout, const float *ssm,
                             const float *attn, const float *adapted, const float *stats, const float *W, int n,
                             int D);

#endif
