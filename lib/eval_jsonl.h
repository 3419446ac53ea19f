/* JSON Lines input of ra-eval's mc and gen tasks: one JSON object per line,
 * blank lines skipped.  Errors name the file and the line (from 1). */
#ifndef RA_EVAL_JSONL_H
#define RA_EVAL_JSONL_H

#include <jansson.h>

#include "error.h"

typedef struct eval_jsonl {
    int n;
    json_t **obj; /* [n], owned */
    int *line;    /* [n]: line numbers */
} eval_jsonl;

/* Missing file: EX_NOINPUT; a line that is not a JSON object: EX_DATAERR
 * ("FILE:LINE: ..."); no objects at all: EX_DATAERR. */
int eval_jsonl_load(const char *path, eval_jsonl *out, ra_error *err);
void eval_jsonl_free(eval_jsonl *j);

/* Field getters for object i: EX_DATAERR "FILE:LINE: 'key' ..." when the key
 * is missing or of another type. */
int eval_jsonl_string(const eval_jsonl *j, int i, const char *path, const char *key, const char **out, ra_error *err);
/* A string or an array of strings (≥ 1): *out malloc'ed [*n], borrowed strings. */
int eval_jsonl_strings(const eval_jsonl *j, int i, const char *path, const char *key, const char ***out, int *n,
                       ra_error *err);
int eval_jsonl_int(const eval_jsonl *j, int i, const char *path, const char *key, long long *out, ra_error *err);

/* A table / metric name from a file name: the base name without its
 * extension, lower-cased, other characters than [a-z0-9] as '_'. */
void eval_name_from_path(const char *path, char *out, size_t cap);

#endif
