/* Bit-reproducibility of the CUDA backwards of the DiscreteMamba2 mixer and
 * the SSD core (issue 7: a resumed hybrid run must end with the same bits as
 * an uninterrupted one, so the same inputs must give the same gradient bits
 * on every call).
 *
 * Each case runs a backward several times on the same random inputs (never
 * zeros) at a realistic shape (head_dim 64, d_state 64, T 2048, 8 heads,
 * document starts) and compares every output byte for byte.  Between the
 * repeats the device does other work (a backward of another shape on other
 * buffers, which leaves different values in caches and in the reused
 * workspaces), the outputs are poisoned with NaN, and one repeat lets the call
 * allocate its own workspace.  Every output must also be finite and not all
 * zero, so that a run that wrote nothing cannot pass.  Accuracy against the
 * CPU twins is test_gpu_dm2 / test_gpu_ssd's job; this test only checks
 * repeatability. */
#include "dm2.h"
#include "dm2_cuda.h"
#include "dtype.h"
#include "ops_cuda.h"
#include "ssd.h"
#include "ssd_cuda.h"
#include "test.h"
#include "gpu_test.h"

static uint16_t *dev_rnd_bf16(size_t n, float scale) {
    float *h = xmalloc(n * sizeof(float) + 4);
    for (size_t i = 0; i < n; i++) h[i] = scale * test_randf();
    uint16_t *d = cuda_malloc(n * 2 + 2);
    cuda_upload_bf16(d, h, n);
    free(h);
    return d;
}
static float *dev_rnd_f32(size_t n, float scale) {
    float *h = xmalloc(n * sizeof(float) + 4);
    for (size_t i = 0; i < n; i++) h[i] = scale * test_randf();
    float *d = cuda_malloc(n * 4 + 4);
    cuda_upload(d, h, n * 4);
    free(h);
    return d;
}
static void *dev_copy(const void *h, size_t bytes) {
    void *d = cuda_malloc(bytes);
    cuda_upload(d, h, bytes);
    return d;
}
static void *host_copy(const void *d, size_t bytes) {
    void *h = xmalloc(bytes + 4);
    cuda_synchronize();
    cuda_download(h, d, bytes);
    return h;
}
static uint8_t *random_starts(size_t n, unsigned every) {
    uint8_t *s = xmalloc(n);
    for (size_t i = 0; i < n; i++) s[i] = test_rand_u64() % every == 0;
    return s;
}

/* A snapshot of some device outputs (bytes). */
typedef struct {
    int n;
    const char *name[8];
    int is_bf16[8];
    size_t bytes[8];
    void *h[8];
} snap;

static void snap_add(snap *s, const char *name, const void *d, size_t bytes, int is_bf16) {
    s->name[s->n] = name, s->is_bf16[s->n] = is_bf16, s->bytes[s->n] = bytes;
    s->h[s->n++] = host_copy(d, bytes);
}
static void snap_free(snap *s) {
    for (int i = 0; i < s->n; i++) free(s->h[i]);
    s->n = 0;
}

/* Every value finite and some nonzero (the run wrote something real). */
static void check_sane(const char *tag, const snap *s) {
    for (int i = 0; i < s->n; i++) {
        size_t n = s->bytes[i] / (s->is_bf16[i] ? 2 : 4), bad = 0, nonzero = 0;
        for (size_t k = 0; k < n; k++) {
            float v = s->is_bf16[i] ? ra_bf16_to_f32(((const uint16_t *)s->h[i])[k]) : ((const float *)s->h[i])[k];
            if (!isfinite(v)) bad++;
            if (v != 0.0f) nonzero++;
        }
        EXPECT_MSG(bad == 0, "%s %s: %zu of %zu values not finite", tag, s->name[i], bad, n);
        EXPECT_MSG(nonzero > n / 2, "%s %s: only %zu of %zu values nonzero", tag, s->name[i], nonzero, n);
    }
}

/* Byte-for-byte equality of two snapshots of the same outputs. */
static void check_same(const char *tag, const char *when, const snap *a, const snap *b) {
    for (int i = 0; i < a->n; i++) {
        const unsigned char *x = a->h[i], *y = b->h[i];
        size_t diff = 0, first = (size_t)-1, step = a->is_bf16[i] ? 2 : 4;
        for (size_t k = 0; k < a->bytes[i]; k += step)
            if (memcmp(x + k, y + k, step)) {
                if (first == (size_t)-1) first = k / step;
                diff++;
            }
        printf("#   %-44s %-28s %-8s %zu of %zu values differ\n", tag, when, a->name[i], diff, a->bytes[i] / step);
        EXPECT_MSG(diff == 0, "%s (%s): %s: %zu values differ, first at %zu", tag, when, a->name[i], diff, first);
    }
}

/* ---- SSD chunked backward -------------------------------------------------------- */

typedef struct {
    ssd_dims d;
    int chunk;
    uint16_t *x, *Bm, *Cm, *dy, *dx, *dB, *dC;
    float *a, *D, *init, *da, *dD, *dinit;
    uint8_t *starts;
    void *ws;
} ssd_case;

static ssd_case ssd_make(int B, int T, int H, int P, int N, int G, int with_init) {
    ssd_case c;
    memset(&c, 0, sizeof c);
    c.d = (ssd_dims){B, T, H, P, G, N};
    c.chunk = 128;
    const size_t BT = (size_t)B * T, nx = BT * H * P, nb = BT * G * N, ns = (size_t)B * H * P * N;
    c.x = dev_rnd_bf16(nx, 1), c.Bm = dev_rnd_bf16(nb, 0.5f), c.Cm = dev_rnd_bf16(nb, 0.5f), c.dy = dev_rnd_bf16(nx, 1);
    float *ah = xmalloc(BT * H * 4);
    for (size_t i = 0; i < BT * H; i++) ah[i] = -0.5f * (1.0f + test_randf()) * 0.2f; /* decays in (-0.2, 0] */
    c.a = dev_copy(ah, BT * H * 4);
    free(ah);
    c.D = dev_rnd_f32(H, 1);
    c.init = with_init ? dev_rnd_f32(ns, 0.5f) : NULL;
    uint8_t *st = random_starts(BT, 500);
    c.starts = dev_copy(st, BT);
    free(st);
    c.dx = cuda_malloc(nx * 2), c.dB = cuda_malloc(nb * 2), c.dC = cuda_malloc(nb * 2);
    c.da = cuda_malloc(BT * H * 4), c.dD = cuda_malloc(H * 4), c.dinit = with_init ? cuda_malloc(ns * 4) : NULL;
    c.ws = cuda_malloc(cuda_ssd_chunked_workspace_bytes(&c.d, c.chunk, 1));
    return c;
}
static void ssd_free(ssd_case *c) {
    void *p[] = {c->x, c->Bm, c->Cm, c->dy, c->dx, c->dB, c->dC, c->a, c->D, c->init, c->da, c->dD, c->dinit,
                 c->starts, c->ws};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) cuda_free(p[i]);
}
static void ssd_poison(ssd_case *c) {
    const size_t BT = (size_t)c->d.B * c->d.T, nx = BT * c->d.H * c->d.P, nb = BT * c->d.G * c->d.N;
    cuda_memset(c->dx, 0xFF, nx * 2), cuda_memset(c->dB, 0xFF, nb * 2), cuda_memset(c->dC, 0xFF, nb * 2);
    cuda_memset(c->da, 0xFF, BT * c->d.H * 4), cuda_memset(c->dD, 0xFF, c->d.H * 4);
    if (c->dinit) cuda_memset(c->dinit, 0xFF, (size_t)c->d.B * c->d.H * c->d.P * c->d.N * 4);
}
/* mode 0: backward (recomputes the states) on c->ws; 1: the same with a
 * workspace of its own; 2: forward, then the backward reusing its states */
static void ssd_run(ssd_case *c, int mode) {
    ssd_poison(c);
    if (mode == 2) {
        const size_t nx = (size_t)c->d.B * c->d.T * c->d.H * c->d.P;
        uint16_t *y = cuda_malloc(nx * 2);
        cuda_ssd_chunked_forward(y, NULL, c->x, c->Bm, c->Cm, c->a, c->D, c->starts, c->init, &c->d, c->chunk, c->ws);
        cuda_ssd_chunked_backward_after_forward(c->dx, c->dB, c->dC, c->da, c->dD, c->dinit, c->dy, c->x, c->Bm, c->Cm,
                                                c->a, c->D, c->starts, c->init, &c->d, c->chunk, c->ws);
        cuda_synchronize();
        cuda_free(y);
        return;
    }
    cuda_ssd_chunked_backward(c->dx, c->dB, c->dC, c->da, c->dD, c->dinit, c->dy, c->x, c->Bm, c->Cm, c->a, c->D,
                              c->starts, c->init, &c->d, c->chunk, mode == 1 ? NULL : c->ws);
}
static snap ssd_snap(const ssd_case *c) {
    const size_t BT = (size_t)c->d.B * c->d.T, nx = BT * c->d.H * c->d.P, nb = BT * c->d.G * c->d.N;
    snap s = {0};
    snap_add(&s, "dx", c->dx, nx * 2, 1);
    snap_add(&s, "dB", c->dB, nb * 2, 1);
    snap_add(&s, "dC", c->dC, nb * 2, 1);
    snap_add(&s, "da", c->da, BT * c->d.H * 4, 0);
    snap_add(&s, "dD", c->dD, c->d.H * 4, 0);
    if (c->dinit) snap_add(&s, "d_init", c->dinit, (size_t)c->d.B * c->d.H * c->d.P * c->d.N * 4, 0);
    return s;
}

static void check_ssd(int B, int T, int H, int P, int N, int G, int with_init) {
    char tag[128];
    snprintf(tag, sizeof tag, "ssd bwd B%d T%d H%d P%d N%d G%d%s", B, T, H, P, N, G, with_init ? " init" : "");
    ssd_case c = ssd_make(B, T, H, P, N, G, with_init);
    ssd_case other = ssd_make(1, 1000, 3, 64, 64, 3, 1);
    ssd_run(&c, 0);
    snap ref = ssd_snap(&c);
    check_sane(tag, &ref);
    for (int rep = 0; rep < 4; rep++) {
        const char *when[] = {"again", "after other work", "own workspace", "after a forward"};
        if (rep == 1) ssd_run(&other, 0);
        ssd_run(&c, rep == 2 ? 1 : rep == 3 ? 2 : 0);
        snap s = ssd_snap(&c);
        check_same(tag, when[rep], &ref, &s);
        snap_free(&s);
    }
    snap_free(&ref);
    ssd_free(&c), ssd_free(&other);
}

TEST(ssd_backward_is_bit_repeatable) {
    test_seed(701);
    check_ssd(2, 2048, 8, 64, 64, 1, 0); /* heads share B/C: per-head dB, dC reduced */
    check_ssd(2, 2048, 8, 64, 64, 8, 1);
    check_ssd(1, 1000, 4, 48, 40, 2, 1); /* ragged tail chunk, odd P, N */
}

/* ---- conv and gate backward ------------------------------------------------------ */

TEST(conv_and_gate_backward_are_bit_repeatable) {
    test_seed(702);
    const int B = 2, T = 2048, C = 2048 + 128, ld = 2 * 2048 + 2 * 64 + 8;
    const size_t BT = (size_t)B * T;
    uint16_t *in = dev_rnd_bf16(BT * ld, 1), *dout = dev_rnd_bf16(BT * C, 1), *din = cuda_malloc(BT * ld * 2);
    float *w = dev_rnd_f32((size_t)C * 4, 0.7f), *dw = cuda_malloc((size_t)C * 16), *db = cuda_malloc((size_t)C * 4);
    float *dw0 = dev_rnd_f32((size_t)C * 4, 1), *db0 = dev_rnd_f32(C, 1); /* gradients accumulate onto these */
    uint8_t *sh = random_starts(BT, 300), *st = dev_copy(sh, BT);
    free(sh);
    void *ws = cuda_malloc(cuda_dm2_sums_workspace_bytes((int64_t)BT, C));
    snap ref = {0};
    for (int rep = 0; rep < 4; rep++) {
        const char *when[] = {"first", "again", "after other work", "own workspace"};
        if (rep == 2) /* a smaller conv on the same workspace first */
            cuda_dm2_conv_backward(din, ld, dw, db, dout, C, in, ld, w, st, 1, 700, 100, ws);
        cuda_copy(dw, dw0, (size_t)C * 16), cuda_copy(db, db0, (size_t)C * 4);
        cuda_memset(din, 0xFF, BT * ld * 2);
        cuda_dm2_conv_backward(din, ld, dw, db, dout, C, in, ld, w, st, B, T, C, rep == 3 ? NULL : ws);
        snap s = {0};
        snap_add(&s, "din", din, BT * ld * 2, 1); /* unwritten columns: the poison, both times */
        snap_add(&s, "dw", dw, (size_t)C * 16, 0);
        snap_add(&s, "dbias", db, (size_t)C * 4, 0);
        if (rep == 0) {
            snap sane = {1, {"dw"}, {0}, {s.bytes[1]}, {s.h[1]}};
            check_sane("dm2 conv bwd", &sane);
            sane.name[0] = "dbias", sane.bytes[0] = s.bytes[2], sane.h[0] = s.h[2];
            check_sane("dm2 conv bwd", &sane);
            ref = s;
            continue;
        }
        check_same("dm2 conv bwd B2 T2048 C2176", when[rep], &ref, &s);
        snap_free(&s);
    }
    snap_free(&ref);

    const int64_t rows = (int64_t)BT;
    const int inner = 2048, ldz = 2048 + 96;
    uint16_t *y = dev_rnd_bf16((size_t)rows * inner, 1), *z = dev_rnd_bf16((size_t)rows * ldz, 3);
    uint16_t *dyg = dev_rnd_bf16((size_t)rows * inner, 1), *dy = cuda_malloc((size_t)rows * inner * 2);
    uint16_t *dz = cuda_malloc((size_t)rows * ldz * 2);
    float *zb = dev_rnd_f32(inner, 1), *dzb0 = dev_rnd_f32(inner, 1), *dzb = cuda_malloc(inner * 4);
    for (int rep = 0; rep < 4; rep++) {
        const char *when[] = {"first", "again", "after other work", "own workspace"};
        if (rep == 2) cuda_dm2_gate_backward(dy, dz, ldz, dzb, dyg, y, z, ldz, zb, 333, 640, ws);
        cuda_copy(dzb, dzb0, inner * 4);
        cuda_memset(dy, 0xFF, (size_t)rows * inner * 2);
        cuda_dm2_gate_backward(dy, dz, ldz, dzb, dyg, y, z, ldz, zb, rows, inner, rep == 3 ? NULL : ws);
        snap s = {0};
        snap_add(&s, "dy", dy, (size_t)rows * inner * 2, 1);
        snap_add(&s, "dz_bias", dzb, inner * 4, 0);
        if (rep == 0) {
            check_sane("dm2 gate bwd", &s);
            ref = s;
            continue;
        }
        check_same("dm2 gate bwd rows 4096 inner 2048", when[rep], &ref, &s);
        snap_free(&s);
    }
    snap_free(&ref);
    void *p[] = {in, dout, din, w, dw, db, dw0, db0, st, ws, y, z, dyg, dy, dz, zb, dzb0, dzb};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) cuda_free(p[i]);
}

/* ---- the whole mixer --------------------------------------------------------------- */

static void check_mixer(int B, int T, dm2_config cfg) {
    char tag[128];
    snprintf(tag, sizeof tag, "dm2 mixer B%d T%d D%d H%d P%d N%d G%d %s", B, T, cfg.d_model, cfg.n_heads,
             cfg.head_dim, cfg.d_state, cfg.n_groups, cfg.has_out_proj ? "out_proj" : "routed");
    const int D = cfg.d_model, od = dm2_out_dim(&cfg);
    const size_t BT = (size_t)B * T, np = dm2_param_count(&cfg);
    dm2_params prm;
    dm2_params_alloc(&prm, &cfg);
    for (size_t i = 0; i < np; i++) prm.memory[i] = 0.05f * test_randf();
    for (int h = 0; h < cfg.n_heads; h++) prm.D[h] = test_randf();
    cuda_dm2_params dp;
    cuda_dm2_params_upload(&dp, &prm, &cfg);
    ra_error err = {0, ""};
    cuda_dm2_acts *s = cuda_dm2_acts_alloc(B, T, &cfg, &err);
    EXPECT_MSG(s != NULL, "cuda_dm2_acts_alloc: %s", err.msg);
    if (!s) return;
    cuda_dm2_grads g;
    cuda_dm2_grads_alloc(&g, &cfg);
    uint16_t *u = dev_rnd_bf16(BT * D, 1), *dout = dev_rnd_bf16(BT * od, 1), *out = cuda_malloc(BT * od * 2);
    uint16_t *du = cuda_malloc(BT * D * 2);
    uint8_t *sh = random_starts(BT, 700), *st = dev_copy(sh, BT);
    free(sh);
    /* other work: a mixer of another shape (its own acts) */
    dm2_config oc = cfg;
    oc.n_heads = cfg.n_heads / 2, oc.n_groups = 1;
    dm2_params op;
    dm2_params_alloc(&op, &oc);
    for (size_t i = 0; i < dm2_param_count(&oc); i++) op.memory[i] = 0.05f * test_randf();
    cuda_dm2_params odp;
    cuda_dm2_params_upload(&odp, &op, &oc);
    cuda_dm2_acts *os = cuda_dm2_acts_alloc(1, 777, &oc, &err);
    cuda_dm2_grads og;
    cuda_dm2_grads_alloc(&og, &oc);
    uint16_t *ou = dev_rnd_bf16((size_t)777 * D, 1), *oo = cuda_malloc((size_t)777 * dm2_out_dim(&oc) * 2);

    snap ref = {0};
    for (int rep = 0; rep < 3; rep++) {
        const char *when[] = {"first", "again", "after other work"};
        if (rep == 2) {
            cuda_dm2_forward(oo, NULL, os, &odp, ou, NULL);
            cuda_dm2_backward(&og, NULL, oo, os, &odp, ou, NULL);
        }
        cuda_memset(g.memory, 0, np * 4);
        cuda_memset(du, 0, BT * D * 2);
        cuda_dm2_forward(out, NULL, s, &dp, u, st);
        cuda_dm2_backward(&g, du, dout, s, &dp, u, st);
        snap sn = {0};
        snap_add(&sn, "grads", g.memory, np * 4, 0);
        snap_add(&sn, "du", du, BT * D * 2, 1);
        if (rep == 0) {
            check_sane(tag, &sn);
            ref = sn;
            continue;
        }
        check_same(tag, when[rep], &ref, &sn);
        snap_free(&sn);
    }
    snap_free(&ref);
    cuda_free(u), cuda_free(dout), cuda_free(out), cuda_free(du), cuda_free(st), cuda_free(ou), cuda_free(oo);
    cuda_dm2_grads_free(&g), cuda_dm2_grads_free(&og), cuda_dm2_acts_free(s), cuda_dm2_acts_free(os);
    cuda_dm2_params_free(&dp), cuda_dm2_params_free(&odp);
    dm2_params_free(&prm), dm2_params_free(&op);
}

TEST(mixer_backward_is_bit_repeatable) {
    test_seed(703);
    check_mixer(2, 2048, (dm2_config){512, 8, 64, 64, 1, 0, 0});
    check_mixer(2, 2048, (dm2_config){512, 8, 64, 64, 2, 0, 1});
}

int main(void) {
    if (gpu_test_start()) return 1;
    RUN(ssd_backward_is_bit_repeatable);
    RUN(conv_and_gate_backward_are_bit_repeatable);
    RUN(mixer_backward_is_bit_repeatable);
    return test_summary();
}
