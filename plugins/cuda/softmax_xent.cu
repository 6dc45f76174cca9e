/* softmax_xent.cu: fused softmax + cross-entropy over bf16 logits [N, Vp] (first V real).
 *
 * Contract (every kernel choice): one block per row; losses[i] = logsumexp(row[0..V)) -
 * row[target] in fp32, the block's per-thread partial (max, sum of exp) states combined in a
 * fixed order (deterministic: no atomics, nothing depends on timing). If dloss != 0 the row is
 * overwritten in place with dloss * (softmax - onehot(target)) in bf16, and zeros in the padded
 * columns [V, Vp); dloss == 0 leaves the logits untouched. A target < 0 (or >= V) is ignored:
 * loss 0 and, if dloss != 0, an all-zero gradient row. The target logit is read before the
 * block's first write.
 * ZP_CUDA_XENT (b->xent) picks the kernel:
 *   base: one pass computes the running max and sum of exp per element (online
 *     softmax with expf), a second pass writes the gradient (expf again). A 16-byte vector path
 *     when Vp % 8 == 0 and logits is 16-byte aligned, else a scalar path.
 *   fast (default, docs/perf.md 25): per 16-byte vector, max first, one rescale per new max, ex2.approx per element; two
 *     passes over global memory (1024 threads per row). Needs the vector conditions: else base.
 *   smem: as fast, but pass 1 stages the row in shared memory (cp.async) and pass 2 reads it
 *     there: one global read per element. Rows of ceil(V / 8) <= 7168 vectors; longer: fast.
 *   Details and the reasoning: the comment opening the fast / smem kernels below. fast and smem do the same arithmetic in the
 *   same order (the bits may still differ where the compiler contracts differently); neither
 *   gives base's bits (checked against the fp32 reference within the usual tolerances).
 */
#include <float.h>
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

/* ---- ZP_CUDA_XENT = fast | smem: vector-only kernels (Vp % 8 == 0, 16-byte aligned rows) ----
 * Per element the base kernel's online update costs a compare, a branch and an accurate expf
 * (a few FMAs around a MUFU op) in pass 1 and another expf in pass 2; at GPT-2's shape that
 * makes it partly issue / SFU bound. These kernels instead work per 16-byte vector of 8 logits:
 *   pass 1: vm = the vector's max (7 fmaxf); only if vm > m (rare after a thread's first
 *           vectors) the running sum is rescaled once by 2^(mo - mo'), mo = m * log2(e); then
 *           8 x ex2.approx.ftz(fma(x, log2e, -mo)) summed as a tree. No per-element branch;
 *           one MUFU op per element (+1 per new max) instead of expf's MUFU op plus fix-ups.
 *   pass 2: g = ex2.approx.ftz(fma(x, log2e, -mo)) * (dloss / S), the one-hot subtracted by the
 *           one thread whose vector holds the target, two floats packed per bf16x2 convert.
 * The running state is (m, s): s = sum 2^(x * log2e - mo(m)), mo(m) = max(m * log2e, -FLT_MAX)
 * (finite, so -inf logits and all -inf prefixes give 0 terms instead of inf - inf = NaN; a NaN
 * logit makes the sum NaN as before, fmaxf skipping it for the max). The per-thread states are
 * merged by a warp butterfly, then by warp 0 over the warps' results (fixed order: the result
 * does not depend on timing). loss = mo * ln 2 + ln S - x[target], in fp32.
 * ex2.approx.ftz has a relative error of about 2^-22 (flushing results below 2^-126 to 0, i.e.
 * terms below e^-87 of the max, which cannot change an fp32 sum or a bf16 gradient).
 * Columns: vectors [0, V / 8) are all real (no per-element test); the vector holding column
 * V - 1 when V % 8 != 0 is masked (its padding read as -inf); later vectors are padding: zeros.
 * Ignored rows (target < 0 or >= V) read nothing: loss 0 and, if dloss != 0, a zero row.
 * fast: two passes over global memory, 1024 threads per row and 2 rows per SM (32 registers):
 *   half the rows in flight of base (512 threads, 4 rows per SM), so the second read of a row
 *   (26 MB of rows in flight at GPT-2's vocabulary against the 50 MB L2) should mostly hit L2
 *   (not measured: the H100's L2 is two halves, and a row's life is timing-dependent); pass 2's
 *   loads and stores are marked evict-first (.cs) so the gradients do not push out rows still
 *   waiting for their second read. Loads two vectors per thread before using either.
 * smem: pass 1 copies the row into shared memory with cp.async (all of a thread's copies issued
 *   at once, up to 7 vectors = 112 B per thread; no registers held by loads in flight) and
 *   consumes each vector as its group lands; pass 2 reads shared memory, so global memory sees
 *   exactly one read and one write per element whatever L2 does. Rows of up to 7 x 1024 vectors
 *   (V <= 57344: 112 KB, 2 rows per SM in the 228 KB of an H100 SM); longer rows run fast.
 *   Why it can win although only 2 rows share an SM: its loads need no threads or registers to
 *   stay in flight (100 KB per row issued at once), and the compute per row (about 2 MUFU ops
 *   per element at 16 per clock per SM: ~6k clocks, ~3.5 us) is well under the ~8.8 us a row's
 *   200 KB of traffic takes at an SM's share of HBM bandwidth, so one row's compute hides under
 *   the other's loads. A whole row in registers (one 512-thread block per SM) was slower: one
 *   row per SM leaves nothing to overlap its reduction and pass 2 with. */
#define ZPC_XF_THREADS 1024
#define ZPC_XS_THREADS 1024
#define ZPC_XS_KMAX 7 /* vectors per thread at most in smem: 7 x 1024 x 16 B = 112 KB per row */
#define ZPC_LOG2E 1.4426950408889634f
#define ZPC_LN2 0.6931471805599453f

__device__ __forceinline__ float zpc_xe_ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
/* mo(m): the offset the sum is kept against, finite even for m = -inf */
__device__ __forceinline__ float zpc_xe_mo(float m) { return fmaxf(m * ZPC_LOG2E, -FLT_MAX); }
/* pass 1: the first nvalid elements of one vector into (m, mo, s) */
__device__ __forceinline__ void zpc_xe_acc(const uint4& u, int nvalid, float& m, float& mo,
                                           float& s) {
  float f[8];
  zpc_unpack8(u, f);
#pragma unroll
  for (int k = 0; k < 8; k++)
    if (k >= nvalid) f[k] = -INFINITY;
  const float vm = fmaxf(fmaxf(fmaxf(f[0], f[1]), fmaxf(f[2], f[3])),
                         fmaxf(fmaxf(f[4], f[5]), fmaxf(f[6], f[7])));
  if (vm > m) { /* a new max: rescale once (s = 0 while m = -inf) */
    const float mn = zpc_xe_mo(vm);
    s *= zpc_xe_ex2(mo - mn);
    m = vm;
    mo = mn;
  }
  float e[8];
#pragma unroll
  for (int k = 0; k < 8; k++) e[k] = zpc_xe_ex2(fmaf(f[k], ZPC_LOG2E, -mo));
  s += ((e[0] + e[1]) + (e[2] + e[3])) + ((e[4] + e[5]) + (e[6] + e[7]));
}
/* pass 2: the gradient of one vector: dloss * softmax - (kt == k ? dloss : 0) for k < nvalid,
 * 0 after (kt: the target's place in this vector, or -1) */
__device__ __forceinline__ uint4 zpc_xe_grad(const uint4& u, int nvalid, int kt, float mo,
                                             float sc, float dloss) {
  float f[8];
  zpc_unpack8(u, f);
  float g[8];
#pragma unroll
  for (int k = 0; k < 8; k++) g[k] = zpc_xe_ex2(fmaf(f[k], ZPC_LOG2E, -mo)) * sc;
  if (kt >= 0) {
#pragma unroll
    for (int k = 0; k < 8; k++)
      if (k == kt) g[k] -= dloss;
  }
#pragma unroll
  for (int k = 0; k < 8; k++)
    if (k >= nvalid) g[k] = 0.0f;
  return zpc_pack8(g);
}
/* merge (m2, s2) into (m, s); commutative in floating point, so butterfly lanes agree */
__device__ __forceinline__ void zpc_xe_merge(float& m, float& s, float m2, float s2) {
  const float mx = fmaxf(m, m2), mo = zpc_xe_mo(mx);
  s = s * zpc_xe_ex2(zpc_xe_mo(m) - mo) + s2 * zpc_xe_ex2(zpc_xe_mo(m2) - mo);
  m = mx;
}
/* the block's (m, s) in every thread, in a fixed order; sh: 2 * (T / 32) + 2 floats */
template <int T>
__device__ __forceinline__ void zpc_xe_block_merge(float& m, float& s, float* sh) {
  for (int o = 16; o > 0; o >>= 1)
    zpc_xe_merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) {
    sh[warp] = m;
    sh[T / 32 + warp] = s;
  }
  __syncthreads();
  if (warp == 0) {
    m = lane < T / 32 ? sh[lane] : -INFINITY;
    s = lane < T / 32 ? sh[T / 32 + lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1)
      zpc_xe_merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
    if (lane == 0) {
      sh[2 * (T / 32)] = m;
      sh[2 * (T / 32) + 1] = s;
    }
  }
  __syncthreads();
  m = sh[2 * (T / 32)];
  s = sh[2 * (T / 32) + 1];
}
/* an ignored row: loss 0 and (dloss != 0) zeros, nothing read */
template <int T>
__device__ __forceinline__ void zpc_xe_ignored(float* loss, uint4* xv, int n8, float dloss) {
  if (threadIdx.x == 0) *loss = 0.0f;
  if (dloss == 0.0f) return;
  for (int i = threadIdx.x; i < n8; i += T) __stcs(xv + i, make_uint4(0u, 0u, 0u, 0u));
}
/* pass 2's last vectors [nfull, n8): the masked one holding V (rem = V % 8 != 0), then zeros */
template <int T>
__device__ __forceinline__ void zpc_xe_tail(uint4* xv, const uint4* src, int nfull, int rem,
                                            int n8, int tgt, float mo, float sc, float dloss) {
  for (int i = nfull + threadIdx.x; i < n8; i += T) {
    uint4 w = make_uint4(0u, 0u, 0u, 0u);
    if (i == nfull && rem) w = zpc_xe_grad(src[i], rem, (tgt >> 3) == i ? (tgt & 7) : -1, mo, sc, dloss);
    __stcs(xv + i, w);
  }
}

template <int T>
__global__ void __launch_bounds__(T, 2048 / T)
zpc_xent_fast_kernel(float* losses, bf16* logits, const int32_t* targets, int V, int Vp,
                     float dloss) {
  __shared__ float sh[2 * (T / 32) + 2];
  const size_t row = blockIdx.x;
  bf16* x = logits + row * (size_t)Vp;
  uint4* xv = (uint4*)x;
  const int tgt = targets[row];
  const int n8 = Vp >> 3, nfull = V >> 3, rem = V & 7;
  if (tgt < 0 || tgt >= V) { /* block-uniform */
    zpc_xe_ignored<T>(losses + row, xv, n8, dloss);
    return;
  }
  /* the target logit, loaded now (pass 1 writes nothing; pass 2 starts after a barrier) */
  const float xt = threadIdx.x == 0 ? bf2f(x[tgt]) : 0.0f;
  float m = -INFINITY, mo = -FLT_MAX, s = 0.0f;
  int i = threadIdx.x;
  for (; i + T < nfull; i += 2 * T) { /* two loads in flight per thread */
    const uint4 a = xv[i], c = xv[i + T];
    zpc_xe_acc(a, 8, m, mo, s);
    zpc_xe_acc(c, 8, m, mo, s);
  }
  if (i < nfull) zpc_xe_acc(xv[i], 8, m, mo, s);
  if (rem && threadIdx.x == nfull % T) zpc_xe_acc(xv[nfull], rem, m, mo, s);
  zpc_xe_block_merge<T>(m, s, sh); /* a barrier: the target logit has been read */
  mo = zpc_xe_mo(m);
  if (threadIdx.x == 0) losses[row] = fmaf(mo, ZPC_LN2, logf(s)) - xt;
  if (dloss == 0.0f) return;
  const float sc = dloss / s;
  const int tv = tgt >> 3, tk = tgt & 7;
  for (i = threadIdx.x; i + T < nfull; i += 2 * T) {
    const uint4 a = __ldcs(xv + i), c = __ldcs(xv + i + T);
    __stcs(xv + i, zpc_xe_grad(a, 8, i == tv ? tk : -1, mo, sc, dloss));
    __stcs(xv + i + T, zpc_xe_grad(c, 8, i + T == tv ? tk : -1, mo, sc, dloss));
  }
  if (i < nfull) __stcs(xv + i, zpc_xe_grad(__ldcs(xv + i), 8, i == tv ? tk : -1, mo, sc, dloss));
  zpc_xe_tail<T>(xv, xv, nfull, rem, n8, tgt, mo, sc, dloss);
}

__device__ __forceinline__ void zpc_xe_cp16(uint4* dst, const uint4* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(
                   (uint32_t)__cvta_generic_to_shared(dst)),
               "l"(src)
               : "memory");
}
__device__ __forceinline__ void zpc_xe_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
/* wait until at most n groups are pending (n a constant once the caller's loop is unrolled) */
__device__ __forceinline__ void zpc_xe_wait(int n) {
  switch (n) {
    case 0: asm volatile("cp.async.wait_group 0;\n" ::: "memory"); break;
    case 1: asm volatile("cp.async.wait_group 1;\n" ::: "memory"); break;
    case 2: asm volatile("cp.async.wait_group 2;\n" ::: "memory"); break;
    case 3: asm volatile("cp.async.wait_group 3;\n" ::: "memory"); break;
    case 4: asm volatile("cp.async.wait_group 4;\n" ::: "memory"); break;
    case 5: asm volatile("cp.async.wait_group 5;\n" ::: "memory"); break;
    default: asm volatile("cp.async.wait_group 6;\n" ::: "memory"); break;
  }
}
static_assert(ZPC_XS_KMAX <= 7, "zpc_xe_wait handles up to 6 pending groups");

__global__ void __launch_bounds__(ZPC_XS_THREADS, 2)
zpc_xent_smem_kernel(float* losses, bf16* logits, const int32_t* targets, int V, int Vp,
                     float dloss) {
  constexpr int T = ZPC_XS_THREADS;
  extern __shared__ uint4 zpc_xs_row[]; /* ceil(V / 8) vectors */
  __shared__ float sh[2 * (T / 32) + 2];
  const size_t row = blockIdx.x;
  uint4* xv = (uint4*)(logits + row * (size_t)Vp);
  const int tgt = targets[row];
  const int n8 = Vp >> 3, nfull = V >> 3, rem = V & 7, nv = nfull + (rem != 0);
  if (tgt < 0 || tgt >= V) {
    zpc_xe_ignored<T>(losses + row, xv, n8, dloss);
    return;
  }
  /* vector i = threadIdx.x + k * T is group k of this thread; only this thread reads it in
   * either pass (thread 0 also reads the target logit, after the barrier) */
#pragma unroll
  for (int k = 0; k < ZPC_XS_KMAX; k++) {
    const int i = threadIdx.x + k * T;
    if (i < nv) zpc_xe_cp16(zpc_xs_row + i, xv + i);
    zpc_xe_commit(); /* empty groups too: group k is always the k-th */
  }
  float m = -INFINITY, mo = -FLT_MAX, s = 0.0f;
#pragma unroll
  for (int k = 0; k < ZPC_XS_KMAX; k++) {
    zpc_xe_wait(ZPC_XS_KMAX - 1 - k);
    const int i = threadIdx.x + k * T;
    if (i < nfull) zpc_xe_acc(zpc_xs_row[i], 8, m, mo, s);
    else if (i == nfull && rem) zpc_xe_acc(zpc_xs_row[i], rem, m, mo, s);
  }
  zpc_xe_block_merge<T>(m, s, sh); /* also makes every thread's copies visible to thread 0 */
  mo = zpc_xe_mo(m);
  if (threadIdx.x == 0)
    losses[row] = fmaf(mo, ZPC_LN2, logf(s)) - bf2f(((const bf16*)zpc_xs_row)[tgt]);
  if (dloss == 0.0f) return;
  const float sc = dloss / s;
  const int tv = tgt >> 3, tk = tgt & 7;
#pragma unroll 1
  for (int i = threadIdx.x; i < nfull; i += T)
    __stcs(xv + i, zpc_xe_grad(zpc_xs_row[i], 8, i == tv ? tk : -1, mo, sc, dloss));
  zpc_xe_tail<T>(xv, zpc_xs_row, nfull, rem, n8, tgt, mo, sc, dloss);
}

int zpc_softmax_xent(zp_backend* b, float* losses, void* logits, const int32_t* targets, int N,
                     int V, int Vp, float dloss) {
  if (N <= 0 || V <= 0 || Vp < V || !losses || !targets)
    return ZPC_INVALID(b, "cuda backend: softmax_xent: bad arguments N=%d V=%d Vp=%d", N, V, Vp);
  bool vec = (Vp % 8) == 0 && ((uintptr_t)logits & 15) == 0;
  const int nv = (V + 7) / 8;
  if (vec && b->xent == 2 && nv <= ZPC_XS_KMAX * ZPC_XS_THREADS) {
    /* opt in to more than 48 KB of shared memory, all of it as shared memory: 2 rows per SM */
    ZPC_CUDA(b, cudaFuncSetAttribute(zpc_xent_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     ZPC_XS_KMAX * ZPC_XS_THREADS * 16));
    ZPC_CUDA(b, cudaFuncSetAttribute(zpc_xent_smem_kernel,
                                     cudaFuncAttributePreferredSharedMemoryCarveout,
                                     cudaSharedmemCarveoutMaxShared));
    zpc_xent_smem_kernel<<<N, ZPC_XS_THREADS, (size_t)nv * 16, b->stream>>>(
        losses, (bf16*)logits, targets, V, Vp, dloss);
  } else if (vec && b->xent >= 1)
    zpc_xent_fast_kernel<ZPC_XF_THREADS><<<N, ZPC_XF_THREADS, 0, b->stream>>>(
        losses, (bf16*)logits, targets, V, Vp, dloss);
  else if (vec)
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
