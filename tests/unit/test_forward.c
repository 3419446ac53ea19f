/* The whole CPU forward pass against an independent float64 implementation
 * written here from DESIGN §2.1 and the Hugging Face Llama/Qwen2 code
 * (rotate_half RoPE, Llama-3 inverse-frequency scaling, GQA by repeating
 * key/value heads, softmax over causal keys, RMSNorm x/sqrt(mean x²+eps)·w),
 * on tiny random models; plus the options: ablation, hidden states,
 * probabilities, logit positions, starting from a cached residual, packed
 * documents. */
#include "forward.h"
#include "ref_f64.h"
#include "test.h"

/* ------------------------------------------------------------ the models */

static hf_config tiny_config(int variant) {
    hf_config c;
    memset(&c, 0, sizeof c);
    strcpy(c.model_type, variant == 1 ? "qwen2" : "llama");
    c.hidden_size = 48;
    c.intermediate_size = 80;
    c.num_layers = 3;
    c.num_heads = 6;
    c.num_kv_heads = 2;
    c.head_dim = variant == 2 ? 12 : 8; /* variant 2: head_dim ≠ hidden / heads */
    c.vocab_size = 97;
    c.max_position_embeddings = 128;
    c.rms_norm_eps = 1e-5;
    c.rope_theta = variant == 1 ? 10000.0 : 500000.0;
    if (variant != 1) {
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
        int is_embed = strstr(t[i].name, "embed") != NULL;
        for (int64_t j = 0; j < numel; j++) {
            float r = test_randf();
            w[j] = is_norm ? 1.0f + 0.2f * r : is_bias ? 0.3f * r : is_embed ? r : 0.35f * r;
        }
    }
    free(t);
    return m;
}

/* ------------------------------------------- float64 reference forward */

static double *dnew(size_t n) { return calloc(n ? n : 1, sizeof(double)); }

typedef struct ref_out {
    double *logits; /* [T, V] */
    double *hidden; /* [(layers+1), T, D] */
    double *probs;  /* [T, T] of (probs_layer, probs_head) */
    int probs_layer, probs_head;
} ref_out;

/* One sequence of T tokens.  ds: document start per token (NULL = 0);
 * keep: [layers*H] (NULL = all). */
static void ref_forward(const ra_model *m, int T, const int32_t *tok, const int32_t *ds, const uint8_t *keep,
                        ref_out *out) {
    const hf_config *c = &m->cfg;
    int D = c->hidden_size, H = c->num_heads, Hkv = c->num_kv_heads, hd = c->head_dim, I = c->intermediate_size;
    int V = c->vocab_size, layers = c->num_layers, rep = H / Hkv;
    double *x = dnew((size_t)T * D), *h = dnew(D), *q = dnew((size_t)T * H * hd), *k = dnew((size_t)T * Hkv * hd);
    double *v = dnew((size_t)T * Hkv * hd), *o = dnew((size_t)T * H * hd), *y = dnew(D), *g = dnew(I), *u = dnew(I);
    double *sc = dnew(T), invf[64];
    ref_inv_freq(invf, c);
    for (int t = 0; t < T; t++)
        for (int j = 0; j < D; j++) x[(size_t)t * D + j] = m->embed[(size_t)tok[t] * D + j];
    for (int l = 0; l < layers; l++) {
        const ra_layer *L = &m->layers[l];
        if (out->hidden) memcpy(out->hidden + (size_t)l * T * D, x, (size_t)T * D * sizeof(double));
        for (int t = 0; t < T; t++) {
            int pos = ds ? t - ds[t] : t;
            ref_rmsnorm(h, x + (size_t)t * D, L->input_norm, D, c->rms_norm_eps);
            ref_linear(q + (size_t)t * H * hd, h, L->wq, L->bq, D, H * hd);
            ref_linear(k + (size_t)t * Hkv * hd, h, L->wk, L->bk, D, Hkv * hd);
            ref_linear(v + (size_t)t * Hkv * hd, h, L->wv, L->bv, D, Hkv * hd);
            for (int a = 0; a < H; a++) ref_rope(q + ((size_t)t * H + a) * hd, hd, pos, invf);
            for (int a = 0; a < Hkv; a++) ref_rope(k + ((size_t)t * Hkv + a) * hd, hd, pos, invf);
        }
        memset(o, 0, (size_t)T * H * hd * sizeof(double));
        for (int a = 0; a < H; a++) {
            int kv = a / rep; /* repeat_kv: head a reads key/value head a / rep */
            for (int t = 0; t < T; t++) {
                int s0 = ds ? ds[t] : 0;
                double mx = -INFINITY, sum = 0;
                for (int s = s0; s <= t; s++) {
                    double d = 0;
                    for (int j = 0; j < hd; j++) d += q[((size_t)t * H + a) * hd + j] * k[((size_t)s * Hkv + kv) * hd + j];
                    sc[s] = d / sqrt((double)hd);
                    mx = fmax(mx, sc[s]);
                }
                for (int s = s0; s <= t; s++) sum += (sc[s] = exp(sc[s] - mx));
                for (int s = 0; s < T; s++) {
                    double p = s >= s0 && s <= t ? sc[s] / sum : 0;
                    if (out->probs && l == out->probs_layer && a == out->probs_head) out->probs[(size_t)t * T + s] = p;
                    if (p == 0 || (keep && !keep[l * H + a])) continue;
                    for (int j = 0; j < hd; j++) o[((size_t)t * H + a) * hd + j] += p * v[((size_t)s * Hkv + kv) * hd + j];
                }
            }
        }
        for (int t = 0; t < T; t++) {
            double *xt = x + (size_t)t * D;
            ref_linear(y, o + (size_t)t * H * hd, L->wo, L->bo, H * hd, D);
            for (int j = 0; j < D; j++) xt[j] += y[j];
            ref_rmsnorm(h, xt, L->post_norm, D, c->rms_norm_eps);
            ref_linear(g, h, L->w_gate, NULL, D, I);
            ref_linear(u, h, L->w_up, NULL, D, I);
            for (int j = 0; j < I; j++) g[j] = g[j] / (1 + exp(-g[j])) * u[j];
            ref_linear(y, g, L->w_down, NULL, I, D);
            for (int j = 0; j < D; j++) xt[j] += y[j];
        }
    }
    if (out->hidden) memcpy(out->hidden + (size_t)layers * T * D, x, (size_t)T * D * sizeof(double));
    if (out->logits)
        for (int t = 0; t < T; t++) {
            ref_rmsnorm(h, x + (size_t)t * D, m->final_norm, D, c->rms_norm_eps);
            ref_linear(out->logits + (size_t)t * V, h, m->lm_head, NULL, D, V);
        }
    free(x), free(h), free(q), free(k), free(v), free(o), free(y), free(g), free(u), free(sc);
}

/* max |a−b| / max |b| */
static double rel_err(const float *a, const double *b, size_t n) {
    double e = 0, s = 1e-30;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= e)) e = d;
        s = fmax(s, fabs(b[i]));
    }
    return e / s;
}

static double rel_err_f(const float *a, const float *b, size_t n) {
    double e = 0, s = 1e-30;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= e)) e = d;
        s = fmax(s, fabs(b[i]));
    }
    return e / s;
}

static int32_t *rand_tokens(int n, int V) {
    int32_t *t = malloc((size_t)n * sizeof *t);
    for (int i = 0; i < n; i++) t[i] = (int32_t)(test_rand_u64() % (uint64_t)V);
    return t;
}

#define TOL 2e-5 /* fp32 forward vs float64, relative to the largest value */

/* ------------------------------------------------------------------ tests */

TEST(logits_match_float64_reference) {
    for (int variant = 0; variant < 3; variant++) {
        ra_model *m = tiny_model(variant, 100 + variant);
        const hf_config *c = &m->cfg;
        int T = 40, V = c->vocab_size;
        int32_t *tok = rand_tokens(T, V);
        ra_forward_state *s = ra_forward_state_create(m, 1, T);
        float *logits = malloc((size_t)T * V * sizeof(float));
        ra_forward_opts o = {0};
        o.logits = logits;
        ra_error err = {0};
        EXPECT_EQ_INT(ra_forward_cpu(s, tok, 1, T, &o, &err), 0);
        ref_out r = {.logits = dnew((size_t)T * V)};
        ref_forward(m, T, tok, NULL, NULL, &r);
        double e = rel_err(logits, r.logits, (size_t)T * V);
        printf("# variant %d: max |Δlogit| / max |logit| = %.3g\n", variant, e);
        EXPECT_MSG(e < TOL, "variant %d: logits rel err %g", variant, e);
        /* the logits are not trivially small or constant */
        double mx = 0;
        for (size_t i = 0; i < (size_t)T * V; i++) mx = fmax(mx, fabs(r.logits[i]));
        EXPECT(mx > 1);
        free(tok), free(logits), free(r.logits);
        ra_forward_state_free(s);
        ra_model_free(m);
    }
}

/* Two rows, each with its own ablation set, in one call; each row matches
 * the reference with that mask, and equals zeroing o_proj columns. */
TEST(ablation_per_row_equals_zeroed_o_proj_columns) {
    ra_model *m = tiny_model(0, 200);
    const hf_config *c = &m->cfg;
    int B = 2, T = 24, V = c->vocab_size, H = c->num_heads, layers = c->num_layers, hd = c->head_dim;
    int32_t *tok = rand_tokens(T, V), *tok2 = malloc((size_t)B * T * 4);
    memcpy(tok2, tok, (size_t)T * 4);
    memcpy(tok2 + T, tok, (size_t)T * 4);
    uint8_t *keep = malloc((size_t)B * layers * H);
    memset(keep, 1, (size_t)B * layers * H);
    keep[0 * layers * H + 1 * H + 2] = 0;             /* row 0: layer 1 head 2 */
    keep[1 * layers * H + 0 * H + 5] = 0;             /* row 1: layer 0 head 5 and layer 2 head 0 */
    keep[1 * layers * H + 2 * H + 0] = 0;
    ra_forward_state *s = ra_forward_state_create(m, B, T);
    float *logits = malloc((size_t)B * T * V * 4), *plain = malloc((size_t)T * V * 4);
    ra_forward_opts o = {0};
    o.head_keep = keep;
    o.logits = logits;
    ra_error err = {0};
    EXPECT_EQ_INT(ra_forward_cpu(s, tok2, B, T, &o, &err), 0);
    ra_forward_opts o2 = {0};
    o2.logits = plain;
    EXPECT_EQ_INT(ra_forward_cpu(s, tok, 1, T, &o2, &err), 0);
    for (int b = 0; b < B; b++) {
        ref_out r = {.logits = dnew((size_t)T * V)};
        ref_forward(m, T, tok, NULL, keep + (size_t)b * layers * H, &r);
        double e = rel_err(logits + (size_t)b * T * V, r.logits, (size_t)T * V);
        EXPECT_MSG(e < TOL, "row %d: ablated logits rel err %g", b, e);
        /* and the ablation changed something */
        EXPECT(rel_err_f(logits + (size_t)b * T * V, plain, (size_t)T * V) > 1e-3);
        free(r.logits);
    }
    /* zero the o_proj input columns of row 0's head instead */
    float *wo = m->layers[1].wo;
    for (int i = 0; i < c->hidden_size; i++) memset(wo + (size_t)i * H * hd + 2 * hd, 0, (size_t)hd * 4);
    EXPECT_EQ_INT(ra_forward_cpu(s, tok, 1, T, &o2, &err), 0);
    double e = rel_err_f(plain, logits, (size_t)T * V);
    EXPECT_MSG(e < 1e-5, "mask vs zeroed o_proj columns: rel err %g", e);
    free(tok), free(tok2), free(keep), free(logits), free(plain);
    ra_forward_state_free(s);
    ra_model_free(m);
}

TEST(hidden_states_and_probabilities_match_reference) {
    ra_model *m = tiny_model(2, 300);
    const hf_config *c = &m->cfg;
    int T = 30, D = c->hidden_size, layers = c->num_layers;
    int32_t *tok = rand_tokens(T, c->vocab_size);
    float *hid = malloc((size_t)(layers + 1) * T * D * 4), *slots[8];
    for (int l = 0; l <= layers; l++) slots[l] = hid + (size_t)l * T * D;
    ra_head_ref req[2] = {{0, 1}, {2, 5}};
    float *probs = malloc((size_t)2 * T * T * 4);
    ra_forward_state *s = ra_forward_state_create(m, 1, T);
    ra_forward_opts o = {0};
    o.hidden_out = slots;
    o.n_probs = 2;
    o.probs_heads = req;
    o.probs_out = probs;
    ra_error err = {0};
    EXPECT_EQ_INT(ra_forward_cpu(s, tok, 1, T, &o, &err), 0);
    ref_out r = {.hidden = dnew((size_t)(layers + 1) * T * D)};
    ref_forward(m, T, tok, NULL, NULL, &r);
    for (int l = 0; l <= layers; l++) {
        double e = rel_err(slots[l], r.hidden + (size_t)l * T * D, (size_t)T * D);
        EXPECT_MSG(e < TOL, "hidden slot %d rel err %g", l, e);
    }
    for (int i = 0; i < 2; i++) {
        ref_out rp = {.probs = dnew((size_t)T * T), .probs_layer = req[i].layer, .probs_head = req[i].head};
        ref_forward(m, T, tok, NULL, NULL, &rp);
        double e = rel_err(probs + (size_t)i * T * T, rp.probs, (size_t)T * T);
        EXPECT_MSG(e < TOL, "probs (%d,%d) rel err %g", req[i].layer, req[i].head, e);
        /* rows sum to 1, nothing above the diagonal */
        for (int t = 0; t < T; t++) {
            double sum = 0;
            for (int u = 0; u < T; u++) sum += probs[((size_t)i * T + t) * T + u];
            EXPECT_NEAR(sum, 1.0, 1e-5);
            if (t + 1 < T) EXPECT(probs[((size_t)i * T + t) * T + t + 1] == 0);
        }
        free(rp.probs);
    }
    free(tok), free(hid), free(probs), free(r.hidden);
    ra_forward_state_free(s);
    ra_model_free(m);
}

TEST(logits_at_chosen_positions) {
    ra_model *m = tiny_model(1, 400);
    const hf_config *c = &m->cfg;
    int B = 3, T = 17, V = c->vocab_size;
    int32_t *tok = rand_tokens(B * T, V);
    float *all = malloc((size_t)B * T * V * 4), *some = malloc((size_t)B * T * V * 4);
    int32_t counts[3] = {2, 0, 3}, pos[5] = {16, 3, 0, 16, 7};
    ra_forward_state *s = ra_forward_state_create(m, B, T);
    ra_forward_opts o = {0};
    o.logits = all;
    ra_error err = {0};
    EXPECT_EQ_INT(ra_forward_cpu(s, tok, B, T, &o, &err), 0);
    o.logits = some;
    o.logit_counts = counts;
    o.logit_positions = pos;
    EXPECT_EQ_INT(ra_forward_cpu(s, tok, B, T, &o, &err), 0);
    int rows[5][2] = {{0, 16}, {0, 3}, {2, 0}, {2, 16}, {2, 7}};
    for (int i = 0; i < 5; i++) {
        const float *want = all + ((size_t)rows[i][0] * T + rows[i][1]) * V;
        EXPECT_MSG(rel_err_f(some + (size_t)i * V, want, V) < 1e-6, "selected row %d differs", i);
    }
    /* and row 2 matches the reference outright */
    ref_out r = {.logits = dnew((size_t)T * V)};
    ref_forward(m, T, tok + 2 * T, NULL, NULL, &r);
    EXPECT(rel_err(some + (size_t)4 * V, r.logits + (size_t)7 * V, V) < TOL);
    free(tok), free(all), free(some), free(r.logits);
    ra_forward_state_free(s);
    ra_model_free(m);
}

/* ra-probe's exact ablation: cache the unablated residual entering layer l,
 * start there with a head of layer ≥ l ablated: same logits as the full
 * ablated forward. */
TEST(start_from_cached_residual_equals_full_forward) {
    ra_model *m = tiny_model(0, 500);
    const hf_config *c = &m->cfg;
    int T = 21, D = c->hidden_size, V = c->vocab_size, H = c->num_heads, layers = c->num_layers;
    int32_t *tok = rand_tokens(T, V);
    float *hid = malloc((size_t)(layers + 1) * T * D * 4), *slots[8];
    for (int l = 0; l <= layers; l++) slots[l] = hid + (size_t)l * T * D;
    ra_forward_state *s = ra_forward_state_create(m, 1, T);
    ra_error err = {0};
    ra_forward_opts o = {0};
    o.hidden_out = slots;
    EXPECT_EQ_INT(ra_forward_cpu(s, tok, 1, T, &o, &err), 0);
    uint8_t *keep = malloc((size_t)layers * H);
    float *full = malloc((size_t)T * V * 4), *part = malloc((size_t)T * V * 4);
    for (int l = 1; l < layers; l++) {
        memset(keep, 1, (size_t)layers * H);
        keep[l * H + (l * 2) % H] = 0;
        ra_forward_opts a = {0};
        a.head_keep = keep;
        a.logits = full;
        EXPECT_EQ_INT(ra_forward_cpu(s, tok, 1, T, &a, &err), 0);
        a.logits = part;
        a.start_layer = l;
        a.start_hidden = slots[l];
        EXPECT_EQ_INT(ra_forward_cpu(s, NULL, 1, T, &a, &err), 0);
        EXPECT_MSG(memcmp(full, part, (size_t)T * V * 4) == 0, "layer %d: cached start differs (rel %g)", l,
                   rel_err_f(part, full, (size_t)T * V));
    }
    /* stop_layer: hidden states only, up to a layer */
    float *h2 = malloc((size_t)T * D * 4), *slots2[8] = {0};
    slots2[2] = h2;
    ra_forward_opts st = {0};
    st.stop_layer = 2;
    st.hidden_out = slots2;
    EXPECT_EQ_INT(ra_forward_cpu(s, tok, 1, T, &st, &err), 0);
    EXPECT(memcmp(h2, slots[2], (size_t)T * D * 4) == 0);
    free(tok), free(hid), free(keep), free(full), free(part), free(h2);
    ra_forward_state_free(s);
    ra_model_free(m);
}

/* Two documents packed in one row: with doc_start (positions restarting)
 * each document's logits equal its own forward. */
TEST(packed_documents_do_not_interact) {
    ra_model *m = tiny_model(2, 600);
    const hf_config *c = &m->cfg;
    int T1 = 9, T2 = 14, T = T1 + T2, V = c->vocab_size;
    int32_t *tok = rand_tokens(T, V), ds[23];
    for (int t = 0; t < T; t++) ds[t] = t < T1 ? 0 : T1;
    ra_forward_state *s = ra_forward_state_create(m, 1, T);
    float *packed = malloc((size_t)T * V * 4), *alone = malloc((size_t)T2 * V * 4);
    ra_forward_opts o = {0};
    o.doc_start = ds;
    o.logits = packed;
    ra_error err = {0};
    EXPECT_EQ_INT(ra_forward_cpu(s, tok, 1, T, &o, &err), 0);
    ra_forward_opts o2 = {0};
    o2.logits = alone;
    EXPECT_EQ_INT(ra_forward_cpu(s, tok + T1, 1, T2, &o2, &err), 0);
    double e = rel_err_f(packed + (size_t)T1 * V, alone, (size_t)T2 * V);
    EXPECT_MSG(e < 1e-5, "second packed document vs alone: rel err %g", e);
    ref_out r = {.logits = dnew((size_t)T * V)};
    ref_forward(m, T, tok, ds, NULL, &r);
    EXPECT(rel_err(packed, r.logits, (size_t)T * V) < TOL);
    free(tok), free(packed), free(alone), free(r.logits);
    ra_forward_state_free(s);
    ra_model_free(m);
}

TEST(bad_inputs_are_refused) {
    ra_model *m = tiny_model(0, 700);
    int T = 5, V = m->cfg.vocab_size;
    int32_t tok[5] = {1, 2, V, 3, 4};
    float *logits = malloc((size_t)T * V * 4);
    ra_forward_state *s = ra_forward_state_create(m, 1, T);
    ra_forward_opts o = {0};
    o.logits = logits;
    ra_error err = {0};
    EXPECT_EQ_INT(ra_forward_cpu(s, tok, 1, T, &o, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "position 2") && strstr(err.msg, "token id"));
    tok[2] = 0;
    EXPECT_EQ_INT(ra_forward_cpu(s, tok, 1, T + 1, &o, &err), EX_USAGE); /* larger than the state */
    o.start_layer = 1;
    EXPECT_EQ_INT(ra_forward_cpu(s, tok, 1, T, &o, &err), EX_USAGE); /* no start_hidden */
    o.start_layer = 0;
    o.stop_layer = 1;
    EXPECT_EQ_INT(ra_forward_cpu(s, tok, 1, T, &o, &err), EX_USAGE); /* logits without every layer */
    o.stop_layer = 0;
    ra_head_ref bad = {3, 0};
    o.n_probs = 1;
    o.probs_heads = &bad;
    o.probs_out = logits;
    EXPECT_EQ_INT(ra_forward_cpu(s, tok, 1, T, &o, &err), EX_USAGE);
    o.n_probs = 0;
    int32_t ds[5] = {0, 0, 3, 0, 0};
    o.doc_start = ds;
    EXPECT_EQ_INT(ra_forward_cpu(s, tok, 1, T, &o, &err), EX_DATAERR);
    o.doc_start = NULL;
    EXPECT_EQ_INT(ra_forward_cpu(s, tok, 1, T, &o, &err), 0);
    free(logits);
    ra_forward_state_free(s);
    ra_model_free(m);
}

int main(void) {
    RUN(logits_match_float64_reference);
    RUN(ablation_per_row_equals_zeroed_o_proj_columns);
    RUN(hidden_states_and_probabilities_match_reference);
    RUN(logits_at_chosen_positions);
    RUN(start_from_cached_residual_equals_full_forward);
    RUN(packed_documents_do_not_interact);
    RUN(bad_inputs_are_refused);
    return test_summary();
}
