/* adamw_cpu.c: vectorised CPU AdamW (see adamw_cpu.h for the contract).
 * Invariants:
 * - One formula, written three times in the same operation order: zp_adamw_scalar_t (also
 *   every path's head peel and tail), the AVX2 body (8 lanes) and the AVX-512F body (16 lanes):
 *     g = ld(grad) * gs; mi = b1*m + omb1*g; vi = b2*v + (omb2*g)*g;
 *     p -= lr * ((mi/bc1) / (sqrt(vi/bc2) + eps) + wd*p)
 *   Each lane does the same IEEE single-precision operations (mul, add, div, sqrt are
 *   correctly rounded), so the paths agree bit for bit. FMA contraction would break that:
 *   it is off for this file (pragmas below; CMake also passes -ffp-contract=off, and
 *   -fno-math-errno, which lets GCC vectorise the scalar loop: errno only, no value changes).
 * - bf16 conversions are integer ops equal to bf16.h (widen: << 16; narrow: round to nearest
 *   even, NaN kept quiet with its sign), fused into the loop. AVX512_BF16's vcvtneps2bf16 is
 *   not used: it flushes denormals, bf16.h does not.
 * - Threads: [0, n) is cut into one contiguous range per thread at indexes where master is
 *   64-byte aligned and a multiple of 32 elements apart (so fp32 boundaries fall on 128-byte
 *   and bf16 ones on 64-byte multiples when the arrays are aligned): no cache line is written
 *   by two threads when the arrays are 64-byte aligned. Elements are independent, so the
 *   result does not depend on the thread count. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "adamw_cpu.h"

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"

#if defined(__x86_64__) || defined(__i386__)
#define ZP_ADAMW_X86 1
#include <immintrin.h>
#else
#define ZP_ADAMW_X86 0
#endif

enum { ZP_PW_NONE = 0, ZP_PW_F32 = 1, ZP_PW_BF16 = 2 }; /* how param is written */

typedef struct {
  void* param;
  float* master;
  const void* grad;
  float *m, *v;
  int gbf16, pmode;
  float lr, b1, b2, eps, wd, gs, omb1, omb2, bc1, bc2;
} zp_adamw_job;

/* ---- scalar: the reference every path equals ---- */

/* The job is copied to a local and the arrays are restrict (they never overlap; param is not
 * used when it is master): otherwise every store to m/v/master could alias the constants and
 * the compiler reloads them per element and does not vectorise. Its auto-vectorisation (SSE
 * under the x86-64-v2 baseline) does the same IEEE operations per lane, so it changes no bit. */
static inline __attribute__((always_inline)) void zp_adamw_scalar_t(const zp_adamw_job* jp,
                                                                    size_t lo, size_t hi,
                                                                    int gbf16, int pmode) {
  const zp_adamw_job j = *jp;
  float* restrict m = j.m;
  float* restrict v = j.v;
  float* restrict master = j.master;
  const float* restrict gf = (const float*)j.grad;
  const uint16_t* restrict gh = (const uint16_t*)j.grad;
  float* restrict pf = (float*)j.param;
  uint16_t* restrict ph = (uint16_t*)j.param;
  for (size_t i = lo; i < hi; i++) {
    const float gl = gbf16 ? zp_bf16_to_f32(gh[i]) : gf[i];
    const float g = gl * j.gs;
    const float mi = j.b1 * m[i] + j.omb1 * g;
    const float vi = j.b2 * v[i] + j.omb2 * g * g;
    m[i] = mi;
    v[i] = vi;
    const float mhat = mi / j.bc1, vhat = vi / j.bc2;
    float p = master[i];
    p -= j.lr * (mhat / (sqrtf(vhat) + j.eps) + j.wd * p);
    master[i] = p;
    if (pmode == ZP_PW_F32) pf[i] = p;
    else if (pmode == ZP_PW_BF16) ph[i] = zp_f32_to_bf16(p);
  }
}

/* the six (grad dtype, param mode) specialisations, constants folded by always_inline */
#define ZP_ADAMW_SPECIALISE(BODY, j, lo, hi)                   \
  do {                                                          \
    if ((j)->gbf16) {                                           \
      if ((j)->pmode == ZP_PW_NONE) BODY(j, lo, hi, 1, ZP_PW_NONE); \
      else if ((j)->pmode == ZP_PW_F32) BODY(j, lo, hi, 1, ZP_PW_F32); \
      else BODY(j, lo, hi, 1, ZP_PW_BF16);                      \
    } else {                                                    \
      if ((j)->pmode == ZP_PW_NONE) BODY(j, lo, hi, 0, ZP_PW_NONE); \
      else if ((j)->pmode == ZP_PW_F32) BODY(j, lo, hi, 0, ZP_PW_F32); \
      else BODY(j, lo, hi, 0, ZP_PW_BF16);                      \
    }                                                           \
  } while (0)

static void zp_adamw_range_scalar(const zp_adamw_job* j, size_t lo, size_t hi) {
  ZP_ADAMW_SPECIALISE(zp_adamw_scalar_t, j, lo, hi);
}

/* elements to process one by one from lo until master + i is `bytes`-aligned (<= hi - lo) */
static inline size_t zp_adamw_peel(const float* master, size_t lo, size_t hi, size_t bytes) {
  uintptr_t a = (uintptr_t)(master + lo);
  size_t k = (a % 4) ? 0 : ((bytes - a % bytes) % bytes) / 4;
  return k < hi - lo ? k : hi - lo;
}

#if ZP_ADAMW_X86
/* ---- AVX2: 8 lanes ---- */
#define ZP_T_AVX2 __attribute__((target("avx2"), always_inline)) static inline

ZP_T_AVX2 __m256 zp_ld_bf16x8(const uint16_t* p) {
  __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

ZP_T_AVX2 void zp_st_bf16x8(uint16_t* out, __m256 x) {
  const __m256i u = _mm256_castps_si256(x);
  const __m256i absu = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
  const __m256i isnan = _mm256_cmpgt_epi32(absu, _mm256_set1_epi32(0x7f800000));
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i rne = _mm256_srli_epi32(
      _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
  const __m256i qnan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
  const __m256i r = _mm256_blendv_epi8(rne, qnan, isnan); /* every lane in [0, 0xffff] */
  const __m256i pk = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
  _mm_storeu_si128((__m128i*)out, _mm256_castsi256_si128(pk));
}

ZP_T_AVX2 void zp_adamw_avx2_t(const zp_adamw_job* j, size_t lo, size_t hi, int gbf16,
                               int pmode) {
  size_t i = lo + zp_adamw_peel(j->master, lo, hi, 32);
  zp_adamw_scalar_t(j, lo, i, gbf16, pmode);
  const __m256 gs = _mm256_set1_ps(j->gs), b1 = _mm256_set1_ps(j->b1),
               b2 = _mm256_set1_ps(j->b2), omb1 = _mm256_set1_ps(j->omb1),
               omb2 = _mm256_set1_ps(j->omb2), bc1 = _mm256_set1_ps(j->bc1),
               bc2 = _mm256_set1_ps(j->bc2), eps = _mm256_set1_ps(j->eps),
               wd = _mm256_set1_ps(j->wd), lr = _mm256_set1_ps(j->lr);
  float *m = j->m, *v = j->v, *ms = j->master;
  for (; i + 8 <= hi; i += 8) {
    const __m256 gl = gbf16 ? zp_ld_bf16x8((const uint16_t*)j->grad + i)
                            : _mm256_loadu_ps((const float*)j->grad + i);
    const __m256 g = _mm256_mul_ps(gl, gs);
    const __m256 mi = _mm256_add_ps(_mm256_mul_ps(b1, _mm256_loadu_ps(m + i)), _mm256_mul_ps(omb1, g));
    const __m256 vi = _mm256_add_ps(_mm256_mul_ps(b2, _mm256_loadu_ps(v + i)),
                                    _mm256_mul_ps(_mm256_mul_ps(omb2, g), g));
    _mm256_storeu_ps(m + i, mi);
    _mm256_storeu_ps(v + i, vi);
    const __m256 mhat = _mm256_div_ps(mi, bc1), vhat = _mm256_div_ps(vi, bc2);
    const __m256 p = _mm256_loadu_ps(ms + i);
    const __m256 upd = _mm256_add_ps(_mm256_div_ps(mhat, _mm256_add_ps(_mm256_sqrt_ps(vhat), eps)),
                                     _mm256_mul_ps(wd, p));
    const __m256 pn = _mm256_sub_ps(p, _mm256_mul_ps(lr, upd));
    _mm256_storeu_ps(ms + i, pn);
    if (pmode == ZP_PW_F32) _mm256_storeu_ps((float*)j->param + i, pn);
    else if (pmode == ZP_PW_BF16) zp_st_bf16x8((uint16_t*)j->param + i, pn);
  }
  zp_adamw_scalar_t(j, i, hi, gbf16, pmode);
}

__attribute__((target("avx2"))) static void zp_adamw_range_avx2(const zp_adamw_job* j,
                                                                 size_t lo, size_t hi) {
  ZP_ADAMW_SPECIALISE(zp_adamw_avx2_t, j, lo, hi);
}

/* ---- AVX-512F: 16 lanes ---- */
#define ZP_T_AVX512 __attribute__((target("avx512f"), always_inline)) static inline

ZP_T_AVX512 __m512 zp_ld_bf16x16(const uint16_t* p) {
  __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

ZP_T_AVX512 void zp_st_bf16x16(uint16_t* out, __m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i absu = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
  const __mmask16 isnan = _mm512_cmpgt_epi32_mask(absu, _mm512_set1_epi32(0x7f800000));
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rne = _mm512_srli_epi32(
      _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
  const __m512i qnan = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  const __m512i r = _mm512_mask_blend_epi32(isnan, rne, qnan);
  _mm256_storeu_si256((__m256i*)out, _mm512_cvtepi32_epi16(r)); /* truncation: exact */
}

ZP_T_AVX512 void zp_adamw_avx512_t(const zp_adamw_job* j, size_t lo, size_t hi, int gbf16,
                                   int pmode) {
  size_t i = lo + zp_adamw_peel(j->master, lo, hi, 64);
  zp_adamw_scalar_t(j, lo, i, gbf16, pmode);
  const __m512 gs = _mm512_set1_ps(j->gs), b1 = _mm512_set1_ps(j->b1),
               b2 = _mm512_set1_ps(j->b2), omb1 = _mm512_set1_ps(j->omb1),
               omb2 = _mm512_set1_ps(j->omb2), bc1 = _mm512_set1_ps(j->bc1),
               bc2 = _mm512_set1_ps(j->bc2), eps = _mm512_set1_ps(j->eps),
               wd = _mm512_set1_ps(j->wd), lr = _mm512_set1_ps(j->lr);
  float *m = j->m, *v = j->v, *ms = j->master;
  for (; i + 16 <= hi; i += 16) {
    const __m512 gl = gbf16 ? zp_ld_bf16x16((const uint16_t*)j->grad + i)
                            : _mm512_loadu_ps((const float*)j->grad + i);
    const __m512 g = _mm512_mul_ps(gl, gs);
    const __m512 mi = _mm512_add_ps(_mm512_mul_ps(b1, _mm512_loadu_ps(m + i)), _mm512_mul_ps(omb1, g));
    const __m512 vi = _mm512_add_ps(_mm512_mul_ps(b2, _mm512_loadu_ps(v + i)),
                                    _mm512_mul_ps(_mm512_mul_ps(omb2, g), g));
    _mm512_storeu_ps(m + i, mi);
    _mm512_storeu_ps(v + i, vi);
    const __m512 mhat = _mm512_div_ps(mi, bc1), vhat = _mm512_div_ps(vi, bc2);
    const __m512 p = _mm512_loadu_ps(ms + i);
    const __m512 upd = _mm512_add_ps(_mm512_div_ps(mhat, _mm512_add_ps(_mm512_sqrt_ps(vhat), eps)),
                                     _mm512_mul_ps(wd, p));
    const __m512 pn = _mm512_sub_ps(p, _mm512_mul_ps(lr, upd));
    _mm512_storeu_ps(ms + i, pn);
    if (pmode == ZP_PW_F32) _mm512_storeu_ps((float*)j->param + i, pn);
    else if (pmode == ZP_PW_BF16) zp_st_bf16x16((uint16_t*)j->param + i, pn);
  }
  zp_adamw_scalar_t(j, i, hi, gbf16, pmode);
}

__attribute__((target("avx512f"))) static void zp_adamw_range_avx512(const zp_adamw_job* j,
                                                                     size_t lo, size_t hi) {
  ZP_ADAMW_SPECIALISE(zp_adamw_avx512_t, j, lo, hi);
}
#endif /* ZP_ADAMW_X86 */

/* ---- ISA choice ---- */

/* ZP_ADAMW_HIDE=avx512[,avx2]: pretend the CPU lacks these (tests, benchmarks of fallbacks) */
static int zp_adamw_hidden(zp_isa isa) {
  const char* h = getenv("ZP_ADAMW_HIDE");
  const char* name = zp_isa_name(isa);
  const size_t len = strlen(name);
  while (h && *h) {
    const char* e = strchr(h, ',');
    const size_t tl = e ? (size_t)(e - h) : strlen(h);
    if (tl == len && strncmp(h, name, len) == 0) return 1;
    h = e ? e + 1 : NULL;
  }
  return 0;
}

int zp_isa_supported(zp_isa isa) {
  if ((isa == ZP_ISA_AVX2 || isa == ZP_ISA_AVX512) && zp_adamw_hidden(isa)) return 0;
  switch (isa) {
    case ZP_ISA_AUTO:
    case ZP_ISA_SCALAR: return 1;
#if ZP_ADAMW_X86
    case ZP_ISA_AVX2: __builtin_cpu_init(); return __builtin_cpu_supports("avx2") != 0;
    case ZP_ISA_AVX512: __builtin_cpu_init(); return __builtin_cpu_supports("avx512f") != 0;
#else
    case ZP_ISA_AVX2:
    case ZP_ISA_AVX512: return 0;
#endif
  }
  return 0;
}

const char* zp_isa_name(zp_isa isa) {
  switch (isa) {
    case ZP_ISA_AUTO: return "auto";
    case ZP_ISA_SCALAR: return "scalar";
    case ZP_ISA_AVX2: return "avx2";
    case ZP_ISA_AVX512: return "avx512";
  }
  return "?";
}

static zp_isa zp_adamw_best(void) {
  if (zp_isa_supported(ZP_ISA_AVX512)) return ZP_ISA_AVX512;
  if (zp_isa_supported(ZP_ISA_AVX2)) return ZP_ISA_AVX2;
  return ZP_ISA_SCALAR;
}

zp_isa zp_adamw_isa(void) {
  const char* e = getenv("ZP_ADAMW_ISA");
  if (!e || !*e || strcmp(e, "auto") == 0) return zp_adamw_best();
  for (int k = ZP_ISA_SCALAR; k <= ZP_ISA_AVX512; k++)
    if (strcmp(e, zp_isa_name((zp_isa)k)) == 0) return (zp_isa)k;
  return ZP_ISA_AUTO; /* unknown value */
}

const char* zp_adamw_isa_error(zp_isa isa) {
  static _Thread_local char msg[200];
  if (isa == ZP_ISA_AUTO) {
    isa = zp_adamw_isa();
    if (isa == ZP_ISA_AUTO) {
      const char* e = getenv("ZP_ADAMW_ISA");
      snprintf(msg, sizeof msg, "ZP_ADAMW_ISA='%.64s' is not one of scalar, avx2, avx512, auto",
               e ? e : "");
      return msg;
    }
  }
  if ((int)isa < ZP_ISA_AUTO || (int)isa > ZP_ISA_AVX512) {
    snprintf(msg, sizeof msg, "adamw: unknown ISA %d", (int)isa);
    return msg;
  }
  if (!zp_isa_supported(isa)) {
    snprintf(msg, sizeof msg, "adamw: this CPU does not support the %s path%s", zp_isa_name(isa),
             isa == ZP_ISA_AVX512 ? " (no AVX-512F)" : " (no AVX2)");
    return msg;
  }
  return NULL;
}

/* ---- entry ---- */

#define ZP_ADAMW_UNIT 32          /* elements between thread boundaries */
#define ZP_ADAMW_MIN_PER_THREAD 65536 /* elements; fewer are not worth waking a thread */

typedef void (*zp_adamw_range_fn)(const zp_adamw_job*, size_t, size_t);

static _Thread_local zp_isa zp_adamw_last = ZP_ISA_AUTO;
zp_isa zp_adamw_last_isa(void) { return zp_adamw_last; }

int zp_adamw_cpu_isa(zp_isa isa, void* param, zp_dtype pdt, float* master, const void* grad,
                     zp_dtype gdt, float* m, float* v, size_t n, const zp_adamw_hparams* hp,
                     int threads) {
  if (isa == ZP_ISA_AUTO) isa = zp_adamw_isa();
  if (zp_adamw_isa_error(isa)) return ZP_E_INVALID;
  if (!hp || hp->step_t < 1) return ZP_E_INVALID;
  if (n == 0) {
    zp_adamw_last = isa;
    return ZP_OK;
  }
  if (!master || !grad || !m || !v) return ZP_E_INVALID;
  if (gdt != ZP_F32 && gdt != ZP_BF16) return ZP_E_INVALID;
  int pmode = ZP_PW_NONE;
  if (param == (void*)master) {
    if (pdt != ZP_F32) return ZP_E_INVALID;
  } else if (param) {
    if (pdt == ZP_F32) pmode = ZP_PW_F32;
    else if (pdt == ZP_BF16) pmode = ZP_PW_BF16;
    else return ZP_E_INVALID;
  }
  zp_adamw_last = isa;
  zp_adamw_job j;
  memset(&j, 0, sizeof j);
  j.param = param;
  j.master = master;
  j.grad = grad;
  j.m = m;
  j.v = v;
  j.gbf16 = gdt == ZP_BF16;
  j.pmode = pmode;
  j.lr = hp->lr;
  j.b1 = hp->beta1;
  j.b2 = hp->beta2;
  j.eps = hp->eps;
  j.wd = hp->weight_decay;
  j.gs = hp->grad_scale;
  /* as the CPU backend: 1 - beta^t in double, rounded once to float */
  j.bc1 = (float)(1.0 - pow((double)hp->beta1, (double)hp->step_t));
  j.bc2 = (float)(1.0 - pow((double)hp->beta2, (double)hp->step_t));
  j.omb1 = 1.0f - hp->beta1;
  j.omb2 = 1.0f - hp->beta2;

  zp_adamw_range_fn fn = zp_adamw_range_scalar;
#if ZP_ADAMW_X86
  if (isa == ZP_ISA_AVX2) fn = zp_adamw_range_avx2;
  else if (isa == ZP_ISA_AVX512) fn = zp_adamw_range_avx512;
#endif

  int nt = threads > 0 ? threads : omp_get_max_threads();
  const size_t cap = (n + ZP_ADAMW_MIN_PER_THREAD - 1) / ZP_ADAMW_MIN_PER_THREAD;
  if ((size_t)nt > cap) nt = (int)cap;
  if (nt <= 1) {
    fn(&j, 0, n);
    return ZP_OK;
  }
  /* boundaries at head + k*UNIT, head = first index where master is 64-byte aligned */
  const uintptr_t a = (uintptr_t)master;
  size_t head = (a % 4) ? 0 : ((64 - a % 64) % 64) / 4;
  if (head > n) head = n;
  const size_t units = (n - head) / ZP_ADAMW_UNIT;
#pragma omp parallel num_threads(nt)
  {
    const size_t T = (size_t)omp_get_num_threads(), k = (size_t)omp_get_thread_num();
    const size_t lo = k == 0 ? 0 : head + units * k / T * ZP_ADAMW_UNIT;
    const size_t hi = k + 1 == T ? n : head + units * (k + 1) / T * ZP_ADAMW_UNIT;
    if (hi > lo) fn(&j, lo, hi);
  }
  return ZP_OK;
}

int zp_adamw_cpu(void* param, zp_dtype pdt, float* master, const void* grad, zp_dtype gdt,
                 float* m, float* v, size_t n, const zp_adamw_hparams* hp, int threads) {
  return zp_adamw_cpu_isa(ZP_ISA_AUTO, param, pdt, master, grad, gdt, m, v, n, hp, threads);
}
