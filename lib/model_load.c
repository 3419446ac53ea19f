/* Loading a model from a Hugging Face directory or a model ra stream,
 * validating every tensor against the config, the content id (defined in
 * model.h), and writing a model stream. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hybrid.h"
#include "model.h"
#include "safetensors.h"
#include "stream.h"

/* ------------------------------------------------------------- helpers */

static void shape_str(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && k < n; i++) k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

static int check_shape(const char *src, const ra_model_tensor *want, ra_dtype dtype, int ndim, const int64_t *shape,
                       ra_error *err) {
    int same = ndim == want->ndim;
    for (int i = 0; same && i < ndim; i++) same = shape[i] == want->shape[i];
    if (!same) {
        char a[128], b[128];
        shape_str(a, sizeof a, want->ndim, want->shape);
        shape_str(b, sizeof b, ndim, shape);
        return ra_fail(err, EX_DATAERR, "%s: tensor '%s': expected shape %s, got %s", src, want->name, a, b);
    }
    if (!ra_dtype_is_float(dtype))
        return ra_fail(err, EX_DATAERR, "%s: tensor '%s': expected a float dtype (bf16, f16, f32), got %s", src, want->name,
                       ra_dtype_name(dtype));
    return 0;
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Weight lookup by name: the list sorted by name, searched with bsearch. */
static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const ra_model_tensor *)a)->name, ((const ra_model_tensor *)b)->name);
}
static ra_model_tensor *find_spec(ra_model_tensor *sorted, int n, const char *name) {
    ra_model_tensor key;
    snprintf(key.name, sizeof key.name, "%s", name);
    if (strlen(name) >= sizeof key.name) return NULL;
    return bsearch(&key, sorted, (size_t)n, sizeof *sorted, cmp_tensor_name);
}

/* Extra tensors: rotary inv_freq buffers are silently ignored, lm_head of a
 * tied model is ignored, anything else is counted for one warning. */
typedef struct extras {
    int n;
    char first[128];
} extras;
static void note_extra(extras *x, const char *name, const hf_config *c) {
    if (ends_with(name, "rotary_emb.inv_freq")) return;
    if (c->tie_word_embeddings && strcmp(name, "lm_head.weight") == 0) return;
    if (!x->n++) snprintf(x->first, sizeof x->first, "%s", name);
}
static void warn_extras(ra_model *m, const extras *x) {
    if (x->n)
        snprintf(m->warning, sizeof m->warning, "%.300s: ignoring %d tensor%s the model does not use (first: '%.100s')", m->source,
                 x->n, x->n == 1 ? "" : "s", x->first);
}

static int64_t spec_numel(const ra_model_tensor *t) { return t->shape[0] * (t->ndim == 2 ? t->shape[1] : 1); }

static int read_file(const char *path, char **text, size_t *len, ra_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return ra_fail(err, errno == ENOENT ? EX_NOINPUT : EX_IOERR, "%s: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = xmalloc(cap);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) buf = xrealloc(buf, cap *= 2);
        if (n > ((size_t)64 << 20)) {
            fclose(f);
            free(buf);
            return ra_fail(err, EX_DATAERR, "%s: larger than 64 MiB, not a config file", path);
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return ra_fail(err, EX_IOERR, "%s: read error", path);
    }
    buf[n] = 0; /* n < cap: the buffer grows as soon as it is full */
    *text = buf;
    *len = n;
    return 0;
}

/* ------------------------------------------------- Hugging Face directory */

static int hybrid_from_config_text(const char *text, size_t len, const char *name, const hf_config *c,
                                   ra_hybrid_config *h, int *is_hybrid, ra_error *err) {
    *is_hybrid = 0;
    json_error_t je;
    json_t *root = json_loadb(text, len, 0, &je);
    if (!root) return 0; /* hf_config_parse accepted it; nothing more to find */
    const json_t *hj = json_object_get(root, "ra_hybrid");
    int rc = 0;
    if (hj && !json_is_null(hj)) {
        char where[600];
        snprintf(where, sizeof where, "%.500s: ra_hybrid", name);
        rc = ra_hybrid_from_json(hj, c, where, h, err);
        *is_hybrid = rc == 0;
    }
    json_decref(root);
    return rc;
}

/* What a view keeps open: the checkpoint (its maps) and the config bytes
 * the content id starts with. */
typedef struct view_priv {
    st_set *st;
    char *config;
    size_t config_len;
} view_priv;

static void view_close(ra_model_view *v) {
    view_priv *p = v->priv;
    st_close(p->st);
    free(p->config);
    free(p);
    free(v->e);
    free(v);
}

void ra_model_view_content_id(ra_model *m) {
    if (!m->view || m->content_id[0]) return;
    view_priv *p = m->view->priv;
    st_checkpoint_id(p->st, p->config, p->config_len, m->content_id); /* defined in lib/model.h */
}

void ra_model_view_to_bf16(uint16_t *dst, const ra_model_view_entry *e, size_t off, size_t n) {
    enum { BLOCK = 1 << 16, STEP = 2048 };
    size_t es = ra_dtype_size(e->dtype);
    const char *src = (const char *)e->data + off * es;
    int64_t blocks = (int64_t)((n + BLOCK - 1) / BLOCK);
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        size_t i0 = (size_t)b * BLOCK, k = n - i0 < BLOCK ? n - i0 : BLOCK;
        if (e->dtype == RA_BF16) {
            memcpy(dst + i0, src + i0 * es, k * sizeof(uint16_t));
            continue;
        }
        float buf[STEP];
        for (size_t j = 0; j < k; j += STEP) {
            size_t c = k - j < STEP ? k - j : STEP;
            ra_convert_to_f32(buf, src + (i0 + j) * es, e->dtype, c);
            ra_convert_from_f32(dst + i0 + j, RA_BF16, buf, c);
        }
    }
}

/* view: leave the weights in the checkpoint (ra_model_load_view). */
static int load_hf(const char *dir, int view, ra_model **out, ra_error *err) {
    *out = NULL;
    char cfg_path[4096];
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", dir);
    char *text = NULL;
    size_t len = 0;
    int rc = read_file(cfg_path, &text, &len, err);
    if (rc == EX_NOINPUT) return ra_fail(err, EX_NOINPUT, "%s: no config.json: not a Hugging Face model directory", dir);
    if (rc) return rc;
    hf_config c;
    if ((rc = hf_config_parse(text, len, cfg_path, &c, err)) || (rc = ra_model_check_config(&c, cfg_path, err))) {
        free(text);
        return rc;
    }
    /* An exported hybrid (ra-show --hf-out) carries meta.hybrid as "ra_hybrid". */
    ra_hybrid_config hy;
    int is_hybrid = 0;
    if ((rc = hybrid_from_config_text(text, len, cfg_path, &c, &hy, &is_hybrid, err))) {
        free(text);
        return rc;
    }
    st_set *st;
    if ((rc = st_open(dir, &st, err))) {
        free(text);
        if (is_hybrid) ra_hybrid_free(&hy);
        return rc;
    }

    ra_model *m = is_hybrid ? ra_model_shell_hybrid(&c, &hy) : ra_model_shell(&c);
    if (is_hybrid) ra_hybrid_free(&hy);
    if (is_hybrid) view = 0; /* the hybrid uploads read fp32 weights */
    snprintf(m->source, sizeof m->source, "%s", dir);
    ra_model_tensor *specs;
    int n = ra_model_tensor_list(m, &specs);
    const st_tensor **src = xmalloc((size_t)n * sizeof *src);
    for (int i = 0; i < n && !rc; i++) {
        src[i] = st_find(st, specs[i].name);
        if (!src[i]) {
            char s[128];
            shape_str(s, sizeof s, specs[i].ndim, specs[i].shape);
            rc = ra_fail(err, EX_DATAERR, "%s: tensor '%s' missing (expected shape %s)", dir, specs[i].name, s);
        } else {
            rc = check_shape(dir, &specs[i], src[i]->dtype, src[i]->ndim, src[i]->shape, err);
        }
    }
    if (!rc) {
        ra_model_tensor *sorted = xmalloc((size_t)n * sizeof *sorted);
        memcpy(sorted, specs, (size_t)n * sizeof *sorted);
        qsort(sorted, (size_t)n, sizeof *sorted, cmp_tensor_name);
        extras x = {0};
        for (int i = 0; i < st->n_tensors; i++)
            if (!find_spec(sorted, n, st->tensors[i].name)) note_extra(&x, st->tensors[i].name, &c);
        warn_extras(m, &x);
        free(sorted);
        /* bf16/f16/f32 → f32, tensor after tensor, each split over every
         * core by ra_convert_to_f32 (so the 262M-element embedding of a
         * 128k vocabulary does not run on one thread while the others idle;
         * the pages of source and destination fault in in parallel). */
        if (view) {
            /* no copy: the entries point into the maps, which stay open */
            ra_model_view *v = xcalloc(1, sizeof *v);
            view_priv *p = xmalloc(sizeof *p);
            *p = (view_priv){st, text, len};
            v->n = n;
            v->e = xmalloc((size_t)n * sizeof *v->e);
            for (int i = 0; i < n; i++)
                v->e[i] = (ra_model_view_entry){specs[i].data, src[i]->dtype, src[i]->data, spec_numel(&specs[i])};
            v->priv = p;
            v->close = view_close;
            m->view = v;
            st = NULL, text = NULL; /* the view owns them now */
        } else {
            for (int i = 0; i < n; i++) {
                *specs[i].data = xmalloc((size_t)spec_numel(&specs[i]) * sizeof(float));
                ra_convert_to_f32(*specs[i].data, src[i]->data, src[i]->dtype, (size_t)spec_numel(&specs[i]));
            }
            st_checkpoint_id(st, text, len, m->content_id); /* defined in lib/model.h */
        }
        if (c.tie_word_embeddings) m->lm_head = m->embed;
    }
    free(src);
    free(specs);
    free(text);
    if (st) st_close(st);
    if (rc) {
        ra_model_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

/* ---------------------------------------------------------- model stream */

int ra_model_load_stream(const char *path, ra_model **out, ra_error *err) {
    *out = NULL;
    ra_reader *r = ra_reader_open(path, err);
    if (!r) return err && err->code ? err->code : EX_DATAERR;
    const char *name = ra_reader_name(r);
    int rc = 0;
    if (strcmp(ra_reader_kind(r), "model") != 0) {
        rc = ra_fail(err, EX_DATAERR, "%s: a '%s' stream, expected a model stream or a Hugging Face directory", name,
                     ra_reader_kind(r));
        ra_reader_close(r);
        return rc;
    }
    const json_t *cj = json_object_get(ra_reader_meta(r), "config");
    hf_config c;
    if (!json_is_object(cj)) rc = ra_fail(err, EX_DATAERR, "%s: header meta has no 'config' object", name);
    else if (!(rc = hf_config_from_json(cj, name, &c, err))) rc = ra_model_check_config(&c, name, err);
    const json_t *hj = rc ? NULL : json_object_get(ra_reader_meta(r), "hybrid");
    ra_hybrid_config hy;
    int is_hybrid = hj && !json_is_null(hj);
    if (is_hybrid) {
        char where[600];
        snprintf(where, sizeof where, "%.500s: meta.hybrid", name);
        rc = ra_hybrid_from_json(hj, &c, where, &hy, err);
    }
    if (rc) {
        ra_reader_close(r);
        return rc;
    }

    ra_model *m = is_hybrid ? ra_model_shell_hybrid(&c, &hy) : ra_model_shell(&c);
    if (is_hybrid) ra_hybrid_free(&hy);
    snprintf(m->source, sizeof m->source, "%s", name);
    ra_model_tensor *sorted;
    int n = ra_model_tensor_list(m, &sorted);
    qsort(sorted, (size_t)n, sizeof *sorted, cmp_tensor_name);
    extras x = {0};
    ra_tensor_info info;
    int more;
    while ((more = ra_reader_next(r, &info, err)) == 1) {
        ra_model_tensor *t = find_spec(sorted, n, info.name);
        if (!t) {
            note_extra(&x, info.name, &c);
            continue;
        }
        if (*t->data) {
            rc = ra_fail(err, EX_DATAERR, "%s: tensor '%s' appears twice", name, info.name);
            break;
        }
        if ((rc = check_shape(name, t, info.dtype, info.ndim, info.shape, err))) break;
        *t->data = xmalloc((size_t)info.numel * sizeof(float));
        if ((rc = ra_reader_read_f32(r, *t->data, info.numel, err))) break;
    }
    if (!rc && more < 0) rc = err && err->code ? err->code : EX_DATAERR;
    for (int i = 0; i < n && !rc; i++)
        if (!*sorted[i].data) {
            char s[128];
            shape_str(s, sizeof s, sorted[i].ndim, sorted[i].shape);
            rc = ra_fail(err, EX_DATAERR, "%s: tensor '%s' missing (expected shape %s)", name, sorted[i].name, s);
        }
    if (!rc) {
        if (c.tie_word_embeddings) m->lm_head = m->embed;
        snprintf(m->content_id, sizeof m->content_id, "%s", ra_reader_content_id(r));
        warn_extras(m, &x);
    }
    free(sorted);
    ra_reader_close(r);
    if (rc) {
        ra_model_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

int ra_model_load_hf(const char *dir, ra_model **out, ra_error *err) { return load_hf(dir, 0, out, err); }

int ra_model_load_view(const char *path, ra_model **out, ra_error *err) {
    *out = NULL;
    struct stat st;
    if (strcmp(path, "-") != 0 && stat(path, &st) == 0 && S_ISDIR(st.st_mode)) return load_hf(path, 1, out, err);
    return ra_model_load(path, out, err);
}

int ra_model_load(const char *path, ra_model **out, ra_error *err) {
    *out = NULL;
    if (strcmp(path, "-") == 0) return ra_model_load_stream(path, out, err);
    struct stat st;
    if (stat(path, &st) != 0)
        return ra_fail(err, errno == ENOENT ? EX_NOINPUT : EX_IOERR, "%s: %s", path, strerror(errno));
    return S_ISDIR(st.st_mode) ? ra_model_load_hf(path, out, err) : ra_model_load_stream(path, out, err);
}

int ra_model_write_stream(const ra_model *m, const char *path, ra_dtype dtype, const json_t *provenance,
                          char *content_id, ra_error *err) {
    return ra_model_write_stream_subset(m, path, dtype, provenance, NULL, NULL, content_id, err);
}

int ra_model_write_stream_subset(const ra_model *m, const char *path, ra_dtype dtype, const json_t *provenance,
                                 int (*keep)(const char *name, void *arg), void *arg, char *content_id,
                                 ra_error *err) {
    if (dtype != RA_BF16 && dtype != RA_F16 && dtype != RA_F32)
        return ra_fail(err, EX_USAGE, "model stream dtype %s: expected bf16, f16 or f32", ra_dtype_name(dtype));
    json_t *meta = json_object();
    json_object_set_new(meta, "config", hf_config_to_json(&m->cfg));
    if (m->hybrid) json_object_set_new(meta, "hybrid", ra_hybrid_to_json(m->hybrid));
    ra_writer *w = ra_writer_open(path, "model", meta, provenance, err);
    json_decref(meta);
    if (!w) return err && err->code ? err->code : EX_IOERR;
    ra_model_tensor *t;
    int n = ra_model_tensor_list((ra_model *)m, &t), rc = 0;
    for (int i = 0; i < n && !rc; i++)
        if (!keep || keep(t[i].name, arg))
            rc = ra_writer_tensor_from_f32(w, t[i].name, dtype, t[i].ndim, t[i].shape, *t[i].data, err);
    free(t);
    if (rc) {
        ra_writer_abort(w);
        return rc;
    }
    return ra_writer_close(w, content_id, err);
}
