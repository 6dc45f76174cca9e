/* attention_wgmma.cu: causal attention forward on Hopper warpgroup MMA (ZP_CUDA_FA2_FWD=wg),
 * head size 64 only, compiled for sm_90a alone (CMake target zp_cuda_sm90a) and called only on a
 * compute capability 9.0 device (zpc_wg_usable). Same contract as the fa2 forward
 * (attention_fa2.cu): qkv [B, T, 3C], out [B, T, C], aux = logsumexp L[b,h,t] (natural log, fp32
 * [B, NH, T]), so any fa2 backward reads its aux.
 *
 * Kernel zpc_wg_fwd_kernel: one warpgroup (128 threads) per CTA owns 64 query rows of one head
 * (warp w: rows 16w..16w+15, exactly the rows of its wgmma accumulator fragments); grid (heads,
 * query tiles), the heavy late tiles first. Q is loaded once (padded tile, ldmatrix) into A
 * fragments in registers; K / V tiles of 64 keys are double-buffered through cp.async into
 * 128-byte-swizzled shared tiles (wgmma.cuh), read by wgmma through descriptors:
 *   S = Q K^T      4 x wgmma m64n64k16, B = the K tile K-major
 *   online softmax in registers (the fa2 fast forward's code: running max in raw score units,
 *   p = ex2.approx(fma(s, scale_log2, -max scale_log2)), masking on the diagonal tile only)
 *   O += P V       4 x wgmma m64n64k16, A = P packed to bf16 from the S accumulator (the same
 *                  repacking as mma.sync), B = the V tile MN-major (transposed by the hardware)
 * Several CTAs share an SM (about 90 registers, 41 KB of shared memory each), so one CTA's
 * softmax overlaps another's tensor-core work without warp specialization.
 * Invariants: T arbitrary (rows and keys past T zero-filled, rows past T never stored; keys past T
 * only appear in tiles that causality already masks for every stored row); every output element
 * written once (deterministic).
 */
#include "attention_fa2.cuh"
#include "wgmma.cuh"

#define WG_HS 64
#define WG_BR 64 /* query rows per CTA (one warpgroup) */
#define WG_BC 64 /* keys per tile */
#define WG_LDQ (WG_HS + 8)
#define WG_TILE (WG_BC * WG_HS * 2) /* bytes of one swizzled K or V tile: 8 KB */
/* dynamic shared memory: 1024 bytes of alignment slack, 2 x (K, V) swizzled tiles, then Q */
#define WG_FWD_SMEM (1024 + 4 * WG_TILE + WG_BR * WG_LDQ * 2)

/* rows row0.. of a head slice into a 128-byte-swizzled tile at shared address s (cp.async,
 * zero-filled past T); 8 16-byte chunks per row, 128 threads */
__device__ __forceinline__ void wg_load_swz(uint32_t s, const bf16* base, size_t stride, int row0,
                                            int T) {
#pragma unroll
  for (int idx = threadIdx.x; idx < WG_BC * 8; idx += 128) {
    const int r = idx >> 3, c = idx & 7, t = row0 + r;
    const bool ok = t < T;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s + wg_swz(r, c)),
                 "l"(base + (size_t)(ok ? t : 0) * stride + c * 8), "r"(ok ? 16 : 0));
  }
}

__global__ void __launch_bounds__(128, 4)
zpc_wg_fwd_kernel(bf16* out, float* lse_out, const bf16* qkv, int T, int NH, float scale_log2) {
  extern __shared__ __align__(128) unsigned char wg_sm[];
  const uint32_t sbase = (wg_smem(wg_sm) + 1023u) & ~1023u; /* swizzled tiles: 1024-aligned */
  unsigned char* gbase = wg_sm + (sbase - wg_smem(wg_sm));
  const uint32_t kv0 = sbase;                                /* buffer u: K at kv0 + 2u TILE */
  bf16* Qs = (bf16*)(gbase + 4 * WG_TILE);

  const int C = NH * WG_HS;
  const int nq = (T + WG_BR - 1) / WG_BR;
  const int qt = nq - 1 - (int)blockIdx.y; /* heavy (late) tiles first, over all heads */
  const F2Head hd = f2_head_bh(qkv, T, NH, WG_HS, (int)blockIdx.x);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const int q0 = qt * WG_BR;
  const int nk = qt + 1; /* key tiles 0..qt (WG_BC == WG_BR): the last one is the diagonal */

  /* Q (padded, for ldmatrix) and K0 / V0 as the first cp.async group */
#pragma unroll
  for (int idx = threadIdx.x; idx < WG_BR * 8; idx += 128) {
    const int r = idx >> 3, c = idx & 7, t = q0 + r;
    const bool ok = t < T;
    f2_cp16(Qs + r * WG_LDQ + c * 8, hd.q + (size_t)(ok ? t : 0) * hd.stride + c * 8, ok);
  }
  wg_load_swz(kv0, hd.k, hd.stride, 0, T);
  wg_load_swz(kv0 + WG_TILE, hd.v, hd.stride, 0, T);
  f2_commit();

  float o[32], s[32];
  float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.0f, 0.0f};
  uint32_t qf[4][4];
#pragma unroll
  for (int i = 0; i < 32; i++) o[i] = 0.0f;

  for (int j = 0; j < nk; j++) {
    if (j + 1 < nk) { /* buffer (j+1)&1 was last read by tile j-1's waited wgmmas */
      const uint32_t nb = kv0 + ((j + 1) & 1) * 2 * WG_TILE;
      wg_load_swz(nb, hd.k, hd.stride, (j + 1) * WG_BC, T);
      wg_load_swz(nb + WG_TILE, hd.v, hd.stride, (j + 1) * WG_BC, T);
      f2_commit();
      f2_wait<1>();
    } else {
      f2_wait<0>();
    }
    wg_fence_proxy(); /* this thread's cp.async writes, visible to the async proxy */
    __syncthreads();
    if (j == 0) {
#pragma unroll
      for (int kk = 0; kk < 4; kk++) f2_ldm4(qf[kk], f2_at_a<WG_LDQ>(Qs, warp * 16, kk * 16, lane));
    }
    const uint32_t ks = kv0 + (j & 1) * 2 * WG_TILE, vs = ks + WG_TILE;

    /* S = Q K^T */
#pragma unroll
    for (int i = 0; i < 32; i++) s[i] = 0.0f;
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < 4; kk++) wg_mma64<0>(s, qf[kk], wg_desc(ks + 32 * kk));
    wg_commit();
    wg_wait<0>();
    wg_keep(s);

    const int k0 = j * WG_BC, r0 = q0 + warp * 16;
    if (j == nk - 1) { /* the diagonal tile: key > query to -inf */
#pragma unroll
      for (int i = 0; i < 32; i++)
        if (k0 + (i >> 2) * 8 + 2 * t4 + (i & 1) > r0 + g + 8 * ((i >> 1) & 1)) s[i] = -INFINITY;
    }
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int i = 0; i < 32; i++) mx[(i >> 1) & 1] = fmaxf(mx[(i >> 1) & 1], s[i]);
    float alpha[2], ms[2];
#pragma unroll
    for (int hh = 0; hh < 2; hh++) {
      mx[hh] = fmaxf(mx[hh], __shfl_xor_sync(0xffffffffu, mx[hh], 1));
      mx[hh] = fmaxf(mx[hh], __shfl_xor_sync(0xffffffffu, mx[hh], 2));
      /* finite from tile 0 on (key 0 is unmasked for every row): no -inf - -inf */
      const float mn = fmaxf(mrow[hh], mx[hh]);
      alpha[hh] = f2_ex2((mrow[hh] - mn) * scale_log2); /* 0 on the first tile */
      mrow[hh] = mn;
      ms[hh] = -mn * scale_log2;
      lrow[hh] *= alpha[hh];
    }
    uint32_t pf[4][4];
#pragma unroll
    for (int i = 0; i < 32; i++) {
      const float p = f2_ex2(fmaf(s[i], scale_log2, ms[(i >> 1) & 1]));
      s[i] = p;
      lrow[(i >> 1) & 1] += p;
      o[i] *= alpha[(i >> 1) & 1];
    }
#pragma unroll
    for (int kk = 0; kk < 4; kk++) { /* n8 tiles 2kk, 2kk+1 of S are the k16 step kk of P */
      pf[kk][0] = f2_pack(s[8 * kk + 0], s[8 * kk + 1]);
      pf[kk][1] = f2_pack(s[8 * kk + 2], s[8 * kk + 3]);
      pf[kk][2] = f2_pack(s[8 * kk + 4], s[8 * kk + 5]);
      pf[kk][3] = f2_pack(s[8 * kk + 6], s[8 * kk + 7]);
    }

    /* O += P V */
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < 4; kk++) wg_mma64<1>(o, pf[kk], wg_desc(vs + 2048 * kk));
    wg_commit();
    wg_wait<0>();
    wg_keep(o);
#pragma unroll
    for (int kk = 0; kk < 4; kk++) wg_keep(pf[kk]);
    __syncthreads(); /* every warp's wgmmas on buffer j & 1 are done before it is refilled */
  }

  bf16* obase = out + (size_t)hd.bb * T * C + hd.h * WG_HS;
  const int r0 = q0 + warp * 16;
  float inv[2];
#pragma unroll
  for (int hh = 0; hh < 2; hh++) {
    float l = lrow[hh];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    inv[hh] = 1.0f / l;
    const int row = r0 + g + 8 * hh;
    if (t4 == 0 && row < T)
      lse_out[(size_t)hd.bh * T + row] = (mrow[hh] * scale_log2 + log2f(l)) * F2_LN2;
  }
  float ot[8][4];
#pragma unroll
  for (int i = 0; i < 32; i++) ot[i >> 2][i & 3] = o[i];
  f2_store<WG_HS>(obase, C, r0, T, ot, inv[0], inv[1], lane);
}

int zpc_wg_fwd(zp_backend* b, void* out, void* aux, const void* qkv, int B, int T, int NH) {
  ZPC_CUDA(b, cudaFuncSetAttribute(zpc_wg_fwd_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   WG_FWD_SMEM));
  dim3 grid(B * NH, (T + WG_BR - 1) / WG_BR);
  zpc_wg_fwd_kernel<<<grid, 128, WG_FWD_SMEM, b->stream>>>(
      (bf16*)out, (float*)aux, (const bf16*)qkv, T, NH, F2_LOG2E / sqrtf((float)WG_HS));
  ZPC_LAUNCHED(b, "wg_fwd");
  return ZP_OK;
}
