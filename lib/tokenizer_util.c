/* Shared pieces of the tokenizer: growable arrays, hash maps, UTF-8 and the
 * GPT-2 byte-level alphabet. */
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "tokenizer_internal.h"

/* ---------------------------------------------------------------- arrays */

void ra_ids_push(ra_ids *a, int32_t id) {
    if (a->n == a->cap) {
        a->cap = a->cap ? 2 * a->cap : 64;
        a->v = xrealloc(a->v, (size_t)a->cap * sizeof *a->v);
    }
    a->v[a->n++] = id;
}

void ra_ids_free(ra_ids *a) {
    free(a->v);
    memset(a, 0, sizeof *a);
}

void tok_bytes_reserve(ra_bytes *b, size_t extra) {
    if (b->n + extra + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + extra + 1) cap *= 2;
        b->v = xrealloc(b->v, cap);
        b->cap = cap;
    }
}

void ra_bytes_append(ra_bytes *b, const void *data, size_t n) {
    tok_bytes_reserve(b, n);
    if (n) memcpy(b->v + b->n, data, n);
    b->n += n;
    b->v[b->n] = 0; /* always NUL-terminated for convenience */
}

void ra_bytes_free(ra_bytes *b) {
    free(b->v);
    memset(b, 0, sizeof *b);
}

/* ---------------------------------------------------------------- byte-string map */

uint64_t tok_map_hash(const char *k, size_t n) {
    uint64_t h = XXH3_64bits(k, n);
    return h ? h : 1;
}

void tok_map_init(tok_map *m, size_t expected) {
    memset(m, 0, sizeof *m);
    size_t cap = 16;
    while (cap < 2 * expected) cap *= 2;
    m->cap = cap;
    m->slot = xcalloc(cap, sizeof *m->slot);
}

static size_t map_find(const tok_map *m, uint64_t h, const char *k, size_t n) {
    size_t mask = m->cap - 1, i = (size_t)h & mask;
    for (;;) {
        const tok_slot *s = &m->slot[i];
        if (!s->hash || (s->hash == h && s->klen == n && memcmp(m->keys.v + s->koff, k, n) == 0)) return i;
        i = (i + 1) & mask;
    }
}

const int64_t *tok_map_get_h(const tok_map *m, uint64_t h, const char *k, size_t n) {
    if (!m->cap) return NULL;
    size_t i = map_find(m, h, k, n);
    return m->slot[i].hash ? &m->slot[i].val : NULL;
}

const int64_t *tok_map_get(const tok_map *m, const char *k, size_t n) {
    return tok_map_get_h(m, tok_map_hash(k, n), k, n);
}

static void map_grow(tok_map *m) {
    tok_slot *old = m->slot;
    size_t old_cap = m->cap;
    m->cap *= 2;
    m->slot = xcalloc(m->cap, sizeof *m->slot);
    for (size_t i = 0; i < old_cap; i++) {
        if (!old[i].hash) continue;
        size_t mask = m->cap - 1, j = (size_t)old[i].hash & mask;
        while (m->slot[j].hash) j = (j + 1) & mask;
        m->slot[j] = old[i];
    }
    free(old);
}

void tok_map_put_h(tok_map *m, uint64_t h, const char *k, size_t n, int64_t v) {
    if (!m->cap) tok_map_init(m, 16);
    size_t i = map_find(m, h, k, n);
    tok_slot *s = &m->slot[i];
    if (s->hash) {
        s->val = v;
        return;
    }
    s->hash = h;
    s->koff = m->keys.n;
    s->klen = (uint32_t)n;
    s->val = v;
    ra_bytes_append(&m->keys, k, n);
    if (++m->n * 4 > m->cap * 3) map_grow(m);
}

void tok_map_put(tok_map *m, const char *k, size_t n, int64_t v) { tok_map_put_h(m, tok_map_hash(k, n), k, n, v); }

void tok_map_clear(tok_map *m) {
    if (m->cap) memset(m->slot, 0, m->cap * sizeof *m->slot);
    m->n = 0;
    m->keys.n = 0;
}

void tok_map_free(tok_map *m) {
    free(m->slot);
    ra_bytes_free(&m->keys);
    memset(m, 0, sizeof *m);
}

/* ---------------------------------------------------------------- u64 map */

static uint64_t mix64(uint64_t x) { /* splitmix64 finaliser */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

void tok_u64map_init(tok_u64map *m, size_t expected) {
    memset(m, 0, sizeof *m);
    size_t cap = 16;
    while (cap < 2 * expected) cap *= 2;
    m->cap = cap;
    m->key = xcalloc(cap, sizeof *m->key);
    m->val = xmalloc(cap * sizeof *m->val);
}

const uint64_t *tok_u64map_get(const tok_u64map *m, uint64_t k) {
    if (!m->cap) return NULL;
    uint64_t kk = k + 1;
    size_t mask = m->cap - 1, i = (size_t)mix64(kk) & mask;
    while (m->key[i]) {
        if (m->key[i] == kk) return &m->val[i];
        i = (i + 1) & mask;
    }
    return NULL;
}

void tok_u64map_put(tok_u64map *m, uint64_t k, uint64_t v) {
    if (!m->cap) tok_u64map_init(m, 16);
    uint64_t kk = k + 1;
    size_t mask = m->cap - 1, i = (size_t)mix64(kk) & mask;
    while (m->key[i]) {
        if (m->key[i] == kk) {
            m->val[i] = v;
            return;
        }
        i = (i + 1) & mask;
    }
    m->key[i] = kk;
    m->val[i] = v;
    if (++m->n * 4 > m->cap * 3) {
        tok_u64map old = *m;
        tok_u64map_init(m, old.cap);
        for (size_t j = 0; j < old.cap; j++)
            if (old.key[j]) tok_u64map_put(m, old.key[j] - 1, old.val[j]);
        free(old.key);
        free(old.val);
    }
}

void tok_u64map_free(tok_u64map *m) {
    free(m->key);
    free(m->val);
    memset(m, 0, sizeof *m);
}

/* ---------------------------------------------------------------- byte-level alphabet */

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes (! .. ~, ¡ .. ¬, ® .. ÿ)
 * stand for themselves; the other 68 bytes get 256, 257, ... in byte order. */
static uint32_t byte_char_table[256];
static int16_t char_byte_table[512];
static int byte_tables_ready;

static void byte_tables_init(void) {
    if (byte_tables_ready) return;
    for (int i = 0; i < 512; i++) char_byte_table[i] = -1;
    uint32_t next = 256;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        byte_char_table[b] = printable ? (uint32_t)b : next++;
        char_byte_table[byte_char_table[b]] = (int16_t)b;
    }
    byte_tables_ready = 1;
}

uint32_t tok_byte_char(uint8_t b) {
    byte_tables_init();
    return byte_char_table[b];
}

int tok_char_byte(uint32_t cp) {
    byte_tables_init();
    return cp < 512 ? char_byte_table[cp] : -1;
}

/* ---------------------------------------------------------------- UTF-8 */

int tok_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned c = s[0];
    if (c < 0x80 || n < 2) {
        *cp = c;
        return 1;
    }
    if (c < 0xE0) {
        *cp = ((c & 0x1Fu) << 6) | (s[1] & 0x3Fu);
        return 2;
    }
    if (c < 0xF0 || n < 4) {
        *cp = n < 3 ? c : ((c & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
        return n < 3 ? 1 : 3;
    }
    *cp = ((c & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) | (s[3] & 0x3Fu);
    return 4;
}

int tok_utf8_encode(uint32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of the well-formed sequence starting at s[0] (Unicode Table 3-7),
 * or -k where k >= 1 is the length of the maximal ill-formed subpart that is
 * replaced by one U+FFFD. */
static int utf8_step(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    int need;
    unsigned lo = 0x80, hi = 0xBF; /* range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c == 0xE0) need = 2, lo = 0xA0;
    else if (c >= 0xE1 && c <= 0xEC) need = 2;
    else if (c == 0xED) need = 2, hi = 0x9F;
    else if (c >= 0xEE && c <= 0xEF) need = 2;
    else if (c == 0xF0) need = 3, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3) need = 3;
    else if (c == 0xF4) need = 3, hi = 0x8F;
    else return -1; /* 80..C1, F5..FF never start a character */
    for (int i = 1; i <= need; i++) {
        if ((size_t)i >= n) return -i;
        unsigned b = s[i];
        unsigned l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
        if (b < l || b > h) return -i;
    }
    return need + 1;
}

int ra_utf8_valid(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        int k = utf8_step(u + i, n - i);
        if (k < 0) return 0;
        i += (size_t)k;
    }
    return 1;
}

void ra_utf8_sanitize(const char *s, size_t n, ra_bytes *out) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0; /* run: start of the pending valid stretch */
    while (i < n) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        int k = utf8_step(u + i, n - i);
        if (k > 0) {
            i += (size_t)k;
            continue;
        }
        ra_bytes_append(out, s + run, i - run);
        ra_bytes_append(out, "\xEF\xBF\xBD", 3);
        i += (size_t)(-k);
        run = i;
    }
    ra_bytes_append(out, s + run, n - run);
}
