/* Hugging Face safetensors: validated, memory-mapped reading of single files
 * and sharded checkpoints (model.safetensors.index.json), and atomic writing. */
#ifndef RA_SAFETENSORS_H
#define RA_SAFETENSORS_H

#include <jansson.h>
#include <stdint.h>

#include "dtype.h"
#include "error.h"

#define ST_MAX_HEADER_BYTES (100u * 1000u * 1000u)

typedef struct st_tensor {
    char *name;
    ra_dtype dtype;
    int ndim;
    int64_t shape[RA_MAX_DIMS];
    uint64_t nbytes;
    const void *data; /* points into the mmap of its file; NOT aligned in general
                         (safetensors offsets need not be), so read it with
                         memcpy or ra_convert_to_f32, never through a cast */
    int file;         /* index into st_set.files */
} st_tensor;

typedef struct st_set {
    int n_files;
    char **files;     /* paths */
    void **maps;      /* mmap bases */
    uint64_t *map_sizes;
    int n_tensors;
    st_tensor *tensors; /* sorted by name */
    json_t *metadata;   /* "__metadata__" of the first file, or NULL */
} st_set;

/* Open a .safetensors file, or a directory holding model.safetensors or
 * model.safetensors.index.json (+ shards).  Every header is validated:
 * length, JSON, dtypes, shapes, offsets in range, non-overlapping, exact
 * byte counts; every tensor of an index must exist in the shard it names.
 * Errors: EX_NOINPUT (missing), EX_DATAERR (malformed). */
int st_open(const char *path, st_set **out, ra_error *err);
/* Validate one in-memory safetensors image (used by st_open and the fuzzer);
 * on success tensors point into buf.  file_index is stored in each tensor. */
int st_parse(const void *buf, uint64_t size, const char *name, int file_index,
             st_tensor **tensors, int *n_tensors, json_t **metadata, ra_error *err);
const st_tensor *st_find(const st_set *s, const char *name);
void st_close(st_set *s);
void st_tensors_free(st_tensor *t, int n);

/* Write tensors as one safetensors file, atomically.  metadata: string→string
 * object for "__metadata__" (may be NULL).  Tensor data is written in the order
 * given. */
typedef struct st_write_tensor {
    const char *name;
    ra_dtype dtype;
    int ndim;
    const int64_t *shape;
    const void *data;
} st_write_tensor;
int st_write(const char *path, const st_write_tensor *tensors, int n, const json_t *metadata, ra_error *err);

/* Streaming writer, for tensors too large to hold at once: st_writer_open
 * writes the header from the tensors' names, dtypes and shapes (their data
 * pointers are ignored); then exactly the tensors' bytes follow, in order, in
 * any number of st_writer_data calls; st_writer_close checks the byte count
 * and renames the file into place.  On any error the writer is freed and the
 * temporary file removed. */
typedef struct st_writer st_writer;
st_writer *st_writer_open(const char *path, const st_write_tensor *tensors, int n, const json_t *metadata,
                          ra_error *err);
int st_writer_data(st_writer *w, const void *data, uint64_t nbytes, ra_error *err);
int st_writer_close(st_writer *w, ra_error *err);
void st_writer_abort(st_writer *w);

/* Content id of a Hugging Face checkpoint, as lib/model.h defines it: the
 * XXH3-128 digest (32 lower-case hex chars, canonical big-endian order) of
 * the config.json bytes (config_len may be 0), then for every tensor in
 * ascending strcmp order of names: name, NUL, safetensors dtype name, NUL,
 * ndim as u32 LE, each dim as i64 LE, the data bytes.  Independent of how the
 * checkpoint is split into shards and of the tensors' order in the files. */
void st_checkpoint_id(const st_set *s, const void *config, size_t config_len, char out[33]);

/* safetensors dtype names ("BF16", "F32", ...) <-> ra dtypes. */
const char *st_dtype_name(ra_dtype t);
int st_dtype_parse(const char *s, ra_dtype *out); /* -1: unknown or unsupported */

#endif
