/* lib/stage1: MOHAWK stage 1 (matrix orientation).
 *   - the teacher matrices the code compares equal a float64 softmax
 *     attention (RoPE incl. llama3 scaling, GQA, document masks) computed
 *     here from the teacher's weights;
 *   - the whole objective equals a float64 reimplementation (teacher
 *     attention vs the SSM mixing matrix by its definition, DESIGN §2.4);
 *   - finite differences of the objective w.r.t. every trained slice, for a
 *     routed student with kept heads, a pure-SSM student (0 kept heads) and
 *     a parallel one;
 *   - nothing outside the trained slices gets a gradient;
 *   - the loss falls over a few AdamW steps;
 *   - refusals: mismatched models, no SSM head, sequence length too long. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "forward.h"
#include "gradcheck.h"
#include "hybrid_fixture.h"
#include "optim.h"
#include "ref_f64.h"
#include "stage1.h"

enum { B = 2, T = 9 };

/* Token ids; row 0 one document, row 1 two (a start at t = 4). */
static int32_t tokens[B * T];
static const int32_t doc_start[B * T] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4};

static void make_tokens(int V) {
    test_seed(5);
    for (int i = 0; i < B * T; i++) tokens[i] = (int32_t)(test_rand_u64() % (uint64_t)V);
}

/* Student of teacher variant `variant`; bits as fx_plan.  The SSM weights
 * (and everything else of the student) are randomised so that conv, D and
 * the norms are away from their initial values; the teacher stays. */
static ra_model *student_of(const ra_model *t, const char *bits, ra_layout layout) {
    ra_model *s = fx_graft(t, bits, layout, layout == RA_LAYOUT_PARALLEL ? RA_ADAPTER_LINEAR : RA_ADAPTER_STATIC, 5,
                           RA_INIT_MOHAWK, 3);
    if (s) fx_fill_model(s, 77);
    return s;
}

/* ------------------------------------------------ float64 references */

/* RMSNorm of an fp32 row in float64. */
static void ref_rmsnorm_f(double *y, const float *x, const float *w, int D, double eps) {
    double xd[64];
    for (int j = 0; j < D; j++) xd[j] = x[j];
    ref_rmsnorm(y, xd, w, D, eps);
}

/* Teacher attention probabilities of query head q of layer l on one row
 * from its hidden state x [T, D]: A [T, T], 0 where masked. */
static void ref_teacher_matrix(double *A, const ra_model *t, int l, int q, const float *x, const int32_t *ds) {
    const hf_config *c = &t->cfg;
    const ra_layer *L = &t->layers[l];
    int D = c->hidden_size, hd = c->head_dim, g = q / (c->num_heads / c->num_kv_heads);
    double invf[64], xn[64], qv[T][16], kv[T][16], full_q[256], full_k[256];
    ref_inv_freq(invf, c);
    for (int s = 0; s < T; s++) {
        ref_rmsnorm_f(xn, x + (size_t)s * D, L->input_norm, D, c->rms_norm_eps);
        ref_linear(full_q, xn, L->wq, L->bq, D, c->num_heads * hd);
        ref_linear(full_k, xn, L->wk, L->bk, D, c->num_kv_heads * hd);
        memcpy(qv[s], full_q + q * hd, sizeof(double) * hd);
        memcpy(kv[s], full_k + g * hd, sizeof(double) * hd);
        ref_rope(qv[s], hd, s - ds[s], invf);
        ref_rope(kv[s], hd, s - ds[s], invf);
    }
    for (int i = 0; i < T * T; i++) A[i] = 0;
    for (int r = 0; r < T; r++) {
        double mx = -INFINITY, sum = 0, sc[T];
        for (int s = ds[r]; s <= r; s++) {
            double d = 0;
            for (int j = 0; j < hd; j++) d += qv[r][j] * kv[s][j];
            sc[s] = d / sqrt((double)hd);
            mx = fmax(mx, sc[s]);
        }
        for (int s = ds[r]; s <= r; s++) sum += sc[s] = exp(sc[s] - mx);
        for (int s = ds[r]; s <= r; s++) A[r * T + s] = sc[s] / sum;
    }
}

static double softplus(double v) { return v > 30 ? v : log1p(exp(v)); }

/* Mixing matrix of SSM head h of a student layer on one row from the
 * teacher hidden state x, by the definition
 *   T[r,s] = (C_r·B_s)·exp(Σ_{k=s+1..r} a_k) + D_h [r = s],  s ≤ r, same document. */
static void ref_student_matrix(double *M, const ra_model *st, int l, int h, const float *x, const int32_t *ds) {
    const hf_config *c = &st->cfg;
    const ra_layer *L = &st->layers[l];
    const dm2_config *sc = &L->ssm_cfg;
    const dm2_params *p = &L->ssm;
    int D = c->hidden_size, inner = sc->n_heads * sc->head_dim, N = sc->d_state, gn = sc->n_groups * N;
    int in_dim = dm2_in_proj_dim(sc), g = h / (sc->n_heads / sc->n_groups);
    static double proj[T][1024];
    double xn[64], Bv[T][16], Cv[T][16], a[T];
    for (int s = 0; s < T; s++) {
        ref_rmsnorm_f(xn, x + (size_t)s * D, L->input_norm, D, c->rms_norm_eps);
        ref_linear(proj[s], xn, p->in_proj_w, NULL, D, in_dim);
        a[s] = -softplus(proj[s][2 * inner + 2 * gn + h]);
    }
    for (int s = 0; s < T; s++)
        for (int n = 0; n < N; n++) {
            int chB = inner + g * N + n, chC = inner + gn + g * N + n;
            double vb = p->conv_b[chB], vc = p->conv_b[chC];
            for (int back = 0; back < 4; back++)
                if (s - back >= ds[s]) {
                    vb += p->conv_w[chB * 4 + 3 - back] * proj[s - back][chB];
                    vc += p->conv_w[chC * 4 + 3 - back] * proj[s - back][chC];
                }
            Bv[s][n] = vb, Cv[s][n] = vc;
        }
    for (int r = 0; r < T; r++)
        for (int s = 0; s < T; s++) {
            double v = 0;
            if (s <= r && s >= ds[r]) {
                double dot = 0, seg = 0;
                for (int n = 0; n < N; n++) dot += Cv[r][n] * Bv[s][n];
                for (int k = s + 1; k <= r; k++) seg += a[k];
                v = dot * exp(seg) + (r == s ? p->D[h] : 0);
            }
            M[r * T + s] = v;
        }
}

/* The pairing from the plan bits (meta.hybrid keep): routed, the slots not
 * kept in ascending order; parallel, every head h with query head h. */
static int ref_pairing(const ra_model *st, int l, int *heads) {
    int H = st->cfg.num_heads, n = 0;
    for (int h = 0; h < H; h++)
        if (st->hybrid->layout == RA_LAYOUT_PARALLEL || !st->hybrid->keep[l * H + h]) heads[n++] = h;
    return n;
}

/* Σ over layers with SSM heads of mean over rows and heads of ‖Ts − A‖_F. */
static double ref_objective(const ra_model *t, const ra_model *st) {
    const hf_config *c = &t->cfg;
    int D = c->hidden_size, nl = c->num_layers;
    float *hid = calloc((size_t)(nl + 1) * T * D, sizeof(float));
    float *slots[8] = {0};
    for (int l = 0; l <= nl; l++) slots[l] = hid + (size_t)l * T * D;
    ra_forward_state *fs = ra_forward_state_create(t, 1, T);
    double total = 0, A[T * T], M[T * T];
    for (int b = 0; b < B; b++) {
        ra_forward_opts o = {.doc_start = doc_start + b * T, .hidden_out = slots};
        ra_error err = {0};
        if (ra_forward_cpu(fs, tokens + b * T, 1, T, &o, &err)) printf("# forward: %s\n", err.msg);
        for (int l = 0; l < nl; l++) {
            int heads[16], Hs = ref_pairing(st, l, heads);
            for (int h = 0; h < Hs; h++) {
                ref_teacher_matrix(A, t, l, heads[h], slots[l], doc_start + b * T);
                ref_student_matrix(M, st, l, h, slots[l], doc_start + b * T);
                double ss = 0;
                for (int i = 0; i < T * T; i++) ss += (M[i] - A[i]) * (M[i] - A[i]);
                total += sqrt(ss) / (B * Hs);
            }
        }
    }
    ra_forward_state_free(fs);
    free(hid);
    return total;
}

/* ------------------------------------------------------------ tests */

TEST(pairing_routed_and_parallel) {
    ra_model *t = fx_teacher(0, 11);
    ra_model *r = student_of(t, "101001000000", RA_LAYOUT_ROUTED), *p = student_of(t, "101001000000", RA_LAYOUT_PARALLEL);
    int h[8];
    EXPECT_EQ_INT(ra_stage1_pairing(r, 0, h), 2);
    EXPECT(h[0] == 1 && h[1] == 3);
    EXPECT_EQ_INT(ra_stage1_pairing(r, 1, h), 3);
    EXPECT(h[0] == 0 && h[1] == 2 && h[2] == 3);
    EXPECT_EQ_INT(ra_stage1_pairing(p, 0, h), 4);
    EXPECT(h[0] == 0 && h[1] == 1 && h[2] == 2 && h[3] == 3);
    ra_model_free(r), ra_model_free(p), ra_model_free(t);
}

TEST(teacher_matrices_equal_float64_attention) {
    for (int variant = 0; variant < 3; variant++) {
        ra_model *t = fx_teacher(variant, 11 + variant);
        int H = t->cfg.num_heads, D = t->cfg.hidden_size, nl = t->cfg.num_layers;
        char bits[64] = {0};
        for (int i = 0; i < nl * H; i++) bits[i] = i % 3 == 0 ? '1' : '0';
        ra_model *s = student_of(t, bits, RA_LAYOUT_ROUTED);
        EXPECT(s != NULL);
        if (!s) {
            ra_model_free(t);
            continue;
        }
        make_tokens(t->cfg.vocab_size);
        ra_stage1 *st = NULL;
        ra_error err = {0};
        EXPECT(ra_stage1_create(t, s, NULL, T, 0, &st, &err) == 0);
        float *hid = calloc((size_t)(nl + 1) * T * D, sizeof(float)), *slots[8] = {0};
        for (int l = 0; l <= nl; l++) slots[l] = hid + (size_t)l * T * D;
        ra_forward_state *fs = ra_forward_state_create(t, 1, T);
        float *A = calloc((size_t)H * T * T, sizeof(float));
        double ref[T * T], worst = 0;
        int compared = 0;
        for (int b = 0; b < B; b++) {
            ra_forward_opts o = {.doc_start = doc_start + b * T, .hidden_out = slots};
            EXPECT(ra_forward_cpu(fs, tokens + b * T, 1, T, &o, &err) == 0);
            for (int l = 1; l < nl; l++) {
                int heads[16], Hs = ra_stage1_pairing(s, l, heads);
                EXPECT(ra_stage1_teacher_matrices(st, l, slots[l], doc_start + b * T, T, A, &err) == 0);
                for (int h = 0; h < Hs; h++) {
                    ref_teacher_matrix(ref, t, l, heads[h], slots[l], doc_start + b * T);
                    for (int i = 0; i < T * T; i++) worst = fmax(worst, fabs(A[(size_t)h * T * T + i] - ref[i]));
                    compared++;
                }
            }
        }
        EXPECT_MSG(worst <= 2e-6, "variant %d: max |A − A_ref| %g", variant, worst);
        EXPECT(compared > 0);
        /* layer 0 takes tokens, not a hidden state */
        EXPECT_EQ_INT(ra_stage1_teacher_matrices(st, 0, slots[0], NULL, T, A, &err), EX_USAGE);
        free(A), free(hid);
        ra_forward_state_free(fs);
        ra_stage1_free(st);
        ra_model_free(s), ra_model_free(t);
    }
}

static void check_objective(const char *bits, ra_layout layout) {
    ra_model *t = fx_teacher(0, 11), *s = student_of(t, bits, layout);
    EXPECT(s != NULL);
    if (!s) {
        ra_model_free(t);
        return;
    }
    make_tokens(t->cfg.vocab_size);
    ra_stage1 *st = NULL;
    ra_error err = {0};
    EXPECT(ra_stage1_create(t, s, NULL, T, 0, &st, &err) == 0);
    double L = -1, ref = ref_objective(t, s);
    EXPECT(ra_stage1_loss(st, tokens, doc_start, B, T, 1.0f, 0, &L, &err) == 0);
    EXPECT_MSG(fabs(L - ref) <= 1e-5 * fabs(ref) && ref > 0.1, "%s layout %d: loss %.9g, float64 %.9g", bits, layout,
               L, ref);
    ra_stage1_free(st);
    ra_model_free(s), ra_model_free(t);
}

TEST(objective_equals_float64) {
    check_objective("101001000000", RA_LAYOUT_ROUTED);
    check_objective("", RA_LAYOUT_ROUTED);
    check_objective("101001000000", RA_LAYOUT_PARALLEL);
}

typedef struct {
    ra_stage1 *st;
} fd_ctx;

static double objective(void *p) {
    fd_ctx *c = p;
    double L = 0;
    ra_error err = {0};
    if (ra_stage1_loss(c->st, tokens, doc_start, B, T, 1.0f, 0, &L, &err)) printf("# loss: %s\n", err.msg);
    return L;
}

/* Finite differences of the whole objective w.r.t. every registered slice;
 * then no gradient outside the slices. */
static void check_gradients(const char *bits, ra_layout layout, const uint8_t *layers) {
    ra_model *t = fx_teacher(0, 11), *s = student_of(t, bits, layout);
    EXPECT(s != NULL);
    if (!s) {
        ra_model_free(t);
        return;
    }
    make_tokens(t->cfg.vocab_size);
    ra_stage1 *st = NULL;
    ra_error err = {0};
    EXPECT(ra_stage1_create(t, s, layers, T, 0, &st, &err) == 0);
    ra_optim *o = ra_optim_create(NULL);
    EXPECT(ra_stage1_register(st, o, &err) == 0);
    EXPECT_EQ_INT(o->n, 5 * ra_stage1_n_layers(st));
    ra_optim_zero_grad(o);
    double L = 0;
    EXPECT(ra_stage1_loss(st, tokens, doc_start, B, T, 0.5f, 1, &L, &err) == 0);
    /* dloss 0.5 scales the gradient: compare with half the finite difference */
    for (int i = 0; i < o->n; i++) {
        ra_param *p = &o->params[i];
        float *g2 = malloc(sizeof(float) * p->numel);
        for (int64_t j = 0; j < p->numel; j++) g2[j] = 2 * p->g[j];
        fd_ctx c = {st};
        test_seed(100 + i);
        int bad = gc_check(p->name, p->w, p->numel, g2, objective, &c, 24, 1e-3f, 2e-2);
        EXPECT_MSG(bad == 0, "%s (%s): %d mismatches", p->name, bits, bad);
        free(g2);
    }
    /* The full gradient arrays: zero outside the slices (x and z rows,
     * x conv channels, z_bias, out_proj). */
    for (int i = 0; i < ra_stage1_n_layers(st); i++) {
        const dm2_params *g = ra_stage1_grads(st, i);
        const dm2_config *c = &s->layers[ra_stage1_layer(st, i)].ssm_cfg;
        int D = c->d_model, inner = dm2_d_inner(c), gn2 = 2 * c->n_groups * c->d_state;
        double outside = 0;
        for (int64_t j = 0; j < (int64_t)inner * D; j++) outside += fabs(g->in_proj_w[j]);
        for (int64_t j = (int64_t)(inner + gn2) * D; j < (int64_t)(2 * inner + gn2) * D; j++)
            outside += fabs(g->in_proj_w[j]);
        for (int j = 0; j < inner * DM2_CONV_K; j++) outside += fabs(g->conv_w[j]);
        for (int j = 0; j < inner; j++) outside += fabs(g->conv_b[j]) + fabs(g->z_bias[j]);
        if (g->out_proj_w)
            for (int64_t j = 0; j < (int64_t)D * inner; j++) outside += fabs(g->out_proj_w[j]);
        EXPECT_MSG(outside == 0, "layer %d: gradient outside the trained slices (%g)", ra_stage1_layer(st, i), outside);
    }
    ra_optim_free(o);
    ra_stage1_free(st);
    ra_model_free(s), ra_model_free(t);
}

TEST(gradients_routed_mixed) { check_gradients("101001000000", RA_LAYOUT_ROUTED, NULL); }
TEST(gradients_pure_ssm) { check_gradients("", RA_LAYOUT_ROUTED, NULL); }
TEST(gradients_parallel) { check_gradients("101001000000", RA_LAYOUT_PARALLEL, NULL); }
TEST(gradients_chosen_layers) {
    /* layers 1 and 2 only: the teacher runs from the embedding to layer 1 */
    static const uint8_t layers[3] = {0, 1, 1};
    check_gradients("101001000000", RA_LAYOUT_ROUTED, layers);
}

TEST(loss_falls_with_adamw) {
    for (int pure = 0; pure < 2; pure++) {
        ra_model *t = fx_teacher(0, 11), *s = student_of(t, pure ? "" : "101001000000", RA_LAYOUT_ROUTED);
        make_tokens(t->cfg.vocab_size);
        ra_stage1 *st = NULL;
        ra_error err = {0};
        EXPECT(ra_stage1_create(t, s, NULL, T, 0, &st, &err) == 0);
        ra_optim *o = ra_optim_create(NULL);
        EXPECT(ra_stage1_register(st, o, &err) == 0);
        /* weights the stage must not touch: a copy of the x rows of layer 0's in_proj */
        const dm2_config *c0 = &s->layers[0].ssm_cfg;
        size_t nx = (size_t)dm2_d_inner(c0) * c0->d_model;
        float *xrows = malloc(nx * sizeof(float));
        memcpy(xrows, s->layers[0].ssm.in_proj_w, nx * sizeof(float));
        double first = 0, last = 0;
        for (int step = 0; step < 30; step++) {
            ra_optim_zero_grad(o);
            double L = 0;
            EXPECT(ra_stage1_loss(st, tokens, doc_start, B, T, 1.0f, 1, &L, &err) == 0);
            if (step == 0) first = L;
            last = L;
            EXPECT(ra_optim_step(o, 1e-2, &err) == 0);
        }
        EXPECT_MSG(last < 0.8 * first, "pure %d: loss %g -> %g", pure, first, last);
        EXPECT(memcmp(xrows, s->layers[0].ssm.in_proj_w, nx * sizeof(float)) == 0);
        free(xrows);
        ra_optim_free(o);
        ra_stage1_free(st);
        ra_model_free(s), ra_model_free(t);
    }
}

TEST(refusals) {
    ra_model *t = fx_teacher(0, 11), *other = fx_teacher(1, 12), *t2 = fx_teacher(0, 99);
    ra_model *s = student_of(t, "101001000000", RA_LAYOUT_ROUTED), *all = student_of(t, "all", RA_LAYOUT_ROUTED);
    ra_stage1 *st = NULL;
    ra_error err = {0};
    /* a teacher as the student */
    EXPECT_EQ_INT(ra_stage1_create(t, t, NULL, T, 0, &st, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "not a hybrid student") != NULL);
    /* a student as the teacher */
    EXPECT_EQ_INT(ra_stage1_create(s, s, NULL, T, 0, &st, &err), EX_DATAERR);
    /* another architecture */
    EXPECT_EQ_INT(ra_stage1_create(other, s, NULL, T, 0, &st, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "not a student of") != NULL);
    /* same architecture, other weights: the recorded teacher id differs */
    EXPECT_EQ_INT(ra_stage1_create(t2, s, NULL, T, 0, &st, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "meta.hybrid.teacher") != NULL);
    /* every head kept: no SSM head to train */
    EXPECT_EQ_INT(ra_stage1_create(t, all, NULL, T, 0, &st, &err), EX_USAGE);
    /* a layer without SSM heads chosen alone */
    ra_model *s1 = student_of(t, "000011110000", RA_LAYOUT_ROUTED);
    static const uint8_t only1[3] = {0, 1, 0};
    EXPECT_EQ_INT(ra_stage1_create(t, s1, only1, T, 0, &st, &err), EX_USAGE);
    /* memory bound */
    EXPECT_EQ_INT(ra_stage1_create(t, s, NULL, 4096, 1 << 20, &st, &err), EX_USAGE);
    EXPECT(strstr(err.msg, "--seq-len") != NULL);
    EXPECT(st == NULL);
    ra_model_free(s1);
    ra_model_free(s), ra_model_free(all), ra_model_free(t), ra_model_free(other), ra_model_free(t2);
}

int main(void) {
    RUN(pairing_routed_and_parallel);
    RUN(teacher_matrices_equal_float64_attention);
    RUN(objective_equals_float64);
    RUN(gradients_routed_mixed);
    RUN(gradients_pure_ssm);
    RUN(gradients_parallel);
    RUN(gradients_chosen_layers);
    RUN(loss_falls_with_adamw);
    RUN(refusals);
    return test_summary();
}
