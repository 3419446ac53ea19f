/* The CUDA SSD core (kernels/ssd_cuda.h) against its CPU twins (lib/ssd.h)
 * on random inputs (never zeros).  The inputs are rounded to bf16 first and
 * the CPU twins run in fp32 on exactly those values, so the difference
 * measures the GPU alone: bf16 outputs, the masked C·Bᵀ block and the states
 * rounded to bf16 as tensor-core operands, fp32 accumulation order.
 *
 * Outputs are poisoned with NaN first, so an element never written fails.
 * Shapes: T not a multiple of the chunk, T shorter than a chunk, document
 * starts, an initial state, G < H (shared B/C groups), N = 8, 40, 64, 128,
 * P = 48, 64, 100, 128, chunk 128 and 64; the backward runs twice to catch
 * races (its shared-memory float atomics may reorder the last bits only). */
#include "dtype.h"
#include "ops_cuda.h"
#include "ssd.h"
#include "ssd_cuda.h"
#include "test.h"
#include "gpu_test.h"

/* Relative L2 tolerances.  A bf16 output alone is ~2e-3 off. */
#define TOL_BF16 1e-2
#define TOL_F32 1e-4

/* ---- helpers ---------------------------------------------------------------- */

static float *rnd_bf16(size_t n, float scale) {
    float *x = xmalloc(n * sizeof(float) + 4);
    for (size_t i = 0; i < n; i++) x[i] = ra_bf16_to_f32(ra_f32_to_bf16(scale * test_randf()));
    return x;
}
static float *rnd_f32(size_t n, float scale) {
    float *x = xmalloc(n * sizeof(float) + 4);
    for (size_t i = 0; i < n; i++) x[i] = scale * test_randf();
    return x;
}
/* a = −softplus(u), u uniform in [−2.5, 1.5]: decays between 0.08 and 0.92 per token */
static float *rnd_decay(size_t n) {
    float *a = xmalloc(n * sizeof(float) + 4), *u = rnd_f32(n, 2.0f);
    for (size_t i = 0; i < n; i++) u[i] -= 0.5f;
    ssd_decay_forward(a, u, (int64_t)n);
    free(u);
    return a;
}
static uint8_t *rnd_starts(size_t n, double p) {
    uint8_t *s = xmalloc(n + 1);
    for (size_t i = 0; i < n; i++) s[i] = (test_rand_u64() >> 11) * (1.0 / 9007199254740992.0) < p;
    return s;
}
static uint16_t *dev_bf16(const float *h, size_t n) {
    uint16_t *d = cuda_malloc(n * sizeof(uint16_t));
    cuda_upload_bf16(d, h, n);
    return d;
}
static void *dev_copy(const void *h, size_t bytes) {
    if (!h) return NULL;
    void *d = cuda_malloc(bytes);
    cuda_upload(d, h, bytes);
    return d;
}
static void *dev_poisoned(size_t bytes) {
    void *d = cuda_malloc(bytes);
    cuda_memset(d, 0xFF, bytes);
    return d;
}
static float *host_bf16(const uint16_t *d, size_t n) {
    float *h = xmalloc(n * sizeof(float) + 4);
    cuda_synchronize();
    cuda_download_bf16(h, d, n);
    return h;
}
static float *host_f32(const float *d, size_t n) {
    float *h = xmalloc(n * sizeof(float) + 4);
    cuda_synchronize();
    cuda_download(h, d, n * sizeof(float));
    return h;
}

static double rel_l2(const float *got, const float *ref, size_t n, double *max_abs, size_t *nan) {
    double num = 0, den = 0;
    *max_abs = 0, *nan = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(got[i]) || isnan(ref[i])) {
            (*nan)++;
            continue;
        }
        double d = (double)got[i] - ref[i];
        num += d * d, den += (double)ref[i] * ref[i];
        if (fabs(d) > *max_abs) *max_abs = fabs(d);
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void check_close(const char *what, const float *got, const float *ref, size_t n, double tol) {
    double max_abs;
    size_t nan;
    double rel = rel_l2(got, ref, n, &max_abs, &nan);
    printf("#   %-64s rel_l2 %.2e  max_abs %.2e%s\n", what, rel, max_abs, nan ? "  NaN!" : "");
    EXPECT_MSG(nan == 0, "%s: %zu NaN values (unwritten or invalid)", what, nan);
    EXPECT_MSG(rel <= tol, "%s: relative L2 error %.3e > %.1e", what, rel, tol);
}

/* ---- chunked scan ------------------------------------------------------------- */

typedef struct scan_case {
    int B, T, H, G, P, N, chunk, docs, init;
} scan_case;

static void check_chunked(scan_case k) {
    ssd_dims d = {k.B, k.T, k.H, k.P, k.G, k.N};
    const size_t nx = (size_t)k.B * k.T * k.H * k.P, nbc = (size_t)k.B * k.T * k.G * k.N;
    const size_t na = (size_t)k.B * k.T * k.H, ns = (size_t)k.B * k.H * k.P * k.N;
    float *x = rnd_bf16(nx, 1), *Bm = rnd_bf16(nbc, 0.5f), *Cm = rnd_bf16(nbc, 0.5f), *dy = rnd_bf16(nx, 1);
    float *a = rnd_decay(na), *D = rnd_f32(k.H, 1), *init = k.init ? rnd_f32(ns, 0.5f) : NULL;
    uint8_t *starts = k.docs ? rnd_starts((size_t)k.B * k.T, 1.0 / 300) : NULL;
    if (starts) starts[0] = 1;

    float *y_ref = xmalloc(nx * 4), *fin_ref = xmalloc(ns * 4), *dx_ref = xmalloc(nx * 4), *dB_ref = xmalloc(nbc * 4);
    float *dC_ref = xmalloc(nbc * 4), *da_ref = xmalloc(na * 4), *dD_ref = xmalloc(k.H * 4), *di_ref = xmalloc(ns * 4);
    ssd_chunked_forward(y_ref, fin_ref, x, Bm, Cm, a, D, starts, init, &d, k.chunk);
    ssd_chunked_backward(dx_ref, dB_ref, dC_ref, da_ref, dD_ref, di_ref, dy, x, Bm, Cm, a, D, starts, init, &d, k.chunk);

    uint16_t *d_x = dev_bf16(x, nx), *d_B = dev_bf16(Bm, nbc), *d_C = dev_bf16(Cm, nbc), *d_dy = dev_bf16(dy, nx);
    float *d_a = dev_copy(a, na * 4), *d_D = dev_copy(D, k.H * 4), *d_init = dev_copy(init, ns * 4);
    uint8_t *d_st = dev_copy(starts, (size_t)k.B * k.T);
    uint16_t *d_y = dev_poisoned(nx * 2), *d_dx = dev_poisoned(nx * 2), *d_dB = dev_poisoned(nbc * 2);
    uint16_t *d_dC = dev_poisoned(nbc * 2);
    float *d_fin = dev_poisoned(ns * 4), *d_da = dev_poisoned(na * 4), *d_dD = dev_poisoned(k.H * 4);
    float *d_di = dev_poisoned(ns * 4);
    size_t ws_bytes = cuda_ssd_chunked_workspace_bytes(&d, k.chunk, 1);
    void *ws = k.docs ? cuda_malloc(ws_bytes) : NULL; /* NULL: the call allocates its own */

    cuda_ssd_chunked_forward(d_y, d_fin, d_x, d_B, d_C, d_a, d_D, d_st, d_init, &d, k.chunk, ws);
    cuda_ssd_chunked_backward(d_dx, d_dB, d_dC, d_da, d_dD, k.init ? d_di : NULL, d_dy, d_x, d_B, d_C, d_a, d_D, d_st,
                              d_init, &d, k.chunk, ws);
    float *y = host_bf16(d_y, nx), *fin = host_f32(d_fin, ns), *dx = host_bf16(d_dx, nx), *dB = host_bf16(d_dB, nbc);
    float *dC = host_bf16(d_dC, nbc), *da = host_f32(d_da, na), *dD = host_f32(d_dD, k.H), *di = host_f32(d_di, ns);

    char tag[96], what[128];
    snprintf(tag, sizeof tag, "B=%d T=%d H=%d G=%d P=%d N=%d chunk=%d%s%s", k.B, k.T, k.H, k.G, k.P, k.N, k.chunk,
             k.docs ? " docs" : "", k.init ? " init" : "");
#define CHECK(name, got, ref, n, tol) \
    snprintf(what, sizeof what, "ssd %s %s", name, tag), check_close(what, got, ref, n, tol)
    CHECK("y", y, y_ref, nx, TOL_BF16);
    CHECK("final_state", fin, fin_ref, ns, TOL_BF16);
    CHECK("dx", dx, dx_ref, nx, TOL_BF16);
    CHECK("dB", dB, dB_ref, nbc, TOL_BF16);
    CHECK("dC", dC, dC_ref, nbc, TOL_BF16);
    CHECK("da", da, da_ref, na, TOL_BF16);
    CHECK("dD", dD, dD_ref, k.H, TOL_BF16);
    if (k.init) CHECK("d_init_state", di, di_ref, ns, TOL_BF16);

    /* again: a race shows as a difference beyond the reordered float atomics;
     * with a workspace, the variant that reuses the chunk states left in it */
    cuda_memset(d_dx, 0xFF, nx * 2), cuda_memset(d_da, 0xFF, na * 4);
    if (ws)
        cuda_ssd_chunked_backward_after_forward(d_dx, d_dB, d_dC, d_da, d_dD, NULL, d_dy, d_x, d_B, d_C, d_a, d_D,
                                                d_st, d_init, &d, k.chunk, ws);
    else
        cuda_ssd_chunked_backward(d_dx, d_dB, d_dC, d_da, d_dD, NULL, d_dy, d_x, d_B, d_C, d_a, d_D, d_st, d_init, &d,
                                  k.chunk, ws);
    float *dx2 = host_bf16(d_dx, nx), *da2 = host_f32(d_da, na);
    CHECK("dx (second run vs first)", dx2, dx, nx, 1e-6);
    CHECK("da (second run vs first)", da2, da, na, 1e-5);
#undef CHECK

    cuda_free(d_x), cuda_free(d_B), cuda_free(d_C), cuda_free(d_dy), cuda_free(d_a), cuda_free(d_D), cuda_free(d_init);
    cuda_free(d_st), cuda_free(d_y), cuda_free(d_dx), cuda_free(d_dB), cuda_free(d_dC), cuda_free(d_fin);
    cuda_free(d_da), cuda_free(d_dD), cuda_free(d_di), cuda_free(ws);
    free(x), free(Bm), free(Cm), free(dy), free(a), free(D), free(init), free(starts);
    free(y_ref), free(fin_ref), free(dx_ref), free(dB_ref), free(dC_ref), free(da_ref), free(dD_ref), free(di_ref);
    free(y), free(fin), free(dx), free(dB), free(dC), free(da), free(dD), free(di), free(dx2), free(da2);
}

TEST(chunked_small_shapes_match_cpu) {
    test_seed(201);
    check_chunked((scan_case){1, 5, 2, 2, 64, 64, 128, 0, 0});     /* T < one 16-row block */
    check_chunked((scan_case){2, 300, 4, 4, 64, 64, 128, 1, 1});   /* T not a multiple of the chunk */
    check_chunked((scan_case){1, 200, 2, 2, 48, 40, 64, 1, 1});    /* P, N not multiples of 16; chunk 64 */
}

TEST(chunked_groups_and_state_sizes_match_cpu) {
    test_seed(202);
    check_chunked((scan_case){1, 1000, 8, 2, 64, 8, 128, 1, 0});   /* G < H, N = 8 */
    check_chunked((scan_case){2, 257, 4, 1, 128, 128, 128, 0, 1}); /* widest tiles, one group */
    check_chunked((scan_case){1, 384, 4, 2, 100, 16, 128, 1, 1});
}

TEST(chunked_training_shape_matches_cpu) {
    test_seed(203);
    check_chunked((scan_case){2, 2048, 16, 16, 64, 64, 128, 1, 0}); /* Llama-1B head shape */
    check_chunked((scan_case){1, 2048, 16, 16, 64, 8, 128, 0, 0});  /* the 8x state cut */
}

/* ---- materialised matrix --------------------------------------------------------- */

static void check_matrix(int B, int T, int H, int G, int N, int docs) {
    ssd_dims d = {B, T, H, 1, G, N};
    const size_t nbc = (size_t)B * T * G * N, na = (size_t)B * T * H, nt = (size_t)B * H * T * T;
    float *Bm = rnd_bf16(nbc, 0.5f), *Cm = rnd_bf16(nbc, 0.5f), *a = rnd_decay(na), *D = rnd_f32(H, 1);
    float *dT = rnd_f32(nt, 1);
    uint8_t *starts = docs ? rnd_starts((size_t)B * T, 1.0 / 50) : NULL;
    float *T_ref = xmalloc(nt * 4), *dB_ref = xmalloc(nbc * 4), *dC_ref = xmalloc(nbc * 4), *da_ref = xmalloc(na * 4);
    float *dD_ref = xmalloc(H * 4);
    ssd_matrix_forward(T_ref, Bm, Cm, a, D, starts, &d);
    ssd_matrix_backward(dB_ref, dC_ref, da_ref, dD_ref, dT, Bm, Cm, a, starts, &d);

    uint16_t *d_B = dev_bf16(Bm, nbc), *d_C = dev_bf16(Cm, nbc);
    float *d_a = dev_copy(a, na * 4), *d_D = dev_copy(D, H * 4), *d_dT = dev_copy(dT, nt * 4);
    uint8_t *d_st = dev_copy(starts, (size_t)B * T);
    float *d_T = dev_poisoned(nt * 4), *d_da = dev_poisoned(na * 4), *d_dD = dev_poisoned(H * 4);
    uint16_t *d_dB = dev_poisoned(nbc * 2), *d_dC = dev_poisoned(nbc * 2);
    cuda_ssd_matrix_forward(d_T, d_B, d_C, d_a, d_D, d_st, &d, NULL);
    void *ws = cuda_malloc(cuda_ssd_matrix_workspace_bytes(&d, 1));
    cuda_ssd_matrix_backward(d_dB, d_dC, d_da, d_dD, d_dT, d_B, d_C, d_a, d_st, &d, ws);
    float *Tm = host_f32(d_T, nt), *dB = host_bf16(d_dB, nbc), *dC = host_bf16(d_dC, nbc), *da = host_f32(d_da, na);
    float *dD = host_f32(d_dD, H);

    char what[128];
    snprintf(what, sizeof what, "ssd matrix T B=%d T=%d H=%d G=%d N=%d%s", B, T, H, G, N, docs ? " docs" : "");
    check_close(what, Tm, T_ref, nt, TOL_F32);
    snprintf(what, sizeof what, "ssd matrix dB B=%d T=%d H=%d G=%d N=%d", B, T, H, G, N);
    check_close(what, dB, dB_ref, nbc, TOL_BF16);
    snprintf(what, sizeof what, "ssd matrix dC B=%d T=%d H=%d G=%d N=%d", B, T, H, G, N);
    check_close(what, dC, dC_ref, nbc, TOL_BF16);
    snprintf(what, sizeof what, "ssd matrix da B=%d T=%d H=%d G=%d N=%d", B, T, H, G, N);
    check_close(what, da, da_ref, na, TOL_F32);
    snprintf(what, sizeof what, "ssd matrix dD B=%d T=%d H=%d G=%d N=%d", B, T, H, G, N);
    check_close(what, dD, dD_ref, H, TOL_F32);

    cuda_free(d_B), cuda_free(d_C), cuda_free(d_a), cuda_free(d_D), cuda_free(d_dT), cuda_free(d_st), cuda_free(d_T);
    cuda_free(d_da), cuda_free(d_dD), cuda_free(d_dB), cuda_free(d_dC), cuda_free(ws);
    free(Bm), free(Cm), free(a), free(D), free(dT), free(starts), free(T_ref), free(dB_ref), free(dC_ref);
    free(da_ref), free(dD_ref), free(Tm), free(dB), free(dC), free(da), free(dD);
}

TEST(matrix_matches_cpu) {
    test_seed(204);
    check_matrix(1, 300, 4, 2, 40, 1);
    check_matrix(2, 128, 2, 2, 8, 0);
    check_matrix(1, 1, 2, 1, 64, 0);
    check_matrix(1, 513, 2, 2, 128, 1);
}

/* The three GPU paths agree on the same inputs: the matrix applied on the
 * host to x equals the chunked forward (both against fp64). */
TEST(matrix_times_x_equals_chunked) {
    test_seed(205);
    const int B = 1, T = 260, H = 2, G = 1, P = 64, N = 64;
    ssd_dims d = {B, T, H, P, G, N};
    const size_t nx = (size_t)B * T * H * P, nbc = (size_t)B * T * G * N, na = (size_t)B * T * H;
    const size_t nt = (size_t)B * H * T * T;
    float *x = rnd_bf16(nx, 1), *Bm = rnd_bf16(nbc, 0.5f), *Cm = rnd_bf16(nbc, 0.5f), *a = rnd_decay(na);
    float *D = rnd_f32(H, 1);
    uint8_t *starts = rnd_starts((size_t)B * T, 1.0 / 80);
    uint16_t *d_x = dev_bf16(x, nx), *d_B = dev_bf16(Bm, nbc), *d_C = dev_bf16(Cm, nbc), *d_y = dev_poisoned(nx * 2);
    float *d_a = dev_copy(a, na * 4), *d_D = dev_copy(D, H * 4), *d_T = dev_poisoned(nt * 4);
    uint8_t *d_st = dev_copy(starts, (size_t)B * T);
    cuda_ssd_chunked_forward(d_y, NULL, d_x, d_B, d_C, d_a, d_D, d_st, NULL, &d, 128, NULL);
    cuda_ssd_matrix_forward(d_T, d_B, d_C, d_a, d_D, d_st, &d, NULL);
    float *y = host_bf16(d_y, nx), *Tm = host_f32(d_T, nt), *yT = xmalloc(nx * 4);
    ssd_matrix_apply(yT, Tm, x, &d);
    check_close("ssd chunked y vs matrix·x (both GPU)", y, yT, nx, TOL_BF16);
    cuda_free(d_x), cuda_free(d_B), cuda_free(d_C), cuda_free(d_y), cuda_free(d_a), cuda_free(d_D), cuda_free(d_T);
    cuda_free(d_st);
    free(x), free(Bm), free(Cm), free(a), free(D), free(starts), free(y), free(Tm), free(yT);
}

TEST(dims_are_checked) {
    ra_error err = {0, ""};
    ssd_dims ok = {1, 10, 4, 64, 2, 64}, big_p = {1, 10, 4, 256, 2, 64}, big_n = {1, 10, 4, 64, 2, 129};
    ssd_dims bad_g = {1, 10, 4, 64, 3, 64};
    EXPECT_EQ_INT(cuda_ssd_check_dims(&ok, &err), 0);
    EXPECT_EQ_INT(cuda_ssd_check_dims(&big_p, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "P=256") != NULL);
    EXPECT_EQ_INT(cuda_ssd_check_dims(&big_n, &err), EX_DATAERR);
    EXPECT_EQ_INT(cuda_ssd_check_dims(&bad_g, &err), EX_DATAERR);
}

int main(void) {
    if (gpu_test_start()) return 1;
    RUN(chunked_small_shapes_match_cpu);
    RUN(chunked_groups_and_state_sizes_match_cpu);
    RUN(chunked_training_shape_matches_cpu);
    RUN(matrix_matches_cpu);
    RUN(matrix_times_x_equals_chunked);
    RUN(dims_are_checked);
    return test_summary();
}
