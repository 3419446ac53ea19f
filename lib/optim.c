/* AdamW with freeze patterns, clipping and divergence checks (lib/optim.h). */
#include <fnmatch.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "optim.h"

/* Elements per block of the gradient-norm sum: blocks are summed in
 * parallel, their results in block order (thread-count independent). */
#define NORM_BLOCK 65536
#define OMP_MIN_ELEMS 32768

ra_adamw_config ra_adamw_defaults(void) {
    ra_adamw_config c = {0.9, 0.95, 1e-8, 0.1, 0.0};
    return c;
}

ra_optim *ra_optim_create(const ra_adamw_config *cfg) {
    ra_optim *o = xcalloc(1, sizeof *o);
    o->cfg = cfg ? *cfg : ra_adamw_defaults();
    return o;
}

static void param_drop_state(ra_param *p) {
    free(p->m);
    free(p->v);
    p->m = p->v = NULL;
}

void ra_optim_free(ra_optim *o) {
    if (!o) return;
    for (int i = 0; i < o->n; i++) {
        param_drop_state(&o->params[i]);
        free(o->params[i].name);
    }
    free(o->params);
    free(o);
}

ra_param *ra_optim_find(ra_optim *o, const char *name) {
    for (int i = 0; i < o->n; i++)
        if (strcmp(o->params[i].name, name) == 0) return &o->params[i];
    return NULL;
}

int ra_optim_add(ra_optim *o, const char *name, float *w, float *g, int ndim, const int64_t *shape, ra_error *err) {
    if (!name || !*name) return ra_fail(err, EX_SOFTWARE, "optimizer: a parameter has an empty name");
    if (ra_optim_find(o, name)) return ra_fail(err, EX_SOFTWARE, "optimizer: parameter '%s' added twice", name);
    if (ndim < 1 || ndim > RA_MAX_DIMS || !w)
        return ra_fail(err, EX_SOFTWARE, "optimizer: parameter '%s': bad shape or no weights", name);
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 1) return ra_fail(err, EX_SOFTWARE, "optimizer: parameter '%s': dimension %d is %lld", name, d,
                                         (long long)shape[d]);
        numel *= shape[d];
    }
    if (o->n == o->cap) {
        o->cap = o->cap ? 2 * o->cap : 64;
        o->params = xrealloc(o->params, (size_t)o->cap * sizeof *o->params);
    }
    ra_param *p = &o->params[o->n++];
    memset(p, 0, sizeof *p);
    p->name = xstrdup(name);
    p->w = w, p->g = g, p->ndim = ndim, p->numel = numel;
    memcpy(p->shape, shape, (size_t)ndim * sizeof *shape);
    p->decay = ndim >= 2;
    p->frozen = g == NULL;
    return 0;
}

/* ------------------------------------------------------------------ freeze */

int ra_freeze_item_matches(const char *item, const char *name) {
    if (strpbrk(item, "*?[")) return fnmatch(item, name, 0) == 0;
    return strstr(name, item) != NULL;
}

int ra_optim_freeze(ra_optim *o, const char *patterns, ra_error *err) {
    if (!patterns || !*patterns) return 0;
    char *list = xstrdup(patterns);
    int rc = 0;
    /* strsep keeps empty items, so ",," and a trailing comma are caught */
    for (char *rest = list, *item; (item = strsep(&rest, ",")) != NULL;) {
        if (!*item) {
            rc = ra_fail(err, EX_USAGE, "--freeze '%s': empty pattern", patterns);
            break;
        }
        int hits = 0;
        for (int i = 0; i < o->n; i++)
            if (ra_freeze_item_matches(item, o->params[i].name)) {
                o->params[i].frozen = 1;
                param_drop_state(&o->params[i]);
                hits++;
            }
        if (!hits) {
            rc = ra_fail(err, EX_USAGE, "--freeze: pattern '%s' matches no parameter", item);
            break;
        }
    }
    free(list);
    return rc;
}

int64_t ra_optim_trainable_numel(const ra_optim *o) {
    int64_t n = 0;
    for (int i = 0; i < o->n; i++)
        if (!o->params[i].frozen) n += o->params[i].numel;
    return n;
}

void ra_optim_ensure_state(ra_optim *o) {
    for (int i = 0; i < o->n; i++) {
        ra_param *p = &o->params[i];
        if (p->frozen || p->m) continue;
        p->m = xcalloc((size_t)p->numel, sizeof(float));
        p->v = xcalloc((size_t)p->numel, sizeof(float));
    }
}

void ra_optim_zero_grad(ra_optim *o) {
    for (int i = 0; i < o->n; i++)
        if (o->params[i].g) memset(o->params[i].g, 0, (size_t)o->params[i].numel * sizeof(float));
}

/* ---------------------------------------------------------- gradient checks */

static double sum_squares(const float *x, int64_t n) {
    int64_t nb = (n + NORM_BLOCK - 1) / NORM_BLOCK;
    double *part = xmalloc((size_t)nb * sizeof(double));
#pragma omp parallel for if (n >= OMP_MIN_ELEMS)
    for (int64_t b = 0; b < nb; b++) {
        int64_t i0 = b * NORM_BLOCK, i1 = i0 + NORM_BLOCK < n ? i0 + NORM_BLOCK : n;
        double s = 0;
        for (int64_t i = i0; i < i1; i++) s += (double)x[i] * x[i];
        part[b] = s;
    }
    double s = 0;
    for (int64_t b = 0; b < nb; b++) s += part[b];
    free(part);
    return s;
}

double ra_optim_grad_norm(const ra_optim *o) {
    double s = 0;
    for (int i = 0; i < o->n; i++)
        if (!o->params[i].frozen) s += sum_squares(o->params[i].g, o->params[i].numel);
    return sqrt(s);
}

/* The first non-finite element of the trainable gradients: 1 and *pi, *ei. */
static int first_bad_grad(const ra_optim *o, int *pi, int64_t *ei) {
    for (int i = 0; i < o->n; i++) {
        const ra_param *p = &o->params[i];
        if (p->frozen) continue;
        for (int64_t e = 0; e < p->numel; e++)
            if (!isfinite(p->g[e])) {
                *pi = i, *ei = e;
                return 1;
            }
    }
    return 0;
}

static int report_bad_grad(const ra_optim *o, ra_error *err) {
    int pi;
    int64_t ei;
    if (!first_bad_grad(o, &pi, &ei))
        return ra_fail(err, EX_SOFTWARE, "step %lld: gradient norm overflowed (every element finite)",
                       (long long)o->step + 1);
    const ra_param *p = &o->params[pi];
    return ra_fail(err, EX_SOFTWARE,
                   "step %lld: gradient of '%s' is %s at element %lld: the run diverged; weights not updated",
                   (long long)o->step + 1, p->name, isnan(p->g[ei]) ? "NaN" : "Inf", (long long)ei);
}

int ra_optim_check_grads(const ra_optim *o, ra_error *err) {
    return isfinite(ra_optim_grad_norm(o)) ? 0 : report_bad_grad(o, err);
}

int ra_check_loss_finite(double loss, int64_t step, ra_error *err) {
    if (isfinite(loss)) return 0;
    return ra_fail(err, EX_SOFTWARE, "step %lld: loss is %s: the run diverged; weights not updated",
                   (long long)step + 1, isnan(loss) ? "NaN" : "Inf");
}

/* -------------------------------------------------------------------- step */

ra_adamw_consts ra_adamw_step_consts(const ra_adamw_config *c, int64_t step, double lr, double grad_norm) {
    double t = (double)(step + 1);
    double bc1 = 1.0 - pow(c->beta1, t), bc2 = 1.0 - pow(c->beta2, t);
    ra_adamw_consts k = {(float)c->beta1,
                         (float)c->beta2,
                         (float)(1.0 - c->beta1),
                         (float)(1.0 - c->beta2),
                         (float)(1.0 - lr * c->weight_decay),
                         (float)(lr / bc1),
                         (float)(1.0 / sqrt(bc2)),
                         (float)c->eps,
                         c->clip > 0 && grad_norm > c->clip ? (float)(c->clip / grad_norm) : 1.0f};
    return k;
}

static void adamw_param(ra_param *p, const ra_adamw_consts *k) {
    float *w = p->w, *m = p->m, *v = p->v;
    const float *g = p->g;
    float decay_mul = p->decay ? k->decay_mul : 1.0f;
#pragma omp parallel for if (p->numel >= OMP_MIN_ELEMS)
    for (int64_t i = 0; i < p->numel; i++) {
        float gi = g[i] * k->gscale;
        float mi = k->b1 * m[i] + k->one_b1 * gi;
        float vi = k->b2 * v[i] + k->one_b2 * gi * gi;
        m[i] = mi, v[i] = vi;
        w[i] = w[i] * decay_mul - k->step_size * mi / (sqrtf(vi) * k->inv_sqrt_bc2 + k->eps);
    }
}

int ra_optim_step(ra_optim *o, double lr, ra_error *err) {
    double norm = ra_optim_grad_norm(o);
    if (!isfinite(norm)) return report_bad_grad(o, err);
    for (int i = 0; i < o->n; i++)
        if (!o->params[i].frozen && !o->params[i].g)
            return ra_fail(err, EX_SOFTWARE, "optimizer: trainable parameter '%s' has no gradient buffer",
                           o->params[i].name);
    ra_optim_ensure_state(o);
    o->last_grad_norm = norm;
    ra_adamw_consts k = ra_adamw_step_consts(&o->cfg, o->step, lr, norm);
    for (int i = 0; i < o->n; i++)
        if (!o->params[i].frozen) adamw_param(&o->params[i], &k);
    o->step++;
    return 0;
}
