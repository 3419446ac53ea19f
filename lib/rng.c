/* xoshiro256** seeded by splitmix64; see rng.h. */
#include "rng.h"

#include <math.h>

uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void rng_seed(ra_rng *r, uint64_t seed) {
    uint64_t sm = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&sm);
    r->has_spare = 0;
    r->spare_normal = 0;
}

ra_rng rng_split(const ra_rng *parent, uint64_t tag) {
    /* Mix the parent's words with the tag through splitmix64 so that nearby
     * tags give unrelated streams. */
    uint64_t sm = tag * 0xD1B54A32D192ED03ull;
    for (int i = 0; i < 4; i++) {
        sm ^= parent->s[i];
        splitmix64(&sm);
    }
    ra_rng child;
    rng_seed(&child, splitmix64(&sm));
    return child;
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t rng_u64(ra_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

uint64_t rng_below(ra_rng *r, uint64_t n) {
    /* Reject the lowest 2^64 mod n values so that what remains is a whole
     * number of copies of [0, n). */
    uint64_t threshold = (0 - n) % n; /* 2^64 mod n */
    for (;;) {
        uint64_t x = rng_u64(r);
        if (x >= threshold) return x % n;
    }
}

double rng_uniform(ra_rng *r) { return (double)(rng_u64(r) >> 11) * 0x1.0p-53; }

float rng_uniform_range(ra_rng *r, float lo, float hi) {
    float x = (float)(lo + (hi - (double)lo) * rng_uniform(r));
    /* rounding to float can land on hi; keep the interval half-open */
    return x < hi ? x : lo;
}

double rng_normal(ra_rng *r) {
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare_normal;
    }
    double u1 = 1.0 - rng_uniform(r); /* (0, 1]: log never sees 0 */
    double u2 = rng_uniform(r);
    double rad = sqrt(-2.0 * log(u1)), th = 2.0 * M_PI * u2;
    r->spare_normal = rad * sin(th);
    r->has_spare = 1;
    return rad * cos(th);
}

void rng_fill_uniform(ra_rng *r, float *x, size_t n, float lo, float hi) {
    for (size_t i = 0; i < n; i++) x[i] = rng_uniform_range(r, lo, hi);
}

void rng_fill_normal(ra_rng *r, float *x, size_t n, float mean, float std) {
    for (size_t i = 0; i < n; i++) x[i] = (float)(mean + std * rng_normal(r));
}
