/* ra-mohawk2: MOHAWK stage 2, hidden-state alignment of a hybrid student's
 * layers to the teacher's (DESIGN §2.5), on the shared training driver
 * (lib/train_run.h) with lib/stage2.h.  Writes only the trained layers;
 * ra-merge overlays the parts on the student. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atomic_file.h"
#include "cli.h"
#include "hybrid.h"
#include "model.h"
#include "stage2.h"
#include "train_run.h"

#define STAGE2_DEFAULT_LR 1e-4

static const char usage[] =
    "Usage: ra-mohawk2 -m TEACHER -s STUDENT -d TOKENS [--layers SPEC] [options] > part.ra\n"
    "MOHAWK stage 2: train each listed layer of STUDENT (run on the teacher's hidden\n"
    "state entering it) to produce the teacher's hidden state leaving it; loss per\n"
    "layer = mean over tokens of the L2 norm of the difference, summed over layers.\n"
    "Writes a model stream holding only the listed layers (the student's meta);\n"
    "`ra-merge STUDENT part...` puts them back into the whole student.\n"
    "\n"
    "  -m TEACHER         teacher (Hugging Face directory or model stream)\n"
    "  -s STUDENT         hybrid student made from TEACHER (ra-graft, or a later stage)\n"
    "  --layers SPEC      layers to train: 3, 0-15, 1,4-6 (default: all)\n"
    "  --train WHAT       block (norms, mixer, MLP; default) or mixer\n"
    "  --dtype D          output dtype f32, bf16 or f16 (default: the student's)\n"
    "\n" RA_TRAIN_USAGE
    "  (--lr default 1e-4)\n"
    "\n"
    "Environment: RA_TEST_NAN_AT_STEP=N poisons a gradient at step N (test hook).\n"
    "Exit status: 0 ok, 64 usage, 65 bad or mismatched input, 66 missing input,\n"
    "69 --device cuda unavailable (no CUDA build or GPU, unsupported shape), 70 internal error or diverged (NaN/Inf), 73/74 I/O.\n";

typedef struct args {
    ra_train_opts t;
    const char *teacher, *student, *layers;
    int mixer_only;
    int dtype_given;
    ra_dtype dtype;
} args;

static void parse_args(int argc, char **argv, args *a) {
    memset(a, 0, sizeof *a);
    ra_train_opts_init(&a->t, STAGE2_DEFAULT_LR);
    for (int i = 1; i < argc; i++) {
        if (ra_train_parse_flag(&a->t, argc, argv, &i)) continue;
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (f[0] != '-' || !f[1]) ra_usage_error("unexpected argument '%s'", f);
        if (!v) {
            if (!strcmp(f, "-m") || !strcmp(f, "-s") || !strcmp(f, "--layers") || !strcmp(f, "--train") ||
                !strcmp(f, "--dtype"))
                ra_usage_error("%s: missing value", f);
            ra_usage_error("unknown option '%s'", f);
        }
        if (!strcmp(f, "-m")) a->teacher = v;
        else if (!strcmp(f, "-s")) a->student = v;
        else if (!strcmp(f, "--layers")) a->layers = v;
        else if (!strcmp(f, "--train")) {
            if (!strcmp(v, "block")) a->mixer_only = 0;
            else if (!strcmp(v, "mixer")) a->mixer_only = 1;
            else ra_usage_error("--train: '%s', expected block or mixer", v);
        } else if (!strcmp(f, "--dtype")) {
            if (ra_dtype_parse(v, &a->dtype) || !(a->dtype == RA_F32 || a->dtype == RA_BF16 || a->dtype == RA_F16))
                ra_usage_error("--dtype: '%s', expected f32, bf16 or f16", v);
            a->dtype_given = 1;
        } else ra_usage_error("unknown option '%s'", f);
        i++;
    }
    if (!a->teacher || !a->student) ra_usage_error("need -m TEACHER and -s STUDENT");
    ra_train_opts_check(&a->t);
}

static json_t *layers_json(const int *layers, int n) {
    json_t *j = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(j, json_integer(layers[i]));
    return j;
}

int main(int argc, char **argv) {
    ra_cli_init(argc, argv, "ra-mohawk2", usage);
    args a;
    parse_args(argc, argv, &a);
    ra_error err = {0};
    if (!strcmp(a.t.out, "-") && ra_check_binary_stdout(&err)) ra_die_error(&err);
    int cuda = a.t.device == RA_DEVICE_CUDA;

    ra_model *teacher, *student;
    if (ra_model_load(a.teacher, &teacher, &err)) ra_die_error(&err);
    if (ra_model_load(a.student, &student, &err)) ra_die_error(&err);
    if (ra_stage2_check_pair(teacher, student, &err)) ra_die_error(&err);
    if (!a.dtype_given && ra_model_stream_dtype(a.student, &a.dtype, &err)) ra_die_error(&err);

    int *layers, n_layers;
    if (a.layers) {
        if (ra_parse_layer_list(a.layers, student->cfg.num_layers, &layers, &n_layers, &err))
            ra_usage_error("%s", err.msg);
    } else {
        n_layers = student->cfg.num_layers;
        layers = xmalloc((size_t)n_layers * sizeof *layers);
        for (int l = 0; l < n_layers; l++) layers[l] = l;
    }

    /* On cuda the CPU stage, made for a 1 x 1 batch, only registers the
     * parameters and writes the output; the device stage trains. */
    ra_stage2 *s;
    if (ra_stage2_create(teacher, student, layers, n_layers, a.mixer_only, cuda ? 1 : a.t.batch,
                         cuda ? 1 : a.t.seq_len, &s, &err))
        ra_die_error(&err);
    ra_optim *optim = ra_optim_create(NULL);
    if (ra_stage2_register(s, optim, &err)) ra_die_error(&err);

    /* What makes this run this run: a checkpoint of another is refused. */
    json_t *run = json_pack("{s:s, s:s, s:o, s:s}", "teacher", teacher->content_id, "student", student->content_id,
                            "layers", layers_json(layers, n_layers), "train", a.mixer_only ? "mixer" : "block");
    ra_train_stage st = {.name = "stage2",
                         .ctx = s,
                         .optim = optim,
                         .run = run,
                         .vocab_size = teacher->cfg.vocab_size,
                         .micro_step = ra_stage2_micro_step,
                         .eval = ra_stage2_eval};
    ra_stage2_device *dev = NULL;
    if (cuda && ra_stage2_device_create(&dev, &st, teacher, student, layers, n_layers, optim, a.t.batch, a.t.seq_len,
                                        &err))
        ra_die_error(&err);
    ra_train_result res;
    int rc = ra_train_run("ra-mohawk2", &a.t, &st, &res, &err);
    if (cuda) /* for benchmarks (man page: peak device memory) */
        fprintf(stderr, "peak_device_bytes=%zu\n", ra_stage2_device_peak_bytes(dev));
    if (rc) ra_die_error(&err);

    json_t *params = ra_train_params_json(&a.t);
    json_object_set_new(params, "steps", json_integer(res.steps));
    json_object_set(params, "layers", json_object_get(run, "layers"));
    json_object_set_new(params, "train", json_string(a.mixer_only ? "mixer" : "block"));
    json_object_set_new(params, "dtype", json_string(ra_dtype_name(a.dtype)));
    json_t *inputs = json_pack("{s:s, s:s, s:s}", "teacher", teacher->content_id, "student", student->content_id,
                               "tokens", res.data_id);
    if (res.heldout_id[0]) json_object_set_new(inputs, "heldout", json_string(res.heldout_id));
    json_t *prov = json_pack("{s:s, s:s, s:o, s:o}", "tool", "ra-mohawk2", "version", RA_VERSION, "parameters", params,
                             "inputs", inputs);
    char id[RA_CONTENT_ID_LEN + 1];
    if (ra_stage2_write(s, a.t.out, a.dtype, prov, id, &err)) ra_die_error(&err);
    if (!ra_progress_quiet) {
        fprintf(stderr, "ra-mohawk2: %lld steps, %lld tokens, final loss %.6g", (long long)res.steps,
                (long long)res.tokens, res.last_loss);
        if (!isnan(res.last_eval_loss)) fprintf(stderr, ", eval loss %.6g", res.last_eval_loss);
        fprintf(stderr, "\nra-mohawk2: wrote layers %s of %d, content id %s\n", a.layers ? a.layers : "all",
                student->cfg.num_layers, id);
    }
    json_decref(prov);
    json_decref(run);
    ra_optim_free(optim);
    ra_stage2_device_free(dev);
    ra_stage2_free(s);
    free(layers);
    ra_model_free(student);
    ra_model_free(teacher);
    return 0;
}
