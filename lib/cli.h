/* Shared command-line conventions of the ra tools (DESIGN §5): --help and
 * --version on stdout with exit 0, usage errors exit 64, results to stdout or
 * -o FILE, progress on stderr unless -q. */
#ifndef RA_CLI_H
#define RA_CLI_H

#include <stdint.h>

#include "error.h"

/* Set ra_progname and handle --help / --version (exit 0) if present anywhere
 * in argv before a "--".  usage is the full --help text. */
void ra_cli_init(int argc, char **argv, const char *progname, const char *usage);
/* Print "prog: msg\nTry 'prog --help'." and exit 64. */
__attribute__((noreturn, format(printf, 1, 2))) void ra_usage_error(const char *fmt, ...);

/* Strict number parsing for flags: whole string must parse, range checked;
 * on failure exits 64 naming the flag. */
long long ra_parse_int(const char *flag, const char *s, long long min, long long max);
double ra_parse_double(const char *flag, const char *s, double min, double max);

/* Progress line on stderr ("label  done/total  rate/s  ETA"), rate-limited;
 * silenced by ra_progress_quiet. */
extern int ra_progress_quiet;
typedef struct ra_progress {
    const char *label;
    const char *unit;
    double start, last_print;
    int64_t total;
} ra_progress;
void ra_progress_start(ra_progress *p, const char *label, const char *unit, int64_t total);
void ra_progress_update(ra_progress *p, int64_t done);
void ra_progress_finish(ra_progress *p, int64_t done);
double ra_now(void); /* monotonic seconds */

#endif
