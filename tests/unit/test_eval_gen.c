/* ra-eval's greedy generation (lib/eval_gen.h) against an independent
 * greedy loop that reruns ra_forward_cpu over the whole growing sequence,
 * for a teacher and a hybrid, prompts of different lengths in one batch
 * (left padding), EOS and stop-callback endings; the contains / exact
 * metrics. */
#include "eval_gen.h"
#include "hybrid_fixture.h"

#define N 5
#define MAX_NEW 6

static int32_t ref_next(const ra_model *m, const int32_t *ids, int T) {
    int V = m->cfg.vocab_size;
    ra_forward_state *s = ra_forward_state_create(m, 1, T);
    float *z = malloc((size_t)V * sizeof(float));
    int32_t cnt = 1, pos = T - 1;
    ra_forward_opts o = {0};
    o.logits = z, o.logit_counts = &cnt, o.logit_positions = &pos;
    ra_error err = {0};
    EXPECT(ra_forward_cpu(s, ids, 1, T, &o, &err) == 0);
    int32_t best = 0;
    for (int v = 1; v < V; v++)
        if (z[v] > z[best]) best = v;
    free(z);
    ra_forward_state_free(s);
    return best;
}

static int stop_item1_at_2(void *ctx, int item, const int32_t *gen, int n) {
    (void)ctx, (void)gen;
    return item == 1 && n == 2;
}

static void check_greedy(const ra_model *m) {
    int V = m->cfg.vocab_size, lens[N] = {4, 9, 1, 6, 3};
    int32_t buf[N][16];
    const int32_t *prompts[N];
    test_seed(99);
    for (int i = 0; i < N; i++) {
        for (int t = 0; t < lens[i]; t++) buf[i][t] = (int32_t)(test_rand_u64() % (uint64_t)V);
        prompts[i] = buf[i];
    }
    /* the reference continuations, MAX_NEW tokens each */
    int32_t ref[N][MAX_NEW];
    for (int i = 0; i < N; i++) {
        int32_t seq[32];
        memcpy(seq, buf[i], (size_t)lens[i] * sizeof(int32_t));
        for (int g = 0; g < MAX_NEW; g++) seq[lens[i] + g] = ref[i][g] = ref_next(m, seq, lens[i] + g);
    }
    const ra_decode_backend *dec;
    ra_error err = {0};
    EXPECT(ra_decode_backend_get(RA_DEVICE_CPU, &dec, &err) == 0);
    int32_t *out[N];
    int out_len[N];
    /* item 3 ends at EOS = its third reference token (unless earlier ones equal it) */
    int32_t eos = ref[3][2];
    eval_greedy_opts o = {MAX_NEW, 3, eos, stop_item1_at_2, NULL};
    EXPECT(eval_greedy(dec, m, N, prompts, lens, &o, out, out_len, &err) == 0);
    for (int i = 0; i < N; i++) {
        int expect = MAX_NEW;
        for (int g = 0; g < MAX_NEW; g++)
            if (ref[i][g] == eos) {
                expect = g;
                break;
            }
        if (i == 1 && expect > 2) expect = 2;
        EXPECT_EQ_INT(out_len[i], expect);
        for (int g = 0; g < out_len[i] && g < expect; g++) EXPECT_EQ_INT(out[i][g], ref[i][g]);
        free(out[i]);
    }
}

TEST(greedy_equals_forward_argmax_teacher) {
    ra_model *m = fx_teacher(2, 4);
    check_greedy(m);
    ra_model_free(m);
}

TEST(greedy_equals_forward_argmax_hybrids) {
    ra_model *t = fx_teacher(0, 6);
    ra_model *r = fx_graft(t, "0100" "0011" "0000", RA_LAYOUT_ROUTED, RA_ADAPTER_STATIC, 4, RA_INIT_MOHAWK, 3);
    ra_model *p = fx_graft(t, "1000" "0000" "0101", RA_LAYOUT_PARALLEL, RA_ADAPTER_LINEAR, 8, RA_INIT_MOHAWK, 3);
    check_greedy(r);
    check_greedy(p);
    ra_model_free(r), ra_model_free(p), ra_model_free(t);
}

TEST(contains_and_exact) {
    const char *ans[] = {"New York", "NYC"};
    EXPECT(eval_gen_contains(" the city of new york, usa", 2, ans));
    EXPECT(eval_gen_contains("nyc", 2, ans));
    EXPECT(!eval_gen_contains("New Yor", 2, ans));
    EXPECT(eval_gen_exact("  New York \t", 2, ans));
    EXPECT(!eval_gen_exact("new york", 2, ans));
    EXPECT(!eval_gen_exact("New York City", 2, ans));
    const char *empty[] = {""};
    EXPECT(eval_gen_exact("   ", 1, empty));
}

TEST(ablation_is_refused) {
    ra_model *m = fx_teacher(0, 1);
    uint8_t keep[12];
    memset(keep, 1, sizeof keep);
    keep[0] = 0;
    eval_model em = {m, &ra_forward_backend_cpu, RA_DEVICE_CPU, keep};
    eval_gen_set set;
    memset(&set, 0, sizeof set);
    eval_gen_opts o = {4, 1, "\n"};
    eval_results r;
    eval_results_init(&r);
    ra_error err = {0};
    const ra_decode_backend *dec;
    EXPECT(ra_decode_backend_get(RA_DEVICE_CPU, &dec, &err) == 0);
    EXPECT_EQ_INT(eval_gen(&em, NULL, dec, NULL, &set, &o, &r, &err), EX_USAGE);
    EXPECT(strstr(err.msg, "--ablate") != NULL);
    eval_results_free(&r);
    ra_model_free(m);
}

int main(void) {
    RUN(greedy_equals_forward_argmax_teacher);
    RUN(greedy_equals_forward_argmax_hybrids);
    RUN(contains_and_exact);
    RUN(ablation_is_refused);
    return test_summary();
}
