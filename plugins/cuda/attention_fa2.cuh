/* attention_fa2.cuh: what the mma.sync attention kernels (attention_fa2.cu) and the Hopper
 * wgmma kernels (attention_wgmma.cu) share: the tile constants, the PTX helpers (cp.async,
 * ldmatrix, mma.m16n8k16, ex2.approx), the ldmatrix lane addressing, where a head lives in qkv,
 * and the bf16 store of an accumulator's 16 rows. Fragment conventions: attention_fa2.cu's header.
 * Everything here is inline device code or a macro; no kernel, no host symbol.
 */
#pragma once
#include <math.h>
#include <stdint.h>

#include "cuda_common.cuh"

#define F2_THREADS 128
#define F2_BC 64 /* keys per tile (forward and q kernel), queries per tile (kv kernel) */
#define F2_LOG2E 1.4426950408889634f
#define F2_LN2 0.6931471805599453f

/* ---------------------------------------------------------------- PTX helpers */

__device__ __forceinline__ uint32_t f2_smem(const void* p) {
  return (uint32_t)__cvta_generic_to_shared(p);
}
__device__ __forceinline__ void f2_cp16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(f2_smem(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void f2_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void f2_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ void f2_ldm4(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(f2_smem(p)));
}
__device__ __forceinline__ void f2_ldm4t(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(f2_smem(p)));
}
__device__ __forceinline__ void f2_mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                       uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
/* 2^x in one MUFU op (flushes results below 2^-126 to 0; ex2(-inf) = 0); the variant
 * kernels use it where the base kernels call exp2f (which adds a denormal range fix-up) */
__device__ __forceinline__ float f2_ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ uint32_t f2_pack(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *(uint32_t*)&v;
}

/* ldmatrix lane addresses. A operand (16 rows x 16 k, row-major [row][k]) and the transposed
 * B operand (16 k x 16 n stored [k][n]): row r0 + (lane & 15), column c0 + 8 (lane >> 4).
 * B operand stored [n][k] (non-transposed): row n0 + (lane & 7) + 8 (lane >> 4),
 * column k0 + 8 ((lane >> 3) & 1). Either x4 load gives {b0, b1} of n tile 0 in r[0], r[1] and
 * of n tile 1 (n0 + 8) in r[2], r[3]; the A load gives a0..a3. */
template <int LD>
__device__ __forceinline__ const bf16* f2_at_a(const bf16* s, int r0, int c0, int lane) {
  return s + (r0 + (lane & 15)) * LD + c0 + ((lane >> 4) << 3);
}
template <int LD>
__device__ __forceinline__ const bf16* f2_at_bn(const bf16* s, int n0, int k0, int lane) {
  return s + (n0 + (lane & 7) + ((lane >> 4) << 3)) * LD + k0 + (((lane >> 3) & 1) << 3);
}

/* acc[16 rows][64 cols] (8 n8 tiles) += A[16 rows of sa at r0][HS] . Bm[64 rows of sb][HS]^T */
template <int HS, int LD>
__device__ __forceinline__ void f2_abt(float (&acc)[8][4], const bf16* sa, int r0, const bf16* sb,
                                       int lane) {
#pragma unroll
  for (int kk = 0; kk < HS / 16; kk++) {
    uint32_t a[4];
    f2_ldm4(a, f2_at_a<LD>(sa, r0, kk * 16, lane));
#pragma unroll
    for (int np = 0; np < 4; np++) {
      uint32_t b[4];
      f2_ldm4(b, f2_at_bn<LD>(sb, np * 16, kk * 16, lane));
      f2_mma(acc[2 * np], a, b[0], b[1]);
      f2_mma(acc[2 * np + 1], a, b[2], b[3]);
    }
  }
}

/* acc[16][HS] += P[16][64] (register fragments p, fp32, rounded to bf16 here) . Z[64][HS] (smem,
 * stored [k][n]) */
template <int HS, int LD>
__device__ __forceinline__ void f2_pv(float (&acc)[HS / 8][4], const float (&p)[8][4],
                                      const bf16* sz, int lane) {
#pragma unroll
  for (int kk = 0; kk < 4; kk++) {
    uint32_t a[4] = {f2_pack(p[2 * kk][0], p[2 * kk][1]), f2_pack(p[2 * kk][2], p[2 * kk][3]),
                     f2_pack(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                     f2_pack(p[2 * kk + 1][2], p[2 * kk + 1][3])};
#pragma unroll
    for (int dp = 0; dp < HS / 16; dp++) {
      uint32_t b[4];
      f2_ldm4t(b, f2_at_a<LD>(sz, kk * 16, dp * 16, lane));
      f2_mma(acc[2 * dp], a, b[0], b[1]);
      f2_mma(acc[2 * dp + 1], a, b[2], b[3]);
    }
  }
}

/* ROWS rows of a head slice (row t at base + t*stride) into s[ROWS][HS + 8], zeros past T, by a
 * block of NT threads (f2_load: the F2_THREADS of the base kernels) */
template <int HS, int ROWS, int NT>
__device__ __forceinline__ void f2_loadn(bf16* s, const bf16* base, size_t stride, int row0,
                                         int T) {
  constexpr int V8 = HS / 8;
#pragma unroll
  for (int idx = threadIdx.x; idx < ROWS * V8; idx += NT) {
    const int r = idx / V8, c8 = idx - r * V8, t = row0 + r;
    const bool ok = t < T;
    f2_cp16(s + r * (HS + 8) + c8 * 8, base + (size_t)(ok ? t : 0) * stride + c8 * 8, ok);
  }
}
template <int HS, int ROWS>
__device__ __forceinline__ void f2_load(bf16* s, const bf16* base, size_t stride, int row0,
                                        int T) {
  f2_loadn<HS, ROWS, F2_THREADS>(s, base, stride, row0, T);
}

/* two 64-row tiles back to back (K then V, or Q then dO): s and s + 64 rows, rows row0.. of
 * a (row stride sa) and of b (row stride sb), as one cp.async group */
template <int HS>
__device__ __forceinline__ void f2_load2(bf16* s, const bf16* a, size_t sa, const bf16* b,
                                         size_t sb, int row0, int T) {
  f2_load<HS, F2_BC>(s, a, sa, row0, T);
  f2_load<HS, F2_BC>(s + F2_BC * (HS + 8), b, sb, row0, T);
  f2_commit();
}

/* where head h of sequence bb lives in qkv [B, T, 3C] (row stride 3C) */
struct F2Head {
  int bh, bb, h;
  size_t stride;
  const bf16 *q, *k, *v;
};
__device__ __forceinline__ F2Head f2_head_bh(const bf16* qkv, int T, int NH, int HS, int bh) {
  F2Head r;
  r.bh = bh;
  r.bb = r.bh / NH;
  r.h = r.bh % NH;
  r.stride = 3 * (size_t)NH * HS;
  r.q = qkv + (size_t)r.bb * T * r.stride + r.h * HS;
  r.k = r.q + (size_t)NH * HS;
  r.v = r.q + 2 * (size_t)NH * HS;
  return r;
}
/* base kernels: head (b, h) = blockIdx.y */
__device__ __forceinline__ F2Head f2_head(const bf16* qkv, int T, int NH, int HS) {
  return f2_head_bh(qkv, T, NH, HS, (int)blockIdx.y);
}

/* 16 rows (row0 + 0..15 of a warp's fragment rows g, g + 8) of an fp32 accumulator to bf16 */
template <int HS>
__device__ __forceinline__ void f2_store(bf16* base, size_t stride, int row0, int T,
                                         const float (&acc)[HS / 8][4], float mul0, float mul1,
                                         int lane) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int h = 0; h < 2; h++) {
    const int row = row0 + g + 8 * h;
    if (row >= T) continue;
    const float mul = h ? mul1 : mul0;
    bf16* dst = base + (size_t)row * stride + 2 * t;
#pragma unroll
    for (int nt = 0; nt < HS / 8; nt++)
      *(uint32_t*)(dst + nt * 8) = f2_pack(acc[nt][2 * h] * mul, acc[nt][2 * h + 1] * mul);
  }
}

