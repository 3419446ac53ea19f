/* ra-mohawk1: MOHAWK stage 1, matrix orientation (DESIGN §2.5): train the
 * SSM heads of a hybrid student so that each head's mixing matrix matches
 * its teacher query head's attention matrix.  The objective lives in
 * lib/stage1.c, the loop in lib/train_run.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atomic_file.h"
#include "cli.h"
#include "hybrid.h"
#include "stage1.h"
#include "stage2.h" /* ra_parse_layer_list */
#include "train_run.h"

static const char usage[] =
    "Usage: ra-mohawk1 -m TEACHER -s STUDENT -d TOKENS [options] > student1.ra\n"
    "MOHAWK stage 1 (matrix orientation): for every SSM head of the chosen layers,\n"
    "minimise the Frobenius norm between its mixing matrix and the attention matrix\n"
    "of its teacher query head, both from the teacher's hidden state entering the\n"
    "layer.  Only the SSM parameters the matrix depends on train.\n"
    "\n"
    "  -m TEACHER         the teacher (Hugging Face directory or model stream)\n"
    "  -s STUDENT         the hybrid student made from it (ra-graft)\n"
    "  --layers SPEC      layers to train: all (default) or a list like 0-3,7\n"
    "  --max-matrix-gb X  refuse a --seq-len whose T x T matrices need more (8)\n"
    "  --dtype T          output storage: f32 (default), bf16 or f16\n"
    "\n" RA_TRAIN_USAGE "  --help, --version\n"
    "The default learning rate is 1e-4.\n";

#define DEFAULT_LR 1e-4

typedef struct m1_args {
    ra_train_opts t;
    const char *teacher, *student, *layers;
    double max_gb;
    ra_dtype dtype;
} m1_args;

static void parse_args(int argc, char **argv, m1_args *a) {
    memset(a, 0, sizeof *a);
    ra_train_opts_init(&a->t, DEFAULT_LR);
    a->layers = "all";
    a->max_gb = RA_STAGE1_DEFAULT_MAX_BYTES / 1e9;
    a->dtype = RA_F32;
    for (int i = 1; i < argc; i++) {
        if (ra_train_parse_flag(&a->t, argc, argv, &i)) continue;
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (f[0] != '-' || !f[1]) ra_usage_error("unexpected argument '%s'", f);
        if (!strcmp(f, "-m") || !strcmp(f, "-s") || !strcmp(f, "--layers") || !strcmp(f, "--max-matrix-gb") ||
            !strcmp(f, "--dtype")) {
            if (!v) ra_usage_error("%s: missing value", f);
            i++;
        } else ra_usage_error("unknown option '%s'", f);
        if (!strcmp(f, "-m")) a->teacher = v;
        else if (!strcmp(f, "-s")) a->student = v;
        else if (!strcmp(f, "--layers")) a->layers = v;
        else if (!strcmp(f, "--max-matrix-gb")) a->max_gb = ra_parse_double(f, v, 1e-9, 1e9);
        else if (ra_dtype_parse(v, &a->dtype) || !(a->dtype == RA_F32 || a->dtype == RA_BF16 || a->dtype == RA_F16))
            ra_usage_error("--dtype: '%s', expected f32, bf16 or f16", v);
    }
    ra_train_opts_check(&a->t);
    if (!a->teacher || !a->student) ra_usage_error("need -m TEACHER and -s STUDENT");
}

/* "all", or a layer list (ra_parse_layer_list: 3, 0-15, 1,4-6), into flags [n]. */
static void parse_layers(const char *spec, int n, uint8_t *flags) {
    memset(flags, !strcmp(spec, "all"), n);
    if (!strcmp(spec, "all")) return;
    int *list, count;
    ra_error err = {0};
    if (ra_parse_layer_list(spec, n, &list, &count, &err)) ra_usage_error("%s", err.msg);
    for (int i = 0; i < count; i++) flags[list[i]] = 1;
    free(list);
}

static int micro_step(void *ctx, const ra_train_batch *b, float dloss, double *loss, ra_error *err) {
    return ra_stage1_loss(ctx, b->tokens, b->doc_start, b->B, b->T, dloss, 1, loss, err);
}

static int eval_step(void *ctx, const ra_train_batch *b, double *loss, ra_error *err) {
    return ra_stage1_loss(ctx, b->tokens, b->doc_start, b->B, b->T, 1.0f, 0, loss, err);
}

int main(int argc, char **argv) {
    ra_cli_init(argc, argv, "ra-mohawk1", usage);
    m1_args a;
    parse_args(argc, argv, &a);
    ra_error err = {0};
    if (!strcmp(a.t.out, "-") && ra_check_binary_stdout(&err)) ra_die_error(&err);
    int cuda = a.t.device == RA_DEVICE_CUDA;

    ra_model *t, *s;
    if (ra_model_load(a.teacher, &t, &err)) ra_die_error(&err);
    if (ra_model_load(a.student, &s, &err)) ra_die_error(&err);
    snprintf(t->source, sizeof t->source, "%s", a.teacher);
    snprintf(s->source, sizeof s->source, "%s", a.student);
    uint8_t *layers = xcalloc(s->cfg.num_layers, 1);
    parse_layers(a.layers, s->cfg.num_layers, layers);

    /* On cuda the CPU stage, made for rows of 1 token, only registers the
     * parameters; the device stage trains. */
    int64_t max_bytes = (int64_t)(a.max_gb * 1e9);
    ra_stage1 *st;
    if (ra_stage1_create(t, s, layers, cuda ? 1 : a.t.seq_len, max_bytes, &st, &err)) ra_die_error(&err);
    ra_optim *optim = ra_optim_create(NULL);
    if (ra_stage1_register(st, optim, &err)) ra_die_error(&err);

    int n_trained = ra_stage1_n_layers(st), *trained_layers = xmalloc((size_t)n_trained * sizeof(int));
    json_t *trained = json_array();
    for (int i = 0; i < n_trained; i++) {
        trained_layers[i] = ra_stage1_layer(st, i);
        json_array_append_new(trained, json_integer(trained_layers[i]));
    }
    json_t *run = json_pack("{s:s, s:s, s:O}", "teacher", t->content_id, "student", s->content_id, "layers", trained);
    ra_train_stage stage = {.name = "stage1",
                            .ctx = st,
                            .optim = optim,
                            .run = run,
                            .vocab_size = t->cfg.vocab_size,
                            .micro_step = micro_step,
                            .eval = eval_step};
    ra_stage1_device *dev = NULL;
    if (cuda && ra_stage1_device_create(&dev, &stage, t, s, trained_layers, n_trained, optim, a.t.batch, a.t.seq_len,
                                        max_bytes, &err))
        ra_die_error(&err);
    ra_train_result res;
    int rc = ra_train_run("ra-mohawk1", &a.t, &stage, &res, &err);
    if (cuda) /* for benchmarks (man page: peak device memory) */
        fprintf(stderr, "peak_device_bytes=%zu\n", ra_stage1_device_peak_bytes(dev));
    if (rc) ra_die_error(&err);

    json_t *params = ra_train_params_json(&a.t);
    json_object_set(params, "layers", trained);
    json_object_set_new(params, "dtype", json_string(ra_dtype_name(a.dtype)));
    json_t *prov = json_pack("{s:s, s:s, s:s, s:O, s:{s:s, s:s, s:s, s:s?}}", "tool", "ra-mohawk1", "version",
                             RA_VERSION, "stage", "stage1", "parameters", params, "inputs", "teacher", t->content_id,
                             "student", s->content_id, "data", res.data_id, "heldout",
                             res.heldout_id[0] ? res.heldout_id : NULL);
    char id[RA_CONTENT_ID_LEN + 1];
    if (ra_model_write_stream(s, a.t.out, a.dtype, prov, id, &err)) ra_die_error(&err);
    if (!a.t.quiet)
        fprintf(stderr, "ra-mohawk1: %lld steps, %lld tokens, last loss %.6g; wrote %s (%s)\n", (long long)res.steps,
                (long long)res.tokens, res.last_loss, a.t.out, id);
    json_decref(prov);
    json_decref(params);
    json_decref(run);
    json_decref(trained);
    ra_optim_free(optim);
    ra_stage1_device_free(dev);
    ra_stage1_free(st);
    free(trained_layers);
    free(layers);
    ra_model_free(s);
    ra_model_free(t);
    return 0;
}
