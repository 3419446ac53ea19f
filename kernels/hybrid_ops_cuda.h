/* CUDA ops of the hybrid mixer and of decoding (kernels/hybrid_ops.cu):
 * the routed layout's slot scatter with the static adapter, the parallel
 * layout's standardisation and output mix, the KV cache writes, attention
 * of one new token over a cache, and a row argmax for greedy decoding.
 *
 * Conventions of kernels/ops_cuda.h: DEVICE pointers, bf16 activations as
 * uint16_t raw bits, fp32 arithmetic, work queued on the ops stream.  The
 * arithmetic is that of the CPU twins in lib/adapter.c (population
 * variances, eps ADAPTER_EPS on both sides) and lib/forward_hybrid_cpu.c.
 * Compiled only when nvcc is found (RA_HAVE_CUDA=1). */
#ifndef RA_HYBRID_OPS_CUDA_H
#define RA_HYBRID_OPS_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Routed layout: the o_proj input of n tokens.  slots [n, H·hd] receives,
 * for slot h, head slot_src[h] ≥ 0 of katt [n, k·hd] (a kept attention
 * head, in attn_heads order) or SSM head −1 − slot_src[h] of ssm [n, Hs·hd].
 * static_adapter != 0 (and both kinds present): the attention slots are
 * standardised per token and rescaled to the SSM slots' mean and std
 * (adapter_static_forward).  ssm_keep (optional, [B·H], row b = token / T):
 * 0 zeroes that SSM slot after the adapter (ablation). */
void cuda_hybrid_slots(uint16_t *slots, const uint16_t *katt, const uint16_t *ssm, const int32_t *slot_src,
                       int static_adapter, const uint8_t *ssm_keep, int n, int T, int H, int k, int Hs, int hd);

/* Parallel layout, the adapter's first half: adapted [n, D] = attn
 * standardised per token to ssm's per-token mean and std. */
void cuda_hybrid_standardize(uint16_t *adapted, const uint16_t *attn, const uint16_t *ssm, int n, int D);
/* x[i] += 0.5 · (a[i] + b[i]) over n values (the parallel layout's output). */
void cuda_hybrid_mix_residual(uint16_t *x, const uint16_t *a, const uint16_t *b, int64_t n);

/* starts[i] = 1 where token i (of rows of T) begins its document:
 * doc_start[i] == i mod T. */
void cuda_hybrid_starts(uint8_t *starts, const int32_t *doc_start, int n, int T);

/* KV cache write: for rows b < B and tokens t < T of src (row (b·T + t),
 * `ld` elements per token, K head g at k_off + g·hd, V head g at
 * v_off + g·hd), store into cache_k / cache_v [B_cache, nkv, T_max, hd]
 * at row row0 + b, index t0 + t. */
void cuda_kv_cache_write(uint16_t *cache_k, uint16_t *cache_v, const uint16_t *src, int64_t ld, int64_t k_off,
                         int64_t v_off, int B, int T, int nkv, int hd, int T_max, int row0, int t0);

/* One query per row and head over a KV cache: out [B, nq·hd] (head i at
 * column i·hd), q token b head i at q + b·ldq + i·hd, cache [B, nkv,
 * T_max, hd] (query head i reads KV head i / (nq/nkv)), keys
 * first[b] .. last inclusive (device first [B]).  Softmax in fp32 with
 * scale 1/sqrt(hd). */
void cuda_decode_attention(uint16_t *out, const uint16_t *q, int64_t ldq, const uint16_t *cache_k,
                           const uint16_t *cache_v, const int32_t *first, int last, int B, int nq, int nkv, int hd,
                           int T_max);

/* out[r] = the smallest index of the largest value of row r of x [rows, V]. */
void cuda_argmax_rows(int32_t *out, const uint16_t *x, int rows, int V);

/* Uniform values in [−half_width, half_width) from a hash of (seed, index). */
void cuda_fill_uniform_f32(float *x, int64_t n, float half_width, uint64_t seed);

#ifdef __cplusplus
}
#endif

#endif
