/* MOHAWK stage 2 on the CPU (lib/stage2.h). */
#include "stage2.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "block_train.h"
#include "forward.h"
#include "hybrid.h"
#include "stream.h"

struct ra_stage2 {
    const ra_model *teacher;
    ra_model *student;
    int n, *layers, mixer_only, B, T;
    ra_forward_state *fw;
    float **hidden;          /* [layers+1] slots, non-NULL where needed */
    ra_block_acts **acts;    /* [n] */
    ra_block_grads **grads;  /* [n] */
    float *out;              /* [B·T, D] scratch */
    double *losses;          /* [n] */
};

/* ------------------------------------------------------------ layer lists */

static int parse_int_prefix(const char **p, long *v) {
    char *end;
    if (**p < '0' || **p > '9') return -1;
    *v = strtol(*p, &end, 10);
    *p = end;
    return 0;
}

int ra_parse_layer_list(const char *spec, int n_layers, int **out, int *n, ra_error *err) {
    *out = NULL;
    *n = 0;
    if (!spec || !*spec) return ra_fail(err, EX_USAGE, "--layers: empty list");
    char *seen = xcalloc((size_t)n_layers + 1, 1);
    const char *p = spec;
    int rc = 0;
    while (!rc) {
        const char *item = p;
        long a, b;
        if (parse_int_prefix(&p, &a)) rc = -1;
        else if (*p == '-') {
            p++;
            if (parse_int_prefix(&p, &b)) rc = -1;
        } else b = a;
        if (!rc && *p != ',' && *p != '\0') rc = -1;
        size_t len = strcspn(item, ",");
        if (rc) {
            rc = ra_fail(err, EX_USAGE, "--layers: '%.*s': expected N or A-B (e.g. 3, 0-15, 1,4-6)", (int)len, item);
            break;
        }
        if (a > b) {
            rc = ra_fail(err, EX_USAGE, "--layers: '%.*s': the range is reversed", (int)len, item);
            break;
        }
        if (b >= n_layers) {
            rc = ra_fail(err, EX_USAGE, "--layers: '%.*s': the model has layers 0-%d", (int)len, item, n_layers - 1);
            break;
        }
        for (long l = a; l <= b && !rc; l++)
            if (seen[l]++) rc = ra_fail(err, EX_USAGE, "--layers: layer %ld is listed twice", l);
        if (rc || *p == '\0') break;
        p++;
    }
    if (!rc) {
        *out = xmalloc((size_t)n_layers * sizeof **out);
        for (int l = 0; l < n_layers; l++)
            if (seen[l]) (*out)[(*n)++] = l;
    }
    free(seen);
    return rc;
}

/* ------------------------------------------------------------ pairing */

int ra_stage2_check_pair(const ra_model *teacher, const ra_model *student, ra_error *err) {
    if (teacher->hybrid)
        return ra_fail(err, EX_DATAERR, "%s: the teacher is a hybrid student (meta.hybrid); expected a teacher",
                       teacher->source);
    json_t *a = hf_config_to_json(&teacher->cfg), *b = hf_config_to_json(&student->cfg);
    int rc = 0;
    if (!json_equal(a, b)) {
        const char *key;
        json_t *va;
        char what[256] = "the configs differ";
        json_object_foreach(a, key, va) {
            json_t *vb = json_object_get(b, key);
            if (vb && json_equal(va, vb)) continue;
            char *sa = json_dumps(va, JSON_ENCODE_ANY | JSON_COMPACT), *sb = vb ? json_dumps(vb, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
            snprintf(what, sizeof what, "config %s is %.60s in the student, %.60s in the teacher", key, sb ? sb : "absent",
                     sa ? sa : "?");
            free(sa);
            free(sb);
            break;
        }
        rc = ra_fail(err, EX_DATAERR, "%s: not a student of %s: %s", student->source, teacher->source, what);
    } else if (student->hybrid && student->hybrid->teacher_id[0] &&
               strcmp(student->hybrid->teacher_id, teacher->content_id) != 0) {
        rc = ra_fail(err, EX_DATAERR, "%s: meta.hybrid.teacher is %s, but %s has content id %s (not the student's teacher)",
                     student->source, student->hybrid->teacher_id, teacher->source, teacher->content_id);
    }
    json_decref(a);
    json_decref(b);
    return rc;
}

/* ------------------------------------------------------------ the stage */

int ra_stage2_create(const ra_model *teacher, ra_model *student, const int *layers, int n_layers, int mixer_only,
                     int B, int T, ra_stage2 **out, ra_error *err) {
    *out = NULL;
    int L = teacher->cfg.num_layers;
    if (n_layers < 1) return ra_fail(err, EX_USAGE, "stage 2: no layers to train");
    ra_stage2 *s = xcalloc(1, sizeof *s);
    s->teacher = teacher;
    s->student = student;
    s->n = n_layers;
    s->layers = xmalloc((size_t)n_layers * sizeof *s->layers);
    memcpy(s->layers, layers, (size_t)n_layers * sizeof *layers);
    s->mixer_only = mixer_only;
    s->B = B;
    s->T = T;
    size_t rows = (size_t)B * T, D = (size_t)teacher->cfg.hidden_size;
    s->fw = ra_forward_state_create(teacher, B, T);
    s->hidden = xcalloc((size_t)L + 1, sizeof *s->hidden);
    s->acts = xcalloc((size_t)n_layers, sizeof *s->acts);
    s->grads = xcalloc((size_t)n_layers, sizeof *s->grads);
    s->losses = xcalloc((size_t)n_layers, sizeof *s->losses);
    s->out = xmalloc(rows * D * sizeof *s->out);
    for (int i = 0; i < n_layers; i++) {
        int l = layers[i];
        for (int k = l; k <= l + 1; k++)
            if (!s->hidden[k]) s->hidden[k] = xmalloc(rows * D * sizeof(float));
        s->acts[i] = ra_block_acts_create(student, l, B, T, err);
        if (!s->acts[i]) {
            ra_stage2_free(s);
            return err->code;
        }
        s->grads[i] = ra_block_grads_create(student, l, mixer_only);
    }
    *out = s;
    return 0;
}

void ra_stage2_free(ra_stage2 *s) {
    if (!s) return;
    for (int i = 0; i < s->n; i++) {
        ra_block_acts_free(s->acts[i]);
        if (s->grads[i]) ra_block_grads_free(s->grads[i]);
    }
    if (s->hidden)
        for (int k = 0; k <= s->teacher->cfg.num_layers; k++) free(s->hidden[k]);
    free(s->hidden);
    free(s->acts);
    free(s->grads);
    free(s->losses);
    free(s->out);
    free(s->layers);
    if (s->fw) ra_forward_state_free(s->fw);
    free(s);
}

int ra_stage2_register(ra_stage2 *s, ra_optim *o, ra_error *err) {
    for (int i = 0; i < s->n; i++) {
        ra_block_grads *g = s->grads[i];
        for (int j = 0; j < g->n; j++) {
            if (!g->grad[j]) continue; /* --train mixer: norms and MLP are not trained */
            const ra_model_tensor *t = &g->t[j];
            if (ra_optim_add(o, t->name, *t->data, g->grad[j], t->ndim, t->shape, err)) return err->code;
        }
    }
    return 0;
}

/* Teacher residuals entering every listed layer and the next one. */
static int teacher_forward(ra_stage2 *s, const ra_train_batch *b, ra_error *err) {
    if (b->B != s->B || b->T != s->T)
        return ra_fail(err, EX_SOFTWARE, "stage 2: batch %dx%d, expected %dx%d", b->B, b->T, s->B, s->T);
    ra_forward_opts o = {0};
    o.doc_start = b->doc_start;
    o.stop_layer = s->layers[s->n - 1] + 1;
    o.hidden_out = s->hidden;
    return ra_forward_cpu(s->fw, b->tokens, b->B, b->T, &o, err);
}

static int run_layers(ra_stage2 *s, const ra_train_batch *b, float dloss, int grad, double *loss, ra_error *err) {
    if (teacher_forward(s, b, err)) return err->code;
    double total = 0;
    for (int i = 0; i < s->n; i++) {
        int l = s->layers[i];
        s->losses[i] = ra_block_stage2(s->acts[i], grad ? &s->grads[i]->g : NULL, s->out, s->hidden[l],
                                       s->hidden[l + 1], b->doc_start, b->B, b->T, dloss);
        total += s->losses[i];
    }
    *loss = total;
    return 0;
}

int ra_stage2_micro_step(void *ctx, const ra_train_batch *b, float dloss, double *loss, ra_error *err) {
    return run_layers(ctx, b, dloss, 1, loss, err);
}

int ra_stage2_eval(void *ctx, const ra_train_batch *b, double *loss, ra_error *err) {
    return run_layers(ctx, b, 0, 0, loss, err);
}

const double *ra_stage2_layer_losses(const ra_stage2 *s) { return s->losses; }

/* ------------------------------------------------------------ output */

static int in_listed_layer(const char *name, void *arg) {
    const ra_stage2 *s = arg;
    for (int i = 0; i < s->n; i++) {
        char prefix[48];
        int n = snprintf(prefix, sizeof prefix, "model.layers.%d.", s->layers[i]);
        if (strncmp(name, prefix, (size_t)n) == 0) return 1;
    }
    return 0;
}

int ra_stage2_write(const ra_stage2 *s, const char *path, ra_dtype dtype, const json_t *provenance, char *content_id,
                    ra_error *err) {
    return ra_model_write_stream_subset(s->student, path, dtype, provenance, in_listed_layer, (void *)s, content_id,
                                        err);
}

int ra_model_stream_dtype(const char *path, ra_dtype *out, ra_error *err) {
    *out = RA_F32;
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) return 0; /* an HF directory, stdin: f32 */
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    ra_reader *r = ra_reader_open_file(f, path, err);
    if (!r) {
        fclose(f);
        return err->code;
    }
    ra_tensor_info info;
    int st = ra_reader_next(r, &info, err);
    if (st == 1) *out = info.dtype;
    ra_reader_close(r);
    fclose(f);
    return st < 0 ? err->code : 0;
}
