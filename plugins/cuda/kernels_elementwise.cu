/* kernels_elementwise.cu: elementwise ops: cast, accumulate, fill, scale (F32, BF16, F64), and
 * the bf16 activations gelu_fwd/bwd (tanh approximation) and residual_fwd.
 *
 * Invariants: one thread touches each element once (grid-stride loops, size_t indices, any n);
 * math in fp32, or fp64 when either side is F64; one rounding on store. dst may equal src
 * (in-place). The bf16 activation kernels take a 16-byte vector path when every pointer is
 * 16-byte aligned, with a scalar tail; results are identical on both paths.
 */
#include <type_traits>

#include "cuda_common.cuh"

template <typename TD, typename TS>
using zpc_acc_t = typename std::conditional<std::is_same<TD, double>::value ||
                                                std::is_same<TS, double>::value,
                                            double, float>::type;

static const char* zpc_dtype_name(zp_dtype t) {
  switch (t) {
    case ZP_F32: return "f32";
    case ZP_F64: return "f64";
    case ZP_BF16: return "bf16";
    case ZP_I32: return "i32";
    case ZP_U16: return "u16";
  }
  return "?";
}

static int zpc_bad_dtype(zp_backend* b, const char* op, zp_dtype t) {
  return zpc_err(b->host, ZP_E_NOT_IMPLEMENTED, "cuda backend: %s: dtype %s not supported", op,
                 zpc_dtype_name(t));
}

static int zpc_is_float(zp_dtype t) { return t == ZP_F32 || t == ZP_BF16 || t == ZP_F64; }

/* ---------------------------------------------------------------- cast */

template <typename TD, typename TS>
__global__ void zpc_cast_kernel(TD* dst, const TS* src, size_t n) {
  typedef zpc_acc_t<TD, TS> A;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    zpc_st(dst + i, zpc_ld<A>(src + i));
}

int zpc_cast(zp_backend* b, void* dst, zp_dtype dt, const void* src, zp_dtype st, size_t n) {
  if (n == 0) return ZP_OK;
  if (dt == st) {
    if (dst == src) return ZP_OK;
    ZPC_CUDA(b, cudaMemcpyAsync(dst, src, n * zp_dtype_size(dt), cudaMemcpyDeviceToDevice,
                                b->stream));
    return ZP_OK;
  }
  int rc = zpc_with_dtype(dt, [&](auto* dtag) {
    typedef typename std::remove_pointer<decltype(dtag)>::type TD;
    return zpc_with_dtype(st, [&](auto* stag) {
      typedef typename std::remove_pointer<decltype(stag)>::type TS;
      zpc_cast_kernel<TD, TS><<<zpc_grid(b, n, 256), 256, 0, b->stream>>>((TD*)dst,
                                                                          (const TS*)src, n);
      ZPC_LAUNCHED(b, "cast");
      return (int)ZP_OK;
    });
  });
  if (rc == -1) return zpc_bad_dtype(b, "cast", zpc_is_float(dt) ? st : dt);
  return rc;
}

/* ---------------------------------------------------------------- accumulate */

template <typename TD, typename TS>
__global__ void zpc_accumulate_kernel(TD* dst, const TS* src, size_t n, float scale) {
  typedef zpc_acc_t<TD, TS> A;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    zpc_st(dst + i, zpc_ld<A>(dst + i) + (A)scale * zpc_ld<A>(src + i));
}

int zpc_accumulate(zp_backend* b, void* dst, zp_dtype dt, const void* src, zp_dtype st, size_t n,
                   float scale) {
  if (n == 0) return ZP_OK;
  int rc = zpc_with_dtype(dt, [&](auto* dtag) {
    typedef typename std::remove_pointer<decltype(dtag)>::type TD;
    return zpc_with_dtype(st, [&](auto* stag) {
      typedef typename std::remove_pointer<decltype(stag)>::type TS;
      zpc_accumulate_kernel<TD, TS>
          <<<zpc_grid(b, n, 256), 256, 0, b->stream>>>((TD*)dst, (const TS*)src, n, scale);
      ZPC_LAUNCHED(b, "accumulate");
      return (int)ZP_OK;
    });
  });
  if (rc == -1)
    return zpc_bad_dtype(b, "accumulate", zpc_is_float(dt) ? st : dt);
  return rc;
}

/* ---------------------------------------------------------------- fill, scale */

template <typename T>
__global__ void zpc_fill_kernel(T* dst, size_t n, double value) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    zpc_st(dst + i, value);
}

__global__ void zpc_fill_i32_kernel(int32_t* dst, size_t n, int32_t value) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    dst[i] = value;
}

int zpc_fill(zp_backend* b, void* dst, zp_dtype dt, size_t n, double value) {
  if (n == 0) return ZP_OK;
  if (dt == ZP_I32 || dt == ZP_U16) {
    if (dt == ZP_U16) {
      if (value != 0.0) return zpc_bad_dtype(b, "fill (non-zero)", dt);
      ZPC_CUDA(b, cudaMemsetAsync(dst, 0, n * 2, b->stream));
      return ZP_OK;
    }
    zpc_fill_i32_kernel<<<zpc_grid(b, n, 256), 256, 0, b->stream>>>((int32_t*)dst, n,
                                                                    (int32_t)value);
    ZPC_LAUNCHED(b, "fill_i32");
    return ZP_OK;
  }
  int rc = zpc_with_dtype(dt, [&](auto* tag) {
    typedef typename std::remove_pointer<decltype(tag)>::type T;
    zpc_fill_kernel<T><<<zpc_grid(b, n, 256), 256, 0, b->stream>>>((T*)dst, n, value);
    ZPC_LAUNCHED(b, "fill");
    return (int)ZP_OK;
  });
  if (rc == -1) return zpc_bad_dtype(b, "fill", dt);
  return rc;
}

template <typename T>
__global__ void zpc_scale_kernel(T* x, size_t n, float s) {
  typedef zpc_acc_t<T, T> A;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    zpc_st(x + i, zpc_ld<A>(x + i) * (A)s);
}

int zpc_scale(zp_backend* b, void* x, zp_dtype dt, size_t n, float s) {
  if (n == 0) return ZP_OK;
  int rc = zpc_with_dtype(dt, [&](auto* tag) {
    typedef typename std::remove_pointer<decltype(tag)>::type T;
    zpc_scale_kernel<T><<<zpc_grid(b, n, 256), 256, 0, b->stream>>>((T*)x, n, s);
    ZPC_LAUNCHED(b, "scale");
    return (int)ZP_OK;
  });
  if (rc == -1) return zpc_bad_dtype(b, "scale", dt);
  return rc;
}

/* ---------------------------------------------------------------- bf16 activations */

#define ZPC_GELU_S 0.7978845608028654f /* sqrt(2/pi) */
#define ZPC_GELU_K 0.044715f

__device__ __forceinline__ float zpc_gelu(float x) {
  float u = ZPC_GELU_S * (x + ZPC_GELU_K * x * x * x);
  return 0.5f * x * (1.0f + tanhf(u));
}
__device__ __forceinline__ float zpc_gelu_grad(float x, float dout) {
  float u = ZPC_GELU_S * (x + ZPC_GELU_K * x * x * x);
  float t = tanhf(u);
  float sech2 = 1.0f - t * t;
  float local = 0.5f * (1.0f + t) + 0.5f * x * sech2 * ZPC_GELU_S * (1.0f + 3.0f * ZPC_GELU_K * x * x);
  return local * dout;
}

/* out = f(a[, c]) elementwise over bf16; the functor sees fp32 values */
struct zpc_gelu_f {
  __device__ float operator()(float a, float) const { return zpc_gelu(a); }
};
struct zpc_gelu_bwd_f {
  __device__ float operator()(float x, float dout) const { return zpc_gelu_grad(x, dout); }
};
struct zpc_add_f {
  __device__ float operator()(float a, float c) const { return a + c; }
};

/* vectorised path: 8 bf16 per 16-byte access; elements [n8*8, n) done scalar. c may be NULL. */
template <typename F, bool VEC>
__global__ void zpc_binary_kernel(bf16* out, const bf16* a, const bf16* c, size_t n, F f) {
  size_t tid = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  size_t stride = (size_t)gridDim.x * blockDim.x;
  size_t start_scalar = 0;
  if (VEC) {
    size_t n8 = n / 8;
    for (size_t i = tid; i < n8; i += stride) {
      uint4 va = ((const uint4*)a)[i];
      uint4 vc = c ? ((const uint4*)c)[i] : va;
      const bf16* pa = (const bf16*)&va;
      const bf16* pc = (const bf16*)&vc;
      uint4 vo;
      bf16* po = (bf16*)&vo;
#pragma unroll
      for (int k = 0; k < 8; k++) po[k] = f2bf(f(bf2f(pa[k]), bf2f(pc[k])));
      ((uint4*)out)[i] = vo;
    }
    start_scalar = n8 * 8;
  }
  for (size_t i = start_scalar + tid; i < n; i += stride)
    out[i] = f2bf(f(bf2f(a[i]), c ? bf2f(c[i]) : 0.0f));
}


template <typename F>
static int zpc_binary(zp_backend* b, const char* name, void* out, const void* a, const void* c,
                      size_t n, F f) {
  if (n == 0) return ZP_OK;
  bool vec = zpc_al16(out) && zpc_al16(a) && (!c || zpc_al16(c));
  unsigned grid = zpc_grid(b, vec ? (n + 7) / 8 : n, 256);
  if (vec)
    zpc_binary_kernel<F, true><<<grid, 256, 0, b->stream>>>((bf16*)out, (const bf16*)a,
                                                          (const bf16*)c, n, f);
  else
    zpc_binary_kernel<F, false><<<grid, 256, 0, b->stream>>>((bf16*)out, (const bf16*)a,
                                                           (const bf16*)c, n, f);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return zpc_cuda_fail(b, name, e, __FILE__, __LINE__);
  return ZP_OK;
}

int zpc_gelu_fwd(zp_backend* b, void* out, const void* inp, size_t n) {
  return zpc_binary(b, "kernel launch gelu_fwd", out, inp, NULL, n, zpc_gelu_f());
}

/* dinp = gelu'(inp) * dout (overwrite) */
int zpc_gelu_bwd(zp_backend* b, void* dinp, const void* inp, const void* dout, size_t n) {
  return zpc_binary(b, "kernel launch gelu_bwd", dinp, inp, dout, n, zpc_gelu_bwd_f());
}

int zpc_residual_fwd(zp_backend* b, void* out, const void* a, const void* c, size_t n) {
  return zpc_binary(b, "kernel launch residual_fwd", out, a, c, n, zpc_add_f());
}
