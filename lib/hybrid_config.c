/* The hybrid configuration: names, validation, JSON (meta.hybrid), per-layer
 * shapes and decode-state sizes (see hybrid.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hybrid.h"

static const char *layout_names[] = {"routed", "parallel"};
static const char *adapter_names[] = {"none", "static", "linear"};
static const char *init_names[] = {"mohawk", "attention", "svd"};

static int lookup(const char *s, const char *const *names, int n) {
    for (int i = 0; i < n; i++)
        if (strcmp(s, names[i]) == 0) return i;
    return -1;
}

const char *ra_layout_name(ra_layout l) { return l == RA_LAYOUT_PARALLEL ? "parallel" : "routed"; }
const char *ra_adapter_name(ra_adapter_kind a) { return adapter_names[a <= RA_ADAPTER_LINEAR ? a : 0]; }
const char *ra_ssm_init_name(ra_ssm_init i) { return init_names[i <= RA_INIT_SVD ? i : 0]; }

int ra_layout_parse(const char *s, ra_layout *out) {
    int i = lookup(s, layout_names, 2);
    if (i < 0) return -1;
    *out = (ra_layout)i;
    return 0;
}
int ra_adapter_parse(const char *s, ra_adapter_kind *out) {
    int i = lookup(s, adapter_names, 3);
    if (i < 0) return -1;
    *out = (ra_adapter_kind)i;
    return 0;
}
int ra_ssm_init_parse(const char *s, ra_ssm_init *out) {
    int i = lookup(s, init_names, 3);
    if (i < 0) return -1;
    *out = (ra_ssm_init)i;
    return 0;
}

ra_hybrid_layer_shape ra_hybrid_layer(const ra_hybrid_config *h, const hf_config *c, int layer) {
    ra_hybrid_layer_shape s;
    memset(&s, 0, sizeof s);
    for (int i = 0; i < h->heads; i++) s.k += h->keep[(size_t)layer * h->heads + i] != 0;
    s.Hs = h->layout == RA_LAYOUT_PARALLEL ? c->num_heads : c->num_heads - s.k;
    s.ssm.d_model = c->hidden_size;
    s.ssm.n_heads = s.Hs;
    s.ssm.head_dim = h->ssm_head_dim;
    s.ssm.d_state = h->d_state;
    s.ssm.n_groups = h->qk_groups ? h->qk_groups : s.Hs;
    s.ssm.chunk = h->chunk;
    s.ssm.has_out_proj = h->layout == RA_LAYOUT_PARALLEL;
    return s;
}

int ra_hybrid_check(const ra_hybrid_config *h, const hf_config *c, const char *where, ra_error *err) {
    if (h->layout == RA_LAYOUT_ROUTED && h->adapter == RA_ADAPTER_LINEAR)
        return ra_fail(err, EX_DATAERR, "%s: adapter 'linear' belongs to the parallel layout; routed takes 'static' or 'none'",
                       where);
    if (h->layout == RA_LAYOUT_PARALLEL && h->adapter != RA_ADAPTER_LINEAR)
        return ra_fail(err, EX_DATAERR, "%s: the parallel layout has the learned adapter ('linear'), got '%s'", where,
                       ra_adapter_name(h->adapter));
    if (h->d_state < 1 || h->d_state > 65536)
        return ra_fail(err, EX_DATAERR, "%s: d_state = %d, expected 1..65536", where, h->d_state);
    if (h->conv_kernel != RA_HYBRID_CONV_KERNEL)
        return ra_fail(err, EX_DATAERR, "%s: conv_kernel = %d, only %d is supported", where, h->conv_kernel,
                       RA_HYBRID_CONV_KERNEL);
    if (h->chunk < 1 || h->chunk > 65536)
        return ra_fail(err, EX_DATAERR, "%s: chunk = %d, expected 1..65536", where, h->chunk);
    if (h->ssm_head_dim != c->head_dim)
        return ra_fail(err, EX_DATAERR, "%s: ssm_head_dim = %d, expected the model's head_dim %d", where,
                       h->ssm_head_dim, c->head_dim);
    if (h->layers != c->num_layers || h->heads != c->num_heads)
        return ra_fail(err, EX_DATAERR, "%s: kept_heads is for %d layers x %d heads, the config has %d x %d", where,
                       h->layers, h->heads, c->num_layers, c->num_heads);
    if (h->qk_groups < 0) return ra_fail(err, EX_DATAERR, "%s: qk_groups = %d, expected >= 0", where, h->qk_groups);
    for (int l = 0; l < c->num_layers; l++) {
        ra_hybrid_layer_shape s = ra_hybrid_layer(h, c, l);
        if (s.Hs && h->qk_groups && s.Hs % h->qk_groups)
            return ra_fail(err, EX_DATAERR, "%s: qk_groups = %d does not divide layer %d's %d SSM heads", where,
                           h->qk_groups, l, s.Hs);
        int rc = s.Hs ? dm2_check_config(&s.ssm, err) : 0;
        if (rc) {
            ra_error_prefix(err, "%s: layer %d", where, l);
            return rc;
        }
    }
    return 0;
}

static int get_int(const json_t *j, const char *key, int required, int dflt, const char *where, int *out,
                   ra_error *err) {
    const json_t *v = json_object_get(j, key);
    if (!v) {
        if (required) return ra_fail(err, EX_DATAERR, "%s: missing '%s'", where, key);
        *out = dflt;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < -(1LL << 30) || json_integer_value(v) > (1LL << 30))
        return ra_fail(err, EX_DATAERR, "%s: '%s' must be an integer", where, key);
    *out = (int)json_integer_value(v);
    return 0;
}

static int get_name(const json_t *j, const char *key, int required, const char *where, const char **out,
                    ra_error *err) {
    const json_t *v = json_object_get(j, key);
    *out = NULL;
    if (!v) return required ? ra_fail(err, EX_DATAERR, "%s: missing '%s'", where, key) : 0;
    if (!json_is_string(v)) return ra_fail(err, EX_DATAERR, "%s: '%s' must be a string", where, key);
    *out = json_string_value(v);
    return 0;
}

static int get_id(const json_t *j, const char *key, const char *where, char *out, ra_error *err) {
    const char *s;
    int rc = get_name(j, key, 0, where, &s, err);
    if (rc) return rc;
    out[0] = 0;
    if (!s) return 0;
    if (strlen(s) != RA_CONTENT_ID_LEN || strspn(s, "0123456789abcdef") != RA_CONTENT_ID_LEN)
        return ra_fail(err, EX_DATAERR, "%s: '%s' must be a content id (32 lower-case hex digits)", where, key);
    memcpy(out, s, RA_CONTENT_ID_LEN + 1);
    return 0;
}

static int parse_kept(const json_t *j, const hf_config *c, const char *where, ra_hybrid_config *h, ra_error *err) {
    const json_t *kh = json_object_get(j, "kept_heads");
    if (!json_is_array(kh)) return ra_fail(err, EX_DATAERR, "%s: 'kept_heads' must be an array (one per layer)", where);
    if ((int)json_array_size(kh) != c->num_layers)
        return ra_fail(err, EX_DATAERR, "%s: 'kept_heads' has %zu layers, the config has %d", where,
                       json_array_size(kh), c->num_layers);
    h->layers = c->num_layers;
    h->heads = c->num_heads;
    h->keep = xcalloc((size_t)h->layers * h->heads, 1);
    for (int l = 0; l < h->layers; l++) {
        const json_t *row = json_array_get(kh, (size_t)l);
        if (!json_is_array(row)) return ra_fail(err, EX_DATAERR, "%s: kept_heads[%d] must be an array", where, l);
        int prev = -1;
        for (size_t i = 0; i < json_array_size(row); i++) {
            const json_t *v = json_array_get(row, i);
            json_int_t hh = json_is_integer(v) ? json_integer_value(v) : -1;
            if (hh < 0 || hh >= c->num_heads || hh <= prev)
                return ra_fail(err, EX_DATAERR, "%s: kept_heads[%d][%zu]: expected ascending heads in 0..%d", where, l,
                               i, c->num_heads - 1);
            h->keep[(size_t)l * h->heads + hh] = 1;
            prev = (int)hh;
        }
    }
    return 0;
}

static int from_json(const json_t *j, const hf_config *c, const char *where, ra_hybrid_config *h, ra_error *err) {
    if (!json_is_object(j)) return ra_fail(err, EX_DATAERR, "%s: expected an object", where);
    const char *layout, *adapter, *init;
    int rc;
    if ((rc = get_name(j, "layout", 1, where, &layout, err))) return rc;
    if (ra_layout_parse(layout, &h->layout))
        return ra_fail(err, EX_DATAERR, "%s: layout '%s', expected routed or parallel", where, layout);
    if ((rc = get_name(j, "adapter", 1, where, &adapter, err))) return rc;
    if (ra_adapter_parse(adapter, &h->adapter))
        return ra_fail(err, EX_DATAERR, "%s: adapter '%s', expected static, none or linear", where, adapter);
    if ((rc = get_name(j, "init", 0, where, &init, err))) return rc;
    if (init && ra_ssm_init_parse(init, &h->init))
        return ra_fail(err, EX_DATAERR, "%s: init '%s', expected mohawk, attention or svd", where, init);
    if ((rc = get_int(j, "d_state", 1, 0, where, &h->d_state, err)) ||
        (rc = get_int(j, "qk_groups", 0, 0, where, &h->qk_groups, err)) ||
        (rc = get_int(j, "conv_kernel", 0, RA_HYBRID_CONV_KERNEL, where, &h->conv_kernel, err)) ||
        (rc = get_int(j, "chunk", 0, RA_HYBRID_CHUNK, where, &h->chunk, err)) ||
        (rc = get_int(j, "ssm_head_dim", 0, c->head_dim, where, &h->ssm_head_dim, err)))
        return rc;
    const json_t *seed = json_object_get(j, "seed");
    if (seed && !(json_is_integer(seed) && json_integer_value(seed) >= 0))
        return ra_fail(err, EX_DATAERR, "%s: 'seed' must be a non-negative integer", where);
    h->seed = seed ? (uint64_t)json_integer_value(seed) : 0;
    if ((rc = get_id(j, "plan", where, h->plan_id, err)) || (rc = get_id(j, "teacher", where, h->teacher_id, err)))
        return rc;
    if ((rc = parse_kept(j, c, where, h, err))) return rc;
    return ra_hybrid_check(h, c, where, err);
}

int ra_hybrid_from_json(const json_t *j, const hf_config *c, const char *where, ra_hybrid_config *h, ra_error *err) {
    memset(h, 0, sizeof *h);
    int rc = from_json(j, c, where, h, err);
    if (rc) ra_hybrid_free(h);
    return rc;
}

json_t *ra_hybrid_to_json(const ra_hybrid_config *h) {
    json_t *kept = json_array();
    for (int l = 0; l < h->layers; l++) {
        json_t *row = json_array();
        for (int i = 0; i < h->heads; i++)
            if (h->keep[(size_t)l * h->heads + i]) json_array_append_new(row, json_integer(i));
        json_array_append_new(kept, row);
    }
    json_t *j = json_pack("{s:s, s:s, s:i, s:i, s:i, s:i, s:i, s:o, s:s, s:I}", "layout", ra_layout_name(h->layout),
                          "adapter", ra_adapter_name(h->adapter), "d_state", h->d_state, "qk_groups", h->qk_groups,
                          "conv_kernel", h->conv_kernel, "chunk", h->chunk, "ssm_head_dim", h->ssm_head_dim,
                          "kept_heads", kept, "init", ra_ssm_init_name(h->init), "seed", (json_int_t)h->seed);
    if (h->plan_id[0]) json_object_set_new(j, "plan", json_string(h->plan_id));
    if (h->teacher_id[0]) json_object_set_new(j, "teacher", json_string(h->teacher_id));
    return j;
}

void ra_hybrid_copy(ra_hybrid_config *dst, const ra_hybrid_config *src) {
    *dst = *src;
    dst->keep = xmalloc((size_t)src->layers * src->heads + 1);
    memcpy(dst->keep, src->keep, (size_t)src->layers * src->heads);
}

void ra_hybrid_free(ra_hybrid_config *h) {
    free(h->keep);
    h->keep = NULL;
}

/* ------------------------------------------------------------- sizes */

ra_state_sizes ra_model_state_sizes(const ra_model *m) {
    const hf_config *c = &m->cfg;
    ra_state_sizes s;
    memset(&s, 0, sizeof s);
    int64_t hd = c->head_dim;
    if (!m->hybrid) {
        s.kv_values_per_token = s.kv_values_shared = (int64_t)c->num_layers * c->num_kv_heads * 2 * hd;
        return s;
    }
    int group = c->num_heads / c->num_kv_heads;
    for (int l = 0; l < c->num_layers; l++) {
        const ra_layer *L = &m->layers[l];
        s.kv_values_per_token += (int64_t)L->n_attn_heads * 2 * hd;
        for (int i = 0; i < L->n_attn_heads; i++) /* a new KV group: the first kept head of its group */
            if (i == 0 || L->attn_heads[i] / group != L->attn_heads[i - 1] / group) s.kv_values_shared += 2 * hd;
        if (L->n_ssm_heads) {
            const dm2_config *sc = &L->ssm_cfg;
            s.ssm_state_values += (int64_t)sc->n_heads * sc->head_dim * sc->d_state;
            s.conv_state_values += (int64_t)dm2_conv_dim(sc) * DM2_CONV_K;
        }
    }
    return s;
}

int64_t ra_model_param_count(const ra_model *m) {
    ra_model_tensor *t;
    int n = ra_model_tensor_list((ra_model *)m, &t);
    int64_t total = 0;
    for (int i = 0; i < n; i++) total += t[i].shape[0] * (t[i].ndim == 2 ? t[i].shape[1] : 1);
    free(t);
    return total;
}
