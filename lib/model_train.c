/* Whole-model training forward, loss and backward on the CPU
 * (lib/model_train.h).  The blocks are lib/block_train.c's; this file adds
 * the embedding, the final norm, the LM head and the stage-3 losses, with
 * the vocabulary side computed in row chunks so no [B·T, V] array exists. */
#include <stdlib.h>
#include <string.h>

#include "forward.h"
#include "hybrid.h"
#include "loss.h"
#include "model_train.h"
#include "ops.h"

int ra_stage3_loss_parse(const char *s, ra_stage3_loss *out) {
    if (strcmp(s, "kd") == 0) *out = RA_LOSS_KD;
    else if (strcmp(s, "ce") == 0) *out = RA_LOSS_CE;
    else return -1;
    return 0;
}

const char *ra_stage3_loss_name(ra_stage3_loss l) { return l == RA_LOSS_CE ? "ce" : "kd"; }

/* ------------------------------------------------------------- grads */

static float *fbuf(size_t count) { return xcalloc(count ? count : 1, sizeof(float)); }

ra_model_grads *ra_model_grads_create(ra_model *m) {
    const hf_config *c = &m->cfg;
    ra_model_grads *g = xcalloc(1, sizeof *g);
    g->m = m;
    g->n = ra_model_tensor_list(m, &g->t);
    g->grad = xcalloc((size_t)g->n, sizeof *g->grad);
    g->n_layers = c->num_layers;
    g->layers = xcalloc((size_t)c->num_layers, sizeof *g->layers);
    for (int l = 0; l < c->num_layers; l++) g->layers[l] = ra_block_grads_create(m, l, 0);
    size_t VD = (size_t)c->vocab_size * c->hidden_size;
    g->embed = fbuf(VD);
    g->final_norm = fbuf((size_t)c->hidden_size);
    g->lm_head = m->lm_head == m->embed ? g->embed : fbuf(VD);
    /* Match every listed tensor with its gradient by the slot it lives in. */
    for (int i = 0; i < g->n; i++) {
        float **slot = g->t[i].data;
        if (slot == &m->embed) g->grad[i] = g->embed;
        else if (slot == &m->final_norm) g->grad[i] = g->final_norm;
        else if (slot == &m->lm_head) g->grad[i] = g->lm_head;
        else
            for (int l = 0; l < c->num_layers && !g->grad[i]; l++) {
                const ra_block_grads *b = g->layers[l];
                for (int j = 0; j < b->n; j++)
                    if (b->t[j].data == slot) g->grad[i] = b->grad[j];
            }
        RA_CHECK(g->grad[i] != NULL);
    }
    return g;
}

void ra_model_grads_zero(ra_model_grads *g) {
    for (int i = 0; i < g->n; i++)
        if (g->grad[i]) memset(g->grad[i], 0, (size_t)ra_tensor_numel(&g->t[i]) * sizeof(float));
}

void ra_model_grads_free(ra_model_grads *g) {
    if (!g) return;
    for (int l = 0; l < g->n_layers; l++) ra_block_grads_free(g->layers[l]);
    if (g->lm_head != g->embed) free(g->lm_head); /* (released ones are NULL) */
    free(g->embed), free(g->final_norm);
    free(g->layers), free(g->grad), free(g->t);
    free(g);
}

int64_t ra_model_grads_release_frozen(ra_model_grads *g, ra_optim *o) {
    ra_model *m = g->m;
    int64_t released = 0;
    for (int i = 0; i < g->n; i++) {
        ra_param *p = ra_optim_find(o, g->t[i].name);
        if (!p || !p->frozen || !g->grad[i]) continue;
        float **slot = g->t[i].data;
        if (slot == &m->embed || slot == &m->lm_head) {
            /* tied: one tensor, one array for both uses */
            if (g->lm_head == g->grad[i]) g->lm_head = NULL;
            if (g->embed == g->grad[i]) g->embed = NULL;
        } else if (slot == &m->final_norm) {
            g->final_norm = NULL;
        } else {
            int mixer = 0;
            for (int l = 0; l < g->n_layers; l++) {
                ra_block_grads *b = g->layers[l];
                for (int j = 0; j < b->n; j++) {
                    if (b->t[j].data != slot) continue;
                    mixer = b->mixer[j];
                    if (mixer) break;
                    /* the same field of the gradient layer (see ra_block_grads_create) */
                    ptrdiff_t off = (const char *)slot - (const char *)&m->layers[l];
                    float *none = NULL;
                    memcpy((char *)&b->g + off, &none, sizeof none);
                    b->grad[j] = NULL;
                }
            }
            if (mixer) continue;
        }
        free(g->grad[i]);
        released += ra_tensor_numel(&g->t[i]);
        g->grad[i] = NULL;
        p->g = NULL;
    }
    return released;
}

int ra_model_grads_register(ra_model_grads *g, ra_optim *o, ra_error *err) {
    for (int i = 0; i < g->n; i++) {
        int rc = ra_optim_add(o, g->t[i].name, *g->t[i].data, g->grad[i], g->t[i].ndim, g->t[i].shape, err);
        if (rc) return rc;
    }
    return 0;
}

/* ------------------------------------------------------------ state */

struct ra_model_train {
    ra_model *m;
    const ra_model *teacher;
    int B, T, n, R;
    ra_block_acts **acts;  /* [layers] */
    float *x0, *x1;        /* residual ping-pong [n, D] (blocks keep their own input copy) */
    float *xf, *xfn, *rstd; /* last residual, final-normed [n, D], 1/rms [n] */
    float *dxf;            /* gradient w.r.t. xfn, then xf / the residual [n, D] */
    float *zs, *zt;        /* student / teacher logits of one row chunk [R, V] */
    float *lse_s, *lse_t;  /* [R] */
    float *th, *thn;       /* teacher's last residual [n, D], its chunk normed [R, D] */
    int32_t *labels;       /* [n] */
    ra_forward_state *tfs; /* teacher forward state */
};

ra_model_train *ra_model_train_create(ra_model *student, const ra_model *teacher, int B, int T, int logit_elems,
                                      ra_error *err) {
    const hf_config *c = &student->cfg;
    if (B < 1 || T < 1 || (int64_t)B * T > (1 << 30)) {
        ra_fail(err, EX_SOFTWARE, "model_train: batch %d × %d out of range", B, T);
        return NULL;
    }
    if (teacher && ra_stage3_check_pair(teacher, student, err)) return NULL;
    ra_model_train *mt = xcalloc(1, sizeof *mt);
    size_t n = (size_t)B * T, D = c->hidden_size, V = c->vocab_size;
    mt->m = student, mt->teacher = teacher, mt->B = B, mt->T = T, mt->n = (int)n;
    if (logit_elems <= 0) logit_elems = RA_LOGIT_CHUNK_ELEMS;
    int64_t R = logit_elems / (int64_t)V;
    mt->R = (int)(R < 1 ? 1 : R > (int64_t)n ? (int64_t)n : R);
    mt->acts = xcalloc((size_t)c->num_layers, sizeof *mt->acts);
    for (int l = 0; l < c->num_layers; l++) {
        mt->acts[l] = ra_block_acts_create(student, l, B, T, err);
        if (!mt->acts[l]) {
            ra_model_train_free(mt);
            return NULL;
        }
    }
    mt->x0 = fbuf(n * D), mt->x1 = fbuf(n * D);
    mt->xf = fbuf(n * D), mt->xfn = fbuf(n * D), mt->rstd = fbuf(n), mt->dxf = fbuf(n * D);
    mt->zs = fbuf((size_t)mt->R * V), mt->lse_s = fbuf((size_t)mt->R), mt->lse_t = fbuf((size_t)mt->R);
    mt->labels = xcalloc(n, sizeof(int32_t));
    if (teacher) {
        mt->zt = fbuf((size_t)mt->R * V);
        mt->th = fbuf(n * D), mt->thn = fbuf((size_t)mt->R * D);
        mt->tfs = ra_forward_state_create(teacher, B, T);
    }
    return mt;
}

void ra_model_train_free(ra_model_train *mt) {
    if (!mt) return;
    for (int l = 0; l < mt->m->cfg.num_layers; l++) ra_block_acts_free(mt->acts[l]);
    free(mt->acts);
    float *bufs[] = {mt->x0, mt->x1, mt->xf, mt->xfn, mt->rstd, mt->dxf, mt->zs, mt->zt, mt->lse_s, mt->lse_t, mt->th,
                     mt->thn};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
    free(mt->labels);
    if (mt->tfs) ra_forward_state_free(mt->tfs);
    free(mt);
}

int ra_model_train_logit_rows(const ra_model_train *mt) { return mt->R; }

void ra_next_token_labels(int32_t *labels, const int32_t *tokens, const int32_t *doc_start, int B, int T) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            size_t i = (size_t)b * T + t;
            int same_doc = t + 1 < T && (!doc_start || doc_start[i + 1] == doc_start[i]);
            labels[i] = same_doc ? tokens[i + 1] : RA_LABEL_IGNORE;
        }
}

int ra_stage3_batch_labels(ra_stage3_loss kind, int has_teacher, float temperature, const int32_t *tokens,
                           const int32_t *doc_start, const int32_t *labels, int B, int T, int V, int32_t *scratch,
                           const int32_t **labels_out, int *total, ra_error *err) {
    *labels_out = NULL;
    *total = B * T;
    if (kind == RA_LOSS_KD) {
        if (!has_teacher) return ra_fail(err, EX_USAGE, "model_train: --loss kd needs a teacher");
        if (!(temperature > 0)) return ra_fail(err, EX_USAGE, "model_train: temperature %g, expected > 0", temperature);
        return 0;
    }
    if (!labels) {
        ra_next_token_labels(scratch, tokens, doc_start, B, T);
        labels = scratch;
    }
    int n = B * T, counted = 0;
    for (int i = 0; i < n; i++) {
        if (labels[i] == RA_LABEL_IGNORE) continue;
        if (labels[i] < 0 || labels[i] >= V)
            return ra_fail(err, EX_DATAERR, "row %d position %d: label %d, expected 0..%d or %d", i / T, i % T,
                           labels[i], V - 1, RA_LABEL_IGNORE);
        counted++;
    }
    *labels_out = labels, *total = counted;
    return 0;
}

int ra_stage3_check_pair(const ra_model *teacher, const ra_model *student, ra_error *err) {
    const hf_config *t = &teacher->cfg, *s = &student->cfg;
    if (t->vocab_size != s->vocab_size)
        return ra_fail(err, EX_DATAERR, "%s: vocabulary of %d tokens, but the teacher %s has %d", student->source,
                       s->vocab_size, teacher->source, t->vocab_size);
    if (t->hidden_size != s->hidden_size)
        return ra_fail(err, EX_DATAERR, "%s: hidden size %d, but the teacher %s has %d", student->source,
                       s->hidden_size, teacher->source, t->hidden_size);
    if (student->hybrid && student->hybrid->teacher_id[0] && strcmp(student->hybrid->teacher_id, teacher->content_id))
        return ra_fail(err, EX_DATAERR, "%s: meta.hybrid.teacher is %s, but the teacher %s has content id %s",
                       student->source, student->hybrid->teacher_id, teacher->source, teacher->content_id);
    return 0;
}

/* ---------------------------------------------------------- forward */

static int check_batch(const ra_model_train *mt, const int32_t *tokens, const int32_t *doc_start, int B, int T,
                       ra_error *err) {
    if (B != mt->B || T != mt->T)
        return ra_fail(err, EX_SOFTWARE, "model_train: batch %d × %d, buffers made for %d × %d", B, T, mt->B, mt->T);
    int V = mt->m->cfg.vocab_size;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            size_t i = (size_t)b * T + t;
            if (tokens[i] < 0 || tokens[i] >= V)
                return ra_fail(err, EX_DATAERR, "row %d position %d: token id %d is outside the vocabulary (0..%d)", b,
                               t, tokens[i], V - 1);
            if (doc_start && (doc_start[i] < 0 || doc_start[i] > t))
                return ra_fail(err, EX_DATAERR, "row %d position %d: doc_start %d, expected 0..%d", b, t, doc_start[i],
                               t);
        }
    return 0;
}

/* Embedding, every block, final norm: mt->xf, mt->xfn, mt->rstd. */
static void trunk_forward(ra_model_train *mt, const int32_t *tokens, const int32_t *doc_start) {
    const ra_model *m = mt->m;
    int n = mt->n, D = m->cfg.hidden_size, L = m->cfg.num_layers;
    embedding_forward(mt->x0, tokens, m->embed, n, D);
    float *in = mt->x0, *out = mt->x1;
    for (int l = 0; l < L; l++) {
        ra_block_forward(mt->acts[l], out, in, doc_start, mt->B, mt->T);
        float *swap = in;
        in = out, out = swap;
    }
    memcpy(mt->xf, in, (size_t)n * D * sizeof(float));
    rmsnorm_forward(mt->xfn, mt->rstd, mt->xf, m->final_norm, n, D, (float)m->cfg.rms_norm_eps);
}

/* The teacher's last residual for the batch (mt->th). */
static int teacher_forward(ra_model_train *mt, const int32_t *tokens, const int32_t *doc_start, ra_error *err) {
    int L = mt->teacher->cfg.num_layers;
    float **hidden = xcalloc((size_t)L + 1, sizeof *hidden);
    hidden[L] = mt->th;
    ra_forward_opts o = {0};
    o.doc_start = doc_start;
    o.hidden_out = hidden;
    int rc = ra_forward_cpu(mt->tfs, tokens, mt->B, mt->T, &o, err);
    free(hidden);
    return rc;
}

/* --------------------------------------------------------- the step */

int ra_model_train_step(ra_model_train *mt, const ra_model_grads *g, ra_stage3_loss kind, const int32_t *tokens,
                        const int32_t *doc_start, const int32_t *labels, int B, int T, float temperature, float dloss,
                        double *loss, int *counted, ra_error *err) {
    int rc = check_batch(mt, tokens, doc_start, B, T, err);
    if (rc) return rc;
    const ra_model *m = mt->m;
    int n = mt->n, D = m->cfg.hidden_size, V = m->cfg.vocab_size, L = m->cfg.num_layers;
    int total; /* positions the loss averages over */
    if ((rc = ra_stage3_batch_labels(kind, mt->teacher != NULL, temperature, tokens, doc_start, labels, B, T, V,
                                     mt->labels, &labels, &total, err)))
        return rc;
    if (kind == RA_LOSS_KD) {
        if ((rc = teacher_forward(mt, tokens, doc_start, err))) return rc;
    } else if (counted) {
        *counted = total;
    }
    trunk_forward(mt, tokens, doc_start);

    /* The vocabulary side, R rows at a time: logits, loss, and (training)
     * the logits' gradient in place, pushed through the LM head at once. */
    double sum = 0;
    for (int r0 = 0; r0 < n; r0 += mt->R) {
        int rows = n - r0 < mt->R ? n - r0 : mt->R;
        const float *xfn = mt->xfn + (size_t)r0 * D;
        linear_forward(mt->zs, xfn, m->lm_head, NULL, rows, D, V);
        if (kind == RA_LOSS_KD) {
            const ra_model *t = mt->teacher;
            rmsnorm_forward(mt->thn, NULL, mt->th + (size_t)r0 * D, t->final_norm, rows, D,
                            (float)t->cfg.rms_norm_eps);
            linear_forward(mt->zt, mt->thn, t->lm_head, NULL, rows, D, V);
            sum += rows * loss_soft_ce_forward(mt->lse_s, mt->lse_t, mt->zs, mt->zt, rows, V, temperature, 0);
            if (g) loss_soft_ce_backward(mt->zs, mt->zs, mt->zt, mt->lse_s, mt->lse_t, rows, V, temperature,
                                         (float)((double)dloss * rows / total));
        } else {
            double l;
            int cnt = 0;
            rc = loss_ce_forward(&l, mt->lse_s, NULL, &cnt, mt->zs, labels + r0, rows, V, RA_LABEL_IGNORE, 0, err);
            RA_CHECK(rc == 0); /* labels were checked above */
            sum += cnt * l;
            if (g) loss_ce_backward(mt->zs, mt->zs, labels + r0, mt->lse_s, rows, V, RA_LABEL_IGNORE,
                                    total ? (float)((double)dloss * cnt / total) : 0.0f);
        }
        if (g) linear_backward(mt->dxf + (size_t)r0 * D, g->lm_head, NULL, mt->zs, xfn, m->lm_head, rows, D, V);
    }
    *loss = total ? sum / total : 0;
    if (!g) return 0;

    /* Back through the final norm, every block (dx in place) and the embedding. */
    rmsnorm_backward(mt->x0, g->final_norm, mt->dxf, mt->xf, m->final_norm, mt->rstd, n, D);
    for (int l = L - 1; l >= 0; l--) ra_block_backward_dx(mt->acts[l], &g->layers[l]->g, mt->x0, mt->x0);
    if (g->embed) embedding_backward(g->embed, mt->x0, tokens, n, D);
    return 0;
}
