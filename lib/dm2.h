/* DiscreteMamba2 mixer (DESIGN §2.4), CPU backend, fp32.
 *
 *   proj   = u · in_projᵀ                      u [B,T,D] → [B,T,in_proj_dim]
 *            columns [ x (Hs·P) | B (G·N) | C (G·N) | z (Hs·P) | A_log (Hs) ]
 *   x,B,C  = causal depthwise conv (kernel 4, bias, identity activation) of
 *            the first Hs·P + 2·G·N columns; taps never reach before the
 *            current document's first token
 *   a      = −softplus(A_log)                  per head per token
 *   y      = SSD(x, B, C, a) + D·x             (lib/ssd.h; state reset at document starts)
 *   yg     = y ⊙ silu(z + z_bias)
 *   out    = yg · out_projᵀ                    [B,T,D]; or, in the routed layout
 *                                              (no out_proj), out = yg [B,T,Hs·P]
 *                                              for the shared o_proj
 *
 * Channel layout inside x / B / C / z is head-major: x channel h·P + p is
 * (head h, dim p); B/C channel g·N + n is (group g, state n).  Head h uses
 * group h / (Hs/G).  This is the layout of goombalab/phi-mamba's
 * DiscreteMamba2 ("b l (h n)"), whose state_dict names the parameters
 * in_proj.weight [in_proj_dim, D], conv1d.weight [conv_dim, 1, 4],
 * conv1d.bias [conv_dim], D [Hs], z_bias [Hs·P], out_proj.weight [D, Hs·P];
 * the fields of dm2_params below hold exactly those arrays.
 *
 * Conv tap j (0..3) multiplies the input 3 − j tokens back: out_t =
 * bias + Σ_j w[c,j]·in_{t−3+j} (PyTorch Conv1d with padding 3, first T
 * outputs), so "identity" is w[c,3] = 1.
 *
 * Decode state (dm2_cache): the fp32 SSM state [B,Hs,P,N] and the conv
 * state [B,conv_dim,4] = the last 4 pre-conv inputs of each channel, oldest
 * first (Mamba's conv_state layout).  A step shifts it left by one, appends
 * the new input and convolves all 4, so after the shift only the 3 newest
 * stored values matter; the 4th is kept for layout compatibility.  Inputs
 * from before the current document are stored as 0.
 *
 * Conventions: forward/backward over preallocated dm2_acts (dm2_alloc_state);
 * the backward ACCUMULATES (+=) into the parameter gradients and into du,
 * llm.c style, so callers zero them once per optimiser step. */
#ifndef RA_DM2_H
#define RA_DM2_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "rng.h"
#include "ssd.h"

#define DM2_CONV_K 4
/* silu(1.278464542761) = 1 to 12 digits: the gate starts fully open. */
#define DM2_Z_BIAS_INIT 1.278464542761

typedef struct dm2_config {
    int d_model;      /* D */
    int n_heads;      /* Hs, SSM heads */
    int head_dim;     /* P */
    int d_state;      /* N */
    int n_groups;     /* G, B/C groups; Hs % G == 0 (G = Hs by default) */
    int chunk;        /* SSD chunk length; 0 = SSD_DEFAULT_CHUNK */
    int has_out_proj; /* 0: routed layout, out = gated y */
} dm2_config;

/* 0, or EX_DATAERR naming the bad field. */
int dm2_check_config(const dm2_config *cfg, ra_error *err);
int dm2_d_inner(const dm2_config *cfg);     /* Hs·P */
int dm2_conv_dim(const dm2_config *cfg);    /* Hs·P + 2·G·N */
int dm2_in_proj_dim(const dm2_config *cfg); /* 2·Hs·P + 2·G·N + Hs */
int dm2_out_dim(const dm2_config *cfg);     /* D, or Hs·P without out_proj */
ssd_dims dm2_ssd_dims(const dm2_config *cfg, int B, int T);

/* Parameters, or their gradients (same shapes). */
typedef struct dm2_params {
    float *in_proj_w;  /* [in_proj_dim, D] */
    float *conv_w;     /* [conv_dim, 4] */
    float *conv_b;     /* [conv_dim] */
    float *D;          /* [Hs] */
    float *z_bias;     /* [Hs·P] */
    float *out_proj_w; /* [D, Hs·P], NULL in the routed layout */
    float *memory;     /* the one block the arrays live in (dm2_params_alloc) */
} dm2_params;

size_t dm2_param_count(const dm2_config *cfg);
/* All arrays in one zeroed block; free with dm2_params_free. */
void dm2_params_alloc(dm2_params *p, const dm2_config *cfg);
void dm2_params_free(dm2_params *p);
void dm2_params_zero(dm2_params *p, const dm2_config *cfg);

/* --init mohawk (DESIGN §2.4): in_proj ~ U(±1/√D) with the z rows 0; conv
 * identity (w[c,3] = 1, other taps 0, bias 0); z_bias = DM2_Z_BIAS_INIT;
 * D = 1; out_proj ~ U(±1/√(Hs·P)) (PyTorch's nn.Linear default) scaled by
 * 1/√(2·n_layers). */
void dm2_init_mohawk(dm2_params *p, const dm2_config *cfg, int n_layers, ra_rng *rng);

/* Saved activations and backward workspace for a [B, T] batch. */
typedef struct dm2_acts {
    int B, T;
    dm2_config cfg;
    float *proj;          /* [B,T,in_proj_dim]  in_proj output (pre-conv x|B|C, z, A_log) */
    float *x, *Bm, *Cm;   /* [B,T,Hs·P], [B,T,G·N] ×2: conv outputs */
    float *a;             /* [B,T,Hs]   −softplus(A_log) */
    float *y;             /* [B,T,Hs·P] SSD output incl. D·x, before the gate */
    float *yg;            /* [B,T,Hs·P] gated */
    float *dproj;         /* backward workspace, same shapes as above */
    float *dx, *dBm, *dCm, *da, *dy, *dyg;
} dm2_acts;

/* NULL with *err filled when cfg is invalid or B, T < 1. */
dm2_acts *dm2_alloc_state(int B, int T, const dm2_config *cfg, ra_error *err);
void dm2_free_state(dm2_acts *s);

/* out [B,T,dm2_out_dim] (required); final_state [B,Hs,P,N] optional;
 * starts [B,T] optional (1 = a document begins at this token). */
void dm2_forward(float *out, float *final_state, dm2_acts *s, const dm2_params *p, const float *u,
                 const uint8_t *starts);
/* Given dout [B,T,dm2_out_dim], accumulates into g (every parameter) and du
 * [B,T,D] (optional).  u and starts must be those of the forward. */
void dm2_backward(dm2_params *g, float *du, const float *dout, dm2_acts *s, const dm2_params *p, const float *u,
                  const uint8_t *starts);

/* Stage 1 (DESIGN §2.5, matrix orientation): the mixing matrix of every SSM
 * head for input u, Tm [B,Hs,T,T] with T[l,s] = (C_l·B_s)·exp(Σ_{k=s+1..l} a_k)
 * (s ≤ l, same document) + D on the diagonal, so that y = T x per head, x
 * being the conv output.  Saves in s what dm2_matrix_backward needs (s->x
 * is not computed). */
void dm2_matrix_forward(float *Tm, dm2_acts *s, const dm2_params *p, const float *u, const uint8_t *starts);
/* Given dTm (entries above the diagonal ignored), accumulates into g and du
 * (optional).  T depends only on the B, C and A_log rows of in_proj, the B
 * and C conv channels and D: the other parameters get no contribution. */
void dm2_matrix_backward(dm2_params *g, float *du, const float *dTm, dm2_acts *s, const dm2_params *p,
                         const float *u, const uint8_t *starts);

/* Depthwise causal conv over C channels of rows with strides (elements
 * between consecutive tokens): w [C,4], bias [C].  Backward overwrites din and
 * accumulates dw, dbias. */
void dm2_conv_forward(float *out, int ld_out, const float *in, int ld_in, const float *w, const float *bias,
                      const uint8_t *starts, int B, int T, int C);
void dm2_conv_backward(float *din, int ld_din, float *dw, float *dbias, const float *dout, int ld_dout,
                       const float *in, int ld_in, const float *w, const uint8_t *starts, int B, int T, int C);

/* ---- decode ---- */

typedef struct dm2_cache {
    int B;
    dm2_config cfg;
    float *ssm;  /* [B,Hs,P,N] */
    float *conv; /* [B,conv_dim,4], oldest input first */
    float *work; /* step scratch */
} dm2_cache;

dm2_cache *dm2_cache_alloc(int B, const dm2_config *cfg, ra_error *err);
void dm2_cache_free(dm2_cache *c);
/* Zero the states of batch row b (all rows when b < 0). */
void dm2_cache_reset(dm2_cache *c, int b);

/* Forward over a prompt batch (chunked SSD) that also leaves in c the SSM and
 * conv states after its last token.  c->B must equal s->B.  Rows of
 * different lengths can be left-padded with a document start at each row's
 * first real token: the reset cuts the padding out of both states. */
void dm2_prefill(float *out, dm2_acts *s, dm2_cache *c, const dm2_params *p, const float *u, const uint8_t *starts);
/* One token for every row: u [B,D] → out [B,dm2_out_dim].  reset [B]
 * (optional): 1 = this token starts a new document (states zeroed first). */
void dm2_step(float *out, dm2_cache *c, const dm2_params *p, const float *u, const uint8_t *reset);

#endif
