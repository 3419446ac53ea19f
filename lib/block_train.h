/* Training one decoder block of a hybrid student (or a teacher) on the CPU,
 * for MOHAWK stage 2 (DESIGN §2.5): forward with saved activations and the
 * backward to every parameter of the block.
 *
 *   xn  = RMSNorm(x; input_layernorm)
 *   mix = the layer's mixer on xn (lib/forward_hybrid_cpu.c's arithmetic:
 *         kept heads with RoPE, DM2 heads, routed/parallel combination and
 *         adapter per the student's meta.hybrid)
 *   h   = x + mix
 *   out = h + down(silu(gate(hn))·up(hn)),  hn = RMSNorm(h; post_attention_layernorm)
 *
 * In stage 2 the input x is the teacher's hidden state entering the layer,
 * so no input gradient is needed; ra_block_backward_dx also computes it.
 * Parameter gradients ACCUMULATE (lib/ops.h conventions); they live in a
 * ra_layer whose arrays mirror the model layer's (ra_block_grads), with the
 * frozen ones NULL (--train mixer: the two norms and the MLP).  Implemented in lib/block_train.c. */
#ifndef RA_BLOCK_TRAIN_H
#define RA_BLOCK_TRAIN_H

#include <stdint.h>

#include "error.h"
#include "model.h"

typedef struct ra_block_acts ra_block_acts;

/* Activations for B×T rows of layer `layer` of m.  NULL with *err filled
 * for an invalid shape. */
ra_block_acts *ra_block_acts_create(const ra_model *m, int layer, int B, int T, ra_error *err);
void ra_block_acts_free(ra_block_acts *a);

/* One block's parameters as named tensors (model tensor names), with a
 * gradient array each, and the ra_layer `g` whose pointers are those
 * gradients (NULL where frozen). */
typedef struct ra_block_grads {
    int n;                  /* parameters of the layer */
    ra_model_tensor *t;     /* [n]: name, shape, slot in the model */
    float **grad;           /* [n]: gradient arrays (NULL where frozen) */
    int *mixer;             /* [n]: 1 for mixer parameters (attention, SSM, adapter, o_proj) */
    ra_layer g;
} ra_block_grads;

/* mixer_only: --train mixer (norms and MLP frozen, no gradient arrays). */
ra_block_grads *ra_block_grads_create(ra_model *m, int layer, int mixer_only);
void ra_block_grads_zero(ra_block_grads *g);
void ra_block_grads_free(ra_block_grads *g);
int64_t ra_tensor_numel(const ra_model_tensor *t);

/* out [B·T, D] = the block on x [B·T, D] (saved, with everything the
 * backward needs).  doc_start [B·T] optional (packed rows: index in the row
 * of each token's document start; RoPE positions are t − doc_start). */
void ra_block_forward(ra_block_acts *a, float *out, const float *x, const int32_t *doc_start, int B, int T);

/* Given dout [B·T, D], accumulate into g (NULL arrays skipped). */
void ra_block_backward(ra_block_acts *a, const ra_layer *g, const float *dout);
/* The same, and dx [B·T, D] (overwritten; NULL = not wanted) receives the
 * gradient with respect to the block's input x, for whole-model training
 * (lib/model_train.h).  dx may be the same memory as dout. */
void ra_block_backward_dx(ra_block_acts *a, const ra_layer *g, const float *dout, float *dx);

/* Stage-2 loss of the block on one batch: L = mean over tokens of
 * ‖block(x) − target‖₂; with g non-NULL, accumulates dloss·∂L/∂θ into g.
 * out [B·T, D] is caller scratch. */
double ra_block_stage2(ra_block_acts *a, const ra_layer *g, float *out, const float *x, const float *target,
                       const int32_t *doc_start, int B, int T, float dloss);

#endif
