/* ra-probe's exact ablation on the GPU (DESIGN §2.2, §8).
 *
 * The same computation as probe_exact (lib/probe.h) with everything kept on
 * the device: per chunk of prompt rows one baseline pass stores, for every
 * layer, the residual entering it and its attention output (before o_proj);
 * an ablation of head (l, h) then gathers the layer-l rows of that cache,
 * zeroes head h of the cached attention output, and runs o_proj, the MLP of
 * layer l and the layers above, many (prompt, head) ablations per call as
 * batch rows; logits only at the scored positions, reduced on the GPU to
 * log-sum-exp, argmax and the target logits.  bf16 storage, fp32
 * accumulation, the ops of kernels/ops_cuda.h in the order
 * kernels/forward_cuda.cu runs them.
 *
 * Attribution (probe_attribution_cuda) runs the same baseline pass and then
 * the backward of lib/probe_attribution.c on the GPU.
 *
 * Compiled only with CUDA; lib/probe_device.c dispatches to them. */
#ifndef RA_PROBE_CUDA_H
#define RA_PROBE_CUDA_H

#ifdef __cplusplus
extern "C" {
#endif

#include "probe.h"

/* As probe_exact, on GPU 0.  EX_UNAVAILABLE without a usable GPU,
 * EX_TEMPFAIL when the caches do not fit (smaller --batch). */
int probe_exact_cuda(const ra_model *m, const probe_data *d, const uint8_t *measure, const probe_opts *o,
                     probe_exact_result *r, ra_error *err);

/* A session: upload the model and allocate once for several engine runs on
 * the same model and data (a hybrid probe runs attribution, then exact);
 * the engines use it when it fits, else allocate their own.  end frees it. */
int probe_cuda_begin(const ra_model *m, const probe_data *d, int batch, ra_error *err);
void probe_cuda_end(void);

/* Upload m now, for the next session on m (probe_cuda_begin, or an engine
 * run without one) to take over instead of uploading it: a thread can do
 * this while the host tokenises (lib/probe_device.c). */
int probe_cuda_preload(const ra_model *m, ra_error *err);

/* As probe_attribution_cpu, on GPU 0 (kernels/probe_cuda_attr.cu). */
int probe_attribution_cuda(const ra_model *m, const probe_data *d, const probe_opts *o, float *attr,
                           probe_outcome *base, ra_error *err);

#ifdef __cplusplus
}
#endif

#endif
