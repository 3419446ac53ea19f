/* The training losses of the three MOHAWK stages (DESIGN §2.5) and the
 * evaluation divergences, forward and backward, CPU, fp32 data with double
 * accumulation.
 *
 * Every backward takes dloss, the gradient of the final objective with
 * respect to this loss's value (1 for a plain step, 1/k when k micro-batches
 * are accumulated, a layer weight ...), and OVERWRITES its input gradient.
 *
 * Stage 1, matrix orientation:
 *     L = mean over the BH matrices of ‖Ts − A‖_F      (Frobenius, not squared)
 * Ts, A [BH, T, T] (student mixing matrices, teacher attention matrices),
 * over the causal part only (entries s ≤ l; entries above the diagonal are
 * ignored and get gradient 0).  A matrix with Ts = A gets gradient 0 (the
 * subgradient of the norm at 0).
 *
 * Stage 2, hidden-state alignment:
 *     L = mean over the n tokens of ‖out_i − target_i‖₂  (per-token L2, not squared)
 * A token with out_i = target_i gets gradient 0.
 *
 * Stage 3, end-to-end distillation (soft targets, exactly as DESIGN says):
 *     L = mean over the n positions of CE(softmax(zs/T), softmax(zt))
 *       = mean_i [ lse(zs_i/T) − Σ_v softmax(zt_i)_v · zs_iv/T ]
 * zs student logits, zt teacher logits [n, V]; only the student is divided
 * by the temperature T (no T² factor).  ∂L/∂zs = (softmax(zs/T) − softmax(zt))/(n·T).
 *
 * Hard labels (--loss ce): L = mean over rows whose label ≠ ignore_index of
 * lse(z_i) − z_i[label_i]; ignored rows get gradient 0, and a batch with no
 * counted row has L = 0.
 *
 * Evaluation: KL(p_teacher ‖ p_student) per position, T = 1.
 *
 * Vocabulary chunking: every softmax over V is computed in one pass over
 * the row in chunks of `chunk` logits with an online log-sum-exp (running
 * maximum and rescaled sums), so nothing of size [n, V] is allocated
 * besides the caller's inputs and gradient; the per-row log-sum-exps are
 * saved for the backward.  chunk ≤ 0 selects LOSS_DEFAULT_CHUNK; any chunk
 * works, including ones that do not divide V.  Implemented in lib/loss.c. */
#ifndef RA_LOSS_H
#define RA_LOSS_H

#include <stdint.h>

#include "error.h"

/* The label of a position no CE loss counts (PyTorch's ignore_index): the
 * last position of a document, as lib/train_data.h and ra_next_token_labels
 * label them.  Pass it as ignore_index. */
#define RA_LABEL_IGNORE (-100)

#define LOSS_DEFAULT_CHUNK 4096

/* ------------------------------------------------------------ stage 1 */
double loss_matrix_forward(const float *Ts, const float *A, int BH, int T);
void loss_matrix_backward(float *dTs, const float *Ts, const float *A, int BH, int T, float dloss);

/* ------------------------------------------------------------ stage 2 */
double loss_l2_forward(const float *out, const float *target, int n, int D);
void loss_l2_backward(float *dout, const float *out, const float *target, int n, int D, float dloss);

/* ------------------------------------------------------------ stage 3 */
/* Returns L; lse_s [n] receives lse(zs/T), lse_t [n] lse(zt). */
double loss_soft_ce_forward(float *lse_s, float *lse_t, const float *zs, const float *zt, int n, int V, float T,
                            int chunk);
/* dzs [n, V]; may be the same memory as zs (computed elementwise in place). */
void loss_soft_ce_backward(float *dzs, const float *zs, const float *zt, const float *lse_s, const float *lse_t, int n,
                           int V, float T, float dloss);

/* ------------------------------------------------------- hard labels */
/* *loss = L; lse [n] receives lse(z_i) (rows with ignored labels too); nll
 * (optional) [n] the per-row negative log-likelihood (0 where ignored);
 * *counted (optional) the number of rows counted.  A label outside 0..V−1
 * that is not ignore_index: EX_DATAERR naming the row. */
int loss_ce_forward(double *loss, float *lse, float *nll, int *counted, const float *z, const int32_t *labels, int n,
                    int V, int ignore_index, int chunk, ra_error *err);
/* dz [n, V] (may be the same memory as z). */
void loss_ce_backward(float *dz, const float *z, const int32_t *labels, const float *lse, int n, int V,
                      int ignore_index, float dloss);

/* ------------------------------------------------------- evaluation */
/* Returns the mean over positions of KL(softmax(zt_i) ‖ softmax(zs_i)); kl
 * (optional) [n] receives each position's value (in nats). */
double loss_kl(float *kl, const float *zs, const float *zt, int n, int V, int chunk);

#endif
