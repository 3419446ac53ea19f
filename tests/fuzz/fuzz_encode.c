/* libFuzzer target: the encoder.  Two fixed tokenizers built here (every byte
 * in the vocabulary, merges, added tokens, the Llama-3 split regex, a BOS
 * template; the second with NFC and lstrip/rstrip/single_word added tokens).
 * Input: one flag byte, then text (any bytes).  For the first tokenizer
 * decode(encode(text)) must equal the text made valid UTF-8 (with BOS first
 * when specials are on); for both, every id must be below the vocab size. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

static ra_tokenizer *plain, *fancy;

static void byte_char(int b, char out[3]) {
    int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    int cp = b;
    if (!printable) {
        cp = 256;
        for (int k = 0; k < b; k++)
            if (!((k >= '!' && k <= '~') || (k >= 0xA1 && k <= 0xAC) || (k >= 0xAE && k <= 0xFF))) cp++;
    }
    memset(out, 0, 3);
    if (cp < 0x80) out[0] = (char)cp;
    else out[0] = (char)(0xC0 | (cp >> 6)), out[1] = (char)(0x80 | (cp & 0x3F));
}

static ra_tokenizer *build(int with_nfc) {
    json_t *vocab = json_object();
    for (int b = 0; b < 256; b++) {
        char c[3];
        byte_char(b, c);
        json_object_set_new(vocab, c, json_integer(b));
    }
    static const char *const merges[][2] = {{"Ġ", "t"}, {"h", "e"}, {"Ġt", "he"}, {"a", "b"}, {"ab", "c"}, {"b", "c"},
                                            {"a", "a"}, {"aa", "aa"}, {"Ã", "©"}, {"Ġ", "Ġ"}, {"1", "2"}, {"Ċ", "Ċ"}};
    json_t *ml = json_array();
    int next = 256;
    for (size_t i = 0; i < sizeof merges / sizeof *merges; i++) {
        char m[16];
        snprintf(m, sizeof m, "%s%s", merges[i][0], merges[i][1]);
        if (!json_object_get(vocab, m)) json_object_set_new(vocab, m, json_integer(next++));
        json_array_append_new(ml, json_pack("[s, s]", merges[i][0], merges[i][1]));
    }
    int bos = next++, eos = next++, extra = next++;
    json_t *added = json_pack("[{s:i, s:s, s:b, s:b, s:b, s:b, s:b}, {s:i, s:s, s:b, s:b, s:b, s:b, s:b}]", "id", bos,
                              "content", "<|bos|>", "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 0,
                              "special", 1, "id", eos, "content", "<|eos|>", "single_word", 0, "lstrip", 0, "rstrip",
                              0, "normalized", 0, "special", 1);
    if (with_nfc)
        json_array_append_new(added, json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", extra, "content", "tool",
                                               "single_word", 1, "lstrip", 1, "rstrip", 1, "normalized", 1, "special",
                                               0));
    const char *re = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
                     "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    json_t *root = json_pack(
        "{s:s, s:o, s:o,"
        " s:{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b, s:b}]},"
        " s:{s:s, s:[{s:{s:s, s:i}}, {s:{s:s, s:i}}], s:{s:{s:s, s:[i], s:[s]}}},"
        " s:{s:s}, s:{s:s, s:b, s:o, s:o}}",
        "version", "1.0", "added_tokens", added, "normalizer",
        with_nfc ? json_pack("{s:s}", "type", "NFC") : json_null(), "pre_tokenizer", "type", "Sequence",
        "pretokenizers", "type", "Split", "pattern", "Regex", re, "behavior", "Isolated", "invert", 0, "type",
        "ByteLevel", "add_prefix_space", 0, "trim_offsets", 0, "use_regex", 0, "post_processor", "type",
        "TemplateProcessing", "single", "SpecialToken", "id", "<|bos|>", "type_id", 0, "Sequence", "id", "A",
        "type_id", 0, "special_tokens", "<|bos|>", "id", "<|bos|>", "ids", bos, "tokens", "<|bos|>", "decoder",
        "type", "ByteLevel", "model", "type", "BPE", "ignore_merges", with_nfc, "vocab", vocab, "merges", ml);
    char *s = json_dumps(root, 0);
    json_decref(root);
    ra_tokenizer *t = NULL;
    ra_error err;
    if (!s || ra_tokenizer_load_json(s, strlen(s), "fuzz-encode", &t, &err)) {
        /* built without ICU: the NFC tokenizer is refused; the plain one must load */
        if (!with_nfc) abort();
    }
    free(s);
    return t;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!plain) {
        plain = build(0);
        fancy = build(1);
    }
    if (size < 1) return 0;
    int specials = data[0] & 1;
    const char *text = (const char *)data + 1;
    size_t n = size - 1;
    ra_error err = {0};
    ra_ids ids = {0};
    if (ra_tokenizer_encode(plain, text, n, specials, &ids, &err) != 0) abort();
    for (int64_t i = 0; i < ids.n; i++)
        if (ids.v[i] < 0 || ids.v[i] >= ra_tokenizer_vocab_size(plain)) abort();
    ra_bytes dec = {0}, want = {0};
    if (ra_tokenizer_decode(plain, ids.v, ids.n, &dec, &err) != 0) abort();
    if (specials) ra_bytes_append(&want, "<|bos|>", 7);
    ra_utf8_sanitize(text, n, &want);
    if (dec.n != want.n || (dec.n && memcmp(dec.v, want.v, dec.n) != 0)) abort();
    ra_bytes_free(&dec);
    ra_bytes_free(&want);
    if (fancy) {
        ids.n = 0;
        if (ra_tokenizer_encode(fancy, text, n, specials, &ids, &err) != 0) abort();
        for (int64_t i = 0; i < ids.n; i++)
            if (ids.v[i] < 0 || ids.v[i] >= ra_tokenizer_vocab_size(fancy)) abort();
        if (ra_tokenizer_decode(fancy, ids.v, ids.n, &dec, &err) != 0) abort();
        if (!ra_utf8_valid(dec.v ? dec.v : "", dec.n)) abort();
        ra_bytes_free(&dec);
    }
    ra_ids_free(&ids);
    return 0;
}
