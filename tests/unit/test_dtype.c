#include "dtype.h"
#include "test.h"

/* float64 reference for bf16 rounding: nearest representable, ties to even. */
static double bf16_round_ref(double x) {
    if (x == 0 || !isfinite(x)) return x;
    int e;
    frexp(x, &e);                      /* x = m * 2^e, 0.5 <= |m| < 1 */
    double ulp = ldexp(1.0, e - 8);    /* bf16 has 8 significant bits */
    double q = x / ulp, r = nearbyint(q); /* default rounding mode: ties to even */
    return r * ulp;
}

TEST(bf16_rounds_to_nearest_even) {
    test_seed(1);
    for (int i = 0; i < 200000; i++) {
        float x = test_randf() * ldexpf(1.0f, (int)(test_rand_u64() % 60) - 30);
        float got = ra_bf16_to_f32(ra_f32_to_bf16(x));
        double want = bf16_round_ref(x);
        if (got != (float)want) {
            EXPECT_MSG(0, "bf16(%a) = %a, want %a", x, got, want);
            break;
        }
    }
    /* exact ties: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7 and rounds to even (1) */
    EXPECT(ra_bf16_to_f32(ra_f32_to_bf16(1.0f + ldexpf(1, -8))) == 1.0f);
    EXPECT(ra_bf16_to_f32(ra_f32_to_bf16(1.0f + 3 * ldexpf(1, -8))) == 1.0f + ldexpf(1, -6));
}

TEST(bf16_keeps_nan_and_inf) {
    EXPECT(isnan(ra_bf16_to_f32(ra_f32_to_bf16(NAN))));
    EXPECT(isinf(ra_bf16_to_f32(ra_f32_to_bf16(INFINITY))));
    EXPECT(ra_bf16_to_f32(ra_f32_to_bf16(-INFINITY)) < 0);
    /* a NaN whose payload sits only in the low bits must not become Inf */
    uint32_t u = 0x7f800001u;
    float f;
    memcpy(&f, &u, 4);
    EXPECT(isnan(ra_bf16_to_f32(ra_f32_to_bf16(f))));
    /* the largest finite float rounds up to Inf in bf16, as in PyTorch */
    EXPECT(isinf(ra_bf16_to_f32(ra_f32_to_bf16(3.4028235e38f))));
}

static double f16_round_ref(double x) {
    if (x == 0 || !isfinite(x)) return x;
    int e;
    frexp(x, &e);
    if (e < -13) e = -13;                /* subnormal range: fixed step 2^-24 */
    double ulp = ldexp(1.0, e - 11);
    double r = nearbyint(x / ulp) * ulp;
    return fabs(r) >= 65520.0 ? copysign(INFINITY, x) : r;
}

TEST(f16_rounds_to_nearest_even_with_subnormals) {
    test_seed(2);
    for (int i = 0; i < 200000; i++) {
        float x = test_randf() * ldexpf(1.0f, (int)(test_rand_u64() % 48) - 30);
        float got = ra_f16_to_f32(ra_f32_to_f16(x));
        double want = f16_round_ref(x);
        if (got != (float)want) {
            EXPECT_MSG(0, "f16(%a) = %a, want %a", x, got, want);
            break;
        }
    }
    EXPECT(isinf(ra_f16_to_f32(ra_f32_to_f16(65520.0f))));
    EXPECT(ra_f16_to_f32(ra_f32_to_f16(65504.0f)) == 65504.0f);
    EXPECT(isnan(ra_f16_to_f32(ra_f32_to_f16(NAN))));
    EXPECT(ra_f16_to_f32(ra_f32_to_f16(ldexpf(1, -24))) == ldexpf(1, -24));
    EXPECT(ra_f16_to_f32(ra_f32_to_f16(ldexpf(1, -25))) == 0.0f); /* tie rounds to even 0 */
}

TEST(every_f16_and_bf16_value_round_trips) {
    for (uint32_t h = 0; h < 65536; h++) {
        float f = ra_f16_to_f32((uint16_t)h);
        if (isnan(f)) continue;
        EXPECT_MSG(ra_f32_to_f16(f) == h, "f16 %04x -> %a -> %04x", h, f, ra_f32_to_f16(f));
        float g = ra_bf16_to_f32((uint16_t)h);
        if (isnan(g)) continue;
        EXPECT_MSG(ra_f32_to_bf16(g) == h, "bf16 %04x -> %a", h, g);
    }
}

TEST(dtype_names_parse) {
    for (int t = 0; t < RA_DTYPE_COUNT; t++) {
        ra_dtype back;
        EXPECT(ra_dtype_parse(ra_dtype_name((ra_dtype)t), &back) == 0 && back == (ra_dtype)t);
    }
    ra_dtype x;
    EXPECT(ra_dtype_parse("float32", &x) == -1);
    int64_t big[2] = {INT64_MAX / 2, 3};
    EXPECT(ra_shape_numel(2, big) == -1);
    int64_t neg[1] = {-1};
    EXPECT(ra_shape_numel(1, neg) == -1);
}

/* Arrays of 2^20 elements or more convert on every core, in blocks: the
 * result must equal the element-by-element scalar conversion for every
 * dtype, both directions, with a length that leaves a ragged last block and
 * random bit patterns (NaN, Inf, subnormals included). */
TEST(large_array_conversions_equal_the_scalar_ones) {
    test_seed(31);
    size_t n = ((size_t)3 << 20) + 12345;
    const ra_dtype types[] = {RA_BF16, RA_F16, RA_F32, RA_F64, RA_I32, RA_I64, RA_U8};
    uint8_t *raw = malloc(n * 8);
    for (size_t i = 0; i < n * 8; i++) raw[i] = (uint8_t)test_rand_u64();
    float *f = malloc(n * sizeof(float)), *one = malloc(sizeof(float));
    for (size_t i = 0; i < n; i++) f[i] = (float)(test_randf() * 1e4);
    float *got = malloc(n * sizeof(float));
    uint8_t *out = malloc(n * 8), *ref = malloc(8);
    for (size_t k = 0; k < sizeof types / sizeof *types; k++) {
        ra_dtype t = types[k];
        size_t es = ra_dtype_size(t), bad = 0;
        ra_convert_to_f32(got, raw, t, n);
        for (size_t i = 0; i < n; i++) {
            ra_convert_to_f32(one, raw + i * es, t, 1);
            uint32_t a, b;
            memcpy(&a, one, 4), memcpy(&b, got + i, 4);
            bad += a != b;
        }
        EXPECT_MSG(bad == 0, "to f32 from %s: %zu of %zu differ", ra_dtype_name(t), bad, n);
        bad = 0;
        ra_convert_from_f32(out, t, f, n);
        for (size_t i = 0; i < n; i++) {
            ra_convert_from_f32(ref, t, f + i, 1);
            bad += memcmp(ref, out + i * es, es) != 0;
        }
        EXPECT_MSG(bad == 0, "from f32 to %s: %zu of %zu differ", ra_dtype_name(t), bad, n);
    }
    /* and bf16 specifically against the definition of the format */
    size_t bad = 0;
    ra_convert_to_f32(got, raw, RA_BF16, n);
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        uint32_t u;
        memcpy(&h, raw + 2 * i, 2), memcpy(&u, got + i, 4);
        bad += u != (uint32_t)h << 16;
    }
    EXPECT_MSG(bad == 0, "bf16 -> f32: %zu of %zu are not the bits shifted up", bad, n);
    free(raw), free(f), free(one), free(got), free(out), free(ref);
}

int main(void) {
    RUN(bf16_rounds_to_nearest_even);
    RUN(bf16_keeps_nan_and_inf);
    RUN(f16_rounds_to_nearest_even_with_subnormals);
    RUN(every_f16_and_bf16_value_round_trips);
    RUN(dtype_names_parse);
    RUN(large_array_conversions_equal_the_scalar_ones);
    return test_summary();
}
