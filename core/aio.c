/* aio.c: the NVMe I/O engine (see aio.h for the contract).
 *
 * Structure: requests (one per ticket) sit in a FIFO of pending work; each is cut into
 * block_size operations as slots free up, at most queue_depth operations in flight.
 *  - io_uring backend: the submitting thread and the completion thread both feed the
 *    submission queue under the engine mutex; only the completion thread reaps the completion
 *    queue (outside the mutex while it sleeps). One slot per in-flight operation; the slot
 *    index is the SQE's user_data, so the SQ never holds more than queue_depth entries.
 *  - threads backend: min(queue_depth, 128) workers take operations from the same FIFO and run
 *    pread/pwrite loops.
 * A request is done when it has no operation in flight and nothing left to issue (or failed);
 * the first error of a request is kept with its offset and length, and its remaining
 * operations are not issued. Ticket = (generation << 32) | record index, so stale tickets are
 * recognised. Self-contained (libc, pthreads, liburing): compiled into the offload_nvme plugin
 * too. */
#define _GNU_SOURCE
#include "aio.h"
#include "seterr.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>
#ifdef ZP_HAVE_URING
#include <liburing.h>
#endif

#define AIO_MAX_THREADS 128
#define AIO_STOP_UD UINT64_MAX
#define AIO_RETRY_MAX 100000 /* EAGAIN retries of one operation before giving up */
#define TMPFS_MAGIC_ 0x01021994
#define RAMFS_MAGIC_ 0x858458f6

typedef struct aio_req {
  uint32_t gen;          /* generation of this record (part of the ticket) */
  int idx;               /* index in zp_aio.recs */
  int active;            /* holds an unretired ticket */
  int done;              /* completed (ok or failed) */
  int is_write;
  char* buf;
  uint64_t off, len;
  uint64_t issued;       /* bytes handed to operations so far */
  int outstanding;       /* operations in flight */
  int in_pending;        /* linked in the pending FIFO */
  int err;               /* first error (positive errno), 0 = ok */
  int err_eof;           /* the error is an unexpected end of file */
  uint64_t err_off, err_len, err_moved;
  uint64_t ticket;
  uint64_t seq;          /* submission order (drain reports the earliest failure) */
  struct aio_req* next;  /* pending FIFO */
} aio_req;

typedef struct {
  aio_req* req;
  char* buf;
  uint64_t off;
  size_t len, moved;     /* moved: bytes transferred so far (short transfers resume) */
  int attempts;
  int in_use;
} aio_slot;

struct zp_aio {
  char path[4096];
  int fd;
  uint64_t size;
  int qd;
  size_t block, bufsize;
  int nbuf;
  int direct_in_use, uring, preallocated, remove;
  char backend[1024];
  char* bufmem;          /* nbuf * bufsize, one aligned allocation */

  pthread_mutex_t mu;
  pthread_cond_t work_cv, done_cv;
  aio_req** recs;
  int nrec, caprec;
  int* freeidx;
  int nfree;
  aio_req *pend_head, *pend_tail;
  int undone;            /* active requests not yet done */
  int inflight;          /* operations in flight */
  int stop;
  int fatal;             /* positive errno: the backend broke (io_uring_submit failed) */
  char fatal_msg[256];
  zp_aio_stats st;
  uint64_t seq;

  /* fault injection (ZP_AIO_FAULT) */
  int fault_short, fault_eintr, fault_open_einval;
  int64_t fault_eio_at;
  int fault_eio_dir;     /* 0: reads and writes, 1: reads only (eio_read@), 2: writes only (eio_write@) */

  /* threads backend */
  pthread_t* threads;
  int nthreads;

  /* io_uring backend */
  aio_slot* slots;
  int* freeslot;
  int nfreeslot;
#ifdef ZP_HAVE_URING
  struct io_uring ring;
  int ring_ok;
  pthread_t reaper;
  int reaper_started;
#endif
};

/* ---------------------------------------------------------------- helpers */


const char* zp_aio_errno_name(int e) {
  switch (e) {
    case EIO: return "EIO";
    case ENOSPC: return "ENOSPC";
    case EFBIG: return "EFBIG";
    case EINVAL: return "EINVAL";
    case EBADF: return "EBADF";
    case EFAULT: return "EFAULT";
    case EDQUOT: return "EDQUOT";
    case EROFS: return "EROFS";
    case EPERM: return "EPERM";
    case EACCES: return "EACCES";
    case EAGAIN: return "EAGAIN";
    case EINTR: return "EINTR";
    case ENOMEM: return "ENOMEM";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case ENODEV: return "ENODEV";
    case ENXIO: return "ENXIO";
    case ENOENT: return "ENOENT";
    case EEXIST: return "EEXIST";
    case EISDIR: return "EISDIR";
    case ENOTDIR: return "ENOTDIR";
    case EMFILE: return "EMFILE";
    case ENFILE: return "ENFILE";
    case ENOSYS: return "ENOSYS";
    case EOVERFLOW: return "EOVERFLOW";
    case ECANCELED: return "ECANCELED";
    case ENAMETOOLONG: return "ENAMETOOLONG";
    case EBUSY: return "EBUSY";
    default: {
      static __thread char b[24];
      snprintf(b, sizeof b, "errno %d", e);
      return b;
    }
  }
}

static void note(const zp_aio_opts* o, const char* msg) {
  if (o->log) o->log(o->log_ctx, msg);
  else fprintf(stderr, "zp aio: %s\n", msg);
}

/* "3.2 MiB" / "1.50 GiB" for messages */
static const char* human(char* b, size_t n, uint64_t v) {
  if (v >= (1ull << 30)) snprintf(b, n, "%.2f GiB", (double)v / (1ull << 30));
  else if (v >= (1ull << 20)) snprintf(b, n, "%.1f MiB", (double)v / (1ull << 20));
  else snprintf(b, n, "%.1f KiB", (double)v / 1024.0);
  return b;
}

static int is_aligned(uint64_t v) { return (v & (ZP_AIO_ALIGN - 1)) == 0; }

static const char* fs_name(long type) {
  switch ((unsigned long)type) {
    case TMPFS_MAGIC_: return "tmpfs";
    case RAMFS_MAGIC_: return "ramfs";
    case 0xEF53: return "ext2/3/4";
    case 0x58465342: return "xfs";
    case 0x9123683E: return "btrfs";
    case 0x65735546: return "fuse";
    case 0x794c7630: return "overlayfs";
    case 0x6969: return "nfs";
    case 0x01021997: return "9p";
    default: return NULL;
  }
}

void zp_aio_opts_default(zp_aio_opts* o) {
  memset(o, 0, sizeof *o);
  o->queue_depth = 32;
  o->block_size = 1u << 20;
  o->buffer_count = 4;
  o->direct = ZP_AIO_DIRECT_REQUIRE;
  o->remove = ZP_AIO_KEEP;
}

void* zp_aio_alloc_aligned(size_t bytes) {
  size_t n = (bytes + ZP_AIO_ALIGN - 1) & ~(size_t)(ZP_AIO_ALIGN - 1);
  if (n == 0) n = ZP_AIO_ALIGN;
  void* p = NULL;
  if (posix_memalign(&p, ZP_AIO_ALIGN, n) != 0) return NULL;
  return p;
}
void zp_aio_free_aligned(void* p) { free(p); }

/* Describes the failure of a request into err. */
static void describe_failure(const zp_aio* a, const aio_req* r, char* err, size_t errlen) {
  const char* op = r->is_write ? "write" : "read";
  char part[160] = "";
  if (r->err_off != r->off || r->err_len != r->len)
    snprintf(part, sizeof part, " (part of a %" PRIu64 "-byte %s at offset %" PRIu64 ")", r->len, op, r->off);
  if (r->err_eof)
    seterr(err, errlen,
           "%s of %" PRIu64 " bytes at offset %" PRIu64 " of %s%s: unexpected end of file after %" PRIu64
           " bytes (the file is shorter than the engine's size: truncated by someone else?)",
           op, r->err_len, r->err_off, a->path, part, r->err_moved);
  else
    seterr(err, errlen, "%s of %" PRIu64 " bytes at offset %" PRIu64 " of %s%s failed: %s (%s)", op, r->err_len,
           r->err_off, a->path, part, strerror(r->err), zp_aio_errno_name(r->err));
}

/* ---------------------------------------------------------------- records (mutex held) */

static aio_req* rec_alloc(zp_aio* a) {
  if (a->nfree == 0) {
    int ncap = a->caprec ? a->caprec * 2 : 64;
    aio_req** nr = realloc(a->recs, (size_t)ncap * sizeof *nr);
    if (!nr) return NULL;
    a->recs = nr;
    int* nf = realloc(a->freeidx, (size_t)ncap * sizeof *nf);
    if (!nf) return NULL;
    a->freeidx = nf;
    for (int i = a->caprec; i < ncap; i++) a->recs[i] = NULL;
    for (int i = ncap - 1; i >= a->caprec; i--) a->freeidx[a->nfree++] = i;
    a->caprec = ncap;
  }
  int idx = a->freeidx[a->nfree - 1];
  if (!a->recs[idx]) {
    a->recs[idx] = calloc(1, sizeof(aio_req));
    if (!a->recs[idx]) return NULL;
    a->recs[idx]->idx = idx;
  }
  a->nfree--;
  aio_req* r = a->recs[idx];
  uint32_t gen = r->gen + 1;
  if (gen == 0) gen = 1;
  memset(r, 0, sizeof *r);
  r->idx = idx;
  r->gen = gen;
  r->active = 1;
  r->ticket = ((uint64_t)gen << 32) | (uint32_t)idx;
  return r;
}

static void rec_retire(zp_aio* a, aio_req* r) {
  r->active = 0;
  a->freeidx[a->nfree++] = r->idx;
}

static aio_req* rec_lookup(zp_aio* a, uint64_t ticket) {
  uint32_t idx = (uint32_t)(ticket & 0xffffffffu), gen = (uint32_t)(ticket >> 32);
  if (ticket == 0 || idx >= (uint32_t)a->caprec) return NULL;
  aio_req* r = a->recs[idx];
  if (!r || !r->active || r->gen != gen) return NULL;
  return r;
}

static void pending_remove(zp_aio* a, aio_req* r) {
  if (!r->in_pending) return;
  aio_req* prev = NULL;
  for (aio_req* p = a->pend_head; p; prev = p, p = p->next) {
    if (p != r) continue;
    if (prev) prev->next = p->next;
    else a->pend_head = p->next;
    if (a->pend_tail == p) a->pend_tail = prev;
    break;
  }
  r->next = NULL;
  r->in_pending = 0;
}

static void maybe_done(zp_aio* a, aio_req* r) {
  if (r->done || r->outstanding > 0) return;
  if (!r->err && r->issued < r->len) return;
  r->done = 1;
  a->undone--;
  if (r->err) a->st.failed++;
  else if (r->is_write) a->st.writes++;
  else a->st.reads++;
  pthread_cond_broadcast(&a->done_cv);
}

/* Takes the next operation from the pending FIFO (mutex held); 0 when there is none. */
static int take_op(zp_aio* a, aio_req** rp, char** buf, uint64_t* off, size_t* len) {
  aio_req* r = a->pend_head;
  if (!r) return 0;
  uint64_t left = r->len - r->issued;
  size_t n = left < a->block ? (size_t)left : a->block;
  *rp = r;
  *buf = r->buf + r->issued;
  *off = r->off + r->issued;
  *len = n;
  r->issued += n;
  r->outstanding++;
  a->inflight++;
  if (r->issued == r->len) pending_remove(a, r);
  return 1;
}

/* One operation finished (mutex held). err: positive errno or 0; eof: read returned 0. */
static void op_done(zp_aio* a, aio_req* r, int err, int eof, uint64_t off, size_t len, size_t moved) {
  r->outstanding--;
  a->inflight--;
  if (err || eof) {
    if (!r->err) {
      r->err = eof ? EIO : err;
      r->err_eof = eof;
      r->err_off = off;
      r->err_len = len;
      r->err_moved = moved;
    }
    pending_remove(a, r); /* its remaining operations are not issued */
  } else {
    if (r->is_write) { a->st.write_ops++; a->st.bytes_written += len; }
    else { a->st.read_ops++; a->st.bytes_read += len; }
  }
  maybe_done(a, r);
}

/* Fault injection: does an operation of this direction over [off, off+len) cover the configured
 * EIO offset? */
static int fault_eio_hits(const zp_aio* a, uint64_t off, size_t len, int is_write) {
  if (a->fault_eio_dir && a->fault_eio_dir != (is_write ? 2 : 1)) return 0;
  return a->fault_eio_at >= 0 && (uint64_t)a->fault_eio_at >= off && (uint64_t)a->fault_eio_at < off + len;
}
/* Length of the next transfer attempt of an operation with `left` bytes left. */
static size_t attempt_len(const zp_aio* a, size_t left) {
  if (!a->fault_short || left <= ZP_AIO_ALIGN) return left;
  size_t h = (left / 2) & ~(size_t)(ZP_AIO_ALIGN - 1);
  return h < ZP_AIO_ALIGN ? ZP_AIO_ALIGN : h;
}

/* ---------------------------------------------------------------- threads backend */

static void* worker_main(void* p) {
  zp_aio* a = p;
  pthread_mutex_lock(&a->mu);
  for (;;) {
    while (!a->stop && !a->pend_head) pthread_cond_wait(&a->work_cv, &a->mu);
    if (!a->pend_head) break; /* stop and nothing left */
    aio_req* r;
    char* buf;
    uint64_t off;
    size_t len;
    take_op(a, &r, &buf, &off, &len);
    int is_write = r->is_write;
    pthread_mutex_unlock(&a->mu);

    size_t moved = 0;
    int err = 0, eof = 0, attempts = 0, retries = 0;
    uint64_t resumed = 0;
    if (fault_eio_hits(a, off, len, is_write)) err = EIO;
    while (!err && moved < len) {
      size_t want = attempt_len(a, len - moved);
      ssize_t n;
      if (a->fault_eintr && attempts++ == 0) {
        n = -1;
        errno = EINTR;
      } else {
        n = is_write ? pwrite(a->fd, buf + moved, want, (off_t)(off + moved))
                     : pread(a->fd, buf + moved, want, (off_t)(off + moved));
      }
      if (n < 0) {
        if (errno == EINTR || errno == EAGAIN) {
          resumed++;
          if (errno == EAGAIN) {
            if (++retries > AIO_RETRY_MAX) { err = EAGAIN; break; }
            sched_yield();
          }
          continue;
        }
        err = errno;
        break;
      }
      if (n == 0) {
        if (is_write) err = EIO; /* a write that moves nothing would loop forever */
        else eof = 1;
        break;
      }
      moved += (size_t)n;
      if (moved < len) resumed++;
    }

    pthread_mutex_lock(&a->mu);
    a->st.resumed += resumed;
    op_done(a, r, err, eof, off, len, moved);
  }
  pthread_mutex_unlock(&a->mu);
  return NULL;
}

static int threads_start(zp_aio* a, char* err, size_t errlen) {
  int n = a->qd < AIO_MAX_THREADS ? a->qd : AIO_MAX_THREADS;
  a->threads = calloc((size_t)n, sizeof(pthread_t));
  if (!a->threads) { seterr(err, errlen, "%s: out of memory for %d I/O threads", a->path, n); return -ENOMEM; }
  for (int i = 0; i < n; i++) {
    int rc = pthread_create(&a->threads[i], NULL, worker_main, a);
    if (rc) {
      seterr(err, errlen, "%s: cannot start I/O thread %d of %d: %s", a->path, i + 1, n, strerror(rc));
      return -rc;
    }
    a->nthreads++;
  }
  return 0;
}

/* ---------------------------------------------------------------- io_uring backend */
#ifdef ZP_HAVE_URING
static void uring_prep(zp_aio* a, int si) {
  aio_slot* s = &a->slots[si];
  struct io_uring_sqe* sqe = io_uring_get_sqe(&a->ring);
  /* cannot be NULL: the ring has >= queue_depth entries and each slot owns at most one */
  size_t n = attempt_len(a, s->len - s->moved);
  if (s->req->is_write) io_uring_prep_write(sqe, a->fd, s->buf + s->moved, (unsigned)n, s->off + s->moved);
  else io_uring_prep_read(sqe, a->fd, s->buf + s->moved, (unsigned)n, s->off + s->moved);
  io_uring_sqe_set_data64(sqe, (uint64_t)si + 1);
}

/* Fails every operation in flight (mutex held): the ring is unusable. */
static void uring_fail_all(zp_aio* a, int e, const char* what) {
  if (!a->fatal) {
    a->fatal = e;
    snprintf(a->fatal_msg, sizeof a->fatal_msg, "%s: %s (%s)", what, strerror(e), zp_aio_errno_name(e));
  }
  for (int i = 0; i < a->qd; i++) {
    aio_slot* s = &a->slots[i];
    if (!s->in_use) continue;
    s->in_use = 0;
    a->freeslot[a->nfreeslot++] = i;
    op_done(a, s->req, e, 0, s->off, s->len, s->moved);
  }
  while (a->pend_head) {
    aio_req* r = a->pend_head;
    pending_remove(a, r);
    if (!r->err) { r->err = e; r->err_off = r->off + r->issued; r->err_len = r->len - r->issued; }
    maybe_done(a, r);
  }
}

static void uring_submit(zp_aio* a) {
  for (int tries = 0;; tries++) {
    int rc = io_uring_submit(&a->ring);
    if (rc >= 0) return;
    if ((rc == -EINTR || rc == -EAGAIN || rc == -EBUSY) && tries < 1000) {
      if (rc != -EINTR) {
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
      }
      continue;
    }
    uring_fail_all(a, -rc, "io_uring_submit failed");
    return;
  }
}

/* Moves pending work into free slots and submits (mutex held). */
static void uring_fill(zp_aio* a, int resubmitted) {
  int n = resubmitted;
  while (!a->fatal && a->nfreeslot > 0 && a->pend_head) {
    int si = a->freeslot[--a->nfreeslot];
    aio_slot* s = &a->slots[si];
    take_op(a, &s->req, &s->buf, &s->off, &s->len);
    s->moved = 0;
    s->attempts = 0;
    s->in_use = 1;
    uring_prep(a, si);
    n++;
  }
  if (n && !a->fatal) uring_submit(a);
}

/* One completion (mutex held); returns 1 when the slot's operation was resubmitted. */
static int uring_complete(zp_aio* a, int si, int res) {
  aio_slot* s = &a->slots[si];
  if (s->attempts++ == 0) {
    if (a->fault_eintr) res = -EINTR;
    else if (fault_eio_hits(a, s->off, s->len, s->req->is_write)) res = -EIO;
  }
  if (res == -EINTR || res == -EAGAIN) {
    a->st.resumed++;
    uring_prep(a, si);
    return 1;
  }
  int err = 0, eof = 0;
  if (res < 0) err = -res;
  else if (res == 0) {
    if (s->req->is_write) err = EIO;
    else eof = 1;
  } else {
    s->moved += (size_t)res;
    if (s->moved < s->len) {
      a->st.resumed++;
      uring_prep(a, si);
      return 1;
    }
  }
  s->in_use = 0;
  a->freeslot[a->nfreeslot++] = si;
  op_done(a, s->req, err, eof, s->off, s->len, s->moved);
  return 0;
}

static void* reaper_main(void* p) {
  zp_aio* a = p;
  for (;;) {
    struct io_uring_cqe* cqe;
    int rc = io_uring_wait_cqe(&a->ring, &cqe);
    if (rc == -EINTR || rc == -EAGAIN) continue;
    pthread_mutex_lock(&a->mu);
    if (rc < 0) {
      uring_fail_all(a, -rc, "io_uring_wait_cqe failed");
      pthread_mutex_unlock(&a->mu);
      return NULL;
    }
    unsigned head, seen = 0;
    int stop = 0, resub = 0;
    io_uring_for_each_cqe(&a->ring, head, cqe) {
      seen++;
      uint64_t ud = io_uring_cqe_get_data64(cqe);
      if (ud == AIO_STOP_UD) stop = 1;
      else if (ud >= 1 && ud <= (uint64_t)a->qd) resub += uring_complete(a, (int)(ud - 1), cqe->res);
    }
    io_uring_cq_advance(&a->ring, seen);
    if (!stop) uring_fill(a, resub);
    pthread_mutex_unlock(&a->mu);
    if (stop) return NULL;
  }
}

/* Sets up the ring; on failure returns the negative errno and fills why. */
static int uring_start(zp_aio* a, char* why, size_t whylen) {
  const char* fake = getenv("ZP_AIO_NO_URING");
  if (fake && *fake && strcmp(fake, "0") != 0) {
    snprintf(why, whylen, "io_uring_queue_init failed: %s (simulated by ZP_AIO_NO_URING=%s)", strerror(EPERM), fake);
    return -EPERM;
  }
  int rc = io_uring_queue_init((unsigned)a->qd, &a->ring, 0);
  if (rc < 0) {
    snprintf(why, whylen, "io_uring_queue_init failed: %s (%s)%s", strerror(-rc), zp_aio_errno_name(-rc),
             (rc == -EPERM || rc == -ENOSYS || rc == -EACCES)
                 ? ": blocked by a seccomp filter or kernel.io_uring_disabled, or the kernel lacks io_uring"
                 : "");
    return rc;
  }
  struct io_uring_probe* pr = io_uring_get_probe_ring(&a->ring);
  int ok = pr && io_uring_opcode_supported(pr, IORING_OP_READ) && io_uring_opcode_supported(pr, IORING_OP_WRITE);
  if (pr) io_uring_free_probe(pr);
  if (!ok) {
    io_uring_queue_exit(&a->ring);
    snprintf(why, whylen, "the kernel's io_uring lacks IORING_OP_READ/WRITE (Linux < 5.6)");
    return -EOPNOTSUPP;
  }
  a->ring_ok = 1;
  a->slots = calloc((size_t)a->qd, sizeof(aio_slot));
  a->freeslot = calloc((size_t)a->qd, sizeof(int));
  if (!a->slots || !a->freeslot) {
    snprintf(why, whylen, "out of memory for %d I/O slots", a->qd);
    return -ENOMEM;
  }
  for (int i = a->qd - 1; i >= 0; i--) a->freeslot[a->nfreeslot++] = i;
  rc = pthread_create(&a->reaper, NULL, reaper_main, a);
  if (rc) {
    snprintf(why, whylen, "cannot start the io_uring completion thread: %s", strerror(rc));
    return -rc;
  }
  a->reaper_started = 1;
  return 0;
}

static void uring_stop(zp_aio* a) {
  if (a->reaper_started) {
    pthread_mutex_lock(&a->mu);
    struct io_uring_sqe* sqe = io_uring_get_sqe(&a->ring);
    if (sqe) {
      io_uring_prep_nop(sqe);
      io_uring_sqe_set_data64(sqe, AIO_STOP_UD);
      io_uring_submit(&a->ring);
    }
    pthread_mutex_unlock(&a->mu);
    pthread_join(a->reaper, NULL);
    a->reaper_started = 0;
  }
  if (a->ring_ok) io_uring_queue_exit(&a->ring);
  a->ring_ok = 0;
}
#endif

/* ---------------------------------------------------------------- open / close */

static int prealloc(zp_aio* a, const zp_aio_opts* o, char* err, size_t errlen) {
  struct stat st;
  if (fstat(a->fd, &st) != 0) {
    seterr(err, errlen, "%s: fstat: %s", a->path, strerror(errno));
    return -errno;
  }
  if (!S_ISREG(st.st_mode)) {
    seterr(err, errlen, "%s: not a regular file (the NVMe engine needs a file on a filesystem)", a->path);
    return -EINVAL;
  }
  uint64_t have = (uint64_t)st.st_blocks * 512u;
  uint64_t need = a->size > have ? a->size - have : 0;
  struct statvfs vs;
  uint64_t avail = 0;
  int vs_ok = fstatvfs(a->fd, &vs) == 0;
  if (vs_ok) avail = (uint64_t)vs.f_bavail * (uint64_t)vs.f_frsize;
  if (!o->sparse && vs_ok && need > avail) {
    char h1[32], h2[32];
    seterr(err, errlen,
           "%s: not enough space for a %" PRIu64 "-byte file (ENOSPC): it needs %" PRIu64 " more bytes (%s), the "
           "filesystem has %" PRIu64 " bytes (%s) free",
           a->path, a->size, need, human(h1, sizeof h1, need), avail, human(h2, sizeof h2, avail));
    return -ENOSPC;
  }
  if (o->sparse) {
    if ((uint64_t)st.st_size < a->size && ftruncate(a->fd, (off_t)a->size) != 0) {
      int e = errno;
      seterr(err, errlen, "%s: ftruncate to %" PRIu64 " bytes: %s (%s)", a->path, a->size, strerror(e), zp_aio_errno_name(e));
      return -e;
    }
    return 0;
  }
  int rc;
  do rc = fallocate(a->fd, 0, 0, (off_t)a->size);
  while (rc != 0 && errno == EINTR);
  if (rc == 0) {
    a->preallocated = 1;
    return 0;
  }
  int e = errno;
  if (e == ENOSPC || e == EDQUOT) {
    if (fstatvfs(a->fd, &vs) == 0) avail = (uint64_t)vs.f_bavail * (uint64_t)vs.f_frsize;
    char h1[32], h2[32];
    seterr(err, errlen,
           "%s: preallocating %" PRIu64 " bytes failed: %s (%s): it needs %" PRIu64 " more bytes (%s), the "
           "filesystem has %" PRIu64 " bytes (%s) free",
           a->path, a->size, strerror(e), zp_aio_errno_name(e), need, human(h1, sizeof h1, need), avail, human(h2, sizeof h2, avail));
    return -e;
  }
  if (e == EOPNOTSUPP || e == ENOSYS) {
    if ((uint64_t)st.st_size < a->size && ftruncate(a->fd, (off_t)a->size) != 0) {
      e = errno;
      seterr(err, errlen, "%s: ftruncate to %" PRIu64 " bytes: %s (%s)", a->path, a->size, strerror(e), zp_aio_errno_name(e));
      return -e;
    }
    char m[4400];
    snprintf(m, sizeof m, "%s: the filesystem cannot preallocate (fallocate: %s): a full disk will show up as write errors", a->path, strerror(e));
    note(o, m);
    return 0;
  }
  seterr(err, errlen, "%s: fallocate of %" PRIu64 " bytes: %s (%s)", a->path, a->size, strerror(e), zp_aio_errno_name(e));
  return -e;
}

static void parse_faults(zp_aio* a) {
  a->fault_eio_at = -1;
  const char* f = getenv("ZP_AIO_FAULT");
  if (!f || !*f) return;
  if (strcmp(f, "short") == 0) a->fault_short = 1;
  else if (strcmp(f, "eintr") == 0) a->fault_eintr = 1;
  else if (strncmp(f, "eio@", 4) == 0) a->fault_eio_at = strtoll(f + 4, NULL, 0);
  else if (strncmp(f, "eio_read@", 9) == 0) a->fault_eio_at = strtoll(f + 9, NULL, 0), a->fault_eio_dir = 1;
  else if (strncmp(f, "eio_write@", 10) == 0) a->fault_eio_at = strtoll(f + 10, NULL, 0), a->fault_eio_dir = 2;
  else if (strcmp(f, "open_einval") == 0) a->fault_open_einval = 1;
}

static void engine_free(zp_aio* a) {
  for (int i = 0; i < a->caprec; i++) free(a->recs[i]);
  free(a->recs);
  free(a->freeidx);
  free(a->threads);
  free(a->slots);
  free(a->freeslot);
  free(a->bufmem);
  pthread_mutex_destroy(&a->mu);
  pthread_cond_destroy(&a->work_cv);
  pthread_cond_destroy(&a->done_cv);
  free(a);
}

static void backend_stop(zp_aio* a) {
  if (a->nthreads) {
    pthread_mutex_lock(&a->mu);
    a->stop = 1;
    pthread_cond_broadcast(&a->work_cv);
    pthread_mutex_unlock(&a->mu);
    for (int i = 0; i < a->nthreads; i++) pthread_join(a->threads[i], NULL);
    a->nthreads = 0;
  }
#ifdef ZP_HAVE_URING
  uring_stop(a);
#endif
}

int zp_aio_open(zp_aio** out, const char* path, uint64_t bytes, const zp_aio_opts* opts, char* err, size_t errlen) {
  *out = NULL;
  zp_aio_opts o;
  if (opts) o = *opts;
  else memset(&o, 0, sizeof o);
  if (!o.queue_depth) o.queue_depth = 32;
  if (!o.block_size) o.block_size = 1u << 20;
  if (!o.buffer_count) o.buffer_count = 4;
  if (o.buffer_count < 0) o.buffer_count = 0;
  if (!path || !*path) { seterr(err, errlen, "NVMe engine: empty file path"); return -EINVAL; }
  if (strlen(path) >= sizeof(((zp_aio*)0)->path)) { seterr(err, errlen, "NVMe engine: path too long: %.200s...", path); return -ENAMETOOLONG; }
  if (o.queue_depth < 1 || o.queue_depth > 4096) {
    seterr(err, errlen, "%s: queue_depth = %d is out of range [1, 4096]", path, o.queue_depth);
    return -EINVAL;
  }
  if (o.block_size % ZP_AIO_ALIGN || o.block_size > (1u << 30)) {
    seterr(err, errlen, "%s: block_size = %zu must be a multiple of %u (O_DIRECT) and at most 1 GiB", path, o.block_size, ZP_AIO_ALIGN);
    return -EINVAL;
  }
  if (o.buffer_count > 1024) {
    seterr(err, errlen, "%s: buffer_count = %d is out of range [0, 1024]", path, o.buffer_count);
    return -EINVAL;
  }
  if (!o.buffer_size && o.buffer_count)
    o.buffer_size = o.block_size * (size_t)((o.queue_depth + o.buffer_count - 1) / o.buffer_count);
  if (o.buffer_size % ZP_AIO_ALIGN) {
    seterr(err, errlen, "%s: buffer_size = %zu must be a multiple of %u", path, o.buffer_size, ZP_AIO_ALIGN);
    return -EINVAL;
  }
  if (o.direct < ZP_AIO_DIRECT_REQUIRE || o.direct > ZP_AIO_DIRECT_OFF) {
    seterr(err, errlen, "%s: unknown direct mode %d", path, o.direct);
    return -EINVAL;
  }
  if (bytes == 0 || bytes > (UINT64_MAX >> 2)) {
    seterr(err, errlen, "%s: file size %" PRIu64 " bytes is out of range", path, bytes);
    return -EINVAL;
  }

  zp_aio* a = calloc(1, sizeof *a);
  if (!a) { seterr(err, errlen, "%s: out of memory", path); return -ENOMEM; }
  pthread_mutex_init(&a->mu, NULL);
  pthread_cond_init(&a->work_cv, NULL);
  pthread_cond_init(&a->done_cv, NULL);
  snprintf(a->path, sizeof a->path, "%s", path);
  a->fd = -1;
  a->size = (bytes + ZP_AIO_ALIGN - 1) & ~(uint64_t)(ZP_AIO_ALIGN - 1);
  a->qd = o.queue_depth;
  a->block = o.block_size;
  a->nbuf = o.buffer_count;
  a->bufsize = o.buffer_count ? o.buffer_size : 0;
  a->remove = o.remove;
  parse_faults(a);

  /* open; a filesystem that refuses O_DIRECT (EINVAL) or keeps files in memory (tmpfs,
   * ramfs: O_DIRECT is accepted there by recent kernels but bypasses nothing) is an error
   * under ZP_AIO_DIRECT_REQUIRE and the page cache under ZP_AIO_DIRECT_PREFER */
  struct stat st0;
  int existed = stat(path, &st0) == 0;
  int want_direct = o.direct != ZP_AIO_DIRECT_OFF;
  int rc = 0;
  char cache_note[256] = "";
  if (o.direct == ZP_AIO_DIRECT_OFF) snprintf(cache_note, sizeof cache_note, "page cache: O_DIRECT off by request");
  for (;;) {
    int fl = O_RDWR | O_CLOEXEC | O_CREAT | (want_direct ? O_DIRECT : 0);
    if (want_direct && a->fault_open_einval) {
      a->fd = -1;
      errno = EINVAL;
    } else {
      a->fd = open(path, fl, 0600);
    }
    const char* fsn = NULL;
    if (a->fd >= 0) {
      struct statfs sf;
      if (want_direct && fstatfs(a->fd, &sf) == 0 &&
          ((unsigned long)sf.f_type == TMPFS_MAGIC_ || (unsigned long)sf.f_type == RAMFS_MAGIC_))
        fsn = fs_name((long)sf.f_type);
      if (!fsn) break;
      close(a->fd);
      a->fd = -1;
      if (o.direct == ZP_AIO_DIRECT_REQUIRE) {
        seterr(err, errlen,
               "%s: the file is on %s, which keeps files in memory: O_DIRECT cannot bypass a page cache "
               "there (older kernels refuse it with EINVAL): put the file on a real disk (ext4/xfs on "
               "NVMe), or ask for buffered I/O (direct mode off)",
               path, fsn);
        if (!existed) unlink(path);
        engine_free(a);
        return -EINVAL;
      }
      snprintf(cache_note, sizeof cache_note, "page cache: %s keeps files in memory", fsn);
      want_direct = 0;
      continue;
    }
    int e = errno;
    if (e == EINVAL && want_direct) {
      char dir[4096];
      snprintf(dir, sizeof dir, "%s", path);
      char* sl = strrchr(dir, '/');
      if (!sl) snprintf(dir, sizeof dir, ".");
      else if (sl == dir) sl[1] = 0;
      else *sl = 0;
      struct statfs sf;
      fsn = statfs(dir, &sf) == 0 ? fs_name((long)sf.f_type) : NULL;
      if (o.direct == ZP_AIO_DIRECT_REQUIRE) {
        seterr(err, errlen,
               "%s: %s refuses O_DIRECT (open: EINVAL), so the page cache cannot be bypassed: put the "
               "file on a real disk (ext4/xfs on NVMe), or ask for buffered I/O (direct mode off)",
               path, fsn ? fsn : "the filesystem");
        if (!existed) unlink(path);
        engine_free(a);
        return -EINVAL;
      }
      snprintf(cache_note, sizeof cache_note, "page cache: %s refuses O_DIRECT (EINVAL)", fsn ? fsn : "the filesystem");
      want_direct = 0;
      continue;
    }
    seterr(err, errlen, "%s: cannot open: %s (%s)", path, strerror(e), zp_aio_errno_name(e));
    engine_free(a);
    return -e;
  }
  int created = !existed;
  int fl = fcntl(a->fd, F_GETFL);
  a->direct_in_use = want_direct && fl >= 0 && (fl & O_DIRECT) != 0;
  if (want_direct && !a->direct_in_use)
    snprintf(cache_note, sizeof cache_note, "page cache: O_DIRECT was asked for but F_GETFL does not show it");

  rc = prealloc(a, &o, err, errlen);
  if (rc == 0 && a->nbuf) {
    if ((size_t)a->nbuf > SIZE_MAX / a->bufsize || posix_memalign((void**)&a->bufmem, ZP_AIO_ALIGN, (size_t)a->nbuf * a->bufsize) != 0) {
      seterr(err, errlen, "%s: cannot allocate %d staging buffers of %zu bytes", path, a->nbuf, a->bufsize);
      a->bufmem = NULL;
      rc = -ENOMEM;
    }
  }
  if (rc == 0 && o.remove == ZP_AIO_REMOVE_AT_OPEN) unlink(path);

  /* backend */
  char why[400] = "";
  if (rc == 0) {
    int use_uring = 0;
#ifdef ZP_HAVE_URING
    if (o.force_threads) snprintf(why, sizeof why, "threads forced by the caller (force_threads)");
    else {
      int urc = uring_start(a, why, sizeof why);
      if (urc == 0) use_uring = 1;
      else {
        if (a->reaper_started || a->ring_ok) uring_stop(a);
        free(a->slots); a->slots = NULL;
        free(a->freeslot); a->freeslot = NULL;
        a->nfreeslot = 0;
        static int told; /* say it once per process */
        if (!__atomic_exchange_n(&told, 1, __ATOMIC_RELAXED)) {
          char m[512];
          snprintf(m, sizeof m, "io_uring unavailable (%s): using a pread/pwrite thread pool", why);
          note(&o, m);
        }
      }
    }
#else
    snprintf(why, sizeof why, "%s", o.force_threads ? "threads forced by the caller (force_threads)" : "built without liburing");
    if (!o.force_threads) {
      static int told;
      if (!__atomic_exchange_n(&told, 1, __ATOMIC_RELAXED)) note(&o, "io_uring unavailable (built without liburing): using a pread/pwrite thread pool");
    }
#endif
    a->uring = use_uring;
    if (!use_uring) rc = threads_start(a, err, errlen);
  }
  if (rc != 0) {
    backend_stop(a);
    close(a->fd);
    if (created || o.remove == ZP_AIO_REMOVE_AT_OPEN) unlink(path);
    engine_free(a);
    return rc;
  }
  const char* dio = a->direct_in_use ? "O_DIRECT" : cache_note;
  const char* pre = a->preallocated ? "" : (o.sparse ? ", sparse" : ", not preallocated");
  if (a->uring) snprintf(a->backend, sizeof a->backend, "io_uring (%s%s)", dio, pre);
  else if (o.force_threads) snprintf(a->backend, sizeof a->backend, "threads pread/pwrite (%s%s); %s", dio, pre, why);
  else snprintf(a->backend, sizeof a->backend, "threads pread/pwrite (%s%s); io_uring unavailable: %s", dio, pre, why);
  *out = a;
  return 0;
}

int zp_aio_close(zp_aio* a, char* err, size_t errlen) {
  if (!a) return 0;
  int rc = zp_aio_drain(a, err, errlen);
  backend_stop(a);
  if (a->fd >= 0 && close(a->fd) != 0 && rc == 0) {
    int e = errno;
    seterr(err, errlen, "%s: close: %s (%s)", a->path, strerror(e), zp_aio_errno_name(e));
    rc = -e;
  }
  if (a->remove == ZP_AIO_REMOVE_ON_CLOSE) unlink(a->path);
  engine_free(a);
  return rc;
}

/* ---------------------------------------------------------------- requests */

static int submit(zp_aio* a, int is_write, void* buf, uint64_t off, size_t len, uint64_t* ticket, char* err, size_t errlen) {
  const char* op = is_write ? "write" : "read";
  if (ticket) *ticket = 0;
  if (!a || !buf || !ticket) { seterr(err, errlen, "NVMe engine: %s with a NULL engine, buffer or ticket", op); return -EINVAL; }
  if (!is_aligned((uintptr_t)buf) || !is_aligned(off) || !is_aligned(len) || len == 0) {
    seterr(err, errlen,
           "%s: %s of %zu bytes at offset %" PRIu64 " from buffer %p rejected: buffer address, offset and length "
           "must be non-zero multiples of %u (O_DIRECT; use zp_aio_buffer or zp_aio_alloc_aligned)",
           a->path, op, len, off, buf, ZP_AIO_ALIGN);
    return -EINVAL;
  }
  if (off > a->size || len > a->size - off) {
    seterr(err, errlen, "%s: %s of %zu bytes at offset %" PRIu64 " rejected: past the end of the %" PRIu64 "-byte file",
           a->path, op, len, off, a->size);
    return -EINVAL;
  }
  pthread_mutex_lock(&a->mu);
  if (a->fatal) {
    seterr(err, errlen, "%s: %s rejected: the I/O engine has failed: %s", a->path, op, a->fatal_msg);
    int e = a->fatal;
    pthread_mutex_unlock(&a->mu);
    return -e;
  }
  aio_req* r = rec_alloc(a);
  if (!r) {
    pthread_mutex_unlock(&a->mu);
    seterr(err, errlen, "%s: out of memory for a request record", a->path);
    return -ENOMEM;
  }
  r->is_write = is_write;
  r->buf = buf;
  r->off = off;
  r->len = len;
  r->in_pending = 1;
  r->seq = ++a->seq;
  if (a->pend_tail) a->pend_tail->next = r;
  else a->pend_head = r;
  a->pend_tail = r;
  a->undone++;
  *ticket = r->ticket;
#ifdef ZP_HAVE_URING
  if (a->uring) uring_fill(a, 0);
  else
#endif
  {
    if (len > a->block) pthread_cond_broadcast(&a->work_cv);
    else pthread_cond_signal(&a->work_cv);
  }
  pthread_mutex_unlock(&a->mu);
  return 0;
}

int zp_aio_submit_read(zp_aio* a, void* buf, uint64_t off, size_t len, uint64_t* ticket, char* err, size_t errlen) {
  return submit(a, 0, buf, off, len, ticket, err, errlen);
}
int zp_aio_submit_write(zp_aio* a, const void* buf, uint64_t off, size_t len, uint64_t* ticket, char* err,
                        size_t errlen) {
  return submit(a, 1, (void*)buf, off, len, ticket, err, errlen);
}

int zp_aio_wait(zp_aio* a, uint64_t ticket, char* err, size_t errlen) {
  if (!a) { seterr(err, errlen, "NVMe engine: wait on a NULL engine"); return -EINVAL; }
  pthread_mutex_lock(&a->mu);
  aio_req* r;
  /* looked up again after every wake-up: another thread may have retired the ticket (a wait
   * on the same ticket, a drain) and its record may already serve a newer request */
  while ((r = rec_lookup(a, ticket)) != NULL && !r->done) pthread_cond_wait(&a->done_cv, &a->mu);
  if (!r) {
    pthread_mutex_unlock(&a->mu);
    seterr(err, errlen, "%s: wait on ticket %#" PRIx64 ", which is unknown or already retired", a->path, ticket);
    return -EINVAL;
  }
  int rc = 0;
  if (r->err) {
    describe_failure(a, r, err, errlen);
    rc = -r->err;
  }
  rec_retire(a, r);
  pthread_mutex_unlock(&a->mu);
  return rc;
}

int zp_aio_test(zp_aio* a, uint64_t ticket) {
  if (!a) return -EINVAL;
  pthread_mutex_lock(&a->mu);
  aio_req* r = rec_lookup(a, ticket);
  int rc = r ? r->done : -EINVAL;
  pthread_mutex_unlock(&a->mu);
  return rc;
}

int zp_aio_drain(zp_aio* a, char* err, size_t errlen) {
  if (!a) return 0;
  pthread_mutex_lock(&a->mu);
  while (a->undone > 0) pthread_cond_wait(&a->done_cv, &a->mu);
  aio_req* first = NULL;
  int nfail = 0;
  for (int i = 0; i < a->caprec; i++) {
    aio_req* r = a->recs[i];
    if (!r || !r->active || !r->err) continue;
    nfail++;
    if (!first || r->seq < first->seq) first = r;
  }
  int rc = 0;
  if (first) {
    char m[1024];
    describe_failure(a, first, m, sizeof m);
    if (nfail > 1) seterr(err, errlen, "%s (and %d more failed requests)", m, nfail - 1);
    else seterr(err, errlen, "%s", m);
    rc = -first->err;
  }
  for (int i = 0; i < a->caprec; i++) {
    aio_req* r = a->recs[i];
    if (r && r->active) rec_retire(a, r);
  }
  pthread_mutex_unlock(&a->mu);
  return rc;
}

/* ---------------------------------------------------------------- accessors */

void* zp_aio_buffer(zp_aio* a, int i) {
  if (!a || i < 0 || i >= a->nbuf) return NULL;
  return a->bufmem + (size_t)i * a->bufsize;
}
size_t zp_aio_buffer_size(const zp_aio* a) { return a ? a->bufsize : 0; }
const char* zp_aio_backend(const zp_aio* a) { return a ? a->backend : "(none)"; }
int zp_aio_is_uring(const zp_aio* a) { return a ? a->uring : 0; }
int zp_aio_is_direct(const zp_aio* a) { return a ? a->direct_in_use : 0; }
int zp_aio_is_preallocated(const zp_aio* a) { return a ? a->preallocated : 0; }
uint64_t zp_aio_size(const zp_aio* a) { return a ? a->size : 0; }
int zp_aio_queue_depth(const zp_aio* a) { return a ? a->qd : 0; }
size_t zp_aio_block_size(const zp_aio* a) { return a ? a->block : 0; }
int zp_aio_buffer_count(const zp_aio* a) { return a ? a->nbuf : 0; }
void zp_aio_get_stats(zp_aio* a, zp_aio_stats* s) {
  memset(s, 0, sizeof *s);
  if (!a) return;
  pthread_mutex_lock(&a->mu);
  *s = a->st;
  pthread_mutex_unlock(&a->mu);
}
