/* bf16.h: bfloat16 <-> fp32/fp64 conversion (header only, static inline).
 * Invariants: bf16 is the top 16 bits of an IEEE fp32. Narrowing rounds to nearest, ties to
 * even, exactly once (fp64 -> bf16 goes through a round-to-odd fp32, so there is no double
 * rounding); overflow rounds to +-inf as IEEE does; NaN stays NaN (made quiet, sign kept).
 * Widening is exact. */
#ifndef ZP_BF16_H
#define ZP_BF16_H
#include <stdint.h>
#include <string.h>

static inline float zp_bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

static inline uint16_t zp_f32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
  u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even; carries into the exponent */
  return (uint16_t)(u >> 16);
}

/* fp64 -> fp32 rounded to odd: exact where representable, otherwise the truncated value with
 * its lowest mantissa bit forced to 1. fp32 keeps 16 more bits than bf16, so a following
 * round-to-nearest-even to bf16 equals a single correct rounding of the fp64 value. */
static inline float zp_f64_to_f32_odd(double d) {
  float t = (float)d;
  if (d != d || (double)t == d) return t; /* NaN, or exact */
  uint32_t u;
  memcpy(&u, &t, sizeof u);
  double at = t < 0 ? -(double)t : (double)t, ad = d < 0 ? -d : d;
  if (at > ad) u -= 1u; /* rounded away from zero (inf included): step back to truncation */
  u |= 1u;
  memcpy(&t, &u, sizeof t);
  return t;
}

static inline uint16_t zp_f64_to_bf16(double d) { return zp_f32_to_bf16(zp_f64_to_f32_odd(d)); }

#endif
