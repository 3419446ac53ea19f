#include <sys/stat.h>
#include <unistd.h>

#include "hf_config.h"
#include "test.h"

/* The seed corpus holds config.json texts as published for these models;
 * tests run from the repository root. */
#define CORPUS "tests/fuzz/corpus/config/"

static int load_corpus(const char *file, hf_config *c) {
    ra_error err = {0};
    int rc = hf_config_load(file, c, &err);
    if (rc) printf("# %s: %s\n", file, err.msg);
    return rc;
}

static const char *MINIMAL = "\"model_type\":\"llama\",\"hidden_size\":64,\"intermediate_size\":128,"
                             "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":100";

/* Parse {MINIMAL, extra} (extra may be "" or start with ","). */
static int parse_with(const char *extra, hf_config *c, ra_error *err) {
    char text[2048];
    snprintf(text, sizeof text, "{%s%s}", MINIMAL, extra);
    return hf_config_parse(text, strlen(text), "cfg.json", c, err);
}

static void expect_refused(const char *extra, const char *want1, const char *want2) {
    hf_config c;
    ra_error err = {0};
    int rc = parse_with(extra, &c, &err);
    EXPECT_MSG(rc == EX_DATAERR, "extra %s: rc %d, expected EX_DATAERR", extra, rc);
    EXPECT_MSG(strstr(err.msg, "cfg.json") != NULL, "message '%s' does not name the file", err.msg);
    if (want1) EXPECT_MSG(strstr(err.msg, want1) != NULL, "message '%s' lacks '%s'", err.msg, want1);
    if (want2) EXPECT_MSG(strstr(err.msg, want2) != NULL, "message '%s' lacks '%s'", err.msg, want2);
}

TEST(llama_3_2_1b) {
    hf_config c;
    EXPECT_EQ_INT(load_corpus(CORPUS "llama-3.2-1b.json", &c), 0);
    EXPECT_STR(c.model_type, "llama");
    EXPECT_EQ_INT(c.hidden_size, 2048);
    EXPECT_EQ_INT(c.intermediate_size, 8192);
    EXPECT_EQ_INT(c.num_layers, 16);
    EXPECT_EQ_INT(c.num_heads, 32);
    EXPECT_EQ_INT(c.num_kv_heads, 8);
    EXPECT_EQ_INT(c.head_dim, 64);
    EXPECT_EQ_INT(c.vocab_size, 128256);
    EXPECT_EQ_INT(c.max_position_embeddings, 131072);
    EXPECT(c.rms_norm_eps == 1e-5);
    EXPECT(c.rope_theta == 500000.0);
    EXPECT_EQ_INT(c.rope_type, RA_ROPE_LLAMA3);
    EXPECT(c.rope_factor == 32.0);
    EXPECT(c.rope_low_freq_factor == 1.0);
    EXPECT(c.rope_high_freq_factor == 4.0);
    EXPECT_EQ_INT(c.rope_original_max_position_embeddings, 8192);
    EXPECT_EQ_INT(c.tie_word_embeddings, 1);
    EXPECT_EQ_INT(c.qkv_bias, 0);
    EXPECT_EQ_INT(c.o_bias, 0);
    EXPECT_EQ_INT(c.bos_token_id, 128000);
    EXPECT_EQ_INT(c.n_eos, 1);
    EXPECT_EQ_INT(c.eos_token_ids[0], 128001);
    EXPECT_EQ_INT(c.torch_dtype, RA_BF16);
}

TEST(llama_3_1_8b_defaults_head_dim_and_lists_eos) {
    hf_config c;
    EXPECT_EQ_INT(load_corpus(CORPUS "llama-3.1-8b-instruct.json", &c), 0);
    EXPECT_EQ_INT(c.hidden_size, 4096);
    EXPECT_EQ_INT(c.intermediate_size, 14336);
    EXPECT_EQ_INT(c.num_layers, 32);
    EXPECT_EQ_INT(c.head_dim, 128); /* no head_dim key: 4096 / 32 */
    EXPECT_EQ_INT(c.num_kv_heads, 8);
    EXPECT(c.rope_factor == 8.0);
    EXPECT_EQ_INT(c.tie_word_embeddings, 0);
    EXPECT_EQ_INT(c.n_eos, 3);
    EXPECT_EQ_INT(c.eos_token_ids[0], 128001);
    EXPECT_EQ_INT(c.eos_token_ids[1], 128008);
    EXPECT_EQ_INT(c.eos_token_ids[2], 128009);
}

TEST(qwen2_5_has_qkv_bias) {
    hf_config c;
    EXPECT_EQ_INT(load_corpus(CORPUS "qwen2.5-0.5b.json", &c), 0);
    EXPECT_STR(c.model_type, "qwen2");
    EXPECT_EQ_INT(c.hidden_size, 896);
    EXPECT_EQ_INT(c.intermediate_size, 4864);
    EXPECT_EQ_INT(c.num_layers, 24);
    EXPECT_EQ_INT(c.num_heads, 14);
    EXPECT_EQ_INT(c.num_kv_heads, 2);
    EXPECT_EQ_INT(c.head_dim, 64);
    EXPECT_EQ_INT(c.vocab_size, 151936);
    EXPECT(c.rms_norm_eps == 1e-6);
    EXPECT(c.rope_theta == 1000000.0);
    EXPECT_EQ_INT(c.rope_type, RA_ROPE_DEFAULT);
    EXPECT_EQ_INT(c.tie_word_embeddings, 1);
    EXPECT_EQ_INT(c.qkv_bias, 1);
    EXPECT_EQ_INT(c.o_bias, 0);
    EXPECT_EQ_INT(c.bos_token_id, 151643);
    EXPECT_EQ_INT(c.eos_token_ids[0], 151643);

    EXPECT_EQ_INT(load_corpus(CORPUS "qwen2.5-7b-instruct.json", &c), 0);
    EXPECT_EQ_INT(c.head_dim, 128);
    EXPECT_EQ_INT(c.num_kv_heads, 4);
    EXPECT_EQ_INT(c.tie_word_embeddings, 0);
}

TEST(rope_parameters_equal_rope_scaling) {
    hf_config a, b;
    EXPECT_EQ_INT(load_corpus(CORPUS "llama-3.2-1b.json", &a), 0);
    EXPECT_EQ_INT(load_corpus(CORPUS "llama-3.2-1b-rope-parameters.json", &b), 0);
    EXPECT(b.rope_theta == 500000.0); /* only inside rope_parameters */
    EXPECT_EQ_INT(b.rope_type, RA_ROPE_LLAMA3);
    EXPECT_EQ_INT(b.torch_dtype, RA_BF16); /* "dtype" spelling */
    EXPECT(memcmp(&a, &b, sizeof a) == 0);

    /* legacy "type" key, and a default rope given explicitly */
    hf_config c;
    ra_error err = {0};
    EXPECT_EQ_INT(parse_with(",\"rope_scaling\":{\"type\":\"llama3\",\"factor\":2,\"low_freq_factor\":1,"
                             "\"high_freq_factor\":4,\"original_max_position_embeddings\":64}",
                             &c, &err), 0);
    EXPECT_EQ_INT(c.rope_type, RA_ROPE_LLAMA3);
    EXPECT(c.rope_factor == 2.0);
    EXPECT_EQ_INT(parse_with(",\"rope_parameters\":{\"rope_type\":\"default\",\"rope_theta\":1234.5}", &c, &err), 0);
    EXPECT_EQ_INT(c.rope_type, RA_ROPE_DEFAULT);
    EXPECT(c.rope_theta == 1234.5);
    /* settings keyed by layer type, and layer_types of full attention only */
    EXPECT_EQ_INT(parse_with(",\"layer_types\":[\"full_attention\",\"full_attention\"],\"rope_parameters\":"
                             "{\"full_attention\":{\"rope_type\":\"llama3\",\"rope_theta\":5e5,\"factor\":8,"
                             "\"low_freq_factor\":1,\"high_freq_factor\":4,\"original_max_position_embeddings\":64,"
                             "\"partial_rotary_factor\":1.0}}",
                             &c, &err), 0);
    EXPECT_EQ_INT(c.rope_type, RA_ROPE_LLAMA3);
    EXPECT(c.rope_theta == 5e5);
    EXPECT(c.rope_factor == 8.0);
    EXPECT_EQ_INT(parse_with(",\"rope_scaling\":{\"rope_type\":null},\"rope_theta\":77", &c, &err), 0);
    EXPECT_EQ_INT(c.rope_type, RA_ROPE_DEFAULT);
    EXPECT(c.rope_theta == 77.0);
}

TEST(defaults_follow_transformers) {
    hf_config c;
    ra_error err = {0};
    EXPECT_EQ_INT(parse_with("", &c, &err), 0);
    EXPECT_EQ_INT(c.num_kv_heads, 4);
    EXPECT_EQ_INT(c.head_dim, 16);
    EXPECT(c.rms_norm_eps == 1e-6);
    EXPECT(c.rope_theta == 10000.0);
    EXPECT_EQ_INT(c.rope_type, RA_ROPE_DEFAULT);
    EXPECT_EQ_INT(c.tie_word_embeddings, 0);
    EXPECT_EQ_INT(c.qkv_bias, 0);
    EXPECT_EQ_INT(c.o_bias, 0);
    EXPECT_EQ_INT(c.bos_token_id, -1);
    EXPECT_EQ_INT(c.n_eos, 0);
    EXPECT_EQ_INT(c.max_position_embeddings, 2048);
    EXPECT_EQ_INT(parse_with(",\"attention_bias\":true,\"num_key_value_heads\":null,\"eos_token_id\":null", &c, &err),
                  0);
    EXPECT_EQ_INT(c.qkv_bias, 1);
    EXPECT_EQ_INT(c.o_bias, 1);
    EXPECT_EQ_INT(c.num_kv_heads, 4);
    /* qwen2 defaults */
    const char *q = "{\"model_type\":\"qwen2\",\"hidden_size\":64,\"intermediate_size\":128,"
                    "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":100,\"attention_bias\":true}";
    EXPECT_EQ_INT(hf_config_parse(q, strlen(q), "q.json", &c, &err), 0);
    EXPECT_EQ_INT(c.qkv_bias, 1);
    EXPECT_EQ_INT(c.o_bias, 0);
    EXPECT_EQ_INT(c.max_position_embeddings, 32768);
}

TEST(unsupported_and_invalid_configs_name_the_field) {
    hf_config c;
    ra_error err = {0};
    const char *mistral = "{\"model_type\":\"mistral\",\"hidden_size\":64}";
    EXPECT_EQ_INT(hf_config_parse(mistral, strlen(mistral), "cfg.json", &c, &err), EX_DATAERR);
    EXPECT_MSG(strstr(err.msg, "model_type 'mistral'") != NULL, "%s", err.msg);
    const char *none = "{\"hidden_size\":64}";
    EXPECT_EQ_INT(hf_config_parse(none, strlen(none), "cfg.json", &c, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "model_type") != NULL);
    EXPECT_EQ_INT(hf_config_parse("{", 1, "cfg.json", &c, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "cfg.json") != NULL);
    EXPECT_EQ_INT(hf_config_parse("[1]", 3, "cfg.json", &c, &err), EX_DATAERR);

    expect_refused(",\"rope_scaling\":{\"rope_type\":\"linear\",\"factor\":2}", "rope_type 'linear'", NULL);
    expect_refused(",\"rope_scaling\":{\"type\":\"yarn\",\"factor\":4}", "'yarn'", NULL);
    expect_refused(",\"rope_parameters\":{\"rope_type\":\"dynamic\",\"factor\":2}", "'dynamic'", "rope_parameters");
    expect_refused(",\"rope_scaling\":{\"rope_type\":7}", "rope_type", NULL);
    expect_refused(",\"rope_scaling\":[1]", "rope_scaling", NULL);
    expect_refused(",\"rope_scaling\":{\"rope_type\":\"llama3\",\"low_freq_factor\":1,\"high_freq_factor\":4,"
                   "\"original_max_position_embeddings\":64}",
                   "factor is missing", NULL);
    expect_refused(",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":2,\"low_freq_factor\":1,"
                   "\"high_freq_factor\":4}",
                   "original_max_position_embeddings", NULL);
    expect_refused(",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":2,\"low_freq_factor\":4,"
                   "\"high_freq_factor\":4,\"original_max_position_embeddings\":64}",
                   "high_freq_factor", NULL);
    expect_refused(",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":-2,\"low_freq_factor\":1,"
                   "\"high_freq_factor\":4,\"original_max_position_embeddings\":64}",
                   "factor", "positive");
    expect_refused(",\"layer_types\":[\"full_attention\",\"sliding_attention\"]", "layer_types[1] 'sliding_attention'",
                   NULL);
    expect_refused(",\"layer_types\":\"full_attention\"", "layer_types", NULL);
    expect_refused(",\"rope_parameters\":{\"rope_type\":\"default\",\"partial_rotary_factor\":0.5}",
                   "partial_rotary_factor 0.5", NULL);
    expect_refused(",\"rope_theta\":0", "rope_theta", NULL);
    expect_refused(",\"rope_theta\":\"1e4\"", "rope_theta", NULL);
    expect_refused(",\"rms_norm_eps\":-1e-5", "rms_norm_eps", NULL);
    expect_refused(",\"mlp_bias\":true", "mlp_bias", NULL);
    expect_refused(",\"use_sliding_window\":true", "use_sliding_window", NULL);
    expect_refused(",\"hidden_act\":\"gelu\"", "hidden_act 'gelu'", NULL);
    expect_refused(",\"num_key_value_heads\":3", "num_key_value_heads 3", NULL);
    expect_refused(",\"num_key_value_heads\":0", "num_key_value_heads", NULL);
    expect_refused(",\"head_dim\":15", "head_dim 15", NULL);
    expect_refused(",\"tie_word_embeddings\":\"yes\"", "tie_word_embeddings", NULL);
    expect_refused(",\"attention_bias\":1", "attention_bias", NULL);
    expect_refused(",\"eos_token_id\":[1,-2]", "eos_token_id[1]", NULL);
    expect_refused(",\"eos_token_id\":[1,2,3,4,5,6,7,8,9]", "eos_token_id", NULL);
    expect_refused(",\"eos_token_id\":\"</s>\"", "eos_token_id", NULL);
    expect_refused(",\"bos_token_id\":-1", "bos_token_id", NULL);
    expect_refused(",\"max_position_embeddings\":0", "max_position_embeddings", NULL);

    /* required integers: missing, wrong type, non-positive, too large */
    const char *required[] = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                              "vocab_size"};
    const char *bad_values[] = {"0", "-4", "4.0", "\"64\"", "true", "99999999999"};
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        char text[1024];
        for (size_t j = 0; j <= sizeof bad_values / sizeof bad_values[0]; j++) {
            /* j == count: the key is absent */
            int n = snprintf(text, sizeof text, "{\"model_type\":\"llama\"");
            for (size_t k = 0; k < sizeof required / sizeof required[0]; k++) {
                if (k == i && j == sizeof bad_values / sizeof bad_values[0]) continue;
                n += snprintf(text + n, sizeof text - (size_t)n, ",\"%s\":%s", required[k],
                              k == i ? bad_values[j] : "64");
            }
            snprintf(text + n, sizeof text - (size_t)n, "}");
            int rc = hf_config_parse(text, strlen(text), "cfg.json", &c, &err);
            EXPECT_MSG(rc == EX_DATAERR, "%s accepted", text);
            EXPECT_MSG(strstr(err.msg, required[i]) != NULL, "message '%s' does not name %s", err.msg, required[i]);
        }
    }
    /* hidden_size not divisible by heads, without head_dim */
    const char *nd = "{\"model_type\":\"llama\",\"hidden_size\":66,\"intermediate_size\":128,"
                     "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":100}";
    EXPECT_EQ_INT(hf_config_parse(nd, strlen(nd), "cfg.json", &c, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "hidden_size 66") != NULL);
}

static void expect_round_trip(const hf_config *a, const char *what) {
    json_t *j = hf_config_to_json(a);
    hf_config b;
    ra_error err = {0};
    int rc = hf_config_from_json(j, what, &b, &err);
    EXPECT_MSG(rc == 0, "%s: %s", what, err.msg);
    EXPECT_MSG(memcmp(a, &b, sizeof b) == 0, "%s: config differs after to_json/from_json", what);
    /* through text too (as in a config.json file) */
    char *text = json_dumps(j, JSON_INDENT(2));
    rc = hf_config_parse(text, strlen(text), what, &b, &err);
    EXPECT_MSG(rc == 0, "%s: %s", what, err.msg);
    EXPECT_MSG(memcmp(a, &b, sizeof b) == 0, "%s: config differs after a text round trip", what);
    free(text);
    json_decref(j);
}

TEST(to_json_round_trips) {
    const char *files[] = {"llama-3.2-1b.json", "llama-3.1-8b-instruct.json", "qwen2.5-0.5b.json",
                           "qwen2.5-7b-instruct.json", "llama-3.2-1b-rope-parameters.json", "minimal-llama.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char p[256];
        snprintf(p, sizeof p, CORPUS "%s", files[i]);
        hf_config c;
        if (load_corpus(p, &c) == 0) expect_round_trip(&c, files[i]);
    }
    /* random configs, including awkward reals */
    test_seed(99);
    for (int i = 0; i < 200; i++) {
        hf_config c;
        memset(&c, 0, sizeof c);
        int qwen = (int)(test_rand_u64() % 2);
        snprintf(c.model_type, sizeof c.model_type, "%s", qwen ? "qwen2" : "llama");
        c.num_kv_heads = 1 + (int)(test_rand_u64() % 8);
        c.num_heads = c.num_kv_heads * (1 + (int)(test_rand_u64() % 4));
        c.head_dim = 2 * (1 + (int)(test_rand_u64() % 64));
        c.hidden_size = 1 + (int)(test_rand_u64() % 5000);
        c.intermediate_size = 1 + (int)(test_rand_u64() % 20000);
        c.num_layers = 1 + (int)(test_rand_u64() % 80);
        c.vocab_size = 1 + (int)(test_rand_u64() % 200000);
        c.max_position_embeddings = 1 + (int)(test_rand_u64() % 200000);
        c.rms_norm_eps = 1e-6 * (1.0 + test_randf());
        c.rope_theta = 1e4 * (2.0 + test_randf());
        if (test_rand_u64() % 2) {
            c.rope_type = RA_ROPE_LLAMA3;
            c.rope_factor = 1.0 + 31.0 * (1.0 + test_randf());
            c.rope_low_freq_factor = 0.5 + (1.0 + test_randf());
            c.rope_high_freq_factor = c.rope_low_freq_factor + 0.25 + (1.0 + test_randf());
            c.rope_original_max_position_embeddings = 1 + (int)(test_rand_u64() % 10000);
        }
        c.tie_word_embeddings = (int)(test_rand_u64() % 2);
        c.qkv_bias = qwen ? 1 : (int)(test_rand_u64() % 2);
        c.o_bias = qwen ? 0 : c.qkv_bias;
        c.bos_token_id = test_rand_u64() % 3 ? (int)(test_rand_u64() % 100000) : -1;
        c.n_eos = (int)(test_rand_u64() % 4);
        for (int k = 0; k < c.n_eos; k++) c.eos_token_ids[k] = (int)(test_rand_u64() % 100000);
        c.torch_dtype = (ra_dtype)(test_rand_u64() % 3); /* bf16, f16, f32 */
        char what[32];
        snprintf(what, sizeof what, "random config %d", i);
        expect_round_trip(&c, what);
    }
}

TEST(load_reads_directories_and_reports_missing) {
    char dir[] = "/tmp/test_hf_config.XXXXXX";
    EXPECT(mkdtemp(dir) != NULL);
    char p[300];
    hf_config c;
    ra_error err = {0};
    EXPECT_EQ_INT(hf_config_load(dir, &c, &err), EX_NOINPUT);
    EXPECT_MSG(strstr(err.msg, "config.json") != NULL, "%s", err.msg);
    snprintf(p, sizeof p, "%s/config.json", dir);
    FILE *f = fopen(p, "w");
    fprintf(f, "{%s,\"num_key_value_heads\":2}", MINIMAL);
    fclose(f);
    EXPECT_EQ_INT(hf_config_load(dir, &c, &err), 0);
    EXPECT_EQ_INT(c.num_kv_heads, 2);
    EXPECT_EQ_INT(hf_config_load(p, &c, &err), 0);
    snprintf(p, sizeof p, "%s/none.json", dir);
    EXPECT_EQ_INT(hf_config_load(p, &c, &err), EX_NOINPUT);
    EXPECT(strstr(err.msg, "none.json") != NULL);
    snprintf(p, sizeof p, "rm -rf '%s'", dir);
    EXPECT(system(p) == 0);
}

int main(void) {
    RUN(llama_3_2_1b);
    RUN(llama_3_1_8b_defaults_head_dim_and_lists_eos);
    RUN(qwen2_5_has_qkv_bias);
    RUN(rope_parameters_equal_rope_scaling);
    RUN(defaults_follow_transformers);
    RUN(unsupported_and_invalid_configs_name_the_field);
    RUN(to_json_round_trips);
    RUN(load_reads_directories_and_reports_missing);
    return test_summary();
}
