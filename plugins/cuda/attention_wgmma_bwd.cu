/* attention_wgmma_bwd.cu: causal attention backward on Hopper warpgroup MMA (ZP_CUDA_FA2_BWD=wg),
 * head size 64 only, compiled for sm_90a alone (CMake target zp_cuda_sm90a) and called only on a
 * compute capability 9.0 device (zpc_wg_usable). Same contract as the fa2 backward
 * (attention_fa2.cu): qkv [B, T, 3C] (q | k | v, head h at columns h*64..), dqkv the same layout,
 * dout and out [B, T, C], aux = logsumexp L[b,h,t] (natural log, fp32 [B, NH, T]).
 *
 * The fa2 kv / q split (deterministic, no atomics, every output element written once by one
 * thread; 7 tile products per (key tile, query tile) pair), each product 4 wgmma m64n64k16:
 *   D[t] = sum_d dO O                                   zpc_fa2_prep_D (attention_fa2.cu)
 *   zpc_wg_bwd_kv_kernel: one warpgroup (128 threads) per CTA owns 64 keys k0.. of one head
 *     (warp w: keys k0 + 16w..+15, its accumulator rows); K and V as register A fragments
 *     (ldmatrix from a swizzled tile, once); over query tiles i >= the key tile, Q / dO tiles
 *     and their L / D double-buffered by cp.async into 128-byte-swizzled shared tiles:
 *       S^T = K Q^T, dP^T = V dO^T       (B = Q, dO tiles K-major; two commit groups, P^T is
 *                                          computed while dP^T is still in flight)
 *       P^T = exp2(S^T scale log2e - L log2e), 0 where query < key or query >= T
 *       dV += P^T dO                     (A = bf16 P^T repacked from the accumulator, as the fa2
 *                                          forward packs P; B = the dO tile MN-major; in flight
 *                                          while dS^T is computed)
 *       dS^T = P^T (dP^T - D), dK += dS^T Q   (B = the Q tile MN-major)
 *     dK (x 1/8) and dV stored bf16 at the end.
 *   zpc_wg_bwd_q_kernel: one warpgroup per CTA owns 64 queries; Q, dO as register A fragments,
 *     L, D per row in registers; over key tiles j <= the query tile, K / V double-buffered:
 *       S = Q K^T, dP = dO V^T (B K-major), P (key > query -> 0), dS = P (dP - D),
 *       dQ += dS K (B = the K tile MN-major); dQ (x 1/8) stored bf16.
 *   Grids (heads, tiles): the heavy tiles of every head first (kv: low key tiles; q: late
 *   query tiles).
 * Layouts and ordering rules: wgmma.cuh (accumulator d[4j + e] at row 16w + g + 8 (e >> 1),
 * column 8j + 2t + (e & 1), lane = 4g + t; swizzled tiles 1024-byte aligned, so the dynamic shared
 * memory is over-allocated by 1024 bytes and its base rounded up). Every wgmma batch: wg_fence()
 * first, wg_commit(), wg_wait<N>(), then wg_keep() on its accumulators and A fragments; a tile
 * written by cp.async is read by wgmma only after f2_wait, wg_fence_proxy() and a barrier, and a
 * buffer is refilled only after every warp's wgmmas on it were waited for and a barrier passed.
 * Invariants: T arbitrary (rows past T zero-filled, never stored; their P is exactly 0 in the kv
 * kernel by the mask, in the q kernel by L = +inf); every output element written once.
 */
#include "wgmma.cuh"

#define WGB_HS 64
#define WGB_TILE (64 * WGB_HS * 2) /* bytes of one swizzled 64-row tile: 8 KB */
/* dynamic shared memory: 1024 bytes of alignment slack, 2 resident tiles (kv: K, V; q: Q, dO),
 * 2 buffers x 2 streamed tiles (kv: Q, dO; q: K, V); the kv kernel also 2 buffers x (L, D) x 64
 * floats (the q kernel keeps its rows' L, D in registers) */
#define WGB_SMEM_Q (1024 + 6 * WGB_TILE)
#define WGB_SMEM_KV (WGB_SMEM_Q + 4 * 64 * 4)

/* L (raw, natural log) and D of rows row0..row0+63 into shared floats s[0..63], s[64..127]
 * (cp.async, zeros past T: the kv kernel masks those queries) */
static __device__ __forceinline__ void wgb_load_ld(uint32_t s, const float* lrow,
                                                   const float* drow, int row0, int T) {
  const int t = row0 + (threadIdx.x & 63);
  const bool ok = t < T;
  const float* src = (threadIdx.x < 64 ? lrow : drow) + (ok ? t : 0);
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s + 4 * threadIdx.x),
               "l"(src), "r"(ok ? 4 : 0));
}

/* one 64-key tile (blockIdx.y: low key tiles see the most query tiles, so they go first) of head
 * blockIdx.x; dK, dV written once */
__global__ void __launch_bounds__(128, 2)
zpc_wg_bwd_kv_kernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                     const float* Dv, int T, int NH, float scale_log2, float scale) {
  extern __shared__ __align__(128) unsigned char wgb_sm[];
  const uint32_t sb = wg_smem_base(wgb_sm); /* swizzled tiles: 1024-aligned */
  const unsigned char* gb = wgb_sm + (sb - wg_smem(wgb_sm));
  const uint32_t ks = sb, vs = sb + WGB_TILE; /* resident K, V (read once by ldmatrix) */
  const uint32_t qd0 = sb + 2 * WGB_TILE;     /* buffer x: Q at qd0 + 2x TILE, dO + TILE */
  const uint32_t ld0 = sb + 6 * WGB_TILE;     /* buffer x: L at ld0 + 512x, D + 256 */

  const int C = NH * WGB_HS;
  const int nq = (T + 63) / 64;
  const int j = (int)blockIdx.y, k0 = 64 * j;
  const F2Head hd = f2_head_bh(qkv, T, NH, WGB_HS, (int)blockIdx.x);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const bf16* dobase = dout + (size_t)hd.bb * T * C + hd.h * WGB_HS;
  const float* lrow = lse + (size_t)hd.bh * T;
  const float* drow = Dv + (size_t)hd.bh * T;

  /* K, V and query tile j (Q, dO, L, D) as the first cp.async group */
  wg_load_swz(ks, hd.k, hd.stride, k0, T);
  wg_load_swz(vs, hd.v, hd.stride, k0, T);
  wg_load_swz(qd0, hd.q, hd.stride, k0, T);
  wg_load_swz(qd0 + WGB_TILE, dobase, C, k0, T);
  wgb_load_ld(ld0, lrow, drow, k0, T);
  f2_commit();

  float dk[32], dv[32], s[32], dp[32];
  uint32_t kf[4][4], vf[4][4], pa[4][4], sa[4][4];
#pragma unroll
  for (int i = 0; i < 32; i++) dk[i] = dv[i] = 0.0f;
  const int kr = k0 + 16 * warp + g; /* this thread's keys kr, kr + 8 */

  for (int i = j; i < nq; i++) {
    const int x = (i - j) & 1;
    if (i + 1 < nq) { /* buffer x ^ 1 was last read by tile i - 1's waited wgmmas */
      const uint32_t nb = qd0 + (x ^ 1) * 2 * WGB_TILE;
      wg_load_swz(nb, hd.q, hd.stride, 64 * (i + 1), T);
      wg_load_swz(nb + WGB_TILE, dobase, C, 64 * (i + 1), T);
      wgb_load_ld(ld0 + (x ^ 1) * 512, lrow, drow, 64 * (i + 1), T);
      f2_commit();
    }
    wg_tile_ready(i + 1 < nq);
    if (i == j) { /* K, V fragments of this warp's 16 keys, once */
      wg_afrag(kf, ks, warp, lane);
      wg_afrag(vf, vs, warp, lane);
    }
    const uint32_t qs = qd0 + x * 2 * WGB_TILE, dos = qs + WGB_TILE;
    const float* Ls = (const float*)(gb + 6 * WGB_TILE + 512 * x);
    const float* Ds = Ls + 64;
    const int q0 = 64 * i;

    /* S^T = K Q^T (group 1), dP^T = V dO^T (group 2) */
    wg_fence();
    wg_prod<0>(s, kf, qs);
    wg_commit();
    wg_prod<0>(dp, vf, dos);
    wg_commit();
    wg_wait<1>();
    wg_keep(s);
    wg_keep4(kf);

    /* P^T: column (query) q0 + 8nt + 2t4 + (e & 1), row (key) kr + 8 (e >> 1); masked on the
     * diagonal tile (query < key) and on the tile holding T (query >= T) */
    const bool edge = i == j || q0 + 64 > T;
#pragma unroll
    for (int nt = 0; nt < 8; nt++) {
      const float2 lq = *(const float2*)(Ls + 8 * nt + 2 * t4);
      const float nl0 = -lq.x * F2_LOG2E, nl1 = -lq.y * F2_LOG2E;
#pragma unroll
      for (int e = 0; e < 4; e++) {
        float pv = f2_ex2(fmaf(s[4 * nt + e], scale_log2, (e & 1) ? nl1 : nl0));
        if (edge) {
          const int q = q0 + 8 * nt + 2 * t4 + (e & 1);
          if (q < kr + 8 * (e >> 1) || q >= T) pv = 0.0f;
        }
        s[4 * nt + e] = pv;
      }
    }
    wg_pack(pa, s);

    /* dV += P^T dO (group 3), while dS^T is computed */
    wg_fence();
    wg_acc<1>(dv, pa, dos);
    wg_commit();
    wg_wait<1>(); /* groups 1, 2 done */
    wg_keep(dp);
    wg_keep4(vf);

    /* dS^T = P^T (dP^T - D) */
#pragma unroll
    for (int nt = 0; nt < 8; nt++) {
      const float2 dq = *(const float2*)(Ds + 8 * nt + 2 * t4);
#pragma unroll
      for (int e = 0; e < 4; e++)
        dp[4 * nt + e] = s[4 * nt + e] * (dp[4 * nt + e] - ((e & 1) ? dq.y : dq.x));
    }
    wg_pack(sa, dp);

    /* dK += dS^T Q (group 4) */
    wg_fence();
    wg_acc<1>(dk, sa, qs);
    wg_commit();
    wg_wait<0>();
    wg_keep(dv);
    wg_keep(dk);
    wg_keep4(pa);
    wg_keep4(sa);
    __syncthreads(); /* every warp's wgmmas on buffer x are done before it is refilled */
  }

  bf16* dkb = dqkv + (size_t)hd.bb * T * hd.stride + C + hd.h * WGB_HS;
  wg_store(dkb, hd.stride, k0 + 16 * warp, T, dk, scale, scale, lane);
  wg_store(dkb + C, hd.stride, k0 + 16 * warp, T, dv, 1.0f, 1.0f, lane);
}

/* one 64-query tile (nq - 1 - blockIdx.y: late tiles see the most key tiles, so they go first)
 * of head blockIdx.x; dQ written once */
__global__ void __launch_bounds__(128, 3)
zpc_wg_bwd_q_kernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                    const float* Dv, int T, int NH, float scale_log2, float scale) {
  extern __shared__ __align__(128) unsigned char wgb_sm[];
  const uint32_t sb = wg_smem_base(wgb_sm);
  const uint32_t qs = sb, dos = sb + WGB_TILE; /* resident Q, dO (read once by ldmatrix) */
  const uint32_t kv0 = sb + 2 * WGB_TILE;      /* buffer x: K at kv0 + 2x TILE, V + TILE */

  const int C = NH * WGB_HS;
  const int nq = (T + 63) / 64;
  const int i = nq - 1 - (int)blockIdx.y, q0 = 64 * i;
  const F2Head hd = f2_head_bh(qkv, T, NH, WGB_HS, (int)blockIdx.x);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const bf16* dobase = dout + (size_t)hd.bb * T * C + hd.h * WGB_HS;

  /* Q, dO and key tile 0 as the first cp.async group */
  wg_load_swz(qs, hd.q, hd.stride, q0, T);
  wg_load_swz(dos, dobase, C, q0, T);
  wg_load_swz(kv0, hd.k, hd.stride, 0, T);
  wg_load_swz(kv0 + WGB_TILE, hd.v, hd.stride, 0, T);
  f2_commit();

  const int qr = 16 * warp + g; /* this thread's local query rows qr, qr + 8 */
  float nl[2], dr[2];           /* -L log2e (-inf past T: P = 0 there) and D per row */
#pragma unroll
  for (int hh = 0; hh < 2; hh++) {
    const int t = q0 + qr + 8 * hh;
    nl[hh] = t < T ? -lse[(size_t)hd.bh * T + t] * F2_LOG2E : -INFINITY;
    dr[hh] = t < T ? Dv[(size_t)hd.bh * T + t] : 0.0f;
  }
  float dq[32], s[32], dp[32];
  uint32_t qf[4][4], of[4][4], sa[4][4];
#pragma unroll
  for (int e = 0; e < 32; e++) dq[e] = 0.0f;

  for (int j = 0; j <= i; j++) {
    const int x = j & 1;
    if (j + 1 <= i) { /* buffer x ^ 1 was last read by tile j - 1's waited wgmmas */
      const uint32_t nb = kv0 + (x ^ 1) * 2 * WGB_TILE;
      wg_load_swz(nb, hd.k, hd.stride, 64 * (j + 1), T);
      wg_load_swz(nb + WGB_TILE, hd.v, hd.stride, 64 * (j + 1), T);
      f2_commit();
    }
    wg_tile_ready(j + 1 <= i);
    if (j == 0) { /* Q, dO fragments of this warp's 16 rows, once */
      wg_afrag(qf, qs, warp, lane);
      wg_afrag(of, dos, warp, lane);
    }
    const uint32_t ks = kv0 + x * 2 * WGB_TILE, vs = ks + WGB_TILE;

    /* S = Q K^T (group 1), dP = dO V^T (group 2) */
    wg_fence();
    wg_prod<0>(s, qf, ks);
    wg_commit();
    wg_prod<0>(dp, of, vs);
    wg_commit();
    wg_wait<1>();
    wg_keep(s);
    wg_keep4(qf);

    /* P: row qr + 8 (e >> 1), column (key) 8nt + 2t4 + (e & 1); the diagonal tile (k0 == q0)
     * masks key > query */
    const bool diag = j == i;
#pragma unroll
    for (int e = 0; e < 32; e++) {
      float pv = f2_ex2(fmaf(s[e], scale_log2, nl[(e >> 1) & 1]));
      if (diag && 8 * (e >> 2) + 2 * t4 + (e & 1) > qr + 8 * ((e >> 1) & 1)) pv = 0.0f;
      s[e] = pv;
    }
    wg_wait<0>();
    wg_keep(dp);
    wg_keep4(of);

    /* dS = P (dP - D), dQ += dS K (B = the K tile MN-major) */
#pragma unroll
    for (int e = 0; e < 32; e++) dp[e] = s[e] * (dp[e] - dr[(e >> 1) & 1]);
    wg_pack(sa, dp);
    wg_fence();
    wg_acc<1>(dq, sa, ks);
    wg_commit();
    wg_wait<0>();
    wg_keep(dq);
    wg_keep4(sa);
    __syncthreads(); /* every warp's wgmmas on buffer x are done before it is refilled */
  }

  wg_store(dqkv + (size_t)hd.bb * T * hd.stride + hd.h * WGB_HS, hd.stride, q0 + 16 * warp, T,
            dq, scale, scale, lane);
}

int zpc_wg_bwd(zp_backend* b, void* dqkv, const void* dout, const void* qkv, const void* out,
               const void* aux, int B, int T, int NH) {
  void* Dv = NULL;
  int rc = zpc_fa2_prep_D(b, &Dv, dout, out, B, T, NH, WGB_HS);
  if (rc) return rc;
  ZPC_CUDA(b, cudaFuncSetAttribute(zpc_wg_bwd_kv_kernel,
                                   cudaFuncAttributeMaxDynamicSharedMemorySize, WGB_SMEM_KV));
  ZPC_CUDA(b, cudaFuncSetAttribute(zpc_wg_bwd_q_kernel,
                                   cudaFuncAttributeMaxDynamicSharedMemorySize, WGB_SMEM_Q));
  const float scale = 1.0f / sqrtf((float)WGB_HS);
  const dim3 grid(B * NH, (T + 63) / 64);
  zpc_wg_bwd_kv_kernel<<<grid, 128, WGB_SMEM_KV, b->stream>>>(
      (bf16*)dqkv, (const bf16*)dout, (const bf16*)qkv, (const float*)aux, (const float*)Dv, T,
      NH, scale * F2_LOG2E, scale);
  ZPC_LAUNCHED(b, "wg_bwd_kv");
  zpc_wg_bwd_q_kernel<<<grid, 128, WGB_SMEM_Q, b->stream>>>(
      (bf16*)dqkv, (const bf16*)dout, (const bf16*)qkv, (const float*)aux, (const float*)Dv, T,
      NH, scale * F2_LOG2E, scale);
  ZPC_LAUNCHED(b, "wg_bwd_q");
  return ZP_OK;
}
