/* test_bootstrap.c: rank discovery from launcher environments and the TCP rendezvous.
 * Invariants checked: each launcher family (zp, torchrun, Open MPI, Slurm) is read in priority
 * order and validated with errors naming the variable; zp_tcp_bcast hands rank 0's blob to
 * every rank among forked processes on 127.0.0.1 (only that address), survives ranks that
 * start before rank 0 and stray non-zp connections, refuses mismatched lengths, and times out
 * with a message naming the address and what failed. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bootstrap.h"
#include "zp/zp_plugin.h"
#include "zt.h"

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

static void clear_env(void) {
  static const char* vars[] = {"ZP_RANK", "ZP_WORLD_SIZE", "ZP_LOCAL_RANK", "RANK", "WORLD_SIZE",
                               "LOCAL_RANK", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                               "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS",
                               "SLURM_LOCALID", "MASTER_ADDR", "MASTER_PORT"};
  for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) unsetenv(vars[i]);
}
static void set3(const char* a, const char* av, const char* b, const char* bv, const char* c,
                 const char* cv) {
  if (av) setenv(a, av, 1);
  if (bv) setenv(b, bv, 1);
  if (cv) setenv(c, cv, 1);
}

static void test_env_families(void) {
  char err[512];
  int r = -1, w = -1, l = -1;
  clear_env();
  CHECK(zp_bootstrap_env(&r, &w, &l, err, sizeof err) == ZP_OK);
  CHECK(r == 0 && w == 1 && l == 0);
  CHECK(strcmp(zp_bootstrap_env_source(), "none") == 0);

  set3("SLURM_PROCID", "5", "SLURM_NTASKS", "8", "SLURM_LOCALID", "1");
  CHECK(zp_bootstrap_env(&r, &w, &l, err, sizeof err) == ZP_OK);
  CHECK(r == 5 && w == 8 && l == 1);
  CHECK(strcmp(zp_bootstrap_env_source(), "slurm") == 0);

  set3("OMPI_COMM_WORLD_RANK", "3", "OMPI_COMM_WORLD_SIZE", "4", "OMPI_COMM_WORLD_LOCAL_RANK", "3");
  CHECK(zp_bootstrap_env(&r, &w, &l, err, sizeof err) == ZP_OK);
  CHECK(r == 3 && w == 4 && l == 3);
  CHECK(strcmp(zp_bootstrap_env_source(), "openmpi") == 0);

  set3("RANK", "2", "WORLD_SIZE", "16", "LOCAL_RANK", "2");
  CHECK(zp_bootstrap_env(&r, &w, &l, err, sizeof err) == ZP_OK);
  CHECK(r == 2 && w == 16 && l == 2);
  CHECK(strcmp(zp_bootstrap_env_source(), "torchrun") == 0);

  set3("ZP_RANK", "1", "ZP_WORLD_SIZE", "2", "ZP_LOCAL_RANK", "1");
  CHECK(zp_bootstrap_env(&r, &w, &l, err, sizeof err) == ZP_OK);
  CHECK(r == 1 && w == 2 && l == 1);
  CHECK(strcmp(zp_bootstrap_env_source(), "zp") == 0);
  clear_env();
}

static void expect_env_error(const char* needle) {
  char err[512] = "";
  int r, w, l;
  CHECK_EQ_INT(zp_bootstrap_env(&r, &w, &l, err, sizeof err), ZP_E_INVALID);
  CHECK_STR_CONTAINS(err, needle);
  clear_env();
}

static void test_env_errors(void) {
  clear_env();
  set3("RANK", "x1", "WORLD_SIZE", "4", "LOCAL_RANK", "0");
  expect_env_error("RANK='x1' is not an integer");
  set3("RANK", "1 ", "WORLD_SIZE", "4", "LOCAL_RANK", "0");
  expect_env_error("RANK='1 '");
  set3("RANK", "4", "WORLD_SIZE", "4", "LOCAL_RANK", "0");
  expect_env_error("RANK=4 is out of range for WORLD_SIZE=4");
  set3("ZP_RANK", "-1", "ZP_WORLD_SIZE", "4", "ZP_LOCAL_RANK", "0");
  expect_env_error("ZP_RANK=-1 is out of range");
  set3("ZP_RANK", "0", "ZP_WORLD_SIZE", "0", "ZP_LOCAL_RANK", "0");
  expect_env_error("ZP_WORLD_SIZE=0");
  set3("OMPI_COMM_WORLD_RANK", "0", "OMPI_COMM_WORLD_SIZE", NULL, "OMPI_COMM_WORLD_LOCAL_RANK", "0");
  expect_env_error("OMPI_COMM_WORLD_SIZE is not set");
  set3("SLURM_PROCID", "0", "SLURM_NTASKS", "2", "SLURM_LOCALID", NULL);
  expect_env_error("SLURM_LOCALID is not set");
  set3("WORLD_SIZE", "2", "RANK", NULL, "LOCAL_RANK", NULL);
  expect_env_error("RANK is not set");
  set3("RANK", "", "WORLD_SIZE", "2", "LOCAL_RANK", "0");
  expect_env_error("RANK is set but empty");
  set3("RANK", "0", "WORLD_SIZE", "99999999999", "LOCAL_RANK", "0");
  expect_env_error("WORLD_SIZE='99999999999' is not an integer");
  set3("RANK", "0", "WORLD_SIZE", "2", "LOCAL_RANK", "2");
  expect_env_error("LOCAL_RANK=2 is out of range");

  char addr[64], err[512];
  int port = 0;
  CHECK_EQ_INT(zp_bootstrap_master(addr, sizeof addr, &port, err, sizeof err), ZP_E_INVALID);
  CHECK_STR_CONTAINS(err, "MASTER_PORT is not set");
  setenv("MASTER_PORT", "70000", 1);
  CHECK_EQ_INT(zp_bootstrap_master(addr, sizeof addr, &port, err, sizeof err), ZP_E_INVALID);
  CHECK_STR_CONTAINS(err, "MASTER_PORT='70000'");
  setenv("MASTER_PORT", "29500", 1);
  CHECK(zp_bootstrap_master(addr, sizeof addr, &port, err, sizeof err) == ZP_OK);
  CHECK(port == 29500 && strcmp(addr, "127.0.0.1") == 0);
  clear_env();
}

/* a free TCP port on 127.0.0.1 (bound then released) */
static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t al = sizeof a;
  int port = -1;
  if (fd >= 0 && bind(fd, (struct sockaddr*)&a, sizeof a) == 0 &&
      getsockname(fd, (struct sockaddr*)&a, &al) == 0)
    port = ntohs(a.sin_port);
  if (fd >= 0) close(fd);
  return port;
}

static void make_blob(unsigned char* b, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++) b[i] = (unsigned char)((i * 131 + seed * 7 + 3) ^ (i >> 3));
}

typedef struct {
  int rc;
  double elapsed;
  char msg[512];
} report;
static report* g_rep;

/* rank r of `world` in a child: 0 sends, others receive and compare. */
static pid_t spawn_rank(int r, int world, int port, size_t len, double delay, double timeout) {
  fflush(NULL);
  pid_t p = fork();
  if (p != 0) return p;
  sleep_s(delay);
  unsigned char* blob = calloc(len ? len : 1, 1);
  unsigned char* want = calloc(len ? len : 1, 1);
  make_blob(want, len, 42);
  if (r == 0) memcpy(blob, want, len);
  double t0 = now_s();
  int rc = zp_tcp_bcast("127.0.0.1", port, r, world, blob, len, timeout, g_rep[r].msg,
                        sizeof g_rep[r].msg);
  g_rep[r].rc = rc;
  g_rep[r].elapsed = now_s() - t0;
  int ok = rc == ZP_OK && memcmp(blob, want, len) == 0;
  free(blob);
  free(want);
  exit(ok ? 0 : 1);
}
static int wait_ok(pid_t p) {
  int st = -1;
  if (waitpid(p, &st, 0) != p) return 0;
  return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

static void test_tcp_bcast(void) {
  int port = free_port();
  CHECK(port > 0);
  memset(g_rep, 0, sizeof(report) * 4);
  /* ranks 1 and 2 start first and must retry until rank 0 listens */
  pid_t p1 = spawn_rank(1, 3, port, 128, 0.0, 10.0);
  pid_t p2 = spawn_rank(2, 3, port, 128, 0.0, 10.0);
  pid_t p0 = spawn_rank(0, 3, port, 128, 0.3, 10.0);
  CHECK_MSG(wait_ok(p0), "rank 0: %s", g_rep[0].msg);
  CHECK_MSG(wait_ok(p1), "rank 1: %s", g_rep[1].msg);
  CHECK_MSG(wait_ok(p2), "rank 2: %s", g_rep[2].msg);
  /* a larger blob, rank 0 first this time */
  port = free_port();
  p0 = spawn_rank(0, 2, port, 1 << 20, 0.0, 10.0);
  p1 = spawn_rank(1, 2, port, 1 << 20, 0.1, 10.0);
  CHECK_MSG(wait_ok(p0), "rank 0: %s", g_rep[0].msg);
  CHECK_MSG(wait_ok(p1), "rank 1: %s", g_rep[1].msg);
  /* world of one: nothing to do */
  unsigned char b[4] = {1, 2, 3, 4};
  char err[512];
  CHECK(zp_tcp_bcast("127.0.0.1", 1, 0, 1, b, 4, 1.0, err, sizeof err) == ZP_OK);
  CHECK_EQ_INT(zp_tcp_bcast("127.0.0.1", 0, 0, 2, b, 4, 1.0, err, sizeof err), ZP_E_INVALID);
  CHECK_EQ_INT(zp_tcp_bcast("127.0.0.1", 1234, 2, 2, b, 4, 1.0, err, sizeof err), ZP_E_INVALID);
}

static void test_tcp_stray_connection(void) {
  int port = free_port();
  memset(g_rep, 0, sizeof(report) * 4);
  pid_t p0 = spawn_rank(0, 2, port, 128, 0.0, 10.0);
  sleep_s(0.2);
  /* something that is not a zp rank connects and talks nonsense */
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons((uint16_t)port);
  CHECK(connect(fd, (struct sockaddr*)&a, sizeof a) == 0);
  const char junk[] = "GET / HTTP/1.0\r\nHost: x\r\n\r\n";
  CHECK(write(fd, junk, sizeof junk - 1) == (ssize_t)(sizeof junk - 1));
  pid_t p1 = spawn_rank(1, 2, port, 128, 0.0, 10.0);
  CHECK_MSG(wait_ok(p0), "rank 0: %s", g_rep[0].msg);
  CHECK_MSG(wait_ok(p1), "rank 1: %s", g_rep[1].msg);
  close(fd);
}

static void test_tcp_errors(void) {
  char err[512];
  unsigned char b[128];
  /* nobody listens: rank 1 retries until its deadline */
  int port = free_port();
  double t0 = now_s();
  int rc = zp_tcp_bcast("127.0.0.1", port, 1, 2, b, sizeof b, 0.5, err, sizeof err);
  double dt = now_s() - t0;
  fprintf(stderr, "     no rank 0: %s\n", err);
  CHECK_EQ_INT(rc, ZP_E_TIMEOUT);
  char where[64];
  snprintf(where, sizeof where, "127.0.0.1:%d", port);
  CHECK_STR_CONTAINS(err, where);
  CHECK_STR_CONTAINS(err, "could not connect");
  CHECK_STR_CONTAINS(err, "Connection refused");
  CHECK(dt >= 0.45 && dt < 2.0);
  /* nobody connects: rank 0 names the missing ranks */
  port = free_port();
  rc = zp_tcp_bcast("127.0.0.1", port, 0, 3, b, sizeof b, 0.3, err, sizeof err);
  fprintf(stderr, "     no peers: %s\n", err);
  CHECK_EQ_INT(rc, ZP_E_TIMEOUT);
  CHECK_STR_CONTAINS(err, "missing: 1, 2");
  /* length mismatch: both sides fail and say so */
  memset(g_rep, 0, sizeof(report) * 4);
  port = free_port();
  pid_t p0 = spawn_rank(0, 2, port, 128, 0.0, 5.0);
  pid_t p1 = spawn_rank(1, 2, port, 64, 0.1, 5.0);
  CHECK(!wait_ok(p0));
  CHECK(!wait_ok(p1));
  fprintf(stderr, "     mismatch: rank 0: %s\n     mismatch: rank 1: %s\n", g_rep[0].msg, g_rep[1].msg);
  CHECK_STR_CONTAINS(g_rep[0].msg, "blob length differs");
  CHECK_STR_CONTAINS(g_rep[1].msg, "refused");
  CHECK(g_rep[0].elapsed < 3.0 && g_rep[1].elapsed < 3.0);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  g_rep = mmap(NULL, sizeof(report) * 4, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (g_rep == MAP_FAILED) return 1;
  ZT_RUN(test_env_families);
  ZT_RUN(test_env_errors);
  ZT_RUN(test_tcp_bcast);
  ZT_RUN(test_tcp_stray_connection);
  ZT_RUN(test_tcp_errors);
  return zt_done();
}
