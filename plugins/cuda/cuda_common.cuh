/* cuda_common.cuh: what every file of the CUDA backend plugin shares (compute dtype bf16).
 *
 * Invariants:
 * - Every op is issued on b->stream, in call order; only synchronize(), copy_h2d, copy_d2h,
 *   sumsq, sumsq_many (once per call of up to ZPC_SUMSQ_SLOTS tensors), encoder_bwd (it bucket-sorts token ids on the host), free() and a growth of the op
 *   scratch wait for the stream.
 * - Every CUDA / cuBLASLt failure becomes ZP_E_DEVICE with a message naming the call and the
 *   CUDA error string, through zpc_err (host->set_error, or stderr when host is NULL).
 *   Nothing calls exit() or abort().
 * - Device scratch (zpc_scratch) is grow-only and belongs to one op call at a time: an op may
 *   use it only until it returns (later ops on the same stream may overwrite it).
 * - Float kernels read bf16, compute in fp32 (fp64 where a dtype says so) and round to
 *   nearest-even once when storing.
 * - One backend = one device; the caller keeps that device current on its thread (create()
 *   makes it current).
 * Nothing declared here is visible outside the module (-fvisibility=hidden); the only exported
 * symbol is zp_plugin_entry in cuda_backend.cu.
 */
#ifndef ZP_CUDA_COMMON_CUH
#define ZP_CUDA_COMMON_CUH

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cublasLt.h>
#include <stddef.h>
#include <stdint.h>
#include <type_traits>

#include "zp/zp_plugin.h"

typedef __nv_bfloat16 bf16;

#define ZPC_WORKSPACE_BYTES ((size_t)32 << 20) /* cuBLASLt workspace, allocated at create */
#define ZPC_SUMSQ_BLOCKS 1024                  /* fixed: keeps sumsq's summation order fixed */
#define ZPC_MAX_NCOMMS 16                      /* NCCL communicators with started allreduces */
#define ZPC_SUMSQ_SLOTS 1024                   /* sumsq_many: results per host wait (batch) */
#define ZPC_ALGO_CACHE 128                     /* cached cuBLASLt heuristic answers */
#define ZPC_TUNE_CANDIDATES 8                  /* heuristic answers timed with ZP_CUDA_GEMM_TUNE */

/* one cached cuBLASLt heuristic answer, keyed by everything that shapes the call */
struct zpc_algo_entry {
  int valid;
  int64_t key[20];
  cublasLtMatmulAlgo_t algo;
};

#define ZPC_COPY_EVENTS 1024
struct zp_backend {
  const zp_host* host;
  int device;
  int legacy_stream;     /* ZP_CUDA_STREAM=legacy: ops go to the legacy default stream (tests) */
  int attn_flash;        /* ZP_CUDA_ATTN: 2 fa2 (mma.sync), 1 flash (WMMA), 0 naive */
  int fa2_fwd;           /* ZP_CUDA_FA2_FWD: 0 fast, 1 w8 (attention_fa2.cu), 2 wg (attention_wgmma.cu) */
  int fa2_bwd;           /* ZP_CUDA_FA2_BWD: 0 base, 1 kv2, 2 fused, 3 atomic (2, 3: a workspace),
                            4 wg (attention_wgmma_bwd.cu) */
  int fuse_gelu;         /* ZP_CUDA_FUSE_GELU: 1 GELU in the GEMM epilogues, 0 separate kernels */
  int ln_fast;           /* ZP_CUDA_LN: 0 legacy, 1 fast (vectorized), 2 pf (fast + prefetch),
                            3 warp (one warp per row, kernels_layernorm_warp.cu) */
  int fuse_res;          /* ZP_CUDA_FUSE_RES: 1 residual as the GEMM's C (beta 1), 0 two passes */
  int xent;              /* ZP_CUDA_XENT: softmax_xent kernel, 0 base, 1 fast, 2 smem (softmax_xent.cu) */
  cudaEvent_t* timer_ev; /* timer slots (1.3): events created on first use */
  int n_timer_ev;
  int gemm_tune;         /* ZP_CUDA_GEMM_TUNE: 0 heuristic's first answer, 1 time up to
                            ZPC_TUNE_CANDIDATES answers per new GEMM key, 2 also print each */
  int adamw_pieces;      /* ZP_CUDA_ADAMW_PIECES: 1 one launch set per range, 0 one per piece */
  int bgrad;             /* ZP_CUDA_BGRAD: 1 bias gradients in the dW GEMM's epilogue, 0 column sums */
  int bgrad_unsupported; /* cuBLASLt offered no BGRADB algorithm: column sums from then on */
  int bias_after;        /* ZP_CUDA_BIAS_SUMS: 0 first (matmul_bwd's column sums before its dW GEMM), 1 after */
  int nccl_async;        /* ZP_CUDA_NCCL_ASYNC: 1 NCCL communicators offer allreduce_start / wait (1.9) */
  void* ncomm[ZPC_MAX_NCOMMS]; /* those communicators (comm_nccl.cu), drained before blocking waits */
  int n_ncomm;
  int tune_evict_warned; /* a tuned algo_cache entry was overwritten (warned once) */
  cudaStream_t stream;
  /* copies beside the compute (1.5): one stream per direction (both copy engines), created on
   * the first copy_async; ticket t's completion is copy_ev[t % ZPC_COPY_EVENTS] (re-recorded
   * by ticket t + ZPC_COPY_EVENTS: waiting on an old ticket then waits longer, never less) */
  cudaStream_t copy_stream[2]; /* [0] device -> host, [1] host -> device */
  cudaEvent_t copy_order;      /* recorded on the compute stream before each copy */
  cudaEvent_t* copy_ev;
  uint64_t copy_next;          /* last ticket issued */
  /* the side stream (1.7, side_begin/side_end): created on first use; while in_side, b->stream
   * is the side stream and main_stream the compute stream. side_last: ticket (event in copy_ev)
   * after the side work the compute stream has not waited for yet (0: none); copy_d2h makes
   * the compute stream wait for it first. ZP_CUDA_PRIO=1 (default; 0: all streams equal): the
   * compute stream and the NCCL streams are created with the greatest priority, the side stream
   * with the lowest, so the optimizer's blocks fill gaps instead of competing (perf.md 19). */
  cudaStream_t side_stream, main_stream;
  int in_side, prio;
  int grad_overwrite; /* 1.8: parameter gradients overwritten (dW beta 0, column sums stored) */
  int sumsq_many;     /* ZP_CUDA_SUMSQ_MANY: 1 one wait per call (default), 0 one per tensor */
  int adamw_grid;        /* ZP_CUDA_ADAMW_GRID: 0 capped (16 blocks per SM, grid-stride), 1 full (default)
                            (one block per 1024 elements: short blocks that interleave with other
                            streams' kernels) */
  uint64_t side_last;
  cublasLtHandle_t lt;
  void* workspace;       /* ZPC_WORKSPACE_BYTES for cuBLASLt */
  void* scratch;         /* grow-only per-op scratch */
  size_t scratch_bytes;
  double* d_sumsq;       /* ZPC_SUMSQ_BLOCKS + 1 doubles */
  double* h_sumsq;       /* pinned: 1 double */
  double* d_sumsq_slots; /* sumsq_many (1.8): ZPC_SUMSQ_SLOTS results on the device */
  double* h_sumsq_slots; /* pinned: ZPC_SUMSQ_SLOTS doubles (allocated at create, never in a call) */
  double* d_sumsq_side;    /* sumsq_start (1.9): partials of the starts (ZPC_SUMSQ_BLOCKS doubles) */
  double* d_sumsq_started; /* sumsq_start: ZP_SUMSQ_START_SLOTS results on the device */
  double* h_sumsq_started; /* pinned: ZP_SUMSQ_START_SLOTS doubles, sumsq_collect's copy */
  int32_t* h_tok;        /* pinned staging for encoder_bwd: token ids, then bucket arrays */
  size_t h_tok_cap;      /* in int32 elements */
  int sm_count;
  int cc_major, cc_minor;
  double peak_flops;
  char device_name[256];
  struct zpc_algo_entry algo_cache[ZPC_ALGO_CACHE];
  int algo_next;
};

/* ---- errors (cuda_backend.cu) ---- */
int zpc_err(const zp_host* host, int status, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));
int zpc_cuda_fail(zp_backend* b, const char* what, cudaError_t e, const char* file, int line);
int zpc_lt_fail(zp_backend* b, const char* what, cublasStatus_t s, const char* file, int line);
/* a message through host->log (stderr for WARN and worse when there is no host log) */
void zpc_log(zp_backend* b, zp_log_level lvl, const char* msg);

#define ZPC_CUDA(b, call)                                                          \
  do {                                                                             \
    cudaError_t zpc_e_ = (call);                                                   \
    if (zpc_e_ != cudaSuccess) return zpc_cuda_fail((b), #call, zpc_e_, __FILE__, __LINE__); \
  } while (0)
#define ZPC_LT(b, call)                                                            \
  do {                                                                             \
    cublasStatus_t zpc_s_ = (call);                                                \
    if (zpc_s_ != CUBLAS_STATUS_SUCCESS)                                           \
      return zpc_lt_fail((b), #call, zpc_s_, __FILE__, __LINE__);                  \
  } while (0)
/* after a <<<>>> launch: reports launch-configuration errors (and earlier sticky errors) */
#define ZPC_LAUNCHED(b, name)                                                      \
  do {                                                                             \
    cudaError_t zpc_e_ = cudaGetLastError();                                       \
    if (zpc_e_ != cudaSuccess)                                                     \
      return zpc_cuda_fail((b), "kernel launch " name, zpc_e_, __FILE__, __LINE__); \
  } while (0)
#define ZPC_INVALID(b, ...) zpc_err((b)->host, ZP_E_INVALID, __VA_ARGS__)

/* grow-only scratch: *out points at >= bytes of device memory valid until the op returns.
 * Growing synchronizes the stream first (the old block may still be in use). */
int zpc_scratch(zp_backend* b, size_t bytes, void** out);
/* carve a 256-byte aligned sub-block of `bytes` at *off of a scratch base */
static inline void* zpc_carve(void* base, size_t* off, size_t bytes) {
  size_t o = (*off + 255) & ~(size_t)255;
  *off = o + bytes;
  return (char*)base + o;
}
static inline size_t zpc_round256(size_t x) { return (x + 255) & ~(size_t)255; }
static inline bool zpc_al16(const void* p) { return ((uintptr_t)p & 15u) == 0; } /* NULL counts as aligned */

/* The LayerNorm backward's row chunks and parameter-gradient partials (fast, pf and warp
 * kernels): rpc = max(32, ceil(N / 1024)) rows per chunk, a function of N only (so every sum's
 * order is), nchunks chunks; the op scratch holds [nchunks, C] fp32 partial rows for dw (*pdw)
 * and for dbias (*pdb), each NULL where that output is not wanted. */
#define ZPC_LN_MAX_CHUNKS 1024 /* partial rows of dw / dbias, at most */
#define ZPC_LN_MIN_CHUNK 32    /* rows per chunk, at least */
static inline int zpc_ln_partials(zp_backend* b, int N, int C, bool dw, bool dbias, int* rpc, int* nchunks,
                                  float** pdw, float** pdb) {
  int r = N / ZPC_LN_MAX_CHUNKS + (N % ZPC_LN_MAX_CHUNKS != 0);
  if (r < ZPC_LN_MIN_CHUNK) r = ZPC_LN_MIN_CHUNK;
  *rpc = r;
  *nchunks = N / r + (N % r != 0);
  *pdw = *pdb = NULL;
  if (!dw && !dbias) return ZP_OK;
  void* s = NULL;
  const size_t one = zpc_round256((size_t)*nchunks * C * sizeof(float));
  int rc = zpc_scratch(b, 2 * one, &s);
  if (rc) return rc;
  if (dw) *pdw = (float*)s;
  if (dbias) *pdb = (float*)((char*)s + one);
  return ZP_OK;
}

/* grid for a grid-stride loop over n items with `threads` per block */
static inline unsigned zpc_grid(const zp_backend* b, size_t n, int threads) {
  size_t want = (n + (size_t)threads - 1) / (size_t)threads;
  size_t cap = (size_t)(b->sm_count > 0 ? b->sm_count : 132) * 16;
  if (want > cap) want = cap;
  if (want < 1) want = 1;
  return (unsigned)want;
}

/* ---- device conversion helpers: load as A (float or double), store with one rounding ---- */
template <typename A> __device__ __forceinline__ A zpc_ld(const float* p) { return (A)*p; }
template <typename A> __device__ __forceinline__ A zpc_ld(const double* p) { return (A)*p; }
template <typename A> __device__ __forceinline__ A zpc_ld(const bf16* p) {
  return (A)__bfloat162float(*p);
}
__device__ __forceinline__ void zpc_st(float* p, float v) { *p = v; }
__device__ __forceinline__ void zpc_st(float* p, double v) { *p = (float)v; }
__device__ __forceinline__ void zpc_st(double* p, float v) { *p = (double)v; }
__device__ __forceinline__ void zpc_st(double* p, double v) { *p = v; }
__device__ __forceinline__ void zpc_st(bf16* p, float v) { *p = __float2bfloat16(v); }
__device__ __forceinline__ void zpc_st(bf16* p, double v) { *p = __double2bfloat16(v); }
__device__ __forceinline__ float bf2f(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ bf16 f2bf(float x) { return __float2bfloat16(x); }

__device__ __forceinline__ float zpc_warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float zpc_warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

/* 8 bf16 (one 16-byte vector; element 0 in the low half of .x) <-> 8 floats (the LayerNorm kernels) */
__device__ __forceinline__ void zpc_unpack8(uint4 u, float (&f)[8]) {
  const uint32_t q[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    f[2 * i] = __uint_as_float(q[i] << 16);
    f[2 * i + 1] = __uint_as_float(q[i] & 0xffff0000u);
  }
}
__device__ __forceinline__ uint32_t zpc_pack2(float lo, float hi) {
  __nv_bfloat162_raw h = __floats2bfloat162_rn(lo, hi); /* one cvt, round to nearest even */
  return (uint32_t)h.x | ((uint32_t)h.y << 16);
}
__device__ __forceinline__ uint4 zpc_pack8(const float (&f)[8]) {
  return make_uint4(zpc_pack2(f[0], f[1]), zpc_pack2(f[2], f[3]), zpc_pack2(f[4], f[5]),
                    zpc_pack2(f[6], f[7]));
}

/* Block (32, 32), column c = blockIdx.x * 32 + threadIdx.x: dst[c] (+)= sum_r part[r, c], the
 * partial rows r = threadIdx.y, + 32, ... summed per lane, then the 32 lanes in order (a fixed
 * order: deterministic); added into dst, or stored when overwrite (grad_overwrite, 1.8: the bits
 * of adding into +0, up to the sign of a zero). Every thread of the block must call it. */
__device__ __forceinline__ void zpc_colsum_block(bf16* dst, const float* part, int R, int C, int overwrite) {
  __shared__ float sh[32][33];
  const int c = blockIdx.x * 32 + threadIdx.x;
  float s = 0.0f;
  if (c < C)
    for (int r = threadIdx.y; r < R; r += 32) s += part[(size_t)r * C + c];
  sh[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float t = 0.0f;
    for (int k = 0; k < 32; k++) t += sh[k][threadIdx.x];
    dst[c] = overwrite ? f2bf(t) : f2bf(bf2f(dst[c]) + t);
  }
}

/* host-side dtype dispatch: calls f((T*)nullptr) for T in float, bf16, double */
template <typename F> static inline int zpc_with_dtype(zp_dtype dt, F&& f) {
  switch (dt) {
    case ZP_F32: return f((float*)nullptr);
    case ZP_BF16: return f((bf16*)nullptr);
    case ZP_F64: return f((double*)nullptr);
    default: return -1;
  }
}

/* ---- cuBLASLt GEMM in row-major terms (matmul_cublaslt.cu) ----
 * D[M,N] = alpha * op(A)[M,K] @ op(B)[K,N] + beta * D  (+ bias[N] broadcast over rows),
 * per batch item (strides in elements). A, B bf16; D bf16 or fp32; fp32 accumulation.
 * op(A) = A^T when transa (A stored [K,M]), else A (stored [M,K]); same for B. */
struct zpc_gemm {
  int transa, transb;
  int M, N, K;
  const void* A; int64_t lda; int64_t strideA;
  const void* B; int64_t ldb; int64_t strideB;
  void* D; int64_t ldd; int64_t strideD;
  int d_fp32;          /* 1: D is fp32, else bf16 */
  int batch;           /* >= 1 */
  float alpha, beta;
  const void* bias;    /* bf16 [N] or NULL (only with d_fp32 == 0, batch == 1) */
  int epi_gelu;        /* 0; 1: D = gelu(AB + bias), aux = AB + bias; 2: D = AB * gelu'(aux) */
  void* aux;           /* bf16, same shape and ld as D (epi_gelu != 0; bf16 D, batch 1) */
  const void* C;       /* beta != 0: the addend, same type and layout as D; NULL: D itself */
  void* bgrad;         /* CUBLASLT_EPILOGUE_BGRADB: bgrad[M] (bf16, overwritten) = sums over K
                        * of op(A)'s columns (transa = 1: A's columns, i.e. the bias gradient
                        * of a dW GEMM); not with bias or a GELU epilogue; batch 1 */
};
int zpc_gemm_run(zp_backend* b, const struct zpc_gemm* g);

/* ---- deterministic column sums (kernels_reduce.cu) ----
 * dst[c] (bf16) += sum_{r<R} part[r*C + c] (fp32), summed in a fixed order; stored instead of
 * added while b->grad_overwrite (every caller writes a parameter gradient). */
int zpc_colsum_add(zp_backend* b, bf16* dst, const float* part, int R, int C);
/* zpc_rowchunks(N) (<= 1024, a function of N only) row chunks; zpc_colsum_partials writes
 * part[chunk*C + c] = sum of x[r*C + c] over the rows r of the chunk, so part must hold
 * zpc_rowchunks(N) * C floats. */
int zpc_rowchunks(int N);
int zpc_colsum_partials(zp_backend* b, float* part, const bf16* x, int N, int C);

/* ---- the ops (one file per concern) ---- */
int zpc_cast(zp_backend* b, void* dst, zp_dtype dt, const void* src, zp_dtype st, size_t n);
int zpc_accumulate(zp_backend* b, void* dst, zp_dtype dt, const void* src, zp_dtype st, size_t n,
                   float scale);
int zpc_fill(zp_backend* b, void* dst, zp_dtype dt, size_t n, double value);
int zpc_scale(zp_backend* b, void* x, zp_dtype dt, size_t n, float s);
int zpc_sumsq(zp_backend* b, double* out_host, const void* x, zp_dtype dt, size_t n);
/* 1.9: before a blocking wait, the started allreduces the compute stream waits for are polled
 * to completion under their deadline (comm_nccl.cu; ZP_OK at once without any) */
int zpc_comm_drain(zp_backend* b);
void zpc_comm_detach_all(zp_backend* b); /* at destroy: communicators that outlive b forget it */
/* a host wait for stream s (in a function returning a status): the drain, then the sync */
#define ZPC_SYNC(b, s)                        \
  do {                                        \
    int zpc_drc_ = zpc_comm_drain(b);         \
    if (zpc_drc_) return zpc_drc_;            \
    ZPC_CUDA((b), cudaStreamSynchronize(s));  \
  } while (0)
int zpc_sumsq_start(zp_backend* b, int slot, const void* x, zp_dtype dt, size_t n);
int zpc_sumsq_collect(zp_backend* b, int count, double* out_host);
int zpc_sumsq_many(zp_backend* b, int count, const void* const* xs, const zp_dtype* dts,
                   const size_t* ns, double* out_host);
int zpc_gelu_fwd(zp_backend* b, void* out, const void* inp, size_t n);
int zpc_gelu_bwd(zp_backend* b, void* dinp, const void* inp, const void* dout, size_t n);
int zpc_residual_fwd(zp_backend* b, void* out, const void* a, const void* c, size_t n);
int zpc_encoder_fwd(zp_backend* b, void* out, const int32_t* inp, const void* wte, const void* wpe,
                    int B, int T, int C);
int zpc_encoder_bwd(zp_backend* b, void* dwte, void* dwpe, const void* dout, const int32_t* inp,
                    int B, int T, int C);
/* LayerNorm: _fast (kernels_layernorm.cu, vectorized; with ZP_CUDA_LN=pf its prefetching
 * kernels, b->ln_fast == ZPC_LN_PF), _warp (kernels_layernorm_warp.cu, one warp per row,
 * b->ln_fast == ZPC_LN_WARP; shapes it does not take run _fast as pf) and _legacy
 * (kernels_layernorm_legacy.cu); the backend's op picks one by b->ln_fast (ZP_CUDA_LN) */
#define ZPC_LN_PF 2
#define ZPC_LN_WARP 3
int zpc_layernorm_fwd_fast(zp_backend* b, void* out, float* mean, float* rstd, const void* inp,
                           const void* w, const void* bias, int N, int C);
int zpc_layernorm_bwd_fast(zp_backend* b, void* dinp, void* dw, void* dbias, const void* dout,
                           const void* inp, const void* w, const float* mean, const float* rstd,
                           int N, int C);
int zpc_layernorm_fwd_warp(zp_backend* b, void* out, float* mean, float* rstd, const void* inp,
                           const void* w, const void* bias, int N, int C);
int zpc_layernorm_bwd_warp(zp_backend* b, void* dinp, void* dw, void* dbias, const void* dout,
                           const void* inp, const void* w, const float* mean, const float* rstd,
                           int N, int C);
int zpc_layernorm_fwd_legacy(zp_backend* b, void* out, float* mean, float* rstd, const void* inp,
                             const void* w, const void* bias, int N, int C);
int zpc_layernorm_bwd_legacy(zp_backend* b, void* dinp, void* dw, void* dbias, const void* dout,
                             const void* inp, const void* w, const float* mean, const float* rstd,
                             int N, int C);
int zpc_matmul_fwd(zp_backend* b, void* out, const void* inp, const void* w, const void* bias,
                   int N, int IC, int OC);
int zpc_matmul_bwd(zp_backend* b, void* dinp, void* dw, void* dbias, const void* dout,
                   const void* inp, const void* w, int N, int IC, int OC);
int zpc_matmul_res_fwd(zp_backend* b, void* out, const void* inp, const void* w,
                       const void* bias, const void* res, int N, int IC, int OC);
int zpc_matmul_gelu_fwd(zp_backend* b, void* out, void* pre, const void* inp, const void* w,
                        const void* bias, int N, int IC, int OC);
int zpc_matmul_dgelu_bwd(zp_backend* b, void* dinp, void* dw, void* dbias, const void* dout,
                         const void* inp, const void* w, const void* pre, int N, int IC, int OC);
int zpc_matmul_dgelu_bgrad_bwd(zp_backend* b, void* dinp, void* dpb, void* dw, void* dbias,
                               const void* dout, const void* inp, const void* w, const void* pre,
                               int N, int IC, int OC);
size_t zpc_attention_aux_bytes(zp_backend* b, int B, int T, int C, int NH);
int zpc_attention_fwd(zp_backend* b, void* out, void* aux, const void* qkv, int B, int T, int C,
                      int NH);
int zpc_attention_bwd(zp_backend* b, void* dqkv, const void* dout, const void* qkv,
                      const void* out, const void* aux, int B, int T, int C, int NH);
/* flash variant (attention_flash.cu); aux = logsumexp fp32 [B, NH, T]; head sizes 32/64/128 */
int zpc_flash_supported(int C, int NH);
size_t zpc_flash_aux_bytes(int B, int T, int C, int NH);
int zpc_flash_fwd(zp_backend* b, void* out, void* aux, const void* qkv, int B, int T, int C,
                  int NH);
int zpc_flash_bwd(zp_backend* b, void* dqkv, const void* dout, const void* qkv, const void* out,
                  const void* aux, int B, int T, int C, int NH);
/* mma.sync variant (attention_fa2.cu): same aux as the flash variant; usable when the head
 * size is 32/64/128, C % 8 == 0 and the four pointers are 16-byte aligned */
int zpc_fa2_usable(int C, int NH, const void* p0, const void* p1, const void* p2, const void* p3);
int zpc_fa2_fwd(zp_backend* b, void* out, void* aux, const void* qkv, int B, int T, int C,
                int NH);
int zpc_fa2_bwd(zp_backend* b, void* dqkv, const void* dout, const void* qkv, const void* out,
                const void* aux, int B, int T, int C, int NH);
/* bwd variants fused / atomic (ABI 1.4 attention_bwd_ws): workspace bytes for the shape (0
 * unless ZP_CUDA_FA2_BWD=fused or atomic and the head size is 32 or 64; the same for both); the
 * backward with that workspace (without one, or at 0 bytes: zpc_fa2_bwd, whose fused and atomic
 * choices run kv2) */
size_t zpc_fa2_bwd_ws_bytes(const zp_backend* b, int B, int T, int C, int NH);
int zpc_fa2_bwd_ws(zp_backend* b, void* dqkv, const void* dout, const void* qkv, const void* out,
                   const void* aux, void* ws, int B, int T, int C, int NH);
/* D[b,h,t] = sum_d dO . O (fp32 [B, NH, T]) into the backend's scratch: the first step of every
 * fa2 / wg backward (attention_fa2.cu); HS 32, 64 or 128 */
int zpc_fa2_prep_D(zp_backend* b, void** Dv, const void* dout, const void* out, int B, int T,
                   int NH, int HS);
/* Hopper wgmma variants (ZP_CUDA_FA2_FWD=wg, ZP_CUDA_FA2_BWD=wg; attention_wgmma.cu and
 * attention_wgmma_bwd.cu, compiled for sm_90a only, ZPC_HAVE_WGMMA): head size 64, the fa2
 * contract (same aux, same alignment rules); callers check zpc_wg_usable first, else they run
 * fast / kv2 */
int zpc_wg_usable(const zp_backend* b, int C, int NH);
int zpc_wg_fwd(zp_backend* b, void* out, void* aux, const void* qkv, int B, int T, int NH);
int zpc_wg_bwd(zp_backend* b, void* dqkv, const void* dout, const void* qkv, const void* out,
               const void* aux, int B, int T, int NH);
int zpc_softmax_xent(zp_backend* b, float* losses, void* logits, const int32_t* targets, int N,
                     int V, int Vp, float dloss);
/* tensor parallelism (0.3): kernels_encoder.cu, softmax_xent.cu */
int zpc_encoder_masked_fwd(zp_backend* b, void* out, const int32_t* ids, const void* wte,
                           const void* wpe, int B, int T, int C);
int zpc_encoder_masked_bwd(zp_backend* b, void* dwte, void* dwpe, const void* dout,
                           const int32_t* ids, int B, int T, int C);
int zpc_softmax_xent_vp(zp_backend* b, int phase, float* losses, void* logits, void* stats,
                        const int32_t* targets, int N, int Vl, int nreal, int v0, float dloss);
int zpc_adamw(zp_backend* b, void* param, zp_dtype pdt, float* master, const void* grad,
              zp_dtype gdt, float* m, float* v, size_t n, float lr, float beta1, float beta2,
              float eps, float weight_decay, float grad_scale, int step_t);
int zpc_adamw_pieces(zp_backend* b, void* param, zp_dtype pdt, float* master, const void* grad,
                     zp_dtype gdt, float* m, float* v, int n_pieces, const uint64_t* piece_end,
                     const float* piece_wd, float lr, float beta1, float beta2, float eps,
                     float grad_scale, int step_t);

/* ---- device communicator over NCCL (comm_nccl.cu; only when built with NCCL) ----
 * The backend's optional comm_unique_id / comm_create (zp_plugin.h). Each communicator owns
 * a non-blocking stream, two events and a 64 KiB host/device staging pair; its collectives
 * are ordered after b->stream's queued work and b->stream waits for them. */
#ifdef ZP_HAVE_NCCL
int zpc_comm_unique_id(zp_backend* b, void* id, size_t* len);
int zpc_comm_create(zp_backend* b, const void* id, size_t len, int rank, int size,
                    double timeout_s, zp_comm** out);
#endif

#endif
