/* The ra stream: msgpack header, tensor records, trailer with an XXH3-128
 * digest of every preceding byte (the artifact's content id).  See
 * formats/ra-stream.md for the byte-level specification.
 *
 * Reading is streaming: records are visited in order and each tensor's data is
 * read into a caller buffer (or skipped), so a reader never holds the whole
 * stream.  Corruption anywhere is reported no later than the trailer; callers
 * must not act on a stream's content as final before ra_reader_next returns 0. */
#ifndef RA_STREAM_H
#define RA_STREAM_H

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>

#include "dtype.h"
#include "error.h"

#define RA_STREAM_VERSION 1
#define RA_CONTENT_ID_LEN 32 /* hex characters */
#define RA_NAME_MAX 1024      /* bytes in a tensor name, excluding NUL */

/* Default part size: msgpack bin32 holds < 4 GiB, so larger tensors are split. */
#define RA_DEFAULT_SPLIT_BYTES ((uint64_t)0xFFFFFFFFu)

typedef struct ra_tensor_info {
    char name[RA_NAME_MAX + 1];
    ra_dtype dtype;
    int ndim;
    int64_t shape[RA_MAX_DIMS];
    int64_t numel;
    uint64_t nbytes; /* numel * dtype size, all parts together */
} ra_tensor_info;

/* An in-memory tensor (owned data). */
typedef struct ra_tensor {
    ra_tensor_info info;
    void *data;
} ra_tensor;

/* ---------------------------------------------------------------- writing */

/* 1 if kind is one of: model scores plan tokens results activations checkpoint. */
int ra_kind_is_known(const char *kind);

typedef struct ra_writer ra_writer;

/* Open a writer.  path "-" writes to stdout (refused when stdout is a
 * terminal); any other path is written to a temporary file in the same
 * directory and renamed into place by ra_writer_close.  meta and provenance
 * are JSON objects (may be NULL for {}); they are not stolen. */
ra_writer *ra_writer_open(const char *path, const char *kind, const json_t *meta,
                          const json_t *provenance, ra_error *err);
/* Tensors larger than this many bytes are written as several part records
 * (tests use small values); rounded down to a multiple of the element size. */
void ra_writer_set_split_bytes(ra_writer *w, uint64_t bytes);

/* Write a whole tensor. */
int ra_writer_tensor(ra_writer *w, const char *name, ra_dtype dtype, int ndim,
                     const int64_t *shape, const void *data, ra_error *err);
/* Or stream one: begin, then write exactly nbytes in any number of pieces. */
int ra_writer_begin(ra_writer *w, const char *name, ra_dtype dtype, int ndim,
                    const int64_t *shape, ra_error *err);
int ra_writer_data(ra_writer *w, const void *data, uint64_t nbytes, ra_error *err);
int ra_writer_end(ra_writer *w, ra_error *err);
/* Convenience: write f32 data converted to dtype. */
int ra_writer_tensor_from_f32(ra_writer *w, const char *name, ra_dtype dtype, int ndim,
                              const int64_t *shape, const float *data, ra_error *err);

/* Write the trailer, flush, fsync and rename into place.  content_id (may be
 * NULL) receives 32 hex chars + NUL.  Frees w whatever the outcome. */
int ra_writer_close(ra_writer *w, char *content_id, ra_error *err);
/* Discard: remove the temporary file and free w. */
void ra_writer_abort(ra_writer *w);

/* ---------------------------------------------------------------- reading */

typedef struct ra_reader ra_reader;

/* Open path ("-" = stdin) and read the header.  Errors: EX_NOINPUT (missing
 * file), EX_DATAERR (not a ra stream, bad header), EX_IOERR. */
ra_reader *ra_reader_open(const char *path, ra_error *err);
/* Read from an open FILE (not closed by the reader); name is for messages. */
ra_reader *ra_reader_open_file(FILE *f, const char *name, ra_error *err);

const char *ra_reader_kind(const ra_reader *r);
int ra_reader_version(const ra_reader *r);
const json_t *ra_reader_meta(const ra_reader *r);       /* borrowed */
const json_t *ra_reader_provenance(const ra_reader *r); /* borrowed */
const char *ra_reader_name(const ra_reader *r);         /* file name for messages */

/* Advance to the next tensor.  Returns 1 with *info filled, 0 at the end of a
 * valid stream (trailer read and digest verified), or -1 with err set.  The
 * previous tensor's data, if not read, is skipped (and hashed). */
int ra_reader_next(ra_reader *r, ra_tensor_info *info, ra_error *err);
/* Read the current tensor's data (all parts) into dst (dst_bytes >= nbytes). */
int ra_reader_read(ra_reader *r, void *dst, uint64_t dst_bytes, ra_error *err);
/* Read up to cap bytes of the current tensor's data into dst (NULL: skip
 * them), across parts.  Returns the number of bytes read (less than cap only
 * at the tensor's end, 0 once it is all read), or -1 with err set.  For
 * copying tensors too large to hold in memory. */
int64_t ra_reader_read_chunk(ra_reader *r, void *dst, uint64_t cap, ra_error *err);
/* Read the current tensor converted to f32 (dst holds numel floats). */
int ra_reader_read_f32(ra_reader *r, float *dst, int64_t dst_numel, ra_error *err);
/* Content id of the stream (valid after ra_reader_next returned 0). */
const char *ra_reader_content_id(const ra_reader *r);
uint64_t ra_reader_record_count(const ra_reader *r);
void ra_reader_close(ra_reader *r);

/* Read every tensor of a stream into memory; *out is an array of *n tensors.
 * Only for streams known to be small (tests, plans, scores). */
int ra_read_all(const char *path, ra_reader **header_out, ra_tensor **out, int *n, ra_error *err);
void ra_tensors_free(ra_tensor *t, int n);
const ra_tensor *ra_tensors_find(const ra_tensor *t, int n, const char *name);

/* Verify a whole stream; on success fills content_id (33 bytes). */
int ra_verify(const char *path, char *content_id, ra_error *err);

/* ------------------------------------------------------------ msgpack <-> JSON */
/* Exposed for tools that store JSON-like values elsewhere (and for tests). */
struct msgpack_packer;
struct msgpack_object;
int ra_pack_json(struct msgpack_packer *pk, const json_t *v);
/* Convert a msgpack object to JSON; fails on bin/ext, non-string keys, or
 * integers beyond int64.  where names the field in error messages. */
json_t *ra_msgpack_to_json(const struct msgpack_object *o, const char *where, ra_error *err);

#endif
