/* The materialised SSD mixing matrix, for MOHAWK stage 1 (matrix
 * orientation, DESIGN §2.5):
 *   T[l,s] = (C_l·B_s) · exp(Σ_{k=s+1..l} a_k) + D·[l = s]   for s ≤ l
 * per (b, h), 0 above the diagonal and across a document start.  It is the
 * chunked algorithm with one chunk spanning the whole sequence and the
 * product with X left to ssd_matrix_apply.
 *
 * Backward, with G = C Bᵀ and L the decay mask (T = G ∘ L + D I):
 *   dD = tr(dT),  dG = dT ∘ L → dC = dG B, dB = dGᵀ C,
 *   dseg = dT ∘ G ∘ L → da by the segment-sum backward. */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "ssd.h"
#include "ssd_internal.h"

void ssd_matrix_forward(float *Tm, const float *Bm, const float *Cm, const float *a, const float *D,
                        const uint8_t *starts, const ssd_dims *d) {
    const int T = d->T, N = d->N, ldbc = d->G * d->N, hpg = d->H / d->G;
    int blas_threads = ssd_blas_serial_begin();
#pragma omp parallel
    {
        double *cum = xmalloc(sizeof(double) * T);
        int *first = xmalloc(sizeof(int) * T);
        float *L = xmalloc(sizeof(float) * (size_t)T * T);
#pragma omp for schedule(dynamic)
        for (int bh = 0; bh < d->B * d->H; bh++) {
            int b = bh / d->H, h = bh % d->H, g = h / hpg;
            const float *B0 = Bm + (int64_t)b * T * ldbc + (int64_t)g * N;
            const float *C0 = Cm + (int64_t)b * T * ldbc + (int64_t)g * N;
            float *Th = Tm + (int64_t)bh * T * T;
            ssd_segsum(cum, first, a + (int64_t)b * T * d->H + h, d->H, starts ? starts + (int64_t)b * T : NULL, T);
            ssd_decay_matrix(L, T, cum, first, T);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, N, 1.0f, C0, ldbc, B0, ldbc, 0.0f, Th, T);
            for (int64_t i = 0; i < (int64_t)T * T; i++) Th[i] *= L[i];
            if (D)
                for (int l = 0; l < T; l++) Th[(int64_t)l * T + l] += D[h];
        }
        free(cum);
        free(first);
        free(L);
    }
    ssd_blas_serial_end(blas_threads);
}

void ssd_matrix_backward(float *dBm, float *dCm, float *da, float *dD, const float *dTm, const float *Bm,
                         const float *Cm, const float *a, const uint8_t *starts, const ssd_dims *d) {
    const int T = d->T, N = d->N, ldbc = d->G * d->N, hpg = d->H / d->G;
    double *dD_part = xcalloc((size_t)d->B * d->H, sizeof(double));
    int blas_threads = ssd_blas_serial_begin();
#pragma omp parallel
    {
        double *cum = xmalloc(sizeof(double) * T), *work = xmalloc(sizeof(double) * T);
        int *first = xmalloc(sizeof(int) * T);
        float *L = xmalloc(sizeof(float) * (size_t)T * T);
        float *G = xmalloc(sizeof(float) * (size_t)T * T);
        float *dG = xmalloc(sizeof(float) * (size_t)T * T);
#pragma omp for schedule(dynamic)
        for (int bg = 0; bg < d->B * d->G; bg++) {
            int b = bg / d->G, g = bg % d->G;
            const float *B0 = Bm + (int64_t)b * T * ldbc + (int64_t)g * N;
            const float *C0 = Cm + (int64_t)b * T * ldbc + (int64_t)g * N;
            float *dB0 = dBm + (int64_t)b * T * ldbc + (int64_t)g * N;
            float *dC0 = dCm + (int64_t)b * T * ldbc + (int64_t)g * N;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, N, 1.0f, C0, ldbc, B0, ldbc, 0.0f, G, T);
            for (int t = 0; t < T; t++) {
                memset(dB0 + (int64_t)t * ldbc, 0, sizeof(float) * N);
                memset(dC0 + (int64_t)t * ldbc, 0, sizeof(float) * N);
            }
            for (int h = g * hpg; h < (g + 1) * hpg; h++) {
                int64_t bh = (int64_t)b * d->H + h;
                const float *dT = dTm + bh * T * T;
                ssd_segsum(cum, first, a + (int64_t)b * T * d->H + h, d->H, starts ? starts + (int64_t)b * T : NULL,
                           T);
                ssd_decay_matrix(L, T, cum, first, T);
                double tr = 0;
                for (int l = 0; l < T; l++) {
                    tr += dT[(int64_t)l * T + l];
                    for (int s = 0; s < T; s++) {
                        int64_t i = (int64_t)l * T + s;
                        float g_l = s <= l ? dT[i] * L[i] : 0.0f; /* L is 0 above the diagonal */
                        dG[i] = g_l;
                        L[i] = g_l * G[i]; /* L now holds dseg */
                    }
                }
                dD_part[bh] = tr;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, N, T, 1.0f, dG, T, B0, ldbc, 1.0f, dC0,
                            ldbc);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, N, T, 1.0f, dG, T, C0, ldbc, 1.0f, dB0,
                            ldbc);
                ssd_segsum_backward(da + (int64_t)b * T * d->H + h, d->H, L, T, NULL, T, work);
            }
        }
        free(cum), free(work), free(first), free(L), free(G), free(dG);
    }
    ssd_blas_serial_end(blas_threads);
    if (dD)
        for (int h = 0; h < d->H; h++) {
            double s = 0;
            for (int b = 0; b < d->B; b++) s += dD_part[(int64_t)b * d->H + h];
            dD[h] = (float)s;
        }
    free(dD_part);
}

void ssd_matrix_apply(float *y, const float *Tm, const float *x, const ssd_dims *d) {
    const int T = d->T, P = d->P, ldx = d->H * d->P;
    int blas_threads = ssd_blas_serial_begin();
#pragma omp parallel for schedule(dynamic)
    for (int bh = 0; bh < d->B * d->H; bh++) {
        int b = bh / d->H, h = bh % d->H;
        const float *x0 = x + (int64_t)b * T * ldx + (int64_t)h * P;
        float *y0 = y + (int64_t)b * T * ldx + (int64_t)h * P;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, P, T, 1.0f, Tm + (int64_t)bh * T * T, T, x0, ldx,
                    0.0f, y0, ldx);
    }
    ssd_blas_serial_end(blas_threads);
}
