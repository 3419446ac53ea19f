/* Decode-state memory per sequence (DESIGN §2.6), from the model's shape
 * alone (lib/hybrid.h ra_model_state_sizes):
 *   kv    = cached values per token × L × bytes  (kept heads × 2 × hd per
 *           layer; a teacher: layers × Hkv × 2 × hd)
 *   ssm   = layers × SSM heads × P × N × bytes
 *   conv  = layers × conv channels × 4 × bytes    (listed separately)
 *   total = kv + ssm
 * Table "mem", one row per length: length, kv_bytes, ssm_bytes, conv_bytes,
 * total_bytes, total_mb (10⁶ bytes), and with a teacher teacher_mb and
 * ratio (total / teacher total).  Metrics mem_<L>_mb (and
 * mem_<L>_teacher_mb, mem_<L>_ratio). */
#ifndef RA_EVAL_MEM_H
#define RA_EVAL_MEM_H

#include "eval_results.h"
#include "model.h"

typedef struct eval_mem_row {
    int64_t length;
    double kv_bytes, ssm_bytes, conv_bytes, total_bytes;
} eval_mem_row;

/* The state of one sequence of `length` tokens at value_bytes per value. */
eval_mem_row eval_mem_sizes(const ra_model *m, int64_t length, int value_bytes);

/* teacher may be NULL. */
void eval_mem(const ra_model *m, const ra_model *teacher, const int64_t *lengths, int n, int value_bytes,
              eval_results *r);

#endif
