/* MOHAWK stage 2 (lib/stage2.h): the loss against an independent path (the
 * student's library forward of one layer on the teacher's residual, float64
 * L2 norms), the loss falling on a tiny run through the driver, per-layer
 * runs giving the same bits as the all-layers run, --train mixer, layer
 * lists and the teacher/student pairing check. */
#include <stdlib.h>
#include <unistd.h>

#include "block_train.h"
#include "forward.h"
#include "hybrid_fixture.h"
#include "stage2.h"
#include "tokens.h"
#include "train_run.h"

static char tmpdir[256];

static const char *tmp_path(const char *name) {
    static char p[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof p[k], "%s/%s", tmpdir, name);
    return p[k];
}

static void write_data(const char *path, int n_docs, int vocab, uint64_t seed) {
    test_seed(seed);
    ra_error err = {0};
    ra_tokens_builder *b = ra_tokens_builder_new(&err);
    for (int d = 0; d < n_docs; d++) {
        int32_t ids[30];
        int n = 2 + (int)(test_rand_u64() % 28);
        for (int i = 0; i < n; i++) ids[i] = (int32_t)(test_rand_u64() % (uint64_t)vocab);
        EXPECT(ra_tokens_builder_add(b, ids, n, &err) == 0);
    }
    EXPECT(ra_tokens_write_documents(b, path, NULL, NULL, NULL, NULL, &err) == 0);
    ra_tokens_builder_free(b);
}

/* A batch of B rows of T from the data file (position 0, seed 0). */
typedef struct batch_buf {
    int32_t tok[64], ds[64], lab[64];
    ra_train_batch b;
} batch_buf;

static void first_batch(batch_buf *bb, int B, int T) {
    ra_error err = {0};
    ra_train_data *d = NULL;
    EXPECT(ra_train_data_open(tmp_path("data.ra"), T, 61, 0, 0, &d, &err) == 0);
    if (!d) return;
    ra_train_data_next(d, B, bb->tok, bb->ds, bb->lab);
    ra_train_data_free(d);
    bb->b = (ra_train_batch){B, T, bb->tok, bb->ds, bb->lab, 0, 0, 0};
}

TEST(loss_matches_library_forward) {
    ra_model *t = fx_teacher(0, 5);
    ra_model *s = fx_graft(t, "010010010001", RA_LAYOUT_ROUTED, RA_ADAPTER_STATIC, 8, RA_INIT_MOHAWK, 3);
    enum { B = 2, T = 12 };
    batch_buf bb;
    first_batch(&bb, B, T);
    int D = t->cfg.hidden_size, L = t->cfg.num_layers;
    int layers[2] = {1, 2}; /* 2 is the last: its target is the residual before the final norm */
    ra_stage2 *st = NULL;
    ra_error err = {0};
    EXPECT(ra_stage2_create(t, s, layers, 2, 0, B, T, &st, &err) == 0);
    double loss = 0;
    EXPECT(ra_stage2_eval(st, &bb.b, &loss, &err) == 0);
    /* independent: teacher residuals from ra_forward_cpu, student layer l by the
     * student's library forward with start_hidden */
    float **h = calloc((size_t)L + 1, sizeof *h), **hs = calloc((size_t)L + 1, sizeof *hs);
    for (int k = 0; k <= L; k++) h[k] = malloc(sizeof(float) * B * T * D), hs[k] = malloc(sizeof(float) * B * T * D);
    ra_forward_state *ft = ra_forward_state_create(t, B, T), *fs = ra_forward_state_create(s, B, T);
    ra_forward_opts o = {0};
    o.doc_start = bb.ds;
    o.hidden_out = h;
    EXPECT(ra_forward_cpu(ft, bb.tok, B, T, &o, &err) == 0);
    double want = 0;
    for (int i = 0; i < 2; i++) {
        int l = layers[i];
        ra_forward_opts os = {0};
        os.doc_start = bb.ds;
        os.start_layer = l;
        os.stop_layer = l + 1;
        os.start_hidden = h[l];
        os.hidden_out = hs;
        EXPECT(ra_forward_cpu(fs, NULL, B, T, &os, &err) == 0);
        double sum = 0;
        for (int n = 0; n < B * T; n++) {
            double ss = 0;
            for (int j = 0; j < D; j++) {
                double d = (double)hs[l + 1][n * D + j] - h[l + 1][n * D + j];
                ss += d * d;
            }
            sum += sqrt(ss);
        }
        want += sum / (B * T);
        EXPECT_NEAR(ra_stage2_layer_losses(st)[i], sum / (B * T), 1e-4 * sum / (B * T));
    }
    EXPECT(want > 0.1);
    EXPECT_NEAR(loss, want, 1e-4 * want);
    for (int k = 0; k <= L; k++) free(h[k]), free(hs[k]);
    free(h);
    free(hs);
    ra_forward_state_free(ft);
    ra_forward_state_free(fs);
    ra_stage2_free(st);
    ra_model_free(s);
    ra_model_free(t);
}

/* Train `layers` of a fresh student for `steps`; returns the student. */
static ra_model *train(const ra_model *t, int variant_layout, const int *layers, int n, int mixer_only, int steps,
                       double *before, double *after) {
    ra_model *s = variant_layout ? fx_graft(t, "100000001000000001", RA_LAYOUT_PARALLEL, RA_ADAPTER_LINEAR, 4,
                                            RA_INIT_MOHAWK, 9)
                                 : fx_graft(t, "010010010001", RA_LAYOUT_ROUTED, RA_ADAPTER_STATIC, 8, RA_INIT_MOHAWK, 3);
    ra_train_opts o;
    ra_train_opts_init(&o, 1e-2);
    o.data = tmp_path("data.ra");
    o.batch = 2;
    o.seq_len = 12;
    o.steps = steps;
    o.seed = 4;
    o.quiet = 1;
    ra_stage2 *st = NULL;
    ra_error err = {0};
    EXPECT(ra_stage2_create(t, s, layers, n, mixer_only, o.batch, o.seq_len, &st, &err) == 0);
    ra_optim *opt = ra_optim_create(NULL);
    EXPECT(ra_stage2_register(st, opt, &err) == 0);
    batch_buf bb;
    first_batch(&bb, 2, 12);
    if (before) ra_stage2_eval(st, &bb.b, before, &err);
    ra_train_stage stage = {.name = "stage2", .ctx = st, .optim = opt, .vocab_size = 61,
                            .micro_step = ra_stage2_micro_step, .eval = ra_stage2_eval};
    ra_train_result res;
    EXPECT(ra_train_run("test", &o, &stage, &res, &err) == 0);
    EXPECT_MSG(!err.code, "%s", err.msg);
    if (after) ra_stage2_eval(st, &bb.b, after, &err);
    if (mixer_only) /* only mixer tensors were registered */
        for (int i = 0; i < opt->n; i++)
            EXPECT_MSG(!strstr(opt->params[i].name, "norm") && !strstr(opt->params[i].name, "mlp"), "%s registered",
                       opt->params[i].name);
    ra_optim_free(opt);
    ra_stage2_free(st);
    return s;
}

TEST(loss_falls_on_a_tiny_run) {
    ra_model *t = fx_teacher(0, 5);
    int all[3] = {0, 1, 2};
    double before = 0, after = 0;
    ra_model *s = train(t, 0, all, 3, 0, 40, &before, &after);
    printf("# stage-2 loss on a fixed batch: %.4f -> %.4f\n", before, after);
    EXPECT(after < 0.6 * before);
    ra_model_free(s);
    s = train(t, 0, all + 1, 1, 1, 30, &before, &after);
    printf("# --train mixer, layer 1: %.4f -> %.4f\n", before, after);
    EXPECT(after < 0.9 * before);
    ra_model_free(s);
    ra_model_free(t);
}

/* Every tensor of layer l of a and b: same bits? */
static int same_layer(ra_model *a, ra_model *b, int l) {
    ra_model_tensor *ta, *tb;
    int n = ra_model_tensor_list(a, &ta), same = 1;
    ra_model_tensor_list(b, &tb);
    char prefix[32];
    snprintf(prefix, sizeof prefix, "model.layers.%d.", l);
    for (int i = 0; i < n; i++)
        if (!strncmp(ta[i].name, prefix, strlen(prefix)))
            same &= memcmp(*ta[i].data, *tb[i].data, sizeof(float) * (size_t)ra_tensor_numel(&ta[i])) == 0;
    free(ta);
    free(tb);
    return same;
}

TEST(per_layer_runs_equal_the_all_layers_run) {
    ra_model *t = fx_teacher(1, 6); /* Qwen2, tied, biases */
    int all[3] = {0, 1, 2};
    ra_model *together = train(t, 1, all, 3, 0, 6, NULL, NULL);
    ra_model *base = fx_graft(t, "100000001000000001", RA_LAYOUT_PARALLEL, RA_ADAPTER_LINEAR, 4, RA_INIT_MOHAWK, 9);
    for (int l = 0; l < 3; l++) {
        ra_model *alone = train(t, 1, all + l, 1, 0, 6, NULL, NULL);
        EXPECT_MSG(same_layer(together, alone, l), "layer %d differs", l);
        EXPECT_MSG(!same_layer(base, alone, l), "layer %d did not train", l);
        for (int k = 0; k < 3; k++)
            if (k != l) EXPECT_MSG(same_layer(base, alone, k), "layer %d changed by a run of layer %d", k, l);
        ra_model_free(alone);
    }
    ra_model_free(base);
    ra_model_free(together);
    ra_model_free(t);
}

TEST(layer_lists) {
    int *l = NULL, n = 0;
    ra_error err = {0};
    EXPECT(ra_parse_layer_list("1,4-6", 16, &l, &n, &err) == 0);
    EXPECT(n == 4 && l[0] == 1 && l[1] == 4 && l[2] == 5 && l[3] == 6);
    free(l);
    EXPECT(ra_parse_layer_list("6,0-2", 16, &l, &n, &err) == 0);
    EXPECT(n == 4 && l[0] == 0 && l[3] == 6);
    free(l);
    EXPECT(ra_parse_layer_list("0-15", 16, &l, &n, &err) == 0 && n == 16);
    free(l);
    const char *bad[] = {"", "16", "3-1", "1,,2", "a", "1-", "2,2", "0-3,3", "-1", "1 2"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        EXPECT_MSG(ra_parse_layer_list(bad[i], 16, &l, &n, &err) == EX_USAGE, "'%s' accepted", bad[i]);
        EXPECT(l == NULL);
    }
}

TEST(pairing_is_checked) {
    ra_model *t = fx_teacher(0, 5), *t2 = fx_teacher(2, 5), *t3 = fx_teacher(0, 8);
    ra_model *s = fx_graft(t, "010010010001", RA_LAYOUT_ROUTED, RA_ADAPTER_STATIC, 8, RA_INIT_MOHAWK, 3);
    ra_error err = {0};
    EXPECT(ra_stage2_check_pair(t, s, &err) == 0);
    EXPECT_EQ_INT(ra_stage2_check_pair(t2, s, &err), EX_DATAERR); /* other config */
    EXPECT_MSG(strstr(err.msg, "not a student of") && strstr(err.msg, "config"), "%s", err.msg);
    EXPECT_EQ_INT(ra_stage2_check_pair(t3, s, &err), EX_DATAERR); /* same config, other weights */
    EXPECT_MSG(strstr(err.msg, "meta.hybrid.teacher"), "%s", err.msg);
    EXPECT_EQ_INT(ra_stage2_check_pair(s, s, &err), EX_DATAERR); /* a student as the teacher */
    ra_model_free(s);
    ra_model_free(t);
    ra_model_free(t2);
    ra_model_free(t3);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "%s/ra-test-stage2.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    write_data(tmp_path("data.ra"), 40, 61, 21);
    RUN(loss_matches_library_forward);
    RUN(loss_falls_on_a_tiny_run);
    RUN(per_layer_runs_equal_the_all_layers_run);
    RUN(layer_lists);
    RUN(pairing_is_checked);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) return 1;
    return test_summary();
}
