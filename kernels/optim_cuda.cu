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
 * Both passes run over every trainable parameter in one launch each (a
 * table of the parameters, opt_slot, on the device; each block finds its
 * parameter by binary search over the first block of each): a step had
 * launched two kernels per parameter, ~250 of them for the 1B student,
 * most on tensors of a few thousand elements.
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

/* A trainable parameter as the fused passes see it. */
struct opt_slot {
    float *w, *m, *v;
    const float *g;
    bf16 *wb;           /* compute copy or NULL */
    int64_t numel;
    int64_t chunk0;     /* first AdamW block (ADAM_CHUNK elements each) */
    int64_t part0;      /* first norm block (CUDA_OPTIM_NORM_BLOCK elements each) */
    int decay, vec;     /* weight decay; 16-byte accesses */
};

#define ADAM_CHUNK 4096 /* elements per AdamW block: 4 float4 per thread */

/* The slot whose blocks include block blk: the last i with first(i) ≤ blk
 * (first = chunk0 or part0, ascending). */
__device__ int slot_of_block(const opt_slot *s, int n, int64_t blk, bool norm) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if ((norm ? s[mid].part0 : s[mid].chunk0) <= blk) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

/* Block b: partial[b] = Σ g² (double) over its parameter's block
 * b − part0. */
__global__ void __launch_bounds__(OPT_THREADS) norm_partial_kernel(double *partial, const opt_slot *slots, int n) {
    __shared__ double red[OPT_THREADS];
    __shared__ int si;
    if (threadIdx.x == 0) si = slot_of_block(slots, n, blockIdx.x, true);
    __syncthreads();
    const float *g = slots[si].g;
    int64_t numel = slots[si].numel;
    int64_t i0 = (blockIdx.x - slots[si].part0) * (int64_t)CUDA_OPTIM_NORM_BLOCK;
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

/* (Re)write the device table of trainable parameters (after create and
 * whenever a compute copy is set). */
static void upload_slots(cuda_optim *o) {
    opt_slot *h = (opt_slot *)xcalloc((size_t)(o->n > 0 ? o->n : 1), sizeof *h);
    int n = 0;
    int64_t chunks = 0;
    for (int i = 0; i < o->n; i++) {
        cuda_optim_param *p = &o->params[i];
        if (p->frozen || p->numel == 0) continue;
        opt_slot *s = &h[n++];
        s->w = p->w, s->m = p->m, s->v = p->v, s->g = p->g, s->wb = (bf16 *)p->w_bf16;
        s->numel = p->numel, s->chunk0 = chunks, s->part0 = p->part0, s->decay = p->decay;
        s->vec = p->numel % 4 == 0 && ra_aligned16(p->w) && ra_aligned16(p->m) && ra_aligned16(p->v) &&
                 ra_aligned16(p->g) && ((uintptr_t)p->w_bf16 & 3u) == 0;
        chunks += (p->numel + ADAM_CHUNK - 1) / ADAM_CHUNK;
    }
    if (n) cuda_upload(o->slots, h, (size_t)n * sizeof *h);
    free(h);
    o->n_slots = n, o->n_chunks = chunks, o->slots_stale = 0;
}

extern "C" double cuda_optim_grad_norm(cuda_optim *o) {
    if (o->slots_stale) upload_slots(o);
    if (!o->n_slots) return 0;
    norm_partial_kernel<<<(unsigned)o->n_partials, OPT_THREADS, 0, ra_cuda_stream>>>(
        o->partials, (const opt_slot *)o->slots, o->n_slots);
    CUDA_CHECK_LAST();
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

/* Block b updates ADAM_CHUNK elements of its parameter (16-byte accesses
 * where the parameter allows them: the step reads and writes ~30 bytes per
 * parameter, bandwidth bound); the same operations per element either way,
 * so the same bits. */
__global__ void __launch_bounds__(OPT_THREADS) adamw_kernel(const opt_slot *slots, int n, ra_adamw_consts k,
                                                            float decay_mul) {
    __shared__ int si;
    if (threadIdx.x == 0) si = slot_of_block(slots, n, blockIdx.x, false);
    __syncthreads();
    const opt_slot s = slots[si];
    const float dm = s.decay ? decay_mul : 1.0f;
    const int64_t i0 = (blockIdx.x - s.chunk0) * (int64_t)ADAM_CHUNK;
    const int64_t i1 = i0 + ADAM_CHUNK < s.numel ? i0 + ADAM_CHUNK : s.numel;
    if (s.vec) { /* numel % 4 == 0, so i0 and i1 are multiples of 4 */
        float4 *w = (float4 *)s.w, *m = (float4 *)s.m, *v = (float4 *)s.v;
        const float4 *g = (const float4 *)s.g;
        __nv_bfloat162 *wb = (__nv_bfloat162 *)s.wb;
#pragma unroll 4
        for (int64_t i = i0 / 4 + threadIdx.x; i < i1 / 4; i += OPT_THREADS) {
            float4 w4 = w[i], g4 = g[i], m4 = m[i], v4 = v[i];
            w4.x = adamw_element(w4.x, g4.x, m4.x, v4.x, k, dm);
            w4.y = adamw_element(w4.y, g4.y, m4.y, v4.y, k, dm);
            w4.z = adamw_element(w4.z, g4.z, m4.z, v4.z, k, dm);
            w4.w = adamw_element(w4.w, g4.w, m4.w, v4.w, k, dm);
            w[i] = w4, m[i] = m4, v[i] = v4;
            if (wb) wb[2 * i] = __floats2bfloat162_rn(w4.x, w4.y), wb[2 * i + 1] = __floats2bfloat162_rn(w4.z, w4.w);
        }
        return;
    }
    for (int64_t i = i0 + threadIdx.x; i < i1; i += OPT_THREADS) {
        float mi = s.m[i], vi = s.v[i];
        float wi = adamw_element(s.w[i], s.g[i], mi, vi, k, dm);
        s.m[i] = mi, s.v[i] = vi, s.w[i] = wi;
        if (s.wb) s.wb[i] = __float2bfloat16(wi);
    }
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
    if (o->n_chunks) {
        adamw_kernel<<<(unsigned)o->n_chunks, OPT_THREADS, 0, ra_cuda_stream>>>((const opt_slot *)o->slots, o->n_slots,
                                                                              k, k.decay_mul);
        CUDA_CHECK_LAST();
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
    cuda_free(o->partials), cuda_free(o->norm2), cuda_free(o->bad), cuda_free(o->slots);
    free(o->params);
    free(o);
}

extern "C" int cuda_optim_create(cuda_optim **out, const ra_optim *host, float *const *grads, ra_error *err) {
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
        if (grads && grads[i]) p->g = grads[i], p->g_external = 1;
        else if ((rc = cuda_malloc_try((void **)&p->g, bytes, "gradients", err))) break;
        else cuda_memset(p->g, 0, bytes);
        if ((rc = cuda_malloc_try((void **)&p->m, bytes, "AdamW moments", err)) ||
            (rc = cuda_malloc_try((void **)&p->v, bytes, "AdamW moments", err)))
            break;
        if (hp->m) cuda_upload(p->m, hp->m, bytes);
        else cuda_memset(p->m, 0, bytes);
        if (hp->v) cuda_upload(p->v, hp->v, bytes);
        else cuda_memset(p->v, 0, bytes);
    }
    if (!rc) rc = cuda_malloc_try((void **)&o->partials, (size_t)(o->n_partials > 0 ? o->n_partials : 1) * 8,
                                  "gradient-norm partials", err);
    if (!rc) rc = cuda_malloc_try((void **)&o->norm2, sizeof(double), "gradient norm", err);
    if (!rc) rc = cuda_malloc_try((void **)&o->bad, sizeof(unsigned long long), "gradient check", err);
    if (!rc) rc = cuda_malloc_try(&o->slots, (size_t)(o->n > 0 ? o->n : 1) * sizeof(opt_slot), "optimiser table", err);
    if (rc) {
        cuda_optim_free(o);
        return rc;
    }
    upload_slots(o);
    *out = o;
    return 0;
}

extern "C" void cuda_optim_set_compute_copy(cuda_optim *o, int i, uint16_t *w_bf16) {
    if (i >= 0 && i < o->n) o->params[i].w_bf16 = w_bf16, o->slots_stale = 1;
}

extern "C" void cuda_optim_zero_grad(cuda_optim *o) {
    for (int i = 0; i < o->n; i++)
        if (o->params[i].g && !o->params[i].g_external)
            cuda_memset(o->params[i].g, 0, (size_t)o->params[i].numel * sizeof(float));
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
