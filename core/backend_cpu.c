/* backend_cpu.c: the CPU device backend (zp_backend_ops), reference implementation of every op.
 * Invariants:
 * - Compute dtype F32 or F64: the model ops live in cpu_ops_impl.h, included here twice
 *   (real = float / double); each entry point validates its arguments, then dispatches on the
 *   backend's compute dtype. Errors: status code + message through host->set_error (when a host
 *   with set_error was given); never abort or exit.
 * - Memory is host memory from aligned_alloc(64) (not zeroed); copies are memcpy; every op is
 *   synchronous, so synchronize() is a no-op. The exceptions are copy_async (ABI 1.5): deferred
 *   until copy_wait, and the side stream's AdamW and timer marks (ABI 1.7): deferred until
 *   their side_end ticket is waited for or a copy_d2h reads memory, so that a missing wait
 *   fails tests here (stale values, an unreached timer slot) instead of racing on a GPU.
 *   Any other op issued on the side stream first runs the side work queued before it. The
 *   queue is guarded by the copy mutex (a copy_wait from a tier's thread may run side work);
 *   a thread running queued work issues its ops at once (thread-local flag).
 * - cast/accumulate/fill/scale/sumsq take F32, F64 and BF16 in any combination. accumulate
 *   computes in double when either side is F64 or dst is BF16, otherwise in float; BF16
 *   results are rounded once (round to nearest even, bf16.h). sumsq sums in double over fixed
 *   chunks that depend on n only; sumsq_many (ABI 1.8) is one sumsq per tensor; sumsq_start
 *   (ABI 1.9) is one sumsq into a slot, queued like AdamW on the side stream.
 * - Nothing depends on the number of OpenMP threads (bitwise): see cpu_ops_impl.h.
 * - AdamW keeps fp32 state and computes in fp32 (bias corrections 1-beta^t in double); f32/bf16
 *   grads go through the vectorised kernel of adamw_cpu.c (bitwise equal to the scalar loop). */
#include "backend_cpu.h"

#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "adamw_cpu.h"
#include "bf16.h"
#include "gemm_cpu.h"

#define ZP_CPU_COPY_QUEUE 64

struct zp_backend {
  zp_host host; /* copy of the host table (zeroed where the caller's is shorter) */
  int has_set_error;
  zp_dtype ct;
  char name[128];
  double* marks; /* timer slots: host clock in ms (ops are synchronous here), grown on use */
  int n_marks;
  /* copy_async (1.5): deferred copies, run in ticket order when waited for (or when the queue
   * is full), never earlier: a caller that reads a destination or changes a source before its
   * copy_wait sees wrong data here every time, where a GPU would race */
  pthread_mutex_t cmu;
  struct { void* dst; const void* src; size_t bytes; uint64_t ticket; } cq[ZP_CPU_COPY_QUEUE];
  int cq_head, cq_len;
  uint64_t c_next, c_done; /* last ticket issued, last ticket done */
  int in_side;             /* between side_begin and side_end (1.7) */
  /* side work (1.7) deferred in issue order: AdamW calls and timer marks; ticket 0 until the
   * side_end that closes them; run by cpu_side_run. Guarded by cmu: copy_wait may run side
   * work from any thread */
  struct cpu_side_op* sq;
  int sq_len, sq_cap;
  int grad_overwrite;      /* parameter gradients overwritten, not accumulated (1.8) */
  double* ss_slots;        /* sumsq_start's results (1.9), ZP_SUMSQ_START_SLOTS; NaN until started */
};

typedef struct cpu_side_op {
  int kind; /* 0: adamw, 1: timer mark, 2: sumsq_start (slot, grad = x, gdt, n) */
  uint64_t ticket;
  void* param;
  zp_dtype pdt, gdt;
  float *master, *m, *v;
  const void* grad;
  size_t n;
  float lr, beta1, beta2, eps, wd, gs;
  int step_t, slot;
} cpu_side_op;

static int zp_cpu_cmp_u64(const void* a, const void* b) {
  uint64_t x = *(const uint64_t*)a, y = *(const uint64_t*)b;
  return x < y ? -1 : x > y;
}

/* fp32 tanh through expf: absolute error < 1e-7 (fine inside GELU, where it is added to 1),
 * several times faster than tanhf. */
static inline float zp_tanh_f32(float u) {
  const float e = expf(-2.0f * fabsf(u));
  return copysignf((1.0f - e) / (1.0f + e), u);
}

/* ---- the model ops, twice ---- */
#define real float
#define ZR(name) name##_f32
#define ZR_IS_F64 0
#define ZR_GEMM zp_gemm_f32
#define ZR_EXP expf
#define ZR_LOG logf
#define ZR_TANH zp_tanh_f32
#include "cpu_ops_impl.h"
#undef real
#undef ZR
#undef ZR_IS_F64
#undef ZR_GEMM
#undef ZR_EXP
#undef ZR_LOG
#undef ZR_TANH

#define real double
#define ZR(name) name##_f64
#define ZR_IS_F64 1
#define ZR_GEMM zp_gemm_f64
#define ZR_EXP exp
#define ZR_LOG log
#define ZR_TANH tanh
#include "cpu_ops_impl.h"
#undef real
#undef ZR
#undef ZR_IS_F64
#undef ZR_GEMM
#undef ZR_EXP
#undef ZR_LOG
#undef ZR_TANH

/* ---- errors ---- */

static void zp_cpu_vreport(const zp_host* host, int usable, const char* fmt, va_list ap) {
  if (!host || !usable || !host->set_error) return;
  char buf[512];
  vsnprintf(buf, sizeof buf, fmt, ap);
  host->set_error(host->ctx, "%s", buf);
}

static int zp_host_has_set_error(const zp_host* host) {
  return host && host->struct_size >= offsetof(zp_host, set_error) + sizeof(host->set_error) &&
         host->set_error != NULL;
}

__attribute__((format(printf, 3, 4))) static int zp_cpu_fail(zp_backend* b, int code,
                                                             const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  if (b) zp_cpu_vreport(&b->host, b->has_set_error, fmt, ap);
  va_end(ap);
  return code;
}

__attribute__((format(printf, 3, 4))) static int zp_host_fail(const zp_host* host, int code,
                                                              const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  zp_cpu_vreport(host, zp_host_has_set_error(host), fmt, ap);
  va_end(ap);
  return code;
}

#define ZP_REQ(cond, ...)                                       \
  do {                                                          \
    if (!(cond)) return zp_cpu_fail(b, ZP_E_INVALID, __VA_ARGS__); \
  } while (0)
static void cpu_side_run(zp_backend* b, uint64_t upto);
static void cpu_side_run_locked(zp_backend* b, uint64_t upto);
/* this thread is executing queued side work: its ops run at once and queue nothing */
static _Thread_local int zp_cpu_side_running;
/* every op: side work queued before an op issued on the side stream runs first (in order) */
#define ZP_NEED_B()                                           \
  do {                                                        \
    if (!b) return ZP_E_INVALID;                              \
    if (b->in_side && !zp_cpu_side_running) cpu_side_run(b, UINT64_MAX); \
  } while (0)
/* the ops that queue side work, or manage the queue and the tickets */
#define ZP_NEED_BQ()                 \
  do {                               \
    if (!b) return ZP_E_INVALID;     \
  } while (0)

static int zp_cpu_status(zp_backend* b, int st, const char* op) {
  if (st == ZP_OK) return ZP_OK;
  if (st == ZP_E_NOMEM) return zp_cpu_fail(b, st, "cpu backend: %s: out of host memory", op);
  return zp_cpu_fail(b, st, "cpu backend: %s failed (status %d)", op, st);
}

#define ZP_DISPATCH(op, ...) \
  zp_cpu_status(b, b->ct == ZP_F64 ? op##_f64(__VA_ARGS__) : op##_f32(__VA_ARGS__), #op)

static const char* zp_cpu_dtype_name(zp_dtype t) {
  switch (t) {
    case ZP_F32: return "f32";
    case ZP_F64: return "f64";
    case ZP_BF16: return "bf16";
    case ZP_I32: return "i32";
    case ZP_U16: return "u16";
  }
  return "unknown";
}

static int zp_is_float(zp_dtype t) { return t == ZP_F32 || t == ZP_F64 || t == ZP_BF16; }

/* ---- lifecycle ---- */

static int cpu_create(const zp_host* host, const zp_backend_config* cfg, zp_backend** out) {
  if (!out) return zp_host_fail(host, ZP_E_INVALID, "cpu backend: create: out is NULL");
  *out = NULL;
  if (!cfg) return zp_host_fail(host, ZP_E_INVALID, "cpu backend: create: no config");
  zp_backend_config c;
  memset(&c, 0, sizeof c);
  size_t cs = cfg->struct_size == 0 || cfg->struct_size > sizeof c ? sizeof c : cfg->struct_size;
  memcpy(&c, cfg, cs);
  if (c.compute_dtype != ZP_F32 && c.compute_dtype != ZP_F64)
    return zp_host_fail(host, ZP_E_INVALID,
                        "cpu backend: compute dtype must be f32 or f64 (got %s)",
                        zp_cpu_dtype_name(c.compute_dtype));
  if (c.num_threads < 0)
    return zp_host_fail(host, ZP_E_INVALID, "cpu backend: num_threads %d < 0", c.num_threads);
  zp_backend* b = (zp_backend*)calloc(1, sizeof *b);
  if (!b) return zp_host_fail(host, ZP_E_NOMEM, "cpu backend: out of memory");
  if (host) {
    size_t hs = host->struct_size > sizeof(zp_host) ? sizeof(zp_host) : host->struct_size;
    memcpy(&b->host, host, hs);
    b->has_set_error = zp_host_has_set_error(host);
  }
  b->ct = c.compute_dtype;
  b->ss_slots = (double*)malloc(ZP_SUMSQ_START_SLOTS * sizeof(double));
  if (!b->ss_slots) {
    free(b);
    return zp_host_fail(host, ZP_E_NOMEM, "cpu backend: out of memory");
  }
  for (int i = 0; i < ZP_SUMSQ_START_SLOTS; i++) b->ss_slots[i] = NAN;
  pthread_mutex_init(&b->cmu, NULL);
  if (c.num_threads > 0) omp_set_num_threads(c.num_threads);
  *out = b;
  return ZP_OK;
}

static void cpu_destroy(zp_backend* b) {
  if (b) {
    free(b->marks);
    free(b->ss_slots);
    free(b->sq); /* side work never waited for is dropped, like copies */
    pthread_mutex_destroy(&b->cmu); /* copies never waited for are dropped */
  }
  free(b);
}

/* ---- copies beside the compute (1.5): deferred until copy_wait ---- */
static void cpu_copy_run_oldest(zp_backend* b) { /* b->cmu held, cq_len > 0 */
  int i = b->cq_head;
  if (b->cq[i].bytes) memcpy(b->cq[i].dst, b->cq[i].src, b->cq[i].bytes);
  b->c_done = b->cq[i].ticket;
  b->cq_head = (b->cq_head + 1) % ZP_CPU_COPY_QUEUE;
  b->cq_len--;
  cpu_side_run_locked(b, b->c_done); /* the side work a ticket up to here closed */
}
static int cpu_copy_async(zp_backend* b, void* dst, const void* src, size_t bytes, int h2d, uint64_t* ticket) {
  ZP_NEED_B();
  (void)h2d;
  ZP_REQ(ticket, "cpu backend: copy_async: ticket is NULL");
  ZP_REQ(bytes == 0 || (dst && src), "cpu backend: copy_async: NULL pointer");
  pthread_mutex_lock(&b->cmu);
  if (b->cq_len == ZP_CPU_COPY_QUEUE) cpu_copy_run_oldest(b);
  int i = (b->cq_head + b->cq_len) % ZP_CPU_COPY_QUEUE;
  b->cq[i].dst = dst;
  b->cq[i].src = src;
  b->cq[i].bytes = bytes;
  b->cq[i].ticket = *ticket = ++b->c_next;
  b->cq_len++;
  pthread_mutex_unlock(&b->cmu);
  return ZP_OK;
}
/* ---- the side stream (1.7): AdamW and timer marks issued on it are queued and run when their
 * ticket (a zero-byte deferred copy, so waiting for it also runs the copies issued before) is
 * waited for, or when a copy_d2h or another op on the side stream needs them done ---- */
static int cpu_adamw_now(zp_backend* b, void* param, zp_dtype pdt, float* master, const void* grad,
                         zp_dtype gdt, float* m, float* v, size_t n, float lr, float beta1,
                         float beta2, float eps, float weight_decay, float grad_scale, int step_t);
static void cpu_mark_now(zp_backend* b, int slot);
static int cpu_sumsq(zp_backend* b, double* out_host, const void* x, zp_dtype dt, size_t n);

/* queue one piece of side work (its arguments already checked) */
static int cpu_side_push(zp_backend* b, const cpu_side_op* op) {
  pthread_mutex_lock(&b->cmu);
  if (b->sq_len == b->sq_cap) {
    int n = b->sq_cap ? 2 * b->sq_cap : 64;
    cpu_side_op* q = (cpu_side_op*)realloc(b->sq, (size_t)n * sizeof *q);
    if (!q) {
      pthread_mutex_unlock(&b->cmu);
      return zp_cpu_fail(b, ZP_E_NOMEM, "cpu backend: out of memory queueing side-stream work");
    }
    b->sq = q;
    b->sq_cap = n;
  }
  b->sq[b->sq_len++] = *op;
  pthread_mutex_unlock(&b->cmu);
  return ZP_OK;
}
/* run the queued side work in issue order: all of it (upto UINT64_MAX), or what tickets up to
 * `upto` closed (a prefix: tickets grow, the open side region's work is last) */
static void cpu_side_run_locked(zp_backend* b, uint64_t upto) { /* b->cmu held */
  if (zp_cpu_side_running || b->sq_len == 0) return;
  zp_cpu_side_running = 1;
  int k = 0;
  for (; k < b->sq_len; k++) {
    const cpu_side_op* o = &b->sq[k];
    if (upto != UINT64_MAX && (o->ticket == 0 || o->ticket > upto)) break;
    if (o->kind == 1) cpu_mark_now(b, o->slot);
    else if (o->kind == 2) (void)cpu_sumsq(b, &b->ss_slots[o->slot], o->grad, o->gdt, o->n);
    else /* arguments were checked when queued; a kernel refusal is reported through set_error */
      (void)cpu_adamw_now(b, o->param, o->pdt, o->master, o->grad, o->gdt, o->m, o->v, o->n, o->lr, o->beta1, o->beta2,
                          o->eps, o->wd, o->gs, o->step_t);
  }
  memmove(b->sq, b->sq + k, (size_t)(b->sq_len - k) * sizeof *b->sq);
  b->sq_len -= k;
  zp_cpu_side_running = 0;
}
static void cpu_side_run(zp_backend* b, uint64_t upto) {
  pthread_mutex_lock(&b->cmu);
  cpu_side_run_locked(b, upto);
  pthread_mutex_unlock(&b->cmu);
}

static int cpu_side_begin(zp_backend* b) {
  ZP_NEED_BQ();
  ZP_REQ(!b->in_side, "cpu backend: side_begin: already on the side stream (not nested)");
  b->in_side = 1;
  return ZP_OK;
}
static int cpu_side_end(zp_backend* b, uint64_t* ticket) {
  ZP_NEED_BQ();
  ZP_REQ(ticket, "cpu backend: side_end: ticket is NULL");
  ZP_REQ(b->in_side, "cpu backend: side_end without side_begin");
  b->in_side = 0;
  int rc = cpu_copy_async(b, NULL, NULL, 0, 0, ticket);
  if (rc) return rc;
  pthread_mutex_lock(&b->cmu);
  for (int k = 0; k < b->sq_len; k++) /* the work of the region just closed */
    if (b->sq[k].ticket == 0) b->sq[k].ticket = *ticket;
  pthread_mutex_unlock(&b->cmu);
  return ZP_OK;
}
static int cpu_copy_wait(zp_backend* b, uint64_t ticket, int device) {
  ZP_NEED_BQ();
  (void)device; /* ops are synchronous here: both kinds of wait complete the copy now */
  pthread_mutex_lock(&b->cmu);
  uint64_t issued = b->c_next;
  while (b->c_done < ticket && b->cq_len > 0) cpu_copy_run_oldest(b);
  cpu_side_run_locked(b, ticket < b->c_done ? ticket : b->c_done);
  pthread_mutex_unlock(&b->cmu);
  ZP_REQ(ticket <= issued, "cpu backend: copy_wait: ticket %llu was never issued (last %llu)", (unsigned long long)ticket,
         (unsigned long long)issued);
  return ZP_OK;
}

/* ---- timers (1.3): the host clock; every op has finished when it returns ---- */
static void cpu_mark_now(zp_backend* b, int slot) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  b->marks[slot] = (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}
static int cpu_timer_mark(zp_backend* b, int slot) {
  ZP_NEED_BQ();
  ZP_REQ(slot >= 0 && slot < ZP_TIMER_SLOTS, "cpu backend: timer_mark: slot %d outside 0..%d", slot, ZP_TIMER_SLOTS - 1);
  if (slot >= b->n_marks) {
    int n = b->n_marks ? b->n_marks : 256;
    while (n <= slot) n *= 2;
    if (n > ZP_TIMER_SLOTS) n = ZP_TIMER_SLOTS;
    double* m = (double*)realloc(b->marks, (size_t)n * sizeof *m);
    if (!m) return zp_cpu_fail(b, ZP_E_NOMEM, "cpu backend: timer_mark: out of memory for %d slots", n);
    for (int i = b->n_marks; i < n; i++) m[i] = NAN;
    b->marks = m;
    b->n_marks = n;
  }
  if (b->in_side && !zp_cpu_side_running) { /* reached when the side work before it runs */
    b->marks[slot] = NAN;
    cpu_side_op o;
    memset(&o, 0, sizeof o);
    o.kind = 1;
    o.slot = slot;
    return cpu_side_push(b, &o);
  }
  cpu_mark_now(b, slot);
  return ZP_OK;
}

static int cpu_timer_ms(zp_backend* b, int a, int c, double* ms) {
  ZP_NEED_BQ();
  ZP_REQ(ms, "cpu backend: timer_ms: ms is NULL");
  ZP_REQ(a >= 0 && a < b->n_marks && c >= 0 && c < b->n_marks && !isnan(b->marks[a]) && !isnan(b->marks[c]),
         "cpu backend: timer_ms: slot %d or %d was never marked, or its mark is side-stream work not yet waited for", a, c);
  *ms = b->marks[c] - b->marks[a];
  return ZP_OK;
}

static int cpu_info(zp_backend* b, zp_backend_info* out) {
  ZP_NEED_B();
  ZP_REQ(out, "cpu backend: info: out is NULL");
  int nt = omp_get_max_threads();
  snprintf(b->name, sizeof b->name, "cpu (%d thread%s, %s)", nt, nt == 1 ? "" : "s",
           zp_gemm_name());
  zp_backend_info i;
  memset(&i, 0, sizeof i);
  i.struct_size = sizeof i;
  i.compute_dtype = b->ct;
  i.device_name = b->name;
  i.peak_flops = 0;
  long pages = sysconf(_SC_PHYS_PAGES), avail = sysconf(_SC_AVPHYS_PAGES),
       psz = sysconf(_SC_PAGESIZE);
  if (pages > 0 && psz > 0) i.mem_total = (size_t)pages * (size_t)psz;
  if (avail > 0 && psz > 0) i.mem_free = (size_t)avail * (size_t)psz;
  /* caller's struct_size says how much it can take (0: all of ours) */
  size_t n = out->struct_size == 0 || out->struct_size > sizeof i ? sizeof i : out->struct_size;
  i.struct_size = n;
  memcpy(out, &i, n);
  return ZP_OK;
}

/* ---- memory ---- */

static int cpu_alloc(zp_backend* b, size_t bytes, void** out) {
  ZP_NEED_B();
  ZP_REQ(out, "cpu backend: alloc: out is NULL");
  *out = NULL;
  if (bytes > SIZE_MAX - 64)
    return zp_cpu_fail(b, ZP_E_NOMEM, "cpu backend: alloc of %zu bytes overflows", bytes);
  size_t sz = bytes == 0 ? 64 : (bytes + 63) & ~(size_t)63;
  void* p = aligned_alloc(64, sz);
  if (!p) return zp_cpu_fail(b, ZP_E_NOMEM, "cpu backend: cannot allocate %zu bytes", bytes);
  *out = p;
  return ZP_OK;
}

static void cpu_free(zp_backend* b, void* p) {
  (void)b;
  free(p);
}

static int cpu_copy(zp_backend* b, void* dst, const void* src, size_t bytes, const char* what) {
  ZP_NEED_B();
  if (bytes == 0) return ZP_OK;
  ZP_REQ(dst && src, "cpu backend: %s: NULL pointer", what);
  if (dst != src) memmove(dst, src, bytes);
  return ZP_OK;
}
static int cpu_copy_h2d(zp_backend* b, void* dst, const void* src, size_t bytes) {
  return cpu_copy(b, dst, src, bytes, "copy_h2d");
}
static int cpu_copy_d2h(zp_backend* b, void* dst, const void* src, size_t bytes) {
  if (b) cpu_side_run(b, UINT64_MAX); /* a host read never sees memory side work has yet to write (1.7) */
  return cpu_copy(b, dst, src, bytes, "copy_d2h");
}
static int cpu_copy_d2d(zp_backend* b, void* dst, const void* src, size_t bytes) {
  return cpu_copy(b, dst, src, bytes, "copy_d2d");
}

static int cpu_memset0(zp_backend* b, void* dst, size_t bytes) {
  ZP_NEED_B();
  if (bytes == 0) return ZP_OK;
  ZP_REQ(dst, "cpu backend: memset0: NULL pointer");
  memset(dst, 0, bytes);
  return ZP_OK;
}

static int cpu_synchronize(zp_backend* b) {
  ZP_NEED_B();
  return ZP_OK;
}

/* ---- dtype conversion, accumulate, fill, scale, sumsq ---- */

#define ZP_EW_MIN 65536 /* elementwise loops below this run on one thread */
/* loops over i in [0, nn): the caller names its element count `nn` (ptrdiff_t) */
#define ZP_EW_FOR()                                                  \
  _Pragma("omp parallel for schedule(static) if (nn > ZP_EW_MIN)") \
  for (ptrdiff_t i = 0; i < nn; i++)

static inline float ld_f32(const void* p, ptrdiff_t i) { return ((const float*)p)[i]; }
static inline double ld_f64(const void* p, ptrdiff_t i) { return ((const double*)p)[i]; }
static inline float ld_bf16(const void* p, ptrdiff_t i) {
  return zp_bf16_to_f32(((const uint16_t*)p)[i]);
}
static inline void st_f32(void* p, ptrdiff_t i, double v) { ((float*)p)[i] = (float)v; }
static inline void st_f32f(void* p, ptrdiff_t i, float v) { ((float*)p)[i] = v; }
static inline void st_f64(void* p, ptrdiff_t i, double v) { ((double*)p)[i] = v; }
static inline void st_bf16(void* p, ptrdiff_t i, double v) {
  ((uint16_t*)p)[i] = zp_f64_to_bf16(v);
}
static inline void st_bf16f(void* p, ptrdiff_t i, float v) {
  ((uint16_t*)p)[i] = zp_f32_to_bf16(v);
}

static int cpu_cast(zp_backend* b, void* dst, zp_dtype dt, const void* src, zp_dtype st,
                    size_t n) {
  ZP_NEED_B();
  if (n == 0) return ZP_OK;
  ZP_REQ(dst && src, "cpu backend: cast: NULL pointer");
  if (dt == st) {
    if (dst != src) memmove(dst, src, n * zp_dtype_size(dt));
    return ZP_OK;
  }
  ZP_REQ(zp_is_float(dt) && zp_is_float(st), "cpu backend: cast %s -> %s not supported",
         zp_cpu_dtype_name(st), zp_cpu_dtype_name(dt));
  const ptrdiff_t nn = (ptrdiff_t)n;
#define ZP_CAST(LD, ST) \
  ZP_EW_FOR() { ST(dst, i, LD(src, i)); }
  if (st == ZP_F64) {
    if (dt == ZP_F32) ZP_CAST(ld_f64, st_f32)
    else ZP_CAST(ld_f64, st_bf16)
  } else if (st == ZP_F32) {
    if (dt == ZP_F64) ZP_CAST(ld_f32, st_f64)
    else ZP_CAST(ld_f32, st_bf16f)
  } else {
    if (dt == ZP_F32) ZP_CAST(ld_bf16, st_f32f)
    else ZP_CAST(ld_bf16, st_f64)
  }
#undef ZP_CAST
  return ZP_OK;
}

static int cpu_accumulate(zp_backend* b, void* dst, zp_dtype dt, const void* src, zp_dtype st,
                          size_t n, float scale) {
  ZP_NEED_B();
  if (n == 0) return ZP_OK;
  ZP_REQ(dst && src, "cpu backend: accumulate: NULL pointer");
  ZP_REQ(zp_is_float(dt) && zp_is_float(st), "cpu backend: accumulate %s += %s not supported",
         zp_cpu_dtype_name(dt), zp_cpu_dtype_name(st));
  const ptrdiff_t nn = (ptrdiff_t)n;
  const double sd = (double)scale;
#define ZP_ACC(CT, LDD, LDS, ST) \
  ZP_EW_FOR() { ST(dst, i, (CT)LDD(dst, i) + (CT)scale * (CT)LDS(src, i)); }
#define ZP_ACCD(LDD, LDS, ST) \
  ZP_EW_FOR() { ST(dst, i, (double)LDD(dst, i) + sd * (double)LDS(src, i)); }
  switch (dt) {
    case ZP_F32:
      if (st == ZP_F32) ZP_ACC(float, ld_f32, ld_f32, st_f32f)
      else if (st == ZP_BF16) ZP_ACC(float, ld_f32, ld_bf16, st_f32f)
      else ZP_ACCD(ld_f32, ld_f64, st_f32)
      break;
    case ZP_F64:
      if (st == ZP_F32) ZP_ACCD(ld_f64, ld_f32, st_f64)
      else if (st == ZP_BF16) ZP_ACCD(ld_f64, ld_bf16, st_f64)
      else ZP_ACCD(ld_f64, ld_f64, st_f64)
      break;
    default: /* BF16 */
      if (st == ZP_F32) ZP_ACCD(ld_bf16, ld_f32, st_bf16)
      else if (st == ZP_BF16) ZP_ACCD(ld_bf16, ld_bf16, st_bf16)
      else ZP_ACCD(ld_bf16, ld_f64, st_bf16)
      break;
  }
#undef ZP_ACC
#undef ZP_ACCD
  return ZP_OK;
}

/* Float dtypes get the value rounded once. Integer dtypes (I32, U16) get it truncated and
 * clamped; a NaN fills them with all-ones bytes (-1 / 0xffff), the integer poison pattern. */
static int cpu_fill(zp_backend* b, void* dst, zp_dtype dt, size_t n, double value) {
  ZP_NEED_B();
  if (n == 0) return ZP_OK;
  ZP_REQ(dst, "cpu backend: fill: NULL pointer");
  const ptrdiff_t nn = (ptrdiff_t)n;
  switch (dt) {
    case ZP_F32: {
      const float v = (float)value;
      float* d = (float*)dst;
      ZP_EW_FOR() d[i] = v;
      break;
    }
    case ZP_F64: {
      double* d = (double*)dst;
      ZP_EW_FOR() d[i] = value;
      break;
    }
    case ZP_BF16: {
      const uint16_t v = zp_f64_to_bf16(value);
      uint16_t* d = (uint16_t*)dst;
      ZP_EW_FOR() d[i] = v;
      break;
    }
    case ZP_I32: {
      int32_t v = -1;
      if (!isnan(value))
        v = value >= 2147483647.0 ? INT32_MAX : value <= -2147483648.0 ? INT32_MIN : (int32_t)value;
      int32_t* d = (int32_t*)dst;
      ZP_EW_FOR() d[i] = v;
      break;
    }
    case ZP_U16: {
      uint16_t v = 0xffff;
      if (!isnan(value)) v = value >= 65535.0 ? 0xffff : value <= 0.0 ? 0 : (uint16_t)value;
      uint16_t* d = (uint16_t*)dst;
      ZP_EW_FOR() d[i] = v;
      break;
    }
    default:
      return zp_cpu_fail(b, ZP_E_INVALID, "cpu backend: fill: unknown dtype %d", (int)dt);
  }
  return ZP_OK;
}

static int cpu_scale(zp_backend* b, void* x, zp_dtype dt, size_t n, float s) {
  ZP_NEED_B();
  if (n == 0) return ZP_OK;
  ZP_REQ(x, "cpu backend: scale: NULL pointer");
  ZP_REQ(zp_is_float(dt), "cpu backend: scale: dtype %s not supported", zp_cpu_dtype_name(dt));
  const ptrdiff_t nn = (ptrdiff_t)n;
  if (dt == ZP_F32) {
    float* d = (float*)x;
    ZP_EW_FOR() d[i] *= s;
  } else if (dt == ZP_F64) {
    double* d = (double*)x;
    const double sd = s;
    ZP_EW_FOR() d[i] *= sd;
  } else {
    const double sd = s;
    ZP_EW_FOR() st_bf16(x, i, (double)ld_bf16(x, i) * sd);
  }
  return ZP_OK;
}

enum { ZP_SUMSQ_MAXCHUNKS = 256, ZP_SUMSQ_MINCHUNK = 8192 };

static double zp_sumsq_range(const void* x, zp_dtype dt, size_t lo, size_t hi) {
  double s[4] = {0, 0, 0, 0};
  size_t i = lo;
#define ZP_SQ(LD)                                              \
  for (; i + 4 <= hi; i += 4)                                  \
    for (int l = 0; l < 4; l++) {                              \
      const double v = (double)LD(x, (ptrdiff_t)(i + l));      \
      s[l] += v * v;                                           \
    }                                                          \
  for (; i < hi; i++) {                                        \
    const double v = (double)LD(x, (ptrdiff_t)i);              \
    s[0] += v * v;                                             \
  }
  if (dt == ZP_F32) {
    ZP_SQ(ld_f32)
  } else if (dt == ZP_F64) {
    ZP_SQ(ld_f64)
  } else {
    ZP_SQ(ld_bf16)
  }
#undef ZP_SQ
  return (s[0] + s[1]) + (s[2] + s[3]);
}

static int cpu_adamw(zp_backend* b, void* param, zp_dtype pdt, float* master, const void* grad,
                     zp_dtype gdt, float* m, float* v, size_t n, float lr, float beta1,
                     float beta2, float eps, float weight_decay, float grad_scale, int step_t);
/* ABI 1.4: one call for a range's pieces; here one cpu_adamw per piece (the same bits) */
static int cpu_adamw_pieces(zp_backend* b, void* param, zp_dtype pdt, float* master,
                            const void* grad, zp_dtype gdt, float* m, float* v, int n_pieces,
                            const uint64_t* piece_end, const float* piece_wd, float lr,
                            float beta1, float beta2, float eps, float grad_scale, int step_t) {
  ZP_NEED_BQ();
  ZP_REQ(n_pieces >= 0 && (n_pieces == 0 || (piece_end && piece_wd)),
         "cpu backend: adamw_pieces: %d pieces without their table", n_pieces);
  const size_t gs = zp_dtype_size(gdt), ps = zp_dtype_size(pdt);
  const int self = param == (void*)master; /* fp32 training: the parameter is the master */
  uint64_t pos = 0;
  for (int k = 0; k < n_pieces; k++) {
    ZP_REQ(piece_end[k] > pos, "cpu backend: adamw_pieces: piece %d ends at %llu, not after %llu", k,
           (unsigned long long)piece_end[k], (unsigned long long)pos);
    void* p = !param ? NULL : self ? (void*)(master + pos) : (char*)param + pos * ps;
    int rc = cpu_adamw(b, p, pdt, master + pos, (const char*)grad + pos * gs, gdt, m + pos, v + pos,
                       (size_t)(piece_end[k] - pos), lr, beta1, beta2, eps, piece_wd[k], grad_scale, step_t);
    if (rc) return rc;
    pos = piece_end[k];
  }
  return ZP_OK;
}

static int cpu_sumsq(zp_backend* b, double* out_host, const void* x, zp_dtype dt, size_t n) {
  ZP_NEED_B();
  ZP_REQ(out_host, "cpu backend: sumsq: out is NULL");
  *out_host = 0;
  if (n == 0) return ZP_OK;
  ZP_REQ(x, "cpu backend: sumsq: NULL pointer");
  ZP_REQ(zp_is_float(dt), "cpu backend: sumsq: dtype %s not supported", zp_cpu_dtype_name(dt));
  /* chunking depends on n only, so the summation order is fixed */
  size_t chunk = (n + ZP_SUMSQ_MAXCHUNKS - 1) / ZP_SUMSQ_MAXCHUNKS;
  if (chunk < ZP_SUMSQ_MINCHUNK) chunk = ZP_SUMSQ_MINCHUNK;
  const int nch = (int)((n + chunk - 1) / chunk);
  double part[ZP_SUMSQ_MAXCHUNKS];
#pragma omp parallel for schedule(static) if (nch > 1)
  for (int c = 0; c < nch; c++) {
    const size_t lo = (size_t)c * chunk, hi = lo + chunk < n ? lo + chunk : n;
    part[c] = zp_sumsq_range(x, dt, lo, hi);
  }
  double s = 0;
  for (int c = 0; c < nch; c++) s += part[c];
  *out_host = s;
  return ZP_OK;
}

/* ABI 1.8: several sums of squares in one call; here one cpu_sumsq per tensor (the same bits;
 * the CPU backend's ops are synchronous, so there is nothing to wait for once) */
static int cpu_sumsq_many(zp_backend* b, int count, const void* const* xs, const zp_dtype* dts,
                          const size_t* ns, double* out_host) {
  ZP_NEED_B();
  ZP_REQ(count >= 0, "cpu backend: sumsq_many: negative count %d", count);
  if (count == 0) return ZP_OK;
  ZP_REQ(out_host, "cpu backend: sumsq_many: out is NULL");
  ZP_REQ(xs && dts && ns, "cpu backend: sumsq_many: %d tensors without their tables", count);
  for (int i = 0; i < count; i++) {
    int rc = cpu_sumsq(b, &out_host[i], xs[i], dts[i], ns[i]);
    if (rc) return rc;
  }
  return ZP_OK;
}

/* ABI 1.9: sums of squares started early. A start on the side stream is queued like its AdamW
 * (it runs when its ticket is waited for); elsewhere it runs at once. collect reads the slots as
 * they are and resets them to NaN, so a start whose ticket was not waited for (or a slot never
 * started) reads NaN here, where a GPU would race. */
static int cpu_sumsq_start(zp_backend* b, int slot, const void* x, zp_dtype dt, size_t n) {
  ZP_NEED_BQ();
  ZP_REQ(slot >= 0 && slot < ZP_SUMSQ_START_SLOTS, "cpu backend: sumsq_start: slot %d out of range [0, %d)", slot,
         ZP_SUMSQ_START_SLOTS);
  ZP_REQ(n == 0 || x, "cpu backend: sumsq_start: NULL pointer");
  ZP_REQ(zp_is_float(dt), "cpu backend: sumsq_start: dtype %s not supported", zp_cpu_dtype_name(dt));
  if (b->in_side && !zp_cpu_side_running) {
    cpu_side_op op;
    memset(&op, 0, sizeof op);
    op.kind = 2;
    op.slot = slot;
    op.grad = x;
    op.gdt = dt;
    op.n = n;
    return cpu_side_push(b, &op);
  }
  return cpu_sumsq(b, &b->ss_slots[slot], x, dt, n);
}
static int cpu_sumsq_collect(zp_backend* b, int count, double* out_host) {
  ZP_NEED_B();
  ZP_REQ(count >= 0 && count <= ZP_SUMSQ_START_SLOTS, "cpu backend: sumsq_collect: count %d out of range [0, %d]", count,
         ZP_SUMSQ_START_SLOTS);
  ZP_REQ(count == 0 || out_host, "cpu backend: sumsq_collect: out is NULL");
  for (int i = 0; i < count; i++) out_host[i] = b->ss_slots[i];
  for (int i = 0; i < ZP_SUMSQ_START_SLOTS; i++) b->ss_slots[i] = NAN;
  return ZP_OK;
}

/* ---- model ops: validation + dispatch ---- */

static int zp_check_ids(zp_backend* b, const int32_t* ids, size_t n, const char* op) {
  for (size_t i = 0; i < n; i++)
    if (ids[i] < 0)
      return zp_cpu_fail(b, ZP_E_INVALID, "cpu backend: %s: token id %d at %zu is negative", op,
                         (int)ids[i], i);
  return ZP_OK;
}

static int cpu_encoder_fwd(zp_backend* b, void* out, const int32_t* inp, const void* wte,
                           const void* wpe, int B, int T, int C) {
  ZP_NEED_B();
  ZP_REQ(B >= 0 && T >= 0 && C >= 0, "cpu backend: encoder_fwd: bad shape B=%d T=%d C=%d", B, T,
         C);
  if ((size_t)B * T * C == 0) return ZP_OK;
  ZP_REQ(out && inp && wte && wpe, "cpu backend: encoder_fwd: NULL pointer");
  int st = zp_check_ids(b, inp, (size_t)B * T, "encoder_fwd");
  if (st) return st;
  return ZP_DISPATCH(encoder_fwd, out, inp, wte, wpe, B, T, C);
}

static int cpu_encoder_bwd(zp_backend* b, void* dwte, void* dwpe, const void* dout,
                           const int32_t* inp, int B, int T, int C) {
  ZP_NEED_B();
  ZP_REQ(B >= 0 && T >= 0 && C >= 0, "cpu backend: encoder_bwd: bad shape B=%d T=%d C=%d", B, T,
         C);
  if ((size_t)B * T * C == 0 || (!dwte && !dwpe)) return ZP_OK;
  ZP_REQ(dout && inp, "cpu backend: encoder_bwd: NULL pointer");
  ZP_REQ((uint64_t)B * (uint64_t)T < 0xffffffffull, "cpu backend: encoder_bwd: B*T too large");
  int st = zp_check_ids(b, inp, (size_t)B * T, "encoder_bwd");
  if (st) return st;
  return ZP_DISPATCH(encoder_bwd, dwte, dwpe, dout, inp, B, T, C);
}

static int cpu_layernorm_fwd(zp_backend* b, void* out, float* mean, float* rstd, const void* inp,
                             const void* w, const void* bias, int N, int C) {
  ZP_NEED_B();
  ZP_REQ(N >= 0 && C > 0, "cpu backend: layernorm_fwd: bad shape N=%d C=%d", N, C);
  if (N == 0) return ZP_OK;
  ZP_REQ(out && inp && w, "cpu backend: layernorm_fwd: NULL pointer");
  return ZP_DISPATCH(layernorm_fwd, out, mean, rstd, inp, w, bias, N, C);
}

/* grad_overwrite (1.8): the parameter gradients (n elements each, NULL: none) start from zero,
 * so that the accumulating kernels give exactly what accumulating into a zeroed buffer gives */
static void cpu_pgrad_reset(zp_backend* b, void* dw, size_t nw, void* dbias, size_t nb) {
  if (!b->grad_overwrite) return;
  if (dw) memset(dw, 0, nw * zp_dtype_size(b->ct));
  if (dbias) memset(dbias, 0, nb * zp_dtype_size(b->ct));
}
static int cpu_grad_overwrite(zp_backend* b, int on) {
  ZP_NEED_B();
  b->grad_overwrite = on != 0;
  return ZP_OK;
}

static int cpu_layernorm_bwd(zp_backend* b, void* dinp, void* dw, void* dbias, const void* dout,
                             const void* inp, const void* w, const float* mean,
                             const float* rstd, int N, int C) {
  ZP_NEED_B();
  ZP_REQ(N >= 0 && C > 0, "cpu backend: layernorm_bwd: bad shape N=%d C=%d", N, C);
  cpu_pgrad_reset(b, dw, (size_t)C, dbias, (size_t)C);
  if (N == 0 || (!dinp && !dw && !dbias)) return ZP_OK;
  ZP_REQ(dout && inp && w && mean && rstd, "cpu backend: layernorm_bwd: NULL pointer");
  return ZP_DISPATCH(layernorm_bwd, dinp, dw, dbias, dout, inp, w, mean, rstd, N, C);
}

static int cpu_matmul_fwd(zp_backend* b, void* out, const void* inp, const void* w,
                          const void* bias, int N, int IC, int OC) {
  ZP_NEED_B();
  ZP_REQ(N >= 0 && IC > 0 && OC > 0, "cpu backend: matmul_fwd: bad shape N=%d IC=%d OC=%d", N,
         IC, OC);
  if (N == 0) return ZP_OK;
  ZP_REQ(out && inp && w, "cpu backend: matmul_fwd: NULL pointer");
  return ZP_DISPATCH(matmul_fwd, out, inp, w, bias, N, IC, OC);
}

static int cpu_matmul_bwd(zp_backend* b, void* dinp, void* dw, void* dbias, const void* dout,
                          const void* inp, const void* w, int N, int IC, int OC) {
  ZP_NEED_B();
  ZP_REQ(N >= 0 && IC > 0 && OC > 0, "cpu backend: matmul_bwd: bad shape N=%d IC=%d OC=%d", N,
         IC, OC);
  cpu_pgrad_reset(b, dw, (size_t)OC * (size_t)IC, dbias, (size_t)OC);
  if (N == 0) return ZP_OK;
  ZP_REQ(dout, "cpu backend: matmul_bwd: dout is NULL");
  ZP_REQ(!dinp || w, "cpu backend: matmul_bwd: dinp needs w");
  ZP_REQ(!dw || inp, "cpu backend: matmul_bwd: dw needs inp");
  return ZP_DISPATCH(matmul_bwd, dinp, dw, dbias, dout, inp, w, N, IC, OC);
}

static size_t cpu_attention_aux_bytes(zp_backend* b, int B, int T, int C, int NH) {
  (void)C;
  if (!b || B < 0 || T < 0 || NH < 0) return 0;
  return (size_t)B * (size_t)NH * (size_t)T * (size_t)T * zp_dtype_size(b->ct);
}

static int cpu_attention_fwd(zp_backend* b, void* out, void* aux, const void* qkv, int B, int T,
                             int C, int NH) {
  ZP_NEED_B();
  ZP_REQ(B >= 0 && T >= 0 && C > 0 && NH > 0 && C % NH == 0,
         "cpu backend: attention_fwd: bad shape B=%d T=%d C=%d NH=%d", B, T, C, NH);
  if ((size_t)B * T == 0) return ZP_OK;
  ZP_REQ(out && aux && qkv, "cpu backend: attention_fwd: NULL pointer");
  return ZP_DISPATCH(attention_fwd, out, aux, qkv, B, T, C, NH);
}

static int cpu_attention_bwd(zp_backend* b, void* dqkv, const void* dout, const void* qkv,
                             const void* out, const void* aux, int B, int T, int C, int NH) {
  ZP_NEED_B();
  ZP_REQ(B >= 0 && T >= 0 && C > 0 && NH > 0 && C % NH == 0,
         "cpu backend: attention_bwd: bad shape B=%d T=%d C=%d NH=%d", B, T, C, NH);
  if ((size_t)B * T == 0) return ZP_OK;
  ZP_REQ(dqkv && dout && qkv && aux, "cpu backend: attention_bwd: NULL pointer");
  return ZP_DISPATCH(attention_bwd, dqkv, dout, qkv, out, aux, B, T, C, NH);
}

static int cpu_gelu_fwd(zp_backend* b, void* out, const void* inp, size_t n) {
  ZP_NEED_B();
  if (n == 0) return ZP_OK;
  ZP_REQ(out && inp, "cpu backend: gelu_fwd: NULL pointer");
  return ZP_DISPATCH(gelu_fwd, out, inp, n);
}

static int cpu_gelu_bwd(zp_backend* b, void* dinp, const void* inp, const void* dout, size_t n) {
  ZP_NEED_B();
  if (n == 0) return ZP_OK;
  ZP_REQ(dinp && inp && dout, "cpu backend: gelu_bwd: NULL pointer");
  return ZP_DISPATCH(gelu_bwd, dinp, inp, dout, n);
}

static int cpu_residual_fwd(zp_backend* b, void* out, const void* a, const void* c, size_t n) {
  ZP_NEED_B();
  if (n == 0) return ZP_OK;
  ZP_REQ(out && a && c, "cpu backend: residual_fwd: NULL pointer");
  return ZP_DISPATCH(residual_fwd, out, a, c, n);
}

static int cpu_softmax_xent(zp_backend* b, float* losses, void* logits, const int32_t* targets,
                            int N, int V, int Vp, float dloss) {
  ZP_NEED_B();
  ZP_REQ(N >= 0 && V > 0 && Vp >= V, "cpu backend: softmax_xent: bad shape N=%d V=%d Vp=%d", N,
         V, Vp);
  if (N == 0) return ZP_OK;
  ZP_REQ(logits && targets, "cpu backend: softmax_xent: NULL pointer");
  for (int n = 0; n < N; n++)
    ZP_REQ(targets[n] < V, "cpu backend: softmax_xent: target %d at row %d is >= V=%d",
           (int)targets[n], n, V);
  return ZP_DISPATCH(softmax_xent, losses, logits, targets, N, V, Vp, dloss);
}

/* ---- tensor parallelism: masked embedding, vocab-parallel cross-entropy ---- */

static int cpu_encoder_masked_fwd(zp_backend* b, void* out, const int32_t* ids, const void* wte,
                                  const void* wpe, int B, int T, int C) {
  ZP_NEED_B();
  ZP_REQ(B >= 0 && T >= 0 && C >= 0, "cpu backend: encoder_masked_fwd: bad shape B=%d T=%d C=%d",
         B, T, C);
  if ((size_t)B * T * C == 0) return ZP_OK;
  ZP_REQ(out && ids && wte, "cpu backend: encoder_masked_fwd: NULL pointer");
  return ZP_DISPATCH(encoder_fwd_masked, out, ids, wte, wpe, B, T, C);
}

static int cpu_encoder_masked_bwd(zp_backend* b, void* dwte, void* dwpe, const void* dout,
                                  const int32_t* ids, int B, int T, int C) {
  ZP_NEED_B();
  ZP_REQ(B >= 0 && T >= 0 && C >= 0, "cpu backend: encoder_masked_bwd: bad shape B=%d T=%d C=%d",
         B, T, C);
  if ((size_t)B * T * C == 0 || (!dwte && !dwpe)) return ZP_OK;
  ZP_REQ(dout && ids, "cpu backend: encoder_masked_bwd: NULL pointer");
  ZP_REQ((uint64_t)B * (uint64_t)T < 0xffffffffull, "cpu backend: encoder_masked_bwd: B*T too large");
  return ZP_DISPATCH(encoder_bwd_masked, dwte, dwpe, dout, ids, B, T, C);
}

static int cpu_softmax_xent_vp(zp_backend* b, int phase, float* losses, void* logits, void* stats,
                               const int32_t* targets, int N, int Vl, int nreal, int v0,
                               float dloss) {
  ZP_NEED_B();
  ZP_REQ(phase >= 0 && phase <= 2, "cpu backend: softmax_xent_vp: phase %d not 0, 1 or 2", phase);
  ZP_REQ(N >= 0 && Vl > 0 && nreal >= 0 && nreal <= Vl && v0 >= 0,
         "cpu backend: softmax_xent_vp: bad shape N=%d Vl=%d nreal=%d v0=%d", N, Vl, nreal, v0);
  if (N == 0) return ZP_OK;
  ZP_REQ(logits && stats && targets, "cpu backend: softmax_xent_vp: NULL pointer");
  return ZP_DISPATCH(softmax_xent_vp, phase, losses, logits, stats, targets, N, Vl, nreal, v0, dloss);
}

/* ---- AdamW ---- */

static int cpu_adamw(zp_backend* b, void* param, zp_dtype pdt, float* master, const void* grad,
                     zp_dtype gdt, float* m, float* v, size_t n, float lr, float beta1,
                     float beta2, float eps, float weight_decay, float grad_scale, int step_t) {
  ZP_NEED_BQ();
  ZP_REQ(step_t >= 1, "cpu backend: adamw: step_t %d < 1", step_t);
  if (n == 0) return ZP_OK;
  ZP_REQ(master && grad && m && v, "cpu backend: adamw: NULL pointer");
  ZP_REQ(zp_is_float(gdt), "cpu backend: adamw: grad dtype %s not supported",
         zp_cpu_dtype_name(gdt));
  const int write_param = param != NULL && param != (void*)master;
  ZP_REQ(!param || write_param || pdt == ZP_F32,
         "cpu backend: adamw: param == master needs pdt f32 (got %s)", zp_cpu_dtype_name(pdt));
  ZP_REQ(!write_param || zp_is_float(pdt), "cpu backend: adamw: param dtype %s not supported",
         zp_cpu_dtype_name(pdt));
  if (b->in_side && !zp_cpu_side_running) { /* side stream (1.7): runs when its ticket is waited for */
    cpu_side_op o = {0, 0, param, pdt, gdt, master, m, v, grad, n, lr, beta1, beta2, eps, weight_decay, grad_scale,
                     step_t, 0};
    return cpu_side_push(b, &o);
  }
  return cpu_adamw_now(b, param, pdt, master, grad, gdt, m, v, n, lr, beta1, beta2, eps, weight_decay, grad_scale,
                       step_t);
}
/* the update itself; cpu_adamw checked the arguments (n > 0) before running or queueing it */
static int cpu_adamw_now(zp_backend* b, void* param, zp_dtype pdt, float* master, const void* grad,
                         zp_dtype gdt, float* m, float* v, size_t n, float lr, float beta1,
                         float beta2, float eps, float weight_decay, float grad_scale, int step_t) {
  const int write_param = param != NULL && param != (void*)master;
  if (gdt != ZP_F64) {
    /* f32/bf16 grads: the vectorised kernel (adamw_cpu.c; bitwise equal to the loop below),
     * param written in the same pass unless it is f64 (then cast afterwards) */
    const zp_adamw_hparams hp = {lr, beta1, beta2, eps, weight_decay, grad_scale, step_t};
    const int fused = write_param && pdt != ZP_F64;
    const int rc = zp_adamw_cpu(fused ? param : NULL, pdt, master, grad, gdt, m, v, n, &hp, 0);
    if (rc) {
      const char* ie = zp_adamw_isa_error(ZP_ISA_AUTO);
      return zp_cpu_fail(b, rc, "cpu backend: adamw: %s", ie ? ie : "kernel refused its arguments");
    }
    if (write_param && !fused) return cpu_cast(b, param, pdt, master, ZP_F32, n);
    return ZP_OK;
  }
  /* f64 grads: the reference loop (fp32 arithmetic on the grad rounded once to fp32) */
  const float bc1 = (float)(1.0 - pow((double)beta1, (double)step_t));
  const float bc2 = (float)(1.0 - pow((double)beta2, (double)step_t));
  const float omb1 = 1.0f - beta1, omb2 = 1.0f - beta2;
  const ptrdiff_t nn = (ptrdiff_t)n;
#define ZP_ADAMW(GLOAD)                                                            \
  ZP_EW_FOR() {                                                                  \
    const float g = GLOAD;                                                         \
    const float mi = beta1 * m[i] + omb1 * g;                                      \
    const float vi = beta2 * v[i] + omb2 * g * g;                                  \
    m[i] = mi;                                                                     \
    v[i] = vi;                                                                     \
    const float mhat = mi / bc1, vhat = vi / bc2;                                  \
    float p = master[i];                                                           \
    p -= lr * (mhat / (sqrtf(vhat) + eps) + weight_decay * p);                     \
    master[i] = p;                                                                 \
  }
  ZP_ADAMW((float)(ld_f64(grad, i) * (double)grad_scale))
#undef ZP_ADAMW
  if (write_param) return cpu_cast(b, param, pdt, master, ZP_F32, n);
  return ZP_OK;
}

static const zp_backend_ops zp_cpu_ops = {
    .struct_size = sizeof(zp_backend_ops),
    .create = cpu_create,
    .destroy = cpu_destroy,
    .info = cpu_info,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .copy_h2d = cpu_copy_h2d,
    .copy_d2h = cpu_copy_d2h,
    .copy_d2d = cpu_copy_d2d,
    .memset0 = cpu_memset0,
    .synchronize = cpu_synchronize,
    .cast = cpu_cast,
    .accumulate = cpu_accumulate,
    .fill = cpu_fill,
    .encoder_fwd = cpu_encoder_fwd,
    .encoder_bwd = cpu_encoder_bwd,
    .layernorm_fwd = cpu_layernorm_fwd,
    .layernorm_bwd = cpu_layernorm_bwd,
    .matmul_fwd = cpu_matmul_fwd,
    .matmul_bwd = cpu_matmul_bwd,
    .attention_aux_bytes = cpu_attention_aux_bytes,
    .attention_fwd = cpu_attention_fwd,
    .attention_bwd = cpu_attention_bwd,
    .gelu_fwd = cpu_gelu_fwd,
    .gelu_bwd = cpu_gelu_bwd,
    .residual_fwd = cpu_residual_fwd,
    .softmax_xent = cpu_softmax_xent,
    .adamw = cpu_adamw,
    .adamw_pieces = cpu_adamw_pieces,
    .sumsq = cpu_sumsq,
    .scale = cpu_scale,
    .encoder_masked_fwd = cpu_encoder_masked_fwd,
    .encoder_masked_bwd = cpu_encoder_masked_bwd,
    .softmax_xent_vp = cpu_softmax_xent_vp,
    .timer_mark = cpu_timer_mark,
    .timer_ms = cpu_timer_ms,
    .copy_async = cpu_copy_async,
    .copy_wait = cpu_copy_wait,
    .side_begin = cpu_side_begin,
    .side_end = cpu_side_end,
    .grad_overwrite = cpu_grad_overwrite,
    .sumsq_many = cpu_sumsq_many,
    .sumsq_start = cpu_sumsq_start,
    .sumsq_collect = cpu_sumsq_collect,
};

const zp_backend_ops* zp_cpu_backend_ops(void) { return &zp_cpu_ops; }
