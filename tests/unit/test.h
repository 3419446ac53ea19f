/* Minimal TAP test harness for the C unit tests.
 *
 *   TEST(name) { EXPECT(cond); EXPECT_NEAR(a, b, tol); ... }
 *   int main(void) { RUN(name); ...; return test_summary(); }
 *
 * Each TEST is one TAP case; a failed expectation prints a diagnostic with
 * file:line and marks the case "not ok".  tests/run.sh counts the cases. */
#ifndef RA_TEST_H
#define RA_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_case_number, test_cases_failed, test_case_errors;

#define TEST(name) static void name(void)

#define TEST_FAIL_(...)                                                        \
    do {                                                                      \
        if (test_case_errors++ < 10) {                                        \
            printf("#   %s:%d: ", __FILE__, __LINE__);                        \
            printf(__VA_ARGS__);                                              \
            printf("\n");                                                     \
        }                                                                     \
    } while (0)

#define EXPECT(cond)                                                          \
    do {                                                                      \
        if (!(cond)) TEST_FAIL_("expected %s", #cond);                        \
    } while (0)

#define EXPECT_MSG(cond, ...)                                                 \
    do {                                                                      \
        if (!(cond)) TEST_FAIL_(__VA_ARGS__);                                 \
    } while (0)

#define EXPECT_EQ_INT(a, b)                                                   \
    do {                                                                      \
        long long a_ = (long long)(a), b_ = (long long)(b);                   \
        if (a_ != b_) TEST_FAIL_("%s == %lld, expected %s == %lld", #a, a_, #b, b_); \
    } while (0)

#define EXPECT_NEAR(a, b, tol)                                                \
    do {                                                                      \
        double a_ = (double)(a), b_ = (double)(b);                            \
        if (!(fabs(a_ - b_) <= (tol)))                                        \
            TEST_FAIL_("%s = %.9g, expected %s = %.9g (tol %g)", #a, a_, #b, b_, (double)(tol)); \
    } while (0)

#define EXPECT_STR(a, b)                                                      \
    do {                                                                      \
        const char *a_ = (a), *b_ = (b);                                      \
        if (!a_ || !b_ || strcmp(a_, b_) != 0)                                \
            TEST_FAIL_("%s = \"%s\", expected \"%s\"", #a, a_ ? a_ : "(null)", b_ ? b_ : "(null)"); \
    } while (0)

static inline void test_run(const char *name, void (*fn)(void)) {
    test_case_errors = 0;
    fn();
    test_case_number++;
    if (test_case_errors) {
        test_cases_failed++;
        printf("not ok %d - %s (%d failed expectations)\n", test_case_number, name, test_case_errors);
    } else {
        printf("ok %d - %s\n", test_case_number, name);
    }
    fflush(stdout);
}
#define RUN(name) test_run(#name, name)

static inline int test_summary(void) {
    printf("1..%d\n", test_case_number);
    return test_cases_failed ? 1 : 0;
}

/* Deterministic random numbers for tests (xorshift64*), never zeros. */
static uint64_t test_rng_state = 0x9E3779B97F4A7C15ull;
static inline void test_seed(uint64_t s) { test_rng_state = s ? s : 1; }
static inline uint64_t test_rand_u64(void) {
    test_rng_state ^= test_rng_state >> 12;
    test_rng_state ^= test_rng_state << 25;
    test_rng_state ^= test_rng_state >> 27;
    return test_rng_state * 0x2545F4914F6CDD1Dull;
}
/* Uniform in [-1, 1). */
static inline float test_randf(void) { return (float)((test_rand_u64() >> 40) * (1.0 / 8388608.0) - 1.0); }
static inline void test_fill(float *x, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = scale * test_randf();
}

#endif
