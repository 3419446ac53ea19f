/* Training checkpoints (lib/checkpoint.h, formats/checkpoint.md). */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "stream.h"

#define CKPT_PREFIX "ckpt-"
#define CKPT_SUFFIX ".ra"
#define CKPT_DIGITS 12

/* The three tensors of a trainable parameter, by name prefix. */
enum { SLOT_PARAM, SLOT_M, SLOT_V, N_SLOTS };
static const char *const slot_prefix[N_SLOTS] = {"param/", "adam_m/", "adam_v/"};

/* ------------------------------------------------------------------ meta */

static json_t *rng_to_json(const ra_rng *r) {
    json_t *s = json_array();
    for (int i = 0; i < 4; i++) {
        char hex[17];
        snprintf(hex, sizeof hex, "%016" PRIx64, r->s[i]);
        json_array_append_new(s, json_string(hex));
    }
    return json_pack("{s:o, s:f, s:b}", "state", s, "spare_normal", r->spare_normal, "has_spare", r->has_spare);
}

static json_t *names_json(const ra_optim *o, int frozen) {
    json_t *a = json_array();
    for (int i = 0; i < o->n; i++)
        if (!!o->params[i].frozen == frozen) json_array_append_new(a, json_string(o->params[i].name));
    return a;
}

static json_t *meta_json(const ra_checkpoint *ck, const ra_optim *o) {
    const ra_adamw_config *c = &o->cfg;
    const ra_wsd *s = &ck->schedule;
    json_t *run = ck->run ? json_deep_copy(ck->run) : json_object();
    return json_pack("{s:I, s:I, s:I, s:o, s:{s:f, s:I, s:f, s:f}, s:{s:f, s:f, s:f, s:f, s:f}, s:f, s:o, s:o, s:o}",
                     "step", (json_int_t)o->step, "tokens", (json_int_t)ck->tokens, "data_position",
                     (json_int_t)ck->data_position, "rng", rng_to_json(&ck->rng), "schedule", "peak", s->peak,
                     "total", (json_int_t)s->total, "warmup", s->warmup, "decay", s->decay, "adamw", "beta1",
                     c->beta1, "beta2", c->beta2, "eps", c->eps, "weight_decay", c->weight_decay, "clip", c->clip,
                     "grad_norm", o->last_grad_norm, "trainable", names_json(o, 0), "frozen", names_json(o, 1),
                     "run", run);
}

/* Parsed meta, before anything is committed. */
typedef struct ckpt_meta {
    int64_t step;
    double grad_norm;
    ra_adamw_config adamw;
    ra_checkpoint ck;
    const json_t *trainable, *frozen; /* borrowed from the reader's meta */
} ckpt_meta;

static int get_int(const json_t *obj, const char *key, int64_t *out, const char *path, ra_error *err) {
    const json_t *v = json_object_get(obj, key);
    if (!json_is_integer(v)) return ra_fail(err, EX_DATAERR, "%s: meta.%s: expected an integer", path, key);
    *out = json_integer_value(v);
    return 0;
}

static int get_num(const json_t *obj, const char *key, double *out, const char *path, ra_error *err) {
    const json_t *v = json_object_get(obj, key);
    if (!json_is_number(v)) return ra_fail(err, EX_DATAERR, "%s: meta.%s: expected a number", path, key);
    *out = json_number_value(v);
    return 0;
}

static int parse_rng(const json_t *j, ra_rng *r, const char *path, ra_error *err) {
    const json_t *s = json_object_get(j, "state");
    const json_t *has = json_object_get(j, "has_spare");
    if (!json_is_array(s) || json_array_size(s) != 4 || !json_is_boolean(has) ||
        get_num(j, "spare_normal", &r->spare_normal, path, err))
        return ra_fail(err, EX_DATAERR, "%s: meta.rng: expected {state: [4 hex words], spare_normal, has_spare}",
                       path);
    for (int i = 0; i < 4; i++) {
        const char *hex = json_string_value(json_array_get(s, i));
        char *end = NULL;
        if (!hex || strlen(hex) != 16) return ra_fail(err, EX_DATAERR, "%s: meta.rng.state[%d]: expected 16 hex digits", path, i);
        errno = 0;
        r->s[i] = strtoull(hex, &end, 16);
        if (errno || *end) return ra_fail(err, EX_DATAERR, "%s: meta.rng.state[%d]: expected 16 hex digits", path, i);
    }
    r->has_spare = json_is_true(has);
    return 0;
}

static int parse_meta(const json_t *m, ckpt_meta *out, const char *path, ra_error *err) {
    memset(out, 0, sizeof *out);
    const json_t *sch = json_object_get(m, "schedule"), *ad = json_object_get(m, "adamw");
    const json_t *rng = json_object_get(m, "rng"), *run = json_object_get(m, "run");
    out->trainable = json_object_get(m, "trainable");
    out->frozen = json_object_get(m, "frozen");
    if (!json_is_object(sch) || !json_is_object(ad) || !json_is_object(rng) || !json_is_object(run) ||
        !json_is_array(out->trainable) || !json_is_array(out->frozen))
        return ra_fail(err, EX_DATAERR,
                       "%s: meta: expected objects schedule, adamw, rng, run and arrays trainable, frozen", path);
    ra_checkpoint *ck = &out->ck;
    ra_adamw_config *c = &out->adamw;
    int rc = get_int(m, "step", &out->step, path, err) || get_int(m, "tokens", &ck->tokens, path, err) ||
             get_int(m, "data_position", &ck->data_position, path, err) ||
             get_num(m, "grad_norm", &out->grad_norm, path, err) || get_num(sch, "peak", &ck->schedule.peak, path, err) ||
             get_int(sch, "total", &ck->schedule.total, path, err) ||
             get_num(sch, "warmup", &ck->schedule.warmup, path, err) ||
             get_num(sch, "decay", &ck->schedule.decay, path, err) || get_num(ad, "beta1", &c->beta1, path, err) ||
             get_num(ad, "beta2", &c->beta2, path, err) || get_num(ad, "eps", &c->eps, path, err) ||
             get_num(ad, "weight_decay", &c->weight_decay, path, err) || get_num(ad, "clip", &c->clip, path, err) ||
             parse_rng(rng, &ck->rng, path, err);
    if (rc) return err ? err->code : EX_DATAERR;
    if (out->step < 0) return ra_fail(err, EX_DATAERR, "%s: meta.step is negative", path);
    return 0;
}

/* ------------------------------------------------------------- matching */

static int list_has(const json_t *list, const char *name) {
    size_t i;
    const json_t *v;
    json_array_foreach(list, i, v) if (json_is_string(v) && strcmp(json_string_value(v), name) == 0) return 1;
    return 0;
}

/* The checkpoint's trainable and frozen names against o's parameters. */
static int match_param_sets(const ckpt_meta *cm, ra_optim *o, const char *path, ra_error *err) {
    for (int i = 0; i < o->n; i++) {
        const ra_param *p = &o->params[i];
        int tr = list_has(cm->trainable, p->name), fr = list_has(cm->frozen, p->name);
        if (!tr && !fr) return ra_fail(err, EX_DATAERR, "%s: no parameter '%s' (a different model?)", path, p->name);
        if (tr && p->frozen)
            return ra_fail(err, EX_DATAERR, "%s: parameter '%s' was trained but this run freezes it", path, p->name);
        if (fr && !p->frozen)
            return ra_fail(err, EX_DATAERR, "%s: parameter '%s' was frozen but this run trains it", path, p->name);
    }
    const json_t *lists[2] = {cm->trainable, cm->frozen};
    for (int k = 0; k < 2; k++) {
        size_t i;
        const json_t *v;
        json_array_foreach(lists[k], i, v) {
            if (!json_is_string(v)) return ra_fail(err, EX_DATAERR, "%s: meta: parameter names must be strings", path);
            if (!ra_optim_find(o, json_string_value(v)))
                return ra_fail(err, EX_DATAERR, "%s: parameter '%s' is not in this model", path, json_string_value(v));
        }
    }
    return 0;
}

/* The parameter and slot a tensor record belongs to; checks dtype, shape. */
static int tensor_target(ra_optim *o, const ra_tensor_info *t, int *pi, int *slot, const char *path, ra_error *err) {
    for (int s = 0; s < N_SLOTS; s++) {
        size_t len = strlen(slot_prefix[s]);
        if (strncmp(t->name, slot_prefix[s], len) != 0) continue;
        ra_param *p = ra_optim_find(o, t->name + len);
        if (!p || p->frozen)
            return ra_fail(err, EX_DATAERR, "%s: tensor '%s': not a trainable parameter of this run", path, t->name);
        int same = t->dtype == RA_F32 && t->ndim == p->ndim;
        for (int d = 0; same && d < p->ndim; d++) same = t->shape[d] == p->shape[d];
        if (!same)
            return ra_fail(err, EX_DATAERR, "%s: tensor '%s': expected f32 of %lld elements in %d dims as the model's",
                           path, t->name, (long long)p->numel, p->ndim);
        *pi = (int)(p - o->params), *slot = s;
        return 0;
    }
    return ra_fail(err, EX_DATAERR, "%s: tensor '%s': expected param/, adam_m/ or adam_v/", path, t->name);
}

/* ----------------------------------------------------------------- write */

static int write_slot(ra_writer *w, const ra_param *p, int slot, const float *zeros, ra_error *err) {
    const float *data = slot == SLOT_PARAM ? p->w : slot == SLOT_M ? p->m : p->v;
    char name[RA_NAME_MAX + 1];
    snprintf(name, sizeof name, "%s%s", slot_prefix[slot], p->name);
    return ra_writer_tensor(w, name, RA_F32, p->ndim, p->shape, data ? data : zeros, err);
}

int ra_checkpoint_write(const char *path, const ra_checkpoint *ck, const ra_optim *o, const json_t *provenance,
                        char *content_id, ra_error *err) {
    json_t *meta = meta_json(ck, o);
    ra_writer *w = ra_writer_open(path, "checkpoint", meta, provenance, err);
    json_decref(meta);
    if (!w) return err ? err->code : EX_IOERR;
    int64_t biggest = 0;
    for (int i = 0; i < o->n; i++)
        if (!o->params[i].m && o->params[i].numel > biggest) biggest = o->params[i].numel;
    float *zeros = biggest ? xcalloc((size_t)biggest, sizeof(float)) : NULL; /* moments never allocated */
    int rc = 0;
    for (int i = 0; i < o->n && !rc; i++)
        for (int s = 0; s < N_SLOTS && !rc && !o->params[i].frozen; s++) rc = write_slot(w, &o->params[i], s, zeros, err);
    free(zeros);
    if (rc) {
        ra_writer_abort(w);
        return rc;
    }
    return ra_writer_close(w, content_id, err);
}

/* ------------------------------------------------------------------ read */

/* Pass 1: header, meta and every record checked, digest verified. */
static int verify_checkpoint(const char *path, ra_optim *o, ckpt_meta *cm, ra_error *err) {
    ra_reader *r = ra_reader_open(path, err);
    if (!r) return err ? err->code : EX_IOERR;
    int rc = 0;
    if (strcmp(ra_reader_kind(r), "checkpoint") != 0)
        rc = ra_fail(err, EX_DATAERR, "%s: a '%s' stream, expected a checkpoint", path, ra_reader_kind(r));
    if (!rc) rc = parse_meta(ra_reader_meta(r), cm, path, err);
    if (!rc) rc = match_param_sets(cm, o, path, err);
    uint8_t *seen = xcalloc((size_t)o->n + 1, 1);
    ra_tensor_info t;
    int more = 0;
    while (!rc && (more = ra_reader_next(r, &t, err)) == 1) {
        int pi, slot;
        rc = tensor_target(o, &t, &pi, &slot, path, err);
        if (!rc) seen[pi] |= (uint8_t)(1u << slot);
    }
    if (!rc && more < 0) rc = err ? err->code : EX_DATAERR;
    for (int i = 0; i < o->n && !rc; i++)
        if (!o->params[i].frozen && seen[i] != (1u << N_SLOTS) - 1)
            rc = ra_fail(err, EX_DATAERR, "%s: parameter '%s': expected param/, adam_m/ and adam_v/ tensors", path,
                         o->params[i].name);
    free(seen);
    if (!rc) cm->ck.run = json_deep_copy(json_object_get(ra_reader_meta(r), "run"));
    ra_reader_close(r);
    return rc;
}

/* Pass 2: the data, into o. */
static int load_tensors(const char *path, ra_optim *o, ra_error *err) {
    ra_reader *r = ra_reader_open(path, err);
    if (!r) return err ? err->code : EX_IOERR;
    ra_tensor_info t;
    int rc = 0, more;
    while (!rc && (more = ra_reader_next(r, &t, err)) == 1) {
        int pi, slot;
        rc = tensor_target(o, &t, &pi, &slot, path, err);
        if (rc) break;
        ra_param *p = &o->params[pi];
        float *dst = slot == SLOT_PARAM ? p->w : slot == SLOT_M ? p->m : p->v;
        rc = ra_reader_read(r, dst, (uint64_t)p->numel * sizeof(float), err);
    }
    if (!rc && more < 0) rc = err ? err->code : EX_DATAERR;
    ra_reader_close(r);
    return rc;
}

int ra_checkpoint_read(const char *path, ra_checkpoint *ck, ra_optim *o, ra_error *err) {
    ckpt_meta cm;
    int rc = verify_checkpoint(path, o, &cm, err);
    if (rc) return rc;
    ra_optim_ensure_state(o);
    rc = load_tensors(path, o, err);
    if (rc) {
        json_decref(cm.ck.run);
        return rc;
    }
    o->step = cm.step;
    o->cfg = cm.adamw;
    o->last_grad_norm = cm.grad_norm;
    *ck = cm.ck;
    return 0;
}

void ra_checkpoint_clear(ra_checkpoint *ck) {
    json_decref(ck->run);
    ck->run = NULL;
}

/* ------------------------------------------------------------- directory */

int ra_checkpoint_path(char *buf, size_t cap, const char *dir, int64_t step, ra_error *err) {
    int n = snprintf(buf, cap, "%s/" CKPT_PREFIX "%0*lld" CKPT_SUFFIX, dir, CKPT_DIGITS, (long long)step);
    if (n < 0 || (size_t)n >= cap) return ra_fail(err, EX_SOFTWARE, "%s: checkpoint path too long", dir);
    return 0;
}

/* The step of a checkpoint file name, or −1. */
static int64_t name_step(const char *name) {
    size_t lp = strlen(CKPT_PREFIX), ls = strlen(CKPT_SUFFIX);
    if (strlen(name) != lp + CKPT_DIGITS + ls || strncmp(name, CKPT_PREFIX, lp) != 0 ||
        strcmp(name + lp + CKPT_DIGITS, CKPT_SUFFIX) != 0)
        return -1;
    int64_t step = 0;
    for (int i = 0; i < CKPT_DIGITS; i++) {
        char c = name[lp + i];
        if (c < '0' || c > '9') return -1;
        step = step * 10 + (c - '0');
    }
    return step;
}

/* Steps of every checkpoint in dir, descending; *n of them. */
static int list_steps(const char *dir, int64_t **steps, int *n, ra_error *err) {
    DIR *d = opendir(dir);
    if (!d) return ra_fail(err, errno == ENOENT ? EX_NOINPUT : EX_IOERR, "%s: %s", dir, strerror(errno));
    int cap = 16;
    *steps = xmalloc((size_t)cap * sizeof(int64_t));
    *n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        int64_t s = name_step(e->d_name);
        if (s < 0) continue;
        if (*n == cap) *steps = xrealloc(*steps, (size_t)(cap *= 2) * sizeof(int64_t));
        (*steps)[(*n)++] = s;
    }
    closedir(d);
    for (int i = 1; i < *n; i++) /* insertion sort, descending */
        for (int j = i; j > 0 && (*steps)[j] > (*steps)[j - 1]; j--) {
            int64_t t = (*steps)[j];
            (*steps)[j] = (*steps)[j - 1], (*steps)[j - 1] = t;
        }
    return 0;
}

int ra_checkpoint_latest(const char *dir, char *path, size_t cap, int64_t *step, ra_error *err) {
    int64_t *steps;
    int n;
    int rc = list_steps(dir, &steps, &n, err);
    if (rc) return rc;
    if (n == 0) rc = ra_fail(err, EX_NOINPUT, "%s: no checkpoint (ckpt-<step>.ra) to resume from", dir);
    else {
        rc = ra_checkpoint_path(path, cap, dir, steps[0], err);
        if (!rc && step) *step = steps[0];
    }
    free(steps);
    return rc;
}

int ra_checkpoint_prune(const char *dir, int keep, ra_error *err) {
    int64_t *steps;
    int n;
    int rc = list_steps(dir, &steps, &n, err);
    if (rc) return rc;
    for (int i = keep > 0 ? keep : 1; i < n && !rc; i++) {
        char p[4096];
        rc = ra_checkpoint_path(p, sizeof p, dir, steps[i], err);
        if (!rc && unlink(p) != 0 && errno != ENOENT) rc = ra_fail(err, EX_IOERR, "%s: %s", p, strerror(errno));
    }
    free(steps);
    return rc;
}

int ra_checkpoint_save(const char *dir, int keep, const ra_checkpoint *ck, const ra_optim *o,
                       const json_t *provenance, char *path, size_t cap, ra_error *err) {
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) return ra_fail(err, EX_IOERR, "%s: %s", dir, strerror(errno));
    char p[4096];
    int rc = ra_checkpoint_path(p, sizeof p, dir, o->step, err);
    if (!rc) rc = ra_checkpoint_write(p, ck, o, provenance, NULL, err);
    if (!rc && keep > 0) rc = ra_checkpoint_prune(dir, keep, err);
    if (!rc && path) {
        if (strlen(p) >= cap) return ra_fail(err, EX_SOFTWARE, "%s: checkpoint path too long", dir);
        strcpy(path, p);
    }
    return rc;
}
