/* ra-show: inspect, verify and convert ra streams and Hugging Face checkpoints.
 *
 * Inputs: a ra stream (file or "-"), a Hugging Face directory (config.json +
 * model.safetensors or model.safetensors.index.json), or a .safetensors file.
 * Modes: a human summary (default), --json, --verify, --id, --hf-out DIR
 * (model stream → safetensors + config.json), --ra-out FILE (Hugging Face →
 * model stream).  Nothing is printed from a ra stream before its trailer
 * digest has been checked. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "atomic_file.h"
#include "cli.h"
#include "hf_config.h"
#include "safetensors.h"
#include "stream.h"

#define VALUES_DEFAULT_MAX 1000000 /* --json includes values of tensors up to this many elements */

static const char *USAGE =
    "Usage: ra-show [options] FILE|DIR\n"
    "Show a ra stream, a Hugging Face checkpoint directory or a .safetensors file.\n"
    "\n"
    "  --json          one JSON object: path, kind, version, meta, provenance, tensors\n"
    "                  (name, dtype, shape, bytes, values), content_id; values are\n"
    "                  included for tensors of at most 1,000,000 elements\n"
    "  --values        with --json: include the values of every tensor\n"
    "  --verify        check the stream's digest: exit 0 if it holds, 65 otherwise\n"
    "  --id            print the content id only (ra stream digest or checkpoint id)\n"
    "  --hf-out DIR    export a model stream as DIR/config.json + DIR/model.safetensors\n"
    "  --ra-out FILE   import a Hugging Face checkpoint as a model ra stream (- = stdout)\n"
    "  -o FILE         write the summary, JSON, id or verdict to FILE instead of stdout\n"
    "  -q              no progress or notes on stderr\n"
    "  --help, --version\n"
    "\n"
    "Exit status: 0 ok, 64 usage, 65 bad or corrupt input, 66 missing input, 74 I/O error.\n";

typedef enum { MODE_SUMMARY, MODE_JSON, MODE_VERIFY, MODE_ID, MODE_HF_OUT, MODE_RA_OUT } show_mode;

typedef struct options {
    show_mode mode;
    int all_values;
    int quiet;
    const char *input;
    const char *out_path; /* -o */
    const char *target;   /* --hf-out DIR / --ra-out FILE */
} options;

/* ------------------------------------------------------------------ output */

/* Results go to a temporary file first and reach stdout (or -o FILE) only once
 * the input has been read to its end and found sound. */
typedef struct output {
    FILE *f;
    ra_atomic_file af;
    int atomic;
} output;

/* An -o file still being written when the tool dies is removed at exit. */
static output *pending_output;
static void remove_pending_output(void) {
    if (pending_output) ra_atomic_abort(&pending_output->af);
}

static void output_open(output *o, const char *path) {
    memset(o, 0, sizeof *o);
    ra_error err = {0};
    if (path) {
        if (ra_atomic_open(&o->af, path, &err)) ra_die_error(&err);
        o->f = o->af.f;
        o->atomic = 1;
        pending_output = o;
        atexit(remove_pending_output);
    } else {
        o->f = tmpfile();
        if (!o->f) ra_die(EX_IOERR, "cannot create a temporary file: %s", strerror(errno));
    }
}

static void output_commit(output *o) {
    ra_error err = {0};
    if (o->atomic) {
        pending_output = NULL;
        if (ra_atomic_commit(&o->af, &err)) ra_die_error(&err);
        return;
    }
    char buf[1 << 16];
    size_t n;
    if (fflush(o->f) != 0 || fseek(o->f, 0, SEEK_SET) != 0) ra_die(EX_IOERR, "temporary file: %s", strerror(errno));
    while ((n = fread(buf, 1, sizeof buf, o->f)) > 0)
        if (fwrite(buf, 1, n, stdout) != n) ra_die(EX_IOERR, "stdout: %s", strerror(errno));
    fclose(o->f);
    if (fflush(stdout) != 0) ra_die(EX_IOERR, "stdout: %s", strerror(errno));
}

/* A JSON string literal (escaped). */
static void put_json_string(FILE *f, const char *s) {
    json_t *j = json_string(s);
    if (!j) { /* not valid UTF-8: jansson refuses it; escape bytewise instead */
        fputc('"', f);
        for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
            if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
            else if (*p < 0x20 || *p >= 0x7f) fprintf(f, "\\u%04x", *p);
            else fputc(*p, f);
        }
        fputc('"', f);
        return;
    }
    json_dumpf(j, f, JSON_ENCODE_ANY);
    json_decref(j);
}

static void put_json(FILE *f, const json_t *v, size_t flags) {
    if (!v) {
        fputs("null", f);
        return;
    }
    json_dumpf(v, f, JSON_ENCODE_ANY | JSON_PRESERVE_ORDER | flags);
}

/* Pretty JSON, each line indented by `indent` spaces after the first. */
static void put_json_block(FILE *f, const json_t *v, int indent) {
    char *s = v ? json_dumps(v, JSON_ENCODE_ANY | JSON_PRESERVE_ORDER | JSON_INDENT(2)) : xstrdup("null");
    for (char *p = s; *p; p++) {
        fputc(*p, f);
        if (*p == '\n') fprintf(f, "%*s", indent, "");
    }
    fputc('\n', f);
    free(s);
}

static void put_shape(FILE *f, int ndim, const int64_t *shape, const char *sep) {
    fputc('[', f);
    for (int d = 0; d < ndim; d++) fprintf(f, "%s%lld", d ? sep : "", (long long)shape[d]);
    fputc(']', f);
}

/* The shortest %g form that reads back as the same value (float when
 * single, else double); NaN and infinities as strings, which JSON lacks. */
static void put_float(FILE *f, double x, int single) {
    if (isnan(x)) {
        fputs("\"nan\"", f);
        return;
    }
    if (isinf(x)) {
        fputs(x > 0 ? "\"inf\"" : "\"-inf\"", f);
        return;
    }
    char buf[40];
    for (int digits = 1; digits <= 17; digits++) {
        snprintf(buf, sizeof buf, "%.*g", digits, x);
        double back = strtod(buf, NULL);
        if (single ? (float)back == (float)x : back == x) break;
    }
    fputs(buf, f);
}

/* Values as a flat JSON array in row-major order.  data may be unaligned
 * (safetensors offsets are not aligned), so elements are copied out. */
static void put_values_part(FILE *f, const void *data, ra_dtype dt, int64_t n, int first) {
    const unsigned char *p = data;
    size_t es = ra_dtype_size(dt);
    for (int64_t i = 0; i < n; i++) {
        const unsigned char *e = p + (size_t)i * es;
        if (i || !first) fputc(',', f);
        if (dt == RA_F64) {
            double d;
            memcpy(&d, e, 8);
            put_float(f, d, 0);
        } else if (dt == RA_I64) {
            int64_t v;
            memcpy(&v, e, 8);
            fprintf(f, "%lld", (long long)v);
        } else if (dt == RA_I32) {
            int32_t v;
            memcpy(&v, e, 4);
            fprintf(f, "%d", (int)v);
        } else if (dt == RA_U8) {
            fprintf(f, "%u", (unsigned)*e);
        } else {
            float x;
            ra_convert_to_f32(&x, e, dt, 1);
            put_float(f, x, 1);
        }
    }
}

static void put_values(FILE *f, const void *data, ra_dtype dt, int64_t n) {
    fputc('[', f);
    put_values_part(f, data, dt, n, 1);
    fputc(']', f);
}

/* {"name", "dtype", "shape", "bytes" — the caller closes the object, after
 * ", \"values\": [...]" when it has them. */
static void put_tensor_json_head(FILE *f, int first, const char *name, ra_dtype dt, int ndim, const int64_t *shape,
                                 uint64_t nbytes) {
    fputs(first ? "\n    {\"name\": " : ",\n    {\"name\": ", f);
    put_json_string(f, name);
    fprintf(f, ", \"dtype\": \"%s\", \"shape\": ", ra_dtype_name(dt));
    put_shape(f, ndim, shape, ", ");
    fprintf(f, ", \"bytes\": %llu", (unsigned long long)nbytes);
}

static void put_tensor_json(FILE *f, int first, const char *name, ra_dtype dt, int ndim, const int64_t *shape,
                            uint64_t nbytes, const void *values) {
    put_tensor_json_head(f, first, name, dt, ndim, shape, nbytes);
    if (values) {
        fputs(", \"values\": ", f);
        put_values(f, values, dt, ra_shape_numel(ndim, shape));
    }
    fputc('}', f);
}

/* Tensor data is copied and printed through a bounded buffer, so no tensor
 * has to fit in memory whole. */
#define COPY_CHUNK_BYTES ((uint64_t)64 << 20) /* a multiple of every element size */

/* The current tensor's values, read from the stream chunk by chunk. */
static void put_stream_values(FILE *f, ra_reader *r, const ra_tensor_info *info) {
    ra_error err = {0};
    uint64_t cap = info->nbytes < COPY_CHUNK_BYTES ? info->nbytes : COPY_CHUNK_BYTES;
    void *buf = xmalloc(cap ? (size_t)cap : 1);
    size_t es = ra_dtype_size(info->dtype);
    int first = 1;
    int64_t got;
    fputs(", \"values\": [", f);
    while ((got = ra_reader_read_chunk(r, buf, cap, &err)) > 0) {
        if ((uint64_t)got % es) ra_die(EX_SOFTWARE, "%s: chunk of %lld bytes splits an element", ra_reader_name(r),
                                       (long long)got);
        put_values_part(f, buf, info->dtype, got / (int64_t)es, first);
        first = 0;
    }
    if (got < 0) ra_die_error(&err);
    fputc(']', f);
    free(buf);
}

/* One row of the text table. */
typedef struct row {
    char *name;
    ra_dtype dtype;
    int ndim;
    int64_t shape[RA_MAX_DIMS];
    uint64_t nbytes;
} row;

static void put_table(FILE *f, const row *rows, int n) {
    int wn = 4, ws = 5;
    char shape[256];
    for (int i = 0; i < n; i++) {
        int l = (int)strlen(rows[i].name);
        if (l > wn) wn = l;
        FILE *m = fmemopen(shape, sizeof shape, "w");
        put_shape(m, rows[i].ndim, rows[i].shape, ", ");
        fclose(m);
        if ((int)strlen(shape) > ws) ws = (int)strlen(shape);
    }
    fprintf(f, "  %-*s  %-5s  %-*s  %s\n", wn, "name", "dtype", ws, "shape", "bytes");
    for (int i = 0; i < n; i++) {
        FILE *m = fmemopen(shape, sizeof shape, "w");
        put_shape(m, rows[i].ndim, rows[i].shape, ", ");
        fclose(m);
        fprintf(f, "  %-*s  %-5s  %-*s  %llu\n", wn, rows[i].name, ra_dtype_name(rows[i].dtype), ws, shape,
                (unsigned long long)rows[i].nbytes);
    }
}

static void put_totals(FILE *f, const row *rows, int n) {
    uint64_t elems = 0, bytes = 0;
    for (int i = 0; i < n; i++) {
        elems += (uint64_t)ra_shape_numel(rows[i].ndim, rows[i].shape);
        bytes += rows[i].nbytes;
    }
    fprintf(f, "total        %d tensors, %llu parameters, %llu bytes\n", n, (unsigned long long)elems,
            (unsigned long long)bytes);
}

/* ------------------------------------------------------------- ra streams */

static int want_values(const options *o, int64_t numel) { return o->all_values || numel <= VALUES_DEFAULT_MAX; }

/* Summary or JSON of a ra stream, printed once the digest holds. */
static void show_stream(const options *o) {
    ra_error err = {0};
    ra_reader *r = ra_reader_open(o->input, &err);
    if (!r) ra_die_error(&err);
    output out;
    output_open(&out, o->out_path);
    FILE *f = out.f;
    int json = o->mode == MODE_JSON;
    if (json) {
        fputs("{\n  \"path\": ", f);
        put_json_string(f, o->input);
        fputs(",\n  \"kind\": ", f);
        put_json_string(f, ra_reader_kind(r));
        fprintf(f, ",\n  \"version\": %d,\n  \"meta\": ", ra_reader_version(r));
        put_json(f, ra_reader_meta(r), JSON_COMPACT);
        fputs(",\n  \"provenance\": ", f);
        put_json(f, ra_reader_provenance(r), JSON_COMPACT);
        fputs(",\n  \"tensors\": [", f);
    }
    row *rows = NULL;
    int n = 0, rc;
    ra_tensor_info info;
    while ((rc = ra_reader_next(r, &info, &err)) == 1) {
        if (json) {
            put_tensor_json_head(f, n == 0, info.name, info.dtype, info.ndim, info.shape, info.nbytes);
            if (want_values(o, info.numel)) put_stream_values(f, r, &info);
            fputc('}', f);
        } else {
            rows = xrealloc(rows, (size_t)(n + 1) * sizeof *rows);
            rows[n] = (row){xstrdup(info.name), info.dtype, info.ndim, {0}, info.nbytes};
            memcpy(rows[n].shape, info.shape, sizeof info.shape);
        }
        n++;
    }
    if (rc < 0) ra_die_error(&err);
    const char *id = ra_reader_content_id(r);
    if (json) {
        fputs(n ? "\n  ],\n  \"content_id\": " : "],\n  \"content_id\": ", f);
        put_json_string(f, id);
        fputs("\n}\n", f);
    } else {
        fprintf(f, "path         %s\nkind         %s\nversion      %d\nmeta         ", o->input, ra_reader_kind(r),
                ra_reader_version(r));
        put_json_block(f, ra_reader_meta(r), 2);
        fputs("provenance   ", f);
        put_json_block(f, ra_reader_provenance(r), 2);
        fprintf(f, "tensors      %d\n", n);
        if (n) put_table(f, rows, n);
        put_totals(f, rows, n);
        fprintf(f, "records      %llu\n", (unsigned long long)ra_reader_record_count(r));
        fprintf(f, "content id   %s\n", id);
    }
    for (int i = 0; rows && i < n; i++) free(rows[i].name);
    free(rows);
    ra_reader_close(r);
    output_commit(&out);
}

/* ------------------------------------------------------ Hugging Face input */

static int is_dir(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static int looks_like_hf(const char *path) {
    return strcmp(path, "-") != 0 &&
           (is_dir(path) || ends_with(path, ".safetensors") || ends_with(path, ".safetensors.index.json"));
}

/* config.json of a checkpoint: DIR/config.json, or beside a file. */
static char *config_path_for(const char *path) {
    if (is_dir(path)) {
        size_t n = strlen(path) + 16;
        char *p = xmalloc(n);
        snprintf(p, n, "%s/config.json", path);
        return p;
    }
    const char *slash = strrchr(path, '/');
    size_t dl = slash ? (size_t)(slash - path + 1) : 0;
    char *p = xmalloc(dl + 16);
    snprintf(p, dl + 16, "%.*sconfig.json", (int)dl, path);
    return p;
}

/* Storage order: shard by shard, by offset within a shard.  Conversions keep
 * it, so a single-file checkpoint written in the reference layout comes back
 * byte-identical from HF → ra → HF. */
static int cmp_storage(const void *x, const void *y) {
    const st_tensor *a = *(const st_tensor *const *)x, *b = *(const st_tensor *const *)y;
    if (a->file != b->file) return a->file < b->file ? -1 : 1;
    if (a->data != b->data) return (const char *)a->data < (const char *)b->data ? -1 : 1;
    return strcmp(a->name, b->name);
}

static const st_tensor **ordered_tensors(const st_set *s) {
    const st_tensor **t = xmalloc((size_t)(s->n_tensors + 1) * sizeof *t);
    for (int i = 0; i < s->n_tensors; i++) t[i] = &s->tensors[i];
    qsort(t, (size_t)s->n_tensors, sizeof *t, cmp_storage);
    return t;
}

typedef struct hf_input {
    st_set *st;
    json_t *config_json; /* config.json as written, or NULL when there is none */
    char *config_text;   /* its bytes (for the content id) */
    size_t config_len;
    hf_config cfg;
    char *config_path;
} hf_input;

static int read_whole_file(const char *path, char **text, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    size_t cap = 1 << 16, n = 0;
    char *b = xmalloc(cap);
    size_t got;
    while ((got = fread(b + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) b = xrealloc(b, cap *= 2);
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(b);
        return -1;
    }
    *text = b;
    *len = n;
    return 0;
}

/* Open a checkpoint and its config.json (required unless optional_config). */
static void hf_open(const char *path, int optional_config, hf_input *in) {
    ra_error err = {0};
    memset(in, 0, sizeof *in);
    if (st_open(path, &in->st, &err)) ra_die_error(&err);
    in->config_path = config_path_for(path);
    if (access(in->config_path, F_OK) != 0) {
        if (optional_config) return;
        ra_die(EX_NOINPUT, "%s: no config.json (expected %s)", path, in->config_path);
    }
    if (read_whole_file(in->config_path, &in->config_text, &in->config_len) != 0)
        ra_die(errno == ENOENT ? EX_NOINPUT : EX_IOERR, "%s: %s", in->config_path, strerror(errno));
    json_error_t jerr;
    in->config_json = json_loadb(in->config_text, in->config_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!in->config_json)
        ra_die(EX_DATAERR, "%s: not valid JSON: %s (line %d, column %d)", in->config_path, jerr.text, jerr.line,
               jerr.column);
    if (hf_config_from_json(in->config_json, in->config_path, &in->cfg, &err)) ra_die_error(&err);
}

/* The checkpoint's content id (lib/model.h): config.json bytes + every tensor. */
static void hf_id(const hf_input *in, char id[RA_CONTENT_ID_LEN + 1]) {
    st_checkpoint_id(in->st, in->config_text, in->config_len, id);
}

static void hf_close(hf_input *in) {
    st_close(in->st);
    json_decref(in->config_json);
    free(in->config_text);
    free(in->config_path);
}

static void put_config_summary(FILE *f, const hf_input *in) {
    const hf_config *c = &in->cfg;
    if (!in->config_json) {
        fputs("config       none (no config.json beside the file)\n", f);
        return;
    }
    fprintf(f, "model_type   %s\n", c->model_type);
    fprintf(f, "layers       %d\n", c->num_layers);
    fprintf(f, "hidden       %d (intermediate %d)\n", c->hidden_size, c->intermediate_size);
    fprintf(f, "heads        %d query, %d key/value, head_dim %d\n", c->num_heads, c->num_kv_heads, c->head_dim);
    fprintf(f, "vocab        %d\n", c->vocab_size);
    if (c->rope_type == RA_ROPE_LLAMA3)
        fprintf(f,
                "rope         llama3, theta %g, factor %g, low_freq_factor %g, high_freq_factor %g, "
                "original_max_position_embeddings %d\n",
                c->rope_theta, c->rope_factor, c->rope_low_freq_factor, c->rope_high_freq_factor,
                c->rope_original_max_position_embeddings);
    else fprintf(f, "rope         default, theta %g\n", c->rope_theta);
    fprintf(f, "rms_norm_eps %g\n", c->rms_norm_eps);
    fprintf(f, "tied         %s\n", c->tie_word_embeddings ? "yes" : "no");
    fprintf(f, "biases       q/k/v %s, o %s\n", c->qkv_bias ? "yes" : "no", c->o_bias ? "yes" : "no");
}

static void show_hf(const options *o) {
    hf_input in;
    hf_open(o->input, 1, &in);
    const st_tensor **t = ordered_tensors(in.st);
    int n = in.st->n_tensors;
    output out;
    output_open(&out, o->out_path);
    FILE *f = out.f;
    if (o->mode == MODE_JSON) {
        fputs("{\n  \"path\": ", f);
        put_json_string(f, o->input);
        fputs(",\n  \"kind\": \"hf\",\n  \"version\": null,\n  \"meta\": {\"config\": ", f);
        put_json(f, in.config_json, JSON_COMPACT);
        fputs(", \"metadata\": ", f);
        put_json(f, in.st->metadata, JSON_COMPACT);
        fputs("},\n  \"provenance\": null,\n  \"tensors\": [", f);
        for (int i = 0; i < n; i++) {
            int64_t numel = ra_shape_numel(t[i]->ndim, t[i]->shape);
            put_tensor_json(f, i == 0, t[i]->name, t[i]->dtype, t[i]->ndim, t[i]->shape, t[i]->nbytes,
                            want_values(o, numel) ? t[i]->data : NULL);
        }
        char id[RA_CONTENT_ID_LEN + 1];
        hf_id(&in, id);
        fprintf(f, "%s  \"content_id\": \"%s\"\n}\n", n ? "\n  ],\n" : "],\n", id);
    } else {
        fprintf(f, "path         %s\n", o->input);
        fprintf(f, "format       safetensors, %d file%s\n", in.st->n_files, in.st->n_files == 1 ? "" : "s");
        put_config_summary(f, &in);
        row *rows = xcalloc((size_t)n + 1, sizeof *rows);
        for (int i = 0; i < n; i++) {
            rows[i] = (row){t[i]->name, t[i]->dtype, t[i]->ndim, {0}, t[i]->nbytes};
            memcpy(rows[i].shape, t[i]->shape, sizeof t[i]->shape);
        }
        fprintf(f, "tensors      %d\n", n);
        if (n) put_table(f, rows, n);
        put_totals(f, rows, n);
        free(rows);
    }
    free(t);
    hf_close(&in);
    output_commit(&out);
}

/* ------------------------------------------------------------ conversions */

/* Hugging Face checkpoint → model ra stream, same names, dtypes and bytes. */
static void hf_to_ra(const options *o) {
    hf_input in;
    hf_open(o->input, 0, &in);
    ra_error err = {0};
    json_t *meta = json_pack("{soss}", "config", hf_config_to_json(&in.cfg), "source", "hf");
    char in_id[RA_CONTENT_ID_LEN + 1];
    hf_id(&in, in_id);
    json_t *prov = json_pack("{sssss{}s[{ssss}]}", "tool", "ra-show", "version", RA_VERSION, "params", "inputs",
                             "path", o->input, "id", in_id);
    ra_writer *w = ra_writer_open(o->target, "model", meta, prov, &err);
    json_decref(meta);
    json_decref(prov);
    if (!w) ra_die_error(&err);
    const st_tensor **t = ordered_tensors(in.st);
    ra_progress p;
    ra_progress_start(&p, "ra-show: tensors", "tensors", in.st->n_tensors);
    for (int i = 0; i < in.st->n_tensors; i++) {
        if (ra_writer_tensor(w, t[i]->name, t[i]->dtype, t[i]->ndim, t[i]->shape, t[i]->data, &err)) {
            ra_writer_abort(w);
            ra_die_error(&err);
        }
        ra_progress_update(&p, i + 1);
    }
    char id[RA_CONTENT_ID_LEN + 1];
    if (ra_writer_close(w, id, &err)) ra_die_error(&err);
    ra_progress_finish(&p, in.st->n_tensors);
    if (!o->quiet)
        fprintf(stderr, "ra-show: wrote %s: %d tensors, content id %s\n", o->target, in.st->n_tensors, id);
    free(t);
    hf_close(&in);
}

/* The config.json of an exported model: meta.config, plus meta.hybrid as "ra_hybrid". */
static json_t *export_config(ra_reader *r) {
    const json_t *meta = ra_reader_meta(r);
    const json_t *cfg = json_object_get(meta, "config");
    ra_error err = {0};
    hf_config c;
    if (!json_is_object(cfg))
        ra_die(EX_DATAERR, "%s: model stream has no meta.config object (expected the config.json object)",
               ra_reader_name(r));
    if (hf_config_from_json(cfg, ra_reader_name(r), &c, &err)) {
        ra_error_prefix(&err, "meta.config");
        ra_die_error(&err);
    }
    json_t *out = json_deep_copy(cfg);
    const json_t *hybrid = json_object_get(meta, "hybrid");
    if (hybrid && !json_is_null(hybrid)) json_object_set(out, "ra_hybrid", (json_t *)hybrid);
    return out;
}

static ra_reader *open_model_stream(const char *path) {
    ra_error err = {0};
    ra_reader *r = ra_reader_open(path, &err);
    if (!r) ra_die_error(&err);
    if (strcmp(ra_reader_kind(r), "model") != 0)
        ra_die(EX_DATAERR, "%s: a '%s' stream, --hf-out needs a 'model' stream", path, ra_reader_kind(r));
    return r;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Model ra stream → DIR/model.safetensors + DIR/config.json.  A file input
 * is read twice (shapes first: the safetensors header precedes the data), so
 * the model never has to fit in memory; stdin is read once into memory. */
static void ra_to_hf(const options *o) {
    ra_error err = {0};
    const char *dir = o->target;
    size_t dl = strlen(dir) + 40;
    char *st_path = xmalloc(dl), *cfg_path = xmalloc(dl), *index_path = xmalloc(dl);
    snprintf(st_path, dl, "%s/model.safetensors", dir);
    snprintf(cfg_path, dl, "%s/config.json", dir);
    snprintf(index_path, dl, "%s/model.safetensors.index.json", dir);
    if (access(index_path, F_OK) == 0)
        ra_die(EX_USAGE, "%s already holds model.safetensors.index.json, which loaders would prefer to the "
                         "exported model.safetensors; remove it or choose another directory", dir);

    /* Pass 1: kind, config, tensor list; the digest is checked at the end. */
    ra_reader *r = open_model_stream(o->input);
    json_t *config = export_config(r);
    int stdin_input = strcmp(o->input, "-") == 0;
    st_write_tensor *w = NULL;
    void **held = NULL; /* stdin: the data, kept from the single pass */
    int n = 0, rc;
    ra_tensor_info info;
    while ((rc = ra_reader_next(r, &info, &err)) == 1) {
        w = xrealloc(w, (size_t)(n + 1) * sizeof *w);
        held = xrealloc(held, (size_t)(n + 1) * sizeof *held);
        int64_t *shape = xmalloc(sizeof info.shape);
        memcpy(shape, info.shape, sizeof info.shape);
        w[n] = (st_write_tensor){xstrdup(info.name), info.dtype, info.ndim, shape, NULL};
        held[n] = NULL;
        if (stdin_input) {
            held[n] = xmalloc(info.nbytes ? (size_t)info.nbytes : 1);
            if (ra_reader_read(r, held[n], info.nbytes, &err)) ra_die_error(&err);
            w[n].data = held[n];
        }
        n++;
    }
    if (rc < 0) ra_die_error(&err);
    ra_reader_close(r);
    char **names = xmalloc((size_t)(n + 1) * sizeof *names);
    for (int i = 0; i < n; i++) names[i] = (char *)w[i].name;
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    for (int i = 1; i < n; i++)
        if (!strcmp(names[i], names[i - 1]))
            ra_die(EX_DATAERR, "%s: tensor '%s' appears twice; safetensors names must be unique", o->input, names[i]);
    free(names);

    if (mkdir(dir, 0777) != 0 && errno != EEXIST) ra_die(EX_CANTCREAT, "%s: %s", dir, strerror(errno));
    if (!is_dir(dir)) ra_die(EX_CANTCREAT, "%s: not a directory", dir);
    json_t *st_meta = json_pack("{ss}", "format", "pt"); /* transformers requires format "pt" */
    ra_progress p;
    ra_progress_start(&p, "ra-show: tensors", "tensors", n);
    if (stdin_input) {
        if (st_write(st_path, w, n, st_meta, &err)) ra_die_error(&err);
    } else {
        /* Pass 2: copy the data; commit only after the digest holds again. */
        st_writer *sw = st_writer_open(st_path, w, n, st_meta, &err);
        if (!sw) ra_die_error(&err);
        r = open_model_stream(o->input);
        void *buf = xmalloc((size_t)COPY_CHUNK_BYTES);
        int i = 0;
        while ((rc = ra_reader_next(r, &info, &err)) == 1) {
            if (i >= n || strcmp(info.name, w[i].name) != 0 || info.nbytes != (uint64_t)ra_shape_numel(
                    w[i].ndim, w[i].shape) * ra_dtype_size(w[i].dtype)) {
                st_writer_abort(sw);
                ra_die(EX_DATAERR, "%s: changed while it was being read", o->input);
            }
            int64_t got;
            while ((got = ra_reader_read_chunk(r, buf, COPY_CHUNK_BYTES, &err)) > 0)
                if (st_writer_data(sw, buf, (uint64_t)got, &err)) ra_die_error(&err); /* the writer is gone */
            if (got < 0) {
                st_writer_abort(sw);
                ra_die_error(&err);
            }
            ra_progress_update(&p, ++i);
        }
        free(buf);
        if (rc < 0 || i != n) {
            st_writer_abort(sw);
            if (rc < 0) ra_die_error(&err);
            ra_die(EX_DATAERR, "%s: changed while it was being read", o->input);
        }
        ra_reader_close(r);
        if (st_writer_close(sw, &err)) ra_die_error(&err);
    }
    ra_progress_finish(&p, n);

    char *text = json_dumps(config, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    size_t tl = strlen(text);
    text = xrealloc(text, tl + 2);
    text[tl] = '\n';
    if (ra_write_file_atomic(cfg_path, text, tl + 1, &err)) ra_die_error(&err);
    if (!o->quiet) fprintf(stderr, "ra-show: wrote %s and %s (%d tensors)\n", cfg_path, st_path, n);
    free(text);
    json_decref(config);
    json_decref(st_meta);
    for (int i = 0; i < n; i++) {
        free((char *)w[i].name);
        free((int64_t *)w[i].shape);
        free(held[i]);
    }
    free(w);
    free(held);
    free(st_path);
    free(cfg_path);
    free(index_path);
}

/* ------------------------------------------------------ verify and id */

static void print_result(const options *o, const char *line) {
    output out;
    output_open(&out, o->out_path);
    fputs(line, out.f);
    output_commit(&out);
}

static void verify_or_id(const options *o, int hf) {
    ra_error err = {0};
    char line[PATH_MAX + 128];
    if (hf) {
        /* No digest to check: --verify validates every header and the config;
         * --id is the checkpoint id lib/model.h defines. */
        hf_input in;
        hf_open(o->input, 1, &in);
        if (o->mode == MODE_ID) {
            char id[RA_CONTENT_ID_LEN + 1];
            hf_id(&in, id);
            snprintf(line, sizeof line, "%s\n", id);
        } else {
            snprintf(line, sizeof line, "%s: ok (%d tensors in %d file%s; safetensors carry no digest)\n", o->input,
                     in.st->n_tensors, in.st->n_files, in.st->n_files == 1 ? "" : "s");
        }
        hf_close(&in);
        print_result(o, line);
        return;
    }
    char id[RA_CONTENT_ID_LEN + 1];
    if (ra_verify(o->input, id, &err)) {
        if (o->mode == MODE_VERIFY && err.code != EX_NOINPUT && err.code != EX_IOERR) err.code = EX_DATAERR;
        ra_die_error(&err);
    }
    if (o->mode == MODE_ID) snprintf(line, sizeof line, "%s\n", id);
    else snprintf(line, sizeof line, "%s: ok, content id %s\n", o->input, id);
    print_result(o, line);
}

/* ------------------------------------------------------------------- main */

static void set_mode(options *o, show_mode m, const char *flag) {
    if (o->mode != MODE_SUMMARY && o->mode != m) ra_usage_error("%s cannot be combined with another mode", flag);
    o->mode = m;
}

int main(int argc, char **argv) {
    ra_cli_init(argc, argv, "ra-show", USAGE);
    options o = {0};
    int only_positional = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!only_positional && a[0] == '-' && a[1]) {
            if (!strcmp(a, "--")) only_positional = 1;
            else if (!strcmp(a, "--json")) set_mode(&o, MODE_JSON, a);
            else if (!strcmp(a, "--values")) o.all_values = 1;
            else if (!strcmp(a, "--verify")) set_mode(&o, MODE_VERIFY, a);
            else if (!strcmp(a, "--id")) set_mode(&o, MODE_ID, a);
            else if (!strcmp(a, "-q")) o.quiet = 1;
            else if (!strcmp(a, "--hf-out") || !strcmp(a, "--ra-out") || !strcmp(a, "-o")) {
                if (i + 1 >= argc) ra_usage_error("%s needs a value", a);
                if (!strcmp(a, "-o")) o.out_path = argv[++i];
                else {
                    set_mode(&o, a[2] == 'h' ? MODE_HF_OUT : MODE_RA_OUT, a);
                    o.target = argv[++i];
                }
            } else ra_usage_error("unknown option '%s'", a);
            continue;
        }
        if (o.input) ra_usage_error("one input expected, got '%s' and '%s'", o.input, a);
        o.input = a;
    }
    if (!o.input) ra_usage_error("no input (a ra stream, a Hugging Face directory or a .safetensors file)");
    if (o.all_values && o.mode != MODE_JSON) ra_usage_error("--values needs --json");
    if (o.out_path && (o.mode == MODE_HF_OUT || o.mode == MODE_RA_OUT))
        ra_usage_error("-o does not apply to --hf-out or --ra-out");
    ra_progress_quiet = o.quiet;

    int hf = looks_like_hf(o.input);
    if (!hf && strcmp(o.input, "-") != 0 && access(o.input, F_OK) != 0)
        ra_die(EX_NOINPUT, "%s: %s", o.input, strerror(errno));
    /* A .safetensors file under another name: take it as one if it parses as one. */
    if (!hf && strcmp(o.input, "-") != 0) {
        ra_error err = {0};
        ra_reader *r = ra_reader_open(o.input, &err);
        if (r) ra_reader_close(r);
        else if (err.code == EX_DATAERR) {
            st_set *s;
            ra_error e2 = {0};
            if (st_open(o.input, &s, &e2) == 0) {
                st_close(s);
                hf = 1;
            }
        }
    }

    switch (o.mode) {
    case MODE_SUMMARY:
    case MODE_JSON:
        if (hf) show_hf(&o);
        else show_stream(&o);
        break;
    case MODE_VERIFY:
    case MODE_ID: verify_or_id(&o, hf); break;
    case MODE_HF_OUT:
        if (hf) ra_die(EX_DATAERR, "%s: --hf-out needs a model ra stream, not a Hugging Face checkpoint", o.input);
        ra_to_hf(&o);
        break;
    case MODE_RA_OUT:
        if (!hf) ra_die(EX_DATAERR, "%s: --ra-out needs a Hugging Face checkpoint (directory or .safetensors)", o.input);
        hf_to_ra(&o);
        break;
    }
    return 0;
}
