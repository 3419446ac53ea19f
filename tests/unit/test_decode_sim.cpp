/* Host simulation of the decode attention kernel (kernels/decode_attention.cuh):
 * the GPU source compiled against tests/unit/cuda_sim.h (lane-by-lane
 * shuffles, threads as coroutines, shared memory poisoned with NaN) and
 * launched as kernels/hybrid_ops.cu launches it, against a float64
 * attention over the same bf16 cache.  Cases: GQA groups of 1, 3, 4, 8 and
 * 16 query heads (several head chunks), head dims 16 to 128, rows with
 * different first keys (left padding), fewer keys than key groups, a key
 * range that is not a multiple of the groups.  Outputs poisoned first.
 * Built by make unit (g++ only); TAP output. */
#include <vector>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function" /* the simulator's primitives this kernel does not use */
#include "cuda_sim.h"
#pragma GCC diagnostic pop

#ifndef rsqrtf
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
#endif

#include "decode_attention.cuh"

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static float randf(void) {
    rng ^= rng >> 12, rng ^= rng << 25, rng ^= rng >> 27;
    return (float)((double)((rng * 0x2545F4914F6CDD1Dull) >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}
static bf16 tobf(float f) { return bf16{sim_f2bf_bits(f)}; }
static float fromb(bf16 b) { return sim_bf2f_bits(b.bits); }

template <int QB>
static void launch(std::vector<bf16> &out, const std::vector<bf16> &q, int64_t ldq, const std::vector<bf16> &k,
                   const std::vector<bf16> &v, const std::vector<int32_t> &first, int last, int B, int nq, int nkv,
                   int hd, int T_max) {
    const int qg = nq / nkv, chunks = (qg + QB - 1) / QB, threads = QB <= 4 ? 256 : 128, G = threads / (hd / 8);
    size_t smem = sizeof(float) * (size_t)G * QB * (2 + hd);
    if (smem > sizeof sim_smem_buf) {
        fprintf(stderr, "sim: %zu bytes of shared memory\n", smem);
        exit(1);
    }
    sim_launch((unsigned)(nkv * B), (unsigned)chunks, (unsigned)threads, [&]() {
        dak_octet_kernel<QB>(out.data(), q.data(), ldq, k.data(), v.data(), first.data(), last, nq, nkv, hd, T_max);
    });
}

static int case_no, exit_code;

static void run_case(int B, int nq, int nkv, int hd, int T_max, int last, std::vector<int32_t> first) {
    const int64_t ldq = (int64_t)(nq + 2 * nkv) * hd; /* q heads inside a fused qkv row, as the step has them */
    std::vector<bf16> q((size_t)B * ldq), k((size_t)B * nkv * T_max * hd), v(k.size()), out((size_t)B * nq * hd);
    for (auto &x : q) x = tobf(2 * randf());
    for (auto &x : k) x = tobf(randf());
    for (auto &x : v) x = tobf(randf());
    for (auto &x : out) x = bf16{0x7fc0}; /* NaN: unwritten outputs show */
    const int qg = nq / nkv;
    if (qg == 1) launch<1>(out, q, ldq, k, v, first, last, B, nq, nkv, hd, T_max);
    else if (qg == 2) launch<2>(out, q, ldq, k, v, first, last, B, nq, nkv, hd, T_max);
    else if (qg <= 4) launch<4>(out, q, ldq, k, v, first, last, B, nq, nkv, hd, T_max);
    else launch<8>(out, q, ldq, k, v, first, last, B, nq, nkv, hd, T_max);
    double num = 0, den = 0;
    bool finite = true;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < nq; h++) {
            size_t kv = ((size_t)b * nkv + h / qg) * T_max * hd;
            std::vector<double> sc(last + 1);
            double mx = -1e300, sum = 0;
            for (int j = first[b]; j <= last; j++) {
                double d = 0;
                for (int p = 0; p < hd; p++) d += (double)fromb(q[b * ldq + h * hd + p]) * fromb(k[kv + (size_t)j * hd + p]);
                sc[j] = d / sqrt((double)hd);
                mx = std::max(mx, sc[j]);
            }
            for (int j = first[b]; j <= last; j++) sum += sc[j] = exp(sc[j] - mx);
            for (int p = 0; p < hd; p++) {
                double want = 0;
                for (int j = first[b]; j <= last; j++) want += sc[j] * fromb(v[kv + (size_t)j * hd + p]);
                want /= sum;
                float got = fromb(out[((size_t)b * nq + h) * hd + p]);
                finite &= std::isfinite(got);
                num += (got - want) * (got - want), den += want * want;
            }
        }
    double e = sqrt(num / den);
    bool ok = finite && e <= 1e-2;
    printf("%s %d - decode attention sim B=%d nq=%d nkv=%d hd=%d keys %d..%d: rel_l2 %.2e\n", ok ? "ok" : "not ok",
           ++case_no, B, nq, nkv, hd, first[0], last, e);
    if (!ok) exit_code = 1;
}

int main(void) {
    run_case(3, 8, 2, 64, 300, 290, {0, 17, 290});  /* teacher: 4 heads per KV head, left padding, one key */
    run_case(2, 3, 3, 64, 100, 77, {5, 0});          /* hybrid: each kept head its own K/V */
    run_case(2, 6, 2, 32, 64, 40, {0, 3});           /* 3 heads per group: QB 4 with one unused */
    run_case(1, 16, 2, 128, 50, 49, {0});            /* 8 heads per group at hd 128: 128 threads */
    run_case(2, 32, 2, 16, 70, 69, {1, 0});          /* 16 heads per group: two head chunks, hd 16 */
    run_case(1, 1, 1, 64, 600, 5, {0});              /* fewer keys than key groups */
    printf("1..%d\n", case_no);
    return exit_code;
}
