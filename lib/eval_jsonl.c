/* JSON Lines reader (eval_jsonl.h). */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval_jsonl.h"

int eval_jsonl_load(const char *path, eval_jsonl *out, ra_error *err) {
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "r");
    if (!f) return ra_fail(err, errno == ENOENT ? EX_NOINPUT : EX_IOERR, "%s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t cap = 0;
    ssize_t len;
    int lineno = 0, rc = 0, cap_n = 0;
    while ((len = getline(&buf, &cap, f)) >= 0) {
        lineno++;
        int blank = 1;
        for (ssize_t k = 0; k < len && blank; k++) blank = isspace((unsigned char)buf[k]);
        if (blank) continue;
        json_error_t je;
        json_t *o = json_loadb(buf, (size_t)len, JSON_DECODE_ANY, &je);
        if (!o || !json_is_object(o)) {
            rc = ra_fail(err, EX_DATAERR, "%s:%d: %s%s", path, lineno, o ? "expected a JSON object, got another value" : "not valid JSON: ",
                         o ? "" : je.text);
            json_decref(o);
            break;
        }
        if (out->n == cap_n) {
            cap_n = cap_n ? 2 * cap_n : 64;
            out->obj = xrealloc(out->obj, (size_t)cap_n * sizeof *out->obj);
            out->line = xrealloc(out->line, (size_t)cap_n * sizeof *out->line);
        }
        out->obj[out->n] = o;
        out->line[out->n++] = lineno;
    }
    if (!rc && ferror(f)) rc = ra_fail(err, EX_IOERR, "%s: read error", path);
    if (!rc && out->n == 0) rc = ra_fail(err, EX_DATAERR, "%s: no JSON objects (an empty file?)", path);
    free(buf);
    fclose(f);
    if (rc) eval_jsonl_free(out);
    return rc;
}

void eval_jsonl_free(eval_jsonl *j) {
    for (int i = 0; i < j->n; i++) json_decref(j->obj[i]);
    free(j->obj);
    free(j->line);
    memset(j, 0, sizeof *j);
}

static json_t *field(const eval_jsonl *j, int i, const char *path, const char *key, ra_error *err) {
    json_t *v = json_object_get(j->obj[i], key);
    if (!v) ra_fail(err, EX_DATAERR, "%s:%d: no '%s' field", path, j->line[i], key);
    return v;
}

int eval_jsonl_string(const eval_jsonl *j, int i, const char *path, const char *key, const char **out, ra_error *err) {
    json_t *v = field(j, i, path, key, err);
    if (!v) return EX_DATAERR;
    if (!json_is_string(v)) return ra_fail(err, EX_DATAERR, "%s:%d: '%s' must be a string", path, j->line[i], key);
    *out = json_string_value(v);
    return 0;
}

int eval_jsonl_strings(const eval_jsonl *j, int i, const char *path, const char *key, const char ***out, int *n,
                       ra_error *err) {
    json_t *v = field(j, i, path, key, err);
    if (!v) return EX_DATAERR;
    if (json_is_string(v)) {
        *out = xmalloc(sizeof(char *));
        (*out)[0] = json_string_value(v);
        *n = 1;
        return 0;
    }
    if (!json_is_array(v) || json_array_size(v) == 0)
        return ra_fail(err, EX_DATAERR, "%s:%d: '%s' must be a string or a non-empty array of strings", path,
                       j->line[i], key);
    *n = (int)json_array_size(v);
    *out = xmalloc((size_t)*n * sizeof(char *));
    for (int k = 0; k < *n; k++) {
        json_t *s = json_array_get(v, (size_t)k);
        if (!json_is_string(s)) {
            free(*out);
            *out = NULL;
            return ra_fail(err, EX_DATAERR, "%s:%d: '%s'[%d] must be a string", path, j->line[i], key, k);
        }
        (*out)[k] = json_string_value(s);
    }
    return 0;
}

int eval_jsonl_int(const eval_jsonl *j, int i, const char *path, const char *key, long long *out, ra_error *err) {
    json_t *v = field(j, i, path, key, err);
    if (!v) return EX_DATAERR;
    if (!json_is_integer(v)) return ra_fail(err, EX_DATAERR, "%s:%d: '%s' must be an integer", path, j->line[i], key);
    *out = json_integer_value(v);
    return 0;
}

void eval_name_from_path(const char *path, char *out, size_t cap) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *dot = strrchr(base, '.');
    size_t n = dot && dot > base ? (size_t)(dot - base) : strlen(base);
    if (n >= cap) n = cap - 1;
    for (size_t k = 0; k < n; k++) {
        unsigned char c = (unsigned char)base[k];
        out[k] = isalnum(c) ? (char)tolower(c) : '_';
    }
    out[n] = 0;
    if (n == 0 && cap > 1) snprintf(out, cap, "data");
}
