/* lib/model_train: whole-model stage-3 training on the CPU.
 *  - the forward loss equals the loss computed in float64 by this test from
 *    ra_forward_cpu's full logits (kd and ce, several vocabulary chunkings);
 *  - the backward matches central finite differences of the whole-model
 *    loss for a random sample of elements of EVERY parameter tensor, for
 *    teachers (GQA, biases, tied and untied LM head), a routed and a
 *    parallel hybrid, with kd (temperature 2) and ce, on packed rows;
 *  - gradients register with lib/optim.h under the model tensor names;
 *  - a few AdamW steps lower the kd and the ce loss. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "forward.h"
#include "gradcheck.h"
#include "hybrid_fixture.h"
#include "model_train.h"

enum { B = 2, T = 7, N = B * T };

/* Row 0 one document, row 1 two (a start at t = 3). */
static const int32_t doc_start[N] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 3, 3, 3};

static void random_tokens(int32_t *tok, int V) {
    for (int i = 0; i < N; i++) tok[i] = (int32_t)(test_rand_u64() % (uint64_t)V);
}

/* A student and its teacher.  kind 0..2: a teacher of fixture variant kind
 * trained against another teacher of that variant; 3: routed hybrid of
 * variant 0; 4: parallel hybrid of variant 0; 5: routed hybrid of variant 1
 * (tied, biases, hd ≠ D/H).  Hybrid weights are randomised after grafting so
 * conv taps, z rows and adapters are not at their special initial values. */
typedef struct {
    ra_model *s, *t;
    const char *name;
} pair;

static pair make_pair(int kind) {
    pair p = {0};
    static const char *names[] = {"teacher llama untied", "teacher qwen2 tied", "teacher llama o-bias",
                                  "routed hybrid",        "parallel hybrid",    "routed hybrid qwen2 tied"};
    p.name = names[kind];
    int variant = kind < 3 ? kind : kind == 5 ? 1 : 0;
    p.t = fx_teacher(variant, 11);
    if (kind < 3) {
        p.s = fx_teacher(variant, 23);
        return p;
    }
    const char *bits = kind == 5 ? "100100010000000000" : "101001000000";
    ra_layout layout = kind == 4 ? RA_LAYOUT_PARALLEL : RA_LAYOUT_ROUTED;
    p.s = fx_graft(p.t, bits, layout, kind == 4 ? RA_ADAPTER_LINEAR : RA_ADAPTER_STATIC, 5, RA_INIT_MOHAWK, 3);
    if (p.s) {
        fx_fill_model(p.s, 77);
        snprintf(p.s->source, sizeof p.s->source, "student");
    }
    return p;
}

static void free_pair(pair *p) { ra_model_free(p->s), ra_model_free(p->t); }

/* ------------------------------------------------- float64 reference */

static double lse64(const float *z, int V, double scale) {
    double m = -INFINITY, s = 0;
    for (int v = 0; v < V; v++) m = fmax(m, z[v] * scale);
    for (int v = 0; v < V; v++) s += exp(z[v] * scale - m);
    return m + log(s);
}

static float *full_logits(const ra_model *m, const int32_t *tok) {
    float *z = calloc((size_t)N * m->cfg.vocab_size, sizeof(float));
    ra_forward_state *fs = ra_forward_state_create(m, B, T);
    ra_forward_opts o = {0};
    o.doc_start = doc_start, o.logits = z;
    ra_error err = {0};
    EXPECT(ra_forward_cpu(fs, tok, B, T, &o, &err) == 0);
    ra_forward_state_free(fs);
    return z;
}

static double reference_kd(const float *zs, const float *zt, int V, double temp) {
    double sum = 0;
    for (int i = 0; i < N; i++) {
        const float *s = zs + (size_t)i * V, *t = zt + (size_t)i * V;
        double ls = lse64(s, V, 1 / temp), lt = lse64(t, V, 1), ce = ls;
        for (int v = 0; v < V; v++) ce -= exp(t[v] - lt) * s[v] / temp;
        sum += ce;
    }
    return sum / N;
}

/* Next-token labels written out independently of the library. */
static double reference_ce(const float *z, const int32_t *tok, int V, int *counted) {
    double sum = 0;
    int cnt = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t + 1 < T; t++) {
            int i = b * T + t;
            if (doc_start[i + 1] != doc_start[i]) continue; /* document ends at t */
            sum += lse64(z + (size_t)i * V, V, 1) - z[(size_t)i * V + tok[i + 1]];
            cnt++;
        }
    *counted = cnt;
    return sum / cnt;
}

TEST(forward_loss_equals_loss_of_library_logits) {
    for (int kind = 0; kind < 6; kind++) {
        pair p = make_pair(kind);
        EXPECT(p.s != NULL);
        if (!p.s) continue;
        int V = p.s->cfg.vocab_size;
        int32_t tok[N];
        test_seed(500 + kind);
        random_tokens(tok, V);
        float *zs = full_logits(p.s, tok), *zt = full_logits(p.t, tok);
        int cnt_ref;
        double kd_ref = reference_kd(zs, zt, V, 2.0), ce_ref = reference_ce(zs, tok, V, &cnt_ref);
        /* logit chunks of 1, 3 (uneven: 14 = 4·3 + 2) and all rows */
        int elems[] = {1, 3 * V, 0};
        for (int e = 0; e < 3; e++) {
            ra_error err = {0};
            ra_model_train *mt = ra_model_train_create(p.s, p.t, B, T, elems[e], &err);
            EXPECT_MSG(mt != NULL, "%s: %s", p.name, err.msg);
            if (!mt) continue;
            EXPECT_EQ_INT(ra_model_train_logit_rows(mt), e == 0 ? 1 : e == 1 ? 3 : N);
            double kd = 0, ce = 0;
            int cnt = 0;
            EXPECT(ra_model_train_step(mt, NULL, RA_LOSS_KD, tok, doc_start, NULL, B, T, 2.0f, 1, &kd, NULL, &err) == 0);
            EXPECT(ra_model_train_step(mt, NULL, RA_LOSS_CE, tok, doc_start, NULL, B, T, 1, 1, &ce, &cnt, &err) == 0);
            EXPECT_MSG(fabs(kd - kd_ref) <= 1e-5 * fabs(kd_ref) + 1e-6, "%s chunk %d: kd %.9g, reference %.9g", p.name,
                       e, kd, kd_ref);
            EXPECT_MSG(fabs(ce - ce_ref) <= 1e-5 * fabs(ce_ref) + 1e-6, "%s chunk %d: ce %.9g, reference %.9g", p.name,
                       e, ce, ce_ref);
            EXPECT_EQ_INT(cnt, cnt_ref);
            ra_model_train_free(mt);
        }
        free(zs), free(zt);
        free_pair(&p);
    }
}

/* ------------------------------------------------ finite differences */

typedef struct {
    ra_model_train *mt;
    ra_stage3_loss kind;
    const int32_t *tok;
} fd_ctx;

static double objective(void *p) {
    fd_ctx *c = p;
    double loss = 0;
    ra_error err = {0};
    int rc = ra_model_train_step(c->mt, NULL, c->kind, c->tok, doc_start, NULL, B, T, 2.0f, 1, &loss, NULL, &err);
    return rc ? NAN : loss;
}

static void check_gradients(int kind, ra_stage3_loss loss) {
    pair p = make_pair(kind);
    EXPECT(p.s != NULL);
    if (!p.s) return;
    int32_t tok[N];
    test_seed(900 + kind);
    random_tokens(tok, p.s->cfg.vocab_size);
    ra_error err = {0};
    ra_model_train *mt = ra_model_train_create(p.s, loss == RA_LOSS_KD ? p.t : NULL, B, T, 4 * p.s->cfg.vocab_size, &err);
    ra_model_grads *g = ra_model_grads_create(p.s);
    ra_model_grads_zero(g);
    double l1, l2;
    /* dloss 0.25 + 0.75: accumulation adds up to the full gradient */
    EXPECT(ra_model_train_step(mt, g, loss, tok, doc_start, NULL, B, T, 2.0f, 0.25f, &l1, NULL, &err) == 0);
    EXPECT(ra_model_train_step(mt, g, loss, tok, doc_start, NULL, B, T, 2.0f, 0.75f, &l2, NULL, &err) == 0);
    EXPECT(l1 == l2 && l1 > 0);
    fd_ctx c = {mt, loss, tok};
    for (int i = 0; i < g->n; i++) {
        char what[200];
        snprintf(what, sizeof what, "%s %s: %s", p.name, ra_stage3_loss_name(loss), g->t[i].name);
        gc_check(what, *g->t[i].data, (size_t)ra_tensor_numel(&g->t[i]), g->grad[i], objective, &c, 8, 2e-3f, 3e-2);
    }
    ra_model_grads_free(g);
    ra_model_train_free(mt);
    free_pair(&p);
}

TEST(teacher_gradients_kd) { for (int k = 0; k < 3; k++) check_gradients(k, RA_LOSS_KD); }
TEST(teacher_gradients_ce) { for (int k = 0; k < 3; k++) check_gradients(k, RA_LOSS_CE); }
TEST(routed_hybrid_gradients) {
    check_gradients(3, RA_LOSS_KD), check_gradients(3, RA_LOSS_CE);
    check_gradients(5, RA_LOSS_KD), check_gradients(5, RA_LOSS_CE);
}
TEST(parallel_hybrid_gradients) { check_gradients(4, RA_LOSS_KD), check_gradients(4, RA_LOSS_CE); }

/* ------------------------------------------------------- plumbing */

TEST(gradients_register_by_tensor_name) {
    pair p = make_pair(1); /* tied: lm_head is the embedding, not a parameter of its own */
    ra_model_grads *g = ra_model_grads_create(p.s);
    ra_model_tensor *t;
    int n = ra_model_tensor_list(p.s, &t);
    ra_optim *o = ra_optim_create(NULL);
    ra_error err = {0};
    EXPECT(ra_model_grads_register(g, o, &err) == 0);
    EXPECT_EQ_INT(o->n, n);
    EXPECT(g->lm_head == g->embed);
    for (int i = 0; i < n && i < o->n; i++) {
        EXPECT_STR(o->params[i].name, t[i].name);
        EXPECT(o->params[i].w == *t[i].data);
        EXPECT(o->params[i].g == g->grad[i]);
        EXPECT_EQ_INT(o->params[i].numel, ra_tensor_numel(&t[i]));
    }
    for (int i = 0; i < g->n; i++) g->grad[i][0] = 1;
    ra_optim_zero_grad(o);
    for (int i = 0; i < g->n; i++) EXPECT(g->grad[i][0] == 0);
    free(t);
    ra_optim_free(o);
    ra_model_grads_free(g);
    free_pair(&p);
}

TEST(labels_and_errors) {
    int32_t tok[N], lab[N];
    for (int i = 0; i < N; i++) tok[i] = 100 + i;
    ra_next_token_labels(lab, tok, doc_start, B, T);
    for (int i = 0; i < N; i++) {
        int t = i % T, end = t == T - 1 || doc_start[i + 1] != doc_start[i];
        EXPECT_EQ_INT(lab[i], end ? RA_LABEL_IGNORE : 101 + i);
    }
    ra_next_token_labels(lab, tok, NULL, B, T);
    EXPECT_EQ_INT(lab[2], 103);
    EXPECT_EQ_INT(lab[9], 110);

    pair p = make_pair(3);
    ra_error err = {0};
    ra_model_train *mt = ra_model_train_create(p.s, NULL, B, T, 0, &err);
    test_seed(5);
    random_tokens(tok, p.s->cfg.vocab_size);
    double loss;
    EXPECT_EQ_INT(ra_model_train_step(mt, NULL, RA_LOSS_KD, tok, NULL, NULL, B, T, 1, 1, &loss, NULL, &err), EX_USAGE);
    tok[9] = p.s->cfg.vocab_size;
    EXPECT_EQ_INT(ra_model_train_step(mt, NULL, RA_LOSS_CE, tok, NULL, NULL, B, T, 1, 1, &loss, NULL, &err),
                  EX_DATAERR);
    EXPECT(strstr(err.msg, "row 1 position 2") != NULL);
    tok[9] = 0;
    for (int i = 0; i < N; i++) lab[i] = RA_LABEL_IGNORE;
    lab[4] = -3;
    EXPECT_EQ_INT(ra_model_train_step(mt, NULL, RA_LOSS_CE, tok, NULL, lab, B, T, 1, 1, &loss, NULL, &err), EX_DATAERR);
    lab[4] = RA_LABEL_IGNORE;
    int cnt = -1;
    EXPECT(ra_model_train_step(mt, NULL, RA_LOSS_CE, tok, NULL, lab, B, T, 1, 1, &loss, &cnt, &err) == 0);
    EXPECT(loss == 0 && cnt == 0);
    ra_model_train_free(mt);

    /* teacher/student mismatches */
    EXPECT(ra_stage3_check_pair(p.t, p.s, &err) == 0);
    snprintf(p.t->content_id, sizeof p.t->content_id, "%032d", 7);
    EXPECT_EQ_INT(ra_stage3_check_pair(p.t, p.s, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "meta.hybrid.teacher") != NULL);
    EXPECT(ra_model_train_create(p.s, p.t, B, T, 0, &err) == NULL);
    ra_model *other = fx_teacher(1, 3); /* D 40, not 32 */
    EXPECT_EQ_INT(ra_stage3_check_pair(other, p.s, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "hidden size") != NULL);
    ra_model_free(other);
    free_pair(&p);
}

/* Releasing the gradients of frozen parameters changes nothing else: the
 * remaining gradients are bit for bit those of a full backward. */
TEST(release_frozen_gradients) {
    for (int kind = 1; kind <= 3; kind += 2) { /* tied teacher, routed hybrid */
        pair p = make_pair(kind);
        int32_t tok[N];
        test_seed(31);
        random_tokens(tok, p.s->cfg.vocab_size);
        ra_error err = {0};
        ra_model_train *mt = ra_model_train_create(p.s, p.t, B, T, 0, &err);
        ra_model_grads *full = ra_model_grads_create(p.s), *part = ra_model_grads_create(p.s);
        ra_optim *o = ra_optim_create(NULL);
        EXPECT(ra_model_grads_register(part, o, &err) == 0);
        /* tied: no lm_head tensor; mixer parameters keep their arrays even when frozen */
        const char *freeze = kind == 1 ? "embed,mlp,norm" : "embed,mlp,norm,lm_head,layers.1.self_attn";
        EXPECT_MSG(ra_optim_freeze(o, freeze, &err) == 0, "%s", err.msg);
        int64_t released = ra_model_grads_release_frozen(part, o);
        int64_t expect = 0;
        for (int i = 0; i < o->n; i++) {
            const char *nm = o->params[i].name;
            int mixer = strstr(nm, ".self_attn.") || strstr(nm, ".mixer.");
            EXPECT_MSG((o->params[i].g == NULL) == (o->params[i].frozen && !mixer), "%s", nm);
            EXPECT((part->grad[i] == NULL) == (o->params[i].g == NULL));
            if (!o->params[i].g) expect += o->params[i].numel;
        }
        EXPECT(released == expect && released > 0);
        ra_model_grads_zero(full);
        ra_optim_zero_grad(o);
        double l1, l2;
        EXPECT(ra_model_train_step(mt, full, RA_LOSS_KD, tok, doc_start, NULL, B, T, 1, 1, &l1, NULL, &err) == 0);
        EXPECT(ra_model_train_step(mt, part, RA_LOSS_KD, tok, doc_start, NULL, B, T, 1, 1, &l2, NULL, &err) == 0);
        EXPECT(l1 == l2);
        for (int i = 0; i < part->n; i++)
            if (part->grad[i])
                EXPECT_MSG(memcmp(part->grad[i], full->grad[i], (size_t)ra_tensor_numel(&part->t[i]) * sizeof(float)) == 0,
                           "%s differs", part->t[i].name);
        ra_optim_free(o);
        ra_model_grads_free(full), ra_model_grads_free(part);
        ra_model_train_free(mt);
        free_pair(&p);
    }
}

/* A few AdamW steps on one batch lower the loss (kd: a routed student
 * towards its teacher; ce: a teacher-shaped model on its labels). */
static double train_steps(int kind, ra_stage3_loss loss, int steps, double *first) {
    pair p = make_pair(kind);
    int32_t tok[N];
    test_seed(77);
    random_tokens(tok, p.s->cfg.vocab_size);
    ra_error err = {0};
    ra_model_train *mt = ra_model_train_create(p.s, loss == RA_LOSS_KD ? p.t : NULL, B, T, 0, &err);
    ra_model_grads *g = ra_model_grads_create(p.s);
    ra_optim *o = ra_optim_create(NULL);
    EXPECT(ra_model_grads_register(g, o, &err) == 0);
    double l = 0;
    for (int s = 0; s <= steps; s++) {
        ra_optim_zero_grad(o);
        EXPECT(ra_model_train_step(mt, s < steps ? g : NULL, loss, tok, doc_start, NULL, B, T, 1, 1, &l, NULL, &err) ==
               0);
        if (s == 0) *first = l;
        if (s < steps) EXPECT(ra_optim_step(o, 3e-3, &err) == 0);
    }
    ra_optim_free(o);
    ra_model_grads_free(g);
    ra_model_train_free(mt);
    free_pair(&p);
    return l;
}

TEST(losses_fall) {
    double first, last = train_steps(3, RA_LOSS_KD, 20, &first);
    /* kd loss = KL + the teacher's entropy: compare the KL part through the drop */
    EXPECT_MSG(last < first - 0.05, "kd: %.6f → %.6f", first, last);
    last = train_steps(0, RA_LOSS_CE, 20, &first);
    EXPECT_MSG(last < 0.8 * first, "ce: %.6f → %.6f", first, last);
}

int main(void) {
    RUN(forward_loss_equals_loss_of_library_logits);
    RUN(teacher_gradients_kd);
    RUN(teacher_gradients_ce);
    RUN(routed_hybrid_gradients);
    RUN(parallel_hybrid_gradients);
    RUN(gradients_register_by_tensor_name);
    RUN(labels_and_errors);
    RUN(release_frozen_gradients);
    RUN(losses_fall);
    return test_summary();
}
