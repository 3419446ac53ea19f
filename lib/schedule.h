/* Warmup-stable-decay learning-rate schedule (DESIGN §2.5).
 *
 * Over `total` optimiser steps, with W = warmup·total and Dc = decay·total
 * (warmup = decay = 0.1 by default; real numbers, not rounded):
 *     lr(step) = peak · min(1, (step + 1) / W, (total − step) / Dc)   0 ≤ step < total
 *     lr(step) = 0                                                    step ≥ total
 * (a term is left out when its length is 0).  The ramp rises linearly from
 * 0 (before the first step) to peak, and falls linearly to 0 (after the
 * last step); each step takes the ramp's value at the end of its interval
 * going up and at its start going down.  So no step is spent at lr 0, and
 * with total = 100: step 0 → 0.1·peak, steps 9…90 → peak, step 91 →
 * 0.9·peak, step 99 → 0.1·peak.  Implemented in lib/schedule.c. */
#ifndef RA_SCHEDULE_H
#define RA_SCHEDULE_H

#include <stdint.h>

typedef struct ra_wsd {
    double peak;   /* learning rate of the stable phase */
    int64_t total; /* optimiser steps of the whole run */
    double warmup; /* fraction of total spent warming up (0.1) */
    double decay;  /* fraction of total spent decaying (0.1) */
} ra_wsd;

/* {peak, total, 0.1, 0.1} */
ra_wsd ra_wsd_default(double peak, int64_t total);
double ra_wsd_lr(const ra_wsd *s, int64_t step);

#endif
