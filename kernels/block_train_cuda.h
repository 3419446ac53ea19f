/* One decoder block's training forward (saving what its backward reads) and
 * backward on the GPU: the CUDA twin of lib/block_train.c, for the layers
 * of a teacher-shaped model and of a hybrid student (kept heads with RoPE,
 * DiscreteMamba2 heads through kernels/dm2_cuda.h, the routed layout's slot
 * scatter with the static adapter, the parallel layout's learned adapter):
 *
 *   xn  = RMSNorm(x);  mix = the layer's mixer on xn;  h = x + mix
 *   out = h + down(silu(gate(hn))·up(hn)),  hn = RMSNorm(h)
 *
 * Weights are the bf16 compute copies of a cuda_model (kernels/
 * forward_cuda_internal.h: fused q/k/v and gate/up); parameter gradients
 * fp32 and accumulated (+=), in the same fused layouts (cuda_block_grads).
 * Activations (recompute, CUDA_BLOCKS_*): SAVE_ALL saves every layer's;
 * RECOMPUTE keeps one layer's, the caller running cuda_block_recompute of
 * layer l right before its backward (llm.c-style recomputation: one more
 * forward, memory of one layer instead of all); SELECTIVE also keeps one
 * set, plus per layer what is dear to recompute: the attention's q/k/v and
 * output, the SSD core's output and chunk states (≈ 4 MB per kept head and
 * ≈ 65 MB per DM2 layer at B·T = 8192, hd 64, N 64), so cuda_block_recompute
 * redoes only the GEMMs and elementwise ops around them (no attention, no
 * SSD scan, no down_proj).
 *
 * Used by kernels/model_train_cuda.cu (stage 3, --loss ce) and stage 2.
 * Library-internal host code. */
#ifndef RA_BLOCK_TRAIN_CUDA_H
#define RA_BLOCK_TRAIN_CUDA_H

#include "dm2_cuda.h"
#include "forward_cuda_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* fp32 gradients of one layer (device; NULL where not wanted).  wqkv
 * [(nq+2nkv)·hd, D] and bqkv are the fused layouts of cuda_layer_weights;
 * w_gate_up [2I, D]; ssm: the DM2 layer's gradients (memory NULL when the
 * layer has no SSM heads; every array is written when it has). */
typedef struct cuda_block_grads {
    float *input_norm, *post_norm;
    float *wqkv, *bqkv, *wo, *bo;
    float *w_gate_up, *w_down;
    float *adapter_w, *adapter_b;
    cuda_dm2_grads ssm;
} cuda_block_grads;

/* The batch a forward/backward runs on. */
typedef struct cuda_block_batch {
    int B, T;
    const float *cos_t, *sin_t; /* RoPE tables [B·T, hd/2] */
    const int32_t *doc_start;   /* device [B·T] or NULL */
    const uint8_t *starts;      /* device [B·T] (doc_start == t) or NULL */
} cuda_block_batch;

typedef struct cuda_blocks cuda_blocks;

enum { CUDA_BLOCKS_SAVE_ALL = 0, CUDA_BLOCKS_RECOMPUTE = 1, CUDA_BLOCKS_SELECTIVE = 2 };

/* Buffers for batches of B × T rows of every layer of cm (recompute: see
 * above).  EX_TEMPFAIL naming the buffer when the GPU lacks memory;
 * EX_DATAERR for an SSM head shape the kernels do not take. */
int cuda_blocks_create(cuda_blocks **out, const cuda_model *cm, int B, int T, int recompute, ra_error *err);
void cuda_blocks_free(cuda_blocks *b);
/* Device bytes of one layer's saved activations (the largest layer), for
 * choosing recompute. */
size_t cuda_blocks_layer_bytes(const cuda_model *cm, int B, int T);
/* The widest column sum and the most attention heads a backward of cm
 * uses (cuda_train_scratch_reserve's colsum_width and Hkv_max). */
void cuda_blocks_scratch_shape(const cuda_model *cm, int *colsum_width, int *kv_heads_max, int *adapter_D);

/* Allocate the gradient arrays the fused layouts need for layer l of cm
 * into g (zeroed): wqkv and bqkv (when the layer has q/k/v biases) if
 * want_qkv, w_gate_up if want_gate_up, and the DM2 block whenever the layer
 * has SSM heads (its backward writes every array); the others are left to
 * the caller. */
int cuda_block_grads_alloc_fused(cuda_block_grads *g, const cuda_model *cm, int l, int want_qkv, int want_gate_up,
                                 cuda_alloc_ctx *a);
void cuda_block_grads_free_fused(cuda_block_grads *g);
/* Zero the arrays cuda_block_grads_alloc_fused made. */
void cuda_block_grads_zero_fused(cuda_block_grads *g, const cuda_model *cm, int l);

/* out [n, D] = block l (x [n, D]), saving activations. */
void cuda_block_forward(cuda_blocks *b, int l, uint16_t *out, const uint16_t *x, const cuda_block_batch *bt);
/* After cuda_block_forward of layer l (it has attention heads): the softmax
 * probabilities of its query heads heads[0..n_heads) (device int32) for
 * batch rows b0 .. b0+nb−1, probs fp32 [nb, n_heads, T, T] (0 above the
 * diagonal and across document starts), from that forward's q and k after
 * RoPE: the attention it ran.  MOHAWK stage 1's teacher matrices. */
void cuda_block_attention_probs(cuda_blocks *b, int l, float *probs, const int32_t *heads, int n_heads, int b0, int nb,
                                const cuda_block_batch *bt);
/* Before layer l's backward when the set is not saved (RECOMPUTE: the
 * whole forward again into out; SELECTIVE: what it did not keep, out
 * untouched; SAVE_ALL: nothing).  x is the forward's input. */
void cuda_block_recompute(cuda_blocks *b, int l, uint16_t *out, const uint16_t *x, const cuda_block_batch *bt);
/* Given ∂L/∂out in d (bf16 [n, D]), accumulate the parameter gradients
 * into g and, when want_dx, leave ∂L/∂x in d (else d is clobbered).  x is
 * the forward's input; layer l's activations must be the last forward's. */
void cuda_block_backward(cuda_blocks *b, int l, const cuda_block_grads *g, uint16_t *d, const uint16_t *x,
                         const cuda_block_batch *bt, int want_dx);

#ifdef __cplusplus
}
#endif

#endif
