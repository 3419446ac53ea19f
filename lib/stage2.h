/* MOHAWK stage 2, hidden-state alignment (DESIGN §2.5), on the CPU: the
 * stage ra-mohawk2 plugs into the training driver (lib/train_run.h).
 *
 * Per micro-batch: the teacher runs once (ra_forward_cpu up to the last
 * listed layer, hidden_out for every listed layer l and l + 1); then for
 * each listed layer l the student's block l runs on the teacher's residual
 * entering l and is trained towards the teacher's residual entering l + 1
 * (for the last layer: the residual before the final norm):
 *     L_l = mean over tokens of ‖block_l(h_l) − h_{l+1}‖₂,   L = Σ_l L_l
 * (lib/block_train.h's ra_block_stage2, which takes the batch's doc_start).
 * Layers are independent: block l's gradient depends only on L_l, AdamW is
 * elementwise, and the teacher's residuals do not depend on which layers are
 * listed, so training layers {a, b} together gives the same bits as
 * training {a} and {b} separately with the same flags (except with --clip,
 * whose global gradient norm spans every trained layer).
 *
 * --train block (default): every parameter of the block (norms, mixer,
 * MLP); --train mixer: the mixer only (attention/SSM/adapter/o_proj).
 *
 * Pairing: the student must have the teacher's config (meta.config equal
 * as JSON) and, when its meta.hybrid names a teacher id, that id must be
 * the teacher's content id; otherwise EX_DATAERR naming what differs.
 * Implemented in lib/stage2.c. */
#ifndef RA_STAGE2_H
#define RA_STAGE2_H

#include <jansson.h>

#include "dtype.h"
#include "error.h"
#include "model.h"
#include "optim.h"
#include "train_data.h"

/* "3", "0-15", "1,4-6" (ascending or not; duplicates refused) → a sorted
 * list of distinct layers in 0..n_layers−1 (*out malloc'ed).  EX_USAGE with
 * a message naming the bad item. */
int ra_parse_layer_list(const char *spec, int n_layers, int **out, int *n, ra_error *err);

/* EX_DATAERR when student was not made from teacher (see above). */
int ra_stage2_check_pair(const ra_model *teacher, const ra_model *student, ra_error *err);

typedef struct ra_stage2 ra_stage2;

/* A stage over the listed layers for micro-batches of B rows of T tokens.
 * The models must outlive it. */
int ra_stage2_create(const ra_model *teacher, ra_model *student, const int *layers, int n_layers, int mixer_only,
                     int B, int T, ra_stage2 **out, ra_error *err);
void ra_stage2_free(ra_stage2 *s);

/* Register the trained parameters of the listed layers (model tensor names,
 * the student's weights, the stage's gradients) with o. */
int ra_stage2_register(ra_stage2 *s, ra_optim *o, ra_error *err);

/* The driver's callbacks (ctx = the ra_stage2). */
int ra_stage2_micro_step(void *ctx, const ra_train_batch *b, float dloss, double *loss, ra_error *err);
int ra_stage2_eval(void *ctx, const ra_train_batch *b, double *loss, ra_error *err);
/* The per-layer losses of the last micro_step/eval call ([n_layers]). */
const double *ra_stage2_layer_losses(const ra_stage2 *s);

/* Write the listed layers' tensors (all of each layer: with --train mixer
 * the norms and MLP are the student's unchanged) as a model stream with the
 * student's meta, so `ra-merge STUDENT part...` yields the whole student. */
int ra_stage2_write(const ra_stage2 *s, const char *path, ra_dtype dtype, const json_t *provenance, char *content_id,
                    ra_error *err);

/* The same stage on the GPU (kernels/model_train_cuda.h's stage-2 mode):
 * fills st->ctx, st->micro_step, st->eval and st->device for the driver;
 * optim holds the parameters ra_stage2_register registered (a CPU stage
 * made for a 1 × 1 batch serves for that and for ra_stage2_write).
 * EX_UNAVAILABLE without CUDA or a GPU or for an unsupported shape,
 * EX_OSERR when the GPU lacks memory.  Implemented in
 * lib/model_train_device.c. */
struct ra_train_stage;
typedef struct ra_stage2_device ra_stage2_device;
int ra_stage2_device_create(ra_stage2_device **out, struct ra_train_stage *st, const ra_model *teacher,
                            ra_model *student, const int *layers, int n_layers, ra_optim *optim, int B, int T,
                            ra_error *err);
void ra_stage2_device_free(ra_stage2_device *d);
/* Device memory high-water mark in bytes (as ra_stage3_device_peak_bytes). */
size_t ra_stage2_device_peak_bytes(const ra_stage2_device *d);

/* The dtype of the tensors of a model stream (its first tensor), for
 * writing parts that ra-merge accepts; an HF directory or a stream without
 * tensors gives f32. */
int ra_model_stream_dtype(const char *path, ra_dtype *out, ra_error *err);

#endif
