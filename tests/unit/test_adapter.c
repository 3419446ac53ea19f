/* The adapters of lib/adapter.h: forward against float64 references
 * written here from DESIGN §2.4, backward against finite differences of the
 * library's forward, for both layouts, mixed and pass-through slot masks,
 * and sizes on both sides of the OpenMP thresholds. */
#include "adapter.h"
#include "gradcheck.h"
#include "test.h"

/* Per-token rescaling in float64: a standardised, then given s's mean/std. */
static void ref_rescale(double *out, const float *a, int Fa, const float *s, int Fs) {
    double ma = 0, va = 0, ms = 0, vs = 0;
    for (int j = 0; j < Fa; j++) ma += a[j];
    for (int j = 0; j < Fs; j++) ms += s[j];
    ma /= Fa, ms /= Fs;
    for (int j = 0; j < Fa; j++) va += (a[j] - ma) * (a[j] - ma);
    for (int j = 0; j < Fs; j++) vs += (s[j] - ms) * (s[j] - ms);
    va /= Fa, vs /= Fs;
    for (int j = 0; j < Fa; j++) out[j] = (a[j] - ma) / sqrt(va + 1e-5) * sqrt(vs + 1e-5) + ms;
}

static void check_static_forward(int n, int H, int hd, const uint8_t *keep) {
    size_t row = (size_t)H * hd;
    float *x = gc_rnd(n * row, 2), *out = malloc(n * row * 4), *st = malloc(n * ADAPTER_STATS * 4);
    for (size_t i = 0; i < n * row; i++) x[i] += (i % 3) * 0.5f; /* non-zero means */
    adapter_static_forward(out, st, x, keep, n, H, hd);
    int k = 0;
    for (int h = 0; h < H; h++) k += keep[h] != 0;
    float *a = malloc(row * 4), *s = malloc(row * 4);
    double *ref = malloc(row * 8), err = 0;
    for (int i = 0; i < n; i++) {
        int na = 0, ns = 0;
        for (int h = 0; h < H; h++)
            for (int j = 0; j < hd; j++) {
                float v = x[i * row + h * hd + j];
                if (keep[h]) a[na++] = v;
                else s[ns++] = v;
            }
        if (k > 0 && k < H) ref_rescale(ref, a, na, s, ns);
        int ia = 0;
        for (int h = 0; h < H; h++)
            for (int j = 0; j < hd; j++) {
                double want = keep[h] && k < H ? ref[ia++] : x[i * row + h * hd + j];
                err = fmax(err, fabs(out[i * row + h * hd + j] - want));
            }
    }
    EXPECT_MSG(err < 2e-5, "static adapter n=%d H=%d hd=%d k=%d: max err %g", n, H, hd, k, err);
    free(x), free(out), free(st), free(a), free(s), free(ref);
}
TEST(static_adapter_forward_matches_float64) {
    test_seed(41);
    uint8_t m1[6] = {0, 1, 0, 0, 1, 0}, m2[4] = {1, 1, 1, 0}, all[4] = {1, 1, 1, 1}, none[4] = {0};
    check_static_forward(7, 6, 8, m1);
    check_static_forward(300, 4, 32, m2); /* OpenMP path */
    check_static_forward(5, 4, 8, all);   /* pass-through */
    check_static_forward(5, 4, 8, none);
}

typedef struct {
    int n, H, hd;
    const uint8_t *keep;
    float *x, *out, *st, *w;
} st_ctx;
static double st_obj(void *p) {
    st_ctx *c = p;
    adapter_static_forward(c->out, c->st, c->x, c->keep, c->n, c->H, c->hd);
    return gc_dot(c->w, c->out, (size_t)c->n * c->H * c->hd);
}
static void check_static_backward(int n, int H, int hd, const uint8_t *keep, int samples) {
    size_t m = (size_t)n * H * hd;
    st_ctx c = {n, H, hd, keep, gc_rnd(m, 2), malloc(m * 4), malloc(n * ADAPTER_STATS * 4), gc_rnd(m, 1)};
    for (size_t i = 0; i < m; i++) c.x[i] += (i % 5) * 0.3f;
    float *dx = gc_rnd(m, 7); /* garbage: overwritten */
    st_obj(&c);
    adapter_static_backward(dx, c.w, c.x, c.st, keep, n, H, hd);
    gc_check("static adapter dslots", c.x, m, dx, st_obj, &c, samples, 1e-2f, 3e-3);
    free(c.x), free(c.out), free(c.st), free(c.w), free(dx);
}
TEST(static_adapter_backward_matches_finite_differences) {
    test_seed(42);
    uint8_t m1[5] = {0, 1, 0, 1, 0}, m2[3] = {1, 0, 0}, all[3] = {1, 1, 1};
    check_static_backward(3, 5, 4, m1, 1000); /* every coordinate */
    check_static_backward(4, 3, 6, m2, 1000);
    check_static_backward(2, 3, 4, all, 1000);
    check_static_backward(300, 3, 40, m2, 150); /* OpenMP path */
}

static void check_linear_forward(int n, int D) {
    float *s = gc_rnd((size_t)n * D, 1.5f), *a = gc_rnd((size_t)n * D, 3), *W = gc_rnd((size_t)D * D, 0.3f),
          *b = gc_rnd(D, 1), *out = malloc((size_t)n * D * 4), *ad = malloc((size_t)n * D * 4),
          *st = malloc((size_t)n * ADAPTER_STATS * 4);
    for (int i = 0; i < n * D; i++) s[i] += 0.7f, a[i] -= 2.0f;
    adapter_linear_forward(out, ad, st, s, a, W, b, n, D);
    double *r = malloc(D * 8), err = 0;
    for (int i = 0; i < n; i++) {
        ref_rescale(r, a + (size_t)i * D, D, s + (size_t)i * D, D);
        for (int o = 0; o < D; o++) {
            double y = b[o];
            for (int j = 0; j < D; j++) y += r[j] * W[(size_t)o * D + j];
            err = fmax(err, fabs(out[(size_t)i * D + o] - 0.5 * (s[(size_t)i * D + o] + y)));
        }
    }
    EXPECT_MSG(err < 2e-5, "linear adapter n=%d D=%d: max err %g", n, D, err);
    free(s), free(a), free(W), free(b), free(out), free(ad), free(st), free(r);
}
TEST(linear_adapter_forward_matches_float64) {
    test_seed(43);
    check_linear_forward(5, 12);
    check_linear_forward(200, 192); /* OpenMP path */
}

TEST(linear_adapter_identity_init_averages) {
    /* W = I, b = 0 (ra-graft's initialisation): out = 0.5·(ssm + ã) */
    test_seed(44);
    int n = 4, D = 10;
    float *s = gc_rnd(n * D, 1), *a = gc_rnd(n * D, 5), *W = calloc(D * D, 4), *b = calloc(D, 4),
          *out = malloc(n * D * 4), *ad = malloc(n * D * 4), st[16];
    for (int j = 0; j < D; j++) W[j * D + j] = 1;
    adapter_linear_forward(out, ad, st, s, a, W, b, n, D);
    double r[10], err = 0;
    for (int i = 0; i < n; i++) {
        ref_rescale(r, a + i * D, D, s + i * D, D);
        for (int j = 0; j < D; j++) err = fmax(err, fabs(out[i * D + j] - 0.5 * (s[i * D + j] + r[j])));
    }
    EXPECT_MSG(err < 1e-5, "identity adapter err %g", err);
    free(s), free(a), free(W), free(b), free(out), free(ad);
}

typedef struct {
    int n, D;
    float *s, *a, *W, *b, *out, *ad, *st, *w;
} lin_ctx;
static double lin_obj(void *p) {
    lin_ctx *c = p;
    adapter_linear_forward(c->out, c->ad, c->st, c->s, c->a, c->W, c->b, c->n, c->D);
    return gc_dot(c->w, c->out, (size_t)c->n * c->D);
}
static void check_linear_backward(int n, int D, int samples) {
    size_t m = (size_t)n * D;
    lin_ctx c = {n, D, gc_rnd(m, 1.5f), gc_rnd(m, 3), gc_rnd((size_t)D * D, 0.3f), gc_rnd(D, 1), malloc(m * 4),
                 malloc(m * 4), malloc(n * ADAPTER_STATS * 4), gc_rnd(m, 1)};
    for (size_t i = 0; i < m; i++) c.s[i] += 0.5f;
    float *ds = gc_rnd(m, 7), *da = gc_rnd(m, 7), *dW = gc_rnd((size_t)D * D, 1), *db = gc_rnd(D, 1);
    float *dW0 = malloc((size_t)D * D * 4), *db0 = malloc(D * 4);
    memcpy(dW0, dW, (size_t)D * D * 4), memcpy(db0, db, D * 4);
    lin_obj(&c);
    adapter_linear_backward(ds, da, dW, db, c.w, c.s, c.a, c.ad, c.st, c.W, n, D);
    for (int i = 0; i < D * D; i++) dW[i] -= dW0[i];
    for (int i = 0; i < D; i++) db[i] -= db0[i];
    gc_check("linear adapter dssm", c.s, m, ds, lin_obj, &c, samples, 1e-2f, 3e-3);
    gc_check("linear adapter dattn", c.a, m, da, lin_obj, &c, samples, 1e-2f, 3e-3);
    gc_check("linear adapter dW", c.W, (size_t)D * D, dW, lin_obj, &c, samples, 1e-2f, 3e-3);
    gc_check("linear adapter db", c.b, D, db, lin_obj, &c, samples, 1e-2f, 3e-3);
    free(c.s), free(c.a), free(c.W), free(c.b), free(c.out), free(c.ad), free(c.st), free(c.w);
    free(ds), free(da), free(dW), free(db), free(dW0), free(db0);
}
TEST(linear_adapter_backward_matches_finite_differences) {
    test_seed(45);
    check_linear_backward(3, 8, 1000);
    check_linear_backward(200, 192, 60); /* OpenMP path */
}

int main(void) {
    RUN(static_adapter_forward_matches_float64);
    RUN(static_adapter_backward_matches_finite_differences);
    RUN(linear_adapter_forward_matches_float64);
    RUN(linear_adapter_identity_init_averages);
    RUN(linear_adapter_backward_matches_finite_differences);
    return test_summary();
}
