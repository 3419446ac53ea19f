/* Generation tasks (SWDE-style extraction): a JSONL file with one
 * {"context": str, "answers": [str, ...]} per line ("answer": str is taken
 * as one answer).  The model continues each context (encoded with the
 * tokenizer's specials) greedily, with the recurrent decoder
 * (lib/decode_backend.h), for at most max_new tokens, stopping at the EOS
 * token or as soon as the generated text contains `until` (default "\n";
 * "" = never).  The generation is the decoded text before `until`.
 *   contains  some answer occurs in the generation, ASCII case-insensitive
 *             (lm-evaluation-harness's "contains")
 *   exact     the generation, whitespace-trimmed, equals some answer,
 *             whitespace-trimmed
 * Table gen_<name>: items, contains, exact, tokens (mean generated tokens);
 * with a teacher teacher_contains, teacher_exact.  Metrics
 * gen_<name>_contains, gen_<name>_exact (and the teacher's). */
#ifndef RA_EVAL_GEN_H
#define RA_EVAL_GEN_H

#include "eval.h"
#include "decode_backend.h"
#include "eval_results.h"
#include "tokenizer.h"

typedef struct eval_gen_item {
    int line;
    const char *context;
    int n_answers;
    const char **answers; /* borrowed from the JSON */
} eval_gen_item;

typedef struct eval_gen_set {
    char name[64];
    char *path;
    int n;
    eval_gen_item *items;
    void *json;
} eval_gen_set;

int eval_gen_load(const char *path, eval_gen_set *out, ra_error *err);
void eval_gen_free(eval_gen_set *s);

/* Greedy decoding of n prompts (prompts[i], lens[i] ≥ 1 tokens), `batch`
 * at a time: each row appends the argmax token until it produced max_new
 * tokens, the eos token (≥ 0; not included in the output), or stop(ctx, i,
 * generated, count) returns 1 (that token included).  out[i] (malloc'ed)
 * and out_len[i] receive each row's tokens. */
typedef int (*eval_stop_fn)(void *ctx, int item, const int32_t *gen, int n);
typedef struct eval_greedy_opts {
    int max_new, batch;
    int32_t eos;
    eval_stop_fn stop;
    void *stop_ctx;
} eval_greedy_opts;
int eval_greedy(const ra_decode_backend *dec, const ra_model *m, int n, const int32_t *const *prompts, const int *lens,
                const eval_greedy_opts *o, int32_t **out, int *out_len, ra_error *err);

/* The metrics of one generation against its answers. */
int eval_gen_contains(const char *gen, int n_answers, const char *const *answers);
int eval_gen_exact(const char *gen, int n_answers, const char *const *answers);

typedef struct eval_gen_opts {
    int max_new, batch;
    const char *until;
} eval_gen_opts;

/* teacher may be NULL.  Ablation is refused (EX_USAGE): the recurrent
 * decoder runs every head. */
int eval_gen(const eval_model *s, const eval_model *t, const ra_decode_backend *dec, ra_tokenizer *tok,
             const eval_gen_set *set, const eval_gen_opts *o, eval_results *r, ra_error *err);

#endif
