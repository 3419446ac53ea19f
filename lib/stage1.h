/* MOHAWK stage 1, matrix orientation (DESIGN §2.5), CPU, fp32: the
 * objective and its gradient for the SSM heads of chosen layers of a hybrid
 * student, computed against its teacher.
 *
 * For every chosen layer l and every batch row, from the TEACHER's hidden
 * state x entering layer l:
 *   A_h  = the teacher's causal softmax attention probabilities of query
 *          head q(h) (after RoPE and GQA expansion; 0 above the diagonal
 *          and across document starts), [T, T]; computed by the teacher
 *          forward itself (ra_forward_cpu's probs_out), so it is exactly
 *          the attention the teacher runs;
 *   xn   = RMSNorm(x; the student's input_layernorm of layer l);
 *   Ts_h = the DiscreteMamba2 mixing matrix of SSM head h on xn
 *          (dm2_matrix_forward: in_proj, conv, −softplus decay, D on the
 *          diagonal; state and conv window reset at document starts);
 *   L_l  = mean over rows and SSM heads of ‖Ts_h − A_h‖_F   (loss_matrix_*)
 * and the objective is L = Σ_l L_l.
 *
 * Head pairing, SSM head h of layer l ↔ teacher query head q(h):
 *   routed:   SSM head h runs in slot ssm_heads[h], so q(h) = ssm_heads[h]
 *             (the teacher head whose place it takes);
 *   parallel: the full-width SSM has all H heads and head h is paired with
 *             query head h (the kept heads also run beside it, but every
 *             SSM head still learns its own query head's matrix).
 *
 * What trains: only parameters the mixing matrix depends on, which are all
 * SSM (mixer) parameters: per layer the B, C and A_log rows of
 * mixer.in_proj.weight, the B and C channels of mixer.conv1d.{weight,bias},
 * and mixer.D.  They are registered with the optimiser as row slices
 * (ra_stage1_register, names in ra_stage1.h's list below), so the x and z
 * rows, the x conv channels, z_bias, out_proj, the kept attention heads,
 * the adapter, the norms (including the input RMSNorm above: a copy of the
 * teacher's, not a mixer parameter) and the MLP are not touched at all —
 * not even by weight decay, which would otherwise shrink matrices that get
 * no gradient in this stage.  Slice names:
 *   model.layers.<l>.mixer.in_proj.weight[BC]     [2·G·N, D]
 *   model.layers.<l>.mixer.in_proj.weight[A_log]  [Hs, D]
 *   model.layers.<l>.mixer.conv1d.weight[BC]      [2·G·N, 4]
 *   model.layers.<l>.mixer.conv1d.bias[BC]        [2·G·N]
 *   model.layers.<l>.mixer.D                      [Hs]
 *
 * Memory: rows are processed one at a time; a row needs, for the layer with
 * the most SSM heads Hs, the teacher matrices and the student matrices
 * (2·Hs·T² floats; the gradient is formed in place of the student's), plus
 * per thread three T×T scratch matrices in the SSD matrix backward
 * (ra_stage1_matrix_bytes).  For the Llama-3.2-1B shape (H = 32) that is
 * 1.1 GB at T = 2048 and 4.3 GB at T = 4096 plus the per-thread scratch.
 * ra_stage1_create refuses a T whose bound exceeds max_bytes.
 *
 * Compute per row: the teacher forward runs once through the chosen layers
 * (each chosen layer's call also returns its probabilities), the student
 * side is O(Hs·T²·N) per layer.  Implemented in lib/stage1.c. */
#ifndef RA_STAGE1_H
#define RA_STAGE1_H

#include <stdint.h>

#include "error.h"
#include "model.h"
#include "optim.h"

/* Default bound on ra_stage1_matrix_bytes (8 GiB). */
#define RA_STAGE1_DEFAULT_MAX_BYTES ((int64_t)8 << 30)

typedef struct ra_stage1 ra_stage1;

/* EX_DATAERR unless teacher is a teacher (no meta.hybrid) and student a
 * hybrid student made from it (ra_stage2_check_pair: configs equal, and the
 * recorded teacher id, when there is one, is teacher's content id).
 * tname/sname name the inputs in messages. */
int ra_stage1_check_models(const ra_model *teacher, const char *tname, const ra_model *student, const char *sname,
                           ra_error *err);

/* SSM head h of layer → teacher query head heads[h] (pairing above);
 * returns the number of SSM heads (0: the layer has none). */
int ra_stage1_pairing(const ra_model *student, int layer, int *heads);

/* Bytes of the matrices and scratch one row of length T needs (see above),
 * for the chosen layers (layers NULL = all) with `threads` OpenMP threads. */
int64_t ra_stage1_matrix_bytes(const ra_model *student, const uint8_t *layers, int T, int threads);

/* Stage 1 for the layers flagged in layers [num_layers] (NULL = every
 * layer) that have SSM heads, rows of up to T_max tokens.  Checks the
 * models (ra_stage1_check_models); EX_USAGE when no chosen layer has an SSM
 * head, or when the memory bound for T_max exceeds max_bytes (≤ 0:
 * RA_STAGE1_DEFAULT_MAX_BYTES), naming the figure.  The student's SSM
 * weights are used in place (the optimiser updates them there). */
int ra_stage1_create(const ra_model *teacher, ra_model *student, const uint8_t *layers, int T_max, int64_t max_bytes,
                     ra_stage1 **out, ra_error *err);
void ra_stage1_free(ra_stage1 *s);

/* Chosen layers that have SSM heads: count, and the i-th. */
int ra_stage1_n_layers(const ra_stage1 *s);
int ra_stage1_layer(const ra_stage1 *s, int i);

/* Register the trainable slices (names above) with o, gradients in
 * buffers owned by s.  EX_SOFTWARE on a duplicate name. */
int ra_stage1_register(ra_stage1 *s, ra_optim *o, ra_error *err);

/* The full gradient arrays of chosen layer i (all of dm2_params' shapes;
 * entries outside the trained slices stay 0).  For tests. */
const dm2_params *ra_stage1_grads(const ra_stage1 *s, int i);

/* The objective on B rows of T tokens (doc_start [B·T] optional, as in
 * lib/forward.h): *loss = L.  With backward set, ACCUMULATES dloss·∂L/∂θ
 * into the gradient buffers.  EX_DATAERR for bad token ids / doc_start,
 * EX_USAGE for T > T_max. */
int ra_stage1_loss(ra_stage1 *s, const int32_t *tokens, const int32_t *doc_start, int B, int T, float dloss,
                   int backward, double *loss, ra_error *err);

/* The teacher matrices the objective compares, for chosen layer `layer`
 * and one row: A [Hs, T, T] in SSM-head order, from x [T, D] (the teacher's
 * hidden state entering the layer) and doc_start [T] (optional).  The same
 * code path ra_stage1_loss uses; exposed for tests. */
int ra_stage1_teacher_matrices(ra_stage1 *s, int layer, const float *x, const int32_t *doc_start, int T, float *A,
                               ra_error *err);

/* The same stage on the GPU (kernels/model_train_cuda.h's stage-1 mode):
 * fills st->ctx, st->micro_step, st->eval and st->device for the driver;
 * optim holds the slices ra_stage1_register registered (a CPU stage made
 * for T_max 1 serves for that).  layers: the chosen layers with SSM heads,
 * ascending (ra_stage1_layer).  The device holds 2 · Hs · T² fp32 matrices
 * per batch row for as many rows at a time as max_bytes allows (≤ 0:
 * RA_STAGE1_DEFAULT_MAX_BYTES; EX_USAGE when one row does not fit).
 * EX_UNAVAILABLE without CUDA or a GPU or for an unsupported shape,
 * EX_OSERR when the GPU lacks memory.  Implemented in
 * lib/model_train_device.c. */
struct ra_train_stage;
typedef struct ra_stage1_device ra_stage1_device;
int ra_stage1_device_create(ra_stage1_device **out, struct ra_train_stage *st, const ra_model *teacher,
                            ra_model *student, const int *layers, int n_layers, ra_optim *optim, int B, int T,
                            int64_t max_bytes, ra_error *err);
void ra_stage1_device_free(ra_stage1_device *d);
/* Device memory high-water mark in bytes (as ra_stage3_device_peak_bytes). */
size_t ra_stage1_device_peak_bytes(const ra_stage1_device *d);

#endif
