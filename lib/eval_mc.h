/* Multiple-choice log-likelihood tasks (ARC / PIQA / HellaSwag / Winogrande
 * style, as lm-evaluation-harness exports them): a JSONL file with one
 * {"context": str, "choices": [str, ...], "gold": int} per line.
 *
 * Each choice is a continuation of the context, tokenised as ra-probe
 * tokenises its candidates (lib/probe.h probe_continuation_ids: the tail of
 * encode(context + choice) after encode(context), the context with the
 * tokenizer's specials); its log-likelihood is the sum of the log-
 * probabilities of its tokens (probe_eval_candidates).
 *   acc       the choice of highest log-likelihood is gold
 *   acc_norm  the choice of highest log-likelihood / characters (Unicode
 *             code points of the choice string, as lm-evaluation-harness)
 *             is gold
 * Ties go to the first choice.  Table mc_<name> (name from the file name):
 * items, acc, acc_norm (teacher_acc, teacher_acc_norm); metrics
 * mc_<name>_acc, mc_<name>_acc_norm (and the teacher's). */
#ifndef RA_EVAL_MC_H
#define RA_EVAL_MC_H

#include "eval.h"
#include "eval_results.h"
#include "probe.h"
#include "tokenizer.h"

typedef struct eval_mc_item {
    int line;
    const char *context;
    int n_choices;
    const char **choices; /* borrowed from the JSON */
    int gold;
} eval_mc_item;

typedef struct eval_mc_set {
    char name[64];
    char *path;
    int n;
    eval_mc_item *items;
    void *json; /* the eval_jsonl holding the strings */
} eval_mc_set;

/* EX_DATAERR naming FILE:LINE for a missing or mistyped field, fewer than 1
 * choice, or gold outside 0..choices−1. */
int eval_mc_load(const char *path, eval_mc_set *out, ra_error *err);
void eval_mc_free(eval_mc_set *s);

/* Tokenise into probe data (choice mode; item i = line i, correct = gold). */
int eval_mc_build(const eval_mc_set *s, ra_tokenizer *tok, int vocab_size, probe_data *d, ra_error *err);

/* Score built data: acc and acc_norm over the items; cand_chars [Σ n_cand]
 * the normalising lengths; ll (optional, [Σ n_cand]) every choice's
 * log-likelihood. */
int eval_mc_score(const eval_model *em, const probe_data *d, const int *cand_chars, int batch, double *acc,
                  double *acc_norm, double *ll, ra_error *err);

/* Load-free whole task: build, score the model (and teacher), add the table. */
int eval_mc(const eval_model *s, const eval_model *t, ra_tokenizer *tok, const eval_mc_set *set, int batch,
            eval_results *r, ra_error *err);

#endif
