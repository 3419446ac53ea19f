/* DiscreteMamba2 mixer forward and backward (see dm2.h for the math). */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dm2.h"

int dm2_check_config(const dm2_config *c, ra_error *err) {
    if (c->d_model < 1 || c->n_heads < 1 || c->head_dim < 1 || c->d_state < 1 || c->n_groups < 1)
        return ra_fail(err, EX_DATAERR,
                       "dm2 config: d_model, n_heads, head_dim, d_state, n_groups must be >= 1, got %d, %d, %d, %d, %d",
                       c->d_model, c->n_heads, c->head_dim, c->d_state, c->n_groups);
    if (c->n_heads % c->n_groups != 0)
        return ra_fail(err, EX_DATAERR, "dm2 config: n_heads %d is not a multiple of n_groups %d", c->n_heads,
                       c->n_groups);
    if (c->chunk < 0) return ra_fail(err, EX_DATAERR, "dm2 config: chunk must be >= 0, got %d", c->chunk);
    int64_t in_dim = 2 * (int64_t)c->n_heads * c->head_dim + 2 * (int64_t)c->n_groups * c->d_state + c->n_heads;
    if (in_dim > (1 << 28))
        return ra_fail(err, EX_DATAERR, "dm2 config: in_proj width %lld is unreasonably large", (long long)in_dim);
    return 0;
}

int dm2_d_inner(const dm2_config *c) { return c->n_heads * c->head_dim; }
int dm2_conv_dim(const dm2_config *c) { return c->n_heads * c->head_dim + 2 * c->n_groups * c->d_state; }
int dm2_in_proj_dim(const dm2_config *c) { return dm2_conv_dim(c) + c->n_heads * c->head_dim + c->n_heads; }
int dm2_out_dim(const dm2_config *c) { return c->has_out_proj ? c->d_model : dm2_d_inner(c); }

ssd_dims dm2_ssd_dims(const dm2_config *c, int B, int T) {
    ssd_dims d = {.B = B, .T = T, .H = c->n_heads, .P = c->head_dim, .G = c->n_groups, .N = c->d_state};
    return d;
}

static int chunk_of(const dm2_config *c) { return c->chunk > 0 ? c->chunk : SSD_DEFAULT_CHUNK; }

size_t dm2_param_count(const dm2_config *c) {
    size_t D = c->d_model, inner = dm2_d_inner(c), conv = dm2_conv_dim(c);
    return dm2_in_proj_dim(c) * D + conv * DM2_CONV_K + conv + c->n_heads + inner + (c->has_out_proj ? D * inner : 0);
}

void dm2_params_alloc(dm2_params *p, const dm2_config *c) {
    size_t D = c->d_model, inner = dm2_d_inner(c), conv = dm2_conv_dim(c);
    float *m = xcalloc(dm2_param_count(c), sizeof(float));
    p->memory = m;
    p->in_proj_w = m, m += dm2_in_proj_dim(c) * D;
    p->conv_w = m, m += conv * DM2_CONV_K;
    p->conv_b = m, m += conv;
    p->D = m, m += c->n_heads;
    p->z_bias = m, m += inner;
    p->out_proj_w = c->has_out_proj ? m : NULL;
}

void dm2_params_free(dm2_params *p) {
    free(p->memory);
    memset(p, 0, sizeof *p);
}

void dm2_params_zero(dm2_params *p, const dm2_config *c) { memset(p->memory, 0, sizeof(float) * dm2_param_count(c)); }

dm2_acts *dm2_alloc_state(int B, int T, const dm2_config *cfg, ra_error *err) {
    if (dm2_check_config(cfg, err)) return NULL;
    if (B < 1 || T < 1) {
        ra_fail(err, EX_DATAERR, "dm2: batch %d x length %d: both must be >= 1", B, T);
        return NULL;
    }
    dm2_acts *s = xcalloc(1, sizeof *s);
    s->B = B, s->T = T, s->cfg = *cfg;
    size_t BT = (size_t)B * T, inner = dm2_d_inner(cfg), gn = (size_t)cfg->n_groups * cfg->d_state;
    size_t in_dim = dm2_in_proj_dim(cfg), H = cfg->n_heads;
    s->proj = xmalloc(sizeof(float) * BT * in_dim);
    s->dproj = xmalloc(sizeof(float) * BT * in_dim);
    s->x = xmalloc(sizeof(float) * BT * inner);
    s->dx = xmalloc(sizeof(float) * BT * inner);
    s->Bm = xmalloc(sizeof(float) * BT * gn);
    s->dBm = xmalloc(sizeof(float) * BT * gn);
    s->Cm = xmalloc(sizeof(float) * BT * gn);
    s->dCm = xmalloc(sizeof(float) * BT * gn);
    s->a = xmalloc(sizeof(float) * BT * H);
    s->da = xmalloc(sizeof(float) * BT * H);
    s->y = xmalloc(sizeof(float) * BT * inner);
    s->dy = xmalloc(sizeof(float) * BT * inner);
    s->yg = xmalloc(sizeof(float) * BT * inner);
    s->dyg = xmalloc(sizeof(float) * BT * inner);
    return s;
}

void dm2_free_state(dm2_acts *s) {
    if (!s) return;
    free(s->proj), free(s->dproj), free(s->x), free(s->dx), free(s->Bm), free(s->dBm), free(s->Cm), free(s->dCm);
    free(s->a), free(s->da), free(s->y), free(s->dy), free(s->yg), free(s->dyg);
    free(s);
}

static inline float sigmoidf_(float v) { return 1.0f / (1.0f + expf(-v)); }

/* Column offsets of the pieces of one in_proj row. */
typedef struct proj_layout {
    int in_dim, inner, gn, H, off_B, off_C, off_z, off_A;
} proj_layout;

static proj_layout layout_of(const dm2_config *c) {
    proj_layout l;
    l.in_dim = dm2_in_proj_dim(c);
    l.inner = dm2_d_inner(c);
    l.gn = c->n_groups * c->d_state;
    l.H = c->n_heads;
    l.off_B = l.inner;
    l.off_C = l.inner + l.gn;
    l.off_z = l.inner + 2 * l.gn;
    l.off_A = l.off_z + l.inner;
    return l;
}

/* The three conv ranges (x, B, C) of proj into their own buffers. */
static void conv_xbc_forward(dm2_acts *s, const dm2_params *p, const uint8_t *starts) {
    proj_layout L = layout_of(&s->cfg);
    dm2_conv_forward(s->x, L.inner, s->proj, L.in_dim, p->conv_w, p->conv_b, starts, s->B, s->T, L.inner);
    dm2_conv_forward(s->Bm, L.gn, s->proj + L.off_B, L.in_dim, p->conv_w + (int64_t)L.off_B * DM2_CONV_K,
                     p->conv_b + L.off_B, starts, s->B, s->T, L.gn);
    dm2_conv_forward(s->Cm, L.gn, s->proj + L.off_C, L.in_dim, p->conv_w + (int64_t)L.off_C * DM2_CONV_K,
                     p->conv_b + L.off_C, starts, s->B, s->T, L.gn);
}

void dm2_forward(float *out, float *final_state, dm2_acts *s, const dm2_params *p, const float *u,
                 const uint8_t *starts) {
    const dm2_config *c = &s->cfg;
    const proj_layout L = layout_of(c);
    const int64_t BT = (int64_t)s->B * s->T;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)BT, L.in_dim, c->d_model, 1.0f, u, c->d_model,
                p->in_proj_w, c->d_model, 0.0f, s->proj, L.in_dim);
    conv_xbc_forward(s, p, starts);
    for (int64_t r = 0; r < BT; r++) ssd_decay_forward(s->a + r * L.H, s->proj + r * L.in_dim + L.off_A, L.H);
    ssd_dims d = dm2_ssd_dims(c, s->B, s->T);
    ssd_chunked_forward(s->y, final_state, s->x, s->Bm, s->Cm, s->a, p->D, starts, NULL, &d, chunk_of(c));
#pragma omp parallel for schedule(static) if (BT * L.inner > 32768)
    for (int64_t r = 0; r < BT; r++) {
        const float *z = s->proj + r * L.in_dim + L.off_z;
        for (int i = 0; i < L.inner; i++) {
            float v = z[i] + p->z_bias[i];
            s->yg[r * L.inner + i] = s->y[r * L.inner + i] * v * sigmoidf_(v);
        }
    }
    if (c->has_out_proj)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)BT, c->d_model, L.inner, 1.0f, s->yg, L.inner,
                    p->out_proj_w, L.inner, 0.0f, out, c->d_model);
    else
        memcpy(out, s->yg, sizeof(float) * BT * L.inner);
}

/* From s->dx (when with_x), s->dBm, s->dCm, s->da and the z columns of
 * s->dproj (already written) back through the decay, the conv and in_proj.
 * Without x the x columns of dproj are zero. */
static void backward_to_input(dm2_params *g, float *du, dm2_acts *s, const dm2_params *p, const float *u,
                              const uint8_t *starts, int with_x) {
    const dm2_config *c = &s->cfg;
    const proj_layout L = layout_of(c);
    const int64_t BT = (int64_t)s->B * s->T;
    const int D = c->d_model;

    /* a = −softplus(A_log) */
    for (int64_t r = 0; r < BT; r++)
        ssd_decay_backward(s->dproj + r * L.in_dim + L.off_A, s->da + r * L.H, s->proj + r * L.in_dim + L.off_A, L.H);

    /* conv of x, B, C */
    if (with_x)
        dm2_conv_backward(s->dproj, L.in_dim, g->conv_w, g->conv_b, s->dx, L.inner, s->proj, L.in_dim, p->conv_w,
                          starts, s->B, s->T, L.inner);
    else
        for (int64_t r = 0; r < BT; r++) memset(s->dproj + r * L.in_dim, 0, sizeof(float) * L.inner);
    dm2_conv_backward(s->dproj + L.off_B, L.in_dim, g->conv_w + (int64_t)L.off_B * DM2_CONV_K, g->conv_b + L.off_B,
                      s->dBm, L.gn, s->proj + L.off_B, L.in_dim, p->conv_w + (int64_t)L.off_B * DM2_CONV_K, starts,
                      s->B, s->T, L.gn);
    dm2_conv_backward(s->dproj + L.off_C, L.in_dim, g->conv_w + (int64_t)L.off_C * DM2_CONV_K, g->conv_b + L.off_C,
                      s->dCm, L.gn, s->proj + L.off_C, L.in_dim, p->conv_w + (int64_t)L.off_C * DM2_CONV_K, starts,
                      s->B, s->T, L.gn);

    /* in_proj */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, L.in_dim, D, (int)BT, 1.0f, s->dproj, L.in_dim, u, D, 1.0f,
                g->in_proj_w, D);
    if (du)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)BT, D, L.in_dim, 1.0f, s->dproj, L.in_dim,
                    p->in_proj_w, D, 1.0f, du, D);
}

void dm2_backward(dm2_params *g, float *du, const float *dout, dm2_acts *s, const dm2_params *p, const float *u,
                  const uint8_t *starts) {
    const dm2_config *c = &s->cfg;
    const proj_layout L = layout_of(c);
    const int64_t BT = (int64_t)s->B * s->T;
    const int D = c->d_model;

    /* out_proj */
    const float *dyg = dout;
    if (c->has_out_proj) {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, D, L.inner, (int)BT, 1.0f, dout, D, s->yg, L.inner, 1.0f,
                    g->out_proj_w, L.inner);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)BT, L.inner, D, 1.0f, dout, D, p->out_proj_w,
                    L.inner, 0.0f, s->dyg, L.inner);
        dyg = s->dyg;
    }

    /* gate: yg = y · silu(v), v = z + z_bias; dz goes straight into dproj */
#pragma omp parallel for schedule(static) if (BT * L.inner > 32768)
    for (int64_t r = 0; r < BT; r++) {
        const float *z = s->proj + r * L.in_dim + L.off_z;
        float *dz = s->dproj + r * L.in_dim + L.off_z;
        for (int i = 0; i < L.inner; i++) {
            float v = z[i] + p->z_bias[i], sg = sigmoidf_(v), gy = dyg[r * L.inner + i];
            s->dy[r * L.inner + i] = gy * v * sg;
            dz[i] = gy * s->y[r * L.inner + i] * sg * (1.0f + v * (1.0f - sg));
        }
    }
#pragma omp parallel for schedule(static) if (BT * L.inner > 32768)
    for (int i = 0; i < L.inner; i++) {
        double acc = 0;
        for (int64_t r = 0; r < BT; r++) acc += s->dproj[r * L.in_dim + L.off_z + i];
        g->z_bias[i] += (float)acc;
    }

    /* SSD core (y includes D·x) */
    ssd_dims d = dm2_ssd_dims(c, s->B, s->T);
    float *dD = xmalloc(sizeof(float) * L.H);
    ssd_chunked_backward(s->dx, s->dBm, s->dCm, s->da, dD, NULL, s->dy, s->x, s->Bm, s->Cm, s->a, p->D, starts, NULL,
                         &d, chunk_of(c));
    for (int h = 0; h < L.H; h++) g->D[h] += dD[h];
    free(dD);

    backward_to_input(g, du, s, p, u, starts, 1);
}

void dm2_matrix_forward(float *Tm, dm2_acts *s, const dm2_params *p, const float *u, const uint8_t *starts) {
    const dm2_config *c = &s->cfg;
    const proj_layout L = layout_of(c);
    const int64_t BT = (int64_t)s->B * s->T;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)BT, L.in_dim, c->d_model, 1.0f, u, c->d_model,
                p->in_proj_w, c->d_model, 0.0f, s->proj, L.in_dim);
    dm2_conv_forward(s->Bm, L.gn, s->proj + L.off_B, L.in_dim, p->conv_w + (int64_t)L.off_B * DM2_CONV_K,
                     p->conv_b + L.off_B, starts, s->B, s->T, L.gn);
    dm2_conv_forward(s->Cm, L.gn, s->proj + L.off_C, L.in_dim, p->conv_w + (int64_t)L.off_C * DM2_CONV_K,
                     p->conv_b + L.off_C, starts, s->B, s->T, L.gn);
    for (int64_t r = 0; r < BT; r++) ssd_decay_forward(s->a + r * L.H, s->proj + r * L.in_dim + L.off_A, L.H);
    ssd_dims d = dm2_ssd_dims(c, s->B, s->T);
    ssd_matrix_forward(Tm, s->Bm, s->Cm, s->a, p->D, starts, &d);
}

void dm2_matrix_backward(dm2_params *g, float *du, const float *dTm, dm2_acts *s, const dm2_params *p,
                         const float *u, const uint8_t *starts) {
    const proj_layout L = layout_of(&s->cfg);
    const int64_t BT = (int64_t)s->B * s->T;
    ssd_dims d = dm2_ssd_dims(&s->cfg, s->B, s->T);
    float *dD = xmalloc(sizeof(float) * L.H);
    ssd_matrix_backward(s->dBm, s->dCm, s->da, dD, dTm, s->Bm, s->Cm, s->a, starts, &d);
    for (int h = 0; h < L.H; h++) g->D[h] += dD[h];
    free(dD);
    for (int64_t r = 0; r < BT; r++) memset(s->dproj + r * L.in_dim + L.off_z, 0, sizeof(float) * L.inner);
    backward_to_input(g, du, s, p, u, starts, 0);
}
