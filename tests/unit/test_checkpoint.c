/* Checkpoints (lib/checkpoint.h): bit-exact round trip, refusal of
 * corrupt, truncated, foreign and mismatched files without touching the
 * optimiser, newest-file discovery and pruning, and the property the stage
 * tools rely on: a small training run (linear layer, per-token L2 loss,
 * AdamW, WSD schedule, gradient accumulation, a frozen parameter, an RNG and
 * a data cursor) interrupted and resumed from its last checkpoint ends with
 * exactly the bits of the uninterrupted run; a NaN stops it and leaves the
 * last good checkpoint as the newest. */
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "loss.h"
#include "ops.h"
#include "stream.h"
#include "test.h"

static char tmpdir[256];

static void make_tmpdir(void) {
    const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(tmpdir, sizeof tmpdir, "%s/ra_ckpt_XXXXXX", base);
    if (!mkdtemp(tmpdir)) abort();
}
static void sub(char *buf, size_t cap, const char *name) { snprintf(buf, cap, "%s/%s", tmpdir, name); }

/* --------------------------------------------------------- a tiny model */

enum { DIN = 6, DOUT = 5, NDATA = 37, BATCH = 4, ACCUM = 2 };

typedef struct {
    float W[DOUT * DIN], b[DOUT], E[DIN]; /* E: a frozen input scale */
    float gW[DOUT * DIN], gb[DOUT], gE[DIN];
    ra_optim *o;
} tiny;

static void tiny_init(tiny *t, int freeze_bias) {
    ra_rng r;
    rng_seed(&r, 7); /* the "base model" */
    rng_fill_uniform(&r, t->W, DOUT * DIN, -0.5f, 0.5f);
    rng_fill_uniform(&r, t->b, DOUT, -0.5f, 0.5f);
    rng_fill_uniform(&r, t->E, DIN, 0.5f, 1.5f);
    ra_adamw_config cfg = ra_adamw_defaults();
    cfg.clip = 0.5; /* the clip path too */
    t->o = ra_optim_create(&cfg);
    int64_t sW[2] = {DOUT, DIN}, sb[1] = {DOUT}, sE[1] = {DIN};
    ra_error err;
    RA_CHECK(ra_optim_add(t->o, "layer.weight", t->W, t->gW, 2, sW, &err) == 0);
    RA_CHECK(ra_optim_add(t->o, "layer.bias", t->b, t->gb, 1, sb, &err) == 0);
    RA_CHECK(ra_optim_add(t->o, "embed.scale", t->E, t->gE, 1, sE, &err) == 0);
    RA_CHECK(ra_optim_freeze(t->o, freeze_bias ? "embed,bias" : "embed", &err) == 0);
}

/* The data set: NDATA inputs and targets from a fixed teacher. */
static float data_x[NDATA * DIN], data_y[NDATA * DOUT];
static void make_data(void) {
    ra_rng r;
    rng_seed(&r, 99);
    float T[DOUT * DIN];
    rng_fill_normal(&r, data_x, NDATA * DIN, 0, 1);
    rng_fill_normal(&r, T, DOUT * DIN, 0, 1);
    linear_forward(data_y, data_x, T, NULL, NDATA, DIN, DOUT);
}

/* One micro-batch: rows from the cursor, inputs jittered by the run's RNG. */
static double micro_batch(tiny *t, ra_checkpoint *ck, float dloss) {
    float x[BATCH * DIN], y[BATCH * DOUT], out[BATCH * DOUT], dout[BATCH * DOUT];
    for (int i = 0; i < BATCH; i++) {
        int row = (int)((ck->data_position + i) % NDATA);
        for (int j = 0; j < DIN; j++)
            x[i * DIN + j] = t->E[j] * (data_x[row * DIN + j] + 0.1f * (float)rng_normal(&ck->rng));
        memcpy(y + i * DOUT, data_y + row * DOUT, DOUT * 4);
    }
    ck->data_position += BATCH;
    ck->tokens += BATCH;
    linear_forward(out, x, t->W, t->b, BATCH, DIN, DOUT);
    double L = loss_l2_forward(out, y, BATCH, DOUT);
    loss_l2_backward(dout, out, y, BATCH, DOUT, dloss);
    linear_backward(NULL, t->gW, t->gb, dout, x, t->W, BATCH, DIN, DOUT);
    return L;
}

typedef struct {
    int64_t total, stop_after, nan_at; /* stop_after/nan_at −1: never */
    int resume, every;
    const char *dir;
} run_opts;

/* Train t per opts; 0, or the code of the step or checkpoint that failed. */
static int train(tiny *t, const run_opts *ro, ra_error *err) {
    ra_checkpoint ck = {0, 0, {{0}, 0, 0}, ra_wsd_default(0.05, ro->total), NULL};
    rng_seed(&ck.rng, 1234);
    if (ro->resume) {
        char path[512];
        int rc = ra_checkpoint_latest(ro->dir, path, sizeof path, NULL, err);
        if (!rc) rc = ra_checkpoint_read(path, &ck, t->o, err);
        if (rc) return rc;
        ra_checkpoint_clear(&ck); /* the tool would compare ck.run with its own */
    }
    json_t *run = json_pack("{s:s}", "stage", "test");
    ck.run = run;
    int rc = 0;
    while (t->o->step < ro->total && !rc) {
        if (t->o->step == ro->stop_after) break; /* "killed" */
        ra_optim_zero_grad(t->o);
        double L = 0;
        for (int a = 0; a < ACCUM; a++) L += micro_batch(t, &ck, 1.0f / ACCUM) / ACCUM;
        if (t->o->step == ro->nan_at) t->gW[3] = NAN;
        rc = ra_check_loss_finite(L, t->o->step, err);
        if (!rc) rc = ra_optim_step(t->o, ra_wsd_lr(&ck.schedule, t->o->step), err);
        if (!rc && t->o->step % ro->every == 0) rc = ra_checkpoint_save(ro->dir, 2, &ck, t->o, NULL, NULL, 0, err);
    }
    json_decref(run);
    return rc;
}

static int same_bits(const float *a, const float *b, size_t n) { return memcmp(a, b, n * sizeof(float)) == 0; }

TEST(interrupted_run_resumed_ends_bit_identical) {
    make_data();
    ra_error err = {0};
    char d1[300], d2[300];
    sub(d1, sizeof d1, "straight");
    sub(d2, sizeof d2, "resumed");
    tiny a, b, c;
    tiny_init(&a, 0);
    run_opts ra_ = {12, -1, -1, 0, 4, d1};
    EXPECT_EQ_INT(train(&a, &ra_, &err), 0);

    tiny_init(&b, 0);
    run_opts rb = {12, 6, -1, 0, 4, d2}; /* dies after step 6: newest checkpoint is step 4 */
    EXPECT_EQ_INT(train(&b, &rb, &err), 0);
    int64_t step = -1;
    char path[512];
    EXPECT_EQ_INT(ra_checkpoint_latest(d2, path, sizeof path, &step, &err), 0);
    EXPECT_EQ_INT(step, 4);
    ra_optim_free(b.o);

    tiny_init(&c, 0); /* a fresh process */
    test_fill(c.W, DOUT * DIN, 3); /* whatever it held is overwritten */
    run_opts rc_ = {12, -1, -1, 1, 4, d2};
    EXPECT_EQ_INT(train(&c, &rc_, &err), 0);
    EXPECT_MSG(err.code == 0, "%s", err.msg);
    EXPECT_EQ_INT(c.o->step, 12);
    EXPECT(same_bits(a.W, c.W, DOUT * DIN));
    EXPECT(same_bits(a.b, c.b, DOUT));
    EXPECT(same_bits(a.o->params[0].m, c.o->params[0].m, DOUT * DIN));
    EXPECT(same_bits(a.o->params[0].v, c.o->params[0].v, DOUT * DIN));
    EXPECT(same_bits(a.E, c.E, DIN)); /* frozen: the base model's */
    /* and the run did move: the weights are not the base model's */
    tiny base;
    tiny_init(&base, 0);
    EXPECT(!same_bits(a.W, base.W, DOUT * DIN));
    ra_optim_free(a.o), ra_optim_free(c.o), ra_optim_free(base.o);
}

TEST(nan_stops_the_run_and_keeps_the_last_good_checkpoint) {
    make_data();
    ra_error err = {0};
    char d[300], path[512];
    sub(d, sizeof d, "nan");
    tiny t;
    tiny_init(&t, 0);
    run_opts ro = {12, -1, 9, 0, 4, d};
    EXPECT_EQ_INT(train(&t, &ro, &err), EX_SOFTWARE);
    EXPECT(strstr(err.msg, "'layer.weight'") && strstr(err.msg, "NaN") && strstr(err.msg, "step 10"));
    EXPECT_EQ_INT(t.o->step, 9);
    int64_t step;
    EXPECT_EQ_INT(ra_checkpoint_latest(d, path, sizeof path, &step, &err), 0);
    EXPECT_EQ_INT(step, 8);
    ra_checkpoint ck = {0};
    EXPECT_EQ_INT(ra_checkpoint_read(path, &ck, t.o, &err), 0);
    EXPECT_EQ_INT(t.o->step, 8);
    ra_checkpoint_clear(&ck);
    ra_optim_free(t.o);
}

/* ----------------------------------------------------------- round trip */

TEST(round_trip_is_bit_exact) {
    test_seed(71);
    ra_error err = {0};
    char p[300];
    sub(p, sizeof p, "rt.ra");
    tiny a, b;
    tiny_init(&a, 0);
    ra_optim_ensure_state(a.o);
    for (int i = 0; i < a.o->n; i++) {
        ra_param *q = &a.o->params[i];
        if (q->frozen) continue;
        test_fill(q->m, q->numel, 1e-3f);
        test_fill(q->v, q->numel, 1e-6f);
    }
    a.o->step = 123456789012LL;
    a.o->last_grad_norm = 0.1 + 1e-17;
    ra_checkpoint ck = {98765, 4321, {{0}, 0, 0}, {3.3e-4, 1000001, 0.1, 0.07}, NULL};
    rng_seed(&ck.rng, 5);
    (void)rng_normal(&ck.rng); /* leaves a spare */
    ck.run = json_pack("{s:s, s:{s:i}}", "teacher", "0123456789abcdef0123456789abcdef", "config", "layers", 16);
    char id[33];
    EXPECT_EQ_INT(ra_checkpoint_write(p, &ck, a.o, NULL, id, &err), 0);
    EXPECT_EQ_INT(strlen(id), 32);

    tiny_init(&b, 0);
    ra_adamw_config other = {0.5, 0.5, 1, 1, 1};
    b.o->cfg = other;
    test_fill(b.W, DOUT * DIN, 9);
    ra_checkpoint got = {0};
    EXPECT_EQ_INT(ra_checkpoint_read(p, &got, b.o, &err), 0);
    EXPECT_MSG(err.code == 0, "%s", err.msg);
    EXPECT(same_bits(a.W, b.W, DOUT * DIN) && same_bits(a.b, b.b, DOUT));
    for (int i = 0; i < 2; i++) {
        EXPECT(same_bits(a.o->params[i].m, b.o->params[i].m, a.o->params[i].numel));
        EXPECT(same_bits(a.o->params[i].v, b.o->params[i].v, a.o->params[i].numel));
    }
    EXPECT(b.o->step == a.o->step);
    EXPECT(memcmp(&b.o->last_grad_norm, &a.o->last_grad_norm, 8) == 0);
    EXPECT(memcmp(&b.o->cfg, &a.o->cfg, sizeof a.o->cfg) == 0);
    EXPECT(got.tokens == ck.tokens && got.data_position == ck.data_position);
    EXPECT(memcmp(got.rng.s, ck.rng.s, sizeof ck.rng.s) == 0 && got.rng.has_spare == 1 &&
           memcmp(&got.rng.spare_normal, &ck.rng.spare_normal, 8) == 0);
    EXPECT(memcmp(&got.schedule, &ck.schedule, sizeof ck.schedule) == 0);
    EXPECT(json_equal(got.run, ck.run));
    /* the generators continue identically */
    EXPECT(rng_normal(&got.rng) == rng_normal(&ck.rng) && rng_u64(&got.rng) == rng_u64(&ck.rng));
    /* the stream is an ordinary checkpoint stream with the documented names */
    ra_reader *hdr;
    ra_tensor *t;
    int n;
    EXPECT_EQ_INT(ra_read_all(p, &hdr, &t, &n, &err), 0);
    EXPECT_STR(ra_reader_kind(hdr), "checkpoint");
    EXPECT_EQ_INT(n, 6);
    EXPECT(ra_tensors_find(t, n, "param/layer.weight") && ra_tensors_find(t, n, "adam_m/layer.bias") &&
           ra_tensors_find(t, n, "adam_v/layer.weight") && !ra_tensors_find(t, n, "param/embed.scale"));
    ra_tensors_free(t, n);
    ra_reader_close(hdr);
    json_decref(ck.run);
    ra_checkpoint_clear(&got);
    ra_optim_free(a.o), ra_optim_free(b.o);
}

/* ------------------------------------------------------------- refusals */

static void copy_prefix(const char *src, const char *dst, long keep) {
    FILE *f = fopen(src, "rb"), *g = fopen(dst, "wb");
    for (long i = 0; i < keep; i++) {
        int ch = fgetc(f);
        if (ch == EOF) break;
        fputc(ch, g);
    }
    fclose(f), fclose(g);
}

static long file_size(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 ? (long)st.st_size : -1;
}

/* Expect read to fail with code and a message containing what, leaving t
 * untouched. */
static void expect_refused(const char *path, tiny *t, int code, const char *what) {
    float W0[DOUT * DIN];
    memcpy(W0, t->W, sizeof W0);
    int64_t step0 = t->o->step;
    ra_checkpoint ck = {0};
    ra_error err = {0};
    int rc = ra_checkpoint_read(path, &ck, t->o, &err);
    EXPECT_MSG(rc == code, "%s: rc %d, expected %d (%s)", path, rc, code, err.msg);
    EXPECT_MSG(strstr(err.msg, what) != NULL, "message '%s' lacks '%s'", err.msg, what);
    EXPECT(same_bits(W0, t->W, DOUT * DIN) && t->o->step == step0 && ck.run == NULL);
}

TEST(corrupt_truncated_foreign_and_mismatched_checkpoints_are_refused) {
    test_seed(72);
    ra_error err = {0};
    char good[300], p[300];
    sub(good, sizeof good, "good.ra");
    tiny a, b;
    tiny_init(&a, 0);
    a.o->step = 3;
    ra_checkpoint ck = {1, 2, {{0}, 0, 0}, ra_wsd_default(1e-4, 10), NULL};
    rng_seed(&ck.rng, 1);
    EXPECT_EQ_INT(ra_checkpoint_write(good, &ck, a.o, NULL, NULL, &err), 0);
    tiny_init(&b, 0);
    test_fill(b.W, DOUT * DIN, 2);

    sub(p, sizeof p, "missing.ra");
    expect_refused(p, &b, EX_NOINPUT, "missing.ra");

    sub(p, sizeof p, "truncated.ra");
    copy_prefix(good, p, file_size(good) - 20);
    expect_refused(p, &b, EX_DATAERR, "truncated.ra");

    sub(p, sizeof p, "flipped.ra"); /* one bit of the last tensor's data */
    copy_prefix(good, p, file_size(good));
    FILE *f = fopen(p, "r+b");
    fseek(f, file_size(good) - 60, SEEK_SET);
    int ch = fgetc(f);
    fseek(f, file_size(good) - 60, SEEK_SET);
    fputc(ch ^ 1, f);
    fclose(f);
    expect_refused(p, &b, EX_DATAERR, "flipped.ra");

    sub(p, sizeof p, "model.ra"); /* another kind */
    ra_writer *w = ra_writer_open(p, "model", NULL, NULL, &err);
    ra_writer_close(w, NULL, &err);
    expect_refused(p, &b, EX_DATAERR, "expected a checkpoint");

    /* the same model with the bias frozen in this run */
    tiny fz;
    tiny_init(&fz, 1);
    expect_refused(good, &fz, EX_DATAERR, "'layer.bias' was trained but this run freezes it");
    ra_optim_free(fz.o);

    /* a model with a parameter the checkpoint lacks */
    tiny extra;
    tiny_init(&extra, 0);
    float z[3], gz[3];
    int64_t s3[1] = {3};
    ra_optim_add(extra.o, "layer.extra", z, gz, 1, s3, &err);
    expect_refused(good, &extra, EX_DATAERR, "no parameter 'layer.extra'");
    ra_optim_free(extra.o);

    /* a parameter of another shape */
    ra_optim *o = ra_optim_create(NULL);
    float W[DOUT * DIN], gW[DOUT * DIN], bb[DOUT], gb[DOUT], E[DIN];
    int64_t sW[2] = {DIN, DOUT}, sb[1] = {DOUT}, sE[1] = {DIN};
    ra_optim_add(o, "layer.weight", W, gW, 2, sW, &err);
    ra_optim_add(o, "layer.bias", bb, gb, 1, sb, &err);
    ra_optim_add(o, "embed.scale", E, NULL, 1, sE, &err);
    ra_checkpoint got = {0};
    EXPECT_EQ_INT(ra_checkpoint_read(good, &got, o, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "'param/layer.weight'") != NULL && o->step == 0);
    ra_optim_free(o);

    /* and the good one still reads */
    EXPECT_EQ_INT(ra_checkpoint_read(good, &got, b.o, &err), 0);
    EXPECT(same_bits(a.W, b.W, DOUT * DIN) && b.o->step == 3);
    ra_checkpoint_clear(&got);
    ra_optim_free(a.o), ra_optim_free(b.o);
}

/* ------------------------------------------------------------ directory */

TEST(latest_and_prune_by_step) {
    ra_error err = {0};
    char d[300], p[600], path[600];
    sub(d, sizeof d, "dir");
    int64_t step = 0;
    EXPECT_EQ_INT(ra_checkpoint_latest(d, path, sizeof path, &step, &err), EX_NOINPUT); /* no directory */
    mkdir(d, 0777);
    EXPECT_EQ_INT(ra_checkpoint_latest(d, path, sizeof path, &step, &err), EX_NOINPUT); /* empty */
    const char *names[] = {"ckpt-000000000005.ra", "ckpt-000000000040.ra", "ckpt-000000000100.ra",
                           "ckpt-000000000009.ra", ".ckpt-000000000999.ra.tmp.AbCdEf", "ckpt-00000000099x.ra",
                           "ckpt-0000000001000.ra", "notes.txt"};
    for (int i = 0; i < 8; i++) {
        snprintf(p, sizeof p, "%s/%s", d, names[i]);
        FILE *f = fopen(p, "w");
        fclose(f);
    }
    EXPECT_EQ_INT(ra_checkpoint_latest(d, path, sizeof path, &step, &err), 0);
    EXPECT_EQ_INT(step, 100);
    snprintf(p, sizeof p, "%s/ckpt-000000000100.ra", d);
    EXPECT_STR(path, p);
    EXPECT_EQ_INT(ra_checkpoint_prune(d, 2, &err), 0);
    for (int i = 0; i < 8; i++) {
        snprintf(p, sizeof p, "%s/%s", d, names[i]);
        int kept = access(p, F_OK) == 0;
        int want = !(i == 0 || i == 3); /* steps 5 and 9 go; other names stay */
        EXPECT_MSG(kept == want, "%s: kept %d", names[i], kept);
    }
    char small[8];
    EXPECT_EQ_INT(ra_checkpoint_latest(d, small, sizeof small, &step, &err), EX_SOFTWARE);
}

int main(void) {
    make_tmpdir();
    RUN(interrupted_run_resumed_ends_bit_identical);
    RUN(nan_stops_the_run_and_keeps_the_last_good_checkpoint);
    RUN(round_trip_is_bit_exact);
    RUN(corrupt_truncated_foreign_and_mismatched_checkpoints_are_refused);
    RUN(latest_and_prune_by_step);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) return 1;
    return test_summary();
}
