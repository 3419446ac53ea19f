/* Host simulation of the chunked SSD kernels (kernels/ssd_kernels.cuh).
 *
 * The GPU kernels' source is compiled for the CPU against tests/unit/cuda_sim.h
 * (lane-by-lane warp primitives, threads as coroutines) and the same
 * orchestration the CUDA build launches (ssd_run_forward / ssd_run_backward)
 * runs here.  The results are compared with the CPU twins of lib/ssd.h run in
 * fp32 on exactly the same bf16-rounded inputs, so the error measures the
 * kernels alone: bf16 rounding of the outputs, of the masked C Bᵀ and of the
 * states as tensor-core operands.
 *
 * Cases: T not a multiple of the chunk, a single short chunk, document
 * starts, an initial state, G < H (shared B/C groups), N = 8 and 64, P = 64
 * and a P that is not a multiple of 16, chunk 128 and 64.  Every output is
 * poisoned with NaN first.  Built by make unit (g++ only); TAP output. */
#include "cuda_sim.h"

extern "C" {
#include "dm2.h"
#include "ssd.h"
}

#define SSD_LAUNCH(kernel, gx, gy, threads, smem, ...)                                          \
    do {                                                                                        \
        if ((size_t)(smem) > sizeof sim_smem_buf) {                                             \
            fprintf(stderr, "sim: %zu bytes of shared memory asked\n", (size_t)(smem));         \
            exit(1);                                                                            \
        }                                                                                       \
        sim_launch((unsigned)(gx), (unsigned)(gy), (unsigned)(threads), [&]() { kernel(__VA_ARGS__); }); \
    } while (0)

#include "ssd_kernels.cuh"
#include "ssd_matrix.cuh"
#include "dm2_kernels.cuh"

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static double randu(void) { /* [0, 1) */
    rng ^= rng >> 12, rng ^= rng << 25, rng ^= rng >> 27;
    return (double)((rng * 0x2545F4914F6CDD1Dull) >> 11) * (1.0 / 9007199254740992.0);
}
static float randf(void) { return (float)(2 * randu() - 1); }

static int case_no, failures;

/* rel L2 of got vs ref; NaN anywhere fails */
static bool close_enough(const char *what, const float *got, const float *ref, size_t n, double tol, char *log,
                         size_t loglen) {
    double num = 0, den = 0;
    size_t nan = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(got[i]) || isnan(ref[i])) {
            nan++;
            continue;
        }
        double d = (double)got[i] - ref[i];
        num += d * d, den += (double)ref[i] * ref[i];
    }
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    size_t used = strlen(log);
    snprintf(log + used, loglen - used, " %s %.1e%s", what, rel, nan ? "(NaN!)" : "");
    return nan == 0 && rel <= tol;
}

struct sim_case {
    int B, T, H, G, P, N, chunk, docs, init;
};

static std::vector<bf16> to_bf16(std::vector<float> &v) { /* rounds v in place too */
    std::vector<bf16> r(v.size());
    for (size_t i = 0; i < v.size(); i++) r[i] = ssd_f2bf(v[i]), v[i] = ssd_bf2f(r[i]);
    return r;
}
static std::vector<float> from_bf16(const std::vector<bf16> &v) {
    std::vector<float> r(v.size());
    for (size_t i = 0; i < v.size(); i++) r[i] = ssd_bf2f(v[i]);
    return r;
}
static std::vector<bf16> poisoned16(size_t n) { return std::vector<bf16>(n, bf16{0xFFFF}); }
static std::vector<float> poisoned32(size_t n) { return std::vector<float>(n, NAN); }

template <int PP, int NP>
static void check(sim_case k) {
    const int B = k.B, T = k.T, H = k.H, G = k.G, P = k.P, N = k.N;
    const size_t nx = (size_t)B * T * H * P, nbc = (size_t)B * T * G * N, na = (size_t)B * T * H,
                 ns = (size_t)B * H * P * N;
    std::vector<float> x(nx), Bm(nbc), Cm(nbc), dy(nx), a(na), D(H), init(k.init ? ns : 0);
    for (auto &v : x) v = randf();
    for (auto &v : Bm) v = randf() * 0.5f;
    for (auto &v : Cm) v = randf() * 0.5f;
    for (auto &v : dy) v = randf();
    for (auto &v : a) v = (float)-log1p(exp(2.0 * randf() - 0.5)); /* −softplus: −0.1 … −1.7 */
    for (auto &v : D) v = randf();
    for (auto &v : init) v = randf() * 0.5f;
    std::vector<uint8_t> starts(k.docs ? (size_t)B * T : 0);
    for (size_t i = 0; i < starts.size(); i++) starts[i] = randu() < 1.0 / 40;
    auto x16 = to_bf16(x), B16 = to_bf16(Bm), C16 = to_bf16(Cm), dy16 = to_bf16(dy);
    const uint8_t *st = k.docs ? starts.data() : nullptr;
    const float *ini = k.init ? init.data() : nullptr;

    /* the CPU twins, fp32, on the rounded values */
    ssd_dims d = {B, T, H, P, G, N};
    std::vector<float> y_ref(nx), fin_ref(ns), dx_ref(nx), dB_ref(nbc), dC_ref(nbc), da_ref(na), dD_ref(H),
        dini_ref(ns);
    ssd_chunked_forward(y_ref.data(), fin_ref.data(), x.data(), Bm.data(), Cm.data(), a.data(), D.data(), st, ini, &d,
                        k.chunk);
    ssd_chunked_backward(dx_ref.data(), dB_ref.data(), dC_ref.data(), da_ref.data(), dD_ref.data(), dini_ref.data(),
                         dy.data(), x.data(), Bm.data(), Cm.data(), a.data(), D.data(), st, ini, &d, k.chunk);

    /* the kernels */
    ssd_kparams p;
    size_t ws_bytes = ssd_setup(&p, B, T, H, P, G, N, k.chunk, 1, nullptr);
    std::vector<unsigned char> ws(ws_bytes + 256, 0xFF);
    ssd_setup(&p, B, T, H, P, G, N, k.chunk, 1, (void *)(((uintptr_t)ws.data() + 255) & ~(uintptr_t)255));
    auto y16 = poisoned16(nx), dx16 = poisoned16(nx), dB16 = poisoned16(nbc), dC16 = poisoned16(nbc);
    auto fin = poisoned32(ns), da = poisoned32(na), dD = poisoned32(H), dini = poisoned32(ns);
    p.x = x16.data(), p.Bm = B16.data(), p.Cm = C16.data(), p.dy = dy16.data();
    p.a = a.data(), p.D = D.data(), p.starts = st, p.init_state = ini;
    p.y = y16.data(), p.final_state = fin.data();
    ssd_run_forward<PP, NP>(p);
    p.dx = dx16.data(), p.dB = dB16.data(), p.dC = dC16.data(), p.da = da.data(), p.d_init = k.init ? dini.data() : nullptr;
    ssd_run_backward<PP, NP>(p, dD.data());

    char log[512] = "";
    bool ok = true;
    ok &= close_enough("y", from_bf16(y16).data(), y_ref.data(), nx, 1e-2, log, sizeof log);
    ok &= close_enough("final", fin.data(), fin_ref.data(), ns, 1e-2, log, sizeof log); /* w·B rounded to bf16 */
    ok &= close_enough("dx", from_bf16(dx16).data(), dx_ref.data(), nx, 1e-2, log, sizeof log);
    ok &= close_enough("dB", from_bf16(dB16).data(), dB_ref.data(), nbc, 1e-2, log, sizeof log);
    ok &= close_enough("dC", from_bf16(dC16).data(), dC_ref.data(), nbc, 1e-2, log, sizeof log);
    ok &= close_enough("da", da.data(), da_ref.data(), na, 1e-2, log, sizeof log);
    ok &= close_enough("dD", dD.data(), dD_ref.data(), H, 1e-2, log, sizeof log);
    if (k.init) ok &= close_enough("dinit", dini.data(), dini_ref.data(), ns, 1e-2, log, sizeof log);
    failures += !ok;
    printf("%s %d - ssd sim B=%d T=%d H=%d G=%d P=%d N=%d chunk=%d%s%s (PP=%d NP=%d): rel_l2%s\n", ok ? "ok" : "not ok",
           ++case_no, B, T, H, G, P, N, k.chunk, k.docs ? " docs" : "", k.init ? " init" : "", PP, NP, log);
    fflush(stdout);
}

/* The materialised matrix and its backward against ssd_matrix_forward/backward. */
static void check_matrix(int B, int T, int H, int G, int N, int docs) {
    const size_t nbc = (size_t)B * T * G * N, na = (size_t)B * T * H, nt = (size_t)B * H * T * T;
    std::vector<float> Bm(nbc), Cm(nbc), a(na), D(H), dT(nt);
    for (auto &v : Bm) v = randf() * 0.5f;
    for (auto &v : Cm) v = randf() * 0.5f;
    for (auto &v : a) v = (float)-log1p(exp(2.0 * randf() - 1.5));
    for (auto &v : D) v = randf();
    for (auto &v : dT) v = randf();
    std::vector<uint8_t> starts(docs ? (size_t)B * T : 0);
    for (size_t i = 0; i < starts.size(); i++) starts[i] = randu() < 1.0 / 15;
    const uint8_t *st = docs ? starts.data() : nullptr;
    auto B16 = to_bf16(Bm), C16 = to_bf16(Cm);
    ssd_dims d = {B, T, H, 1, G, N};
    std::vector<float> T_ref(nt), dB_ref(nbc), dC_ref(nbc), da_ref(na), dD_ref(H);
    ssd_matrix_forward(T_ref.data(), Bm.data(), Cm.data(), a.data(), D.data(), st, &d);
    ssd_matrix_backward(dB_ref.data(), dC_ref.data(), da_ref.data(), dD_ref.data(), dT.data(), Bm.data(), Cm.data(),
                        a.data(), st, &d);

    ssdm_params p;
    size_t bytes = ssdm_setup(&p, B, T, H, G, N, 1, nullptr);
    std::vector<unsigned char> ws(bytes + 256, 0xFF);
    ssdm_setup(&p, B, T, H, G, N, 1, (void *)(((uintptr_t)ws.data() + 255) & ~(uintptr_t)255));
    auto Tm = poisoned32(nt), da = poisoned32(na), dD = poisoned32(H);
    auto dB16 = poisoned16(nbc), dC16 = poisoned16(nbc);
    p.Bm = B16.data(), p.Cm = C16.data(), p.a = a.data(), p.D = D.data(), p.starts = st, p.Tm = Tm.data();
    ssdm_run_forward(p);
    p.dTm = dT.data(), p.da = da.data(), p.dD = dD.data();
    ssdm_run_backward(p, dB16.data(), dC16.data());

    char log[512] = "";
    bool ok = true;
    ok &= close_enough("T", Tm.data(), T_ref.data(), nt, 1e-5, log, sizeof log);
    ok &= close_enough("dB", from_bf16(dB16).data(), dB_ref.data(), nbc, 1e-2, log, sizeof log);
    ok &= close_enough("dC", from_bf16(dC16).data(), dC_ref.data(), nbc, 1e-2, log, sizeof log);
    ok &= close_enough("da", da.data(), da_ref.data(), na, 1e-4, log, sizeof log);
    ok &= close_enough("dD", dD.data(), dD_ref.data(), H, 1e-5, log, sizeof log);
    failures += !ok;
    printf("%s %d - ssd matrix sim B=%d T=%d H=%d G=%d N=%d%s: rel_l2%s\n", ok ? "ok" : "not ok", ++case_no, B, T, H,
           G, N, docs ? " docs" : "", log);
    fflush(stdout);
}

/* ---- DiscreteMamba2 elementwise kernels ---- */

static void report(bool ok, const char *what, const char *log) {
    failures += !ok;
    printf("%s %d - %s: rel_l2%s\n", ok ? "ok" : "not ok", ++case_no, what, log);
    fflush(stdout);
}

static std::vector<float> rnd(size_t n, float scale) {
    std::vector<float> v(n);
    for (auto &x : v) x = scale * randf();
    return v;
}

/* conv forward/backward on strided rows against dm2_conv_forward/backward,
 * with V channels per thread (4: every stride a multiple of 4) */
template <int V> static void check_conv(int B, int T, int C, int ld_in, int docs) {
    const size_t BT = (size_t)B * T;
    auto in = rnd(BT * ld_in, 1), w = rnd((size_t)C * 4, 0.7f), bias = rnd(C, 0.5f), dout = rnd(BT * C, 1);
    auto dw0 = rnd((size_t)C * 4, 1), db0 = rnd(C, 1); /* gradients accumulate onto these */
    auto in16 = to_bf16(in), dout16 = to_bf16(dout);
    std::vector<uint8_t> starts(docs ? BT : 0);
    for (auto &x : starts) x = randu() < 0.1;
    const uint8_t *st = docs ? starts.data() : nullptr;
    std::vector<float> out_ref(BT * C), din_ref(BT * ld_in, 0.0f), dw_ref = dw0, db_ref = db0;
    dm2_conv_forward(out_ref.data(), C, in.data(), ld_in, w.data(), bias.data(), st, B, T, C);
    dm2_conv_backward(din_ref.data(), ld_in, dw_ref.data(), db_ref.data(), dout.data(), C, in.data(), ld_in, w.data(),
                      st, B, T, C);
    auto out16 = poisoned16(BT * C), din16 = poisoned16(BT * ld_in);
    std::vector<float> dw = dw0, db = db0;
    /* a grid of at most 2 row blocks, so that the forward's runs also loop */
    const unsigned fwd_y = std::min(dm2k_conv_fwd_blocks((int64_t)BT), 2u);
    sim_launch(dm2k_conv_groups(C, V), fwd_y, DM2K_THREADS, [&]() {
        dm2k_conv_fwd_kernel<V>(out16.data(), C, in16.data(), ld_in, w.data(), bias.data(), st, B, T, C);
    });
    const int nparts = dm2k_row_blocks((int64_t)BT), rpb = dm2k_rows_per_block((int64_t)BT);
    std::vector<float> part((size_t)nparts * (DM2K_K + 1) * C, NAN);
    sim_launch(dm2k_conv_groups(C, V), (unsigned)nparts, DM2K_THREADS, [&]() {
        dm2k_conv_bwd_kernel<V>(din16.data(), ld_in, part.data(), rpb, dout16.data(), C, in16.data(), ld_in, w.data(),
                                st, B, T, C);
    });
    sim_launch((unsigned)((DM2K_K + 1) * C + 31) / 32, 1, DM2K_THREADS,
               [&]() { dm2k_sum_parts_kernel(dw.data(), db.data(), part.data(), nparts, C, DM2K_K); });
    /* din: compare the C written columns of each row */
    std::vector<float> din_got, din_want;
    for (size_t r = 0; r < BT; r++)
        for (int c = 0; c < C; c++) din_got.push_back(ssd_bf2f(din16[r * ld_in + c])), din_want.push_back(din_ref[r * ld_in + c]);
    char log[512] = "", what[128];
    bool ok = true;
    ok &= close_enough("out", from_bf16(out16).data(), out_ref.data(), BT * C, 1e-2, log, sizeof log);
    ok &= close_enough("din", din_got.data(), din_want.data(), din_got.size(), 1e-2, log, sizeof log);
    ok &= close_enough("dw", dw.data(), dw_ref.data(), dw.size(), 1e-5, log, sizeof log);
    ok &= close_enough("dbias", db.data(), db_ref.data(), db.size(), 1e-5, log, sizeof log);
    snprintf(what, sizeof what, "dm2 conv sim V=%d B=%d T=%d C=%d ld_in=%d%s", V, B, T, C, ld_in, docs ? " docs" : "");
    report(ok, what, log);
}

/* decay and gate against float64 written here */
static void check_decay_gate(int64_t rows, int H, int inner, int ldz) {
    const int ld = H + 3;
    auto Al = rnd((size_t)rows * ld, 4), da = rnd((size_t)rows * H, 1);
    auto Al16 = to_bf16(Al);
    std::vector<float> a(rows * H, NAN), a_ref(rows * H), dAl_ref(rows * H);
    auto dAl16 = poisoned16((size_t)rows * ld);
    for (int64_t r = 0; r < rows; r++)
        for (int h = 0; h < H; h++) {
            double x = Al[r * ld + h];
            a_ref[r * H + h] = (float)-(fmax(x, 0) + log1p(exp(-fabs(x))));
            dAl_ref[r * H + h] = (float)(-(double)da[r * H + h] / (1 + exp(-x)));
        }
    sim_launch(4, 1, 64, [&]() { dm2k_decay_fwd_kernel(a.data(), Al16.data(), ld, rows, H); });
    sim_launch(4, 1, 64, [&]() { dm2k_decay_bwd_kernel(dAl16.data(), ld, da.data(), Al16.data(), ld, rows, H); });
    std::vector<float> dAl(rows * H);
    for (int64_t r = 0; r < rows; r++)
        for (int h = 0; h < H; h++) dAl[r * H + h] = ssd_bf2f(dAl16[r * ld + h]);

    auto y = rnd((size_t)rows * inner, 1), z = rnd((size_t)rows * ldz, 3), zb = rnd(inner, 1),
         dyg = rnd((size_t)rows * inner, 1), dzb0 = rnd(inner, 1);
    auto y16 = to_bf16(y), z16 = to_bf16(z), dyg16 = to_bf16(dyg);
    std::vector<float> yg_ref(rows * inner), dy_ref(rows * inner), dz_ref(rows * inner), dzb_ref = dzb0, dzb = dzb0;
    for (int64_t r = 0; r < rows; r++)
        for (int i = 0; i < inner; i++) {
            double v = (double)z[r * ldz + i] + zb[i], sg = 1 / (1 + exp(-v)), g = dyg[r * inner + i];
            yg_ref[r * inner + i] = (float)(y[r * inner + i] * v * sg);
            dy_ref[r * inner + i] = (float)(g * v * sg);
            double gz = g * y[r * inner + i] * sg * (1 + v * (1 - sg));
            dz_ref[r * inner + i] = (float)gz;
            dzb_ref[i] += (float)gz;
        }
    auto yg16 = poisoned16((size_t)rows * inner), dy16 = poisoned16((size_t)rows * inner),
         dz16 = poisoned16((size_t)rows * ldz);
    if (inner % 8 == 0 && ldz % 8 == 0) /* 8 columns per thread, 3 row blocks so that the rows loop */
        sim_launch((unsigned)(inner / 8 + 63) / 64, 3, 64,
                   [&]() { dm2k_gate_fwd_kernel<8>(yg16.data(), y16.data(), z16.data(), ldz, zb.data(), rows, inner); });
    else
        sim_launch((unsigned)(inner + 63) / 64, 3, 64,
                   [&]() { dm2k_gate_fwd_kernel<1>(yg16.data(), y16.data(), z16.data(), ldz, zb.data(), rows, inner); });
    const int nparts = dm2k_row_blocks(rows), rpb = dm2k_rows_per_block(rows);
    std::vector<float> part((size_t)nparts * inner, NAN);
    sim_launch((unsigned)(inner + 31) / 32, (unsigned)nparts, DM2K_THREADS, [&]() {
        dm2k_gate_bwd_kernel(dy16.data(), dz16.data(), ldz, part.data(), rpb, dyg16.data(), y16.data(), z16.data(),
                             ldz, zb.data(), rows, inner);
    });
    sim_launch((unsigned)(inner + 31) / 32, 1, DM2K_THREADS,
               [&]() { dm2k_sum_parts_kernel(nullptr, dzb.data(), part.data(), nparts, inner, 0); });
    std::vector<float> dz(rows * inner);
    for (int64_t r = 0; r < rows; r++)
        for (int i = 0; i < inner; i++) dz[r * inner + i] = ssd_bf2f(dz16[r * ldz + i]);
    char log[512] = "", what[128];
    bool ok = true;
    ok &= close_enough("a", a.data(), a_ref.data(), a.size(), 1e-6, log, sizeof log);
    ok &= close_enough("dA_log", dAl.data(), dAl_ref.data(), dAl.size(), 1e-2, log, sizeof log);
    ok &= close_enough("yg", from_bf16(yg16).data(), yg_ref.data(), yg_ref.size(), 1e-2, log, sizeof log);
    ok &= close_enough("dy", from_bf16(dy16).data(), dy_ref.data(), dy_ref.size(), 1e-2, log, sizeof log);
    ok &= close_enough("dz", dz.data(), dz_ref.data(), dz.size(), 1e-2, log, sizeof log);
    ok &= close_enough("dz_bias", dzb.data(), dzb_ref.data(), dzb.size(), 1e-4, log, sizeof log);
    snprintf(what, sizeof what, "dm2 decay+gate sim rows=%lld H=%d inner=%d ldz=%d", (long long)rows, H, inner, ldz);
    report(ok, what, log);
}

/* Decode: the step kernels against dm2_step, then the conv state of a prompt
 * against dm2_prefill.  The tokens are one-hot rows of the input, so the
 * in_proj output is exactly a (bf16-rounded) column of in_proj: both sides
 * see the same proj. */
static void check_decode(int B, int H, int P, int N, int G, int steps) {
    dm2_config cfg = {16, H, P, N, G, 0, 0};
    const int D = cfg.d_model, in_dim = dm2_in_proj_dim(&cfg), conv = dm2_conv_dim(&cfg), inner = dm2_d_inner(&cfg);
    dm2_params prm;
    dm2_params_alloc(&prm, &cfg);
    for (size_t i = 0; i < dm2_param_count(&cfg); i++) prm.memory[i] = 0.5f * randf();
    for (size_t i = 0; i < (size_t)in_dim * D; i++) prm.in_proj_w[i] = ssd_bf2f(ssd_f2bf(prm.in_proj_w[i] * 2));
    dm2_cache *cpu = dm2_cache_alloc(B, &cfg, nullptr);
    std::vector<float> ssm((size_t)B * H * P * N, 0.0f), cst((size_t)B * conv * 4, 0.0f), xbc((size_t)B * conv);
    std::vector<bf16> proj((size_t)B * in_dim), yg16((size_t)B * inner);
    std::vector<float> u((size_t)B * D), out_ref((size_t)B * inner);
    std::vector<uint8_t> reset(B);
    double num = 0, den = 0;
    size_t nan = 0;
    for (int s = 0; s < steps; s++) {
        for (int b = 0; b < B; b++) {
            int k = (int)(randu() * D);
            for (int j = 0; j < D; j++) u[(size_t)b * D + j] = j == k;
            for (int j = 0; j < in_dim; j++) proj[(size_t)b * in_dim + j] = ssd_f2bf(prm.in_proj_w[(size_t)j * D + k]);
            reset[b] = s > 0 && randu() < 0.25;
        }
        dm2_step(out_ref.data(), cpu, &prm, u.data(), reset.data());
        for (auto &v : yg16) v = bf16{0xFFFF};
        sim_launch(4, 1, 64, [&]() {
            dm2k_step_conv_kernel(xbc.data(), cst.data(), proj.data(), in_dim, prm.conv_w, prm.conv_b, reset.data(), B,
                                  conv);
        });
        sim_launch((unsigned)(B * H), 1, 128, [&]() {
            dm2k_step_ssm_kernel(yg16.data(), ssm.data(), xbc.data(), proj.data(), in_dim, prm.D, prm.z_bias,
                                 reset.data(), B, H, P, N, G);
        });
        for (size_t i = 0; i < out_ref.size(); i++) {
            float g = ssd_bf2f(yg16[i]);
            if (isnan(g)) {
                nan++;
                continue;
            }
            num += (g - out_ref[i]) * (double)(g - out_ref[i]), den += (double)out_ref[i] * out_ref[i];
        }
    }
    char log[512] = "", what[128];
    snprintf(log, sizeof log, " out %.1e%s", sqrt(num / den), nan ? "(NaN!)" : "");
    bool ok = nan == 0 && sqrt(num / den) <= 1e-2;
    ok &= close_enough("ssm", ssm.data(), cpu->ssm, ssm.size(), 1e-5, log, sizeof log);
    ok &= close_enough("conv", cst.data(), cpu->conv, cst.size(), 1e-6, log, sizeof log);

    /* conv state after a prompt */
    const int T = 9;
    ra_error err;
    dm2_acts *acts = dm2_alloc_state(B, T, &cfg, &err);
    std::vector<float> up((size_t)B * T * D), outp((size_t)B * T * inner);
    for (auto &v : up) v = randf();
    std::vector<uint8_t> st((size_t)B * T, 0);
    for (int b = 0; b < B; b++) st[(size_t)b * T + (b % 3 == 1 ? T - 2 : b % 3 == 2 ? 3 : 0)] = 1;
    dm2_cache_reset(cpu, -1);
    dm2_prefill(outp.data(), acts, cpu, &prm, up.data(), st.data());
    std::vector<float> projf(acts->proj, acts->proj + (size_t)B * T * in_dim);
    auto proj16 = to_bf16(projf);
    auto cs = poisoned32((size_t)B * conv * 4);
    sim_launch(4, 1, 64, [&]() { dm2k_conv_state_kernel(cs.data(), proj16.data(), in_dim, st.data(), B, T, conv); });
    ok &= close_enough("prompt conv", cs.data(), cpu->conv, cs.size(), 1e-2, log, sizeof log);
    snprintf(what, sizeof what, "dm2 decode sim B=%d H=%d P=%d N=%d G=%d steps=%d", B, H, P, N, G, steps);
    report(ok, what, log);
    dm2_free_state(acts);
    dm2_cache_free(cpu);
    dm2_params_free(&prm);
}

int main(int argc, char **argv) {
    (void)argv;
    check<64, 64>({1, 40, 2, 2, 64, 64, 128, 0, 0});   /* one short chunk */
    check<64, 64>({1, 300, 2, 1, 64, 64, 128, 1, 0});  /* 3 chunks, docs, G < H */
    check<64, 16>({2, 200, 2, 2, 64, 8, 128, 1, 1});   /* N = 8, initial state */
    check<64, 64>({1, 150, 4, 2, 48, 40, 64, 1, 1});   /* P, N not multiples of 16, chunk 64 */
    check<64, 16>({1, 300, 2, 2, 64, 8, 16, 1, 1});    /* 19 chunks: state passing in several batches */
    check_matrix(1, 70, 4, 2, 40, 1);
    check_matrix(2, 33, 2, 2, 8, 0);
    check_matrix(2, 100, 3, 1, 64, 1); /* warps of the scans across blocks, N = 64 */
    check_conv<1>(2, 50, 70, 100, 1);
    check_conv<1>(1, 130, 33, 33, 0);
    check_conv<1>(3, 200, 40, 40, 1); /* 10 row blocks of partial sums */
    check_conv<4>(3, 200, 40, 40, 1);
    check_conv<4>(2, 70, 128 + 16, 512, 1); /* two channel groups, the second partly idle */
    check_conv<4>(3, 2, 8, 8, 0);           /* fewer tokens than taps */
    check_conv<4>(2, 90, 132, 140, 1);
    check_decay_gate(150, 5, 40, 45);
    check_decay_gate(150, 5, 64, 72); /* the gate 8 columns per thread */
    check_decode(3, 4, 8, 8, 2, 7);
    check_decode(2, 2, 16, 40, 1, 5);
    if (argc > 1) { /* slower: the widest tiles */
        check<128, 128>({1, 140, 2, 1, 128, 128, 128, 1, 1});
        check<128, 16>({1, 260, 2, 2, 100, 16, 128, 0, 1});
    }
    printf("1..%d\n", case_no);
    return failures ? 1 : 0;
}
