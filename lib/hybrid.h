/* Hybrid students (DESIGN §2.4): the configuration that turns an ra_model
 * into a Transformer–SSM hybrid, its JSON form (a model stream's
 * meta.hybrid), the per-layer shapes it implies, and ra-graft's
 * construction of a student from a teacher and a head plan.
 *
 * One representation for the whole family: ra_model (lib/model.h) with
 * m->hybrid == NULL is a teacher (every head softmax attention, GQA K/V
 * rows); with m->hybrid set, every layer l is
 *   - k_l kept attention heads, slots L->attn_heads (ascending), each with
 *     its own Q rows, its OWN COPY of its teacher KV group's K/V rows
 *     (so wq, wk, wv are [k_l·hd, D], in attn_heads order; biases likewise)
 *     and RoPE;
 *   - SSM heads, a DiscreteMamba2 mixer (lib/dm2.h) with P = hd, N =
 *     d_state, G = qk_groups (0: one B/C group per SSM head):
 *       routed:   the H − k_l slots not kept (L->ssm_heads), no out_proj;
 *                 every slot's output goes into the teacher's o_proj
 *                 (wo [D, H·hd], bo), the attention slots first passed
 *                 through the static adapter (adapter "static") or not
 *                 ("none");
 *       parallel: all H heads with an out_proj; the kept heads have their
 *                 own o_proj slice (wo [D, k_l·hd], bo) and the learned
 *                 adapter (adapter "linear": standardise to the SSM output's
 *                 per-token mean/std, then adapter_w [D, D] + adapter_b):
 *                 out = 0.5·(ssm + adapted attention); k_l = 0: out = ssm.
 * Norms, MLPs, embeddings and the LM head are the teacher's.
 *
 * meta.hybrid (formats/model.md):
 *   {"layout": "routed"|"parallel", "adapter": "static"|"none"|"linear",
 *    "d_state": N, "qk_groups": G, "conv_kernel": 4, "chunk": 128,
 *    "ssm_head_dim": hd, "kept_heads": [[h, ...] per layer],
 *    "init": "mohawk"|"attention"|"svd", "seed": S,
 *    "plan": plan id, "teacher": teacher id}
 * init, seed, plan and teacher describe how the student was made and are
 * optional when reading. */
#ifndef RA_HYBRID_H
#define RA_HYBRID_H

#include <jansson.h>
#include <stdint.h>

#include "dm2.h"
#include "error.h"
#include "model.h"
#include "plan.h"

typedef enum { RA_LAYOUT_ROUTED = 0, RA_LAYOUT_PARALLEL = 1 } ra_layout;
typedef enum { RA_ADAPTER_NONE = 0, RA_ADAPTER_STATIC = 1, RA_ADAPTER_LINEAR = 2 } ra_adapter_kind;
typedef enum { RA_INIT_MOHAWK = 0, RA_INIT_ATTENTION = 1, RA_INIT_SVD = 2 } ra_ssm_init;

#define RA_HYBRID_CONV_KERNEL DM2_CONV_K
#define RA_HYBRID_CHUNK 128

typedef struct ra_hybrid_config {
    ra_layout layout;
    ra_adapter_kind adapter; /* routed: static | none; parallel: linear */
    int d_state;             /* N ≥ 1 */
    int qk_groups;           /* B/C groups per layer; 0 = one per SSM head */
    int conv_kernel;         /* 4 */
    int chunk;               /* SSD chunk length (training / prefill) */
    int ssm_head_dim;        /* P; equals the teacher's head_dim */
    int layers, heads;       /* shape of keep */
    uint8_t *keep;           /* [layers·heads], 1 = kept attention head (owned) */
    ra_ssm_init init;        /* how the SSM was initialised (informational) */
    uint64_t seed;
    char plan_id[RA_CONTENT_ID_LEN + 1];    /* "" when unknown */
    char teacher_id[RA_CONTENT_ID_LEN + 1]; /* "" when unknown */
} ra_hybrid_config;

const char *ra_layout_name(ra_layout l);
const char *ra_adapter_name(ra_adapter_kind a);
const char *ra_ssm_init_name(ra_ssm_init i);
/* 0, or -1 for an unknown name. */
int ra_layout_parse(const char *s, ra_layout *out);
int ra_adapter_parse(const char *s, ra_adapter_kind *out);
int ra_ssm_init_parse(const char *s, ra_ssm_init *out);

/* Check h against the model config c: layout/adapter pairs, N ≥ 1,
 * conv_kernel 4, chunk ≥ 1, ssm_head_dim = head_dim, keep's shape, and that
 * qk_groups divides every layer's SSM head count.  EX_DATAERR naming the
 * field (and the layer); where prefixes the message ("model.ra: meta.hybrid"). */
int ra_hybrid_check(const ra_hybrid_config *h, const hf_config *c, const char *where, ra_error *err);

/* JSON: parse (validated with ra_hybrid_check) / emit (a new reference). */
int ra_hybrid_from_json(const json_t *j, const hf_config *c, const char *where, ra_hybrid_config *h, ra_error *err);
json_t *ra_hybrid_to_json(const ra_hybrid_config *h);
void ra_hybrid_copy(ra_hybrid_config *dst, const ra_hybrid_config *src); /* deep copy */
void ra_hybrid_free(ra_hybrid_config *h); /* frees keep, not h */

/* The shape of layer l: kept heads k, SSM heads Hs, and the dm2 config of
 * its SSM heads (valid when Hs > 0). */
typedef struct ra_hybrid_layer_shape {
    int k, Hs;
    dm2_config ssm;
} ra_hybrid_layer_shape;
ra_hybrid_layer_shape ra_hybrid_layer(const ra_hybrid_config *h, const hf_config *c, int layer);

/* Decode-state sizes of a model (teacher or hybrid), for summaries and
 * ra-eval's memory table (DESIGN §2.6):
 *   kv_values_per_token:   values cached per token: kept heads × 2 × hd
 *                          (a teacher: layers × Hkv × 2 × hd);
 *   kv_values_shared:      the same with kept heads of one KV group sharing
 *                          one K/V pair (--share-kv);
 *   ssm_state_values:      layers × SSM heads × P × N per sequence;
 *   conv_state_values:     layers × conv channels × 4 per sequence. */
typedef struct ra_state_sizes {
    int64_t kv_values_per_token, kv_values_shared, ssm_state_values, conv_state_values;
} ra_state_sizes;
ra_state_sizes ra_model_state_sizes(const ra_model *m);
/* Parameters of a model (tied embeddings counted once). */
int64_t ra_model_param_count(const ra_model *m);

/* ----------------------------------------------------------------- graft */

typedef struct ra_graft_opts {
    ra_layout layout;
    ra_adapter_kind adapter; /* routed: static (default) or none; parallel: linear */
    int d_state;             /* 0 = head_dim */
    int qk_groups;           /* 0 = one group per SSM head */
    ra_ssm_init init;
    uint64_t seed;
} ra_graft_opts;

/* Build a student from a teacher (not itself a hybrid) and a plan already
 * checked against it (ra_plan_check_teacher): norms, MLPs, embeddings, LM head
 * copied; kept heads' Q rows, K/V group rows (a copy per kept head) and
 * o_proj columns from the teacher; SSM heads initialised by o->init:
 *   mohawk     dm2_init_mohawk (per layer stream rng_split(seed, layer));
 *              routed: no out_proj (the teacher's o_proj is shared)
 *   attention  N = hd and one B/C group per SSM head: x ← V rows of the
 *              head's KV group, B ← its K rows, C ← its Q rows (biases are
 *              not carried: in_proj has none), D = 0; the z and A_log rows
 *              as mohawk, conv identity; parallel: out_proj ← o_proj
 *   svd        N ≤ hd, one group per head: B, C from the best rank-N
 *              factorisation of Wq_hᵀ·Wk_g (ra_lowrank_bilinear); x, D, rest
 *              as attention
 * Parallel: the learned adapter starts as the identity with zero bias.
 * The student's content_id is empty until it is written.
 * EX_USAGE for options the teacher cannot take (naming the flag),
 * EX_DATAERR for a teacher that is already a hybrid. */
int ra_graft(const ra_model *teacher, const ra_plan *plan, const ra_graft_opts *o, ra_model **student,
             ra_error *err);

/* Best rank-N factorisation of the bilinear form M = Wqᵀ·Wk (D×D, rank ≤
 * hd) of Wq, Wk [hd, D]: C [N, D] and B [N, D] with Cᵀ·B the truncated SVD
 * of M (C = √S·Uᵀ, B = √S·Vᵀ, singular values descending), so that
 * (C·x)·(B·y) ≈ (Wq·x)·(Wk·y).  Computed in float64 through the QR of Wqᵀ
 * and Wkᵀ and the SVD of the hd×hd core (LAPACK in OpenBLAS).  sv (may be
 * NULL) receives all min(hd, D) singular values.  N ≤ min(hd, D). */
int ra_lowrank_bilinear(float *C, float *B, double *sv, const float *Wq, const float *Wk, int hd, int D, int N,
                        ra_error *err);

#endif
