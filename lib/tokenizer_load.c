/* Loading tokenizer.json (plus tokenizer_config.json / generation_config.json
 * for bos/eos).  Every piece is checked against what lib/tokenizer*.c
 * implements; anything else is refused with a message naming it. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>

#include "tokenizer_internal.h"

#define FAIL(...) ra_fail(err, EX_DATAERR, __VA_ARGS__)

/* ---------------------------------------------------------------- small JSON helpers */

static const char *type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

/* A boolean field: absent or null gives def. */
static int get_bool(const json_t *o, const char *key, int def, int *out, const char *name, const char *where,
                    ra_error *err) {
    const json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v))
        return FAIL("%s: %s.%s: expected a boolean, got %s", name, where, key, type_name(v));
    *out = json_is_true(v);
    return 0;
}

/* The "type" of a component, or NULL when absent. */
static const char *get_type(const json_t *o) {
    const json_t *v = json_object_get(o, "type");
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static int get_id(const json_t *v, int32_t *out, const char *name, const char *where, ra_error *err) {
    if (!json_is_integer(v))
        return FAIL("%s: %s: expected a token id (integer), got %s", name, where, v ? type_name(v) : "nothing");
    json_int_t x = json_integer_value(v);
    if (x < 0 || x > INT32_MAX) return FAIL("%s: %s: token id %lld is out of range [0, 2^31)", name, where, (long long)x);
    *out = (int32_t)x;
    return 0;
}

static void note_id(ra_tokenizer *t, int32_t id) {
    if ((int64_t)id + 1 > t->vocab_size) t->vocab_size = (int64_t)id + 1;
}

/* ---------------------------------------------------------------- id -> token table */

static void set_entry(ra_tokenizer *t, int32_t id, const char *s, size_t n) {
    const uint64_t *old = tok_u64map_get(&t->id_entry, (uint64_t)id);
    tok_entry *e;
    if (old) {
        e = &t->entries[*old];
        free(e->str);
    } else {
        if ((t->n_entries & (t->n_entries - 1)) == 0) /* grow at powers of two */
            t->entries = xrealloc(t->entries, (t->n_entries ? 2 * t->n_entries : 1) * sizeof *t->entries);
        tok_u64map_put(&t->id_entry, (uint64_t)id, t->n_entries);
        e = &t->entries[t->n_entries++];
    }
    e->str = xmalloc(n + 1);
    memcpy(e->str, s, n);
    e->str[n] = 0;
    e->len = n;
    e->dec = NULL;
    e->declen = 0;
}

/* ---------------------------------------------------------------- model */

/* Raw bytes of a byte-level token, or -1 if a character is outside the alphabet. */
static long byte_level_bytes(const char *s, size_t n, char *out) {
    size_t i = 0, k = 0;
    while (i < n) {
        uint32_t cp;
        i += (size_t)tok_utf8_decode((const unsigned char *)s + i, n - i, &cp);
        int b = tok_char_byte(cp);
        if (b < 0) return -1;
        out[k++] = (char)b;
    }
    return (long)k;
}

static int vocab_lookup(const ra_tokenizer *t, const char *s, size_t n, int32_t *id) {
    const int64_t *v = tok_map_get(&t->vocab_str, s, n);
    if (!v) return 0;
    *id = (int32_t)*v;
    return 1;
}

static int add_merge(ra_tokenizer *t, const char *a, size_t na, const char *b, size_t nb, uint32_t rank,
                     size_t index, const char *name, ra_error *err) {
    int32_t ida, idb, idm;
    if (!vocab_lookup(t, a, na, &ida))
        return FAIL("%s: model.merges[%zu]: '%.*s' is not in the vocabulary", name, index, (int)na, a);
    if (!vocab_lookup(t, b, nb, &idb))
        return FAIL("%s: model.merges[%zu]: '%.*s' is not in the vocabulary", name, index, (int)nb, b);
    char *m = xmalloc(na + nb + 1);
    memcpy(m, a, na);
    memcpy(m + na, b, nb);
    int ok = vocab_lookup(t, m, na + nb, &idm);
    if (!ok) FAIL("%s: model.merges[%zu]: merged token '%.*s' is not in the vocabulary", name, index,
                  (int)(na + nb), m);
    free(m);
    if (!ok) return EX_DATAERR;
    /* A pair listed twice keeps its last rank, as Hugging Face's map does. */
    tok_u64map_put(&t->merges, ((uint64_t)(uint32_t)ida << 32) | (uint32_t)idb,
                   ((uint64_t)rank << 32) | (uint32_t)idm);
    return 0;
}

static int load_merges(ra_tokenizer *t, const json_t *merges, const char *name, ra_error *err) {
    if (!merges) return FAIL("%s: model.merges: missing", name);
    if (!json_is_array(merges)) return FAIL("%s: model.merges: expected an array, got %s", name, type_name(merges));
    size_t n = json_array_size(merges);
    tok_u64map_init(&t->merges, n);
    /* Either every entry is an [a, b] pair or every entry is an "a b" string. */
    int pairs = n > 0 && json_is_array(json_array_get(merges, 0));
    uint32_t rank = 0;
    for (size_t i = 0; i < n; i++) {
        const json_t *m = json_array_get(merges, i);
        if (pairs) {
            const json_t *a = json_array_get(m, 0), *b = json_array_get(m, 1);
            if (!json_is_array(m) || json_array_size(m) != 2 || !json_is_string(a) || !json_is_string(b))
                return FAIL("%s: model.merges[%zu]: expected a pair of strings like the first entry", name, i);
            if (add_merge(t, json_string_value(a), json_string_length(a), json_string_value(b),
                          json_string_length(b), rank++, i, name, err))
                return EX_DATAERR;
        } else {
            if (!json_is_string(m))
                return FAIL("%s: model.merges[%zu]: expected a string \"a b\", got %s", name, i, type_name(m));
            const char *s = json_string_value(m);
            size_t len = json_string_length(m);
            if (strncmp(s, "#version", 8) == 0) continue; /* merges.txt header, no rank */
            const char *sp = memchr(s, ' ', len);
            if (!sp || memchr(sp + 1, ' ', len - (size_t)(sp + 1 - s)))
                return FAIL("%s: model.merges[%zu]: expected exactly two tokens separated by one space, got '%s'",
                            name, i, s);
            if (add_merge(t, s, (size_t)(sp - s), sp + 1, len - (size_t)(sp + 1 - s), rank++, i, name, err))
                return EX_DATAERR;
        }
    }
    return 0;
}

static int load_model(ra_tokenizer *t, const json_t *model, const char *name, ra_error *err) {
    if (!model || json_is_null(model)) return FAIL("%s: model: missing", name);
    if (!json_is_object(model)) return FAIL("%s: model: expected an object, got %s", name, type_name(model));
    const char *type = get_type(model);
    if (type && strcmp(type, "BPE") != 0)
        return FAIL("%s: model type '%s' is not supported (only BPE)", name, type);
    if (!type && !json_object_get(model, "merges"))
        return FAIL("%s: model.type: missing (and no merges: not a BPE model)", name);

    const json_t *dropout = json_object_get(model, "dropout");
    if (dropout && !json_is_null(dropout) && !(json_is_number(dropout) && json_number_value(dropout) == 0))
        return FAIL("%s: model.dropout: BPE dropout is not supported (it must be null)", name);
    static const char *const must_be_empty[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        const json_t *v = json_object_get(model, must_be_empty[i]);
        if (v && !json_is_null(v) && !(json_is_string(v) && json_string_length(v) == 0))
            return FAIL("%s: model.%s is not supported (it must be null)", name, must_be_empty[i]);
    }
    int byte_fallback;
    if (get_bool(model, "byte_fallback", 0, &byte_fallback, name, "model", err)) return EX_DATAERR;
    if (byte_fallback) return FAIL("%s: model.byte_fallback: true is not supported", name);
    if (get_bool(model, "ignore_merges", 0, &t->ignore_merges, name, "model", err)) return EX_DATAERR;
    if (get_bool(model, "fuse_unk", 0, &t->fuse_unk, name, "model", err)) return EX_DATAERR;

    const json_t *vocab = json_object_get(model, "vocab");
    if (!vocab) return FAIL("%s: model.vocab: missing", name);
    if (!json_is_object(vocab)) return FAIL("%s: model.vocab: expected an object, got %s", name, type_name(vocab));
    tok_map_init(&t->vocab_str, json_object_size(vocab));
    tok_map_init(&t->vocab_bytes, json_object_size(vocab));
    const char *key;
    json_t *val;
    char *raw = NULL;
    size_t raw_cap = 0;
    json_object_foreach((json_t *)vocab, key, val) {
        int32_t id;
        char where[96];
        snprintf(where, sizeof where, "model.vocab['%.40s']", key);
        if (get_id(val, &id, name, where, err)) {
            free(raw);
            return EX_DATAERR;
        }
        size_t n = strlen(key);
        tok_map_put(&t->vocab_str, key, n, id);
        set_entry(t, id, key, n);
        note_id(t, id);
        if (n > raw_cap) raw = xrealloc(raw, raw_cap = n);
        long k = byte_level_bytes(key, n, raw);
        if (k > 0) tok_map_put(&t->vocab_bytes, raw, (size_t)k, id);
    }
    free(raw);
    for (int b = 0; b < 256; b++) {
        char c[4];
        int n = tok_utf8_encode(tok_byte_char((uint8_t)b), c);
        if (!vocab_lookup(t, c, (size_t)n, &t->byte_id[b])) t->byte_id[b] = -1;
    }

    t->unk_id = -1;
    const json_t *unk = json_object_get(model, "unk_token");
    if (unk && !json_is_null(unk)) {
        if (!json_is_string(unk)) return FAIL("%s: model.unk_token: expected a string, got %s", name, type_name(unk));
        if (!vocab_lookup(t, json_string_value(unk), json_string_length(unk), &t->unk_id))
            return FAIL("%s: model.unk_token '%s' is not in the vocabulary", name, json_string_value(unk));
    }
    return load_merges(t, json_object_get(model, "merges"), name, err);
}

/* ---------------------------------------------------------------- normalizer */

static int load_normalizer(ra_tokenizer *t, const json_t *n, const char *name, const char *where, ra_error *err) {
    if (!n || json_is_null(n)) return 0;
    if (!json_is_object(n)) return FAIL("%s: %s: expected an object, got %s", name, where, type_name(n));
    const char *type = get_type(n);
    if (!type) return FAIL("%s: %s.type: missing", name, where);
    if (strcmp(type, "Sequence") == 0) {
        const json_t *list = json_object_get(n, "normalizers");
        if (!json_is_array(list)) return FAIL("%s: %s.normalizers: missing or not an array", name, where);
        for (size_t i = 0; i < json_array_size(list); i++) {
            char w[128];
            snprintf(w, sizeof w, "%s.normalizers[%zu]", where, i);
            if (load_normalizer(t, json_array_get(list, i), name, w, err)) return EX_DATAERR;
        }
        return 0;
    }
    if (strcmp(type, "NFC") == 0) {
        if (!tok_have_nfc())
            return FAIL("%s: normalizer NFC is not supported by this build (ra was built without ICU)", name);
        t->nfc = 1; /* NFC is idempotent, so a repeated NFC changes nothing */
        return 0;
    }
    return FAIL("%s: normalizer '%s' is not supported (only NFC or null)", name, type);
}

/* ---------------------------------------------------------------- pre-tokenizer */

static const char gpt2_regex[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int add_step(ra_tokenizer *t, int kind, pcre2_code *re, int add_prefix_space, const char *name,
                    ra_error *err) {
    if (t->n_steps == TOK_MAX_STEPS) {
        pcre2_code_free(re);
        return FAIL("%s: pre_tokenizer: more than %d steps", name, TOK_MAX_STEPS);
    }
    tok_step *s = &t->steps[t->n_steps++];
    s->kind = kind;
    s->re = re;
    s->md = re ? pcre2_match_data_create_from_pattern(re, NULL) : NULL;
    size_t jit_size = 0;
    s->jit = re && pcre2_pattern_info(re, PCRE2_INFO_JITSIZE, &jit_size) == 0 && jit_size > 0;
    s->add_prefix_space = add_prefix_space;
    return 0;
}

static int load_pretok(ra_tokenizer *t, const json_t *p, const char *name, const char *where, ra_error *err) {
    if (!json_is_object(p)) return FAIL("%s: %s: expected an object, got %s", name, where, type_name(p));
    const char *type = get_type(p);
    if (!type) return FAIL("%s: %s.type: missing", name, where);
    if (t->n_steps && t->steps[t->n_steps - 1].kind == TOK_STEP_BYTELEVEL)
        return FAIL("%s: %s: a pre-tokenizer after ByteLevel is not supported", name, where);
    if (strcmp(type, "Sequence") == 0) {
        const json_t *list = json_object_get(p, "pretokenizers");
        if (!json_is_array(list)) return FAIL("%s: %s.pretokenizers: missing or not an array", name, where);
        for (size_t i = 0; i < json_array_size(list); i++) {
            char w[128];
            snprintf(w, sizeof w, "%s.pretokenizers[%zu]", where, i);
            if (load_pretok(t, json_array_get(list, i), name, w, err)) return EX_DATAERR;
        }
        return 0;
    }
    if (strcmp(type, "Split") == 0) {
        const json_t *pat = json_object_get(p, "pattern"), *behavior = json_object_get(p, "behavior");
        int invert;
        if (get_bool(p, "invert", 0, &invert, name, where, err)) return EX_DATAERR;
        if (invert) return FAIL("%s: %s: Split with invert true is not supported", name, where);
        if (!json_is_string(behavior)) return FAIL("%s: %s.behavior: missing", name, where);
        if (strcmp(json_string_value(behavior), "Isolated") != 0)
            return FAIL("%s: %s: Split behavior '%s' is not supported (only Isolated)", name, where,
                        json_string_value(behavior));
        const json_t *rx = json_object_get(pat, "Regex"), *lit = json_object_get(pat, "String");
        const json_t *src = json_is_string(rx) ? rx : lit;
        if (!json_is_object(pat) || !json_is_string(src))
            return FAIL("%s: %s.pattern: missing (expected {\"Regex\": ...} or {\"String\": ...})", name, where);
        char w[160];
        snprintf(w, sizeof w, "%s: %s.pattern", name, where);
        pcre2_code *re;
        if (tok_compile_regex(json_string_value(src), json_string_length(src), src == lit, &re, w, err))
            return EX_DATAERR;
        return add_step(t, TOK_STEP_SPLIT, re, 0, name, err);
    }
    if (strcmp(type, "ByteLevel") == 0) {
        int aps, use_regex;
        if (get_bool(p, "add_prefix_space", 1, &aps, name, where, err) ||
            get_bool(p, "use_regex", 1, &use_regex, name, where, err))
            return EX_DATAERR;
        pcre2_code *re = NULL;
        if (use_regex && tok_compile_regex(gpt2_regex, strlen(gpt2_regex), 0, &re, "ByteLevel regex", err))
            return EX_SOFTWARE;
        return add_step(t, TOK_STEP_BYTELEVEL, re, aps, name, err);
    }
    return FAIL("%s: pre_tokenizer '%s' is not supported (only Split, ByteLevel, Sequence)", name, type);
}

/* ---------------------------------------------------------------- added tokens */

static int same_added(const tok_added *a, const tok_added *b) {
    return a->len == b->len && memcmp(a->content, b->content, a->len) == 0 && a->special == b->special &&
           a->single_word == b->single_word && a->lstrip == b->lstrip && a->rstrip == b->rstrip &&
           a->normalized == b->normalized;
}

/* Hugging Face's AddedVocabulary::add_tokens: an added token takes the id its
 * content already has (an earlier added token, then the model vocabulary),
 * else the next free id after the model vocabulary; the id written in the
 * file is only checked by Hugging Face with a warning. */
static int load_added(ra_tokenizer *t, const json_t *list, size_t model_vocab_len, const char *name,
                      ra_error *err) {
    tok_map_init(&t->added_by_content, 16);
    if (!list || json_is_null(list)) return 0;
    if (!json_is_array(list)) return FAIL("%s: added_tokens: expected an array, got %s", name, type_name(list));
    int64_t next_id = (int64_t)model_vocab_len;
    for (size_t i = 0; i < json_array_size(list); i++) {
        const json_t *o = json_array_get(list, i);
        char where[64];
        snprintf(where, sizeof where, "added_tokens[%zu]", i);
        if (!json_is_object(o)) return FAIL("%s: %s: expected an object, got %s", name, where, type_name(o));
        const json_t *content = json_object_get(o, "content");
        if (!json_is_string(content)) return FAIL("%s: %s.content: missing", name, where);
        int32_t file_id;
        char wid[80];
        snprintf(wid, sizeof wid, "%s.id", where);
        if (get_id(json_object_get(o, "id"), &file_id, name, wid, err)) return EX_DATAERR;
        tok_added a = {0};
        int special, sw, ls, rs, norm;
        if (get_bool(o, "special", 0, &special, name, where, err) ||
            get_bool(o, "single_word", 0, &sw, name, where, err) ||
            get_bool(o, "lstrip", 0, &ls, name, where, err) || get_bool(o, "rstrip", 0, &rs, name, where, err) ||
            get_bool(o, "normalized", !special, &norm, name, where, err))
            return EX_DATAERR;
        a.content = (char *)json_string_value(content);
        a.len = json_string_length(content);
        a.special = (uint8_t)special, a.single_word = (uint8_t)sw, a.lstrip = (uint8_t)ls;
        a.rstrip = (uint8_t)rs, a.normalized = (uint8_t)norm;
        if (a.len == 0) continue;
        const int64_t *have = tok_map_get(&t->added_by_content, a.content, a.len);
        int32_t id;
        if (have) {
            id = (int32_t)*have;
            int k;
            for (k = 0; k < t->n_added && t->added[k].id != id; k++) {}
            if (k < t->n_added && same_added(&t->added[k], &a)) continue;
        } else if (!vocab_lookup(t, a.content, a.len, &id)) {
            if (next_id > INT32_MAX) return FAIL("%s: %s: no id left for it", name, where);
            id = (int32_t)next_id++;
        }
        a.id = id;
        a.content = xmalloc(a.len + 1);
        memcpy(a.content, json_string_value(content), a.len + 1);
        tok_map_put(&t->added_by_content, a.content, a.len, id);
        int k;
        for (k = 0; k < t->n_added && t->added[k].id != id; k++) {}
        if (k < t->n_added) { /* the same id again: the later token replaces it */
            free(t->added[k].content);
            free(t->added[k].pattern);
        } else {
            t->added = xrealloc(t->added, (size_t)(t->n_added + 1) * sizeof *t->added);
            k = t->n_added++;
        }
        t->added[k] = a;
        set_entry(t, id, a.content, a.len);
        note_id(t, id);
    }
    /* What each added token matches: its content, normalized if it says so. */
    for (int k = 0; k < t->n_added; k++) {
        tok_added *a = &t->added[k];
        ra_bytes p = {0};
        if (a->normalized && t->nfc) {
            int r = tok_normalize_nfc(a->content, a->len, &p, err);
            if (r) return r;
        } else {
            ra_bytes_append(&p, a->content, a->len);
        }
        a->pattern = p.v;
        a->plen = p.n;
    }
    tok_matcher_build(&t->raw_matcher, t->added, t->n_added, 0);
    tok_matcher_build(&t->norm_matcher, t->added, t->n_added, 1);
    for (int k = 0; k < t->n_added; k++)
        if (t->added[k].single_word && !t->word_re) {
            static const char word[] = "[\\p{L}\\p{Nl}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]";
            int r = tok_compile_regex(word, strlen(word), 0, &t->word_re, "word class", err);
            if (r) return r;
            t->word_md = pcre2_match_data_create_from_pattern(t->word_re, NULL);
        }
    return 0;
}

/* ---------------------------------------------------------------- post-processor, decoder */

static int load_template(ra_tokenizer *t, const json_t *p, const char *name, const char *where, ra_error *err) {
    if (t->n_tpl) return FAIL("%s: %s: more than one TemplateProcessing is not supported", name, where);
    const json_t *single = json_object_get(p, "single"), *specials = json_object_get(p, "special_tokens");
    if (!json_is_array(single)) return FAIL("%s: %s.single: missing", name, where);
    if (specials && !json_is_object(specials))
        return FAIL("%s: %s.special_tokens: expected an object, got %s", name, where, type_name(specials));
    size_t n = json_array_size(single);
    int seen_seq = 0;
    t->tpl = xcalloc(n ? n : 1, sizeof *t->tpl);
    for (size_t i = 0; i < n; i++) {
        const json_t *item = json_array_get(single, i);
        const json_t *seq = json_object_get(item, "Sequence"), *sp = json_object_get(item, "SpecialToken");
        t->n_tpl = (int)i + 1;
        if (json_is_object(seq)) {
            const json_t *id = json_object_get(seq, "id");
            if (!json_is_string(id) || strcmp(json_string_value(id), "A") != 0)
                return FAIL("%s: %s.single[%zu]: only sequence A is supported in a single template", name, where, i);
            t->tpl[i].n = -1;
            seen_seq = 1;
        } else if (json_is_object(sp)) {
            const json_t *id = json_object_get(sp, "id");
            if (!json_is_string(id)) return FAIL("%s: %s.single[%zu].SpecialToken.id: missing", name, where, i);
            const json_t *tok = json_object_get(specials, json_string_value(id));
            const json_t *ids = json_object_get(tok, "ids");
            if (!json_is_array(ids))
                return FAIL("%s: %s.special_tokens['%s'].ids: missing", name, where, json_string_value(id));
            t->tpl[i].n = (int)json_array_size(ids);
            t->tpl[i].ids = xcalloc(json_array_size(ids) + 1, sizeof(int32_t));
            for (size_t k = 0; k < json_array_size(ids); k++) {
                char w[160];
                snprintf(w, sizeof w, "%s.special_tokens['%.40s'].ids[%zu]", where, json_string_value(id), k);
                if (get_id(json_array_get(ids, k), &t->tpl[i].ids[k], name, w, err)) return EX_DATAERR;
                note_id(t, t->tpl[i].ids[k]);
            }
        } else {
            return FAIL("%s: %s.single[%zu]: expected {\"Sequence\": ...} or {\"SpecialToken\": ...}", name, where, i);
        }
    }
    if (!seen_seq) return FAIL("%s: %s.single: the template has no Sequence A", name, where);
    return 0;
}

static int load_post(ra_tokenizer *t, const json_t *p, const char *name, const char *where, ra_error *err) {
    if (!p || json_is_null(p)) return 0;
    if (!json_is_object(p)) return FAIL("%s: %s: expected an object, got %s", name, where, type_name(p));
    const char *type = get_type(p);
    if (!type) return FAIL("%s: %s.type: missing", name, where);
    if (strcmp(type, "ByteLevel") == 0) return 0; /* only trims offsets */
    if (strcmp(type, "TemplateProcessing") == 0) return load_template(t, p, name, where, err);
    if (strcmp(type, "Sequence") == 0) {
        const json_t *list = json_object_get(p, "processors");
        if (!json_is_array(list)) return FAIL("%s: %s.processors: missing or not an array", name, where);
        for (size_t i = 0; i < json_array_size(list); i++) {
            char w[128];
            snprintf(w, sizeof w, "%s.processors[%zu]", where, i);
            if (load_post(t, json_array_get(list, i), name, w, err)) return EX_DATAERR;
        }
        return 0;
    }
    return FAIL("%s: post_processor '%s' is not supported (only TemplateProcessing, ByteLevel, Sequence)", name, type);
}

static int load_decoder(ra_tokenizer *t, const json_t *d, const char *name, const char *where, ra_error *err) {
    if (!d || json_is_null(d)) return 0;
    if (!json_is_object(d)) return FAIL("%s: %s: expected an object, got %s", name, where, type_name(d));
    const char *type = get_type(d);
    if (!type) return FAIL("%s: %s.type: missing", name, where);
    if (strcmp(type, "ByteLevel") == 0) {
        t->has_decoder = 1;
        return 0;
    }
    if (strcmp(type, "Sequence") == 0) {
        const json_t *list = json_object_get(d, "decoders");
        if (!json_is_array(list)) return FAIL("%s: %s.decoders: missing or not an array", name, where);
        for (size_t i = 0; i < json_array_size(list); i++) {
            char w[128];
            snprintf(w, sizeof w, "%s.decoders[%zu]", where, i);
            if (t->has_decoder) return FAIL("%s: %s: only one ByteLevel decoder is supported", name, w);
            if (load_decoder(t, json_array_get(list, i), name, w, err)) return EX_DATAERR;
        }
        return 0;
    }
    return FAIL("%s: decoder '%s' is not supported (only ByteLevel)", name, type);
}

/* ---------------------------------------------------------------- entry points */

static int load_root(ra_tokenizer *t, const json_t *root, const char *name, ra_error *err) {
    if (!json_is_object(root)) return FAIL("%s: expected a JSON object, got %s", name, type_name(root));
    const json_t *version = json_object_get(root, "version");
    if (version && !(json_is_string(version) && strcmp(json_string_value(version), "1.0") == 0))
        return FAIL("%s: version: expected \"1.0\"", name);
    static const char *const unsupported[] = {"truncation", "padding"};
    for (int i = 0; i < 2; i++) {
        const json_t *v = json_object_get(root, unsupported[i]);
        if (v && !json_is_null(v))
            return FAIL("%s: %s is set; ra never truncates or pads, set it to null", name, unsupported[i]);
    }
    if (load_normalizer(t, json_object_get(root, "normalizer"), name, "normalizer", err)) return EX_DATAERR;
    if (load_model(t, json_object_get(root, "model"), name, err)) return EX_DATAERR;
    size_t model_vocab_len = t->vocab_str.n;
    if (load_added(t, json_object_get(root, "added_tokens"), model_vocab_len, name, err)) return EX_DATAERR;
    const json_t *pre = json_object_get(root, "pre_tokenizer");
    if (!pre || json_is_null(pre))
        return FAIL("%s: pre_tokenizer: missing (byte-level BPE needs a ByteLevel pre-tokenizer)", name);
    if (load_pretok(t, pre, name, "pre_tokenizer", err)) return EX_DATAERR;
    if (!t->n_steps || t->steps[t->n_steps - 1].kind != TOK_STEP_BYTELEVEL)
        return FAIL("%s: pre_tokenizer: no ByteLevel step (only byte-level BPE is supported)", name);
    if (load_post(t, json_object_get(root, "post_processor"), name, "post_processor", err)) return EX_DATAERR;
    if (load_decoder(t, json_object_get(root, "decoder"), name, "decoder", err)) return EX_DATAERR;
    return 0;
}

int ra_tokenizer_load_json(const char *json, size_t len, const char *name, ra_tokenizer **out, ra_error *err) {
    *out = NULL;
    json_error_t jerr;
    json_t *root = json_loadb(json, len, 0, &jerr);
    if (!root) return FAIL("%s: not valid JSON (line %d, column %d): %s", name, jerr.line, jerr.column, jerr.text);
    ra_tokenizer *t = xcalloc(1, sizeof *t);
    t->name = xstrdup(name);
    t->bos_id = t->eos_id = -1;
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits(json, len));
    for (int i = 0; i < 16; i++) snprintf(t->id + 2 * i, 3, "%02x", c.digest[i]);
    tok_u64map_init(&t->id_entry, 16);
    int r = load_root(t, root, name, err);
    json_decref(root);
    if (r) {
        ra_tokenizer_free(t);
        return r;
    }
    tok_build_decode_table(t);
    t->mctx = pcre2_match_context_create(NULL);
    t->jit_stack = pcre2_jit_stack_create(32 * 1024, 64 * 1024 * 1024, NULL);
    if (t->mctx && t->jit_stack) pcre2_jit_stack_assign(t->mctx, NULL, t->jit_stack);
    tok_map_init(&t->cache, 4096);
    *out = t;
    return 0;
}

static int read_whole(const char *path, char **buf, size_t *len, ra_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return ra_fail(err, errno == ENOENT ? EX_NOINPUT : EX_IOERR, "%s: cannot open: %s", path, strerror(errno));
    ra_bytes b = {0};
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) ra_bytes_append(&b, chunk, n);
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        ra_bytes_free(&b);
        return ra_fail(err, EX_IOERR, "%s: read error", path);
    }
    if (!b.v) ra_bytes_append(&b, "", 0);
    *buf = b.v;
    *len = b.n;
    return 0;
}

/* A token named by tokenizer_config.json: a string or {"content": ...}. */
static int config_token(const ra_tokenizer *t, const json_t *v, int32_t *id, const char *file, const char *key,
                        ra_error *err) {
    if (json_is_null(v)) {
        *id = -1;
        return 0;
    }
    if (json_is_object(v)) v = json_object_get(v, "content");
    if (!json_is_string(v)) return FAIL("%s: %s: expected a token string or {\"content\": ...}", file, key);
    *id = ra_tokenizer_token_id(t, json_string_value(v));
    if (*id < 0) return FAIL("%s: %s '%s' is not in the vocabulary", file, key, json_string_value(v));
    return 0;
}

static char *join_path(const char *dir, const char *file) {
    size_t n = strlen(dir) + strlen(file) + 2;
    char *p = xmalloc(n);
    snprintf(p, n, "%s/%s", dir, file);
    return p;
}

static int load_configs_at(ra_tokenizer *t, const char *tok_config, const char *gen_config, ra_error *err);

static int load_configs(ra_tokenizer *t, const char *dir, ra_error *err) {
    char *a = join_path(dir, "tokenizer_config.json"), *b = join_path(dir, "generation_config.json");
    int r = load_configs_at(t, a, b, err);
    free(a);
    free(b);
    return r;
}

static int load_configs_at(ra_tokenizer *t, const char *path, const char *gen_path, ra_error *err) {
    int have_bos = 0, have_eos = 0;
    json_error_t jerr;
    json_t *cfg;
    struct stat st;
    if (stat(path, &st) == 0) {
        if (!(cfg = json_load_file(path, 0, &jerr)))
            return FAIL("%s: not valid JSON (line %d): %s", path, jerr.line, jerr.text);
        const json_t *b = json_object_get(cfg, "bos_token"), *e = json_object_get(cfg, "eos_token");
        int r = 0;
        if (b) r = config_token(t, b, &t->bos_id, path, "bos_token", err), have_bos = 1;
        if (!r && e) r = config_token(t, e, &t->eos_id, path, "eos_token", err), have_eos = 1;
        json_decref(cfg);
        if (r) return r;
    }
    path = gen_path;
    if ((have_bos && have_eos) || stat(path, &st) != 0) return 0;
    if (!(cfg = json_load_file(path, 0, &jerr))) return FAIL("%s: not valid JSON (line %d): %s", path, jerr.line, jerr.text);
    const char *keys[2] = {"bos_token_id", "eos_token_id"};
    int32_t *dst[2] = {&t->bos_id, &t->eos_id};
    int have[2] = {have_bos, have_eos}, r = 0;
    for (int i = 0; i < 2 && !r; i++) {
        const json_t *v = json_object_get(cfg, keys[i]);
        if (have[i] || !v || json_is_null(v)) continue;
        if (json_is_array(v)) v = json_array_get(v, 0); /* several eos ids: the first */
        r = get_id(v, dst[i], path, keys[i], err);
    }
    json_decref(cfg);
    return r;
}

int ra_tokenizer_load(const char *path, ra_tokenizer **out, ra_error *err) {
    *out = NULL;
    struct stat st;
    char *file, *dir;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        dir = xstrdup(path);
        file = join_path(path, "tokenizer.json");
    } else {
        file = xstrdup(path);
        const char *slash = strrchr(path, '/');
        dir = xstrdup(!slash ? "." : slash == path ? "/" : path);
        if (slash && slash != path) dir[slash - path] = 0;
    }
    char *buf = NULL;
    size_t len = 0;
    int r = read_whole(file, &buf, &len, err);
    if (!r) r = ra_tokenizer_load_json(buf, len, file, out, err);
    free(buf);
    if (!r) r = load_configs(*out, dir, err);
    free(file);
    free(dir);
    if (r && *out) {
        ra_tokenizer_free(*out);
        *out = NULL;
    }
    return r;
}

void ra_tokenizer_free(ra_tokenizer *t) {
    if (!t) return;
    tok_map_free(&t->vocab_str);
    tok_map_free(&t->vocab_bytes);
    tok_u64map_free(&t->merges);
    for (size_t i = 0; i < t->n_entries; i++) {
        free(t->entries[i].str);
        free(t->entries[i].dec);
    }
    free(t->entries);
    tok_u64map_free(&t->id_entry);
    for (int i = 0; i < t->n_added; i++) {
        free(t->added[i].content);
        free(t->added[i].pattern);
    }
    free(t->added);
    tok_map_free(&t->added_by_content);
    tok_matcher_free(&t->raw_matcher);
    tok_matcher_free(&t->norm_matcher);
    for (int i = 0; i < t->n_steps; i++) {
        pcre2_match_data_free(t->steps[i].md);
        pcre2_code_free(t->steps[i].re);
    }
    pcre2_match_context_free(t->mctx);
    pcre2_jit_stack_free(t->jit_stack);
    pcre2_match_data_free(t->word_md);
    pcre2_code_free(t->word_re);
    for (int i = 0; i < t->n_tpl; i++) free(t->tpl[i].ids);
    free(t->tpl);
    tok_bpe_free_scratch(t);
    ra_bytes_free(&t->norm_buf);
    ra_bytes_free(&t->prefix_buf);
    free(t->name);
    free(t);
}
