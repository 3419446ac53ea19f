/* Chunked SSD on the GPU: the launches (the kernels and their orchestration
 * live in kernels/ssd_kernels.cuh, shared with the host simulator). */
#include <string.h>

#include "cuda_common.cuh"
#include "ops_cuda.h"
#include "ssd_cuda.h"

/* Launch on the ops stream; raise the dynamic shared-memory limit when a
 * kernel needs more than the default 48 KiB. */
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

extern "C" int cuda_ssd_check_dims(const ssd_dims *d, ra_error *err) {
    int rc = ssd_check_dims(d, err);
    if (rc) return rc;
    if (d->P > 128 || d->N > 128)
        return ra_fail(err, EX_DATAERR, "ssd (CUDA): head dim P=%d and state size N=%d must be <= 128", d->P, d->N);
    if ((int64_t)d->B * d->H > 65535)
        return ra_fail(err, EX_DATAERR, "ssd (CUDA): batch x heads = %lld exceeds 65535",
                       (long long)d->B * d->H);
    return 0;
}

static void check_or_die(const ssd_dims *d) {
    ra_error err = {0, ""};
    if (cuda_ssd_check_dims(d, &err)) ra_die_error(&err);
}

/* Calls f(PP, NP) with the tile widths for P and N as compile-time constants. */
template <int PP, int NP>
struct ssd_tiles {
    static constexpr int pp = PP, np = NP;
};
template <class F>
static void ssd_dispatch(int P, int N, F f) {
    if (P <= 64) {
        if (N <= 16)
            f(ssd_tiles<64, 16>());
        else if (N <= 64)
            f(ssd_tiles<64, 64>());
        else
            f(ssd_tiles<64, 128>());
    } else {
        if (N <= 16)
            f(ssd_tiles<128, 16>());
        else if (N <= 64)
            f(ssd_tiles<128, 64>());
        else
            f(ssd_tiles<128, 128>());
    }
}

extern "C" size_t cuda_ssd_chunked_workspace_bytes(const ssd_dims *d, int chunk, int backward) {
    ssd_kparams p;
    return ssd_setup(&p, d->B, d->T, d->H, d->P, d->G, d->N, chunk, backward, nullptr);
}

/* The caller's workspace, or a temporary one. */
static void *workspace_or_alloc(void *ws, size_t bytes, bool *owned) {
    *owned = ws == nullptr;
    return ws ? ws : cuda_malloc(bytes);
}

extern "C" void cuda_ssd_chunked_forward(uint16_t *y, float *final_state, const uint16_t *x, const uint16_t *Bm,
                                         const uint16_t *Cm, const float *a, const float *D, const uint8_t *starts,
                                         const float *init_state, const ssd_dims *d, int chunk, void *workspace) {
    check_or_die(d);
    ssd_kparams p;
    size_t bytes = ssd_setup(&p, d->B, d->T, d->H, d->P, d->G, d->N, chunk, 0, nullptr);
    bool owned;
    void *ws = workspace_or_alloc(workspace, bytes, &owned);
    ssd_setup(&p, d->B, d->T, d->H, d->P, d->G, d->N, chunk, 0, ws);
    p.x = (const bf16 *)x, p.Bm = (const bf16 *)Bm, p.Cm = (const bf16 *)Cm;
    p.a = a, p.D = D, p.starts = starts, p.init_state = init_state;
    p.y = (bf16 *)y, p.final_state = final_state;
    ssd_dispatch(d->P, d->N, [&](auto t) { ssd_run_forward<decltype(t)::pp, decltype(t)::np>(p); });
    if (owned) cuda_free(ws);
}

static void chunked_backward(uint16_t *dx, uint16_t *dBm, uint16_t *dCm, float *da, float *dD, float *d_init_state,
                             const uint16_t *dy, const uint16_t *x, const uint16_t *Bm, const uint16_t *Cm,
                             const float *a, const float *D, const uint8_t *starts, const float *init_state,
                             const ssd_dims *d, int chunk, void *workspace, bool states_ready) {
    check_or_die(d);
    ssd_kparams p;
    size_t bytes = ssd_setup(&p, d->B, d->T, d->H, d->P, d->G, d->N, chunk, 1, nullptr);
    bool owned;
    void *ws = workspace_or_alloc(workspace, bytes, &owned);
    ssd_setup(&p, d->B, d->T, d->H, d->P, d->G, d->N, chunk, 1, ws);
    p.x = (const bf16 *)x, p.Bm = (const bf16 *)Bm, p.Cm = (const bf16 *)Cm, p.dy = (const bf16 *)dy;
    p.a = a, p.D = D, p.starts = starts, p.init_state = init_state;
    p.dx = (bf16 *)dx, p.dB = (bf16 *)dBm, p.dC = (bf16 *)dCm, p.da = da, p.d_init = d_init_state;
    ssd_dispatch(d->P, d->N,
                 [&](auto t) { ssd_run_backward<decltype(t)::pp, decltype(t)::np>(p, dD, states_ready); });
    if (owned) cuda_free(ws);
}

extern "C" void cuda_ssd_chunked_backward(uint16_t *dx, uint16_t *dBm, uint16_t *dCm, float *da, float *dD,
                                          float *d_init_state, const uint16_t *dy, const uint16_t *x,
                                          const uint16_t *Bm, const uint16_t *Cm, const float *a, const float *D,
                                          const uint8_t *starts, const float *init_state, const ssd_dims *d,
                                          int chunk, void *workspace) {
    chunked_backward(dx, dBm, dCm, da, dD, d_init_state, dy, x, Bm, Cm, a, D, starts, init_state, d, chunk, workspace,
                     false);
}

extern "C" void cuda_ssd_chunked_backward_after_forward(uint16_t *dx, uint16_t *dBm, uint16_t *dCm, float *da,
                                                        float *dD, float *d_init_state, const uint16_t *dy,
                                                        const uint16_t *x, const uint16_t *Bm, const uint16_t *Cm,
                                                        const float *a, const float *D, const uint8_t *starts,
                                                        const float *init_state, const ssd_dims *d, int chunk,
                                                        void *workspace) {
    RA_CHECK(workspace != NULL);
    chunked_backward(dx, dBm, dCm, da, dD, d_init_state, dy, x, Bm, Cm, a, D, starts, init_state, d, chunk, workspace,
                     true);
}
