/* The ra stream: round trips, multi-part tensors, JSON headers, the content id
 * against an independent XXH3-128, truncation and corruption anywhere, the
 * specific error messages, and atomic writing. */
#include <dirent.h>
#include <msgpack.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "stream.h"
#include "test.h"

static char tmpdir[256];

static const char *tmp_path(const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

static unsigned char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)len + 1);
    *n = fread(b, 1, (size_t)len, f);
    fclose(f);
    return b;
}

static void spit(const char *path, const void *b, size_t n) {
    FILE *f = fopen(path, "wb");
    if (n) fwrite(b, 1, n, f);
    fclose(f);
}

static void fill_random_bytes(void *dst, size_t n) {
    unsigned char *p = dst;
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(test_rand_u64() >> 56);
}

/* Read a whole stream; read_data: 1 read every tensor, 0 skip every tensor,
 * 2 read in 5-byte chunks.  Returns 0 or the error code. */
static int read_whole(const char *path, int read_data, ra_error *err) {
    ra_reader *r = ra_reader_open(path, err);
    if (!r) return err->code;
    ra_tensor_info info;
    int st, rc = 0;
    while ((st = ra_reader_next(r, &info, err)) == 1) {
        if (read_data == 1) {
            void *b = malloc(info.nbytes + 1);
            rc = ra_reader_read(r, b, info.nbytes, err);
            free(b);
        } else if (read_data == 2) {
            unsigned char b[5];
            int64_t got;
            while ((got = ra_reader_read_chunk(r, b, sizeof b, err)) > 0) {
            }
            if (got < 0) rc = err->code;
        }
        if (rc) break;
    }
    if (!rc && st < 0) rc = err->code;
    ra_reader_close(r);
    return rc;
}

/* ------------------------------------------------ independent references */

static double bf16_round_ref(double x) {
    if (x == 0 || !isfinite(x)) return x;
    int e;
    frexp(x, &e);
    double ulp = ldexp(1.0, e - 8);
    return nearbyint(x / ulp) * ulp;
}

/* nearest half, ties to even, with subnormals and overflow to Inf */
static double f16_round_ref(double x) {
    if (x == 0 || !isfinite(x)) return x;
    int e;
    frexp(x, &e);
    if (e < -13) e = -13;
    double r = nearbyint(x / ldexp(1.0, e - 11)) * ldexp(1.0, e - 11);
    return fabs(r) >= 65520.0 ? copysign(INFINITY, x) : r;
}

static double f16_decode_ref(uint16_t h) {
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v;
    if (e == 0) v = ldexp(m, -24);
    else if (e == 31) v = m ? NAN : INFINITY;
    else v = ldexp(1024 + m, e - 25);
    return s ? -v : v;
}

static double ref_to_double(const void *src, ra_dtype t, size_t i) {
    const unsigned char *p = src;
    switch (t) {
    case RA_BF16: {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        uint32_t u = (uint32_t)h << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    case RA_F16: {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        return f16_decode_ref(h);
    }
    case RA_F32: {
        float f;
        memcpy(&f, p + 4 * i, 4);
        return f;
    }
    case RA_F64: {
        double d;
        memcpy(&d, p + 8 * i, 8);
        return d;
    }
    case RA_I32: {
        int32_t v;
        memcpy(&v, p + 4 * i, 4);
        return v;
    }
    case RA_I64: {
        int64_t v;
        memcpy(&v, p + 8 * i, 8);
        return (double)v;
    }
    case RA_U8: return p[i];
    default: return NAN;
    }
}

/* ---------------------------------------------------------------- round trips */

TEST(every_dtype_round_trips_byte_exactly) {
    test_seed(11);
    const char *path = tmp_path("dtypes.ra");
    int64_t shape[3] = {3, 5, 7};
    void *data[RA_DTYPE_COUNT];
    ra_error err = {0};
    ra_writer *w = ra_writer_open(path, "model", NULL, NULL, &err);
    EXPECT(w != NULL);
    if (!w) return;
    for (int t = 0; t < RA_DTYPE_COUNT; t++) {
        size_t n = 105 * ra_dtype_size((ra_dtype)t);
        data[t] = malloc(n);
        fill_random_bytes(data[t], n);
        if (t == RA_BF16 || t == RA_F16) { /* special bit patterns survive as bits */
            uint16_t *h = data[t];
            uint16_t inf = t == RA_BF16 ? 0x7f80 : 0x7c00, nan = t == RA_BF16 ? 0x7fc1 : 0x7e01;
            h[0] = inf, h[1] = (uint16_t)(inf | 0x8000), h[2] = nan, h[3] = (uint16_t)(nan | 0x8000), h[4] = 0x8000;
            h[5] = 0x0001; /* smallest subnormal */
        }
        char name[32];
        snprintf(name, sizeof name, "t.%s", ra_dtype_name((ra_dtype)t));
        EXPECT_EQ_INT(ra_writer_tensor(w, name, (ra_dtype)t, 3, shape, data[t], &err), 0);
    }
    char id[RA_CONTENT_ID_LEN + 1];
    EXPECT_EQ_INT(ra_writer_close(w, id, &err), 0);
    EXPECT_EQ_INT(strlen(id), 32);

    ra_reader *r = ra_reader_open(path, &err);
    EXPECT(r != NULL);
    if (!r) return;
    EXPECT_STR(ra_reader_kind(r), "model");
    EXPECT_EQ_INT(ra_reader_version(r), 1);
    ra_tensor_info info;
    for (int t = 0; t < RA_DTYPE_COUNT; t++) {
        EXPECT_EQ_INT(ra_reader_next(r, &info, &err), 1);
        char name[32];
        snprintf(name, sizeof name, "t.%s", ra_dtype_name((ra_dtype)t));
        EXPECT_STR(info.name, name);
        EXPECT_EQ_INT(info.dtype, t);
        EXPECT_EQ_INT(info.ndim, 3);
        EXPECT(info.shape[0] == 3 && info.shape[1] == 5 && info.shape[2] == 7);
        EXPECT_EQ_INT(info.numel, 105);
        EXPECT_EQ_INT(info.nbytes, 105 * ra_dtype_size((ra_dtype)t));
        void *back = malloc(info.nbytes);
        EXPECT_EQ_INT(ra_reader_read(r, back, info.nbytes, &err), 0);
        EXPECT_MSG(memcmp(back, data[t], info.nbytes) == 0, "dtype %s differs", name);
        free(back);
        free(data[t]);
    }
    EXPECT_EQ_INT(ra_reader_next(r, &info, &err), 0);
    EXPECT_STR(ra_reader_content_id(r), id);
    EXPECT_EQ_INT(ra_reader_record_count(r), RA_DTYPE_COUNT);
    ra_reader_close(r);
}

TEST(f32_conversions_round_to_nearest_even_and_keep_nan_inf) {
    test_seed(12);
    const char *path = tmp_path("conv.ra");
    enum { N = 4096 };
    float *x = malloc(N * sizeof *x);
    for (int i = 0; i < N; i++) x[i] = test_randf() * ldexpf(1.0f, (int)(test_rand_u64() % 40) - 20);
    x[0] = NAN, x[1] = INFINITY, x[2] = -INFINITY, x[3] = 1.0f + ldexpf(1, -8); /* a bf16 tie */
    int64_t shape[1] = {N};
    ra_error err = {0};
    ra_writer *w = ra_writer_open(path, "model", NULL, NULL, &err);
    EXPECT_EQ_INT(ra_writer_tensor_from_f32(w, "bf", RA_BF16, 1, shape, x, &err), 0);
    EXPECT_EQ_INT(ra_writer_tensor_from_f32(w, "h", RA_F16, 1, shape, x, &err), 0);
    EXPECT_EQ_INT(ra_writer_tensor_from_f32(w, "f", RA_F32, 1, shape, x, &err), 0);
    EXPECT_EQ_INT(ra_writer_close(w, NULL, &err), 0);

    ra_reader *r = ra_reader_open(path, &err);
    ra_tensor_info info;
    float *y = malloc(N * sizeof *y);
    for (int k = 0; k < 3; k++) {
        EXPECT_EQ_INT(ra_reader_next(r, &info, &err), 1);
        EXPECT_EQ_INT(ra_reader_read_f32(r, y, N, &err), 0);
        EXPECT(isnan(y[0]));
        EXPECT(isinf(y[1]) && y[1] > 0);
        EXPECT(isinf(y[2]) && y[2] < 0);
        int bad = 0;
        for (int i = 3; i < N && bad < 3; i++) {
            double want = x[i];
            if (k == 0) want = bf16_round_ref(x[i]);
            if (k == 1) want = f16_round_ref(x[i]);
            if ((float)want != y[i]) {
                EXPECT_MSG(0, "tensor %d element %d: %a read back as %a, want %a", k, i, x[i], y[i], want);
                bad++;
            }
        }
    }
    ra_reader_close(r);
    r = ra_reader_open(path, &err);
    ra_reader_next(r, &info, &err);
    ra_reader_read_f32(r, y, N, &err);
    EXPECT(y[3] == 1.0f); /* 1 + 2^-8 is halfway; ties go to the even neighbour 1 */
    ra_reader_close(r);
    free(x);
    free(y);
}

TEST(read_f32_converts_every_dtype) {
    test_seed(13);
    const char *path = tmp_path("tof32.ra");
    int64_t shape[2] = {17, 33};
    size_t numel = 17 * 33;
    void *data[RA_DTYPE_COUNT];
    ra_error err = {0};
    ra_writer *w = ra_writer_open(path, "scores", NULL, NULL, &err);
    ra_writer_set_split_bytes(w, 100); /* conversion must also cross part boundaries */
    for (int t = 0; t < RA_DTYPE_COUNT; t++) {
        size_t es = ra_dtype_size((ra_dtype)t);
        data[t] = malloc(numel * es);
        fill_random_bytes(data[t], numel * es);
        if (t == RA_F32 || t == RA_F64) { /* keep floats finite and varied */
            for (size_t i = 0; i < numel; i++) {
                if (t == RA_F32) ((float *)data[t])[i] = test_randf() * 1000;
                else ((double *)data[t])[i] = test_randf() * 1e-3;
            }
        }
        char name[8];
        snprintf(name, sizeof name, "%d", t);
        EXPECT_EQ_INT(ra_writer_tensor(w, name, (ra_dtype)t, 2, shape, data[t], &err), 0);
    }
    EXPECT_EQ_INT(ra_writer_close(w, NULL, &err), 0);
    ra_reader *r = ra_reader_open(path, &err);
    float *y = malloc(numel * sizeof *y);
    ra_tensor_info info;
    for (int t = 0; t < RA_DTYPE_COUNT; t++) {
        EXPECT_EQ_INT(ra_reader_next(r, &info, &err), 1);
        EXPECT_EQ_INT(ra_reader_read_f32(r, y, (int64_t)numel, &err), 0);
        int bad = 0;
        for (size_t i = 0; i < numel && bad < 3; i++) {
            double want = ref_to_double(data[t], (ra_dtype)t, i);
            float wf = (float)want;
            if (!(wf == y[i] || (isnan(wf) && isnan(y[i])))) {
                EXPECT_MSG(0, "dtype %s element %zu: got %a want %a", ra_dtype_name((ra_dtype)t), i, y[i], want);
                bad++;
            }
        }
        free(data[t]);
    }
    EXPECT_EQ_INT(ra_reader_next(r, &info, &err), 0);
    ra_reader_close(r);
    free(y);
}

TEST(scalars_and_empty_tensors) {
    const char *path = tmp_path("empty.ra");
    ra_error err = {0};
    ra_writer *w = ra_writer_open(path, "results", NULL, NULL, &err);
    double pi = 3.14159;
    int64_t s0[3] = {3, 0, 2}, s1[1] = {0};
    EXPECT_EQ_INT(ra_writer_tensor(w, "scalar", RA_F64, 0, NULL, &pi, &err), 0);
    EXPECT_EQ_INT(ra_writer_tensor(w, "empty3", RA_BF16, 3, s0, NULL, &err), 0);
    ra_writer_set_split_bytes(w, 1); /* empty tensors stay one record even then */
    EXPECT_EQ_INT(ra_writer_tensor(w, "empty1", RA_U8, 1, s1, "", &err), 0);
    EXPECT_EQ_INT(ra_writer_close(w, NULL, &err), 0);

    ra_reader *r = ra_reader_open(path, &err);
    ra_tensor_info info;
    EXPECT_EQ_INT(ra_reader_next(r, &info, &err), 1);
    EXPECT_EQ_INT(info.ndim, 0);
    EXPECT_EQ_INT(info.numel, 1);
    EXPECT_EQ_INT(info.nbytes, 8);
    double back = 0;
    EXPECT_EQ_INT(ra_reader_read(r, &back, 8, &err), 0);
    EXPECT(back == pi);
    EXPECT_EQ_INT(ra_reader_next(r, &info, &err), 1);
    EXPECT_STR(info.name, "empty3");
    EXPECT_EQ_INT(info.ndim, 3);
    EXPECT_EQ_INT(info.shape[1], 0);
    EXPECT_EQ_INT(info.numel, 0);
    EXPECT_EQ_INT(info.nbytes, 0);
    EXPECT_EQ_INT(ra_reader_read(r, NULL, 0, &err), 0);
    EXPECT_EQ_INT(ra_reader_next(r, &info, &err), 1);
    EXPECT_STR(info.name, "empty1");
    EXPECT_EQ_INT(info.nbytes, 0);
    EXPECT_EQ_INT(ra_reader_next(r, &info, &err), 0);
    EXPECT_EQ_INT(ra_reader_record_count(r), 3);
    ra_reader_close(r);
}

static uint64_t expected_parts(uint64_t nbytes, uint64_t split, uint64_t es) {
    uint64_t p = split / es * es;
    if (p < es) p = es;
    return nbytes <= p ? 1 : (nbytes + p - 1) / p;
}

TEST(multi_part_tensors_rejoin) {
    test_seed(14);
    static const uint64_t splits[] = {1, 7, 8, 64, 1000, 4099};
    for (size_t s = 0; s < sizeof splits / sizeof splits[0]; s++) {
        const char *path = tmp_path("parts.ra");
        ra_error err = {0};
        int64_t sa[2] = {37, 29}, sb[1] = {1001}, sc[1] = {3};
        unsigned char *a = malloc(37 * 29 * 4), *b = malloc(1001), *c = malloc(3 * 8);
        fill_random_bytes(a, 37 * 29 * 4);
        fill_random_bytes(b, 1001);
        fill_random_bytes(c, 24);
        ra_writer *w = ra_writer_open(path, "checkpoint", NULL, NULL, &err);
        ra_writer_set_split_bytes(w, splits[s]);
        EXPECT_EQ_INT(ra_writer_tensor(w, "a", RA_F32, 2, sa, a, &err), 0);
        EXPECT_EQ_INT(ra_writer_tensor(w, "b", RA_U8, 1, sb, b, &err), 0);
        EXPECT_EQ_INT(ra_writer_tensor(w, "c", RA_I64, 1, sc, c, &err), 0);
        char wid[33];
        EXPECT_EQ_INT(ra_writer_close(w, wid, &err), 0);
        uint64_t want_records = expected_parts(37 * 29 * 4, splits[s], 4) + expected_parts(1001, splits[s], 1) +
                                expected_parts(24, splits[s], 8);

        /* read a whole, b in odd chunks, skip c */
        ra_reader *r = ra_reader_open(path, &err);
        ra_tensor_info info;
        EXPECT_EQ_INT(ra_reader_next(r, &info, &err), 1);
        EXPECT_EQ_INT(info.nbytes, 37 * 29 * 4);
        unsigned char *back = malloc(37 * 29 * 4);
        EXPECT_EQ_INT(ra_reader_read(r, back, info.nbytes, &err), 0);
        EXPECT_MSG(memcmp(back, a, info.nbytes) == 0, "split %llu: tensor a differs", (unsigned long long)splits[s]);
        EXPECT_EQ_INT(ra_reader_next(r, &info, &err), 1);
        EXPECT_STR(info.name, "b");
        size_t off = 0;
        int64_t got;
        uint64_t piece = 13;
        while ((got = ra_reader_read_chunk(r, back + off, piece, &err)) > 0) {
            off += (size_t)got;
            piece = piece % 29 + 3;
        }
        EXPECT_EQ_INT(got, 0);
        EXPECT_EQ_INT(off, 1001);
        EXPECT(memcmp(back, b, 1001) == 0);
        EXPECT_EQ_INT(ra_reader_next(r, &info, &err), 1);
        EXPECT_STR(info.name, "c");
        EXPECT_EQ_INT(ra_reader_next(r, &info, &err), 0);
        EXPECT_EQ_INT(ra_reader_record_count(r), want_records);
        EXPECT_STR(ra_reader_content_id(r), wid);
        ra_reader_close(r);

        /* skip a, read c */
        r = ra_reader_open(path, &err);
        ra_reader_next(r, &info, &err);
        ra_reader_next(r, &info, &err);
        ra_reader_next(r, &info, &err);
        EXPECT_EQ_INT(ra_reader_read(r, back, 24, &err), 0);
        EXPECT(memcmp(back, c, 24) == 0);
        EXPECT_EQ_INT(ra_reader_next(r, &info, &err), 0);
        ra_reader_close(r);
        free(a), free(b), free(c), free(back);
    }
}

TEST(streaming_write_in_odd_pieces) {
    test_seed(15);
    const char *path = tmp_path("pieces.ra");
    enum { N = 10007 };
    unsigned char *x = malloc(N * 2);
    fill_random_bytes(x, N * 2);
    int64_t shape[1] = {N};
    ra_error err = {0};
    ra_writer *w = ra_writer_open(path, "activations", NULL, NULL, &err);
    ra_writer_set_split_bytes(w, 333); /* pieces straddle part boundaries */
    EXPECT_EQ_INT(ra_writer_begin(w, "x", RA_F16, 1, shape, &err), 0);
    size_t off = 0, piece = 1;
    while (off < N * 2) {
        size_t m = piece < N * 2 - off ? piece : N * 2 - off;
        EXPECT_EQ_INT(ra_writer_data(w, x + off, m, &err), 0);
        off += m;
        piece = piece * 3 % 1009 + 1;
    }
    EXPECT_EQ_INT(ra_writer_end(w, &err), 0);
    EXPECT_EQ_INT(ra_writer_close(w, NULL, &err), 0);
    ra_tensor *t;
    int n;
    EXPECT_EQ_INT(ra_read_all(path, NULL, &t, &n, &err), 0);
    EXPECT_EQ_INT(n, 1);
    EXPECT(n == 1 && t[0].info.nbytes == N * 2 && memcmp(t[0].data, x, N * 2) == 0);
    EXPECT(ra_tensors_find(t, n, "x") == &t[0]);
    EXPECT(ra_tensors_find(t, n, "y") == NULL);
    ra_tensors_free(t, n);
    free(x);
}

TEST(reading_from_a_pipe) {
    test_seed(16);
    const char *path = tmp_path("pipe.ra");
    unsigned char x[300000];
    fill_random_bytes(x, sizeof x);
    int64_t shape[1] = {sizeof x};
    ra_error err = {0};
    ra_writer *w = ra_writer_open(path, "tokens", NULL, NULL, &err);
    ra_writer_tensor(w, "x", RA_U8, 1, shape, x, &err);
    char id[33];
    ra_writer_close(w, id, &err);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "cat '%s'", path);
    FILE *p = popen(cmd, "r");
    ra_reader *r = ra_reader_open_file(p, "pipe", &err);
    EXPECT(r != NULL);
    ra_tensor_info info;
    EXPECT_EQ_INT(ra_reader_next(r, &info, &err), 1);
    unsigned char *back = malloc(sizeof x);
    EXPECT_EQ_INT(ra_reader_read(r, back, sizeof x, &err), 0);
    EXPECT(memcmp(back, x, sizeof x) == 0);
    EXPECT_EQ_INT(ra_reader_next(r, &info, &err), 0);
    EXPECT_STR(ra_reader_content_id(r), id);
    ra_reader_close(r);
    pclose(p);
    free(back);
}

TEST(meta_and_provenance_json_round_trip) {
    const char *path = tmp_path("meta.ra");
    json_error_t je;
    json_t *meta = json_loads(
        "{\"config\": {\"hidden_size\": 2048, \"rope_theta\": 500000.0, \"eps\": 1e-05,"
        "  \"rope_scaling\": {\"factor\": 32.0, \"type\": \"llama3\"}, \"tie\": true, \"bias\": null},"
        " \"big\": 9223372036854775807, \"small\": -9223372036854775808, \"tiny\": 4.9e-324,"
        " \"huge\": 1.7976931348623157e308, \"neg\": -0.1,"
        " \"text\": \"h\\u00e9llo \\u2713 \\u65e5\\u672c \\ud83d\\ude00\", \"empty\": {}, \"list\": [], \"\": \"\","
        " \"nested\": [[1, [2, [3, {\"x\": [false]}]]], \"s\", 0.5]}",
        0, &je);
    EXPECT(meta != NULL);
    json_t *prov = json_pack("{s:s, s:s, s:{s:i}, s:[{s:s, s:s}]}", "tool", "test", "version", "1", "params", "seed",
                             7, "inputs", "path", "x.ra", "id", "0123456789abcdef0123456789abcdef");
    ra_error err = {0};
    ra_writer *w = ra_writer_open(path, "plan", meta, prov, &err);
    char id1[33], id2[33];
    EXPECT_EQ_INT(ra_writer_close(w, id1, &err), 0);
    ra_reader *r = ra_reader_open(path, &err);
    EXPECT(r != NULL);
    if (!r) return;
    EXPECT(json_equal(ra_reader_meta(r), meta));
    EXPECT(json_equal(ra_reader_provenance(r), prov));
    const json_t *m = ra_reader_meta(r);
    EXPECT(json_integer_value(json_object_get(m, "big")) == INT64_MAX);
    EXPECT(json_integer_value(json_object_get(m, "small")) == INT64_MIN);
    EXPECT(json_real_value(json_object_get(m, "tiny")) == 4.9e-324);
    EXPECT_STR(json_string_value(json_object_get(m, "text")), "h\xc3\xa9llo \xe2\x9c\x93 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80");
    /* writing the header back gives the same bytes, hence the same content id */
    ra_writer *w2 = ra_writer_open(tmp_path("meta2.ra"), "plan", ra_reader_meta(r), ra_reader_provenance(r), &err);
    EXPECT_EQ_INT(ra_writer_close(w2, id2, &err), 0);
    EXPECT_STR(id1, id2);
    ra_tensor_info info;
    EXPECT_EQ_INT(ra_reader_next(r, &info, &err), 0);
    ra_reader_close(r);
    json_decref(meta);
    json_decref(prov);
}

/* Walk the file's top-level msgpack objects with msgpack-c, independently of
 * the reader, and hash everything before the last one (the trailer). */
TEST(content_id_is_xxh3_128_of_bytes_before_trailer) {
    test_seed(17);
    const char *path = tmp_path("id.ra");
    ra_error err = {0};
    json_t *meta = json_pack("{s:i}", "k", 3);
    ra_writer *w = ra_writer_open(path, "model", meta, NULL, &err);
    ra_writer_set_split_bytes(w, 100);
    float x[200];
    test_fill(x, 200, 1.0f);
    int64_t shape[2] = {10, 20};
    ra_writer_tensor(w, "w", RA_F32, 2, shape, x, &err);
    char id[33];
    EXPECT_EQ_INT(ra_writer_close(w, id, &err), 0);
    size_t n;
    unsigned char *b = slurp(path, &n);
    size_t off = 0, last = 0;
    int objects = 0;
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    while (off < n) {
        last = off;
        EXPECT_EQ_INT(msgpack_unpack_next(&u, (const char *)b, n, &off), MSGPACK_UNPACK_SUCCESS);
        objects++;
        if (objects > 100) break;
    }
    EXPECT_EQ_INT(objects, 1 + 8 + 1); /* header, 800 bytes in parts of 100, trailer */
    /* u holds the last object (the trailer), which starts at offset last */
    XXH128_canonical_t c;
    size_t start = last;
    msgpack_object t = u.data;
    EXPECT_EQ_INT(t.type, MSGPACK_OBJECT_MAP);
    XXH128_canonicalFromHash(&c, XXH3_128bits(b, start));
    char hex[33];
    for (int i = 0; i < 16; i++) snprintf(hex + 2 * i, 3, "%02x", c.digest[i]);
    EXPECT_STR(id, hex);
    /* the trailer map itself: {"end": "ra", "records": 8, "digest": id} */
    EXPECT_EQ_INT(t.via.map.size, 3);
    if (t.via.map.size == 3) {
        EXPECT(t.via.map.ptr[0].val.type == MSGPACK_OBJECT_STR && memcmp(t.via.map.ptr[0].val.via.str.ptr, "ra", 2) == 0);
        EXPECT_EQ_INT(t.via.map.ptr[1].val.via.u64, 8);
        EXPECT(t.via.map.ptr[2].val.via.str.size == 32 && memcmp(t.via.map.ptr[2].val.via.str.ptr, hex, 32) == 0);
    }
    char vid[33];
    EXPECT_EQ_INT(ra_verify(path, vid, &err), 0);
    EXPECT_STR(vid, hex);
    msgpack_unpacked_destroy(&u);
    free(b);
    json_decref(meta);
}

/* A small stream with several records, parts, meta and an empty tensor. */
static void write_small_stream(const char *path) {
    ra_error err = {0};
    json_t *meta = json_pack("{s:{s:i,s:[f,b]}}", "config", "layers", 2, "x", 0.25, 1);
    ra_writer *w = ra_writer_open(path, "model", meta, NULL, &err);
    ra_writer_set_split_bytes(w, 12);
    int64_t s2[2] = {2, 5}, s0[1] = {0};
    uint16_t h[10];
    for (int i = 0; i < 10; i++) h[i] = (uint16_t)(0x3c00 + 37 * i);
    int32_t ids[3] = {7, -1, 1 << 20};
    ra_writer_tensor(w, "emb", RA_BF16, 2, s2, h, &err);
    ra_writer_tensor(w, "none", RA_F32, 1, s0, NULL, &err);
    ra_writer_tensor(w, "ids", RA_I32, 0, NULL, ids, &err);
    ra_writer_close(w, NULL, &err);
    json_decref(meta);
}

TEST(truncation_at_every_offset_is_rejected) {
    const char *path = tmp_path("small.ra"), *cut = tmp_path("cut.ra");
    write_small_stream(path);
    size_t n;
    unsigned char *b = slurp(path, &n);
    ra_error err = {0};
    EXPECT_EQ_INT(read_whole(path, 1, &err), 0);
    int bad = 0;
    for (size_t len = 0; len < n && bad < 5; len++) {
        spit(cut, b, len);
        for (int mode = 0; mode < 3; mode++) {
            memset(&err, 0, sizeof err);
            int rc = read_whole(cut, mode, &err);
            if (rc != EX_DATAERR || !strstr(err.msg, "truncated") || !strstr(err.msg, "cut.ra")) {
                EXPECT_MSG(0, "cut at %zu of %zu (mode %d): rc %d, \"%s\"", len, n, mode, rc, err.msg);
                bad++;
            }
        }
    }
    EXPECT(n > 100);
    free(b);
}

TEST(flipped_bytes_are_rejected) {
    const char *path = tmp_path("small.ra"), *bad_path = tmp_path("flip.ra");
    write_small_stream(path);
    size_t n;
    unsigned char *b = slurp(path, &n);
    static const unsigned char masks[] = {0xff, 0x01, 0x80, 0x20};
    int bad = 0;
    for (size_t i = 0; i < n && bad < 5; i++) {
        for (size_t m = 0; m < sizeof masks; m++) {
            b[i] ^= masks[m];
            spit(bad_path, b, n);
            b[i] ^= masks[m];
            for (int mode = 0; mode < 2; mode++) {
                ra_error err = {0};
                int rc = read_whole(bad_path, mode, &err);
                if (rc == 0 || !strstr(err.msg, "flip.ra")) {
                    EXPECT_MSG(0, "byte %zu ^ 0x%02x accepted (rc %d, \"%s\")", i, masks[m], rc, err.msg);
                    bad++;
                }
            }
        }
    }
    free(b);
}

/* ------------------------------------------------ hand-made streams for errors */

typedef struct craft {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    int records;
} craft;

static void pstr(msgpack_packer *pk, const char *s) {
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

static void craft_begin(craft *c) {
    msgpack_sbuffer_init(&c->sb);
    msgpack_packer_init(&c->pk, &c->sb, msgpack_sbuffer_write);
    c->records = 0;
}

static void craft_header(craft *c) {
    msgpack_pack_map(&c->pk, 5);
    pstr(&c->pk, "format"), pstr(&c->pk, "ra");
    pstr(&c->pk, "version"), msgpack_pack_int(&c->pk, 1);
    pstr(&c->pk, "kind"), pstr(&c->pk, "model");
    pstr(&c->pk, "meta"), msgpack_pack_map(&c->pk, 0);
    pstr(&c->pk, "provenance"), msgpack_pack_map(&c->pk, 0);
}

/* part < 0: no part keys; data_len: the bin length actually written */
static void craft_record(craft *c, const char *name, const char *dtype, int ndim, const int64_t *shape, int part,
                         int parts, size_t data_len) {
    msgpack_pack_map(&c->pk, part < 0 ? 4 : 6);
    pstr(&c->pk, "name"), pstr(&c->pk, name);
    pstr(&c->pk, "dtype"), pstr(&c->pk, dtype);
    pstr(&c->pk, "shape"), msgpack_pack_array(&c->pk, (size_t)ndim);
    for (int i = 0; i < ndim; i++) msgpack_pack_int64(&c->pk, shape[i]);
    if (part >= 0) {
        pstr(&c->pk, "part"), msgpack_pack_int(&c->pk, part);
        pstr(&c->pk, "parts"), msgpack_pack_int(&c->pk, parts);
    }
    pstr(&c->pk, "data");
    msgpack_pack_bin(&c->pk, data_len);
    for (size_t i = 0; i < data_len; i++) {
        char byte = (char)(i * 7 + 1);
        msgpack_pack_bin_body(&c->pk, &byte, 1);
    }
    c->records++;
}

/* Append a correct trailer (records = -1: the true count) and write path. */
static void craft_finish(craft *c, int records, const char *path) {
    XXH128_canonical_t can;
    XXH128_canonicalFromHash(&can, XXH3_128bits(c->sb.data, c->sb.size));
    char hex[33];
    for (int i = 0; i < 16; i++) snprintf(hex + 2 * i, 3, "%02x", can.digest[i]);
    msgpack_pack_map(&c->pk, 3);
    pstr(&c->pk, "end"), pstr(&c->pk, "ra");
    pstr(&c->pk, "records"), msgpack_pack_int(&c->pk, records < 0 ? c->records : records);
    pstr(&c->pk, "digest"), pstr(&c->pk, hex);
    spit(path, c->sb.data, c->sb.size);
    msgpack_sbuffer_destroy(&c->sb);
}

static void expect_error(const char *path, int code, const char *a, const char *b, int line) {
    ra_error err = {0};
    int rc = read_whole(path, 1, &err);
    if (rc != code || !strstr(err.msg, a) || (b && !strstr(err.msg, b)) || !strstr(err.msg, path))
        EXPECT_MSG(0, "line %d: rc %d (want %d), message \"%s\" (want \"%s\"%s%s)", line, rc, code, err.msg, a,
                   b ? " and " : "", b ? b : "");
}
#define EXPECT_ERROR(path, code, a, b) expect_error(path, code, a, b, __LINE__)

TEST(crafted_valid_stream_is_accepted) {
    /* the crafting helpers themselves produce a valid stream */
    const char *p = tmp_path("ok.ra");
    craft c;
    int64_t s[1] = {3};
    craft_begin(&c);
    craft_header(&c);
    craft_record(&c, "a", "f32", 1, s, -1, 0, 12);
    craft_record(&c, "b", "u8", 1, s, 0, 2, 2);
    craft_record(&c, "b", "u8", 1, s, 1, 2, 1);
    craft_finish(&c, -1, p);
    ra_error err = {0};
    EXPECT_EQ_INT(read_whole(p, 1, &err), 0);
    EXPECT_EQ_INT(read_whole(p, 0, &err), 0);
}

TEST(specific_errors_have_specific_messages) {
    const char *p = tmp_path("bad.ra");
    craft c;
    int64_t s[2] = {2, 3};

    craft_begin(&c); /* duplicate names */
    craft_header(&c);
    craft_record(&c, "w", "f32", 2, s, -1, 0, 24);
    craft_record(&c, "w", "f32", 2, s, -1, 0, 24);
    craft_finish(&c, -1, p);
    EXPECT_ERROR(p, EX_DATAERR, "record 1 (tensor 'w')", "duplicate tensor name");

    craft_begin(&c); /* data length does not match shape x dtype */
    craft_header(&c);
    craft_record(&c, "w", "f32", 2, s, -1, 0, 20);
    craft_finish(&c, -1, p);
    EXPECT_ERROR(p, EX_DATAERR, "record 0 (tensor 'w')", "shape [2,3] x f32 needs 24 bytes but data has 20 bytes");

    craft_begin(&c); /* unknown dtype */
    craft_header(&c);
    craft_record(&c, "w", "f8", 2, s, -1, 0, 6);
    craft_finish(&c, -1, p);
    EXPECT_ERROR(p, EX_DATAERR, "unknown dtype 'f8'", "record 0");

    craft_begin(&c); /* record count in the trailer */
    craft_header(&c);
    craft_record(&c, "w", "u8", 2, s, -1, 0, 6);
    craft_finish(&c, 2, p);
    EXPECT_ERROR(p, EX_DATAERR, "record count mismatch", "says 2 records, the stream has 1");

    craft_begin(&c); /* parts out of order */
    craft_header(&c);
    craft_record(&c, "w", "u8", 2, s, 0, 3, 2);
    craft_record(&c, "w", "u8", 2, s, 2, 3, 2);
    craft_record(&c, "w", "u8", 2, s, 1, 3, 2);
    craft_finish(&c, -1, p);
    EXPECT_ERROR(p, EX_DATAERR, "expected part 1 of 3 of tensor 'w', found part 2 of 3", "record 1");

    craft_begin(&c); /* a part missing before the trailer */
    craft_header(&c);
    craft_record(&c, "w", "u8", 2, s, 0, 2, 3);
    craft_finish(&c, -1, p);
    EXPECT_ERROR(p, EX_DATAERR, "part 1 of 2 is missing", "tensor 'w'");

    craft_begin(&c); /* parts that do not add up */
    craft_header(&c);
    craft_record(&c, "w", "u8", 2, s, 0, 2, 3);
    craft_record(&c, "w", "u8", 2, s, 1, 2, 2);
    craft_finish(&c, -1, p);
    EXPECT_ERROR(p, EX_DATAERR, "part 1 of 2 has 2 data bytes", "record 1");

    craft_begin(&c); /* a part that starts in the middle */
    craft_header(&c);
    craft_record(&c, "w", "u8", 2, s, 1, 2, 3);
    craft_finish(&c, -1, p);
    EXPECT_ERROR(p, EX_DATAERR, "part 1 of 2 without the parts before it", NULL);

    craft_begin(&c); /* bad version */
    msgpack_pack_map(&c.pk, 5);
    pstr(&c.pk, "format"), pstr(&c.pk, "ra");
    pstr(&c.pk, "version"), msgpack_pack_int(&c.pk, 2);
    pstr(&c.pk, "kind"), pstr(&c.pk, "model");
    pstr(&c.pk, "meta"), msgpack_pack_map(&c.pk, 0);
    pstr(&c.pk, "provenance"), msgpack_pack_map(&c.pk, 0);
    craft_finish(&c, -1, p);
    EXPECT_ERROR(p, EX_DATAERR, "header: unsupported version 2", NULL);

    craft_begin(&c); /* wrong format */
    msgpack_pack_map(&c.pk, 1);
    pstr(&c.pk, "format"), pstr(&c.pk, "safetensors");
    craft_finish(&c, -1, p);
    EXPECT_ERROR(p, EX_DATAERR, "not a ra stream", NULL);

    craft_begin(&c); /* version of the wrong type */
    msgpack_pack_map(&c.pk, 5);
    pstr(&c.pk, "format"), pstr(&c.pk, "ra");
    pstr(&c.pk, "version"), pstr(&c.pk, "1");
    pstr(&c.pk, "kind"), pstr(&c.pk, "model");
    pstr(&c.pk, "meta"), msgpack_pack_map(&c.pk, 0);
    pstr(&c.pk, "provenance"), msgpack_pack_map(&c.pk, 0);
    craft_finish(&c, -1, p);
    EXPECT_ERROR(p, EX_DATAERR, "'version' must be an integer", "header");

    craft_begin(&c); /* meta of the wrong type */
    msgpack_pack_map(&c.pk, 5);
    pstr(&c.pk, "format"), pstr(&c.pk, "ra");
    pstr(&c.pk, "version"), msgpack_pack_int(&c.pk, 1);
    pstr(&c.pk, "kind"), pstr(&c.pk, "model");
    pstr(&c.pk, "meta"), msgpack_pack_array(&c.pk, 0);
    pstr(&c.pk, "provenance"), msgpack_pack_map(&c.pk, 0);
    craft_finish(&c, -1, p);
    EXPECT_ERROR(p, EX_DATAERR, "'meta' must be a map", "header");

    craft_begin(&c); /* binary data inside meta */
    msgpack_pack_map(&c.pk, 5);
    pstr(&c.pk, "format"), pstr(&c.pk, "ra");
    pstr(&c.pk, "version"), msgpack_pack_int(&c.pk, 1);
    pstr(&c.pk, "kind"), pstr(&c.pk, "model");
    pstr(&c.pk, "meta"), msgpack_pack_map(&c.pk, 1), pstr(&c.pk, "cfg"), msgpack_pack_array(&c.pk, 2);
    msgpack_pack_int(&c.pk, 1), msgpack_pack_bin(&c.pk, 1), msgpack_pack_bin_body(&c.pk, "x", 1);
    pstr(&c.pk, "provenance"), msgpack_pack_map(&c.pk, 0);
    craft_finish(&c, -1, p);
    EXPECT_ERROR(p, EX_DATAERR, "meta.cfg[1]: binary data is not allowed", NULL);

    craft_begin(&c); /* unknown kind, missing provenance */
    msgpack_pack_map(&c.pk, 4);
    pstr(&c.pk, "format"), pstr(&c.pk, "ra");
    pstr(&c.pk, "version"), msgpack_pack_int(&c.pk, 1);
    pstr(&c.pk, "kind"), pstr(&c.pk, "model");
    pstr(&c.pk, "meta"), msgpack_pack_map(&c.pk, 0);
    craft_finish(&c, -1, p);
    EXPECT_ERROR(p, EX_DATAERR, "missing 'provenance'", NULL);

    craft_begin(&c); /* data not the last key */
    craft_header(&c);
    msgpack_pack_map(&c.pk, 4);
    pstr(&c.pk, "name"), pstr(&c.pk, "w");
    pstr(&c.pk, "data"), msgpack_pack_bin(&c.pk, 0);
    pstr(&c.pk, "dtype"), pstr(&c.pk, "u8");
    pstr(&c.pk, "shape"), msgpack_pack_array(&c.pk, 1), msgpack_pack_int(&c.pk, 0);
    craft_finish(&c, 1, p);
    EXPECT_ERROR(p, EX_DATAERR, "'data' must be the last key", "record 0 (tensor 'w')");

    craft_begin(&c); /* shape element of the wrong type */
    craft_header(&c);
    msgpack_pack_map(&c.pk, 4);
    pstr(&c.pk, "name"), pstr(&c.pk, "w");
    pstr(&c.pk, "dtype"), pstr(&c.pk, "u8");
    pstr(&c.pk, "shape"), msgpack_pack_array(&c.pk, 1), msgpack_pack_double(&c.pk, 1.0);
    pstr(&c.pk, "data"), msgpack_pack_bin(&c.pk, 0);
    craft_finish(&c, 1, p);
    EXPECT_ERROR(p, EX_DATAERR, "'shape' element 0 is not an integer", "tensor 'w'");

    craft_begin(&c); /* trailing bytes */
    craft_header(&c);
    craft_finish(&c, -1, p);
    FILE *f = fopen(p, "ab");
    fputc(0xc0, f);
    fclose(f);
    EXPECT_ERROR(p, EX_DATAERR, "trailing bytes after the trailer", NULL);

    craft_begin(&c); /* bad digest: change one data byte after computing it */
    craft_header(&c);
    craft_record(&c, "w", "u8", 2, s, -1, 0, 6);
    craft_finish(&c, -1, p);
    size_t n;
    unsigned char *b = slurp(p, &n);
    b[n - 60] ^= 1; /* the last data byte, just before the 59-byte trailer */
    spit(p, b, n);
    free(b);
    EXPECT_ERROR(p, EX_DATAERR, "bad digest: the trailer says", "but the content hashes to");

    /* not a ra stream at all */
    spit(p, "{\"format\": \"ra\"}", 16);
    EXPECT_ERROR(p, EX_DATAERR, "not a ra stream", NULL);

    /* a declared huge string is refused without allocating it */
    unsigned char huge[] = {0x81, 0xdb, 0xff, 0xff, 0xff, 0xf0, 'x'};
    spit(p, huge, sizeof huge);
    EXPECT_ERROR(p, EX_DATAERR, "larger than the limit", "header");
    unsigned char many[] = {0x85, 0xa6, 'f', 'o', 'r', 'm', 'a', 't', 0xdd, 0xff, 0xff, 0xff, 0xff, 0};
    spit(p, many, sizeof many);
    EXPECT_ERROR(p, EX_DATAERR, "larger than the limit", "header");

    /* missing file, directory */
    ra_error err = {0};
    EXPECT(ra_reader_open(tmp_path("nope.ra"), &err) == NULL);
    EXPECT_EQ_INT(err.code, EX_NOINPUT);
    EXPECT(strstr(err.msg, "nope.ra") != NULL);
    EXPECT(ra_reader_open(tmpdir, &err) == NULL);
    EXPECT_EQ_INT(err.code, EX_NOINPUT);
}

/* ------------------------------------------------------------------- writer */

static int count_temp_files(void) {
    DIR *d = opendir(tmpdir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strstr(e->d_name, ".tmp.")) n++;
    closedir(d);
    return n;
}

TEST(writer_is_atomic) {
    const char *path = tmp_path("atomic.ra");
    spit(path, "old", 3);
    ra_error err = {0};
    int64_t shape[1] = {4};
    float x[4] = {1, 2, 3, 4};
    ra_writer *w = ra_writer_open(path, "model", NULL, NULL, &err);
    EXPECT(w != NULL);
    ra_writer_tensor(w, "x", RA_F32, 1, shape, x, &err);
    size_t n;
    unsigned char *b = slurp(path, &n);
    EXPECT(n == 3 && memcmp(b, "old", 3) == 0); /* untouched until close */
    free(b);
    EXPECT_EQ_INT(count_temp_files(), 1);
    ra_writer_abort(w);
    EXPECT_EQ_INT(count_temp_files(), 0);
    b = slurp(path, &n);
    EXPECT(n == 3 && memcmp(b, "old", 3) == 0);
    free(b);

    w = ra_writer_open(path, "model", NULL, NULL, &err);
    ra_writer_tensor(w, "x", RA_F32, 1, shape, x, &err);
    EXPECT_EQ_INT(ra_writer_close(w, NULL, &err), 0);
    EXPECT_EQ_INT(count_temp_files(), 0);
    EXPECT_EQ_INT(read_whole(path, 1, &err), 0);

    /* a new path: nothing exists before close, nothing after abort */
    const char *fresh = tmp_path("fresh.ra");
    w = ra_writer_open(fresh, "model", NULL, NULL, &err);
    EXPECT(access(fresh, F_OK) != 0);
    ra_writer_abort(w);
    EXPECT(access(fresh, F_OK) != 0);
    EXPECT_EQ_INT(count_temp_files(), 0);

    /* an unwritable directory */
    EXPECT(ra_writer_open("/nonexistent-dir/x.ra", "model", NULL, NULL, &err) == NULL);
    EXPECT(err.code != 0 && strstr(err.msg, "/nonexistent-dir/x.ra") != NULL);
}

TEST(writer_refuses_bad_use) {
    const char *path = tmp_path("refuse.ra");
    ra_error err = {0};
    int64_t shape[1] = {4};
    float x[5] = {1, 2, 3, 4, 5};
    ra_writer *w = ra_writer_open(path, "model", NULL, NULL, &err);
    EXPECT_EQ_INT(ra_writer_tensor(w, "x", RA_F32, 1, shape, x, &err), 0);
    /* a duplicate is refused and leaves the writer usable */
    EXPECT_EQ_INT(ra_writer_tensor(w, "x", RA_F32, 1, shape, x, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "duplicate tensor name 'x'") != NULL && strstr(err.msg, "refuse.ra") != NULL);
    int64_t neg[1] = {-2};
    EXPECT_EQ_INT(ra_writer_tensor(w, "n", RA_F32, 1, neg, x, &err), EX_DATAERR);
    EXPECT_EQ_INT(ra_writer_tensor(w, "", RA_F32, 1, shape, x, &err), EX_DATAERR);
    EXPECT_EQ_INT(ra_writer_close(w, NULL, &err), 0);
    EXPECT_EQ_INT(read_whole(path, 1, &err), 0);

    /* too many bytes, then too few: the stream is abandoned, nothing is written */
    const char *p2 = tmp_path("refuse2.ra");
    w = ra_writer_open(p2, "model", NULL, NULL, &err);
    EXPECT_EQ_INT(ra_writer_begin(w, "y", RA_F32, 1, shape, &err), 0);
    EXPECT_EQ_INT(ra_writer_data(w, x, 20, &err), EX_SOFTWARE);
    EXPECT(strstr(err.msg, "past its size") != NULL);
    EXPECT(ra_writer_close(w, NULL, &err) != 0);
    EXPECT(access(p2, F_OK) != 0);
    w = ra_writer_open(p2, "model", NULL, NULL, &err);
    ra_writer_begin(w, "y", RA_F32, 1, shape, &err);
    ra_writer_data(w, x, 12, &err);
    EXPECT_EQ_INT(ra_writer_end(w, &err), EX_SOFTWARE);
    EXPECT(strstr(err.msg, "12 of 16 bytes") != NULL);
    EXPECT(ra_writer_close(w, NULL, &err) != 0);
    EXPECT(access(p2, F_OK) != 0);
    EXPECT_EQ_INT(count_temp_files(), 0);
    EXPECT(ra_writer_open(p2, "weights", NULL, NULL, &err) == NULL); /* unknown kind */
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_stream.XXXXXX");
    if (!mkdtemp(tmpdir)) return 1;
    RUN(every_dtype_round_trips_byte_exactly);
    RUN(f32_conversions_round_to_nearest_even_and_keep_nan_inf);
    RUN(read_f32_converts_every_dtype);
    RUN(scalars_and_empty_tensors);
    RUN(multi_part_tensors_rejoin);
    RUN(streaming_write_in_odd_pieces);
    RUN(reading_from_a_pipe);
    RUN(meta_and_provenance_json_round_trip);
    RUN(content_id_is_xxh3_128_of_bytes_before_trailer);
    RUN(truncation_at_every_offset_is_rejected);
    RUN(flipped_bytes_are_rejected);
    RUN(crafted_valid_stream_is_accepted);
    RUN(specific_errors_have_specific_messages);
    RUN(writer_is_atomic);
    RUN(writer_refuses_bad_use);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) return 1;
    return test_summary();
}
