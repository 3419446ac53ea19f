/* Recurrent decode (lib/decode.h) against the full-sequence forward: the
 * logits of prefill + steps equal the forward's at every position, for a
 * teacher, pure-SSM students and routed and parallel hybrids; left-padded
 * batches of different prompt lengths; the state the prefill leaves. */
#include "decode.h"
#include "forward.h"
#include "hybrid_fixture.h"

#define TOL 5e-6 /* relative to the largest logit: chunked SSD and tiled attention vs the recurrence */

static int32_t *rand_tokens(int n, int V) {
    int32_t *t = malloc((size_t)n * sizeof *t);
    for (int i = 0; i < n; i++) t[i] = (int32_t)(test_rand_u64() % (uint64_t)V);
    return t;
}

/* The forward's logits for one row of T tokens. */
static float *forward_logits(const ra_model *m, const int32_t *tok, int T) {
    ra_forward_state *s = ra_forward_state_create(m, 1, T);
    float *logits = malloc(sizeof(float) * T * m->cfg.vocab_size);
    ra_forward_opts o = {.logits = logits};
    ra_error err = {0};
    if (ra_forward_cpu(s, tok, 1, T, &o, &err)) printf("# forward: %s\n", err.msg);
    ra_forward_state_free(s);
    return logits;
}

static double max_abs(const float *a, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(a[i]));
    return m;
}
static double max_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m)) m = d;
    }
    return m;
}

typedef struct model_case {
    const char *name;
    int variant;
    const char *bits; /* NULL: the teacher itself */
    ra_layout layout;
    ra_adapter_kind adapter;
    int N, chunk;
} model_case;

static const model_case cases[] = {
    {"teacher llama3", 0, NULL, 0, 0, 0, 0},
    {"teacher qwen2", 1, NULL, 0, 0, 0, 0},
    {"teacher gqa1 biases", 2, NULL, 0, 0, 0, 0},
    {"pure SSM routed", 0, "", RA_LAYOUT_ROUTED, RA_ADAPTER_NONE, 8, 6},
    {"pure SSM parallel", 1, "", RA_LAYOUT_PARALLEL, RA_ADAPTER_LINEAR, 4, 128},
    {"routed static", 1, "100100000000011000", RA_LAYOUT_ROUTED, RA_ADAPTER_STATIC, 5, 7},
    {"routed none", 2, "0010111100000100", RA_LAYOUT_ROUTED, RA_ADAPTER_NONE, 12, 128},
    {"parallel", 2, "0010111100000100", RA_LAYOUT_PARALLEL, RA_ADAPTER_LINEAR, 6, 5},
};

/* Random weights everywhere (the inits would hide terms: z rows 0, D 1 ...). */
static ra_model *case_model(const model_case *mc, uint64_t seed) {
    ra_model *t = fx_teacher(mc->variant, seed);
    if (!mc->bits) return t;
    ra_model *s = fx_graft(t, mc->bits, mc->layout, mc->adapter, mc->N, RA_INIT_MOHAWK, seed);
    ra_model_free(t);
    if (!s) return NULL;
    fx_fill_model(s, seed + 1000);
    s->hybrid->chunk = mc->chunk;
    for (int l = 0; l < s->cfg.num_layers; l++) s->layers[l].ssm_cfg.chunk = mc->chunk;
    return s;
}

/* Prefill T0 tokens, step the rest one by one: every logit row equals the
 * forward's row at that position. */
TEST(decode_reproduces_forward_logits) {
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        ra_model *m = case_model(&cases[ci], 300 + ci);
        if (!m) {
            EXPECT(0);
            continue;
        }
        int T = 23, V = m->cfg.vocab_size;
        int32_t *tok = rand_tokens(T, V);
        float *want = forward_logits(m, tok, T), *got = malloc(sizeof(float) * V);
        double scale = max_abs(want, (size_t)T * V), worst = 0;
        int prompts[] = {1, 6, 14};
        for (int pi = 0; pi < 3; pi++) {
            int T0 = prompts[pi];
            ra_decode *d;
            ra_error err = {0};
            EXPECT_EQ_INT(ra_decode_create(m, 1, T, &d, &err), 0);
            EXPECT_EQ_INT(ra_decode_prefill(d, tok, T0, NULL, got, NULL, &err), 0);
            worst = fmax(worst, max_diff(got, want + (size_t)(T0 - 1) * V, V));
            for (int t = T0; t < T; t++) {
                EXPECT_EQ_INT(ra_decode_step(d, tok + t, got, &err), 0);
                worst = fmax(worst, max_diff(got, want + (size_t)t * V, V));
            }
            /* the cache is full now */
            EXPECT_EQ_INT(ra_decode_step(d, tok, got, &err), EX_USAGE);
            EXPECT(strstr(err.msg, "no room") != NULL);
            ra_decode_free(d);
        }
        printf("# %s: max |decode − forward| / max |logit| = %.3g (max %.3g)\n", cases[ci].name, worst / scale, scale);
        EXPECT_MSG(worst <= TOL * scale && scale > 0.5, "%s: %g of %g", cases[ci].name, worst, scale);
        free(tok), free(want), free(got);
        ra_model_free(m);
    }
}

/* Three prompts of different lengths, left-padded into one batch, then six
 * steps with a different token per row: each row follows its own forward. */
TEST(left_padded_batch_decodes_each_row_as_alone) {
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        ra_model *m = case_model(&cases[ci], 400 + ci);
        if (!m) continue;
        int B = 3, T = 11, steps = 6, V = m->cfg.vocab_size;
        int32_t lens[3] = {7, 2, 11}, *rows[3];
        int32_t *prompt = rand_tokens(B * T, V), *next = rand_tokens(B * steps, V);
        float *logits = malloc(sizeof(float) * B * V), *all = malloc(sizeof(float) * B * T * V);
        float *want[3];
        for (int b = 0; b < B; b++) { /* row b alone: its prompt, then its steps */
            int n = lens[b] + steps;
            rows[b] = malloc(sizeof(int32_t) * n);
            memcpy(rows[b], prompt + b * T + T - lens[b], sizeof(int32_t) * lens[b]);
            for (int j = 0; j < steps; j++) rows[b][lens[b] + j] = next[j * B + b];
            want[b] = forward_logits(m, rows[b], n);
        }
        ra_decode *d;
        ra_error err = {0};
        EXPECT_EQ_INT(ra_decode_create(m, B, T + steps, &d, &err), 0);
        EXPECT_EQ_INT(ra_decode_prefill(d, prompt, T, lens, logits, all, &err), 0);
        double worst = 0, scale = 0;
        for (int b = 0; b < B; b++) {
            scale = fmax(scale, max_abs(want[b], (size_t)(lens[b] + steps) * V));
            worst = fmax(worst, max_diff(logits + (size_t)b * V, want[b] + (size_t)(lens[b] - 1) * V, V));
            for (int t = 0; t < lens[b]; t++) /* every prompt position, from all_logits */
                worst = fmax(worst, max_diff(all + ((size_t)b * T + T - lens[b] + t) * V, want[b] + (size_t)t * V, V));
        }
        for (int j = 0; j < steps; j++) {
            EXPECT_EQ_INT(ra_decode_step(d, next + j * B, logits, &err), 0);
            for (int b = 0; b < B; b++)
                worst = fmax(worst, max_diff(logits + (size_t)b * V, want[b] + (size_t)(lens[b] + j) * V, V));
        }
        printf("# %s: batch of 3 left-padded rows: max rel diff %.3g\n", cases[ci].name, worst / scale);
        EXPECT_MSG(worst <= TOL * scale, "%s: %g of %g", cases[ci].name, worst, scale);
        /* after the prefill the state belongs to the prompts: a second prefill
         * with other prompts gives what a fresh decoder gives */
        EXPECT_EQ_INT(ra_decode_prefill(d, prompt, T, lens, logits, NULL, &err), 0);
        float *again = malloc(sizeof(float) * B * V);
        ra_decode *fresh;
        EXPECT_EQ_INT(ra_decode_create(m, B, T + steps, &fresh, &err), 0);
        EXPECT_EQ_INT(ra_decode_prefill(fresh, prompt, T, lens, again, NULL, &err), 0);
        EXPECT(memcmp(again, logits, sizeof(float) * B * V) == 0);
        ra_decode_free(fresh);
        free(again);
        ra_decode_free(d);
        for (int b = 0; b < B; b++) free(rows[b]), free(want[b]);
        free(prompt), free(next), free(logits), free(all);
        ra_model_free(m);
    }
}

/* What the prefill leaves: the KV cache holds each kept head's keys and
 * values, the SSM state equals the recurrence's over the prompt (dm2 is
 * tested; here: the state after prefill + k steps equals the state after a
 * prefill of all those tokens), and misuse is refused. */
TEST(prefill_state_and_refusals) {
    ra_model *m = case_model(&cases[5], 77); /* routed static, mixed */
    int T = 12, V = m->cfg.vocab_size;
    int32_t *tok = rand_tokens(T, V);
    ra_decode *a, *b;
    ra_error err = {0};
    float *lg = malloc(sizeof(float) * V);
    EXPECT_EQ_INT(ra_decode_create(m, 1, T, &a, &err), 0);
    EXPECT_EQ_INT(ra_decode_create(m, 1, T, &b, &err), 0);
    EXPECT_EQ_INT(ra_decode_step(a, tok, lg, &err), EX_USAGE);
    EXPECT(strstr(err.msg, "before prefill") != NULL);
    EXPECT_EQ_INT(ra_decode_prefill(a, tok, T + 1, NULL, lg, NULL, &err), EX_USAGE);
    int32_t bad_len = 0;
    EXPECT_EQ_INT(ra_decode_prefill(a, tok, T, &bad_len, lg, NULL, &err), EX_USAGE);
    EXPECT_EQ_INT(ra_decode_prefill(a, tok, 5, NULL, lg, NULL, &err), 0);
    for (int t = 5; t < T; t++) EXPECT_EQ_INT(ra_decode_step(a, tok + t, lg, &err), 0);
    EXPECT_EQ_INT(ra_decode_prefill(b, tok, T, NULL, lg, NULL, &err), 0);
    EXPECT_EQ_INT(a->len, T);
    EXPECT_EQ_INT(b->len, T);
    double kv = 0, ssm = 0, conv = 0, kv_scale = 0, ssm_scale = 0;
    for (int l = 0; l < m->cfg.num_layers; l++) {
        const ra_decode_layer *la = &a->layers[l], *lb = &b->layers[l];
        EXPECT_EQ_INT(la->n_kv, m->layers[l].n_attn_heads);
        size_t nkv = (size_t)la->n_kv * T * m->cfg.head_dim;
        kv = fmax(kv, max_diff(la->k, lb->k, nkv));
        kv = fmax(kv, max_diff(la->v, lb->v, nkv));
        kv_scale = fmax(kv_scale, max_abs(lb->k, nkv));
        EXPECT((la->ssm != NULL) == (m->layers[l].n_ssm_heads > 0));
        if (!la->ssm) continue;
        const dm2_config *sc = &m->layers[l].ssm_cfg;
        size_t ns = (size_t)sc->n_heads * sc->head_dim * sc->d_state, nc = (size_t)dm2_conv_dim(sc) * DM2_CONV_K;
        ssm = fmax(ssm, max_diff(la->ssm->ssm, lb->ssm->ssm, ns));
        ssm_scale = fmax(ssm_scale, max_abs(lb->ssm->ssm, ns));
        conv = fmax(conv, max_diff(la->ssm->conv, lb->ssm->conv, nc));
    }
    printf("# state after prefill 5 + 7 steps vs prefill 12: kv %.3g (of %.3g), ssm %.3g (of %.3g), conv %.3g\n", kv,
           kv_scale, ssm, ssm_scale, conv);
    EXPECT(kv <= 1e-5 * kv_scale && ssm <= 1e-5 * ssm_scale && conv <= 1e-5 && ssm_scale > 0);
    int32_t out_of_vocab = V;
    EXPECT_EQ_INT(ra_decode_prefill(a, tok, 3, NULL, lg, NULL, &err), 0);
    EXPECT_EQ_INT(ra_decode_step(a, &out_of_vocab, lg, &err), EX_DATAERR);
    ra_decode_free(a), ra_decode_free(b);
    free(tok), free(lg);
    ra_model_free(m);
}

int main(void) {
    RUN(decode_reproduces_forward_logits);
    RUN(left_padded_batch_decodes_each_row_as_alone);
    RUN(prefill_state_and_refusals);
    return test_summary();
}
