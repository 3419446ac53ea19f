/* Evaluation results (formats/results.md): numeric tables, one per task
 * part (kv in one scoring mode, memory, ...), plus a flat object of
 * headline metrics ("kv_choice_acc": 0.93, "ppl": 12.4, ...).
 *
 *   eval_results r; eval_results_init(&r);
 *   eval_table *t = eval_table_add(&r, "mem", "Decode state per sequence", 3, cols);
 *   eval_table_row(t, values);            // n_cols doubles
 *   eval_metric(&r, 12.4, "ppl");          // key from a printf format
 *   eval_results_write(&r, "out.ra", meta, prov, &err);
 *   eval_results_print(&r, EVAL_FORMAT_TABLE, stdout);
 *
 * Stream: meta.metrics (the flat object), meta.tables ([{name, title,
 * columns}]) and per table a record table/<name>, f64 [rows, columns]. */
#ifndef RA_EVAL_RESULTS_H
#define RA_EVAL_RESULTS_H

#include <jansson.h>
#include <stdio.h>

#include "error.h"

typedef struct eval_table {
    char *name;  /* [a-z0-9_]+: record table/<name> */
    char *title; /* Markdown heading */
    int n_cols, n_rows, cap;
    char **cols;
    double *v; /* [n_rows × n_cols], NaN = not available */
} eval_table;

typedef struct eval_results {
    int n_tables;
    eval_table **tables;
    json_t *metrics; /* flat object, insertion order */
} eval_results;

typedef enum { EVAL_FORMAT_TABLE = 0, EVAL_FORMAT_JSON = 1 } eval_format;

void eval_results_init(eval_results *r);
void eval_results_free(eval_results *r);

eval_table *eval_table_add(eval_results *r, const char *name, const char *title, int n_cols,
                           const char *const *cols);
void eval_table_row(eval_table *t, const double *values);
const eval_table *eval_results_find(const eval_results *r, const char *name);
/* Column index of name in t, -1 if absent. */
int eval_table_col(const eval_table *t, const char *name);

/* Add a headline metric; the key is formatted (printf).  NaN and ±inf are
 * stored as JSON null. */
__attribute__((format(printf, 3, 4))) void eval_metric(eval_results *r, double value, const char *fmt, ...);

/* Write a results stream to path ("-" = stdout): meta (not stolen; the
 * metrics and tables keys are added to a copy) and provenance as given. */
int eval_results_write(const eval_results *r, const char *path, const json_t *meta, const json_t *prov,
                       ra_error *err);

/* Markdown: per table "### title", a header row, one row per table row;
 * integers as integers, other numbers with 4 decimals (1 from 100 up,
 * 4 significant digits below 0.001).  JSON:
 * the metrics object on one line. */
int eval_results_print(const eval_results *r, eval_format f, FILE *out, ra_error *err);

#endif
