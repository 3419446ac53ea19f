/* The CUDA training step (kernels/model_train_cuda.h) against the CPU step
 * (lib/model_train.h) on random teacher-shaped models (tests/gpu/
 * gpu_hybrid_fixture.h: head_dim 32 and 64, GQA, q/k/v and o biases, tied
 * and untied LM head, llama3 RoPE) and packed rows (documents restart
 * inside a row):
 *   - the micro-batch loss (ce and kd) and EVERY parameter gradient, as
 *     relative L2 per tensor (‖gpu − cpu‖ / ‖cpu‖).  Bars: the GPU computes
 *     every activation and activation gradient in bf16 (per element 2⁻⁹
 *     relative) through embedding, 3 layers and back, and attention rounds
 *     P and dS to bf16 as well; per-op errors of 2e-3..2e-2
 *     (test_gpu_backward.c) compound over ~40 ops: measured on an H200
 *     (tests/gpu/results/test-gpu-train-*.md) the loss is within 3e-4
 *     and every gradient within 2e-2, so the bars are 2e-3 for the loss
 *     (relative) and 4e-2 for parameter gradients.  The tied model's
 *     embedding is scaled down so its logits are O(1..10) as in trained
 *     models: with the fixture's unit-scale embedding as LM head the logits
 *     reach ±60, where bf16 logits (absolute error ~0.2) make any softmax
 *     difference noise;
 *   - evaluation (no gradients) gives the training loss's bits;
 *   - a few optimiser steps on the device lower the loss;
 *   - resume exactness: 4 steps in one go vs 2 steps, the state taken to the
 *     host (as a checkpoint does), a new trainer from it, 2 more steps: the
 *     same bits in every weight and moment;
 *   - the NaN hook: the step fails naming the parameter and changes nothing;
 *   - hybrid students (routed and parallel, kept heads, DM2 heads, both
 *     adapters, a pure-SSM student), ce and kd, saved and recomputed
 *     activations: loss and every gradient as above, with the bars of the
 *     hybrid forward (its SSD runs in bf16 too): 5e-3 loss, 8e-2 gradients;
 *   - stage 2 (per-layer L2 to the teacher's residuals) against
 *     lib/stage2.c, --train block and mixer, same bars;
 *   - stage 1 (Frobenius distance of the SSM heads' mixing matrices to the
 *     teacher's attention matrices) against lib/stage1.c, routed and
 *     parallel, all rows in one pass and one row per pass, same bars.
 * The largest error per tensor class is printed at the end. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_hybrid_fixture.h"
#include "model_train.h"
#include "model_train_cuda.h"
#include "ops_backward_cuda.h"
#include "ops_cuda.h"
#include "optim.h"
#include "stage1.h"
#include "stage2.h"
#include "test.h"
#include "gpu_test.h"

#define TOL_LOSS 2e-3
#define TOL_GRAD 4e-2
#define TOL_LOSS_HYBRID 5e-3
#define TOL_GRAD_HYBRID 8e-2

enum { B = 2, T = 128, N = B * T };

/* Row 0 one document; row 1 three (starts at 0, 40, 77). */
static int32_t doc_start[N];
static void make_doc_start(void) {
    for (int t = 0; t < T; t++) {
        doc_start[t] = 0;
        doc_start[T + t] = t >= 77 ? 77 : t >= 40 ? 40 : 0;
    }
}

/* ---- error table per tensor class ------------------------------------------ */

static const char *classes[] = {"embedding", "lm_head", "norms", "q/k/v weights", "biases", "o_proj", "mlp", "loss",
                                "hybrid: embedding", "hybrid: lm_head", "hybrid: norms", "hybrid: q/k/v weights",
                                "hybrid: biases", "hybrid: o_proj", "hybrid: mlp", "hybrid: loss", "hybrid: SSM in_proj",
                                "hybrid: SSM conv", "hybrid: SSM D, z_bias", "hybrid: SSM out_proj", "hybrid: adapter"};
enum { N_TEACHER_CLASSES = 8, N_CLASSES = sizeof classes / sizeof *classes };
static double class_max[N_CLASSES];

static int class_of(const char *name) {
    if (strstr(name, "mixer.in_proj")) return 8;
    if (strstr(name, "mixer.conv1d")) return 9;
    if (strstr(name, "mixer.D") || strstr(name, "mixer.z_bias")) return 10;
    if (strstr(name, "mixer.out_proj")) return 11;
    if (strstr(name, "attn_adapter")) return 12;
    if (strstr(name, "embed_tokens")) return 0;
    if (strstr(name, "lm_head")) return 1;
    if (strstr(name, "norm")) return 2;
    if (strstr(name, "bias")) return 4;
    if (strstr(name, "q_proj") || strstr(name, "k_proj") || strstr(name, "v_proj")) return 3;
    if (strstr(name, "o_proj")) return 5;
    return 6;
}

static void note(int cls, double e) {
    if (e > class_max[cls] || isnan(e)) class_max[cls] = e;
}

/* A tied model's embedding scaled by 1/16 (see the top of the file). */
static void scale_tied(ra_model *m) {
    if (m->lm_head != m->embed) return;
    size_t k = (size_t)m->cfg.vocab_size * m->cfg.hidden_size;
    for (size_t i = 0; i < k; i++) m->embed[i] = ra_bf16_to_f32(ra_f32_to_bf16(m->embed[i] / 16.0f));
}

/* A fixture teacher, scale_tied. */
static ra_model *teacher(int variant, uint64_t seed) {
    ra_model *m = gx_teacher(variant, seed);
    scale_tied(m);
    return m;
}

/* ---- one comparison ---------------------------------------------------------- */

typedef struct setup {
    ra_model_grads *g;
    ra_optim *o;
    cuda_model_train *ct;
} setup;

static int make_gpu(setup *s, ra_model *m, const ra_model *teacher) {
    ra_error err = {0, ""};
    s->g = ra_model_grads_create(m);
    s->o = ra_optim_create(NULL);
    if (ra_model_grads_register(s->g, s->o, &err) || cuda_model_train_create(&s->ct, m, teacher, s->o, B, T, &err) ||
        cuda_model_train_begin(s->ct, &err)) {
        printf("# set-up: %s\n", err.msg);
        EXPECT(0);
        return 1;
    }
    return 0;
}

static void free_gpu(setup *s) {
    cuda_model_train_free(s->ct);
    ra_optim_free(s->o);
    ra_model_grads_free(s->g);
}

static void compare(const char *name, ra_model *s, ra_model *t, ra_stage3_loss kind, float temp, uint64_t seed) {
    printf("# %s, loss %s\n", name, ra_stage3_loss_name(kind));
    test_seed(seed);
    int32_t *tok = gx_tokens(N, s->cfg.vocab_size);
    ra_error err = {0, ""};
    /* CPU reference */
    ra_model_train *mt = ra_model_train_create(s, kind == RA_LOSS_KD ? t : NULL, B, T, 0, &err);
    ra_model_grads *g = ra_model_grads_create(s);
    double l_cpu = 0, l_gpu = 0, l_eval = 0;
    int c_cpu = 0, c_gpu = 0;
    EXPECT(mt && ra_model_train_step(mt, g, kind, tok, doc_start, NULL, B, T, temp, 1.0f, &l_cpu, &c_cpu, &err) == 0);
    /* GPU */
    setup G;
    if (make_gpu(&G, s, kind == RA_LOSS_KD ? t : NULL)) goto done;
    cuda_model_train_zero_grad(G.ct);
    EXPECT(cuda_model_train_step(G.ct, 1, kind, tok, doc_start, NULL, B, T, temp, 1.0f, &l_gpu, &c_gpu, &err) == 0);
    EXPECT_EQ_INT(c_gpu, kind == RA_LOSS_CE ? c_cpu : 0);
    double le = fabs(l_gpu - l_cpu) / fabs(l_cpu);
    printf("#   %-64s cpu %.6f gpu %.6f rel %.2e\n", "loss", l_cpu, l_gpu, le);
    note(N_TEACHER_CLASSES - 1 + (s->hybrid ? N_TEACHER_CLASSES : 0), le);
    double tol_loss = s->hybrid ? TOL_LOSS_HYBRID : TOL_LOSS, tol_grad = s->hybrid ? TOL_GRAD_HYBRID : TOL_GRAD;
    EXPECT_MSG(le <= tol_loss, "loss: relative error %.3e > %.1e", le, tol_loss);
    for (int i = 0; i < g->n; i++) {
        int64_t numel = ra_tensor_numel(&g->t[i]);
        float *gg = xmalloc((size_t)numel * sizeof(float));
        EXPECT(cuda_model_train_grad(G.ct, g->t[i].name, gg, &err) == 0);
        note(class_of(g->t[i].name) + (s->hybrid ? N_TEACHER_CLASSES : 0),
             gx_check(g->t[i].name, gg, g->grad[i], (size_t)numel, tol_grad));
        free(gg);
    }
    /* evaluation: the same forward, no gradients */
    EXPECT(cuda_model_train_step(G.ct, 0, kind, tok, doc_start, NULL, B, T, temp, 1.0f, &l_eval, NULL, &err) == 0);
    EXPECT_MSG(l_eval == l_gpu, "eval loss %.9g != training loss %.9g", l_eval, l_gpu);
    free_gpu(&G);
done:
    ra_model_grads_free(g);
    ra_model_train_free(mt);
    free(tok);
}

TEST(teacher_shaped_ce_and_kd_match_cpu) {
    static const char *names[] = {"llama3 untied, hd 32, GQA 4", "qwen2 tied, q/k/v biases, hd 64",
                                  "llama attention_bias, hd 32, one KV head"};
    for (int v = 0; v < 3; v++) {
        ra_model *s = teacher(v, 100 + v), *t = teacher(v, 200 + v);
        compare(names[v], s, NULL, RA_LOSS_CE, 1.0f, 300 + v);
        if (v < 2) compare(names[v], s, t, RA_LOSS_KD, v ? 2.0f : 1.0f, 400 + v);
        ra_model_free(s), ra_model_free(t);
    }
}

/* ---- training behaviour ------------------------------------------------------- */

static double train_steps(setup *G, const int32_t *tok, int steps, double lr, double *first) {
    ra_error err = {0, ""};
    double loss = 0;
    for (int k = 0; k < steps; k++) {
        cuda_model_train_zero_grad(G->ct);
        if (cuda_model_train_step(G->ct, 1, RA_LOSS_CE, tok, doc_start, NULL, B, T, 1.0f, 1.0f, &loss, NULL, &err) ||
            cuda_model_train_optim_step(G->ct, lr, 0, &err)) {
            printf("# step %d: %s\n", k, err.msg);
            EXPECT(0);
            return NAN;
        }
        if (k == 0 && first) *first = loss;
    }
    return loss;
}

TEST(optimiser_steps_lower_the_loss) {
    ra_model *s = teacher(1, 7);
    test_seed(8);
    int32_t *tok = gx_tokens(N, s->cfg.vocab_size);
    setup G;
    if (!make_gpu(&G, s, NULL)) {
        double first = 0, last = train_steps(&G, tok, 10, 3e-3, &first);
        printf("#   loss %.4f -> %.4f after 10 steps\n", first, last);
        EXPECT(last < first - 0.2);
        EXPECT(G.o->step == 10);
        free_gpu(&G);
    }
    free(tok);
    ra_model_free(s);
}

/* Every weight and moment of the host optimiser, after a download. */
static float *snapshot(const ra_optim *o, size_t *count) {
    size_t n = 0;
    for (int i = 0; i < o->n; i++) n += (size_t)o->params[i].numel * 3;
    float *x = xcalloc(n, sizeof(float)), *p = x;
    for (int i = 0; i < o->n; i++) {
        size_t k = (size_t)o->params[i].numel;
        memcpy(p, o->params[i].w, k * 4), p += k;
        if (o->params[i].m) memcpy(p, o->params[i].m, k * 4);
        p += k;
        if (o->params[i].v) memcpy(p, o->params[i].v, k * 4);
        p += k;
    }
    *count = n;
    return x;
}

TEST(resume_is_bit_exact) {
    test_seed(9);
    ra_model *a = gx_teacher(0, 11), *b = gx_teacher(0, 11);
    int32_t *tok = gx_tokens(N, a->cfg.vocab_size);
    setup A, Bs, C;
    size_t na = 0, nb = 0;
    float *sa = NULL, *sb = NULL;
    if (make_gpu(&A, a, NULL)) goto out;
    train_steps(&A, tok, 4, 2e-3, NULL);
    cuda_model_train_download(A.ct);
    sa = snapshot(A.o, &na);
    if (make_gpu(&Bs, b, NULL)) goto out_a;
    train_steps(&Bs, tok, 2, 2e-3, NULL);
    cuda_model_train_download(Bs.ct); /* what a checkpoint writes */
    cuda_model_train_free(Bs.ct);
    Bs.ct = NULL;
    {
        ra_error err = {0, ""};
        C = Bs;
        if (cuda_model_train_create(&C.ct, b, NULL, C.o, B, T, &err) || cuda_model_train_begin(C.ct, &err)) {
            printf("# resume: %s\n", err.msg);
            EXPECT(0);
        } else {
            EXPECT(C.o->step == 2);
            train_steps(&C, tok, 2, 2e-3, NULL);
            cuda_model_train_download(C.ct);
            sb = snapshot(C.o, &nb);
            EXPECT(na == nb && memcmp(sa, sb, na * 4) == 0);
            size_t diff = 0;
            for (size_t i = 0; i < na && i < nb; i++) diff += memcmp(&sa[i], &sb[i], 4) != 0;
            printf("#   resumed run: %zu of %zu weight/moment elements differ\n", diff, na);
            EXPECT(C.o->step == 4);
        }
        free_gpu(&C);
    }
out_a:
    free_gpu(&A);
out:
    free(sa), free(sb), free(tok);
    ra_model_free(a), ra_model_free(b);
}

TEST(nan_hook_changes_nothing) {
    ra_model *s = gx_teacher(2, 13);
    test_seed(14);
    int32_t *tok = gx_tokens(N, s->cfg.vocab_size);
    setup G;
    if (!make_gpu(&G, s, NULL)) {
        train_steps(&G, tok, 1, 1e-3, NULL);
        cuda_model_train_download(G.ct);
        size_t n0, n1;
        float *before = snapshot(G.o, &n0);
        ra_error err = {0, ""};
        double loss;
        cuda_model_train_zero_grad(G.ct);
        EXPECT(cuda_model_train_step(G.ct, 1, RA_LOSS_CE, tok, doc_start, NULL, B, T, 1.0f, 1.0f, &loss, NULL, &err) == 0);
        int rc = cuda_model_train_optim_step(G.ct, 1e-3, 1, &err);
        EXPECT(rc == EX_SOFTWARE && strstr(err.msg, "NaN") && strstr(err.msg, "model.embed_tokens.weight"));
        printf("#   %s\n", err.msg);
        EXPECT(G.o->step == 1);
        cuda_model_train_download(G.ct);
        float *after = snapshot(G.o, &n1);
        EXPECT(n0 == n1 && memcmp(before, after, n0 * 4) == 0);
        free(before), free(after);
        free_gpu(&G);
    }
    free(tok);
    ra_model_free(s);
}

/* Hybrid students (tests/gpu/gpu_hybrid_fixture.h cases): routed with the
 * static adapter (a layer keeping every head, one keeping none), routed
 * without adapter (Qwen2 biases, hd 64, tied), parallel with the learned
 * adapter, a pure-SSM parallel student; kd on one of them; and the routed
 * one again with activations recomputed in the backward. */
TEST(hybrid_students_match_cpu) {
    static const gx_case cases[] = {
        {"routed static, llama3", 0, "010010001111111100000000", RA_LAYOUT_ROUTED, RA_ADAPTER_STATIC, 8, 32},
        {"routed none, qwen2 biases hd64 tied", 1, "100100000110", RA_LAYOUT_ROUTED, RA_ADAPTER_NONE, 16, 16},
        {"parallel linear, llama3", 0, "000100001100000000000001", RA_LAYOUT_PARALLEL, RA_ADAPTER_LINEAR, 8, 64},
        {"parallel linear, MQA o bias", 2, "100000001111", RA_LAYOUT_PARALLEL, RA_ADAPTER_LINEAR, 12, 32},
        {"pure SSM parallel", 1, "", RA_LAYOUT_PARALLEL, RA_ADAPTER_LINEAR, 8, 32},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        ra_model *s = gx_model(&cases[i], 500 + i);
        scale_tied(s);
        compare(cases[i].name, s, NULL, RA_LOSS_CE, 1.0f, 600 + i);
        if (i == 0) {
            ra_model *t = teacher(0, 500); /* the one the student was grafted from */
            compare(cases[i].name, s, t, RA_LOSS_KD, 1.0f, 601);
            setenv("RA_TRAIN_RECOMPUTE", "1", 1);
            compare("routed static, llama3, recomputed activations", s, NULL, RA_LOSS_CE, 1.0f, 602);
            unsetenv("RA_TRAIN_RECOMPUTE");
            ra_model_free(t);
        }
        ra_model_free(s);
    }
}

/* A stage's GPU step against its CPU step (hybrid bars): the loss, and the
 * gradient of every parameter of o, whose host gradients hold the CPU's. */
static void check_stage(const char *stage, cuda_model_train *ct, const ra_optim *o, double l_cpu, double l_gpu) {
    ra_error err = {0, ""};
    double le = fabs(l_gpu - l_cpu) / fabs(l_cpu);
    printf("#   %-64s cpu %.6f gpu %.6f rel %.2e\n", "loss (sum over layers)", l_cpu, l_gpu, le);
    note(N_TEACHER_CLASSES - 1 + N_TEACHER_CLASSES, le);
    EXPECT_MSG(le <= TOL_LOSS_HYBRID, "%s loss: relative error %.3e", stage, le);
    for (int i = 0; i < o->n; i++) {
        float *gg = xmalloc((size_t)o->params[i].numel * sizeof(float));
        EXPECT(cuda_model_train_grad(ct, o->params[i].name, gg, &err) == 0);
        note(class_of(o->params[i].name) + N_TEACHER_CLASSES,
             gx_check(o->params[i].name, gg, o->params[i].g, (size_t)o->params[i].numel, TOL_GRAD_HYBRID));
        free(gg);
    }
}

/* Stage 2 (cuda_stage2_train_*) against lib/stage2.c: layers 0 and 2 of a
 * routed hybrid, --train block and --train mixer; loss and every trained
 * parameter's gradient (hybrid bars). */
TEST(stage2_matches_cpu) {
    gx_case c = {"routed static, llama3", 0, "010010001111111100000000", RA_LAYOUT_ROUTED, RA_ADAPTER_STATIC, 8, 32};
    ra_model *s = gx_model(&c, 500), *t = gx_teacher(0, 500);
    int layers[] = {0, 2};
    test_seed(31);
    int32_t *tok = gx_tokens(N, s->cfg.vocab_size);
    for (int mixer_only = 0; mixer_only < 2; mixer_only++) {
        printf("# stage 2, layers 0 and 2, --train %s\n", mixer_only ? "mixer" : "block");
        ra_error err = {0, ""};
        ra_stage2 *cs = NULL;
        ra_optim *o = ra_optim_create(NULL);
        cuda_model_train *ct = NULL;
        double l_cpu = 0, l_gpu = 0;
        ra_train_batch b = {B, T, tok, doc_start, NULL, 0, 0, 0};
        if (ra_stage2_create(t, s, layers, 2, mixer_only, B, T, &cs, &err) || ra_stage2_register(cs, o, &err) ||
            (ra_optim_zero_grad(o), ra_stage2_micro_step(cs, &b, 1.0f, &l_cpu, &err)) ||
            cuda_stage2_train_create(&ct, s, t, o, layers, 2, B, T, &err) || cuda_model_train_begin(ct, &err)) {
            printf("# set-up: %s\n", err.msg);
            EXPECT(0);
        } else {
            cuda_model_train_zero_grad(ct);
            EXPECT(cuda_stage2_train_step(ct, 1, tok, doc_start, B, T, 1.0f, &l_gpu, &err) == 0);
            check_stage("stage 2", ct, o, l_cpu, l_gpu);
        }
        cuda_model_train_free(ct);
        ra_optim_free(o);
        ra_stage2_free(cs);
    }
    free(tok);
    ra_model_free(s), ra_model_free(t);
}

/* Stage 1 (cuda_stage1_train_*) against lib/stage1.c on the layers with
 * SSM heads: loss and every trained slice's gradient (hybrid bars), with
 * the matrices of both rows made at once and, with max_bytes of one row,
 * one row per pass. */
TEST(stage1_matches_cpu) {
    static const gx_case cases[] = {
        {"routed static, llama3", 0, "010010001111111100000000", RA_LAYOUT_ROUTED, RA_ADAPTER_STATIC, 8, 32},
        {"parallel linear, MQA o bias", 2, "100000001111", RA_LAYOUT_PARALLEL, RA_ADAPTER_LINEAR, 12, 32},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        ra_model *s = gx_model(&cases[k], 510 + k), *t = gx_teacher(cases[k].variant, 510 + k);
        test_seed(41 + k);
        int32_t *tok = gx_tokens(N, s->cfg.vocab_size);
        ra_error err = {0, ""};
        ra_stage1 *cs = NULL;
        ra_optim *o = ra_optim_create(NULL);
        double l_cpu = 0;
        if (ra_stage1_create(t, s, NULL, T, 0, &cs, &err) || ra_stage1_register(cs, o, &err) ||
            (ra_optim_zero_grad(o), ra_stage1_loss(cs, tok, doc_start, B, T, 1.0f, 1, &l_cpu, &err))) {
            printf("# set-up: %s\n", err.msg);
            EXPECT(0);
            goto next;
        }
        int n = ra_stage1_n_layers(cs), layers[8], hs = 0;
        for (int i = 0; i < n; i++) {
            layers[i] = ra_stage1_layer(cs, i);
            if (s->layers[layers[i]].n_ssm_heads > hs) hs = s->layers[layers[i]].n_ssm_heads;
        }
        for (int one_row = 0; one_row < 2; one_row++) {
            int64_t max_bytes = one_row ? 2 * (int64_t)hs * T * T * 4 : 0;
            printf("# stage 1, %s, %d layers, %s\n", cases[k].name, n, one_row ? "one row per pass" : "all rows at once");
            cuda_model_train *ct = NULL;
            double l_gpu = 0, l_eval = 0;
            if (cuda_stage1_train_create(&ct, s, t, o, layers, n, B, T, max_bytes, &err) ||
                cuda_model_train_begin(ct, &err)) {
                printf("# set-up: %s\n", err.msg);
                EXPECT(0);
                cuda_model_train_free(ct);
                continue;
            }
            cuda_model_train_zero_grad(ct);
            EXPECT(cuda_stage1_train_step(ct, 1, tok, doc_start, B, T, 1.0f, &l_gpu, &err) == 0);
            check_stage("stage 1", ct, o, l_cpu, l_gpu);
            EXPECT(cuda_stage1_train_step(ct, 0, tok, doc_start, B, T, 1.0f, &l_eval, &err) == 0);
            EXPECT_MSG(l_eval == l_gpu, "stage 1 eval loss %.9g != training loss %.9g", l_eval, l_gpu);
            cuda_model_train_free(ct);
        }
    next:
        ra_optim_free(o);
        ra_stage1_free(cs);
        free(tok);
        ra_model_free(s), ra_model_free(t);
    }
}

int main(void) {
    if (gpu_test_start()) return 1;
    make_doc_start();
    RUN(teacher_shaped_ce_and_kd_match_cpu);
    RUN(optimiser_steps_lower_the_loss);
    RUN(resume_is_bit_exact);
    RUN(nan_hook_changes_nothing);
    RUN(hybrid_students_match_cpu);
    RUN(stage2_matches_cpu);
    RUN(stage1_matches_cpu);
    printf("# largest relative L2 error per class (bars: loss %.0e, gradients %.0e; hybrids %.0e, %.0e):\n", TOL_LOSS,
           TOL_GRAD, TOL_LOSS_HYBRID, TOL_GRAD_HYBRID);
    for (int c = 0; c < N_CLASSES; c++) printf("#   %-16s %.2e\n", classes[c], class_max[c]);
    cuda_train_scratch_free();
    return test_summary();
}
