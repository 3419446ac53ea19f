/* Key-value retrieval training documents (kv_docs.h). */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_docs.h"
#include "rng.h"

static const char *const headers[] = {
    "Memorize the following dictionary:\n", /* the probe's */
    "Here is a list of keys and their values:\n",
    "Remember these pairs.\n",
    "Dictionary:\n",
    "The table below maps each word to a number.\n",
    "", /* no header */
};

/* Pair line formats: key, then value. */
static const char *const pair_formats[] = {
    "%s:%d\n", /* the probe's */
    "%s: %d\n",
    "%s = %d\n",
    "%s -> %d\n",
    "The value of %s is %d.\n",
    "- %s: %d\n",
};

/* Question forms: the key goes in %s; the answer follows directly. */
static const char *const questions[] = {
    "The value of the key '%s' is", /* the probe's */
    "What is the value of %s? Answer:",
    "Q: %s\nA:",
    "%s =",
    "The number for '%s' is",
};

#define COUNT(a) ((int)(sizeof(a) / sizeof *(a)))

/* A template index: the probe's own (index 0) with probability 1/2, else
 * uniform over all of them.  The evaluation asks in the probe's format
 * only, so it gets half the documents; the other templates keep the model
 * from learning the format instead of the task. */
static int pick_template(ra_rng *r, int n) {
    uint64_t x = rng_below(r, 2 * (uint64_t)n);
    return x < (uint64_t)n ? 0 : (int)(x - (uint64_t)n);
}

static void appendf(ra_bytes *o, const char *fmt, const char *key, int value) {
    char buf[256];
    int n = value < 0 ? snprintf(buf, sizeof buf, fmt, key) : snprintf(buf, sizeof buf, fmt, key, value);
    ra_bytes_append(o, buf, (size_t)(n < (int)sizeof buf ? n : (int)sizeof buf - 1));
}

void kv_doc_text(const probe_words *words, uint64_t seed, int64_t index, ra_bytes *out) {
    ra_rng root, r;
    rng_seed(&root, seed ^ 0x6b76646f6373ull); /* "kvdocs": a stream of its own, not the probe's */
    r = rng_split(&root, (uint64_t)index);
    int k = 1 + (int)rng_below(&r, KV_DOCS_MAX_PAIRS);
    int key_idx[KV_DOCS_MAX_PAIRS], value[KV_DOCS_MAX_PAIRS], perm[PROBE_MAX_PAIRS];
    for (int i = 0; i < k; i++) { /* distinct keys by rejection: k ≤ 60 ≪ the list */
        int again;
        do {
            key_idx[i] = (int)rng_below(&r, (uint64_t)words->n);
            again = 0;
            for (int j = 0; j < i; j++) again |= key_idx[j] == key_idx[i];
        } while (again);
    }
    for (int v = 0; v < PROBE_MAX_PAIRS; v++) perm[v] = v;
    for (int i = 0; i < k; i++) { /* partial Fisher-Yates: distinct values */
        int j = i + (int)rng_below(&r, (uint64_t)(PROBE_MAX_PAIRS - i));
        int t = perm[i];
        perm[i] = perm[j], perm[j] = t;
        value[i] = perm[i];
    }
    const char *h = headers[pick_template(&r, COUNT(headers))];
    ra_bytes_append(out, h, strlen(h));
    const char *pf = pair_formats[pick_template(&r, COUNT(pair_formats))];
    for (int i = 0; i < k; i++) appendf(out, pf, words->w[key_idx[i]], value[i]);
    /* Every answer is a retrieval example; the rest of the document is
     * random pairs nothing can predict, so ask several questions. */
    int nq = 1 + (int)rng_below(&r, KV_DOCS_MAX_QUESTIONS);
    for (int q = 0; q < nq; q++) {
        int qi = (int)rng_below(&r, (uint64_t)k), form = pick_template(&r, COUNT(questions));
        appendf(out, questions[form], words->w[key_idx[qi]], -1);
        /* the probe's form: both scorings (choice "is42", last-token "is 42") */
        int space = form == 0 ? (int)rng_below(&r, 2) : 1;
        appendf(out, space ? " %s%d\n" : "%s%d\n", "", value[qi]);
    }
}

static void append_json_line(ra_bytes *out, const char *text, size_t n) {
    ra_bytes fixed = {0};
    if (!ra_utf8_valid(text, n)) {
        ra_utf8_sanitize(text, n, &fixed);
        text = fixed.v, n = fixed.n;
    }
    json_t *o = json_pack("{s:s%}", "text", text ? text : "", n);
    char *line = json_dumps(o, JSON_COMPACT);
    ra_bytes_append(out, line, strlen(line));
    ra_bytes_append(out, "\n", 1);
    free(line);
    json_decref(o);
    ra_bytes_free(&fixed);
}

static int read_whole(const char *path, ra_bytes *out, ra_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return ra_fail(err, errno == ENOENT ? EX_NOINPUT : EX_IOERR, "%s: %s", path, strerror(errno));
    char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) ra_bytes_append(out, buf, n);
    int bad = ferror(f);
    fclose(f);
    return bad ? ra_fail(err, EX_IOERR, "%s: read error", path) : 0;
}

static int load_words(const char *words_path, uint64_t seed, probe_words *words, ra_error *err) {
    if (seed == KV_DOCS_RESERVED_SEED_A || seed == KV_DOCS_RESERVED_SEED_B)
        return ra_fail(err, EX_USAGE,
                       "seed %llu is reserved: it is the default prompt seed of ra-probe (1) or ra-eval kv (1000003), "
                       "which training data must not share",
                       (unsigned long long)seed);
    int rc = probe_words_load(words_path, words, err);
    if (rc) return rc;
    if (words->n < KV_DOCS_MAX_PAIRS) {
        rc = ra_fail(err, EX_DATAERR, "%s: %d usable words (lower-case, 3-10 letters), need at least %d", words_path,
                     words->n, KV_DOCS_MAX_PAIRS);
        probe_words_free(words);
    }
    return rc;
}

int kv_docs_mix_jsonl(const char *words_path, uint64_t seed, int64_t n_kv, char *const *files, int n_files,
                      ra_bytes *out, ra_error *err) {
    probe_words words;
    int rc = load_words(words_path, seed, &words, err);
    if (rc) return rc;
    int64_t n = n_kv + n_files;
    int64_t *order = xmalloc((size_t)(n + 1) * sizeof *order); /* < n_kv: a KV document, else a file */
    for (int64_t i = 0; i < n; i++) order[i] = i;
    ra_rng r;
    rng_seed(&r, seed ^ 0x6d6978747572ull); /* "mixtur" */
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)rng_below(&r, (uint64_t)i + 1), t = order[i];
        order[i] = order[j], order[j] = t;
    }
    ra_bytes text = {0};
    for (int64_t i = 0; i < n && !rc; i++) {
        text.n = 0;
        if (order[i] < n_kv) kv_doc_text(&words, seed, order[i], &text);
        else rc = read_whole(files[order[i] - n_kv], &text, err);
        if (!rc) append_json_line(out, text.v, text.n);
    }
    ra_bytes_free(&text);
    free(order);
    probe_words_free(&words);
    return rc;
}

int kv_docs_generate_jsonl(const char *words_path, uint64_t seed, int64_t n, ra_bytes *out, ra_error *err) {
    return kv_docs_mix_jsonl(words_path, seed, n, NULL, 0, out, err);
}
