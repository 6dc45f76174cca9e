/* comm_shm.c: the CPU communicator: collectives, rendezvous send/recv and split over one POSIX
 * shared-memory segment shared by the ranks (processes) of one host; plus the one-rank
 * communicator and zp_comm_from_env.
 *
 * Segment layout (offsets stored in the header by the creator; every rank maps all of it):
 *   header | rank table [W] (pid, state, heartbeat counter + time) | slot 0 .. slot 7
 *   slot = ctrl (state, refs, members, futex word) | rank lines [W] (barrier epoch, op
 *          descriptor) | pair lines [W][W] (p2p counters) | staging [W][stage_bytes]
 * Slot 0 is the world communicator; split() claims a free slot for each new sub-group.
 *
 * Invariants:
 * - Before the first barrier of an operation a rank writes only its own staging region; every
 *   operation ends with a barrier after which nobody reads any staging region; p2p data goes
 *   through the sender's region. Hence concurrent p2p between some ranks and a collective that
 *   others already entered never touch the same bytes.
 * - Barriers are per-rank monotonic epochs (so the missing rank can be named); waiters spin
 *   briefly, then sleep on the slot's futex word, which every arrival bumps.
 * - Reductions: rank r reduces chunk r of each piece, reading contributions in rank order 0..N-1
 *   (float accumulation for F32/BF16, double for F64); results are copied from one place by all
 *   ranks, so they are bitwise identical everywhere and independent of the staging size.
 * - Each operation's descriptor (kind, sequence number, count, dtype, op, root) is checked
 *   against all ranks' after its first barrier; a mismatch fails instead of corrupting.
 * - Any failure marks the segment aborted (first message wins) and wakes all waiters; every
 *   rank then fails fast naming the original failure. Nothing here exits or aborts.
 * - Liveness while waiting: a peer whose pid is gone (or a zombie, or reused: start time
 *   differs) or that marked itself failed/left -> ZP_E_COMM; a heartbeat older than
 *   min(timeout, 3 s) or the deadline passing -> ZP_E_TIMEOUT. Heartbeats come from one thread
 *   per process (every 100 ms, CLOCK_MONOTONIC stamp), frozen by SIGSTOP like the rank itself. */
#define _GNU_SOURCE
#include "comm.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "bf16.h"
#include "bootstrap.h"

#define SHM_MAGIC 0x7a70636f6d6d3031ull /* "zpcomm01" */
#define SHM_VERSION 1u
#define CL 64
#define PAGE 4096
#define HB_INTERVAL_S 0.1
#define CHECK_INTERVAL_S 0.1

enum { RS_NONE = 0, RS_ATTACHED = 1, RS_LEFT = 2, RS_FAILED = 3 };
enum { SLOT_FREE = 0, SLOT_CLAIMED = 1, SLOT_ACTIVE = 2 };
enum { OP_ALLREDUCE = 1, OP_REDUCE_SCATTER, OP_ALLGATHER, OP_BROADCAST, OP_BARRIER, OP_SPLIT,
       OP_SEND, OP_RECV };

/* ---------------------------------------------------------------- shared layout ---- */

typedef struct {
  _Atomic int32_t pid;
  _Atomic int32_t state;
  _Atomic uint64_t heartbeat;
  _Atomic int64_t hb_ns; /* CLOCK_MONOTONIC of the last beat */
  uint64_t starttime;    /* /proc/<pid>/stat field 22, 0 if unknown */
  char pad_[CL - 32];
} shm_rankinfo;

typedef struct {
  uint64_t magic;
  uint32_t version;
  int32_t size; /* world size W */
  uint64_t total_bytes;
  uint64_t ranks_off;
  uint64_t slot_off[ZP_SHM_MAX_COMMS];
  uint64_t slot_stage[ZP_SHM_MAX_COMMS]; /* per-rank staging bytes */
  char pad0_[CL];
  _Atomic int32_t aborted; /* 0 no, 1 being written, 2 published */
  int32_t abort_status;
  int32_t abort_rank;
  char abort_msg[ZP_COMM_ERR_LEN];
} shm_header;

typedef struct {
  _Atomic int32_t state;
  _Atomic int32_t refs;
  int32_t size;
  int32_t pad0_;
  uint64_t generation;
  char pad1_[CL - 24];
  _Atomic uint32_t wake_seq; /* futex word */
  _Atomic int32_t nwaiters;
  char pad2_[CL - 8];
  int32_t members[ZP_SHM_MAX_RANKS]; /* world rank of each member */
} slot_ctrl;

typedef struct {
  _Atomic uint64_t epoch;
  uint64_t d_seq, d_count;
  int32_t d_kind, d_dtype, d_op, d_root;
  char pad_[CL - 40];
} slot_rank;

typedef struct {
  _Atomic uint64_t ready; /* pieces published by the sender */
  _Atomic uint64_t taken; /* pieces consumed by the receiver */
  uint64_t msg_bytes, msg_seq, piece_bytes;
  char pad_[CL - 40];
} shm_pair;

_Static_assert(sizeof(shm_rankinfo) == CL, "rankinfo line");
_Static_assert(sizeof(slot_rank) == CL, "slot rank line");
_Static_assert(sizeof(shm_pair) == CL, "pair line");

static size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

/* offsets inside a slot, for world size W */
static size_t slot_ctrl_bytes(void) { return round_up(sizeof(slot_ctrl), CL); }
static size_t slot_ranks_rel(void) { return slot_ctrl_bytes(); }
static size_t slot_pairs_rel(int W) { return slot_ranks_rel() + (size_t)W * CL; }
static size_t slot_stage_rel(int W) {
  return round_up(slot_pairs_rel(W) + (size_t)W * (size_t)W * CL, PAGE);
}
static size_t slot_bytes(int W, size_t stage) {
  return round_up(slot_stage_rel(W) + (size_t)W * stage, PAGE);
}

/* ---------------------------------------------------------------- process-local ---- */

typedef struct seg_handle {
  int refs; /* comms of this process using the mapping */
  char name[256];
  unsigned char* base;
  size_t bytes;
  shm_header* hdr;
  shm_rankinfo* ranks;
  int wrank, W;
  double timeout_s, hb_limit_s;
  int spin_max, yield_max;
  pthread_t hb_thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int stop, hb_started;
} seg_handle;

typedef struct shm_comm {
  struct zp_comm base;
  seg_handle* seg;
  int slot;
  slot_ctrl* ctrl;
  slot_rank* rk;
  shm_pair* pairs;
  unsigned char* stage;
  size_t stage_bytes;
  int members[ZP_SHM_MAX_RANKS];
  uint64_t epoch, coll_seq;
  uint64_t send_seq[ZP_SHM_MAX_RANKS], recv_seq[ZP_SHM_MAX_RANKS];
  uint64_t sent_pieces[ZP_SHM_MAX_RANKS], recvd_pieces[ZP_SHM_MAX_RANKS];
  int failed; /* status of the failure that made this communicator unusable */
} shm_comm;

typedef struct {
  int kind;
  uint64_t seq;
  size_t count;
  zp_dtype dt;
  zp_redop op;
  int root;
  char desc[160];  /* "allreduce #17 (count 4096 f32)" */
  char reach[200]; /* what a waited-for rank did not reach */
} op_ctx;

static const char* dt_name(zp_dtype t) {
  switch (t) {
    case ZP_F32: return "f32";
    case ZP_F64: return "f64";
    case ZP_BF16: return "bf16";
    case ZP_I32: return "i32";
    case ZP_U16: return "u16";
    default: return "?";
  }
}
static const char* op_name(int k) {
  switch (k) {
    case OP_ALLREDUCE: return "allreduce";
    case OP_REDUCE_SCATTER: return "reduce_scatter";
    case OP_ALLGATHER: return "allgather";
    case OP_BROADCAST: return "broadcast";
    case OP_BARRIER: return "barrier";
    case OP_SPLIT: return "split";
    case OP_SEND: return "send";
    case OP_RECV: return "recv";
    default: return "?";
  }
}
static int dt_valid(zp_dtype t) { return t == ZP_F32 || t == ZP_F64 || t == ZP_BF16 || t == ZP_I32 || t == ZP_U16; }

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void set_err(char* err, size_t errlen, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char* err, size_t errlen, const char* fmt, ...) {
  if (!err || !errlen) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

const char* zp_comm_error(const zp_comm* c) { return c ? c->err : "no communicator"; }

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

static void futex_wait(_Atomic uint32_t* addr, uint32_t val, double secs) {
  if (secs < 0.0005) secs = 0.0005;
  struct timespec ts = {(time_t)secs, (long)((secs - (double)(time_t)secs) * 1e9)};
  syscall(SYS_futex, (uint32_t*)addr, FUTEX_WAIT, val, &ts, NULL, 0);
}
static void futex_wake_all(_Atomic uint32_t* addr) {
  syscall(SYS_futex, (uint32_t*)addr, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* ---------------------------------------------------------------- liveness ---- */

/* /proc/<pid>/stat: *state (3rd field) and *start (22nd field). 0 on success. */
static int proc_stat(int pid, char* state, uint64_t* start) {
  char path[64], buf[1024];
  if (pid > 0) snprintf(path, sizeof path, "/proc/%d/stat", pid);
  else snprintf(path, sizeof path, "/proc/self/stat");
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = '\0';
  char* p = strrchr(buf, ')');
  if (!p || p[1] != ' ') return -1;
  p += 2; /* field 3 */
  *state = *p;
  int field = 3;
  while (*p && field < 22) {
    if (*p++ == ' ') field++;
  }
  *start = field == 22 ? strtoull(p, NULL, 10) : 0;
  return 0;
}

/* 1 alive, 0 gone (no such process, a zombie, or the pid now belongs to another process) */
static int pid_alive(int pid, uint64_t starttime) {
  if (pid <= 0) return 1;
  if (kill(pid, 0) != 0 && errno == ESRCH) return 0;
  char st;
  uint64_t start;
  if (proc_stat(pid, &st, &start) != 0) return errno == ENOENT ? 0 : 1;
  if (st == 'Z' || st == 'X' || st == 'x') return 0;
  if (starttime && start && start != starttime) return 0;
  return 1;
}

static void* hb_main(void* arg) {
  seg_handle* s = arg;
  shm_rankinfo* me = &s->ranks[s->wrank];
  pthread_mutex_lock(&s->mu);
  while (!s->stop) {
    atomic_fetch_add(&me->heartbeat, 1);
    atomic_store(&me->hb_ns, now_ns());
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_nsec += (long)(HB_INTERVAL_S * 1e9);
    if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    while (!s->stop && pthread_cond_timedwait(&s->cv, &s->mu, &ts) == 0) {
    }
  }
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

static int hb_start(seg_handle* s) {
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&s->cv, &ca);
  pthread_condattr_destroy(&ca);
  pthread_mutex_init(&s->mu, NULL);
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old); /* signals go to the main thread */
  int rc = pthread_create(&s->hb_thread, NULL, hb_main, s);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) {
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    return rc;
  }
  s->hb_started = 1;
  return 0;
}

static void hb_stop(seg_handle* s) {
  if (!s->hb_started) return;
  pthread_mutex_lock(&s->mu);
  s->stop = 1;
  pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
  pthread_join(s->hb_thread, NULL);
  pthread_cond_destroy(&s->cv);
  pthread_mutex_destroy(&s->mu);
  s->hb_started = 0;
}

static slot_ctrl* slot_at(seg_handle* s, int slot) {
  return (slot_ctrl*)(s->base + s->hdr->slot_off[slot]);
}

static void wake_all_slots(seg_handle* s) {
  for (int i = 0; i < ZP_SHM_MAX_COMMS; i++) {
    slot_ctrl* sc = slot_at(s, i);
    atomic_fetch_add(&sc->wake_seq, 1);
    futex_wake_all(&sc->wake_seq);
  }
}

/* Marks the segment aborted with the first failure's message; wakes every waiter. */
static void seg_abort(seg_handle* s, int status, const char* msg) {
  int32_t expect = 0;
  if (atomic_compare_exchange_strong(&s->hdr->aborted, &expect, 1)) {
    s->hdr->abort_status = status;
    s->hdr->abort_rank = s->wrank;
    snprintf(s->hdr->abort_msg, sizeof s->hdr->abort_msg, "%s", msg);
    atomic_store(&s->hdr->aborted, 2);
  }
  wake_all_slots(s);
}

static void seg_release(seg_handle* s) {
  if (--s->refs > 0) return;
  hb_stop(s);
  shm_rankinfo* me = &s->ranks[s->wrank];
  int32_t st = RS_ATTACHED;
  atomic_compare_exchange_strong(&me->state, &st, RS_LEFT);
  wake_all_slots(s);
  munmap(s->base, s->bytes);
  free(s);
}

/* ---------------------------------------------------------------- failures ---- */

static int comm_fail(shm_comm* c, int status, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
static int comm_fail(shm_comm* c, int status, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->base.err, sizeof c->base.err, fmt, ap);
  va_end(ap);
  c->failed = status;
  seg_abort(c->seg, status, c->base.err);
  int32_t st = RS_ATTACHED;
  atomic_compare_exchange_strong(&c->seg->ranks[c->seg->wrank].state, &st, RS_FAILED);
  return status;
}

/* The segment was aborted by someone: fail with the original message. */
static int comm_fail_aborted(shm_comm* c, const op_ctx* op) {
  shm_header* h = c->seg->hdr;
  int st = h->abort_status ? h->abort_status : ZP_E_COMM;
  if (h->abort_rank == c->seg->wrank) {
    if (!c->base.err[0]) snprintf(c->base.err, sizeof c->base.err, "%s", h->abort_msg);
  } else {
    set_err(c->base.err, sizeof c->base.err, "%s aborted: rank %d reported: %s",
            op ? op->desc : "communicator", h->abort_rank, h->abort_msg);
  }
  c->failed = st;
  return st;
}

static void rank_name(const shm_comm* c, int who, char* buf, size_t len) {
  int w = c->members[who];
  int pid = atomic_load(&c->seg->ranks[w].pid);
  if (c->slot == 0) snprintf(buf, len, "rank %d (pid %d)", who, pid);
  else snprintf(buf, len, "rank %d (world rank %d, pid %d)", who, w, pid);
}

typedef struct {
  _Atomic uint64_t* ctr;
  uint64_t target;
  int who; /* rank in this communicator */
} witem;

/* Liveness of the ranks not yet satisfied. Returns 0 or a failure status (already recorded). */
static int check_peers(shm_comm* c, const op_ctx* op, const witem* it, int n, double waited) {
  seg_handle* s = c->seg;
  char nm[96];
  int64_t tnow = now_ns();
  int stalled = -1, first = -1;
  double stall_s = 0;
  for (int i = 0; i < n; i++) {
    if (atomic_load_explicit(it[i].ctr, memory_order_acquire) >= it[i].target) continue;
    int who = it[i].who, w = c->members[who];
    shm_rankinfo* ri = &s->ranks[w];
    int st = atomic_load(&ri->state);
    if (first < 0) first = i;
    rank_name(c, who, nm, sizeof nm);
    if (st == RS_FAILED)
      return comm_fail(c, ZP_E_COMM, "%s failed (marked itself failed) during %s", nm, op->desc);
    if (st == RS_LEFT)
      return comm_fail(c, ZP_E_COMM, "%s left (destroyed its communicator) before completing %s",
                       nm, op->desc);
    if (!pid_alive(atomic_load(&ri->pid), ri->starttime)) {
      /* it may have completed its part and exited normally */
      if (atomic_load_explicit(it[i].ctr, memory_order_acquire) >= it[i].target) continue;
      return comm_fail(c, ZP_E_COMM, "%s died during %s", nm, op->desc);
    }
    double age = (double)(tnow - atomic_load(&ri->hb_ns)) * 1e-9;
    if (age > stall_s) stall_s = age, stalled = i;
  }
  if (first < 0) return 0;
  if (stalled >= 0 && stall_s > s->hb_limit_s) {
    rank_name(c, it[stalled].who, nm, sizeof nm);
    return comm_fail(c, ZP_E_TIMEOUT,
                     "%s did not reach %s within %.1f s (heartbeat stopped %.1f s ago: hung or "
                     "stopped)",
                     nm, op->reach, waited, stall_s);
  }
  if (waited >= s->timeout_s) {
    int i = stalled >= 0 && stall_s > 5 * HB_INTERVAL_S ? stalled : first;
    rank_name(c, it[i].who, nm, sizeof nm);
    if (i == stalled && stall_s > 5 * HB_INTERVAL_S)
      return comm_fail(c, ZP_E_TIMEOUT,
                       "%s did not reach %s within %.1f s (heartbeat stopped %.1f s ago: hung or "
                       "stopped)",
                       nm, op->reach, waited, stall_s);
    return comm_fail(c, ZP_E_TIMEOUT,
                     "%s did not reach %s within %.1f s (heartbeat alive: busy, or blocked in "
                     "another operation)",
                     nm, op->reach, waited);
  }
  return 0;
}

/* Waits until every item's counter reaches its target. */
static int comm_wait(shm_comm* c, const op_ctx* op, const witem* it, int n) {
  seg_handle* s = c->seg;
  slot_ctrl* sc = c->ctrl;
  int spins = 0, yields = 0;
  double t0 = -1, last_check = 0;
  for (;;) {
    uint32_t ws = atomic_load(&sc->wake_seq);
    int done = 1;
    for (int i = 0; i < n; i++)
      if (atomic_load_explicit(it[i].ctr, memory_order_acquire) < it[i].target) {
        done = 0;
        break;
      }
    if (done) return ZP_OK;
    if (atomic_load_explicit(&s->hdr->aborted, memory_order_acquire) == 2)
      return comm_fail_aborted(c, op);
    if (spins < s->spin_max) {
      spins++;
      cpu_relax();
      continue;
    }
    if (yields < s->yield_max) {
      yields++;
      sched_yield();
      continue;
    }
    double t = now_s();
    if (t0 < 0) t0 = last_check = t;
    double waited = t - t0;
    if (t - last_check >= CHECK_INTERVAL_S || waited >= s->timeout_s) {
      last_check = t;
      int rc = check_peers(c, op, it, n, waited);
      if (rc) return rc;
    }
    double sl = CHECK_INTERVAL_S;
    if (t0 + s->timeout_s - t < sl) sl = t0 + s->timeout_s - t;
    atomic_fetch_add(&sc->nwaiters, 1);
    futex_wait(&sc->wake_seq, ws, sl);
    atomic_fetch_sub(&sc->nwaiters, 1);
  }
}

static void comm_wake(shm_comm* c) {
  atomic_fetch_add(&c->ctrl->wake_seq, 1);
  if (atomic_load(&c->ctrl->nwaiters) > 0) futex_wake_all(&c->ctrl->wake_seq);
}

static int comm_barrier_wait(shm_comm* c, const op_ctx* op) {
  int N = c->base.size, me = c->base.rank;
  c->epoch++;
  atomic_store(&c->rk[me].epoch, c->epoch);
  comm_wake(c);
  witem it[ZP_SHM_MAX_RANKS];
  int n = 0;
  for (int j = 0; j < N; j++)
    if (j != me) it[n++] = (witem){&c->rk[j].epoch, c->epoch, j};
  return comm_wait(c, op, it, n);
}

/* ---------------------------------------------------------------- op bookkeeping ---- */

static void desc_of(char* buf, size_t len, int kind, uint64_t seq, size_t count, zp_dtype dt,
                    int root) {
  if (kind == OP_BARRIER) snprintf(buf, len, "barrier #%llu", (unsigned long long)seq);
  else if (kind == OP_SPLIT) snprintf(buf, len, "split #%llu", (unsigned long long)seq);
  else if (kind == OP_BROADCAST)
    snprintf(buf, len, "broadcast #%llu (count %zu %s, root %d)", (unsigned long long)seq, count,
             dt_name(dt), root);
  else
    snprintf(buf, len, "%s #%llu (count %zu %s)", op_name(kind), (unsigned long long)seq, count,
             dt_name(dt));
}

/* Starts a collective: numbers it, publishes the descriptor, checks prior failures. */
static int coll_begin(shm_comm* c, op_ctx* op, int kind, size_t count, zp_dtype dt, zp_redop rop,
                      int root) {
  memset(op, 0, sizeof *op);
  op->kind = kind, op->seq = ++c->coll_seq, op->count = count, op->dt = dt, op->op = rop,
  op->root = root;
  desc_of(op->desc, sizeof op->desc, kind, op->seq, count, dt, root);
  char sub[48] = "";
  if (c->slot) snprintf(sub, sizeof sub, " on sub-communicator %d of size %d", c->slot, c->base.size);
  if (sub[0]) strncat(op->desc, sub, sizeof op->desc - strlen(op->desc) - 1);
  snprintf(op->reach, sizeof op->reach, "%s", op->desc);
  if (c->failed) return c->failed;
  if (atomic_load_explicit(&c->seg->hdr->aborted, memory_order_acquire) == 2)
    return comm_fail_aborted(c, op);
  slot_rank* r = &c->rk[c->base.rank];
  r->d_seq = op->seq, r->d_count = count, r->d_kind = kind, r->d_dtype = (int32_t)dt,
  r->d_op = (int32_t)rop, r->d_root = root;
  return ZP_OK;
}

/* After the first barrier: every rank must be in the same operation with the same arguments. */
static int coll_check(shm_comm* c, const op_ctx* op) {
  for (int j = 0; j < c->base.size; j++) {
    const slot_rank* r = &c->rk[j];
    if (r->d_seq == op->seq && r->d_kind == op->kind && r->d_count == op->count &&
        r->d_dtype == (int32_t)op->dt && r->d_op == (int32_t)op->op && r->d_root == op->root)
      continue;
    char theirs[160], nm[96];
    desc_of(theirs, sizeof theirs, r->d_kind, r->d_seq, (size_t)r->d_count, (zp_dtype)r->d_dtype,
            r->d_root);
    rank_name(c, j, nm, sizeof nm);
    return comm_fail(c, ZP_E_INVALID,
                     "%s: %s called %s%s (all ranks must call the same collectives in the same "
                     "order with the same arguments)",
                     op->desc, nm, theirs,
                     r->d_kind == op->kind && r->d_count == op->count && r->d_op != (int32_t)op->op
                         ? " with another reduction op"
                         : "");
  }
  return ZP_OK;
}

static int red_ok(zp_dtype dt, zp_redop op) {
  if (op != ZP_RED_SUM && op != ZP_RED_AVG && op != ZP_RED_MAX) return 0;
  if (dt == ZP_F32 || dt == ZP_F64 || dt == ZP_BF16) return 1;
  return dt == ZP_I32 && op != ZP_RED_AVG;
}
static const char* redop_name(zp_redop op) {
  return op == ZP_RED_SUM ? "sum" : op == ZP_RED_AVG ? "avg" : op == ZP_RED_MAX ? "max" : "?";
}

/* ---------------------------------------------------------------- reduction kernels ---- */

#define RBLK 512
static inline float fmaxn(float a, float b) { return (b != b || b > a) ? b : a; }
static inline double dmaxn(double a, double b) { return (b != b || b > a) ? b : a; }

/* out[i] = in[0][i] (op) in[1][i] (op) ... in rank order; out may alias in[0]. */
static void reduce_kernel(void* out, const unsigned char* const* in, int N, size_t n, zp_dtype dt,
                          zp_redop op) {
  for (size_t b = 0; b < n; b += RBLK) {
    size_t m = n - b < RBLK ? n - b : RBLK;
    if (dt == ZP_F32 || dt == ZP_BF16) {
      float acc[RBLK];
      if (dt == ZP_F32) {
        memcpy(acc, in[0] + b * 4, m * 4);
        for (int k = 1; k < N; k++) {
          const float* p = (const float*)(const void*)in[k] + b;
          if (op == ZP_RED_MAX)
            for (size_t j = 0; j < m; j++) acc[j] = fmaxn(acc[j], p[j]);
          else
            for (size_t j = 0; j < m; j++) acc[j] += p[j];
        }
      } else {
        const uint16_t* p0 = (const uint16_t*)(const void*)in[0] + b;
        for (size_t j = 0; j < m; j++) acc[j] = zp_bf16_to_f32(p0[j]);
        for (int k = 1; k < N; k++) {
          const uint16_t* p = (const uint16_t*)(const void*)in[k] + b;
          if (op == ZP_RED_MAX)
            for (size_t j = 0; j < m; j++) acc[j] = fmaxn(acc[j], zp_bf16_to_f32(p[j]));
          else
            for (size_t j = 0; j < m; j++) acc[j] += zp_bf16_to_f32(p[j]);
        }
      }
      if (op == ZP_RED_AVG)
        for (size_t j = 0; j < m; j++) acc[j] /= (float)N;
      if (dt == ZP_F32) {
        memcpy((unsigned char*)out + b * 4, acc, m * 4);
      } else {
        uint16_t o[RBLK];
        for (size_t j = 0; j < m; j++) o[j] = zp_f32_to_bf16(acc[j]);
        memcpy((unsigned char*)out + b * 2, o, m * 2);
      }
    } else if (dt == ZP_F64) {
      double acc[RBLK];
      memcpy(acc, in[0] + b * 8, m * 8);
      for (int k = 1; k < N; k++) {
        const double* p = (const double*)(const void*)in[k] + b;
        if (op == ZP_RED_MAX)
          for (size_t j = 0; j < m; j++) acc[j] = dmaxn(acc[j], p[j]);
        else
          for (size_t j = 0; j < m; j++) acc[j] += p[j];
      }
      if (op == ZP_RED_AVG)
        for (size_t j = 0; j < m; j++) acc[j] /= (double)N;
      memcpy((unsigned char*)out + b * 8, acc, m * 8);
    } else { /* I32: sum wraps modulo 2^32 */
      int32_t acc[RBLK];
      memcpy(acc, in[0] + b * 4, m * 4);
      for (int k = 1; k < N; k++) {
        const int32_t* p = (const int32_t*)(const void*)in[k] + b;
        if (op == ZP_RED_MAX)
          for (size_t j = 0; j < m; j++) acc[j] = p[j] > acc[j] ? p[j] : acc[j];
        else
          for (size_t j = 0; j < m; j++) acc[j] = (int32_t)((uint32_t)acc[j] + (uint32_t)p[j]);
      }
      memcpy((unsigned char*)out + b * 4, acc, m * 4);
    }
  }
}

/* ---------------------------------------------------------------- collectives ---- */

static inline unsigned char* stage_of(shm_comm* c, int j) {
  return c->stage + (size_t)j * c->stage_bytes;
}

static int check_count(shm_comm* c, const op_ctx* op, size_t count, size_t mult) {
  size_t esz = zp_dtype_size(op->dt);
  if (count > SIZE_MAX / esz / (mult ? mult : 1))
    return comm_fail(c, ZP_E_INVALID, "%s: count %zu is too large", op->desc, count);
  return ZP_OK;
}

static int shm_allreduce(zp_comm* zc, void* buf, size_t count, zp_dtype dt, zp_redop rop) {
  shm_comm* c = (shm_comm*)zc;
  op_ctx op;
  int rc = coll_begin(c, &op, OP_ALLREDUCE, count, dt, rop, 0);
  if (rc) return rc;
  if (!dt_valid(dt) || !red_ok(dt, rop))
    return comm_fail(c, ZP_E_INVALID, "%s: reduction %s is not supported for %s", op.desc,
                     redop_name(rop), dt_name(dt));
  if (count && !buf) return comm_fail(c, ZP_E_INVALID, "%s: NULL buffer", op.desc);
  if ((rc = check_count(c, &op, count, 1))) return rc;
  int N = c->base.size, me = c->base.rank;
  size_t esz = zp_dtype_size(dt), per = c->stage_bytes / esz, g = CL / esz;
  const unsigned char* in[ZP_SHM_MAX_RANKS];
  size_t done = 0;
  int first = 1;
  do {
    size_t m = count - done < per ? count - done : per;
    if (m) memcpy(stage_of(c, me), (unsigned char*)buf + done * esz, m * esz);
    if ((rc = comm_barrier_wait(c, &op))) return rc;
    if (first && (rc = coll_check(c, &op))) return rc;
    first = 0;
    size_t nb = (m + g - 1) / g;
    size_t lo = nb * (size_t)me / (size_t)N * g, hi = nb * (size_t)(me + 1) / (size_t)N * g;
    if (lo > m) lo = m;
    if (hi > m) hi = m;
    if (hi > lo) {
      for (int k = 0; k < N; k++) in[k] = stage_of(c, k) + lo * esz;
      reduce_kernel(stage_of(c, 0) + lo * esz, in, N, hi - lo, dt, rop);
    }
    if ((rc = comm_barrier_wait(c, &op))) return rc;
    if (m) memcpy((unsigned char*)buf + done * esz, stage_of(c, 0), m * esz);
    if ((rc = comm_barrier_wait(c, &op))) return rc;
    done += m;
  } while (done < count);
  return ZP_OK;
}

static int shm_reduce_scatter(zp_comm* zc, void* recv, const void* send, size_t rcount,
                              zp_dtype dt, zp_redop rop) {
  shm_comm* c = (shm_comm*)zc;
  op_ctx op;
  int rc = coll_begin(c, &op, OP_REDUCE_SCATTER, rcount, dt, rop, 0);
  if (rc) return rc;
  if (!dt_valid(dt) || !red_ok(dt, rop))
    return comm_fail(c, ZP_E_INVALID, "%s: reduction %s is not supported for %s", op.desc,
                     redop_name(rop), dt_name(dt));
  if (rcount && (!recv || !send)) return comm_fail(c, ZP_E_INVALID, "%s: NULL buffer", op.desc);
  int N = c->base.size, me = c->base.rank;
  if ((rc = check_count(c, &op, rcount, (size_t)N))) return rc;
  size_t esz = zp_dtype_size(dt), per = c->stage_bytes / ((size_t)N * esz);
  const unsigned char* in[ZP_SHM_MAX_RANKS];
  const unsigned char* sp = send;
  size_t done = 0;
  int first = 1;
  do {
    size_t m = rcount - done < per ? rcount - done : per;
    for (int b = 0; b < N && m; b++)
      memcpy(stage_of(c, me) + (size_t)b * m * esz, sp + ((size_t)b * rcount + done) * esz, m * esz);
    if ((rc = comm_barrier_wait(c, &op))) return rc;
    if (first && (rc = coll_check(c, &op))) return rc;
    first = 0;
    if (m) {
      for (int k = 0; k < N; k++) in[k] = stage_of(c, k) + (size_t)me * m * esz;
      reduce_kernel((unsigned char*)recv + done * esz, in, N, m, dt, rop);
    }
    if ((rc = comm_barrier_wait(c, &op))) return rc;
    done += m;
  } while (done < rcount);
  return ZP_OK;
}

/* Internal allgather with a caller's op context (split uses it). */
static int allgather_impl(shm_comm* c, op_ctx* op, void* recv, const void* send, size_t scount,
                          size_t esz) {
  int N = c->base.size, me = c->base.rank, rc;
  size_t per = c->stage_bytes / esz;
  unsigned char* rp = recv;
  const unsigned char* sp = send;
  int in_place = sp == rp + (size_t)me * scount * esz;
  size_t done = 0;
  int first = 1;
  do {
    size_t m = scount - done < per ? scount - done : per;
    if (m) memcpy(stage_of(c, me), sp + done * esz, m * esz);
    if ((rc = comm_barrier_wait(c, op))) return rc;
    if (first && (rc = coll_check(c, op))) return rc;
    first = 0;
    for (int k = 0; k < N && m; k++) {
      unsigned char* dst = rp + ((size_t)k * scount + done) * esz;
      if (k != me) memcpy(dst, stage_of(c, k), m * esz);
      else if (!in_place) memmove(dst, sp + done * esz, m * esz);
    }
    if ((rc = comm_barrier_wait(c, op))) return rc;
    done += m;
  } while (done < scount);
  return ZP_OK;
}

static int shm_allgather(zp_comm* zc, void* recv, const void* send, size_t scount, zp_dtype dt) {
  shm_comm* c = (shm_comm*)zc;
  op_ctx op;
  int rc = coll_begin(c, &op, OP_ALLGATHER, scount, dt, 0, 0);
  if (rc) return rc;
  if (!dt_valid(dt)) return comm_fail(c, ZP_E_INVALID, "%s: invalid dtype %d", op.desc, (int)dt);
  if (scount && (!recv || !send)) return comm_fail(c, ZP_E_INVALID, "%s: NULL buffer", op.desc);
  if ((rc = check_count(c, &op, scount, (size_t)c->base.size))) return rc;
  return allgather_impl(c, &op, recv, send, scount, zp_dtype_size(dt));
}

static int shm_broadcast(zp_comm* zc, void* buf, size_t count, zp_dtype dt, int root) {
  shm_comm* c = (shm_comm*)zc;
  op_ctx op;
  int rc = coll_begin(c, &op, OP_BROADCAST, count, dt, 0, root);
  if (rc) return rc;
  int N = c->base.size, me = c->base.rank;
  if (!dt_valid(dt)) return comm_fail(c, ZP_E_INVALID, "%s: invalid dtype %d", op.desc, (int)dt);
  if (root < 0 || root >= N)
    return comm_fail(c, ZP_E_INVALID, "%s: root %d is not a rank of this communicator (size %d)",
                     op.desc, root, N);
  if (count && !buf) return comm_fail(c, ZP_E_INVALID, "%s: NULL buffer", op.desc);
  if ((rc = check_count(c, &op, count, 1))) return rc;
  size_t esz = zp_dtype_size(dt), per = c->stage_bytes / esz, done = 0;
  int first = 1;
  do {
    size_t m = count - done < per ? count - done : per;
    if (me == root && m) memcpy(stage_of(c, root), (unsigned char*)buf + done * esz, m * esz);
    if ((rc = comm_barrier_wait(c, &op))) return rc;
    if (first && (rc = coll_check(c, &op))) return rc;
    first = 0;
    if (me != root && m) memcpy((unsigned char*)buf + done * esz, stage_of(c, root), m * esz);
    if ((rc = comm_barrier_wait(c, &op))) return rc;
    done += m;
  } while (done < count);
  return ZP_OK;
}

static int shm_barrier(zp_comm* zc) {
  shm_comm* c = (shm_comm*)zc;
  op_ctx op;
  int rc = coll_begin(c, &op, OP_BARRIER, 0, ZP_F32, 0, 0);
  if (rc) return rc;
  if ((rc = comm_barrier_wait(c, &op))) return rc;
  if ((rc = coll_check(c, &op))) return rc;
  return comm_barrier_wait(c, &op);
}

/* ---------------------------------------------------------------- send / recv ---- */

static int p2p_begin(shm_comm* c, op_ctx* op, int kind, size_t count, zp_dtype dt, int peer,
                     const void* buf) {
  memset(op, 0, sizeof *op);
  op->kind = kind, op->count = count, op->dt = dt, op->root = peer;
  int N = c->base.size, me = c->base.rank;
  int ok_peer = peer >= 0 && peer < N && peer != me;
  if (ok_peer) op->seq = kind == OP_SEND ? ++c->send_seq[peer] : ++c->recv_seq[peer];
  snprintf(op->desc, sizeof op->desc, "%s #%llu %s rank %d (count %zu %s)%s", op_name(kind),
           (unsigned long long)op->seq, kind == OP_SEND ? "to" : "from", peer, count, dt_name(dt),
           c->slot ? " on a sub-communicator" : "");
  snprintf(op->reach, sizeof op->reach, "the %s matching %s", kind == OP_SEND ? "recv" : "send",
           op->desc);
  if (c->failed) return c->failed;
  if (atomic_load_explicit(&c->seg->hdr->aborted, memory_order_acquire) == 2)
    return comm_fail_aborted(c, op);
  if (!ok_peer)
    return comm_fail(c, ZP_E_INVALID, "%s: peer %d is not another rank of this communicator (size %d, rank %d)",
                     op->desc, peer, N, me);
  if (!dt_valid(dt)) return comm_fail(c, ZP_E_INVALID, "%s: invalid dtype %d", op->desc, (int)dt);
  if (count && !buf) return comm_fail(c, ZP_E_INVALID, "%s: NULL buffer", op->desc);
  if (count > SIZE_MAX / zp_dtype_size(dt))
    return comm_fail(c, ZP_E_INVALID, "%s: count too large", op->desc);
  return ZP_OK;
}

static int shm_send(zp_comm* zc, const void* buf, size_t count, zp_dtype dt, int peer) {
  shm_comm* c = (shm_comm*)zc;
  op_ctx op;
  int rc = p2p_begin(c, &op, OP_SEND, count, dt, peer, buf);
  if (rc) return rc;
  int me = c->base.rank;
  shm_pair* pr = &c->pairs[(size_t)me * (size_t)c->seg->W + (size_t)peer];
  size_t bytes = count * zp_dtype_size(dt), done = 0;
  do {
    size_t m = bytes - done < c->stage_bytes ? bytes - done : c->stage_bytes;
    if (m) memcpy(stage_of(c, me), (const unsigned char*)buf + done, m);
    pr->msg_bytes = bytes, pr->msg_seq = op.seq, pr->piece_bytes = m;
    uint64_t r = ++c->sent_pieces[peer];
    atomic_store(&pr->ready, r);
    comm_wake(c);
    witem it = {&pr->taken, r, peer};
    if ((rc = comm_wait(c, &op, &it, 1))) return rc;
    done += m;
  } while (done < bytes);
  return ZP_OK;
}

static int shm_recv(zp_comm* zc, void* buf, size_t count, zp_dtype dt, int peer) {
  shm_comm* c = (shm_comm*)zc;
  op_ctx op;
  int rc = p2p_begin(c, &op, OP_RECV, count, dt, peer, buf);
  if (rc) return rc;
  int me = c->base.rank;
  shm_pair* pr = &c->pairs[(size_t)peer * (size_t)c->seg->W + (size_t)me];
  size_t bytes = count * zp_dtype_size(dt), done = 0;
  do {
    size_t m = bytes - done < c->stage_bytes ? bytes - done : c->stage_bytes;
    uint64_t want = ++c->recvd_pieces[peer];
    witem it = {&pr->ready, want, peer};
    if ((rc = comm_wait(c, &op, &it, 1))) return rc;
    if (pr->msg_seq != op.seq || pr->msg_bytes != bytes || pr->piece_bytes != m)
      return comm_fail(c, ZP_E_INVALID,
                       "%s: the matching send #%llu from rank %d carries %llu bytes, this recv "
                       "expects %zu bytes",
                       op.desc, (unsigned long long)pr->msg_seq, peer,
                       (unsigned long long)pr->msg_bytes, bytes);
    if (m) memcpy((unsigned char*)buf + done, stage_of(c, peer), m);
    atomic_store(&pr->taken, want);
    comm_wake(c);
    done += m;
  } while (done < bytes);
  return ZP_OK;
}

/* ---------------------------------------------------------------- split / destroy ---- */

static const zp_comm_ops k_shm_ops;

static shm_comm* comm_new(seg_handle* s, int slot, int rank, int size, const int* members) {
  shm_comm* c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->base.ops = &k_shm_ops;
  c->base.rank = rank, c->base.size = size;
  c->seg = s;
  c->slot = slot;
  unsigned char* sb = s->base + s->hdr->slot_off[slot];
  c->ctrl = (slot_ctrl*)sb;
  c->rk = (slot_rank*)(sb + slot_ranks_rel());
  c->pairs = (shm_pair*)(sb + slot_pairs_rel(s->W));
  c->stage = sb + slot_stage_rel(s->W);
  c->stage_bytes = (size_t)s->hdr->slot_stage[slot];
  for (int i = 0; i < size; i++) c->members[i] = members[i];
  s->refs++;
  return c;
}

typedef struct {
  int color, key, rank;
} split_ent;
static int split_cmp(const void* a, const void* b) {
  const split_ent* x = a;
  const split_ent* y = b;
  if (x->color != y->color) return x->color < y->color ? -1 : 1;
  if (x->key != y->key) return x->key < y->key ? -1 : 1;
  return x->rank < y->rank ? -1 : x->rank > y->rank;
}

static int shm_split(zp_comm* zc, int color, int key, zp_comm** out) {
  shm_comm* c = (shm_comm*)zc;
  op_ctx op;
  if (out) *out = NULL;
  if (color < 0) color = ZP_COMM_SPLIT_UNDEFINED;
  int rc = coll_begin(c, &op, OP_SPLIT, 0, ZP_I32, 0, 0);
  if (rc) return rc;
  if (!out) return comm_fail(c, ZP_E_INVALID, "%s: NULL output", op.desc);
  int N = c->base.size, me = c->base.rank;
  int32_t mine[2] = {color, key}, all[2 * ZP_SHM_MAX_RANKS];
  if ((rc = allgather_impl(c, &op, all, mine, 2, 4))) return rc;
  split_ent ent[ZP_SHM_MAX_RANKS];
  for (int j = 0; j < N; j++) ent[j] = (split_ent){all[2 * j], all[2 * j + 1], j};
  qsort(ent, (size_t)N, sizeof ent[0], split_cmp);
  /* my group: ranks with my color in (key, rank) order; the leader is its first */
  int newrank = -1, newsize = 0, leader = -1, members[ZP_SHM_MAX_RANKS];
  for (int j = 0; j < N; j++) {
    if (ent[j].color != color || color < 0) continue;
    if (leader < 0) leader = ent[j].rank;
    if (ent[j].rank == me) newrank = newsize;
    members[newsize++] = c->members[ent[j].rank];
  }
  int32_t claim = -1;
  if (color >= 0 && leader == me) {
    for (int sl = 1; sl < ZP_SHM_MAX_COMMS && claim < 0; sl++) {
      slot_ctrl* sc = slot_at(c->seg, sl);
      int32_t expect = SLOT_FREE;
      if (!atomic_compare_exchange_strong(&sc->state, &expect, SLOT_CLAIMED)) continue;
      unsigned char* sb = (unsigned char*)sc;
      memset(sb + slot_ranks_rel(), 0, slot_stage_rel(c->seg->W) - slot_ranks_rel());
      sc->size = newsize;
      sc->generation++;
      for (int i = 0; i < newsize; i++) sc->members[i] = members[i];
      atomic_store(&sc->refs, newsize);
      atomic_store(&sc->state, SLOT_ACTIVE);
      claim = sl;
    }
  }
  int32_t claims[ZP_SHM_MAX_RANKS];
  if ((rc = allgather_impl(c, &op, claims, &claim, 1, 4))) return rc;
  /* every group's leader must have found a slot, else everyone fails alike */
  int short_of = 0;
  for (int j = 0; j < N; j++)
    if (ent[j].color >= 0 && (j == 0 || ent[j - 1].color != ent[j].color) && claims[ent[j].rank] < 0)
      short_of++;
  if (short_of) {
    if (claim > 0) {
      slot_ctrl* sc = slot_at(c->seg, claim);
      atomic_store(&sc->refs, 0);
      atomic_store(&sc->state, SLOT_FREE);
    }
    snprintf(c->base.err, sizeof c->base.err,
             "%s: no free communicator slot for %d new group(s): the segment holds %d "
             "communicators (world included); destroy unused ones first",
             op.desc, short_of, ZP_SHM_MAX_COMMS);
    return ZP_E_NOMEM;
  }
  if (color < 0) return ZP_OK;
  int slot = claims[leader];
  shm_comm* nc = comm_new(c->seg, slot, newrank, newsize, members);
  if (!nc) {
    return comm_fail(c, ZP_E_NOMEM, "%s: out of memory", op.desc);
  }
  *out = &nc->base;
  return ZP_OK;
}

static void shm_destroy(zp_comm* zc) {
  shm_comm* c = (shm_comm*)zc;
  if (!c) return;
  if (c->slot > 0) {
    if (atomic_fetch_sub(&c->ctrl->refs, 1) == 1) atomic_store(&c->ctrl->state, SLOT_FREE);
  }
  seg_release(c->seg);
  free(c);
}

static const zp_comm_ops k_shm_ops = {
    sizeof(zp_comm_ops), shm_allreduce, shm_reduce_scatter, shm_allgather, shm_broadcast,
    shm_send, shm_recv, shm_barrier, shm_split, shm_destroy,
    NULL, NULL, NULL, NULL, /* 1.9 started collectives: the core defers the plain ones to the wait */
};

/* ---------------------------------------------------------------- segment ---- */

static size_t default_stage(int W) {
  const char* e = getenv("ZP_SHM_STAGING_KB");
  if (e && *e) {
    char* end = NULL;
    unsigned long long kb = strtoull(e, &end, 10);
    if (end && !*end && kb >= 4 && kb <= (1ull << 22)) return (size_t)kb * 1024;
  }
  size_t s = (size_t)(16u << 20) / (size_t)W;
  if (s < (256u << 10)) s = 256u << 10;
  if (s > (4u << 20)) s = 4u << 20;
  return s / PAGE * PAGE;
}

int zp_comm_shm_create_segment_ex(const char* name, int size, size_t stage, char* err,
                                  size_t errlen) {
  if (!name || name[0] != '/' || strlen(name) >= 200 || strchr(name + 1, '/')) {
    set_err(err, errlen, "shared-memory segment name '%s' is invalid (need \"/name\", no other '/')",
            name ? name : "(null)");
    return ZP_E_INVALID;
  }
  if (size < 1 || size > ZP_SHM_MAX_RANKS) {
    set_err(err, errlen, "shared-memory communicator: %d ranks requested, supported 1..%d", size,
            ZP_SHM_MAX_RANKS);
    return ZP_E_INVALID;
  }
  if (stage == 0) stage = default_stage(size);
  stage = round_up(stage, PAGE);
  size_t sub = stage / 8 < 65536 ? (stage < 65536 ? stage : 65536) : stage / 8;
  sub = round_up(sub, PAGE);
  size_t hdr_bytes = round_up(sizeof(shm_header), PAGE);
  size_t ranks_bytes = round_up((size_t)size * CL, PAGE);
  size_t total = hdr_bytes + ranks_bytes;
  uint64_t offs[ZP_SHM_MAX_COMMS], stg[ZP_SHM_MAX_COMMS];
  for (int i = 0; i < ZP_SHM_MAX_COMMS; i++) {
    stg[i] = i == 0 ? stage : sub;
    offs[i] = total;
    total += slot_bytes(size, (size_t)stg[i]);
  }
  int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) {
    set_err(err, errlen, "cannot create shared-memory segment %s: %s", name, strerror(errno));
    return ZP_E_IO;
  }
  int e = 0;
  if (ftruncate(fd, (off_t)total) != 0) e = errno;
  if (!e) {
    int fe = posix_fallocate(fd, 0, (off_t)total); /* fail now rather than SIGBUS later */
    if (fe && fe != EOPNOTSUPP && fe != EINVAL) e = fe;
  }
  if (e) {
    set_err(err, errlen,
            "cannot size shared-memory segment %s to %.1f MiB: %s (is /dev/shm large enough? "
            "ZP_SHM_STAGING_KB lowers the staging size)",
            name, (double)total / 1048576.0, strerror(e));
    close(fd);
    shm_unlink(name);
    return ZP_E_IO;
  }
  void* p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) {
    set_err(err, errlen, "cannot map shared-memory segment %s: %s", name, strerror(errno));
    shm_unlink(name);
    return ZP_E_IO;
  }
  shm_header* h = p;
  h->version = SHM_VERSION;
  h->size = size;
  h->total_bytes = total;
  h->ranks_off = hdr_bytes;
  for (int i = 0; i < ZP_SHM_MAX_COMMS; i++) h->slot_off[i] = offs[i], h->slot_stage[i] = stg[i];
  slot_ctrl* w = (slot_ctrl*)((unsigned char*)p + offs[0]);
  w->size = size;
  for (int i = 0; i < size; i++) w->members[i] = i;
  atomic_store(&w->refs, size);
  atomic_store(&w->state, SLOT_ACTIVE);
  atomic_thread_fence(memory_order_seq_cst);
  h->magic = SHM_MAGIC; /* written last: a segment with the magic is complete */
  munmap(p, total);
  return ZP_OK;
}

int zp_comm_shm_create_segment(const char* name, int size, char* err, size_t errlen) {
  return zp_comm_shm_create_segment_ex(name, size, 0, err, errlen);
}

void zp_comm_shm_unlink(const char* name) {
  if (name && *name) shm_unlink(name);
}

int zp_comm_shm_open(const char* name, int rank, int size, double timeout_s, zp_comm** out,
                     char* err, size_t errlen) {
  if (err && errlen) err[0] = '\0';
  if (!out) {
    set_err(err, errlen, "zp_comm_shm_open: NULL output");
    return ZP_E_INVALID;
  }
  *out = NULL;
  if (!name || !*name) {
    set_err(err, errlen, "zp_comm_shm_open: empty segment name");
    return ZP_E_INVALID;
  }
  if (size < 1 || size > ZP_SHM_MAX_RANKS || rank < 0 || rank >= size) {
    set_err(err, errlen, "zp_comm_shm_open(%s): rank %d of %d is out of range (1..%d ranks)", name,
            rank, size, ZP_SHM_MAX_RANKS);
    return ZP_E_INVALID;
  }
  if (!(timeout_s > 0)) timeout_s = 300.0;
  int fd = shm_open(name, O_RDWR | O_CLOEXEC, 0);
  if (fd < 0) {
    set_err(err, errlen, "rank %d: cannot open shared-memory segment %s: %s", rank, name,
            strerror(errno));
    return ZP_E_IO;
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || (size_t)st.st_size < sizeof(shm_header)) {
    close(fd);
    set_err(err, errlen, "rank %d: shared-memory segment %s is too small to be a zp segment", rank,
            name);
    return ZP_E_CORRUPT;
  }
  size_t bytes = (size_t)st.st_size;
  void* p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) {
    set_err(err, errlen, "rank %d: cannot map shared-memory segment %s: %s", rank, name,
            strerror(errno));
    return ZP_E_IO;
  }
  shm_header* h = p;
  int layout_ok = h->magic == SHM_MAGIC && h->version == SHM_VERSION && h->total_bytes == bytes &&
                  h->size >= 1 && h->size <= ZP_SHM_MAX_RANKS &&
                  h->ranks_off + (uint64_t)h->size * CL <= bytes;
  for (int i = 0; layout_ok && i < ZP_SHM_MAX_COMMS; i++)
    layout_ok = h->slot_stage[i] >= PAGE && h->slot_stage[i] < bytes &&
                h->slot_off[i] + slot_bytes(h->size, (size_t)h->slot_stage[i]) <= bytes;
  if (!layout_ok) {
    munmap(p, bytes);
    set_err(err, errlen, "rank %d: %s is not a zp communicator segment of version %u", rank, name,
            SHM_VERSION);
    return ZP_E_CORRUPT;
  }
  seg_handle* s = calloc(1, sizeof *s);
  if (!s) {
    munmap(p, bytes);
    set_err(err, errlen, "rank %d: out of memory", rank);
    return ZP_E_NOMEM;
  }
  s->refs = 1;
  snprintf(s->name, sizeof s->name, "%s", name);
  s->base = p, s->bytes = bytes, s->hdr = h;
  s->ranks = (shm_rankinfo*)((unsigned char*)p + h->ranks_off);
  s->wrank = rank, s->W = h->size;
  s->timeout_s = timeout_s;
  s->hb_limit_s = timeout_s < 3.0 ? timeout_s : 3.0;
  cpu_set_t cs;
  int ncpu = sched_getaffinity(0, sizeof cs, &cs) == 0 ? CPU_COUNT(&cs) : (int)sysconf(_SC_NPROCESSORS_ONLN);
  s->spin_max = ncpu >= h->size + 1 ? 4000 : ncpu >= h->size ? 1000 : 50;
  s->yield_max = ncpu >= h->size ? 0 : 2;
  char msg[ZP_COMM_ERR_LEN];
  int rc = ZP_OK;
  if (h->size != size) {
    snprintf(msg, sizeof msg, "rank %d: segment %s was created for %d ranks, but this rank was told %d",
             rank, name, h->size, size);
    seg_abort(s, ZP_E_INVALID, msg);
    set_err(err, errlen, "%s", msg);
    munmap(p, bytes);
    free(s);
    return ZP_E_INVALID;
  }
  shm_rankinfo* me = &s->ranks[rank];
  int32_t expect = 0, mypid = (int32_t)getpid();
  if (!atomic_compare_exchange_strong(&me->pid, &expect, mypid)) {
    snprintf(msg, sizeof msg, "rank %d of segment %s is already attached by pid %d", rank, name,
             (int)expect);
    seg_abort(s, ZP_E_INVALID, msg);
    set_err(err, errlen, "%s", msg);
    munmap(p, bytes);
    free(s);
    return ZP_E_INVALID;
  }
  char pst;
  uint64_t start = 0;
  if (proc_stat(0, &pst, &start) != 0) start = 0;
  me->starttime = start;
  atomic_store(&me->hb_ns, now_ns());
  atomic_store(&me->heartbeat, 1);
  atomic_store(&me->state, RS_ATTACHED);
  if (hb_start(s) != 0) {
    snprintf(msg, sizeof msg, "rank %d: cannot start the heartbeat thread", rank);
    seg_abort(s, ZP_E_INTERNAL, msg);
    set_err(err, errlen, "%s", msg);
    atomic_store(&me->state, RS_FAILED);
    munmap(p, bytes);
    free(s);
    return ZP_E_INTERNAL;
  }
  /* wait until every rank attached */
  double t0 = now_s();
  for (;;) {
    int missing = -1;
    for (int j = 0; j < size && missing < 0; j++)
      if (atomic_load(&s->ranks[j].pid) == 0) missing = j;
    if (missing < 0) break; /* a later abort is reported by the first operation */
    if (atomic_load(&h->aborted) == 2) {
      set_err(err, errlen, "rank %d: opening %s aborted: rank %d reported: %s", rank, name,
              h->abort_rank, h->abort_msg);
      rc = h->abort_status ? h->abort_status : ZP_E_COMM;
      break;
    }
    if (now_s() - t0 >= timeout_s) {
      snprintf(msg, sizeof msg,
               "rank %d did not attach to shared-memory segment %s within %.1f s (never started, "
               "or failed before opening the communicator)",
               missing, name, timeout_s);
      seg_abort(s, ZP_E_TIMEOUT, msg);
      set_err(err, errlen, "%s", msg);
      rc = ZP_E_TIMEOUT;
      break;
    }
    struct timespec ts = {0, 2000000};
    nanosleep(&ts, NULL);
  }
  if (rc != ZP_OK) {
    atomic_store(&me->state, RS_FAILED);
    s->refs = 1;
    hb_stop(s);
    munmap(p, bytes);
    free(s);
    return rc;
  }
  int members[ZP_SHM_MAX_RANKS];
  for (int i = 0; i < size; i++) members[i] = i;
  shm_comm* c = comm_new(s, 0, rank, size, members);
  s->refs--; /* comm_new took the reference the handle was created with */
  if (!c) {
    atomic_store(&me->state, RS_FAILED);
    hb_stop(s);
    munmap(p, bytes);
    free(s);
    set_err(err, errlen, "rank %d: out of memory", rank);
    return ZP_E_NOMEM;
  }
  *out = &c->base;
  return ZP_OK;
}

/* ---------------------------------------------------------------- one rank ---- */

typedef struct {
  struct zp_comm base;
} self_comm;

static int self_fail(zp_comm* c, int st, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
static int self_fail(zp_comm* c, int st, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->err, sizeof c->err, fmt, ap);
  va_end(ap);
  return st;
}
static int self_allreduce(zp_comm* c, void* buf, size_t count, zp_dtype dt, zp_redop op) {
  if (!dt_valid(dt) || !red_ok(dt, op))
    return self_fail(c, ZP_E_INVALID, "allreduce: reduction %s is not supported for %s",
                     redop_name(op), dt_name(dt));
  if (count && !buf) return self_fail(c, ZP_E_INVALID, "allreduce: NULL buffer");
  return ZP_OK; /* sum/avg/max over one rank is the value itself */
}
static int self_reduce_scatter(zp_comm* c, void* recv, const void* send, size_t n, zp_dtype dt,
                               zp_redop op) {
  if (!dt_valid(dt) || !red_ok(dt, op))
    return self_fail(c, ZP_E_INVALID, "reduce_scatter: reduction %s is not supported for %s",
                     redop_name(op), dt_name(dt));
  if (n && (!recv || !send)) return self_fail(c, ZP_E_INVALID, "reduce_scatter: NULL buffer");
  if (n && recv != send) memmove(recv, send, n * zp_dtype_size(dt));
  return ZP_OK;
}
static int self_allgather(zp_comm* c, void* recv, const void* send, size_t n, zp_dtype dt) {
  if (!dt_valid(dt)) return self_fail(c, ZP_E_INVALID, "allgather: invalid dtype %d", (int)dt);
  if (n && (!recv || !send)) return self_fail(c, ZP_E_INVALID, "allgather: NULL buffer");
  if (n && recv != send) memmove(recv, send, n * zp_dtype_size(dt));
  return ZP_OK;
}
static int self_broadcast(zp_comm* c, void* buf, size_t n, zp_dtype dt, int root) {
  (void)buf, (void)n;
  if (!dt_valid(dt)) return self_fail(c, ZP_E_INVALID, "broadcast: invalid dtype %d", (int)dt);
  if (root != 0) return self_fail(c, ZP_E_INVALID, "broadcast: root %d is not a rank of a one-rank communicator", root);
  return ZP_OK;
}
static int self_send(zp_comm* c, const void* buf, size_t n, zp_dtype dt, int peer) {
  (void)buf, (void)n, (void)dt;
  return self_fail(c, ZP_E_INVALID, "send to rank %d: a one-rank communicator has no peers", peer);
}
static int self_recv(zp_comm* c, void* buf, size_t n, zp_dtype dt, int peer) {
  (void)buf, (void)n, (void)dt;
  return self_fail(c, ZP_E_INVALID, "recv from rank %d: a one-rank communicator has no peers", peer);
}
static int self_barrier(zp_comm* c) {
  (void)c;
  return ZP_OK;
}
static int self_split(zp_comm* c, int color, int key, zp_comm** out) {
  (void)key;
  if (!out) return self_fail(c, ZP_E_INVALID, "split: NULL output");
  *out = NULL;
  if (color < 0) return ZP_OK;
  return zp_comm_self_create(out, c->err, sizeof c->err);
}
static void self_destroy(zp_comm* c) { free(c); }

static const zp_comm_ops k_self_ops = {
    sizeof(zp_comm_ops), self_allreduce, self_reduce_scatter, self_allgather, self_broadcast,
    self_send, self_recv, self_barrier, self_split, self_destroy,
    NULL, NULL, NULL, NULL,
};

int zp_comm_self_create(zp_comm** out, char* err, size_t errlen) {
  if (!out) {
    set_err(err, errlen, "zp_comm_self_create: NULL output");
    return ZP_E_INVALID;
  }
  self_comm* c = calloc(1, sizeof *c);
  if (!c) {
    set_err(err, errlen, "out of memory");
    return ZP_E_NOMEM;
  }
  c->base.ops = &k_self_ops;
  c->base.rank = 0, c->base.size = 1;
  *out = &c->base;
  return ZP_OK;
}

/* ---------------------------------------------------------------- from the environment ---- */

/* Ranks started by torchrun / mpirun / srun on ONE host: rank 0 creates a fresh segment and
 * hands its name to the others over TCP (MASTER_ADDR, MASTER_PORT + 17, or ZP_BOOTSTRAP_PORT:
 * torchrun's own store owns MASTER_PORT); after everyone attached, the name is unlinked. Ranks
 * on several hosts are refused with a message (no cross-host host communicator yet). */
static int comm_from_external_launcher(int rank, int world, zp_comm** out, char* err, size_t errlen) {
  const char* lws = getenv("LOCAL_WORLD_SIZE");
  if (!lws) lws = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  if (!lws) lws = getenv("SLURM_NTASKS_PER_NODE");
  if (lws && atoi(lws) != world) {
    set_err(err, errlen,
            "the %s launcher environment says %d ranks in all but %s on this host: zp runs ranks "
            "of one host only so far (use zp launch -n N, or one host under %s)",
            zp_bootstrap_env_source(), world, lws, zp_bootstrap_env_source());
    return ZP_E_INVALID;
  }
  char addr[256];
  int port = 0, rc;
  if ((rc = zp_bootstrap_master(addr, sizeof addr, &port, err, errlen))) return rc;
  const char* bp = getenv("ZP_BOOTSTRAP_PORT");
  port = bp && *bp ? atoi(bp) : port + 17;
  if (port <= 0 || port > 65535) {
    set_err(err, errlen, "bootstrap port %d out of range (set ZP_BOOTSTRAP_PORT)", port);
    return ZP_E_INVALID;
  }
  double timeout = 300.0;
  const char* t = getenv("ZP_COMM_TIMEOUT");
  if (t && *t && strtod(t, NULL) > 0) timeout = strtod(t, NULL);
  char name[64];
  memset(name, 0, sizeof name);
  if (rank == 0) {
    snprintf(name, sizeof name, "/zp-ext-%d-%ld", (int)getpid(), (long)time(NULL));
    if ((rc = zp_comm_shm_create_segment(name, world, err, errlen))) return rc;
  }
  if ((rc = zp_tcp_bcast(addr, port, rank, world, name, sizeof name, timeout, err, errlen))) {
    if (rank == 0) zp_comm_shm_unlink(name);
    return rc;
  }
  name[sizeof name - 1] = 0;
  rc = zp_comm_shm_open(name, rank, world, timeout, out, err, errlen);
  if (rc == ZP_OK) rc = (*out)->ops->barrier(*out);
  if (rank == 0) zp_comm_shm_unlink(name);
  if (rc && *out) {
    set_err(err, errlen, "%s", zp_comm_error(*out));
    zp_comm_destroy(*out);
    *out = NULL;
  }
  return rc;
}

int zp_comm_from_env(zp_comm** out, char* err, size_t errlen) {
  if (!out) {
    set_err(err, errlen, "zp_comm_from_env: NULL output");
    return ZP_E_INVALID;
  }
  *out = NULL;
  int rank, world, local, rc;
  if ((rc = zp_bootstrap_env(&rank, &world, &local, err, errlen))) return rc;
  const char* shm = getenv("ZP_SHM_NAME");
  if (shm && *shm) {
    if (strcmp(zp_bootstrap_env_source(), "zp") != 0) {
      set_err(err, errlen, "ZP_SHM_NAME=%s is set but ZP_RANK and ZP_WORLD_SIZE are not", shm);
      return ZP_E_INVALID;
    }
    double timeout = 300.0;
    const char* t = getenv("ZP_COMM_TIMEOUT");
    if (t && *t) {
      char* end = NULL;
      timeout = strtod(t, &end);
      if (end == t || *end || !(timeout > 0) || !isfinite(timeout)) {
        set_err(err, errlen, "ZP_COMM_TIMEOUT='%s' is not a positive number of seconds", t);
        return ZP_E_INVALID;
      }
    }
    return zp_comm_shm_open(shm, rank, world, timeout, out, err, errlen);
  }
  if (world > 1) return comm_from_external_launcher(rank, world, out, err, errlen);
  return zp_comm_self_create(out, err, errlen);
}
