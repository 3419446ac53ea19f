#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int ra_progress_quiet = 0;

void ra_cli_init(int argc, char **argv, const char *progname, const char *usage) {
    ra_progname = progname;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) break;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(usage, stdout);
            exit(0);
        }
        if (strcmp(argv[i], "--version") == 0) {
            printf("%s (ra) %s\n", progname, RA_VERSION);
            exit(0);
        }
    }
}

void ra_usage_error(const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "%s: ", ra_progname);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry '%s --help' for more information.\n", ra_progname);
    exit(EX_USAGE);
}

long long ra_parse_int(const char *flag, const char *s, long long min, long long max) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno) ra_usage_error("%s: '%s' is not an integer", flag, s);
    if (v < min || v > max) ra_usage_error("%s: %lld is out of range [%lld, %lld]", flag, v, min, max);
    return v;
}

double ra_parse_double(const char *flag, const char *s, double min, double max) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(v)) ra_usage_error("%s: '%s' is not a number", flag, s);
    if (v < min || v > max) ra_usage_error("%s: %g is out of range [%g, %g]", flag, v, min, max);
    return v;
}

double ra_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

void ra_progress_start(ra_progress *p, const char *label, const char *unit, int64_t total) {
    p->label = label;
    p->unit = unit;
    p->total = total;
    p->start = ra_now();
    p->last_print = 0;
}

static void progress_print(ra_progress *p, int64_t done, int final) {
    double el = ra_now() - p->start;
    double rate = el > 0 ? done / el : 0;
    fprintf(stderr, "\r%s: %lld", p->label, (long long)done);
    if (p->total > 0) fprintf(stderr, "/%lld (%.0f%%)", (long long)p->total, 100.0 * done / p->total);
    fprintf(stderr, "  %.1f %s/s", rate, p->unit);
    if (!final && p->total > 0 && rate > 0) fprintf(stderr, "  ETA %.0fs", (p->total - done) / rate);
    if (final) fprintf(stderr, "  %.1fs\n", el);
    else fputs("   ", stderr);
    fflush(stderr);
}

void ra_progress_update(ra_progress *p, int64_t done) {
    if (ra_progress_quiet) return;
    double t = ra_now();
    if (t - p->last_print < 0.5) return;
    p->last_print = t;
    progress_print(p, done, 0);
}

void ra_progress_finish(ra_progress *p, int64_t done) {
    if (!ra_progress_quiet) progress_print(p, done, 1);
}
