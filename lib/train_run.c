/* The training driver shared by the stage tools (lib/train_run.h). */
#include "train_run.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "checkpoint.h"
#include "cli.h"
#include "schedule.h"
#include "stream.h"

/* ------------------------------------------------------------ flags */

void ra_train_opts_init(ra_train_opts *o, double default_lr) {
    memset(o, 0, sizeof *o);
    o->out = "-";
    o->lr = default_lr;
    o->batch = 8;
    o->seq_len = 512;
    o->grad_accum = 1;
    o->warmup = 0.1;
    o->decay = 0.1;
    o->keep = 2;
    o->eval_batches = 4;
    o->device = RA_DEVICE_CPU;
}

int ra_train_parse_flag(ra_train_opts *o, int argc, char **argv, int *i) {
    const char *f = argv[*i];
    static const char *const no_value[] = {"-q", "--resume"};
    for (size_t k = 0; k < sizeof no_value / sizeof *no_value; k++)
        if (!strcmp(f, no_value[k])) {
            if (!strcmp(f, "-q")) o->quiet = ra_progress_quiet = 1;
            else o->resume = 1;
            return 1;
        }
    static const char *const with_value[] = {"-d",         "-o",        "--lr",       "--steps",    "--tokens",
                                             "--batch",    "--seq-len", "--grad-accum", "--seed",   "--freeze",
                                             "--warmup",   "--decay",   "--clip",     "--ckpt-every", "--ckpt-dir",
                                             "--keep",     "--log",     "--eval-every", "--eval-batches",
                                             "--heldout",  "--device"};
    int known = 0;
    for (size_t k = 0; k < sizeof with_value / sizeof *with_value; k++) known |= !strcmp(f, with_value[k]);
    if (!known) return 0;
    if (*i + 1 >= argc) ra_usage_error("%s: missing value", f);
    const char *v = argv[++*i];
    if (!strcmp(f, "-d")) o->data = v;
    else if (!strcmp(f, "-o")) o->out = v;
    else if (!strcmp(f, "--lr")) o->lr = ra_parse_double(f, v, 0, 1e3);
    else if (!strcmp(f, "--steps")) o->steps = ra_parse_int(f, v, 1, INT64_MAX / 2);
    else if (!strcmp(f, "--tokens")) o->tokens = ra_parse_int(f, v, 1, INT64_MAX / 2);
    else if (!strcmp(f, "--batch")) o->batch = (int)ra_parse_int(f, v, 1, 1 << 20);
    else if (!strcmp(f, "--seq-len")) o->seq_len = (int)ra_parse_int(f, v, 1, 1 << 24);
    else if (!strcmp(f, "--grad-accum")) o->grad_accum = (int)ra_parse_int(f, v, 1, 1 << 20);
    else if (!strcmp(f, "--seed")) o->seed = (uint64_t)ra_parse_int(f, v, 0, INT64_MAX);
    else if (!strcmp(f, "--freeze")) o->freeze = v;
    else if (!strcmp(f, "--warmup")) o->warmup = ra_parse_double(f, v, 0, 1);
    else if (!strcmp(f, "--decay")) o->decay = ra_parse_double(f, v, 0, 1);
    else if (!strcmp(f, "--clip")) o->clip = ra_parse_double(f, v, 0, 1e30);
    else if (!strcmp(f, "--ckpt-every")) o->ckpt_every = ra_parse_int(f, v, 0, INT64_MAX / 2);
    else if (!strcmp(f, "--ckpt-dir")) o->ckpt_dir = v;
    else if (!strcmp(f, "--keep")) o->keep = (int)ra_parse_int(f, v, 0, 1 << 20);
    else if (!strcmp(f, "--log")) o->log = v;
    else if (!strcmp(f, "--eval-every")) o->eval_every = ra_parse_int(f, v, 0, INT64_MAX / 2);
    else if (!strcmp(f, "--eval-batches")) o->eval_batches = (int)ra_parse_int(f, v, 1, 1 << 20);
    else if (!strcmp(f, "--heldout")) o->heldout = v;
    else if (!strcmp(f, "--device")) {
        if (ra_device_parse(v, &o->device)) ra_usage_error("--device: '%s', expected cpu or cuda", v);
    }
    return 1;
}

void ra_train_opts_check(const ra_train_opts *o) {
    if (!o->data) ra_usage_error("need -d TOKENS (the training tokens stream)");
    if (o->steps && o->tokens) ra_usage_error("--steps and --tokens: give one of them");
    if (o->resume && !o->ckpt_dir) ra_usage_error("--resume needs --ckpt-dir DIR");
    if (o->ckpt_every && !o->ckpt_dir) ra_usage_error("--ckpt-every needs --ckpt-dir DIR");
    if (o->warmup + o->decay > 1) ra_usage_error("--warmup %g + --decay %g: more than the whole run", o->warmup, o->decay);
    if (o->heldout && !o->eval_every) ra_usage_error("--heldout needs --eval-every N");
    if (o->lr <= 0) ra_usage_error("--lr: must be positive");
}

/* --device cuda for a stage without device callbacks (every tool's stage
 * has them; a guard for new ones). */
static int device_check(const ra_train_opts *o, ra_error *err) {
    if (o->device == RA_DEVICE_CUDA)
        return ra_fail(err, EX_UNAVAILABLE, "--device cuda: this stage has no CUDA training step; use --device cpu");
    return 0;
}

json_t *ra_train_params_json(const ra_train_opts *o) {
    return json_pack("{s:f, s:I, s:I, s:i, s:i, s:i, s:I, s:s?, s:f, s:f, s:f, s:I, s:i}", "lr", o->lr, "steps",
                     (json_int_t)o->steps, "tokens", (json_int_t)o->tokens, "batch", o->batch, "seq_len", o->seq_len,
                     "grad_accum", o->grad_accum, "seed", (json_int_t)o->seed, "freeze", o->freeze, "warmup",
                     o->warmup, "decay", o->decay, "clip", o->clip, "eval_every", (json_int_t)o->eval_every,
                     "eval_batches", o->eval_every ? o->eval_batches : 0);
}

/* ------------------------------------------------------------ the run */

typedef struct run_state {
    const char *prog;
    const ra_train_opts *o;
    ra_train_stage *st;
    ra_train_data *data, *held; /* held: the held-out source (data itself or --heldout) */
    int32_t *tokens, *doc_start, *labels;
    ra_rng rng;
    ra_wsd sched;
    json_t *run;
    int64_t total, tokens_done, tokens_per_step;
    FILE *log;
    ra_train_result *res;
    double t0, last_print;
    int64_t first_step;
} run_state;

static int64_t total_steps(const ra_train_opts *o, int64_t rows) {
    int64_t per_step = (int64_t)o->batch * o->seq_len * o->grad_accum;
    if (o->steps) return o->steps;
    if (o->tokens) return (o->tokens + per_step - 1) / per_step;
    int64_t s = rows / ((int64_t)o->batch * o->grad_accum);
    return s > 0 ? s : 1;
}

/* The first key where two run objects differ, for the message. */
static void first_difference(const json_t *a, const json_t *b, char *buf, size_t cap, const char *prefix) {
    const char *key;
    const json_t *va;
    json_object_foreach((json_t *)a, key, va) {
        const json_t *vb = json_object_get(b, key);
        if (vb && json_equal(va, vb)) continue;
        char path[256];
        snprintf(path, sizeof path, "%s%s%s", prefix, *prefix ? "." : "", key);
        if (vb && json_is_object(va) && json_is_object(vb)) {
            first_difference(va, vb, buf, cap, path);
            if (*buf) return;
        }
        char *sa = json_dumps(va, JSON_ENCODE_ANY | JSON_COMPACT), *sb = vb ? json_dumps(vb, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
        snprintf(buf, cap, "'%s' is %s in the checkpoint, %s in this run", path, sa ? sa : "?", sb ? sb : "absent");
        free(sa);
        free(sb);
        return;
    }
    json_object_foreach((json_t *)b, key, va) {
        if (!json_object_get(a, key)) {
            snprintf(buf, cap, "'%s%s%s' is absent in the checkpoint", prefix, *prefix ? "." : "", key);
            return;
        }
    }
}

static int restore(run_state *s, ra_error *err) {
    char path[1024];
    int64_t step;
    ra_error e2 = {0};
    if (ra_checkpoint_latest(s->o->ckpt_dir, path, sizeof path, &step, &e2)) {
        if (e2.code != EX_NOINPUT) {
            *err = e2;
            return err->code;
        }
        if (!s->o->quiet) fprintf(stderr, "%s: --resume: no checkpoint in %s, starting from the beginning\n", s->prog, s->o->ckpt_dir);
        return 0;
    }
    /* Compare the run first (the header alone), so a checkpoint of another
     * run is named as such rather than by its first unexpected tensor. */
    ra_reader *r = ra_reader_open(path, err);
    if (!r) return err->code;
    const json_t *run = json_object_get(ra_reader_meta(r), "run");
    if (run && !json_equal(run, s->run)) {
        char diff[512] = "";
        first_difference(run, s->run, diff, sizeof diff, "");
        ra_reader_close(r);
        return ra_fail(err, EX_DATAERR, "%s: the checkpoint belongs to another run: %s", path, diff);
    }
    ra_reader_close(r);
    ra_checkpoint ck = {0};
    if (ra_checkpoint_read(path, &ck, s->st->optim, err)) return err->code;
    if (!json_equal(ck.run, s->run)) {
        ra_checkpoint_clear(&ck);
        return ra_fail(err, EX_DATAERR, "%s: the checkpoint belongs to another run", path);
    }
    ra_checkpoint_clear(&ck);
    if (s->st->device) s->st->device->upload(s->st->ctx);
    snprintf(s->res->checkpoint, sizeof s->res->checkpoint, "%s", path);
    s->tokens_done = ck.tokens;
    s->rng = ck.rng;
    ra_train_data_seek(s->data, ck.data_position);
    s->res->resumed_from = s->st->optim->step;
    s->first_step = s->st->optim->step;
    if (!s->o->quiet) fprintf(stderr, "%s: resuming from %s (step %" PRId64 ")\n", s->prog, path, s->st->optim->step);
    if (s->st->weights_changed && s->st->weights_changed(s->st->ctx, err)) return err->code;
    return 0;
}

static int save(run_state *s, ra_error *err) {
    if (s->st->device) s->st->device->download(s->st->ctx);
    ra_checkpoint ck = {.tokens = s->tokens_done,
                        .data_position = ra_train_data_position(s->data),
                        .rng = s->rng,
                        .schedule = s->sched,
                        .run = s->run};
    return ra_checkpoint_save(s->o->ckpt_dir, s->o->keep, &ck, s->st->optim, NULL, s->res->checkpoint,
                              sizeof s->res->checkpoint, err);
}

static int open_log(run_state *s, ra_error *err) {
    if (!s->o->log) return 0;
    struct stat sb;
    int append = s->res->resumed_from >= 0 && stat(s->o->log, &sb) == 0 && sb.st_size > 0;
    s->log = fopen(s->o->log, append ? "a" : "w");
    if (!s->log) return ra_fail(err, EX_CANTCREAT, "%s: cannot open the log: %s", s->o->log, strerror(errno));
    if (!append)
        fprintf(s->log, "step\ttokens\tloss\tlr\tgrad_norm\ttokens_per_s\telapsed_s%s\n",
                s->o->eval_every ? "\teval_loss" : "");
    fflush(s->log);
    return 0;
}

static int evaluate(run_state *s, double *loss, ra_error *err) {
    const ra_train_opts *o = s->o;
    double sum = 0;
    for (int k = 0; k < o->eval_batches; k++) {
        ra_train_data_heldout(s->held, (int64_t)k * o->batch, o->batch, s->tokens, s->doc_start, s->labels);
        ra_train_batch b = {o->batch, o->seq_len, s->tokens, s->doc_start, s->labels, s->st->optim->step, k, -1};
        double l = 0;
        if (s->st->eval(s->st->ctx, &b, &l, err))
            return ra_error_prefix(err, "evaluation batch %d (held-out rows %" PRId64 "..): ", k, (int64_t)k * o->batch);
        sum += l;
    }
    *loss = sum / o->eval_batches;
    return 0;
}

static void format_eta(char *buf, size_t cap, double secs) {
    if (!(secs >= 0) || secs > 1e8) secs = 0;
    long t = (long)(secs + 0.5);
    snprintf(buf, cap, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
}

static void progress(run_state *s, int64_t step_done, double loss, double lr, int force) {
    if (s->o->quiet) return;
    double now = ra_now();
    if (!force && now - s->last_print < 1.0) return;
    s->last_print = now;
    double el = now - s->t0, done = (double)(step_done - s->first_step);
    double rate = el > 0 ? done * s->tokens_per_step / el : 0;
    char eta[32];
    format_eta(eta, sizeof eta, done > 0 ? el / done * (double)(s->total - step_done) : 0);
    fprintf(stderr, "%s: step %" PRId64 "/%" PRId64 "  tokens %" PRId64 "  loss %.6g  lr %.3g  %.0f tok/s  ETA %s\n",
            s->prog, step_done, s->total, s->tokens_done, loss, lr, rate, eta);
}

static const char *last_good(const run_state *s) {
    return s->res->checkpoint[0] ? s->res->checkpoint : NULL;
}

static int fail_step(run_state *s, ra_error *err) {
    const char *ck = last_good(s);
    char tail[1200];
    if (ck) snprintf(tail, sizeof tail, "; stopped, the last good checkpoint is %s", ck);
    else snprintf(tail, sizeof tail, "; stopped (no checkpoint was written)");
    size_t n = strlen(err->msg);
    snprintf(err->msg + n, sizeof err->msg - n, "%s", tail);
    return err->code;
}

/* One optimiser step: micro-batches, guards, update, log. */
static int one_step(run_state *s, int64_t nan_step, ra_error *err) {
    const ra_train_opts *o = s->o;
    ra_optim *opt = s->st->optim;
    int64_t step = opt->step;
    const ra_train_device_ops *dev = s->st->device;
    if (dev) dev->zero_grad(s->st->ctx);
    else ra_optim_zero_grad(opt);
    double loss = 0;
    for (int k = 0; k < o->grad_accum; k++) {
        int64_t pos = ra_train_data_position(s->data);
        ra_train_data_next(s->data, o->batch, s->tokens, s->doc_start, s->labels);
        ra_train_batch b = {o->batch, o->seq_len, s->tokens, s->doc_start, s->labels, step, k, pos};
        double l = 0;
        if (s->st->micro_step(s->st->ctx, &b, 1.0f / (float)o->grad_accum, &l, err)) {
            ra_error_prefix(err, "step %" PRId64 ", micro-batch %d (data rows %" PRId64 "..%" PRId64 "): ", step, k, pos,
                            pos + o->batch - 1);
            return fail_step(s, err);
        }
        loss += l / o->grad_accum;
    }
    int poison = step + 1 == nan_step; /* test hook: RA_TEST_NAN_AT_STEP (steps counted from 1, as in the log) */
    if (poison && !dev)
        for (int i = 0; i < opt->n; i++)
            if (!opt->params[i].frozen && opt->params[i].g) {
                opt->params[i].g[0] = NAN;
                break;
            }
    if (ra_check_loss_finite(loss, step, err)) return fail_step(s, err);
    double lr = ra_wsd_lr(&s->sched, step);
    if (dev ? dev->step(s->st->ctx, lr, poison, err) : ra_optim_step(opt, lr, err)) return fail_step(s, err);
    s->tokens_done += s->tokens_per_step;
    s->res->last_loss = loss;
    if (s->st->weights_changed && s->st->weights_changed(s->st->ctx, err)) return fail_step(s, err);

    int64_t done = opt->step;
    double eval_loss = NAN;
    int do_eval = o->eval_every && (done % o->eval_every == 0 || done == s->total);
    if (do_eval) {
        if (evaluate(s, &eval_loss, err)) return fail_step(s, err);
        s->res->last_eval_loss = eval_loss;
    }
    double el = ra_now() - s->t0;
    if (s->log) {
        double rate = el > 0 ? (double)(done - s->first_step) * s->tokens_per_step / el : 0;
        fprintf(s->log, "%" PRId64 "\t%" PRId64 "\t%.9g\t%.9g\t%.9g\t%.1f\t%.3f", done, s->tokens_done, loss, lr,
                opt->last_grad_norm, rate, el);
        if (o->eval_every) {
            if (do_eval) fprintf(s->log, "\t%.9g", eval_loss);
            else fputs("\t", s->log);
        }
        fputc('\n', s->log);
        if (fflush(s->log)) return ra_fail(err, EX_IOERR, "%s: write failed: %s", o->log, strerror(errno));
    }
    progress(s, done, loss, lr, done == s->total || done == s->first_step + 1);
    if (do_eval && !o->quiet) fprintf(stderr, "%s: step %" PRId64 "  eval loss %.6g\n", s->prog, done, eval_loss);
    if (o->ckpt_dir && o->ckpt_every && done % o->ckpt_every == 0 && done < s->total)
        if (save(s, err)) return err->code;
    return 0;
}

/* a test hook's step from the environment variable NAME; -1 when unset */
static int64_t hook_step(const char *name) {
    const char *v = getenv(name);
    if (!v || !*v) return -1;
    char *end;
    long long n = strtoll(v, &end, 10);
    return *end || n < 0 ? -1 : (int64_t)n;
}

static int setup(run_state *s, ra_error *err) {
    const ra_train_opts *o = s->o;
    ra_train_stage *st = s->st;
    if (!st->micro_step || !st->optim) return ra_fail(err, EX_SOFTWARE, "training stage without micro_step or optimiser");
    if (o->eval_every && !st->eval) return ra_fail(err, EX_USAGE, "--eval-every: this stage has no evaluation");
    if (!st->device && device_check(o, err)) return err->code;
    int64_t n_held = o->eval_every && !o->heldout ? (int64_t)o->eval_batches * o->batch : 0;
    if (ra_train_data_open(o->data, o->seq_len, st->vocab_size, o->seed, n_held, &s->data, err)) return err->code;
    snprintf(s->res->data_id, sizeof s->res->data_id, "%s", ra_train_data_id(s->data));
    s->held = s->data;
    if (o->heldout) {
        if (ra_train_data_open(o->heldout, o->seq_len, st->vocab_size, o->seed, RA_HELDOUT_ALL, &s->held, err))
            return err->code;
        snprintf(s->res->heldout_id, sizeof s->res->heldout_id, "%s", ra_train_data_id(s->held));
    }
    if (ra_optim_freeze(st->optim, o->freeze, err)) return err->code;
    if (ra_optim_trainable_numel(st->optim) == 0)
        return ra_fail(err, EX_USAGE, "nothing to train: every parameter is frozen");
    st->optim->cfg.clip = o->clip;
    s->total = total_steps(o, ra_train_data_rows(s->data));
    s->sched = (ra_wsd){o->lr, s->total, o->warmup, o->decay};
    s->tokens_per_step = (int64_t)o->batch * o->seq_len * o->grad_accum;
    rng_seed(&s->rng, o->seed);
    st->rng = &s->rng;
    json_t *params = ra_train_params_json(o);
    json_object_set_new(params, "steps", json_integer(s->total));
    s->run = json_pack("{s:s, s:o, s:s, s:s?, s:O?}", "stage", st->name ? st->name : "", "train", params, "data",
                       s->res->data_id, "heldout", o->heldout ? s->res->heldout_id : NULL, "tool", st->run);
    if (!s->run) return ra_fail(err, EX_SOFTWARE, "cannot build the run description");
    if (!json_object_get(s->run, "heldout")) json_object_set_new(s->run, "heldout", json_null());
    if (!json_object_get(s->run, "tool")) json_object_set_new(s->run, "tool", json_object());
    size_t n = (size_t)o->batch * o->seq_len;
    s->tokens = xmalloc(n * sizeof *s->tokens);
    s->doc_start = xmalloc(n * sizeof *s->doc_start);
    s->labels = xmalloc(n * sizeof *s->labels);
    if (st->device && st->device->begin(st->ctx, err)) return err->code;
    if (o->resume && restore(s, err)) return err->code;
    if (!o->resume && o->ckpt_dir) {
        char path[1024];
        ra_error e2 = {0};
        if (ra_checkpoint_latest(o->ckpt_dir, path, sizeof path, NULL, &e2) == 0)
            return ra_fail(err, EX_USAGE, "--ckpt-dir %s already holds checkpoints (%s): pass --resume to continue that run, or use another directory",
                           o->ckpt_dir, path);
    }
    return open_log(s, err);
}

static void teardown(run_state *s) {
    if (s->log) fclose(s->log);
    if (s->held != s->data) ra_train_data_free(s->held);
    ra_train_data_free(s->data);
    free(s->tokens);
    free(s->doc_start);
    free(s->labels);
    json_decref(s->run);
    if (s->st) s->st->rng = NULL;
}

int ra_train_run(const char *prog, const ra_train_opts *o, ra_train_stage *st, ra_train_result *res, ra_error *err) {
    memset(res, 0, sizeof *res);
    res->resumed_from = -1;
    res->last_loss = NAN;
    res->last_eval_loss = NAN;
    run_state s = {.prog = prog ? prog : "ra", .o = o, .st = st, .res = res};
    int rc = setup(&s, err);
    int64_t nan_step = hook_step("RA_TEST_NAN_AT_STEP");
    int64_t stop_step = hook_step("RA_TEST_STOP_AT_STEP");
    s.t0 = s.last_print = ra_now();
    s.last_print -= 10;
    if (!s.first_step) s.first_step = st->optim->step;
    while (!rc && st->optim->step < s.total) {
        rc = one_step(&s, nan_step, err);
        /* test hook: stop (SIGSTOP) after this step and its checkpoint, so a
         * test can kill -9 the run at a known point between checkpoints */
        if (!rc && st->optim->step == stop_step) raise(SIGSTOP);
    }
    /* the final checkpoint (unless the last step just wrote one) */
    if (!rc && o->ckpt_dir && (st->optim->step > s.first_step || res->resumed_from < 0)) rc = save(&s, err);
    else if (!rc && st->device) st->device->download(st->ctx); /* the trained weights into the host model */
    res->steps = st->optim->step;
    res->tokens = s.tokens_done;
    teardown(&s);
    return rc;
}
