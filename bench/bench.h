/* Helpers the benchmark programs of bench/ share (header-only: each
 * translation unit linked against lib/libra.a). */
#ifndef RA_BENCH_H
#define RA_BENCH_H

#include <stdlib.h>

static int bench_cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Median of v[0..n) (sorts v in place). */
static inline float bench_median(float *v, int n) {
    qsort(v, (size_t)n, sizeof *v, bench_cmp_float);
    return n % 2 ? v[n / 2] : 0.5f * (v[n / 2 - 1] + v[n / 2]);
}

#endif
