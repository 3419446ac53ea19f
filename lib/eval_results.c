/* Evaluation results: tables and metrics, written as a results stream,
 * a Markdown table or a flat JSON object (eval_results.h). */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "eval_results.h"
#include "stream.h"

void eval_results_init(eval_results *r) {
    memset(r, 0, sizeof *r);
    r->metrics = json_object();
}

void eval_results_free(eval_results *r) {
    for (int i = 0; i < r->n_tables; i++) {
        eval_table *t = r->tables[i];
        for (int c = 0; c < t->n_cols; c++) free(t->cols[c]);
        free(t->cols), free(t->v), free(t->name), free(t->title), free(t);
    }
    free(r->tables);
    json_decref(r->metrics);
    memset(r, 0, sizeof *r);
}

eval_table *eval_table_add(eval_results *r, const char *name, const char *title, int n_cols,
                           const char *const *cols) {
    eval_table *t = xcalloc(1, sizeof *t);
    t->name = xstrdup(name);
    t->title = xstrdup(title);
    t->n_cols = n_cols;
    t->cols = xmalloc((size_t)n_cols * sizeof(char *));
    for (int c = 0; c < n_cols; c++) t->cols[c] = xstrdup(cols[c]);
    r->tables = xrealloc(r->tables, (size_t)(r->n_tables + 1) * sizeof *r->tables);
    r->tables[r->n_tables++] = t;
    return t;
}

void eval_table_row(eval_table *t, const double *values) {
    if (t->n_rows == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 8;
        t->v = xrealloc(t->v, (size_t)t->cap * t->n_cols * sizeof(double));
    }
    memcpy(t->v + (size_t)t->n_rows * t->n_cols, values, (size_t)t->n_cols * sizeof(double));
    t->n_rows++;
}

const eval_table *eval_results_find(const eval_results *r, const char *name) {
    for (int i = 0; i < r->n_tables; i++)
        if (!strcmp(r->tables[i]->name, name)) return r->tables[i];
    return NULL;
}

int eval_table_col(const eval_table *t, const char *name) {
    for (int c = 0; c < t->n_cols; c++)
        if (!strcmp(t->cols[c], name)) return c;
    return -1;
}

void eval_metric(eval_results *r, double value, const char *fmt, ...) {
    char key[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(key, sizeof key, fmt, ap);
    va_end(ap);
    json_object_set_new(r->metrics, key, isfinite(value) ? json_real(value) : json_null());
}

/* ------------------------------------------------------------ stream */

int eval_results_write(const eval_results *r, const char *path, const json_t *meta, const json_t *prov,
                       ra_error *err) {
    json_t *m = meta ? json_deep_copy(meta) : json_object();
    json_object_set(m, "metrics", r->metrics);
    json_t *tables = json_array();
    for (int i = 0; i < r->n_tables; i++) {
        const eval_table *t = r->tables[i];
        json_t *cols = json_array();
        for (int c = 0; c < t->n_cols; c++) json_array_append_new(cols, json_string(t->cols[c]));
        json_array_append_new(tables, json_pack("{s:s, s:s, s:o, s:i}", "name", t->name, "title", t->title, "columns",
                                                cols, "rows", t->n_rows));
    }
    json_object_set_new(m, "tables", tables);
    ra_writer *w = ra_writer_open(path, "results", m, prov, err);
    json_decref(m);
    if (!w) return err->code ? err->code : EX_IOERR;
    for (int i = 0; i < r->n_tables; i++) {
        const eval_table *t = r->tables[i];
        char name[300];
        snprintf(name, sizeof name, "table/%s", t->name);
        int64_t shape[2] = {t->n_rows, t->n_cols};
        int rc = ra_writer_tensor(w, name, RA_F64, 2, shape, t->v, err);
        if (rc) {
            ra_writer_abort(w);
            return rc;
        }
    }
    return ra_writer_close(w, NULL, err);
}

/* ------------------------------------------------------------- print */

static void print_cell(FILE *f, double v) {
    if (isnan(v)) fputs("–", f);
    else if (v == floor(v) && fabs(v) < 1e15) fprintf(f, "%.0f", v);
    else if (fabs(v) >= 100) fprintf(f, "%.1f", v);
    else if (fabs(v) < 1e-3) fprintf(f, "%.4g", v);
    else fprintf(f, "%.4f", v);
}

static void print_markdown(const eval_results *r, FILE *f) {
    for (int i = 0; i < r->n_tables; i++) {
        const eval_table *t = r->tables[i];
        fprintf(f, "%s### %s\n\n|", i ? "\n" : "", t->title);
        for (int c = 0; c < t->n_cols; c++) fprintf(f, " %s |", t->cols[c]);
        fputs("\n|", f);
        for (int c = 0; c < t->n_cols; c++) fputs(" ---: |", f);
        fputc('\n', f);
        for (int row = 0; row < t->n_rows; row++) {
            fputc('|', f);
            for (int c = 0; c < t->n_cols; c++) {
                fputc(' ', f);
                print_cell(f, t->v[(size_t)row * t->n_cols + c]);
                fputs(" |", f);
            }
            fputc('\n', f);
        }
    }
}

int eval_results_print(const eval_results *r, eval_format fmt, FILE *out, ra_error *err) {
    if (fmt == EVAL_FORMAT_JSON) {
        if (json_dumpf(r->metrics, out, JSON_COMPACT | JSON_REAL_PRECISION(10)) || fputc('\n', out) == EOF)
            return ra_fail(err, EX_IOERR, "stdout: write failed");
    } else {
        print_markdown(r, out);
    }
    if (fflush(out) || ferror(out)) return ra_fail(err, EX_IOERR, "stdout: write failed");
    return 0;
}
