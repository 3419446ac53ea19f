/* MOHAWK stage 1 (matrix orientation) on the CPU: see stage1.h. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dm2.h"
#include "forward.h"
#include "hybrid.h"
#include "loss.h"
#include "ops.h"
#include "stage1.h"
#include "stage2.h"

struct ra_stage1 {
    const ra_model *teacher;
    ra_model *student;
    int T_max;
    int n;            /* chosen layers with SSM heads */
    int *layer;       /* [n] */
    int *Hs;          /* [n] SSM heads */
    int **pair;       /* [n][Hs] teacher query head of each SSM head */
    dm2_params *grad; /* [n] full-shape gradients */
    dm2_acts **acts;  /* [n] one row of T_max */
    ra_forward_state *fs; /* teacher, one row */
    float *A, *Ts;    /* [Hs_max, T_max, T_max] */
    float *h[2];      /* [T_max, D] teacher hidden state entering the current / next chosen layer */
    float *xn;        /* [T_max, D] */
    uint8_t *starts;  /* [T_max] */
    ra_head_ref *refs;     /* [Hs_max] */
    float **hidden_slots;  /* [num_layers + 1], NULL except during a call */
};

/* ------------------------------------------------------------ checks */

int ra_stage1_check_models(const ra_model *t, const char *tname, const ra_model *s, const char *sname,
                           ra_error *err) {
    if (t->hybrid)
        return ra_fail(err, EX_DATAERR, "%s: is a hybrid student (meta.hybrid), expected the teacher", tname);
    if (!s->hybrid)
        return ra_fail(err, EX_DATAERR, "%s: is not a hybrid student (no meta.hybrid); make one with ra-graft", sname);
    return ra_stage2_check_pair(t, s, err); /* same config, recorded teacher id */
}

int ra_stage1_pairing(const ra_model *student, int layer, int *heads) {
    const ra_layer *L = &student->layers[layer];
    for (int h = 0; h < L->n_ssm_heads; h++) heads[h] = L->ssm_heads ? L->ssm_heads[h] : h;
    return L->n_ssm_heads;
}

static int chosen(const uint8_t *layers, int l) { return !layers || layers[l]; }

int64_t ra_stage1_matrix_bytes(const ra_model *student, const uint8_t *layers, int T, int threads) {
    int hs_max = 0;
    for (int l = 0; l < student->cfg.num_layers; l++)
        if (chosen(layers, l) && student->layers[l].n_ssm_heads > hs_max) hs_max = student->layers[l].n_ssm_heads;
    if (threads < 1) threads = 1;
    return (int64_t)sizeof(float) * T * T * (2 * (int64_t)hs_max + 3 * (int64_t)threads);
}

/* ------------------------------------------------------------ setup */

#ifdef _OPENMP
#include <omp.h>
static int max_threads(void) { return omp_get_max_threads(); }
#else
static int max_threads(void) { return 1; }
#endif

int ra_stage1_create(const ra_model *teacher, ra_model *student, const uint8_t *layers, int T_max, int64_t max_bytes,
                     ra_stage1 **out, ra_error *err) {
    *out = NULL;
    int rc = ra_stage1_check_models(teacher, teacher->source, student, student->source, err);
    if (rc) return rc;
    const hf_config *c = &student->cfg;
    if (T_max < 1) return ra_fail(err, EX_USAGE, "stage 1: sequence length %d, expected >= 1", T_max);
    int n = 0, hs_max = 0;
    for (int l = 0; l < c->num_layers; l++)
        if (chosen(layers, l) && student->layers[l].n_ssm_heads) {
            n++;
            if (student->layers[l].n_ssm_heads > hs_max) hs_max = student->layers[l].n_ssm_heads;
        }
    if (!n)
        return ra_fail(err, EX_USAGE, "stage 1: %s: none of the chosen layers has an SSM head (nothing to train)",
                       student->source);
    if (max_bytes <= 0) max_bytes = RA_STAGE1_DEFAULT_MAX_BYTES;
    int64_t need = ra_stage1_matrix_bytes(student, layers, T_max, max_threads());
    if (need > max_bytes)
        return ra_fail(err, EX_USAGE,
                       "stage 1: sequence length %d needs %.3g GB of T x T matrices per row (%d SSM heads), over the "
                       "limit of %.3g GB; use a shorter --seq-len",
                       T_max, need / 1e9, hs_max, max_bytes / 1e9);

    ra_stage1 *s = xcalloc(1, sizeof *s);
    s->teacher = teacher, s->student = student, s->T_max = T_max, s->n = n;
    s->layer = xcalloc(n, sizeof(int));
    s->Hs = xcalloc(n, sizeof(int));
    s->pair = xcalloc(n, sizeof(int *));
    s->grad = xcalloc(n, sizeof(dm2_params));
    s->acts = xcalloc(n, sizeof(dm2_acts *));
    for (int l = 0, i = 0; l < c->num_layers; l++) {
        if (!chosen(layers, l) || !student->layers[l].n_ssm_heads) continue;
        const ra_layer *L = &student->layers[l];
        s->layer[i] = l;
        s->pair[i] = xcalloc(L->n_ssm_heads, sizeof(int));
        s->Hs[i] = ra_stage1_pairing(student, l, s->pair[i]);
        dm2_params_alloc(&s->grad[i], &L->ssm_cfg);
        s->acts[i] = dm2_alloc_state(1, T_max, &L->ssm_cfg, err);
        if (!s->acts[i]) {
            ra_stage1_free(s);
            return err->code ? err->code : EX_SOFTWARE;
        }
        i++;
    }
    size_t mat = (size_t)hs_max * T_max * T_max, row = (size_t)T_max * c->hidden_size;
    s->A = xmalloc(mat * sizeof(float));
    s->Ts = xmalloc(mat * sizeof(float));
    s->h[0] = xmalloc(row * sizeof(float));
    s->h[1] = xmalloc(row * sizeof(float));
    s->xn = xmalloc(row * sizeof(float));
    s->starts = xmalloc(T_max);
    s->refs = xcalloc(hs_max, sizeof(ra_head_ref));
    s->hidden_slots = xcalloc(c->num_layers + 1, sizeof(float *));
    s->fs = ra_forward_state_create(teacher, 1, T_max);
    *out = s;
    return 0;
}

void ra_stage1_free(ra_stage1 *s) {
    if (!s) return;
    for (int i = 0; i < s->n; i++) {
        free(s->pair[i]);
        if (s->grad[i].memory) dm2_params_free(&s->grad[i]);
        dm2_free_state(s->acts[i]);
    }
    free(s->layer), free(s->Hs), free(s->pair), free(s->grad), free(s->acts);
    free(s->A), free(s->Ts), free(s->h[0]), free(s->h[1]), free(s->xn), free(s->starts), free(s->refs);
    free(s->hidden_slots);
    if (s->fs) ra_forward_state_free(s->fs);
    free(s);
}

int ra_stage1_n_layers(const ra_stage1 *s) { return s->n; }
int ra_stage1_layer(const ra_stage1 *s, int i) { return s->layer[i]; }
const dm2_params *ra_stage1_grads(const ra_stage1 *s, int i) { return &s->grad[i]; }

static int add_slice(ra_optim *o, const char *base, const char *part, float *w, float *g, int64_t rows,
                     int64_t cols, ra_error *err) {
    char name[160];
    snprintf(name, sizeof name, "%s%s", base, part);
    int64_t shape[2] = {rows, cols};
    return ra_optim_add(o, name, w, g, cols ? 2 : 1, shape, err);
}

int ra_stage1_register(ra_stage1 *s, ra_optim *o, ra_error *err) {
    const int D = s->student->cfg.hidden_size;
    for (int i = 0; i < s->n; i++) {
        int l = s->layer[i];
        const dm2_config *c = &s->student->layers[l].ssm_cfg;
        dm2_params *w = &s->student->layers[l].ssm, *g = &s->grad[i];
        int64_t inner = dm2_d_inner(c), gn2 = 2 * (int64_t)c->n_groups * c->d_state, off_A = 2 * inner + gn2;
        char base[96];
        snprintf(base, sizeof base, "model.layers.%d.mixer.", l);
        int rc;
        if ((rc = add_slice(o, base, "in_proj.weight[BC]", w->in_proj_w + inner * D, g->in_proj_w + inner * D, gn2, D,
                            err)) ||
            (rc = add_slice(o, base, "in_proj.weight[A_log]", w->in_proj_w + off_A * D, g->in_proj_w + off_A * D,
                            c->n_heads, D, err)) ||
            (rc = add_slice(o, base, "conv1d.weight[BC]", w->conv_w + inner * DM2_CONV_K,
                            g->conv_w + inner * DM2_CONV_K, gn2, DM2_CONV_K, err)) ||
            (rc = add_slice(o, base, "conv1d.bias[BC]", w->conv_b + inner, g->conv_b + inner, gn2, 0, err)) ||
            (rc = add_slice(o, base, "D", w->D, g->D, c->n_heads, 0, err)))
            return rc;
    }
    return 0;
}

/* ------------------------------------------------------------ objective */

/* One teacher call on one row: layers start .. stop−1 from tokens (start 0)
 * or from `in` (the hidden state entering start), returning the attention
 * probabilities of chosen layer i's paired heads in A [Hs, T, T]; enter
 * (optional) receives the hidden state entering layer s->layer[i] (a copy
 * of `in` itself when the call starts there), next (optional) the one
 * entering stop. */
static int teacher_run(ra_stage1 *s, int i, int start, int stop, const int32_t *tokens, const float *in,
                       const int32_t *doc_start, int T, float *enter, float *next, float *A, ra_error *err) {
    int l = s->layer[i];
    for (int h = 0; h < s->Hs[i]; h++) s->refs[h] = (ra_head_ref){.layer = l, .head = s->pair[i][h]};
    if (enter) s->hidden_slots[l] = enter;
    if (next) s->hidden_slots[stop] = next;
    ra_forward_opts o = {.doc_start = doc_start,
                         .start_layer = start,
                         .stop_layer = stop,
                         .start_hidden = start > 0 ? in : NULL,
                         .hidden_out = s->hidden_slots,
                         .n_probs = s->Hs[i],
                         .probs_heads = s->refs,
                         .probs_out = A};
    int rc = ra_forward_cpu(s->fs, tokens, 1, T, &o, err);
    s->hidden_slots[l] = NULL;
    s->hidden_slots[stop] = NULL;
    return rc;
}

int ra_stage1_teacher_matrices(ra_stage1 *s, int layer, const float *x, const int32_t *doc_start, int T, float *A,
                               ra_error *err) {
    for (int i = 0; i < s->n; i++)
        if (s->layer[i] == layer) {
            if (layer == 0) return ra_fail(err, EX_USAGE, "stage 1: layer 0's input is the embedding; pass tokens");
            if (T < 1 || T > s->T_max)
                return ra_fail(err, EX_USAGE, "stage 1: length %d outside 1..%d", T, s->T_max);
            return teacher_run(s, i, layer, layer + 1, NULL, x, doc_start, T, NULL, NULL, A, err);
        }
    return ra_fail(err, EX_USAGE, "stage 1: layer %d is not among the chosen layers with SSM heads", layer);
}

/* The student side of chosen layer i on one row: Ts, the loss against
 * s->A, and (backward) the gradient into s->grad[i]. */
static double student_layer(ra_stage1 *s, int i, const float *x, const uint8_t *starts, int T, float dloss,
                            int backward) {
    ra_layer *L = &s->student->layers[s->layer[i]];
    const hf_config *c = &s->student->cfg;
    int Hs = s->Hs[i];
    rmsnorm_forward(s->xn, NULL, x, L->input_norm, T, c->hidden_size, (float)c->rms_norm_eps);
    dm2_acts v = *s->acts[i];
    v.B = 1, v.T = T;
    dm2_matrix_forward(s->Ts, &v, &L->ssm, s->xn, starts);
    double loss = loss_matrix_forward(s->Ts, s->A, Hs, T);
    if (backward) {
        loss_matrix_backward(s->Ts, s->Ts, s->A, Hs, T, dloss); /* in place: Ts becomes dTs */
        dm2_matrix_backward(&s->grad[i], NULL, s->Ts, &v, &L->ssm, s->xn, starts);
    }
    return loss;
}

int ra_stage1_loss(ra_stage1 *s, const int32_t *tokens, const int32_t *doc_start, int B, int T, float dloss,
                   int backward, double *loss, ra_error *err) {
    *loss = 0;
    if (B < 1 || T < 1 || T > s->T_max)
        return ra_fail(err, EX_USAGE, "stage 1: batch %d x %d tokens, expected >= 1 row of 1..%d tokens", B, T,
                       s->T_max);
    double total = 0;
    for (int b = 0; b < B; b++) {
        const int32_t *tok = tokens + (size_t)b * T, *ds = doc_start ? doc_start + (size_t)b * T : NULL;
        const uint8_t *starts = NULL;
        if (ds) {
            for (int t = 0; t < T; t++) s->starts[t] = ds[t] == t;
            starts = s->starts;
        }
        int cur = 0;
        for (int i = 0; i < s->n; i++) {
            /* One call per chosen layer: from the start (i = 0) or from the
             * hidden state entering layer i, up to the next chosen layer. */
            int l = s->layer[i], start = i ? l : 0, stop = i + 1 < s->n ? s->layer[i + 1] : l + 1;
            float *next = i + 1 < s->n ? s->h[1 - cur] : NULL;
            int rc = teacher_run(s, i, start, stop, tok, s->h[cur], ds, T, s->h[cur], next, s->A, err);
            if (rc) {
                if (B > 1) ra_error_prefix(err, "row %d: ", b);
                return rc;
            }
            total += student_layer(s, i, s->h[cur], starts, T, dloss / B, backward) / B;
            cur = 1 - cur;
        }
    }
    *loss = total;
    return 0;
}
