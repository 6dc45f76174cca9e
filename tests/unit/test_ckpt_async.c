/* test_ckpt_async.c: asynchronous checkpoint saving (zp_ckpt_saver in core/ckpt.c), on forked
 * CPU ranks over the shared-memory communicator.
 * Invariants checked: the staging image is allocated once through the ledger (BUFFER, cpu
 * tier, exactly the rank file's size); an asynchronous save is a snapshot of the step boundary
 * (the buffers are overwritten right after staging) and its rank files are byte-identical to a
 * synchronous save of the same state at 3 ranks with ZeRO-1; back-to-back saves wait for each
 * other and retention keeps the newest K; a rank killed inside its background writer leaves
 * the previous checkpoint the newest complete one (the survivors fail, naming the problem); a
 * writer that fails (file size limit) is reported on every rank, with rank 1's reason on rank
 * 0. Everything forks before the parent touches OpenMP. */
#define _GNU_SOURCE
#include <ftw.h>
#include <jansson.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bf16.h"
#include "ckpt.h"
#include "comm.h"
#include "config.h"
#include "runtime.h"
#include "zt.h"

static int rm_cb(const char* p, const struct stat* sb, int flag, struct FTW* f) {
  (void)sb; (void)flag; (void)f;
  return remove(p);
}
static void rm_rf(const char* p) { nftw(p, rm_cb, 16, FTW_DEPTH | FTW_PHYS); }

static int exists(const char* dir, const char* name) {
  char p[1024];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  struct stat st;
  return stat(p, &st) == 0;
}

static int same_file(const char* a, const char* b) {
  FILE *x = fopen(a, "rb"), *y = fopen(b, "rb");
  int same = x && y;
  while (same) {
    int c = fgetc(x), d = fgetc(y);
    if (c != d) same = 0;
    if (c == EOF || d == EOF) break;
  }
  if (x) fclose(x);
  if (y) fclose(y);
  return same;
}

static int make_cfg(zp_config* c, const char* strategy) {
  char err[1024], s[64];
  snprintf(s, sizeof s, "zero.plugin=%s", strategy);
  int rc = zp_config_defaults(c);
  const char* sets[] = {"model.n_layer=2", "model.n_head=2", "model.d_model=32", "model.seq_len=16", "model.vocab_size=64",
                        "model.vocab_pad=64", "train.micro_batch=2", "train.threads=1", "train.precision=bf16", s};
  for (size_t i = 0; i < sizeof sets / sizeof sets[0] && !rc; i++) rc = zp_config_set(c, sets[i], err, sizeof err);
  return rc;
}

/* every held buffer (weights, master, optimizer) filled with a seed-dependent pattern */
static void fill(zp_run* r, int seed) {
  for (int g = 0; g < r->layout.n_groups; g++)
    for (int c = ZP_CAT_PARAM; c <= ZP_CAT_OPTIM; c++) {
      zp_group_info* in = &r->groups[g].info;
      if (c == ZP_CAT_GRAD || !in->buf[c]) continue;
      size_t n = in->bytes[c];
      unsigned char* h = malloc(n);
      for (size_t i = 0; i < n; i++) h[i] = (unsigned char)((i * 31 + (size_t)g * 7 + (size_t)c * 3 + (size_t)seed * 101) >> 2);
      if (in->dtype[c] == ZP_BF16 || in->dtype[c] == ZP_F32) /* keep values finite: clear exponent bits' top */
        for (size_t i = (in->dtype[c] == ZP_BF16 ? 1 : 3); i < n; i += (in->dtype[c] == ZP_BF16 ? 2 : 4)) h[i] &= 0x3f;
      r->ops->copy_h2d(r->be, in->buf[c], h, n);
      free(h);
    }
}

typedef struct {
  const char* mode;
  const char *dir_a, *dir_b, *dir_c;
} job;

/* one rank; returns 0 when everything it checks holds */
static int rank_main(const char* shm, int rank, int world, const job* j) {
  char err[2048];
  zp_comm* comm = NULL;
  if (zp_comm_shm_open(shm, rank, world, 10.0, &comm, err, sizeof err)) {
    fprintf(stderr, "rank %d: %s\n", rank, err);
    return 2;
  }
  zp_config c;
  zp_run r;
  zp_run_opts o;
  memset(&o, 0, sizeof o);
  o.world = world;
  o.rank = rank;
  o.comm = comm;
  o.no_acts = 1;
  if (make_cfg(&c, world > 1 ? "stage1" : "none") || zp_run_open(&r, &c, &o)) {
    fprintf(stderr, "rank %d: open: %s\n", rank, r.err);
    return 3;
  }
  int bad = 0;
  zp_ckpt_saver* s = NULL;
  long long before = r.ledger.cur[ZP_CAT_BUFFER][ZP_TIER_CPU];
  if (zp_ckpt_saver_open(&r, j->dir_a, 10, 1, 2.0, &s, err, sizeof err)) {
    fprintf(stderr, "rank %d: saver: %s\n", rank, err);
    bad = 4;
  }
  long long staged = r.ledger.cur[ZP_CAT_BUFFER][ZP_TIER_CPU] - before;
  if (!strcmp(j->mode, "bytes") && !bad) {
    if (staged < 4096) {
      fprintf(stderr, "rank %d: staging image not in the ledger (%lld bytes)\n", rank, staged);
      bad = 5;
    }
    fill(&r, 1);
    r.opt.step_t = 4;
    int rc = zp_ckpt_saver_save(s, &r, 4, 40, "# async\n", 0, NULL, err, sizeof err);
    fill(&r, 2); /* training goes on: the save must not see this */
    r.opt.step_t = 5;
    if (!rc) rc = zp_ckpt_saver_wait(s, &r, err, sizeof err);
    if (rc) { fprintf(stderr, "rank %d: async save: %s\n", rank, err); bad = 6; }
    fill(&r, 1);
    r.opt.step_t = 4;
    rc = zp_ckpt_save(&r, j->dir_b, 4, 40, 2, "# sync\n", err, sizeof err);
    if (rc) { fprintf(stderr, "rank %d: sync save: %s\n", rank, err); bad = 7; }
    /* back to back (each waits for the one before), retention keeps 2; another staging image */
    zp_ckpt_saver* s2 = NULL;
    if (!bad && zp_ckpt_saver_open(&r, j->dir_c, 2, 1, 2.0, &s2, err, sizeof err)) { fprintf(stderr, "rank %d: %s\n", rank, err); bad = 8; }
    for (int st = 4; st <= 16 && !bad; st += 4)
      if (zp_ckpt_saver_save(s2, &r, st, (uint64_t)st * 10, NULL, 0, NULL, err, sizeof err)) { fprintf(stderr, "rank %d: %s\n", rank, err); bad = 8; }
    if (!bad && zp_ckpt_saver_wait(s2, &r, err, sizeof err)) { fprintf(stderr, "rank %d: %s\n", rank, err); bad = 9; }
    zp_ckpt_saver_close(s2, &r);
  } else if (!strcmp(j->mode, "kill") && !bad) {
    fill(&r, 1);
    if (zp_ckpt_saver_save(s, &r, 2, 20, NULL, 1, NULL, err, sizeof err)) { fprintf(stderr, "rank %d: %s\n", rank, err); bad = 10; }
    if (rank == 1) setenv("ZP_CRASH_AT", "async_write:2@1", 1);
    int rc = zp_ckpt_saver_save(s, &r, 4, 40, NULL, 0, NULL, err, sizeof err);
    if (!rc) rc = zp_ckpt_saver_wait(s, &r, err, sizeof err);
    /* rank 1 is dead by now; rank 0 must have failed with a message */
    if (!rc || !err[0]) { fprintf(stderr, "rank %d: the save did not fail (%d)\n", rank, rc); bad = 11; }
    else fprintf(stderr, "rank %d (expected failure): %s\n", rank, err);
  } else if (!strcmp(j->mode, "efbig") && !bad) {
    fill(&r, 1);
    if (rank == 1) {
      signal(SIGXFSZ, SIG_IGN);
      struct rlimit rl = {8192, 8192};
      setrlimit(RLIMIT_FSIZE, &rl);
    }
    int rc = zp_ckpt_saver_save(s, &r, 6, 60, NULL, 0, NULL, err, sizeof err);
    if (!rc) rc = zp_ckpt_saver_wait(s, &r, err, sizeof err);
    const char* want = rank == 0 ? "rank 1's background writer failed" : "File too large";
    if (!rc || !strstr(err, want)) { fprintf(stderr, "rank %d: expected \"%s\", got %d: %s\n", rank, want, rc, err); bad = 12; }
    else fprintf(stderr, "rank %d (expected failure): %s\n", rank, err);
  }
  zp_ckpt_saver_close(s, &r);
  if (r.ledger.cur[ZP_CAT_BUFFER][ZP_TIER_CPU] != before && !bad) {
    fprintf(stderr, "rank %d: staging image not returned to the ledger\n", rank);
    bad = 13;
  }
  zp_run_close(&r);
  zp_config_free(&c);
  zp_comm_destroy(comm);
  return bad;
}

/* world ranks as processes; returns a bit per rank that failed or was killed */
static int run_ranks(int world, const job* j, int* killed) {
  char shm[64], err[512];
  snprintf(shm, sizeof shm, "/zp-ckpt-async-%d-%s", (int)getpid(), j->mode);
  if (zp_comm_shm_create_segment(shm, world, err, sizeof err)) {
    fprintf(stderr, "segment: %s\n", err);
    return -1;
  }
  pid_t pids[8];
  fflush(NULL);
  for (int k = 0; k < world; k++) {
    pids[k] = fork();
    if (pids[k] == 0) _exit(rank_main(shm, k, world, j));
  }
  int failed = 0;
  *killed = 0;
  for (int k = 0; k < world; k++) {
    int st = 0;
    waitpid(pids[k], &st, 0);
    if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) *killed |= 1 << k;
    else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      fprintf(stderr, "%s: rank %d: %s %d\n", j->mode, k, WIFEXITED(st) ? "exit" : "signal", WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
      failed |= 1 << k;
    }
  }
  zp_comm_shm_unlink(shm);
  return failed;
}

static char g_dir[256];

static void test_async_bytes(void) {
  char a[400], b[400], c[400], pa[600], pb[600];
  snprintf(a, sizeof a, "%s/async", g_dir);
  snprintf(b, sizeof b, "%s/sync", g_dir);
  snprintf(c, sizeof c, "%s/backtoback", g_dir);
  job j = {"bytes", a, b, c};
  int killed = 0;
  CHECK_EQ_INT(run_ranks(3, &j, &killed), 0);
  CHECK_EQ_INT(killed, 0);
  for (int k = 0; k < 3; k++) {
    char f[64];
    snprintf(f, sizeof f, "rank%05d.bin", k);
    snprintf(pa, sizeof pa, "%s/ckpt_00000004/%s", a, f);
    snprintf(pb, sizeof pb, "%s/ckpt_00000004/%s", b, f);
    CHECK_MSG(same_file(pa, pb), "%s differs between the asynchronous and the synchronous save", f);
  }
  /* meta.json: the same but for the writer and the config text */
  snprintf(pa, sizeof pa, "%s/ckpt_00000004", a);
  json_error_t je;
  char ma[700];
  snprintf(ma, sizeof ma, "%s/meta.json", pa);
  json_t* m = json_load_file(ma, 0, &je);
  CHECK(m && !strcmp(json_string_value(json_object_get(m, "writer")), "async") && json_integer_value(json_object_get(m, "step_t")) == 4);
  json_decref(m);
  char found[600] = "";
  CHECK_EQ_INT(zp_ckpt_find_latest(c, found, sizeof found), 0);
  CHECK_STR_CONTAINS(found, "ckpt_00000016");
  CHECK(exists(c, "ckpt_00000012") && exists(c, "ckpt_00000016") && !exists(c, "ckpt_00000008") && !exists(c, "ckpt_00000004"));
  CHECK(!exists(c, "ckpt_00000016.tmp"));
}

static void test_async_kill(void) {
  char a[400];
  snprintf(a, sizeof a, "%s/kill", g_dir);
  job j = {"kill", a, NULL, NULL};
  int killed = 0;
  int failed = run_ranks(2, &j, &killed);
  CHECK_EQ_INT(killed, 2);   /* rank 1 died at the crash point */
  CHECK_EQ_INT(failed, 0);   /* rank 0 saw a failure with a message */
  char found[600] = "";
  CHECK_EQ_INT(zp_ckpt_find_latest(a, found, sizeof found), 0);
  CHECK_STR_CONTAINS(found, "ckpt_00000002");
  CHECK(exists(a, "ckpt_00000004.tmp") && !exists(a, "ckpt_00000004"));
  FILE* nul = fopen("/dev/null", "w");
  char err[1024];
  CHECK_EQ_INT(zp_ckpt_info(found, nul, 0, err, sizeof err), 0);
  fclose(nul);
}

static void test_async_writer_failure(void) {
  char a[400];
  snprintf(a, sizeof a, "%s/efbig", g_dir);
  job j = {"efbig", a, NULL, NULL};
  int killed = 0;
  CHECK_EQ_INT(run_ranks(2, &j, &killed), 0);
  CHECK_EQ_INT(killed, 0);
  CHECK(exists(a, "ckpt_00000006.tmp/rank00001.failed"));
  CHECK(!exists(a, "ckpt_00000006"));
}

int main(void) {
  snprintf(g_dir, sizeof g_dir, "/tmp/zp_ckpt_async_XXXXXX");
  if (!mkdtemp(g_dir)) return 1;
  ZT_RUN(test_async_bytes);
  ZT_RUN(test_async_kill);
  ZT_RUN(test_async_writer_failure);
  rm_rf(g_dir);
  return zt_done();
}
