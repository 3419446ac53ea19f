/* Byte-level BPE training (definition in tokenizer_train.h).
 *
 * Words are counted through a tokenizer with the output's pre-tokenizer and
 * a bytes-only vocabulary, its word hook catching every pre-tokenised word,
 * so training sees exactly the words encoding will.  Merges are learned
 * incrementally: pair counts live in a table, each pair keeps the words it
 * was seen in, and a max-heap with lazy deletion yields the best pair; a
 * merge rewrites only the words that hold its pair. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"
#include "tokenizer_train.h"

static const char llama3_regex[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char *const special_names[2] = {"<|begin_of_text|>", "<|end_of_text|>"};

struct ra_bpe_trainer {
    ra_tokenizer *pre; /* pre-tokenizer only (bytes vocabulary, no merges) */
    tok_map words;     /* raw word bytes -> count */
};

/* ------------------------------------------------------------ tokenizer.json */

/* The byte-level string of raw bytes (GPT-2 bytes_to_unicode). */
static json_t *byte_level_string(const unsigned char *b, size_t n) {
    ra_bytes s = {0};
    for (size_t i = 0; i < n; i++) {
        char u[4];
        ra_bytes_append(&s, u, (size_t)tok_utf8_encode(tok_byte_char(b[i]), u));
    }
    json_t *j = json_stringn(s.v ? s.v : "", s.n);
    ra_bytes_free(&s);
    return j;
}

/* Token bytes: token i is bytes[off[i] .. off[i+1]). */
typedef struct tok_table {
    ra_bytes bytes;
    int64_t *off;
    int n, cap;
} tok_table;

static void table_push(tok_table *t, const void *b, size_t n) {
    if (t->n + 2 > t->cap) {
        t->cap = t->cap ? 2 * t->cap : 1024;
        t->off = xrealloc(t->off, (size_t)t->cap * sizeof *t->off);
    }
    if (!t->n) t->off[0] = 0;
    ra_bytes_append(&t->bytes, b, n);
    t->off[++t->n] = (int64_t)t->bytes.n;
}
static const unsigned char *table_bytes(const tok_table *t, int i, size_t *n) {
    *n = (size_t)(t->off[i + 1] - t->off[i]);
    return (const unsigned char *)t->bytes.v + t->off[i];
}
static json_t *table_string(const tok_table *t, int i) {
    size_t n;
    const unsigned char *b = table_bytes(t, i, &n);
    return byte_level_string(b, n);
}

/* The whole tokenizer.json for a token table and merge list (pairs of ids). */
static json_t *tokenizer_json(const tok_table *tt, const int32_t *merges, int n_merges) {
    int bos = tt->n, eos = tt->n + 1;
    json_t *added = json_array();
    for (int i = 0; i < 2; i++)
        json_array_append_new(added, json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", tt->n + i, "content",
                                               special_names[i], "single_word", 0, "lstrip", 0, "rstrip", 0,
                                               "normalized", 0, "special", 1));
    json_t *pre = json_pack("{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b, s:b}]}", "type", "Sequence",
                            "pretokenizers", "type", "Split", "pattern", "Regex", llama3_regex, "behavior", "Isolated",
                            "invert", 0, "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1, "use_regex", 0);
    json_t *post = json_pack(
        "{s:s, s:[{s:{s:s, s:i}}, {s:{s:s, s:i}}], s:[{s:{s:s, s:i}}, {s:{s:s, s:i}}, {s:{s:s, s:i}}, {s:{s:s, s:i}}],"
        " s:{s:{s:s, s:[i], s:[s]}}}",
        "type", "TemplateProcessing", "single", "SpecialToken", "id", special_names[0], "type_id", 0, "Sequence", "id",
        "A", "type_id", 0, "pair", "SpecialToken", "id", special_names[0], "type_id", 0, "Sequence", "id", "A",
        "type_id", 0, "SpecialToken", "id", special_names[0], "type_id", 1, "Sequence", "id", "B", "type_id", 1,
        "special_tokens", special_names[0], "id", special_names[0], "ids", bos, "tokens", special_names[0]);
    (void)eos;
    json_t *vocab = json_object(), *mj = json_array();
    for (int i = 0; i < tt->n; i++) {
        json_t *s = table_string(tt, i);
        json_object_set_new(vocab, json_string_value(s), json_integer(i));
        json_decref(s);
    }
    for (int k = 0; k < n_merges; k++)
        json_array_append_new(mj, json_pack("[o, o]", table_string(tt, merges[2 * k]), table_string(tt, merges[2 * k + 1])));
    json_t *model = json_pack("{s:s, s:n, s:n, s:n, s:n, s:b, s:b, s:b, s:o, s:o}", "type", "BPE", "dropout", "unk_token",
                              "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk", 0, "byte_fallback", 0,
                              "ignore_merges", 0, "vocab", vocab, "merges", mj);
    return json_pack("{s:s, s:n, s:n, s:o, s:n, s:o, s:o, s:{s:s, s:b, s:b, s:b}, s:o}", "version", "1.0", "truncation",
                     "padding", "added_tokens", added, "normalizer", "pre_tokenizer", pre, "post_processor", post,
                     "decoder", "type", "ByteLevel", "add_prefix_space", 1, "trim_offsets", 1, "use_regex", 1, "model",
                     model);
}

static void bytes_table(tok_table *tt) {
    for (int b = 0; b < 256; b++) {
        unsigned char c = (unsigned char)b;
        table_push(tt, &c, 1);
    }
}

/* ------------------------------------------------------------ word counting */

static void count_word(void *ctx, const unsigned char *w, size_t n) {
    tok_map *m = ctx;
    uint64_t h = tok_map_hash((const char *)w, n);
    const int64_t *c = tok_map_get_h(m, h, (const char *)w, n);
    tok_map_put_h(m, h, (const char *)w, n, c ? *c + 1 : 1);
}

int ra_bpe_trainer_new(ra_bpe_trainer **out, ra_error *err) {
    *out = NULL;
    tok_table tt = {0};
    bytes_table(&tt);
    json_t *j = tokenizer_json(&tt, NULL, 0);
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    free(tt.off);
    ra_bytes_free(&tt.bytes);
    ra_bpe_trainer *t = xcalloc(1, sizeof *t);
    int rc = ra_tokenizer_load_json(text, strlen(text), "BPE trainer pre-tokenizer", &t->pre, err);
    free(text);
    if (rc) {
        free(t);
        return rc;
    }
    tok_map_init(&t->words, 1 << 16);
    t->pre->word_hook = count_word;
    t->pre->word_hook_ctx = &t->words;
    *out = t;
    return 0;
}

int ra_bpe_trainer_add(ra_bpe_trainer *t, const char *text, size_t n, ra_error *err) {
    ra_ids ids = {0}; /* only special tokens land here */
    int rc = ra_tokenizer_encode(t->pre, text, n, 0, &ids, err);
    ra_ids_free(&ids);
    return rc;
}

void ra_bpe_trainer_free(ra_bpe_trainer *t) {
    if (!t) return;
    ra_tokenizer_free(t->pre);
    tok_map_free(&t->words);
    free(t);
}

/* ------------------------------------------------------------ merge learning */

typedef struct bword {
    int32_t *s;
    int n;
    int64_t f;
} bword;

typedef struct bpair {
    uint64_t key; /* a << 32 | b */
    int64_t count, before;
    int32_t *w;   /* words it was seen in (may hold stale entries) */
    int nw, cw;
    int stamp;
} bpair;

typedef struct hentry {
    int64_t count;
    uint64_t key;
    int idx;
} hentry;

typedef struct learner {
    bword *words;
    int n_words;
    bpair *pairs;
    int n_pairs, cap_pairs;
    tok_u64map index; /* key -> pair index */
    hentry *heap;
    size_t n_heap, cap_heap;
    int *touched, n_touched, cap_touched, stamp;
} learner;

static int hbefore(const hentry *x, const hentry *y) { return x->count > y->count || (x->count == y->count && x->key < y->key); }

static void heap_push(learner *L, hentry e) {
    if (L->n_heap == L->cap_heap) {
        L->cap_heap = L->cap_heap ? 2 * L->cap_heap : 4096;
        L->heap = xrealloc(L->heap, L->cap_heap * sizeof *L->heap);
    }
    size_t i = L->n_heap++;
    while (i && hbefore(&e, &L->heap[(i - 1) / 2])) {
        L->heap[i] = L->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    L->heap[i] = e;
}

static void heap_pop(learner *L) {
    hentry e = L->heap[--L->n_heap];
    size_t i = 0, n = L->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && hbefore(&L->heap[c + 1], &L->heap[c])) c++;
        if (!hbefore(&L->heap[c], &e)) break;
        L->heap[i] = L->heap[c];
        i = c;
    }
    if (n) L->heap[i] = e;
}

static int pair_index(learner *L, int32_t a, int32_t b) {
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    const uint64_t *v = tok_u64map_get(&L->index, key);
    if (v) return (int)*v;
    if (L->n_pairs == L->cap_pairs) {
        L->cap_pairs = L->cap_pairs ? 2 * L->cap_pairs : 4096;
        L->pairs = xrealloc(L->pairs, (size_t)L->cap_pairs * sizeof *L->pairs);
    }
    L->pairs[L->n_pairs] = (bpair){.key = key, .stamp = -1};
    tok_u64map_put(&L->index, key, (uint64_t)L->n_pairs);
    return L->n_pairs++;
}

static void pair_add(learner *L, int idx, int64_t delta) {
    bpair *p = &L->pairs[idx];
    if (p->stamp != L->stamp) {
        p->stamp = L->stamp;
        p->before = p->count;
        if (L->n_touched == L->cap_touched) {
            L->cap_touched = L->cap_touched ? 2 * L->cap_touched : 1024;
            L->touched = xrealloc(L->touched, (size_t)L->cap_touched * sizeof *L->touched);
        }
        L->touched[L->n_touched++] = idx;
    }
    p->count += delta;
}

static void pair_note_word(learner *L, int idx, int32_t w) {
    bpair *p = &L->pairs[idx];
    if (p->nw && p->w[p->nw - 1] == w) return;
    if (p->nw == p->cw) {
        p->cw = p->cw ? 2 * p->cw : 4;
        p->w = xrealloc(p->w, (size_t)p->cw * sizeof *p->w);
    }
    p->w[p->nw++] = w;
}

/* Push a heap entry for every pair whose count changed in this step. */
static void flush_touched(learner *L) {
    for (int i = 0; i < L->n_touched; i++) {
        bpair *p = &L->pairs[L->touched[i]];
        if (p->count != p->before && p->count > 0) heap_push(L, (hentry){p->count, p->key, L->touched[i]});
    }
    L->n_touched = 0;
}

/* Replace a b by c in word w, updating pair counts; 0 if w holds no a b. */
static void merge_word(learner *L, int32_t w, int32_t a, int32_t b, int32_t c) {
    bword *W = &L->words[w];
    int found = 0;
    for (int i = 0; i + 1 < W->n && !found; i++) found = W->s[i] == a && W->s[i + 1] == b;
    if (!found) return; /* a stale entry of the pair's word list */
    for (int i = 0; i + 1 < W->n; i++) pair_add(L, pair_index(L, W->s[i], W->s[i + 1]), -W->f);
    int k = 0;
    for (int i = 0; i < W->n; k++) {
        if (i + 1 < W->n && W->s[i] == a && W->s[i + 1] == b) {
            W->s[k] = c;
            i += 2;
        } else {
            W->s[k] = W->s[i++];
        }
    }
    W->n = k;
    for (int i = 0; i + 1 < W->n; i++) {
        int idx = pair_index(L, W->s[i], W->s[i + 1]);
        pair_add(L, idx, W->f);
        if (W->s[i] == c || W->s[i + 1] == c) pair_note_word(L, idx, w);
    }
}

/* The words of the map as byte-id sequences, counts as weights. */
static void learner_init(learner *L, const tok_map *m) {
    memset(L, 0, sizeof *L);
    L->words = xmalloc((m->n + 1) * sizeof *L->words);
    for (size_t i = 0; i < m->cap; i++) {
        const tok_slot *s = &m->slot[i];
        if (!s->hash) continue;
        bword *W = &L->words[L->n_words++];
        W->n = (int)s->klen;
        W->f = s->val;
        W->s = xmalloc((s->klen + 1) * sizeof *W->s);
        for (uint32_t j = 0; j < s->klen; j++) W->s[j] = (unsigned char)m->keys.v[s->koff + j];
    }
    tok_u64map_init(&L->index, 1 << 16);
    L->stamp = 0;
    for (int w = 0; w < L->n_words; w++)
        for (int i = 0; i + 1 < L->words[w].n; i++) {
            int idx = pair_index(L, L->words[w].s[i], L->words[w].s[i + 1]);
            pair_add(L, idx, L->words[w].f);
            pair_note_word(L, idx, w);
        }
    flush_touched(L);
}

static void learner_free(learner *L) {
    for (int w = 0; w < L->n_words; w++) free(L->words[w].s);
    for (int i = 0; i < L->n_pairs; i++) free(L->pairs[i].w);
    free(L->words), free(L->pairs), free(L->heap), free(L->touched);
    tok_u64map_free(&L->index);
}

int ra_bpe_trainer_finish(ra_bpe_trainer *t, int vocab_size, ra_bytes *json, int *n_merges, ra_error *err) {
    if (vocab_size < RA_BPE_MIN_VOCAB || vocab_size > RA_BPE_MAX_VOCAB)
        return ra_fail(err, EX_USAGE, "BPE vocabulary size %d: expected %d..%d (256 bytes, 2 special tokens, merges)",
                       vocab_size, RA_BPE_MIN_VOCAB, RA_BPE_MAX_VOCAB);
    learner L;
    learner_init(&L, &t->words);
    tok_table tt = {0};
    bytes_table(&tt);
    tok_map by_bytes; /* token bytes -> id, to reuse the id of a string made twice */
    tok_map_init(&by_bytes, 1024);
    for (int i = 0; i < 256; i++) {
        size_t n;
        const unsigned char *b = table_bytes(&tt, i, &n);
        tok_map_put(&by_bytes, (const char *)b, n, i);
    }
    int32_t *merges = NULL;
    int nm = 0, cm = 0;
    ra_bytes cat = {0};
    while (tt.n + 2 < vocab_size) {
        while (L.n_heap && L.pairs[L.heap[0].idx].count != L.heap[0].count) heap_pop(&L); /* stale */
        if (!L.n_heap) break;
        int idx = L.heap[0].idx;
        heap_pop(&L);
        int32_t a = (int32_t)(L.pairs[idx].key >> 32), b = (int32_t)(L.pairs[idx].key & 0xffffffffu);
        size_t na, nb;
        const unsigned char *ba = table_bytes(&tt, a, &na), *bb = table_bytes(&tt, b, &nb);
        cat.n = 0;
        ra_bytes_append(&cat, ba, na);
        ra_bytes_append(&cat, bb, nb);
        const int64_t *have = tok_map_get(&by_bytes, cat.v, cat.n);
        int32_t c = have ? (int32_t)*have : tt.n;
        if (!have) {
            tok_map_put(&by_bytes, cat.v, cat.n, c);
            table_push(&tt, cat.v, cat.n);
        }
        if (nm == cm) {
            cm = cm ? 2 * cm : 1024;
            merges = xrealloc(merges, (size_t)cm * 2 * sizeof *merges);
        }
        merges[2 * nm] = a, merges[2 * nm + 1] = b, nm++;
        L.stamp++;
        int nw = L.pairs[idx].nw;
        for (int k = 0; k < nw; k++) merge_word(&L, L.pairs[idx].w[k], a, b, c);
        flush_touched(&L);
    }
    json_t *j = tokenizer_json(&tt, merges, nm);
    char *text = json_dumps(j, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(j);
    ra_bytes_append(json, text, strlen(text));
    free(text);
    if (n_merges) *n_merges = nm;
    free(merges);
    ra_bytes_free(&cat);
    tok_map_free(&by_bytes);
    free(tt.off);
    ra_bytes_free(&tt.bytes);
    learner_free(&L);
    return 0;
}
