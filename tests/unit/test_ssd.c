/* SSD core: recurrence == chunked == materialised matrix, each against a
 * float64 recurrence written here; backward of each against central finite
 * differences of the float64 reference; chunked backward == recurrent
 * backward; document resets; the decay a = −softplus(A_log). */
#include "ssd.h"
#include "test.h"

/* ---------- the float64 reference, straight from the definition ---------- */

typedef struct prob {
    ssd_dims d;
    float *x, *B, *C, *a, *D, *init;   /* fp32 inputs given to the library */
    double *xd, *Bd, *Cd, *ad, *Dd, *initd; /* the same values in double */
    uint8_t *starts;
    float *R;   /* [B,T,H,P] weights of the test loss Σ y·R */
    double *Rd;
} prob;

static int64_t n_x(const ssd_dims *d) { return (int64_t)d->B * d->T * d->H * d->P; }
static int64_t n_bc(const ssd_dims *d) { return (int64_t)d->B * d->T * d->G * d->N; }
static int64_t n_a(const ssd_dims *d) { return (int64_t)d->B * d->T * d->H; }
static int64_t n_s(const ssd_dims *d) { return (int64_t)d->B * d->H * d->P * d->N; }

/* y = recurrence in double; final (optional) [B,H,P,N]. */
static void ref_forward(double *y, double *final, const double *x, const double *B, const double *C,
                        const double *a, const double *D, const uint8_t *starts, const double *init,
                        const ssd_dims *d) {
    int P = d->P, N = d->N, hpg = d->H / d->G;
    double *S = calloc((size_t)P * N, sizeof(double));
    for (int b = 0; b < d->B; b++)
        for (int h = 0; h < d->H; h++) {
            int g = h / hpg;
            for (int i = 0; i < P * N; i++) S[i] = init ? init[((int64_t)b * d->H + h) * P * N + i] : 0;
            for (int t = 0; t < d->T; t++) {
                int64_t ox = (((int64_t)b * d->T + t) * d->H + h) * P, ob = (((int64_t)b * d->T + t) * d->G + g) * N;
                if (starts && starts[b * d->T + t])
                    for (int i = 0; i < P * N; i++) S[i] = 0;
                double alpha = exp(a[((int64_t)b * d->T + t) * d->H + h]);
                for (int p = 0; p < P; p++) {
                    double acc = 0;
                    for (int n = 0; n < N; n++) {
                        S[p * N + n] = alpha * S[p * N + n] + x[ox + p] * B[ob + n];
                        acc += S[p * N + n] * C[ob + n];
                    }
                    y[ox + p] = acc + D[h] * x[ox + p];
                }
            }
            if (final)
                for (int i = 0; i < P * N; i++) final[((int64_t)b * d->H + h) * P * N + i] = S[i];
        }
    free(S);
}

/* T[b,h,l,s] from the formula: product of decays walked back from l. */
static void ref_matrix(double *Tm, const double *B, const double *C, const double *a, const double *D,
                       const uint8_t *starts, const ssd_dims *d) {
    int T = d->T, N = d->N, hpg = d->H / d->G;
    for (int b = 0; b < d->B; b++)
        for (int h = 0; h < d->H; h++) {
            int g = h / hpg;
            double *Th = Tm + ((int64_t)b * d->H + h) * T * T;
            for (int l = 0; l < T; l++) {
                for (int s = 0; s < T; s++) Th[(int64_t)l * T + s] = 0;
                double decay = 1;
                for (int s = l; s >= 0; s--) {
                    if (s < l) {
                        /* going from s+1 back to s crosses a start at s+1? */
                        if (starts && starts[b * T + s + 1]) break;
                        decay *= exp(a[((int64_t)b * T + s + 1) * d->H + h]);
                    }
                    double cb = 0;
                    for (int n = 0; n < N; n++)
                        cb += C[(((int64_t)b * T + l) * d->G + g) * N + n] * B[(((int64_t)b * T + s) * d->G + g) * N + n];
                    Th[(int64_t)l * T + s] = cb * decay + (s == l ? D[h] : 0);
                }
            }
        }
}

static void to_double(double *dst, const float *src, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = src[i];
}

/* Random problem: x, B, C ~ U(−1, 1), A_log ~ U(−7, 5) so that decays range
 * from ≈ 0.999 to ≈ 0.007, D ~ U(0.5, 1.5), documents starting with
 * probability p_start per token (and at t = 0 of row 1 when p_start > 0). */
static prob make_prob(ssd_dims d, double p_start, int with_init, uint64_t seed) {
    prob q = {.d = d};
    test_seed(seed);
    q.x = malloc(sizeof(float) * n_x(&d));
    q.B = malloc(sizeof(float) * n_bc(&d));
    q.C = malloc(sizeof(float) * n_bc(&d));
    q.a = malloc(sizeof(float) * n_a(&d));
    q.D = malloc(sizeof(float) * d.H);
    q.R = malloc(sizeof(float) * n_x(&d));
    test_fill(q.x, n_x(&d), 1);
    test_fill(q.B, n_bc(&d), 1);
    test_fill(q.C, n_bc(&d), 1);
    test_fill(q.R, n_x(&d), 1);
    for (int64_t i = 0; i < n_a(&d); i++) {
        double A_log = -1 + 6 * test_randf();
        q.a[i] = (float)-log1p(exp(A_log));
    }
    for (int h = 0; h < d.H; h++) q.D[h] = 1 + 0.5f * test_randf();
    q.starts = calloc((size_t)d.B * d.T, 1);
    for (int b = 0; b < d.B; b++)
        for (int t = 0; t < d.T; t++)
            q.starts[b * d.T + t] = p_start > 0 && ((b == 1 && t == 0) || (test_randf() + 1) / 2 < p_start);
    if (with_init) {
        q.init = malloc(sizeof(float) * n_s(&d));
        test_fill(q.init, n_s(&d), 1);
        q.initd = malloc(sizeof(double) * n_s(&d));
        to_double(q.initd, q.init, n_s(&d));
    }
    q.xd = malloc(sizeof(double) * n_x(&d));
    q.Bd = malloc(sizeof(double) * n_bc(&d));
    q.Cd = malloc(sizeof(double) * n_bc(&d));
    q.ad = malloc(sizeof(double) * n_a(&d));
    q.Dd = malloc(sizeof(double) * d.H);
    q.Rd = malloc(sizeof(double) * n_x(&d));
    to_double(q.xd, q.x, n_x(&d));
    to_double(q.Bd, q.B, n_bc(&d));
    to_double(q.Cd, q.C, n_bc(&d));
    to_double(q.ad, q.a, n_a(&d));
    to_double(q.Dd, q.D, d.H);
    to_double(q.Rd, q.R, n_x(&d));
    return q;
}

static void free_prob(prob *q) {
    free(q->x), free(q->B), free(q->C), free(q->a), free(q->D), free(q->init), free(q->R);
    free(q->xd), free(q->Bd), free(q->Cd), free(q->ad), free(q->Dd), free(q->initd), free(q->Rd);
    free(q->starts);
}

/* max |got − want| / max(max |want|, floor): error relative to the scale. */
static double rel_err(const float *got, const double *want, int64_t n) {
    double e = 0, m = 1e-30;
    for (int64_t i = 0; i < n; i++) {
        double di = fabs(got[i] - want[i]);
        if (!(di <= e)) e = di; /* NaN propagates */
        if (fabs(want[i]) > m) m = fabs(want[i]);
    }
    return e / m;
}
static double rel_err_f(const float *got, const float *want, int64_t n) {
    double *w = malloc(sizeof(double) * n);
    to_double(w, want, n);
    double e = rel_err(got, w, n);
    free(w);
    return e;
}

/* Worst error seen by the current test, printed as a TAP comment. */
static double worst_seen;
static void seen(double e) {
    if (!(e <= worst_seen)) worst_seen = e;
}
static void report(const char *what) {
    printf("# %s: worst relative error %.3g\n", what, worst_seen);
    worst_seen = 0;
}

/* ---------- forward agreement ---------- */

static void check_forward(ssd_dims d, int chunk, double p_start, int with_init, uint64_t seed) {
    prob q = make_prob(d, p_start, with_init, seed);
    int64_t nx = n_x(&d), ns = n_s(&d);
    double *y_ref = malloc(sizeof(double) * nx), *f_ref = malloc(sizeof(double) * ns);
    ref_forward(y_ref, f_ref, q.xd, q.Bd, q.Cd, q.ad, q.Dd, q.starts, q.initd, &d);
    float *y = malloc(sizeof(float) * nx), *f = malloc(sizeof(float) * ns);

    ssd_recurrent_forward(y, f, q.x, q.B, q.C, q.a, q.D, q.starts, q.init, &d);
    double e1 = rel_err(y, y_ref, nx), e1s = rel_err(f, f_ref, ns);
    ssd_chunked_forward(y, f, q.x, q.B, q.C, q.a, q.D, q.starts, q.init, &d, chunk);
    double e2 = rel_err(y, y_ref, nx), e2s = rel_err(f, f_ref, ns);
    seen(e1), seen(e1s), seen(e2), seen(e2s);
    EXPECT_MSG(e1 <= 1e-5 && e1s <= 1e-5, "T=%d chunk=%d: recurrence rel err y %.3g state %.3g", d.T, chunk, e1, e1s);
    EXPECT_MSG(e2 <= 1e-5 && e2s <= 1e-5, "T=%d chunk=%d: chunked rel err y %.3g state %.3g", d.T, chunk, e2, e2s);
    if (!with_init) { /* the matrix has no initial state */
        float *Tm = malloc(sizeof(float) * d.B * d.H * d.T * d.T);
        ssd_matrix_forward(Tm, q.B, q.C, q.a, q.D, q.starts, &d);
        ssd_matrix_apply(y, Tm, q.x, &d);
        double e3 = rel_err(y, y_ref, nx);
        EXPECT_MSG(e3 <= 1e-5, "T=%d: T·x rel err %.3g", d.T, e3);
        double *Tref = malloc(sizeof(double) * d.B * d.H * d.T * d.T);
        ref_matrix(Tref, q.Bd, q.Cd, q.ad, q.Dd, q.starts, &d);
        double e4 = rel_err(Tm, Tref, (int64_t)d.B * d.H * d.T * d.T);
        seen(e3), seen(e4);
        EXPECT_MSG(e4 <= 1e-5, "T=%d: matrix vs formula rel err %.3g", d.T, e4);
        free(Tm), free(Tref);
    }
    free(y_ref), free(f_ref), free(y), free(f);
    free_prob(&q);
}

TEST(forward_paths_agree_with_float64_recurrence) {
    static const int lengths[] = {1, 5, 127, 128, 129, 300};
    for (size_t i = 0; i < sizeof lengths / sizeof *lengths; i++)
        for (int resets = 0; resets < 2; resets++) {
            ssd_dims d = {.B = 2, .T = lengths[i], .H = 4, .P = 5, .G = 2, .N = 3};
            check_forward(d, 128, resets ? 0.03 : 0, 0, 100 + i);
            check_forward(d, 16, resets ? 0.03 : 0, 0, 200 + i);
        }
}

TEST(forward_with_initial_state_and_dense_resets) {
    ssd_dims d = {.B = 3, .T = 77, .H = 6, .P = 4, .G = 3, .N = 5};
    check_forward(d, 16, 0.0, 1, 7);
    check_forward(d, 16, 0.2, 1, 8);
    check_forward(d, 7, 0.5, 1, 9);
    check_forward(d, 1, 0.1, 1, 10);
    ssd_dims d1 = {.B = 1, .T = 40, .H = 2, .P = 8, .G = 1, .N = 16}; /* one group for all heads */
    check_forward(d1, 16, 0.05, 0, 11);
    check_forward(d1, 128, 0.05, 1, 12);
}

/* A reset must make the rest of the row behave exactly as a fresh sequence:
 * checked against running the suffix alone (independent of the reference's
 * handling of starts). */
TEST(reset_equals_fresh_sequence) {
    ssd_dims d = {.B = 1, .T = 50, .H = 2, .P = 3, .G = 1, .N = 4};
    prob q = make_prob(d, 0, 1, 21);
    int cut = 23;
    q.starts[cut] = 1;
    float *y = malloc(sizeof(float) * n_x(&d)), *fa = malloc(sizeof(float) * n_s(&d));
    ssd_chunked_forward(y, fa, q.x, q.B, q.C, q.a, q.D, q.starts, q.init, &d, 8);
    ssd_dims ds = d;
    ds.T = d.T - cut;
    float *ys = malloc(sizeof(float) * n_x(&ds)), *fs = malloc(sizeof(float) * n_s(&ds));
    /* the suffix as its own batch row, starting from a zero state */
    float *xs = q.x + (int64_t)cut * d.H * d.P, *Bs = q.B + (int64_t)cut * d.G * d.N;
    float *Cs = q.C + (int64_t)cut * d.G * d.N, *as = q.a + (int64_t)cut * d.H;
    ssd_recurrent_forward(ys, fs, xs, Bs, Cs, as, q.D, NULL, NULL, &ds);
    EXPECT(rel_err_f(y + (int64_t)cut * d.H * d.P, ys, n_x(&ds)) <= 1e-6);
    EXPECT(rel_err_f(fa, fs, n_s(&ds)) <= 1e-6);
    free(y), free(fa), free(ys), free(fs);
    free_prob(&q);
}

/* ---------- backward ---------- */

/* Σ y·R of the float64 reference. */
static double ref_loss(const prob *q, const double *x, const double *B, const double *C, const double *a,
                       const double *D, const double *init) {
    int64_t nx = n_x(&q->d);
    double *y = malloc(sizeof(double) * nx), l = 0;
    ref_forward(y, NULL, x, B, C, a, D, q->starts, init, &q->d);
    for (int64_t i = 0; i < nx; i++) l += y[i] * q->Rd[i];
    free(y);
    return l;
}

/* Central differences of ref_loss wrt every element of the array v (one of
 * q's double inputs), compared with the analytic fp32 gradient g. */
static double fd_check(prob *q, double *v, int64_t n, const float *g) {
    double worst = 0, scale = 1e-30;
    for (int64_t i = 0; i < n; i++) scale = fmax(scale, fabs(g[i]));
    for (int64_t i = 0; i < n; i++) {
        double keep = v[i], h = 1e-5;
        v[i] = keep + h;
        double lp = ref_loss(q, q->xd, q->Bd, q->Cd, q->ad, q->Dd, q->initd);
        v[i] = keep - h;
        double lm = ref_loss(q, q->xd, q->Bd, q->Cd, q->ad, q->Dd, q->initd);
        v[i] = keep;
        double fd = (lp - lm) / (2 * h);
        double e = fabs(fd - g[i]) / scale;
        if (!(e <= worst)) worst = e;
    }
    return worst;
}

typedef void (*backward_fn)(float *dx, float *dB, float *dC, float *da, float *dD, float *dinit, const prob *q,
                            int chunk);
static void bw_recurrent(float *dx, float *dB, float *dC, float *da, float *dD, float *dinit, const prob *q,
                         int chunk) {
    (void)chunk;
    ssd_recurrent_backward(dx, dB, dC, da, dD, dinit, q->R, q->x, q->B, q->C, q->a, q->D, q->starts, q->init, &q->d);
}
static void bw_chunked(float *dx, float *dB, float *dC, float *da, float *dD, float *dinit, const prob *q,
                       int chunk) {
    ssd_chunked_backward(dx, dB, dC, da, dD, dinit, q->R, q->x, q->B, q->C, q->a, q->D, q->starts, q->init, &q->d,
                         chunk);
}

typedef struct grads {
    float *dx, *dB, *dC, *da, *dD, *dinit;
} grads;
static grads run_backward(backward_fn fn, const prob *q, int chunk) {
    const ssd_dims *d = &q->d;
    grads g = {malloc(sizeof(float) * n_x(d)), malloc(sizeof(float) * n_bc(d)), malloc(sizeof(float) * n_bc(d)),
               malloc(sizeof(float) * n_a(d)), malloc(sizeof(float) * d->H), malloc(sizeof(float) * n_s(d))};
    /* poison: the backward must overwrite every element */
    for (int64_t i = 0; i < n_bc(d); i++) g.dB[i] = g.dC[i] = NAN;
    for (int64_t i = 0; i < n_a(d); i++) g.da[i] = NAN;
    fn(g.dx, g.dB, g.dC, g.da, g.dD, q->init ? g.dinit : NULL, q, chunk);
    return g;
}
static void free_grads(grads *g) { free(g->dx), free(g->dB), free(g->dC), free(g->da), free(g->dD), free(g->dinit); }

static void check_backward_fd(backward_fn fn, const char *name, int chunk, double p_start, int with_init,
                              uint64_t seed) {
    ssd_dims d = {.B = 2, .T = 11, .H = 4, .P = 3, .G = 2, .N = 2};
    prob q = make_prob(d, p_start, with_init, seed);
    grads g = run_backward(fn, &q, chunk);
    double ex = fd_check(&q, q.xd, n_x(&d), g.dx), eB = fd_check(&q, q.Bd, n_bc(&d), g.dB);
    double eC = fd_check(&q, q.Cd, n_bc(&d), g.dC), ea = fd_check(&q, q.ad, n_a(&d), g.da);
    double eD = fd_check(&q, q.Dd, d.H, g.dD);
    double ei = with_init ? fd_check(&q, q.initd, n_s(&d), g.dinit) : 0;
    double tol = 2e-5;
    seen(ex), seen(eB), seen(eC), seen(ea), seen(eD), seen(ei);
    EXPECT_MSG(ex <= tol && eB <= tol && eC <= tol && ea <= tol && eD <= tol && ei <= tol,
               "%s chunk=%d resets=%g init=%d: fd rel err x %.2g B %.2g C %.2g a %.2g D %.2g init %.2g", name, chunk,
               p_start, with_init, ex, eB, eC, ea, eD, ei);
    free_grads(&g);
    free_prob(&q);
}

TEST(recurrent_backward_matches_finite_differences) {
    check_backward_fd(bw_recurrent, "recurrent", 0, 0, 0, 31);
    check_backward_fd(bw_recurrent, "recurrent", 0, 0.2, 1, 32);
}

TEST(chunked_backward_matches_finite_differences) {
    for (int resets = 0; resets < 2; resets++)
        for (int init = 0; init < 2; init++) {
            check_backward_fd(bw_chunked, "chunked", 4, resets ? 0.2 : 0, init, 40 + 2 * resets + init);
            check_backward_fd(bw_chunked, "chunked", 128, resets ? 0.2 : 0, init, 50 + 2 * resets + init);
            check_backward_fd(bw_chunked, "chunked", 1, resets ? 0.2 : 0, init, 60 + 2 * resets + init);
        }
}

/* On a longer problem the chunked gradients equal the recurrent ones. */
TEST(chunked_backward_equals_recurrent_backward) {
    static const int lengths[] = {1, 5, 127, 128, 129, 300};
    for (size_t i = 0; i < sizeof lengths / sizeof *lengths; i++)
        for (int chunk = 16; chunk <= 128; chunk *= 8) {
            ssd_dims d = {.B = 2, .T = lengths[i], .H = 4, .P = 5, .G = 2, .N = 3};
            prob q = make_prob(d, 0.03, 1, 70 + i);
            grads r = run_backward(bw_recurrent, &q, 0), c = run_backward(bw_chunked, &q, chunk);
            double e[6] = {rel_err_f(c.dx, r.dx, n_x(&d)), rel_err_f(c.dB, r.dB, n_bc(&d)),
                           rel_err_f(c.dC, r.dC, n_bc(&d)), rel_err_f(c.da, r.da, n_a(&d)),
                           rel_err_f(c.dD, r.dD, d.H),      rel_err_f(c.dinit, r.dinit, n_s(&d))};
            double worst = 0;
            for (int k = 0; k < 6; k++) worst = fmax(worst, isnan(e[k]) ? INFINITY : e[k]);
            seen(worst);
            EXPECT_MSG(worst <= 2e-5, "T=%d chunk=%d: rel err x %.2g B %.2g C %.2g a %.2g D %.2g init %.2g", d.T,
                       chunk, e[0], e[1], e[2], e[3], e[4], e[5]);
            free_grads(&r), free_grads(&c);
            free_prob(&q);
        }
}

/* Matrix backward vs finite differences of Σ T∘R of the formula. */
static double ref_matrix_loss(const prob *q, const double *RT) {
    const ssd_dims *d = &q->d;
    int64_t nt = (int64_t)d->B * d->H * d->T * d->T;
    double *Tm = malloc(sizeof(double) * nt), l = 0;
    ref_matrix(Tm, q->Bd, q->Cd, q->ad, q->Dd, q->starts, d);
    for (int64_t i = 0; i < nt; i++) l += Tm[i] * RT[i];
    free(Tm);
    return l;
}
static double fd_matrix(prob *q, const double *RT, double *v, int64_t n, const float *g) {
    double worst = 0, scale = 1e-30;
    for (int64_t i = 0; i < n; i++) scale = fmax(scale, fabs(g[i]));
    for (int64_t i = 0; i < n; i++) {
        double keep = v[i], h = 1e-5;
        v[i] = keep + h;
        double lp = ref_matrix_loss(q, RT);
        v[i] = keep - h;
        double lm = ref_matrix_loss(q, RT);
        v[i] = keep;
        double e = fabs((lp - lm) / (2 * h) - g[i]) / scale;
        if (!(e <= worst)) worst = e;
    }
    return worst;
}

TEST(matrix_backward_matches_finite_differences) {
    for (int resets = 0; resets < 2; resets++) {
        ssd_dims d = {.B = 2, .T = 9, .H = 4, .P = 1, .G = 2, .N = 3};
        prob q = make_prob(d, resets ? 0.25 : 0, 0, 80 + resets);
        int64_t nt = (int64_t)d.B * d.H * d.T * d.T;
        float *R = malloc(sizeof(float) * nt);
        double *Rd = malloc(sizeof(double) * nt);
        test_fill(R, nt, 1); /* upper entries too: the backward must ignore them */
        to_double(Rd, R, nt);
        for (int64_t bh = 0; bh < d.B * d.H; bh++)
            for (int l = 0; l < d.T; l++)
                for (int s = l + 1; s < d.T; s++) Rd[(bh * d.T + l) * d.T + s] = 0;
        float *dB = malloc(sizeof(float) * n_bc(&d)), *dC = malloc(sizeof(float) * n_bc(&d));
        float *da = malloc(sizeof(float) * n_a(&d)), dD[4];
        ssd_matrix_backward(dB, dC, da, dD, R, q.B, q.C, q.a, q.starts, &d);
        double eB = fd_matrix(&q, Rd, q.Bd, n_bc(&d), dB), eC = fd_matrix(&q, Rd, q.Cd, n_bc(&d), dC);
        double ea = fd_matrix(&q, Rd, q.ad, n_a(&d), da), eD = fd_matrix(&q, Rd, q.Dd, d.H, dD);
        seen(eB), seen(eC), seen(ea), seen(eD);
        EXPECT_MSG(eB <= 2e-5 && eC <= 2e-5 && ea <= 2e-5 && eD <= 2e-5,
                   "resets=%d: fd rel err B %.2g C %.2g a %.2g D %.2g", resets, eB, eC, ea, eD);
        free(R), free(Rd), free(dB), free(dC), free(da);
        free_prob(&q);
    }
}

/* Through y = T x, dT = dy xᵀ per head: the matrix backward must then give
 * the chunked backward's dB, dC, da, dD. */
TEST(matrix_backward_equals_chunked_backward_through_Tx) {
    ssd_dims d = {.B = 2, .T = 150, .H = 4, .P = 3, .G = 2, .N = 4};
    prob q = make_prob(d, 0.02, 0, 90);
    int64_t nt = (int64_t)d.B * d.H * d.T * d.T;
    float *dT = malloc(sizeof(float) * nt);
    for (int b = 0; b < d.B; b++)
        for (int h = 0; h < d.H; h++)
            for (int l = 0; l < d.T; l++)
                for (int s = 0; s < d.T; s++) {
                    double acc = 0;
                    for (int p = 0; p < d.P; p++)
                        acc += (double)q.R[(((int64_t)b * d.T + l) * d.H + h) * d.P + p] *
                               q.x[(((int64_t)b * d.T + s) * d.H + h) * d.P + p];
                    dT[(((int64_t)b * d.H + h) * d.T + l) * d.T + s] = (float)acc;
                }
    float *dB = malloc(sizeof(float) * n_bc(&d)), *dC = malloc(sizeof(float) * n_bc(&d));
    float *da = malloc(sizeof(float) * n_a(&d)), dD[4];
    ssd_matrix_backward(dB, dC, da, dD, dT, q.B, q.C, q.a, q.starts, &d);
    grads c = run_backward(bw_chunked, &q, 32);
    EXPECT(rel_err_f(dB, c.dB, n_bc(&d)) <= 2e-5);
    EXPECT(rel_err_f(dC, c.dC, n_bc(&d)) <= 2e-5);
    EXPECT(rel_err_f(da, c.da, n_a(&d)) <= 2e-5);
    EXPECT(rel_err_f(dD, c.dD, d.H) <= 2e-5);
    free(dT), free(dB), free(dC), free(da);
    free_grads(&c);
    free_prob(&q);
}

/* ---------- decay ---------- */

TEST(decay_is_minus_softplus_without_overflow) {
    static const float v[] = {-1000, -90, -20, -1, -1e-3f, 0, 1e-3f, 0.5f, 1, 20, 90, 1000};
    int n = sizeof v / sizeof *v;
    float a[12], da[12], g[12];
    ssd_decay_forward(a, v, n);
    for (int i = 0; i < n; i++) {
        long double x = v[i];
        double want = -(double)(x > 30 ? x + expl(-x) : log1pl(expl(x)));
        EXPECT_MSG(fabs(a[i] - want) <= 1e-6 * fmax(1, fabs(want)) && a[i] <= 0, "A_log=%g: a=%.9g want %.9g", v[i],
                   a[i], want);
        da[i] = 1;
    }
    ssd_decay_backward(g, da, v, n);
    for (int i = 0; i < n; i++) {
        double want = -1 / (1 + exp(-(double)v[i]));
        EXPECT_MSG(fabs(g[i] - want) <= 1e-6, "A_log=%g: dA_log=%.9g want %.9g", v[i], g[i], want);
    }
    /* and by finite differences at ordinary values */
    test_seed(5);
    for (int i = 0; i < 100; i++) {
        float x = 6 * test_randf(), one = 1, gi;
        ssd_decay_backward(&gi, &one, &x, 1);
        double h = 1e-3, fd = (-log1p(exp(x + h)) + log1p(exp(x - h))) / (2 * h);
        EXPECT_NEAR(gi, fd, 1e-6);
    }
}

TEST(check_dims_rejects_bad_groups) {
    ra_error e = {0};
    ssd_dims ok = {2, 3, 4, 5, 2, 6}, bad = {2, 3, 4, 5, 3, 6}, zero = {2, 0, 4, 5, 2, 6};
    EXPECT_EQ_INT(ssd_check_dims(&ok, &e), 0);
    EXPECT_EQ_INT(ssd_check_dims(&bad, &e), EX_DATAERR);
    EXPECT(strstr(e.msg, "groups") != NULL);
    EXPECT_EQ_INT(ssd_check_dims(&zero, &e), EX_DATAERR);
}

int main(void) {
    RUN(forward_paths_agree_with_float64_recurrence);
    report("forward, T in {1,5,127,128,129,300}, chunk 128 and 16");
    RUN(forward_with_initial_state_and_dense_resets);
    report("forward with initial state");
    RUN(reset_equals_fresh_sequence);
    RUN(recurrent_backward_matches_finite_differences);
    report("recurrent backward vs finite differences");
    RUN(chunked_backward_matches_finite_differences);
    report("chunked backward vs finite differences");
    RUN(chunked_backward_equals_recurrent_backward);
    report("chunked backward vs recurrent backward");
    RUN(matrix_backward_matches_finite_differences);
    report("matrix backward vs finite differences");
    RUN(matrix_backward_equals_chunked_backward_through_Tx);
    RUN(decay_is_minus_softplus_without_overflow);
    RUN(check_dims_rejects_bad_groups);
    return test_summary();
}
