/* The CUDA training twins (kernels/ops_backward_cuda.h) against their CPU
 * twins (lib/ops.h backward, lib/adapter.h, lib/loss.h, lib/optim.h) on
 * random inputs (never zeros).
 *
 * Inputs are rounded to bf16 first and the CPU twin runs in fp32/double on
 * exactly those values, so a difference measures the GPU op alone.  Bars
 * (relative L2, ‖gpu − cpu‖ / ‖cpu‖), from what the GPU stores:
 *   - a bf16 output alone is off by up to 2⁻⁹ relative per element, about
 *     1.5e-3 in relative L2: elementwise bf16 outputs get 5e-3;
 *   - bf16 GEMM outputs and outputs that subtract nearly equal terms
 *     (RMSNorm / adapter input gradients) get 1e-2;
 *   - attention rounds P and dS to bf16 before the products that use them
 *     (each ~2e-3), then rounds the outputs: 2e-2;
 *   - fp32 parameter gradients (dW, db, dweight) use exact bf16 operands and
 *     fp32 sums: 1e-4 (measured ~1e-6);
 *   - loss values and log-sum-exps in fp32 vs double: 1e-5 relative;
 *   - AdamW in fp32 with the CPU's operation order: bit-identical expected;
 *     the bar is 0 differing elements after several steps.
 * Outputs are poisoned with NaN before each run (an unwritten element
 * fails); parameter gradients start from random values (they accumulate).
 * Determinism: attention backward, column sums and the gradient norm are
 * run twice and must give the same bits. */
#include "adapter.h"
#include "dtype.h"
#include "loss.h"
#include "ops.h"
#include "ops_backward_cuda.h"
#include "ops_cuda.h"
#include "optim.h"
#include "test.h"
#include "gpu_test.h"

#define TOL_ELEM 5e-3
#define TOL_GEMM 1e-2
#define TOL_ATT 2e-2
#define TOL_PARAM 1e-4
#define TOL_VALUE 1e-5

/* ---- helpers ------------------------------------------------------------- */

static float *rnd(size_t n, float scale) { /* bf16-representable values */
    float *x = xmalloc(n * sizeof(float) + 4);
    for (size_t i = 0; i < n; i++) x[i] = ra_bf16_to_f32(ra_f32_to_bf16(scale * test_randf()));
    return x;
}
static float *copyf(const float *x, size_t n) {
    float *y = xmalloc(n * sizeof(float) + 4);
    memcpy(y, x, n * sizeof(float));
    return y;
}
static uint16_t *up_bf16(const float *h, size_t n) {
    uint16_t *d = cuda_malloc(n * 2 + 16);
    cuda_upload_bf16(d, h, n);
    return d;
}
static void *up(const void *h, size_t bytes) {
    void *d = cuda_malloc(bytes + 16);
    cuda_upload(d, h, bytes);
    return d;
}
static uint16_t *poisoned_bf16(size_t n) {
    uint16_t *d = cuda_malloc(n * 2 + 16);
    cuda_memset(d, 0xFF, n * 2);
    return d;
}
static float *poisoned_f32(size_t n) {
    float *d = cuda_malloc(n * 4 + 16);
    cuda_memset(d, 0xFF, n * 4);
    return d;
}
static float *down_bf16(const uint16_t *d, size_t n) {
    float *h = xmalloc(n * sizeof(float) + 4);
    cuda_synchronize();
    cuda_download_bf16(h, d, n);
    return h;
}
static float *down_f32(const float *d, size_t n) {
    float *h = xmalloc(n * sizeof(float) + 4);
    cuda_synchronize();
    cuda_download(h, d, n * sizeof(float));
    return h;
}

/* Relative L2 error and max |diff| (printed); NaN anywhere fails. */
static void check_close(const char *what, const float *got, const float *ref, size_t n, double tol) {
    double num = 0, den = 0, max_abs = 0, max_ref = 0;
    size_t nan = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(got[i]) || isnan(ref[i])) {
            nan++;
            continue;
        }
        double d = (double)got[i] - ref[i];
        num += d * d, den += (double)ref[i] * ref[i];
        if (fabs(d) > max_abs) max_abs = fabs(d);
        if (fabs(ref[i]) > max_ref) max_ref = fabs(ref[i]);
    }
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    printf("#   %-54s rel_l2 %.2e  max_abs %.2e (max |ref| %.2e)%s\n", what, rel, max_abs, max_ref,
           nan ? "  NaN!" : "");
    EXPECT_MSG(nan == 0, "%s: %zu NaN values (unwritten or invalid)", what, nan);
    EXPECT_MSG(rel <= tol, "%s: relative L2 error %.3e > %.1e", what, rel, tol);
}
/* Increments of accumulated gradients: (got − start) vs (ref − start). */
static void check_increment(const char *what, const float *got, const float *ref, const float *start, size_t n,
                            double tol) {
    float *a = xmalloc(n * sizeof(float) + 4), *b = xmalloc(n * sizeof(float) + 4);
    for (size_t i = 0; i < n; i++) a[i] = got[i] - start[i], b[i] = ref[i] - start[i];
    check_close(what, a, b, n, tol);
    free(a), free(b);
}
static size_t count_diff(const float *a, const float *b, size_t n) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += memcmp(&a[i], &b[i], sizeof(float)) != 0;
    return bad;
}
static void check_value(const char *what, double got, double ref, double tol) {
    double rel = fabs(got - ref) / (fabs(ref) > 1e-30 ? fabs(ref) : 1.0);
    printf("#   %-54s gpu %.9g cpu %.9g rel %.2e\n", what, got, ref, rel);
    EXPECT_MSG(rel <= tol, "%s: %.9g vs %.9g (rel %.2e > %.1e)", what, got, ref, rel, tol);
}

/* ---- embedding ----------------------------------------------------------- */

TEST(embedding_backward_is_bit_identical) {
    test_seed(701);
    int V = 50, D = 300, n = 777; /* many repeated tokens */
    float *dout = rnd((size_t)n * D, 1), *table0 = rnd((size_t)V * D, 1);
    int32_t *tok = xmalloc((size_t)n * 4);
    for (int i = 0; i < n; i++) tok[i] = (int32_t)(test_rand_u64() % V);
    float *ref = copyf(table0, (size_t)V * D);
    embedding_backward(ref, dout, tok, n, D);
    uint16_t *d_dout = up_bf16(dout, (size_t)n * D);
    int32_t *d_tok = up(tok, (size_t)n * 4);
    float *d_tab = up(table0, (size_t)V * D * 4);
    cuda_embedding_backward(d_tab, d_dout, d_tok, n, D);
    float *got = down_f32(d_tab, (size_t)V * D);
    size_t bad = count_diff(got, ref, (size_t)V * D);
    printf("#   embedding backward V=%d D=%d n=%d: %zu of %d values differ\n", V, D, n, bad, V * D);
    EXPECT_MSG(bad == 0, "%zu values differ from the CPU twin", bad);
    cuda_free(d_dout), cuda_free(d_tok), cuda_free(d_tab);
    free(dout), free(table0), free(tok), free(ref), free(got);
}

/* ---- RMSNorm ------------------------------------------------------------- */

static void check_rmsnorm(int n, int D) {
    float *x = rnd((size_t)n * D, 2), *w = rnd(D, 0.5f), *dy = rnd((size_t)n * D, 1), *dw0 = rnd(D, 1);
    for (int j = 0; j < D; j++) w[j] = ra_bf16_to_f32(ra_f32_to_bf16(1.0f + w[j]));
    float *y = xmalloc((size_t)n * D * 4), *rstd = xmalloc((size_t)n * 4);
    rmsnorm_forward(y, rstd, x, w, n, D, 1e-5f);
    float *ref_dx = xmalloc((size_t)n * D * 4), *ref_dw = copyf(dw0, D);
    rmsnorm_backward(ref_dx, ref_dw, dy, x, w, rstd, n, D);

    uint16_t *d_x = up_bf16(x, (size_t)n * D), *d_w = up_bf16(w, D), *d_dy = up_bf16(dy, (size_t)n * D);
    float *d_r = up(rstd, (size_t)n * 4), *d_dw = up(dw0, (size_t)D * 4);
    uint16_t *d_dx = poisoned_bf16((size_t)n * D);
    cuda_rmsnorm_backward(d_dx, d_dw, d_dy, d_x, d_w, d_r, n, D);
    float *dx = down_bf16(d_dx, (size_t)n * D), *dw = down_f32(d_dw, D);
    /* again: the column sums must give the same bits */
    float *d_dw2 = up(dw0, (size_t)D * 4);
    cuda_rmsnorm_backward(NULL, d_dw2, d_dy, d_x, d_w, d_r, n, D);
    float *dw2 = down_f32(d_dw2, D);
    char what[96];
    snprintf(what, sizeof what, "rmsnorm dx n=%d D=%d", n, D);
    check_close(what, dx, ref_dx, (size_t)n * D, TOL_GEMM);
    snprintf(what, sizeof what, "rmsnorm dweight n=%d D=%d", n, D);
    check_increment(what, dw, ref_dw, dw0, D, TOL_PARAM);
    EXPECT_MSG(count_diff(dw, dw2, D) == 0, "rmsnorm dweight differs between two runs");
    cuda_free(d_x), cuda_free(d_w), cuda_free(d_dy), cuda_free(d_r), cuda_free(d_dw), cuda_free(d_dx),
        cuda_free(d_dw2);
    free(x), free(w), free(dy), free(dw0), free(y), free(rstd), free(ref_dx), free(ref_dw), free(dx), free(dw),
        free(dw2);
}

TEST(rmsnorm_backward_matches_cpu) {
    test_seed(702);
    check_rmsnorm(1, 2048);
    check_rmsnorm(300, 896);
    check_rmsnorm(517, 100); /* rows not a multiple of the column-sum block */
}

/* ---- linear -------------------------------------------------------------- */

static void check_linear(int n, int in, int out) {
    float *x = rnd((size_t)n * in, 1), *W = rnd((size_t)out * in, 0.5f), *dy = rnd((size_t)n * out, 1);
    float *dW0 = rnd((size_t)out * in, 1), *db0 = rnd(out, 1);
    float *ref_dx = xmalloc((size_t)n * in * 4), *ref_dW = copyf(dW0, (size_t)out * in), *ref_db = copyf(db0, out);
    linear_backward(ref_dx, ref_dW, ref_db, dy, x, W, n, in, out);

    uint16_t *d_x = up_bf16(x, (size_t)n * in), *d_W = up_bf16(W, (size_t)out * in), *d_dy = up_bf16(dy, (size_t)n * out);
    float *d_dW = up(dW0, (size_t)out * in * 4), *d_db = up(db0, (size_t)out * 4);
    uint16_t *d_dx = poisoned_bf16((size_t)n * in);
    cuda_linear_backward(d_dx, d_dW, d_db, d_dy, d_x, d_W, n, in, out);
    float *dx = down_bf16(d_dx, (size_t)n * in), *dW = down_f32(d_dW, (size_t)out * in), *db = down_f32(d_db, out);
    char what[96];
    snprintf(what, sizeof what, "linear dx n=%d in=%d out=%d", n, in, out);
    check_close(what, dx, ref_dx, (size_t)n * in, TOL_GEMM);
    snprintf(what, sizeof what, "linear dW n=%d in=%d out=%d", n, in, out);
    check_increment(what, dW, ref_dW, dW0, (size_t)out * in, TOL_PARAM);
    snprintf(what, sizeof what, "linear db n=%d out=%d", n, out);
    check_increment(what, db, ref_db, db0, out, TOL_PARAM);
    cuda_free(d_x), cuda_free(d_W), cuda_free(d_dy), cuda_free(d_dW), cuda_free(d_db), cuda_free(d_dx);
    free(x), free(W), free(dy), free(dW0), free(db0), free(ref_dx), free(ref_dW), free(ref_db), free(dx), free(dW),
        free(db);
}

TEST(linear_backward_matches_cpu) {
    test_seed(703);
    check_linear(64, 256, 512);
    check_linear(37, 100, 33); /* odd shapes */
    check_linear(1, 64, 8);
    check_linear(1024, 2048, 512);
}

/* ---- RoPE ---------------------------------------------------------------- */

TEST(rope_backward_matches_cpu) {
    test_seed(704);
    int n = 45, heads = 6, hd = 64, half = hd / 2;
    float *inv = xmalloc(half * 4), *cs = xmalloc((size_t)n * half * 4), *sn = xmalloc((size_t)n * half * 4);
    int32_t *pos = xmalloc((size_t)n * 4);
    for (int j = 0; j < half; j++) inv[j] = powf(10000.0f, -2.0f * j / hd);
    for (int i = 0; i < n; i++) pos[i] = i * 37 % 1000;
    rope_tables(cs, sn, pos, n, inv, hd);
    float *g = rnd((size_t)n * heads * hd, 1), *ref = copyf(g, (size_t)n * heads * hd);
    rope_backward(ref, cs, sn, n, heads, hd);
    uint16_t *d_g = up_bf16(g, (size_t)n * heads * hd);
    float *d_c = up(cs, (size_t)n * half * 4), *d_s = up(sn, (size_t)n * half * 4);
    cuda_rope_backward(d_g, d_c, d_s, n, heads, hd);
    float *got = down_bf16(d_g, (size_t)n * heads * hd);
    check_close("rope backward n=45 heads=6 hd=64", got, ref, (size_t)n * heads * hd, TOL_ELEM);
    /* strided: the first 4 heads of rows of 6 heads, the rest untouched */
    float *ref2 = copyf(g, (size_t)n * heads * hd);
    for (int i = 0; i < n; i++) rope_backward(ref2 + (size_t)i * heads * hd, cs + (size_t)i * half, sn + (size_t)i * half, 1, 4, hd);
    cuda_upload_bf16(d_g, g, (size_t)n * heads * hd);
    cuda_rope_backward_strided(d_g, (int64_t)heads * hd, d_c, d_s, n, 4, hd);
    float *got2 = down_bf16(d_g, (size_t)n * heads * hd);
    check_close("rope backward strided (4 of 6 heads)", got2, ref2, (size_t)n * heads * hd, TOL_ELEM);
    cuda_free(d_g), cuda_free(d_c), cuda_free(d_s);
    free(inv), free(cs), free(sn), free(pos), free(g), free(ref), free(got), free(ref2), free(got2);
}

/* ---- attention ----------------------------------------------------------- */

static void check_attention(int B, int T, int H, int Hkv, int hd, int docs) {
    size_t nq = (size_t)B * T * H * hd, nk = (size_t)B * T * Hkv * hd;
    float *q = rnd(nq, 1), *k = rnd(nk, 1), *v = rnd(nk, 1), *dO = rnd(nq, 1);
    int32_t *ds = NULL;
    if (docs) {
        ds = xmalloc((size_t)B * T * 4);
        for (int b = 0; b < B; b++) {
            int start = 0;
            for (int t = 0; t < T; t++) {
                if (t > 0 && test_rand_u64() % 23 == 0) start = t;
                ds[b * T + t] = start;
            }
        }
    }
    float *rdq = xmalloc(nq * 4), *rdk = xmalloc(nk * 4), *rdv = xmalloc(nk * 4);
    attention_backward(rdq, rdk, rdv, dO, q, k, v, ds, B, T, H, Hkv, hd);
    uint16_t *d_q = up_bf16(q, nq), *d_k = up_bf16(k, nk), *d_v = up_bf16(v, nk), *d_dO = up_bf16(dO, nq);
    int32_t *d_ds = ds ? up(ds, (size_t)B * T * 4) : NULL;
    uint16_t *d_dq = poisoned_bf16(nq), *d_dk = poisoned_bf16(nk), *d_dv = poisoned_bf16(nk);
    cuda_attention_backward(d_dq, d_dk, d_dv, d_dO, d_q, d_k, d_v, d_ds, B, T, H, Hkv, hd);
    float *dq = down_bf16(d_dq, nq), *dk = down_bf16(d_dk, nk), *dv = down_bf16(d_dv, nk);
    char what[120];
    snprintf(what, sizeof what, "attention dq B=%d T=%d H=%d Hkv=%d hd=%d%s", B, T, H, Hkv, hd, docs ? " docs" : "");
    check_close(what, dq, rdq, nq, TOL_ATT);
    snprintf(what, sizeof what, "attention dk B=%d T=%d H=%d Hkv=%d hd=%d%s", B, T, H, Hkv, hd, docs ? " docs" : "");
    check_close(what, dk, rdk, nk, TOL_ATT);
    snprintf(what, sizeof what, "attention dv B=%d T=%d H=%d Hkv=%d hd=%d%s", B, T, H, Hkv, hd, docs ? " docs" : "");
    check_close(what, dv, rdv, nk, TOL_ATT);
    /* a second run gives the same bits */
    cuda_attention_backward(d_dq, d_dk, d_dv, d_dO, d_q, d_k, d_v, d_ds, B, T, H, Hkv, hd);
    float *dq2 = down_bf16(d_dq, nq), *dk2 = down_bf16(d_dk, nk);
    EXPECT_MSG(count_diff(dq, dq2, nq) == 0 && count_diff(dk, dk2, nk) == 0, "attention backward not deterministic");
    cuda_free(d_q), cuda_free(d_k), cuda_free(d_v), cuda_free(d_dO), cuda_free(d_ds), cuda_free(d_dq),
        cuda_free(d_dk), cuda_free(d_dv);
    free(q), free(k), free(v), free(dO), free(ds), free(rdq), free(rdk), free(rdv), free(dq), free(dk), free(dv),
        free(dq2), free(dk2);
}

TEST(attention_backward_matches_cpu) {
    test_seed(705);
    check_attention(2, 67, 8, 2, 64, 0);
    check_attention(2, 130, 8, 2, 64, 1); /* packed documents */
    check_attention(1, 1, 4, 4, 64, 0);   /* T = 1, no GQA */
    check_attention(1, 96, 8, 1, 48, 1);  /* group of 8, head dim 48 */
    check_attention(1, 300, 4, 2, 128, 0);
    check_attention(3, 100, 2, 1, 64, 1); /* batched over the batch rows, packed documents */
}

/* ---- head mask, SwiGLU ----------------------------------------------------- */

/* swiglu backward, separate and fused [rows, 2I] layouts, against the CPU twin */
static void check_swiglu(int rows, int I) {
    size_t m = (size_t)rows * I;
    float *gate = rnd(m, 4), *upv = rnd(m, 2), *dy = rnd(m, 1);
    float *rg = xmalloc(m * 4), *ru = xmalloc(m * 4);
    swiglu_backward(rg, ru, dy, gate, upv, (int64_t)m);
    uint16_t *d_gate = up_bf16(gate, m), *d_up = up_bf16(upv, m), *d_dy = up_bf16(dy, m);
    uint16_t *d_dg = poisoned_bf16(m), *d_du = poisoned_bf16(m);
    cuda_swiglu_backward(d_dg, d_du, d_dy, d_gate, d_up, (int64_t)m);
    float *dg = down_bf16(d_dg, m), *du = down_bf16(d_du, m);
    check_close("swiglu dgate", dg, rg, m, TOL_ELEM);
    check_close("swiglu dup", du, ru, m, TOL_ELEM);
    /* dgate aliasing dout */
    cuda_swiglu_backward(d_dy, NULL, d_dy, d_gate, d_up, (int64_t)m);
    float *dg2 = down_bf16(d_dy, m);
    check_close("swiglu dgate in place over dout", dg2, rg, m, TOL_ELEM);
    /* fused layout [rows, 2I] */
    float *gu = xmalloc(2 * m * 4), *rgu = xmalloc(2 * m * 4);
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < I; j++) {
            gu[(size_t)r * 2 * I + j] = gate[(size_t)r * I + j], gu[(size_t)r * 2 * I + I + j] = upv[(size_t)r * I + j];
            rgu[(size_t)r * 2 * I + j] = rg[(size_t)r * I + j], rgu[(size_t)r * 2 * I + I + j] = ru[(size_t)r * I + j];
        }
    uint16_t *d_gu = up_bf16(gu, 2 * m), *d_dgu = poisoned_bf16(2 * m);
    cuda_upload_bf16(d_dy, dy, m);
    cuda_swiglu_fused_backward(d_dgu, d_dy, d_gu, rows, I);
    float *dgu = down_bf16(d_dgu, 2 * m);
    check_close("swiglu fused backward", dgu, rgu, 2 * m, TOL_ELEM);
    cuda_free(d_gate), cuda_free(d_up), cuda_free(d_dy), cuda_free(d_dg), cuda_free(d_du), cuda_free(d_gu),
        cuda_free(d_dgu);
    free(gate), free(upv), free(dy), free(rg), free(ru), free(dg), free(du), free(dg2), free(gu), free(rgu),
        free(dgu);
}

TEST(head_mask_and_swiglu_backward_match_cpu) {
    test_seed(706);
    int B = 2, T = 9, H = 5, hd = 16;
    size_t n = (size_t)B * T * H * hd;
    uint8_t keep[10] = {1, 0, 1, 1, 0, 0, 1, 1, 1, 0};
    float *g = rnd(n, 1), *ref = copyf(g, n);
    head_mask_backward(ref, keep, B, T, H, hd);
    uint16_t *d_g = up_bf16(g, n);
    uint8_t *d_keep = up(keep, sizeof keep);
    cuda_head_mask_backward(d_g, d_keep, B, T, H, hd);
    float *got = down_bf16(d_g, n);
    EXPECT_MSG(count_diff(got, ref, n) == 0, "head mask backward differs");
    cuda_free(d_g), cuda_free(d_keep);
    free(g), free(ref), free(got);

    check_swiglu(33, 100); /* the fused backward one column at a time */
    check_swiglu(29, 96);  /* 8 columns per thread */
}

/* ---- adapters ---------------------------------------------------------------- */

static void check_adapter_static(int n, int H, int hd, const uint8_t *slot, const char *label) {
    size_t m = (size_t)n * H * hd;
    float *x = rnd(m, 2), *dy = rnd(m, 1);
    for (size_t i = 0; i < m; i++) x[i] = ra_bf16_to_f32(ra_f32_to_bf16(x[i] + (float)(i % hd) * 0.01f));
    float *rout = xmalloc(m * 4), *rst = xmalloc((size_t)n * 4 * 4), *rdx = xmalloc(m * 4);
    adapter_static_forward(rout, rst, x, slot, n, H, hd);
    adapter_static_backward(rdx, dy, x, rst, slot, n, H, hd);
    uint16_t *d_x = up_bf16(x, m), *d_dy = up_bf16(dy, m), *d_out = poisoned_bf16(m), *d_dx = poisoned_bf16(m);
    uint8_t *d_slot = up(slot, (size_t)H);
    float *d_st = poisoned_f32((size_t)n * 4);
    cuda_adapter_static_forward(d_out, d_st, d_x, d_slot, n, H, hd);
    /* the backward reads the CPU's stats, so each direction is measured alone */
    float *st = down_f32(d_st, (size_t)n * 4);
    cuda_upload(d_st, rst, (size_t)n * 4 * 4);
    cuda_adapter_static_backward(d_dx, d_dy, d_x, d_st, d_slot, n, H, hd);
    float *out = down_bf16(d_out, m), *dx = down_bf16(d_dx, m);
    char what[96];
    snprintf(what, sizeof what, "adapter static forward (%s)", label);
    check_close(what, out, rout, m, TOL_ELEM);
    snprintf(what, sizeof what, "adapter static stats (%s)", label);
    check_close(what, st, rst, (size_t)n * 4, TOL_VALUE * 10);
    snprintf(what, sizeof what, "adapter static backward (%s)", label);
    check_close(what, dx, rdx, m, TOL_GEMM);
    cuda_free(d_x), cuda_free(d_dy), cuda_free(d_out), cuda_free(d_dx), cuda_free(d_slot), cuda_free(d_st);
    free(x), free(dy), free(rout), free(rst), free(rdx), free(st), free(out), free(dx);
}

TEST(adapter_static_matches_cpu) {
    test_seed(707);
    uint8_t mixed[8] = {1, 0, 0, 1, 0, 1, 0, 0}, all_attn[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    check_adapter_static(37, 8, 64, mixed, "3 of 8 heads kept");
    check_adapter_static(5, 8, 48, all_attn, "pass-through");
}

TEST(adapter_linear_matches_cpu) {
    test_seed(708);
    int n = 45, D = 256;
    size_t m = (size_t)n * D;
    float *ssm = rnd(m, 1), *att = rnd(m, 3), *W = rnd((size_t)D * D, 0.1f), *b = rnd(D, 0.5f), *dy = rnd(m, 1);
    float *dW0 = rnd((size_t)D * D, 1), *db0 = rnd(D, 1);
    float *rout = xmalloc(m * 4), *rad = xmalloc(m * 4), *rst = xmalloc((size_t)n * 16);
    adapter_linear_forward(rout, rad, rst, ssm, att, W, b, n, D);
    /* the GPU backward reads bf16 ã: run the CPU backward on the same */
    float *rad_b = xmalloc(m * 4);
    for (size_t i = 0; i < m; i++) rad_b[i] = ra_bf16_to_f32(ra_f32_to_bf16(rad[i]));
    float *rds = xmalloc(m * 4), *rda = xmalloc(m * 4), *rdW = copyf(dW0, (size_t)D * D), *rdb = copyf(db0, D);
    adapter_linear_backward(rds, rda, rdW, rdb, dy, ssm, att, rad_b, rst, W, n, D);

    uint16_t *d_ssm = up_bf16(ssm, m), *d_att = up_bf16(att, m), *d_W = up_bf16(W, (size_t)D * D), *d_b = up_bf16(b, D);
    uint16_t *d_dy = up_bf16(dy, m), *d_out = poisoned_bf16(m), *d_ad = poisoned_bf16(m);
    uint16_t *d_ds = poisoned_bf16(m), *d_da = poisoned_bf16(m);
    float *d_st = poisoned_f32((size_t)n * 4), *d_dW = up(dW0, (size_t)D * D * 4), *d_db = up(db0, (size_t)D * 4);
    cuda_adapter_linear_forward(d_out, d_ad, d_st, d_ssm, d_att, d_W, d_b, n, D);
    float *out = down_bf16(d_out, m), *ad = down_bf16(d_ad, m), *st = down_f32(d_st, (size_t)n * 4);
    check_close("adapter linear forward out", out, rout, m, TOL_GEMM);
    check_close("adapter linear forward adapted", ad, rad, m, TOL_ELEM);
    check_close("adapter linear stats", st, rst, (size_t)n * 4, TOL_VALUE * 10);
    cuda_upload_bf16(d_ad, rad_b, m);
    cuda_upload(d_st, rst, (size_t)n * 16);
    cuda_adapter_linear_backward(d_ds, d_da, d_dW, d_db, d_dy, d_ssm, d_att, d_ad, d_st, d_W, n, D);
    float *ds = down_bf16(d_ds, m), *da = down_bf16(d_da, m), *dW = down_f32(d_dW, (size_t)D * D), *db = down_f32(d_db, D);
    check_close("adapter linear dssm", ds, rds, m, TOL_GEMM);
    check_close("adapter linear dattn", da, rda, m, TOL_GEMM);
    check_increment("adapter linear dW", dW, rdW, dW0, (size_t)D * D, TOL_PARAM);
    check_increment("adapter linear db", db, rdb, db0, D, TOL_PARAM);
    cuda_free(d_ssm), cuda_free(d_att), cuda_free(d_W), cuda_free(d_b), cuda_free(d_dy), cuda_free(d_out),
        cuda_free(d_ad), cuda_free(d_ds), cuda_free(d_da), cuda_free(d_st), cuda_free(d_dW), cuda_free(d_db);
    free(ssm), free(att), free(W), free(b), free(dy), free(dW0), free(db0), free(rout), free(rad), free(rst),
        free(rad_b), free(rds), free(rda), free(rdW), free(rdb), free(out), free(ad), free(st), free(ds), free(da),
        free(dW), free(db);
}

/* ---- losses ------------------------------------------------------------------- */

static void check_soft_ce(int n, int V, float T) {
    size_t m = (size_t)n * V;
    float *zs = rnd(m, 8), *zt = rnd(m, 8);
    float *rls = xmalloc((size_t)n * 4), *rlt = xmalloc((size_t)n * 4), *rg = xmalloc(m * 4);
    double L = loss_soft_ce_forward(rls, rlt, zs, zt, n, V, T, 0);
    loss_soft_ce_backward(rg, zs, zt, rls, rlt, n, V, T, 0.5f);
    uint16_t *d_zs = up_bf16(zs, m), *d_zt = up_bf16(zt, m), *d_g = poisoned_bf16(m);
    float *d_ls = poisoned_f32(n), *d_lt = poisoned_f32(n);
    double Lg = cuda_loss_soft_ce_forward(d_ls, d_lt, d_zs, d_zt, n, V, T, 0);
    cuda_loss_soft_ce_backward(d_g, d_zs, d_zt, d_ls, d_lt, n, V, T, 0.5f);
    float *ls = down_f32(d_ls, n), *lt = down_f32(d_lt, n), *g = down_bf16(d_g, m);
    char what[96];
    snprintf(what, sizeof what, "soft CE value n=%d V=%d T=%.1f", n, V, T);
    check_value(what, Lg, L, TOL_VALUE);
    check_close("soft CE lse(zs/T)", ls, rls, n, TOL_VALUE);
    check_close("soft CE lse(zt)", lt, rlt, n, TOL_VALUE);
    snprintf(what, sizeof what, "soft CE gradient n=%d V=%d", n, V);
    check_close(what, g, rg, m, TOL_ELEM);
    /* fused, in place over zs */
    double Lf = cuda_loss_soft_ce_fused(d_zs, d_zs, d_zt, n, V, T, 0.5f);
    float *gf = down_bf16(d_zs, m);
    check_value("soft CE fused value", Lf, L, TOL_VALUE);
    check_close("soft CE fused gradient (in place)", gf, rg, m, TOL_ELEM);
    cuda_free(d_zs), cuda_free(d_zt), cuda_free(d_g), cuda_free(d_ls), cuda_free(d_lt);
    free(zs), free(zt), free(rls), free(rlt), free(rg), free(ls), free(lt), free(g), free(gf);
}

TEST(soft_ce_matches_cpu) {
    test_seed(709);
    check_soft_ce(7, 1000, 2.0f);
    check_soft_ce(3, 128256, 1.0f); /* Llama-3 vocabulary */
    check_soft_ce(16, 151, 0.5f);
}

TEST(hard_ce_matches_cpu) {
    test_seed(710);
    int n = 19, V = 5003, ign = -100;
    size_t m = (size_t)n * V;
    float *z = rnd(m, 6);
    int32_t *lab = xmalloc((size_t)n * 4);
    for (int i = 0; i < n; i++) lab[i] = i % 4 == 1 ? ign : (int32_t)(test_rand_u64() % V);
    float *rl = xmalloc((size_t)n * 4), *rn = xmalloc((size_t)n * 4), *rg = xmalloc(m * 4);
    double L;
    int cnt;
    ra_error err = {0, ""};
    EXPECT(loss_ce_forward(&L, rl, rn, &cnt, z, lab, n, V, ign, 0, &err) == 0);
    loss_ce_backward(rg, z, lab, rl, n, V, ign, 1.0f);
    uint16_t *d_z = up_bf16(z, m), *d_g = poisoned_bf16(m);
    int32_t *d_lab = up(lab, (size_t)n * 4);
    float *d_l = poisoned_f32(n), *d_n = poisoned_f32(n);
    double Lg;
    int cg;
    EXPECT(cuda_loss_ce_forward(&Lg, d_l, d_n, &cg, d_z, d_lab, n, V, ign, 0, &err) == 0);
    EXPECT_EQ_INT(cg, cnt);
    check_value("hard CE value (ignore index)", Lg, L, TOL_VALUE);
    float *l = down_f32(d_l, n), *nl = down_f32(d_n, n);
    check_close("hard CE lse", l, rl, n, TOL_VALUE);
    check_close("hard CE nll", nl, rn, n, 1e-4);
    cuda_loss_ce_backward(d_g, d_z, d_lab, d_l, n, V, ign, 1.0f);
    float *g = down_bf16(d_g, m);
    check_close("hard CE gradient", g, rg, m, TOL_ELEM);
    /* a bad label: EX_DATAERR naming the row, as on the CPU */
    lab[7] = V;
    cuda_upload(d_lab, lab, (size_t)n * 4);
    int rc = cuda_loss_ce_forward(&Lg, d_l, NULL, NULL, d_z, d_lab, n, V, ign, 0, &err);
    EXPECT_EQ_INT(rc, EX_DATAERR);
    EXPECT(strstr(err.msg, "row 7") != NULL);
    cuda_free(d_z), cuda_free(d_g), cuda_free(d_lab), cuda_free(d_l), cuda_free(d_n);
    free(z), free(lab), free(rl), free(rn), free(rg), free(l), free(nl), free(g);
}

TEST(kl_l2_matrix_losses_match_cpu) {
    test_seed(711);
    /* KL */
    int n = 11, V = 3001;
    size_t m = (size_t)n * V;
    float *zs = rnd(m, 5), *zt = rnd(m, 5), *rkl = xmalloc((size_t)n * 4);
    double K = loss_kl(rkl, zs, zt, n, V, 0);
    uint16_t *d_zs = up_bf16(zs, m), *d_zt = up_bf16(zt, m);
    float *d_kl = poisoned_f32(n);
    double Kg = cuda_loss_kl(d_kl, d_zs, d_zt, n, V, 0);
    float *kl = down_f32(d_kl, n);
    check_value("KL value", Kg, K, 1e-4); /* a difference of O(10) terms: fp32 cancellation */
    check_close("KL per position", kl, rkl, n, 1e-4);
    cuda_free(d_zs), cuda_free(d_zt), cuda_free(d_kl);
    free(zs), free(zt), free(rkl), free(kl);

    /* L2 per token */
    int rows = 29, D = 300;
    size_t e = (size_t)rows * D;
    float *o = rnd(e, 1), *t = rnd(e, 1), *rg = xmalloc(e * 4);
    memcpy(t + 3 * D, o + 3 * D, D * 4); /* one row equal: gradient 0 there */
    double L2 = loss_l2_forward(o, t, rows, D);
    loss_l2_backward(rg, o, t, rows, D, 2.0f);
    uint16_t *d_o = up_bf16(o, e), *d_t = up_bf16(t, e), *d_g = poisoned_bf16(e);
    double L2g = cuda_loss_l2_forward(d_o, d_t, rows, D);
    cuda_loss_l2_backward(d_g, d_o, d_t, rows, D, 2.0f);
    float *g = down_bf16(d_g, e);
    check_value("L2 value", L2g, L2, TOL_VALUE);
    check_close("L2 gradient", g, rg, e, TOL_ELEM);
    cuda_free(d_o), cuda_free(d_t), cuda_free(d_g);
    free(o), free(t), free(rg), free(g);

    /* Frobenius, causal part */
    int BH = 6, T = 77;
    size_t mm = (size_t)BH * T * T;
    float *Ts = rnd(mm, 1), *A = rnd(mm, 1), *rdT = xmalloc(mm * 4);
    memcpy(Ts + 2 * (size_t)T * T, A + 2 * (size_t)T * T, (size_t)T * T * 4); /* one matrix equal */
    double F = loss_matrix_forward(Ts, A, BH, T);
    loss_matrix_backward(rdT, Ts, A, BH, T, 0.25f);
    float *d_Ts = up(Ts, mm * 4), *d_A = up(A, mm * 4), *d_dT = poisoned_f32(mm);
    double Fg = cuda_loss_matrix_forward(d_Ts, d_A, BH, T);
    cuda_loss_matrix_backward(d_dT, d_Ts, d_A, BH, T, 0.25f);
    float *dT = down_f32(d_dT, mm);
    check_value("Frobenius value", Fg, F, TOL_VALUE);
    check_close("Frobenius gradient", dT, rdT, mm, TOL_VALUE);
    /* both at once, the gradient in place of Ts (as stage 1 calls it) */
    double Fc = cuda_loss_matrix(d_Ts, d_Ts, d_A, BH, T, 0.25f);
    float *dTc = down_f32(d_Ts, mm);
    check_value("Frobenius value (with its gradient)", Fc, F, TOL_VALUE);
    check_close("Frobenius gradient (in place, with its value)", dTc, rdT, mm, TOL_VALUE);
    cuda_free(d_Ts), cuda_free(d_A), cuda_free(d_dT);
    free(Ts), free(A), free(rdT), free(dT), free(dTc);
}

/* ---- AdamW ---------------------------------------------------------------------- */

#define NP 4
static const int64_t P_NUMEL[NP] = {70000, 257, 4096, 33333};
static const char *P_NAME[NP] = {"w.big", "norm.weight", "frozen.proj", "w.odd"};

/* Two host optimisers with the same weights: one steps on the CPU, the
 * other is the GPU's source. */
typedef struct opt_pair {
    ra_optim *cpu, *src;
    float *w[2][NP], *g[NP];
} opt_pair;

static void pair_init(opt_pair *P, double clip) {
    ra_adamw_config cfg = ra_adamw_defaults();
    cfg.clip = clip;
    P->cpu = ra_optim_create(&cfg), P->src = ra_optim_create(&cfg);
    ra_error err = {0, ""};
    for (int i = 0; i < NP; i++) {
        int64_t shape[2] = {P_NUMEL[i] == 257 ? 257 : P_NUMEL[i] / (P_NUMEL[i] == 33333 ? 3 : 16),
                            P_NUMEL[i] == 257 ? 1 : (P_NUMEL[i] == 33333 ? 3 : 16)};
        int ndim = P_NUMEL[i] == 257 ? 1 : 2;
        P->w[0][i] = rnd((size_t)P_NUMEL[i], 0.5f);
        P->w[1][i] = copyf(P->w[0][i], (size_t)P_NUMEL[i]);
        P->g[i] = xmalloc((size_t)P_NUMEL[i] * 4);
        EXPECT(ra_optim_add(P->cpu, P_NAME[i], P->w[0][i], P->g[i], ndim, shape, &err) == 0);
        EXPECT(ra_optim_add(P->src, P_NAME[i], P->w[1][i], P->g[i], ndim, shape, &err) == 0);
    }
    EXPECT(ra_optim_freeze(P->cpu, "frozen", &err) == 0);
    EXPECT(ra_optim_freeze(P->src, "frozen", &err) == 0);
}

static void pair_free(opt_pair *P) {
    ra_optim_free(P->cpu), ra_optim_free(P->src);
    for (int i = 0; i < NP; i++) free(P->w[0][i]), free(P->w[1][i]), free(P->g[i]);
}

static void fill_grads(opt_pair *P, cuda_optim *d, float scale) {
    for (int i = 0; i < NP; i++) {
        for (int64_t e = 0; e < P_NUMEL[i]; e++) P->g[i][e] = scale * test_randf();
        if (d->params[i].g) cuda_upload(d->params[i].g, P->g[i], (size_t)P_NUMEL[i] * 4);
    }
}

static void run_adamw(double clip, float gscale, const char *label) {
    opt_pair P;
    pair_init(&P, clip);
    ra_error err = {0, ""};
    cuda_optim *d = NULL;
    EXPECT(cuda_optim_create(&d, P.src, NULL, &err) == 0);
    if (!d) return;
    uint16_t *wb = cuda_malloc((size_t)P_NUMEL[0] * 2);
    cuda_optim_set_compute_copy(d, 0, wb);
    double lr[5] = {1e-3, 3e-4, 1e-2, 5e-4, 2e-3};
    for (int s = 0; s < 5; s++) {
        fill_grads(&P, d, gscale);
        double ncpu = ra_optim_grad_norm(P.cpu), ngpu = cuda_optim_grad_norm(d), ngpu2 = cuda_optim_grad_norm(d);
        EXPECT_MSG(fabs(ngpu - ncpu) <= 1e-12 * ncpu, "grad norm %.17g vs cpu %.17g", ngpu, ncpu);
        EXPECT_MSG(memcmp(&ngpu, &ngpu2, sizeof ngpu) == 0, "grad norm differs between runs");
        EXPECT(ra_optim_step(P.cpu, lr[s], &err) == 0);
        EXPECT(cuda_optim_step(d, lr[s], &err) == 0);
    }
    cuda_optim_download(d, P.src);
    EXPECT_EQ_INT(P.src->step, 5);
    EXPECT_MSG(fabs(P.src->last_grad_norm - P.cpu->last_grad_norm) <= 1e-12 * P.cpu->last_grad_norm,
               "last grad norm differs");
    size_t diff_w = 0, diff_mv = 0, total = 0;
    for (int i = 0; i < NP; i++) {
        ra_param *a = &P.cpu->params[i], *b = &P.src->params[i];
        diff_w += count_diff(a->w, b->w, (size_t)a->numel);
        if (!a->frozen) diff_mv += count_diff(a->m, b->m, (size_t)a->numel) + count_diff(a->v, b->v, (size_t)a->numel);
        total += (size_t)a->numel;
    }
    printf("#   AdamW %s: 5 steps, %zu weights: %zu w and %zu m/v values differ from lib/optim.c\n", label, total,
           diff_w, diff_mv);
    EXPECT_MSG(diff_w == 0 && diff_mv == 0, "AdamW %s: %zu w, %zu m/v values differ", label, diff_w, diff_mv);
    EXPECT_MSG(count_diff(P.cpu->params[2].w, P.w[0][2], (size_t)P_NUMEL[2]) == 0, "a frozen parameter changed");
    /* the compute copy is the rounded master weights */
    uint16_t *hb = xmalloc((size_t)P_NUMEL[0] * 2);
    cuda_download(hb, wb, (size_t)P_NUMEL[0] * 2);
    size_t bad = 0;
    for (int64_t e = 0; e < P_NUMEL[0]; e++) bad += hb[e] != ra_f32_to_bf16(P.src->params[0].w[e]);
    EXPECT_MSG(bad == 0, "%zu compute-copy values are not bf16(w)", bad);
    free(hb);
    cuda_free(wb);
    cuda_optim_free(d);
    pair_free(&P);
}

TEST(adamw_is_bit_compatible_with_cpu) {
    test_seed(712);
    run_adamw(0.0, 1.0f, "no clipping");
    run_adamw(1.0, 3.0f, "clipped at 1");
}

TEST(adamw_nan_leaves_everything_unchanged) {
    test_seed(713);
    opt_pair P;
    pair_init(&P, 0.0);
    ra_error err = {0, ""};
    cuda_optim *d = NULL;
    EXPECT(cuda_optim_create(&d, P.src, NULL, &err) == 0);
    if (!d) return;
    fill_grads(&P, d, 1.0f);
    EXPECT(cuda_optim_step(d, 1e-3, &err) == 0);
    cuda_optim_download(d, P.src);
    float *w_before = copyf(P.src->params[3].w, (size_t)P_NUMEL[3]);
    float *m_before = copyf(P.src->params[3].m, (size_t)P_NUMEL[3]);
    fill_grads(&P, d, 1.0f);
    float bad = NAN;
    cuda_upload(d->params[3].g + 12345, &bad, 4);
    EXPECT(cuda_optim_check_grads(d, &err) == EX_SOFTWARE);
    int rc = cuda_optim_step(d, 1e-3, &err);
    EXPECT_EQ_INT(rc, EX_SOFTWARE);
    printf("#   %s\n", err.msg);
    EXPECT(strstr(err.msg, "'w.odd'") != NULL && strstr(err.msg, "NaN at element 12345") != NULL);
    EXPECT_EQ_INT(d->step, 1);
    cuda_optim_download(d, P.src);
    EXPECT(count_diff(P.src->params[3].w, w_before, (size_t)P_NUMEL[3]) == 0);
    EXPECT(count_diff(P.src->params[3].m, m_before, (size_t)P_NUMEL[3]) == 0);
    float inf = INFINITY;
    cuda_upload(d->params[3].g + 12345, &P.g[3][12345], 4);
    cuda_upload(d->params[0].g + 7, &inf, 4);
    rc = cuda_optim_step(d, 1e-3, &err);
    EXPECT(rc == EX_SOFTWARE && strstr(err.msg, "'w.big'") && strstr(err.msg, "Inf at element 7"));
    free(w_before), free(m_before);
    cuda_optim_free(d);
    pair_free(&P);
}

int main(void) {
    if (gpu_test_start()) return 1;
    RUN(embedding_backward_is_bit_identical);
    RUN(rmsnorm_backward_matches_cpu);
    RUN(linear_backward_matches_cpu);
    RUN(rope_backward_matches_cpu);
    RUN(attention_backward_matches_cpu);
    RUN(head_mask_and_swiglu_backward_match_cpu);
    RUN(adapter_static_matches_cpu);
    RUN(adapter_linear_matches_cpu);
    RUN(soft_ce_matches_cpu);
    RUN(hard_ce_matches_cpu);
    RUN(kl_l2_matrix_losses_match_cpu);
    RUN(adamw_is_bit_compatible_with_cpu);
    RUN(adamw_nan_leaves_everything_unchanged);
    cuda_train_scratch_free();
    return test_summary();
}
