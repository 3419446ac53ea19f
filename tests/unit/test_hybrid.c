/* Hybrid students (lib/hybrid.h): the config and its JSON, grafting from a
 * teacher and a plan, the model stream round trip, the SSM inits at the
 * matrix level, and the hybrid forward against a float64 reference written
 * here from DESIGN §2.4. */
#include <unistd.h>

#include "forward.h"
#include "hybrid_fixture.h"
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

int main(void) {
    if (!mkdtemp(tmpdir)) return 1;
    RUN(config_json_round_trip_and_refusals);
    RUN(graft_copies_kept_heads_and_shared_weights);
    RUN(graft_refuses_options_the_teacher_cannot_take);
    RUN(hybrid_model_stream_round_trip);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) printf("# could not remove %s\n", tmpdir);
    return test_summary();
}
