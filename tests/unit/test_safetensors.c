#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "model.h"
#include "safetensors.h"
#include "test.h"

/* ------------------------------------------------------------- helpers */

/* An in-memory safetensors image: 8-byte length, header text, data_size bytes
 * of non-zero filler. */
static unsigned char *make_image(const char *header, uint64_t data_size, uint64_t *size) {
    uint64_t hl = strlen(header);
    *size = 8 + hl + data_size;
    unsigned char *b = malloc(*size);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(hl >> (8 * i));
    memcpy(b + 8, header, hl);
    for (uint64_t i = 0; i < data_size; i++) b[8 + hl + i] = (unsigned char)(i * 37 + 11);
    return b;
}

/* Parse header+data and expect EX_DATAERR with msg containing each of the
 * given substrings (NULL-terminated). */
static void expect_reject(const char *header, uint64_t data_size, const char *want1, const char *want2) {
    uint64_t size;
    unsigned char *b = make_image(header, data_size, &size);
    st_tensor *t = (st_tensor *)1;
    int n = -1;
    json_t *meta = NULL;
    ra_error err = {0};
    int rc = st_parse(b, size, "x.safetensors", 0, &t, &n, &meta, &err);
    EXPECT_MSG(rc == EX_DATAERR, "header %s: rc %d, expected EX_DATAERR", header, rc);
    EXPECT_MSG(t == NULL && n == 0 && meta == NULL, "header %s: outputs not cleared", header);
    EXPECT_MSG(strstr(err.msg, "x.safetensors") != NULL, "message '%s' does not name the file", err.msg);
    if (want1) EXPECT_MSG(strstr(err.msg, want1) != NULL, "message '%s' lacks '%s'", err.msg, want1);
    if (want2) EXPECT_MSG(strstr(err.msg, want2) != NULL, "message '%s' lacks '%s'", err.msg, want2);
    free(b);
}

static void expect_accept(const char *header, uint64_t data_size, int want_n) {
    uint64_t size;
    unsigned char *b = make_image(header, data_size, &size);
    st_tensor *t;
    int n;
    ra_error err = {0};
    int rc = st_parse(b, size, "ok.safetensors", 0, &t, &n, NULL, &err);
    EXPECT_MSG(rc == 0, "header %s: rejected: %s", header, err.msg);
    if (rc == 0) EXPECT_EQ_INT(n, want_n);
    if (rc == 0) st_tensors_free(t, n);
    free(b);
}

static char tmpdir[256];

static void make_tmpdir(void) {
    if (tmpdir[0]) return;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_safetensors.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        exit(1);
    }
}

static char *tmp_path(const char *name) {
    make_tmpdir();
    static char buf[8][512];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 512, "%s/%s", tmpdir, name);
    return p;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    fputs(text, f);
    fclose(f);
}

static unsigned char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(*n + 1);
    if (fread(b, 1, *n, f) != *n) *n = 0;
    fclose(f);
    return b;
}

/* ---------------------------------------------------------- hostile input */

TEST(rejects_bad_header_length) {
    /* shorter than the length field */
    st_tensor *t;
    int n;
    ra_error err = {0};
    unsigned char tiny[5] = {1, 0, 0, 0, 0};
    EXPECT_EQ_INT(st_parse(tiny, 5, "x.safetensors", 0, &t, &n, NULL, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "too short") != NULL);

    /* header length past EOF */
    uint64_t size;
    unsigned char *b = make_image("{}", 0, &size);
    b[0] = 200;
    err.msg[0] = 0;
    EXPECT_EQ_INT(st_parse(b, size, "x.safetensors", 0, &t, &n, NULL, &err), EX_DATAERR);
    EXPECT_MSG(strstr(err.msg, "past the end") != NULL, "%s", err.msg);

    /* huge header length (over 100 MB, and 2^63) */
    b[0] = 0;
    b[1] = 0;
    b[2] = 0;
    b[3] = 0x10; /* 0x10000000 = 268 MB */
    EXPECT_EQ_INT(st_parse(b, size, "x.safetensors", 0, &t, &n, NULL, &err), EX_DATAERR);
    EXPECT_MSG(strstr(err.msg, "limit") != NULL, "%s", err.msg);
    memset(b, 0, 8);
    b[7] = 0x80;
    EXPECT_EQ_INT(st_parse(b, size, "x.safetensors", 0, &t, &n, NULL, &err), EX_DATAERR);
    EXPECT_MSG(strstr(err.msg, "limit") != NULL, "%s", err.msg);

    /* header length < 2 */
    memset(b, 0, 8);
    b[0] = 1;
    EXPECT_EQ_INT(st_parse(b, size, "x.safetensors", 0, &t, &n, NULL, &err), EX_DATAERR);
    EXPECT_MSG(strstr(err.msg, "too small") != NULL, "%s", err.msg);
    free(b);
}

TEST(rejects_bad_json) {
    expect_reject("{\"a\":", 0, "not valid JSON", NULL);
    expect_reject("[1, 2, 3]", 0, "not a JSON object", NULL);
    expect_reject("\"str\"", 0, "JSON", NULL);
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                  "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                  8, "not valid JSON", NULL); /* duplicate key */
    expect_reject("{}\x01", 0, "not valid JSON", NULL);
}

TEST(rejects_missing_fields) {
    expect_reject("{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "'w'", "dtype");
    expect_reject("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "'w'", "shape");
    expect_reject("{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "'w'", "data_offsets");
    expect_reject("{\"w\":[1,2]}", 4, "'w'", "expected an object");
    expect_reject("{\"w\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "'w'", "dtype");
    expect_reject("{\"w\":{\"dtype\":\"F32\",\"shape\":{},\"data_offsets\":[0,4]}}", 4, "'w'", "shape");
}

TEST(rejects_bad_shapes) {
    expect_reject("{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "'w'", "shape[0]");
    expect_reject("{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, "'w'", "shape[0]");
    expect_reject("{\"w\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", 4, "'w'", "shape[0]");
    expect_reject("{\"w\":{\"dtype\":\"F32\",\"shape\":[1,\"2\"],\"data_offsets\":[0,8]}}", 8, "'w'", "shape[1]");
    expect_reject("{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, "'w'",
                  "dimensions");
    /* numel overflows int64 */
    expect_reject("{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4],\"data_offsets\":[0,0]}}", 0,
                  "'w'", "overflow");
    /* numel fits, numel × 8 wraps to 0 in 64 bits: must not be taken as 0 bytes */
    expect_reject("{\"w\":{\"dtype\":\"F64\",\"shape\":[2305843009213693952],\"data_offsets\":[0,0]}}", 0, "'w'",
                  "overflow");
    /* numel × 2 = 2^64 exactly */
    expect_reject("{\"w\":{\"dtype\":\"BF16\",\"shape\":[4611686018427387904,2],\"data_offsets\":[0,0]}}", 0, "'w'",
                  "overflow");
    /* a number too big for JSON integers */
    expect_reject("{\"w\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999999],\"data_offsets\":[0,0]}}", 0,
                  "not valid JSON", NULL);
}

TEST(rejects_bad_offsets) {
    expect_reject("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8, "'w'", "begin 8 > end 4");
    expect_reject("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 7, "'w'", "past the data");
    expect_reject("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4, "'w'", "data_offsets");
    expect_reject("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8, "'w'", "data_offsets");
    expect_reject("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 8, "'w'", "data_offsets");
    expect_reject("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0.0,4]}}", 8, "'w'", "data_offsets");
    expect_reject("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,18446744073709551615]}}", 8,
                  "not valid JSON", NULL);
    /* shape × dtype ≠ bytes */
    expect_reject("{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 16, "'w'", "need 12");
    expect_reject("{\"w\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", 16, "'w'", "need 8");
    /* overlapping ranges, in either header order */
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                  16, "overlap", "'a'");
    expect_reject("{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]},"
                  "\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}",
                  16, "overlap", "'b'");
    /* identical ranges */
    expect_reject("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                  "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}",
                  4, "overlap", NULL);
    /* a range nested inside a longer one that is not its sort neighbour */
    expect_reject("{\"a\":{\"dtype\":\"U8\",\"shape\":[16],\"data_offsets\":[0,16]},"
                  "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]},"
                  "\"c\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[8,10]}}",
                  16, "overlap", NULL);
}

TEST(rejects_unsupported_dtypes) {
    const char *bad[] = {"BOOL", "I8", "I16", "U16", "U32", "U64", "F8_E4M3", "F8_E5M2", "bf16", "f32", "", "F128"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char h[256], want[64];
        snprintf(h, sizeof h, "{\"layer.w\":{\"dtype\":\"%s\",\"shape\":[1],\"data_offsets\":[0,1]}}", bad[i]);
        snprintf(want, sizeof want, "dtype '%s'", bad[i]);
        expect_reject(h, 1, "'layer.w'", want);
    }
}

TEST(rejects_bad_metadata) {
    expect_reject("{\"__metadata__\":{\"format\":1}}", 0, "__metadata__", "format");
    expect_reject("{\"__metadata__\":{\"a\":\"b\",\"c\":null}}", 0, "__metadata__", "'c'");
    expect_reject("{\"__metadata__\":[\"pt\"]}", 0, "__metadata__", "not an object");
    expect_reject("{\"__metadata__\":\"pt\"}", 0, "__metadata__", "not an object");
}

TEST(accepts_edge_cases) {
    expect_accept("{}", 0, 0);
    expect_accept("{\"__metadata__\":null}", 0, 0);
    expect_accept("{\"__metadata__\":{\"format\":\"pt\"}}  ", 0, 0); /* trailing spaces: padding */
    /* scalar, empty tensor inside another's range, gaps and trailing bytes */
    expect_accept("{\"s\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[0,8]},"
                  "\"e\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[4,4]},"
                  "\"g\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[16,24]}}",
                  32, 3);
    /* a zero dimension next to an overflowing one is still zero elements */
    expect_accept("{\"z\":{\"dtype\":\"F32\",\"shape\":[0,4611686018427387904],\"data_offsets\":[0,0]}}", 0, 1);
}

TEST(parsed_tensors_point_at_their_bytes) {
    uint64_t size;
    const char *h = "{\"b\":{\"dtype\":\"U8\",\"shape\":[2,3],\"data_offsets\":[10,16]},"
                    "\"a\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]},"
                    "\"__metadata__\":{\"format\":\"pt\"}}";
    unsigned char *b = make_image(h, 16, &size);
    st_tensor *t;
    int n;
    json_t *meta;
    ra_error err = {0};
    EXPECT_EQ_INT(st_parse(b, size, "p", 3, &t, &n, &meta, &err), 0);
    EXPECT_EQ_INT(n, 2);
    if (n == 2) {
        const unsigned char *data = b + 8 + strlen(h);
        EXPECT_STR(t[0].name, "a"); /* sorted by name */
        EXPECT_STR(t[1].name, "b");
        EXPECT(t[0].data == data);
        EXPECT(t[1].data == data + 10);
        EXPECT_EQ_INT(t[1].dtype, RA_U8);
        EXPECT_EQ_INT(t[1].ndim, 2);
        EXPECT_EQ_INT(t[1].shape[1], 3);
        EXPECT_EQ_INT(t[1].nbytes, 6);
        EXPECT_EQ_INT(t[0].file, 3);
        EXPECT_STR(json_string_value(json_object_get(meta, "format")), "pt");
    }
    st_tensors_free(t, n);
    json_decref(meta);
    free(b);
}

/* ------------------------------------------------------- write and reopen */

static void fill_random(unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(test_rand_u64() >> 56);
}

TEST(every_dtype_round_trips_byte_exactly) {
    test_seed(42);
    enum { NT = RA_DTYPE_COUNT + 2 };
    st_write_tensor w[NT];
    int64_t shapes[NT][3];
    void *data[NT];
    char names[NT][32];
    for (int i = 0; i < NT; i++) {
        ra_dtype dt = (ra_dtype)(i % RA_DTYPE_COUNT);
        int nd = i == RA_DTYPE_COUNT ? 0 : 1 + i % 3; /* one scalar */
        for (int d = 0; d < nd; d++) shapes[i][d] = 1 + (int64_t)(test_rand_u64() % 7);
        if (i == RA_DTYPE_COUNT + 1) shapes[i][0] = 0; /* one empty tensor */
        size_t nb = (size_t)ra_shape_numel(nd, shapes[i]) * ra_dtype_size(dt);
        data[i] = malloc(nb + 1);
        fill_random(data[i], nb);
        snprintf(names[i], sizeof names[i], "model.t%d.%s", NT - i, ra_dtype_name(dt)); /* not in sorted order */
        w[i] = (st_write_tensor){names[i], dt, nd, shapes[i], data[i]};
    }
    json_t *meta = json_pack("{ss}", "format", "pt");
    const char *path = tmp_path("all.safetensors");
    ra_error err = {0};
    EXPECT_EQ_INT(st_write(path, w, NT, meta, &err), 0);

    /* Layout, checked independently of st_parse: padded header, offsets contiguous in the given order. */
    size_t fsize = 0;
    unsigned char *raw = read_all(path, &fsize);
    EXPECT(raw != NULL && fsize >= 8);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | raw[i];
    EXPECT_EQ_INT(hl % 8, 0);
    json_t *h = json_loadb((const char *)raw + 8, hl, 0, NULL);
    EXPECT(h != NULL);
    uint64_t off = 0;
    for (int i = 0; i < NT && h; i++) {
        json_t *e = json_object_get(h, names[i]);
        json_t *o = json_object_get(e, "data_offsets");
        EXPECT_STR(json_string_value(json_object_get(e, "dtype")), st_dtype_name(w[i].dtype));
        EXPECT_EQ_INT(json_integer_value(json_array_get(o, 0)), off);
        size_t nb = (size_t)ra_shape_numel(w[i].ndim, w[i].shape) * ra_dtype_size(w[i].dtype);
        EXPECT(memcmp(raw + 8 + hl + off, data[i], nb) == 0);
        off += nb;
        EXPECT_EQ_INT(json_integer_value(json_array_get(o, 1)), off);
    }
    EXPECT_EQ_INT(fsize, 8 + hl + off);
    EXPECT_STR(json_string_value(json_object_get(json_object_get(h, "__metadata__"), "format")), "pt");
    json_decref(h);
    free(raw);

    st_set *s = NULL;
    EXPECT_EQ_INT(st_open(path, &s, &err), 0);
    if (s) {
        EXPECT_EQ_INT(s->n_tensors, NT);
        EXPECT_EQ_INT(s->n_files, 1);
        for (int i = 0; i < NT; i++) {
            const st_tensor *t = st_find(s, names[i]);
            EXPECT_MSG(t != NULL, "%s not found", names[i]);
            if (!t) continue;
            EXPECT_EQ_INT(t->dtype, w[i].dtype);
            EXPECT_EQ_INT(t->ndim, w[i].ndim);
            for (int d = 0; d < t->ndim; d++) EXPECT_EQ_INT(t->shape[d], w[i].shape[d]);
            EXPECT(t->nbytes == (uint64_t)ra_shape_numel(w[i].ndim, w[i].shape) * ra_dtype_size(w[i].dtype));
            EXPECT(memcmp(t->data, data[i], t->nbytes) == 0);
        }
        EXPECT(st_find(s, "model.t0") == NULL);
        EXPECT_STR(json_string_value(json_object_get(s->metadata, "format")), "pt");
        st_close(s);
    }
    for (int i = 0; i < NT; i++) free(data[i]);
    json_decref(meta);
}

TEST(writer_refuses_bad_input) {
    int64_t shape[1] = {2};
    float d[2] = {1, 2};
    ra_error err = {0};
    st_write_tensor dup[2] = {{"a", RA_F32, 1, shape, d}, {"a", RA_F32, 1, shape, d}};
    EXPECT(st_write(tmp_path("dup.safetensors"), dup, 2, NULL, &err) != 0);
    EXPECT(strstr(err.msg, "duplicate") != NULL);
    st_write_tensor meta_name[1] = {{"__metadata__", RA_F32, 1, shape, d}};
    EXPECT(st_write(tmp_path("dup.safetensors"), meta_name, 1, NULL, &err) != 0);
    json_t *bad_meta = json_pack("{si}", "n", 1);
    EXPECT(st_write(tmp_path("dup.safetensors"), dup, 1, bad_meta, &err) != 0);
    json_decref(bad_meta);
    EXPECT(access(tmp_path("dup.safetensors"), F_OK) != 0); /* nothing left behind */
}

TEST(streaming_writer_checks_byte_counts) {
    test_seed(5);
    int64_t sa[2] = {3, 5}, sb[1] = {7};
    unsigned char a[30], b[28];
    fill_random(a, sizeof a);
    fill_random(b, sizeof b);
    st_write_tensor w[2] = {{"a", RA_BF16, 2, sa, NULL}, {"b", RA_I32, 1, sb, NULL}};
    ra_error err = {0};
    const char *path = tmp_path("stream.safetensors");
    st_writer *sw = st_writer_open(path, w, 2, NULL, &err);
    EXPECT(sw != NULL);
    if (!sw) return;
    /* pieces that straddle the tensor boundary */
    EXPECT_EQ_INT(st_writer_data(sw, a, 7, &err), 0);
    unsigned char mid[30];
    memcpy(mid, a + 7, 23);
    memcpy(mid + 23, b, 5);
    EXPECT_EQ_INT(st_writer_data(sw, mid, 28, &err), 0);
    EXPECT_EQ_INT(st_writer_data(sw, b + 5, 23, &err), 0);
    EXPECT_EQ_INT(st_writer_close(sw, &err), 0);
    st_set *s = NULL;
    EXPECT_EQ_INT(st_open(path, &s, &err), 0);
    if (s) {
        const st_tensor *ta = st_find(s, "a"), *tb = st_find(s, "b");
        EXPECT(ta && ta->nbytes == 30 && memcmp(ta->data, a, 30) == 0);
        EXPECT(tb && tb->nbytes == 28 && memcmp(tb->data, b, 28) == 0);
        st_close(s);
    }
    /* too few bytes: nothing is left under the name */
    const char *short_path = tmp_path("short.safetensors");
    sw = st_writer_open(short_path, w, 2, NULL, &err);
    EXPECT(sw && st_writer_data(sw, a, 30, &err) == 0);
    EXPECT(st_writer_close(sw, &err) != 0);
    EXPECT(access(short_path, F_OK) != 0);
    /* too many */
    sw = st_writer_open(short_path, w, 2, NULL, &err);
    EXPECT(sw && st_writer_data(sw, a, 30, &err) == 0);
    EXPECT(st_writer_data(sw, mid, 29, &err) != 0); /* frees the writer */
    EXPECT(access(short_path, F_OK) != 0);
}

TEST(truncated_file_is_rejected) {
    int64_t shape[2] = {4, 4};
    float d[16];
    test_fill(d, 16, 1.0f);
    st_write_tensor w[1] = {{"w", RA_F32, 2, shape, d}};
    const char *path = tmp_path("trunc.safetensors");
    ra_error err = {0};
    EXPECT_EQ_INT(st_write(path, w, 1, NULL, &err), 0);
    struct stat sb;
    stat(path, &sb);
    EXPECT_EQ_INT(truncate(path, sb.st_size - 1), 0);
    st_set *s = NULL;
    EXPECT_EQ_INT(st_open(path, &s, &err), EX_DATAERR);
    EXPECT(s == NULL);
    EXPECT_MSG(strstr(err.msg, "trunc.safetensors") && strstr(err.msg, "'w'"), "%s", err.msg);
    EXPECT_EQ_INT(truncate(path, 0), 0);
    EXPECT_EQ_INT(st_open(path, &s, &err), EX_DATAERR);
}

TEST(missing_inputs_are_noinput) {
    st_set *s = NULL;
    ra_error err = {0};
    EXPECT_EQ_INT(st_open(tmp_path("nope.safetensors"), &s, &err), EX_NOINPUT);
    EXPECT(strstr(err.msg, "nope.safetensors") != NULL);
    const char *dir = tmp_path("emptydir");
    mkdir(dir, 0755);
    EXPECT_EQ_INT(st_open(dir, &s, &err), EX_NOINPUT);
    EXPECT(strstr(err.msg, "emptydir") != NULL);
}

/* ---------------------------------------------------------------- shards */

static void write_shard(const char *path, const char *const *names, int n, float base) {
    int64_t shape[2] = {2, 3};
    float d[8][6];
    st_write_tensor w[8];
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < 6; j++) d[i][j] = base + (float)(i * 6 + j) + test_randf();
        w[i] = (st_write_tensor){names[i], RA_F32, 2, shape, d[i]};
    }
    ra_error err = {0};
    if (st_write(path, w, n, NULL, &err) != 0) printf("# %s\n", err.msg);
}

static const char *shard_dir(const char *name) {
    const char *d = tmp_path(name);
    mkdir(d, 0755);
    return d;
}

TEST(sharded_checkpoint_opens) {
    test_seed(7);
    const char *dir = shard_dir("sharded");
    char p[600];
    const char *s1[] = {"model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight"};
    const char *s2[] = {"lm_head.weight", "model.norm.weight", "model.layers.1.mlp.up_proj.weight"};
    snprintf(p, sizeof p, "%s/model-00001-of-00002.safetensors", dir);
    write_shard(p, s1, 2, 0);
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", dir);
    write_shard(p, s2, 3, 100);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    write_text(p, "{\"metadata\":{\"total_size\":120},\"weight_map\":{"
                  "\"lm_head.weight\":\"model-00002-of-00002.safetensors\","
                  "\"model.embed_tokens.weight\":\"model-00001-of-00002.safetensors\","
                  "\"model.layers.0.mlp.up_proj.weight\":\"model-00001-of-00002.safetensors\","
                  "\"model.layers.1.mlp.up_proj.weight\":\"model-00002-of-00002.safetensors\","
                  "\"model.norm.weight\":\"model-00002-of-00002.safetensors\"}}");
    st_set *s = NULL;
    ra_error err = {0};
    EXPECT_EQ_INT(st_open(dir, &s, &err), 0);
    if (!s) {
        printf("# %s\n", err.msg);
        return;
    }
    EXPECT_EQ_INT(s->n_files, 2);
    EXPECT_EQ_INT(s->n_tensors, 5);
    for (int i = 1; i < s->n_tensors; i++) EXPECT(strcmp(s->tensors[i - 1].name, s->tensors[i].name) < 0);
    const st_tensor *t = st_find(s, "model.norm.weight");
    EXPECT(t && strstr(s->files[t->file], "00002") != NULL);
    if (t) EXPECT(((const float *)t->data)[0] >= 105.0f); /* base 100 + index 1 × 6, minus < 1 */
    t = st_find(s, "model.embed_tokens.weight");
    EXPECT(t && strstr(s->files[t->file], "00001") != NULL);
    if (t) EXPECT(((const float *)t->data)[0] < 1.0f);
    st_close(s);

    /* the index file may also be named directly */
    s = NULL;
    EXPECT_EQ_INT(st_open(p, &s, &err), 0);
    if (s) EXPECT_EQ_INT(s->n_tensors, 5);
    st_close(s);
}

TEST(sharded_checkpoint_errors) {
    test_seed(8);
    char p[600];
    const char *s1[] = {"a", "b"};
    const char *s2[] = {"b", "c"};
    st_set *s = NULL;
    ra_error err = {0};

    /* a tensor listed but absent from its shard */
    const char *dir = shard_dir("missing_tensor");
    snprintf(p, sizeof p, "%s/one.safetensors", dir);
    write_shard(p, s1, 2, 0);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    write_text(p, "{\"weight_map\":{\"a\":\"one.safetensors\",\"b\":\"one.safetensors\",\"zz\":\"one.safetensors\"}}");
    EXPECT_EQ_INT(st_open(dir, &s, &err), EX_DATAERR);
    EXPECT_MSG(strstr(err.msg, "'zz'") && strstr(err.msg, "one.safetensors"), "%s", err.msg);

    /* listed in the wrong shard */
    dir = shard_dir("wrong_shard");
    snprintf(p, sizeof p, "%s/one.safetensors", dir);
    write_shard(p, s1, 2, 0);
    snprintf(p, sizeof p, "%s/two.safetensors", dir);
    write_shard(p, (const char *const[]){"c"}, 1, 0);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    write_text(p, "{\"weight_map\":{\"a\":\"one.safetensors\",\"b\":\"two.safetensors\",\"c\":\"two.safetensors\"}}");
    EXPECT_EQ_INT(st_open(dir, &s, &err), EX_DATAERR);
    EXPECT_MSG(strstr(err.msg, "'b'") != NULL, "%s", err.msg);

    /* a missing shard file */
    dir = shard_dir("missing_shard");
    snprintf(p, sizeof p, "%s/one.safetensors", dir);
    write_shard(p, s1, 2, 0);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    write_text(p, "{\"weight_map\":{\"a\":\"one.safetensors\",\"c\":\"gone.safetensors\"}}");
    EXPECT_EQ_INT(st_open(dir, &s, &err), EX_NOINPUT);
    EXPECT_MSG(strstr(err.msg, "gone.safetensors") != NULL, "%s", err.msg);

    /* the same tensor in two shards */
    dir = shard_dir("duplicate");
    snprintf(p, sizeof p, "%s/one.safetensors", dir);
    write_shard(p, s1, 2, 0);
    snprintf(p, sizeof p, "%s/two.safetensors", dir);
    write_shard(p, s2, 2, 0);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    write_text(p, "{\"weight_map\":{\"a\":\"one.safetensors\",\"b\":\"one.safetensors\",\"c\":\"two.safetensors\"}}");
    EXPECT_EQ_INT(st_open(dir, &s, &err), EX_DATAERR);
    EXPECT_MSG(strstr(err.msg, "'b'") && strstr(err.msg, "two shards"), "%s", err.msg);

    /* shard names must stay in the directory; malformed indexes */
    const char *bad_index[] = {
        "{\"weight_map\":{\"a\":\"../one.safetensors\"}}",
        "{\"weight_map\":{\"a\":\"/etc/passwd\"}}",
        "{\"weight_map\":{\"a\":7}}",
        "{\"weight_map\":[]}",
        "{\"metadata\":{}}",
        "{\"weight_map\":{\"a\":\"one.safetensors\"}",
        "[]",
    };
    dir = shard_dir("bad_index");
    snprintf(p, sizeof p, "%s/one.safetensors", dir);
    write_shard(p, s1, 2, 0);
    for (size_t i = 0; i < sizeof bad_index / sizeof bad_index[0]; i++) {
        snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
        write_text(p, bad_index[i]);
        EXPECT_MSG(st_open(dir, &s, &err) == EX_DATAERR, "index %s accepted", bad_index[i]);
        EXPECT(strstr(err.msg, "model.safetensors.index.json") != NULL);
    }
    /* a bad shard: the message names the shard and the tensor */
    dir = shard_dir("bad_shard");
    snprintf(p, sizeof p, "%s/one.safetensors", dir);
    uint64_t size;
    unsigned char *img = make_image("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, &size);
    FILE *f = fopen(p, "wb");
    fwrite(img, 1, size, f);
    fclose(f);
    free(img);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    write_text(p, "{\"weight_map\":{\"a\":\"one.safetensors\"}}");
    EXPECT_EQ_INT(st_open(dir, &s, &err), EX_DATAERR);
    EXPECT_MSG(strstr(err.msg, "one.safetensors") && strstr(err.msg, "'a'"), "%s", err.msg);
    EXPECT(s == NULL);
}

TEST(directory_with_single_file_opens) {
    const char *dir = shard_dir("single");
    char p[600];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    write_shard(p, (const char *const[]){"x", "y"}, 2, 0);
    st_set *s = NULL;
    ra_error err = {0};
    EXPECT_EQ_INT(st_open(dir, &s, &err), 0);
    if (s) EXPECT_EQ_INT(s->n_tensors, 2);
    st_close(s);
}

/* Reference for st_checkpoint_id: the byte sequence the spec describes, built
 * explicitly and hashed in one shot. */
static void reference_id(const char *config, const char *const *names, int n, const int64_t *shape, int ndim,
                         float data[][6], char out[33]) {
    size_t cap = strlen(config) + (size_t)n * 200, len = 0;
    unsigned char *b = malloc(cap);
    memcpy(b, config, strlen(config));
    len = strlen(config);
    /* names given in strcmp order */
    for (int i = 0; i < n; i++) {
        memcpy(b + len, names[i], strlen(names[i]) + 1);
        len += strlen(names[i]) + 1;
        memcpy(b + len, "F32", 4);
        len += 4;
        for (int k = 0; k < 4; k++) b[len++] = (unsigned char)((uint32_t)ndim >> (8 * k));
        for (int d = 0; d < ndim; d++)
            for (int k = 0; k < 8; k++) b[len++] = (unsigned char)((uint64_t)shape[d] >> (8 * k));
        memcpy(b + len, data[i], 24);
        len += 24;
    }
    XXH128_hash_t h = XXH3_128bits(b, len);
    snprintf(out, 33, "%016llx%016llx", (unsigned long long)h.high64, (unsigned long long)h.low64);
    free(b);
}

TEST(checkpoint_id_follows_the_spec_and_ignores_sharding) {
    test_seed(11);
    const char *names[3] = {"a.weight", "b.bias", "c"}; /* strcmp order */
    int64_t shape[2] = {2, 3};
    float data[3][6];
    for (int i = 0; i < 3; i++) test_fill(data[i], 6, 1.0f);
    const char *config = "{\"model_type\": \"llama\"}\n";
    char want[33], got[33], got2[33];
    reference_id(config, names, 3, shape, 2, data, want);

    /* one file, tensors stored in reverse order */
    st_write_tensor w[3];
    for (int i = 0; i < 3; i++) w[2 - i] = (st_write_tensor){names[i], RA_F32, 2, shape, data[i]};
    ra_error err = {0};
    const char *one = tmp_path("id-one.safetensors");
    EXPECT_EQ_INT(st_write(one, w, 3, NULL, &err), 0);
    st_set *s = NULL;
    EXPECT_EQ_INT(st_open(one, &s, &err), 0);
    if (!s) return;
    st_checkpoint_id(s, config, strlen(config), got);
    EXPECT_STR(got, want);
    st_close(s);

    /* two shards */
    const char *dir = shard_dir("id-shards");
    char p[600];
    snprintf(p, sizeof p, "%s/s1.safetensors", dir);
    EXPECT_EQ_INT(st_write(p, w, 1, NULL, &err), 0);
    snprintf(p, sizeof p, "%s/s2.safetensors", dir);
    EXPECT_EQ_INT(st_write(p, w + 1, 2, NULL, &err), 0);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    write_text(p, "{\"weight_map\":{\"c\":\"s1.safetensors\",\"b.bias\":\"s2.safetensors\","
                  "\"a.weight\":\"s2.safetensors\"}}");
    s = NULL;
    EXPECT_EQ_INT(st_open(dir, &s, &err), 0);
    if (!s) return;
    st_checkpoint_id(s, config, strlen(config), got2);
    EXPECT_STR(got2, want);
    /* the config bytes count */
    st_checkpoint_id(s, config, strlen(config) - 1, got2);
    EXPECT(strcmp(got2, want) != 0);
    st_close(s);

    /* one changed element changes it */
    data[1][4] += 1.0f;
    for (int i = 0; i < 3; i++) w[2 - i] = (st_write_tensor){names[i], RA_F32, 2, shape, data[i]};
    EXPECT_EQ_INT(st_write(one, w, 3, NULL, &err), 0);
    s = NULL;
    EXPECT_EQ_INT(st_open(one, &s, &err), 0);
    if (!s) return;
    st_checkpoint_id(s, config, strlen(config), got);
    EXPECT(strcmp(got, want) != 0);
    reference_id(config, names, 3, shape, 2, data, want);
    EXPECT_STR(got, want);
    st_close(s);
}

/* lib/model_load.c computes the same id for Hugging Face directories; the two
 * must agree, or a model would get two identities. */
TEST(checkpoint_id_matches_the_model_loader) {
    test_seed(12);
    const char *dir = shard_dir("id-model");
    const char *config = "{\"model_type\": \"llama\", \"hidden_size\": 8, \"intermediate_size\": 12,\n"
                         " \"num_hidden_layers\": 1, \"num_attention_heads\": 2, \"num_key_value_heads\": 1,\n"
                         " \"vocab_size\": 16, \"rms_norm_eps\": 1e-5}\n";
    char p[600];
    snprintf(p, sizeof p, "%s/config.json", dir);
    write_text(p, config);
    struct { const char *name; int64_t r, c; } spec[] = {
        {"model.embed_tokens.weight", 16, 8}, {"model.layers.0.input_layernorm.weight", 8, 0},
        {"model.layers.0.self_attn.q_proj.weight", 8, 8}, {"model.layers.0.self_attn.k_proj.weight", 4, 8},
        {"model.layers.0.self_attn.v_proj.weight", 4, 8}, {"model.layers.0.self_attn.o_proj.weight", 8, 8},
        {"model.layers.0.post_attention_layernorm.weight", 8, 0}, {"model.layers.0.mlp.gate_proj.weight", 12, 8},
        {"model.layers.0.mlp.up_proj.weight", 12, 8}, {"model.layers.0.mlp.down_proj.weight", 8, 12},
        {"model.norm.weight", 8, 0}, {"lm_head.weight", 16, 8},
    };
    enum { N = sizeof spec / sizeof spec[0] };
    st_write_tensor w[N];
    int64_t shapes[N][2];
    uint16_t *data[N];
    for (int i = 0; i < N; i++) {
        shapes[i][0] = spec[i].r;
        shapes[i][1] = spec[i].c;
        int nd = spec[i].c ? 2 : 1;
        int64_t n = ra_shape_numel(nd, shapes[i]);
        data[i] = malloc((size_t)n * 2);
        for (int64_t j = 0; j < n; j++) data[i][j] = ra_f32_to_bf16(0.5f * test_randf() + (spec[i].c ? 0.0f : 1.0f));
        w[i] = (st_write_tensor){spec[i].name, RA_BF16, nd, shapes[i], data[i]};
    }
    ra_error err = {0};
    snprintf(p, sizeof p, "%s/model-00001-of-00002.safetensors", dir);
    EXPECT_EQ_INT(st_write(p, w, 5, NULL, &err), 0);
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", dir);
    EXPECT_EQ_INT(st_write(p, w + 5, N - 5, NULL, &err), 0);
    char index[4096];
    int len = snprintf(index, sizeof index, "{\"weight_map\": {");
    for (int i = 0; i < N; i++)
        len += snprintf(index + len, sizeof index - (size_t)len, "%s\"%s\": \"model-0000%d-of-00002.safetensors\"",
                        i ? ", " : "", spec[i].name, i < 5 ? 1 : 2);
    snprintf(index + len, sizeof index - (size_t)len, "}}");
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    write_text(p, index);

    ra_model *m = NULL;
    int rc = ra_model_load_hf(dir, &m, &err);
    EXPECT_MSG(rc == 0, "%s", err.msg);
    st_set *s = NULL;
    EXPECT_EQ_INT(st_open(dir, &s, &err), 0);
    if (m && s) {
        char id[33];
        st_checkpoint_id(s, config, strlen(config), id);
        EXPECT_STR(id, m->content_id);
    }
    st_close(s);
    ra_model_free(m);
    for (int i = 0; i < N; i++) free(data[i]);
}

static void cleanup(void) {
    if (tmpdir[0]) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
    }
}

int main(void) {
    RUN(rejects_bad_header_length);
    RUN(rejects_bad_json);
    RUN(rejects_missing_fields);
    RUN(rejects_bad_shapes);
    RUN(rejects_bad_offsets);
    RUN(rejects_unsupported_dtypes);
    RUN(rejects_bad_metadata);
    RUN(accepts_edge_cases);
    RUN(parsed_tensors_point_at_their_bytes);
    RUN(every_dtype_round_trips_byte_exactly);
    RUN(writer_refuses_bad_input);
    RUN(streaming_writer_checks_byte_counts);
    RUN(truncated_file_is_rejected);
    RUN(missing_inputs_are_noinput);
    RUN(sharded_checkpoint_opens);
    RUN(sharded_checkpoint_errors);
    RUN(directory_with_single_file_opens);
    RUN(checkpoint_id_follows_the_spec_and_ignores_sharding);
    RUN(checkpoint_id_matches_the_model_loader);
    cleanup();
    return test_summary();
}
