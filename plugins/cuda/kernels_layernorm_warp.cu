/* kernels_layernorm_warp.cu: LayerNorm forward and backward with one warp per row
 * (ZP_CUDA_LN=warp). Same contract as kernels_layernorm.cu (its header; bf16 data, fp32 stats):
 *
 * Forward: out = (x - mean) * rstd * w + bias, mean and rstd (= 1/sqrt(var + 1e-5), biased
 * variance) stored as fp32 [N] (each skipped when NULL; bias may be NULL). Two-pass statistics
 * in fp32 (mean first, then the centred sum of squares), one rounding to bf16.
 * Backward (accumulates dinp, dw, dbias; each may be NULL, then it is skipped): per row, with
 * xhat = (x - mean) * rstd and g = w * dout: dinp += rstd * (g - mean(g) - xhat * mean(g * xhat));
 * dw += sum_rows dout * xhat, dbias += sum_rows dout (stored instead of added while
 * b->grad_overwrite, ABI 1.8, exactly as zpc_colsum_add does; dinp always accumulates).
 *
 * Why: the block-per-rows kernels (fast / pf) end every row group with a block-wide barrier and
 * keep few rows in flight per SM; at N 8192 C 1600 they reach ~2 TB/s on an H100 and take the
 * same time on an H200 (latency bound). Here every row belongs to one warp, so its sums are
 * warp shuffles (no barrier), and each warp loads its next row before working on the current
 * one, so every warp keeps one row's loads in flight all the time.
 *
 * Layout: blocks of ZPC_LNW_WARPS = 4 warps; lane l of a warp owns the 16-byte vectors
 * (8 bf16 columns) l, l + 32, ..., l + 32 * (VPL - 1) of its row, VPL = ceil(C / 256) (a
 * template parameter, so the row stays in registers; the last vector is predicated, padding
 * lanes load zeros). w (and bias) are staged once per block in shared memory as bf16 vectors.
 * - Forward: grid-stride over rows (warp k of the grid takes rows k, k + 4 * grid, ...), the
 *   grid sized by occupancy (cudaOccupancyMaxActiveBlocksPerMultiprocessor x b->sm_count).
 *   Registers: the current and the next row (2 x 4 x VPL) and little else. VPL 1..8, 12, 16:
 *   C <= 4096.
 * - Backward: rows are cut into chunks of rpc = max(32, ceil(N / 1024)) rows (<= 1024 chunks;
 *   a function of N only); a block takes chunks blockIdx.x, + gridDim.x, ... and within a chunk
 *   warp k takes the chunk's rows k, k + 4, ... in order. Registers hold the current and the
 *   next row (x, dout, dinp, mean, rstd: 2 x 3 x 4 x VPL + 4); the next row may be the first
 *   one of the warp's next chunk, so the loads stay in flight across the chunk's end. Each lane
 *   adds its columns' dout * xhat and dout into its own slots of shared memory (float4 [VPL][4]
 *   [32 lanes] per warp: conflict-free, no synchronization, 8 KB x VPL per block), which frees
 *   the registers for the prefetch. At a chunk's end (two barriers) the block sums the 4 warps'
 *   slots in warp order into one fp32 partial row of dw and of dbias in the scratch ([P, C]
 *   each) and zeroes them; one launch of zpc_lnw_colsum_kernel then adds the P partial rows in
 *   a fixed order into dw and dbias (the same order, hence bits, as two zpc_colsum_add calls).
 *   VPL 1..8: C <= 2048 (more does not fit two rows of three tensors in registers).
 * - Other shapes (C % 8 != 0, a pointer not 16-byte aligned, C > 4096 forward, C > 2048
 *   backward) run zpc_layernorm_*_fast, which treats ZP_CUDA_LN=warp as pf, so every shape is
 *   valid under ZP_CUDA_LN=warp.
 * Determinism: no atomics. Every sum's order is a function of (N, C): a row's statistics are
 * a lane's columns in order then the xor-shuffle tree (identical bits in every lane); dw / dbias
 * are sums over a warp's rows in order, then over warps 0..3, then over chunks in the colsum's
 * fixed order. The grid size (from the device's SM count) only decides which block takes which
 * chunk, so results are bitwise repeatable run to run and across devices. Not the same bits as
 * fast / pf (other orders), within the same tolerances against the fp32 reference.
 * Resources (sm_90, nvcc 13 -O3, nvcc -Xptxas -v; no spills, no stack; resident warps per SM
 * from registers (allocated in units of 8 per thread) and shared memory, blocks of 4 warps):
 *   forward  VPL       1   2   3   4   5   6   7   8  12  16
 *            registers 32  47  48  60  68  76  92  96  126 157
 *            warps/SM  64  40  40  32  28  24  20  20  16  12   (static smem VPL KB per block)
 *   backward VPL       1   2   3   4   5   6   7   8
 *            registers 64  93  120 144 162 193 216 241
 *            warps/SM  32  20  16  12  12  8   8   8   (smem 8.5 KB x VPL per block: fits)
 *   GPT-2 widths: C 768 is VPL 3, 1024 VPL 4, 1280 VPL 5, 1600 VPL 7. Rows' loads in flight
 *   per SM (the next row of every warp): forward 20 x 3.2 KB at C 1600, 40 x 1.5 KB at C 768;
 *   backward 8 x 9.6 KB at C 1600, 16 x 4.6 KB at C 768: 60 to 77 KB, above the ~40 KB that
 *   Little's law asks for at 4.8 TB/s and ~1 us (the block-per-rows pf backward has ~38 KB).
 */
#include "cuda_common.cuh"

#define ZPC_LNW_EPS 1e-5f
#define ZPC_LNW_WARPS 4 /* warps per block (the backward's sum order depends on it: fixed) */
#define ZPC_LNW_THREADS (32 * ZPC_LNW_WARPS)
#define ZPC_LNW_FWD_MAX_C 4096 /* VPL 16 */
#define ZPC_LNW_BWD_MAX_C 2048 /* VPL 8 */
static_assert(ZPC_LN_MIN_CHUNK >= ZPC_LNW_WARPS, "a chunk gives every warp a row"); /* chunks: zpc_ln_partials */


/* ---------------------------------------------------------------- forward */

template <int VPL>
__device__ __forceinline__ void zpc_lnw_fwd_load(uint4 (&xv)[VPL], const bf16* inp, int row,
                                                 int C, int nvec, int lane) {
  const uint4* x = (const uint4*)(inp + (size_t)row * C);
#pragma unroll
  for (int k = 0; k < VPL; k++) {
    const int v = lane + 32 * k;
    xv[k] = v < nvec ? x[v] : make_uint4(0u, 0u, 0u, 0u);
  }
}

/* warp-uniform control throughout: every branch below depends on the row only */
template <int VPL>
__global__ void __launch_bounds__(ZPC_LNW_THREADS)
    zpc_lnw_fwd_kernel(bf16* out, float* mean, float* rstd, const bf16* inp, const bf16* w,
                       const bf16* bias, int N, int C) {
  __shared__ uint4 sw[32 * VPL], sb[32 * VPL];
  const int lane = threadIdx.x & 31;
  const int nvec = C >> 3;
  const int stride = gridDim.x * ZPC_LNW_WARPS;
  int row = blockIdx.x * ZPC_LNW_WARPS + (threadIdx.x >> 5);
  uint4 nx[VPL]; /* the next row */
  if (row < N) zpc_lnw_fwd_load<VPL>(nx, inp, row, C, nvec, lane);
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
  for (int v = threadIdx.x; v < 32 * VPL; v += blockDim.x) {
    sw[v] = v < nvec ? __ldg((const uint4*)w + v) : zero;
    sb[v] = (bias && v < nvec) ? __ldg((const uint4*)bias + v) : zero;
  }
  __syncthreads();
  for (; row < N; row += stride) {
    uint4 xv[VPL];
#pragma unroll
    for (int k = 0; k < VPL; k++) xv[k] = nx[k];
    if (stride < N - row) zpc_lnw_fwd_load<VPL>(nx, inp, row + stride, C, nvec, lane);
    /* pass 1: mean (padding vectors hold zeros) */
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < VPL; k++) {
      float f[8];
      zpc_unpack8(xv[k], f);
#pragma unroll
      for (int j = 0; j < 8; j++) s += f[j];
    }
    const float m = zpc_warp_sum(s) / (float)C;
    /* pass 2: centred sum of squares over the real columns only */
    s = 0.0f;
#pragma unroll
    for (int k = 0; k < VPL; k++) {
      if (lane + 32 * k >= nvec) continue;
      float f[8];
      zpc_unpack8(xv[k], f);
#pragma unroll
      for (int j = 0; j < 8; j++) {
        const float d = f[j] - m;
        s += d * d;
      }
    }
    const float r = rsqrtf(zpc_warp_sum(s) / (float)C + ZPC_LNW_EPS);
    /* normalize and store */
    uint4* o = (uint4*)(out + (size_t)row * C);
#pragma unroll
    for (int k = 0; k < VPL; k++) {
      const int v = lane + 32 * k;
      if (v >= nvec) continue;
      float f[8], fw[8], fb[8];
      zpc_unpack8(xv[k], f);
      zpc_unpack8(sw[v], fw);
      zpc_unpack8(sb[v], fb);
#pragma unroll
      for (int j = 0; j < 8; j++) f[j] = (f[j] - m) * r * fw[j] + fb[j];
      o[v] = zpc_pack8(f);
    }
    if (lane == 0) {
      if (mean) mean[row] = m;
      if (rstd) rstd[row] = r;
    }
  }
}

/* ---------------------------------------------------------------- backward */

/* one row's inputs in registers: x, dout, dinp (zeros when dinp is NULL and in padding
 * vectors) and the row's statistics */
template <int VPL>
struct zpc_lnw_row {
  uint4 x[VPL], dy[VPL], dx[VPL];
  float m, r;
};

template <int VPL>
__device__ __forceinline__ void zpc_lnw_bwd_load(zpc_lnw_row<VPL>& t, const bf16* dinp,
                                                 const bf16* dout, const bf16* inp,
                                                 const float* mean, const float* rstd, int row,
                                                 int C, int nvec, int lane) {
  const size_t base = (size_t)row * C;
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
  t.m = mean[row];
  t.r = rstd[row];
#pragma unroll
  for (int k = 0; k < VPL; k++) {
    const int v = lane + 32 * k;
    const bool ok = v < nvec;
    t.x[k] = ok ? __ldcs((const uint4*)(inp + base) + v) : zero;
    t.dy[k] = ok ? __ldcs((const uint4*)(dout + base) + v) : zero;
    t.dx[k] = (ok && dinp) ? *((const uint4*)(dinp + base) + v) : zero;
  }
}

/* the dw / dbias slots of shared memory: per warp float4 [VPL][4][32] ([k][q][lane]: q 0, 1
 * the 8 dw columns of vector lane + 32 k, q 2, 3 its 8 dbias columns); dynamic, so the
 * forward-only and no-accumulation launches need none */
extern __shared__ float4 zpc_lnw_acc[];

/* chunks ch = blockIdx.x, + gridDim.x, ... of rpc rows (nchunks in all); chunk ch writes
 * partial row ch of pdw / pdb ([nchunks, C] fp32 each; NULL: not wanted; both NULL: the launch
 * has no dynamic shared memory) */
template <int VPL>
__global__ void __launch_bounds__(ZPC_LNW_THREADS)
    zpc_lnw_bwd_kernel(bf16* dinp, float* pdw, float* pdb, const bf16* dout, const bf16* inp,
                       const bf16* w, const float* mean, const float* rstd, int N, int C,
                       int rpc, int nchunks) {
  __shared__ uint4 sw[32 * VPL];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nvec = C >> 3;
  const bool acc = pdw || pdb; /* uniform over the grid */
  float4* my = zpc_lnw_acc + warp * (VPL * 4 * 32) + lane;
  const float4 zero4 = make_float4(0.0f, 0.0f, 0.0f, 0.0f);

  /* the warp's first row, loaded before anything else */
  zpc_lnw_row<VPL> nx;
  {
    const int ch = blockIdx.x;
    if (ch < nchunks && warp < min(rpc, N - ch * rpc))
      zpc_lnw_bwd_load<VPL>(nx, dinp, dout, inp, mean, rstd, ch * rpc + warp, C, nvec, lane);
  }
  for (int v = threadIdx.x; v < 32 * VPL; v += blockDim.x)
    sw[v] = v < nvec ? __ldg((const uint4*)w + v) : make_uint4(0u, 0u, 0u, 0u);
  if (acc) {
#pragma unroll
    for (int k = 0; k < 4 * VPL; k++) my[32 * k] = zero4; /* this lane's own slots */
  }
  __syncthreads();

  for (int ch = blockIdx.x; ch < nchunks; ch += gridDim.x) {
    const int r0 = ch * rpc; /* < N */
    const int nr = min(rpc, N - r0);
    for (int i = warp; i < nr; i += ZPC_LNW_WARPS) {
      zpc_lnw_row<VPL> cu = nx;
      /* the next row: this chunk's, else the first of the warp's next chunk (none past the
       * end; only the last chunk can hold fewer than ZPC_LNW_WARPS rows) */
      int next = -1;
      if (i + ZPC_LNW_WARPS < nr) {
        next = r0 + i + ZPC_LNW_WARPS;
      } else if ((int)gridDim.x < nchunks - ch) {
        const int q0 = (ch + gridDim.x) * rpc;
        if (warp < min(rpc, N - q0)) next = q0 + warp;
      }
      if (next >= 0) zpc_lnw_bwd_load<VPL>(nx, dinp, dout, inp, mean, rstd, next, C, nvec, lane);

      /* mean over the row of g and of g * xhat (only needed for dinp) */
      float s0 = 0.0f, s1 = 0.0f;
      if (dinp) {
#pragma unroll
        for (int k = 0; k < VPL; k++) {
          float fx[8], fdy[8], fw[8];
          zpc_unpack8(cu.x[k], fx);
          zpc_unpack8(cu.dy[k], fdy);
          zpc_unpack8(sw[lane + 32 * k], fw);
#pragma unroll
          for (int j = 0; j < 8; j++) {
            const float xhat = (fx[j] - cu.m) * cu.r;
            const float g = fw[j] * fdy[j];
            s0 += g;
            s1 += g * xhat;
          }
        }
        s0 = zpc_warp_sum(s0) / (float)C;
        s1 = zpc_warp_sum(s1) / (float)C;
      }
      /* dinp update and this lane's dw / dbias slots */
      uint4* dx = dinp ? (uint4*)(dinp + (size_t)(r0 + i) * C) : NULL;
#pragma unroll
      for (int k = 0; k < VPL; k++) {
        const int v = lane + 32 * k;
        if (v >= nvec) continue;
        float fx[8], fdy[8], fw[8], fdx[8], xh[8];
        zpc_unpack8(cu.x[k], fx);
        zpc_unpack8(cu.dy[k], fdy);
        zpc_unpack8(sw[v], fw);
        zpc_unpack8(cu.dx[k], fdx);
#pragma unroll
        for (int j = 0; j < 8; j++) {
          xh[j] = (fx[j] - cu.m) * cu.r;
          fdx[j] += cu.r * (fw[j] * fdy[j] - s0 - xh[j] * s1);
        }
        if (dx) dx[v] = zpc_pack8(fdx);
        if (acc) {
          float4* a = my + 32 * (4 * k);
          float4 t;
          t = a[0];
          a[0] = make_float4(t.x + fdy[0] * xh[0], t.y + fdy[1] * xh[1], t.z + fdy[2] * xh[2],
                             t.w + fdy[3] * xh[3]);
          t = a[32];
          a[32] = make_float4(t.x + fdy[4] * xh[4], t.y + fdy[5] * xh[5], t.z + fdy[6] * xh[6],
                              t.w + fdy[7] * xh[7]);
          t = a[64];
          a[64] = make_float4(t.x + fdy[0], t.y + fdy[1], t.z + fdy[2], t.w + fdy[3]);
          t = a[96];
          a[96] = make_float4(t.x + fdy[4], t.y + fdy[5], t.z + fdy[6], t.w + fdy[7]);
        }
      }
    }
    /* the chunk's partial rows: the 4 warps' slots added in warp order, then zeroed (each slot
     * is read and zeroed by one thread, between the two barriers) */
    if (acc) {
      __syncthreads();
      for (int v = threadIdx.x; v < nvec; v += blockDim.x) {
        float4* s = zpc_lnw_acc + (v >> 5) * (4 * 32) + (v & 31);
        float4 a[4];
#pragma unroll
        for (int q = 0; q < 4; q++) {
          a[q] = s[32 * q];
          s[32 * q] = zero4;
        }
#pragma unroll
        for (int wi = 1; wi < ZPC_LNW_WARPS; wi++) {
          float4* sv = s + wi * (VPL * 4 * 32);
#pragma unroll
          for (int q = 0; q < 4; q++) {
            const float4 t = sv[32 * q];
            sv[32 * q] = zero4;
            a[q] = make_float4(a[q].x + t.x, a[q].y + t.y, a[q].z + t.z, a[q].w + t.w);
          }
        }
        /* 32-byte aligned: C % 8 == 0, scratch 256-aligned */
        const size_t o = (size_t)ch * C + (size_t)v * 8;
        if (pdw) {
          ((float4*)(pdw + o))[0] = a[0];
          ((float4*)(pdw + o))[1] = a[1];
        }
        if (pdb) {
          ((float4*)(pdb + o))[0] = a[2];
          ((float4*)(pdb + o))[1] = a[3];
        }
      }
      __syncthreads();
    }
  }
}

/* dst[c] (+)= sum_r part[r, c] for dst = dw (blockIdx.y 0) and dbias (1), each skipped when
 * NULL: zpc_colsum_add_kernel's order and rounding (kernels_reduce.cu), both in one launch.
 * Block (32, 32): x = column in a 32-column tile, y = lane over the partial rows. */
__global__ void zpc_lnw_colsum_kernel(bf16* dw, bf16* db, const float* pdw, const float* pdb,
                                      int R, int C, int overwrite) {
  bf16* dst = blockIdx.y ? db : dw;
  if (!dst) return; /* uniform over the block */
  zpc_colsum_block(dst, blockIdx.y ? pdb : pdw, R, C, overwrite);
}

/* ---------------------------------------------------------------- host side */

/* blocks to launch for `work` blocks' worth of items: at most what fits on the device at once */
template <typename K>
static int zpc_lnw_grid(zp_backend* b, K kernel, size_t smem, int work, unsigned* grid) {
  int per_sm = 0;
  ZPC_CUDA(b, cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, ZPC_LNW_THREADS,
                                                            smem));
  long long cap = (long long)(per_sm > 0 ? per_sm : 1) * (b->sm_count > 0 ? b->sm_count : 132);
  *grid = (unsigned)(work < cap ? work : cap);
  return ZP_OK;
}

template <int VPL>
static int zpc_lnw_fwd(zp_backend* b, bf16* out, float* mean, float* rstd, const bf16* inp,
                       const bf16* w, const bf16* bias, int N, int C) {
  unsigned grid = 1;
  int rc = zpc_lnw_grid(b, zpc_lnw_fwd_kernel<VPL>, 0,
                        N / ZPC_LNW_WARPS + (N % ZPC_LNW_WARPS != 0), &grid);
  if (rc) return rc;
  zpc_lnw_fwd_kernel<VPL><<<grid, ZPC_LNW_THREADS, 0, b->stream>>>(out, mean, rstd, inp, w, bias,
                                                                   N, C);
  ZPC_LAUNCHED(b, "layernorm_fwd (warp)");
  return ZP_OK;
}

int zpc_layernorm_fwd_warp(zp_backend* b, void* out, float* mean, float* rstd, const void* inp,
                           const void* w, const void* bias, int N, int C) {
  if (N <= 0 || C <= 0 || !w || !out || !inp)
    return ZPC_INVALID(b, "cuda backend: layernorm_fwd: bad arguments N=%d C=%d w=%p", N, C, w);
  if (C % 8 != 0 || C > ZPC_LNW_FWD_MAX_C || !zpc_al16(out) || !zpc_al16(inp) ||
      !zpc_al16(w) || !zpc_al16(bias))
    return zpc_layernorm_fwd_fast(b, out, mean, rstd, inp, w, bias, N, C);
  bf16* o = (bf16*)out;
  const bf16* x = (const bf16*)inp;
  const bf16* wb = (const bf16*)w;
  const bf16* bb = (const bf16*)bias;
  switch ((C / 8 + 31) / 32) {
    case 1: return zpc_lnw_fwd<1>(b, o, mean, rstd, x, wb, bb, N, C);
    case 2: return zpc_lnw_fwd<2>(b, o, mean, rstd, x, wb, bb, N, C);
    case 3: return zpc_lnw_fwd<3>(b, o, mean, rstd, x, wb, bb, N, C);
    case 4: return zpc_lnw_fwd<4>(b, o, mean, rstd, x, wb, bb, N, C);
    case 5: return zpc_lnw_fwd<5>(b, o, mean, rstd, x, wb, bb, N, C);
    case 6: return zpc_lnw_fwd<6>(b, o, mean, rstd, x, wb, bb, N, C);
    case 7: return zpc_lnw_fwd<7>(b, o, mean, rstd, x, wb, bb, N, C);
    case 8: return zpc_lnw_fwd<8>(b, o, mean, rstd, x, wb, bb, N, C);
    case 9: case 10: case 11: case 12:
      return zpc_lnw_fwd<12>(b, o, mean, rstd, x, wb, bb, N, C);
    default: return zpc_lnw_fwd<16>(b, o, mean, rstd, x, wb, bb, N, C); /* 13..16 */
  }
}

template <int VPL>
static int zpc_lnw_bwd(zp_backend* b, bf16* dinp, float* pdw, float* pdb, const bf16* dout,
                       const bf16* inp, const bf16* w, const float* mean, const float* rstd,
                       int N, int C, int rpc, int nchunks) {
  /* the attribute is always the accumulating launch's size (the same value from every
   * thread and backend), the launch asks for none when nothing accumulates */
  const size_t smax = (size_t)ZPC_LNW_WARPS * VPL * 4 * 32 * sizeof(float4);
  const size_t smem = (pdw || pdb) ? smax : 0;
  ZPC_CUDA(b, cudaFuncSetAttribute(zpc_lnw_bwd_kernel<VPL>,
                                   cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smax));
  unsigned grid = 1;
  int rc = zpc_lnw_grid(b, zpc_lnw_bwd_kernel<VPL>, smem, nchunks, &grid);
  if (rc) return rc;
  zpc_lnw_bwd_kernel<VPL><<<grid, ZPC_LNW_THREADS, smem, b->stream>>>(
      dinp, pdw, pdb, dout, inp, w, mean, rstd, N, C, rpc, nchunks);
  ZPC_LAUNCHED(b, "layernorm_bwd (warp)");
  return ZP_OK;
}

int zpc_layernorm_bwd_warp(zp_backend* b, void* dinp, void* dw, void* dbias, const void* dout,
                           const void* inp, const void* w, const float* mean, const float* rstd,
                           int N, int C) {
  if (N <= 0 || C <= 0 || !w || !mean || !rstd || !dout || !inp)
    return ZPC_INVALID(b, "cuda backend: layernorm_bwd: bad arguments N=%d C=%d", N, C);
  if (!dinp && !dw && !dbias) return ZP_OK;
  if (C % 8 != 0 || C > ZPC_LNW_BWD_MAX_C || !zpc_al16(dinp) || !zpc_al16(dout) ||
      !zpc_al16(inp) || !zpc_al16(w))
    return zpc_layernorm_bwd_fast(b, dinp, dw, dbias, dout, inp, w, mean, rstd, N, C);
  /* row chunks: a function of N only (see the top) */
  int rpc = 0, nchunks = 0;
  float *pdw = NULL, *pdb = NULL;
  {
    int rc = zpc_ln_partials(b, N, C, dw != NULL, dbias != NULL, &rpc, &nchunks, &pdw, &pdb);
    if (rc) return rc;
  }
  bf16* dx = (bf16*)dinp;
  const bf16* dy = (const bf16*)dout;
  const bf16* x = (const bf16*)inp;
  const bf16* wb = (const bf16*)w;
  int rc;
  switch ((C / 8 + 31) / 32) {
    case 1: rc = zpc_lnw_bwd<1>(b, dx, pdw, pdb, dy, x, wb, mean, rstd, N, C, rpc, nchunks); break;
    case 2: rc = zpc_lnw_bwd<2>(b, dx, pdw, pdb, dy, x, wb, mean, rstd, N, C, rpc, nchunks); break;
    case 3: rc = zpc_lnw_bwd<3>(b, dx, pdw, pdb, dy, x, wb, mean, rstd, N, C, rpc, nchunks); break;
    case 4: rc = zpc_lnw_bwd<4>(b, dx, pdw, pdb, dy, x, wb, mean, rstd, N, C, rpc, nchunks); break;
    case 5: rc = zpc_lnw_bwd<5>(b, dx, pdw, pdb, dy, x, wb, mean, rstd, N, C, rpc, nchunks); break;
    case 6: rc = zpc_lnw_bwd<6>(b, dx, pdw, pdb, dy, x, wb, mean, rstd, N, C, rpc, nchunks); break;
    case 7: rc = zpc_lnw_bwd<7>(b, dx, pdw, pdb, dy, x, wb, mean, rstd, N, C, rpc, nchunks); break;
    default: rc = zpc_lnw_bwd<8>(b, dx, pdw, pdb, dy, x, wb, mean, rstd, N, C, rpc, nchunks); break;
  }
  if (rc) return rc;
  if (dw || dbias) {
    dim3 grid((C + 31) / 32, 2), block(32, 32);
    zpc_lnw_colsum_kernel<<<grid, block, 0, b->stream>>>((bf16*)dw, (bf16*)dbias, pdw, pdb,
                                                         nchunks, C, b->grad_overwrite);
    ZPC_LAUNCHED(b, "layernorm_bwd colsum (warp)");
  }
  return ZP_OK;
}
