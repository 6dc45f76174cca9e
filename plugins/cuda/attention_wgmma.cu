/* attention_wgmma.cu: causal attention forward on Hopper warpgroup MMA (ZP_CUDA_FA2_FWD=wg),
 * head size 64 only, compiled for sm_90a alone (CMake target zp_cuda_sm90a) and called only on a
 * compute capability 9.0 device (zpc_wg_usable). Same contract as the fa2 forward
 * (attention_fa2.cu): qkv [B, T, 3C], out [B, T, C], aux = logsumexp L[b,h,t] (natural log, fp32
 * [B, NH, T]), so any fa2 backward reads its aux.
 *
 * Kernel zpc_wg_fwd_kernel: one warpgroup (128 threads) per CTA owns 64 query rows of one head
 * (warp w: rows 16w..16w+15, exactly the rows of its wgmma accumulator fragments); grid (heads,
 * query tiles), the heavy late tiles first. Q is loaded once (a swizzled tile, ldmatrix) into A
 * fragments in registers; K / V tiles of 64 keys are double-buffered through cp.async into
 * 128-byte-swizzled shared tiles (wgmma.cuh), read by wgmma through descriptors:
 *   S = Q K^T      4 x wgmma m64n64k16, B = the K tile K-major
 *   online softmax in registers (the fa2 fast forward's code: running max in raw score units,
 *   p = ex2.approx(fma(s, scale_log2, -max scale_log2)), masking on the diagonal tile only)
 *   O += P V       4 x wgmma m64n64k16, A = P packed to bf16 from the S accumulator (the same
 *                  repacking as mma.sync), B = the V tile MN-major (transposed by the hardware)
 * Several CTAs share an SM (about 110 registers, 41 KB of shared memory each), so one CTA's
 * softmax overlaps another's tensor-core work without warp specialization.
 * Invariants: T arbitrary (rows and keys past T zero-filled, rows past T never stored; keys past T
 * only appear in tiles that causality already masks for every stored row); every output element
 * written once (deterministic).
 */
#include "wgmma.cuh"

#define WG_HS 64
#define WG_BR 64 /* query rows per CTA (one warpgroup) */
#define WG_BC 64 /* keys per tile */
#define WG_TILE (WG_BC * WG_HS * 2) /* bytes of one swizzled 64-row tile: 8 KB */
/* dynamic shared memory: 1024 bytes of alignment slack, 2 x (K, V) swizzled tiles, then Q */
#define WG_FWD_SMEM (1024 + 5 * WG_TILE)

__global__ void __launch_bounds__(128, 4)
zpc_wg_fwd_kernel(bf16* out, float* lse_out, const bf16* qkv, int T, int NH, float scale_log2) {
  extern __shared__ __align__(128) unsigned char wg_sm[];
  const uint32_t kv0 = wg_smem_base(wg_sm); /* buffer u: K at kv0 + 2u TILE, V + TILE */
  const uint32_t qs = kv0 + 4 * WG_TILE;    /* Q (read once by ldmatrix) */

  const int C = NH * WG_HS;
  const int nq = (T + WG_BR - 1) / WG_BR;
  const int qt = nq - 1 - (int)blockIdx.y; /* heavy (late) tiles first, over all heads */
  const F2Head hd = f2_head_bh(qkv, T, NH, WG_HS, (int)blockIdx.x);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const int q0 = qt * WG_BR;
  const int nk = qt + 1; /* key tiles 0..qt (WG_BC == WG_BR): the last one is the diagonal */

  /* Q and K0 / V0 as the first cp.async group */
  wg_load_swz(qs, hd.q, hd.stride, q0, T);
  wg_load_swz(kv0, hd.k, hd.stride, 0, T);
  wg_load_swz(kv0 + WG_TILE, hd.v, hd.stride, 0, T);
  f2_commit();

  float o[32], s[32];
  float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.0f, 0.0f};
  uint32_t qf[4][4], pf[4][4];
#pragma unroll
  for (int i = 0; i < 32; i++) o[i] = 0.0f;

  for (int j = 0; j < nk; j++) {
    if (j + 1 < nk) { /* buffer (j+1)&1 was last read by tile j-1's waited wgmmas */
      const uint32_t nb = kv0 + ((j + 1) & 1) * 2 * WG_TILE;
      wg_load_swz(nb, hd.k, hd.stride, (j + 1) * WG_BC, T);
      wg_load_swz(nb + WG_TILE, hd.v, hd.stride, (j + 1) * WG_BC, T);
      f2_commit();
    }
    wg_tile_ready(j + 1 < nk);
    if (j == 0) wg_afrag(qf, qs, warp, lane); /* this warp's 16 Q rows, once */
    const uint32_t ks = kv0 + (j & 1) * 2 * WG_TILE, vs = ks + WG_TILE;

    /* S = Q K^T */
    wg_fence();
    wg_prod<0>(s, qf, ks);
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
#pragma unroll
    for (int i = 0; i < 32; i++) {
      const float p = f2_ex2(fmaf(s[i], scale_log2, ms[(i >> 1) & 1]));
      s[i] = p;
      lrow[(i >> 1) & 1] += p;
      o[i] *= alpha[(i >> 1) & 1];
    }
    wg_pack(pf, s);

    /* O += P V */
    wg_fence();
    wg_acc<1>(o, pf, vs);
    wg_commit();
    wg_wait<0>();
    wg_keep(o);
    wg_keep4(pf);
    __syncthreads(); /* every warp's wgmmas on buffer j & 1 are done before it is refilled */
  }

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
  wg_store(out + (size_t)hd.bb * T * C + hd.h * WG_HS, C, r0, T, o, inv[0], inv[1], lane);
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
