/* kernels_layernorm.cu: LayerNorm forward and backward over rows of C (bf16 data, fp32 stats),
 * vectorized (ZP_CUDA_LN=fast; kernels_layernorm_legacy.cu has the previous kernels).
 *
 * Forward: out = (x - mean) * rstd * w + bias, mean and rstd (= 1/sqrt(var + 1e-5), biased
 * variance) stored as fp32 [N] (each skipped when NULL; bias may be NULL). Two-pass statistics
 * in fp32 (mean first, then the centred sum of squares: no cancellation), one rounding to bf16.
 * Backward (accumulates dinp, dw, dbias; each may be NULL, then it is skipped): per row, with
 * xhat = (x - mean) * rstd and g = w * dout: dinp += rstd * (g - mean(g) - xhat * mean(g * xhat));
 * dw += sum_rows dout * xhat, dbias += sum_rows dout.
 *
 * Layout: one block works on a few rows at a time; its threads split a row's columns and every
 * thread owns the same columns in every row, so it keeps its share of dw / dbias in registers.
 * Row sums go through zpc_ln_block_sum (warp shuffles, then the warps in order: one barrier).
 * - Vector path (C % 8 == 0 and every pointer 16-byte aligned): 16-byte loads of 8 bf16; the
 *   block has T = 32 * ceil(C / (8 * VPT * 32)) <= 512 threads, thread t owns the 8-column
 *   vectors t, t + T, ... (VPT of them: 1 up to C = 4096, 2 up to C = 8192) and holds the raw
 *   data of ROWS rows in registers (4 rows at VPT 1, 2 at VPT 2; loaded up front, reused by
 *   every pass). The backward needs up to 128 registers per thread (sm_90), no spills.
 *   ZP_CUDA_LN=pf (the default): at VPT 1 the same kernels with PF = true: 2 rows per
 *   iteration instead of 4, and the next iteration's rows are loaded into a second set of
 *   registers before this iteration's block sums, so the loads wait across the barriers
 *   instead of after them. Every row's arithmetic and every sum's order are unchanged: the
 *   same bits as fast. VPT 2 (C > 4096) runs the fast kernels in both modes.
 * - Any other C or alignment (and C > 8192): scalar loads, 256 threads, one row at a time,
 *   the row re-read from cache for each pass; its dw / dbias partials live in the scratch rows.
 * Deterministic, no atomics: the backward splits the rows into P = ceil(N / rpc) chunks of
 * rpc = max(32, ceil(N / 1024)) rows (a function of N only); each chunk is done by one block,
 * in row order, and leaves one fp32 partial row of dw and of dbias in scratch ([P, C] each);
 * zpc_colsum_add then sums the P rows in a fixed order into dw / dbias. The grid (how many
 * blocks, from the device's occupancy) only decides which block takes which chunk, and T, VPT
 * and ROWS are functions of C only, so every sum's order is a function of (N, C): results are
 * bitwise repeatable run to run and across devices.
 */
#include "cuda_common.cuh"

#define ZPC_LN_EPS 1e-5f
#define ZPC_LN_MAX_THREADS 512 /* vector path block size limit */
#define ZPC_LN_MAX_WARPS (ZPC_LN_MAX_THREADS / 32)
#define ZPC_LN_ANY_THREADS 256 /* scalar path block size */

/* ---------------------------------------------------------------- device helpers */

/* Block-wide sums of v[0..K), returned in v in every thread (identical bits everywhere): the
 * xor-shuffle tree in each warp, then the warp sums added in warp order. blockDim.x must be a
 * multiple of 32 and every thread of the block must call it the same number of times.
 * buf holds 2 * ZPC_LN_MAX_WARPS * K floats, used in alternate halves (parity flips each call):
 * one barrier per call suffices, since a thread that rewrites a half in call i + 2 has passed
 * the barrier of call i + 1, which every thread reaches only after its reads of call i. */
template <int K>
__device__ __forceinline__ void zpc_ln_block_sum(float (&v)[K], float* buf, int& parity) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  float* sh = buf + parity * (ZPC_LN_MAX_WARPS * K);
  parity ^= 1;
#pragma unroll
  for (int k = 0; k < K; k++) v[k] = zpc_warp_sum(v[k]);
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < K; k++) sh[warp * K + k] = v[k];
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; k++) {
    float t = 0.0f;
    for (int i = 0; i < nw; i++) t += sh[i * K + k];
    v[k] = t;
  }
}


/* ---------------------------------------------------------------- forward */

/* the raw rows row0 .. row0 + ROWS - 1 of x (zeros past N and in padding lanes) */
template <int VPT, int ROWS>
__device__ __forceinline__ void zpc_ln_fwd_load(uint4 (&xv)[ROWS][VPT], const bf16* inp, int row0,
                                                int N, int C, int nvec) {
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
  for (int i = 0; i < ROWS; i++) {
    const bool rowok = i < N - row0;
    const uint4* x = (const uint4*)(inp + (size_t)(rowok ? row0 + i : row0) * C);
#pragma unroll
    for (int k = 0; k < VPT; k++) {
      const int v = threadIdx.x + k * blockDim.x;
      xv[i][k] = (rowok && v < nvec) ? x[v] : zero;
    }
  }
}

/* vector path: row groups g = blockIdx.x, + gridDim.x, ... of ROWS rows (ngroups in all).
 * PF (ZP_CUDA_LN=pf): the next group's rows are loaded into registers before this group's
 * reductions, so the loads are in flight across the barriers (same arithmetic, same bits). */
template <int VPT, int ROWS, bool PF>
__global__ void __launch_bounds__(ZPC_LN_MAX_THREADS)
    zpc_ln_fwd_vec_kernel(bf16* out, float* mean, float* rstd, const bf16* inp, const bf16* w,
                          const bf16* bias, int N, int C, int ngroups) {
  __shared__ float red[2 * ZPC_LN_MAX_WARPS * ROWS];
  int parity = 0;
  const int nvec = C >> 3;
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
  uint4 wv[VPT], bv[VPT];
#pragma unroll
  for (int k = 0; k < VPT; k++) {
    const int v = threadIdx.x + k * blockDim.x;
    wv[k] = v < nvec ? __ldg((const uint4*)w + v) : zero;
    bv[k] = (bias && v < nvec) ? __ldg((const uint4*)bias + v) : zero;
  }
  uint4 nx[ROWS][VPT]; /* PF: the next group's rows */
  if (PF && (int)blockIdx.x < ngroups) zpc_ln_fwd_load<VPT, ROWS>(nx, inp, blockIdx.x * ROWS, N, C, nvec);
  for (int g = blockIdx.x; g < ngroups; g += gridDim.x) {
    const int row0 = g * ROWS; /* < N */
    uint4 xv[ROWS][VPT];
    float s[ROWS];
    if (PF) {
#pragma unroll
      for (int i = 0; i < ROWS; i++)
#pragma unroll
        for (int k = 0; k < VPT; k++) xv[i][k] = nx[i][k];
      if (g + (int)gridDim.x < ngroups)
        zpc_ln_fwd_load<VPT, ROWS>(nx, inp, (g + gridDim.x) * ROWS, N, C, nvec);
    } else {
      zpc_ln_fwd_load<VPT, ROWS>(xv, inp, row0, N, C, nvec);
    }
    /* pass 1: mean (padding lanes and rows hold zeros) */
#pragma unroll
    for (int i = 0; i < ROWS; i++) {
      s[i] = 0.0f;
#pragma unroll
      for (int k = 0; k < VPT; k++) {
        float f[8];
        zpc_unpack8(xv[i][k], f);
#pragma unroll
        for (int j = 0; j < 8; j++) s[i] += f[j];
      }
    }
    zpc_ln_block_sum<ROWS>(s, red, parity);
    float m[ROWS];
#pragma unroll
    for (int i = 0; i < ROWS; i++) {
      m[i] = s[i] / (float)C;
      s[i] = 0.0f;
    }
    /* pass 2: centred sum of squares over the real columns only */
#pragma unroll
    for (int i = 0; i < ROWS; i++)
#pragma unroll
      for (int k = 0; k < VPT; k++) {
        if ((int)threadIdx.x + k * (int)blockDim.x >= nvec) continue;
        float f[8];
        zpc_unpack8(xv[i][k], f);
#pragma unroll
        for (int j = 0; j < 8; j++) {
          const float d = f[j] - m[i];
          s[i] += d * d;
        }
      }
    zpc_ln_block_sum<ROWS>(s, red, parity);
    /* normalize and store */
#pragma unroll
    for (int i = 0; i < ROWS; i++) {
      if (i >= N - row0) continue;
      const int row = row0 + i;
      const float r = rsqrtf(s[i] / (float)C + ZPC_LN_EPS);
      uint4* o = (uint4*)(out + (size_t)row * C);
#pragma unroll
      for (int k = 0; k < VPT; k++) {
        const int v = threadIdx.x + k * blockDim.x;
        if (v >= nvec) continue;
        float f[8], fw[8], fb[8];
        zpc_unpack8(xv[i][k], f);
        zpc_unpack8(wv[k], fw);
        zpc_unpack8(bv[k], fb);
#pragma unroll
        for (int j = 0; j < 8; j++) f[j] = (f[j] - m[i]) * r * fw[j] + fb[j];
        o[v] = zpc_pack8(f);
      }
      if (threadIdx.x == 0) {
        if (mean) mean[row] = m[i];
        if (rstd) rstd[row] = r;
      }
    }
  }
}

/* scalar path: one row at a time, rows blockIdx.x, + gridDim.x, ...; ZPC_LN_ANY_THREADS */
__global__ void __launch_bounds__(ZPC_LN_ANY_THREADS)
    zpc_ln_fwd_any_kernel(bf16* out, float* mean, float* rstd, const bf16* inp, const bf16* w,
                          const bf16* bias, int N, int C) {
  __shared__ float red[2 * ZPC_LN_MAX_WARPS];
  int parity = 0;
  for (long long row = blockIdx.x; row < N; row += gridDim.x) {
    const bf16* x = inp + (size_t)row * C;
    bf16* o = out + (size_t)row * C;
    float s[1] = {0.0f};
    for (int c = threadIdx.x; c < C; c += blockDim.x) s[0] += bf2f(x[c]);
    zpc_ln_block_sum<1>(s, red, parity);
    const float m = s[0] / (float)C;
    s[0] = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      const float d = bf2f(x[c]) - m;
      s[0] += d * d;
    }
    zpc_ln_block_sum<1>(s, red, parity);
    const float r = rsqrtf(s[0] / (float)C + ZPC_LN_EPS);
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      const float n = (bf2f(x[c]) - m) * r;
      o[c] = f2bf(n * bf2f(w[c]) + (bias ? bf2f(bias[c]) : 0.0f));
    }
    if (threadIdx.x == 0) {
      if (mean) mean[row] = m;
      if (rstd) rstd[row] = r;
    }
  }
}

/* ---------------------------------------------------------------- backward */

/* vector path: chunks ch = blockIdx.x, + gridDim.x, ... of rpc rows (nchunks in all); chunk ch
 * writes partial row ch of pdw / pdb ([nchunks, C] fp32 each; NULL: not wanted) */
/* rows r0 + i0 .. + ROWS - 1 of the chunk [r0, r0 + nr): x, dout, dinp (when accumulated) and
 * the row statistics; zeros past the chunk's end and in padding lanes */
template <int VPT, int ROWS>
__device__ __forceinline__ void zpc_ln_bwd_load(uint4 (&xv)[ROWS][VPT], uint4 (&dyv)[ROWS][VPT],
                                                uint4 (&dxv)[ROWS][VPT], float (&m)[ROWS],
                                                float (&r)[ROWS], const bf16* dinp,
                                                const bf16* dout, const bf16* inp,
                                                const float* mean, const float* rstd, int r0,
                                                int i0, int nr, int C, int nvec) {
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
  for (int i = 0; i < ROWS; i++) {
    const bool rowok = i0 + i < nr;
    const int row = rowok ? r0 + i0 + i : r0;
    const size_t base = (size_t)row * C;
    m[i] = rowok ? mean[row] : 0.0f;
    r[i] = rowok ? rstd[row] : 0.0f;
#pragma unroll
    for (int k = 0; k < VPT; k++) {
      const int v = threadIdx.x + k * blockDim.x;
      const bool ok = rowok && v < nvec;
      xv[i][k] = ok ? __ldcs((const uint4*)(inp + base) + v) : zero;
      dyv[i][k] = ok ? __ldcs((const uint4*)(dout + base) + v) : zero;
      dxv[i][k] = (ok && dinp) ? *((const uint4*)(dinp + base) + v) : zero;
    }
  }
}

/* PF (ZP_CUDA_LN=pf): the chunk's next ROWS rows are loaded before this iteration's reduction
 * and stores, so they are in flight across the barrier (same arithmetic in the same order:
 * the same bits as PF = false at any ROWS; see zpc_ln_block_sum) */
template <int VPT, int ROWS, bool PF>
__global__ void __launch_bounds__(ZPC_LN_MAX_THREADS)
    zpc_ln_bwd_vec_kernel(bf16* dinp, float* pdw, float* pdb, const bf16* dout, const bf16* inp,
                          const bf16* w, const float* mean, const float* rstd, int N, int C,
                          int rpc, int nchunks) {
  __shared__ float red[2 * ZPC_LN_MAX_WARPS * 2 * ROWS];
  int parity = 0;
  const int nvec = C >> 3;
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
  uint4 wv[VPT];
#pragma unroll
  for (int k = 0; k < VPT; k++) {
    const int v = threadIdx.x + k * blockDim.x;
    wv[k] = v < nvec ? __ldg((const uint4*)w + v) : zero;
  }
  for (int ch = blockIdx.x; ch < nchunks; ch += gridDim.x) {
    const int r0 = ch * rpc; /* < N */
    const int nr = min(rpc, N - r0);
    float adw[VPT][8], adb[VPT][8];
#pragma unroll
    for (int k = 0; k < VPT; k++)
#pragma unroll
      for (int j = 0; j < 8; j++) adw[k][j] = adb[k][j] = 0.0f;

    float nm[ROWS], nrs[ROWS]; /* PF: the next iteration's rows */
    uint4 nxv[ROWS][VPT], ndyv[ROWS][VPT], ndxv[ROWS][VPT];
    if (PF)
      zpc_ln_bwd_load<VPT, ROWS>(nxv, ndyv, ndxv, nm, nrs, dinp, dout, inp, mean, rstd, r0, 0, nr, C,
                                 nvec);
    for (int i0 = 0; i0 < nr; i0 += ROWS) {
      /* ROWS rows up front (zeros past the chunk's end and in padding lanes) */
      float m[ROWS], r[ROWS];
      uint4 xv[ROWS][VPT], dyv[ROWS][VPT], dxv[ROWS][VPT];
      if (PF) {
#pragma unroll
        for (int i = 0; i < ROWS; i++) {
          m[i] = nm[i];
          r[i] = nrs[i];
#pragma unroll
          for (int k = 0; k < VPT; k++) {
            xv[i][k] = nxv[i][k];
            dyv[i][k] = ndyv[i][k];
            dxv[i][k] = ndxv[i][k];
          }
        }
        if (i0 + ROWS < nr)
          zpc_ln_bwd_load<VPT, ROWS>(nxv, ndyv, ndxv, nm, nrs, dinp, dout, inp, mean, rstd, r0,
                                     i0 + ROWS, nr, C, nvec);
      } else {
        zpc_ln_bwd_load<VPT, ROWS>(xv, dyv, dxv, m, r, dinp, dout, inp, mean, rstd, r0, i0, nr, C,
                                   nvec);
      }
      /* s[2i], s[2i+1]: mean over row i of g and of g * xhat (only needed for dinp) */
      float s[2 * ROWS];
#pragma unroll
      for (int i = 0; i < 2 * ROWS; i++) s[i] = 0.0f;
      if (dinp) { /* uniform over the block */
#pragma unroll
        for (int i = 0; i < ROWS; i++) {
#pragma unroll
          for (int k = 0; k < VPT; k++) {
            float fx[8], fdy[8], fw[8];
            zpc_unpack8(xv[i][k], fx);
            zpc_unpack8(dyv[i][k], fdy);
            zpc_unpack8(wv[k], fw);
#pragma unroll
            for (int j = 0; j < 8; j++) {
              const float xhat = (fx[j] - m[i]) * r[i];
              const float g = fw[j] * fdy[j];
              s[2 * i] += g;
              s[2 * i + 1] += g * xhat;
            }
          }
        }
        zpc_ln_block_sum<2 * ROWS>(s, red, parity);
#pragma unroll
        for (int i = 0; i < 2 * ROWS; i++) s[i] /= (float)C;
      }
      /* dinp update and this thread's dw / dbias partials, rows in order */
#pragma unroll
      for (int i = 0; i < ROWS; i++) {
        if (i0 + i >= nr) continue;
        uint4* dx = dinp ? (uint4*)(dinp + (size_t)(r0 + i0 + i) * C) : NULL;
#pragma unroll
        for (int k = 0; k < VPT; k++) {
          const int v = threadIdx.x + k * blockDim.x;
          if (v >= nvec) continue;
          float fx[8], fdy[8], fw[8], fdx[8];
          zpc_unpack8(xv[i][k], fx);
          zpc_unpack8(dyv[i][k], fdy);
          zpc_unpack8(wv[k], fw);
          zpc_unpack8(dxv[i][k], fdx);
#pragma unroll
          for (int j = 0; j < 8; j++) {
            const float xhat = (fx[j] - m[i]) * r[i];
            fdx[j] += r[i] * (fw[j] * fdy[j] - s[2 * i] - xhat * s[2 * i + 1]);
            adw[k][j] += fdy[j] * xhat;
            adb[k][j] += fdy[j];
          }
          if (dx) dx[v] = zpc_pack8(fdx);
        }
      }
    }
    /* this chunk's partial row (fp32, 32-byte aligned: C % 8 == 0, scratch 256-aligned) */
#pragma unroll
    for (int k = 0; k < VPT; k++) {
      const int v = threadIdx.x + k * blockDim.x;
      if (v >= nvec) continue;
      const size_t o = (size_t)ch * C + (size_t)v * 8;
      if (pdw) {
        ((float4*)(pdw + o))[0] = make_float4(adw[k][0], adw[k][1], adw[k][2], adw[k][3]);
        ((float4*)(pdw + o))[1] = make_float4(adw[k][4], adw[k][5], adw[k][6], adw[k][7]);
      }
      if (pdb) {
        ((float4*)(pdb + o))[0] = make_float4(adb[k][0], adb[k][1], adb[k][2], adb[k][3]);
        ((float4*)(pdb + o))[1] = make_float4(adb[k][4], adb[k][5], adb[k][6], adb[k][7]);
      }
    }
  }
}

/* scalar path: as the vector path, one row at a time; thread t owns columns t, t + T, ... of
 * the chunk's partial rows and accumulates into them in place (the first row stores) */
__global__ void __launch_bounds__(ZPC_LN_ANY_THREADS)
    zpc_ln_bwd_any_kernel(bf16* dinp, float* pdw, float* pdb, const bf16* dout, const bf16* inp,
                          const bf16* w, const float* mean, const float* rstd, int N, int C,
                          int rpc, int nchunks) {
  __shared__ float red[2 * ZPC_LN_MAX_WARPS * 2];
  int parity = 0;
  for (int ch = blockIdx.x; ch < nchunks; ch += gridDim.x) {
    const int r0 = ch * rpc;
    const int nr = min(rpc, N - r0);
    float* my_dw = pdw ? pdw + (size_t)ch * C : NULL;
    float* my_db = pdb ? pdb + (size_t)ch * C : NULL;
    for (int i = 0; i < nr; i++) {
      const size_t base = (size_t)(r0 + i) * C;
      const bf16* x = inp + base;
      const bf16* dy = dout + base;
      const float m = mean[r0 + i], r = rstd[r0 + i];
      float s[2] = {0.0f, 0.0f};
      if (dinp) { /* uniform over the block */
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
          const float xhat = (bf2f(x[c]) - m) * r;
          const float g = bf2f(w[c]) * bf2f(dy[c]);
          s[0] += g;
          s[1] += g * xhat;
        }
        zpc_ln_block_sum<2>(s, red, parity);
        s[0] /= (float)C;
        s[1] /= (float)C;
      }
      for (int c = threadIdx.x; c < C; c += blockDim.x) {
        const float xhat = (bf2f(x[c]) - m) * r;
        const float d = bf2f(dy[c]);
        if (dinp) {
          bf16* dx = dinp + base;
          dx[c] = f2bf(bf2f(dx[c]) + r * (bf2f(w[c]) * d - s[0] - xhat * s[1]));
        }
        if (my_dw) my_dw[c] = i ? my_dw[c] + d * xhat : d * xhat;
        if (my_db) my_db[c] = i ? my_db[c] + d : d;
      }
    }
  }
}

/* ---------------------------------------------------------------- host side */


/* blocks to launch for `work` independent items: at most what fits on the device at once */
template <typename K>
static int zpc_ln_grid(zp_backend* b, K kernel, int threads, int work, unsigned* grid) {
  int per_sm = 0;
  ZPC_CUDA(b, cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, 0));
  long long cap = (long long)(per_sm > 0 ? per_sm : 1) * (b->sm_count > 0 ? b->sm_count : 132);
  *grid = (unsigned)(work < cap ? work : cap);
  return ZP_OK;
}

/* the vector path's shape for C (C % 8 == 0): VPT (1 or 2) vectors per thread and T threads;
 * 0 when C is too wide for it */
static int zpc_ln_vpt(int C, int* T) {
  int nvec = C / 8;
  for (int vpt = 1; vpt <= 2; vpt++) {
    int per = (nvec + vpt - 1) / vpt;
    if (per <= ZPC_LN_MAX_THREADS) {
      *T = (per + 31) / 32 * 32;
      return vpt;
    }
  }
  return 0;
}

template <int VPT, int ROWS, bool PF>
static int zpc_ln_fwd_vec(zp_backend* b, int T, bf16* out, float* mean, float* rstd,
                          const bf16* inp, const bf16* w, const bf16* bias, int N, int C) {
  int ngroups = N / ROWS + (N % ROWS != 0);
  unsigned grid = 1;
  int rc = zpc_ln_grid(b, zpc_ln_fwd_vec_kernel<VPT, ROWS, PF>, T, ngroups, &grid);
  if (rc) return rc;
  zpc_ln_fwd_vec_kernel<VPT, ROWS, PF>
      <<<grid, T, 0, b->stream>>>(out, mean, rstd, inp, w, bias, N, C, ngroups);
  ZPC_LAUNCHED(b, "layernorm_fwd");
  return ZP_OK;
}

int zpc_layernorm_fwd_fast(zp_backend* b, void* out, float* mean, float* rstd, const void* inp,
                      const void* w, const void* bias, int N, int C) {
  if (N <= 0 || C <= 0 || !w || !out || !inp)
    return ZPC_INVALID(b, "cuda backend: layernorm_fwd: bad arguments N=%d C=%d w=%p", N, C, w);
  bf16* o = (bf16*)out;
  const bf16* x = (const bf16*)inp;
  const bf16* wb = (const bf16*)w;
  const bf16* bb = (const bf16*)bias;
  int T = 0;
  int vpt = (C % 8 == 0 && zpc_al16(out) && zpc_al16(inp) && zpc_al16(w) &&
             zpc_al16(bias))
                ? zpc_ln_vpt(C, &T)
                : 0;
  /* pf only at VPT 1 (C <= 4096): measured faster there; at VPT 2 the one shape timed (N 40,
   * C 4104) was not (docs/perf.md 21) */
  const bool pf = b->ln_fast >= ZPC_LN_PF; /* pf, and warp's shapes it does not take */
  if (vpt == 1)
    return pf ? zpc_ln_fwd_vec<1, 2, true>(b, T, o, mean, rstd, x, wb, bb, N, C)
              : zpc_ln_fwd_vec<1, 4, false>(b, T, o, mean, rstd, x, wb, bb, N, C);
  if (vpt == 2) return zpc_ln_fwd_vec<2, 2, false>(b, T, o, mean, rstd, x, wb, bb, N, C);
  unsigned grid = 1;
  int rc = zpc_ln_grid(b, zpc_ln_fwd_any_kernel, ZPC_LN_ANY_THREADS, N, &grid);
  if (rc) return rc;
  zpc_ln_fwd_any_kernel<<<grid, ZPC_LN_ANY_THREADS, 0, b->stream>>>(o, mean, rstd, x, wb, bb, N,
                                                                     C);
  ZPC_LAUNCHED(b, "layernorm_fwd");
  return ZP_OK;
}

template <int VPT, int ROWS, bool PF>
static int zpc_ln_bwd_vec(zp_backend* b, int T, bf16* dinp, float* pdw, float* pdb,
                          const bf16* dout, const bf16* inp, const bf16* w, const float* mean,
                          const float* rstd, int N, int C, int rpc, int nchunks) {
  unsigned grid = 1;
  int rc = zpc_ln_grid(b, zpc_ln_bwd_vec_kernel<VPT, ROWS, PF>, T, nchunks, &grid);
  if (rc) return rc;
  zpc_ln_bwd_vec_kernel<VPT, ROWS, PF><<<grid, T, 0, b->stream>>>(
      dinp, pdw, pdb, dout, inp, w, mean, rstd, N, C, rpc, nchunks);
  ZPC_LAUNCHED(b, "layernorm_bwd");
  return ZP_OK;
}

int zpc_layernorm_bwd_fast(zp_backend* b, void* dinp, void* dw, void* dbias, const void* dout,
                      const void* inp, const void* w, const float* mean, const float* rstd, int N,
                      int C) {
  if (N <= 0 || C <= 0 || !w || !mean || !rstd || !dout || !inp)
    return ZPC_INVALID(b, "cuda backend: layernorm_bwd: bad arguments N=%d C=%d", N, C);
  if (!dinp && !dw && !dbias) return ZP_OK;
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
  int T = 0;
  int vpt = (C % 8 == 0 && zpc_al16(dinp) && zpc_al16(dout) && zpc_al16(inp) &&
             zpc_al16(w))
                ? zpc_ln_vpt(C, &T)
                : 0;
  int rc;
  const bool pf = b->ln_fast >= ZPC_LN_PF; /* as in the forward */
  if (vpt == 1)
    rc = pf ? zpc_ln_bwd_vec<1, 2, true>(b, T, dx, pdw, pdb, dy, x, wb, mean, rstd, N, C, rpc, nchunks)
            : zpc_ln_bwd_vec<1, 4, false>(b, T, dx, pdw, pdb, dy, x, wb, mean, rstd, N, C, rpc, nchunks);
  else if (vpt == 2) /* pf only at VPT 1, as in the forward */
    rc = zpc_ln_bwd_vec<2, 2, false>(b, T, dx, pdw, pdb, dy, x, wb, mean, rstd, N, C, rpc, nchunks);
  else {
    unsigned grid = 1;
    rc = zpc_ln_grid(b, zpc_ln_bwd_any_kernel, ZPC_LN_ANY_THREADS, nchunks, &grid);
    if (rc) return rc;
    zpc_ln_bwd_any_kernel<<<grid, ZPC_LN_ANY_THREADS, 0, b->stream>>>(
        dx, pdw, pdb, dy, x, wb, mean, rstd, N, C, rpc, nchunks);
    ZPC_LAUNCHED(b, "layernorm_bwd");
  }
  if (rc) return rc;
  if (dw && (rc = zpc_colsum_add(b, (bf16*)dw, pdw, nchunks, C))) return rc;
  if (dbias && (rc = zpc_colsum_add(b, (bf16*)dbias, pdb, nchunks, C))) return rc;
  return ZP_OK;
}
