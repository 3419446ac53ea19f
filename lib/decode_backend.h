/* Recurrent decoding by device: the decoders of lib/decode.h (CPU) and
 * kernels/decode_cuda.h (CUDA) behind one interface, as ra_forward_backend
 * does for the forward pass.
 *
 *   const ra_decode_backend *be;
 *   ra_decode_backend_get(RA_DEVICE_CUDA, &be, &err);
 *   void *st;
 *   be->create(model, B, T_max, &st, &err);       // uploads the model on CUDA
 *   be->prefill(st, prompts, T, lens, logits, NULL, &err);
 *   be->step(st, next_tokens, logits, &err);
 *   be->destroy(st);
 *
 * prefill and step have the contracts of ra_decode_prefill and
 * ra_decode_step (host pointers, fp32 logits, left-padded prompts).
 * state_bytes: bytes of decode state the backend holds for the batch (KV
 * cache + SSM + conv states; fp32 everything on the CPU, bf16 KV and fp32
 * SSM/conv on CUDA).  create on CUDA fails with EX_UNAVAILABLE, naming the
 * batch and length, when they do not fit in GPU memory. */
#ifndef RA_DECODE_BACKEND_H
#define RA_DECODE_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "forward.h"
#include "model.h"

typedef struct ra_decode_backend {
    const char *name;
    int (*create)(const ra_model *m, int B, int T_max, void **state, ra_error *err);
    int (*prefill)(void *state, const int32_t *tokens, int T, const int32_t *lens, float *logits, float *all_logits,
                   ra_error *err);
    int (*step)(void *state, const int32_t *tokens, float *logits, ra_error *err);
    size_t (*state_bytes)(void *state);
    void (*destroy)(void *state);
} ra_decode_backend;

extern const ra_decode_backend ra_decode_backend_cpu;

/* The decoder of a device.  CUDA: EX_UNAVAILABLE with a message when the
 * binary was built without CUDA or no GPU is usable. */
int ra_decode_backend_get(ra_device d, const ra_decode_backend **out, ra_error *err);

#endif
