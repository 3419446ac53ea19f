/* Transformer ops on the CPU backend: fp32, row-major, explicit forward (and,
 * where training needs it, backward) functions over caller-owned buffers.
 * Every op here has a CUDA twin in kernels/ops_cuda.h with the same name
 * prefixed cuda_, the same argument order, bf16 storage and fp32 accumulation;
 * tests/gpu compares each pair on random inputs.
 *
 * Shapes: n = number of token rows (batch × time flattened), D = model width,
 * H / Hkv = query / key-value heads, hd = head dim.  Linear weights are stored
 * as PyTorch does, [out_features, in_features]. */
#ifndef RA_OPS_H
#define RA_OPS_H

#include <stdint.h>

#include "hf_config.h"

/* out[i,:] = table[tokens[i],:] */
void embedding_forward(float *out, const int32_t *tokens, const float *table, int n, int D);

/* out = in / rms(in) * weight; rstd[i] (optional) receives 1/rms of row i. */
void rmsnorm_forward(float *out, float *rstd, const float *in, const float *weight, int n, int D, float eps);

/* out[n,out_dim] = in[n,in_dim] · Wᵀ + bias (bias may be NULL). */
void linear_forward(float *out, const float *in, const float *W, const float *bias, int n, int in_dim, int out_dim);

/* RoPE inverse frequencies [hd/2], with Llama-3 scaling when cfg says so. */
void rope_inv_freq(float *inv_freq, int head_dim, const hf_config *cfg);
/* cos/sin tables [n, hd/2] for the given positions. */
void rope_tables(float *cos_t, float *sin_t, const int32_t *positions, int n, const float *inv_freq, int head_dim);
/* In place on x[n, heads, hd], Hugging Face rotate_half convention:
 * pairs (j, j + hd/2). */
void rope_forward(float *x, const float *cos_t, const float *sin_t, int n, int heads, int head_dim);

/* Causal GQA attention.  q[B,T,H,hd], k,v[B,T,Hkv,hd] → out[B,T,H,hd].
 * Scale 1/sqrt(hd).  doc_start (optional, [B,T]) gives for each token the
 * index of the first token of its document: keys before it are masked, so
 * packed documents never attend across boundaries.  probs (optional,
 * [B,H,T,T]) receives the attention matrix. */
void attention_forward(float *out, float *probs, const float *q, const float *k, const float *v,
                       const int32_t *doc_start, int B, int T, int H, int Hkv, int hd);

/* Zero the outputs of ablated heads: head_keep[b*H + h] == 0 zeroes head h of
 * every token of batch slice b.  out is [B,T,H,hd]. */
void head_mask_apply(float *out, const uint8_t *head_keep, int B, int T, int H, int hd);

/* out = silu(gate) * up, elementwise over n values. */
void swiglu_forward(float *out, const float *gate, const float *up, int64_t n);

/* x += y */
void residual_add(float *x, const float *y, int64_t n);

/* ------------------------------------------------------------- backward
 *
 * Conventions (llm.c style): parameter gradients ACCUMULATE (+=), so
 * gradient accumulation over micro-batches needs no extra buffer; callers
 * zero them once per optimiser step.  Input gradients OVERWRITE (=); the
 * caller adds them into a residual stream with residual_add.  Any gradient
 * pointer may be NULL when that gradient is not wanted (a frozen weight, the
 * token input).  Implemented in lib/ops_backward_cpu.c; the CUDA twins
 * (bf16 activations and activation gradients, fp32 parameter gradients)
 * are in kernels/ops_backward_cuda.h, with those of lib/adapter.h,
 * lib/loss.h and lib/optim.h. */

/* dtable[tokens[i],:] += dout[i,:]  (repeated tokens add up). */
void embedding_backward(float *dtable, const float *dout, const int32_t *tokens, int n, int D);

/* Given dout, in, weight and the forward's rstd: dx = ∂/∂in (overwrite),
 * dweight += ∂/∂weight. */
void rmsnorm_backward(float *dx, float *dweight, const float *dout, const float *in, const float *weight,
                      const float *rstd, int n, int D);

/* out = in·Wᵀ + b:  dx = dout·W (overwrite), dW += doutᵀ·in, db += Σ_rows dout. */
void linear_backward(float *dx, float *dW, float *db, const float *dout, const float *in, const float *W, int n,
                     int in_dim, int out_dim);

/* In place on dx[n, heads, hd]: the gradient through rope_forward (the
 * inverse rotation, same tables). */
void rope_backward(float *dx, const float *cos_t, const float *sin_t, int n, int heads, int head_dim);

/* Gradient of attention_forward (same shapes, same doc_start).  The
 * probabilities are recomputed from q and k one (batch, head, 128-query tile)
 * at a time, so no [B,H,T,T] buffer is needed.  dq [B,T,H,hd] and dk, dv
 * [B,T,Hkv,hd] are overwritten; the query heads of a GQA group sum into their
 * shared K/V gradient. */
void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                        const float *v, const int32_t *doc_start, int B, int T, int H, int Hkv, int hd);

/* The head mask is linear and diagonal: its backward zeroes the same slots
 * of the gradient (in place). */
void head_mask_backward(float *dout, const uint8_t *head_keep, int B, int T, int H, int hd);

/* out = silu(gate)·up:  dgate, dup overwritten.  gate and up are the
 * forward's inputs (the teacher forward overwrites gate in place; training
 * code must keep it).  dgate may alias dout (computed elementwise). */
void swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, int64_t n);

#endif
