/* kernels_reduce.cu: deterministic reductions: column sums (bias / layernorm parameter grads)
 * and sumsq (gradient norm; sumsq_many, ABI 1.8: many tensors, one host wait; sumsq_start /
 * sumsq_collect, ABI 1.9: started beside the backward, collected at the step).
 *
 * Invariants: no floating-point atomics anywhere; every partition of the work (row chunks,
 * blocks) is a function of the problem size only, never of the device, so a result is bitwise
 * repeatable run to run on any GPU. Column sums accumulate in fp32, sumsq in fp64.
 */
#include <stdint.h>
#include <string.h>

#include "cuda_common.cuh"

/* ---------------------------------------------------------------- column sums */

#define ZPC_COLSUM_MAXCHUNKS 1024

static int zpc_rows_per_chunk(int N) {
  int r = (N + ZPC_COLSUM_MAXCHUNKS - 1) / ZPC_COLSUM_MAXCHUNKS;
  return r < 32 ? 32 : r;
}

/* number of row chunks zpc_colsum_partials produces for N rows (<= 1024) */
int zpc_rowchunks(int N) {
  int rpc = zpc_rows_per_chunk(N);
  return (N + rpc - 1) / rpc;
}

/* block (64, 4): x = column in a 64-column tile, y = row lane; grid (tiles, chunks) */
__global__ void zpc_colsum_partials_kernel(float* part, const bf16* x, int N, int C, int rpc) {
  __shared__ float sh[4][64];
  int c = blockIdx.x * 64 + threadIdx.x;
  int chunk = blockIdx.y;
  int r0 = chunk * rpc;
  int r1 = min(N, r0 + rpc);
  float s = 0.0f;
  if (c < C)
    for (int r = r0 + threadIdx.y; r < r1; r += 4) s += bf2f(x[(size_t)r * C + c]);
  sh[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < C)
    part[(size_t)chunk * C + c] = ((sh[0][threadIdx.x] + sh[1][threadIdx.x]) + sh[2][threadIdx.x]) +
                                  sh[3][threadIdx.x];
}

/* the same partition with 16-byte loads: thread x owns 8 neighbouring columns of a 512-column
 * tile; per column the rows are summed in exactly the scalar kernel's order (lane y: rows
 * r0 + y, r0 + y + 4, ...; then ((y0 + y1) + y2) + y3), so the partials are bitwise equal.
 * Needs C % 8 == 0 and x 16-byte aligned. */
__global__ void zpc_colsum_partials8_kernel(float* part, const bf16* x, int N, int C, int rpc) {
  __shared__ float sh[4][512];
  const int c = (blockIdx.x * 64 + threadIdx.x) * 8;
  const int chunk = blockIdx.y;
  const int r0 = chunk * rpc;
  const int r1 = min(N, r0 + rpc);
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  if (c < C)
    for (int r = r0 + threadIdx.y; r < r1; r += 4) {
      const uint4 u = *(const uint4*)(x + (size_t)r * C + c);
      const bf16* e = (const bf16*)&u;
#pragma unroll
      for (int k = 0; k < 8; k++) s[k] += bf2f(e[k]);
    }
#pragma unroll
  for (int k = 0; k < 8; k++) sh[threadIdx.y][threadIdx.x * 8 + k] = s[k];
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float o[8];
#pragma unroll
    for (int k = 0; k < 8; k++) {
      const int j = threadIdx.x * 8 + k;
      o[k] = ((sh[0][j] + sh[1][j]) + sh[2][j]) + sh[3][j];
    }
    float4* d = (float4*)(part + (size_t)chunk * C + c);
    d[0] = make_float4(o[0], o[1], o[2], o[3]);
    d[1] = make_float4(o[4], o[5], o[6], o[7]);
  }
}

int zpc_colsum_partials(zp_backend* b, float* part, const bf16* x, int N, int C) {
  int rpc = zpc_rows_per_chunk(N);
  int R = (N + rpc - 1) / rpc;
  if (C % 8 == 0 && (uintptr_t)x % 16 == 0 && (uintptr_t)part % 16 == 0) {
    dim3 grid((C + 511) / 512, R), block(64, 4);
    zpc_colsum_partials8_kernel<<<grid, block, 0, b->stream>>>(part, x, N, C, rpc);
    ZPC_LAUNCHED(b, "colsum_partials8");
    return ZP_OK;
  }
  dim3 grid((C + 63) / 64, R), block(64, 4);
  zpc_colsum_partials_kernel<<<grid, block, 0, b->stream>>>(part, x, N, C, rpc);
  ZPC_LAUNCHED(b, "colsum_partials");
  return ZP_OK;
}

/* block (32, 32): x = column, y = lane over partial rows; grid = column tiles of 32 */
/* dst[c] (+)= sum_r part[r, c]: added into dst, or stored when overwrite (grad_overwrite, 1.8:
 * the bits of adding into +0, up to the sign of a zero) */
__global__ void zpc_colsum_add_kernel(bf16* dst, const float* part, int R, int C, int overwrite) {
  zpc_colsum_block(dst, part, R, C, overwrite);
}

int zpc_colsum_add(zp_backend* b, bf16* dst, const float* part, int R, int C) {
  dim3 grid((C + 31) / 32), block(32, 32);
  zpc_colsum_add_kernel<<<grid, block, 0, b->stream>>>(dst, part, R, C, b->grad_overwrite);
  ZPC_LAUNCHED(b, "colsum_add");
  return ZP_OK;
}

/* ---------------------------------------------------------------- sumsq */

/* G blocks of 256 threads; thread t of the grid owns a fixed set of elements (16-byte vectors
 * of 16 / sizeof(T) elements when x is 16-byte aligned, then the tail), so the order of the
 * fp64 summation depends on n and G only. */
template <typename T>
__global__ void zpc_sumsq_partial_kernel(double* part, const T* x, size_t n) {
  __shared__ double sh[256];
  constexpr int V = 16 / sizeof(T);
  double s = 0.0;
  const size_t tid = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  const size_t nthr = (size_t)gridDim.x * blockDim.x;
  size_t nv = ((uintptr_t)x % 16 == 0) ? n / V : 0;
  for (size_t q = tid; q < nv; q += nthr) {
    union {
      uint4 u;
      T e[V];
    } w;
    w.u = *(const uint4*)(x + q * V);
#pragma unroll
    for (int k = 0; k < V; k++) {
      double v = zpc_ld<double>(&w.e[k]);
      s += v * v;
    }
  }
  for (size_t i = nv * V + tid; i < n; i += nthr) {
    double v = zpc_ld<double>(x + i);
    s += v * v;
  }
  sh[threadIdx.x] = s;
  __syncthreads();
  for (int o = 128; o > 0; o >>= 1) {
    if ((int)threadIdx.x < o) sh[threadIdx.x] += sh[threadIdx.x + o];
    __syncthreads();
  }
  if (threadIdx.x == 0) part[blockIdx.x] = sh[0];
}

/* one block of 1024 threads: out = sum of part[0..G) in a fixed tree */
__global__ void zpc_sumsq_final_kernel(double* out, const double* part, int G) {
  __shared__ double sh[1024];
  sh[threadIdx.x] = (int)threadIdx.x < G ? part[threadIdx.x] : 0.0;
  __syncthreads();
  for (int o = 512; o > 0; o >>= 1) {
    if ((int)threadIdx.x < o) sh[threadIdx.x] += sh[threadIdx.x + o];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = sh[0];
}

/* issue the partial and final kernels of the sum of squares of x (n > 0): *dst (device) = the
 * sum, in the fixed order set by n alone (ZPC_SUMSQ_BLOCKS caps the partial grid). Uses
 * part[0, G) for the partials (b->d_sumsq, or b->d_sumsq_side for sumsq_start): later calls
 * on the same stream may reuse it at once. */
static int zpc_sumsq_issue(zp_backend* b, double* dst, const void* x, zp_dtype dt, size_t n,
                           const char* op, double* part) {
  size_t want = (n + 255) / 256;
  int G = (int)(want < ZPC_SUMSQ_BLOCKS ? want : ZPC_SUMSQ_BLOCKS);
  int rc = zpc_with_dtype(dt, [&](auto* tag) {
    typedef typename std::remove_pointer<decltype(tag)>::type T;
    zpc_sumsq_partial_kernel<T><<<G, 256, 0, b->stream>>>(part, (const T*)x, n);
    ZPC_LAUNCHED(b, "sumsq_partial");
    return (int)ZP_OK;
  });
  if (rc == -1)
    return zpc_err(b->host, ZP_E_NOT_IMPLEMENTED, "cuda backend: %s: dtype %d not supported", op,
                   (int)dt);
  if (rc) return rc;
  zpc_sumsq_final_kernel<<<1, 1024, 0, b->stream>>>(dst, part, G);
  ZPC_LAUNCHED(b, "sumsq_final");
  return ZP_OK;
}

int zpc_sumsq(zp_backend* b, double* out_host, const void* x, zp_dtype dt, size_t n) {
  if (!out_host) return ZPC_INVALID(b, "cuda backend: sumsq: out_host is NULL");
  if (n == 0) {
    *out_host = 0.0;
    return ZP_OK;
  }
  int rc = zpc_sumsq_issue(b, b->d_sumsq + ZPC_SUMSQ_BLOCKS, x, dt, n, "sumsq", b->d_sumsq);
  if (rc) return rc;
  ZPC_CUDA(b, cudaMemcpyAsync(b->h_sumsq, b->d_sumsq + ZPC_SUMSQ_BLOCKS, sizeof(double),
                              cudaMemcpyDeviceToHost, b->stream));
  ZPC_SYNC(b, b->stream);
  *out_host = *b->h_sumsq;
  return ZP_OK;
}

/* ABI 1.8: tensor i's partial and final kernels as in zpc_sumsq (the same bits), the final one
 * writing slot i of b->d_sumsq_slots; then one copy of the slots to pinned memory and one wait
 * per batch of ZPC_SUMSQ_SLOTS tensors. Empty tensors launch nothing: their result is 0.0. */
int zpc_sumsq_many(zp_backend* b, int count, const void* const* xs, const zp_dtype* dts,
                   const size_t* ns, double* out_host) {
  if (count < 0) return ZPC_INVALID(b, "cuda backend: sumsq_many: negative count %d", count);
  if (count == 0) return ZP_OK;
  if (!out_host) return ZPC_INVALID(b, "cuda backend: sumsq_many: out_host is NULL");
  if (!xs || !dts || !ns)
    return ZPC_INVALID(b, "cuda backend: sumsq_many: %d tensors without their tables", count);
  if (!b->sumsq_many) { /* ZP_CUDA_SUMSQ_MANY=0 (A/B timing): one host wait per tensor */
    for (int i = 0; i < count; i++) {
      int rc = zpc_sumsq(b, out_host + i, xs[i], dts[i], ns[i]);
      if (rc) return rc;
    }
    return ZP_OK;
  }
  for (int first = 0, m = 0; first < count; first += m) { /* first + m <= count: no overflow */
    m = count - first < ZPC_SUMSQ_SLOTS ? count - first : ZPC_SUMSQ_SLOTS;
    int any = 0;
    for (int k = 0; k < m; k++) {
      const int i = first + k;
      if (ns[i] == 0) continue;
      int rc = zpc_sumsq_issue(b, b->d_sumsq_slots + k, xs[i], dts[i], ns[i], "sumsq_many", b->d_sumsq);
      if (rc) return rc;
      any = 1;
    }
    if (any) {
      ZPC_CUDA(b, cudaMemcpyAsync(b->h_sumsq_slots, b->d_sumsq_slots, (size_t)m * sizeof(double),
                                  cudaMemcpyDeviceToHost, b->stream));
      ZPC_SYNC(b, b->stream);
    }
    for (int k = 0; k < m; k++) out_host[first + k] = ns[first + k] ? b->h_sumsq_slots[k] : 0.0;
  }
  return ZP_OK;
}

/* ABI 1.9: sumsq's kernels into a device slot, on the current stream (the side stream when the
 * core starts them during the backward: their own partials buffer, so they never share one
 * with a sumsq on the compute stream); collect: one copy of the slots to pinned memory and one
 * wait on the compute stream. The same bits as sumsq. */
int zpc_sumsq_start(zp_backend* b, int slot, const void* x, zp_dtype dt, size_t n) {
  if (slot < 0 || slot >= ZP_SUMSQ_START_SLOTS)
    return ZPC_INVALID(b, "cuda backend: sumsq_start: slot %d out of range [0, %d)", slot, ZP_SUMSQ_START_SLOTS);
  if (n == 0) {
    ZPC_CUDA(b, cudaMemsetAsync(b->d_sumsq_started + slot, 0, sizeof(double), b->stream));
    return ZP_OK;
  }
  if (!x) return ZPC_INVALID(b, "cuda backend: sumsq_start: NULL pointer");
  return zpc_sumsq_issue(b, b->d_sumsq_started + slot, x, dt, n, "sumsq_start", b->d_sumsq_side);
}

int zpc_sumsq_collect(zp_backend* b, int count, double* out_host) {
  if (count < 0 || count > ZP_SUMSQ_START_SLOTS)
    return ZPC_INVALID(b, "cuda backend: sumsq_collect: count %d out of range [0, %d]", count, ZP_SUMSQ_START_SLOTS);
  if (count == 0) return ZP_OK;
  if (!out_host) return ZPC_INVALID(b, "cuda backend: sumsq_collect: out_host is NULL");
  ZPC_CUDA(b, cudaMemcpyAsync(b->h_sumsq_started, b->d_sumsq_started, (size_t)count * sizeof(double),
                              cudaMemcpyDeviceToHost, b->stream));
  ZPC_SYNC(b, b->stream);
  memcpy(out_host, b->h_sumsq_started, (size_t)count * sizeof(double));
  return ZP_OK;
}
