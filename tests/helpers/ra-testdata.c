/* Test helper (not installed) for the model / forward bats suites.
 *
 *   ra-testdata tokens -o OUT [--layout L] [--kind K] DOC...
 *       a tokens stream with one i32 record doc/<i> per DOC; a DOC is
 *       comma-separated token ids, "" for an empty document (written record
 *       by record, so bad ids and empty documents can be made; --layout
 *       packed writes rows of 4 through lib/tokens.h instead).
 *   ra-testdata golden-tokens -o OUT EXPECTED.safetensors
 *       a tokens stream from a golden fixture: doc/0 = tokens/short,
 *       doc/1 = tokens/long.
 *   ra-testdata model-stream -o OUT [--dtype bf16|f16|f32] MODEL
 *       load MODEL (HF directory or model stream), write it as a model stream.
 *   ra-testdata compare RESULTS NAME EXPECTED.safetensors TENSOR TOL
 *       print max |Δ| / max |expected| between a results tensor and a
 *       safetensors tensor; exit 1 if it is above TOL or shapes differ.
 *   ra-testdata id MODEL
 *       print the model's content id.
 *   ra-testdata describe STREAM
 *       print "kind K", "meta JSON" (sorted keys), one "tensor NAME DTYPE
 *       D0xD1..." line per record and "id CONTENT-ID". */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "model.h"
#include "safetensors.h"
#include "stream.h"
#include "tokens.h"

static const char usage[] = "usage: ra-testdata tokens|golden-tokens|model-stream|compare|id|describe ... (see the source)\n";

static const char *flag(int *argc, char ***argv, const char *name, const char *dflt) {
    for (int i = 0; i + 1 < *argc; i++)
        if (strcmp((*argv)[i], name) == 0) {
            const char *v = (*argv)[i + 1];
            memmove(&(*argv)[i], &(*argv)[i + 2], (size_t)(*argc - i - 2) * sizeof(char *));
            *argc -= 2;
            return v;
        }
    return dflt;
}

/* Parse comma-separated ids; returns the count. */
static int64_t parse_ids(const char *text, int32_t **out) {
    int32_t *ids = xmalloc(strlen(text) * sizeof(int32_t) + 4);
    int64_t n = 0;
    char *copy = xstrdup(text), *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) ids[n++] = (int32_t)atol(t);
    free(copy);
    *out = ids;
    return n;
}

static int tokens(int argc, char **argv) {
    const char *out = flag(&argc, &argv, "-o", "-"), *layout = flag(&argc, &argv, "--layout", "documents");
    const char *kind = flag(&argc, &argv, "--kind", "tokens");
    ra_error err = {0};
    if (strcmp(layout, "packed") == 0) { /* through lib/tokens.h, rows of 4 */
        ra_tokens_builder *b = ra_tokens_builder_new(&err);
        for (int d = 0; d < argc; d++) {
            int32_t *ids;
            int64_t n = parse_ids(argv[d], &ids);
            if (ra_tokens_builder_add(b, ids, n, &err)) ra_die_error(&err);
            free(ids);
        }
        if (ra_tokens_write_packed(b, out, NULL, 4, 0, NULL, NULL, NULL, &err)) ra_die_error(&err);
        ra_tokens_builder_free(b);
        return 0;
    }
    /* documents, written record by record so that bad ids and empty
     * documents can be made too */
    int64_t total = 0;
    for (int d = 0; d < argc; d++) {
        int32_t *ids;
        total += parse_ids(argv[d], &ids);
        free(ids);
    }
    json_t *meta = json_pack("{s:s, s:I, s:I}", "layout", layout, "n_docs", (json_int_t)argc, "n_tokens", (json_int_t)total);
    ra_writer *w = ra_writer_open(out, kind, meta, NULL, &err);
    json_decref(meta);
    if (!w) ra_die_error(&err);
    for (int d = 0; d < argc; d++) {
        int32_t *ids;
        int64_t n = parse_ids(argv[d], &ids);
        char name[32];
        snprintf(name, sizeof name, "doc/%d", d);
        if (ra_writer_tensor(w, name, RA_I32, 1, &n, ids, &err)) ra_die_error(&err);
        free(ids);
    }
    if (ra_writer_close(w, NULL, &err)) ra_die_error(&err);
    return 0;
}

static int golden_tokens(int argc, char **argv) {
    const char *out = flag(&argc, &argv, "-o", "-");
    if (argc != 1) ra_die(EX_USAGE, "golden-tokens: one EXPECTED.safetensors");
    ra_error err = {0};
    st_set *st;
    if (st_open(argv[0], &st, &err)) ra_die_error(&err);
    ra_tokens_builder *b = ra_tokens_builder_new(&err);
    const char *src[2] = {"tokens/short", "tokens/long"};
    for (int i = 0; i < 2; i++) {
        const st_tensor *t = st_find(st, src[i]);
        if (!t || t->dtype != RA_I32 || t->ndim != 1) ra_die(EX_DATAERR, "%s: no i32 '%s'", argv[0], src[i]);
        if (ra_tokens_builder_add(b, t->data, t->shape[0], &err)) ra_die_error(&err);
    }
    if (ra_tokens_write_documents(b, out, NULL, NULL, NULL, NULL, &err)) ra_die_error(&err);
    ra_tokens_builder_free(b);
    st_close(st);
    return 0;
}

static int model_stream(int argc, char **argv) {
    const char *out = flag(&argc, &argv, "-o", "-"), *dt = flag(&argc, &argv, "--dtype", "f32");
    if (argc != 1) ra_die(EX_USAGE, "model-stream: one MODEL");
    ra_dtype dtype;
    if (ra_dtype_parse(dt, &dtype)) ra_die(EX_USAGE, "--dtype %s", dt);
    ra_error err = {0};
    ra_model *m;
    if (ra_model_load(argv[0], &m, &err) || ra_model_write_stream(m, out, dtype, NULL, NULL, &err)) ra_die_error(&err);
    ra_model_free(m);
    return 0;
}

static int compare(int argc, char **argv) {
    if (argc != 5) ra_die(EX_USAGE, "compare RESULTS NAME EXPECTED.safetensors TENSOR TOL");
    ra_error err = {0};
    ra_reader *hdr;
    ra_tensor *t;
    int n;
    if (ra_read_all(argv[0], &hdr, &t, &n, &err)) ra_die_error(&err);
    const ra_tensor *got = ra_tensors_find(t, n, argv[1]);
    if (!got || got->info.dtype != RA_F32) ra_die(1, "%s: no f32 tensor '%s'", argv[0], argv[1]);
    st_set *st;
    if (st_open(argv[2], &st, &err)) ra_die_error(&err);
    const st_tensor *want = st_find(st, argv[3]);
    if (!want || want->dtype != RA_F32) ra_die(1, "%s: no f32 tensor '%s'", argv[2], argv[3]);
    int same = got->info.ndim == want->ndim;
    for (int i = 0; same && i < want->ndim; i++) same = got->info.shape[i] == want->shape[i];
    if (!same) ra_die(1, "%s and %s: shapes differ", argv[1], argv[3]);
    const float *a = got->data, *b = want->data;
    double e = 0, s = 1e-30;
    for (int64_t i = 0; i < got->info.numel; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= e)) e = d;
        s = fmax(s, fabs(b[i]));
    }
    printf("%.3e\n", e / s);
    ra_tensors_free(t, n);
    ra_reader_close(hdr);
    st_close(st);
    return e / s <= atof(argv[4]) ? 0 : 1;
}

static int id(int argc, char **argv) {
    if (argc != 1) ra_die(EX_USAGE, "id MODEL");
    ra_error err = {0};
    ra_model *m;
    if (ra_model_load(argv[0], &m, &err)) ra_die_error(&err);
    printf("%s\n", m->content_id);
    ra_model_free(m);
    return 0;
}

static int describe(int argc, char **argv) {
    if (argc != 1) ra_die(EX_USAGE, "describe STREAM");
    ra_error err = {0};
    ra_reader *r = ra_reader_open(argv[0], &err);
    if (!r) ra_die_error(&err);
    char *meta = json_dumps(ra_reader_meta(r), JSON_COMPACT | JSON_SORT_KEYS);
    printf("kind %s\nmeta %s\n", ra_reader_kind(r), meta);
    free(meta);
    ra_tensor_info info;
    int more;
    while ((more = ra_reader_next(r, &info, &err)) == 1) {
        printf("tensor %s %s ", info.name, ra_dtype_name(info.dtype));
        for (int i = 0; i < info.ndim; i++) printf("%s%lld", i ? "x" : "", (long long)info.shape[i]);
        printf("\n");
    }
    if (more < 0) ra_die_error(&err);
    printf("id %s\n", ra_reader_content_id(r));
    ra_reader_close(r);
    return 0;
}

int main(int argc, char **argv) {
    ra_cli_init(argc, argv, "ra-testdata", usage);
    if (argc < 2) ra_die(EX_USAGE, "%s", usage);
    const char *cmd = argv[1];
    argc -= 2;
    argv += 2;
    if (strcmp(cmd, "tokens") == 0) return tokens(argc, argv);
    if (strcmp(cmd, "golden-tokens") == 0) return golden_tokens(argc, argv);
    if (strcmp(cmd, "model-stream") == 0) return model_stream(argc, argv);
    if (strcmp(cmd, "compare") == 0) return compare(argc, argv);
    if (strcmp(cmd, "id") == 0) return id(argc, argv);
    if (strcmp(cmd, "describe") == 0) return describe(argc, argv);
    ra_die(EX_USAGE, "unknown command '%s'", cmd);
}
