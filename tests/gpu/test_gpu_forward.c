/* The CUDA forward pass (kernels/forward_cuda.h) against the CPU forward
 * (lib/forward.h) on random models, every option included, and against the
 * Hugging Face golden logits of tests/fixtures/golden when present.
 *
 * The bar is DESIGN §7's for bf16 on the GPU: relative L2 error
 * ‖gpu − ref‖ / ‖ref‖ ≤ 2e-2 for logits (and the other float outputs).  For
 * the random models the CPU runs on the same weights rounded to bf16, so the
 * figure measures the bf16 activations alone; the golden fixtures compare
 * with transformers in float32 on the original weights. */
#include <dirent.h>
#include <jansson.h>

#include "forward.h"
#include "forward_cuda.h"
#include "ops_cuda.h"
#include "safetensors.h"
#include "test.h"
#include "gpu_test.h"

#define TOL 2e-2

/* ---- models ---------------------------------------------------------------- */

static hf_config model_config(int variant) {
    hf_config c;
    memset(&c, 0, sizeof c);
    strcpy(c.model_type, variant == 1 ? "qwen2" : "llama");
    c.rms_norm_eps = 1e-5;
    c.bos_token_id = -1;
    c.max_position_embeddings = 4096;
    switch (variant) {
    case 0: /* Llama-3: GQA 4, llama3 RoPE, untied, head dim 16 (flash) */
        c.hidden_size = 128, c.intermediate_size = 256, c.num_layers = 3, c.num_heads = 8, c.num_kv_heads = 2;
        c.head_dim = 16, c.vocab_size = 300;
        break;
    case 1: /* Qwen2: q/k/v biases, tied, head dim 32 (flash) */
        c.hidden_size = 192, c.intermediate_size = 384, c.num_layers = 2, c.num_heads = 6, c.num_kv_heads = 2;
        c.head_dim = 32, c.vocab_size = 400, c.tie_word_embeddings = 1, c.qkv_bias = 1;
        break;
    case 2: /* head_dim 24 ≠ D/H (row kernel), q/k/v/o biases, MQA */
        c.hidden_size = 64, c.intermediate_size = 160, c.num_layers = 2, c.num_heads = 4, c.num_kv_heads = 1;
        c.head_dim = 24, c.vocab_size = 257, c.qkv_bias = 1, c.o_bias = 1;
        break;
    default: /* two layers of the Llama-3.2-1B shape (head dim 64), smaller vocabulary */
        c.hidden_size = 2048, c.intermediate_size = 8192, c.num_layers = 2, c.num_heads = 32, c.num_kv_heads = 8;
        c.head_dim = 64, c.vocab_size = 32000, c.tie_word_embeddings = 1;
        break;
    }
    c.rope_theta = variant == 1 ? 1000000.0 : 500000.0;
    if (variant != 1) {
        c.rope_type = RA_ROPE_LLAMA3;
        c.rope_factor = 32;
        c.rope_low_freq_factor = 1;
        c.rope_high_freq_factor = 4;
        c.rope_original_max_position_embeddings = 64;
    }
    return c;
}

/* Random weights scaled so activations stay O(1) (linear: variance 1/in),
 * rounded to bf16 so both backends see the same model. */
static ra_model *random_model(int variant, uint64_t seed) {
    hf_config c = model_config(variant);
    ra_model *m;
    ra_error err = {0, ""};
    if (ra_model_alloc(&c, &m, &err)) {
        printf("# ra_model_alloc: %s\n", err.msg);
        exit(1);
    }
    test_seed(seed);
    ra_model_tensor *t;
    int n = ra_model_tensor_list(m, &t);
    for (int i = 0; i < n; i++) {
        int64_t numel = t[i].shape[0] * (t[i].ndim == 2 ? t[i].shape[1] : 1);
        float *w = *t[i].data;
        int is_norm = strstr(t[i].name, "norm") != NULL, is_bias = strstr(t[i].name, "bias") != NULL;
        int is_embed = strstr(t[i].name, "embed") != NULL;
        float lin = t[i].ndim == 2 ? sqrtf(3.0f / (float)t[i].shape[1]) : 0;
        for (int64_t j = 0; j < numel; j++) {
            float r = test_randf();
            float v = is_norm ? 1.0f + 0.2f * r : is_bias ? 0.3f * r : is_embed ? r : lin * r;
            w[j] = ra_bf16_to_f32(ra_f32_to_bf16(v));
        }
    }
    free(t);
    return m;
}

static int32_t *rand_tokens(size_t n, int V) {
    int32_t *t = xmalloc(n * sizeof *t);
    for (size_t i = 0; i < n; i++) t[i] = (int32_t)(test_rand_u64() % (uint64_t)V);
    return t;
}

static double rel_l2(const float *a, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        if (isnan(a[i])) return INFINITY;
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void check_rel(const char *what, const float *got, const float *ref, size_t n, double tol) {
    double e = rel_l2(got, ref, n);
    printf("#   %-60s rel_l2 %.2e\n", what, e);
    EXPECT_MSG(e <= tol, "%s: relative L2 error %.3e > %.1e", what, e, tol);
}

/* Both backends on one model. */
typedef struct {
    ra_model *m;
    cuda_model *cm;
    ra_forward_state *cpu;
    cuda_forward_state *gpu;
} pair;

static pair pair_new(ra_model *m, int B, int T) {
    pair p = {m, NULL, NULL, NULL};
    ra_error err = {0, ""};
    if (cuda_model_upload(m, &p.cm, &err) || cuda_forward_state_create(p.cm, B, T, &p.gpu, &err)) {
        printf("# %s\n", err.msg);
        exit(1);
    }
    p.cpu = ra_forward_state_create(m, B, T);
    return p;
}

static void pair_free(pair *p) {
    cuda_forward_state_free(p->gpu);
    cuda_model_free(p->cm);
    ra_forward_state_free(p->cpu);
    ra_model_free(p->m);
}

/* ---- tests ------------------------------------------------------------------ */

TEST(logits_match_cpu_forward) {
    int shapes[4][2] = {{2, 70}, {3, 64}, {2, 45}, {2, 300}};
    for (int variant = 0; variant < 4; variant++) {
        int B = shapes[variant][0], T = shapes[variant][1];
        pair p = pair_new(random_model(variant, 1000 + variant), B, T);
        int V = p.m->cfg.vocab_size;
        int32_t *tok = rand_tokens((size_t)B * T, V);
        float *ref = xmalloc((size_t)B * T * V * 4), *got = xmalloc((size_t)B * T * V * 4);
        ra_forward_opts o = {0};
        o.logits = ref;
        ra_error err = {0, ""};
        EXPECT_EQ_INT(ra_forward_cpu(p.cpu, tok, B, T, &o, &err), 0);
        o.logits = got;
        EXPECT_EQ_INT(cuda_forward_run(p.gpu, tok, B, T, &o, NULL, &err), 0);
        char what[128];
        snprintf(what, sizeof what, "variant %d (D=%d H=%d Hkv=%d hd=%d) B=%d T=%d logits", variant,
                 p.m->cfg.hidden_size, p.m->cfg.num_heads, p.m->cfg.num_kv_heads, p.m->cfg.head_dim, B, T);
        check_rel(what, got, ref, (size_t)B * T * V, TOL);
        double mx = 0;
        for (size_t i = 0; i < (size_t)B * T * V; i++) mx = fmax(mx, fabs(ref[i]));
        EXPECT_MSG(mx > 0.5, "variant %d: logits are nearly constant (max %g)", variant, mx);
        free(tok), free(ref), free(got);
        pair_free(&p);
    }
}

/* Every option at once: packed documents, a different ablation per row,
 * hidden states, probabilities of chosen heads, logits at chosen positions. */
TEST(options_match_cpu_forward) {
    for (int variant = 0; variant < 3; variant++) {
        int B = 3, T = 77;
        pair p = pair_new(random_model(variant, 2000 + variant), B, T);
        const hf_config *c = &p.m->cfg;
        int V = c->vocab_size, D = c->hidden_size, H = c->num_heads, layers = c->num_layers;
        int32_t *tok = rand_tokens((size_t)B * T, V);
        int32_t *ds = xmalloc((size_t)B * T * 4);
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) ds[b * T + t] = b == 1 ? (t < 30 ? 0 : t < 51 ? 30 : 51) : 0;
        uint8_t *keep = xmalloc((size_t)B * layers * H);
        memset(keep, 1, (size_t)B * layers * H);
        keep[(0 * layers + 1) * H + 2] = 0;
        keep[(2 * layers + 0) * H + 0] = 0;
        keep[(2 * layers + layers - 1) * H + H - 1] = 0;
        ra_head_ref req[3] = {{0, 1}, {layers - 1, H - 1}, {1, 0}};
        int32_t counts[3] = {2, 0, 4}, pos[6] = {76, 3, 0, 76, 40, 41};
        size_t nD = (size_t)B * T * D, nP = (size_t)3 * B * T * T;
        float *h_cpu = xmalloc((layers + 1) * nD * 4), *h_gpu = xmalloc((layers + 1) * nD * 4);
        float *slots_cpu[16], *slots_gpu[16];
        for (int l = 0; l <= layers; l++) slots_cpu[l] = h_cpu + l * nD, slots_gpu[l] = h_gpu + l * nD;
        float *p_cpu = xmalloc(nP * 4), *p_gpu = xmalloc(nP * 4);
        float *l_cpu = xmalloc((size_t)6 * V * 4), *l_gpu = xmalloc((size_t)6 * V * 4);
        ra_forward_opts o = {0};
        o.doc_start = ds, o.head_keep = keep, o.n_probs = 3, o.probs_heads = req;
        o.logit_counts = counts, o.logit_positions = pos;
        ra_error err = {0, ""};
        o.hidden_out = slots_cpu, o.probs_out = p_cpu, o.logits = l_cpu;
        EXPECT_EQ_INT(ra_forward_cpu(p.cpu, tok, B, T, &o, &err), 0);
        o.hidden_out = slots_gpu, o.probs_out = p_gpu, o.logits = l_gpu;
        for (size_t i = 0; i < nP; i++) p_gpu[i] = NAN;
        EXPECT_EQ_INT(cuda_forward_run(p.gpu, tok, B, T, &o, NULL, &err), 0);
        char what[128];
        for (int l = 0; l <= layers; l++) {
            snprintf(what, sizeof what, "variant %d hidden state entering layer %d%s", variant, l,
                     l == layers ? " (final)" : "");
            check_rel(what, slots_gpu[l], slots_cpu[l], nD, TOL);
        }
        snprintf(what, sizeof what, "variant %d probabilities of 3 heads", variant);
        check_rel(what, p_gpu, p_cpu, nP, TOL);
        snprintf(what, sizeof what, "variant %d logits at 6 chosen positions, docs + ablations", variant);
        check_rel(what, l_gpu, l_cpu, (size_t)6 * V, TOL);
        free(tok), free(ds), free(keep), free(h_cpu), free(h_gpu), free(p_cpu), free(p_gpu), free(l_cpu),
            free(l_gpu);
        pair_free(&p);
    }
}

/* The probe's pattern on the GPU: start at layer l from the cached residual
 * with a head of layer ≥ l ablated == the full ablated forward; and the
 * logits left on the device equal the ones copied back. */
TEST(cached_start_and_device_logits) {
    int B = 2, T = 50;
    pair p = pair_new(random_model(0, 3000), B, T);
    const hf_config *c = &p.m->cfg;
    int V = c->vocab_size, D = c->hidden_size, H = c->num_heads, layers = c->num_layers;
    int32_t *tok = rand_tokens((size_t)B * T, V);
    size_t nD = (size_t)B * T * D, nL = (size_t)B * T * V;
    float *hid = xmalloc((layers + 1) * nD * 4), *slots[16];
    for (int l = 0; l <= layers; l++) slots[l] = hid + l * nD;
    ra_error err = {0, ""};
    ra_forward_opts o = {0};
    o.hidden_out = slots;
    EXPECT_EQ_INT(cuda_forward_run(p.gpu, tok, B, T, &o, NULL, &err), 0);
    uint8_t *keep = xmalloc((size_t)B * layers * H);
    float *full = xmalloc(nL * 4), *part = xmalloc(nL * 4), *dev = xmalloc(nL * 4);
    for (int l = 1; l < layers; l++) {
        memset(keep, 1, (size_t)B * layers * H);
        keep[(1 * layers + l) * H + 3] = 0;
        ra_forward_opts a = {0};
        a.head_keep = keep;
        a.logits = full;
        EXPECT_EQ_INT(cuda_forward_run(p.gpu, tok, B, T, &a, NULL, &err), 0);
        a.logits = part;
        a.start_layer = l;
        a.start_hidden = slots[l];
        EXPECT_EQ_INT(cuda_forward_run(p.gpu, NULL, B, T, &a, NULL, &err), 0);
        char what[96];
        snprintf(what, sizeof what, "start at layer %d from cached residual vs full", l);
        check_rel(what, part, full, nL, 1e-6);
    }
    /* logits kept on the device */
    uint16_t *d_logits = cuda_malloc(nL * 2);
    ra_forward_opts a = {0};
    a.logits = full;
    EXPECT_EQ_INT(cuda_forward_run(p.gpu, tok, B, T, &a, NULL, &err), 0);
    a.logits = NULL;
    EXPECT_EQ_INT(cuda_forward_run(p.gpu, tok, B, T, &a, d_logits, &err), 0);
    cuda_synchronize();
    cuda_download_bf16(dev, d_logits, nL);
    check_rel("logits on the device vs copied back", dev, full, nL, 1e-6);
    cuda_free(d_logits);
    free(tok), free(hid), free(keep), free(full), free(part), free(dev);
    pair_free(&p);
}

/* Through lib/forward.c's dispatch, as ra-eval --device cuda uses it. */
TEST(dispatch_backend_cuda) {
    ra_model *m = random_model(1, 4000);
    int B = 2, T = 33, V = m->cfg.vocab_size;
    const ra_forward_backend *be;
    ra_error err = {0, ""};
    EXPECT_EQ_INT(ra_forward_backend_get(RA_DEVICE_CUDA, &be, &err), 0);
    if (test_case_errors) {
        printf("#   %s\n", err.msg);
        ra_model_free(m);
        return;
    }
    EXPECT_STR(be->name, "cuda");
    void *st;
    EXPECT_EQ_INT(be->create(m, B, T, &st, &err), 0);
    int32_t *tok = rand_tokens((size_t)B * T, V);
    float *got = xmalloc((size_t)B * T * V * 4), *ref = xmalloc((size_t)B * T * V * 4);
    ra_forward_opts o = {0};
    o.logits = got;
    EXPECT_EQ_INT(be->run(st, tok, B, T, &o, &err), 0);
    ra_forward_state *cpu = ra_forward_state_create(m, B, T);
    o.logits = ref;
    EXPECT_EQ_INT(ra_forward_cpu(cpu, tok, B, T, &o, &err), 0);
    check_rel("backend 'cuda' through ra_forward_backend_get", got, ref, (size_t)B * T * V, TOL);
    /* bad data is refused with the CPU backend's codes */
    tok[5] = V;
    EXPECT_EQ_INT(be->run(st, tok, B, T, &o, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "token id") != NULL);
    tok[5] = 0;
    EXPECT_EQ_INT(be->run(st, tok, B, T + 1, &o, &err), EX_USAGE);
    be->destroy(st);
    ra_forward_state_free(cpu);
    free(tok), free(got), free(ref);
    ra_model_free(m);
}

TEST(out_of_memory_is_a_clear_error) {
    ra_model *m = random_model(0, 5000);
    cuda_model *cm;
    ra_error err = {0, ""};
    EXPECT_EQ_INT(cuda_model_upload(m, &cm, &err), 0);
    cuda_forward_state *s = NULL;
    int rc = cuda_forward_state_create(cm, 1 << 20, 1 << 16, &s, &err); /* 2^36 tokens */
    printf("#   %s\n", err.msg);
    EXPECT_EQ_INT(rc, EX_TEMPFAIL);
    EXPECT(s == NULL);
    EXPECT(strstr(err.msg, "out of memory") != NULL && strstr(err.msg, "smaller --batch") != NULL);
    /* the GPU is still usable afterwards */
    EXPECT_EQ_INT(cuda_forward_state_create(cm, 1, 8, &s, &err), 0);
    cuda_forward_state_free(s);
    cuda_model_free(cm);
    ra_model_free(m);
}

/* ---- golden fixtures ---------------------------------------------------------- */

static const char *golden_dir(void) {
    const char *d = getenv("RA_GOLDEN_DIR");
    return d ? d : "tests/fixtures/golden";
}

static int golden_fixtures;

static void check_golden(const char *name) {
    char dir[1024], path[1100];
    snprintf(dir, sizeof dir, "%.700s/%.250s", golden_dir(), name);
    ra_error err = {0, ""};
    ra_model *m;
    if (ra_model_load_hf(dir, &m, &err)) {
        EXPECT_MSG(0, "%s: %s", name, err.msg);
        return;
    }
    snprintf(path, sizeof path, "%s/expected.safetensors", dir);
    st_set *st;
    if (st_open(path, &st, &err)) {
        EXPECT_MSG(0, "%s: %s", name, err.msg);
        ra_model_free(m);
        return;
    }
    golden_fixtures++;
    int V = m->cfg.vocab_size, H = m->cfg.num_heads, layers = m->cfg.num_layers;
    const st_tensor *tok_long = st_find(st, "tokens/long"), *tok_short = st_find(st, "tokens/short");
    EXPECT_MSG(tok_long && tok_short && tok_long->dtype == RA_I32 && tok_short->dtype == RA_I32,
               "%s: expected.safetensors lacks i32 tokens/short or tokens/long", name);
    if (!tok_long || !tok_short || tok_long->dtype != RA_I32 || tok_short->dtype != RA_I32) {
        st_close(st);
        ra_model_free(m);
        return;
    }
    int T = (int)tok_long->shape[0];
    /* ablations listed in expected.json, one batch row each after the plain row */
    snprintf(path, sizeof path, "%s/expected.json", dir);
    json_error_t jerr;
    json_t *meta = json_load_file(path, 0, &jerr);
    json_t *abl = meta ? json_object_get(meta, "ablations") : NULL;
    int n_abl = json_is_array(abl) ? (int)json_array_size(abl) : 0;
    int B = 1 + n_abl;

    cuda_model *cm;
    cuda_forward_state *s;
    if (cuda_model_upload(m, &cm, &err) || cuda_forward_state_create(cm, B, T, &s, &err)) {
        EXPECT_MSG(0, "%s: %s", name, err.msg);
        st_close(st);
        ra_model_free(m);
        json_decref(meta);
        return;
    }
    float *logits = xmalloc((size_t)B * T * V * 4);
    ra_forward_opts o = {0};
    o.logits = logits;
    /* short sequence alone */
    int Ts = (int)tok_short->shape[0];
    const st_tensor *want = st_find(st, "logits/short");
    EXPECT_EQ_INT(cuda_forward_run(s, tok_short->data, 1, Ts, &o, NULL, &err), 0);
    char what[160];
    if (want && want->dtype == RA_F32 && want->shape[0] == Ts && want->shape[1] == V) {
        snprintf(what, sizeof what, "golden %.60s logits/short", name);
        check_rel(what, logits, want->data, (size_t)Ts * V, TOL);
    } else {
        EXPECT_MSG(0, "%s: logits/short missing or misshapen", name);
    }
    /* long sequence, plain and with each ablation, in one batch */
    int32_t *tok = xmalloc((size_t)B * T * 4);
    uint8_t *keep = xmalloc((size_t)B * layers * H);
    memset(keep, 1, (size_t)B * layers * H);
    for (int b = 0; b < B; b++) memcpy(tok + (size_t)b * T, tok_long->data, (size_t)T * 4);
    for (int i = 0; i < n_abl; i++) {
        json_t *pr = json_array_get(abl, (size_t)i);
        int l = (int)json_integer_value(json_array_get(pr, 0)), h = (int)json_integer_value(json_array_get(pr, 1));
        if (l >= 0 && l < layers && h >= 0 && h < H) keep[((size_t)(1 + i) * layers + l) * H + h] = 0;
    }
    o.head_keep = keep;
    EXPECT_EQ_INT(cuda_forward_run(s, tok, B, T, &o, NULL, &err), 0);
    for (int b = 0; b < B; b++) {
        char tn[64];
        if (b == 0) {
            snprintf(tn, sizeof tn, "logits/long");
        } else {
            json_t *pr = json_array_get(abl, (size_t)(b - 1));
            snprintf(tn, sizeof tn, "ablate/%d_%d/long", (int)json_integer_value(json_array_get(pr, 0)),
                     (int)json_integer_value(json_array_get(pr, 1)));
        }
        want = st_find(st, tn);
        if (!want || want->dtype != RA_F32 || want->shape[0] != T || want->shape[1] != V) {
            EXPECT_MSG(0, "%s: %s missing or misshapen", name, tn);
            continue;
        }
        snprintf(what, sizeof what, "golden %.60s %.60s", name, tn);
        check_rel(what, logits + (size_t)b * T * V, want->data, (size_t)T * V, TOL);
    }
    free(tok), free(keep), free(logits);
    cuda_forward_state_free(s);
    cuda_model_free(cm);
    st_close(st);
    json_decref(meta);
    ra_model_free(m);
}

TEST(golden_logits) {
    DIR *d = opendir(golden_dir());
    if (!d) {
        printf("#   %s absent: golden comparison skipped\n", golden_dir());
        return;
    }
    struct dirent *e;
    char names[64][256];
    int n = 0;
    while ((e = readdir(d)) && n < 64)
        if (e->d_name[0] != '.' && e->d_type == DT_DIR) snprintf(names[n++], sizeof names[0], "%s", e->d_name);
    closedir(d);
    for (int i = 0; i < n; i++) check_golden(names[i]);
    EXPECT_MSG(golden_fixtures > 0, "%s has no usable fixture", golden_dir());
}

int main(void) {
    if (gpu_test_start()) return 1;
    RUN(logits_match_cpu_forward);
    RUN(options_match_cpu_forward);
    RUN(cached_start_and_device_logits);
    RUN(dispatch_backend_cuda);
    RUN(out_of_memory_is_a_clear_error);
    RUN(golden_logits);
    return test_summary();
}
