/* The training driver (lib/train_run.h) on a toy stage whose loss is an
 * explicit quadratic: a table E [V, K] and a fixed random target C,
 *     L(batch) = mean over positions i of Σ_k (E[tok_i, k] − C[tok_i, k])²
 * so the loss must fall, and the tests check what the driver adds: the
 * schedule and AdamW updates (against a float64 re-implementation of the
 * loop), gradient accumulation, the NaN guard keeping the last good
 * checkpoint, exact resume after it, refusing a checkpoint of another run,
 * the TSV log and held-out evaluation. */
#include <stdlib.h>
#include <unistd.h>

#include "checkpoint.h"
#include "test.h"
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

enum { V = 23, K = 3 };

typedef struct toy {
    float E[V * K], G[V * K], C[V * K];
    ra_optim *opt;
    int evals, micro_calls;
} toy;

static double toy_loss(toy *t, const ra_train_batch *b, float dloss, int grad) {
    int n = b->B * b->T;
    double L = 0;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < K; k++) {
            int j = b->tokens[i] * K + k;
            double d = (double)t->E[j] - t->C[j];
            L += d * d;
            if (grad) t->G[j] += (float)(dloss * 2.0 * d / n);
        }
    return L / n;
}

static int toy_micro(void *ctx, const ra_train_batch *b, float dloss, double *loss, ra_error *err) {
    (void)err;
    toy *t = ctx;
    t->micro_calls++;
    *loss = toy_loss(t, b, dloss, 1);
    return 0;
}

static int toy_eval(void *ctx, const ra_train_batch *b, double *loss, ra_error *err) {
    (void)err;
    toy *t = ctx;
    t->evals++;
    *loss = toy_loss(t, b, 0, 0);
    return 0;
}

static void toy_init(toy *t) {
    memset(t, 0, sizeof *t);
    test_seed(99);
    test_fill(t->E, V * K, 1.0f);
    test_fill(t->C, V * K, 1.0f);
    t->opt = ra_optim_create(NULL);
    int64_t shape[2] = {V, K};
    ra_error err = {0};
    EXPECT(ra_optim_add(t->opt, "table", t->E, t->G, 2, shape, &err) == 0);
}

static ra_train_stage toy_stage(toy *t, json_t *run) {
    ra_train_stage st = {.name = "toy", .ctx = t, .optim = t->opt, .run = run, .vocab_size = V,
                         .micro_step = toy_micro, .eval = toy_eval};
    return st;
}

static void write_data(const char *path, int n_docs, uint64_t seed) {
    test_seed(seed);
    ra_error err = {0};
    ra_tokens_builder *b = ra_tokens_builder_new(&err);
    for (int d = 0; d < n_docs; d++) {
        int32_t ids[40];
        int n = 1 + (int)(test_rand_u64() % 40);
        for (int i = 0; i < n; i++) ids[i] = (int32_t)(test_rand_u64() % V);
        EXPECT(ra_tokens_builder_add(b, ids, n, &err) == 0);
    }
    EXPECT(ra_tokens_write_documents(b, path, NULL, NULL, NULL, NULL, &err) == 0);
    ra_tokens_builder_free(b);
}

static ra_train_opts base_opts(void) {
    ra_train_opts o;
    ra_train_opts_init(&o, 0.05);
    o.data = tmp_path("data.ra");
    o.batch = 4;
    o.seq_len = 8;
    o.steps = 20;
    o.seed = 3;
    o.quiet = 1;
    return o;
}

/* Mean loss over the whole training set. */
static double full_loss(toy *t) {
    double L = 0;
    for (int v = 0; v < V; v++)
        for (int k = 0; k < K; k++) {
            double d = (double)t->E[v * K + k] - t->C[v * K + k];
            L += d * d;
        }
    return L;
}

TEST(loss_falls_and_log_has_columns) {
    toy t;
    toy_init(&t);
    ra_train_opts o = base_opts();
    o.log = tmp_path("log.tsv");
    ra_train_stage st = toy_stage(&t, NULL);
    ra_train_result res;
    ra_error err = {0};
    double before = full_loss(&t);
    EXPECT(ra_train_run("test", &o, &st, &res, &err) == 0);
    EXPECT_MSG(!err.code, "%s", err.msg);
    EXPECT_EQ_INT(res.steps, 20);
    EXPECT_EQ_INT(res.tokens, 20 * 4 * 8);
    EXPECT_EQ_INT(t.micro_calls, 20);
    EXPECT(full_loss(&t) < 0.5 * before);
    FILE *f = fopen(o.log, "r");
    EXPECT(f != NULL);
    if (!f) return;
    char line[512];
    EXPECT(fgets(line, sizeof line, f) != NULL);
    EXPECT_STR(line, "step\ttokens\tloss\tlr\tgrad_norm\ttokens_per_s\telapsed_s\n");
    int rows = 0;
    double first = 0, last = 0;
    while (fgets(line, sizeof line, f)) {
        long step, tokens;
        double loss, lr, gn;
        EXPECT(sscanf(line, "%ld\t%ld\t%lf\t%lf\t%lf", &step, &tokens, &loss, &lr, &gn) == 5);
        rows++;
        EXPECT_EQ_INT(step, rows);
        EXPECT_EQ_INT(tokens, rows * 32);
        /* WSD, 20 steps, 10% warmup and decay: step 0 → 0.5·peak */
        double want_lr = 0.05 * fmin(1.0, fmin((rows) / 2.0, (20.0 - (rows - 1)) / 2.0));
        EXPECT_NEAR(lr, want_lr, 1e-12);
        if (rows == 1) first = loss;
        last = loss;
    }
    fclose(f);
    EXPECT_EQ_INT(rows, 20);
    EXPECT(last < first);
    ra_optim_free(t.opt);
}

/* The driver's updates equal a float64 AdamW + WSD loop over the same rows
 * (read back from the data source). */
TEST(updates_match_reference_loop) {
    toy t;
    toy_init(&t);
    double E[V * K], m[V * K] = {0}, v[V * K] = {0};
    for (int i = 0; i < V * K; i++) E[i] = t.E[i];
    ra_train_opts o = base_opts();
    o.steps = 6;
    o.grad_accum = 2;
    o.batch = 2;
    ra_train_stage st = toy_stage(&t, NULL);
    ra_train_result res;
    ra_error err = {0};
    EXPECT(ra_train_run("test", &o, &st, &res, &err) == 0);
    ra_train_data *d = NULL;
    EXPECT(ra_train_data_open(o.data, o.seq_len, V, o.seed, 0, &d, &err) == 0);
    if (!d) return;
    int64_t pos = 0;
    for (int s = 0; s < 6; s++) {
        double g[V * K] = {0};
        for (int r = 0; r < 4; r++) { /* 2 micro-batches of 2 rows; each micro-batch's loss is a mean over 16 */
            int32_t tok[8], ds[8], lab[8];
            ra_train_data_row(d, ra_train_data_row_at(d, pos++), tok, ds, lab);
            for (int i = 0; i < 8; i++)
                for (int k = 0; k < K; k++) {
                    int j = tok[i] * K + k;
                    g[j] += 0.5 * 2.0 * (E[j] - t.C[j]) / 16.0;
                }
        }
        double lr = 0.05 * fmin(1.0, fmin((s + 1) / 0.6, (6.0 - s) / 0.6));
        for (int j = 0; j < V * K; j++) {
            E[j] *= 1 - lr * 0.1;
            m[j] = 0.9 * m[j] + 0.1 * g[j];
            v[j] = 0.95 * v[j] + 0.05 * g[j] * g[j];
            E[j] -= lr / (1 - pow(0.9, s + 1)) * m[j] / (sqrt(v[j]) / sqrt(1 - pow(0.95, s + 1)) + 1e-8);
        }
    }
    double worst = 0;
    for (int j = 0; j < V * K; j++) worst = fmax(worst, fabs(E[j] - t.E[j]));
    EXPECT_MSG(worst < 1e-5, "max |Δw| %g", worst);
    ra_train_data_free(d);
    ra_optim_free(t.opt);
}

TEST(nan_guard_then_exact_resume) {
    ra_error err = {0};
    ra_train_result res;
    /* uninterrupted */
    toy a;
    toy_init(&a);
    ra_train_opts o = base_opts();
    o.ckpt_dir = tmp_path("ck-a");
    o.ckpt_every = 5;
    ra_train_stage st = toy_stage(&a, NULL);
    EXPECT(ra_train_run("test", &o, &st, &res, &err) == 0);
    /* NaN injected during step 7 (counted from 1): stops, the step-5 checkpoint is the newest */
    toy b;
    toy_init(&b);
    o.ckpt_dir = tmp_path("ck-b");
    o.log = tmp_path("log-b.tsv");
    st = toy_stage(&b, NULL);
    setenv("RA_TEST_NAN_AT_STEP", "7", 1);
    int rc = ra_train_run("test", &o, &st, &res, &err);
    unsetenv("RA_TEST_NAN_AT_STEP");
    EXPECT_EQ_INT(rc, EX_SOFTWARE);
    EXPECT_MSG(strstr(err.msg, "NaN") && strstr(err.msg, "ckpt-000000000005.ra"), "%s", err.msg);
    char path[1024];
    int64_t step = -1;
    EXPECT(ra_checkpoint_latest(o.ckpt_dir, path, sizeof path, &step, &err) == 0);
    EXPECT_EQ_INT(step, 5);
    /* a fresh run into that directory is refused */
    toy c;
    toy_init(&c);
    st = toy_stage(&c, NULL);
    EXPECT_EQ_INT(ra_train_run("test", &o, &st, &res, &err), EX_USAGE);
    /* resume in a new process-like state: fresh model, --resume */
    o.resume = 1;
    memset(&err, 0, sizeof err);
    EXPECT(ra_train_run("test", &o, &st, &res, &err) == 0);
    EXPECT_MSG(!err.code, "%s", err.msg);
    EXPECT_EQ_INT(res.resumed_from, 5);
    EXPECT_EQ_INT(res.steps, 20);
    EXPECT_EQ_INT(res.tokens, 20 * 32);
    EXPECT(memcmp(a.E, c.E, sizeof a.E) == 0);
    EXPECT(memcmp(a.opt->params[0].m, c.opt->params[0].m, sizeof a.E) == 0);
    /* the log was appended to: header once */
    FILE *f = fopen(o.log, "r");
    int headers = 0, lines = 0;
    char line[512];
    while (f && fgets(line, sizeof line, f)) {
        lines++;
        headers += strncmp(line, "step\t", 5) == 0;
    }
    if (f) fclose(f);
    EXPECT_EQ_INT(headers, 1);
    EXPECT_EQ_INT(lines, 1 + 6 + 15); /* steps 1..6 logged before step 7 failed */
    ra_optim_free(a.opt);
    ra_optim_free(b.opt);
    ra_optim_free(c.opt);
}

TEST(resume_refuses_another_run) {
    ra_error err = {0};
    ra_train_result res;
    toy a;
    toy_init(&a);
    ra_train_opts o = base_opts();
    o.ckpt_dir = tmp_path("ck-other");
    o.steps = 4;
    json_t *run = json_pack("{s:s}", "teacher", "aaaa");
    ra_train_stage st = toy_stage(&a, run);
    EXPECT(ra_train_run("test", &o, &st, &res, &err) == 0);
    o.resume = 1;
    o.lr = 0.01;
    EXPECT_EQ_INT(ra_train_run("test", &o, &st, &res, &err), EX_DATAERR);
    EXPECT_MSG(strstr(err.msg, "'train.lr'") != NULL, "%s", err.msg);
    o.lr = 0.05;
    json_object_set_new(run, "teacher", json_string("bbbb"));
    EXPECT_EQ_INT(ra_train_run("test", &o, &st, &res, &err), EX_DATAERR);
    EXPECT_MSG(strstr(err.msg, "'tool.teacher'") != NULL, "%s", err.msg);
    json_object_set_new(run, "teacher", json_string("aaaa"));
    EXPECT_EQ_INT(ra_train_run("test", &o, &st, &res, &err), 0); /* the same run: nothing left to do */
    EXPECT_EQ_INT(res.steps, 4);
    json_decref(run);
    ra_optim_free(a.opt);
}

TEST(evaluation_on_heldout_rows) {
    ra_error err = {0};
    ra_train_result res;
    toy a;
    toy_init(&a);
    ra_train_opts o = base_opts();
    o.eval_every = 5;
    o.eval_batches = 2;
    o.log = tmp_path("log-eval.tsv");
    ra_train_stage st = toy_stage(&a, NULL);
    EXPECT(ra_train_run("test", &o, &st, &res, &err) == 0);
    EXPECT_EQ_INT(a.evals, 4 * 2);
    EXPECT(isfinite(res.last_eval_loss));
    FILE *f = fopen(o.log, "r");
    char line[512];
    EXPECT(f && fgets(line, sizeof line, f));
    EXPECT_STR(line, "step\ttokens\tloss\tlr\tgrad_norm\ttokens_per_s\telapsed_s\teval_loss\n");
    int with_eval = 0;
    while (f && fgets(line, sizeof line, f)) {
        size_t n = strlen(line);
        with_eval += n > 2 && line[n - 2] != '\t';
    }
    if (f) fclose(f);
    EXPECT_EQ_INT(with_eval, 4);
    /* a held-out stream instead of the tail */
    write_data(tmp_path("held.ra"), 10, 5);
    o.heldout = tmp_path("held.ra");
    o.log = NULL;
    EXPECT(ra_train_run("test", &o, &st, &res, &err) == 0);
    EXPECT(strlen(res.heldout_id) == 32);
    ra_optim_free(a.opt);
}

TEST(freeze_and_errors) {
    ra_error err = {0};
    ra_train_result res;
    toy a;
    toy_init(&a);
    ra_train_opts o = base_opts();
    o.freeze = "tab";
    ra_train_stage st = toy_stage(&a, NULL);
    EXPECT_EQ_INT(ra_train_run("test", &o, &st, &res, &err), EX_USAGE);
    EXPECT(strstr(err.msg, "nothing to train") != NULL);
    o.freeze = "nomatch";
    EXPECT_EQ_INT(ra_train_run("test", &o, &st, &res, &err), EX_USAGE);
    o.freeze = NULL;
    o.device = RA_DEVICE_CUDA;
    EXPECT_EQ_INT(ra_train_run("test", &o, &st, &res, &err), EX_UNAVAILABLE);
    ra_optim_free(a.opt);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "%s/ra-test-train-run.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    write_data(tmp_path("data.ra"), 60, 1);
    RUN(loss_falls_and_log_has_columns);
    RUN(updates_match_reference_loop);
    RUN(nan_guard_then_exact_resume);
    RUN(resume_refuses_another_run);
    RUN(evaluation_on_heldout_rows);
    RUN(freeze_and_errors);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) return 1;
    return test_summary();
}
