/* Private to lib/tokenizer*.c: the tokenizer's data and the helpers the
 * loading, pre-tokenisation, BPE and post-processing files share. */
#ifndef RA_TOKENIZER_INTERNAL_H
#define RA_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdint.h>

#include "tokenizer.h"

/* ---------------------------------------------------------------- hash maps */

/* Byte-string key -> int64 value, open addressing (one 32-byte slot per
 * probe, so a lookup touches one cache line plus the key), keys in an arena. */
typedef struct tok_slot {
    uint64_t hash; /* 0 = empty slot */
    uint64_t koff; /* key offset in keys.v */
    uint32_t klen;
    int64_t val;
} tok_slot;
typedef struct tok_map {
    tok_slot *slot;
    size_t cap, n;
    ra_bytes keys;
} tok_map;
uint64_t tok_map_hash(const char *k, size_t n);
/* Lookup with a hash computed by tok_map_hash (saves hashing twice). */
const int64_t *tok_map_get_h(const tok_map *m, uint64_t h, const char *k, size_t n);
void tok_map_put_h(tok_map *m, uint64_t h, const char *k, size_t n, int64_t v);
void tok_map_init(tok_map *m, size_t expected);
const int64_t *tok_map_get(const tok_map *m, const char *k, size_t n);
void tok_map_put(tok_map *m, const char *k, size_t n, int64_t v); /* overwrites */
void tok_map_clear(tok_map *m);
void tok_map_free(tok_map *m);

/* u64 key -> u64 value (keys are stored +1 so that 0 marks an empty slot). */
typedef struct tok_u64map {
    uint64_t *key, *val;
    size_t cap, n;
} tok_u64map;
void tok_u64map_init(tok_u64map *m, size_t expected);
const uint64_t *tok_u64map_get(const tok_u64map *m, uint64_t k);
void tok_u64map_put(tok_u64map *m, uint64_t k, uint64_t v);
void tok_u64map_free(tok_u64map *m);

/* Make room for extra more bytes (plus the NUL) without changing b->n. */
void tok_bytes_reserve(ra_bytes *b, size_t extra);

/* ---------------------------------------------------------------- pieces */

/* GPT-2 bytes_to_unicode: byte -> code point of its byte-level character. */
uint32_t tok_byte_char(uint8_t b);
/* Inverse: code point -> byte, or -1 if the character is not in the alphabet. */
int tok_char_byte(uint32_t cp);
/* Decode one UTF-8 character of a valid string; returns its length. */
int tok_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp);
int tok_utf8_encode(uint32_t cp, char *out);

typedef struct tok_added {
    char *content;   /* as in the file */
    size_t len;
    char *pattern;   /* what is matched: content, or its normalized form */
    size_t plen;
    int32_t id;
    uint8_t special, single_word, lstrip, rstrip, normalized;
} tok_added;

/* Leftmost-longest matcher over the added tokens of one kind (raw or
 * normalized): candidates grouped by first byte, longest first. */
typedef struct tok_matcher {
    int32_t *cand[256]; /* indices into added[] */
    int ncand[256];
    int any;
    int only_first;     /* the one first byte of all candidates, or -1 */
} tok_matcher;

enum { TOK_STEP_SPLIT, TOK_STEP_BYTELEVEL };
typedef struct tok_step {
    int kind;
    pcre2_code *re;           /* split regex (or the GPT-2 one for ByteLevel use_regex) */
    pcre2_match_data *md;
    int jit;                  /* JIT-compiled: use pcre2_jit_match */
    int add_prefix_space;     /* ByteLevel */
} tok_step;
#define TOK_MAX_STEPS 16

/* Template item: a special token's ids, or the sequence itself (n = -1). */
typedef struct tok_tpl_item {
    int32_t *ids;
    int n;
} tok_tpl_item;

/* One entry of the id -> token table. */
typedef struct tok_entry {
    char *str;     /* token string (JSON form) */
    size_t len;
    char *dec;     /* bytes the ByteLevel decoder yields for it */
    size_t declen;
} tok_entry;

struct ra_tokenizer {
    char id[33];
    char *name;
    int64_t vocab_size;
    int32_t bos_id, eos_id;

    /* model */
    tok_map vocab_str;    /* token string -> id (model vocabulary) */
    tok_map vocab_bytes;  /* raw bytes of byte-level tokens -> id */
    int32_t byte_id[256]; /* id of each single byte's token, -1 if absent */
    tok_u64map merges;    /* (a << 32 | b) -> (rank << 32 | new_id) */
    int ignore_merges, fuse_unk;
    int32_t unk_id;

    /* id -> token */
    tok_entry *entries;
    size_t n_entries;
    tok_u64map id_entry; /* id -> index into entries (added tokens win) */

    /* added tokens */
    tok_added *added;
    int n_added;
    tok_map added_by_content; /* content -> id */
    tok_matcher raw_matcher, norm_matcher;

    /* normalizer */
    int nfc;

    /* pre-tokenizer */
    tok_step steps[TOK_MAX_STEPS];
    int n_steps;
    pcre2_match_context *mctx; /* with a JIT stack large enough for long inputs */
    pcre2_jit_stack *jit_stack;
    pcre2_code *word_re;       /* Unicode \w, for single_word added tokens */
    pcre2_match_data *word_md;

    /* post-processor (single template); n_tpl = 0 means none */
    tok_tpl_item *tpl;
    int n_tpl;

    int has_decoder;

    /* encode state: word cache (raw bytes -> offset/count in cache_ids) */
    tok_map cache;
    ra_ids cache_ids;
    /* scratch for BPE */
    void *sym;
    size_t sym_cap;
    void *heap;
    size_t heap_cap;
    ra_bytes norm_buf, prefix_buf;

    /* When set, each pre-tokenised word (raw bytes) goes here instead of to
     * BPE: the BPE trainer (lib/tokenizer_train.c) counts words this way,
     * through exactly the pre-tokenisation that encoding uses. */
    void (*word_hook)(void *ctx, const unsigned char *w, size_t n);
    void *word_hook_ctx;
};

/* tokenizer_pretok.c */
/* Compile a tokenizer.json regex (Oniguruma syntax, as Hugging Face runs it)
 * for PCRE2 with UTF, UCP and JIT; constructs whose meaning differs between
 * the two engines are translated or refused naming them.  literal: the
 * pattern is a plain string (Split's {"String": ...}). */
int tok_compile_regex(const char *pattern, size_t len, int literal, pcre2_code **out,
                      const char *where, ra_error *err);
/* Translate an Oniguruma pattern to PCRE2 syntax (exposed for tests). */
int tok_translate_regex(const char *pattern, size_t len, ra_bytes *out, const char *where,
                        ra_error *err);
int tok_normalize_nfc(const char *s, size_t n, ra_bytes *out, ra_error *err);
int tok_have_nfc(void);
void tok_matcher_build(tok_matcher *m, const tok_added *added, int n_added, int normalized);
void tok_matcher_free(tok_matcher *m);
/* Encode one document (valid UTF-8) without post-processing. */
int tok_encode_text(ra_tokenizer *t, const char *s, size_t n, ra_ids *out, ra_error *err);

/* tokenizer_bpe.c: encode one pre-tokenised word (raw bytes). */
void tok_bpe_word(ra_tokenizer *t, const unsigned char *w, size_t n, ra_ids *out);
void tok_bpe_free_scratch(ra_tokenizer *t);

/* tokenizer_post.c */
void tok_build_decode_table(ra_tokenizer *t);

#endif
