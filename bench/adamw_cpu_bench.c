/* adamw_cpu_bench.c: throughput of the CPU AdamW kernel (core/adamw_cpu.c) per ISA and dtype mix.
 * Usage: adamw_cpu_bench [--n N] [--threads T] [--iters K] [--isa scalar,avx2,avx512]
 *                        [--mode fp32,mixed] [--json]
 *   N parameters (default 256M = 268435456; suffixes k, M, G = 2^10, 2^20, 2^30), T threads
 *   (default: OpenMP's), K timed steps after one warm-up (default 5; ms = median), every
 *   listed ISA the CPU supports (others are reported as skipped), modes:
 *     fp32:  fp32 grad, master is the fp32 parameter      4 + 3*4*2      = 28 B/param
 *     mixed: bf16 grad, bf16 param written, fp32 master   2 + 2 + 3*4*2  = 28 B/param
 *   (bytes the kernel reads + writes; a write-allocate cache also reads the bf16 param lines
 *   it only writes, +2 B, not counted). GB/s = bytes/param * N / time (1 GB = 1e9 B).
 * Self-check first: each ISA against the scalar path on 1M+7 misaligned elements, bitwise;
 * exit status 1 if any differs, 2 on bad arguments or allocation failure.
 * Output: one line per (mode, ISA); with --json, one JSON object per line (bench/adamw_bench.sh). */
#include <errno.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "adamw_cpu.h"
#include "bf16.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int parse_size(const char* s, size_t* out) {
  char* end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || end == s) return -1;
  if (*end == 'k' || *end == 'K') v <<= 10, end++;
  else if (*end == 'M') v <<= 20, end++;
  else if (*end == 'G') v <<= 30, end++;
  if (*end) return -1;
  *out = (size_t)v;
  return 0;
}

/* deterministic pseudo-random in [-1, 1) from an index */
static inline float hrand(uint64_t i, uint64_t salt) {
  uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull ^ salt;
  x ^= x >> 31, x *= 0xBF58476D1CE4E5B9ull, x ^= x >> 29;
  return (float)((double)(x >> 11) * (1.0 / 4503599627370496.0) - 1.0);
}

typedef struct {
  float *master, *m, *v;
  void *grad, *param;
  int mixed;
} bufs;

static void* xalloc(size_t bytes) {
  return aligned_alloc(64, (bytes + 63) & ~(size_t)63);
}

static int bufs_alloc(bufs* b, size_t n, int mixed) {
  memset(b, 0, sizeof *b);
  b->mixed = mixed;
  b->master = xalloc(n * 4), b->m = xalloc(n * 4), b->v = xalloc(n * 4);
  b->grad = xalloc(n * (mixed ? 2 : 4));
  b->param = mixed ? xalloc(n * 2) : NULL;
  return b->master && b->m && b->v && b->grad && (!mixed || b->param) ? 0 : -1;
}

static void bufs_free(bufs* b) {
  free(b->master), free(b->m), free(b->v), free(b->grad), free(b->param);
  memset(b, 0, sizeof *b);
}

/* first touch by the threads that will use the pages (static split, as the kernel) */
static void bufs_init(bufs* b, size_t n, size_t off, int threads) {
  const ptrdiff_t nn = (ptrdiff_t)n;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (ptrdiff_t i = 0; i < nn; i++) {
    const uint64_t k = (uint64_t)i + off;
    b->master[i] = hrand(k, 1);
    b->m[i] = 0.1f * hrand(k, 2);
    b->v[i] = 0.01f * (hrand(k, 3) + 1.0f);
    const float g = hrand(k, 4);
    if (b->mixed) {
      ((uint16_t*)b->grad)[i] = zp_f32_to_bf16(g);
      ((uint16_t*)b->param)[i] = 0;
    } else {
      ((float*)b->grad)[i] = g;
    }
  }
}

static int run(zp_isa isa, bufs* b, size_t n, int step, int threads) {
  const zp_adamw_hparams hp = {1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 1.0f, step};
  return b->mixed ? zp_adamw_cpu_isa(isa, b->param, ZP_BF16, b->master, b->grad, ZP_BF16, b->m,
                                     b->v, n, &hp, threads)
                  : zp_adamw_cpu_isa(isa, b->master, ZP_F32, b->master, b->grad, ZP_F32, b->m,
                                     b->v, n, &hp, threads);
}

/* the ISA on misaligned data (offset 1 element) vs scalar, 2 steps, bitwise */
static int self_check(zp_isa isa, int mixed, int threads) {
  const size_t n = (1u << 20) + 7;
  bufs a, s;
  if (bufs_alloc(&a, n + 1, mixed) || bufs_alloc(&s, n + 1, mixed)) {
    bufs_free(&a), bufs_free(&s);
    return -2;
  }
  bufs_init(&a, n + 1, 0, threads), bufs_init(&s, n + 1, 0, threads);
  bufs av = a, sv = s; /* views shifted by one element */
  av.master++, av.m++, av.v++, sv.master++, sv.m++, sv.v++;
  av.grad = (char*)av.grad + (mixed ? 2 : 4), sv.grad = (char*)sv.grad + (mixed ? 2 : 4);
  if (mixed) av.param = (char*)av.param + 2, sv.param = (char*)sv.param + 2;
  int bad = 0;
  for (int t = 1; t <= 2 && !bad; t++)
    if (run(isa, &av, n, t, threads) || run(ZP_ISA_SCALAR, &sv, n, t, threads)) bad = 1;
  if (!bad)
    bad = memcmp(a.master, s.master, (n + 1) * 4) || memcmp(a.m, s.m, (n + 1) * 4) ||
          memcmp(a.v, s.v, (n + 1) * 4) || (mixed && memcmp(a.param, s.param, (n + 1) * 2));
  bufs_free(&a), bufs_free(&s);
  return bad;
}

static int cmp_d(const void* x, const void* y) {
  double a = *(const double*)x, b = *(const double*)y;
  return a < b ? -1 : a > b;
}

int main(int argc, char** argv) {
  size_t n = (size_t)1 << 28;
  int threads = 0, iters = 5, json = 0;
  const char* isas = "scalar,avx2,avx512";
  const char* modes = "fp32,mixed";
  for (int i = 1; i < argc; i++) {
    const char* a = argv[i];
    const char* val = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--json") == 0) {
      json = 1;
      continue;
    }
    if (!val) {
      fprintf(stderr, "adamw_cpu_bench: %s needs a value (or unknown option)\n", a);
      return 2;
    }
    i++;
    if (strcmp(a, "--n") == 0) {
      if (parse_size(val, &n) || n == 0) {
        fprintf(stderr, "adamw_cpu_bench: --n '%s' is not a positive count\n", val);
        return 2;
      }
    } else if (strcmp(a, "--threads") == 0) {
      threads = atoi(val);
      if (threads < 1 || threads > 4096) {
        fprintf(stderr, "adamw_cpu_bench: --threads '%s' not in 1..4096\n", val);
        return 2;
      }
    } else if (strcmp(a, "--iters") == 0) {
      iters = atoi(val);
      if (iters < 1 || iters > 1000) {
        fprintf(stderr, "adamw_cpu_bench: --iters '%s' not in 1..1000\n", val);
        return 2;
      }
    } else if (strcmp(a, "--isa") == 0) {
      isas = val;
    } else if (strcmp(a, "--mode") == 0) {
      modes = val;
    } else {
      fprintf(stderr, "adamw_cpu_bench: unknown option %s\n", a);
      return 2;
    }
  }
  if (threads == 0) threads = omp_get_max_threads();
  const int nprocs = omp_get_num_procs();
  if (!json)
    printf("adamw_cpu_bench: n=%zu threads=%d (cpus available: %d)%s iters=%d, default ISA %s\n", n,
           threads, nprocs, threads > nprocs ? " OVERSUBSCRIBED" : "", iters,
           zp_isa_name(zp_adamw_isa()));
  int failed = 0;
  for (int mixed = 0; mixed <= 1; mixed++) {
    const char* mname = mixed ? "mixed" : "fp32";
    if (!strstr(modes, mname)) continue;
    const double bpp = 28.0; /* see the header: both modes move 28 B per parameter */
    bufs b;
    int allocated = 0;
    for (zp_isa isa = ZP_ISA_SCALAR; isa <= ZP_ISA_AVX512; isa++) {
      if (!strstr(isas, zp_isa_name(isa))) continue;
      if (!zp_isa_supported(isa)) {
        if (json)
          printf("{\"impl\":\"zp\",\"mode\":\"%s\",\"isa\":\"%s\",\"threads\":%d,\"skipped\":\"not supported by this CPU\"}\n",
                 mname, zp_isa_name(isa), threads);
        else
          printf("%-6s %-7s SKIPPED: this CPU does not support it\n", mname, zp_isa_name(isa));
        continue;
      }
      const int chk = self_check(isa, mixed, threads);
      if (chk) {
        fprintf(stderr, "adamw_cpu_bench: %s %s: %s\n", mname, zp_isa_name(isa),
                chk == -2 ? "cannot allocate the check buffers" : "NOT bitwise equal to scalar");
        failed = chk == -2 ? 2 : 1;
        continue;
      }
      if (!allocated) {
        if (bufs_alloc(&b, n, mixed)) {
          fprintf(stderr, "adamw_cpu_bench: cannot allocate %.1f GB for n=%zu\n",
                  (double)n * 16 / 1e9, n);
          bufs_free(&b);
          return 2;
        }
        bufs_init(&b, n, 0, threads);
        allocated = 1;
      }
      double* ts = calloc((size_t)iters, sizeof *ts);
      if (!ts) return 2;
      int rc = run(isa, &b, n, 1, threads); /* warm-up */
      for (int k = 0; k < iters && !rc; k++) {
        const double t0 = now_s();
        rc = run(isa, &b, n, k + 2, threads);
        ts[k] = now_s() - t0;
      }
      if (rc) {
        fprintf(stderr, "adamw_cpu_bench: kernel returned %d (%s)\n", rc,
                zp_adamw_isa_error(isa) ? zp_adamw_isa_error(isa) : "bad arguments");
        free(ts);
        failed = 1;
        continue;
      }
      qsort(ts, (size_t)iters, sizeof *ts, cmp_d);
      const double med = ts[iters / 2], best = ts[0];
      const double pps = (double)n / med, gbs = bpp * (double)n / med / 1e9;
      if (json)
        printf("{\"impl\":\"zp\",\"mode\":\"%s\",\"isa\":\"%s\",\"n\":%zu,\"threads\":%d,\"nproc\":%d,"
               "\"ms\":%.3f,\"ms_best\":%.3f,\"params_per_s\":%.6g,\"bytes_per_param\":%.0f,\"gb_per_s\":%.2f,\"check\":\"bitwise==scalar\"}\n",
               mname, zp_isa_name(isa), n, threads, nprocs, med * 1e3, best * 1e3, pps, bpp, gbs);
      else
        printf("%-6s %-7s %9.2f ms/step (best %.2f)  %7.3f G params/s  %7.2f GB/s  (%.0f B/param; check: bitwise == scalar)\n",
               mname, zp_isa_name(isa), med * 1e3, best * 1e3, pps / 1e9, gbs, bpp);
      fflush(stdout);
      free(ts);
    }
    if (allocated) bufs_free(&b);
  }
  return failed;
}
