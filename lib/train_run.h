/* The training driver shared by the three MOHAWK stage tools (ra-mohawk1,
 * ra-mohawk2, ra-mohawk3; DESIGN §2.5): common flags, data, the
 * warmup-stable-decay schedule, gradient accumulation, AdamW (lib/optim.h),
 * NaN/Inf guard, checkpoints and exact resume (lib/checkpoint.h), held-out
 * evaluation, the TSV log and the progress line.  A stage plugs in through
 * callbacks; the tool writes its output after ra_train_run returns.
 *
 *   static const char usage[] = "Usage: ra-mohawkN ...\n" ... RA_TRAIN_USAGE ...;
 *   ra_train_opts o; ra_train_opts_init(&o, 1e-4);        // stage's default lr
 *   for (int i = 1; i < argc; i++) {
 *       if (ra_train_parse_flag(&o, argc, argv, &i)) continue;  // common flag
 *       ... the tool's own flags (-m, -s, --layers ...) ...
 *   }
 *   ra_train_opts_check(&o);                              // exit 64 on bad combos
 *   ... load models, make the stage context, register parameters ...
 *   ra_train_stage st = {.name = "stage2", .ctx = ctx, .optim = optim,
 *                        .run = run_json, .micro_step = my_micro_step,
 *                        .eval = my_eval, .vocab_size = V};
 *   ra_train_result res;
 *   if (ra_train_run("ra-mohawkN", &o, &st, &res, &err)) ra_die_error(&err);
 *   ... write the output (-o, atomically) with provenance including
 *       ra_train_params_json(&o) and res.data_id ...
 *
 * The loop, for optimiser step s = 0 .. steps−1:
 *   zero grads; for k = 0 .. grad_accum−1: take the next `batch` rows
 *   (lib/train_data.h) and call micro_step(ctx, batch, dloss = 1/grad_accum,
 *   &loss); the step's loss is the mean of the micro-batch losses;
 *   refuse a non-finite loss; lr = ra_wsd_lr(schedule, s);
 *   ra_optim_step (refuses non-finite gradients, changing nothing);
 *   weights_changed(ctx); log; evaluate every eval_every steps; checkpoint
 *   every ckpt_every steps and at the end.  A device stage (st->device,
 *   --device cuda) zeroes and steps on the device instead and moves its
 *   state to st->optim before every checkpoint and at the end.
 * A failure (NaN/Inf loss or gradient, a callback's error) stops the run
 * with EX_SOFTWARE (or the callback's code) and a message naming the step
 * and, for callbacks, the micro-batch and its data position; no checkpoint
 * is written after the failure, so the newest one in --ckpt-dir is the last
 * good state.  Running out of memory: the CPU backend allocates everything
 * before the first step (xmalloc exits 70 naming the size); a backend that
 * can fail inside micro_step (a CUDA allocation) returns an error there and
 * the driver's prefix names the step, micro-batch and data rows that failed.
 *
 * Steps: --steps N, or --tokens N (steps = ceil(N / (batch·seq_len·grad_accum))),
 * or neither: one epoch of the training rows (at least one step).
 *
 * Checkpoints (--ckpt-dir DIR, every --ckpt-every N steps and at the end,
 * the newest --keep K kept): lib/checkpoint.h, with meta.run =
 *   {"stage": st->name, "train": the run-defining common parameters
 *    (ra_train_params_json: lr, steps, batch, seq_len, grad_accum, seed,
 *    freeze, warmup, decay, clip, eval rows), "data": data content id,
 *    "heldout": its id or null, "tool": st->run}
 * --resume: continue from the newest checkpoint of --ckpt-dir (none there:
 * start from the beginning, saying so).  Without --resume a --ckpt-dir
 * that already holds checkpoints is refused (EX_USAGE), so two runs never
 * mix their checkpoints.  On resume the checkpoint's run must equal
 * this run's, else EX_DATAERR naming the first differing key.  Weights,
 * moments, step, tokens, data position and RNG are restored, so the run
 * ends with the same bits as an uninterrupted one.
 *
 * Log (--log FILE): TSV, header row
 *   step  tokens  loss  lr  grad_norm  tokens_per_s  elapsed_s  [eval_loss]
 * (eval_loss only with --eval-every > 0; empty on steps without evaluation),
 * one row per optimiser step, flushed per row.  step counts from 1 (the
 * step just taken), tokens = training tokens consumed so far.  On --resume
 * an existing log is appended to (rows of steps after the checkpoint that
 * were logged before the interruption appear twice; the last wins).
 *
 * Progress (stderr, unless -q): "prog: step S/N  tokens T  loss L  lr R
 * X tok/s  ETA h:mm:ss", at most about once a second and at the last step;
 * eval results as their own line.
 *
 * Test hook: the environment variable RA_TEST_NAN_AT_STEP=N sets the first
 * gradient element of the first trainable parameter to NaN during
 * optimiser step N (counted from 1, as the log's step column), to test the
 * divergence guard.  RA_TEST_STOP_AT_STEP=N makes the process stop itself
 * (SIGSTOP) after optimiser step N and its checkpoint, if one falls there:
 * a kill -9 test then kills it at a known point, never after the end
 * (SIGCONT lets it go on).  Not for use outside tests.
 *
 * Implemented in lib/train_run.c. */
#ifndef RA_TRAIN_RUN_H
#define RA_TRAIN_RUN_H

#include <jansson.h>
#include <stdint.h>

#include "error.h"
#include "forward.h"
#include "optim.h"
#include "rng.h"
#include "train_data.h"

/* The common flags, as parsed (strings point into argv). */
typedef struct ra_train_opts {
    const char *data;     /* -d TOKENS (required) */
    const char *heldout;  /* --heldout FILE, NULL = last rows of -d */
    const char *out;      /* -o FILE, default "-" */
    double lr;            /* --lr: peak learning rate */
    int64_t steps;        /* --steps (0 = unset) */
    int64_t tokens;       /* --tokens (0 = unset) */
    int batch;            /* --batch: rows per micro-batch (8) */
    int seq_len;          /* --seq-len (512) */
    int grad_accum;       /* --grad-accum: micro-batches per step (1) */
    uint64_t seed;        /* --seed (0): data order and the run's RNG */
    const char *freeze;   /* --freeze PATTERN[,...] (NULL) */
    double warmup, decay; /* --warmup, --decay: fractions of the steps (0.1, 0.1) */
    double clip;          /* --clip: global gradient-norm limit, 0 = off (0) */
    int64_t ckpt_every;   /* --ckpt-every N (0 = only at the end) */
    const char *ckpt_dir; /* --ckpt-dir DIR (NULL = no checkpoints) */
    int keep;             /* --keep K newest checkpoints (2; 0 = all) */
    int resume;           /* --resume */
    const char *log;      /* --log FILE */
    int64_t eval_every;   /* --eval-every N (0 = no evaluation) */
    int eval_batches;     /* --eval-batches K (4) */
    int quiet;            /* -q (also sets ra_progress_quiet) */
    ra_device device;     /* --device cpu|cuda (cpu) */
} ra_train_opts;

/* Help text of the common flags, for the tools' usage strings. */
#define RA_TRAIN_USAGE                                                                         \
    "Training (common to ra-mohawk1/2/3):\n"                                                   \
    "  -d TOKENS          training tokens stream (required)\n"                                 \
    "  -o FILE            output (default stdout)\n"                                           \
    "  --lr X             peak learning rate\n"                                                \
    "  --steps N          optimiser steps, or\n"                                               \
    "  --tokens N         training tokens (steps = N / (batch x seq-len x grad-accum));\n"     \
    "                     neither: one epoch\n"                                                \
    "  --batch B          rows per micro-batch (8)\n"                                          \
    "  --seq-len T        tokens per row (512)\n"                                              \
    "  --grad-accum K     micro-batches per optimiser step (1)\n"                              \
    "  --seed S           data order and RNG seed (0)\n"                                       \
    "  --freeze P[,P...]  freeze parameters matching substrings or globs\n"                    \
    "  --warmup F         warmup fraction of the steps (0.1)\n"                                \
    "  --decay F          decay fraction of the steps (0.1)\n"                                 \
    "  --clip X           clip the global gradient norm at X (0 = off)\n"                      \
    "  --ckpt-dir DIR     write checkpoints there (every --ckpt-every steps and at the end)\n" \
    "  --ckpt-every N     checkpoint interval in steps (0 = only at the end)\n"                \
    "  --keep K           keep the newest K checkpoints (2; 0 = all)\n"                        \
    "  --resume           continue from the newest checkpoint of --ckpt-dir\n"                 \
    "  --log FILE         TSV log, one row per step\n"                                         \
    "  --eval-every N     evaluate on held-out rows every N steps (0 = never)\n"               \
    "  --eval-batches K   held-out micro-batches per evaluation (4)\n"                         \
    "  --heldout FILE     held-out tokens stream (default: the last rows of -d)\n"             \
    "  --device D         cpu or cuda (cpu)\n"                                                 \
    "  -q                 no progress on stderr\n"

/* Defaults (above), with the stage's default learning rate. */
void ra_train_opts_init(ra_train_opts *o, double default_lr);

/* If argv[*i] is a common flag, parse it (and its value, advancing *i) and
 * return 1; otherwise return 0.  Exits 64 (ra_usage_error) on a missing or
 * bad value. */
int ra_train_parse_flag(ra_train_opts *o, int argc, char **argv, int *i);

/* After parsing: -d given, not both --steps and --tokens, --resume needs
 * --ckpt-dir, warmup + decay ≤ 1 ...  Exits 64 with a message. */
void ra_train_opts_check(const ra_train_opts *o);

/* A stage whose parameters, gradients and optimiser state live on a device
 * (e.g. kernels/model_train_cuda.h) gives the driver these; the host
 * ra_optim (st->optim) then holds names, shapes, freeze flags and the
 * checkpoint copy of the state, and is never stepped on the host. */
typedef struct ra_train_device_ops {
    /* After --freeze is applied, before any resume: build the device
     * optimiser from st->optim. */
    int (*begin)(void *ctx, ra_error *err);
    /* Zero every gradient (start of each optimiser step). */
    void (*zero_grad)(void *ctx);
    /* One optimiser step with learning rate lr, as ra_optim_step (global
     * norm, clipping, NaN/Inf guard that changes nothing, AdamW): must
     * advance st->optim->step and set st->optim->last_grad_norm.  poison:
     * set a gradient element to NaN first (RA_TEST_NAN_AT_STEP). */
    int (*step)(void *ctx, double lr, int poison, ra_error *err);
    /* Device → st->optim (weights, moments, step): before a checkpoint is
     * written and at the end of the run. */
    void (*download)(void *ctx);
    /* st->optim → device: after a checkpoint was read (--resume). */
    void (*upload)(void *ctx);
} ra_train_device_ops;

/* The run-defining parameters (a new reference): what the checkpoint's run
 * object and the output's provenance record. */
json_t *ra_train_params_json(const ra_train_opts *o);

/* A stage: its context, parameters and callbacks. */
typedef struct ra_train_stage {
    const char *name; /* "stage1", "stage2", "stage3" */
    void *ctx;
    /* Every parameter of the run registered (trainable and frozen ones the
     * tool decided to list); the driver applies --freeze and clipping. */
    ra_optim *optim;
    /* Tool-defined identity of the run (teacher/student ids, stage flags);
     * borrowed.  A resumed checkpoint must carry an equal object. */
    json_t *run;
    int64_t vocab_size; /* token ids of the data must be below it */

    /* Forward + backward of one micro-batch: accumulate dloss·∂L/∂θ into
     * the optimiser's gradient arrays and set *loss to L.  Required. */
    int (*micro_step)(void *ctx, const ra_train_batch *b, float dloss, double *loss, ra_error *err);
    /* Loss of a held-out micro-batch, no gradients.  NULL: no evaluation
     * (--eval-every is then refused). */
    int (*eval)(void *ctx, const ra_train_batch *b, double *loss, ra_error *err);
    /* Called after every optimiser step and after a checkpoint restores the
     * weights (e.g. to refresh device copies).  May be NULL. */
    int (*weights_changed)(void *ctx, ra_error *err);
    /* Device stages (--device cuda): see ra_train_device_ops; NULL = the
     * driver steps st->optim on the host. */
    const ra_train_device_ops *device;

    /* Set by the driver before the first callback: the run's generator
     * (seeded by --seed, stored in checkpoints), for stages that draw
     * random numbers. */
    ra_rng *rng;
} ra_train_stage;

typedef struct ra_train_result {
    int64_t steps;          /* optimiser steps of the run (total) */
    int64_t tokens;         /* training tokens consumed */
    double last_loss;       /* loss of the last step */
    double last_eval_loss;  /* NAN when never evaluated */
    int64_t resumed_from;   /* step of the checkpoint resumed from, -1 = none */
    char data_id[33];       /* content id of -d */
    char heldout_id[33];    /* of --heldout, "" when none */
    char checkpoint[1024];  /* the last checkpoint written, "" when none */
} ra_train_result;

/* Run the whole training loop (see the top of this file).  prog prefixes
 * progress lines.  Returns 0 or a sysexits code with err filled. */
int ra_train_run(const char *prog, const ra_train_opts *o, ra_train_stage *st, ra_train_result *res,
                 ra_error *err);

#endif
