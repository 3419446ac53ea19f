/* Key-value retrieval documents for training a small teacher (issue 8):
 * the probe's dictionary-lookup task (lib/probe_prompts.h) in varied
 * templates, with the answers written out, so a model trained on them
 * learns to retrieve.
 *
 * One document: an optional header line (one of several, among them the
 * probe's "Memorize the following dictionary:"), K pairs (K uniform in
 * 1..KV_DOCS_MAX_PAIRS; keys K distinct words of the list, values K
 * distinct integers 0..99) in one pair format per document (among them the
 * probe's "<key>:<value>"), then 1..KV_DOCS_MAX_QUESTIONS questions about
 * random pairs of the document, each followed by its answer and a newline.
 * Among the question forms is the probe's "The value of the key '<key>' is"
 * followed by the value with or without a leading space (the probe's
 * last-token and choice scoring).  Header, pair format and each question
 * form are the probe's own with probability 1/2, else uniform over all the
 * templates (the probe's included), so about a third of the documents are
 * in the probe's exact format.  Everything follows from (word list, seed,
 * document index).
 *
 * Seeds: KV_DOCS_RESERVED_SEED_A/B (ra-probe's and ra-eval kv's default
 * prompt seeds) are refused, so training data never replays the
 * evaluation's prompt stream by construction of the seed. */
#ifndef RA_KV_DOCS_H
#define RA_KV_DOCS_H

#include <stdint.h>

#include "error.h"
#include "probe_prompts.h"
#include "tokenizer.h"

#define KV_DOCS_MAX_PAIRS 60
#define KV_DOCS_MAX_QUESTIONS 8
#define KV_DOCS_RESERVED_SEED_A 1       /* ra-probe --seed default */
#define KV_DOCS_RESERVED_SEED_B 1000003 /* ra-eval kv default (lib/eval_kv.h) */

/* Append document `index` of stream `seed` (its text, no JSON) to out.
 * words->n must be at least KV_DOCS_MAX_PAIRS. */
void kv_doc_text(const probe_words *words, uint64_t seed, int64_t index, ra_bytes *out);

/* Load the word list and append n documents as JSON lines {"text": ...}.
 * EX_USAGE for a reserved seed; EX_DATAERR when the list has fewer than
 * KV_DOCS_MAX_PAIRS usable words; the word list's own errors. */
int kv_docs_generate_jsonl(const char *words_path, uint64_t seed, int64_t n, ra_bytes *out, ra_error *err);

/* The teacher's training mixture as JSON lines {"text": ...}: n_kv KV
 * documents of stream `seed` and every file of `files` as one document each
 * (its bytes, ill-formed UTF-8 replaced by U+FFFD), in an order shuffled by
 * `seed`.  Same errors as kv_docs_generate_jsonl, plus EX_NOINPUT/EX_IOERR
 * naming a file that cannot be read. */
int kv_docs_mix_jsonl(const char *words_path, uint64_t seed, int64_t n_kv, char *const *files, int n_files,
                      ra_bytes *out, ra_error *err);

#endif
