/* One decoder block's forward with saved activations and its backward
 * (lib/block_train.h).  The forward repeats lib/forward_hybrid_cpu.c's
 * arithmetic op for op (tests compare it with ra_forward_cpu); the backward
 * walks it in reverse with the ops of lib/ops.h, lib/dm2.h, lib/adapter.h. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "adapter.h"
#include "block_train.h"
#include "dm2.h"
#include "hybrid.h"
#include "loss.h"
#include "ops.h"

struct ra_block_acts {
    const ra_model *m;
    int layer, B, T, n;
    int nq, nkv, Hs, parallel, static_adapter;
    size_t ssm_w;
    float *x, *xn, *rstd1;
    float *q, *k, *v, *katt;
    float *ssm_out, *slots, *slots2, *stats, *aproj, *adapted, *mix;
    float *h, *hn, *rstd2, *gate, *up, *act;
    float *inv_freq, *cos_t, *sin_t;
    int32_t *pos, *doc;
    int has_doc;
    uint8_t *starts, *attn_slot;
    dm2_acts *dm2;
    /* backward workspace */
    float *dh, *dhn, *tmp, *dact, *dgate, *dup, *dkatt, *dq, *dk, *dv, *dslots, *dslots2, *dssm, *daproj, *dxn;
};

static float *fbuf(size_t count) { return xcalloc(count ? count : 1, sizeof(float)); }

ra_block_acts *ra_block_acts_create(const ra_model *m, int layer, int B, int T, ra_error *err) {
    const hf_config *c = &m->cfg;
    if (layer < 0 || layer >= c->num_layers || B < 1 || T < 1) {
        ra_fail(err, EX_SOFTWARE, "block_train: layer %d, B %d, T %d out of range", layer, B, T);
        return NULL;
    }
    const ra_layer *L = &m->layers[layer];
    ra_block_acts *a = xcalloc(1, sizeof *a);
    size_t n = (size_t)B * T, D = c->hidden_size, hd = c->head_dim, H = c->num_heads, I = c->intermediate_size;
    a->m = m, a->layer = layer, a->B = B, a->T = T, a->n = (int)n;
    a->nq = L->n_attn_heads;
    a->nkv = m->hybrid ? L->n_attn_heads : c->num_kv_heads;
    a->Hs = L->n_ssm_heads;
    a->parallel = m->hybrid && m->hybrid->layout == RA_LAYOUT_PARALLEL;
    a->static_adapter = m->hybrid && m->hybrid->adapter == RA_ADAPTER_STATIC && a->nq && a->Hs && !a->parallel;
    a->ssm_w = a->parallel ? D : (size_t)a->Hs * hd;
    size_t qd = (size_t)a->nq * hd, kd = (size_t)a->nkv * hd;
    a->x = fbuf(n * D), a->xn = fbuf(n * D), a->rstd1 = fbuf(n);
    a->q = fbuf(n * qd), a->k = fbuf(n * kd), a->v = fbuf(n * kd), a->katt = fbuf(n * qd);
    a->ssm_out = fbuf(n * a->ssm_w), a->slots = fbuf(n * H * hd), a->slots2 = fbuf(n * H * hd);
    a->stats = fbuf(n * ADAPTER_STATS), a->aproj = fbuf(n * D), a->adapted = fbuf(n * D), a->mix = fbuf(n * D);
    a->h = fbuf(n * D), a->hn = fbuf(n * D), a->rstd2 = fbuf(n);
    a->gate = fbuf(n * I), a->up = fbuf(n * I), a->act = fbuf(n * I);
    a->inv_freq = fbuf(hd / 2), a->cos_t = fbuf(n * hd / 2), a->sin_t = fbuf(n * hd / 2);
    a->pos = xcalloc(n, sizeof(int32_t)), a->doc = xcalloc(n, sizeof(int32_t));
    a->starts = xcalloc(n, 1), a->attn_slot = xcalloc(H, 1);
    rope_inv_freq(a->inv_freq, (int)hd, c);
    if (a->Hs) {
        a->dm2 = dm2_alloc_state(B, T, &L->ssm_cfg, err);
        if (!a->dm2) {
            ra_block_acts_free(a);
            return NULL;
        }
    }
    a->dh = fbuf(n * D), a->dhn = fbuf(n * D), a->tmp = fbuf(n * D), a->dxn = fbuf(n * D), a->daproj = fbuf(n * D);
    a->dact = fbuf(n * I), a->dgate = fbuf(n * I), a->dup = fbuf(n * I);
    a->dkatt = fbuf(n * qd), a->dq = fbuf(n * qd), a->dk = fbuf(n * kd), a->dv = fbuf(n * kd);
    a->dslots = fbuf(n * H * hd), a->dslots2 = fbuf(n * H * hd), a->dssm = fbuf(n * a->ssm_w);
    return a;
}

void ra_block_acts_free(ra_block_acts *a) {
    if (!a) return;
    float *bufs[] = {a->x,     a->xn,    a->rstd1,  a->q,     a->k,     a->v,       a->katt,  a->ssm_out, a->slots,
                     a->slots2, a->stats, a->aproj, a->adapted, a->mix, a->h,       a->hn,    a->rstd2,   a->gate,
                     a->up,    a->act,   a->inv_freq, a->cos_t, a->sin_t, a->dh,    a->dhn,   a->tmp,     a->dact,
                     a->dgate, a->dup,   a->dkatt,  a->dq,    a->dk,    a->dv,      a->dslots, a->dslots2, a->dssm,
                     a->daproj, a->dxn};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
    free(a->pos), free(a->doc), free(a->starts), free(a->attn_slot);
    dm2_free_state(a->dm2);
    free(a);
}

/* ------------------------------------------------------------- grads */

int64_t ra_tensor_numel(const ra_model_tensor *t) { return t->shape[0] * (t->ndim == 2 ? t->shape[1] : 1); }

static int is_mixer_param(const char *name) {
    return strstr(name, ".self_attn.") || strstr(name, ".mixer.") || strstr(name, ".attn_adapter.");
}

ra_block_grads *ra_block_grads_create(ra_model *m, int layer, int mixer_only) {
    ra_model_tensor *all;
    int total = ra_model_tensor_list(m, &all);
    char prefix[64];
    snprintf(prefix, sizeof prefix, "model.layers.%d.", layer);
    ra_block_grads *g = xcalloc(1, sizeof *g);
    g->t = xcalloc((size_t)total, sizeof *g->t);
    g->grad = xcalloc((size_t)total, sizeof *g->grad);
    g->mixer = xcalloc((size_t)total, sizeof *g->mixer);
    const char *base = (const char *)&m->layers[layer];
    for (int i = 0; i < total; i++) {
        if (strncmp(all[i].name, prefix, strlen(prefix)) != 0) continue;
        int j = g->n++;
        g->t[j] = all[i];
        g->mixer[j] = is_mixer_param(all[i].name);
        if (mixer_only && !g->mixer[j]) continue;
        g->grad[j] = fbuf((size_t)ra_tensor_numel(&all[i]));
        /* The same field of the gradient layer: the slot's offset in ra_layer. */
        ptrdiff_t off = (const char *)all[i].data - base;
        RA_CHECK(off >= 0 && (size_t)off + sizeof(float *) <= sizeof(ra_layer));
        memcpy((char *)&g->g + off, &g->grad[j], sizeof(float *));
    }
    free(all);
    return g;
}

void ra_block_grads_zero(ra_block_grads *g) {
    for (int i = 0; i < g->n; i++)
        if (g->grad[i]) memset(g->grad[i], 0, (size_t)ra_tensor_numel(&g->t[i]) * sizeof(float));
}

void ra_block_grads_free(ra_block_grads *g) {
    if (!g) return;
    for (int i = 0; i < g->n; i++) free(g->grad[i]);
    free(g->grad), free(g->t), free(g->mixer);
    free(g);
}

/* ----------------------------------------------------------- forward */

static void mixer_forward(ra_block_acts *a) {
    const ra_model *m = a->m;
    const hf_config *c = &m->cfg;
    const ra_layer *L = &m->layers[a->layer];
    int n = a->n, D = c->hidden_size, hd = c->head_dim, H = c->num_heads, nq = a->nq, nkv = a->nkv, Hs = a->Hs;
    const int32_t *doc = a->has_doc ? a->doc : NULL;
    if (nq) {
        linear_forward(a->q, a->xn, L->wq, L->bq, n, D, nq * hd);
        linear_forward(a->k, a->xn, L->wk, L->bk, n, D, nkv * hd);
        linear_forward(a->v, a->xn, L->wv, L->bv, n, D, nkv * hd);
        rope_forward(a->q, a->cos_t, a->sin_t, n, nq, hd);
        rope_forward(a->k, a->cos_t, a->sin_t, n, nkv, hd);
        attention_forward(a->katt, NULL, a->q, a->k, a->v, doc, a->B, a->T, nq, nkv, hd);
    }
    if (Hs) dm2_forward(a->ssm_out, NULL, a->dm2, &L->ssm, a->xn, a->has_doc ? a->starts : NULL);
    if (a->parallel) {
        if (nq) {
            linear_forward(a->aproj, a->katt, L->wo, L->bo, n, nq * hd, D);
            adapter_linear_forward(a->mix, a->adapted, a->stats, a->ssm_out, a->aproj, L->adapter_w, L->adapter_b, n,
                                   D);
        } else memcpy(a->mix, a->ssm_out, (size_t)n * D * sizeof(float));
        return;
    }
    size_t row = (size_t)H * hd, qrow = (size_t)nq * hd, srow = (size_t)Hs * hd;
    for (int r = 0; r < n; r++) {
        for (int i = 0; i < nq; i++) {
            int slot = m->hybrid ? L->attn_heads[i] : i;
            memcpy(a->slots + r * row + (size_t)slot * hd, a->katt + r * qrow + (size_t)i * hd, hd * sizeof(float));
        }
        for (int j = 0; j < Hs; j++)
            memcpy(a->slots + r * row + (size_t)L->ssm_heads[j] * hd, a->ssm_out + r * srow + (size_t)j * hd,
                   hd * sizeof(float));
    }
    const float *slots = a->slots;
    if (a->static_adapter) {
        memset(a->attn_slot, 0, (size_t)H);
        for (int i = 0; i < nq; i++) a->attn_slot[L->attn_heads[i]] = 1;
        adapter_static_forward(a->slots2, a->stats, a->slots, a->attn_slot, n, H, hd);
        slots = a->slots2;
    }
    linear_forward(a->mix, slots, L->wo, L->bo, n, H * hd, D);
}

void ra_block_forward(ra_block_acts *a, float *out, const float *x, const int32_t *doc_start, int B, int T) {
    RA_CHECK(B == a->B && T == a->T);
    const hf_config *c = &a->m->cfg;
    const ra_layer *L = &a->m->layers[a->layer];
    int n = a->n, D = c->hidden_size, I = c->intermediate_size;
    size_t nd = (size_t)n * D;
    a->has_doc = doc_start != NULL;
    for (int i = 0; i < n; i++) {
        int t = i % T;
        a->doc[i] = doc_start ? doc_start[i] : 0;
        a->pos[i] = t - a->doc[i];
        a->starts[i] = a->doc[i] == t;
    }
    rope_tables(a->cos_t, a->sin_t, a->pos, n, a->inv_freq, c->head_dim);
    memcpy(a->x, x, nd * sizeof(float));
    float eps = (float)c->rms_norm_eps;
    rmsnorm_forward(a->xn, a->rstd1, a->x, L->input_norm, n, D, eps);
    mixer_forward(a);
    for (size_t i = 0; i < nd; i++) a->h[i] = a->x[i] + a->mix[i];
    rmsnorm_forward(a->hn, a->rstd2, a->h, L->post_norm, n, D, eps);
    linear_forward(a->gate, a->hn, L->w_gate, NULL, n, D, I);
    linear_forward(a->up, a->hn, L->w_up, NULL, n, D, I);
    swiglu_forward(a->act, a->gate, a->up, (int64_t)n * I);
    linear_forward(out, a->act, L->w_down, NULL, n, I, D);
    residual_add(out, a->h, (int64_t)nd);
}

/* ---------------------------------------------------------- backward */

static void add_into(float *y, const float *x, size_t count) {
    for (size_t i = 0; i < count; i++) y[i] += x[i];
}

/* dmix (a->dh) → dxn (a->dxn, overwritten) and the mixer's parameter grads. */
static void mixer_backward(ra_block_acts *a, const ra_layer *g, const float *dmix) {
    const ra_model *m = a->m;
    const hf_config *c = &m->cfg;
    const ra_layer *L = &m->layers[a->layer];
    int n = a->n, D = c->hidden_size, hd = c->head_dim, H = c->num_heads, nq = a->nq, nkv = a->nkv, Hs = a->Hs;
    size_t qd = (size_t)nq * hd;
    memset(a->dxn, 0, (size_t)n * D * sizeof(float));
    if (a->parallel) {
        if (nq) {
            adapter_linear_backward(a->dssm, a->daproj, g->adapter_w, g->adapter_b, dmix, a->ssm_out, a->aproj,
                                    a->adapted, a->stats, L->adapter_w, n, D);
            linear_backward(a->dkatt, g->wo, g->bo, a->daproj, a->katt, L->wo, n, nq * hd, D);
        } else memcpy(a->dssm, dmix, (size_t)n * D * sizeof(float));
    } else {
        size_t row = (size_t)H * hd, srow = (size_t)Hs * hd;
        const float *slots = a->static_adapter ? a->slots2 : a->slots;
        linear_backward(a->dslots2, g->wo, g->bo, dmix, slots, L->wo, n, H * hd, D);
        const float *dslots = a->dslots2;
        if (a->static_adapter) {
            adapter_static_backward(a->dslots, a->dslots2, a->slots, a->stats, a->attn_slot, n, H, hd);
            dslots = a->dslots;
        }
        for (int r = 0; r < n; r++) {
            for (int i = 0; i < nq; i++) {
                int slot = m->hybrid ? L->attn_heads[i] : i;
                memcpy(a->dkatt + r * qd + (size_t)i * hd, dslots + r * row + (size_t)slot * hd, hd * sizeof(float));
            }
            for (int j = 0; j < Hs; j++)
                memcpy(a->dssm + r * srow + (size_t)j * hd, dslots + r * row + (size_t)L->ssm_heads[j] * hd,
                       hd * sizeof(float));
        }
    }
    if (Hs) {
        /* dm2_backward accumulates into every parameter it has: with frozen
         * SSM parameters (never: they are mixer parameters) it would need
         * a scratch block. */
        dm2_params gs = g->ssm;
        dm2_backward(&gs, a->dxn, a->dssm, a->dm2, &L->ssm, a->xn, a->has_doc ? a->starts : NULL);
    }
    if (nq) {
        attention_backward(a->dq, a->dk, a->dv, a->dkatt, a->q, a->k, a->v, a->has_doc ? a->doc : NULL, a->B, a->T,
                           nq, nkv, hd);
        rope_backward(a->dq, a->cos_t, a->sin_t, n, nq, hd);
        rope_backward(a->dk, a->cos_t, a->sin_t, n, nkv, hd);
        linear_backward(a->tmp, g->wq, g->bq, a->dq, a->xn, L->wq, n, D, nq * hd);
        add_into(a->dxn, a->tmp, (size_t)n * D);
        linear_backward(a->tmp, g->wk, g->bk, a->dk, a->xn, L->wk, n, D, nkv * hd);
        add_into(a->dxn, a->tmp, (size_t)n * D);
        linear_backward(a->tmp, g->wv, g->bv, a->dv, a->xn, L->wv, n, D, nkv * hd);
        add_into(a->dxn, a->tmp, (size_t)n * D);
    }
}

void ra_block_backward(ra_block_acts *a, const ra_layer *g, const float *dout) { ra_block_backward_dx(a, g, dout, NULL); }

void ra_block_backward_dx(ra_block_acts *a, const ra_layer *g, const float *dout, float *dx) {
    const hf_config *c = &a->m->cfg;
    const ra_layer *L = &a->m->layers[a->layer];
    int n = a->n, D = c->hidden_size, I = c->intermediate_size;
    size_t nd = (size_t)n * D;
    /* MLP: out = h + down(swiglu(gate(hn), up(hn))) */
    memcpy(a->dh, dout, nd * sizeof(float));
    linear_backward(a->dact, g->w_down, NULL, dout, a->act, L->w_down, n, I, D);
    swiglu_backward(a->dgate, a->dup, a->dact, a->gate, a->up, (int64_t)n * I);
    linear_backward(a->dhn, g->w_gate, NULL, a->dgate, a->hn, L->w_gate, n, D, I);
    linear_backward(a->tmp, g->w_up, NULL, a->dup, a->hn, L->w_up, n, D, I);
    add_into(a->dhn, a->tmp, nd);
    rmsnorm_backward(a->tmp, g->post_norm, a->dhn, a->h, L->post_norm, a->rstd2, n, D);
    add_into(a->dh, a->tmp, nd);
    /* h = x + mixer(RMSNorm(x)): dx = dh + RMSNorm's backward of dxn.  In
     * stage 2, x is the teacher's and dx is not wanted. */
    mixer_backward(a, g, a->dh);
    rmsnorm_backward(dx ? a->tmp : NULL, g->input_norm, a->dxn, a->x, L->input_norm, a->rstd1, n, D);
    if (dx) {
        /* dout is no longer read (it was copied into dh first), so dx may alias it. */
        for (size_t i = 0; i < nd; i++) dx[i] = a->dh[i] + a->tmp[i];
    }
}

double ra_block_stage2(ra_block_acts *a, const ra_layer *g, float *out, const float *x, const float *target,
                       const int32_t *doc_start, int B, int T, float dloss) {
    int D = a->m->cfg.hidden_size;
    ra_block_forward(a, out, x, doc_start, B, T);
    double loss = loss_l2_forward(out, target, a->n, D);
    if (g) {
        loss_l2_backward(out, out, target, a->n, D, dloss); /* out becomes dout */
        ra_block_backward(a, g, out);
    }
    return loss;
}
