/* Whole-model training on the GPU (kernels/model_train_cuda.h).  Host code
 * only: it drives the ops of kernels/ops_cuda.h and
 * kernels/ops_backward_cuda.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "forward_cuda_internal.h"
#include "model_train_cuda.h"
#include "ops_backward_cuda.h"
#include "ops_cuda.h"

/* Logit chunk: at most this many bf16 elements per buffer (256 MiB). */
#define LOGIT_CHUNK_ELEMS ((size_t)128 << 20)

/* What one layer saves for its backward. */
typedef struct layer_acts {
    uint16_t *xn1, *qkv, *att, *h, *hn, *gu, *act;
    float *rstd1, *rstd2;
} layer_acts;

/* fp32 gradients of one layer (device; NULL where frozen).  wqkv, bqkv and
 * w_gate_up are owned fused buffers whose slices the optimiser uses. */
typedef struct layer_grads {
    float *input_norm, *post_norm, *wqkv, *bqkv, *wo, *bo, *w_gate_up, *w_down;
} layer_grads;

struct cuda_model_train {
    ra_model *m;
    const ra_model *teacher;
    ra_optim *host;
    cuda_model *cm, *tm;       /* student compute copies, teacher */
    cuda_forward_state *tfs;   /* teacher forward */
    cuda_optim *opt;
    int B, T, n, R, L, D, V, I, H, Hkv, hd, qd, kvd, qkv;
    cuda_alloc_ctx ac;
    ra_error alloc_err;
    /* activations */
    uint16_t **X;              /* [L+1] residuals [n, D] */
    layer_acts *acts;          /* [L] */
    uint16_t *xfn, *dxfn;      /* final-normed [n, D], its gradient */
    float *rstdf;
    uint16_t *zs, *zt, *thn;   /* logit chunks [R, V], teacher normed chunk [R, D] */
    float *row_loss;           /* [n] */
    float *cos_t, *sin_t;      /* [n, hd/2] */
    int32_t *d_ints;           /* tokens, doc_start, labels, positions, then the rows grouped by token:
                                  rows [n], ids [n], offsets [n+1] (cuda_embedding_backward_sorted) */
    int n_ids;                 /* distinct tokens of the batch */
    /* backward workspace */
    uint16_t *dres, *tmp, *dxn, *dqkv, *datt, *dact, *dgu;
    /* gradients */
    layer_grads *lg;
    float *g_embed, *g_final_norm, *g_lm_head;
    /* host scratch */
    int32_t *h_ints, *h_labels, *h_count; /* h_count [V+1] */
    float *h_rows;
    size_t peak;
};

static void sample_peak(cuda_model_train *t) {
    size_t fr = 0, tot = 0;
    cuda_mem_info(&fr, &tot);
    if (tot - fr > t->peak) t->peak = tot - fr;
}

extern "C" size_t cuda_model_train_peak_bytes(const cuda_model_train *t) { return t->peak; }
extern "C" int cuda_model_train_logit_rows(const cuda_model_train *t) { return t->R; }

/* ---- shapes ------------------------------------------------------------------------------ */

static int check_supported(const ra_model *m, const char *role, ra_error *err) {
    const hf_config *c = &m->cfg;
    if (m->hybrid)
        return ra_fail(err, EX_UNAVAILABLE,
                       "--device cuda: %s %s is a hybrid student; the CUDA training step supports teacher-shaped "
                       "models (all heads attention) so far; use --device cpu",
                       role, m->source);
    if (c->head_dim != 32 && c->head_dim != 64 && c->head_dim != 128)
        return ra_fail(err, EX_UNAVAILABLE,
                       "--device cuda: %s %s has head_dim %d; the CUDA training step supports 32, 64 or 128; use "
                       "--device cpu",
                       role, m->source, c->head_dim);
    if (c->num_heads % c->num_kv_heads)
        return ra_fail(err, EX_DATAERR, "%s: %d heads are not a multiple of %d KV heads", m->source, c->num_heads,
                       c->num_kv_heads);
    return 0;
}

/* ---- allocation --------------------------------------------------------------------------- */

static void *dalloc(cuda_model_train *t, size_t bytes, const char *what) { return cuda_alloc_in(&t->ac, bytes, what); }

static int alloc_failed(cuda_model_train *t, ra_error *err) {
    if (!t->ac.rc) return 0;
    *err = t->alloc_err;
    if (err->code == EX_TEMPFAIL) err->code = EX_OSERR;
    return ra_error_prefix(err, "--device cuda: training batch %d × %d tokens: ", t->B, t->T);
}

static void alloc_acts(cuda_model_train *t) {
    size_t n = (size_t)t->n, D = t->D, I = t->I, half = (size_t)t->hd / 2;
    t->X = (uint16_t **)xcalloc((size_t)t->L + 1, sizeof *t->X);
    t->acts = (layer_acts *)xcalloc((size_t)t->L, sizeof *t->acts);
    for (int l = 0; l <= t->L; l++) t->X[l] = (uint16_t *)dalloc(t, n * D * 2, "the residual stream (per layer)");
    for (int l = 0; l < t->L; l++) {
        layer_acts *a = &t->acts[l];
        a->xn1 = (uint16_t *)dalloc(t, n * D * 2, "saved normed inputs");
        a->rstd1 = (float *)dalloc(t, n * 4, "saved RMSNorm statistics");
        a->qkv = (uint16_t *)dalloc(t, n * t->qkv * 2, "saved q/k/v");
        a->att = (uint16_t *)dalloc(t, n * t->qd * 2, "saved attention outputs");
        a->h = (uint16_t *)dalloc(t, n * D * 2, "saved mid-layer residuals");
        a->hn = (uint16_t *)dalloc(t, n * D * 2, "saved normed mid-layer residuals");
        a->rstd2 = (float *)dalloc(t, n * 4, "saved RMSNorm statistics");
        a->gu = (uint16_t *)dalloc(t, n * 2 * I * 2, "saved gate/up activations");
        a->act = (uint16_t *)dalloc(t, n * I * 2, "saved SwiGLU outputs");
    }
    t->xfn = (uint16_t *)dalloc(t, n * D * 2, "the final-normed hidden states");
    t->dxfn = (uint16_t *)dalloc(t, n * D * 2, "their gradient");
    t->rstdf = (float *)dalloc(t, n * 4, "final RMSNorm statistics");
    t->zs = (uint16_t *)dalloc(t, (size_t)t->R * t->V * 2, "a chunk of logits");
    if (t->teacher) {
        t->zt = (uint16_t *)dalloc(t, (size_t)t->R * t->V * 2, "a chunk of teacher logits");
        t->thn = (uint16_t *)dalloc(t, (size_t)t->R * D * 2, "teacher normed hidden states");
    }
    t->row_loss = (float *)dalloc(t, n * 4, "per-row losses");
    t->cos_t = (float *)dalloc(t, n * half * 4, "RoPE tables");
    t->sin_t = (float *)dalloc(t, n * half * 4, "RoPE tables");
    t->d_ints = (int32_t *)dalloc(t, (7 * n + 1) * 4, "token ids, document starts, labels, positions");
    t->dres = (uint16_t *)dalloc(t, n * D * 2, "the residual gradient");
    t->tmp = (uint16_t *)dalloc(t, n * D * 2, "backward workspace");
    t->dxn = (uint16_t *)dalloc(t, n * D * 2, "backward workspace");
    t->dqkv = (uint16_t *)dalloc(t, n * t->qkv * 2, "the q/k/v gradient");
    t->datt = (uint16_t *)dalloc(t, n * t->qd * 2, "the attention-output gradient");
    t->dact = (uint16_t *)dalloc(t, n * I * 2, "the SwiGLU gradient");
    t->dgu = (uint16_t *)dalloc(t, n * 2 * I * 2, "the gate/up gradient");
}

extern "C" void cuda_model_train_free(cuda_model_train *t) {
    if (!t) return;
    cuda_synchronize();
    if (t->X)
        for (int l = 0; l <= t->L; l++) cuda_free(t->X[l]);
    if (t->acts)
        for (int l = 0; l < t->L; l++) {
            layer_acts *a = &t->acts[l];
            void *p[] = {a->xn1, a->rstd1, a->qkv, a->att, a->h, a->hn, a->rstd2, a->gu, a->act};
            for (size_t i = 0; i < sizeof p / sizeof *p; i++) cuda_free(p[i]);
        }
    if (t->lg)
        for (int l = 0; l < t->L; l++) cuda_free(t->lg[l].wqkv), cuda_free(t->lg[l].bqkv), cuda_free(t->lg[l].w_gate_up);
    void *p[] = {t->xfn, t->dxfn, t->rstdf, t->zs, t->zt, t->thn, t->row_loss, t->cos_t, t->sin_t, t->d_ints,
                 t->dres, t->tmp, t->dxn, t->dqkv, t->datt, t->dact, t->dgu};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) cuda_free(p[i]);
    cuda_optim_free(t->opt);
    cuda_forward_state_free(t->tfs);
    cuda_model_free(t->tm);
    cuda_model_free(t->cm);
    free(t->X), free(t->acts), free(t->lg);
    free(t->h_ints), free(t->h_labels), free(t->h_rows), free(t->h_count);
    free(t);
}

extern "C" int cuda_model_train_create(cuda_model_train **out, ra_model *m, const ra_model *teacher, ra_optim *optim,
                                       int B, int T, ra_error *err) {
    *out = NULL;
    int rc = cuda_device_init(0, err);
    if (rc) {
        char msg[sizeof err->msg];
        memcpy(msg, err->msg, sizeof msg);
        return ra_fail(err, rc, "--device cuda: %s; use --device cpu", msg);
    }
    if ((rc = check_supported(m, "student", err))) return rc;
    if (teacher && (rc = ra_stage3_check_pair(teacher, m, err))) return rc;
    if (B < 1 || T < 1 || (int64_t)B * T > (1 << 30))
        return ra_fail(err, EX_USAGE, "--device cuda: batch %d × %d out of range", B, T);
    const hf_config *c = &m->cfg;
    cuda_model_train *t = (cuda_model_train *)xcalloc(1, sizeof *t);
    t->m = m, t->teacher = teacher, t->host = optim, t->B = B, t->T = T, t->n = B * T;
    t->L = c->num_layers, t->D = c->hidden_size, t->V = c->vocab_size, t->I = c->intermediate_size;
    t->H = c->num_heads, t->Hkv = c->num_kv_heads, t->hd = c->head_dim;
    t->qd = t->H * t->hd, t->kvd = t->Hkv * t->hd, t->qkv = t->qd + 2 * t->kvd;
    size_t R = LOGIT_CHUNK_ELEMS / (size_t)t->V;
    t->R = (int)(R < 1 ? 1 : R > (size_t)t->n ? (size_t)t->n : R);
    t->ac.err = &t->alloc_err;
    if ((rc = cuda_model_upload(m, &t->cm, err))) goto fail;
    if (teacher) {
        if ((rc = cuda_model_upload(teacher, &t->tm, err))) goto fail;
        if ((rc = cuda_forward_state_create(t->tm, B, T, &t->tfs, err))) goto fail;
    }
    alloc_acts(t);
    if ((rc = alloc_failed(t, err))) goto fail;
    {
        int width = t->qkv > t->D ? t->qkv : t->D;
        if ((rc = cuda_train_scratch_reserve(t->n, width, B, T, t->Hkv, t->hd, 0, err))) goto fail;
    }
    t->h_ints = (int32_t *)xmalloc(((size_t)7 * t->n + 1) * sizeof(int32_t));
    t->h_count = (int32_t *)xmalloc(((size_t)t->V + 1) * sizeof(int32_t));
    t->h_labels = (int32_t *)xmalloc((size_t)t->n * sizeof(int32_t));
    t->h_rows = (float *)xmalloc((size_t)t->n * sizeof(float));
    cuda_synchronize();
    sample_peak(t);
    *out = t;
    return 0;
fail:
    if (rc == EX_TEMPFAIL) {
        err->code = EX_OSERR;
        ra_error_prefix(err, "--device cuda: training batch %d × %d tokens: ", B, T);
    }
    cuda_model_train_free(t);
    return rc == EX_TEMPFAIL ? EX_OSERR : rc;
}

/* ---- parameters ------------------------------------------------------------------------------ */

/* Where parameter `slot` of the host model lives on the device: its bf16
 * compute copy, the gradient slice it uses (fused, or NULL: the
 * optimiser's own), and where to record that gradient. */
typedef struct param_place {
    uint16_t *compute;
    float *fused_grad;   /* slice of an owned fused buffer, or NULL */
    float **grad_field;  /* where the backward finds the gradient */
} param_place;

enum { F_WQKV, F_BQKV, F_GU, F_N };

/* For slot of layer l: which fused buffer (F_*, or -1) and its offset. */
static int layer_slot(cuda_model_train *t, int l, float **slot, int *fused, size_t *off, uint16_t **compute,
                      float ***field) {
    ra_layer *L = &t->m->layers[l];
    cuda_layer_weights *W = &t->cm->layers[l];
    layer_grads *g = &t->lg[l];
    size_t D = t->D, qd = t->qd, kvd = t->kvd, I = t->I;
    *fused = -1, *off = 0, *field = NULL;
    if (slot == &L->input_norm) *compute = W->input_norm, *field = &g->input_norm;
    else if (slot == &L->post_norm) *compute = W->post_norm, *field = &g->post_norm;
    else if (slot == &L->wq) *fused = F_WQKV, *off = 0;
    else if (slot == &L->wk) *fused = F_WQKV, *off = qd * D;
    else if (slot == &L->wv) *fused = F_WQKV, *off = (qd + kvd) * D;
    else if (slot == &L->bq) *fused = F_BQKV, *off = 0;
    else if (slot == &L->bk) *fused = F_BQKV, *off = qd;
    else if (slot == &L->bv) *fused = F_BQKV, *off = qd + kvd;
    else if (slot == &L->wo) *compute = W->wo, *field = &g->wo;
    else if (slot == &L->bo) *compute = W->bo, *field = &g->bo;
    else if (slot == &L->w_gate) *fused = F_GU, *off = 0;
    else if (slot == &L->w_up) *fused = F_GU, *off = I * D;
    else if (slot == &L->w_down) *compute = W->w_down, *field = &g->w_down;
    else return 0;
    if (*fused == F_WQKV) *compute = W->wqkv + *off;
    if (*fused == F_BQKV) *compute = W->bqkv ? W->bqkv + *off : NULL;
    if (*fused == F_GU) *compute = W->w_gate_up + *off;
    return 1;
}

static float **fused_buffer(layer_grads *g, int f) {
    return f == F_WQKV ? &g->wqkv : f == F_BQKV ? &g->bqkv : &g->w_gate_up;
}

static size_t fused_elems(const cuda_model_train *t, int f) {
    return f == F_WQKV ? (size_t)t->qkv * t->D : f == F_BQKV ? (size_t)t->qkv : (size_t)2 * t->I * t->D;
}

/* Find the host tensor named `name` and its slot. */
static float **slot_of(const ra_model_tensor *tl, int nt, const char *name) {
    for (int j = 0; j < nt; j++)
        if (!strcmp(tl[j].name, name)) return tl[j].data;
    return NULL;
}

/* Place parameter i: compute copy, gradient.  pass 0 allocates the fused
 * gradient buffers a trainable parameter needs; pass 1 wires. */
static int place_param(cuda_model_train *t, int i, float **slot, int pass, ra_error *err) {
    ra_model *m = t->m;
    cuda_optim_param *p = &t->opt->params[i];
    uint16_t *compute = NULL;
    float **field = NULL;
    int fused = -1, lay = -1;
    size_t off = 0;
    if (slot == &m->embed) compute = t->cm->embed, field = &t->g_embed;
    else if (slot == &m->final_norm) compute = t->cm->final_norm, field = &t->g_final_norm;
    else if (slot == &m->lm_head) compute = t->cm->lm_head, field = &t->g_lm_head;
    else
        for (int l = 0; l < t->L && lay < 0; l++)
            if (layer_slot(t, l, slot, &fused, &off, &compute, &field)) lay = l;
    if (!compute && !field && fused < 0)
        return ra_fail(err, EX_SOFTWARE, "--device cuda: parameter '%s' has no place on the device", p->name);
    if (pass == 0) {
        if (fused >= 0 && !p->frozen) {
            float **buf = fused_buffer(&t->lg[lay], fused);
            if (!*buf) {
                *buf = (float *)dalloc(t, fused_elems(t, fused) * 4, "fused gradients");
                if (*buf) cuda_memset(*buf, 0, fused_elems(t, fused) * 4);
            }
        }
        return 0;
    }
    if (compute) cuda_optim_set_compute_copy(t->opt, i, compute);
    if (p->frozen) return 0;
    if (fused >= 0) cuda_optim_set_grad(t->opt, i, *fused_buffer(&t->lg[lay], fused) + off);
    else *field = p->g;
    return 0;
}

extern "C" int cuda_model_train_begin(cuda_model_train *t, ra_error *err) {
    int rc = cuda_optim_create(&t->opt, t->host, err);
    if (rc) {
        if (rc == EX_TEMPFAIL) err->code = rc = EX_OSERR;
        return ra_error_prefix(err, "--device cuda: the optimiser state: ");
    }
    t->lg = (layer_grads *)xcalloc((size_t)t->L, sizeof *t->lg);
    ra_model_tensor *tl;
    int nt = ra_model_tensor_list(t->m, &tl);
    for (int pass = 0; pass < 2 && !rc; pass++)
        for (int i = 0; i < t->opt->n && !rc; i++) {
            float **slot = slot_of(tl, nt, t->opt->params[i].name);
            if (!slot) rc = ra_fail(err, EX_SOFTWARE, "--device cuda: parameter '%s' is not in the model",
                                    t->opt->params[i].name);
            else rc = place_param(t, i, slot, pass, err);
            if (!rc && pass == 0) rc = alloc_failed(t, err);
        }
    free(tl);
    if (rc) return rc;
    if (t->m->lm_head == t->m->embed) t->g_lm_head = t->g_embed;
    cuda_optim_refresh_compute(t->opt);
    cuda_synchronize();
    sample_peak(t);
    return 0;
}

extern "C" void cuda_model_train_zero_grad(cuda_model_train *t) {
    cuda_optim_zero_grad(t->opt);
    for (int l = 0; l < t->L; l++)
        for (int f = 0; f < F_N; f++) {
            float *b = *fused_buffer(&t->lg[l], f);
            if (b) cuda_memset(b, 0, fused_elems(t, f) * 4);
        }
}

extern "C" int cuda_model_train_optim_step(cuda_model_train *t, double lr, int poison, ra_error *err) {
    if (poison) cuda_optim_poison(t->opt);
    int rc = cuda_optim_step(t->opt, lr, err);
    t->host->step = t->opt->step;
    t->host->last_grad_norm = t->opt->last_grad_norm;
    return rc;
}

extern "C" void cuda_model_train_download(cuda_model_train *t) { cuda_optim_download(t->opt, t->host); }
extern "C" void cuda_model_train_upload(cuda_model_train *t) { cuda_optim_upload(t->opt, t->host); }

extern "C" int cuda_model_train_grad(cuda_model_train *t, const char *name, float *out, ra_error *err) {
    for (int i = 0; i < t->opt->n; i++) {
        cuda_optim_param *p = &t->opt->params[i];
        if (strcmp(p->name, name)) continue;
        if (!p->g) return ra_fail(err, EX_USAGE, "parameter '%s' has no gradient (frozen)", name);
        cuda_synchronize();
        cuda_download(out, p->g, (size_t)p->numel * sizeof(float));
        return 0;
    }
    return ra_fail(err, EX_USAGE, "no parameter '%s'", name);
}

/* ---- the step ------------------------------------------------------------------------------------ */

static int check_batch(const cuda_model_train *t, const int32_t *tokens, const int32_t *doc_start, int B, int T,
                       ra_error *err) {
    if (B != t->B || T != t->T)
        return ra_fail(err, EX_SOFTWARE, "model_train: batch %d × %d, buffers made for %d × %d", B, T, t->B, t->T);
    for (int b = 0; b < B; b++)
        for (int s = 0; s < T; s++) {
            size_t i = (size_t)b * T + s;
            if (tokens[i] < 0 || tokens[i] >= t->V)
                return ra_fail(err, EX_DATAERR, "row %d position %d: token id %d is outside the vocabulary (0..%d)", b,
                               s, tokens[i], t->V - 1);
            if (doc_start && (doc_start[i] < 0 || doc_start[i] > s))
                return ra_fail(err, EX_DATAERR, "row %d position %d: doc_start %d, expected 0..%d", b, s, doc_start[i],
                               s);
        }
    return 0;
}

static void layer_forward(cuda_model_train *t, int l, const int32_t *doc) {
    const cuda_layer_weights *W = &t->cm->layers[l];
    layer_acts *a = &t->acts[l];
    int n = t->n, D = t->D, I = t->I, qkv = t->qkv;
    float eps = (float)t->m->cfg.rms_norm_eps;
    cuda_rmsnorm_forward(a->xn1, a->rstd1, t->X[l], W->input_norm, n, D, eps);
    cuda_linear_forward(a->qkv, a->xn1, W->wqkv, W->bqkv, n, D, qkv);
    cuda_rope_forward_strided(a->qkv, qkv, t->cos_t, t->sin_t, n, t->H + t->Hkv, t->hd);
    cuda_attention_args at;
    memset(&at, 0, sizeof at);
    at.out = a->att, at.out_stride = t->qd;
    at.q = a->qkv, at.q_stride = qkv;
    at.k = a->qkv + t->qd, at.v = a->qkv + t->qd + t->kvd, at.kv_stride = qkv;
    at.doc_start = doc;
    at.B = t->B, at.T = t->T, at.H = t->H, at.Hkv = t->Hkv, at.hd = t->hd;
    cuda_attention_forward_ex(&at);
    cuda_copy(a->h, t->X[l], (size_t)n * D * 2);
    cuda_linear_residual_forward(a->h, a->att, W->wo, W->bo, n, t->qd, D);
    cuda_rmsnorm_forward(a->hn, a->rstd2, a->h, W->post_norm, n, D, eps);
    cuda_linear_forward(a->gu, a->hn, W->w_gate_up, NULL, n, D, 2 * I);
    cuda_swiglu_fused_forward(a->act, a->gu, n, I);
    cuda_copy(t->X[l + 1], a->h, (size_t)n * D * 2);
    cuda_linear_residual_forward(t->X[l + 1], a->act, W->w_down, NULL, n, I, D);
}

/* dres holds ∂L/∂X[l+1]; on return ∂L/∂X[l]. */
static void layer_backward(cuda_model_train *t, int l, const int32_t *doc) {
    const cuda_layer_weights *W = &t->cm->layers[l];
    const layer_acts *a = &t->acts[l];
    const layer_grads *g = &t->lg[l];
    int n = t->n, D = t->D, I = t->I, qkv = t->qkv;
    /* MLP: X[l+1] = h + down(swiglu(gate_up(hn))) */
    cuda_linear_backward(t->dact, g->w_down, NULL, t->dres, a->act, W->w_down, n, I, D);
    cuda_swiglu_fused_backward(t->dgu, t->dact, a->gu, n, I);
    cuda_linear_backward(t->dxn, g->w_gate_up, NULL, t->dgu, a->hn, W->w_gate_up, n, D, 2 * I);
    cuda_rmsnorm_backward(t->tmp, g->post_norm, t->dxn, a->h, W->post_norm, a->rstd2, n, D);
    cuda_residual_add(t->dres, t->tmp, (int64_t)n * D); /* dres = ∂L/∂h */
    /* h = X[l] + o_proj(attention(rope(qkv(xn1)))) */
    cuda_linear_backward(t->datt, g->wo, g->bo, t->dres, a->att, W->wo, n, t->qd, D);
    cuda_attention_bwd_args ab;
    ab.dq = t->dqkv, ab.dk = t->dqkv + t->qd, ab.dv = t->dqkv + t->qd + t->kvd;
    ab.dout = t->datt, ab.q = a->qkv, ab.k = a->qkv + t->qd, ab.v = a->qkv + t->qd + t->kvd;
    ab.doc_start = doc;
    ab.q_stride = ab.kv_stride = ab.dq_stride = ab.dkv_stride = qkv;
    ab.dout_stride = t->qd;
    ab.B = t->B, ab.T = t->T, ab.H = t->H, ab.Hkv = t->Hkv, ab.hd = t->hd;
    cuda_attention_backward_ex(&ab);
    cuda_rope_backward_strided(t->dqkv, qkv, t->cos_t, t->sin_t, n, t->H + t->Hkv, t->hd);
    cuda_linear_backward(t->dxn, g->wqkv, g->bqkv, t->dqkv, a->xn1, W->wqkv, n, D, qkv);
    cuda_rmsnorm_backward(t->tmp, g->input_norm, t->dxn, t->X[l], W->input_norm, a->rstd1, n, D);
    cuda_residual_add(t->dres, t->tmp, (int64_t)n * D);
}

/* Host inputs → one upload: tokens, doc_start, labels, positions, and the
 * rows grouped by token (a counting sort, rows ascending within a token). */
static void upload_inputs(cuda_model_train *t, const int32_t *tokens, const int32_t *doc_start,
                          const int32_t *labels) {
    size_t n = (size_t)t->n;
    int32_t *h = t->h_ints;
    memcpy(h, tokens, n * 4);
    if (doc_start) memcpy(h + n, doc_start, n * 4);
    else memset(h + n, 0, n * 4);
    if (labels) memcpy(h + 2 * n, labels, n * 4);
    else memset(h + 2 * n, 0, n * 4);
    for (size_t i = 0; i < n; i++) h[3 * n + i] = (int32_t)(i % t->T) - (doc_start ? doc_start[i] : 0);
    int32_t *rows = h + 4 * n, *ids = h + 5 * n, *offsets = h + 6 * n, *cnt = t->h_count;
    memset(cnt, 0, ((size_t)t->V + 1) * sizeof(int32_t));
    for (size_t i = 0; i < n; i++) cnt[tokens[i] + 1]++;
    int k = 0;
    for (int v = 0; v < t->V; v++) {
        if (cnt[v + 1]) ids[k] = v, offsets[k] = cnt[v], k++;
        cnt[v + 1] += cnt[v]; /* cnt[v] = first slot of token v */
    }
    offsets[k] = (int32_t)n;
    t->n_ids = k;
    for (size_t i = 0; i < n; i++) rows[cnt[tokens[i]]++] = (int32_t)i;
    cuda_upload(t->d_ints, h, (7 * n + 1) * 4);
}

extern "C" int cuda_model_train_step(cuda_model_train *t, int want_grads, ra_stage3_loss kind, const int32_t *tokens,
                                     const int32_t *doc_start, const int32_t *labels, int B, int T, float temperature,
                                     float dloss, double *loss, int *counted, ra_error *err) {
    int rc = check_batch(t, tokens, doc_start, B, T, err);
    if (rc) return rc;
    if (!t->opt) return ra_fail(err, EX_SOFTWARE, "cuda_model_train_step before cuda_model_train_begin");
    int n = t->n, D = t->D, V = t->V, L = t->L;
    int total = n;
    if (kind == RA_LOSS_KD) {
        if (!t->teacher) return ra_fail(err, EX_USAGE, "model_train: --loss kd needs a teacher");
        if (!(temperature > 0)) return ra_fail(err, EX_USAGE, "model_train: temperature %g, expected > 0", temperature);
        labels = NULL;
    } else {
        if (!labels) {
            ra_next_token_labels(t->h_labels, tokens, doc_start, B, T);
            labels = t->h_labels;
        }
        total = 0;
        for (int i = 0; i < n; i++) {
            if (labels[i] == RA_IGNORE_LABEL) continue;
            if (labels[i] < 0 || labels[i] >= V)
                return ra_fail(err, EX_DATAERR, "row %d position %d: label %d, expected 0..%d or %d", i / T, i % T,
                               labels[i], V - 1, RA_IGNORE_LABEL);
            total++;
        }
        if (counted) *counted = total;
    }
    upload_inputs(t, tokens, doc_start, labels);
    const int32_t *d_tokens = t->d_ints, *d_doc = doc_start ? t->d_ints + n : NULL;
    const int32_t *d_labels = t->d_ints + 2 * (size_t)n, *d_pos = t->d_ints + 3 * (size_t)n;

    if (kind == RA_LOSS_KD) { /* the teacher's last residual, left in tfs->x */
        ra_forward_opts o;
        memset(&o, 0, sizeof o);
        o.doc_start = doc_start;
        if ((rc = cuda_forward_run(t->tfs, tokens, B, T, &o, NULL, err))) return rc;
    }

    /* forward */
    cuda_rope_tables(t->cos_t, t->sin_t, d_pos, n, t->cm->inv_freq, t->hd);
    cuda_embedding_forward(t->X[0], d_tokens, t->cm->embed, n, D);
    for (int l = 0; l < L; l++) layer_forward(t, l, d_doc);
    float eps = (float)t->m->cfg.rms_norm_eps;
    cuda_rmsnorm_forward(t->xfn, t->rstdf, t->X[L], t->cm->final_norm, n, D, eps);

    /* vocabulary side, R rows at a time */
    float c = total ? (float)((double)dloss / total) : 0.0f;
    for (int r0 = 0; r0 < n; r0 += t->R) {
        int rows = n - r0 < t->R ? n - r0 : t->R;
        const uint16_t *xfn = t->xfn + (size_t)r0 * D;
        cuda_linear_forward(t->zs, xfn, t->cm->lm_head, NULL, rows, D, V);
        if (kind == RA_LOSS_KD) {
            const hf_config *tc = &t->teacher->cfg;
            cuda_rmsnorm_forward(t->thn, NULL, t->tfs->x + (size_t)r0 * D, t->tm->final_norm, rows, D,
                                 (float)tc->rms_norm_eps);
            cuda_linear_forward(t->zt, t->thn, t->tm->lm_head, NULL, rows, D, V);
            cuda_loss_soft_ce_rows(t->row_loss + r0, want_grads ? t->zs : NULL, t->zs, t->zt, rows, V, temperature,
                                   c);
        } else {
            cuda_loss_ce_rows(t->row_loss + r0, want_grads ? t->zs : NULL, t->zs, d_labels + r0, rows, V,
                              RA_IGNORE_LABEL, c);
        }
        if (want_grads)
            cuda_linear_backward(t->dxfn + (size_t)r0 * D, t->g_lm_head, NULL, t->zs, xfn, t->cm->lm_head, rows, D,
                                 V);
    }
    if (want_grads) {
        cuda_rmsnorm_backward(t->dres, t->g_final_norm, t->dxfn, t->X[L], t->cm->final_norm, t->rstdf, n, D);
        for (int l = L - 1; l >= 0; l--) layer_backward(t, l, d_doc);
        if (t->g_embed) {
            const int32_t *g = t->d_ints + 4 * (size_t)n;
            cuda_embedding_backward_sorted(t->g_embed, t->dres, g, g + n, g + 2 * (size_t)n, t->n_ids, D);
        }
    }
    /* one synchronisation: the per-row losses */
    cuda_download(t->h_rows, t->row_loss, (size_t)n * sizeof(float));
    double sum = 0;
    for (int i = 0; i < n; i++) sum += t->h_rows[i];
    *loss = total ? sum / total : 0;
    sample_peak(t);
    return 0;
}
