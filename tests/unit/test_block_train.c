/* lib/block_train: the block forward equals the library forward of that
 * layer, and the backward of the stage-2 loss matches central finite
 * differences for every parameter of routed and parallel layers with a mix
 * of kept and SSM heads, and of a pure-SSM layer. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block_train.h"
#include "forward.h"
#include "gradcheck.h"
#include "hybrid_fixture.h"
#include "loss.h"

enum { B = 2, T = 7 };

/* Row 0 one document, row 1 two (a start at t = 3). */
static const int32_t doc_start[B * T] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 3, 3, 3};

/* Student of teacher variant 0 (H 4): layer 0 keeps heads 0 and 2, layer 1
 * head 1, layer 2 none; every weight then randomised so conv, z rows and
 * the adapter are not at their special initial values. */
static ra_model *student(ra_layout layout) {
    ra_model *t = fx_teacher(0, 11);
    ra_model *s = fx_graft(t, "101001000000", layout, layout == RA_LAYOUT_PARALLEL ? RA_ADAPTER_LINEAR : RA_ADAPTER_STATIC,
                           5, RA_INIT_MOHAWK, 3);
    ra_model_free(t);
    if (s) fx_fill_model(s, 77);
    return s;
}

TEST(block_forward_equals_library_forward) {
    for (int lay = 0; lay < 2; lay++) {
        ra_model *m = student(lay ? RA_LAYOUT_PARALLEL : RA_LAYOUT_ROUTED);
        EXPECT(m != NULL);
        if (!m) continue;
        int D = m->cfg.hidden_size, L = m->cfg.num_layers;
        for (int layer = 1; layer < L; layer++) {
            float *x = gc_rnd((size_t)B * T * D, 1.0f), *ref = calloc((size_t)B * T * D, sizeof(float));
            float *out = calloc((size_t)B * T * D, sizeof(float));
            float *hid[8] = {0};
            hid[layer + 1] = ref;
            ra_forward_state *fs = ra_forward_state_create(m, B, T);
            ra_forward_opts o = {0};
            o.doc_start = doc_start;
            o.start_layer = layer, o.stop_layer = layer + 1, o.start_hidden = x, o.hidden_out = hid;
            ra_error err = {0};
            EXPECT(ra_forward_cpu(fs, NULL, B, T, &o, &err) == 0);
            ra_block_acts *a = ra_block_acts_create(m, layer, B, T, &err);
            ra_block_forward(a, out, x, doc_start, B, T);
            double worst = 0, scale = 0;
            for (int i = 0; i < B * T * D; i++) worst = fmax(worst, fabs(out[i] - ref[i])), scale = fmax(scale, fabs(ref[i]));
            EXPECT_MSG(worst <= 1e-5 * scale && scale > 0.1, "layout %d layer %d: max |Δ| %g (scale %g)", lay, layer, worst,
                       scale);
            ra_block_acts_free(a);
            ra_forward_state_free(fs);
            free(x), free(ref), free(out);
        }
        ra_model_free(m);
    }
}

typedef struct {
    ra_block_acts *a;
    float *out;
    const float *x, *target;
} fd_ctx;

static double objective(void *p) {
    fd_ctx *c = p;
    return ra_block_stage2(c->a, NULL, c->out, c->x, c->target, doc_start, B, T, 1.0f);
}

static void check_layer(ra_layout layout, int layer, int mixer_only) {
    ra_model *m = student(layout);
    EXPECT(m != NULL);
    if (!m) return;
    int D = m->cfg.hidden_size;
    test_seed(1000 + layer);
    float *x = gc_rnd((size_t)B * T * D, 1.0f), *target = gc_rnd((size_t)B * T * D, 1.0f);
    float *out = calloc((size_t)B * T * D, sizeof(float));
    ra_error err = {0};
    ra_block_acts *a = ra_block_acts_create(m, layer, B, T, &err);
    ra_block_grads *g = ra_block_grads_create(m, layer, mixer_only);
    ra_block_grads_zero(g);
    /* dloss 0.5 twice: accumulation adds up to the full gradient */
    ra_block_stage2(a, &g->g, out, x, target, doc_start, B, T, 0.5f);
    ra_block_stage2(a, &g->g, out, x, target, doc_start, B, T, 0.5f);
    fd_ctx c = {a, out, x, target};
    int checked = 0;
    for (int i = 0; i < g->n; i++) {
        if (!g->grad[i]) {
            EXPECT_MSG(mixer_only && !g->mixer[i], "%s has no gradient", g->t[i].name);
            continue;
        }
        char what[160];
        snprintf(what, sizeof what, "%s layer %d: %s", ra_layout_name(layout), layer, g->t[i].name);
        gc_check(what, *g->t[i].data, (size_t)ra_tensor_numel(&g->t[i]), g->grad[i], objective, &c, 24, 2e-3f, 3e-2);
        checked++;
    }
    EXPECT(checked > 0);
    if (mixer_only)
        for (int i = 0; i < g->n; i++) EXPECT(g->mixer[i] == (g->grad[i] != NULL));
    ra_block_grads_free(g);
    ra_block_acts_free(a);
    free(x), free(target), free(out);
    ra_model_free(m);
}

/* ra_block_backward_dx: the input gradient (whole-model training), in
 * place over dout, against finite differences of the stage-2 loss in x. */
static void check_input_gradient(ra_layout layout, int layer) {
    ra_model *m = student(layout);
    EXPECT(m != NULL);
    if (!m) return;
    int D = m->cfg.hidden_size;
    test_seed(2000 + layer);
    float *x = gc_rnd((size_t)B * T * D, 1.0f), *target = gc_rnd((size_t)B * T * D, 1.0f);
    float *out = calloc((size_t)B * T * D, sizeof(float));
    ra_error err = {0};
    ra_block_acts *a = ra_block_acts_create(m, layer, B, T, &err);
    ra_block_grads *g = ra_block_grads_create(m, layer, 1);
    ra_block_forward(a, out, x, doc_start, B, T);
    loss_l2_backward(out, out, target, B * T, D, 1.0f);
    ra_block_backward_dx(a, &g->g, out, out); /* out: dout, then dx */
    fd_ctx c = {a, NULL, x, target};
    float *scratch = calloc((size_t)B * T * D, sizeof(float));
    c.out = scratch;
    char what[96];
    snprintf(what, sizeof what, "%s layer %d: dx", ra_layout_name(layout), layer);
    gc_check(what, x, (size_t)B * T * D, out, objective, &c, 40, 2e-3f, 3e-2);
    ra_block_grads_free(g);
    ra_block_acts_free(a);
    free(x), free(target), free(out), free(scratch);
    ra_model_free(m);
}

TEST(input_gradient) {
    check_input_gradient(RA_LAYOUT_ROUTED, 0), check_input_gradient(RA_LAYOUT_ROUTED, 2);
    check_input_gradient(RA_LAYOUT_PARALLEL, 0), check_input_gradient(RA_LAYOUT_PARALLEL, 1);
}

TEST(routed_mixed_layer_gradients) { check_layer(RA_LAYOUT_ROUTED, 0, 0); check_layer(RA_LAYOUT_ROUTED, 1, 0); }
TEST(parallel_mixed_layer_gradients) { check_layer(RA_LAYOUT_PARALLEL, 0, 0); check_layer(RA_LAYOUT_PARALLEL, 1, 0); }
TEST(pure_ssm_layer_gradients) { check_layer(RA_LAYOUT_ROUTED, 2, 0); check_layer(RA_LAYOUT_PARALLEL, 2, 0); }
TEST(train_mixer_freezes_norms_and_mlp) { check_layer(RA_LAYOUT_ROUTED, 0, 1); }

int main(void) {
    RUN(block_forward_equals_library_forward);
    RUN(routed_mixed_layer_gradients);
    RUN(parallel_mixed_layer_gradients);
    RUN(pure_ssm_layer_gradients);
    RUN(train_mixer_freezes_norms_and_mlp);
    RUN(input_gradient);
    return test_summary();
}
