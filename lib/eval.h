/* ra-eval's engine (DESIGN §2.6): what every evaluation task gets, and the
 * tasks themselves, one concern per file:
 *   eval_results.c  tables + headline metrics; results stream, Markdown, JSON
 *   eval_kv.c       KV retrieval (the probe's generator and scoring)
 *   eval_lm.c       perplexity and KL(teacher ‖ student) on a tokens stream
 *   eval_mc.c       multiple-choice log-likelihood tasks from JSONL
 *   eval_gen.c      greedy generation tasks from JSONL (contains / exact)
 *   eval_jsonl.c    the JSONL reader both use
 *   eval_mem.c      decode-state bytes per sequence
 *   eval_speed.c    prefill / decode throughput over a batch sweep
 * gen and speed decode through lib/decode_backend.h (CPU or CUDA).
 *   eval_plot.c     PNG plots with gnuplot
 * Tasks never print results themselves: they add tables and metrics to an
 * eval_results, which the tool writes. */
#ifndef RA_EVAL_H
#define RA_EVAL_H

#include <stdint.h>

#include "cli.h"
#include "error.h"
#include "forward.h"
#include "model.h"

/* A model as a task sees it: weights, the forward backend of its device and
 * the head mask of --ablate ([layers × H], 1 = keep; NULL = all heads). */
typedef struct eval_model {
    const ra_model *m;
    const ra_forward_backend *be;
    ra_device device;
    const uint8_t *head_keep;
} eval_model;

#endif
