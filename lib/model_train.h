/* Training a whole model on the CPU (MOHAWK stage 3, DESIGN §2.5): the
 * forward with saved activations, the loss, and the backward to every
 * parameter, for a teacher-shaped model (all heads attention, GQA, biases,
 * tied or untied LM head) and a hybrid student (routed or parallel, any kept
 * heads, DM2 heads).
 *
 *   x_0   = embed[tokens]
 *   x_l+1 = block_l(x_l)                  lib/block_train.h, activations saved per layer
 *   xf    = RMSNorm(x_L; model.norm)
 *   z     = xf · lm_headᵀ                 in row chunks (below)
 *   loss  = kd: soft-target CE(z / T, softmax(z_teacher))   lib/loss.h, mean over positions
 *           ce: hard-label CE with next-token labels        mean over counted positions
 *
 * Packed rows: doc_start [B·T] (optional) gives each token's document start
 * in its row, as lib/block_train.h takes it: attention never crosses a
 * document, SSM state and conv window reset, RoPE positions restart.
 *
 * Labels for `ce`: the caller's, as lib/train_data.h makes them (the tools:
 * the next token of the corpus, so a row's last position is labelled with
 * the first token of the next row when the document continues there).
 * Without labels (NULL) ra_next_token_labels makes them from the row alone:
 * position t gets token t+1 of the same row when that token belongs to the
 * same document; the last position of a row and of every document are
 * ignored (RA_LABEL_IGNORE).
 *
 * The teacher (kd) runs ra_forward_cpu up to its last residual (hidden_out,
 * no logits); its final norm and LM head are applied here, chunk by chunk,
 * next to the student's.
 *
 * Memory: besides the per-layer activations of lib/block_train.c (about
 * (14·D + 3·H·hd + 6·I + SSM) floats per token per layer, backward
 * workspace included), the vocabulary side holds only one chunk of R rows:
 * student logits [R, V] (overwritten by their gradient in place) and, for
 * kd, teacher logits [R, V], i.e. 2·R·V·4 bytes, with
 * R = max(1, logit_elems / V) rows (logit_elems ≤ 0 selects
 * RA_LOGIT_CHUNK_ELEMS: 4 Mi elements, 32 MiB for the pair whatever V is;
 * at V = 128256 that is R = 32 rows).  No [B·T, V] array is ever made.
 * Plus per token: the final residual, its normed copy and its gradient
 * (3·D floats), the teacher's last residual (D floats, kd) and the
 * teacher's forward state (ra_forward_state_create).
 *
 * Gradients ACCUMULATE into ra_model_grads (lib/ops.h conventions); the
 * caller zeroes them once per optimiser step (ra_optim_zero_grad does, once
 * registered).  Implemented in lib/model_train.c. */
#ifndef RA_MODEL_TRAIN_H
#define RA_MODEL_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "block_train.h"
#include "error.h"
#include "loss.h" /* RA_LABEL_IGNORE */
#include "model.h"
#include "optim.h"

#define RA_LOGIT_CHUNK_ELEMS (4 << 20)

typedef enum ra_stage3_loss { RA_LOSS_KD = 0, RA_LOSS_CE = 1 } ra_stage3_loss;

struct ra_train_stage; /* lib/train_run.h */

/* "kd" | "ce"; -1 otherwise. */
int ra_stage3_loss_parse(const char *s, ra_stage3_loss *out);
const char *ra_stage3_loss_name(ra_stage3_loss l);

/* A gradient array for every parameter of m (ra_model_tensor_list order),
 * laid out as the model: layers[l] is a ra_block_grads (lib/block_train.h),
 * embed / final_norm / lm_head the rest (lm_head == embed when tied). */
typedef struct ra_model_grads {
    ra_model *m;
    int n;                  /* parameters, = ra_model_tensor_list(m) */
    ra_model_tensor *t;     /* [n] name, shape, slot in m */
    float **grad;           /* [n] the gradient of t[i] */
    int n_layers;
    ra_block_grads **layers; /* [n_layers] */
    float *embed, *final_norm, *lm_head; /* NULL once released */
} ra_model_grads;

ra_model_grads *ra_model_grads_create(ra_model *m);
void ra_model_grads_zero(ra_model_grads *g);
void ra_model_grads_free(ra_model_grads *g);
/* ra_optim_add every parameter (weights m's, gradients g's) by its model
 * tensor name, in ra_model_tensor_list order. */
int ra_model_grads_register(ra_model_grads *g, ra_optim *o, ra_error *err);
/* After ra_optim_freeze: free the gradient arrays of frozen parameters
 * outside the mixers (embedding, LM head, RMSNorms, MLPs), set them NULL
 * here and in o (a frozen parameter needs none), so the backward neither
 * stores nor computes them (--freeze embed skips the LM head's weight
 * gradient, a GEMM as large as the logits).  Mixer parameters keep theirs
 * (the DM2 backward fills every array).  Returns the floats released. */
int64_t ra_model_grads_release_frozen(ra_model_grads *g, ra_optim *o);

typedef struct ra_model_train ra_model_train;

/* Buffers for batches of B rows × T tokens of `student`; teacher NULL for
 * ce (required for kd; it must share the student's vocabulary and hidden
 * size — ra_stage3_check_pair).  logit_elems: see Memory above.  NULL with
 * *err filled for an invalid shape. */
ra_model_train *ra_model_train_create(ra_model *student, const ra_model *teacher, int B, int T, int logit_elems,
                                      ra_error *err);
void ra_model_train_free(ra_model_train *mt);
/* Rows of the vocabulary chunk in use (R above). */
int ra_model_train_logit_rows(const ra_model_train *mt);

/* labels [B·T] for ce from tokens and doc_start (NULL = one document per row). */
void ra_next_token_labels(int32_t *labels, const int32_t *tokens, const int32_t *doc_start, int B, int T);

/* The loss-specific checks of a micro-batch, shared by the CPU and CUDA
 * steps: kd needs a teacher (has_teacher) and temperature > 0 (EX_USAGE);
 * ce uses labels, or (NULL) ra_next_token_labels made into scratch [B·T],
 * and refuses a label outside 0..V−1 that is not RA_LABEL_IGNORE
 * (EX_DATAERR).  *labels_out: the labels to use (NULL for kd); *total: the
 * positions the loss averages over (B·T for kd, the counted labels for ce). */
int ra_stage3_batch_labels(ra_stage3_loss kind, int has_teacher, float temperature, const int32_t *tokens,
                           const int32_t *doc_start, const int32_t *labels, int B, int T, int V, int32_t *scratch,
                           const int32_t **labels_out, int *total, ra_error *err);

/* One batch (B, T as created): forward and loss (*loss), then, with g
 * non-NULL, the backward of dloss · loss into g.
 *   kd: temperature T_kd > 0 (the student's logits are divided by it);
 *       labels unused.
 *   ce: labels [B·T] (NULL = ra_next_token_labels); *counted (may be NULL)
 *       receives the positions counted; a batch with none has loss 0.
 * Errors: EX_DATAERR for a token id outside the vocabulary or a bad label
 * or doc_start (naming row and position), EX_USAGE for kd without teacher. */
int ra_model_train_step(ra_model_train *mt, const ra_model_grads *g, ra_stage3_loss kind, const int32_t *tokens,
                        const int32_t *doc_start, const int32_t *labels, int B, int T, float temperature, float dloss,
                        double *loss, int *counted, ra_error *err);

/* ---- the same step on the GPU (kernels/model_train_cuda.h) ----------------
 * A stage for lib/train_run.h whose micro-batches, evaluation and optimiser
 * run on the device: fills st->ctx, st->micro_step, st->eval and st->device
 * (the caller sets the rest).  optim: the host optimiser with the student's
 * parameters registered (ra_model_grads_register); the driver's --freeze
 * is applied to it before the device optimiser is made.  Errors:
 * EX_UNAVAILABLE when this build has no CUDA training step, there is no
 * GPU, or the model's shape is not supported (the message says which);
 * EX_OSERR when the GPU lacks memory (naming the buffer and the batch).
 * Implemented in lib/model_train_device.c. */
typedef struct ra_stage3_device ra_stage3_device;
int ra_stage3_device_create(ra_stage3_device **out, struct ra_train_stage *st, ra_model *student, const ra_model *teacher,
                            ra_optim *optim, ra_stage3_loss loss, float temperature, int B, int T, ra_error *err);
void ra_stage3_device_free(ra_stage3_device *d);
/* Rows of the vocabulary chunk; device memory high-water mark in bytes
 * (cudaMemGetInfo: total − free, sampled after set-up and every
 * micro-batch). */
int ra_stage3_device_logit_rows(const ra_stage3_device *d);
size_t ra_stage3_device_peak_bytes(const ra_stage3_device *d);

/* Teacher/student compatibility for kd: same vocabulary size and hidden
 * size, and when the student records a teacher id (meta.hybrid), it is the
 * teacher's content id.  EX_DATAERR naming both sources otherwise. */
int ra_stage3_check_pair(const ra_model *teacher, const ra_model *student, ra_error *err);

#endif
