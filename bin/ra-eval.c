/* ra-eval: evaluate a teacher or hybrid student (DESIGN §2.6).
 *
 * Parses the flags, loads the model(s), tokenizer and data, runs each task
 * of --task through lib/eval_*.c, then writes the results: a results stream
 * (-o) and a Markdown table or JSON object on stdout.  --task logits is the
 * exception: it writes its stream to stdout or -o and runs alone. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "atomic_file.h"
#include "cli.h"
#include "eval.h"
#include "decode_backend.h"
#include "eval_gen.h"
#include "eval_kv.h"
#include "eval_lm.h"
#include "eval_mc.h"
#include "eval_mem.h"
#include "eval_plot.h"
#include "eval_results.h"
#include "eval_speed.h"
#include "forward.h"
#include "model.h"
#include "stream.h"
#include "tokenizer.h"
#include "tokens.h"

static const char usage[] =
    "usage: ra-eval -m MODEL --task LIST [options]\n"
    "       ra-eval --plot-log LOG[,LOG...] --plot DIR\n"
    "Evaluate a teacher or hybrid student.  Results: a Markdown table (or JSON) on\n"
    "stdout and, with -o FILE, a results ra stream; --task logits writes its stream\n"
    "to stdout or -o FILE.\n"
    "\n"
    "  -m, --model PATH      Hugging Face model directory or model ra stream ('-' = stdin)\n"
    "      --teacher PATH    the teacher, for coverage (kv), KL (kd) and comparisons\n"
    "      --task LIST       comma-separated tasks:\n"
    "                          kv        KV retrieval accuracy (and coverage with --teacher)\n"
    "                          ppl       perplexity on -d TOKENS\n"
    "                          kd        mean KL(teacher || model) per token on -d TOKENS\n"
    "                          mc:FILE   multiple-choice JSONL: acc and acc_norm\n"
    "                          gen:FILE  greedy generation JSONL: contains and exact match\n"
    "                          mem       decode-state bytes per sequence\n"
    "                          speed     prefill / decode tokens/s over a batch sweep\n"
    "                          logits    logits of every document of -d TOKENS (alone)\n"
    "  -d, --data TOKENS     tokens ra stream, documents layout ('-' = stdin)\n"
    "      --tokenizer PATH  tokenizer.json or its directory (default: the model's or\n"
    "                        the teacher's directory)\n"
    "      --ablate L:H,...  zero these query heads (layer:head, 0-based) in every task\n"
    "      --device DEV      cpu or cuda (default: cuda when available, else cpu)\n"
    "      --format FMT      table (Markdown, default) or json (flat object of metrics)\n"
    "  -o, --output FILE     write the results stream here\n"
    "      --batch N         rows per forward call / prompts per decode batch (default 16 on\n"
    "                        cpu, 64 on cuda; ppl/kd: 1 on cpu, 8 on cuda)\n"
    "  kv:  --pairs LIST (10,20,30,40,50)  --samples N (256)  --seed S (1000003)\n"
    "       --words FILE (/usr/share/dict/words)  --score choice|last-token|both (both)\n"
    "  ppl, kd: --ctx N  window length (default min(max_position_embeddings, 2048))\n"
    "  gen: --max-new-tokens N (32)  --until STR (stop string, default newline; '' = none)\n"
    "  mem: --lengths LIST (128,2048,4096)  --state-dtype bf16|f16|f32 (bf16)\n"
    "  speed: --prompt-len N (128)  --gen-len N (32)  --max-batch N (8 on cpu, 1024 on cuda)\n"
    "      --plot DIR        draw PNG plots into DIR with gnuplot\n"
    "      --plot-log LIST   training logs (TSV with step and loss columns) for --plot\n"
    "  -q, --quiet           no progress on stderr\n"
    "  -h, --help            this help\n"
    "      --version         version\n"
    "\n"
    "Exit status: 0 ok, 64 usage, 65 bad data, 66 missing input, 69 device or gnuplot\n"
    "unavailable, 70 internal error, 74 I/O error.\n";

typedef struct ablation {
    int layer, head;
} ablation;

enum { T_LOGITS, T_KV, T_PPL, T_KD, T_MC, T_GEN, T_MEM, T_SPEED };
static const char *task_names[] = {"logits", "kv", "ppl", "kd", "mc", "gen", "mem", "speed"};

typedef struct task_ref {
    int kind;
    const char *file; /* mc / gen */
} task_ref;

typedef struct eval_args {
    const char *model, *teacher, *task, *data, *output, *tokenizer, *words, *plot, *until;
    const char *ablate_text;
    char *task_copy; /* --task split in place; the task files point into it */
    int n_ablate;
    ablation *ablate;
    int n_tasks;
    task_ref *tasks;
    int device_given;
    ra_device device;
    eval_format format;
    int batch, samples, score_modes, ctx, max_new, prompt_len, gen_len, max_batch, value_bytes;
    uint64_t seed;
    int n_pairs, *pairs;
    int n_lengths;
    int64_t *lengths;
    int n_logs;
    char **logs;
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

/* A comma-separated list of integers in [lo, hi]. */
static int parse_int_list(const char *flag, const char *text, long long lo, long long hi, int64_t **out) {
    char *copy = xstrdup(text);
    int n = 0;
    *out = NULL;
    for (char *item = copy, *next; item; item = next) {
        next = strchr(item, ',');
        if (next) *next++ = 0;
        *out = xrealloc(*out, (size_t)(n + 1) * sizeof **out);
        (*out)[n++] = ra_parse_int(flag, item, lo, hi);
    }
    free(copy);
    return n;
}

static void parse_tasks(eval_args *a, const char *text) {
    a->task = text;
    free(a->task_copy);
    a->n_tasks = 0;
    char *copy = a->task_copy = xstrdup(text);
    for (char *item = copy, *next; item; item = next) {
        next = strchr(item, ',');
        if (next) *next++ = 0;
        task_ref t = {-1, NULL};
        char *colon = strchr(item, ':');
        if (colon) *colon = 0;
        for (int k = 0; k < (int)(sizeof task_names / sizeof *task_names); k++)
            if (!strcmp(item, task_names[k])) t.kind = k;
        if (t.kind < 0)
            ra_usage_error("--task '%s': expected logits, kv, ppl, kd, mc:FILE, gen:FILE, mem or speed", item);
        if ((t.kind == T_MC || t.kind == T_GEN) != (colon != NULL) || (colon && !colon[1]))
            ra_usage_error(t.kind == T_MC || t.kind == T_GEN ? "--task %s needs a file: %s:FILE.jsonl"
                                                             : "--task %s takes no file", item, item);
        if (colon) t.file = colon + 1;
        a->tasks = xrealloc(a->tasks, (size_t)(a->n_tasks + 1) * sizeof *a->tasks);
        a->tasks[a->n_tasks++] = t;
    }
}

static int has_task(const eval_args *a, int kind) {
    for (int i = 0; i < a->n_tasks; i++)
        if (a->tasks[i].kind == kind) return 1;
    return 0;
}

static void parse_args(int argc, char **argv, eval_args *a) {
    enum {
        OPT_TASK = 256, OPT_ABLATE, OPT_DEVICE, OPT_TEACHER, OPT_TOKENIZER, OPT_FORMAT, OPT_BATCH, OPT_PAIRS,
        OPT_SAMPLES, OPT_SEED, OPT_WORDS, OPT_SCORE, OPT_CTX, OPT_MAX_NEW, OPT_UNTIL, OPT_LENGTHS, OPT_STATE_DTYPE,
        OPT_PROMPT_LEN, OPT_GEN_LEN, OPT_MAX_BATCH, OPT_PLOT, OPT_PLOT_LOG,
    };
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'},         {"task", required_argument, 0, OPT_TASK},
        {"data", required_argument, 0, 'd'},          {"ablate", required_argument, 0, OPT_ABLATE},
        {"device", required_argument, 0, OPT_DEVICE}, {"output", required_argument, 0, 'o'},
        {"quiet", no_argument, 0, 'q'},               {"teacher", required_argument, 0, OPT_TEACHER},
        {"tokenizer", required_argument, 0, OPT_TOKENIZER}, {"format", required_argument, 0, OPT_FORMAT},
        {"batch", required_argument, 0, OPT_BATCH},   {"pairs", required_argument, 0, OPT_PAIRS},
        {"samples", required_argument, 0, OPT_SAMPLES}, {"seed", required_argument, 0, OPT_SEED},
        {"words", required_argument, 0, OPT_WORDS},   {"score", required_argument, 0, OPT_SCORE},
        {"ctx", required_argument, 0, OPT_CTX},       {"max-new-tokens", required_argument, 0, OPT_MAX_NEW},
        {"until", required_argument, 0, OPT_UNTIL},   {"lengths", required_argument, 0, OPT_LENGTHS},
        {"state-dtype", required_argument, 0, OPT_STATE_DTYPE}, {"prompt-len", required_argument, 0, OPT_PROMPT_LEN},
        {"gen-len", required_argument, 0, OPT_GEN_LEN}, {"max-batch", required_argument, 0, OPT_MAX_BATCH},
        {"plot", required_argument, 0, OPT_PLOT},     {"plot-log", required_argument, 0, OPT_PLOT_LOG},
        {0, 0, 0, 0},
    };
    memset(a, 0, sizeof *a);
    a->words = PROBE_DEFAULT_WORDS;
    a->samples = 256;
    a->seed = EVAL_KV_DEFAULT_SEED;
    a->score_modes = 3;
    a->max_new = 32;
    a->until = "\n";
    a->prompt_len = 128;
    a->gen_len = 32;
    a->value_bytes = 2;
    int64_t *list;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "m:d:o:q", longopts, NULL)) != -1) {
        switch (c) {
        case 'm': a->model = optarg; break;
        case 'd': a->data = optarg; break;
        case 'o': a->output = optarg; break;
        case 'q': ra_progress_quiet = 1; break;
        case OPT_TASK: parse_tasks(a, optarg); break;
        case OPT_ABLATE: parse_ablate(a, optarg); break;
        case OPT_DEVICE:
            if (ra_device_parse(optarg, &a->device)) ra_usage_error("--device: '%s', expected cpu or cuda", optarg);
            a->device_given = 1;
            break;
        case OPT_TEACHER: a->teacher = optarg; break;
        case OPT_TOKENIZER: a->tokenizer = optarg; break;
        case OPT_FORMAT:
            if (!strcmp(optarg, "table")) a->format = EVAL_FORMAT_TABLE;
            else if (!strcmp(optarg, "json")) a->format = EVAL_FORMAT_JSON;
            else ra_usage_error("--format: '%s', expected table or json", optarg);
            break;
        case OPT_BATCH: a->batch = (int)ra_parse_int("--batch", optarg, 1, 1 << 20); break;
        case OPT_PAIRS:
            free(a->pairs);
            a->n_pairs = parse_int_list("--pairs", optarg, 1, PROBE_MAX_PAIRS, &list);
            a->pairs = xmalloc((size_t)a->n_pairs * sizeof(int));
            for (int i = 0; i < a->n_pairs; i++) a->pairs[i] = (int)list[i];
            free(list);
            break;
        case OPT_SAMPLES: a->samples = (int)ra_parse_int("--samples", optarg, 1, 1 << 24); break;
        case OPT_SEED: a->seed = (uint64_t)ra_parse_int("--seed", optarg, 0, INT64_MAX); break;
        case OPT_WORDS: a->words = optarg; break;
        case OPT_SCORE:
            if (!strcmp(optarg, "choice")) a->score_modes = 1 << PROBE_SCORE_CHOICE;
            else if (!strcmp(optarg, "last-token")) a->score_modes = 1 << PROBE_SCORE_LAST_TOKEN;
            else if (!strcmp(optarg, "both")) a->score_modes = 3;
            else ra_usage_error("--score: '%s', expected choice, last-token or both", optarg);
            break;
        case OPT_CTX: a->ctx = (int)ra_parse_int("--ctx", optarg, 2, 1 << 24); break;
        case OPT_MAX_NEW: a->max_new = (int)ra_parse_int("--max-new-tokens", optarg, 1, 1 << 20); break;
        case OPT_UNTIL: a->until = optarg; break;
        case OPT_LENGTHS:
            free(a->lengths);
            a->n_lengths = parse_int_list("--lengths", optarg, 1, (long long)1 << 40, &a->lengths);
            break;
        case OPT_STATE_DTYPE:
            if (!strcmp(optarg, "bf16") || !strcmp(optarg, "f16")) a->value_bytes = 2;
            else if (!strcmp(optarg, "f32")) a->value_bytes = 4;
            else ra_usage_error("--state-dtype: '%s', expected bf16, f16 or f32", optarg);
            break;
        case OPT_PROMPT_LEN: a->prompt_len = (int)ra_parse_int("--prompt-len", optarg, 1, 1 << 24); break;
        case OPT_GEN_LEN: a->gen_len = (int)ra_parse_int("--gen-len", optarg, 0, 1 << 24); break;
        case OPT_MAX_BATCH: a->max_batch = (int)ra_parse_int("--max-batch", optarg, 1, 1 << 20); break;
        case OPT_PLOT: a->plot = optarg; break;
        case OPT_PLOT_LOG: {
            char *copy = xstrdup(optarg);
            for (char *item = copy, *next; item; item = next) {
                next = strchr(item, ',');
                if (next) *next++ = 0;
                if (!*item) ra_usage_error("--plot-log: an empty file name in '%s'", optarg);
                a->logs = xrealloc(a->logs, (size_t)(a->n_logs + 1) * sizeof *a->logs);
                a->logs[a->n_logs++] = xstrdup(item);
            }
            free(copy);
            break;
        }
        default:
            if (optopt) ra_usage_error("option -%c: missing argument or unknown", optopt);
            ra_usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) ra_usage_error("unexpected argument '%s'", argv[optind]);
    if (a->n_logs && !a->plot) ra_usage_error("--plot-log needs --plot DIR");
    if (!a->task && a->n_logs) return; /* plotting logs only */
    if (!a->model) ra_usage_error("no model: give -m MODEL");
    if (!a->task) ra_usage_error("no task: give --task kv, ppl, kd, mc:FILE, gen:FILE, mem, speed or logits");
    if (has_task(a, T_LOGITS) && a->n_tasks > 1) ra_usage_error("--task logits runs alone");
    if (has_task(a, T_LOGITS) && !a->data) ra_usage_error("--task logits needs -d TOKENS");
    if ((has_task(a, T_PPL) || has_task(a, T_KD)) && !a->data)
        ra_usage_error("--task %s needs -d TOKENS (a held-out tokens stream)", has_task(a, T_PPL) ? "ppl" : "kd");
    if (has_task(a, T_KD) && !a->teacher) ra_usage_error("--task kd needs --teacher TEACHER");
    if (a->data && !strcmp(a->data, "-") && ((a->model && !strcmp(a->model, "-")) || (a->teacher && !strcmp(a->teacher, "-"))))
        ra_usage_error("-m, --teacher and -d: only one can read stdin");
    if (a->model && a->teacher && !strcmp(a->model, "-") && !strcmp(a->teacher, "-"))
        ra_usage_error("-m and --teacher cannot both read stdin");
    if (!a->n_pairs) {
        static int dflt[] = {10, 20, 30, 40, 50};
        a->n_pairs = 5;
        a->pairs = xmalloc(sizeof dflt);
        memcpy(a->pairs, dflt, sizeof dflt);
    }
    if (!a->n_lengths) {
        a->n_lengths = 3;
        a->lengths = xmalloc(3 * sizeof(int64_t));
        a->lengths[0] = 128, a->lengths[1] = 2048, a->lengths[2] = 4096;
    }
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
static json_t *results_meta(const eval_ctx *c, json_t *meta) {
    const eval_args *a = c->args;
    json_object_set_new(meta, "task", json_string(a->task));
    json_object_set_new(meta, "model", json_string(c->m->content_id));
    json_object_set_new(meta, "device", json_string(ra_device_name(c->device)));
    json_object_set_new(meta, "ablate", ablate_json(a));
    return meta;
}

static json_t *results_prov(const eval_ctx *c, json_t *params, json_t *inputs) {
    const eval_args *a = c->args;
    json_object_set_new(params, "task", json_string(a->task));
    json_object_set_new(params, "ablate", ablate_json(a));
    json_object_set_new(params, "device", json_string(ra_device_name(c->device)));
    return json_pack("{s:s, s:s, s:o, s:o}", "tool", "ra-eval", "version", RA_VERSION, "parameters", params, "inputs",
                     inputs);
}

static ra_writer *open_results(const eval_ctx *c, json_t *meta, json_t *inputs, ra_error *err) {
    const eval_args *a = c->args;
    results_meta(c, meta);
    json_t *prov = results_prov(c, json_object(), inputs);
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

/* ------------------------------------------------------ the other tasks */

/* The tokenizer: --tokenizer, else the model's directory, else the
 * teacher's. */
static ra_tokenizer *load_tokenizer(const eval_args *a, ra_error *err) {
    const char *cands[2] = {a->model, a->teacher};
    const char *path = a->tokenizer;
    struct stat st;
    for (int i = 0; i < 2 && !path; i++)
        if (cands[i] && stat(cands[i], &st) == 0 && S_ISDIR(st.st_mode)) path = cands[i];
    if (!path) {
        ra_fail(err, EX_NOINPUT, "%s: no tokenizer.json beside a model stream; give --tokenizer DIR|tokenizer.json",
                a->model);
        return NULL;
    }
    ra_tokenizer *tok;
    if (ra_tokenizer_load(path, &tok, err)) return NULL;
    return tok;
}

/* Parameters of the tasks run, for the header and the provenance. */
static json_t *task_params(const eval_args *a, const ra_tokens *tk, int ctx, int batch, int max_batch) {
    json_t *p = json_object();
    if (has_task(a, T_KV)) {
        json_t *pairs = json_array();
        for (int i = 0; i < a->n_pairs; i++) json_array_append_new(pairs, json_integer(a->pairs[i]));
        json_object_set_new(p, "kv", json_pack("{s:o, s:i, s:I, s:s, s:s, s:i}", "pairs", pairs, "samples", a->samples,
                                               "seed", (json_int_t)a->seed, "words", a->words, "score",
                                               a->score_modes == 3 ? "both" : a->score_modes == 1 ? "choice" : "last-token",
                                               "batch", batch));
    }
    if (tk) json_object_set_new(p, "lm", json_pack("{s:i, s:i}", "ctx", ctx, "batch", batch > 8 ? 8 : batch));
    json_t *files = json_array();
    for (int i = 0; i < a->n_tasks; i++)
        if (a->tasks[i].file) json_array_append_new(files, json_string(a->tasks[i].file));
    if (json_array_size(files)) json_object_set_new(p, "files", files);
    else json_decref(files);
    if (has_task(a, T_GEN))
        json_object_set_new(p, "gen", json_pack("{s:i, s:s}", "max_new_tokens", a->max_new, "until", a->until));
    if (has_task(a, T_MEM)) {
        json_t *l = json_array();
        for (int i = 0; i < a->n_lengths; i++) json_array_append_new(l, json_integer(a->lengths[i]));
        json_object_set_new(p, "mem", json_pack("{s:o, s:i}", "lengths", l, "value_bytes", a->value_bytes));
    }
    if (has_task(a, T_SPEED))
        json_object_set_new(p, "speed", json_pack("{s:i, s:i, s:i}", "prompt_len", a->prompt_len, "gen_len", a->gen_len,
                                                  "max_batch", max_batch));
    return p;
}

static int run_tasks(eval_ctx *c, ra_model *teacher, eval_results *r, ra_error *err) {
    const eval_args *a = c->args;
    eval_model s = {c->m, c->backend, c->device, c->head_keep};
    eval_model t = {teacher, c->backend, c->device, NULL};
    eval_model *tp = teacher ? &t : NULL;
    int cpu = c->device == RA_DEVICE_CPU, rc = 0;
    int batch = a->batch ? a->batch : cpu ? 16 : 64;
    int lm_batch = a->batch ? a->batch : cpu ? 1 : 8;
    int max_batch = a->max_batch ? a->max_batch : cpu ? 8 : 1024;
    int ctx = a->ctx;
    if (!ctx) ctx = c->m->cfg.max_position_embeddings < 2048 ? c->m->cfg.max_position_embeddings : 2048;
    if (ctx < 2) ctx = 2;

    ra_tokenizer *tok = NULL;
    int need_tok = has_task(a, T_KV) || has_task(a, T_MC) || has_task(a, T_GEN);
    if (need_tok && !(tok = load_tokenizer(a, err))) return err->code;
    ra_tokens tk = {0};
    int have_tk = 0;
    if (has_task(a, T_PPL) || has_task(a, T_KD)) {
        if ((rc = load_documents(a->data, c->m, &tk, err))) goto done;
        have_tk = 1;
    }
    probe_words words = {0};
    for (int i = 0; i < a->n_tasks && !rc; i++) {
        const task_ref *tr = &a->tasks[i];
        switch (tr->kind) {
        case T_KV: {
            if ((rc = probe_words_load(a->words, &words, err))) break;
            eval_kv_opts o = {&words, a->n_pairs, a->pairs, a->samples, a->seed, a->score_modes, batch};
            rc = eval_kv(&s, tp, tok, &o, r, err);
            probe_words_free(&words);
            break;
        }
        case T_PPL:
        case T_KD: {
            if (eval_results_find(r, "lm")) break; /* ppl and kd share one pass */
            eval_lm_opts o = {ctx, lm_batch};
            rc = eval_lm(&s, has_task(a, T_KD) || teacher ? tp : NULL, &tk, &o, r, err);
            break;
        }
        case T_MC: {
            eval_mc_set set;
            if ((rc = eval_mc_load(tr->file, &set, err))) break;
            rc = eval_mc(&s, tp, tok, &set, batch, r, err);
            eval_mc_free(&set);
            break;
        }
        case T_GEN: {
            const ra_decode_backend *dec;
            if ((rc = ra_decode_backend_get(c->device, &dec, err))) break;
            eval_gen_set set;
            if ((rc = eval_gen_load(tr->file, &set, err))) break;
            eval_gen_opts o = {a->max_new, batch, a->until};
            rc = eval_gen(&s, tp, dec, tok, &set, &o, r, err);
            if (rc == EX_USAGE) ra_usage_error("%s", err->msg);
            eval_gen_free(&set);
            break;
        }
        case T_MEM:
            eval_mem(c->m, teacher, a->lengths, a->n_lengths, a->value_bytes, r);
            break;
        case T_SPEED: {
            const ra_decode_backend *dec;
            if ((rc = ra_decode_backend_get(c->device, &dec, err))) break;
            eval_speed_opts o = {a->prompt_len, a->gen_len, max_batch, a->seed, 0};
            rc = eval_speed(&s, dec, &o, r, err);
            break;
        }
        }
    }
    if (rc) goto done;

    /* the results: stream (-o), table or JSON on stdout */
    if (a->output) {
        json_t *meta = results_meta(c, json_object());
        json_t *tasks = json_array();
        for (int i = 0; i < a->n_tasks; i++) json_array_append_new(tasks, json_string(task_names[a->tasks[i].kind]));
        json_object_set_new(meta, "tasks", tasks);
        json_object_set_new(meta, "teacher", teacher ? json_string(teacher->content_id) : json_null());
        if (have_tk) json_object_set_new(meta, "tokens", json_string(tk.content_id));
        if (tok) json_object_set_new(meta, "tokenizer", json_string(ra_tokenizer_id(tok)));
        json_t *params = task_params(a, have_tk ? &tk : NULL, ctx, batch, max_batch);
        json_object_set(meta, "parameters", params);
        json_t *inputs = json_pack("{s:s}", "model", c->m->content_id);
        if (teacher) json_object_set_new(inputs, "teacher", json_string(teacher->content_id));
        if (have_tk) json_object_set_new(inputs, "tokens", json_string(tk.content_id));
        if (tok) json_object_set_new(inputs, "tokenizer", json_string(ra_tokenizer_id(tok)));
        json_t *prov = results_prov(c, params, inputs);
        rc = eval_results_write(r, a->output, meta, prov, err);
        json_decref(meta);
        json_decref(prov);
        if (rc) goto done;
    }
    if (!a->output || strcmp(a->output, "-") != 0) rc = eval_results_print(r, a->format, stdout, err);
    if (!rc && a->plot) {
        int n;
        rc = eval_plot_results(r, a->plot, &n, err);
        if (!rc && a->n_logs) rc = eval_plot_logs((const char *const *)a->logs, a->n_logs, a->plot, err);
        if (!rc && !ra_progress_quiet) fprintf(stderr, "%s: %d plot(s) in %s\n", ra_progname, n + (a->n_logs > 0), a->plot);
    }
done:
    if (have_tk) ra_tokens_free(&tk);
    if (tok) ra_tokenizer_free(tok);
    return rc;
}

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

static void free_args(eval_args *a) {
    free(a->ablate);
    free(a->pairs);
    free(a->lengths);
    for (int i = 0; i < a->n_logs; i++) free(a->logs[i]);
    free(a->logs);
    free(a->task_copy);
    free(a->tasks);
}

int main(int argc, char **argv) {
    ra_cli_init(argc, argv, "ra-eval", usage);
    eval_args a;
    parse_args(argc, argv, &a);
    ra_error err = {0};

    /* gnuplot first: a missing program fails before any (long) evaluation */
    if (a.plot && eval_plot_available(&err)) ra_die_error(&err);
    if (!a.task) { /* --plot-log only */
        if (eval_plot_logs((const char *const *)a.logs, a.n_logs, a.plot, &err)) ra_die_error(&err);
        if (!ra_progress_quiet) fprintf(stderr, "%s: loss curves in %s/loss.png\n", ra_progname, a.plot);
        free_args(&a);
        return 0;
    }
    int logits = has_task(&a, T_LOGITS);
    if ((logits ? (!a.output || !strcmp(a.output, "-")) : (a.output && !strcmp(a.output, "-"))) &&
        ra_check_binary_stdout(&err))
        ra_die_error(&err);

    /* The device first: asking for a GPU that is not there fails before the
     * (possibly long) model load. */
    eval_ctx c = {.args = &a};
    c.device = a.device_given ? a.device : RA_DEVICE_CUDA;
    if (ra_forward_backend_get(c.device, &c.backend, &err)) {
        if (a.device_given) ra_die_error(&err);
        c.device = RA_DEVICE_CPU; /* default: cuda when available, else cpu */
        err = (ra_error){0};
        if (ra_forward_backend_get(c.device, &c.backend, &err)) ra_die_error(&err);
    }

    if (ra_model_load(a.model, &c.m, &err)) ra_die_error(&err);
    if (c.m->warning[0]) fprintf(stderr, "%s: warning: %s\n", ra_progname, c.m->warning);
    c.head_keep = ablation_mask(&a, c.m);
    ra_model *teacher = NULL;
    if (a.teacher) {
        if (ra_model_load(a.teacher, &teacher, &err)) ra_die_error(&err);
        if (teacher->cfg.vocab_size != c.m->cfg.vocab_size)
            ra_die(EX_DATAERR, "%s: the teacher's vocabulary has %d tokens, the model's %d", a.teacher,
                   teacher->cfg.vocab_size, c.m->cfg.vocab_size);
    }

    int rc;
    if (logits) {
        rc = task_logits(&c, &err);
    } else {
        eval_results r;
        eval_results_init(&r);
        rc = run_tasks(&c, teacher, &r, &err);
        eval_results_free(&r);
    }
    free(c.head_keep);
    ra_model_free(c.m);
    if (teacher) ra_model_free(teacher);
    if (rc) ra_die_error(&err);
    free_args(&a);
    return 0;
}
