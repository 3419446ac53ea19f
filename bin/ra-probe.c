/* ra-probe: retrieval importance of every attention head of a teacher
 * (DESIGN §2.2); writes a `scores` stream (formats/scores.md). */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "atomic_file.h"
#include "cli.h"
#include "forward.h"
#include "model.h"
#include "plan.h"
#include "probe.h"
#include "tokenizer.h"

static const char usage[] =
    "Usage: ra-probe -m TEACHER [options] > scores.ra\n"
    "Score every attention head of TEACHER by how much key-value retrieval drops\n"
    "when the head is ablated (the Gather-and-Aggregate probe).\n"
    "\n"
    "  -m, --model PATH     teacher: Hugging Face directory or model ra stream\n"
    "  --tokenizer PATH     tokenizer.json or its directory (default: the teacher's)\n"
    "  --pairs K            key-value pairs per prompt, 1..100 (default 50)\n"
    "  --samples N          prompts (default 256)\n"
    "  --seed S             prompt seed (default 1)\n"
    "  --words FILE         word list for the keys (default /usr/share/dict/words)\n"
    "  --score MODE         choice (default) or last-token\n"
    "  --method M           exact (default), attribution or hybrid\n"
    "  --confirm M          hybrid: heads confirmed by exact ablation\n"
    "                       (default 4 x 2% of all heads, at least 4)\n"
    "  --compare            exact: also compute attribution and report the rank\n"
    "                       correlation between the two\n"
    "  --device cpu|cuda    where to run (default cuda when a GPU is usable, else cpu)\n"
    "  --batch N            token rows per forward call (default 16 on cpu, 128 on cuda)\n"
    "  --dump-prompts FILE  write the prompts as text (\"-\" = stdout); without -m,\n"
    "                       only that\n"
    "  --dump-tokens FILE   write the token rows and scoring targets as JSON\n"
    "  -o FILE              write the scores to FILE (default stdout)\n"
    "  -q                   no progress on stderr\n"
    "  --help, --version\n";

typedef struct probe_cli {
    const char *model, *tokenizer, *words, *dump, *dump_tokens, *out;
    int pairs, samples, batch, confirm;
    uint64_t seed;
    probe_score_mode score;
    enum { M_EXACT, M_ATTRIBUTION, M_HYBRID } method;
    int compare, device_given;
    ra_device device;
} probe_cli;

static const char *method_name[] = {"exact", "attribution", "hybrid"};

static void parse_args(int argc, char **argv, probe_cli *o) {
    memset(o, 0, sizeof *o);
    o->words = PROBE_DEFAULT_WORDS;
    o->pairs = 50;
    o->samples = 256;
    o->seed = 1;
    o->confirm = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define VALUE() (v ? (i++, v) : (ra_usage_error("%s: missing value", a), ""))
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) o->model = VALUE();
        else if (!strcmp(a, "--tokenizer")) o->tokenizer = VALUE();
        else if (!strcmp(a, "--pairs")) o->pairs = (int)ra_parse_int(a, VALUE(), 1, PROBE_MAX_PAIRS);
        else if (!strcmp(a, "--samples")) o->samples = (int)ra_parse_int(a, VALUE(), 1, 1 << 24);
        else if (!strcmp(a, "--seed")) o->seed = (uint64_t)ra_parse_int(a, VALUE(), 0, INT64_MAX);
        else if (!strcmp(a, "--words")) o->words = VALUE();
        else if (!strcmp(a, "--score")) {
            const char *s = VALUE();
            if (probe_score_parse(s, &o->score)) ra_usage_error("--score: '%s', expected choice or last-token", s);
        } else if (!strcmp(a, "--method")) {
            const char *s = VALUE();
            if (!strcmp(s, "exact")) o->method = M_EXACT;
            else if (!strcmp(s, "attribution")) o->method = M_ATTRIBUTION;
            else if (!strcmp(s, "hybrid")) o->method = M_HYBRID;
            else ra_usage_error("--method: '%s', expected exact, attribution or hybrid", s);
        } else if (!strcmp(a, "--confirm")) o->confirm = (int)ra_parse_int(a, VALUE(), 1, 1 << 24);
        else if (!strcmp(a, "--compare")) o->compare = 1;
        else if (!strcmp(a, "--device")) {
            const char *s = VALUE();
            if (ra_device_parse(s, &o->device)) ra_usage_error("--device: '%s', expected cpu or cuda", s);
            o->device_given = 1;
        } else if (!strcmp(a, "--batch")) o->batch = (int)ra_parse_int(a, VALUE(), 1, 1 << 20);
        else if (!strcmp(a, "--dump-prompts")) o->dump = VALUE();
        else if (!strcmp(a, "--dump-tokens")) o->dump_tokens = VALUE();
        else if (!strcmp(a, "-o")) o->out = VALUE();
        else if (!strcmp(a, "-q")) ra_progress_quiet = 1;
        else ra_usage_error("unknown argument '%s'", a);
#undef VALUE
    }
    if (!o->model && !o->dump) ra_usage_error("no teacher: give -m TEACHER");
    if (o->confirm > 0 && o->method != M_HYBRID) ra_usage_error("--confirm applies to --method hybrid only");
    if (o->compare && o->method != M_EXACT) ra_usage_error("--compare applies to --method exact only");
}

/* The tokenizer: --tokenizer, else the teacher directory's tokenizer.json. */
static ra_tokenizer *load_tokenizer(const probe_cli *o) {
    ra_error err = {0};
    ra_tokenizer *tok;
    const char *path = o->tokenizer;
    struct stat st;
    if (!path) {
        if (stat(o->model, &st) != 0 || !S_ISDIR(st.st_mode))
            ra_die(EX_NOINPUT, "%s: no tokenizer.json beside a model stream; give --tokenizer DIR|tokenizer.json",
                   o->model);
        path = o->model;
    }
    if (ra_tokenizer_load(path, &tok, &err)) {
        if (err.code == EX_NOINPUT && !o->tokenizer)
            ra_error_prefix(&err, "the teacher's tokenizer (give --tokenizer if it lives elsewhere): ");
        ra_die_error(&err);
    }
    return tok;
}

static int default_confirm(int heads) {
    int keep = (int)lround(0.02 * heads);
    int m = 4 * (keep < 1 ? 1 : keep);
    return m < 4 ? 4 : m;
}

/* Indices of the m largest values of v (ties: lower index first). */
static const float *top_keys;
static int cmp_desc_idx(const void *a, const void *b) {
    int i = *(const int *)a, j = *(const int *)b;
    if (top_keys[i] != top_keys[j]) return top_keys[i] < top_keys[j] ? 1 : -1;
    return (i > j) - (i < j);
}
static void top_m(const float *v, int n, int m, uint8_t *mask) {
    if (n <= 0) return;
    int *idx = xmalloc((size_t)n * sizeof(int));
    for (int i = 0; i < n; i++) idx[i] = i;
    top_keys = v;
    qsort(idx, (size_t)n, sizeof(int), cmp_desc_idx);
    memset(mask, 0, (size_t)n);
    for (int i = 0; i < m && i < n; i++) mask[idx[i]] = 1;
    free(idx);
}

/* The content id of a model whose weights stay in the checkpoint: XXH3 over
 * every weight byte, on a thread of its own while the GPU works. */
static void *content_id_main(void *m) {
    ra_model_view_content_id(m);
    return NULL;
}

/* Exit on err once the device thread is done with the CUDA runtime. */
static void die_joined(ra_error *err) {
    ra_error ignored = {0};
    probe_device_prepare_wait(NULL, NULL, &ignored);
    ra_die_error(err);
}

static void baseline_means(const probe_outcome *b, int n, double *acc, double *lp) {
    *acc = *lp = 0;
    for (int i = 0; i < n; i++) *acc += b[i].correct, *lp += b[i].logprob;
    *acc /= n;
    *lp /= n;
}

int main(int argc, char **argv) {
    double t_start = ra_now();
    ra_cli_init(argc, argv, "ra-probe", usage);
    probe_cli o;
    parse_args(argc, argv, &o);
    ra_error err = {0};

    probe_words words;
    probe_prompts prompts;
    if (probe_words_load(o.words, &words, &err)) ra_die_error(&err);
    if (probe_prompts_generate(&words, o.seed, o.pairs, o.samples, &prompts, &err)) {
        if (err.code == EX_DATAERR) ra_error_prefix(&err, "--pairs %d: ", o.pairs);
        ra_die_error(&err);
    }
    if (o.dump && probe_prompts_dump(&prompts, o.dump, &err)) ra_die_error(&err);
    if (!o.model) return 0;

    const char *out = o.out ? o.out : "-";
    if (!strcmp(out, "-") && ra_check_binary_stdout(&err)) ra_die_error(&err);

    /* The GPU start overlaps the host's: a thread creates the CUDA context
     * (auto: tries to) and then uploads the model, while this one loads the
     * tokenizer and tokenises.  On CUDA the weights go from the checkpoint's
     * memory map to the GPU as stored (no host fp32 copy) and the content
     * id is hashed on another thread meanwhile. */
    ra_device want = o.device_given ? o.device : RA_DEVICE_CUDA;
    double t_load = ra_now(), t_begin = t_load - t_start;
    ra_tokenizer *tok = load_tokenizer(&o);
    double t_tok = ra_now() - t_load;
    ra_model *m;
    if ((probe_device_takes_view(want) ? ra_model_load_view : ra_model_load)(o.model, &m, &err)) ra_die_error(&err);
    double t_model = ra_now() - t_load - t_tok;
    if (m->hybrid) /* heads are scored against the teacher's own layout */
        ra_die(EX_DATAERR, "%s: is a hybrid student (meta.hybrid); ra-probe scores the heads of a teacher", o.model);
    if (m->warning[0] && !ra_progress_quiet) fprintf(stderr, "ra-probe: %s\n", m->warning);
    /* (the thread starts only now: no exit while it is inside the CUDA
     * runtime, other than through die_joined) */
    probe_device_prepare_start(want);
    probe_device_prepare_model(m);
    pthread_t id_thread;
    int id_running = m->view && pthread_create(&id_thread, NULL, content_id_main, m) == 0;
    if (m->view && !id_running) ra_model_view_content_id(m);
    int L = m->cfg.num_layers, H = m->cfg.num_heads, LH = L * H;

    probe_data d;
    if (probe_data_build(&prompts, tok, o.score, m->cfg.vocab_size, &d, &err)) {
        ra_error_prefix(&err, "%s: ", o.tokenizer ? o.tokenizer : o.model);
        die_joined(&err);
    }
    if (o.dump_tokens && probe_data_dump_json(&d, o.dump_tokens, &err)) die_joined(&err);
    int N = d.n_items;

    /* the device thread's outcome; auto falls back to the CPU */
    double t_dev = ra_now(), t_init = 0, t_upload = 0;
    t_load = t_dev - t_load;
    int prep_rc = probe_device_prepare_wait(&t_init, &t_upload, &err);
    const ra_forward_backend *be;
    if (!o.device_given) {
        ra_error e2 = {0};
        o.device = !prep_rc && ra_forward_backend_get(RA_DEVICE_CUDA, &be, &e2) == 0 ? RA_DEVICE_CUDA : RA_DEVICE_CPU;
        err = (ra_error){0};
    } else if (prep_rc) {
        ra_die_error(&err);
    }
    if (ra_forward_backend_get(o.device, &be, &err)) ra_die_error(&err);
    if (m->view && !probe_device_takes_view(o.device)) { /* no GPU after all: the fp32 weights */
        if (id_running) pthread_join(id_thread, NULL), id_running = 0;
        ra_model_free(m);
        if (ra_model_load(o.model, &m, &err)) ra_die_error(&err);
    }
    if (!o.batch) o.batch = o.device == RA_DEVICE_CUDA ? 128 : 16;
    if (o.method == M_HYBRID && o.confirm < 0) o.confirm = default_confirm(LH);
    if (o.confirm > LH) o.confirm = LH;

    ra_scores s = {0};
    s.shape = ra_teacher_shape_from_config(&m->cfg);
    s.acc_drop = xmalloc((size_t)LH * sizeof(float));
    s.logprob_drop = xmalloc((size_t)LH * sizeof(float));
    s.exact = xcalloc((size_t)LH, 1);
    for (int i = 0; i < LH; i++) s.acc_drop[i] = NAN, s.logprob_drop[i] = 0;
    probe_outcome *base = xcalloc((size_t)N, sizeof(probe_outcome));
    probe_opts po = {o.batch, NULL};
    ra_progress prog;
    if (probe_device_begin(o.device, m, &d, &po, &err)) ra_die_error(&err);
    double t0 = ra_now(), t_attr = 0, t_exact = 0, t_up = t0 - t_dev;
    t0 -= t_up; /* the phases below are counted from t_dev */
    int need_attr = o.method != M_EXACT || o.compare;
    if (need_attr) {
        s.attribution = xmalloc((size_t)LH * sizeof(float));
        if (!ra_progress_quiet)
            fprintf(stderr, "ra-probe: attribution (one forward + backward, %s) ...\n", ra_device_name(o.device));
        if (probe_attribution_device(o.device, m, &d, &po, s.attribution, base, &err)) ra_die_error(&err);
        t_attr = ra_now() - t0 - t_up;
        for (int i = 0; i < LH; i++) s.logprob_drop[i] = s.attribution[i];
    }
    if (o.method != M_ATTRIBUTION) {
        uint8_t *measure = NULL;
        int n_measure = LH;
        if (o.method == M_HYBRID) {
            measure = xmalloc((size_t)LH);
            top_m(s.attribution, LH, o.confirm, measure);
            n_measure = o.confirm;
        }
        ra_progress_start(&prog, "ra-probe: exact", "ablations", (int64_t)N * n_measure);
        po.progress = &prog;
        probe_exact_result r = {base, NULL, s.acc_drop, s.logprob_drop};
        if (probe_exact_device(o.device, m, &d, measure, &po, &r, &err)) ra_die_error(&err);
        ra_progress_finish(&prog, (int64_t)N * n_measure);
        t_exact = ra_now() - t0 - t_up - t_attr;
        for (int i = 0; i < LH; i++) s.exact[i] = !measure || measure[i];
        free(measure);
    }

    double acc, lp, t_id = ra_now();
    baseline_means(base, N, &acc, &lp);
    if (id_running) pthread_join(id_thread, NULL), id_running = 0;
    t_id = ra_now() - t_id; /* waiting for the content id: 0 unless the probe was quicker than the hash */
    int n_exact = 0;
    for (int i = 0; i < LH; i++) n_exact += s.exact[i];

    json_t *meta = json_object();
    json_object_set_new(meta, "teacher", json_pack("{s:s, s:o}", "id", m->content_id, "config", hf_config_to_json(&m->cfg)));
    json_t *probe = json_pack("{s:i, s:i, s:I, s:s, s:i, s:s, s:s}", "pairs", o.pairs, "samples", o.samples, "seed",
                              (json_int_t)o.seed, "words", o.words, "words_count", words.n, "score",
                              probe_score_name(o.score), "method", method_name[o.method]);
    if (o.method == M_HYBRID) json_object_set_new(probe, "confirm", json_integer(o.confirm));
    json_object_set_new(probe, "tokenizer", json_string(ra_tokenizer_id(tok)));
    json_object_set_new(meta, "probe", probe);
    json_object_set_new(meta, "baseline", json_pack("{s:f, s:f}", "accuracy", acc, "logprob", lp));
    json_object_set_new(meta, "counts", json_pack("{s:i, s:i, s:i, s:i, s:i, s:i}", "layers", L, "heads", H, "prompts",
                                                  N, "rows", d.n_rows, "tokens", d.max_tokens, "exact_heads", n_exact));
    if (s.attribution && n_exact >= 2) {
        /* attribution vs exact log-prob drop over the heads measured both ways */
        float *a = xmalloc((size_t)n_exact * sizeof(float)), *e = xmalloc((size_t)n_exact * sizeof(float)),
              *ea = xmalloc((size_t)n_exact * sizeof(float));
        int k = 0;
        for (int i = 0; i < LH; i++)
            if (s.exact[i]) a[k] = s.attribution[i], e[k] = s.logprob_drop[i], ea[k] = s.acc_drop[i], k++;
        double rl = probe_spearman(a, e, k), ra = probe_spearman(a, ea, k);
        json_object_set_new(meta, "rank_correlation",
                            json_pack("{s:o, s:o, s:i}", "spearman_logprob", isnan(rl) ? json_null() : json_real(rl),
                                      "spearman_acc", isnan(ra) ? json_null() : json_real(ra), "heads", k));
        if (!ra_progress_quiet)
            fprintf(stderr, "ra-probe: rank correlation attribution vs exact over %d heads: %.3f (log-prob), %.3f (acc)\n",
                    k, rl, ra);
        free(a), free(e), free(ea);
    }
    json_t *params = json_pack("{s:i, s:i, s:I, s:s, s:i, s:s, s:s}", "pairs", o.pairs, "samples", o.samples, "seed",
                               (json_int_t)o.seed, "words", o.words, "words_count", words.n, "score",
                               probe_score_name(o.score), "method", method_name[o.method]);
    if (o.method == M_HYBRID) json_object_set_new(params, "confirm", json_integer(o.confirm));
    if (o.compare) json_object_set_new(params, "compare", json_true());
    json_t *prov = json_pack("{s:s, s:s, s:o, s:{s:s, s:s}}", "tool", "ra-probe", "version", RA_VERSION, "parameters",
                             params, "inputs", "teacher", m->content_id, "tokenizer", ra_tokenizer_id(tok));
    double t_write = ra_now();
    if (ra_scores_write(out, meta, &s, prov, NULL, &err)) ra_die_error(&err);
    t_write = ra_now() - t_write;
    if (!ra_progress_quiet)
        fprintf(stderr, "ra-probe: %d prompts, baseline accuracy %.4f (chance %.4f), mean log-prob %.4f; %d of %d heads "
                        "exact; %s on %s, %.1f s\n",
                N, acc, o.score == PROBE_SCORE_CHOICE ? 1.0 / o.pairs : 0.0, lp, n_exact, LH, method_name[o.method],
                ra_device_name(o.device), ra_now() - t0);
    if (!ra_progress_quiet)
        fprintf(stderr,
                "ra-probe: timing: start %.2f s, load %.2f s (tokenizer %.2f, model %.2f, prompts %.2f), to device %.2f s, "
                "attribution %.2f s, exact %.2f s (%d heads), total %.2f s (attribution + exact), wall %.2f s; "
                "device thread: context %.2f s, upload %.2f s; content id wait %.2f s, write %.2f s\n",
                t_begin, t_load, t_tok, t_model, t_load - t_tok - t_model, t_up, t_attr, t_exact,
                o.method == M_ATTRIBUTION ? 0 : n_exact, t_attr + t_exact, ra_now() - t_start, t_init, t_upload, t_id,
                t_write);
    /* On the GPU the process ends here: freeing some 20 GB of device buffers
     * one by one and unmapping the checkpoint would only delay its exit,
     * which releases them all at once. */
    if (o.device == RA_DEVICE_CUDA) return 0;
    probe_device_end();
    json_decref(meta);
    json_decref(prov);
    free(base);
    ra_scores_free(&s);
    probe_data_free(&d);
    ra_model_free(m);
    ra_tokenizer_free(tok);
    probe_prompts_free(&prompts);
    probe_words_free(&words);
    return 0;
}
