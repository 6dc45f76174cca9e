/* attention.cu: causal multi-head self-attention, "naive" version (ZP_CUDA_ATTN=naive, and the
 * fallback for head sizes the flash kernels lack): cuBLASLt strided-batched GEMMs plus permute
 * and causal-softmax kernels. Materialises T x T matrices: fast for short T, memory-hungry.
 *
 * Layout: qkv [B,T,3C] = q | k | v, each [NH, hs] with hs = C/NH; out [B,T,C] (heads
 * concatenated). Work arrays are [B*NH, T, hs] ("BH-major").
 * Forward:  S = (Q K^T) / sqrt(hs)            fp32 [B*NH,T,T]  (scratch)
 *           P = causal_softmax(S)             bf16 [B*NH,T,T]  (aux: what backward needs)
 *           Y = P V                           -> out (un-permuted)
 * Backward: dP = dY V^T (fp32), dV = P^T dY,
 *           dS = P * (dP - rowsum(P * dP)) / sqrt(hs)   (bf16; 0 above the diagonal)
 *           dQ = dS K, dK = dS^T Q; dqkv overwritten by the re-permuted dQ | dK | dV.
 * attention_aux_bytes = B*NH*T*T*2 (the bf16 probabilities). Scratch (transient, per call):
 * fwd 3*B*T*C*2 + B*NH*T*T*4 bytes; bwd 7*B*T*C*2 + B*NH*T*T*6 bytes.
 * Entries of P and dS above the diagonal are exactly zero, so the full-square GEMMs give the
 * causal result.
 */
#include <math.h>
#include <string.h>

#include "cuda_common.cuh"

/* src qkv [B,T,3,NH,hs] -> q, k, v [B,NH,T,hs] */
__global__ void zpc_attn_permute_kernel(bf16* q, bf16* k, bf16* v, const bf16* qkv, int B, int T,
                                        int NH, int hs) {
  int C = NH * hs;
  size_t n = (size_t)B * T * 3 * C;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    int d = (int)(i % hs);
    int h = (int)((i / hs) % NH);
    int which = (int)((i / C) % 3);
    size_t bt = i / (3 * (size_t)C);
    int t = (int)(bt % T);
    size_t bb = bt / T;
    size_t o = ((bb * NH + h) * T + t) * hs + d;
    bf16* dst = which == 0 ? q : (which == 1 ? k : v);
    dst[o] = qkv[i];
  }
}

/* dq, dk, dv [B,NH,T,hs] -> dqkv [B,T,3,NH,hs] (overwrite) */
__global__ void zpc_attn_unpermute3_kernel(bf16* dqkv, const bf16* dq, const bf16* dk,
                                           const bf16* dv, int B, int T, int NH, int hs) {
  int C = NH * hs;
  size_t n = (size_t)B * T * 3 * C;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    int d = (int)(i % hs);
    int h = (int)((i / hs) % NH);
    int which = (int)((i / C) % 3);
    size_t bt = i / (3 * (size_t)C);
    int t = (int)(bt % T);
    size_t bb = bt / T;
    size_t o = ((bb * NH + h) * T + t) * hs + d;
    const bf16* src = which == 0 ? dq : (which == 1 ? dk : dv);
    dqkv[i] = src[o];
  }
}

/* to_bh = 1: x [B,T,NH,hs] -> y [B,NH,T,hs]; to_bh = 0: the reverse (y -> x) */
__global__ void zpc_attn_permute1_kernel(bf16* dst, const bf16* src, int B, int T, int NH, int hs,
                                         int to_bh) {
  int C = NH * hs;
  size_t n = (size_t)B * T * C;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    int d = (int)(i % hs);
    int h = (int)((i / hs) % NH);
    size_t bt = i / C;
    int t = (int)(bt % T);
    size_t bb = bt / T;
    size_t o = ((bb * NH + h) * T + t) * hs + d;
    if (to_bh)
      dst[o] = src[i];
    else
      dst[i] = src[o];
  }
}

/* one warp per row r of [B*NH*T]; t = r % T; P[j] = softmax(S[0..t])_j, 0 for j > t */
__global__ void zpc_attn_softmax_fwd_kernel(bf16* P, const float* S, int rows, int T) {
  int lane = threadIdx.x & 31;
  int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (r >= rows) return;
  int t = r % T;
  const float* s = S + (size_t)r * T;
  bf16* p = P + (size_t)r * T;
  float mx = -INFINITY;
  for (int j = lane; j <= t; j += 32) mx = fmaxf(mx, s[j]);
  mx = zpc_warp_max(mx);
  float sum = 0.0f;
  for (int j = lane; j <= t; j += 32) sum += expf(s[j] - mx);
  float inv = 1.0f / zpc_warp_sum(sum);
  for (int j = lane; j < T; j += 32) p[j] = f2bf(j <= t ? expf(s[j] - mx) * inv : 0.0f);
}

/* one warp per row: dS[j] = scale * P[j] * (dP[j] - sum_k P[k] dP[k]) for j <= t, else 0 */
__global__ void zpc_attn_softmax_bwd_kernel(bf16* dS, const bf16* P, const float* dP, int rows,
                                            int T, float scale) {
  int lane = threadIdx.x & 31;
  int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (r >= rows) return;
  int t = r % T;
  const bf16* p = P + (size_t)r * T;
  const float* dp = dP + (size_t)r * T;
  bf16* ds = dS + (size_t)r * T;
  float acc = 0.0f;
  for (int j = lane; j <= t; j += 32) acc += bf2f(p[j]) * dp[j];
  acc = zpc_warp_sum(acc);
  for (int j = lane; j < T; j += 32)
    ds[j] = f2bf(j <= t ? scale * bf2f(p[j]) * (dp[j] - acc) : 0.0f);
}

static int zpc_attn_check(zp_backend* b, const char* op, int B, int T, int C, int NH) {
  if (B <= 0 || T <= 0 || C <= 0 || NH <= 0 || C % NH != 0)
    return ZPC_INVALID(b, "cuda backend: %s: bad shape B=%d T=%d C=%d NH=%d (C %% NH must be 0)",
                       op, B, T, C, NH);
  return ZP_OK;
}

size_t zpc_attention_aux_bytes(zp_backend* b, int B, int T, int C, int NH) {
  (void)b;
  (void)C;
  return (size_t)B * NH * T * T * sizeof(bf16);
}

/* a strided-batched GEMM over the B*NH heads, each item a contiguous matrix */
static int zpc_bh_gemm(zp_backend* b, int transa, int transb, int M, int N, int K, const void* A,
                       int lda, int64_t sA, const void* Bm, int ldb, int64_t sB, void* D, int ldd,
                       int64_t sD, int d_fp32, int batch, float alpha) {
  struct zpc_gemm g;
  memset(&g, 0, sizeof g);
  g.transa = transa;
  g.transb = transb;
  g.M = M;
  g.N = N;
  g.K = K;
  g.A = A;
  g.lda = lda;
  g.strideA = sA;
  g.B = Bm;
  g.ldb = ldb;
  g.strideB = sB;
  g.D = D;
  g.ldd = ldd;
  g.strideD = sD;
  g.d_fp32 = d_fp32;
  g.batch = batch;
  g.alpha = alpha;
  g.beta = 0.0f;
  return zpc_gemm_run(b, &g);
}

int zpc_attention_fwd(zp_backend* b, void* out, void* aux, const void* qkv, int B, int T, int C,
                      int NH) {
  int rc = zpc_attn_check(b, "attention_fwd", B, T, C, NH);
  if (rc) return rc;
  const int hs = C / NH, BH = B * NH;
  const size_t btc = (size_t)B * T * C, tt = (size_t)T * T;
  size_t off = 0;
  size_t need = 3 * zpc_round256(btc * 2) + zpc_round256((size_t)BH * tt * 4) + 256;
  void* base = NULL;
  if ((rc = zpc_scratch(b, need, &base))) return rc;
  bf16* q = (bf16*)zpc_carve(base, &off, btc * 2);
  bf16* k = (bf16*)zpc_carve(base, &off, btc * 2);
  bf16* v = (bf16*)zpc_carve(base, &off, btc * 2);
  float* S = (float*)zpc_carve(base, &off, (size_t)BH * tt * 4);
  bf16* P = (bf16*)aux;
  bf16* y = q; /* q is dead once S exists */
  const float scale = 1.0f / sqrtf((float)hs);

  zpc_attn_permute_kernel<<<zpc_grid(b, 3 * btc, 256), 256, 0, b->stream>>>(
      q, k, v, (const bf16*)qkv, B, T, NH, hs);
  ZPC_LAUNCHED(b, "attn_permute");
  /* S[T,T] = scale * Q[T,hs] @ K[T,hs]^T */
  if ((rc = zpc_bh_gemm(b, 0, 1, T, T, hs, q, hs, (int64_t)T * hs, k, hs, (int64_t)T * hs, S, T,
                        (int64_t)tt, 1, BH, scale)))
    return rc;
  int rows = BH * T;
  zpc_attn_softmax_fwd_kernel<<<(rows + 7) / 8, 256, 0, b->stream>>>(P, S, rows, T);
  ZPC_LAUNCHED(b, "attn_softmax_fwd");
  /* Y[T,hs] = P[T,T] @ V[T,hs] */
  if ((rc = zpc_bh_gemm(b, 0, 0, T, hs, T, P, T, (int64_t)tt, v, hs, (int64_t)T * hs, y, hs,
                        (int64_t)T * hs, 0, BH, 1.0f)))
    return rc;
  zpc_attn_permute1_kernel<<<zpc_grid(b, btc, 256), 256, 0, b->stream>>>((bf16*)out, y, B, T, NH,
                                                                          hs, 0);
  ZPC_LAUNCHED(b, "attn_unpermute");
  return ZP_OK;
}

int zpc_attention_bwd(zp_backend* b, void* dqkv, const void* dout, const void* qkv,
                      const void* out, const void* aux, int B, int T, int C, int NH) {
  (void)out;
  int rc = zpc_attn_check(b, "attention_bwd", B, T, C, NH);
  if (rc) return rc;
  const int hs = C / NH, BH = B * NH;
  const size_t btc = (size_t)B * T * C, tt = (size_t)T * T;
  size_t off = 0;
  size_t need = 7 * zpc_round256(btc * 2) + zpc_round256((size_t)BH * tt * 4) +
                zpc_round256((size_t)BH * tt * 2) + 256;
  void* base = NULL;
  if ((rc = zpc_scratch(b, need, &base))) return rc;
  bf16* q = (bf16*)zpc_carve(base, &off, btc * 2);
  bf16* k = (bf16*)zpc_carve(base, &off, btc * 2);
  bf16* v = (bf16*)zpc_carve(base, &off, btc * 2);
  bf16* dy = (bf16*)zpc_carve(base, &off, btc * 2);
  bf16* dq = (bf16*)zpc_carve(base, &off, btc * 2);
  bf16* dk = (bf16*)zpc_carve(base, &off, btc * 2);
  bf16* dv = (bf16*)zpc_carve(base, &off, btc * 2);
  float* dP = (float*)zpc_carve(base, &off, (size_t)BH * tt * 4);
  bf16* dS = (bf16*)zpc_carve(base, &off, (size_t)BH * tt * 2);
  const bf16* P = (const bf16*)aux;
  const float scale = 1.0f / sqrtf((float)hs);
  const int64_t sth = (int64_t)T * hs;

  zpc_attn_permute_kernel<<<zpc_grid(b, 3 * btc, 256), 256, 0, b->stream>>>(
      q, k, v, (const bf16*)qkv, B, T, NH, hs);
  ZPC_LAUNCHED(b, "attn_permute");
  zpc_attn_permute1_kernel<<<zpc_grid(b, btc, 256), 256, 0, b->stream>>>(dy, (const bf16*)dout, B,
                                                                          T, NH, hs, 1);
  ZPC_LAUNCHED(b, "attn_permute_dout");
  /* dP[T,T] = dY[T,hs] @ V[T,hs]^T */
  if ((rc = zpc_bh_gemm(b, 0, 1, T, T, hs, dy, hs, sth, v, hs, sth, dP, T, (int64_t)tt, 1, BH,
                        1.0f)))
    return rc;
  /* dV[T,hs] = P[T,T]^T @ dY[T,hs] */
  if ((rc = zpc_bh_gemm(b, 1, 0, T, hs, T, P, T, (int64_t)tt, dy, hs, sth, dv, hs, sth, 0, BH,
                        1.0f)))
    return rc;
  int rows = BH * T;
  zpc_attn_softmax_bwd_kernel<<<(rows + 7) / 8, 256, 0, b->stream>>>(dS, P, dP, rows, T, scale);
  ZPC_LAUNCHED(b, "attn_softmax_bwd");
  /* dQ[T,hs] = dS[T,T] @ K[T,hs] */
  if ((rc = zpc_bh_gemm(b, 0, 0, T, hs, T, dS, T, (int64_t)tt, k, hs, sth, dq, hs, sth, 0, BH,
                        1.0f)))
    return rc;
  /* dK[T,hs] = dS[T,T]^T @ Q[T,hs] */
  if ((rc = zpc_bh_gemm(b, 1, 0, T, hs, T, dS, T, (int64_t)tt, q, hs, sth, dk, hs, sth, 0, BH,
                        1.0f)))
    return rc;
  zpc_attn_unpermute3_kernel<<<zpc_grid(b, 3 * btc, 256), 256, 0, b->stream>>>(
      (bf16*)dqkv, dq, dk, dv, B, T, NH, hs);
  ZPC_LAUNCHED(b, "attn_unpermute_dqkv");
  return ZP_OK;
}
