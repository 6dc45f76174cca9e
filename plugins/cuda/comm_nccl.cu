/* comm_nccl.cu: the CUDA backend's device communicator over NCCL (the optional backend
 * methods comm_unique_id and comm_create of zp_backend_ops). Built only with ZP_HAVE_NCCL.
 *
 * Invariants (semantics as core/comm.h, the shared-memory communicator's):
 * - A zpc_ncomm starts with `struct zp_comm` (ops, rank, size, err): the core casts to it.
 * - Every rank calls the same collectives in the same order with the same arguments.
 *   Collectives are numbered per communicator (#1, #2, ...; send/recv per peer and direction,
 *   so both ends name the same number) and every error message names this rank, the operation
 *   and its number.
 * - Ordering: a call records ev_ready on the backend's compute stream, the communicator's own
 *   non-blocking stream waits for it, the NCCL op runs on the communicator stream, ev_done is
 *   recorded after it and, once the op completed, the compute stream waits for ev_done: ops
 *   issued before a collective feed it, ops issued after it see its result.
 * - Every call is synchronous to the host: it polls ev_done and ncclCommGetAsyncError until
 *   the op completed, NCCL reports an error, or the deadline passes (timeout_s, counted from
 *   the moment the op's inputs are ready on the device, so queued compute does not count).
 *   That is what lets a dead or hung peer be reported instead of hanging the GPU forever.
 *   Overlap: the communicator stream is separate, but the host waits, so communication
 *   overlaps only the compute already queued before the call. The exception (ABI 1.9,
 *   ZP_CUDA_NCCL_ASYNC=1, opt-in until measured): allreduce_start / wait_started issue an
 *   allreduce and return; the compute stream waits for it at the wait, and the host checks its
 *   deadline in zpc_comm_drain before any blocking wait of the backend (see "started
 *   allreduces" below).
 * - Any failure marks the communicator failed and aborts the NCCL communicator
 *   (ncclCommAbort): later calls fail at once with the first message. destroy() finalizes a
 *   healthy communicator (ncclCommFinalize + ncclCommDestroy, under the deadline; abort if it
 *   does not finish) and aborts a failed one.
 * - Host pointers (cudaPointerGetAttributes: unregistered or pinned host memory) are staged
 *   through a pinned host + device pair of ZPC_NCCL_STAGE_BYTES, in pieces when larger. A
 *   collective larger than one piece must see the same kind of buffer (host or device) on
 *   every rank, since NCCL must see the same counts (pieces) on every rank; one piece is the
 *   same NCCL op as a device buffer, so the core's small control messages may mix kinds.
 * - Reductions: F32, BF16, F64, I32 with SUM, MAX, and AVG (floating dtypes only, as in
 *   comm.h). Data movement (allgather, broadcast, send, recv) takes any dtype. Results are
 *   NCCL's: with more than 2 ranks not bitwise equal to comm.h's fixed-order sums (NCCL rounds
 *   bf16 partial sums per step and picks its algorithm by size).
 * - Nothing here exits or aborts the process; CUDA errors become ZP_E_DEVICE, NCCL errors
 *   ZP_E_COMM (ZP_E_INVALID for invalid arguments/usage), deadlines ZP_E_TIMEOUT, with the
 *   NCCL call and ncclGetErrorString / ncclGetLastError in the message.
 */
#ifdef ZP_HAVE_NCCL

#include <nccl.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuda_common.cuh"

#if NCCL_VERSION_CODE < NCCL_VERSION(2, 18, 0)
#error "comm_nccl.cu needs NCCL >= 2.18 (non-blocking communicators, ncclCommSplit, ncclCommFinalize)"
#endif

#define ZPC_NCCL_STAGE_BYTES ((size_t)64 << 10) /* host-pointer staging, host + device */
#define ZPC_NCCL_DEFAULT_TIMEOUT_S 300.0        /* when comm_create gets timeout_s <= 0 */

struct zpc_ncomm {
  struct zp_comm base; /* first: the core's view */
  zp_backend* b;
  ncclComm_t nc;       /* NULL once aborted */
  cudaStream_t stream; /* this communicator's own non-blocking stream */
  cudaEvent_t ev_ready, ev_done;
  unsigned char* d_stage; /* device staging for host pointers (and the barrier's int) */
  unsigned char* h_stage; /* pinned host staging */
  size_t stage_bytes;
  double timeout_s;
  int failed;          /* status of the first failure (0: healthy) */
  uint64_t seq;        /* collectives (incl. barrier and split) */
  uint64_t* send_seq;  /* [size]: sends to each peer */
  uint64_t* recv_seq;  /* [size]: receives from each peer */
  char where[48];      /* "" or " on a sub-communicator of size N" */
  /* 1.9 allreduce_start / wait_started (ZP_CUDA_NCCL_ASYNC=1): ops in flight, oldest first,
   * in a ring of NC_PEND; tickets count up (aseq) */
  struct zpc_npend* pend;
  int phead, plen;
  uint64_t aseq;
  pthread_mutex_t pmu; /* the ring: a tier's thread may drain (copy_wait) while this one starts */
};

/* an allreduce started and not yet retired: its own events; the deadline clock as zpc_nop's */
#define NC_PEND 64
struct zpc_npend {
  char desc[192];
  cudaEvent_t ev_ready, ev_done;
  double t0;
  int ready;
  int waited; /* the compute stream waits for ev_done */
  uint64_t ticket;
};

/* one operation in flight */
struct zpc_nop {
  char desc[192]; /* "allreduce #3 (count 1024 bf16)" */
  double t0;      /* deadline clock start */
  int ready;      /* ev_ready observed complete (the clock runs from then) */
};

/* ---------------------------------------------------------------- small helpers */

static double nc_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* polling back-off: spin a little, then yield, then sleep 50 us per round */
static void nc_pause(int* n) {
  if (*n < 256) {
    (*n)++;
    return;
  }
  if (*n < 512) {
    (*n)++;
    sched_yield();
    return;
  }
  struct timespec ts = {0, 50 * 1000};
  nanosleep(&ts, NULL);
}

static const char* nc_dt_name(zp_dtype t) {
  switch (t) {
    case ZP_F32: return "f32";
    case ZP_F64: return "f64";
    case ZP_BF16: return "bf16";
    case ZP_I32: return "i32";
    case ZP_U16: return "u16";
    default: return "?";
  }
}
static const char* nc_op_name(zp_redop op) {
  switch (op) {
    case ZP_RED_SUM: return "sum";
    case ZP_RED_AVG: return "avg";
    case ZP_RED_MAX: return "max";
    default: return "?";
  }
}
static int nc_dt_valid(zp_dtype t) { return t >= ZP_F32 && t <= ZP_U16; }

/* reduction dtype: 0 if NCCL has no reduction for it here */
static int nc_red_type(zp_dtype t, ncclDataType_t* out) {
  switch (t) {
    case ZP_F32: *out = ncclFloat32; return 1;
    case ZP_BF16: *out = ncclBfloat16; return 1;
    case ZP_F64: *out = ncclFloat64; return 1;
    case ZP_I32: *out = ncclInt32; return 1;
    default: return 0;
  }
}
static int nc_red_op(zp_redop op, zp_dtype t, ncclRedOp_t* out) {
  switch (op) {
    case ZP_RED_SUM: *out = ncclSum; return 1;
    case ZP_RED_MAX: *out = ncclMax; return 1;
    case ZP_RED_AVG:
      if (t == ZP_I32) return 0; /* comm.h: AVG for floating dtypes only */
      *out = ncclAvg;
      return 1;
    default: return 0;
  }
}
/* data movement: the native type where there is one, else bytes */
static void nc_move_type(zp_dtype t, size_t count, ncclDataType_t* nt, size_t* ncount) {
  if (nc_red_type(t, nt)) {
    *ncount = count;
  } else {
    *nt = ncclUint8;
    *ncount = count * zp_dtype_size(t);
  }
}

/* 1: p is host memory (pageable or pinned) that NCCL cannot use directly */
static int nc_is_host(const void* p) {
  cudaPointerAttributes a;
  cudaError_t e = cudaPointerGetAttributes(&a, p);
  if (e != cudaSuccess) { /* older runtimes: cudaErrorInvalidValue for unregistered memory */
    (void)cudaGetLastError();
    return 1;
  }
  return a.type == cudaMemoryTypeUnregistered || a.type == cudaMemoryTypeHost;
}

static void nc_log(zp_backend* b, zp_log_level lvl, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void nc_log(zp_backend* b, zp_log_level lvl, const char* fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (b && b->host && b->host->log)
    b->host->log(b->host->ctx, lvl, "%s", msg);
  else if (lvl <= ZP_LOG_WARN)
    fprintf(stderr, "zp_cuda: %s\n", msg);
}

static const char* nc_last(ncclComm_t nc) {
  const char* s = ncclGetLastError(nc);
  return s && s[0] ? s : "no further detail; NCCL_DEBUG=WARN prints more";
}

/* ---------------------------------------------------------------- failures */

static void nc_abort(zpc_ncomm* c) {
  if (c->nc) {
    (void)ncclCommAbort(c->nc);
    c->nc = NULL;
  }
  (void)cudaGetLastError();
}

/* records "rank R: <message>", marks the communicator failed, aborts NCCL */
static int nc_fail(zpc_ncomm* c, int status, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int nc_fail(zpc_ncomm* c, int status, const char* fmt, ...) {
  int k = snprintf(c->base.err, sizeof c->base.err, "rank %d: ", c->base.rank);
  if (k < 0) k = 0;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->base.err + k, sizeof c->base.err - (size_t)k, fmt, ap);
  va_end(ap);
  c->failed = status;
  nc_abort(c);
  return status;
}

static int nc_status_of(ncclResult_t r) {
  switch (r) {
    case ncclInvalidArgument:
    case ncclInvalidUsage: return ZP_E_INVALID;
    case ncclUnhandledCudaError: return ZP_E_DEVICE;
    default: return ZP_E_COMM;
  }
}

static int nc_nccl_fail(zpc_ncomm* c, const zpc_nop* op, const char* call, ncclResult_t r) {
  char last[256];
  snprintf(last, sizeof last, "%s", nc_last(c->nc));
  return nc_fail(c, nc_status_of(r), "%s: %s failed: %s (%s); communicator aborted", op->desc,
                 call, ncclGetErrorString(r), last);
}

static int nc_async_fail(zpc_ncomm* c, const zpc_nop* op, ncclResult_t r) {
  char last[256];
  snprintf(last, sizeof last, "%s", nc_last(c->nc));
  return nc_fail(c, r == ncclRemoteError ? ZP_E_COMM : nc_status_of(r),
                 "%s failed: NCCL reported an asynchronous error: %s (%s); communicator aborted",
                 op->desc, ncclGetErrorString(r), last);
}

static int nc_cuda_fail(zpc_ncomm* c, const zpc_nop* op, const char* call, cudaError_t e) {
  return nc_fail(c, ZP_E_DEVICE, "%s: cuda: %s failed: %s (%s); communicator aborted", op->desc,
                 call, cudaGetErrorString(e), cudaGetErrorName(e));
}

#define NC_CUDA(c, op, call)                                              \
  do {                                                                    \
    cudaError_t nc_e_ = (call);                                           \
    if (nc_e_ != cudaSuccess) return nc_cuda_fail((c), (op), #call, nc_e_); \
  } while (0)

/* Deadline check; the clock starts once ev_ready is complete (the op's inputs are ready). */
static int nc_deadline(zpc_ncomm* c, zpc_nop* op) {
  double t = nc_now();
  if (!op->ready) {
    cudaError_t e = cudaEventQuery(c->ev_ready);
    if (e == cudaErrorNotReady) {
      op->t0 = t;
      return ZP_OK;
    }
    if (e != cudaSuccess) return nc_cuda_fail(c, op, "cudaEventQuery(ev_ready)", e);
    op->ready = 1;
  }
  if (t - op->t0 >= c->timeout_s)
    return nc_fail(c, ZP_E_TIMEOUT,
                   "%s did not complete within %.3g s: a peer is dead or hung; communicator "
                   "aborted",
                   op->desc, c->timeout_s);
  return ZP_OK;
}

/* ---------------------------------------------------------------- the op protocol */

/* names the op and checks the communicator is usable */
static int nc_begin(zpc_ncomm* c, zpc_nop* op, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int nc_begin(zpc_ncomm* c, zpc_nop* op, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(op->desc, sizeof op->desc, fmt, ap);
  va_end(ap);
  if (c->where[0]) strncat(op->desc, c->where, sizeof op->desc - strlen(op->desc) - 1);
  op->t0 = nc_now();
  op->ready = 0;
  if (c->failed) return c->failed; /* fail fast with the first message */
  if (!c->nc) {
    snprintf(c->base.err, sizeof c->base.err, "rank %d: %s: the NCCL communicator is gone",
             c->base.rank, op->desc);
    c->failed = ZP_E_COMM;
    return ZP_E_COMM;
  }
  return ZP_OK;
}

/* orders the communicator stream after the work queued on the compute stream */
static int nc_pre(zpc_ncomm* c, zpc_nop* op) {
  NC_CUDA(c, op, cudaEventRecord(c->ev_ready, c->b->stream));
  NC_CUDA(c, op, cudaStreamWaitEvent(c->stream, c->ev_ready, 0));
  op->t0 = nc_now();
  op->ready = 0;
  return ZP_OK;
}

/* after an NCCL enqueue call: with a non-blocking communicator it may return ncclInProgress,
 * and the op is on the stream only once ncclCommGetAsyncError says ncclSuccess. Nothing may
 * be queued behind it (events, copies) before that. */
static int nc_issued(zpc_ncomm* c, zpc_nop* op, const char* call, ncclResult_t r) {
  if (r == ncclSuccess) return ZP_OK;
  if (r != ncclInProgress) return nc_nccl_fail(c, op, call, r);
  int n = 0;
  for (;;) {
    ncclResult_t a = ncclSuccess;
    ncclResult_t q = ncclCommGetAsyncError(c->nc, &a);
    if (q != ncclSuccess) return nc_nccl_fail(c, op, "ncclCommGetAsyncError", q);
    if (a == ncclSuccess) return ZP_OK;
    if (a != ncclInProgress) return nc_async_fail(c, op, a);
    int rc = nc_deadline(c, op);
    if (rc) return rc;
    nc_pause(&n);
  }
}

/* waits (host) for the op, then orders the compute stream after it. The compute stream waits
 * only on success, so a failed collective leaves no wait on an event that never fires. */
static int nc_finish(zpc_ncomm* c, zpc_nop* op) {
  NC_CUDA(c, op, cudaEventRecord(c->ev_done, c->stream));
  int n = 0;
  for (;;) {
    cudaError_t e = cudaEventQuery(c->ev_done);
    if (e == cudaSuccess) break;
    if (e != cudaErrorNotReady) return nc_cuda_fail(c, op, "cudaEventQuery(ev_done)", e);
    ncclResult_t a = ncclSuccess;
    ncclResult_t q = ncclCommGetAsyncError(c->nc, &a);
    if (q != ncclSuccess) return nc_nccl_fail(c, op, "ncclCommGetAsyncError", q);
    if (a != ncclSuccess && a != ncclInProgress) return nc_async_fail(c, op, a);
    int rc = nc_deadline(c, op);
    if (rc) return rc;
    nc_pause(&n);
  }
  NC_CUDA(c, op, cudaStreamWaitEvent(c->b->stream, c->ev_done, 0));
  return ZP_OK;
}

/* one NCCL op on device buffers: issue() enqueues it on c->stream and returns its result */
template <typename F> static int nc_run(zpc_ncomm* c, zpc_nop* op, const char* call, F&& issue) {
  int rc = nc_pre(c, op);
  if (rc) return rc;
  if ((rc = nc_issued(c, op, call, issue()))) return rc;
  return nc_finish(c, op);
}

/* one NCCL op on the staging pair: h_stage[in_off, +in_bytes) goes to the device first,
 * d_stage[out_off, +out_bytes) comes back to h_stage at the same offset after the op. */
template <typename F>
static int nc_run_staged(zpc_ncomm* c, zpc_nop* op, const char* call, size_t in_off,
                         size_t in_bytes, size_t out_off, size_t out_bytes, F&& issue) {
  int rc = nc_pre(c, op);
  if (rc) return rc;
  if (in_bytes)
    NC_CUDA(c, op, cudaMemcpyAsync(c->d_stage + in_off, c->h_stage + in_off, in_bytes,
                                   cudaMemcpyHostToDevice, c->stream));
  if ((rc = nc_issued(c, op, call, issue()))) return rc;
  if (out_bytes)
    NC_CUDA(c, op, cudaMemcpyAsync(c->h_stage + out_off, c->d_stage + out_off, out_bytes,
                                   cudaMemcpyDeviceToHost, c->stream));
  return nc_finish(c, op);
}

/* both buffers of a two-buffer op must be of one kind: returns 0 device, 1 host, -1 mixed */
static int nc_kind2(const void* a, const void* b) {
  int ha = nc_is_host(a), hb = nc_is_host(b);
  return ha == hb ? ha : -1;
}

/* ---------------------------------------------------------------- collectives */

/* numbers and names a reduction (what: "allreduce" or "reduce_scatter"; how: "" or ", started
 * early"), checks the communicator and the reduction, gives NCCL's type and op */
static int nc_reduce_begin(zpc_ncomm* c, zpc_nop* op, const char* what, size_t count, zp_dtype dt, zp_redop rop,
                           const char* how, ncclDataType_t* t, ncclRedOp_t* o) {
  unsigned long long seq = (unsigned long long)++c->seq;
  int rc = nc_begin(c, op, "%s #%llu (count %zu %s%s)", what, seq, count, nc_dt_name(dt), how);
  if (rc) return rc;
  if (!nc_red_type(dt, t) || !nc_red_op(rop, dt, o))
    return nc_fail(c, ZP_E_INVALID, "%s: reduction %s is not supported for %s", op->desc,
                   nc_op_name(rop), nc_dt_name(dt));
  return ZP_OK;
}

static int nc_allreduce(zp_comm* zc, void* buf, size_t count, zp_dtype dt, zp_redop rop) {
  zpc_ncomm* c = (zpc_ncomm*)zc;
  zpc_nop op;
  ncclDataType_t t;
  ncclRedOp_t o;
  int rc = nc_reduce_begin(c, &op, "allreduce", count, dt, rop, "", &t, &o);
  if (rc) return rc;
  if (count == 0) return ZP_OK;
  if (!buf) return nc_fail(c, ZP_E_INVALID, "%s: NULL buffer", op.desc);
  if (!nc_is_host(buf))
    return nc_run(c, &op, "ncclAllReduce",
                  [&] { return ncclAllReduce(buf, buf, count, t, o, c->nc, c->stream); });
  const size_t esz = zp_dtype_size(dt), per = c->stage_bytes / esz;
  unsigned char* p = (unsigned char*)buf;
  for (size_t off = 0; off < count; off += per) {
    const size_t m = count - off < per ? count - off : per;
    memcpy(c->h_stage, p + off * esz, m * esz);
    rc = nc_run_staged(c, &op, "ncclAllReduce", 0, m * esz, 0, m * esz, [&] {
      return ncclAllReduce(c->d_stage, c->d_stage, m, t, o, c->nc, c->stream);
    });
    if (rc) return rc;
    memcpy(p + off * esz, c->h_stage, m * esz);
  }
  return ZP_OK;
}

static int nc_reduce_scatter(zp_comm* zc, void* recv, const void* send, size_t rcount,
                             zp_dtype dt, zp_redop rop) {
  zpc_ncomm* c = (zpc_ncomm*)zc;
  zpc_nop op;
  ncclDataType_t t;
  ncclRedOp_t o;
  int rc = nc_reduce_begin(c, &op, "reduce_scatter", rcount, dt, rop, "", &t, &o);
  if (rc) return rc;
  if (rcount == 0) return ZP_OK;
  if (!recv || !send) return nc_fail(c, ZP_E_INVALID, "%s: NULL buffer", op.desc);
  const int kind = nc_kind2(recv, send);
  if (kind < 0)
    return nc_fail(c, ZP_E_INVALID,
                   "%s: one buffer is host memory and the other device memory; pass both in "
                   "the same kind of memory",
                   op.desc);
  if (kind == 0)
    return nc_run(c, &op, "ncclReduceScatter",
                  [&] { return ncclReduceScatter(send, recv, rcount, t, o, c->nc, c->stream); });
  /* host: pieces of m elements of every rank's block, laid out [size][m] in the staging area,
   * reduced in place (recv = send + rank*m), as NCCL allows */
  const int N = c->base.size, me = c->base.rank;
  const size_t esz = zp_dtype_size(dt), per = c->stage_bytes / (esz * (size_t)N);
  if (per == 0)
    return nc_fail(c, ZP_E_INVALID, "%s: %d ranks do not fit the %zu-byte host staging area",
                   op.desc, N, c->stage_bytes);
  const unsigned char* s = (const unsigned char*)send;
  unsigned char* r = (unsigned char*)recv;
  for (size_t off = 0; off < rcount; off += per) {
    const size_t m = rcount - off < per ? rcount - off : per;
    for (int j = 0; j < N; j++)
      memcpy(c->h_stage + (size_t)j * m * esz, s + ((size_t)j * rcount + off) * esz, m * esz);
    rc = nc_run_staged(c, &op, "ncclReduceScatter", 0, (size_t)N * m * esz, (size_t)me * m * esz,
                       m * esz, [&] {
                         return ncclReduceScatter(c->d_stage, c->d_stage + (size_t)me * m * esz,
                                                  m, t, o, c->nc, c->stream);
                       });
    if (rc) return rc;
    memcpy(r + off * esz, c->h_stage + (size_t)me * m * esz, m * esz);
  }
  return ZP_OK;
}

static int nc_allgather(zp_comm* zc, void* recv, const void* send, size_t scount, zp_dtype dt) {
  zpc_ncomm* c = (zpc_ncomm*)zc;
  zpc_nop op;
  unsigned long long seq = (unsigned long long)++c->seq;
  int rc = nc_begin(c, &op, "allgather #%llu (count %zu %s)", seq, scount, nc_dt_name(dt));
  if (rc) return rc;
  if (!nc_dt_valid(dt)) return nc_fail(c, ZP_E_INVALID, "%s: invalid dtype %d", op.desc, (int)dt);
  if (scount == 0) return ZP_OK;
  if (!recv || !send) return nc_fail(c, ZP_E_INVALID, "%s: NULL buffer", op.desc);
  const int kind = nc_kind2(recv, send);
  if (kind < 0)
    return nc_fail(c, ZP_E_INVALID,
                   "%s: one buffer is host memory and the other device memory; pass both in "
                   "the same kind of memory",
                   op.desc);
  ncclDataType_t t;
  size_t n;
  nc_move_type(dt, scount, &t, &n);
  /* in place (send == recv + rank*scount) passes straight through: NCCL allows it */
  if (kind == 0)
    return nc_run(c, &op, "ncclAllGather",
                  [&] { return ncclAllGather(send, recv, n, t, c->nc, c->stream); });
  const int N = c->base.size, me = c->base.rank;
  const size_t esz = zp_dtype_size(dt), per = c->stage_bytes / (esz * (size_t)N);
  if (per == 0)
    return nc_fail(c, ZP_E_INVALID, "%s: %d ranks do not fit the %zu-byte host staging area",
                   op.desc, N, c->stage_bytes);
  const unsigned char* s = (const unsigned char*)send;
  unsigned char* r = (unsigned char*)recv;
  for (size_t off = 0; off < scount; off += per) {
    const size_t m = scount - off < per ? scount - off : per;
    size_t mn;
    nc_move_type(dt, m, &t, &mn);
    /* read this piece of send before any recv block is written (send may lie in recv) */
    memcpy(c->h_stage + (size_t)me * m * esz, s + off * esz, m * esz);
    rc = nc_run_staged(c, &op, "ncclAllGather", (size_t)me * m * esz, m * esz, 0,
                       (size_t)N * m * esz, [&] {
                         return ncclAllGather(c->d_stage + (size_t)me * m * esz, c->d_stage, mn,
                                              t, c->nc, c->stream);
                       });
    if (rc) return rc;
    for (int j = 0; j < N; j++)
      memcpy(r + ((size_t)j * scount + off) * esz, c->h_stage + (size_t)j * m * esz, m * esz);
  }
  return ZP_OK;
}

static int nc_broadcast(zp_comm* zc, void* buf, size_t count, zp_dtype dt, int root) {
  zpc_ncomm* c = (zpc_ncomm*)zc;
  zpc_nop op;
  unsigned long long seq = (unsigned long long)++c->seq;
  int rc = nc_begin(c, &op, "broadcast #%llu (count %zu %s, root %d)", seq, count,
                    nc_dt_name(dt), root);
  if (rc) return rc;
  if (!nc_dt_valid(dt)) return nc_fail(c, ZP_E_INVALID, "%s: invalid dtype %d", op.desc, (int)dt);
  if (root < 0 || root >= c->base.size)
    return nc_fail(c, ZP_E_INVALID, "%s: root %d is not a rank of this communicator (size %d)",
                   op.desc, root, c->base.size);
  if (count == 0) return ZP_OK;
  if (!buf) return nc_fail(c, ZP_E_INVALID, "%s: NULL buffer", op.desc);
  ncclDataType_t t;
  size_t n;
  nc_move_type(dt, count, &t, &n);
  if (!nc_is_host(buf))
    return nc_run(c, &op, "ncclBroadcast",
                  [&] { return ncclBroadcast(buf, buf, n, t, root, c->nc, c->stream); });
  const int me = c->base.rank;
  const size_t esz = zp_dtype_size(dt), per = c->stage_bytes / esz;
  unsigned char* p = (unsigned char*)buf;
  for (size_t off = 0; off < count; off += per) {
    const size_t m = count - off < per ? count - off : per;
    size_t mn;
    nc_move_type(dt, m, &t, &mn);
    if (me == root) memcpy(c->h_stage, p + off * esz, m * esz);
    rc = nc_run_staged(c, &op, "ncclBroadcast", 0, me == root ? m * esz : 0, 0,
                       me == root ? 0 : m * esz, [&] {
                         return ncclBroadcast(c->d_stage, c->d_stage, mn, t, root, c->nc,
                                              c->stream);
                       });
    if (rc) return rc;
    if (me != root) memcpy(p + off * esz, c->h_stage, m * esz);
  }
  return ZP_OK;
}

/* send/recv: numbered per peer and direction, so "send #3 to rank 1" matches "recv #3 from
 * rank 0". Host-synchronous like everything here: send returns once NCCL completed it on
 * this side. That is weaker than comm.h's rendezvous for small messages, which NCCL may
 * complete into the peer's pre-posted buffers before the peer calls recv; the data is
 * delivered all the same, and the send buffer may be reused at once either way. Like NCCL,
 * a send and a recv between two ranks must not both wait on each other (order them). */
static int nc_p2p(zpc_ncomm* c, int is_send, void* buf, size_t count, zp_dtype dt, int peer) {
  zpc_nop op;
  const int N = c->base.size, me = c->base.rank;
  const int ok_peer = peer >= 0 && peer < N && peer != me;
  unsigned long long seq = 0;
  if (ok_peer) seq = (unsigned long long)(is_send ? ++c->send_seq[peer] : ++c->recv_seq[peer]);
  int rc = nc_begin(c, &op, "%s #%llu %s rank %d (count %zu %s)", is_send ? "send" : "recv", seq,
                    is_send ? "to" : "from", peer, count, nc_dt_name(dt));
  if (rc) return rc;
  if (!ok_peer)
    return nc_fail(c, ZP_E_INVALID,
                   "%s: peer %d is not another rank of this communicator (size %d, rank %d)",
                   op.desc, peer, N, me);
  if (!nc_dt_valid(dt)) return nc_fail(c, ZP_E_INVALID, "%s: invalid dtype %d", op.desc, (int)dt);
  if (count == 0) return ZP_OK;
  if (!buf) return nc_fail(c, ZP_E_INVALID, "%s: NULL buffer", op.desc);
  ncclDataType_t t;
  size_t n;
  nc_move_type(dt, count, &t, &n);
  const char* call = is_send ? "ncclSend" : "ncclRecv";
  if (!nc_is_host(buf))
    return nc_run(c, &op, call, [&] {
      return is_send ? ncclSend(buf, n, t, peer, c->nc, c->stream)
                     : ncclRecv(buf, n, t, peer, c->nc, c->stream);
    });
  const size_t esz = zp_dtype_size(dt), per = c->stage_bytes / esz;
  unsigned char* p = (unsigned char*)buf;
  for (size_t off = 0; off < count; off += per) {
    const size_t m = count - off < per ? count - off : per;
    size_t mn;
    nc_move_type(dt, m, &t, &mn);
    if (is_send) memcpy(c->h_stage, p + off * esz, m * esz);
    rc = nc_run_staged(c, &op, call, 0, is_send ? m * esz : 0, 0, is_send ? 0 : m * esz, [&] {
      return is_send ? ncclSend(c->d_stage, mn, t, peer, c->nc, c->stream)
                     : ncclRecv(c->d_stage, mn, t, peer, c->nc, c->stream);
    });
    if (rc) return rc;
    if (!is_send) memcpy(p + off * esz, c->h_stage, m * esz);
  }
  return ZP_OK;
}

static int nc_send(zp_comm* zc, const void* buf, size_t count, zp_dtype dt, int peer) {
  return nc_p2p((zpc_ncomm*)zc, 1, (void*)buf, count, dt, peer);
}
static int nc_recv(zp_comm* zc, void* buf, size_t count, zp_dtype dt, int peer) {
  return nc_p2p((zpc_ncomm*)zc, 0, buf, count, dt, peer);
}

/* an allreduce of one int on the device staging buffer */
static int nc_barrier(zp_comm* zc) {
  zpc_ncomm* c = (zpc_ncomm*)zc;
  zpc_nop op;
  int rc = nc_begin(c, &op, "barrier #%llu", (unsigned long long)++c->seq);
  if (rc) return rc;
  return nc_run(c, &op, "ncclAllReduce", [&] {
    return ncclAllReduce(c->d_stage, c->d_stage, 1, ncclInt32, ncclSum, c->nc, c->stream);
  });
}

/* ---------------------------------------------------------------- create / split / destroy */

static void nc_free(zpc_ncomm* c) {
  if (!c) return;
  nc_abort(c);
  if (c->pend) {
    for (int i = 0; i < NC_PEND; i++) {
      if (c->pend[i].ev_ready) (void)cudaEventDestroy(c->pend[i].ev_ready);
      if (c->pend[i].ev_done) (void)cudaEventDestroy(c->pend[i].ev_done);
    }
    free(c->pend);
    pthread_mutex_destroy(&c->pmu);
  }
  for (int i = 0; c->b && i < c->b->n_ncomm; i++) /* no longer drained by the backend */
    if (c->b->ncomm[i] == c) c->b->ncomm[i] = c->b->ncomm[--c->b->n_ncomm];
  if (c->ev_ready) (void)cudaEventDestroy(c->ev_ready);
  if (c->ev_done) (void)cudaEventDestroy(c->ev_done);
  if (c->stream) (void)cudaStreamDestroy(c->stream);
  if (c->d_stage) (void)cudaFree(c->d_stage);
  if (c->h_stage) (void)cudaFreeHost(c->h_stage);
  (void)cudaGetLastError();
  free(c->send_seq);
  free(c->recv_seq);
  free(c);
}

/* ---------------------------------------------------------------- started allreduces (1.9)
 * allreduce_start issues the op on the communicator's stream after the compute stream's work
 * (its own ev_ready), records its own ev_done and returns: nothing waits for it. wait_started
 * makes the compute stream wait for ev_done of every op up to the ticket (device side: the host
 * goes on). The deadline and NCCL's asynchronous errors are checked when the host has to wait
 * anyway: zpc_comm_drain (every blocking wait of the backend calls it first) polls, like a
 * synchronous op, each op the compute stream waits for until it completes, so a dead peer is
 * reported (and the communicator aborted, which ends the stuck kernel) instead of hanging the
 * stream sync. Starts and waits also retire completed ops without blocking; a full ring
 * polls its oldest op to completion first. */

static zpc_nop nc_pend_op(const struct zpc_npend* e) {
  zpc_nop op;
  memcpy(op.desc, e->desc, sizeof op.desc);
  op.t0 = e->t0;
  op.ready = e->ready;
  return op;
}

/* poll op e until done (block = 1) or once (block = 0: *done says); deadline and NCCL errors */
static int nc_pend_poll(zpc_ncomm* c, struct zpc_npend* e, int block, int* done) {
  *done = 0;
  if (c->failed) return c->failed;
  zpc_nop op = nc_pend_op(e);
  int n = 0, rc = ZP_OK;
  for (;;) {
    cudaError_t q = cudaEventQuery(e->ev_done);
    if (q == cudaSuccess) {
      *done = 1;
      break;
    }
    if (q != cudaErrorNotReady) {
      rc = nc_cuda_fail(c, &op, "cudaEventQuery(ev_done)", q);
      break;
    }
    ncclResult_t a = ncclSuccess;
    ncclResult_t r = ncclCommGetAsyncError(c->nc, &a);
    if (r != ncclSuccess) {
      rc = nc_nccl_fail(c, &op, "ncclCommGetAsyncError", r);
      break;
    }
    if (a != ncclSuccess && a != ncclInProgress) {
      rc = nc_async_fail(c, &op, a);
      break;
    }
    if (!op.ready) { /* the clock runs from when the op's inputs are ready */
      cudaError_t er = cudaEventQuery(e->ev_ready);
      if (er == cudaSuccess) op.ready = 1;
      else if (er != cudaErrorNotReady) {
        rc = nc_cuda_fail(c, &op, "cudaEventQuery(ev_ready)", er);
        break;
      } else op.t0 = nc_now();
    }
    if (op.ready && nc_now() - op.t0 >= c->timeout_s) {
      rc = nc_fail(c, ZP_E_TIMEOUT,
                   "%s did not complete within %.3g s: a peer is dead or hung; communicator aborted",
                   op.desc, c->timeout_s);
      break;
    }
    if (!block) break;
    nc_pause(&n);
  }
  e->t0 = op.t0;
  e->ready = op.ready;
  return rc;
}

/* block = 1: first poll to completion every op the compute stream waits for (all = 1: every
 * op). Then retire, from the head, the ops that are done and were waited for (all: done). */
static int nc_pend_retire(zpc_ncomm* c, int block, int all) {
  int rc, done = 0;
  if (block)
    for (int k = 0; k < c->plen; k++) {
      struct zpc_npend* e = &c->pend[(c->phead + k) % NC_PEND];
      if ((all || e->waited) && (rc = nc_pend_poll(c, e, 1, &done))) return rc;
    }
  while (c->plen > 0) {
    struct zpc_npend* e = &c->pend[c->phead];
    if (!all && !e->waited) break; /* keep it for its wait */
    if ((rc = nc_pend_poll(c, e, 0, &done))) return rc;
    if (!done) break;
    c->phead = (c->phead + 1) % NC_PEND;
    c->plen--;
  }
  return ZP_OK;
}

/* a started op's enqueue (issue() enqueues the NCCL call on c->stream), c->pmu held */
template <typename F>
static int nc_start_locked(zpc_ncomm* c, zpc_nop* opp, const char* call, F&& issue, uint64_t* ticket) {
  zpc_nop& op = *opp;
  int rc;
  if ((rc = nc_pend_retire(c, 0, 0))) return rc;
  if (c->plen == NC_PEND) { /* ring full: the oldest must finish first (and be waited for) */
    struct zpc_npend* e = &c->pend[c->phead];
    int done = 0;
    if ((rc = nc_pend_poll(c, e, 1, &done))) return rc;
    if (!e->waited) NC_CUDA(c, &op, cudaStreamWaitEvent(c->b->stream, e->ev_done, 0));
    c->phead = (c->phead + 1) % NC_PEND;
    c->plen--;
  }
  struct zpc_npend* e = &c->pend[(c->phead + c->plen) % NC_PEND];
  NC_CUDA(c, &op, cudaEventRecord(e->ev_ready, c->b->stream));
  NC_CUDA(c, &op, cudaStreamWaitEvent(c->stream, e->ev_ready, 0));
  op.t0 = nc_now();
  op.ready = 0;
  if ((rc = nc_issued(c, &op, call, issue()))) return rc;
  NC_CUDA(c, &op, cudaEventRecord(e->ev_done, c->stream));
  memcpy(e->desc, op.desc, sizeof e->desc);
  e->t0 = op.t0;
  e->ready = 0;
  e->waited = 0;
  e->ticket = ++c->aseq;
  c->plen++;
  *ticket = e->ticket;
  return ZP_OK;
}

/* nc_start_locked under the ring's mutex */
template <typename F>
static int nc_start(zpc_ncomm* c, zpc_nop* op, const char* call, F&& issue, uint64_t* ticket) {
  pthread_mutex_lock(&c->pmu);
  int rc = nc_start_locked(c, op, call, issue, ticket);
  pthread_mutex_unlock(&c->pmu);
  return rc;
}
/* a start that ran synchronously (nothing to overlap) still takes the next ticket */
static int nc_ran_now(zpc_ncomm* c, int rc, uint64_t* ticket) {
  if (!rc) *ticket = ++c->aseq;
  return rc;
}

static int nc_allreduce_start(zp_comm* zc, void* buf, size_t count, zp_dtype dt, zp_redop rop,
                              uint64_t* ticket) {
  zpc_ncomm* c = (zpc_ncomm*)zc;
  if (!ticket) return nc_fail(c, ZP_E_INVALID, "allreduce_start: ticket is NULL");
  *ticket = 0;
  if (count == 0 || !buf || nc_is_host(buf) || !c->pend) /* nothing to overlap: run it now */
    return nc_ran_now(c, nc_allreduce(zc, buf, count, dt, rop), ticket);
  zpc_nop op;
  ncclDataType_t t;
  ncclRedOp_t o;
  int rc = nc_reduce_begin(c, &op, "allreduce", count, dt, rop, ", started early", &t, &o);
  if (rc) return rc;
  return nc_start(c, &op, "ncclAllReduce", [&] { return ncclAllReduce(buf, buf, count, t, o, c->nc, c->stream); },
                  ticket);
}

static int nc_reduce_scatter_start(zp_comm* zc, void* recv, const void* send, size_t rcount, zp_dtype dt,
                                   zp_redop rop, uint64_t* ticket) {
  zpc_ncomm* c = (zpc_ncomm*)zc;
  if (!ticket) return nc_fail(c, ZP_E_INVALID, "reduce_scatter_start: ticket is NULL");
  *ticket = 0;
  if (rcount == 0 || !recv || !send || nc_kind2(recv, send) != 0 || !c->pend) /* run it now */
    return nc_ran_now(c, nc_reduce_scatter(zc, recv, send, rcount, dt, rop), ticket);
  zpc_nop op;
  ncclDataType_t t;
  ncclRedOp_t o;
  int rc = nc_reduce_begin(c, &op, "reduce_scatter", rcount, dt, rop, ", started early", &t, &o);
  if (rc) return rc;
  return nc_start(c, &op, "ncclReduceScatter",
                  [&] { return ncclReduceScatter(send, recv, rcount, t, o, c->nc, c->stream); }, ticket);
}

static int nc_allgather_start(zp_comm* zc, void* recv, const void* send, size_t scount, zp_dtype dt,
                              uint64_t* ticket) {
  zpc_ncomm* c = (zpc_ncomm*)zc;
  if (!ticket) return nc_fail(c, ZP_E_INVALID, "allgather_start: ticket is NULL");
  *ticket = 0;
  if (scount == 0 || !recv || !send || !nc_dt_valid(dt) || nc_kind2(recv, send) != 0 || !c->pend) /* run it now */
    return nc_ran_now(c, nc_allgather(zc, recv, send, scount, dt), ticket);
  zpc_nop op;
  unsigned long long seq = (unsigned long long)++c->seq;
  int rc = nc_begin(c, &op, "allgather #%llu (count %zu %s, started early)", seq, scount, nc_dt_name(dt));
  if (rc) return rc;
  ncclDataType_t t;
  size_t n;
  nc_move_type(dt, scount, &t, &n);
  return nc_start(c, &op, "ncclAllGather", [&] { return ncclAllGather(send, recv, n, t, c->nc, c->stream); }, ticket);
}

static int nc_wait_locked(zpc_ncomm* c, uint64_t ticket) {
  for (int k = 0; k < c->plen; k++) {
    struct zpc_npend* e = &c->pend[(c->phead + k) % NC_PEND];
    if (e->ticket > ticket) break;
    if (e->waited) continue;
    zpc_nop op = nc_pend_op(e);
    NC_CUDA(c, &op, cudaStreamWaitEvent(c->b->stream, e->ev_done, 0));
    e->waited = 1;
  }
  return nc_pend_retire(c, 0, 0);
}
static int nc_wait_started(zp_comm* zc, uint64_t ticket) {
  zpc_ncomm* c = (zpc_ncomm*)zc;
  if (c->failed) return c->failed;
  if (ticket > c->aseq)
    return nc_fail(c, ZP_E_INVALID, "wait_started: ticket %llu was never started (last %llu)",
                   (unsigned long long)ticket, (unsigned long long)c->aseq);
  pthread_mutex_lock(&c->pmu);
  int rc = nc_wait_locked(c, ticket);
  pthread_mutex_unlock(&c->pmu);
  return rc;
}

/* 1.9: every blocking wait of the backend first waits here for the started allreduces the
 * compute stream waits for, under their deadline (see above). The message of a failure goes to
 * the backend's error as well. */
int zpc_comm_drain(zp_backend* b) {
  for (int i = 0; i < b->n_ncomm; i++) {
    zpc_ncomm* c = (zpc_ncomm*)b->ncomm[i];
    if (!c || c->plen == 0) continue;
    pthread_mutex_lock(&c->pmu);
    int rc = nc_pend_retire(c, 1, 0);
    pthread_mutex_unlock(&c->pmu);
    if (rc) return zpc_err(b->host, rc, "%s", c->base.err);
  }
  return ZP_OK;
}

/* the backend goes first (a pipeline's communicator can outlive it): forget it */
void zpc_comm_detach_all(zp_backend* b) {
  for (int i = 0; i < b->n_ncomm; i++) ((zpc_ncomm*)b->ncomm[i])->b = NULL;
  b->n_ncomm = 0;
}

static int nc_split(zp_comm* zc, int color, int key, zp_comm** out);
static void nc_destroy(zp_comm* zc);

static const zp_comm_ops zpc_nccl_async_ops_table = {
    sizeof(zp_comm_ops), nc_allreduce, nc_reduce_scatter, nc_allgather, nc_broadcast,
    nc_send,             nc_recv,      nc_barrier,        nc_split,     nc_destroy,
    nc_allreduce_start,  nc_wait_started, nc_reduce_scatter_start, nc_allgather_start,
};

static const zp_comm_ops zpc_nccl_ops_table = {
    sizeof(zp_comm_ops), nc_allreduce, nc_reduce_scatter, nc_allgather, nc_broadcast,
    nc_send,             nc_recv,      nc_barrier,        nc_split,     nc_destroy,
    NULL,                NULL, NULL, NULL, /* 1.9 started collectives off (ZP_CUDA_NCCL_ASYNC=0): the core defers */
};

/* Wraps a ready NCCL communicator (takes ownership: aborts it on failure). Errors go to
 * msg (the caller decides where they are reported). */
static int nc_wrap(zp_backend* b, ncclComm_t nc, double timeout_s, int sub, zpc_ncomm** out,
                   char* msg, size_t msglen) {
  *out = NULL;
  int rank = 0, size = 0;
  ncclResult_t r = ncclCommUserRank(nc, &rank);
  if (r == ncclSuccess) r = ncclCommCount(nc, &size);
  if (r != ncclSuccess) {
    snprintf(msg, msglen, "nccl: ncclCommUserRank/ncclCommCount failed: %s (%s)",
             ncclGetErrorString(r), nc_last(nc));
    (void)ncclCommAbort(nc);
    return ZP_E_COMM;
  }
  zpc_ncomm* c = (zpc_ncomm*)calloc(1, sizeof *c);
  uint64_t* ss = (uint64_t*)calloc((size_t)size, sizeof(uint64_t));
  uint64_t* rs = (uint64_t*)calloc((size_t)size, sizeof(uint64_t));
  if (!c || !ss || !rs) {
    free(c);
    free(ss);
    free(rs);
    snprintf(msg, msglen, "nccl: out of host memory for a communicator of %d ranks", size);
    (void)ncclCommAbort(nc);
    return ZP_E_NOMEM;
  }
  c->base.ops = &zpc_nccl_ops_table;
  c->base.rank = rank;
  c->base.size = size;
  c->b = b;
  c->nc = nc;
  c->timeout_s = timeout_s;
  c->send_seq = ss;
  c->recv_seq = rs;
  c->stage_bytes = ZPC_NCCL_STAGE_BYTES;
  if (sub) snprintf(c->where, sizeof c->where, " on a sub-communicator of size %d", size);
  const char* what = NULL;
  cudaError_t e = cudaSuccess;
#define NC_TRY(call)                  \
  if ((e = (call)) != cudaSuccess) {  \
    what = #call;                     \
    goto fail;                        \
  }
  if (b->prio) { /* ZP_CUDA_PRIO=1: collectives at the compute stream's (greatest) priority, above the side stream */
    int lo = 0, hi = 0;
    NC_TRY(cudaDeviceGetStreamPriorityRange(&lo, &hi));
    NC_TRY(cudaStreamCreateWithPriority(&c->stream, cudaStreamNonBlocking, hi));
  } else {
    NC_TRY(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
  }
  NC_TRY(cudaEventCreateWithFlags(&c->ev_ready, cudaEventDisableTiming));
  NC_TRY(cudaEventCreateWithFlags(&c->ev_done, cudaEventDisableTiming));
  NC_TRY(cudaMalloc((void**)&c->d_stage, c->stage_bytes));
  NC_TRY(cudaMallocHost((void**)&c->h_stage, c->stage_bytes));
  if (b->nccl_async && b->n_ncomm < ZPC_MAX_NCOMMS) { /* 1.9 started allreduces (ZP_CUDA_NCCL_ASYNC=1) */
    c->pend = (struct zpc_npend*)calloc(NC_PEND, sizeof *c->pend);
    if (!c->pend) {
      e = cudaErrorMemoryAllocation;
      what = "calloc(allreduce ring)";
      goto fail;
    }
    pthread_mutex_init(&c->pmu, NULL);
    for (int i = 0; i < NC_PEND; i++) {
      NC_TRY(cudaEventCreateWithFlags(&c->pend[i].ev_ready, cudaEventDisableTiming));
      NC_TRY(cudaEventCreateWithFlags(&c->pend[i].ev_done, cudaEventDisableTiming));
    }
    c->base.ops = &zpc_nccl_async_ops_table;
    b->ncomm[b->n_ncomm++] = c;
  }
#undef NC_TRY
  *out = c;
  return ZP_OK;
fail:
  snprintf(msg, msglen, "cuda: %s failed: %s (%s) while creating the NCCL communicator", what,
           cudaGetErrorString(e), cudaGetErrorName(e));
  nc_free(c); /* aborts nc */
  return e == cudaErrorMemoryAllocation ? ZP_E_NOMEM : ZP_E_DEVICE;
}

static int nc_split(zp_comm* zc, int color, int key, zp_comm** out) {
  zpc_ncomm* c = (zpc_ncomm*)zc;
  zpc_nop op;
  if (out) *out = NULL;
  if (color < 0) color = ZP_COMM_SPLIT_UNDEFINED;
  int rc = nc_begin(c, &op, "split #%llu (color %d, key %d)", (unsigned long long)++c->seq, color,
                    key);
  if (rc) return rc;
  if (!out) return nc_fail(c, ZP_E_INVALID, "%s: NULL output", op.desc);
  ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
  cfg.blocking = 0;
  ncclComm_t nn = NULL;
  op.ready = 1; /* nothing on the device to wait for: the clock runs from now */
  ncclResult_t r =
      ncclCommSplit(c->nc, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &nn, &cfg);
  if (r != ncclSuccess && r != ncclInProgress) return nc_nccl_fail(c, &op, "ncclCommSplit", r);
  /* the split runs as a job of the parent: done when the parent's state leaves InProgress;
   * NCCL stores the child into nn when its init finished */
  int n = 0;
  for (;;) {
    ncclResult_t a = ncclSuccess;
    ncclResult_t q = ncclCommGetAsyncError(c->nc, &a);
    if (q != ncclSuccess) return nc_nccl_fail(c, &op, "ncclCommGetAsyncError", q);
    if (a == ncclSuccess) break;
    if (a != ncclInProgress) {
      ncclComm_t cur = __atomic_load_n(&nn, __ATOMIC_ACQUIRE);
      if (cur) (void)ncclCommAbort(cur);
      return nc_async_fail(c, &op, a);
    }
    if (nc_now() - op.t0 >= c->timeout_s) {
      ncclComm_t cur = __atomic_load_n(&nn, __ATOMIC_ACQUIRE);
      if (cur) (void)ncclCommAbort(cur);
      return nc_fail(c, ZP_E_TIMEOUT,
                     "%s did not complete within %.3g s: a peer is dead or hung; communicator "
                     "aborted",
                     op.desc, c->timeout_s);
    }
    nc_pause(&n);
  }
  ncclComm_t child = __atomic_load_n(&nn, __ATOMIC_ACQUIRE);
  if (color < 0) {
    if (child) (void)ncclCommAbort(child); /* not expected: NCCL gives none for NOCOLOR */
    return ZP_OK;
  }
  if (!child)
    return nc_fail(c, ZP_E_INTERNAL, "%s: ncclCommSplit completed without a communicator",
                   op.desc);
  /* the child's own init state */
  for (n = 0;;) {
    ncclResult_t a = ncclSuccess;
    ncclResult_t q = ncclCommGetAsyncError(child, &a);
    if (q != ncclSuccess) a = q;
    if (a == ncclSuccess) break;
    if (a != ncclInProgress || nc_now() - op.t0 >= c->timeout_s) {
      char last[256];
      snprintf(last, sizeof last, "%s", nc_last(child));
      (void)ncclCommAbort(child);
      if (a == ncclInProgress)
        return nc_fail(c, ZP_E_TIMEOUT,
                       "%s: the new communicator's init did not complete within %.3g s: a peer is "
                       "dead or hung; communicator aborted",
                       op.desc, c->timeout_s);
      return nc_fail(c, nc_status_of(a), "%s: the new communicator's init failed: %s (%s)",
                     op.desc, ncclGetErrorString(a), last);
    }
    nc_pause(&n);
  }
  zpc_ncomm* nc = NULL;
  char msg[ZP_COMM_ERR_LEN];
  if ((rc = nc_wrap(c->b, child, c->timeout_s, 1, &nc, msg, sizeof msg)))
    return nc_fail(c, rc, "%s: %s", op.desc, msg);
  *out = &nc->base;
  return ZP_OK;
}

static void nc_destroy(zp_comm* zc) {
  zpc_ncomm* c = (zpc_ncomm*)zc;
  if (!c) return;
  if (c->nc && !c->failed && c->plen) { /* started ops finish first */
    pthread_mutex_lock(&c->pmu);
    (void)nc_pend_retire(c, 1, 1);
    pthread_mutex_unlock(&c->pmu);
  }
  if (c->nc && !c->failed) {
    /* finalize: flush and quiesce under the deadline; abort if that does not finish */
    int ok = 0;
    ncclResult_t r = ncclCommFinalize(c->nc);
    if (r == ncclSuccess || r == ncclInProgress) {
      double t0 = nc_now();
      int n = 0;
      for (;;) {
        ncclResult_t a = ncclSuccess;
        if (ncclCommGetAsyncError(c->nc, &a) != ncclSuccess) break;
        if (a == ncclSuccess) {
          ok = 1;
          break;
        }
        if (a != ncclInProgress || nc_now() - t0 >= c->timeout_s) break;
        nc_pause(&n);
      }
    }
    if (ok && ncclCommDestroy(c->nc) == ncclSuccess) {
      c->nc = NULL;
    } else {
      nc_log(c->b, ZP_LOG_WARN,
             "cuda backend: rank %d: NCCL communicator did not finalize cleanly (%s); aborting it",
             c->base.rank, nc_last(c->nc));
    }
  }
  nc_free(c); /* aborts what is left */
}

/* ---------------------------------------------------------------- backend methods */

int zpc_comm_unique_id(zp_backend* b, void* id, size_t* len) {
  if (!id || !len) return ZPC_INVALID(b, "nccl: comm_unique_id: NULL id or len");
  if (*len < NCCL_UNIQUE_ID_BYTES)
    return ZPC_INVALID(b, "nccl: comm_unique_id: %zu bytes of room, the NCCL id needs %d", *len,
                       NCCL_UNIQUE_ID_BYTES);
  ncclUniqueId uid;
  ncclResult_t r = ncclGetUniqueId(&uid);
  if (r != ncclSuccess)
    return zpc_err(b->host, ZP_E_COMM, "nccl: ncclGetUniqueId failed: %s (%s)",
                   ncclGetErrorString(r), nc_last(NULL));
  memcpy(id, uid.internal, NCCL_UNIQUE_ID_BYTES);
  *len = NCCL_UNIQUE_ID_BYTES;
  return ZP_OK;
}

int zpc_comm_create(zp_backend* b, const void* id, size_t len, int rank, int size,
                    double timeout_s, zp_comm** out) {
  if (!out) return ZPC_INVALID(b, "nccl: comm_create: out is NULL");
  *out = NULL;
  if (!id || len != NCCL_UNIQUE_ID_BYTES)
    return ZPC_INVALID(b, "nccl: comm_create: the id is %zu bytes, NCCL's is %d", id ? len : 0,
                       NCCL_UNIQUE_ID_BYTES);
  if (size < 1 || rank < 0 || rank >= size)
    return ZPC_INVALID(b, "nccl: comm_create: rank %d of %d is not a rank", rank, size);
  if (!(timeout_s > 0)) timeout_s = ZPC_NCCL_DEFAULT_TIMEOUT_S;
  ZPC_CUDA(b, cudaSetDevice(b->device));
  ncclUniqueId uid;
  memcpy(uid.internal, id, NCCL_UNIQUE_ID_BYTES);
  ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
  cfg.blocking = 0;
  ncclComm_t nc = NULL;
  const double t0 = nc_now();
  ncclResult_t r = ncclCommInitRankConfig(&nc, size, uid, rank, &cfg);
  if (r != ncclSuccess && r != ncclInProgress) {
    char last[256];
    snprintf(last, sizeof last, "%s", nc_last(nc));
    if (nc) (void)ncclCommAbort(nc);
    return zpc_err(b->host, nc_status_of(r),
                   "nccl: ncclCommInitRankConfig failed: %s (%s) (rank %d of %d, device %d)",
                   ncclGetErrorString(r), last, rank, size, b->device);
  }
  int n = 0;
  for (;;) {
    ncclComm_t cur = __atomic_load_n(&nc, __ATOMIC_ACQUIRE);
    ncclResult_t a = ncclInProgress;
    if (cur) {
      ncclResult_t q = ncclCommGetAsyncError(cur, &a);
      if (q != ncclSuccess) a = q;
    }
    if (a == ncclSuccess) break;
    if (a != ncclInProgress) {
      char last[256];
      snprintf(last, sizeof last, "%s", nc_last(cur));
      (void)ncclCommAbort(cur);
      return zpc_err(b->host, nc_status_of(a),
                     "nccl: NCCL init failed: %s (%s) (rank %d of %d, device %d)",
                     ncclGetErrorString(a), last, rank, size, b->device);
    }
    if (nc_now() - t0 >= timeout_s) {
      if (cur) (void)ncclCommAbort(cur);
      return zpc_err(b->host, ZP_E_TIMEOUT,
                     "nccl: NCCL init did not complete within %.3g s (rank %d of %d): a peer did "
                     "not join (not started, dead, or unreachable: see NCCL_SOCKET_IFNAME); "
                     "communicator aborted",
                     timeout_s, rank, size);
    }
    nc_pause(&n);
  }
  zpc_ncomm* c = NULL;
  char msg[ZP_COMM_ERR_LEN];
  int rc = nc_wrap(b, nc, timeout_s, 0, &c, msg, sizeof msg);
  if (rc) return zpc_err(b->host, rc, "%s (rank %d of %d)", msg, rank, size);
  int ver = 0;
  (void)ncclGetVersion(&ver);
  nc_log(b, ZP_LOG_INFO,
         "cuda backend: NCCL %d.%d.%d communicator rank %d of %d on device %d ready in %.2f s "
         "(deadline %.3g s per call)",
         ver / 10000, ver / 100 % 100, ver % 100, rank, size, b->device, nc_now() - t0, timeout_s);
  *out = &c->base;
  return ZP_OK;
}

#endif /* ZP_HAVE_NCCL */
