/* Memory-bound ops: embedding, RMSNorm, RoPE, SwiGLU, residual add, head
 * mask, row gather.  bf16 in and out, fp32 arithmetic.  Each has a 16-byte
 * vector path (8 bf16 per access) when sizes and pointers allow it and a
 * scalar path otherwise, so any shape works. */
#include "cuda_common.cuh"
#include "ops_cuda.h"

/* ---- embedding ---------------------------------------------------------- */

template <bool VEC>
__global__ void embedding_kernel(bf16 *out, const int32_t *tokens, const bf16 *table, int D) {
    int i = blockIdx.x;
    int tok = tokens[i];
    bf16 *o = out + (size_t)i * D;
    const bf16 *row = table + (size_t)(tok < 0 ? 0 : tok) * D;
    if (VEC) {
        for (int c = threadIdx.x; c < D / 8; c += blockDim.x) {
            uint4 u = tok < 0 ? make_uint4(0, 0, 0, 0) : reinterpret_cast<const uint4 *>(row)[c];
            reinterpret_cast<uint4 *>(o)[c] = u;
        }
    } else {
        for (int j = threadIdx.x; j < D; j += blockDim.x) o[j] = tok < 0 ? __float2bfloat16(0.0f) : row[j];
    }
}

extern "C" void cuda_embedding_forward(uint16_t *out, const int32_t *tokens, const uint16_t *table, int n, int D) {
    if (n <= 0 || D <= 0) return;
    bool vec = D % 8 == 0 && ra_aligned16(out) && ra_aligned16(table);
    if (vec)
        embedding_kernel<true><<<n, 128, 0, ra_cuda_stream>>>((bf16 *)out, tokens, (const bf16 *)table, D);
    else
        embedding_kernel<false><<<n, 128, 0, ra_cuda_stream>>>((bf16 *)out, tokens, (const bf16 *)table, D);
    CUDA_CHECK_LAST();
}

/* ---- RMSNorm: one block per row ----------------------------------------- */

template <bool VEC>
__global__ void rmsnorm_kernel(bf16 *out, float *rstd, const bf16 *in, const bf16 *weight, int D, float eps) {
    __shared__ float scratch[32];
    int row = blockIdx.x;
    const bf16 *x = in + (size_t)row * D;
    bf16 *y = out + (size_t)row * D;
    float ss = 0.0f;
    if (VEC) {
        for (int c = threadIdx.x; c < D / 8; c += blockDim.x) {
            float f[8];
            bf16x8_to_float(reinterpret_cast<const uint4 *>(x)[c], f);
#pragma unroll
            for (int u = 0; u < 8; u++) ss += f[u] * f[u];
        }
    } else {
        for (int j = threadIdx.x; j < D; j += blockDim.x) {
            float f = __bfloat162float(x[j]);
            ss += f * f;
        }
    }
    ss = block_sum(ss, scratch);
    /* HF: x * rsqrt(mean(x²) + eps), then weight * that */
    float r = rsqrtf(ss / (float)D + eps);
    if (rstd && threadIdx.x == 0) rstd[row] = r;
    if (VEC) {
        for (int c = threadIdx.x; c < D / 8; c += blockDim.x) {
            float f[8], w[8];
            bf16x8_to_float(reinterpret_cast<const uint4 *>(x)[c], f);
            bf16x8_to_float(reinterpret_cast<const uint4 *>(weight)[c], w);
#pragma unroll
            for (int u = 0; u < 8; u++) f[u] = w[u] * (f[u] * r);
            reinterpret_cast<uint4 *>(y)[c] = float_to_bf16x8(f);
        }
    } else {
        for (int j = threadIdx.x; j < D; j += blockDim.x)
            y[j] = __float2bfloat16(__bfloat162float(weight[j]) * (__bfloat162float(x[j]) * r));
    }
}

extern "C" void cuda_rmsnorm_forward(uint16_t *out, float *rstd, const uint16_t *in, const uint16_t *weight, int n,
                                     int D, float eps) {
    if (n <= 0 || D <= 0) return;
    bool vec = D % 8 == 0 && ra_aligned16(out) && ra_aligned16(in) && ra_aligned16(weight);
    int threads = vec ? (D / 8 >= 256 ? 256 : ((D / 8 + 31) / 32) * 32) : (D >= 256 ? 256 : ((D + 31) / 32) * 32);
    if (vec)
        rmsnorm_kernel<true><<<n, threads, 0, ra_cuda_stream>>>((bf16 *)out, rstd, (const bf16 *)in,
                                                                (const bf16 *)weight, D, eps);
    else
        rmsnorm_kernel<false><<<n, threads, 0, ra_cuda_stream>>>((bf16 *)out, rstd, (const bf16 *)in,
                                                                 (const bf16 *)weight, D, eps);
    CUDA_CHECK_LAST();
}

/* ---- RoPE ---------------------------------------------------------------- */

__global__ void rope_tables_kernel(float *cos_t, float *sin_t, const int32_t *positions, int n,
                                   const float *inv_freq, int half) {
    int64_t total = (int64_t)n * half;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
        int64_t i = e / half;
        int j = (int)(e - i * half);
        float angle = inv_freq[j] * (float)positions[i]; /* the fp32 product, as HF computes it */
        float s, c;
        sincosf(angle, &s, &c);
        cos_t[e] = c;
        sin_t[e] = s;
    }
}

extern "C" void cuda_rope_tables(float *cos_t, float *sin_t, const int32_t *positions, int n, const float *inv_freq,
                                 int head_dim) {
    int half = head_dim / 2;
    if (n <= 0 || half <= 0) return;
    rope_tables_kernel<<<ra_grid_for((int64_t)n * half, 256), 256, 0, ra_cuda_stream>>>(cos_t, sin_t, positions, n,
                                                                                         inv_freq, half);
    CUDA_CHECK_LAST();
}

/* One thread rotates 8 pairs (j, j+half) .. (j+7, j+7+half) of one head. */
__global__ void rope_vec_kernel(bf16 *x, int64_t row_stride, const float *cos_t, const float *sin_t, int n,
                                int heads, int hd) {
    int half = hd / 2, chunks = half / 8;
    int64_t total = (int64_t)n * heads * chunks;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
        int c = (int)(e % chunks);
        int64_t r = e / chunks;
        int h = (int)(r % heads);
        int64_t i = r / heads;
        bf16 *v = x + i * row_stride + (int64_t)h * hd + c * 8;
        const float *cs = cos_t + i * half + c * 8, *sn = sin_t + i * half + c * 8;
        float x1[8], x2[8], co[8], si[8];
        bf16x8_to_float(*reinterpret_cast<const uint4 *>(v), x1);
        bf16x8_to_float(*reinterpret_cast<const uint4 *>(v + half), x2);
        *reinterpret_cast<float4 *>(co) = reinterpret_cast<const float4 *>(cs)[0];
        *reinterpret_cast<float4 *>(co + 4) = reinterpret_cast<const float4 *>(cs)[1];
        *reinterpret_cast<float4 *>(si) = reinterpret_cast<const float4 *>(sn)[0];
        *reinterpret_cast<float4 *>(si + 4) = reinterpret_cast<const float4 *>(sn)[1];
        float y1[8], y2[8];
#pragma unroll
        for (int u = 0; u < 8; u++) {
            y1[u] = x1[u] * co[u] - x2[u] * si[u];
            y2[u] = x2[u] * co[u] + x1[u] * si[u];
        }
        *reinterpret_cast<uint4 *>(v) = float_to_bf16x8(y1);
        *reinterpret_cast<uint4 *>(v + half) = float_to_bf16x8(y2);
    }
}

__global__ void rope_scalar_kernel(bf16 *x, int64_t row_stride, const float *cos_t, const float *sin_t, int n,
                                   int heads, int hd) {
    int half = hd / 2;
    int64_t total = (int64_t)n * heads * half;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
        int j = (int)(e % half);
        int64_t r = e / half;
        int h = (int)(r % heads);
        int64_t i = r / heads;
        bf16 *v = x + i * row_stride + (int64_t)h * hd;
        float c = cos_t[i * half + j], s = sin_t[i * half + j];
        float x1 = __bfloat162float(v[j]), x2 = __bfloat162float(v[j + half]);
        v[j] = __float2bfloat16(x1 * c - x2 * s);
        v[j + half] = __float2bfloat16(x2 * c + x1 * s);
    }
}

extern "C" void cuda_rope_forward_strided(uint16_t *x, int64_t row_stride, const float *cos_t, const float *sin_t,
                                          int n, int heads, int head_dim) {
    int half = head_dim / 2;
    if (n <= 0 || heads <= 0 || half <= 0) return;
    bool vec = half % 8 == 0 && row_stride % 8 == 0 && ra_aligned16(x) && ra_aligned16(cos_t) && ra_aligned16(sin_t);
    if (vec) {
        int64_t total = (int64_t)n * heads * (half / 8);
        rope_vec_kernel<<<ra_grid_for(total, 256), 256, 0, ra_cuda_stream>>>((bf16 *)x, row_stride, cos_t, sin_t, n,
                                                                             heads, head_dim);
    } else {
        int64_t total = (int64_t)n * heads * half;
        rope_scalar_kernel<<<ra_grid_for(total, 256), 256, 0, ra_cuda_stream>>>((bf16 *)x, row_stride, cos_t, sin_t,
                                                                                n, heads, head_dim);
    }
    CUDA_CHECK_LAST();
}

extern "C" void cuda_rope_forward(uint16_t *x, const float *cos_t, const float *sin_t, int n, int heads,
                                  int head_dim) {
    cuda_rope_forward_strided(x, (int64_t)heads * head_dim, cos_t, sin_t, n, heads, head_dim);
}

/* ---- SwiGLU ------------------------------------------------------------- */

__device__ __forceinline__ float silu_mul(float g, float u) { return g / (1.0f + expf(-g)) * u; }

__global__ void swiglu_vec_kernel(bf16 *out, const bf16 *gate, const bf16 *up, int64_t n8) {
    for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < n8; c += (int64_t)gridDim.x * blockDim.x) {
        float g[8], u[8];
        bf16x8_to_float(reinterpret_cast<const uint4 *>(gate)[c], g);
        bf16x8_to_float(reinterpret_cast<const uint4 *>(up)[c], u);
#pragma unroll
        for (int k = 0; k < 8; k++) g[k] = silu_mul(g[k], u[k]);
        reinterpret_cast<uint4 *>(out)[c] = float_to_bf16x8(g);
    }
}

__global__ void swiglu_scalar_kernel(bf16 *out, const bf16 *gate, const bf16 *up, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = __float2bfloat16(silu_mul(__bfloat162float(gate[i]), __bfloat162float(up[i])));
}

extern "C" void cuda_swiglu_forward(uint16_t *out, const uint16_t *gate, const uint16_t *up, int64_t n) {
    if (n <= 0) return;
    if (n % 8 == 0 && ra_aligned16(out) && ra_aligned16(gate) && ra_aligned16(up))
        swiglu_vec_kernel<<<ra_grid_for(n / 8, 256), 256, 0, ra_cuda_stream>>>((bf16 *)out, (const bf16 *)gate,
                                                                               (const bf16 *)up, n / 8);
    else
        swiglu_scalar_kernel<<<ra_grid_for(n, 256), 256, 0, ra_cuda_stream>>>((bf16 *)out, (const bf16 *)gate,
                                                                              (const bf16 *)up, n);
    CUDA_CHECK_LAST();
}

/* gate_up row i: gate in [0, I), up in [I, 2I). */
__global__ void swiglu_fused_vec_kernel(bf16 *out, const bf16 *gu, int n, int I) {
    int chunks = I / 8;
    int64_t total = (int64_t)n * chunks;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
        int64_t i = e / chunks;
        int c = (int)(e - i * chunks);
        const bf16 *row = gu + i * 2 * I;
        float g[8], u[8];
        bf16x8_to_float(reinterpret_cast<const uint4 *>(row)[c], g);
        bf16x8_to_float(reinterpret_cast<const uint4 *>(row + I)[c], u);
#pragma unroll
        for (int k = 0; k < 8; k++) g[k] = silu_mul(g[k], u[k]);
        reinterpret_cast<uint4 *>(out + i * I)[c] = float_to_bf16x8(g);
    }
}

__global__ void swiglu_fused_scalar_kernel(bf16 *out, const bf16 *gu, int n, int I) {
    int64_t total = (int64_t)n * I;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
        int64_t i = e / I;
        int j = (int)(e - i * I);
        const bf16 *row = gu + i * 2 * I;
        out[e] = __float2bfloat16(silu_mul(__bfloat162float(row[j]), __bfloat162float(row[I + j])));
    }
}

extern "C" void cuda_swiglu_fused_forward(uint16_t *out, const uint16_t *gate_up, int n, int I) {
    if (n <= 0 || I <= 0) return;
    if (I % 8 == 0 && ra_aligned16(out) && ra_aligned16(gate_up))
        swiglu_fused_vec_kernel<<<ra_grid_for((int64_t)n * (I / 8), 256), 256, 0, ra_cuda_stream>>>(
            (bf16 *)out, (const bf16 *)gate_up, n, I);
    else
        swiglu_fused_scalar_kernel<<<ra_grid_for((int64_t)n * I, 256), 256, 0, ra_cuda_stream>>>(
            (bf16 *)out, (const bf16 *)gate_up, n, I);
    CUDA_CHECK_LAST();
}

/* ---- residual add ------------------------------------------------------- */

__global__ void residual_vec_kernel(bf16 *x, const bf16 *y, int64_t n8) {
    for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < n8; c += (int64_t)gridDim.x * blockDim.x) {
        float a[8], b[8];
        bf16x8_to_float(reinterpret_cast<const uint4 *>(x)[c], a);
        bf16x8_to_float(reinterpret_cast<const uint4 *>(y)[c], b);
#pragma unroll
        for (int k = 0; k < 8; k++) a[k] += b[k];
        reinterpret_cast<uint4 *>(x)[c] = float_to_bf16x8(a);
    }
}

__global__ void residual_scalar_kernel(bf16 *x, const bf16 *y, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        x[i] = __float2bfloat16(__bfloat162float(x[i]) + __bfloat162float(y[i]));
}

extern "C" void cuda_residual_add(uint16_t *x, const uint16_t *y, int64_t n) {
    if (n <= 0) return;
    if (n % 8 == 0 && ra_aligned16(x) && ra_aligned16(y))
        residual_vec_kernel<<<ra_grid_for(n / 8, 256), 256, 0, ra_cuda_stream>>>((bf16 *)x, (const bf16 *)y, n / 8);
    else
        residual_scalar_kernel<<<ra_grid_for(n, 256), 256, 0, ra_cuda_stream>>>((bf16 *)x, (const bf16 *)y, n);
    CUDA_CHECK_LAST();
}

/* ---- head mask, row gather ---------------------------------------------- */

__global__ void head_mask_kernel(bf16 *out, const uint8_t *keep, int T, int H, int hd, int64_t total) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
        int64_t row = e / hd; /* (b*T + t)*H + h */
        int h = (int)(row % H);
        int64_t b = row / ((int64_t)T * H);
        if (!keep[b * H + h]) out[e] = __float2bfloat16(0.0f);
    }
}

extern "C" void cuda_head_mask_apply(uint16_t *out, const uint8_t *head_keep, int B, int T, int H, int hd) {
    if (!head_keep) return;
    int64_t total = (int64_t)B * T * H * hd;
    if (total <= 0) return;
    head_mask_kernel<<<ra_grid_for(total, 256), 256, 0, ra_cuda_stream>>>((bf16 *)out, head_keep, T, H, hd, total);
    CUDA_CHECK_LAST();
}

__global__ void gather_rows_kernel(bf16 *out, const bf16 *in, const int32_t *rows, int D) {
    int r = blockIdx.x;
    const bf16 *src = in + (int64_t)rows[r] * D;
    bf16 *dst = out + (int64_t)r * D;
    for (int j = threadIdx.x; j < D; j += blockDim.x) dst[j] = src[j];
}

extern "C" void cuda_gather_rows(uint16_t *out, const uint16_t *in, const int32_t *rows, int n_rows, int D) {
    if (n_rows <= 0 || D <= 0) return;
    gather_rows_kernel<<<n_rows, 256, 0, ra_cuda_stream>>>((bf16 *)out, (const bf16 *)in, rows, D);
    CUDA_CHECK_LAST();
}
