/* Decode-state bytes per sequence (eval_mem.h). */
#include <math.h>

#include "eval_mem.h"
#include "hybrid.h"

eval_mem_row eval_mem_sizes(const ra_model *m, int64_t length, int value_bytes) {
    ra_state_sizes s = ra_model_state_sizes(m);
    eval_mem_row r;
    r.length = length;
    r.kv_bytes = (double)s.kv_values_per_token * length * value_bytes;
    r.ssm_bytes = (double)s.ssm_state_values * value_bytes;
    r.conv_bytes = (double)s.conv_state_values * value_bytes;
    r.total_bytes = r.kv_bytes + r.ssm_bytes;
    return r;
}

void eval_mem(const ra_model *m, const ra_model *teacher, const int64_t *lengths, int n, int value_bytes,
              eval_results *r) {
    const char *cols[] = {"length", "kv_bytes", "ssm_bytes", "conv_bytes", "total_bytes", "total_mb", "teacher_mb",
                          "ratio"};
    char title[96];
    snprintf(title, sizeof title, "Decode state per sequence (%d-byte values)", value_bytes);
    eval_table *t = eval_table_add(r, "mem", title, teacher ? 8 : 6, cols);
    for (int i = 0; i < n; i++) {
        eval_mem_row s = eval_mem_sizes(m, lengths[i], value_bytes);
        double row[8] = {(double)s.length, s.kv_bytes, s.ssm_bytes, s.conv_bytes, s.total_bytes, s.total_bytes / 1e6,
                         NAN, NAN};
        eval_metric(r, row[5], "mem_%lld_mb", (long long)lengths[i]);
        if (teacher) {
            eval_mem_row ts = eval_mem_sizes(teacher, lengths[i], value_bytes);
            row[6] = ts.total_bytes / 1e6;
            row[7] = s.total_bytes / ts.total_bytes;
            eval_metric(r, row[6], "mem_%lld_teacher_mb", (long long)lengths[i]);
            eval_metric(r, row[7], "mem_%lld_ratio", (long long)lengths[i]);
        }
        eval_table_row(t, row);
    }
}
