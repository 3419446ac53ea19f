/* safetensors reading (validated, memory-mapped) and writing.
 *
 * File layout: u64 little-endian N, N bytes of JSON header, data buffer.  The
 * header maps tensor names to {dtype, shape, data_offsets: [begin, end]} with
 * offsets relative to the data buffer, plus an optional "__metadata__" object
 * of strings.  Nothing in a header is trusted: every number is range-checked
 * before it is used to form a pointer. */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "atomic_file.h"

/* ------------------------------------------------------------------ dtypes */

static const char *const st_names[RA_DTYPE_COUNT] = {
    [RA_BF16] = "BF16", [RA_F16] = "F16", [RA_F32] = "F32", [RA_F64] = "F64",
    [RA_I32] = "I32",   [RA_I64] = "I64", [RA_U8] = "U8",
};

const char *st_dtype_name(ra_dtype t) { return (unsigned)t < RA_DTYPE_COUNT ? st_names[t] : "?"; }

int st_dtype_parse(const char *s, ra_dtype *out) {
    for (int i = 0; i < RA_DTYPE_COUNT; i++)
        if (strcmp(s, st_names[i]) == 0) {
            *out = (ra_dtype)i;
            return 0;
        }
    return -1;
}

/* --------------------------------------------------------------- parsing */

static uint64_t load_le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

void st_tensors_free(st_tensor *t, int n) {
    if (!t) return;
    for (int i = 0; i < n; i++) free(t[i].name);
    free(t);
}

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

/* Byte range of one tensor inside the data buffer, for the overlap check. */
typedef struct st_range {
    uint64_t begin, end;
    int index;
} st_range;

static int cmp_range(const void *a, const void *b) {
    const st_range *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* A JSON integer that is >= 0 (floats, bools and negatives are refused). */
static int json_nonneg_int(const json_t *v, uint64_t *out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0) return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

/* Validate one header entry and fill t (except name/data/file). */
static int parse_entry(const char *file, const char *tname, const json_t *e, uint64_t data_size,
                       st_tensor *t, uint64_t *begin, uint64_t *end, ra_error *err) {
    if (!json_is_object(e))
        return ra_fail(err, EX_DATAERR, "%s: tensor '%s': expected an object with dtype, shape, data_offsets",
                       file, tname);
    const json_t *jd = json_object_get(e, "dtype");
    const json_t *js = json_object_get(e, "shape");
    const json_t *jo = json_object_get(e, "data_offsets");
    if (!json_is_string(jd)) return ra_fail(err, EX_DATAERR, "%s: tensor '%s': missing or non-string dtype", file, tname);
    if (!json_is_array(js)) return ra_fail(err, EX_DATAERR, "%s: tensor '%s': missing or non-array shape", file, tname);
    if (!json_is_array(jo))
        return ra_fail(err, EX_DATAERR, "%s: tensor '%s': missing or non-array data_offsets", file, tname);

    if (st_dtype_parse(json_string_value(jd), &t->dtype) != 0)
        return ra_fail(err, EX_DATAERR,
                       "%s: tensor '%s': dtype '%s' is not supported (expected BF16, F16, F32, F64, I32, I64 or U8)",
                       file, tname, json_string_value(jd));

    size_t nd = json_array_size(js);
    if (nd > RA_MAX_DIMS)
        return ra_fail(err, EX_DATAERR, "%s: tensor '%s': %zu dimensions, at most %d supported", file, tname, nd,
                       RA_MAX_DIMS);
    t->ndim = (int)nd;
    for (size_t i = 0; i < nd; i++) {
        uint64_t d;
        if (json_nonneg_int(json_array_get(js, i), &d) != 0)
            return ra_fail(err, EX_DATAERR, "%s: tensor '%s': shape[%zu] is not a non-negative integer", file,
                           tname, i);
        t->shape[i] = (int64_t)d;
    }
    int64_t numel = ra_shape_numel(t->ndim, t->shape);
    size_t esize = ra_dtype_size(t->dtype);
    if (numel < 0 || (uint64_t)numel > UINT64_MAX / esize)
        return ra_fail(err, EX_DATAERR, "%s: tensor '%s': shape overflows the addressable size", file, tname);
    t->nbytes = (uint64_t)numel * esize;

    if (json_array_size(jo) != 2 || json_nonneg_int(json_array_get(jo, 0), begin) != 0 ||
        json_nonneg_int(json_array_get(jo, 1), end) != 0)
        return ra_fail(err, EX_DATAERR, "%s: tensor '%s': data_offsets must be [begin, end], non-negative integers",
                       file, tname);
    if (*begin > *end)
        return ra_fail(err, EX_DATAERR, "%s: tensor '%s': data_offsets begin %llu > end %llu", file, tname,
                       (unsigned long long)*begin, (unsigned long long)*end);
    if (*end > data_size)
        return ra_fail(err, EX_DATAERR, "%s: tensor '%s': data_offsets end %llu is past the data buffer (%llu bytes)",
                       file, tname, (unsigned long long)*end, (unsigned long long)data_size);
    if (*end - *begin != t->nbytes)
        return ra_fail(err, EX_DATAERR,
                       "%s: tensor '%s': data_offsets span %llu bytes, but shape and dtype %s need %llu", file,
                       tname, (unsigned long long)(*end - *begin), st_dtype_name(t->dtype),
                       (unsigned long long)t->nbytes);
    return 0;
}

static int parse_metadata(const char *file, const json_t *m, json_t **metadata, ra_error *err) {
    if (json_is_null(m)) return 0;
    if (!json_is_object(m)) return ra_fail(err, EX_DATAERR, "%s: __metadata__ is not an object", file);
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)m, k, v) {
        if (!json_is_string(v))
            return ra_fail(err, EX_DATAERR, "%s: __metadata__ '%s': value is not a string", file, k);
    }
    if (metadata) *metadata = json_deep_copy(m);
    return 0;
}

/* Reject overlapping byte ranges: sorted by begin, each non-empty range must
 * start at or after the furthest end seen so far.  Empty tensors occupy no
 * bytes and cannot overlap anything. */
static int check_overlaps(const char *file, const st_tensor *t, st_range *r, int n, ra_error *err) {
    qsort(r, (size_t)n, sizeof *r, cmp_range);
    uint64_t max_end = 0;
    int max_index = -1;
    for (int i = 0; i < n; i++) {
        if (r[i].begin == r[i].end) continue;
        if (max_index >= 0 && r[i].begin < max_end)
            return ra_fail(err, EX_DATAERR, "%s: tensor '%s': bytes [%llu, %llu) overlap tensor '%s' (ends at %llu)",
                           file, t[r[i].index].name, (unsigned long long)r[i].begin, (unsigned long long)r[i].end,
                           t[max_index].name, (unsigned long long)max_end);
        if (r[i].end > max_end) {
            max_end = r[i].end;
            max_index = r[i].index;
        }
    }
    return 0;
}

int st_parse(const void *buf, uint64_t size, const char *name, int file_index, st_tensor **tensors,
             int *n_tensors, json_t **metadata, ra_error *err) {
    const unsigned char *p = buf;
    *tensors = NULL;
    *n_tensors = 0;
    if (metadata) *metadata = NULL;
    if (size < 8)
        return ra_fail(err, EX_DATAERR, "%s: %llu bytes, too short for a safetensors header length", name,
                       (unsigned long long)size);
    uint64_t hlen = load_le64(p);
    if (hlen > ST_MAX_HEADER_BYTES)
        return ra_fail(err, EX_DATAERR, "%s: header length %llu exceeds the %u-byte limit", name,
                       (unsigned long long)hlen, ST_MAX_HEADER_BYTES);
    if (hlen < 2) return ra_fail(err, EX_DATAERR, "%s: header length %llu is too small for a JSON object", name,
                                 (unsigned long long)hlen);
    if (hlen > size - 8)
        return ra_fail(err, EX_DATAERR, "%s: header length %llu runs past the end of the file (%llu bytes)", name,
                       (unsigned long long)hlen, (unsigned long long)size);

    json_error_t jerr;
    json_t *root = json_loadb((const char *)p + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) return ra_fail(err, EX_DATAERR, "%s: header is not valid JSON: %s (at byte %d)", name, jerr.text,
                              jerr.position);
    if (!json_is_object(root)) {
        json_decref(root);
        return ra_fail(err, EX_DATAERR, "%s: header is not a JSON object", name);
    }

    const unsigned char *data = p + 8 + hlen;
    uint64_t data_size = size - 8 - hlen;
    size_t cap = json_object_size(root);
    st_tensor *t = xcalloc(cap ? cap : 1, sizeof *t);
    st_range *ranges = xcalloc(cap ? cap : 1, sizeof *ranges);
    json_t *meta = NULL;
    int n = 0, rc = 0;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            rc = parse_metadata(name, val, metadata ? &meta : NULL, err);
            if (rc) break;
            continue;
        }
        uint64_t b = 0, e = 0;
        rc = parse_entry(name, key, val, data_size, &t[n], &b, &e, err);
        if (rc) break;
        t[n].name = xstrdup(key);
        t[n].data = data + b;
        t[n].file = file_index;
        ranges[n] = (st_range){b, e, n};
        n++;
    }
    if (!rc) rc = check_overlaps(name, t, ranges, n, err);
    free(ranges);
    json_decref(root);
    if (rc) {
        st_tensors_free(t, n);
        json_decref(meta);
        return rc;
    }
    qsort(t, (size_t)n, sizeof *t, cmp_tensor_name);
    *tensors = t;
    *n_tensors = n;
    if (metadata) *metadata = meta;
    return 0;
}

/* ----------------------------------------------------------- opening files */

static char *path_join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = xmalloc(n);
    snprintf(p, n, "%s%s%s", dir, (*dir && dir[strlen(dir) - 1] == '/') ? "" : "/", name);
    return p;
}

static int file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* Map a whole file read-only.  A zero-length file gets no mapping. */
static int map_file(const char *path, void **base, uint64_t *size, ra_error *err) {
    *base = NULL;
    *size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return ra_fail(err, e == ENOENT ? EX_NOINPUT : EX_IOERR, "%s: %s", path, strerror(e));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return ra_fail(err, EX_IOERR, "%s: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return ra_fail(err, EX_DATAERR, "%s: not a regular file", path);
    }
    if (sb.st_size > 0) {
        void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            int e = errno;
            close(fd);
            return ra_fail(err, EX_IOERR, "%s: mmap failed: %s", path, strerror(e));
        }
        *base = m;
        *size = (uint64_t)sb.st_size;
    }
    close(fd);
    return 0;
}

static int add_file(st_set *s, const char *path, ra_error *err) {
    s->files = xrealloc(s->files, (size_t)(s->n_files + 1) * sizeof *s->files);
    s->maps = xrealloc(s->maps, (size_t)(s->n_files + 1) * sizeof *s->maps);
    s->map_sizes = xrealloc(s->map_sizes, (size_t)(s->n_files + 1) * sizeof *s->map_sizes);
    int i = s->n_files;
    int rc = map_file(path, &s->maps[i], &s->map_sizes[i], err);
    if (rc) return rc;
    s->files[i] = xstrdup(path);
    s->n_files++;

    st_tensor *t;
    int n;
    json_t *meta = NULL;
    rc = st_parse(s->maps[i], s->map_sizes[i], path, i, &t, &n, i == 0 ? &meta : NULL, err);
    if (rc) return rc;
    if (i == 0) s->metadata = meta;
    s->tensors = xrealloc(s->tensors, (size_t)(s->n_tensors + n + 1) * sizeof *s->tensors);
    memcpy(s->tensors + s->n_tensors, t, (size_t)n * sizeof *t);
    s->n_tensors += n;
    free(t); /* names now owned by s->tensors */
    return 0;
}

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A shard file name from an index must stay inside the checkpoint directory. */
static int shard_name_ok(const char *s) {
    if (!*s || s[0] == '/') return 0;
    for (const char *p = s; *p;) {
        const char *q = strchr(p, '/');
        size_t len = q ? (size_t)(q - p) : strlen(p);
        if (len == 2 && p[0] == '.' && p[1] == '.') return 0;
        if (!q) break;
        p = q + 1;
    }
    return 1;
}

/* Read an index file (whole, with a size limit) and return its weight_map. */
static int load_index(const char *index_path, json_t **root_out, ra_error *err) {
    void *m;
    uint64_t size;
    int rc = map_file(index_path, &m, &size, err);
    if (rc) return rc;
    if (size > ST_MAX_HEADER_BYTES) {
        munmap(m, (size_t)size);
        return ra_fail(err, EX_DATAERR, "%s: index is %llu bytes, over the %u-byte limit", index_path,
                       (unsigned long long)size, ST_MAX_HEADER_BYTES);
    }
    json_error_t jerr;
    json_t *root = json_loadb(m ? m : "", (size_t)size, JSON_REJECT_DUPLICATES, &jerr);
    if (m) munmap(m, (size_t)size);
    if (!root) return ra_fail(err, EX_DATAERR, "%s: not valid JSON: %s (line %d)", index_path, jerr.text, jerr.line);
    json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(root) || !json_is_object(wm)) {
        json_decref(root);
        return ra_fail(err, EX_DATAERR, "%s: expected an object with a \"weight_map\" object", index_path);
    }
    const char *k;
    json_t *v;
    json_object_foreach(wm, k, v) {
        if (!json_is_string(v) || !shard_name_ok(json_string_value(v))) {
            ra_fail(err, EX_DATAERR, "%s: weight_map '%s': expected a shard file name in this directory", index_path, k);
            json_decref(root);
            return EX_DATAERR;
        }
    }
    *root_out = root;
    return 0;
}

static int open_sharded(st_set *s, const char *dir, const char *index_path, ra_error *err) {
    json_t *root;
    int rc = load_index(index_path, &root, err);
    if (rc) return rc;
    json_t *wm = json_object_get(root, "weight_map");

    /* Distinct shard names, sorted, so each shard is opened once in a fixed order. */
    size_t nw = json_object_size(wm), ns = 0;
    const char **shards = xcalloc(nw ? nw : 1, sizeof *shards);
    const char *k;
    json_t *v;
    json_object_foreach(wm, k, v) shards[ns++] = json_string_value(v);
    qsort(shards, ns, sizeof *shards, cmp_str_ptr);
    size_t u = 0;
    for (size_t i = 0; i < ns; i++)
        if (u == 0 || strcmp(shards[i], shards[u - 1]) != 0) shards[u++] = shards[i];
    for (size_t i = 0; i < u && !rc; i++) {
        char *p = path_join(dir, shards[i]);
        rc = add_file(s, p, err); /* file index i holds shards[i] */
        if (rc == EX_NOINPUT) ra_error_prefix(err, "%s: shard named by the index", index_path);
        free(p);
    }
    if (!rc) qsort(s->tensors, (size_t)s->n_tensors, sizeof *s->tensors, cmp_tensor_name);
    for (int i = 1; i < s->n_tensors && !rc; i++)
        if (strcmp(s->tensors[i].name, s->tensors[i - 1].name) == 0)
            rc = ra_fail(err, EX_DATAERR, "%s: tensor '%s' appears in two shards: %s and %s", dir, s->tensors[i].name,
                         s->files[s->tensors[i - 1].file], s->files[s->tensors[i].file]);
    if (!rc) json_object_foreach(wm, k, v) {
        const st_tensor *t = st_find(s, k);
        const char *want = json_string_value(v);
        if (!t) {
            rc = ra_fail(err, EX_DATAERR, "%s: tensor '%s' is listed in the index but missing from shard %s",
                         index_path, k, want);
            break;
        }
        if (strcmp(shards[t->file], want) != 0) {
            rc = ra_fail(err, EX_DATAERR, "%s: tensor '%s' is listed in shard %s but found in %s", index_path, k,
                         want, s->files[t->file]);
            break;
        }
    }
    free(shards);
    json_decref(root);
    return rc;
}

int st_open(const char *path, st_set **out, ra_error *err) {
    *out = NULL;
    struct stat sb;
    if (stat(path, &sb) != 0) {
        int e = errno;
        return ra_fail(err, e == ENOENT ? EX_NOINPUT : EX_IOERR, "%s: %s", path, strerror(e));
    }
    st_set *s = xcalloc(1, sizeof *s);
    int rc;
    size_t plen = strlen(path);
    const char *suffix = ".safetensors.index.json";
    if (S_ISDIR(sb.st_mode)) {
        char *index = path_join(path, "model.safetensors.index.json");
        char *single = path_join(path, "model.safetensors");
        if (file_exists(index)) rc = open_sharded(s, path, index, err);
        else if (file_exists(single)) rc = add_file(s, single, err);
        else rc = ra_fail(err, EX_NOINPUT, "%s: no model.safetensors or model.safetensors.index.json in this directory",
                          path);
        free(index);
        free(single);
    } else if (plen >= strlen(suffix) && strcmp(path + plen - strlen(suffix), suffix) == 0) {
        /* An index file named directly: shards live beside it. */
        const char *slash = strrchr(path, '/');
        char *dir = slash ? strndup(path, (size_t)(slash - path)) : xstrdup(".");
        if (!dir) dir = xstrdup(".");
        if (!*dir) {
            free(dir);
            dir = xstrdup("/");
        }
        rc = open_sharded(s, dir, path, err);
        free(dir);
    } else {
        rc = add_file(s, path, err);
        if (!rc) qsort(s->tensors, (size_t)s->n_tensors, sizeof *s->tensors, cmp_tensor_name);
    }
    if (rc) {
        st_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

const st_tensor *st_find(const st_set *s, const char *name) {
    size_t lo = 0, hi = (size_t)s->n_tensors;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(name, s->tensors[mid].name);
        if (c == 0) return &s->tensors[mid];
        if (c < 0) hi = mid;
        else lo = mid + 1;
    }
    return NULL;
}

void st_close(st_set *s) {
    if (!s) return;
    for (int i = 0; i < s->n_files; i++) {
        if (s->maps[i]) munmap(s->maps[i], (size_t)s->map_sizes[i]);
        free(s->files[i]);
    }
    free(s->files);
    free(s->maps);
    free(s->map_sizes);
    st_tensors_free(s->tensors, s->n_tensors);
    json_decref(s->metadata);
    free(s);
}

/* ----------------------------------------------------------------- writing */

static json_t *write_header(const st_write_tensor *t, int n, const json_t *metadata, ra_error *err) {
    json_t *h = json_object();
    if (metadata) {
        const char *k;
        json_t *v;
        if (!json_is_object(metadata)) {
            json_decref(h);
            ra_fail(err, EX_SOFTWARE, "safetensors metadata must be an object of strings");
            return NULL;
        }
        json_object_foreach((json_t *)metadata, k, v) {
            if (!json_is_string(v)) {
                json_decref(h);
                ra_fail(err, EX_SOFTWARE, "safetensors metadata '%s': value is not a string", k);
                return NULL;
            }
        }
        json_object_set_new(h, "__metadata__", json_deep_copy(metadata));
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        const char *why = NULL;
        int64_t numel = -1;
        if (!t[i].name || !*t[i].name) why = "empty name";
        else if (strcmp(t[i].name, "__metadata__") == 0) why = "reserved name";
        else if ((unsigned)t[i].dtype >= RA_DTYPE_COUNT) why = "bad dtype";
        else if (t[i].ndim < 0 || t[i].ndim > RA_MAX_DIMS) why = "bad number of dimensions";
        else if ((numel = ra_shape_numel(t[i].ndim, t[i].shape)) < 0 ||
                 (uint64_t)numel > (uint64_t)INT64_MAX / ra_dtype_size(t[i].dtype))
            why = "bad shape";
        else if (json_object_get(h, t[i].name)) why = "duplicate name";
        if (why) {
            json_decref(h);
            ra_fail(err, EX_SOFTWARE, "safetensors writer: tensor '%s': %s", t[i].name ? t[i].name : "(null)", why);
            return NULL;
        }
        uint64_t nb = (uint64_t)numel * ra_dtype_size(t[i].dtype);
        json_t *shape = json_array();
        for (int d = 0; d < t[i].ndim; d++) json_array_append_new(shape, json_integer(t[i].shape[d]));
        json_t *e = json_object();
        json_object_set_new(e, "dtype", json_string(st_dtype_name(t[i].dtype)));
        json_object_set_new(e, "shape", shape);
        json_object_set_new(e, "data_offsets",
                            json_pack("[II]", (json_int_t)off, (json_int_t)(off + nb)));
        json_object_set_new(h, t[i].name, e);
        off += nb;
    }
    return h;
}

struct st_writer {
    ra_atomic_file af;
    uint64_t expected, written;
};

st_writer *st_writer_open(const char *path, const st_write_tensor *tensors, int n, const json_t *metadata,
                          ra_error *err) {
    json_t *h = write_header(tensors, n, metadata, err);
    if (!h) return NULL;
    char *text = json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(h);
    if (!text) {
        ra_fail(err, EX_SOFTWARE, "%s: could not encode the safetensors header", path);
        return NULL;
    }
    size_t len = strlen(text);
    size_t padded = (len + 7) / 8 * 8; /* the reference implementation pads with spaces to 8 bytes */
    if (padded > ST_MAX_HEADER_BYTES) {
        free(text);
        ra_fail(err, EX_SOFTWARE, "%s: safetensors header would be %zu bytes, over the limit", path, padded);
        return NULL;
    }
    unsigned char lenbuf[8];
    for (int i = 0; i < 8; i++) lenbuf[i] = (unsigned char)((uint64_t)padded >> (8 * i));

    st_writer *w = xcalloc(1, sizeof *w);
    for (int i = 0; i < n; i++)
        w->expected += (uint64_t)ra_shape_numel(tensors[i].ndim, tensors[i].shape) * ra_dtype_size(tensors[i].dtype);
    if (ra_atomic_open(&w->af, path, err) != 0) {
        free(text);
        free(w);
        return NULL;
    }
    int ok = fwrite(lenbuf, 1, 8, w->af.f) == 8 && fwrite(text, 1, len, w->af.f) == len;
    for (size_t i = len; ok && i < padded; i++) ok = fputc(' ', w->af.f) != EOF;
    free(text);
    if (!ok) {
        ra_fail(err, EX_IOERR, "%s: write failed: %s", path, strerror(errno));
        st_writer_abort(w);
        return NULL;
    }
    return w;
}

int st_writer_data(st_writer *w, const void *data, uint64_t nbytes, ra_error *err) {
    if (nbytes > w->expected - w->written) {
        int rc = ra_fail(err, EX_SOFTWARE, "%s: more tensor data than the header declares", w->af.path);
        st_writer_abort(w);
        return rc;
    }
    if (nbytes && fwrite(data, 1, (size_t)nbytes, w->af.f) != nbytes) {
        int rc = ra_fail(err, EX_IOERR, "%s: write failed: %s", w->af.path, strerror(errno));
        st_writer_abort(w);
        return rc;
    }
    w->written += nbytes;
    return 0;
}

int st_writer_close(st_writer *w, ra_error *err) {
    int rc;
    if (w->written != w->expected) {
        rc = ra_fail(err, EX_SOFTWARE, "%s: %llu bytes of tensor data written, the header declares %llu", w->af.path,
                     (unsigned long long)w->written, (unsigned long long)w->expected);
        ra_atomic_abort(&w->af);
    } else {
        rc = ra_atomic_commit(&w->af, err);
    }
    free(w);
    return rc;
}

void st_writer_abort(st_writer *w) {
    if (!w) return;
    ra_atomic_abort(&w->af);
    free(w);
}

int st_write(const char *path, const st_write_tensor *tensors, int n, const json_t *metadata, ra_error *err) {
    st_writer *w = st_writer_open(path, tensors, n, metadata, err);
    if (!w) return err && err->code ? err->code : EX_SOFTWARE;
    for (int i = 0; i < n; i++) {
        uint64_t nb = (uint64_t)ra_shape_numel(tensors[i].ndim, tensors[i].shape) * ra_dtype_size(tensors[i].dtype);
        int rc = st_writer_data(w, tensors[i].data, nb, err);
        if (rc) return rc;
    }
    return st_writer_close(w, err);
}

/* --------------------------------------------------------------- identity */

static void hash_le(XXH3_state_t *h, uint64_t v, int bytes) {
    unsigned char b[8];
    for (int i = 0; i < bytes; i++) b[i] = (unsigned char)(v >> (8 * i));
    XXH3_128bits_update(h, b, (size_t)bytes);
}

void st_checkpoint_id(const st_set *s, const void *config, size_t config_len, char out[33]) {
    XXH3_state_t *h = XXH3_createState();
    RA_CHECK(h != NULL);
    XXH3_128bits_reset(h);
    XXH3_128bits_update(h, config_len ? config : "", config_len);
    /* s->tensors is sorted by name (strcmp) already */
    for (int i = 0; i < s->n_tensors; i++) {
        const st_tensor *t = &s->tensors[i];
        const char *dt = st_dtype_name(t->dtype);
        XXH3_128bits_update(h, t->name, strlen(t->name) + 1);
        XXH3_128bits_update(h, dt, strlen(dt) + 1);
        hash_le(h, (uint64_t)t->ndim, 4);
        for (int d = 0; d < t->ndim; d++) hash_le(h, (uint64_t)t->shape[d], 8);
        XXH3_128bits_update(h, t->data, (size_t)t->nbytes);
    }
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits_digest(h));
    XXH3_freeState(h);
    for (int i = 0; i < 16; i++) snprintf(out + 2 * i, 3, "%02x", c.digest[i]);
}
