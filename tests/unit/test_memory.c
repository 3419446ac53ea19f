/* Decode-state memory (DESIGN §2.6) for the Llama-3.2-1B shape: the figures
 * the design gives must come out of ra_model_state_sizes. */
#include "hybrid.h"
#include "model.h"
#include "test.h"

static hf_config llama_1b(void) {
    hf_config c = {0};
    strcpy(c.model_type, "llama");
    c.hidden_size = 2048, c.intermediate_size = 8192, c.num_layers = 16;
    c.num_heads = 32, c.num_kv_heads = 8, c.head_dim = 64, c.vocab_size = 128256;
    c.max_position_embeddings = 131072, c.rms_norm_eps = 1e-5, c.rope_theta = 500000;
    c.tie_word_embeddings = 1, c.bos_token_id = -1;
    return c;
}

/* bytes per sequence of L tokens with bf16 KV cache and bf16 SSM state */
static double state_mb(const ra_state_sizes *s, int L) {
    return ((double)s->kv_values_per_token * L + (double)s->ssm_state_values) * 2 / 1e6;
}

TEST(llama_1b_teacher_kv_cache) {
    hf_config c = llama_1b();
    ra_model *m = ra_model_shell(&c);
    ra_state_sizes s = ra_model_state_sizes(m);
    EXPECT_EQ_INT(s.ssm_state_values, 0);
    EXPECT_NEAR(state_mb(&s, 128), 4.19, 0.005);
    EXPECT_NEAR(state_mb(&s, 2048), 67.11, 0.005);
    EXPECT_NEAR(state_mb(&s, 4096), 134.22, 0.005);
    ra_model_free(m);
}

TEST(llama_1b_parallel_hybrid_ten_heads_state_8) {
    hf_config c = llama_1b();
    ra_hybrid_config h = {0};
    h.layout = RA_LAYOUT_PARALLEL, h.adapter = RA_ADAPTER_LINEAR, h.d_state = 8;
    h.conv_kernel = RA_HYBRID_CONV_KERNEL, h.chunk = RA_HYBRID_CHUNK, h.ssm_head_dim = 64;
    h.layers = 16, h.heads = 32;
    h.keep = xcalloc(16 * 32, 1);
    /* ten kept heads spread over layers, two of them sharing a KV group */
    int kept[10][2] = {{0, 1}, {2, 5}, {3, 0}, {3, 1}, {5, 9}, {7, 30}, {8, 12}, {10, 3}, {12, 17}, {15, 31}};
    for (int i = 0; i < 10; i++) h.keep[kept[i][0] * 32 + kept[i][1]] = 1;
    ra_error err = {0};
    EXPECT(ra_hybrid_check(&h, &c, "test", &err) == 0);
    ra_model *m = ra_model_shell_hybrid(&c, &h);
    ra_state_sizes s = ra_model_state_sizes(m);
    EXPECT_EQ_INT(s.kv_values_per_token, 10 * 2 * 64);
    EXPECT_EQ_INT(s.kv_values_shared, 9 * 2 * 64); /* heads 0 and 1 of layer 3 share a group */
    EXPECT_EQ_INT(s.ssm_state_values, 16 * 32 * 64 * 8); /* parallel: all 512 heads are SSM heads */
    EXPECT_NEAR(state_mb(&s, 128), 0.85, 0.005);
    EXPECT_NEAR(state_mb(&s, 2048), 5.77, 0.005);
    EXPECT_NEAR(state_mb(&s, 4096), 11.01, 0.005);
    ra_model_free(m);
    ra_hybrid_free(&h);
}

int main(void) {
    RUN(llama_1b_teacher_kv_cache);
    RUN(llama_1b_parallel_hybrid_ten_heads_state_8);
    return test_summary();
}
