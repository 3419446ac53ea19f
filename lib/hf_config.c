/* Hugging Face config.json for Llama-3.x and Qwen2.x decoders.
 *
 * Defaults follow transformers' LlamaConfig / Qwen2Config.  Everything the
 * forward pass does not implement (other rope types, MLP biases, sliding
 * windows, other activations) is refused here, naming the field, so a model
 * never runs with silently different math. */
#include "hf_config.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define HF_MAX_DIM (1 << 24)         /* widths, heads, vocabulary, layers */
#define HF_MAX_POSITIONS (1 << 30)   /* context lengths */
#define HF_MAX_CONFIG_BYTES (16u << 20)

/* Optional integer field: absent or null leaves *out unchanged.  Present
 * values must be integers in [lo, hi]. */
static int get_int(const json_t *root, const char *key, const char *name, int required, long long lo, long long hi,
                   int *out, ra_error *err) {
    const json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (required) return ra_fail(err, EX_DATAERR, "%s: %s is missing", name, key);
        return 0;
    }
    if (!json_is_integer(v)) return ra_fail(err, EX_DATAERR, "%s: %s: expected an integer", name, key);
    long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return ra_fail(err, EX_DATAERR, "%s: %s: %lld is out of range [%lld, %lld]", name, key, x, lo, hi);
    *out = (int)x;
    return 0;
}

/* Optional positive finite number (integer or real in the JSON). */
static int get_positive(const json_t *root, const char *key, const char *name, int required, double *out,
                        ra_error *err) {
    const json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (required) return ra_fail(err, EX_DATAERR, "%s: %s is missing", name, key);
        return 0;
    }
    if (!json_is_number(v)) return ra_fail(err, EX_DATAERR, "%s: %s: expected a number", name, key);
    double x = json_number_value(v);
    if (!isfinite(x) || !(x > 0)) return ra_fail(err, EX_DATAERR, "%s: %s: %g must be positive", name, key, x);
    *out = x;
    return 0;
}

static int get_bool(const json_t *root, const char *key, const char *name, int *out, ra_error *err) {
    const json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return ra_fail(err, EX_DATAERR, "%s: %s: expected true or false", name, key);
    *out = json_is_true(v);
    return 0;
}

static ra_dtype parse_torch_dtype(const json_t *root) {
    const json_t *v = json_object_get(root, "torch_dtype");
    if (!json_is_string(v)) v = json_object_get(root, "dtype"); /* transformers >= 4.56 */
    const char *s = json_string_value(v);
    if (!s) return RA_F32;
    if (!strcmp(s, "bfloat16")) return RA_BF16;
    if (!strcmp(s, "float16") || !strcmp(s, "half")) return RA_F16;
    return RA_F32;
}

/* RoPE settings: rope_parameters (newer transformers) or rope_scaling. */
static int parse_rope(const json_t *root, const char *name, hf_config *c, ra_error *err) {
    const json_t *rp = json_object_get(root, "rope_parameters");
    const json_t *rs = json_object_get(root, "rope_scaling");
    const char *field = "rope_parameters";
    const json_t *r = rp;
    if (!r || json_is_null(r)) {
        r = rs;
        field = "rope_scaling";
    }
    c->rope_theta = 10000.0;
    int rc = get_positive(root, "rope_theta", name, 0, &c->rope_theta, err);
    if (rc) return rc;
    c->rope_type = RA_ROPE_DEFAULT;
    if (!r || json_is_null(r)) return 0;
    if (!json_is_object(r)) return ra_fail(err, EX_DATAERR, "%s: %s: expected an object or null", name, field);
    /* Newer transformers may key RoPE settings by layer type; these models
     * only have full-attention layers. */
    const json_t *full = json_object_get(r, "full_attention");
    if (json_is_object(full)) r = full;
    char where[300];
    snprintf(where, sizeof where, "%s: %s", name, field);
    if (strcmp(field, "rope_parameters") == 0 && (rc = get_positive(r, "rope_theta", where, 0, &c->rope_theta, err)))
        return rc;

    double partial = 1.0;
    if ((rc = get_positive(r, "partial_rotary_factor", where, 0, &partial, err))) return rc;
    if (partial != 1.0)
        return ra_fail(err, EX_DATAERR, "%s: partial_rotary_factor %g is not supported (expected 1)", where, partial);

    const json_t *t = json_object_get(r, "rope_type");
    const char *tkey = "rope_type";
    if (!t || json_is_null(t)) {
        t = json_object_get(r, "type"); /* legacy spelling */
        tkey = "type";
    }
    if (t && !json_is_null(t) && !json_is_string(t))
        return ra_fail(err, EX_DATAERR, "%s: %s.%s: expected a string", name, field, tkey);
    const char *type = json_string_value(t);
    if (!type || strcmp(type, "default") == 0) return 0;
    if (strcmp(type, "llama3") != 0)
        return ra_fail(err, EX_DATAERR, "%s: %s.%s '%s' is not supported (expected \"default\" or \"llama3\")", name,
                       field, tkey, type);
    c->rope_type = RA_ROPE_LLAMA3;
    if ((rc = get_positive(r, "factor", where, 1, &c->rope_factor, err)) ||
        (rc = get_positive(r, "low_freq_factor", where, 1, &c->rope_low_freq_factor, err)) ||
        (rc = get_positive(r, "high_freq_factor", where, 1, &c->rope_high_freq_factor, err)) ||
        (rc = get_int(r, "original_max_position_embeddings", where, 1, 1, HF_MAX_POSITIONS,
                      &c->rope_original_max_position_embeddings, err)))
        return rc;
    /* The llama3 formula divides by (high - low). */
    if (!(c->rope_high_freq_factor > c->rope_low_freq_factor))
        return ra_fail(err, EX_DATAERR, "%s: high_freq_factor %g must exceed low_freq_factor %g", where,
                       c->rope_high_freq_factor, c->rope_low_freq_factor);
    return 0;
}

static int parse_token_ids(const json_t *root, const char *name, hf_config *c, ra_error *err) {
    c->bos_token_id = -1;
    int rc = get_int(root, "bos_token_id", name, 0, 0, INT_MAX, &c->bos_token_id, err);
    if (rc) return rc;
    c->n_eos = 0;
    const json_t *e = json_object_get(root, "eos_token_id");
    if (!e || json_is_null(e)) return 0;
    if (json_is_integer(e)) return get_int(root, "eos_token_id", name, 0, 0, INT_MAX, &c->eos_token_ids[c->n_eos++], err);
    if (!json_is_array(e)) return ra_fail(err, EX_DATAERR, "%s: eos_token_id: expected an integer or a list", name);
    size_t n = json_array_size(e);
    int cap = (int)(sizeof c->eos_token_ids / sizeof c->eos_token_ids[0]);
    if (n > (size_t)cap) return ra_fail(err, EX_DATAERR, "%s: eos_token_id: %zu ids, at most %d supported", name, n, cap);
    for (size_t i = 0; i < n; i++) {
        const json_t *v = json_array_get(e, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT_MAX)
            return ra_fail(err, EX_DATAERR, "%s: eos_token_id[%zu]: expected a non-negative integer", name, i);
        c->eos_token_ids[c->n_eos++] = (int)json_integer_value(v);
    }
    return 0;
}

/* Features of other architectures that this implementation does not compute. */
static int refuse_unsupported(const json_t *root, const char *name, const hf_config *c, ra_error *err) {
    int flag = 0, rc;
    if ((rc = get_bool(root, "mlp_bias", name, &flag, err))) return rc;
    if (flag) return ra_fail(err, EX_DATAERR, "%s: mlp_bias true is not supported", name);
    flag = 0;
    if ((rc = get_bool(root, "use_sliding_window", name, &flag, err))) return rc;
    if (flag) return ra_fail(err, EX_DATAERR, "%s: use_sliding_window true is not supported", name);
    const json_t *lt = json_object_get(root, "layer_types"); /* transformers >= 4.53 */
    if (lt && !json_is_null(lt)) {
        if (!json_is_array(lt)) return ra_fail(err, EX_DATAERR, "%s: layer_types: expected a list", name);
        for (size_t i = 0; i < json_array_size(lt); i++) {
            const char *ty = json_string_value(json_array_get(lt, i));
            if (!ty || strcmp(ty, "full_attention") != 0)
                return ra_fail(err, EX_DATAERR, "%s: layer_types[%zu] '%s' is not supported (expected \"full_attention\")",
                               name, i, ty ? ty : "(not a string)");
        }
    }
    const json_t *act = json_object_get(root, "hidden_act");
    if (act && !json_is_null(act) && (!json_is_string(act) || strcmp(json_string_value(act), "silu") != 0))
        return ra_fail(err, EX_DATAERR, "%s: hidden_act %s%s%s is not supported (expected \"silu\")", name,
                       json_is_string(act) ? "'" : "", json_is_string(act) ? json_string_value(act) : "(not a string)",
                       json_is_string(act) ? "'" : "");
    (void)c;
    return 0;
}

int hf_config_from_json(const json_t *root, const char *name, hf_config *c, ra_error *err) {
    memset(c, 0, sizeof *c);
    if (!json_is_object(root)) return ra_fail(err, EX_DATAERR, "%s: expected a JSON object", name);
    const json_t *mt = json_object_get(root, "model_type");
    if (!json_is_string(mt)) return ra_fail(err, EX_DATAERR, "%s: model_type is missing or not a string", name);
    const char *type = json_string_value(mt);
    int llama = strcmp(type, "llama") == 0, qwen2 = strcmp(type, "qwen2") == 0;
    if (!llama && !qwen2)
        return ra_fail(err, EX_DATAERR, "%s: model_type '%s' is not supported (expected \"llama\" or \"qwen2\")", name,
                       type);
    snprintf(c->model_type, sizeof c->model_type, "%s", type);

    int rc;
    c->num_kv_heads = 0;
    c->head_dim = 0;
    c->max_position_embeddings = llama ? 2048 : 32768;
    if ((rc = get_int(root, "hidden_size", name, 1, 1, HF_MAX_DIM, &c->hidden_size, err)) ||
        (rc = get_int(root, "intermediate_size", name, 1, 1, HF_MAX_DIM, &c->intermediate_size, err)) ||
        (rc = get_int(root, "num_hidden_layers", name, 1, 1, HF_MAX_DIM, &c->num_layers, err)) ||
        (rc = get_int(root, "num_attention_heads", name, 1, 1, HF_MAX_DIM, &c->num_heads, err)) ||
        (rc = get_int(root, "num_key_value_heads", name, 0, 1, HF_MAX_DIM, &c->num_kv_heads, err)) ||
        (rc = get_int(root, "head_dim", name, 0, 1, HF_MAX_DIM, &c->head_dim, err)) ||
        (rc = get_int(root, "vocab_size", name, 1, 1, HF_MAX_DIM, &c->vocab_size, err)) ||
        (rc = get_int(root, "max_position_embeddings", name, 0, 1, HF_MAX_POSITIONS, &c->max_position_embeddings,
                      err)))
        return rc;
    if (!c->num_kv_heads) c->num_kv_heads = c->num_heads;
    if (c->num_heads % c->num_kv_heads != 0)
        return ra_fail(err, EX_DATAERR, "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", name,
                       c->num_heads, c->num_kv_heads);
    if (!c->head_dim) {
        if (c->hidden_size % c->num_heads != 0)
            return ra_fail(err, EX_DATAERR, "%s: hidden_size %d is not a multiple of num_attention_heads %d (and no head_dim)",
                           name, c->hidden_size, c->num_heads);
        c->head_dim = c->hidden_size / c->num_heads;
    }
    if (c->head_dim % 2 != 0) return ra_fail(err, EX_DATAERR, "%s: head_dim %d must be even for RoPE", name, c->head_dim);
    if ((long long)c->num_heads * c->head_dim > HF_MAX_DIM)
        return ra_fail(err, EX_DATAERR, "%s: num_attention_heads × head_dim = %lld is too large", name,
                       (long long)c->num_heads * c->head_dim);

    c->rms_norm_eps = 1e-6;
    if ((rc = get_positive(root, "rms_norm_eps", name, 0, &c->rms_norm_eps, err))) return rc;
    if ((rc = parse_rope(root, name, c, err))) return rc;

    c->tie_word_embeddings = 0;
    if ((rc = get_bool(root, "tie_word_embeddings", name, &c->tie_word_embeddings, err))) return rc;
    if (qwen2) {
        c->qkv_bias = 1; /* Qwen2 attention always has q/k/v biases and no o bias */
        c->o_bias = 0;
    } else {
        int ab = 0;
        if ((rc = get_bool(root, "attention_bias", name, &ab, err))) return rc;
        c->qkv_bias = c->o_bias = ab;
    }
    if ((rc = refuse_unsupported(root, name, c, err))) return rc;
    if ((rc = parse_token_ids(root, name, c, err))) return rc;
    c->torch_dtype = parse_torch_dtype(root);
    return 0;
}

int hf_config_parse(const char *text, size_t len, const char *name, hf_config *c, ra_error *err) {
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        memset(c, 0, sizeof *c);
        return ra_fail(err, EX_DATAERR, "%s: not valid JSON: %s (line %d, column %d)", name, jerr.text, jerr.line,
                       jerr.column);
    }
    int rc = hf_config_from_json(root, name, c, err);
    json_decref(root);
    return rc;
}

int hf_config_load(const char *path, hf_config *c, ra_error *err) {
    struct stat sb;
    char *file = NULL;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        size_t n = strlen(path) + 16;
        file = xmalloc(n);
        snprintf(file, n, "%s/config.json", path);
    } else {
        file = xstrdup(path);
    }
    FILE *f = fopen(file, "rb");
    if (!f) {
        int e = errno;
        int rc = ra_fail(err, e == ENOENT ? EX_NOINPUT : EX_IOERR, "%s: %s", file, strerror(e));
        free(file);
        return rc;
    }
    char *buf = xmalloc(HF_MAX_CONFIG_BYTES + 1);
    size_t n = fread(buf, 1, HF_MAX_CONFIG_BYTES + 1, f);
    int rd_err = ferror(f);
    fclose(f);
    int rc;
    if (rd_err) rc = ra_fail(err, EX_IOERR, "%s: read failed", file);
    else if (n > HF_MAX_CONFIG_BYTES) rc = ra_fail(err, EX_DATAERR, "%s: larger than %u bytes", file, HF_MAX_CONFIG_BYTES);
    else rc = hf_config_parse(buf, n, file, c, err);
    free(buf);
    free(file);
    return rc;
}

json_t *hf_config_to_json(const hf_config *c) {
    int llama = strcmp(c->model_type, "qwen2") != 0;
    json_t *o = json_object();
    json_object_set_new(o, "architectures",
                        json_pack("[s]", llama ? "LlamaForCausalLM" : "Qwen2ForCausalLM"));
    json_object_set_new(o, "model_type", json_string(c->model_type));
    json_object_set_new(o, "hidden_size", json_integer(c->hidden_size));
    json_object_set_new(o, "intermediate_size", json_integer(c->intermediate_size));
    json_object_set_new(o, "num_hidden_layers", json_integer(c->num_layers));
    json_object_set_new(o, "num_attention_heads", json_integer(c->num_heads));
    json_object_set_new(o, "num_key_value_heads", json_integer(c->num_kv_heads));
    json_object_set_new(o, "head_dim", json_integer(c->head_dim));
    json_object_set_new(o, "vocab_size", json_integer(c->vocab_size));
    json_object_set_new(o, "max_position_embeddings", json_integer(c->max_position_embeddings));
    json_object_set_new(o, "hidden_act", json_string("silu"));
    json_object_set_new(o, "rms_norm_eps", json_real(c->rms_norm_eps));
    json_object_set_new(o, "rope_theta", json_real(c->rope_theta));
    if (c->rope_type == RA_ROPE_LLAMA3) {
        json_t *r = json_object();
        json_object_set_new(r, "rope_type", json_string("llama3"));
        json_object_set_new(r, "factor", json_real(c->rope_factor));
        json_object_set_new(r, "low_freq_factor", json_real(c->rope_low_freq_factor));
        json_object_set_new(r, "high_freq_factor", json_real(c->rope_high_freq_factor));
        json_object_set_new(r, "original_max_position_embeddings",
                            json_integer(c->rope_original_max_position_embeddings));
        json_object_set_new(o, "rope_scaling", r);
    } else {
        json_object_set_new(o, "rope_scaling", json_null());
    }
    json_object_set_new(o, "tie_word_embeddings", json_boolean(c->tie_word_embeddings));
    if (llama) {
        json_object_set_new(o, "attention_bias", json_boolean(c->qkv_bias));
        json_object_set_new(o, "mlp_bias", json_false());
    } else {
        json_object_set_new(o, "use_sliding_window", json_false());
    }
    if (c->bos_token_id >= 0) json_object_set_new(o, "bos_token_id", json_integer(c->bos_token_id));
    if (c->n_eos == 1) {
        json_object_set_new(o, "eos_token_id", json_integer(c->eos_token_ids[0]));
    } else if (c->n_eos > 1) {
        json_t *a = json_array();
        for (int i = 0; i < c->n_eos; i++) json_array_append_new(a, json_integer(c->eos_token_ids[i]));
        json_object_set_new(o, "eos_token_id", a);
    }
    const char *td = c->torch_dtype == RA_BF16 ? "bfloat16" : c->torch_dtype == RA_F16 ? "float16" : "float32";
    json_object_set_new(o, "torch_dtype", json_string(td));
    return o;
}
