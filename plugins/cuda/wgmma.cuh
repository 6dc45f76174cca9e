/* wgmma.cuh: Hopper warpgroup MMA (wgmma.mma_async, sm_90a only) for the attention kernels of
 * attention_wgmma.cu. Device code here compiles only where __CUDA_ARCH_FEAT_SM90_ALL is defined
 * (nvcc -arch sm_90a); include it only from files built for sm_90a (CMake target
 * zp_cuda_sm90a).
 *
 * Conventions (PTX ISA, "Asynchronous Warpgroup Level Matrix Multiply-Accumulate"):
 *   - one warpgroup = 4 consecutive warps (128 threads, warp index % 4 = w) computes a 64 x N
 *     tile; warp w owns rows 16w .. 16w + 15.
 *   - accumulator d[N / 2] (fp32) per thread, lane = 4g + t: d[4j + 0, 1] at (row 16w + g,
 *     cols 8j + 2t, + 1), d[4j + 2, 3] at row 16w + g + 8: per warp exactly the mma.m16n8
 *     C fragments of n8 tile j, so the FA2 register code (softmax, P packing) carries over.
 *   - A from registers (the "RS" form, used throughout): a[4] per thread for k16, the
 *     mma.m16n8k16 A fragment of the warp's 16 rows: a0 (g, 2t..), a1 (g + 8, 2t..),
 *     a2 (g, 2t + 8..), a3 (g + 8, 2t + 8..), bf16 pairs.
 *   - B from shared memory through a 64-bit matrix descriptor. Every B tile here is stored as
 *     rows of 64 bf16 (128 bytes: head size 64) in the 128-byte swizzle: the 16-byte chunk c
 *     of row r sits at r * 128 + ((c ^ (r & 7)) * 16), tiles 1024-byte aligned (8-row atoms;
 *     base offset 0). The same stored tile serves both operand majors:
 *       K-major (B[n][k] = tile[n][k]: k along the 128-byte row; "no transpose"):
 *         SBO = 1024 (8-row groups of n), LBO unused (1); the k16 step s starts at +32 s bytes.
 *       MN-major (B[k][n] = tile[k][n]: n along the row; imm-trans-b = 1), N = 64 only:
 *         SBO = 1024 (8-row groups of k), LBO unused; the k16 step s starts at +2048 s bytes.
 *   - ordering: wg_fence() before the first wgmma of a batch (registers written by ordinary
 *     instructions: accumulators, A fragments); wg_commit(); wg_wait<N>() (at most N batches
 *     still in flight); then wg_keep() on every accumulator and A register the batch used, so
 *     that the compiler neither reads an accumulator nor reuses an A register before the wait
 *     (the asm statements alone do not tell it that the hardware reads / writes them late).
 *   - shared memory written by cp.async (generic proxy) is made visible to wgmma (async proxy)
 *     by wg_fence_proxy() in every writing thread after its cp.async wait, then a barrier.
 */
#pragma once
#include <stdint.h>

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define ZPC_WGMMA_DEVICE 1
#endif

__device__ __forceinline__ uint32_t wg_smem(const void* p) {
  return (uint32_t)__cvta_generic_to_shared(p);
}

/* the 128-byte-swizzle descriptor of a B tile at shared address saddr (see above) */
__device__ __forceinline__ uint64_t wg_desc(uint32_t saddr) {
  return (uint64_t)((saddr & 0x3FFFFu) >> 4) | ((uint64_t)1 << 16) /* LBO (unused) */
         | ((uint64_t)(1024 >> 4) << 32) /* SBO */ | ((uint64_t)1 << 62) /* 128B swizzle */;
}

/* byte offset of 16-byte chunk c (0..7) of row r in a 128-byte-swizzled tile */
__device__ __forceinline__ uint32_t wg_swz(int r, int c) {
  return (uint32_t)(r * 128 + ((c ^ (r & 7)) << 4));
}

#ifdef ZPC_WGMMA_DEVICE
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void wg_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void wg_fence_proxy() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
#else
__device__ __forceinline__ void wg_fence() {}
__device__ __forceinline__ void wg_commit() {}
template <int N> __device__ __forceinline__ void wg_wait() {}
__device__ __forceinline__ void wg_fence_proxy() {}
#endif

template <int N> __device__ __forceinline__ void wg_keep(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; i++) asm volatile("" : "+f"(d[i])::"memory");
}
template <int N> __device__ __forceinline__ void wg_keep(uint32_t (&a)[N]) {
#pragma unroll
  for (int i = 0; i < N; i++) asm volatile("" : "+r"(a[i])::"memory");
}

/* d[32] (64 x 64 fp32) += A (64 x 16, registers a[4]) . B (16 x 64, descriptor desc);
 * TB = 0: B K-major, 1: MN-major (imm-trans-b) */
template <int TB>
__device__ __forceinline__ void wg_mma64(float (&d)[32], const uint32_t (&a)[4], uint64_t desc) {
#ifdef ZPC_WGMMA_DEVICE
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "{%32, %33, %34, %35}, %36, p, 1, 1, %37;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]),
        "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]),
        "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "n"(TB));
#endif
}
