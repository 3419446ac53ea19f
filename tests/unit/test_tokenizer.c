/* Tokenizer tests: a hand-written tiny byte-level BPE with hand-derived ids,
 * round trips, long words, refusals, invalid UTF-8, and (when
 * tests/fixtures/tokenizers exists) parity with the Hugging Face tokenizers
 * library on the committed fixture cases. */
#include <dirent.h>
#include <jansson.h>
#include <sys/stat.h>

#include "cli.h"
#include "test.h"
#include "tokenizer.h"
#include "tokenizer_internal.h"

#define FIXTURES "tests/fixtures/tokenizers"

/* ---------------------------------------------------------------- building tiny tokenizers */

/* GPT-2's byte-level character of byte b, as UTF-8 (independent of the
 * library: printable Latin-1 maps to itself, the rest to 256, 257, ...). */
static void byte_char_utf8(int b, char out[4]) {
    int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    int cp = b;
    if (!printable) {
        cp = 256;
        for (int k = 0; k < b; k++)
            if (!((k >= '!' && k <= '~') || (k >= 0xA1 && k <= 0xAC) || (k >= 0xAE && k <= 0xFF))) cp++;
    }
    memset(out, 0, 4);
    if (cp < 0x80) out[0] = (char)cp;
    else {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
    }
}

/* Vocabulary: id b for the token of byte b, then the merged tokens below.
 * Merges in rank order (Ġ is the byte-level form of a space):
 *   0 "Ġ t" -> "Ġt" 256    1 "h e" -> "he" 257    2 "Ġt he" -> "Ġthe" 258
 *   3 "a b" -> "ab" 259    4 "ab c" -> "abc" 260  5 "b c" -> "bc" 261
 *   6 "a a" -> "aa" 263
 * 262 is the added special token <|bos|>; 264 "xyz" is in the vocabulary but
 * no merge makes it (reachable only with ignore_merges). */
static json_t *tiny_json(void) {
    json_t *vocab = json_object();
    for (int b = 0; b < 256; b++) {
        char c[4];
        byte_char_utf8(b, c);
        json_object_set_new(vocab, c, json_integer(b));
    }
    const char *extra[] = {"Ġt", "he", "Ġthe", "ab", "abc", "bc", "<|bos|>", "aa", "xyz"};
    for (int i = 0; i < 9; i++) json_object_set_new(vocab, extra[i], json_integer(256 + i));
    json_t *root = json_pack(
        "{s:s, s:n, s:n, s:[{s:i, s:s, s:b, s:b, s:b, s:b, s:b}], s:n,"
        " s:{s:s, s:b, s:b, s:b},"
        " s:{s:s, s:[{s:{s:s, s:i}}, {s:{s:s, s:i}}], s:[], s:{s:{s:s, s:[i], s:[s]}}},"
        " s:{s:s, s:b, s:b, s:b},"
        " s:{s:s, s:n, s:n, s:n, s:n, s:b, s:b, s:b, s:o, s:[s, s, s, s, s, s, s]}}",
        "version", "1.0", "truncation", "padding", "added_tokens", "id", 262, "content", "<|bos|>",
        "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 0, "special", 1, "normalizer",
        "pre_tokenizer", "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1, "use_regex", 1,
        "post_processor", "type", "TemplateProcessing", "single", "SpecialToken", "id", "<|bos|>", "type_id", 0,
        "Sequence", "id", "A", "type_id", 0, "pair", "special_tokens", "<|bos|>", "id", "<|bos|>", "ids", 262,
        "tokens", "<|bos|>",
        "decoder", "type", "ByteLevel", "add_prefix_space", 1, "trim_offsets", 1, "use_regex", 1,
        "model", "type", "BPE", "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix",
        "fuse_unk", 0, "byte_fallback", 0, "ignore_merges", 0, "vocab", vocab, "merges", "Ġ t", "h e",
        "Ġt he", "a b", "ab c", "b c", "a a");
    if (!root) {
        printf("# json_pack failed\n");
        exit(1);
    }
    return root;
}

static ra_tokenizer *load_from(json_t *root, ra_error *err) {
    char *s = json_dumps(root, 0);
    ra_tokenizer *t = NULL;
    memset(err, 0, sizeof *err);
    ra_tokenizer_load_json(s, strlen(s), "tiny.json", &t, err);
    free(s);
    return t;
}

static ra_tokenizer *tiny(void) {
    json_t *root = tiny_json();
    ra_error err;
    ra_tokenizer *t = load_from(root, &err);
    json_decref(root);
    if (!t) printf("# tiny tokenizer failed to load: %s\n", err.msg);
    return t;
}

static int ids_equal(const ra_ids *a, const int32_t *b, int64_t n) {
    if (a->n != n) return 0;
    for (int64_t i = 0; i < n; i++)
        if (a->v[i] != b[i]) return 0;
    return 1;
}

static void print_ids(const char *what, const int32_t *v, int64_t n) {
    printf("#   %s:", what);
    for (int64_t i = 0; i < n && i < 40; i++) printf(" %d", v[i]);
    printf("%s\n", n > 40 ? " ..." : "");
}

static void expect_encode(ra_tokenizer *t, const char *text, int specials, const int32_t *want, int64_t n) {
    ra_ids ids = {0};
    ra_error err = {0};
    int r = ra_tokenizer_encode(t, text, strlen(text), specials, &ids, &err);
    EXPECT_MSG(r == 0, "encode failed: %s", err.msg);
    if (!ids_equal(&ids, want, n)) {
        TEST_FAIL_("encode(\"%s\", specials=%d) differs", text, specials);
        print_ids("got ", ids.v, ids.n);
        print_ids("want", want, n);
    }
    ra_ids_free(&ids);
}

/* ---------------------------------------------------------------- hand-derived cases */

TEST(tiny_merges_by_rank) {
    ra_tokenizer *t = tiny();
    EXPECT(t != NULL);
    if (!t) return;
    /* " the": Ġ t h e -> (Ġt rank 0) Ġt h e -> (he rank 1) Ġt he -> (rank 2) Ġthe. */
    expect_encode(t, " the", 0, (int32_t[]){258}, 1);
    /* "abc": ab (3) before bc (5), then ab c (4). */
    expect_encode(t, "abc", 0, (int32_t[]){260}, 1);
    /* "bcab" pre-tokenises as one word: ab (3) first, then b c (5): [bc, ab]. */
    expect_encode(t, "bcab", 0, (int32_t[]){261, 259}, 2);
    /* Equal ranks: the leftmost pair merges first: aaa -> [aa, a]. */
    expect_encode(t, "aaa", 0, (int32_t[]){263, 'a'}, 2);
    /* GPT-2 regex: " the", " abc" are words; "it's" -> "it", "'s". */
    expect_encode(t, " the abc", 0, (int32_t[]){258, ' ', 260}, 3);
    expect_encode(t, "it's", 0, (int32_t[]){'i', 't', '\'', 's'}, 4);
    /* "xyz" is in the vocabulary but no merge builds it. */
    expect_encode(t, "xyz", 0, (int32_t[]){'x', 'y', 'z'}, 3);
    /* Newlines and spaces: "\n\n" is one whitespace word; "a  b": "a", " ", " b". */
    expect_encode(t, "a  b", 0, (int32_t[]){'a', ' ', ' ', 'b'}, 4);
    expect_encode(t, "", 0, NULL, 0);
    ra_tokenizer_free(t);
}

TEST(tiny_specials_and_template) {
    ra_tokenizer *t = tiny();
    if (!t) return;
    expect_encode(t, " the", 1, (int32_t[]){262, 258}, 2);
    expect_encode(t, "", 1, (int32_t[]){262}, 1);
    /* The added token is matched before pre-tokenisation, anywhere. */
    expect_encode(t, "a<|bos|>b", 0, (int32_t[]){'a', 262, 'b'}, 3);
    expect_encode(t, "<|bos|><|bos|>", 1, (int32_t[]){262, 262, 262}, 3);
    /* A broken added token is plain text: < | b o s | (GPT-2 regex: "<|", "bos", "|"). */
    expect_encode(t, "<|bos|", 0, (int32_t[]){'<', '|', 'b', 'o', 's', '|'}, 6);
    EXPECT_EQ_INT(ra_tokenizer_vocab_size(t), 265);
    EXPECT_EQ_INT(ra_tokenizer_token_id(t, "<|bos|>"), 262);
    EXPECT_STR(ra_tokenizer_token(t, 258), "Ġthe");
    EXPECT_EQ_INT(strlen(ra_tokenizer_id(t)), 32);
    ra_tokenizer_free(t);
}

TEST(tiny_ignore_merges) {
    json_t *root = tiny_json();
    json_object_set_new(json_object_get(root, "model"), "ignore_merges", json_true());
    ra_error err;
    ra_tokenizer *t = load_from(root, &err);
    json_decref(root);
    EXPECT_MSG(t != NULL, "%s", err.msg);
    if (!t) return;
    expect_encode(t, "xyz", 0, (int32_t[]){264}, 1);
    expect_encode(t, "abc", 0, (int32_t[]){260}, 1); /* in the vocabulary anyway */
    expect_encode(t, "bcab", 0, (int32_t[]){261, 259}, 2);
    ra_tokenizer_free(t);
}

TEST(tiny_split_regex_and_prefix_space) {
    /* Llama-3 style: Split(Regex) then ByteLevel without its own regex; the
     * split regex here isolates runs of letters, so " the" is " " + "the". */
    json_t *root = tiny_json();
    json_t *pre = json_pack("{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b, s:b}]}", "type", "Sequence",
                            "pretokenizers", "type", "Split", "pattern", "Regex", "\\p{L}+", "behavior",
                            "Isolated", "invert", 0, "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets",
                            0, "use_regex", 0);
    json_object_set_new(root, "pre_tokenizer", pre);
    ra_error err;
    ra_tokenizer *t = load_from(root, &err);
    EXPECT_MSG(t != NULL, "%s", err.msg);
    if (t) {
        expect_encode(t, " the", 0, (int32_t[]){' ', 't', 257}, 3);
        expect_encode(t, "ab,abc", 0, (int32_t[]){259, ',', 260}, 3);
        ra_tokenizer_free(t);
    }
    /* ByteLevel add_prefix_space: "the" becomes " the". */
    json_t *bl = json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", 1, "trim_offsets", 0,
                           "use_regex", 1);
    json_object_set_new(root, "pre_tokenizer", bl);
    t = load_from(root, &err);
    EXPECT_MSG(t != NULL, "%s", err.msg);
    if (t) {
        expect_encode(t, "the", 0, (int32_t[]){258}, 1);
        expect_encode(t, " the", 0, (int32_t[]){258}, 1);
        /* Each piece between added tokens gets its own prefix space. */
        expect_encode(t, "the<|bos|>the", 0, (int32_t[]){258, 262, 258}, 3);
        ra_tokenizer_free(t);
    }
    json_decref(root);
}

TEST(added_token_flags) {
    json_t *root = tiny_json();
    json_t *added = json_object_get(root, "added_tokens");
    /* "ab" as a non-special added token that only matches whole words, and
     * "Q" with lstrip+rstrip. */
    json_array_append_new(added, json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", 259, "content", "ab",
                                           "single_word", 1, "lstrip", 0, "rstrip", 0, "normalized", 0,
                                           "special", 0));
    json_array_append_new(added, json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", 265, "content", "ZZ",
                                           "single_word", 0, "lstrip", 1, "rstrip", 1, "normalized", 1,
                                           "special", 0));
    /* Content already in the vocabulary keeps its vocabulary id (81), whatever
     * id the file says, as in Hugging Face's add_tokens. */
    json_array_append_new(added, json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", 300, "content", "Q",
                                           "single_word", 0, "lstrip", 0, "rstrip", 1, "normalized", 0,
                                           "special", 0));
    ra_error err;
    ra_tokenizer *t = load_from(root, &err);
    json_decref(root);
    EXPECT_MSG(t != NULL, "%s", err.msg);
    if (!t) return;
    /* "ab" alone is a word: the added token (its vocabulary id 259). */
    expect_encode(t, "x ab y", 0, (int32_t[]){'x', ' ', 259, ' ', 'y'}, 5);
    /* inside "abc" it is not a single word: BPE gives abc. */
    expect_encode(t, "abc", 0, (int32_t[]){260}, 1);
    /* "ZZ" takes the spaces around it: "a  ZZ  b" -> "a", ZZ, "b" (without
     * the added token: a, " ", " ZZ", " ", " b"). */
    expect_encode(t, "a  ZZ  b", 0, (int32_t[]){'a', 265, 'b'}, 3);
    /* "Q" (rstrip only): "a  Q  b" -> "a", " ", " " ... the gap "a  " is
     * pre-tokenised as "a", "  " (\s+ at the end), then Q, then "b". */
    expect_encode(t, "a  Q  b", 0, (int32_t[]){'a', ' ', ' ', 'Q', 'b'}, 5);
    EXPECT_EQ_INT(ra_tokenizer_vocab_size(t), 266);
    ra_tokenizer_free(t);
}

TEST(invalid_utf8_is_replaced) {
    ra_tokenizer *t = tiny();
    if (!t) return;
    /* a 0xFF b -> "a\uFFFDb": U+FFFD is EF BF BD, a symbol word of its own. */
    expect_encode(t, "a\xFF" "b", 0, (int32_t[]){'a', 0xEF, 0xBF, 0xBD, 'b'}, 5);
    /* Unicode's own example (Table 3-8 / "U+FFFD substitution of maximal
     * subparts"): 61 F1 80 80 E1 80 C2 62 80 63 80 BF 64 ->
     * a FFFD FFFD FFFD b FFFD c FFFD FFFD d. */
    const char in[] = "\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64";
    ra_bytes out = {0};
    ra_utf8_sanitize(in, strlen(in), &out);
    const char want[] = "a\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD" "b\xEF\xBF\xBD" "c\xEF\xBF\xBD\xEF\xBF\xBD" "d";
    EXPECT_EQ_INT(out.n, strlen(want));
    EXPECT(out.n == strlen(want) && memcmp(out.v, want, out.n) == 0);
    ra_bytes_free(&out);
    /* Surrogates, overlongs and > U+10FFFF are ill-formed, byte by byte. */
    EXPECT(!ra_utf8_valid("\xED\xA0\x80", 3));
    EXPECT(!ra_utf8_valid("\xC0\xAF", 2));
    EXPECT(!ra_utf8_valid("\xF4\x90\x80\x80", 4));
    EXPECT(ra_utf8_valid("\xF4\x8F\xBF\xBF", 4));
    EXPECT(ra_utf8_valid("\xE2\x82\xAC", 3));
    ra_bytes o2 = {0};
    ra_utf8_sanitize("\xED\xA0\x80", 3, &o2); /* ED is valid only with 80..9F: 3 replacements */
    EXPECT_EQ_INT(o2.n, 9);
    ra_bytes_free(&o2);
    ra_tokenizer_free(t);
}

/* ---------------------------------------------------------------- round trips and scale */

static size_t random_utf8(char *buf, size_t max_chars) {
    size_t n = 0, chars = test_rand_u64() % max_chars;
    for (size_t i = 0; i < chars; i++) {
        uint64_t r = test_rand_u64();
        uint32_t cp;
        switch (r % 6) {
        case 0: cp = " \n\t\r'"[(r >> 8) % 5]; break;
        case 1: cp = 'a' + (r >> 8) % 26; break;
        case 2: cp = 0x20 + (r >> 8) % 95; break;
        case 3: cp = 0x80 + (r >> 8) % 0x780; break;
        case 4: cp = 0x800 + (r >> 8) % 0xF000; break;
        default: cp = 0x10000 + (r >> 8) % 0xFFFFF; break;
        }
        if (cp >= 0xD800 && cp <= 0xDFFF) cp = 'x';
        n += (size_t)tok_utf8_encode(cp, buf + n);
    }
    return n;
}

TEST(round_trip_random) {
    ra_tokenizer *t = tiny();
    if (!t) return;
    test_seed(7);
    char *buf = malloc(4 * 400);
    for (int iter = 0; iter < 400; iter++) {
        size_t n;
        int valid = iter % 2 == 0;
        if (valid) {
            n = random_utf8(buf, 400);
        } else {
            n = test_rand_u64() % 400;
            for (size_t i = 0; i < n; i++) buf[i] = (char)test_rand_u64();
        }
        ra_ids ids = {0};
        ra_bytes dec = {0}, want = {0};
        ra_error err = {0};
        int specials = iter % 3 == 0;
        EXPECT(ra_tokenizer_encode(t, buf, n, specials, &ids, &err) == 0);
        EXPECT(ra_tokenizer_decode(t, ids.v, ids.n, &dec, &err) == 0);
        if (specials) ra_bytes_append(&want, "<|bos|>", 7);
        ra_utf8_sanitize(buf, n, &want); /* identity on valid text */
        EXPECT_MSG(dec.n == want.n && memcmp(dec.v, want.v, want.n) == 0, "iteration %d (valid %d): round trip differs",
                   iter, valid);
        if (valid) EXPECT(want.n == n + (specials ? 7 : 0));
        ra_ids_free(&ids);
        ra_bytes_free(&dec);
        ra_bytes_free(&want);
    }
    free(buf);
    ra_tokenizer_free(t);
}

TEST(long_word_is_not_quadratic) {
    ra_tokenizer *t = tiny();
    if (!t) return;
    /* 100k letters: one pre-tokenised word.  All 'a': 50k "aa" tokens. */
    size_t n = 100000;
    char *s = malloc(n + 1);
    memset(s, 'a', n);
    ra_ids ids = {0};
    ra_error err = {0};
    double t0 = ra_now();
    EXPECT(ra_tokenizer_encode(t, s, n, 0, &ids, &err) == 0);
    EXPECT_EQ_INT(ids.n, 50000);
    int all_aa = 1;
    for (int64_t i = 0; i < ids.n; i++) all_aa &= ids.v[i] == 263;
    EXPECT(all_aa);
    /* Random a/b/c: decoding gives the word back. */
    for (size_t i = 0; i < n; i++) s[i] = (char)('a' + test_rand_u64() % 3);
    ids.n = 0;
    EXPECT(ra_tokenizer_encode(t, s, n, 0, &ids, &err) == 0);
    ra_bytes dec = {0};
    EXPECT(ra_tokenizer_decode(t, ids.v, ids.n, &dec, &err) == 0);
    EXPECT(dec.n == n && memcmp(dec.v, s, n) == 0);
    printf("# two 100k-letter words encoded in %.3f s\n", ra_now() - t0);
    ra_bytes_free(&dec);
    ra_ids_free(&ids);
    free(s);
    ra_tokenizer_free(t);
}

TEST(decode_errors_and_specials) {
    ra_tokenizer *t = tiny();
    if (!t) return;
    ra_bytes out = {0};
    ra_error err = {0};
    int32_t ok[] = {262, 258, 32, 260};
    EXPECT(ra_tokenizer_decode(t, ok, 4, &out, &err) == 0);
    EXPECT_STR(out.v, "<|bos|> the abc");
    out.n = 0;
    int32_t bad[] = {258, 9999};
    EXPECT_EQ_INT(ra_tokenizer_decode(t, bad, 2, &out, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "9999") != NULL && strstr(err.msg, "token 1") != NULL);
    /* A lone byte of a multi-byte character decodes to U+FFFD. */
    out.n = 0;
    int32_t half[] = {0xC3};
    EXPECT(ra_tokenizer_decode(t, half, 1, &out, &err) == 0);
    EXPECT_STR(out.v, "\xEF\xBF\xBD");
    ra_bytes_free(&out);
    ra_tokenizer_free(t);
}

/* ---------------------------------------------------------------- refusals */

static void expect_refused(json_t *root, const char *needle) {
    ra_error err;
    ra_tokenizer *t = load_from(root, &err);
    EXPECT_MSG(t == NULL, "loaded, but should refuse (%s)", needle);
    EXPECT_EQ_INT(err.code, EX_DATAERR);
    EXPECT_MSG(strstr(err.msg, needle) != NULL, "message '%s' does not name '%s'", err.msg, needle);
    ra_tokenizer_free(t);
    json_decref(root);
}

TEST(refusals_name_the_piece) {
    json_t *r;
    r = tiny_json();
    json_object_set_new(json_object_get(r, "model"), "type", json_string("Unigram"));
    expect_refused(r, "Unigram");
    r = tiny_json();
    json_object_set_new(json_object_get(r, "model"), "type", json_string("WordPiece"));
    expect_refused(r, "WordPiece");
    r = tiny_json();
    json_object_set_new(r, "normalizer", json_pack("{s:s}", "type", "Lowercase"));
    expect_refused(r, "Lowercase");
    r = tiny_json();
    json_object_set_new(r, "normalizer", json_pack("{s:s, s:[{s:s}, {s:s}]}", "type", "Sequence", "normalizers",
                                                   "type", "NFC", "type", "NFKD"));
    expect_refused(r, tok_have_nfc() ? "NFKD" : "NFC");
    r = tiny_json();
    json_object_set_new(json_object_get(r, "model"), "dropout", json_real(0.1));
    expect_refused(r, "dropout");
    r = tiny_json();
    json_object_set_new(json_object_get(r, "model"), "continuing_subword_prefix", json_string("##"));
    expect_refused(r, "continuing_subword_prefix");
    r = tiny_json();
    json_object_set_new(json_object_get(r, "model"), "byte_fallback", json_true());
    expect_refused(r, "byte_fallback");
    r = tiny_json();
    json_object_set_new(r, "pre_tokenizer", json_pack("{s:s}", "type", "Metaspace"));
    expect_refused(r, "Metaspace");
    r = tiny_json();
    json_object_set_new(r, "pre_tokenizer", json_pack("{s:s, s:{s:s}, s:s}", "type", "Split", "pattern", "Regex",
                                                      " ", "behavior", "Removed"));
    expect_refused(r, "Removed");
    r = tiny_json();
    json_object_set_new(r, "pre_tokenizer", json_null());
    expect_refused(r, "pre_tokenizer");
    r = tiny_json();
    json_object_set_new(r, "decoder", json_pack("{s:s}", "type", "Metaspace"));
    expect_refused(r, "Metaspace");
    r = tiny_json();
    json_object_set_new(r, "post_processor", json_pack("{s:s}", "type", "RobertaProcessing"));
    expect_refused(r, "RobertaProcessing");
    r = tiny_json();
    json_object_set_new(r, "truncation", json_pack("{s:i}", "max_length", 512));
    expect_refused(r, "truncation");
    r = tiny_json();
    json_object_del(json_object_get(r, "model"), "vocab");
    expect_refused(r, "model.vocab: missing");
    r = tiny_json();
    json_object_del(json_object_get(r, "model"), "merges");
    expect_refused(r, "model.merges: missing");
    r = tiny_json();
    json_array_append_new(json_object_get(json_object_get(r, "model"), "merges"), json_string("q z"));
    expect_refused(r, "model.merges[7]");
    r = tiny_json();
    json_array_append_new(json_object_get(json_object_get(r, "model"), "merges"), json_string("a b c"));
    expect_refused(r, "exactly two tokens");
    r = tiny_json();
    json_object_del(json_array_get(json_object_get(r, "added_tokens"), 0), "content");
    expect_refused(r, "added_tokens[0].content: missing");
    r = tiny_json();
    json_object_set_new(r, "pre_tokenizer", json_pack("{s:s, s:{s:s}, s:s}", "type", "Split", "pattern", "Regex",
                                                      "\\h+", "behavior", "Isolated"));
    expect_refused(r, "\\h");
    r = tiny_json();
    json_object_set_new(r, "pre_tokenizer", json_pack("{s:s, s:{s:s}, s:s}", "type", "Split", "pattern", "Regex",
                                                      "(unclosed", "behavior", "Isolated"));
    expect_refused(r, "does not compile");

    ra_error err;
    ra_tokenizer *t = NULL;
    EXPECT_EQ_INT(ra_tokenizer_load_json("{\"model\": ", 10, "bad.json", &t, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "bad.json: not valid JSON") != NULL);
    EXPECT_EQ_INT(ra_tokenizer_load("/nonexistent/dir/tokenizer.json", &t, &err), EX_NOINPUT);
}

TEST(regex_translation) {
    ra_bytes o = {0};
    ra_error err;
    const char *llama3 = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
                         "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    EXPECT(tok_translate_regex(llama3, strlen(llama3), &o, "x", &err) == 0);
    EXPECT_STR(o.v, "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
                    "?[^\\s\\x{85}\\p{L}\\p{N}]+[\\r\\n]*|[\\s\\x{85}]*[\\r\\n]+|[\\s\\x{85}]+(?![^\\s\\x{85}])|"
                    "[\\s\\x{85}]+");
    o.n = 0;
    EXPECT(tok_translate_regex("(?m:.)\\u00e9\\v", 14, &o, "x", &err) == 0);
    EXPECT_STR(o.v, "(?s:.)\\x{00e9}\\x{0B}");
    ra_bytes_free(&o);
}

/* U+0085 (NEL) is whitespace to Oniguruma's \s (as Hugging Face runs it)
 * but not to PCRE2's: the translated regex must agree with Oniguruma. */
static int regex_matches(const char *pattern, const char *subject) {
    pcre2_code *re;
    ra_error err;
    if (tok_compile_regex(pattern, strlen(pattern), 0, &re, "test", &err)) return -1;
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    int rc = pcre2_match(re, (PCRE2_SPTR)subject, strlen(subject), 0, PCRE2_ANCHORED, md, NULL);
    size_t end = rc >= 0 ? pcre2_get_ovector_pointer(md)[1] : 0;
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    return rc >= 0 ? (int)end : 0;
}

TEST(regex_engine_semantics) {
    EXPECT_EQ_INT(regex_matches("\\s", "\xC2\x85"), 2);       /* NEL */
    EXPECT_EQ_INT(regex_matches("\\s", "\xC2\xA0"), 2);       /* NBSP */
    EXPECT_EQ_INT(regex_matches("\\s", "\xE3\x80\x80"), 3);   /* ideographic space */
    EXPECT_EQ_INT(regex_matches("\\s", "\xE2\x80\x8B"), 0);   /* ZWSP is not whitespace */
    EXPECT_EQ_INT(regex_matches("\\S", "\xC2\x85"), 0);
    EXPECT_EQ_INT(regex_matches("[^\\s\\p{L}]", "\xC2\x85"), 0);
    EXPECT_EQ_INT(regex_matches("\\p{L}+", "\xC3\xA9t\xC3\xA9"), 5); /* Unicode letters */
    EXPECT_EQ_INT(regex_matches("\\p{N}+", "\xD9\xA3" "3"), 3);     /* Arabic-Indic digit */
    EXPECT_EQ_INT(regex_matches("(?i:'s)", "'S"), 2);
    EXPECT_EQ_INT(regex_matches("\\v", "\x0B"), 1);              /* \v is only VT, as in Oniguruma */
    EXPECT_EQ_INT(regex_matches("\\v", "\n"), 0);
    EXPECT_EQ_INT(regex_matches("a$", "a\nb"), 1);               /* Ruby: $ ends a line */
}

TEST(nfc_normalizer) {
    json_t *root = tiny_json();
    json_object_set_new(root, "normalizer", json_pack("{s:s}", "type", "NFC"));
    ra_error err;
    ra_tokenizer *t = load_from(root, &err);
    json_decref(root);
    if (!tok_have_nfc()) {
        EXPECT(t == NULL && strstr(err.msg, "NFC") != NULL);
        printf("# built without ICU: NFC refused\n");
        return;
    }
    EXPECT_MSG(t != NULL, "%s", err.msg);
    if (!t) return;
    /* e + U+0301 composes to U+00E9 (C3 A9); U+212B ANGSTROM SIGN -> U+00C5 (C3 85). */
    expect_encode(t, "e\xCC\x81", 0, (int32_t[]){0xC3, 0xA9}, 2);
    expect_encode(t, "\xE2\x84\xAB", 0, (int32_t[]){0xC3, 0x85}, 2);
    /* Already composed text is unchanged. */
    expect_encode(t, "\xC3\xA9", 0, (int32_t[]){0xC3, 0xA9}, 2);
    ra_tokenizer_free(t);
}

#if RA_HAVE_ICU
#include <unicode/unorm2.h>
#include <unicode/ustring.h>
#endif

/* NFC runs in chunks with an inert-text fast path: it must give what one
 * ICU call over the whole text gives, combining marks and Hangul jamo
 * falling anywhere, including across the chunk boundaries. */
TEST(nfc_chunking_matches_whole_text) {
#if RA_HAVE_ICU
    static const char *const pieces[] = {"e\xCC\x81", "\xCC\x81", "\xE2\x84\xAB", "\xE1\x84\x80", "\xE1\x85\xA1",
                                         "\xE1\x86\xA8", "\xE2\x80\x94", "\xE4\xB8\xAD", "a", " ", "xyz ",
                                         "\xC3\xA9", "\xCC\xA3\xCC\x87", "\xEF\xA4\x80", "\n"};
    test_seed(99);
    ra_bytes text = {0};
    /* 100 kB stretches, alternately inert (ASCII, em dash, CJK) and dense
     * with pieces that compose (marks, jamo, the Angstrom sign). */
    for (int stretch = 0; stretch < 10; stretch++) {
        size_t end = text.n + 100000 + (size_t)(test_rand_u64() % 5000);
        while (text.n < end) {
            /* dense: mostly a, U+0301, Hangul L, V, T jamo, which compose with each other */
            static const size_t dense[] = {1, 3, 4, 5, 8, 1, 3, 4, 5, 8, 0, 2, 11, 12, 13, 14};
            size_t k = stretch % 2 ? dense[test_rand_u64() % 16] : 6 + (size_t)(test_rand_u64() % 5);
            ra_bytes_append(&text, pieces[k], strlen(pieces[k]));
        }
    }
    ra_bytes got = {0};
    ra_error err;
    EXPECT(tok_normalize_nfc(text.v, text.n, &got, &err) == 0);
    UErrorCode st = U_ZERO_ERROR;
    const UNormalizer2 *nfc = unorm2_getNFCInstance(&st);
    int32_t ulen;
    u_strFromUTF8(NULL, 0, &ulen, text.v, (int32_t)text.n, &st);
    st = U_ZERO_ERROR;
    UChar *u = malloc(sizeof(UChar) * (size_t)(ulen + 1)), *v = malloc(sizeof(UChar) * (size_t)(2 * ulen + 16));
    u_strFromUTF8(u, ulen + 1, NULL, text.v, (int32_t)text.n, &st);
    int32_t vlen = unorm2_normalize(nfc, u, ulen, v, 2 * ulen + 16, &st);
    int32_t blen;
    u_strToUTF8(NULL, 0, &blen, v, vlen, &st);
    st = U_ZERO_ERROR;
    char *want = malloc((size_t)blen + 1);
    u_strToUTF8(want, blen + 1, NULL, v, vlen, &st);
    EXPECT(U_SUCCESS(st));
    EXPECT_EQ_INT(got.n, blen);
    EXPECT(got.n == (size_t)blen && memcmp(got.v, want, got.n) == 0);
    EXPECT(got.n < text.n); /* something was composed */
    free(u);
    free(v);
    free(want);
    ra_bytes_free(&got);
    ra_bytes_free(&text);
#else
    printf("# built without ICU\n");
#endif
}

/* ---------------------------------------------------------------- parity with Hugging Face */

static int hex_decode(const char *hex, ra_bytes *out) {
    size_t n = strlen(hex);
    if (n % 2) return -1;
    for (size_t i = 0; i < n; i += 2) {
        unsigned v;
        if (sscanf(hex + i, "%2x", &v) != 1) return -1;
        char c = (char)v;
        ra_bytes_append(out, &c, 1);
    }
    if (!out->v) ra_bytes_append(out, "", 0);
    return 0;
}

TEST(parity_with_hugging_face) {
    struct stat st;
    if (stat(FIXTURES, &st) != 0) {
        printf("# %s not committed yet: parity cases not run\n", FIXTURES);
        return;
    }
    /* From here on a missing file is a failure, not a skip. */
    FILE *f = fopen(FIXTURES "/cases.jsonl", "r");
    EXPECT_MSG(f != NULL, "%s/cases.jsonl is missing", FIXTURES);
    if (!f) return;
    char names[8][64];
    ra_tokenizer *toks[8] = {0};
    int ntok = 0, cases = 0, mismatches = 0, decode_mismatches = 0, skipped_nfc = 0, round_trips = 0,
        round_trip_failures = 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int lineno = 0;
    while ((len = getline(&line, &cap, f)) > 0) {
        lineno++;
        json_error_t jerr;
        json_t *c = json_loads(line, 0, &jerr);
        EXPECT_MSG(c != NULL, "cases.jsonl:%d: %s", lineno, jerr.text);
        if (!c) continue;
        const char *name = json_string_value(json_object_get(c, "tokenizer"));
        const char *in_hex = json_string_value(json_object_get(c, "input_hex"));
        const char *dec_hex = json_string_value(json_object_get(c, "decoded_hex"));
        const json_t *want = json_object_get(c, "ids");
        int specials = json_is_true(json_object_get(c, "specials"));
        EXPECT_MSG(name && in_hex && dec_hex && json_is_array(want), "cases.jsonl:%d: missing fields", lineno);
        if (!name || !in_hex || !dec_hex || !json_is_array(want) || strlen(name) >= 64) {
            json_decref(c);
            continue;
        }
        int k;
        for (k = 0; k < ntok && strcmp(names[k], name) != 0; k++) {}
        if (k == ntok && ntok < 8) {
            char path[256];
            snprintf(path, sizeof path, "%s/%s", FIXTURES, name);
            ra_error err;
            snprintf(names[ntok], 64, "%s", name);
            if (ra_tokenizer_load(path, &toks[ntok], &err) != 0) {
                if (!tok_have_nfc() && strstr(err.msg, "NFC")) printf("# %s needs NFC (no ICU): skipped\n", name);
                else TEST_FAIL_("%s: %s", path, err.msg);
            }
            ntok++;
        }
        ra_tokenizer *t = k < ntok ? toks[k] : NULL;
        if (!t) {
            skipped_nfc++;
            json_decref(c);
            continue;
        }
        ra_bytes in = {0}, dec_want = {0}, dec = {0};
        EXPECT(hex_decode(in_hex, &in) == 0 && hex_decode(dec_hex, &dec_want) == 0);
        ra_ids ids = {0};
        ra_error err = {0};
        int r = ra_tokenizer_encode(t, in.v, in.n, specials, &ids, &err);
        EXPECT_MSG(r == 0, "cases.jsonl:%d: %s", lineno, err.msg);
        int same = (int64_t)json_array_size(want) == ids.n;
        for (int64_t i = 0; same && i < ids.n; i++) same = json_integer_value(json_array_get(want, i)) == ids.v[i];
        if (!same) {
            mismatches++;
            if (mismatches <= 5) {
                TEST_FAIL_("cases.jsonl:%d (%s, specials %d): ids differ from Hugging Face", lineno, name, specials);
                print_ids("got ", ids.v, ids.n);
                int32_t w[40];
                int64_t wn = (int64_t)json_array_size(want);
                for (int64_t i = 0; i < wn && i < 40; i++) w[i] = (int32_t)json_integer_value(json_array_get(want, i));
                print_ids("want", w, wn);
            }
        }
        r = ra_tokenizer_decode(t, ids.v, ids.n, &dec, &err);
        if (r || dec.n != dec_want.n || memcmp(dec.v, dec_want.v, dec.n) != 0) {
            decode_mismatches++;
            if (decode_mismatches <= 5) TEST_FAIL_("cases.jsonl:%d: decode differs from Hugging Face", lineno);
        }
        /* decode(encode(s)) == s for the tokenizer that neither normalizes
         * nor adds a prefix space (s made valid UTF-8 first). */
        if (strcmp(name, "llama3-style") == 0 && !specials) {
            ra_bytes fixed = {0};
            ra_utf8_sanitize(in.v, in.n, &fixed);
            if (fixed.n != dec.n || (dec.n && memcmp(fixed.v, dec.v, dec.n) != 0)) {
                round_trip_failures++;
                if (round_trip_failures <= 5) TEST_FAIL_("cases.jsonl:%d: decode(encode(s)) != s", lineno);
            }
            round_trips++;
            ra_bytes_free(&fixed);
        }
        cases++;
        ra_ids_free(&ids);
        ra_bytes_free(&in);
        ra_bytes_free(&dec_want);
        ra_bytes_free(&dec);
        json_decref(c);
    }
    free(line);
    fclose(f);
    for (int k = 0; k < ntok; k++) ra_tokenizer_free(toks[k]);
    printf("# parity: %d cases, %d id mismatches, %d decode mismatches, %d skipped (no NFC); %d round trips, %d "
           "failed\n",
           cases, mismatches, decode_mismatches, skipped_nfc, round_trips, round_trip_failures);
    EXPECT(cases >= 100);
    EXPECT_EQ_INT(mismatches, 0);
    EXPECT_EQ_INT(decode_mismatches, 0);
    EXPECT(round_trips >= 300);
    EXPECT_EQ_INT(round_trip_failures, 0);
}

/* vocab_size and the bos/eos that tokenizer_config.json / generation_config.json
 * give, against what the fixture script recorded from Hugging Face. */
TEST(fixture_vocab_and_specials) {
    struct stat st;
    if (stat(FIXTURES, &st) != 0) return;
    json_error_t jerr;
    json_t *exp = json_load_file(FIXTURES "/expected.json", 0, &jerr);
    EXPECT_MSG(exp != NULL, "%s/expected.json: %s", FIXTURES, jerr.text);
    if (!exp) return;
    const char *key;
    json_t *v;
    int n = 0;
    json_object_foreach(exp, key, v) {
        if (!json_is_object(v)) continue;
        char path[256];
        snprintf(path, sizeof path, "%s/%s", FIXTURES, key);
        ra_tokenizer *t;
        ra_error err;
        if (ra_tokenizer_load(path, &t, &err)) {
            if (!(strstr(err.msg, "NFC") && !tok_have_nfc())) TEST_FAIL_("%s", err.msg);
            continue;
        }
        EXPECT_EQ_INT(ra_tokenizer_vocab_size(t), json_integer_value(json_object_get(v, "vocab_size")));
        EXPECT_EQ_INT(ra_tokenizer_bos_id(t), json_integer_value(json_object_get(v, "bos_id")));
        EXPECT_EQ_INT(ra_tokenizer_eos_id(t), json_integer_value(json_object_get(v, "eos_id")));
        ra_tokenizer_free(t);
        n++;
    }
    EXPECT(n >= 2);
    json_decref(exp);
}

int main(void) {
    RUN(tiny_merges_by_rank);
    RUN(tiny_specials_and_template);
    RUN(tiny_ignore_merges);
    RUN(tiny_split_regex_and_prefix_space);
    RUN(added_token_flags);
    RUN(invalid_utf8_is_replaced);
    RUN(round_trip_random);
    RUN(long_word_is_not_quadratic);
    RUN(decode_errors_and_specials);
    RUN(refusals_name_the_piece);
    RUN(regex_translation);
    RUN(regex_engine_semantics);
    RUN(nfc_normalizer);
    RUN(nfc_chunking_matches_whole_text);
    RUN(parity_with_hugging_face);
    RUN(fixture_vocab_and_specials);
    return test_summary();
}
