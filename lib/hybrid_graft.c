/* ra-graft's library entry point: a hybrid student from a teacher and a head
 * plan (DESIGN §2.4; contract in hybrid.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hybrid.h"

static void copy(float *dst, const float *src, size_t n) { memcpy(dst, src, n * sizeof(float)); }

/* Options against the teacher: what each init needs. */
static int check_opts(const ra_graft_opts *o, const hf_config *c, ra_error *err) {
    int N = o->d_state ? o->d_state : c->head_dim;
    if (o->layout == RA_LAYOUT_ROUTED && o->adapter == RA_ADAPTER_LINEAR)
        return ra_fail(err, EX_USAGE, "--adapter: the routed layout takes static or none");
    if (o->layout == RA_LAYOUT_PARALLEL && o->adapter != RA_ADAPTER_LINEAR)
        return ra_fail(err, EX_USAGE, "--adapter %s: the parallel layout has its learned adapter; leave --adapter out",
                       ra_adapter_name(o->adapter));
    if (o->init != RA_INIT_MOHAWK && o->qk_groups)
        return ra_fail(err, EX_USAGE, "--init %s needs one B/C group per SSM head: leave --qk-groups out (got %d)",
                       ra_ssm_init_name(o->init), o->qk_groups);
    if (o->init == RA_INIT_ATTENTION && N != c->head_dim)
        return ra_fail(err, EX_USAGE, "--init attention needs --d-state equal to head_dim (%d), got %d", c->head_dim, N);
    int r = c->head_dim < c->hidden_size ? c->head_dim : c->hidden_size;
    if (o->init == RA_INIT_SVD && N > r)
        return ra_fail(err, EX_USAGE, "--init svd needs --d-state <= %d (head_dim%s), got %d", r,
                       r < c->head_dim ? ", capped by hidden_size" : "", N);
    return 0;
}

/* The teacher's own weights: embeddings, norms, MLPs, LM head. */
static void copy_shared(ra_model *s, const ra_model *t) {
    const hf_config *c = &t->cfg;
    size_t D = c->hidden_size, I = c->intermediate_size, V = c->vocab_size;
    copy(s->embed, t->embed, V * D);
    copy(s->final_norm, t->final_norm, D);
    if (!c->tie_word_embeddings) copy(s->lm_head, t->lm_head, V * D);
    for (int l = 0; l < c->num_layers; l++) {
        ra_layer *S = &s->layers[l];
        const ra_layer *T = &t->layers[l];
        copy(S->input_norm, T->input_norm, D);
        copy(S->post_norm, T->post_norm, D);
        copy(S->w_gate, T->w_gate, I * D);
        copy(S->w_up, T->w_up, I * D);
        copy(S->w_down, T->w_down, D * I);
    }
}

/* Kept heads: own Q rows, a copy of the KV group's K/V rows, o_proj. */
static void copy_attention(ra_model *s, const ra_model *t, int l) {
    const hf_config *c = &t->cfg;
    ra_layer *S = &s->layers[l];
    const ra_layer *T = &t->layers[l];
    size_t D = c->hidden_size, hd = c->head_dim, H = c->num_heads, group = H / c->num_kv_heads;
    for (int i = 0; i < S->n_attn_heads; i++) {
        size_t h = S->attn_heads[i], g = h / group;
        copy(S->wq + i * hd * D, T->wq + h * hd * D, hd * D);
        copy(S->wk + i * hd * D, T->wk + g * hd * D, hd * D);
        copy(S->wv + i * hd * D, T->wv + g * hd * D, hd * D);
        if (c->qkv_bias) {
            copy(S->bq + i * hd, T->bq + h * hd, hd);
            copy(S->bk + i * hd, T->bk + g * hd, hd);
            copy(S->bv + i * hd, T->bv + g * hd, hd);
        }
    }
    if (!S->wo) return; /* parallel without kept heads */
    if (s->hybrid->layout == RA_LAYOUT_ROUTED) {
        copy(S->wo, T->wo, D * H * hd);
    } else {
        size_t k = S->n_attn_heads;
        for (size_t d = 0; d < D; d++)
            for (size_t i = 0; i < k; i++) copy(S->wo + (d * k + i) * hd, T->wo + (d * H + S->attn_heads[i]) * hd, hd);
    }
    if (c->o_bias) copy(S->bo, T->bo, D);
}

/* --init attention / svd on top of mohawk: SSM head j (slot h) reads the
 * teacher head h's Q rows (C), its KV group's K rows (B) and V rows (x). */
static int init_from_attention(ra_model *s, const ra_model *t, int l, ra_ssm_init init, ra_error *err) {
    const hf_config *c = &t->cfg;
    ra_layer *S = &s->layers[l];
    const ra_layer *T = &t->layers[l];
    const dm2_config *sc = &S->ssm_cfg;
    size_t D = c->hidden_size, hd = c->head_dim, H = c->num_heads, group = H / c->num_kv_heads, N = sc->d_state;
    size_t inner = dm2_d_inner(sc), gn = (size_t)sc->n_groups * N;
    float *x_rows = S->ssm.in_proj_w, *B_rows = x_rows + inner * D, *C_rows = B_rows + gn * D;
    for (int j = 0; j < sc->n_heads; j++) {
        size_t h = S->ssm_heads ? (size_t)S->ssm_heads[j] : (size_t)j, g = h / group;
        const float *wq = T->wq + h * hd * D, *wk = T->wk + g * hd * D;
        copy(x_rows + j * hd * D, T->wv + g * hd * D, hd * D);
        if (init == RA_INIT_ATTENTION) {
            copy(B_rows + j * N * D, wk, N * D);
            copy(C_rows + j * N * D, wq, N * D);
        } else {
            int rc = ra_lowrank_bilinear(C_rows + j * N * D, B_rows + j * N * D, NULL, wq, wk, (int)hd, (int)D, (int)N,
                                         err);
            if (rc) {
                ra_error_prefix(err, "layer %d head %zu", l, h);
                return rc;
            }
        }
        S->ssm.D[j] = 0; /* linear attention has no skip term */
    }
    if (sc->has_out_proj) copy(S->ssm.out_proj_w, T->wo, D * H * hd); /* parallel: slot j = head j */
    return 0;
}

int ra_graft(const ra_model *teacher, const ra_plan *plan, const ra_graft_opts *o, ra_model **student,
             ra_error *err) {
    *student = NULL;
    const hf_config *c = &teacher->cfg;
    if (teacher->hybrid)
        return ra_fail(err, EX_DATAERR, "%s: already a hybrid student; ra-graft needs the teacher", teacher->source);
    if (plan->shape.layers != c->num_layers || plan->shape.heads != c->num_heads)
        return ra_fail(err, EX_DATAERR, "plan is for %d layers x %d heads, the teacher has %d x %d", plan->shape.layers,
                       plan->shape.heads, c->num_layers, c->num_heads);
    int rc = check_opts(o, c, err);
    if (rc) return rc;

    ra_hybrid_config h = {
        .layout = o->layout,
        .adapter = o->adapter,
        .d_state = o->d_state ? o->d_state : c->head_dim,
        .qk_groups = o->qk_groups,
        .conv_kernel = RA_HYBRID_CONV_KERNEL,
        .chunk = RA_HYBRID_CHUNK,
        .ssm_head_dim = c->head_dim,
        .layers = c->num_layers,
        .heads = c->num_heads,
        .keep = plan->keep,
        .init = o->init,
        .seed = o->seed,
    };
    snprintf(h.plan_id, sizeof h.plan_id, "%s", plan->content_id);
    snprintf(h.teacher_id, sizeof h.teacher_id, "%s", teacher->content_id);
    if ((rc = ra_hybrid_check(&h, c, "ra-graft", err))) {
        if (err) err->code = EX_USAGE; /* every field but the plan's comes from a flag */
        return EX_USAGE;
    }

    ra_model *s = ra_model_shell_hybrid(c, &h);
    ra_model_alloc_weights(s);
    snprintf(s->source, sizeof s->source, "ra-graft");
    copy_shared(s, teacher);
    ra_rng root;
    rng_seed(&root, o->seed);
    for (int l = 0; l < c->num_layers && !rc; l++) {
        ra_layer *L = &s->layers[l];
        copy_attention(s, teacher, l);
        if (L->n_ssm_heads) {
            ra_rng r = rng_split(&root, (uint64_t)l);
            dm2_init_mohawk(&L->ssm, &L->ssm_cfg, c->num_layers, &r);
            if (o->init != RA_INIT_MOHAWK) rc = init_from_attention(s, teacher, l, o->init, err);
        }
        if (L->adapter_w) { /* the identity: the adapter starts as standardisation alone */
            size_t D = c->hidden_size;
            memset(L->adapter_w, 0, D * D * sizeof(float));
            for (size_t d = 0; d < D; d++) L->adapter_w[d * D + d] = 1;
            memset(L->adapter_b, 0, D * sizeof(float));
        }
    }
    if (rc) {
        ra_model_free(s);
        return rc;
    }
    *student = s;
    return 0;
}
