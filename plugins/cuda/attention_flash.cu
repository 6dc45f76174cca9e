/* attention_flash.cu: causal attention without the T x T matrices (the default; ZP_CUDA_ATTN=naive
 * selects attention.cu instead).
 *
 * Tiles of 64 query rows x 64 key rows live in shared memory; products run on tensor cores
 * through WMMA (bf16 in, fp32 accumulate); softmax statistics are fp32. aux = logsumexp
 * L[b,h,t] = log sum_{j<=t} exp(s_tj) as fp32 [B, NH, T] (B*NH*T*4 bytes).
 * Forward (grid: query tiles x heads), two passes over the key tiles j <= i:
 *   1. running max / sum of exp per row -> L;   2. P = exp(S - L) (exact, already normalised,
 *   rounded to bf16) and O += P V in register fragments; O written as bf16.
 * Backward, deterministic (no atomics; every output element written once):
 *   D[t] = sum_d dO[t,d] * O[t,d]                        (prep kernel)
 *   per key tile j (loop over query tiles i >= j):  dV_j += P^T dO_i,  dK_j += dS^T Q_i
 *   per query tile i (loop over key tiles j <= i):  dQ_i += dS K_j
 *   with P = exp(S - L) and dS = P * (dP - D) / sqrt(hs), dP = dO V^T (P and dS are
 *   recomputed in each of the two kernels).
 * Supported head sizes: 32, 64, 128 (zpc_flash_supported); other shapes use the naive path.
 * Rows past T are zero-filled; their L is +inf so their probabilities are exactly 0.
 * Invariants: 4 warps per block, warp w owns tile rows [16w, 16w+16) wherever a step only
 * needs its own rows (then __syncwarp suffices); block-wide steps are fenced by
 * __syncthreads. Dynamic shared memory above 48 KiB is opted into per kernel.
 */
#include <math.h>
#include <mma.h>

#include "cuda_common.cuh"

using namespace nvcuda;

#define FA_TILE 64
#define FA_THREADS 128
/* padded leading dimensions of the shared-memory tiles (elements): rows of 128 bytes would put
 * every row of a WMMA fragment load in the same banks; +16 bytes spreads them */
#define FA_LDS (FA_TILE + 4) /* S / dP, fp32 */
#define FA_LDP (FA_TILE + 8) /* P / dS, bf16 */
template <int HS> struct FaLd {
  static constexpr int T = HS + 8; /* Q, K, V, dO tiles, bf16 */
  static constexpr int O = HS + 4; /* fp32 output staging */
};

int zpc_flash_supported(int C, int NH) {
  if (NH <= 0 || C % NH) return 0;
  int hs = C / NH;
  return hs == 32 || hs == 64 || hs == 128;
}

size_t zpc_flash_aux_bytes(int B, int T, int C, int NH) {
  (void)C;
  return (size_t)B * NH * T * sizeof(float);
}

/* ---------------------------------------------------------------- shared helpers */

/* dst[64][FaLd<HS>::T] = rows row0.. of a head slice (row t at base + t*stride), 0 past T */
template <int HS>
__device__ __forceinline__ void fa_load(bf16* dst, const bf16* base, size_t stride, int row0, int T,
                                        bool vec) {
  if (vec) {
    constexpr int V8 = HS / 8;
    for (int idx = threadIdx.x; idx < FA_TILE * V8; idx += FA_THREADS) {
      int r = idx / V8, c8 = idx - r * V8, t = row0 + r;
      uint4 v = make_uint4(0u, 0u, 0u, 0u);
      if (t < T) v = *(const uint4*)(base + (size_t)t * stride + c8 * 8);
      *(uint4*)(dst + r * FaLd<HS>::T + c8 * 8) = v;
    }
  } else {
    for (int idx = threadIdx.x; idx < FA_TILE * HS; idx += FA_THREADS) {
      int r = idx / HS, c = idx - r * HS, t = row0 + r;
      dst[r * FaLd<HS>::T + c] = t < T ? base[(size_t)t * stride + c] : __float2bfloat16(0.0f);
    }
  }
}

/* S[16w..16w+16)[0..64) (fp32, ld FA_LDS) = A[16 rows of warp][HS] @ Bm[64][HS]^T */
template <int HS>
__device__ __forceinline__ void fa_abt(float* S, const bf16* A, const bf16* Bm, int warp) {
#pragma unroll
  for (int n = 0; n < FA_TILE / 16; n++) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
#pragma unroll
    for (int k = 0; k < HS / 16; k++) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> bt;
      wmma::load_matrix_sync(a, A + warp * 16 * FaLd<HS>::T + k * 16, FaLd<HS>::T);
      wmma::load_matrix_sync(bt, Bm + n * 16 * FaLd<HS>::T + k * 16, FaLd<HS>::T);
      wmma::mma_sync(acc, a, bt, acc);
    }
    wmma::store_matrix_sync(S + warp * 16 * FA_LDS + n * 16, acc, FA_LDS, wmma::mem_row_major);
  }
}

/* P[16 rows of warp][64] (bf16) = exp(S * scale - L[row]) for k <= q, else 0 */
__device__ __forceinline__ void fa_probs(bf16* P, const float* S, const float* L, int warp, int q0,
                                         int k0, float scale) {
  int lane = threadIdx.x & 31;
  for (int r = 0; r < 16; r++) {
    int row = warp * 16 + r, q = q0 + row;
    float l = L[row];
    for (int c = lane; c < FA_TILE; c += 32) {
      int k = k0 + c;
      float p = k <= q ? expf(S[row * FA_LDS + c] * scale - l) : 0.0f;
      P[row * FA_LDP + c] = f2bf(p);
    }
  }
}

/* acc[HS/16] (16 rows x HS) += A(16 x 64) @ Bm(64 x HS); A is rows [16w..) of a row-major
 * [64][64] tile (TRANS_A = false) or the transpose of columns [16w..) of it (TRANS_A = true). */
template <int HS, bool TRANS_A>
__device__ __forceinline__ void fa_acc(
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> (&acc)[HS / 16], const bf16* A,
    const bf16* Bm, int warp) {
#pragma unroll
  for (int k = 0; k < FA_TILE / 16; k++) {
    typedef typename std::conditional<TRANS_A, wmma::col_major, wmma::row_major>::type LA;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, LA> a;
    if (TRANS_A)
      wmma::load_matrix_sync(a, A + k * 16 * FA_LDP + warp * 16, FA_LDP);
    else
      wmma::load_matrix_sync(a, A + warp * 16 * FA_LDP + k * 16, FA_LDP);
#pragma unroll
    for (int n = 0; n < HS / 16; n++) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> bm;
      wmma::load_matrix_sync(bm, Bm + k * 16 * FaLd<HS>::T + n * 16, FaLd<HS>::T);
      wmma::mma_sync(acc[n], a, bm, acc[n]);
    }
  }
}

/* write the warp's 16 rows of acc (via fp32 staging, ld FaLd<HS>::O) as bf16 to rows < T */
template <int HS>
__device__ __forceinline__ void fa_store_rows(
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> (&acc)[HS / 16], float* stage,
    bf16* base, size_t stride, int row0, int T, int warp) {
#pragma unroll
  for (int n = 0; n < HS / 16; n++)
    wmma::store_matrix_sync(stage + warp * 16 * FaLd<HS>::O + n * 16, acc[n], FaLd<HS>::O,
                            wmma::mem_row_major);
  __syncwarp();
  int lane = threadIdx.x & 31;
  for (int r = 0; r < 16; r++) {
    int row = warp * 16 + r, t = row0 + row;
    if (t >= T) break;
    for (int c = lane; c < HS; c += 32)
      base[(size_t)t * stride + c] = f2bf(stage[row * FaLd<HS>::O + c]);
  }
}

/* ---------------------------------------------------------------- forward */

template <int HS>
struct FaFwdSmem {
  static constexpr size_t tile = (size_t)FA_TILE * FaLd<HS>::T * sizeof(bf16);
  static constexpr size_t s =
      (size_t)FA_TILE * (FaLd<HS>::O > FA_LDS ? FaLd<HS>::O : FA_LDS) * sizeof(float);
  static constexpr size_t p = (size_t)FA_TILE * FA_LDP * sizeof(bf16);
  static constexpr size_t bytes = 3 * tile + s + p + 3 * FA_TILE * sizeof(float);
};

template <int HS>
__global__ void __launch_bounds__(FA_THREADS)
zpc_flash_fwd_kernel(bf16* out, float* lse_out, const bf16* qkv, int T, int NH, bool vec) {
  extern __shared__ __align__(128) unsigned char fa_smem[];
  typedef FaFwdSmem<HS> L;
  bf16* Qs = (bf16*)fa_smem;
  bf16* Ks = (bf16*)(fa_smem + L::tile);
  bf16* Vs = (bf16*)(fa_smem + 2 * L::tile);
  float* S = (float*)(fa_smem + 3 * L::tile);
  bf16* P = (bf16*)(fa_smem + 3 * L::tile + L::s);
  float* m_run = (float*)(fa_smem + 3 * L::tile + L::s + L::p);
  float* l_run = m_run + FA_TILE;
  float* lse = l_run + FA_TILE;

  const int C = NH * HS;
  const int nq = (T + FA_TILE - 1) / FA_TILE;
  const int i = nq - 1 - (int)blockIdx.x; /* heavy (late) tiles first */
  const int bh = blockIdx.y, bb = bh / NH, h = bh % NH;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int q0 = i * FA_TILE;
  const float scale = rsqrtf((float)HS);
  const size_t stride = 3 * (size_t)C;
  const bf16* qbase = qkv + (size_t)bb * T * stride + h * HS;
  const bf16* kbase = qbase + C;
  const bf16* vbase = qbase + 2 * C;

  fa_load<HS>(Qs, qbase, stride, q0, T, vec);
  if (threadIdx.x < FA_TILE) {
    m_run[threadIdx.x] = -INFINITY;
    l_run[threadIdx.x] = 0.0f;
  }
  __syncthreads();

  /* pass 1: row statistics */
  for (int j = 0; j <= i; j++) {
    const int k0 = j * FA_TILE;
    fa_load<HS>(Ks, kbase, stride, k0, T, vec);
    __syncthreads();
    fa_abt<HS>(S, Qs, Ks, warp);
    __syncwarp();
    for (int r = 0; r < 16; r++) {
      int row = warp * 16 + r, q = q0 + row;
      float mx = -INFINITY;
      for (int c = lane; c < FA_TILE; c += 32)
        if (k0 + c <= q) mx = fmaxf(mx, S[row * FA_LDS + c] * scale);
      mx = zpc_warp_max(mx);
      float sum = 0.0f;
      if (mx != -INFINITY)
        for (int c = lane; c < FA_TILE; c += 32)
          if (k0 + c <= q) sum += expf(S[row * FA_LDS + c] * scale - mx);
      sum = zpc_warp_sum(sum);
      if (lane == 0 && mx != -INFINITY) {
        float mo = m_run[row], mn = fmaxf(mo, mx);
        l_run[row] = l_run[row] * expf(mo - mn) + sum * expf(mx - mn);
        m_run[row] = mn;
      }
    }
    __syncthreads(); /* Ks is reloaded next */
  }
  if (threadIdx.x < FA_TILE) {
    int q = q0 + threadIdx.x;
    lse[threadIdx.x] = q < T ? m_run[threadIdx.x] + logf(l_run[threadIdx.x]) : INFINITY;
    if (q < T) lse_out[(size_t)bh * T + q] = lse[threadIdx.x];
  }
  __syncthreads();

  /* pass 2: O = sum_j P_j V_j with P exact */
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[HS / 16];
#pragma unroll
  for (int n = 0; n < HS / 16; n++) wmma::fill_fragment(acc[n], 0.0f);
  for (int j = 0; j <= i; j++) {
    const int k0 = j * FA_TILE;
    fa_load<HS>(Ks, kbase, stride, k0, T, vec);
    fa_load<HS>(Vs, vbase, stride, k0, T, vec);
    __syncthreads();
    fa_abt<HS>(S, Qs, Ks, warp);
    __syncwarp();
    fa_probs(P, S, lse, warp, q0, k0, scale);
    __syncwarp();
    fa_acc<HS, false>(acc, P, Vs, warp);
    __syncthreads();
  }
  bf16* obase = out + (size_t)bb * T * C + h * HS;
  fa_store_rows<HS>(acc, S, obase, C, q0, T, warp);
}

/* ---------------------------------------------------------------- backward */

/* D[bh*T + t] = sum_d dout[b,t,h,d] * out[b,t,h,d]; one warp per (bh, t) */
__global__ void zpc_flash_bwd_prep_kernel(float* D, const bf16* dout, const bf16* out, int B,
                                          int T, int NH, int HS) {
  int w = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5);
  int lane = threadIdx.x & 31;
  if (w >= B * NH * T) return;
  int t = w % T, bh = w / T, bb = bh / NH, h = bh % NH;
  size_t o = ((size_t)bb * T + t) * NH * HS + (size_t)h * HS;
  float s = 0.0f;
  for (int d = lane; d < HS; d += 32) s += bf2f(dout[o + d]) * bf2f(out[o + d]);
  s = zpc_warp_sum(s);
  if (lane == 0) D[w] = s;
}

template <int HS>
struct FaBwdSmem {
  static constexpr size_t tile = (size_t)FA_TILE * FaLd<HS>::T * sizeof(bf16);
  static constexpr size_t s =
      (size_t)FA_TILE * (FaLd<HS>::O > FA_LDS ? FaLd<HS>::O : FA_LDS) * sizeof(float);
  static constexpr size_t p = (size_t)FA_TILE * FA_LDP * sizeof(bf16);
  static constexpr size_t bytes = 4 * tile + s + 2 * p + 2 * FA_TILE * sizeof(float);
};

/* the warp's rows of P and dS for query tile (Qs, dOs, Ls, Ds at q0) x key tile (Ks, Vs at k0) */
template <int HS>
__device__ __forceinline__ void fa_bwd_tile(bf16* P, bf16* dS, float* S, const bf16* Qs,
                                            const bf16* dOs, const bf16* Ks, const bf16* Vs,
                                            const float* Ls, const float* Ds, int warp, int q0,
                                            int k0, float scale) {
  fa_abt<HS>(S, Qs, Ks, warp);
  __syncwarp();
  fa_probs(P, S, Ls, warp, q0, k0, scale);
  __syncwarp();
  fa_abt<HS>(S, dOs, Vs, warp); /* dP, over the warp's own rows of S */
  __syncwarp();
  int lane = threadIdx.x & 31;
  for (int r = 0; r < 16; r++) {
    int row = warp * 16 + r;
    float d = Ds[row];
    for (int c = lane; c < FA_TILE; c += 32) {
      float p = bf2f(P[row * FA_LDP + c]);
      dS[row * FA_LDP + c] = f2bf(p * (S[row * FA_LDS + c] - d) * scale);
    }
  }
  __syncwarp();
}

/* per key tile j: dK_j, dV_j (written to dqkv) */
template <int HS>
__global__ void __launch_bounds__(FA_THREADS)
zpc_flash_bwd_kv_kernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                        const float* Dg, int T, int NH, bool vec) {
  extern __shared__ __align__(128) unsigned char fa_smem[];
  typedef FaBwdSmem<HS> L;
  bf16* Ks = (bf16*)fa_smem;
  bf16* Vs = (bf16*)(fa_smem + L::tile);
  bf16* Qs = (bf16*)(fa_smem + 2 * L::tile);
  bf16* dOs = (bf16*)(fa_smem + 3 * L::tile);
  float* S = (float*)(fa_smem + 4 * L::tile);
  bf16* P = (bf16*)(fa_smem + 4 * L::tile + L::s);
  bf16* dS = (bf16*)(fa_smem + 4 * L::tile + L::s + L::p);
  float* Ls = (float*)(fa_smem + 4 * L::tile + L::s + 2 * L::p);
  float* Ds = Ls + FA_TILE;

  const int C = NH * HS;
  const int nq = (T + FA_TILE - 1) / FA_TILE;
  const int j = (int)blockIdx.x; /* early key tiles have the most work: they come first */
  const int bh = blockIdx.y, bb = bh / NH, h = bh % NH;
  const int warp = threadIdx.x >> 5;
  const int k0 = j * FA_TILE;
  const float scale = rsqrtf((float)HS);
  const size_t stride = 3 * (size_t)C;
  const bf16* qbase = qkv + (size_t)bb * T * stride + h * HS;
  const bf16* dobase = dout + (size_t)bb * T * C + h * HS;

  fa_load<HS>(Ks, qbase + C, stride, k0, T, vec);
  fa_load<HS>(Vs, qbase + 2 * C, stride, k0, T, vec);
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> dk[HS / 16], dv[HS / 16];
#pragma unroll
  for (int n = 0; n < HS / 16; n++) {
    wmma::fill_fragment(dk[n], 0.0f);
    wmma::fill_fragment(dv[n], 0.0f);
  }
  for (int i = j; i < nq; i++) {
    const int q0 = i * FA_TILE;
    fa_load<HS>(Qs, qbase, stride, q0, T, vec);
    fa_load<HS>(dOs, dobase, C, q0, T, vec);
    if (threadIdx.x < FA_TILE) {
      int q = q0 + threadIdx.x;
      Ls[threadIdx.x] = q < T ? lse[(size_t)bh * T + q] : INFINITY;
      Ds[threadIdx.x] = q < T ? Dg[(size_t)bh * T + q] : 0.0f;
    }
    __syncthreads();
    fa_bwd_tile<HS>(P, dS, S, Qs, dOs, Ks, Vs, Ls, Ds, warp, q0, k0, scale);
    __syncthreads(); /* dV/dK read every query row of P and dS */
    fa_acc<HS, true>(dv, P, dOs, warp);  /* dV[k rows of warp] += P^T dO */
    fa_acc<HS, true>(dk, dS, Qs, warp);  /* dK[k rows of warp] += dS^T Q */
    __syncthreads();
  }
  bf16* dkbase = dqkv + (size_t)bb * T * stride + C + h * HS;
  fa_store_rows<HS>(dk, S, dkbase, stride, k0, T, warp);
  __syncwarp();
  fa_store_rows<HS>(dv, S, dkbase + C, stride, k0, T, warp);
}

/* per query tile i: dQ_i (written to dqkv) */
template <int HS>
__global__ void __launch_bounds__(FA_THREADS)
zpc_flash_bwd_q_kernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                       const float* Dg, int T, int NH, bool vec) {
  extern __shared__ __align__(128) unsigned char fa_smem[];
  typedef FaBwdSmem<HS> L;
  bf16* Ks = (bf16*)fa_smem;
  bf16* Vs = (bf16*)(fa_smem + L::tile);
  bf16* Qs = (bf16*)(fa_smem + 2 * L::tile);
  bf16* dOs = (bf16*)(fa_smem + 3 * L::tile);
  float* S = (float*)(fa_smem + 4 * L::tile);
  bf16* P = (bf16*)(fa_smem + 4 * L::tile + L::s);
  bf16* dS = (bf16*)(fa_smem + 4 * L::tile + L::s + L::p);
  float* Ls = (float*)(fa_smem + 4 * L::tile + L::s + 2 * L::p);
  float* Ds = Ls + FA_TILE;

  const int C = NH * HS;
  const int nq = (T + FA_TILE - 1) / FA_TILE;
  const int i = nq - 1 - (int)blockIdx.x;
  const int bh = blockIdx.y, bb = bh / NH, h = bh % NH;
  const int warp = threadIdx.x >> 5;
  const int q0 = i * FA_TILE;
  const float scale = rsqrtf((float)HS);
  const size_t stride = 3 * (size_t)C;
  const bf16* qbase = qkv + (size_t)bb * T * stride + h * HS;
  const bf16* dobase = dout + (size_t)bb * T * C + h * HS;

  fa_load<HS>(Qs, qbase, stride, q0, T, vec);
  fa_load<HS>(dOs, dobase, C, q0, T, vec);
  if (threadIdx.x < FA_TILE) {
    int q = q0 + threadIdx.x;
    Ls[threadIdx.x] = q < T ? lse[(size_t)bh * T + q] : INFINITY;
    Ds[threadIdx.x] = q < T ? Dg[(size_t)bh * T + q] : 0.0f;
  }
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> dq[HS / 16];
#pragma unroll
  for (int n = 0; n < HS / 16; n++) wmma::fill_fragment(dq[n], 0.0f);
  for (int j = 0; j <= i; j++) {
    const int k0 = j * FA_TILE;
    fa_load<HS>(Ks, qbase + C, stride, k0, T, vec);
    fa_load<HS>(Vs, qbase + 2 * C, stride, k0, T, vec);
    __syncthreads();
    fa_bwd_tile<HS>(P, dS, S, Qs, dOs, Ks, Vs, Ls, Ds, warp, q0, k0, scale);
    fa_acc<HS, false>(dq, dS, Ks, warp); /* dQ[q rows of warp] += dS K (own rows of dS) */
    __syncthreads();
  }
  fa_store_rows<HS>(dq, S, dqkv + (size_t)bb * T * stride + h * HS, stride, q0, T, warp);
}

/* ---------------------------------------------------------------- launchers */

static bool fa_vec_ok(const void* a, const void* b2, const void* c) {
  return (((uintptr_t)a | (uintptr_t)b2 | (uintptr_t)c) & 15) == 0;
}

template <int HS>
static int fa_fwd(zp_backend* b, void* out, void* aux, const void* qkv, int B, int T, int NH) {
  const size_t smem = FaFwdSmem<HS>::bytes;
  ZPC_CUDA(b, cudaFuncSetAttribute(zpc_flash_fwd_kernel<HS>,
                                   cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  dim3 grid((T + FA_TILE - 1) / FA_TILE, B * NH);
  bool vec = fa_vec_ok(qkv, out, qkv);
  zpc_flash_fwd_kernel<HS><<<grid, FA_THREADS, smem, b->stream>>>((bf16*)out, (float*)aux,
                                                                   (const bf16*)qkv, T, NH, vec);
  ZPC_LAUNCHED(b, "flash_fwd");
  return ZP_OK;
}

template <int HS>
static int fa_bwd(zp_backend* b, void* dqkv, const void* dout, const void* qkv, const void* out,
                  const void* aux, int B, int T, int NH) {
  void* Dv = NULL;
  int rc = zpc_scratch(b, (size_t)B * NH * T * sizeof(float), &Dv);
  if (rc) return rc;
  size_t warps = (size_t)B * NH * T;
  zpc_flash_bwd_prep_kernel<<<(unsigned)((warps * 32 + 255) / 256), 256, 0, b->stream>>>(
      (float*)Dv, (const bf16*)dout, (const bf16*)out, B, T, NH, HS);
  ZPC_LAUNCHED(b, "flash_bwd_prep");
  const size_t smem = FaBwdSmem<HS>::bytes;
  ZPC_CUDA(b, cudaFuncSetAttribute(zpc_flash_bwd_kv_kernel<HS>,
                                   cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  ZPC_CUDA(b, cudaFuncSetAttribute(zpc_flash_bwd_q_kernel<HS>,
                                   cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  dim3 grid((T + FA_TILE - 1) / FA_TILE, B * NH);
  bool vec = fa_vec_ok(qkv, dout, dqkv);
  zpc_flash_bwd_kv_kernel<HS><<<grid, FA_THREADS, smem, b->stream>>>(
      (bf16*)dqkv, (const bf16*)dout, (const bf16*)qkv, (const float*)aux, (const float*)Dv, T,
      NH, vec);
  ZPC_LAUNCHED(b, "flash_bwd_kv");
  zpc_flash_bwd_q_kernel<HS><<<grid, FA_THREADS, smem, b->stream>>>(
      (bf16*)dqkv, (const bf16*)dout, (const bf16*)qkv, (const float*)aux, (const float*)Dv, T,
      NH, vec);
  ZPC_LAUNCHED(b, "flash_bwd_q");
  return ZP_OK;
}

int zpc_flash_fwd(zp_backend* b, void* out, void* aux, const void* qkv, int B, int T, int C,
                  int NH) {
  if (B <= 0 || T <= 0 || !zpc_flash_supported(C, NH))
    return ZPC_INVALID(b, "cuda backend: flash attention: unsupported shape B=%d T=%d C=%d NH=%d",
                       B, T, C, NH);
  switch (C / NH) {
    case 32: return fa_fwd<32>(b, out, aux, qkv, B, T, NH);
    case 64: return fa_fwd<64>(b, out, aux, qkv, B, T, NH);
    default: return fa_fwd<128>(b, out, aux, qkv, B, T, NH);
  }
}

int zpc_flash_bwd(zp_backend* b, void* dqkv, const void* dout, const void* qkv, const void* out,
                  const void* aux, int B, int T, int C, int NH) {
  if (B <= 0 || T <= 0 || !zpc_flash_supported(C, NH))
    return ZPC_INVALID(b, "cuda backend: flash attention: unsupported shape B=%d T=%d C=%d NH=%d",
                       B, T, C, NH);
  switch (C / NH) {
    case 32: return fa_bwd<32>(b, dqkv, dout, qkv, out, aux, B, T, NH);
    case 64: return fa_bwd<64>(b, dqkv, dout, qkv, out, aux, B, T, NH);
    default: return fa_bwd<128>(b, dqkv, dout, qkv, out, aux, B, T, NH);
  }
}
