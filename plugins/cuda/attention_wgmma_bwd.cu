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
#include "attention_fa2.cuh"
#include "wgmma.cuh"

#define WGB_HS 64
#define WGB_TILE (64 * WGB_HS * 2) /* bytes of one swizzled 64-row tile: 8 KB */
/* dynamic shared memory: 1024 bytes of alignment slack, 2 resident tiles (kv: K, V; q: Q, dO),
 * 2 buffers x 2 streamed tiles (kv: Q, dO; q: K, V); the kv kernel also 2 buffers x (L, D) x 64
 * floats (the q kernel keeps its rows' L, D in registers) */
#define WGB_SMEM_Q (1024 + 6 * WGB_TILE)
#define WGB_SMEM_KV (WGB_SMEM_Q + 4 * 64 * 4)

/* rows row0.. of a head slice (row stride `stride` elements) into a 128-byte-swizzled tile at
 * shared address s (cp.async, zero-filled past T); 8 16-byte chunks per row, 128 threads */
static __device__ __forceinline__ void wgb_load_swz(uint32_t s, const bf16* base, size_t stride,
                                                    int row0, int T) {
#pragma unroll
  for (int idx = threadIdx.x; idx < 64 * 8; idx += 128) {
    const int r = idx >> 3, c = idx & 7, t = row0 + r;
    const bool ok = t < T;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s + wg_swz(r, c)),
                 "l"(base + (size_t)(ok ? t : 0) * stride + c * 8), "r"(ok ? 16 : 0));
  }
}

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

/* the A fragments a[kk] (k16 steps kk = 0..3 over the 64 columns) of warp w's 16 rows 16w.. of a
 * swizzled tile at shared address tile: ldmatrix x4, lane row 16w + (lane & 15), 16-byte chunk
 * 2kk + (lane >> 4) (f2_at_a's addressing through the swizzle) */
static __device__ __forceinline__ void wgb_afrag(uint32_t (&a)[4][4], uint32_t tile, int warp,
                                                 int lane) {
  const int r = 16 * warp + (lane & 15);
#pragma unroll
  for (int kk = 0; kk < 4; kk++)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(a[kk][0]), "=r"(a[kk][1]), "=r"(a[kk][2]), "=r"(a[kk][3])
                 : "r"(tile + wg_swz(r, 2 * kk + (lane >> 4))));
}

/* wg_mma64 with scale-d = 0: d = A . B (the accumulator's old contents ignored), the first k16
 * step of a product, so the accumulator needs no zeroing */
template <int TB>
__device__ __forceinline__ void wgb_mma64_first(float (&d)[32], const uint32_t (&a)[4],
                                                uint64_t desc) {
#ifdef ZPC_WGMMA_DEVICE
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 0, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "{%32, %33, %34, %35}, %36, p, 1, 1, %37;\n}\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3]), "=f"(d[4]), "=f"(d[5]), "=f"(d[6]),
        "=f"(d[7]), "=f"(d[8]), "=f"(d[9]), "=f"(d[10]), "=f"(d[11]), "=f"(d[12]), "=f"(d[13]),
        "=f"(d[14]), "=f"(d[15]), "=f"(d[16]), "=f"(d[17]), "=f"(d[18]), "=f"(d[19]),
        "=f"(d[20]), "=f"(d[21]), "=f"(d[22]), "=f"(d[23]), "=f"(d[24]), "=f"(d[25]),
        "=f"(d[26]), "=f"(d[27]), "=f"(d[28]), "=f"(d[29]), "=f"(d[30]), "=f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "n"(TB));
#else
#pragma unroll
  for (int i = 0; i < 32; i++) d[i] = 0.0f;
#endif
}

/* d = A . B over the 64-deep product: 4 k16 steps, A = a[kk], B a swizzled tile at shared address
 * tile; TB = 0: B K-major (B[n][k] = tile row n), 1: MN-major (B[k][n] = tile row k) */
template <int TB>
__device__ __forceinline__ void wgb_prod(float (&d)[32], const uint32_t (&a)[4][4], uint32_t tile) {
  wgb_mma64_first<TB>(d, a[0], wg_desc(tile));
#pragma unroll
  for (int kk = 1; kk < 4; kk++) wg_mma64<TB>(d, a[kk], wg_desc(tile + (TB ? 2048 : 32) * kk));
}
/* d += A . B, same operands */
template <int TB>
__device__ __forceinline__ void wgb_acc(float (&d)[32], const uint32_t (&a)[4][4], uint32_t tile) {
#pragma unroll
  for (int kk = 0; kk < 4; kk++) wg_mma64<TB>(d, a[kk], wg_desc(tile + (TB ? 2048 : 32) * kk));
}
__device__ __forceinline__ void wgb_keep4(uint32_t (&a)[4][4]) {
#pragma unroll
  for (int kk = 0; kk < 4; kk++) wg_keep(a[kk]);
}
/* an accumulator (64 x 64, fp32, rounded to bf16 here) as the A fragments of its 4 k16 steps: n8
 * tiles 2kk, 2kk + 1 are k16 step kk (the fa2 forward's P packing) */
__device__ __forceinline__ void wgb_pack(uint32_t (&a)[4][4], const float (&s)[32]) {
#pragma unroll
  for (int kk = 0; kk < 4; kk++) {
    a[kk][0] = f2_pack(s[8 * kk + 0], s[8 * kk + 1]);
    a[kk][1] = f2_pack(s[8 * kk + 2], s[8 * kk + 3]);
    a[kk][2] = f2_pack(s[8 * kk + 4], s[8 * kk + 5]);
    a[kk][3] = f2_pack(s[8 * kk + 6], s[8 * kk + 7]);
  }
}
/* 16 rows (row0 + g, + 8) of an accumulator, x mul, to bf16 (f2_store's [n8 tile][4] view) */
__device__ __forceinline__ void wgb_store(bf16* base, size_t stride, int row0, int T,
                                          const float (&d)[32], float mul, int lane) {
  float t[8][4];
#pragma unroll
  for (int i = 0; i < 32; i++) t[i >> 2][i & 3] = d[i];
  f2_store<WGB_HS>(base, stride, row0, T, t, mul, mul, lane);
}

/* one 64-key tile (blockIdx.y: low key tiles see the most query tiles, so they go first) of head
 * blockIdx.x; dK, dV written once */
__global__ void __launch_bounds__(128, 2)
zpc_wg_bwd_kv_kernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                     const float* Dv, int T, int NH, float scale_log2, float scale) {
  extern __shared__ __align__(128) unsigned char wgb_sm[];
  const uint32_t sb = (wg_smem(wgb_sm) + 1023u) & ~1023u; /* swizzled tiles: 1024-aligned */
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
  wgb_load_swz(ks, hd.k, hd.stride, k0, T);
  wgb_load_swz(vs, hd.v, hd.stride, k0, T);
  wgb_load_swz(qd0, hd.q, hd.stride, k0, T);
  wgb_load_swz(qd0 + WGB_TILE, dobase, C, k0, T);
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
      wgb_load_swz(nb, hd.q, hd.stride, 64 * (i + 1), T);
      wgb_load_swz(nb + WGB_TILE, dobase, C, 64 * (i + 1), T);
      wgb_load_ld(ld0 + (x ^ 1) * 512, lrow, drow, 64 * (i + 1), T);
      f2_commit();
      f2_wait<1>();
    } else {
      f2_wait<0>();
    }
    wg_fence_proxy(); /* this thread's cp.async writes, visible to the async proxy */
    __syncthreads();
    if (i == j) { /* K, V fragments of this warp's 16 keys, once */
      wgb_afrag(kf, ks, warp, lane);
      wgb_afrag(vf, vs, warp, lane);
    }
    const uint32_t qs = qd0 + x * 2 * WGB_TILE, dos = qs + WGB_TILE;
    const float* Ls = (const float*)(gb + 6 * WGB_TILE + 512 * x);
    const float* Ds = Ls + 64;
    const int q0 = 64 * i;

    /* S^T = K Q^T (group 1), dP^T = V dO^T (group 2) */
    wg_fence();
    wgb_prod<0>(s, kf, qs);
    wg_commit();
    wgb_prod<0>(dp, vf, dos);
    wg_commit();
    wg_wait<1>();
    wg_keep(s);
    wgb_keep4(kf);

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
    wgb_pack(pa, s);

    /* dV += P^T dO (group 3), while dS^T is computed */
    wg_fence();
    wgb_acc<1>(dv, pa, dos);
    wg_commit();
    wg_wait<1>(); /* groups 1, 2 done */
    wg_keep(dp);
    wgb_keep4(vf);

    /* dS^T = P^T (dP^T - D) */
#pragma unroll
    for (int nt = 0; nt < 8; nt++) {
      const float2 dq = *(const float2*)(Ds + 8 * nt + 2 * t4);
#pragma unroll
      for (int e = 0; e < 4; e++)
        dp[4 * nt + e] = s[4 * nt + e] * (dp[4 * nt + e] - ((e & 1) ? dq.y : dq.x));
    }
    wgb_pack(sa, dp);

    /* dK += dS^T Q (group 4) */
    wg_fence();
    wgb_acc<1>(dk, sa, qs);
    wg_commit();
    wg_wait<0>();
    wg_keep(dv);
    wg_keep(dk);
    wgb_keep4(pa);
    wgb_keep4(sa);
    __syncthreads(); /* every warp's wgmmas on buffer x are done before it is refilled */
  }

  bf16* dkb = dqkv + (size_t)hd.bb * T * hd.stride + C + hd.h * WGB_HS;
  wgb_store(dkb, hd.stride, k0 + 16 * warp, T, dk, scale, lane);
  wgb_store(dkb + C, hd.stride, k0 + 16 * warp, T, dv, 1.0f, lane);
}

/* one 64-query tile (nq - 1 - blockIdx.y: late tiles see the most key tiles, so they go first)
 * of head blockIdx.x; dQ written once */
__global__ void __launch_bounds__(128, 3)
zpc_wg_bwd_q_kernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                    const float* Dv, int T, int NH, float scale_log2, float scale) {
  extern __shared__ __align__(128) unsigned char wgb_sm[];
  const uint32_t sb = (wg_smem(wgb_sm) + 1023u) & ~1023u;
  const uint32_t qs = sb, dos = sb + WGB_TILE; /* resident Q, dO (read once by ldmatrix) */
  const uint32_t kv0 = sb + 2 * WGB_TILE;      /* buffer x: K at kv0 + 2x TILE, V + TILE */

  const int C = NH * WGB_HS;
  const int nq = (T + 63) / 64;
  const int i = nq - 1 - (int)blockIdx.y, q0 = 64 * i;
  const F2Head hd = f2_head_bh(qkv, T, NH, WGB_HS, (int)blockIdx.x);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const bf16* dobase = dout + (size_t)hd.bb * T * C + hd.h * WGB_HS;

  /* Q, dO and key tile 0 as the first cp.async group */
  wgb_load_swz(qs, hd.q, hd.stride, q0, T);
  wgb_load_swz(dos, dobase, C, q0, T);
  wgb_load_swz(kv0, hd.k, hd.stride, 0, T);
  wgb_load_swz(kv0 + WGB_TILE, hd.v, hd.stride, 0, T);
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
      wgb_load_swz(nb, hd.k, hd.stride, 64 * (j + 1), T);
      wgb_load_swz(nb + WGB_TILE, hd.v, hd.stride, 64 * (j + 1), T);
      f2_commit();
      f2_wait<1>();
    } else {
      f2_wait<0>();
    }
    wg_fence_proxy();
    __syncthreads();
    if (j == 0) { /* Q, dO fragments of this warp's 16 rows, once */
      wgb_afrag(qf, qs, warp, lane);
      wgb_afrag(of, dos, warp, lane);
    }
    const uint32_t ks = kv0 + x * 2 * WGB_TILE, vs = ks + WGB_TILE;

    /* S = Q K^T (group 1), dP = dO V^T (group 2) */
    wg_fence();
    wgb_prod<0>(s, qf, ks);
    wg_commit();
    wgb_prod<0>(dp, of, vs);
    wg_commit();
    wg_wait<1>();
    wg_keep(s);
    wgb_keep4(qf);

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
    wgb_keep4(of);

    /* dS = P (dP - D), dQ += dS K (B = the K tile MN-major) */
#pragma unroll
    for (int e = 0; e < 32; e++) dp[e] = s[e] * (dp[e] - dr[(e >> 1) & 1]);
    wgb_pack(sa, dp);
    wg_fence();
    wgb_acc<1>(dq, sa, ks);
    wg_commit();
    wg_wait<0>();
    wg_keep(dq);
    wgb_keep4(sa);
    __syncthreads(); /* every warp's wgmmas on buffer x are done before it is refilled */
  }

  wgb_store(dqkv + (size_t)hd.bb * T * hd.stride + hd.h * WGB_HS, hd.stride, q0 + 16 * warp, T,
            dq, scale, lane);
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
