/* ra-probe's engine: the retrieval importance of every attention head
 * (DESIGN §2.2).
 *
 * Data.  Each prompt becomes one or more token rows and a list of scoring
 * targets.  A target is (row, position, token): the log-probability of
 * `token` given the row's tokens up to `position` (the logits at that
 * position).  A candidate's log-probability is the sum over its targets.
 *  - choice: the candidates are the K values appended directly after the
 *    prompt.  Candidates of one token are all scored at the prompt's last
 *    position; longer ones need their own prefixes, so a row is the prompt
 *    plus a proper prefix of some candidates (rows whose prefix is a prefix
 *    of another row's are merged into it).  Correct = the correct candidate
 *    has the highest log-probability (the first one on ties, like argmax).
 *  - last-token: one candidate, the answer " <value>"; the row is the prompt
 *    plus the answer without its last token, the target is the last token.
 *    Correct = that token is the top-1 over the whole vocabulary.
 * Scored positions of a row are always its last `n_scored` positions.
 *
 * Exact ablation.  The residual entering each layer is cached from one
 * baseline forward per chunk of rows; ablating head (l, h) restarts from the
 * cache at layer l (layers before it are never recomputed), with many
 * (prompt, head) ablations packed into one forward call as batch rows that
 * carry their own head masks, and logits only at the scored positions.
 *
 * Attribution.  One forward and one backward (CPU): for every head,
 * Σ_positions grad·output of the head (before o_proj), where the objective is
 * the mean over prompts of the correct answer's log-probability; a
 * first-order estimate of the log-prob drop when the head is zeroed. */
#ifndef RA_PROBE_H
#define RA_PROBE_H

#include <stdint.h>

#include "cli.h"
#include "error.h"
#include "forward.h"
#include "model.h"
#include "probe_prompts.h"

typedef struct probe_target {
    int row;      /* global row index */
    int pos;      /* position in the row whose logits predict token */
    int32_t token;
} probe_target;

typedef struct probe_row {
    int prompt;      /* the prompt it belongs to */
    int n_tokens;
    int32_t *tokens; /* owned */
    int n_scored;    /* scored positions: n_tokens - n_scored .. n_tokens - 1 */
    int scored_base; /* index of its first scored position among all rows' */
} probe_row;

typedef struct probe_item {
    int first_row, n_rows; /* its rows are contiguous */
    int n_cand;            /* K (choice) or 1 (last-token) */
    int correct;           /* index of the correct candidate */
    int *cand_start;       /* [n_cand + 1]: candidate c's targets are targets[cand_start[c] .. cand_start[c+1]) */
    probe_target *targets; /* owned */
} probe_item;

typedef struct probe_data {
    probe_score_mode mode;
    int n_items, n_rows, n_scored; /* n_scored: all rows' scored positions */
    probe_item *items;
    probe_row *rows;
    int max_tokens, max_rows_per_item, max_scored_per_row;
} probe_data;

/* Append one prompt given as token ids.  choice: cand[c] (cand_len[c] ≥ 1
 * tokens) are the K continuations, `correct` indexes the right one.
 * last-token: n_cand = 1, cand[0] the answer's tokens, correct = 0. */
void probe_data_add(probe_data *d, const int32_t *prompt, int n_prompt, int n_cand, const int32_t *const *cand,
                    const int *cand_len, int correct);
void probe_data_free(probe_data *d);

/* Tokenise generated prompts with the teacher's tokenizer: the prompt with
 * the post-processor's specials (BOS), each continuation as the tokens that
 * follow the prompt's in the encoding of prompt + continuation (or, when the
 * prompt's tokens are not a prefix of it, the continuation encoded alone).
 * Token ids ≥ vocab_size are EX_DATAERR. */
struct ra_tokenizer;
int probe_data_build(const probe_prompts *ps, struct ra_tokenizer *tok, probe_score_mode mode, int vocab_size,
                     probe_data *out, ra_error *err);

/* The tokens of continuation `cont` after `prompt` (whose encoding with
 * specials is prompt_ids), as probe_data_build takes them: the tail of
 * encode(prompt + cont) when prompt_ids is its prefix, else encode(cont)
 * alone.  out is reset first; a continuation of no tokens is EX_DATAERR.
 * (ra-eval's multiple-choice tasks use it too.) */
struct ra_ids;
int probe_continuation_ids(struct ra_tokenizer *tok, const char *prompt, const struct ra_ids *prompt_ids,
                           const char *cont, struct ra_ids *out, ra_error *err);

/* Write the rows and targets as JSON (for reference implementations that
 * must score exactly the same token ids): {"mode", "rows": [[ids]...],
 * "items": [{"first_row", "n_rows", "correct", "candidates": [[[row, pos,
 * token], ...], ...]}, ...]}.  path "-" is stdout. */
int probe_data_dump_json(const probe_data *d, const char *path, ra_error *err);

/* Per-prompt outcome: log-probability of the correct answer, and whether it
 * was the model's choice. */
typedef struct probe_outcome {
    double logprob;
    uint8_t correct;
} probe_outcome;

/* Scoring shared by the engines.  For an item, its scored positions are
 * numbered 0.. in row order (probe_item_n_scored of them) and its targets in
 * candidate order (cand_start[n_cand] of them).  Given per scored position
 * the log-sum-exp and the argmax of the logits, and per target the logit of
 * its token, the item's outcome. */
int probe_item_n_scored(const probe_data *d, const probe_item *it);
int probe_item_target_scored(const probe_data *d, const probe_item *it, int target);
probe_outcome probe_item_outcome(const probe_data *d, const probe_item *it, const double *lse, const int32_t *argmax,
                                 const float *target_logit);

/* Every candidate's log-probability (the sum over its targets), out [n_cand]. */
void probe_item_cand_logprobs(const probe_data *d, const probe_item *it, const double *lse, const float *target_logit,
                              double *out);

/* Options of a probe run. */
typedef struct probe_opts {
    int batch;                 /* rows per forward call (≥ max_rows_per_item; raised if smaller) */
    ra_progress *progress;     /* optional */
} probe_opts;

/* Evaluate every prompt with a plain forward from the tokens, head_keep
 * [layers * H] (NULL = all heads) applied to every row.  out [n_items]. */
int probe_eval(const ra_forward_backend *be, const ra_model *m, const probe_data *d, const uint8_t *head_keep,
               const probe_opts *o, probe_outcome *out, ra_error *err);
/* The same, and (cand_logprob not NULL) every candidate's log-probability:
 * item i's at cand_logprob[Σ_{j<i} n_cand_j + c]. */
int probe_eval_candidates(const ra_forward_backend *be, const ra_model *m, const probe_data *d,
                          const uint8_t *head_keep, const probe_opts *o, probe_outcome *out, double *cand_logprob,
                          ra_error *err);

/* Exact ablation of the heads with measure[l * H + h] != 0 (NULL = all).
 * base [n_items] receives the baseline outcomes; per_head (optional,
 * [layers * H * n_items]) every ablated outcome, (l, h, prompt) order. */
typedef struct probe_exact_result {
    probe_outcome *base;       /* [n_items], caller-allocated */
    probe_outcome *per_head;   /* optional [layers * H * n_items] */
    float *acc_drop;           /* [layers * H]: only measured heads written */
    float *logprob_drop;       /* [layers * H] */
} probe_exact_result;
int probe_exact(const ra_forward_backend *be, const ra_model *m, const probe_data *d, const uint8_t *measure,
                const probe_opts *o, probe_exact_result *r, ra_error *err);

/* probe_exact on a device: the GPU engine for RA_DEVICE_CUDA when the build
 * has it (kernels/probe_cuda.h; RA_PROBE_GENERIC=1 in the environment forces
 * the generic engine over the CUDA forward backend), else probe_exact over
 * the device's forward backend (EX_UNAVAILABLE when there is none). */
int probe_exact_device(ra_device dev, const ra_model *m, const probe_data *d, const uint8_t *measure,
                       const probe_opts *o, probe_exact_result *r, ra_error *err);

/* Attribution on the CPU: attr [layers * H] receives, per head, the mean
 * over prompts of Σ_positions (∂ log p(correct) / ∂ head output) · head
 * output.  base (optional, [n_items]) receives the baseline outcomes. */
int probe_attribution_cpu(const ra_model *m, const probe_data *d, const probe_opts *o, float *attr,
                          probe_outcome *base, ra_error *err);

/* Attribution on a device: the GPU engine for RA_DEVICE_CUDA when the build
 * has it, else the CPU (EX_UNAVAILABLE for cuda on a build or machine
 * without a GPU). */
int probe_attribution_device(ra_device dev, const ra_model *m, const probe_data *d, const probe_opts *o, float *attr,
                             probe_outcome *base, ra_error *err);

/* Optional: hold the model on the device across several runs on the same
 * model and data (the GPU engine uploads and allocates once instead of per
 * run).  No-op on the CPU.  end releases it. */
int probe_device_begin(ra_device dev, const ra_model *m, const probe_data *d, const probe_opts *o, ra_error *err);
void probe_device_end(void);

/* Getting the device ready while the host goes on (ra-probe overlaps the
 * CUDA context and the model's upload with loading the tokenizer and
 * tokenising the prompts):
 *   probe_device_prepare_start(dev);   a thread creates the CUDA context
 *   probe_device_prepare_model(m);     ... then uploads m (NULL: nothing)
 *   probe_device_prepare_wait(...);    joins; its outcome (EX_UNAVAILABLE
 *                                      without a usable GPU)
 * The next probe_device_begin on m then finds the model on the device.
 * No-ops on the CPU and in builds without the GPU engine.  m must not
 * change until the wait; t_init / t_upload (may be NULL) receive the
 * thread's seconds for each step. */
void probe_device_prepare_start(ra_device dev);
void probe_device_prepare_model(const ra_model *m);
int probe_device_prepare_wait(double *t_init, double *t_upload, ra_error *err);
/* 1 when dev's engine takes a model of ra_model_load_view (weights left in
 * the checkpoint), 0 when it needs the fp32 weights. */
int probe_device_takes_view(ra_device dev);

/* Spearman rank correlation of a and b over n values (average ranks for
 * ties); NaN when either is constant. */
double probe_spearman(const float *a, const float *b, int n);

#endif
