/* The MOHAWK stages' training steps on a device, as lib/train_run.h stages
 * (lib/model_train.h for stage 3, lib/stage2.h, lib/stage1.h): the CUDA
 * trainer of kernels/model_train_cuda.h when this build has it.  Every
 * stage's device context starts with the trainer, so the optimiser
 * callbacks are shared. */
#include <stdlib.h>

#include "model_train.h"
#include "stage1.h"
#include "stage2.h"
#include "train_run.h"

#if RA_HAVE_CUDA && defined(__has_include)
#if __has_include("model_train_cuda.h")
#include "model_train_cuda.h"
#define RA_TRAIN_CUDA 1
#endif
#endif

#ifdef RA_TRAIN_CUDA

struct ra_stage3_device {
    cuda_model_train *t; /* first, as in every stage's context */
    ra_stage3_loss loss;
    float temperature;
};
struct ra_stage2_device {
    cuda_model_train *t;
};
struct ra_stage1_device {
    cuda_model_train *t;
};

static cuda_model_train *trainer(void *ctx) { return *(cuda_model_train **)ctx; }

static int dev_begin(void *ctx, ra_error *err) { return cuda_model_train_begin(trainer(ctx), err); }
static void dev_zero_grad(void *ctx) { cuda_model_train_zero_grad(trainer(ctx)); }
static int dev_step(void *ctx, double lr, int poison, ra_error *err) {
    return cuda_model_train_optim_step(trainer(ctx), lr, poison, err);
}
static void dev_download(void *ctx) { cuda_model_train_download(trainer(ctx)); }
static void dev_upload(void *ctx) { cuda_model_train_upload(trainer(ctx)); }

static const ra_train_device_ops cuda_ops = {dev_begin, dev_zero_grad, dev_step, dev_download, dev_upload};

/* Hand a created trainer to the driver (rc 0), or free the context. */
static int attach(void *d, cuda_model_train *t, int rc, struct ra_train_stage *st,
                  int (*micro_step)(void *, const ra_train_batch *, float, double *, ra_error *),
                  int (*eval)(void *, const ra_train_batch *, double *, ra_error *)) {
    if (rc) {
        free(d);
        return rc;
    }
    *(cuda_model_train **)d = t;
    st->ctx = d;
    st->micro_step = micro_step;
    st->eval = eval;
    st->device = &cuda_ops;
    return 0;
}

/* ---- stage 3 ---- */

static int s3_micro_step(void *ctx, const ra_train_batch *b, float dloss, double *loss, ra_error *err) {
    ra_stage3_device *d = ctx;
    return cuda_model_train_step(d->t, 1, d->loss, b->tokens, b->doc_start, b->labels, b->B, b->T, d->temperature,
                                 dloss, loss, NULL, err);
}

static int s3_eval(void *ctx, const ra_train_batch *b, double *loss, ra_error *err) {
    ra_stage3_device *d = ctx;
    return cuda_model_train_step(d->t, 0, d->loss, b->tokens, b->doc_start, b->labels, b->B, b->T, d->temperature,
                                 1.0f, loss, NULL, err);
}

int ra_stage3_device_create(ra_stage3_device **out, struct ra_train_stage *st, ra_model *student,
                            const ra_model *teacher, ra_optim *optim, ra_stage3_loss loss, float temperature, int B,
                            int T, ra_error *err) {
    ra_stage3_device *d = xcalloc(1, sizeof *d);
    d->loss = loss, d->temperature = temperature;
    cuda_model_train *t = NULL;
    int rc = cuda_model_train_create(&t, student, loss == RA_LOSS_KD ? teacher : NULL, optim, B, T, err);
    rc = attach(d, t, rc, st, s3_micro_step, s3_eval);
    *out = rc ? NULL : d;
    return rc;
}

void ra_stage3_device_free(ra_stage3_device *d) {
    if (!d) return;
    cuda_model_train_free(d->t);
    free(d);
}

int ra_stage3_device_logit_rows(const ra_stage3_device *d) { return cuda_model_train_logit_rows(d->t); }
size_t ra_stage3_device_peak_bytes(const ra_stage3_device *d) { return cuda_model_train_peak_bytes(d->t); }

/* ---- stage 2 ---- */

static int s2_micro_step(void *ctx, const ra_train_batch *b, float dloss, double *loss, ra_error *err) {
    return cuda_stage2_train_step(trainer(ctx), 1, b->tokens, b->doc_start, b->B, b->T, dloss, loss, err);
}

static int s2_eval(void *ctx, const ra_train_batch *b, double *loss, ra_error *err) {
    return cuda_stage2_train_step(trainer(ctx), 0, b->tokens, b->doc_start, b->B, b->T, 0.0f, loss, err);
}

int ra_stage2_device_create(ra_stage2_device **out, struct ra_train_stage *st, const ra_model *teacher,
                            ra_model *student, const int *layers, int n_layers, ra_optim *optim, int B, int T,
                            ra_error *err) {
    ra_stage2_device *d = xcalloc(1, sizeof *d);
    cuda_model_train *t = NULL;
    int rc = cuda_stage2_train_create(&t, student, teacher, optim, layers, n_layers, B, T, err);
    rc = attach(d, t, rc, st, s2_micro_step, s2_eval);
    *out = rc ? NULL : d;
    return rc;
}

void ra_stage2_device_free(ra_stage2_device *d) {
    if (!d) return;
    cuda_model_train_free(d->t);
    free(d);
}

size_t ra_stage2_device_peak_bytes(const ra_stage2_device *d) { return cuda_model_train_peak_bytes(d->t); }

/* ---- stage 1 ---- */

static int s1_micro_step(void *ctx, const ra_train_batch *b, float dloss, double *loss, ra_error *err) {
    return cuda_stage1_train_step(trainer(ctx), 1, b->tokens, b->doc_start, b->B, b->T, dloss, loss, err);
}

static int s1_eval(void *ctx, const ra_train_batch *b, double *loss, ra_error *err) {
    return cuda_stage1_train_step(trainer(ctx), 0, b->tokens, b->doc_start, b->B, b->T, 1.0f, loss, err);
}

int ra_stage1_device_create(ra_stage1_device **out, struct ra_train_stage *st, const ra_model *teacher,
                            ra_model *student, const int *layers, int n_layers, ra_optim *optim, int B, int T,
                            int64_t max_bytes, ra_error *err) {
    ra_stage1_device *d = xcalloc(1, sizeof *d);
    cuda_model_train *t = NULL;
    int rc = cuda_stage1_train_create(&t, student, teacher, optim, layers, n_layers, B, T, max_bytes, err);
    rc = attach(d, t, rc, st, s1_micro_step, s1_eval);
    *out = rc ? NULL : d;
    return rc;
}

void ra_stage1_device_free(ra_stage1_device *d) {
    if (!d) return;
    cuda_model_train_free(d->t);
    free(d);
}

size_t ra_stage1_device_peak_bytes(const ra_stage1_device *d) { return cuda_model_train_peak_bytes(d->t); }

#else

static int unavailable(ra_error *err) {
    return ra_fail(err, EX_UNAVAILABLE, "--device cuda: this build has no CUDA training step (%s); use --device cpu",
                   RA_HAVE_CUDA ? "kernels/model_train_cuda.h not present" : "built with CUDA=0");
}

struct ra_stage3_device {
    int unused;
};
struct ra_stage2_device {
    int unused;
};
struct ra_stage1_device {
    int unused;
};

int ra_stage3_device_create(ra_stage3_device **out, struct ra_train_stage *st, ra_model *student,
                            const ra_model *teacher, ra_optim *optim, ra_stage3_loss loss, float temperature, int B,
                            int T, ra_error *err) {
    (void)st, (void)student, (void)teacher, (void)optim, (void)loss, (void)temperature, (void)B, (void)T;
    *out = NULL;
    return unavailable(err);
}
void ra_stage3_device_free(ra_stage3_device *d) { (void)d; }
int ra_stage3_device_logit_rows(const ra_stage3_device *d) { (void)d; return 0; }
size_t ra_stage3_device_peak_bytes(const ra_stage3_device *d) { (void)d; return 0; }

int ra_stage2_device_create(ra_stage2_device **out, struct ra_train_stage *st, const ra_model *teacher,
                            ra_model *student, const int *layers, int n_layers, ra_optim *optim, int B, int T,
                            ra_error *err) {
    (void)st, (void)teacher, (void)student, (void)layers, (void)n_layers, (void)optim, (void)B, (void)T;
    *out = NULL;
    return unavailable(err);
}
void ra_stage2_device_free(ra_stage2_device *d) { (void)d; }
size_t ra_stage2_device_peak_bytes(const ra_stage2_device *d) { (void)d; return 0; }

int ra_stage1_device_create(ra_stage1_device **out, struct ra_train_stage *st, const ra_model *teacher,
                            ra_model *student, const int *layers, int n_layers, ra_optim *optim, int B, int T,
                            int64_t max_bytes, ra_error *err) {
    (void)st, (void)teacher, (void)student, (void)layers, (void)n_layers, (void)optim, (void)B, (void)T,
        (void)max_bytes;
    *out = NULL;
    return unavailable(err);
}
void ra_stage1_device_free(ra_stage1_device *d) { (void)d; }
size_t ra_stage1_device_peak_bytes(const ra_stage1_device *d) { (void)d; return 0; }

#endif
