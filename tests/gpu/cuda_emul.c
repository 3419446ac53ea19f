/* A CPU emulation of kernels/ops_cuda.h, for tests/gpu/emulate.sh only.
 *
 * "Device" memory is host memory; bf16 buffers hold real bf16 bits; each op
 * converts its inputs to fp32, runs the CPU twin of lib/ops.h and rounds its
 * outputs to bf16, as the GPU kernels store them.  Linked with the host code
 * of kernels/forward_cuda.cu (compiled as C++) and the GPU tests, it checks
 * the forward pass's orchestration (fused layouts, strides, offsets, masks,
 * options) on a machine without a GPU.  It says nothing about the kernels
 * themselves: make test-gpu on a GPU does. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "model.h"
#include "ops.h"
#include "ops_cuda.h"
#include "train_profile.h"

/* Allocations above this fail like cudaMalloc out of memory. */
#define EMUL_MEMORY ((size_t)64 << 30)

static float *to_f32(const uint16_t *x, size_t n) {
    float *f = xmalloc(n * sizeof(float) + 4);
    for (size_t i = 0; i < n; i++) f[i] = ra_bf16_to_f32(x[i]);
    return f;
}
static void from_f32(uint16_t *x, const float *f, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = ra_f32_to_bf16(f[i]);
}

int cuda_device_init(int device, ra_error *err) {
    (void)err;
    (void)device;
    return 0;
}
int cuda_device_available(void) { return 1; }
void cuda_device_describe(char *buf, size_t len) { snprintf(buf, len, "CPU emulation of the CUDA ops"); }

int cuda_malloc_try(void **out, size_t bytes, const char *what, ra_error *err) {
    *out = NULL;
    if (bytes > EMUL_MEMORY)
        return ra_fail(err, EX_TEMPFAIL,
                       "GPU out of memory allocating %s (%.2f GiB; emulated): try a smaller --batch (or a shorter "
                       "--seq-len)",
                       what ? what : "a buffer", (double)bytes / (1 << 30));
    *out = calloc(1, bytes ? bytes : 1);
    if (!*out) return ra_fail(err, EX_TEMPFAIL, "out of memory (%zu bytes)", bytes);
    memset(*out, 0xFF, bytes); /* like uninitialised device memory: NaN bf16 */
    return 0;
}
void *cuda_malloc(size_t bytes) {
    void *p;
    ra_error err = {0, ""};
    if (cuda_malloc_try(&p, bytes, NULL, &err)) ra_die_error(&err);
    return p;
}
void cuda_free(void *p) { free(p); }
void cuda_memset(void *p, int byte, size_t bytes) { memset(p, byte, bytes); }
void cuda_upload(void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }
void cuda_download(void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }
void cuda_copy(void *dst, const void *src, size_t bytes) { memmove(dst, src, bytes); }
void cuda_upload_bf16(uint16_t *dst, const float *src, size_t n) { from_f32(dst, src, n); }
void cuda_upload_bf16_from(uint16_t *dst, size_t n, void (*fill)(uint16_t *, size_t, size_t, void *), void *arg) {
    fill(dst, 0, n, arg);
}
void cuda_download_bf16(float *dst, const uint16_t *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = ra_bf16_to_f32(src[i]);
}
void cuda_bf16_to_f32(float *dst, const uint16_t *src, int64_t n) { cuda_download_bf16(dst, src, (size_t)n); }
void cuda_fill_uniform_bf16(uint16_t *x, int64_t n, float center, float half_width, uint64_t seed) {
    uint64_t r = seed * 0x9E3779B97F4A7C15ull + 1;
    for (int64_t i = 0; i < n; i++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        x[i] = ra_f32_to_bf16(center + half_width * (float)((r >> 40) * (1.0 / 8388608.0) - 1.0));
    }
}
void cuda_set_stream(void *stream) { (void)stream; }
void *cuda_get_stream(void) { return NULL; }
void cuda_synchronize(void) {}
void cuda_mem_info(size_t *free_bytes, size_t *total_bytes) {
    if (free_bytes) *free_bytes = EMUL_MEMORY;
    if (total_bytes) *total_bytes = EMUL_MEMORY;
}

void cuda_embedding_forward(uint16_t *out, const int32_t *tokens, const uint16_t *table, int n, int D) {
    for (int i = 0; i < n; i++) memcpy(out + (size_t)i * D, table + (size_t)tokens[i] * D, (size_t)D * 2);
}

void cuda_rmsnorm_forward(uint16_t *out, float *rstd, const uint16_t *in, const uint16_t *weight, int n, int D,
                          float eps) {
    float *x = to_f32(in, (size_t)n * D), *w = to_f32(weight, D), *y = xmalloc((size_t)n * D * 4 + 4);
    rmsnorm_forward(y, rstd, x, w, n, D, eps);
    from_f32(out, y, (size_t)n * D);
    free(x), free(w), free(y);
}

static void gemm(uint16_t *out, const uint16_t *in, const uint16_t *W, const uint16_t *bias, int n, int in_dim,
                 int out_dim, int accumulate) {
    float *x = to_f32(in, (size_t)n * in_dim), *w = to_f32(W, (size_t)out_dim * in_dim);
    float *b = bias ? to_f32(bias, out_dim) : NULL, *y = xmalloc((size_t)n * out_dim * 4 + 4);
    linear_forward(y, x, w, b, n, in_dim, out_dim);
    if (accumulate)
        for (size_t i = 0; i < (size_t)n * out_dim; i++) y[i] += ra_bf16_to_f32(out[i]);
    from_f32(out, y, (size_t)n * out_dim);
    free(x), free(w), free(b), free(y);
}
void cuda_linear_forward(uint16_t *out, const uint16_t *in, const uint16_t *W, const uint16_t *bias, int n,
                         int in_dim, int out_dim) {
    gemm(out, in, W, bias, n, in_dim, out_dim, 0);
}
void cuda_linear_residual_forward(uint16_t *x, const uint16_t *in, const uint16_t *W, const uint16_t *bias, int n,
                                  int in_dim, int out_dim) {
    gemm(x, in, W, bias, n, in_dim, out_dim, 1);
}

void cuda_rope_tables(float *cos_t, float *sin_t, const int32_t *positions, int n, const float *inv_freq,
                      int head_dim) {
    rope_tables(cos_t, sin_t, positions, n, inv_freq, head_dim);
}
void cuda_rope_forward_strided(uint16_t *x, int64_t row_stride, const float *cos_t, const float *sin_t, int n,
                               int heads, int head_dim) {
    size_t w = (size_t)heads * head_dim;
    float *v = xmalloc((size_t)n * w * 4 + 4);
    for (int i = 0; i < n; i++)
        for (size_t j = 0; j < w; j++) v[i * w + j] = ra_bf16_to_f32(x[i * row_stride + j]);
    rope_forward(v, cos_t, sin_t, n, heads, head_dim);
    for (int i = 0; i < n; i++)
        for (size_t j = 0; j < w; j++) x[i * row_stride + j] = ra_f32_to_bf16(v[i * w + j]);
    free(v);
}
void cuda_rope_forward(uint16_t *x, const float *cos_t, const float *sin_t, int n, int heads, int head_dim) {
    cuda_rope_forward_strided(x, (int64_t)heads * head_dim, cos_t, sin_t, n, heads, head_dim);
}

/* rows of width w, row_stride apart -> contiguous fp32 */
static float *gather(const uint16_t *x, int64_t stride, size_t rows, size_t w) {
    float *f = xmalloc(rows * w * 4 + 4);
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < w; j++) f[i * w + j] = ra_bf16_to_f32(x[i * stride + j]);
    return f;
}

void cuda_attention_forward_ex(const cuda_attention_args *a) {
    int B = a->B, T = a->T, H = a->H, Hkv = a->Hkv, hd = a->hd;
    size_t n = (size_t)B * T;
    float *q = gather(a->q, a->q_stride, n, (size_t)H * hd);
    float *k = gather(a->k, a->kv_stride, n, (size_t)Hkv * hd), *v = gather(a->v, a->kv_stride, n, (size_t)Hkv * hd);
    float *o = xmalloc(n * H * hd * 4 + 4);
    float *p = a->probs ? xmalloc((size_t)B * H * T * T * 4) : NULL;
    attention_forward(o, p, q, k, v, a->doc_start, B, T, H, Hkv, hd);
    if (a->out) {
        if (a->head_keep) head_mask_apply(o, a->head_keep, B, T, H, hd);
        for (size_t i = 0; i < n; i++)
            for (int j = 0; j < H * hd; j++) a->out[i * a->out_stride + j] = ra_f32_to_bf16(o[i * H * hd + j]);
    }
    if (p) {
        int nh = a->probs_heads ? a->n_probs_heads : H;
        for (int b = 0; b < B; b++)
            for (int s = 0; s < nh; s++) {
                int h = a->probs_heads ? a->probs_heads[s] : s;
                memcpy(a->probs + ((size_t)b * nh + s) * T * T, p + ((size_t)b * H + h) * T * T, (size_t)T * T * 4);
            }
    }
    free(q), free(k), free(v), free(o), free(p);
}

void cuda_attention_forward(uint16_t *out, float *probs, const uint16_t *q, const uint16_t *k, const uint16_t *v,
                            const int32_t *doc_start, int B, int T, int H, int Hkv, int hd) {
    cuda_attention_args a;
    memset(&a, 0, sizeof a);
    a.out = out, a.out_stride = (int64_t)H * hd, a.q = q, a.q_stride = (int64_t)H * hd;
    a.k = k, a.v = v, a.kv_stride = (int64_t)Hkv * hd, a.doc_start = doc_start, a.probs = probs;
    a.B = B, a.T = T, a.H = H, a.Hkv = Hkv, a.hd = hd;
    cuda_attention_forward_ex(&a);
}

void cuda_head_mask_apply(uint16_t *out, const uint8_t *head_keep, int B, int T, int H, int hd) {
    if (!head_keep) return;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            if (!head_keep[b * H + h])
                for (int t = 0; t < T; t++) memset(out + (((size_t)b * T + t) * H + h) * hd, 0, (size_t)hd * 2);
}

void cuda_swiglu_forward(uint16_t *out, const uint16_t *gate, const uint16_t *up, int64_t n) {
    float *g = to_f32(gate, (size_t)n), *u = to_f32(up, (size_t)n);
    swiglu_forward(g, g, u, n);
    from_f32(out, g, (size_t)n);
    free(g), free(u);
}
void cuda_swiglu_fused_forward(uint16_t *out, const uint16_t *gate_up, int n, int I) {
    for (int i = 0; i < n; i++)
        cuda_swiglu_forward(out + (size_t)i * I, gate_up + (size_t)i * 2 * I, gate_up + (size_t)i * 2 * I + I, I);
}
void cuda_residual_add(uint16_t *x, const uint16_t *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = ra_f32_to_bf16(ra_bf16_to_f32(x[i]) + ra_bf16_to_f32(y[i]));
}
void cuda_gather_rows(uint16_t *out, const uint16_t *in, const int32_t *rows, int n_rows, int D) {
    for (int r = 0; r < n_rows; r++) memcpy(out + (size_t)r * D, in + (size_t)rows[r] * D, (size_t)D * 2);
}

#ifdef EMUL_NO_MODEL_LOAD /* until lib/model_load.c is in the tree */
int ra_model_load_hf(const char *dir, ra_model **out, ra_error *err) {
    *out = NULL;
    return ra_fail(err, EX_SOFTWARE, "%s: ra_model_load_hf is not in this build", dir);
}
#endif

/* RA_TRAIN_PROFILE's phase marks (kernels/train_profile.cu): no device
 * timeline to mark here. */
void train_prof_mark(const char *label) { (void)label; }
