/* adamw_cpu.h: vectorised CPU AdamW (scalar, AVX2, AVX-512 paths; OpenMP across cores).
 * Invariants:
 * - The arithmetic is the CPU backend's AdamW, operation for operation (fp32, no FMA
 *   contraction, IEEE sqrt and division, bias corrections 1 - beta^t computed once in double
 *   and rounded to float): every SIMD path is bitwise equal to the scalar path, and the
 *   result does not depend on the thread count.
 * - Self-contained: adamw_cpu.c includes only libc, <omp.h>, zp_plugin.h (zp_dtype, status
 *   codes) and bf16.h, so a plugin can compile it into itself. No logging: errors are status
 *   codes, and zp_adamw_isa_error() says what is wrong with the ISA choice.
 * - The ISA is chosen per call: ZP_ADAMW_ISA=scalar|avx2|avx512|auto in the environment
 *   forces one (an ISA the CPU lacks, or an unknown value, makes zp_adamw_cpu return
 *   ZP_E_INVALID, never crash), otherwise the best the CPU supports. */
#ifndef ZP_ADAMW_CPU_H
#define ZP_ADAMW_CPU_H
#include <stddef.h>

#include "zp/zp_plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  float lr, beta1, beta2, eps, weight_decay, grad_scale;
  int step_t; /* >= 1 */
} zp_adamw_hparams;

typedef enum { ZP_ISA_AUTO = 0, ZP_ISA_SCALAR, ZP_ISA_AVX2, ZP_ISA_AVX512 } zp_isa;

/* One AdamW step on n elements (decoupled weight decay):
 *   g = grad * grad_scale; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g g;
 *   master -= lr * ((m / bc1) / (sqrt(v / bc2) + eps) + wd * master); param = (pdt) master
 * with bc = 1 - beta^step_t. master/m/v fp32; grad gdt F32 or BF16; param pdt F32 or BF16
 * (bf16: round to nearest even), or NULL / == master (then pdt must be F32) when master is the
 * parameter itself. Arrays must not overlap (other than param == master). Any alignment of
 * the element type is fine. threads <= 0: OpenMP's default; small n uses fewer threads.
 * Returns ZP_OK, or ZP_E_INVALID (NULL pointer, bad dtype, step_t < 1, unavailable ISA). */
int zp_adamw_cpu(void* param, zp_dtype pdt, float* master, const void* grad, zp_dtype gdt,
                 float* m, float* v, size_t n, const zp_adamw_hparams* hp, int threads);

/* The same with an explicit path: ZP_ISA_AUTO = zp_adamw_isa() (environment, else best). */
int zp_adamw_cpu_isa(zp_isa isa, void* param, zp_dtype pdt, float* master, const void* grad,
                     zp_dtype gdt, float* m, float* v, size_t n, const zp_adamw_hparams* hp,
                     int threads);

/* The ISA zp_adamw_cpu will use: the one ZP_ADAMW_ISA names (even when the CPU lacks it:
 * then zp_adamw_cpu fails), else the best available. ZP_ISA_AUTO when ZP_ADAMW_ISA holds an
 * unknown value. */
zp_isa zp_adamw_isa(void);
/* 1 when this CPU (and OS) can run the path; ZP_ISA_AUTO and ZP_ISA_SCALAR always 1.
 * ZP_ADAMW_HIDE=avx512[,avx2] in the environment hides paths (simulates an older CPU). */
int zp_isa_supported(zp_isa isa);
/* The path the calling thread's last accepted zp_adamw_cpu* call ran (ZP_ISA_AUTO: none yet). */
zp_isa zp_adamw_last_isa(void);
/* "auto", "scalar", "avx2", "avx512" ("?" for anything else) */
const char* zp_isa_name(zp_isa isa);
/* NULL when the ISA choice (environment or isa, ZP_ISA_AUTO: environment) is usable, else a
 * message naming the problem (thread-local buffer, valid until the next call). */
const char* zp_adamw_isa_error(zp_isa isa);

#ifdef __cplusplus
}
#endif
#endif
