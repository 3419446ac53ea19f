/* The materialised SSD mixing matrix on the GPU: the launches (kernels in
 * kernels/ssd_matrix.cuh, shared with the host simulator). */
#include <string.h>

#include "cuda_common.cuh"
#include "ops_cuda.h"
#include "ssd_cuda.h"

#define SSD_LAUNCH(kernel, gx, gy, threads, smem, ...)                                                           \
    do {                                                                                                         \
        auto k_ = kernel;                                                                                        \
        size_t smem_ = (smem);                                                                                   \
        if (smem_ > 48 * 1024)                                                                                   \
            CUDA_CHECK(cudaFuncSetAttribute(k_, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_));       \
        k_<<<dim3((unsigned)(gx), (unsigned)(gy)), (threads), smem_, ra_cuda_stream>>>(__VA_ARGS__);            \
        CUDA_CHECK_LAST();                                                                                       \
    } while (0)

#include "ssd_kernels.cuh"
#include "ssd_matrix.cuh"

static void check_or_die(const ssd_dims *d) {
    ra_error err = {0, ""};
    if (cuda_ssd_check_dims(d, &err)) ra_die_error(&err);
}

extern "C" size_t cuda_ssd_matrix_workspace_bytes(const ssd_dims *d, int backward) {
    ssdm_params p;
    return ssdm_setup(&p, d->B, d->T, d->H, d->G, d->N, backward, nullptr);
}

extern "C" void cuda_ssd_matrix_forward(float *Tm, const uint16_t *Bm, const uint16_t *Cm, const float *a,
                                        const float *D, const uint8_t *starts, const ssd_dims *d, void *workspace) {
    check_or_die(d);
    ssdm_params p;
    size_t bytes = ssdm_setup(&p, d->B, d->T, d->H, d->G, d->N, 0, nullptr);
    void *ws = workspace ? workspace : cuda_malloc(bytes);
    ssdm_setup(&p, d->B, d->T, d->H, d->G, d->N, 0, ws);
    p.Bm = (const bf16 *)Bm, p.Cm = (const bf16 *)Cm, p.a = a, p.D = D, p.starts = starts, p.Tm = Tm;
    ssdm_run_forward(p);
    if (!workspace) cuda_free(ws);
}

extern "C" void cuda_ssd_matrix_backward(uint16_t *dBm, uint16_t *dCm, float *da, float *dD, const float *dTm,
                                         const uint16_t *Bm, const uint16_t *Cm, const float *a,
                                         const uint8_t *starts, const ssd_dims *d, void *workspace) {
    check_or_die(d);
    ssdm_params p;
    size_t bytes = ssdm_setup(&p, d->B, d->T, d->H, d->G, d->N, 1, nullptr);
    void *ws = workspace ? workspace : cuda_malloc(bytes);
    ssdm_setup(&p, d->B, d->T, d->H, d->G, d->N, 1, ws);
    p.Bm = (const bf16 *)Bm, p.Cm = (const bf16 *)Cm, p.a = a, p.starts = starts, p.dTm = dTm;
    p.da = da, p.dD = dD;
    ssdm_run_backward(p, (bf16 *)dBm, (bf16 *)dCm);
    if (!workspace) cuda_free(ws);
}
