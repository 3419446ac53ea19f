/* CPU backend of the Transformer ops (lib/ops.h): fp32, row-major.
 *
 * Numerics follow Hugging Face transformers in float32 so that logits match
 * within the §7 tolerance: RMSNorm scales in fp32 then multiplies by the
 * weight; RoPE angles are the fp32 product inv_freq * position (as HF's
 * matmul computes them) before cos/sin; softmax subtracts the row maximum.
 * Reductions that are cheap relative to the GEMMs (RMSNorm mean, softmax
 * denominators) are accumulated in double. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "ops.h"

/* Below this many elements an OpenMP region costs more than it saves. */
#define OMP_MIN_ELEMS 32768

void embedding_forward(float *out, const int32_t *tokens, const float *table, int n, int D) {
#pragma omp parallel for if ((int64_t)n * D >= OMP_MIN_ELEMS)
    for (int i = 0; i < n; i++)
        memcpy(out + (size_t)i * D, table + (size_t)tokens[i] * D, (size_t)D * sizeof(float));
}

void rmsnorm_forward(float *out, float *rstd, const float *in, const float *weight, int n, int D, float eps) {
#pragma omp parallel for if ((int64_t)n * D >= OMP_MIN_ELEMS)
    for (int i = 0; i < n; i++) {
        const float *x = in + (size_t)i * D;
        float *y = out + (size_t)i * D;
        double ss = 0;
        for (int j = 0; j < D; j++) ss += (double)x[j] * x[j];
        /* HF: x * rsqrt(mean(x²) + eps), then weight * (that, in fp32) */
        float r = (float)(1.0 / sqrt(ss / D + (double)eps));
        for (int j = 0; j < D; j++) y[j] = weight[j] * (x[j] * r);
        if (rstd) rstd[i] = r;
    }
}

void linear_forward(float *out, const float *in, const float *W, const float *bias, int n, int in_dim, int out_dim) {
    if (n <= 0 || out_dim <= 0) return;
    float beta = 0.0f;
    if (bias) {
        for (int i = 0; i < n; i++) memcpy(out + (size_t)i * out_dim, bias, (size_t)out_dim * sizeof(float));
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out_dim, in_dim, 1.0f, in, in_dim, W, in_dim, beta, out,
                out_dim);
}

void rope_inv_freq(float *inv_freq, int head_dim, const hf_config *cfg) {
    int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        /* HF: 1 / base ** (arange(0, dim, 2).float() / dim), in fp32 */
        float expo = (float)(2 * i) / (float)head_dim;
        inv_freq[i] = (float)(1.0 / pow(cfg->rope_theta, (double)expo));
    }
    if (cfg->rope_type != RA_ROPE_LLAMA3) return;
    /* transformers _compute_llama3_parameters: long wavelengths are slowed
     * down by factor, short ones kept, the band between smoothly blended. */
    double factor = cfg->rope_factor, lo = cfg->rope_low_freq_factor, hi = cfg->rope_high_freq_factor;
    double old_ctx = cfg->rope_original_max_position_embeddings;
    double low_freq_wavelen = old_ctx / lo, high_freq_wavelen = old_ctx / hi;
    for (int i = 0; i < half; i++) {
        double f = inv_freq[i];
        double wavelen = 2.0 * M_PI / f;
        double g = wavelen > low_freq_wavelen ? f / factor : f;
        int medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
        if (medium) {
            double smooth = (old_ctx / wavelen - lo) / (hi - lo);
            g = (1.0 - smooth) * g / factor + smooth * g;
        }
        inv_freq[i] = (float)g;
    }
}

void rope_tables(float *cos_t, float *sin_t, const int32_t *positions, int n, const float *inv_freq, int head_dim) {
    int half = head_dim / 2;
#pragma omp parallel for if ((int64_t)n * half >= OMP_MIN_ELEMS / 8)
    for (int i = 0; i < n; i++) {
        float p = (float)positions[i];
        for (int j = 0; j < half; j++) {
            float angle = inv_freq[j] * p; /* rounded to fp32 as in HF */
            cos_t[(size_t)i * half + j] = (float)cos((double)angle);
            sin_t[(size_t)i * half + j] = (float)sin((double)angle);
        }
    }
}

void rope_forward(float *x, const float *cos_t, const float *sin_t, int n, int heads, int head_dim) {
    int half = head_dim / 2;
#pragma omp parallel for if ((int64_t)n * heads * head_dim >= OMP_MIN_ELEMS)
    for (int i = 0; i < n; i++) {
        const float *c = cos_t + (size_t)i * half, *s = sin_t + (size_t)i * half;
        for (int h = 0; h < heads; h++) {
            float *v = x + ((size_t)i * heads + h) * head_dim;
            for (int j = 0; j < half; j++) {
                float x1 = v[j], x2 = v[j + half];
                /* q*cos + rotate_half(q)*sin, rotate_half(q) = cat(-q2, q1) */
                v[j] = x1 * c[j] - x2 * s[j];
                v[j + half] = x2 * c[j] + x1 * s[j];
            }
        }
    }
}

/* Query rows per attention tile: a tile's scores [ATT_TILE, keys] come from
 * one sgemm and its output from another, so every key and value row is read
 * once per tile instead of once per query (the per-query loop was bound by
 * memory traffic at long contexts). */
#define ATT_TILE 128

/* Softmax of one score row over keys [lo, hi] (indices into row), zeros
 * elsewhere in [0, n). */
static void softmax_causal_row(float *row, int n, int lo, int hi) {
    float mx = -INFINITY;
    for (int s = lo; s <= hi; s++) mx = row[s] > mx ? row[s] : mx;
    double sum = 0;
    for (int s = lo; s <= hi; s++) {
        row[s] = expf(row[s] - mx);
        sum += row[s];
    }
    float inv = (float)(1.0 / sum);
    for (int s = lo; s <= hi; s++) row[s] *= inv;
    if (lo > 0) memset(row, 0, (size_t)lo * sizeof(float));
    if (hi + 1 < n) memset(row + hi + 1, 0, (size_t)(n - hi - 1) * sizeof(float));
}

void attention_forward(float *out, float *probs, const float *q, const float *k, const float *v,
                       const int32_t *doc_start, int B, int T, int H, int Hkv, int hd) {
    int group = H / Hkv; /* query heads per key/value head (HF repeat_kv) */
    float scale = (float)(1.0 / sqrt((double)hd));
    int q_row = H * hd, kv_row = Hkv * hd;
    float *S = xmalloc((size_t)(T < ATT_TILE ? T : ATT_TILE) * T * sizeof(float));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t0 = 0; t0 < T; t0 += ATT_TILE) {
                int t1 = t0 + ATT_TILE < T ? t0 + ATT_TILE : T, rows = t1 - t0;
                const int32_t *ds = doc_start ? doc_start + (size_t)b * T : NULL;
                /* first key any query of the tile sees; a malformed start
                 * (negative or after the query) falls back to plain causal */
                int k0 = t0;
                for (int t = t0; t < t1; t++) {
                    int s0 = ds && ds[t] >= 0 && ds[t] <= t ? ds[t] : 0;
                    if (s0 < k0) k0 = s0;
                }
                int nk = t1 - k0, g = h / group;
                const float *qt = q + ((size_t)b * T + t0) * q_row + (size_t)h * hd;
                const float *kt = k + ((size_t)b * T + k0) * kv_row + (size_t)g * hd;
                const float *vt = v + ((size_t)b * T + k0) * kv_row + (size_t)g * hd;
                /* scores = (q · kᵀ) · scale, as HF computes them */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, nk, hd, scale, qt, q_row, kt, kv_row, 0.0f, S,
                            nk);
#pragma omp parallel for if ((int64_t)rows * nk >= OMP_MIN_ELEMS)
                for (int i = 0; i < rows; i++) {
                    int t = t0 + i, s0 = ds && ds[t] >= 0 && ds[t] <= t ? ds[t] : 0;
                    softmax_causal_row(S + (size_t)i * nk, nk, s0 - k0, t - k0);
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd, nk, 1.0f, S, nk, vt, kv_row, 0.0f,
                            out + ((size_t)b * T + t0) * q_row + (size_t)h * hd, q_row);
                if (probs)
                    for (int i = 0; i < rows; i++) {
                        float *row = probs + (((size_t)b * H + h) * T + t0 + i) * T;
                        memset(row, 0, (size_t)T * sizeof(float));
                        memcpy(row + k0, S + (size_t)i * nk, (size_t)nk * sizeof(float));
                    }
            }
    free(S);
}

void head_mask_apply(float *out, const uint8_t *head_keep, int B, int T, int H, int hd) {
    if (!head_keep) return;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            if (head_keep[(size_t)b * H + h]) continue;
            for (int t = 0; t < T; t++) memset(out + (((size_t)b * T + t) * H + h) * hd, 0, (size_t)hd * sizeof(float));
        }
}

void swiglu_forward(float *out, const float *gate, const float *up, int64_t n) {
#pragma omp parallel for if (n >= OMP_MIN_ELEMS)
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void residual_add(float *x, const float *y, int64_t n) {
#pragma omp parallel for if (n >= OMP_MIN_ELEMS)
    for (int64_t i = 0; i < n; i++) x[i] += y[i];
}
