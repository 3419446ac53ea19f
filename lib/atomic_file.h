/* Atomic output files: write to a temporary file beside the target, then
 * fsync and rename, so an interrupted run never leaves a half-written
 * artifact under the final name (Make would take it as done). */
#ifndef RA_ATOMIC_FILE_H
#define RA_ATOMIC_FILE_H

#include <stdio.h>

#include "error.h"

typedef struct ra_atomic_file {
    FILE *f;
    char *path;     /* final name */
    char *tmp_path; /* ".<name>.tmp.XXXXXX" in the same directory; NULL when an
                     * existing non-regular target (/dev/null, a FIFO) is written in place */
} ra_atomic_file;

int ra_atomic_open(ra_atomic_file *af, const char *path, ra_error *err);
/* Flush, fsync, close and rename into place; on failure the temp file is removed. */
int ra_atomic_commit(ra_atomic_file *af, ra_error *err);
/* Close and remove the temporary file. */
void ra_atomic_abort(ra_atomic_file *af);

/* Write a whole buffer atomically. */
int ra_write_file_atomic(const char *path, const void *data, size_t n, ra_error *err);

/* Refuse to write binary data to a terminal (DESIGN §5). */
int ra_check_binary_stdout(ra_error *err);

#endif
