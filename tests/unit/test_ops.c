/* Every CPU op of lib/ops.h against a float64 reference written here, on
 * random inputs (never zeros), at sizes below and above the OpenMP
 * thresholds. */
#include "ops.h"
#include "test.h"

static float *rnd(size_t n, float scale) {
    float *x = malloc(n * sizeof(float));
    test_fill(x, n, scale);
    return x;
}

/* max |a-b| / max(1, max|b|) */
static double max_rel_err(const float *a, const double *b, size_t n) {
    double e = 0, s = 1;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= e)) e = d; /* NaN-propagating */
        if (fabs(b[i]) > s) s = fabs(b[i]);
    }
    return e / s;
}

TEST(embedding_gathers_rows) {
    test_seed(11);
    int V = 50, D = 24, n = 33;
    float *table = rnd((size_t)V * D, 1), *out = malloc((size_t)n * D * 4);
    int32_t tok[33];
    for (int i = 0; i < n; i++) tok[i] = (int32_t)(test_rand_u64() % V);
    embedding_forward(out, tok, table, n, D);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < D; j++) EXPECT(out[i * D + j] == table[tok[i] * D + j]);
    free(table), free(out);
}

static void check_rmsnorm(int n, int D) {
    float *x = rnd((size_t)n * D, 3), *w = rnd(D, 1), *y = malloc((size_t)n * D * 4), *r = malloc(n * 4);
    double *ref = malloc((size_t)n * D * 8);
    float eps = 1e-5f;
    rmsnorm_forward(y, r, x, w, n, D, eps);
    double rerr = 0;
    for (int i = 0; i < n; i++) {
        double ss = 0;
        for (int j = 0; j < D; j++) ss += (double)x[i * D + j] * x[i * D + j];
        double rs = 1 / sqrt(ss / D + eps);
        rerr = fmax(rerr, fabs(r[i] - rs) / rs);
        for (int j = 0; j < D; j++) ref[(size_t)i * D + j] = x[(size_t)i * D + j] * rs * w[j];
    }
    double e = max_rel_err(y, ref, (size_t)n * D);
    EXPECT_MSG(e < 2e-6, "rmsnorm n=%d D=%d: rel err %g", n, D, e);
    EXPECT_MSG(rerr < 1e-6, "rstd rel err %g", rerr);
    free(x), free(w), free(y), free(r), free(ref);
}
TEST(rmsnorm_matches_float64) {
    test_seed(12);
    check_rmsnorm(5, 17);
    check_rmsnorm(300, 256); /* OpenMP path */
}

static void check_linear(int n, int in, int out, int with_bias) {
    float *x = rnd((size_t)n * in, 1), *W = rnd((size_t)out * in, 0.5f), *b = with_bias ? rnd(out, 1) : NULL;
    float *y = malloc((size_t)n * out * 4);
    double *ref = malloc((size_t)n * out * 8);
    linear_forward(y, x, W, b, n, in, out);
    for (int i = 0; i < n; i++)
        for (int o = 0; o < out; o++) {
            double s = b ? b[o] : 0;
            for (int k = 0; k < in; k++) s += (double)x[(size_t)i * in + k] * W[(size_t)o * in + k];
            ref[(size_t)i * out + o] = s;
        }
    double e = max_rel_err(y, ref, (size_t)n * out);
    EXPECT_MSG(e < 1e-5, "linear %dx%d->%d bias=%d: rel err %g", n, in, out, with_bias, e);
    free(x), free(W), free(b), free(y), free(ref);
}
TEST(linear_matches_float64) {
    test_seed(13);
    check_linear(1, 7, 5, 0);
    check_linear(37, 53, 29, 1);
    check_linear(130, 96, 200, 1);
    check_linear(64, 128, 64, 0);
}

static hf_config rope_cfg(int llama3) {
    hf_config c;
    memset(&c, 0, sizeof c);
    c.rope_theta = 500000.0;
    c.rope_type = llama3 ? RA_ROPE_LLAMA3 : RA_ROPE_DEFAULT;
    c.rope_factor = 8;
    c.rope_low_freq_factor = 1;
    c.rope_high_freq_factor = 4;
    c.rope_original_max_position_embeddings = 32;
    return c;
}

/* Llama-3 scaling from the Meta reference (apply_scaling in llama/model.py),
 * written per frequency in float64. */
static double llama3_ref(double freq, const hf_config *c) {
    double wavelen = 2 * M_PI / freq;
    double low_wl = c->rope_original_max_position_embeddings / c->rope_low_freq_factor;
    double high_wl = c->rope_original_max_position_embeddings / c->rope_high_freq_factor;
    if (wavelen < high_wl) return freq;
    if (wavelen > low_wl) return freq / c->rope_factor;
    double smooth = (c->rope_original_max_position_embeddings / wavelen - c->rope_low_freq_factor) /
                    (c->rope_high_freq_factor - c->rope_low_freq_factor);
    return (1 - smooth) * freq / c->rope_factor + smooth * freq;
}

TEST(rope_inv_freq_default_and_llama3) {
    for (int llama3 = 0; llama3 <= 1; llama3++) {
        hf_config c = rope_cfg(llama3);
        int hd = 64;
        float f[32];
        rope_inv_freq(f, hd, &c);
        int n_scaled = 0, n_smooth = 0;
        for (int i = 0; i < hd / 2; i++) {
            double base = 1.0 / pow(c.rope_theta, 2.0 * i / hd);
            double want = llama3 ? llama3_ref(base, &c) : base;
            EXPECT_MSG(fabs(f[i] - want) <= 1e-6 * want, "llama3=%d inv_freq[%d] = %g, want %g", llama3, i, f[i], want);
            if (llama3 && want < base * 0.99) n_scaled++;
            if (llama3 && want < base * 0.99 && want > base / 8 * 1.01) n_smooth++;
        }
        /* the chosen config must exercise all three bands */
        if (llama3) EXPECT(n_scaled > 0 && n_smooth > 0 && n_scaled < hd / 2);
    }
}

TEST(rope_rotates_pairs_half_apart) {
    test_seed(14);
    hf_config c = rope_cfg(1);
    int n = 40, heads = 3, hd = 32, half = hd / 2;
    float inv[16];
    rope_inv_freq(inv, hd, &c);
    int32_t pos[40];
    for (int i = 0; i < n; i++) pos[i] = (int32_t)(test_rand_u64() % 300);
    float *cs = malloc((size_t)n * half * 4), *sn = malloc((size_t)n * half * 4);
    rope_tables(cs, sn, pos, n, inv, hd);
    float *x = rnd((size_t)n * heads * hd, 2);
    double *ref = malloc((size_t)n * heads * hd * 8);
    for (int i = 0; i < n; i++)
        for (int h = 0; h < heads; h++)
            for (int j = 0; j < hd; j++) {
                const float *v = x + ((size_t)i * heads + h) * hd;
                double ang = (double)pos[i] * inv[j % half];
                double rot = j < half ? -(double)v[j + half] : (double)v[j - half]; /* rotate_half */
                ref[((size_t)i * heads + h) * hd + j] = v[j] * cos(ang) + rot * sin(ang);
            }
    rope_forward(x, cs, sn, n, heads, hd);
    /* angles up to ~300 rad are rounded to fp32 (as HF does): ~2e-5 rad */
    double e = max_rel_err(x, ref, (size_t)n * heads * hd);
    EXPECT_MSG(e < 1e-4, "rope rel err %g", e);
    free(cs), free(sn), free(x), free(ref);
}

static void check_attention(int B, int T, int H, int Hkv, int hd, int with_docs) {
    size_t nq = (size_t)B * T * H * hd, nkv = (size_t)B * T * Hkv * hd;
    float *q = rnd(nq, 1.5f), *k = rnd(nkv, 1.5f), *v = rnd(nkv, 1), *out = malloc(nq * 4);
    float *probs = malloc((size_t)B * H * T * T * 4);
    int32_t *ds = NULL;
    if (with_docs) { /* random document boundaries per row */
        ds = malloc((size_t)B * T * 4);
        for (int b = 0; b < B; b++) {
            int start = 0;
            for (int t = 0; t < T; t++) {
                if (t > 0 && test_rand_u64() % 5 == 0) start = t;
                ds[b * T + t] = start;
            }
        }
    }
    attention_forward(out, probs, q, k, v, ds, B, T, H, Hkv, hd);
    double *ref = calloc(nq, 8), *pref = calloc((size_t)B * H * T * T, 8), *sc = malloc(T * 8);
    int rep = H / Hkv;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                int g = h / rep, s0 = ds ? ds[b * T + t] : 0;
                double mx = -INFINITY, sum = 0;
                for (int s = 0; s <= t; s++) {
                    double d = 0;
                    for (int j = 0; j < hd; j++)
                        d += (double)q[(((size_t)b * T + t) * H + h) * hd + j] * k[(((size_t)b * T + s) * Hkv + g) * hd + j];
                    sc[s] = d / sqrt(hd);
                    if (s >= s0 && sc[s] > mx) mx = sc[s];
                }
                for (int s = s0; s <= t; s++) sum += exp(sc[s] - mx);
                for (int s = s0; s <= t; s++) {
                    double w = exp(sc[s] - mx) / sum;
                    pref[(((size_t)b * H + h) * T + t) * T + s] = w;
                    for (int j = 0; j < hd; j++)
                        ref[(((size_t)b * T + t) * H + h) * hd + j] += w * v[(((size_t)b * T + s) * Hkv + g) * hd + j];
                }
            }
    double e = max_rel_err(out, ref, nq), ep = max_rel_err(probs, pref, (size_t)B * H * T * T);
    EXPECT_MSG(e < 1e-5, "attention B=%d T=%d H=%d Hkv=%d hd=%d docs=%d: out rel err %g", B, T, H, Hkv, hd, with_docs, e);
    EXPECT_MSG(ep < 1e-5, "attention probs rel err %g", ep);
    /* without probs the output is the same */
    float *out2 = malloc(nq * 4);
    attention_forward(out2, NULL, q, k, v, ds, B, T, H, Hkv, hd);
    EXPECT(memcmp(out, out2, nq * 4) == 0);
    free(q), free(k), free(v), free(out), free(out2), free(probs), free(ds), free(ref), free(pref), free(sc);
}
TEST(attention_causal_gqa_matches_float64) {
    test_seed(15);
    check_attention(1, 1, 2, 1, 8, 0);
    check_attention(2, 13, 6, 2, 16, 0);
    check_attention(2, 13, 4, 4, 12, 1);
    check_attention(2, 70, 4, 2, 32, 0); /* OpenMP path */
    check_attention(3, 64, 6, 3, 16, 1);
}

TEST(head_mask_zeroes_only_ablated_heads) {
    test_seed(16);
    int B = 3, T = 5, H = 4, hd = 6;
    size_t n = (size_t)B * T * H * hd;
    float *x = rnd(n, 1), *orig = malloc(n * 4);
    memcpy(orig, x, n * 4);
    uint8_t keep[12];
    for (int i = 0; i < B * H; i++) keep[i] = (uint8_t)(test_rand_u64() % 2);
    keep[0] = 0, keep[1] = 1;
    head_mask_apply(x, keep, B, T, H, hd);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++)
                for (int j = 0; j < hd; j++) {
                    size_t i = (((size_t)b * T + t) * H + h) * hd + j;
                    EXPECT(x[i] == (keep[b * H + h] ? orig[i] : 0.0f));
                }
    head_mask_apply(x, NULL, B, T, H, hd); /* NULL keeps everything */
    free(x), free(orig);
}

TEST(swiglu_and_residual_match_float64) {
    test_seed(17);
    for (int64_t n = 7; n <= 70007; n += 70000) {
        float *g = rnd(n, 6), *u = rnd(n, 2), *y = malloc(n * 4), *x = rnd(n, 1), *x0 = malloc(n * 4);
        double *ref = malloc(n * 8);
        swiglu_forward(y, g, u, n);
        for (int64_t i = 0; i < n; i++) ref[i] = (double)g[i] / (1 + exp(-(double)g[i])) * u[i];
        double e = max_rel_err(y, ref, n);
        EXPECT_MSG(e < 1e-6, "swiglu n=%lld rel err %g", (long long)n, e);
        memcpy(x0, x, n * 4);
        residual_add(x, u, n);
        for (int64_t i = 0; i < n; i++) EXPECT(x[i] == (float)((double)x0[i] + u[i]));
        free(g), free(u), free(y), free(x), free(x0), free(ref);
    }
}

int main(void) {
    RUN(embedding_gathers_rows);
    RUN(rmsnorm_matches_float64);
    RUN(linear_matches_float64);
    RUN(rope_inv_freq_default_and_llama3);
    RUN(rope_rotates_pairs_half_apart);
    RUN(attention_causal_gqa_matches_float64);
    RUN(head_mask_zeroes_only_ablated_heads);
    RUN(swiglu_and_residual_match_float64);
    return test_summary();
}
