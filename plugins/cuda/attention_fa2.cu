/* attention_fa2.cu: causal attention on mma.sync tensor cores, FlashAttention-2 style
 * (ZP_CUDA_ATTN=fa2; flash selects the WMMA kernels of attention_flash.cu, naive the cuBLASLt
 * path of attention.cu; cuda_backend.cu says which one is the default).
 *
 * Same contract as attention_flash.cu, so the two are interchangeable call by call: qkv is
 * [B, T, 3C] (q | k | v, head h at columns h*HS..), out [B, T, C], aux = logsumexp
 * L[b,h,t] = log sum_{j<=t} exp(s_tj) (natural log, s = q.k / sqrt(HS)) as fp32 [B, NH, T].
 *
 * Forward (zpc_fa2_fwdv_kernel; grid (heads, query tiles of 16*MW*NW rows), the heavy late
 * tiles of all heads first; NW warps, warp w owns MW m16 row tiles, and every K / V fragment
 * read from shared memory feeds all MW of them): one pass over 64-key tiles in increasing
 * order with the online softmax in registers: the running max is kept in raw score units and
 * p = ex2.approx.ftz(fma(s, scale_log2, -max * scale_log2)); S and P never leave registers (the
 * S accumulator fragments of two adjacent n8 tiles are exactly the A fragment of the P.V
 * product); K/V tiles are double-buffered through cp.async (zero-filled past T).
 * Backward, deterministic (no atomics; every output element written once by one thread):
 *   D[t] = sum_d dO[t,d] O[t,d]                                   (prep kernel)
 *   kv kernel, per 64-key tile (warp w: keys 16w..16w+15), over query tiles i >= j:
 *     S^T = K Q^T, P^T = exp(S^T - L), dP^T = V dO^T, dS^T = P^T (dP^T - D),
 *     dV += P^T dO, dK += dS^T Q                      (registers; scaled by 1/sqrt(HS) at the end)
 *   q kernel, per 64-query tile (warp w: rows 16w..), over key tiles j <= i:
 *     S = Q K^T, P, dP = dO V^T, dS, dQ += dS K
 *   (P and dS are recomputed in both kernels: 7 tile products instead of 5, the price of no
 *   atomics.)
 * Variants (chosen at backend creation: ZP_CUDA_FA2_FWD, ZP_CUDA_FA2_BWD; defaults fast and
 * kv2, the fastest in the H100 sweep of docs/perf.md; any fwd variant mixes with any bwd
 * variant, all write and read the same aux; all deterministic, every output element written
 * once; fused adds fp32 partials in a fixed order first; except atomic, a diagnostic):
 *   fwd fast: NW = 4 warps x MW (2 at HS <= 64, 1 at 128) m16 tiles. (It replaced the first
 *     fa2 forward, which scaled, subtracted and called exp2f per score: 144 -> 192 TFLOP/s.)
 *   fwd w8: NW = 8 warps x 1 m16 tile (128 query rows per block, 256 threads, <= 128 registers
 *     at HS <= 64: 2 blocks = 16 warps per SM instead of 8); 184 TFLOP/s on the H100.
 *   bwd base: the kv and q kernels above.
 *   bwd kv2 (HS 32 / 64; base at 128): zpc_fa2_bwd_kv2_kernel, 128 keys per block (warp w: two
 *     m16 key tiles, keys 32w..32w+31) over 32-query tiles, so each Q / dO fragment read from
 *     shared memory feeds two key tiles; then the base q kernel with V2 = true (grid (heads,
 *     tiles), heavy first, ex2.approx.ftz).
 *   bwd fused (HS 32 / 64, ABI 1.4 attention_bwd_ws only: it needs the caller's workspace):
 *     zpc_fa2_bwd_fused_kernel, the kv2 tiling plus dQ = dS K per pair (5 tile products, no q
 *     kernel); the key blocks' dQ partials meet in an fp32 workspace tile per query tile, added
 *     in key-block order under per-warp semaphores (deterministic; the last adder writes bf16).
 *     Its comment has the protocol, the deadlock argument and the prediction. attention_bwd
 *     (no workspace) with fused selected runs kv2; at HS 128 base.
 *   bwd atomic (diagnostic, NOT bitwise deterministic; same rules and workspace as fused):
 *     zpc_fa2_bwd_fused_kernel<HS, true>, the fused kernel with the ordering removed: every key
 *     block adds its dQ partial into the zeroed (cudaMemsetAsync) fp32 dQacc with float atomics,
 *     no semaphores, no waits; then zpc_fa2_bwd_dq_kernel writes dQ (bf16, x 1/sqrt(HS)). The
 *     sum's order depends on timing, so dQ may differ in its last bits from call to call (dK,
 *     dV are still deterministic). It separates the cost of fused's ordering from the rest
 *     (docs/perf.md 17). ATOMIC = false is the fused kernel, unchanged.
 * Needs: HS in {32, 64, 128}; every pointer 16-byte aligned and C % 8 == 0 (zpc_fa2_usable);
 * otherwise the caller uses attention_flash.cu, whose aux has the same meaning.
 * Invariants: 128 threads (256 for w8); fragment layouts are those of mma.m16n8k16 (row.col) and ldmatrix,
 * with lane = 4g + t: C/D regs {0,1} at (row g, cols 2t, 2t+1), {2,3} at row g + 8. Shared
 * tiles have rows of HS + 8 bf16 (a 16-byte pad: ldmatrix rows fall in distinct banks).
 * Masking: key > query gives P = 0; key tiles start at 0, so every row's running max is finite
 * after the first tile and fully masked later tiles add exact zeros. Rows t >= T are zero
 * loaded, never stored; their L reads as +inf in the backward, so their P is exactly 0.
 */
#include "attention_fa2.cuh"

/* ---------------------------------------------------------------- backward */

/* D[b,h,t] = sum_d dO . O over the head's HS columns; HS/8 lanes per (b, t, h), 16-byte loads.
 * SEM (bwd variant fused): also zeroes sem[0 .. nsem) (nsem <= the thread count, which is
 * B*T*NH*HS/8 >= B*NH*ceil(T/32)*4 = the fused variant's semaphore count) */
template <int HS, bool SEM = false>
__global__ void zpc_fa2_bwd_prep_kernel(float* D, const bf16* dout, const bf16* out, int B, int T,
                                        int NH, int* sem, size_t nsem) {
  constexpr int G = HS / 8;
  const size_t gid = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (SEM && gid < nsem) sem[gid] = 0;
  const size_t row = gid / G; /* (b*T + t)*NH + h */
  const int part = (int)(gid % G);
  const bool ok = row < (size_t)B * T * NH;
  float s = 0.0f;
  if (ok) {
    uint4 a = *(const uint4*)(dout + row * HS + part * 8);
    uint4 o = *(const uint4*)(out + row * HS + part * 8);
    const bf16* pa = (const bf16*)&a;
    const bf16* po = (const bf16*)&o;
#pragma unroll
    for (int e = 0; e < 8; e++) s += bf2f(pa[e]) * bf2f(po[e]);
  }
#pragma unroll
  for (int off = G / 2; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off, G);
  if (ok && part == 0) {
    const int h = (int)(row % NH);
    const size_t bt = row / NH;
    const int t = (int)(bt % T);
    const size_t b = bt / T;
    D[(b * NH + h) * T + t] = s;
  }
}

template <int HS> struct F2Bwd {
  static constexpr int LD = HS + 8;
  static constexpr size_t tile = (size_t)F2_BC * LD * 2;
  /* 2 resident tiles, 2 buffers x 2 streamed tiles, 2 buffers x (L, D) x 64 floats */
  static constexpr size_t bytes = 6 * tile + 4 * F2_BC * sizeof(float);
};

/* L (log2 domain, +inf past T) and D of rows row0..row0+63 into s[0..63], s[64..127] */
__device__ __forceinline__ void f2_load_ld(float* s, const float* lse, const float* D, int row0,
                                           int T) {
  const int i = threadIdx.x;
  if (i < F2_BC) {
    const int t = row0 + i;
    s[i] = t < T ? lse[t] * F2_LOG2E : INFINITY;
  } else if (i < 2 * F2_BC) {
    const int t = row0 + i - F2_BC;
    s[i] = t < T ? D[t] : 0.0f;
  }
}

/* one 64-key tile per block; warp w: keys k0 + 16w .. +15; dK, dV written once */
template <int HS>
__global__ void __launch_bounds__(F2_THREADS)
zpc_fa2_bwd_kv_kernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                      const float* Dv, int T, int NH, float scale_log2, float scale) {
  typedef F2Bwd<HS> L;
  constexpr int LD = L::LD;
  extern __shared__ __align__(128) unsigned char f2_sm[];
  bf16* Ks = (bf16*)f2_sm;
  bf16* Vs = Ks + F2_BC * LD;
  bf16* Qb = Vs + F2_BC * LD; /* buffer x: Q at Qb + 2x tiles, dO right after */
  float* LDs = (float*)(f2_sm + 6 * L::tile); /* buffer x at LDs + 128x */

  const int C = NH * HS;
  const int nt_all = (T + F2_BC - 1) / F2_BC;
  const int j = (int)blockIdx.x; /* low key tiles see the most query tiles: first */
  const F2Head hd = f2_head(qkv, T, NH, HS);
  const int bh = hd.bh, bb = hd.bb, h = hd.h;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const int k0 = j * F2_BC;
  const size_t stride = hd.stride;
  const bf16* dobase = dout + (size_t)bb * T * C + h * HS;
  const float* lrow = lse + (size_t)bh * T;
  const float* drow = Dv + (size_t)bh * T;

  f2_load2<HS>(Ks, hd.k, stride, hd.v, stride, k0, T); /* Vs follows Ks */
  f2_load2<HS>(Qb, hd.q, stride, dobase, C, k0, T);
  f2_load_ld(LDs, lrow, drow, k0, T);

  float dk[HS / 8][4], dv[HS / 8][4];
#pragma unroll
  for (int nt = 0; nt < HS / 8; nt++)
#pragma unroll
    for (int e = 0; e < 4; e++) dk[nt][e] = dv[nt][e] = 0.0f;

  const int kr = 16 * warp + g; /* local key rows kr, kr + 8 */
  for (int i = j; i < nt_all; i++) {
    const int x = (i - j) & 1;
    if (i + 1 < nt_all) {
      f2_load2<HS>(Qb + (x ^ 1) * 2 * F2_BC * LD, hd.q, stride, dobase, C, (i + 1) * F2_BC, T);
      f2_load_ld(LDs + (x ^ 1) * 2 * F2_BC, lrow, drow, (i + 1) * F2_BC, T);
      f2_wait<1>();
    } else {
      f2_wait<0>();
    }
    __syncthreads();
    const bf16* Qs = Qb + x * 2 * F2_BC * LD;
    const bf16* dOs = Qs + F2_BC * LD;
    const float* Ls = LDs + x * 2 * F2_BC;
    const float* Ds = Ls + F2_BC;
    const bool diag = i == j;

    float p[8][4], dp[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
      for (int e = 0; e < 4; e++) p[nt][e] = dp[nt][e] = 0.0f;
    f2_abt<HS, LD>(p, Ks, 16 * warp, Qs, lane);   /* S^T */
    f2_abt<HS, LD>(dp, Vs, 16 * warp, dOs, lane); /* dP^T */
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int qc = nt * 8 + 2 * t4 + (e & 1); /* local query column */
        float pv = exp2f(p[nt][e] * scale_log2 - Ls[qc]);
        if (diag && kr + 8 * (e >> 1) > qc) pv = 0.0f;
        p[nt][e] = pv;
        dp[nt][e] = pv * (dp[nt][e] - Ds[qc]); /* dS^T */
      }
    f2_pv<HS, LD>(dv, p, dOs, lane);
    f2_pv<HS, LD>(dk, dp, Qs, lane);
    __syncthreads(); /* buffer x is refilled next iteration */
  }
  bf16* dkb = dqkv + (size_t)bb * T * stride + C + h * HS;
  f2_store<HS>(dkb, stride, k0 + 16 * warp, T, dk, scale, scale, lane);
  f2_store<HS>(dkb + C, stride, k0 + 16 * warp, T, dv, 1.0f, 1.0f, lane);
}

/* one 64-query tile per block; warp w: rows q0 + 16w .. +15; dQ written once.
 * V2 (bwd variant kv2): grid (heads, query tiles) so that the heavy tiles of every head are
 * issued first, and P = ex2.approx.ftz(fma(s, scale_log2, -L)); V2 = false is the base kernel. */
template <int HS, bool V2 = false>
__global__ void __launch_bounds__(F2_THREADS)
zpc_fa2_bwd_q_kernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                     const float* Dv, int T, int NH, float scale_log2, float scale) {
  typedef F2Bwd<HS> L;
  constexpr int LD = L::LD;
  extern __shared__ __align__(128) unsigned char f2_sm[];
  bf16* Qs = (bf16*)f2_sm;
  bf16* dOs = Qs + F2_BC * LD;
  bf16* Kb = dOs + F2_BC * LD; /* buffer x: K at Kb + 2x tiles, V right after */

  const int C = NH * HS;
  const int nq = (T + F2_BC - 1) / F2_BC;
  const int i = nq - 1 - (int)(V2 ? blockIdx.y : blockIdx.x); /* heavy (late) tiles first */
  const F2Head hd = f2_head_bh(qkv, T, NH, HS, (int)(V2 ? blockIdx.x : blockIdx.y));
  const int bh = hd.bh, bb = hd.bb, h = hd.h;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const int q0 = i * F2_BC;
  const size_t stride = hd.stride;
  const bf16* dobase = dout + (size_t)bb * T * C + h * HS;

  f2_load2<HS>(Qs, hd.q, stride, dobase, C, q0, T); /* dOs follows Qs */
  f2_load2<HS>(Kb, hd.k, stride, hd.v, stride, 0, T);

  const int qr = 16 * warp + g; /* local query rows qr, qr + 8 */
  float lr[2], dr[2];
#pragma unroll
  for (int hh = 0; hh < 2; hh++) {
    const int t = q0 + qr + 8 * hh;
    lr[hh] = t < T ? lse[(size_t)bh * T + t] * F2_LOG2E : INFINITY;
    dr[hh] = t < T ? Dv[(size_t)bh * T + t] : 0.0f;
  }
  float dq[HS / 8][4];
#pragma unroll
  for (int nt = 0; nt < HS / 8; nt++) dq[nt][0] = dq[nt][1] = dq[nt][2] = dq[nt][3] = 0.0f;

  for (int j = 0; j <= i; j++) {
    const int x = j & 1;
    if (j + 1 <= i) {
      f2_load2<HS>(Kb + (x ^ 1) * 2 * F2_BC * LD, hd.k, stride, hd.v, stride, (j + 1) * F2_BC, T);
      f2_wait<1>();
    } else {
      f2_wait<0>();
    }
    __syncthreads();
    const bf16* Ks = Kb + x * 2 * F2_BC * LD;
    const bf16* Vs = Ks + F2_BC * LD;
    const bool diag = i == j;
    float p[8][4], dp[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
      for (int e = 0; e < 4; e++) p[nt][e] = dp[nt][e] = 0.0f;
    f2_abt<HS, LD>(p, Qs, 16 * warp, Ks, lane);   /* S */
    f2_abt<HS, LD>(dp, dOs, 16 * warp, Vs, lane); /* dP */
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int kc = nt * 8 + 2 * t4 + (e & 1); /* local key column */
        float pv = V2 ? f2_ex2(fmaf(p[nt][e], scale_log2, -lr[e >> 1]))
                      : exp2f(p[nt][e] * scale_log2 - lr[e >> 1]);
        if (diag && kc > qr + 8 * (e >> 1)) pv = 0.0f;
        dp[nt][e] = pv * (dp[nt][e] - dr[e >> 1]); /* dS */
      }
    f2_pv<HS, LD>(dq, dp, Ks, lane);
    __syncthreads();
  }
  f2_store<HS>(dqkv + (size_t)bb * T * stride + h * HS, stride, q0 + 16 * warp, T, dq, scale,
               scale, lane);
}

/* ---------------------------------------------------------------- variants (ZP_CUDA_FA2_FWD,
 * ZP_CUDA_FA2_BWD; see the header comment) */

template <int HS, int MW, int NW> struct F2FwdV {
  static constexpr int LD = HS + 8;
  static constexpr int BR = 16 * MW * NW;
  static constexpr size_t q = (size_t)BR * LD * 2;
  static constexpr size_t kv = (size_t)F2_BC * LD * 2;
  static constexpr size_t bytes = q + 4 * kv; /* Q, then (K, V) x 2 buffers */
};

/* The forward (fast: NW = 4; w8: NW = 8, MW = 1); see the header. Masking only on tiles that
 * cross the diagonal. */
template <int HS, int MW, int NW>
__global__ void __launch_bounds__(NW * 32, (NW == 8 && HS <= 64) ? 2 : 1)
zpc_fa2_fwdv_kernel(bf16* out, float* lse_out, const bf16* qkv, int T, int NH, float scale_log2) {
  typedef F2FwdV<HS, MW, NW> L;
  constexpr int LD = L::LD, BR = L::BR, NT = NW * 32;
  extern __shared__ __align__(128) unsigned char f2_sm[];
  bf16* Qs = (bf16*)f2_sm;
  bf16* Ks0 = (bf16*)(f2_sm + L::q);

  const int C = NH * HS;
  const int nq = (T + BR - 1) / BR;
  const int qt = nq - 1 - (int)blockIdx.y; /* heavy (late) tiles first, over all heads */
  const F2Head hd = f2_head_bh(qkv, T, NH, HS, (int)blockIdx.x);
  const int bh = hd.bh, bb = hd.bb, h = hd.h;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const int q0 = qt * BR;
  const int nk = (min(q0 + BR, T) + F2_BC - 1) / F2_BC; /* key tiles 0..nk-1 */

  f2_loadn<HS, BR, NT>(Qs, hd.q, hd.stride, q0, T); /* committed with K0 / V0 */
  f2_loadn<HS, F2_BC, NT>(Ks0, hd.k, hd.stride, 0, T);
  f2_loadn<HS, F2_BC, NT>(Ks0 + F2_BC * LD, hd.v, hd.stride, 0, T);
  f2_commit();

  float o[MW][HS / 8][4];
  float mrow[MW][2], lrow[MW][2]; /* running max in raw score units; partial sums */
  uint32_t qf[MW][HS / 16][4];
#pragma unroll
  for (int mi = 0; mi < MW; mi++) {
    mrow[mi][0] = mrow[mi][1] = -INFINITY;
    lrow[mi][0] = lrow[mi][1] = 0.0f;
#pragma unroll
    for (int nt = 0; nt < HS / 8; nt++) o[mi][nt][0] = o[mi][nt][1] = o[mi][nt][2] = o[mi][nt][3] = 0.0f;
  }

  for (int j = 0; j < nk; j++) {
    if (j + 1 < nk) {
      bf16* nb = Ks0 + ((j + 1) & 1) * 2 * F2_BC * LD;
      f2_loadn<HS, F2_BC, NT>(nb, hd.k, hd.stride, (j + 1) * F2_BC, T);
      f2_loadn<HS, F2_BC, NT>(nb + F2_BC * LD, hd.v, hd.stride, (j + 1) * F2_BC, T);
      f2_commit();
      f2_wait<1>();
    } else {
      f2_wait<0>();
    }
    __syncthreads();
    const bf16* Ks = Ks0 + (j & 1) * 2 * F2_BC * LD;
    const bf16* Vs = Ks + F2_BC * LD;
    if (j == 0) {
#pragma unroll
      for (int mi = 0; mi < MW; mi++)
#pragma unroll
        for (int kk = 0; kk < HS / 16; kk++)
          f2_ldm4(qf[mi][kk], f2_at_a<LD>(Qs, (warp * MW + mi) * 16, kk * 16, lane));
    }
    const int k0 = j * F2_BC;
    if (k0 <= q0 + (warp + 1) * MW * 16 - 1) { /* warp-uniform causal skip, as in base */
      float s[MW][8][4];
#pragma unroll
      for (int mi = 0; mi < MW; mi++)
#pragma unroll
        for (int nt = 0; nt < 8; nt++) s[mi][nt][0] = s[mi][nt][1] = s[mi][nt][2] = s[mi][nt][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < HS / 16; kk++)
#pragma unroll
        for (int np = 0; np < 4; np++) {
          uint32_t b[4];
          f2_ldm4(b, f2_at_bn<LD>(Ks, np * 16, kk * 16, lane));
#pragma unroll
          for (int mi = 0; mi < MW; mi++) {
            f2_mma(s[mi][2 * np], qf[mi][kk], b[0], b[1]);
            f2_mma(s[mi][2 * np + 1], qf[mi][kk], b[2], b[3]);
          }
        }
#pragma unroll
      for (int mi = 0; mi < MW; mi++) {
        const int r0 = q0 + (warp * MW + mi) * 16;
        if (k0 + F2_BC - 1 > r0) { /* crosses the diagonal: mask key > query to -inf */
#pragma unroll
          for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++)
              if (k0 + nt * 8 + 2 * t4 + (e & 1) > r0 + g + 8 * (e >> 1)) s[mi][nt][e] = -INFINITY;
        }
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
          mx[0] = fmaxf(mx[0], fmaxf(s[mi][nt][0], s[mi][nt][1]));
          mx[1] = fmaxf(mx[1], fmaxf(s[mi][nt][2], s[mi][nt][3]));
        }
        float alpha[2], ms[2];
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
          mx[hh] = fmaxf(mx[hh], __shfl_xor_sync(0xffffffffu, mx[hh], 1));
          mx[hh] = fmaxf(mx[hh], __shfl_xor_sync(0xffffffffu, mx[hh], 2));
          /* finite from tile 0 on (key 0 is unmasked for every row): no -inf - -inf */
          const float mn = fmaxf(mrow[mi][hh], mx[hh]);
          alpha[hh] = f2_ex2((mrow[mi][hh] - mn) * scale_log2); /* 0 on the first tile */
          mrow[mi][hh] = mn;
          ms[hh] = -mn * scale_log2;
          lrow[mi][hh] *= alpha[hh];
        }
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
          for (int e = 0; e < 4; e++) {
            const float p = f2_ex2(fmaf(s[mi][nt][e], scale_log2, ms[e >> 1]));
            s[mi][nt][e] = p;
            lrow[mi][e >> 1] += p;
          }
#pragma unroll
        for (int nt = 0; nt < HS / 8; nt++) {
          o[mi][nt][0] *= alpha[0];
          o[mi][nt][1] *= alpha[0];
          o[mi][nt][2] *= alpha[1];
          o[mi][nt][3] *= alpha[1];
        }
      }
#pragma unroll
      for (int kk = 0; kk < 4; kk++) {
        uint32_t a[MW][4];
#pragma unroll
        for (int mi = 0; mi < MW; mi++) {
          a[mi][0] = f2_pack(s[mi][2 * kk][0], s[mi][2 * kk][1]);
          a[mi][1] = f2_pack(s[mi][2 * kk][2], s[mi][2 * kk][3]);
          a[mi][2] = f2_pack(s[mi][2 * kk + 1][0], s[mi][2 * kk + 1][1]);
          a[mi][3] = f2_pack(s[mi][2 * kk + 1][2], s[mi][2 * kk + 1][3]);
        }
#pragma unroll
        for (int dp = 0; dp < HS / 16; dp++) {
          uint32_t b[4];
          f2_ldm4t(b, f2_at_a<LD>(Vs, kk * 16, dp * 16, lane));
#pragma unroll
          for (int mi = 0; mi < MW; mi++) {
            f2_mma(o[mi][2 * dp], a[mi], b[0], b[1]);
            f2_mma(o[mi][2 * dp + 1], a[mi], b[2], b[3]);
          }
        }
      }
    }
    __syncthreads(); /* every warp is done with buffer j & 1 before it is refilled */
  }

  bf16* obase = out + (size_t)bb * T * C + h * HS;
#pragma unroll
  for (int mi = 0; mi < MW; mi++) {
    const int r0 = q0 + (warp * MW + mi) * 16;
    float inv[2];
#pragma unroll
    for (int hh = 0; hh < 2; hh++) {
      float l = lrow[mi][hh];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      inv[hh] = 1.0f / l;
      const int row = r0 + g + 8 * hh;
      if (t4 == 0 && row < T)
        lse_out[(size_t)bh * T + row] = (mrow[mi][hh] * scale_log2 + log2f(l)) * F2_LN2;
    }
    f2_store<HS>(obase, C, r0, T, o[mi], inv[0], inv[1], lane);
  }
}

/* Backward variant kv2, kv kernel: 128 keys per block, warp w owns keys k0 + 32w .. +31 as two
 * m16 tiles, query tiles of 32 rows (double-buffered Q / dO / L / D). Every B fragment (Q, dO
 * rows for S^T / dP^T; dO, Q columns for dV / dK) read from shared memory feeds both m16 key
 * tiles, so shared-memory bytes per mma drop by ~1.4x against base (the K / V A fragments are
 * still read per tile: holding them would not fit in registers), and each Q / dO tile is
 * loaded once per 128 keys instead of once per 64. Grid (heads, key blocks): the heavy low key
 * blocks of every head go first. HS 32 and 64 (at 128 the accumulators cannot fit). */
#define F2_KB 128 /* keys per kv2 block */
#define F2_QB 32  /* queries per kv2 tile */
template <int HS> struct F2BwdKV2 {
  static constexpr int LD = HS + 8;
  static constexpr size_t kt = (size_t)F2_KB * LD * 2; /* K or V */
  static constexpr size_t qt = (size_t)F2_QB * LD * 2; /* Q or dO */
  /* K, V resident; 2 buffers x (Q, dO); 2 buffers x (L, D) x 32 floats */
  static constexpr size_t bytes = 2 * kt + 4 * qt + 4 * F2_QB * sizeof(float);
};

/* The per-warp tile arithmetic that the kv2 and fused backward kernels share: one 32-query
 * tile (Qs, dOs in shared memory, row pitch LD) against this warp's 32 keys (two m16 tiles from
 * row kw of Ks, Vs). Macros rather than inline functions: they expand to the very code the
 * kernels had written in place, so the compiled kernels are byte for byte the ones measured and
 * checked (an inline-function version changed kv2's SASS). They use the kernel's names: Ks, Vs,
 * Qs, dOs, Ls, Ds, LD, HS, kw, lane, g, t4, k0, q0, diag, scale_log2 (F2_BWD_STAGE: Qb, x,
 * hd, stride, dobase, C, T, LDs, lrow, drow). */

/* Query tile n (Q, dO rows n*F2_QB .., and its L, D) into staging buffer x ^ 1 (asynchronous
 * loads, committed; the L / D stores by the first 2*F2_QB threads) */
#define F2_BWD_STAGE(n)                                                                            \
  do {                                                                                             \
    bf16* nb = Qb + (x ^ 1) * 2 * F2_QB * LD;                                                      \
    f2_load<HS, F2_QB>(nb, hd.q, stride, (n) * F2_QB, T);                                          \
    f2_load<HS, F2_QB>(nb + F2_QB * LD, dobase, C, (n) * F2_QB, T);                                \
    f2_commit();                                                                                   \
    if (threadIdx.x < 2 * F2_QB) {                                                                 \
      const int r = threadIdx.x & (F2_QB - 1), t = (n) * F2_QB + r;                                \
      LDs[(x ^ 1) * 2 * F2_QB + threadIdx.x] =                                                     \
          threadIdx.x < F2_QB ? (t < T ? lrow[t] * F2_LOG2E : INFINITY) : (t < T ? drow[t] : 0.0f);\
    }                                                                                              \
  } while (0)

/* S^T = K Q^T, dP^T = V dO^T into p, dp (zeroed first): each Q / dO fragment feeds both key tiles */
#define F2_BWD_SDP(p, dp) \
  do { \
_Pragma("unroll")                                                      \
  for (int mi = 0; mi < 2; mi++)                                       \
_Pragma("unroll")                                                      \
    for (int nt = 0; nt < 4; nt++)                                     \
_Pragma("unroll")                                                      \
      for (int e = 0; e < 4; e++) p[mi][nt][e] = dp[mi][nt][e] = 0.0f; \
_Pragma("unroll")                                                      \
  for (int kk = 0; kk < HS / 16; kk++) {                               \
    uint32_t ka[2][4], va[2][4];                                       \
_Pragma("unroll")                                                      \
    for (int mi = 0; mi < 2; mi++) {                                   \
      f2_ldm4(ka[mi], f2_at_a<LD>(Ks, kw + 16 * mi, kk * 16, lane));   \
      f2_ldm4(va[mi], f2_at_a<LD>(Vs, kw + 16 * mi, kk * 16, lane));   \
    }                                                                  \
_Pragma("unroll")                                                      \
    for (int np = 0; np < 2; np++) {                                   \
      uint32_t b[4];                                                   \
      f2_ldm4(b, f2_at_bn<LD>(Qs, np * 16, kk * 16, lane));            \
_Pragma("unroll")                                                      \
      for (int mi = 0; mi < 2; mi++) {                                 \
        f2_mma(p[mi][2 * np], ka[mi], b[0], b[1]);                     \
        f2_mma(p[mi][2 * np + 1], ka[mi], b[2], b[3]);                 \
      }                                                                \
      f2_ldm4(b, f2_at_bn<LD>(dOs, np * 16, kk * 16, lane));           \
_Pragma("unroll")                                                      \
      for (int mi = 0; mi < 2; mi++) {                                 \
        f2_mma(dp[mi][2 * np], va[mi], b[0], b[1]);                    \
        f2_mma(dp[mi][2 * np + 1], va[mi], b[2], b[3]);                \
      }                                                                \
    }                                                                  \
  }                                                                    \
  } while (0)

/* P^T = exp2(S^T scale_log2 - L), dS^T = P^T (dP^T - D), in place; query column qc = 8nt + 2t4 +
 * (e & 1), key row kw + 16mi + g + 8 (e >> 1); diag: mask keys above queries */
#define F2_BWD_PDS(p, dp) \
  do { \
_Pragma("unroll")                                                                   \
  for (int nt = 0; nt < 4; nt++) {                                                  \
    const float2 lq = *(const float2*)(Ls + nt * 8 + 2 * t4);                       \
    const float2 dq = *(const float2*)(Ds + nt * 8 + 2 * t4);                       \
_Pragma("unroll")                                                                   \
    for (int mi = 0; mi < 2; mi++)                                                  \
_Pragma("unroll")                                                                   \
      for (int e = 0; e < 4; e++) {                                                 \
        const int qc = nt * 8 + 2 * t4 + (e & 1);                                   \
        const int kr = kw + 16 * mi + g + 8 * (e >> 1);                             \
        float pv = f2_ex2(fmaf(p[mi][nt][e], scale_log2, (e & 1) ? -lq.y : -lq.x)); \
        if (diag && k0 + kr > q0 + qc) pv = 0.0f;                                   \
        p[mi][nt][e] = pv;                                                          \
        dp[mi][nt][e] = pv * (dp[mi][nt][e] - ((e & 1) ? dq.y : dq.x));             \
      }                                                                             \
  }                                                                                 \
  } while (0)

/* dV += P^T dO, dK += dS^T Q: k = the tile's 32 queries; each dO / Q fragment feeds both key
 * tiles. A fragments from the accumulators of n8 tiles 2kk, 2kk + 1 (as in f2_pv). */
#define F2_BWD_DVDK(dv, dk, p, dp) \
  do { \
_Pragma("unroll")                                                        \
  for (int kk = 0; kk < F2_QB / 16; kk++) {                              \
    uint32_t pa[2][4], sa[2][4];                                         \
_Pragma("unroll")                                                        \
    for (int mi = 0; mi < 2; mi++) {                                     \
      pa[mi][0] = f2_pack(p[mi][2 * kk][0], p[mi][2 * kk][1]);           \
      pa[mi][1] = f2_pack(p[mi][2 * kk][2], p[mi][2 * kk][3]);           \
      pa[mi][2] = f2_pack(p[mi][2 * kk + 1][0], p[mi][2 * kk + 1][1]);   \
      pa[mi][3] = f2_pack(p[mi][2 * kk + 1][2], p[mi][2 * kk + 1][3]);   \
      sa[mi][0] = f2_pack(dp[mi][2 * kk][0], dp[mi][2 * kk][1]);         \
      sa[mi][1] = f2_pack(dp[mi][2 * kk][2], dp[mi][2 * kk][3]);         \
      sa[mi][2] = f2_pack(dp[mi][2 * kk + 1][0], dp[mi][2 * kk + 1][1]); \
      sa[mi][3] = f2_pack(dp[mi][2 * kk + 1][2], dp[mi][2 * kk + 1][3]); \
    }                                                                    \
_Pragma("unroll")                                                        \
    for (int d = 0; d < HS / 16; d++) {                                  \
      uint32_t b[4];                                                     \
      f2_ldm4t(b, f2_at_a<LD>(dOs, kk * 16, d * 16, lane));              \
_Pragma("unroll")                                                        \
      for (int mi = 0; mi < 2; mi++) {                                   \
        f2_mma(dv[mi][2 * d], pa[mi], b[0], b[1]);                       \
        f2_mma(dv[mi][2 * d + 1], pa[mi], b[2], b[3]);                   \
      }                                                                  \
      f2_ldm4t(b, f2_at_a<LD>(Qs, kk * 16, d * 16, lane));               \
_Pragma("unroll")                                                        \
      for (int mi = 0; mi < 2; mi++) {                                   \
        f2_mma(dk[mi][2 * d], sa[mi], b[0], b[1]);                       \
        f2_mma(dk[mi][2 * d + 1], sa[mi], b[2], b[3]);                   \
      }                                                                  \
    }                                                                    \
  }                                                                      \
  } while (0)

template <int HS>
__global__ void __launch_bounds__(F2_THREADS)
zpc_fa2_bwd_kv2_kernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                       const float* Dv, int T, int NH, float scale_log2, float scale) {
  typedef F2BwdKV2<HS> L;
  constexpr int LD = L::LD;
  extern __shared__ __align__(128) unsigned char f2_sm[];
  bf16* Ks = (bf16*)f2_sm;
  bf16* Vs = Ks + F2_KB * LD;
  bf16* Qb = Vs + F2_KB * LD; /* buffer x: Q at Qb + 2x * F2_QB rows, dO right after */
  float* LDs = (float*)(f2_sm + 2 * L::kt + 4 * L::qt); /* buffer x: L at LDs + 64x, D + 32 */

  const int C = NH * HS;
  const int nqt = (T + F2_QB - 1) / F2_QB;
  const int k0 = (int)blockIdx.y * F2_KB; /* low key blocks see the most query tiles: first */
  const F2Head hd = f2_head_bh(qkv, T, NH, HS, (int)blockIdx.x);
  const int bh = hd.bh, bb = hd.bb, h = hd.h;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const size_t stride = hd.stride;
  const bf16* dobase = dout + (size_t)bb * T * C + h * HS;
  const float* lrow = lse + (size_t)bh * T;
  const float* drow = Dv + (size_t)bh * T;
  const int i0 = k0 / F2_QB; /* first query tile holding a query >= k0 */

  f2_load<HS, F2_KB>(Ks, hd.k, stride, k0, T);
  f2_load<HS, F2_KB>(Vs, hd.v, stride, k0, T);
  f2_load<HS, F2_QB>(Qb, hd.q, stride, i0 * F2_QB, T);
  f2_load<HS, F2_QB>(Qb + F2_QB * LD, dobase, C, i0 * F2_QB, T);
  f2_commit();
  if (threadIdx.x < 2 * F2_QB) { /* L (log2 domain, +inf past T) and D of tile i0 */
    const int r = threadIdx.x & (F2_QB - 1), t = i0 * F2_QB + r;
    LDs[threadIdx.x] = threadIdx.x < F2_QB ? (t < T ? lrow[t] * F2_LOG2E : INFINITY)
                                           : (t < T ? drow[t] : 0.0f);
  }

  float dk[2][HS / 8][4], dv[2][HS / 8][4];
#pragma unroll
  for (int mi = 0; mi < 2; mi++)
#pragma unroll
    for (int nt = 0; nt < HS / 8; nt++)
#pragma unroll
      for (int e = 0; e < 4; e++) dk[mi][nt][e] = dv[mi][nt][e] = 0.0f;

  const int kw = 32 * warp; /* this warp's first local key row */
  for (int i = i0; i < nqt; i++) {
    const int x = (i - i0) & 1;
    if (i + 1 < nqt) {
      F2_BWD_STAGE(i + 1);
      f2_wait<1>();
    } else {
      f2_wait<0>();
    }
    __syncthreads();
    const bf16* Qs = Qb + x * 2 * F2_QB * LD;
    const bf16* dOs = Qs + F2_QB * LD;
    const float* Ls = LDs + x * 2 * F2_QB;
    const float* Ds = Ls + F2_QB;
    const int q0 = i * F2_QB;
    /* warp-uniform: skip when every key of the warp lies above every query of the tile */
    if (k0 + kw <= q0 + F2_QB - 1) {
      const bool diag = k0 + kw + 31 > q0; /* some key > some query: mask */
      float p[2][4][4], dp[2][4][4]; /* [key m tile][query n8 tile][frag] */
      F2_BWD_SDP(p, dp);
      F2_BWD_PDS(p, dp);
      F2_BWD_DVDK(dv, dk, p, dp);
    }
    __syncthreads(); /* buffer x is refilled next iteration */
  }
  bf16* dkb = dqkv + (size_t)bb * T * stride + C + h * HS;
#pragma unroll
  for (int mi = 0; mi < 2; mi++) {
    f2_store<HS>(dkb, stride, k0 + kw + 16 * mi, T, dk[mi], scale, scale, lane);
    f2_store<HS>(dkb + C, stride, k0 + kw + 16 * mi, T, dv[mi], 1.0f, 1.0f, lane);
  }
}

/* Backward variant fused (ZP_CUDA_FA2_BWD=fused, HS 32 / 64, only through attention_bwd_ws): the
 * kv2 tiling (128 keys per block, warp w: keys k0 + 32w .. +31 as two m16 tiles, 32-query tiles
 * double-buffered) with dQ added, so every (key block, query tile) pair costs 5 tile products:
 *   S^T = K Q^T, dP^T = V dO^T (registers), P^T, dS^T = P^T (dP^T - D) (registers),
 *   dV += P^T dO, dK += dS^T Q (registers, as kv2),
 *   dQ_part[32 q][HS] = dS[32 q][128 k] K[128 k][HS]: dS^T goes to shared memory as bf16 [key]
 *     [query] (the same rounded values the dK product uses); ldmatrix.trans of that gives the
 *     A fragments of dS with queries as rows; K (resident, [key][d]) gives the B fragments
 *     through ldmatrix.trans as in f2_pv. Warp w computes rows 16 (w & 1) .., columns
 *     (w >> 1) HS/2 .. of the partial (HS/16 n8 tiles: 16 floats per thread at HS 64, live only
 *     after P / dS are dead, so the kv2 register budget holds), over the key steps that reach
 *     the tile's last query (k0 + 16s <= q0 + 31; the steps past it have dS = 0 and are skipped;
 *     they are exactly the rows of warps that skipped the tile, so stale dS rows are never read).
 * Ordered dQ accumulation (deterministic, no atomics on data): query tile i of head bh receives
 * the partials of key blocks 0, 1, .., i/4 (key block jb covers queries >= 128 jb, so its tiles
 * are i >= 4 jb; the last contributor, i/4, holds the diagonal), added in that order into an fp32
 * tile of the workspace (dQacc, fragment-native layout: each warp's 32 lanes read and write
 * coalesced float2s). Each warp's quarter of the tile has its own semaphore (int, in the
 * workspace; zeroed by the prep kernel on the same stream before this kernel runs): the warp of
 * key block jb waits (lane 0 spins on ld.acquire.gpu, then __syncwarp) until it reads jb, adds
 * the stored partial (read with ld.cg: L2, never a stale L1 line), and either stores the sum
 * (st.cg; every lane __threadfence, __syncwarp, lane 0 st.release.gpu of jb + 1) or, as the last
 * contributor, scales by 1/sqrt(HS) and writes dQ as bf16 into dqkv's q part (no conversion
 * kernel, no fp32 re-read). Key block 0 skips the wait and stores instead of adding, so neither
 * the dQacc nor (past the prep kernel) the semaphore contents on entry matter. Query tiles 0..3
 * have one contributor and never touch the workspace. A warp waits only on the same warp of the
 * same head's previous key block: no block-wide barrier is added for the accumulation.
 * Deadlock freedom: grid (B*NH, key blocks), blockIdx.x = head fastest, so the linear block
 * index is jb * (B*NH) + bh and key block jb - 1 of a head has a smaller linear index than key
 * block jb. Blocks are dispatched in increasing linear index (what the hardware does; FA3's
 * deterministic backward relies on the same), so when a block waits, every block it can wait on
 * (transitively: only smaller indices) is resident or finished; by induction on the index, the
 * smallest waiting block's producer is running and never waits on anything larger: progress.
 * (Nothing here waits on a block with a larger index; co-residency is not assumed.)
 * Order of the query tiles inside a block: descending (nqt - 1 first, the diagonal tiles last).
 * Every key block then starts with the same tile, so block jb lags block jb - 1 of its head by
 * about one tile when both run at once (ascending order would make block jb wait ~5 jb tiles
 * for block jb - 1 to reach tile 4 jb); dK / dV are summed in that order (not kv2's bits).
 * Prediction (not measured): 5 instead of 7 tile products (per warp and pair 160 mma instead of
 * kv2's 128 + the q kernel's share), and the q kernel's K / V re-streaming gone; against that the
 * dS^T store, one more barrier, an 8 KB fp32 read-add-write per pair (L2 latency, partly hidden
 * by the SM's second block: 254 registers at HS 64, no spill, 2 blocks of 4 warps per SM as
 * kv2) and the lag of about one tile per key block. kv2 runs 146 TFLOP/s in the 2.5x accounting
 * at the 1.5B check shape, i.e. ~204 TFLOP/s of executed mma work; fused at ~90% of that rate
 * executes only the counted 5 products: ~180 TFLOP/s, x1.25 (the ideal is 7/5 = x1.4). In the
 * step: 1.5B 24.8 -> ~19.5 ms, 124M 5.48 -> ~4.3 ms. Risk: if the RMW latency is not hidden the
 * gain shrinks toward x1.1; the spin-waits cost more if the lag between key blocks grows. */
template <int HS> struct F2BwdFused {
  static constexpr int LD = HS + 8;
  static constexpr int LDS = F2_QB + 8; /* dS^T rows (one per key) of 32 queries + 16-byte pad */
  static constexpr size_t kt = (size_t)F2_KB * LD * 2; /* K or V */
  static constexpr size_t qt = (size_t)F2_QB * LD * 2; /* Q or dO */
  static constexpr size_t st = (size_t)F2_KB * LDS * 2; /* dS^T */
  /* K, V resident; 2 buffers x (Q, dO); dS^T; 2 buffers x (L, D) x 32 floats */
  static constexpr size_t bytes = 2 * kt + 4 * qt + st + 4 * F2_QB * sizeof(float);
  static constexpr int tile_f = F2_QB * HS; /* floats of one query tile of dQacc */
};

/* dQacc bytes (fp32, one tile of 32 x HS per (head, query tile)) and semaphore count (4 per
 * (head, query tile): one per warp) for the fused variant; the workspace is dQacc then the
 * semaphores, each 256-byte aligned */
static inline size_t f2_fused_acc_bytes(int B, int T, int NH, int HS) {
  return zpc_round256((size_t)B * NH * ((T + F2_QB - 1) / F2_QB) * F2_QB * HS * sizeof(float));
}
static inline size_t f2_fused_nsem(int B, int T, int NH) {
  return (size_t)B * NH * ((T + F2_QB - 1) / F2_QB) * 4;
}

__device__ __forceinline__ int f2_ld_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n"
               : "=r"(v)
               : "l"(__cvta_generic_to_global(p))
               : "memory");
  return v;
}
/* dQacc partials: L2 only (ld.cg / st.cg), volatile with a memory clobber so that the compiler
 * keeps them after the acquire (and the stores before the release) in program order */
__device__ __forceinline__ float2 f2_ldcg2(const float* p) {
  float2 v;
  asm volatile("ld.global.cg.v2.f32 {%0, %1}, [%2];\n"
               : "=f"(v.x), "=f"(v.y)
               : "l"(__cvta_generic_to_global(p))
               : "memory");
  return v;
}
__device__ __forceinline__ void f2_stcg2(float* p, float x, float y) {
  asm volatile("st.global.cg.v2.f32 [%0], {%1, %2};\n" ::"l"(__cvta_generic_to_global(p)), "f"(x),
               "f"(y)
               : "memory");
}
__device__ __forceinline__ void f2_st_release(int* p, int v) {
  asm volatile("st.release.gpu.global.b32 [%0], %1;\n" ::"l"(__cvta_generic_to_global(p)), "r"(v)
               : "memory");
}

/* ATOMIC (bwd variant atomic, diagnostic): every pair adds its partial into dQacc with float
 * atomics (red.global.add; v2.f32 on sm_90) instead of the ordered protocol: no semaphores, no
 * waits, no last-contributor store. dQacc must be zero on entry (cudaMemsetAsync before the prep
 * kernel) and zpc_fa2_bwd_dq_kernel converts it to bf16 after this kernel. Not deterministic:
 * the order of the fp32 additions is the order in which the atomics arrive. */
__device__ __forceinline__ void f2_red2(float* p, float x, float y) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd((float2*)p, make_float2(x, y));
#else
  atomicAdd(p, x);
  atomicAdd(p + 1, y);
#endif
}

template <int HS, bool ATOMIC = false>
__global__ void __launch_bounds__(F2_THREADS)
zpc_fa2_bwd_fused_kernel(bf16* dqkv, float* dqacc, int* sem, const bf16* dout, const bf16* qkv,
                         const float* lse, const float* Dv, int T, int NH, float scale_log2,
                         float scale) {
  typedef F2BwdFused<HS> L;
  constexpr int LD = L::LD, LDS = L::LDS, NQ = HS / 16; /* dQ n8 tiles per warp */
  extern __shared__ __align__(128) unsigned char f2_sm[];
  bf16* Ks = (bf16*)f2_sm;
  bf16* Vs = Ks + F2_KB * LD;
  bf16* Qb = Vs + F2_KB * LD; /* buffer x: Q at Qb + 2x * F2_QB rows, dO right after */
  bf16* dSs = Qb + 4 * F2_QB * LD;
  float* LDs = (float*)(f2_sm + 2 * L::kt + 4 * L::qt + L::st); /* buffer x: L at + 64x, D + 32 */

  const int C = NH * HS;
  const int nqt = (T + F2_QB - 1) / F2_QB;
  const int jb = (int)blockIdx.y; /* key block: linear block index jb * (B*NH) + bh (above) */
  const int k0 = jb * F2_KB;
  const F2Head hd = f2_head_bh(qkv, T, NH, HS, (int)blockIdx.x);
  const int bh = hd.bh, bb = hd.bb, h = hd.h;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const size_t stride = hd.stride;
  const bf16* dobase = dout + (size_t)bb * T * C + h * HS;
  const float* lrow = lse + (size_t)bh * T;
  const float* drow = Dv + (size_t)bh * T;
  const int i0 = k0 / F2_QB; /* = 4 jb: first query tile holding a query >= k0 */
  const int mq = warp & 1, dh = warp >> 1; /* dQ: rows 16 mq .., columns dh HS/2 .. */
  float* accw = dqacc + (size_t)bh * nqt * L::tile_f + warp * (L::tile_f / 4) + 2 * lane;
  int* semw = sem + (size_t)bh * nqt * 4 + warp;
  bf16* dqb = dqkv + (size_t)bb * T * stride + h * HS + dh * (HS / 2) + 2 * t4;

  f2_load<HS, F2_KB>(Ks, hd.k, stride, k0, T);
  f2_load<HS, F2_KB>(Vs, hd.v, stride, k0, T);
  f2_load<HS, F2_QB>(Qb, hd.q, stride, (nqt - 1) * F2_QB, T);
  f2_load<HS, F2_QB>(Qb + F2_QB * LD, dobase, C, (nqt - 1) * F2_QB, T);
  f2_commit();
  if (threadIdx.x < 2 * F2_QB) { /* L (log2 domain, +inf past T) and D of tile nqt - 1 */
    const int r = threadIdx.x & (F2_QB - 1), t = (nqt - 1) * F2_QB + r;
    LDs[threadIdx.x] = threadIdx.x < F2_QB ? (t < T ? lrow[t] * F2_LOG2E : INFINITY)
                                           : (t < T ? drow[t] : 0.0f);
  }

  float dk[2][HS / 8][4], dv[2][HS / 8][4];
#pragma unroll
  for (int mi = 0; mi < 2; mi++)
#pragma unroll
    for (int nt = 0; nt < HS / 8; nt++)
#pragma unroll
      for (int e = 0; e < 4; e++) dk[mi][nt][e] = dv[mi][nt][e] = 0.0f;

  const int kw = 32 * warp; /* this warp's first local key row */
  for (int i = nqt - 1; i >= i0; i--) { /* descending: see the comment above */
    const int x = (nqt - 1 - i) & 1;
    if (i > i0) {
      F2_BWD_STAGE(i - 1);
      f2_wait<1>();
    } else {
      f2_wait<0>();
    }
    __syncthreads();
    const bf16* Qs = Qb + x * 2 * F2_QB * LD;
    const bf16* dOs = Qs + F2_QB * LD;
    const float* Ls = LDs + x * 2 * F2_QB;
    const float* Ds = Ls + F2_QB;
    const int q0 = i * F2_QB;
    /* warp-uniform: skip when every key of the warp lies above every query of the tile (its
     * dS^T rows are then never read: see nks below) */
    if (k0 + kw <= q0 + F2_QB - 1) {
      const bool diag = k0 + kw + 31 > q0; /* some key > some query: mask */
      float p[2][4][4], dp[2][4][4]; /* [key m tile][query n8 tile][frag] */
      F2_BWD_SDP(p, dp);
      F2_BWD_PDS(p, dp);
      /* dS^T (bf16) to shared memory, [key row][query]: 4-byte stores, conflict-free (rows 80
       * bytes apart) */
#pragma unroll
      for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int nt = 0; nt < 4; nt++) {
          bf16* d = dSs + (kw + 16 * mi + g) * LDS + nt * 8 + 2 * t4;
          *(uint32_t*)d = f2_pack(dp[mi][nt][0], dp[mi][nt][1]);
          *(uint32_t*)(d + 8 * LDS) = f2_pack(dp[mi][nt][2], dp[mi][nt][3]);
        }
      F2_BWD_DVDK(dv, dk, p, dp);
    }
    __syncthreads(); /* dS^T complete */

    /* dQ partial = dS K over key steps 0 .. nks - 1 (block-uniform; >= 2 since q0 >= k0) */
    const int nks = min(F2_KB / 16, (q0 + F2_QB - 1 - k0) / 16 + 1);
    float dq[NQ][4];
#pragma unroll
    for (int nt = 0; nt < NQ; nt++) dq[nt][0] = dq[nt][1] = dq[nt][2] = dq[nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < F2_KB / 16; kk++) {
      if (kk < nks) {
        uint32_t a[4];
        f2_ldm4t(a, f2_at_bn<LDS>(dSs, kk * 16, 16 * mq, lane)); /* dS rows 16 mq.., keys 16 kk.. */
#pragma unroll
        for (int d = 0; d < HS / 32; d++) {
          uint32_t b[4];
          f2_ldm4t(b, f2_at_a<LD>(Ks, kk * 16, dh * (HS / 2) + d * 16, lane));
          f2_mma(dq[2 * d], a, b[0], b[1]);
          f2_mma(dq[2 * d + 1], a, b[2], b[3]);
        }
      }
    }

    if constexpr (ATOMIC) { /* unordered: float atomics (the comment of f2_red2) */
      float* acc = accw + (size_t)i * L::tile_f;
#pragma unroll
      for (int nt = 0; nt < NQ; nt++)
#pragma unroll
        for (int hh = 0; hh < 2; hh++)
          f2_red2(acc + (nt * 2 + hh) * 64, dq[nt][2 * hh], dq[nt][2 * hh + 1]);
    } else { /* ordered accumulation into dQacc (the comment above); block-uniform branches */
      const bool first = jb == 0, last = i < i0 + 4;
      float* acc = accw + (size_t)i * L::tile_f;
      int* sw = semw + (size_t)i * 4;
      if (!first) {
        if (lane == 0)
          while (f2_ld_acquire(sw) != jb) {
          }
        __syncwarp();
#pragma unroll
        for (int nt = 0; nt < NQ; nt++)
#pragma unroll
          for (int hh = 0; hh < 2; hh++) {
            const float2 a = f2_ldcg2(acc + (nt * 2 + hh) * 64);
            dq[nt][2 * hh] += a.x;
            dq[nt][2 * hh + 1] += a.y;
          }
      }
      if (last) {
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
          const int row = q0 + 16 * mq + g + 8 * hh;
          if (row >= T) continue;
#pragma unroll
          for (int nt = 0; nt < NQ; nt++)
            *(uint32_t*)(dqb + (size_t)row * stride + nt * 8) =
                f2_pack(dq[nt][2 * hh] * scale, dq[nt][2 * hh + 1] * scale);
        }
      } else {
#pragma unroll
        for (int nt = 0; nt < NQ; nt++)
#pragma unroll
          for (int hh = 0; hh < 2; hh++)
            f2_stcg2(acc + (nt * 2 + hh) * 64, dq[nt][2 * hh], dq[nt][2 * hh + 1]);
        __threadfence();
        __syncwarp();
        if (lane == 0) f2_st_release(sw, jb + 1);
      }
    }
    __syncthreads(); /* buffer x and dS^T are rewritten next iteration */
  }
  bf16* dkb = dqkv + (size_t)bb * T * stride + C + h * HS;
#pragma unroll
  for (int mi = 0; mi < 2; mi++) {
    f2_store<HS>(dkb, stride, k0 + kw + 16 * mi, T, dk[mi], scale, scale, lane);
    f2_store<HS>(dkb + C, stride, k0 + kw + 16 * mi, T, dv[mi], 1.0f, 1.0f, lane);
  }
}

/* bwd variant atomic: dQ (bf16, times scale) from the fp32 dQacc that the atomic kernel filled
 * (fragment-native layout: within the tile of (head bh, query tile i), warp w's quarter at
 * w tile_f / 4, element (nt * 2 + hh) * 64 + 2 lane + e holds row 16 (w & 1) + lane / 4 + 8 hh,
 * column (w >> 1) HS / 2 + 8 nt + 2 (lane & 3) + e). One thread per float2 (n2 of them: all
 * of dQacc); rows >= T untouched. */
template <int HS>
__global__ void zpc_fa2_bwd_dq_kernel(bf16* dqkv, const float* dqacc, size_t n2, int T, int NH,
                                      float scale) {
  typedef F2BwdFused<HS> L;
  const int nqt = (T + F2_QB - 1) / F2_QB;
  const size_t f2i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (f2i >= n2) return;
  const size_t f = 2 * f2i;
  const size_t bh = f / ((size_t)nqt * L::tile_f);
  const size_t in_head = f % ((size_t)nqt * L::tile_f);
  const int i = (int)(in_head / L::tile_f);
  const int off = (int)(in_head % L::tile_f);
  const int w = off / (L::tile_f / 4), rem = off % (L::tile_f / 4);
  const int j = rem / 64, lane = (rem % 64) / 2; /* j = nt * 2 + hh */
  const int row = i * F2_QB + 16 * (w & 1) + (lane >> 2) + 8 * (j & 1);
  if (row >= T) return;
  const int col = (w >> 1) * (HS / 2) + 8 * (j >> 1) + 2 * (lane & 3);
  const int bb = (int)(bh / NH), h = (int)(bh % NH);
  const size_t stride = 3 * (size_t)NH * HS;
  const float2 a = *(const float2*)(dqacc + f);
  *(uint32_t*)(dqkv + ((size_t)bb * T + row) * stride + h * HS + col) =
      f2_pack(a.x * scale, a.y * scale);
}

/* ---------------------------------------------------------------- launchers */

int zpc_fa2_usable(int C, int NH, const void* p0, const void* p1, const void* p2,
                   const void* p3) {
  if (NH <= 0 || C % NH || C % 8) return 0;
  const int hs = C / NH;
  if (hs != 32 && hs != 64 && hs != 128) return 0;
  return ((uintptr_t)p0 | (uintptr_t)p1 | (uintptr_t)p2 | (uintptr_t)p3) % 16 == 0;
}

/* D = rowsum(dO * O) into scratch (every backward variant starts with it); SEM: also zero the
 * fused variant's nsem semaphores */
template <int HS, bool SEM = false>
static int f2_bwd_prep(zp_backend* b, void** Dv, const void* dout, const void* out, int B, int T,
                       int NH, int* sem = NULL, size_t nsem = 0) {
  int rc = zpc_scratch(b, (size_t)B * NH * T * sizeof(float), Dv);
  if (rc) return rc;
  const size_t threads = (size_t)B * T * NH * (HS / 8);
  zpc_fa2_bwd_prep_kernel<HS, SEM><<<(unsigned)((threads + 255) / 256), 256, 0, b->stream>>>(
      (float*)*Dv, (const bf16*)dout, (const bf16*)out, B, T, NH, sem, nsem);
  ZPC_LAUNCHED(b, "fa2_bwd_prep");
  return ZP_OK;
}

template <int HS>
static int f2_bwd(zp_backend* b, void* dqkv, const void* dout, const void* qkv, const void* out,
                  const void* aux, int B, int T, int NH) {
  void* Dv = NULL;
  int rc = f2_bwd_prep<HS>(b, &Dv, dout, out, B, T, NH);
  if (rc) return rc;
  const size_t smem = F2Bwd<HS>::bytes;
  ZPC_CUDA(b, cudaFuncSetAttribute(zpc_fa2_bwd_kv_kernel<HS>,
                                   cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  ZPC_CUDA(b, cudaFuncSetAttribute(zpc_fa2_bwd_q_kernel<HS>,
                                   cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  const float scale = 1.0f / sqrtf((float)HS);
  dim3 grid((T + F2_BC - 1) / F2_BC, B * NH);
  zpc_fa2_bwd_kv_kernel<HS><<<grid, F2_THREADS, smem, b->stream>>>(
      (bf16*)dqkv, (const bf16*)dout, (const bf16*)qkv, (const float*)aux, (const float*)Dv, T,
      NH, scale * F2_LOG2E, scale);
  ZPC_LAUNCHED(b, "fa2_bwd_kv");
  zpc_fa2_bwd_q_kernel<HS><<<grid, F2_THREADS, smem, b->stream>>>(
      (bf16*)dqkv, (const bf16*)dout, (const bf16*)qkv, (const float*)aux, (const float*)Dv, T,
      NH, scale * F2_LOG2E, scale);
  ZPC_LAUNCHED(b, "fa2_bwd_q");
  return ZP_OK;
}

template <int HS, int MW, int NW>
static int f2_fwdv(zp_backend* b, void* out, void* aux, const void* qkv, int B, int T, int NH) {
  const size_t smem = F2FwdV<HS, MW, NW>::bytes;
  ZPC_CUDA(b, cudaFuncSetAttribute(zpc_fa2_fwdv_kernel<HS, MW, NW>,
                                   cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  constexpr int BR = F2FwdV<HS, MW, NW>::BR;
  dim3 grid(B * NH, (T + BR - 1) / BR);
  zpc_fa2_fwdv_kernel<HS, MW, NW><<<grid, NW * 32, smem, b->stream>>>(
      (bf16*)out, (float*)aux, (const bf16*)qkv, T, NH, F2_LOG2E / sqrtf((float)HS));
  ZPC_LAUNCHED(b, "fa2_fwdv");
  return ZP_OK;
}

/* bwd variant kv2: prep, the kv2 kernel, the q kernel with V2 (grids (heads, tiles)) */
template <int HS>
static int f2_bwd_kv2(zp_backend* b, void* dqkv, const void* dout, const void* qkv,
                      const void* out, const void* aux, int B, int T, int NH) {
  void* Dv = NULL;
  int rc = f2_bwd_prep<HS>(b, &Dv, dout, out, B, T, NH);
  if (rc) return rc;
  const size_t smem_kv = F2BwdKV2<HS>::bytes, smem_q = F2Bwd<HS>::bytes;
  ZPC_CUDA(b, cudaFuncSetAttribute(zpc_fa2_bwd_kv2_kernel<HS>,
                                   cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_kv));
  ZPC_CUDA(b, cudaFuncSetAttribute(zpc_fa2_bwd_q_kernel<HS, true>,
                                   cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_q));
  const float scale = 1.0f / sqrtf((float)HS);
  zpc_fa2_bwd_kv2_kernel<HS><<<dim3(B * NH, (T + F2_KB - 1) / F2_KB), F2_THREADS, smem_kv,
                               b->stream>>>(
      (bf16*)dqkv, (const bf16*)dout, (const bf16*)qkv, (const float*)aux, (const float*)Dv, T,
      NH, scale * F2_LOG2E, scale);
  ZPC_LAUNCHED(b, "fa2_bwd_kv2");
  zpc_fa2_bwd_q_kernel<HS, true><<<dim3(B * NH, (T + F2_BC - 1) / F2_BC), F2_THREADS, smem_q,
                                   b->stream>>>(
      (bf16*)dqkv, (const bf16*)dout, (const bf16*)qkv, (const float*)aux, (const float*)Dv, T,
      NH, scale * F2_LOG2E, scale);
  ZPC_LAUNCHED(b, "fa2_bwd_q");
  return ZP_OK;
}

/* bwd variant fused: prep (D, and the semaphores zeroed), then the fused kernel (grid (heads, key
 * blocks): the deadlock argument above needs exactly this order). ws: dQacc, then semaphores. */
template <int HS>
static int f2_bwd_fused(zp_backend* b, void* dqkv, const void* dout, const void* qkv,
                        const void* out, const void* aux, void* ws, int B, int T, int NH) {
  int* sem = (int*)((char*)ws + f2_fused_acc_bytes(B, T, NH, HS));
  void* Dv = NULL;
  int rc = f2_bwd_prep<HS, true>(b, &Dv, dout, out, B, T, NH, sem, f2_fused_nsem(B, T, NH));
  if (rc) return rc;
  const size_t smem = F2BwdFused<HS>::bytes;
  ZPC_CUDA(b, cudaFuncSetAttribute(zpc_fa2_bwd_fused_kernel<HS>,
                                   cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  const float scale = 1.0f / sqrtf((float)HS);
  zpc_fa2_bwd_fused_kernel<HS><<<dim3(B * NH, (T + F2_KB - 1) / F2_KB), F2_THREADS, smem,
                                 b->stream>>>(
      (bf16*)dqkv, (float*)ws, sem, (const bf16*)dout, (const bf16*)qkv, (const float*)aux,
      (const float*)Dv, T, NH, scale * F2_LOG2E, scale);
  ZPC_LAUNCHED(b, "fa2_bwd_fused");
  return ZP_OK;
}

/* bwd variant atomic (diagnostic): dQacc zeroed (cudaMemsetAsync, same stream), prep (D only),
 * the fused kernel with ATOMIC (unordered float atomics into dQacc; the grid order no longer
 * matters but is kept), then zpc_fa2_bwd_dq_kernel writes dQ. ws: the fused layout (dQacc, then
 * the semaphores, which stay allocated and unused). Not bitwise deterministic. */
template <int HS>
static int f2_bwd_atomic(zp_backend* b, void* dqkv, const void* dout, const void* qkv,
                         const void* out, const void* aux, void* ws, int B, int T, int NH) {
  const size_t acc_bytes = f2_fused_acc_bytes(B, T, NH, HS);
  ZPC_CUDA(b, cudaMemsetAsync(ws, 0, acc_bytes, b->stream));
  int* sem = (int*)((char*)ws + acc_bytes); /* unused by ATOMIC */
  void* Dv = NULL;
  int rc = f2_bwd_prep<HS>(b, &Dv, dout, out, B, T, NH);
  if (rc) return rc;
  const size_t smem = F2BwdFused<HS>::bytes;
  ZPC_CUDA(b, cudaFuncSetAttribute(zpc_fa2_bwd_fused_kernel<HS, true>,
                                   cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  const float scale = 1.0f / sqrtf((float)HS);
  zpc_fa2_bwd_fused_kernel<HS, true><<<dim3(B * NH, (T + F2_KB - 1) / F2_KB), F2_THREADS, smem,
                                       b->stream>>>(
      (bf16*)dqkv, (float*)ws, sem, (const bf16*)dout, (const bf16*)qkv, (const float*)aux,
      (const float*)Dv, T, NH, scale * F2_LOG2E, scale);
  ZPC_LAUNCHED(b, "fa2_bwd_atomic");
  const size_t n2 = (size_t)B * NH * ((T + F2_QB - 1) / F2_QB) * (F2BwdFused<HS>::tile_f / 2);
  zpc_fa2_bwd_dq_kernel<HS><<<(unsigned)((n2 + 255) / 256), 256, 0, b->stream>>>(
      (bf16*)dqkv, (const float*)ws, n2, T, NH, scale);
  ZPC_LAUNCHED(b, "fa2_bwd_dq");
  return ZP_OK;
}

int zpc_fa2_prep_D(zp_backend* b, void** Dv, const void* dout, const void* out, int B, int T,
                   int NH, int HS) {
  switch (HS) {
    case 32: return f2_bwd_prep<32>(b, Dv, dout, out, B, T, NH);
    case 64: return f2_bwd_prep<64>(b, Dv, dout, out, B, T, NH);
    default: return f2_bwd_prep<128>(b, Dv, dout, out, B, T, NH);
  }
}

int zpc_wg_usable(const zp_backend* b, int C, int NH) {
#ifdef ZPC_HAVE_WGMMA
  return b->cc_major == 9 && b->cc_minor == 0 && NH > 0 && C == 64 * NH;
#else
  (void)b, (void)C, (void)NH;
  return 0;
#endif
}

#ifndef ZPC_HAVE_WGMMA /* built without sm_90a code: never called (zpc_wg_usable is 0) */
int zpc_wg_fwd(zp_backend* b, void* out, void* aux, const void* qkv, int B, int T, int NH) {
  return ZPC_INVALID(b, "cuda backend: the wgmma attention was not built (no sm_90 target)");
}
int zpc_wg_bwd(zp_backend* b, void* dqkv, const void* dout, const void* qkv, const void* out,
               const void* aux, int B, int T, int NH) {
  return ZPC_INVALID(b, "cuda backend: the wgmma attention was not built (no sm_90 target)");
}
#endif

int zpc_fa2_fwd(zp_backend* b, void* out, void* aux, const void* qkv, int B, int T, int C,
                int NH) {
  if (B <= 0 || T <= 0 || !zpc_fa2_usable(C, NH, out, aux, qkv, qkv))
    return ZPC_INVALID(b, "cuda backend: fa2 attention: unsupported shape or alignment B=%d "
                          "T=%d C=%d NH=%d", B, T, C, NH);
  if (b->fa2_fwd == 2 && zpc_wg_usable(b, C, NH)) return zpc_wg_fwd(b, out, aux, qkv, B, T, NH);
  if (b->fa2_fwd == 1) switch (C / NH) { /* w8: 8 warps x 16 rows */
      case 32: return f2_fwdv<32, 1, 8>(b, out, aux, qkv, B, T, NH);
      case 64: return f2_fwdv<64, 1, 8>(b, out, aux, qkv, B, T, NH);
      default: return f2_fwdv<128, 1, 8>(b, out, aux, qkv, B, T, NH);
    }
  switch (C / NH) { /* fast: 4 warps x MW m16 tiles */
    case 32: return f2_fwdv<32, 2, 4>(b, out, aux, qkv, B, T, NH);
    case 64: return f2_fwdv<64, 2, 4>(b, out, aux, qkv, B, T, NH);
    default: return f2_fwdv<128, 1, 4>(b, out, aux, qkv, B, T, NH);
  }
}

int zpc_fa2_bwd(zp_backend* b, void* dqkv, const void* dout, const void* qkv, const void* out,
                const void* aux, int B, int T, int C, int NH) {
  if (B <= 0 || T <= 0 || !zpc_fa2_usable(C, NH, dqkv, dout, qkv, out))
    return ZPC_INVALID(b, "cuda backend: fa2 attention: unsupported shape or alignment B=%d "
                          "T=%d C=%d NH=%d", B, T, C, NH);
  if (b->fa2_bwd == 4 && zpc_wg_usable(b, C, NH))
    return zpc_wg_bwd(b, dqkv, dout, qkv, out, aux, B, T, NH);
  /* kv2, and fused without a workspace (attention_bwd rather than attention_bwd_ws); wg where
   * it is not usable */
  if (b->fa2_bwd >= 1 && C / NH == 32) return f2_bwd_kv2<32>(b, dqkv, dout, qkv, out, aux, B, T, NH);
  if (b->fa2_bwd >= 1 && C / NH == 64) return f2_bwd_kv2<64>(b, dqkv, dout, qkv, out, aux, B, T, NH);
  switch (C / NH) { /* base (and kv2 / fused at HS 128) */
    case 32: return f2_bwd<32>(b, dqkv, dout, qkv, out, aux, B, T, NH);
    case 64: return f2_bwd<64>(b, dqkv, dout, qkv, out, aux, B, T, NH);
    default: return f2_bwd<128>(b, dqkv, dout, qkv, out, aux, B, T, NH);
  }
}

size_t zpc_fa2_bwd_ws_bytes(const zp_backend* b, int B, int T, int C, int NH) {
  if (b->fa2_bwd < 2 || b->fa2_bwd > 3 || B <= 0 || T <= 0 || NH <= 0 || C % NH || C % 8) return 0;
  const int hs = C / NH;
  if (hs != 32 && hs != 64) return 0;
  return f2_fused_acc_bytes(B, T, NH, hs) + zpc_round256(f2_fused_nsem(B, T, NH) * sizeof(int));
}

int zpc_fa2_bwd_ws(zp_backend* b, void* dqkv, const void* dout, const void* qkv, const void* out,
                   const void* aux, void* ws, int B, int T, int C, int NH) {
  if (!ws || zpc_fa2_bwd_ws_bytes(b, B, T, C, NH) == 0)
    return zpc_fa2_bwd(b, dqkv, dout, qkv, out, aux, B, T, C, NH);
  if (!zpc_fa2_usable(C, NH, dqkv, dout, qkv, out))
    return ZPC_INVALID(b, "cuda backend: fa2 attention: unsupported shape or alignment B=%d "
                          "T=%d C=%d NH=%d", B, T, C, NH);
  if ((uintptr_t)ws % 256)
    return ZPC_INVALID(b, "cuda backend: attention_bwd_ws: workspace %p is not 256-byte aligned",
                       ws);
  if (b->fa2_bwd == 3) /* atomic */
    return C / NH == 32 ? f2_bwd_atomic<32>(b, dqkv, dout, qkv, out, aux, ws, B, T, NH)
                        : f2_bwd_atomic<64>(b, dqkv, dout, qkv, out, aux, ws, B, T, NH);
  return C / NH == 32 ? f2_bwd_fused<32>(b, dqkv, dout, qkv, out, aux, ws, B, T, NH)
                      : f2_bwd_fused<64>(b, dqkv, dout, qkv, out, aux, ws, B, T, NH);
}
