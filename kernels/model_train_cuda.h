/* Whole-model training on the GPU: the CUDA twin of lib/model_train.c
 * (MOHAWK stage 3 and --loss ce pretraining, DESIGN §2.5), the plan of the
 * design note at the top of kernels/ops_backward_cuda.cu.
 *
 * Weights: the bf16 compute copies in the fused layouts of the forward
 * (kernels/forward_cuda.h: q/k/v one matrix, gate/up one matrix), fp32
 * master weights, gradients and AdamW moments in a cuda_optim mirroring the
 * host ra_optim (kernels/ops_backward_cuda.h); the gradients of a fused
 * matrix are one fp32 buffer whose slices are the optimiser's gradients,
 * so the backward GEMMs write them directly.  The optimiser step runs on
 * the device and refreshes the bf16 copies.
 *
 * Forward (every layer's input residual kept; the layers' activations as
 * below), final norm, then the vocabulary side in row chunks (logits bf16
 * [R, V], R·V ≤ 128 Mi elements, cuda_model_train_logit_rows): logits,
 * loss rows and their gradient in place, pushed through the LM head at
 * once, as lib/model_train.c does.  The loss value comes back once per
 * micro-batch (one download of the per-row losses), so a micro-batch
 * costs one host synchronisation plus the upload of its inputs.
 *
 * Packed rows: doc_start as lib/model_train.h (attention does not cross a
 * document, RoPE positions restart).  kd: the teacher's forward
 * (kernels/forward_cuda.h, no saved activations) up to its last residual,
 * then its final norm and LM head chunk by chunk next to the student's.
 *
 * Layers: kernels/block_train_cuda.h (teacher-shaped layers: GQA, q/k/v/o
 * biases; hybrid layers: kept heads, DiscreteMamba2 heads, routed layout
 * with the static adapter, parallel layout with the learned one), tied or
 * untied LM head, head_dim 32, 64 or 128 (another head_dim is refused with
 * EX_UNAVAILABLE).  Activations are saved per layer, or, when that would
 * take more than an eighth of the GPU's memory (or RA_TRAIN_RECOMPUTE=1),
 * recomputed selectively layer by layer in the backward (each layer keeps
 * its attention and SSD-core outputs and the SSD chunk states; the GEMMs
 * and elementwise ops around them run again: CUDA_BLOCKS_SELECTIVE of
 * kernels/block_train_cuda.h); RA_TRAIN_RECOMPUTE=0 forces saving,
 * RA_TRAIN_RECOMPUTE=2 recomputes each layer's whole forward.
 * RA_TRAIN_PROFILE=1 prints where the steps' time went on stderr when the
 * trainer is freed (kernels/train_profile.h).  The DM2 backward sums some
 * parameter gradients with float atomics, so a hybrid's steps are not
 * bit-reproducible (teacher-shaped models' are).
 *
 * Everything is allocated by cuda_model_train_create / _begin (scratch of
 * the backward included), so a step never allocates; running out of GPU
 * memory there returns EX_OSERR naming the buffer, its size and the batch
 * shape.  Implemented in kernels/model_train_cuda.cu. */
#ifndef RA_MODEL_TRAIN_CUDA_H
#define RA_MODEL_TRAIN_CUDA_H

#ifdef __cplusplus
extern "C" {
#endif

#include <stddef.h>
#include <stdint.h>

#include "model_train.h"
#include "optim.h"

typedef struct cuda_model_train cuda_model_train;

/* Upload the student (and the teacher for kd; NULL for ce) and allocate
 * the activations for B × T.  optim: the host optimiser with every
 * parameter of the student registered by name (ra_model_grads_register);
 * it is read again by cuda_model_train_begin. */
int cuda_model_train_create(cuda_model_train **out, ra_model *student, const ra_model *teacher, ra_optim *optim,
                            int B, int T, ra_error *err);
void cuda_model_train_free(cuda_model_train *t);

/* Make the device optimiser from the host one (after --freeze): master
 * weights, moments, gradients; compute copies refreshed. */
int cuda_model_train_begin(cuda_model_train *t, ra_error *err);

/* Zero every gradient (once per optimiser step). */
void cuda_model_train_zero_grad(cuda_model_train *t);

/* One micro-batch, as ra_model_train_step (same arguments, same checks,
 * same errors); want_grads 0 for evaluation. */
int cuda_model_train_step(cuda_model_train *t, int want_grads, ra_stage3_loss kind, const int32_t *tokens,
                          const int32_t *doc_start, const int32_t *labels, int B, int T, float temperature,
                          float dloss, double *loss, int *counted, ra_error *err);

/* The optimiser step (global norm, clipping, NaN/Inf guard that changes
 * nothing, AdamW); poison: set a gradient element to NaN first (the
 * RA_TEST_NAN_AT_STEP hook).  Updates the host optimiser's step and
 * last_grad_norm. */
int cuda_model_train_optim_step(cuda_model_train *t, double lr, int poison, ra_error *err);

/* Device → host optimiser (master weights into the model's arrays,
 * moments, step) and back (after a checkpoint was read). */
void cuda_model_train_download(cuda_model_train *t);
void cuda_model_train_upload(cuda_model_train *t);

/* Gradient of the parameter called `name` (fp32 [numel], host out); for
 * tests.  EX_USAGE when it has none (frozen or unknown). */
int cuda_model_train_grad(cuda_model_train *t, const char *name, float *out, ra_error *err);

/* The CUDA_BLOCKS_* activation policy (0: saved; see the top). */
int cuda_model_train_recomputes(const cuda_model_train *t);
/* Rows of the vocabulary chunk. */
int cuda_model_train_logit_rows(const cuda_model_train *t);
/* High-water mark of device memory in use (cudaMemGetInfo: total − free,
 * sampled after every device allocation and after every micro-batch;
 * includes the CUDA context and anything else on the GPU). */
size_t cuda_model_train_peak_bytes(const cuda_model_train *t);

/* ---- MOHAWK stages 1 and 2 (DESIGN §2.5) with the same machinery --------
 * (kernels/stage_train_cuda.cu).  The teacher runs as blocks (kernels/
 * block_train_cuda.h, forward only) up to the last listed layer; layers
 * are listed in ascending order.  optim holds the trained parameters of
 * the listed layers (ra_stage2_register, ra_stage1_register: whole tensors
 * or row slices of them); begin, zero_grad, optim_step, download, upload
 * and grad as above.
 *
 * Stage 2: each listed layer l of the student runs on the teacher's
 * residual entering l, L_l = mean over tokens of ‖block_l − h_{l+1}‖₂ (the
 * target of the last layer is the residual before the final norm), and its
 * backward follows at once (one set of activations). */
int cuda_stage2_train_create(cuda_model_train **out, ra_model *student, const ra_model *teacher, ra_optim *optim,
                             const int *layers, int n_layers, int B, int T, ra_error *err);
/* *loss = Σ_l L_l; with want_grads, dloss·∂L/∂θ accumulated. */
int cuda_stage2_train_step(cuda_model_train *t, int want_grads, const int32_t *tokens, const int32_t *doc_start,
                           int B, int T, float dloss, double *loss, ra_error *err);

/* Stage 1 (lib/stage1.h's objective): for each listed layer l (every one
 * has SSM heads), A = the teacher's attention probabilities of the query
 * head paired with each SSM head (ra_stage1_pairing), from the q/k its
 * block forward computed; Ts = the mixing matrices of the student's
 * DiscreteMamba2 heads on RMSNorm(teacher residual entering l) with the
 * student's input norm; L_l = mean over rows and SSM heads of ‖Ts − A‖_F,
 * its gradient through the mixer only (kernels/dm2_cuda.h's matrix path).
 * The fp32 matrices, 2 · Hs · T² per row, are made for as many rows at a
 * time as max_bytes holds (≤ 0: RA_STAGE1_DEFAULT_MAX_BYTES); EX_USAGE when
 * not even one row fits, with lib/stage1.c's message.  No float atomics on
 * this path: its steps are bit-reproducible (tests/gpu/run_train.sh resumes
 * a stopped run to the same bytes). */
int cuda_stage1_train_create(cuda_model_train **out, ra_model *student, const ra_model *teacher, ra_optim *optim,
                             const int *layers, int n_layers, int B, int T, int64_t max_bytes, ra_error *err);
/* *loss = Σ_l L_l; with want_grads, dloss·∂L/∂θ accumulated. */
int cuda_stage1_train_step(cuda_model_train *t, int want_grads, const int32_t *tokens, const int32_t *doc_start,
                           int B, int T, float dloss, double *loss, ra_error *err);

#ifdef __cplusplus
}
#endif

#endif
