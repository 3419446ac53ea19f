/* Hugging Face config.json for the Llama-3.x / Qwen2.x decoder family. */
#ifndef RA_HF_CONFIG_H
#define RA_HF_CONFIG_H

#include <jansson.h>

#include "dtype.h"
#include "error.h"

typedef enum { RA_ROPE_DEFAULT = 0, RA_ROPE_LLAMA3 = 1 } ra_rope_type;

typedef struct hf_config {
    char model_type[32]; /* "llama" or "qwen2" */
    int hidden_size;
    int intermediate_size;
    int num_layers;          /* num_hidden_layers */
    int num_heads;           /* num_attention_heads */
    int num_kv_heads;        /* num_key_value_heads, default num_heads */
    int head_dim;            /* default hidden_size / num_heads */
    int vocab_size;
    int max_position_embeddings;
    double rms_norm_eps;
    double rope_theta;
    ra_rope_type rope_type;
    double rope_factor;          /* llama3 only */
    double rope_low_freq_factor; /* llama3 only */
    double rope_high_freq_factor;
    int rope_original_max_position_embeddings;
    int tie_word_embeddings;
    int qkv_bias;   /* Qwen2 always; Llama when attention_bias */
    int o_bias;     /* Llama attention_bias */
    int bos_token_id; /* -1 when absent */
    int n_eos;
    int eos_token_ids[8];
    ra_dtype torch_dtype; /* declared storage dtype (informational) */
} hf_config;

/* Parse config.json text.  Unsupported model_type, rope_type, mlp_bias or
 * sliding windows: EX_DATAERR naming the field.  name is for messages. */
int hf_config_parse(const char *text, size_t len, const char *name, hf_config *c, ra_error *err);
/* Read DIR/config.json or a config file path. */
int hf_config_load(const char *path, hf_config *c, ra_error *err);
/* Parse from a JSON object (e.g. a model stream's meta "config"). */
int hf_config_from_json(const json_t *root, const char *name, hf_config *c, ra_error *err);
/* A config.json-compatible JSON object (new reference). */
json_t *hf_config_to_json(const hf_config *c);

#endif
