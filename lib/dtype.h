/* Element types of ra tensors and conversions between them. */
#ifndef RA_DTYPE_H
#define RA_DTYPE_H

#include <stddef.h>
#include <stdint.h>

typedef enum ra_dtype {
    RA_BF16 = 0,
    RA_F16,
    RA_F32,
    RA_F64,
    RA_I32,
    RA_I64,
    RA_U8,
    RA_DTYPE_COUNT
} ra_dtype;

#define RA_MAX_DIMS 8

const char *ra_dtype_name(ra_dtype t);         /* "bf16", "f32", ... */
size_t ra_dtype_size(ra_dtype t);              /* bytes per element */
int ra_dtype_parse(const char *name, ra_dtype *out); /* 0 ok, -1 unknown */
int ra_dtype_is_float(ra_dtype t);

/* bf16 <-> f32: rounding to nearest even; NaN stays NaN (quiet), Inf stays Inf. */
uint16_t ra_f32_to_bf16(float f);
float ra_bf16_to_f32(uint16_t h);
/* IEEE half <-> f32: round to nearest even, subnormals, Inf and NaN handled. */
uint16_t ra_f32_to_f16(float f);
float ra_f16_to_f32(uint16_t h);

/* Convert n elements of src (type st) to f32 / f64 / from f32.  Integer types
 * convert by value.  Buffers must not overlap.  ra_convert_to_f32 and
 * ra_convert_from_f32 split arrays of 2^20 elements or more over every core
 * (OpenMP); the result does not depend on the thread count. */
void ra_convert_to_f32(float *dst, const void *src, ra_dtype st, size_t n);
void ra_convert_to_f64(double *dst, const void *src, ra_dtype st, size_t n);
void ra_convert_from_f32(void *dst, ra_dtype dt, const float *src, size_t n);

/* Number of elements of a shape; returns -1 if it overflows int64 or a dim < 0. */
int64_t ra_shape_numel(int ndim, const int64_t *shape);

#endif
