/* gemm_cpu.c: row-major GEMM for the CPU backend (see gemm_cpu.h for the contract).
 * Invariants:
 * - BLAS (cblas_sgemm/dgemm) when built with ZP_HAVE_CBLAS and ZP_CPU_GEMM != "builtin",
 *   as single-threaded calls on a fixed grid of output chunks (see ZP_BLAS_CHUNKED), so BLAS
 *   results do not depend on the thread count either.
 * - The built-in GEMM is cache blocked (MC x KC panels of A, KC x NC panels of B packed into
 *   contiguous, zero-padded micro-panels) with an MR x NR register-tile micro-kernel whose
 *   inner loop over NR columns vectorises. OpenMP splits the independent MC x NC output tiles
 *   among threads; each tile sums K in the same order whichever thread runs it, so results do
 *   not depend on the thread count. A tile's full K sum is built in a scratch tile and then
 *   added to C once (C = beta*C + alpha*sum).
 * - On x86-64 the tile routine is also compiled for x86-64-v3/v4 (AVX2/AVX-512 + FMA) and
 *   picked at load time (GCC target_clones); the result is then per-machine deterministic.
 * The type-generic part is this same file included again with ZP_GEMM_TEMPLATE defined. */
#ifndef ZP_GEMM_TEMPLATE

#include "gemm_cpu.h"

#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "zp/zp_plugin.h"
#ifdef ZP_HAVE_CBLAS
#include <cblas.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(ZP_GEMM_NO_CLONES)
#define ZP_GEMM_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define ZP_GEMM_CLONES
#endif

enum { ZP_GEMM_MC = 96, ZP_GEMM_KC = 256, ZP_GEMM_NC = 128 };

static int zp_gemm_forced_builtin(void) {
  const char* e = getenv("ZP_CPU_GEMM");
  return e && strcmp(e, "builtin") == 0;
}

int zp_gemm_blas_compiled(void) {
#ifdef ZP_HAVE_CBLAS
  return 1;
#else
  return 0;
#endif
}

int zp_gemm_uses_blas(void) { return zp_gemm_blas_compiled() && !zp_gemm_forced_builtin(); }

const char* zp_gemm_name(void) { return zp_gemm_uses_blas() ? "OpenBLAS" : "built-in GEMM"; }

static int zp_gemm_check(int ta, int tb, int M, int N, int K, int lda, int ldb, int ldc) {
  if (M < 0 || N < 0 || K < 0) return ZP_E_INVALID;
  int arows = ta ? M : K, brows = tb ? K : N;
  if (lda < (arows > 1 ? arows : 1) || ldb < (brows > 1 ? brows : 1) || ldc < (N > 1 ? N : 1))
    return ZP_E_INVALID;
  return ZP_OK;
}

static size_t zp_round_up(size_t x, size_t m) { return (x + m - 1) / m * m; }

#define ZP_GEMM_TEMPLATE 1

#define real float
#define ZG(name) name##_f32
#define ZG_MR 6
#define ZG_NR 16
#include "gemm_cpu.c"
#undef real
#undef ZG
#undef ZG_MR
#undef ZG_NR

#define real double
#define ZG(name) name##_f64
#define ZG_MR 6
#define ZG_NR 8
#include "gemm_cpu.c"
#undef real
#undef ZG
#undef ZG_MR
#undef ZG_NR

#ifdef ZP_HAVE_CBLAS
/* BLAS path. A multi-threaded BLAS call partitions the work by its thread count, and its
 * edge kernels sum K in a different grouping, so results would change with the number of
 * threads. Instead the output is cut into a fixed grid of ZP_BLAS_MB x ZP_BLAS_NB chunks (a
 * function of M and N only) and each chunk is one single-threaded BLAS call, the chunks
 * spread over OpenMP threads. Inside the region every thread sets its own nthreads ICV to 1,
 * which is what OpenBLAS (OpenMP build) reads to pick its thread count. */
enum { ZP_BLAS_MB = 128, ZP_BLAS_NB = 256 };
#define ZP_BLAS_CHUNKED(GEMM, real_t)                                                          \
  do {                                                                                         \
    const int mt = (M + ZP_BLAS_MB - 1) / ZP_BLAS_MB, nt = (N + ZP_BLAS_NB - 1) / ZP_BLAS_NB; \
    const int nch = mt * nt;                                                                   \
    int nthr = (double)M * N * K < 65536.0 ? 1 : omp_get_max_threads();                       \
    if (nthr > nch) nthr = nch;                                                                \
    _Pragma("omp parallel num_threads(nthr)")                                                 \
    {                                                                                          \
      omp_set_num_threads(1);                                                                  \
      _Pragma("omp for schedule(dynamic, 1)")                                                 \
      for (int t = 0; t < nch; t++) {                                                          \
        const int i0 = (t / nt) * ZP_BLAS_MB, j0 = (t % nt) * ZP_BLAS_NB;                     \
        const int mc = M - i0 < ZP_BLAS_MB ? M - i0 : ZP_BLAS_MB;                              \
        const int nc = N - j0 < ZP_BLAS_NB ? N - j0 : ZP_BLAS_NB;                              \
        const real_t* a = ta ? A + i0 : A + (size_t)i0 * lda;                                  \
        const real_t* bb = tb ? B + (size_t)j0 * ldb : B + j0;                                 \
        GEMM(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,    \
             mc, nc, K, alpha, a, lda, bb, ldb, beta, C + (size_t)i0 * ldc + j0, ldc);         \
      }                                                                                        \
    }                                                                                          \
  } while (0)
#endif

int zp_gemm_f32(int ta, int tb, int M, int N, int K, float alpha, const float* A, int lda,
                const float* B, int ldb, float beta, float* C, int ldc) {
#ifdef ZP_HAVE_CBLAS
  if (!zp_gemm_forced_builtin()) {
    int st = zp_gemm_check(ta, tb, M, N, K, lda, ldb, ldc);
    if (st) return st;
    if (M == 0 || N == 0) return ZP_OK;
    if (K == 0 || alpha == 0.0f) return zp_gemm_scale_c_f32(M, N, beta, C, ldc);
    ZP_BLAS_CHUNKED(cblas_sgemm, float);
    return ZP_OK;
  }
#endif
  return zp_gemm_builtin_f32(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

int zp_gemm_f64(int ta, int tb, int M, int N, int K, double alpha, const double* A, int lda,
                const double* B, int ldb, double beta, double* C, int ldc) {
#ifdef ZP_HAVE_CBLAS
  if (!zp_gemm_forced_builtin()) {
    int st = zp_gemm_check(ta, tb, M, N, K, lda, ldb, ldc);
    if (st) return st;
    if (M == 0 || N == 0) return ZP_OK;
    if (K == 0 || alpha == 0.0) return zp_gemm_scale_c_f64(M, N, beta, C, ldc);
    ZP_BLAS_CHUNKED(cblas_dgemm, double);
    return ZP_OK;
  }
#endif
  return zp_gemm_builtin_f64(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

#else /* ---------------- type-generic part: real, ZG(name), ZG_MR, ZG_NR ---------------- */

/* C = beta * C (beta == 0: C = 0 without reading it) */
static int ZG(zp_gemm_scale_c)(int M, int N, real beta, real* C, int ldc) {
  for (int i = 0; i < M; i++) {
    real* c = C + (size_t)i * ldc;
    if (beta == 0)
      for (int j = 0; j < N; j++) c[j] = 0;
    else if (beta != 1)
      for (int j = 0; j < N; j++) c[j] *= beta;
  }
  return ZP_OK;
}

/* Pack rows i0..i0+mc of op(A), columns k0..k0+kc, into MR-row micro-panels laid out
 * [kc][MR] each (rows beyond mc are zero). */
static void ZG(zp_gemm_pack_a)(real* restrict Ap, const real* restrict A, int lda, int ta,
                               int i0, int mc, int k0, int kc) {
  for (int p = 0; p < mc; p += ZG_MR) {
    real* dst = Ap + (size_t)p * kc;
    int mr = mc - p < ZG_MR ? mc - p : ZG_MR;
    for (int r = 0; r < ZG_MR; r++) {
      if (r >= mr) {
        for (int k = 0; k < kc; k++) dst[(size_t)k * ZG_MR + r] = 0;
      } else if (!ta) {
        const real* src = A + (size_t)(i0 + p + r) * lda + k0;
        for (int k = 0; k < kc; k++) dst[(size_t)k * ZG_MR + r] = src[k];
      } else {
        const real* src = A + (size_t)k0 * lda + (i0 + p + r);
        for (int k = 0; k < kc; k++) dst[(size_t)k * ZG_MR + r] = src[(size_t)k * lda];
      }
    }
  }
}

/* Pack columns j0..j0+nc of op(B), rows k0..k0+kc, into NR-column micro-panels laid out
 * [kc][NR] each (columns beyond nc are zero). */
static void ZG(zp_gemm_pack_b)(real* restrict Bp, const real* restrict B, int ldb, int tb,
                               int j0, int nc, int k0, int kc) {
  for (int q = 0; q < nc; q += ZG_NR) {
    real* dst = Bp + (size_t)q * kc;
    int nr = nc - q < ZG_NR ? nc - q : ZG_NR;
    if (!tb) {
      for (int k = 0; k < kc; k++) {
        const real* src = B + (size_t)(k0 + k) * ldb + j0 + q;
        real* d = dst + (size_t)k * ZG_NR;
        for (int c = 0; c < nr; c++) d[c] = src[c];
        for (int c = nr; c < ZG_NR; c++) d[c] = 0;
      }
    } else {
      for (int c = 0; c < ZG_NR; c++) {
        if (c >= nr) {
          for (int k = 0; k < kc; k++) dst[(size_t)k * ZG_NR + c] = 0;
        } else {
          const real* src = B + (size_t)(j0 + q + c) * ldb + k0;
          for (int k = 0; k < kc; k++) dst[(size_t)k * ZG_NR + c] = src[k];
        }
      }
    }
  }
}

/* One output tile: Ct[mcp x ncp] = sum over all K of packed A x packed B, then
 * C[i0.., j0..] = beta*C + alpha*Ct. */
ZP_GEMM_CLONES
static void ZG(zp_gemm_tile)(int ta, int tb, int K, real alpha, const real* A, int lda,
                             const real* B, int ldb, real beta, real* C, int ldc, int i0, int mc,
                             int j0, int nc, real* restrict Ap, real* restrict Bp,
                             real* restrict Ct) {
  const int mcp = (mc + ZG_MR - 1) / ZG_MR * ZG_MR, ncp = (nc + ZG_NR - 1) / ZG_NR * ZG_NR;
  for (int k0 = 0; k0 < K; k0 += ZP_GEMM_KC) {
    const int kc = K - k0 < ZP_GEMM_KC ? K - k0 : ZP_GEMM_KC;
    ZG(zp_gemm_pack_a)(Ap, A, lda, ta, i0, mc, k0, kc);
    ZG(zp_gemm_pack_b)(Bp, B, ldb, tb, j0, nc, k0, kc);
    for (int q = 0; q < ncp; q += ZG_NR) {
      const real* restrict b = Bp + (size_t)q * kc;
      for (int p = 0; p < mcp; p += ZG_MR) {
        const real* restrict a = Ap + (size_t)p * kc;
        real* restrict ct = Ct + (size_t)p * ncp + q;
        real acc[ZG_MR][ZG_NR];
        if (k0 == 0) {
          for (int r = 0; r < ZG_MR; r++)
            for (int c = 0; c < ZG_NR; c++) acc[r][c] = 0;
        } else {
          for (int r = 0; r < ZG_MR; r++)
            for (int c = 0; c < ZG_NR; c++) acc[r][c] = ct[(size_t)r * ncp + c];
        }
        for (int k = 0; k < kc; k++) {
          const real* restrict ak = a + (size_t)k * ZG_MR;
          const real* restrict bk = b + (size_t)k * ZG_NR;
#pragma GCC unroll 8
          for (int r = 0; r < ZG_MR; r++) {
            const real ar = ak[r];
#pragma omp simd
            for (int c = 0; c < ZG_NR; c++) acc[r][c] += ar * bk[c];
          }
        }
        for (int r = 0; r < ZG_MR; r++)
          for (int c = 0; c < ZG_NR; c++) ct[(size_t)r * ncp + c] = acc[r][c];
      }
    }
  }
  for (int i = 0; i < mc; i++) {
    real* c = C + (size_t)(i0 + i) * ldc + j0;
    const real* t = Ct + (size_t)i * ncp;
    if (beta == 0) {
      for (int j = 0; j < nc; j++) c[j] = alpha * t[j];
    } else if (beta == 1) {
      for (int j = 0; j < nc; j++) c[j] += alpha * t[j];
    } else {
      for (int j = 0; j < nc; j++) c[j] = beta * c[j] + alpha * t[j];
    }
  }
}

int ZG(zp_gemm_builtin)(int ta, int tb, int M, int N, int K, real alpha, const real* A, int lda,
                        const real* B, int ldb, real beta, real* C, int ldc) {
  int st = zp_gemm_check(ta, tb, M, N, K, lda, ldb, ldc);
  if (st) return st;
  if (M == 0 || N == 0) return ZP_OK;
  if (K == 0 || alpha == 0) return ZG(zp_gemm_scale_c)(M, N, beta, C, ldc);
  const int mt = (M + ZP_GEMM_MC - 1) / ZP_GEMM_MC, nt = (N + ZP_GEMM_NC - 1) / ZP_GEMM_NC;
  const int ntiles = mt * nt;
  const double work = (double)M * N * K;
  int nthr = work < 65536.0 ? 1 : omp_get_max_threads();
  if (omp_in_parallel()) nthr = 1;
  if (nthr > ntiles) nthr = ntiles;
  if (nthr < 1) nthr = 1;
  const size_t mcp = zp_round_up((size_t)(M < ZP_GEMM_MC ? M : ZP_GEMM_MC), ZG_MR);
  const size_t ncp = zp_round_up((size_t)(N < ZP_GEMM_NC ? N : ZP_GEMM_NC), ZG_NR);
  const size_t kc = (size_t)(K < ZP_GEMM_KC ? K : ZP_GEMM_KC);
  /* per-thread: packed A, packed B, scratch tile; each rounded to a 64-byte multiple */
  const size_t na = zp_round_up(mcp * kc, 64), nb = zp_round_up(kc * ncp, 64),
               nct = zp_round_up(mcp * ncp, 64);
  const size_t per = na + nb + nct;
  real* buf = (real*)aligned_alloc(64, per * sizeof(real) * (size_t)nthr);
  if (!buf) return ZP_E_NOMEM;
#pragma omp parallel num_threads(nthr) if (nthr > 1)
  {
    real* mine = buf + per * (size_t)omp_get_thread_num();
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < ntiles; t++) {
      const int i0 = (t / nt) * ZP_GEMM_MC, j0 = (t % nt) * ZP_GEMM_NC;
      const int mc = M - i0 < ZP_GEMM_MC ? M - i0 : ZP_GEMM_MC;
      const int nc = N - j0 < ZP_GEMM_NC ? N - j0 : ZP_GEMM_NC;
      ZG(zp_gemm_tile)(ta, tb, K, alpha, A, lda, B, ldb, beta, C, ldc, i0, mc, j0, nc, mine,
                       mine + na, mine + na + nb);
    }
  }
  free(buf);
  return ZP_OK;
}

#endif
