/* wgmma.cuh: Hopper warpgroup MMA (wgmma.mma_async, sm_90a only) for the attention kernels of
 * attention_wgmma.cu. Device code here compiles only where __CUDA_ARCH_FEAT_SM90_ALL is defined
 * (nvcc -arch sm_90a); include it only from files built for sm_90a (CMake target
 * zp_cuda_sm90a). Besides the instruction wrappers it holds the 64 x 64 tile helpers both
 * attention files use (loads into the swizzle, products over 4 k16 steps, the tile wait, the
 * accumulator's repacking and store).
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

#include "attention_fa2.cuh"

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

/* the 32 accumulator operands of an m64n64 wgmma, constraint C ("+f" accumulate, "=f" overwrite) */
#define WG_D32(C)                                                                                   \
  C(d[0]), C(d[1]), C(d[2]), C(d[3]), C(d[4]), C(d[5]), C(d[6]), C(d[7]), C(d[8]), C(d[9]),         \
      C(d[10]), C(d[11]), C(d[12]), C(d[13]), C(d[14]), C(d[15]), C(d[16]), C(d[17]), C(d[18]),     \
      C(d[19]), C(d[20]), C(d[21]), C(d[22]), C(d[23]), C(d[24]), C(d[25]), C(d[26]), C(d[27]),     \
      C(d[28]), C(d[29]), C(d[30]), C(d[31])
/* scale-d predicate SD (1: d += A.B, 0: d = A.B), then the m64n64k16 bf16 instruction */
#define WG_MMA64_ASM(SD)                                                                            \
  "{\n.reg .pred p;\nsetp.ne.b32 p, " SD ", 0;\n"                                                   \
  "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "                                           \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                          \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "               \
  "{%32, %33, %34, %35}, %36, p, 1, 1, %37;\n}\n"

/* d[32] (64 x 64 fp32) += A (64 x 16, registers a[4]) . B (16 x 64, descriptor desc);
 * TB = 0: B K-major, 1: MN-major (imm-trans-b) */
template <int TB>
__device__ __forceinline__ void wg_mma64(float (&d)[32], const uint32_t (&a)[4], uint64_t desc) {
#ifdef ZPC_WGMMA_DEVICE
  asm volatile(WG_MMA64_ASM("1")
               : WG_D32("+f")
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "n"(TB));
#endif
}
/* the same with scale-d = 0: d = A . B (d's old contents ignored, so it needs no zeroing) */
template <int TB>
__device__ __forceinline__ void wg_mma64_first(float (&d)[32], const uint32_t (&a)[4],
                                               uint64_t desc) {
#ifdef ZPC_WGMMA_DEVICE
  asm volatile(WG_MMA64_ASM("0")
               : WG_D32("=f")
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "n"(TB));
#else
#pragma unroll
  for (int i = 0; i < 32; i++) d[i] = 0.0f;
#endif
}

/* ---------------------------------------------------------------- 64 x 64 tile helpers of the
 * attention kernels (head size 64: one 128-byte row per tile row) */

/* d = A . B (wg_prod) or d += A . B (wg_acc) over a 64-deep product: 4 k16 steps, A = a[kk], B a
 * swizzled tile at shared address tile; TB = 0: B K-major (B[n][k] = tile row n), 1: MN-major
 * (B[k][n] = tile row k) */
template <int TB>
__device__ __forceinline__ void wg_prod(float (&d)[32], const uint32_t (&a)[4][4], uint32_t tile) {
  wg_mma64_first<TB>(d, a[0], wg_desc(tile));
#pragma unroll
  for (int kk = 1; kk < 4; kk++) wg_mma64<TB>(d, a[kk], wg_desc(tile + (TB ? 2048 : 32) * kk));
}
template <int TB>
__device__ __forceinline__ void wg_acc(float (&d)[32], const uint32_t (&a)[4][4], uint32_t tile) {
#pragma unroll
  for (int kk = 0; kk < 4; kk++) wg_mma64<TB>(d, a[kk], wg_desc(tile + (TB ? 2048 : 32) * kk));
}
__device__ __forceinline__ void wg_keep4(uint32_t (&a)[4][4]) {
#pragma unroll
  for (int kk = 0; kk < 4; kk++) wg_keep(a[kk]);
}

/* the dynamic shared memory's first 1024-byte boundary (swizzled tiles need it; callers
 * allocate 1024 bytes of slack) */
__device__ __forceinline__ uint32_t wg_smem_base(const void* sm) {
  return (wg_smem(sm) + 1023u) & ~1023u;
}

/* rows row0..row0+63 of a head slice (row stride `stride` elements, 64 bf16 per row) into a
 * 128-byte-swizzled tile at shared address s (cp.async, zero-filled past T); 128 threads */
__device__ __forceinline__ void wg_load_swz(uint32_t s, const bf16* base, size_t stride, int row0,
                                            int T) {
#pragma unroll
  for (int idx = threadIdx.x; idx < 64 * 8; idx += 128) {
    const int r = idx >> 3, c = idx & 7, t = row0 + r;
    const bool ok = t < T;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s + wg_swz(r, c)),
                 "l"(base + (size_t)(ok ? t : 0) * stride + c * 8), "r"(ok ? 16 : 0));
  }
}

/* the A fragments a[kk] (k16 steps kk = 0..3 over the 64 columns) of warp w's 16 rows 16w.. of a
 * swizzled tile at shared address tile: ldmatrix x4, lane row 16w + (lane & 15), 16-byte chunk
 * 2kk + (lane >> 4) (f2_at_a's addressing through the swizzle) */
__device__ __forceinline__ void wg_afrag(uint32_t (&a)[4][4], uint32_t tile, int warp, int lane) {
  const int r = 16 * warp + (lane & 15);
#pragma unroll
  for (int kk = 0; kk < 4; kk++)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(a[kk][0]), "=r"(a[kk][1]), "=r"(a[kk][2]), "=r"(a[kk][3])
                 : "r"(tile + wg_swz(r, 2 * kk + (lane >> 4))));
}

/* the double-buffered loop's tile wait: the current tile's cp.async group complete (one newer
 * group may stay in flight when `more`), made visible to wgmma (async proxy), then a barrier */
__device__ __forceinline__ void wg_tile_ready(bool more) {
  if (more)
    f2_wait<1>();
  else
    f2_wait<0>();
  wg_fence_proxy();
  __syncthreads();
}

/* an accumulator (64 x 64, fp32, rounded to bf16 here) as the A fragments of its 4 k16 steps: n8
 * tiles 2kk, 2kk + 1 are k16 step kk (the fa2 forward's P packing) */
__device__ __forceinline__ void wg_pack(uint32_t (&a)[4][4], const float (&s)[32]) {
#pragma unroll
  for (int kk = 0; kk < 4; kk++) {
    a[kk][0] = f2_pack(s[8 * kk + 0], s[8 * kk + 1]);
    a[kk][1] = f2_pack(s[8 * kk + 2], s[8 * kk + 3]);
    a[kk][2] = f2_pack(s[8 * kk + 4], s[8 * kk + 5]);
    a[kk][3] = f2_pack(s[8 * kk + 6], s[8 * kk + 7]);
  }
}

/* a warp's 16 rows (row0 + g, + 8) of an accumulator, x mul0 / mul1, to bf16 (f2_store over the
 * [n8 tile][4] view) */
__device__ __forceinline__ void wg_store(bf16* base, size_t stride, int row0, int T,
                                         const float (&d)[32], float mul0, float mul1, int lane) {
  float t[8][4];
#pragma unroll
  for (int i = 0; i < 32; i++) t[i >> 2][i & 3] = d[i];
  f2_store<64>(base, stride, row0, T, t, mul0, mul1, lane);
}
