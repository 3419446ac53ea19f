/* Device names and the choice of forward backend.  The CUDA backend lives in
 * kernels/ (kernels/forward_cuda.h); this file only finds it. */
#include <string.h>

#include "forward.h"

#if RA_HAVE_CUDA && defined(__has_include)
#if __has_include("forward_cuda.h")
#include "forward_cuda.h"
#define RA_FORWARD_CUDA 1
#endif
#endif

int ra_device_parse(const char *s, ra_device *out) {
    if (strcmp(s, "cpu") == 0) *out = RA_DEVICE_CPU;
    else if (strcmp(s, "cuda") == 0) *out = RA_DEVICE_CUDA;
    else return -1;
    return 0;
}

const char *ra_device_name(ra_device d) { return d == RA_DEVICE_CUDA ? "cuda" : "cpu"; }

int ra_forward_backend_get(ra_device d, const ra_forward_backend **out, ra_error *err) {
    *out = NULL;
    if (d == RA_DEVICE_CPU) {
        *out = &ra_forward_backend_cpu;
        return 0;
    }
#ifdef RA_FORWARD_CUDA
    return ra_forward_backend_cuda(out, err);
#else
    return ra_fail(err, EX_UNAVAILABLE, "--device cuda: this build has no CUDA forward pass (%s); use --device cpu",
                   RA_HAVE_CUDA ? "kernels/forward_cuda.h not present" : "built with CUDA=0");
#endif
}
