/* gemm_cpu.h: dense GEMM for the CPU backend, fp32 and fp64, row-major.
 *   C[M,N] = alpha * op(A)[M,K] @ op(B)[K,N] + beta * C
 * op(A) = A stored [M,K] (ta=0) or A^T with A stored [K,M] (ta=1); likewise op(B) with B
 * stored [K,N] (tb=0) or [N,K] (tb=1). lda/ldb/ldc are row strides in elements.
 * Invariants:
 * - beta == 0 never reads C (NaN-poisoned outputs are fine).
 * - Results never depend on the number of OpenMP threads: work is split over independent
 *   output tiles only, K is always summed in the same order (BLAS: single-threaded calls on a
 *   fixed grid of output chunks; a multi-threaded OpenBLAS call is not thread-count stable).
 * - Calls from inside an active OpenMP parallel region run on the calling thread.
 * - zp_gemm_* uses cblas_?gemm when built with ZP_HAVE_CBLAS, unless the environment variable
 *   ZP_CPU_GEMM=builtin (read at every call) forces the built-in cache-blocked GEMM.
 *   zp_gemm_builtin_* always uses the built-in one. The built-in GEMM adds each finished
 *   output tile to C once (C = beta*C + alpha*(full K sum)); it allocates its packing buffers
 *   per call (one malloc), never from inside a hot op loop.
 * Return 0, ZP_E_INVALID (negative sizes, bad strides) or ZP_E_NOMEM. */
#ifndef ZP_GEMM_CPU_H
#define ZP_GEMM_CPU_H

int zp_gemm_f32(int ta, int tb, int M, int N, int K, float alpha, const float* A, int lda,
                const float* B, int ldb, float beta, float* C, int ldc);
int zp_gemm_f64(int ta, int tb, int M, int N, int K, double alpha, const double* A, int lda,
                const double* B, int ldb, double beta, double* C, int ldc);
int zp_gemm_builtin_f32(int ta, int tb, int M, int N, int K, float alpha, const float* A,
                        int lda, const float* B, int ldb, float beta, float* C, int ldc);
int zp_gemm_builtin_f64(int ta, int tb, int M, int N, int K, double alpha, const double* A,
                        int lda, const double* B, int ldb, double beta, double* C, int ldc);

/* 1 when compiled against CBLAS (whatever the environment says). */
int zp_gemm_blas_compiled(void);
/* 1 when zp_gemm_* will use BLAS now (compiled in and not forced off by ZP_CPU_GEMM). */
int zp_gemm_uses_blas(void);
/* "OpenBLAS" or "built-in GEMM", for the current setting. */
const char* zp_gemm_name(void);

#endif
