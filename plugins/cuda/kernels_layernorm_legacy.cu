/* kernels_layernorm_legacy.cu: the previous LayerNorm kernels (one warp per row, scalar loads),
 * selected by ZP_CUDA_LN=legacy; kernels_layernorm.cu holds the vectorized ones (ZP_CUDA_LN=fast).
 * Same contract: LayerNorm forward and backward over rows of C (bf16 data, fp32 stats).
 *
 * Forward: out = (x - mean) * rstd * w + bias, mean and rstd (= 1/sqrt(var + 1e-5), biased
 * variance) stored as fp32 [N] (skipped when NULL). One warp per row, two-pass statistics in
 * fp32 (mean first, then the centred sum of squares: no cancellation).
 * Backward (accumulates dinp, dw, dbias): per row, with xhat = (x - mean) * rstd and
 * g = w * dout: dinp += rstd * (g - mean(g) - xhat * mean(g * xhat)).
 * dw += sum_rows dout * xhat, dbias += sum_rows dout: each of W = min(N, 1024) warps owns one
 * fp32 partial row in scratch (rows r = warp, warp + W, ...), then a fixed-order column sum adds
 * them into dw/dbias: deterministic, no atomics.
 */
#include "cuda_common.cuh"

#define ZPC_LNL_EPS 1e-5f
#define ZPC_LN_WARPS 8 /* warps per block */
#define ZPC_LN_MAX_PARTIALS 1024

__global__ void zpc_ln_legacy_fwd_kernel(bf16* out, float* mean, float* rstd, const bf16* inp,
                                         const bf16* w, const bf16* bias, int N, int C) {
  int lane = threadIdx.x & 31;
  int row = blockIdx.x * ZPC_LN_WARPS + (threadIdx.x >> 5);
  if (row >= N) return;
  const bf16* x = inp + (size_t)row * C;
  bf16* o = out + (size_t)row * C;
  float s = 0.0f;
  for (int c = lane; c < C; c += 32) s += bf2f(x[c]);
  float m = zpc_warp_sum(s) / (float)C;
  float v = 0.0f;
  for (int c = lane; c < C; c += 32) {
    float d = bf2f(x[c]) - m;
    v += d * d;
  }
  float r = rsqrtf(zpc_warp_sum(v) / (float)C + ZPC_LNL_EPS);
  for (int c = lane; c < C; c += 32) {
    float n = (bf2f(x[c]) - m) * r;
    o[c] = f2bf(n * bf2f(w[c]) + (bias ? bf2f(bias[c]) : 0.0f));
  }
  if (lane == 0) {
    if (mean) mean[row] = m;
    if (rstd) rstd[row] = r;
  }
}

int zpc_layernorm_fwd_legacy(zp_backend* b, void* out, float* mean, float* rstd, const void* inp,
                      const void* w, const void* bias, int N, int C) {
  if (N <= 0 || C <= 0 || !w)
    return ZPC_INVALID(b, "cuda backend: layernorm_fwd: bad arguments N=%d C=%d w=%p", N, C, w);
  unsigned grid = (unsigned)((N + ZPC_LN_WARPS - 1) / ZPC_LN_WARPS);
  zpc_ln_legacy_fwd_kernel<<<grid, 32 * ZPC_LN_WARPS, 0, b->stream>>>(
      (bf16*)out, mean, rstd, (const bf16*)inp, (const bf16*)w, (const bf16*)bias, N, C);
  ZPC_LAUNCHED(b, "layernorm_fwd");
  return ZP_OK;
}

/* W warps in total; warp gw handles rows gw, gw + W, ...; pdw/pdb: [W, C] fp32 partials */
__global__ void zpc_ln_legacy_bwd_kernel(bf16* dinp, float* pdw, float* pdb, const bf16* dout,
                                         const bf16* inp, const bf16* w, const float* mean,
                                         const float* rstd, int N, int C, int W) {
  int lane = threadIdx.x & 31;
  int gw = blockIdx.x * ZPC_LN_WARPS + (threadIdx.x >> 5);
  if (gw >= W) return;
  float* my_dw = pdw ? pdw + (size_t)gw * C : NULL;
  float* my_db = pdb ? pdb + (size_t)gw * C : NULL;
  bool first = true;
  for (int row = gw; row < N; row += W, first = false) {
    const bf16* x = inp + (size_t)row * C;
    const bf16* dy = dout + (size_t)row * C;
    bf16* dx = dinp + (size_t)row * C;
    float m = mean[row], r = rstd[row];
    float s1 = 0.0f, s2 = 0.0f;
    for (int c = lane; c < C; c += 32) {
      float xhat = (bf2f(x[c]) - m) * r;
      float g = bf2f(w[c]) * bf2f(dy[c]);
      s1 += g;
      s2 += g * xhat;
    }
    s1 = zpc_warp_sum(s1) / (float)C;
    s2 = zpc_warp_sum(s2) / (float)C;
    for (int c = lane; c < C; c += 32) {
      float xhat = (bf2f(x[c]) - m) * r;
      float d = bf2f(dy[c]);
      float g = bf2f(w[c]) * d;
      if (dinp) dx[c] = f2bf(bf2f(dx[c]) + r * (g - s1 - xhat * s2));
      if (my_dw) my_dw[c] = first ? d * xhat : my_dw[c] + d * xhat;
      if (my_db) my_db[c] = first ? d : my_db[c] + d;
    }
  }
}

int zpc_layernorm_bwd_legacy(zp_backend* b, void* dinp, void* dw, void* dbias, const void* dout,
                      const void* inp, const void* w, const float* mean, const float* rstd, int N,
                      int C) {
  if (N <= 0 || C <= 0 || !w || !mean || !rstd)
    return ZPC_INVALID(b, "cuda backend: layernorm_bwd: bad arguments N=%d C=%d", N, C);
  int W = N < ZPC_LN_MAX_PARTIALS ? N : ZPC_LN_MAX_PARTIALS;
  float* pdw = NULL;
  float* pdb = NULL;
  if (dw || dbias) {
    void* s = NULL;
    size_t one = zpc_round256((size_t)W * C * sizeof(float));
    int rc = zpc_scratch(b, 2 * one, &s);
    if (rc) return rc;
    if (dw) pdw = (float*)s;
    if (dbias) pdb = (float*)((char*)s + one);
  }
  unsigned grid = (unsigned)((W + ZPC_LN_WARPS - 1) / ZPC_LN_WARPS);
  zpc_ln_legacy_bwd_kernel<<<grid, 32 * ZPC_LN_WARPS, 0, b->stream>>>(
      (bf16*)dinp, pdw, pdb, (const bf16*)dout, (const bf16*)inp, (const bf16*)w, mean, rstd, N, C,
      W);
  ZPC_LAUNCHED(b, "layernorm_bwd");
  int rc;
  if (dw && (rc = zpc_colsum_add(b, (bf16*)dw, pdw, W, C))) return rc;
  if (dbias && (rc = zpc_colsum_add(b, (bf16*)dbias, pdb, W, C))) return rc;
  return ZP_OK;
}
