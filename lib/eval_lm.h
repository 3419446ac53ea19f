/* Language modelling on a held-out tokens stream (DESIGN §2.6): perplexity
 * of the model and, with a teacher, the teacher's perplexity and the mean
 * KL(teacher ‖ student) per token (lib/loss.h loss_kl, T = 1).
 *
 * Every document (documents layout) is cut into windows of at most ctx
 * tokens (no overlap, nothing carried between windows); a window of w
 * tokens predicts its tokens 1..w−1 from the ones before, so those w−1
 * positions are the ones counted, for the NLL and for the KL alike.
 * Windows are packed whole into rows of ctx tokens (lib/forward.h
 * doc_start keeps them apart: positions restart, attention and SSM state do
 * not cross), `batch` rows per forward call, logits only at the counted
 * positions.
 *   nll = Σ −log p(token | window prefix) / counted,  ppl = exp(nll)
 *   kd  = Σ KL(p_teacher ‖ p_student) / counted
 * Table "lm": documents, tokens (counted positions), nll, ppl, and with a
 * teacher teacher_nll, teacher_ppl, kd.  Metrics nll, ppl (teacher_nll,
 * teacher_ppl, kd). */
#ifndef RA_EVAL_LM_H
#define RA_EVAL_LM_H

#include "eval.h"
#include "eval_results.h"
#include "tokens.h"

typedef struct eval_lm_opts {
    int ctx;   /* window and row length, ≥ 2 */
    int batch; /* rows per forward call, ≥ 1 */
} eval_lm_opts;

typedef struct eval_lm_result {
    int64_t documents, counted;
    double nll, teacher_nll, kd; /* means; teacher ones NaN without a teacher */
} eval_lm_result;

/* tk: documents layout, ids already checked against the vocabulary.
 * teacher may be NULL.  The teacher must have the model's vocabulary. */
int eval_lm_run(const eval_model *s, const eval_model *t, const ra_tokens *tk, const eval_lm_opts *o,
                eval_lm_result *res, ra_error *err);

/* eval_lm_run, then the table and metrics. */
int eval_lm(const eval_model *s, const eval_model *t, const ra_tokens *tk, const eval_lm_opts *o, eval_results *r,
            ra_error *err);

#endif
