/* Pieces shared by the chunked and matrix SSD paths (not a public API).
 *
 * A "span" is Q consecutive tokens of one (b, h): a chunk, or the whole
 * sequence for the matrix path.  Its log decays a_i sit at a stride (H in
 * the [B,T,H] layout) and its document starts (optional) are contiguous. */
#ifndef RA_SSD_INTERNAL_H
#define RA_SSD_INTERNAL_H

#include <stdint.h>

/* cum[i] = Σ_{k=0..i} a_k in double; first[i] = index of the last document
 * start at or before i within the span, −1 if none. */
void ssd_segsum(double *cum, int *first, const float *a, int a_stride, const uint8_t *starts, int Q);

/* L[l,s] = exp(cum_l − cum_s) for first[l] ≤ s ≤ l, else 0; row stride ld.
 * cum_l − cum_s = Σ_{k=s+1..l} a_k ≤ 0, taken as a difference of double
 * sums, so it is exact to ~1e-16·|cum| and exp never overflows. */
void ssd_decay_matrix(float *L, int ld, const double *cum, const int *first, int Q);

/* dec_in[l] = exp(cum_l) when no document starts in [0, l] of the span, else
 * 0: how much of the state entering the span survives to token l. */
void ssd_decay_in(float *dec_in, const double *cum, const int *first, int Q);

/* Backward of the decays: given dseg[l,s] = ∂loss/∂(Σ_{k=s+1..l} a_k) for
 * s ≤ l (row stride ld, entries outside the live mask must be 0) and
 * dseg_in[l] (optional) for the sums Σ_{k=0..l} a_k, writes
 * da[i·da_stride] = Σ_{l ≥ i} (dseg_in[l] + Σ_{s < i} dseg[l,s]). */
void ssd_segsum_backward(float *da, int da_stride, const float *dseg, int ld, const float *dseg_in, int Q,
                         double *work /* Q */);

/* OpenBLAS's own worker threads fight with ours when sgemm is called from
 * inside an OpenMP loop (measured 25x slower on 2 cores), so the SSD loops
 * run BLAS single-threaded and restore the caller's setting afterwards. */
int ssd_blas_serial_begin(void); /* returns the previous thread count */
void ssd_blas_serial_end(int previous);

#endif
