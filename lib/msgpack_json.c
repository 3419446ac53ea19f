/* msgpack <-> JSON for the ra stream header (meta, provenance).
 *
 * The header holds JSON-like values only: maps with string keys, arrays,
 * strings (UTF-8), integers within int64, finite floats, booleans and nil.
 * bin and ext have no JSON counterpart and are refused, so that every header
 * can be shown as JSON and written back without loss. */
#include <msgpack.h>
#include <stdio.h>
#include <string.h>

#include "stream.h"

int ra_pack_json(msgpack_packer *pk, const json_t *v) {
    json_t *mv = (json_t *)v; /* jansson's accessors are not const-correct */
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        if (msgpack_pack_map(pk, json_object_size(mv))) return -1;
        /* Insertion order: jansson keeps it, so a header read and written back
         * is byte-identical. */
        for (void *it = json_object_iter(mv); it; it = json_object_iter_next(mv, it)) {
            const char *k = json_object_iter_key(it);
            size_t klen = json_object_iter_key_len(it);
            if (msgpack_pack_str(pk, klen) || msgpack_pack_str_body(pk, k, klen)) return -1;
            if (ra_pack_json(pk, json_object_iter_value(it))) return -1;
        }
        return 0;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(mv);
        if (msgpack_pack_array(pk, n)) return -1;
        for (size_t i = 0; i < n; i++)
            if (ra_pack_json(pk, json_array_get(mv, i))) return -1;
        return 0;
    }
    case JSON_STRING: {
        size_t n = json_string_length(mv);
        if (msgpack_pack_str(pk, n)) return -1;
        return msgpack_pack_str_body(pk, json_string_value(mv), n);
    }
    case JSON_INTEGER: return msgpack_pack_int64(pk, json_integer_value(mv));
    case JSON_REAL: return msgpack_pack_double(pk, json_real_value(mv));
    case JSON_TRUE: return msgpack_pack_true(pk);
    case JSON_FALSE: return msgpack_pack_false(pk);
    case JSON_NULL: return msgpack_pack_nil(pk);
    }
    return -1;
}

/* Append ".key" or "[i]" to a path for messages, truncating quietly. */
static void path_push(char *path, size_t cap, const char *fmt, const char *key, size_t klen, size_t index) {
    size_t n = strlen(path);
    if (n + 1 >= cap) return;
    if (key) {
        size_t show = klen < 64 ? klen : 64;
        char tmp[80];
        size_t j = 0;
        for (size_t i = 0; i < show; i++) {
            unsigned char c = (unsigned char)key[i];
            tmp[j++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
        }
        tmp[j] = 0;
        snprintf(path + n, cap - n, fmt, tmp);
    } else {
        snprintf(path + n, cap - n, fmt, index);
    }
}

static json_t *to_json(const msgpack_object *o, char *path, size_t cap, ra_error *err) {
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: return json_null();
    case MSGPACK_OBJECT_BOOLEAN: return json_boolean(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (o->via.u64 > (uint64_t)INT64_MAX) {
            ra_fail(err, EX_DATAERR, "%s: integer %llu is beyond int64", path, (unsigned long long)o->via.u64);
            return NULL;
        }
        return json_integer((json_int_t)o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return json_integer((json_int_t)o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: {
        json_t *j = json_real(o->via.f64);
        if (!j) ra_fail(err, EX_DATAERR, "%s: non-finite float %g is not allowed", path, o->via.f64);
        return j;
    }
    case MSGPACK_OBJECT_STR: {
        /* msgpack-c leaves ptr NULL for "", which jansson refuses */
        json_t *j = json_stringn(o->via.str.size ? o->via.str.ptr : "", o->via.str.size);
        if (!j) ra_fail(err, EX_DATAERR, "%s: string is not valid UTF-8", path);
        return j;
    }
    case MSGPACK_OBJECT_ARRAY: {
        json_t *a = json_array();
        size_t len = strlen(path);
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            path_push(path, cap, "[%zu]", NULL, 0, i);
            json_t *x = to_json(&o->via.array.ptr[i], path, cap, err);
            path[len] = 0;
            if (!x) {
                json_decref(a);
                return NULL;
            }
            json_array_append_new(a, x);
        }
        return a;
    }
    case MSGPACK_OBJECT_MAP: {
        json_t *m = json_object();
        size_t len = strlen(path);
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object_kv *kv = &o->via.map.ptr[i];
            if (kv->key.type != MSGPACK_OBJECT_STR) {
                ra_fail(err, EX_DATAERR, "%s: map key %u is not a string", path, i);
                json_decref(m);
                return NULL;
            }
            const char *k = kv->key.via.str.size ? kv->key.via.str.ptr : "";
            size_t klen = kv->key.via.str.size;
            if (json_object_getn(m, k, klen)) {
                path_push(path, cap, ".%s", k, klen, 0);
                ra_fail(err, EX_DATAERR, "%s: duplicate key", path);
                json_decref(m);
                return NULL;
            }
            path_push(path, cap, ".%s", k, klen, 0);
            json_t *x = to_json(&kv->val, path, cap, err);
            if (x && json_object_setn_new(m, k, klen, x) != 0) {
                ra_fail(err, EX_DATAERR, "%s: key is not valid UTF-8", path);
                x = NULL;
            }
            path[len] = 0;
            if (!x) {
                json_decref(m);
                return NULL;
            }
        }
        return m;
    }
    case MSGPACK_OBJECT_BIN:
        ra_fail(err, EX_DATAERR, "%s: binary data is not allowed here (JSON-like values only)", path);
        return NULL;
    case MSGPACK_OBJECT_EXT:
        ra_fail(err, EX_DATAERR, "%s: msgpack ext values are not allowed here", path);
        return NULL;
    }
    ra_fail(err, EX_DATAERR, "%s: unknown msgpack type %d", path, (int)o->type);
    return NULL;
}

json_t *ra_msgpack_to_json(const msgpack_object *o, const char *where, ra_error *err) {
    char path[512];
    snprintf(path, sizeof path, "%s", where ? where : "value");
    return to_json(o, path, sizeof path, err);
}
