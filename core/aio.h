/* aio.h: the NVMe I/O engine of zeroplace: one file, read and written asynchronously with
 * O_DIRECT through io_uring, or through a pread/pwrite thread pool where io_uring is not
 * available. Used by the offload_nvme tier plugin and by `zp nvme-bench` (docs/nvme.md).
 *
 * Invariants:
 *  - core/aio.c is self-contained (libc, pthreads, and liburing when ZP_HAVE_URING is
 *    defined): it can be compiled into a plugin that never links against the core. It never
 *    prints except through zp_aio_opts.log (stderr when NULL), once per process, to say that
 *    io_uring is not used and why.
 *  - Every request is aligned: buffer address, file offset and length are multiples of
 *    ZP_AIO_ALIGN (4096) and the range lies inside the engine's file size. Anything else is
 *    rejected at submit time with -EINVAL and a message; nothing is silently bounced through
 *    a copy. This holds with and without O_DIRECT, so code tested on tmpfs stays valid on NVMe.
 *  - A request longer than block_size is split into block_size operations; at most
 *    queue_depth operations are in flight at once (over all requests). Short transfers and
 *    EINTR/EAGAIN are resumed; any other error fails the request and is reported by
 *    zp_aio_wait/zp_aio_drain with strerror, errno name, file, offset and length.
 *  - Requests progress in the background (io_uring: a completion thread; threads backend: the
 *    workers), so work submitted before a computation overlaps with it.
 *  - Every ticket is retired exactly once: by zp_aio_wait on it, or by zp_aio_drain (which
 *    retires all outstanding tickets). Buffers of a request must stay valid until then.
 *  - All functions are thread-safe, except zp_aio_close, which must be the last call.
 *
 * Return values: 0 on success, or a negative errno (-EINVAL bad arguments, -ENOSPC, -EIO, ...)
 * with a one-line message in err (when err is not NULL). */
#ifndef ZP_AIO_H
#define ZP_AIO_H
#include <stddef.h>
#include <stdint.h>

#define ZP_AIO_ALIGN 4096u

/* What to do about O_DIRECT (the page cache is bypassed only with it). */
enum {
  ZP_AIO_DIRECT_REQUIRE = 0, /* default: open with O_DIRECT; a filesystem that refuses it
                                (EINVAL, e.g. tmpfs) is an error that says so */
  ZP_AIO_DIRECT_PREFER = 1,  /* try O_DIRECT; where refused, use the page cache (noted in
                                zp_aio_backend and zp_aio_is_direct() == 0) */
  ZP_AIO_DIRECT_OFF = 2,     /* page cache (buffered I/O); alignment rules still apply */
};
/* When to remove the file. */
enum {
  ZP_AIO_KEEP = 0,            /* default: the file stays */
  ZP_AIO_REMOVE_ON_CLOSE = 1, /* unlink in zp_aio_close */
  ZP_AIO_REMOVE_AT_OPEN = 2,  /* unlink right after opening: the space is freed when the
                                 engine closes or the process dies (scratch files) */
};

/* Options. A zero-initialised struct (or NULL) means all defaults; zp_aio_opts_default fills
 * the same defaults explicitly. The config keys offload.{optimizer,param}.{queue_depth,
 * block_size,buffer_count} map onto the first three fields; `zp nvme-bench` measures them. */
typedef struct {
  int queue_depth;     /* operations in flight (0 -> 32); threads backend: one worker per
                          slot, at most 128 workers */
  size_t block_size;   /* largest single operation in bytes (0 -> 1 MiB); multiple of 4096 */
  int buffer_count;    /* staging buffers owned by the engine (0 -> 4; may be -1 for none) */
  size_t buffer_size;  /* bytes per staging buffer (0 -> block_size * ceil(queue_depth /
                          buffer_count), so that all buffers in flight fill the queue);
                          multiple of 4096 */
  int force_threads;   /* 1: use the thread pool even where io_uring works */
  int direct;          /* ZP_AIO_DIRECT_* (0 = REQUIRE) */
  int remove;          /* ZP_AIO_KEEP / ZP_AIO_REMOVE_* */
  int sparse;          /* 1: do not preallocate (ftruncate only); writes can then run out of
                          space later and fail with ENOSPC (reported by wait/drain) */
  void (*log)(void* ctx, const char* msg); /* notes (io_uring fallback, no fallocate); NULL:
                                              stderr */
  void* log_ctx;
} zp_aio_opts;

typedef struct zp_aio zp_aio;

/* Counters since open. A request counts once it has completed; ops are the block_size (or
 * smaller) operations it was split into. */
typedef struct {
  uint64_t reads, writes;               /* requests completed without error */
  uint64_t read_ops, write_ops;         /* operations completed without error */
  uint64_t bytes_read, bytes_written;   /* bytes of those operations */
  uint64_t failed;                      /* requests completed with an error */
  uint64_t resumed;                     /* short transfers / EINTR / EAGAIN that were resumed */
} zp_aio_stats;

void zp_aio_opts_default(zp_aio_opts* o);

/* Opens (creating it when absent, never truncating it) the regular file `path` and makes it
 * at least `bytes` long (rounded up to 4096), preallocated with fallocate unless o->sparse:
 * when the filesystem lacks the space the open fails HERE with -ENOSPC and a message giving
 * the bytes needed and the bytes free (statvfs). A file this call created is removed again
 * when the open fails. Then allocates the staging buffers and starts the backend:
 *   io_uring, unless o->force_threads, the build lacks liburing, ZP_AIO_NO_URING=1 is set in
 *   the environment (simulates a failing io_uring_queue_init), or io_uring_queue_init fails
 *   (seccomp, kernel.io_uring_disabled, old kernel): then the thread pool, with the reason in
 *   zp_aio_backend() and one note per process through o->log.
 * Fault injection for tests (environment, read at open): ZP_AIO_FAULT=short (every operation
 * transfers at most half of what is left, at least 4096 bytes), =eintr (the first attempt of
 * every operation returns EINTR), =eio@OFFSET (operations covering byte OFFSET fail with
 * EIO; =eio_read@OFFSET and =eio_write@OFFSET only reads / only writes), =open_einval
 * (opening with O_DIRECT fails with EINVAL, as on filesystems that refuse it). A file on
 * tmpfs/ramfs counts as refusing O_DIRECT (it bypasses nothing there). */
int zp_aio_open(zp_aio** out, const char* path, uint64_t bytes, const zp_aio_opts* o,
                char* err, size_t errlen);

/* Staging buffer i (0 <= i < buffer_count): zp_aio_buffer_size() bytes, 4096-aligned, owned
 * by the engine (freed at close); NULL when i is out of range. Callers may register them with
 * a device (e.g. cudaHostRegister) for pinned transfers. */
void* zp_aio_buffer(zp_aio* a, int i);
size_t zp_aio_buffer_size(const zp_aio* a);
/* 4096-aligned memory for requests from caller-owned buffers (size rounded up to 4096);
 * free with zp_aio_free_aligned. NULL when out of memory. */
void* zp_aio_alloc_aligned(size_t bytes);
void zp_aio_free_aligned(void* p);

/* Queue a read of len bytes at file offset off into buf (or a write from buf). Returns at
 * once with a ticket (never 0) unless the arguments are invalid (-EINVAL: alignment, bounds,
 * len 0) or the engine has failed. The request runs in the background. */
int zp_aio_submit_read(zp_aio* a, void* buf, uint64_t off, size_t len, uint64_t* ticket,
                       char* err, size_t errlen);
int zp_aio_submit_write(zp_aio* a, const void* buf, uint64_t off, size_t len,
                        uint64_t* ticket, char* err, size_t errlen);
/* Blocks until that request has completed and retires its ticket; returns its error (the first
 * failing operation, with file, offset, length, strerror and errno name). Tickets may be
 * waited in any order; an unknown or already retired ticket is -EINVAL (so when two threads
 * wait on one ticket, one gets the result and the other -EINVAL). */
int zp_aio_wait(zp_aio* a, uint64_t ticket, char* err, size_t errlen);
/* 1 when the request has completed (it still has to be waited), 0 while it runs, -EINVAL for
 * an unknown ticket. Never blocks. */
int zp_aio_test(zp_aio* a, uint64_t ticket);
/* Waits for every outstanding request and retires all tickets; returns the first error (by
 * ticket order) and says how many other requests failed. */
int zp_aio_drain(zp_aio* a, char* err, size_t errlen);

/* "io_uring (O_DIRECT)", "threads pread/pwrite (O_DIRECT); io_uring unavailable: ...", or with
 * "(page cache: ...)" when O_DIRECT is not in use, with the reason. */
const char* zp_aio_backend(const zp_aio* a);
int zp_aio_is_uring(const zp_aio* a);
/* 1 when the file descriptor really has O_DIRECT (checked with fcntl F_GETFL after open). */
int zp_aio_is_direct(const zp_aio* a);
int zp_aio_is_preallocated(const zp_aio* a);
uint64_t zp_aio_size(const zp_aio* a);          /* usable bytes: [0, size) */
int zp_aio_queue_depth(const zp_aio* a);
size_t zp_aio_block_size(const zp_aio* a);
int zp_aio_buffer_count(const zp_aio* a);
void zp_aio_get_stats(zp_aio* a, zp_aio_stats* s);
/* Short name of an errno value ("ENOSPC"); "errno N" for others (static or a thread-local
 * buffer). */
const char* zp_aio_errno_name(int e);

/* Drains (reporting errors of requests nobody waited for), stops the backend, closes the file,
 * removes it if asked, frees everything (also when it returns an error). NULL is a no-op. */
int zp_aio_close(zp_aio* a, char* err, size_t errlen);
#endif
