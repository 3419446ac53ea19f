/* Seeded pseudo-random numbers for initialisation and data generation.
 *
 * Generator: xoshiro256** (Blackman & Vigna, 2018), 256 bits of state,
 * period 2^256 − 1, seeded by running splitmix64 from the 64-bit seed (the
 * seeding its authors recommend; it never yields the all-zero state).
 * Integer arithmetic only, so a seed gives the same stream on every machine;
 * rng_normal uses libm (log, cos, sin) in double.
 *
 *   ra_rng r; rng_seed(&r, 42);
 *   uint64_t k = rng_u64(&r);          // 64 random bits
 *   double u = rng_uniform(&r);        // [0, 1), 53 random bits
 *   float w = rng_uniform_range(&r, -a, a);
 *   double g = rng_normal(&r);         // N(0, 1), Box–Muller
 *
 * rng_split derives an independent stream (for a layer, a worker ...) from a
 * parent and a tag without advancing the parent. */
#ifndef RA_RNG_H
#define RA_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct ra_rng {
    uint64_t s[4];
    double spare_normal; /* second Box–Muller value */
    int has_spare;
} ra_rng;

/* splitmix64 step: advances *state and returns the next output. */
uint64_t splitmix64(uint64_t *state);

void rng_seed(ra_rng *r, uint64_t seed);
/* A generator seeded from (parent's state, tag); the parent is unchanged. */
ra_rng rng_split(const ra_rng *parent, uint64_t tag);

uint64_t rng_u64(ra_rng *r);
/* Uniform integer in [0, n), n ≥ 1, without modulo bias. */
uint64_t rng_below(ra_rng *r, uint64_t n);
/* Uniform double in [0, 1). */
double rng_uniform(ra_rng *r);
/* Uniform float in [lo, hi). */
float rng_uniform_range(ra_rng *r, float lo, float hi);
/* Standard normal N(0, 1). */
double rng_normal(ra_rng *r);

/* Fill x[0..n) with uniform [lo, hi) / normal(mean, std) floats. */
void rng_fill_uniform(ra_rng *r, float *x, size_t n, float lo, float hi);
void rng_fill_normal(ra_rng *r, float *x, size_t n, float mean, float std);

#endif
