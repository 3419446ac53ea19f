/* DiscreteMamba2 pieces on the GPU: launches of kernels/dm2_kernels.cuh,
 * the decode cache and the one-token step (in_proj and out_proj through
 * cuda_linear_forward, the rest fused into two kernels). */
#include <stdlib.h>
#include <string.h>

#include "cuda_common.cuh"
#include "dm2_cuda.h"
#include "ops_cuda.h"

extern "C" {
#include "dtype.h"
}

#define SSD_LAUNCH(kernel, gx, gy, threads, smem, ...)                                                \
    do {                                                                                              \
        kernel<<<dim3((unsigned)(gx), (unsigned)(gy)), (threads), (smem), ra_cuda_stream>>>(__VA_ARGS__); \
        CUDA_CHECK_LAST();                                                                            \
    } while (0)

#include "ssd_kernels.cuh"
#include "dm2_kernels.cuh"

static unsigned blocks_for(int64_t n) { return ra_grid_for(n, 256); }

/* The widest V (vmax, vmax/2, ..., 1) every row of the given buffers allows
 * (conv and gate kernels).  The conv kernels take vmax 4: on the H200 at
 * B·T 8192 and 1984 channels 4 channels per thread beat 8 (conv backward
 * 0.092 vs 0.119 ms, forward 0.028 vs 0.043 ms: bench/results/dm2_mixer.md),
 * the 8-wide threads holding too many registers. */
static int vec_width(int C, int vmax, int ld_a, const void *a, int ld_b, const void *b, int ld_c, const void *c) {
    for (int V = vmax; V > 1; V /= 2)
        if (C % V == 0 && dm2k_vec(V, ld_a, a) && dm2k_vec(V, ld_b, b) && dm2k_vec(V, ld_c, c)) return V;
    return 1;
}

#define CONV_FWD(V)                                                                                                  \
    SSD_LAUNCH(dm2k_conv_fwd_kernel<V>, dm2k_conv_groups(C, V), dm2k_conv_fwd_blocks(BT), DM2K_THREADS, 0,         \
               (bf16 *)out, ld_out, (const bf16 *)in, ld_in, w, bias, starts, B, T, C)

extern "C" void cuda_dm2_conv_forward(uint16_t *out, int ld_out, const uint16_t *in, int ld_in, const float *w,
                                      const float *bias, const uint8_t *starts, int B, int T, int C) {
    const int64_t BT = (int64_t)B * T;
    if (BT <= 0 || C <= 0) return;
    switch (vec_width(C, 4, ld_out, out, ld_in, in, ld_in, in)) {
    case 4: CONV_FWD(4); break;
    default: CONV_FWD(1);
    }
}

extern "C" size_t cuda_dm2_sums_workspace_bytes(int64_t rows, int cols) {
    if (rows <= 0 || cols <= 0) return 0;
    return sizeof(float) * (size_t)dm2k_max_row_blocks(rows) * (DM2K_K + 1) * (size_t)cols;
}

/* out (+=) from the partials of a backward over `rows` rows. */
static void sum_parts(float *dw, float *dbias, const float *part, int64_t rows, int C, int taps) {
    const int ncols = (taps + 1) * C;
    SSD_LAUNCH(dm2k_sum_parts_kernel, (ncols + 31) / 32, 1, DM2K_THREADS, 0, dw, dbias, part, dm2k_row_blocks(rows), C,
               taps);
}

#define CONV_BWD(V)                                                                                                  \
    SSD_LAUNCH(dm2k_conv_bwd_kernel<V>, dm2k_conv_groups(C, V), dm2k_row_blocks(BT), DM2K_THREADS, 0, (bf16 *)din,   \
               ld_din, part, dm2k_rows_per_block(BT), (const bf16 *)dout, ld_dout, (const bf16 *)in, ld_in, w, starts, \
               B, T, C)

extern "C" void cuda_dm2_conv_backward(uint16_t *din, int ld_din, float *dw, float *dbias, const uint16_t *dout,
                                       int ld_dout, const uint16_t *in, int ld_in, const float *w,
                                       const uint8_t *starts, int B, int T, int C, void *workspace) {
    int64_t BT = (int64_t)B * T;
    if (BT <= 0 || C <= 0) return;
    float *part = (float *)(workspace ? workspace : cuda_malloc(cuda_dm2_sums_workspace_bytes(BT, C)));
    switch (vec_width(C, 4, ld_din, din, ld_dout, dout, ld_in, in)) {
    case 4: CONV_BWD(4); break;
    default: CONV_BWD(1);
    }
    sum_parts(dw, dbias, part, BT, C, DM2K_K);
    if (!workspace) cuda_free(part);
}

extern "C" void cuda_dm2_decay_forward(float *a, const uint16_t *A_log, int ld, int64_t rows, int H) {
    if (rows * H <= 0) return;
    SSD_LAUNCH(dm2k_decay_fwd_kernel, blocks_for(rows * H), 1, 256, 0, a, (const bf16 *)A_log, ld, rows, H);
}

extern "C" void cuda_dm2_decay_backward(uint16_t *dA_log, int ld_d, const float *da, const uint16_t *A_log, int ld,
                                        int64_t rows, int H) {
    if (rows * H <= 0) return;
    SSD_LAUNCH(dm2k_decay_bwd_kernel, blocks_for(rows * H), 1, 256, 0, (bf16 *)dA_log, ld_d, da, (const bf16 *)A_log,
               ld, rows, H);
}

extern "C" void cuda_dm2_gate_forward(uint16_t *yg, const uint16_t *y, const uint16_t *z, int ld_z, const float *z_bias,
                                      int64_t rows, int inner) {
    if (rows <= 0 || inner <= 0) return;
    const unsigned gy = (unsigned)(rows < 65535 ? rows : 65535);
    if (vec_width(inner, 8, inner, yg, inner, y, ld_z, z) == 8)
        SSD_LAUNCH(dm2k_gate_fwd_kernel<8>, (inner / 8 + 255) / 256, gy, 256, 0, (bf16 *)yg, (const bf16 *)y,
                   (const bf16 *)z, ld_z, z_bias, rows, inner);
    else
        SSD_LAUNCH(dm2k_gate_fwd_kernel<1>, (inner + 255) / 256, gy, 256, 0, (bf16 *)yg, (const bf16 *)y,
                   (const bf16 *)z, ld_z, z_bias, rows, inner);
}

extern "C" void cuda_dm2_gate_backward(uint16_t *dy, uint16_t *dz, int ld_dz, float *dz_bias, const uint16_t *dyg,
                                       const uint16_t *y, const uint16_t *z, int ld_z, const float *z_bias,
                                       int64_t rows, int inner, void *workspace) {
    if (rows * inner <= 0) return;
    float *part = NULL;
    if (dz_bias) part = (float *)(workspace ? workspace : cuda_malloc(cuda_dm2_sums_workspace_bytes(rows, inner)));
    SSD_LAUNCH(dm2k_gate_bwd_kernel, (inner + 31) / 32, dm2k_row_blocks(rows), DM2K_THREADS, 0, (bf16 *)dy,
               (bf16 *)dz, ld_dz, part, dm2k_rows_per_block(rows), (const bf16 *)dyg, (const bf16 *)y,
               (const bf16 *)z, ld_z, z_bias, rows, inner);
    if (dz_bias) sum_parts(NULL, dz_bias, part, rows, inner, 0);
    if (dz_bias && !workspace) cuda_free(part);
}

extern "C" void cuda_dm2_conv_state_from_prompt(float *conv_state, const uint16_t *proj, int ld,
                                                const uint8_t *starts, int B, int T, int conv_dim) {
    int64_t n = (int64_t)B * conv_dim * DM2K_K;
    if (n <= 0) return;
    SSD_LAUNCH(dm2k_conv_state_kernel, blocks_for(n), 1, 256, 0, conv_state, (const bf16 *)proj, ld, starts, B, T,
               conv_dim);
}

/* ---- parameters and cache ---- */

static uint16_t *upload_bf16(const float *h, size_t n) {
    uint16_t *d = (uint16_t *)cuda_malloc(n * sizeof(uint16_t));
    cuda_upload_bf16(d, h, n);
    return d;
}
static float *upload_f32(const float *h, size_t n) {
    float *d = (float *)cuda_malloc(n * sizeof(float));
    cuda_upload(d, h, n * sizeof(float));
    return d;
}

extern "C" void cuda_dm2_params_upload(cuda_dm2_params *out, const dm2_params *p, const dm2_config *cfg) {
    size_t D = cfg->d_model, inner = dm2_d_inner(cfg), conv = dm2_conv_dim(cfg);
    size_t rows = dm2_in_proj_dim(cfg), padded = dm2_in_proj_ld(cfg);
    out->in_proj_w = (uint16_t *)cuda_malloc(padded * D * sizeof(uint16_t));
    cuda_upload_bf16(out->in_proj_w, p->in_proj_w, rows * D);
    cuda_memset(out->in_proj_w + rows * D, 0, (padded - rows) * D * sizeof(uint16_t));
    out->conv_w = upload_f32(p->conv_w, conv * DM2_CONV_K);
    out->conv_b = upload_f32(p->conv_b, conv);
    out->D = upload_f32(p->D, cfg->n_heads);
    out->z_bias = upload_f32(p->z_bias, inner);
    out->out_proj_w = cfg->has_out_proj ? upload_bf16(p->out_proj_w, D * inner) : NULL;
}

extern "C" void cuda_dm2_params_free(cuda_dm2_params *p) {
    cuda_free(p->in_proj_w), cuda_free(p->conv_w), cuda_free(p->conv_b), cuda_free(p->D), cuda_free(p->z_bias);
    cuda_free(p->out_proj_w);
    memset(p, 0, sizeof *p);
}

static size_t ssm_floats(const dm2_config *c) { return (size_t)c->n_heads * c->head_dim * c->d_state; }
static size_t conv_floats(const dm2_config *c) { return (size_t)dm2_conv_dim(c) * DM2_CONV_K; }

extern "C" cuda_dm2_cache *cuda_dm2_cache_alloc(int B, const dm2_config *cfg, ra_error *err) {
    if (dm2_check_config(cfg, err)) return NULL;
    if (B < 1) {
        ra_fail(err, EX_DATAERR, "dm2 cache: batch must be >= 1, got %d", B);
        return NULL;
    }
    cuda_dm2_cache *c = (cuda_dm2_cache *)xcalloc(1, sizeof *c);
    c->B = B, c->cfg = *cfg;
    c->ssm = (float *)cuda_malloc(sizeof(float) * B * ssm_floats(cfg));
    c->conv = (float *)cuda_malloc(sizeof(float) * B * conv_floats(cfg));
    c->proj = (uint16_t *)cuda_malloc(sizeof(uint16_t) * B * (size_t)dm2_in_proj_dim(cfg));
    c->yg = (uint16_t *)cuda_malloc(sizeof(uint16_t) * B * (size_t)dm2_d_inner(cfg));
    c->xbc = (float *)cuda_malloc(sizeof(float) * B * (size_t)dm2_conv_dim(cfg));
    cuda_dm2_cache_reset(c, -1);
    return c;
}

extern "C" void cuda_dm2_cache_free(cuda_dm2_cache *c) {
    if (!c) return;
    cuda_free(c->ssm), cuda_free(c->conv), cuda_free(c->proj), cuda_free(c->yg), cuda_free(c->xbc);
    free(c);
}

extern "C" void cuda_dm2_cache_reset(cuda_dm2_cache *c, int b) {
    size_t s = ssm_floats(&c->cfg), k = conv_floats(&c->cfg);
    if (b < 0) {
        cuda_memset(c->ssm, 0, sizeof(float) * c->B * s);
        cuda_memset(c->conv, 0, sizeof(float) * c->B * k);
    } else {
        cuda_memset(c->ssm + (size_t)b * s, 0, sizeof(float) * s);
        cuda_memset(c->conv + (size_t)b * k, 0, sizeof(float) * k);
    }
}

extern "C" void cuda_dm2_step(uint16_t *out, cuda_dm2_cache *c, const cuda_dm2_params *p, const uint16_t *u,
                              const uint8_t *reset) {
    const dm2_config *cfg = &c->cfg;
    const int B = c->B, H = cfg->n_heads, P = cfg->head_dim, N = cfg->d_state, G = cfg->n_groups;
    const int in_dim = dm2_in_proj_dim(cfg), conv = dm2_conv_dim(cfg), inner = dm2_d_inner(cfg);
    cuda_linear_forward(c->proj, u, p->in_proj_w, NULL, B, cfg->d_model, in_dim);
    SSD_LAUNCH(dm2k_step_conv_kernel, blocks_for((int64_t)B * conv), 1, 256, 0, c->xbc, c->conv, (const bf16 *)c->proj,
               in_dim, p->conv_w, p->conv_b, reset, B, conv);
    SSD_LAUNCH(dm2k_step_ssm_kernel, B * H, 1, 128, 0, (bf16 *)c->yg, c->ssm, c->xbc, (const bf16 *)c->proj, in_dim,
               p->D, p->z_bias, reset, B, H, P, N, G);
    if (p->out_proj_w)
        cuda_linear_forward(out, c->yg, p->out_proj_w, NULL, B, inner, cfg->d_model);
    else
        cuda_copy(out, c->yg, sizeof(uint16_t) * B * (size_t)inner);
}
