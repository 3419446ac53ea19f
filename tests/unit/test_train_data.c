/* Training batches (lib/train_data.h): packing of both tokens layouts into
 * rows against an in-test reference built from the documents themselves
 * (token, its document, where that document starts), labels, held-out rows,
 * per-epoch shuffling (each epoch a permutation, seed-determined) and exact
 * cursor resume. */
#include <stdlib.h>
#include <unistd.h>

#include "test.h"
#include "tokens.h"
#include "train_data.h"

static char tmpdir[256];

static const char *tmp_path(const char *name) {
    static char p[512];
    snprintf(p, sizeof p, "%s/%s", tmpdir, name);
    return p;
}

/* Random documents (some empty), and the reference view of their
 * concatenation: for every token its id, its document and the index (in the
 * concatenation) of its document's first token. */
typedef struct corpus {
    int n_docs;
    int64_t *len;
    int32_t **ids;
    int64_t total;
    int32_t *flat_id;
    int64_t *flat_doc, *flat_first;
} corpus;

static corpus make_corpus(int n, int maxlen, int vocab) {
    corpus c = {n, calloc((size_t)n, sizeof(int64_t)), calloc((size_t)n, sizeof(int32_t *)), 0, NULL, NULL, NULL};
    for (int i = 0; i < n; i++) {
        c.len[i] = test_rand_u64() % 7 == 0 ? 0 : (int64_t)(1 + test_rand_u64() % (uint64_t)maxlen);
        c.ids[i] = malloc((size_t)(c.len[i] + 1) * sizeof(int32_t));
        for (int64_t k = 0; k < c.len[i]; k++) c.ids[i][k] = (int32_t)(test_rand_u64() % (uint64_t)vocab);
        c.total += c.len[i];
    }
    c.flat_id = malloc((size_t)(c.total + 1) * sizeof(int32_t));
    c.flat_doc = malloc((size_t)(c.total + 1) * sizeof(int64_t));
    c.flat_first = malloc((size_t)(c.total + 1) * sizeof(int64_t));
    int64_t at = 0;
    for (int i = 0; i < n; i++)
        for (int64_t k = 0; k < c.len[i]; k++, at++) {
            c.flat_id[at] = c.ids[i][k];
            c.flat_doc[at] = i;
            c.flat_first[at] = at - k;
        }
    return c;
}

static void free_corpus(corpus *c) {
    for (int i = 0; i < c->n_docs; i++) free(c->ids[i]);
    free(c->ids);
    free(c->len);
    free(c->flat_id);
    free(c->flat_doc);
    free(c->flat_first);
}

static ra_tokens_builder *build(const corpus *c) {
    ra_error err = {0};
    ra_tokens_builder *b = ra_tokens_builder_new(&err);
    for (int i = 0; b && i < c->n_docs; i++) EXPECT(ra_tokens_builder_add(b, c->ids[i], c->len[i], &err) == 0);
    return b;
}

/* Compare row r of d (rows of T) with the reference; `cut` > 0: the
 * stream's own row length (packed layout), whose row starts also start a
 * document. */
static void check_row(const ra_train_data *d, const corpus *c, int64_t r, int T, int cut, int64_t n_flat) {
    int32_t tok[64], ds[64], lab[64];
    ra_train_data_row(d, r, tok, ds, lab);
    for (int t = 0; t < T; t++) {
        int64_t i = r * T + t;
        int64_t first = c->flat_first[i];
        if (cut > 0 && (i / cut) * cut > first) first = (i / cut) * cut;
        int64_t want_ds = first > r * T ? first - r * T : 0;
        int64_t j = i + 1;
        int same = j < n_flat && c->flat_doc[j] == c->flat_doc[i] && (cut <= 0 || j % cut != 0);
        int32_t want_lab = same ? c->flat_id[j] : RA_LABEL_IGNORE;
        EXPECT_MSG(tok[t] == c->flat_id[i], "row %lld t %d: token %d, expected %d", (long long)r, t, tok[t], c->flat_id[i]);
        EXPECT_MSG(ds[t] == want_ds, "row %lld t %d: doc_start %d, expected %lld", (long long)r, t, ds[t], (long long)want_ds);
        EXPECT_MSG(lab[t] == want_lab, "row %lld t %d: label %d, expected %d", (long long)r, t, lab[t], want_lab);
    }
}

TEST(documents_layout_rows_match_reference) {
    test_seed(11);
    corpus c = make_corpus(40, 30, 97);
    ra_tokens_builder *b = build(&c);
    ra_error err = {0};
    EXPECT(ra_tokens_write_documents(b, tmp_path("docs.ra"), NULL, NULL, NULL, NULL, &err) == 0);
    ra_tokens_builder_free(b);
    int T = 16;
    ra_train_data *d = NULL;
    EXPECT(ra_train_data_open(tmp_path("docs.ra"), T, 97, 5, 0, &d, &err) == 0);
    if (!d) return;
    EXPECT_EQ_INT(ra_train_data_rows(d), c.total / T);
    EXPECT_EQ_INT(ra_train_data_seq_len(d), T);
    for (int64_t r = 0; r < ra_train_data_rows(d); r++) check_row(d, &c, r, T, 0, c.total);
    /* documents longer than a row exist, so continuation rows were checked */
    int64_t longest = 0;
    for (int i = 0; i < c.n_docs; i++) longest = c.len[i] > longest ? c.len[i] : longest;
    EXPECT(longest > T);
    ra_train_data_free(d);
    free_corpus(&c);
}

TEST(packed_layout_rows_match_reference) {
    test_seed(12);
    corpus c = make_corpus(30, 25, 50);
    ra_tokens_builder *b = build(&c);
    ra_error err = {0};
    ra_tokens_summary sum;
    int L = 12; /* the stream's rows; padded at the end */
    EXPECT(ra_tokens_write_packed(b, tmp_path("packed.ra"), NULL, L, 0, NULL, NULL, &sum, &err) == 0);
    ra_tokens_builder_free(b);
    EXPECT(sum.n_pad > 0);
    int T = 8;
    ra_train_data *d = NULL;
    EXPECT(ra_train_data_open(tmp_path("packed.ra"), T, 50, 1, 0, &d, &err) == 0);
    if (!d) return;
    EXPECT_EQ_INT(ra_train_data_rows(d), c.total / T); /* padding is dropped */
    for (int64_t r = 0; r < ra_train_data_rows(d); r++) check_row(d, &c, r, T, L, c.total);
    ra_train_data_free(d);
    free_corpus(&c);
}

TEST(heldout_rows_are_the_tail_and_never_train) {
    test_seed(13);
    corpus c = make_corpus(30, 20, 40);
    ra_tokens_builder *b = build(&c);
    ra_error err = {0};
    EXPECT(ra_tokens_write_documents(b, tmp_path("h.ra"), NULL, NULL, NULL, NULL, &err) == 0);
    ra_tokens_builder_free(b);
    int T = 6;
    int64_t rows = c.total / T, held = 5;
    ra_train_data *d = NULL;
    EXPECT(ra_train_data_open(tmp_path("h.ra"), T, 40, 3, held, &d, &err) == 0);
    if (!d) return;
    EXPECT_EQ_INT(ra_train_data_rows(d), rows - held);
    EXPECT_EQ_INT(ra_train_data_heldout_rows(d), held);
    for (int64_t p = 0; p < 3 * rows; p++) {
        int64_t r = ra_train_data_row_at(d, p);
        EXPECT(r >= 0 && r < rows - held);
    }
    int32_t tok[7 * 6], ds[7 * 6], lab[7 * 6], rt[6], rd[6], rl[6];
    ra_train_data_heldout(d, 2, 7, tok, ds, lab); /* wraps after 3 rows */
    for (int k = 0; k < 7; k++) {
        ra_train_data_row(d, rows - held + (2 + k) % held, rt, rd, rl);
        EXPECT(memcmp(tok + k * T, rt, sizeof rt) == 0 && memcmp(ds + k * T, rd, sizeof rd) == 0 &&
               memcmp(lab + k * T, rl, sizeof rl) == 0);
    }
    ra_train_data_free(d);
    /* a held-out stream: every row is evaluation data */
    EXPECT(ra_train_data_open(tmp_path("h.ra"), T, 40, 3, RA_HELDOUT_ALL, &d, &err) == 0);
    if (d) {
        EXPECT_EQ_INT(ra_train_data_rows(d), 0);
        EXPECT_EQ_INT(ra_train_data_heldout_rows(d), rows);
        ra_train_data_free(d);
    }
    /* nothing left to train on */
    d = NULL;
    EXPECT_EQ_INT(ra_train_data_open(tmp_path("h.ra"), T, 40, 3, rows, &d, &err), EX_DATAERR);
    EXPECT(d == NULL && strstr(err.msg, "leaves none to train on"));
    free_corpus(&c);
}

TEST(refusals) {
    test_seed(14);
    corpus c = make_corpus(3, 5, 30);
    ra_tokens_builder *b = build(&c);
    ra_error err = {0};
    EXPECT(ra_tokens_write_documents(b, tmp_path("small.ra"), NULL, NULL, NULL, NULL, &err) == 0);
    ra_tokens_builder_free(b);
    ra_train_data *d = NULL;
    EXPECT_EQ_INT(ra_train_data_open(tmp_path("small.ra"), (int)c.total + 1, 30, 0, 0, &d, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "fewer than one row") != NULL);
    EXPECT_EQ_INT(ra_train_data_open(tmp_path("small.ra"), 2, 10, 0, 0, &d, &err), EX_DATAERR); /* ids ≥ 10 exist */
    EXPECT(strstr(err.msg, "small.ra") != NULL);
    EXPECT_EQ_INT(ra_train_data_open(tmp_path("missing.ra"), 2, 30, 0, 0, &d, &err), EX_NOINPUT);
    EXPECT(d == NULL);
    free_corpus(&c);
}

/* Positions 0 .. n−1 mapped to rows. */
static void order(ra_train_data *d, int64_t n, int64_t *out) {
    for (int64_t p = 0; p < n; p++) out[p] = ra_train_data_row_at(d, p);
}

TEST(shuffle_is_a_seeded_permutation_per_epoch) {
    test_seed(15);
    corpus c = make_corpus(60, 20, 40);
    ra_tokens_builder *b = build(&c);
    ra_error err = {0};
    EXPECT(ra_tokens_write_documents(b, tmp_path("s.ra"), NULL, NULL, NULL, NULL, &err) == 0);
    ra_tokens_builder_free(b);
    ra_train_data *a = NULL, *a2 = NULL, *o = NULL;
    EXPECT(ra_train_data_open(tmp_path("s.ra"), 4, 40, 77, 0, &a, &err) == 0);
    EXPECT(ra_train_data_open(tmp_path("s.ra"), 4, 40, 77, 0, &a2, &err) == 0);
    EXPECT(ra_train_data_open(tmp_path("s.ra"), 4, 40, 78, 0, &o, &err) == 0);
    if (!a || !a2 || !o) return;
    int64_t R = ra_train_data_rows(a);
    EXPECT(R > 50);
    int64_t *x = malloc(3 * R * sizeof *x), *y = malloc(3 * R * sizeof *y), *z = malloc(3 * R * sizeof *z);
    order(a, 3 * R, x);
    order(a2, 3 * R, y);
    order(o, 3 * R, z);
    EXPECT(memcmp(x, y, 3 * R * sizeof *x) == 0);
    EXPECT(memcmp(x, z, 3 * R * sizeof *x) != 0);
    EXPECT(memcmp(x, x + R, R * sizeof *x) != 0); /* epochs differ */
    int identity = 1;
    for (int64_t p = 0; p < R; p++) identity &= x[p] == p;
    EXPECT(!identity);
    char *seen = calloc((size_t)R, 1);
    for (int e = 0; e < 3; e++) {
        memset(seen, 0, (size_t)R);
        for (int64_t p = 0; p < R; p++) seen[x[e * R + p]]++;
        for (int64_t r = 0; r < R; r++) EXPECT_MSG(seen[r] == 1, "epoch %d: row %lld seen %d times", e, (long long)r, seen[r]);
    }
    free(seen);
    free(x);
    free(y);
    free(z);
    ra_train_data_free(a);
    ra_train_data_free(a2);
    ra_train_data_free(o);
    free_corpus(&c);
}

TEST(cursor_resume_continues_exactly) {
    test_seed(16);
    corpus c = make_corpus(40, 20, 40);
    ra_tokens_builder *b = build(&c);
    ra_error err = {0};
    EXPECT(ra_tokens_write_documents(b, tmp_path("c.ra"), NULL, NULL, NULL, NULL, &err) == 0);
    ra_tokens_builder_free(b);
    enum { T = 5, B = 3 };
    ra_train_data *a = NULL, *r = NULL;
    EXPECT(ra_train_data_open(tmp_path("c.ra"), T, 40, 9, 2, &a, &err) == 0);
    EXPECT(ra_train_data_open(tmp_path("c.ra"), T, 40, 9, 2, &r, &err) == 0);
    if (!a || !r) return;
    int64_t R = ra_train_data_rows(a);
    int32_t t1[B * T], d1[B * T], l1[B * T], t2[B * T], d2[B * T], l2[B * T];
    int n_before = (int)(R / B) + 2; /* the checkpoint falls in the second epoch */
    for (int k = 0; k < n_before; k++) ra_train_data_next(a, B, t1, d1, l1);
    int64_t pos = ra_train_data_position(a);
    EXPECT_EQ_INT(pos, (int64_t)n_before * B);
    ra_train_data_seek(r, pos);
    for (int k = 0; k < (int)R; k++) {
        ra_train_data_next(a, B, t1, d1, l1);
        ra_train_data_next(r, B, t2, d2, l2);
        EXPECT(memcmp(t1, t2, sizeof t1) == 0 && memcmp(d1, d2, sizeof d1) == 0 && memcmp(l1, l2, sizeof l1) == 0);
    }
    /* and the batch rows are the permuted rows */
    ra_train_data_seek(r, 7);
    ra_train_data_next(r, B, t2, d2, l2);
    for (int k = 0; k < B; k++) {
        int32_t rt[T], rd[T], rl[T];
        ra_train_data_row(r, ra_train_data_row_at(r, 7 + k), rt, rd, rl);
        EXPECT(memcmp(rt, t2 + k * T, sizeof rt) == 0 && memcmp(rl, l2 + k * T, sizeof rl) == 0);
    }
    ra_train_data_free(a);
    ra_train_data_free(r);
    free_corpus(&c);
}

TEST(row_fill_edges) {
    /* two documents in a window, the second continuing past its end */
    int32_t ids[6] = {5, 6, 7, 8, 9, 10}, tok[6], ds[6], lab[6];
    uint8_t flags[6] = {0, 0, 1, 0, 0, 1};
    ra_train_row_fill(ids, flags, 6, 11, 0, tok, ds, lab);
    int32_t want_ds[6] = {0, 0, 2, 2, 2, 5}, want_lab[6] = {6, RA_LABEL_IGNORE, 8, 9, RA_LABEL_IGNORE, 11};
    EXPECT(memcmp(ds, want_ds, sizeof ds) == 0);
    EXPECT(memcmp(lab, want_lab, sizeof lab) == 0);
    ra_train_row_fill(ids, flags, 6, 11, 1, tok, ds, lab); /* next token starts a document */
    EXPECT_EQ_INT(lab[5], RA_LABEL_IGNORE);
    ra_train_row_fill(ids, flags, 6, -1, 0, tok, ds, lab); /* end of the corpus */
    EXPECT_EQ_INT(lab[5], RA_LABEL_IGNORE);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "%s/ra-test-train-data.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(documents_layout_rows_match_reference);
    RUN(packed_layout_rows_match_reference);
    RUN(heldout_rows_are_the_tail_and_never_train);
    RUN(refusals);
    RUN(shuffle_is_a_seeded_permutation_per_epoch);
    RUN(cursor_resume_continues_exactly);
    RUN(row_fill_edges);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) return 1;
    return test_summary();
}
