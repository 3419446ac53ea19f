/* ra-merge: overlay the tensors of PART streams on BASE by name (later parts
 * win) and write one stream, e.g. to join the per-layer outputs of MOHAWK
 * stage 2.
 *
 * Pass 1 reads every input's index (skipping data, verifying the digest) and
 * checks that the inputs are compatible.  Pass 2 writes BASE's tensors in
 * BASE's order, each copied in chunks from whichever input wins, then the
 * tensors only parts have, in part order.  Inputs are re-read as needed, so
 * they must be regular files; every reader is drained to its trailer before
 * the output is committed, so every byte copied is covered by a digest that
 * matched pass 1. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "stream.h"

static const char usage[] =
    "usage: ra-merge [-o OUT] [-q] BASE PART...\n"
    "Overlay the tensors of each PART on BASE by name (later parts win) and write\n"
    "one ra stream: BASE's tensors in BASE's order, replaced ones in place, then the\n"
    "tensors only parts have, in part order.  Output meta is BASE's; provenance\n"
    "lists every input with its content id.\n"
    "\n"
    "  -o OUT     write to OUT (atomically) instead of stdout\n"
    "  -q         no progress or summary on stderr\n"
    "  --help     show this help;  --version  show the version\n"
    "\n"
    "All inputs must be valid ra streams of the same kind with JSON-equal\n"
    "meta.config (and meta.hybrid), and a tensor in several inputs must have the same dtype and\n"
    "shape in all.  Inputs are read twice, so they must be regular files (not\n"
    "pipes or -).  Nothing is written unless every check passes.\n"
    "Exit status: 0 ok, 64 usage, 65 bad or incompatible input, 66 missing input,\n"
    "70 internal error, 73 cannot create OUT, 74 I/O error.\n";

#define COPY_CHUNK ((size_t)4 << 20)

typedef struct input {
    const char *path;
    char *kind;
    json_t *meta;
    char id[RA_CONTENT_ID_LEN + 1];
    int n;
    ra_tensor_info *t; /* in stream order */
    /* pass 2 */
    ra_reader *r;
    int pos; /* index of the tensor r is at; -1 before the first */
} input;

typedef struct out_entry {
    int in, pos; /* the winning input and the tensor's index in it */
} out_entry;

static int index_input(input *in, ra_error *err) {
    ra_reader *r = ra_reader_open(in->path, err);
    if (!r) return err->code;
    in->kind = xstrdup(ra_reader_kind(r));
    in->meta = json_deep_copy(ra_reader_meta(r));
    int cap = 0, st;
    ra_tensor_info info;
    while ((st = ra_reader_next(r, &info, err)) == 1) {
        if (in->n == cap) {
            cap = cap ? 2 * cap : 64;
            in->t = xrealloc(in->t, (size_t)cap * sizeof *in->t);
        }
        in->t[in->n++] = info;
    }
    if (st == 0) memcpy(in->id, ra_reader_content_id(r), sizeof in->id);
    ra_reader_close(r);
    in->pos = -1;
    return st < 0 ? err->code : 0;
}

static void json_brief(char *out, size_t cap, const json_t *v) {
    if (!v) {
        snprintf(out, cap, "(absent)");
        return;
    }
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    snprintf(out, cap, "%.100s%s", s ? s : "?", s && strlen(s) > 100 ? "..." : "");
    free(s);
}

/* meta.<field> must be JSON-equal (absent on both sides counts as equal);
 * name the first key that differs. */
static int check_meta_field(const input *base, const input *part, const char *field, ra_error *err) {
    const json_t *a = json_object_get(base->meta, field), *b = json_object_get(part->meta, field);
    if ((!a && !b) || (a && b && json_equal(a, b))) return 0;
    char va[128], vb[128];
    if (a && b && json_is_object(a) && json_is_object(b)) {
        const char *key;
        json_t *v;
        const json_t *sides[2] = {a, b};
        for (int s = 0; s < 2; s++)
            json_object_foreach((json_t *)sides[s], key, v) {
                const json_t *x = json_object_get(a, key), *y = json_object_get(b, key);
                if (x && y && json_equal(x, y)) continue;
                json_brief(va, sizeof va, x);
                json_brief(vb, sizeof vb, y);
                return ra_fail(err, EX_DATAERR, "%s: meta.%s.%s is %s but %s has %s (they must be equal)",
                               part->path, field, key, vb, base->path, va);
            }
    }
    json_brief(va, sizeof va, a);
    json_brief(vb, sizeof vb, b);
    return ra_fail(err, EX_DATAERR, "%s: meta.%s is %s but %s has %s (they must be equal)", part->path, field, vb,
                   base->path, va);
}

/* The model config, and for hybrid students the hybrid structure (kept heads,
 * layout, SSM sizes), must agree: tensors of one cannot stand in the other. */
static int check_compatible(const input *base, const input *part, ra_error *err) {
    int rc = check_meta_field(base, part, "config", err);
    return rc ? rc : check_meta_field(base, part, "hybrid", err);
}

static void describe(char *out, size_t cap, const ra_tensor_info *t) {
    size_t n = (size_t)snprintf(out, cap, "%s [", ra_dtype_name(t->dtype));
    for (int i = 0; i < t->ndim && n < cap; i++)
        n += (size_t)snprintf(out + n, cap - n, "%s%lld", i ? "," : "", (long long)t->shape[i]);
    if (n < cap) snprintf(out + n, cap - n, "]");
}

static int same_desc(const ra_tensor_info *a, const ra_tensor_info *b) {
    if (a->dtype != b->dtype || a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}

/* Drain a reader to its trailer and check the content is what pass 1 saw. */
static int finish_reader(input *in, ra_error *err) {
    if (!in->r) return 0;
    int st;
    while ((st = ra_reader_next(in->r, NULL, err)) == 1) {
    }
    int rc = st < 0 ? err->code : 0;
    if (!rc && strcmp(ra_reader_content_id(in->r), in->id) != 0)
        rc = ra_fail(err, EX_DATAERR, "%s: changed while being merged (content id %s, was %s)", in->path,
                     ra_reader_content_id(in->r), in->id);
    ra_reader_close(in->r);
    in->r = NULL;
    in->pos = -1;
    return rc;
}

/* Position input in at its tensor pos, reopening it if it is already past. */
static int seek_tensor(input *in, int pos, ra_error *err) {
    if (in->r && in->pos >= pos) {
        int rc = finish_reader(in, err);
        if (rc) return rc;
    }
    if (!in->r) {
        in->r = ra_reader_open(in->path, err);
        if (!in->r) return err->code;
        in->pos = -1;
    }
    ra_tensor_info info;
    while (in->pos < pos) {
        int st = ra_reader_next(in->r, &info, err);
        if (st < 0) return err->code;
        in->pos++;
        if (st == 0 || strcmp(info.name, in->t[in->pos].name) != 0 || !same_desc(&info, &in->t[in->pos]))
            return ra_fail(err, EX_DATAERR, "%s: changed while being merged (tensor %d differs)", in->path, in->pos);
    }
    return 0;
}

static int copy_tensor(ra_writer *w, input *in, int pos, void *buf, ra_progress *pr, int64_t *done, ra_error *err) {
    int rc = seek_tensor(in, pos, err);
    if (rc) return rc;
    const ra_tensor_info *t = &in->t[pos];
    if ((rc = ra_writer_begin(w, t->name, t->dtype, t->ndim, t->shape, err))) return rc;
    int64_t got;
    while ((got = ra_reader_read_chunk(in->r, buf, COPY_CHUNK, err)) > 0) {
        if ((rc = ra_writer_data(w, buf, (uint64_t)got, err))) return rc;
        *done += got;
        ra_progress_update(pr, *done);
    }
    if (got < 0) return err->code;
    return ra_writer_end(w, err);
}

static void check_regular_file(const char *path) {
    if (strcmp(path, "-") == 0)
        ra_usage_error("inputs must be files: '-' (stdin) cannot be read twice");
    struct stat st;
    if (stat(path, &st) != 0)
        ra_die(errno == ENOENT || errno == EACCES || errno == ENOTDIR ? EX_NOINPUT : EX_IOERR, "%s: cannot open: %s",
               path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        ra_die(EX_NOINPUT, "%s: not a regular file (inputs are read twice, so pipes cannot be merged)", path);
}

int main(int argc, char **argv) {
    ra_cli_init(argc, argv, "ra-merge", usage);
    const char *out = "-";
    int opt;
    opterr = 0;
    while ((opt = getopt(argc, argv, "o:q")) != -1) {
        if (opt == 'o') out = optarg;
        else if (opt == 'q') ra_progress_quiet = 1;
        else if (optopt == 'o') ra_usage_error("option -o needs a file name");
        else if (optopt) ra_usage_error("unknown option -%c", optopt);
        else ra_usage_error("unknown option %s", argv[optind - 1]);
    }
    int n_in = argc - optind;
    if (n_in < 2) ra_usage_error("need BASE and at least one PART");
    for (int i = 0; i < n_in; i++) check_regular_file(argv[optind + i]);

    ra_error err = {0};
    input *in = xcalloc((size_t)n_in, sizeof *in);
    for (int i = 0; i < n_in; i++) {
        in[i].path = argv[optind + i];
        if (index_input(&in[i], &err)) ra_die_error(&err);
    }

    /* compatibility, and the winner of every name */
    json_t *where = json_object(); /* name -> index into entries */
    int n_out = 0, replaced = 0;
    out_entry *entries = xcalloc(1, sizeof *entries);
    for (int i = 0; i < n_in; i++) {
        if (i > 0 && strcmp(in[i].kind, in[0].kind) != 0)
            ra_die(EX_DATAERR, "%s: kind '%s' differs from %s's kind '%s'", in[i].path, in[i].kind, in[0].path,
                   in[0].kind);
        if (i > 0 && check_compatible(&in[0], &in[i], &err)) ra_die_error(&err);
        entries = xrealloc(entries, (size_t)(n_out + in[i].n + 1) * sizeof *entries);
        for (int k = 0; k < in[i].n; k++) {
            const ra_tensor_info *t = &in[i].t[k];
            json_t *e = json_object_get(where, t->name);
            if (!e) {
                json_object_set_new_nocheck(where, t->name, json_integer(n_out));
                entries[n_out++] = (out_entry){i, k};
                continue;
            }
            out_entry *o = &entries[json_integer_value(e)];
            const ra_tensor_info *prev = &in[o->in].t[o->pos];
            if (!same_desc(prev, t)) {
                char a[200], b[200];
                describe(a, sizeof a, t);
                describe(b, sizeof b, prev);
                ra_die(EX_DATAERR, "%s: tensor '%s' is %s but %s has %s", in[i].path, t->name, a, in[o->in].path, b);
            }
            *o = (out_entry){i, k};
        }
    }

    for (int e = 0; e < in[0].n; e++) replaced += entries[e].in != 0; /* BASE's come first */
    json_t *inputs = json_array();
    int64_t total = 0;
    for (int i = 0; i < n_in; i++)
        json_array_append_new(inputs, json_pack("{s:s, s:s}", "path", in[i].path, "id", in[i].id));
    for (int e = 0; e < n_out; e++) total += (int64_t)in[entries[e].in].t[entries[e].pos].nbytes;
    json_t *prov = json_pack("{s:s, s:s, s:{}, s:o}", "tool", "ra-merge", "version", RA_VERSION, "params", "inputs",
                             inputs);

    ra_writer *w = ra_writer_open(out, in[0].kind, in[0].meta, prov, &err);
    if (!w) ra_die_error(&err);
    void *buf = xmalloc(COPY_CHUNK);
    ra_progress pr;
    ra_progress_start(&pr, "ra-merge", "B", total);
    int64_t done = 0;
    int rc = 0;
    for (int e = 0; e < n_out && !rc; e++) rc = copy_tensor(w, &in[entries[e].in], entries[e].pos, buf, &pr, &done, &err);
    for (int i = 0; i < n_in && !rc; i++) rc = finish_reader(&in[i], &err);
    if (rc) {
        ra_writer_abort(w);
        ra_die_error(&err);
    }
    char id[RA_CONTENT_ID_LEN + 1];
    if (ra_writer_close(w, id, &err)) ra_die_error(&err);
    ra_progress_finish(&pr, done);
    if (!ra_progress_quiet)
        fprintf(stderr, "ra-merge: %d tensors (%d replaced, %d added) from %d inputs, content id %s\n", n_out,
                replaced, n_out - in[0].n, n_in, id);

    for (int i = 0; i < n_in; i++) {
        free(in[i].kind);
        free(in[i].t);
        json_decref(in[i].meta);
    }
    free(in);
    free(entries);
    free(buf);
    json_decref(where);
    json_decref(prov);
    return 0;
}
