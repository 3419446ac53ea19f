/* The CUDA DiscreteMamba2 pieces (kernels/dm2_cuda.h) against their CPU
 * twins (lib/dm2.h, lib/ssd.h) on random inputs (never zeros): the conv with
 * document resets on strided rows, the decay, the gate, and the decode step
 * (in_proj, conv state, SSM state, gate, out_proj) over several tokens with
 * resets, with and without out_proj; the conv state after a prompt; the
 * whole mixer (forward, backward of every parameter and the input, stage-1
 * matrix and its backward, prefill then decode).
 *
 * Inputs are rounded to bf16 first and the CPU twins run in fp32 on those
 * values; outputs are poisoned with NaN first.  Parameter gradients
 * accumulate onto random values on both sides. */
#include "dm2.h"
#include "dm2_cuda.h"
#include "dtype.h"
#include "ops_cuda.h"
#include "ssd.h"
#include "test.h"
#include "gpu_test.h"

#define TOL_BF16 1e-2
#define TOL_F32 1e-5

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
/* columns [0, cols) of rows ld apart, packed */
static float *pack_cols(const float *x, size_t rows, int ld, int cols) {
    float *o = xmalloc(rows * cols * sizeof(float) + 4);
    for (size_t r = 0; r < rows; r++) memcpy(o + r * cols, x + r * ld, cols * sizeof(float));
    return o;
}

static void check_close(const char *what, const float *got, const float *ref, size_t n, double tol) {
    double num = 0, den = 0, max_abs = 0;
    size_t nan = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(got[i]) || isnan(ref[i])) {
            nan++;
            continue;
        }
        double d = (double)got[i] - ref[i];
        num += d * d, den += (double)ref[i] * ref[i];
        if (fabs(d) > max_abs) max_abs = fabs(d);
    }
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    printf("#   %-64s rel_l2 %.2e  max_abs %.2e%s\n", what, rel, max_abs, nan ? "  NaN!" : "");
    EXPECT_MSG(nan == 0, "%s: %zu NaN values (unwritten or invalid)", what, nan);
    EXPECT_MSG(rel <= tol, "%s: relative L2 error %.3e > %.1e", what, rel, tol);
}

/* ---- conv ------------------------------------------------------------------------- */

static void check_conv(int B, int T, int C, int ld_in, int docs) {
    const size_t BT = (size_t)B * T;
    float *in = rnd_bf16(BT * ld_in, 1), *w = rnd_f32((size_t)C * 4, 0.7f), *bias = rnd_f32(C, 0.5f);
    float *dout = rnd_bf16(BT * C, 1), *dw0 = rnd_f32((size_t)C * 4, 1), *db0 = rnd_f32(C, 1);
    uint8_t *starts = NULL;
    if (docs) {
        starts = xmalloc(BT);
        for (size_t i = 0; i < BT; i++) starts[i] = test_rand_u64() % 13 == 0;
    }
    float *out_ref = xmalloc(BT * C * 4), *din_ref = xcalloc(BT * ld_in, 4);
    float *dw_ref = xmalloc((size_t)C * 16), *db_ref = xmalloc((size_t)C * 4);
    memcpy(dw_ref, dw0, (size_t)C * 16), memcpy(db_ref, db0, (size_t)C * 4);
    dm2_conv_forward(out_ref, C, in, ld_in, w, bias, starts, B, T, C);
    dm2_conv_backward(din_ref, ld_in, dw_ref, db_ref, dout, C, in, ld_in, w, starts, B, T, C);

    uint16_t *d_in = dev_bf16(in, BT * ld_in), *d_dout = dev_bf16(dout, BT * C);
    uint16_t *d_out = dev_poisoned(BT * C * 2), *d_din = dev_poisoned(BT * ld_in * 2);
    float *d_w = dev_copy(w, (size_t)C * 16), *d_b = dev_copy(bias, (size_t)C * 4);
    float *d_dw = dev_copy(dw0, (size_t)C * 16), *d_db = dev_copy(db0, (size_t)C * 4);
    uint8_t *d_st = dev_copy(starts, BT);
    cuda_dm2_conv_forward(d_out, C, d_in, ld_in, d_w, d_b, d_st, B, T, C);
    cuda_dm2_conv_backward(d_din, ld_in, d_dw, d_db, d_dout, C, d_in, ld_in, d_w, d_st, B, T, C, NULL);
    float *out = host_bf16(d_out, BT * C), *din_all = host_bf16(d_din, BT * ld_in);
    float *dw = host_f32(d_dw, (size_t)C * 4), *db = host_f32(d_db, C);
    float *din = pack_cols(din_all, BT, ld_in, C), *din_r = pack_cols(din_ref, BT, ld_in, C);

    char what[128];
    snprintf(what, sizeof what, "dm2 conv out B=%d T=%d C=%d ld_in=%d%s", B, T, C, ld_in, docs ? " docs" : "");
    check_close(what, out, out_ref, BT * C, TOL_BF16);
    snprintf(what, sizeof what, "dm2 conv din B=%d T=%d C=%d ld_in=%d%s", B, T, C, ld_in, docs ? " docs" : "");
    check_close(what, din, din_r, BT * C, TOL_BF16);
    snprintf(what, sizeof what, "dm2 conv dw (accumulated) C=%d", C);
    check_close(what, dw, dw_ref, (size_t)C * 4, TOL_F32);
    snprintf(what, sizeof what, "dm2 conv dbias (accumulated) C=%d", C);
    check_close(what, db, db_ref, C, TOL_F32);

    cuda_free(d_in), cuda_free(d_dout), cuda_free(d_out), cuda_free(d_din), cuda_free(d_w), cuda_free(d_b);
    cuda_free(d_dw), cuda_free(d_db), cuda_free(d_st);
    free(in), free(w), free(bias), free(dout), free(dw0), free(db0), free(starts), free(out_ref), free(din_ref);
    free(dw_ref), free(db_ref), free(out), free(din_all), free(dw), free(db), free(din), free(din_r);
}

TEST(conv_matches_cpu) {
    test_seed(301);
    check_conv(2, 300, 4096 + 2 * 64, 2 * 4096 + 2 * 64 + 32, 1); /* Llama-1B x|B|C inside the fused proj row */
    check_conv(3, 77, 33, 40, 1);
    check_conv(1, 3, 70, 70, 0); /* fewer tokens than taps */
    check_conv(2, 9000, 96, 96, 1); /* > 256 x 64 rows: 72-row blocks of partial sums */
}

/* ---- decay and gate ------------------------------------------------------------------ */

TEST(decay_and_gate_match_cpu) {
    test_seed(302);
    const int64_t rows = 1000;
    const int H = 32, ld = 300, inner = 2048, ldz = 2048 + 96;
    float *Al = rnd_bf16((size_t)rows * ld, 4), *da = rnd_f32((size_t)rows * H, 1);
    float *Alp = pack_cols(Al, rows, ld, H), *a_ref = xmalloc(rows * H * 4), *dAl_ref = xmalloc(rows * H * 4);
    ssd_decay_forward(a_ref, Alp, rows * H);
    ssd_decay_backward(dAl_ref, da, Alp, rows * H);
    uint16_t *d_Al = dev_bf16(Al, (size_t)rows * ld), *d_dAl = dev_poisoned((size_t)rows * ld * 2);
    float *d_a = dev_poisoned(rows * H * 4), *d_da = dev_copy(da, rows * H * 4);
    cuda_dm2_decay_forward(d_a, d_Al, ld, rows, H);
    cuda_dm2_decay_backward(d_dAl, ld, d_da, d_Al, ld, rows, H);
    float *a = host_f32(d_a, rows * H), *dAl_all = host_bf16(d_dAl, (size_t)rows * ld);
    float *dAl = pack_cols(dAl_all, rows, ld, H);
    check_close("dm2 decay a = -softplus(A_log)", a, a_ref, rows * H, 1e-6);
    check_close("dm2 decay dA_log", dAl, dAl_ref, rows * H, TOL_BF16);

    float *y = rnd_bf16((size_t)rows * inner, 1), *z = rnd_bf16((size_t)rows * ldz, 3), *zb = rnd_f32(inner, 1);
    float *dyg = rnd_bf16((size_t)rows * inner, 1), *dzb0 = rnd_f32(inner, 1);
    float *yg_ref = xmalloc(rows * inner * 4), *dy_ref = xmalloc(rows * inner * 4), *dz_ref = xmalloc(rows * inner * 4);
    double *dzb_ref = xcalloc(inner, sizeof(double));
    for (int64_t r = 0; r < rows; r++)
        for (int i = 0; i < inner; i++) {
            double v = (double)z[r * ldz + i] + zb[i], sg = 1 / (1 + exp(-v)), g = dyg[r * inner + i];
            double gz = g * y[r * inner + i] * sg * (1 + v * (1 - sg));
            yg_ref[r * inner + i] = (float)(y[r * inner + i] * v * sg);
            dy_ref[r * inner + i] = (float)(g * v * sg);
            dz_ref[r * inner + i] = (float)gz;
            dzb_ref[i] += gz;
        }
    float *dzb_reff = xmalloc(inner * 4);
    for (int i = 0; i < inner; i++) dzb_reff[i] = (float)(dzb_ref[i] + dzb0[i]);
    uint16_t *d_y = dev_bf16(y, (size_t)rows * inner), *d_z = dev_bf16(z, (size_t)rows * ldz);
    uint16_t *d_dyg = dev_bf16(dyg, (size_t)rows * inner), *d_yg = dev_poisoned((size_t)rows * inner * 2);
    uint16_t *d_dy = dev_poisoned((size_t)rows * inner * 2), *d_dz = dev_poisoned((size_t)rows * ldz * 2);
    float *d_zb = dev_copy(zb, inner * 4), *d_dzb = dev_copy(dzb0, inner * 4);
    cuda_dm2_gate_forward(d_yg, d_y, d_z, ldz, d_zb, rows, inner);
    cuda_dm2_gate_backward(d_dy, d_dz, ldz, d_dzb, d_dyg, d_y, d_z, ldz, d_zb, rows, inner, NULL);
    float *yg = host_bf16(d_yg, (size_t)rows * inner), *dy = host_bf16(d_dy, (size_t)rows * inner);
    float *dz_all = host_bf16(d_dz, (size_t)rows * ldz), *dzb = host_f32(d_dzb, inner);
    float *dz = pack_cols(dz_all, rows, ldz, inner);
    check_close("dm2 gate yg = y*silu(z+z_bias)", yg, yg_ref, rows * inner, TOL_BF16);
    check_close("dm2 gate dy", dy, dy_ref, rows * inner, TOL_BF16);
    check_close("dm2 gate dz", dz, dz_ref, rows * inner, TOL_BF16);
    check_close("dm2 gate dz_bias (accumulated)", dzb, dzb_reff, inner, 1e-5);

    cuda_free(d_Al), cuda_free(d_dAl), cuda_free(d_a), cuda_free(d_da), cuda_free(d_y), cuda_free(d_z);
    cuda_free(d_dyg), cuda_free(d_yg), cuda_free(d_dy), cuda_free(d_dz), cuda_free(d_zb), cuda_free(d_dzb);
    free(Al), free(da), free(Alp), free(a_ref), free(dAl_ref), free(a), free(dAl_all), free(dAl);
    free(y), free(z), free(zb), free(dyg), free(dzb0), free(yg_ref), free(dy_ref), free(dz_ref), free(dzb_ref);
    free(dzb_reff), free(yg), free(dy), free(dz_all), free(dzb), free(dz);
}

/* ---- decode ------------------------------------------------------------------------- */

/* Random parameters with the two projections rounded to bf16 (what the GPU
 * stores), so both sides use the same weights. */
static void random_params(dm2_params *p, const dm2_config *cfg) {
    dm2_params_alloc(p, cfg);
    size_t n = dm2_param_count(cfg);
    for (size_t i = 0; i < n; i++) p->memory[i] = 0.3f * test_randf();
    size_t nin = (size_t)dm2_in_proj_dim(cfg) * cfg->d_model;
    for (size_t i = 0; i < nin; i++) p->in_proj_w[i] = ra_bf16_to_f32(ra_f32_to_bf16(p->in_proj_w[i]));
    if (cfg->has_out_proj)
        for (size_t i = 0; i < (size_t)cfg->d_model * dm2_d_inner(cfg); i++)
            p->out_proj_w[i] = ra_bf16_to_f32(ra_f32_to_bf16(p->out_proj_w[i]));
}

static void check_step(int B, dm2_config cfg, int steps) {
    dm2_params prm;
    random_params(&prm, &cfg);
    cuda_dm2_params dprm;
    cuda_dm2_params_upload(&dprm, &prm, &cfg);
    ra_error err = {0, ""};
    dm2_cache *cpu = dm2_cache_alloc(B, &cfg, &err);
    cuda_dm2_cache *gpu = cuda_dm2_cache_alloc(B, &cfg, &err);
    EXPECT(cpu && gpu);
    const int D = cfg.d_model, od = dm2_out_dim(&cfg);
    float *out_ref = xmalloc((size_t)B * od * 4);
    uint16_t *d_u = cuda_malloc((size_t)B * D * 2), *d_out = cuda_malloc((size_t)B * od * 2);
    uint8_t *reset = xmalloc(B), *d_reset = cuda_malloc(B);
    double num = 0, den = 0;
    size_t nan = 0;
    for (int s = 0; s < steps; s++) {
        float *u = rnd_bf16((size_t)B * D, 1);
        const int with_reset = s % 2; /* odd steps pass a reset array, even ones NULL */
        for (int b = 0; b < B; b++) reset[b] = with_reset && test_rand_u64() % 3 == 0;
        dm2_step(out_ref, cpu, &prm, u, with_reset ? reset : NULL);
        cuda_upload_bf16(d_u, u, (size_t)B * D);
        cuda_upload(d_reset, reset, B);
        cuda_memset(d_out, 0xFF, (size_t)B * od * 2);
        cuda_dm2_step(d_out, gpu, &dprm, d_u, with_reset ? d_reset : NULL);
        float *out = host_bf16(d_out, (size_t)B * od);
        for (size_t i = 0; i < (size_t)B * od; i++) {
            if (isnan(out[i])) {
                nan++;
                continue;
            }
            num += ((double)out[i] - out_ref[i]) * ((double)out[i] - out_ref[i]);
            den += (double)out_ref[i] * out_ref[i];
        }
        free(u), free(out);
    }
    char what[160];
    snprintf(what, sizeof what, "dm2 step B=%d D=%d H=%d P=%d N=%d G=%d %s, %d tokens: out", B, D, cfg.n_heads,
             cfg.head_dim, cfg.d_state, cfg.n_groups, cfg.has_out_proj ? "out_proj" : "routed", steps);
    double rel = sqrt(num / den);
    printf("#   %-64s rel_l2 %.2e%s\n", what, rel, nan ? "  NaN!" : "");
    EXPECT(nan == 0);
    EXPECT_MSG(rel <= 2e-2, "%s: relative L2 error %.3e", what, rel);
    size_t ns = (size_t)B * cfg.n_heads * cfg.head_dim * cfg.d_state, nc = (size_t)B * dm2_conv_dim(&cfg) * 4;
    float *ssm = host_f32(gpu->ssm, ns), *conv = host_f32(gpu->conv, nc);
    snprintf(what, sizeof what, "dm2 step B=%d %s: ssm state", B, cfg.has_out_proj ? "out_proj" : "routed");
    check_close(what, ssm, cpu->ssm, ns, 2e-2);
    snprintf(what, sizeof what, "dm2 step B=%d %s: conv state", B, cfg.has_out_proj ? "out_proj" : "routed");
    check_close(what, conv, cpu->conv, nc, TOL_BF16);
    free(ssm), free(conv), free(out_ref), free(reset);
    cuda_free(d_u), cuda_free(d_out), cuda_free(d_reset);
    dm2_cache_free(cpu), cuda_dm2_cache_free(gpu), cuda_dm2_params_free(&dprm), dm2_params_free(&prm);
}

TEST(step_matches_cpu) {
    test_seed(303);
    dm2_config routed = {256, 8, 32, 16, 2, 0, 0};
    dm2_config full = {128, 4, 64, 64, 4, 0, 1};
    dm2_config odd = {96, 6, 24, 8, 3, 0, 1};
    check_step(5, routed, 8);
    check_step(3, full, 6);
    check_step(64, odd, 4);
}

/* The conv state a prompt leaves, against dm2_prefill. */
TEST(conv_state_from_prompt_matches_prefill) {
    test_seed(304);
    dm2_config cfg = {64, 4, 16, 8, 2, 0, 1};
    const int B = 4, T = 20, in_dim = dm2_in_proj_dim(&cfg), conv = dm2_conv_dim(&cfg);
    dm2_params prm;
    random_params(&prm, &cfg);
    ra_error err;
    dm2_acts *s = dm2_alloc_state(B, T, &cfg, &err);
    dm2_cache *c = dm2_cache_alloc(B, &cfg, &err);
    float *u = rnd_f32((size_t)B * T * cfg.d_model, 1), *out = xmalloc((size_t)B * T * cfg.d_model * 4);
    uint8_t st[4 * 20] = {0};
    st[0] = 1, st[20 + 18] = 1, st[40 + 5] = 1, st[60 + 19] = 1; /* documents starting late cut the window */
    dm2_prefill(out, s, c, &prm, u, st);
    uint16_t *d_proj = dev_bf16(s->proj, (size_t)B * T * in_dim);
    uint8_t *d_st = dev_copy(st, sizeof st);
    float *d_cs = dev_poisoned((size_t)B * conv * 4 * 4);
    cuda_dm2_conv_state_from_prompt(d_cs, d_proj, in_dim, d_st, B, T, conv);
    float *cs = host_f32(d_cs, (size_t)B * conv * 4);
    check_close("dm2 conv state after a prompt (vs dm2_prefill)", cs, c->conv, (size_t)B * conv * 4, TOL_BF16);
    cuda_free(d_proj), cuda_free(d_st), cuda_free(d_cs);
    free(u), free(out), free(cs);
    dm2_free_state(s), dm2_cache_free(c), dm2_params_free(&prm);
}

/* ---- the whole mixer ----------------------------------------------------------- */

/* grads block on the device → a host dm2_params block of the same layout */
static void download_grads(dm2_params *h, const cuda_dm2_grads *g, const dm2_config *cfg) {
    dm2_params_alloc(h, cfg);
    cuda_synchronize();
    cuda_download(h->memory, g->memory, dm2_param_count(cfg) * sizeof(float));
}

static void check_param_grads(const char *tag, const dm2_params *got, const dm2_params *ref, const dm2_config *cfg,
                              double tol) {
    size_t D = cfg->d_model, inner = dm2_d_inner(cfg), conv = dm2_conv_dim(cfg);
    struct {
        const char *name;
        const float *g, *r;
        size_t n;
    } t[] = {{"d in_proj_w", got->in_proj_w, ref->in_proj_w, (size_t)dm2_in_proj_dim(cfg) * D},
             {"d conv_w", got->conv_w, ref->conv_w, conv * 4},
             {"d conv_b", got->conv_b, ref->conv_b, conv},
             {"d D", got->D, ref->D, (size_t)cfg->n_heads},
             {"d z_bias", got->z_bias, ref->z_bias, inner},
             {"d out_proj_w", got->out_proj_w, ref->out_proj_w, cfg->has_out_proj ? D * inner : 0}};
    char what[160];
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        if (!t[i].n) continue;
        snprintf(what, sizeof what, "dm2 mixer %s %s", t[i].name, tag);
        check_close(what, t[i].g, t[i].r, t[i].n, tol);
    }
}

static void check_mixer(int B, int T, dm2_config cfg) {
    const int D = cfg.d_model, od = dm2_out_dim(&cfg);
    const size_t BT = (size_t)B * T, ns = (size_t)B * cfg.n_heads * cfg.head_dim * cfg.d_state;
    dm2_params prm, g_ref;
    random_params(&prm, &cfg);
    dm2_params_alloc(&g_ref, &cfg);
    ra_error err = {0, ""};
    dm2_acts *s = dm2_alloc_state(B, T, &cfg, &err);
    float *u = rnd_bf16(BT * D, 1), *dout = rnd_bf16(BT * od, 1);
    uint8_t *st = xmalloc(BT);
    for (size_t i = 0; i < BT; i++) st[i] = test_rand_u64() % 97 == 0;
    float *out_ref = xmalloc(BT * od * 4), *fin_ref = xmalloc(ns * 4), *du_ref = xcalloc(BT * D, 4);
    dm2_forward(out_ref, fin_ref, s, &prm, u, st);
    dm2_backward(&g_ref, du_ref, dout, s, &prm, u, st);

    cuda_dm2_params dp;
    cuda_dm2_params_upload(&dp, &prm, &cfg);
    cuda_dm2_acts *ds = cuda_dm2_acts_alloc(B, T, &cfg, &err);
    EXPECT_MSG(ds != NULL, "cuda_dm2_acts_alloc: %s", err.msg);
    cuda_dm2_grads dg;
    cuda_dm2_grads_alloc(&dg, &cfg);
    uint16_t *d_u = dev_bf16(u, BT * D), *d_dout = dev_bf16(dout, BT * od), *d_out = dev_poisoned(BT * od * 2);
    uint16_t *d_du = cuda_malloc(BT * D * 2);
    cuda_memset(d_du, 0, BT * D * 2);
    float *d_fin = dev_poisoned(ns * 4);
    uint8_t *d_st = dev_copy(st, BT);
    cuda_dm2_forward(d_out, d_fin, ds, &dp, d_u, d_st);
    cuda_dm2_backward(&dg, d_du, d_dout, ds, &dp, d_u, d_st);
    float *out = host_bf16(d_out, BT * od), *fin = host_f32(d_fin, ns), *du = host_bf16(d_du, BT * D);
    dm2_params g;
    download_grads(&g, &dg, &cfg);

    char tag[128], what[200];
    snprintf(tag, sizeof tag, "B=%d T=%d D=%d H=%d P=%d N=%d G=%d %s", B, T, D, cfg.n_heads, cfg.head_dim, cfg.d_state,
             cfg.n_groups, cfg.has_out_proj ? "out_proj" : "routed");
    snprintf(what, sizeof what, "dm2 mixer out %s", tag);
    check_close(what, out, out_ref, BT * od, 2e-2);
    snprintf(what, sizeof what, "dm2 mixer final_state %s", tag);
    check_close(what, fin, fin_ref, ns, 2e-2);
    snprintf(what, sizeof what, "dm2 mixer du %s", tag);
    check_close(what, du, du_ref, BT * D, 3e-2);
    check_param_grads(tag, &g, &g_ref, &cfg, 3e-2);

    cuda_free(d_u), cuda_free(d_dout), cuda_free(d_out), cuda_free(d_du), cuda_free(d_fin), cuda_free(d_st);
    cuda_dm2_grads_free(&dg), cuda_dm2_acts_free(ds), cuda_dm2_params_free(&dp);
    dm2_params_free(&prm), dm2_params_free(&g_ref), dm2_params_free(&g), dm2_free_state(s);
    free(u), free(dout), free(st), free(out_ref), free(fin_ref), free(du_ref), free(out), free(fin), free(du);
}

TEST(mixer_forward_backward_match_cpu) {
    test_seed(305);
    check_mixer(2, 300, (dm2_config){128, 4, 32, 16, 2, 0, 1});
    check_mixer(1, 257, (dm2_config){64, 2, 64, 64, 2, 0, 0});
    check_mixer(2, 130, (dm2_config){96, 6, 16, 8, 3, 64, 1});
}

TEST(mixer_matrix_matches_cpu) {
    test_seed(306);
    dm2_config cfg = {64, 4, 16, 16, 2, 0, 1};
    const int B = 2, T = 150, D = cfg.d_model, H = cfg.n_heads;
    const size_t BT = (size_t)B * T, nt = (size_t)B * H * T * T;
    dm2_params prm, g_ref;
    random_params(&prm, &cfg);
    dm2_params_alloc(&g_ref, &cfg);
    ra_error err = {0, ""};
    dm2_acts *s = dm2_alloc_state(B, T, &cfg, &err);
    float *u = rnd_bf16(BT * D, 1), *dT = rnd_f32(nt, 1), *T_ref = xmalloc(nt * 4), *du_ref = xcalloc(BT * D, 4);
    uint8_t st[2 * 150] = {0};
    st[0] = st[77] = st[150 + 31] = 1;
    dm2_matrix_forward(T_ref, s, &prm, u, st);
    dm2_matrix_backward(&g_ref, du_ref, dT, s, &prm, u, st);

    cuda_dm2_params dp;
    cuda_dm2_params_upload(&dp, &prm, &cfg);
    cuda_dm2_acts *ds = cuda_dm2_acts_alloc(B, T, &cfg, &err);
    cuda_dm2_grads dg;
    cuda_dm2_grads_alloc(&dg, &cfg);
    uint16_t *d_u = dev_bf16(u, BT * D), *d_du = cuda_malloc(BT * D * 2);
    cuda_memset(d_du, 0, BT * D * 2);
    float *d_T = dev_poisoned(nt * 4), *d_dT = dev_copy(dT, nt * 4);
    uint8_t *d_st = dev_copy(st, sizeof st);
    cuda_dm2_matrix_forward(d_T, ds, &dp, d_u, d_st);
    cuda_dm2_matrix_backward(&dg, d_du, d_dT, ds, &dp, d_u, d_st);
    float *Tm = host_f32(d_T, nt), *du = host_bf16(d_du, BT * D);
    dm2_params g;
    download_grads(&g, &dg, &cfg);
    check_close("dm2 mixer matrix T (stage 1)", Tm, T_ref, nt, 2e-2);
    check_close("dm2 mixer matrix du", du, du_ref, BT * D, 3e-2);
    check_param_grads("(matrix)", &g, &g_ref, &cfg, 3e-2);
    cuda_free(d_u), cuda_free(d_du), cuda_free(d_T), cuda_free(d_dT), cuda_free(d_st);
    cuda_dm2_grads_free(&dg), cuda_dm2_acts_free(ds), cuda_dm2_params_free(&dp);
    dm2_params_free(&prm), dm2_params_free(&g_ref), dm2_params_free(&g), dm2_free_state(s);
    free(u), free(dT), free(T_ref), free(du_ref), free(Tm), free(du);
}

/* Prefill a prompt then decode tokens, both sides. */
TEST(prefill_then_step_matches_cpu) {
    test_seed(307);
    dm2_config cfg = {128, 4, 32, 32, 2, 0, 1};
    const int B = 3, T = 140, D = cfg.d_model, steps = 4;
    const size_t BT = (size_t)B * T;
    dm2_params prm;
    random_params(&prm, &cfg);
    ra_error err = {0, ""};
    dm2_acts *s = dm2_alloc_state(B, T, &cfg, &err);
    dm2_cache *c = dm2_cache_alloc(B, &cfg, &err);
    float *u = rnd_bf16(BT * D, 1), *out_ref = xmalloc(BT * D * 4), *o_ref = xmalloc((size_t)B * D * 4);
    uint8_t st[3 * 140] = {0};
    st[0] = st[140 + 0] = st[140 + 137] = st[280 + 60] = 1; /* row 1's last document is 3 tokens long */
    dm2_prefill(out_ref, s, c, &prm, u, st);

    cuda_dm2_params dp;
    cuda_dm2_params_upload(&dp, &prm, &cfg);
    cuda_dm2_acts *ds = cuda_dm2_acts_alloc(B, T, &cfg, &err);
    cuda_dm2_cache *dc = cuda_dm2_cache_alloc(B, &cfg, &err);
    uint16_t *d_u = dev_bf16(u, BT * D), *d_out = dev_poisoned(BT * D * 2), *d_o = cuda_malloc((size_t)B * D * 2);
    uint8_t *d_st = dev_copy(st, sizeof st);
    cuda_dm2_prefill(d_out, ds, dc, &dp, d_u, d_st);
    float *out = host_bf16(d_out, BT * D);
    check_close("dm2 prefill out", out, out_ref, BT * D, 2e-2);
    double num = 0, den = 0;
    for (int k = 0; k < steps; k++) {
        float *ut = rnd_bf16((size_t)B * D, 1);
        dm2_step(o_ref, c, &prm, ut, NULL);
        uint16_t *d_ut = dev_bf16(ut, (size_t)B * D);
        cuda_dm2_step(d_o, dc, &dp, d_ut, NULL);
        float *o = host_bf16(d_o, (size_t)B * D);
        for (size_t i = 0; i < (size_t)B * D; i++) num += (o[i] - (double)o_ref[i]) * (o[i] - o_ref[i]), den += (double)o_ref[i] * o_ref[i];
        cuda_free(d_ut);
        free(ut), free(o);
    }
    printf("#   %-64s rel_l2 %.2e\n", "dm2 decode after prefill (4 tokens)", sqrt(num / den));
    EXPECT(sqrt(num / den) <= 2e-2);
    cuda_free(d_u), cuda_free(d_out), cuda_free(d_o), cuda_free(d_st);
    cuda_dm2_cache_free(dc), cuda_dm2_acts_free(ds), cuda_dm2_params_free(&dp);
    dm2_cache_free(c), dm2_free_state(s), dm2_params_free(&prm);
    free(u), free(out_ref), free(o_ref), free(out);
}

int main(void) {
    if (gpu_test_start()) return 1;
    RUN(conv_matches_cpu);
    RUN(decay_and_gate_match_cpu);
    RUN(step_matches_cpu);
    RUN(conv_state_from_prompt_matches_prefill);
    RUN(mixer_forward_backward_match_cpu);
    RUN(mixer_matrix_matches_cpu);
    RUN(prefill_then_step_matches_cpu);
    return test_summary();
}
