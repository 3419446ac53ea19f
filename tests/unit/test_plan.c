#include <unistd.h>

#include "plan.h"
#include "test.h"

static char tmpdir[] = "/tmp/ra_test_plan.XXXXXX";
static const char *ID = "00112233445566778899aabbccddeeff";

static json_t *config_json(int L, int H, int G, int hd) {
    return json_pack("{s:s, s:i, s:i, s:i, s:i, s:i}", "model_type", "llama", "num_hidden_layers", L,
                     "num_attention_heads", H, "num_key_value_heads", G, "head_dim", hd, "hidden_size", H * hd);
}

static ra_plan random_plan(int L, int H, int G, int hd) {
    ra_plan p = {0};
    strcpy(p.teacher_id, ID);
    p.teacher_config = config_json(L, H, G, hd);
    p.shape = (ra_teacher_shape){L, H, G, hd, H * hd};
    p.keep = malloc(L * H);
    for (int i = 0; i < L * H; i++) p.kept += p.keep[i] = test_rand_u64() % 3 == 0;
    return p;
}

static void path_in_tmp(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", tmpdir, name); }

TEST(plan_round_trip) {
    test_seed(4);
    ra_plan p = random_plan(5, 8, 2, 16), q;
    char path[256], id[33];
    path_in_tmp(path, sizeof path, "p.ra");
    ra_error err = {0};
    json_t *sel = json_pack("{s:s, s:s, s:i}", "by", "acc", "mode", "top", "value", p.kept);
    EXPECT_EQ_INT(ra_plan_write(path, &p, sel, NULL, id, &err), 0);
    EXPECT_EQ_INT(ra_plan_load(path, &q, &err), 0);
    EXPECT_STR(q.teacher_id, ID);
    EXPECT_STR(q.content_id, id);
    EXPECT_EQ_INT(q.kept, p.kept);
    EXPECT_EQ_INT(q.shape.layers, 5);
    EXPECT_EQ_INT(q.shape.heads, 8);
    EXPECT_EQ_INT(q.shape.kv_heads, 2);
    EXPECT_EQ_INT(q.shape.head_dim, 16);
    EXPECT(memcmp(p.keep, q.keep, 40) == 0);
    int heads[8];
    for (int l = 0; l < 5; l++) {
        int n = ra_plan_layer_heads(&q, l, heads), want = 0;
        for (int h = 0; h < 8; h++)
            if (p.keep[l * 8 + h]) EXPECT_EQ_INT(heads[want++], h);
        EXPECT_EQ_INT(n, want);
    }
    /* the meta written is the documented one */
    ra_reader *r = ra_reader_open(path, &err);
    const json_t *m = ra_reader_meta(r);
    EXPECT_EQ_INT(json_integer_value(json_object_get(json_object_get(m, "totals"), "kept_heads")), p.kept);
    EXPECT_EQ_INT(json_integer_value(json_object_get(json_object_get(m, "totals"), "kv_bytes_per_token")),
                  p.kept * 2 * 16 * 2);
    EXPECT_STR(json_string_value(json_object_get(json_object_get(m, "selection"), "mode")), "top");
    EXPECT_EQ_INT(json_array_size(json_object_get(m, "layers")), 5);
    ra_reader_close(r);
    json_decref(sel);
    ra_plan_free(&p);
    ra_plan_free(&q);
}

TEST(plan_with_no_heads_is_valid) {
    ra_plan p = random_plan(2, 4, 4, 8), q;
    memset(p.keep, 0, 8);
    p.kept = 0;
    char path[256];
    path_in_tmp(path, sizeof path, "empty.ra");
    ra_error err = {0};
    EXPECT_EQ_INT(ra_plan_write(path, &p, NULL, NULL, NULL, &err), 0);
    EXPECT_EQ_INT(ra_plan_load(path, &q, &err), 0);
    EXPECT_EQ_INT(q.kept, 0);
    ra_plan_free(&p);
    ra_plan_free(&q);
}

TEST(kv_bytes_against_counting) {
    test_seed(9);
    for (int trial = 0; trial < 20; trial++) {
        int G = 1 + test_rand_u64() % 4, H = G * (1 + test_rand_u64() % 4), L = 1 + test_rand_u64() % 5;
        ra_plan p = random_plan(L, H, G, 64);
        int groups = 0;
        for (int l = 0; l < L; l++)
            for (int g = 0; g < G; g++) {
                int any = 0;
                for (int h = 0; h < H; h++)
                    if (h / (H / G) == g && p.keep[l * H + h]) any = 1;
                groups += any;
            }
        EXPECT_EQ_INT(ra_kv_bytes_per_token(&p.shape, p.keep), (int64_t)p.kept * 256);
        EXPECT_EQ_INT(ra_kv_bytes_per_token_shared(&p.shape, p.keep), (int64_t)groups * 256);
        ra_plan_free(&p);
    }
}

TEST(check_teacher_mismatch_names_both) {
    ra_plan p = random_plan(3, 4, 2, 8);
    ra_error err = {0};
    ra_teacher_shape same = p.shape, other = p.shape;
    EXPECT_EQ_INT(ra_plan_check_teacher(&p, "plan.ra", "teacher/", ID, &same, &err), 0);
    EXPECT_EQ_INT(ra_plan_check_teacher(&p, "plan.ra", "teacher/", "ffffffffffffffffffffffffffffffff", &same, &err),
                  EX_DATAERR);
    EXPECT(strstr(err.msg, ID) && strstr(err.msg, "ffffffffffffffffffffffffffffffff") && strstr(err.msg, "plan.ra"));
    other.layers = 4;
    EXPECT_EQ_INT(ra_plan_check_teacher(&p, "plan.ra", "teacher/", ID, &other, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "3 layers") && strstr(err.msg, "4 layers"));
    other = same;
    other.kv_heads = 4;
    EXPECT_EQ_INT(ra_plan_check_teacher(&p, "plan.ra", "teacher/", ID, &other, &err), EX_DATAERR);
    ra_plan_free(&p);
}

/* Write a plan stream by hand (to make invalid ones). */
static void write_raw_plan(const char *path, const char *kind, json_t *meta, const uint8_t *keep, int L, int H) {
    ra_error err = {0};
    ra_writer *w = ra_writer_open(path, kind, meta, NULL, &err);
    int64_t shape[2] = {L, H};
    if (keep) ra_writer_tensor(w, "keep", RA_U8, 2, shape, keep, &err);
    ra_writer_close(w, NULL, &err);
    json_decref(meta);
}

static json_t *meta_for(int L, int H, json_t *layers) {
    return json_pack("{s:{s:s, s:o}, s:o}", "teacher", "id", ID, "config", config_json(L, H, H, 8), "layers", layers);
}

TEST(plan_load_rejects_invalid) {
    char path[256];
    path_in_tmp(path, sizeof path, "bad.ra");
    ra_plan q;
    ra_error err = {0};
    uint8_t keep[6] = {0, 1, 0, 1, 1, 0};

    write_raw_plan(path, "plan", meta_for(2, 3, json_pack("[[i],[i,i]]", 1, 0, 1)), keep, 2, 3);
    EXPECT_EQ_INT(ra_plan_load(path, &q, &err), 0);
    ra_plan_free(&q);

    write_raw_plan(path, "scores", meta_for(2, 3, json_pack("[[i],[i,i]]", 1, 0, 1)), keep, 2, 3);
    EXPECT_EQ_INT(ra_plan_load(path, &q, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "expected 'plan'") != NULL);

    write_raw_plan(path, "plan", meta_for(2, 3, json_pack("[[i],[i,i]]", 1, 1, 0)), keep, 2, 3); /* not ascending */
    EXPECT_EQ_INT(ra_plan_load(path, &q, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "meta.layers[1]") != NULL);

    write_raw_plan(path, "plan", meta_for(2, 3, json_pack("[[i],[i]]", 1, 0)), keep, 2, 3); /* disagrees with keep */
    EXPECT_EQ_INT(ra_plan_load(path, &q, &err), EX_DATAERR);

    write_raw_plan(path, "plan", meta_for(2, 3, json_pack("[[i],[i,i]]", 1, 0, 1)), NULL, 2, 3); /* no keep */
    EXPECT_EQ_INT(ra_plan_load(path, &q, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "'keep'") != NULL);

    write_raw_plan(path, "plan", meta_for(2, 3, json_pack("[[i],[i,i]]", 1, 0, 1)), keep, 3, 2); /* wrong shape */
    EXPECT_EQ_INT(ra_plan_load(path, &q, &err), EX_DATAERR);

    uint8_t two[6] = {0, 2, 0, 1, 1, 0};
    write_raw_plan(path, "plan", meta_for(2, 3, json_pack("[[i],[i,i]]", 1, 0, 1)), two, 2, 3);
    EXPECT_EQ_INT(ra_plan_load(path, &q, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "expected 0 or 1") != NULL);

    write_raw_plan(path, "plan", json_pack("{s:{s:s}}", "teacher", "id", "xyz"), keep, 2, 3);
    EXPECT_EQ_INT(ra_plan_load(path, &q, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "meta.teacher.id") != NULL);

    EXPECT_EQ_INT(ra_plan_load("/nonexistent/plan.ra", &q, &err), EX_NOINPUT);
}

TEST(scores_round_trip_and_validation) {
    char path[256];
    path_in_tmp(path, sizeof path, "s.ra");
    ra_scores s = {0}, t;
    s.shape = (ra_teacher_shape){2, 3, 3, 8, 24};
    float acc[6] = {0.1f, NAN, 0.3f, 0, -0.2f, 0.5f}, lp[6] = {1, 2, 3, 4, 5, 6}, at[6] = {6, 5, 4, 3, 2, 1};
    uint8_t ex[6] = {1, 0, 1, 1, 1, 1};
    s.acc_drop = acc, s.logprob_drop = lp, s.exact = ex, s.attribution = at;
    json_t *meta = json_pack("{s:{s:s, s:o}}", "teacher", "id", ID, "config", config_json(2, 3, 3, 8));
    ra_error err = {0};
    char id[33];
    EXPECT_EQ_INT(ra_scores_write(path, meta, &s, NULL, id, &err), 0);
    EXPECT_EQ_INT(ra_scores_load(path, &t, &err), 0);
    EXPECT_STR(t.content_id, id);
    EXPECT_STR(t.teacher_id, ID);
    for (int i = 0; i < 6; i++) {
        EXPECT(i == 1 ? isnan(t.acc_drop[i]) : t.acc_drop[i] == acc[i]);
        EXPECT(t.logprob_drop[i] == lp[i] && t.exact[i] == ex[i] && t.attribution[i] == at[i]);
    }
    ra_scores_free(&t);
    ex[1] = 1; /* NaN where measured exactly: refused */
    EXPECT_EQ_INT(ra_scores_write(path, meta, &s, NULL, id, &err), 0);
    EXPECT_EQ_INT(ra_scores_load(path, &t, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "acc_drop") && strstr(err.msg, "layer 0 head 1"));
    ex[1] = 0;
    lp[4] = INFINITY;
    EXPECT_EQ_INT(ra_scores_write(path, meta, &s, NULL, id, &err), 0);
    EXPECT_EQ_INT(ra_scores_load(path, &t, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "logprob_drop") && strstr(err.msg, "layer 1 head 1"));
    json_decref(meta);
}

int main(void) {
    if (!mkdtemp(tmpdir)) return 1;
    RUN(plan_round_trip);
    RUN(plan_with_no_heads_is_valid);
    RUN(kv_bytes_against_counting);
    RUN(check_teacher_mismatch_names_both);
    RUN(plan_load_rejects_invalid);
    RUN(scores_round_trip_and_validation);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd)) {}
    return test_summary();
}
