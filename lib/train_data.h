/* Training batches over a tokens stream (lib/tokens.h, both layouts), for
 * the stage tools' training driver (lib/train_run.h).
 *
 * The corpus is flattened into one token sequence with a "document starts
 * here" flag per token:
 *   documents layout: the documents concatenated in order, flag on each
 *                     document's first token (empty documents vanish);
 *   packed layout:    the rows concatenated, flags = the stream's `starts`
 *                     (so a document cut by the stream's own row boundary
 *                     counts as two); the stream's trailing padding
 *                     (meta n_pad) is dropped.
 * and cut into rows of seq_len consecutive tokens; the final partial row is
 * dropped (a stream with fewer than seq_len tokens is refused).  A document
 * longer than a row continues in the next row.  For each position of a row:
 *   doc_start[t] = index in the row of the first token of t's document
 *                  (0 for the part of a document continuing from the
 *                  previous row): the SSM state and conv window reset there
 *                  and attention does not look before it (lib/forward.h,
 *                  lib/block_train.h take it as is);
 *   labels[t]    = the next token of the corpus when it belongs to the same
 *                  document (for t = seq_len − 1 too: the continuation in
 *                  the following row), else RA_LABEL_IGNORE.
 *
 * Held-out rows: with a held-out stream (--heldout FILE) its rows are the
 * evaluation set and every row of the training stream trains; without one,
 * the LAST n_heldout rows of the training stream are set aside (never
 * trained on) — the caller passes n_heldout = eval batches × batch when
 * evaluation is on, 0 otherwise.  Evaluation always reads the held-out rows
 * from the first, in order.
 *
 * Order: epoch e visits the training rows in a permutation drawn from
 * rng_split(seed generator, e) (Fisher–Yates), so the order depends only on
 * (stream, seq_len, seed).  The cursor `position` counts rows handed out
 * since the start of the run (epoch = position / rows, index = position %
 * rows): a checkpoint stores it as data_position and ra_train_data_seek
 * restores it exactly.  Epochs wrap without limit.  Implemented in
 * lib/train_data.c. */
#ifndef RA_TRAIN_DATA_H
#define RA_TRAIN_DATA_H

#include <stdint.h>

#include "error.h"
#include "loss.h" /* RA_LABEL_IGNORE */
#include "rng.h"


/* One micro-batch: B rows of T tokens, all arrays [B·T] row-major. */
typedef struct ra_train_batch {
    int B, T;
    const int32_t *tokens;
    const int32_t *doc_start;
    const int32_t *labels;
    int64_t step;     /* optimiser step it belongs to (set by the driver) */
    int micro;        /* index of the micro-batch within the step */
    int64_t position; /* data cursor before its first row */
} ra_train_batch;

typedef struct ra_train_data ra_train_data;

/* Open path (a tokens stream, "-" = stdin) cut into rows of seq_len.  ids
 * are checked against vocab_size (≤ 0: only ≥ 0).  n_heldout rows are set
 * aside at the end (see above); EX_DATAERR when nothing would be left to
 * train on.  n_heldout = RA_HELDOUT_ALL opens a held-out stream: every row
 * is held out, none trains. */
#define RA_HELDOUT_ALL (-1)
int ra_train_data_open(const char *path, int seq_len, int64_t vocab_size, uint64_t seed, int64_t n_heldout,
                       ra_train_data **out, ra_error *err);
void ra_train_data_free(ra_train_data *d);

int64_t ra_train_data_rows(const ra_train_data *d);         /* training rows */
int64_t ra_train_data_heldout_rows(const ra_train_data *d); /* rows set aside */
int ra_train_data_seq_len(const ra_train_data *d);
const char *ra_train_data_id(const ra_train_data *d);       /* the stream's content id */
const char *ra_train_data_name(const ra_train_data *d);

/* The cursor (rows handed out so far) and setting it (resume). */
int64_t ra_train_data_position(const ra_train_data *d);
void ra_train_data_seek(ra_train_data *d, int64_t position);

/* Fill B rows of seq_len into tokens/doc_start/labels [B·seq_len] from the
 * cursor, advancing it by B. */
void ra_train_data_next(ra_train_data *d, int B, int32_t *tokens, int32_t *doc_start, int32_t *labels);

/* Training row `row` (0 ≤ row < rows), without moving the cursor: */
void ra_train_data_row(const ra_train_data *d, int64_t row, int32_t *tokens, int32_t *doc_start, int32_t *labels);
/* Row index the cursor position maps to (the epoch's permutation). */
int64_t ra_train_data_row_at(ra_train_data *d, int64_t position);

/* Held-out rows (the set-aside tail, or every row of a stream opened with
 * RA_HELDOUT_ALL): fills B rows starting at held-out row `first`, wrapping
 * around when there are fewer. */
void ra_train_data_heldout(const ra_train_data *d, int64_t first, int B, int32_t *tokens, int32_t *doc_start,
                           int32_t *labels);

/* Row labels and document starts of a flat token window: exposed for the
 * unit tests and for tools that pack their own rows.  flags[i] = 1 where a
 * document starts; next_token/next_flag describe the token after the window
 * (next_flag = 1 or next_token < 0: none in the same document). */
void ra_train_row_fill(const int32_t *ids, const uint8_t *flags, int T, int32_t next_token, int next_flag,
                       int32_t *tokens, int32_t *doc_start, int32_t *labels);

#endif
