/* Model loading: Hugging Face directories (single file, sharded, bf16) and
 * model streams round-trip the weights; the content id is the documented
 * XXH3-128 (recomputed here independently) and ignores sharding; tied
 * embeddings, extra tensors and bad dtypes. */
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "model.h"
#include "safetensors.h"
#include "stream.h"
#include "test.h"

static char tmpdir[256];

static hf_config tiny_config(int qwen, int tied) {
    hf_config c;
    memset(&c, 0, sizeof c);
    strcpy(c.model_type, qwen ? "qwen2" : "llama");
    c.hidden_size = 16;
    c.intermediate_size = 24;
    c.num_layers = 2;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 6;
    c.vocab_size = 33;
    c.max_position_embeddings = 64;
    c.rms_norm_eps = 1e-6;
    c.rope_theta = 10000;
    c.tie_word_embeddings = tied;
    c.qkv_bias = qwen;
    c.bos_token_id = -1;
    c.torch_dtype = RA_F32;
    return c;
}

static ra_model *random_model(const hf_config *c, uint64_t seed) {
    ra_model *m;
    ra_error err = {0};
    if (ra_model_alloc(c, &m, &err)) {
        printf("# %s\n", err.msg);
        exit(1);
    }
    test_seed(seed);
    ra_model_tensor *t;
    int n = ra_model_tensor_list(m, &t);
    for (int i = 0; i < n; i++) test_fill(*t[i].data, (size_t)(t[i].shape[0] * (t[i].ndim == 2 ? t[i].shape[1] : 1)), 1);
    free(t);
    return m;
}

static int64_t numel(const ra_model_tensor *t) { return t->shape[0] * (t->ndim == 2 ? t->shape[1] : 1); }

/* Save m as an HF directory: config.json and the weights (stored as dtype)
 * in `shards` files, with an index when shards > 1.  extra (may be NULL) is
 * one more tensor name to add, holding the embedding's first row. */
static void save_hf(const ra_model *m, const char *dir, ra_dtype dtype, int shards, const char *extra) {
    mkdir(dir, 0755);
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_t *cfg = hf_config_to_json(&m->cfg);
    json_dump_file(cfg, path, JSON_INDENT(2));
    json_decref(cfg);
    ra_model_tensor *t;
    int n = ra_model_tensor_list((ra_model *)m, &t);
    st_write_tensor *w = calloc((size_t)n + 1, sizeof *w);
    void **bufs = calloc((size_t)n + 1, sizeof *bufs);
    for (int i = 0; i < n; i++) {
        bufs[i] = malloc((size_t)numel(&t[i]) * ra_dtype_size(dtype));
        ra_convert_from_f32(bufs[i], dtype, *t[i].data, (size_t)numel(&t[i]));
        w[i] = (st_write_tensor){t[i].name, dtype, t[i].ndim, t[i].shape, bufs[i]};
    }
    int total = n;
    int64_t extra_shape[1] = {m->cfg.hidden_size};
    if (extra) {
        bufs[n] = malloc((size_t)m->cfg.hidden_size * 4);
        memcpy(bufs[n], m->embed, (size_t)m->cfg.hidden_size * 4);
        w[total++] = (st_write_tensor){extra, RA_F32, 1, extra_shape, bufs[n]};
    }
    ra_error err = {0};
    if (shards == 1) {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        if (st_write(path, w, total, NULL, &err)) printf("# %s\n", err.msg);
    } else {
        json_t *map = json_object();
        int per = (total + shards - 1) / shards;
        for (int s = 0; s < shards; s++) {
            int lo = s * per, hi = lo + per < total ? lo + per : total;
            char file[64];
            snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", s + 1, shards);
            snprintf(path, sizeof path, "%s/%s", dir, file);
            if (st_write(path, w + lo, hi - lo, NULL, &err)) printf("# %s\n", err.msg);
            for (int i = lo; i < hi; i++) json_object_set_new(map, w[i].name, json_string(file));
        }
        json_t *index = json_pack("{s:{s:i}, s:o}", "metadata", "total_size", 0, "weight_map", map);
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
        json_dump_file(index, path, 0);
        json_decref(index);
    }
    for (int i = 0; i <= n; i++) free(bufs[i]);
    free(bufs), free(w), free(t);
}

static int same_weights(const ra_model *a, const ra_model *b, ra_dtype rounding) {
    ra_model_tensor *ta, *tb;
    int n = ra_model_tensor_list((ra_model *)a, &ta), nb = ra_model_tensor_list((ra_model *)b, &tb), ok = n == nb;
    for (int i = 0; ok && i < n; i++) {
        ok = strcmp(ta[i].name, tb[i].name) == 0;
        for (int64_t j = 0; ok && j < numel(&ta[i]); j++) {
            float want = (*ta[i].data)[j];
            if (rounding == RA_BF16) want = ra_bf16_to_f32(ra_f32_to_bf16(want));
            if (rounding == RA_F16) want = ra_f16_to_f32(ra_f32_to_f16(want));
            ok = (*tb[i].data)[j] == want;
            if (!ok) printf("# %s[%lld]: %g vs %g\n", ta[i].name, (long long)j, (*tb[i].data)[j], want);
        }
    }
    free(ta), free(tb);
    return ok;
}

/* The id as model.h documents it, from the files, written independently:
 * every tensor of every file, sorted by name. */
typedef struct named {
    const st_tensor *t;
} named;
static int cmp_named(const void *a, const void *b) { return strcmp(((const named *)a)->t->name, ((const named *)b)->t->name); }

static void documented_id(const char *dir, char out[33]) {
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "rb");
    char cfg[65536];
    size_t len = fread(cfg, 1, sizeof cfg, f);
    fclose(f);
    st_set *st;
    ra_error err = {0};
    if (st_open(dir, &st, &err)) printf("# %s\n", err.msg);
    named *v = calloc((size_t)st->n_tensors, sizeof *v);
    for (int i = 0; i < st->n_tensors; i++) v[i].t = &st->tensors[i];
    qsort(v, (size_t)st->n_tensors, sizeof *v, cmp_named);
    /* concatenate everything, then one-shot XXH3-128 */
    size_t cap = len + 1;
    for (int i = 0; i < st->n_tensors; i++) cap += strlen(v[i].t->name) + 16 + 4 + 8 * (size_t)v[i].t->ndim + v[i].t->nbytes;
    unsigned char *buf = malloc(cap), *p = buf;
    memcpy(p, cfg, len), p += len;
    for (int i = 0; i < st->n_tensors; i++) {
        const st_tensor *t = v[i].t;
        const char *dt = t->dtype == RA_BF16 ? "BF16" : t->dtype == RA_F16 ? "F16" : t->dtype == RA_F32 ? "F32" : "?";
        memcpy(p, t->name, strlen(t->name) + 1), p += strlen(t->name) + 1;
        memcpy(p, dt, strlen(dt) + 1), p += strlen(dt) + 1;
        uint32_t nd = (uint32_t)t->ndim;
        for (int b = 0; b < 4; b++) *p++ = (unsigned char)(nd >> (8 * b));
        for (int d = 0; d < t->ndim; d++)
            for (int b = 0; b < 8; b++) *p++ = (unsigned char)((uint64_t)t->shape[d] >> (8 * b));
        memcpy(p, t->data, t->nbytes), p += t->nbytes;
    }
    XXH128_hash_t h = XXH3_128bits(buf, (size_t)(p - buf));
    snprintf(out, 33, "%016llx%016llx", (unsigned long long)h.high64, (unsigned long long)h.low64);
    free(buf), free(v);
    st_close(st);
}

static void subdir(char *out, size_t n, const char *name) { snprintf(out, n, "%s/%s", tmpdir, name); }

TEST(hf_directory_round_trips_and_id_is_documented) {
    hf_config c = tiny_config(0, 0);
    ra_model *m = random_model(&c, 1);
    char one[300], three[300];
    subdir(one, sizeof one, "one");
    subdir(three, sizeof three, "three");
    save_hf(m, one, RA_F32, 1, NULL);
    save_hf(m, three, RA_F32, 3, NULL);
    ra_error err = {0};
    ra_model *a = NULL, *b = NULL;
    EXPECT_EQ_INT(ra_model_load(one, &a, &err), 0);
    EXPECT_EQ_INT(ra_model_load(three, &b, &err), 0);
    if (a && b) {
        EXPECT(same_weights(m, a, RA_F32));
        EXPECT(same_weights(m, b, RA_F32));
        EXPECT(a->lm_head != a->embed);
        char want[33];
        documented_id(one, want);
        EXPECT_STR(a->content_id, want);
        EXPECT_STR(b->content_id, want); /* sharding does not change the id */
        EXPECT_STR(a->warning, "");
    }
    ra_model_free(a), ra_model_free(b);
    /* one weight changed by one ulp: another id */
    m->layers[1].w_up[5] = nextafterf(m->layers[1].w_up[5], 10);
    save_hf(m, one, RA_F32, 1, NULL);
    EXPECT_EQ_INT(ra_model_load(one, &a, &err), 0);
    char old[33];
    documented_id(three, old);
    if (a) EXPECT(strcmp(a->content_id, old) != 0);
    ra_model_free(a);
    ra_model_free(m);
}

TEST(bf16_and_f16_weights_convert_exactly) {
    hf_config c = tiny_config(1, 1);
    ra_model *m = random_model(&c, 2);
    ra_dtype types[2] = {RA_BF16, RA_F16};
    for (int i = 0; i < 2; i++) {
        char dir[300];
        subdir(dir, sizeof dir, i ? "f16" : "bf16");
        save_hf(m, dir, types[i], 2, NULL);
        ra_model *a = NULL;
        ra_error err = {0};
        EXPECT_EQ_INT(ra_model_load(dir, &a, &err), 0);
        if (!a) continue;
        EXPECT(same_weights(m, a, types[i]));
        EXPECT(a->lm_head == a->embed); /* tied */
        EXPECT(a->layers[0].bq && a->layers[0].bk && a->layers[0].bv && !a->layers[0].bo);
        ra_model_free(a);
    }
    ra_model_free(m);
}

TEST(extra_tensors_warn_inv_freq_does_not) {
    hf_config c = tiny_config(0, 1);
    ra_model *m = random_model(&c, 3);
    char dir[300];
    ra_error err = {0};
    ra_model *a = NULL;
    subdir(dir, sizeof dir, "inv");
    save_hf(m, dir, RA_F32, 1, "model.layers.0.self_attn.rotary_emb.inv_freq");
    EXPECT_EQ_INT(ra_model_load(dir, &a, &err), 0);
    if (a) EXPECT_STR(a->warning, "");
    ra_model_free(a);
    subdir(dir, sizeof dir, "extra");
    save_hf(m, dir, RA_F32, 1, "model.layers.0.mystery.weight");
    EXPECT_EQ_INT(ra_model_load(dir, &a, &err), 0);
    if (a) EXPECT(strstr(a->warning, "model.layers.0.mystery.weight") != NULL);
    ra_model_free(a);
    ra_model_free(m);
}

TEST(model_stream_round_trips_with_its_digest_as_id) {
    hf_config c = tiny_config(1, 0);
    ra_model *m = random_model(&c, 4);
    char path[300], id[33], verified[33];
    subdir(path, sizeof path, "model.ra");
    ra_error err = {0};
    EXPECT_EQ_INT(ra_model_write_stream(m, path, RA_F32, NULL, id, &err), 0);
    EXPECT_EQ_INT(ra_verify(path, verified, &err), 0);
    EXPECT_STR(id, verified);
    ra_model *a = NULL;
    EXPECT_EQ_INT(ra_model_load(path, &a, &err), 0);
    if (a) {
        EXPECT(same_weights(m, a, RA_F32));
        EXPECT_STR(a->content_id, id);
        EXPECT_EQ_INT(a->cfg.qkv_bias, 1);
        EXPECT_EQ_INT(a->cfg.head_dim, 6);
    }
    ra_model_free(a);
    /* a stream of another kind is refused */
    json_t *meta = json_object();
    ra_writer *w = ra_writer_open(path, "scores", meta, NULL, &err);
    json_decref(meta);
    EXPECT_EQ_INT(ra_writer_close(w, NULL, &err), 0);
    EXPECT_EQ_INT(ra_model_load(path, &a, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "'scores'") != NULL);
    ra_model_free(m);
}

TEST(wrong_dtype_and_missing_inputs) {
    ra_error err = {0};
    ra_model *a = NULL;
    char dir[300], path[400];
    subdir(dir, sizeof dir, "nothing-here");
    EXPECT_EQ_INT(ra_model_load(dir, &a, &err), EX_NOINPUT);
    /* an integer tensor where a weight belongs */
    hf_config c = tiny_config(0, 1);
    ra_model *m = random_model(&c, 5);
    subdir(dir, sizeof dir, "int");
    save_hf(m, dir, RA_F32, 1, NULL);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ra_model_tensor *t;
    int n = ra_model_tensor_list(m, &t);
    st_write_tensor *w = calloc((size_t)n, sizeof *w);
    int32_t *ints = calloc((size_t)numel(&t[n - 1]), 4);
    for (int i = 0; i < n; i++)
        w[i] = (st_write_tensor){t[i].name, i == n - 1 ? RA_I32 : RA_F32, t[i].ndim, t[i].shape, i == n - 1 ? (void *)ints : *t[i].data};
    EXPECT_EQ_INT(st_write(path, w, n, NULL, &err), 0);
    EXPECT_EQ_INT(ra_model_load(dir, &a, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, t[n - 1].name) && strstr(err.msg, "float"));
    free(w), free(ints), free(t);
    ra_model_free(m);
}

/* ra_model_load_view: the same model as ra_model_load but with every weight
 * left in the checkpoint; each entry, as bf16 (ra_model_view_to_bf16, split
 * at odd offsets), equals ra_f32_to_bf16 of the fp32 load's weight (bf16,
 * f16, f32 storage, sharded, tied and untied); the content id, computed on
 * request, equals the documented one; a model stream loads in full. */
TEST(view_leaves_weights_in_the_checkpoint) {
    static const struct { int qwen, tied, shards; ra_dtype dtype; } cases[] = {
        {0, 0, 1, RA_BF16}, {1, 1, 2, RA_BF16}, {0, 1, 3, RA_F16}, {1, 0, 1, RA_F32}};
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        hf_config c = tiny_config(cases[k].qwen, cases[k].tied);
        ra_model *m = random_model(&c, 10 + k);
        char dir[300], name[32];
        snprintf(name, sizeof name, "view%zu", k);
        subdir(dir, sizeof dir, name);
        save_hf(m, dir, cases[k].dtype, cases[k].shards, NULL);
        ra_model *full = NULL, *v = NULL;
        ra_error err = {0};
        EXPECT_EQ_INT(ra_model_load(dir, &full, &err), 0);
        EXPECT_EQ_INT(ra_model_load_view(dir, &v, &err), 0);
        if (!full || !v) {
            ra_model_free(full), ra_model_free(v), ra_model_free(m);
            continue;
        }
        EXPECT(v->view != NULL);
        EXPECT_STR(v->content_id, "");
        ra_model_tensor *t;
        int n = ra_model_tensor_list(v, &t), bad = 0, unset = 0;
        ra_model_tensor *tf;
        ra_model_tensor_list(full, &tf);
        EXPECT_EQ_INT(v->view->n, n);
        for (int i = 0; i < n && i < v->view->n; i++) {
            const ra_model_view_entry *e = &v->view->e[i];
            EXPECT(e->slot == t[i].data && e->numel == numel(&t[i]) && e->dtype == cases[k].dtype);
            unset += *t[i].data != NULL;
            size_t ne = (size_t)e->numel, cut = ne / 3 + 1 < ne ? ne / 3 + 1 : ne;
            uint16_t *got = malloc(ne * sizeof(uint16_t) + 2);
            ra_model_view_to_bf16(got, e, 0, cut);
            ra_model_view_to_bf16(got + cut, e, cut, ne - cut);
            for (size_t j = 0; j < ne; j++) bad += got[j] != ra_f32_to_bf16((*tf[i].data)[j]);
            free(got);
        }
        printf("# case %zu: %d entries, %d values differ from the fp32 load's bf16, %d weights set\n", k, n, bad, unset);
        EXPECT_EQ_INT(bad, 0);
        EXPECT_EQ_INT(unset, 0);
        EXPECT(cases[k].tied ? v->lm_head == v->embed : 1);
        ra_model_view_content_id(v);
        EXPECT_STR(v->content_id, full->content_id);
        char want[33];
        documented_id(dir, want);
        EXPECT_STR(v->content_id, want);
        free(t), free(tf);
        ra_model_free(full), ra_model_free(v);
        if (k == 0) { /* a model stream: loaded in full */
            char path[300];
            subdir(path, sizeof path, "view.ra");
            EXPECT_EQ_INT(ra_model_write_stream(m, path, RA_BF16, NULL, NULL, &err), 0);
            EXPECT_EQ_INT(ra_model_load_view(path, &v, &err), 0);
            if (v) EXPECT(v->view == NULL && v->embed != NULL && v->content_id[0]);
            ra_model_free(v);
        }
        ra_model_free(m);
    }
}

/* ra_model_view_to_bf16 over many blocks (split over the cores), from
 * unaligned sources, at odd offsets: every dtype against the scalar
 * conversions. */
TEST(view_to_bf16_large_unaligned) {
    size_t n = 300007;
    float *x = malloc(n * sizeof(float));
    test_seed(77);
    test_fill(x, n, 3);
    ra_dtype types[3] = {RA_BF16, RA_F16, RA_F32};
    for (int k = 0; k < 3; k++) {
        size_t es = ra_dtype_size(types[k]);
        unsigned char *raw = malloc(n * es + 3);
        ra_convert_from_f32(raw + 1, types[k], x, n); /* +1: unaligned, as in a checkpoint */
        ra_model_view_entry e = {NULL, types[k], raw + 1, (int64_t)n};
        uint16_t *got = malloc(n * sizeof(uint16_t));
        size_t off = 70001;
        ra_model_view_to_bf16(got + off, &e, off, n - off);
        ra_model_view_to_bf16(got, &e, 0, off);
        float *f = malloc(n * sizeof(float));
        ra_convert_to_f32(f, raw + 1, types[k], n);
        size_t bad = 0;
        for (size_t j = 0; j < n; j++) bad += got[j] != ra_f32_to_bf16(f[j]);
        printf("# %s: %zu of %zu differ\n", ra_dtype_name(types[k]), bad, n);
        EXPECT_EQ_INT((int)bad, 0);
        free(raw), free(got), free(f);
    }
    free(x);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ra-test-model-XXXXXX");
    if (!mkdtemp(tmpdir)) return 1;
    RUN(hf_directory_round_trips_and_id_is_documented);
    RUN(bf16_and_f16_weights_convert_exactly);
    RUN(extra_tensors_warn_inv_freq_does_not);
    RUN(model_stream_round_trips_with_its_digest_as_id);
    RUN(wrong_dtype_and_missing_inputs);
    RUN(view_leaves_weights_in_the_checkpoint);
    RUN(view_to_bf16_large_unaligned);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) printf("# could not remove %s\n", tmpdir);
    return test_summary();
}
