/* The stage-3 training step on a device, as a lib/train_run.h stage
 * (lib/model_train.h): the CUDA trainer of kernels/model_train_cuda.h
 * when this build has it. */
#include <stdlib.h>

#include "model_train.h"
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
    cuda_model_train *t;
    ra_stage3_loss loss;
    float temperature;
};

static int dev_micro_step(void *ctx, const ra_train_batch *b, float dloss, double *loss, ra_error *err) {
    ra_stage3_device *d = ctx;
    return cuda_model_train_step(d->t, 1, d->loss, b->tokens, b->doc_start, b->labels, b->B, b->T, d->temperature,
                                 dloss, loss, NULL, err);
}

static int dev_eval(void *ctx, const ra_train_batch *b, double *loss, ra_error *err) {
    ra_stage3_device *d = ctx;
    return cuda_model_train_step(d->t, 0, d->loss, b->tokens, b->doc_start, b->labels, b->B, b->T, d->temperature,
                                 1.0f, loss, NULL, err);
}

static int dev_begin(void *ctx, ra_error *err) { return cuda_model_train_begin(((ra_stage3_device *)ctx)->t, err); }
static void dev_zero_grad(void *ctx) { cuda_model_train_zero_grad(((ra_stage3_device *)ctx)->t); }
static int dev_step(void *ctx, double lr, int poison, ra_error *err) {
    return cuda_model_train_optim_step(((ra_stage3_device *)ctx)->t, lr, poison, err);
}
static void dev_download(void *ctx) { cuda_model_train_download(((ra_stage3_device *)ctx)->t); }
static void dev_upload(void *ctx) { cuda_model_train_upload(((ra_stage3_device *)ctx)->t); }

static const ra_train_device_ops cuda_ops = {dev_begin, dev_zero_grad, dev_step, dev_download, dev_upload};

int ra_stage3_device_create(ra_stage3_device **out, struct ra_train_stage *st, ra_model *student,
                            const ra_model *teacher, ra_optim *optim, ra_stage3_loss loss, float temperature, int B,
                            int T, ra_error *err) {
    *out = NULL;
    ra_stage3_device *d = xcalloc(1, sizeof *d);
    d->loss = loss, d->temperature = temperature;
    int rc = cuda_model_train_create(&d->t, student, loss == RA_LOSS_KD ? teacher : NULL, optim, B, T, err);
    if (rc) {
        free(d);
        return rc;
    }
    st->ctx = d;
    st->micro_step = dev_micro_step;
    st->eval = dev_eval;
    st->device = &cuda_ops;
    *out = d;
    return 0;
}

void ra_stage3_device_free(ra_stage3_device *d) {
    if (!d) return;
    cuda_model_train_free(d->t);
    free(d);
}

int ra_stage3_device_logit_rows(const ra_stage3_device *d) { return cuda_model_train_logit_rows(d->t); }
size_t ra_stage3_device_peak_bytes(const ra_stage3_device *d) { return cuda_model_train_peak_bytes(d->t); }

/* ---- stage 2 ---- */

struct ra_stage2_device {
    cuda_model_train *t;
};

static int s2_micro_step(void *ctx, const ra_train_batch *b, float dloss, double *loss, ra_error *err) {
    return cuda_stage2_train_step(((ra_stage2_device *)ctx)->t, 1, b->tokens, b->doc_start, b->B, b->T, dloss, loss,
                                  err);
}

static int s2_eval(void *ctx, const ra_train_batch *b, double *loss, ra_error *err) {
    return cuda_stage2_train_step(((ra_stage2_device *)ctx)->t, 0, b->tokens, b->doc_start, b->B, b->T, 0.0f, loss,
                                  err);
}

static int s2_begin(void *ctx, ra_error *err) { return cuda_model_train_begin(((ra_stage2_device *)ctx)->t, err); }
static void s2_zero_grad(void *ctx) { cuda_model_train_zero_grad(((ra_stage2_device *)ctx)->t); }
static int s2_step(void *ctx, double lr, int poison, ra_error *err) {
    return cuda_model_train_optim_step(((ra_stage2_device *)ctx)->t, lr, poison, err);
}
static void s2_download(void *ctx) { cuda_model_train_download(((ra_stage2_device *)ctx)->t); }
static void s2_upload(void *ctx) { cuda_model_train_upload(((ra_stage2_device *)ctx)->t); }

static const ra_train_device_ops s2_ops = {s2_begin, s2_zero_grad, s2_step, s2_download, s2_upload};

int ra_stage2_device_create(ra_stage2_device **out, struct ra_train_stage *st, const ra_model *teacher,
                            ra_model *student, const int *layers, int n_layers, ra_optim *optim, int B, int T,
                            ra_error *err) {
    *out = NULL;
    ra_stage2_device *d = xcalloc(1, sizeof *d);
    int rc = cuda_stage2_train_create(&d->t, student, teacher, optim, layers, n_layers, B, T, err);
    if (rc) {
        free(d);
        return rc;
    }
    st->ctx = d;
    st->micro_step = s2_micro_step;
    st->eval = s2_eval;
    st->device = &s2_ops;
    *out = d;
    return 0;
}

void ra_stage2_device_free(ra_stage2_device *d) {
    if (!d) return;
    cuda_model_train_free(d->t);
    free(d);
}

size_t ra_stage2_device_peak_bytes(const ra_stage2_device *d) { return cuda_model_train_peak_bytes(d->t); }

#else

struct ra_stage3_device {
    int unused;
};

int ra_stage3_device_create(ra_stage3_device **out, struct ra_train_stage *st, ra_model *student,
                            const ra_model *teacher, ra_optim *optim, ra_stage3_loss loss, float temperature, int B,
                            int T, ra_error *err) {
    (void)st, (void)student, (void)teacher, (void)optim, (void)loss, (void)temperature, (void)B, (void)T;
    *out = NULL;
    return ra_fail(err, EX_UNAVAILABLE, "--device cuda: this build has no CUDA training step (%s); use --device cpu",
                   RA_HAVE_CUDA ? "kernels/model_train_cuda.h not present" : "built with CUDA=0");
}

void ra_stage3_device_free(ra_stage3_device *d) { (void)d; }
int ra_stage3_device_logit_rows(const ra_stage3_device *d) { (void)d; return 0; }
size_t ra_stage3_device_peak_bytes(const ra_stage3_device *d) { (void)d; return 0; }

struct ra_stage2_device {
    int unused;
};

int ra_stage2_device_create(ra_stage2_device **out, struct ra_train_stage *st, const ra_model *teacher,
                            ra_model *student, const int *layers, int n_layers, ra_optim *optim, int B, int T,
                            ra_error *err) {
    (void)st, (void)teacher, (void)student, (void)layers, (void)n_layers, (void)optim, (void)B, (void)T;
    *out = NULL;
    return ra_fail(err, EX_UNAVAILABLE, "--device cuda: this build has no CUDA training step (%s); use --device cpu",
                   RA_HAVE_CUDA ? "kernels/model_train_cuda.h not present" : "built with CUDA=0");
}

void ra_stage2_device_free(ra_stage2_device *d) { (void)d; }
size_t ra_stage2_device_peak_bytes(const ra_stage2_device *d) { (void)d; return 0; }

#endif
