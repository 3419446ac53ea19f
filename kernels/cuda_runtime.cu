/* Device selection, memory, the stream and host<->device conversions. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_common.cuh"
#include "ops_cuda.h"

extern "C" {
#include "dtype.h"
}

cudaStream_t ra_cuda_stream = 0;

static const double GiB = 1024.0 * 1024.0 * 1024.0;

extern "C" int cuda_device_available(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky-free error so later calls start clean */
        return 0;
    }
    return n > 0;
}

extern "C" int cuda_device_init(int device, ra_error *err) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        cudaGetLastError();
        return ra_fail(err, EX_UNAVAILABLE, "--device cuda: no usable CUDA GPU (%s); use --device cpu",
                       e != cudaSuccess ? cudaGetErrorString(e) : "no devices");
    }
    if (device < 0 || device >= n)
        return ra_fail(err, EX_USAGE, "GPU %d requested but only %d visible (CUDA_VISIBLE_DEVICES)", device, n);
    CUDA_CHECK(cudaSetDevice(device));
    CUDA_CHECK(cudaFree(0)); /* create the context now, not inside a timed region */
    return 0;
}

extern "C" void cuda_device_describe(char *buf, size_t len) {
    int dev = 0;
    cudaDeviceProp p;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaGetDeviceProperties(&p, dev));
    snprintf(buf, len, "%s, %d SMs, %.1f GiB, compute %d.%d", p.name, p.multiProcessorCount,
             (double)p.totalGlobalMem / GiB, p.major, p.minor);
}

/* The most device memory seen in use (the whole device, as cudaMemGetInfo
 * reports it: context and library workspaces included), sampled after
 * every allocation of ours and whenever cuda_mem_peak is called. */
static size_t peak_in_use;

static size_t sample_in_use(void) {
    size_t fr = 0, tot = 0;
    CUDA_CHECK(cudaMemGetInfo(&fr, &tot));
    if (tot - fr > peak_in_use) peak_in_use = tot - fr;
    return tot - fr;
}

extern "C" size_t cuda_mem_peak(void) {
    sample_in_use();
    return peak_in_use;
}

/* After each allocation: the peak, and with RA_CUDA_ALLOC_LOG=1 one stderr
 * line per allocation of 1 MiB or more (size, what, device memory in use
 * after it), for seeing where a run's peak memory goes. */
static void note_allocation(size_t bytes, const char *what) {
    static int log = -1;
    if (log < 0) log = getenv("RA_CUDA_ALLOC_LOG") && !strcmp(getenv("RA_CUDA_ALLOC_LOG"), "1");
    size_t used = sample_in_use();
    if (log && bytes >= ((size_t)1 << 20))
        fprintf(stderr, "cuda alloc: %9.1f MiB  %-32s in use %.2f GiB\n", (double)bytes / (1 << 20),
                what ? what : "(unnamed)", (double)used / GiB);
}

extern "C" int cuda_malloc_try(void **out, size_t bytes, const char *what, ra_error *err) {
    *out = NULL;
    if (bytes == 0) bytes = 1; /* distinct, freeable pointers even for empty buffers */
    cudaError_t e = cudaMalloc(out, bytes);
    if (e == cudaSuccess) {
        note_allocation(bytes, what);
        return 0;
    }
    cudaGetLastError(); /* an allocation failure is not sticky; clear it */
    *out = NULL;
    size_t fr = 0, tot = 0;
    cudaMemGetInfo(&fr, &tot);
    if (e == cudaErrorMemoryAllocation)
        return ra_fail(err, EX_TEMPFAIL,
                       "GPU out of memory allocating %s (%.2f GiB; %.2f GiB free of %.2f GiB): "
                       "try a smaller --batch (or a shorter --seq-len)",
                       what ? what : "a buffer", (double)bytes / GiB, (double)fr / GiB, (double)tot / GiB);
    return ra_fail(err, EX_SOFTWARE, "cudaMalloc of %s (%zu bytes): %s", what ? what : "a buffer", bytes,
                   cudaGetErrorString(e));
}

extern "C" void *cuda_malloc(size_t bytes) {
    void *p;
    ra_error err = {0, ""};
    if (cuda_malloc_try(&p, bytes, NULL, &err)) ra_die_error(&err);
    return p;
}

extern "C" void cuda_free(void *p) {
    if (p) CUDA_CHECK(cudaFree(p));
}

extern "C" void cuda_memset(void *p, int byte, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemsetAsync(p, byte, bytes, ra_cuda_stream));
}

extern "C" void cuda_upload(void *dst, const void *src, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, ra_cuda_stream));
    /* src is pageable host memory the caller may free or reuse right away */
    CUDA_CHECK(cudaStreamSynchronize(ra_cuda_stream));
}

extern "C" void cuda_download(void *dst, const void *src, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, ra_cuda_stream));
    CUDA_CHECK(cudaStreamSynchronize(ra_cuda_stream));
}

extern "C" void cuda_copy(void *dst, const void *src, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ra_cuda_stream));
}

/* Convert in chunks so a multi-GB tensor does not need a second full copy. */
#define CONVERT_CHUNK ((size_t)1 << 22)

/* Large uploads (model weights: 1.2 billion elements for Llama-3.2-1B) go
 * through two pinned staging buffers: while the DMA engine copies one chunk,
 * every core converts the next into the other buffer (ra_convert_from_f32 is
 * OpenMP-parallel, the same scalar rounding as ra_f32_to_bf16).  The
 * single-threaded conversion into pageable memory this replaces spent ~3 s
 * of ra-probe's start on an H200 host.  The buffers are allocated on first
 * use and kept for the life of the process (32 MiB each). */
#define STAGE_ELEMS ((size_t)1 << 24)
static uint16_t *stage_buf[2];
static cudaEvent_t stage_done[2];
static int stage_state; /* 0 untried, 1 ready, -1 pinned memory refused: pageable path */

static int stage_ready(void) {
    if (stage_state) return stage_state > 0;
    stage_state = -1;
    for (int i = 0; i < 2; i++)
        if (cudaHostAlloc((void **)&stage_buf[i], STAGE_ELEMS * sizeof(uint16_t), cudaHostAllocDefault) != cudaSuccess) {
            cudaGetLastError(); /* not sticky: fall back to the pageable path */
            if (i) CUDA_CHECK(cudaFreeHost(stage_buf[0]));
            return 0;
        }
    for (int i = 0; i < 2; i++) CUDA_CHECK(cudaEventCreateWithFlags(&stage_done[i], cudaEventDisableTiming));
    stage_state = 1;
    return 1;
}

static void upload_bf16_pageable(uint16_t *dst, const float *src, size_t n) {
    uint16_t *tmp = (uint16_t *)xmalloc((n < CONVERT_CHUNK ? n : CONVERT_CHUNK) * sizeof(uint16_t) + 1);
    for (size_t off = 0; off < n; off += CONVERT_CHUNK) {
        size_t m = n - off < CONVERT_CHUNK ? n - off : CONVERT_CHUNK;
        ra_convert_from_f32(tmp, RA_BF16, src + off, m);
        cuda_upload(dst + off, tmp, m * sizeof(uint16_t));
    }
    free(tmp);
}

extern "C" void cuda_upload_bf16(uint16_t *dst, const float *src, size_t n) {
    if (n < CONVERT_CHUNK || !stage_ready()) {
        upload_bf16_pageable(dst, src, n);
        return;
    }
    for (size_t off = 0, k = 0; off < n; off += STAGE_ELEMS, k++) {
        size_t m = n - off < STAGE_ELEMS ? n - off : STAGE_ELEMS;
        int b = (int)(k & 1);
        CUDA_CHECK(cudaEventSynchronize(stage_done[b])); /* its previous copy has left the buffer */
        ra_convert_from_f32(stage_buf[b], RA_BF16, src + off, m);
        CUDA_CHECK(cudaMemcpyAsync(dst + off, stage_buf[b], m * sizeof(uint16_t), cudaMemcpyHostToDevice,
                                   ra_cuda_stream));
        CUDA_CHECK(cudaEventRecord(stage_done[b], ra_cuda_stream));
    }
    /* like cuda_upload: the data is on the device when this returns */
    CUDA_CHECK(cudaStreamSynchronize(ra_cuda_stream));
}

extern "C" void cuda_upload_bf16_from(uint16_t *dst, size_t n,
                                      void (*fill)(uint16_t *host, size_t off, size_t count, void *arg), void *arg) {
    if (!stage_ready()) {
        uint16_t *tmp = (uint16_t *)xmalloc((n < CONVERT_CHUNK ? n : CONVERT_CHUNK) * sizeof(uint16_t) + 1);
        for (size_t off = 0; off < n; off += CONVERT_CHUNK) {
            size_t m = n - off < CONVERT_CHUNK ? n - off : CONVERT_CHUNK;
            fill(tmp, off, m, arg);
            cuda_upload(dst + off, tmp, m * sizeof(uint16_t));
        }
        free(tmp);
        return;
    }
    for (size_t off = 0, k = 0; off < n; off += STAGE_ELEMS, k++) {
        size_t m = n - off < STAGE_ELEMS ? n - off : STAGE_ELEMS;
        int b = (int)(k & 1);
        CUDA_CHECK(cudaEventSynchronize(stage_done[b])); /* its previous copy has left the buffer */
        fill(stage_buf[b], off, m, arg);
        CUDA_CHECK(cudaMemcpyAsync(dst + off, stage_buf[b], m * sizeof(uint16_t), cudaMemcpyHostToDevice,
                                   ra_cuda_stream));
        CUDA_CHECK(cudaEventRecord(stage_done[b], ra_cuda_stream));
    }
    CUDA_CHECK(cudaStreamSynchronize(ra_cuda_stream));
}

extern "C" void cuda_download_bf16(float *dst, const uint16_t *src, size_t n) {
    uint16_t *tmp = (uint16_t *)xmalloc((n < CONVERT_CHUNK ? n : CONVERT_CHUNK) * sizeof(uint16_t) + 1);
    for (size_t off = 0; off < n; off += CONVERT_CHUNK) {
        size_t m = n - off < CONVERT_CHUNK ? n - off : CONVERT_CHUNK;
        cuda_download(tmp, src + off, m * sizeof(uint16_t));
        ra_convert_to_f32(dst + off, tmp, RA_BF16, m);
    }
    free(tmp);
}

__global__ void bf16_to_f32_kernel(float *dst, const bf16 *src, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = __bfloat162float(src[i]);
}

extern "C" void cuda_bf16_to_f32(float *dst, const uint16_t *src, int64_t n) {
    if (n <= 0) return;
    bf16_to_f32_kernel<<<ra_grid_for(n, 256), 256, 0, ra_cuda_stream>>>(dst, (const bf16 *)src, n);
    CUDA_CHECK_LAST();
}

__device__ __forceinline__ uint64_t splitmix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

__global__ void fill_uniform_kernel(bf16 *x, int64_t n, float center, float half_width, uint64_t seed) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        uint64_t r = splitmix64(seed * 0x100000001B3ull + (uint64_t)i);
        float u = (float)(r >> 40) * (1.0f / 8388608.0f) - 1.0f; /* [-1, 1) */
        x[i] = __float2bfloat16(center + u * half_width);
    }
}

extern "C" void cuda_fill_uniform_bf16(uint16_t *x, int64_t n, float center, float half_width, uint64_t seed) {
    if (n <= 0) return;
    fill_uniform_kernel<<<ra_grid_for(n, 256), 256, 0, ra_cuda_stream>>>((bf16 *)x, n, center, half_width, seed);
    CUDA_CHECK_LAST();
}

extern "C" void cuda_set_stream(void *stream) { ra_cuda_stream = (cudaStream_t)stream; }
extern "C" void *cuda_get_stream(void) { return (void *)ra_cuda_stream; }

extern "C" void cuda_synchronize(void) {
    CUDA_CHECK(cudaStreamSynchronize(ra_cuda_stream));
    CUDA_CHECK(cudaGetLastError());
}

extern "C" void cuda_mem_info(size_t *free_bytes, size_t *total_bytes) {
    size_t f = 0, t = 0;
    CUDA_CHECK(cudaMemGetInfo(&f, &t));
    if (free_bytes) *free_bytes = f;
    if (total_bytes) *total_bytes = t;
}
