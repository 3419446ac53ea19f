/* CUDA backend of the SSD core (the twins of lib/ssd.h): the chunked scan
 * for training and prefill, and the materialised mixing matrix for stage 1.
 *
 * Same math, layouts and argument order as the CPU twins (see lib/ssd.h),
 * with these types (all pointers are DEVICE pointers):
 *   x, y, dx  [B,T,H,P]  bf16 (uint16_t, raw bits)
 *   Bm, Cm, dBm, dCm [B,T,G,N] bf16
 *   a, da [B,T,H], D, dD [H], states [B,H,P,N], Tm, dTm [B,H,T,T]: fp32
 *   starts [B,T] u8 or NULL
 * Inside, every product accumulates in fp32 on the tensor cores (bf16
 * operands) and the chunk states are fp32; the masked C·Bᵀ block and the
 * states are rounded to bf16 only as operands of the next product.  Decays
 * are exp of differences of fp32 prefix sums of a within a chunk (the
 * matrix path: fp64 prefix sums over the whole sequence).  Measured against
 * the fp32 CPU twins on the same bf16 inputs: relative L2 ≈ 2e-3
 * (tests/gpu/test_gpu_ssd.c, tests/unit/test_ssd_sim.cpp).
 *
 * Limits: P ≤ 128 and N ≤ 128 (cuda_ssd_check_dims); chunk: a multiple of
 * 16 in [16, 128] is used as given, anything else means 128 (the result is
 * the same function either way).
 *
 * Workspace: a device buffer of cuda_ssd_*_workspace_bytes() bytes, or NULL
 * to have the call allocate and free one (which synchronises the device).
 * Gradients OVERWRITE their outputs, as on the CPU; dD and d_init_state may
 * be NULL.  Work is queued on the ops stream (kernels/ops_cuda.h).
 *
 * Compiled only when nvcc is found (RA_HAVE_CUDA=1). */
#ifndef RA_SSD_CUDA_H
#define RA_SSD_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "error.h"
#include "ssd.h"

/* ssd_check_dims plus the kernels' limits (P, N ≤ 128). */
int cuda_ssd_check_dims(const ssd_dims *d, ra_error *err);

/* ---- chunked SSD ---- */

size_t cuda_ssd_chunked_workspace_bytes(const ssd_dims *d, int chunk, int backward);

/* y (required), final_state (optional, fp32 [B,H,P,N]), init_state
 * (optional, NULL = zeros). */
void cuda_ssd_chunked_forward(uint16_t *y, float *final_state, const uint16_t *x, const uint16_t *Bm,
                              const uint16_t *Cm, const float *a, const float *D, const uint8_t *starts,
                              const float *init_state, const ssd_dims *d, int chunk, void *workspace);
/* dx, dBm, dCm, da required; dD, d_init_state optional.  Recomputes the
 * chunk states (the forward saves nothing). */
void cuda_ssd_chunked_backward(uint16_t *dx, uint16_t *dBm, uint16_t *dCm, float *da, float *dD, float *d_init_state,
                               const uint16_t *dy, const uint16_t *x, const uint16_t *Bm, const uint16_t *Cm,
                               const float *a, const float *D, const uint8_t *starts, const float *init_state,
                               const ssd_dims *d, int chunk, void *workspace);

/* The same, skipping the recomputation of the chunk states: workspace (not
 * NULL, sized for the backward) must be the one the last
 * cuda_ssd_chunked_forward (or backward) ran with on these same x, Bm, a,
 * starts, init_state and dims, untouched since.  Saves two of the five
 * kernels of a training step's backward. */
void cuda_ssd_chunked_backward_after_forward(uint16_t *dx, uint16_t *dBm, uint16_t *dCm, float *da, float *dD,
                                             float *d_init_state, const uint16_t *dy, const uint16_t *x,
                                             const uint16_t *Bm, const uint16_t *Cm, const float *a, const float *D,
                                             const uint8_t *starts, const float *init_state, const ssd_dims *d,
                                             int chunk, void *workspace);

/* ---- materialised mixing matrix (stage 1) ---- */

size_t cuda_ssd_matrix_workspace_bytes(const ssd_dims *d, int backward);
/* Tm [B,H,T,T] fp32, every entry written (0 above the diagonal); D may be NULL. */
void cuda_ssd_matrix_forward(float *Tm, const uint16_t *Bm, const uint16_t *Cm, const float *a, const float *D,
                             const uint8_t *starts, const ssd_dims *d, void *workspace);
/* Given dTm (entries above the diagonal ignored): dBm, dCm, da required, dD optional. */
void cuda_ssd_matrix_backward(uint16_t *dBm, uint16_t *dCm, float *da, float *dD, const float *dTm,
                              const uint16_t *Bm, const uint16_t *Cm, const float *a, const uint8_t *starts,
                              const ssd_dims *d, void *workspace);

#ifdef __cplusplus
}
#endif

#endif
