/* The hybrid layer's mixer on the CPU (DESIGN §2.4; layouts in lib/hybrid.h):
 *
 *   xn  = RMSNorm(x)
 *   att = softmax attention of the k kept heads (own Q, own copy of K/V, RoPE)
 *   ssm = DiscreteMamba2 over xn (state and conv reset at document starts)
 *   routed:   slots = [att at kept slots | gated y of SSM heads at the others]
 *             (static adapter on the attention slots when both kinds exist)
 *             x += o_proj(slots)
 *   parallel: x += 0.5·(ssm + adapter(o_proj_kept(att)))   (k > 0)
 *             x += ssm                                        (k = 0)
 *
 * A teacher layer is the routed case with every slot attention and GQA K/V,
 * which decode's prefill runs through here to capture the KV cache. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "adapter.h"
#include "forward_hybrid.h"
#include "hybrid.h"
#include "ops.h"

typedef struct ra_hybrid_acts {
    float *q, *k, *v;   /* [n, amax·hd]: the layer's attention heads */
    float *katt;        /* [n, amax·hd]: their outputs, attn_heads order */
    float *ssm_out;     /* [n, max(Hs·hd, D)]: gated y (routed) or out_proj output (parallel) */
    float *slots;       /* [n, H·hd]: static adapter output */
    float *aproj;       /* [n, D]: kept heads through their o_proj slice (parallel) */
    float *adapted;     /* [n, D]: standardised attention (parallel adapter) */
    float *stats;       /* [n, ADAPTER_STATS] */
    uint8_t *starts;    /* [n]: 1 where a document begins */
    uint8_t *attn_slot; /* [H] */
    dm2_acts *dm2;      /* sized for the largest SSM layer; NULL without SSM heads */
} ra_hybrid_acts;

/* K/V heads of a layer's attention: a hybrid's kept heads each have their
 * own; a teacher's share GQA groups. */
static int kv_heads(const ra_model *m, const ra_layer *L) {
    return m->hybrid ? L->n_attn_heads : m->cfg.num_kv_heads;
}

static ra_hybrid_acts *acts_get(ra_forward_state *s) {
    if (s->hy) return s->hy;
    const ra_model *m = s->m;
    const hf_config *c = &m->cfg;
    size_t n = (size_t)s->B_max * s->T_max, D = c->hidden_size, hd = c->head_dim, H = c->num_heads;
    int amax = 0, hs_max = 0, g_max = 0;
    dm2_config big = {0};
    for (int l = 0; l < c->num_layers; l++) {
        const ra_layer *L = &m->layers[l];
        if (L->n_attn_heads > amax) amax = L->n_attn_heads;
        if (!L->n_ssm_heads) continue;
        if (!hs_max) big = L->ssm_cfg;
        if (L->n_ssm_heads > hs_max) hs_max = L->n_ssm_heads;
        if (L->ssm_cfg.n_groups > g_max) g_max = L->ssm_cfg.n_groups;
    }
    ra_hybrid_acts *a = xcalloc(1, sizeof *a);
    size_t ad = (size_t)(amax ? amax : 1) * hd, ssm_w = (size_t)hs_max * hd > D ? (size_t)hs_max * hd : D;
    a->q = xmalloc(n * ad * sizeof(float));
    a->k = xmalloc(n * ad * sizeof(float));
    a->v = xmalloc(n * ad * sizeof(float));
    a->katt = xmalloc(n * ad * sizeof(float));
    a->ssm_out = xmalloc(n * ssm_w * sizeof(float));
    a->slots = xmalloc(n * H * hd * sizeof(float));
    a->aproj = xmalloc(n * D * sizeof(float));
    a->adapted = xmalloc(n * D * sizeof(float));
    a->stats = xmalloc(n * ADAPTER_STATS * sizeof(float));
    a->starts = xmalloc(n);
    a->attn_slot = xmalloc(H);
    if (hs_max) {
        /* Every layer's buffers are prefixes of these: they grow with heads
         * and groups, and a layer's rows (B·T ≤ n) are contiguous. */
        big.n_heads = hs_max;
        big.n_groups = g_max;
        big.has_out_proj = 0;
        ra_error err = {0};
        a->dm2 = dm2_alloc_state(1, (int)n, &big, &err);
        RA_CHECK(a->dm2 != NULL);
    }
    s->hy = a;
    return a;
}

void hybrid_acts_free(ra_hybrid_acts *a) {
    if (!a) return;
    free(a->q), free(a->k), free(a->v), free(a->katt), free(a->ssm_out), free(a->slots);
    free(a->aproj), free(a->adapted), free(a->stats), free(a->starts), free(a->attn_slot);
    dm2_free_state(a->dm2);
    free(a);
}

int hybrid_check_opts(const ra_forward_state *s, const ra_forward_opts *o, ra_error *err) {
    for (int r = 0; r < o->n_probs; r++) {
        ra_head_ref h = o->probs_heads[r];
        const ra_layer *L = &s->m->layers[h.layer];
        int found = 0;
        for (int i = 0; i < L->n_attn_heads; i++) found |= L->attn_heads[i] == h.head;
        if (!found)
            return ra_fail(err, EX_USAGE, "forward: probabilities of layer %d head %d: an SSM head of this hybrid has "
                           "no attention probabilities", h.layer, h.head);
    }
    return 0;
}

/* Attention probabilities of kept head i alone, rerun on copies of its q
 * and its K/V head (the same arithmetic per row as the full call). */
static void head_probs(ra_forward_state *s, const ra_hybrid_acts *a, int nq, int nkv, int i, int B, int T,
                       const int32_t *doc_start, float *probs) {
    int hd = s->m->cfg.head_dim, g = i / (nq / nkv);
    size_t n = (size_t)B * T;
    for (size_t r = 0; r < n; r++) {
        memcpy(s->hq + r * hd, a->q + (r * nq + i) * hd, (size_t)hd * sizeof(float));
        memcpy(s->hk + r * hd, a->k + (r * nkv + g) * hd, (size_t)hd * sizeof(float));
        memcpy(s->hv + r * hd, a->v + (r * nkv + g) * hd, (size_t)hd * sizeof(float));
    }
    attention_forward(s->ho, probs, s->hq, s->hk, s->hv, doc_start, B, T, 1, 1, hd);
}

/* Store positions 0..T−1 of every row's K/V heads in the decode cache. */
static void capture_kv(ra_decode *d, int layer, const float *k, const float *v, int B, int T, int nkv, int hd) {
    ra_decode_layer *c = &d->layers[layer];
    for (int b = 0; b < B; b++)
        for (int g = 0; g < nkv; g++)
            for (int t = 0; t < T; t++) {
                size_t src = (((size_t)b * T + t) * nkv + g) * hd, dst = (((size_t)b * nkv + g) * d->T_max + t) * hd;
                memcpy(c->k + dst, k + src, (size_t)hd * sizeof(float));
                memcpy(c->v + dst, v + src, (size_t)hd * sizeof(float));
            }
}

/* This layer's rows of the caller's ablation mask: keep(b, slot). */
static int slot_kept(const ra_forward_state *s, const uint8_t *head_keep, int layer, int b, int slot) {
    const hf_config *c = &s->m->cfg;
    return !head_keep || head_keep[((size_t)b * c->num_layers + layer) * c->num_heads + slot];
}

/* Combine the attention heads' outputs (a->katt) and the SSM's (a->ssm_out)
 * per layout, project, add to the residual. */
static void mixer_output(ra_forward_state *s, int layer, int B, int T, const uint8_t *head_keep) {
    const ra_model *m = s->m;
    const hf_config *c = &m->cfg;
    const ra_layer *L = &m->layers[layer];
    ra_hybrid_acts *a = s->hy;
    int n = B * T, D = c->hidden_size, H = c->num_heads, hd = c->head_dim, nq = L->n_attn_heads, Hs = L->n_ssm_heads;
    size_t qrow = (size_t)nq * hd;

    if (head_keep) /* ablated kept heads: zero their outputs (every layout) */
        for (int b = 0; b < B; b++)
            for (int i = 0; i < nq; i++)
                if (!slot_kept(s, head_keep, layer, b, L->attn_heads[i]))
                    for (int t = 0; t < T; t++)
                        memset(a->katt + ((size_t)b * T + t) * qrow + (size_t)i * hd, 0, (size_t)hd * sizeof(float));

    if (m->hybrid && m->hybrid->layout == RA_LAYOUT_PARALLEL) {
        const float *out = a->ssm_out;
        if (nq) {
            linear_forward(a->aproj, a->katt, L->wo, L->bo, n, nq * hd, D);
            adapter_linear_forward(s->proj, a->adapted, a->stats, a->ssm_out, a->aproj, L->adapter_w, L->adapter_b, n,
                                   D);
            out = s->proj;
        }
        residual_add(s->x, out, (int64_t)n * D);
        return;
    }

    /* routed (and teacher): every slot into o_proj */
    size_t row = (size_t)H * hd, srow = (size_t)Hs * hd;
    float *slots = s->att;
    for (int r = 0; r < n; r++) {
        for (int i = 0; i < nq; i++)
            memcpy(slots + r * row + (size_t)L->attn_heads[i] * hd, a->katt + r * qrow + (size_t)i * hd,
                   (size_t)hd * sizeof(float));
        for (int j = 0; j < Hs; j++)
            memcpy(slots + r * row + (size_t)L->ssm_heads[j] * hd, a->ssm_out + r * srow + (size_t)j * hd,
                   (size_t)hd * sizeof(float));
    }
    if (m->hybrid && m->hybrid->adapter == RA_ADAPTER_STATIC && nq && Hs) {
        memset(a->attn_slot, 0, (size_t)H);
        for (int i = 0; i < nq; i++) a->attn_slot[L->attn_heads[i]] = 1;
        adapter_static_forward(a->slots, a->stats, slots, a->attn_slot, n, H, hd);
        slots = a->slots;
    }
    if (head_keep) /* ablated SSM slots */
        for (int b = 0; b < B; b++)
            for (int j = 0; j < Hs; j++)
                if (!slot_kept(s, head_keep, layer, b, L->ssm_heads[j]))
                    for (int t = 0; t < T; t++)
                        memset(slots + ((size_t)b * T + t) * row + (size_t)L->ssm_heads[j] * hd, 0,
                               (size_t)hd * sizeof(float));
    linear_forward(s->proj, slots, L->wo, L->bo, n, H * hd, D);
    residual_add(s->x, s->proj, (int64_t)n * D);
}

/* A view of the shared dm2 activations for this layer and batch. */
static dm2_acts dm2_view(const ra_hybrid_acts *a, const ra_layer *L, int B, int T) {
    dm2_acts v = *a->dm2;
    v.B = B;
    v.T = T;
    v.cfg = L->ssm_cfg;
    return v;
}

void hybrid_mixer_forward(ra_forward_state *s, int layer, int B, int T, const ra_forward_opts *o) {
    const ra_model *m = s->m;
    const hf_config *c = &m->cfg;
    const ra_layer *L = &m->layers[layer];
    ra_hybrid_acts *a = acts_get(s);
    int n = B * T, D = c->hidden_size, hd = c->head_dim, nq = L->n_attn_heads, nkv = kv_heads(m, L);
    rmsnorm_forward(s->xn, NULL, s->x, L->input_norm, n, D, (float)c->rms_norm_eps);
    if (nq) {
        linear_forward(a->q, s->xn, L->wq, L->bq, n, D, nq * hd);
        linear_forward(a->k, s->xn, L->wk, L->bk, n, D, nkv * hd);
        linear_forward(a->v, s->xn, L->wv, L->bv, n, D, nkv * hd);
        rope_forward(a->q, s->cos_t, s->sin_t, n, nq, hd);
        rope_forward(a->k, s->cos_t, s->sin_t, n, nkv, hd);
        if (s->capture) capture_kv(s->capture, layer, a->k, a->v, B, T, nkv, hd);
        attention_forward(a->katt, NULL, a->q, a->k, a->v, o->doc_start, B, T, nq, nkv, hd);
        for (int r = 0; r < o->n_probs; r++)
            if (o->probs_heads[r].layer == layer)
                for (int i = 0; i < nq; i++)
                    if (L->attn_heads[i] == o->probs_heads[r].head)
                        head_probs(s, a, nq, nkv, i, B, T, o->doc_start, o->probs_out + (size_t)r * B * T * T);
    }
    if (L->n_ssm_heads) {
        const uint8_t *starts = NULL;
        if (o->doc_start) {
            for (int i = 0; i < n; i++) a->starts[i] = o->doc_start[i] == i % T;
            starts = a->starts;
        }
        dm2_acts v = dm2_view(a, L, B, T);
        if (s->capture) dm2_prefill(a->ssm_out, &v, s->capture->layers[layer].ssm, &L->ssm, s->xn, starts);
        else dm2_forward(a->ssm_out, NULL, &v, &L->ssm, s->xn, starts);
    }
    mixer_output(s, layer, B, T, o->head_keep);
}

/* Softmax attention of one query over cache entries [lo, hi] of one K/V
 * head, out [hd]. */
static void attend_cached(float *out, float *sc, const float *q, const float *K, const float *V, int lo, int hi,
                          int hd) {
    float scale = (float)(1.0 / sqrt((double)hd)), mx = -INFINITY;
    for (int j = lo; j <= hi; j++) {
        float dot = 0;
        for (int p = 0; p < hd; p++) dot += q[p] * K[(size_t)j * hd + p];
        sc[j] = dot * scale;
        mx = sc[j] > mx ? sc[j] : mx;
    }
    double sum = 0;
    for (int j = lo; j <= hi; j++) sum += sc[j] = expf(sc[j] - mx);
    float inv = (float)(1.0 / sum);
    for (int p = 0; p < hd; p++) out[p] = 0;
    for (int j = lo; j <= hi; j++) {
        float w = sc[j] * inv;
        for (int p = 0; p < hd; p++) out[p] += w * V[(size_t)j * hd + p];
    }
}

void hybrid_mixer_step(ra_forward_state *s, ra_decode *d, int layer) {
    const ra_model *m = s->m;
    const hf_config *c = &m->cfg;
    const ra_layer *L = &m->layers[layer];
    ra_hybrid_acts *a = acts_get(s);
    ra_decode_layer *cache = &d->layers[layer];
    int B = d->B, t = d->len, D = c->hidden_size, hd = c->head_dim, nq = L->n_attn_heads, nkv = kv_heads(m, L);
    rmsnorm_forward(s->xn, NULL, s->x, L->input_norm, B, D, (float)c->rms_norm_eps);
    if (nq) {
        linear_forward(a->q, s->xn, L->wq, L->bq, B, D, nq * hd);
        linear_forward(a->k, s->xn, L->wk, L->bk, B, D, nkv * hd);
        linear_forward(a->v, s->xn, L->wv, L->bv, B, D, nkv * hd);
        rope_forward(a->q, s->cos_t, s->sin_t, B, nq, hd);
        rope_forward(a->k, s->cos_t, s->sin_t, B, nkv, hd);
        for (int b = 0; b < B; b++)
            for (int g = 0; g < nkv; g++) {
                size_t dst = (((size_t)b * nkv + g) * d->T_max + t) * hd, src = ((size_t)b * nkv + g) * hd;
                memcpy(cache->k + dst, a->k + src, (size_t)hd * sizeof(float));
                memcpy(cache->v + dst, a->v + src, (size_t)hd * sizeof(float));
            }
        int group = nq / nkv;
#pragma omp parallel for collapse(2) if ((int64_t)B * nq * t * hd >= 65536)
        for (int b = 0; b < B; b++)
            for (int i = 0; i < nq; i++) {
                size_t kv = ((size_t)b * nkv + i / group) * d->T_max * hd;
                attend_cached(a->katt + ((size_t)b * nq + i) * hd, d->scores + ((size_t)b * nq + i) * d->T_max,
                              a->q + ((size_t)b * nq + i) * hd, cache->k + kv, cache->v + kv, d->first[b], t, hd);
            }
    }
    if (L->n_ssm_heads) dm2_step(a->ssm_out, cache->ssm, &L->ssm, s->xn, NULL);
    mixer_output(s, layer, B, 1, NULL);
}
