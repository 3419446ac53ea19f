/* Training batches over a tokens stream: flatten, cut into rows, shuffle per
 * epoch, labels and document starts (lib/train_data.h). */
#include "train_data.h"

#include <inttypes.h>
#include <string.h>

#include "tokens.h"

struct ra_train_data {
    char *name;
    char id[33];
    int T;
    int32_t *flat;   /* [n_flat] the corpus */
    uint8_t *flags;  /* [n_flat] 1 where a document starts */
    int64_t n_flat;
    int64_t rows_train, rows_held; /* rows 0..rows_train−1 train, the next rows_held are held out */
    ra_rng base;     /* seeded from the seed; epoch e's order uses rng_split(base, e) */
    int64_t position;
    int64_t perm_epoch; /* epoch whose permutation perm holds, −1 = none */
    int64_t *perm;      /* [rows_train] */
};

/* Flatten either layout into d->flat / d->flags. */
static void flatten(ra_train_data *d, const ra_tokens *t) {
    if (t->packed) {
        int64_t n = t->n_rows * t->seq_len;
        const json_t *np = json_object_get(t->meta, "n_pad");
        int64_t pad = json_is_integer(np) ? json_integer_value(np) : 0;
        if (pad < 0 || pad > n) pad = 0;
        d->n_flat = n - pad;
        d->flat = xmalloc((size_t)(d->n_flat + 1) * sizeof *d->flat);
        d->flags = xmalloc((size_t)(d->n_flat + 1));
        memcpy(d->flat, t->ids, (size_t)d->n_flat * sizeof *d->flat);
        memcpy(d->flags, t->starts, (size_t)d->n_flat);
        return;
    }
    d->n_flat = t->n_tokens;
    d->flat = xmalloc((size_t)(d->n_flat + 1) * sizeof *d->flat);
    d->flags = xcalloc((size_t)(d->n_flat + 1), 1);
    memcpy(d->flat, t->ids, (size_t)d->n_flat * sizeof *d->flat);
    for (int64_t i = 0; i < t->n_docs; i++)
        if (t->doc_start[i + 1] > t->doc_start[i]) d->flags[t->doc_start[i]] = 1;
}

int ra_train_data_open(const char *path, int seq_len, int64_t vocab_size, uint64_t seed, int64_t n_heldout,
                       ra_train_data **out, ra_error *err) {
    *out = NULL;
    if (seq_len < 1) return ra_fail(err, EX_USAGE, "%s: seq_len must be at least 1", path);
    ra_tokens t;
    int rc = ra_tokens_load(path, &t, err);
    if (rc) return rc;
    if ((rc = ra_tokens_validate(&t, vocab_size, 0, err))) {
        ra_tokens_free(&t);
        return rc;
    }
    ra_train_data *d = xcalloc(1, sizeof *d);
    d->name = xstrdup(t.name);
    memcpy(d->id, t.content_id, sizeof d->id);
    d->T = seq_len;
    flatten(d, &t);
    ra_tokens_free(&t);
    int64_t rows = d->n_flat / seq_len;
    if (rows == 0) {
        rc = ra_fail(err, EX_DATAERR, "%s: %" PRId64 " tokens, fewer than one row of --seq-len %d", d->name, d->n_flat,
                     seq_len);
        ra_train_data_free(d);
        return rc;
    }
    if (n_heldout == RA_HELDOUT_ALL) {
        d->rows_held = rows;
    } else if (n_heldout < 0 || n_heldout >= rows) {
        rc = ra_fail(err, EX_DATAERR,
                     "%s: %" PRId64 " rows of %d tokens; setting %" PRId64
                     " aside for evaluation leaves none to train on (give --heldout FILE or fewer --eval-batches)",
                     d->name, rows, seq_len, n_heldout);
        ra_train_data_free(d);
        return rc;
    } else {
        d->rows_held = n_heldout;
    }
    d->rows_train = rows - d->rows_held;
    rng_seed(&d->base, seed);
    d->perm_epoch = -1;
    d->perm = xmalloc((size_t)(d->rows_train + 1) * sizeof *d->perm);
    *out = d;
    return 0;
}

void ra_train_data_free(ra_train_data *d) {
    if (!d) return;
    free(d->name);
    free(d->flat);
    free(d->flags);
    free(d->perm);
    free(d);
}

int64_t ra_train_data_rows(const ra_train_data *d) { return d->rows_train; }
int64_t ra_train_data_heldout_rows(const ra_train_data *d) { return d->rows_held; }
int ra_train_data_seq_len(const ra_train_data *d) { return d->T; }
const char *ra_train_data_id(const ra_train_data *d) { return d->id; }
const char *ra_train_data_name(const ra_train_data *d) { return d->name; }
int64_t ra_train_data_position(const ra_train_data *d) { return d->position; }
void ra_train_data_seek(ra_train_data *d, int64_t position) { d->position = position < 0 ? 0 : position; }

void ra_train_row_fill(const int32_t *ids, const uint8_t *flags, int T, int32_t next_token, int next_flag,
                       int32_t *tokens, int32_t *doc_start, int32_t *labels) {
    int32_t start = 0;
    for (int t = 0; t < T; t++) {
        if (flags[t]) start = t;
        tokens[t] = ids[t];
        doc_start[t] = start;
        if (t + 1 < T) labels[t] = flags[t + 1] ? RA_LABEL_IGNORE : ids[t + 1];
        else labels[t] = (next_flag || next_token < 0) ? RA_LABEL_IGNORE : next_token;
    }
}

/* Absolute row r (training rows first, then held-out ones). */
static void fill_abs_row(const ra_train_data *d, int64_t r, int32_t *tokens, int32_t *doc_start, int32_t *labels) {
    int64_t at = r * d->T, next = at + d->T;
    int has_next = next < d->n_flat;
    ra_train_row_fill(d->flat + at, d->flags + at, d->T, has_next ? d->flat[next] : -1, has_next ? d->flags[next] : 1,
                      tokens, doc_start, labels);
}

void ra_train_data_row(const ra_train_data *d, int64_t row, int32_t *tokens, int32_t *doc_start, int32_t *labels) {
    fill_abs_row(d, row, tokens, doc_start, labels);
}

int64_t ra_train_data_row_at(ra_train_data *d, int64_t position) {
    RA_CHECK(d->rows_train > 0);
    int64_t epoch = position / d->rows_train, idx = position % d->rows_train;
    if (epoch != d->perm_epoch) {
        ra_rng r = rng_split(&d->base, (uint64_t)epoch);
        for (int64_t i = 0; i < d->rows_train; i++) d->perm[i] = i;
        for (int64_t i = d->rows_train - 1; i > 0; i--) { /* Fisher–Yates */
            int64_t j = (int64_t)rng_below(&r, (uint64_t)i + 1), tmp = d->perm[i];
            d->perm[i] = d->perm[j];
            d->perm[j] = tmp;
        }
        d->perm_epoch = epoch;
    }
    return d->perm[idx];
}

void ra_train_data_next(ra_train_data *d, int B, int32_t *tokens, int32_t *doc_start, int32_t *labels) {
    size_t T = (size_t)d->T;
    for (int b = 0; b < B; b++) {
        int64_t row = ra_train_data_row_at(d, d->position++);
        fill_abs_row(d, row, tokens + b * T, doc_start + b * T, labels + b * T);
    }
}

void ra_train_data_heldout(const ra_train_data *d, int64_t first, int B, int32_t *tokens, int32_t *doc_start,
                           int32_t *labels) {
    RA_CHECK(d->rows_held > 0);
    size_t T = (size_t)d->T;
    for (int b = 0; b < B; b++) {
        int64_t row = d->rows_train + (first + b) % d->rows_held;
        fill_abs_row(d, row, tokens + b * T, doc_start + b * T, labels + b * T);
    }
}
