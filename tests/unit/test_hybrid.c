/* Hybrid students (lib/hybrid.h): the config and its JSON, grafting from a
 * teacher and a plan, the model stream round trip, the SSM inits at the
 * matrix level, and the hybrid forward against a float64 reference written
 * here from DESIGN §2.4. */
#include <unistd.h>

#include "forward.h"
#include "hybrid_fixture.h"
#include "ref_f64.h"
#include "ssd.h"

static char tmpdir[] = "/tmp/ra_test_hybrid.XXXXXX";

static void path_in_tmp(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", tmpdir, name); }

static int64_t numel_of(const ra_model_tensor *t) { return t->shape[0] * (t->ndim == 2 ? t->shape[1] : 1); }

/* ------------------------------------------------------------ config */

TEST(config_json_round_trip_and_refusals) {
    hf_config c = fx_config(0);
    uint8_t keep[12] = {1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1, 1};
    ra_hybrid_config h = {.layout = RA_LAYOUT_ROUTED, .adapter = RA_ADAPTER_STATIC, .d_state = 5, .qk_groups = 0,
                          .conv_kernel = 4, .chunk = 128, .ssm_head_dim = 8, .layers = 3, .heads = 4, .keep = keep,
                          .init = RA_INIT_SVD, .seed = 1234567890123ull};
    strcpy(h.plan_id, "00112233445566778899aabbccddeeff");
    json_t *j = ra_hybrid_to_json(&h);
    char *text = json_dumps(j, JSON_SORT_KEYS | JSON_COMPACT);
    EXPECT_STR(text, "{\"adapter\":\"static\",\"chunk\":128,\"conv_kernel\":4,\"d_state\":5,\"init\":\"svd\","
                     "\"kept_heads\":[[0,3],[],[1,2,3]],\"layout\":\"routed\",\"plan\":\"00112233445566778899aabbccddeeff\","
                     "\"qk_groups\":0,\"seed\":1234567890123,\"ssm_head_dim\":8}");
    free(text);
    ra_hybrid_config g;
    ra_error err = {0};
    EXPECT_EQ_INT(ra_hybrid_from_json(j, &c, "meta.hybrid", &g, &err), 0);
    EXPECT(g.layout == RA_LAYOUT_ROUTED && g.adapter == RA_ADAPTER_STATIC && g.d_state == 5 && g.init == RA_INIT_SVD);
    EXPECT(g.seed == 1234567890123ull && g.chunk == 128 && g.conv_kernel == 4 && g.ssm_head_dim == 8);
    EXPECT_STR(g.plan_id, h.plan_id);
    EXPECT_STR(g.teacher_id, "");
    EXPECT(memcmp(g.keep, keep, 12) == 0);
    ra_hybrid_layer_shape s1 = ra_hybrid_layer(&g, &c, 1), s2 = ra_hybrid_layer(&g, &c, 2);
    EXPECT_EQ_INT(s1.k, 0);
    EXPECT_EQ_INT(s1.Hs, 4);
    EXPECT_EQ_INT(s2.k, 3);
    EXPECT_EQ_INT(s2.Hs, 1);
    EXPECT_EQ_INT(s2.ssm.n_groups, 1);
    EXPECT_EQ_INT(s2.ssm.has_out_proj, 0);
    ra_hybrid_free(&g);

    /* each broken field is refused, naming it */
    struct {
        const char *key, *value_json, *needle;
    } bad[] = {
        {"layout", "\"diagonal\"", "layout 'diagonal'"},
        {"adapter", "\"linear\"", "adapter 'linear' belongs to the parallel layout"},
        {"d_state", "0", "d_state = 0"},
        {"conv_kernel", "3", "conv_kernel = 3"},
        {"ssm_head_dim", "16", "ssm_head_dim = 16"},
        {"qk_groups", "3", "qk_groups = 3 does not divide layer 0's 2 SSM heads"},
        {"kept_heads", "[[0],[1]]", "has 2 layers"},
        {"kept_heads", "[[1,0],[],[]]", "kept_heads[0][1]"},
        {"kept_heads", "[[4],[],[]]", "kept_heads[0][0]"},
        {"plan", "\"xyz\"", "'plan' must be a content id"},
        {"d_state", "\"8\"", "'d_state' must be an integer"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *k = json_deep_copy(j);
        json_object_set_new(k, bad[i].key, json_loads(bad[i].value_json, JSON_DECODE_ANY, NULL));
        memset(&err, 0, sizeof err);
        EXPECT_EQ_INT(ra_hybrid_from_json(k, &c, "m.ra: meta.hybrid", &g, &err), EX_DATAERR);
        EXPECT_MSG(strstr(err.msg, bad[i].needle) && strstr(err.msg, "m.ra: meta.hybrid"), "case %zu: %s", i, err.msg);
        json_decref(k);
    }
    json_t *k = json_deep_copy(j);
    json_object_del(k, "kept_heads");
    EXPECT_EQ_INT(ra_hybrid_from_json(k, &c, "x", &g, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "'kept_heads'") != NULL);
    json_decref(k);
    json_decref(j);
}

/* ------------------------------------------------------------- graft */

/* The student's kept-head weights are the teacher's rows / columns. */
TEST(graft_copies_kept_heads_and_shared_weights) {
    for (int variant = 0; variant < 3; variant++)
        for (int layout = 0; layout < 2; layout++) {
            ra_model *t = fx_teacher(variant, 11 + variant);
            const hf_config *c = &t->cfg;
            /* layer 0: heads 1 and H-1, layer 1: none, layer 2: all */
            char bits[64] = {0};
            int H = c->num_heads;
            for (int l = 0; l < 3; l++)
                for (int h = 0; h < H; h++) bits[l * H + h] = (l == 0 && (h == 1 || h == H - 1)) || l == 2 ? '1' : '0';
            ra_model *s = fx_graft(t, bits, layout, layout ? RA_ADAPTER_LINEAR : RA_ADAPTER_STATIC, 0, RA_INIT_MOHAWK, 5);
            EXPECT(s != NULL);
            if (!s) continue;
            size_t D = c->hidden_size, hd = c->head_dim, group = H / c->num_kv_heads;
            EXPECT(memcmp(s->embed, t->embed, sizeof(float) * D * c->vocab_size) == 0);
            EXPECT(c->tie_word_embeddings ? s->lm_head == s->embed
                                          : memcmp(s->lm_head, t->lm_head, sizeof(float) * D * c->vocab_size) == 0);
            for (int l = 0; l < 3; l++) {
                const ra_layer *S = &s->layers[l], *T = &t->layers[l];
                EXPECT(memcmp(S->w_down, T->w_down, sizeof(float) * D * c->intermediate_size) == 0);
                EXPECT(memcmp(S->post_norm, T->post_norm, sizeof(float) * D) == 0);
                EXPECT_EQ_INT(S->n_attn_heads, l == 0 ? 2 : l == 1 ? 0 : H);
                EXPECT_EQ_INT(S->n_ssm_heads, layout ? H : H - S->n_attn_heads);
                for (int i = 0; i < S->n_attn_heads; i++) {
                    size_t h = S->attn_heads[i], g = h / group;
                    EXPECT(memcmp(S->wq + i * hd * D, T->wq + h * hd * D, sizeof(float) * hd * D) == 0);
                    EXPECT(memcmp(S->wk + i * hd * D, T->wk + g * hd * D, sizeof(float) * hd * D) == 0);
                    EXPECT(memcmp(S->wv + i * hd * D, T->wv + g * hd * D, sizeof(float) * hd * D) == 0);
                    if (c->qkv_bias) EXPECT(memcmp(S->bk + i * hd, T->bk + g * hd, sizeof(float) * hd) == 0);
                    if (layout) /* the parallel layout's o_proj slice */
                        for (size_t d = 0; d < D; d++)
                            EXPECT(memcmp(S->wo + (d * S->n_attn_heads + i) * hd, T->wo + (d * H + h) * hd,
                                          sizeof(float) * hd) == 0);
                }
                if (!layout) EXPECT(memcmp(S->wo, T->wo, sizeof(float) * D * H * hd) == 0);
                if (layout && S->n_attn_heads) {
                    EXPECT(S->adapter_w[0] == 1 && S->adapter_w[1] == 0 && S->adapter_b[0] == 0);
                }
                if (S->n_ssm_heads) {
                    EXPECT(S->ssm.conv_w[3] == 1 && S->ssm.conv_w[0] == 0 && S->ssm.D[0] == 1);
                    EXPECT_NEAR(S->ssm.z_bias[0], 1.278464542761, 1e-6);
                    EXPECT((layout != 0) == (S->ssm.out_proj_w != NULL));
                }
            }
            ra_model_free(s);
            ra_model_free(t);
        }
}

TEST(graft_refuses_options_the_teacher_cannot_take) {
    ra_model *t = fx_teacher(0, 3);
    ra_plan p = fx_plan(t, "1000");
    ra_model *s = NULL;
    ra_error err = {0};
    struct {
        ra_graft_opts o;
        const char *needle;
    } bad[] = {
        {{.layout = RA_LAYOUT_ROUTED, .adapter = RA_ADAPTER_STATIC, .d_state = 4, .init = RA_INIT_ATTENTION},
         "--init attention needs --d-state equal to head_dim (8), got 4"},
        {{.layout = RA_LAYOUT_ROUTED, .adapter = RA_ADAPTER_STATIC, .d_state = 9, .init = RA_INIT_SVD},
         "--init svd needs --d-state <= 8"},
        {{.layout = RA_LAYOUT_ROUTED, .adapter = RA_ADAPTER_STATIC, .qk_groups = 2, .init = RA_INIT_SVD},
         "--qk-groups"},
        {{.layout = RA_LAYOUT_ROUTED, .adapter = RA_ADAPTER_STATIC, .qk_groups = 2}, "qk_groups = 2 does not divide"},
        {{.layout = RA_LAYOUT_PARALLEL, .adapter = RA_ADAPTER_STATIC}, "--adapter static"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        EXPECT_EQ_INT(ra_graft(t, &p, &bad[i].o, &s, &err), EX_USAGE);
        EXPECT_MSG(strstr(err.msg, bad[i].needle), "case %zu: %s", i, err.msg);
        EXPECT(s == NULL);
    }
    /* a student is not a teacher */
    ra_model *st = fx_graft(t, "1000", RA_LAYOUT_ROUTED, RA_ADAPTER_STATIC, 0, RA_INIT_MOHAWK, 1);
    ra_graft_opts o = {.layout = RA_LAYOUT_ROUTED, .adapter = RA_ADAPTER_STATIC};
    EXPECT_EQ_INT(ra_graft(st, &p, &o, &s, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "already a hybrid") != NULL);
    ra_model_free(st);
    ra_plan_free(&p);
    ra_model_free(t);
}

/* Write a student, load it back: the same config, layers and weights
 * (f32 exactly), and the tensor names documented in formats/model.md. */
TEST(hybrid_model_stream_round_trip) {
    for (int layout = 0; layout < 2; layout++) {
        ra_model *t = fx_teacher(2, 21);
        ra_model *s = fx_graft(t, "000001001111", layout, layout ? RA_ADAPTER_LINEAR : RA_ADAPTER_NONE, 5,
                               RA_INIT_MOHAWK, 9);
        if (!s) continue;
        char path[300], id[33];
        path_in_tmp(path, sizeof path, layout ? "par.ra" : "routed.ra");
        ra_error err = {0};
        EXPECT_EQ_INT(ra_model_write_stream(s, path, RA_F32, NULL, id, &err), 0);
        ra_model *r = NULL;
        EXPECT_EQ_INT(ra_model_load(path, &r, &err), 0);
        if (!r) {
            printf("# %s\n", err.msg);
            continue;
        }
        EXPECT_STR(r->content_id, id);
        EXPECT_STR(r->warning, "");
        EXPECT(r->hybrid != NULL);
        EXPECT(r->hybrid->layout == s->hybrid->layout && r->hybrid->adapter == s->hybrid->adapter);
        EXPECT_EQ_INT(r->hybrid->d_state, 5);
        EXPECT_EQ_INT(r->hybrid->seed, 9);
        EXPECT_STR(r->hybrid->teacher_id, t->content_id);
        EXPECT_STR(r->hybrid->plan_id, "feedfacefeedfacefeedfacefeedface");
        ra_model_tensor *a, *b;
        int n = ra_model_tensor_list(s, &a), nb = ra_model_tensor_list(r, &b);
        EXPECT_EQ_INT(n, nb);
        for (int i = 0; i < n && i < nb; i++) {
            EXPECT_STR(a[i].name, b[i].name);
            EXPECT(a[i].ndim == b[i].ndim && a[i].shape[0] == b[i].shape[0] && a[i].shape[1] == b[i].shape[1]);
            EXPECT_MSG(memcmp(*a[i].data, *b[i].data, sizeof(float) * numel_of(&a[i])) == 0, "%s differs", a[i].name);
        }
        /* the documented names and shapes (hd 12, D 32, H 4; layer 1 keeps head 1, layer 2 all) */
        int found = 0;
        for (int i = 0; i < n; i++) {
            if (!strcmp(a[i].name, "model.layers.1.self_attn.k_proj.weight"))
                { found++; EXPECT(a[i].shape[0] == 12 && a[i].shape[1] == 32); }
            if (!strcmp(a[i].name, "model.layers.1.self_attn.o_proj.weight"))
                { found++; EXPECT(a[i].shape[0] == 32 && a[i].shape[1] == (layout ? 12 : 48)); }
            if (!strcmp(a[i].name, "model.layers.1.mixer.in_proj.weight")) /* 2·Hs·P + 2·Hs·N + Hs */
                { found++; EXPECT(a[i].shape[0] == (layout ? 2 * 4 * 12 + 2 * 4 * 5 + 4 : 2 * 3 * 12 + 2 * 3 * 5 + 3)); }
            if (!strcmp(a[i].name, "model.layers.1.mixer.conv1d.weight"))
                { found++; EXPECT(a[i].shape[1] == 4 && a[i].shape[0] == (layout ? 4 * 12 + 2 * 4 * 5 : 3 * 12 + 2 * 3 * 5)); }
            if (!strcmp(a[i].name, "model.layers.1.mixer.out_proj.weight")) found += 10 * layout;
            if (!strcmp(a[i].name, "model.layers.1.attn_adapter.weight")) found += 100 * layout;
            if (!strcmp(a[i].name, "model.layers.0.self_attn.q_proj.weight")) found += 1000;
            if (!strcmp(a[i].name, "model.layers.2.mixer.in_proj.weight")) found += 10000 * !layout;
        }
        EXPECT_EQ_INT(found, layout ? 114 : 4);
        free(a), free(b);
        ra_model_free(r);
        ra_model_free(s);
        ra_model_free(t);
    }
}


/* ------------------------------------------- float64 reference forward */

/* Written from DESIGN §2.1 / §2.4 and lib/hybrid.h's layout description, one
 * token and one head at a time, sharing nothing with the library but the
 * weights. */

static double *dnew(size_t n) { return calloc(n ? n : 1, sizeof(double)); }

static double softplus(double v) { return v > 30 ? v : log1p(exp(v)); }
static double silu(double v) { return v / (1 + exp(-v)); }

/* (a − μa)/sqrt(var_a + eps)·sqrt(var_s + eps) + μs over a[0..na) against s[0..ns) */
static void ref_restandardise(double *a, int na, const double *s, int ns) {
    double ma = 0, va = 0, ms = 0, vs = 0;
    for (int i = 0; i < na; i++) ma += a[i] / na;
    for (int i = 0; i < na; i++) va += (a[i] - ma) * (a[i] - ma) / na;
    for (int i = 0; i < ns; i++) ms += s[i] / ns;
    for (int i = 0; i < ns; i++) vs += (s[i] - ms) * (s[i] - ms) / ns;
    for (int i = 0; i < na; i++) a[i] = (a[i] - ma) / sqrt(va + 1e-5) * sqrt(vs + 1e-5) + ms;
}

/* Attention heads of layer l: att [T, nq·hd] in attn_heads order. */
static void ref_attention(double *att, const ra_model *m, int l, const double *xn, int T, const int32_t *ds,
                          const double *invf) {
    const hf_config *c = &m->cfg;
    const ra_layer *L = &m->layers[l];
    int D = c->hidden_size, hd = c->head_dim, nq = L->n_attn_heads;
    int nkv = m->hybrid ? nq : c->num_kv_heads, rep = nq / nkv;
    double *q = dnew((size_t)T * nq * hd), *k = dnew((size_t)T * nkv * hd), *v = dnew((size_t)T * nkv * hd);
    double *sc = dnew(T);
    for (int t = 0; t < T; t++) {
        int pos = ds ? t - ds[t] : t;
        ref_linear(q + (size_t)t * nq * hd, xn + (size_t)t * D, L->wq, L->bq, D, nq * hd);
        ref_linear(k + (size_t)t * nkv * hd, xn + (size_t)t * D, L->wk, L->bk, D, nkv * hd);
        ref_linear(v + (size_t)t * nkv * hd, xn + (size_t)t * D, L->wv, L->bv, D, nkv * hd);
        for (int i = 0; i < nq; i++) ref_rope(q + ((size_t)t * nq + i) * hd, hd, pos, invf);
        for (int i = 0; i < nkv; i++) ref_rope(k + ((size_t)t * nkv + i) * hd, hd, pos, invf);
    }
    for (int i = 0; i < nq; i++)
        for (int t = 0; t < T; t++) {
            int s0 = ds ? ds[t] : 0, g = i / rep;
            double mx = -INFINITY, sum = 0;
            for (int s = s0; s <= t; s++) {
                double d = 0;
                for (int j = 0; j < hd; j++) d += q[((size_t)t * nq + i) * hd + j] * k[((size_t)s * nkv + g) * hd + j];
                sc[s] = d / sqrt((double)hd);
                mx = fmax(mx, sc[s]);
            }
            for (int s = s0; s <= t; s++) sum += (sc[s] = exp(sc[s] - mx));
            double *o = att + ((size_t)t * nq + i) * hd;
            for (int j = 0; j < hd; j++) o[j] = 0;
            for (int s = s0; s <= t; s++)
                for (int j = 0; j < hd; j++) o[j] += sc[s] / sum * v[((size_t)s * nkv + g) * hd + j];
        }
    free(q), free(k), free(v), free(sc);
}

/* DiscreteMamba2 by its recurrence: out [T, out_dim] (gated y, or out_proj of it). */
static void ref_dm2(double *out, const dm2_config *sc, const dm2_params *p, const double *xn, int T,
                    const int32_t *ds) {
    int D = sc->d_model, Hs = sc->n_heads, P = sc->head_dim, N = sc->d_state, G = sc->n_groups;
    int inner = Hs * P, gn = G * N, conv = inner + 2 * gn, in_dim = conv + inner + Hs;
    double *proj = dnew((size_t)T * in_dim), *xbc = dnew((size_t)T * conv), *S = dnew((size_t)Hs * P * N);
    double *yg = dnew(inner);
    for (int t = 0; t < T; t++) ref_linear(proj + (size_t)t * in_dim, xn + (size_t)t * D, p->in_proj_w, NULL, D, in_dim);
    for (int t = 0; t < T; t++)
        for (int ch = 0; ch < conv; ch++) {
            double acc = p->conv_b[ch];
            for (int back = 0; back < 4; back++) /* the tap 3 − back reads back tokens before t, same document */
                if (t - back >= (ds ? ds[t] : 0)) acc += p->conv_w[ch * 4 + 3 - back] * proj[(size_t)(t - back) * in_dim + ch];
            xbc[(size_t)t * conv + ch] = acc;
        }
    for (int t = 0; t < T; t++) {
        if (!ds || ds[t] == t)
            for (size_t i = 0; i < (size_t)Hs * P * N; i++) S[i] = 0;
        const double *x = xbc + (size_t)t * conv, *Bv = x + inner, *Cv = x + inner + gn;
        const double *z = proj + (size_t)t * in_dim + conv, *Al = z + inner;
        for (int h = 0; h < Hs; h++) {
            int g = h / (Hs / G);
            double alpha = exp(-softplus(Al[h]));
            for (int pp = 0; pp < P; pp++) {
                double y = 0;
                for (int n = 0; n < N; n++) {
                    double *st = &S[((size_t)h * P + pp) * N + n];
                    *st = alpha * *st + x[h * P + pp] * Bv[g * N + n];
                    y += *st * Cv[g * N + n];
                }
                y += p->D[h] * x[h * P + pp];
                yg[h * P + pp] = y * silu(z[h * P + pp] + p->z_bias[h * P + pp]);
            }
        }
        if (sc->has_out_proj) ref_linear(out + (size_t)t * D, yg, p->out_proj_w, NULL, inner, D);
        else memcpy(out + (size_t)t * inner, yg, sizeof(double) * inner);
    }
    free(proj), free(xbc), free(S), free(yg);
}

/* The whole model on one row: logits [T, V].  ds: document starts (NULL =
 * one document); keep: head_keep [layers·H] (NULL = none ablated). */
static void ref_model(double *logits, const ra_model *m, const int32_t *tok, int T, const int32_t *ds,
                      const uint8_t *keep) {
    const hf_config *c = &m->cfg;
    int D = c->hidden_size, H = c->num_heads, hd = c->head_dim, I = c->intermediate_size, V = c->vocab_size;
    int parallel = m->hybrid && m->hybrid->layout == RA_LAYOUT_PARALLEL;
    int stat = m->hybrid && m->hybrid->adapter == RA_ADAPTER_STATIC;
    double *x = dnew((size_t)T * D), *xn = dnew((size_t)T * D), *att = dnew((size_t)T * H * hd);
    double *ssm = dnew((size_t)T * (H * hd > D ? H * hd : D)), *slots = dnew((size_t)H * hd), *y = dnew(D);
    double *ap = dnew(D), *g = dnew(I), *u = dnew(I), *h = dnew(D), invf[64];
    ref_inv_freq(invf, c);
    for (int t = 0; t < T; t++)
        for (int j = 0; j < D; j++) x[(size_t)t * D + j] = m->embed[(size_t)tok[t] * D + j];
    for (int l = 0; l < c->num_layers; l++) {
        const ra_layer *L = &m->layers[l];
        int nq = L->n_attn_heads, Hs = L->n_ssm_heads;
        for (int t = 0; t < T; t++) ref_rmsnorm(xn + (size_t)t * D, x + (size_t)t * D, L->input_norm, D, c->rms_norm_eps);
        if (nq) ref_attention(att, m, l, xn, T, ds, invf);
        if (Hs) ref_dm2(ssm, &L->ssm_cfg, &L->ssm, xn, T, ds);
        for (int t = 0; t < T; t++) {
            double *a = att + (size_t)t * nq * hd, *xt = x + (size_t)t * D;
            for (int i = 0; i < nq; i++)
                if (keep && !keep[l * H + L->attn_heads[i]])
                    for (int j = 0; j < hd; j++) a[i * hd + j] = 0;
            if (parallel) {
                const double *s = ssm + (size_t)t * D;
                for (int j = 0; j < D; j++) y[j] = s[j];
                if (nq) {
                    ref_linear(ap, a, L->wo, L->bo, nq * hd, D);
                    ref_restandardise(ap, D, s, D);
                    ref_linear(y, ap, L->adapter_w, L->adapter_b, D, D);
                    for (int j = 0; j < D; j++) y[j] = 0.5 * (s[j] + y[j]);
                }
            } else {
                const double *s = ssm + (size_t)t * Hs * hd;
                if (stat && nq && Hs) ref_restandardise(a, nq * hd, s, Hs * hd); /* kept slots are contiguous in a */
                for (int i = 0; i < nq; i++) memcpy(slots + L->attn_heads[i] * hd, a + i * hd, sizeof(double) * hd);
                for (int j = 0; j < Hs; j++) {
                    int slot = L->ssm_heads[j];
                    for (int e = 0; e < hd; e++) slots[slot * hd + e] = keep && !keep[l * H + slot] ? 0 : s[j * hd + e];
                }
                ref_linear(y, slots, L->wo, L->bo, H * hd, D);
            }
            for (int j = 0; j < D; j++) xt[j] += y[j];
            ref_rmsnorm(h, xt, L->post_norm, D, c->rms_norm_eps);
            ref_linear(g, h, L->w_gate, NULL, D, I);
            ref_linear(u, h, L->w_up, NULL, D, I);
            for (int j = 0; j < I; j++) g[j] = silu(g[j]) * u[j];
            ref_linear(y, g, L->w_down, NULL, I, D);
            for (int j = 0; j < D; j++) xt[j] += y[j];
        }
    }
    for (int t = 0; t < T; t++) {
        ref_rmsnorm(h, x + (size_t)t * D, m->final_norm, D, c->rms_norm_eps);
        ref_linear(logits + (size_t)t * V, h, m->lm_head, NULL, D, V);
    }
    free(x), free(xn), free(att), free(ssm), free(slots), free(y), free(ap), free(g), free(u), free(h);
}

/* max |a − b| / max |b| */
static double rel_err(const float *a, const double *b, size_t n) {
    double e = 0, s = 1e-30;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= e)) e = d;
        s = fmax(s, fabs(b[i]));
    }
    return e / s;
}

static int32_t *rand_tokens(int n, int V) {
    int32_t *t = malloc((size_t)n * sizeof *t);
    for (int i = 0; i < n; i++) t[i] = (int32_t)(test_rand_u64() % (uint64_t)V);
    return t;
}

/* Logits of the library's forward for B rows of T tokens. */
static float *lib_logits(const ra_model *m, const int32_t *tok, int B, int T, const int32_t *ds, const uint8_t *keep) {
    ra_forward_state *s = ra_forward_state_create(m, B, T);
    float *logits = malloc(sizeof(float) * B * T * m->cfg.vocab_size);
    ra_forward_opts o = {.doc_start = ds, .head_keep = keep, .logits = logits};
    ra_error err = {0};
    if (ra_forward_cpu(s, tok, B, T, &o, &err)) printf("# forward: %s\n", err.msg);
    ra_forward_state_free(s);
    return logits;
}

#define TOL 5e-5 /* fp32 forward vs float64, relative to the largest logit */

/* A plan that keeps every head, routed: the student is the teacher. */
TEST(all_heads_routed_student_equals_teacher) {
    for (int variant = 0; variant < 3; variant++) {
        ra_model *t = fx_teacher(variant, 40 + variant);
        ra_model *s = fx_graft(t, "all", RA_LAYOUT_ROUTED, RA_ADAPTER_STATIC, 0, RA_INIT_MOHAWK, 1);
        int T = 33, V = t->cfg.vocab_size;
        int32_t *tok = rand_tokens(2 * T, V), ds[66];
        for (int i = 0; i < 2 * T; i++) ds[i] = i % T < 12 ? 0 : 12; /* two documents per row */
        float *a = lib_logits(t, tok, 2, T, ds, NULL), *b = lib_logits(s, tok, 2, T, ds, NULL);
        double e = 0, mx = 0;
        for (int i = 0; i < 2 * T * V; i++) e = fmax(e, fabs(a[i] - b[i])), mx = fmax(mx, fabs(a[i]));
        printf("# variant %d: max |student − teacher| = %.3g (max |logit| %.3g)\n", variant, e, mx);
        EXPECT(mx > 1);
        EXPECT_MSG(e <= 2e-6 * mx, "variant %d: %g", variant, e); /* the K/V GEMMs have another output width (a copy per kept head): OpenBLAS may round their last bit differently */
        free(tok), free(a), free(b);
        ra_model_free(s), ra_model_free(t);
    }
}

/* Students with random weights everywhere (so no init hides a term) against
 * the float64 reference: pure SSM and mixed, both layouts, both routed
 * adapters, packed documents and an ablation. */
TEST(hybrid_forward_matches_float64_reference) {
    struct {
        int variant;
        const char *bits;
        ra_layout layout;
        ra_adapter_kind adapter;
        int N, groups, chunk;
    } cases[] = {
        {0, "", RA_LAYOUT_ROUTED, RA_ADAPTER_NONE, 8, 0, 128},         /* pure SSM, routed */
        {0, "", RA_LAYOUT_PARALLEL, RA_ADAPTER_LINEAR, 3, 0, 5},       /* pure SSM, parallel, small chunks */
        {1, "100100000000011000", RA_LAYOUT_ROUTED, RA_ADAPTER_STATIC, 4, 0, 7},
        {1, "100100000000011000", RA_LAYOUT_ROUTED, RA_ADAPTER_NONE, 8, 0, 128},
        {1, "100100000000011000", RA_LAYOUT_PARALLEL, RA_ADAPTER_LINEAR, 6, 3, 6},
        {2, "0010111100000100", RA_LAYOUT_ROUTED, RA_ADAPTER_STATIC, 12, 0, 4},
        {2, "0010111100000100", RA_LAYOUT_PARALLEL, RA_ADAPTER_LINEAR, 5, 2, 128},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        ra_model *t = fx_teacher(cases[ci].variant, 60 + ci);
        ra_plan p = fx_plan(t, cases[ci].bits);
        ra_graft_opts go = {.layout = cases[ci].layout, .adapter = cases[ci].adapter, .d_state = cases[ci].N,
                            .qk_groups = cases[ci].groups};
        ra_model *s = NULL;
        ra_error err = {0};
        if (ra_graft(t, &p, &go, &s, &err)) {
            printf("# case %zu: %s\n", ci, err.msg);
            EXPECT(0);
            ra_plan_free(&p), ra_model_free(t);
            continue;
        }
        fx_fill_model(s, 700 + ci);
        s->hybrid->chunk = cases[ci].chunk;
        for (int l = 0; l < s->cfg.num_layers; l++) s->layers[l].ssm_cfg.chunk = cases[ci].chunk;
        int T = 29, V = s->cfg.vocab_size, H = s->cfg.num_heads, Lc = s->cfg.num_layers;
        int32_t *tok = rand_tokens(2 * T, V), ds[58];
        for (int i = 0; i < 2 * T; i++) ds[i] = i < T ? 0 : (i % T < 9 ? 0 : i % T < 20 ? 9 : 20);
        uint8_t *keep = malloc((size_t)2 * Lc * H);
        memset(keep, 1, (size_t)2 * Lc * H);
        keep[Lc * H + 1 * H + 1] = 0; /* row 1: layer 1 head 1, layer 2 head 0 ablated */
        keep[Lc * H + 2 * H + 0] = 0;
        float *got = lib_logits(s, tok, 2, T, ds, keep);
        double *want = dnew((size_t)T * V);
        for (int b = 0; b < 2; b++) {
            /* parallel SSM heads are not maskable: only kept heads are ablated there */
            uint8_t row_keep[64];
            memcpy(row_keep, keep + (size_t)b * Lc * H, (size_t)Lc * H);
            if (cases[ci].layout == RA_LAYOUT_PARALLEL)
                for (int l = 0; l < Lc; l++)
                    for (int h = 0; h < H; h++)
                        if (!p.keep[l * H + h]) row_keep[l * H + h] = 1;
            ref_model(want, s, tok + b * T, T, ds + b * T, row_keep);
            double e = rel_err(got + (size_t)b * T * V, want, (size_t)T * V), mx = 0;
            for (int i = 0; i < T * V; i++) mx = fmax(mx, fabs(want[i]));
            printf("# case %zu row %d: rel err %.3g (max |logit| %.3g)\n", ci, b, e, mx);
            EXPECT_MSG(e < TOL && mx > 0.5, "case %zu row %d: rel err %g, max %g", ci, b, e, mx);
        }
        free(tok), free(keep), free(got), free(want);
        ra_plan_free(&p);
        ra_model_free(s), ra_model_free(t);
    }
}

/* ------------------------------------------------------- the SSM inits */

/* Eigenvalues of a symmetric n×n matrix (cyclic Jacobi, float64), descending. */
static void jacobi_eigenvalues(double *A, int n, double *ev) {
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0;
        for (int p = 0; p < n; p++)
            for (int q = p + 1; q < n; q++) off += A[p * n + q] * A[p * n + q];
        if (off < 1e-30) break;
        for (int p = 0; p < n; p++)
            for (int q = p + 1; q < n; q++) {
                if (fabs(A[p * n + q]) < 1e-300) continue;
                double theta = (A[q * n + q] - A[p * n + p]) / (2 * A[p * n + q]);
                double t = (theta >= 0 ? 1 : -1) / (fabs(theta) + sqrt(theta * theta + 1)), c = 1 / sqrt(t * t + 1),
                       sn = t * c;
                for (int k = 0; k < n; k++) { /* A ← Jᵀ A J */
                    double akp = A[k * n + p], akq = A[k * n + q];
                    A[k * n + p] = c * akp - sn * akq;
                    A[k * n + q] = sn * akp + c * akq;
                }
                for (int k = 0; k < n; k++) {
                    double apk = A[p * n + k], aqk = A[q * n + k];
                    A[p * n + k] = c * apk - sn * aqk;
                    A[q * n + k] = sn * apk + c * aqk;
                }
            }
    }
    for (int i = 0; i < n; i++) ev[i] = A[i * n + i];
    for (int i = 0; i < n; i++) /* sort descending */
        for (int j = i + 1; j < n; j++)
            if (ev[j] > ev[i]) {
                double t = ev[i];
                ev[i] = ev[j], ev[j] = t;
            }
}

/* The best rank-N approximation of Wqᵀ·Wk: exact at N = hd (fp32), and for
 * N < hd its squared Frobenius error is the tail Σ_{i>N} σ_i² of M's
 * singular values, which the test gets from the eigenvalues of MᵀM. */
TEST(svd_factorisation_is_the_best_rank_n_approximation) {
    int hd = 8, D = 32;
    test_seed(91);
    float *Wq = malloc(sizeof(float) * hd * D), *Wk = malloc(sizeof(float) * hd * D);
    test_fill(Wq, (size_t)hd * D, 0.5f);
    test_fill(Wk, (size_t)hd * D, 0.5f);
    double *M = dnew((size_t)D * D), *MtM = dnew((size_t)D * D), ev[32], sv[8], norm2 = 0;
    for (int a = 0; a < D; a++)
        for (int b = 0; b < D; b++) {
            for (int i = 0; i < hd; i++) M[a * D + b] += (double)Wq[i * D + a] * Wk[i * D + b];
            norm2 += M[a * D + b] * M[a * D + b];
        }
    for (int a = 0; a < D; a++)
        for (int b = 0; b < D; b++)
            for (int k = 0; k < D; k++) MtM[a * D + b] += M[k * D + a] * M[k * D + b];
    jacobi_eigenvalues(MtM, D, ev);
    for (int N = 1; N <= hd; N++) {
        float *C = malloc(sizeof(float) * N * D), *B = malloc(sizeof(float) * N * D);
        ra_error err = {0};
        EXPECT_EQ_INT(ra_lowrank_bilinear(C, B, sv, Wq, Wk, hd, D, N, &err), 0);
        double e2 = 0, tail = 0;
        for (int a = 0; a < D; a++)
            for (int b = 0; b < D; b++) {
                double r = M[a * D + b];
                for (int n = 0; n < N; n++) r -= (double)C[n * D + a] * B[n * D + b];
                e2 += r * r;
            }
        for (int i = N; i < D; i++) tail += fmax(ev[i], 0);
        printf("# N = %d: |M - CtB|^2 = %.6g, SVD tail %.6g (|M|^2 = %.6g)\n", N, e2, tail, norm2);
        EXPECT_NEAR(e2, tail, 1e-5 * norm2);
        if (N == hd) EXPECT(sqrt(e2) <= 1e-6 * sqrt(norm2));
        for (int i = 0; i < hd; i++) EXPECT_NEAR(sv[i], sqrt(fmax(ev[i], 0)), 1e-6 * sqrt(ev[0]));
        free(C), free(B);
    }
    ra_error err = {0};
    float C1[32], B1[32];
    EXPECT_EQ_INT(ra_lowrank_bilinear(C1, B1, NULL, Wq, Wk, hd, D, hd + 1, &err), EX_USAGE);
    free(Wq), free(Wk), free(M), free(MtM);
}

/* --init attention (and svd at N = hd) at the matrix level.  The SSM head
 * has no positional encoding, so the comparison is against the head's
 * bilinear form without RoPE (and without q/k biases, which in_proj has no
 * place for): with the decay forced to 1 (a = 0), the head's mixing matrix
 * T = causal(C·Bᵀ) + D·I with D = 0 is the unnormalised linear-attention
 * matrix Q·Kᵀ of its teacher head, Q = u·Wq_hᵀ, K = u·Wk_gᵀ; with the A_log
 * rows zeroed (a constant decay 1/2) T[l,s] = 2^{s−l}·q_l·k_s and the
 * head's output is that matrix applied to V = u·Wv_gᵀ, gated by
 * silu(z_bias) = 1. */
TEST(attention_and_svd_inits_are_linear_attention) {
    for (int which = 0; which < 2; which++) {
        ra_model *t = fx_teacher(which ? 2 : 1, 51 + which);
        const hf_config *c = &t->cfg;
        const char *bits = which ? "0100001000000000" : "010000000000001000";
        ra_model *s = fx_graft(t, bits, RA_LAYOUT_ROUTED, RA_ADAPTER_STATIC, 0, which ? RA_INIT_SVD : RA_INIT_ATTENTION, 3);
        if (!s) {
            EXPECT(0);
            continue;
        }
        int D = c->hidden_size, hd = c->head_dim, H = c->num_heads, group = H / c->num_kv_heads, T = 17;
        for (int l = 0; l < c->num_layers; l++) {
            ra_layer *L = &s->layers[l];
            const ra_layer *TL = &t->layers[l];
            const dm2_config *sc = &L->ssm_cfg;
            int Hs = L->n_ssm_heads, in_dim = dm2_in_proj_dim(sc), inner = Hs * hd, gn = Hs * hd;
            EXPECT_EQ_INT(sc->d_state, hd);
            EXPECT_EQ_INT(sc->n_groups, Hs);
            for (int j = 0; j < Hs; j++) EXPECT(L->ssm.D[j] == 0);
            /* the x rows are the V rows of the head's group */
            for (int j = 0; j < Hs; j++) {
                int g = L->ssm_heads[j] / group;
                EXPECT(memcmp(L->ssm.in_proj_w + (size_t)j * hd * D, TL->wv + (size_t)g * hd * D,
                              sizeof(float) * hd * D) == 0);
            }
            /* a copy of the params with the A_log rows zeroed: decay exactly 1/2 */
            dm2_params p;
            dm2_params_alloc(&p, sc);
            memcpy(p.in_proj_w, L->ssm.in_proj_w, sizeof(float) * in_dim * D);
            memset(p.in_proj_w + (size_t)(in_dim - Hs) * D, 0, sizeof(float) * Hs * D);
            memcpy(p.conv_w, L->ssm.conv_w, sizeof(float) * dm2_conv_dim(sc) * 4);
            memcpy(p.conv_b, L->ssm.conv_b, sizeof(float) * dm2_conv_dim(sc));
            memcpy(p.D, L->ssm.D, sizeof(float) * Hs);
            memcpy(p.z_bias, L->ssm.z_bias, sizeof(float) * inner);
            ra_error err = {0};
            dm2_acts *st = dm2_alloc_state(1, T, sc, &err);
            float *u = malloc(sizeof(float) * T * D), *Tm = malloc(sizeof(float) * Hs * T * T);
            float *Tm1 = malloc(sizeof(float) * Hs * T * T), *a0 = calloc((size_t)T * Hs, sizeof(float));
            float *y = malloc(sizeof(float) * T * inner);
            test_fill(u, (size_t)T * D, 1.0f);
            dm2_matrix_forward(Tm, st, &p, u, NULL);
            ssd_dims d = dm2_ssd_dims(sc, 1, T);
            ssd_matrix_forward(Tm1, st->Bm, st->Cm, a0, p.D, NULL, &d); /* decay 1 */
            dm2_forward(y, NULL, st, &p, u, NULL);
            double e_half = 0, e_one = 0, e_y = 0, scale = 0, yscale = 0;
            for (int j = 0; j < Hs; j++) {
                int h = L->ssm_heads[j], g = h / group;
                double *q = dnew((size_t)T * hd), *k = dnew((size_t)T * hd), *v = dnew((size_t)T * hd);
                for (int r = 0; r < T; r++)
                    for (int i = 0; i < hd; i++)
                        for (int e = 0; e < D; e++) {
                            q[r * hd + i] += (double)TL->wq[((size_t)h * hd + i) * D + e] * u[r * D + e];
                            k[r * hd + i] += (double)TL->wk[((size_t)g * hd + i) * D + e] * u[r * D + e];
                            v[r * hd + i] += (double)TL->wv[((size_t)g * hd + i) * D + e] * u[r * D + e];
                        }
                for (int a = 0; a < T; a++) {
                    double out[64] = {0};
                    for (int b = 0; b < T; b++) {
                        double qk = 0;
                        for (int i = 0; i < hd; i++) qk += q[a * hd + i] * k[b * hd + i];
                        double want1 = b <= a ? qk : 0, want_half = b <= a ? qk * pow(0.5, a - b) : 0;
                        e_one = fmax(e_one, fabs(Tm1[((size_t)j * T + a) * T + b] - want1));
                        e_half = fmax(e_half, fabs(Tm[((size_t)j * T + a) * T + b] - want_half));
                        scale = fmax(scale, fabs(want1));
                        for (int i = 0; i < hd; i++) out[i] += want_half * v[b * hd + i];
                    }
                    for (int i = 0; i < hd; i++) {
                        double want = out[i] * silu(DM2_Z_BIAS_INIT); /* z rows are 0 */
                        e_y = fmax(e_y, fabs(y[(size_t)a * inner + j * hd + i] - want));
                        yscale = fmax(yscale, fabs(want));
                    }
                }
                free(q), free(k), free(v);
            }
            printf("# %s layer %d (%d SSM heads): |T − QKᵀ| %.3g, |T − 2^(s−l)QKᵀ| %.3g (of %.3g), |y − linear "
                   "attention| %.3g (of %.3g)\n",
                   which ? "svd" : "attention", l, Hs, e_one, e_half, scale, e_y, yscale);
            EXPECT(e_one <= 2e-5 * scale && e_half <= 2e-5 * scale && e_y <= 2e-5 * yscale && scale > 0.1);
            (void)gn;
            dm2_free_state(st);
            dm2_params_free(&p);
            free(u), free(Tm), free(Tm1), free(a0), free(y);
        }
        ra_model_free(s), ra_model_free(t);
    }
}

int main(void) {
    if (!mkdtemp(tmpdir)) return 1;
    RUN(config_json_round_trip_and_refusals);
    RUN(graft_copies_kept_heads_and_shared_weights);
    RUN(graft_refuses_options_the_teacher_cannot_take);
    RUN(hybrid_model_stream_round_trip);
    RUN(all_heads_routed_student_equals_teacher);
    RUN(hybrid_forward_matches_float64_reference);
    RUN(svd_factorisation_is_the_best_rank_n_approximation);
    RUN(attention_and_svd_inits_are_linear_attention);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) printf("# could not remove %s\n", tmpdir);
    return test_summary();
}
