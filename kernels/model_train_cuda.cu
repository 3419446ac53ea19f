/* Whole-model training on the GPU (kernels/model_train_cuda.h).  Host code
 * only: it drives the ops of kernels/ops_cuda.h and
 * kernels/ops_backward_cuda.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hybrid_ops_cuda.h"
#include "model_train_cuda_internal.h"
#include "ops_cuda.h"
#include "train_profile.h"

/* Logit chunk: at most this many bf16 elements per buffer (512 MiB).  Every
 * chunk's LM-head weight gradient reads and writes the whole fp32 [V, D]
 * gradient (1 GB at Llama-3's vocabulary), so fewer, larger chunks are
 * faster: 2092 rows instead of 1046 took the 1B stage-3 step from 34.6k to
 * 34.9k tokens/s on the H200 for 0.54 GB more (bench/results/dm2_mixer.md). */
#define LOGIT_CHUNK_ELEMS ((size_t)256 << 20)

void mt_sample_peak(cuda_model_train *t) {
    size_t p = cuda_mem_peak(); /* every allocation of the set-up included */
    if (p > t->peak) t->peak = p;
}

extern "C" size_t cuda_model_train_peak_bytes(const cuda_model_train *t) { return t->peak; }
extern "C" int cuda_model_train_logit_rows(const cuda_model_train *t) { return t->R; }
extern "C" int cuda_model_train_recomputes(const cuda_model_train *t) { return t->recompute; }

/* ---- shapes ------------------------------------------------------------------------------ */

int mt_check_supported(const ra_model *m, const char *role, ra_error *err) {
    const hf_config *c = &m->cfg;
    if (c->head_dim != 32 && c->head_dim != 64 && c->head_dim != 128)
        return ra_fail(err, EX_UNAVAILABLE,
                       "--device cuda: %s %s has head_dim %d; the CUDA training step supports 32, 64 or 128; use "
                       "--device cpu",
                       role, m->source, c->head_dim);
    if (c->num_heads % c->num_kv_heads)
        return ra_fail(err, EX_DATAERR, "%s: %d heads are not a multiple of %d KV heads", m->source, c->num_heads,
                       c->num_kv_heads);
    if (m->hybrid && c->num_heads > 256)
        return ra_fail(err, EX_UNAVAILABLE, "--device cuda: %s has %d heads; the CUDA adapters take at most 256",
                       m->source, c->num_heads);
    return 0;
}

/* ---- allocation --------------------------------------------------------------------------- */

void *mt_dalloc(cuda_model_train *t, size_t bytes, const char *what) { return cuda_alloc_in(&t->ac, bytes, what); }

int mt_oom_code(int rc, ra_error *err, int B, int T) {
    if (rc != EX_TEMPFAIL) return rc;
    err->code = EX_OSERR;
    ra_error_prefix(err, "--device cuda: training batch %d × %d tokens: ", B, T);
    return EX_OSERR;
}

int mt_alloc_failed(cuda_model_train *t, ra_error *err) {
    if (!t->ac.rc) return 0;
    *err = t->alloc_err;
    if (err->code == EX_TEMPFAIL) return mt_oom_code(EX_TEMPFAIL, err, t->B, t->T);
    return err->code;
}

static void alloc_acts(cuda_model_train *t) {
    size_t n = (size_t)t->n, D = t->D, half = (size_t)t->hd / 2;
    t->X = (uint16_t **)xcalloc((size_t)t->L + 1, sizeof *t->X);
    for (int l = 0; l <= t->L; l++) t->X[l] = (uint16_t *)mt_dalloc(t, n * D * 2, "the residual stream (per layer)");
    t->xfn = (uint16_t *)mt_dalloc(t, n * D * 2, "the final-normed hidden states");
    t->dxfn = (uint16_t *)mt_dalloc(t, n * D * 2, "their gradient");
    t->rstdf = (float *)mt_dalloc(t, n * 4, "final RMSNorm statistics");
    t->zs = (uint16_t *)mt_dalloc(t, (size_t)t->R * t->V * 2, "a chunk of logits");
    if (t->teacher) {
        t->zt = (uint16_t *)mt_dalloc(t, (size_t)t->R * t->V * 2, "a chunk of teacher logits");
        t->thn = (uint16_t *)mt_dalloc(t, (size_t)t->R * D * 2, "teacher normed hidden states");
    }
    t->row_loss = (float *)mt_dalloc(t, n * 4, "per-row losses");
    t->cos_t = (float *)mt_dalloc(t, n * half * 4, "RoPE tables");
    t->sin_t = (float *)mt_dalloc(t, n * half * 4, "RoPE tables");
    t->starts = (uint8_t *)mt_dalloc(t, n, "document starts");
    t->d_ints = (int32_t *)mt_dalloc(t, (7 * n + 1) * 4, "token ids, document starts, labels, positions");
    t->dres = (uint16_t *)mt_dalloc(t, n * D * 2, "the residual gradient");
}

extern "C" void cuda_model_train_free(cuda_model_train *t) {
    if (!t) return;
    train_prof_report(t->teacher ? "kd step" : t->s1_Tm ? "stage 1 step" : t->tblocks ? "stage 2 step" : "step");
    cuda_synchronize();
    if (t->X)
        for (int l = 0; l <= t->L; l++) cuda_free(t->X[l]);
    if (t->lg)
        for (int l = 0; l < t->L; l++) cuda_block_grads_free_fused(&t->lg[l]);
    void *p[] = {t->xfn,   t->dxfn,   t->rstdf,  t->zs,       t->zt,   t->thn,   t->row_loss, t->cos_t,
                 t->sin_t, t->starts, t->d_ints, t->dres, t->s1_heads, t->s1_A, t->s1_Tm};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) cuda_free(p[i]);
    cuda_blocks_free(t->blocks);
    cuda_blocks_free(t->tblocks);
    cuda_dm2_acts_free(t->s1_dm2);
    free(t->layers);
    cuda_optim_free(t->opt);
    cuda_forward_state_free(t->tfs);
    cuda_model_free(t->tm);
    cuda_model_free(t->cm);
    free(t->X), free(t->lg), free(t->mirrors);
    free(t->h_ints), free(t->h_labels), free(t->h_rows), free(t->h_count);
    free(t);
}

/* RA_TRAIN_RECOMPUTE=0 (save every layer's activations), 1 (selective
 * recomputation) or 2 (recompute every layer's forward) forces the choice;
 * otherwise selective when the saved activations of every layer would
 * take more than an eighth of the GPU's memory. */
static int choose_recompute(const cuda_model *cm, int B, int T) {
    const char *e = getenv("RA_TRAIN_RECOMPUTE");
    if (e && !strcmp(e, "0")) return CUDA_BLOCKS_SAVE_ALL;
    if (e && !strcmp(e, "1")) return CUDA_BLOCKS_SELECTIVE;
    if (e && !strcmp(e, "2")) return CUDA_BLOCKS_RECOMPUTE;
    size_t fr = 0, tot = 0;
    cuda_mem_info(&fr, &tot);
    return cuda_blocks_layer_bytes(cm, B, T) * (size_t)cm->cfg.num_layers > tot / 8 ? CUDA_BLOCKS_SELECTIVE
                                                                                      : CUDA_BLOCKS_SAVE_ALL;
}

int mt_create(cuda_model_train **out, ra_model *student, const ra_model *teacher, ra_optim *optim, int B, int T,
              ra_error *err) {
    *out = NULL;
    int rc = cuda_device_init(0, err); /* its message names --device cuda */
    if (rc) return rc;
    if ((rc = mt_check_supported(student, "student", err))) return rc;
    if (teacher && teacher->hybrid) return ra_fail(err, EX_DATAERR, "%s: a hybrid student as the teacher", teacher->source);
    if (B < 1 || T < 1 || (int64_t)B * T > (1 << 30))
        return ra_fail(err, EX_USAGE, "--device cuda: batch %d × %d out of range", B, T);
    const hf_config *c = &student->cfg;
    cuda_model_train *t = (cuda_model_train *)xcalloc(1, sizeof *t);
    *out = t;
    t->m = student, t->host = optim, t->B = B, t->T = T, t->n = B * T;
    t->L = c->num_layers, t->D = c->hidden_size, t->V = c->vocab_size, t->hd = c->head_dim;
    t->ac.err = &t->alloc_err;
    t->h_ints = (int32_t *)xmalloc(((size_t)7 * t->n + 1) * sizeof(int32_t));
    t->h_count = (int32_t *)xmalloc(((size_t)t->V + 1) * sizeof(int32_t));
    t->h_labels = (int32_t *)xmalloc((size_t)t->n * sizeof(int32_t));
    t->h_rows = (float *)xmalloc((size_t)t->n * sizeof(float));
    if ((rc = cuda_model_upload(student, &t->cm, err))) return rc;
    if (teacher && (rc = cuda_model_upload(teacher, &t->tm, err))) return rc;
    return 0;
}

int mt_created(cuda_model_train **out, int rc, ra_error *err) {
    cuda_model_train *t = *out;
    if (rc) {
        rc = mt_oom_code(rc, err, t ? t->B : 0, t ? t->T : 0);
        cuda_model_train_free(t);
        *out = NULL;
        return rc;
    }
    cuda_synchronize();
    mt_sample_peak(t);
    return 0;
}

extern "C" int cuda_model_train_create(cuda_model_train **out, ra_model *m, const ra_model *teacher, ra_optim *optim,
                                       int B, int T, ra_error *err) {
    *out = NULL;
    int rc = teacher ? ra_stage3_check_pair(teacher, m, err) : 0;
    if (!rc) rc = mt_create(out, m, teacher, optim, B, T, err);
    cuda_model_train *t = *out;
    if (!rc) {
        t->teacher = teacher;
        size_t R = LOGIT_CHUNK_ELEMS / (size_t)t->V;
        t->R = (int)(R < 1 ? 1 : R > (size_t)t->n ? (size_t)t->n : R);
        if (teacher) rc = cuda_forward_state_create(t->tm, B, T, &t->tfs, err);
    }
    if (!rc) {
        alloc_acts(t);
        rc = mt_alloc_failed(t, err);
    }
    if (!rc) {
        t->recompute = choose_recompute(t->cm, B, T);
        rc = cuda_blocks_create(&t->blocks, t->cm, B, T, t->recompute, err);
    }
    if (!rc) {
        int width, kv, ad;
        cuda_blocks_scratch_shape(t->cm, &width, &kv, &ad);
        rc = cuda_train_scratch_reserve(t->n, width, B, T, kv, t->hd, ad, err);
    }
    return mt_created(out, rc, err);
}

/* ---- parameters ------------------------------------------------------------------------------ */

/* Where a host parameter lives on the device. */
typedef struct place {
    uint16_t *compute;   /* bf16 compute copy, or NULL */
    float *mirror;       /* fp32 copy the kernels read, or NULL */
    float **field;       /* where the backward finds its gradient (the optimiser's own), or NULL */
    int layer;           /* its layer, −1 outside the layers */
    int fused;           /* F_* when its gradient is a slice of a fused buffer, else −1 */
    size_t off;          /* offset in that buffer */
    size_t elem;         /* first element of a row slice of the tensor (stage 1's in_proj.weight[BC]) */
} place;

enum { F_WQKV, F_BQKV, F_GU, F_SSM };

static int layer_place(cuda_model_train *t, int l, float **slot, place *p) {
    ra_layer *L = &t->m->layers[l];
    cuda_layer_weights *W = &t->cm->layers[l];
    cuda_hybrid_layer *Y = t->cm->hybrid ? &t->cm->hybrid->layers[l] : NULL;
    cuda_block_grads *g = &t->lg[l];
    const hf_config *c = &t->m->cfg;
    size_t D = t->D, hd = t->hd, I = c->intermediate_size;
    int nq = Y ? Y->k : c->num_heads, nkv = Y ? Y->k : c->num_kv_heads;
    size_t qd = (size_t)nq * hd, kvd = (size_t)nkv * hd;
    p->layer = l, p->fused = -1, p->off = 0;
    if (slot == &L->input_norm) p->compute = W->input_norm, p->field = &g->input_norm;
    else if (slot == &L->post_norm) p->compute = W->post_norm, p->field = &g->post_norm;
    else if (slot == &L->wq) p->fused = F_WQKV, p->off = 0;
    else if (slot == &L->wk) p->fused = F_WQKV, p->off = qd * D;
    else if (slot == &L->wv) p->fused = F_WQKV, p->off = (qd + kvd) * D;
    else if (slot == &L->bq) p->fused = F_BQKV, p->off = 0;
    else if (slot == &L->bk) p->fused = F_BQKV, p->off = qd;
    else if (slot == &L->bv) p->fused = F_BQKV, p->off = qd + kvd;
    else if (slot == &L->wo) p->compute = W->wo, p->field = &g->wo;
    else if (slot == &L->bo) p->compute = W->bo, p->field = &g->bo;
    else if (slot == &L->w_gate) p->fused = F_GU, p->off = 0;
    else if (slot == &L->w_up) p->fused = F_GU, p->off = I * D;
    else if (slot == &L->w_down) p->compute = W->w_down, p->field = &g->w_down;
    else if (Y && slot == &L->adapter_w) p->compute = Y->adapter_w, p->field = &g->adapter_w;
    else if (Y && slot == &L->adapter_b) p->compute = Y->adapter_b, p->field = &g->adapter_b;
    else if (Y && Y->Hs && slot == &L->ssm.in_proj_w) p->compute = Y->ssm.in_proj_w, p->fused = F_SSM, p->off = 0;
    else if (Y && Y->Hs && slot == &L->ssm.conv_w) p->mirror = Y->ssm.conv_w, p->fused = F_SSM, p->off = 1;
    else if (Y && Y->Hs && slot == &L->ssm.conv_b) p->mirror = Y->ssm.conv_b, p->fused = F_SSM, p->off = 2;
    else if (Y && Y->Hs && slot == &L->ssm.D) p->mirror = Y->ssm.D, p->fused = F_SSM, p->off = 3;
    else if (Y && Y->Hs && slot == &L->ssm.z_bias) p->mirror = Y->ssm.z_bias, p->fused = F_SSM, p->off = 4;
    else if (Y && Y->Hs && slot == &L->ssm.out_proj_w) p->compute = Y->ssm.out_proj_w, p->fused = F_SSM, p->off = 5;
    else return 0;
    if (p->fused == F_WQKV) p->compute = W->wqkv + p->off;
    if (p->fused == F_BQKV) p->compute = W->bqkv ? W->bqkv + p->off : NULL;
    if (p->fused == F_GU) p->compute = W->w_gate_up + p->off;
    return 1;
}

static int find_place(cuda_model_train *t, float **slot, place *p) {
    ra_model *m = t->m;
    memset(p, 0, sizeof *p);
    p->layer = -1, p->fused = -1;
    if (slot == &m->embed) p->compute = t->cm->embed, p->field = &t->g_embed;
    else if (slot == &m->final_norm) p->compute = t->cm->final_norm, p->field = &t->g_final_norm;
    else if (slot == &m->lm_head) p->compute = t->cm->lm_head, p->field = &t->g_lm_head;
    else {
        for (int l = 0; l < t->L; l++)
            if (layer_place(t, l, slot, p)) return 1;
        return 0;
    }
    return 1;
}

/* The gradient slice of a fused parameter. */
static float *fused_grad(cuda_model_train *t, const place *p) {
    cuda_block_grads *g = &t->lg[p->layer];
    switch (p->fused) {
    case F_WQKV: return g->wqkv ? g->wqkv + p->off + p->elem : NULL;
    case F_BQKV: return g->bqkv ? g->bqkv + p->off + p->elem : NULL;
    case F_GU: return g->w_gate_up ? g->w_gate_up + p->off + p->elem : NULL;
    default: {
        float *a[] = {g->ssm.in_proj_w, g->ssm.conv_w, g->ssm.conv_b, g->ssm.D, g->ssm.z_bias, g->ssm.out_proj_w};
        return a[p->off] + p->elem;
    }
    }
}

/* The model tensor that holds host parameter p's weights, found by address
 * (p is a whole tensor, or a slice of one as stage 1 registers), and p's
 * first element in it. */
static float **slot_holding(const ra_model_tensor *tl, int nt, const ra_param *p, size_t *elem) {
    uintptr_t w = (uintptr_t)p->w;
    for (int j = 0; j < nt; j++) {
        uintptr_t base = (uintptr_t)*tl[j].data;
        int64_t numel = tl[j].ndim == 2 ? tl[j].shape[0] * tl[j].shape[1] : tl[j].shape[0];
        if (base && w >= base && w + (size_t)p->numel * sizeof(float) <= base + (size_t)numel * sizeof(float)) {
            *elem = (w - base) / sizeof(float);
            return tl[j].data;
        }
    }
    return NULL;
}

static void refresh_mirrors(cuda_model_train *t) {
    for (int i = 0; i < t->n_mirrors; i++) {
        const cuda_optim_param *p = &t->opt->params[t->mirrors[i].param];
        cuda_copy(t->mirrors[i].dst, p->w, (size_t)p->numel * sizeof(float));
    }
}

/* The fused gradient buffers come first and the optimiser takes its
 * parameters' slices of them as their gradients, so no parameter ever has
 * two gradient arrays (the optimiser's own, freed once the fused ones
 * exist, had put 3 GB on the 1B student's peak during set-up). */
extern "C" int cuda_model_train_begin(cuda_model_train *t, ra_error *err) {
    int rc = 0, np = t->host->n;
    t->lg = (cuda_block_grads *)xcalloc((size_t)t->L, sizeof *t->lg); /* places point into it */
    ra_model_tensor *tl;
    int nt = ra_model_tensor_list(t->m, &tl);
    place *pl = (place *)xcalloc((size_t)(np ? np : 1), sizeof *pl);
    int *want = (int *)xcalloc((size_t)t->L * 3, sizeof(int)); /* per layer: q/k/v, gate/up trainable; any param */
    for (int i = 0; i < np && !rc; i++) {
        const ra_param *hp = &t->host->params[i];
        size_t elem = 0;
        float **slot = slot_holding(tl, nt, hp, &elem);
        if (!slot || !find_place(t, slot, &pl[i]) || (elem && pl[i].fused < 0))
            rc = ra_fail(err, EX_SOFTWARE, "--device cuda: parameter '%s' has no place on the device", hp->name);
        else if (pl[i].layer >= 0) {
            pl[i].elem = elem; /* a slice: its gradient is part of a fused buffer */
            if (pl[i].compute) pl[i].compute += elem;
            if (pl[i].mirror) pl[i].mirror += elem;
            int *w = want + 3 * pl[i].layer;
            w[2] = 1;
            if (!hp->frozen && (pl[i].fused == F_WQKV || pl[i].fused == F_BQKV)) w[0] = 1;
            if (!hp->frozen && pl[i].fused == F_GU) w[1] = 1;
        }
    }
    free(tl);
    for (int l = 0; l < t->L && !rc; l++) {
        if (!want[3 * l + 2]) continue; /* stage 2: a layer not trained */
        cuda_block_grads_alloc_fused(&t->lg[l], t->cm, l, want[3 * l], want[3 * l + 1], &t->ac);
        rc = mt_alloc_failed(t, err);
    }
    float **grads = (float **)xcalloc((size_t)(np ? np : 1), sizeof *grads);
    for (int i = 0; i < np && !rc; i++)
        if (!t->host->params[i].frozen && pl[i].fused >= 0 && !(grads[i] = fused_grad(t, &pl[i])))
            rc = ra_fail(err, EX_SOFTWARE, "--device cuda: parameter '%s' has no gradient buffer",
                         t->host->params[i].name);
    if (!rc && (rc = cuda_optim_create(&t->opt, t->host, grads, err))) {
        rc = mt_oom_code(rc, err, t->B, t->T);
        ra_error_prefix(err, "the optimiser state: ");
    }
    free(grads);
    t->mirrors = (mirror32 *)xcalloc((size_t)(np ? np : 1), sizeof *t->mirrors);
    for (int i = 0; i < np && !rc; i++) {
        const place *p = &pl[i];
        if (p->compute) cuda_optim_set_compute_copy(t->opt, i, p->compute);
        if (p->mirror) t->mirrors[t->n_mirrors++] = (mirror32){p->mirror, i};
        if (!t->opt->params[i].frozen && p->fused < 0 && p->field) *p->field = t->opt->params[i].g;
    }
    free(pl), free(want);
    if (rc) return rc;
    if (t->m->lm_head == t->m->embed) t->g_lm_head = t->g_embed;
    cuda_optim_refresh_compute(t->opt);
    refresh_mirrors(t);
    cuda_synchronize();
    mt_sample_peak(t);
    return 0;
}

extern "C" void cuda_model_train_zero_grad(cuda_model_train *t) {
    train_prof_mark("host: before zero grad");
    cuda_optim_zero_grad(t->opt);
    for (int l = 0; l < t->L; l++) cuda_block_grads_zero_fused(&t->lg[l], t->cm, l);
    train_prof_mark("zero grad");
}

extern "C" int cuda_model_train_optim_step(cuda_model_train *t, double lr, int poison, ra_error *err) {
    train_prof_mark("host: before optimiser");
    if (poison) cuda_optim_poison(t->opt);
    int rc = cuda_optim_step(t->opt, lr, err);
    if (!rc) refresh_mirrors(t);
    train_prof_mark("optimiser (norm, AdamW, bf16 copies)");
    /* an optimiser step ends a profiled step (its micro-batches and
     * evaluations included) */
    train_prof_collect();
    train_prof_step();
    t->host->step = t->opt->step;
    t->host->last_grad_norm = t->opt->last_grad_norm;
    return rc;
}

extern "C" void cuda_model_train_download(cuda_model_train *t) { cuda_optim_download(t->opt, t->host); }
extern "C" void cuda_model_train_upload(cuda_model_train *t) {
    cuda_optim_upload(t->opt, t->host);
    refresh_mirrors(t);
}

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

int mt_check_batch(const cuda_model_train *t, const int32_t *tokens, const int32_t *doc_start, int B, int T,
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

/* Host inputs → one upload: tokens, doc_start, labels, positions, and the
 * rows grouped by token (a counting sort, rows ascending within a token). */
void mt_upload_inputs(cuda_model_train *t, const int32_t *tokens, const int32_t *doc_start, const int32_t *labels,
                      int by_token) {
    size_t n = (size_t)t->n;
    int32_t *h = t->h_ints;
    memcpy(h, tokens, n * 4);
    if (doc_start) memcpy(h + n, doc_start, n * 4);
    else memset(h + n, 0, n * 4);
    if (labels) memcpy(h + 2 * n, labels, n * 4);
    else memset(h + 2 * n, 0, n * 4);
    for (size_t i = 0; i < n; i++) h[3 * n + i] = (int32_t)(i % t->T) - (doc_start ? doc_start[i] : 0);
    if (!by_token) {
        cuda_upload(t->d_ints, h, 4 * n * 4);
        return;
    }
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

void mt_batch_tables(cuda_model_train *t, const int32_t *doc_start, cuda_block_batch *bt) {
    size_t n = (size_t)t->n;
    const int32_t *d_doc = doc_start ? t->d_ints + n : NULL;
    cuda_rope_tables(t->cos_t, t->sin_t, t->d_ints + 3 * n, (int)n, t->cm->inv_freq, t->hd);
    *bt = (cuda_block_batch){t->B, t->T, t->cos_t, t->sin_t, d_doc, NULL};
    if (d_doc) {
        cuda_hybrid_starts(t->starts, d_doc, (int)n, t->T);
        bt->starts = t->starts;
    }
}

extern "C" int cuda_model_train_step(cuda_model_train *t, int want_grads, ra_stage3_loss kind, const int32_t *tokens,
                                     const int32_t *doc_start, const int32_t *labels, int B, int T, float temperature,
                                     float dloss, double *loss, int *counted, ra_error *err) {
    int rc = mt_check_batch(t, tokens, doc_start, B, T, err);
    if (rc) return rc;
    if (!t->opt) return ra_fail(err, EX_SOFTWARE, "cuda_model_train_step before cuda_model_train_begin");
    int n = t->n, D = t->D, V = t->V, L = t->L;
    int total; /* positions the loss averages over */
    if ((rc = ra_stage3_batch_labels(kind, t->teacher != NULL, temperature, tokens, doc_start, labels, B, T, V,
                                     t->h_labels, &labels, &total, err)))
        return rc;
    if (kind == RA_LOSS_CE && counted) *counted = total;
    train_prof_mark("host: between steps (logging, checks)");
    mt_upload_inputs(t, tokens, doc_start, labels, t->g_embed != NULL);
    train_prof_mark("host: inputs, upload");
    const int32_t *d_tokens = t->d_ints, *d_labels = t->d_ints + 2 * (size_t)n;

    if (kind == RA_LOSS_KD) { /* the teacher's last residual, left in tfs->x */
        ra_forward_opts o;
        memset(&o, 0, sizeof o);
        o.doc_start = doc_start;
        if ((rc = cuda_forward_run(t->tfs, tokens, B, T, &o, NULL, err))) return rc;
        train_prof_mark("teacher forward");
    }

    /* forward */
    cuda_block_batch bt;
    mt_batch_tables(t, doc_start, &bt);
    cuda_embedding_forward(t->X[0], d_tokens, t->cm->embed, n, D);
    train_prof_mark("embedding, rope tables");
    for (int l = 0; l < L; l++) cuda_block_forward(t->blocks, l, t->X[l + 1], t->X[l], &bt);
    float eps = (float)t->m->cfg.rms_norm_eps;
    cuda_rmsnorm_forward(t->xfn, t->rstdf, t->X[L], t->cm->final_norm, n, D, eps);
    train_prof_mark("final rmsnorm");

    /* vocabulary side, R rows at a time */
    float c = total ? (float)((double)dloss / total) : 0.0f;
    for (int r0 = 0; r0 < n; r0 += t->R) {
        int rows = n - r0 < t->R ? n - r0 : t->R;
        const uint16_t *xfn = t->xfn + (size_t)r0 * D;
        cuda_linear_forward(t->zs, xfn, t->cm->lm_head, NULL, rows, D, V);
        train_prof_mark("lm head: student logits gemm");
        if (kind == RA_LOSS_KD) {
            const hf_config *tc = &t->teacher->cfg;
            cuda_rmsnorm_forward(t->thn, NULL, t->tfs->x + (size_t)r0 * D, t->tm->final_norm, rows, D,
                                 (float)tc->rms_norm_eps);
            cuda_linear_forward(t->zt, t->thn, t->tm->lm_head, NULL, rows, D, V);
            train_prof_mark("lm head: teacher norm, logits gemm");
            cuda_loss_soft_ce_rows(t->row_loss + r0, want_grads ? t->zs : NULL, t->zs, t->zt, rows, V, temperature,
                                   c);
        } else {
            cuda_loss_ce_rows(t->row_loss + r0, want_grads ? t->zs : NULL, t->zs, d_labels + r0, rows, V,
                              RA_LABEL_IGNORE, c);
        }
        train_prof_mark("lm head: loss rows, gradient");
        if (want_grads)
            cuda_linear_backward(t->dxfn + (size_t)r0 * D, t->g_lm_head, NULL, t->zs, xfn, t->cm->lm_head, rows, D,
                                 V);
        train_prof_mark("lm head: backward gemms");
    }
    if (want_grads) {
        cuda_rmsnorm_backward(t->dres, t->g_final_norm, t->dxfn, t->X[L], t->cm->final_norm, t->rstdf, n, D);
        train_prof_mark("final rmsnorm backward");
        for (int l = L - 1; l >= 0; l--) {
            if (l < L - 1) cuda_block_recompute(t->blocks, l, t->X[l + 1], t->X[l], &bt);
            cuda_block_backward(t->blocks, l, &t->lg[l], t->dres, t->X[l], &bt, 1);
        }
        if (t->g_embed) {
            const int32_t *g = t->d_ints + 4 * (size_t)n;
            cuda_embedding_backward_sorted(t->g_embed, t->dres, g, g + n, g + 2 * (size_t)n, t->n_ids, D);
            train_prof_mark("embedding backward");
        }
    }
    /* one synchronisation: the per-row losses */
    cuda_download(t->h_rows, t->row_loss, (size_t)n * sizeof(float));
    train_prof_mark("loss download");
    double sum = 0;
    for (int i = 0; i < n; i++) sum += t->h_rows[i];
    *loss = total ? sum / total : 0;
    mt_sample_peak(t);
    return 0;
}
