/* AdamW over a list of named parameter tensors (DESIGN §2.5), CPU, fp32.
 *
 *   ra_optim *o = ra_optim_create(NULL);            // defaults below
 *   ra_optim_add(o, "model.layers.0.mlp.up_proj.weight", w, g, 2, shape, &err);
 *   ...
 *   ra_optim_freeze(o, "mlp,embed", &err);          // --freeze
 *   for each step:
 *       ra_optim_zero_grad(o);
 *       for each micro-batch: forward, backward (grads accumulate, dloss = 1/k)
 *       if (ra_optim_step(o, ra_wsd_lr(&sched, o->step), &err)) stop;  // NaN/Inf: nothing changed
 *
 * The weights w are the fp32 master copy (the CUDA trainer keeps bf16
 * copies for compute and refreshes them from w after each step); w and g
 * belong to the caller.  The moments m and v are owned by the optimiser and
 * exist only for trainable parameters (allocated, zeroed, at the first step
 * or checkpoint load; freed when a parameter is frozen).
 *
 * Update of step t = o->step + 1 (PyTorch's torch.optim.AdamW, i.e.
 * Loshchilov & Hutter's decoupled weight decay with the decay scaled by the
 * learning rate), for every trainable parameter, elementwise:
 *     g  ← g · c                (c = clip / ‖g‖ when clipping applies, else 1)
 *     w  ← w · (1 − lr · wd)    (only parameters with decay set)
 *     m  ← β1·m + (1 − β1)·g
 *     v  ← β2·v + (1 − β2)·g²
 *     w  ← w − (lr / (1 − β1^t)) · m / (sqrt(v) / sqrt(1 − β2^t) + eps)
 * Defaults: β1 0.9, β2 0.95, eps 1e-8, weight decay 0.1.
 *
 * Weight decay: by default only to parameters with two or more dimensions
 * (matrices: projections, embeddings, LM head, adapter, conv taps); never to
 * 1-D parameters (RMSNorm weights, biases, the SSM's D and z_bias), the
 * usual practice (nanoGPT, Mamba).  The `decay` field of a parameter can be
 * changed after ra_optim_add.
 *
 * Gradient clipping by global norm (over all trainable gradients): off by
 * default (clip = 0), since DESIGN §2.5 specifies none; a tool may set it
 * (e.g. 1.0).  The norm is computed every step either way (last_grad_norm,
 * for the log).
 *
 * Freeze patterns (--freeze PATTERN[,PATTERN...]): a comma-separated list;
 * a parameter is frozen when any item matches its name.  An item containing
 * one of  * ? [  is a shell glob (fnmatch(3), no flags: `*` also crosses
 * dots) matched against the whole name; any other item matches as a
 * substring.  So `mlp` freezes every model.layers.N.mlp.*_proj.weight,
 * `embed` the embedding, `norm` every RMSNorm, and
 * `model.layers.1[0-5].*` layers 10–15.  An empty item, or an item that
 * matches no parameter (a typo), is refused (EX_USAGE).
 *
 * Divergence: before touching anything, a step checks that the global
 * gradient norm is finite; if not it returns EX_SOFTWARE with a message
 * naming the first parameter (in the order added) and element holding NaN
 * or Inf, and leaves weights, moments and the step counter unchanged, so
 * the last checkpoint written stays the last good state.
 * ra_check_loss_finite does the same for the loss value.
 *
 * Sums over gradients are taken in fixed blocks and added in a fixed order,
 * so results do not depend on the OpenMP thread count (exact resume).
 * Implemented in lib/optim.c. */
#ifndef RA_OPTIM_H
#define RA_OPTIM_H

#include <stdint.h>

#include "dtype.h"
#include "error.h"

typedef struct ra_adamw_config {
    double beta1, beta2, eps, weight_decay;
    double clip; /* global gradient-norm limit; 0 = no clipping */
} ra_adamw_config;

ra_adamw_config ra_adamw_defaults(void);

typedef struct ra_param {
    char *name;
    float *w, *g; /* master weights, gradients [numel]; caller-owned */
    float *m, *v; /* moments [numel]; owned, NULL until needed and while frozen */
    int ndim;
    int64_t shape[RA_MAX_DIMS];
    int64_t numel;
    int decay;  /* weight decay applies (default: ndim ≥ 2) */
    int frozen; /* not updated, no moments */
} ra_param;

typedef struct ra_optim {
    ra_adamw_config cfg;
    ra_param *params;
    int n, cap;
    int64_t step;          /* optimiser steps taken */
    double last_grad_norm; /* global norm of the last step's gradients, before clipping */
} ra_optim;

/* cfg NULL: ra_adamw_defaults(). */
ra_optim *ra_optim_create(const ra_adamw_config *cfg);
void ra_optim_free(ra_optim *o);

/* Register a parameter.  g may be NULL only for a parameter that stays
 * frozen.  EX_SOFTWARE for a duplicate or empty name or a bad shape. */
int ra_optim_add(ra_optim *o, const char *name, float *w, float *g, int ndim, const int64_t *shape, ra_error *err);
ra_param *ra_optim_find(ra_optim *o, const char *name);

/* 1 if the freeze item (one entry of the comma list) matches name. */
int ra_freeze_item_matches(const char *item, const char *name);
/* Freeze every parameter matched by the list (NULL or "" freezes nothing).
 * EX_USAGE naming an empty item or one that matches nothing. */
int ra_optim_freeze(ra_optim *o, const char *patterns, ra_error *err);

/* Elements of the trainable parameters. */
int64_t ra_optim_trainable_numel(const ra_optim *o);
/* Allocate (zeroed) the moments of trainable parameters that lack them. */
void ra_optim_ensure_state(ra_optim *o);

/* Zero the gradients of every parameter that has them. */
void ra_optim_zero_grad(ra_optim *o);
/* Global L2 norm of the trainable gradients (NaN/Inf propagate). */
double ra_optim_grad_norm(const ra_optim *o);
/* 0, or EX_SOFTWARE naming the first non-finite gradient element. */
int ra_optim_check_grads(const ra_optim *o, ra_error *err);
/* One AdamW step with learning rate lr (see above). */
int ra_optim_step(ra_optim *o, double lr, ra_error *err);

/* The fp32 scalars of the update of step `step` + 1 with learning rate lr
 * and global gradient norm grad_norm (bias corrections, decay factor,
 * clipping scale).  Shared with the CUDA step (kernels/optim_cuda.cu) so
 * that both compute them identically. */
typedef struct ra_adamw_consts {
    float b1, b2, one_b1, one_b2, decay_mul, step_size, inv_sqrt_bc2, eps, gscale;
} ra_adamw_consts;
ra_adamw_consts ra_adamw_step_consts(const ra_adamw_config *c, int64_t step, double lr, double grad_norm);

/* 0, or EX_SOFTWARE: "loss is nan at step N". */
int ra_check_loss_finite(double loss, int64_t step, ra_error *err);

#endif
