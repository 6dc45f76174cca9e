/* cmd_nvme_bench.c: `zp nvme-bench DIR [--size GB] [--seconds S] [--grid full|quick]
 * [--threads]`: sequential write and read bandwidth of the NVMe engine (core/aio.c, O_DIRECT)
 * over a grid of queue_depth x block_size (then buffer_count at the best pair), printed as a
 * table, then the best setting as a TOML snippet for [offload.optimizer] / [offload.param].
 *
 * Invariants: one test file DIR/.zp-nvme-bench.<pid>.tmp of --size GB (10^9 bytes), created
 * and preallocated by the engine, filled completely before any read (reads of never-written,
 * preallocated extents would return zeros without touching the disk), removed at the end, on
 * errors and on SIGINT/SIGTERM. Each measurement streams sequentially from offset 0 for at most
 * one pass over the file or --seconds, whichever ends first, keeping buffer_count requests of
 * buffer_size bytes in flight (each split into block_size operations, queue_depth in flight).
 * GB/s are 10^9 bytes per second, as dd prints them. The page cache is shown to be bypassed:
 * the file descriptor has O_DIRECT (fcntl F_GETFL) and /proc/self/io read_bytes (reads that
 * reached storage) rises by the bytes the reads moved. "Best" for the snippet = the setting
 * with the highest harmonic mean of write and read bandwidth (an offloaded state is read and
 * written back every step). Exit status: 0 ok, 1 runtime error, 2 usage error. */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "aio.h"
#include "cmd.h"

#define KiB 1024u
#define MiB (1024u * 1024u)

static volatile sig_atomic_t g_stop;
static void on_signal(int sig) { (void)sig; g_stop = 1; }

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
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

static const char* fs_type_name(unsigned long t) {
  switch (t) {
    case 0xEF53: return "ext2/3/4";
    case 0x58465342: return "xfs";
    case 0x9123683E: return "btrfs";
    case 0x01021994: return "tmpfs";
    case 0x794c7630: return "overlayfs";
    case 0x65735546: return "fuse";
    case 0x6969: return "nfs";
    case 0x2FC12FC1: return "zfs";
    case 0xF2F52010: return "f2fs";
    default: return "other";
  }
}

static void fmt_size(char* out, size_t n, uint64_t b) {
  if (b >= MiB && b % MiB == 0) snprintf(out, n, "%" PRIu64 "M", b / MiB);
  else if (b >= KiB && b % KiB == 0) snprintf(out, n, "%" PRIu64 "K", b / KiB);
  else snprintf(out, n, "%" PRIu64, b);
}

typedef struct {
  int qd, bufs;
  size_t block, bufsize;
  double w, r; /* GB/s; 0 = not measured */
} point_t;

typedef struct {
  const char* file;
  uint64_t size;
  double seconds;
  int force_threads;
  long long storage_read, engine_read;   /* evidence over all read measurements */
  long long storage_write, engine_write;
  int direct_seen, uring_seen, n_open;
  char backend[1100];
} bench_t;

static void pattern(char* p, size_t n, uint64_t seed) {
  uint64_t* q = (uint64_t*)p;
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n / 8; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    q[i] = x;
  }
}

/* One sequential pass (or `seconds`) of writes or reads; GB/s in *gbs. */
static int measure(zp_aio* a, int is_write, double seconds, uint64_t size, double* gbs, uint64_t* moved, char* err,
                   size_t errlen) {
  int nb = zp_aio_buffer_count(a);
  size_t bs = zp_aio_buffer_size(a);
  uint64_t tk[1024];
  size_t ln[1024];
  int fifo[1024];
  int head = 0, count = 0;
  uint64_t off = 0, bytes = 0;
  double t0 = now_s();
  int rc = 0;
  for (int i = 0; i < nb && off < size; i++) {
    size_t l = size - off < bs ? (size_t)(size - off) : bs;
    rc = is_write ? zp_aio_submit_write(a, zp_aio_buffer(a, i), off, l, &tk[i], err, errlen)
                  : zp_aio_submit_read(a, zp_aio_buffer(a, i), off, l, &tk[i], err, errlen);
    if (rc) break;
    ln[i] = l;
    fifo[(head + count++) % nb] = i;
    off += l;
  }
  while (count > 0) {
    int i = fifo[head];
    head = (head + 1) % nb;
    count--;
    int w = zp_aio_wait(a, tk[i], err, errlen);
    if (w) { rc = w; continue; }
    bytes += ln[i];
    if (rc || g_stop || off >= size || now_s() - t0 >= seconds) continue;
    size_t l = size - off < bs ? (size_t)(size - off) : bs;
    rc = is_write ? zp_aio_submit_write(a, zp_aio_buffer(a, i), off, l, &tk[i], err, errlen)
                  : zp_aio_submit_read(a, zp_aio_buffer(a, i), off, l, &tk[i], err, errlen);
    if (rc) continue;
    ln[i] = l;
    fifo[(head + count++) % nb] = i;
    off += l;
  }
  double dt = now_s() - t0;
  *gbs = dt > 0 ? (double)bytes / dt / 1e9 : 0;
  *moved = bytes;
  return rc;
}

static int open_engine(bench_t* B, int qd, size_t block, int bufs, zp_aio** a, char* err, size_t errlen) {
  zp_aio_opts o;
  zp_aio_opts_default(&o);
  o.queue_depth = qd;
  o.block_size = block;
  o.buffer_count = bufs;
  o.force_threads = B->force_threads;
  size_t bs = block * (size_t)((qd + bufs - 1) / bufs);
  /* a buffer never larger than the file (small test files) */
  uint64_t cap = B->size / (uint64_t)bufs / block * block;
  if (cap < block) cap = block;
  if (bs > cap) bs = (size_t)cap;
  o.buffer_size = bs;
  int rc = zp_aio_open(a, B->file, B->size, &o, err, errlen);
  if (rc) return rc;
  B->n_open++;
  B->direct_seen += zp_aio_is_direct(*a);
  B->uring_seen += zp_aio_is_uring(*a);
  snprintf(B->backend, sizeof B->backend, "%s", zp_aio_backend(*a));
  for (int i = 0; i < bufs; i++) pattern(zp_aio_buffer(*a, i), zp_aio_buffer_size(*a), (uint64_t)i + 1);
  return 0;
}

static int run_point(bench_t* B, point_t* p, char* err, size_t errlen) {
  zp_aio* a;
  int rc = open_engine(B, p->qd, p->block, p->bufs, &a, err, errlen);
  if (rc) return rc;
  p->bufsize = zp_aio_buffer_size(a);
  uint64_t moved;
  long long w0 = proc_io("write_bytes");
  rc = measure(a, 1, B->seconds, B->size, &p->w, &moved, err, errlen);
  long long w1 = proc_io("write_bytes");
  if (w0 >= 0 && w1 >= 0) { B->storage_write += w1 - w0; B->engine_write += (long long)moved; }
  if (rc == 0 && !g_stop) {
    long long r0 = proc_io("read_bytes");
    rc = measure(a, 0, B->seconds, B->size, &p->r, &moved, err, errlen);
    long long r1 = proc_io("read_bytes");
    if (r0 >= 0 && r1 >= 0) { B->storage_read += r1 - r0; B->engine_read += (long long)moved; }
  }
  char e2[512];
  int crc = zp_aio_close(a, e2, sizeof e2);
  if (rc == 0 && crc) { snprintf(err, errlen, "%s", e2); rc = crc; }
  return rc;
}

static double hmean(const point_t* p) { return p->w > 0 && p->r > 0 ? 2.0 / (1.0 / p->w + 1.0 / p->r) : 0; }

static void print_row(const point_t* p) {
  char b[32], bb[32];
  fmt_size(b, sizeof b, p->block);
  fmt_size(bb, sizeof bb, p->bufsize);
  printf("  %5d  %6s  %5d  %7s  %10.3f  %9.3f\n", p->qd, b, p->bufs, bb, p->w, p->r);
  fflush(stdout);
}

static void usage(FILE* f) {
  fprintf(f,
          "usage: zp nvme-bench DIR [--size GB] [--seconds S] [--grid full|quick] [--threads]\n"
          "  Sequential O_DIRECT write/read bandwidth of the NVMe engine in DIR (a directory on the\n"
          "  disk that offload_nvme will use) over queue_depth 4..64 x block_size 256K..8M, then\n"
          "  buffer_count at the best pair; prints the table and the best setting as TOML.\n"
          "  --size GB     test file size in 10^9 bytes (default 4); it is removed afterwards\n"
          "  --seconds S   time limit of each measurement (default 2); each is also at most one\n"
          "                pass over the file\n"
          "  --grid quick  3 queue depths x 3 block sizes instead of 5 x 6\n"
          "  --threads     force the pread/pwrite thread pool instead of io_uring\n");
}

static int parse_pos(const char* s, double* v) {
  char* end;
  errno = 0;
  double x = strtod(s, &end);
  if (errno || *end || !(x > 0) || !isfinite(x)) return -1;
  *v = x;
  return 0;
}

int zp_cmd_nvme_bench(int argc, char** argv) {
  const char* dir = NULL;
  double size_gb = 4, seconds = 2;
  int quick = 0, force_threads = 0;
  for (int i = 0; i < argc; i++) {
    const char* s = argv[i];
    if (strcmp(s, "-h") == 0 || strcmp(s, "--help") == 0) { usage(stdout); return 0; }
    if (strcmp(s, "--size") == 0 || strcmp(s, "--seconds") == 0) {
      if (i + 1 >= argc || parse_pos(argv[i + 1], strcmp(s, "--size") == 0 ? &size_gb : &seconds)) {
        fprintf(stderr, "zp: %s needs a positive number, got '%s'\n", s, i + 1 < argc ? argv[i + 1] : "");
        usage(stderr);
        return 2;
      }
      i++;
    } else if (strcmp(s, "--grid") == 0 && i + 1 < argc && (strcmp(argv[i + 1], "quick") == 0 || strcmp(argv[i + 1], "full") == 0)) {
      quick = strcmp(argv[++i], "quick") == 0;
    } else if (strcmp(s, "--threads") == 0) {
      force_threads = 1;
    } else if (s[0] == '-') {
      fprintf(stderr, "zp: nvme-bench: unknown option '%s'\n", s);
      usage(stderr);
      return 2;
    } else if (!dir) {
      dir = s;
    } else {
      fprintf(stderr, "zp: nvme-bench: unexpected argument '%s'\n", s);
      usage(stderr);
      return 2;
    }
  }
  if (!dir) { fprintf(stderr, "zp: nvme-bench: missing DIR\n"); usage(stderr); return 2; }
  if (size_gb > 1e6) { fprintf(stderr, "zp: nvme-bench: --size %g GB is too large\n", size_gb); return 2; }
  struct stat st;
  if (stat(dir, &st) != 0) {
    fprintf(stderr, "zp: nvme-bench: %s: %s\n", dir, strerror(errno));
    return 1;
  }
  if (!S_ISDIR(st.st_mode)) {
    fprintf(stderr, "zp: nvme-bench: %s is not a directory (give the directory to put the test file in)\n", dir);
    return 1;
  }
  struct statfs sf;
  struct statvfs vs;
  const char* fsn = statfs(dir, &sf) == 0 ? fs_type_name((unsigned long)sf.f_type) : "?";
  double free_gb = statvfs(dir, &vs) == 0 ? (double)vs.f_bavail * (double)vs.f_frsize / 1e9 : -1;

  bench_t B;
  memset(&B, 0, sizeof B);
  char file[4200];
  snprintf(file, sizeof file, "%s/.zp-nvme-bench.%d.tmp", dir, (int)getpid());
  B.file = file;
  B.size = ((uint64_t)(size_gb * 1e9) + 4095) / 4096 * 4096;
  if (B.size < 4 * MiB) B.size = 4 * MiB;
  B.seconds = seconds;
  B.force_threads = force_threads;

  struct sigaction sa, old_int, old_term;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  g_stop = 0;

  printf("zp nvme-bench: %s (%s, %.1f GB free), test file %.3f GB, at most %g s or one pass per measurement\n", dir, fsn,
         free_gb, (double)B.size / 1e9, seconds);
  fflush(stdout);
  char err[2048] = "";
  int rc = 0;
  zp_aio* a = NULL;

  /* fill the whole file first, so that reads hit written blocks */
  rc = open_engine(&B, 32, MiB, 4, &a, err, sizeof err);
  if (rc == 0) {
    printf("engine: %s\n", zp_aio_backend(a));
    printf("O_DIRECT: %s (fcntl F_GETFL on the open file)\n",
           zp_aio_is_direct(a) ? "yes, the file descriptor has O_DIRECT" : "NO");
    double fill;
    uint64_t moved;
    rc = measure(a, 1, 1e30, B.size, &fill, &moved, err, sizeof err);
    char e2[512];
    int crc = zp_aio_close(a, e2, sizeof e2);
    if (rc == 0 && crc) { rc = crc; snprintf(err, sizeof err, "%s", e2); }
    if (rc == 0 && !g_stop) printf("fill: %.3f GB written in one pass at %.3f GB/s (queue_depth 32, block_size 1M)\n", (double)moved / 1e9, fill);
  }

  static const int qd_full[] = {4, 8, 16, 32, 64}, qd_quick[] = {4, 16, 64};
  static const size_t bl_full[] = {256 * KiB, 512 * KiB, 1 * MiB, 2 * MiB, 4 * MiB, 8 * MiB},
                      bl_quick[] = {256 * KiB, 1 * MiB, 8 * MiB};
  static const int bufs_full[] = {2, 8, 16}, bufs_quick[] = {2, 8};
  const int* qds = quick ? qd_quick : qd_full;
  const size_t* bls = quick ? bl_quick : bl_full;
  int nqd = quick ? 3 : 5, nbl = quick ? 3 : 6;
  point_t pts[64];
  int np = 0;
  if (rc == 0 && !g_stop) {
    printf("\n  queue   block   bufs   buffer  write GB/s  read GB/s\n");
    for (int i = 0; i < nqd && rc == 0 && !g_stop; i++)
      for (int j = 0; j < nbl && rc == 0 && !g_stop; j++) {
        point_t* p = &pts[np];
        memset(p, 0, sizeof *p);
        p->qd = qds[i];
        p->block = bls[j];
        p->bufs = 4;
        rc = run_point(&B, p, err, sizeof err);
        if (rc == 0 && !g_stop) { print_row(p); np++; }
      }
  }
  if (rc == 0 && !g_stop && np > 0) {
    int best = 0;
    for (int i = 1; i < np; i++)
      if (hmean(&pts[i]) > hmean(&pts[best])) best = i;
    point_t base = pts[best];
    const int* bb = quick ? bufs_quick : bufs_full;
    int nb = quick ? 2 : 3;
    for (int k = 0; k < nb && rc == 0 && !g_stop; k++) {
      point_t* p = &pts[np];
      memset(p, 0, sizeof *p);
      p->qd = base.qd;
      p->block = base.block;
      p->bufs = bb[k];
      rc = run_point(&B, p, err, sizeof err);
      if (rc == 0 && !g_stop) { print_row(p); np++; }
    }
  }
  unlink(file);
  sigaction(SIGINT, &old_int, NULL);
  sigaction(SIGTERM, &old_term, NULL);
  if (g_stop) {
    fprintf(stderr, "zp: nvme-bench: interrupted; %s removed\n", file);
    return 130;
  }
  if (rc) {
    fprintf(stderr, "zp: nvme-bench: %s\n", err);
    return 1;
  }
  int bw = 0, br = 0, bc = 0;
  for (int i = 1; i < np; i++) {
    if (pts[i].w > pts[bw].w) bw = i;
    if (pts[i].r > pts[br].r) br = i;
    if (hmean(&pts[i]) > hmean(&pts[bc])) bc = i;
  }
  char b1[32], b2[32], b3[32];
  fmt_size(b1, sizeof b1, pts[bw].block);
  fmt_size(b2, sizeof b2, pts[br].block);
  fmt_size(b3, sizeof b3, pts[bc].block);
  printf("\nbest write: %.3f GB/s (queue_depth %d, block_size %s, buffer_count %d)\n", pts[bw].w, pts[bw].qd, b1, pts[bw].bufs);
  printf("best read:  %.3f GB/s (queue_depth %d, block_size %s, buffer_count %d)\n", pts[br].r, pts[br].qd, b2, pts[br].bufs);
  printf("best both:  write %.3f, read %.3f GB/s (queue_depth %d, block_size %s, buffer_count %d): highest harmonic mean\n",
         pts[bc].w, pts[bc].r, pts[bc].qd, b3, pts[bc].bufs);
  double ratio = B.engine_read > 0 ? (double)B.storage_read / (double)B.engine_read : -1;
  if (ratio >= 0)
    printf("page cache: bypassed on %d of %d opens (O_DIRECT); the reads moved %.3f GB and storage reads "
           "(/proc/self/io read_bytes) rose by %.3f GB (%.0f%%)%s\n",
           B.direct_seen, B.n_open, (double)B.engine_read / 1e9, (double)B.storage_read / 1e9, 100 * ratio,
           ratio >= 0.95 ? ": every read reached the disk" : ": FEWER than read: some reads did not reach the disk");
  else
    printf("page cache: O_DIRECT on %d of %d opens; /proc/self/io is not readable here, so storage reads are not shown\n",
           B.direct_seen, B.n_open);
  if (B.engine_write > 0 && B.storage_write >= 0)
    printf("            the writes moved %.3f GB, /proc/self/io write_bytes rose by %.3f GB\n", (double)B.engine_write / 1e9,
           (double)B.storage_write / 1e9);
  printf("\n# zp nvme-bench %s: best for read+write (write %.2f GB/s, read %.2f GB/s); paste into the config\n", dir,
         pts[bc].w, pts[bc].r);
  const char* sec[2] = {"offload.optimizer", "offload.param"};
  for (int s = 0; s < 2; s++)
    printf("[%s]\nqueue_depth = %d\nblock_size = %zu\nbuffer_count = %d\n%s", sec[s], pts[bc].qd, pts[bc].block, pts[bc].bufs,
           s == 0 ? "\n" : "");
  printf("\nsummary: best_write_gbs=%.3f best_read_gbs=%.3f both_write_gbs=%.3f both_read_gbs=%.3f queue_depth=%d "
         "block_size=%zu buffer_count=%d direct=%d/%d uring=%d/%d storage_read_ratio=%.3f\n",
         pts[bw].w, pts[br].r, pts[bc].w, pts[bc].r, pts[bc].qd, pts[bc].block, pts[bc].bufs, B.direct_seen, B.n_open,
         B.uring_seen, B.n_open, ratio);
  return 0;
}
