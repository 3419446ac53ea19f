/* Every backward of lib/ops.h against central finite differences of the
 * library's own fp32 forward (tests/unit/gradcheck.h), on random inputs,
 * including GQA ratios, packed-document masks, attention tiles past 128
 * queries and Llama-3 RoPE scaling; plus the accumulate/overwrite
 * conventions and a whole decoder layer chained from the pieces. */
#include "gradcheck.h"
#include "ops.h"
#include "test.h"

/* ------------------------------------------------------------ embedding */

TEST(embedding_backward_scatter_adds) {
    test_seed(21);
    int V = 40, n = 300, D = 150; /* repeated tokens; OpenMP path */
    int32_t *tok = malloc(n * sizeof(int32_t));
    for (int i = 0; i < n; i++) tok[i] = (int32_t)(test_rand_u64() % V);
    float *dout = gc_rnd((size_t)n * D, 1), *dt = gc_rnd((size_t)V * D, 1);
    double *ref = malloc((size_t)V * D * sizeof(double));
    for (int i = 0; i < V * D; i++) ref[i] = dt[i];
    for (int i = 0; i < n; i++)
        for (int j = 0; j < D; j++) ref[(size_t)tok[i] * D + j] += dout[(size_t)i * D + j];
    embedding_backward(dt, dout, tok, n, D);
    double e = 0;
    for (int i = 0; i < V * D; i++) e = fmax(e, fabs(dt[i] - ref[i]));
    EXPECT_MSG(e < 1e-4, "embedding scatter-add max err %g", e);
    free(tok), free(dout), free(dt), free(ref);
}

/* -------------------------------------------------------------- rmsnorm */

typedef struct {
    int n, D;
    float *x, *w, *y, *r, *dy;
} rms_ctx;
static double rms_obj(void *p) {
    rms_ctx *c = p;
    rmsnorm_forward(c->y, c->r, c->x, c->w, c->n, c->D, 1e-5f);
    return gc_dot(c->dy, c->y, (size_t)c->n * c->D);
}
static void check_rmsnorm_backward(int n, int D) {
    rms_ctx c = {n, D, gc_rnd((size_t)n * D, 2), gc_rnd(D, 1), malloc((size_t)n * D * 4), malloc(n * 4),
                 gc_rnd((size_t)n * D, 1)};
    float *dx = malloc((size_t)n * D * 4), *dw = gc_rnd(D, 1), *dw0 = malloc(D * 4);
    memcpy(dw0, dw, D * 4);
    rms_obj(&c);
    rmsnorm_backward(dx, dw, c.dy, c.x, c.w, c.r, n, D);
    for (int j = 0; j < D; j++) dw[j] -= dw0[j]; /* accumulated onto random values */
    gc_check("rmsnorm dx", c.x, (size_t)n * D, dx, rms_obj, &c, 60, 1e-2f, 2e-3);
    gc_check("rmsnorm dweight", c.w, D, dw, rms_obj, &c, 60, 1e-2f, 2e-3);
    free(c.x), free(c.w), free(c.y), free(c.r), free(c.dy), free(dx), free(dw), free(dw0);
}
TEST(rmsnorm_backward_matches_finite_differences) {
    test_seed(22);
    check_rmsnorm_backward(6, 19);
    check_rmsnorm_backward(300, 256); /* OpenMP path */
}

/* --------------------------------------------------------------- linear */

typedef struct {
    int n, in, out;
    float *x, *W, *b, *y, *dy;
} lin_ctx;
static double lin_obj(void *p) {
    lin_ctx *c = p;
    linear_forward(c->y, c->x, c->W, c->b, c->n, c->in, c->out);
    return gc_dot(c->dy, c->y, (size_t)c->n * c->out);
}
static void check_linear_backward(int n, int in, int out) {
    lin_ctx c = {n, in, out, gc_rnd((size_t)n * in, 1), gc_rnd((size_t)out * in, 0.5f), gc_rnd(out, 1),
                 malloc((size_t)n * out * 4), gc_rnd((size_t)n * out, 1)};
    float *dx = gc_rnd((size_t)n * in, 5); /* garbage: must be overwritten */
    float *dW = gc_rnd((size_t)out * in, 1), *db = gc_rnd(out, 1);
    float *dW0 = malloc((size_t)out * in * 4), *db0 = malloc(out * 4);
    memcpy(dW0, dW, (size_t)out * in * 4), memcpy(db0, db, out * 4);
    linear_backward(dx, dW, db, c.dy, c.x, c.W, n, in, out);
    for (int i = 0; i < out * in; i++) dW[i] -= dW0[i];
    for (int i = 0; i < out; i++) db[i] -= db0[i];
    gc_check("linear dx", c.x, (size_t)n * in, dx, lin_obj, &c, 50, 1e-2f, 2e-3);
    gc_check("linear dW", c.W, (size_t)out * in, dW, lin_obj, &c, 50, 1e-2f, 2e-3);
    gc_check("linear db", c.b, out, db, lin_obj, &c, 50, 1e-2f, 2e-3);
    free(c.x), free(c.W), free(c.b), free(c.y), free(c.dy), free(dx), free(dW), free(db), free(dW0), free(db0);
}
TEST(linear_backward_matches_finite_differences) {
    test_seed(23);
    check_linear_backward(1, 7, 5);
    check_linear_backward(37, 53, 29);
    check_linear_backward(200, 96, 300); /* bias reduction's OpenMP path */
}

TEST(linear_backward_null_gradients_are_skipped) {
    test_seed(24);
    int n = 5, in = 4, out = 3;
    float *x = gc_rnd(n * in, 1), *W = gc_rnd(out * in, 1), *dy = gc_rnd(n * out, 1), *dW = gc_rnd(out * in, 1);
    float dW0[12];
    memcpy(dW0, dW, sizeof dW0);
    linear_backward(NULL, dW, NULL, dy, x, W, n, in, out);
    double e = 0;
    for (int o = 0; o < out; o++)
        for (int k = 0; k < in; k++) {
            double s = dW0[o * in + k];
            for (int i = 0; i < n; i++) s += (double)dy[i * out + o] * x[i * in + k];
            e = fmax(e, fabs(s - dW[o * in + k]));
        }
    EXPECT_MSG(e < 1e-5, "dW err %g", e);
    free(x), free(W), free(dy), free(dW);
}

/* ----------------------------------------------------------------- rope */

static hf_config llama3_rope(void) {
    hf_config c;
    memset(&c, 0, sizeof c);
    c.rope_theta = 500000.0;
    c.rope_type = RA_ROPE_LLAMA3;
    c.rope_factor = 8;
    c.rope_low_freq_factor = 1;
    c.rope_high_freq_factor = 4;
    c.rope_original_max_position_embeddings = 32;
    return c;
}

typedef struct {
    int n, heads, hd;
    float *x, *y, *cs, *sn, *dy;
} rope_ctx;
static double rope_obj(void *p) {
    rope_ctx *c = p;
    size_t m = (size_t)c->n * c->heads * c->hd;
    memcpy(c->y, c->x, m * 4);
    rope_forward(c->y, c->cs, c->sn, c->n, c->heads, c->hd);
    return gc_dot(c->dy, c->y, m);
}
TEST(rope_backward_matches_finite_differences) {
    test_seed(25);
    int n = 9, heads = 3, hd = 16;
    hf_config cfg = llama3_rope();
    float inv[8];
    int32_t pos[9];
    for (int i = 0; i < n; i++) pos[i] = (int32_t)(test_rand_u64() % 300);
    rope_inv_freq(inv, hd, &cfg);
    size_t m = (size_t)n * heads * hd;
    rope_ctx c = {n, heads, hd, gc_rnd(m, 1), malloc(m * 4), malloc(n * hd / 2 * 4), malloc(n * hd / 2 * 4),
                  gc_rnd(m, 1)};
    rope_tables(c.cs, c.sn, pos, n, inv, hd);
    float *dx = malloc(m * 4);
    memcpy(dx, c.dy, m * 4);
    rope_backward(dx, c.cs, c.sn, n, heads, hd);
    gc_check("rope dx", c.x, m, dx, rope_obj, &c, (int)m, 1e-2f, 1e-3);
    free(c.x), free(c.y), free(c.cs), free(c.sn), free(c.dy), free(dx);
}

/* ------------------------------------------------------------ attention */

typedef struct {
    int B, T, H, Hkv, hd;
    float *q, *k, *v, *out, *dy;
    int32_t *doc_start;
} att_ctx;
static double att_obj(void *p) {
    att_ctx *c = p;
    attention_forward(c->out, NULL, c->q, c->k, c->v, c->doc_start, c->B, c->T, c->H, c->Hkv, c->hd);
    return gc_dot(c->dy, c->out, (size_t)c->B * c->T * c->H * c->hd);
}
/* Rows of several documents each, lengths random; NULL when docs == 0. */
static int32_t *random_doc_starts(int B, int T, int docs) {
    if (!docs) return NULL;
    int32_t *ds = malloc((size_t)B * T * sizeof(int32_t));
    for (int b = 0; b < B; b++) {
        int start = 0;
        for (int t = 0; t < T; t++) {
            if (t > 0 && test_rand_u64() % (T / docs + 1) == 0) start = t;
            ds[(size_t)b * T + t] = start;
        }
    }
    return ds;
}
static void check_attention_backward(int B, int T, int H, int Hkv, int hd, int docs, int samples) {
    size_t nq = (size_t)B * T * H * hd, nkv = (size_t)B * T * Hkv * hd;
    att_ctx c = {B, T, H, Hkv, hd, gc_rnd(nq, 1.5f), gc_rnd(nkv, 1.5f), gc_rnd(nkv, 1), malloc(nq * 4),
                 gc_rnd(nq, 1), random_doc_starts(B, T, docs)};
    float *dq = gc_rnd(nq, 9), *dk = gc_rnd(nkv, 9), *dv = gc_rnd(nkv, 9); /* garbage: overwritten */
    attention_backward(dq, dk, dv, c.dy, c.q, c.k, c.v, c.doc_start, B, T, H, Hkv, hd);
    char what[96];
    snprintf(what, sizeof what, "attention B%d T%d H%d Hkv%d hd%d docs%d", B, T, H, Hkv, hd, docs);
    int bad = gc_check(what, c.q, nq, dq, att_obj, &c, samples, 1e-2f, 3e-3);
    bad += gc_check(what, c.k, nkv, dk, att_obj, &c, samples, 1e-2f, 3e-3);
    bad += gc_check(what, c.v, nkv, dv, att_obj, &c, samples, 1e-2f, 3e-3);
    EXPECT_MSG(bad == 0, "%s: %d mismatches (dq, dk, dv)", what, bad);
    free(c.q), free(c.k), free(c.v), free(c.out), free(c.dy), free(c.doc_start), free(dq), free(dk), free(dv);
}
TEST(attention_backward_matches_finite_differences) {
    test_seed(26);
    check_attention_backward(1, 5, 2, 2, 4, 0, 1000);  /* MHA, every coordinate */
    check_attention_backward(2, 9, 4, 2, 8, 0, 1000);  /* GQA 2 */
    check_attention_backward(2, 12, 8, 2, 4, 3, 1000); /* GQA 4 with packed documents */
    check_attention_backward(1, 11, 3, 1, 6, 2, 1000); /* MQA with packed documents */
}
TEST(attention_backward_across_query_tiles) {
    test_seed(27);
    check_attention_backward(1, 150, 2, 1, 4, 0, 120); /* 128 + 22 queries */
    check_attention_backward(2, 140, 2, 2, 4, 4, 120);
}

TEST(head_mask_backward_zeroes_masked_slots) {
    test_seed(28);
    int B = 2, T = 3, H = 4, hd = 2;
    uint8_t keep[8] = {1, 0, 1, 1, 0, 1, 1, 0};
    float *g = gc_rnd(B * T * H * hd, 1), *g0 = malloc(B * T * H * hd * 4);
    memcpy(g0, g, B * T * H * hd * 4);
    head_mask_backward(g, keep, B, T, H, hd);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++)
                for (int j = 0; j < hd; j++) {
                    size_t i = (((size_t)b * T + t) * H + h) * hd + j;
                    EXPECT(g[i] == (keep[b * H + h] ? g0[i] : 0.0f));
                }
    free(g), free(g0);
}

/* --------------------------------------------------------------- swiglu */

typedef struct {
    int64_t n;
    float *gate, *up, *y, *dy;
} swi_ctx;
static double swi_obj(void *p) {
    swi_ctx *c = p;
    swiglu_forward(c->y, c->gate, c->up, c->n);
    return gc_dot(c->dy, c->y, c->n);
}
TEST(swiglu_backward_matches_finite_differences) {
    test_seed(29);
    int64_t n = 40000; /* OpenMP path */
    swi_ctx c = {n, gc_rnd(n, 4), gc_rnd(n, 1), malloc(n * 4), gc_rnd(n, 1)};
    float *dg = malloc(n * 4), *du = malloc(n * 4);
    swiglu_backward(dg, du, c.dy, c.gate, c.up, n);
    gc_check("swiglu dgate", c.gate, n, dg, swi_obj, &c, 200, 1e-2f, 1e-3);
    gc_check("swiglu dup", c.up, n, du, swi_obj, &c, 200, 1e-2f, 1e-3);
    /* in place: dgate aliasing dout */
    float *alias = malloc(n * 4);
    memcpy(alias, c.dy, n * 4);
    swiglu_backward(alias, NULL, alias, c.gate, c.up, n);
    EXPECT(memcmp(alias, dg, n * 4) == 0);
    free(c.gate), free(c.up), free(c.y), free(c.dy), free(dg), free(du), free(alias);
}

/* ------------------------------------------- a whole decoder layer, chained */

/* x → RMSNorm → q,k,v (with biases) → RoPE → GQA attention → o_proj → +x →
 * RMSNorm → gate, up → SwiGLU → down → +, then a tied LM head on a final
 * RMSNorm; input from an embedding.  Checks that the pieces compose: the
 * gradients of the embedding table and of every weight against finite
 * differences of the whole chain. */
enum { L_B = 2, L_T = 6, L_D = 16, L_H = 4, L_KV = 2, L_HD = 4, L_I = 24, L_V = 11 };
#define L_N (L_B * L_T)
typedef struct {
    float emb[L_V * L_D], n1[L_D], wq[L_H * L_HD * L_D], bq[L_H * L_HD], wk[L_KV * L_HD * L_D], wv[L_KV * L_HD * L_D],
        wo[L_D * L_H * L_HD], n2[L_D], wg[L_I * L_D], wu[L_I * L_D], wd[L_D * L_I], nf[L_D];
} layer_w;
typedef struct {
    float x0[L_N * L_D], xa[L_N * L_D], h1[L_N * L_D], r1[L_N], q[L_N * L_H * L_HD], k[L_N * L_KV * L_HD],
        v[L_N * L_KV * L_HD], att[L_N * L_H * L_HD], o[L_N * L_D], x1[L_N * L_D], h2[L_N * L_D], r2[L_N],
        g[L_N * L_I], u[L_N * L_I], s[L_N * L_I], m[L_N * L_D], x2[L_N * L_D], hf[L_N * L_D], rf[L_N],
        logits[L_N * L_V];
} layer_a;
typedef struct {
    layer_w *w;
    layer_a *a;
    int32_t tok[L_N], ds[L_N];
    float cs[L_N * L_HD / 2], sn[L_N * L_HD / 2], dlogits[L_N * L_V];
} layer_ctx;

static double layer_obj(void *p) {
    layer_ctx *c = p;
    layer_w *w = c->w;
    layer_a *a = c->a;
    embedding_forward(a->x0, c->tok, w->emb, L_N, L_D);
    rmsnorm_forward(a->h1, a->r1, a->x0, w->n1, L_N, L_D, 1e-5f);
    linear_forward(a->q, a->h1, w->wq, w->bq, L_N, L_D, L_H * L_HD);
    linear_forward(a->k, a->h1, w->wk, NULL, L_N, L_D, L_KV * L_HD);
    linear_forward(a->v, a->h1, w->wv, NULL, L_N, L_D, L_KV * L_HD);
    rope_forward(a->q, c->cs, c->sn, L_N, L_H, L_HD);
    rope_forward(a->k, c->cs, c->sn, L_N, L_KV, L_HD);
    attention_forward(a->att, NULL, a->q, a->k, a->v, c->ds, L_B, L_T, L_H, L_KV, L_HD);
    linear_forward(a->o, a->att, w->wo, NULL, L_N, L_H * L_HD, L_D);
    for (int i = 0; i < L_N * L_D; i++) a->x1[i] = a->x0[i] + a->o[i];
    rmsnorm_forward(a->h2, a->r2, a->x1, w->n2, L_N, L_D, 1e-5f);
    linear_forward(a->g, a->h2, w->wg, NULL, L_N, L_D, L_I);
    linear_forward(a->u, a->h2, w->wu, NULL, L_N, L_D, L_I);
    swiglu_forward(a->s, a->g, a->u, L_N * L_I);
    linear_forward(a->m, a->s, w->wd, NULL, L_N, L_I, L_D);
    for (int i = 0; i < L_N * L_D; i++) a->x2[i] = a->x1[i] + a->m[i];
    rmsnorm_forward(a->hf, a->rf, a->x2, w->nf, L_N, L_D, 1e-5f);
    linear_forward(a->logits, a->hf, w->emb, NULL, L_N, L_D, L_V);
    return gc_dot(c->dlogits, a->logits, L_N * L_V);
}

static void layer_backward(layer_ctx *c, layer_w *gw) {
    layer_w *w = c->w;
    layer_a *a = c->a;
    static float dhf[L_N * L_D], dx[L_N * L_D], dtmp[L_N * L_D], ds[L_N * L_I], dg[L_N * L_I], du[L_N * L_I],
        datt[L_N * L_H * L_HD], dq[L_N * L_H * L_HD], dk[L_N * L_KV * L_HD], dv[L_N * L_KV * L_HD];
    memset(gw, 0, sizeof *gw);
    linear_backward(dhf, gw->emb, NULL, c->dlogits, a->hf, w->emb, L_N, L_D, L_V);
    rmsnorm_backward(dx, gw->nf, dhf, a->x2, w->nf, a->rf, L_N, L_D); /* dx = d x2 */
    linear_backward(ds, gw->wd, NULL, dx, a->s, w->wd, L_N, L_I, L_D);
    swiglu_backward(dg, du, ds, a->g, a->u, L_N * L_I);
    linear_backward(dtmp, gw->wg, NULL, dg, a->h2, w->wg, L_N, L_D, L_I);
    linear_backward(dhf, gw->wu, NULL, du, a->h2, w->wu, L_N, L_D, L_I);
    residual_add(dtmp, dhf, L_N * L_D);
    rmsnorm_backward(dhf, gw->n2, dtmp, a->x1, w->n2, a->r2, L_N, L_D);
    residual_add(dx, dhf, L_N * L_D); /* dx = d x1 */
    linear_backward(datt, gw->wo, NULL, dx, a->att, w->wo, L_N, L_H * L_HD, L_D);
    attention_backward(dq, dk, dv, datt, a->q, a->k, a->v, c->ds, L_B, L_T, L_H, L_KV, L_HD);
    rope_backward(dq, c->cs, c->sn, L_N, L_H, L_HD);
    rope_backward(dk, c->cs, c->sn, L_N, L_KV, L_HD);
    linear_backward(dtmp, gw->wq, gw->bq, dq, a->h1, w->wq, L_N, L_D, L_H * L_HD);
    linear_backward(dhf, gw->wk, NULL, dk, a->h1, w->wk, L_N, L_D, L_KV * L_HD);
    residual_add(dtmp, dhf, L_N * L_D);
    linear_backward(dhf, gw->wv, NULL, dv, a->h1, w->wv, L_N, L_D, L_KV * L_HD);
    residual_add(dtmp, dhf, L_N * L_D);
    rmsnorm_backward(dhf, gw->n1, dtmp, a->x0, w->n1, a->r1, L_N, L_D);
    residual_add(dx, dhf, L_N * L_D); /* dx = d x0 */
    embedding_backward(gw->emb, dx, c->tok, L_N, L_D);
}

TEST(decoder_layer_chain_matches_finite_differences) {
    test_seed(30);
    layer_w *w = malloc(sizeof *w), *gw = malloc(sizeof *gw);
    test_fill((float *)w, sizeof *w / 4, 0.5f);
    for (int j = 0; j < L_D; j++) w->n1[j] += 1, w->n2[j] += 1, w->nf[j] += 1;
    layer_ctx *c = calloc(1, sizeof *c);
    c->w = w;
    c->a = malloc(sizeof *c->a);
    int32_t pos[L_N];
    for (int i = 0; i < L_N; i++) {
        c->tok[i] = (int32_t)(test_rand_u64() % L_V);
        int t = i % L_T;
        c->ds[i] = t < 3 ? 0 : 3; /* two documents per row */
        pos[i] = t - c->ds[i];
    }
    hf_config cfg = llama3_rope();
    float inv[L_HD / 2];
    rope_inv_freq(inv, L_HD, &cfg);
    rope_tables(c->cs, c->sn, pos, L_N, inv, L_HD);
    test_fill(c->dlogits, L_N * L_V, 1);
    layer_obj(c);
    layer_backward(c, gw);
    float *params[] = {w->emb, w->n1, w->wq, w->bq, w->wk, w->wv, w->wo, w->n2, w->wg, w->wu, w->wd, w->nf};
    float *grads[] = {gw->emb, gw->n1, gw->wq, gw->bq, gw->wk, gw->wv, gw->wo, gw->n2, gw->wg, gw->wu, gw->wd, gw->nf};
    const char *names[] = {"emb", "n1", "wq", "bq", "wk", "wv", "wo", "n2", "wg", "wu", "wd", "nf"};
#define SZ(f) (sizeof w->f / sizeof(float))
    size_t sizes[] = {SZ(emb), SZ(n1), SZ(wq), SZ(bq), SZ(wk), SZ(wv), SZ(wo), SZ(n2), SZ(wg), SZ(wu), SZ(wd), SZ(nf)};
#undef SZ
    for (int i = 0; i < 12; i++) gc_check(names[i], params[i], sizes[i], grads[i], layer_obj, c, 40, 1e-2f, 5e-3);
    free(w), free(gw), free(c->a), free(c);
}

int main(void) {
    RUN(embedding_backward_scatter_adds);
    RUN(rmsnorm_backward_matches_finite_differences);
    RUN(linear_backward_matches_finite_differences);
    RUN(linear_backward_null_gradients_are_skipped);
    RUN(rope_backward_matches_finite_differences);
    RUN(attention_backward_matches_finite_differences);
    RUN(attention_backward_across_query_tiles);
    RUN(head_mask_backward_zeroes_masked_slots);
    RUN(swiglu_backward_matches_finite_differences);
    RUN(decoder_layer_chain_matches_finite_differences);
    return test_summary();
}
