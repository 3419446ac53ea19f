/* AdamW (lib/optim.h) against a float64 implementation of the published
 * algorithm written here (Loshchilov & Hutter's decoupled weight decay as
 * torch.optim.AdamW applies it: decay scaled by lr, bias-corrected
 * moments, eps outside the square root); freezing, clipping, NaN/Inf
 * detection; and the warmup-stable-decay schedule at its boundaries. */
#include <omp.h>

#include "optim.h"
#include "schedule.h"
#include "test.h"

/* ------------------------------------------------ float64 reference */

typedef struct {
    int64_t n;
    double *w, *m, *v;
    int decay;
} ref_param;

static void ref_init(ref_param *r, const float *w, int64_t n, int decay) {
    r->n = n, r->decay = decay;
    r->w = malloc(n * 8), r->m = calloc(n, 8), r->v = calloc(n, 8);
    for (int64_t i = 0; i < n; i++) r->w[i] = w[i];
}
static void ref_free(ref_param *r) { free(r->w), free(r->m), free(r->v); }

/* One step at t (1-based) of every parameter, gradients g[k] scaled by gs. */
static void ref_step(ref_param *r, int np, float **g, double lr, int t, double clip) {
    const double b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1;
    double ss = 0;
    for (int k = 0; k < np; k++)
        for (int64_t i = 0; i < r[k].n; i++) ss += (double)g[k][i] * g[k][i];
    double norm = sqrt(ss), gs = clip > 0 && norm > clip ? clip / norm : 1;
    for (int k = 0; k < np; k++)
        for (int64_t i = 0; i < r[k].n; i++) {
            double gi = g[k][i] * gs;
            if (r[k].decay) r[k].w[i] -= lr * wd * r[k].w[i];
            r[k].m[i] = b1 * r[k].m[i] + (1 - b1) * gi;
            r[k].v[i] = b2 * r[k].v[i] + (1 - b2) * gi * gi;
            double mh = r[k].m[i] / (1 - pow(b1, t)), vh = r[k].v[i] / (1 - pow(b2, t));
            r[k].w[i] -= lr * mh / (sqrt(vh) + eps);
        }
}

/* max |w − ref| / lr: the error in units of one step's size */
static double step_err(const float *w, const ref_param *r, double lr) {
    double e = 0;
    for (int64_t i = 0; i < r->n; i++) e = fmax(e, fabs(w[i] - r->w[i]));
    return e / lr;
}

static float *rnd(size_t n, float scale) {
    float *x = malloc(n * sizeof(float));
    test_fill(x, n, scale);
    return x;
}

static void check_adamw(double clip) {
    /* a matrix (decayed), a vector (not decayed), and a large matrix (OpenMP) */
    int64_t s0[2] = {7, 5}, s1[1] = {11}, s2[2] = {300, 250};
    int64_t n[3] = {35, 11, 75000};
    float *w[3], *g[3];
    ref_param r[3];
    ra_adamw_config cfg = ra_adamw_defaults();
    cfg.clip = clip;
    ra_optim *o = ra_optim_create(&cfg);
    ra_error err = {0};
    for (int k = 0; k < 3; k++) {
        w[k] = rnd(n[k], 1), g[k] = malloc(n[k] * 4);
        ref_init(&r[k], w[k], n[k], k != 1);
    }
    EXPECT_EQ_INT(ra_optim_add(o, "layer.w", w[0], g[0], 2, s0, &err), 0);
    EXPECT_EQ_INT(ra_optim_add(o, "layer.b", w[1], g[1], 1, s1, &err), 0);
    EXPECT_EQ_INT(ra_optim_add(o, "big.w", w[2], g[2], 2, s2, &err), 0);
    EXPECT(o->params[0].decay && !o->params[1].decay);
    double lrs[6] = {0, 1e-2, 3e-2, 3e-2, 5e-3, 1e-3}; /* a warmup step at lr 0 too */
    for (int t = 1; t <= 6; t++) {
        for (int k = 0; k < 3; k++) test_fill(g[k], n[k], k == 1 ? 0.01f : 1.0f); /* different scales */
        ref_step(r, 3, g, lrs[t - 1], t, clip);
        EXPECT_EQ_INT(ra_optim_step(o, lrs[t - 1], &err), 0);
        EXPECT_EQ_INT(o->step, t);
        for (int k = 0; k < 3; k++) {
            double e = step_err(w[k], &r[k], 1e-2);
            EXPECT_MSG(e < 1e-4, "clip %g step %d param %d: error %g steps", clip, t, k, e);
        }
    }
    for (int k = 0; k < 3; k++) free(w[k]), free(g[k]), ref_free(&r[k]);
    ra_optim_free(o);
}
TEST(adamw_matches_float64_reference) {
    test_seed(61);
    check_adamw(0);
}
TEST(adamw_clipping_matches_float64_reference) {
    test_seed(62);
    check_adamw(1.0); /* the norm of ~75000 U(−1,1) values is ~158: clipped */
    check_adamw(1e6); /* never clipped */
}

TEST(adamw_first_step_moves_by_lr) {
    /* t = 1: m̂ = g, v̂ = g², so w moves by lr·sign(g) (plus decay) */
    float w[3] = {0.5f, -2.0f, 1.0f}, g[3] = {3.0f, -0.25f, 1e-3f};
    int64_t s[1] = {3};
    ra_optim *o = ra_optim_create(NULL);
    ra_error err;
    ra_optim_add(o, "v", w, g, 1, s, &err);
    ra_optim_step(o, 0.01, &err);
    EXPECT_NEAR(w[0], 0.49, 1e-6);
    EXPECT_NEAR(w[1], -1.99, 1e-6);
    EXPECT_NEAR(w[2], 0.99, 1e-5);
    ra_optim_free(o);
}

/* ---------------------------------------------------------------- freeze */

static ra_optim *named_params(float *w, float *g) {
    static const char *names[] = {"model.embed_tokens.weight",
                                  "model.layers.0.input_layernorm.weight",
                                  "model.layers.0.mlp.up_proj.weight",
                                  "model.layers.1.mlp.up_proj.weight",
                                  "model.layers.12.mixer.in_proj.weight",
                                  "model.layers.13.mixer.in_proj.weight",
                                  "lm_head.weight"};
    ra_optim *o = ra_optim_create(NULL);
    int64_t s[2] = {2, 2};
    ra_error err;
    for (int i = 0; i < 7; i++) ra_optim_add(o, names[i], w + 4 * i, g + 4 * i, 2, s, &err);
    return o;
}
static int frozen_mask(const ra_optim *o) {
    int m = 0;
    for (int i = 0; i < o->n; i++) m |= o->params[i].frozen << i;
    return m;
}

TEST(freeze_patterns_substrings_and_globs) {
    float w[28], g[28];
    ra_error err = {0};
    ra_optim *o = named_params(w, g);
    EXPECT_EQ_INT(ra_optim_freeze(o, "mlp,embed", &err), 0);
    EXPECT_EQ_INT(frozen_mask(o), 0x0D); /* embed, both mlp */
    EXPECT_EQ_INT(ra_optim_trainable_numel(o), 16);
    ra_optim_free(o);

    o = named_params(w, g);
    EXPECT_EQ_INT(ra_optim_freeze(o, "model.layers.1[0-9].*", &err), 0);
    EXPECT_EQ_INT(frozen_mask(o), 0x30);
    ra_optim_free(o);

    o = named_params(w, g);
    EXPECT_EQ_INT(ra_optim_freeze(o, "*.weight", &err), 0); /* '*' crosses dots */
    EXPECT_EQ_INT(frozen_mask(o), 0x7F);
    ra_optim_free(o);

    o = named_params(w, g);
    EXPECT_EQ_INT(ra_optim_freeze(o, "", &err), 0);
    EXPECT_EQ_INT(ra_optim_freeze(o, NULL, &err), 0);
    EXPECT_EQ_INT(frozen_mask(o), 0);
    EXPECT_EQ_INT(ra_optim_freeze(o, "mlp,atention", &err), EX_USAGE);
    EXPECT(strstr(err.msg, "'atention'") != NULL);
    EXPECT_EQ_INT(ra_optim_freeze(o, "mlp,,embed", &err), EX_USAGE);
    EXPECT(strstr(err.msg, "empty") != NULL);
    EXPECT_EQ_INT(ra_optim_freeze(o, "mlp,", &err), EX_USAGE);
    ra_optim_free(o);

    EXPECT(ra_freeze_item_matches("norm", "model.norm.weight"));
    EXPECT(!ra_freeze_item_matches("model.layers.1.*", "model.layers.12.mlp.up_proj.weight"));
    EXPECT(ra_freeze_item_matches("model.layers.1.*", "model.layers.1.mlp.up_proj.weight"));
}

TEST(frozen_parameters_do_not_move_and_hold_no_moments) {
    test_seed(63);
    float w[28], g[28], w0[28];
    test_fill(w, 28, 1);
    test_fill(g, 28, 1);
    memcpy(w0, w, sizeof w);
    ra_error err = {0};
    ra_optim *o = named_params(w, g);
    EXPECT_EQ_INT(ra_optim_freeze(o, "layers", &err), 0);
    g[4 * 2] = NAN; /* a frozen parameter's gradient is not looked at */
    EXPECT_EQ_INT(ra_optim_step(o, 0.1, &err), 0);
    for (int i = 0; i < 7; i++) {
        int moved = memcmp(w + 4 * i, w0 + 4 * i, 16) != 0;
        EXPECT_EQ_INT(moved, !o->params[i].frozen);
        EXPECT_EQ_INT(o->params[i].m != NULL, !o->params[i].frozen);
    }
    ra_optim_free(o);

    /* duplicate names are a programming error */
    o = ra_optim_create(NULL);
    int64_t s[1] = {4};
    EXPECT_EQ_INT(ra_optim_add(o, "a", w, g, 1, s, &err), 0);
    EXPECT_EQ_INT(ra_optim_add(o, "a", w, g, 1, s, &err), EX_SOFTWARE);
    ra_optim_free(o);
}

/* ---------------------------------------------------------------- NaN/Inf */

TEST(nan_or_inf_gradient_stops_the_step_and_changes_nothing) {
    test_seed(64);
    float w[28], g[28];
    test_fill(w, 28, 1);
    test_fill(g, 28, 1);
    ra_error err = {0};
    ra_optim *o = named_params(w, g);
    EXPECT_EQ_INT(ra_optim_step(o, 0.01, &err), 0); /* moments exist */
    float w_before[28], m_before[4], v_before[4];
    memcpy(w_before, w, sizeof w);
    memcpy(m_before, o->params[3].m, 16);
    memcpy(v_before, o->params[3].v, 16);
    float bad[2] = {NAN, INFINITY};
    const char *word[2] = {"NaN", "Inf"};
    for (int k = 0; k < 2; k++) {
        g[4 * 3 + 2] = bad[k];
        g[4 * 5 + 1] = bad[k]; /* a later one: the first is named */
        EXPECT_EQ_INT(ra_optim_check_grads(o, &err), EX_SOFTWARE);
        EXPECT_EQ_INT(ra_optim_step(o, 0.01, &err), EX_SOFTWARE);
        EXPECT_MSG(strstr(err.msg, "'model.layers.1.mlp.up_proj.weight'") && strstr(err.msg, word[k]) &&
                       strstr(err.msg, "element 2") && strstr(err.msg, "step 2"),
                   "message: %s", err.msg);
        EXPECT(memcmp(w, w_before, sizeof w) == 0);
        EXPECT(memcmp(o->params[3].m, m_before, 16) == 0 && memcmp(o->params[3].v, v_before, 16) == 0);
        EXPECT_EQ_INT(o->step, 1);
    }
    /* finite values that overflow the norm: reported, nothing changes */
    test_fill(g, 28, 1);
    g[0] = 3e38f, g[1] = 3e38f;
    EXPECT_EQ_INT(ra_optim_step(o, 0.01, &err), 0); /* sum of squares in double: finite */
    ra_optim_free(o);

    EXPECT_EQ_INT(ra_check_loss_finite(2.5, 0, &err), 0);
    EXPECT_EQ_INT(ra_check_loss_finite(NAN, 41, &err), EX_SOFTWARE);
    EXPECT(strstr(err.msg, "step 42") && strstr(err.msg, "NaN"));
    EXPECT_EQ_INT(ra_check_loss_finite(-INFINITY, 0, &err), EX_SOFTWARE);
}

TEST(gradient_norm_does_not_depend_on_thread_count) {
    test_seed(65);
    int64_t n = 1000003, s[1] = {1000003};
    float *w = rnd(n, 1), *g = rnd(n, 1);
    ra_optim *o = ra_optim_create(NULL);
    ra_error err;
    ra_optim_add(o, "x", w, g, 1, s, &err);
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    double a = ra_optim_grad_norm(o);
    omp_set_num_threads(3);
    double b = ra_optim_grad_norm(o);
    omp_set_num_threads(saved);
    EXPECT(memcmp(&a, &b, sizeof a) == 0);
    double ss = 0;
    for (int64_t i = 0; i < n; i++) ss += (double)g[i] * g[i];
    EXPECT_NEAR(a, sqrt(ss), 1e-9 * a);
    ra_optim_free(o);
    free(w), free(g);
}

/* ---------------------------------------------------------------- WSD */

TEST(wsd_schedule_boundaries) {
    ra_wsd s = ra_wsd_default(2.0, 100);
    EXPECT_NEAR(ra_wsd_lr(&s, 0), 0.2, 1e-12);
    EXPECT_NEAR(ra_wsd_lr(&s, 4), 1.0, 1e-12);
    EXPECT_NEAR(ra_wsd_lr(&s, 8), 1.8, 1e-12);
    EXPECT_NEAR(ra_wsd_lr(&s, 9), 2.0, 1e-12);
    EXPECT_NEAR(ra_wsd_lr(&s, 50), 2.0, 1e-12);
    EXPECT_NEAR(ra_wsd_lr(&s, 90), 2.0, 1e-12);
    EXPECT_NEAR(ra_wsd_lr(&s, 91), 1.8, 1e-12);
    EXPECT_NEAR(ra_wsd_lr(&s, 99), 0.2, 1e-12);
    EXPECT(ra_wsd_lr(&s, 100) == 0 && ra_wsd_lr(&s, 1000) == 0 && ra_wsd_lr(&s, -1) == 0);
    /* monotone up, flat, monotone down; never above peak, never 0 inside */
    for (int64_t t = 0; t < 100; t++) {
        double lr = ra_wsd_lr(&s, t);
        EXPECT(lr > 0 && lr <= 2.0);
        if (t > 0 && t <= 9) EXPECT(lr > ra_wsd_lr(&s, t - 1));
        if (t > 90) EXPECT(lr < ra_wsd_lr(&s, t - 1));
    }
    /* warmup and decay that are not whole steps: W = Dc = 1.5 */
    ra_wsd f = ra_wsd_default(1.0, 15);
    EXPECT_NEAR(ra_wsd_lr(&f, 0), 1 / 1.5, 1e-12);
    EXPECT_NEAR(ra_wsd_lr(&f, 1), 1.0, 1e-12);
    EXPECT_NEAR(ra_wsd_lr(&f, 13), 1.0, 1e-12);
    EXPECT_NEAR(ra_wsd_lr(&f, 14), 1 / 1.5, 1e-12);
    /* tiny runs still train */
    ra_wsd one = ra_wsd_default(1e-4, 1);
    EXPECT_NEAR(ra_wsd_lr(&one, 0), 1e-4, 1e-18);
    /* no warmup, no decay: constant */
    ra_wsd flat = {3.0, 10, 0, 0};
    EXPECT(ra_wsd_lr(&flat, 0) == 3.0 && ra_wsd_lr(&flat, 9) == 3.0);
}

int main(void) {
    RUN(adamw_matches_float64_reference);
    RUN(adamw_clipping_matches_float64_reference);
    RUN(adamw_first_step_moves_by_lr);
    RUN(freeze_patterns_substrings_and_globs);
    RUN(frozen_parameters_do_not_move_and_hold_no_moments);
    RUN(nan_or_inf_gradient_stops_the_step_and_changes_nothing);
    RUN(gradient_norm_does_not_depend_on_thread_count);
    RUN(wsd_schedule_boundaries);
    return test_summary();
}
