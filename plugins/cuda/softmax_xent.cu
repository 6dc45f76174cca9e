/* softmax_xent.cu: fused softmax + cross-entropy over bf16 logits [N, Vp] (first V real).
 *
 * Per row (one block): one pass computes the running max and sum of exp in fp32 (online
 * softmax, per thread, then combined across the block in a fixed order: deterministic);
 * losses[i] = logsumexp(row[0..V)) - row[target] in fp32. If dloss != 0 a second pass
 * overwrites the row in place with dloss * (softmax - onehot(target)) in bf16, and zeros in the
 * padded columns [V, Vp). A target < 0 (or >= V) is ignored: loss 0 and, if dloss != 0, an
 * all-zero gradient row. The target logit is read before the block's first write.
 * A 16-byte vector path is taken when Vp % 8 == 0 and logits is 16-byte aligned.
 */
#include <math.h>

#include "cuda_common.cuh"

#define ZPC_XENT_THREADS 512

__device__ __forceinline__ void zpc_online_add(float& m, float& s, float x) {
  if (x > m) {
    s = s * expf(m - x) + 1.0f; /* m = -inf: s is 0 and expf(-inf) = 0 */
    m = x;
  } else {
    s += expf(x - m);
  }
}
__device__ __forceinline__ void zpc_online_merge(float& m, float& s, float m2, float s2) {
  if (m2 == -INFINITY) return;
  if (m == -INFINITY) {
    m = m2;
    s = s2;
    return;
  }
  float mx = fmaxf(m, m2);
  s = s * expf(m - mx) + s2 * expf(m2 - mx);
  m = mx;
}

template <bool VEC>
__global__ void __launch_bounds__(ZPC_XENT_THREADS)
zpc_softmax_xent_kernel(float* losses, bf16* logits, const int32_t* targets, int V, int Vp,
                        float dloss) {
  __shared__ float sh_m[ZPC_XENT_THREADS / 32], sh_s[ZPC_XENT_THREADS / 32];
  __shared__ float sh_final[2];
  const size_t row = blockIdx.x;
  bf16* x = logits + row * (size_t)Vp;
  const int tgt = targets[row];
  const bool ignore = tgt < 0 || tgt >= V;
  float m = -INFINITY, s = 0.0f;
  if (VEC) {
    const int n8 = Vp / 8;
    for (int i = threadIdx.x; i < n8; i += blockDim.x) {
      uint4 u = ((const uint4*)x)[i];
      const bf16* e = (const bf16*)&u;
#pragma unroll
      for (int k = 0; k < 8; k++)
        if (i * 8 + k < V) zpc_online_add(m, s, bf2f(e[k]));
    }
  } else {
    for (int j = threadIdx.x; j < V; j += blockDim.x) zpc_online_add(m, s, bf2f(x[j]));
  }
  /* warp merge (butterfly: every lane ends with the same fixed-order result), then warps */
  for (int o = 16; o > 0; o >>= 1) {
    float m2 = __shfl_xor_sync(0xffffffffu, m, o);
    float s2 = __shfl_xor_sync(0xffffffffu, s, o);
    zpc_online_merge(m, s, m2, s2);
  }
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) {
    sh_m[warp] = m;
    sh_s[warp] = s;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float M = sh_m[0], S = sh_s[0];
    for (int w = 1; w < (int)(blockDim.x >> 5); w++) zpc_online_merge(M, S, sh_m[w], sh_s[w]);
    float xt = ignore ? 0.0f : bf2f(x[tgt]);
    losses[row] = ignore ? 0.0f : (logf(S) + M) - xt;
    sh_final[0] = M;
    sh_final[1] = 1.0f / S;
  }
  __syncthreads(); /* the target logit has been read: writes may start */
  if (dloss == 0.0f) return;
  const float M = sh_final[0], inv = sh_final[1];
  if (VEC) {
    const int n8 = Vp / 8;
    for (int i = threadIdx.x; i < n8; i += blockDim.x) {
      uint4 u = ((const uint4*)x)[i];
      const bf16* e = (const bf16*)&u;
      uint4 w;
      bf16* o = (bf16*)&w;
#pragma unroll
      for (int k = 0; k < 8; k++) {
        int j = i * 8 + k;
        float g = 0.0f;
        if (!ignore && j < V) g = dloss * (expf(bf2f(e[k]) - M) * inv - (j == tgt ? 1.0f : 0.0f));
        o[k] = f2bf(g);
      }
      ((uint4*)x)[i] = w;
    }
  } else {
    for (int j = threadIdx.x; j < Vp; j += blockDim.x) {
      float g = 0.0f;
      if (!ignore && j < V) g = dloss * (expf(bf2f(x[j]) - M) * inv - (j == tgt ? 1.0f : 0.0f));
      x[j] = f2bf(g);
    }
  }
}

int zpc_softmax_xent(zp_backend* b, float* losses, void* logits, const int32_t* targets, int N,
                     int V, int Vp, float dloss) {
  if (N <= 0 || V <= 0 || Vp < V || !losses || !targets)
    return ZPC_INVALID(b, "cuda backend: softmax_xent: bad arguments N=%d V=%d Vp=%d", N, V, Vp);
  bool vec = (Vp % 8) == 0 && ((uintptr_t)logits & 15) == 0;
  if (vec)
    zpc_softmax_xent_kernel<true><<<N, ZPC_XENT_THREADS, 0, b->stream>>>(
        losses, (bf16*)logits, targets, V, Vp, dloss);
  else
    zpc_softmax_xent_kernel<false><<<N, ZPC_XENT_THREADS, 0, b->stream>>>(
        losses, (bf16*)logits, targets, V, Vp, dloss);
  ZPC_LAUNCHED(b, "softmax_xent");
  return ZP_OK;
}

/* ---- tensor parallelism: vocab-parallel softmax + cross-entropy (zp_plugin.h) ----
 * One block per row over this rank's slice [N, Vl] of bf16 logits (first nreal real); stats
 * fp32 [3N] (max | sum of exp | target logit), combined across ranks by the caller between
 * the phases. Block reductions run in a fixed order (deterministic). */
__device__ float zpc_block_reduce(float v, bool is_max, float* sh) {
  for (int o = 16; o > 0; o >>= 1) {
    float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? fmaxf(v, w) : v + w;
  }
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float r = sh[0];
    for (int w = 1; w < (int)(blockDim.x >> 5); w++) r = is_max ? fmaxf(r, sh[w]) : r + sh[w];
    sh[0] = r;
  }
  __syncthreads();
  return sh[0];
}

__global__ void __launch_bounds__(ZPC_XENT_THREADS)
zpc_xent_vp_kernel(int phase, float* losses, bf16* logits, float* st, const int32_t* targets,
                   int N, int Vl, int nreal, int v0, float dloss) {
  __shared__ float sh[ZPC_XENT_THREADS / 32];
  const int row = blockIdx.x;
  bf16* x = logits + (size_t)row * Vl;
  const int tg = targets[row];
  const bool own = tg >= v0 && tg < v0 + nreal;
  if (phase == 0) {
    float m = -INFINITY;
    for (int j = threadIdx.x; j < nreal; j += blockDim.x) m = fmaxf(m, bf2f(x[j]));
    m = zpc_block_reduce(m, true, sh);
    if (threadIdx.x == 0) st[row] = m;
  } else if (phase == 1) {
    const float M = st[row];
    float s = 0.0f;
    for (int j = threadIdx.x; j < nreal; j += blockDim.x) s += expf(bf2f(x[j]) - M);
    s = zpc_block_reduce(s, false, sh);
    if (threadIdx.x == 0) {
      st[N + row] = s;
      st[2 * (size_t)N + row] = own ? bf2f(x[tg - v0]) : 0.0f;
    }
  } else {
    const bool ignore = tg < 0;
    const float M = st[row], S = st[N + row], xt = st[2 * (size_t)N + row];
    if (threadIdx.x == 0) losses[row] = ignore ? 0.0f : logf(S) - (xt - M);
    if (dloss == 0.0f) return;
    const float inv = 1.0f / S;
    for (int j = threadIdx.x; j < Vl; j += blockDim.x) {
      float g = 0.0f;
      if (!ignore && j < nreal) g = dloss * (expf(bf2f(x[j]) - M) * inv - (own && j == tg - v0 ? 1.0f : 0.0f));
      x[j] = f2bf(g);
    }
  }
}

int zpc_softmax_xent_vp(zp_backend* b, int phase, float* losses, void* logits, void* stats,
                        const int32_t* targets, int N, int Vl, int nreal, int v0, float dloss) {
  if (phase < 0 || phase > 2 || N < 0 || Vl <= 0 || nreal < 0 || nreal > Vl || v0 < 0 || !stats ||
      !targets || (phase == 2 && !losses))
    return ZPC_INVALID(b, "cuda backend: softmax_xent_vp: bad arguments phase=%d N=%d Vl=%d nreal=%d v0=%d",
                       phase, N, Vl, nreal, v0);
  if (N == 0) return ZP_OK;
  zpc_xent_vp_kernel<<<N, ZPC_XENT_THREADS, 0, b->stream>>>(phase, losses, (bf16*)logits,
                                                           (float*)stats, targets, N, Vl, nreal,
                                                           v0, dloss);
  ZPC_LAUNCHED(b, "softmax_xent_vp");
  return ZP_OK;
}
