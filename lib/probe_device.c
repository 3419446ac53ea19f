/* The probe on a device: the GPU engine (kernels/probe_cuda.h) when this
 * build has it, else the generic engine of lib/probe.c over the device's
 * forward backend. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "probe.h"

#if RA_HAVE_CUDA && defined(__has_include)
#if __has_include("probe_cuda.h") && __has_include("forward_cuda.h")
#include "probe_cuda.h"
#define RA_PROBE_CUDA 1
#endif
#endif

int probe_exact_device(ra_device dev, const ra_model *m, const probe_data *d, const uint8_t *measure,
                       const probe_opts *o, probe_exact_result *r, ra_error *err) {
#ifdef RA_PROBE_CUDA
    if (dev == RA_DEVICE_CUDA && !getenv("RA_PROBE_GENERIC")) return probe_exact_cuda(m, d, measure, o, r, err);
#endif
    const ra_forward_backend *be;
    int rc = ra_forward_backend_get(dev, &be, err);
    if (rc) return rc;
    return probe_exact(be, m, d, measure, o, r, err);
}

int probe_attribution_device(ra_device dev, const ra_model *m, const probe_data *d, const probe_opts *o, float *attr,
                             probe_outcome *base, ra_error *err) {
#ifdef RA_PROBE_CUDA
    if (dev == RA_DEVICE_CUDA) return probe_attribution_cuda(m, d, o, attr, base, err);
#endif
    if (dev == RA_DEVICE_CUDA) {
        const ra_forward_backend *be;
        int rc = ra_forward_backend_get(dev, &be, err);
        if (rc) return rc;
    }
    return probe_attribution_cpu(m, d, o, attr, base, err);
}

int probe_device_begin(ra_device dev, const ra_model *m, const probe_data *d, const probe_opts *o, ra_error *err) {
#ifdef RA_PROBE_CUDA
    if (dev == RA_DEVICE_CUDA && !getenv("RA_PROBE_GENERIC")) return probe_cuda_begin(m, d, o ? o->batch : 0, err);
#endif
    (void)dev, (void)m, (void)d, (void)o, (void)err;
    return 0;
}

void probe_device_end(void) {
#ifdef RA_PROBE_CUDA
    probe_cuda_end();
#endif
}

/* ---- preparing the device while the host loads and tokenises ---------------- */

static struct {
    int started;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int model_set;
    const ra_model *m;
    int rc;
    ra_error err;
    double t_init, t_upload;
} prep = {0, 0, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, NULL, 0, {0, ""}, 0, 0};

#ifdef RA_PROBE_CUDA
#include "ops_cuda.h"

static void *prep_main(void *arg) {
    (void)arg;
    double t0 = ra_now();
    prep.rc = cuda_device_init(0, &prep.err); /* the CUDA context: the slow part of a GPU start */
    prep.t_init = ra_now() - t0;
    pthread_mutex_lock(&prep.mu);
    while (!prep.model_set) pthread_cond_wait(&prep.cv, &prep.mu);
    const ra_model *m = prep.m;
    pthread_mutex_unlock(&prep.mu);
    if (!prep.rc && m && !getenv("RA_PROBE_GENERIC")) {
        t0 = ra_now();
        prep.rc = probe_cuda_preload(m, &prep.err);
        prep.t_upload = ra_now() - t0;
    }
    return NULL;
}
#endif

int probe_device_takes_view(ra_device dev) {
#ifdef RA_PROBE_CUDA
    return dev == RA_DEVICE_CUDA;
#else
    (void)dev;
    return 0;
#endif
}

void probe_device_prepare_start(ra_device dev) {
#ifdef RA_PROBE_CUDA
    if (dev != RA_DEVICE_CUDA || prep.started) return;
    prep.model_set = 0, prep.m = NULL, prep.rc = 0, prep.err = (ra_error){0, ""};
    prep.t_init = prep.t_upload = 0;
    prep.started = pthread_create(&prep.thread, NULL, prep_main, NULL) == 0;
#else
    (void)dev;
#endif
}

void probe_device_prepare_model(const ra_model *m) {
    if (!prep.started) return;
    pthread_mutex_lock(&prep.mu);
    prep.m = m;
    prep.model_set = 1;
    pthread_cond_signal(&prep.cv);
    pthread_mutex_unlock(&prep.mu);
}

int probe_device_prepare_wait(double *t_init, double *t_upload, ra_error *err) {
    if (t_init) *t_init = prep.t_init;
    if (t_upload) *t_upload = prep.t_upload;
    if (!prep.started) return 0;
    pthread_mutex_lock(&prep.mu);
    if (!prep.model_set) prep.model_set = 1, prep.m = NULL; /* no model coming: context only */
    pthread_cond_signal(&prep.cv);
    pthread_mutex_unlock(&prep.mu);
    pthread_join(prep.thread, NULL);
    prep.started = 0;
    if (t_init) *t_init = prep.t_init;
    if (t_upload) *t_upload = prep.t_upload;
    if (prep.rc && err) *err = prep.err;
    return prep.rc;
}
