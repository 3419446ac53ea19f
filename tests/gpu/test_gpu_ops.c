/* Every CUDA op of kernels/ops_cuda.h against its CPU twin (lib/ops.h) on
 * random inputs (never zeros).  The inputs are rounded to bf16 first and the
 * CPU twin runs on exactly those values in fp32, so the difference measures
 * the GPU op alone: bf16 rounding of the output, fp32 accumulation order
 * and, for attention, the bf16 probabilities of the P·V product.
 *
 * Outputs are poisoned with NaN (bf16 0xFFFF) before each run, so an element
 * the kernel never wrote fails the check.  Shapes include T=1, sizes that
 * are not multiples of the tile or vector widths, GQA ratios 1/4/8, head
 * dims 64 and 128 (flash kernel) and 48 (row kernel). */
#include "dtype.h"
#include "ops.h"
#include "ops_cuda.h"
#include "test.h"
#include "gpu_test.h"

/* Tolerances, relative L2 (‖gpu − cpu‖ / ‖cpu‖).  A bf16 output alone is
 * ~1.5e-3 off; attention also rounds P to bf16. */
#define TOL_ELEMENTWISE 5e-3
#define TOL_LINEAR 1e-2
#define TOL_ATTENTION 1e-2
#define TOL_PROBS 1e-4 /* fp32 on both sides */

/* ---- helpers ------------------------------------------------------------- */

/* Host values already rounded to bf16, uniform in [-scale, scale). */
static float *rnd_bf16(size_t n, float scale) {
    float *x = xmalloc(n * sizeof(float) + 1);
    for (size_t i = 0; i < n; i++) x[i] = ra_bf16_to_f32(ra_f32_to_bf16(scale * test_randf()));
    return x;
}

static uint16_t *dev_bf16(const float *h, size_t n) {
    uint16_t *d = cuda_malloc(n * sizeof(uint16_t));
    cuda_upload_bf16(d, h, n);
    return d;
}

static void *dev_copy(const void *h, size_t bytes) {
    void *d = cuda_malloc(bytes);
    cuda_upload(d, h, bytes);
    return d;
}

/* A device bf16 buffer full of NaN. */
static uint16_t *dev_poisoned(size_t n) {
    uint16_t *d = cuda_malloc(n * sizeof(uint16_t));
    cuda_memset(d, 0xFF, n * sizeof(uint16_t));
    return d;
}

static float *host_bf16(const uint16_t *d, size_t n) {
    float *h = xmalloc(n * sizeof(float) + 1);
    cuda_synchronize();
    cuda_download_bf16(h, d, n);
    return h;
}

static float *host_f32(const float *d, size_t n) {
    float *h = xmalloc(n * sizeof(float) + 1);
    cuda_synchronize();
    cuda_download(h, d, n * sizeof(float));
    return h;
}

/* Relative L2 error and max |diff|; NaN anywhere fails. */
static void check_close(const char *what, const float *got, const float *ref, size_t n, double tol) {
    double num = 0, den = 0, max_abs = 0;
    size_t nan = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(got[i]) || isnan(ref[i])) {
            nan++;
            continue;
        }
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
        if (fabs(d) > max_abs) max_abs = fabs(d);
    }
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    printf("#   %-58s rel_l2 %.2e  max_abs %.2e%s\n", what, rel, max_abs, nan ? "  NaN!" : "");
    EXPECT_MSG(nan == 0, "%s: %zu NaN values (unwritten or invalid)", what, nan);
    EXPECT_MSG(rel <= tol, "%s: relative L2 error %.3e > %.1e", what, rel, tol);
}

static void check_equal(const char *what, const float *got, const float *ref, size_t n) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        if (!(got[i] == ref[i])) bad++;
    printf("#   %-58s %zu of %zu differ\n", what, bad, n);
    EXPECT_MSG(bad == 0, "%s: %zu of %zu values differ", what, bad, n);
}

/* ---- embedding ----------------------------------------------------------- */

static void check_embedding(int V, int D, int n) {
    float *table = rnd_bf16((size_t)V * D, 1);
    int32_t *tok = xmalloc((size_t)n * sizeof(int32_t));
    for (int i = 0; i < n; i++) tok[i] = (int32_t)(test_rand_u64() % (uint64_t)V);
    float *ref = xmalloc((size_t)n * D * sizeof(float));
    embedding_forward(ref, tok, table, n, D);

    uint16_t *d_table = dev_bf16(table, (size_t)V * D), *d_out = dev_poisoned((size_t)n * D);
    int32_t *d_tok = dev_copy(tok, (size_t)n * sizeof(int32_t));
    cuda_embedding_forward(d_out, d_tok, d_table, n, D);
    float *got = host_bf16(d_out, (size_t)n * D);
    char what[96];
    snprintf(what, sizeof what, "embedding V=%d D=%d n=%d", V, D, n);
    check_equal(what, got, ref, (size_t)n * D);
    cuda_free(d_table), cuda_free(d_out), cuda_free(d_tok);
    free(table), free(tok), free(ref), free(got);
}

TEST(embedding_matches_cpu) {
    test_seed(101);
    check_embedding(1000, 2048, 37);
    check_embedding(500, 100, 1); /* D not a multiple of 8: scalar path */
    check_embedding(64, 24, 513);
}

/* ---- RMSNorm -------------------------------------------------------------- */

static void check_rmsnorm(int n, int D) {
    float eps = 1e-5f;
    float *x = rnd_bf16((size_t)n * D, 3), *w = rnd_bf16(D, 1);
    for (int j = 0; j < D; j++) w[j] = ra_bf16_to_f32(ra_f32_to_bf16(1.0f + 0.5f * w[j]));
    float *ref = xmalloc((size_t)n * D * sizeof(float)), *ref_r = xmalloc((size_t)n * sizeof(float));
    rmsnorm_forward(ref, ref_r, x, w, n, D, eps);

    uint16_t *d_x = dev_bf16(x, (size_t)n * D), *d_w = dev_bf16(w, D), *d_out = dev_poisoned((size_t)n * D);
    float *d_r = cuda_malloc((size_t)n * sizeof(float));
    cuda_memset(d_r, 0xFF, (size_t)n * sizeof(float));
    cuda_rmsnorm_forward(d_out, d_r, d_x, d_w, n, D, eps);
    float *got = host_bf16(d_out, (size_t)n * D), *got_r = host_f32(d_r, n);
    char what[96];
    snprintf(what, sizeof what, "rmsnorm n=%d D=%d", n, D);
    check_close(what, got, ref, (size_t)n * D, TOL_ELEMENTWISE);
    snprintf(what, sizeof what, "rmsnorm rstd n=%d D=%d", n, D);
    check_close(what, got_r, ref_r, n, 1e-5);
    cuda_free(d_x), cuda_free(d_w), cuda_free(d_out), cuda_free(d_r);
    free(x), free(w), free(ref), free(ref_r), free(got), free(got_r);
}

TEST(rmsnorm_matches_cpu) {
    test_seed(102);
    check_rmsnorm(1, 2048);
    check_rmsnorm(33, 2048);
    check_rmsnorm(300, 896);
    check_rmsnorm(7, 100); /* scalar path */
    check_rmsnorm(64, 8);
    check_rmsnorm(5, 3000); /* more than 256 vectors per row */
}

/* ---- linear ---------------------------------------------------------------- */

static void check_linear(int n, int in, int out, int with_bias, int residual) {
    float *x = rnd_bf16((size_t)n * in, 1), *W = rnd_bf16((size_t)out * in, 0.5f);
    float *bias = with_bias ? rnd_bf16(out, 1) : NULL;
    float *res = rnd_bf16((size_t)n * out, 2);
    float *ref = xmalloc((size_t)n * out * sizeof(float));
    linear_forward(ref, x, W, bias, n, in, out);
    if (residual) residual_add(ref, res, (int64_t)n * out); /* the CPU order: x + (W·in + b) */

    uint16_t *d_x = dev_bf16(x, (size_t)n * in), *d_W = dev_bf16(W, (size_t)out * in);
    uint16_t *d_b = bias ? dev_bf16(bias, out) : NULL;
    uint16_t *d_out;
    if (residual) {
        d_out = dev_bf16(res, (size_t)n * out);
        cuda_linear_residual_forward(d_out, d_x, d_W, d_b, n, in, out);
    } else {
        d_out = dev_poisoned((size_t)n * out);
        cuda_linear_forward(d_out, d_x, d_W, d_b, n, in, out);
    }
    float *got = host_bf16(d_out, (size_t)n * out);
    char what[96];
    snprintf(what, sizeof what, "linear%s n=%d in=%d out=%d%s", residual ? "+residual" : "", n, in, out,
             with_bias ? " bias" : "");
    check_close(what, got, ref, (size_t)n * out, TOL_LINEAR);
    cuda_free(d_x), cuda_free(d_W), cuda_free(d_b), cuda_free(d_out);
    free(x), free(W), free(bias), free(res), free(ref), free(got);
}

TEST(linear_matches_cpu) {
    test_seed(103);
    check_linear(1, 64, 64, 0, 0);
    check_linear(128, 2048, 512, 0, 0);
    check_linear(37, 896, 1152, 1, 0); /* Qwen2-style bias */
    check_linear(513, 256, 1000, 1, 0);
    check_linear(30, 100, 50, 0, 0);   /* odd leading dims */
    check_linear(9, 7, 3, 1, 0);       /* tiny, unaligned */
}

TEST(linear_residual_matches_cpu) {
    test_seed(104);
    check_linear(64, 2048, 2048, 0, 1);
    check_linear(77, 512, 256, 1, 1);
    check_linear(5, 100, 30, 0, 1);
}

/* ---- RoPE ------------------------------------------------------------------ */

static hf_config llama3_rope_cfg(void) {
    hf_config c;
    memset(&c, 0, sizeof c);
    c.rope_theta = 500000.0;
    c.rope_type = RA_ROPE_LLAMA3;
    c.rope_factor = 32.0;
    c.rope_low_freq_factor = 1.0;
    c.rope_high_freq_factor = 4.0;
    c.rope_original_max_position_embeddings = 8192;
    return c;
}

static void check_rope_tables(int n, int hd) {
    hf_config c = llama3_rope_cfg();
    int half = hd / 2;
    float *inv = xmalloc((size_t)half * sizeof(float));
    rope_inv_freq(inv, hd, &c);
    int32_t *pos = xmalloc((size_t)n * sizeof(int32_t));
    for (int i = 0; i < n; i++) pos[i] = (int32_t)(test_rand_u64() % 131072);
    pos[0] = 0;
    float *rc = xmalloc((size_t)n * half * 4), *rs = xmalloc((size_t)n * half * 4);
    rope_tables(rc, rs, pos, n, inv, hd);

    float *d_inv = dev_copy(inv, (size_t)half * 4);
    int32_t *d_pos = dev_copy(pos, (size_t)n * 4);
    float *d_c = cuda_malloc((size_t)n * half * 4), *d_s = cuda_malloc((size_t)n * half * 4);
    cuda_memset(d_c, 0xFF, (size_t)n * half * 4);
    cuda_memset(d_s, 0xFF, (size_t)n * half * 4);
    cuda_rope_tables(d_c, d_s, d_pos, n, d_inv, hd);
    float *gc = host_f32(d_c, (size_t)n * half), *gs = host_f32(d_s, (size_t)n * half);
    double max_abs = 0;
    size_t bad = 0;
    for (size_t i = 0; i < (size_t)n * half; i++) {
        double d = fmax(fabs(gc[i] - rc[i]), fabs(gs[i] - rs[i]));
        if (!(d <= max_abs)) max_abs = d;
        if (!(d <= 2e-6)) bad++;
    }
    printf("#   rope tables n=%d hd=%d (positions < 131072): max |diff| %.2e\n", n, hd, max_abs);
    EXPECT_MSG(bad == 0, "rope tables: %zu values off by more than 2e-6 (max %.3e)", bad, max_abs);
    cuda_free(d_inv), cuda_free(d_pos), cuda_free(d_c), cuda_free(d_s);
    free(inv), free(pos), free(rc), free(rs), free(gc), free(gs);
}

TEST(rope_tables_match_cpu) {
    test_seed(105);
    check_rope_tables(1, 64);
    check_rope_tables(1000, 128);
    check_rope_tables(77, 6);
}

/* x[n, heads, hd] in place; strided: heads rotated inside wider rows whose
 * other columns must stay untouched. */
static void check_rope(int n, int heads, int hd, int extra_cols) {
    int half = hd / 2;
    int64_t stride = (int64_t)heads * hd + extra_cols;
    hf_config c = llama3_rope_cfg();
    c.rope_type = RA_ROPE_DEFAULT;
    float *inv = xmalloc((size_t)half * 4);
    rope_inv_freq(inv, hd, &c);
    int32_t *pos = xmalloc((size_t)n * 4);
    for (int i = 0; i < n; i++) pos[i] = (int32_t)(test_rand_u64() % 8192);
    float *ct = xmalloc((size_t)n * half * 4), *st = xmalloc((size_t)n * half * 4);
    rope_tables(ct, st, pos, n, inv, hd);

    float *rows = rnd_bf16((size_t)n * stride, 2);
    float *ref = xmalloc((size_t)n * heads * hd * 4);
    for (int i = 0; i < n; i++) memcpy(ref + (size_t)i * heads * hd, rows + i * stride, (size_t)heads * hd * 4);
    rope_forward(ref, ct, st, n, heads, hd);

    uint16_t *d_x = dev_bf16(rows, (size_t)n * stride);
    float *d_c = dev_copy(ct, (size_t)n * half * 4), *d_s = dev_copy(st, (size_t)n * half * 4);
    if (extra_cols)
        cuda_rope_forward_strided(d_x, stride, d_c, d_s, n, heads, hd);
    else
        cuda_rope_forward(d_x, d_c, d_s, n, heads, hd);
    float *got_rows = host_bf16(d_x, (size_t)n * stride);
    float *got = xmalloc((size_t)n * heads * hd * 4);
    size_t touched = 0;
    for (int i = 0; i < n; i++) {
        memcpy(got + (size_t)i * heads * hd, got_rows + i * stride, (size_t)heads * hd * 4);
        for (int j = heads * hd; j < stride; j++) touched += got_rows[i * stride + j] != rows[i * stride + j];
    }
    char what[96];
    snprintf(what, sizeof what, "rope n=%d heads=%d hd=%d%s", n, heads, hd, extra_cols ? " strided" : "");
    check_close(what, got, ref, (size_t)n * heads * hd, TOL_ELEMENTWISE);
    EXPECT_MSG(touched == 0, "rope strided: %zu values outside the rotated heads changed", touched);
    cuda_free(d_x), cuda_free(d_c), cuda_free(d_s);
    free(inv), free(pos), free(ct), free(st), free(rows), free(ref), free(got_rows), free(got);
}

TEST(rope_matches_cpu) {
    test_seed(106);
    check_rope(1, 32, 64, 0);
    check_rope(300, 8, 128, 0);
    check_rope(17, 3, 6, 0);         /* scalar path */
    check_rope(100, 40, 64, 8 * 64); /* fused qkv rows: q+k heads rotated, v heads kept */
    check_rope(33, 5, 10, 3);        /* scalar strided */
}

/* ---- attention --------------------------------------------------------------- */

/* doc_start of random packed documents per batch row. */
static int32_t *make_doc_start(int B, int T) {
    int32_t *ds = xmalloc((size_t)B * T * 4);
    for (int b = 0; b < B; b++) {
        int start = 0;
        for (int t = 0; t < T; t++) {
            if (t > 0 && test_rand_u64() % 97 == 0) start = t;
            ds[(size_t)b * T + t] = start;
        }
    }
    return ds;
}

typedef struct {
    int B, T, H, Hkv, hd;
    int docs, probs, head_mask, fused_qkv;
} attn_case;

static void check_attention(attn_case c) {
    int B = c.B, T = c.T, H = c.H, Hkv = c.Hkv, hd = c.hd;
    size_t n = (size_t)B * T, nq = n * H * hd, nkv = n * Hkv * hd;
    float *q = rnd_bf16(nq, 2), *k = rnd_bf16(nkv, 2), *v = rnd_bf16(nkv, 1);
    int32_t *ds = c.docs ? make_doc_start(B, T) : NULL;
    uint8_t *keep = NULL;
    if (c.head_mask) {
        keep = xmalloc((size_t)B * H);
        for (int i = 0; i < B * H; i++) keep[i] = (uint8_t)(test_rand_u64() % 3 != 0);
        keep[0] = 0;
    }
    float *ref = xmalloc(nq * 4);
    float *ref_p = c.probs ? xmalloc((size_t)B * H * T * T * 4) : NULL;
    attention_forward(ref, ref_p, q, k, v, ds, B, T, H, Hkv, hd);
    if (keep) head_mask_apply(ref, keep, B, T, H, hd);

    int32_t *d_ds = ds ? dev_copy(ds, n * 4) : NULL;
    uint8_t *d_keep = keep ? dev_copy(keep, (size_t)B * H) : NULL;
    uint16_t *d_out = dev_poisoned(nq);
    float *d_p = NULL;
    if (c.probs) {
        d_p = cuda_malloc((size_t)B * H * T * T * 4);
        cuda_memset(d_p, 0xFF, (size_t)B * H * T * T * 4);
    }
    uint16_t *d_q = NULL, *d_k = NULL, *d_v = NULL, *d_qkv = NULL;
    if (c.fused_qkv) {
        /* one buffer [n, (H + 2 Hkv) hd] as the model forward lays it out */
        int64_t stride = (int64_t)(H + 2 * Hkv) * hd;
        float *qkv = xmalloc(n * stride * 4);
        for (size_t i = 0; i < n; i++) {
            memcpy(qkv + i * stride, q + i * H * hd, (size_t)H * hd * 4);
            memcpy(qkv + i * stride + H * hd, k + i * Hkv * hd, (size_t)Hkv * hd * 4);
            memcpy(qkv + i * stride + (H + Hkv) * hd, v + i * Hkv * hd, (size_t)Hkv * hd * 4);
        }
        d_qkv = dev_bf16(qkv, n * stride);
        free(qkv);
        cuda_attention_args a;
        memset(&a, 0, sizeof a);
        a.out = d_out, a.out_stride = (int64_t)H * hd;
        a.q = d_qkv, a.q_stride = stride;
        a.k = d_qkv + H * hd, a.v = d_qkv + (H + Hkv) * hd, a.kv_stride = stride;
        a.doc_start = d_ds, a.head_keep = d_keep, a.probs = d_p;
        a.B = B, a.T = T, a.H = H, a.Hkv = Hkv, a.hd = hd;
        cuda_attention_forward_ex(&a);
    } else {
        d_q = dev_bf16(q, nq), d_k = dev_bf16(k, nkv), d_v = dev_bf16(v, nkv);
        if (keep) {
            cuda_attention_args a;
            memset(&a, 0, sizeof a);
            a.out = d_out, a.out_stride = (int64_t)H * hd;
            a.q = d_q, a.q_stride = (int64_t)H * hd;
            a.k = d_k, a.v = d_v, a.kv_stride = (int64_t)Hkv * hd;
            a.doc_start = d_ds, a.head_keep = d_keep, a.probs = d_p;
            a.B = B, a.T = T, a.H = H, a.Hkv = Hkv, a.hd = hd;
            cuda_attention_forward_ex(&a);
        } else {
            cuda_attention_forward(d_out, d_p, d_q, d_k, d_v, d_ds, B, T, H, Hkv, hd);
        }
    }
    float *got = host_bf16(d_out, nq);
    char what[128];
    snprintf(what, sizeof what, "attention B=%d T=%d H=%d Hkv=%d hd=%d%s%s%s", B, T, H, Hkv, hd,
             c.docs ? " docs" : "", c.head_mask ? " head_keep" : "", c.fused_qkv ? " fused-qkv" : "");
    check_close(what, got, ref, nq, TOL_ATTENTION);
    if (keep) { /* ablated heads exactly zero */
        size_t nonzero = 0;
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
                if (!keep[b * H + h])
                    for (int t = 0; t < T; t++)
                        for (int d = 0; d < hd; d++) nonzero += got[(((size_t)b * T + t) * H + h) * hd + d] != 0.0f;
        EXPECT_MSG(nonzero == 0, "%zu values of ablated heads are not zero", nonzero);
    }
    if (c.probs) {
        size_t np = (size_t)B * H * T * T;
        float *gp = host_f32(d_p, np);
        snprintf(what, sizeof what, "attention probs B=%d T=%d H=%d Hkv=%d hd=%d%s", B, T, H, Hkv, hd,
                 c.docs ? " docs" : "");
        check_close(what, gp, ref_p, np, TOL_PROBS);
        free(gp);
    }
    cuda_free(d_q), cuda_free(d_k), cuda_free(d_v), cuda_free(d_qkv), cuda_free(d_out), cuda_free(d_p);
    cuda_free(d_ds), cuda_free(d_keep);
    free(q), free(k), free(v), free(ds), free(keep), free(ref), free(ref_p), free(got);
}

TEST(attention_flash_matches_cpu) {
    test_seed(107);
    check_attention((attn_case){.B = 1, .T = 1, .H = 4, .Hkv = 4, .hd = 64});   /* T = 1 */
    check_attention((attn_case){.B = 2, .T = 77, .H = 8, .Hkv = 2, .hd = 64});  /* GQA 4, partial tile */
    check_attention((attn_case){.B = 1, .T = 512, .H = 8, .Hkv = 1, .hd = 128}); /* GQA 8 */
    check_attention((attn_case){.B = 2, .T = 130, .H = 4, .Hkv = 4, .hd = 128}); /* GQA 1 */
    check_attention((attn_case){.B = 1, .T = 1000, .H = 4, .Hkv = 1, .hd = 64});
    check_attention((attn_case){.B = 3, .T = 65, .H = 2, .Hkv = 1, .hd = 32});
    check_attention((attn_case){.B = 1, .T = 200, .H = 4, .Hkv = 2, .hd = 16});
    check_attention((attn_case){.B = 1, .T = 2048, .H = 2, .Hkv = 1, .hd = 64});
}

TEST(attention_doc_mask_matches_cpu) {
    test_seed(108);
    check_attention((attn_case){.B = 2, .T = 300, .H = 8, .Hkv = 2, .hd = 64, .docs = 1});
    check_attention((attn_case){.B = 1, .T = 513, .H = 4, .Hkv = 4, .hd = 128, .docs = 1});
}

TEST(attention_head_keep_fused_matches_cpu) {
    test_seed(109);
    check_attention((attn_case){.B = 3, .T = 100, .H = 8, .Hkv = 2, .hd = 64, .head_mask = 1});
    check_attention((attn_case){.B = 2, .T = 70, .H = 4, .Hkv = 1, .hd = 48, .head_mask = 1}); /* row kernel */
}

TEST(attention_fused_qkv_layout_matches_cpu) {
    test_seed(110);
    check_attention((attn_case){.B = 2, .T = 200, .H = 8, .Hkv = 2, .hd = 64, .fused_qkv = 1});
    check_attention((attn_case){.B = 1, .T = 129, .H = 4, .Hkv = 1, .hd = 128, .fused_qkv = 1, .docs = 1});
}

TEST(attention_row_kernel_matches_cpu) {
    test_seed(111);
    check_attention((attn_case){.B = 2, .T = 90, .H = 4, .Hkv = 2, .hd = 48}); /* no flash instance */
    check_attention((attn_case){.B = 1, .T = 1, .H = 2, .Hkv = 1, .hd = 24});
}

TEST(attention_probs_match_cpu) {
    test_seed(112);
    check_attention((attn_case){.B = 2, .T = 64, .H = 4, .Hkv = 2, .hd = 64, .probs = 1});
    check_attention((attn_case){.B = 1, .T = 150, .H = 8, .Hkv = 1, .hd = 128, .probs = 1, .docs = 1});
    check_attention((attn_case){.B = 1, .T = 33, .H = 4, .Hkv = 4, .hd = 48, .probs = 1, .fused_qkv = 1});
}

/* Probabilities of chosen heads only: [B, n_heads, T, T]. */
TEST(attention_probs_of_chosen_heads) {
    test_seed(113);
    int B = 2, T = 50, H = 8, Hkv = 2, hd = 64;
    size_t n = (size_t)B * T, nq = n * H * hd, nkv = n * Hkv * hd;
    float *q = rnd_bf16(nq, 2), *k = rnd_bf16(nkv, 2), *v = rnd_bf16(nkv, 1);
    float *out = xmalloc(nq * 4), *probs = xmalloc((size_t)B * H * T * T * 4);
    attention_forward(out, probs, q, k, v, NULL, B, T, H, Hkv, hd);
    int32_t heads[3] = {5, 0, 7};
    uint16_t *d_q = dev_bf16(q, nq), *d_k = dev_bf16(k, nkv), *d_v = dev_bf16(v, nkv);
    int32_t *d_heads = dev_copy(heads, sizeof heads);
    size_t np = (size_t)B * 3 * T * T;
    float *d_p = cuda_malloc(np * 4);
    cuda_memset(d_p, 0xFF, np * 4);
    cuda_attention_args a;
    memset(&a, 0, sizeof a);
    a.q = d_q, a.q_stride = (int64_t)H * hd, a.k = d_k, a.v = d_v, a.kv_stride = (int64_t)Hkv * hd;
    a.probs = d_p, a.probs_heads = d_heads, a.n_probs_heads = 3;
    a.B = B, a.T = T, a.H = H, a.Hkv = Hkv, a.hd = hd;
    cuda_attention_forward_ex(&a); /* out == NULL: probabilities only */
    float *got = host_f32(d_p, np), *ref = xmalloc(np * 4);
    for (int b = 0; b < B; b++)
        for (int s = 0; s < 3; s++)
            memcpy(ref + (((size_t)b * 3 + s) * T) * T, probs + (((size_t)b * H + heads[s]) * T) * T,
                   (size_t)T * T * 4);
    check_close("attention probs of heads {5,0,7} only", got, ref, np, TOL_PROBS);
    cuda_free(d_q), cuda_free(d_k), cuda_free(d_v), cuda_free(d_heads), cuda_free(d_p);
    free(q), free(k), free(v), free(out), free(probs), free(got), free(ref);
}

/* ---- head mask, SwiGLU, residual, gather ------------------------------------ */

TEST(head_mask_matches_cpu) {
    test_seed(114);
    int B = 3, T = 17, H = 8, hd = 64;
    size_t n = (size_t)B * T * H * hd;
    float *x = rnd_bf16(n, 1), *ref = xmalloc(n * 4);
    memcpy(ref, x, n * 4);
    uint8_t keep[24];
    for (int i = 0; i < B * H; i++) keep[i] = (uint8_t)(test_rand_u64() % 2);
    keep[1] = 0, keep[2] = 1;
    head_mask_apply(ref, keep, B, T, H, hd);
    uint16_t *d_x = dev_bf16(x, n);
    uint8_t *d_keep = dev_copy(keep, (size_t)B * H);
    cuda_head_mask_apply(d_x, d_keep, B, T, H, hd);
    float *got = host_bf16(d_x, n);
    check_equal("head_mask B=3 T=17 H=8 hd=64", got, ref, n);
    cuda_free(d_x), cuda_free(d_keep);
    free(x), free(ref), free(got);
}

static void check_swiglu(int64_t n) {
    float *g = rnd_bf16((size_t)n, 4), *u = rnd_bf16((size_t)n, 2), *ref = xmalloc((size_t)n * 4);
    swiglu_forward(ref, g, u, n);
    uint16_t *d_g = dev_bf16(g, (size_t)n), *d_u = dev_bf16(u, (size_t)n), *d_o = dev_poisoned((size_t)n);
    cuda_swiglu_forward(d_o, d_g, d_u, n);
    float *got = host_bf16(d_o, (size_t)n);
    char what[96];
    snprintf(what, sizeof what, "swiglu n=%lld", (long long)n);
    check_close(what, got, ref, (size_t)n, TOL_ELEMENTWISE);
    cuda_free(d_g), cuda_free(d_u), cuda_free(d_o);
    free(g), free(u), free(ref), free(got);
}

static void check_swiglu_fused(int n, int I) {
    float *gu = rnd_bf16((size_t)n * 2 * I, 4);
    float *g = xmalloc((size_t)n * I * 4), *u = xmalloc((size_t)n * I * 4), *ref = xmalloc((size_t)n * I * 4);
    for (int i = 0; i < n; i++) {
        memcpy(g + (size_t)i * I, gu + (size_t)i * 2 * I, (size_t)I * 4);
        memcpy(u + (size_t)i * I, gu + (size_t)i * 2 * I + I, (size_t)I * 4);
    }
    swiglu_forward(ref, g, u, (int64_t)n * I);
    uint16_t *d_gu = dev_bf16(gu, (size_t)n * 2 * I), *d_o = dev_poisoned((size_t)n * I);
    cuda_swiglu_fused_forward(d_o, d_gu, n, I);
    float *got = host_bf16(d_o, (size_t)n * I);
    char what[96];
    snprintf(what, sizeof what, "swiglu fused gate_up n=%d I=%d", n, I);
    check_close(what, got, ref, (size_t)n * I, TOL_ELEMENTWISE);
    cuda_free(d_gu), cuda_free(d_o);
    free(gu), free(g), free(u), free(ref), free(got);
}

TEST(swiglu_matches_cpu) {
    test_seed(115);
    check_swiglu(1);
    check_swiglu(8192 * 4);
    check_swiglu(1001); /* scalar path */
    check_swiglu_fused(33, 8192);
    check_swiglu_fused(7, 100); /* scalar path */
}

static void check_residual(int64_t n) {
    float *x = rnd_bf16((size_t)n, 3), *y = rnd_bf16((size_t)n, 1), *ref = xmalloc((size_t)n * 4);
    memcpy(ref, x, (size_t)n * 4);
    residual_add(ref, y, n);
    uint16_t *d_x = dev_bf16(x, (size_t)n), *d_y = dev_bf16(y, (size_t)n);
    cuda_residual_add(d_x, d_y, n);
    float *got = host_bf16(d_x, (size_t)n);
    char what[96];
    snprintf(what, sizeof what, "residual_add n=%lld", (long long)n);
    check_close(what, got, ref, (size_t)n, TOL_ELEMENTWISE);
    cuda_free(d_x), cuda_free(d_y);
    free(x), free(y), free(ref), free(got);
}

TEST(residual_add_matches_cpu) {
    test_seed(116);
    check_residual(2048 * 33);
    check_residual(999);
}

TEST(gather_rows_and_conversions) {
    test_seed(117);
    int rows = 300, D = 136, nsel = 5;
    float *x = rnd_bf16((size_t)rows * D, 1);
    int32_t sel[5] = {299, 0, 17, 17, 150};
    uint16_t *d_x = dev_bf16(x, (size_t)rows * D), *d_o = dev_poisoned((size_t)nsel * D);
    int32_t *d_sel = dev_copy(sel, sizeof sel);
    cuda_gather_rows(d_o, d_x, d_sel, nsel, D);
    float *got = host_bf16(d_o, (size_t)nsel * D), *ref = xmalloc((size_t)nsel * D * 4);
    for (int r = 0; r < nsel; r++) memcpy(ref + (size_t)r * D, x + (size_t)sel[r] * D, (size_t)D * 4);
    check_equal("gather_rows 5 of 300 x 136", got, ref, (size_t)nsel * D);

    float *d_f = cuda_malloc((size_t)rows * D * 4);
    cuda_bf16_to_f32(d_f, d_x, (int64_t)rows * D);
    float *gf = host_f32(d_f, (size_t)rows * D);
    check_equal("bf16_to_f32 300 x 136", gf, x, (size_t)rows * D);

    /* deterministic uniform fill: in range, mean ≈ 0, same seed same values */
    int64_t n = 1 << 20;
    uint16_t *d_u = cuda_malloc((size_t)n * 2), *d_u2 = cuda_malloc((size_t)n * 2);
    cuda_fill_uniform_bf16(d_u, n, 0.0f, 0.02f, 42);
    cuda_fill_uniform_bf16(d_u2, n, 0.0f, 0.02f, 42);
    float *u = host_bf16(d_u, (size_t)n), *u2 = host_bf16(d_u2, (size_t)n);
    double mean = 0, var = 0;
    size_t out_of_range = 0, differ = 0;
    for (int64_t i = 0; i < n; i++) {
        mean += u[i], var += (double)u[i] * u[i];
        out_of_range += !(fabsf(u[i]) <= 0.02f * (1.0f + 1.0f / 256)); /* bf16 rounding of the bound */
        differ += u[i] != u2[i];
    }
    mean /= (double)n, var /= (double)n;
    printf("#   fill_uniform: mean %.2e, std %.4e (expected %.4e)\n", mean, sqrt(var), 0.02 / sqrt(3.0));
    EXPECT(out_of_range == 0);
    EXPECT(differ == 0);
    EXPECT(fabs(mean) < 1e-4);
    EXPECT(fabs(sqrt(var) - 0.02 / sqrt(3.0)) < 2e-4);
    cuda_free(d_x), cuda_free(d_o), cuda_free(d_sel), cuda_free(d_f), cuda_free(d_u), cuda_free(d_u2);
    free(x), free(got), free(ref), free(gf), free(u), free(u2);
}

int main(void) {
    if (gpu_test_start()) return 1;
    RUN(embedding_matches_cpu);
    RUN(rmsnorm_matches_cpu);
    RUN(linear_matches_cpu);
    RUN(linear_residual_matches_cpu);
    RUN(rope_tables_match_cpu);
    RUN(rope_matches_cpu);
    RUN(attention_flash_matches_cpu);
    RUN(attention_doc_mask_matches_cpu);
    RUN(attention_head_keep_fused_matches_cpu);
    RUN(attention_fused_qkv_layout_matches_cpu);
    RUN(attention_row_kernel_matches_cpu);
    RUN(attention_probs_match_cpu);
    RUN(attention_probs_of_chosen_heads);
    RUN(head_mask_matches_cpu);
    RUN(swiglu_matches_cpu);
    RUN(residual_add_matches_cpu);
    RUN(gather_rows_and_conversions);
    return test_summary();
}
