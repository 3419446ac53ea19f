/* Training checkpoints: the whole state a stage tool needs to continue a run
 * exactly (formats/checkpoint.md).
 *
 * A checkpoint is an ra stream of kind "checkpoint" (written atomically by
 * the stream writer: temporary file, fsync, rename), holding
 *   meta: step, tokens, data_position, the run's RNG state, the learning-
 *         rate schedule, the AdamW hyper-parameters, the names of the
 *         trainable and frozen parameters, and `run`, a JSON object the tool
 *         fills (model config and content id of the base model, stage,
 *         command-line parameters ...);
 *   tensors: for every trainable parameter, in the optimiser's order,
 *         param/<name> (fp32 master weights), adam_m/<name>, adam_v/<name>.
 * Frozen parameters are not stored: they are the base model's, which the
 * tool reloads (and identifies through `run`).
 *
 * Exact resume: every number is stored bit for bit (tensors as f32, doubles
 * as msgpack float64, 64-bit RNG words as hex), so a run interrupted after
 * a checkpoint and resumed from it ends with the same bits as an
 * uninterrupted run, given the same data order (data_position + rng) and a
 * deterministic backend.
 *
 * Files of a run directory are named ckpt-<step, 12 digits>.ra;
 * ra_checkpoint_latest finds the newest, ra_checkpoint_prune keeps the
 * newest few.  Implemented in lib/checkpoint.c. */
#ifndef RA_CHECKPOINT_H
#define RA_CHECKPOINT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "optim.h"
#include "rng.h"
#include "schedule.h"

/* The run state besides the optimiser (whose step counter, hyper-parameters,
 * weights and moments are stored from / restored into the ra_optim). */
typedef struct ra_checkpoint {
    int64_t tokens;        /* training tokens consumed */
    int64_t data_position; /* the data reader's cursor (tool-defined) */
    ra_rng rng;            /* the run's generator */
    ra_wsd schedule;
    json_t *run; /* tool-defined object; borrowed on write, a new reference after read (NULL = {}) */
} ra_checkpoint;

/* Write o's trainable parameters and moments (allocated first if the
 * optimiser never stepped) with ck.  provenance may be NULL.  content_id
 * (may be NULL) receives the stream's id. */
int ra_checkpoint_write(const char *path, const ra_checkpoint *ck, const ra_optim *o, const json_t *provenance,
                        char *content_id, ra_error *err);

/* Restore ck and o from path.  o must hold the same parameters (names and
 * shapes) with the same ones frozen: the caller registers the model's
 * parameters and applies --freeze first.  The whole stream is verified
 * (kind, meta, trailer digest, every tensor's name, dtype and shape) before
 * anything is changed, so on error ck and o are untouched.  Restores o's
 * weights, moments, step, last_grad_norm and AdamW hyper-parameters.
 * Errors: EX_NOINPUT (missing), EX_DATAERR (corrupt, truncated, not a
 * checkpoint, or a different parameter set, naming the parameter), EX_IOERR. */
int ra_checkpoint_read(const char *path, ra_checkpoint *ck, ra_optim *o, ra_error *err);

/* Release ck->run. */
void ra_checkpoint_clear(ra_checkpoint *ck);

/* DIR/ckpt-<step>.ra into buf; EX_SOFTWARE if it does not fit. */
int ra_checkpoint_path(char *buf, size_t cap, const char *dir, int64_t step, ra_error *err);

/* Create dir if needed (one level), write ckpt-<o->step>.ra there, then
 * remove all but the newest `keep` checkpoints (keep ≤ 0: keep all).
 * path (may be NULL, cap bytes) receives the file written. */
int ra_checkpoint_save(const char *dir, int keep, const ra_checkpoint *ck, const ra_optim *o,
                       const json_t *provenance, char *path, size_t cap, ra_error *err);

/* The newest checkpoint of dir (highest step in a ckpt-<digits>.ra name;
 * temporary files of interrupted writes never match).  0 with path and
 * *step (may be NULL) filled; EX_NOINPUT when dir is missing or holds none. */
int ra_checkpoint_latest(const char *dir, char *path, size_t cap, int64_t *step, ra_error *err);

/* Remove all but the newest keep (≥ 1) checkpoints of dir. */
int ra_checkpoint_prune(const char *dir, int keep, ra_error *err);

#endif
