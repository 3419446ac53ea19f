/* BPE merging of one pre-tokenised word, as Hugging Face tokenizers'
 * Word::merge_all does it: symbols in a doubly linked list, candidate merges
 * in a min-heap ordered by (rank, position), stale heap entries skipped when
 * popped.  O(n log n) in the word length, so a 100k-byte word is cheap.
 *
 * Words are raw bytes: the byte-level alphabet maps each byte to exactly one
 * character, so the initial symbols are the single-byte tokens and the model
 * vocabulary is keyed by the bytes its tokens stand for. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"

typedef struct sym {
    int32_t id;
    int32_t prev, next; /* -1 at the ends */
    uint32_t len;       /* 0 = merged away */
} sym;

typedef struct merge_cand {
    uint32_t rank;
    uint32_t pos;
    int32_t new_id;
} merge_cand;

/* Words longer than this are not cached (like Hugging Face's MAX_LENGTH).
 * The cache is cleared when full; kept small (32k words, about 1 MiB of
 * slots) so that it stays in the processor's cache: a large one was slower
 * on English text, its lookups missing to memory. */
#define CACHE_MAX_WORD 256
#define CACHE_MAX_WORDS (1u << 15)
#define CACHE_MAX_IDS (1u << 24)

static int cand_less(const merge_cand *a, const merge_cand *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(merge_cand *h, size_t *n, merge_cand c) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

static merge_cand heap_pop(merge_cand *h, size_t *n) {
    merge_cand top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const merge_cand *best = &last;
        if (l < *n && cand_less(&h[l], best)) m = l, best = &h[l];
        if (r < *n && cand_less(&h[r], best)) m = r;
        if (m == i) break;
        h[i] = h[m];
        i = m;
    }
    if (*n) h[i] = last;
    return top;
}

static int lookup_merge(const ra_tokenizer *t, int32_t a, int32_t b, uint32_t *rank, int32_t *new_id) {
    const uint64_t *v = tok_u64map_get(&t->merges, ((uint64_t)(uint32_t)a << 32) | (uint32_t)b);
    if (!v) return 0;
    *rank = (uint32_t)(*v >> 32);
    *new_id = (int32_t)(uint32_t)*v;
    return 1;
}

/* Initial symbols: one per byte; bytes without a token become the unknown
 * token (fused when fuse_unk) or are dropped, as Hugging Face does. */
static size_t initial_symbols(const ra_tokenizer *t, const unsigned char *w, size_t n, sym *s) {
    size_t ns = 0;
    int32_t unk_id = -1;
    uint32_t unk_len = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[w[i]];
        if (id >= 0) {
            if (unk_id >= 0) s[ns++] = (sym){unk_id, 0, 0, unk_len}, unk_id = -1;
            s[ns++] = (sym){id, 0, 0, 1};
        } else if (t->unk_id >= 0) {
            if (unk_id >= 0 && t->fuse_unk) {
                unk_len += 1;
            } else {
                if (unk_id >= 0) s[ns++] = (sym){unk_id, 0, 0, unk_len};
                unk_id = t->unk_id, unk_len = 1;
            }
        }
    }
    if (unk_id >= 0) s[ns++] = (sym){unk_id, 0, 0, unk_len};
    for (size_t i = 0; i < ns; i++) {
        s[i].prev = (int32_t)i - 1;
        s[i].next = i + 1 < ns ? (int32_t)i + 1 : -1;
    }
    return ns;
}

static void merge_all(const ra_tokenizer *t, sym *s, size_t ns, merge_cand *heap) {
    size_t nh = 0;
    uint32_t rank;
    int32_t new_id;
    for (size_t i = 0; i + 1 < ns; i++)
        if (lookup_merge(t, s[i].id, s[i + 1].id, &rank, &new_id))
            heap_push(heap, &nh, (merge_cand){rank, (uint32_t)i, new_id});
    while (nh) {
        merge_cand top = heap_pop(heap, &nh);
        sym *cur = &s[top.pos];
        if (cur->len == 0 || cur->next < 0) continue;
        sym *right = &s[cur->next];
        /* A stale entry: the pair at this position changed since it was pushed. */
        if (!lookup_merge(t, cur->id, right->id, &rank, &new_id) || new_id != top.new_id) continue;
        cur->id = top.new_id;
        cur->len += right->len;
        cur->next = right->next;
        right->len = 0;
        if (cur->next >= 0) s[cur->next].prev = (int32_t)top.pos;
        if (cur->prev >= 0 && lookup_merge(t, s[cur->prev].id, cur->id, &rank, &new_id))
            heap_push(heap, &nh, (merge_cand){rank, (uint32_t)cur->prev, new_id});
        if (cur->next >= 0 && lookup_merge(t, cur->id, s[cur->next].id, &rank, &new_id))
            heap_push(heap, &nh, (merge_cand){rank, top.pos, new_id});
    }
}

static void push_ids(ra_ids *out, const int32_t *v, int64_t n) {
    if (out->n + n > out->cap) {
        while (out->n + n > out->cap) out->cap = out->cap ? 2 * out->cap : 64;
        out->v = xrealloc(out->v, (size_t)out->cap * sizeof *out->v);
    }
    memcpy(out->v + out->n, v, (size_t)n * sizeof *v);
    out->n += n;
}

/* Merge a word that is not in the cache. */
static void bpe_uncached(ra_tokenizer *t, const unsigned char *w, size_t n, ra_ids *out) {
    if (t->ignore_merges) {
        const int64_t *id = tok_map_get(&t->vocab_bytes, (const char *)w, n);
        if (id) {
            ra_ids_push(out, (int32_t)*id);
            return;
        }
    }
    if (n > t->sym_cap) {
        free(t->sym);
        free(t->heap);
        t->sym_cap = n;
        t->sym = xmalloc(n * sizeof(sym));
        /* Each merge pushes at most two candidates and removes a symbol, so the
         * heap never holds more than 3n entries. */
        t->heap = xmalloc(3 * n * sizeof(merge_cand));
        t->heap_cap = 3 * n;
    }
    sym *s = t->sym;
    size_t ns = initial_symbols(t, w, n, s);
    merge_all(t, s, ns, t->heap);
    for (int32_t i = ns ? 0 : -1; i >= 0; i = s[i].next) ra_ids_push(out, s[i].id);
}

void tok_bpe_word(ra_tokenizer *t, const unsigned char *w, size_t n, ra_ids *out) {
    if (n == 0) return;
    if (n >= CACHE_MAX_WORD) {
        bpe_uncached(t, w, n, out);
        return;
    }
    /* The cache holds the final ids of a word, whichever path made them. */
    uint64_t h = tok_map_hash((const char *)w, n);
    const int64_t *hit = tok_map_get_h(&t->cache, h, (const char *)w, n);
    if (hit) {
        if (*hit & 1023) push_ids(out, t->cache_ids.v + (*hit >> 10), *hit & 1023);
        return;
    }
    int64_t start = out->n;
    bpe_uncached(t, w, n, out);
    if (t->cache.n >= CACHE_MAX_WORDS || t->cache_ids.n >= CACHE_MAX_IDS) {
        tok_map_clear(&t->cache);
        t->cache_ids.n = 0;
    }
    int64_t off = t->cache_ids.n, cnt = out->n - start;
    if (cnt) push_ids(&t->cache_ids, out->v + start, cnt);
    tok_map_put_h(&t->cache, h, (const char *)w, n, off << 10 | cnt);
}

void tok_bpe_free_scratch(ra_tokenizer *t) {
    free(t->sym);
    free(t->heap);
    t->sym = t->heap = NULL;
    t->sym_cap = t->heap_cap = 0;
    tok_map_free(&t->cache);
    ra_ids_free(&t->cache_ids);
}
