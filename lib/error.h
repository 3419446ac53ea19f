/* Error reporting shared by the library and the tools.
 *
 * Library functions never exit: they return a sysexits code (0 on success) and
 * describe the failure in a caller-provided ra_error, so fuzz targets and tools
 * decide what to do.  Tools turn an ra_error into "tool: message" + exit code. */
#ifndef RA_ERROR_H
#define RA_ERROR_H

#include <stddef.h>
#include <sysexits.h>

typedef struct ra_error {
    int code;        /* 0 = no error, else a sysexits code (EX_DATAERR, ...) */
    char msg[1024];
} ra_error;

/* Set *e (if not NULL) and return code.  printf-style message. */
int ra_fail(ra_error *e, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefix an existing message, e.g. with the file name: "model.ra: <old msg>". */
int ra_error_prefix(ra_error *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The program name used by ra_die (set once by each tool's main). */
extern const char *ra_progname;

/* Print "prog: msg" to stderr and exit with e->code (EX_SOFTWARE if unset). */
__attribute__((noreturn)) void ra_die_error(const ra_error *e);
__attribute__((noreturn, format(printf, 2, 3))) void ra_die(int code, const char *fmt, ...);

/* Abort-on-failure checks for places where failure is a bug or the machine is
 * broken, not bad input.  They print file:line and the failing expression. */
__attribute__((noreturn)) void ra_check_failed(const char *file, int line, const char *expr,
                                               const char *detail, int code);

/* SYS_CHECK(expr): expr is a syscall-style expression, failing when < 0. */
#define SYS_CHECK(expr)                                                             \
    do {                                                                            \
        if ((expr) < 0) ra_check_failed(__FILE__, __LINE__, #expr, NULL, EX_IOERR); \
    } while (0)

/* RA_CHECK(cond): internal invariant. */
#define RA_CHECK(cond)                                                                  \
    do {                                                                                \
        if (!(cond)) ra_check_failed(__FILE__, __LINE__, #cond, NULL, EX_SOFTWARE);     \
    } while (0)

/* Allocation that treats out-of-memory as fatal (exit 70 with the size asked). */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);

#endif
