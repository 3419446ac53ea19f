/* KV retrieval (DESIGN §2.6): ra-probe's prompts (lib/probe_prompts.h) with
 * a held-out seed, at several pair counts, in one or both scoring modes,
 * scored exactly as ra-probe scores its baseline (lib/probe.h, probe_eval).
 * With a teacher, the same prompts through the teacher give the retrieval
 * coverage = student accuracy / teacher accuracy.
 *
 * Tables kv_choice / kv_last_token, one row per pair count: pairs,
 * samples, acc, logprob (mean log-probability of the right answer) and with
 * a teacher teacher_acc, coverage.  Metrics kv_<mode>_<pairs>_acc,
 * kv_<mode>_acc (mean over the pair counts), and with a teacher
 * kv_<mode>_<pairs>_coverage, kv_<mode>_coverage (mean student accuracy /
 * mean teacher accuracy). */
#ifndef RA_EVAL_KV_H
#define RA_EVAL_KV_H

#include "eval.h"
#include "eval_results.h"
#include "probe.h"
#include "tokenizer.h"

#define EVAL_KV_DEFAULT_SEED 1000003 /* ra-probe's default is 1: these prompts are held out */

typedef struct eval_kv_opts {
    const probe_words *words;
    int n_pairs;
    const int *pairs;  /* [n_pairs], each 1..PROBE_MAX_PAIRS */
    int samples;
    uint64_t seed;
    int modes;         /* bit 1 << PROBE_SCORE_CHOICE, bit 1 << PROBE_SCORE_LAST_TOKEN */
    int batch;         /* rows per forward call (0: 16) */
} eval_kv_opts;

/* The accuracy and mean log-probability of one model on one prompt set. */
int eval_kv_score(const eval_model *em, const probe_data *d, int batch, double *acc, double *logprob, ra_error *err);

/* teacher may be NULL; both models share the tokenizer. */
int eval_kv(const eval_model *student, const eval_model *teacher, ra_tokenizer *tok, const eval_kv_opts *o,
            eval_results *r, ra_error *err);

#endif
