/* Everything between the input text and the BPE words: added-token
 * extraction, the normalizer, and the pre-tokenizer (regex splits and the
 * byte-level step), following Hugging Face tokenizers'
 * AddedVocabulary::extract_and_normalize, Split and ByteLevel. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"

#ifndef RA_HAVE_ICU
#define RA_HAVE_ICU 0
#endif
#if RA_HAVE_ICU
#include <unicode/unorm2.h>
#include <unicode/ustring.h>
#endif

/* ---------------------------------------------------------------- regex */

static void put(ra_bytes *o, const char *s) { ra_bytes_append(o, s, strlen(s)); }

/* Hugging Face runs tokenizer.json regexes with Oniguruma (Ruby syntax).
 * PCRE2 with UTF|UCP agrees on everything the Llama-3, Qwen2 and GPT-2
 * patterns use except \s, which in Oniguruma also matches U+0085 (NEL);
 * \w, \v, \uHHHH and the (?m) flag are translated too.  Escapes whose
 * meaning differs or that we do not translate are refused by name. */
int tok_translate_regex(const char *p, size_t n, ra_bytes *o, const char *where, ra_error *err) {
    int in_class = 0;
    size_t i = 0;
    while (i < n) {
        char c = p[i];
        if (c == '\\') {
            if (i + 1 >= n) return ra_fail(err, EX_DATAERR, "%s: regex ends with a backslash", where);
            char e = p[i + 1];
            i += 2;
            switch (e) {
            case 's': put(o, in_class ? "\\s\\x{85}" : "[\\s\\x{85}]"); continue;
            case 'w': put(o, in_class ? "\\p{L}\\p{M}\\p{Nd}\\p{Pc}" : "[\\p{L}\\p{M}\\p{Nd}\\p{Pc}]"); continue;
            case 'S':
            case 'W':
                if (in_class)
                    return ra_fail(err, EX_DATAERR, "%s: regex: \\%c inside a character class is not supported",
                                   where, e);
                put(o, e == 'S' ? "[^\\s\\x{85}]" : "[^\\p{L}\\p{M}\\p{Nd}\\p{Pc}]");
                continue;
            case 'v': put(o, "\\x{0B}"); continue; /* Oniguruma: vertical tab; PCRE2: a class */
            case 'u': {
                if (i + 4 > n || !isxdigit((unsigned char)p[i]) || !isxdigit((unsigned char)p[i + 1]) ||
                    !isxdigit((unsigned char)p[i + 2]) || !isxdigit((unsigned char)p[i + 3]))
                    return ra_fail(err, EX_DATAERR, "%s: regex: \\u must be followed by 4 hex digits", where);
                put(o, "\\x{");
                ra_bytes_append(o, p + i, 4);
                put(o, "}");
                i += 4;
                continue;
            }
            case 'p':
            case 'P':
            case 'd':
            case 'D':
            case 'r':
            case 'n':
            case 't':
            case 'f':
            case 'e':
            case 'a':
            case 'x':
            case 'A':
            case 'z':
            case 'Z':
                ra_bytes_append(o, p + i - 2, 2);
                continue;
            default:
                if (isalnum((unsigned char)e))
                    return ra_fail(err, EX_DATAERR, "%s: regex escape \\%c is not supported", where, e);
                ra_bytes_append(o, p + i - 2, 2); /* an escaped punctuation character */
                continue;
            }
        }
        if (c == '[') {
            if (in_class)
                return ra_fail(err, EX_DATAERR,
                               "%s: regex: nested or POSIX character classes are not supported", where);
            in_class = 1;
            ra_bytes_append(o, p + i++, 1);
            if (i < n && p[i] == '^') ra_bytes_append(o, p + i++, 1);
            if (i < n && p[i] == ']') ra_bytes_append(o, "\\]", 2), i++; /* a leading ] is literal */
            continue;
        }
        if (c == ']' && in_class) in_class = 0;
        if (in_class && c == '&' && i + 1 < n && p[i + 1] == '&')
            return ra_fail(err, EX_DATAERR, "%s: regex: class intersection && is not supported", where);
        if (!in_class && c == '(' && i + 1 < n && p[i + 1] == '?' && i + 2 < n &&
            strchr("imx-", p[i + 2])) {
            /* Inline flags: Ruby's m is PCRE2's s (dot matches newline). */
            put(o, "(?");
            for (i += 2; i < n && p[i] != ':' && p[i] != ')'; i++) {
                if (!strchr("imx-", p[i]))
                    return ra_fail(err, EX_DATAERR, "%s: regex flag '%c' is not supported", where, p[i]);
                ra_bytes_append(o, p[i] == 'm' ? "s" : p + i, 1);
            }
            continue;
        }
        ra_bytes_append(o, p + i++, 1);
    }
    return 0;
}

int tok_compile_regex(const char *pattern, size_t len, int literal, pcre2_code **out,
                      const char *where, ra_error *err) {
    ra_bytes tr = {0};
    if (literal) {
        ra_bytes_append(&tr, pattern, len);
    } else if (tok_translate_regex(pattern, len, &tr, where, err)) {
        ra_bytes_free(&tr);
        return err ? err->code : EX_DATAERR;
    }
    if (!ra_utf8_valid(tr.v ? tr.v : "", tr.n)) {
        ra_bytes_free(&tr);
        return ra_fail(err, EX_DATAERR, "%s: regex is not valid UTF-8", where);
    }
    int errcode;
    PCRE2_SIZE erroff;
    /* MULTILINE: in Ruby syntax ^ and $ always match at line boundaries. */
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK | (literal ? PCRE2_LITERAL : PCRE2_MULTILINE);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)(tr.v ? tr.v : ""), tr.n, opts, &errcode, &erroff, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(errcode, msg, sizeof msg);
        ra_fail(err, EX_DATAERR, "%s: regex does not compile at offset %zu: %s", where, (size_t)erroff,
                (char *)msg);
        ra_bytes_free(&tr);
        return EX_DATAERR;
    }
    ra_bytes_free(&tr);
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter if JIT is unavailable */
    *out = re;
    return 0;
}

/* Hugging Face's split with behaviour Isolated over Oniguruma's find_iter:
 * every match and every gap between matches becomes a piece (empty ones are
 * dropped later); an empty match right where the previous match ended is
 * skipped by advancing one character. */
typedef int (*piece_fn)(ra_tokenizer *t, const char *s, size_t n, int step, ra_ids *out, ra_error *err);

static int regex_split(ra_tokenizer *t, tok_step *st, const char *s, size_t n, int next_step, piece_fn fn,
                       ra_ids *out, ra_error *err) {
    size_t last_end = 0, prev = 0;
    long long last_match_end = -1;
    while (last_end <= n) {
        int rc = st->jit ? pcre2_jit_match(st->re, (PCRE2_SPTR)s, n, last_end, 0, st->md, t->mctx)
                         : pcre2_match(st->re, (PCRE2_SPTR)s, n, last_end, PCRE2_NO_UTF_CHECK, st->md, t->mctx);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return ra_fail(err, EX_SOFTWARE, "%s: pre-tokenizer regex failed: %s", t->name, (char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(st->md);
        size_t ms = ov[0], me = ov[1];
        if (me == ms && last_match_end == (long long)me) {
            if (last_end >= n) break;
            uint32_t cp;
            last_end += (size_t)tok_utf8_decode((const unsigned char *)s + last_end, n - last_end, &cp);
            continue;
        }
        last_end = me;
        last_match_end = (long long)me;
        if (ms > prev) {
            int r = fn(t, s + prev, ms - prev, next_step, out, err);
            if (r) return r;
        }
        if (me > ms) {
            int r = fn(t, s + ms, me - ms, next_step, out, err);
            if (r) return r;
        }
        prev = me;
    }
    if (prev < n) return fn(t, s + prev, n - prev, next_step, out, err);
    return 0;
}

/* Run pre-tokenizer step `step` on one piece; past the last step the piece is
 * a word for the model. */
static int pretokenize(ra_tokenizer *t, const char *s, size_t n, int step, ra_ids *out, ra_error *err) {
    if (n == 0) return 0;
    if (step == t->n_steps) {
        if (t->word_hook) t->word_hook(t->word_hook_ctx, (const unsigned char *)s, n);
        else tok_bpe_word(t, (const unsigned char *)s, n, out);
        return 0;
    }
    tok_step *st = &t->steps[step];
    if (st->kind == TOK_STEP_BYTELEVEL && st->add_prefix_space && s[0] != ' ') {
        /* ByteLevel is the last step, so prefix_buf is not in use further up. */
        t->prefix_buf.n = 0;
        ra_bytes_append(&t->prefix_buf, " ", 1);
        ra_bytes_append(&t->prefix_buf, s, n);
        s = t->prefix_buf.v;
        n = t->prefix_buf.n;
    }
    if (!st->re) return pretokenize(t, s, n, step + 1, out, err);
    return regex_split(t, st, s, n, step + 1, pretokenize, out, err);
}

/* ---------------------------------------------------------------- normalizer */

int tok_have_nfc(void) { return RA_HAVE_ICU; }

#if RA_HAVE_ICU
/* Normalize one chunk through UTF-16 (ICU's C API has no UTF-8 normalizer). */
static int nfc_chunk(const UNormalizer2 *nfc, const char *s, int32_t n, ra_bytes *out, ra_error *err) {
    UErrorCode st = U_ZERO_ERROR;
    int32_t ulen = 0;
    u_strFromUTF8(NULL, 0, &ulen, s, n, &st);
    if (st != U_BUFFER_OVERFLOW_ERROR && U_FAILURE(st)) goto fail;
    st = U_ZERO_ERROR;
    UChar *u = xmalloc(((size_t)ulen + 1) * sizeof *u);
    u_strFromUTF8(u, ulen + 1, NULL, s, n, &st);
    int32_t cap = 2 * ulen + 16, nlen;
    UChar *v = xmalloc((size_t)cap * sizeof *v);
    nlen = unorm2_normalize(nfc, u, ulen, v, cap, &st);
    if (st == U_BUFFER_OVERFLOW_ERROR) {
        st = U_ZERO_ERROR;
        free(v);
        cap = nlen + 1;
        v = xmalloc((size_t)cap * sizeof *v);
        nlen = unorm2_normalize(nfc, u, ulen, v, cap, &st);
    }
    free(u);
    if (U_FAILURE(st)) {
        free(v);
        goto fail;
    }
    int32_t blen = 0;
    u_strToUTF8(NULL, 0, &blen, v, nlen, &st);
    st = U_ZERO_ERROR;
    size_t at = out->n;
    tok_bytes_reserve(out, (size_t)blen);
    u_strToUTF8(out->v + at, blen + 1, NULL, v, nlen, &st);
    free(v);
    if (U_FAILURE(st)) goto fail;
    out->n = at + (size_t)blen;
    out->v[out->n] = 0;
    return 0;
fail:
    return ra_fail(err, EX_SOFTWARE, "NFC normalization failed: %s", u_errorName(st));
}

/* 1 if NFC leaves s[0..n) unchanged because every character from U+0300 up
 * is normalization-inert (most non-ASCII in English text: dashes, quotes,
 * CJK ideographs); characters below U+0300 never change on their own. */
static int nfc_inert(const UNormalizer2 *nfc, const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        if ((unsigned char)s[i] < 0xCC) {
            i++;
            continue;
        }
        uint32_t cp;
        i += (size_t)tok_utf8_decode((const unsigned char *)s + i, n - i, &cp);
        if (!unorm2_isInert(nfc, (UChar32)cp)) return 0;
    }
    return 1;
}

int tok_normalize_nfc(const char *s, size_t n, ra_bytes *out, ra_error *err) {
    UErrorCode st = U_ZERO_ERROR;
    const UNormalizer2 *nfc = unorm2_getNFCInstance(&st);
    if (U_FAILURE(st)) return ra_fail(err, EX_SOFTWARE, "NFC normalizer unavailable: %s", u_errorName(st));
    /* Chunks of about 64 KiB (only those with characters that are not inert go
     * through ICU), cut before a character that never combines with
     * what precedes it, so chunking does not change the result. */
    const size_t chunk = (size_t)64 << 10;
    size_t start = 0;
    while (start < n) {
        size_t end = n - start <= chunk ? n : start + chunk;
        while (end < n) {
            if (((unsigned char)s[end] & 0xC0) != 0x80) {
                uint32_t cp;
                tok_utf8_decode((const unsigned char *)s + end, n - end, &cp);
                if (unorm2_hasBoundaryBefore(nfc, (UChar32)cp)) break;
            }
            end++;
        }
        if (end - start > (size_t)INT32_MAX / 2)
            return ra_fail(err, EX_DATAERR, "NFC: no normalization boundary within 1 GiB of text");
        if (nfc_inert(nfc, s + start, end - start)) {
            ra_bytes_append(out, s + start, end - start);
        } else {
            int r = nfc_chunk(nfc, s + start, (int32_t)(end - start), out, err);
            if (r) return r;
        }
        start = end;
    }
    return 0;
}
#else
int tok_normalize_nfc(const char *s, size_t n, ra_bytes *out, ra_error *err) {
    (void)s, (void)n, (void)out;
    return ra_fail(err, EX_SOFTWARE, "NFC normalizer: built without ICU");
}
#endif

/* ---------------------------------------------------------------- added tokens */

static const tok_added *sort_added_; /* qsort has no context argument */
static int by_len_desc(const void *a, const void *b) {
    const tok_added *x = &sort_added_[*(const int32_t *)a], *y = &sort_added_[*(const int32_t *)b];
    if (x->plen != y->plen) return x->plen < y->plen ? 1 : -1;
    return *(const int32_t *)a - *(const int32_t *)b;
}

void tok_matcher_build(tok_matcher *m, const tok_added *added, int n_added, int normalized) {
    memset(m, 0, sizeof *m);
    for (int i = 0; i < n_added; i++) {
        if (!added[i].normalized != !normalized || added[i].plen == 0) continue;
        unsigned char c = (unsigned char)added[i].pattern[0];
        m->cand[c] = xrealloc(m->cand[c], (size_t)(m->ncand[c] + 1) * sizeof(int32_t));
        m->cand[c][m->ncand[c]++] = i;
        m->any = 1;
    }
    sort_added_ = added;
    m->only_first = -1;
    int firsts = 0;
    for (int c = 0; c < 256; c++) {
        if (m->ncand[c] > 1) qsort(m->cand[c], (size_t)m->ncand[c], sizeof(int32_t), by_len_desc);
        if (m->ncand[c]) firsts++, m->only_first = c;
    }
    if (firsts != 1) m->only_first = -1;
}

void tok_matcher_free(tok_matcher *m) {
    for (int c = 0; c < 256; c++) free(m->cand[c]);
    memset(m, 0, sizeof *m);
}

/* Unicode White_Space (Rust's \s and char::is_whitespace). */
static int is_white_space(uint32_t c) {
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
           c == 0x3000;
}

static int is_word_char(ra_tokenizer *t, const char *s, size_t n) {
    if (!t->word_re || n == 0) return 0;
    return pcre2_match(t->word_re, (PCRE2_SPTR)s, n, 0, PCRE2_NO_UTF_CHECK | PCRE2_ANCHORED, t->word_md,
                       NULL) >= 0;
}

/* Start of the last character of s[0..n). */
static size_t last_char_start(const char *s, size_t n) {
    size_t i = n - 1;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80) i--;
    return i;
}

/* Leftmost-longest match at or after pos; returns its index in added[] or -1. */
static int find_added(const ra_tokenizer *t, const tok_matcher *m, const char *s, size_t n, size_t pos,
                      size_t *at) {
    for (size_t i = pos; i < n; i++) {
        if (m->only_first >= 0) { /* e.g. every special token starts with '<' */
            const char *p = memchr(s + i, m->only_first, n - i);
            if (!p) return -1;
            i = (size_t)(p - s);
        }
        unsigned char c = (unsigned char)s[i];
        for (int k = 0; k < m->ncand[c]; k++) {
            const tok_added *a = &t->added[m->cand[c][k]];
            if (a->plen <= n - i && memcmp(s + i, a->pattern, a->plen) == 0) {
                *at = i;
                return m->cand[c][k];
            }
        }
    }
    return -1;
}

typedef int (*gap_fn)(ra_tokenizer *t, const char *s, size_t n, ra_ids *out, ra_error *err);

/* AddedVocabulary::find_matches: split s into added tokens and gaps. */
static int split_added(ra_tokenizer *t, const tok_matcher *m, const char *s, size_t n, gap_fn gap,
                       ra_ids *out, ra_error *err) {
    if (!m->any) return gap(t, s, n, out, err);
    size_t start_offset = 0, pos = 0, ms;
    int k;
    while (pos < n && (k = find_added(t, m, s, n, pos, &ms)) >= 0) {
        const tok_added *a = &t->added[k];
        size_t start = ms, stop = ms + a->plen;
        pos = stop;
        if (a->single_word) {
            int start_space = start == 0 || !is_word_char(t, s + last_char_start(s, start), start - last_char_start(s, start));
            int stop_space = stop == n || !is_word_char(t, s + stop, n - stop);
            if (!start_space || !stop_space) continue;
        }
        if (a->lstrip) {
            size_t ns = start;
            while (ns > 0) {
                size_t cs = last_char_start(s, ns);
                uint32_t cp;
                tok_utf8_decode((const unsigned char *)s + cs, ns - cs, &cp);
                if (!is_white_space(cp)) break;
                ns = cs;
            }
            start = ns > start_offset ? ns : start_offset;
        }
        if (a->rstrip) {
            while (stop < n) {
                uint32_t cp;
                int l = tok_utf8_decode((const unsigned char *)s + stop, n - stop, &cp);
                if (!is_white_space(cp)) break;
                stop += (size_t)l;
            }
        }
        if (start_offset < start) {
            int r = gap(t, s + start_offset, start - start_offset, out, err);
            if (r) return r;
        }
        ra_ids_push(out, a->id);
        start_offset = stop;
    }
    if (start_offset < n) return gap(t, s + start_offset, n - start_offset, out, err);
    return 0;
}

static int gap_pretokenize(ra_tokenizer *t, const char *s, size_t n, ra_ids *out, ra_error *err) {
    return pretokenize(t, s, n, 0, out, err);
}

/* A piece between raw added tokens: normalize it, then extract the added
 * tokens that match normalized text, then pre-tokenize what is left. */
static int gap_normalize(ra_tokenizer *t, const char *s, size_t n, ra_ids *out, ra_error *err) {
    if (n == 0) return 0;
    if (!t->nfc) return split_added(t, &t->norm_matcher, s, n, gap_pretokenize, out, err);
    t->norm_buf.n = 0;
    int r = tok_normalize_nfc(s, n, &t->norm_buf, err);
    if (r) return r;
    return split_added(t, &t->norm_matcher, t->norm_buf.v, t->norm_buf.n, gap_pretokenize, out, err);
}

int tok_encode_text(ra_tokenizer *t, const char *s, size_t n, ra_ids *out, ra_error *err) {
    return split_added(t, &t->raw_matcher, s, n, gap_normalize, out, err);
}
