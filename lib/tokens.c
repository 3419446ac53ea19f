/* Tokens streams (formats/tokens.md): the builder that spools documents and
 * writes either layout, and the readers. */
#include "tokens.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "stream.h"

#define CHUNK_TOKENS ((int64_t)1 << 20)

/* ---------------------------------------------------------------- tokenizer meta */

json_t *ra_tokens_tokenizer_json(const ra_tokens_tokenizer *tok) {
    return json_pack("{s:s, s:I, s:o, s:o}", "id", tok->id, "vocab_size", (json_int_t)tok->vocab_size, "bos_id",
                     tok->bos_id >= 0 ? json_integer(tok->bos_id) : json_null(), "eos_id",
                     tok->eos_id >= 0 ? json_integer(tok->eos_id) : json_null());
}

static int optional_id(const json_t *o, const char *key, int32_t *out, const char *name, ra_error *err) {
    const json_t *v = json_object_get(o, key);
    *out = -1;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX)
        return ra_fail(err, EX_DATAERR, "%s: meta.tokenizer.%s: expected a token id or null", name, key);
    *out = (int32_t)json_integer_value(v);
    return 0;
}

int ra_tokens_tokenizer_parse(const json_t *meta, ra_tokens_tokenizer *tok, const char *name, ra_error *err) {
    memset(tok, 0, sizeof *tok);
    tok->bos_id = tok->eos_id = -1;
    const json_t *o = json_object_get(meta, "tokenizer");
    if (!o || json_is_null(o)) return 0;
    const json_t *id = json_object_get(o, "id"), *vs = json_object_get(o, "vocab_size");
    if (!json_is_object(o) || !json_is_string(id) || json_string_length(id) != 32)
        return ra_fail(err, EX_DATAERR, "%s: meta.tokenizer.id: expected 32 hex characters", name);
    if (!json_is_integer(vs) || json_integer_value(vs) < 1)
        return ra_fail(err, EX_DATAERR, "%s: meta.tokenizer.vocab_size: expected a positive integer", name);
    tok->present = 1;
    memcpy(tok->id, json_string_value(id), 33);
    tok->vocab_size = json_integer_value(vs);
    if (optional_id(o, "bos_id", &tok->bos_id, name, err) || optional_id(o, "eos_id", &tok->eos_id, name, err))
        return EX_DATAERR;
    return 0;
}

/* ---------------------------------------------------------------- builder */

struct ra_tokens_builder {
    FILE *spool; /* i32 tokens of every document, in order (unlinked file) */
    int64_t *doc_len;
    int64_t n_docs, cap_docs, n_tokens;
};

ra_tokens_builder *ra_tokens_builder_new(ra_error *err) {
    const char *dir = getenv("TMPDIR");
    if (!dir || !*dir) dir = "/tmp";
    size_t n = strlen(dir) + 32;
    char *path = xmalloc(n);
    snprintf(path, n, "%s/ra-tokens.XXXXXX", dir);
    int fd = mkstemp(path);
    if (fd < 0) {
        ra_fail(err, EX_CANTCREAT, "%s: cannot create a temporary file: %s", path, strerror(errno));
        free(path);
        return NULL;
    }
    unlink(path);
    free(path);
    ra_tokens_builder *b = xcalloc(1, sizeof *b);
    b->spool = fdopen(fd, "w+b");
    if (!b->spool) {
        close(fd);
        free(b);
        ra_fail(err, EX_OSERR, "fdopen: %s", strerror(errno));
        return NULL;
    }
    return b;
}

int ra_tokens_builder_add(ra_tokens_builder *b, const int32_t *ids, int64_t n, ra_error *err) {
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0)
            return ra_fail(err, EX_DATAERR, "document %" PRId64 ": token %" PRId64 " is %d, expected >= 0",
                           b->n_docs, i, ids[i]);
    if (n && fwrite(ids, sizeof *ids, (size_t)n, b->spool) != (size_t)n)
        return ra_fail(err, EX_IOERR, "temporary token file: write failed: %s", strerror(errno));
    if (b->n_docs == b->cap_docs) {
        b->cap_docs = b->cap_docs ? 2 * b->cap_docs : 1024;
        b->doc_len = xrealloc(b->doc_len, (size_t)b->cap_docs * sizeof *b->doc_len);
    }
    b->doc_len[b->n_docs++] = n;
    b->n_tokens += n;
    return 0;
}

int64_t ra_tokens_builder_docs(const ra_tokens_builder *b) { return b->n_docs; }
int64_t ra_tokens_builder_tokens(const ra_tokens_builder *b) { return b->n_tokens; }

void ra_tokens_builder_free(ra_tokens_builder *b) {
    if (!b) return;
    if (b->spool) fclose(b->spool);
    free(b->doc_len);
    free(b);
}

static int spool_rewind(ra_tokens_builder *b, ra_error *err) {
    if (fflush(b->spool) != 0 || fseeko(b->spool, 0, SEEK_SET) != 0)
        return ra_fail(err, EX_IOERR, "temporary token file: %s", strerror(errno));
    return 0;
}

static int spool_read(ra_tokens_builder *b, int32_t *dst, int64_t n, ra_error *err) {
    if (n && fread(dst, sizeof *dst, (size_t)n, b->spool) != (size_t)n)
        return ra_fail(err, EX_IOERR, "temporary token file: short read");
    return 0;
}

static json_t *base_meta(const char *layout, const ra_tokens_tokenizer *tok, const json_t *extra) {
    json_t *meta = json_object();
    if (extra) json_object_update(meta, (json_t *)extra);
    json_object_set_new(meta, "layout", json_string(layout));
    if (tok && tok->present) json_object_set_new(meta, "tokenizer", ra_tokens_tokenizer_json(tok));
    return meta;
}

static int finish(ra_writer *w, ra_tokens_summary *sum, ra_error *err) {
    char id[RA_CONTENT_ID_LEN + 1];
    int r = ra_writer_close(w, id, err);
    if (!r && sum) memcpy(sum->content_id, id, sizeof sum->content_id);
    return r;
}

int ra_tokens_write_documents(ra_tokens_builder *b, const char *path, const ra_tokens_tokenizer *tok,
                              const json_t *extra_meta, const json_t *provenance, ra_tokens_summary *sum,
                              ra_error *err) {
    if (spool_rewind(b, err)) return err->code;
    json_t *meta = base_meta("documents", tok, extra_meta);
    json_object_set_new(meta, "n_docs", json_integer(b->n_docs));
    json_object_set_new(meta, "n_tokens", json_integer(b->n_tokens));
    ra_writer *w = ra_writer_open(path, RA_TOKENS_KIND, meta, provenance, err);
    json_decref(meta);
    if (!w) return err->code;
    int32_t *buf = xmalloc(CHUNK_TOKENS * sizeof *buf);
    int r = 0;
    for (int64_t d = 0; d < b->n_docs && !r; d++) {
        char name[32];
        snprintf(name, sizeof name, "doc/%" PRId64, d);
        int64_t shape[1] = {b->doc_len[d]};
        r = ra_writer_begin(w, name, RA_I32, 1, shape, err);
        for (int64_t done = 0; !r && done < b->doc_len[d]; done += CHUNK_TOKENS) {
            int64_t k = b->doc_len[d] - done < CHUNK_TOKENS ? b->doc_len[d] - done : CHUNK_TOKENS;
            r = spool_read(b, buf, k, err);
            if (!r) r = ra_writer_data(w, buf, (uint64_t)k * sizeof *buf, err);
        }
        if (!r) r = ra_writer_end(w, err);
    }
    free(buf);
    if (r) {
        ra_writer_abort(w);
        return r;
    }
    if (sum) {
        memset(sum, 0, sizeof *sum);
        sum->n_docs = b->n_docs;
        sum->n_tokens = b->n_tokens;
    }
    return finish(w, sum, err);
}

/* The starts of rows [row0, row0 + nrows): 1 at every row start, at every
 * non-empty document's first token, and at the first pad position. */
static void fill_starts(const ra_tokens_builder *b, int64_t seq_len, int64_t row0, int64_t nrows, int64_t pad_from,
                        int64_t *doc, int64_t *doc_pos, uint8_t *out) {
    int64_t lo = row0 * seq_len, hi = (row0 + nrows) * seq_len;
    memset(out, 0, (size_t)(hi - lo));
    for (int64_t r = 0; r < nrows; r++) out[r * seq_len] = 1;
    while (*doc < b->n_docs && *doc_pos < hi) {
        if (b->doc_len[*doc] > 0 && *doc_pos >= lo) out[*doc_pos - lo] = 1;
        *doc_pos += b->doc_len[*doc];
        (*doc)++;
    }
    if (pad_from >= lo && pad_from < hi) out[pad_from - lo] = 1;
}

int ra_tokens_write_packed(ra_tokens_builder *b, const char *path, const ra_tokens_tokenizer *tok,
                           int64_t seq_len, int32_t pad_id, const json_t *extra_meta,
                           const json_t *provenance, ra_tokens_summary *sum, ra_error *err) {
    if (seq_len < 1) return ra_fail(err, EX_USAGE, "packed layout: seq_len must be >= 1, got %" PRId64, seq_len);
    if (spool_rewind(b, err)) return err->code;
    int64_t total = b->n_tokens;
    int64_t rows = pad_id >= 0 ? (total + seq_len - 1) / seq_len : total / seq_len;
    int64_t stored = rows * seq_len < total ? rows * seq_len : total;
    int64_t n_pad = rows * seq_len - stored, dropped = total - stored;
    json_t *meta = base_meta("packed", tok, extra_meta);
    json_object_set_new(meta, "seq_len", json_integer(seq_len));
    json_object_set_new(meta, "n_rows", json_integer(rows));
    json_object_set_new(meta, "n_docs", json_integer(b->n_docs));
    json_object_set_new(meta, "n_tokens", json_integer(stored));
    json_object_set_new(meta, "n_dropped_tokens", json_integer(dropped));
    json_object_set_new(meta, "pad_id", pad_id >= 0 ? json_integer(pad_id) : json_null());
    json_object_set_new(meta, "n_pad", json_integer(n_pad));
    ra_writer *w = ra_writer_open(path, RA_TOKENS_KIND, meta, provenance, err);
    json_decref(meta);
    if (!w) return err->code;

    int64_t shape[2] = {rows, seq_len};
    int64_t rows_per_chunk = CHUNK_TOKENS / seq_len > 0 ? CHUNK_TOKENS / seq_len : 1;
    int32_t *buf = xmalloc((size_t)(rows_per_chunk * seq_len) * sizeof *buf);
    int r = ra_writer_begin(w, "tokens", RA_I32, 2, shape, err);
    for (int64_t row = 0; !r && row < rows; row += rows_per_chunk) {
        int64_t nr = rows - row < rows_per_chunk ? rows - row : rows_per_chunk;
        int64_t lo = row * seq_len, n = nr * seq_len;
        int64_t real = stored - lo < n ? stored - lo : n;
        r = spool_read(b, buf, real, err);
        for (int64_t i = real; i < n; i++) buf[i] = pad_id;
        if (!r) r = ra_writer_data(w, buf, (uint64_t)n * sizeof *buf, err);
    }
    if (!r) r = ra_writer_end(w, err);
    if (!r) r = ra_writer_begin(w, "starts", RA_U8, 2, shape, err);
    int64_t doc = 0, doc_pos = 0;
    for (int64_t row = 0; !r && row < rows; row += rows_per_chunk) {
        int64_t nr = rows - row < rows_per_chunk ? rows - row : rows_per_chunk;
        fill_starts(b, seq_len, row, nr, n_pad ? stored : -1, &doc, &doc_pos, (uint8_t *)buf);
        r = ra_writer_data(w, buf, (uint64_t)(nr * seq_len), err);
    }
    if (!r) r = ra_writer_end(w, err);
    free(buf);
    if (r) {
        ra_writer_abort(w);
        return r;
    }
    if (sum) {
        memset(sum, 0, sizeof *sum);
        sum->n_docs = b->n_docs;
        sum->n_tokens = stored;
        sum->n_rows = rows;
        sum->n_pad = n_pad;
        sum->n_dropped = dropped;
    }
    return finish(w, sum, err);
}

/* ---------------------------------------------------------------- loading */

static int meta_int(const json_t *meta, const char *key, int64_t min, int64_t *out, const char *name,
                    ra_error *err) {
    const json_t *v = json_object_get(meta, key);
    if (!json_is_integer(v) || json_integer_value(v) < min)
        return ra_fail(err, EX_DATAERR, "%s: meta.%s: expected an integer >= %" PRId64, name, key, min);
    *out = json_integer_value(v);
    return 0;
}

/* Open a tokens stream and check its header. */
static ra_reader *open_tokens(const char *path, int *packed, ra_tokens_tokenizer *tok, ra_error *err) {
    ra_reader *r = ra_reader_open(path, err);
    if (!r) return NULL;
    const char *name = ra_reader_name(r);
    const json_t *meta = ra_reader_meta(r);
    const char *layout = json_string_value(json_object_get(meta, "layout"));
    if (strcmp(ra_reader_kind(r), RA_TOKENS_KIND) != 0) {
        ra_fail(err, EX_DATAERR, "%s: stream kind is '%s', expected 'tokens'", name, ra_reader_kind(r));
    } else if (!layout || (strcmp(layout, "documents") != 0 && strcmp(layout, "packed") != 0)) {
        ra_fail(err, EX_DATAERR, "%s: meta.layout: expected \"documents\" or \"packed\"", name);
    } else if (!ra_tokens_tokenizer_parse(meta, tok, name, err)) {
        *packed = strcmp(layout, "packed") == 0;
        return r;
    }
    ra_reader_close(r);
    return NULL;
}

static int check_ids(const char *name, const char *where, const int32_t *ids, int64_t n, int64_t vocab,
                     ra_error *err) {
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < 0)
            return ra_fail(err, EX_DATAERR, "%s: %s: token %" PRId64 " is %d, expected >= 0", name, where, i, ids[i]);
        if (vocab > 0 && ids[i] >= vocab)
            return ra_fail(err, EX_DATAERR, "%s: %s: token %" PRId64 " is %d, expected < vocab size %" PRId64, name,
                           where, i, ids[i], vocab);
    }
    return 0;
}

static int load_documents(ra_reader *r, ra_tokens *t, ra_error *err) {
    const char *name = t->name;
    int64_t want_docs, want_tokens;
    if (meta_int(t->meta, "n_docs", 0, &want_docs, name, err) || meta_int(t->meta, "n_tokens", 0, &want_tokens, name, err))
        return EX_DATAERR;
    int64_t cap_docs = 1024, cap_ids = 4096;
    t->doc_start = xmalloc((size_t)(cap_docs + 1) * sizeof *t->doc_start);
    t->ids = xmalloc((size_t)cap_ids * sizeof *t->ids);
    t->doc_start[0] = 0;
    ra_tensor_info info;
    int rc;
    while ((rc = ra_reader_next(r, &info, err)) == 1) {
        char want[32];
        snprintf(want, sizeof want, "doc/%" PRId64, t->n_docs);
        if (strcmp(info.name, want) != 0)
            return ra_fail(err, EX_DATAERR, "%s: tensor '%s': expected '%s' (documents in order)", name, info.name, want);
        if (info.dtype != RA_I32 || info.ndim != 1)
            return ra_fail(err, EX_DATAERR, "%s: tensor '%s': expected a 1-D i32 tensor", name, info.name);
        int64_t n = info.shape[0];
        if (t->n_docs == cap_docs) {
            cap_docs *= 2;
            t->doc_start = xrealloc(t->doc_start, (size_t)(cap_docs + 1) * sizeof *t->doc_start);
        }
        int64_t at = t->doc_start[t->n_docs];
        if (at + n > cap_ids) {
            while (at + n > cap_ids) cap_ids *= 2;
            t->ids = xrealloc(t->ids, (size_t)cap_ids * sizeof *t->ids);
        }
        if (ra_reader_read(r, t->ids + at, (uint64_t)n * sizeof *t->ids, err)) return err->code;
        if (check_ids(name, info.name, t->ids + at, n, t->tok.present ? t->tok.vocab_size : 0, err)) return EX_DATAERR;
        t->doc_start[++t->n_docs] = at + n;
    }
    if (rc < 0) return err->code;
    t->n_tokens = t->doc_start[t->n_docs];
    if (t->n_docs != want_docs || t->n_tokens != want_tokens)
        return ra_fail(err, EX_DATAERR, "%s: %" PRId64 " documents of %" PRId64 " tokens, but meta says %" PRId64 " and %" PRId64,
                       name, t->n_docs, t->n_tokens, want_docs, want_tokens);
    return 0;
}

static int load_packed(ra_reader *r, ra_tokens *t, ra_error *err) {
    const char *name = t->name;
    if (meta_int(t->meta, "seq_len", 1, &t->seq_len, name, err) || meta_int(t->meta, "n_rows", 0, &t->n_rows, name, err) ||
        meta_int(t->meta, "n_docs", 0, &t->n_docs, name, err) || meta_int(t->meta, "n_tokens", 0, &t->n_tokens, name, err))
        return EX_DATAERR;
    const json_t *pad = json_object_get(t->meta, "pad_id");
    t->pad_id = json_is_integer(pad) ? (int32_t)json_integer_value(pad) : -1;
    if (t->n_rows > INT64_MAX / t->seq_len / 4) return ra_fail(err, EX_DATAERR, "%s: meta: n_rows * seq_len is too large", name);
    int64_t numel = t->n_rows * t->seq_len;
    ra_tensor_info info;
    int rc;
    while ((rc = ra_reader_next(r, &info, err)) == 1) {
        int is_tokens = strcmp(info.name, "tokens") == 0, is_starts = strcmp(info.name, "starts") == 0;
        if (!is_tokens && !is_starts)
            return ra_fail(err, EX_DATAERR, "%s: tensor '%s': expected 'tokens' or 'starts'", name, info.name);
        if ((is_tokens && t->ids) || (is_starts && t->starts))
            return ra_fail(err, EX_DATAERR, "%s: tensor '%s' appears twice", name, info.name);
        ra_dtype want = is_tokens ? RA_I32 : RA_U8;
        if (info.dtype != want || info.ndim != 2 || info.shape[0] != t->n_rows || info.shape[1] != t->seq_len)
            return ra_fail(err, EX_DATAERR, "%s: tensor '%s': expected %s [%" PRId64 ", %" PRId64 "]", name, info.name,
                           is_tokens ? "i32" : "u8", t->n_rows, t->seq_len);
        void *dst = xmalloc(numel ? (size_t)numel * (is_tokens ? 4 : 1) : 1);
        if (is_tokens) t->ids = dst;
        else t->starts = dst;
        if (ra_reader_read(r, dst, (uint64_t)numel * (is_tokens ? 4 : 1), err)) return err->code;
    }
    if (rc < 0) return err->code;
    if (!t->ids || !t->starts)
        return ra_fail(err, EX_DATAERR, "%s: tensor '%s' is missing", name, t->ids ? "starts" : "tokens");
    for (int64_t row = 0; row < t->n_rows; row++) {
        if (t->starts[row * t->seq_len] != 1)
            return ra_fail(err, EX_DATAERR, "%s: starts: row %" PRId64 " does not begin with 1", name, row);
        for (int64_t i = 0; i < t->seq_len; i++)
            if (t->starts[row * t->seq_len + i] > 1)
                return ra_fail(err, EX_DATAERR, "%s: starts: row %" PRId64 ", position %" PRId64 ": expected 0 or 1", name,
                               row, i);
        char where[48];
        snprintf(where, sizeof where, "tokens row %" PRId64, row);
        if (check_ids(name, where, t->ids + row * t->seq_len, t->seq_len, t->tok.present ? t->tok.vocab_size : 0, err))
            return EX_DATAERR;
    }
    return 0;
}

int ra_tokens_load(const char *path, ra_tokens *out, ra_error *err) {
    memset(out, 0, sizeof *out);
    out->pad_id = -1;
    ra_reader *r = open_tokens(path, &out->packed, &out->tok, err);
    if (!r) return err->code;
    out->name = xstrdup(ra_reader_name(r));
    out->meta = json_deep_copy(ra_reader_meta(r));
    int rc = out->packed ? load_packed(r, out, err) : load_documents(r, out, err);
    if (!rc) memcpy(out->content_id, ra_reader_content_id(r), sizeof out->content_id);
    ra_reader_close(r);
    if (rc) ra_tokens_free(out);
    return rc;
}

int ra_tokens_validate(const ra_tokens *t, int64_t vocab_size, int require_nonempty, ra_error *err) {
    if (t->packed) {
        for (int64_t row = 0; row < t->n_rows; row++) {
            char where[48];
            snprintf(where, sizeof where, "tokens row %" PRId64, row);
            if (check_ids(t->name, where, t->ids + row * t->seq_len, t->seq_len, vocab_size, err)) return EX_DATAERR;
        }
        if (require_nonempty && t->n_rows == 0) return ra_fail(err, EX_DATAERR, "%s: no rows", t->name);
        return 0;
    }
    for (int64_t d = 0; d < t->n_docs; d++) {
        int64_t n;
        const int32_t *ids = ra_tokens_doc(t, d, &n);
        char where[48];
        snprintf(where, sizeof where, "doc/%" PRId64, d);
        if (require_nonempty && n == 0) return ra_fail(err, EX_DATAERR, "%s: %s: the document is empty", t->name, where);
        if (check_ids(t->name, where, ids, n, vocab_size, err)) return EX_DATAERR;
    }
    if (require_nonempty && t->n_docs == 0) return ra_fail(err, EX_DATAERR, "%s: no documents", t->name);
    return 0;
}

void ra_tokens_free(ra_tokens *t) {
    free(t->name);
    free(t->ids);
    free(t->doc_start);
    free(t->starts);
    json_decref(t->meta);
    memset(t, 0, sizeof *t);
}

/* ---------------------------------------------------------------- streaming reader */

struct ra_tokens_reader {
    ra_reader *r;
    int packed;
    ra_tokens_tokenizer tok;
    int64_t index;           /* documents: next doc; packed: next row */
    int32_t *buf;
    int64_t cap;
    int64_t seq_len, n_rows; /* packed */
    int in_tokens, saw_tokens;
};

ra_tokens_reader *ra_tokens_reader_open(const char *path, ra_error *err) {
    ra_tokens_reader *tr = xcalloc(1, sizeof *tr);
    tr->r = open_tokens(path, &tr->packed, &tr->tok, err);
    if (!tr->r) {
        free(tr);
        return NULL;
    }
    const json_t *meta = ra_reader_meta(tr->r);
    if (tr->packed && (meta_int(meta, "seq_len", 1, &tr->seq_len, ra_reader_name(tr->r), err) ||
                       meta_int(meta, "n_rows", 0, &tr->n_rows, ra_reader_name(tr->r), err))) {
        ra_tokens_reader_close(tr);
        return NULL;
    }
    return tr;
}

const ra_tokens_tokenizer *ra_tokens_reader_tokenizer(const ra_tokens_reader *r) { return &r->tok; }
const json_t *ra_tokens_reader_meta(const ra_tokens_reader *r) { return ra_reader_meta(r->r); }
int ra_tokens_reader_packed(const ra_tokens_reader *r) { return r->packed; }

static int grow_buf(ra_tokens_reader *tr, int64_t n) {
    if (n > tr->cap) {
        free(tr->buf);
        tr->cap = n;
        tr->buf = xmalloc((size_t)tr->cap * sizeof *tr->buf);
    }
    return 0;
}

/* Packed: rows of the "tokens" tensor read one at a time; "starts" is
 * skipped (and hashed) by the stream reader. */
static int next_row(ra_tokens_reader *tr, const int32_t **ids, int64_t *n, ra_error *err) {
    const char *name = ra_reader_name(tr->r);
    while (!tr->in_tokens || tr->index == tr->n_rows) {
        tr->in_tokens = 0;
        ra_tensor_info info;
        int rc = ra_reader_next(tr->r, &info, err);
        if (rc < 0) return -1;
        if (rc == 0) {
            if (tr->saw_tokens) return 0;
            ra_fail(err, EX_DATAERR, "%s: tensor 'tokens' is missing", name);
            return -1;
        }
        if (strcmp(info.name, "starts") == 0) continue;
        if (strcmp(info.name, "tokens") != 0 || tr->saw_tokens) {
            ra_fail(err, EX_DATAERR, "%s: tensor '%s': expected 'tokens' or 'starts' once each", name, info.name);
            return -1;
        }
        if (info.dtype != RA_I32 || info.ndim != 2 || info.shape[0] != tr->n_rows || info.shape[1] != tr->seq_len) {
            ra_fail(err, EX_DATAERR, "%s: tensor 'tokens': expected i32 [%" PRId64 ", %" PRId64 "]", name, tr->n_rows,
                    tr->seq_len);
            return -1;
        }
        tr->in_tokens = tr->saw_tokens = 1;
    }
    grow_buf(tr, tr->seq_len);
    int64_t want = tr->seq_len * (int64_t)sizeof *tr->buf;
    int64_t got = ra_reader_read_chunk(tr->r, tr->buf, (uint64_t)want, err);
    if (got < 0) return -1;
    if (got != want) {
        ra_fail(err, EX_DATAERR, "%s: tensor 'tokens': short row %" PRId64, name, tr->index);
        return -1;
    }
    char where[48];
    snprintf(where, sizeof where, "tokens row %" PRId64, tr->index);
    if (check_ids(name, where, tr->buf, tr->seq_len, tr->tok.present ? tr->tok.vocab_size : 0, err)) return -1;
    tr->index++;
    *ids = tr->buf;
    *n = tr->seq_len;
    return 1;
}

int ra_tokens_reader_next(ra_tokens_reader *tr, const int32_t **ids, int64_t *n, ra_error *err) {
    if (tr->packed) return next_row(tr, ids, n, err);
    ra_tensor_info info;
    int rc = ra_reader_next(tr->r, &info, err);
    const char *name = ra_reader_name(tr->r);
    if (rc == 0) {
        const json_t *nd = json_object_get(ra_reader_meta(tr->r), "n_docs");
        if (!json_is_integer(nd) || json_integer_value(nd) != tr->index) {
            ra_fail(err, EX_DATAERR, "%s: %" PRId64 " documents, but meta.n_docs says otherwise", name, tr->index);
            return -1;
        }
    }
    if (rc <= 0) return rc;
    char want[32];
    snprintf(want, sizeof want, "doc/%" PRId64, tr->index);
    if (strcmp(info.name, want) != 0) {
        ra_fail(err, EX_DATAERR, "%s: tensor '%s': expected '%s' (documents in order)", name, info.name, want);
        return -1;
    }
    if (info.dtype != RA_I32 || info.ndim != 1) {
        ra_fail(err, EX_DATAERR, "%s: tensor '%s': expected a 1-D i32 tensor", name, info.name);
        return -1;
    }
    grow_buf(tr, info.shape[0]);
    if (ra_reader_read(tr->r, tr->buf, (uint64_t)info.shape[0] * sizeof *tr->buf, err)) return -1;
    if (check_ids(name, info.name, tr->buf, info.shape[0], tr->tok.present ? tr->tok.vocab_size : 0, err)) return -1;
    tr->index++;
    *ids = tr->buf;
    *n = info.shape[0];
    return 1;
}

void ra_tokens_reader_close(ra_tokens_reader *tr) {
    if (!tr) return;
    if (tr->r) ra_reader_close(tr->r);
    free(tr->buf);
    free(tr);
}
