/* The SSM core of DiscreteMamba2 (DESIGN §2.4) on already-projected inputs,
 * CPU backend, fp32: three implementations of one map that must agree.
 *
 *   recurrence (reference, and decode):   ssd_recurrent_forward/backward
 *   chunked SSD (training and prefill):   ssd_chunked_forward/backward
 *   materialised mixing matrix (stage 1): ssd_matrix_forward/backward/apply
 *
 * Per batch row b and SSM head h, with group g = h / (H/G) (heads are split
 * into G contiguous groups sharing B and C, as in Mamba-2):
 *
 *   S_t = exp(a_t) · S_{t−1} + x_t ⊗ B_t        state P×N, S_{−1} = init or 0
 *   y_t = S_t · C_t + D_h · x_t
 *
 * and where starts[b,t] = 1 (a document begins at t) the state is reset to 0
 * before token t, so nothing crosses a document boundary.  Unrolled, y = T x
 * per head and channel with
 *
 *   T[l,s] = (C_l·B_s) · exp(Σ_{k=s+1..l} a_k) + D_h·[l = s]   for s ≤ l,
 *
 * and T[l,s] = 0 when s > l or a document starts in (s, l].
 *
 * Layouts (row-major, fp32):
 *   x, y   [B, T, H, P]      Bm, Cm [B, T, G, N]     a [B, T, H]
 *   D      [H]               starts [B, T] u8, or NULL (no resets)
 *   state  [B, H, P, N]      (init_state, final_state)
 *   Tm     [B, H, T, T]      (the mixing matrix; entries above the diagonal 0)
 *
 * a is the log decay, a = −softplus(A_log) ≤ 0 (ssd_decay_forward).  The
 * chunked and matrix paths never take exp of a positive number: decays are
 * exp(cum_l − cum_s) of double-precision cumulative sums of a within a chunk
 * (the "segsum"), and l ≥ s so the exponent is ≤ 0.
 *
 * Gradient convention: the backward functions here OVERWRITE their outputs
 * (dx, dBm, dCm, da, dD, d_init_state; any of them may be NULL except that dx,
 * dBm, dCm, da are required).  Parallelism: OpenMP over (b, h) in the forward
 * passes and over (b, g) in the backward passes (heads of a group share dB and
 * dC, so one thread owns a group). */
#ifndef RA_SSD_H
#define RA_SSD_H

#include <stdint.h>

#include "error.h"

#define SSD_DEFAULT_CHUNK 128

typedef struct ssd_dims {
    int B; /* batch rows */
    int T; /* time steps */
    int H; /* SSM heads (Hs) */
    int P; /* head dim */
    int G; /* B/C groups, H % G == 0 */
    int N; /* state size */
} ssd_dims;

/* 0, or EX_DATAERR naming the bad dimension (all ≥ 1, H divisible by G). */
int ssd_check_dims(const ssd_dims *d, ra_error *err);

/* a = −softplus(A_log), computed without overflow for any finite A_log. */
void ssd_decay_forward(float *a, const float *A_log, int64_t n);
/* dA_log = da · (−sigmoid(A_log)) (overwrites). */
void ssd_decay_backward(float *dA_log, const float *da, const float *A_log, int64_t n);

/* ---- recurrence: the reference, O(T·P·N) per head, sequential in t ---- */

/* y (required); final_state (optional) receives S_{T−1}; init_state
 * (optional, NULL = zeros) is S_{−1}. */
void ssd_recurrent_forward(float *y, float *final_state, const float *x, const float *Bm, const float *Cm,
                           const float *a, const float *D, const uint8_t *starts, const float *init_state,
                           const ssd_dims *d);
/* Gradients of a loss given dy.  Keeps every state of one head in memory
 * (T·P·N floats per thread): it is a reference, not the training path. */
void ssd_recurrent_backward(float *dx, float *dBm, float *dCm, float *da, float *dD, float *d_init_state,
                            const float *dy, const float *x, const float *Bm, const float *Cm, const float *a,
                            const float *D, const uint8_t *starts, const float *init_state, const ssd_dims *d);

/* ---- chunked SSD: intra-chunk masked matrix, chunk end states, inter-chunk
 * state recurrence, off-diagonal (state → output) term ---- */

/* Same contract as ssd_recurrent_forward; chunk ≥ 1 (SSD_DEFAULT_CHUNK). */
void ssd_chunked_forward(float *y, float *final_state, const float *x, const float *Bm, const float *Cm,
                         const float *a, const float *D, const uint8_t *starts, const float *init_state,
                         const ssd_dims *d, int chunk);
/* Same contract as ssd_recurrent_backward.  Recomputes the chunk entry states
 * (ceil(T/chunk)·P·N floats per thread), so the forward saves nothing. */
void ssd_chunked_backward(float *dx, float *dBm, float *dCm, float *da, float *dD, float *d_init_state,
                          const float *dy, const float *x, const float *Bm, const float *Cm, const float *a,
                          const float *D, const uint8_t *starts, const float *init_state, const ssd_dims *d,
                          int chunk);

/* ---- materialised mixing matrix T (stage 1) ---- */

/* Tm [B,H,T,T] as above (D may be NULL: no diagonal term). */
void ssd_matrix_forward(float *Tm, const float *Bm, const float *Cm, const float *a, const float *D,
                        const uint8_t *starts, const ssd_dims *d);
/* Gradients given dTm [B,H,T,T] (entries above the diagonal are ignored);
 * overwrites dBm, dCm, da (required) and dD (optional). */
void ssd_matrix_backward(float *dBm, float *dCm, float *da, float *dD, const float *dTm, const float *Bm,
                         const float *Cm, const float *a, const uint8_t *starts, const ssd_dims *d);
/* y[b,l,h,:] = Σ_s Tm[b,h,l,s] · x[b,s,h,:]. */
void ssd_matrix_apply(float *y, const float *Tm, const float *x, const ssd_dims *d);

#endif
