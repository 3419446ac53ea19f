/* The losses of lib/loss.h against float64 references written here from
 * DESIGN §2.5, their gradients against finite differences of the library's
 * forward, and the vocabulary chunking against the unchunked computation
 * for chunk sizes that do and do not divide V. */
#include "gradcheck.h"
#include "loss.h"
#include "test.h"

/* ------------------------------------------------------------ stage 1 */

static double ref_matrix_loss(const float *Ts, const float *A, int BH, int T) {
    double L = 0;
    for (int m = 0; m < BH; m++) {
        double ss = 0;
        for (int l = 0; l < T; l++)
            for (int s = 0; s <= l; s++) {
                double d = (double)Ts[(size_t)m * T * T + l * T + s] - A[(size_t)m * T * T + l * T + s];
                ss += d * d;
            }
        L += sqrt(ss);
    }
    return L / BH;
}

typedef struct {
    int BH, T;
    float *Ts, *A;
} mat_ctx;
static double mat_obj(void *p) {
    mat_ctx *c = p;
    return loss_matrix_forward(c->Ts, c->A, c->BH, c->T);
}

TEST(matrix_loss_matches_float64_and_finite_differences) {
    test_seed(51);
    int BH = 6, T = 9;
    size_t m = (size_t)BH * T * T;
    mat_ctx c = {BH, T, gc_rnd(m, 1), gc_rnd(m, 1)};
    /* upper triangles hold garbage: they must not count */
    double want = ref_matrix_loss(c.Ts, c.A, BH, T), got = mat_obj(&c);
    EXPECT_NEAR(got, want, 1e-9 * want);
    /* matrix 2 equal to its target: gradient 0 there (subgradient), no NaN */
    memcpy(c.Ts + 2 * T * T, c.A + 2 * T * T, T * T * 4);
    float *g = gc_rnd(m, 5);
    loss_matrix_backward(g, c.Ts, c.A, BH, T, 0.75f);
    int upper_zero = 1, equal_zero = 1;
    for (int k = 0; k < BH; k++)
        for (int l = 0; l < T; l++)
            for (int s = 0; s < T; s++) {
                float v = g[(size_t)k * T * T + l * T + s];
                if (s > l && v != 0) upper_zero = 0;
                if (k == 2 && v != 0) equal_zero = 0;
            }
    EXPECT(upper_zero);
    EXPECT(equal_zero);
    for (size_t i = 0; i < m; i++) g[i] /= 0.75f;
    /* finite differences away from the kink: skip matrix 2 by restoring noise */
    test_fill(c.Ts + 2 * T * T, T * T, 1);
    loss_matrix_backward(g, c.Ts, c.A, BH, T, 1.0f);
    gc_check("matrix loss dTs", c.Ts, m, g, mat_obj, &c, (int)m, 1e-3f, 2e-3);
    free(c.Ts), free(c.A), free(g);
}

/* ------------------------------------------------------------ stage 2 */

typedef struct {
    int n, D;
    float *x, *y;
} l2_ctx;
static double l2_obj(void *p) {
    l2_ctx *c = p;
    return loss_l2_forward(c->x, c->y, c->n, c->D);
}
TEST(l2_loss_matches_float64_and_finite_differences) {
    test_seed(52);
    int n = 300, D = 130; /* OpenMP path */
    size_t m = (size_t)n * D;
    l2_ctx c = {n, D, gc_rnd(m, 1), gc_rnd(m, 1)};
    memcpy(c.x + 7 * D, c.y + 7 * D, D * 4); /* a token already on target */
    double want = 0;
    for (int i = 0; i < n; i++) {
        double ss = 0;
        for (int j = 0; j < D; j++) ss += pow((double)c.x[i * D + j] - c.y[i * D + j], 2);
        want += sqrt(ss);
    }
    want /= n;
    EXPECT_NEAR(l2_obj(&c), want, 1e-9 * want);
    float *g = gc_rnd(m, 5);
    loss_l2_backward(g, c.x, c.y, n, D, 1.0f);
    int ok = 1;
    for (int j = 0; j < D; j++) ok &= g[7 * D + j] == 0.0f;
    EXPECT_MSG(ok, "zero-distance token must get a zero gradient");
    test_fill(c.x + 7 * D, D, 1);
    loss_l2_backward(g, c.x, c.y, n, D, 1.0f);
    gc_check("l2 loss dout", c.x, m, g, l2_obj, &c, 300, 1e-3f, 2e-3);
    /* dloss scales the gradient */
    float *g2 = malloc(m * 4);
    loss_l2_backward(g2, c.x, c.y, n, D, 0.25f);
    double e = 0;
    for (size_t i = 0; i < m; i++) e = fmax(e, fabs(g2[i] - 0.25 * g[i]));
    EXPECT_MSG(e < 1e-9, "dloss scaling err %g", e);
    free(c.x), free(c.y), free(g), free(g2);
}

/* ------------------------------------------------------------ stage 3 */

static double ref_lse(const float *z, int V, double scale) {
    double m = -INFINITY, s = 0;
    for (int v = 0; v < V; v++) m = fmax(m, z[v] * scale);
    for (int v = 0; v < V; v++) s += exp(z[v] * scale - m);
    return m + log(s);
}
static double ref_soft_ce(const float *zs, const float *zt, int n, int V, double T) {
    double L = 0;
    for (int i = 0; i < n; i++) {
        const float *s = zs + (size_t)i * V, *t = zt + (size_t)i * V;
        double ls = ref_lse(s, V, 1 / T), lt = ref_lse(t, V, 1);
        for (int v = 0; v < V; v++) L -= exp(t[v] - lt) * (s[v] / T - ls);
    }
    return L / n;
}

static void check_soft_ce_value(int n, int V, float T, float scale) {
    float *zs = gc_rnd((size_t)n * V, scale), *zt = gc_rnd((size_t)n * V, scale);
    float *ls = malloc(n * 4), *lt = malloc(n * 4);
    double want = ref_soft_ce(zs, zt, n, V, T);
    int chunks[] = {1, 7, 64, V - 1, V, V + 5, 0};
    for (size_t k = 0; k < sizeof chunks / sizeof *chunks; k++) {
        double got = loss_soft_ce_forward(ls, lt, zs, zt, n, V, T, chunks[k]);
        EXPECT_MSG(fabs(got - want) <= 2e-6 * fmax(1, fabs(want)), "soft CE n=%d V=%d T=%g chunk=%d: %.10g vs %.10g", n,
                   V, T, chunks[k], got, want);
        for (int i = 0; i < n; i++) {
            double a = ref_lse(zs + (size_t)i * V, V, 1.0 / T), b = ref_lse(zt + (size_t)i * V, V, 1);
            EXPECT_MSG(fabs(ls[i] - a) < 2e-6 * fmax(1, fabs(a)) && fabs(lt[i] - b) < 2e-6 * fmax(1, fabs(b)),
                       "lse row %d chunk %d", i, chunks[k]);
        }
    }
    free(zs), free(zt), free(ls), free(lt);
}
TEST(soft_ce_matches_float64_for_every_chunk_size) {
    test_seed(53);
    check_soft_ce_value(5, 50, 1.0f, 3);
    check_soft_ce_value(3, 97, 2.5f, 3);
    check_soft_ce_value(4, 1000, 1.0f, 40);     /* large logits: needs the running maximum */
    check_soft_ce_value(40, 5000, 0.7f, 5);     /* OpenMP path, default chunk < V */
}

typedef struct {
    int n, V;
    float T;
    float *zs, *zt, *ls, *lt;
} ce_ctx;
static double soft_obj(void *p) {
    ce_ctx *c = p;
    return loss_soft_ce_forward(c->ls, c->lt, c->zs, c->zt, c->n, c->V, c->T, 13);
}
TEST(soft_ce_backward_matches_finite_differences) {
    test_seed(54);
    float temps[] = {1.0f, 2.0f};
    for (int k = 0; k < 2; k++) {
        int n = 4, V = 37;
        size_t m = (size_t)n * V;
        ce_ctx c = {n, V, temps[k], gc_rnd(m, 3), gc_rnd(m, 3), malloc(n * 4), malloc(n * 4)};
        float *g = malloc(m * 4);
        soft_obj(&c);
        loss_soft_ce_backward(g, c.zs, c.zt, c.ls, c.lt, n, V, c.T, 1.0f);
        gc_check("soft CE dzs", c.zs, m, g, soft_obj, &c, (int)m, 1e-2f, 2e-3);
        soft_obj(&c); /* the check left the saved lse of a perturbed input */
        loss_soft_ce_backward(g, c.zs, c.zt, c.ls, c.lt, n, V, c.T, 1.0f);
        /* the analytic form, in float64 */
        double e = 0;
        for (int i = 0; i < n; i++) {
            double ls = ref_lse(c.zs + i * V, V, 1.0 / c.T), lt = ref_lse(c.zt + i * V, V, 1);
            for (int v = 0; v < V; v++) {
                double want = (exp(c.zs[i * V + v] / c.T - ls) - exp(c.zt[i * V + v] - lt)) / (n * c.T);
                e = fmax(e, fabs(g[i * V + v] - want));
            }
        }
        EXPECT_MSG(e < 1e-7, "soft CE gradient vs float64: %g", e);
        /* in place over the student logits */
        float *z = malloc(m * 4);
        memcpy(z, c.zs, m * 4);
        loss_soft_ce_backward(z, z, c.zt, c.ls, c.lt, n, V, c.T, 1.0f);
        EXPECT(memcmp(z, g, m * 4) == 0);
        free(c.zs), free(c.zt), free(c.ls), free(c.lt), free(g), free(z);
    }
}

TEST(soft_ce_of_teacher_with_itself_is_its_entropy) {
    test_seed(55);
    int n = 3, V = 200;
    float *z = gc_rnd(n * V, 4), ls[3], lt[3];
    double L = loss_soft_ce_forward(ls, lt, z, z, n, V, 1.0f, 33), H = 0;
    for (int i = 0; i < n; i++) {
        double l = ref_lse(z + i * V, V, 1);
        for (int v = 0; v < V; v++) {
            double p = exp(z[i * V + v] - l);
            H -= p * log(p);
        }
    }
    EXPECT_NEAR(L, H / n, 1e-5);
    free(z);
}

/* ------------------------------------------------------- hard labels */

static int32_t *random_labels(int n, int V, int ignore_every) {
    int32_t *y = malloc(n * sizeof(int32_t));
    for (int i = 0; i < n; i++) y[i] = ignore_every && i % ignore_every == 1 ? -100 : (int32_t)(test_rand_u64() % V);
    return y;
}

TEST(hard_ce_matches_float64_with_ignored_rows) {
    test_seed(56);
    int n = 30, V = 301;
    float *z = gc_rnd((size_t)n * V, 6), *lse = malloc(n * 4), *nll = malloc(n * 4);
    int32_t *y = random_labels(n, V, 4);
    double want = 0;
    int cnt = 0;
    for (int i = 0; i < n; i++) {
        if (y[i] == -100) continue;
        want += ref_lse(z + i * V, V, 1) - z[i * V + y[i]];
        cnt++;
    }
    want /= cnt;
    int chunks[] = {1, 10, 300, 301, 1000, 0};
    for (int k = 0; k < 6; k++) {
        double L;
        int counted;
        ra_error err = {0};
        EXPECT_EQ_INT(loss_ce_forward(&L, lse, nll, &counted, z, y, n, V, -100, chunks[k], &err), 0);
        EXPECT_EQ_INT(counted, cnt);
        EXPECT_MSG(fabs(L - want) < 2e-6 * want, "hard CE chunk %d: %.10g vs %.10g", chunks[k], L, want);
        double s = 0;
        for (int i = 0; i < n; i++) {
            s += nll[i];
            if (y[i] == -100) EXPECT(nll[i] == 0);
        }
        EXPECT_NEAR(s / cnt, want, 1e-5 * want);
    }
    free(z), free(lse), free(nll), free(y);
}

typedef struct {
    int n, V;
    float *z, *lse;
    int32_t *y;
} hce_ctx;
static double hce_obj(void *p) {
    hce_ctx *c = p;
    double L;
    loss_ce_forward(&L, c->lse, NULL, NULL, c->z, c->y, c->n, c->V, -100, 5, NULL);
    return L;
}
TEST(hard_ce_backward_matches_finite_differences) {
    test_seed(57);
    int n = 6, V = 23;
    hce_ctx c = {n, V, gc_rnd(n * V, 3), malloc(n * 4), random_labels(n, V, 3)};
    float *g = gc_rnd(n * V, 5);
    hce_obj(&c);
    loss_ce_backward(g, c.z, c.y, c.lse, n, V, -100, 1.0f);
    gc_check("hard CE dz", c.z, n * V, g, hce_obj, &c, n * V, 1e-2f, 2e-3);
    hce_obj(&c); /* the saved lse of the unperturbed input */
    loss_ce_backward(g, c.z, c.y, c.lse, n, V, -100, 1.0f);
    int cnt = 0;
    for (int i = 0; i < n; i++) cnt += c.y[i] != -100;
    double e = 0;
    for (int i = 0; i < n; i++) {
        double l = ref_lse(c.z + i * V, V, 1);
        for (int v = 0; v < V; v++) {
            double want = c.y[i] == -100 ? 0 : (exp(c.z[i * V + v] - l) - (v == c.y[i])) / cnt;
            e = fmax(e, fabs(g[i * V + v] - want));
        }
    }
    EXPECT_MSG(e < 1e-7, "hard CE gradient vs float64: %g", e);
    for (int i = 0; i < n; i++)
        if (c.y[i] == -100)
            for (int v = 0; v < V; v++) EXPECT(g[i * V + v] == 0);
    free(c.z), free(c.lse), free(c.y), free(g);
}

TEST(hard_ce_refuses_bad_labels_and_handles_all_ignored) {
    test_seed(58);
    int n = 4, V = 10;
    float *z = gc_rnd(n * V, 1), lse[4], g[40];
    int32_t y[4] = {1, 2, 10, 3};
    double L = -1;
    ra_error err = {0};
    EXPECT_EQ_INT(loss_ce_forward(&L, lse, NULL, NULL, z, y, n, V, -100, 0, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "row 2") && strstr(err.msg, "10"));
    y[2] = -5;
    EXPECT_EQ_INT(loss_ce_forward(&L, lse, NULL, NULL, z, y, n, V, -100, 0, &err), EX_DATAERR);
    int32_t none[4] = {-100, -100, -100, -100};
    int counted = -1;
    EXPECT_EQ_INT(loss_ce_forward(&L, lse, NULL, &counted, z, none, n, V, -100, 0, &err), 0);
    EXPECT(L == 0 && counted == 0);
    test_fill(g, 40, 1);
    loss_ce_backward(g, z, none, lse, n, V, -100, 1.0f);
    int zero = 1;
    for (int i = 0; i < 40; i++) zero &= g[i] == 0;
    EXPECT(zero);
    free(z);
}

/* ------------------------------------------------------- evaluation */

TEST(kl_matches_float64_for_every_chunk_size) {
    test_seed(59);
    int n = 7, V = 333;
    float *zs = gc_rnd(n * V, 5), *zt = gc_rnd(n * V, 5), kl[7];
    double want[7], mean = 0;
    for (int i = 0; i < n; i++) {
        double ls = ref_lse(zs + i * V, V, 1), lt = ref_lse(zt + i * V, V, 1), d = 0;
        for (int v = 0; v < V; v++) {
            double lpt = zt[i * V + v] - lt, lps = zs[i * V + v] - ls;
            d += exp(lpt) * (lpt - lps);
        }
        want[i] = d;
        mean += d / n;
    }
    int chunks[] = {1, 50, 332, 333, 0};
    for (int k = 0; k < 5; k++) {
        double got = loss_kl(kl, zs, zt, n, V, chunks[k]);
        EXPECT_MSG(fabs(got - mean) < 1e-5 * mean, "KL chunk %d: %.10g vs %.10g", chunks[k], got, mean);
        for (int i = 0; i < n; i++) EXPECT_NEAR(kl[i], want[i], 1e-5 * fmax(1, want[i]));
    }
    /* a distribution against itself, shifted by a constant: 0 */
    for (int i = 0; i < n * V; i++) zs[i] = zt[i] + 3.0f;
    EXPECT_NEAR(loss_kl(kl, zs, zt, n, V, 0), 0, 1e-6);
    free(zs), free(zt);
}

int main(void) {
    RUN(matrix_loss_matches_float64_and_finite_differences);
    RUN(l2_loss_matches_float64_and_finite_differences);
    RUN(soft_ce_matches_float64_for_every_chunk_size);
    RUN(soft_ce_backward_matches_finite_differences);
    RUN(soft_ce_of_teacher_with_itself_is_its_entropy);
    RUN(hard_ce_matches_float64_with_ignored_rows);
    RUN(hard_ce_backward_matches_finite_differences);
    RUN(hard_ce_refuses_bad_labels_and_handles_all_ignored);
    RUN(kl_matches_float64_for_every_chunk_size);
    return test_summary();
}
