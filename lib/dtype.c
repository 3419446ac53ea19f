#include "dtype.h"

#include <math.h>
#include <string.h>

static const char *const dtype_names[RA_DTYPE_COUNT] = {"bf16", "f16", "f32", "f64", "i32", "i64", "u8"};
static const size_t dtype_sizes[RA_DTYPE_COUNT] = {2, 2, 4, 8, 4, 8, 1};

const char *ra_dtype_name(ra_dtype t) { return (unsigned)t < RA_DTYPE_COUNT ? dtype_names[t] : "?"; }
size_t ra_dtype_size(ra_dtype t) { return (unsigned)t < RA_DTYPE_COUNT ? dtype_sizes[t] : 0; }
int ra_dtype_is_float(ra_dtype t) { return t == RA_BF16 || t == RA_F16 || t == RA_F32 || t == RA_F64; }

int ra_dtype_parse(const char *name, ra_dtype *out) {
    for (int i = 0; i < RA_DTYPE_COUNT; i++)
        if (strcmp(name, dtype_names[i]) == 0) {
            *out = (ra_dtype)i;
            return 0;
        }
    return -1;
}

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t ra_f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

float ra_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t ra_f32_to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((absu >> 13) & 0x3ffu)); /* NaN */
    if (absu >= 0x47800000u) return (uint16_t)(sign | 0x7c00u); /* >= 65536 (or Inf): Inf */
    if (absu < 0x38800000u) { /* below 2^-14, the smallest normal half: subnormal or zero */
        if (absu < 0x33000000u) return (uint16_t)sign; /* below 2^-25: rounds to zero */
        uint32_t mant = (absu & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)(absu >> 23); /* in units of 2^-24, the half subnormal step */
        uint32_t q = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1u);
        uint32_t halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t h = ((absu - 0x38000000u) >> 13); /* rebias exponent 127 -> 15 */
    uint32_t rem = absu & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++; /* may carry into Inf: correct */
    return (uint16_t)(sign | h);
}

float ra_f16_to_f32(uint16_t h) {
    uint32_t sign = ((uint32_t)h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0) {
        float v = ldexpf((float)mant, -24);
        return sign ? -v : v;
    }
    if (exp == 31) return bits_f32(sign | 0x7f800000u | (mant << 13));
    return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

/* Conversions of large arrays (model weights: up to a billion elements) run
 * on every core: a parallel loop over blocks when n is large enough to pay
 * for the threads.  Each element is converted by the same scalar function,
 * so the result does not depend on the thread count.  Inside an enclosing
 * parallel region (lib/model_load.c) the loop runs on the calling thread. */
#define CONVERT_PARALLEL_MIN ((size_t)1 << 20)
#define CONVERT_BLOCK ((size_t)1 << 16)

static void bf16_block_to_f32(float *dst, const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint16_t v;
        memcpy(&v, p + 2 * i, 2);
        dst[i] = ra_bf16_to_f32(v);
    }
}

static void f32_block_to_bf16(unsigned char *p, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint16_t v = ra_f32_to_bf16(src[i]);
        memcpy(p + 2 * i, &v, 2);
    }
}

static void to_f32_serial(float *dst, const unsigned char *p, ra_dtype st, size_t n) {
    switch (st) { /* the common cases as tight loops, the rest element by element */
    case RA_BF16: bf16_block_to_f32(dst, p, n); return;
    case RA_F32: memcpy(dst, p, n * 4); return;
    default: break;
    }
    for (size_t i = 0; i < n; i++) {
        switch (st) {
        case RA_F16: { uint16_t v; memcpy(&v, p + 2 * i, 2); dst[i] = ra_f16_to_f32(v); break; }
        case RA_F64: { double v; memcpy(&v, p + 8 * i, 8); dst[i] = (float)v; break; }
        case RA_I32: { int32_t v; memcpy(&v, p + 4 * i, 4); dst[i] = (float)v; break; }
        case RA_I64: { int64_t v; memcpy(&v, p + 8 * i, 8); dst[i] = (float)v; break; }
        case RA_U8: dst[i] = (float)p[i]; break;
        default: dst[i] = NAN;
        }
    }
}

void ra_convert_to_f32(float *dst, const void *src, ra_dtype st, size_t n) {
    const unsigned char *p = src;
    size_t es = ra_dtype_size(st) ? ra_dtype_size(st) : 1;
    if (n < CONVERT_PARALLEL_MIN) {
        to_f32_serial(dst, p, st, n);
        return;
    }
    long nb = (long)((n + CONVERT_BLOCK - 1) / CONVERT_BLOCK);
#pragma omp parallel for schedule(static)
    for (long b = 0; b < nb; b++) {
        size_t off = (size_t)b * CONVERT_BLOCK, m = n - off < CONVERT_BLOCK ? n - off : CONVERT_BLOCK;
        to_f32_serial(dst + off, p + off * es, st, m);
    }
}

void ra_convert_to_f64(double *dst, const void *src, ra_dtype st, size_t n) {
    const unsigned char *p = src;
    for (size_t i = 0; i < n; i++) {
        switch (st) {
        case RA_F64: memcpy(dst + i, p + 8 * i, 8); break;
        case RA_I64: { int64_t v; memcpy(&v, p + 8 * i, 8); dst[i] = (double)v; break; }
        default: { float f; ra_convert_to_f32(&f, p + ra_dtype_size(st) * i, st, 1); dst[i] = f; }
        }
    }
}

static void from_f32_serial(unsigned char *p, ra_dtype dt, const float *src, size_t n) {
    switch (dt) {
    case RA_BF16: f32_block_to_bf16(p, src, n); return;
    case RA_F32: memcpy(p, src, n * 4); return;
    default: break;
    }
    for (size_t i = 0; i < n; i++) {
        switch (dt) {
        case RA_F16: { uint16_t v = ra_f32_to_f16(src[i]); memcpy(p + 2 * i, &v, 2); break; }
        case RA_F64: { double v = src[i]; memcpy(p + 8 * i, &v, 8); break; }
        case RA_I32: { int32_t v = (int32_t)lrintf(src[i]); memcpy(p + 4 * i, &v, 4); break; }
        case RA_I64: { int64_t v = (int64_t)llrintf(src[i]); memcpy(p + 8 * i, &v, 8); break; }
        case RA_U8: p[i] = (unsigned char)lrintf(src[i]); break;
        default: break;
        }
    }
}

void ra_convert_from_f32(void *dst, ra_dtype dt, const float *src, size_t n) {
    unsigned char *p = dst;
    size_t es = ra_dtype_size(dt);
    if (n < CONVERT_PARALLEL_MIN || !es) {
        from_f32_serial(p, dt, src, n);
        return;
    }
    long nb = (long)((n + CONVERT_BLOCK - 1) / CONVERT_BLOCK);
#pragma omp parallel for schedule(static)
    for (long b = 0; b < nb; b++) {
        size_t off = (size_t)b * CONVERT_BLOCK, m = n - off < CONVERT_BLOCK ? n - off : CONVERT_BLOCK;
        from_f32_serial(p + off * es, dt, src + off, m);
    }
}

int64_t ra_shape_numel(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return -1;
        if (shape[i] != 0 && n > INT64_MAX / shape[i]) return -1;
        n *= shape[i];
    }
    return n;
}
