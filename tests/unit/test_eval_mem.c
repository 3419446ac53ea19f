/* ra-eval's mem task (lib/eval_mem.h) on the Llama-3.2-1B shape: the
 * DESIGN §2.6 figures (teacher KV 4.19 / 67.11 / 134.22 MB; parallel
 * hybrid, 10 kept heads, N = 8, bf16: 0.85 / 5.77 / 11.01 MB), the conv
 * state from its formula, and the table and metrics the task writes. */
#include <math.h>

#include "eval_mem.h"
#include "hybrid.h"
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

static ra_model *hybrid_1b(ra_hybrid_config *h) {
    hf_config c = llama_1b();
    memset(h, 0, sizeof *h);
    h->layout = RA_LAYOUT_PARALLEL, h->adapter = RA_ADAPTER_LINEAR, h->d_state = 8;
    h->conv_kernel = RA_HYBRID_CONV_KERNEL, h->chunk = RA_HYBRID_CHUNK, h->ssm_head_dim = 64;
    h->layers = 16, h->heads = 32;
    h->keep = xcalloc(16 * 32, 1);
    int kept[10][2] = {{0, 4}, {1, 5}, {3, 0}, {4, 9}, {6, 1}, {7, 30}, {9, 12}, {11, 3}, {13, 17}, {15, 31}};
    for (int i = 0; i < 10; i++) h->keep[kept[i][0] * 32 + kept[i][1]] = 1;
    ra_error err = {0};
    EXPECT(ra_hybrid_check(h, &c, "test", &err) == 0);
    return ra_model_shell_hybrid(&c, h);
}

TEST(design_figures) {
    hf_config c = llama_1b();
    ra_model *t = ra_model_shell(&c);
    ra_hybrid_config h;
    ra_model *s = hybrid_1b(&h);
    const int64_t L[3] = {128, 2048, 4096};
    const double teacher_mb[3] = {4.19, 67.11, 134.22}, hybrid_mb[3] = {0.85, 5.77, 11.01};
    for (int i = 0; i < 3; i++) {
        eval_mem_row rt = eval_mem_sizes(t, L[i], 2), rs = eval_mem_sizes(s, L[i], 2);
        EXPECT_NEAR(rt.total_bytes / 1e6, teacher_mb[i], 0.005);
        EXPECT_NEAR(rs.total_bytes / 1e6, hybrid_mb[i], 0.005);
        EXPECT_NEAR(rt.conv_bytes, 0, 0);
        /* conv: 16 layers × (32 heads × P 64 + 2 groups-of-one-per-head 32 × N 8) channels × 4 × 2 bytes */
        EXPECT_NEAR(rs.conv_bytes, 16.0 * (32 * 64 + 2 * 32 * 8) * 4 * 2, 0);
        EXPECT_NEAR(rs.kv_bytes, 10.0 * 2 * 64 * L[i] * 2, 0);
        EXPECT_NEAR(rs.ssm_bytes, 16.0 * 32 * 64 * 8 * 2, 0);
    }
    /* f32 values: twice the bytes */
    EXPECT_NEAR(eval_mem_sizes(s, 2048, 4).total_bytes, 2 * eval_mem_sizes(s, 2048, 2).total_bytes, 0);

    eval_results r;
    eval_results_init(&r);
    eval_mem(s, t, L, 3, 2, &r);
    const eval_table *tab = eval_results_find(&r, "mem");
    EXPECT(tab != NULL);
    EXPECT_EQ_INT(tab->n_rows, 3);
    int mb = eval_table_col(tab, "total_mb"), tmb = eval_table_col(tab, "teacher_mb"), ratio = eval_table_col(tab, "ratio");
    EXPECT(mb >= 0 && tmb >= 0 && ratio >= 0);
    for (int i = 0; i < 3; i++) {
        EXPECT_NEAR(tab->v[i * tab->n_cols + mb], hybrid_mb[i], 0.005);
        EXPECT_NEAR(tab->v[i * tab->n_cols + tmb], teacher_mb[i], 0.005);
        EXPECT_NEAR(tab->v[i * tab->n_cols + ratio], hybrid_mb[i] / teacher_mb[i], 0.002);
    }
    EXPECT_NEAR(json_real_value(json_object_get(r.metrics, "mem_2048_mb")), 5.77, 0.005);
    EXPECT_NEAR(json_real_value(json_object_get(r.metrics, "mem_4096_teacher_mb")), 134.22, 0.005);
    eval_results_free(&r);
    ra_model_free(s), ra_model_free(t);
    ra_hybrid_free(&h);
}

int main(void) {
    RUN(design_figures);
    return test_summary();
}
