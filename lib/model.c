/* The in-memory model: its weight list, allocation, config checks, freeing.
 * Loading and identity live in model_load.c. */
#include "model.h"

#include "hybrid.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void add(ra_model_tensor *t, int *n, float **slot, int64_t d0, int64_t d1, const char *fmt, int layer) {
    ra_model_tensor *e = &t[(*n)++];
    snprintf(e->name, sizeof e->name, fmt, layer);
    e->ndim = d1 ? 2 : 1;
    e->shape[0] = d0;
    e->shape[1] = d1;
    e->data = slot;
}

/* The attention and mixer weights of hybrid layer l (lib/hybrid.h). */
static void add_hybrid_mixer(ra_model_tensor *t, int *n, ra_model *m, int l) {
    const hf_config *c = &m->cfg;
    ra_layer *L = &m->layers[l];
    int64_t D = c->hidden_size, hd = c->head_dim, kd = (int64_t)L->n_attn_heads * hd;
    int parallel = m->hybrid->layout == RA_LAYOUT_PARALLEL;
    if (L->n_attn_heads) {
        add(t, n, &L->wq, kd, D, "model.layers.%d.self_attn.q_proj.weight", l);
        if (c->qkv_bias) add(t, n, &L->bq, kd, 0, "model.layers.%d.self_attn.q_proj.bias", l);
        add(t, n, &L->wk, kd, D, "model.layers.%d.self_attn.k_proj.weight", l);
        if (c->qkv_bias) add(t, n, &L->bk, kd, 0, "model.layers.%d.self_attn.k_proj.bias", l);
        add(t, n, &L->wv, kd, D, "model.layers.%d.self_attn.v_proj.weight", l);
        if (c->qkv_bias) add(t, n, &L->bv, kd, 0, "model.layers.%d.self_attn.v_proj.bias", l);
    }
    if (!parallel || L->n_attn_heads) {
        add(t, n, &L->wo, D, parallel ? kd : (int64_t)c->num_heads * hd, "model.layers.%d.self_attn.o_proj.weight", l);
        if (c->o_bias) add(t, n, &L->bo, D, 0, "model.layers.%d.self_attn.o_proj.bias", l);
    }
    if (L->n_ssm_heads) {
        const dm2_config *sc = &L->ssm_cfg;
        int64_t inner = dm2_d_inner(sc), conv = dm2_conv_dim(sc);
        add(t, n, &L->ssm.in_proj_w, dm2_in_proj_dim(sc), D, "model.layers.%d.mixer.in_proj.weight", l);
        add(t, n, &L->ssm.conv_w, conv, DM2_CONV_K, "model.layers.%d.mixer.conv1d.weight", l);
        add(t, n, &L->ssm.conv_b, conv, 0, "model.layers.%d.mixer.conv1d.bias", l);
        add(t, n, &L->ssm.D, sc->n_heads, 0, "model.layers.%d.mixer.D", l);
        add(t, n, &L->ssm.z_bias, inner, 0, "model.layers.%d.mixer.z_bias", l);
        if (sc->has_out_proj) add(t, n, &L->ssm.out_proj_w, D, inner, "model.layers.%d.mixer.out_proj.weight", l);
    }
    if (parallel && L->n_attn_heads) {
        add(t, n, &L->adapter_w, D, D, "model.layers.%d.attn_adapter.weight", l);
        add(t, n, &L->adapter_b, D, 0, "model.layers.%d.attn_adapter.bias", l);
    }
}

int ra_model_tensor_list(ra_model *m, ra_model_tensor **out) {
    const hf_config *c = &m->cfg;
    int64_t D = c->hidden_size, I = c->intermediate_size, V = c->vocab_size;
    int64_t qd = (int64_t)c->num_heads * c->head_dim, kvd = (int64_t)c->num_kv_heads * c->head_dim;
    ra_model_tensor *t = xcalloc((size_t)3 + (size_t)c->num_layers * 21, sizeof *t);
    int n = 0;
    add(t, &n, &m->embed, V, D, "model.embed_tokens.weight", 0);
    for (int l = 0; l < c->num_layers; l++) {
        ra_layer *L = &m->layers[l];
        add(t, &n, &L->input_norm, D, 0, "model.layers.%d.input_layernorm.weight", l);
        if (m->hybrid) {
            add_hybrid_mixer(t, &n, m, l);
        } else {
            add(t, &n, &L->wq, qd, D, "model.layers.%d.self_attn.q_proj.weight", l);
            if (c->qkv_bias) add(t, &n, &L->bq, qd, 0, "model.layers.%d.self_attn.q_proj.bias", l);
            add(t, &n, &L->wk, kvd, D, "model.layers.%d.self_attn.k_proj.weight", l);
            if (c->qkv_bias) add(t, &n, &L->bk, kvd, 0, "model.layers.%d.self_attn.k_proj.bias", l);
            add(t, &n, &L->wv, kvd, D, "model.layers.%d.self_attn.v_proj.weight", l);
            if (c->qkv_bias) add(t, &n, &L->bv, kvd, 0, "model.layers.%d.self_attn.v_proj.bias", l);
            add(t, &n, &L->wo, D, qd, "model.layers.%d.self_attn.o_proj.weight", l);
            if (c->o_bias) add(t, &n, &L->bo, D, 0, "model.layers.%d.self_attn.o_proj.bias", l);
        }
        add(t, &n, &L->post_norm, D, 0, "model.layers.%d.post_attention_layernorm.weight", l);
        add(t, &n, &L->w_gate, I, D, "model.layers.%d.mlp.gate_proj.weight", l);
        add(t, &n, &L->w_up, I, D, "model.layers.%d.mlp.up_proj.weight", l);
        add(t, &n, &L->w_down, D, I, "model.layers.%d.mlp.down_proj.weight", l);
    }
    add(t, &n, &m->final_norm, D, 0, "model.norm.weight", 0);
    if (!c->tie_word_embeddings) add(t, &n, &m->lm_head, V, D, "lm_head.weight", 0);
    *out = t;
    return n;
}

int ra_model_check_config(const hf_config *c, const char *name, ra_error *err) {
    /* Limits keep every index of the forward pass inside int / int64 and
     * reject nonsense early instead of failing an allocation. */
    const int big = 1 << 20;
    struct { const char *field; int v, lo, hi; } f[] = {
        {"hidden_size", c->hidden_size, 1, big},
        {"intermediate_size", c->intermediate_size, 1, 4 * big},
        {"num_hidden_layers", c->num_layers, 1, 4096},
        {"num_attention_heads", c->num_heads, 1, 4096},
        {"num_key_value_heads", c->num_kv_heads, 1, 4096},
        {"head_dim", c->head_dim, 2, 65536},
        {"vocab_size", c->vocab_size, 1, 16 * big},
        {"max_position_embeddings", c->max_position_embeddings, 1, 1 << 30},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (f[i].v < f[i].lo || f[i].v > f[i].hi)
            return ra_fail(err, EX_DATAERR, "%s: config %s = %d, expected %d..%d", name, f[i].field, f[i].v, f[i].lo,
                           f[i].hi);
    if (c->num_heads % c->num_kv_heads)
        return ra_fail(err, EX_DATAERR, "%s: config num_attention_heads = %d is not a multiple of num_key_value_heads = %d",
                       name, c->num_heads, c->num_kv_heads);
    if (c->head_dim % 2)
        return ra_fail(err, EX_DATAERR, "%s: config head_dim = %d, expected an even number (RoPE pairs)", name, c->head_dim);
    if ((int64_t)c->num_heads * c->head_dim > 4 * big)
        return ra_fail(err, EX_DATAERR, "%s: config num_attention_heads × head_dim = %lld is too large", name,
                       (long long)c->num_heads * c->head_dim);
    if (!(c->rms_norm_eps >= 0) || !(c->rope_theta > 0))
        return ra_fail(err, EX_DATAERR, "%s: config rms_norm_eps = %g / rope_theta = %g, expected ≥ 0 / > 0", name,
                       c->rms_norm_eps, c->rope_theta);
    if (c->rope_type == RA_ROPE_LLAMA3 &&
        (!(c->rope_factor > 0) || !(c->rope_low_freq_factor > 0) || !(c->rope_high_freq_factor > c->rope_low_freq_factor) ||
         c->rope_original_max_position_embeddings <= 0))
        return ra_fail(err, EX_DATAERR,
                       "%s: config rope_scaling llama3: expected factor > 0, 0 < low_freq_factor < high_freq_factor, "
                       "original_max_position_embeddings > 0",
                       name);
    return 0;
}

ra_model *ra_model_shell(const hf_config *c) {
    ra_model *m = xcalloc(1, sizeof *m);
    m->cfg = *c;
    m->layers = xcalloc((size_t)c->num_layers, sizeof *m->layers);
    for (int l = 0; l < c->num_layers; l++) {
        ra_layer *L = &m->layers[l];
        L->n_attn_heads = c->num_heads;
        L->attn_heads = xmalloc((size_t)c->num_heads * sizeof(int));
        for (int h = 0; h < c->num_heads; h++) L->attn_heads[h] = h;
    }
    return m;
}

ra_model *ra_model_shell_hybrid(const hf_config *c, const ra_hybrid_config *h) {
    ra_model *m = ra_model_shell(c);
    m->hybrid = xcalloc(1, sizeof *m->hybrid);
    ra_hybrid_copy(m->hybrid, h);
    for (int l = 0; l < c->num_layers; l++) {
        ra_layer *L = &m->layers[l];
        ra_hybrid_layer_shape sh = ra_hybrid_layer(h, c, l);
        L->n_attn_heads = 0;
        for (int hh = 0; hh < c->num_heads; hh++)
            if (h->keep[(size_t)l * c->num_heads + hh]) L->attn_heads[L->n_attn_heads++] = hh;
        L->n_ssm_heads = sh.Hs;
        L->ssm_cfg = sh.ssm;
        if (h->layout == RA_LAYOUT_ROUTED && sh.Hs) {
            L->ssm_heads = xmalloc((size_t)sh.Hs * sizeof(int));
            for (int hh = 0, i = 0; hh < c->num_heads; hh++)
                if (!h->keep[(size_t)l * c->num_heads + hh]) L->ssm_heads[i++] = hh;
        }
    }
    return m;
}

void ra_model_alloc_weights(ra_model *m) {
    ra_model_tensor *t;
    int n = ra_model_tensor_list(m, &t);
    for (int i = 0; i < n; i++) {
        int64_t numel = t[i].shape[0] * (t[i].ndim == 2 ? t[i].shape[1] : 1);
        *t[i].data = xmalloc((size_t)numel * sizeof(float));
    }
    free(t);
    if (m->cfg.tie_word_embeddings) m->lm_head = m->embed;
}

int ra_model_alloc(const hf_config *c, ra_model **out, ra_error *err) {
    *out = NULL;
    int rc = ra_model_check_config(c, "config", err);
    if (rc) return rc;
    ra_model *m = ra_model_shell(c);
    ra_model_alloc_weights(m);
    *out = m;
    return 0;
}

void ra_model_free(ra_model *m) {
    if (!m) return;
    ra_model_tensor *t;
    int n = ra_model_tensor_list(m, &t);
    for (int i = 0; i < n; i++) free(*t[i].data);
    free(t);
    for (int l = 0; l < m->cfg.num_layers; l++) {
        free(m->layers[l].attn_heads);
        free(m->layers[l].ssm_heads);
    }
    free(m->layers);
    if (m->hybrid) ra_hybrid_free(m->hybrid);
    free(m->hybrid);
    if (m->view) m->view->close(m->view);
    free(m);
}
