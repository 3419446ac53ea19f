/* Random teachers and hybrid students for the GPU tests of the hybrid
 * forward and of decoding (test_gpu_hybrid.c, test_gpu_decode.c): shapes
 * the CUDA kernels meet in practice (head dims 32 and 64, GQA), weights
 * random everywhere (never the inits' zeros and ones), scaled so the
 * activations stay O(1), and rounded to bf16 so the CPU reference and the
 * GPU run the same model. */
#ifndef RA_GPU_HYBRID_FIXTURE_H
#define RA_GPU_HYBRID_FIXTURE_H

#include "dtype.h"
#include "hybrid.h"
#include "hybrid_fixture.h"

/* variant 0: Llama-3 (llama3 RoPE, untied), D 256, H 8, Hkv 2, hd 32
 * variant 1: Qwen2 (q/k/v biases, tied), D 256, H 4, Hkv 2, hd 64
 * variant 2: Llama with attention_bias (o bias too), D 128, H 4, Hkv 1, hd 32 */
static hf_config gx_config(int variant) {
    hf_config c = fx_config(variant);
    c.max_position_embeddings = 8192;
    c.num_layers = 3;
    c.vocab_size = 300 + 37 * variant;
    switch (variant) {
    case 0: c.hidden_size = 256, c.intermediate_size = 512, c.num_heads = 8, c.num_kv_heads = 2, c.head_dim = 32; break;
    case 1: c.hidden_size = 256, c.intermediate_size = 384, c.num_heads = 4, c.num_kv_heads = 2, c.head_dim = 64; break;
    default: c.hidden_size = 128, c.intermediate_size = 320, c.num_heads = 4, c.num_kv_heads = 1, c.head_dim = 32; break;
    }
    if (variant == 0) c.rope_original_max_position_embeddings = 64;
    return c;
}

static void gx_fill(ra_model *m, uint64_t seed) {
    test_seed(seed);
    ra_model_tensor *t;
    int n = ra_model_tensor_list(m, &t);
    for (int i = 0; i < n; i++) {
        int64_t numel = t[i].shape[0] * (t[i].ndim == 2 ? t[i].shape[1] : 1);
        float *w = *t[i].data;
        int is_norm = strstr(t[i].name, "norm") != NULL, is_bias = strstr(t[i].name, "bias") != NULL;
        int is_embed = strstr(t[i].name, "embed") != NULL;
        float lin = t[i].ndim == 2 ? sqrtf(3.0f / (float)t[i].shape[1]) : 0.5f;
        for (int64_t j = 0; j < numel; j++) {
            float r = test_randf();
            float v = is_norm ? 1.0f + 0.2f * r : is_bias ? 0.2f * r : is_embed ? r : lin * r;
            w[j] = ra_bf16_to_f32(ra_f32_to_bf16(v));
        }
    }
    free(t);
}

static inline void gx_unused(void) { (void)fx_teacher; } /* hybrid_fixture.h's, not needed here */

static ra_model *gx_teacher(int variant, uint64_t seed) {
    hf_config c = gx_config(variant);
    ra_model *m;
    ra_error err = {0, ""};
    if (ra_model_alloc(&c, &m, &err)) {
        printf("# ra_model_alloc: %s\n", err.msg);
        exit(1);
    }
    gx_fill(m, seed);
    snprintf(m->content_id, sizeof m->content_id, "%032x", (unsigned)(seed * 2654435761u));
    snprintf(m->source, sizeof m->source, "teacher%d", variant);
    return m;
}

typedef struct gx_case {
    const char *name;
    int variant;
    const char *bits; /* kept heads per layer, layers concatenated; NULL: the teacher */
    ra_layout layout;
    ra_adapter_kind adapter;
    int N, chunk;
} gx_case;

/* The model of a case, random weights everywhere. */
static ra_model *gx_model(const gx_case *mc, uint64_t seed) {
    ra_model *t = gx_teacher(mc->variant, seed);
    if (!mc->bits) return t;
    ra_model *s = fx_graft(t, mc->bits, mc->layout, mc->adapter, mc->N, RA_INIT_MOHAWK, seed);
    ra_model_free(t);
    if (!s) {
        printf("# graft failed\n");
        exit(1);
    }
    gx_fill(s, seed + 1000);
    s->hybrid->chunk = mc->chunk;
    for (int l = 0; l < s->cfg.num_layers; l++) s->layers[l].ssm_cfg.chunk = mc->chunk;
    return s;
}

static int32_t *gx_tokens(size_t n, int V) {
    int32_t *t = xmalloc(n * sizeof *t);
    for (size_t i = 0; i < n; i++) t[i] = (int32_t)(test_rand_u64() % (uint64_t)V);
    return t;
}

static double gx_rel_l2(const float *a, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(a[i])) return INFINITY;
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Records the error (TAP comment) and fails above tol. */
static double gx_check(const char *what, const float *got, const float *ref, size_t n, double tol) {
    double e = gx_rel_l2(got, ref, n);
    printf("#   %-64s rel_l2 %.2e\n", what, e);
    EXPECT_MSG(e <= tol, "%s: relative L2 error %.3e > %.1e", what, e, tol);
    return e;
}

#endif
