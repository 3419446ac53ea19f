/* AdamW over device master weights: the CUDA twin of lib/optim.c (contract
 * in kernels/ops_backward_cuda.h, update formula in lib/optim.h).
 *
 * Gradient norm: every trainable parameter is cut into blocks of
 * CUDA_OPTIM_NORM_BLOCK elements; one CUDA block per gradient block sums
 * squares in double (each thread a fixed strided subset, then a fixed
 * shared-memory tree) into its own slot of a partials array, and one block
 * adds the partials in a fixed tree.  No atomics, so the norm has the same
 * bits on every run.
 *
 * Update: the same fp32 operations in the same order as lib/optim.c's
 * adamw_param, written with the _rn intrinsics so nvcc cannot fuse them
 * into FMAs (the host code is compiled without contraction too), so the
 * GPU and CPU steps agree bit for bit on the same inputs; sqrtf and the
 * division are IEEE round-to-nearest (nvcc's defaults, no fast math). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "train_common.cuh"

#define OPT_THREADS 256

/* ---- gradient norm ---------------------------------------------------------------- */

/* Block b of a parameter's gradient: partial[b] = Σ g² (double). */
__global__ void norm_partial_kernel(double *partial, const float *g, int64_t numel) {
    __shared__ double red[OPT_THREADS];
    int64_t i0 = (int64_t)blockIdx.x * CUDA_OPTIM_NORM_BLOCK;
    int64_t i1 = i0 + CUDA_OPTIM_NORM_BLOCK < numel ? i0 + CUDA_OPTIM_NORM_BLOCK : numel;
    double s = 0;
    for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) s += (double)g[i] * g[i];
    red[threadIdx.x] = s;
    __syncthreads();
    for (int w = OPT_THREADS / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w) red[threadIdx.x] += red[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = red[0];
}

/* *out = Σ partial (one block; thread t adds a contiguous range, then a tree). */
__global__ void norm_finish_kernel(double *out, const double *partial, int64_t n) {
    __shared__ double red[OPT_THREADS];
    int64_t per = (n + OPT_THREADS - 1) / OPT_THREADS, a = threadIdx.x * per, b = a + per < n ? a + per : n;
    double s = 0;
    for (int64_t i = a; i < b; i++) s += partial[i];
    red[threadIdx.x] = s;
    __syncthreads();
    for (int w = OPT_THREADS / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w) red[threadIdx.x] += red[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) *out = red[0];
}

static int64_t norm_blocks(int64_t numel) { return (numel + CUDA_OPTIM_NORM_BLOCK - 1) / CUDA_OPTIM_NORM_BLOCK; }

extern "C" double cuda_optim_grad_norm(cuda_optim *o) {
    int any = 0;
    for (int i = 0; i < o->n; i++) {
        cuda_optim_param *p = &o->params[i];
        if (p->frozen) continue;
        int64_t nb = norm_blocks(p->numel);
        norm_partial_kernel<<<(unsigned)nb, OPT_THREADS, 0, ra_cuda_stream>>>(o->partials + p->part0, p->g, p->numel);
        CUDA_CHECK_LAST();
        any = 1;
    }
    if (!any) return 0;
    norm_finish_kernel<<<1, OPT_THREADS, 0, ra_cuda_stream>>>(o->norm2, o->partials, o->n_partials);
    CUDA_CHECK_LAST();
    double s;
    cuda_synchronize();
    cuda_download(&s, o->norm2, sizeof s);
    return sqrt(s);
}

/* *bad = min index of a non-finite element (atomicMin: the result does not
 * depend on the order). */
__global__ void first_bad_kernel(unsigned long long *bad, const float *g, int64_t numel) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < numel; i += (int64_t)gridDim.x * blockDim.x)
        if (!isfinite(g[i])) atomicMin(bad, (unsigned long long)i);
}

static int report_bad_grad(cuda_optim *o, ra_error *err) {
    for (int i = 0; i < o->n; i++) {
        cuda_optim_param *p = &o->params[i];
        if (p->frozen) continue;
        unsigned long long none = ~0ull, idx;
        cuda_upload(o->bad, &none, sizeof none);
        first_bad_kernel<<<ra_grid_for(p->numel, 256), 256, 0, ra_cuda_stream>>>(o->bad, p->g, p->numel);
        CUDA_CHECK_LAST();
        cuda_synchronize();
        cuda_download(&idx, o->bad, sizeof idx);
        if (idx == none) continue;
        float val;
        cuda_download(&val, p->g + idx, sizeof val);
        return ra_fail(err, EX_SOFTWARE,
                       "step %lld: gradient of '%s' is %s at element %llu: the run diverged; weights not updated",
                       (long long)o->step + 1, p->name, isnan(val) ? "NaN" : "Inf", idx);
    }
    return ra_fail(err, EX_SOFTWARE, "step %lld: gradient norm overflowed (every element finite)",
                   (long long)o->step + 1);
}

extern "C" int cuda_optim_check_grads(cuda_optim *o, ra_error *err) {
    return isfinite(cuda_optim_grad_norm(o)) ? 0 : report_bad_grad(o, err);
}

/* ---- step ------------------------------------------------------------------------------- */

/* lib/optim.c's adamw_param, operation for operation: one element; m and v
 * updated in place, the new weight returned. */
__device__ __forceinline__ float adamw_element(float w, float g, float &m, float &v, const ra_adamw_consts &k,
                                               float decay_mul) {
    float gi = __fmul_rn(g, k.gscale);
    m = __fadd_rn(__fmul_rn(k.b1, m), __fmul_rn(k.one_b1, gi));
    v = __fadd_rn(__fmul_rn(k.b2, v), __fmul_rn(__fmul_rn(k.one_b2, gi), gi));
    float den = __fadd_rn(__fmul_rn(sqrtf(v), k.inv_sqrt_bc2), k.eps);
    return __fsub_rn(__fmul_rn(w, decay_mul), __fdiv_rn(__fmul_rn(k.step_size, m), den));
}

__global__ void adamw_kernel(float *w, float *m, float *v, const float *g, bf16 *wb, int64_t numel, ra_adamw_consts k,
                             float decay_mul) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < numel; i += (int64_t)gridDim.x * blockDim.x) {
        float mi = m[i], vi = v[i];
        float wi = adamw_element(w[i], g[i], mi, vi, k, decay_mul);
        m[i] = mi, v[i] = vi, w[i] = wi;
        if (wb) wb[i] = __float2bfloat16(wi);
    }
}

/* The same 4 elements per thread with 16-byte loads and stores (the step
 * reads and writes ~30 bytes per parameter: bandwidth bound); the same
 * operations per element, so the same bits. */
__global__ void adamw_vec4_kernel(float4 *w, float4 *m, float4 *v, const float4 *g, __nv_bfloat162 *wb, int64_t n4,
                                  ra_adamw_consts k, float decay_mul) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n4; i += (int64_t)gridDim.x * blockDim.x) {
        float4 w4 = w[i], g4 = g[i], m4 = m[i], v4 = v[i];
        w4.x = adamw_element(w4.x, g4.x, m4.x, v4.x, k, decay_mul);
        w4.y = adamw_element(w4.y, g4.y, m4.y, v4.y, k, decay_mul);
        w4.z = adamw_element(w4.z, g4.z, m4.z, v4.z, k, decay_mul);
        w4.w = adamw_element(w4.w, g4.w, m4.w, v4.w, k, decay_mul);
        w[i] = w4, m[i] = m4, v[i] = v4;
        if (wb) wb[2 * i] = __floats2bfloat162_rn(w4.x, w4.y), wb[2 * i + 1] = __floats2bfloat162_rn(w4.z, w4.w);
    }
}

static void adamw_launch(cuda_optim_param *p, const ra_adamw_consts &k, float decay_mul) {
    bf16 *wb = (bf16 *)p->w_bf16;
    bool vec = p->numel % 4 == 0 && ra_aligned16(p->w) && ra_aligned16(p->m) && ra_aligned16(p->v) &&
               ra_aligned16(p->g) && ((uintptr_t)wb & 3u) == 0;
    if (vec) {
        int64_t n4 = p->numel / 4;
        adamw_vec4_kernel<<<ra_grid_for(n4, 256), 256, 0, ra_cuda_stream>>>(
            (float4 *)p->w, (float4 *)p->m, (float4 *)p->v, (const float4 *)p->g, (__nv_bfloat162 *)wb, n4, k,
            decay_mul);
    } else {
        adamw_kernel<<<ra_grid_for(p->numel, 256), 256, 0, ra_cuda_stream>>>(p->w, p->m, p->v, p->g, wb, p->numel, k,
                                                                            decay_mul);
    }
    CUDA_CHECK_LAST();
}

__global__ void refresh_kernel(bf16 *wb, const float *w, int64_t numel) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < numel; i += (int64_t)gridDim.x * blockDim.x)
        wb[i] = __float2bfloat16(w[i]);
}

extern "C" int cuda_optim_step(cuda_optim *o, double lr, ra_error *err) {
    double norm = cuda_optim_grad_norm(o);
    if (!isfinite(norm)) return report_bad_grad(o, err);
    o->last_grad_norm = norm;
    ra_adamw_consts k = ra_adamw_step_consts(&o->cfg, o->step, lr, norm);
    for (int i = 0; i < o->n; i++) {
        cuda_optim_param *p = &o->params[i];
        if (p->frozen) continue;
        adamw_launch(p, k, p->decay ? k.decay_mul : 1.0f);
    }
    o->step++;
    return 0;
}

extern "C" void cuda_optim_refresh_compute(cuda_optim *o) {
    for (int i = 0; i < o->n; i++) {
        cuda_optim_param *p = &o->params[i];
        if (!p->w_bf16) continue;
        refresh_kernel<<<ra_grid_for(p->numel, 256), 256, 0, ra_cuda_stream>>>((bf16 *)p->w_bf16, p->w, p->numel);
        CUDA_CHECK_LAST();
    }
}

/* ---- lifetime ------------------------------------------------------------------------------ */

extern "C" void cuda_optim_free(cuda_optim *o) {
    if (!o) return;
    for (int i = 0; i < o->n; i++) {
        cuda_optim_param *p = &o->params[i];
        cuda_free(p->w), cuda_free(p->m), cuda_free(p->v);
        if (!p->g_external) cuda_free(p->g);
    }
    cuda_free(o->partials), cuda_free(o->norm2), cuda_free(o->bad);
    free(o->params);
    free(o);
}

extern "C" int cuda_optim_create(cuda_optim **out, const ra_optim *host, ra_error *err) {
    cuda_optim *o = (cuda_optim *)xcalloc(1, sizeof *o);
    *out = NULL;
    o->cfg = host->cfg;
    o->step = host->step;
    o->last_grad_norm = host->last_grad_norm;
    o->n = host->n;
    o->params = (cuda_optim_param *)xcalloc((size_t)(host->n > 0 ? host->n : 1), sizeof *o->params);
    int rc = 0;
    for (int i = 0; i < host->n && !rc; i++) {
        const ra_param *hp = &host->params[i];
        cuda_optim_param *p = &o->params[i];
        size_t bytes = (size_t)hp->numel * sizeof(float);
        p->name = hp->name, p->numel = hp->numel, p->decay = hp->decay, p->frozen = hp->frozen;
        p->part0 = o->n_partials;
        if ((rc = cuda_malloc_try((void **)&p->w, bytes, hp->name, err))) break;
        cuda_upload(p->w, hp->w, bytes);
        if (p->frozen) continue;
        o->n_partials += norm_blocks(hp->numel);
        if ((rc = cuda_malloc_try((void **)&p->g, bytes, "gradients", err)) ||
            (rc = cuda_malloc_try((void **)&p->m, bytes, "AdamW moments", err)) ||
            (rc = cuda_malloc_try((void **)&p->v, bytes, "AdamW moments", err)))
            break;
        cuda_memset(p->g, 0, bytes);
        if (hp->m) cuda_upload(p->m, hp->m, bytes);
        else cuda_memset(p->m, 0, bytes);
        if (hp->v) cuda_upload(p->v, hp->v, bytes);
        else cuda_memset(p->v, 0, bytes);
    }
    if (!rc) rc = cuda_malloc_try((void **)&o->partials, (size_t)(o->n_partials > 0 ? o->n_partials : 1) * 8,
                                  "gradient-norm partials", err);
    if (!rc) rc = cuda_malloc_try((void **)&o->norm2, sizeof(double), "gradient norm", err);
    if (!rc) rc = cuda_malloc_try((void **)&o->bad, sizeof(unsigned long long), "gradient check", err);
    if (rc) {
        cuda_optim_free(o);
        return rc;
    }
    *out = o;
    return 0;
}

extern "C" void cuda_optim_set_compute_copy(cuda_optim *o, int i, uint16_t *w_bf16) {
    if (i >= 0 && i < o->n) o->params[i].w_bf16 = w_bf16;
}

extern "C" void cuda_optim_zero_grad(cuda_optim *o) {
    for (int i = 0; i < o->n; i++)
        if (o->params[i].g) cuda_memset(o->params[i].g, 0, (size_t)o->params[i].numel * sizeof(float));
}

extern "C" void cuda_optim_download(const cuda_optim *o, ra_optim *host) {
    cuda_synchronize();
    for (int i = 0; i < o->n && i < host->n; i++) {
        const cuda_optim_param *p = &o->params[i];
        ra_param *hp = &host->params[i];
        size_t bytes = (size_t)p->numel * sizeof(float);
        cuda_download(hp->w, p->w, bytes);
        if (p->frozen || hp->frozen) continue;
        if (!hp->m) hp->m = (float *)xcalloc((size_t)p->numel, sizeof(float));
        if (!hp->v) hp->v = (float *)xcalloc((size_t)p->numel, sizeof(float));
        cuda_download(hp->m, p->m, bytes);
        cuda_download(hp->v, p->v, bytes);
    }
    host->step = o->step;
    host->last_grad_norm = o->last_grad_norm;
}

extern "C" void cuda_optim_set_grad(cuda_optim *o, int i, float *g) {
    if (i < 0 || i >= o->n || o->params[i].frozen) return;
    cuda_optim_param *p = &o->params[i];
    if (!p->g_external) cuda_free(p->g);
    p->g = g;
    p->g_external = 1;
}

extern "C" void cuda_optim_upload(cuda_optim *o, const ra_optim *host) {
    cuda_synchronize();
    for (int i = 0; i < o->n && i < host->n; i++) {
        cuda_optim_param *p = &o->params[i];
        const ra_param *hp = &host->params[i];
        size_t bytes = (size_t)p->numel * sizeof(float);
        cuda_upload(p->w, hp->w, bytes);
        if (p->frozen) continue;
        if (hp->m) cuda_upload(p->m, hp->m, bytes);
        else cuda_memset(p->m, 0, bytes);
        if (hp->v) cuda_upload(p->v, hp->v, bytes);
        else cuda_memset(p->v, 0, bytes);
    }
    o->step = host->step;
    o->last_grad_norm = host->last_grad_norm;
    cuda_optim_refresh_compute(o);
}

extern "C" void cuda_optim_poison(cuda_optim *o) {
    for (int i = 0; i < o->n; i++)
        if (!o->params[i].frozen && o->params[i].g) {
            const float nan = NAN;
            cuda_upload(o->params[i].g, &nan, sizeof nan);
            return;
        }
}
