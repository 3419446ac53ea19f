/* lib/decode_backend.h: the CPU decoder behind the dispatch is lib/decode.h
 * (same logits, bit for bit), its state size counts the KV cache and the
 * SSM and conv states, and a build without CUDA refuses --device cuda. */
#include "decode.h"
#include "decode_backend.h"
#include "hybrid_fixture.h"

TEST(cpu_backend_is_the_cpu_decoder) {
    ra_model *t = fx_teacher(0, 11);
    ra_model *m = fx_graft(t, "100100000000", RA_LAYOUT_PARALLEL, RA_ADAPTER_LINEAR, 4, RA_INIT_MOHAWK, 11);
    fx_fill_model(m, 12);
    const ra_decode_backend *be;
    ra_error err = {0, ""};
    EXPECT_EQ_INT(ra_decode_backend_get(RA_DEVICE_CPU, &be, &err), 0);
    EXPECT_STR(be->name, "cpu");
    int B = 2, T = 5, T_max = 9, V = m->cfg.vocab_size;
    int32_t tok[10], lens[2] = {5, 3};
    for (int i = 0; i < B * T; i++) tok[i] = (int32_t)(test_rand_u64() % (uint64_t)V);
    void *st;
    ra_decode *d;
    EXPECT_EQ_INT(be->create(m, B, T_max, &st, &err), 0);
    EXPECT_EQ_INT(ra_decode_create(m, B, T_max, &d, &err), 0);
    float *a = malloc(sizeof(float) * B * V), *b = malloc(sizeof(float) * B * V);
    EXPECT_EQ_INT(be->prefill(st, tok, T, lens, a, NULL, &err), 0);
    EXPECT_EQ_INT(ra_decode_prefill(d, tok, T, lens, b, NULL, &err), 0);
    EXPECT(memcmp(a, b, sizeof(float) * B * V) == 0);
    EXPECT_EQ_INT(be->step(st, tok, a, &err), 0);
    EXPECT_EQ_INT(ra_decode_step(d, tok, b, &err), 0);
    EXPECT(memcmp(a, b, sizeof(float) * B * V) == 0);
    /* fp32 state: KV per token × T_max, SSM and conv per row */
    ra_state_sizes z = ra_model_state_sizes(m);
    size_t want = ((size_t)z.kv_values_per_token * T_max + (size_t)z.ssm_state_values + (size_t)z.conv_state_values) *
                  B * sizeof(float);
    EXPECT_EQ_INT(be->state_bytes(st), want);
    EXPECT(z.kv_values_per_token > 0 && z.ssm_state_values > 0);
    be->destroy(st);
    ra_decode_free(d);
    free(a), free(b);
    ra_model_free(m);
    ra_model_free(t);
}

TEST(cuda_refused_without_cuda) {
    const ra_decode_backend *be;
    ra_error err = {0, ""};
    int rc = ra_decode_backend_get(RA_DEVICE_CUDA, &be, &err);
    if (RA_HAVE_CUDA) {
        EXPECT(rc == 0 || rc == EX_UNAVAILABLE); /* no GPU here, or one */
    } else {
        EXPECT_EQ_INT(rc, EX_UNAVAILABLE);
        EXPECT(strstr(err.msg, "--device cuda") != NULL);
        EXPECT(be == NULL);
    }
}

int main(void) {
    RUN(cpu_backend_is_the_cpu_decoder);
    RUN(cuda_refused_without_cuda);
    return test_summary();
}
