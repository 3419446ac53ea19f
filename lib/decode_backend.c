/* The choice of decoder by device (decode_backend.h).  The CUDA decoder
 * lives in kernels/ (kernels/decode_cuda.h); this file only finds it. */
#include "decode_backend.h"
#include "decode.h"

#if RA_HAVE_CUDA && defined(__has_include)
#if __has_include("decode_cuda.h")
#include "decode_cuda.h"
#define RA_DECODE_CUDA 1
#endif
#endif

static int cpu_create(const ra_model *m, int B, int T_max, void **state, ra_error *err) {
    ra_decode *d;
    int rc = ra_decode_create(m, B, T_max, &d, err);
    *state = rc ? NULL : d;
    return rc;
}

static int cpu_prefill(void *state, const int32_t *tokens, int T, const int32_t *lens, float *logits,
                       float *all_logits, ra_error *err) {
    return ra_decode_prefill(state, tokens, T, lens, logits, all_logits, err);
}

static int cpu_step(void *state, const int32_t *tokens, float *logits, ra_error *err) {
    return ra_decode_step(state, tokens, logits, err);
}

static size_t cpu_state_bytes(void *state) {
    const ra_decode *d = state;
    const hf_config *c = &d->m->cfg;
    size_t bytes = 0;
    for (int l = 0; l < c->num_layers; l++) {
        const ra_decode_layer *L = &d->layers[l];
        bytes += 2 * (size_t)d->B * L->n_kv * d->T_max * c->head_dim * sizeof(float);
        if (L->ssm) {
            const dm2_config *s = &L->ssm->cfg;
            bytes += (size_t)d->B * ((size_t)s->n_heads * s->head_dim * s->d_state + (size_t)dm2_conv_dim(s) * DM2_CONV_K) *
                     sizeof(float);
        }
    }
    return bytes;
}

static void cpu_destroy(void *state) { ra_decode_free(state); }

const ra_decode_backend ra_decode_backend_cpu = {"cpu", cpu_create, cpu_prefill, cpu_step, cpu_state_bytes,
                                                 cpu_destroy};

int ra_decode_backend_get(ra_device d, const ra_decode_backend **out, ra_error *err) {
    *out = NULL;
    if (d == RA_DEVICE_CPU) {
        *out = &ra_decode_backend_cpu;
        return 0;
    }
#ifdef RA_DECODE_CUDA
    return ra_decode_backend_cuda(out, err);
#else
    return ra_fail(err, EX_UNAVAILABLE, "--device cuda: this build has no CUDA decoder (%s); use --device cpu",
                   RA_HAVE_CUDA ? "kernels/decode_cuda.h not present" : "built with CUDA=0");
#endif
}
