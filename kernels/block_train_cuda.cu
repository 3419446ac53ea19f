/* One decoder block's training forward and backward on the GPU
 * (kernels/block_train_cuda.h).  Host code, plus the routed layout's slot
 * gather (the backward of cuda_hybrid_slots' scatter). */
#include <stdlib.h>
#include <string.h>

#include "block_train_cuda.h"
#include "cuda_common.cuh"
#include "hybrid_ops_cuda.h"
#include "ops_backward_cuda.h"
#include "ops_cuda.h"
#include "ssd_cuda.h"
#include "train_profile.h"

extern "C" {
#include "hybrid.h"
}

/* ---- shapes ---------------------------------------------------------------------------- */

typedef struct lshape {
    int nq, nkv, w;      /* attention query / KV heads, q/k/v row width */
    int Hs, hybrid, parallel, static_ad, adapter_lin;
    int ssm_w;           /* SSM output width */
} lshape;

static lshape shape_of(const cuda_model *cm, int l) {
    const hf_config *c = &cm->cfg;
    lshape s;
    memset(&s, 0, sizeof s);
    int hd = c->head_dim;
    if (!cm->hybrid) {
        s.nq = c->num_heads, s.nkv = c->num_kv_heads;
    } else {
        const cuda_hybrid_layer *Y = &cm->hybrid->layers[l];
        s.hybrid = 1;
        s.nq = s.nkv = Y->k, s.Hs = Y->Hs;
        s.parallel = cm->hybrid->layout == RA_LAYOUT_PARALLEL;
        s.static_ad = !s.parallel && cm->hybrid->adapter == RA_ADAPTER_STATIC && Y->k && Y->Hs;
        s.adapter_lin = s.parallel && Y->k;
        s.ssm_w = s.parallel ? c->hidden_size : Y->Hs * hd;
    }
    s.w = (s.nq + 2 * s.nkv) * hd;
    return s;
}

/* The largest of every size over layers l0..l1−1. */
typedef struct set_dims {
    size_t w, katt, ssm_w, slots, slots2, stats, aprojs;
    int any_ssm;
    dm2_config big;
} set_dims;

static set_dims dims_of(const cuda_model *cm, int l0, int l1) {
    const hf_config *c = &cm->cfg;
    set_dims d;
    memset(&d, 0, sizeof d);
    size_t hd = c->head_dim, H = c->num_heads;
    for (int l = l0; l < l1; l++) {
        lshape s = shape_of(cm, l);
        if ((size_t)s.w > d.w) d.w = s.w;
        if ((size_t)s.nq * hd > d.katt) d.katt = (size_t)s.nq * hd;
        if ((size_t)s.ssm_w > d.ssm_w) d.ssm_w = s.ssm_w;
        if (s.hybrid && !s.parallel) d.slots = H * hd;
        if (s.static_ad) d.slots2 = H * hd;
        if (s.static_ad || s.adapter_lin) d.stats = 4;
        if (s.adapter_lin) d.aprojs = c->hidden_size;
        if (s.Hs) {
            const dm2_config *y = &cm->hybrid->layers[l].ssm_cfg;
            if (!d.any_ssm) d.big = *y;
            d.any_ssm = 1;
            if (y->n_heads > d.big.n_heads) d.big.n_heads = y->n_heads;
            if (y->n_groups > d.big.n_groups) d.big.n_groups = y->n_groups;
        }
    }
    return d;
}

/* ---- buffers ----------------------------------------------------------------------------- */

typedef struct block_acts {
    uint16_t *xn1, *qkv, *katt, *ssm_out, *slots, *slots2, *aproj, *adapted, *h, *hn, *gu, *act;
    float *rstd1, *rstd2, *stats;
    cuda_dm2_acts *dm2;
} block_acts;

/* CUDA_BLOCKS_SELECTIVE: what one layer keeps from its forward (device):
 * the attention's q/k/v after RoPE and its output, the SSD core's output y
 * and its chunk states (the forward part of the SSD workspace, which the
 * backward reuses; ws_bytes of it). */
typedef struct layer_keep {
    uint16_t *qkv, *katt, *y;
    void *ws;
    size_t ws_bytes;
} layer_keep;

struct cuda_blocks {
    const cuda_model *cm;
    int B, T, n, L, recompute; /* CUDA_BLOCKS_* */
    block_acts *acts; /* [recompute ? 1 : L] */
    layer_keep *keep; /* [L] when selective */
    uint8_t **attn_slot; /* [L]: device [H] for static-adapter layers */
    /* backward workspace, shared by the layers */
    uint16_t *tmp, *dxn, *dqkv, *dkatt, *dssm, *dslots, *dslots2, *daproj, *mix, *dact, *dgu;
    cuda_alloc_ctx ac;
};

static void *balloc(cuda_blocks *b, size_t bytes, const char *what) {
    return bytes ? cuda_alloc_in(&b->ac, bytes, what) : NULL;
}

static int alloc_set(cuda_blocks *b, block_acts *a, int l0, int l1, ra_error *err) {
    const hf_config *c = &b->cm->cfg;
    size_t n = (size_t)b->n, D = c->hidden_size, I = c->intermediate_size;
    set_dims d = dims_of(b->cm, l0, l1);
    a->xn1 = (uint16_t *)balloc(b, n * D * 2, "saved normed inputs");
    a->rstd1 = (float *)balloc(b, n * 4, "saved RMSNorm statistics");
    a->qkv = (uint16_t *)balloc(b, n * d.w * 2, "saved q/k/v");
    a->katt = (uint16_t *)balloc(b, n * d.katt * 2, "saved attention outputs");
    a->ssm_out = (uint16_t *)balloc(b, n * d.ssm_w * 2, "saved SSM outputs");
    a->slots = (uint16_t *)balloc(b, n * d.slots * 2, "saved o_proj inputs");
    a->slots2 = (uint16_t *)balloc(b, n * d.slots2 * 2, "saved adapted o_proj inputs");
    a->stats = (float *)balloc(b, n * d.stats * 4, "saved adapter statistics");
    a->aproj = (uint16_t *)balloc(b, n * d.aprojs * 2, "saved kept-head projections");
    a->adapted = (uint16_t *)balloc(b, n * d.aprojs * 2, "saved adapter activations");
    a->h = (uint16_t *)balloc(b, n * D * 2, "saved mid-layer residuals");
    a->hn = (uint16_t *)balloc(b, n * D * 2, "saved normed mid-layer residuals");
    a->rstd2 = (float *)balloc(b, n * 4, "saved RMSNorm statistics");
    a->gu = (uint16_t *)balloc(b, n * 2 * I * 2, "saved gate/up activations");
    a->act = (uint16_t *)balloc(b, n * I * 2, "saved SwiGLU outputs");
    if (b->ac.rc) return b->ac.rc;
    if (d.any_ssm) {
        a->dm2 = cuda_dm2_acts_alloc(b->B, b->T, &d.big, err);
        if (!a->dm2) return err->code ? err->code : EX_SOFTWARE;
    }
    return 0;
}

static void free_set(block_acts *a) {
    void *p[] = {a->xn1, a->qkv, a->katt, a->ssm_out, a->slots, a->slots2, a->aproj, a->adapted, a->h, a->hn,
                 a->gu, a->act, a->rstd1, a->rstd2, a->stats};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) cuda_free(p[i]);
    cuda_dm2_acts_free(a->dm2);
}

extern "C" void cuda_blocks_free(cuda_blocks *b) {
    if (!b) return;
    cuda_synchronize();
    if (b->acts)
        for (int i = 0; i < (b->recompute ? 1 : b->L); i++) free_set(&b->acts[i]);
    if (b->attn_slot)
        for (int l = 0; l < b->L; l++) cuda_free(b->attn_slot[l]);
    if (b->keep)
        for (int l = 0; l < b->L; l++) cuda_free(b->keep[l].qkv), cuda_free(b->keep[l].katt), cuda_free(b->keep[l].y),
                                       cuda_free(b->keep[l].ws);
    void *p[] = {b->tmp, b->dxn, b->dqkv, b->dkatt, b->dssm, b->dslots, b->dslots2, b->daproj, b->mix, b->dact, b->dgu};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) cuda_free(p[i]);
    free(b->acts), free(b->attn_slot), free(b->keep);
    free(b);
}

extern "C" size_t cuda_blocks_layer_bytes(const cuda_model *cm, int B, int T) {
    const hf_config *c = &cm->cfg;
    size_t n = (size_t)B * T, D = c->hidden_size, I = c->intermediate_size;
    set_dims d = dims_of(cm, 0, c->num_layers);
    size_t bytes = n * (D * 2 * 3 + 8 + d.w * 2 + d.katt * 2 + d.ssm_w * 2 + d.slots * 2 + d.slots2 * 2 + d.stats * 4 +
                        d.aprojs * 4 + 2 * I * 2 + I * 2);
    if (d.any_ssm) { /* dm2 saved + backward buffers, roughly: in_proj output and 3 inner-wide, twice */
        size_t ld = dm2_in_proj_ld(&d.big), inner = dm2_d_inner(&d.big);
        bytes += 2 * n * (ld + 3 * inner) * 2;
    }
    return bytes;
}

extern "C" void cuda_blocks_scratch_shape(const cuda_model *cm, int *colsum_width, int *kv_heads_max, int *adapter_D) {
    const hf_config *c = &cm->cfg;
    int w = c->hidden_size, kv = 0, ad = 0;
    for (int l = 0; l < c->num_layers; l++) {
        lshape s = shape_of(cm, l);
        if (s.w > w) w = s.w;
        if (s.nkv > kv) kv = s.nkv;
        if (s.adapter_lin) ad = c->hidden_size;
    }
    *colsum_width = w, *kv_heads_max = kv, *adapter_D = ad;
}

static size_t layer_keep_ws_bytes(const cuda_model *cm, int l, int B, int T) {
    const dm2_config *y = &cm->hybrid->layers[l].ssm_cfg;
    ssd_dims d = dm2_ssd_dims(y, B, T);
    return cuda_ssd_chunked_workspace_bytes(&d, y->chunk > 0 ? y->chunk : SSD_DEFAULT_CHUNK, 0);
}

static int alloc_keep(cuda_blocks *b) {
    const cuda_model *cm = b->cm;
    size_t n = (size_t)b->n, hd = cm->cfg.head_dim;
    b->keep = (layer_keep *)xcalloc((size_t)b->L, sizeof *b->keep);
    for (int l = 0; l < b->L && !b->ac.rc; l++) {
        lshape s = shape_of(cm, l);
        layer_keep *k = &b->keep[l];
        if (s.nq) {
            k->qkv = (uint16_t *)balloc(b, n * s.w * 2, "kept q/k/v (per layer)");
            k->katt = (uint16_t *)balloc(b, n * s.nq * hd * 2, "kept attention outputs (per layer)");
        }
        if (s.Hs) {
            const dm2_config *y = &cm->hybrid->layers[l].ssm_cfg;
            k->y = (uint16_t *)balloc(b, n * dm2_d_inner(y) * 2, "kept SSD outputs (per layer)");
            k->ws_bytes = layer_keep_ws_bytes(cm, l, b->B, b->T);
            k->ws = balloc(b, k->ws_bytes, "kept SSD chunk states (per layer)");
        }
    }
    return b->ac.rc;
}

extern "C" int cuda_blocks_create(cuda_blocks **out, const cuda_model *cm, int B, int T, int recompute,
                                  ra_error *err) {
    *out = NULL;
    const hf_config *c = &cm->cfg;
    cuda_blocks *b = (cuda_blocks *)xcalloc(1, sizeof *b);
    b->cm = cm, b->B = B, b->T = T, b->n = B * T, b->L = c->num_layers, b->recompute = recompute;
    b->ac.err = err;
    int sets = recompute ? 1 : b->L, rc = 0;
    b->acts = (block_acts *)xcalloc((size_t)sets, sizeof *b->acts);
    for (int i = 0; i < sets && !rc; i++) rc = alloc_set(b, &b->acts[i], recompute ? 0 : i, recompute ? b->L : i + 1, err);
    size_t n = (size_t)b->n, D = c->hidden_size, I = c->intermediate_size, H = c->num_heads;
    set_dims d = dims_of(cm, 0, b->L);
    if (!rc) {
        b->tmp = (uint16_t *)balloc(b, n * D * 2, "backward workspace");
        b->dxn = (uint16_t *)balloc(b, n * D * 2, "backward workspace");
        b->dqkv = (uint16_t *)balloc(b, n * d.w * 2, "the q/k/v gradient");
        b->dkatt = (uint16_t *)balloc(b, n * d.katt * 2, "the attention-output gradient");
        b->dssm = (uint16_t *)balloc(b, n * d.ssm_w * 2, "the SSM-output gradient");
        b->dslots = (uint16_t *)balloc(b, n * d.slots * 2, "the o_proj-input gradient");
        b->dslots2 = (uint16_t *)balloc(b, n * d.slots * 2, "the o_proj-input gradient");
        b->daproj = (uint16_t *)balloc(b, n * d.aprojs * 2, "the kept-head projection gradient");
        b->mix = (uint16_t *)balloc(b, n * d.aprojs * 2, "adapter outputs");
        b->dact = (uint16_t *)balloc(b, n * I * 2, "the SwiGLU gradient");
        b->dgu = (uint16_t *)balloc(b, n * 2 * I * 2, "the gate/up gradient");
        rc = b->ac.rc;
    }
    if (!rc && recompute == CUDA_BLOCKS_SELECTIVE) rc = alloc_keep(b);
    b->attn_slot = (uint8_t **)xcalloc((size_t)b->L, sizeof *b->attn_slot);
    for (int l = 0; l < b->L && !rc; l++) {
        if (!shape_of(cm, l).static_ad) continue;
        b->attn_slot[l] = (uint8_t *)balloc(b, H, "attention slot flags");
        if ((rc = b->ac.rc)) break;
        cuda_upload(b->attn_slot[l], cm->layers[l].attn_slot, H);
    }
    if (rc) {
        cuda_blocks_free(b);
        return rc;
    }
    *out = b;
    return 0;
}

/* ---- gradients ----------------------------------------------------------------------------- */

extern "C" int cuda_block_grads_alloc_fused(cuda_block_grads *g, const cuda_model *cm, int l, int want_qkv,
                                            int want_gate_up, cuda_alloc_ctx *a) {
    const hf_config *c = &cm->cfg;
    lshape s = shape_of(cm, l);
    size_t D = c->hidden_size, I = c->intermediate_size;
    const cuda_layer_weights *W = &cm->layers[l];
    if (s.w && want_qkv) g->wqkv = (float *)cuda_alloc_in(a, (size_t)s.w * D * 4, "fused q/k/v gradients");
    if (s.w && want_qkv && W->bqkv) g->bqkv = (float *)cuda_alloc_in(a, (size_t)s.w * 4, "fused q/k/v bias gradients");
    if (want_gate_up) g->w_gate_up = (float *)cuda_alloc_in(a, 2 * I * D * 4, "fused gate/up gradients");
    if (s.Hs) {
        const dm2_config *y = &cm->hybrid->layers[l].ssm_cfg;
        size_t cnt = dm2_param_count(y), inner = dm2_d_inner(y), conv = dm2_conv_dim(y);
        float *m = (float *)cuda_alloc_in(a, cnt * 4, "SSM gradients");
        g->ssm.memory = m;
        if (m) {
            g->ssm.in_proj_w = m, m += (size_t)dm2_in_proj_dim(y) * y->d_model;
            g->ssm.conv_w = m, m += conv * DM2_CONV_K;
            g->ssm.conv_b = m, m += conv;
            g->ssm.D = m, m += y->n_heads;
            g->ssm.z_bias = m, m += inner;
            g->ssm.out_proj_w = y->has_out_proj ? m : NULL;
        }
    }
    if (!a->rc) cuda_block_grads_zero_fused(g, cm, l);
    return a->rc;
}

extern "C" void cuda_block_grads_free_fused(cuda_block_grads *g) {
    cuda_free(g->wqkv), cuda_free(g->bqkv), cuda_free(g->w_gate_up), cuda_free(g->ssm.memory);
    g->wqkv = g->bqkv = g->w_gate_up = NULL;
    memset(&g->ssm, 0, sizeof g->ssm);
}

extern "C" void cuda_block_grads_zero_fused(cuda_block_grads *g, const cuda_model *cm, int l) {
    const hf_config *c = &cm->cfg;
    lshape s = shape_of(cm, l);
    size_t D = c->hidden_size, I = c->intermediate_size;
    if (g->wqkv) cuda_memset(g->wqkv, 0, (size_t)s.w * D * 4);
    if (g->bqkv) cuda_memset(g->bqkv, 0, (size_t)s.w * 4);
    if (g->w_gate_up) cuda_memset(g->w_gate_up, 0, 2 * I * D * 4);
    if (g->ssm.memory) cuda_memset(g->ssm.memory, 0, dm2_param_count(&cm->hybrid->layers[l].ssm_cfg) * 4);
}

/* ---- the slot gather --------------------------------------------------------------------- */

/* dslots [n, H·hd] → dkatt [n, k·hd] (slot_src ≥ 0) and dssm [n, Hs·hd]:
 * one block per token, 8 elements per 16-byte access when vec (hd % 8 == 0,
 * aligned bases; one thread per element with 64-bit divisions had run at an
 * eighth of the bandwidth). */
__global__ void slots_gather_kernel(bf16 *dkatt, bf16 *dssm, const bf16 *dslots, const int32_t *slot_src, int H, int k,
                                    int Hs, int hd, bool vec) {
    const int64_t r = blockIdx.x;
    const int W = H * hd, step = vec ? 8 : 1;
    const bf16 *row = dslots + r * W;
    for (int e = threadIdx.x * step; e < W; e += blockDim.x * step) {
        int h = e / hd, p = e - h * hd, src = slot_src[h];
        bf16 *dst = src >= 0 ? dkatt + (r * k + src) * hd + p : dssm + (r * Hs + (-1 - src)) * hd + p;
        if (vec) *reinterpret_cast<uint4 *>(dst) = *reinterpret_cast<const uint4 *>(row + e);
        else *dst = row[e];
    }
}

static void slots_gather(uint16_t *dkatt, uint16_t *dssm, const uint16_t *dslots, const int32_t *slot_src, int n,
                         int H, int k, int Hs, int hd) {
    if ((int64_t)n * H * hd <= 0) return;
    bool vec = hd % 8 == 0 && ra_aligned16(dslots) && (!k || ra_aligned16(dkatt)) && (!Hs || ra_aligned16(dssm));
    slots_gather_kernel<<<n, 256, 0, ra_cuda_stream>>>((bf16 *)dkatt, (bf16 *)dssm, (const bf16 *)dslots, slot_src, H,
                                                       k, Hs, hd, vec);
    CUDA_CHECK_LAST();
}

/* ---- forward ----------------------------------------------------------------------------- */

/* The activations layer l reads and writes: its own set, or the one shared
 * set with, in selective mode, the layer's kept tensors in place of the
 * shared ones. */
static block_acts acts_of(cuda_blocks *b, int l) {
    block_acts a = b->acts[b->recompute ? 0 : l];
    if (b->keep && b->keep[l].qkv) a.qkv = b->keep[l].qkv, a.katt = b->keep[l].katt;
    return a;
}

static cuda_dm2_acts dm2_view(const block_acts *a, const cuda_blocks *b, int l, const cuda_block_batch *bt) {
    cuda_dm2_acts v = *a->dm2;
    v.B = bt->B, v.T = bt->T, v.cfg = b->cm->hybrid->layers[l].ssm_cfg;
    if (b->keep && b->keep[l].y) v.y = b->keep[l].y, v.ws = b->keep[l].ws;
    return v;
}

/* again = 1: the selective recomputation before layer l's backward: the
 * kept attention and SSD-core outputs are used as they are, and the
 * layer's output (already the next layer's input) is not made again. */
static void block_forward(cuda_blocks *b, int l, uint16_t *out, const uint16_t *x, const cuda_block_batch *bt,
                          int again) {
    const cuda_model *cm = b->cm;
    const hf_config *c = &cm->cfg;
    const cuda_layer_weights *W = &cm->layers[l];
    const cuda_hybrid_layer *Y = cm->hybrid ? &cm->hybrid->layers[l] : NULL;
    block_acts A = acts_of(b, l), *a = &A;
    lshape s = shape_of(cm, l);
    int n = bt->B * bt->T, D = c->hidden_size, I = c->intermediate_size, H = c->num_heads, hd = c->head_dim;
    float eps = (float)c->rms_norm_eps;
    cuda_rmsnorm_forward(a->xn1, a->rstd1, x, W->input_norm, n, D, eps);
    train_prof_mark(again ? "recompute: rmsnorm" : "fwd: rmsnorm");
    if (s.nq && !again) {
        cuda_linear_forward(a->qkv, a->xn1, W->wqkv, W->bqkv, n, D, s.w);
        train_prof_mark("fwd: q/k/v gemm");
        cuda_rope_forward_strided(a->qkv, s.w, bt->cos_t, bt->sin_t, n, s.nq + s.nkv, hd);
        train_prof_mark("fwd: rope");
        cuda_attention_args at;
        memset(&at, 0, sizeof at);
        at.out = a->katt, at.out_stride = (int64_t)s.nq * hd;
        at.q = a->qkv, at.q_stride = s.w;
        at.k = a->qkv + (size_t)s.nq * hd, at.v = a->qkv + (size_t)(s.nq + s.nkv) * hd, at.kv_stride = s.w;
        at.doc_start = bt->doc_start;
        at.B = bt->B, at.T = bt->T, at.H = s.nq, at.Hkv = s.nkv, at.hd = hd;
        cuda_attention_forward_ex(&at);
        train_prof_mark("fwd: attention");
    }
    if (s.Hs) {
        cuda_dm2_acts v = dm2_view(a, b, l, bt);
        if (again) {
            cuda_dm2_forward_around_ssd(a->ssm_out, &v, &Y->ssm, a->xn1, bt->starts);
            train_prof_mark("recompute: dm2 (all but the SSD core)");
        } else {
            cuda_dm2_forward(a->ssm_out, NULL, &v, &Y->ssm, a->xn1, bt->starts);
            train_prof_mark("fwd: dm2 mixer");
        }
    }
    cuda_copy(a->h, x, (size_t)n * D * 2);
    if (!s.hybrid) {
        cuda_linear_residual_forward(a->h, a->katt, W->wo, W->bo, n, H * hd, D);
    } else if (s.parallel) {
        if (s.adapter_lin) {
            cuda_linear_forward(a->aproj, a->katt, W->wo, W->bo, n, s.nq * hd, D);
            cuda_adapter_linear_forward(b->mix, a->adapted, a->stats, a->ssm_out, a->aproj, Y->adapter_w,
                                        Y->adapter_b, n, D);
            cuda_residual_add(a->h, b->mix, (int64_t)n * D);
        } else {
            cuda_residual_add(a->h, a->ssm_out, (int64_t)n * D);
        }
    } else {
        cuda_hybrid_slots(a->slots, a->katt, a->ssm_out, Y->slot_src, 0, NULL, n, bt->T, H, Y->k, Y->Hs, hd);
        const uint16_t *src = a->slots;
        if (s.static_ad) {
            cuda_adapter_static_forward(a->slots2, a->stats, a->slots, b->attn_slot[l], n, H, hd);
            src = a->slots2;
        }
        cuda_linear_residual_forward(a->h, src, W->wo, W->bo, n, H * hd, D);
    }
    train_prof_mark(again ? "recompute: slots, adapter, o_proj gemm" : "fwd: slots, adapter, o_proj gemm");
    cuda_rmsnorm_forward(a->hn, a->rstd2, a->h, W->post_norm, n, D, eps);
    cuda_linear_forward(a->gu, a->hn, W->w_gate_up, NULL, n, D, 2 * I);
    train_prof_mark(again ? "recompute: rmsnorm, gate/up gemm" : "fwd: rmsnorm, gate/up gemm");
    cuda_swiglu_fused_forward(a->act, a->gu, n, I);
    train_prof_mark(again ? "recompute: swiglu" : "fwd: swiglu");
    if (again) return;
    cuda_copy(out, a->h, (size_t)n * D * 2);
    cuda_linear_residual_forward(out, a->act, W->w_down, NULL, n, I, D);
    train_prof_mark("fwd: down gemm");
}

extern "C" void cuda_block_forward(cuda_blocks *b, int l, uint16_t *out, const uint16_t *x,
                                   const cuda_block_batch *bt) {
    block_forward(b, l, out, x, bt, 0);
}

extern "C" void cuda_block_attention_probs(cuda_blocks *b, int l, float *probs, const int32_t *heads, int n_heads,
                                           int b0, int nb, const cuda_block_batch *bt) {
    lshape s = shape_of(b->cm, l);
    RA_CHECK(s.nq > 0 && b0 >= 0 && nb >= 1 && b0 + nb <= bt->B);
    block_acts A = acts_of(b, l);
    const int hd = b->cm->cfg.head_dim;
    const size_t r0 = (size_t)b0 * bt->T;
    cuda_attention_args at;
    memset(&at, 0, sizeof at);
    at.q = A.qkv + r0 * s.w, at.q_stride = s.w;
    at.k = at.q + (size_t)s.nq * hd, at.v = at.q + (size_t)(s.nq + s.nkv) * hd, at.kv_stride = s.w;
    at.doc_start = bt->doc_start ? bt->doc_start + r0 : NULL;
    at.B = nb, at.T = bt->T, at.H = s.nq, at.Hkv = s.nkv, at.hd = hd;
    at.probs = probs, at.probs_heads = heads, at.n_probs_heads = n_heads;
    cuda_attention_forward_ex(&at);
}

extern "C" void cuda_block_recompute(cuda_blocks *b, int l, uint16_t *out, const uint16_t *x,
                                     const cuda_block_batch *bt) {
    if (b->recompute == CUDA_BLOCKS_SELECTIVE) block_forward(b, l, out, x, bt, 1);
    else if (b->recompute) block_forward(b, l, out, x, bt, 0);
}

/* ---- backward ---------------------------------------------------------------------------- */

extern "C" void cuda_block_backward(cuda_blocks *b, int l, const cuda_block_grads *g, uint16_t *d, const uint16_t *x,
                                    const cuda_block_batch *bt, int want_dx) {
    const cuda_model *cm = b->cm;
    const hf_config *c = &cm->cfg;
    const cuda_layer_weights *W = &cm->layers[l];
    const cuda_hybrid_layer *Y = cm->hybrid ? &cm->hybrid->layers[l] : NULL;
    block_acts A = acts_of(b, l), *a = &A;
    lshape s = shape_of(cm, l);
    int n = bt->B * bt->T, D = c->hidden_size, I = c->intermediate_size, H = c->num_heads, hd = c->head_dim;
    /* MLP: out = h + down(swiglu(gate_up(hn))) */
    cuda_linear_backward(b->dact, g->w_down, NULL, d, a->act, W->w_down, n, I, D);
    train_prof_mark("bwd: down gemms");
    cuda_swiglu_fused_backward(b->dgu, b->dact, a->gu, n, I);
    train_prof_mark("bwd: swiglu");
    cuda_linear_backward(b->dxn, g->w_gate_up, NULL, b->dgu, a->hn, W->w_gate_up, n, D, 2 * I);
    train_prof_mark("bwd: gate/up gemms");
    cuda_rmsnorm_backward(b->tmp, g->post_norm, b->dxn, a->h, W->post_norm, a->rstd2, n, D);
    cuda_residual_add(d, b->tmp, (int64_t)n * D); /* d = ∂L/∂h = ∂L/∂mix */
    train_prof_mark("bwd: rmsnorm, residual add");
    /* the mixer's output side → ∂L/∂(attention outputs), ∂L/∂(SSM outputs) */
    const uint16_t *dssm = b->dssm;
    if (!s.hybrid) {
        cuda_linear_backward(b->dkatt, g->wo, g->bo, d, a->katt, W->wo, n, H * hd, D);
    } else if (s.parallel) {
        if (s.adapter_lin) {
            cuda_adapter_linear_backward(b->dssm, b->daproj, g->adapter_w, g->adapter_b, d, a->ssm_out, a->aproj,
                                         a->adapted, a->stats, Y->adapter_w, n, D);
            cuda_linear_backward(b->dkatt, g->wo, g->bo, b->daproj, a->katt, W->wo, n, s.nq * hd, D);
        } else {
            dssm = d; /* mix = ssm */
        }
    } else {
        const uint16_t *src = s.static_ad ? a->slots2 : a->slots;
        cuda_linear_backward(b->dslots2, g->wo, g->bo, d, src, W->wo, n, H * hd, D);
        const uint16_t *dsl = b->dslots2;
        if (s.static_ad) {
            cuda_adapter_static_backward(b->dslots, b->dslots2, a->slots, a->stats, b->attn_slot[l], n, H, hd);
            dsl = b->dslots;
        }
        slots_gather(b->dkatt, b->dssm, dsl, Y->slot_src, n, H, Y->k, Y->Hs, hd);
    }
    train_prof_mark("bwd: o_proj gemms, adapter, slots");
    /* attention heads → dxn (overwritten), then the SSM adds its part */
    if (s.nq) {
        cuda_attention_bwd_args ab;
        ab.dq = b->dqkv, ab.dk = b->dqkv + (size_t)s.nq * hd, ab.dv = b->dqkv + (size_t)(s.nq + s.nkv) * hd;
        ab.dout = b->dkatt, ab.q = a->qkv, ab.k = a->qkv + (size_t)s.nq * hd;
        ab.v = a->qkv + (size_t)(s.nq + s.nkv) * hd;
        ab.doc_start = bt->doc_start;
        ab.q_stride = ab.kv_stride = ab.dq_stride = ab.dkv_stride = s.w;
        ab.dout_stride = (int64_t)s.nq * hd;
        ab.B = bt->B, ab.T = bt->T, ab.H = s.nq, ab.Hkv = s.nkv, ab.hd = hd;
        cuda_attention_backward_ex(&ab);
        train_prof_mark("bwd: attention");
        cuda_rope_backward_strided(b->dqkv, s.w, bt->cos_t, bt->sin_t, n, s.nq + s.nkv, hd);
        cuda_linear_backward(b->dxn, g->wqkv, g->bqkv, b->dqkv, a->xn1, W->wqkv, n, D, s.w);
        train_prof_mark("bwd: rope, q/k/v gemms");
    } else {
        cuda_memset(b->dxn, 0, (size_t)n * D * 2);
    }
    if (s.Hs) {
        cuda_dm2_acts v = dm2_view(a, b, l, bt);
        if (b->keep) { /* the backward's workspace starts with the forward's chunk states */
            v.ws = a->dm2->ws;
            cuda_copy(v.ws, b->keep[l].ws, b->keep[l].ws_bytes);
        }
        cuda_dm2_grads gs = g->ssm;
        cuda_dm2_backward(&gs, b->dxn, dssm, &v, &Y->ssm, a->xn1, bt->starts);
        train_prof_mark("bwd: dm2 mixer");
    }
    cuda_rmsnorm_backward(want_dx ? b->tmp : NULL, g->input_norm, b->dxn, x, W->input_norm, a->rstd1, n, D);
    if (want_dx) cuda_residual_add(d, b->tmp, (int64_t)n * D);
    train_prof_mark("bwd: rmsnorm, residual add");
}
