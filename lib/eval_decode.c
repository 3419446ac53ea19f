/* The decoder by device (eval_decode.h). */
#include "decode.h"
#include "eval_decode.h"

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

/* KV cache + SSM and conv states, fp32, for the whole batch. */
static size_t cpu_state_bytes(void *state) {
    const ra_decode *d = state;
    const hf_config *c = &d->m->cfg;
    size_t bytes = 0;
    for (int l = 0; l < c->num_layers; l++) {
        const ra_decode_layer *L = &d->layers[l];
        bytes += 2 * (size_t)d->B * L->n_kv * d->T_max * c->head_dim * sizeof(float);
        if (L->ssm) {
            const dm2_config *s = &d->m->layers[l].ssm_cfg;
            bytes += (size_t)d->B * ((size_t)s->n_heads * s->head_dim * s->d_state + (size_t)dm2_conv_dim(s) * DM2_CONV_K) *
                     sizeof(float);
        }
    }
    return bytes;
}

static void cpu_destroy(void *state) { ra_decode_free(state); }

static const eval_decoder cpu_decoder = {"cpu", cpu_create, cpu_prefill, cpu_step, cpu_state_bytes, cpu_destroy};

int eval_decoder_get(ra_device d, const eval_decoder **out, ra_error *err) {
    *out = NULL;
    if (d == RA_DEVICE_CPU) {
        *out = &cpu_decoder;
        return 0;
    }
    return ra_fail(err, EX_UNAVAILABLE, "--device cuda: no CUDA decoder in this build yet; use --device cpu for gen and speed");
}
