/* Attribution scores of ra-probe on the CPU: one forward, one backward.
 *
 * Objective J = (1/N) Σ_prompts log p(correct answer) (the same log-prob the
 * exact probe measures).  For every head (l, h) the score is
 *     Σ_rows Σ_positions  ∂J/∂a_{l,h,t} · a_{l,h,t}
 * with a_{l,h,t} the head's output before o_proj: the first-order change of J
 * when a → 0, with the sign flipped, i.e. an estimate of the log-prob drop.
 *
 * The backward is the minimum needed: from the logits at the scored
 * positions down to the head outputs of layer 0, through final RMSNorm, each
 * MLP block and each attention block (o_proj, softmax attention, RoPE, q/k/v
 * projections, input RMSNorm).  Only the residual entering each layer is
 * kept from the forward; a layer's intermediates are recomputed when the
 * backward reaches it. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "probe.h"

/* in[n, in_dim] = dout[n, out_dim] · W[out_dim, in_dim] (+= when accumulate). */
static void linear_backward_input(float *din, const float *dout, const float *W, int n, int in_dim, int out_dim,
                                  int accumulate) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in_dim, out_dim, 1.0f, dout, out_dim, W, in_dim,
                accumulate ? 1.0f : 0.0f, din, in_dim);
}

/* y = w ⊙ x·r, r = 1/rms(x): dx += r·(w⊙dy) − x·r³·⟨w⊙dy, x⟩/D. */
static void rmsnorm_backward_acc(float *dx, const float *dy, const float *x, const float *rstd, const float *w, int n,
                                 int D) {
#pragma omp parallel for if ((int64_t)n * D >= 65536)
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * D, *gi = dy + (size_t)i * D;
        float *di = dx + (size_t)i * D;
        double dot = 0;
        for (int j = 0; j < D; j++) dot += (double)w[j] * gi[j] * xi[j];
        double r = rstd[i], c = r * r * r * dot / D;
        for (int j = 0; j < D; j++) di[j] += (float)(r * w[j] * gi[j] - xi[j] * c);
    }
}

/* Inverse of rope_forward on gradients: rotate by −θ. */
static void attr_rope_backward(float *g, const float *cos_t, const float *sin_t, int n, int heads, int hd) {
    int half = hd / 2;
#pragma omp parallel for if ((int64_t)n * heads * hd >= 65536)
    for (int i = 0; i < n; i++) {
        const float *c = cos_t + (size_t)i * half, *s = sin_t + (size_t)i * half;
        for (int h = 0; h < heads; h++) {
            float *v = g + ((size_t)i * heads + h) * hd;
            for (int j = 0; j < half; j++) {
                float g1 = v[j], g2 = v[j + half];
                v[j] = g1 * c[j] + g2 * s[j];
                v[j + half] = g2 * c[j] - g1 * s[j];
            }
        }
    }
}

/* Causal GQA attention backward (rows of T tokens, no document mask):
 * given q, k, v (after RoPE) and dout [B,T,H,hd], write dq and dk, dv.
 * Probabilities are recomputed per query.  Parallel over (row, KV group) so
 * dk/dv of a group are written by one thread. */
static void attr_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                               const float *v, int B, int T, int H, int Hkv, int hd) {
    int group = H / Hkv;
    double scale = 1.0 / sqrt((double)hd);
    size_t qr = (size_t)H * hd, kr = (size_t)Hkv * hd;
    memset(dk, 0, (size_t)B * T * kr * sizeof(float));
    memset(dv, 0, (size_t)B * T * kr * sizeof(float));
#pragma omp parallel
    {
        double *p = xmalloc((size_t)T * sizeof(double)), *dp = xmalloc((size_t)T * sizeof(double));
#pragma omp for collapse(2) schedule(dynamic, 1)
        for (int b = 0; b < B; b++)
            for (int g = 0; g < Hkv; g++)
                for (int h = g * group; h < (g + 1) * group; h++)
                    for (int t = 0; t < T; t++) {
                        const float *qt = q + ((size_t)b * T + t) * qr + (size_t)h * hd;
                        const float *go = dout + ((size_t)b * T + t) * qr + (size_t)h * hd;
                        const float *kb = k + (size_t)b * T * kr + (size_t)g * hd;
                        const float *vb = v + (size_t)b * T * kr + (size_t)g * hd;
                        double mx = -INFINITY, sum = 0, pdp = 0;
                        for (int s = 0; s <= t; s++) {
                            double a = 0;
                            for (int j = 0; j < hd; j++) a += (double)qt[j] * kb[(size_t)s * kr + j];
                            p[s] = a * scale;
                            if (p[s] > mx) mx = p[s];
                        }
                        for (int s = 0; s <= t; s++) sum += p[s] = exp(p[s] - mx);
                        for (int s = 0; s <= t; s++) {
                            p[s] /= sum;
                            double a = 0;
                            for (int j = 0; j < hd; j++) a += (double)go[j] * vb[(size_t)s * kr + j];
                            dp[s] = a;
                            pdp += p[s] * a;
                        }
                        float *dqt = dq + ((size_t)b * T + t) * qr + (size_t)h * hd;
                        memset(dqt, 0, (size_t)hd * sizeof(float));
                        for (int s = 0; s <= t; s++) {
                            float ds = (float)(p[s] * (dp[s] - pdp) * scale);
                            float ps = (float)p[s];
                            const float *ks = kb + (size_t)s * kr;
                            float *dks = dk + ((size_t)b * T + s) * kr + (size_t)g * hd;
                            float *dvs = dv + ((size_t)b * T + s) * kr + (size_t)g * hd;
                            for (int j = 0; j < hd; j++) {
                                dqt[j] += ds * ks[j];
                                dks[j] += ds * qt[j];
                                dvs[j] += ps * go[j];
                            }
                        }
                    }
        free(p);
        free(dp);
    }
}

/* Buffers of one chunk of B rows × T tokens. */
typedef struct attr_bufs {
    float **hidden;                  /* [L+1] residuals [n, D] */
    float *xn, *rstd1, *q, *k, *v, *att, *xmid, *xn2, *rstd2, *gate, *up, *s;
    float *g, *gmid, *tmp, *ds, *dgate, *dup, *datt, *dq, *dk, *dv;
    float *cos_t, *sin_t, *inv_freq;
    int32_t *pos;
} attr_bufs;

static void bufs_alloc(attr_bufs *b, const hf_config *c, size_t n) {
    size_t D = c->hidden_size, In = c->intermediate_size, qd = (size_t)c->num_heads * c->head_dim,
           kd = (size_t)c->num_kv_heads * c->head_dim, half = c->head_dim / 2;
    b->hidden = xcalloc((size_t)c->num_layers + 1, sizeof(float *));
    for (int l = 0; l <= c->num_layers; l++) b->hidden[l] = xmalloc(n * D * sizeof(float));
    float **D_bufs[] = {&b->xn, &b->xmid, &b->xn2, &b->g, &b->gmid, &b->tmp};
    for (size_t i = 0; i < sizeof D_bufs / sizeof *D_bufs; i++) *D_bufs[i] = xmalloc(n * D * sizeof(float));
    float **I_bufs[] = {&b->gate, &b->up, &b->s, &b->ds, &b->dgate, &b->dup};
    for (size_t i = 0; i < sizeof I_bufs / sizeof *I_bufs; i++) *I_bufs[i] = xmalloc(n * In * sizeof(float));
    float **Q_bufs[] = {&b->q, &b->att, &b->datt, &b->dq};
    for (size_t i = 0; i < sizeof Q_bufs / sizeof *Q_bufs; i++) *Q_bufs[i] = xmalloc(n * qd * sizeof(float));
    float **K_bufs[] = {&b->k, &b->v, &b->dk, &b->dv};
    for (size_t i = 0; i < sizeof K_bufs / sizeof *K_bufs; i++) *K_bufs[i] = xmalloc(n * kd * sizeof(float));
    b->rstd1 = xmalloc(n * sizeof(float));
    b->rstd2 = xmalloc(n * sizeof(float));
    b->cos_t = xmalloc(n * half * sizeof(float));
    b->sin_t = xmalloc(n * half * sizeof(float));
    b->inv_freq = xmalloc(half * sizeof(float));
    b->pos = xmalloc(n * sizeof(int32_t));
    rope_inv_freq(b->inv_freq, c->head_dim, c);
}

static void bufs_free(attr_bufs *b, int L) {
    for (int l = 0; l <= L; l++) free(b->hidden[l]);
    free(b->hidden);
    float *all[] = {b->xn, b->rstd1, b->q,  b->k,     b->v,     b->att,   b->xmid, b->xn2, b->rstd2,
                    b->gate, b->up,  b->s,  b->g,     b->gmid,  b->tmp,   b->ds,   b->dgate, b->dup,
                    b->datt, b->dq,  b->dk, b->dv,    b->cos_t, b->sin_t, b->inv_freq};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) free(all[i]);
    free(b->pos);
}

/* Recompute layer l's intermediates from the cached residual, then push the
 * gradient b->g (∂J/∂x_{l+1}) back to ∂J/∂x_l, adding each head's
 * grad·output to attr[l*H + h]. */
static void layer_backward(const ra_model *m, int l, attr_bufs *b, int B, int T, double *attr) {
    const hf_config *c = &m->cfg;
    const ra_layer *Ly = &m->layers[l];
    int n = B * T, D = c->hidden_size, In = c->intermediate_size, H = c->num_heads, Hkv = c->num_kv_heads,
        hd = c->head_dim;
    float eps = (float)c->rms_norm_eps;
    const float *x = b->hidden[l];

    /* forward recomputation */
    rmsnorm_forward(b->xn, b->rstd1, x, Ly->input_norm, n, D, eps);
    linear_forward(b->q, b->xn, Ly->wq, Ly->bq, n, D, H * hd);
    linear_forward(b->k, b->xn, Ly->wk, Ly->bk, n, D, Hkv * hd);
    linear_forward(b->v, b->xn, Ly->wv, Ly->bv, n, D, Hkv * hd);
    rope_forward(b->q, b->cos_t, b->sin_t, n, H, hd);
    rope_forward(b->k, b->cos_t, b->sin_t, n, Hkv, hd);
    attention_forward(b->att, NULL, b->q, b->k, b->v, NULL, B, T, H, Hkv, hd);
    /* heads that are not attention heads of this layer output nothing */
    for (int h = 0; h < H; h++) {
        int is_attn = 0;
        for (int i = 0; i < Ly->n_attn_heads; i++) is_attn |= Ly->attn_heads[i] == h;
        if (!is_attn)
            for (int t = 0; t < n; t++) memset(b->att + ((size_t)t * H + h) * hd, 0, (size_t)hd * sizeof(float));
    }
    linear_forward(b->xmid, b->att, Ly->wo, Ly->bo, n, H * hd, D);
    residual_add(b->xmid, x, (int64_t)n * D);
    rmsnorm_forward(b->xn2, b->rstd2, b->xmid, Ly->post_norm, n, D, eps);
    linear_forward(b->gate, b->xn2, Ly->w_gate, NULL, n, D, In);
    linear_forward(b->up, b->xn2, Ly->w_up, NULL, n, D, In);

    /* MLP backward: y = down(silu(gate) * up) */
    linear_backward_input(b->ds, b->g, Ly->w_down, n, In, D, 0);
#pragma omp parallel for if ((int64_t)n * In >= 65536)
    for (int64_t i = 0; i < (int64_t)n * In; i++) {
        float a = b->gate[i], sg = 1.0f / (1.0f + expf(-a)), silu = a * sg;
        b->dgate[i] = b->ds[i] * b->up[i] * sg * (1.0f + a * (1.0f - sg));
        b->dup[i] = b->ds[i] * silu;
    }
    linear_backward_input(b->tmp, b->dgate, Ly->w_gate, n, D, In, 0);
    linear_backward_input(b->tmp, b->dup, Ly->w_up, n, D, In, 1);
    memcpy(b->gmid, b->g, (size_t)n * D * sizeof(float));
    rmsnorm_backward_acc(b->gmid, b->tmp, b->xmid, b->rstd2, Ly->post_norm, n, D);

    /* o_proj backward and the attribution of every head */
    linear_backward_input(b->datt, b->gmid, Ly->wo, n, H * hd, D, 0);
    for (int h = 0; h < H; h++) {
        double s = 0;
#pragma omp parallel for reduction(+ : s) if ((int64_t)n * hd >= 65536)
        for (int t = 0; t < n; t++) {
            const float *a = b->att + ((size_t)t * H + h) * hd, *g = b->datt + ((size_t)t * H + h) * hd;
            for (int j = 0; j < hd; j++) s += (double)a[j] * g[j];
        }
        attr[l * H + h] += s;
    }
    if (l == 0) return; /* nothing below layer 0 is scored */

    /* attention, RoPE, q/k/v and input norm backward */
    for (int h = 0; h < H; h++) {
        int is_attn = 0;
        for (int i = 0; i < Ly->n_attn_heads; i++) is_attn |= Ly->attn_heads[i] == h;
        if (!is_attn)
            for (int t = 0; t < n; t++) memset(b->datt + ((size_t)t * H + h) * hd, 0, (size_t)hd * sizeof(float));
    }
    attr_attention_backward(b->dq, b->dk, b->dv, b->datt, b->q, b->k, b->v, B, T, H, Hkv, hd);
    attr_rope_backward(b->dq, b->cos_t, b->sin_t, n, H, hd);
    attr_rope_backward(b->dk, b->cos_t, b->sin_t, n, Hkv, hd);
    linear_backward_input(b->tmp, b->dq, Ly->wq, n, D, H * hd, 0);
    linear_backward_input(b->tmp, b->dk, Ly->wk, n, D, Hkv * hd, 1);
    linear_backward_input(b->tmp, b->dv, Ly->wv, n, D, Hkv * hd, 1);
    memcpy(b->g, b->gmid, (size_t)n * D * sizeof(float));
    rmsnorm_backward_acc(b->g, b->tmp, x, b->rstd1, Ly->input_norm, n, D);
}

int probe_attribution_cpu(const ra_model *m, const probe_data *d, const probe_opts *o, float *attr,
                          probe_outcome *base, ra_error *err) {
    const hf_config *c = &m->cfg;
    int L = c->num_layers, H = c->num_heads, D = c->hidden_size, V = c->vocab_size, N = d->n_items;
    int B_max = o && o->batch > 0 ? o->batch : 16;
    if (B_max < d->max_rows_per_item) B_max = d->max_rows_per_item;
    int T_max = d->max_tokens;
    ra_forward_state *st = ra_forward_state_create(m, B_max, T_max);
    attr_bufs b;
    bufs_alloc(&b, c, (size_t)B_max * T_max);
    double *acc = xcalloc((size_t)L * H, sizeof(double));
    int32_t *tokens = xmalloc((size_t)B_max * T_max * sizeof(int32_t));
    int32_t *counts = xmalloc((size_t)B_max * sizeof(int32_t));
    int32_t *positions = xmalloc((size_t)B_max * d->max_scored_per_row * sizeof(int32_t));
    float *logits = xmalloc((size_t)B_max * d->max_scored_per_row * V * sizeof(float));
    int *slot_of_row = xmalloc((size_t)d->n_rows * sizeof(int));
    int *logit_of_slot = xmalloc((size_t)B_max * sizeof(int));
    float *dh = xmalloc((size_t)D * sizeof(float));
    double *pz = xmalloc((size_t)V * sizeof(double));
    int rc = 0;

    for (int i0 = 0; i0 < N && !rc;) {
        int i1 = i0, rows = 0, T = 0;
        while (i1 < N && rows + d->items[i1].n_rows <= B_max) {
            const probe_item *it = &d->items[i1];
            for (int r = 0; r < it->n_rows; r++) {
                slot_of_row[it->first_row + r] = rows + r;
                if (d->rows[it->first_row + r].n_tokens > T) T = d->rows[it->first_row + r].n_tokens;
            }
            rows += it->n_rows;
            i1++;
        }
        int np = 0, lrow = 0;
        for (int i = i0; i < i1; i++)
            for (int r = 0; r < d->items[i].n_rows; r++) {
                const probe_row *row = &d->rows[d->items[i].first_row + r];
                int slot = slot_of_row[d->items[i].first_row + r];
                int32_t *t = tokens + (size_t)slot * T;
                memcpy(t, row->tokens, (size_t)row->n_tokens * sizeof(int32_t));
                memset(t + row->n_tokens, 0, (size_t)(T - row->n_tokens) * sizeof(int32_t));
                counts[slot] = row->n_scored;
                logit_of_slot[slot] = lrow;
                lrow += row->n_scored;
                for (int j = 0; j < row->n_scored; j++) positions[np++] = row->n_tokens - row->n_scored + j;
            }
        ra_forward_opts fo = {0};
        fo.hidden_out = b.hidden;
        fo.logits = logits;
        fo.logit_counts = counts;
        fo.logit_positions = positions;
        if ((rc = ra_forward_cpu(st, tokens, rows, T, &fo, err))) break;

        /* ∂J/∂x_L at the scored positions of the correct candidates */
        int n = rows * T;
        memset(b.g, 0, (size_t)n * D * sizeof(float));
        for (int i = i0; i < i1; i++) {
            const probe_item *it = &d->items[i];
            for (int t = it->cand_start[it->correct]; t < it->cand_start[it->correct + 1]; t++) {
                const probe_target *tg = &it->targets[t];
                const probe_row *row = &d->rows[tg->row];
                int slot = slot_of_row[tg->row];
                const float *z = logits + (size_t)(logit_of_slot[slot] + tg->pos - (row->n_tokens - row->n_scored)) * V;
                double mx = z[0], sum = 0;
                for (int v = 1; v < V; v++) mx = z[v] > mx ? z[v] : mx;
                for (int v = 0; v < V; v++) sum += pz[v] = exp(z[v] - mx);
                /* dJ/dz = (onehot − softmax) / N; dh = dz · W_lm */
                for (int v = 0; v < V; v++) pz[v] = -pz[v] / sum / N;
                pz[tg->token] += 1.0 / N;
                for (int j = 0; j < D; j++) dh[j] = 0;
                for (int v = 0; v < V; v++) {
                    float w = (float)pz[v];
                    const float *wr = m->lm_head + (size_t)v * D;
                    for (int j = 0; j < D; j++) dh[j] += w * wr[j];
                }
                size_t at = (size_t)slot * T + tg->pos;
                const float *xL = b.hidden[L] + at * D;
                double ss = 0;
                for (int j = 0; j < D; j++) ss += (double)xL[j] * xL[j];
                float rstd = (float)(1.0 / sqrt(ss / D + c->rms_norm_eps));
                rmsnorm_backward_acc(b.g + at * D, dh, xL, &rstd, m->final_norm, 1, D);
            }
        }
        for (int t = 0; t < n; t++) b.pos[t] = t % T;
        rope_tables(b.cos_t, b.sin_t, b.pos, n, b.inv_freq, c->head_dim);
        for (int l = L - 1; l >= 0; l--) layer_backward(m, l, &b, rows, T, acc);
        i0 = i1;
    }
    for (int i = 0; i < L * H; i++) attr[i] = (float)acc[i];
    if (!rc && base) rc = probe_eval(&ra_forward_backend_cpu, m, d, NULL, o, base, err);

    free(acc);
    free(tokens);
    free(counts);
    free(positions);
    free(logits);
    free(slot_of_row);
    free(logit_of_slot);
    free(dh);
    free(pz);
    bufs_free(&b, L);
    ra_forward_state_free(st);
    return rc;
}
