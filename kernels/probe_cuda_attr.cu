/* ra-probe's attribution on the GPU: one forward (the baseline pass of the
 * exact engine, which caches the residual entering every layer) and one
 * backward from the log-probabilities of the correct answers down to every
 * head's output, as lib/probe_attribution.c does on the CPU.
 *
 * Per layer, top down: recompute the layer from its cached input (RMSNorm
 * with rstd, q/k/v + RoPE, attention, o_proj into the residual, RMSNorm,
 * gate/up), then push the residual gradient g (fp32) through the MLP
 * (down, SwiGLU, gate/up, RMSNorm), take each head's Σ grad·output, and go
 * on through o_proj, attention, RoPE, q/k/v and the input RMSNorm.
 * Gradients are fp32; the GEMMs read bf16 copies (cuBLAS, fp32 accumulate).
 * The attention backward recomputes probabilities per query (one block per
 * query for dq, one per key for dk/dv), no atomics, so runs are
 * deterministic. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "probe_cuda_internal.cuh"

/* ---- GEMM for input gradients ------------------------------------------------ */

static cublasHandle_t attr_blas;

/* C[M, in] (fp32) = beta·C + dy[M, out] · W[out, in]   (bf16 inputs, row-major) */
static void gemm_dx(float *C, const uint16_t *dy, const uint16_t *W, int M, int out, int in, float beta) {
    if (!attr_blas) CUBLAS_CHECK(cublasCreate(&attr_blas));
    CUBLAS_CHECK(cublasSetStream(attr_blas, ra_cuda_stream));
    float alpha = 1.0f;
    CUBLAS_CHECK(cublasGemmEx(attr_blas, CUBLAS_OP_N, CUBLAS_OP_N, in, M, out, &alpha, W, CUDA_R_16BF, in, dy,
                              CUDA_R_16BF, out, &beta, C, CUDA_R_32F, in, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

/* ---- kernels ------------------------------------------------------------------ */

__global__ void f32_to_bf16_kernel(bf16 *dst, const float *src, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16(src[i]);
}

static void to_bf16(uint16_t *dst, const float *src, int64_t n) {
    f32_to_bf16_kernel<<<ra_grid_for(n, 256), 256, 0, ra_cuda_stream>>>((bf16 *)dst, src, n);
    CUDA_CHECK_LAST();
}

/* dz[s, :] = onehot(tok[s]) − softmax(z[s, :]) */
__global__ void lm_grad_kernel(bf16 *dz, const bf16 *z, const float *lse, const int32_t *tok, int V) {
    int64_t s = blockIdx.x;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        float p = __expf(__bfloat162float(z[s * V + v]) - lse[s]);
        dz[s * V + v] = __float2bfloat16((v == tok[s] ? 1.0f : 0.0f) - p);
    }
}

/* dx[dx_row] (+)= RMSNorm backward: r·(w⊙dy) − x·r³·⟨w⊙dy, x⟩/D; one block per
 * row r of dy.  dx_rows / x_rows map rows (NULL = identity); accumulate adds
 * to dx, else overwrites it. */
__global__ void rmsnorm_bwd_kernel(float *dx, const int32_t *dx_rows, const float *dy, const bf16 *x,
                                   const int32_t *x_rows, const float *rstd, const bf16 *w, int D, int accumulate) {
    __shared__ float scratch[32];
    int r = blockIdx.x;
    const bf16 *xr = x + (int64_t)(x_rows ? x_rows[r] : r) * D;
    const float *gr = dy + (int64_t)r * D;
    float *out = dx + (int64_t)(dx_rows ? dx_rows[r] : r) * D;
    float dot = 0;
    for (int j = threadIdx.x; j < D; j += blockDim.x)
        dot += __bfloat162float(w[j]) * gr[j] * __bfloat162float(xr[j]);
    dot = block_sum(dot, scratch);
    float rs = rstd[r], c = rs * rs * rs * dot / D;
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        float v = rs * __bfloat162float(w[j]) * gr[j] - __bfloat162float(xr[j]) * c;
        out[j] = accumulate ? out[j] + v : v;
    }
}

/* SwiGLU backward over the fused gate/up buffer: d_gu = [dgate | dup] (bf16). */
__global__ void swiglu_bwd_kernel(bf16 *dgu, const bf16 *gu, const float *ds, int64_t n, int I) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n * I; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t row = i / I, j = i % I;
        float a = __bfloat162float(gu[row * 2 * I + j]), u = __bfloat162float(gu[row * 2 * I + I + j]);
        float sg = 1.0f / (1.0f + __expf(-a)), g = ds[i];
        dgu[row * 2 * I + j] = __float2bfloat16(g * u * sg * (1.0f + a * (1.0f - sg)));
        dgu[row * 2 * I + I + j] = __float2bfloat16(g * a * sg);
    }
}

/* prod[t, h] = Σ_j datt[t, h, j] · att[t, h, j]; one warp per (t, h). */
__global__ void head_dot_kernel(float *prod, const float *datt, const bf16 *att, int64_t n, int H, int hd) {
    int lane = threadIdx.x & 31;
    int64_t warps = (int64_t)gridDim.x * blockDim.x / 32;
    for (int64_t w = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) / 32; w < n * H; w += warps) {
        const float *g = datt + w * hd;
        const bf16 *a = att + w * hd;
        float s = 0;
        for (int j = lane; j < hd; j += 32) s += g[j] * __bfloat162float(a[j]);
        s = warp_sum(s);
        if (lane == 0) prod[w] = s;
    }
}

/* Inverse RoPE (rotation by −θ) on fp32 gradients of `heads` heads per row. */
__global__ void rope_bwd_kernel(float *g, int64_t row_stride, const float *cos_t, const float *sin_t, int64_t n,
                                int heads, int hd) {
    int half = hd / 2;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n * heads * half;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t row = i / (heads * half);
        int h = (int)(i / half % heads), j = (int)(i % half);
        float *v = g + row * row_stride + (int64_t)h * hd;
        float c = cos_t[row * half + j], s = sin_t[row * half + j];
        float g1 = v[j], g2 = v[j + half];
        v[j] = g1 * c + g2 * s;
        v[j + half] = g2 * c - g1 * s;
    }
}

/* Attention backward, pass 1: one block per query (b, h, t).  Recomputes the
 * probabilities p_s over keys s ≤ t, then dp_s = dO_t·v_s, D_t = Σ p·dp,
 * dq_t = scale · Σ_s p_s (dp_s − D_t) k_s; stores lse_t and D_t for pass 2.
 * qkv: bf16 [B*T, qkvd] (q heads, then k, then v); dO fp32 [B*T, H*hd];
 * dqkv fp32 [B*T, qkvd] receives dq in the q columns. */
__global__ void attn_bwd_q_kernel(float *dqkv, float *lse_out, float *D_out, const bf16 *qkv, const float *dO, int T,
                                  int H, int Hkv, int hd, int qkvd, float scale) {
    extern __shared__ float sm[]; /* q[hd], o[hd], p[T], dp[T] */
    __shared__ float scratch[32];
    float *qs = sm, *os = sm + hd, *p = sm + 2 * hd, *dp = p + T;
    int t = blockIdx.x % T, h = (blockIdx.x / T) % H;
    int64_t b = blockIdx.x / ((int64_t)T * H);
    int g = h / (H / Hkv);
    const int64_t row = b * T + t;
    for (int j = threadIdx.x; j < hd; j += blockDim.x) {
        qs[j] = __bfloat162float(qkv[row * qkvd + (int64_t)h * hd + j]);
        os[j] = dO[row * H * hd + (int64_t)h * hd + j];
    }
    __syncthreads();
    const bf16 *kb = qkv + b * T * qkvd + (int64_t)(H + g) * hd;
    const bf16 *vb = qkv + b * T * qkvd + (int64_t)(H + Hkv + g) * hd;
    float mx = -INFINITY;
    for (int s = threadIdx.x; s <= t; s += blockDim.x) {
        float a = 0, c = 0;
        for (int j = 0; j < hd; j++) {
            a += qs[j] * __bfloat162float(kb[(int64_t)s * qkvd + j]);
            c += os[j] * __bfloat162float(vb[(int64_t)s * qkvd + j]);
        }
        p[s] = a * scale;
        dp[s] = c;
        mx = fmaxf(mx, p[s]);
    }
    mx = block_max(mx, scratch);
    float sum = 0;
    for (int s = threadIdx.x; s <= t; s += blockDim.x) sum += p[s] = __expf(p[s] - mx);
    sum = block_sum(sum, scratch);
    float inv = 1.0f / sum, Dt = 0;
    for (int s = threadIdx.x; s <= t; s += blockDim.x) {
        p[s] *= inv;
        Dt += p[s] * dp[s];
    }
    Dt = block_sum(Dt, scratch); /* contains __syncthreads: p is complete below */
    for (int j = threadIdx.x; j < hd; j += blockDim.x) {
        float acc = 0;
        for (int s = 0; s <= t; s++) acc += p[s] * (dp[s] - Dt) * __bfloat162float(kb[(int64_t)s * qkvd + j]);
        dqkv[row * qkvd + (int64_t)h * hd + j] = acc * scale;
    }
    if (threadIdx.x == 0) {
        lse_out[blockIdx.x] = mx + logf(sum);
        D_out[blockIdx.x] = Dt;
    }
}

/* Pass 2: one block per key (b, g, s): over the group's query heads and the
 * queries t ≥ s, p = exp(q_t·k_s·scale − lse_t), ds = p (dO_t·v_s − D_t);
 * dk_s = scale Σ ds q_t, dv_s = Σ p dO_t, into the k and v columns of dqkv. */
__global__ void attn_bwd_kv_kernel(float *dqkv, const float *lse, const float *Dv, const bf16 *qkv, const float *dO,
                                   int T, int H, int Hkv, int hd, int qkvd, float scale) {
    extern __shared__ float sm[]; /* k[hd], v[hd], ds[T], p[T] */
    float *ks = sm, *vs = sm + hd, *dsv = sm + 2 * hd, *pv = dsv + T;
    int s = blockIdx.x % T, g = (blockIdx.x / T) % Hkv;
    int64_t b = blockIdx.x / ((int64_t)T * Hkv);
    const int64_t row = b * T + s;
    for (int j = threadIdx.x; j < hd; j += blockDim.x) {
        ks[j] = __bfloat162float(qkv[row * qkvd + (int64_t)(H + g) * hd + j]);
        vs[j] = __bfloat162float(qkv[row * qkvd + (int64_t)(H + Hkv + g) * hd + j]);
    }
    float dk_acc[4] = {0, 0, 0, 0}, dv_acc[4] = {0, 0, 0, 0}; /* dims threadIdx.x + 32·i ... for hd ≤ 4·blockDim */
    int group = H / Hkv;
    for (int h = g * group; h < (g + 1) * group; h++) {
        __syncthreads();
        for (int t = s + threadIdx.x; t < T; t += blockDim.x) {
            const int64_t qrow = b * T + t;
            float a = 0, c = 0;
            for (int j = 0; j < hd; j++) {
                a += __bfloat162float(qkv[qrow * qkvd + (int64_t)h * hd + j]) * ks[j];
                c += dO[qrow * H * hd + (int64_t)h * hd + j] * vs[j];
            }
            int64_t qi = (b * H + h) * T + t;
            float pp = __expf(a * scale - lse[qi]);
            pv[t] = pp;
            dsv[t] = pp * (c - Dv[qi]);
        }
        __syncthreads();
        for (int i = 0; i < 4; i++) {
            int j = threadIdx.x + i * blockDim.x;
            if (j >= hd) break;
            float dk = 0, dv = 0;
            for (int t = s; t < T; t++) {
                const int64_t qrow = b * T + t;
                dk += dsv[t] * __bfloat162float(qkv[qrow * qkvd + (int64_t)h * hd + j]);
                dv += pv[t] * dO[qrow * H * hd + (int64_t)h * hd + j];
            }
            dk_acc[i] += dk;
            dv_acc[i] += dv;
        }
    }
    for (int i = 0; i < 4; i++) {
        int j = threadIdx.x + i * blockDim.x;
        if (j >= hd) break;
        dqkv[row * qkvd + (int64_t)(H + g) * hd + j] = dk_acc[i] * scale;
        dqkv[row * qkvd + (int64_t)(H + Hkv + g) * hd + j] = dv_acc[i];
    }
}

/* ---- the engine ------------------------------------------------------------------ */

typedef struct attr_bufs {
    float *g, *gmid, *dxn, *ds, *datt, *dqkv, *rstd1, *rstd2, *prod, *lse_q, *D_q, *dh, *rstd_f, *lse_t;
    uint16_t *gb, *dgu, *dattb, *dqkvb, *dz, *xmid;
    int32_t *trow, *ttok;
    float *h_prod;
    int32_t *h_trow, *h_ttok;
} attr_bufs;

static int attr_alloc(attr_bufs *a, const pc_state *s, int max_targets, ra_error *err) {
    memset(a, 0, sizeof *a);
    size_t n = (size_t)s->B * s->T_max, D = s->D, qd = (size_t)s->H * s->hd, I = s->I, q = s->qkvd;
    size_t TT = (size_t)s->B * s->H * s->T_max;
    int rc = 0;
    struct {
        void **p;
        size_t bytes;
        const char *what;
    } want[] = {
        {(void **)&a->g, n * D * 4, "residual gradients"}, {(void **)&a->gmid, n * D * 4, "residual gradients"},
        {(void **)&a->dxn, n * D * 4, "norm gradients"}, {(void **)&a->ds, n * I * 4, "MLP gradients"},
        {(void **)&a->datt, n * qd * 4, "attention gradients"}, {(void **)&a->dqkv, n * q * 4, "q/k/v gradients"},
        {(void **)&a->rstd1, n * 4, "norm statistics"}, {(void **)&a->rstd2, n * 4, "norm statistics"},
        {(void **)&a->prod, n * s->H * 4, "head attributions"}, {(void **)&a->lse_q, TT * 4, "attention statistics"},
        {(void **)&a->D_q, TT * 4, "attention statistics"}, {(void **)&a->dh, (size_t)max_targets * D * 4, "LM-head gradients"},
        {(void **)&a->rstd_f, (size_t)max_targets * 4, "norm statistics"}, {(void **)&a->lse_t, (size_t)max_targets * 4, "log-sum-exp"},
        {(void **)&a->gb, n * D * 2, "gradient copies"}, {(void **)&a->dgu, n * 2 * I * 2, "gate/up gradients"},
        {(void **)&a->dattb, n * qd * 2, "gradient copies"}, {(void **)&a->dqkvb, n * q * 2, "gradient copies"},
        {(void **)&a->dz, (size_t)max_targets * s->V * 2, "logit gradients"}, {(void **)&a->xmid, n * D * 2, "residual copies"},
        {(void **)&a->trow, (size_t)max_targets * 4, "target rows"}, {(void **)&a->ttok, (size_t)max_targets * 4, "target tokens"},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0] && !rc; i++)
        rc = cuda_malloc_try(want[i].p, want[i].bytes ? want[i].bytes : 1, want[i].what, err);
    a->h_prod = (float *)xmalloc(n * s->H * 4);
    a->h_trow = (int32_t *)xmalloc((size_t)max_targets * 4);
    a->h_ttok = (int32_t *)xmalloc((size_t)max_targets * 4);
    return rc;
}

static void attr_free(attr_bufs *a) {
    void *d[] = {a->g, a->gmid, a->dxn, a->ds, a->datt, a->dqkv, a->rstd1, a->rstd2, a->prod, a->lse_q, a->D_q,
                 a->dh, a->rstd_f, a->lse_t, a->gb, a->dgu, a->dattb, a->dqkvb, a->dz, a->xmid, a->trow, a->ttok};
    for (size_t i = 0; i < sizeof d / sizeof d[0]; i++) cuda_free(d[i]);
    free(a->h_prod), free(a->h_trow), free(a->h_ttok);
}

/* Layer l, top down: g (∂J/∂x_{l+1}) → ∂J/∂x_l, adding Σ grad·output per head
 * into attr[l*H + h]. */
static void layer_backward(pc_state *s, attr_bufs *a, int l, int B, int T, double *attr) {
    const cuda_layer_weights *W = &s->m->layers[l];
    int n = B * T, D = s->D, H = s->H, Hkv = s->Hkv, hd = s->hd, I = s->I, q = s->qkvd;
    float eps = (float)s->m->cfg.rms_norm_eps;

    /* recompute: x_l → attention output (s->att), x_mid, gate/up */
    cuda_copy(s->x, s->cache_x[l], (size_t)n * D * 2);
    pc_attention_out(s, l, B, T, s->att, a->rstd1);
    cuda_copy(a->xmid, s->x, (size_t)n * D * 2);
    cuda_linear_residual_forward(a->xmid, s->att, W->wo, W->bo, n, H * hd, D);
    cuda_rmsnorm_forward(s->xn, a->rstd2, a->xmid, W->post_norm, n, D, eps);
    cuda_linear_forward(s->gu, s->xn, W->w_gate_up, NULL, n, D, 2 * I);

    /* MLP backward */
    to_bf16(a->gb, a->g, (int64_t)n * D);
    gemm_dx(a->ds, a->gb, W->w_down, n, D, I, 0.0f);
    swiglu_bwd_kernel<<<ra_grid_for((int64_t)n * I, 256), 256, 0, ra_cuda_stream>>>((bf16 *)a->dgu, (const bf16 *)s->gu,
                                                                                 a->ds, n, I);
    CUDA_CHECK_LAST();
    gemm_dx(a->dxn, a->dgu, W->w_gate_up, n, 2 * I, D, 0.0f);
    cuda_copy(a->gmid, a->g, (size_t)n * D * 4);
    rmsnorm_bwd_kernel<<<n, 256, 0, ra_cuda_stream>>>(a->gmid, NULL, a->dxn, (const bf16 *)a->xmid, NULL, a->rstd2,
                                                      (const bf16 *)W->post_norm, D, 1);
    CUDA_CHECK_LAST();

    /* o_proj backward and every head's grad·output */
    to_bf16(a->gb, a->gmid, (int64_t)n * D);
    gemm_dx(a->datt, a->gb, W->wo, n, D, H * hd, 0.0f);
    head_dot_kernel<<<ra_grid_for((int64_t)n * H * 32, 256), 256, 0, ra_cuda_stream>>>(a->prod, a->datt,
                                                                                    (const bf16 *)s->att, n, H, hd);
    CUDA_CHECK_LAST();
    cuda_download(a->h_prod, a->prod, (size_t)n * H * 4);
    for (int h = 0; h < H; h++) {
        double sum = 0;
        for (int64_t t = 0; t < n; t++) sum += a->h_prod[t * H + h];
        attr[l * H + h] += sum;
    }
    if (l == 0) return;

    /* attention, RoPE, q/k/v and input norm backward */
    float scale = 1.0f / sqrtf((float)hd);
    size_t smem = (size_t)(2 * hd + 2 * T) * sizeof(float);
    attn_bwd_q_kernel<<<(unsigned)((int64_t)B * H * T), 128, smem, ra_cuda_stream>>>(
        a->dqkv, a->lse_q, a->D_q, (const bf16 *)s->qkv, a->datt, T, H, Hkv, hd, q, scale);
    CUDA_CHECK_LAST();
    attn_bwd_kv_kernel<<<(unsigned)((int64_t)B * Hkv * T), 64, smem, ra_cuda_stream>>>(
        a->dqkv, a->lse_q, a->D_q, (const bf16 *)s->qkv, a->datt, T, H, Hkv, hd, q, scale);
    CUDA_CHECK_LAST();
    rope_bwd_kernel<<<ra_grid_for((int64_t)n * (H + Hkv) * hd / 2, 256), 256, 0, ra_cuda_stream>>>(
        a->dqkv, q, s->cos_t, s->sin_t, n, H + Hkv, hd);
    CUDA_CHECK_LAST();
    to_bf16(a->dqkvb, a->dqkv, (int64_t)n * q);
    gemm_dx(a->dxn, a->dqkvb, W->wqkv, n, q, D, 0.0f);
    cuda_copy(a->g, a->gmid, (size_t)n * D * 4);
    rmsnorm_bwd_kernel<<<n, 256, 0, ra_cuda_stream>>>(a->g, NULL, a->dxn, (const bf16 *)s->cache_x[l], NULL, a->rstd1,
                                                      (const bf16 *)W->input_norm, D, 1);
    CUDA_CHECK_LAST();
}

extern "C" int probe_attribution_cuda(const ra_model *m, const probe_data *d, const probe_opts *o, float *attr,
                                      probe_outcome *base, ra_error *err) {
    int B = o && o->batch > 0 ? o->batch : 128;
    if (B < d->max_rows_per_item) B = d->max_rows_per_item;
    /* the attention backward kernels keep 2·(head_dim + T) floats in shared
     * memory and up to 4 dims per thread of 64 */
    if (m->cfg.head_dim > 256 || (size_t)(2 * m->cfg.head_dim + 2 * d->max_tokens) * 4 > 48 * 1024)
        return ra_fail(err, EX_DATAERR, "attribution on the GPU: head_dim %d and %d tokens per row exceed its kernels "
                       "(head_dim <= 256, tokens <= %d)", m->cfg.head_dim, d->max_tokens, 6144 - m->cfg.head_dim);
    pc_state s;
    int rc = pc_init(&s, m, d, B, err);
    if (rc) return rc;
    int max_correct = 1;
    for (int i = 0; i < d->n_items; i++) {
        const probe_item *it = &d->items[i];
        int c = it->cand_start[it->correct + 1] - it->cand_start[it->correct];
        if (c > max_correct) max_correct = c;
    }
    attr_bufs a;
    if ((rc = attr_alloc(&a, &s, B * max_correct, err))) {
        attr_free(&a);
        pc_free(&s);
        return ra_error_prefix(err, "attribution on the GPU (batch %d x %d tokens): ", B, s.T_max);
    }
    int L = s.L, H = s.H, N = d->n_items, D = s.D, V = s.V;
    double *acc = (double *)xcalloc((size_t)L * H, sizeof(double));
    pc_unit *units = (pc_unit *)xmalloc((size_t)B * sizeof(pc_unit));
    probe_outcome *outs = (probe_outcome *)xmalloc((size_t)B * sizeof(probe_outcome));
    for (int i0 = 0; i0 < N;) {
        int i1 = i0, rows = 0, T = 0;
        while (i1 < N && rows + d->items[i1].n_rows <= B) {
            const probe_item *it = &d->items[i1];
            for (int r = 0; r < it->n_rows; r++)
                if (d->rows[it->first_row + r].n_tokens > T) T = d->rows[it->first_row + r].n_tokens;
            rows += it->n_rows;
            i1++;
        }
        pc_rope_tables(&s, T);
        pc_baseline(&s, d, i0, i1, T);
        /* ∂J/∂x_L at the correct answers' target positions (J summed over
         * prompts here, divided by N at the end) */
        int nt = 0, slot = 0;
        for (int i = i0; i < i1; i++) {
            const probe_item *it = &d->items[i];
            for (int t = it->cand_start[it->correct]; t < it->cand_start[it->correct + 1]; t++) {
                const probe_target *tg = &it->targets[t];
                a.h_trow[nt] = (slot + tg->row - it->first_row) * T + tg->pos;
                a.h_ttok[nt++] = tg->token;
            }
            slot += it->n_rows;
        }
        cuda_upload(a.trow, a.h_trow, (size_t)nt * 4);
        cuda_upload(a.ttok, a.h_ttok, (size_t)nt * 4);
        cuda_gather_rows(s.sel, s.x, a.trow, nt, D);
        cuda_rmsnorm_forward(s.sel, a.rstd_f, s.sel, s.m->final_norm, nt, D, (float)m->cfg.rms_norm_eps);
        cuda_linear_forward(s.logits, s.sel, s.m->lm_head, NULL, nt, D, V);
        probe_row_stats_kernel<<<nt, 256, 0, ra_cuda_stream>>>((const bf16 *)s.logits, V, a.lse_t, s.argmax);
        CUDA_CHECK_LAST();
        lm_grad_kernel<<<nt, 256, 0, ra_cuda_stream>>>((bf16 *)a.dz, (const bf16 *)s.logits, a.lse_t, a.ttok, V);
        CUDA_CHECK_LAST();
        gemm_dx(a.dh, a.dz, s.m->lm_head, nt, V, D, 0.0f);
        cuda_memset(a.g, 0, (size_t)rows * T * D * 4);
        rmsnorm_bwd_kernel<<<nt, 256, 0, ra_cuda_stream>>>(a.g, a.trow, a.dh, (const bf16 *)s.x, a.trow, a.rstd_f,
                                                           (const bf16 *)s.m->final_norm, D, 0);
        CUDA_CHECK_LAST();
        /* the baseline outcomes from the same pass (s.x is still the final residual) */
        if (base) {
            int nb = 0;
            for (int i = i0; i < i1; i++) units[nb++] = (pc_unit){i, -1};
            pc_score_call(&s, d, units, nb, T, outs);
            for (int i = i0; i < i1; i++) base[i] = outs[i - i0];
        }
        for (int l = L - 1; l >= 0; l--) layer_backward(&s, &a, l, rows, T, acc);
        if (o && o->progress) ra_progress_update(o->progress, i1);
        i0 = i1;
    }
    for (int i = 0; i < L * H; i++) attr[i] = (float)(acc[i] / N);
    free(acc), free(units), free(outs);
    attr_free(&a);
    pc_free(&s);
    return 0;
}
