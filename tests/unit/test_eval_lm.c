/* ra-eval's language-modelling task (lib/eval_lm.h): perplexity against a
 * float64 recomputation from per-window forwards, KL(teacher ‖ student)
 * against float64, kd = 0 for a model against itself, and --ablate equal to
 * zeroing the head's o_proj columns. */
#include <math.h>

#include "eval_lm.h"
#include "hybrid_fixture.h"

/* Random documents of the given lengths, ids < V. */
static ra_tokens make_docs(const int *lens, int n, int V, uint64_t seed) {
    ra_tokens t;
    memset(&t, 0, sizeof t);
    t.name = "test.tok";
    t.n_docs = n;
    t.doc_start = calloc((size_t)n + 1, sizeof(int64_t));
    for (int d = 0; d < n; d++) t.doc_start[d + 1] = t.doc_start[d] + lens[d];
    t.n_tokens = t.doc_start[n];
    t.ids = malloc((size_t)t.n_tokens * sizeof(int32_t));
    test_seed(seed);
    for (int64_t i = 0; i < t.n_tokens; i++) t.ids[i] = (int32_t)(test_rand_u64() % (uint64_t)V);
    return t;
}

/* float64 log-softmax of one logits row. */
static void log_softmax64(const float *z, int V, double *out) {
    double mx = z[0], s = 0;
    for (int v = 1; v < V; v++) mx = z[v] > mx ? z[v] : mx;
    for (int v = 0; v < V; v++) s += exp((double)z[v] - mx);
    for (int v = 0; v < V; v++) out[v] = (double)z[v] - mx - log(s);
}

/* The reference: every window run alone through ra_forward_cpu (full
 * logits), NLL and KL summed in float64. */
static void reference(const ra_model *s, const ra_model *t, const uint8_t *keep, const ra_tokens *tk, int ctx,
                      double *nll, double *kd, int64_t *counted) {
    int V = s->cfg.vocab_size;
    ra_forward_state *fs = ra_forward_state_create(s, 1, ctx), *ft = t ? ra_forward_state_create(t, 1, ctx) : NULL;
    float *zs = malloc((size_t)ctx * V * sizeof(float)), *zt = malloc((size_t)ctx * V * sizeof(float));
    double *ls = malloc((size_t)V * sizeof(double)), *lt = malloc((size_t)V * sizeof(double));
    double sum = 0, sum_kl = 0;
    int64_t n = 0;
    ra_error err = {0};
    for (int64_t d = 0; d < tk->n_docs; d++) {
        int64_t len;
        const int32_t *ids = ra_tokens_doc(tk, d, &len);
        for (int64_t st = 0; st + 1 < len; st += ctx) {
            int w = (int)(len - st < ctx ? len - st : ctx);
            ra_forward_opts o = {0};
            o.logits = zs;
            o.head_keep = keep;
            EXPECT(ra_forward_cpu(fs, ids + st, 1, w, &o, &err) == 0);
            if (t) {
                ra_forward_opts ot = {0};
                ot.logits = zt;
                EXPECT(ra_forward_cpu(ft, ids + st, 1, w, &ot, &err) == 0);
            }
            for (int j = 0; j + 1 < w; j++) {
                log_softmax64(zs + (size_t)j * V, V, ls);
                sum -= ls[ids[st + j + 1]];
                if (t) {
                    log_softmax64(zt + (size_t)j * V, V, lt);
                    for (int v = 0; v < V; v++) sum_kl += exp(lt[v]) * (lt[v] - ls[v]);
                }
                n++;
            }
        }
    }
    *nll = sum / n;
    *kd = t ? sum_kl / n : NAN;
    *counted = n;
    ra_forward_state_free(fs);
    if (ft) ra_forward_state_free(ft);
    free(zs), free(zt), free(ls), free(lt);
}

static void check_lm(const ra_model *s, const ra_model *t, const uint8_t *keep, int ctx, int batch) {
    int lens[] = {9, 2, 1, 17, 5, 13};
    ra_tokens tk = make_docs(lens, 6, s->cfg.vocab_size, 77 + (uint64_t)ctx);
    eval_model es = {s, &ra_forward_backend_cpu, RA_DEVICE_CPU, keep};
    eval_model et = {t, &ra_forward_backend_cpu, RA_DEVICE_CPU, NULL};
    eval_lm_opts o = {ctx, batch};
    eval_lm_result r;
    ra_error err = {0};
    EXPECT(eval_lm_run(&es, t ? &et : NULL, &tk, &o, &r, &err) == 0);
    double nll, kd;
    int64_t counted;
    reference(s, t, keep, &tk, ctx, &nll, &kd, &counted);
    EXPECT_EQ_INT(r.counted, counted);
    EXPECT_EQ_INT(r.documents, 6);
    EXPECT_NEAR(r.nll, nll, 1e-5 * fabs(nll));
    EXPECT(nll > 0.5); /* random weights: far from a perfect predictor */
    if (t) {
        EXPECT_NEAR(r.kd, kd, 1e-5 * kd + 1e-7);
        EXPECT(kd > 1e-4);
    }
    free(tk.ids);
    free(tk.doc_start);
}

TEST(ppl_matches_float64_per_window) {
    ra_model *m = fx_teacher(0, 5);
    check_lm(m, NULL, NULL, 64, 1); /* every document one window */
    check_lm(m, NULL, NULL, 6, 1);  /* documents cut into windows, several per row */
    check_lm(m, NULL, NULL, 6, 3);  /* and three rows per call */
    ra_model_free(m);
}

TEST(kd_matches_float64_and_is_zero_against_itself) {
    ra_model *s = fx_teacher(1, 11), *t = fx_teacher(1, 12);
    check_lm(s, t, NULL, 7, 2);
    int lens[] = {12, 4};
    ra_tokens tk = make_docs(lens, 2, s->cfg.vocab_size, 3);
    eval_model es = {s, &ra_forward_backend_cpu, RA_DEVICE_CPU, NULL};
    eval_lm_opts o = {8, 2};
    eval_lm_result r;
    ra_error err = {0};
    EXPECT(eval_lm_run(&es, &es, &tk, &o, &r, &err) == 0);
    EXPECT(fabs(r.kd) < 1e-6);
    EXPECT_NEAR(r.nll, r.teacher_nll, 1e-12);
    free(tk.ids), free(tk.doc_start);
    ra_model_free(s), ra_model_free(t);
}

/* Zero the o_proj columns of query head h of layer l (all D rows). */
static void zero_oproj_head(ra_model *m, int l, int h) {
    int D = m->cfg.hidden_size, hd = m->cfg.head_dim, H = m->cfg.num_heads;
    for (int r = 0; r < D; r++) memset(m->layers[l].wo + (size_t)r * H * hd + (size_t)h * hd, 0, hd * sizeof(float));
}

TEST(ablation_equals_zeroed_oproj_columns) {
    /* teacher, and a routed hybrid (adapter none: the static adapter
     * standardises the kept heads jointly, so zeroing one before it is not
     * zeroing its o_proj columns) ablating one of its kept heads */
    for (int hybrid = 0; hybrid < 2; hybrid++) {
        ra_model *t1 = fx_teacher(0, 21), *t2 = fx_teacher(0, 21);
        ra_model *a = hybrid ? fx_graft(t1, "0100" "0011" "1000", RA_LAYOUT_ROUTED, RA_ADAPTER_NONE, 4, RA_INIT_MOHAWK, 9) : t1;
        ra_model *b = hybrid ? fx_graft(t2, "0100" "0011" "1000", RA_LAYOUT_ROUTED, RA_ADAPTER_NONE, 4, RA_INIT_MOHAWK, 9) : t2;
        int L = a->cfg.num_layers, H = a->cfg.num_heads;
        uint8_t *keep = malloc((size_t)L * H);
        memset(keep, 1, (size_t)L * H);
        keep[1 * H + 2] = 0; /* layer 1, head 2: kept in the hybrid */
        zero_oproj_head(b, 1, 2);
        int lens[] = {11, 6, 3};
        ra_tokens tk = make_docs(lens, 3, a->cfg.vocab_size, 8);
        eval_model ea = {a, &ra_forward_backend_cpu, RA_DEVICE_CPU, keep};
        eval_model eb = {b, &ra_forward_backend_cpu, RA_DEVICE_CPU, NULL};
        eval_model e0 = {a, &ra_forward_backend_cpu, RA_DEVICE_CPU, NULL};
        eval_lm_opts o = {5, 2};
        eval_lm_result ra_, rb, r0;
        ra_error err = {0};
        EXPECT(eval_lm_run(&ea, NULL, &tk, &o, &ra_, &err) == 0);
        EXPECT(eval_lm_run(&eb, NULL, &tk, &o, &rb, &err) == 0);
        EXPECT(eval_lm_run(&e0, NULL, &tk, &o, &r0, &err) == 0);
        EXPECT_NEAR(ra_.nll, rb.nll, 1e-6 * rb.nll);
        EXPECT(fabs(ra_.nll - r0.nll) > 1e-4); /* the ablation changes the result */
        free(tk.ids), free(tk.doc_start), free(keep);
        if (hybrid) ra_model_free(a), ra_model_free(b);
        ra_model_free(t1), ra_model_free(t2);
    }
}

TEST(no_predictable_token_is_an_error) {
    ra_model *m = fx_teacher(0, 5);
    int lens[] = {1, 1};
    ra_tokens tk = make_docs(lens, 2, m->cfg.vocab_size, 1);
    eval_model em = {m, &ra_forward_backend_cpu, RA_DEVICE_CPU, NULL};
    eval_lm_opts o = {8, 1};
    eval_lm_result r;
    ra_error err = {0};
    EXPECT_EQ_INT(eval_lm_run(&em, NULL, &tk, &o, &r, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "nothing to predict") != NULL);
    free(tk.ids), free(tk.doc_start);
    ra_model_free(m);
}

int main(void) {
    RUN(ppl_matches_float64_per_window);
    RUN(kd_matches_float64_and_is_zero_against_itself);
    RUN(ablation_equals_zeroed_oproj_columns);
    RUN(no_predictable_token_is_an_error);
    return test_summary();
}
