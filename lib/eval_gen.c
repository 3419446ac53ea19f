/* Greedy generation tasks (eval_gen.h). */
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eval_gen.h"
#include "eval_jsonl.h"

int eval_gen_load(const char *path, eval_gen_set *out, ra_error *err) {
    memset(out, 0, sizeof *out);
    eval_jsonl *j = xcalloc(1, sizeof *j);
    int rc = eval_jsonl_load(path, j, err);
    if (rc) {
        free(j);
        return rc;
    }
    out->json = j;
    out->path = xstrdup(path);
    eval_name_from_path(path, out->name, sizeof out->name);
    out->items = xcalloc((size_t)j->n, sizeof *out->items);
    for (int i = 0; i < j->n && !rc; i++) {
        eval_gen_item *it = &out->items[i];
        it->line = j->line[i];
        if ((rc = eval_jsonl_string(j, i, path, "context", &it->context, err))) break;
        const char *key = json_object_get(j->obj[i], "answers") ? "answers" : "answer";
        if ((rc = eval_jsonl_strings(j, i, path, key, &it->answers, &it->n_answers, err))) break;
        out->n++;
    }
    if (rc) eval_gen_free(out);
    return rc;
}

void eval_gen_free(eval_gen_set *s) {
    for (int i = 0; i < s->n; i++) free(s->items[i].answers);
    free(s->items);
    free(s->path);
    if (s->json) eval_jsonl_free(s->json);
    free(s->json);
    memset(s, 0, sizeof *s);
}

/* ------------------------------------------------------------ greedy */

static int32_t argmax(const float *z, int V) {
    int32_t best = 0;
    for (int v = 1; v < V; v++)
        if (z[v] > z[best]) best = v;
    return best;
}

/* Rows i0..i0+B−1 (B ≤ o->batch). */
static int greedy_group(const ra_decode_backend *dec, const ra_model *m, int i0, int B, const int32_t *const *prompts,
                        const int *lens, const eval_greedy_opts *o, int32_t **out, int *out_len, ra_error *err) {
    int V = m->cfg.vocab_size, T = 0;
    for (int b = 0; b < B; b++)
        if (lens[i0 + b] > T) T = lens[i0 + b];
    int32_t *tok = xcalloc((size_t)B * T, sizeof(int32_t)), *len = xmalloc((size_t)B * sizeof(int32_t));
    int32_t *next = xmalloc((size_t)B * sizeof(int32_t));
    uint8_t *done = xcalloc((size_t)B, 1);
    float *logits = xmalloc((size_t)B * V * sizeof(float));
    for (int b = 0; b < B; b++) { /* left padding with id 0 */
        len[b] = lens[i0 + b];
        memcpy(tok + (size_t)b * T + (T - len[b]), prompts[i0 + b], (size_t)len[b] * sizeof(int32_t));
        out[i0 + b] = xmalloc((size_t)(o->max_new > 0 ? o->max_new : 1) * sizeof(int32_t));
        out_len[i0 + b] = 0;
    }
    void *st = NULL;
    int rc = dec->create(m, B, T + o->max_new, &st, err);
    if (!rc) rc = dec->prefill(st, tok, T, len, logits, NULL, err);
    int active = B;
    for (int step = 0; !rc && step < o->max_new && active; step++) {
        if (step > 0 && (rc = dec->step(st, next, logits, err))) break;
        for (int b = 0; b < B; b++) {
            if (done[b]) {
                next[b] = 0;
                continue;
            }
            int i = i0 + b;
            int32_t t = argmax(logits + (size_t)b * V, V);
            next[b] = t;
            if (t == o->eos) {
                done[b] = 1, active--;
                continue;
            }
            out[i][out_len[i]++] = t;
            if (o->stop && o->stop(o->stop_ctx, i, out[i], out_len[i])) done[b] = 1, active--;
        }
    }
    if (st) dec->destroy(st);
    free(tok), free(len), free(next), free(done), free(logits);
    return rc;
}

int eval_greedy(const ra_decode_backend *dec, const ra_model *m, int n, const int32_t *const *prompts, const int *lens,
                const eval_greedy_opts *o, int32_t **out, int *out_len, ra_error *err) {
    int B = o->batch > 0 ? o->batch : 1, rc = 0;
    for (int i = 0; i < n; i++) out[i] = NULL, out_len[i] = 0;
    ra_progress p;
    ra_progress_start(&p, "gen", "prompts", n);
    for (int i0 = 0; i0 < n && !rc; i0 += B) {
        rc = greedy_group(dec, m, i0, i0 + B <= n ? B : n - i0, prompts, lens, o, out, out_len, err);
        ra_progress_update(&p, i0 + B <= n ? i0 + B : n);
    }
    if (!rc) ra_progress_finish(&p, n);
    return rc;
}

/* ----------------------------------------------------------- metrics */

static int contains_ci(const char *hay, const char *needle) {
    size_t nh = strlen(hay), nn = strlen(needle);
    for (size_t i = 0; i + nn <= nh; i++) {
        size_t k = 0;
        while (k < nn && tolower((unsigned char)hay[i + k]) == tolower((unsigned char)needle[k])) k++;
        if (k == nn) return 1;
    }
    return 0;
}

int eval_gen_contains(const char *gen, int n_answers, const char *const *answers) {
    for (int a = 0; a < n_answers; a++)
        if (contains_ci(gen, answers[a])) return 1;
    return 0;
}

/* s without leading and trailing whitespace: start and length. */
static const char *trim(const char *s, size_t *n) {
    while (isspace((unsigned char)*s)) s++;
    size_t k = strlen(s);
    while (k && isspace((unsigned char)s[k - 1])) k--;
    *n = k;
    return s;
}

int eval_gen_exact(const char *gen, int n_answers, const char *const *answers) {
    size_t ng, na;
    const char *g = trim(gen, &ng);
    for (int a = 0; a < n_answers; a++) {
        const char *x = trim(answers[a], &na);
        if (na == ng && memcmp(g, x, ng) == 0) return 1;
    }
    return 0;
}

/* ------------------------------------------------------------- task */

/* Decode generated ids to text (NUL-terminated), leaving out ids the
 * tokenizer does not know (a model's vocabulary can be larger than its
 * tokenizer's: such ids have no text). */
static int decode_text(const ra_tokenizer *tok, const int32_t *ids, int n, ra_bytes *text, ra_error *err) {
    int32_t *known = xmalloc((size_t)(n > 0 ? n : 1) * sizeof(int32_t));
    int k = 0;
    for (int i = 0; i < n; i++)
        if (ra_tokenizer_token(tok, ids[i])) known[k++] = ids[i];
    int rc = ra_tokenizer_decode(tok, known, k, text, err);
    free(known);
    ra_bytes_append(text, "", 1);
    return rc;
}

typedef struct stop_ctx {
    const ra_tokenizer *tok;
    const char *until;
} stop_ctx;

static int stop_at_until(void *ctx, int item, const int32_t *gen, int n) {
    (void)item;
    const stop_ctx *s = ctx;
    if (!s->until[0]) return 0;
    ra_bytes text = {0};
    ra_error err = {0};
    int hit = decode_text(s->tok, gen, n, &text, &err) == 0 && strstr(text.v, s->until) != NULL;
    ra_bytes_free(&text);
    return hit;
}

/* Generate with one model; contains / exact counts and generated tokens. */
static int gen_model(const eval_model *em, const ra_decode_backend *dec, ra_tokenizer *tok, const eval_gen_set *set,
                     const eval_gen_opts *o, int32_t *const *prompts, const int *lens, double *contains,
                     double *exact, double *tokens, ra_error *err) {
    int n = set->n;
    int32_t **out = xcalloc((size_t)n, sizeof *out);
    int *out_len = xcalloc((size_t)n, sizeof(int));
    stop_ctx sc = {tok, o->until};
    eval_greedy_opts go = {o->max_new, o->batch, ra_tokenizer_eos_id(tok), stop_at_until, &sc};
    int rc = eval_greedy(dec, em->m, n, (const int32_t *const *)prompts, lens, &go, out, out_len, err);
    int hits = 0, exacts = 0;
    int64_t total = 0;
    for (int i = 0; i < n && !rc; i++) {
        ra_bytes text = {0};
        if ((rc = decode_text(tok, out[i], out_len[i], &text, err))) break;
        if (o->until[0]) {
            char *cut = strstr(text.v, o->until);
            if (cut) *cut = 0;
        }
        const eval_gen_item *it = &set->items[i];
        hits += eval_gen_contains(text.v, it->n_answers, it->answers);
        exacts += eval_gen_exact(text.v, it->n_answers, it->answers);
        total += out_len[i];
        ra_bytes_free(&text);
    }
    for (int i = 0; i < n; i++) free(out[i]);
    free(out), free(out_len);
    *contains = (double)hits / n;
    *exact = (double)exacts / n;
    *tokens = (double)total / n;
    return rc;
}

int eval_gen(const eval_model *s, const eval_model *t, const ra_decode_backend *dec, ra_tokenizer *tok,
             const eval_gen_set *set, const eval_gen_opts *o, eval_results *r, ra_error *err) {
    if (s->head_keep)
        return ra_fail(err, EX_USAGE, "--ablate does not apply to --task gen: the recurrent decoder runs every head");
    int n = set->n, rc = 0;
    int32_t **prompts = xcalloc((size_t)n, sizeof *prompts);
    int *lens = xcalloc((size_t)n, sizeof(int));
    for (int i = 0; i < n && !rc; i++) {
        ra_ids ids = {0};
        const eval_gen_item *it = &set->items[i];
        rc = ra_tokenizer_encode(tok, it->context, strlen(it->context), 1, &ids, err);
        if (!rc && ids.n == 0)
            rc = ra_fail(err, EX_DATAERR, "%s:%d: the context encodes to no tokens (and the tokenizer adds no BOS)",
                         set->path, it->line);
        for (int64_t k = 0; k < ids.n && !rc; k++)
            if (ids.v[k] >= s->m->cfg.vocab_size)
                rc = ra_fail(err, EX_DATAERR, "%s:%d: token id %d is outside the model's vocabulary (%d)", set->path,
                             it->line, ids.v[k], s->m->cfg.vocab_size);
        prompts[i] = ids.v;
        lens[i] = (int)ids.n;
    }
    double row[6] = {n, 0, 0, 0, NAN, NAN}, ttok;
    if (!rc) rc = gen_model(s, dec, tok, set, o, prompts, lens, &row[1], &row[2], &row[3], err);
    if (!rc && t) rc = gen_model(t, dec, tok, set, o, prompts, lens, &row[4], &row[5], &ttok, err);
    for (int i = 0; i < n; i++) free(prompts[i]);
    free(prompts), free(lens);
    if (rc) return rc;
    const char *cols[] = {"items", "contains", "exact", "tokens", "teacher_contains", "teacher_exact"};
    char name[80], title[128];
    snprintf(name, sizeof name, "gen_%s", set->name);
    snprintf(title, sizeof title, "Generation: %s (greedy, at most %d tokens)", set->name, o->max_new);
    eval_table_row(eval_table_add(r, name, title, t ? 6 : 4, cols), row);
    eval_metric(r, row[1], "gen_%s_contains", set->name);
    eval_metric(r, row[2], "gen_%s_exact", set->name);
    if (t) {
        eval_metric(r, row[4], "gen_%s_teacher_contains", set->name);
        eval_metric(r, row[5], "gen_%s_teacher_exact", set->name);
    }
    return 0;
}
