/* The hybrid layer's mixer on the GPU (the twin of lib/forward_hybrid_cpu.c;
 * layouts in lib/hybrid.h):
 *
 *   xn  = RMSNorm(x)
 *   att = flash attention of the k kept heads (fused q/k/v GEMM, each head
 *         its own K/V, RoPE; ablated heads zeroed in the kernel)
 *   ssm = DiscreteMamba2 over xn (kernels/dm2_cuda.h; state and conv reset
 *         at document starts)
 *   routed:   x += o_proj(slots), slots = the scatter of att and the gated
 *             SSM outputs into their head slots (static adapter on the
 *             attention slots when both kinds exist)
 *   parallel: x += 0.5·(ssm + adapter(o_proj_kept(att)))   (k > 0)
 *             x += ssm                                        (k = 0)
 *
 * A teacher layer is the routed case with every slot attention and GQA K/V,
 * which decode's prefill runs through here to capture its KV cache.  Also
 * the upload of a hybrid student and the one-token decode step.
 *
 * Host code only (kernels in hybrid_ops.cu, dm2_*.cu and the ops of
 * ops_cuda.h), so tests/gpu/emulate.sh can compile it for the CPU. */
#include <stdlib.h>
#include <string.h>

#include "decode_cuda.h"
#include "forward_cuda_internal.h"
#include "hybrid_ops_cuda.h"
#include "ops_cuda.h"
#include "ssd_cuda.h"

extern "C" {
#include "hybrid.h"
#include "ops.h" /* rope_inv_freq */
}

/* ---- weights ----------------------------------------------------------------------- */

static uint16_t *hy_upload(cuda_alloc_ctx *a, const float *src, size_t n, const char *what) {
    uint16_t *p = (uint16_t *)cuda_alloc_in(a, n * 2, what);
    if (p) cuda_upload_bf16(p, src, n);
    return p;
}

static void upload_layer(cuda_model *cm, const ra_model *m, int l, cuda_alloc_ctx *a) {
    const hf_config *c = &m->cfg;
    const ra_layer *L = &m->layers[l];
    cuda_layer_weights *W = &cm->layers[l];
    cuda_hybrid_layer *Y = &cm->hybrid->layers[l];
    size_t D = c->hidden_size, I = c->intermediate_size, hd = c->head_dim, H = c->num_heads;
    int k = L->n_attn_heads, parallel = m->hybrid->layout == RA_LAYOUT_PARALLEL;
    size_t kd = (size_t)k * hd;
    W->input_norm = hy_upload(a, L->input_norm, D, "a layer norm");
    W->post_norm = hy_upload(a, L->post_norm, D, "a layer norm");
    W->w_gate_up = (uint16_t *)cuda_alloc_in(a, 2 * I * D * 2, "gate/up weights");
    if (W->w_gate_up) cuda_upload_bf16(W->w_gate_up, L->w_gate, I * D), cuda_upload_bf16(W->w_gate_up + I * D, L->w_up, I * D);
    W->w_down = hy_upload(a, L->w_down, D * I, "down_proj weights");
    W->attn_slot = (uint8_t *)xcalloc(H, 1);
    Y->k = k, Y->Hs = L->n_ssm_heads, Y->ssm_cfg = L->ssm_cfg;
    Y->attn_heads = (int *)xmalloc((size_t)(k ? k : 1) * sizeof(int));
    for (int i = 0; i < k; i++) Y->attn_heads[i] = L->attn_heads[i], W->attn_slot[L->attn_heads[i]] = 1;
    if (k) { /* q rows, then each kept head's own K rows, then V rows */
        W->wqkv = (uint16_t *)cuda_alloc_in(a, 3 * kd * D * 2, "q/k/v weights");
        if (W->wqkv) {
            cuda_upload_bf16(W->wqkv, L->wq, kd * D);
            cuda_upload_bf16(W->wqkv + kd * D, L->wk, kd * D);
            cuda_upload_bf16(W->wqkv + 2 * kd * D, L->wv, kd * D);
        }
        if (L->bq || L->bk || L->bv) {
            float *bias = (float *)xcalloc(3 * kd, sizeof(float));
            if (L->bq) memcpy(bias, L->bq, kd * sizeof(float));
            if (L->bk) memcpy(bias + kd, L->bk, kd * sizeof(float));
            if (L->bv) memcpy(bias + 2 * kd, L->bv, kd * sizeof(float));
            W->bqkv = hy_upload(a, bias, 3 * kd, "q/k/v biases");
            free(bias);
        }
    }
    if (!parallel || k) { /* routed: the teacher's o_proj; parallel: the kept heads' slice */
        size_t in = parallel ? kd : H * hd;
        W->wo = hy_upload(a, L->wo, D * in, "o_proj weights");
        if (L->bo) W->bo = hy_upload(a, L->bo, D, "o_proj bias");
    }
    if (parallel && k) {
        Y->adapter_w = hy_upload(a, L->adapter_w, D * D, "adapter weights");
        Y->adapter_b = hy_upload(a, L->adapter_b, D, "adapter bias");
    }
    if (!parallel) {
        int32_t *src = (int32_t *)xmalloc(H * sizeof(int32_t));
        for (int i = 0; i < k; i++) src[L->attn_heads[i]] = i;
        for (int j = 0; j < L->n_ssm_heads; j++) src[L->ssm_heads[j]] = -1 - j;
        Y->slot_src = (int32_t *)cuda_alloc_in(a, H * sizeof(int32_t), "slot map");
        if (Y->slot_src) cuda_upload(Y->slot_src, src, H * sizeof(int32_t));
        free(src);
    }
    if (L->n_ssm_heads && !a->rc) {
        cuda_dm2_params_upload(&Y->ssm, &L->ssm, &L->ssm_cfg);
        a->bytes += dm2_param_count(&L->ssm_cfg) * 2;
    }
}

extern "C" int cuda_hybrid_model_upload(const ra_model *m, cuda_model **out, ra_error *err) {
    *out = NULL;
    const hf_config *c = &m->cfg;
    size_t D = c->hidden_size, V = c->vocab_size, hd = c->head_dim;
    cuda_model *cm = (cuda_model *)xcalloc(1, sizeof *cm);
    cm->cfg = *c;
    cm->layers = (cuda_layer_weights *)xcalloc((size_t)c->num_layers, sizeof *cm->layers);
    cm->hybrid = (cuda_hybrid_weights *)xcalloc(1, sizeof *cm->hybrid);
    cm->hybrid->layout = m->hybrid->layout;
    cm->hybrid->adapter = m->hybrid->adapter;
    cm->hybrid->layers = (cuda_hybrid_layer *)xcalloc((size_t)c->num_layers, sizeof *cm->hybrid->layers);
    cuda_alloc_ctx a = {err, 0, 0};
    cm->embed = hy_upload(&a, m->embed, V * D, "the embedding");
    cm->final_norm = hy_upload(&a, m->final_norm, D, "model.norm");
    cm->lm_head = m->lm_head == m->embed ? cm->embed : hy_upload(&a, m->lm_head, V * D, "the LM head");
    cm->inv_freq = (float *)cuda_alloc_in(&a, hd / 2 * sizeof(float), "RoPE inv_freq");
    if (cm->inv_freq) {
        float *inv = (float *)xmalloc((hd / 2 + 1) * sizeof(float));
        rope_inv_freq(inv, (int)hd, c);
        cuda_upload(cm->inv_freq, inv, hd / 2 * sizeof(float));
        free(inv);
    }
    for (int l = 0; l < c->num_layers && !a.rc; l++) upload_layer(cm, m, l, &a);
    cm->weight_bytes = a.bytes;
    if (a.rc) {
        cuda_model_free(cm);
        return ra_error_prefix(err, "uploading %s to the GPU", m->source[0] ? m->source : "the model");
    }
    cuda_synchronize();
    *out = cm;
    return 0;
}

extern "C" void cuda_hybrid_weights_free(cuda_hybrid_weights *h, int layers) {
    if (!h) return;
    for (int l = 0; l < layers && h->layers; l++) {
        cuda_hybrid_layer *Y = &h->layers[l];
        free(Y->attn_heads);
        cuda_free(Y->slot_src), cuda_free(Y->adapter_w), cuda_free(Y->adapter_b);
        if (Y->ssm.in_proj_w) cuda_dm2_params_free(&Y->ssm);
    }
    free(h->layers);
    free(h);
}

/* ---- activations --------------------------------------------------------------------- */

struct cuda_hybrid_acts {
    uint16_t *qkv;      /* [n, (nq+2nkv)·hd] of the widest layer (may alias s->qkv) */
    uint16_t *katt;     /* [n, amax·hd] (may alias s->att) */
    uint16_t *ssm_out;  /* [n, max(Hs·hd, D)] */
    uint16_t *aproj, *adapted, *mixed; /* [n, D]: parallel layout */
    uint8_t *starts;    /* [n] */
    uint8_t *kmask;     /* [B_max, amax]: ablation of the kept heads */
    uint8_t *smask;     /* [B_max, H]: ablation of routed SSM slots */
    int32_t *probs_head; /* [1] */
    int own_qkv, own_katt;
    int has_dm2;
    cuda_dm2_acts dm2;  /* forward buffers only, sized for the largest SSM layer */
    uint8_t *h_kmask, *h_smask;
};

/* Attention heads of layer l: query heads and K/V heads. */
static void attn_shape(const cuda_model *m, int l, int *nq, int *nkv) {
    if (m->hybrid) *nq = *nkv = m->hybrid->layers[l].k;
    else *nq = m->cfg.num_heads, *nkv = m->cfg.num_kv_heads;
}

extern "C" void cuda_hybrid_acts_free(cuda_hybrid_acts *a) {
    if (!a) return;
    if (a->own_qkv) cuda_free(a->qkv);
    if (a->own_katt) cuda_free(a->katt);
    cuda_free(a->ssm_out), cuda_free(a->aproj), cuda_free(a->adapted), cuda_free(a->mixed), cuda_free(a->starts);
    cuda_free(a->kmask), cuda_free(a->smask), cuda_free(a->probs_head);
    if (a->has_dm2) {
        cuda_free(a->dm2.proj), cuda_free(a->dm2.x), cuda_free(a->dm2.Bm), cuda_free(a->dm2.Cm);
        cuda_free(a->dm2.a), cuda_free(a->dm2.y), cuda_free(a->dm2.yg), cuda_free(a->dm2.ws);
    }
    free(a->h_kmask), free(a->h_smask);
    free(a);
}

/* The DiscreteMamba2 forward buffers for n rows of the largest SSM layer:
 * every layer's buffers are prefixes of these (they grow with heads and
 * groups, and a call's rows are contiguous). */
static void dm2_acts_alloc(cuda_hybrid_acts *a, const cuda_forward_state *s, cuda_alloc_ctx *al) {
    const cuda_model *m = s->m;
    dm2_config big;
    memset(&big, 0, sizeof big);
    size_t ws = 0;
    for (int l = 0; l < m->cfg.num_layers; l++) {
        const cuda_hybrid_layer *Y = &m->hybrid->layers[l];
        if (!Y->Hs) continue;
        if (!big.n_heads) big = Y->ssm_cfg;
        if (Y->Hs > big.n_heads) big.n_heads = Y->Hs;
        if (Y->ssm_cfg.n_groups > big.n_groups) big.n_groups = Y->ssm_cfg.n_groups;
        ssd_dims dims = dm2_ssd_dims(&Y->ssm_cfg, s->B_max, s->T_max);
        int chunk = Y->ssm_cfg.chunk > 0 ? Y->ssm_cfg.chunk : SSD_DEFAULT_CHUNK;
        size_t b = cuda_ssd_chunked_workspace_bytes(&dims, chunk, 0);
        if (b > ws) ws = b;
    }
    if (!big.n_heads) return;
    size_t n = (size_t)s->B_max * s->T_max, ld = dm2_in_proj_ld(&big), inner = dm2_d_inner(&big);
    size_t gn = (size_t)big.n_groups * big.d_state;
    cuda_dm2_acts *d = &a->dm2;
    d->B = s->B_max, d->T = s->T_max, d->cfg = big;
    d->proj = (uint16_t *)cuda_alloc_in(al, n * ld * 2, "dm2 in_proj output");
    d->x = (uint16_t *)cuda_alloc_in(al, n * inner * 2, "dm2 conv x");
    d->Bm = (uint16_t *)cuda_alloc_in(al, n * gn * 2, "dm2 conv B");
    d->Cm = (uint16_t *)cuda_alloc_in(al, n * gn * 2, "dm2 conv C");
    d->a = (float *)cuda_alloc_in(al, n * big.n_heads * 4, "dm2 decays");
    d->y = (uint16_t *)cuda_alloc_in(al, n * inner * 2, "dm2 SSD output");
    d->yg = (uint16_t *)cuda_alloc_in(al, n * inner * 2, "dm2 gated output");
    d->ws = cuda_alloc_in(al, ws, "dm2 SSD workspace");
    a->has_dm2 = 1;
}

extern "C" int cuda_hybrid_acts_create(cuda_forward_state *s, int ssm_forward, ra_error *err) {
    const cuda_model *m = s->m;
    const hf_config *c = &m->cfg;
    size_t n = (size_t)s->B_max * s->T_max, D = c->hidden_size, hd = c->head_dim, H = c->num_heads;
    int amax = 0, wmax = 0, hs_max = 0;
    for (int l = 0; l < c->num_layers; l++) {
        int nq, nkv;
        attn_shape(m, l, &nq, &nkv);
        if (nq > amax) amax = nq;
        if (nq + 2 * nkv > wmax) wmax = nq + 2 * nkv;
        if (m->hybrid && m->hybrid->layers[l].Hs > hs_max) hs_max = m->hybrid->layers[l].Hs;
    }
    cuda_hybrid_acts *a = (cuda_hybrid_acts *)xcalloc(1, sizeof *a);
    cuda_alloc_ctx al = {err, 0, 0};
    if ((size_t)wmax <= H + 2 * (size_t)c->num_kv_heads) a->qkv = s->qkv;
    else a->qkv = (uint16_t *)cuda_alloc_in(&al, n * wmax * hd * 2, "kept heads' q/k/v"), a->own_qkv = 1;
    if (!m->hybrid) a->katt = s->att; /* a teacher's heads are its slots */
    else a->katt = (uint16_t *)cuda_alloc_in(&al, n * (amax ? amax : 1) * hd * 2, "kept heads' outputs"), a->own_katt = 1;
    if (m->hybrid) {
        size_t w = (size_t)hs_max * hd > D ? (size_t)hs_max * hd : D;
        a->ssm_out = (uint16_t *)cuda_alloc_in(&al, n * w * 2, "SSM outputs");
        if (m->hybrid->layout == RA_LAYOUT_PARALLEL) {
            a->aproj = (uint16_t *)cuda_alloc_in(&al, n * D * 2, "kept heads' o_proj outputs");
            a->adapted = (uint16_t *)cuda_alloc_in(&al, n * D * 2, "adapter activations");
            a->mixed = (uint16_t *)cuda_alloc_in(&al, n * D * 2, "adapter outputs");
        }
        a->starts = (uint8_t *)cuda_alloc_in(&al, n, "document starts");
        if (ssm_forward) dm2_acts_alloc(a, s, &al);
    }
    a->kmask = (uint8_t *)cuda_alloc_in(&al, (size_t)s->B_max * (amax ? amax : 1), "head masks");
    a->smask = (uint8_t *)cuda_alloc_in(&al, (size_t)s->B_max * H, "head masks");
    a->probs_head = (int32_t *)cuda_alloc_in(&al, sizeof(int32_t), "a probability request");
    a->h_kmask = (uint8_t *)xmalloc((size_t)s->B_max * (amax ? amax : 1));
    a->h_smask = (uint8_t *)xmalloc((size_t)s->B_max * H);
    s->hy = a;
    s->bytes += al.bytes;
    return al.rc;
}

extern "C" int cuda_hybrid_check_opts(const cuda_forward_state *s, const ra_forward_opts *o, ra_error *err) {
    for (int r = 0; r < o->n_probs; r++) {
        ra_head_ref h = o->probs_heads[r];
        const cuda_layer_weights *W = &s->m->layers[h.layer];
        if (!W->attn_slot[h.head])
            return ra_fail(err, EX_USAGE, "forward: probabilities of layer %d head %d: an SSM head of this hybrid has "
                           "no attention probabilities", h.layer, h.head);
    }
    return 0;
}

/* ---- the mixer ---------------------------------------------------------------------------- */

/* Upload this layer's ablation masks; 1 if any kept head is dropped (the
 * SSM mask is uploaded when routed SSM slots are dropped, *ssm_masked). */
static int upload_masks(cuda_forward_state *s, int l, int B, const uint8_t *head_keep, int *ssm_masked) {
    const hf_config *c = &s->m->cfg;
    cuda_hybrid_acts *a = s->hy;
    int H = c->num_heads, nq, nkv, kd = 0, sd = 0;
    attn_shape(s->m, l, &nq, &nkv);
    const int *heads = s->m->hybrid ? s->m->hybrid->layers[l].attn_heads : NULL;
    for (int b = 0; b < B; b++) {
        const uint8_t *keep = head_keep + ((size_t)b * c->num_layers + l) * H;
        for (int i = 0; i < nq; i++) kd |= !(a->h_kmask[b * nq + i] = keep[heads ? heads[i] : i] != 0);
        for (int h = 0; h < H; h++) {
            a->h_smask[b * H + h] = keep[h] != 0;
            sd |= !keep[h] && !s->m->layers[l].attn_slot[h];
        }
    }
    if (kd) cuda_upload(a->kmask, a->h_kmask, (size_t)B * nq);
    if (sd) cuda_upload(a->smask, a->h_smask, (size_t)B * H);
    *ssm_masked = sd;
    return kd;
}

/* Combine the attention heads' outputs (katt) and the SSM's (a->ssm_out)
 * per layout, project, add to s->x. */
static void mixer_output(cuda_forward_state *s, int l, int B, int T, const uint8_t *ssm_keep) {
    const cuda_model *m = s->m;
    const hf_config *c = &m->cfg;
    const cuda_layer_weights *W = &m->layers[l];
    cuda_hybrid_acts *a = s->hy;
    int n = B * T, D = c->hidden_size, H = c->num_heads, hd = c->head_dim;
    if (!m->hybrid) {
        cuda_linear_residual_forward(s->x, a->katt, W->wo, W->bo, n, H * hd, D);
        return;
    }
    const cuda_hybrid_layer *Y = &m->hybrid->layers[l];
    if (m->hybrid->layout == RA_LAYOUT_PARALLEL) {
        if (!Y->k) {
            cuda_residual_add(s->x, a->ssm_out, (int64_t)n * D);
            return;
        }
        cuda_linear_forward(a->aproj, a->katt, W->wo, W->bo, n, Y->k * hd, D);
        cuda_hybrid_standardize(a->adapted, a->aproj, a->ssm_out, n, D);
        cuda_linear_forward(a->mixed, a->adapted, Y->adapter_w, Y->adapter_b, n, D, D);
        cuda_hybrid_mix_residual(s->x, a->ssm_out, a->mixed, (int64_t)n * D);
        return;
    }
    cuda_hybrid_slots(s->att, a->katt, a->ssm_out, Y->slot_src, m->hybrid->adapter == RA_ADAPTER_STATIC, ssm_keep, n,
                      T, H, Y->k, Y->Hs, hd);
    cuda_linear_residual_forward(s->x, s->att, W->wo, W->bo, n, H * hd, D);
}

/* q/k/v of the layer's attention heads with RoPE; returns the row width. */
static int project_qkv(cuda_forward_state *s, int l, int n, int nq, int nkv) {
    const hf_config *c = &s->m->cfg;
    const cuda_layer_weights *W = &s->m->layers[l];
    int w = (nq + 2 * nkv) * c->head_dim;
    cuda_linear_forward(s->hy->qkv, s->xn, W->wqkv, W->bqkv, n, c->hidden_size, w);
    cuda_rope_forward_strided(s->hy->qkv, w, s->cos_t, s->sin_t, n, nq + nkv, c->head_dim);
    return w;
}

extern "C" void cuda_hybrid_mixer_forward(cuda_forward_state *s, int l, int B, int T, const ra_forward_opts *o,
                                          const int32_t *doc_start) {
    const cuda_model *m = s->m;
    const hf_config *c = &m->cfg;
    const cuda_layer_weights *W = &m->layers[l];
    cuda_hybrid_acts *a = s->hy;
    int n = B * T, D = c->hidden_size, hd = c->head_dim, nq, nkv, ssm_masked = 0, k_masked = 0;
    attn_shape(m, l, &nq, &nkv);
    const cuda_hybrid_layer *Y = m->hybrid ? &m->hybrid->layers[l] : NULL;
    if (o->head_keep) k_masked = upload_masks(s, l, B, o->head_keep, &ssm_masked);
    cuda_rmsnorm_forward(s->xn, NULL, s->x, W->input_norm, n, D, (float)c->rms_norm_eps);
    if (nq) {
        int w = project_qkv(s, l, n, nq, nkv);
        if (s->capture) {
            cuda_decode_layer *cl = &s->capture->layers[l];
            cuda_kv_cache_write(cl->k, cl->v, a->qkv, w, (int64_t)nq * hd, (int64_t)(nq + nkv) * hd, B, T, nkv, hd,
                                s->capture->T_max, s->capture_row0, 0);
        }
        cuda_attention_args at;
        memset(&at, 0, sizeof at);
        at.out = a->katt, at.out_stride = (int64_t)nq * hd;
        at.q = a->qkv, at.q_stride = w;
        at.k = a->qkv + (size_t)nq * hd, at.v = a->qkv + (size_t)(nq + nkv) * hd, at.kv_stride = w;
        at.doc_start = doc_start, at.head_keep = k_masked ? a->kmask : NULL;
        at.B = B, at.T = T, at.H = nq, at.Hkv = nkv, at.hd = hd;
        cuda_attention_forward_ex(&at);
        /* probabilities the caller asked for, before any ablation (as the CPU) */
        for (int r = 0; r < o->n_probs; r++) {
            if (o->probs_heads[r].layer != l) continue;
            int32_t i = o->probs_heads[r].head;
            if (Y)
                for (int j = 0; j < Y->k; j++)
                    if (Y->attn_heads[j] == o->probs_heads[r].head) i = j;
            cuda_upload(a->probs_head, &i, sizeof i);
            cuda_attention_args p = at;
            p.out = NULL, p.head_keep = NULL;
            p.probs = s->probs, p.probs_heads = a->probs_head, p.n_probs_heads = 1;
            cuda_attention_forward_ex(&p);
            cuda_download(o->probs_out + (size_t)r * B * T * T, s->probs, (size_t)B * T * T * sizeof(float));
        }
    }
    if (Y && Y->Hs) {
        const uint8_t *starts = NULL;
        if (doc_start) {
            cuda_hybrid_starts(a->starts, doc_start, n, T);
            starts = a->starts;
        }
        cuda_dm2_acts v = a->dm2;
        v.B = B, v.T = T, v.cfg = Y->ssm_cfg;
        if (s->capture) {
            cuda_dm2_cache cv = s->capture->layers[l].ssm; /* this group's rows of the cache */
            size_t per_ssm = (size_t)Y->Hs * Y->ssm_cfg.head_dim * Y->ssm_cfg.d_state;
            cv.ssm += (size_t)s->capture_row0 * per_ssm;
            cv.conv += (size_t)s->capture_row0 * dm2_conv_dim(&Y->ssm_cfg) * DM2_CONV_K;
            cv.B = B;
            cuda_dm2_prefill(a->ssm_out, &v, &cv, &Y->ssm, s->xn, starts);
        } else {
            cuda_dm2_forward(a->ssm_out, NULL, &v, &Y->ssm, s->xn, starts);
        }
    }
    mixer_output(s, l, B, T, ssm_masked ? a->smask : NULL);
}

/* ---- one decode step ------------------------------------------------------------------------ */

extern "C" void cuda_hybrid_mixer_step(cuda_forward_state *s, cuda_decode *d, int l) {
    const cuda_model *m = s->m;
    const hf_config *c = &m->cfg;
    const cuda_layer_weights *W = &m->layers[l];
    cuda_hybrid_acts *a = s->hy;
    cuda_decode_layer *cl = &d->layers[l];
    int B = d->B, D = c->hidden_size, hd = c->head_dim, nq, nkv;
    attn_shape(m, l, &nq, &nkv);
    cuda_rmsnorm_forward(s->xn, NULL, s->x, W->input_norm, B, D, (float)c->rms_norm_eps);
    if (nq) {
        int w = project_qkv(s, l, B, nq, nkv);
        cuda_kv_cache_write(cl->k, cl->v, a->qkv, w, (int64_t)nq * hd, (int64_t)(nq + nkv) * hd, B, 1, nkv, hd,
                            d->T_max, 0, d->len);
        cuda_decode_attention(a->katt, a->qkv, w, cl->k, cl->v, d->d_first, d->len, B, nq, nkv, hd, d->T_max);
    }
    if (cl->has_ssm) cuda_dm2_step(a->ssm_out, &cl->ssm, &m->hybrid->layers[l].ssm, s->xn, NULL);
    mixer_output(s, l, B, 1, NULL);
}
