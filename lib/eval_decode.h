/* The recurrent decoder ra-eval's gen and speed tasks run, by device, with
 * the interface of ra_forward_backend: create (B rows of up to T_max
 * tokens), prefill (left-padded prompts), step, state_bytes, destroy; the
 * contracts of lib/decode.h.  The CPU one is lib/decode.h.
 * TODO(cudahybrid): replace by ra_decode_backend_get (lib/decode_backend.h)
 * once it is in main; until then cuda is EX_UNAVAILABLE here. */
#ifndef RA_EVAL_DECODE_H
#define RA_EVAL_DECODE_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "forward.h"
#include "model.h"

typedef struct eval_decoder {
    const char *name;
    int (*create)(const ra_model *m, int B, int T_max, void **state, ra_error *err);
    int (*prefill)(void *state, const int32_t *tokens, int T, const int32_t *lens, float *logits, float *all_logits,
                   ra_error *err);
    int (*step)(void *state, const int32_t *tokens, float *logits, ra_error *err);
    size_t (*state_bytes)(void *state);
    void (*destroy)(void *state);
} eval_decoder;

int eval_decoder_get(ra_device d, const eval_decoder **out, ra_error *err);

#endif
