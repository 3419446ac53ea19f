/* The fp32 host -> bf16 device upload (cuda_upload_bf16) and the way back
 * (cuda_download_bf16), bit for bit.
 *
 * Large uploads convert on every core into pinned staging buffers, two
 * chunks in flight (kernels/cuda_runtime.cu); small ones convert into
 * pageable memory.  Both must give exactly the round-to-nearest-even bf16 of
 * every input: checked against an independent reference written here (the
 * nearer of the two bf16 neighbours, computed in double, ties to the even
 * mantissa, overflow to Inf) and against the CPU conversion ra_f32_to_bf16
 * that the rest of the code uses.  Inputs are random 32-bit patterns (every
 * exponent: subnormals, Inf, NaN), exact ties and near-ties of random
 * values, and the edge values; sizes straddle the staging threshold and
 * chunk size with odd tails; uploads go to unaligned offsets and reuse the
 * staging buffers back to back.  The device buffer is poisoned first, so an
 * element never written fails. */
#include <math.h>
#include <string.h>

#include "dtype.h"
#include "error.h"
#include "ops_cuda.h"
#include "test.h"
#include "gpu_test.h"

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* The reference: the bf16 value nearest to x (ties to an even mantissa);
 * magnitudes at or past the midpoint between the largest bf16 and 2^128
 * become Inf.  NaN: any quiet NaN of the same sign (checked apart). */
static uint16_t ref_bf16(float x) {
    uint32_t u = f32_bits(x);
    uint16_t lo = (uint16_t)(u >> 16); /* truncation toward zero */
    if ((u & 0xffffu) == 0) return lo; /* exact (also ±0, ±Inf) */
    uint16_t hi = (uint16_t)(lo + 1);  /* next magnitude away from zero */
    double dx = fabs((double)x), dlo = fabs((double)bits_f32((uint32_t)lo << 16));
    double dhi = (lo & 0x7fffu) == 0x7f7fu ? ldexp(1.0, 128) : fabs((double)bits_f32((uint32_t)hi << 16));
    double below = dx - dlo, above = dhi - dx;
    if (below < above) return lo;
    if (above < below) return hi;
    return (lo & 1u) ? hi : lo;
}

static int is_bf16_nan(uint16_t h) { return (h & 0x7f80u) == 0x7f80u && (h & 0x7fu); }

/* n inputs: a mix of random bit patterns, ties, near-ties and edge values. */
static float *make_inputs(size_t n) {
    static const uint32_t edge[] = {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0xffc00001u,
                                    0x7f800001u, 0x00000001u, 0x80008000u, 0x00018000u, 0x7f7fffffu, 0xff7f8000u,
                                    0x7f7f7fffu, 0x3f808000u, 0x3f818000u, 0x3f80ffffu};
    float *x = xmalloc(n * sizeof(float) + 1);
    for (size_t i = 0; i < n; i++) {
        uint32_t r = (uint32_t)test_rand_u64();
        switch (test_rand_u64() % 4) {
        case 0: break;                                          /* any pattern */
        case 1: r = (r & 0xffff0000u) | 0x8000u; break;         /* exact tie */
        case 2: r = (r & 0xffff0000u) | (r & 1u ? 0x7fffu : 0x8001u); break; /* near tie */
        default: r = (r & 0x80ffffffu) | (uint32_t)(0x3c000000u + (test_rand_u64() % 0x4000000u)); /* weights' range */
        }
        x[i] = bits_f32(r);
    }
    for (size_t i = 0; i < sizeof edge / sizeof *edge && i < n; i++) x[(i * 7919) % n] = bits_f32(edge[i]);
    return x;
}

/* Upload x[0..n) to dev+offset and compare the stored bits. */
static void check_upload(const char *what, const float *x, size_t n, size_t offset) {
    uint16_t *d = cuda_malloc((n + offset) * sizeof(uint16_t));
    cuda_memset(d, 0x5A, (n + offset) * sizeof(uint16_t));
    cuda_upload_bf16(d + offset, x, n);
    uint16_t *got = xmalloc((n + offset) * sizeof(uint16_t));
    cuda_synchronize();
    cuda_download(got, d, (n + offset) * sizeof(uint16_t));
    size_t bad_ref = 0, bad_cpu = 0, nans = 0, ties = 0, first = (size_t)-1;
    for (size_t i = 0; i < n; i++) {
        uint16_t g = got[offset + i];
        uint32_t u = f32_bits(x[i]);
        if (isnan(x[i])) {
            nans++;
            if (!is_bf16_nan(g) || (g & 0x8000u) != ((u >> 16) & 0x8000u)) bad_ref++;
        } else if (g != ref_bf16(x[i])) {
            bad_ref++;
        }
        if ((u & 0xffffu) == 0x8000u) ties++;
        if (g != ra_f32_to_bf16(x[i])) bad_cpu++;
        if ((g != ra_f32_to_bf16(x[i])) && first == (size_t)-1) first = i;
    }
    size_t bad_pad = 0;
    for (size_t i = 0; i < offset; i++) bad_pad += got[i] != 0x5A5A;
    printf("#   %-48s n=%zu off=%zu: %zu vs reference, %zu vs ra_f32_to_bf16 differ (%zu NaN, %zu ties)\n", what, n,
           offset, bad_ref, bad_cpu, nans, ties);
    EXPECT_MSG(bad_ref == 0, "%s: %zu of %zu differ from round-to-nearest-even", what, bad_ref, n);
    EXPECT_MSG(bad_cpu == 0, "%s: %zu of %zu differ from ra_f32_to_bf16 (first at %zu: 0x%08x)", what, bad_cpu, n,
               first, first == (size_t)-1 ? 0u : f32_bits(x[first]));
    EXPECT_MSG(bad_pad == 0, "%s: %zu elements before the destination were overwritten", what, bad_pad);
    EXPECT(nans > 0 && ties > 0); /* the input mix reached the cases it is for */
    cuda_free(d);
    free(got);
}

TEST(upload_bf16_rounds_like_the_cpu) {
    test_seed(7);
    const size_t chunk = (size_t)1 << 24, threshold = (size_t)1 << 22;
    size_t sizes[] = {1000, threshold - 1, threshold, chunk, chunk + 1, 3 * chunk + 12345};
    size_t nmax = 3 * chunk + 12345;
    float *x = make_inputs(nmax);
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        char what[64];
        snprintf(what, sizeof what, "upload_bf16 %s", sizes[k] >= threshold ? "(staged)" : "(pageable)");
        check_upload(what, x + (nmax - sizes[k]), sizes[k], k & 1); /* odd offsets: 2-byte aligned DMA */
    }
    free(x);
}

/* Two large uploads straight after each other into one buffer: the second
 * must wait for the first's copies out of the shared staging buffers. */
TEST(upload_bf16_back_to_back_reuses_staging) {
    test_seed(8);
    size_t n = ((size_t)5 << 23) + 3;
    float *a = make_inputs(n), *b = make_inputs(n);
    uint16_t *da = cuda_malloc(n * sizeof(uint16_t)), *db = cuda_malloc(n * sizeof(uint16_t));
    cuda_upload_bf16(da, a, n);
    cuda_upload_bf16(db, b, n);
    uint16_t *ga = xmalloc(n * sizeof(uint16_t)), *gb = xmalloc(n * sizeof(uint16_t));
    cuda_download(ga, da, n * sizeof(uint16_t));
    cuda_download(gb, db, n * sizeof(uint16_t));
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += (ga[i] != ra_f32_to_bf16(a[i])) + (gb[i] != ra_f32_to_bf16(b[i]));
    printf("#   upload_bf16 back to back, 2 x %zu: %zu differ\n", n, bad);
    EXPECT_MSG(bad == 0, "%zu of %zu values differ", bad, 2 * n);
    cuda_free(da), cuda_free(db);
    free(a), free(b), free(ga), free(gb);
}

/* The way back: every stored bf16 becomes the float with those top bits. */
TEST(download_bf16_is_exact) {
    test_seed(9);
    size_t n = ((size_t)1 << 23) + 77;
    uint16_t *h = xmalloc(n * sizeof(uint16_t));
    for (size_t i = 0; i < n; i++) h[i] = (uint16_t)test_rand_u64();
    uint16_t *d = cuda_malloc(n * sizeof(uint16_t));
    cuda_upload(d, h, n * sizeof(uint16_t));
    float *got = xmalloc(n * sizeof(float));
    cuda_download_bf16(got, d, n);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += f32_bits(got[i]) != (uint32_t)h[i] << 16;
    printf("#   download_bf16 n=%zu: %zu differ\n", n, bad);
    EXPECT_MSG(bad == 0, "%zu of %zu values differ", bad, n);
    cuda_free(d);
    free(h), free(got);
}

int main(void) {
    if (gpu_test_start()) return 1;
    RUN(upload_bf16_rounds_like_the_cpu);
    RUN(upload_bf16_back_to_back_reuses_staging);
    RUN(download_bf16_is_exact);
    return test_summary();
}
