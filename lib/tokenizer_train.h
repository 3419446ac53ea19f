/* Training a byte-level BPE tokenizer (Llama-3 style) and writing it as a
 * Hugging Face tokenizer.json that lib/tokenizer*.c (and `tokenizers`) load.
 *
 * The tokenizer it writes:
 *   normalizer     null
 *   pre_tokenizer  Split(the Llama-3 regex, Isolated), ByteLevel(no prefix
 *                  space, no regex): words are the regex's pieces
 *   model          BPE over bytes: ids 0..255 are the 256 single bytes (byte
 *                  b is id b), then one id per learned merge whose string is
 *                  new; ignore_merges false, no unk token
 *   added_tokens   <|begin_of_text|> and <|end_of_text|> (special), the two
 *                  ids after the model vocabulary
 *   post_processor TemplateProcessing: <|begin_of_text|> $A
 *   decoder        ByteLevel
 *
 * Merge learning (the definition the unit test reimplements naively):
 * words are counted over every document (the pre-tokenisation encoding uses,
 * special-token strings in the text excluded, invalid UTF-8 replaced); each
 * word starts as its bytes.  Repeat until the vocabulary (with the two
 * special tokens) has vocab_size entries or no adjacent pair is left: count
 * every adjacent pair of symbols over all words, weighted by word count;
 * take the pair (a, b) with the largest count, ties to the smaller a, then
 * the smaller b (ids); its token is the concatenation of the two byte
 * strings, which gets the next id unless a token with those bytes already
 * exists (then that id is reused and the vocabulary does not grow); replace
 * every occurrence of a b in every word by it, left to right,
 * non-overlapping.  Deterministic: the output depends only on the text. */
#ifndef RA_TOKENIZER_TRAIN_H
#define RA_TOKENIZER_TRAIN_H

#include <stddef.h>

#include "error.h"
#include "tokenizer.h"

#define RA_BPE_MIN_VOCAB 258 /* the 256 bytes and the two special tokens */
#define RA_BPE_MAX_VOCAB (1 << 20)

typedef struct ra_bpe_trainer ra_bpe_trainer;

/* A trainer with no documents yet. */
int ra_bpe_trainer_new(ra_bpe_trainer **out, ra_error *err);
/* Count the words of one document (any bytes). */
int ra_bpe_trainer_add(ra_bpe_trainer *t, const char *text, size_t n, ra_error *err);
/* Learn merges up to vocab_size tokens (special tokens included) and append
 * the tokenizer.json text to json.  *n_merges (may be NULL) receives the
 * number of merges learned.  EX_USAGE for a vocab_size outside
 * [RA_BPE_MIN_VOCAB, RA_BPE_MAX_VOCAB]. */
int ra_bpe_trainer_finish(ra_bpe_trainer *t, int vocab_size, ra_bytes *json, int *n_merges, ra_error *err);
void ra_bpe_trainer_free(ra_bpe_trainer *t);

#endif
