/* The best rank-N factorisation of an attention head's bilinear form
 * Wqᵀ·Wk, for ra-graft --init svd (see hybrid.h).
 *
 * M = Wqᵀ·Wk is D×D but has rank ≤ hd, so it is never formed: with the thin
 * QR factorisations Wqᵀ = Qa·Ra and Wkᵀ = Qb·Rb (D×r and r×hd, r = min(D,
 * hd)), M = Qa·(Ra·Rbᵀ)·Qbᵀ, and the SVD of the r×r core Ra·Rbᵀ = Uk·S·Vkᵀ
 * gives M's SVD with U = Qa·Uk, V = Qb·Vk (Eckart–Young: its leading N
 * triplets are the best rank-N approximation in Frobenius norm).
 *
 * LAPACK (shipped inside OpenBLAS) in float64; the Fortran routines take
 * column-major arrays, and a row-major [hd, D] matrix is its own transpose
 * in column-major order, so Wq's buffer is Wqᵀ (D×hd, lda D) as it stands. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hybrid.h"

/* Fortran LAPACK entry points; the trailing size_t arguments are the hidden
 * lengths of character arguments (gfortran ABI). */
void dgeqrf_(const int *m, const int *n, double *a, const int *lda, double *tau, double *work, const int *lwork,
             int *info);
void dorgqr_(const int *m, const int *n, const int *k, double *a, const int *lda, const double *tau, double *work,
             const int *lwork, int *info);
void dgesvd_(const char *jobu, const char *jobvt, const int *m, const int *n, double *a, const int *lda, double *s,
             double *u, const int *ldu, double *vt, const int *ldvt, double *work, const int *lwork, int *info,
             size_t jobu_len, size_t jobvt_len);

/* Thin QR of the column-major D×hd matrix a (overwritten by Q, D×r); R
 * (r×hd, column-major, zero below the diagonal) into R. */
static int thin_qr(double *a, double *R, int D, int hd, ra_error *err) {
    int r = D < hd ? D : hd, info = 0, query = -1;
    double *tau = xmalloc(sizeof(double) * r), w1 = 0, w2 = 0;
    dgeqrf_(&D, &hd, a, &D, tau, &w1, &query, &info);
    if (!info) dorgqr_(&D, &r, &r, a, &D, tau, &w2, &query, &info);
    int lwork = (int)(w1 > w2 ? w1 : w2) + 1;
    double *work = xmalloc(sizeof(double) * lwork);
    if (!info) dgeqrf_(&D, &hd, a, &D, tau, work, &lwork, &info);
    if (!info) {
        for (int j = 0; j < hd; j++)
            for (int i = 0; i < r; i++) R[i + (size_t)j * r] = i <= j ? a[i + (size_t)j * D] : 0.0;
        dorgqr_(&D, &r, &r, a, &D, tau, work, &lwork, &info);
    }
    free(work);
    free(tau);
    return info ? ra_fail(err, EX_SOFTWARE, "LAPACK QR failed (info %d)", info) : 0;
}

int ra_lowrank_bilinear(float *C, float *B, double *sv, const float *Wq, const float *Wk, int hd, int D, int N,
                        ra_error *err) {
    int r = D < hd ? D : hd;
    if (N < 1 || N > r) return ra_fail(err, EX_USAGE, "rank %d: expected 1..%d", N, r);
    size_t Dh = (size_t)D * hd;
    double *qa = xmalloc(sizeof(double) * Dh), *qb = xmalloc(sizeof(double) * Dh);
    double *Ra = xmalloc(sizeof(double) * r * hd), *Rb = xmalloc(sizeof(double) * r * hd);
    for (size_t i = 0; i < Dh; i++) qa[i] = Wq[i], qb[i] = Wk[i];
    int rc = thin_qr(qa, Ra, D, hd, err);
    if (!rc) rc = thin_qr(qb, Rb, D, hd, err);
    double *K = xcalloc((size_t)r * r, sizeof(double)), *S = xmalloc(sizeof(double) * r);
    double *Uk = xmalloc(sizeof(double) * r * r), *VkT = xmalloc(sizeof(double) * r * r);
    if (!rc) {
        /* K = Ra·Rbᵀ, column-major r×r */
        for (int i = 0; i < r; i++)
            for (int j = 0; j < r; j++) {
                double acc = 0;
                for (int t = 0; t < hd; t++) acc += Ra[i + (size_t)t * r] * Rb[j + (size_t)t * r];
                K[i + (size_t)j * r] = acc;
            }
        int info = 0, lwork = -1;
        double wq;
        dgesvd_("A", "A", &r, &r, K, &r, S, Uk, &r, VkT, &r, &wq, &lwork, &info, 1, 1);
        lwork = (int)wq + 1;
        double *work = xmalloc(sizeof(double) * lwork);
        dgesvd_("A", "A", &r, &r, K, &r, S, Uk, &r, VkT, &r, work, &lwork, &info, 1, 1);
        free(work);
        if (info) rc = ra_fail(err, EX_SOFTWARE, "LAPACK SVD failed (info %d)", info);
    }
    if (!rc) {
        if (sv) memcpy(sv, S, sizeof(double) * r);
        /* row n of C = √s_n · (Qa·Uk)[:, n]ᵀ, of B = √s_n · (Qb·Vk)[:, n]ᵀ */
        for (int n = 0; n < N; n++) {
            double sq = sqrt(S[n]);
            for (int d = 0; d < D; d++) {
                double u = 0, v = 0;
                for (int i = 0; i < r; i++) {
                    u += qa[d + (size_t)i * D] * Uk[i + (size_t)n * r];
                    v += qb[d + (size_t)i * D] * VkT[n + (size_t)i * r];
                }
                C[(size_t)n * D + d] = (float)(sq * u);
                B[(size_t)n * D + d] = (float)(sq * v);
            }
        }
    }
    free(qa), free(qb), free(Ra), free(Rb), free(K), free(S), free(Uk), free(VkT);
    return rc;
}
