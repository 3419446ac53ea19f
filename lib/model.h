/* A decoder model in host memory: the Hugging Face config, every weight as an
 * fp32 array (converted from bf16/f16/f32 at load), and the content id of the
 * artifact it came from.
 *
 * Sources (ra_model_load picks by what the path is):
 *  - a Hugging Face directory: config.json + model.safetensors or
 *    model.safetensors.index.json with its shards;
 *  - a `model` ra stream (file or "-" for stdin): meta.config is the
 *    config.json object, tensors carry the Hugging Face names.
 *
 * Content id (32 lower-case hex characters, the XXH3-128 digest in canonical
 * big-endian byte order, like every ra content id):
 *  - model ra stream: the stream's own digest (its trailer's XXH3-128);
 *  - Hugging Face directory: XXH3-128 over, in this order,
 *      the bytes of config.json, then for every tensor of the checkpoint
 *      (all of them, ignored ones too) in ascending strcmp order of names:
 *        name bytes, one NUL byte,
 *        safetensors dtype name ("BF16", "F32", ...), one NUL byte,
 *        ndim as uint32 little-endian, each dim as int64 little-endian,
 *        the tensor's data bytes as stored.
 *    So the id changes with any weight, shape, dtype or config byte, and not
 *    with how the checkpoint is split into shards.
 *
 * Code: lib/model.c (the struct, allocation, the weight list) and
 * lib/model_load.c (loading, validation, identity, writing).
 *
 * Tensor names are those of transformers' LlamaForCausalLM /
 * Qwen2ForCausalLM: model.embed_tokens.weight, model.norm.weight,
 * lm_head.weight (absent when tie_word_embeddings: the embedding is used),
 * model.layers.<i>.{input_layernorm,post_attention_layernorm}.weight,
 * model.layers.<i>.self_attn.{q,k,v,o}_proj.{weight,bias} (biases per the
 * config), model.layers.<i>.mlp.{gate,up,down}_proj.weight.  Every expected
 * tensor must be present with exactly its shape; `rotary_emb.inv_freq`
 * buffers of old checkpoints are ignored; any other extra tensor is ignored
 * with a warning (ra_model.warning). */
#ifndef RA_MODEL_H
#define RA_MODEL_H

#include <jansson.h>
#include <stdint.h>

#include "dm2.h"
#include "dtype.h"
#include "error.h"
#include "hf_config.h"

struct ra_hybrid_config; /* lib/hybrid.h */

#define RA_MODEL_ID_LEN 32

/* One decoder layer.  The mixer's attention part is described by the set of
 * query-head slots it runs (all H of them for a teacher); a hybrid student
 * (lib/hybrid.h) adds its SSM heads, so the teacher layout stays as it is.
 * In a hybrid layer the attention weights hold only the k kept heads, in
 * attn_heads order: wq/wk/wv [k·hd, D] (wk/wv: a copy of each kept head's KV
 * group rows), NULL when k = 0; wo is the teacher's whole o_proj [D, H·hd] in
 * the routed layout, the kept heads' columns [D, k·hd] in the parallel one. */
typedef struct ra_layer {
    int n_attn_heads; /* query heads run as softmax attention */
    int *attn_heads;  /* their slots in 0..H-1, ascending */

    float *input_norm;        /* input_layernorm.weight [D] */
    float *wq, *wk, *wv, *wo; /* q [H*hd, D], k/v [Hkv*hd, D], o [D, H*hd] */
    float *bq, *bk, *bv, *bo; /* biases or NULL (Qwen2: q/k/v; Llama attention_bias: all four) */

    float *post_norm;         /* post_attention_layernorm.weight [D] */
    float *w_gate, *w_up;     /* [I, D] */
    float *w_down;            /* [D, I] */

    /* Hybrid students only (zero in a teacher). */
    int n_ssm_heads;          /* SSM heads: routed H − k, parallel H (0 = none) */
    int *ssm_heads;           /* routed: their slots, ascending; NULL otherwise */
    dm2_config ssm_cfg;
    dm2_params ssm;           /* arrays allocated one by one (ssm.memory NULL) */
    float *adapter_w, *adapter_b; /* parallel with k > 0: learned adapter [D, D], [D] */
} ra_layer;

typedef struct ra_model {
    hf_config cfg;
    float *embed;      /* [V, D] */
    float *final_norm; /* [D] */
    float *lm_head;    /* [V, D]; the same pointer as embed when tied */
    ra_layer *layers;  /* [cfg.num_layers] */
    char content_id[RA_MODEL_ID_LEN + 1];
    char source[512];  /* path it was loaded from, for messages */
    char warning[512]; /* non-fatal findings of the loader ("" if none) */
    struct ra_hybrid_config *hybrid; /* NULL for a teacher (owned) */
    struct ra_model_view *view;      /* NULL unless ra_model_load_view left the weights in the checkpoint */
} ra_model;

/* One weight of the model as the loaders and writers see it. */
typedef struct ra_model_tensor {
    char name[96];
    int ndim;
    int64_t shape[2];
    float **data; /* the slot in the model that holds it */
} ra_model_tensor;

/* The weights a model of this config has, in a fixed order (embedding,
 * layers, final norm, LM head unless tied); a hybrid's layers list their
 * kept heads' attention weights, then mixer.* and attn_adapter.* tensors
 * (formats/model.md).  *out is malloc'ed; returns the
 * count.  Slots point into m, which must outlive the list. */
int ra_model_tensor_list(ra_model *m, ra_model_tensor **out);

/* Check a config for what the forward pass relies on (positive sizes, H a
 * multiple of Hkv, even head_dim, sizes that fit in memory indexes).
 * EX_DATAERR naming the field. */
int ra_model_check_config(const hf_config *c, const char *name, ra_error *err);

/* A model with this config and every weight allocated (uninitialised), all
 * heads attention heads.  For tests and for tools that build models. */
int ra_model_alloc(const hf_config *c, ra_model **out, ra_error *err);

/* The struct and its layers (all heads attention heads) with every weight
 * NULL, for loaders to fill.  c must have passed ra_model_check_config. */
ra_model *ra_model_shell(const hf_config *c);

/* The struct of a hybrid student (lib/hybrid.h): layers shaped by h (which
 * must have passed ra_hybrid_check against c and is copied), weights NULL. */
ra_model *ra_model_shell_hybrid(const hf_config *c, const struct ra_hybrid_config *h);
/* Allocate every weight of a shell (uninitialised), tie the LM head. */
void ra_model_alloc_weights(ra_model *m);

/* Load from a Hugging Face directory or a model ra stream ("-" = stdin).
 * A stream with meta.hybrid loads as a hybrid student.
 * Errors: EX_NOINPUT (path, config.json or weights missing), EX_DATAERR
 * (bad config, missing tensor, wrong shape, non-float dtype, not a model
 * stream), EX_IOERR. */
int ra_model_load(const char *path, ra_model **out, ra_error *err);
int ra_model_load_hf(const char *dir, ra_model **out, ra_error *err);
int ra_model_load_stream(const char *path, ra_model **out, ra_error *err);

/* Write m as a model ra stream (meta.config = hf_config_to_json, meta.hybrid
 * for a hybrid, tensors by name in ra_model_tensor_list order, stored as
 * dtype bf16/f16/f32).
 * provenance may be NULL.  content_id (may be NULL) receives the stream id. */
int ra_model_write_stream(const ra_model *m, const char *path, ra_dtype dtype, const json_t *provenance,
                          char *content_id, ra_error *err);

/* The same with only the tensors for which keep(name, arg) returns non-zero
 * (keep NULL: all), e.g. the per-layer parts of MOHAWK stage 2, which
 * ra-merge overlays on the full model (the meta is the whole model's). */
int ra_model_write_stream_subset(const ra_model *m, const char *path, ra_dtype dtype, const json_t *provenance,
                                 int (*keep)(const char *name, void *arg), void *arg, char *content_id,
                                 ra_error *err);

/* A model whose weights stay where the checkpoint holds them, for tools
 * that only send them to a GPU (ra-probe on CUDA): ra_model_load_view of a
 * Hugging Face directory validates exactly as ra_model_load_hf, but every
 * weight pointer of the model stays NULL and m->view lists, per weight of
 * ra_model_tensor_list, its slot and its bytes in the checkpoint's memory
 * map in the stored dtype (no host fp32 copy; cuda_model_upload reads them
 * there, bf16 bytes as they are).  Its content_id is "" until
 * ra_model_view_content_id computes it (XXH3 over every weight byte: a
 * caller may run it on a thread of its own while the GPU works; nothing
 * else may write the model meanwhile).  A model stream, "-" or a hybrid
 * student loads as ra_model_load does (view NULL, content id set).
 * ra_model_free unmaps. */
typedef struct ra_model_view_entry {
    float **slot;     /* the weight's slot in the model (left NULL) */
    ra_dtype dtype;   /* as stored: bf16, f16 or f32 */
    const void *data; /* in the memory map; not aligned in general */
    int64_t numel;
} ra_model_view_entry;
typedef struct ra_model_view {
    int n;
    ra_model_view_entry *e;
    void *priv;                              /* the loader's (the open checkpoint) */
    void (*close)(struct ra_model_view *v);  /* frees it all; ra_model_free calls it */
} ra_model_view;
int ra_model_load_view(const char *path, ra_model **out, ra_error *err);
void ra_model_view_content_id(ra_model *m);
/* Elements off .. off+n-1 of a view entry as bf16 into dst (bf16 bytes
 * copied as they are, f16/f32 rounded to nearest even like
 * ra_convert_from_f32), split over every core. */
void ra_model_view_to_bf16(uint16_t *dst, const ra_model_view_entry *e, size_t off, size_t n);

void ra_model_free(ra_model *m);

#endif
