/* adamw.cu: one fused AdamW kernel (decoupled weight decay) over n elements.
 *
 * Per element, all in fp32: g = grad * grad_scale; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 * master -= lr * ((m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps) + weight_decay * master);
 * then param (pdt: F32 or BF16, optional) = master rounded once. master, m, v are fp32; grad is
 * F32 or BF16. Bias corrections are computed on the host in double. param may alias master
 * (fp32 training) or be NULL. Each element is read and written by one thread only.
 * Vector path: where every array is aligned for 4 elements at once (16 bytes fp32, 8 bytes
 * bf16), one thread updates 4 neighbouring elements with 16/8-byte loads and stores (memory-
 * bound: 28 bytes per element with bf16 grad and param); a misaligned head and the n % 4 tail
 * take the scalar kernel. The arithmetic per element is the same expression in both, so the
 * results are bitwise equal whichever path an element takes.
 * Pieces (ABI 1.4 adamw_pieces): one range of up to ZPC_PIECES pieces of their own weight decay
 * is one set of launches; each element finds its piece's decay (the pieces are few and sorted:
 * a scan from the piece of the element's group of 4), so one call equals one adamw() per piece
 * bit for bit, with the small tensors (biases, LayerNorm) no longer costing a launch each.
 */
#include <math.h>
#include <stdint.h>

#include "cuda_common.cuh"

/* blocks of 256 threads for n work items: capped grid-stride (default), or one item per thread
 * (ZP_CUDA_ADAMW_GRID=full: blocks end early, so another stream's kernels get SM slots sooner) */
static inline unsigned zpc_adamw_grid(const zp_backend* b, size_t n) {
  if (!b->adamw_grid) return zpc_grid(b, n, 256);
  size_t g = (n + 255) / 256;
  return (unsigned)(g < 1 ? 1 : g > 0x7fffffffu ? 0x7fffffffu : g);
}

struct zpc_adamw_hp {
  float lr, beta1, beta2, eps, grad_scale, bc1, bc2;
};

/* the pieces of one launch: element i (relative to the launch's start) has weight decay wd[k]
 * for the first k with i < end[k] */
#define ZPC_PIECES 32
struct zpc_pieces {
  int n;
  uint64_t end[ZPC_PIECES];
  float wd[ZPC_PIECES];
};
__device__ __forceinline__ int zpc_piece_of(const zpc_pieces& P, uint64_t i, int k) {
  while (k < P.n - 1 && i >= P.end[k]) k++;
  return k;
}

/* every operation spelled as an _rn intrinsic: the compiler may not contract differently in the
 * two kernels, so the scalar and the vector path round identically */
__device__ __forceinline__ void zpc_adamw_elem(float g, float& mi, float& vi, float& p,
                                               const zpc_adamw_hp& h, float wd) {
  g = __fmul_rn(g, h.grad_scale);
  mi = __fmaf_rn(h.beta1, mi, __fmul_rn(1.0f - h.beta1, g));
  vi = __fmaf_rn(h.beta2, vi, __fmul_rn(__fmul_rn(1.0f - h.beta2, g), g));
  const float mhat = __fdiv_rn(mi, h.bc1), vhat = __fdiv_rn(vi, h.bc2);
  const float upd = __fmaf_rn(wd, p, __fdiv_rn(mhat, __fadd_rn(__fsqrt_rn(vhat), h.eps)));
  p = __fmaf_rn(-h.lr, upd, p);
}

/* 4 consecutive elements of a grad / param array: fp32 as float4, bf16 as 8 bytes */
__device__ __forceinline__ void zpc_ld4(float (&r)[4], const float* p) {
  float4 x = *(const float4*)p;
  r[0] = x.x, r[1] = x.y, r[2] = x.z, r[3] = x.w;
}
__device__ __forceinline__ void zpc_ld4(float (&r)[4], const bf16* p) {
  uint2 x = *(const uint2*)p;
  const __nv_bfloat162 a = *(const __nv_bfloat162*)&x.x, b = *(const __nv_bfloat162*)&x.y;
  r[0] = __low2float(a), r[1] = __high2float(a), r[2] = __low2float(b), r[3] = __high2float(b);
}
__device__ __forceinline__ void zpc_st4(float* p, const float (&r)[4]) {
  *(float4*)p = make_float4(r[0], r[1], r[2], r[3]);
}
__device__ __forceinline__ void zpc_st4(bf16* p, const float (&r)[4]) {
  __nv_bfloat162 a = __floats2bfloat162_rn(r[0], r[1]), b = __floats2bfloat162_rn(r[2], r[3]);
  uint2 x;
  x.x = *(const uint32_t*)&a;
  x.y = *(const uint32_t*)&b;
  *(uint2*)p = x;
}

/* n4 groups of 4 elements; every pointer aligned for its 4-element access; element i of the
 * launch is element i0 + i of the pieces P */
template <typename TP, typename TG>
__global__ void zpc_adamw4_kernel(TP* param, float* master, const TG* grad, float* m, float* v,
                                  size_t n4, zpc_adamw_hp h, zpc_pieces P, uint64_t i0) {
  for (size_t q = blockIdx.x * (size_t)blockDim.x + threadIdx.x; q < n4;
       q += (size_t)gridDim.x * blockDim.x) {
    const size_t i = 4 * q;
    float g[4], mi[4], vi[4], p[4];
    zpc_ld4(g, grad + i);
    zpc_ld4(mi, m + i);
    zpc_ld4(vi, v + i);
    zpc_ld4(p, master + i);
    int k = zpc_piece_of(P, i0 + i, 0);
#pragma unroll
    for (int e = 0; e < 4; e++) {
      k = zpc_piece_of(P, i0 + i + e, k);
      zpc_adamw_elem(g[e], mi[e], vi[e], p[e], h, P.wd[k]);
    }
    zpc_st4(m + i, mi);
    zpc_st4(v + i, vi);
    zpc_st4(master + i, p);
    if (param) zpc_st4(param + i, p);
  }
}

template <typename TP, typename TG>
__global__ void zpc_adamw_kernel(TP* param, float* master, const TG* grad, float* m, float* v,
                                 size_t n, zpc_adamw_hp h, zpc_pieces P, uint64_t i0) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    float mi = m[i], vi = v[i], p = master[i];
    zpc_adamw_elem(zpc_ld<float>(grad + i), mi, vi, p, h, P.wd[zpc_piece_of(P, i0 + i, 0)]);
    m[i] = mi;
    v[i] = vi;
    master[i] = p;
    if (param) zpc_st(param + i, p);
  }
}

/* scalar head (until master is 16-byte aligned), vector body, scalar tail */
template <typename TP, typename TG>
static void zpc_adamw_launch(zp_backend* b, TP* param, float* master, const TG* grad, float* m,
                             float* v, size_t n, const zpc_adamw_hp& h, const zpc_pieces& P) {
  size_t head = ((16 - ((uintptr_t)master & 15)) & 15) / 4;
  if ((uintptr_t)master & 3) head = n; /* not even float-aligned: all scalar */
  if (head > n) head = n;
  size_t n4 = (n - head) / 4;
  const size_t gal = sizeof(TG) * 4, pal = sizeof(TP) * 4;
  if (n4 && (((uintptr_t)(m + head) | (uintptr_t)(v + head)) % 16 ||
             (uintptr_t)(grad + head) % gal || (param && (uintptr_t)(param + head) % pal)))
    n4 = 0; /* arrays out of phase with each other: scalar throughout */
  if (head)
    zpc_adamw_kernel<TP, TG><<<zpc_adamw_grid(b, head), 256, 0, b->stream>>>(param, master, grad,
                                                                            m, v, head, h, P, 0);
  if (n4) {
    const size_t o = head;
    zpc_adamw4_kernel<TP, TG><<<zpc_adamw_grid(b, n4), 256, 0, b->stream>>>(
        param ? param + o : NULL, master + o, grad + o, m + o, v + o, n4, h, P, o);
  }
  const size_t done = head + 4 * n4;
  if (done < n)
    zpc_adamw_kernel<TP, TG><<<zpc_adamw_grid(b, n - done), 256, 0, b->stream>>>(
        param ? param + done : NULL, master + done, grad + done, m + done, v + done, n - done, h, P,
        done);
}

/* one launch set over pieces P (P.end relative to the start, P.end[P.n - 1] = n) */
static int zpc_adamw_run(zp_backend* b, void* param, zp_dtype pdt, float* master, const void* grad,
                         zp_dtype gdt, float* m, float* v, size_t n, const zpc_adamw_hp& h,
                         const zpc_pieces& P) {
  const bool pbf = param && pdt == ZP_BF16;
  if (gdt == ZP_BF16) {
    if (pbf) zpc_adamw_launch(b, (bf16*)param, master, (const bf16*)grad, m, v, n, h, P);
    else zpc_adamw_launch(b, (float*)param, master, (const bf16*)grad, m, v, n, h, P);
  } else {
    if (pbf) zpc_adamw_launch(b, (bf16*)param, master, (const float*)grad, m, v, n, h, P);
    else zpc_adamw_launch(b, (float*)param, master, (const float*)grad, m, v, n, h, P);
  }
  ZPC_LAUNCHED(b, "adamw");
  return ZP_OK;
}

static int zpc_adamw_hparams(zp_backend* b, void* param, zp_dtype pdt, float* master,
                             const void* grad, zp_dtype gdt, float* m, float* v, float lr,
                             float beta1, float beta2, float eps, float grad_scale, int step_t,
                             zpc_adamw_hp* h) {
  if (step_t < 1 || !master || !grad || !m || !v)
    return ZPC_INVALID(b, "cuda backend: adamw: bad arguments (step_t=%d)", step_t);
  if ((param && pdt != ZP_F32 && pdt != ZP_BF16) || (gdt != ZP_F32 && gdt != ZP_BF16))
    return zpc_err(b->host, ZP_E_NOT_IMPLEMENTED,
                   "cuda backend: adamw: param dtype %d / grad dtype %d not supported (F32, BF16)",
                   (int)pdt, (int)gdt);
  const float bc1 = (float)(1.0 - pow((double)beta1, (double)step_t));
  const float bc2 = (float)(1.0 - pow((double)beta2, (double)step_t));
  *h = {lr, beta1, beta2, eps, grad_scale, bc1, bc2};
  return ZP_OK;
}

int zpc_adamw(zp_backend* b, void* param, zp_dtype pdt, float* master, const void* grad,
              zp_dtype gdt, float* m, float* v, size_t n, float lr, float beta1, float beta2,
              float eps, float weight_decay, float grad_scale, int step_t) {
  zpc_adamw_hp h;
  int rc = zpc_adamw_hparams(b, param, pdt, master, grad, gdt, m, v, lr, beta1, beta2, eps,
                             grad_scale, step_t, &h);
  if (rc || n == 0) return rc;
  zpc_pieces P;
  P.n = 1;
  P.end[0] = n;
  P.wd[0] = weight_decay;
  return zpc_adamw_run(b, param, pdt, master, grad, gdt, m, v, n, h, P);
}

int zpc_adamw_pieces(zp_backend* b, void* param, zp_dtype pdt, float* master, const void* grad,
                     zp_dtype gdt, float* m, float* v, int n_pieces, const uint64_t* piece_end,
                     const float* piece_wd, float lr, float beta1, float beta2, float eps,
                     float grad_scale, int step_t) {
  zpc_adamw_hp h;
  int rc = zpc_adamw_hparams(b, param, pdt, master, grad, gdt, m, v, lr, beta1, beta2, eps,
                             grad_scale, step_t, &h);
  if (rc) return rc;
  if (n_pieces < 0 || (n_pieces > 0 && (!piece_end || !piece_wd)))
    return ZPC_INVALID(b, "cuda backend: adamw_pieces: %d pieces, end %p, wd %p", n_pieces,
                       (const void*)piece_end, (const void*)piece_wd);
  const size_t ps = param ? (pdt == ZP_BF16 ? 2 : 4) : 0, gs = gdt == ZP_BF16 ? 2 : 4;
  const int per_set = b->adamw_pieces ? ZPC_PIECES : 1; /* ZP_CUDA_ADAMW_PIECES=0: one per piece */
  uint64_t start = 0;
  for (int k0 = 0; k0 < n_pieces; k0 += per_set) { /* per_set pieces per launch set */
    zpc_pieces P;
    P.n = n_pieces - k0 < per_set ? n_pieces - k0 : per_set;
    for (int k = 0; k < P.n; k++) {
      const uint64_t prev = k0 + k == 0 ? 0 : piece_end[k0 + k - 1];
      if (piece_end[k0 + k] <= prev)
        return ZPC_INVALID(b, "cuda backend: adamw_pieces: piece %d ends at %llu, not after %llu",
                           k0 + k, (unsigned long long)piece_end[k0 + k], (unsigned long long)prev);
      P.end[k] = piece_end[k0 + k] - start;
      P.wd[k] = piece_wd[k0 + k];
    }
    const size_t n = (size_t)P.end[P.n - 1];
    rc = zpc_adamw_run(b, param ? (char*)param + start * ps : NULL, pdt, master + start,
                       (const char*)grad + start * gs, gdt, m + start, v + start, n, h, P);
    if (rc) return rc;
    start += n;
  }
  return ZP_OK;
}
