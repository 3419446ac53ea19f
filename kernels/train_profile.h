/* RA_TRAIN_PROFILE=1: where a CUDA training step spends its time.
 *
 * The step's host code calls train_prof_mark(label) after each phase; a
 * mark records a cudaEvent on the ops stream, and the time between the
 * previous mark and this one is charged to `label` (a string literal).  The
 * events are read at the end of each optimiser step (train_prof_collect,
 * right after the optimiser's own synchronisation: it waits only for the
 * bf16 refresh queued behind it), and a step is everything from the end of
 * the previous optimiser step to the end of this one (its micro-batches,
 * evaluations, zeroing and optimiser); time the GPU sat idle while the host
 * prepared work is charged to the label of the first mark after it.
 * train_prof_report prints the table (total ms, ms per step, share) on
 * stderr; the first step's phases are dropped (one-time costs).  Without the
 * variable every call returns at once.  Library-internal host code
 * (kernels/train_profile.cu). */
#ifndef RA_TRAIN_PROFILE_H
#define RA_TRAIN_PROFILE_H

#ifdef __cplusplus
extern "C" {
#endif

int train_prof_on(void);
void train_prof_mark(const char *label);
/* Read every event recorded so far (the stream must have passed them). */
void train_prof_collect(void);
/* Count one optimiser step (for the per-step column; the first is dropped). */
void train_prof_step(void);
/* Synchronise, collect, print the table on stderr, reset. */
void train_prof_report(const char *title);

#ifdef __cplusplus
}
#endif

#endif
