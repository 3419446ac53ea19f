/* Chunked SSD (Mamba-2's state-space duality) on the CPU: the training and
 * prefill path.  For one (b, h) the sequence is cut into chunks of Q tokens;
 * with S0 the state entering a chunk, X, B, C its rows and
 *   L[l,s] = exp(Σ_{k=s+1..l} a_k)   (0 across a document start, s ≤ l)
 *   dec[l] = exp(Σ_{k=0..l} a_k)     (0 once a document started in the chunk)
 *   w[s]   = L[Q−1, s],  γ = dec[Q−1]
 * the four steps of SSD are
 *   1. intra-chunk (diagonal block):  Y  = ((C Bᵀ) ∘ L) X
 *   2. chunk end state:               E  = Xᵀ diag(w) B
 *   3. inter-chunk state recurrence:  S0' = γ S0 + E
 *   4. off-diagonal (state → output): Y += diag(dec) C S0ᵀ
 * plus Y += D X.  On the CPU one thread owns a whole (b, h), so steps 2–4 run
 * as a sweep over chunks with the state carried in registers of the loop
 * rather than as separate passes over all chunks; the arithmetic is the same.
 * The matmuls go to cblas_sgemm on strided views of the [B,T,H,P] and
 * [B,T,G,N] tensors (no copies).
 *
 * Backward, per chunk from last to first, with dS the gradient reaching the
 * chunk's end state and M = (C Bᵀ) ∘ L:
 *   dM = dY Xᵀ,  dX = Mᵀ dY + D dY + diag(w) B dSᵀ
 *   dG = dM ∘ L → dC += dG B,  dB += dGᵀ C
 *   dseg[l,s] = dM[l,s] M[l,s] (+ dw_s w_s on the last row),  dw_s = (X dS)_s · B_s
 *   off-diagonal: ddec[l] = dY_l · (C S0ᵀ)_l, dC += diag(dec) dY S0, dS0 = (diag(dec) dY)ᵀ C
 *   end state: dS0 += γ dS, ddec[Q−1] += ⟨dS, S0⟩, dB += diag(w) X dS
 *   da from dseg and ddec·dec through the segment sums (ssd_segsum_backward).
 * The chunk entry states are recomputed first (one cheap forward sweep of
 * steps 2–3). */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "ssd.h"
#include "ssd_internal.h"

/* A chunk of one (b, h): strided views into the big tensors. */
typedef struct chunk_view {
    int Q, P, N;
    const float *x, *B, *C, *a; /* rows; a has stride lda */
    int ldx, ldbc, lda;
    const uint8_t *starts; /* contiguous, or NULL */
    float Dh;
} chunk_view;

static chunk_view chunk_at(const ssd_dims *d, int b, int h, int t0, int Q, const float *x, const float *Bm,
                           const float *Cm, const float *a, const float *D, const uint8_t *starts) {
    int g = h / (d->H / d->G);
    chunk_view v = {
        .Q = Q,
        .P = d->P,
        .N = d->N,
        .x = x + (((int64_t)b * d->T + t0) * d->H + h) * d->P,
        .B = Bm + (((int64_t)b * d->T + t0) * d->G + g) * d->N,
        .C = Cm + (((int64_t)b * d->T + t0) * d->G + g) * d->N,
        .a = a + ((int64_t)b * d->T + t0) * d->H + h,
        .ldx = d->H * d->P,
        .ldbc = d->G * d->N,
        .lda = d->H,
        .starts = starts ? starts + (int64_t)b * d->T + t0 : NULL,
        .Dh = D[h],
    };
    return v;
}

/* Per-thread scratch, sized for the largest chunk. */
typedef struct chunk_work {
    double *cum, *dwork;
    int *first;
    float *L, *M, *dM, *dseg; /* Q×Q */
    float *dec, *ddec, *w;    /* Q */
    float *Z, *dYs;           /* Q×P */
    float *WB, *U;            /* Q×N */
    float *dS0;               /* P×N */
} chunk_work;

static void chunk_work_init(chunk_work *k, int Qmax, int P, int N, int backward) {
    size_t QQ = (size_t)Qmax * Qmax;
    memset(k, 0, sizeof *k);
    k->cum = xmalloc(sizeof(double) * Qmax);
    k->dwork = xmalloc(sizeof(double) * Qmax);
    k->first = xmalloc(sizeof(int) * Qmax);
    k->L = xmalloc(sizeof(float) * QQ);
    k->M = xmalloc(sizeof(float) * QQ);
    k->dec = xmalloc(sizeof(float) * Qmax);
    k->w = xmalloc(sizeof(float) * Qmax);
    k->Z = xmalloc(sizeof(float) * (size_t)Qmax * P);
    k->WB = xmalloc(sizeof(float) * (size_t)Qmax * N);
    if (backward) {
        k->dM = xmalloc(sizeof(float) * QQ);
        k->dseg = xmalloc(sizeof(float) * QQ);
        k->ddec = xmalloc(sizeof(float) * Qmax);
        k->dYs = xmalloc(sizeof(float) * (size_t)Qmax * P);
        k->U = xmalloc(sizeof(float) * (size_t)Qmax * N);
        k->dS0 = xmalloc(sizeof(float) * (size_t)P * N);
    }
}

static void chunk_work_free(chunk_work *k) {
    free(k->cum), free(k->dwork), free(k->first), free(k->L), free(k->M), free(k->dM), free(k->dseg);
    free(k->dec), free(k->ddec), free(k->w), free(k->Z), free(k->dYs), free(k->WB), free(k->U), free(k->dS0);
}

/* Decays of the chunk: L, dec, w = L[Q−1,:], and WB = diag(w) B. */
static void chunk_decays(const chunk_view *v, chunk_work *k) {
    int Q = v->Q;
    ssd_segsum(k->cum, k->first, v->a, v->lda, v->starts, Q);
    ssd_decay_matrix(k->L, Q, k->cum, k->first, Q);
    ssd_decay_in(k->dec, k->cum, k->first, Q);
    memcpy(k->w, k->L + (int64_t)(Q - 1) * Q, sizeof(float) * Q);
    for (int s = 0; s < Q; s++)
        for (int n = 0; n < v->N; n++) k->WB[(int64_t)s * v->N + n] = k->w[s] * v->B[(int64_t)s * v->ldbc + n];
}

/* Only what steps 2–3 need (w, γ = dec[Q−1], WB): O(Q) exps instead of the
 * Q² of the full mask, for the backward's recomputation of entry states. */
static void chunk_end_decays(const chunk_view *v, chunk_work *k) {
    int Q = v->Q, last;
    ssd_segsum(k->cum, k->first, v->a, v->lda, v->starts, Q);
    last = k->first[Q - 1];
    for (int s = 0; s < Q; s++) k->w[s] = s >= last ? expf((float)(k->cum[Q - 1] - k->cum[s])) : 0.0f;
    k->dec[Q - 1] = last < 0 ? expf((float)k->cum[Q - 1]) : 0.0f;
    for (int s = 0; s < Q; s++)
        for (int n = 0; n < v->N; n++) k->WB[(int64_t)s * v->N + n] = k->w[s] * v->B[(int64_t)s * v->ldbc + n];
}

/* Steps 2–3: S ← γ S + Xᵀ diag(w) B (needs chunk_decays or chunk_end_decays first). */
static void chunk_state_update(const chunk_view *v, chunk_work *k, float *S) {
    float gamma = k->dec[v->Q - 1];
    if (gamma == 0) memset(S, 0, sizeof(float) * (size_t)v->P * v->N); /* sgemm ignores C when beta = 0 */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, v->P, v->N, v->Q, 1.0f, v->x, v->ldx, k->WB, v->N, gamma,
                S, v->N);
}

/* Steps 1 and 4 (+ D x) for one chunk into y rows, then advance S. */
static void chunk_forward(const chunk_view *v, chunk_work *k, float *S, float *y) {
    const int Q = v->Q, P = v->P, N = v->N;
    chunk_decays(v, k);
    /* 1. M = (C Bᵀ) ∘ L, Y = M X */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Q, Q, N, 1.0f, v->C, v->ldbc, v->B, v->ldbc, 0.0f, k->M, Q);
    for (int64_t i = 0; i < (int64_t)Q * Q; i++) k->M[i] *= k->L[i];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Q, P, Q, 1.0f, k->M, Q, v->x, v->ldx, 0.0f, y, v->ldx);
    /* 4. Y += diag(dec) C S0ᵀ, and Y += D X */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Q, P, N, 1.0f, v->C, v->ldbc, S, N, 0.0f, k->Z, P);
    for (int l = 0; l < Q; l++) {
        float *yl = y + (int64_t)l * v->ldx;
        const float *xl = v->x + (int64_t)l * v->ldx, *zl = k->Z + (int64_t)l * P;
        for (int p = 0; p < P; p++) yl[p] += k->dec[l] * zl[p] + v->Dh * xl[p];
    }
    /* 2–3. carry the state to the next chunk */
    chunk_state_update(v, k, S);
}

static int clamp_chunk(int chunk, int T) { return chunk < 1 ? 1 : chunk > T ? T : chunk; }

void ssd_chunked_forward(float *y, float *final_state, const float *x, const float *Bm, const float *Cm,
                         const float *a, const float *D, const uint8_t *starts, const float *init_state,
                         const ssd_dims *d, int chunk) {
    const int Qmax = clamp_chunk(chunk, d->T);
    const int64_t PN = (int64_t)d->P * d->N;
    int blas_threads = ssd_blas_serial_begin();
#pragma omp parallel
    {
        chunk_work k;
        chunk_work_init(&k, Qmax, d->P, d->N, 0);
        float *S = xmalloc(sizeof(float) * PN);
#pragma omp for schedule(dynamic)
        for (int bh = 0; bh < d->B * d->H; bh++) {
            int b = bh / d->H, h = bh % d->H;
            if (init_state)
                memcpy(S, init_state + bh * PN, sizeof(float) * PN);
            else
                memset(S, 0, sizeof(float) * PN);
            for (int t0 = 0; t0 < d->T; t0 += Qmax) {
                int Q = d->T - t0 < Qmax ? d->T - t0 : Qmax;
                chunk_view v = chunk_at(d, b, h, t0, Q, x, Bm, Cm, a, D, starts);
                chunk_forward(&v, &k, S, y + (((int64_t)b * d->T + t0) * d->H + h) * d->P);
            }
            if (final_state) memcpy(final_state + bh * PN, S, sizeof(float) * PN);
        }
        free(S);
        chunk_work_free(&k);
    }
    ssd_blas_serial_end(blas_threads);
}

/* Backward through one chunk.  dS: on entry the gradient reaching the
 * chunk's end state, on exit the gradient reaching its entry state S0.
 * Writes dx rows and da; accumulates dB, dC rows; returns Σ dy·x. */
static double chunk_backward(const chunk_view *v, chunk_work *k, const float *S0, float *dS, const float *dy,
                             float *dx, float *dB, float *dC, float *da) {
    const int Q = v->Q, P = v->P, N = v->N, ldx = v->ldx, ldbc = v->ldbc;
    chunk_decays(v, k);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Q, Q, N, 1.0f, v->C, ldbc, v->B, ldbc, 0.0f, k->M, Q);
    for (int64_t i = 0; i < (int64_t)Q * Q; i++) k->M[i] *= k->L[i];

    /* D term */
    double dD_sum = 0;
    for (int l = 0; l < Q; l++)
        for (int p = 0; p < P; p++) {
            float g = dy[(int64_t)l * ldx + p];
            dD_sum += (double)g * v->x[(int64_t)l * ldx + p];
            dx[(int64_t)l * ldx + p] = v->Dh * g;
        }

    /* 1. intra-chunk: dM = dY Xᵀ, dX += Mᵀ dY */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Q, Q, P, 1.0f, dy, ldx, v->x, ldx, 0.0f, k->dM, Q);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Q, P, Q, 1.0f, k->M, Q, dy, ldx, 1.0f, dx, ldx);
    for (int64_t i = 0; i < (int64_t)Q * Q; i++) {
        k->dseg[i] = k->dM[i] * k->M[i];
        k->dM[i] *= k->L[i]; /* now dG */
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Q, N, Q, 1.0f, k->dM, Q, v->B, ldbc, 1.0f, dC, ldbc);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Q, N, Q, 1.0f, k->dM, Q, v->C, ldbc, 1.0f, dB, ldbc);

    /* 4. off-diagonal: Y += diag(dec) C S0ᵀ */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Q, P, N, 1.0f, v->C, ldbc, S0, N, 0.0f, k->Z, P);
    for (int l = 0; l < Q; l++) {
        double acc = 0;
        for (int p = 0; p < P; p++) {
            float g = dy[(int64_t)l * ldx + p];
            acc += (double)g * k->Z[(int64_t)l * P + p];
            k->dYs[(int64_t)l * P + p] = k->dec[l] * g;
        }
        k->ddec[l] = (float)acc;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Q, N, P, 1.0f, k->dYs, P, S0, N, 1.0f, dC, ldbc);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, P, N, Q, 1.0f, k->dYs, P, v->C, ldbc, 0.0f, k->dS0, N);

    /* 2–3. end state S' = γ S0 + Xᵀ diag(w) B, with dS = ∂loss/∂S' */
    const float gamma = k->dec[Q - 1];
    double dgamma = 0;
    for (int64_t i = 0; i < (int64_t)P * N; i++) {
        dgamma += (double)dS[i] * S0[i];
        k->dS0[i] += gamma * dS[i];
    }
    k->ddec[Q - 1] += (float)dgamma;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Q, N, P, 1.0f, v->x, ldx, dS, N, 0.0f, k->U, N);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Q, P, N, 1.0f, k->WB, N, dS, N, 1.0f, dx, ldx);
    float *dseg_last = k->dseg + (int64_t)(Q - 1) * Q;
    for (int s = 0; s < Q; s++) {
        double dw = 0;
        for (int n = 0; n < N; n++) {
            float u = k->U[(int64_t)s * N + n];
            dw += (double)u * v->B[(int64_t)s * ldbc + n];
            dB[(int64_t)s * ldbc + n] += k->w[s] * u;
        }
        dseg_last[s] += (float)dw * k->w[s];
    }

    /* decays → da */
    for (int l = 0; l < Q; l++) k->ddec[l] *= k->dec[l];
    ssd_segsum_backward(da, v->lda, k->dseg, Q, k->ddec, Q, k->dwork);

    memcpy(dS, k->dS0, sizeof(float) * (size_t)P * N);
    return dD_sum;
}

void ssd_chunked_backward(float *dx, float *dBm, float *dCm, float *da, float *dD, float *d_init_state,
                          const float *dy, const float *x, const float *Bm, const float *Cm, const float *a,
                          const float *D, const uint8_t *starts, const float *init_state, const ssd_dims *d,
                          int chunk) {
    const int Qmax = clamp_chunk(chunk, d->T), hpg = d->H / d->G;
    const int nchunks = (d->T + Qmax - 1) / Qmax;
    const int64_t PN = (int64_t)d->P * d->N;
    double *dD_part = xcalloc((size_t)d->B * d->H, sizeof(double));
    int blas_threads = ssd_blas_serial_begin();
#pragma omp parallel
    {
        chunk_work k;
        chunk_work_init(&k, Qmax, d->P, d->N, 1);
        float *states = xmalloc(sizeof(float) * nchunks * PN); /* entry state of each chunk */
        float *dS = xmalloc(sizeof(float) * PN);
#pragma omp for schedule(dynamic)
        for (int bg = 0; bg < d->B * d->G; bg++) {
            int b = bg / d->G, g = bg % d->G;
            for (int t = 0; t < d->T; t++) {
                int64_t off = (((int64_t)b * d->T + t) * d->G + g) * d->N;
                memset(dBm + off, 0, sizeof(float) * d->N);
                memset(dCm + off, 0, sizeof(float) * d->N);
            }
            for (int h = g * hpg; h < (g + 1) * hpg; h++) {
                int64_t bh = (int64_t)b * d->H + h;
                /* recompute the entry states */
                float *S = states;
                if (init_state)
                    memcpy(S, init_state + bh * PN, sizeof(float) * PN);
                else
                    memset(S, 0, sizeof(float) * PN);
                for (int c = 0; c + 1 < nchunks; c++) {
                    int t0 = c * Qmax, Q = d->T - t0 < Qmax ? d->T - t0 : Qmax;
                    chunk_view v = chunk_at(d, b, h, t0, Q, x, Bm, Cm, a, D, starts);
                    memcpy(states + (c + 1) * PN, states + c * PN, sizeof(float) * PN);
                    chunk_end_decays(&v, &k);
                    chunk_state_update(&v, &k, states + (c + 1) * PN);
                }
                /* sweep back */
                memset(dS, 0, sizeof(float) * PN);
                double dD_sum = 0;
                for (int c = nchunks - 1; c >= 0; c--) {
                    int t0 = c * Qmax, Q = d->T - t0 < Qmax ? d->T - t0 : Qmax;
                    chunk_view v = chunk_at(d, b, h, t0, Q, x, Bm, Cm, a, D, starts);
                    int64_t ox = (((int64_t)b * d->T + t0) * d->H + h) * d->P;
                    int64_t obc = (((int64_t)b * d->T + t0) * d->G + g) * d->N;
                    dD_sum += chunk_backward(&v, &k, states + c * PN, dS, dy + ox, dx + ox, dBm + obc, dCm + obc,
                                             da + ((int64_t)b * d->T + t0) * d->H + h);
                }
                dD_part[bh] = dD_sum;
                if (d_init_state) memcpy(d_init_state + bh * PN, dS, sizeof(float) * PN);
            }
        }
        free(states);
        free(dS);
        chunk_work_free(&k);
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
