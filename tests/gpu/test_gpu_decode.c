/* CUDA decoding (kernels/decode_cuda.h): prefill + one-token steps give the
 * CUDA forward's logits at every position, and the CPU decoder's
 * (lib/decode.h), for teachers (GQA, MQA), routed and parallel hybrids and a
 * pure-SSM student; left-padded prompts of different lengths over several
 * prefill groups; the decode dispatch of lib/decode_backend.h; errors (a
 * full cache, a step before the prefill, a batch that does not fit).
 *
 * Bar: relative L2 ≤ 2e-2 for teachers, 3e-2 for hybrids (see
 * test_gpu_hybrid.c: bf16 activations and KV cache, bf16 operands in the
 * chunked SSD of the prefill, fp32 states), on the same bf16-rounded
 * weights on both backends. */
#include "decode.h"
#include "decode_backend.h"
#include "decode_cuda.h"
#include "forward_cuda.h"
#include "gpu_hybrid_fixture.h"
#include "ops_cuda.h"
#include "gpu_test.h"

#define TOL_TEACHER 2e-2
#define TOL_HYBRID 3e-2
#define TOL_OF(m) ((m)->hybrid ? TOL_HYBRID : TOL_TEACHER)

static const gx_case cases[] = {
    {"teacher llama3 GQA", 0, NULL, 0, 0, 0, 0},
    {"teacher MQA biases", 2, NULL, 0, 0, 0, 0},
    {"routed static", 0, "010010001111111100000000", RA_LAYOUT_ROUTED, RA_ADAPTER_STATIC, 8, 32},
    {"routed none hd64", 1, "100100000110", RA_LAYOUT_ROUTED, RA_ADAPTER_NONE, 16, 16},
    {"parallel linear", 0, "000100001100000000000001", RA_LAYOUT_PARALLEL, RA_ADAPTER_LINEAR, 8, 64},
    {"pure SSM parallel", 1, "", RA_LAYOUT_PARALLEL, RA_ADAPTER_LINEAR, 8, 32},
};
#define NCASES (sizeof cases / sizeof cases[0])

static cuda_model *upload(const ra_model *m) {
    cuda_model *cm;
    ra_error err = {0, ""};
    if (cuda_model_upload(m, &cm, &err)) {
        printf("# %s\n", err.msg);
        exit(1);
    }
    return cm;
}

/* Prefill T0 tokens of each row, step through the rest: every logit row
 * against the CUDA forward's at that position and the CPU decoder's. */
TEST(decode_matches_forward_and_cpu_decode) {
    for (size_t ci = 0; ci < NCASES; ci++) {
        ra_model *m = gx_model(&cases[ci], 500 + ci);
        cuda_model *cm = upload(m);
        int B = 2, T = 48, T0 = 29, V = m->cfg.vocab_size, n_out = T - T0 + 1;
        int32_t *tok = gx_tokens((size_t)B * T, V), *prompt = xmalloc(sizeof(int32_t) * B * T0);
        for (int b = 0; b < B; b++) memcpy(prompt + b * T0, tok + b * T, sizeof(int32_t) * T0);
        /* the CUDA forward over all T tokens */
        cuda_forward_state *fs;
        ra_error err = {0, ""};
        EXPECT_EQ_INT(cuda_forward_state_create(cm, B, T, &fs, &err), 0);
        float *fwd = xmalloc(sizeof(float) * B * T * V);
        ra_forward_opts o = {.logits = fwd};
        EXPECT_EQ_INT(cuda_forward_run(fs, tok, B, T, &o, NULL, &err), 0);
        cuda_forward_state_free(fs);
        /* CUDA and CPU decoders; want[b][j] = forward row (b, T0 − 1 + j) */
        cuda_decode *gd;
        ra_decode *cd;
        EXPECT_EQ_INT(cuda_decode_create(cm, B, T, &gd, &err), 0);
        EXPECT_EQ_INT(ra_decode_create(m, B, T, &cd, &err), 0);
        size_t rowsz = (size_t)n_out * V;
        float *g = xmalloc(sizeof(float) * B * rowsz), *c = xmalloc(sizeof(float) * B * rowsz);
        float *want = xmalloc(sizeof(float) * B * rowsz), *lg = xmalloc(sizeof(float) * B * V),
              *lc = xmalloc(sizeof(float) * B * V);
        int32_t next[2];
        for (int j = 0; j < n_out; j++) {
            if (j == 0) {
                EXPECT_EQ_INT(cuda_decode_prefill(gd, prompt, T0, NULL, lg, NULL, &err), 0);
                EXPECT_EQ_INT(ra_decode_prefill(cd, prompt, T0, NULL, lc, NULL, &err), 0);
            } else {
                for (int b = 0; b < B; b++) next[b] = tok[b * T + T0 - 1 + j];
                EXPECT_EQ_INT(cuda_decode_step(gd, next, lg, &err), 0);
                EXPECT_EQ_INT(ra_decode_step(cd, next, lc, &err), 0);
            }
            for (int b = 0; b < B; b++) {
                memcpy(g + b * rowsz + (size_t)j * V, lg + (size_t)b * V, sizeof(float) * V);
                memcpy(c + b * rowsz + (size_t)j * V, lc + (size_t)b * V, sizeof(float) * V);
                memcpy(want + b * rowsz + (size_t)j * V, fwd + ((size_t)b * T + T0 - 1 + j) * V, sizeof(float) * V);
            }
        }
        char what[160];
        snprintf(what, sizeof what, "%s: CUDA decode vs CUDA forward (%d positions)", cases[ci].name, n_out);
        gx_check(what, g, want, (size_t)B * rowsz, TOL_OF(m));
        snprintf(what, sizeof what, "%s: CUDA decode vs CPU decode", cases[ci].name);
        gx_check(what, g, c, (size_t)B * rowsz, TOL_OF(m));
        /* the cache is full now */
        EXPECT_EQ_INT(cuda_decode_step(gd, next, lg, &err), EX_USAGE);
        EXPECT(strstr(err.msg, "no room") != NULL);
        cuda_decode_free(gd);
        ra_decode_free(cd);
        free(tok), free(prompt), free(fwd), free(g), free(c), free(want), free(lg), free(lc);
        cuda_model_free(cm);
        ra_model_free(m);
    }
}

/* Prompts of lengths 7, 2, 11 left-padded into one batch, prefilled in two
 * groups (T_max 6000 gives 2 rows per group), then 6 steps with a different
 * token per row: each row as the CPU decoder has it. */
TEST(left_padded_prompts_over_prefill_groups) {
    static const int which[] = {1, 2, 4, 5};
    for (size_t wi = 0; wi < sizeof which / sizeof which[0]; wi++) {
        size_t ci = (size_t)which[wi];
        ra_model *m = gx_model(&cases[ci], 600 + ci);
        cuda_model *cm = upload(m);
        int B = 3, T = 11, steps = 6, T_max = 6000, V = m->cfg.vocab_size;
        int32_t lens[3] = {7, 2, 11};
        int32_t *prompt = gx_tokens((size_t)B * T, V), *next = gx_tokens((size_t)B * steps, V);
        cuda_decode *gd;
        ra_decode *cd;
        ra_error err = {0, ""};
        EXPECT_EQ_INT(cuda_decode_create(cm, B, T_max, &gd, &err), 0);
        EXPECT_EQ_INT(gd->prefill_rows, 2);
        EXPECT_EQ_INT(ra_decode_create(m, B, T + steps, &cd, &err), 0);
        float *g = xmalloc(sizeof(float) * B * V * (steps + 1)), *c = xmalloc(sizeof(float) * B * V * (steps + 1));
        EXPECT_EQ_INT(cuda_decode_prefill(gd, prompt, T, lens, g, NULL, &err), 0);
        EXPECT_EQ_INT(ra_decode_prefill(cd, prompt, T, lens, c, NULL, &err), 0);
        for (int s = 0; s < steps; s++) {
            EXPECT_EQ_INT(cuda_decode_step(gd, next + s * B, g + (size_t)(s + 1) * B * V, &err), 0);
            EXPECT_EQ_INT(ra_decode_step(cd, next + s * B, c + (size_t)(s + 1) * B * V, &err), 0);
        }
        char what[160];
        snprintf(what, sizeof what, "%s: left-padded batch, 2 prefill groups", cases[ci].name);
        gx_check(what, g, c, (size_t)B * V * (steps + 1), TOL_OF(m));
        cuda_decode_free(gd);
        ra_decode_free(cd);
        free(prompt), free(next), free(g), free(c);
        cuda_model_free(cm);
        ra_model_free(m);
    }
}

/* lib/decode_backend.h: the CUDA decoder by device, its state size. */
TEST(decode_backend_dispatch) {
    ra_model *m = gx_model(&cases[4], 700);
    const ra_decode_backend *be, *cpu;
    ra_error err = {0, ""};
    EXPECT_EQ_INT(ra_decode_backend_get(RA_DEVICE_CUDA, &be, &err), 0);
    EXPECT_EQ_INT(ra_decode_backend_get(RA_DEVICE_CPU, &cpu, &err), 0);
    EXPECT_STR(be->name, "cuda");
    int B = 2, T = 9, T_max = 20, V = m->cfg.vocab_size;
    void *sg = NULL, *sc = NULL;
    EXPECT_EQ_INT(be->create(m, B, T_max, &sg, &err), 0);
    EXPECT_EQ_INT(cpu->create(m, B, T_max, &sc, &err), 0);
    /* bf16 KV (2 bytes), fp32 SSM and conv: the CPU's fp32 figure less half its KV bytes */
    ra_state_sizes z = ra_model_state_sizes(m);
    size_t kv = (size_t)z.kv_values_per_token * T_max * B;
    EXPECT_EQ_INT(cpu->state_bytes(sc), kv * 4 + (size_t)B * (z.ssm_state_values + z.conv_state_values) * 4);
    EXPECT_EQ_INT(be->state_bytes(sg), kv * 2 + (size_t)B * (z.ssm_state_values + z.conv_state_values) * 4);
    int32_t *tok = gx_tokens((size_t)B * T, V);
    float *g = xmalloc(sizeof(float) * B * V * 2), *c = xmalloc(sizeof(float) * B * V * 2);
    EXPECT_EQ_INT(be->prefill(sg, tok, T, NULL, g, NULL, &err), 0);
    EXPECT_EQ_INT(cpu->prefill(sc, tok, T, NULL, c, NULL, &err), 0);
    EXPECT_EQ_INT(be->step(sg, tok, g + (size_t)B * V, &err), 0);
    EXPECT_EQ_INT(cpu->step(sc, tok, c + (size_t)B * V, &err), 0);
    gx_check("dispatch: parallel hybrid prefill + step", g, c, (size_t)2 * B * V, TOL_HYBRID);
    /* bad token ids are data errors */
    int32_t bad[2] = {0, V};
    EXPECT_EQ_INT(be->step(sg, bad, g, &err), EX_DATAERR);
    be->destroy(sg);
    cpu->destroy(sc);
    free(tok), free(g), free(c);
    ra_model_free(m);
}

TEST(decode_errors) {
    ra_model *m = gx_model(&cases[2], 800);
    cuda_model *cm = upload(m);
    cuda_decode *d = NULL;
    ra_error err = {0, ""};
    /* a batch the GPU cannot hold: EX_UNAVAILABLE naming it, nothing leaked */
    EXPECT_EQ_INT(cuda_decode_create(cm, 1 << 22, 8192, &d, &err), EX_UNAVAILABLE);
    printf("#   %s\n", err.msg);
    EXPECT(strstr(err.msg, "batch 4194304 x 8192") != NULL);
    EXPECT(d == NULL);
    EXPECT_EQ_INT(cuda_decode_create(cm, 0, 8, &d, &err), EX_USAGE);
    EXPECT_EQ_INT(cuda_decode_create(cm, 1, 8, &d, &err), 0);
    int32_t t = 1;
    EXPECT_EQ_INT(cuda_decode_step(d, &t, NULL, &err), EX_USAGE);
    EXPECT(strstr(err.msg, "before prefill") != NULL);
    EXPECT_EQ_INT(cuda_decode_prefill(d, &t, 9, NULL, NULL, NULL, &err), EX_USAGE);
    cuda_decode_free(d);
    cuda_model_free(cm);
    ra_model_free(m);
}

int main(void) {
    if (gpu_test_start()) return 1;
    RUN(decode_matches_forward_and_cpu_decode);
    RUN(left_padded_prompts_over_prefill_groups);
    RUN(decode_backend_dispatch);
    RUN(decode_errors);
    return test_summary();
}
