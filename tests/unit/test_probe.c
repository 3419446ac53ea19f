/* The probe engine on tiny random models (CPU):
 *  - candidate scoring (shared-prefix rows) against an independent scorer
 *    that runs one plain forward per candidate sequence;
 *  - exact ablation from cached residuals == a plain full forward of a copy
 *    of the model with that head's o_proj columns zeroed, for every head;
 *  - results independent of the batch size, and deterministic;
 *  - a planted dominant head ranks first;
 *  - attribution == finite differences of the objective, per head. */
#include "forward.h"
#include "probe.h"
#include "test.h"

static hf_config tiny_config(int variant) {
    hf_config c;
    memset(&c, 0, sizeof c);
    strcpy(c.model_type, variant == 1 ? "qwen2" : "llama");
    c.hidden_size = 32;
    c.intermediate_size = 48;
    c.num_layers = 3;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 8;
    c.vocab_size = 41;
    c.max_position_embeddings = 128;
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
        int is_embed = strstr(t[i].name, "embed") != NULL;
        for (int64_t j = 0; j < numel; j++) {
            float r = test_randf();
            w[j] = is_norm ? 1.0f + 0.2f * r : is_bias ? 0.3f * r : is_embed ? r : 0.5f * r;
        }
    }
    free(t);
    return m;
}

/* A deep copy of m's weights into a fresh model of the same config. */
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

/* Multiply the o_proj input columns of head (l, h) by f (0 = ablate). */
static void scale_head(ra_model *m, int l, int h, float f) {
    int D = m->cfg.hidden_size, H = m->cfg.num_heads, hd = m->cfg.head_dim;
    for (int i = 0; i < D; i++)
        for (int j = h * hd; j < (h + 1) * hd; j++) m->layers[l].wo[(size_t)i * H * hd + j] *= f;
}

/* Random prompts: `items` prompts of 9..16 tokens; choice mode with K
 * distinct candidates of 1..3 tokens drawn from a small alphabet so that
 * prefixes are shared (candidate 0 is the single token `force` when
 * force >= 0); last-token mode with an answer of 1..3 tokens. */
static void random_data_forced(probe_data *d, probe_score_mode mode, int items, int K, int V, uint64_t seed,
                               int32_t force) {
    memset(d, 0, sizeof *d);
    d->mode = mode;
    test_seed(seed);
    for (int i = 0; i < items; i++) {
        int32_t prompt[16], cand_tok[8][3];
        int n = 9 + (int)(test_rand_u64() % 8), len[8];
        for (int t = 0; t < n; t++) prompt[t] = (int32_t)(test_rand_u64() % V);
        int nc = mode == PROBE_SCORE_CHOICE ? K : 1;
        for (int c = 0; c < nc; c++) {
            int dup;
            do {
                len[c] = 1 + (int)(test_rand_u64() % 3);
                for (int j = 0; j < len[c]; j++) cand_tok[c][j] = (int32_t)(test_rand_u64() % 4); /* shared prefixes */
                if (c == 0 && force >= 0) len[0] = 1, cand_tok[0][0] = force;
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

static void random_data(probe_data *d, probe_score_mode mode, int items, int K, int V, uint64_t seed) {
    random_data_forced(d, mode, items, K, V, seed, -1);
}

/* Independent scorer: log-probability of a continuation by one plain full
 * forward over prompt + continuation, log-softmax in double. */
static double ref_logprob(ra_forward_state *s, const ra_model *m, const int32_t *prompt, int n, const int32_t *cont,
                          int nc, int only_last, int *top1_ok) {
    int V = m->cfg.vocab_size, T = n + nc - 1;
    int32_t seq[32];
    memcpy(seq, prompt, n * sizeof(int32_t));
    memcpy(seq + n, cont, (nc - 1) * sizeof(int32_t));
    float *logits = malloc((size_t)T * V * sizeof(float));
    ra_forward_opts o = {0};
    o.logits = logits;
    ra_error err = {0};
    ra_forward_cpu(s, seq, 1, T, &o, &err);
    double lp = 0;
    for (int i = only_last ? nc - 1 : 0; i < nc; i++) {
        const float *z = logits + (size_t)(n - 1 + i) * V;
        double mx = z[0], sum = 0;
        int am = 0;
        for (int v = 1; v < V; v++)
            if (z[v] > mx) mx = z[v], am = v;
        for (int v = 0; v < V; v++) sum += exp(z[v] - mx);
        lp += z[cont[i]] - mx - log(sum);
        if (top1_ok) *top1_ok = am == cont[i];
    }
    free(logits);
    return lp;
}

/* Rebuild each item's prompt and candidates from the data (the prompt is the
 * first row's tokens up to its scored suffix; candidates from targets). */
static void check_scoring(const ra_model *m, const probe_data *d) {
    ra_forward_state *s = ra_forward_state_create(m, 1, 32);
    probe_outcome *out = calloc(d->n_items, sizeof *out);
    ra_error err = {0};
    probe_opts o = {5, NULL};
    EXPECT_EQ_INT(probe_eval(&ra_forward_backend_cpu, m, d, NULL, &o, out, &err), 0);
    for (int i = 0; i < d->n_items; i++) {
        const probe_item *it = &d->items[i];
        const probe_row *r0 = &d->rows[it->first_row];
        int n = r0->n_tokens - r0->n_scored + 1; /* prompt length */
        double best = -INFINITY, lp_correct = 0;
        int best_c = -1, top1 = 0;
        for (int c = 0; c < it->n_cand; c++) {
            int32_t cont[4];
            int nc = 0;
            for (int t = it->cand_start[c]; t < it->cand_start[c + 1]; t++) cont[nc++] = it->targets[t].token;
            int last_only = d->mode == PROBE_SCORE_LAST_TOKEN;
            if (last_only) { /* the answer's earlier tokens are in the row */
                const probe_row *row = &d->rows[it->targets[0].row];
                n = row->n_tokens - (row->n_tokens - it->targets[0].pos) + 1;
                /* prompt+answer[:-1] is the row; score its last token only */
                double lp = ref_logprob(s, m, row->tokens, n, cont, 1, 0, &top1);
                lp_correct = lp;
                best_c = 0;
                break;
            }
            double lp = ref_logprob(s, m, r0->tokens, n, cont, nc, 0, NULL);
            if (c == it->correct) lp_correct = lp;
            if (lp > best) best = lp, best_c = c;
        }
        EXPECT_NEAR(out[i].logprob, lp_correct, 1e-4);
        if (d->mode == PROBE_SCORE_CHOICE) EXPECT_EQ_INT(out[i].correct, best_c == it->correct);
        else EXPECT_EQ_INT(out[i].correct, top1);
    }
    free(out);
    ra_forward_state_free(s);
}

TEST(choice_rows_share_prefixes_and_score_like_separate_forwards) {
    ra_model *m = tiny_model(0, 1);
    probe_data d;
    random_data(&d, PROBE_SCORE_CHOICE, 6, 6, m->cfg.vocab_size, 11);
    /* rows: never more than the candidates' distinct maximal prefixes, and
     * every target's row has the candidate's earlier tokens right after the prompt */
    for (int i = 0; i < d.n_items; i++) {
        const probe_item *it = &d.items[i];
        EXPECT(it->n_rows >= 1 && it->n_rows <= it->n_cand);
        for (int c = 0; c < it->n_cand; c++)
            for (int t = it->cand_start[c]; t < it->cand_start[c + 1]; t++) {
                const probe_target *tg = &it->targets[t];
                const probe_row *row = &d.rows[tg->row];
                int k = t - it->cand_start[c];
                EXPECT(tg->pos >= row->n_tokens - row->n_scored && tg->pos < row->n_tokens);
                for (int j = 0; j < k; j++) EXPECT(row->tokens[tg->pos - k + 1 + j] == it->targets[it->cand_start[c] + j].token);
            }
    }
    check_scoring(m, &d);
    probe_data_free(&d);
    ra_model_free(m);
}

TEST(last_token_scores_like_a_separate_forward) {
    ra_model *m = tiny_model(1, 2);
    probe_data d;
    random_data(&d, PROBE_SCORE_LAST_TOKEN, 8, 1, m->cfg.vocab_size, 12);
    check_scoring(m, &d);
    probe_data_free(&d);
    ra_model_free(m);
}

/* exact == brute force for every head, per prompt */
static void exact_vs_brute_force(int variant, probe_score_mode mode, int batch) {
    ra_model *m = tiny_model(variant, 3 + variant);
    int L = m->cfg.num_layers, H = m->cfg.num_heads;
    probe_data d;
    random_data(&d, mode, 7, 5, m->cfg.vocab_size, 21 + variant);
    int N = d.n_items;
    probe_exact_result r = {0};
    r.base = calloc(N, sizeof(probe_outcome));
    r.per_head = calloc((size_t)L * H * N, sizeof(probe_outcome));
    r.acc_drop = calloc(L * H, sizeof(float));
    r.logprob_drop = calloc(L * H, sizeof(float));
    probe_opts o = {batch, NULL};
    ra_error err = {0};
    EXPECT_EQ_INT(probe_exact(&ra_forward_backend_cpu, m, &d, NULL, &o, &r, &err), 0);
    probe_outcome *base = calloc(N, sizeof *base), *abl = calloc(N, sizeof *abl);
    probe_eval(&ra_forward_backend_cpu, m, &d, NULL, &o, base, &err);
    for (int i = 0; i < N; i++) {
        EXPECT_NEAR(r.base[i].logprob, base[i].logprob, 1e-5);
        EXPECT_EQ_INT(r.base[i].correct, base[i].correct);
    }
    for (int l = 0; l < L; l++)
        for (int h = 0; h < H; h++) {
            ra_model *z = copy_model(m);
            scale_head(z, l, h, 0.0f);
            probe_eval(&ra_forward_backend_cpu, z, &d, NULL, &o, abl, &err);
            double acc = 0, lp = 0;
            for (int i = 0; i < N; i++) {
                probe_outcome e = r.per_head[((size_t)l * H + h) * N + i];
                EXPECT_NEAR(e.logprob, abl[i].logprob, 1e-4);
                EXPECT_EQ_INT(e.correct, abl[i].correct);
                acc += (double)base[i].correct - abl[i].correct;
                lp += base[i].logprob - abl[i].logprob;
            }
            EXPECT_NEAR(r.acc_drop[l * H + h], acc / N, 1e-6);
            EXPECT_NEAR(r.logprob_drop[l * H + h], lp / N, 1e-4);
            ra_model_free(z);
        }
    free(base);
    free(abl);
    free(r.base);
    free(r.per_head);
    free(r.acc_drop);
    free(r.logprob_drop);
    probe_data_free(&d);
    ra_model_free(m);
}

TEST(exact_equals_zeroed_o_proj_every_head_choice) { exact_vs_brute_force(0, PROBE_SCORE_CHOICE, 6); }
TEST(exact_equals_zeroed_o_proj_every_head_last_token) { exact_vs_brute_force(1, PROBE_SCORE_LAST_TOKEN, 3); }
TEST(exact_equals_zeroed_o_proj_every_head_big_batch) { exact_vs_brute_force(0, PROBE_SCORE_CHOICE, 64); }

TEST(exact_is_deterministic_and_batch_independent) {
    ra_model *m = tiny_model(0, 5);
    int LH = m->cfg.num_layers * m->cfg.num_heads;
    probe_data d;
    random_data(&d, PROBE_SCORE_CHOICE, 9, 4, m->cfg.vocab_size, 31);
    float *a[3];
    int batches[3] = {8, 8, 40};
    for (int k = 0; k < 3; k++) {
        probe_exact_result r = {0};
        r.base = calloc(d.n_items, sizeof(probe_outcome));
        r.acc_drop = calloc(LH, sizeof(float));
        r.logprob_drop = a[k] = calloc(LH, sizeof(float));
        probe_opts o = {batches[k], NULL};
        ra_error err = {0};
        EXPECT_EQ_INT(probe_exact(&ra_forward_backend_cpu, m, &d, NULL, &o, &r, &err), 0);
        free(r.base);
        free(r.acc_drop);
    }
    EXPECT(memcmp(a[0], a[1], LH * sizeof(float)) == 0);
    for (int i = 0; i < LH; i++) EXPECT_NEAR(a[2][i], a[0][i], 1e-5);
    for (int k = 0; k < 3; k++) free(a[k]);
    probe_data_free(&d);
    ra_model_free(m);
}

TEST(only_requested_heads_are_measured) {
    ra_model *m = tiny_model(0, 6);
    int LH = m->cfg.num_layers * m->cfg.num_heads;
    probe_data d;
    random_data(&d, PROBE_SCORE_CHOICE, 4, 4, m->cfg.vocab_size, 41);
    uint8_t measure[64] = {0};
    measure[1] = measure[LH - 2] = 1;
    probe_exact_result r = {0}, full = {0};
    r.base = calloc(d.n_items, sizeof(probe_outcome));
    full.base = calloc(d.n_items, sizeof(probe_outcome));
    r.acc_drop = malloc(LH * sizeof(float));
    r.logprob_drop = malloc(LH * sizeof(float));
    full.acc_drop = calloc(LH, sizeof(float));
    full.logprob_drop = calloc(LH, sizeof(float));
    for (int i = 0; i < LH; i++) r.acc_drop[i] = r.logprob_drop[i] = -777.0f;
    ra_error err = {0};
    EXPECT_EQ_INT(probe_exact(&ra_forward_backend_cpu, m, &d, measure, NULL, &r, &err), 0);
    EXPECT_EQ_INT(probe_exact(&ra_forward_backend_cpu, m, &d, NULL, NULL, &full, &err), 0);
    for (int i = 0; i < LH; i++) {
        if (measure[i]) EXPECT_NEAR(r.logprob_drop[i], full.logprob_drop[i], 1e-5);
        else EXPECT(r.logprob_drop[i] == -777.0f && r.acc_drop[i] == -777.0f);
    }
    free(r.base), free(full.base), free(r.acc_drop), free(r.logprob_drop), free(full.acc_drop), free(full.logprob_drop);
    probe_data_free(&d);
    ra_model_free(m);
}

/* Plant a head that writes one token's unembedding direction, strongly, at
 * every position: its KV group's values are a constant (v bias, zero v
 * weights), its o_proj columns map that constant to alpha * lm_head[tau].
 * The planted model then prefers the candidate [tau] (every prompt has it)
 * by a wide margin; with its choice as the correct answer, ablating the
 * planted head costs far more than ablating any other. */
static void plant_head(ra_model *m, int l, int h, int32_t tau, float alpha) {
    int D = m->cfg.hidden_size, H = m->cfg.num_heads, hd = m->cfg.head_dim, G = H / m->cfg.num_kv_heads;
    ra_layer *Ly = &m->layers[l];
    int g = h / G;
    double bb = 0;
    for (int j = 0; j < hd; j++) bb += (double)Ly->bv[g * hd + j] * Ly->bv[g * hd + j];
    for (int r = g * hd; r < (g + 1) * hd; r++) memset(Ly->wv + (size_t)r * D, 0, D * sizeof(float));
    for (int i = 0; i < D; i++)
        for (int j = 0; j < hd; j++)
            Ly->wo[(size_t)i * H * hd + h * hd + j] = (float)(alpha * m->lm_head[(size_t)tau * D + i] * Ly->bv[g * hd + j] / bb);
}

TEST(planted_dominant_head_ranks_first) {
    for (int trial = 0; trial < 4; trial++) {
        ra_model *m = tiny_model(1, 50 + trial); /* qwen2 variant: q/k/v biases */
        int L = m->cfg.num_layers, H = m->cfg.num_heads, LH = L * H;
        int pl = trial < 2 ? L - 1 : L - 2, ph = (trial * 3 + 1) % H;
        int32_t tau = trial % 4;
        plant_head(m, pl, ph, tau, 50.0f);
        probe_data d;
        random_data_forced(&d, PROBE_SCORE_CHOICE, 10, 6, m->cfg.vocab_size, 60 + trial, tau);
        /* correct = what the planted model prefers */
        for (int i = 0; i < d.n_items; i++) {
            probe_outcome best = {-INFINITY, 0};
            int best_c = 0;
            for (int c = 0; c < d.items[i].n_cand; c++) {
                d.items[i].correct = c;
                probe_outcome out;
                probe_data one = d;
                one.items = &d.items[i];
                one.n_items = 1;
                ra_error err = {0};
                probe_eval(&ra_forward_backend_cpu, m, &one, NULL, NULL, &out, &err);
                if (out.logprob > best.logprob) best = out, best_c = c;
            }
            d.items[i].correct = best_c;
        }
        probe_exact_result r = {0};
        r.base = calloc(d.n_items, sizeof(probe_outcome));
        r.acc_drop = calloc(LH, sizeof(float));
        r.logprob_drop = calloc(LH, sizeof(float));
        ra_error err = {0};
        EXPECT_EQ_INT(probe_exact(&ra_forward_backend_cpu, m, &d, NULL, NULL, &r, &err), 0);
        int top = 0;
        for (int i = 1; i < LH; i++)
            if (r.logprob_drop[i] > r.logprob_drop[top]) top = i;
        EXPECT_MSG(top == pl * H + ph, "trial %d: top head %d/%d (drop %g), planted %d/%d (drop %g)", trial, top / H,
                   top % H, r.logprob_drop[top], pl, ph, r.logprob_drop[pl * H + ph]);
        for (int i = 0; i < d.n_items; i++) EXPECT(r.base[i].correct == 1);
        float acc_max = 0;
        for (int i = 0; i < LH; i++) acc_max = r.acc_drop[i] > acc_max ? r.acc_drop[i] : acc_max;
        EXPECT_NEAR(r.acc_drop[pl * H + ph], acc_max, 0);
        free(r.base), free(r.acc_drop), free(r.logprob_drop);
        probe_data_free(&d);
        ra_model_free(m);
    }
}

/* J(f) = mean log-prob of the correct answers with head (l, h)'s output
 * multiplied by f.  Attribution = dJ/df at f = 1 (the head's output · its
 * gradient), checked by central differences in f. */
static void attribution_vs_finite_differences(int variant, probe_score_mode mode) {
    ra_model *m = tiny_model(variant, 70 + variant);
    int L = m->cfg.num_layers, H = m->cfg.num_heads, LH = L * H;
    probe_data d;
    random_data(&d, mode, 5, 4, m->cfg.vocab_size, 80 + variant);
    int N = d.n_items;
    float *attr = calloc(LH, sizeof(float));
    probe_outcome *base = calloc(N, sizeof *base), *out = calloc(N, sizeof *out);
    probe_opts o = {4, NULL};
    ra_error err = {0};
    EXPECT_EQ_INT(probe_attribution_cpu(m, &d, &o, attr, base, &err), 0);
    double max_abs = 0;
    for (int i = 0; i < LH; i++) max_abs = fmax(max_abs, fabs(attr[i]));
    EXPECT(max_abs > 1e-3); /* the check below would pass trivially on zeros */
    for (int l = 0; l < L; l++)
        for (int h = 0; h < H; h++) {
            double eps = 1e-2, J[2];
            for (int k = 0; k < 2; k++) {
                ra_model *z = copy_model(m);
                scale_head(z, l, h, k ? 1.0f + (float)eps : 1.0f - (float)eps);
                probe_eval(&ra_forward_backend_cpu, z, &d, NULL, &o, out, &err);
                J[k] = 0;
                for (int i = 0; i < N; i++) J[k] += out[i].logprob / N;
                ra_model_free(z);
            }
            double fd = (J[1] - J[0]) / (2 * eps);
            EXPECT_MSG(fabs(attr[l * H + h] - fd) <= 2e-3 + 1e-2 * fabs(fd), "head %d/%d: attribution %g, finite difference %g",
                       l, h, attr[l * H + h], fd);
        }
    /* the baseline it reports is the plain evaluation */
    probe_eval(&ra_forward_backend_cpu, m, &d, NULL, &o, out, &err);
    for (int i = 0; i < N; i++) EXPECT_NEAR(base[i].logprob, out[i].logprob, 1e-6);
    free(attr), free(base), free(out);
    probe_data_free(&d);
    ra_model_free(m);
}

TEST(attribution_matches_finite_differences_choice) { attribution_vs_finite_differences(0, PROBE_SCORE_CHOICE); }
TEST(attribution_matches_finite_differences_last_token_qwen) {
    attribution_vs_finite_differences(1, PROBE_SCORE_LAST_TOKEN);
}

TEST(spearman_against_hand_values) {
    float a[5] = {1, 2, 3, 4, 5}, b[5] = {5, 6, 7, 8, 7}, c[5] = {5, 4, 3, 2, 1}, k[5] = {2, 2, 2, 2, 2};
    EXPECT_NEAR(probe_spearman(a, a, 5), 1.0, 1e-12);
    EXPECT_NEAR(probe_spearman(a, c, 5), -1.0, 1e-12);
    /* b ranks 1,2,3.5,5,3.5: Pearson of (1..5) with those = 0.8207826816681233 */
    EXPECT_NEAR(probe_spearman(a, b, 5), 0.8207826816681233, 1e-12);
    EXPECT(isnan(probe_spearman(a, k, 5)));
}

int main(void) {
    RUN(choice_rows_share_prefixes_and_score_like_separate_forwards);
    RUN(last_token_scores_like_a_separate_forward);
    RUN(exact_equals_zeroed_o_proj_every_head_choice);
    RUN(exact_equals_zeroed_o_proj_every_head_last_token);
    RUN(exact_equals_zeroed_o_proj_every_head_big_batch);
    RUN(exact_is_deterministic_and_batch_independent);
    RUN(only_requested_heads_are_measured);
    RUN(planted_dominant_head_ranks_first);
    RUN(attribution_matches_finite_differences_choice);
    RUN(attribution_matches_finite_differences_last_token_qwen);
    RUN(spearman_against_hand_values);
    return test_summary();
}
