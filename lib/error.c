#include "error.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *ra_progname = "ra";

int ra_fail(ra_error *e, int code, const char *fmt, ...) {
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
        e->code = code;
    }
    return code;
}

int ra_error_prefix(ra_error *e, const char *fmt, ...) {
    if (!e) return 0;
    char old[sizeof e->msg];
    memcpy(old, e->msg, sizeof old);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < sizeof e->msg)
        snprintf(e->msg + n, sizeof e->msg - (size_t)n, ": %.*s", (int)(sizeof e->msg - (size_t)n), old);
    return e->code;
}

void ra_die_error(const ra_error *e) {
    fprintf(stderr, "%s: %s\n", ra_progname, e->msg[0] ? e->msg : "unknown error");
    exit(e->code ? e->code : EX_SOFTWARE);
}

void ra_die(int code, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "%s: ", ra_progname);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(code);
}

void ra_check_failed(const char *file, int line, const char *expr, const char *detail, int code) {
    int saved = errno;
    fprintf(stderr, "%s: %s:%d: check failed: %s", ra_progname, file, line, expr);
    if (detail) fprintf(stderr, ": %s", detail);
    else if (code == EX_IOERR && saved) fprintf(stderr, ": %s", strerror(saved));
    fputc('\n', stderr);
    exit(code);
}

static void out_of_memory(size_t n) {
    fprintf(stderr, "%s: out of memory allocating %zu bytes\n", ra_progname, n);
    exit(EX_SOFTWARE);
}

void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) out_of_memory(n);
    return p;
}

void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) out_of_memory(n * size);
    return p;
}

void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) out_of_memory(n);
    return q;
}

char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = xmalloc(n);
    memcpy(p, s, n);
    return p;
}
