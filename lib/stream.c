/* The ra stream: writer and streaming reader.  Byte-level specification in
 * formats/ra-stream.md.
 *
 * Writer: msgpack-c's packer with a write callback that feeds every byte
 * before the trailer to an XXH3-128 state and then to the output file (a
 * temporary file renamed into place on close, or stdout).
 *
 * Reader: a small buffered input layer that hashes every byte it consumes.
 * Top-level map headers and bin headers (the framing) are parsed here; every
 * other value is first measured by mp_extent (so no value larger than a fixed
 * limit is ever buffered, and msgpack-c never sees a declared array size that
 * the bytes do not back) and then decoded by msgpack_unpack_next.  Tensor data
 * goes straight from the file into the caller's buffer, or is skipped while
 * hashed, so memory use does not depend on tensor sizes. */
#include "stream.h"

#include <errno.h>
#include <msgpack.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>

#include "atomic_file.h"

/* Limits on buffered values: meta/provenance may be large (a model config,
 * a list of inputs), record fields are small (a name <= 1024 bytes, <= 8 dims). */
#define HEADER_VALUE_MAX ((size_t)256 << 20)
#define FIELD_VALUE_MAX ((size_t)64 << 10)
#define READ_CHUNK ((size_t)64 << 10)

static const char *const known_kinds[] = {"model", "scores", "plan", "tokens", "results",
                                          "activations", "checkpoint", NULL};

int ra_kind_is_known(const char *kind) {
    for (int i = 0; known_kinds[i]; i++)
        if (strcmp(kind, known_kinds[i]) == 0) return 1;
    return 0;
}

static void digest_hex(XXH128_hash_t h, char out[RA_CONTENT_ID_LEN + 1]) {
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, h);
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) {
        out[2 * i] = hex[c.digest[i] >> 4];
        out[2 * i + 1] = hex[c.digest[i] & 15];
    }
    out[RA_CONTENT_ID_LEN] = 0;
}

/* A name made safe for messages: control bytes become '?', long names are cut. */
static const char *printable(char *out, size_t cap, const char *s, size_t len) {
    size_t show = len, j = 0;
    int cut = 0;
    if (show > 120) show = 120, cut = 1;
    for (size_t i = 0; i < show && j + 4 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        out[j++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    if (cut && j + 4 < cap) out[j++] = '.', out[j++] = '.', out[j++] = '.';
    out[j] = 0;
    return out;
}

static void shape_str(char *out, size_t cap, int ndim, const int64_t *shape) {
    size_t n = (size_t)snprintf(out, cap, "[");
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(out + n, cap - n, "%s%lld", i ? "," : "", (long long)shape[i]);
    if (n < cap) snprintf(out + n, cap - n, "]");
}

/* Shared checks of a tensor's name, dtype and shape; returns nbytes in *nbytes. */
static int check_tensor_desc(const char *name, size_t name_len, ra_dtype dtype, int ndim,
                             const int64_t *shape, uint64_t *nbytes, char *why, size_t cap) {
    if (name_len == 0 || name_len > RA_NAME_MAX || memchr(name, 0, name_len)) {
        snprintf(why, cap, "name must be 1 to %d bytes without NUL (got %zu bytes)", RA_NAME_MAX, name_len);
        return -1;
    }
    if ((unsigned)dtype >= RA_DTYPE_COUNT) {
        snprintf(why, cap, "unknown dtype %d", (int)dtype);
        return -1;
    }
    if (ndim < 0 || ndim > RA_MAX_DIMS) {
        snprintf(why, cap, "%d dimensions (at most %d allowed)", ndim, RA_MAX_DIMS);
        return -1;
    }
    int64_t numel = ra_shape_numel(ndim, shape);
    uint64_t es = ra_dtype_size(dtype);
    if (numel < 0 || (uint64_t)numel > (uint64_t)INT64_MAX / es) {
        char s[256];
        shape_str(s, sizeof s, ndim, shape);
        snprintf(why, cap, "shape %s is negative or too large", s);
        return -1;
    }
    *nbytes = (uint64_t)numel * es;
    return 0;
}

/* ====================================================================== writer */

struct ra_writer {
    ra_atomic_file af;
    int af_open;
    FILE *f;
    char *path; /* for messages */
    XXH3_state_t *hash;
    int hashing;
    int io_errno, io_failed;
    int failed; /* sticky: after an error mid-tensor the stream is unusable */
    ra_error error;
    msgpack_packer pk;
    uint64_t split_bytes;
    uint64_t records;
    json_t *names; /* set of tensor names written */
    /* the tensor being written */
    int in_tensor;
    char name[RA_NAME_MAX + 1];
    ra_dtype dtype;
    int ndim;
    int64_t shape[RA_MAX_DIMS];
    uint64_t nbytes, written, part_bytes, part_left;
    int64_t part, parts;
};

static int write_cb(void *data, const char *buf, size_t len) {
    ra_writer *w = data;
    if (w->io_failed) return -1;
    if (w->hashing) XXH3_128bits_update(w->hash, buf, len);
    if (len && fwrite(buf, 1, len, w->f) != len) {
        w->io_failed = 1;
        w->io_errno = errno;
        return -1;
    }
    return 0;
}

/* Record an error that leaves the stream unusable; later calls return it. */
__attribute__((format(printf, 4, 5))) static int wpoison(ra_writer *w, ra_error *err, int code,
                                                          const char *fmt, ...) {
    char msg[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    ra_fail(&w->error, code, "%s: %s", w->path, msg);
    w->failed = 1;
    if (err) *err = w->error;
    return code;
}

static int wsticky(ra_writer *w, ra_error *err) {
    if (err) *err = w->error;
    return w->error.code;
}

static int wcheck_io(ra_writer *w, ra_error *err) {
    if (!w->io_failed) return 0;
    return wpoison(w, err, EX_IOERR, "write failed: %s", strerror(w->io_errno ? w->io_errno : EIO));
}

static int pack_cstr(msgpack_packer *pk, const char *s) {
    size_t n = strlen(s);
    return msgpack_pack_str(pk, n) || msgpack_pack_str_body(pk, s, n);
}

ra_writer *ra_writer_open(const char *path, const char *kind, const json_t *meta,
                          const json_t *provenance, ra_error *err) {
    if (!kind || !ra_kind_is_known(kind)) {
        ra_fail(err, EX_SOFTWARE, "%s: unknown stream kind '%s'", path, kind ? kind : "(null)");
        return NULL;
    }
    if ((meta && !json_is_object(meta)) || (provenance && !json_is_object(provenance))) {
        ra_fail(err, EX_SOFTWARE, "%s: meta and provenance must be JSON objects", path);
        return NULL;
    }
    ra_writer *w = xcalloc(1, sizeof *w);
    if (strcmp(path, "-") == 0) {
        if (ra_check_binary_stdout(err)) {
            free(w);
            return NULL;
        }
        w->f = stdout;
        w->path = xstrdup("<stdout>");
    } else {
        if (ra_atomic_open(&w->af, path, err)) {
            free(w);
            return NULL;
        }
        w->af_open = 1;
        w->f = w->af.f;
        w->path = xstrdup(path);
    }
    w->hash = XXH3_createState();
    RA_CHECK(w->hash != NULL);
    XXH3_128bits_reset(w->hash);
    w->hashing = 1;
    w->split_bytes = RA_DEFAULT_SPLIT_BYTES;
    w->names = json_object();
    msgpack_packer_init(&w->pk, w, write_cb);

    msgpack_packer *pk = &w->pk;
    json_t *empty = json_object();
    msgpack_pack_map(pk, 5);
    pack_cstr(pk, "format");
    pack_cstr(pk, "ra");
    pack_cstr(pk, "version");
    msgpack_pack_int(pk, RA_STREAM_VERSION);
    pack_cstr(pk, "kind");
    pack_cstr(pk, kind);
    pack_cstr(pk, "meta");
    ra_pack_json(pk, meta ? meta : empty);
    pack_cstr(pk, "provenance");
    ra_pack_json(pk, provenance ? provenance : empty);
    json_decref(empty);
    if (wcheck_io(w, err)) {
        ra_writer_abort(w);
        return NULL;
    }
    return w;
}

void ra_writer_set_split_bytes(ra_writer *w, uint64_t bytes) {
    if (bytes == 0 || bytes > RA_DEFAULT_SPLIT_BYTES) bytes = RA_DEFAULT_SPLIT_BYTES;
    w->split_bytes = bytes;
}

static uint64_t part_size(const ra_writer *w, int64_t part) {
    uint64_t off = (uint64_t)part * w->part_bytes;
    uint64_t left = w->nbytes - off;
    return left < w->part_bytes ? left : w->part_bytes;
}

/* The map head of one record: name, dtype, shape, [part, parts], data + bin header. */
static int write_record_head(ra_writer *w, ra_error *err) {
    msgpack_packer *pk = &w->pk;
    int multi = w->parts > 1;
    msgpack_pack_map(pk, multi ? 6 : 4);
    pack_cstr(pk, "name");
    pack_cstr(pk, w->name);
    pack_cstr(pk, "dtype");
    pack_cstr(pk, ra_dtype_name(w->dtype));
    pack_cstr(pk, "shape");
    msgpack_pack_array(pk, (size_t)w->ndim);
    for (int i = 0; i < w->ndim; i++) msgpack_pack_int64(pk, w->shape[i]);
    if (multi) {
        pack_cstr(pk, "part");
        msgpack_pack_int64(pk, w->part);
        pack_cstr(pk, "parts");
        msgpack_pack_int64(pk, w->parts);
    }
    pack_cstr(pk, "data");
    w->part_left = part_size(w, w->part);
    msgpack_pack_bin(pk, (size_t)w->part_left);
    w->records++;
    return wcheck_io(w, err);
}

int ra_writer_begin(ra_writer *w, const char *name, ra_dtype dtype, int ndim, const int64_t *shape,
                    ra_error *err) {
    if (w->failed) return wsticky(w, err);
    char pn[200];
    if (w->in_tensor)
        return wpoison(w, err, EX_SOFTWARE, "tensor '%s' begun before tensor '%s' ended",
                       printable(pn, sizeof pn, name, strlen(name)), w->name);
    char why[400];
    uint64_t nbytes;
    size_t name_len = strlen(name);
    if (check_tensor_desc(name, name_len, dtype, ndim, shape, &nbytes, why, sizeof why))
        return ra_fail(err, EX_DATAERR, "%s: tensor '%s': %s", w->path, printable(pn, sizeof pn, name, name_len), why);
    if (json_object_getn(w->names, name, name_len))
        return ra_fail(err, EX_DATAERR, "%s: duplicate tensor name '%s'", w->path, printable(pn, sizeof pn, name, name_len));
    json_object_setn_new_nocheck(w->names, name, name_len, json_true());
    memcpy(w->name, name, name_len + 1);
    w->dtype = dtype;
    w->ndim = ndim;
    for (int i = 0; i < ndim; i++) w->shape[i] = shape[i];
    w->nbytes = nbytes;
    w->written = 0;
    uint64_t es = ra_dtype_size(dtype);
    uint64_t split = w->split_bytes - w->split_bytes % es;
    if (split < es) split = es;
    w->part_bytes = split;
    w->parts = nbytes <= split ? 1 : (int64_t)((nbytes + split - 1) / split);
    if (w->parts == 1) w->part_bytes = nbytes;
    w->part = 0;
    w->in_tensor = 1;
    return write_record_head(w, err);
}

int ra_writer_data(ra_writer *w, const void *data, uint64_t nbytes, ra_error *err) {
    if (w->failed) return wsticky(w, err);
    if (!w->in_tensor) return wpoison(w, err, EX_SOFTWARE, "tensor data written outside a tensor");
    if (nbytes > w->nbytes - w->written)
        return wpoison(w, err, EX_SOFTWARE, "tensor '%s': %llu bytes given past its size of %llu bytes", w->name,
                       (unsigned long long)(w->written + nbytes - w->nbytes), (unsigned long long)w->nbytes);
    const char *p = data;
    while (nbytes) {
        if (w->part_left == 0) {
            w->part++;
            if (write_record_head(w, err)) return w->error.code;
        }
        uint64_t m = nbytes < w->part_left ? nbytes : w->part_left;
        msgpack_pack_bin_body(&w->pk, p, (size_t)m);
        p += m;
        nbytes -= m;
        w->part_left -= m;
        w->written += m;
    }
    return wcheck_io(w, err);
}

int ra_writer_end(ra_writer *w, ra_error *err) {
    if (w->failed) return wsticky(w, err);
    if (!w->in_tensor) return wpoison(w, err, EX_SOFTWARE, "tensor ended that was not begun");
    if (w->written != w->nbytes)
        return wpoison(w, err, EX_SOFTWARE, "tensor '%s': %llu of %llu bytes written", w->name,
                       (unsigned long long)w->written, (unsigned long long)w->nbytes);
    w->in_tensor = 0;
    return 0;
}

int ra_writer_tensor(ra_writer *w, const char *name, ra_dtype dtype, int ndim, const int64_t *shape,
                     const void *data, ra_error *err) {
    int rc = ra_writer_begin(w, name, dtype, ndim, shape, err);
    if (!rc) rc = ra_writer_data(w, data, w->nbytes, err);
    if (!rc) rc = ra_writer_end(w, err);
    return rc;
}

int ra_writer_tensor_from_f32(ra_writer *w, const char *name, ra_dtype dtype, int ndim,
                              const int64_t *shape, const float *data, ra_error *err) {
    if (dtype == RA_F32) return ra_writer_tensor(w, name, dtype, ndim, shape, data, err);
    int rc = ra_writer_begin(w, name, dtype, ndim, shape, err);
    if (rc) return rc;
    size_t es = ra_dtype_size(dtype);
    size_t chunk = READ_CHUNK / 8;
    unsigned char *tmp = xmalloc(chunk * es);
    uint64_t numel = w->nbytes / es;
    for (uint64_t i = 0; i < numel && !rc; i += chunk) {
        size_t n = numel - i < chunk ? (size_t)(numel - i) : chunk;
        ra_convert_from_f32(tmp, dtype, data + i, n);
        rc = ra_writer_data(w, tmp, n * es, err);
    }
    free(tmp);
    return rc ? rc : ra_writer_end(w, err);
}

static void writer_free(ra_writer *w) {
    if (w->hash) XXH3_freeState(w->hash);
    json_decref(w->names);
    free(w->path);
    free(w);
}

int ra_writer_close(ra_writer *w, char *content_id, ra_error *err) {
    int rc = 0;
    char id[RA_CONTENT_ID_LEN + 1];
    if (w->failed) rc = wsticky(w, err);
    else if (w->in_tensor) rc = wpoison(w, err, EX_SOFTWARE, "closed with tensor '%s' unfinished", w->name);
    if (!rc) {
        digest_hex(XXH3_128bits_digest(w->hash), id);
        w->hashing = 0; /* the trailer is not part of the content */
        msgpack_packer *pk = &w->pk;
        msgpack_pack_map(pk, 3);
        pack_cstr(pk, "end");
        pack_cstr(pk, "ra");
        pack_cstr(pk, "records");
        msgpack_pack_uint64(pk, w->records);
        pack_cstr(pk, "digest");
        pack_cstr(pk, id);
        rc = wcheck_io(w, err);
    }
    if (!rc) {
        if (w->af_open) {
            w->af_open = 0;
            rc = ra_atomic_commit(&w->af, err); /* removes the temp file on failure */
        } else if (fflush(w->f) != 0 || ferror(w->f)) {
            rc = ra_fail(err, EX_IOERR, "%s: write failed: %s", w->path, strerror(errno));
        }
    }
    if (w->af_open) ra_atomic_abort(&w->af);
    if (!rc && content_id) memcpy(content_id, id, sizeof id);
    writer_free(w);
    return rc;
}

void ra_writer_abort(ra_writer *w) {
    if (!w) return;
    if (w->af_open) ra_atomic_abort(&w->af);
    else if (w->f) fflush(w->f);
    writer_free(w);
}

/* ====================================================================== reader */

/* Length of the msgpack object at p, without decoding it.  Returns 1 with *len
 * when the whole object lies in p[0..avail), 0 when more bytes are needed (*len
 * = how many are known to be needed), -1 for an invalid first byte, -2 when the
 * object would exceed limit bytes.  Declared array/map sizes are checked
 * against the limit before any byte of their content is read, because every
 * element takes at least one byte; msgpack-c allocates declared sizes up
 * front. */
static int mp_extent(const unsigned char *p, size_t avail, size_t limit, size_t *len) {
    uint64_t off = 0, pending = 1;
    while (pending) {
        if (off >= avail) {
            *len = (size_t)off + 1;
            return 0;
        }
        unsigned b = p[off];
        uint64_t hdr = 1, lenbytes = 0, payload = 0, children = 0;
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) hdr = 1;
        else if (b <= 0x8f) children = 2 * (uint64_t)(b & 0x0f);
        else if (b <= 0x9f) children = b & 0x0f;
        else if (b <= 0xbf) payload = b & 0x1f;
        else switch (b) {
            case 0xc4: case 0xd9: lenbytes = 1; break;         /* bin8, str8 */
            case 0xc5: case 0xda: lenbytes = 2; break;         /* bin16, str16 */
            case 0xc6: case 0xdb: lenbytes = 4; break;         /* bin32, str32 */
            case 0xc7: lenbytes = 1; hdr = 2; break;           /* ext8: len, type */
            case 0xc8: lenbytes = 2; hdr = 2; break;
            case 0xc9: lenbytes = 4; hdr = 2; break;
            case 0xca: hdr = 5; break;                         /* float32 */
            case 0xcb: hdr = 9; break;                         /* float64 */
            case 0xcc: case 0xd0: hdr = 2; break;
            case 0xcd: case 0xd1: hdr = 3; break;
            case 0xce: case 0xd2: hdr = 5; break;
            case 0xcf: case 0xd3: hdr = 9; break;
            case 0xd4: hdr = 3; break;                         /* fixext1..16: type + data */
            case 0xd5: hdr = 4; break;
            case 0xd6: hdr = 6; break;
            case 0xd7: hdr = 10; break;
            case 0xd8: hdr = 18; break;
            case 0xdc: lenbytes = 2; break;                    /* array16 */
            case 0xdd: lenbytes = 4; break;                    /* array32 */
            case 0xde: lenbytes = 2; break;                    /* map16 */
            case 0xdf: lenbytes = 4; break;                    /* map32 */
            default: return -1;                                /* 0xc1 is never used */
            }
        if (lenbytes) {
            if (off + 1 + lenbytes > avail) {
                *len = (size_t)(off + 1 + lenbytes);
                return 0;
            }
            uint64_t n = 0;
            for (uint64_t i = 0; i < lenbytes; i++) n = n << 8 | p[off + 1 + i];
            if (b == 0xdc || b == 0xdd) children = n;
            else if (b == 0xde || b == 0xdf) children = 2 * n;
            else payload = n;
            hdr += lenbytes;
        }
        off += hdr + payload;
        pending += children;
        pending--;
        if (off > limit || pending > limit - (off < limit ? off : limit)) return -2;
    }
    if (off > avail) {
        *len = (size_t)off;
        return 0;
    }
    *len = (size_t)off;
    return 1;
}

enum {
    K_NAME = 1 << 0, K_DTYPE = 1 << 1, K_SHAPE = 1 << 2, K_PART = 1 << 3, K_PARTS = 1 << 4,
    K_DATA = 1 << 5, K_END = 1 << 6, K_RECORDS = 1 << 7, K_DIGEST = 1 << 8,
    K_FORMAT = 1 << 9, K_VERSION = 1 << 10, K_KIND = 1 << 11, K_META = 1 << 12, K_PROV = 1 << 13,
};
#define RECORD_KEYS (K_NAME | K_DTYPE | K_SHAPE | K_PART | K_PARTS | K_DATA)
#define TRAILER_KEYS (K_END | K_RECORDS | K_DIGEST)
#define HEADER_KEYS (K_FORMAT | K_VERSION | K_KIND | K_META | K_PROV)

static const struct {
    const char *name;
    int bit;
} key_names[] = {
    {"name", K_NAME}, {"dtype", K_DTYPE}, {"shape", K_SHAPE}, {"part", K_PART}, {"parts", K_PARTS},
    {"data", K_DATA}, {"end", K_END}, {"records", K_RECORDS}, {"digest", K_DIGEST},
    {"format", K_FORMAT}, {"version", K_VERSION}, {"kind", K_KIND}, {"meta", K_META},
    {"provenance", K_PROV},
};

/* One parsed top-level map (a record up to its data, or the trailer). */
typedef struct parsed {
    int seen;
    char name[RA_NAME_MAX + 1];
    size_t name_len;
    ra_dtype dtype;
    int ndim;
    int64_t shape[RA_MAX_DIMS];
    int64_t part, parts;
    uint64_t data_len, nbytes;
    /* trailer */
    int end_ok;
    uint64_t records;
    char digest[RA_CONTENT_ID_LEN + 1];
    int digest_ok;
} parsed;

enum { CTX_HEADER, CTX_RECORD, CTX_TRAILER };

struct ra_reader {
    FILE *f;
    int own_f;
    char *name;
    unsigned char *buf;
    size_t cap, start, end;
    int eof;
    uint64_t pos; /* file offset of buf[start] */
    XXH3_state_t *hash;
    /* header */
    char *kind;
    int version;
    json_t *meta, *prov;
    /* progress */
    json_t *names;    /* tensor names seen */
    uint64_t records; /* record maps read so far */
    int failed, done;
    ra_error error;
    char content_id[RA_CONTENT_ID_LEN + 1];
    /* what is being parsed, for messages */
    int ctx;
    uint64_t ctx_record;
    const char *ctx_name;
    /* the current tensor */
    int have_tensor, touched;
    ra_tensor_info cur;
    int64_t part, parts;
    uint64_t part_left, tensor_left;
};

/* "<file>: record 3 (tensor 'w'): <msg>"; makes the reader fail for good. */
__attribute__((format(printf, 4, 5))) static int rfail(ra_reader *r, ra_error *err, int code, const char *fmt,
                                                        ...) {
    char msg[700], where[300], pn[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (r->ctx == CTX_HEADER) snprintf(where, sizeof where, "header");
    else if (r->ctx == CTX_TRAILER) snprintf(where, sizeof where, "trailer");
    else if (r->ctx_name)
        snprintf(where, sizeof where, "record %llu (tensor '%s')", (unsigned long long)r->ctx_record,
                 printable(pn, sizeof pn, r->ctx_name, strlen(r->ctx_name)));
    else snprintf(where, sizeof where, "record %llu", (unsigned long long)r->ctx_record);
    ra_fail(&r->error, code, "%s: %s: %s", r->name, where, msg);
    r->failed = 1;
    if (err) *err = r->error;
    return code;
}

static int rsticky(ra_reader *r, ra_error *err) {
    if (err) *err = r->error;
    return r->error.code;
}

/* Make at least need bytes available at buf[start].  0 ok, 1 end of file
 * first, -1 read error.  The buffer grows only as bytes actually arrive. */
static int fill(ra_reader *r, size_t need) {
    while (r->end - r->start < need) {
        if (r->eof) return 1;
        if (r->end == r->cap) {
            if (r->start > 0) {
                memmove(r->buf, r->buf + r->start, r->end - r->start);
                r->end -= r->start;
                r->start = 0;
            } else {
                r->cap = r->cap ? 2 * r->cap : READ_CHUNK;
                r->buf = xrealloc(r->buf, r->cap);
            }
        }
        size_t want = r->cap - r->end;
        size_t got = fread(r->buf + r->end, 1, want, r->f);
        r->end += got;
        if (got < want) {
            if (ferror(r->f)) return -1;
            r->eof = 1;
        }
    }
    return 0;
}

static void consume(ra_reader *r, size_t n) {
    XXH3_128bits_update(r->hash, r->buf + r->start, n);
    r->start += n;
    r->pos += n;
}

static int fill_or_fail(ra_reader *r, size_t need, const char *what, ra_error *err) {
    int f = fill(r, need);
    if (f == 1) return rfail(r, err, EX_DATAERR, "truncated: the file ends at byte %llu, inside %s",
                             (unsigned long long)(r->pos + (r->end - r->start)), what);
    if (f < 0) return rfail(r, err, EX_IOERR, "read error: %s", strerror(errno));
    return 0;
}

/* Read one whole msgpack value of at most limit bytes and decode it into u
 * (whose objects point into the buffer until the next fill). */
static int read_value(ra_reader *r, size_t limit, msgpack_unpacked *u, const char *what, ra_error *err) {
    for (;;) {
        size_t len;
        int st = mp_extent(r->buf + r->start, r->end - r->start, limit, &len);
        if (st == -1)
            return rfail(r, err, EX_DATAERR, "%s: invalid msgpack byte 0x%02x at offset %llu", what,
                         r->buf[r->start], (unsigned long long)r->pos);
        if (st == -2) return rfail(r, err, EX_DATAERR, "%s is larger than the limit of %zu bytes", what, limit);
        if (st == 1) {
            size_t off = 0;
            msgpack_unpack_return ur = msgpack_unpack_next(u, (const char *)r->buf + r->start, len, &off);
            if (ur != MSGPACK_UNPACK_SUCCESS || off != len)
                return rfail(r, err, EX_DATAERR, "%s: invalid msgpack at offset %llu (nested too deep?)", what,
                             (unsigned long long)r->pos);
            consume(r, len);
            return 0;
        }
        if (fill_or_fail(r, len, what, err)) return r->error.code;
    }
}

/* A top-level map head: the number of entries. */
static int read_map_head(ra_reader *r, uint32_t *n, const char *what, ra_error *err) {
    if (fill_or_fail(r, 1, what, err)) return r->error.code;
    unsigned b = r->buf[r->start];
    size_t lb = b == 0xde ? 2 : b == 0xdf ? 4 : 0;
    if (!lb && (b < 0x80 || b > 0x8f))
        return rfail(r, err, EX_DATAERR, "expected a msgpack map, found byte 0x%02x at offset %llu", b,
                     (unsigned long long)r->pos);
    if (fill_or_fail(r, 1 + lb, what, err)) return r->error.code;
    uint32_t v = lb ? 0 : (b & 0x0f);
    for (size_t i = 0; i < lb; i++) v = v << 8 | r->buf[r->start + 1 + i];
    *n = v;
    consume(r, 1 + lb);
    return 0;
}

/* The bin head of a record's data: its length. */
static int read_bin_head(ra_reader *r, uint64_t *len, ra_error *err) {
    if (fill_or_fail(r, 1, "the data header", err)) return r->error.code;
    unsigned b = r->buf[r->start];
    size_t lb = b == 0xc4 ? 1 : b == 0xc5 ? 2 : b == 0xc6 ? 4 : 0;
    if (!lb) return rfail(r, err, EX_DATAERR, "'data' must be msgpack bin, found byte 0x%02x", b);
    if (fill_or_fail(r, 1 + lb, "the data header", err)) return r->error.code;
    uint64_t v = 0;
    for (size_t i = 0; i < lb; i++) v = v << 8 | r->buf[r->start + 1 + i];
    *len = v;
    consume(r, 1 + lb);
    return 0;
}

/* Read n data bytes into dst (NULL: skip them), hashing them. */
static int read_body(ra_reader *r, unsigned char *dst, uint64_t n, ra_error *err) {
    uint64_t want = n;
    while (n) {
        if (r->end == r->start) {
            if (dst && n >= READ_CHUNK) { /* large reads bypass the buffer */
                size_t got = fread(dst, 1, (size_t)n, r->f);
                XXH3_128bits_update(r->hash, dst, got);
                r->pos += got;
                dst += got;
                n -= got;
                if (n) {
                    if (ferror(r->f)) return rfail(r, err, EX_IOERR, "read error: %s", strerror(errno));
                    r->eof = 1;
                    return rfail(r, err, EX_DATAERR, "truncated: data ends after %llu of %llu bytes",
                                 (unsigned long long)(want - n), (unsigned long long)want);
                }
                continue;
            }
            int f = fill(r, 1);
            if (f == 1)
                return rfail(r, err, EX_DATAERR, "truncated: data ends after %llu of %llu bytes",
                             (unsigned long long)(want - n), (unsigned long long)want);
            if (f < 0) return rfail(r, err, EX_IOERR, "read error: %s", strerror(errno));
        }
        size_t avail = r->end - r->start;
        size_t m = n < avail ? (size_t)n : avail;
        if (dst) {
            memcpy(dst, r->buf + r->start, m);
            dst += m;
        }
        consume(r, m);
        n -= m;
    }
    return 0;
}

static int key_bit(const char *s, size_t n) {
    for (size_t i = 0; i < sizeof key_names / sizeof key_names[0]; i++)
        if (strlen(key_names[i].name) == n && memcmp(key_names[i].name, s, n) == 0) return key_names[i].bit;
    return 0;
}

static const char *key_str(int bit) {
    for (size_t i = 0; i < sizeof key_names / sizeof key_names[0]; i++)
        if (key_names[i].bit == bit) return key_names[i].name;
    return "?";
}

/* A str's bytes; msgpack-c leaves ptr NULL for "", which libc calls must not see. */
static const char *sptr(const msgpack_object *o) { return o->via.str.size ? o->via.str.ptr : ""; }

static int get_int(const msgpack_object *o, int64_t *v) {
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= (uint64_t)INT64_MAX) {
        *v = (int64_t)o->via.u64;
        return 0;
    }
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *v = o->via.i64;
        return 0;
    }
    return -1;
}

static int is_str(const msgpack_object *o, const char *s) {
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
           memcmp(sptr(o), s, o->via.str.size) == 0;
}

/* Store one record/trailer field. */
static int record_field(ra_reader *r, parsed *p, int bit, const msgpack_object *o, ra_error *err) {
    int64_t v;
    switch (bit) {
    case K_NAME:
        if (o->type != MSGPACK_OBJECT_STR) return rfail(r, err, EX_DATAERR, "'name' must be a string");
        if (o->via.str.size == 0 || o->via.str.size > RA_NAME_MAX || memchr(sptr(o), 0, o->via.str.size))
            return rfail(r, err, EX_DATAERR, "'name' must be 1 to %d bytes without NUL (got %u bytes)", RA_NAME_MAX,
                         o->via.str.size);
        memcpy(p->name, sptr(o), o->via.str.size);
        p->name[o->via.str.size] = 0;
        p->name_len = o->via.str.size;
        r->ctx_name = p->name;
        return 0;
    case K_DTYPE: {
        if (o->type != MSGPACK_OBJECT_STR) return rfail(r, err, EX_DATAERR, "'dtype' must be a string");
        char s[16], pn[64];
        if (o->via.str.size >= sizeof s)
            return rfail(r, err, EX_DATAERR, "unknown dtype '%s'", printable(pn, sizeof pn, sptr(o), o->via.str.size));
        memcpy(s, sptr(o), o->via.str.size);
        s[o->via.str.size] = 0;
        if (ra_dtype_parse(s, &p->dtype))
            return rfail(r, err, EX_DATAERR, "unknown dtype '%s' (expected bf16, f16, f32, f64, i32, i64 or u8)",
                         printable(pn, sizeof pn, s, o->via.str.size));
        return 0;
    }
    case K_SHAPE:
        if (o->type != MSGPACK_OBJECT_ARRAY) return rfail(r, err, EX_DATAERR, "'shape' must be an array of integers");
        if (o->via.array.size > RA_MAX_DIMS)
            return rfail(r, err, EX_DATAERR, "'shape' has %u dimensions (at most %d allowed)", o->via.array.size,
                         RA_MAX_DIMS);
        p->ndim = (int)o->via.array.size;
        for (int i = 0; i < p->ndim; i++) {
            if (get_int(&o->via.array.ptr[i], &p->shape[i]))
                return rfail(r, err, EX_DATAERR, "'shape' element %d is not an integer", i);
            if (p->shape[i] < 0)
                return rfail(r, err, EX_DATAERR, "'shape' element %d is negative (%lld)", i, (long long)p->shape[i]);
        }
        return 0;
    case K_PART:
    case K_PARTS:
        if (get_int(o, &v)) return rfail(r, err, EX_DATAERR, "'%s' must be an integer", key_str(bit));
        if (bit == K_PART) p->part = v;
        else p->parts = v;
        return 0;
    case K_END:
        if (!is_str(o, "ra")) return rfail(r, err, EX_DATAERR, "'end' must be the string \"ra\"");
        p->end_ok = 1;
        return 0;
    case K_RECORDS:
        if (get_int(o, &v) || v < 0) return rfail(r, err, EX_DATAERR, "'records' must be a non-negative integer");
        p->records = (uint64_t)v;
        return 0;
    case K_DIGEST:
        if (o->type != MSGPACK_OBJECT_STR || o->via.str.size != RA_CONTENT_ID_LEN)
            return rfail(r, err, EX_DATAERR, "'digest' must be a string of %d lowercase hex characters",
                         RA_CONTENT_ID_LEN);
        for (uint32_t i = 0; i < o->via.str.size; i++) {
            char c = sptr(o)[i];
            if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
                return rfail(r, err, EX_DATAERR, "'digest' must be a string of %d lowercase hex characters",
                             RA_CONTENT_ID_LEN);
        }
        memcpy(p->digest, sptr(o), RA_CONTENT_ID_LEN);
        p->digest[RA_CONTENT_ID_LEN] = 0;
        p->digest_ok = 1;
        return 0;
    }
    return rfail(r, err, EX_SOFTWARE, "internal: unhandled key");
}

/* Parse the next top-level map after the header: a record (up to the start
 * of its data, whose length lands in p->data_len) or the trailer.  Returns
 * CTX_RECORD, CTX_TRAILER, or -1 on error. */
static int read_object(ra_reader *r, parsed *p, XXH128_hash_t *digest_before, ra_error *err) {
    memset(p, 0, sizeof *p);
    r->ctx = CTX_RECORD;
    r->ctx_record = r->records;
    r->ctx_name = NULL;
    *digest_before = XXH3_128bits_digest(r->hash);
    if (fill(r, 1) == 1 && r->end == r->start) {
        rfail(r, err, EX_DATAERR, "truncated: the stream ends without a trailer");
        return -1;
    }
    uint32_t n;
    if (read_map_head(r, &n, "a record", err)) return -1;
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    int rc = -1;
    for (uint32_t i = 0; i < n; i++) {
        if (read_value(r, FIELD_VALUE_MAX, &u, "a key", err)) goto out;
        const msgpack_object *k = &u.data;
        if (k->type != MSGPACK_OBJECT_STR) {
            rfail(r, err, EX_DATAERR, "key %u is not a string", i);
            goto out;
        }
        int bit = key_bit(sptr(k), k->via.str.size);
        char pk[80];
        if (!bit || (bit & HEADER_KEYS)) {
            rfail(r, err, EX_DATAERR, "unknown key '%s'", printable(pk, sizeof pk, sptr(k), k->via.str.size));
            goto out;
        }
        if (p->seen & bit) {
            rfail(r, err, EX_DATAERR, "duplicate key '%s'", key_str(bit));
            goto out;
        }
        if (((bit & RECORD_KEYS) && (p->seen & TRAILER_KEYS)) || ((bit & TRAILER_KEYS) && (p->seen & RECORD_KEYS))) {
            rfail(r, err, EX_DATAERR, "key '%s' mixes tensor record and trailer keys", key_str(bit));
            goto out;
        }
        if (bit & TRAILER_KEYS) r->ctx = CTX_TRAILER;
        p->seen |= bit;
        if (bit == K_DATA) {
            if (i != n - 1) {
                rfail(r, err, EX_DATAERR, "'data' must be the last key of a tensor record");
                goto out;
            }
            if (read_bin_head(r, &p->data_len, err)) goto out;
            rc = CTX_RECORD;
            goto out;
        }
        char what[40];
        snprintf(what, sizeof what, "the value of '%s'", key_str(bit));
        if (read_value(r, FIELD_VALUE_MAX, &u, what, err)) goto out;
        if (record_field(r, p, bit, &u.data, err)) goto out;
    }
    if (p->seen & RECORD_KEYS || n == 0) {
        rfail(r, err, EX_DATAERR, "tensor record has no 'data'");
        goto out;
    }
    rc = CTX_TRAILER;
out:
    msgpack_unpacked_destroy(&u);
    if (rc == CTX_RECORD) {
        r->records++;
        static const int need[] = {K_NAME, K_DTYPE, K_SHAPE};
        for (int i = 0; i < 3; i++)
            if (!(p->seen & need[i])) {
                rfail(r, err, EX_DATAERR, "tensor record has no '%s'", key_str(need[i]));
                return -1;
            }
        if (!(p->seen & K_PART) != !(p->seen & K_PARTS)) {
            rfail(r, err, EX_DATAERR, "'part' and 'parts' must appear together");
            return -1;
        }
        if (!(p->seen & K_PARTS)) p->part = 0, p->parts = 1;
        if (p->parts < 1 || p->part < 0 || p->part >= p->parts) {
            rfail(r, err, EX_DATAERR, "part %lld of %lld is out of range", (long long)p->part, (long long)p->parts);
            return -1;
        }
        char why[400];
        if (check_tensor_desc(p->name, p->name_len, p->dtype, p->ndim, p->shape, &p->nbytes, why, sizeof why)) {
            rfail(r, err, EX_DATAERR, "%s", why);
            return -1;
        }
    }
    return rc;
}

/* Check a part record's data length against what remains of the tensor. */
static int check_part_len(ra_reader *r, const parsed *p, uint64_t remaining, ra_error *err) {
    char s[256];
    if (p->parts == 1) {
        if (p->data_len != p->nbytes) {
            shape_str(s, sizeof s, p->ndim, p->shape);
            return rfail(r, err, EX_DATAERR, "shape %s x %s needs %llu bytes but data has %llu bytes", s,
                         ra_dtype_name(p->dtype), (unsigned long long)p->nbytes, (unsigned long long)p->data_len);
        }
        return 0;
    }
    int last = p->part == p->parts - 1;
    size_t es = ra_dtype_size(p->dtype);
    if (p->data_len == 0 || p->data_len % es || p->data_len > remaining || (last && p->data_len != remaining) ||
        (!last && p->data_len == remaining))
        return rfail(r, err, EX_DATAERR,
                     "part %lld of %lld has %llu data bytes, inconsistent with the %llu bytes remaining "
                     "of the tensor (parts must be non-empty whole elements adding up to the shape)",
                     (long long)p->part, (long long)p->parts, (unsigned long long)p->data_len,
                     (unsigned long long)remaining);
    return 0;
}

static int read_header(ra_reader *r, ra_error *err) {
    r->ctx = CTX_HEADER;
    if (fill(r, 1) == 1 && r->end == r->start) return rfail(r, err, EX_DATAERR, "truncated: the file is empty");
    if (fill_or_fail(r, 1, "the header", err)) return r->error.code;
    unsigned b = r->buf[r->start];
    if (!((b >= 0x80 && b <= 0x8f) || b == 0xde || b == 0xdf))
        return rfail(r, err, EX_DATAERR, "not a ra stream (it does not start with a msgpack map)");
    uint32_t n;
    if (read_map_head(r, &n, "the header", err)) return r->error.code;
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    int seen = 0, rc = 0;
    char unknown[128] = "", pk[80];
    int64_t version = -1;
    int format_ok = 0, version_type_ok = 0;
    for (uint32_t i = 0; i < n && !rc; i++) {
        if ((rc = read_value(r, FIELD_VALUE_MAX, &u, "a header key", err))) break;
        if (u.data.type != MSGPACK_OBJECT_STR) {
            rc = rfail(r, err, EX_DATAERR, "not a ra stream (header key %u is not a string)", i);
            break;
        }
        int bit = key_bit(sptr(&u.data), u.data.via.str.size);
        if (!(bit & HEADER_KEYS) || (seen & bit)) {
            /* reported after format/version, which say whether this is a ra stream at all */
            if (!unknown[0])
                snprintf(unknown, sizeof unknown, "%s key '%s'", (seen & bit) ? "duplicate" : "unknown",
                         printable(pk, sizeof pk, sptr(&u.data), u.data.via.str.size));
            bit = 0;
        }
        seen |= bit;
        char what[40];
        snprintf(what, sizeof what, "the value of '%s'", bit ? key_str(bit) : "an unknown key");
        if ((rc = read_value(r, bit & (K_META | K_PROV) ? HEADER_VALUE_MAX : FIELD_VALUE_MAX, &u, what, err)))
            break;
        const msgpack_object *o = &u.data;
        ra_error je = {0};
        switch (bit) {
        case K_FORMAT: format_ok = is_str(o, "ra"); break;
        case K_VERSION: version_type_ok = get_int(o, &version) == 0; break;
        case K_KIND:
            if (o->type == MSGPACK_OBJECT_STR && o->via.str.size < 64 && !memchr(sptr(o), 0, o->via.str.size)) {
                r->kind = xmalloc(o->via.str.size + 1);
                memcpy(r->kind, sptr(o), o->via.str.size);
                r->kind[o->via.str.size] = 0;
            } else {
                rc = rfail(r, err, EX_DATAERR, "'kind' must be a short string");
            }
            break;
        case K_META:
        case K_PROV:
            if (o->type != MSGPACK_OBJECT_MAP) {
                rc = rfail(r, err, EX_DATAERR, "'%s' must be a map", key_str(bit));
                break;
            }
            json_t *j = ra_msgpack_to_json(o, key_str(bit), &je);
            if (!j) rc = rfail(r, err, EX_DATAERR, "%s", je.msg);
            else if (bit == K_META) r->meta = j;
            else r->prov = j;
            break;
        }
    }
    msgpack_unpacked_destroy(&u);
    if (rc) return rc;
    if (!(seen & K_FORMAT) || !format_ok)
        return rfail(r, err, EX_DATAERR, "not a ra stream ('format' is not \"ra\")");
    if (!(seen & K_VERSION) || !version_type_ok)
        return rfail(r, err, EX_DATAERR, "'version' must be an integer");
    if (version != RA_STREAM_VERSION)
        return rfail(r, err, EX_DATAERR, "unsupported version %lld (this reader knows version %d)",
                     (long long)version, RA_STREAM_VERSION);
    if (unknown[0]) return rfail(r, err, EX_DATAERR, "%s", unknown);
    for (int bit = K_KIND; bit <= K_PROV; bit <<= 1)
        if (!(seen & bit)) return rfail(r, err, EX_DATAERR, "missing '%s'", key_str(bit));
    if (!ra_kind_is_known(r->kind))
        return rfail(r, err, EX_DATAERR,
                     "unknown kind '%s' (expected model, scores, plan, tokens, results, activations or checkpoint)",
                     printable(pk, sizeof pk, r->kind, strlen(r->kind)));
    r->version = (int)version;
    return 0;
}

static ra_reader *reader_new(FILE *f, int own_f, const char *name) {
    ra_reader *r = xcalloc(1, sizeof *r);
    r->f = f;
    r->own_f = own_f;
    r->name = xstrdup(name);
    r->hash = XXH3_createState();
    RA_CHECK(r->hash != NULL);
    XXH3_128bits_reset(r->hash);
    r->names = json_object();
    return r;
}

ra_reader *ra_reader_open_file(FILE *f, const char *name, ra_error *err) {
    ra_reader *r = reader_new(f, 0, name);
    if (read_header(r, err)) {
        ra_reader_close(r);
        return NULL;
    }
    return r;
}

ra_reader *ra_reader_open(const char *path, ra_error *err) {
    if (strcmp(path, "-") == 0) return ra_reader_open_file(stdin, "<stdin>", err);
    FILE *f = fopen(path, "rb");
    if (!f) {
        ra_fail(err, errno == ENOENT || errno == EACCES || errno == ENOTDIR ? EX_NOINPUT : EX_IOERR,
                "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(f);
        ra_fail(err, EX_NOINPUT, "%s: is a directory, not a ra stream", path);
        return NULL;
    }
    ra_reader *r = reader_new(f, 1, path);
    if (read_header(r, err)) {
        ra_reader_close(r);
        return NULL;
    }
    return r;
}

void ra_reader_close(ra_reader *r) {
    if (!r) return;
    if (r->own_f) fclose(r->f);
    XXH3_freeState(r->hash);
    free(r->buf);
    free(r->name);
    free(r->kind);
    json_decref(r->meta);
    json_decref(r->prov);
    json_decref(r->names);
    free(r);
}

const char *ra_reader_kind(const ra_reader *r) { return r->kind; }
int ra_reader_version(const ra_reader *r) { return r->version; }
const json_t *ra_reader_meta(const ra_reader *r) { return r->meta; }
const json_t *ra_reader_provenance(const ra_reader *r) { return r->prov; }
const char *ra_reader_name(const ra_reader *r) { return r->name; }
const char *ra_reader_content_id(const ra_reader *r) { return r->done ? r->content_id : NULL; }
uint64_t ra_reader_record_count(const ra_reader *r) { return r->records; }

static int read_trailer_end(ra_reader *r, const parsed *p, XXH128_hash_t before, ra_error *err) {
    static const int need[] = {K_END, K_RECORDS, K_DIGEST};
    for (int i = 0; i < 3; i++)
        if (!(p->seen & need[i])) return rfail(r, err, EX_DATAERR, "missing '%s'", key_str(need[i]));
    char got[RA_CONTENT_ID_LEN + 1];
    digest_hex(before, got);
    if (strcmp(got, p->digest) != 0)
        return rfail(r, err, EX_DATAERR, "bad digest: the trailer says %s but the content hashes to %s "
                     "(corrupt or modified)", p->digest, got);
    if (p->records != r->records)
        return rfail(r, err, EX_DATAERR, "record count mismatch: the trailer says %llu records, the stream has %llu",
                     (unsigned long long)p->records, (unsigned long long)r->records);
    int f = fill(r, 1);
    if (f < 0) return rfail(r, err, EX_IOERR, "read error: %s", strerror(errno));
    if (f == 0) return rfail(r, err, EX_DATAERR, "trailing bytes after the trailer (offset %llu)",
                             (unsigned long long)r->pos);
    memcpy(r->content_id, got, sizeof got);
    r->done = 1;
    return 0;
}

int64_t ra_reader_read_chunk(ra_reader *r, void *dst, uint64_t cap, ra_error *err) {
    if (r->failed) return rsticky(r, err), -1;
    if (!r->have_tensor) {
        ra_fail(err, EX_SOFTWARE, "%s: no current tensor to read", r->name);
        return -1;
    }
    unsigned char *out = dst;
    uint64_t total = 0;
    if (cap) r->touched = 1;
    r->ctx = CTX_RECORD;
    r->ctx_name = r->cur.name;
    while (total < cap) {
        if (r->part_left == 0) {
            if (r->part + 1 >= r->parts) break;
            parsed p;
            XXH128_hash_t before;
            int t = read_object(r, &p, &before, err);
            if (t < 0) return -1;
            char pn[200];
            if (t == CTX_TRAILER) {
                r->ctx = CTX_RECORD;
                r->ctx_name = r->cur.name;
                rfail(r, err, EX_DATAERR, "part %lld of %lld is missing (the trailer follows)",
                      (long long)(r->part + 1), (long long)r->parts);
                return -1;
            }
            int same_shape = p.ndim == r->cur.ndim;
            for (int i = 0; same_shape && i < p.ndim; i++) same_shape = p.shape[i] == r->cur.shape[i];
            if (strcmp(p.name, r->cur.name) != 0 || p.part != r->part + 1 || p.parts != r->parts) {
                rfail(r, err, EX_DATAERR, "expected part %lld of %lld of tensor '%s', found part %lld of %lld",
                      (long long)(r->part + 1), (long long)r->parts,
                      printable(pn, sizeof pn, r->cur.name, strlen(r->cur.name)), (long long)p.part,
                      (long long)p.parts);
                return -1;
            }
            if (p.dtype != r->cur.dtype || !same_shape) {
                rfail(r, err, EX_DATAERR, "part %lld has a different dtype or shape than part 0", (long long)p.part);
                return -1;
            }
            if (check_part_len(r, &p, r->tensor_left, err)) return -1;
            r->part = p.part;
            r->part_left = p.data_len;
            r->ctx_name = r->cur.name; /* p dies here */
        }
        uint64_t m = cap - total < r->part_left ? cap - total : r->part_left;
        if (read_body(r, out ? out + total : NULL, m, err)) return -1;
        r->part_left -= m;
        r->tensor_left -= m;
        total += m;
    }
    return (int64_t)total;
}

int ra_reader_next(ra_reader *r, ra_tensor_info *info, ra_error *err) {
    if (r->failed) return rsticky(r, err), -1;
    if (r->done) return 0;
    if (r->have_tensor) { /* skip what the caller did not read */
        if (ra_reader_read_chunk(r, NULL, UINT64_MAX, err) < 0) return -1;
        r->have_tensor = 0;
    }
    parsed p;
    XXH128_hash_t before;
    int t = read_object(r, &p, &before, err);
    if (t < 0) return -1;
    if (t == CTX_TRAILER) return read_trailer_end(r, &p, before, err) ? -1 : 0;
    if (p.part != 0) {
        rfail(r, err, EX_DATAERR, "part %lld of %lld without the parts before it", (long long)p.part,
              (long long)p.parts);
        return -1;
    }
    if (json_object_getn(r->names, p.name, p.name_len)) {
        rfail(r, err, EX_DATAERR, "duplicate tensor name");
        return -1;
    }
    if (check_part_len(r, &p, p.nbytes, err)) return -1;
    json_object_setn_new_nocheck(r->names, p.name, p.name_len, json_true());
    memset(&r->cur, 0, sizeof r->cur);
    memcpy(r->cur.name, p.name, p.name_len + 1);
    r->cur.dtype = p.dtype;
    r->cur.ndim = p.ndim;
    for (int i = 0; i < p.ndim; i++) r->cur.shape[i] = p.shape[i];
    r->cur.numel = ra_shape_numel(p.ndim, p.shape);
    r->cur.nbytes = p.nbytes;
    r->part = 0;
    r->parts = p.parts;
    r->part_left = p.data_len;
    r->tensor_left = p.nbytes;
    r->have_tensor = 1;
    r->touched = 0;
    r->ctx_name = r->cur.name; /* p dies here */
    if (info) *info = r->cur;
    return 1;
}

int ra_reader_read(ra_reader *r, void *dst, uint64_t dst_bytes, ra_error *err) {
    if (r->failed) return rsticky(r, err);
    if (!r->have_tensor || r->touched)
        return ra_fail(err, EX_SOFTWARE, "%s: no unread current tensor to read", r->name);
    if (dst_bytes < r->cur.nbytes)
        return ra_fail(err, EX_SOFTWARE, "%s: tensor '%s' has %llu bytes, buffer only %llu", r->name, r->cur.name,
                       (unsigned long long)r->cur.nbytes, (unsigned long long)dst_bytes);
    int64_t got = ra_reader_read_chunk(r, dst, r->cur.nbytes, err);
    if (got < 0) return r->error.code;
    RA_CHECK((uint64_t)got == r->cur.nbytes);
    return 0;
}

int ra_reader_read_f32(ra_reader *r, float *dst, int64_t dst_numel, ra_error *err) {
    if (r->failed) return rsticky(r, err);
    if (!r->have_tensor || r->touched)
        return ra_fail(err, EX_SOFTWARE, "%s: no unread current tensor to read", r->name);
    if (dst_numel < r->cur.numel)
        return ra_fail(err, EX_SOFTWARE, "%s: tensor '%s' has %lld elements, buffer only %lld", r->name,
                       r->cur.name, (long long)r->cur.numel, (long long)dst_numel);
    if (r->cur.dtype == RA_F32) return ra_reader_read(r, dst, (uint64_t)dst_numel * 4, err);
    size_t es = ra_dtype_size(r->cur.dtype);
    size_t chunk = READ_CHUNK / es;
    unsigned char *tmp = xmalloc(chunk * es);
    int64_t done = 0;
    int rc = 0;
    while (done < r->cur.numel) {
        int64_t got = ra_reader_read_chunk(r, tmp, chunk * es, err);
        if (got < 0) {
            rc = r->error.code;
            break;
        }
        RA_CHECK(got > 0 && got % (int64_t)es == 0);
        ra_convert_to_f32(dst + done, tmp, r->cur.dtype, (size_t)got / es);
        done += got / (int64_t)es;
    }
    free(tmp);
    return rc;
}

/* ================================================================ conveniences */

int ra_read_all(const char *path, ra_reader **header_out, ra_tensor **out, int *n, ra_error *err) {
    *out = NULL;
    *n = 0;
    if (header_out) *header_out = NULL;
    ra_reader *r = ra_reader_open(path, err);
    if (!r) return err ? err->code : EX_DATAERR;
    ra_tensor *t = NULL;
    int count = 0, cap = 0, rc = 0;
    ra_tensor_info info;
    int st;
    while ((st = ra_reader_next(r, &info, err)) == 1) {
        if (count == cap) {
            cap = cap ? 2 * cap : 16;
            t = xrealloc(t, (size_t)cap * sizeof *t);
        }
        t[count].info = info;
        t[count].data = xmalloc(info.nbytes);
        count++;
        if ((rc = ra_reader_read(r, t[count - 1].data, info.nbytes, err))) break;
    }
    if (st < 0 && !rc) rc = r->error.code;
    if (rc) {
        ra_tensors_free(t, count);
        ra_reader_close(r);
        return rc;
    }
    *out = t;
    *n = count;
    if (header_out) *header_out = r;
    else ra_reader_close(r);
    return 0;
}

void ra_tensors_free(ra_tensor *t, int n) {
    for (int i = 0; i < n; i++) free(t[i].data);
    free(t);
}

const ra_tensor *ra_tensors_find(const ra_tensor *t, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (strcmp(t[i].info.name, name) == 0) return &t[i];
    return NULL;
}

int ra_verify(const char *path, char *content_id, ra_error *err) {
    ra_reader *r = ra_reader_open(path, err);
    if (!r) return err ? err->code : EX_DATAERR;
    int st;
    while ((st = ra_reader_next(r, NULL, err)) == 1) {
    }
    int rc = st < 0 ? r->error.code : 0;
    if (!rc && content_id) memcpy(content_id, r->content_id, RA_CONTENT_ID_LEN + 1);
    ra_reader_close(r);
    return rc;
}
