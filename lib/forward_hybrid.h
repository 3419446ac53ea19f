/* Library-internal: the mixer of a hybrid layer on the CPU, shared by the
 * forward pass (lib/forward_cpu.c) and recurrent decoding (lib/decode.c).
 * Implemented in lib/forward_hybrid_cpu.c. */
#ifndef RA_FORWARD_HYBRID_H
#define RA_FORWARD_HYBRID_H

#include "decode.h"
#include "forward.h"

struct ra_hybrid_acts;

/* The mixer of one layer on s->x for B×T rows (RoPE tables in s->cos_t /
 * s->sin_t): RMSNorm, kept heads' softmax attention, SSM heads, combination
 * per layout, residual add.  Teacher layers too (all heads attention, GQA
 * K/V), which decode's prefill uses to capture their KV cache.  With
 * s->capture set, the layer stores its KV cache (positions 0..T−1) and SSM
 * and conv states in s->capture->layers[layer]. */
void hybrid_mixer_forward(ra_forward_state *s, int layer, int B, int T, const ra_forward_opts *o);

/* One decode step of the mixer for d->B rows on s->x (one token each),
 * RoPE tables for the rows' positions in s->cos_t / s->sin_t: appends K/V
 * at cache index d->len, attends over each row's cache, advances the SSM. */
void hybrid_mixer_step(ra_forward_state *s, ra_decode *d, int layer);

/* The forward options a hybrid supports (probabilities of kept heads only). */
int hybrid_check_opts(const ra_forward_state *s, const ra_forward_opts *o, ra_error *err);

void hybrid_acts_free(struct ra_hybrid_acts *a);

#endif
