/* Time and repeatability of the CUDA DiscreteMamba2 mixer forward and backward
 * (cuda_dm2_backward: out_proj, gate, SSD core, conv, decay, in_proj) and of
 * the SSD core backward alone (cuda_ssd_chunked_backward_after_forward), on
 * random inputs with document starts.
 *
 *   build/bench/dm2_backward [--batch 2] [--seq-len 2048] [--d-model 2048] [--heads 32]
 *                            [--head-dim 64] [--d-state 64] [--groups 1] [--out-proj 0]
 *                            [--iters 20] [--repeats 5]
 *
 * Times with CUDA events after 3 warm-up calls; medians of --iters.  Then
 * --repeats times: zero the gradients, forward, backward, and hash every
 * parameter gradient, the input gradient and the SSD outputs (XXH3-128);
 * "distinct" counts the different hashes (1 = bit-reproducible).  Only the
 * mixer and SSD entry points are used, so the same file builds against
 * older trees for before/after figures.  Ends with one RESULT line. */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "dm2.h"
#include "dm2_cuda.h"
#include "dtype.h"
#include "bench.h"
#include "ops_cuda.h"
#include "rng.h"
#include "ssd_cuda.h"

static void hash_dev(XXH3_state_t *st, const void *d, size_t bytes) {
    void *h = xmalloc(bytes);
    cuda_synchronize();
    cuda_download(h, d, bytes);
    XXH3_128bits_update(st, h, bytes);
    free(h);
}

int main(int argc, char **argv) {
    int B = 2, T = 2048, D = 2048, H = 32, P = 64, N = 64, G = 1, outp = 0, iters = 20, repeats = 5;
    for (int i = 1; i + 1 < argc; i += 2) {
        int v = atoi(argv[i + 1]);
        if (!strcmp(argv[i], "--batch")) B = v;
        else if (!strcmp(argv[i], "--seq-len")) T = v;
        else if (!strcmp(argv[i], "--d-model")) D = v;
        else if (!strcmp(argv[i], "--heads")) H = v;
        else if (!strcmp(argv[i], "--head-dim")) P = v;
        else if (!strcmp(argv[i], "--d-state")) N = v;
        else if (!strcmp(argv[i], "--groups")) G = v;
        else if (!strcmp(argv[i], "--out-proj")) outp = v;
        else if (!strcmp(argv[i], "--iters")) iters = v;
        else if (!strcmp(argv[i], "--repeats")) repeats = v;
        else {
            fprintf(stderr, "dm2_backward: unknown option %s\n", argv[i]);
            return EX_USAGE;
        }
    }
    ra_error err = {0, ""};
    if (cuda_device_init(0, &err)) ra_die_error(&err);
    dm2_config cfg = {D, H, P, N, G, 0, outp};
    if (dm2_check_config(&cfg, &err)) ra_die_error(&err);
    const size_t BT = (size_t)B * T, np = dm2_param_count(&cfg), od = dm2_out_dim(&cfg);
    dm2_params prm;
    dm2_params_alloc(&prm, &cfg);
    ra_rng rng;
    rng_seed(&rng, 1);
    rng_fill_uniform(&rng, prm.memory, np, -0.05f, 0.05f);
    cuda_dm2_params dp;
    cuda_dm2_params_upload(&dp, &prm, &cfg);
    cuda_dm2_acts *s = cuda_dm2_acts_alloc(B, T, &cfg, &err);
    if (!s) ra_die_error(&err);
    cuda_dm2_grads g;
    cuda_dm2_grads_alloc(&g, &cfg);
    uint16_t *u = cuda_malloc(BT * D * 2), *dout = cuda_malloc(BT * od * 2), *out = cuda_malloc(BT * od * 2);
    cuda_fill_uniform_bf16(u, (int64_t)(BT * D), 0.0f, 1.0f, 2);
    cuda_fill_uniform_bf16(dout, (int64_t)(BT * od), 0.0f, 1.0f, 3);
    uint16_t *du = cuda_malloc(BT * D * 2);
    uint8_t *sh = xmalloc(BT);
    for (size_t i = 0; i < BT; i++) sh[i] = rng_uniform(&rng) > 0.999; /* documents of ~1000 tokens */
    uint8_t *st = cuda_malloc(BT);
    cuda_upload(st, sh, BT);
    free(sh);
    ssd_dims d = dm2_ssd_dims(&cfg, B, T);

    cudaStream_t stream = (cudaStream_t)cuda_get_stream();
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0), cudaEventCreate(&e1);
    float *t_fwd = xmalloc(sizeof(float) * iters), *t_mix = xmalloc(sizeof(float) * iters),
          *t_ssd = xmalloc(sizeof(float) * iters);
    cuda_memset(du, 0, BT * D * 2);
    for (int i = 0; i < 3 + iters; i++) {
        cudaEventRecord(e0, stream);
        cuda_dm2_forward(out, NULL, s, &dp, u, st);
        cudaEventRecord(e1, stream);
        cudaEventSynchronize(e1);
        if (i >= 3) cudaEventElapsedTime(&t_fwd[i - 3], e0, e1);
    }
    for (int i = 0; i < 3 + iters; i++) {
        cudaEventRecord(e0, stream);
        cuda_dm2_backward(&g, du, dout, s, &dp, u, st);
        cudaEventRecord(e1, stream);
        cudaEventSynchronize(e1);
        if (i >= 3) cudaEventElapsedTime(&t_mix[i - 3], e0, e1);
    }
    for (int i = 0; i < 3 + iters; i++) { /* the SSD core alone, on the mixer's own buffers */
        cudaEventRecord(e0, stream);
        cuda_ssd_chunked_backward_after_forward(s->dx, s->dBm, s->dCm, s->da, s->dD, NULL, s->dy, s->x, s->Bm, s->Cm,
                                                s->a, dp.D, st, NULL, &d, cfg.chunk > 0 ? cfg.chunk : SSD_DEFAULT_CHUNK, s->ws);
        cudaEventRecord(e1, stream);
        cudaEventSynchronize(e1);
        if (i >= 3) cudaEventElapsedTime(&t_ssd[i - 3], e0, e1);
    }
    float m_fwd = bench_median(t_fwd, iters), m_mix = bench_median(t_mix, iters), m_ssd = bench_median(t_ssd, iters);

    XXH128_hash_t *hs = xmalloc(sizeof *hs * repeats);
    int distinct = 0;
    for (int r = 0; r < repeats; r++) {
        cuda_memset(g.memory, 0, np * 4);
        cuda_memset(du, 0, BT * D * 2);
        cuda_dm2_forward(out, NULL, s, &dp, u, st);
        cuda_dm2_backward(&g, du, dout, s, &dp, u, st);
        XXH3_state_t *x = XXH3_createState();
        XXH3_128bits_reset(x);
        hash_dev(x, g.memory, np * 4);
        hash_dev(x, du, BT * D * 2);
        hash_dev(x, s->dx, BT * dm2_d_inner(&cfg) * 2);
        hash_dev(x, s->da, BT * H * 4);
        hs[r] = XXH3_128bits_digest(x);
        XXH3_freeState(x);
        int seen = 0;
        for (int q = 0; q < r; q++) seen |= XXH128_isEqual(hs[q], hs[r]);
        distinct += !seen;
    }
    printf("dm2 backward B%d T%d D%d H%d P%d N%d G%d %s: mixer forward %.3f ms, mixer backward %.3f ms, "
           "SSD core backward %.3f ms, %d distinct results of %d runs\n",
           B, T, D, H, P, N, G, outp ? "out_proj" : "routed", m_fwd, m_mix, m_ssd, distinct, repeats);
    printf("RESULT mixer_fwd_ms=%.3f mixer_bwd_ms=%.3f ssd_bwd_ms=%.3f distinct=%d repeats=%d\n", m_fwd, m_mix, m_ssd,
           distinct, repeats);
    cuda_dm2_acts_free(s), cuda_dm2_grads_free(&g), cuda_dm2_params_free(&dp), dm2_params_free(&prm);
    cuda_free(u), cuda_free(dout), cuda_free(out), cuda_free(du), cuda_free(st);
    free(t_fwd), free(t_mix), free(t_ssd), free(hs);
    return 0;
}
