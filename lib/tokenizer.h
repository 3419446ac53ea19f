/* Hugging Face tokenizer.json (byte-level BPE) in C.
 *
 * What is implemented is exactly what the Llama-3 and Qwen2 tokenizer.json
 * files use, with Hugging Face `tokenizers` semantics:
 *   normalizer     null, NFC (when built with ICU), Sequence of those
 *   pre_tokenizer  Split(Regex|String, behavior Isolated, invert false),
 *                  ByteLevel(add_prefix_space, use_regex), Sequence of those
 *                  (a ByteLevel step is required and must come last)
 *   model          BPE: vocab, merges ("a b" strings or [a, b] pairs),
 *                  ignore_merges, unk_token/fuse_unk; no dropout, no
 *                  continuing_subword_prefix / end_of_word_suffix,
 *                  byte_fallback false
 *   added_tokens   matched before pre-tokenisation (leftmost-longest), with
 *                  special / single_word / lstrip / rstrip / normalized
 *   post_processor TemplateProcessing (single template), ByteLevel (no-op on
 *                  ids), Sequence of those, or null
 *   decoder        ByteLevel (or Sequence [ByteLevel]); null refuses decode
 * Anything else is refused at load time with a message naming the piece, so
 * text is never silently mis-tokenised.
 *
 * Input text is bytes: it is first decoded as UTF-8 with replacement of
 * ill-formed sequences by U+FFFD (maximal subparts, like Python's
 * bytes.decode('utf-8', errors='replace')), then encoded as
 * Tokenizer.encode(text, add_special_tokens=...) would. */
#ifndef RA_TOKENIZER_H
#define RA_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef struct ra_tokenizer ra_tokenizer;

/* A growable array of token ids (the caller owns v; free(v) when done). */
typedef struct ra_ids {
    int32_t *v;
    int64_t n, cap;
} ra_ids;
void ra_ids_push(ra_ids *a, int32_t id);
void ra_ids_free(ra_ids *a);

/* A growable byte buffer (free(v) when done). */
typedef struct ra_bytes {
    char *v;
    size_t n, cap;
} ra_bytes;
void ra_bytes_append(ra_bytes *b, const void *data, size_t n);
void ra_bytes_free(ra_bytes *b);

/* Load from a model directory (reads DIR/tokenizer.json) or a tokenizer.json
 * path.  bos/eos come from tokenizer_config.json (bos_token / eos_token) or,
 * for a key that file does not have, generation_config.json (bos_token_id /
 * eos_token_id, the first of a list), both looked up beside tokenizer.json.
 * Errors: EX_NOINPUT (missing file), EX_DATAERR (malformed or unsupported). */
int ra_tokenizer_load(const char *path, ra_tokenizer **out, ra_error *err);
/* Load from tokenizer.json bytes in memory (no config files); name is used in
 * messages.  Used by tests and the fuzzer. */
int ra_tokenizer_load_json(const char *json, size_t len, const char *name, ra_tokenizer **out,
                           ra_error *err);
void ra_tokenizer_free(ra_tokenizer *t);

/* XXH3-128 of the tokenizer.json bytes, 32 lower-case hex characters. */
const char *ra_tokenizer_id(const ra_tokenizer *t);
/* 1 + the largest id of the model vocabulary and the added tokens. */
int64_t ra_tokenizer_vocab_size(const ra_tokenizer *t);
/* -1 when unknown. */
int32_t ra_tokenizer_bos_id(const ra_tokenizer *t);
int32_t ra_tokenizer_eos_id(const ra_tokenizer *t);
/* Token string of an id as Hugging Face's id_to_token gives it (added tokens
 * first, then the model vocabulary); NULL for an unknown id. */
const char *ra_tokenizer_token(const ra_tokenizer *t, int32_t id);
/* token_to_id: added tokens first, then the model vocabulary; -1 if absent. */
int32_t ra_tokenizer_token_id(const ra_tokenizer *t, const char *token);

/* Encode text (any bytes, see above) and append the ids to out.
 * add_specials = 1 applies the post-processor (Hugging Face's default).
 * Not thread-safe: the tokenizer keeps a word cache. */
int ra_tokenizer_encode(ra_tokenizer *t, const char *text, size_t len, int add_specials,
                        ra_ids *out, ra_error *err);
/* Decode ids to text and append it to out (skip_special_tokens=False: special
 * tokens yield their content).  The ByteLevel decoder maps token characters
 * back to bytes; the result is made valid UTF-8 with U+FFFD replacement, as
 * Hugging Face's from_utf8_lossy does.  An id not in the vocabulary is an
 * error (EX_DATAERR) naming it and its position. */
int ra_tokenizer_decode(const ra_tokenizer *t, const int32_t *ids, int64_t n, ra_bytes *out,
                        ra_error *err);

/* Valid UTF-8?  (Unicode Table 3-7: no overlongs, surrogates or > U+10FFFF.) */
int ra_utf8_valid(const char *s, size_t n);
/* Append s to out with every maximal ill-formed subpart replaced by U+FFFD. */
void ra_utf8_sanitize(const char *s, size_t n, ra_bytes *out);

#endif
