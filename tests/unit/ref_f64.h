/* Float64 reference building blocks shared by the unit tests' independent
 * reimplementations of the forward pass (DESIGN §2.1): RMSNorm, a linear
 * layer, RoPE inverse frequencies (incl. llama3 scaling) and the rotation.
 * They share nothing with the library but the weights they read. */
#ifndef RA_TEST_REF_F64_H
#define RA_TEST_REF_F64_H

#include <math.h>
#include <stddef.h>

#include "hf_config.h"

static inline void ref_rmsnorm(double *y, const double *x, const float *w, int D, double eps) {
    double ss = 0;
    for (int j = 0; j < D; j++) ss += x[j] * x[j];
    double r = 1 / sqrt(ss / D + eps);
    for (int j = 0; j < D; j++) y[j] = x[j] * r * w[j];
}

/* y[out] = W[out,in] x + b */
static inline void ref_linear(double *y, const double *x, const float *W, const float *b, int in, int out) {
    for (int o = 0; o < out; o++) {
        double s = b ? b[o] : 0;
        for (int i = 0; i < in; i++) s += (double)W[(size_t)o * in + i] * x[i];
        y[o] = s;
    }
}

static inline void ref_inv_freq(double *f, const hf_config *c) {
    int hd = c->head_dim;
    for (int i = 0; i < hd / 2; i++) {
        double base = 1.0 / pow(c->rope_theta, 2.0 * i / hd);
        f[i] = base;
        if (c->rope_type != RA_ROPE_LLAMA3) continue;
        double old = c->rope_original_max_position_embeddings, wl = 2 * M_PI / base;
        if (wl < old / c->rope_high_freq_factor) f[i] = base;
        else if (wl > old / c->rope_low_freq_factor) f[i] = base / c->rope_factor;
        else {
            double smooth = (old / wl - c->rope_low_freq_factor) / (c->rope_high_freq_factor - c->rope_low_freq_factor);
            f[i] = (1 - smooth) * base / c->rope_factor + smooth * base;
        }
    }
}

/* In place on v[hd]: v*cos + rotate_half(v)*sin, rotate_half(v) = (-v2, v1). */
static inline void ref_rope(double *v, int hd, double pos, const double *inv_freq) {
    int half = hd / 2;
    for (int j = 0; j < half; j++) {
        double a = pos * inv_freq[j], c = cos(a), s = sin(a), x1 = v[j], x2 = v[j + half];
        v[j] = x1 * c - x2 * s;
        v[j + half] = x2 * c + x1 * s;
    }
}

#endif
