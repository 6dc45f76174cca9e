/* cuda_backend.cu: the CUDA backend plugin's descriptor, lifecycle, errors and memory.
 *
 * Invariants:
 * - zp_plugin_entry is the only exported symbol; it returns a static const descriptor of kind
 *   ZP_KIND_BACKEND, name "cuda", whose ops table is zpc_ops below.
 * - create() makes the device current, creates one non-blocking compute stream (or uses the
 *   legacy default stream when ZP_CUDA_STREAM=legacy, for event timing in tests), one cuBLASLt
 *   handle, the 32 MiB cuBLASLt workspace and the sumsq buffers (partials, the 1.8 sumsq_many
 *   result slots, and the 1.9 sumsq_start partials and slots, device and pinned); destroy()
 *   releases exactly those (plus scratch).
 * - Kernel choices, read at create() (defaults: ZPC_DEFAULT_* below):
 *   ZP_CUDA_ATTN = fa2: the mma.sync kernels of attention_fa2.cu where head size (32/64/128)
 *   and 16-byte alignment allow, else the WMMA kernels (same aux), else attention.cu;
 *   flash: the WMMA kernels of attention_flash.cu (head sizes 32/64/128, else attention.cu);
 *   naive: always the cuBLASLt path of attention.cu.
 *   ZP_CUDA_FUSE_GELU = 1: matmul_gelu_fwd / matmul_dgelu_bwd use cuBLASLt's GELU epilogues;
 *   0: they run matmul and the gelu kernel separately (same contract).
 *   ZP_CUDA_LN = warp (default: kernels_layernorm_warp.cu, one warp per row, no block barriers
 *   per row; shapes it does not take run pf; 1.26x / 1.20x faster fwd / bwd than pf at GPT-2
 *   1.5B's shape on the H100, docs/perf.md 24) | pf (kernels_layernorm.cu loading the next rows
 *   before the current ones' reductions; the same bits as fast) | fast (kernels_layernorm.cu
 *   without it) | legacy (kernels_layernorm_legacy.cu).
 *   ZP_CUDA_SUMSQ_MANY = 1 (default: sumsq_many waits once per call) | 0 (once per tensor, as
 *   sumsq calls would: for A/B timing; the same bits).
 *   ZP_CUDA_FUSE_RES = 1 (matmul_res_fwd: the residual is the GEMM's C) | 0 (two passes).
 *   ZP_CUDA_XENT = fast (default; 1.51x base at GPT-2 124M's rows, docs/perf.md 25) | base |
 *   smem: softmax_xent kernels (softmax_xent.cu's header says what each does; the same
 *   contract, not the same bits).
 *   ZP_CUDA_BGRAD = 0 (default: a deterministic column-sum pass over dout) | 1 (matmul_bwd's bias
 *   gradient from the dW GEMM's BGRADB epilogue: measured slower on the H100, docs/perf.md 15).
 *   ZP_CUDA_BIAS_SUMS = first (default: matmul_bwd's bias column sums before its dW GEMM, while
 *   dout may still be in L2) | after (after it, the order before ABI 1.9; for A/B timing).
 *   ZP_CUDA_NCCL_ASYNC = 0 (default) | 1: NCCL communicators offer ABI 1.9 allreduce_start /
 *   wait_started (comm_nccl.cu; opt-in until measured on 2 GPUs; every blocking wait here
 *   first drains the started ones under their deadline, zpc_comm_drain).
 *   ZP_CUDA_ADAMW_PIECES = 1 (adamw_pieces: a range's pieces in one launch set) | 0 (one launch
 *   set per piece, as before ABI 1.4: the same bits; for A/B timing).
 *   ZP_CUDA_GEMM_TUNE = 0 (default): each GEMM shape runs the cuBLASLt heuristic's first
 *   answer; 1: the first use of a shape times up to 8 heuristic answers and keeps the fastest
 *   (matmul_cublaslt.cu); 2: as 1 and prints one line per tuned shape to stderr. Opt-in
 *   because the choice depends on timings, so it may differ between processes.
 *   ZP_CUDA_FA2_FWD = fast | w8, ZP_CUDA_FA2_BWD = kv2 | base | fused | atomic: kernel variants of the
 *   fa2 attention (attention_fa2.cu's header says what each does); defaults fast and kv2 (the
 *   fastest in the H100 sweep of docs/perf.md). Any mix is valid: all share one aux. fused
 *   (HS 32 / 64) runs only through attention_bwd_ws (ABI 1.4: it needs the caller's workspace);
 *   plain attention_bwd with fused selected runs kv2, and HS 128 runs base. atomic
 *   (diagnostic, not bitwise deterministic): fused with dQ added by float atomics, same rules
 *   and the same workspace size.
 * - Memory is plain cudaMalloc/cudaFree (never managed). Copies run on the compute stream;
 *   copy_h2d and copy_d2h return only once the copy is complete (the host buffer may be reused
 *   or read at once); copy_d2d and memset0 are asynchronous like any op. copy_async (1.5) runs
 *   on one of two copy streams (per direction), after an event of the compute stream; free,
 *   host_free and destroy wait for the copy streams too.
 * - Errors: status code + message through host->set_error (stderr when host is NULL).
 * - comm_unique_id / comm_create: the NCCL device communicator (comm_nccl.cu) when built with
 *   ZP_HAVE_NCCL, else NULL (the core then uses its shared-memory communicator).
 */
/* Defaults of the kernel choices: the newer kernels (fa2 attention, fused GELU, fast
 * layernorm), made the defaults after tests/gpu/run_gpu_checks.sh passed with them on an H100
 * (2026-12-07, docs/perf.md). The previous kernels stay selectable for comparison. */
#define ZPC_DEFAULT_ATTN 2      /* fa2 (mma.sync) */
#define ZPC_DEFAULT_FUSE_GELU 1 /* GELU in the cuBLASLt epilogues */
#define ZPC_DEFAULT_LN_FAST 3   /* one warp per row (warp; docs/perf.md 24), pf where it does not apply */
#define ZPC_DEFAULT_FUSE_RES 1  /* the residual as the GEMM's C (measured: docs/perf.md) */
#define ZPC_DEFAULT_FA2_FWD 0   /* fast (measured: docs/perf.md) */
#define ZPC_DEFAULT_BGRAD 0     /* column sums: the BGRADB epilogue measured slower (docs/perf.md 15) */
#define ZPC_DEFAULT_FA2_BWD 1   /* kv2 (measured: docs/perf.md) */
#define ZPC_DEFAULT_XENT 1      /* fast (docs/perf.md 25) */

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_common.cuh"

/* ---------------------------------------------------------------- errors */

int zpc_err(const zp_host* host, int status, const char* fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (host && host->set_error)
    host->set_error(host->ctx, "%s", msg);
  else
    fprintf(stderr, "zp_cuda: %s\n", msg);
  return status;
}

int zpc_cuda_fail(zp_backend* b, const char* what, cudaError_t e, const char* file, int line) {
  const char* base = strrchr(file, '/');
  return zpc_err(b ? b->host : NULL, ZP_E_DEVICE, "cuda: %s failed: %s (%s) at %s:%d", what,
                 cudaGetErrorString(e), cudaGetErrorName(e), base ? base + 1 : file, line);
}

int zpc_lt_fail(zp_backend* b, const char* what, cublasStatus_t s, const char* file, int line) {
  const char* base = strrchr(file, '/');
  return zpc_err(b ? b->host : NULL, ZP_E_DEVICE, "cublasLt: %s failed: %s (%d) at %s:%d", what,
                 cublasLtGetStatusString(s), (int)s, base ? base + 1 : file, line);
}

void zpc_log(zp_backend* b, zp_log_level lvl, const char* msg) {
  if (b->host && b->host->log)
    b->host->log(b->host->ctx, lvl, "%s", msg);
  else if (lvl <= ZP_LOG_WARN)
    fprintf(stderr, "zp_cuda: %s\n", msg);
}

/* ---------------------------------------------------------------- scratch */

int zpc_scratch(zp_backend* b, size_t bytes, void** out) {
  if (bytes == 0) bytes = 256;
  if (bytes > b->scratch_bytes) {
    size_t want = zpc_round256(bytes + bytes / 8); /* some headroom: fewer regrowths */
    if (b->scratch) {
      ZPC_SYNC(b, b->stream); /* the old block may still be in use */
      ZPC_CUDA(b, cudaFree(b->scratch));
      b->scratch = NULL;
      b->scratch_bytes = 0;
    }
    cudaError_t e = cudaMalloc(&b->scratch, want);
    if (e != cudaSuccess) {
      b->scratch = NULL;
      (void)cudaGetLastError();
      return zpc_err(b->host, e == cudaErrorMemoryAllocation ? ZP_E_NOMEM : ZP_E_DEVICE,
                     "cuda: cudaMalloc of %zu bytes of op scratch failed: %s", want,
                     cudaGetErrorString(e));
    }
    b->scratch_bytes = want;
    char msg[128];
    snprintf(msg, sizeof msg, "cuda backend: op scratch grown to %.1f MiB",
             (double)want / (1 << 20));
    zpc_log(b, ZP_LOG_DEBUG, msg);
  }
  *out = b->scratch;
  return ZP_OK;
}

/* ---------------------------------------------------------------- lifecycle */

static void zpc_destroy(zp_backend* b);

/* ---------------------------------------------------------------- kernel-choice switches */

/* One environment variable per choice, read at create: the value's index in names is what the
 * field holds (so names[0] is 0). Unset: def. Any other value: ZP_E_INVALID naming the choices. */
struct zpc_switch {
  const char* var;
  size_t off; /* int field in zp_backend */
  int def;
  const char* names[5];
};
static const struct zpc_switch zpc_switches[] = {
    {"ZP_CUDA_ATTN", offsetof(zp_backend, attn_flash), ZPC_DEFAULT_ATTN, {"naive", "flash", "fa2"}},
    {"ZP_CUDA_FA2_FWD", offsetof(zp_backend, fa2_fwd), ZPC_DEFAULT_FA2_FWD, {"fast", "w8", "wg"}},
    {"ZP_CUDA_FA2_BWD", offsetof(zp_backend, fa2_bwd), ZPC_DEFAULT_FA2_BWD, {"base", "kv2", "fused", "atomic", "wg"}},
    {"ZP_CUDA_FUSE_GELU", offsetof(zp_backend, fuse_gelu), ZPC_DEFAULT_FUSE_GELU, {"0", "1"}},
    {"ZP_CUDA_FUSE_RES", offsetof(zp_backend, fuse_res), ZPC_DEFAULT_FUSE_RES, {"0", "1"}},
    {"ZP_CUDA_LN", offsetof(zp_backend, ln_fast), ZPC_DEFAULT_LN_FAST, {"legacy", "fast", "pf", "warp"}},
    {"ZP_CUDA_GEMM_TUNE", offsetof(zp_backend, gemm_tune), 0, {"0", "1", "2"}},
    {"ZP_CUDA_ADAMW_PIECES", offsetof(zp_backend, adamw_pieces), 1, {"0", "1"}},
    {"ZP_CUDA_BGRAD", offsetof(zp_backend, bgrad), ZPC_DEFAULT_BGRAD, {"0", "1"}},
    {"ZP_CUDA_BIAS_SUMS", offsetof(zp_backend, bias_after), 0, {"first", "after"}},
    {"ZP_CUDA_NCCL_ASYNC", offsetof(zp_backend, nccl_async), 0, {"0", "1"}},
    {"ZP_CUDA_PRIO", offsetof(zp_backend, prio), 1, {"0", "1"}},
    {"ZP_CUDA_ADAMW_GRID", offsetof(zp_backend, adamw_grid), 1, {"capped", "full"}},
    {"ZP_CUDA_SUMSQ_MANY", offsetof(zp_backend, sumsq_many), 1, {"0", "1"}},
    {"ZP_CUDA_XENT", offsetof(zp_backend, xent), ZPC_DEFAULT_XENT, {"base", "fast", "smem"}},
};

#ifndef ZP_HAVE_NCCL
int zpc_comm_drain(zp_backend* b) { /* no NCCL communicators: nothing is ever started */
  (void)b;
  return ZP_OK;
}
void zpc_comm_detach_all(zp_backend* b) { (void)b; }
#endif

static int* zpc_switch_field(const struct zpc_switch* w, zp_backend* b) {
  return (int*)((char*)b + w->off);
}

static int zpc_switch_read(const zp_host* host, const struct zpc_switch* w, zp_backend* b) {
  const char* v = getenv(w->var);
  int* f = zpc_switch_field(w, b);
  *f = w->def;
  if (!v) return ZP_OK;
  char list[128] = "";
  for (int k = 0; k < 5 && w->names[k]; k++) {
    if (strcmp(v, w->names[k]) == 0) {
      *f = k;
      return ZP_OK;
    }
    size_t n = strlen(list);
    snprintf(list + n, sizeof list - n, "%s%s", k ? ", " : "", w->names[k]);
  }
  return zpc_err(host, ZP_E_INVALID, "cuda backend: %s=%s: expected one of %s", w->var, v, list);
}

static int zpc_create(const zp_host* host, const zp_backend_config* cfg, zp_backend** out) {
  if (!out) return zpc_err(host, ZP_E_INVALID, "cuda backend: create: out is NULL");
  *out = NULL;
  zp_dtype ct = cfg ? cfg->compute_dtype : ZP_BF16;
  if (ct != ZP_BF16)
    return zpc_err(host, ZP_E_NOT_IMPLEMENTED,
                   "cuda backend: compute dtype %d requested; this backend computes in bf16 "
                   "(precision = \"bf16\")",
                   (int)ct);
  int dev = cfg ? cfg->device_index : 0;
  int ndev = 0;
  cudaError_t e = cudaGetDeviceCount(&ndev);
  if (e != cudaSuccess)
    return zpc_err(host, ZP_E_DEVICE, "cuda: cudaGetDeviceCount failed: %s (%s)",
                   cudaGetErrorString(e), cudaGetErrorName(e));
  if (dev < 0 || dev >= ndev)
    return zpc_err(host, ZP_E_INVALID, "cuda backend: device_index %d out of range (%d devices)",
                   dev, ndev);

  zp_backend* b = (zp_backend*)calloc(1, sizeof *b);
  if (!b) return zpc_err(host, ZP_E_NOMEM, "cuda backend: out of host memory");
  b->host = host;
  b->device = dev;
  const char* s = getenv("ZP_CUDA_STREAM");
  b->legacy_stream = s && strcmp(s, "legacy") == 0;
  for (size_t i = 0; i < sizeof zpc_switches / sizeof zpc_switches[0]; i++) {
    int rc = zpc_switch_read(host, &zpc_switches[i], b);
    if (rc) {
      free(b);
      return rc;
    }
  }

  int rc = ZP_OK;
#define TRY(call)                                                            \
  do {                                                                       \
    cudaError_t e_ = (call);                                                 \
    if (e_ != cudaSuccess) {                                                 \
      rc = zpc_cuda_fail(b, #call, e_, __FILE__, __LINE__);                  \
      goto fail;                                                             \
    }                                                                        \
  } while (0)
  {
    TRY(cudaSetDevice(dev));
    cudaDeviceProp prop;
    TRY(cudaGetDeviceProperties(&prop, dev));
    snprintf(b->device_name, sizeof b->device_name, "%s", prop.name);
    b->sm_count = prop.multiProcessorCount;
    b->cc_major = prop.major;
    b->cc_minor = prop.minor;
    b->peak_flops = (prop.major == 9 && prop.minor == 0) ? 989e12 : 0.0;
    if (b->legacy_stream)
      b->stream = 0;
    else if (b->prio) {
      int lo = 0, hi = 0;
      TRY(cudaDeviceGetStreamPriorityRange(&lo, &hi));
      TRY(cudaStreamCreateWithPriority(&b->stream, cudaStreamNonBlocking, hi));
    } else
      TRY(cudaStreamCreateWithFlags(&b->stream, cudaStreamNonBlocking));
    cublasStatus_t ls = cublasLtCreate(&b->lt);
    if (ls != CUBLAS_STATUS_SUCCESS) {
      b->lt = NULL;
      rc = zpc_lt_fail(b, "cublasLtCreate", ls, __FILE__, __LINE__);
      goto fail;
    }
    TRY(cudaMalloc(&b->workspace, ZPC_WORKSPACE_BYTES));
    TRY(cudaMalloc((void**)&b->d_sumsq, (ZPC_SUMSQ_BLOCKS + 1) * sizeof(double)));
    TRY(cudaMallocHost((void**)&b->h_sumsq, sizeof(double)));
    TRY(cudaMalloc((void**)&b->d_sumsq_slots, ZPC_SUMSQ_SLOTS * sizeof(double)));
    TRY(cudaMallocHost((void**)&b->h_sumsq_slots, ZPC_SUMSQ_SLOTS * sizeof(double)));
    /* 1.9 sumsq_start / sumsq_collect: their own partials and result slots (starts run on the
     * side stream while sumsq / sumsq_many may run on the compute stream) */
    TRY(cudaMalloc((void**)&b->d_sumsq_side, ZPC_SUMSQ_BLOCKS * sizeof(double)));
    TRY(cudaMalloc((void**)&b->d_sumsq_started, ZP_SUMSQ_START_SLOTS * sizeof(double)));
    TRY(cudaMallocHost((void**)&b->h_sumsq_started, ZP_SUMSQ_START_SLOTS * sizeof(double)));
    /* slots of empty tensors are copied back unwritten: keep them defined */
    TRY(cudaMemsetAsync(b->d_sumsq_slots, 0, ZPC_SUMSQ_SLOTS * sizeof(double), b->stream));
  }
#undef TRY
  {
    char msg[640];
    int n = snprintf(msg, sizeof msg, "cuda backend: device %d \"%s\" sm_%d%d, %d SMs, %s stream,",
                     dev, b->device_name, b->cc_major, b->cc_minor, b->sm_count,
                     b->legacy_stream ? "legacy default" : "non-blocking");
    for (size_t i = 0; i < sizeof zpc_switches / sizeof zpc_switches[0] && n > 0 &&
                       (size_t)n < sizeof msg;
         i++) {
      const struct zpc_switch* w = &zpc_switches[i];
      n += snprintf(msg + n, sizeof msg - (size_t)n, " %s=%s", w->var + 8,
                    w->names[*zpc_switch_field(w, b)]);
    }
    if (n > 0 && (size_t)n < sizeof msg)
      snprintf(msg + n, sizeof msg - (size_t)n, ", cuBLASLt workspace %d MiB",
               (int)(ZPC_WORKSPACE_BYTES >> 20));
    zpc_log(b, ZP_LOG_INFO, msg);
  }
  *out = b;
  return ZP_OK;
fail:
  zpc_destroy(b);
  return rc;
}

static void zpc_destroy(zp_backend* b) {
  if (!b) return;
  (void)zpc_comm_drain(b);
  zpc_comm_detach_all(b);
  if (b->stream || b->legacy_stream) (void)cudaStreamSynchronize(b->stream);
  for (int i = 0; i < 2; i++)
    if (b->copy_stream[i]) {
      (void)cudaStreamSynchronize(b->copy_stream[i]);
      cudaStreamDestroy(b->copy_stream[i]);
    }
  if (b->side_stream) {
    (void)cudaStreamSynchronize(b->side_stream);
    cudaStreamDestroy(b->side_stream);
  }
  if (b->copy_ev)
    for (int i = 0; i < ZPC_COPY_EVENTS; i++) cudaEventDestroy(b->copy_ev[i]);
  free(b->copy_ev);
  if (b->copy_order) cudaEventDestroy(b->copy_order);
  if (b->lt) cublasLtDestroy(b->lt);
  if (b->workspace) cudaFree(b->workspace);
  if (b->scratch) cudaFree(b->scratch);
  if (b->d_sumsq) cudaFree(b->d_sumsq);
  if (b->h_sumsq) cudaFreeHost(b->h_sumsq);
  if (b->d_sumsq_slots) cudaFree(b->d_sumsq_slots);
  if (b->h_sumsq_slots) cudaFreeHost(b->h_sumsq_slots);
  if (b->d_sumsq_side) cudaFree(b->d_sumsq_side);
  if (b->d_sumsq_started) cudaFree(b->d_sumsq_started);
  if (b->h_sumsq_started) cudaFreeHost(b->h_sumsq_started);
  if (b->h_tok) cudaFreeHost(b->h_tok);
  for (int i = 0; i < b->n_timer_ev; i++)
    if (b->timer_ev[i]) cudaEventDestroy(b->timer_ev[i]);
  free(b->timer_ev);
  if (b->stream && !b->legacy_stream) cudaStreamDestroy(b->stream);
  (void)cudaGetLastError();
  free(b);
}

/* ---------------------------------------------------------------- timers (1.3) */

/* slot -> an event recorded on the compute stream (created on first use; timing enabled) */
static int zpc_timer_mark(zp_backend* b, int slot) {
  if (slot < 0 || slot >= ZP_TIMER_SLOTS)
    return ZPC_INVALID(b, "cuda backend: timer_mark: slot %d outside 0..%d", slot, ZP_TIMER_SLOTS - 1);
  if (slot >= b->n_timer_ev) {
    int n = b->n_timer_ev ? b->n_timer_ev : 256;
    while (n <= slot) n *= 2;
    if (n > ZP_TIMER_SLOTS) n = ZP_TIMER_SLOTS;
    cudaEvent_t* e = (cudaEvent_t*)realloc(b->timer_ev, (size_t)n * sizeof *e);
    if (!e) return zpc_err(b->host, ZP_E_NOMEM, "cuda backend: timer_mark: out of host memory");
    memset(e + b->n_timer_ev, 0, (size_t)(n - b->n_timer_ev) * sizeof *e);
    b->timer_ev = e;
    b->n_timer_ev = n;
  }
  if (!b->timer_ev[slot]) ZPC_CUDA(b, cudaEventCreate(&b->timer_ev[slot]));
  ZPC_CUDA(b, cudaEventRecord(b->timer_ev[slot], b->stream));
  return ZP_OK;
}

static int zpc_timer_ms(zp_backend* b, int a, int c, double* ms) {
  if (!ms || a < 0 || c < 0 || a >= b->n_timer_ev || c >= b->n_timer_ev || !b->timer_ev[a] ||
      !b->timer_ev[c])
    return ZPC_INVALID(b, "cuda backend: timer_ms: slot %d or %d was never marked", a, c);
  float f = 0.0f;
  ZPC_CUDA(b, cudaEventElapsedTime(&f, b->timer_ev[a], b->timer_ev[c]));
  *ms = f;
  return ZP_OK;
}

static int zpc_info(zp_backend* b, zp_backend_info* out) {
  if (!out) return ZPC_INVALID(b, "cuda backend: info: out is NULL");
  size_t fr = 0, tot = 0;
  ZPC_CUDA(b, cudaMemGetInfo(&fr, &tot));
  memset(out, 0, sizeof *out);
  out->struct_size = sizeof *out;
  out->compute_dtype = ZP_BF16;
  out->device_name = b->device_name;
  out->peak_flops = b->peak_flops;
  out->mem_total = tot;
  out->mem_free = fr;
  return ZP_OK;
}

/* ---------------------------------------------------------------- memory */

static int zpc_alloc(zp_backend* b, size_t bytes, void** out) {
  if (!out) return ZPC_INVALID(b, "cuda backend: alloc: out is NULL");
  *out = NULL;
  if (bytes == 0) bytes = 1;
  cudaError_t e = cudaMalloc(out, bytes);
  if (e != cudaSuccess) {
    *out = NULL;
    (void)cudaGetLastError();
    size_t fr = 0, tot = 0;
    (void)cudaMemGetInfo(&fr, &tot);
    (void)cudaGetLastError();
    return zpc_err(b->host, e == cudaErrorMemoryAllocation ? ZP_E_NOMEM : ZP_E_DEVICE,
                   "cuda: cudaMalloc(%zu bytes) failed: %s (device free %zu of %zu bytes)", bytes,
                   cudaGetErrorString(e), fr, tot);
  }
  return ZP_OK;
}

/* wait for the compute stream and the copy streams (before memory is freed) */
static cudaError_t zpc_sync_all(zp_backend* b) {
  (void)zpc_comm_drain(b); /* a failure aborts the communicator (its kernels end) and is reported by its next call */
  cudaError_t e = cudaStreamSynchronize(b->stream);
  for (int i = 0; i < 2 && e == cudaSuccess; i++)
    if (b->copy_stream[i]) e = cudaStreamSynchronize(b->copy_stream[i]);
  if (e == cudaSuccess && b->side_stream) e = cudaStreamSynchronize(b->side_stream);
  return e;
}

/* before a blocking read (copy_d2h): the compute stream waits for the side work not yet waited
 * for, so a host read never sees memory the side stream is still writing */
static int zpc_join_side(zp_backend* b) {
  if (!b->side_last || b->in_side) return ZP_OK;
  ZPC_CUDA(b, cudaStreamWaitEvent(b->stream, b->copy_ev[b->side_last % ZPC_COPY_EVENTS], 0));
  b->side_last = 0;
  return ZP_OK;
}

static void zpc_free(zp_backend* b, void* p) {
  if (!p) return;
  /* ops queued on the streams may still read p: wait for them (cudaFree alone does not order
   * against a non-blocking stream's pending work on every driver) */
  cudaError_t e = zpc_sync_all(b);
  if (e == cudaSuccess) e = cudaFree(p);
  if (e != cudaSuccess) (void)zpc_cuda_fail(b, "cudaFree", e, __FILE__, __LINE__);
}

static int zpc_copy_h2d(zp_backend* b, void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return ZP_OK;
  /* no join with the side stream: the core uploads each micro-batch's tokens here, and joining
   * would make the host wait for the whole optimizer overlap (callers that write memory the
   * side stream uses wait for its ticket first: the core's state writes fence) */
  ZPC_CUDA(b, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, b->stream));
  ZPC_SYNC(b, b->stream);
  return ZP_OK;
}

static int zpc_copy_d2h(zp_backend* b, void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return ZP_OK;
  if (zpc_join_side(b)) return ZP_E_DEVICE;
  ZPC_CUDA(b, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, b->stream));
  ZPC_SYNC(b, b->stream);
  return ZP_OK;
}

static int zpc_copy_d2d(zp_backend* b, void* dst, const void* src, size_t bytes) {
  if (bytes == 0 || dst == src) return ZP_OK;
  ZPC_CUDA(b, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, b->stream));
  return ZP_OK;
}

static int zpc_memset0(zp_backend* b, void* dst, size_t bytes) {
  if (bytes == 0) return ZP_OK;
  ZPC_CUDA(b, cudaMemsetAsync(dst, 0, bytes, b->stream));
  return ZP_OK;
}

static int zpc_synchronize(zp_backend* b) {
  ZPC_SYNC(b, b->stream);
  ZPC_CUDA(b, cudaGetLastError());
  return ZP_OK;
}

/* page-locked host memory (offload staging): transfers run at full PCIe/NVLink-C2C speed */
static int zpc_host_alloc(zp_backend* b, size_t bytes, void** out) {
  *out = NULL;
  cudaError_t e = cudaHostAlloc(out, bytes, cudaHostAllocDefault);
  if (e != cudaSuccess) {
    *out = NULL;
    return zpc_cuda_fail(b, "cudaHostAlloc", e, __FILE__, __LINE__);
  }
  return ZP_OK;
}
static void zpc_host_free(zp_backend* b, void* p) {
  if (!p) return;
  cudaError_t e = zpc_sync_all(b);
  if (e == cudaSuccess) e = cudaFreeHost(p);
  if (e != cudaSuccess) (void)zpc_cuda_fail(b, "cudaFreeHost", e, __FILE__, __LINE__);
}

/* ---------------------------------------------------------------- copies beside the compute (1.5) */

/* the ticket events (and the copy streams): created on the first copy_async or side_begin */
static int zpc_events_init(zp_backend* b) {
  if (!b->copy_ev) {
    cudaEvent_t* ev = (cudaEvent_t*)calloc(ZPC_COPY_EVENTS, sizeof *ev);
    if (!ev) return zpc_err(b->host, ZP_E_NOMEM, "cuda: copy_async: out of memory");
    for (int i = 0; i < 2; i++)
      ZPC_CUDA(b, cudaStreamCreateWithFlags(&b->copy_stream[i], cudaStreamNonBlocking));
    ZPC_CUDA(b, cudaEventCreateWithFlags(&b->copy_order, cudaEventDisableTiming));
    for (int i = 0; i < ZPC_COPY_EVENTS; i++) {
      cudaError_t e = cudaEventCreateWithFlags(&ev[i], cudaEventDisableTiming);
      if (e != cudaSuccess) {
        for (int j = 0; j < i; j++) cudaEventDestroy(ev[j]);
        free(ev);
        return zpc_cuda_fail(b, "cudaEventCreate", e, __FILE__, __LINE__);
      }
    }
    b->copy_ev = ev;
  }
  return ZP_OK;
}

static int zpc_copy_async(zp_backend* b, void* dst, const void* src, size_t bytes, int h2d,
                          uint64_t* ticket) {
  if (!ticket) return zpc_err(b->host, ZP_E_INVALID, "cuda: copy_async: ticket is NULL");
  int rc = zpc_events_init(b);
  if (rc) return rc;
  cudaStream_t cs = b->copy_stream[h2d ? 1 : 0];
  uint64_t t = b->copy_next + 1;
  /* after everything issued so far on the compute stream */
  ZPC_CUDA(b, cudaEventRecord(b->copy_order, b->stream));
  ZPC_CUDA(b, cudaStreamWaitEvent(cs, b->copy_order, 0));
  if (bytes)
    ZPC_CUDA(b, cudaMemcpyAsync(dst, src, bytes, h2d ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost, cs));
  ZPC_CUDA(b, cudaEventRecord(b->copy_ev[t % ZPC_COPY_EVENTS], cs));
  b->copy_next = t;
  *ticket = t;
  return ZP_OK;
}

static int zpc_copy_wait(zp_backend* b, uint64_t ticket, int device) {
  if (ticket == 0) return ZP_OK;
  if (ticket > b->copy_next || !b->copy_ev)
    return zpc_err(b->host, ZP_E_INVALID, "cuda: copy_wait: ticket %llu was never issued (last %llu)",
                   (unsigned long long)ticket, (unsigned long long)b->copy_next);
  cudaEvent_t ev = b->copy_ev[ticket % ZPC_COPY_EVENTS];
  if (device) {
    ZPC_CUDA(b, cudaStreamWaitEvent(b->stream, ev, 0));
    /* the compute stream is now behind all side work (one in-order stream): nothing to join */
    if (ticket == b->side_last && !b->in_side) b->side_last = 0;
    return ZP_OK;
  }
  ZPC_CUDA(b, cudaSetDevice(b->device)); /* any thread may wait */
  int drc = zpc_comm_drain(b); /* the event may come after a started allreduce (1.9) */
  if (drc) return drc;
  ZPC_CUDA(b, cudaEventSynchronize(ev));
  return ZP_OK;
}

/* ---------------------------------------------------------------- the side stream (1.7) */

static int zpc_side_begin(zp_backend* b) {
  if (b->in_side) return zpc_err(b->host, ZP_E_INVALID, "cuda: side_begin: already on the side stream (not nested)");
  int rc = zpc_events_init(b);
  if (rc) return rc;
  if (!b->side_stream) {
    int lo = 0, hi = 0;
    ZPC_CUDA(b, cudaDeviceGetStreamPriorityRange(&lo, &hi));
    ZPC_CUDA(b, cudaStreamCreateWithPriority(&b->side_stream, cudaStreamNonBlocking, lo)); /* the lowest */
  }
  /* after everything issued so far on the compute stream */
  ZPC_CUDA(b, cudaEventRecord(b->copy_order, b->stream));
  ZPC_CUDA(b, cudaStreamWaitEvent(b->side_stream, b->copy_order, 0));
  b->main_stream = b->stream;
  b->stream = b->side_stream;
  b->in_side = 1;
  return ZP_OK;
}

/* 1.8: matmul_bwd's dW GEMM runs with beta 0 and the column-sum kernels (bias and LayerNorm
 * gradients) store instead of adding while this is on (matmul_cublaslt.cu, kernels_reduce.cu) */
static int zpc_grad_overwrite(zp_backend* b, int on) {
  b->grad_overwrite = on != 0;
  return ZP_OK;
}

static int zpc_side_end(zp_backend* b, uint64_t* ticket) {
  if (!ticket) return zpc_err(b->host, ZP_E_INVALID, "cuda: side_end: ticket is NULL");
  *ticket = 0;
  if (!b->in_side) return zpc_err(b->host, ZP_E_INVALID, "cuda: side_end without side_begin");
  uint64_t t = b->copy_next + 1;
  b->stream = b->main_stream;
  b->in_side = 0;
  ZPC_CUDA(b, cudaEventRecord(b->copy_ev[t % ZPC_COPY_EVENTS], b->side_stream));
  b->copy_next = t;
  b->side_last = t;
  *ticket = t;
  return ZP_OK;
}

/* ---------------------------------------------------------------- layernorm dispatch */

static int zpc_layernorm_fwd(zp_backend* b, void* out, float* mean, float* rstd, const void* inp,
                             const void* w, const void* bias, int N, int C) {
  if (b->ln_fast == ZPC_LN_WARP)
    return zpc_layernorm_fwd_warp(b, out, mean, rstd, inp, w, bias, N, C);
  return b->ln_fast ? zpc_layernorm_fwd_fast(b, out, mean, rstd, inp, w, bias, N, C)
                    : zpc_layernorm_fwd_legacy(b, out, mean, rstd, inp, w, bias, N, C);
}
static int zpc_layernorm_bwd(zp_backend* b, void* dinp, void* dw, void* dbias, const void* dout,
                             const void* inp, const void* w, const float* mean, const float* rstd,
                             int N, int C) {
  if (b->ln_fast == ZPC_LN_WARP)
    return zpc_layernorm_bwd_warp(b, dinp, dw, dbias, dout, inp, w, mean, rstd, N, C);
  return b->ln_fast ? zpc_layernorm_bwd_fast(b, dinp, dw, dbias, dout, inp, w, mean, rstd, N, C)
                    : zpc_layernorm_bwd_legacy(b, dinp, dw, dbias, dout, inp, w, mean, rstd, N, C);
}

/* ---------------------------------------------------------------- attention dispatch */

/* flash unless ZP_CUDA_ATTN=naive, where the head size is supported, else naive; the
 * choice depends on (C, NH) only, so aux_bytes, fwd and bwd of one shape always agree. Within
 * flash, fa2 or WMMA is chosen per call (alignment): both write and read the same aux. */
static int zpc_flash_for(const zp_backend* b, int C, int NH) {
  return b->attn_flash && zpc_flash_supported(C, NH);
}
static size_t zpc_attn_aux(zp_backend* b, int B, int T, int C, int NH) {
  return zpc_flash_for(b, C, NH) ? zpc_flash_aux_bytes(B, T, C, NH)
                                 : zpc_attention_aux_bytes(b, B, T, C, NH);
}
static int zpc_attn_fwd(zp_backend* b, void* out, void* aux, const void* qkv, int B, int T, int C,
                        int NH) {
  if (b->attn_flash == 2 && zpc_fa2_usable(C, NH, out, aux, qkv, qkv))
    return zpc_fa2_fwd(b, out, aux, qkv, B, T, C, NH);
  return zpc_flash_for(b, C, NH) ? zpc_flash_fwd(b, out, aux, qkv, B, T, C, NH)
                                 : zpc_attention_fwd(b, out, aux, qkv, B, T, C, NH);
}
static int zpc_attn_bwd(zp_backend* b, void* dqkv, const void* dout, const void* qkv,
                        const void* out, const void* aux, int B, int T, int C, int NH) {
  if (b->attn_flash == 2 && zpc_fa2_usable(C, NH, dqkv, dout, qkv, out))
    return zpc_fa2_bwd(b, dqkv, dout, qkv, out, aux, B, T, C, NH);
  return zpc_flash_for(b, C, NH) ? zpc_flash_bwd(b, dqkv, dout, qkv, out, aux, B, T, C, NH)
                                 : zpc_attention_bwd(b, dqkv, dout, qkv, out, aux, B, T, C, NH);
}
/* ABI 1.4: the backward with a workspace. Only the fa2 backward variants fused and atomic use
 * one (HS 32 / 64: ZP_CUDA_FA2_BWD=fused or atomic, the same size); its size depends on the shape alone (the fa2 path's alignment test
 * is per call: a call that cannot take fa2 ignores ws and runs attention_bwd's path). Every other
 * choice needs 0 bytes, and attention_bwd_ws is then attention_bwd. */
static size_t zpc_attn_bwd_ws_bytes(zp_backend* b, int B, int T, int C, int NH) {
  if (b->attn_flash != 2 || !zpc_fa2_usable(C, NH, NULL, NULL, NULL, NULL)) return 0;
  return zpc_fa2_bwd_ws_bytes(b, B, T, C, NH);
}
static int zpc_attn_bwd_ws(zp_backend* b, void* dqkv, const void* dout, const void* qkv,
                           const void* out, const void* aux, void* ws, int B, int T, int C,
                           int NH) {
  if (ws && zpc_attn_bwd_ws_bytes(b, B, T, C, NH) && zpc_fa2_usable(C, NH, dqkv, dout, qkv, out))
    return zpc_fa2_bwd_ws(b, dqkv, dout, qkv, out, aux, ws, B, T, C, NH);
  return zpc_attn_bwd(b, dqkv, dout, qkv, out, aux, B, T, C, NH);
}

/* ---------------------------------------------------------------- descriptor */

static const zp_backend_ops zpc_ops = {
    sizeof(zp_backend_ops),
    zpc_create,
    zpc_destroy,
    zpc_info,
    zpc_alloc,
    zpc_free,
    zpc_copy_h2d,
    zpc_copy_d2h,
    zpc_copy_d2d,
    zpc_memset0,
    zpc_synchronize,
    zpc_cast,
    zpc_accumulate,
    zpc_fill,
    zpc_encoder_fwd,
    zpc_encoder_bwd,
    zpc_layernorm_fwd,
    zpc_layernorm_bwd,
    zpc_matmul_fwd,
    zpc_matmul_bwd,
    zpc_attn_aux,
    zpc_attn_fwd,
    zpc_attn_bwd,
    zpc_gelu_fwd,
    zpc_gelu_bwd,
    zpc_residual_fwd,
    zpc_softmax_xent,
    zpc_adamw,
    zpc_sumsq,
    zpc_scale,
#ifdef ZP_HAVE_NCCL
    zpc_comm_unique_id, /* comm_nccl.cu */
    zpc_comm_create,
#else
    NULL, /* built without NCCL: the core's shared-memory communicator is used */
    NULL,
#endif
    zpc_host_alloc,
    zpc_host_free,
    zpc_encoder_masked_fwd, /* tensor parallelism (0.3) */
    zpc_encoder_masked_bwd,
    zpc_softmax_xent_vp,
    zpc_matmul_gelu_fwd, /* 1.1: GELU in the GEMM epilogue (matmul_cublaslt.cu) */
    zpc_matmul_dgelu_bwd,
    zpc_matmul_res_fwd, /* 1.2: the residual as the GEMM's C */
    zpc_timer_mark,     /* 1.3: device timestamps (events) for the op profile */
    zpc_timer_ms,
    zpc_adamw_pieces,      /* 1.4: a range's pieces in one launch set (adamw.cu) */
    zpc_attn_bwd_ws_bytes, /* 1.4: attention backward with a workspace (fa2 bwd fused) */
    zpc_attn_bwd_ws,
    zpc_copy_async, /* 1.5: copies on their own streams, beside the compute */
    zpc_copy_wait,
    zpc_side_begin, /* 1.7: a side stream (the optimizer overlap) */
    zpc_side_end,
    zpc_grad_overwrite, /* 1.8: parameter gradients written, not accumulated */
    zpc_sumsq_many,     /* 1.8: the gradient norm's sums with one host wait (kernels_reduce.cu) */
    zpc_matmul_dgelu_bgrad_bwd, /* 1.9: the fc bias gradient from the GELU backward's GEMM */
    zpc_sumsq_start,            /* 1.9: the gradient norm's sums started during the backward */
    zpc_sumsq_collect,
};

static const zp_plugin_desc zpc_desc = {
    sizeof(zp_plugin_desc),
    ZP_ABI_MAJOR,
    ZP_ABI_MINOR,
    "cuda",
    "0.1.0",
    ZP_KIND_BACKEND,
    "CUDA device backend: bf16 compute, cuBLASLt GEMMs, fp32 master AdamW (sm_90)",
    NULL,
    NULL,
    NULL,
    &zpc_ops,
};

extern "C" ZP_PLUGIN_EXPORT const zp_plugin_desc* zp_plugin_entry(void) { return &zpc_desc; }
