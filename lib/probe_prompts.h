/* The key-value retrieval prompts of ra-probe (DESIGN §2.2, the
 * Gather-and-Aggregate format), byte for byte:
 *
 *   Memorize the following dictionary:\n
 *   <key1>:<value1>\n
 *   ...
 *   <keyK>:<valueK>\n
 *   The value of the key '<key_j>' is
 *
 * (no newline and no space after the final "is").  Keys are K distinct words
 * of a word list, values K distinct integers 0–99, the queried pair uniform
 * among the K; everything follows from (seed, pairs, samples, word list).
 *
 * Scoring strings: in "choice" mode every value's decimal string is a
 * candidate appended directly after "is" ("is42"); in "last-token" mode the
 * answer " <value>" (leading space) is appended and its last token is scored. */
#ifndef RA_PROBE_PROMPTS_H
#define RA_PROBE_PROMPTS_H

#include <stdint.h>

#include "error.h"

#define PROBE_MAX_PAIRS 100 /* values are distinct integers 0..99 */
#define PROBE_MIN_WORD 3
#define PROBE_MAX_WORD 10
#define PROBE_DEFAULT_WORDS "/usr/share/dict/words"

typedef enum { PROBE_SCORE_CHOICE = 0, PROBE_SCORE_LAST_TOKEN = 1 } probe_score_mode;

/* A filtered word list: lower-case ASCII letters only, 3–10 letters,
 * duplicates dropped, first occurrence order kept. */
typedef struct probe_words {
    int n;
    char **w;
    char *path; /* for messages */
} probe_words;

/* Load and filter a word list (one word per line; "\r\n" accepted).  Lines
 * that do not pass the filter are skipped.  Missing file: EX_NOINPUT;
 * unreadable: EX_IOERR. */
int probe_words_load(const char *path, probe_words *out, ra_error *err);
void probe_words_free(probe_words *w);

typedef struct probe_prompt {
    int pairs;
    const char **key; /* [pairs], borrowed from the word list */
    int *value;       /* [pairs], distinct, 0..99 */
    int query;        /* index of the queried pair */
    char *text;       /* the prompt, NUL-terminated */
} probe_prompt;

typedef struct probe_prompts {
    int n, pairs;
    uint64_t seed;
    probe_prompt *p;
} probe_prompts;

/* Generate `samples` prompts of `pairs` pairs.  pairs must be in
 * [1, PROBE_MAX_PAIRS] and at most the number of words (else EX_DATAERR
 * naming the word file and both counts); samples >= 1. */
int probe_prompts_generate(const probe_words *words, uint64_t seed, int pairs, int samples,
                           probe_prompts *out, ra_error *err);
void probe_prompts_free(probe_prompts *ps);

/* The correct value of a prompt. */
static inline int probe_answer(const probe_prompt *p) { return p->value[p->query]; }

/* The text appended after the prompt: "<v>" (choice candidate) or " <v>"
 * (last-token answer).  buf holds at least 8 bytes; returns buf. */
char *probe_continuation(int value, probe_score_mode mode, char *buf);

const char *probe_score_name(probe_score_mode m);
int probe_score_parse(const char *s, probe_score_mode *out); /* 0 ok, -1 unknown */

/* Write every prompt as readable text (for --dump-prompts): per prompt a
 * line "# prompt I of N: answer V" (I from 1), the prompt text, a newline,
 * and a blank line.  path "-" is stdout.  Returns 0 or EX_IOERR. */
int probe_prompts_dump(const probe_prompts *ps, const char *path, ra_error *err);

#endif
