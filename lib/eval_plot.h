/* PNG plots with gnuplot (the program named by $RA_GNUPLOT, default
 * "gnuplot" on PATH).  Each plot is a gnuplot script with its data inline,
 * piped to gnuplot, which writes DIR/<name>.png (through a temporary name
 * renamed into place):
 *   kv.png     accuracy vs pairs, one line per scoring mode (and the
 *              teacher's, dashed)             from tables kv_*
 *   mem.png    decode-state MB vs length (and the teacher's)   table mem
 *   speed.png  decode tokens/s vs batch                       table speed
 *   loss.png   loss vs step, one line per training log (TSV: a header row,
 *              first columns step and tokens, a column named loss)
 * No gnuplot: EX_UNAVAILABLE (exit 69) naming it. */
#ifndef RA_EVAL_PLOT_H
#define RA_EVAL_PLOT_H

#include "error.h"
#include "eval_results.h"

/* 0 when gnuplot can be run, else EX_UNAVAILABLE. */
int eval_plot_available(ra_error *err);

/* The plots the results have data for; *written (may be NULL) the count. */
int eval_plot_results(const eval_results *r, const char *dir, int *written, ra_error *err);

/* Loss curves of training logs.  EX_NOINPUT for a missing log, EX_DATAERR
 * ("LOG:LINE: ...") for a header without step/loss or a malformed line. */
int eval_plot_logs(const char *const *logs, int n, const char *dir, ra_error *err);

/* A training log's step and loss columns (exposed for tests). */
typedef struct eval_log {
    int n;
    double *step, *loss;
} eval_log;
int eval_log_load(const char *path, eval_log *out, ra_error *err);
void eval_log_free(eval_log *l);

#endif
