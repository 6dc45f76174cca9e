/* backend_cpu.h: the CPU device backend, the reference implementation of zp_backend_ops.
 * Invariants: compute dtype F32 or F64 (one source, compiled for both); "device" memory is
 * host memory (64-byte aligned, not zeroed); every op is synchronous; results are bitwise
 * independent of the OpenMP thread count. GEMM: OpenBLAS when built with it, else (or with
 * ZP_CPU_GEMM=builtin) the built-in GEMM of gemm_cpu.c. */
#ifndef ZP_BACKEND_CPU_H
#define ZP_BACKEND_CPU_H
#include "zp/zp_plugin.h"

const zp_backend_ops* zp_cpu_backend_ops(void);

#endif
