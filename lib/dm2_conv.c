/* Depthwise causal convolution of the DiscreteMamba2 x, B, C channels:
 *   out[t,c] = bias[c] + Σ_{j=0..3} w[c,j] · in[t−3+j, c]
 * where inputs before t = 0 or before the first token of t's document are 0,
 * so the conv window resets at document starts like the SSM state.
 *
 * Threads split the channels (a block of channels per thread), so the
 * backward's scatter into din and the sums into dw/dbias never race. */
#include <string.h>

#include "dm2.h"

#define CONV_BLOCK 64

/* Number of taps that reach back from t without leaving the document that
 * began at doc_start: min(3, t − doc_start). */
static inline int taps_back(int t, int doc_start) {
    int k = t - doc_start;
    return k < DM2_CONV_K - 1 ? k : DM2_CONV_K - 1;
}

void dm2_conv_forward(float *out, int ld_out, const float *in, int ld_in, const float *w, const float *bias,
                      const uint8_t *starts, int B, int T, int C) {
    const int nblocks = (C + CONV_BLOCK - 1) / CONV_BLOCK;
#pragma omp parallel for collapse(2) schedule(static) if ((int64_t)B * T * C > 32768)
    for (int b = 0; b < B; b++)
        for (int blk = 0; blk < nblocks; blk++) {
            int c0 = blk * CONV_BLOCK, c1 = c0 + CONV_BLOCK < C ? c0 + CONV_BLOCK : C;
            int doc_start = 0;
            for (int t = 0; t < T; t++) {
                if (starts && starts[(int64_t)b * T + t]) doc_start = t;
                int back = taps_back(t, doc_start);
                float *o = out + ((int64_t)b * T + t) * ld_out;
                for (int c = c0; c < c1; c++) {
                    float acc = bias ? bias[c] : 0.0f;
                    for (int k = 0; k <= back; k++) /* k tokens back = tap 3 − k */
                        acc += w[c * DM2_CONV_K + DM2_CONV_K - 1 - k] * in[((int64_t)b * T + t - k) * ld_in + c];
                    o[c] = acc;
                }
            }
        }
}

void dm2_conv_backward(float *din, int ld_din, float *dw, float *dbias, const float *dout, int ld_dout,
                       const float *in, int ld_in, const float *w, const uint8_t *starts, int B, int T, int C) {
    const int nblocks = (C + CONV_BLOCK - 1) / CONV_BLOCK;
#pragma omp parallel for schedule(static) if ((int64_t)B * T * C > 32768)
    for (int blk = 0; blk < nblocks; blk++) {
        int c0 = blk * CONV_BLOCK, c1 = c0 + CONV_BLOCK < C ? c0 + CONV_BLOCK : C;
        double gw[CONV_BLOCK][DM2_CONV_K], gb[CONV_BLOCK];
        memset(gw, 0, sizeof gw);
        memset(gb, 0, sizeof gb);
        for (int b = 0; b < B; b++) {
            for (int t = 0; t < T; t++) memset(din + ((int64_t)b * T + t) * ld_din + c0, 0, sizeof(float) * (c1 - c0));
            int doc_start = 0;
            for (int t = 0; t < T; t++) {
                if (starts && starts[(int64_t)b * T + t]) doc_start = t;
                int back = taps_back(t, doc_start);
                const float *g = dout + ((int64_t)b * T + t) * ld_dout;
                for (int c = c0; c < c1; c++) {
                    gb[c - c0] += g[c];
                    for (int k = 0; k <= back; k++) {
                        int64_t src = ((int64_t)b * T + t - k) * ld_in + c;
                        int tap = DM2_CONV_K - 1 - k;
                        gw[c - c0][tap] += (double)g[c] * in[src];
                        din[((int64_t)b * T + t - k) * ld_din + c] += w[c * DM2_CONV_K + tap] * g[c];
                    }
                }
            }
        }
        for (int c = c0; c < c1; c++) {
            if (dbias) dbias[c] += (float)gb[c - c0];
            for (int j = 0; j < DM2_CONV_K; j++) dw[c * DM2_CONV_K + j] += (float)gw[c - c0][j];
        }
    }
}
