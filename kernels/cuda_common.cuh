/* Internals shared by the .cu files: the stream, bf16 helpers, reductions. */
#ifndef RA_CUDA_COMMON_CUH
#define RA_CUDA_COMMON_CUH

#include <cuda_bf16.h>
#include <stdint.h>

#include "cuda_check.h"

typedef __nv_bfloat16 bf16;

/* The stream every op is queued on (cuda_runtime.cu). */
extern cudaStream_t ra_cuda_stream;

/* Number of blocks for a grid-stride loop over n items. */
static inline unsigned ra_grid_for(int64_t n, int threads, unsigned cap = 65535u * 16u) {
    int64_t b = (n + threads - 1) / threads;
    if (b < 1) b = 1;
    return (unsigned)(b > (int64_t)cap ? cap : b);
}

static inline bool ra_aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

/* 8 bf16 <-> 8 floats through one 16-byte access. */
__device__ __forceinline__ void bf16x8_to_float(const uint4 &u, float f[8]) {
    const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&u);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 t = __bfloat1622float2(h[i]);
        f[2 * i] = t.x;
        f[2 * i + 1] = t.y;
    }
}
__device__ __forceinline__ uint4 float_to_bf16x8(const float f[8]) {
    uint4 u;
    __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&u);
#pragma unroll
    for (int i = 0; i < 4; i++) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
    return u;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Block-wide sum / max; every thread gets the result.  scratch: 32 floats
 * of shared memory; blockDim.x a multiple of 32.  Contains __syncthreads. */
__device__ __forceinline__ float block_sum(float v, float *scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads(); /* scratch may still be read from a previous call */
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}
__device__ __forceinline__ float block_max(float v, float *scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : -INFINITY;
    return warp_max(v);
}

#endif
