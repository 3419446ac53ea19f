/* ra-probe's GPU engine (kernels/probe_cuda.h) on tiny random models:
 *  - every head's ablated outcome == a plain forward on the GPU (the CUDA
 *    forward backend) of a model copy with that head's o_proj columns
 *    zeroed, per prompt (bf16 on both sides, so within bf16 noise);
 *  - a head's drops are the same whichever other heads are measured;
 *  - a model left in its checkpoint uploads the same weights, and a session
 *    (attribution, then exact reusing its baseline) gives the plain drops;
 *  - the drops agree with the CPU engine in fp32 within bf16 noise;
 *  - deterministic from run to run;
 *  - GPU attribution agrees with the CPU attribution. */
#include <sys/stat.h>

#include "forward.h"
#include "forward_cuda.h"
#include "ops_cuda.h"
#include "safetensors.h"
#include "probe.h"
#include "probe_cuda.h"
#include "test.h"
#include "gpu_test.h"

static hf_config tiny_config(int variant) {
    hf_config c;
    memset(&c, 0, sizeof c);
    strcpy(c.model_type, variant == 1 ? "qwen2" : "llama");
    c.hidden_size = 128;
    c.intermediate_size = 256;
    c.num_layers = 3;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 32;
    c.vocab_size = 300;
    c.max_position_embeddings = 256;
    c.rms_norm_eps = 1e-5;
    c.rope_theta = 10000.0;
    c.tie_word_embeddings = variant == 1;
    c.qkv_bias = variant == 1;
    c.bos_token_id = -1;
    return c;
}

static ra_model *tiny_model(int variant, uint64_t seed) {
    hf_config c = tiny_config(variant);
    ra_model *m;
    ra_error err = {0};
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
        int is_embed = strstr(t[i].name, "embed") != NULL || strstr(t[i].name, "lm_head") != NULL;
        for (int64_t j = 0; j < numel; j++) {
            float r = test_randf();
            w[j] = is_norm ? 1.0f + 0.2f * r : is_bias ? 0.1f * r : is_embed ? r : 0.15f * r;
        }
    }
    free(t);
    return m;
}

static ra_model *copy_model(const ra_model *m) {
    ra_model *c;
    ra_error err = {0};
    ra_model_alloc(&m->cfg, &c, &err);
    ra_model_tensor *a, *b;
    int n = ra_model_tensor_list((ra_model *)m, &a);
    ra_model_tensor_list(c, &b);
    for (int i = 0; i < n; i++)
        memcpy(*b[i].data, *a[i].data, (size_t)(a[i].shape[0] * (a[i].ndim == 2 ? a[i].shape[1] : 1)) * sizeof(float));
    free(a);
    free(b);
    return c;
}

static void zero_head(ra_model *m, int l, int h) {
    int D = m->cfg.hidden_size, H = m->cfg.num_heads, hd = m->cfg.head_dim;
    for (int i = 0; i < D; i++) memset(m->layers[l].wo + (size_t)i * H * hd + h * hd, 0, hd * sizeof(float));
}

/* Prompts of 20..60 random tokens; choice candidates of 1..3 tokens from a
 * small alphabet (shared prefixes, several rows per prompt). */
static void random_data(probe_data *d, probe_score_mode mode, int items, int K, int V, uint64_t seed) {
    memset(d, 0, sizeof *d);
    d->mode = mode;
    test_seed(seed);
    for (int i = 0; i < items; i++) {
        int32_t prompt[64], cand_tok[8][3];
        int n = 20 + (int)(test_rand_u64() % 41), len[8];
        for (int t = 0; t < n; t++) prompt[t] = (int32_t)(test_rand_u64() % V);
        int nc = mode == PROBE_SCORE_CHOICE ? K : 1;
        for (int c = 0; c < nc; c++) {
            int dup;
            do {
                len[c] = 1 + (int)(test_rand_u64() % 3);
                for (int j = 0; j < len[c]; j++) cand_tok[c][j] = (int32_t)(test_rand_u64() % 5);
                dup = 0;
                for (int e = 0; e < c; e++)
                    dup |= len[e] == len[c] && memcmp(cand_tok[e], cand_tok[c], len[c] * sizeof(int32_t)) == 0;
            } while (dup);
        }
        const int32_t *cp[8];
        for (int c = 0; c < nc; c++) cp[c] = cand_tok[c];
        probe_data_add(d, prompt, n, nc, cp, len, mode == PROBE_SCORE_CHOICE ? (int)(test_rand_u64() % K) : 0);
    }
}

typedef struct run_out {
    probe_outcome *base, *per_head;
    float *acc, *lp;
} run_out;

static run_out run_engine(const ra_model *m, const probe_data *d, int batch, int gpu) {
    int LH = m->cfg.num_layers * m->cfg.num_heads, N = d->n_items;
    run_out r = {calloc(N, sizeof(probe_outcome)), calloc((size_t)LH * N, sizeof(probe_outcome)),
                 calloc(LH, sizeof(float)), calloc(LH, sizeof(float))};
    probe_exact_result res = {r.base, r.per_head, r.acc, r.lp};
    probe_opts o = {batch, NULL};
    ra_error err = {0};
    int rc = gpu ? probe_exact_cuda(m, d, NULL, &o, &res, &err)
                 : probe_exact(&ra_forward_backend_cpu, m, d, NULL, &o, &res, &err);
    EXPECT_MSG(rc == 0, "engine: %s", err.msg);
    return r;
}

static void run_free(run_out *r) { free(r->base), free(r->per_head), free(r->acc), free(r->lp); }

static void gpu_equals_zeroed_o_proj(int variant, probe_score_mode mode, int batch) {
    ra_model *m = tiny_model(variant, 10 + variant);
    int L = m->cfg.num_layers, H = m->cfg.num_heads, N;
    probe_data d;
    random_data(&d, mode, 12, 6, m->cfg.vocab_size, 20 + variant);
    N = d.n_items;
    run_out g = run_engine(m, &d, batch, 1);
    const ra_forward_backend *be;
    ra_error err = {0};
    EXPECT_EQ_INT(ra_forward_backend_get(RA_DEVICE_CUDA, &be, &err), 0);
    probe_outcome *ref = calloc(N, sizeof *ref);
    probe_opts o = {batch, NULL};
    EXPECT_EQ_INT(probe_eval(be, m, &d, NULL, &o, ref, &err), 0);
    /* bf16 on both sides, but not the same rounding: the engine packs its
     * rows end to end, so flash attention's key tiles fall at other offsets
     * of a row than in the forward's padded [B, T] layout, and the logits
     * are stored in bf16, where an ulp is 2^-8 of their size (0.25 for the
     * |z| ~ 30-60 of these random models; the log-probabilities are as
     * large).  So the tolerance is 0.05 + 1% of the largest |log-prob|
     * (about 2.5 ulps of the logits); a wrong head, position or row is also
     * caught by the tests against the CPU engine and between runs below. */
    double max_d = 0, max_ref = 0;
    int flips = 0;
#define CMP(a, r)                                                                  \
    do {                                                                           \
        max_d = fmax(max_d, fabs((a) - (r)));                                      \
        max_ref = fmax(max_ref, fabs(r));                                          \
    } while (0)
    for (int i = 0; i < N; i++) {
        CMP(g.base[i].logprob, ref[i].logprob);
        flips += g.base[i].correct != ref[i].correct;
    }
    for (int l = 0; l < L; l++)
        for (int h = 0; h < H; h++) {
            ra_model *z = copy_model(m);
            zero_head(z, l, h);
            EXPECT_EQ_INT(probe_eval(be, z, &d, NULL, &o, ref, &err), 0);
            for (int i = 0; i < N; i++) {
                probe_outcome e = g.per_head[((size_t)l * H + h) * N + i];
                CMP(e.logprob, ref[i].logprob);
                flips += e.correct != ref[i].correct;
            }
            ra_model_free(z);
        }
#undef CMP
    printf("# variant %d mode %d batch %d: max |logprob - zeroed o_proj forward| %.3g (tolerance %.3g, max |logprob| "
           "%.3g), %d correctness flips of %d\n",
           variant, mode, batch, max_d, 0.05 + 0.01 * max_ref, max_ref, flips, N * (L * H + 1));
    EXPECT(max_d <= 0.05 + 0.01 * max_ref);
    EXPECT(flips <= (N * (L * H + 1)) / 50); /* near-ties only */
    free(ref);
    run_free(&g);
    probe_data_free(&d);
    ra_model_free(m);
}

TEST(gpu_engine_equals_zeroed_o_proj_choice) { gpu_equals_zeroed_o_proj(0, PROBE_SCORE_CHOICE, 16); }
TEST(gpu_engine_equals_zeroed_o_proj_last_token_qwen) { gpu_equals_zeroed_o_proj(1, PROBE_SCORE_LAST_TOKEN, 5); }

TEST(gpu_engine_matches_cpu_engine_and_is_deterministic) {
    ra_model *m = tiny_model(0, 30);
    int LH = m->cfg.num_layers * m->cfg.num_heads;
    probe_data d;
    random_data(&d, PROBE_SCORE_CHOICE, 16, 6, m->cfg.vocab_size, 31);
    run_out g1 = run_engine(m, &d, 24, 1), g2 = run_engine(m, &d, 24, 1), c = run_engine(m, &d, 24, 0);
    EXPECT(memcmp(g1.lp, g2.lp, LH * sizeof(float)) == 0 && memcmp(g1.acc, g2.acc, LH * sizeof(float)) == 0);
    double max_lp = 0;
    for (int i = 0; i < LH; i++) max_lp = fmax(max_lp, fabs(g1.lp[i] - c.lp[i]));
    printf("# max |logprob_drop gpu (bf16) - cpu (fp32)| = %.3g\n", max_lp);
    EXPECT(max_lp < 0.15); /* bf16 weights and activations against fp32 */
    run_free(&g1), run_free(&g2), run_free(&c);
    probe_data_free(&d);
    ra_model_free(m);
}

/* A head's exact drops do not depend on which other heads are measured:
 * a random half of the heads (the hybrid's confirmation) gives bit for bit
 * the values of the run over every head, and leaves the others unwritten. */
TEST(gpu_engine_measured_subset_equals_full_run) {
    for (int variant = 0; variant < 2; variant++) {
        ra_model *m = tiny_model(variant, 80 + variant);
        int LH = m->cfg.num_layers * m->cfg.num_heads, N;
        probe_data d;
        random_data(&d, variant ? PROBE_SCORE_LAST_TOKEN : PROBE_SCORE_CHOICE, 14, 6, m->cfg.vocab_size, 81 + variant);
        N = d.n_items;
        int batch = variant ? 9 : 40; /* several chunks / one chunk */
        run_out full = run_engine(m, &d, batch, 1);
        uint8_t *measure = calloc(LH, 1);
        test_seed(82 + variant);
        int k = 0;
        for (int i = 0; i < LH; i++) k += measure[i] = test_rand_u64() % 2;
        run_out sub = {calloc(N, sizeof(probe_outcome)), NULL, calloc(LH, sizeof(float)), calloc(LH, sizeof(float))};
        for (int i = 0; i < LH; i++) sub.acc[i] = sub.lp[i] = -999.0f;
        probe_exact_result r = {sub.base, NULL, sub.acc, sub.lp};
        probe_opts o = {batch, NULL};
        ra_error err = {0};
        EXPECT_MSG(probe_exact_cuda(m, &d, measure, &o, &r, &err) == 0, "%s", err.msg);
        int same = 1, untouched = 1;
        for (int i = 0; i < LH; i++) {
            if (measure[i]) same &= sub.acc[i] == full.acc[i] && sub.lp[i] == full.lp[i];
            else untouched &= sub.acc[i] == -999.0f && sub.lp[i] == -999.0f;
        }
        printf("# variant %d: %d of %d heads measured: drops %s the full run's; others %s\n", variant, k, LH,
               same ? "equal" : "DIFFER from", untouched ? "unwritten" : "WRITTEN");
        EXPECT(same && untouched);
        run_free(&full), run_free(&sub);
        free(measure);
        probe_data_free(&d);
        ra_model_free(m);
    }
}

/* GPU attribution (bf16 forward, fp32 gradients through bf16 GEMMs) against
 * the CPU one (fp32, checked against finite differences in test_probe). */
static void gpu_attribution_matches_cpu(int variant, probe_score_mode mode) {
    ra_model *m = tiny_model(variant, 40 + variant);
    int LH = m->cfg.num_layers * m->cfg.num_heads, N;
    probe_data d;
    random_data(&d, mode, 12, 6, m->cfg.vocab_size, 41 + variant);
    N = d.n_items;
    float *ag = calloc(LH, sizeof(float)), *ac = calloc(LH, sizeof(float));
    probe_outcome *bg = calloc(N, sizeof *bg), *bc = calloc(N, sizeof *bc);
    probe_opts o = {7, NULL};
    ra_error err = {0};
    EXPECT_MSG(probe_attribution_cuda(m, &d, &o, ag, bg, &err) == 0, "%s", err.msg);
    EXPECT_EQ_INT(probe_attribution_cpu(m, &d, &o, ac, bc, &err), 0);
    double mx = 0, md = 0;
    for (int i = 0; i < LH; i++) mx = fmax(mx, fabs(ac[i])), md = fmax(md, fabs(ag[i] - ac[i]));
    double rho = probe_spearman(ag, ac, LH);
    printf("# variant %d: attribution max |cpu| %.3g, max |gpu - cpu| %.3g, Spearman %.4f\n", variant, mx, md, rho);
    EXPECT(mx > 1e-3);
    EXPECT(md <= 0.05 * mx);
    EXPECT(rho >= 0.95);
    /* baseline log-probs of -20..-60: bf16 against fp32, about 1% */
    for (int i = 0; i < N; i++) EXPECT_NEAR(bg[i].logprob, bc[i].logprob, 0.05 + 0.015 * fabs(bc[i].logprob));
    free(ag), free(ac), free(bg), free(bc);
    probe_data_free(&d);
    ra_model_free(m);
}

TEST(gpu_attribution_matches_cpu_choice) { gpu_attribution_matches_cpu(0, PROBE_SCORE_CHOICE); }
TEST(gpu_attribution_matches_cpu_last_token_qwen) { gpu_attribution_matches_cpu(1, PROBE_SCORE_LAST_TOKEN); }

/* Save m as a Hugging Face directory with bf16 weights. */
static void save_hf_bf16(const ra_model *m, const char *dir) {
    mkdir(dir, 0755);
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_t *cfg = hf_config_to_json(&m->cfg);
    json_dump_file(cfg, path, 0);
    json_decref(cfg);
    ra_model_tensor *t;
    int n = ra_model_tensor_list((ra_model *)m, &t);
    st_write_tensor *w = calloc((size_t)n, sizeof *w);
    void **bufs = calloc((size_t)n, sizeof *bufs);
    for (int i = 0; i < n; i++) {
        size_t ne = (size_t)(t[i].shape[0] * (t[i].ndim == 2 ? t[i].shape[1] : 1));
        bufs[i] = malloc(ne * 2);
        ra_convert_from_f32(bufs[i], RA_BF16, *t[i].data, ne);
        w[i] = (st_write_tensor){t[i].name, RA_BF16, t[i].ndim, t[i].shape, bufs[i]};
    }
    ra_error err = {0};
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    EXPECT_MSG(st_write(path, w, n, NULL, &err) == 0, "%s", err.msg);
    for (int i = 0; i < n; i++) free(bufs[i]);
    free(bufs), free(w), free(t);
}

static int same_device_bytes(const void *a, const void *b, size_t bytes) {
    if (!a || !b) return a == b;
    unsigned char *x = malloc(bytes), *y = malloc(bytes);
    cuda_download(x, a, bytes);
    cuda_download(y, b, bytes);
    int same = memcmp(x, y, bytes) == 0;
    free(x), free(y);
    return same;
}

/* A model left in its checkpoint (ra_model_load_view) uploads to exactly
 * the device weights of its fp32 load; a session that preloads it, runs
 * attribution and then exact ablation (reusing attribution's baseline
 * pass) gives bit for bit the drops of a plain exact run on the fp32 load. */
TEST(gpu_view_upload_and_session_match_plain_runs) {
    for (int variant = 0; variant < 2; variant++) {
        ra_model *m = tiny_model(variant, 60 + variant);
        char dir[] = "/tmp/ra-test-gpu-probe-XXXXXX";
        if (!mkdtemp(dir)) return;
        save_hf_bf16(m, dir);
        ra_model *full = NULL, *v = NULL;
        ra_error err = {0};
        EXPECT_EQ_INT(ra_model_load(dir, &full, &err), 0);
        EXPECT_EQ_INT(ra_model_load_view(dir, &v, &err), 0);
        if (!full || !v) return;
        EXPECT(v->view != NULL);
        cuda_model *a, *b;
        EXPECT_EQ_INT(cuda_model_upload(full, &a, &err), 0);
        EXPECT_EQ_INT(cuda_model_upload(v, &b, &err), 0);
        const hf_config *c = &m->cfg;
        size_t D = c->hidden_size, I = c->intermediate_size, hd = c->head_dim, V = c->vocab_size;
        size_t qkv = (size_t)(c->num_heads + 2 * c->num_kv_heads) * hd, qd = (size_t)c->num_heads * hd;
        int same = same_device_bytes(a->embed, b->embed, V * D * 2) && same_device_bytes(a->final_norm, b->final_norm, D * 2) &&
                   (a->lm_head == a->embed) == (b->lm_head == b->embed) && same_device_bytes(a->lm_head, b->lm_head, V * D * 2);
        for (int l = 0; l < c->num_layers; l++) {
            cuda_layer_weights *x = &a->layers[l], *y = &b->layers[l];
            same = same && same_device_bytes(x->input_norm, y->input_norm, D * 2) &&
                   same_device_bytes(x->post_norm, y->post_norm, D * 2) &&
                   same_device_bytes(x->wqkv, y->wqkv, qkv * D * 2) && same_device_bytes(x->bqkv, y->bqkv, qkv * 2) &&
                   same_device_bytes(x->wo, y->wo, D * qd * 2) && same_device_bytes(x->bo, y->bo, D * 2) &&
                   same_device_bytes(x->w_gate_up, y->w_gate_up, 2 * I * D * 2) &&
                   same_device_bytes(x->w_down, y->w_down, D * I * 2) &&
                   memcmp(x->attn_slot, y->attn_slot, (size_t)c->num_heads) == 0;
        }
        printf("# variant %d: device weights from the view %s those from the fp32 load\n", variant,
               same ? "equal" : "DIFFER from");
        EXPECT(same);
        cuda_model_free(a), cuda_model_free(b);

        probe_data d;
        random_data(&d, variant ? PROBE_SCORE_LAST_TOKEN : PROBE_SCORE_CHOICE, 10, 5, c->vocab_size, 70 + variant);
        int LH = c->num_layers * c->num_heads, N = d.n_items, batch = 64; /* one chunk: the baseline is reused */
        run_out plain = run_engine(full, &d, batch, 1);
        run_out ses = {calloc(N, sizeof(probe_outcome)), NULL, calloc(LH, sizeof(float)), calloc(LH, sizeof(float))};
        float *attr = calloc(LH, sizeof(float));
        probe_opts o = {batch, NULL};
        EXPECT_MSG(probe_cuda_preload(v, &err) == 0, "%s", err.msg);
        EXPECT_MSG(probe_cuda_begin(v, &d, batch, &err) == 0, "%s", err.msg);
        EXPECT_MSG(probe_attribution_cuda(v, &d, &o, attr, ses.base, &err) == 0, "%s", err.msg);
        probe_exact_result r = {ses.base, NULL, ses.acc, ses.lp};
        EXPECT_MSG(probe_exact_cuda(v, &d, NULL, &o, &r, &err) == 0, "%s", err.msg);
        probe_cuda_end();
        int base_same = 1;
        for (int i = 0; i < N; i++)
            base_same &= ses.base[i].logprob == plain.base[i].logprob && ses.base[i].correct == plain.base[i].correct;
        int drops_same = memcmp(ses.lp, plain.lp, LH * sizeof(float)) == 0 &&
                         memcmp(ses.acc, plain.acc, LH * sizeof(float)) == 0;
        printf("# variant %d: session (view, attribution then exact) vs plain exact: baseline %s, drops %s\n", variant,
               base_same ? "same" : "DIFFER", drops_same ? "same" : "DIFFER");
        EXPECT(base_same && drops_same);
        run_free(&plain), run_free(&ses);
        free(attr);
        probe_data_free(&d);
        ra_model_free(full), ra_model_free(v), ra_model_free(m);
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) printf("# could not remove %s\n", dir);
    }
}

int main(void) {
    if (gpu_test_start()) return 1;
    RUN(gpu_engine_equals_zeroed_o_proj_choice);
    RUN(gpu_engine_equals_zeroed_o_proj_last_token_qwen);
    RUN(gpu_engine_matches_cpu_engine_and_is_deterministic);
    RUN(gpu_engine_measured_subset_equals_full_run);
    RUN(gpu_attribution_matches_cpu_choice);
    RUN(gpu_attribution_matches_cpu_last_token_qwen);
    RUN(gpu_view_upload_and_session_match_plain_runs);
    return test_summary();
}
