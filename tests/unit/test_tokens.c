/* Tokens streams: both layouts written and read back against an independent
 * in-test reference (concatenate, cut into rows, mark starts), validation
 * messages, and refusal of malformed streams. */
#include <stdlib.h>
#include <unistd.h>

#include "stream.h"
#include "test.h"
#include "tokens.h"

static char tmpdir[256];

static const char *tmp_path(const char *name) {
    static char p[512];
    snprintf(p, sizeof p, "%s/%s", tmpdir, name);
    return p;
}

/* Random documents: lengths 0..maxlen (about one in eight empty), ids in [0, vocab). */
typedef struct docs {
    int n;
    int64_t *len;
    int32_t **ids;
    int64_t total;
} docs;

static docs make_docs(int n, int maxlen, int vocab) {
    docs d = {n, calloc((size_t)n, sizeof(int64_t)), calloc((size_t)n, sizeof(int32_t *)), 0};
    for (int i = 0; i < n; i++) {
        d.len[i] = test_rand_u64() % 8 == 0 ? 0 : (int64_t)(1 + test_rand_u64() % (uint64_t)maxlen);
        d.ids[i] = malloc((size_t)(d.len[i] + 1) * sizeof(int32_t));
        for (int64_t k = 0; k < d.len[i]; k++) d.ids[i][k] = (int32_t)(test_rand_u64() % (uint64_t)vocab);
        d.total += d.len[i];
    }
    return d;
}

static void free_docs(docs *d) {
    for (int i = 0; i < d->n; i++) free(d->ids[i]);
    free(d->len);
    free(d->ids);
}

static ra_tokens_builder *build(const docs *d) {
    ra_error err;
    ra_tokens_builder *b = ra_tokens_builder_new(&err);
    EXPECT_MSG(b != NULL, "%s", err.msg);
    for (int i = 0; b && i < d->n; i++) EXPECT(ra_tokens_builder_add(b, d->ids[i], d->len[i], &err) == 0);
    return b;
}

static ra_tokens_tokenizer test_tok(void) {
    ra_tokens_tokenizer t = {1, "0123456789abcdef0123456789abcdef", 1000, 7, -1};
    return t;
}

TEST(documents_round_trip) {
    test_seed(11);
    docs d = make_docs(300, 50, 1000);
    ra_tokens_builder *b = build(&d);
    if (!b) return;
    ra_tokens_tokenizer tok = test_tok();
    ra_error err;
    ra_tokens_summary sum;
    json_t *extra = json_pack("{s:s}", "note", "test");
    EXPECT(ra_tokens_write_documents(b, tmp_path("docs.ra"), &tok, extra, NULL, &sum, &err) == 0);
    json_decref(extra);
    ra_tokens_builder_free(b);
    EXPECT_EQ_INT(sum.n_docs, 300);
    EXPECT_EQ_INT(sum.n_tokens, d.total);
    EXPECT_EQ_INT(strlen(sum.content_id), 32);

    ra_tokens t;
    int r = ra_tokens_load(tmp_path("docs.ra"), &t, &err);
    EXPECT_MSG(r == 0, "%s", err.msg);
    if (r) return;
    EXPECT(!t.packed);
    EXPECT_EQ_INT(t.n_docs, 300);
    EXPECT_EQ_INT(t.n_tokens, d.total);
    EXPECT(t.tok.present);
    EXPECT_STR(t.tok.id, tok.id);
    EXPECT_EQ_INT(t.tok.vocab_size, 1000);
    EXPECT_EQ_INT(t.tok.bos_id, 7);
    EXPECT_EQ_INT(t.tok.eos_id, -1);
    EXPECT_STR(json_string_value(json_object_get(t.meta, "note")), "test");
    EXPECT_STR(t.content_id, sum.content_id);
    int same = 1;
    for (int i = 0; i < d.n; i++) {
        int64_t n;
        const int32_t *ids = ra_tokens_doc(&t, i, &n);
        same &= n == d.len[i] && (n == 0 || memcmp(ids, d.ids[i], (size_t)n * 4) == 0);
    }
    EXPECT(same);
    EXPECT(ra_tokens_validate(&t, 1000, 0, &err) == 0);
    /* A smaller vocabulary: the message names the file, document and position. */
    EXPECT_EQ_INT(ra_tokens_validate(&t, 10, 0, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "docs.ra: doc/") != NULL && strstr(err.msg, "expected < vocab size 10") != NULL);
    /* Empty documents are refused only on request. */
    EXPECT_EQ_INT(ra_tokens_validate(&t, 0, 1, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "the document is empty") != NULL);
    ra_tokens_free(&t);

    /* The streaming reader sees the same documents. */
    ra_tokens_reader *sr = ra_tokens_reader_open(tmp_path("docs.ra"), &err);
    EXPECT(sr != NULL);
    const int32_t *ids;
    int64_t n;
    int i = 0, rc;
    same = 1;
    while (sr && (rc = ra_tokens_reader_next(sr, &ids, &n, &err)) == 1) {
        same &= i < d.n && n == d.len[i] && (n == 0 || memcmp(ids, d.ids[i], (size_t)n * 4) == 0);
        i++;
    }
    EXPECT(same);
    EXPECT_EQ_INT(i, 300);
    ra_tokens_reader_close(sr);
    free_docs(&d);
}

/* Reference packing: concatenate, cut into rows of L, starts at row and
 * document beginnings (and at the padding). */
static void check_packed(const docs *d, int64_t L, int32_t pad) {
    ra_tokens_builder *b = build(d);
    if (!b) return;
    ra_error err;
    ra_tokens_summary sum;
    int r = ra_tokens_write_packed(b, tmp_path("packed.ra"), NULL, L, pad, NULL, NULL, &sum, &err);
    EXPECT_MSG(r == 0, "%s", err.msg);
    ra_tokens_builder_free(b);
    if (r) return;
    int64_t total = d->total;
    int64_t rows = pad >= 0 ? (total + L - 1) / L : total / L;
    int32_t *want = malloc((size_t)(rows * L + 1) * 4);
    uint8_t *want_starts = calloc((size_t)(rows * L + 1), 1);
    int64_t pos = 0;
    for (int i = 0; i < d->n; i++)
        for (int64_t k = 0; k < d->len[i]; k++, pos++) {
            if (pos >= rows * L) continue;
            want[pos] = d->ids[i][k];
            if (k == 0) want_starts[pos] = 1;
        }
    for (int64_t p = total; p < rows * L; p++) want[p] = pad;
    if (total < rows * L) want_starts[total] = 1;
    for (int64_t row = 0; row < rows; row++) want_starts[row * L] = 1;

    EXPECT_EQ_INT(sum.n_rows, rows);
    EXPECT_EQ_INT(sum.n_dropped, pad >= 0 ? 0 : total - rows * L);
    EXPECT_EQ_INT(sum.n_pad, pad >= 0 ? rows * L - total : 0);
    EXPECT_EQ_INT(sum.n_tokens, pad >= 0 ? total : rows * L);
    ra_tokens t;
    r = ra_tokens_load(tmp_path("packed.ra"), &t, &err);
    EXPECT_MSG(r == 0, "%s", err.msg);
    if (!r) {
        EXPECT(t.packed);
        EXPECT_EQ_INT(t.seq_len, L);
        EXPECT_EQ_INT(t.n_rows, rows);
        EXPECT_EQ_INT(t.n_docs, d->n);
        EXPECT_EQ_INT(t.pad_id, pad);
        EXPECT(!t.tok.present);
        EXPECT(rows == 0 || memcmp(t.ids, want, (size_t)(rows * L) * 4) == 0);
        EXPECT(rows == 0 || memcmp(t.starts, want_starts, (size_t)(rows * L)) == 0);
        ra_tokens_free(&t);
    }
    /* The streaming reader gives the same rows. */
    ra_tokens_reader *sr = ra_tokens_reader_open(tmp_path("packed.ra"), &err);
    EXPECT_MSG(sr != NULL, "%s", err.msg);
    const int32_t *ids;
    int64_t n, row = 0;
    int rc, same = 1;
    while (sr && (rc = ra_tokens_reader_next(sr, &ids, &n, &err)) == 1) {
        same &= row < rows && n == L && memcmp(ids, want + row * L, (size_t)L * 4) == 0;
        row++;
    }
    EXPECT_MSG(sr && rc == 0, "%s", err.msg);
    EXPECT(same);
    EXPECT_EQ_INT(row, rows);
    ra_tokens_reader_close(sr);
    free(want);
    free(want_starts);
}

TEST(packed_matches_reference) {
    test_seed(12);
    docs d = make_docs(200, 40, 5000);
    check_packed(&d, 16, -1);
    check_packed(&d, 16, 3);
    check_packed(&d, 1, -1);
    check_packed(&d, 7, 0);
    check_packed(&d, d.total + 5, -1); /* no full row: nothing stored */
    check_packed(&d, d.total + 5, 9);  /* one padded row */
    free_docs(&d);
}

TEST(large_document_is_chunked) {
    test_seed(13);
    docs d = {1, calloc(1, sizeof(int64_t)), calloc(1, sizeof(int32_t *)), 0};
    d.len[0] = (1 << 20) * 2 + 12345;
    d.total = d.len[0];
    d.ids[0] = malloc((size_t)d.len[0] * 4);
    for (int64_t k = 0; k < d.len[0]; k++) d.ids[0][k] = (int32_t)(test_rand_u64() % 100000);
    ra_tokens_builder *b = build(&d);
    ra_error err;
    EXPECT(ra_tokens_write_documents(b, tmp_path("big.ra"), NULL, NULL, NULL, NULL, &err) == 0);
    ra_tokens_builder_free(b);
    ra_tokens t;
    EXPECT(ra_tokens_load(tmp_path("big.ra"), &t, &err) == 0);
    EXPECT_EQ_INT(t.n_tokens, d.len[0]);
    EXPECT(t.ids && memcmp(t.ids, d.ids[0], (size_t)d.len[0] * 4) == 0);
    ra_tokens_free(&t);
    check_packed(&d, 4096, -1);
    free_docs(&d);
}

TEST(builder_refuses_negative_ids) {
    ra_error err;
    ra_tokens_builder *b = ra_tokens_builder_new(&err);
    int32_t ids[] = {1, -5};
    EXPECT_EQ_INT(ra_tokens_builder_add(b, ids, 2, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "document 0: token 1 is -5") != NULL);
    ra_tokens_builder_free(b);
}

static void expect_load_fails(const char *path, const char *needle) {
    ra_tokens t;
    ra_error err = {0};
    int r = ra_tokens_load(path, &t, &err);
    EXPECT_MSG(r == EX_DATAERR, "load returned %d (%s), expected EX_DATAERR", r, err.msg);
    EXPECT_MSG(strstr(err.msg, needle) != NULL, "message '%s' does not contain '%s'", err.msg, needle);
}

TEST(malformed_streams_are_refused) {
    ra_error err;
    int32_t ids[3] = {1, 2, 3};
    int64_t shape[1] = {3};
    /* Wrong kind. */
    ra_writer *w = ra_writer_open(tmp_path("kind.ra"), "scores", NULL, NULL, &err);
    EXPECT(w && ra_writer_close(w, NULL, &err) == 0);
    expect_load_fails(tmp_path("kind.ra"), "expected 'tokens'");
    /* Documents out of order. */
    json_t *meta = json_pack("{s:s, s:i, s:i}", "layout", "documents", "n_docs", 1, "n_tokens", 3);
    w = ra_writer_open(tmp_path("order.ra"), "tokens", meta, NULL, &err);
    EXPECT(w && ra_writer_tensor(w, "doc/1", RA_I32, 1, shape, ids, &err) == 0 && ra_writer_close(w, NULL, &err) == 0);
    expect_load_fails(tmp_path("order.ra"), "tensor 'doc/1': expected 'doc/0'");
    /* Counts that disagree with the meta. */
    json_object_set_new(meta, "n_tokens", json_integer(4));
    w = ra_writer_open(tmp_path("count.ra"), "tokens", meta, NULL, &err);
    EXPECT(w && ra_writer_tensor(w, "doc/0", RA_I32, 1, shape, ids, &err) == 0 && ra_writer_close(w, NULL, &err) == 0);
    expect_load_fails(tmp_path("count.ra"), "meta says 1 and 4");
    /* A wrong dtype. */
    json_object_set_new(meta, "n_tokens", json_integer(3));
    float f[3] = {1, 2, 3};
    w = ra_writer_open(tmp_path("dtype.ra"), "tokens", meta, NULL, &err);
    EXPECT(w && ra_writer_tensor(w, "doc/0", RA_F32, 1, shape, f, &err) == 0 && ra_writer_close(w, NULL, &err) == 0);
    expect_load_fails(tmp_path("dtype.ra"), "1-D i32");
    /* Ids beyond the stream's own tokenizer vocabulary. */
    json_object_set_new(meta, "tokenizer", json_pack("{s:s, s:i, s:n, s:n}", "id", "0123456789abcdef0123456789abcdef",
                                                     "vocab_size", 3, "bos_id", "eos_id"));
    w = ra_writer_open(tmp_path("vocab.ra"), "tokens", meta, NULL, &err);
    EXPECT(w && ra_writer_tensor(w, "doc/0", RA_I32, 1, shape, ids, &err) == 0 && ra_writer_close(w, NULL, &err) == 0);
    expect_load_fails(tmp_path("vocab.ra"), "doc/0: token 2 is 3, expected < vocab size 3");
    json_decref(meta);
    /* Packed with a row that does not start with 1. */
    meta = json_pack("{s:s, s:i, s:i, s:i, s:i}", "layout", "packed", "seq_len", 3, "n_rows", 1, "n_docs", 1,
                     "n_tokens", 3);
    int64_t shape2[2] = {1, 3};
    uint8_t starts[3] = {0, 1, 0};
    w = ra_writer_open(tmp_path("starts.ra"), "tokens", meta, NULL, &err);
    EXPECT(w && ra_writer_tensor(w, "tokens", RA_I32, 2, shape2, ids, &err) == 0 &&
           ra_writer_tensor(w, "starts", RA_U8, 2, shape2, starts, &err) == 0 && ra_writer_close(w, NULL, &err) == 0);
    expect_load_fails(tmp_path("starts.ra"), "row 0 does not begin with 1");
    /* Packed without its starts tensor. */
    w = ra_writer_open(tmp_path("nostarts.ra"), "tokens", meta, NULL, &err);
    EXPECT(w && ra_writer_tensor(w, "tokens", RA_I32, 2, shape2, ids, &err) == 0 && ra_writer_close(w, NULL, &err) == 0);
    expect_load_fails(tmp_path("nostarts.ra"), "'starts' is missing");
    json_decref(meta);
    /* Missing file. */
    ra_tokens t;
    EXPECT_EQ_INT(ra_tokens_load(tmp_path("absent.ra"), &t, &err), EX_NOINPUT);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "%s/ra-test-tokens.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(documents_round_trip);
    RUN(packed_matches_reference);
    RUN(large_document_is_chunked);
    RUN(builder_refuses_negative_ids);
    RUN(malformed_streams_are_refused);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) printf("# could not remove %s\n", tmpdir);
    return test_summary();
}
