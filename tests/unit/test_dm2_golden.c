/* The CPU DiscreteMamba2 mixer against golden outputs and gradients from the
 * independent PyTorch implementation tests/ref/dm2.py (float64 recurrence,
 * autograd), stored in tests/fixtures/dm2/<case>.safetensors; the tensor
 * names and layouts are documented in that script.
 *
 * For each case: forward with the chunked SSD at chunk 128 (one chunk), 16
 * and 7 (several, the last one partial) — out, final state, decay a;
 * backward — the gradient of every parameter and of the input; the
 * materialised mixing matrix (dm2_matrix_forward, stage 1); token-by-token
 * decode — out and final state.
 *
 * While tests/fixtures/dm2/ does not exist the case is a TAP skip; if it
 * exists, any missing, malformed or mismatching file fails. */
#include <dirent.h>
#include <jansson.h>

#include "dm2.h"
#include "safetensors.h"
#include "test.h"

static const char *fixture_dir(void) {
    const char *d = getenv("RA_DM2_FIXTURES");
    return d && *d ? d : "tests/fixtures/dm2";
}

typedef struct golden {
    const char *path;
    st_set *st;
    dm2_config cfg;
    int B, T;
} golden;

static int meta_int(const golden *g, const char *key, int *out) {
    json_t *v = g->st->metadata ? json_object_get(g->st->metadata, key) : NULL;
    if (!json_is_string(v)) {
        EXPECT_MSG(0, "%s: __metadata__ lacks '%s'", g->path, key);
        return -1;
    }
    *out = atoi(json_string_value(v));
    return 0;
}

/* Copy tensor `name` into a new float (or double) array after checking its
 * dtype and shape; NULL (and a failed expectation) otherwise. */
static void *load(const golden *g, const char *name, ra_dtype dt, const int64_t *shape, int ndim) {
    const st_tensor *t = st_find(g->st, name);
    if (!t) {
        EXPECT_MSG(0, "%s: tensor '%s' missing", g->path, name);
        return NULL;
    }
    int ok = t->dtype == dt && t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
    if (!ok) {
        EXPECT_MSG(0, "%s: tensor '%s': expected %s with %d dims [%lld, ...], got %s with %d dims [%lld, ...]",
                   g->path, name, ra_dtype_name(dt), ndim, (long long)shape[0], ra_dtype_name(t->dtype), t->ndim,
                   (long long)t->shape[0]);
        return NULL;
    }
    void *p = malloc(t->nbytes ? t->nbytes : 1);
    memcpy(p, t->data, t->nbytes);
    return p;
}

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__}), (int)(sizeof((const int64_t[]){__VA_ARGS__}) / sizeof(int64_t))
static float *load_f32(const golden *g, const char *name, const int64_t *shape, int ndim) {
    return load(g, name, RA_F32, shape, ndim);
}
static double *load_f64(const golden *g, const char *name, const int64_t *shape, int ndim) {
    return load(g, name, RA_F64, shape, ndim);
}

/* max |got − want| / max |want| */
static double rel_err(const float *got, const double *want, int64_t n) {
    double e = 0, m = 1e-30;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs(got[i] - want[i]);
        if (!(d <= e)) e = d;
        m = fmax(m, fabs(want[i]));
    }
    return e / m;
}

static double worst_fwd, worst_grad;

static void compare(const char *path, const char *what, int chunk, const float *got, const double *want, int64_t n,
                    double tol, double *worst) {
    if (!got || !want) return;
    double e = rel_err(got, want, n);
    if (!(e <= *worst)) *worst = e;
    EXPECT_MSG(e <= tol, "%s: %s (chunk %d): relative error %.3g > %g", path, what, chunk, e, tol);
}

static void check_case(const char *path) {
    golden g = {.path = path};
    ra_error err = {0};
    if (st_open(path, &g.st, &err)) {
        EXPECT_MSG(0, "%s: %s", path, err.msg);
        return;
    }
    json_t *fmt = g.st->metadata ? json_object_get(g.st->metadata, "format") : NULL;
    EXPECT_MSG(json_is_string(fmt) && strcmp(json_string_value(fmt), "ra-dm2-golden-1") == 0,
               "%s: __metadata__ format is not ra-dm2-golden-1", path);
    int bad = meta_int(&g, "d_model", &g.cfg.d_model) | meta_int(&g, "n_heads", &g.cfg.n_heads) |
              meta_int(&g, "head_dim", &g.cfg.head_dim) | meta_int(&g, "d_state", &g.cfg.d_state) |
              meta_int(&g, "n_groups", &g.cfg.n_groups) | meta_int(&g, "has_out_proj", &g.cfg.has_out_proj) |
              meta_int(&g, "batch", &g.B) | meta_int(&g, "seq_len", &g.T);
    if (bad || dm2_check_config(&g.cfg, &err) || g.B < 1 || g.T < 1) {
        EXPECT_MSG(0, "%s: bad config in __metadata__: %s", path, err.msg);
        st_close(g.st);
        return;
    }
    const dm2_config c0 = g.cfg;
    const int64_t B = g.B, T = g.T, D = c0.d_model, H = c0.n_heads, P = c0.head_dim, N = c0.d_state;
    const int64_t inner = dm2_d_inner(&c0), conv = dm2_conv_dim(&c0), in_dim = dm2_in_proj_dim(&c0);
    const int64_t od = dm2_out_dim(&c0);

    float *u = load_f32(&g, "u", SHAPE(B, T, D));
    uint8_t *starts = load(&g, "starts", RA_U8, SHAPE(B, T));
    float *dout = load_f32(&g, "dout", SHAPE(B, T, od));
    dm2_params p;
    dm2_params_alloc(&p, &c0);
    float *w_in = load_f32(&g, "in_proj.weight", SHAPE(in_dim, D));
    float *w_conv = load_f32(&g, "conv1d.weight", SHAPE(conv, 1, 4));
    float *b_conv = load_f32(&g, "conv1d.bias", SHAPE(conv));
    float *Dv = load_f32(&g, "D", SHAPE(H));
    float *zb = load_f32(&g, "z_bias", SHAPE(inner));
    float *w_out = c0.has_out_proj ? load_f32(&g, "out_proj.weight", SHAPE(D, inner)) : NULL;
    double *out_ref = load_f64(&g, "out", SHAPE(B, T, od));
    double *state_ref = load_f64(&g, "final_state", SHAPE(B, H, P, N));
    double *a_ref = load_f64(&g, "a", SHAPE(B, T, H));
    double *mat_ref = load_f64(&g, "mixing_matrix", SHAPE(B, H, T, T));
    double *gu_ref = load_f64(&g, "grad.u", SHAPE(B, T, D));
    double *gin_ref = load_f64(&g, "grad.in_proj.weight", SHAPE(in_dim, D));
    double *gcw_ref = load_f64(&g, "grad.conv1d.weight", SHAPE(conv, 1, 4));
    double *gcb_ref = load_f64(&g, "grad.conv1d.bias", SHAPE(conv));
    double *gD_ref = load_f64(&g, "grad.D", SHAPE(H));
    double *gzb_ref = load_f64(&g, "grad.z_bias", SHAPE(inner));
    double *gout_ref = c0.has_out_proj ? load_f64(&g, "grad.out_proj.weight", SHAPE(D, inner)) : NULL;
    int complete = u && starts && dout && w_in && w_conv && b_conv && Dv && zb && (w_out || !c0.has_out_proj) &&
                   out_ref && state_ref && a_ref && mat_ref && gu_ref && gin_ref && gcw_ref && gcb_ref && gD_ref &&
                   gzb_ref && (gout_ref || !c0.has_out_proj);
    if (complete) {
        memcpy(p.in_proj_w, w_in, sizeof(float) * in_dim * D);
        memcpy(p.conv_w, w_conv, sizeof(float) * conv * 4);
        memcpy(p.conv_b, b_conv, sizeof(float) * conv);
        memcpy(p.D, Dv, sizeof(float) * H);
        memcpy(p.z_bias, zb, sizeof(float) * inner);
        if (w_out) memcpy(p.out_proj_w, w_out, sizeof(float) * D * inner);
        float *out = malloc(sizeof(float) * B * T * od), *state = malloc(sizeof(float) * B * H * P * N);
        float *Tm = malloc(sizeof(float) * B * H * T * T), *du = malloc(sizeof(float) * B * T * D);
        static const int chunks[] = {128, 16, 7};
        for (size_t k = 0; k < sizeof chunks / sizeof *chunks; k++) {
            dm2_config cfg = c0;
            cfg.chunk = chunks[k];
            dm2_acts *s = dm2_alloc_state((int)B, (int)T, &cfg, &err);
            dm2_forward(out, state, s, &p, u, starts);
            compare(path, "out", cfg.chunk, out, out_ref, B * T * od, 1e-5, &worst_fwd);
            compare(path, "final_state", cfg.chunk, state, state_ref, B * H * P * N, 1e-5, &worst_fwd);
            compare(path, "a", cfg.chunk, s->a, a_ref, B * T * H, 1e-6, &worst_fwd);
            dm2_params gr;
            dm2_params_alloc(&gr, &cfg);
            memset(du, 0, sizeof(float) * B * T * D);
            dm2_backward(&gr, du, dout, s, &p, u, starts);
            compare(path, "grad.u", cfg.chunk, du, gu_ref, B * T * D, 5e-5, &worst_grad);
            compare(path, "grad.in_proj.weight", cfg.chunk, gr.in_proj_w, gin_ref, in_dim * D, 5e-5, &worst_grad);
            compare(path, "grad.conv1d.weight", cfg.chunk, gr.conv_w, gcw_ref, conv * 4, 5e-5, &worst_grad);
            compare(path, "grad.conv1d.bias", cfg.chunk, gr.conv_b, gcb_ref, conv, 5e-5, &worst_grad);
            compare(path, "grad.D", cfg.chunk, gr.D, gD_ref, H, 5e-5, &worst_grad);
            compare(path, "grad.z_bias", cfg.chunk, gr.z_bias, gzb_ref, inner, 5e-5, &worst_grad);
            if (c0.has_out_proj)
                compare(path, "grad.out_proj.weight", cfg.chunk, gr.out_proj_w, gout_ref, D * inner, 5e-5,
                        &worst_grad);
            dm2_params_free(&gr);
            /* stage 1: the mixing matrix through the mixer's own entry point */
            dm2_matrix_forward(Tm, s, &p, u, starts);
            compare(path, "mixing_matrix", cfg.chunk, Tm, mat_ref, B * H * T * T, 1e-5, &worst_fwd);
            dm2_free_state(s);
        }
        /* decode, one token at a time */
        dm2_cache *cache = dm2_cache_alloc((int)B, &c0, &err);
        float *u_t = malloc(sizeof(float) * B * D), *o_t = malloc(sizeof(float) * B * od);
        uint8_t *reset = malloc(B);
        for (int64_t t = 0; t < T; t++) {
            for (int64_t b = 0; b < B; b++) {
                memcpy(u_t + b * D, u + (b * T + t) * D, sizeof(float) * D);
                reset[b] = starts[b * T + t];
            }
            dm2_step(o_t, cache, &p, u_t, reset);
            for (int64_t b = 0; b < B; b++) memcpy(out + (b * T + t) * od, o_t + b * od, sizeof(float) * od);
        }
        compare(path, "decode out", 0, out, out_ref, B * T * od, 1e-5, &worst_fwd);
        compare(path, "decode final state", 0, cache->ssm, state_ref, B * H * P * N, 1e-5, &worst_fwd);
        dm2_cache_free(cache);
        free(u_t), free(o_t), free(reset);
        free(out), free(state), free(Tm), free(du);
    }
    free(u), free(starts), free(dout), free(w_in), free(w_conv), free(b_conv), free(Dv), free(zb), free(w_out);
    free(out_ref), free(state_ref), free(a_ref), free(mat_ref), free(gu_ref), free(gin_ref), free(gcw_ref);
    free(gcb_ref), free(gD_ref), free(gzb_ref), free(gout_ref);
    dm2_params_free(&p);
    st_close(g.st);
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

TEST(dm2_matches_pytorch_golden) {
    DIR *dir = opendir(fixture_dir());
    RA_CHECK(dir != NULL); /* main() checked that it exists */
    int cases = 0;
    struct dirent *e;
    char path[4096];
    while ((e = readdir(dir))) {
        if (!ends_with(e->d_name, ".safetensors")) continue;
        snprintf(path, sizeof path, "%s/%s", fixture_dir(), e->d_name);
        check_case(path);
        cases++;
    }
    closedir(dir);
    EXPECT_MSG(cases >= 2, "%s: expected the out_proj and routed cases, found %d .safetensors files", fixture_dir(),
               cases);
    printf("# %d golden cases; worst relative error forward %.3g, gradients %.3g\n", cases, worst_fwd, worst_grad);
}

int main(void) {
    DIR *dir = opendir(fixture_dir());
    if (!dir) {
        printf("ok 1 - dm2_matches_pytorch_golden # SKIP %s does not exist yet (run tests/ref/dm2.py on a machine "
               "with torch)\n1..1\n",
               fixture_dir());
        return 0;
    }
    closedir(dir);
    RUN(dm2_matches_pytorch_golden);
    return test_summary();
}
