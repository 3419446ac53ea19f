#include "probe_prompts.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atomic_file.h"

/* ------------------------------------------------------------ random numbers */
/* splitmix64: tiny, integer-only, so a seed gives the same prompts on every
 * machine.  Kept local so the prompts do not change when other code draws
 * from a shared generator. */
static uint64_t prompt_rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, n) without modulo bias (rejection of the short last block). */
static uint64_t prompt_rng_below(uint64_t *s, uint64_t n) {
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = prompt_rng_next(s);
    while (x >= limit);
    return x % n;
}

/* Partial Fisher–Yates: move k uniformly chosen distinct elements of
 * perm[0..n) to perm[0..k), in random order.  perm stays a permutation, so
 * it can be reused for the next draw without resetting. */
static void draw_distinct(uint64_t *s, int *perm, int n, int k) {
    for (int i = 0; i < k; i++) {
        int j = i + (int)prompt_rng_below(s, (uint64_t)(n - i));
        int t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

/* ---------------------------------------------------------------- word list */

static int word_passes(const char *w, size_t len) {
    if (len < PROBE_MIN_WORD || len > PROBE_MAX_WORD) return 0;
    for (size_t i = 0; i < len; i++)
        if (w[i] < 'a' || w[i] > 'z') return 0;
    return 1;
}

/* Open-addressing set of accepted words, for de-duplication. */
typedef struct word_set {
    size_t cap;
    const char **slot;
} word_set;

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* Returns 1 if inserted, 0 if already present.  cap is a power of two kept
 * at least twice the number of elements by the caller. */
static int word_set_insert(word_set *ws, const char *w) {
    size_t i = hash_str(w) & (ws->cap - 1);
    while (ws->slot[i]) {
        if (strcmp(ws->slot[i], w) == 0) return 0;
        i = (i + 1) & (ws->cap - 1);
    }
    ws->slot[i] = w;
    return 1;
}

static void word_set_grow(word_set *ws) {
    word_set bigger = {ws->cap * 2, xcalloc(ws->cap * 2, sizeof(char *))};
    for (size_t i = 0; i < ws->cap; i++)
        if (ws->slot[i]) word_set_insert(&bigger, ws->slot[i]);
    free(ws->slot);
    *ws = bigger;
}

int probe_words_load(const char *path, probe_words *out, ra_error *err) {
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "r");
    if (!f)
        return ra_fail(err, errno == ENOENT ? EX_NOINPUT : EX_IOERR, "%s: cannot open word list: %s", path,
                       strerror(errno));
    int cap = 1024;
    out->w = xmalloc(cap * sizeof(char *));
    out->path = xstrdup(path);
    word_set ws = {1024, xcalloc(1024, sizeof(char *))};
    char *line = NULL;
    size_t line_cap = 0;
    ssize_t len;
    while ((len = getline(&line, &line_cap, f)) >= 0) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (!word_passes(line, (size_t)len)) continue;
        if ((size_t)out->n * 2 >= ws.cap) word_set_grow(&ws);
        char *w = xstrdup(line);
        if (!word_set_insert(&ws, w)) {
            free(w);
            continue;
        }
        if (out->n == cap) out->w = xrealloc(out->w, (size_t)(cap *= 2) * sizeof(char *));
        out->w[out->n++] = w;
    }
    int read_error = ferror(f);
    free(line);
    free(ws.slot);
    fclose(f);
    if (read_error) {
        probe_words_free(out);
        return ra_fail(err, EX_IOERR, "%s: read error", path);
    }
    return 0;
}

void probe_words_free(probe_words *w) {
    for (int i = 0; i < w->n; i++) free(w->w[i]);
    free(w->w);
    free(w->path);
    memset(w, 0, sizeof *w);
}

/* ---------------------------------------------------------------- prompts */

static char *prompt_text(const probe_prompt *p) {
    static const char head[] = "Memorize the following dictionary:\n";
    size_t n = sizeof head + 64 + strlen(p->key[p->query]);
    for (int i = 0; i < p->pairs; i++) n += strlen(p->key[i]) + 5;
    char *t = xmalloc(n), *e = t;
    e += sprintf(e, "%s", head);
    for (int i = 0; i < p->pairs; i++) e += sprintf(e, "%s:%d\n", p->key[i], p->value[i]);
    sprintf(e, "The value of the key '%s' is", p->key[p->query]);
    return t;
}

int probe_prompts_generate(const probe_words *words, uint64_t seed, int pairs, int samples,
                           probe_prompts *out, ra_error *err) {
    memset(out, 0, sizeof *out);
    if (pairs < 1 || pairs > PROBE_MAX_PAIRS)
        return ra_fail(err, EX_USAGE, "pairs: %d is out of range [1, %d] (values are distinct integers 0-99)", pairs,
                       PROBE_MAX_PAIRS);
    if (samples < 1) return ra_fail(err, EX_USAGE, "samples: %d, expected at least 1", samples);
    if (words->n < pairs)
        return ra_fail(err, EX_DATAERR,
                       "%s: %d usable words (lower-case a-z, %d-%d letters, distinct), %d pairs need at least %d",
                       words->path ? words->path : "word list", words->n, PROBE_MIN_WORD, PROBE_MAX_WORD, pairs,
                       pairs);
    int *word_perm = xmalloc((size_t)words->n * sizeof(int));
    int value_perm[PROBE_MAX_PAIRS];
    for (int i = 0; i < words->n; i++) word_perm[i] = i;
    for (int i = 0; i < PROBE_MAX_PAIRS; i++) value_perm[i] = i;

    out->n = samples;
    out->pairs = pairs;
    out->seed = seed;
    out->p = xcalloc((size_t)samples, sizeof(probe_prompt));
    uint64_t s = seed;
    for (int i = 0; i < samples; i++) {
        probe_prompt *p = &out->p[i];
        p->pairs = pairs;
        p->key = xmalloc((size_t)pairs * sizeof(char *));
        p->value = xmalloc((size_t)pairs * sizeof(int));
        draw_distinct(&s, word_perm, words->n, pairs);
        draw_distinct(&s, value_perm, PROBE_MAX_PAIRS, pairs);
        for (int j = 0; j < pairs; j++) {
            p->key[j] = words->w[word_perm[j]];
            p->value[j] = value_perm[j];
        }
        p->query = (int)prompt_rng_below(&s, (uint64_t)pairs);
        p->text = prompt_text(p);
    }
    free(word_perm);
    return 0;
}

void probe_prompts_free(probe_prompts *ps) {
    for (int i = 0; i < ps->n; i++) {
        free(ps->p[i].key);
        free(ps->p[i].value);
        free(ps->p[i].text);
    }
    free(ps->p);
    memset(ps, 0, sizeof *ps);
}

char *probe_continuation(int value, probe_score_mode mode, char *buf) {
    sprintf(buf, mode == PROBE_SCORE_CHOICE ? "%d" : " %d", value);
    return buf;
}

const char *probe_score_name(probe_score_mode m) { return m == PROBE_SCORE_CHOICE ? "choice" : "last-token"; }

int probe_score_parse(const char *s, probe_score_mode *out) {
    if (strcmp(s, "choice") == 0) *out = PROBE_SCORE_CHOICE;
    else if (strcmp(s, "last-token") == 0) *out = PROBE_SCORE_LAST_TOKEN;
    else return -1;
    return 0;
}

static void dump_to(FILE *f, const probe_prompts *ps) {
    for (int i = 0; i < ps->n; i++) {
        const probe_prompt *p = &ps->p[i];
        fprintf(f, "# prompt %d of %d: answer %d\n%s\n\n", i + 1, ps->n, probe_answer(p), p->text);
    }
}

int probe_prompts_dump(const probe_prompts *ps, const char *path, ra_error *err) {
    if (strcmp(path, "-") == 0) {
        dump_to(stdout, ps);
        if (fflush(stdout) != 0 || ferror(stdout)) return ra_fail(err, EX_IOERR, "stdout: write failed");
        return 0;
    }
    ra_atomic_file af;
    int rc = ra_atomic_open(&af, path, err);
    if (rc) return rc;
    dump_to(af.f, ps);
    return ra_atomic_commit(&af, err);
}
