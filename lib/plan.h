/* Head plans (formats/plan.md) and head scores (formats/scores.md): the
 * artifacts between ra-probe, ra-rank and the tools that build a hybrid.
 *
 * Every tool that takes a plan and a teacher calls ra_plan_load and then
 * ra_plan_check_teacher, so a plan made for another model (other content id
 * or shape) is refused with a message naming both. */
#ifndef RA_PLAN_H
#define RA_PLAN_H

#include <jansson.h>
#include <stdint.h>

#include "error.h"
#include "hf_config.h"
#include "stream.h"

/* The part of a teacher's config a plan depends on. */
typedef struct ra_teacher_shape {
    int layers, heads, kv_heads, head_dim, hidden;
} ra_teacher_shape;

/* From config.json fields (num_hidden_layers, num_attention_heads,
 * hidden_size; num_key_value_heads and head_dim default as in Hugging Face).
 * where names the object in messages ("plan.ra: meta.teacher.config"). */
int ra_teacher_shape_from_json(const json_t *config, const char *where, ra_teacher_shape *s, ra_error *err);
ra_teacher_shape ra_teacher_shape_from_config(const hf_config *c);

/* KV-cache bytes per token in bf16 of the kept heads of keep[layers*heads]:
 * each kept head stores its own K and V (2 × head_dim values × 2 bytes);
 * shared: one K/V pair per distinct (layer, KV group) among the kept heads
 * (--share-kv, DESIGN §2.4). */
int64_t ra_kv_bytes_per_token(const ra_teacher_shape *s, const uint8_t *keep);
int64_t ra_kv_bytes_per_token_shared(const ra_teacher_shape *s, const uint8_t *keep);

/* ------------------------------------------------------------------ plans */

typedef struct ra_plan {
    char teacher_id[RA_CONTENT_ID_LEN + 1];
    json_t *teacher_config; /* owned */
    ra_teacher_shape shape;
    uint8_t *keep;          /* [layers * heads], 1 = kept attention head */
    int kept;               /* number of ones in keep */
    char content_id[RA_CONTENT_ID_LEN + 1]; /* of the plan stream (after load/write) */
} ra_plan;

/* Read and validate a plan stream ("-" = stdin).  EX_DATAERR names the file
 * and the field; EX_NOINPUT for a missing file. */
int ra_plan_load(const char *path, ra_plan *p, ra_error *err);
/* Refuse a teacher other than the plan's: content id and shape must match.
 * plan_name / teacher_name are for messages (file names). */
int ra_plan_check_teacher(const ra_plan *p, const char *plan_name, const char *teacher_name,
                          const char *teacher_id, const ra_teacher_shape *teacher, ra_error *err);
/* Kept heads of layer l in ascending order into heads[] (room for
 * shape.heads); returns their number. */
int ra_plan_layer_heads(const ra_plan *p, int layer, int *heads);
/* Write a plan.  p->teacher_id, teacher_config, shape and keep must be set;
 * selection (may be NULL) is stored as meta.selection; totals and layers are
 * derived from keep.  content_id (may be NULL) receives the plan's id. */
int ra_plan_write(const char *path, const ra_plan *p, const json_t *selection, const json_t *provenance,
                  char *content_id, ra_error *err);
void ra_plan_free(ra_plan *p);

/* ----------------------------------------------------------------- scores */

typedef struct ra_scores {
    char teacher_id[RA_CONTENT_ID_LEN + 1];
    json_t *meta;           /* owned: the whole header meta */
    const json_t *teacher_config; /* borrowed from meta */
    ra_teacher_shape shape;
    float *acc_drop;        /* [layers * heads]; NaN where not measured */
    float *logprob_drop;    /* [layers * heads] */
    uint8_t *exact;         /* [layers * heads]; all 1 when the stream has no `exact` */
    float *attribution;     /* [layers * heads] or NULL */
    char content_id[RA_CONTENT_ID_LEN + 1];
} ra_scores;

/* Read and validate a scores stream ("-" = stdin); see formats/scores.md. */
int ra_scores_load(const char *path, ra_scores *s, ra_error *err);
/* Write a scores stream: meta must hold teacher.{id,config} and the probe
 * fields; s supplies the arrays (attribution may be NULL). */
int ra_scores_write(const char *path, const json_t *meta, const ra_scores *s, const json_t *provenance,
                    char *content_id, ra_error *err);
void ra_scores_free(ra_scores *s);

#endif
