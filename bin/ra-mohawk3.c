/* ra-mohawk3: MOHAWK stage 3, end-to-end distillation (DESIGN §2.5) — or,
 * with --loss ce, plain next-token pretraining with no teacher.  The model
 * math is lib/model_train.c; the loop (schedule, accumulation, AdamW,
 * checkpoints, resume, NaN guard, log) is lib/train_run.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atomic_file.h"
#include "cli.h"
#include "hybrid.h"
#include "model_train.h"
#include "train_run.h"

#define DEFAULT_LR 1e-5

static const char usage[] =
    "Usage: ra-mohawk3 -m TEACHER -s STUDENT -d TOKENS [options] > student3.ra\n"
    "       ra-mohawk3 --loss ce -s MODEL -d TOKENS [options] > model.ra\n"
    "Stage 3 of MOHAWK: train the whole student end to end on soft-target\n"
    "cross-entropy against the teacher's logits (kd), or on next-token labels (ce).\n"
    "\n"
    "  -m TEACHER         teacher (Hugging Face directory or model stream); kd only\n"
    "  -s STUDENT         the model to train (a hybrid student or any teacher-shaped model)\n"
    "  --loss L           kd (default): CE(student/T, softmax(teacher)); ce: next-token labels\n"
    "  --temperature T    kd temperature dividing the student's logits (1)\n"
    "  --dtype T          f32 (default), bf16 or f16: how the output stores the weights\n"
    "  (default --lr 1e-5)\n"
    "\n" RA_TRAIN_USAGE "  --help, --version\n";

typedef struct mohawk3_args {
    ra_train_opts train;
    const char *teacher, *student;
    ra_stage3_loss loss;
    double temperature;
    ra_dtype dtype;
} mohawk3_args;

static void parse_args(int argc, char **argv, mohawk3_args *a) {
    memset(a, 0, sizeof *a);
    ra_train_opts_init(&a->train, DEFAULT_LR);
    a->loss = RA_LOSS_KD;
    a->temperature = 1.0;
    a->dtype = RA_F32;
    for (int i = 1; i < argc; i++) {
        if (ra_train_parse_flag(&a->train, argc, argv, &i)) continue;
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (f[0] != '-') ra_usage_error("unexpected argument '%s'", f);
        if (!v) {
            if (!strcmp(f, "-m") || !strcmp(f, "-s") || !strcmp(f, "--loss") || !strcmp(f, "--temperature") ||
                !strcmp(f, "--dtype"))
                ra_usage_error("%s: missing value", f);
            ra_usage_error("unknown option '%s'", f);
        }
        if (!strcmp(f, "-m")) a->teacher = v;
        else if (!strcmp(f, "-s")) a->student = v;
        else if (!strcmp(f, "--loss")) {
            if (ra_stage3_loss_parse(v, &a->loss)) ra_usage_error("--loss: '%s', expected kd or ce", v);
        } else if (!strcmp(f, "--temperature")) {
            char *end;
            a->temperature = strtod(v, &end);
            if (*end || end == v || !(a->temperature > 0) || !isfinite(a->temperature))
                ra_usage_error("--temperature: '%s', expected a number > 0", v);
        } else if (!strcmp(f, "--dtype")) {
            if (ra_dtype_parse(v, &a->dtype) || !(a->dtype == RA_F32 || a->dtype == RA_BF16 || a->dtype == RA_F16))
                ra_usage_error("--dtype: '%s', expected f32, bf16 or f16", v);
        } else ra_usage_error("unknown option '%s'", f);
        i++;
    }
    ra_train_opts_check(&a->train);
    if (!a->student) ra_usage_error("need -s STUDENT");
    if (a->loss == RA_LOSS_KD && !a->teacher) ra_usage_error("--loss kd needs -m TEACHER");
    if (a->loss == RA_LOSS_CE && a->teacher) ra_usage_error("--loss ce trains on labels and takes no -m TEACHER");
    if (a->loss == RA_LOSS_CE && a->temperature != 1.0) ra_usage_error("--temperature applies to --loss kd only");
}

/* The stage's context: everything a micro-batch needs. */
typedef struct stage3 {
    ra_model_train *mt;
    ra_model_grads *grads;
    ra_optim *optim;
    int released; /* frozen parameters' gradient arrays freed */
    ra_stage3_loss loss;
    float temperature;
} stage3;

static int micro_step(void *ctx, const ra_train_batch *b, float dloss, double *loss, ra_error *err) {
    stage3 *s = ctx;
    if (!s->released) {
        /* The driver has applied --freeze by now (before the first step). */
        ra_model_grads_release_frozen(s->grads, s->optim);
        s->released = 1;
    }
    return ra_model_train_step(s->mt, s->grads, s->loss, b->tokens, b->doc_start, b->labels, b->B, b->T,
                               s->temperature, dloss, loss, NULL, err);
}

static int eval_batch(void *ctx, const ra_train_batch *b, double *loss, ra_error *err) {
    stage3 *s = ctx;
    return ra_model_train_step(s->mt, NULL, s->loss, b->tokens, b->doc_start, b->labels, b->B, b->T, s->temperature,
                               1.0f, loss, NULL, err);
}

static ra_model *load_model(const char *path, const char *role) {
    ra_error err = {0};
    ra_model *m;
    if (ra_model_load(path, &m, &err)) ra_die_error(&err);
    if (m->warning[0] && !ra_progress_quiet) fprintf(stderr, "ra-mohawk3: %s: %s\n", role, m->warning);
    return m;
}

int main(int argc, char **argv) {
    ra_cli_init(argc, argv, "ra-mohawk3", usage);
    mohawk3_args a;
    parse_args(argc, argv, &a);
    ra_error err = {0};
    if (!strcmp(a.train.out, "-") && ra_check_binary_stdout(&err)) ra_die_error(&err);
    int cuda = a.train.device == RA_DEVICE_CUDA;

    ra_model *s = load_model(a.student, "student"), *t = NULL;
    char student_id[RA_MODEL_ID_LEN + 1];
    memcpy(student_id, s->content_id, sizeof student_id);
    if (a.teacher) {
        t = load_model(a.teacher, "teacher");
        if (t->hybrid) ra_die(EX_DATAERR, "%s: a hybrid student; -m takes the teacher", a.teacher);
        if (ra_stage3_check_pair(t, s, &err)) ra_die_error(&err);
    }
    stage3 st3 = {.loss = a.loss, .temperature = (float)a.temperature};
    if (!cuda) {
        st3.mt = ra_model_train_create(s, t, a.train.batch, a.train.seq_len, 0, &err);
        if (!st3.mt) ra_die_error(&err);
    }
    /* On cuda the host gradient arrays are registered (names, shapes) but
     * never touched: the device holds the gradients. */
    st3.grads = ra_model_grads_create(s);
    ra_optim *optim = ra_optim_create(NULL);
    if (ra_model_grads_register(st3.grads, optim, &err)) ra_die_error(&err);
    st3.optim = optim;

    /* What a resumed checkpoint must agree with. */
    json_t *run = json_pack("{s:s, s:s, s:s?, s:f}", "loss", ra_stage3_loss_name(a.loss), "student", student_id,
                            "teacher", t ? t->content_id : NULL, "temperature", a.temperature);
    ra_train_stage st = {.name = "stage3", .ctx = &st3, .optim = optim, .run = run, .micro_step = micro_step,
                         .eval = eval_batch, .vocab_size = s->cfg.vocab_size};
    ra_stage3_device *dev = NULL;
    if (cuda && ra_stage3_device_create(&dev, &st, s, t, optim, a.loss, (float)a.temperature, a.train.batch,
                                        a.train.seq_len, &err))
        ra_die_error(&err);
    if (!a.train.quiet) {
        fprintf(stderr, "ra-mohawk3: loss %s", ra_stage3_loss_name(a.loss));
        if (a.loss == RA_LOSS_KD) fprintf(stderr, " (temperature %g)", a.temperature);
        fprintf(stderr, ", %lld parameters, logits in chunks of %d rows\n", (long long)ra_optim_trainable_numel(optim),
                cuda ? ra_stage3_device_logit_rows(dev) : ra_model_train_logit_rows(st3.mt));
    }
    ra_train_result res;
    int rc = ra_train_run("ra-mohawk3", &a.train, &st, &res, &err);
    if (cuda) /* for benchmarks (man page: peak device memory) */
        fprintf(stderr, "peak_device_bytes=%zu\n", ra_stage3_device_peak_bytes(dev));
    if (rc) ra_die_error(&err);

    json_t *params = ra_train_params_json(&a.train);
    json_object_set_new(params, "loss", json_string(ra_stage3_loss_name(a.loss)));
    json_object_set_new(params, "temperature", json_real(a.temperature));
    json_object_set_new(params, "dtype", json_string(ra_dtype_name(a.dtype)));
    json_t *prov = json_pack("{s:s, s:s, s:o, s:{s:s, s:s?, s:s, s:s?}, s:{s:I, s:I, s:f}}", "tool", "ra-mohawk3",
                             "version", RA_VERSION, "parameters", params, "inputs", "student", student_id, "teacher",
                             t ? t->content_id : NULL, "data", res.data_id, "heldout",
                             res.heldout_id[0] ? res.heldout_id : NULL, "result", "steps", (json_int_t)res.steps,
                             "tokens", (json_int_t)res.tokens, "last_loss", res.last_loss);
    char id[RA_MODEL_ID_LEN + 1];
    if (ra_model_write_stream(s, a.train.out, a.dtype, prov, id, &err)) ra_die_error(&err);
    if (!a.train.quiet)
        fprintf(stderr, "ra-mohawk3: %lld steps, %lld tokens, last loss %.6g; model content id %s\n",
                (long long)res.steps, (long long)res.tokens, res.last_loss, id);
    json_decref(prov);
    json_decref(run);
    ra_optim_free(optim);
    ra_model_grads_free(st3.grads);
    ra_model_train_free(st3.mt);
    ra_stage3_device_free(dev);
    ra_model_free(s);
    ra_model_free(t);
    return 0;
}
