/* test_aio.c: the NVMe I/O engine (core/aio.c) on a real filesystem (never tmpfs: checked
 * with statfs; ZP_AIO_TEST_DIR overrides /tmp, the build directory is the fallback).
 * Checks: random data round-trips at many offsets/lengths through io_uring, the thread pool
 * (forced, and io_uring "failing" via ZP_AIO_NO_URING=1), at queue depth 1 and 32, with requests
 * split into block_size operations, waited in any order, stats exact; misaligned and out-of-range
 * requests rejected; injected short transfers / EINTR resumed, EIO reported with file, offset,
 * length; O_DIRECT really bypasses the page cache (/proc/self/io read_bytes), buffered does
 * not; tmpfs and a refused O_DIRECT are errors unless the page cache is allowed; a file larger
 * than the free space fails at open with ENOSPC and the numbers.
 * With ZP_AIO_SMALLFS=DIR (a small, otherwise empty filesystem: tests/integration/nvme_fs.sh)
 * also: disk full at open, preallocation surviving a full disk, and a sparse file whose
 * writes run out of space reported as ENOSPC. argv[1], when given, runs only the cases whose
 * name contains it. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "aio.h"
#include "zt.h"

#define MiB (1024u * 1024u)
enum { BE_URING, BE_THREADS, BE_NO_URING_ENV };

static char g_dir[4096];
static char g_err[4096];

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void) { /* splitmix64 */
  uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static void fill_random(void* p, size_t n) {
  uint64_t* q = p;
  for (size_t i = 0; i < n / 8; i++) q[i] = rnd();
}
static void shuffle(int* v, int n) {
  for (int i = n - 1; i > 0; i--) {
    int j = (int)(rnd() % (uint64_t)(i + 1)), t = v[i];
    v[i] = v[j];
    v[j] = t;
  }
}
static long long proc_io(const char* key) {
  FILE* f = fopen("/proc/self/io", "r");
  if (!f) return -1;
  char line[128];
  long long v = -1;
  size_t kl = strlen(key);
  while (fgets(line, sizeof line, f))
    if (strncmp(line, key, kl) == 0 && line[kl] == ':') v = atoll(line + kl + 1);
  fclose(f);
  return v;
}
static int is_mem_fs(const char* dir) {
  struct statfs sf;
  if (statfs(dir, &sf) != 0) return -1;
  return (unsigned long)sf.f_type == 0x01021994ul || (unsigned long)sf.f_type == 0x858458f6ul;
}
static void path_in(char* out, size_t n, const char* dir, const char* name) { snprintf(out, n, "%s/%s", dir, name); }
static int exists(const char* p) { return access(p, F_OK) == 0; }

static zp_aio_opts opts_for(int backend, int qd, size_t block) {
  zp_aio_opts o;
  zp_aio_opts_default(&o);
  o.queue_depth = qd;
  o.block_size = block;
  o.buffer_count = -1;
  o.force_threads = backend == BE_THREADS;
  return o;
}

static int open_be(zp_aio** a, int backend, const char* path, uint64_t bytes, const zp_aio_opts* o) {
  if (backend == BE_NO_URING_ENV) setenv("ZP_AIO_NO_URING", "1", 1);
  int rc = zp_aio_open(a, path, bytes, o, g_err, sizeof g_err);
  unsetenv("ZP_AIO_NO_URING");
  CHECK_MSG(rc == 0, "open %s: %s", path, g_err);
  return rc;
}

static void check_backend(zp_aio* a, int backend) {
  const char* b = zp_aio_backend(a);
#ifdef ZP_HAVE_URING
  if (backend == BE_URING) {
    CHECK_MSG(zp_aio_is_uring(a) == 1, "expected io_uring, got: %s", b);
    CHECK_STR_CONTAINS(b, "io_uring (O_DIRECT)");
  }
#endif
  if (backend == BE_THREADS) {
    CHECK(zp_aio_is_uring(a) == 0);
    CHECK_STR_CONTAINS(b, "threads pread/pwrite (O_DIRECT)");
    CHECK_STR_CONTAINS(b, "force_threads");
  }
  if (backend == BE_NO_URING_ENV) {
    CHECK(zp_aio_is_uring(a) == 0);
    CHECK_STR_CONTAINS(b, "threads pread/pwrite (O_DIRECT)");
#ifdef ZP_HAVE_URING
    CHECK_STR_CONTAINS(b, "ZP_AIO_NO_URING");
#else
    CHECK_STR_CONTAINS(b, "built without liburing");
#endif
  }
  CHECK(zp_aio_is_direct(a) == 1);
}

/* Random segmentation of [0, total) into 4 KiB-multiple pieces of 4 KiB .. maxlen. */
static int segments(uint64_t total, size_t maxlen, uint64_t* off, size_t* len, int cap) {
  int n = 0;
  uint64_t o = 0;
  while (o < total && n < cap) {
    size_t l = (size_t)(1 + rnd() % (maxlen / 4096)) * 4096;
    if (l > total - o) l = (size_t)(total - o);
    off[n] = o;
    len[n] = l;
    o += l;
    n++;
  }
  return o == total ? n : -1;
}

/* Round trip through one backend: random segmentation written all at once, waited in random
 * order; read back with another segmentation (waited in reverse), then random overlapping
 * reads; stats must be exact. */
static void roundtrip(int backend, int qd) {
  const uint64_t total = 24 * MiB;
  const size_t block = 64 * 1024, maxlen = 1 * MiB + 8192;
  char path[4200];
  path_in(path, sizeof path, g_dir, "roundtrip.bin");
  zp_aio_opts o = opts_for(backend, qd, block);
  zp_aio* a;
  if (open_be(&a, backend, path, total, &o)) return;
  check_backend(a, backend);
  CHECK_EQ_INT(zp_aio_size(a), total);
  CHECK_EQ_INT(zp_aio_queue_depth(a), qd);
  char* src = zp_aio_alloc_aligned(total);
  char* dst = zp_aio_alloc_aligned(total);
  fill_random(src, total);
  memset(dst, 0, total);
  enum { CAP = 4096 };
  static uint64_t off[CAP], tk[CAP];
  static size_t len[CAP];
  static int order[CAP];
  int n = segments(total, maxlen, off, len, CAP);
  CHECK(n > 20);
  uint64_t ops = 0;
  for (int i = 0; i < n; i++) {
    ops += (len[i] + block - 1) / block;
    order[i] = i;
  }
  shuffle(order, n);
  for (int k = 0; k < n; k++) {
    int i = order[k];
    int rc = zp_aio_submit_write(a, src + off[i], off[i], len[i], &tk[i], g_err, sizeof g_err);
    CHECK_MSG(rc == 0, "%s", g_err);
  }
  shuffle(order, n);
  for (int k = 0; k < n; k++) {
    int rc = zp_aio_wait(a, tk[order[k]], g_err, sizeof g_err);
    CHECK_MSG(rc == 0, "%s", g_err);
  }
  zp_aio_stats s;
  zp_aio_get_stats(a, &s);
  CHECK_EQ_INT(s.writes, n);
  CHECK_EQ_INT(s.write_ops, ops);
  CHECK_EQ_INT(s.bytes_written, total);
  CHECK_EQ_INT(s.reads, 0);
  CHECK_EQ_INT(s.failed, 0);

  int m = segments(total, maxlen, off, len, CAP);
  uint64_t rops = 0;
  for (int i = 0; i < m; i++) {
    rops += (len[i] + block - 1) / block;
    CHECK(zp_aio_submit_read(a, dst + off[i], off[i], len[i], &tk[i], g_err, sizeof g_err) == 0);
  }
  for (int i = m - 1; i >= 0; i--) CHECK_MSG(zp_aio_wait(a, tk[i], g_err, sizeof g_err) == 0, "%s", g_err);
  CHECK_MSG(memcmp(src, dst, total) == 0, "read-back differs from what was written (qd %d)", qd);

  /* overlapping random reads, each into its own buffer, several in flight */
  enum { NR = 48 };
  char* rb[NR];
  uint64_t ro[NR];
  size_t rl[NR];
  uint64_t rt[NR];
  uint64_t extra_bytes = 0, extra_ops = 0;
  for (int i = 0; i < NR; i++) {
    rl[i] = (size_t)(1 + rnd() % 96) * 4096;
    ro[i] = (rnd() % ((total - rl[i]) / 4096 + 1)) * 4096;
    rb[i] = zp_aio_alloc_aligned(rl[i]);
    extra_bytes += rl[i];
    extra_ops += (rl[i] + block - 1) / block;
    CHECK(zp_aio_submit_read(a, rb[i], ro[i], rl[i], &rt[i], g_err, sizeof g_err) == 0);
  }
  for (int i = 0; i < NR; i += 2) CHECK(zp_aio_wait(a, rt[i], g_err, sizeof g_err) == 0);
  for (int i = 1; i < NR; i += 2) {
    while (zp_aio_test(a, rt[i]) == 0) usleep(100);
    CHECK_EQ_INT(zp_aio_test(a, rt[i]), 1);
    CHECK(zp_aio_wait(a, rt[i], g_err, sizeof g_err) == 0);
  }
  int bad = 0;
  for (int i = 0; i < NR; i++) {
    bad += memcmp(rb[i], src + ro[i], rl[i]) != 0;
    zp_aio_free_aligned(rb[i]);
  }
  CHECK_EQ_INT(bad, 0);
  zp_aio_get_stats(a, &s);
  CHECK_EQ_INT(s.reads, m + NR);
  CHECK_EQ_INT(s.read_ops, rops + extra_ops);
  CHECK_EQ_INT(s.bytes_read, total + extra_bytes);
  CHECK_EQ_INT(s.writes, n);
  CHECK_EQ_INT(s.resumed, 0);
  CHECK(zp_aio_close(a, g_err, sizeof g_err) == 0);
  unlink(path);
  zp_aio_free_aligned(src);
  zp_aio_free_aligned(dst);
}

static void test_roundtrip_uring_qd1(void) { roundtrip(BE_URING, 1); }
static void test_roundtrip_uring_qd32(void) { roundtrip(BE_URING, 32); }
static void test_roundtrip_threads_qd1(void) { roundtrip(BE_THREADS, 1); }
static void test_roundtrip_threads_qd32(void) { roundtrip(BE_THREADS, 32); }
static void test_roundtrip_no_uring_env(void) { roundtrip(BE_NO_URING_ENV, 32); }

/* One request of 1 MiB + 4 KiB with 64 KiB blocks is 17 operations; drain retires it. */
static void test_split_exact(void) {
  for (int be = BE_URING; be <= BE_THREADS; be++) {
    char path[4200];
    path_in(path, sizeof path, g_dir, "split.bin");
    zp_aio_opts o = opts_for(be, 4, 64 * 1024);
    zp_aio* a;
    if (open_be(&a, be, path, 4 * MiB, &o)) return;
    size_t n = MiB + 4096;
    char* b = zp_aio_alloc_aligned(n);
    fill_random(b, n);
    uint64_t t;
    CHECK(zp_aio_submit_write(a, b, 8192, n, &t, g_err, sizeof g_err) == 0);
    CHECK(zp_aio_drain(a, g_err, sizeof g_err) == 0);
    CHECK_EQ_INT(zp_aio_wait(a, t, g_err, sizeof g_err), -EINVAL); /* drained = retired */
    CHECK_STR_CONTAINS(g_err, "unknown or already retired");
    zp_aio_stats s;
    zp_aio_get_stats(a, &s);
    CHECK_EQ_INT(s.writes, 1);
    CHECK_EQ_INT(s.write_ops, 17);
    CHECK_EQ_INT(s.bytes_written, n);
    char* c = zp_aio_alloc_aligned(n);
    CHECK(zp_aio_submit_read(a, c, 8192, n, &t, g_err, sizeof g_err) == 0);
    CHECK(zp_aio_wait(a, t, g_err, sizeof g_err) == 0);
    CHECK(memcmp(b, c, n) == 0);
    zp_aio_get_stats(a, &s);
    CHECK_EQ_INT(s.read_ops, 17);
    CHECK(zp_aio_close(a, g_err, sizeof g_err) == 0);
    unlink(path);
    zp_aio_free_aligned(b);
    zp_aio_free_aligned(c);
  }
}

static void test_reject_misaligned(void) {
  char path[4200];
  path_in(path, sizeof path, g_dir, "misaligned.bin");
  zp_aio_opts o = opts_for(BE_URING, 8, 64 * 1024);
  zp_aio* a;
  if (open_be(&a, BE_URING, path, 1 * MiB, &o)) return;
  char* b = zp_aio_alloc_aligned(2 * MiB);
  uint64_t t = 123;
  CHECK_EQ_INT(zp_aio_submit_read(a, b + 512, 0, 4096, &t, g_err, sizeof g_err), -EINVAL);
  CHECK_STR_CONTAINS(g_err, "multiples of 4096");
  CHECK_STR_CONTAINS(g_err, path);
  CHECK_EQ_INT(t, 0);
  CHECK_EQ_INT(zp_aio_submit_write(a, b, 100, 4096, &t, g_err, sizeof g_err), -EINVAL);
  CHECK_STR_CONTAINS(g_err, "at offset 100");
  CHECK_EQ_INT(zp_aio_submit_write(a, b, 0, 1000, &t, g_err, sizeof g_err), -EINVAL);
  CHECK_STR_CONTAINS(g_err, "write of 1000 bytes");
  CHECK_EQ_INT(zp_aio_submit_read(a, b, 0, 0, &t, g_err, sizeof g_err), -EINVAL);
  CHECK_EQ_INT(zp_aio_submit_read(a, b, MiB - 4096, 8192, &t, g_err, sizeof g_err), -EINVAL);
  CHECK_STR_CONTAINS(g_err, "past the end of the 1048576-byte file");
  CHECK_EQ_INT(zp_aio_submit_read(a, b, 2 * MiB, 4096, &t, g_err, sizeof g_err), -EINVAL);
  CHECK_EQ_INT(zp_aio_submit_read(a, b, 0, 4096, NULL, g_err, sizeof g_err), -EINVAL);
  CHECK_EQ_INT(zp_aio_wait(a, 0xdeadbeefull, g_err, sizeof g_err), -EINVAL);
  CHECK_STR_CONTAINS(g_err, "unknown or already retired");
  CHECK_EQ_INT(zp_aio_test(a, 0xdeadbeefull), -EINVAL);
  zp_aio_stats s;
  zp_aio_get_stats(a, &s);
  CHECK_EQ_INT(s.reads + s.writes + s.read_ops + s.write_ops + s.failed, 0);
  /* still usable; a ticket waits once */
  CHECK(zp_aio_submit_read(a, b, MiB - 4096, 4096, &t, g_err, sizeof g_err) == 0);
  CHECK(zp_aio_wait(a, t, g_err, sizeof g_err) == 0);
  CHECK_EQ_INT(zp_aio_wait(a, t, g_err, sizeof g_err), -EINVAL);
  CHECK(zp_aio_close(a, g_err, sizeof g_err) == 0);
  /* bad options */
  o.block_size = 1000;
  CHECK_EQ_INT(zp_aio_open(&a, path, MiB, &o, g_err, sizeof g_err), -EINVAL);
  CHECK_STR_CONTAINS(g_err, "block_size = 1000 must be a multiple of 4096");
  o.block_size = 65536;
  o.queue_depth = 5000;
  CHECK_EQ_INT(zp_aio_open(&a, path, MiB, &o, g_err, sizeof g_err), -EINVAL);
  CHECK_STR_CONTAINS(g_err, "queue_depth = 5000");
  unlink(path);
  zp_aio_free_aligned(b);
}

/* Injected faults: short transfers and EINTR are resumed (data intact, `resumed` counts them);
 * EIO fails exactly the request covering the offset, with file, offset, length, strerror. */
static void faults(int be) {
  char path[4200];
  path_in(path, sizeof path, g_dir, "faults.bin");
  const size_t block = 256 * 1024, total = 4 * MiB;
  char* src = zp_aio_alloc_aligned(total);
  char* dst = zp_aio_alloc_aligned(total);
  const char* kinds[] = {"short", "eintr"};
  for (int k = 0; k < 2; k++) {
    setenv("ZP_AIO_FAULT", kinds[k], 1);
    zp_aio_opts o = opts_for(be, 8, block);
    zp_aio* a;
    int rc = open_be(&a, be, path, total, &o);
    unsetenv("ZP_AIO_FAULT");
    if (rc) continue;
    fill_random(src, total);
    memset(dst, 0, total);
    uint64_t t[4];
    for (int i = 0; i < 4; i++) CHECK(zp_aio_submit_write(a, src + i * MiB, (uint64_t)i * MiB, MiB, &t[i], g_err, sizeof g_err) == 0);
    for (int i = 3; i >= 0; i--) CHECK_MSG(zp_aio_wait(a, t[i], g_err, sizeof g_err) == 0, "%s: %s", kinds[k], g_err);
    for (int i = 0; i < 4; i++) CHECK(zp_aio_submit_read(a, dst + i * MiB, (uint64_t)i * MiB, MiB, &t[i], g_err, sizeof g_err) == 0);
    CHECK_MSG(zp_aio_drain(a, g_err, sizeof g_err) == 0, "%s", g_err);
    CHECK_MSG(memcmp(src, dst, total) == 0, "fault %s: data differs", kinds[k]);
    zp_aio_stats s;
    zp_aio_get_stats(a, &s);
    CHECK_EQ_INT(s.write_ops, 16);
    CHECK_EQ_INT(s.read_ops, 16);
    CHECK_EQ_INT(s.failed, 0);
    /* short: 256 KiB -> 128+64+32+16+8+4+4 KiB = 7 attempts, 6 resumes per operation;
     * eintr: one EINTR per operation */
    CHECK_EQ_INT(s.resumed, k == 0 ? 32 * 6 : 32);
    CHECK(zp_aio_close(a, g_err, sizeof g_err) == 0);
  }
  /* EIO at byte 1.5 MiB + 5: the write covering [1.5, 1.75) MiB of the second request fails */
  setenv("ZP_AIO_FAULT", "eio@1572869", 1);
  zp_aio_opts o = opts_for(be, 8, block);
  zp_aio* a;
  int rc = open_be(&a, be, path, total, &o);
  unsetenv("ZP_AIO_FAULT");
  if (rc == 0) {
    uint64_t t[4];
    for (int i = 0; i < 4; i++) CHECK(zp_aio_submit_write(a, src + i * MiB, (uint64_t)i * MiB, MiB, &t[i], g_err, sizeof g_err) == 0);
    CHECK(zp_aio_wait(a, t[0], g_err, sizeof g_err) == 0);
    CHECK(zp_aio_wait(a, t[3], g_err, sizeof g_err) == 0);
    CHECK(zp_aio_wait(a, t[2], g_err, sizeof g_err) == 0);
    CHECK_EQ_INT(zp_aio_wait(a, t[1], g_err, sizeof g_err), -EIO);
    CHECK_STR_CONTAINS(g_err, "write of 262144 bytes at offset 1572864");
    CHECK_STR_CONTAINS(g_err, path);
    CHECK_STR_CONTAINS(g_err, "Input/output error (EIO)");
    CHECK_STR_CONTAINS(g_err, "part of a 1048576-byte write at offset 1048576");
    /* drain reports a failure nobody waited for */
    CHECK(zp_aio_submit_read(a, dst, MiB, MiB, &t[0], g_err, sizeof g_err) == 0);
    CHECK(zp_aio_submit_read(a, dst + MiB, 0, MiB, &t[1], g_err, sizeof g_err) == 0);
    CHECK_EQ_INT(zp_aio_drain(a, g_err, sizeof g_err), -EIO);
    CHECK_STR_CONTAINS(g_err, "read of 262144 bytes at offset 1572864");
    zp_aio_stats s;
    zp_aio_get_stats(a, &s);
    CHECK_EQ_INT(s.failed, 2);
    CHECK_EQ_INT(s.writes, 3);
    CHECK_EQ_INT(s.reads, 1);
    CHECK(zp_aio_close(a, g_err, sizeof g_err) == 0);
  }
  unlink(path);
  zp_aio_free_aligned(src);
  zp_aio_free_aligned(dst);
}
static void test_faults_uring(void) { faults(BE_URING); }
static void test_faults_threads(void) { faults(BE_THREADS); }

/* O_DIRECT reads come from storage: /proc/self/io read_bytes rises by what was read. The same
 * with the page cache (direct off) right after writing barely moves it: the check can fail. */
static void test_direct_bypasses_page_cache(void) {
  const size_t total = 16 * MiB;
  char* b = zp_aio_alloc_aligned(total);
  fill_random(b, total);
  for (int buffered = 0; buffered <= 1; buffered++) {
    char path[4200];
    path_in(path, sizeof path, g_dir, buffered ? "cached.bin" : "direct.bin");
    zp_aio_opts o = opts_for(BE_URING, 16, MiB);
    o.direct = buffered ? ZP_AIO_DIRECT_OFF : ZP_AIO_DIRECT_REQUIRE;
    o.remove = ZP_AIO_REMOVE_ON_CLOSE;
    zp_aio* a;
    if (open_be(&a, BE_URING, path, total, &o)) continue;
    CHECK_EQ_INT(zp_aio_is_direct(a), !buffered);
    if (buffered) CHECK_STR_CONTAINS(zp_aio_backend(a), "page cache: O_DIRECT off by request");
    else CHECK_STR_CONTAINS(zp_aio_backend(a), "(O_DIRECT)");
    uint64_t t;
    CHECK(zp_aio_submit_write(a, b, 0, total, &t, g_err, sizeof g_err) == 0);
    CHECK(zp_aio_wait(a, t, g_err, sizeof g_err) == 0);
    long long r0 = proc_io("read_bytes");
    CHECK_MSG(r0 >= 0, "/proc/self/io has no read_bytes (task I/O accounting off?)");
    CHECK(zp_aio_submit_read(a, b, 0, total, &t, g_err, sizeof g_err) == 0);
    CHECK(zp_aio_wait(a, t, g_err, sizeof g_err) == 0);
    long long d = proc_io("read_bytes") - r0;
    fprintf(stderr, "     %s: read %zu bytes, storage reads (/proc/self/io read_bytes) +%lld\n",
            buffered ? "page cache" : "O_DIRECT  ", total, d);
    if (buffered) CHECK_MSG(d < (long long)total / 4, "buffered read-after-write went to storage: +%lld", d);
    else CHECK_MSG(d >= (long long)total, "O_DIRECT read of %zu bytes moved read_bytes by only %lld", total, d);
    CHECK(zp_aio_close(a, g_err, sizeof g_err) == 0);
    CHECK(!exists(path));
  }
  zp_aio_free_aligned(b);
}

/* tmpfs (in memory) and a filesystem refusing O_DIRECT: errors under REQUIRE that say why and
 * leave no file; the page cache under PREFER, and zp_aio_is_direct() says 0. */
static void test_no_direct_filesystems(void) {
  char path[4200];
  /* refused O_DIRECT (simulated EINVAL on open) */
  path_in(path, sizeof path, g_dir, "einval.bin");
  unlink(path);
  setenv("ZP_AIO_FAULT", "open_einval", 1);
  zp_aio_opts o = opts_for(BE_URING, 4, 64 * 1024);
  zp_aio* a = NULL;
  CHECK_EQ_INT(zp_aio_open(&a, path, MiB, &o, g_err, sizeof g_err), -EINVAL);
  CHECK_STR_CONTAINS(g_err, "refuses O_DIRECT (open: EINVAL)");
  CHECK(a == NULL);
  CHECK(!exists(path));
  o.direct = ZP_AIO_DIRECT_PREFER;
  int rc = zp_aio_open(&a, path, MiB, &o, g_err, sizeof g_err);
  unsetenv("ZP_AIO_FAULT");
  CHECK_MSG(rc == 0, "%s", g_err);
  if (rc == 0) {
    CHECK_EQ_INT(zp_aio_is_direct(a), 0);
    CHECK_STR_CONTAINS(zp_aio_backend(a), "refuses O_DIRECT (EINVAL)");
    char* b = zp_aio_alloc_aligned(MiB);
    fill_random(b, MiB);
    char* c = zp_aio_alloc_aligned(MiB);
    uint64_t t;
    CHECK(zp_aio_submit_write(a, b, 0, MiB, &t, g_err, sizeof g_err) == 0 && zp_aio_wait(a, t, g_err, sizeof g_err) == 0);
    CHECK(zp_aio_submit_read(a, c, 0, MiB, &t, g_err, sizeof g_err) == 0 && zp_aio_wait(a, t, g_err, sizeof g_err) == 0);
    CHECK(memcmp(b, c, MiB) == 0);
    zp_aio_free_aligned(b);
    zp_aio_free_aligned(c);
    CHECK(zp_aio_close(a, g_err, sizeof g_err) == 0);
  }
  unlink(path);
  /* tmpfs */
  if (is_mem_fs("/dev/shm") != 1) {
    fprintf(stderr, "     /dev/shm is not tmpfs here: the tmpfs case is not checked\n");
    return;
  }
  snprintf(path, sizeof path, "/dev/shm/zp-aio-test-%d.bin", (int)getpid());
  o.direct = ZP_AIO_DIRECT_REQUIRE;
  CHECK_EQ_INT(zp_aio_open(&a, path, MiB, &o, g_err, sizeof g_err), -EINVAL);
  CHECK_STR_CONTAINS(g_err, "on tmpfs");
  CHECK_STR_CONTAINS(g_err, "O_DIRECT");
  CHECK(!exists(path));
  o.direct = ZP_AIO_DIRECT_PREFER;
  o.remove = ZP_AIO_REMOVE_ON_CLOSE;
  rc = zp_aio_open(&a, path, MiB, &o, g_err, sizeof g_err);
  CHECK_MSG(rc == 0, "%s", g_err);
  if (rc == 0) {
    CHECK_EQ_INT(zp_aio_is_direct(a), 0);
    CHECK_STR_CONTAINS(zp_aio_backend(a), "page cache: tmpfs keeps files in memory");
    CHECK(zp_aio_close(a, g_err, sizeof g_err) == 0);
  }
  CHECK(!exists(path));
}

/* A file larger than the free space fails at open with ENOSPC, the bytes needed and free. */
static void test_enospc_at_open(void) {
  char path[4200];
  path_in(path, sizeof path, g_dir, "huge.bin");
  zp_aio_opts o = opts_for(BE_URING, 4, 64 * 1024);
  zp_aio* a = NULL;
  uint64_t huge = 1ull << 52; /* 4 PiB */
  CHECK_EQ_INT(zp_aio_open(&a, path, huge, &o, g_err, sizeof g_err), -ENOSPC);
  CHECK_STR_CONTAINS(g_err, "ENOSPC");
  CHECK_STR_CONTAINS(g_err, "4503599627370496");
  CHECK_STR_CONTAINS(g_err, "bytes (");
  CHECK_STR_CONTAINS(g_err, "free");
  CHECK(a == NULL);
  CHECK(!exists(path));
}

static void test_buffers_and_remove_modes(void) {
  char path[4200];
  path_in(path, sizeof path, g_dir, "buffers.bin");
  zp_aio* a;
  /* defaults: 32 x 1 MiB queue, 4 buffers of 8 MiB (together they fill the queue) */
  int rc = zp_aio_open(&a, path, 8 * MiB, NULL, g_err, sizeof g_err);
  CHECK_MSG(rc == 0, "%s", g_err);
  if (rc) return;
  CHECK_EQ_INT(zp_aio_queue_depth(a), 32);
  CHECK_EQ_INT(zp_aio_block_size(a), MiB);
  CHECK_EQ_INT(zp_aio_buffer_count(a), 4);
  CHECK_EQ_INT(zp_aio_buffer_size(a), 8 * MiB);
  CHECK(zp_aio_is_preallocated(a));
  for (int i = 0; i < 4; i++) {
    char* p = zp_aio_buffer(a, i);
    CHECK(p && ((uintptr_t)p % 4096) == 0);
    if (i) CHECK(p == (char*)zp_aio_buffer(a, i - 1) + 8 * MiB);
  }
  CHECK(zp_aio_buffer(a, 4) == NULL && zp_aio_buffer(a, -1) == NULL);
  char* b0 = zp_aio_buffer(a, 0);
  fill_random(b0, 8 * MiB);
  uint64_t t;
  CHECK(zp_aio_submit_write(a, b0, 0, 8 * MiB, &t, g_err, sizeof g_err) == 0);
  CHECK(zp_aio_close(a, g_err, sizeof g_err) == 0); /* close drains */
  CHECK(exists(path));                               /* KEEP */
  struct stat st;
  CHECK(stat(path, &st) == 0 && st.st_size == 8 * MiB);
  unlink(path);

  zp_aio_opts o = opts_for(BE_URING, 4, 64 * 1024);
  o.remove = ZP_AIO_REMOVE_AT_OPEN;
  o.buffer_count = 3;
  o.buffer_size = 12288;
  rc = zp_aio_open(&a, path, MiB, &o, g_err, sizeof g_err);
  CHECK_MSG(rc == 0, "%s", g_err);
  if (rc) return;
  CHECK(!exists(path));
  CHECK_EQ_INT(zp_aio_buffer_size(a), 12288);
  char* b = zp_aio_buffer(a, 2);
  memset(b, 0x5a, 12288);
  CHECK(zp_aio_submit_write(a, b, 4096, 12288, &t, g_err, sizeof g_err) == 0 && zp_aio_wait(a, t, g_err, sizeof g_err) == 0);
  memset(b, 0, 12288);
  CHECK(zp_aio_submit_read(a, b, 4096, 12288, &t, g_err, sizeof g_err) == 0 && zp_aio_wait(a, t, g_err, sizeof g_err) == 0);
  CHECK(b[0] == 0x5a && b[12287] == 0x5a);
  CHECK(zp_aio_close(a, g_err, sizeof g_err) == 0);
  CHECK(zp_aio_close(NULL, g_err, sizeof g_err) == 0);
}

/* Two threads submit and wait on one engine at once; two threads wait on the same ticket. */
typedef struct { zp_aio* a; int id; int bad; } thr_arg;
static void* thr_main(void* p) {
  thr_arg* t = p;
  char* b = zp_aio_alloc_aligned(256 * 1024);
  char* c = zp_aio_alloc_aligned(256 * 1024);
  char e[1024];
  for (int it = 0; it < 40; it++) {
    uint64_t off = (uint64_t)(t->id * 40 + it) * 256 * 1024;
    memset(b, (t->id * 40 + it) & 0xff, 256 * 1024);
    uint64_t k;
    if (zp_aio_submit_write(t->a, b, off, 256 * 1024, &k, e, sizeof e) || zp_aio_wait(t->a, k, e, sizeof e)) t->bad++;
    if (zp_aio_submit_read(t->a, c, off, 256 * 1024, &k, e, sizeof e) || zp_aio_wait(t->a, k, e, sizeof e)) t->bad++;
    if (memcmp(b, c, 256 * 1024) != 0) t->bad++;
  }
  zp_aio_free_aligned(b);
  zp_aio_free_aligned(c);
  return NULL;
}
typedef struct { zp_aio* a; uint64_t t; int rc; } wait_arg;
static void* waiter_main(void* p) {
  wait_arg* w = p;
  char e[1024];
  w->rc = zp_aio_wait(w->a, w->t, e, sizeof e);
  return NULL;
}
static void test_threads_share_engine(void) {
  for (int be = BE_URING; be <= BE_THREADS; be++) {
    char path[4200];
    path_in(path, sizeof path, g_dir, "shared.bin");
    zp_aio_opts o = opts_for(be, 4, 64 * 1024);
    o.remove = ZP_AIO_REMOVE_ON_CLOSE;
    zp_aio* a;
    if (open_be(&a, be, path, 80 * 256 * 1024, &o)) return;
    pthread_t th[2];
    thr_arg ar[2] = {{a, 0, 0}, {a, 1, 0}};
    for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, thr_main, &ar[i]);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    CHECK_EQ_INT(ar[0].bad + ar[1].bad, 0);
    zp_aio_stats s;
    zp_aio_get_stats(a, &s);
    CHECK_EQ_INT(s.writes, 80);
    CHECK_EQ_INT(s.reads, 80);
    CHECK_EQ_INT(s.write_ops, 320);
    /* two threads wait on one ticket: exactly one gets the result, the other "retired" */
    char* big = zp_aio_alloc_aligned(16 * MiB);
    wait_arg w = {a, 0, 99};
    CHECK(zp_aio_submit_read(a, big, 0, 16 * MiB, &w.t, g_err, sizeof g_err) == 0);
    pthread_t wt;
    pthread_create(&wt, NULL, waiter_main, &w);
    int rc = zp_aio_wait(a, w.t, g_err, sizeof g_err);
    pthread_join(wt, NULL);
    CHECK_MSG((rc == 0 && w.rc == -EINVAL) || (rc == -EINVAL && w.rc == 0), "waits returned %d and %d", rc, w.rc);
    zp_aio_free_aligned(big);
    CHECK(zp_aio_close(a, g_err, sizeof g_err) == 0);
  }
}

/* ---- small filesystem (ZP_AIO_SMALLFS): disk full ---- */
static const char* g_small;

/* Writes `name` until the filesystem is full; returns bytes written. */
static uint64_t fill_disk(const char* dir, const char* name) {
  char p[4200];
  path_in(p, sizeof p, dir, name);
  int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) return 0;
  static char chunk[65536];
  memset(chunk, 0x33, sizeof chunk);
  uint64_t n = 0;
  for (;;) {
    ssize_t w = write(fd, chunk, sizeof chunk);
    if (w <= 0) break;
    n += (uint64_t)w;
  }
  for (;;) { /* tail of the last block */
    ssize_t w = write(fd, chunk, 4096);
    if (w <= 0) break;
    n += (uint64_t)w;
  }
  fsync(fd);
  close(fd);
  return n;
}

static void test_smallfs_disk_full(void) {
  if (!g_small) {
    fprintf(stderr, "     ZP_AIO_SMALLFS unset: disk-full cases run in tests/integration/nvme_fs.sh\n");
    return;
  }
  struct statvfs vs;
  CHECK(statvfs(g_small, &vs) == 0);
  uint64_t fs_bytes = (uint64_t)vs.f_blocks * vs.f_frsize, avail = (uint64_t)vs.f_bavail * vs.f_frsize;
  fprintf(stderr, "     small filesystem %s: %" PRIu64 " bytes, %" PRIu64 " available\n", g_small, fs_bytes, avail);
  char path[4200], filler[4200];
  path_in(path, sizeof path, g_small, "engine.bin");
  path_in(filler, sizeof filler, g_small, "filler");
  zp_aio_opts o = opts_for(BE_URING, 8, 64 * 1024);
  zp_aio* a = NULL;
  /* (1) more than fits: ENOSPC at open, with the numbers */
  CHECK_EQ_INT(zp_aio_open(&a, path, fs_bytes * 2, &o, g_err, sizeof g_err), -ENOSPC);
  fprintf(stderr, "     open of %" PRIu64 " bytes: %s\n", fs_bytes * 2, g_err);
  CHECK_STR_CONTAINS(g_err, "ENOSPC");
  CHECK_STR_CONTAINS(g_err, "free");
  CHECK(!exists(path));

  /* (2) preallocated 2 MiB, then the disk fills up: the engine's writes still succeed */
  const size_t n = 2 * MiB;
  char* b = zp_aio_alloc_aligned(n);
  char* c = zp_aio_alloc_aligned(n);
  fill_random(b, n);
  int rc = zp_aio_open(&a, path, n, &o, g_err, sizeof g_err);
  CHECK_MSG(rc == 0, "%s", g_err);
  if (rc == 0) {
    CHECK(zp_aio_is_preallocated(a));
    uint64_t filled = fill_disk(g_small, "filler");
    CHECK(statvfs(g_small, &vs) == 0);
    fprintf(stderr, "     filler wrote %" PRIu64 " bytes; free now %" PRIu64 "\n", filled, (uint64_t)vs.f_bfree * vs.f_frsize);
    CHECK(filled > 0);
    uint64_t t;
    CHECK(zp_aio_submit_write(a, b, 0, n, &t, g_err, sizeof g_err) == 0);
    CHECK_MSG(zp_aio_wait(a, t, g_err, sizeof g_err) == 0, "preallocated write on a full disk: %s", g_err);
    CHECK(zp_aio_submit_read(a, c, 0, n, &t, g_err, sizeof g_err) == 0);
    CHECK(zp_aio_wait(a, t, g_err, sizeof g_err) == 0);
    CHECK(memcmp(b, c, n) == 0);
    CHECK(zp_aio_close(a, g_err, sizeof g_err) == 0);
  }
  unlink(path);
  unlink(filler);
  sync();

  /* (3) sparse (no preallocation, as where fallocate is unsupported): the disk fills after
   * open, so the writes run out of space mid-way: reported as ENOSPC, never lost */
  for (int be = BE_URING; be <= BE_THREADS; be++) {
    zp_aio_opts os = opts_for(be, 8, 64 * 1024);
    os.sparse = 1;
    rc = open_be(&a, be, path, n, &os);
    if (rc) continue;
    CHECK(!zp_aio_is_preallocated(a));
    CHECK_STR_CONTAINS(zp_aio_backend(a), "sparse");
    uint64_t filled = fill_disk(g_small, "filler");
    CHECK(filled > 0);
    uint64_t t[2];
    CHECK(zp_aio_submit_write(a, b, 0, n / 2, &t[0], g_err, sizeof g_err) == 0);
    CHECK(zp_aio_submit_write(a, b + n / 2, n / 2, n / 2, &t[1], g_err, sizeof g_err) == 0);
    int r0 = zp_aio_wait(a, t[0], g_err, sizeof g_err);
    char e0[4096];
    snprintf(e0, sizeof e0, "%s", g_err);
    int r1 = zp_aio_wait(a, t[1], g_err, sizeof g_err);
    CHECK_MSG(r0 == -ENOSPC || r1 == -ENOSPC, "writes on a full disk did not fail: %d %d", r0, r1);
    const char* e = r0 == -ENOSPC ? e0 : g_err;
    fprintf(stderr, "     %s: %s\n", be == BE_URING ? "io_uring" : "threads", e);
    CHECK_STR_CONTAINS(e, "No space left on device (ENOSPC)");
    CHECK_STR_CONTAINS(e, "at offset");
    CHECK_STR_CONTAINS(e, path);
    zp_aio_stats s;
    zp_aio_get_stats(a, &s);
    CHECK(s.failed >= 1);
    CHECK(zp_aio_close(a, g_err, sizeof g_err) == 0);
    unlink(path);
    unlink(filler);
    sync();
  }
  zp_aio_free_aligned(b);
  zp_aio_free_aligned(c);
}

static int want(const char* filter, const char* name) { return !filter || strstr(name, filter) != NULL; }
#define RUN(fn) do { if (want(filter, #fn)) ZT_RUN(fn); } while (0)

int main(int argc, char** argv) {
  const char* filter = argc > 1 ? argv[1] : NULL;
  g_small = getenv("ZP_AIO_SMALLFS");
  if (g_small && !*g_small) g_small = NULL;
  const char* cand[3] = {getenv("ZP_AIO_TEST_DIR"), "/tmp", ZP_BUILD_DIR};
  const char* base = NULL;
  for (int i = 0; i < 3 && !base; i++) {
    if (!cand[i] || !*cand[i]) continue;
    int m = is_mem_fs(cand[i]);
    if (m == 0) base = cand[i];
    else fprintf(stderr, "test_aio: %s is %s: not used (O_DIRECT needs a real disk)\n", cand[i], m == 1 ? "tmpfs/ramfs" : "not reachable");
    if (i == 0 && !base) break; /* an explicit directory must be usable */
  }
  if (!base) {
    fprintf(stderr, "test_aio: no directory on a real filesystem (set ZP_AIO_TEST_DIR)\n");
    return 1;
  }
  snprintf(g_dir, sizeof g_dir, "%s/zp-aio-test.XXXXXX", base);
  if (!mkdtemp(g_dir)) {
    fprintf(stderr, "test_aio: mkdtemp in %s: %s\n", base, strerror(errno));
    return 1;
  }
  struct statfs sf;
  statfs(g_dir, &sf);
  fprintf(stderr, "test_aio: working in %s (filesystem type %#lx)\n", g_dir, (unsigned long)sf.f_type);

  RUN(test_roundtrip_uring_qd1);
  RUN(test_roundtrip_uring_qd32);
  RUN(test_roundtrip_threads_qd1);
  RUN(test_roundtrip_threads_qd32);
  RUN(test_roundtrip_no_uring_env);
  RUN(test_split_exact);
  RUN(test_reject_misaligned);
  RUN(test_faults_uring);
  RUN(test_faults_threads);
  RUN(test_direct_bypasses_page_cache);
  RUN(test_no_direct_filesystems);
  RUN(test_enospc_at_open);
  RUN(test_buffers_and_remove_modes);
  RUN(test_threads_share_engine);
  RUN(test_smallfs_disk_full);
  if (rmdir(g_dir) != 0) fprintf(stderr, "test_aio: %s not empty after the tests: %s\n", g_dir, strerror(errno));
  return zt_done();
}
