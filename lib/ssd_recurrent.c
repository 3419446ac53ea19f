/* The SSD recurrence, token by token: the reference the chunked and matrix
 * paths are tested against, and the shape of the decode step.
 *
 *   S_t = exp(a_t) S_{t−1} + x_t B_tᵀ,   y_t = S_t C_t + D x_t
 *
 * Backward is reverse-mode through the same loop: with dS_t the gradient
 * reaching S_t (from y_t and from S_{t+1}),
 *   dS_t = dy_t C_tᵀ + exp(a_{t+1}) dS_{t+1}
 *   dx_t = dS_t B_t + D dy_t,  dB_t = dS_tᵀ x_t,  dC_t = S_tᵀ dy_t,
 *   da_t = exp(a_t) ⟨dS_t, S_{t−1}⟩,
 * and a document start at t cuts both S_{t−1} (forward) and dS_{t−1}. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "ssd.h"

#define IDX_X(d, b, t, h) ((((int64_t)(b) * (d)->T + (t)) * (d)->H + (h)) * (d)->P)
#define IDX_BC(d, b, t, g) ((((int64_t)(b) * (d)->T + (t)) * (d)->G + (g)) * (d)->N)
#define IDX_A(d, b, t, h) (((int64_t)(b) * (d)->T + (t)) * (d)->H + (h))
#define IDX_S(d, b, h) (((int64_t)(b) * (d)->H + (h)) * (d)->P * (d)->N)

void ssd_recurrent_forward(float *y, float *final_state, const float *x, const float *Bm, const float *Cm,
                           const float *a, const float *D, const uint8_t *starts, const float *init_state,
                           const ssd_dims *d) {
    const int P = d->P, N = d->N, heads_per_group = d->H / d->G;
#pragma omp parallel
    {
        float *S = xmalloc(sizeof(float) * (size_t)P * N);
#pragma omp for schedule(dynamic)
        for (int bh = 0; bh < d->B * d->H; bh++) {
            int b = bh / d->H, h = bh % d->H, g = h / heads_per_group;
            if (init_state)
                memcpy(S, init_state + IDX_S(d, b, h), sizeof(float) * (size_t)P * N);
            else
                memset(S, 0, sizeof(float) * (size_t)P * N);
            for (int t = 0; t < d->T; t++) {
                const float *xt = x + IDX_X(d, b, t, h), *Bt = Bm + IDX_BC(d, b, t, g), *Ct = Cm + IDX_BC(d, b, t, g);
                float *yt = y + IDX_X(d, b, t, h);
                float alpha = (starts && starts[(int64_t)b * d->T + t]) ? 0.0f : expf(a[IDX_A(d, b, t, h)]);
                for (int p = 0; p < P; p++) {
                    float *Sp = S + (int64_t)p * N;
                    float acc = 0;
                    for (int n = 0; n < N; n++) {
                        Sp[n] = alpha * Sp[n] + xt[p] * Bt[n];
                        acc += Sp[n] * Ct[n];
                    }
                    yt[p] = acc + D[h] * xt[p];
                }
            }
            if (final_state) memcpy(final_state + IDX_S(d, b, h), S, sizeof(float) * (size_t)P * N);
        }
        free(S);
    }
}

/* Backward for one (b, h), accumulating into dB/dC rows (shared by the
 * heads of a group) and returning Σ_t dy_t·x_t for dD. */
static double recurrent_backward_head(float *dx, float *dBm, float *dCm, float *da, float *d_init_state,
                                      const float *dy, const float *x, const float *Bm, const float *Cm,
                                      const float *a, const float *D, const uint8_t *starts,
                                      const float *init_state, const ssd_dims *d, int b, int h, float *states,
                                      float *dS) {
    const int P = d->P, N = d->N, T = d->T, g = h / (d->H / d->G);
    const int64_t PN = (int64_t)P * N;
    const uint8_t *st = starts ? starts + (int64_t)b * T : NULL;
    /* forward again, keeping S_t for every t */
    for (int t = 0; t < T; t++) {
        const float *prev = t > 0 ? states + (t - 1) * PN : init_state ? init_state + IDX_S(d, b, h) : NULL;
        float alpha = (st && st[t]) || !prev ? 0.0f : expf(a[IDX_A(d, b, t, h)]);
        const float *xt = x + IDX_X(d, b, t, h), *Bt = Bm + IDX_BC(d, b, t, g);
        float *S = states + t * PN;
        for (int p = 0; p < P; p++)
            for (int n = 0; n < N; n++) S[p * N + n] = (alpha != 0 ? alpha * prev[p * N + n] : 0) + xt[p] * Bt[n];
    }
    double dD_sum = 0;
    memset(dS, 0, sizeof(float) * PN);
    for (int t = T - 1; t >= 0; t--) {
        const float *xt = x + IDX_X(d, b, t, h), *Bt = Bm + IDX_BC(d, b, t, g), *Ct = Cm + IDX_BC(d, b, t, g);
        const float *dyt = dy + IDX_X(d, b, t, h);
        const float *S = states + t * PN;
        float *dxt = dx + IDX_X(d, b, t, h), *dBt = dBm + IDX_BC(d, b, t, g), *dCt = dCm + IDX_BC(d, b, t, g);
        for (int p = 0; p < P; p++)
            for (int n = 0; n < N; n++) dS[p * N + n] += dyt[p] * Ct[n];
        for (int p = 0; p < P; p++) {
            float acc = D[h] * dyt[p];
            for (int n = 0; n < N; n++) acc += dS[p * N + n] * Bt[n];
            dxt[p] = acc;
            dD_sum += (double)dyt[p] * xt[p];
        }
        for (int n = 0; n < N; n++) {
            float accB = 0, accC = 0;
            for (int p = 0; p < P; p++) {
                accB += dS[p * N + n] * xt[p];
                accC += S[p * N + n] * dyt[p];
            }
            dBt[n] += accB;
            dCt[n] += accC;
        }
        const float *prev = t > 0 ? states + (t - 1) * PN : init_state ? init_state + IDX_S(d, b, h) : NULL;
        /* a start at t cuts the link to S_{t−1}; a zero initial state still
         * receives a gradient (d_init_state) but contributes nothing to da */
        float alpha = (st && st[t]) ? 0.0f : expf(a[IDX_A(d, b, t, h)]);
        double g_alpha = 0;
        if (alpha != 0 && prev)
            for (int64_t i = 0; i < PN; i++) g_alpha += (double)dS[i] * prev[i];
        da[IDX_A(d, b, t, h)] = (float)(alpha * g_alpha);
        for (int64_t i = 0; i < PN; i++) dS[i] *= alpha;
    }
    if (d_init_state) memcpy(d_init_state + IDX_S(d, b, h), dS, sizeof(float) * PN);
    return dD_sum;
}

void ssd_recurrent_backward(float *dx, float *dBm, float *dCm, float *da, float *dD, float *d_init_state,
                            const float *dy, const float *x, const float *Bm, const float *Cm, const float *a,
                            const float *D, const uint8_t *starts, const float *init_state, const ssd_dims *d) {
    const int hpg = d->H / d->G;
    double *dD_part = xcalloc((size_t)d->B * d->H, sizeof(double));
#pragma omp parallel
    {
        float *states = xmalloc(sizeof(float) * (size_t)d->T * d->P * d->N);
        float *dS = xmalloc(sizeof(float) * (size_t)d->P * d->N);
#pragma omp for schedule(dynamic)
        for (int bg = 0; bg < d->B * d->G; bg++) {
            int b = bg / d->G, g = bg % d->G;
            for (int t = 0; t < d->T; t++) {
                memset(dBm + IDX_BC(d, b, t, g), 0, sizeof(float) * (size_t)d->N);
                memset(dCm + IDX_BC(d, b, t, g), 0, sizeof(float) * (size_t)d->N);
            }
            for (int h = g * hpg; h < (g + 1) * hpg; h++)
                dD_part[b * d->H + h] = recurrent_backward_head(dx, dBm, dCm, da, d_init_state, dy, x, Bm, Cm, a, D,
                                                                starts, init_state, d, b, h, states, dS);
        }
        free(states);
        free(dS);
    }
    if (dD)
        for (int h = 0; h < d->H; h++) {
            double s = 0;
            for (int b = 0; b < d->B; b++) s += dD_part[b * d->H + h];
            dD[h] = (float)s;
        }
    free(dD_part);
}
