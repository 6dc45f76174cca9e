/* test_comm.c: the shared-memory communicator, with real processes (fork) as ranks.
 * Invariants checked: every collective at 2, 3 and 4 ranks equals a directly computed
 * reference bit for bit (fixed rank order, float/double accumulation, bf16 rounded once),
 * including counts that are not multiples of the rank count and buffers larger than the
 * staging area; results are identical across ranks, runs and staging sizes; send is a
 * rendezvous; split sub-groups run concurrently; a dead or stopped rank makes every other
 * rank fail within the timeout with a message naming it and the operation; nothing is left
 * running afterwards. Each child reports its CHECK failures through its exit status. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bf16.h"
#include "comm.h"
#include "rng.h"
#include "zt.h"

#define MAXR 8

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
static void sleep_s(double s) {
  struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* per-rank reports shared with the parent */
typedef struct {
  int rc;
  double elapsed, value;
  char msg[512];
} report;
static report* g_rep;

static int g_seg_counter;
static void seg_name(char* buf, size_t len) {
  snprintf(buf, len, "/zp-test-%d-%d", (int)getpid(), g_seg_counter++);
}

typedef void (*rank_fn)(zp_comm* c, void* arg);

typedef struct {
  int stop_rank;    /* rank expected to stop itself (SIGSTOP): killed by the parent at the end */
  int lazy_reap;    /* rank whose exit is reaped last (stays a zombie meanwhile) */
  double limit_s;   /* wall limit for the whole run */
} run_opts;

/* Forks n ranks over a fresh segment; each opens the comm, runs fn, destroys, and exits with
 * its CHECK failure count. status[r]: wait status, or -1 if it had to be killed. */
static int run_ranks_opt(int n, size_t stage, double timeout, rank_fn fn, void* arg, int* status,
                         const run_opts* o) {
  char name[64], err[512];
  seg_name(name, sizeof name);
  if (zp_comm_shm_create_segment_ex(name, n, stage, err, sizeof err) != ZP_OK) {
    fprintf(stderr, "create_segment: %s\n", err);
    return -1;
  }
  memset(g_rep, 0, sizeof(report) * MAXR);
  fflush(NULL);
  pid_t pids[MAXR];
  for (int r = 0; r < n; r++) {
    pid_t p = fork();
    if (p == 0) {
      zp_comm* c = NULL;
      int rc = zp_comm_shm_open(name, r, n, timeout, &c, err, sizeof err);
      if (rc != ZP_OK) {
        fprintf(stderr, "rank %d: open failed (%d): %s\n", r, rc, err);
        exit(100);
      }
      zt_cur_fail_ = 0;
      fn(c, arg);
      zp_comm_destroy(c);
      exit(zt_cur_fail_ ? 1 : 0);
    }
    pids[r] = p;
    status[r] = -1;
  }
  double t0 = now_s(), limit = o && o->limit_s > 0 ? o->limit_s : 60.0;
  int left = n;
  for (;;) {
    for (int r = 0; r < n; r++) {
      if (!pids[r]) continue;
      if (o && r == o->lazy_reap && left > 1) continue;
      if (o && r == o->stop_rank && left == 1) { /* everyone else is done: kill the stopped */
        kill(pids[r], SIGKILL);
        waitpid(pids[r], &status[r], 0);
        pids[r] = 0, left--;
        continue;
      }
      if (o && r == o->stop_rank) continue;
      int st;
      if (waitpid(pids[r], &st, WNOHANG) == pids[r]) status[r] = st, pids[r] = 0, left--;
    }
    if (!left) break;
    if (now_s() - t0 > limit) {
      fprintf(stderr, "run_ranks: ranks still running after %.0f s: killing them\n", limit);
      for (int r = 0; r < n; r++)
        if (pids[r]) kill(pids[r], SIGKILL), waitpid(pids[r], NULL, 0), status[r] = -1, pids[r] = 0;
      break;
    }
    sleep_s(0.002);
  }
  zp_comm_shm_unlink(name);
  return 0;
}
static int run_ranks(int n, size_t stage, double timeout, rank_fn fn, void* arg, int* status) {
  run_opts o = {-1, -1, 0};
  return run_ranks_opt(n, stage, timeout, fn, arg, status, &o);
}
static void check_all_ok(int n, const int* st) {
  for (int r = 0; r < n; r++)
    CHECK_MSG(st[r] >= 0 && WIFEXITED(st[r]) && WEXITSTATUS(st[r]) == 0,
              "rank %d of %d: wait status 0x%x", r, n, st[r]);
}

/* ---- reference values ---- */

static float fval(int salt, int r, size_t i) {
  double u = zp_rng_uniform(1000 + (uint64_t)salt, (uint64_t)r, i);
  double e = zp_rng_uniform(2000 + (uint64_t)salt, (uint64_t)r, i);
  return (float)((2 * u - 1) * exp2(floor(e * 16) - 8)); /* wide range: order matters */
}
static void fill(void* buf, zp_dtype dt, int salt, int r, size_t start, size_t n) {
  for (size_t i = 0; i < n; i++) {
    size_t g = start + i;
    switch (dt) {
      case ZP_F32: ((float*)buf)[i] = fval(salt, r, g); break;
      case ZP_F64: ((double*)buf)[i] = (double)fval(salt, r, g) * (1.0 + 1e-9 * (double)g); break;
      case ZP_BF16: ((uint16_t*)buf)[i] = zp_f32_to_bf16(fval(salt, r, g)); break;
      case ZP_I32: ((int32_t*)buf)[i] = (int32_t)(uint32_t)zp_rng_u64(3000 + (uint64_t)salt, (uint64_t)r, g); break;
      case ZP_U16: ((uint16_t*)buf)[i] = (uint16_t)zp_rng_u64(4000 + (uint64_t)salt, (uint64_t)r, g); break;
    }
  }
}
/* expected[i] = reduce over ranks 0..N-1 (in that order) of fill(k, start + i) */
static void expect_reduce(void* out, zp_dtype dt, zp_redop op, int salt, int N, size_t start,
                          size_t n) {
  for (size_t i = 0; i < n; i++) {
    size_t g = start + i;
    if (dt == ZP_F32 || dt == ZP_BF16) {
      float acc = 0;
      for (int k = 0; k < N; k++) {
        float v;
        if (dt == ZP_F32) v = fval(salt, k, g);
        else v = zp_bf16_to_f32(zp_f32_to_bf16(fval(salt, k, g)));
        if (k == 0) acc = v;
        else if (op == ZP_RED_MAX) acc = v > acc ? v : acc;
        else acc += v;
      }
      if (op == ZP_RED_AVG) acc /= (float)N;
      if (dt == ZP_F32) ((float*)out)[i] = acc;
      else ((uint16_t*)out)[i] = zp_f32_to_bf16(acc);
    } else if (dt == ZP_F64) {
      double acc = 0;
      for (int k = 0; k < N; k++) {
        double v = (double)fval(salt, k, g) * (1.0 + 1e-9 * (double)g);
        if (k == 0) acc = v;
        else if (op == ZP_RED_MAX) acc = v > acc ? v : acc;
        else acc += v;
      }
      if (op == ZP_RED_AVG) acc /= (double)N;
      ((double*)out)[i] = acc;
    } else {
      uint32_t s = 0;
      int32_t mx = INT32_MIN;
      for (int k = 0; k < N; k++) {
        int32_t v = (int32_t)(uint32_t)zp_rng_u64(3000 + (uint64_t)salt, (uint64_t)k, g);
        s += (uint32_t)v;
        if (v > mx) mx = v;
      }
      ((int32_t*)out)[i] = op == ZP_RED_MAX ? mx : (int32_t)s;
    }
  }
}
static size_t first_diff(const void* a, const void* b, size_t n, size_t esz) {
  for (size_t i = 0; i < n; i++)
    if (memcmp((const char*)a + i * esz, (const char*)b + i * esz, esz)) return i;
  return (size_t)-1;
}
static const char* dtn(zp_dtype t) {
  return t == ZP_F32 ? "f32" : t == ZP_F64 ? "f64" : t == ZP_BF16 ? "bf16" : t == ZP_I32 ? "i32" : "u16";
}

static const zp_dtype k_red_dts[] = {ZP_F32, ZP_F64, ZP_BF16, ZP_I32};
static const zp_redop k_ops[] = {ZP_RED_SUM, ZP_RED_AVG, ZP_RED_MAX};

/* ---- every op against the reference ---- */

static void rank_allreduce(zp_comm* c, void* arg) {
  (void)arg;
  int N = zp_comm_size(c), r = zp_comm_rank(c);
  static const size_t counts[] = {0, 1, 13, 1001, 20011};
  size_t maxn = 20011;
  void* buf = malloc(maxn * 8);
  void* exp = malloc(maxn * 8);
  int salt = 0;
  for (size_t d = 0; d < 4; d++)
    for (size_t o = 0; o < 3; o++) {
      zp_dtype dt = k_red_dts[d];
      zp_redop op = k_ops[o];
      if (dt == ZP_I32 && op == ZP_RED_AVG) continue;
      for (size_t ci = 0; ci < sizeof counts / sizeof counts[0]; ci++) {
        size_t n = counts[ci], esz = zp_dtype_size(dt);
        salt++;
        fill(buf, dt, salt, r, 0, n);
        int rc = zp_comm_allreduce(c, buf, n, dt, op);
        CHECK_MSG(rc == ZP_OK, "allreduce %s op %d n %zu: %s", dtn(dt), (int)op, n, zp_comm_error(c));
        expect_reduce(exp, dt, op, salt, N, 0, n);
        size_t i = first_diff(buf, exp, n, esz);
        CHECK_MSG(i == (size_t)-1, "N=%d rank %d allreduce %s op %d n %zu: first mismatch at %zu", N,
                  r, dtn(dt), (int)op, n, i);
      }
    }
  /* I32 avg is refused (and that aborts the communicator for everyone, as any failure does) */
  free(buf);
  free(exp);
}

static void rank_reduce_scatter(zp_comm* c, void* arg) {
  (void)arg;
  int N = zp_comm_size(c), r = zp_comm_rank(c);
  static const size_t counts[] = {0, 1, 7, 333, 3001};
  size_t maxn = 3001;
  void* send = malloc(maxn * (size_t)N * 8);
  void* recv = malloc(maxn * 8);
  void* exp = malloc(maxn * 8);
  int salt = 100;
  for (size_t d = 0; d < 4; d++)
    for (size_t o = 0; o < 3; o++) {
      zp_dtype dt = k_red_dts[d];
      zp_redop op = k_ops[o];
      if (dt == ZP_I32 && op == ZP_RED_AVG) continue;
      for (size_t ci = 0; ci < sizeof counts / sizeof counts[0]; ci++) {
        size_t n = counts[ci], esz = zp_dtype_size(dt);
        salt++;
        fill(send, dt, salt, r, 0, n * (size_t)N);
        int rc = zp_comm_reduce_scatter(c, recv, send, n, dt, op);
        CHECK_MSG(rc == ZP_OK, "reduce_scatter: %s", zp_comm_error(c));
        expect_reduce(exp, dt, op, salt, N, (size_t)r * n, n);
        size_t i = first_diff(recv, exp, n, esz);
        CHECK_MSG(i == (size_t)-1, "N=%d rank %d reduce_scatter %s op %d n %zu: mismatch at %zu", N,
                  r, dtn(dt), (int)op, n, i);
      }
    }
  /* in place: recv = send + rank * n */
  size_t n = 777;
  fill(send, ZP_F32, 7, r, 0, n * (size_t)N);
  float* inplace = (float*)send + (size_t)r * n;
  CHECK(zp_comm_reduce_scatter(c, inplace, send, n, ZP_F32, ZP_RED_SUM) == ZP_OK);
  expect_reduce(exp, ZP_F32, ZP_RED_SUM, 7, N, (size_t)r * n, n);
  CHECK(first_diff(inplace, exp, n, 4) == (size_t)-1);
  free(send);
  free(recv);
  free(exp);
}

static void rank_allgather(zp_comm* c, void* arg) {
  (void)arg;
  int N = zp_comm_size(c), r = zp_comm_rank(c);
  static const zp_dtype dts[] = {ZP_F32, ZP_F64, ZP_BF16, ZP_I32, ZP_U16};
  static const size_t counts[] = {0, 1, 7, 1001, 5003};
  size_t maxn = 5003;
  unsigned char* recv = malloc(maxn * (size_t)N * 8);
  unsigned char* exp = malloc(maxn * (size_t)N * 8);
  unsigned char* send = malloc(maxn * 8);
  int salt = 200;
  for (size_t d = 0; d < 5; d++)
    for (size_t ci = 0; ci < 5; ci++)
      for (int inplace = 0; inplace < 2; inplace++) {
        zp_dtype dt = dts[d];
        size_t n = counts[ci], esz = zp_dtype_size(dt);
        salt++;
        for (int k = 0; k < N; k++) fill(exp + (size_t)k * n * esz, dt, salt, k, 0, n);
        memset(recv, 0xAB, maxn * (size_t)N * 8);
        const void* src = send;
        if (inplace) {
          fill(recv + (size_t)r * n * esz, dt, salt, r, 0, n);
          src = recv + (size_t)r * n * esz;
        } else {
          fill(send, dt, salt, r, 0, n);
        }
        int rc = zp_comm_allgather(c, recv, src, n, dt);
        CHECK_MSG(rc == ZP_OK, "allgather: %s", zp_comm_error(c));
        size_t i = first_diff(recv, exp, n * (size_t)N, esz);
        CHECK_MSG(i == (size_t)-1, "N=%d rank %d allgather %s n %zu inplace %d: mismatch at %zu", N,
                  r, dtn(dt), n, inplace, i);
      }
  free(recv);
  free(exp);
  free(send);
}

static void rank_broadcast(zp_comm* c, void* arg) {
  (void)arg;
  int N = zp_comm_size(c), r = zp_comm_rank(c);
  static const zp_dtype dts[] = {ZP_F32, ZP_F64, ZP_BF16, ZP_I32, ZP_U16};
  static const size_t counts[] = {0, 1, 100, 9001};
  unsigned char* buf = malloc(9001 * 8);
  unsigned char* exp = malloc(9001 * 8);
  int salt = 300;
  for (size_t d = 0; d < 5; d++)
    for (size_t ci = 0; ci < 4; ci++)
      for (int root = 0; root < N; root++) {
        zp_dtype dt = dts[d];
        size_t n = counts[ci], esz = zp_dtype_size(dt);
        salt++;
        fill(exp, dt, salt, root, 0, n);
        if (r == root) fill(buf, dt, salt, r, 0, n);
        else memset(buf, 0x5A, n * esz);
        int rc = zp_comm_broadcast(c, buf, n, dt, root);
        CHECK_MSG(rc == ZP_OK, "broadcast: %s", zp_comm_error(c));
        CHECK_MSG(first_diff(buf, exp, n, esz) == (size_t)-1, "N=%d rank %d broadcast %s n %zu root %d",
                  N, r, dtn(dt), n, root);
      }
  CHECK(zp_comm_barrier(c) == ZP_OK);
  free(buf);
  free(exp);
}

static void test_collectives(void) {
  int st[MAXR];
  static const rank_fn fns[] = {rank_allreduce, rank_reduce_scatter, rank_allgather, rank_broadcast};
  for (int n = 2; n <= 4; n++)
    for (size_t f = 0; f < 4; f++) {
      /* 16 KiB of staging per rank: the larger counts go through in several pieces */
      CHECK(run_ranks(n, 16384, 20.0, fns[f], NULL, st) == 0);
      check_all_ok(n, st);
    }
}

/* ---- determinism: identical across ranks, runs and staging sizes ---- */

#define DET_N 60001
static unsigned char* g_det; /* [run][rank][DET_N * 4 (f32) + DET_N * 2 (bf16)] */
static int g_det_run;
static const size_t DET_STRIDE = DET_N * 6;

static void rank_det(zp_comm* c, void* arg) {
  (void)arg;
  int N = zp_comm_size(c), r = zp_comm_rank(c);
  float* f = malloc(DET_N * 4);
  uint16_t* b = malloc(DET_N * 2);
  float* ef = malloc(DET_N * 4);
  fill(f, ZP_F32, 77, r, 0, DET_N);
  fill(b, ZP_BF16, 78, r, 0, DET_N);
  CHECK(zp_comm_allreduce(c, f, DET_N, ZP_F32, ZP_RED_SUM) == ZP_OK);
  CHECK(zp_comm_allreduce(c, b, DET_N, ZP_BF16, ZP_RED_AVG) == ZP_OK);
  expect_reduce(ef, ZP_F32, ZP_RED_SUM, 77, N, 0, DET_N);
  CHECK(first_diff(f, ef, DET_N, 4) == (size_t)-1);
  unsigned char* dst = g_det + ((size_t)g_det_run * MAXR + (size_t)r) * DET_STRIDE;
  memcpy(dst, f, DET_N * 4);
  memcpy(dst + DET_N * 4, b, DET_N * 2);
  free(f);
  free(b);
  free(ef);
}

static void test_deterministic(void) {
  int st[MAXR];
  const int N = 4;
  static const size_t stages[] = {16384, 65536, 0 /* default */};
  g_det = mmap(NULL, 3 * MAXR * DET_STRIDE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  CHECK(g_det != MAP_FAILED);
  if (g_det == MAP_FAILED) return;
  for (g_det_run = 0; g_det_run < 3; g_det_run++) {
    CHECK(run_ranks(N, stages[g_det_run], 20.0, rank_det, NULL, st) == 0);
    check_all_ok(N, st);
  }
  int same = 1;
  for (int run = 0; run < 3; run++)
    for (int r = 0; r < N; r++)
      if (memcmp(g_det, g_det + ((size_t)run * MAXR + (size_t)r) * DET_STRIDE, DET_STRIDE)) same = 0;
  CHECK_MSG(same, "allreduce results differ across ranks, runs or staging sizes");
  munmap(g_det, 3 * MAXR * DET_STRIDE);
}

/* ---- send / recv ---- */

static void rank_p2p(zp_comm* c, void* arg) {
  (void)arg;
  int N = zp_comm_size(c), r = zp_comm_rank(c);
  /* rendezvous: rank 1 posts its recv 300 ms late; rank 0's send must not return before */
  if (N == 2) {
    float x[16], y[16];
    fill(x, ZP_F32, 500, 0, 0, 16);
    CHECK(zp_comm_barrier(c) == ZP_OK); /* start together */
    if (r == 0) {
      double t0 = now_s();
      CHECK(zp_comm_send(c, x, 16, ZP_F32, 1) == ZP_OK);
      g_rep[0].elapsed = now_s() - t0;
    } else {
      sleep_s(0.3);
      CHECK(zp_comm_recv(c, y, 16, ZP_F32, 0) == ZP_OK);
      CHECK(memcmp(x, y, sizeof x) == 0);
    }
  }
  /* a ring, large (several staging pieces), any dtype, plus an empty message */
  size_t n = 100003;
  uint16_t* s = malloc(n * 2);
  uint16_t* d = malloc(n * 2);
  uint16_t* e = malloc(n * 2);
  int to = (r + 1) % N, from = (r + N - 1) % N;
  fill(s, ZP_U16, 501, r, 0, n);
  fill(e, ZP_U16, 501, from, 0, n);
  for (int round = 0; round < 3; round++) {
    int rc1, rc2;
    if (r % 2 == 0) {
      rc1 = zp_comm_send(c, s, n, ZP_U16, to);
      rc2 = zp_comm_recv(c, d, n, ZP_U16, from);
    } else {
      rc2 = zp_comm_recv(c, d, n, ZP_U16, from);
      rc1 = zp_comm_send(c, s, n, ZP_U16, to);
    }
    CHECK_MSG(rc1 == ZP_OK && rc2 == ZP_OK, "ring: %s", zp_comm_error(c));
    CHECK(memcmp(d, e, n * 2) == 0);
    memset(d, 0, n * 2);
  }
  if (r == 0) CHECK(zp_comm_send(c, NULL, 0, ZP_F64, N - 1) == ZP_OK);
  if (r == N - 1) CHECK(zp_comm_recv(c, NULL, 0, ZP_F64, 0) == ZP_OK);
  /* p2p between 0 and 1 while the others already wait in the next collective */
  if (N > 2 && r >= 2) {
    float v = 1.0f;
    CHECK(zp_comm_allreduce(c, &v, 1, ZP_F32, ZP_RED_SUM) == ZP_OK);
    CHECK(v == (float)N);
  } else {
    if (N > 2) sleep_s(0.05);
    if (r == 0) CHECK(zp_comm_send(c, s, n, ZP_U16, 1) == ZP_OK);
    if (r == 1) {
      CHECK(zp_comm_recv(c, d, n, ZP_U16, 0) == ZP_OK);
      CHECK(memcmp(d, e, n * 2) == 0); /* from == 0 for rank 1 */
    }
    float v = 1.0f;
    CHECK(zp_comm_allreduce(c, &v, 1, ZP_F32, ZP_RED_SUM) == ZP_OK);
    CHECK(v == (float)N);
  }
  free(s);
  free(d);
  free(e);
}

static void test_sendrecv(void) {
  int st[MAXR];
  for (int n = 2; n <= 4; n++) {
    CHECK(run_ranks(n, 16384, 20.0, rank_p2p, NULL, st) == 0);
    check_all_ok(n, st);
    if (n == 2) {
      fprintf(stderr, "     send returned after %.3f s (receiver posted after 0.300 s)\n", g_rep[0].elapsed);
      CHECK(g_rep[0].elapsed >= 0.25);
    }
  }
}

/* ---- split ---- */

static void rank_split(zp_comm* c, void* arg) {
  (void)arg;
  int N = zp_comm_size(c), r = zp_comm_rank(c);
  zp_comm* sub = NULL;
  /* two groups by parity; key reverses the order inside each */
  int rc = zp_comm_split(c, r % 2, -r, &sub);
  CHECK_MSG(rc == ZP_OK && sub, "split: %s", zp_comm_error(c));
  if (!sub) return;
  int gsize = (N - r % 2 + 1) / 2;
  CHECK_EQ_INT(zp_comm_size(sub), gsize);
  /* members of my parity in descending world rank: new rank = position */
  int expect_rank = 0;
  for (int j = N - 1; j > r; j--)
    if (j % 2 == r % 2) expect_rank++;
  CHECK_EQ_INT(zp_comm_rank(sub), expect_rank);
  /* both groups run collectives concurrently, of different sizes, interleaved with world ones */
  size_t n = r % 2 ? 3001 : 5003;
  float* buf = malloc(n * 4);
  for (int it = 0; it < 40; it++) {
    for (size_t i = 0; i < n; i++) buf[i] = (float)(r + 1) * (float)(i % 7 + it);
    rc = zp_comm_allreduce(sub, buf, n, ZP_F32, ZP_RED_SUM);
    CHECK_MSG(rc == ZP_OK, "sub allreduce: %s", zp_comm_error(sub));
    float wsum = 0;
    for (int j = r % 2; j < N; j += 2) wsum += (float)(j + 1);
    int bad = 0;
    for (size_t i = 0; i < n; i++) bad += buf[i] != wsum * (float)(i % 7 + it);
    CHECK_EQ_INT(bad, 0);
    if (it % 10 == 9) {
      float v = (float)r;
      CHECK(zp_comm_allreduce(c, &v, 1, ZP_F32, ZP_RED_MAX) == ZP_OK);
      CHECK(v == (float)(N - 1));
    }
  }
  int32_t who = r;
  CHECK(zp_comm_broadcast(sub, &who, 1, ZP_I32, 0) == ZP_OK);
  CHECK_EQ_INT(who, (N - 1) % 2 == r % 2 ? N - 1 : N - 2); /* sub rank 0 = highest world rank */
  if (gsize >= 2) {
    int me = zp_comm_rank(sub);
    if (me == 0) CHECK(zp_comm_send(sub, &who, 1, ZP_I32, 1) == ZP_OK);
    if (me == 1) {
      int32_t got = -1;
      CHECK(zp_comm_recv(sub, &got, 1, ZP_I32, 0) == ZP_OK);
      CHECK_EQ_INT(got, who);
    }
  }
  /* nested split of a sub-communicator: singletons */
  zp_comm* one = NULL;
  CHECK(zp_comm_split(sub, zp_comm_rank(sub), 0, &one) == ZP_OK);
  CHECK(one && zp_comm_size(one) == 1 && zp_comm_rank(one) == 0);
  float v1 = 2.5f;
  if (one) CHECK(zp_comm_allreduce(one, &v1, 1, ZP_F32, ZP_RED_AVG) == ZP_OK && v1 == 2.5f);
  zp_comm_destroy(one);
  zp_comm_destroy(sub);
  free(buf);

  /* slots are reused after destroy; an undefined color yields NULL */
  for (int k = 0; k < 12; k++) {
    zp_comm* s2 = NULL;
    int color = r == N - 1 ? ZP_COMM_SPLIT_UNDEFINED : 0;
    rc = zp_comm_split(c, color, 0, &s2);
    CHECK_MSG(rc == ZP_OK, "split %d: %s", k, zp_comm_error(c));
    if (color < 0) CHECK(s2 == NULL);
    else {
      CHECK(s2 && zp_comm_size(s2) == N - 1);
      float v = 1;
      if (s2) CHECK(zp_comm_allreduce(s2, &v, 1, ZP_F32, ZP_RED_SUM) == ZP_OK && v == (float)(N - 1));
    }
    zp_comm_destroy(s2);
  }
  /* exhaustion: 7 live sub-communicators fill the segment; the 8th split fails on every rank */
  zp_comm* live[ZP_SHM_MAX_COMMS] = {0};
  for (int k = 0; k < ZP_SHM_MAX_COMMS - 1; k++) CHECK(zp_comm_split(c, 0, r, &live[k]) == ZP_OK);
  zp_comm* extra = NULL;
  rc = zp_comm_split(c, 0, r, &extra);
  CHECK_EQ_INT(rc, ZP_E_NOMEM);
  CHECK(extra == NULL);
  CHECK_STR_CONTAINS(zp_comm_error(c), "no free communicator slot");
  for (int k = 0; k < ZP_SHM_MAX_COMMS - 1; k++) zp_comm_destroy(live[k]);
  CHECK(zp_comm_barrier(c) == ZP_OK); /* still usable */
  CHECK(zp_comm_split(c, 0, r, &extra) == ZP_OK && extra);
  zp_comm_destroy(extra);
}

static void test_split(void) {
  int st[MAXR];
  for (int n = 2; n <= 4; n++) {
    CHECK(run_ranks(n, 16384, 20.0, rank_split, NULL, st) == 0);
    check_all_ok(n, st);
  }
}

/* ---- failures: a dead rank, a stopped rank, mismatched calls ---- */

typedef struct {
  int victim;
  int how; /* SIGKILL or SIGSTOP */
} fault_arg;

static void rank_fault(zp_comm* c, void* arg) {
  const fault_arg* fa = arg;
  int r = zp_comm_rank(c);
  float x[4096];
  for (int i = 0; i < 4096; i++) x[i] = (float)i;
  /* one good collective first, so the failure is allreduce #2 */
  CHECK(zp_comm_allreduce(c, x, 4096, ZP_F32, ZP_RED_SUM) == ZP_OK);
  if (r == fa->victim) raise(fa->how);
  double t0 = now_s();
  int rc = zp_comm_allreduce(c, x, 4096, ZP_F32, ZP_RED_SUM);
  g_rep[r].elapsed = now_s() - t0;
  g_rep[r].rc = rc;
  snprintf(g_rep[r].msg, sizeof g_rep[r].msg, "%s", zp_comm_error(c));
  /* after a failure everything fails fast */
  t0 = now_s();
  CHECK(zp_comm_barrier(c) != ZP_OK);
  CHECK(now_s() - t0 < 0.1);
}

static void run_fault(int n, int victim, int how, int lazy) {
  int st[MAXR];
  fault_arg fa = {victim, how};
  run_opts o = {how == SIGSTOP ? victim : -1, lazy ? victim : -1, 30};
  double t0 = now_s();
  CHECK(run_ranks_opt(n, 0, 2.0, rank_fault, &fa, st, &o) == 0);
  char want[32];
  snprintf(want, sizeof want, "rank %d", victim);
  for (int r = 0; r < n; r++) {
    if (r == victim) {
      CHECK_MSG(st[r] >= 0 && WIFSIGNALED(st[r]) && WTERMSIG(st[r]) == SIGKILL, "victim status 0x%x", st[r]);
      continue;
    }
    CHECK_MSG(st[r] >= 0 && WIFEXITED(st[r]) && WEXITSTATUS(st[r]) == 0, "rank %d status 0x%x", r, st[r]);
    fprintf(stderr, "     %d ranks, %s rank %d -> rank %d: rc %d after %.2f s: %s\n", n,
            how == SIGKILL ? "killed" : "stopped", victim, r, g_rep[r].rc, g_rep[r].elapsed, g_rep[r].msg);
    CHECK_EQ_INT(g_rep[r].rc, how == SIGKILL ? ZP_E_COMM : ZP_E_TIMEOUT);
    CHECK_STR_CONTAINS(g_rep[r].msg, want);
    CHECK_STR_CONTAINS(g_rep[r].msg, "allreduce #2");
    CHECK_STR_CONTAINS(g_rep[r].msg, how == SIGKILL ? "died" : "did not reach");
    CHECK(g_rep[r].elapsed < (how == SIGKILL ? 1.0 : 2.6));
  }
  CHECK(now_s() - t0 < 10);
}

static void test_dead_rank(void) {
  run_fault(3, 2, SIGKILL, 0);
  run_fault(4, 1, SIGKILL, 1); /* victim stays a zombie until the end: still detected */
}
static void test_hung_rank(void) {
  run_fault(3, 1, SIGSTOP, 0);
}

static void rank_mismatch(zp_comm* c, void* arg) {
  (void)arg;
  int r = zp_comm_rank(c);
  float x[11] = {0};
  double t0 = now_s();
  int rc = zp_comm_allreduce(c, x, r == 0 ? 10 : 11, ZP_F32, ZP_RED_SUM);
  g_rep[r].rc = rc, g_rep[r].elapsed = now_s() - t0;
  snprintf(g_rep[r].msg, sizeof g_rep[r].msg, "%s", zp_comm_error(c));
}

static void rank_bad_args(zp_comm* c, void* arg) {
  (void)arg;
  int r = zp_comm_rank(c);
  int32_t x[4] = {1, 2, 3, 4};
  double t0 = now_s();
  /* rank 0 passes an op that i32 cannot do: it fails at once, the other follows via abort */
  int rc = zp_comm_allreduce(c, x, 4, ZP_I32, r == 0 ? ZP_RED_AVG : ZP_RED_SUM);
  g_rep[r].rc = rc, g_rep[r].elapsed = now_s() - t0;
  snprintf(g_rep[r].msg, sizeof g_rep[r].msg, "%s", zp_comm_error(c));
}

static void test_errors(void) {
  int st[MAXR];
  CHECK(run_ranks(2, 0, 5.0, rank_mismatch, NULL, st) == 0);
  check_all_ok(2, st);
  for (int r = 0; r < 2; r++) {
    fprintf(stderr, "     mismatch -> rank %d: rc %d: %s\n", r, g_rep[r].rc, g_rep[r].msg);
    CHECK(g_rep[r].rc != ZP_OK);
    CHECK_STR_CONTAINS(g_rep[r].msg, "allreduce #1");
    CHECK(g_rep[r].elapsed < 1.0);
  }
  CHECK(run_ranks(2, 0, 5.0, rank_bad_args, NULL, st) == 0);
  check_all_ok(2, st);
  for (int r = 0; r < 2; r++) {
    CHECK_EQ_INT(g_rep[r].rc, ZP_E_INVALID);
    CHECK_STR_CONTAINS(g_rep[r].msg, "avg is not supported for i32");
    CHECK(g_rep[r].elapsed < 1.0);
  }
  /* a rank that never attaches */
  char name[64], err[512];
  seg_name(name, sizeof name);
  CHECK(zp_comm_shm_create_segment_ex(name, 2, 0, err, sizeof err) == ZP_OK);
  zp_comm* c = NULL;
  double t0 = now_s();
  int rc = zp_comm_shm_open(name, 0, 2, 0.3, &c, err, sizeof err);
  CHECK_EQ_INT(rc, ZP_E_TIMEOUT);
  CHECK(c == NULL);
  CHECK_STR_CONTAINS(err, "rank 1 did not attach");
  CHECK(now_s() - t0 < 1.0);
  zp_comm_shm_unlink(name);
  /* missing segment, wrong size, duplicate name, bad arguments */
  CHECK_EQ_INT(zp_comm_shm_open("/zp-test-does-not-exist", 0, 2, 1, &c, err, sizeof err), ZP_E_IO);
  CHECK_STR_CONTAINS(err, "/zp-test-does-not-exist");
  seg_name(name, sizeof name);
  CHECK(zp_comm_shm_create_segment(name, 3, err, sizeof err) == ZP_OK);
  CHECK(zp_comm_shm_create_segment(name, 3, err, sizeof err) == ZP_E_IO);
  CHECK_EQ_INT(zp_comm_shm_open(name, 0, 2, 1, &c, err, sizeof err), ZP_E_INVALID);
  CHECK_STR_CONTAINS(err, "created for 3 ranks");
  zp_comm_shm_unlink(name);
  CHECK_EQ_INT(zp_comm_shm_create_segment("no-slash", 2, err, sizeof err), ZP_E_INVALID);
  CHECK_EQ_INT(zp_comm_shm_create_segment("/zp-x", 0, err, sizeof err), ZP_E_INVALID);
  CHECK_EQ_INT(zp_comm_shm_open("/zp-x", 2, 2, 1, &c, err, sizeof err), ZP_E_INVALID);
}

/* ---- one rank, and the environment ---- */

static void clear_env(void) {
  static const char* vars[] = {"ZP_RANK", "ZP_WORLD_SIZE", "ZP_LOCAL_RANK", "ZP_SHM_NAME",
                               "ZP_COMM_TIMEOUT", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                               "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                               "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS",
                               "SLURM_LOCALID"};
  for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) unsetenv(vars[i]);
}

static void test_self_and_env(void) {
  char err[512];
  clear_env();
  zp_comm* c = NULL;
  CHECK(zp_comm_from_env(&c, err, sizeof err) == ZP_OK);
  CHECK(c && zp_comm_size(c) == 1 && zp_comm_rank(c) == 0);
  if (!c) return;
  float x[3] = {1, 2, 3}, y[3] = {0};
  CHECK(zp_comm_allreduce(c, x, 3, ZP_F32, ZP_RED_AVG) == ZP_OK && x[1] == 2);
  CHECK(zp_comm_allgather(c, y, x, 3, ZP_F32) == ZP_OK && memcmp(x, y, sizeof x) == 0);
  CHECK(zp_comm_reduce_scatter(c, y, x, 3, ZP_F32, ZP_RED_SUM) == ZP_OK && y[2] == 3);
  CHECK(zp_comm_broadcast(c, x, 3, ZP_F32, 0) == ZP_OK);
  CHECK(zp_comm_barrier(c) == ZP_OK);
  CHECK_EQ_INT(zp_comm_send(c, x, 3, ZP_F32, 0), ZP_E_INVALID);
  CHECK_EQ_INT(zp_comm_allreduce(c, x, 3, ZP_U16, ZP_RED_SUM), ZP_E_INVALID);
  zp_comm* s = NULL;
  CHECK(zp_comm_split(c, 0, 0, &s) == ZP_OK && s && zp_comm_size(s) == 1);
  zp_comm_destroy(s);
  zp_comm_destroy(c);

  /* torchrun says world 2 but gives no rendezvous address (the full torchrun path is
   * tested end to end in tests/integration/external_launcher.sh) */
  setenv("RANK", "0", 1), setenv("WORLD_SIZE", "2", 1), setenv("LOCAL_RANK", "0", 1);
  CHECK(zp_comm_from_env(&c, err, sizeof err) != ZP_OK);
  CHECK_STR_CONTAINS(err, "MASTER_PORT is not set");
  clear_env();
  setenv("ZP_SHM_NAME", "/zp-x", 1);
  CHECK_EQ_INT(zp_comm_from_env(&c, err, sizeof err), ZP_E_INVALID);
  clear_env();

  /* the launcher's environment in two forked ranks */
  char name[64];
  seg_name(name, sizeof name);
  CHECK(zp_comm_shm_create_segment(name, 2, err, sizeof err) == ZP_OK);
  fflush(NULL);
  pid_t p[2];
  for (int r = 0; r < 2; r++) {
    p[r] = fork();
    if (p[r] == 0) {
      char rs[16];
      snprintf(rs, sizeof rs, "%d", r);
      setenv("ZP_RANK", rs, 1), setenv("ZP_LOCAL_RANK", rs, 1), setenv("ZP_WORLD_SIZE", "2", 1);
      setenv("ZP_SHM_NAME", name, 1), setenv("ZP_COMM_TIMEOUT", "5", 1);
      zp_comm* w = NULL;
      if (zp_comm_from_env(&w, err, sizeof err) != ZP_OK) {
        fprintf(stderr, "from_env: %s\n", err);
        exit(2);
      }
      int32_t v = r + 1;
      int ok = zp_comm_size(w) == 2 && zp_comm_rank(w) == r &&
               zp_comm_allreduce(w, &v, 1, ZP_I32, ZP_RED_SUM) == ZP_OK && v == 3;
      zp_comm_destroy(w);
      exit(ok ? 0 : 1);
    }
  }
  for (int r = 0; r < 2; r++) {
    int stt = -1;
    waitpid(p[r], &stt, 0);
    CHECK_MSG(WIFEXITED(stt) && WEXITSTATUS(stt) == 0, "env rank %d status 0x%x", r, stt);
  }
  zp_comm_shm_unlink(name);
  setenv("ZP_COMM_TIMEOUT", "abc", 1), setenv("ZP_SHM_NAME", "/zp-x", 1);
  setenv("ZP_RANK", "0", 1), setenv("ZP_WORLD_SIZE", "1", 1), setenv("ZP_LOCAL_RANK", "0", 1);
  CHECK_EQ_INT(zp_comm_from_env(&c, err, sizeof err), ZP_E_INVALID);
  CHECK_STR_CONTAINS(err, "ZP_COMM_TIMEOUT");
  clear_env();
}

/* ---- bandwidth (printed, not asserted) ---- */

#define BW_N (16u << 20) /* 64 MiB of f32 */
static void rank_bw(zp_comm* c, void* arg) {
  (void)arg;
  int r = zp_comm_rank(c), N = zp_comm_size(c);
  float* x = malloc((size_t)BW_N * 4);
  if (!x) {
    CHECK(x != NULL);
    return;
  }
  for (size_t i = 0; i < BW_N; i++) x[i] = (float)(i & 1023);
  CHECK(zp_comm_allreduce(c, x, BW_N, ZP_F32, ZP_RED_SUM) == ZP_OK); /* warm-up */
  int iters = 5;
  CHECK(zp_comm_barrier(c) == ZP_OK);
  double t0 = now_s();
  for (int i = 0; i < iters; i++) CHECK(zp_comm_allreduce(c, x, BW_N, ZP_F32, ZP_RED_AVG) == ZP_OK);
  double dt = (now_s() - t0) / iters;
  CHECK(x[5] == 5.0f * (float)N); /* sum once, then averages of equal values */
  if (r == 0) g_rep[0].elapsed = dt;
  free(x);
}

static void test_bandwidth(void) {
  int st[MAXR];
  CHECK(run_ranks(2, 0, 60.0, rank_bw, NULL, st) == 0);
  check_all_ok(2, st);
  double dt = g_rep[0].elapsed;
  fprintf(stderr, "     allreduce 64 MiB f32, 2 ranks: %.1f ms per call, %.2f GB/s (algorithm bandwidth)\n",
          dt * 1e3, dt > 0 ? (double)BW_N * 4 / dt / 1e9 : 0.0);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  g_rep = mmap(NULL, sizeof(report) * MAXR, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (g_rep == MAP_FAILED) {
    perror("mmap");
    return 1;
  }
  double t0 = now_s();
  ZT_RUN(test_collectives);
  ZT_RUN(test_deterministic);
  ZT_RUN(test_sendrecv);
  ZT_RUN(test_split);
  ZT_RUN(test_errors);
  ZT_RUN(test_dead_rank);
  ZT_RUN(test_hung_rank);
  ZT_RUN(test_self_and_env);
  ZT_RUN(test_bandwidth);
  fprintf(stderr, "total %.1f s\n", now_s() - t0);
  return zt_done();
}
