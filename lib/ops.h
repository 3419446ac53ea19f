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

#endif
