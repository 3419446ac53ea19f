/* ra-eval: evaluate a teacher or student model (DESIGN §2.6).
 *
 * Each --task is one function over a loaded model and a forward backend; the
 * tasks table at the bottom is where kv, ppl, kd, mem and speed plug in.
 * Only --task logits exists so far. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atomic_file.h"
#include "cli.h"
#include "forward.h"
#include "model.h"
#include "stream.h"
#include "tokens.h"

static const char usage[] =
    "usage: ra-eval -m MODEL --task TASK [options]\n"
    "Evaluate a model.  Results go to stdout (a ra stream of kind results) or -o FILE.\n"
    "\n"
    "  -m, --model PATH      Hugging Face model directory or model ra stream ('-' = stdin)\n"
    "      --task TASK       logits: logits at every position of every document\n"
    "  -d, --data TOKENS     tokens ra stream, documents layout ('-' = stdin)\n"
    "      --ablate L:H,...  zero these query heads (layer:head, 0-based) before o_proj\n"
    "      --device DEV      cpu or cuda (default: cuda when available, else cpu)\n"
    "  -o, --output FILE     write the results here instead of stdout\n"
    "  -q, --quiet           no progress on stderr\n"
    "  -h, --help            this help\n"
    "      --version         version\n"
    "\n"
    "Exit status: 0 ok, 64 usage, 65 bad data, 66 missing input, 69 device unavailable,\n"
    "70 internal error, 74 I/O error.\n";

typedef struct ablation {
    int layer, head;
} ablation;

typedef struct eval_args {
    const char *model, *task, *data, *output;
    const char *ablate_text;
    int n_ablate;
    ablation *ablate;
    int device_given;
    ra_device device;
} eval_args;

/* What every task gets: the parsed flags, the model, the backend and the
 * head mask of the ablations ([layers × H], NULL without --ablate). */
typedef struct eval_ctx {
    const eval_args *args;
    ra_model *m;
    const ra_forward_backend *backend;
    ra_device device;
    uint8_t *head_keep;
} eval_ctx;

/* ------------------------------------------------------------- flags */

static void parse_ablate(eval_args *a, const char *text) {
    a->ablate_text = text;
    char *copy = xstrdup(text);
    for (char *item = copy, *next; item; item = next) {
        next = strchr(item, ',');
        if (next) *next++ = 0;
        char *colon = strchr(item, ':');
        if (!colon) ra_usage_error("--ablate: '%s' is not LAYER:HEAD", item);
        *colon = 0;
        a->ablate = xrealloc(a->ablate, (size_t)(a->n_ablate + 1) * sizeof *a->ablate);
        a->ablate[a->n_ablate].layer = (int)ra_parse_int("--ablate layer", item, 0, 1 << 20);
        a->ablate[a->n_ablate].head = (int)ra_parse_int("--ablate head", colon + 1, 0, 1 << 20);
        a->n_ablate++;
    }
    free(copy);
}

static void parse_args(int argc, char **argv, eval_args *a) {
    enum { OPT_TASK = 256, OPT_ABLATE, OPT_DEVICE };
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'},     {"task", required_argument, 0, OPT_TASK},
        {"data", required_argument, 0, 'd'},      {"ablate", required_argument, 0, OPT_ABLATE},
        {"device", required_argument, 0, OPT_DEVICE}, {"output", required_argument, 0, 'o'},
        {"quiet", no_argument, 0, 'q'},           {0, 0, 0, 0},
    };
    memset(a, 0, sizeof *a);
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "m:d:o:q", longopts, NULL)) != -1) {
        switch (c) {
        case 'm': a->model = optarg; break;
        case 'd': a->data = optarg; break;
        case 'o': a->output = optarg; break;
        case 'q': ra_progress_quiet = 1; break;
        case OPT_TASK: a->task = optarg; break;
        case OPT_ABLATE: parse_ablate(a, optarg); break;
        case OPT_DEVICE:
            if (ra_device_parse(optarg, &a->device)) ra_usage_error("--device: '%s', expected cpu or cuda", optarg);
            a->device_given = 1;
            break;
        default:
            if (optopt) ra_usage_error("option -%c: missing argument or unknown", optopt);
            ra_usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) ra_usage_error("unexpected argument '%s'", argv[optind]);
    if (!a->model) ra_usage_error("no model: give -m MODEL");
    if (!a->task) ra_usage_error("no task: give --task logits");
    if (a->data && a->model && strcmp(a->data, "-") == 0 && strcmp(a->model, "-") == 0)
        ra_usage_error("-m and -d cannot both read stdin");
}

/* --------------------------------------------------------- the tokens */

/* Load a documents-layout tokens stream whole (token ids are small next to
 * the logits they produce), so the results header can name its content id
 * and nothing is computed from a stream that turns out corrupt; check every
 * id against the model's vocabulary and refuse empty documents.  Longer than
 * the context the model was trained for is allowed, with a warning. */
static int load_documents(const char *path, const ra_model *m, ra_tokens *t, ra_error *err) {
    int rc = ra_tokens_load(path, t, err);
    if (rc) return rc;
    if (t->packed)
        rc = ra_fail(err, EX_DATAERR, "%s: layout 'packed', expected 'documents' (one sequence per document; "
                     "write it with ra-tok without --pack)", path);
    else
        rc = ra_tokens_validate(t, m->cfg.vocab_size, 1, err);
    if (rc) {
        ra_tokens_free(t);
        return rc;
    }
    int long_docs = 0;
    for (int64_t d = 0; d < t->n_docs; d++) {
        int64_t n;
        ra_tokens_doc(t, d, &n);
        if (n > (1 << 30)) {
            ra_tokens_free(t);
            return ra_fail(err, EX_DATAERR, "%s: doc/%lld has %lld tokens, more than one forward pass takes", path,
                           (long long)d, (long long)n);
        }
        if (n > m->cfg.max_position_embeddings && long_docs++ < 3)
            fprintf(stderr, "%s: warning: %s: doc/%lld has %lld tokens, more than max_position_embeddings %d; computing anyway\n",
                    ra_progname, path, (long long)d, (long long)n, m->cfg.max_position_embeddings);
    }
    if (long_docs > 3)
        fprintf(stderr, "%s: warning: %d documents in all exceed max_position_embeddings\n", ra_progname, long_docs);
    return 0;
}

/* ------------------------------------------------------------ results */

static json_t *ablate_json(const eval_args *a) {
    json_t *arr = json_array();
    for (int i = 0; i < a->n_ablate; i++) json_array_append_new(arr, json_pack("[ii]", a->ablate[i].layer, a->ablate[i].head));
    return arr;
}

/* Header of a results stream: meta says what the records are, provenance
 * how they were made (tool, version, canonical parameters, input ids). */
static ra_writer *open_results(const eval_ctx *c, json_t *meta, json_t *inputs, ra_error *err) {
    const eval_args *a = c->args;
    json_t *params = json_pack("{s:s, s:o, s:s}", "task", a->task, "ablate", ablate_json(a), "device",
                               ra_device_name(c->device));
    json_t *prov = json_pack("{s:s, s:s, s:o, s:o}", "tool", "ra-eval", "version", RA_VERSION, "parameters", params,
                             "inputs", inputs);
    json_object_set_new(meta, "task", json_string(a->task));
    json_object_set_new(meta, "model", json_string(c->m->content_id));
    json_object_set_new(meta, "device", json_string(ra_device_name(c->device)));
    json_object_set_new(meta, "ablate", ablate_json(a));
    ra_writer *w = ra_writer_open(a->output ? a->output : "-", "results", meta, prov, err);
    json_decref(meta);
    json_decref(prov);
    return w;
}

/* -------------------------------------------------------------- tasks */

/* --task logits: one f32 tensor logits/<i> [T_i, vocab] per document i,
 * each document its own sequence (positions from 0). */
static int task_logits(eval_ctx *c, ra_error *err) {
    const eval_args *a = c->args;
    if (!a->data) ra_usage_error("--task logits needs -d TOKENS");
    ra_tokens tk;
    int rc = load_documents(a->data, c->m, &tk, err);
    if (rc) return rc;
    int64_t T_max = 0;
    for (int64_t d = 0; d < tk.n_docs; d++) {
        int64_t n;
        ra_tokens_doc(&tk, d, &n);
        if (n > T_max) T_max = n;
    }
    int V = c->m->cfg.vocab_size;
    json_t *meta = json_pack("{s:I, s:i, s:s}", "documents", (json_int_t)tk.n_docs, "vocab_size", V, "tokens",
                             tk.content_id);
    json_t *inputs = json_pack("{s:s, s:s}", "model", c->m->content_id, "tokens", tk.content_id);
    ra_writer *w = open_results(c, meta, inputs, err);
    if (!w) {
        ra_tokens_free(&tk);
        return err->code ? err->code : EX_IOERR;
    }
    void *state = NULL;
    rc = c->backend->create(c->m, 1, (int)T_max, &state, err);
    float *logits = rc ? NULL : xmalloc((size_t)T_max * V * sizeof(float));
    ra_progress p;
    ra_progress_start(&p, "logits", "tok", tk.n_tokens);
    int64_t done = 0;
    for (int64_t d = 0; d < tk.n_docs && !rc; d++) {
        int64_t n;
        const int32_t *ids = ra_tokens_doc(&tk, d, &n);
        ra_forward_opts o = {0};
        o.head_keep = c->head_keep;
        o.logits = logits;
        if ((rc = c->backend->run(state, ids, 1, (int)n, &o, err))) {
            ra_error_prefix(err, "%s: doc/%lld", a->data, (long long)d);
            break;
        }
        char name[64];
        snprintf(name, sizeof name, "logits/%lld", (long long)d);
        int64_t shape[2] = {n, V};
        rc = ra_writer_tensor(w, name, RA_F32, 2, shape, logits, err);
        ra_progress_update(&p, done += n);
    }
    if (state) c->backend->destroy(state);
    free(logits);
    ra_tokens_free(&tk);
    if (rc) {
        ra_writer_abort(w);
        return rc;
    }
    ra_progress_finish(&p, done);
    return ra_writer_close(w, NULL, err);
}

typedef struct eval_task {
    const char *name;
    int (*run)(eval_ctx *c, ra_error *err);
} eval_task;

static const eval_task tasks[] = {
    {"logits", task_logits},
};

/* --------------------------------------------------------------- main */

/* The head mask of --ablate, validated against the model. */
static uint8_t *ablation_mask(const eval_args *a, const ra_model *m) {
    if (!a->n_ablate) return NULL;
    int L = m->cfg.num_layers, H = m->cfg.num_heads;
    uint8_t *keep = xmalloc((size_t)L * H);
    memset(keep, 1, (size_t)L * H);
    for (int i = 0; i < a->n_ablate; i++) {
        ablation x = a->ablate[i];
        if (x.layer >= L || x.head >= H)
            ra_usage_error("--ablate %d:%d: the model has layers 0..%d and heads 0..%d", x.layer, x.head, L - 1, H - 1);
        keep[(size_t)x.layer * H + x.head] = 0;
    }
    return keep;
}

int main(int argc, char **argv) {
    ra_cli_init(argc, argv, "ra-eval", usage);
    eval_args a;
    parse_args(argc, argv, &a);
    const eval_task *task = NULL;
    for (size_t i = 0; i < sizeof tasks / sizeof tasks[0]; i++)
        if (strcmp(tasks[i].name, a.task) == 0) task = &tasks[i];
    if (!task) ra_usage_error("--task '%s': expected logits", a.task);

    ra_error err = {0};
    if ((!a.output || strcmp(a.output, "-") == 0) && ra_check_binary_stdout(&err)) ra_die_error(&err);

    /* The device first: asking for a GPU that is not there fails before the
     * (possibly long) model load. */
    eval_ctx c = {.args = &a};
    c.device = a.device_given ? a.device : RA_DEVICE_CUDA;
    if (ra_forward_backend_get(c.device, &c.backend, &err)) {
        if (a.device_given) ra_die_error(&err);
        c.device = RA_DEVICE_CPU; /* default: cuda when available, else cpu */
        if (ra_forward_backend_get(c.device, &c.backend, &err)) ra_die_error(&err);
    }

    if (ra_model_load(a.model, &c.m, &err)) ra_die_error(&err);
    if (c.m->warning[0]) fprintf(stderr, "%s: warning: %s\n", ra_progname, c.m->warning);
    c.head_keep = ablation_mask(&a, c.m);

    int rc = task->run(&c, &err);
    free(c.head_keep);
    free(a.ablate);
    ra_model_free(c.m);
    if (rc) ra_die_error(&err);
    return 0;
}
