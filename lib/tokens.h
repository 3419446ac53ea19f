/* Tokens streams: ra streams of kind "tokens" (formats/tokens.md).
 *
 * Two layouts:
 *   documents  one 1-D i32 tensor per document, "doc/0", "doc/1", ...
 *   packed     "tokens" i32 [rows, seq_len] and "starts" u8 [rows, seq_len],
 *              1 where a document begins and at position 0 of every row.
 *
 * Writers collect documents in a builder (spooled to an unlinked temporary
 * file, so memory stays small) and write either layout at the end, when the
 * counts the header carries are known.  Readers load a stream into memory
 * (ra_tokens_load) or visit documents one at a time (ra_tokens_reader). */
#ifndef RA_TOKENS_H
#define RA_TOKENS_H

#include <jansson.h>
#include <stdint.h>

#include "error.h"

#define RA_TOKENS_KIND "tokens"

/* The tokenizer that made a stream (meta "tokenizer"); absent for ids that
 * were given directly (ra-tok --ids without -t). */
typedef struct ra_tokens_tokenizer {
    int present;
    char id[33];        /* XXH3-128 hex of the tokenizer.json bytes */
    int64_t vocab_size;
    int32_t bos_id, eos_id; /* -1 when unknown (null in the stream) */
} ra_tokens_tokenizer;

/* ---------------------------------------------------------------- writing */

typedef struct ra_tokens_builder ra_tokens_builder;

ra_tokens_builder *ra_tokens_builder_new(ra_error *err);
/* Append one document (n may be 0).  Ids must be >= 0. */
int ra_tokens_builder_add(ra_tokens_builder *b, const int32_t *ids, int64_t n, ra_error *err);
int64_t ra_tokens_builder_docs(const ra_tokens_builder *b);
int64_t ra_tokens_builder_tokens(const ra_tokens_builder *b);
void ra_tokens_builder_free(ra_tokens_builder *b);

/* What was written. */
typedef struct ra_tokens_summary {
    int64_t n_docs, n_tokens; /* n_tokens: real tokens stored (no padding) */
    int64_t n_rows, n_pad, n_dropped; /* packed layout only */
    char content_id[33];
} ra_tokens_summary;

/* Write the documents layout to path ("-" = stdout).  tok may be NULL;
 * extra_meta (may be NULL) is merged into the meta object; provenance may
 * be NULL.  sum may be NULL. */
int ra_tokens_write_documents(ra_tokens_builder *b, const char *path, const ra_tokens_tokenizer *tok,
                              const json_t *extra_meta, const json_t *provenance, ra_tokens_summary *sum,
                              ra_error *err);
/* Write the packed layout: documents concatenated in order and cut into rows
 * of seq_len tokens.  The final partial row is dropped (counted in
 * n_dropped) unless pad_id >= 0, which pads it (starts = 1 at the first pad
 * position, so padding never attends to a document). */
int ra_tokens_write_packed(ra_tokens_builder *b, const char *path, const ra_tokens_tokenizer *tok,
                           int64_t seq_len, int32_t pad_id, const json_t *extra_meta,
                           const json_t *provenance, ra_tokens_summary *sum, ra_error *err);

/* ---------------------------------------------------------------- reading */

typedef struct ra_tokens {
    char *name;            /* file name for messages */
    int packed;            /* layout */
    ra_tokens_tokenizer tok;
    int64_t n_docs, n_tokens;
    int32_t *ids;          /* documents: all concatenated; packed: n_rows * seq_len */
    int64_t *doc_start;    /* documents: n_docs + 1 offsets into ids */
    int64_t seq_len, n_rows;
    uint8_t *starts;       /* packed: n_rows * seq_len */
    int32_t pad_id;        /* packed: -1 if none */
    json_t *meta;          /* the whole meta object (owned) */
    char content_id[33];
} ra_tokens;

/* Load a whole stream ("-" = stdin), checking its structure against the meta
 * (names, shapes, dtypes, counts, starts) and that every id is >= 0 and below
 * the tokenizer's vocab_size when the stream names one. */
int ra_tokens_load(const char *path, ra_tokens *out, ra_error *err);
/* Check ids against a caller's vocabulary (vocab_size <= 0: only >= 0) and,
 * when require_nonempty, refuse empty documents.  Messages name the file and
 * the document (or row) and position. */
int ra_tokens_validate(const ra_tokens *t, int64_t vocab_size, int require_nonempty, ra_error *err);
/* Document i of the documents layout. */
static inline const int32_t *ra_tokens_doc(const ra_tokens *t, int64_t i, int64_t *n) {
    *n = t->doc_start[i + 1] - t->doc_start[i];
    return t->ids + t->doc_start[i];
}
void ra_tokens_free(ra_tokens *t);

/* Streaming reader: documents one at a time (packed streams: one row of the
 * tokens tensor at a time; starts is not read). */
typedef struct ra_tokens_reader ra_tokens_reader;
ra_tokens_reader *ra_tokens_reader_open(const char *path, ra_error *err);
const ra_tokens_tokenizer *ra_tokens_reader_tokenizer(const ra_tokens_reader *r);
const json_t *ra_tokens_reader_meta(const ra_tokens_reader *r);
int ra_tokens_reader_packed(const ra_tokens_reader *r);
/* 1 with ids and n set (valid until the next call), 0 at the end of a valid
 * stream (trailer verified), -1 on error. */
int ra_tokens_reader_next(ra_tokens_reader *r, const int32_t **ids, int64_t *n, ra_error *err);
void ra_tokens_reader_close(ra_tokens_reader *r);

/* Meta "tokenizer" object <-> struct (exposed for tools that copy it). */
json_t *ra_tokens_tokenizer_json(const ra_tokens_tokenizer *tok);
int ra_tokens_tokenizer_parse(const json_t *meta, ra_tokens_tokenizer *tok, const char *name, ra_error *err);

#endif
