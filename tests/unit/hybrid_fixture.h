/* Tiny random teachers and plans for the hybrid and decode unit tests. */
#ifndef RA_TEST_HYBRID_FIXTURE_H
#define RA_TEST_HYBRID_FIXTURE_H

#include "hybrid.h"
#include "model.h"
#include "plan.h"
#include "test.h"

/* variant 0: Llama, llama3 RoPE, untied, no biases, D 32, H 4, Hkv 2, hd 8
 * variant 1: Qwen2 (q/k/v biases), tied, H 6, Hkv 3, hd 8, D 40 (hd ≠ D/H)
 * variant 2: Llama with attention_bias (o bias too), H 4, Hkv 1, hd 12 */
static hf_config fx_config(int variant) {
    hf_config c;
    memset(&c, 0, sizeof c);
    strcpy(c.model_type, variant == 1 ? "qwen2" : "llama");
    c.hidden_size = variant == 1 ? 40 : 32;
    c.intermediate_size = 56;
    c.num_layers = 3;
    c.num_heads = variant == 1 ? 6 : 4;
    c.num_kv_heads = variant == 1 ? 3 : variant == 2 ? 1 : 2;
    c.head_dim = variant == 2 ? 12 : 8;
    c.vocab_size = 61;
    c.max_position_embeddings = 256;
    c.rms_norm_eps = 1e-5;
    c.rope_theta = variant == 1 ? 10000.0 : 500000.0;
    if (variant == 0) {
        c.rope_type = RA_ROPE_LLAMA3;
        c.rope_factor = 8;
        c.rope_low_freq_factor = 1;
        c.rope_high_freq_factor = 4;
        c.rope_original_max_position_embeddings = 16;
    }
    c.tie_word_embeddings = variant == 1;
    c.qkv_bias = variant != 0;
    c.o_bias = variant == 2;
    c.bos_token_id = -1;
    return c;
}

static void fx_fill_model(ra_model *m, uint64_t seed) {
    test_seed(seed);
    ra_model_tensor *t;
    int n = ra_model_tensor_list(m, &t);
    for (int i = 0; i < n; i++) {
        int64_t numel = t[i].shape[0] * (t[i].ndim == 2 ? t[i].shape[1] : 1);
        float *w = *t[i].data;
        int is_norm = strstr(t[i].name, "norm") != NULL, is_bias = strstr(t[i].name, "bias") != NULL;
        int is_embed = strstr(t[i].name, "embed") != NULL;
        for (int64_t j = 0; j < numel; j++) {
            float r = test_randf();
            w[j] = is_norm ? 1.0f + 0.2f * r : is_bias ? 0.2f * r : is_embed ? r : 0.3f * r;
        }
    }
    free(t);
}

static ra_model *fx_teacher(int variant, uint64_t seed) {
    hf_config c = fx_config(variant);
    ra_model *m;
    ra_error err = {0};
    if (ra_model_alloc(&c, &m, &err)) {
        printf("# ra_model_alloc: %s\n", err.msg);
        exit(1);
    }
    fx_fill_model(m, seed);
    snprintf(m->content_id, sizeof m->content_id, "%032x", (unsigned)(seed * 2654435761u));
    snprintf(m->source, sizeof m->source, "teacher%d", variant);
    return m;
}

/* A plan for m: keep[l*H + h] from the string of '0'/'1' per head, layers
 * concatenated ("" = none kept, "all" = every head). */
static ra_plan fx_plan(const ra_model *m, const char *bits) {
    const hf_config *c = &m->cfg;
    ra_plan p;
    memset(&p, 0, sizeof p);
    memcpy(p.teacher_id, m->content_id, sizeof p.teacher_id);
    p.shape = ra_teacher_shape_from_config(c);
    p.keep = calloc((size_t)c->num_layers * c->num_heads, 1);
    for (int i = 0; i < c->num_layers * c->num_heads; i++) {
        p.keep[i] = strcmp(bits, "all") == 0 ? 1 : (size_t)i < strlen(bits) && bits[i] == '1';
        p.kept += p.keep[i];
    }
    snprintf(p.content_id, sizeof p.content_id, "%s", "feedfacefeedfacefeedfacefeedface");
    return p;
}

static ra_model *fx_graft(const ra_model *t, const char *bits, ra_layout layout, ra_adapter_kind adapter, int N,
                          ra_ssm_init init, uint64_t seed) {
    ra_plan p = fx_plan(t, bits);
    ra_graft_opts o = {.layout = layout, .adapter = adapter, .d_state = N, .init = init, .seed = seed};
    ra_model *s = NULL;
    ra_error err = {0};
    if (ra_graft(t, &p, &o, &s, &err)) printf("# ra_graft: %s\n", err.msg);
    ra_plan_free(&p);
    return s;
}

#endif
