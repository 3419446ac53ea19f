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

typedef struct document {
    char index[32]; /* the <i> of doc/<i>, used for logits/<i> */
    int64_t len;
    int32_t *ids;
} document;

/* Read a documents-layout tokens stream whole (token ids are small next to
 * the logits they produce), so the results header can name its content id
 * and nothing is computed from a stream that turns out corrupt. */
static int read_documents(const char *path, document **docs_out, int *n_out, char *content_id, ra_error *err) {
    ra_reader *r = ra_reader_open(path, err);
    if (!r) return err->code ? err->code : EX_DATAERR;
    const char *name = ra_reader_name(r);
    int rc = 0, n = 0, more;
    document *docs = NULL;
    const json_t *layout = json_object_get(ra_reader_meta(r), "layout");
    if (strcmp(ra_reader_kind(r), "tokens") != 0)
        rc = ra_fail(err, EX_DATAERR, "%s: a '%s' stream, expected a tokens stream", name, ra_reader_kind(r));
    else if (layout && (!json_is_string(layout) || strcmp(json_string_value(layout), "documents") != 0))
        rc = ra_fail(err, EX_DATAERR, "%s: layout '%s', expected 'documents' (one record per document)", name,
                     json_is_string(layout) ? json_string_value(layout) : "?");
    ra_tensor_info info;
    while (!rc && (more = ra_reader_next(r, &info, err)) == 1) {
        if (strncmp(info.name, "doc/", 4) != 0) continue; /* other records are not documents */
        if (info.dtype != RA_I32 || info.ndim != 1) {
            rc = ra_fail(err, EX_DATAERR, "%s: tensor '%s': expected i32 with one dimension, got %s with %d", name,
                         info.name, ra_dtype_name(info.dtype), info.ndim);
            break;
        }
        if (info.shape[0] == 0) {
            rc = ra_fail(err, EX_DATAERR, "%s: document '%s' is empty", name, info.name);
            break;
        }
        if (info.shape[0] > (1 << 30)) {
            rc = ra_fail(err, EX_DATAERR, "%s: document '%s' has %lld tokens, more than one forward pass takes", name,
                         info.name, (long long)info.shape[0]);
            break;
        }
        docs = xrealloc(docs, (size_t)(n + 1) * sizeof *docs);
        document *d = &docs[n++];
        snprintf(d->index, sizeof d->index, "%.*s", (int)sizeof d->index - 1, info.name + 4);
        d->len = info.shape[0];
        d->ids = xmalloc(info.nbytes);
        rc = ra_reader_read(r, d->ids, info.nbytes, err);
    }
    if (!rc && more < 0) rc = err->code ? err->code : EX_DATAERR;
    if (!rc && n == 0) rc = ra_fail(err, EX_DATAERR, "%s: no documents (no doc/<i> records)", name);
    if (!rc) snprintf(content_id, RA_CONTENT_ID_LEN + 1, "%s", ra_reader_content_id(r));
    ra_reader_close(r);
    if (rc) {
        for (int i = 0; i < n; i++) free(docs[i].ids);
        free(docs);
        return rc;
    }
    *docs_out = docs;
    *n_out = n;
    return 0;
}

/* Token ids must index the model's vocabulary; longer than the context the
 * model was trained for is allowed, with a warning. */
static int check_documents(const document *docs, int n, const ra_model *m, const char *path, ra_error *err) {
    int long_docs = 0;
    for (int i = 0; i < n; i++) {
        for (int64_t t = 0; t < docs[i].len; t++)
            if (docs[i].ids[t] < 0 || docs[i].ids[t] >= m->cfg.vocab_size)
                return ra_fail(err, EX_DATAERR, "%s: document %s position %lld: token id %d outside the model's vocabulary (0..%d)",
                               path, docs[i].index, (long long)t, docs[i].ids[t], m->cfg.vocab_size - 1);
        if (docs[i].len > m->cfg.max_position_embeddings && long_docs++ < 3)
            fprintf(stderr, "%s: warning: %s: document %s has %lld tokens, more than max_position_embeddings %d; computing anyway\n",
                    ra_progname, path, docs[i].index, (long long)docs[i].len, m->cfg.max_position_embeddings);
    }
    if (long_docs > 3)
        fprintf(stderr, "%s: warning: %d documents in all exceed max_position_embeddings\n", ra_progname, long_docs);
    return 0;
}

static void free_documents(document *docs, int n) {
    for (int i = 0; i < n; i++) free(docs[i].ids);
    free(docs);
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
    document *docs;
    int n, rc;
    char tokens_id[RA_CONTENT_ID_LEN + 1];
    if ((rc = read_documents(a->data, &docs, &n, tokens_id, err))) return rc;
    if ((rc = check_documents(docs, n, c->m, a->data, err))) {
        free_documents(docs, n);
        return rc;
    }
    int64_t T_max = 0, total = 0;
    for (int i = 0; i < n; i++) {
        if (docs[i].len > T_max) T_max = docs[i].len;
        total += docs[i].len;
    }
    int V = c->m->cfg.vocab_size;
    json_t *meta = json_pack("{s:i, s:i, s:s}", "documents", n, "vocab_size", V, "tokens", tokens_id);
    json_t *inputs = json_pack("{s:s, s:s}", "model", c->m->content_id, "tokens", tokens_id);
    ra_writer *w = open_results(c, meta, inputs, err);
    if (!w) {
        free_documents(docs, n);
        return err->code ? err->code : EX_IOERR;
    }
    void *state = NULL;
    rc = c->backend->create(c->m, 1, (int)T_max, &state, err);
    float *logits = rc ? NULL : xmalloc((size_t)T_max * V * sizeof(float));
    ra_progress p;
    ra_progress_start(&p, "logits", "tok", total);
    int64_t done = 0;
    for (int i = 0; i < n && !rc; i++) {
        ra_forward_opts o = {0};
        o.head_keep = c->head_keep;
        o.logits = logits;
        if ((rc = c->backend->run(state, docs[i].ids, 1, (int)docs[i].len, &o, err))) {
            ra_error_prefix(err, "%s: document %s", a->data, docs[i].index);
            break;
        }
        char name[64];
        snprintf(name, sizeof name, "logits/%s", docs[i].index);
        int64_t shape[2] = {docs[i].len, V};
        rc = ra_writer_tensor(w, name, RA_F32, 2, shape, logits, err);
        ra_progress_update(&p, done += docs[i].len);
    }
    if (state) c->backend->destroy(state);
    free(logits);
    free_documents(docs, n);
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
