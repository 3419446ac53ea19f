/* CUDA backend of the DiscreteMamba2 mixer pieces (twins of lib/dm2.h):
 * the causal depthwise conv with document resets, a = −softplus(A_log), the
 * gate y ⊙ silu(z + z_bias) and the one-token decode step for a batch.  The
 * SSM core (chunked scan and mixing matrix) is in kernels/ssd_cuda.h.
 *
 * Types (all pointers DEVICE pointers): activations bf16 (uint16_t raw
 * bits), rows `ld` elements apart so the x / B / C / z / A_log column ranges
 * of the fused in_proj output can be used in place; the small per-channel
 * parameters (conv w [C,4], conv bias [C], D [Hs], z_bias [Hs·P]) fp32, and
 * their gradients fp32, ACCUMULATED (+=) like the CPU twins (callers zero
 * them once per optimiser step).  Every sum runs in a fixed order (per-block
 * partials in a workspace, then added up in block order; no atomics), so
 * the same inputs give the same bits on every run.  Activation gradients
 * (din, dA_log, dy, dz) are bf16 and overwritten.  Everything sums in fp32.
 * Decode states are fp32 in the CPU layout (dm2.h: ssm [B,Hs,P,N], conv
 * [B,conv_dim,4] oldest first), so a cache moves between backends with a copy.
 *
 * Compiled only when nvcc is found (RA_HAVE_CUDA=1). */
#ifndef RA_DM2_CUDA_H
#define RA_DM2_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "dm2.h"
#include "error.h"

/* out[b,t,c] = bias[c] + Σ_j w[c,j]·in[b,t−3+j,c], taps before the
 * document start (or t = 0) read 0.  bias may be NULL. */
void cuda_dm2_conv_forward(uint16_t *out, int ld_out, const uint16_t *in, int ld_in, const float *w, const float *bias,
                           const uint8_t *starts, int B, int T, int C);
/* Device bytes of the workspace of a conv or gate backward over `rows`
 * rows (B·T) and `cols` channels; enough for any smaller rows and cols. */
size_t cuda_dm2_sums_workspace_bytes(int64_t rows, int cols);

/* Overwrites din; accumulates dw [C,4] and dbias [C] (dbias may be NULL).
 * workspace: cuda_dm2_sums_workspace_bytes(B·T, C) device bytes for the
 * partial sums, or NULL to have the call allocate one (which synchronises). */
void cuda_dm2_conv_backward(uint16_t *din, int ld_din, float *dw, float *dbias, const uint16_t *dout, int ld_dout,
                            const uint16_t *in, int ld_in, const float *w, const uint8_t *starts, int B, int T, int C,
                            void *workspace);

/* a[r,h] = −softplus(A_log[r·ld + h]), a fp32 [rows, H]. */
void cuda_dm2_decay_forward(float *a, const uint16_t *A_log, int ld, int64_t rows, int H);
/* dA_log[r·ld_d + h] = da[r,h] · (−sigmoid(A_log[r·ld + h])). */
void cuda_dm2_decay_backward(uint16_t *dA_log, int ld_d, const float *da, const uint16_t *A_log, int ld, int64_t rows,
                             int H);

/* yg[r,i] = y[r,i] · silu(z[r·ld_z + i] + z_bias[i]); y, yg contiguous [rows, inner]. */
void cuda_dm2_gate_forward(uint16_t *yg, const uint16_t *y, const uint16_t *z, int ld_z, const float *z_bias,
                           int64_t rows, int inner);
/* Overwrites dy [rows, inner] and dz (rows ld_dz apart); accumulates dz_bias
 * (may be NULL).  workspace as for the conv: cuda_dm2_sums_workspace_bytes(rows,
 * inner) bytes or NULL. */
void cuda_dm2_gate_backward(uint16_t *dy, uint16_t *dz, int ld_dz, float *dz_bias, const uint16_t *dyg,
                            const uint16_t *y, const uint16_t *z, int ld_z, const float *z_bias, int64_t rows,
                            int inner, void *workspace);

/* ---- decode ---- */

/* Device parameters for decoding: the two projections bf16 (cuBLASLt), the
 * rest fp32.  out_proj_w NULL = routed layout (out = gated y). */
typedef struct cuda_dm2_params {
    uint16_t *in_proj_w;  /* [dm2_in_proj_ld, D]: rows past in_proj_dim are zero */
    float *conv_w;        /* [conv_dim, 4] */
    float *conv_b;        /* [conv_dim] */
    float *D;             /* [Hs] */
    float *z_bias;        /* [Hs·P] */
    uint16_t *out_proj_w; /* [D, Hs·P] or NULL */
} cuda_dm2_params;

/* Allocate device copies of the CPU parameters p (weights rounded to bf16);
 * free with cuda_dm2_params_free. */
void cuda_dm2_params_upload(cuda_dm2_params *out, const dm2_params *p, const dm2_config *cfg);
void cuda_dm2_params_free(cuda_dm2_params *p);

typedef struct cuda_dm2_cache {
    int B;
    dm2_config cfg;
    float *ssm;     /* [B,Hs,P,N] */
    float *conv;    /* [B,conv_dim,4], oldest input first */
    uint16_t *proj; /* step scratch [B,in_proj_dim] */
    uint16_t *yg;   /* step scratch [B,Hs·P] */
    float *xbc;     /* step scratch [B,conv_dim] */
} cuda_dm2_cache;

/* Zeroed states; NULL with *err filled on a bad config or B < 1. */
cuda_dm2_cache *cuda_dm2_cache_alloc(int B, const dm2_config *cfg, ra_error *err);
void cuda_dm2_cache_free(cuda_dm2_cache *c);
/* Zero the states of batch row b (all rows when b < 0). */
void cuda_dm2_cache_reset(cuda_dm2_cache *c, int b);

/* One token for every row: u [B,D] bf16 → out [B,dm2_out_dim] bf16.
 * reset (optional, device [B]): 1 = this token starts a new document. */
void cuda_dm2_step(uint16_t *out, cuda_dm2_cache *c, const cuda_dm2_params *p, const uint16_t *u,
                   const uint8_t *reset);

/* After a (chunked) forward over a prompt batch whose in_proj output was
 * proj [B·T rows, ld], the conv state: the last 4 pre-conv inputs of each
 * row's last document (0 before it).  The SSM state is the final_state of
 * cuda_ssd_chunked_forward. */
void cuda_dm2_conv_state_from_prompt(float *conv_state, const uint16_t *proj, int ld, const uint8_t *starts, int B,
                                     int T, int conv_dim);

/* ---- the whole mixer (twin of dm2_forward / dm2_backward / dm2_prefill) ----
 * in_proj and out_proj through cuBLAS(Lt) with bf16 operands; proj, the conv
 * outputs, y and yg stored bf16, a fp32; the SSD core of kernels/ssd_cuda.h. */

/* The in_proj width the GPU computes with: in_proj_dim rounded up to 8.
 * in_proj_dim is 257·Hs for head dim 64 and N 64 (G = Hs), odd whenever
 * Hs is (a layer with one kept head of 32), and cuBLAS runs a GEMM whose
 * contiguous dimension is not a multiple of 8 on its slow unaligned
 * (align1, sm75) kernels: 6x slower here.  So the device in_proj weight
 * has in_proj_ld rows (the extra ones zero), proj and dproj rows are
 * in_proj_ld apart, and in_proj's forward and input-gradient GEMMs run
 * over all in_proj_ld columns. */
static inline int dm2_in_proj_ld(const dm2_config *cfg) { return (dm2_in_proj_dim(cfg) + 7) / 8 * 8; }

/* Saved activations, backward workspace and the SSD workspace for a [B, T]
 * batch (device); NULL with *err filled on a bad config, B or T < 1, a head
 * shape the SSD kernels do not take, or too little GPU memory. */
typedef struct cuda_dm2_acts {
    int B, T;
    dm2_config cfg;
    uint16_t *proj, *x, *Bm, *Cm, *y, *yg;     /* bf16, shapes as dm2_acts; proj rows dm2_in_proj_ld apart */
    float *a;                                  /* [B,T,Hs] */
    uint16_t *dproj, *dx, *dBm, *dCm, *dy, *dyg;
    float *da, *dD;
    void *ws;      /* the larger of cuda_ssd_chunked_workspace_bytes and cuda_ssd_matrix_workspace_bytes (backward) */
    void *sums_ws; /* cuda_dm2_sums_workspace_bytes(B·T, max(d_inner, n_groups·d_state)) */
} cuda_dm2_acts;

cuda_dm2_acts *cuda_dm2_acts_alloc(int B, int T, const dm2_config *cfg, ra_error *err);
void cuda_dm2_acts_free(cuda_dm2_acts *s);

/* fp32 gradients of every parameter, in the layout of dm2_params (one
 * block, same order: download `memory` into a dm2_params block with one
 * copy of dm2_param_count floats).  Zeroed by cuda_dm2_grads_alloc. */
typedef struct cuda_dm2_grads {
    float *in_proj_w, *conv_w, *conv_b, *D, *z_bias, *out_proj_w;
    float *memory;
} cuda_dm2_grads;
void cuda_dm2_grads_alloc(cuda_dm2_grads *g, const dm2_config *cfg);
void cuda_dm2_grads_free(cuda_dm2_grads *g);

/* u [B,T,D] bf16 → out [B,T,dm2_out_dim] bf16; final_state (optional) fp32
 * [B,Hs,P,N]; starts (optional) device [B,T].  The config's has_out_proj
 * must match p->out_proj_w != NULL. */
void cuda_dm2_forward(uint16_t *out, float *final_state, cuda_dm2_acts *s, const cuda_dm2_params *p,
                      const uint16_t *u, const uint8_t *starts);
/* cuda_dm2_forward again on the same u after its SSD core's output s->y and
 * chunk states (s->ws) were kept: everything but the SSD core, for
 * selective recomputation before the backward. */
void cuda_dm2_forward_around_ssd(uint16_t *out, cuda_dm2_acts *s, const cuda_dm2_params *p, const uint16_t *u,
                                 const uint8_t *starts);
/* Given dout, accumulates into every gradient of g and into du (optional,
 * bf16 [B,T,D], +=).  u and starts must be those of the forward, which must
 * be the last cuda_dm2_forward on s (its chunk states are reused). */
void cuda_dm2_backward(cuda_dm2_grads *g, uint16_t *du, const uint16_t *dout, cuda_dm2_acts *s,
                       const cuda_dm2_params *p, const uint16_t *u, const uint8_t *starts);

/* Stage 1: the mixing matrix of every head, Tm fp32 [B,Hs,T,T], and its
 * backward (accumulates into g and du; only in_proj's B, C, A_log rows, the
 * B, C conv channels and D receive gradient). */
void cuda_dm2_matrix_forward(float *Tm, cuda_dm2_acts *s, const cuda_dm2_params *p, const uint16_t *u,
                             const uint8_t *starts);
void cuda_dm2_matrix_backward(cuda_dm2_grads *g, uint16_t *du, const float *dTm, cuda_dm2_acts *s,
                              const cuda_dm2_params *p, const uint16_t *u, const uint8_t *starts);

/* Forward over a prompt batch that also leaves in c the SSM and conv states
 * after its last token (c->B == s->B), as dm2_prefill. */
void cuda_dm2_prefill(uint16_t *out, cuda_dm2_acts *s, cuda_dm2_cache *c, const cuda_dm2_params *p, const uint16_t *u,
                      const uint8_t *starts);

#ifdef __cplusplus
}
#endif

#endif
