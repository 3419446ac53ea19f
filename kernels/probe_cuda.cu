/* ra-probe's exact ablation on the GPU; see kernels/probe_cuda.h. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "probe_cuda_internal.cuh"

/* ---- kernels ---------------------------------------------------------------- */

/* Per logits row (one block each): log-sum-exp in fp32 and the first index of
 * the maximum, like the CPU scorer. */
__global__ void probe_row_stats_kernel(const bf16 *logits, int V, float *lse, int32_t *argmax) {
    __shared__ float s_val[32];
    __shared__ int s_idx[32];
    __shared__ float scratch[32];
    const bf16 *z = logits + (int64_t)blockIdx.x * V;
    float best = -INFINITY;
    int best_i = 0x7fffffff;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        float x = __bfloat162float(z[v]);
        if (x > best) best = x, best_i = v; /* v increases per thread: first max kept */
    }
    /* (max, first index) across the block */
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, best, o);
        int oi = __shfl_xor_sync(0xffffffffu, best_i, o);
        if (ov > best || (ov == best && oi < best_i)) best = ov, best_i = oi;
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    if (lane == 0) s_val[warp] = best, s_idx[warp] = best_i;
    __syncthreads();
    if (warp == 0) {
        best = lane < nwarps ? s_val[lane] : -INFINITY;
        best_i = lane < nwarps ? s_idx[lane] : 0x7fffffff;
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, best, o);
            int oi = __shfl_xor_sync(0xffffffffu, best_i, o);
            if (ov > best || (ov == best && oi < best_i)) best = ov, best_i = oi;
        }
        if (lane == 0) s_val[0] = best, s_idx[0] = best_i;
    }
    __syncthreads();
    float mx = s_val[0];
    float sum = 0;
    for (int v = threadIdx.x; v < V; v += blockDim.x) sum += __expf(__bfloat162float(z[v]) - mx);
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) {
        lse[blockIdx.x] = mx + logf(sum);
        argmax[blockIdx.x] = s_idx[0];
    }
}

__global__ void probe_gather_kernel(const bf16 *logits, const int64_t *idx, float *out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __bfloat162float(logits[idx[i]]);
}

/* Zero head head[t] (-1: none) of token t's attention output: the ablation
 * of packed calls, where one row of tokens carries many prompts. */
__global__ void probe_zero_heads_kernel(bf16 *att, const int32_t *head, int n, int H, int hd) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (int64_t)n * hd;
         i += (int64_t)gridDim.x * blockDim.x) {
        int t = (int)(i / hd), h = head[t];
        if (h >= 0) att[(int64_t)t * H * hd + (int64_t)h * hd + i % hd] = __float2bfloat16(0.0f);
    }
}

static void *dalloc(int *rc, ra_error *err, size_t bytes, const char *what) {
    if (*rc) return NULL;
    void *p = NULL;
    *rc = cuda_malloc_try(&p, bytes ? bytes : 1, what, err);
    return p;
}

void pc_free(pc_state *s) {
    if (s->cache_x)
        for (int l = 0; l < s->L; l++) cuda_free(s->cache_x[l]), cuda_free(s->cache_att[l]);
    free(s->cache_x), free(s->cache_att);
    void *d[] = {s->x, s->xn, s->qkv, s->att, s->gu, s->act, s->sel, s->sel_att, s->logits, s->cos_t, s->sin_t, s->lse,
                 s->tval, s->positions, s->rowidx, s->rows, s->argmax, s->tidx, s->keep};
    for (size_t i = 0; i < sizeof d / sizeof d[0]; i++) cuda_free(d[i]);
    free(s->h_rowidx), free(s->h_rows), free(s->h_argmax), free(s->h_positions), free(s->h_tidx);
    free(s->h_lse), free(s->h_tval), free(s->h_keep), free(s->lse_d);
    cuda_free(s->pk), free(s->h_pk), free(s->cache_base);
    cuda_model_free(s->m);
}

/* A model uploaded ahead of the session (probe_cuda_preload). */
static cuda_model *preloaded;
static const ra_model *preloaded_for;

extern "C" int probe_cuda_preload(const ra_model *m, ra_error *err) {
    if (preloaded) cuda_model_free(preloaded);
    preloaded = NULL, preloaded_for = NULL;
    int rc = cuda_device_init(0, err);
    if (!rc) rc = cuda_model_upload(m, &preloaded, err);
    if (!rc) preloaded_for = m;
    return rc;
}

int pc_init(pc_state *s, const ra_model *m, const probe_data *d, int B, ra_error *err) {
    memset(s, 0, sizeof *s);
    int rc = cuda_device_init(0, err);
    if (rc) return rc;
    if (preloaded && preloaded_for == m) {
        s->m = preloaded; /* the session takes it over */
        preloaded = NULL, preloaded_for = NULL;
    } else if ((rc = cuda_model_upload(m, &s->m, err))) {
        return rc;
    }
    const hf_config *c = &m->cfg;
    s->B = B, s->T_max = d->max_tokens, s->L = c->num_layers, s->H = c->num_heads, s->Hkv = c->num_kv_heads;
    s->hd = c->head_dim, s->D = c->hidden_size, s->I = c->intermediate_size, s->V = c->vocab_size;
    s->qkvd = (s->H + 2 * s->Hkv) * s->hd;
    s->S_max = B * d->max_scored_per_row;
    int max_targets = 1;
    for (int i = 0; i < d->n_items; i++) {
        int t = d->items[i].cand_start[d->items[i].n_cand];
        if (t > max_targets) max_targets = t;
    }
    s->NT_max = B * max_targets; /* at most B items per call */
    size_t n = (size_t)B * s->T_max, D = s->D, qd = (size_t)s->H * s->hd;
    s->x = (uint16_t *)dalloc(&rc, err, n * D * 2, "the residual stream");
    s->xn = (uint16_t *)dalloc(&rc, err, n * D * 2, "normed activations");
    s->qkv = (uint16_t *)dalloc(&rc, err, n * s->qkvd * 2, "q/k/v activations");
    s->att = (uint16_t *)dalloc(&rc, err, n * qd * 2, "attention outputs");
    s->gu = (uint16_t *)dalloc(&rc, err, n * 2 * s->I * 2, "gate/up activations");
    s->act = (uint16_t *)dalloc(&rc, err, n * s->I * 2, "MLP activations");
    s->sel = (uint16_t *)dalloc(&rc, err, (size_t)s->S_max * D * 2, "scored rows");
    s->sel_att = (uint16_t *)dalloc(&rc, err, (size_t)s->S_max * qd * 2, "scored attention rows");
    s->logits = (uint16_t *)dalloc(&rc, err, (size_t)s->S_max * s->V * 2, "logits");
    s->cos_t = (float *)dalloc(&rc, err, n * (s->hd / 2) * 4, "RoPE tables");
    s->sin_t = (float *)dalloc(&rc, err, n * (s->hd / 2) * 4, "RoPE tables");
    s->lse = (float *)dalloc(&rc, err, (size_t)s->S_max * 4, "log-sum-exp");
    s->argmax = (int32_t *)dalloc(&rc, err, (size_t)s->S_max * 4, "argmax");
    s->tval = (float *)dalloc(&rc, err, (size_t)s->NT_max * 4, "target logits");
    s->tidx = (int64_t *)dalloc(&rc, err, (size_t)s->NT_max * 8, "target indexes");
    s->positions = (int32_t *)dalloc(&rc, err, n * 4, "positions");
    s->rowidx = (int32_t *)dalloc(&rc, err, n * 4, "row indexes");
    s->rows = (int32_t *)dalloc(&rc, err, (size_t)s->S_max * 4, "scored rows");
    s->keep = (uint8_t *)dalloc(&rc, err, (size_t)B * s->H, "head masks");
    s->pk = (int32_t *)dalloc(&rc, err, 4 * n * 4, "packed-call indexes");
    s->cache_x = (uint16_t **)xcalloc((size_t)s->L, sizeof(uint16_t *));
    s->cache_att = (uint16_t **)xcalloc((size_t)s->L, sizeof(uint16_t *));
    for (int l = 0; l < s->L; l++) {
        s->cache_x[l] = (uint16_t *)dalloc(&rc, err, n * D * 2, "the cached residual stream");
        s->cache_att[l] = (uint16_t *)dalloc(&rc, err, n * qd * 2, "the cached attention outputs");
    }
    s->h_rowidx = (int32_t *)xmalloc(n * 4);
    s->h_positions = (int32_t *)xmalloc(n * 4);
    s->h_rows = (int32_t *)xmalloc((size_t)s->S_max * 4);
    s->h_argmax = (int32_t *)xmalloc((size_t)s->S_max * 4);
    s->h_lse = (float *)xmalloc((size_t)s->S_max * 4);
    s->lse_d = (double *)xmalloc((size_t)s->S_max * 8);
    s->h_tidx = (int64_t *)xmalloc((size_t)s->NT_max * 8);
    s->h_tval = (float *)xmalloc((size_t)s->NT_max * 4);
    s->h_keep = (uint8_t *)xmalloc((size_t)B * s->H);
    s->h_pk = (int32_t *)xmalloc(4 * n * 4);
    s->cache_base = (probe_outcome *)xmalloc((size_t)B * sizeof(probe_outcome));
    if (rc) {
        ra_error_prefix(err, "ra-probe on the GPU (batch %d x %d tokens, %d layers cached): ", B, s->T_max, s->L);
        pc_free(s);
    }
    return rc;
}

/* ---- layers (the op sequence of kernels/forward_cuda.cu) -------------------- */

void pc_attention_out(pc_state *s, int l, int B, int T, uint16_t *att_out, float *rstd, const int32_t *doc_start) {
    const cuda_layer_weights *W = &s->m->layers[l];
    int n = B * T;
    cuda_rmsnorm_forward(s->xn, rstd, s->x, W->input_norm, n, s->D, (float)s->m->cfg.rms_norm_eps);
    cuda_linear_forward(s->qkv, s->xn, W->wqkv, W->bqkv, n, s->D, s->qkvd);
    cuda_rope_forward_strided(s->qkv, s->qkvd, s->cos_t, s->sin_t, n, s->H + s->Hkv, s->hd);
    cuda_attention_args a;
    memset(&a, 0, sizeof a);
    a.out = att_out, a.out_stride = (int64_t)s->H * s->hd;
    a.q = s->qkv, a.q_stride = s->qkvd;
    a.k = s->qkv + (size_t)s->H * s->hd, a.v = s->qkv + (size_t)(s->H + s->Hkv) * s->hd, a.kv_stride = s->qkvd;
    a.doc_start = doc_start;
    a.B = B, a.T = T, a.H = s->H, a.Hkv = s->Hkv, a.hd = s->hd;
    cuda_attention_forward_ex(&a);
}

void pc_o_proj_and_mlp(pc_state *s, int l, int n, const uint16_t *att) { pc_o_proj_and_mlp_on(s, l, s->x, n, att); }

void pc_o_proj_and_mlp_on(pc_state *s, int l, uint16_t *x, int n, const uint16_t *att) {
    const cuda_layer_weights *W = &s->m->layers[l];
    float eps = (float)s->m->cfg.rms_norm_eps;
    cuda_linear_residual_forward(x, att, W->wo, W->bo, n, s->H * s->hd, s->D);
    cuda_rmsnorm_forward(s->xn, NULL, x, W->post_norm, n, s->D, eps);
    cuda_linear_forward(s->gu, s->xn, W->w_gate_up, NULL, n, s->D, 2 * s->I);
    cuda_swiglu_fused_forward(s->act, s->gu, n, s->I);
    cuda_linear_residual_forward(x, s->act, W->w_down, NULL, n, s->I, s->D);
}

/* ---- one call's rows and scoring ------------------------------------------------ */

/* The scored rows (b·T + position) and the target indexes of the units'
 * rows, uploaded to s->rows and s->tidx; returns the number of scored rows,
 * *nt the number of targets. */
static int pc_scored_rows(pc_state *s, const probe_data *d, const pc_unit *u, int nu, int T, int *nt) {
    int S = 0, NT = 0, b = 0;
    for (int k = 0; k < nu; k++) {
        const probe_item *it = &d->items[u[k].item];
        int s0 = S;
        for (int r = 0; r < it->n_rows; r++, b++) {
            const probe_row *row = &d->rows[it->first_row + r];
            for (int j = 0; j < row->n_scored; j++) s->h_rows[S++] = b * T + row->n_tokens - row->n_scored + j;
        }
        for (int t = 0; t < it->cand_start[it->n_cand]; t++)
            s->h_tidx[NT++] = (int64_t)(s0 + probe_item_target_scored(d, it, t)) * s->V + it->targets[t].token;
    }
    cuda_upload(s->rows, s->h_rows, (size_t)S * 4);
    cuda_upload(s->tidx, s->h_tidx, (size_t)NT * 8);
    *nt = NT;
    return S;
}

/* s->sel holds the final residual of the S scored rows: final norm, LM
 * head, statistics and target logits on the GPU, outcomes on the host. */
static void pc_finish_scores(pc_state *s, const probe_data *d, const pc_unit *u, int nu, int S, int NT,
                             probe_outcome *out) {
    cuda_rmsnorm_forward(s->sel, NULL, s->sel, s->m->final_norm, S, s->D, (float)s->m->cfg.rms_norm_eps);
    cuda_linear_forward(s->logits, s->sel, s->m->lm_head, NULL, S, s->D, s->V);
    probe_row_stats_kernel<<<S, 256, 0, ra_cuda_stream>>>((const bf16 *)s->logits, s->V, s->lse, s->argmax);
    CUDA_CHECK_LAST();
    probe_gather_kernel<<<(NT + 255) / 256, 256, 0, ra_cuda_stream>>>((const bf16 *)s->logits, s->tidx, s->tval, NT);
    CUDA_CHECK_LAST();
    cuda_download(s->h_lse, s->lse, (size_t)S * 4);
    cuda_download(s->h_argmax, s->argmax, (size_t)S * 4);
    cuda_download(s->h_tval, s->tval, (size_t)NT * 4);
    for (int i = 0; i < S; i++) s->lse_d[i] = s->h_lse[i];
    S = NT = 0;
    for (int k = 0; k < nu; k++) {
        const probe_item *it = &d->items[u[k].item];
        out[k] = probe_item_outcome(d, it, s->lse_d + S, s->h_argmax + S, s->h_tval + NT);
        S += probe_item_n_scored(d, it);
        NT += it->cand_start[it->n_cand];
    }
}

void pc_score_call(pc_state *s, const probe_data *d, const pc_unit *u, int nu, int T, probe_outcome *out) {
    int NT, S = pc_scored_rows(s, d, u, nu, T, &NT);
    cuda_gather_rows(s->sel, s->x, s->rows, S, s->D);
    pc_finish_scores(s, d, u, nu, S, NT, out);
}

void pc_rope_tables(pc_state *s, int T) {
    for (int b = 0; b < s->B; b++)
        for (int t = 0; t < T; t++) s->h_positions[(size_t)b * T + t] = t;
    cuda_upload(s->positions, s->h_positions, (size_t)s->B * T * 4);
    cuda_rope_tables(s->cos_t, s->sin_t, s->positions, s->B * T, s->m->inv_freq, s->hd);
}

int pc_baseline(pc_state *s, const probe_data *d, int i0, int i1, int T) {
    int b = 0;
    for (int i = i0; i < i1; i++)
        for (int r = 0; r < d->items[i].n_rows; r++, b++) {
            const probe_row *row = &d->rows[d->items[i].first_row + r];
            int32_t *t = s->h_rowidx + (size_t)b * T;
            memcpy(t, row->tokens, (size_t)row->n_tokens * 4);
            memset(t + row->n_tokens, 0, (size_t)(T - row->n_tokens) * 4);
        }
    int n = b * T;
    cuda_upload(s->rowidx, s->h_rowidx, (size_t)n * 4); /* token ids, through the row-index buffer */
    cuda_embedding_forward(s->x, s->rowidx, s->m->embed, n, s->D);
    for (int l = 0; l < s->L; l++) {
        cuda_copy(s->cache_x[l], s->x, (size_t)n * s->D * 2);
        pc_attention_out(s, l, b, T, s->cache_att[l], NULL, NULL);
        pc_o_proj_and_mlp(s, l, n, s->cache_att[l]);
    }
    s->cache_d = d, s->cache_i0 = i0, s->cache_i1 = i1, s->cache_T = T, s->cache_has_base = 0;
    return b;
}

void pc_cache_set_base(pc_state *s, const probe_outcome *out) {
    if (!s->cache_d) return;
    memcpy(s->cache_base, out, (size_t)(s->cache_i1 - s->cache_i0) * sizeof(probe_outcome));
    s->cache_has_base = 1;
}

/* ---- packed ablation calls --------------------------------------------------- */

/* An ablation call packs its rows end to end, each at its own length, as one
 * row of n tokens: RoPE positions restart at every row and attention stays
 * inside it (doc_start), so no work goes to the padding of the chunk's
 * [rows, T] layout (about 5% for the bench's prompts of 380-435 tokens).
 * The tokens' states come from the chunk's caches (cache row slot·T + t).
 *
 * Host arrays (s->h_pk, uploaded to s->pk): [0,n) cache rows, [n,2n)
 * positions, [2n,3n) the packed start of each token's row, [3n,4n) the head
 * to zero; then the scored rows (into the packed call) and target indexes
 * into s->rows / s->tidx.  With last_only (the ablated layer is the last),
 * only the scored positions are placed: nothing after them reads the
 * others.  Returns n; *S and *NT the scored rows and targets. */
static int pk_build(pc_state *s, const probe_data *d, const pc_unit *u, int nu, const int *chunk_slot, int T,
                    int last_only, int *S_out, int *NT_out) {
    int n = 0, S = 0, NT = 0;
    int32_t *cache_row = s->h_pk, *pos = s->h_pk + (size_t)s->B * s->T_max;
    int32_t *doc = pos + (size_t)s->B * s->T_max, *head = doc + (size_t)s->B * s->T_max;
    for (int k = 0; k < nu; k++) {
        const probe_item *it = &d->items[u[k].item];
        int s0 = S;
        for (int r = 0; r < it->n_rows; r++) {
            const probe_row *row = &d->rows[it->first_row + r];
            int slot = chunk_slot[u[k].item] + r, first = last_only ? row->n_tokens - row->n_scored : 0, start = n;
            for (int t = first; t < row->n_tokens; t++, n++) {
                cache_row[n] = slot * T + t;
                pos[n] = t;
                doc[n] = start;
                head[n] = u[k].head;
            }
            for (int j = 0; j < row->n_scored; j++)
                s->h_rows[S++] = start + (row->n_tokens - first) - row->n_scored + j;
        }
        for (int t = 0; t < it->cand_start[it->n_cand]; t++)
            s->h_tidx[NT++] = (int64_t)(s0 + probe_item_target_scored(d, it, t)) * s->V + it->targets[t].token;
    }
    /* one upload: the four arrays at stride n */
    int32_t *dst = s->h_pk;
    size_t stride = (size_t)s->B * s->T_max;
    for (int a = 1; a < 4; a++) memmove(dst + (size_t)a * n, dst + a * stride, (size_t)n * 4);
    cuda_upload(s->pk, s->h_pk, (size_t)4 * n * 4);
    cuda_upload(s->rows, s->h_rows, (size_t)S * 4);
    cuda_upload(s->tidx, s->h_tidx, (size_t)NT * 8);
    *S_out = S, *NT_out = NT;
    return n;
}

/* Ablate the units' heads at layer l from the caches and score: one call. */
static void pc_ablation_call(pc_state *s, const probe_data *d, const pc_unit *u, int nu, const int *chunk_slot, int T,
                             int l, probe_outcome *out) {
    int L = s->L, D = s->D, qd = s->H * s->hd, S, NT;
    int last_only = l == L - 1;
    int n = pk_build(s, d, u, nu, chunk_slot, T, last_only, &S, &NT);
    const int32_t *cache_row = s->pk, *pos = s->pk + n, *doc = s->pk + 2 * (size_t)n, *head = s->pk + 3 * (size_t)n;
    if (last_only) { /* o_proj and the MLP of the scored rows alone */
        cuda_gather_rows(s->sel, s->cache_x[l], cache_row, n, D);
        cuda_gather_rows(s->sel_att, s->cache_att[l], cache_row, n, qd);
        probe_zero_heads_kernel<<<ra_grid_for((int64_t)n * s->hd, 256), 256, 0, ra_cuda_stream>>>(
            (bf16 *)s->sel_att, head, n, s->H, s->hd);
        CUDA_CHECK_LAST();
        pc_o_proj_and_mlp_on(s, l, s->sel, n, s->sel_att); /* n == S: every placed row is scored */
        pc_finish_scores(s, d, u, nu, S, NT, out);
        return;
    }
    cuda_gather_rows(s->x, s->cache_x[l], cache_row, n, D);
    cuda_gather_rows(s->att, s->cache_att[l], cache_row, n, qd);
    probe_zero_heads_kernel<<<ra_grid_for((int64_t)n * s->hd, 256), 256, 0, ra_cuda_stream>>>((bf16 *)s->att, head, n,
                                                                                              s->H, s->hd);
    CUDA_CHECK_LAST();
    cuda_rope_tables(s->cos_t, s->sin_t, pos, n, s->m->inv_freq, s->hd);
    pc_o_proj_and_mlp(s, l, n, s->att);
    for (int k = l + 1; k < L - 1; k++) {
        pc_attention_out(s, k, 1, n, s->att, NULL, doc);
        pc_o_proj_and_mlp(s, k, n, s->att);
    }
    /* the last layer: attention for every token (the scored queries need
     * every key and value), then o_proj and the MLP of the scored rows */
    pc_attention_out(s, L - 1, 1, n, s->att, NULL, doc);
    cuda_gather_rows(s->sel, s->x, s->rows, S, D);
    cuda_gather_rows(s->sel_att, s->att, s->rows, S, qd);
    pc_o_proj_and_mlp_on(s, L - 1, s->sel, S, s->sel_att);
    pc_finish_scores(s, d, u, nu, S, NT, out);
}

/* ---- sessions: one upload of the model for several engine runs ------------------ */

static pc_state *session;
static const ra_model *session_model;

extern "C" void probe_cuda_end(void) {
    if (!session) return;
    pc_free(session);
    free(session);
    session = NULL;
    session_model = NULL;
}

static int batch_for(const probe_data *d, int batch) {
    int B = batch > 0 ? batch : 128;
    return B < d->max_rows_per_item ? d->max_rows_per_item : B;
}

extern "C" int probe_cuda_begin(const ra_model *m, const probe_data *d, int batch, ra_error *err) {
    probe_cuda_end();
    pc_state *s = (pc_state *)xcalloc(1, sizeof *s);
    int rc = pc_init(s, m, d, batch_for(d, batch), err);
    if (rc) {
        free(s);
        return rc;
    }
    session = s;
    session_model = m;
    return 0;
}

pc_state *pc_acquire(const ra_model *m, const probe_data *d, int B, pc_state *local, int *rc, ra_error *err) {
    int max_targets = 1;
    for (int i = 0; i < d->n_items; i++)
        if (d->items[i].cand_start[d->items[i].n_cand] > max_targets) max_targets = d->items[i].cand_start[d->items[i].n_cand];
    if (session && session_model == m && session->B == B && session->T_max >= d->max_tokens &&
        session->S_max >= B * d->max_scored_per_row && session->NT_max >= B * max_targets) {
        *rc = 0;
        return session;
    }
    *rc = pc_init(local, m, d, B, err);
    return *rc ? NULL : local;
}

void pc_release(pc_state *s) {
    if (s && s != session) pc_free(s);
}

/* ---- the engine ------------------------------------------------------------------ */
/* ---- the engine ------------------------------------------------------------------ */

extern "C" int probe_exact_cuda(const ra_model *m, const probe_data *d, const uint8_t *measure, const probe_opts *o,
                                probe_exact_result *res, ra_error *err) {
    int B = batch_for(d, o ? o->batch : 0), rc;
    pc_state local, *sp = pc_acquire(m, d, B, &local, &rc, err);
    if (rc) return rc;
    pc_state &s = *sp;
    int L = s.L, H = s.H, N = d->n_items;
    double *sum_acc = (double *)xcalloc((size_t)L * H, sizeof(double));
    double *sum_lp = (double *)xcalloc((size_t)L * H, sizeof(double));
    int *chunk_slot = (int *)xmalloc((size_t)N * sizeof(int));
    pc_unit *units = (pc_unit *)xmalloc((size_t)B * sizeof(pc_unit));
    probe_outcome *outs = (probe_outcome *)xmalloc((size_t)B * sizeof(probe_outcome));
    int64_t done = 0;

    for (int i0 = 0; i0 < N;) {
        int i1 = i0, rows = 0, T = 0;
        while (i1 < N && rows + d->items[i1].n_rows <= B) {
            const probe_item *it = &d->items[i1];
            chunk_slot[i1] = rows;
            for (int r = 0; r < it->n_rows; r++)
                if (d->rows[it->first_row + r].n_tokens > T) T = d->rows[it->first_row + r].n_tokens;
            rows += it->n_rows;
            i1++;
        }
        if (s.cache_d == d && s.cache_i0 == i0 && s.cache_i1 == i1 && s.cache_T == T && s.cache_has_base) {
            /* an attribution run of this session left this chunk's baseline
             * pass in the caches: the same pass, not done twice */
            for (int i = i0; i < i1; i++) res->base[i] = s.cache_base[i - i0];
        } else {
            pc_rope_tables(&s, T);
            pc_baseline(&s, d, i0, i1, T);
            int nb = 0;
            for (int i = i0; i < i1; i++) units[nb++] = (pc_unit){i, -1};
            pc_score_call(&s, d, units, nb, T, outs);
            pc_cache_set_base(&s, outs);
            for (int i = i0; i < i1; i++) res->base[i] = outs[i - i0];
        }

        /* ablations from the cache: one call per head, its rows those of
         * the chunk (at most B) in chunk order.  So a row always lands at
         * the same offset of a packed call, whichever other heads are
         * measured: attention's key tiles fall alike and a head's drops are
         * bit for bit the same in an exact run and in a hybrid's
         * confirmation. */
        for (int l = 0; l < L; l++)
            for (int h = 0; h < H; h++) {
                if (measure && !measure[l * H + h]) continue;
                int nu = 0;
                for (int i = i0; i < i1; i++) units[nu++] = (pc_unit){i, h};
                pc_ablation_call(&s, d, units, nu, chunk_slot, T, l, outs);
                for (int u = 0; u < nu; u++) {
                    int i = units[u].item;
                    probe_outcome a = outs[u];
                    sum_acc[l * H + h] += (double)res->base[i].correct - a.correct;
                    sum_lp[l * H + h] += res->base[i].logprob - a.logprob;
                    if (res->per_head) res->per_head[((size_t)l * H + h) * N + i] = a;
                }
                done += nu;
                if (o && o->progress) ra_progress_update(o->progress, done);
            }
        i0 = i1;
    }
    for (int i = 0; i < L * H; i++)
        if (!measure || measure[i]) {
            res->acc_drop[i] = (float)(sum_acc[i] / N);
            res->logprob_drop[i] = (float)(sum_lp[i] / N);
        }
    free(sum_acc), free(sum_lp), free(chunk_slot), free(units), free(outs);
    pc_release(sp);
    return 0;
}
