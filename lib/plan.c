#include "plan.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ teacher shape */

/* An integer field of a JSON object; missing → *v = dflt (or an error when
 * dflt < 0). */
static int json_int_field(const json_t *o, const char *key, int dflt, const char *where, int *v, ra_error *err) {
    const json_t *x = json_object_get(o, key);
    if (!x || json_is_null(x)) {
        if (dflt < 0) return ra_fail(err, EX_DATAERR, "%s: missing integer '%s'", where, key);
        *v = dflt;
        return 0;
    }
    if (!json_is_integer(x) || json_integer_value(x) < 1 || json_integer_value(x) > (1 << 24))
        return ra_fail(err, EX_DATAERR, "%s: '%s' must be a positive integer", where, key);
    *v = (int)json_integer_value(x);
    return 0;
}

int ra_teacher_shape_from_json(const json_t *config, const char *where, ra_teacher_shape *s, ra_error *err) {
    memset(s, 0, sizeof *s);
    if (!json_is_object(config)) return ra_fail(err, EX_DATAERR, "%s: expected a config object", where);
    int rc;
    if ((rc = json_int_field(config, "num_hidden_layers", -1, where, &s->layers, err)) ||
        (rc = json_int_field(config, "num_attention_heads", -1, where, &s->heads, err)) ||
        (rc = json_int_field(config, "hidden_size", -1, where, &s->hidden, err)) ||
        (rc = json_int_field(config, "num_key_value_heads", s->heads, where, &s->kv_heads, err)) ||
        (rc = json_int_field(config, "head_dim", s->hidden / s->heads ? s->hidden / s->heads : -1, where,
                             &s->head_dim, err)))
        return rc;
    if (s->heads % s->kv_heads != 0)
        return ra_fail(err, EX_DATAERR, "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d",
                       where, s->heads, s->kv_heads);
    if ((int64_t)s->layers * s->heads > (1 << 24))
        return ra_fail(err, EX_DATAERR, "%s: %d layers x %d heads is implausibly large", where, s->layers, s->heads);
    return 0;
}

ra_teacher_shape ra_teacher_shape_from_config(const hf_config *c) {
    ra_teacher_shape s = {c->num_layers, c->num_heads, c->num_kv_heads, c->head_dim, c->hidden_size};
    return s;
}

int64_t ra_kv_bytes_per_token(const ra_teacher_shape *s, const uint8_t *keep) {
    int64_t kept = 0;
    for (int64_t i = 0; i < (int64_t)s->layers * s->heads; i++) kept += keep[i] != 0;
    return kept * 2 * s->head_dim * 2;
}

int64_t ra_kv_bytes_per_token_shared(const ra_teacher_shape *s, const uint8_t *keep) {
    int group = s->heads / s->kv_heads;
    int64_t groups = 0;
    for (int l = 0; l < s->layers; l++)
        for (int g = 0; g < s->kv_heads; g++) {
            int any = 0;
            for (int h = g * group; h < (g + 1) * group; h++) any |= keep[(int64_t)l * s->heads + h] != 0;
            groups += any;
        }
    return groups * 2 * s->head_dim * 2;
}

static int shapes_equal(const ra_teacher_shape *a, const ra_teacher_shape *b) {
    return a->layers == b->layers && a->heads == b->heads && a->kv_heads == b->kv_heads &&
           a->head_dim == b->head_dim && a->hidden == b->hidden;
}

static void shape_str(char *out, size_t cap, const ra_teacher_shape *s) {
    snprintf(out, cap, "%d layers x %d heads (%d kv heads, head_dim %d, hidden %d)", s->layers, s->heads,
             s->kv_heads, s->head_dim, s->hidden);
}

static int is_content_id(const char *s) {
    if (strlen(s) != RA_CONTENT_ID_LEN) return 0;
    for (const char *c = s; *c; c++)
        if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'f'))) return 0;
    return 1;
}

/* meta.teacher.{id,config} → id and shape (config borrowed from meta). */
static int read_teacher(const json_t *meta, const char *file, char *id, const json_t **config,
                        ra_teacher_shape *shape, ra_error *err) {
    const json_t *t = json_object_get(meta, "teacher");
    if (!json_is_object(t)) return ra_fail(err, EX_DATAERR, "%s: meta.teacher: missing (expected {id, config})", file);
    const json_t *jid = json_object_get(t, "id");
    if (!json_is_string(jid) || !is_content_id(json_string_value(jid)))
        return ra_fail(err, EX_DATAERR, "%s: meta.teacher.id: expected %d lower-case hex characters", file,
                       RA_CONTENT_ID_LEN);
    strcpy(id, json_string_value(jid));
    *config = json_object_get(t, "config");
    char where[512];
    snprintf(where, sizeof where, "%s: meta.teacher.config", file);
    return ra_teacher_shape_from_json(*config, where, shape, err);
}

/* A tensor of the given dtype and shape [layers, heads], or an error. */
static int find_grid(const ra_tensor *t, int n, const char *name, ra_dtype dtype, const ra_teacher_shape *s,
                     const char *file, int required, const ra_tensor **out, ra_error *err) {
    *out = ra_tensors_find(t, n, name);
    if (!*out) return required ? ra_fail(err, EX_DATAERR, "%s: tensor '%s': missing", file, name) : 0;
    const ra_tensor_info *i = &(*out)->info;
    if (i->dtype != dtype || i->ndim != 2 || i->shape[0] != s->layers || i->shape[1] != s->heads)
        return ra_fail(err, EX_DATAERR, "%s: tensor '%s': expected %s [%d, %d] (layers, heads of meta.teacher.config)",
                       file, name, ra_dtype_name(dtype), s->layers, s->heads);
    return 0;
}

/* ------------------------------------------------------------------ plans */

int ra_plan_layer_heads(const ra_plan *p, int layer, int *heads) {
    int n = 0;
    for (int h = 0; h < p->shape.heads; h++)
        if (p->keep[(int64_t)layer * p->shape.heads + h]) heads[n++] = h;
    return n;
}

/* meta.layers must list exactly the ones of keep, each layer ascending. */
static int check_layers_list(const json_t *layers, const ra_plan *p, const char *file, ra_error *err) {
    if (!json_is_array(layers) || (int)json_array_size(layers) != p->shape.layers)
        return ra_fail(err, EX_DATAERR, "%s: meta.layers: expected an array of %d arrays (one per layer)", file,
                       p->shape.layers);
    int *want = xmalloc((size_t)p->shape.heads * sizeof(int));
    int rc = 0;
    for (int l = 0; l < p->shape.layers && !rc; l++) {
        const json_t *row = json_array_get(layers, l);
        int n = ra_plan_layer_heads(p, l, want);
        if (!json_is_array(row) || (int)json_array_size(row) != n) {
            rc = ra_fail(err, EX_DATAERR, "%s: meta.layers[%d]: expected %d heads (as in tensor 'keep')", file, l, n);
            break;
        }
        for (int i = 0; i < n; i++) {
            const json_t *h = json_array_get(row, i);
            if (!json_is_integer(h) || json_integer_value(h) != want[i]) {
                rc = ra_fail(err, EX_DATAERR,
                             "%s: meta.layers[%d][%d]: expected head %d (ascending, as in tensor 'keep')", file, l,
                             i, want[i]);
                break;
            }
        }
    }
    free(want);
    return rc;
}

int ra_plan_load(const char *path, ra_plan *p, ra_error *err) {
    memset(p, 0, sizeof *p);
    ra_reader *r;
    ra_tensor *t;
    int n, rc;
    const char *file = strcmp(path, "-") == 0 ? "stdin" : path;
    if ((rc = ra_read_all(path, &r, &t, &n, err))) return rc;
    const json_t *meta = ra_reader_meta(r), *config = NULL;
    const ra_tensor *keep = NULL;
    if (strcmp(ra_reader_kind(r), "plan") != 0)
        rc = ra_fail(err, EX_DATAERR, "%s: kind '%s', expected 'plan'", file, ra_reader_kind(r));
    if (!rc) rc = read_teacher(meta, file, p->teacher_id, &config, &p->shape, err);
    if (!rc) rc = find_grid(t, n, "keep", RA_U8, &p->shape, file, 1, &keep, err);
    if (!rc) {
        int64_t cells = (int64_t)p->shape.layers * p->shape.heads;
        p->keep = xmalloc((size_t)cells);
        memcpy(p->keep, keep->data, (size_t)cells);
        for (int64_t i = 0; i < cells && !rc; i++) {
            if (p->keep[i] > 1)
                rc = ra_fail(err, EX_DATAERR, "%s: tensor 'keep': value %d at layer %lld head %lld, expected 0 or 1",
                             file, p->keep[i], (long long)(i / p->shape.heads), (long long)(i % p->shape.heads));
            p->kept += p->keep[i];
        }
    }
    if (!rc) rc = check_layers_list(json_object_get(meta, "layers"), p, file, err);
    if (!rc) {
        const json_t *kh = json_object_get(json_object_get(meta, "totals"), "kept_heads");
        if (kh && (!json_is_integer(kh) || json_integer_value(kh) != p->kept))
            rc = ra_fail(err, EX_DATAERR, "%s: meta.totals.kept_heads: expected %d (the ones of tensor 'keep')", file,
                         p->kept);
    }
    if (!rc) {
        p->teacher_config = json_deep_copy(config);
        strcpy(p->content_id, ra_reader_content_id(r));
    }
    ra_tensors_free(t, n);
    ra_reader_close(r);
    if (rc) ra_plan_free(p);
    return rc;
}

int ra_plan_check_teacher(const ra_plan *p, const char *plan_name, const char *teacher_name,
                          const char *teacher_id, const ra_teacher_shape *teacher, ra_error *err) {
    if (!shapes_equal(&p->shape, teacher)) {
        char a[160], b[160];
        shape_str(a, sizeof a, &p->shape);
        shape_str(b, sizeof b, teacher);
        return ra_fail(err, EX_DATAERR, "%s: plan is for a teacher of %s, but %s has %s", plan_name, a, teacher_name,
                       b);
    }
    if (strcmp(p->teacher_id, teacher_id) != 0)
        return ra_fail(err, EX_DATAERR, "%s: plan is for teacher %s, but %s has content id %s", plan_name,
                       p->teacher_id, teacher_name, teacher_id);
    return 0;
}

static json_t *plan_layers_json(const ra_plan *p) {
    json_t *layers = json_array();
    int *heads = xmalloc((size_t)p->shape.heads * sizeof(int));
    for (int l = 0; l < p->shape.layers; l++) {
        json_t *row = json_array();
        int n = ra_plan_layer_heads(p, l, heads);
        for (int i = 0; i < n; i++) json_array_append_new(row, json_integer(heads[i]));
        json_array_append_new(layers, row);
    }
    free(heads);
    return layers;
}

static json_t *plan_totals_json(const ra_plan *p) {
    int64_t all = (int64_t)p->shape.layers * p->shape.heads, kept = 0;
    for (int64_t i = 0; i < all; i++) kept += p->keep[i] != 0;
    return json_pack("{s:I, s:I, s:f, s:I, s:I, s:I}", "kept_heads", (json_int_t)kept, "heads", (json_int_t)all,
                     "fraction", all ? (double)kept / all : 0.0, "kv_bytes_per_token",
                     (json_int_t)ra_kv_bytes_per_token(&p->shape, p->keep), "kv_bytes_per_token_shared",
                     (json_int_t)ra_kv_bytes_per_token_shared(&p->shape, p->keep), "teacher_kv_bytes_per_token",
                     (json_int_t)((int64_t)p->shape.layers * p->shape.kv_heads * 2 * p->shape.head_dim * 2));
}

int ra_plan_write(const char *path, const ra_plan *p, const json_t *selection, const json_t *provenance,
                  char *content_id, ra_error *err) {
    json_t *meta = json_object();
    json_object_set_new(meta, "teacher", json_pack("{s:s, s:O}", "id", p->teacher_id, "config", p->teacher_config));
    json_object_set_new(meta, "selection", selection ? json_deep_copy(selection) : json_object());
    json_object_set_new(meta, "totals", plan_totals_json(p));
    json_object_set_new(meta, "layers", plan_layers_json(p));
    ra_writer *w = ra_writer_open(path, "plan", meta, provenance, err);
    json_decref(meta);
    if (!w) return err ? err->code : EX_IOERR;
    int64_t shape[2] = {p->shape.layers, p->shape.heads};
    int rc = ra_writer_tensor(w, "keep", RA_U8, 2, shape, p->keep, err);
    if (rc) {
        ra_writer_abort(w);
        return rc;
    }
    return ra_writer_close(w, content_id, err);
}

void ra_plan_free(ra_plan *p) {
    json_decref(p->teacher_config);
    free(p->keep);
    memset(p, 0, sizeof *p);
}

/* ----------------------------------------------------------------- scores */

int ra_scores_load(const char *path, ra_scores *s, ra_error *err) {
    memset(s, 0, sizeof *s);
    ra_reader *r;
    ra_tensor *t;
    int n, rc;
    const char *file = strcmp(path, "-") == 0 ? "stdin" : path;
    if ((rc = ra_read_all(path, &r, &t, &n, err))) return rc;
    const json_t *meta = ra_reader_meta(r), *config;
    const ra_tensor *acc = NULL, *lp = NULL, *ex = NULL, *at = NULL;
    if (strcmp(ra_reader_kind(r), "scores") != 0)
        rc = ra_fail(err, EX_DATAERR, "%s: kind '%s', expected 'scores'", file, ra_reader_kind(r));
    if (!rc) rc = read_teacher(meta, file, s->teacher_id, &config, &s->shape, err);
    if (!rc) rc = find_grid(t, n, "acc_drop", RA_F32, &s->shape, file, 1, &acc, err);
    if (!rc) rc = find_grid(t, n, "logprob_drop", RA_F32, &s->shape, file, 1, &lp, err);
    if (!rc) rc = find_grid(t, n, "exact", RA_U8, &s->shape, file, 0, &ex, err);
    if (!rc) rc = find_grid(t, n, "attribution", RA_F32, &s->shape, file, 0, &at, err);
    if (!rc) {
        size_t cells = (size_t)s->shape.layers * s->shape.heads;
        s->acc_drop = xmalloc(cells * sizeof(float));
        s->logprob_drop = xmalloc(cells * sizeof(float));
        s->exact = xmalloc(cells);
        memcpy(s->acc_drop, acc->data, cells * sizeof(float));
        memcpy(s->logprob_drop, lp->data, cells * sizeof(float));
        if (ex) memcpy(s->exact, ex->data, cells);
        else memset(s->exact, 1, cells);
        if (at) {
            s->attribution = xmalloc(cells * sizeof(float));
            memcpy(s->attribution, at->data, cells * sizeof(float));
        }
        for (size_t i = 0; i < cells && !rc; i++) {
            int l = (int)(i / s->shape.heads), h = (int)(i % s->shape.heads);
            if (s->exact[i] > 1)
                rc = ra_fail(err, EX_DATAERR, "%s: tensor 'exact': value %d at layer %d head %d, expected 0 or 1",
                             file, s->exact[i], l, h);
            else if (!isfinite(s->logprob_drop[i]))
                rc = ra_fail(err, EX_DATAERR, "%s: tensor 'logprob_drop': non-finite value at layer %d head %d", file,
                             l, h);
            else if (s->exact[i] && !isfinite(s->acc_drop[i]))
                rc = ra_fail(err, EX_DATAERR,
                             "%s: tensor 'acc_drop': non-finite value at layer %d head %d (measured exactly)", file, l,
                             h);
        }
    }
    if (!rc) {
        s->meta = json_deep_copy(meta);
        s->teacher_config = json_object_get(json_object_get(s->meta, "teacher"), "config");
        strcpy(s->content_id, ra_reader_content_id(r));
    }
    ra_tensors_free(t, n);
    ra_reader_close(r);
    if (rc) ra_scores_free(s);
    return rc;
}

int ra_scores_write(const char *path, const json_t *meta, const ra_scores *s, const json_t *provenance,
                    char *content_id, ra_error *err) {
    ra_writer *w = ra_writer_open(path, "scores", meta, provenance, err);
    if (!w) return err ? err->code : EX_IOERR;
    int64_t shape[2] = {s->shape.layers, s->shape.heads};
    int rc = ra_writer_tensor(w, "acc_drop", RA_F32, 2, shape, s->acc_drop, err);
    if (!rc) rc = ra_writer_tensor(w, "logprob_drop", RA_F32, 2, shape, s->logprob_drop, err);
    if (!rc) rc = ra_writer_tensor(w, "exact", RA_U8, 2, shape, s->exact, err);
    if (!rc && s->attribution) rc = ra_writer_tensor(w, "attribution", RA_F32, 2, shape, s->attribution, err);
    if (rc) {
        ra_writer_abort(w);
        return rc;
    }
    return ra_writer_close(w, content_id, err);
}

void ra_scores_free(ra_scores *s) {
    json_decref(s->meta);
    free(s->acc_drop);
    free(s->logprob_drop);
    free(s->exact);
    free(s->attribution);
    memset(s, 0, sizeof *s);
}
