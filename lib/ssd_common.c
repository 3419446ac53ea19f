/* SSD helpers shared by the three paths: dimension checks, the decay
 * a = −softplus(A_log), and the segment sums behind every decay mask. */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "ssd.h"
#include "ssd_internal.h"

int ssd_check_dims(const ssd_dims *d, ra_error *err) {
    if (d->B < 1 || d->T < 1 || d->H < 1 || d->P < 1 || d->G < 1 || d->N < 1)
        return ra_fail(err, EX_DATAERR, "ssd: dimensions must be >= 1, got B=%d T=%d H=%d P=%d G=%d N=%d", d->B,
                       d->T, d->H, d->P, d->G, d->N);
    if (d->H % d->G != 0)
        return ra_fail(err, EX_DATAERR, "ssd: %d heads cannot be split into %d B/C groups (H %% G != 0)", d->H,
                       d->G);
    return 0;
}

/* softplus(x) = log(1 + e^x) = max(x, 0) + log1p(e^−|x|): no overflow. */
static inline double softplus(double x) { return (x > 0 ? x : 0) + log1p(exp(-fabs(x))); }
static inline double sigmoid(double x) {
    if (x >= 0) return 1.0 / (1.0 + exp(-x));
    double e = exp(x);
    return e / (1.0 + e);
}

void ssd_decay_forward(float *a, const float *A_log, int64_t n) {
    for (int64_t i = 0; i < n; i++) a[i] = (float)-softplus(A_log[i]);
}

void ssd_decay_backward(float *dA_log, const float *da, const float *A_log, int64_t n) {
    for (int64_t i = 0; i < n; i++) dA_log[i] = (float)(-(double)da[i] * sigmoid(A_log[i]));
}

void ssd_segsum(double *cum, int *first, const float *a, int a_stride, const uint8_t *starts, int Q) {
    double acc = 0;
    int last = -1;
    for (int i = 0; i < Q; i++) {
        acc += a[(int64_t)i * a_stride];
        cum[i] = acc;
        if (starts && starts[i]) last = i;
        first[i] = last;
    }
}

void ssd_decay_matrix(float *L, int ld, const double *cum, const int *first, int Q) {
    for (int l = 0; l < Q; l++) {
        float *row = L + (int64_t)l * ld;
        int s0 = first[l] < 0 ? 0 : first[l];
        for (int s = 0; s < s0; s++) row[s] = 0;
        for (int s = s0; s <= l; s++) row[s] = expf((float)(cum[l] - cum[s]));
        for (int s = l + 1; s < Q; s++) row[s] = 0;
    }
}

void ssd_decay_in(float *dec_in, const double *cum, const int *first, int Q) {
    for (int l = 0; l < Q; l++) dec_in[l] = first[l] < 0 ? expf((float)cum[l]) : 0.0f;
}

void ssd_segsum_backward(float *da, int da_stride, const float *dseg, int ld, const float *dseg_in, int Q,
                         double *work) {
    memset(work, 0, sizeof(double) * (size_t)Q);
    for (int l = 0; l < Q; l++) {
        const float *row = dseg + (int64_t)l * ld;
        double r = dseg_in ? dseg_in[l] : 0.0; /* Σ_{s<i} dseg[l,s], s from −1 */
        for (int i = 0; i <= l; i++) {
            work[i] += r;
            r += row[i];
        }
    }
    for (int i = 0; i < Q; i++) da[(int64_t)i * da_stride] = (float)work[i];
}

int ssd_blas_serial_begin(void) {
    int previous = openblas_get_num_threads();
    if (previous != 1) openblas_set_num_threads(1);
    return previous;
}

void ssd_blas_serial_end(int previous) {
    if (previous != 1) openblas_set_num_threads(previous);
}
