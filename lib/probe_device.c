/* The probe on a device: the GPU engine (kernels/probe_cuda.h) when this
 * build has it, else the generic engine of lib/probe.c over the device's
 * forward backend. */
#include <stdlib.h>

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
