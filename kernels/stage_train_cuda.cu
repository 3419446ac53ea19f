/* MOHAWK stages 1 and 2 on the GPU (kernels/model_train_cuda.h), on the
 * trainer of kernels/model_train_cuda.cu: the teacher runs as blocks
 * (kernels/block_train_cuda.h, forward only), the student's listed layers
 * train against it.  Host code only. */
#include <stdlib.h>
#include <string.h>

#include "hybrid_ops_cuda.h"
#include "model_train_cuda_internal.h"
#include "ops_cuda.h"
#include "train_profile.h"

extern "C" {
#include "stage1.h"
}

/* What both stages set up (beyond mt_create): n_res teacher residual
 * buffers in X, `u` [n, D] (stage 2: the student block's output; stage 1:
 * its normed input) in dres, the batch's tables and the teacher's blocks. */
static int teacher_blocks_create(cuda_model_train **out, ra_model *student, const ra_model *teacher, ra_optim *optim,
                                 const int *layers, int n_layers, int B, int T, int n_res, const char *u,
                                 ra_error *err) {
    *out = NULL;
    if (n_layers < 1) return ra_fail(err, EX_USAGE, "no layers to train");
    int rc = mt_create(out, student, teacher, optim, B, T, err);
    if (rc) return rc;
    cuda_model_train *t = *out;
    t->layers = (int *)xmalloc((size_t)n_layers * sizeof(int));
    memcpy(t->layers, layers, (size_t)n_layers * sizeof(int));
    t->n_layers = n_layers;
    t->recompute = CUDA_BLOCKS_RECOMPUTE; /* each listed layer's backward follows its forward */
    size_t n = (size_t)t->n, D = t->D, half = (size_t)t->hd / 2;
    t->X = (uint16_t **)xcalloc((size_t)t->L + 1, sizeof *t->X);
    for (int l = 0; l < n_res; l++) t->X[l] = (uint16_t *)mt_dalloc(t, n * D * 2, "the teacher's residuals");
    t->dres = (uint16_t *)mt_dalloc(t, n * D * 2, u);
    t->cos_t = (float *)mt_dalloc(t, n * half * 4, "RoPE tables");
    t->sin_t = (float *)mt_dalloc(t, n * half * 4, "RoPE tables");
    t->starts = (uint8_t *)mt_dalloc(t, n, "document starts");
    t->d_ints = (int32_t *)mt_dalloc(t, 4 * n * 4, "token ids, document starts, positions");
    if ((rc = mt_alloc_failed(t, err))) return rc;
    return cuda_blocks_create(&t->tblocks, t->tm, B, T, CUDA_BLOCKS_RECOMPUTE, err);
}

/* Inputs up, tables made, the teacher's embedding into X[0]. */
static int begin_batch(cuda_model_train *t, const char *who, const int32_t *tokens, const int32_t *doc_start, int B,
                       int T, cuda_block_batch *bt, ra_error *err) {
    int rc = mt_check_batch(t, tokens, doc_start, B, T, err);
    if (rc) return rc;
    if (!t->opt) return ra_fail(err, EX_SOFTWARE, "%s before cuda_model_train_begin", who);
    mt_upload_inputs(t, tokens, doc_start, NULL, 0);
    mt_batch_tables(t, doc_start, bt);
    cuda_embedding_forward(t->X[0], t->d_ints, t->tm->embed, t->n, t->D);
    train_prof_mark("host: between steps, inputs");
    return 0;
}

/* ---- stage 2 --------------------------------------------------------------------------------- */

extern "C" int cuda_stage2_train_create(cuda_model_train **out, ra_model *student, const ra_model *teacher,
                                        ra_optim *optim, const int *layers, int n_layers, int B, int T,
                                        ra_error *err) {
    int rc = teacher_blocks_create(out, student, teacher, optim, layers, n_layers, B, T, layers[n_layers - 1] + 2,
                                   "the student block's output", err);
    cuda_model_train *t = *out;
    if (!rc) rc = cuda_blocks_create(&t->blocks, t->cm, B, T, CUDA_BLOCKS_RECOMPUTE, err);
    if (!rc) {
        int width, kv, ad;
        cuda_blocks_scratch_shape(t->cm, &width, &kv, &ad);
        rc = cuda_train_scratch_reserve(t->n, width, B, T, kv, t->hd, ad, err);
    }
    return mt_created(out, rc, err);
}

extern "C" int cuda_stage2_train_step(cuda_model_train *t, int want_grads, const int32_t *tokens,
                                      const int32_t *doc_start, int B, int T, float dloss, double *loss,
                                      ra_error *err) {
    cuda_block_batch bt;
    int rc = begin_batch(t, "cuda_stage2_train_step", tokens, doc_start, B, T, &bt, err);
    if (rc) return rc;
    int n = t->n, D = t->D, last = t->layers[t->n_layers - 1];
    /* the teacher's residuals entering layers 0 .. last + 1 */
    for (int l = 0; l <= last; l++) cuda_block_forward(t->tblocks, l, t->X[l + 1], t->X[l], &bt);
    train_prof_mark("teacher blocks forward");
    double total = 0;
    for (int i = 0; i < t->n_layers; i++) {
        int l = t->layers[i];
        cuda_block_forward(t->blocks, l, t->dres, t->X[l], &bt);
        total += cuda_loss_l2_forward(t->dres, t->X[l + 1], n, D);
        if (!want_grads) continue;
        cuda_loss_l2_backward(t->dres, t->dres, t->X[l + 1], n, D, dloss);
        cuda_block_backward(t->blocks, l, &t->lg[l], t->dres, t->X[l], &bt, 0);
    }
    *loss = total;
    train_prof_mark("stage 2 losses (sync)");
    mt_sample_peak(t);
    return 0;
}

/* ---- stage 1 --------------------------------------------------------------------------------- */

/* The SSM heads' pairing with teacher query heads on the device, the
 * widest listed layer's DM2 config, and the matrices for as many batch rows
 * per pass as max_bytes allows. */
static int stage1_alloc(cuda_model_train *t, int64_t max_bytes, ra_error *err) {
    const ra_model *s = t->m;
    int hs = 0;
    dm2_config big;
    memset(&big, 0, sizeof big);
    for (int i = 0; i < t->n_layers; i++) {
        const ra_layer *L = &s->layers[t->layers[i]];
        if (!L->n_ssm_heads)
            return ra_fail(err, EX_SOFTWARE, "stage 1: layer %d has no SSM head", t->layers[i]);
        if (L->n_ssm_heads > hs) hs = L->n_ssm_heads;
        if (!big.n_heads) big = L->ssm_cfg;
        if (L->ssm_cfg.n_heads > big.n_heads) big.n_heads = L->ssm_cfg.n_heads;
        if (L->ssm_cfg.n_groups > big.n_groups) big.n_groups = L->ssm_cfg.n_groups;
    }
    if (max_bytes <= 0) max_bytes = RA_STAGE1_DEFAULT_MAX_BYTES;
    size_t TT = (size_t)t->T * t->T, per_row = 2 * (size_t)hs * TT * sizeof(float);
    if (per_row > (size_t)max_bytes)
        return ra_fail(err, EX_USAGE,
                       "stage 1: sequence length %d needs %.3g GB of T x T matrices per row (%d SSM heads), over the "
                       "limit of %.3g GB; use a shorter --seq-len",
                       t->T, per_row / 1e9, hs, max_bytes / 1e9);
    size_t rows = (size_t)max_bytes / per_row;
    t->s1_hs = hs, t->s1_rows = rows < (size_t)t->B ? (int)rows : t->B;
    int32_t *heads = (int32_t *)xcalloc((size_t)t->n_layers * hs, sizeof(int32_t));
    int *pair = (int *)xmalloc((size_t)hs * sizeof(int));
    for (int i = 0; i < t->n_layers; i++) {
        int k = ra_stage1_pairing(s, t->layers[i], pair);
        for (int h = 0; h < k; h++) heads[(size_t)i * hs + h] = pair[h];
    }
    size_t mat = (size_t)t->s1_rows * hs * TT * sizeof(float);
    t->s1_heads = (int32_t *)mt_dalloc(t, (size_t)t->n_layers * hs * sizeof(int32_t), "SSM head pairing");
    t->s1_A = (float *)mt_dalloc(t, mat, "the teacher's attention matrices");
    t->s1_Tm = (float *)mt_dalloc(t, mat, "the SSM heads' mixing matrices");
    int rc = mt_alloc_failed(t, err);
    if (!rc) cuda_upload(t->s1_heads, heads, (size_t)t->n_layers * hs * sizeof(int32_t));
    free(heads), free(pair);
    if (rc) return rc;
    if (!(t->s1_dm2 = cuda_dm2_acts_alloc(t->s1_rows, t->T, &big, err))) return err->code ? err->code : EX_SOFTWARE;
    /* the matrix loss's per-row sums and norms (TS_ROWS: n floats) */
    int64_t bh = (int64_t)t->s1_rows * hs, rows_scratch = bh * t->T + 2 * bh + 4;
    return cuda_train_scratch_reserve((int)rows_scratch, 0, t->B, t->T, 0, t->hd, 0, err);
}

extern "C" int cuda_stage1_train_create(cuda_model_train **out, ra_model *student, const ra_model *teacher,
                                        ra_optim *optim, const int *layers, int n_layers, int B, int T,
                                        int64_t max_bytes, ra_error *err) {
    int rc = teacher_blocks_create(out, student, teacher, optim, layers, n_layers, B, T, 2,
                                   "the student's normed layer inputs", err);
    if (!rc) rc = stage1_alloc(*out, max_bytes, err);
    return mt_created(out, rc, err);
}

/* Listed layer i on the teacher's residual x entering it (its block forward
 * just ran): for each pass of rows, the teacher's matrices, the student's,
 * the loss and (want_grads) its gradient.  Returns the layer's L_l. */
static double stage1_layer(cuda_model_train *t, int i, const uint16_t *x, const cuda_block_batch *bt, float dloss,
                           int want_grads) {
    const int l = t->layers[i], B = t->B, T = t->T, D = t->D;
    const cuda_hybrid_layer *Y = &t->cm->hybrid->layers[l];
    const int Hs = Y->Hs;
    cuda_rmsnorm_forward(t->dres, NULL, x, t->cm->layers[l].input_norm, t->n, D, (float)t->m->cfg.rms_norm_eps);
    cuda_dm2_acts v = *t->s1_dm2;
    v.cfg = Y->ssm_cfg;
    double loss = 0;
    for (int b0 = 0; b0 < B; b0 += t->s1_rows) {
        const int rows = B - b0 < t->s1_rows ? B - b0 : t->s1_rows, bh = rows * Hs;
        const size_t r0 = (size_t)b0 * T;
        const uint8_t *starts = bt->starts ? bt->starts + r0 : NULL;
        const uint16_t *u = t->dres + r0 * D;
        const double share = (double)rows / B; /* L_l is the mean over all B rows */
        v.B = rows;
        cuda_block_attention_probs(t->tblocks, l, t->s1_A, t->s1_heads + (size_t)i * t->s1_hs, Hs, b0, rows, bt);
        train_prof_mark("teacher attention matrices");
        cuda_dm2_matrix_forward(t->s1_Tm, &v, &Y->ssm, u, starts);
        train_prof_mark("student mixing matrices");
        /* the value and (training) its gradient in place of Ts, from one pass of norms */
        loss += cuda_loss_matrix(want_grads ? t->s1_Tm : NULL, t->s1_Tm, t->s1_A, bh, T, (float)(dloss * share)) *
                share;
        train_prof_mark("matrix loss and its gradient (sync)");
        if (!want_grads) continue;
        cuda_dm2_matrix_backward(&t->lg[l].ssm, NULL, t->s1_Tm, &v, &Y->ssm, u, starts);
        train_prof_mark("mixer backward (matrix path)");
    }
    return loss;
}

extern "C" int cuda_stage1_train_step(cuda_model_train *t, int want_grads, const int32_t *tokens,
                                      const int32_t *doc_start, int B, int T, float dloss, double *loss,
                                      ra_error *err) {
    cuda_block_batch bt;
    int rc = begin_batch(t, "cuda_stage1_train_step", tokens, doc_start, B, T, &bt, err);
    if (rc) return rc;
    /* X[cur] enters layer l; its block forward leaves the next in X[cur ^ 1]
     * and the layer's q/k for the teacher's matrices */
    double total = 0;
    for (int l = 0, i = 0, cur = 0; i < t->n_layers; l++, cur ^= 1) {
        cuda_block_forward(t->tblocks, l, t->X[cur ^ 1], t->X[cur], &bt);
        train_prof_mark("teacher block forward");
        if (l != t->layers[i]) continue;
        total += stage1_layer(t, i, t->X[cur], &bt, dloss, want_grads);
        i++;
    }
    *loss = total;
    mt_sample_peak(t);
    return 0;
}
