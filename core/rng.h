/* rng.h: counter-based random numbers. A value is a pure function of (seed, stream, counter),
 * so weight init per (tensor, element), data shuffles per epoch and sampling never depend on
 * how work is split across ranks or threads. Mixer: SplitMix64 finaliser applied twice. */
#ifndef ZP_RNG_H
#define ZP_RNG_H
#include <math.h>
#include <stdint.h>

static inline uint64_t zp_mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
/* 64 random bits for (seed, stream, counter). */
static inline uint64_t zp_rng_u64(uint64_t seed, uint64_t stream, uint64_t counter) {
  return zp_mix64(zp_mix64(seed ^ zp_mix64(stream * 0xd1342543de82ef95ULL)) + counter);
}
/* uniform in [0,1) with 53 bits */
static inline double zp_rng_uniform(uint64_t seed, uint64_t stream, uint64_t counter) {
  return (double)(zp_rng_u64(seed, stream, counter) >> 11) * (1.0 / 9007199254740992.0);
}
/* standard normal via Box-Muller on two counters (2*counter, 2*counter+1) */
static inline double zp_rng_normal(uint64_t seed, uint64_t stream, uint64_t counter) {
  double u1 = zp_rng_uniform(seed, stream, 2 * counter);
  double u2 = zp_rng_uniform(seed, stream, 2 * counter + 1);
  if (u1 < 1e-300) u1 = 1e-300;
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
/* unbiased integer in [0, n) (Lemire's multiply, with counter-based retry) */
static inline uint64_t zp_rng_below(uint64_t seed, uint64_t stream, uint64_t counter, uint64_t n) {
  for (uint64_t k = 0;; k++) {
    uint64_t x = zp_rng_u64(seed, stream, counter * 64 + k);
    __uint128_t m = (__uint128_t)x * n;
    uint64_t lo = (uint64_t)m;
    if (lo >= n || lo >= (uint64_t)(-n) % n) return (uint64_t)(m >> 64);
  }
}
#endif
