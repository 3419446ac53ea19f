/* The two ends of the pipeline: encode (UTF-8 repair, the text pipeline, the
 * post-processor template) and decode (the ByteLevel decoder). */
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"

int ra_tokenizer_encode(ra_tokenizer *t, const char *text, size_t len, int add_specials, ra_ids *out,
                        ra_error *err) {
    /* Hugging Face encodes a Rust String: bytes that are not UTF-8 are first
     * replaced by U+FFFD, as Python's decode(errors='replace') does. */
    ra_bytes fixed = {0};
    if (!ra_utf8_valid(text, len)) {
        ra_utf8_sanitize(text, len, &fixed);
        text = fixed.v;
        len = fixed.n;
    }
    int64_t start = out->n;
    int r = 0;
    if (add_specials && t->n_tpl) {
        for (int i = 0; i < t->n_tpl && !r; i++) {
            if (t->tpl[i].n < 0) r = tok_encode_text(t, text, len, out, err);
            else
                for (int k = 0; k < t->tpl[i].n; k++) ra_ids_push(out, t->tpl[i].ids[k]);
        }
    } else {
        r = tok_encode_text(t, text, len, out, err);
    }
    ra_bytes_free(&fixed);
    if (r) out->n = start;
    return r;
}

/* What the ByteLevel decoder yields for one token: the bytes its characters
 * stand for when every character is in the byte-level alphabet, else the
 * token's own UTF-8 bytes (added tokens such as "<|eot_id|>" are ASCII
 * printable and so map to themselves either way). */
static void decoded_form(const char *s, size_t n, char **dec, size_t *declen) {
    char *d = xmalloc(n + 1);
    size_t k = 0, i = 0;
    while (i < n) {
        uint32_t cp;
        i += (size_t)tok_utf8_decode((const unsigned char *)s + i, n - i, &cp);
        int b = tok_char_byte(cp);
        if (b < 0) {
            memcpy(d, s, n);
            k = n;
            break;
        }
        d[k++] = (char)b;
    }
    *dec = d;
    *declen = k;
}

void tok_build_decode_table(ra_tokenizer *t) {
    for (size_t i = 0; i < t->n_entries; i++)
        decoded_form(t->entries[i].str, t->entries[i].len, &t->entries[i].dec, &t->entries[i].declen);
}

const char *ra_tokenizer_token(const ra_tokenizer *t, int32_t id) {
    if (id < 0) return NULL;
    const uint64_t *e = tok_u64map_get(&t->id_entry, (uint64_t)id);
    return e ? t->entries[*e].str : NULL;
}

int32_t ra_tokenizer_token_id(const ra_tokenizer *t, const char *token) {
    size_t n = strlen(token);
    const int64_t *v = tok_map_get(&t->added_by_content, token, n);
    if (!v) v = tok_map_get(&t->vocab_str, token, n);
    return v ? (int32_t)*v : -1;
}

int ra_tokenizer_decode(const ra_tokenizer *t, const int32_t *ids, int64_t n, ra_bytes *out, ra_error *err) {
    if (!t->has_decoder)
        return ra_fail(err, EX_DATAERR, "%s: decoder: null (no ByteLevel decoder), cannot decode", t->name);
    ra_bytes raw = {0};
    for (int64_t i = 0; i < n; i++) {
        const uint64_t *e = ids[i] >= 0 ? tok_u64map_get(&t->id_entry, (uint64_t)ids[i]) : NULL;
        if (!e) {
            ra_bytes_free(&raw);
            return ra_fail(err, EX_DATAERR, "%s: token %lld: id %d is not in the vocabulary", t->name,
                           (long long)i, (int)ids[i]);
        }
        ra_bytes_append(&raw, t->entries[*e].dec, t->entries[*e].declen);
    }
    ra_utf8_sanitize(raw.v ? raw.v : "", raw.n, out);
    ra_bytes_free(&raw);
    return 0;
}

const char *ra_tokenizer_id(const ra_tokenizer *t) { return t->id; }
int64_t ra_tokenizer_vocab_size(const ra_tokenizer *t) { return t->vocab_size; }
int32_t ra_tokenizer_bos_id(const ra_tokenizer *t) { return t->bos_id; }
int32_t ra_tokenizer_eos_id(const ra_tokenizer *t) { return t->eos_id; }
