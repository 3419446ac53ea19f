/* gnuplot plots of results and training logs (eval_plot.h). */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "eval_plot.h"
#include "tokenizer.h"

extern char **environ;

static const char *gnuplot_prog(void) {
    const char *g = getenv("RA_GNUPLOT");
    return g && *g ? g : "gnuplot";
}

/* Is prog an executable file itself or on PATH? */
static int find_program(const char *prog) {
    if (strchr(prog, '/')) return access(prog, X_OK) == 0;
    const char *path = getenv("PATH");
    if (!path) return 0;
    char *copy = xstrdup(path), *save = NULL;
    int found = 0;
    for (char *dir = strtok_r(copy, ":", &save); dir && !found; dir = strtok_r(NULL, ":", &save)) {
        char full[4096];
        snprintf(full, sizeof full, "%s/%s", *dir ? dir : ".", prog);
        found = access(full, X_OK) == 0;
    }
    free(copy);
    return found;
}

int eval_plot_available(ra_error *err) {
    const char *g = gnuplot_prog();
    if (!find_program(g))
        return ra_fail(err, EX_UNAVAILABLE, "--plot: '%s' not found (install gnuplot, e.g. apt-get install gnuplot-nox, "
                       "or set RA_GNUPLOT)", g);
    return 0;
}

/* A gnuplot double-quoted string of s. */
static void put_quoted(ra_bytes *b, const char *s) {
    ra_bytes_append(b, "\"", 1);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') ra_bytes_append(b, "\\", 1);
        ra_bytes_append(b, s, 1);
    }
    ra_bytes_append(b, "\"", 1);
}

static void putf(ra_bytes *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(ra_bytes *b, const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    ra_bytes_append(b, buf, (size_t)(n < (int)sizeof buf ? n : (int)sizeof buf - 1));
}

/* Start a script: terminal, output DIR/name.png.tmp, title and labels. */
static void script_begin(ra_bytes *b, const char *dir, const char *name, const char *title, const char *xl,
                         const char *yl) {
    char out[4096];
    snprintf(out, sizeof out, "%s/%s.png.tmp", dir, name);
    putf(b, "set terminal pngcairo size 800,500\nset output ");
    put_quoted(b, out);
    putf(b, "\nset title ");
    put_quoted(b, title);
    putf(b, "\nset xlabel ");
    put_quoted(b, xl);
    putf(b, "\nset ylabel ");
    put_quoted(b, yl);
    putf(b, "\nset grid\nset key left top\n");
}

/* A data block $name with rows of (x, y), NaN rows left out. */
static void data_block(ra_bytes *b, const char *name, int n, const double *x, const double *y, int stride) {
    putf(b, "$%s << EOD\n", name);
    for (int i = 0; i < n; i++)
        if (isfinite(x[(size_t)i * stride]) && isfinite(y[(size_t)i * stride]))
            putf(b, "%.10g %.10g\n", x[(size_t)i * stride], y[(size_t)i * stride]);
    putf(b, "EOD\n");
}

/* Pipe the script to gnuplot; on success rename DIR/name.png.tmp into place. */
static int run_gnuplot(const ra_bytes *script, const char *dir, const char *name, ra_error *err) {
    int fds[2];
    if (pipe(fds)) return ra_fail(err, EX_OSERR, "pipe: %s", strerror(errno));
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[0], 0);
    posix_spawn_file_actions_addclose(&fa, fds[1]);
    const char *prog = gnuplot_prog();
    char *argv[] = {(char *)prog, NULL};
    pid_t pid;
    int rc = posix_spawnp(&pid, prog, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[0]);
    if (rc) {
        close(fds[1]);
        return ra_fail(err, EX_UNAVAILABLE, "--plot: cannot run '%s': %s", prog, strerror(rc));
    }
    size_t off = 0;
    while (off < script->n) {
        ssize_t w = write(fds[1], script->v + off, script->n - off);
        if (w <= 0) break;
        off += (size_t)w;
    }
    close(fds[1]);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    char tmp[4096], png[4096];
    snprintf(tmp, sizeof tmp, "%s/%s.png.tmp", dir, name);
    snprintf(png, sizeof png, "%s/%s.png", dir, name);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || off < script->n) {
        unlink(tmp);
        return ra_fail(err, EX_SOFTWARE, "--plot: %s failed drawing %s", prog, png);
    }
    if (rename(tmp, png)) return ra_fail(err, EX_IOERR, "%s: %s", png, strerror(errno));
    return 0;
}

static int ensure_dir(const char *dir, ra_error *err) {
    struct stat st;
    if (stat(dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) return ra_fail(err, EX_USAGE, "--plot %s: not a directory", dir);
        return 0;
    }
    if (mkdir(dir, 0777)) return ra_fail(err, EX_CANTCREAT, "--plot %s: %s", dir, strerror(errno));
    return 0;
}

/* Lines "x:y[:dashed]" from tables; the plot command. */
static int plot_tables(const eval_results *r, const char *dir, const char *prefix, const char *name,
                       const char *title, const char *xcol, const char *const *ycols, const char *const *ylabels,
                       int n_y, const char *ylabel, int logx, ra_error *err, int *written) {
    ra_bytes b = {0};
    ra_bytes plot = {0};
    int lines = 0;
    script_begin(&b, dir, name, title, xcol, ylabel);
    if (logx) putf(&b, "set logscale x 2\n");
    for (int i = 0; i < r->n_tables; i++) {
        const eval_table *t = r->tables[i];
        if (strncmp(t->name, prefix, strlen(prefix)) != 0 || t->n_rows == 0) continue;
        int xc = eval_table_col(t, xcol);
        if (xc < 0) continue;
        for (int k = 0; k < n_y; k++) {
            int yc = eval_table_col(t, ycols[k]);
            if (yc < 0) continue;
            char block[64], label[160];
            snprintf(block, sizeof block, "d%d", lines);
            data_block(&b, block, t->n_rows, t->v + xc, t->v + yc, t->n_cols);
            snprintf(label, sizeof label, "%s %s", t->name, ylabels[k]);
            putf(&plot, "%s$%s using 1:2 with linespoints dashtype %d title ", lines ? ", " : "plot ", block, k + 1);
            put_quoted(&plot, label);
            lines++;
        }
    }
    int rc = 0;
    if (lines) {
        ra_bytes_append(&b, plot.v, plot.n);
        putf(&b, "\n");
        rc = run_gnuplot(&b, dir, name, err);
        if (!rc && written) (*written)++;
    }
    ra_bytes_free(&b);
    ra_bytes_free(&plot);
    return rc;
}

int eval_plot_results(const eval_results *r, const char *dir, int *written, ra_error *err) {
    if (written) *written = 0;
    int rc = eval_plot_available(err);
    if (!rc) rc = ensure_dir(dir, err);
    const char *kv_y[] = {"acc", "teacher_acc"}, *kv_l[] = {"model", "teacher"};
    const char *mem_y[] = {"total_mb", "teacher_mb"};
    const char *sp_y[] = {"decode_tok_s", "prefill_tok_s"}, *sp_l[] = {"decode", "prefill"};
    if (!rc) rc = plot_tables(r, dir, "kv_", "kv", "KV retrieval accuracy", "pairs", kv_y, kv_l, 2, "accuracy", 0, err, written);
    if (!rc) rc = plot_tables(r, dir, "mem", "mem", "Decode state per sequence", "length", mem_y, kv_l, 2, "MB", 1, err, written);
    if (!rc) rc = plot_tables(r, dir, "speed", "speed", "Throughput", "batch", sp_y, sp_l, 2, "tokens/s", 1, err, written);
    return rc;
}

/* ------------------------------------------------------------- logs */

void eval_log_free(eval_log *l) {
    free(l->step);
    free(l->loss);
    memset(l, 0, sizeof *l);
}

/* Split a line in place at tabs; returns the field count (≤ max). */
static int split_tabs(char *line, char **f, int max) {
    int n = 0;
    line[strcspn(line, "\r\n")] = 0;
    for (char *p = line; n < max;) {
        f[n++] = p;
        char *tab = strchr(p, '\t');
        if (!tab) break;
        *tab = 0;
        p = tab + 1;
    }
    return n;
}

int eval_log_load(const char *path, eval_log *out, ra_error *err) {
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "r");
    if (!f) return ra_fail(err, errno == ENOENT ? EX_NOINPUT : EX_IOERR, "%s: %s", path, strerror(errno));
    char *line = NULL, *fld[256];
    size_t cap = 0;
    int rc = 0, lineno = 0, n_cols = 0, loss_col = -1, cap_n = 0;
    while (getline(&line, &cap, f) >= 0 && !rc) {
        lineno++;
        if (line[strspn(line, " \t\r\n")] == 0) continue;
        int n = split_tabs(line, fld, 256);
        if (!n_cols) {
            n_cols = n;
            for (int k = 0; k < n; k++)
                if (!strcmp(fld[k], "loss")) loss_col = k;
            if (strcmp(fld[0], "step") != 0)
                rc = ra_fail(err, EX_DATAERR, "%s:%d: header: first column '%s', expected 'step'", path, lineno, fld[0]);
            else if (loss_col < 0)
                rc = ra_fail(err, EX_DATAERR, "%s:%d: header has no 'loss' column", path, lineno);
            continue;
        }
        if (n != n_cols) {
            rc = ra_fail(err, EX_DATAERR, "%s:%d: %d fields, expected %d as in the header", path, lineno, n, n_cols);
            break;
        }
        char *e1, *e2;
        double s = strtod(fld[0], &e1), l = strtod(fld[loss_col], &e2);
        if (e1 == fld[0] || *e1 || e2 == fld[loss_col] || *e2) {
            rc = ra_fail(err, EX_DATAERR, "%s:%d: step '%s' / loss '%s' is not a number", path, lineno, fld[0],
                         fld[loss_col]);
            break;
        }
        if (out->n == cap_n) {
            cap_n = cap_n ? 2 * cap_n : 256;
            out->step = xrealloc(out->step, (size_t)cap_n * sizeof(double));
            out->loss = xrealloc(out->loss, (size_t)cap_n * sizeof(double));
        }
        out->step[out->n] = s;
        out->loss[out->n++] = l;
    }
    if (!rc && !n_cols) rc = ra_fail(err, EX_DATAERR, "%s: empty log (no header row)", path);
    free(line);
    fclose(f);
    if (rc) eval_log_free(out);
    return rc;
}

int eval_plot_logs(const char *const *logs, int n, const char *dir, ra_error *err) {
    int rc = eval_plot_available(err);
    if (!rc) rc = ensure_dir(dir, err);
    if (rc) return rc;
    ra_bytes b = {0}, plot = {0};
    script_begin(&b, dir, "loss", "Training loss", "step", "loss");
    for (int i = 0; i < n && !rc; i++) {
        eval_log l;
        if ((rc = eval_log_load(logs[i], &l, err))) break;
        char block[32];
        snprintf(block, sizeof block, "log%d", i);
        data_block(&b, block, l.n, l.step, l.loss, 1);
        putf(&plot, "%s$%s using 1:2 with lines title ", i ? ", " : "plot ", block);
        const char *base = strrchr(logs[i], '/');
        put_quoted(&plot, base ? base + 1 : logs[i]);
        eval_log_free(&l);
    }
    if (!rc) {
        ra_bytes_append(&b, plot.v, plot.n);
        putf(&b, "\n");
        rc = run_gnuplot(&b, dir, "loss", err);
    }
    ra_bytes_free(&b);
    ra_bytes_free(&plot);
    return rc;
}
