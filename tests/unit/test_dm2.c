/* DiscreteMamba2 mixer: forward vs a float64 reference written here from
 * DESIGN §2.4, finite-difference gradients of every parameter and the input
 * (with and without out_proj, with document resets), decode == forward,
 * mohawk initialisation. */
#include "dm2.h"
#include "test.h"

/* ---------- float64 reference ---------- */

typedef struct ref_params {
    double *W, *cw, *cb, *D, *zb, *Wo; /* same shapes as dm2_params */
} ref_params;

static double softplus_d(double x) { return (x > 0 ? x : 0) + log1p(exp(-fabs(x))); }
static double sigmoid_d(double x) { return 1 / (1 + exp(-x)); }

/* One batch row: proj [T,in_dim] = u Wᵀ and xbc [T,conv] = the causal conv
 * of its first conv columns, taps limited to the current document. */
static void ref_project(double *proj, double *xbc, const dm2_config *c, const ref_params *p, const double *u,
                        const uint8_t *starts, int T) {
    const int D = c->d_model, conv = dm2_conv_dim(c), in_dim = dm2_in_proj_dim(c);
    for (int t = 0; t < T; t++)
        for (int j = 0; j < in_dim; j++) {
            double acc = 0;
            for (int k = 0; k < D; k++) acc += u[(int64_t)t * D + k] * p->W[(int64_t)j * D + k];
            proj[t * in_dim + j] = acc;
        }
    int doc = 0;
    for (int t = 0; t < T; t++) {
        if (starts && starts[t]) doc = t;
        for (int ch = 0; ch < conv; ch++) {
            double acc = p->cb[ch];
            for (int j = 0; j < 4; j++) {
                int src = t - 3 + j;
                if (src >= doc) acc += p->cw[ch * 4 + j] * proj[src * in_dim + ch];
            }
            xbc[t * conv + ch] = acc;
        }
    }
}

/* Tm [B,H,T,T] of the mixer from the definition:
 * (C_l·B_s)·Π_{k=s+1..l} exp(a_k) within a document, + D on the diagonal. */
static void ref_mixer_matrix(double *Tm, const dm2_config *c, const ref_params *p, const double *u,
                             const uint8_t *starts, int B, int T) {
    const int H = c->n_heads, N = c->d_state, G = c->n_groups, inner = dm2_d_inner(c), gn = G * N;
    const int conv = dm2_conv_dim(c), in_dim = dm2_in_proj_dim(c);
    double *proj = malloc(sizeof(double) * T * in_dim), *xbc = malloc(sizeof(double) * T * conv);
    for (int b = 0; b < B; b++) {
        ref_project(proj, xbc, c, p, u + (int64_t)b * T * c->d_model, starts ? starts + b * T : NULL, T);
        for (int h = 0; h < H; h++) {
            int g = h / (H / G);
            double *Th = Tm + ((int64_t)b * H + h) * T * T;
            for (int l = 0; l < T; l++) {
                for (int s = 0; s < T; s++) Th[(int64_t)l * T + s] = 0;
                double decay = 1;
                for (int s = l; s >= 0; s--) {
                    if (s < l) {
                        if (starts && starts[b * T + s + 1]) break;
                        decay *= exp(-softplus_d(proj[(s + 1) * in_dim + conv + inner + h]));
                    }
                    double cb = 0;
                    for (int n = 0; n < N; n++)
                        cb += xbc[l * conv + inner + gn + g * N + n] * xbc[s * conv + inner + g * N + n];
                    Th[(int64_t)l * T + s] = cb * decay + (s == l ? p->D[h] : 0);
                }
            }
        }
    }
    free(proj), free(xbc);
}

/* out [B,T,out_dim] from the definition, token by token. */
static void ref_mixer(double *out, const dm2_config *c, const ref_params *p, const double *u, const uint8_t *starts,
                      int B, int T) {
    const int D = c->d_model, H = c->n_heads, P = c->head_dim, N = c->d_state, G = c->n_groups;
    const int inner = H * P, gn = G * N, conv = inner + 2 * gn, in_dim = conv + inner + H;
    double *proj = malloc(sizeof(double) * T * in_dim), *xbc = malloc(sizeof(double) * T * conv);
    double *S = malloc(sizeof(double) * H * P * N), *yg = malloc(sizeof(double) * inner);
    for (int b = 0; b < B; b++) {
        ref_project(proj, xbc, c, p, u + (int64_t)b * T * D, starts ? starts + b * T : NULL, T);
        for (int i = 0; i < H * P * N; i++) S[i] = 0;
        for (int t = 0; t < T; t++) {
            if (starts && starts[b * T + t])
                for (int i = 0; i < H * P * N; i++) S[i] = 0;
            for (int h = 0; h < H; h++) {
                int g = h / (H / G);
                double alpha = exp(-softplus_d(proj[t * in_dim + conv + inner + h]));
                const double *x = xbc + t * conv + h * P, *Bv = xbc + t * conv + inner + g * N;
                const double *Cv = xbc + t * conv + inner + gn + g * N;
                for (int q = 0; q < P; q++) {
                    double acc = 0;
                    for (int n = 0; n < N; n++) {
                        double *s = S + (h * P + q) * N + n;
                        *s = alpha * *s + x[q] * Bv[n];
                        acc += *s * Cv[n];
                    }
                    double y = acc + p->D[h] * x[q];
                    double v = proj[t * in_dim + conv + h * P + q] + p->zb[h * P + q];
                    yg[h * P + q] = y * v * sigmoid_d(v);
                }
            }
            double *o = out + ((int64_t)b * T + t) * (c->has_out_proj ? D : inner);
            if (c->has_out_proj)
                for (int k = 0; k < D; k++) {
                    double acc = 0;
                    for (int i = 0; i < inner; i++) acc += yg[i] * p->Wo[(int64_t)k * inner + i];
                    o[k] = acc;
                }
            else
                for (int i = 0; i < inner; i++) o[i] = yg[i];
        }
    }
    free(proj), free(xbc), free(S), free(yg);
}

/* ---------- a random problem ---------- */

typedef struct mixer_prob {
    dm2_config cfg;
    int B, T;
    dm2_params p;
    ref_params r;
    float *u, *R; /* input [B,T,D]; loss weights [B,T,out_dim] */
    double *ud, *Rd;
    uint8_t *starts;
} mixer_prob;

static double *dcopy(const float *src, size_t n) {
    double *d = malloc(sizeof(double) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) d[i] = src[i];
    return d;
}

/* Random parameters (not the mohawk init: every parameter non-trivial), the
 * A_log rows scaled so that A_log spans about ±5 (decays from ~0.99 to
 * ~0.01), random documents. */
static mixer_prob make_mixer(dm2_config cfg, int B, int T, double p_start, uint64_t seed) {
    mixer_prob m = {.cfg = cfg, .B = B, .T = T};
    test_seed(seed);
    dm2_params_alloc(&m.p, &cfg);
    const int D = cfg.d_model, inner = dm2_d_inner(&cfg), conv = dm2_conv_dim(&cfg), in_dim = dm2_in_proj_dim(&cfg);
    test_fill(m.p.in_proj_w, (size_t)in_dim * D, 1.0f / sqrtf(D));
    test_fill(m.p.in_proj_w + (size_t)(conv + inner) * D, (size_t)cfg.n_heads * D, 4.0f / sqrtf(D));
    test_fill(m.p.conv_w, (size_t)conv * 4, 0.6f);
    test_fill(m.p.conv_b, conv, 0.3f);
    for (int h = 0; h < cfg.n_heads; h++) m.p.D[h] = 1 + 0.5f * test_randf();
    for (int i = 0; i < inner; i++) m.p.z_bias[i] = 1.2f + 0.5f * test_randf();
    if (cfg.has_out_proj) test_fill(m.p.out_proj_w, (size_t)D * inner, 1.0f / sqrtf(inner));
    size_t nu = (size_t)B * T * D, no = (size_t)B * T * dm2_out_dim(&cfg);
    m.u = malloc(sizeof(float) * nu);
    m.R = malloc(sizeof(float) * no);
    test_fill(m.u, nu, 1.5f);
    test_fill(m.R, no, 1);
    m.starts = calloc((size_t)B * T, 1);
    for (int i = 0; i < B * T; i++) m.starts[i] = p_start > 0 && (test_randf() + 1) / 2 < p_start;
    if (p_start > 0 && B > 1) m.starts[T] = 1; /* row 1 begins with an explicit start */
    m.ud = dcopy(m.u, nu);
    m.Rd = dcopy(m.R, no);
    m.r.W = dcopy(m.p.in_proj_w, (size_t)in_dim * D);
    m.r.cw = dcopy(m.p.conv_w, (size_t)conv * 4);
    m.r.cb = dcopy(m.p.conv_b, conv);
    m.r.D = dcopy(m.p.D, cfg.n_heads);
    m.r.zb = dcopy(m.p.z_bias, inner);
    m.r.Wo = cfg.has_out_proj ? dcopy(m.p.out_proj_w, (size_t)D * inner) : NULL;
    return m;
}

static void free_mixer(mixer_prob *m) {
    dm2_params_free(&m->p);
    free(m->u), free(m->R), free(m->ud), free(m->Rd), free(m->starts);
    free(m->r.W), free(m->r.cw), free(m->r.cb), free(m->r.D), free(m->r.zb), free(m->r.Wo);
}

static double rel_err(const float *got, const double *want, int64_t n) {
    double e = 0, m = 1e-30;
    for (int64_t i = 0; i < n; i++) {
        double di = fabs(got[i] - want[i]);
        if (!(di <= e)) e = di;
        if (fabs(want[i]) > m) m = fabs(want[i]);
    }
    return e / m;
}

static double worst_seen;
static void seen(double e) {
    if (!(e <= worst_seen)) worst_seen = e;
}
static void report(const char *what) {
    printf("# %s: worst relative error %.3g\n", what, worst_seen);
    worst_seen = 0;
}

/* ---------- forward ---------- */

static void check_forward(dm2_config cfg, int B, int T, double p_start, uint64_t seed) {
    mixer_prob m = make_mixer(cfg, B, T, p_start, seed);
    int64_t no = (int64_t)B * T * dm2_out_dim(&cfg);
    double *want = malloc(sizeof(double) * no);
    ref_mixer(want, &cfg, &m.r, m.ud, m.starts, B, T);
    float *out = malloc(sizeof(float) * no);
    ra_error err = {0};
    dm2_acts *s = dm2_alloc_state(B, T, &cfg, &err);
    EXPECT(s != NULL);
    dm2_forward(out, NULL, s, &m.p, m.u, m.starts);
    double e = rel_err(out, want, no);
    seen(e);
    EXPECT_MSG(e <= 1e-5, "T=%d chunk=%d out_proj=%d resets=%g: rel err %.3g", T, cfg.chunk, cfg.has_out_proj,
               p_start, e);
    dm2_free_state(s);
    free(want), free(out);
    free_mixer(&m);
}

TEST(forward_matches_float64_reference) {
    dm2_config cfg = {.d_model = 24, .n_heads = 4, .head_dim = 6, .d_state = 5, .n_groups = 2, .chunk = 0,
                      .has_out_proj = 1};
    static const int lengths[] = {1, 5, 127, 128, 129, 300};
    for (size_t i = 0; i < sizeof lengths / sizeof *lengths; i++) {
        cfg.chunk = 0;
        cfg.has_out_proj = 1;
        check_forward(cfg, 2, lengths[i], 0, 10 + i);
        check_forward(cfg, 2, lengths[i], 0.03, 20 + i);
        cfg.chunk = 16;
        check_forward(cfg, 2, lengths[i], 0.03, 30 + i);
        cfg.has_out_proj = 0;
        check_forward(cfg, 2, lengths[i], 0.03, 40 + i);
    }
}

/* ---------- gradients by finite differences ---------- */

static double ref_loss(const mixer_prob *m) {
    int64_t no = (int64_t)m->B * m->T * dm2_out_dim(&m->cfg);
    double *out = malloc(sizeof(double) * no), l = 0;
    ref_mixer(out, &m->cfg, &m->r, m->ud, m->starts, m->B, m->T);
    for (int64_t i = 0; i < no; i++) l += out[i] * m->Rd[i];
    free(out);
    return l;
}

/* Central differences of the float64 loss wrt v[0..n) vs the fp32 gradient. */
static double fd_check(mixer_prob *m, double *v, int64_t n, const float *g) {
    double worst = 0, scale = 1e-30;
    for (int64_t i = 0; i < n; i++) scale = fmax(scale, fabs(g[i]));
    for (int64_t i = 0; i < n; i++) {
        double keep = v[i], h = 1e-5;
        v[i] = keep + h;
        double lp = ref_loss(m);
        v[i] = keep - h;
        double lm = ref_loss(m);
        v[i] = keep;
        double e = fabs((lp - lm) / (2 * h) - g[i]) / scale;
        if (!(e <= worst)) worst = e;
    }
    return worst;
}

static void check_gradients(dm2_config cfg, double p_start, uint64_t seed) {
    const int B = 2, T = 13;
    mixer_prob m = make_mixer(cfg, B, T, p_start, seed);
    const int D = cfg.d_model, inner = dm2_d_inner(&cfg), conv = dm2_conv_dim(&cfg), in_dim = dm2_in_proj_dim(&cfg);
    dm2_acts *s = dm2_alloc_state(B, T, &cfg, NULL);
    float *out = malloc(sizeof(float) * B * T * dm2_out_dim(&cfg)), *du = calloc((size_t)B * T * D, sizeof(float));
    dm2_params g;
    dm2_params_alloc(&g, &cfg);
    dm2_forward(out, NULL, s, &m.p, m.u, m.starts);
    dm2_backward(&g, du, m.R, s, &m.p, m.u, m.starts);
    double e[7] = {
        fd_check(&m, m.r.W, (int64_t)in_dim * D, g.in_proj_w),
        fd_check(&m, m.r.cw, (int64_t)conv * 4, g.conv_w),
        fd_check(&m, m.r.cb, conv, g.conv_b),
        fd_check(&m, m.r.D, cfg.n_heads, g.D),
        fd_check(&m, m.r.zb, inner, g.z_bias),
        cfg.has_out_proj ? fd_check(&m, m.r.Wo, (int64_t)D * inner, g.out_proj_w) : 0,
        fd_check(&m, m.ud, (int64_t)B * T * D, du),
    };
    for (int k = 0; k < 7; k++) seen(e[k]);
    double tol = 5e-5;
    EXPECT_MSG(e[0] <= tol && e[1] <= tol && e[2] <= tol && e[3] <= tol && e[4] <= tol && e[5] <= tol && e[6] <= tol,
               "out_proj=%d chunk=%d resets=%g: fd rel err in_proj %.2g conv_w %.2g conv_b %.2g D %.2g z_bias %.2g "
               "out_proj %.2g input %.2g",
               cfg.has_out_proj, cfg.chunk, p_start, e[0], e[1], e[2], e[3], e[4], e[5], e[6]);
    dm2_params_free(&g);
    dm2_free_state(s);
    free(out), free(du);
    free_mixer(&m);
}

TEST(gradients_match_finite_differences) {
    dm2_config cfg = {.d_model = 6, .n_heads = 4, .head_dim = 3, .d_state = 2, .n_groups = 2, .chunk = 4,
                      .has_out_proj = 1};
    check_gradients(cfg, 0, 101);
    check_gradients(cfg, 0.2, 102);
    cfg.chunk = 0; /* one chunk */
    check_gradients(cfg, 0.2, 103);
    cfg.has_out_proj = 0; /* routed layout */
    check_gradients(cfg, 0.2, 104);
    cfg.chunk = 5;
    check_gradients(cfg, 0.2, 105);
    cfg.n_groups = 1;
    cfg.has_out_proj = 1;
    check_gradients(cfg, 0.3, 106);
}

/* The backward adds to the gradients it is given. */
TEST(backward_accumulates) {
    dm2_config cfg = {.d_model = 8, .n_heads = 2, .head_dim = 4, .d_state = 3, .n_groups = 1, .chunk = 4,
                      .has_out_proj = 1};
    mixer_prob m = make_mixer(cfg, 2, 9, 0.2, 5);
    dm2_acts *s = dm2_alloc_state(2, 9, &cfg, NULL);
    float *out = malloc(sizeof(float) * 2 * 9 * 8), *du = calloc(2 * 9 * 8, sizeof(float));
    dm2_params g1, g2;
    dm2_params_alloc(&g1, &cfg);
    dm2_params_alloc(&g2, &cfg);
    dm2_forward(out, NULL, s, &m.p, m.u, m.starts);
    dm2_backward(&g1, NULL, m.R, s, &m.p, m.u, m.starts);
    dm2_backward(&g2, du, m.R, s, &m.p, m.u, m.starts);
    dm2_backward(&g2, du, m.R, s, &m.p, m.u, m.starts);
    size_t n = dm2_param_count(&cfg);
    double e = 0, scale = 0;
    for (size_t i = 0; i < n; i++) {
        e = fmax(e, fabs(g2.memory[i] - 2 * g1.memory[i]));
        scale = fmax(scale, fabs(g1.memory[i]));
    }
    EXPECT(scale > 0 && e <= 1e-6 * scale);
    dm2_params_free(&g1), dm2_params_free(&g2);
    dm2_free_state(s);
    free(out), free(du);
    free_mixer(&m);
}

/* ---------- stage 1: the mixing matrix of the mixer ---------- */

static double ref_matrix_loss(const mixer_prob *m, const double *R) {
    const dm2_config *c = &m->cfg;
    int64_t nt = (int64_t)m->B * c->n_heads * m->T * m->T;
    double *Tm = malloc(sizeof(double) * nt), l = 0;
    ref_mixer_matrix(Tm, c, &m->r, m->ud, m->starts, m->B, m->T);
    for (int64_t i = 0; i < nt; i++) l += Tm[i] * R[i];
    free(Tm);
    return l;
}

static double fd_matrix(mixer_prob *m, const double *R, double *v, int64_t n, const float *g, double scale) {
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double keep = v[i], h = 1e-5;
        v[i] = keep + h;
        double lp = ref_matrix_loss(m, R);
        v[i] = keep - h;
        double lm = ref_matrix_loss(m, R);
        v[i] = keep;
        double e = fabs((lp - lm) / (2 * h) - g[i]) / scale;
        if (!(e <= worst)) worst = e;
    }
    return worst;
}

static double max_abs(const float *g, int64_t n) {
    double m = 1e-30;
    for (int64_t i = 0; i < n; i++) m = fmax(m, fabs(g[i]));
    return m;
}

TEST(matrix_forward_and_gradients) {
    for (int variant = 0; variant < 2; variant++) {
        dm2_config cfg = {.d_model = 5, .n_heads = 4, .head_dim = 2, .d_state = 3, .n_groups = variant ? 1 : 2,
                          .chunk = 0, .has_out_proj = variant};
        const int B = 2, T = 11, H = 4;
        mixer_prob m = make_mixer(cfg, B, T, 0.2, 120 + variant);
        const int D = cfg.d_model, inner = dm2_d_inner(&cfg), conv = dm2_conv_dim(&cfg), in_dim = dm2_in_proj_dim(&cfg);
        int64_t nt = (int64_t)B * H * T * T;
        double *want = malloc(sizeof(double) * nt), *Rd = malloc(sizeof(double) * nt);
        float *Tm = malloc(sizeof(float) * nt), *R = malloc(sizeof(float) * nt);
        ref_mixer_matrix(want, &cfg, &m.r, m.ud, m.starts, B, T);
        dm2_acts *s = dm2_alloc_state(B, T, &cfg, NULL);
        dm2_matrix_forward(Tm, s, &m.p, m.u, m.starts);
        double ef = rel_err(Tm, want, nt);
        seen(ef);
        EXPECT_MSG(ef <= 1e-5, "matrix forward rel err %.3g", ef);

        test_fill(R, nt, 1);
        for (int64_t i = 0; i < nt; i++) Rd[i] = R[i];
        dm2_params g;
        dm2_params_alloc(&g, &cfg);
        float *du = calloc((size_t)B * T * D, sizeof(float));
        dm2_matrix_backward(&g, du, R, s, &m.p, m.u, m.starts);
        /* relative to the largest gradient of the whole parameter set, so
         * that parameters T does not depend on must come out ~0 */
        double scale = max_abs(g.memory, dm2_param_count(&cfg));
        double e[6] = {
            fd_matrix(&m, Rd, m.r.W, (int64_t)in_dim * D, g.in_proj_w, scale),
            fd_matrix(&m, Rd, m.r.cw, (int64_t)conv * 4, g.conv_w, scale),
            fd_matrix(&m, Rd, m.r.cb, conv, g.conv_b, scale),
            fd_matrix(&m, Rd, m.r.D, H, g.D, scale),
            fd_matrix(&m, Rd, m.ud, (int64_t)B * T * D, du, max_abs(du, (int64_t)B * T * D)),
            0,
        };
        for (int i = 0; i < inner; i++) e[5] = fmax(e[5], fabs(g.z_bias[i]));
        if (cfg.has_out_proj)
            for (int i = 0; i < D * inner; i++) e[5] = fmax(e[5], fabs(g.out_proj_w[i]));
        for (int k = 0; k < 5; k++) seen(e[k]);
        EXPECT_MSG(e[0] <= 5e-5 && e[1] <= 5e-5 && e[2] <= 5e-5 && e[3] <= 5e-5 && e[4] <= 5e-5 && e[5] == 0,
                   "variant %d: fd rel err in_proj %.2g conv_w %.2g conv_b %.2g D %.2g input %.2g; "
                   "z_bias/out_proj grads %.2g (want 0)",
                   variant, e[0], e[1], e[2], e[3], e[4], e[5]);
        dm2_params_free(&g);
        dm2_free_state(s);
        free(want), free(Rd), free(Tm), free(R), free(du);
        free_mixer(&m);
    }
}

/* ---------- decode ---------- */

/* Token-by-token steps (resetting where a document starts) reproduce the
 * full-sequence forward; so does prefill of a prefix followed by steps. */
static void check_decode(dm2_config cfg, int B, int T, int prefix, uint64_t seed) {
    mixer_prob m = make_mixer(cfg, B, T, 0.04, seed);
    const int D = cfg.d_model, od = dm2_out_dim(&cfg);
    m.starts[5] = 1; /* a reset in row 0 shortly after the start */
    if (prefix > 0 && prefix < T) m.starts[prefix] = 1; /* and one right at the first decoded token */
    dm2_acts *full = dm2_alloc_state(B, T, &cfg, NULL);
    float *want = malloc(sizeof(float) * B * T * od), *state_full = malloc(sizeof(float) * B * cfg.n_heads *
                                                                            cfg.head_dim * cfg.d_state);
    dm2_forward(want, state_full, full, &m.p, m.u, m.starts);

    dm2_cache *c = dm2_cache_alloc(B, &cfg, NULL);
    float *out = malloc(sizeof(float) * B * T * od), *u_t = malloc(sizeof(float) * B * D), *o_t = malloc(sizeof(float) * B * od);
    uint8_t *reset = malloc(B);
    int t0 = 0;
    if (prefix > 0) {
        /* prefill rows [0, prefix) of every batch row */
        float *u_p = malloc(sizeof(float) * B * prefix * D);
        uint8_t *st_p = malloc((size_t)B * prefix);
        for (int b = 0; b < B; b++) {
            memcpy(u_p + (size_t)b * prefix * D, m.u + (size_t)b * T * D, sizeof(float) * prefix * D);
            memcpy(st_p + (size_t)b * prefix, m.starts + (size_t)b * T, prefix);
        }
        dm2_acts *sp = dm2_alloc_state(B, prefix, &cfg, NULL);
        float *o_p = malloc(sizeof(float) * B * prefix * od);
        dm2_prefill(o_p, sp, c, &m.p, u_p, st_p);
        for (int b = 0; b < B; b++)
            memcpy(out + (size_t)b * T * od, o_p + (size_t)b * prefix * od, sizeof(float) * prefix * od);
        dm2_free_state(sp);
        free(u_p), free(st_p), free(o_p);
        t0 = prefix;
    }
    for (int t = t0; t < T; t++) {
        for (int b = 0; b < B; b++) {
            memcpy(u_t + (size_t)b * D, m.u + ((size_t)b * T + t) * D, sizeof(float) * D);
            reset[b] = m.starts[b * T + t];
        }
        dm2_step(o_t, c, &m.p, u_t, reset);
        for (int b = 0; b < B; b++) memcpy(out + ((size_t)b * T + t) * od, o_t + (size_t)b * od, sizeof(float) * od);
    }
    double *wd = dcopy(want, (size_t)B * T * od);
    double e = rel_err(out, wd, (int64_t)B * T * od);
    int64_t ns = (int64_t)B * cfg.n_heads * cfg.head_dim * cfg.d_state;
    double *sd = dcopy(state_full, ns);
    double es = rel_err(c->ssm, sd, ns);
    seen(e), seen(es);
    EXPECT_MSG(e <= 1e-5 && es <= 1e-5, "T=%d prefix=%d out_proj=%d: decode vs forward rel err out %.3g state %.3g",
               T, prefix, cfg.has_out_proj, e, es);
    dm2_cache_free(c);
    dm2_free_state(full);
    free(want), free(state_full), free(out), free(u_t), free(o_t), free(reset), free(wd), free(sd);
    free_mixer(&m);
}

TEST(decode_reproduces_forward) {
    dm2_config cfg = {.d_model = 16, .n_heads = 4, .head_dim = 4, .d_state = 6, .n_groups = 2, .chunk = 16,
                      .has_out_proj = 1};
    check_decode(cfg, 3, 50, 0, 61);  /* all steps */
    check_decode(cfg, 3, 50, 20, 62); /* prefill then steps, reset at the first step */
    check_decode(cfg, 2, 40, 2, 63);  /* a prefix shorter than the conv window */
    cfg.has_out_proj = 0;
    check_decode(cfg, 2, 150, 130, 64);
}

/* The conv state after prefill holds the last 4 pre-conv inputs of the
 * current document, zeros before it (checked against in_proj directly). */
TEST(prefill_conv_state_layout) {
    dm2_config cfg = {.d_model = 5, .n_heads = 2, .head_dim = 2, .d_state = 3, .n_groups = 1, .chunk = 0,
                      .has_out_proj = 1};
    const int B = 2, T = 10, conv = dm2_conv_dim(&cfg);
    mixer_prob m = make_mixer(cfg, B, T, 0, 77);
    m.starts[T + 8] = 1; /* row 1: a document of two tokens at the end */
    dm2_acts *s = dm2_alloc_state(B, T, &cfg, NULL);
    dm2_cache *c = dm2_cache_alloc(B, &cfg, NULL);
    float *out = malloc(sizeof(float) * B * T * cfg.d_model);
    dm2_prefill(out, s, c, &m.p, m.u, m.starts);
    for (int b = 0; b < B; b++)
        for (int ch = 0; ch < conv; ch++)
            for (int j = 0; j < 4; j++) {
                int t = T - 4 + j;
                double want = 0;
                if (!(b == 1 && t < 8))
                    for (int k = 0; k < cfg.d_model; k++) want += m.ud[((size_t)b * T + t) * cfg.d_model + k] * m.r.W[ch * cfg.d_model + k];
                EXPECT_NEAR(c->conv[((size_t)b * conv + ch) * 4 + j], want, 1e-5);
            }
    dm2_cache_free(c);
    dm2_free_state(s);
    free(out);
    free_mixer(&m);
}

/* ---------- initialisation ---------- */

TEST(mohawk_init_properties) {
    double zb = DM2_Z_BIAS_INIT;
    EXPECT_NEAR(zb * sigmoid_d(zb), 1.0, 1e-11); /* the gate starts at 1 */
    dm2_config cfg = {.d_model = 32, .n_heads = 4, .head_dim = 8, .d_state = 4, .n_groups = 4, .chunk = 0,
                      .has_out_proj = 1};
    const int D = 32, inner = 32, conv = dm2_conv_dim(&cfg), in_dim = dm2_in_proj_dim(&cfg), layers = 8;
    dm2_params p;
    dm2_params_alloc(&p, &cfg);
    ra_rng rng;
    rng_seed(&rng, 1234);
    dm2_init_mohawk(&p, &cfg, layers, &rng);
    double bound = 1 / sqrt(D), maxabs = 0, sum = 0, sumsq = 0;
    int64_t cnt = 0;
    for (int j = 0; j < in_dim; j++)
        for (int k = 0; k < D; k++) {
            float w = p.in_proj_w[(int64_t)j * D + k];
            if (j >= conv && j < conv + inner) {
                EXPECT_MSG(w == 0, "z row %d not zero", j);
                continue;
            }
            maxabs = fmax(maxabs, fabs(w));
            sum += w, sumsq += (double)w * w, cnt++;
        }
    EXPECT(maxabs <= bound && maxabs > 0.95 * bound);
    EXPECT_NEAR(sum / cnt, 0, 0.1 * bound);
    EXPECT_NEAR(sumsq / cnt, bound * bound / 3, 0.1 * bound * bound / 3); /* variance of U(−b, b) */
    for (int ch = 0; ch < conv; ch++) {
        EXPECT(p.conv_w[ch * 4 + 0] == 0 && p.conv_w[ch * 4 + 1] == 0 && p.conv_w[ch * 4 + 2] == 0);
        EXPECT(p.conv_w[ch * 4 + 3] == 1 && p.conv_b[ch] == 0);
    }
    for (int h = 0; h < cfg.n_heads; h++) EXPECT(p.D[h] == 1);
    for (int i = 0; i < inner; i++) EXPECT(p.z_bias[i] == (float)DM2_Z_BIAS_INIT);
    double ob = 1 / sqrt(inner) / sqrt(2.0 * layers), omax = 0;
    for (int i = 0; i < D * inner; i++) omax = fmax(omax, fabs(p.out_proj_w[i]));
    EXPECT(omax <= ob * (1 + 1e-6) && omax > 0.9 * ob);

    /* With this init the conv is the identity and the gate is 1: the mixer's
     * output equals out_proj of the SSD of the projected inputs. */
    const int B = 1, T = 7;
    float *u = malloc(sizeof(float) * B * T * D), *out = malloc(sizeof(float) * B * T * D);
    test_seed(3);
    test_fill(u, B * T * D, 1);
    dm2_acts *s = dm2_alloc_state(B, T, &cfg, NULL);
    dm2_forward(out, NULL, s, &p, u, NULL);
    double econv = 0, egate = 0;
    for (int t = 0; t < T; t++) {
        for (int i = 0; i < inner; i++) econv = fmax(econv, fabs(s->x[t * inner + i] - s->proj[t * in_dim + i]));
        for (int i = 0; i < inner; i++) egate = fmax(egate, fabs(s->yg[t * inner + i] - s->y[t * inner + i]));
    }
    EXPECT(econv == 0);
    EXPECT(egate <= 1e-6);
    /* same seed, same parameters */
    dm2_params q;
    dm2_params_alloc(&q, &cfg);
    rng_seed(&rng, 1234);
    dm2_init_mohawk(&q, &cfg, layers, &rng);
    EXPECT(memcmp(p.memory, q.memory, sizeof(float) * dm2_param_count(&cfg)) == 0);
    dm2_free_state(s);
    dm2_params_free(&p), dm2_params_free(&q);
    free(u), free(out);
}

TEST(config_validation) {
    ra_error err = {0};
    dm2_config bad = {.d_model = 8, .n_heads = 6, .head_dim = 4, .d_state = 3, .n_groups = 4, .has_out_proj = 1};
    EXPECT(dm2_alloc_state(1, 4, &bad, &err) == NULL);
    EXPECT_EQ_INT(err.code, EX_DATAERR);
    EXPECT(strstr(err.msg, "n_groups") != NULL);
    dm2_config zero = {.d_model = 0, .n_heads = 1, .head_dim = 1, .d_state = 1, .n_groups = 1};
    EXPECT_EQ_INT(dm2_check_config(&zero, &err), EX_DATAERR);
    dm2_config ok = {.d_model = 8, .n_heads = 4, .head_dim = 2, .d_state = 3, .n_groups = 2, .has_out_proj = 0};
    EXPECT_EQ_INT(dm2_in_proj_dim(&ok), 2 * 8 + 2 * 6 + 4);
    EXPECT_EQ_INT(dm2_conv_dim(&ok), 8 + 12);
    EXPECT_EQ_INT(dm2_out_dim(&ok), 8);
    EXPECT(dm2_cache_alloc(0, &ok, &err) == NULL);
}

int main(void) {
    RUN(forward_matches_float64_reference);
    report("mixer forward vs float64");
    RUN(gradients_match_finite_differences);
    report("mixer gradients vs finite differences");
    RUN(backward_accumulates);
    RUN(matrix_forward_and_gradients);
    report("stage-1 matrix forward and gradients");
    RUN(decode_reproduces_forward);
    report("decode vs forward");
    RUN(prefill_conv_state_layout);
    RUN(mohawk_init_properties);
    RUN(config_validation);
    return test_summary();
}
