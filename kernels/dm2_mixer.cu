/* The whole DiscreteMamba2 mixer on the GPU (twin of lib/dm2_mixer.c and
 * dm2_prefill): in_proj → conv (x, B, C) → decay → chunked SSD → gate →
 * out_proj, and the backward through all of it, composed from the kernels of
 * dm2_cuda.cu, ssd_chunked.cu and cuBLAS (bf16 operands, fp32 accumulation;
 * the weight gradients accumulate in fp32 straight from the GEMM). */
#include <stdlib.h>
#include <string.h>

#include "cuda_common.cuh"
#include "dm2_cuda.h"
#include "ops_cuda.h"
#include "ssd_cuda.h"
#include "train_common.cuh"


/* Row-major C[M,N] = op(A)[M,K] · op(B)[K,N] + beta·C, A and B bf16 with
 * leading dimensions lda, ldb (of their stored rows), C bf16 or fp32.  In
 * column-major terms that is Cᵀ = op(B)ᵀ op(A)ᵀ, so the operands swap. */
static void gemm_rm(bool ta, bool tb, int M, int N, int K, const uint16_t *A, int lda, const uint16_t *Bp, int ldb,
                    float beta, void *C, bool c_f32, int ldc) {
    const float one = 1.0f;
    CUBLAS_CHECK(cublasGemmEx(train_blas(), tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &one, Bp,
                              CUDA_R_16BF, ldb, A, CUDA_R_16BF, lda, &beta, C, c_f32 ? CUDA_R_32F : CUDA_R_16BF, ldc,
                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

static __global__ void add_f32_kernel(float *y, const float *x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += x[i];
}

typedef struct {
    int in_dim, ld, inner, gn, H, off_B, off_C, off_z, off_A, conv;
} layout;

static layout layout_of(const dm2_config *c) {
    layout l;
    l.in_dim = dm2_in_proj_dim(c), l.ld = dm2_in_proj_ld(c), l.inner = dm2_d_inner(c);
    l.gn = c->n_groups * c->d_state, l.H = c->n_heads;
    l.off_B = l.inner, l.off_C = l.inner + l.gn, l.off_z = l.inner + 2 * l.gn, l.off_A = l.off_z + l.inner;
    l.conv = dm2_conv_dim(c);
    return l;
}

static int chunk_of(const dm2_config *c) { return c->chunk > 0 ? c->chunk : SSD_DEFAULT_CHUNK; }

/* The SSD workspace serves the chunked scan's backward and the mixing
 * matrix's (stage 1). */
static size_t ws_bytes(const ssd_dims *d, int chunk) {
    size_t a = cuda_ssd_chunked_workspace_bytes(d, chunk, 1), b = cuda_ssd_matrix_workspace_bytes(d, 1);
    return a > b ? a : b;
}

extern "C" cuda_dm2_acts *cuda_dm2_acts_alloc(int B, int T, const dm2_config *cfg, ra_error *err) {
    if (dm2_check_config(cfg, err)) return NULL;
    if (B < 1 || T < 1) {
        ra_fail(err, EX_DATAERR, "dm2: batch %d x length %d: both must be >= 1", B, T);
        return NULL;
    }
    ssd_dims d = dm2_ssd_dims(cfg, B, T);
    if (cuda_ssd_check_dims(&d, err)) return NULL;
    cuda_dm2_acts *s = (cuda_dm2_acts *)xcalloc(1, sizeof *s);
    s->B = B, s->T = T, s->cfg = *cfg;
    layout L = layout_of(cfg);
    const size_t BT = (size_t)B * T;
    struct {
        void **p;
        size_t bytes;
        const char *what;
    } bufs[] = {
        {(void **)&s->proj, BT * L.ld * 2, "dm2 in_proj output"},
        {(void **)&s->dproj, BT * L.ld * 2, "dm2 in_proj gradient"},
        {(void **)&s->x, BT * L.inner * 2, "dm2 conv x"},
        {(void **)&s->dx, BT * L.inner * 2, "dm2 conv x gradient"},
        {(void **)&s->Bm, BT * L.gn * 2, "dm2 conv B"},
        {(void **)&s->dBm, BT * L.gn * 2, "dm2 conv B gradient"},
        {(void **)&s->Cm, BT * L.gn * 2, "dm2 conv C"},
        {(void **)&s->dCm, BT * L.gn * 2, "dm2 conv C gradient"},
        {(void **)&s->a, BT * L.H * 4, "dm2 decays"},
        {(void **)&s->da, BT * L.H * 4, "dm2 decay gradient"},
        {(void **)&s->y, BT * L.inner * 2, "dm2 SSD output"},
        {(void **)&s->dy, BT * L.inner * 2, "dm2 SSD output gradient"},
        {(void **)&s->yg, BT * L.inner * 2, "dm2 gated output"},
        {(void **)&s->dyg, BT * L.inner * 2, "dm2 gated output gradient"},
        {(void **)&s->dD, (size_t)L.H * 4, "dm2 dD"},
        {&s->ws, ws_bytes(&d, chunk_of(cfg)), "dm2 SSD workspace"},
        {&s->sums_ws, cuda_dm2_sums_workspace_bytes((int64_t)BT, L.inner > L.gn ? L.inner : L.gn),
         "dm2 gradient partial sums"},
    };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (cuda_malloc_try(bufs[i].p, bufs[i].bytes, bufs[i].what, err)) {
            cuda_dm2_acts_free(s);
            return NULL;
        }
    return s;
}

extern "C" void cuda_dm2_acts_free(cuda_dm2_acts *s) {
    if (!s) return;
    cuda_free(s->proj), cuda_free(s->dproj), cuda_free(s->x), cuda_free(s->dx), cuda_free(s->Bm), cuda_free(s->dBm);
    cuda_free(s->Cm), cuda_free(s->dCm), cuda_free(s->a), cuda_free(s->da), cuda_free(s->y), cuda_free(s->dy);
    cuda_free(s->yg), cuda_free(s->dyg), cuda_free(s->dD), cuda_free(s->ws), cuda_free(s->sums_ws);
    free(s);
}

/* in_proj, conv of x, B, C, decay; xbc = 0 skips x (the matrix path). */
static void project(cuda_dm2_acts *s, const cuda_dm2_params *p, const uint16_t *u, const uint8_t *starts, int with_x) {
    const dm2_config *c = &s->cfg;
    const layout L = layout_of(c);
    const int64_t BT = (int64_t)s->B * s->T;
    gemm_rm(false, true, (int)BT, L.ld, c->d_model, u, c->d_model, p->in_proj_w, c->d_model, 0.0f, s->proj, false, L.ld);
    if (with_x)
        cuda_dm2_conv_forward(s->x, L.inner, s->proj, L.ld, p->conv_w, p->conv_b, starts, s->B, s->T, L.inner);
    cuda_dm2_conv_forward(s->Bm, L.gn, s->proj + L.off_B, L.ld, p->conv_w + (size_t)L.off_B * DM2_CONV_K,
                          p->conv_b + L.off_B, starts, s->B, s->T, L.gn);
    cuda_dm2_conv_forward(s->Cm, L.gn, s->proj + L.off_C, L.ld, p->conv_w + (size_t)L.off_C * DM2_CONV_K,
                          p->conv_b + L.off_C, starts, s->B, s->T, L.gn);
    cuda_dm2_decay_forward(s->a, s->proj + L.off_A, L.ld, BT, L.H);
}

/* y → gate with z → out_proj (or the gated y itself) into out. */
static void gate_and_project_out(uint16_t *out, cuda_dm2_acts *s, const cuda_dm2_params *p) {
    const dm2_config *c = &s->cfg;
    const layout L = layout_of(c);
    const int64_t BT = (int64_t)s->B * s->T;
    uint16_t *gated = p->out_proj_w ? s->yg : out;
    cuda_dm2_gate_forward(gated, s->y, s->proj + L.off_z, L.ld, p->z_bias, BT, L.inner);
    if (p->out_proj_w) cuda_linear_forward(out, s->yg, p->out_proj_w, NULL, (int)BT, L.inner, c->d_model);
}

extern "C" void cuda_dm2_forward(uint16_t *out, float *final_state, cuda_dm2_acts *s, const cuda_dm2_params *p,
                                 const uint16_t *u, const uint8_t *starts) {
    const dm2_config *c = &s->cfg;
    project(s, p, u, starts, 1);
    ssd_dims d = dm2_ssd_dims(c, s->B, s->T);
    cuda_ssd_chunked_forward(s->y, final_state, s->x, s->Bm, s->Cm, s->a, p->D, starts, NULL, &d, chunk_of(c), s->ws);
    gate_and_project_out(out, s, p);
}

extern "C" void cuda_dm2_forward_around_ssd(uint16_t *out, cuda_dm2_acts *s, const cuda_dm2_params *p,
                                            const uint16_t *u, const uint8_t *starts) {
    project(s, p, u, starts, 1);
    gate_and_project_out(out, s, p);
}

/* dW_in [in_dim, D] += dprojᵀ u.  An odd in_dim (a layer with one kept head)
 * sends the whole GEMM to cuBLAS's sm80 kernel (0.56 ms against ~0.35 on the
 * sm90 ones at the 1B training shape, bench/results/dm2_mixer.md): the
 * rows up to a multiple of 8 go first, the last < 8 rows (A_log) apart. */
static void weight_grad_in(float *gw, const uint16_t *dproj, const uint16_t *u, const layout &L, int D, int BT) {
    const int m0 = L.in_dim / 8 * 8;
    gemm_rm(true, false, m0, D, BT, dproj, L.ld, u, D, 1.0f, gw, true, D);
    if (L.in_dim > m0)
        gemm_rm(true, false, L.in_dim - m0, D, BT, dproj + m0, L.ld, u, D, 1.0f, gw + (size_t)m0 * D, true, D);
}

/* From dx (with_x), dBm, dCm, da and the z columns of dproj back through
 * the decay, the conv and in_proj. */
static void backward_to_input(cuda_dm2_grads *g, uint16_t *du, cuda_dm2_acts *s, const cuda_dm2_params *p,
                              const uint16_t *u, const uint8_t *starts, int with_x) {
    const dm2_config *c = &s->cfg;
    const layout L = layout_of(c);
    const int64_t BT = (int64_t)s->B * s->T;
    cuda_dm2_decay_backward(s->dproj + L.off_A, L.ld, s->da, s->proj + L.off_A, L.ld, BT, L.H);
    if (with_x)
        cuda_dm2_conv_backward(s->dproj, L.ld, g->conv_w, g->conv_b, s->dx, L.inner, s->proj, L.ld, p->conv_w,
                               starts, s->B, s->T, L.inner, s->sums_ws);
    else
        CUDA_CHECK(cudaMemset2DAsync(s->dproj, (size_t)L.ld * 2, 0, (size_t)L.inner * 2, (size_t)BT,
                                     ra_cuda_stream));
    cuda_dm2_conv_backward(s->dproj + L.off_B, L.ld, g->conv_w + (size_t)L.off_B * DM2_CONV_K, g->conv_b + L.off_B,
                           s->dBm, L.gn, s->proj + L.off_B, L.ld, p->conv_w + (size_t)L.off_B * DM2_CONV_K, starts,
                           s->B, s->T, L.gn, s->sums_ws);
    cuda_dm2_conv_backward(s->dproj + L.off_C, L.ld, g->conv_w + (size_t)L.off_C * DM2_CONV_K, g->conv_b + L.off_C,
                           s->dCm, L.gn, s->proj + L.off_C, L.ld, p->conv_w + (size_t)L.off_C * DM2_CONV_K, starts,
                           s->B, s->T, L.gn, s->sums_ws);
    /* dW_in += dprojᵀ u;  du += dproj W_in over all ld columns: the padding
     * columns of dproj are zeroed (their weight rows are zero, but the
     * buffer may hold anything, NaN included, from a wider layer) */
    weight_grad_in(g->in_proj_w, s->dproj, u, L, c->d_model, (int)BT);
    if (du) {
        if (L.ld > L.in_dim)
            CUDA_CHECK(cudaMemset2DAsync(s->dproj + L.in_dim, (size_t)L.ld * 2, 0, (size_t)(L.ld - L.in_dim) * 2,
                                         (size_t)BT, ra_cuda_stream));
        gemm_rm(false, false, (int)BT, c->d_model, L.ld, s->dproj, L.ld, p->in_proj_w, c->d_model, 1.0f, du, false,
                c->d_model);
    }
}

static void add_dD(float *gD, const float *dD, int H) {
    add_f32_kernel<<<(H + 127) / 128, 128, 0, ra_cuda_stream>>>(gD, dD, H);
    CUDA_CHECK_LAST();
}

extern "C" void cuda_dm2_backward(cuda_dm2_grads *g, uint16_t *du, const uint16_t *dout, cuda_dm2_acts *s,
                                  const cuda_dm2_params *p, const uint16_t *u, const uint8_t *starts) {
    const dm2_config *c = &s->cfg;
    const layout L = layout_of(c);
    const int64_t BT = (int64_t)s->B * s->T;
    const uint16_t *dyg = dout;
    if (p->out_proj_w) { /* dW_out += doutᵀ yg;  dyg = dout W_out */
        gemm_rm(true, false, c->d_model, L.inner, (int)BT, dout, c->d_model, s->yg, L.inner, 1.0f, g->out_proj_w, true,
                L.inner);
        gemm_rm(false, false, (int)BT, L.inner, c->d_model, dout, c->d_model, p->out_proj_w, L.inner, 0.0f, s->dyg,
                false, L.inner);
        dyg = s->dyg;
    }
    cuda_dm2_gate_backward(s->dy, s->dproj + L.off_z, L.ld, g->z_bias, dyg, s->y, s->proj + L.off_z, L.ld,
                           p->z_bias, BT, L.inner, s->sums_ws);
    ssd_dims d = dm2_ssd_dims(c, s->B, s->T);
    /* s->ws still holds the chunk states of the forward on these acts */
    cuda_ssd_chunked_backward_after_forward(s->dx, s->dBm, s->dCm, s->da, s->dD, NULL, s->dy, s->x, s->Bm, s->Cm, s->a,
                                            p->D, starts, NULL, &d, chunk_of(c), s->ws);
    add_dD(g->D, s->dD, L.H);
    backward_to_input(g, du, s, p, u, starts, 1);
}

extern "C" void cuda_dm2_matrix_forward(float *Tm, cuda_dm2_acts *s, const cuda_dm2_params *p, const uint16_t *u,
                                        const uint8_t *starts) {
    project(s, p, u, starts, 0);
    ssd_dims d = dm2_ssd_dims(&s->cfg, s->B, s->T);
    cuda_ssd_matrix_forward(Tm, s->Bm, s->Cm, s->a, p->D, starts, &d, s->ws);
}

extern "C" void cuda_dm2_matrix_backward(cuda_dm2_grads *g, uint16_t *du, const float *dTm, cuda_dm2_acts *s,
                                         const cuda_dm2_params *p, const uint16_t *u, const uint8_t *starts) {
    const layout L = layout_of(&s->cfg);
    const int64_t BT = (int64_t)s->B * s->T;
    ssd_dims d = dm2_ssd_dims(&s->cfg, s->B, s->T);
    cuda_ssd_matrix_backward(s->dBm, s->dCm, s->da, s->dD, dTm, s->Bm, s->Cm, s->a, starts, &d, s->ws);
    add_dD(g->D, s->dD, L.H);
    CUDA_CHECK(cudaMemset2DAsync(s->dproj + L.off_z, (size_t)L.ld * 2, 0, (size_t)L.inner * 2, (size_t)BT,
                                 ra_cuda_stream));
    backward_to_input(g, du, s, p, u, starts, 0);
}

extern "C" void cuda_dm2_prefill(uint16_t *out, cuda_dm2_acts *s, cuda_dm2_cache *c, const cuda_dm2_params *p,
                                 const uint16_t *u, const uint8_t *starts) {
    RA_CHECK(c->B == s->B);
    cuda_dm2_forward(out, c->ssm, s, p, u, starts);
    cuda_dm2_conv_state_from_prompt(c->conv, s->proj, dm2_in_proj_ld(&s->cfg), starts, s->B, s->T,
                                    dm2_conv_dim(&s->cfg));
}

/* ---- gradients ---- */

extern "C" void cuda_dm2_grads_alloc(cuda_dm2_grads *g, const dm2_config *cfg) {
    size_t n = dm2_param_count(cfg), D = cfg->d_model, inner = dm2_d_inner(cfg), conv = dm2_conv_dim(cfg);
    float *m = (float *)cuda_malloc(n * sizeof(float));
    cuda_memset(m, 0, n * sizeof(float));
    g->memory = m;
    g->in_proj_w = m, m += (size_t)dm2_in_proj_dim(cfg) * D;
    g->conv_w = m, m += conv * DM2_CONV_K;
    g->conv_b = m, m += conv;
    g->D = m, m += cfg->n_heads;
    g->z_bias = m, m += inner;
    g->out_proj_w = cfg->has_out_proj ? m : NULL;
}

extern "C" void cuda_dm2_grads_free(cuda_dm2_grads *g) {
    cuda_free(g->memory);
    memset(g, 0, sizeof *g);
}
