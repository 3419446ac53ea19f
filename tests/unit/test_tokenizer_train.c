/* BPE training (lib/tokenizer_train.c) and the KV training documents
 * (lib/kv_docs.c).
 *
 * The merges are checked against a naive reimplementation of the definition
 * in tokenizer_train.h written here (recount every pair every step, linear
 * searches) on random corpora over a small alphabet, where ties are common.
 * The trained tokenizer.json is loaded by our own loader and must encode and
 * decode text back byte for byte; training is deterministic. */
#include <jansson.h>
#include <string.h>
#include <unistd.h>

#include "kv_docs.h"
#include "tokenizer.h"
#include "tokenizer_train.h"
#include "test.h"

/* ---- naive BPE (the definition, nothing shared with the library) ---------- */

#define NV_MAX_TOK 4096
typedef struct naive {
    char *tok[NV_MAX_TOK]; /* raw bytes, NUL-terminated (the corpora have no NUL) */
    int n_tok;
    int *w[2048], wn[2048];
    long wf[2048];
    int n_words;
    int ma[NV_MAX_TOK], mb[NV_MAX_TOK], n_merges;
} naive;

static int nv_find(const naive *v, const char *s) {
    for (int i = 0; i < v->n_tok; i++)
        if (!strcmp(v->tok[i], s)) return i;
    return -1;
}

/* Words of a text of lower-case words separated by single spaces: the
 * Llama-3 regex gives "word" then " word" pieces. */
static void nv_init(naive *v, const char *text) {
    memset(v, 0, sizeof *v);
    for (int b = 1; b < 256; b++) { /* byte 0 gets id 0 too, never used */
        v->tok[b] = xcalloc(2, 1);
        v->tok[b][0] = (char)b;
    }
    v->tok[0] = xcalloc(2, 1);
    v->n_tok = 256;
    const char *p = text;
    while (*p) {
        const char *e = p + 1;
        while (*e && *e != ' ') e++;
        int len = (int)(e - p), found = -1;
        for (int i = 0; i < v->n_words && found < 0; i++) {
            if (v->wn[i] != len) continue;
            int same = 1;
            for (int k = 0; k < len; k++) same &= v->w[i][k] == (unsigned char)p[k];
            if (same) found = i;
        }
        if (found < 0) {
            found = v->n_words++;
            v->w[found] = xmalloc((size_t)len * sizeof(int));
            v->wn[found] = len;
            for (int k = 0; k < len; k++) v->w[found][k] = (unsigned char)p[k];
        }
        v->wf[found]++;
        p = e;
    }
}

static void nv_train(naive *v, int vocab_size) {
    while (v->n_tok + 2 < vocab_size) {
        /* count every adjacent pair: a flat list, linear search */
        int np = 0, *pa = xmalloc(65536 * sizeof(int)), *pb = xmalloc(65536 * sizeof(int));
        long *pc = xmalloc(65536 * sizeof(long));
        for (int i = 0; i < v->n_words; i++)
            for (int k = 0; k + 1 < v->wn[i]; k++) {
                int a = v->w[i][k], b = v->w[i][k + 1], j = 0;
                while (j < np && !(pa[j] == a && pb[j] == b)) j++;
                if (j == np) pa[np] = a, pb[np] = b, pc[np] = 0, np++;
                pc[j] += v->wf[i];
            }
        int best = -1;
        for (int j = 0; j < np; j++)
            if (best < 0 || pc[j] > pc[best] || (pc[j] == pc[best] && (pa[j] < pa[best] || (pa[j] == pa[best] && pb[j] < pb[best]))))
                best = j;
        if (best < 0) {
            free(pa), free(pb), free(pc);
            break;
        }
        int a = pa[best], b = pb[best];
        free(pa), free(pb), free(pc);
        char *s = xmalloc(strlen(v->tok[a]) + strlen(v->tok[b]) + 1);
        strcpy(s, v->tok[a]);
        strcat(s, v->tok[b]);
        int c = nv_find(v, s);
        if (c < 0) c = v->n_tok, v->tok[v->n_tok++] = s;
        else free(s);
        v->ma[v->n_merges] = a, v->mb[v->n_merges] = b, v->n_merges++;
        for (int i = 0; i < v->n_words; i++) {
            int o = 0;
            for (int k = 0; k < v->wn[i];) {
                if (k + 1 < v->wn[i] && v->w[i][k] == a && v->w[i][k + 1] == b) v->w[i][o++] = c, k += 2;
                else v->w[i][o++] = v->w[i][k++];
            }
            v->wn[i] = o;
        }
    }
}

static void nv_free(naive *v) {
    for (int i = 0; i < v->n_tok; i++) free(v->tok[i]);
    for (int i = 0; i < v->n_words; i++) free(v->w[i]);
}

/* The byte-level form of a token of letters and spaces: ' ' is "Ġ". */
static void byte_level(const char *s, char *out) {
    for (; *s; s++) {
        if (*s == ' ') *out++ = (char)0xC4, *out++ = (char)0xA0;
        else *out++ = *s;
    }
    *out = 0;
}

static json_t *train_json(const char *const *docs, int n_docs, int vocab_size, int *n_merges) {
    ra_bpe_trainer *t;
    ra_error err = {0};
    EXPECT_EQ_INT(ra_bpe_trainer_new(&t, &err), 0);
    for (int i = 0; i < n_docs; i++) EXPECT_EQ_INT(ra_bpe_trainer_add(t, docs[i], strlen(docs[i]), &err), 0);
    ra_bytes out = {0};
    EXPECT_EQ_INT(ra_bpe_trainer_finish(t, vocab_size, &out, n_merges, &err), 0);
    ra_bpe_trainer_free(t);
    json_error_t je;
    json_t *j = json_loadb(out.v, out.n, 0, &je);
    ra_bytes_free(&out);
    EXPECT(j != NULL);
    return j;
}

static char *random_words(int n_words, int alphabet, int max_len) {
    char *s = xmalloc((size_t)n_words * (max_len + 1) + 1);
    size_t k = 0;
    for (int i = 0; i < n_words; i++) {
        if (i) s[k++] = ' ';
        int len = 1 + (int)(test_rand_u64() % (uint64_t)max_len);
        for (int j = 0; j < len; j++) s[k++] = (char)('a' + test_rand_u64() % (uint64_t)alphabet);
    }
    s[k] = 0;
    return s;
}

TEST(merges_equal_a_naive_reimplementation) {
    test_seed(41);
    const int alphabets[] = {2, 3, 5}, vocabs[] = {300, 330, 400};
    for (int c = 0; c < 3; c++) {
        char *text = random_words(400, alphabets[c], 7);
        int nm = 0;
        json_t *j = train_json((const char *const *)&text, 1, vocabs[c], &nm);
        naive v;
        nv_init(&v, text);
        nv_train(&v, vocabs[c]);
        const json_t *merges = json_object_get(json_object_get(j, "model"), "merges");
        EXPECT_EQ_INT(nm, v.n_merges);
        EXPECT_EQ_INT((int)json_array_size(merges), v.n_merges);
        int bad = 0;
        for (int k = 0; k < v.n_merges && k < (int)json_array_size(merges); k++) {
            char a[64], b[64];
            byte_level(v.tok[v.ma[k]], a);
            byte_level(v.tok[v.mb[k]], b);
            const json_t *m = json_array_get(merges, (size_t)k);
            if (strcmp(json_string_value(json_array_get(m, 0)), a) || strcmp(json_string_value(json_array_get(m, 1)), b)) {
                if (!bad) printf("#   alphabet %d: merge %d: got [%s, %s], naive [%s, %s]\n", alphabets[c], k,
                                 json_string_value(json_array_get(m, 0)), json_string_value(json_array_get(m, 1)), a, b);
                bad++;
            }
        }
        EXPECT_MSG(bad == 0, "alphabet %d: %d of %d merges differ from the naive BPE", alphabets[c], bad, v.n_merges);
        /* vocabulary: the tokens plus the two specials, ids in creation order */
        const json_t *vocab = json_object_get(json_object_get(j, "model"), "vocab");
        EXPECT_EQ_INT((int)json_object_size(vocab), v.n_tok);
        printf("#   alphabet %d: %d merges, %d tokens, naive agrees\n", alphabets[c], v.n_merges, v.n_tok);
        nv_free(&v);
        json_decref(j);
        free(text);
    }
}

/* Small corpora run out of pairs before the vocabulary is full. */
TEST(training_stops_when_no_pair_is_left) {
    const char *doc = "ab ab";
    int nm = 0;
    json_t *j = train_json(&doc, 1, 1000, &nm);
    /* words "ab" and " ab": merges a+b, then " "+"ab" */
    EXPECT_EQ_INT(nm, 2);
    json_decref(j);
    ra_bpe_trainer *t;
    ra_error err = {0};
    EXPECT_EQ_INT(ra_bpe_trainer_new(&t, &err), 0);
    ra_bytes out = {0};
    EXPECT_EQ_INT(ra_bpe_trainer_finish(t, 257, &out, NULL, &err), EX_USAGE);
    ra_bpe_trainer_free(t);
}

static const char *const english[] = {
    "The quick brown fox jumps over the lazy dog. It's 2024, and we've got 1234567 reasons!\n",
    "Caf\xc3\xa9 na\xc3\xafve \xe2\x80\x94 \xe6\x9d\xb1\xe4\xba\xac  tabs\tand\r\nnew lines\n\n  indented code();\n",
    "This program is free software; you can redistribute it and/or modify it under the terms of the GNU "
    "General Public License as published by the Free Software Foundation.\n",
};

TEST(trained_tokenizer_loads_and_round_trips) {
    /* a corpus: KV documents and English */
    probe_words words = {0};
    ra_error err = {0};
    EXPECT_EQ_INT(probe_words_load("tests/fixtures/words.txt", &words, &err), 0);
    enum { NDOC = 40 };
    char *docs[NDOC + 3];
    for (int i = 0; i < NDOC; i++) {
        ra_bytes b = {0};
        kv_doc_text(&words, 11, i, &b);
        docs[i] = b.v;
    }
    for (int i = 0; i < 3; i++) docs[NDOC + i] = strdup(english[i]);
    int nm1 = 0, nm2 = 0;
    json_t *j1 = train_json((const char *const *)docs, NDOC + 3, 700, &nm1);
    json_t *j2 = train_json((const char *const *)docs, NDOC + 3, 700, &nm2);
    char *s1 = json_dumps(j1, JSON_COMPACT), *s2 = json_dumps(j2, JSON_COMPACT);
    EXPECT_MSG(!strcmp(s1, s2), "two trainings on the same documents differ");
    EXPECT_EQ_INT(nm1, 700 - 258); /* this corpus has enough pairs */

    ra_tokenizer *tok;
    EXPECT_EQ_INT(ra_tokenizer_load_json(s1, strlen(s1), "trained", &tok, &err), 0);
    EXPECT_EQ_INT((int)ra_tokenizer_vocab_size(tok), 700);
    EXPECT_EQ_INT(ra_tokenizer_token_id(tok, "<|begin_of_text|>"), 698);
    EXPECT_EQ_INT(ra_tokenizer_token_id(tok, "<|end_of_text|>"), 699);
    /* round trip on the corpus and on text it never saw */
    const char *unseen = "Zebras \xf0\x9f\xa6\x93 quietly graze: x=42; \"quoted\" <|end_of_text|> end";
    long bytes = 0, tokens = 0;
    for (int i = 0; i <= NDOC + 3; i++) {
        const char *text = i < NDOC + 3 ? docs[i] : unseen;
        ra_ids ids = {0};
        ra_bytes back = {0};
        EXPECT_EQ_INT(ra_tokenizer_encode(tok, text, strlen(text), 0, &ids, &err), 0);
        EXPECT_EQ_INT(ra_tokenizer_decode(tok, ids.v, ids.n, &back, &err), 0);
        EXPECT_MSG(back.n == strlen(text) && !memcmp(back.v, text, back.n), "document %d does not round-trip", i);
        if (i < NDOC) bytes += (long)strlen(text), tokens += (long)ids.n;
        if (i == NDOC + 3) {
            int special = 0;
            for (int64_t k = 0; k < ids.n; k++) special += ids.v[k] == 699;
            EXPECT_MSG(special == 1, "the end-of-text string is the special token");
        }
        ids.n = 0;
        EXPECT_EQ_INT(ra_tokenizer_encode(tok, text, strlen(text), 1, &ids, &err), 0);
        EXPECT_EQ_INT(ids.v[0], 698); /* the template adds <|begin_of_text|> */
        ra_ids_free(&ids);
        ra_bytes_free(&back);
    }
    printf("#   KV documents: %.2f bytes per token with 700 tokens\n", (double)bytes / (double)tokens);
    EXPECT(2 * bytes > 3 * tokens); /* the merges compress (1 token per byte without them) */
    ra_tokenizer_free(tok);
    free(s1), free(s2);
    json_decref(j1), json_decref(j2);
    for (int i = 0; i < NDOC + 3; i++) free(docs[i]);
    probe_words_free(&words);
}

/* ---- KV documents ----------------------------------------------------------- */

/* Synthetic keys "qz" + letters: no template word starts with "qz". */
static int key_at(const char *s, const char **k, int *klen) {
    const char *p = strstr(s, "qz");
    if (!p) return 0;
    const char *e = p;
    while (*e >= 'a' && *e <= 'z') e++;
    *k = p, *klen = (int)(e - p);
    return 1;
}

static int number_after(const char *s, int *v) {
    while (*s && !(*s >= '0' && *s <= '9')) s++;
    if (!*s) return 0;
    *v = atoi(s);
    return 1;
}

TEST(kv_documents_answer_correctly_and_vary) {
    char path[] = "/tmp/ra-test-kvwords-XXXXXX";
    int fd = mkstemp(path);
    FILE *f = fdopen(fd, "w");
    for (int i = 0; i < 400; i++) fprintf(f, "qz%c%c%c\n", 'a' + i % 26, 'a' + (i / 26) % 26, 'a' + i % 7);
    fclose(f);
    probe_words words;
    ra_error err = {0};
    EXPECT_EQ_INT(probe_words_load(path, &words, &err), 0);
    int min_k = 1000, max_k = 0, questions = 0, probe_form = 0, no_space = 0, headers = 0, wrong = 0;
    int max_q = 0, probe_pairs = 0;
    for (int d = 0; d < 3000; d++) {
        ra_bytes b = {0}, again = {0};
        kv_doc_text(&words, 23, d, &b);
        kv_doc_text(&words, 23, d, &again);
        EXPECT(b.n == again.n && !memcmp(b.v, again.v, b.n));
        headers += !strncmp(b.v, "Memorize the following dictionary:\n", 35);
        char keys[64][16];
        int vals[64], k = 0, seen_val[100] = {0}, doc_questions = 0;
        char *save = NULL, *text = strdup(b.v);
        for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
            const char *kp;
            int kl, v = -1;
            if (!key_at(line, &kp, &kl)) continue;
            int found = -1;
            for (int i = 0; i < k; i++)
                if ((int)strlen(keys[i]) == kl && !strncmp(keys[i], kp, (size_t)kl)) found = i;
            if (found < 0) { /* first mention: a pair line */
                /* EXPECT does not stop the test: a bad line must not index
                 * past keys[], vals[] or seen_val[], so stop reading this
                 * document (the failure is already counted) */
                int ok = k < 64 && kl < (int)sizeof keys[k] && number_after(kp + kl, &v) && v >= 0 && v < 100;
                EXPECT_MSG(ok, "doc %d: pair %d: bad pair line '%s'", d, k, line);
                if (!ok) break;
                int n = snprintf(keys[k], sizeof keys[k], "%.*s", kl, kp);
                EXPECT(n == kl);
                probe_pairs += k == 0 && kp == line && kp[kl] == ':' && kp[kl + 1] != ' ';
                EXPECT_MSG(!seen_val[v], "doc %d: value %d twice", d, v);
                seen_val[v] = 1;
                vals[k++] = v;
                continue;
            }
            questions++, doc_questions++; /* the answer is on this line or, for "Q:/A:", the next */
            if (strstr(line, "The value of the key '")) {
                probe_form++;
                no_space += strstr(line, "' is") && kp[kl + 4] != ' ';
            }
            if (!number_after(kp + kl, &v)) {
                char *next = strtok_r(NULL, "\n", &save);
                EXPECT(next && number_after(next, &v));
            }
            wrong += v != vals[found];
        }
        if (doc_questions > max_q) max_q = doc_questions;
        if (k < min_k) min_k = k;
        if (k > max_k) max_k = k;
        free(text);
        ra_bytes_free(&b), ra_bytes_free(&again);
    }
    printf("#   3000 documents: %d..%d pairs, %d questions (at most %d per document; %d in the probe's form, %d without a "
           "space), %d with the probe's header, %d with its pair format, %d wrong answers\n",
           min_k, max_k, questions, max_q, probe_form, no_space, headers, probe_pairs, wrong);
    EXPECT_EQ_INT(wrong, 0);
    EXPECT_EQ_INT(min_k, 1);
    EXPECT_EQ_INT(max_k, KV_DOCS_MAX_PAIRS);
    EXPECT(probe_form > 0 && no_space > 0 && no_space < probe_form && headers > 0);
    EXPECT_EQ_INT(max_q, KV_DOCS_MAX_QUESTIONS);
    /* the probe's templates: 1/2 + 1/2 · 1/count of the time (headers 6, pair
     * formats 6, question forms 5): 0.583, 0.583, 0.6; 3000 draws give a
     * standard deviation under 0.01 */
    EXPECT(fabs(headers / 3000.0 - 7.0 / 12) < 0.04 && fabs(probe_pairs / 3000.0 - 7.0 / 12) < 0.04);
    EXPECT(fabs((double)probe_form / questions - 0.6) < 0.04);
    /* other seeds give other documents; the evaluation seeds are refused */
    ra_bytes x = {0}, y = {0};
    kv_doc_text(&words, 23, 5, &x);
    kv_doc_text(&words, 24, 5, &y);
    EXPECT(x.n != y.n || memcmp(x.v, y.v, x.n));
    ra_bytes_free(&x), ra_bytes_free(&y);
    ra_bytes out = {0};
    EXPECT_EQ_INT(kv_docs_generate_jsonl(path, KV_DOCS_RESERVED_SEED_A, 1, &out, &err), EX_USAGE);
    EXPECT_EQ_INT(kv_docs_generate_jsonl(path, KV_DOCS_RESERVED_SEED_B, 1, &out, &err), EX_USAGE);
    EXPECT_EQ_INT(kv_docs_generate_jsonl(path, 5, 3, &out, &err), 0);
    int lines = 0;
    for (size_t i = 0; i < out.n; i++) lines += out.v[i] == '\n';
    EXPECT_EQ_INT(lines, 3);
    ra_bytes_free(&out);
    probe_words_free(&words);
    unlink(path);
}

int main(void) {
    RUN(merges_equal_a_naive_reimplementation);
    RUN(training_stops_when_no_pair_is_left);
    RUN(trained_tokenizer_loads_and_round_trips);
    RUN(kv_documents_answer_correctly_and_vary);
    return test_summary();
}
