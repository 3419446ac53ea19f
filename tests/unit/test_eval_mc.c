/* ra-eval's multiple-choice scoring (lib/eval_mc.h): every choice's
 * log-likelihood against a float64 recomputation from ra_forward_cpu logits
 * of context + choice, and acc / acc_norm from those, with and without an
 * ablated head, on a teacher and a hybrid. */
#include <math.h>

#include "eval_mc.h"
#include "hybrid_fixture.h"

#define N_ITEMS 7
#define MAX_CH 4

typedef struct item {
    int nc, n_ctx, ctx[8], n_ch, len[MAX_CH], ch[MAX_CH][3], gold;
} item;

static void make_items(item *it, int V) {
    test_seed(1234);
    for (int i = 0; i < N_ITEMS; i++) {
        it[i].n_ctx = 3 + (int)(test_rand_u64() % 6);
        for (int t = 0; t < it[i].n_ctx; t++) it[i].ctx[t] = (int)(test_rand_u64() % (uint64_t)V);
        it[i].n_ch = 2 + (int)(test_rand_u64() % (MAX_CH - 1));
        for (int c = 0; c < it[i].n_ch; c++) {
            it[i].len[c] = 1 + (int)(test_rand_u64() % 3);
            for (int t = 0; t < it[i].len[c]; t++) it[i].ch[c][t] = (int)(test_rand_u64() % (uint64_t)V);
        }
        if (it[i].n_ch > 2 && it[i].len[0] > 1 && it[i].len[1] > 1) it[i].ch[1][0] = it[i].ch[0][0]; /* shared prefix */
        it[i].gold = (int)(test_rand_u64() % (uint64_t)it[i].n_ch);
    }
}

/* float64 log p(choice | context) from one forward of context + choice. */
static double ref_ll(const ra_model *m, const uint8_t *keep, const item *it, int c) {
    int V = m->cfg.vocab_size, T = it->n_ctx + it->len[c];
    int32_t ids[16];
    for (int t = 0; t < it->n_ctx; t++) ids[t] = it->ctx[t];
    for (int t = 0; t < it->len[c]; t++) ids[it->n_ctx + t] = it->ch[c][t];
    ra_forward_state *s = ra_forward_state_create(m, 1, T);
    float *z = malloc((size_t)T * V * sizeof(float));
    ra_forward_opts o = {0};
    o.logits = z;
    o.head_keep = keep;
    ra_error err = {0};
    EXPECT(ra_forward_cpu(s, ids, 1, T, &o, &err) == 0);
    double ll = 0;
    for (int t = it->n_ctx - 1; t < T - 1; t++) {
        const float *row = z + (size_t)t * V;
        double mx = row[0], sum = 0;
        for (int v = 1; v < V; v++) mx = row[v] > mx ? row[v] : mx;
        for (int v = 0; v < V; v++) sum += exp((double)row[v] - mx);
        ll += (double)row[ids[t + 1]] - mx - log(sum);
    }
    free(z);
    ra_forward_state_free(s);
    return ll;
}

static void check_model(const ra_model *m, const uint8_t *keep) {
    int V = m->cfg.vocab_size;
    item it[N_ITEMS];
    make_items(it, V);
    probe_data d;
    memset(&d, 0, sizeof d);
    d.mode = PROBE_SCORE_CHOICE;
    int chars[N_ITEMS * MAX_CH], k = 0;
    for (int i = 0; i < N_ITEMS; i++) {
        int32_t ctx[8], ch[MAX_CH][3];
        const int32_t *cv[MAX_CH];
        for (int t = 0; t < it[i].n_ctx; t++) ctx[t] = it[i].ctx[t];
        for (int c = 0; c < it[i].n_ch; c++) {
            for (int t = 0; t < it[i].len[c]; t++) ch[c][t] = it[i].ch[c][t];
            cv[c] = ch[c];
            chars[k++] = 1 + (int)(test_rand_u64() % 9);
        }
        probe_data_add(&d, ctx, it[i].n_ctx, it[i].n_ch, cv, it[i].len, it[i].gold);
    }
    double ll[N_ITEMS * MAX_CH], acc, acc_norm;
    eval_model em = {m, &ra_forward_backend_cpu, RA_DEVICE_CPU, keep};
    ra_error err = {0};
    EXPECT(eval_mc_score(&em, &d, chars, 3, &acc, &acc_norm, ll, &err) == 0);
    int hits = 0, hits_norm = 0;
    k = 0;
    for (int i = 0; i < N_ITEMS; i++) {
        int best = 0, best_norm = 0;
        double ref[MAX_CH];
        for (int c = 0; c < it[i].n_ch; c++) {
            ref[c] = ref_ll(m, keep, &it[i], c);
            EXPECT_NEAR(ll[k + c], ref[c], 1e-4 + 1e-5 * fabs(ref[c]));
            if (ref[c] > ref[best]) best = c;
            if (ref[c] / chars[k + c] > ref[best_norm] / chars[k + best_norm]) best_norm = c;
        }
        hits += best == it[i].gold;
        hits_norm += best_norm == it[i].gold;
        k += it[i].n_ch;
    }
    EXPECT_NEAR(acc, (double)hits / N_ITEMS, 1e-12);
    EXPECT_NEAR(acc_norm, (double)hits_norm / N_ITEMS, 1e-12);
    probe_data_free(&d);
}

TEST(choice_loglikelihoods_match_float64_teacher) {
    ra_model *m = fx_teacher(1, 3);
    check_model(m, NULL);
    int LH = m->cfg.num_layers * m->cfg.num_heads;
    uint8_t *keep = malloc((size_t)LH);
    memset(keep, 1, (size_t)LH);
    keep[4] = 0, keep[LH - 1] = 0;
    check_model(m, keep);
    free(keep);
    ra_model_free(m);
}

TEST(choice_loglikelihoods_match_float64_hybrid) {
    ra_model *t = fx_teacher(0, 8);
    ra_model *s = fx_graft(t, "1000" "0110" "0001", RA_LAYOUT_PARALLEL, RA_ADAPTER_LINEAR, 4, RA_INIT_MOHAWK, 2);
    check_model(s, NULL);
    ra_model_free(s);
    ra_model_free(t);
}

int main(void) {
    RUN(choice_loglikelihoods_match_float64_teacher);
    RUN(choice_loglikelihoods_match_float64_hybrid);
    return test_summary();
}
