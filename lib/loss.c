/* Training and evaluation losses (lib/loss.h).
 *
 * Vocabulary-sized rows are reduced in one pass with an online
 * log-sum-exp: per chunk, the chunk maximum is found first, the running sum
 * (and any sum weighted by the same softmax) is rescaled by exp(old − new
 * maximum) when the maximum grows, then the chunk's exponentials are added.
 * Exponentials are fp32 (expf of a non-positive argument), sums double.
 * Rows are independent and split between OpenMP threads; per-row results
 * are summed in row order afterwards, so the loss does not depend on the
 * thread count. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "loss.h"

#define OMP_MIN_ELEMS 32768

static inline int pick_chunk(int chunk, int V) {
    if (chunk <= 0) chunk = LOSS_DEFAULT_CHUNK;
    return chunk < V ? chunk : V;
}

static double sum_rows(const double *v, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += v[i];
    return s;
}

/* ------------------------------------------------------------ stage 1 */

/* ‖Ts − A‖_F of one matrix over its causal part. */
static double matrix_norm(const float *Ts, const float *A, int T) {
    double ss = 0;
    for (int l = 0; l < T; l++)
        for (int s = 0; s <= l; s++) {
            double d = (double)Ts[(size_t)l * T + s] - A[(size_t)l * T + s];
            ss += d * d;
        }
    return sqrt(ss);
}

double loss_matrix_forward(const float *Ts, const float *A, int BH, int T) {
    if (BH <= 0) return 0;
    double *norm = xmalloc((size_t)BH * sizeof(double));
    size_t mat = (size_t)T * T;
#pragma omp parallel for if ((int64_t)BH * T * T >= OMP_MIN_ELEMS)
    for (int m = 0; m < BH; m++) norm[m] = matrix_norm(Ts + m * mat, A + m * mat, T);
    double L = sum_rows(norm, BH) / BH;
    free(norm);
    return L;
}

void loss_matrix_backward(float *dTs, const float *Ts, const float *A, int BH, int T, float dloss) {
    size_t mat = (size_t)T * T;
#pragma omp parallel for if ((int64_t)BH * T * T >= OMP_MIN_ELEMS)
    for (int m = 0; m < BH; m++) {
        const float *ts = Ts + m * mat, *a = A + m * mat;
        float *g = dTs + m * mat;
        double norm = matrix_norm(ts, a, T);
        /* ∂‖X‖_F/∂X = X/‖X‖_F; 0 at X = 0 */
        float c = norm > 0 ? (float)(dloss / (BH * norm)) : 0.0f;
        for (int l = 0; l < T; l++)
            for (int s = 0; s < T; s++) {
                size_t i = (size_t)l * T + s;
                g[i] = s <= l ? c * (ts[i] - a[i]) : 0.0f;
            }
    }
}

/* ------------------------------------------------------------ stage 2 */

static double row_distance(const float *x, const float *y, int D) {
    double ss = 0;
    for (int j = 0; j < D; j++) {
        double d = (double)x[j] - y[j];
        ss += d * d;
    }
    return sqrt(ss);
}

double loss_l2_forward(const float *out, const float *target, int n, int D) {
    if (n <= 0) return 0;
    double *dist = xmalloc((size_t)n * sizeof(double));
#pragma omp parallel for if ((int64_t)n * D >= OMP_MIN_ELEMS)
    for (int i = 0; i < n; i++) dist[i] = row_distance(out + (size_t)i * D, target + (size_t)i * D, D);
    double L = sum_rows(dist, n) / n;
    free(dist);
    return L;
}

void loss_l2_backward(float *dout, const float *out, const float *target, int n, int D, float dloss) {
#pragma omp parallel for if ((int64_t)n * D >= OMP_MIN_ELEMS)
    for (int i = 0; i < n; i++) {
        const float *x = out + (size_t)i * D, *y = target + (size_t)i * D;
        float *g = dout + (size_t)i * D;
        double dist = row_distance(x, y, D);
        float c = dist > 0 ? (float)(dloss / (n * dist)) : 0.0f;
        for (int j = 0; j < D; j++) g[j] = c * (x[j] - y[j]);
    }
}

/* ----------------------------------------------- online log-sum-exp */

/* Running maximum m and Σ exp(x − m); w: a second sum weighted by the same
 * exponentials (Σ exp(x − m)·y), rescaled together with sum. */
typedef struct olse {
    float m;
    double sum, w;
} olse;

static const olse OLSE_INIT = {-INFINITY, 0, 0};

/* Raise the running maximum to at least cm, rescaling the sums. */
static inline void olse_raise(olse *o, float cm) {
    if (!(cm > o->m)) return;
    if (o->m != -INFINITY) {
        double f = exp((double)o->m - cm);
        o->sum *= f, o->w *= f;
    }
    o->m = cm;
}

static inline double olse_value(const olse *o) { return o->m + log(o->sum); }

/* Student (scaled by inv_t) and teacher over one row: s.sum, t.sum, and
 * t.w = Σ exp(zt − mt)·y with y = zs·inv_t (ce) or zt − zs (kl). */
enum { WEIGHT_STUDENT, WEIGHT_DIFF };
static void pair_row(olse *s, olse *t, const float *zs, const float *zt, int V, float inv_t, int chunk, int weight) {
    *s = OLSE_INIT, *t = OLSE_INIT;
    for (int c0 = 0; c0 < V; c0 += chunk) {
        int c1 = c0 + chunk < V ? c0 + chunk : V;
        float ms = -INFINITY, mt = -INFINITY;
        for (int v = c0; v < c1; v++) {
            float a = zs[v] * inv_t;
            ms = a > ms ? a : ms;
            mt = zt[v] > mt ? zt[v] : mt;
        }
        olse_raise(s, ms);
        olse_raise(t, mt);
        double ss = 0, ts = 0, tw = 0;
        for (int v = c0; v < c1; v++) {
            float a = zs[v] * inv_t;
            float e = expf(zt[v] - t->m);
            ss += expf(a - s->m);
            ts += e;
            tw += (double)e * (weight == WEIGHT_STUDENT ? a : zt[v] - zs[v]);
        }
        s->sum += ss, t->sum += ts, t->w += tw;
    }
}

/* One row's log-sum-exp. */
static double lse_row(const float *z, int V, int chunk) {
    olse o = OLSE_INIT;
    for (int c0 = 0; c0 < V; c0 += chunk) {
        int c1 = c0 + chunk < V ? c0 + chunk : V;
        float m = -INFINITY;
        for (int v = c0; v < c1; v++) m = z[v] > m ? z[v] : m;
        olse_raise(&o, m);
        double s = 0;
        for (int v = c0; v < c1; v++) s += expf(z[v] - o.m);
        o.sum += s;
    }
    return olse_value(&o);
}

/* ------------------------------------------------------------ stage 3 */

double loss_soft_ce_forward(float *lse_s, float *lse_t, const float *zs, const float *zt, int n, int V, float T,
                            int chunk) {
    if (n <= 0) return 0;
    chunk = pick_chunk(chunk, V);
    float inv_t = 1.0f / T;
    double *ce = xmalloc((size_t)n * sizeof(double));
#pragma omp parallel for if ((int64_t)n * V >= OMP_MIN_ELEMS)
    for (int i = 0; i < n; i++) {
        olse s, t;
        pair_row(&s, &t, zs + (size_t)i * V, zt + (size_t)i * V, V, inv_t, chunk, WEIGHT_STUDENT);
        double ls = olse_value(&s);
        ce[i] = ls - t.w / t.sum; /* lse(zs/T) − E_teacher[zs/T] */
        lse_s[i] = (float)ls;
        lse_t[i] = (float)olse_value(&t);
    }
    double L = sum_rows(ce, n) / n;
    free(ce);
    return L;
}

void loss_soft_ce_backward(float *dzs, const float *zs, const float *zt, const float *lse_s, const float *lse_t, int n,
                           int V, float T, float dloss) {
    float inv_t = 1.0f / T, c = (float)(dloss / ((double)n * T));
#pragma omp parallel for if ((int64_t)n * V >= OMP_MIN_ELEMS)
    for (int i = 0; i < n; i++) {
        const float *s = zs + (size_t)i * V, *t = zt + (size_t)i * V;
        float *g = dzs + (size_t)i * V, ls = lse_s[i], lt = lse_t[i];
        for (int v = 0; v < V; v++) g[v] = c * (expf(s[v] * inv_t - ls) - expf(t[v] - lt));
    }
}

/* ------------------------------------------------------- hard labels */

static int check_labels(const int32_t *labels, int n, int V, int ignore_index, int *counted, ra_error *err) {
    int cnt = 0;
    for (int i = 0; i < n; i++) {
        if (labels[i] == ignore_index) continue;
        if (labels[i] < 0 || labels[i] >= V)
            return ra_fail(err, EX_DATAERR, "label of row %d is %d, expected 0..%d or the ignore index %d", i,
                           labels[i], V - 1, ignore_index);
        cnt++;
    }
    *counted = cnt;
    return 0;
}

int loss_ce_forward(double *loss, float *lse, float *nll, int *counted, const float *z, const int32_t *labels, int n,
                    int V, int ignore_index, int chunk, ra_error *err) {
    int cnt = 0;
    int rc = check_labels(labels, n, V, ignore_index, &cnt, err);
    if (rc) return rc;
    if (counted) *counted = cnt;
    *loss = 0;
    if (n <= 0) return 0;
    chunk = pick_chunk(chunk, V);
    double *row = xmalloc((size_t)n * sizeof(double));
#pragma omp parallel for if ((int64_t)n * V >= OMP_MIN_ELEMS)
    for (int i = 0; i < n; i++) {
        const float *zi = z + (size_t)i * V;
        double l = lse_row(zi, V, chunk);
        lse[i] = (float)l;
        row[i] = labels[i] == ignore_index ? 0.0 : l - zi[labels[i]];
        if (nll) nll[i] = (float)row[i];
    }
    if (cnt > 0) *loss = sum_rows(row, n) / cnt;
    free(row);
    return 0;
}

void loss_ce_backward(float *dz, const float *z, const int32_t *labels, const float *lse, int n, int V,
                      int ignore_index, float dloss) {
    int cnt = 0;
    for (int i = 0; i < n; i++) cnt += labels[i] != ignore_index;
    float c = cnt > 0 ? dloss / cnt : 0.0f;
#pragma omp parallel for if ((int64_t)n * V >= OMP_MIN_ELEMS)
    for (int i = 0; i < n; i++) {
        const float *zi = z + (size_t)i * V;
        float *g = dz + (size_t)i * V;
        if (labels[i] == ignore_index || c == 0.0f) {
            memset(g, 0, (size_t)V * sizeof(float));
            continue;
        }
        float l = lse[i];
        for (int v = 0; v < V; v++) g[v] = c * expf(zi[v] - l);
        g[labels[i]] -= c;
    }
}

/* ------------------------------------------------------- evaluation */

double loss_kl(float *kl, const float *zs, const float *zt, int n, int V, int chunk) {
    if (n <= 0) return 0;
    chunk = pick_chunk(chunk, V);
    double *row = xmalloc((size_t)n * sizeof(double));
#pragma omp parallel for if ((int64_t)n * V >= OMP_MIN_ELEMS)
    for (int i = 0; i < n; i++) {
        olse s, t;
        pair_row(&s, &t, zs + (size_t)i * V, zt + (size_t)i * V, V, 1.0f, chunk, WEIGHT_DIFF);
        /* Σ p_t (log p_t − log p_s) = E_t[zt − zs] − lse(zt) + lse(zs) */
        double d = t.w / t.sum - olse_value(&t) + olse_value(&s);
        row[i] = d > 0 ? d : 0; /* rounding can give −1e-9 for equal rows */
        if (kl) kl[i] = (float)row[i];
    }
    double L = sum_rows(row, n) / n;
    free(row);
    return L;
}
