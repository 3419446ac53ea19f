/* Central finite-difference gradient checks for the backward unit tests.
 *
 * The objective is a scalar L(x) = Σ w ⊙ f(x) computed by the code under
 * test's own fp32 forward, accumulated in double.  For a sample of
 * coordinates i, (L(x + h·e_i) − L(x − h·e_i)) / (2h) — with h the step
 * actually representable in fp32 at x_i — is compared with the analytic
 * gradient: |fd − an| ≤ tol · (max |analytic| over the tensor) + tol·|an|.
 * Scaling by the tensor's largest gradient keeps fp32 rounding noise in the
 * forward (≈ 1e-7 × Σ|terms| / h) from failing tiny components. */
#ifndef RA_GRADCHECK_H
#define RA_GRADCHECK_H

#include "test.h"

typedef double (*gc_objective)(void *ctx);

static inline double gc_dot(const float *w, const float *y, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)w[i] * y[i];
    return s;
}

/* Returns the number of mismatching samples (also reported through the test
 * harness).  samples ≥ n checks every coordinate. */
static inline int gc_check(const char *what, float *x, size_t n, const float *analytic, gc_objective f, void *ctx,
                           int samples, float h, double tol) {
    double amax = 0;
    for (size_t i = 0; i < n; i++) amax = fmax(amax, fabs(analytic[i]));
    int bad = 0;
    size_t count = (size_t)samples < n ? (size_t)samples : n;
    for (size_t s = 0; s < count; s++) {
        size_t i = count == n ? s : (size_t)(test_rand_u64() % n);
        float x0 = x[i], xp = x0 + h, xm = x0 - h;
        x[i] = xp;
        double fp = f(ctx);
        x[i] = xm;
        double fm = f(ctx);
        x[i] = x0;
        double fd = (fp - fm) / ((double)xp - (double)xm);
        double err = fabs(fd - analytic[i]);
        if (!(err <= tol * amax + tol * fabs(analytic[i]))) {
            if (bad++ < 3)
                TEST_FAIL_("%s[%zu]: finite difference %.8g, analytic %.8g (max |grad| %.3g)", what, i, fd,
                           (double)analytic[i], amax);
        }
    }
    if (amax == 0) TEST_FAIL_("%s: analytic gradient is all zeros", what);
    return bad;
}

static inline float *gc_rnd(size_t n, float scale) {
    float *x = malloc(n * sizeof(float));
    test_fill(x, n, scale);
    return x;
}

#endif
