/* test_ckpt.c: checkpoints (core/ckpt.c) and CRC-32C (core/crc32c.c).
 * Invariants checked: CRC-32C matches the standard check values and does not depend on how
 * the input is split; save + load round-trips every byte of MASTER/PARAM/OPTIM and step_t,
 * step, data_pos (fp32, bf16, and across precisions); retention keeps the newest K;
 * find_latest ignores *.tmp, directories without meta.json and corrupt meta.json; a flipped
 * byte is ZP_E_CORRUPT naming the file and the tensor (per-tensor CRCs) and piece; a truncated or missing rank file is named;
 * another model shape is refused naming both shapes; a crash at a crash point leaves no
 * checkpoint behind; resharding: world 2 (stage3) -> world 1 (none) -> world 3 (stage1) and
 * world 2 (stage2), checked element by element against a pattern of global indices.
 * Fork-based cases run first, before the parent process touches OpenMP. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bf16.h"
#include "ckpt.h"
#include "comm.h"
#include "config.h"
#include "crc32c.h"
#include "runtime.h"
#include "zt.h"

/* ---------------- helpers ---------------- */

static int rm_cb(const char* p, const struct stat* sb, int flag, struct FTW* f) {
  (void)sb; (void)flag; (void)f;
  return remove(p);
}
/* ZP_CKPT_TEST_KEEP=1 keeps the temporary directories for inspection */
static void rm_rf(const char* p) {
  if (getenv("ZP_CKPT_TEST_KEEP")) fprintf(stderr, "kept %s\n", p);
  else nftw(p, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static void make_tmpdir(char* out, size_t n) {
  snprintf(out, n, "/tmp/zp_ckpt_test_XXXXXX");
  if (!mkdtemp(out)) {
    perror("mkdtemp");
    out[0] = 0;
  }
}

static int exists(const char* dir, const char* name) {
  char p[2048];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  struct stat st;
  return stat(p, &st) == 0;
}

/* ZP_CKPT_TEST_DEVICE=cuda runs the single-process cases on the CUDA backend (manual use on a
 * GPU machine; the default and CI run the CPU backend and every case). */
static const char* g_device = "cpu";

static int make_cfg(zp_config* c, const char* prec, int n_layer, int d_model, const char* strategy) {
  char err[1024];
  int rc = zp_config_defaults(c);
  char a[64], b[64], d[64], s[64], dv[64];
  snprintf(a, sizeof a, "train.precision=%s", prec);
  snprintf(b, sizeof b, "model.n_layer=%d", n_layer);
  snprintf(d, sizeof d, "model.d_model=%d", d_model);
  snprintf(s, sizeof s, "zero.plugin=%s", strategy);
  const char* sets[] = {b, "model.n_head=2", d, "model.seq_len=16", "model.vocab_size=64", "model.vocab_pad=64",
                        "train.micro_batch=2", "train.threads=1", a, s, dv};
  snprintf(dv, sizeof dv, "train.device=%s", g_device);
  for (size_t i = 0; i < sizeof sets / sizeof sets[0] && !rc; i++) {
    rc = zp_config_set(c, sets[i], err, sizeof err);
    if (rc) fprintf(stderr, "config %s: %s\n", sets[i], err);
  }
  return rc;
}

static int open_run(zp_run* r, zp_config* c, zp_comm* comm) {
  zp_run_opts o;
  memset(&o, 0, sizeof o);
  o.world = 1;
  o.comm = comm;
  o.no_acts = 1;
  int rc = zp_run_open(r, c, &o);
  if (rc) fprintf(stderr, "zp_run_open: %s\n", r->err);
  return rc;
}

/* deterministic value of (seed, group, kind 0 weights / 1 m / 2 v, global element) */
static float pat(int seed, int g, int k, uint64_t i) {
  uint64_t z = (uint64_t)seed * 0x9e3779b97f4a7c15ull + (uint64_t)g * 0xbf58476d1ce4e5b9ull + (uint64_t)k * 0x94d049bb133111ebull + i;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  float v = (float)((double)(z >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f; /* [-1, 1) */
  return k == 2 ? v * v * 1e-3f : v;
}

static void held(const zp_group_info* in, int cat, uint64_t* base, uint64_t* n) {
  *base = in->place[cat].sharded ? in->shard_off : 0;
  *n = in->place[cat].sharded ? in->shard_len : in->padded;
}

/* expected host image of a held buffer: pattern inside [0, span), zero beyond */
static void* expected_image(zp_run* r, int g, int cat, int seed, size_t* bytes) {
  const zp_group_info* in = &r->groups[g].info;
  uint64_t span = r->layout.group_span[g], base, n;
  held(in, cat, &base, &n);
  zp_dtype dt = in->dtype[cat];
  size_t es = zp_dtype_size(dt);
  int reps = cat == ZP_CAT_OPTIM ? 2 : 1;
  *bytes = (size_t)n * es * (size_t)reps;
  char* img = calloc(*bytes + 1, 1);
  for (int rep = 0; rep < reps; rep++)
    for (uint64_t j = 0; j < n; j++) {
      uint64_t gi = base + j;
      float v = gi < span ? pat(seed, g, cat == ZP_CAT_OPTIM ? 1 + rep : 0, gi) : 0.0f;
      size_t at = (size_t)(rep * n + j);
      if (dt == ZP_F32) ((float*)img)[at] = v;
      else if (dt == ZP_F64) ((double*)img)[at] = (double)v;
      else ((uint16_t*)img)[at] = zp_f32_to_bf16(v);
    }
  return img;
}

static int fill_pattern(zp_run* r, int seed) {
  for (int g = 0; g < r->layout.n_groups; g++)
    for (int c = ZP_CAT_PARAM; c <= ZP_CAT_OPTIM; c++) {
      zp_group_info* in = &r->groups[g].info;
      if (c == ZP_CAT_GRAD || !in->buf[c]) continue;
      size_t bytes;
      void* img = expected_image(r, g, c, seed, &bytes);
      int rc = r->ops->copy_h2d(r->be, in->buf[c], img, bytes);
      free(img);
      if (rc) return rc;
    }
  return 0;
}

/* garbage everywhere (so a load must write every byte, padding included) */
static void fill_garbage(zp_run* r) {
  for (int g = 0; g < r->layout.n_groups; g++)
    for (int c = ZP_CAT_PARAM; c <= ZP_CAT_OPTIM; c++) {
      zp_group_info* in = &r->groups[g].info;
      if (!in->buf[c]) continue;
      void* h = malloc(in->bytes[c]);
      memset(h, 0x7f, in->bytes[c]);
      r->ops->copy_h2d(r->be, in->buf[c], h, in->bytes[c]);
      free(h);
    }
}

/* number of mismatching buffers against the pattern (MASTER, PARAM, OPTIM) */
static int check_pattern(zp_run* r, int seed, const char* who) {
  int bad = 0;
  for (int g = 0; g < r->layout.n_groups; g++)
    for (int c = ZP_CAT_PARAM; c <= ZP_CAT_OPTIM; c++) {
      zp_group_info* in = &r->groups[g].info;
      if (c == ZP_CAT_GRAD || !in->buf[c]) continue;
      size_t bytes;
      char* want = expected_image(r, g, c, seed, &bytes);
      char* got = malloc(bytes + 1);
      r->ops->copy_d2h(r->be, got, in->buf[c], bytes);
      if (memcmp(want, got, bytes) != 0) {
        size_t k = 0;
        while (k < bytes && want[k] == got[k]) k++;
        fprintf(stderr, "%s: rank %d group %d %s differs from the pattern at byte %zu of %zu\n", who, r->rank, g,
                zp_category_name((zp_category)c), k, bytes);
        bad++;
      }
      free(want);
      free(got);
    }
  return bad;
}

/* every byte of MASTER/PARAM/OPTIM equal between two runs of the same placement */
static int compare_runs(zp_run* a, zp_run* b) {
  int bad = 0;
  for (int g = 0; g < a->layout.n_groups; g++)
    for (int c = ZP_CAT_PARAM; c <= ZP_CAT_OPTIM; c++) {
      if (c == ZP_CAT_GRAD) continue;
      zp_group_info* x = &a->groups[g].info;
      zp_group_info* y = &b->groups[g].info;
      if (!x->buf[c] && !y->buf[c]) continue;
      if (!x->buf[c] || !y->buf[c] || x->bytes[c] != y->bytes[c]) { bad++; continue; }
      char* hx = malloc(x->bytes[c]);
      char* hy = malloc(y->bytes[c]);
      a->ops->copy_d2h(a->be, hx, x->buf[c], x->bytes[c]);
      b->ops->copy_d2h(b->be, hy, y->buf[c], y->bytes[c]);
      if (memcmp(hx, hy, x->bytes[c])) {
        fprintf(stderr, "group %d %s differs after the round trip\n", g, zp_category_name((zp_category)c));
        bad++;
      }
      free(hx);
      free(hy);
    }
  return bad;
}

/* save a pattern-filled single-rank checkpoint; returns 0 on success */
static int save_pattern_ckpt(const char* dir, const char* prec, int n_layer, int d_model, int seed, int64_t step, int keep) {
  zp_config c;
  zp_run r;
  char err[2048];
  if (make_cfg(&c, prec, n_layer, d_model, "none")) return 1;
  int rc = open_run(&r, &c, NULL);
  if (!rc) rc = fill_pattern(&r, seed);
  if (!rc) {
    r.opt.step_t = (int)step + 100;
    rc = zp_ckpt_save(&r, dir, step, (uint64_t)step * 1000, keep, "# test\n", err, sizeof err);
    if (rc) fprintf(stderr, "save: %s\n", err);
  }
  zp_run_close(&r);
  zp_config_free(&c);
  return rc;
}

/* ---------------- CRC-32C ---------------- */

static void test_crc32c(void) {
  CHECK_EQ_INT(zp_crc32c(0, "123456789", 9), 0xE3069283u);
  unsigned char z[32] = {0}, o[32], inc[32];
  memset(o, 0xff, sizeof o);
  for (int i = 0; i < 32; i++) inc[i] = (unsigned char)i;
  CHECK_EQ_INT(zp_crc32c(0, z, 32), 0x8A9136AAu); /* RFC 3720 B.4 */
  CHECK_EQ_INT(zp_crc32c(0, o, 32), 0x62A8AB43u);
  CHECK_EQ_INT(zp_crc32c(0, inc, 32), 0x46DD794Eu);
  CHECK_EQ_INT(zp_crc32c(0, "", 0), 0u);
  /* split and alignment independence */
  unsigned char buf[1000];
  for (int i = 0; i < 1000; i++) buf[i] = (unsigned char)(i * 131 + 7);
  uint32_t whole = zp_crc32c(0, buf + 3, 990);
  int bad = 0;
  for (int cut = 0; cut <= 990; cut += 37) {
    uint32_t c = zp_crc32c(0, buf + 3, (size_t)cut);
    c = zp_crc32c(c, buf + 3 + cut, (size_t)(990 - cut));
    if (c != whole) bad++;
  }
  CHECK_EQ_INT(bad, 0);
  /* against a bitwise reference */
  uint32_t ref = 0xffffffffu;
  for (int i = 0; i < 990; i++) {
    ref ^= buf[3 + i];
    for (int k = 0; k < 8; k++) ref = (ref & 1) ? (ref >> 1) ^ 0x82F63B78u : ref >> 1;
  }
  CHECK_EQ_INT(whole, ~ref);
}

/* ---------------- fork-based: resharding, crash points ---------------- */

/* One rank of a multi-rank phase: mode 0 = fill the pattern and save, 1 = load and check. */
static int rank_main(const char* shm, int rank, int world, const char* strategy, const char* prec, const char* dir,
                     const char* ckpt, int seed) {
  char err[2048];
  zp_comm* comm = NULL;
  if (zp_comm_shm_open(shm, rank, world, 60.0, &comm, err, sizeof err)) {
    fprintf(stderr, "rank %d: %s\n", rank, err);
    return 2;
  }
  zp_config c;
  zp_run r;
  int rc = make_cfg(&c, prec, 2, 32, strategy);
  if (!rc) rc = open_run(&r, &c, comm);
  if (rc) {
    zp_comm_destroy(comm);
    return 3;
  }
  int bad = 0;
  if (!ckpt) {
    rc = fill_pattern(&r, seed);
    r.opt.step_t = 42;
    if (!rc) rc = zp_ckpt_save(&r, dir, 3, 333, 2, "# multi-rank\n", err, sizeof err);
    if (rc) { fprintf(stderr, "rank %d save: %s\n", rank, err); bad = 4; }
  } else {
    int64_t step = -1;
    uint64_t dp = 0;
    fill_garbage(&r);
    rc = zp_ckpt_load(&r, ckpt, &step, &dp, err, sizeof err);
    if (rc) { fprintf(stderr, "rank %d load: %s\n", rank, err); bad = 5; }
    else if (check_pattern(&r, seed, strategy) || r.opt.step_t != 42 || step != 3 || dp != 333) bad = 6;
  }
  zp_run_close(&r);
  zp_config_free(&c);
  zp_comm_destroy(comm);
  return bad;
}

/* Run `world` ranks (processes); returns the number of ranks that failed. */
static int run_ranks(int world, const char* strategy, const char* prec, const char* dir, const char* ckpt, int seed) {
  char shm[64], err[512];
  snprintf(shm, sizeof shm, "/zp-ckpt-test-%d-%d", (int)getpid(), world);
  if (zp_comm_shm_create_segment(shm, world, err, sizeof err)) {
    fprintf(stderr, "create segment: %s\n", err);
    return world;
  }
  pid_t pids[8];
  fflush(NULL);
  for (int k = 0; k < world; k++) {
    pids[k] = fork();
    if (pids[k] == 0) _exit(rank_main(shm, k, world, strategy, prec, dir, ckpt, seed));
  }
  int failed = 0;
  for (int k = 0; k < world; k++) {
    int st = 0;
    waitpid(pids[k], &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      fprintf(stderr, "%s rank %d of %d: %s %d\n", strategy, k, world, WIFEXITED(st) ? "exit" : "signal",
              WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
      failed++;
    }
  }
  zp_comm_shm_unlink(shm);
  return failed;
}

/* single-rank load + check + re-save as world 1 "none", in a child */
static int world1_child(const char* ckpt, const char* dir, int seed) {
  fflush(NULL);
  pid_t p = fork();
  if (p == 0) {
    zp_config c;
    zp_run r;
    char err[2048];
    int64_t step;
    uint64_t dp;
    if (make_cfg(&c, "bf16", 2, 32, "none") || open_run(&r, &c, NULL)) _exit(2);
    fill_garbage(&r);
    int rc = zp_ckpt_load(&r, ckpt, &step, &dp, err, sizeof err);
    if (rc) { fprintf(stderr, "world 1 load: %s\n", err); _exit(3); }
    if (check_pattern(&r, seed, "world 1") || r.opt.step_t != 42 || step != 3 || dp != 333) _exit(4);
    rc = zp_ckpt_save(&r, dir, 3, 333, 2, NULL, err, sizeof err);
    if (rc) { fprintf(stderr, "world 1 save: %s\n", err); _exit(5); }
    zp_run_close(&r);
    zp_config_free(&c);
    _exit(0);
  }
  int st = 0;
  waitpid(p, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 100 + WTERMSIG(st);
}

static void test_reshard(void) {
  char a[256], b[256], cka[512], ckb[512];
  make_tmpdir(a, sizeof a);
  make_tmpdir(b, sizeof b);
  /* world 2, everything sharded (stage3), bf16 */
  CHECK_EQ_INT(run_ranks(2, "stage3", "bf16", a, NULL, 9), 0);
  CHECK_EQ_INT(zp_ckpt_find_latest(a, cka, sizeof cka), 0);
  CHECK(exists(cka, "rank00000.bin") && exists(cka, "rank00001.bin") && exists(cka, "rank00001.json"));
  /* -> world 1, replicated; re-saved as world 1 */
  CHECK_EQ_INT(world1_child(cka, b, 9), 0);
  CHECK_EQ_INT(zp_ckpt_find_latest(b, ckb, sizeof ckb), 0);
  /* -> world 3 (stage1: MASTER/OPTIM sharded with padding, PARAM replicated) and back from world 2 */
  CHECK_EQ_INT(run_ranks(3, "stage1", "bf16", NULL, ckb, 9), 0);
  CHECK_EQ_INT(run_ranks(3, "stage3", "bf16", NULL, cka, 9), 0);
  CHECK_EQ_INT(run_ranks(2, "stage2", "bf16", NULL, cka, 9), 0);
  /* multi-rank fp32 save (stage1 over 3 ranks: a rank file may hold only OPTIM/param pieces) */
  char c3[256], ck3[512];
  make_tmpdir(c3, sizeof c3);
  CHECK_EQ_INT(run_ranks(3, "stage1", "fp32", c3, NULL, 9), 0);
  CHECK_EQ_INT(zp_ckpt_find_latest(c3, ck3, sizeof ck3), 0);
  CHECK_EQ_INT(run_ranks(2, "none", "fp32", NULL, ck3, 9), 0);
  CHECK_EQ_INT(run_ranks(2, "stage3", "bf16", NULL, ck3, 9), 0);
  rm_rf(a);
  rm_rf(b);
  rm_rf(c3);
}

/* save in a child, optionally dying at a crash point; returns the wait status */
static int save_child(const char* dir, int64_t step, const char* crash_at) {
  fflush(NULL);
  pid_t p = fork();
  if (p == 0) {
    if (crash_at) setenv("ZP_CRASH_AT", crash_at, 1);
    _exit(save_pattern_ckpt(dir, "fp32", 2, 32, 1, step, 5) ? 1 : 0);
  }
  int st = 0;
  waitpid(p, &st, 0);
  return st;
}

static void test_crashpoints(void) {
  const char* points[] = {"after_rank_file", "before_rename"};
  for (int i = 0; i < 2; i++) {
    char d[256], found[512], want[512];
    make_tmpdir(d, sizeof d);
    int st = save_child(d, 1, NULL);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    st = save_child(d, 2, points[i]);
    CHECK_MSG(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "%s: the saver was not killed", points[i]);
    CHECK(exists(d, "ckpt_00000002.tmp"));
    CHECK(!exists(d, "ckpt_00000002"));
    CHECK_EQ_INT(zp_ckpt_find_latest(d, found, sizeof found), 0);
    snprintf(want, sizeof want, "%s/ckpt_00000001", d);
    CHECK_STR_CONTAINS(found, want);
    /* the next save succeeds and clears the stale temporary directory */
    st = save_child(d, 3, NULL);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CHECK(!exists(d, "ckpt_00000002.tmp"));
    CHECK_EQ_INT(zp_ckpt_find_latest(d, found, sizeof found), 0);
    snprintf(want, sizeof want, "%s/ckpt_00000003", d);
    CHECK_STR_CONTAINS(found, want);
    rm_rf(d);
  }
}

/* ---------------- single process ---------------- */

static void roundtrip(const char* prec) {
  zp_config c;
  zp_run r, r2;
  char d[256], err[2048], found[512], want[512];
  make_tmpdir(d, sizeof d);
  CHECK_EQ_INT(make_cfg(&c, prec, 2, 32, "none"), 0);
  if (open_run(&r, &c, NULL)) { CHECK(0); zp_config_free(&c); return; }
  CHECK_EQ_INT(zp_run_init_weights(&r), 0);
  CHECK_EQ_INT(fill_pattern(&r, 1), 0);
  r.opt.step_t = 5;
  int rc = zp_ckpt_save(&r, d, 7, 12345, 3, "[model]\nn_layer = 2\n", err, sizeof err);
  CHECK_MSG(rc == 0, "%s", err);
  CHECK_EQ_INT(zp_ckpt_find_latest(d, found, sizeof found), 0);
  snprintf(want, sizeof want, "%s/ckpt_00000007", d);
  CHECK(strcmp(found, want) == 0);
  CHECK(exists(found, "meta.json") && exists(found, "config.toml") && exists(found, "rank00000.bin") && exists(found, "rank00000.json"));
  CHECK(!exists(d, "ckpt_00000007.tmp"));
  CHECK_EQ_INT(open_run(&r2, &c, NULL), 0);
  fill_garbage(&r2);
  int64_t step = -1;
  uint64_t dp = 0;
  rc = zp_ckpt_load(&r2, found, &step, &dp, err, sizeof err);
  CHECK_MSG(rc == 0, "%s", err);
  CHECK_EQ_INT(step, 7);
  CHECK_EQ_INT(dp, 12345);
  CHECK_EQ_INT(r2.opt.step_t, 5);
  CHECK_EQ_INT(compare_runs(&r, &r2), 0);
  CHECK_EQ_INT(check_pattern(&r2, 1, prec), 0);
  /* info verifies everything */
  char* txt = NULL;
  size_t tl = 0;
  FILE* f = open_memstream(&txt, &tl);
  rc = zp_ckpt_info(found, f, 0, err, sizeof err);
  fclose(f);
  CHECK_MSG(rc == 0, "%s", err);
  CHECK_STR_CONTAINS(txt, "all checksums match");
  CHECK_STR_CONTAINS(txt, "step 7");
  CHECK_STR_CONTAINS(txt, "n_layer 2 n_head 2 d_model 32");
  free(txt);
  /* full fp32 weights for export */
  float* gp[8] = {0};
  rc = zp_ckpt_read_full_params(found, &r.layout, gp, err, sizeof err);
  CHECK_MSG(rc == 0, "%s", err);
  int bad = 0;
  for (int g = 0; g < r.layout.n_groups && !rc; g++) {
    uint64_t n = zp_group_padded(&r.layout, g, 1);
    for (uint64_t i = 0; i < n; i++) {
      float w = i < r.layout.group_span[g] ? pat(1, g, 0, i) : 0.0f;
      if (memcmp(&w, &gp[g][i], 4)) bad++;
    }
    free(gp[g]);
  }
  CHECK_EQ_INT(bad, 0);
  zp_run_close(&r2);
  zp_run_close(&r);
  zp_config_free(&c);
  rm_rf(d);
}

static void test_roundtrip_fp32(void) { roundtrip("fp32"); }
static void test_roundtrip_bf16(void) { roundtrip("bf16"); }
static void test_roundtrip_fp64(void) { roundtrip("fp64"); }

/* a checkpoint saved in one precision loads into another: MASTER/weights exact, PARAM = cast */
/* gpu: checkpoints saved on the CPU backend in each precision load into the device's bf16 */
static void cross_precision(int gpu) {
  const char* precs[] = {"fp32", "bf16", "fp64"};
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 3; j++) {
      if (gpu ? j != 1 : i == j) continue;
      char d[256], ck[512], err[2048];
      make_tmpdir(d, sizeof d);
      const char* dev = g_device;
      g_device = "cpu";
      CHECK_EQ_INT(save_pattern_ckpt(d, precs[i], 2, 32, 4, 11, 2), 0);
      g_device = dev;
      CHECK_EQ_INT(zp_ckpt_find_latest(d, ck, sizeof ck), 0);
      zp_config c;
      zp_run r;
      CHECK_EQ_INT(make_cfg(&c, precs[j], 2, 32, "none"), 0);
      if (open_run(&r, &c, NULL)) { CHECK(0); zp_config_free(&c); return; }
      fill_garbage(&r);
      int64_t step;
      uint64_t dp;
      int rc = zp_ckpt_load(&r, ck, &step, &dp, err, sizeof err);
      CHECK_MSG(rc == 0, "%s -> %s: %s", precs[i], precs[j], err);
      CHECK_MSG(check_pattern(&r, 4, precs[j]) == 0, "%s -> %s", precs[i], precs[j]);
      CHECK_EQ_INT(r.opt.step_t, 111);
      zp_run_close(&r);
      zp_config_free(&c);
      rm_rf(d);
    }
}

static void test_cross_precision(void) { cross_precision(0); }
static void test_cross_precision_gpu(void) { cross_precision(1); }

static int count_ckpts(const char* dir, char names[][256], int max) {
  DIR* dd = opendir(dir);
  int n = 0;
  struct dirent* e;
  while (dd && (e = readdir(dd)))
    if (e->d_name[0] != '.') {
      if (n < max) snprintf(names[n], 256, "%s", e->d_name);
      n++;
    }
  if (dd) closedir(dd);
  return n;
}

static void test_retention(void) {
  char d[256], names[16][256], p[512];
  make_tmpdir(d, sizeof d);
  zp_config c;
  zp_run r;
  char err[2048];
  CHECK_EQ_INT(make_cfg(&c, "fp32", 2, 32, "none"), 0);
  CHECK_EQ_INT(open_run(&r, &c, NULL), 0);
  CHECK_EQ_INT(fill_pattern(&r, 2), 0);
  for (int s = 1; s <= 5; s++) {
    if (s == 5) { /* a stale temporary directory from a crashed save */
      snprintf(p, sizeof p, "%s/ckpt_00000004.tmp", d);
      mkdir(p, 0755);
    }
    int rc = zp_ckpt_save(&r, d, s * 10, (uint64_t)s, 2, NULL, err, sizeof err);
    CHECK_MSG(rc == 0, "%s", err);
  }
  int n = count_ckpts(d, names, 16);
  CHECK_EQ_INT(n, 2);
  CHECK(exists(d, "ckpt_00000040") && exists(d, "ckpt_00000050"));
  CHECK(!exists(d, "ckpt_00000004.tmp"));
  /* saving the same step again replaces it */
  CHECK_EQ_INT(fill_pattern(&r, 3), 0);
  int rc = zp_ckpt_save(&r, d, 50, 77, 2, NULL, err, sizeof err);
  CHECK_MSG(rc == 0, "%s", err);
  CHECK_EQ_INT(count_ckpts(d, names, 16), 2);
  zp_run r2;
  CHECK_EQ_INT(open_run(&r2, &c, NULL), 0);
  int64_t step;
  uint64_t dp;
  snprintf(p, sizeof p, "%s/ckpt_00000050", d);
  rc = zp_ckpt_load(&r2, p, &step, &dp, err, sizeof err);
  CHECK_MSG(rc == 0, "%s", err);
  CHECK_EQ_INT(dp, 77);
  CHECK_EQ_INT(check_pattern(&r2, 3, "resaved"), 0);
  /* keep 1 removes all but the newest */
  rc = zp_ckpt_save(&r, d, 60, 1, 1, NULL, err, sizeof err);
  CHECK_MSG(rc == 0, "%s", err);
  CHECK_EQ_INT(count_ckpts(d, names, 16), 1);
  CHECK(exists(d, "ckpt_00000060"));
  zp_run_close(&r2);
  zp_run_close(&r);
  zp_config_free(&c);
  rm_rf(d);
}

static void write_file(const char* path, const char* text) {
  FILE* f = fopen(path, "w");
  if (f) {
    fputs(text, f);
    fclose(f);
  }
}

static void test_find_latest(void) {
  char d[256], p[512], q[600], found[512];
  make_tmpdir(d, sizeof d);
  CHECK(zp_ckpt_find_latest(d, found, sizeof found) != 0); /* empty */
  CHECK(zp_ckpt_find_latest("/nonexistent/zp/dir", found, sizeof found) != 0);
  CHECK_EQ_INT(save_pattern_ckpt(d, "fp32", 2, 32, 1, 3, 10), 0);
  /* a .tmp directory with a valid meta.json */
  snprintf(p, sizeof p, "%s/ckpt_00000009.tmp", d);
  mkdir(p, 0755);
  char src[512], dst[600];
  snprintf(src, sizeof src, "%s/ckpt_00000003/meta.json", d);
  snprintf(dst, sizeof dst, "%s/meta.json", p);
  {
    FILE* a = fopen(src, "rb");
    FILE* b = fopen(dst, "wb");
    char buf[4096];
    size_t n;
    while (a && b && (n = fread(buf, 1, sizeof buf, a)) > 0) fwrite(buf, 1, n, b);
    if (a) fclose(a);
    if (b) fclose(b);
  }
  /* corrupt meta.json, a wrong format, no meta.json, a name with a suffix */
  snprintf(p, sizeof p, "%s/ckpt_00000008", d);
  mkdir(p, 0755);
  snprintf(q, sizeof q, "%s/meta.json", p);
  write_file(q, "{\"format\": \"zeroplace-checkpoint\", \"version\": 1, \"step\": 8,");
  snprintf(p, sizeof p, "%s/ckpt_00000012", d);
  mkdir(p, 0755);
  snprintf(q, sizeof q, "%s/meta.json", p);
  write_file(q, "{\"format\": \"something-else\"}");
  snprintf(p, sizeof p, "%s/ckpt_00000010", d);
  mkdir(p, 0755);
  snprintf(p, sizeof p, "%s/ckpt_00000011x", d);
  mkdir(p, 0755);
  CHECK_EQ_INT(zp_ckpt_find_latest(d, found, sizeof found), 0);
  snprintf(p, sizeof p, "%s/ckpt_00000003", d);
  CHECK(strcmp(found, p) == 0);
  /* loading the corrupt one names its meta.json */
  zp_config c;
  zp_run r;
  char err[2048];
  CHECK_EQ_INT(make_cfg(&c, "fp32", 2, 32, "none"), 0);
  CHECK_EQ_INT(open_run(&r, &c, NULL), 0);
  int64_t step;
  uint64_t dp;
  snprintf(p, sizeof p, "%s/ckpt_00000008", d);
  CHECK_EQ_INT(zp_ckpt_load(&r, p, &step, &dp, err, sizeof err), ZP_E_CORRUPT);
  CHECK_STR_CONTAINS(err, "ckpt_00000008/meta.json");
  zp_run_close(&r);
  zp_config_free(&c);
  rm_rf(d);
}

/* file offset of the piece (group, kind) in a rank index; -1 if none */
static long long piece_offset(const char* ckpt, const char* index, int group, const char* kind, long long* bytes) {
  char p[600];
  snprintf(p, sizeof p, "%s/%s", ckpt, index);
  json_error_t je;
  json_t* root = json_load_file(p, 0, &je);
  long long off = -1;
  json_t* pa = json_object_get(root, "pieces");
  for (size_t i = 0; i < json_array_size(pa); i++) {
    json_t* po = json_array_get(pa, i);
    if (json_integer_value(json_object_get(po, "group")) == group && !strcmp(json_string_value(json_object_get(po, "kind")), kind)) {
      off = json_integer_value(json_object_get(po, "offset"));
      *bytes = json_integer_value(json_object_get(po, "bytes"));
    }
  }
  json_decref(root);
  return off;
}

static void flip_byte(const char* path, long long off) {
  int fd = open(path, O_RDWR);
  unsigned char b = 0;
  if (fd < 0) return;
  if (pread(fd, &b, 1, off) == 1) {
    b ^= 0x10;
    if (pwrite(fd, &b, 1, off) != 1) perror("pwrite");
  }
  close(fd);
}

static void test_corrupt_and_truncated(void) {
  char d[256], ck[512], bin[600], err[2048];
  make_tmpdir(d, sizeof d);
  CHECK_EQ_INT(save_pattern_ckpt(d, "bf16", 2, 32, 5, 7, 2), 0);
  CHECK_EQ_INT(zp_ckpt_find_latest(d, ck, sizeof ck), 0);
  snprintf(bin, sizeof bin, "%s/rank00000.bin", ck);
  zp_config c;
  zp_run r;
  CHECK_EQ_INT(make_cfg(&c, "bf16", 2, 32, "none"), 0);
  CHECK_EQ_INT(open_run(&r, &c, NULL), 0);
  int64_t step;
  uint64_t dp;
  /* a flipped byte in block.1's m piece */
  long long pb = 0, off = piece_offset(ck, "rank00000.json", 2, "m", &pb);
  CHECK(off >= 0 && pb > 100);
  flip_byte(bin, off + 77);
  int rc = zp_ckpt_load(&r, ck, &step, &dp, err, sizeof err);
  CHECK_EQ_INT(rc, ZP_E_CORRUPT);
  CHECK_STR_CONTAINS(err, "ckpt_00000007/rank00000.bin: checksum mismatch in tensor h.1.ln_1.weight (group block.1, m, elements 0..32; "
                          "piece h.1.* (group block.1, m, elements 0..");
  char* txt = NULL;
  size_t tl = 0;
  FILE* f = open_memstream(&txt, &tl);
  rc = zp_ckpt_info(ck, f, 0, err, sizeof err);
  fclose(f);
  CHECK_EQ_INT(rc, ZP_E_CORRUPT);
  CHECK_STR_CONTAINS(err, "rank00000.bin: checksum mismatch in tensor h.1.ln_1.weight");
  CHECK_STR_CONTAINS(txt, "CORRUPT");
  free(txt);
  flip_byte(bin, off + 77); /* restore */
  rc = zp_ckpt_load(&r, ck, &step, &dp, err, sizeof err);
  CHECK_MSG(rc == 0, "%s", err);
  /* a flipped byte in the embedding's master piece names wte */
  off = piece_offset(ck, "rank00000.json", 0, "master", &pb);
  flip_byte(bin, off + 8);
  rc = zp_ckpt_load(&r, ck, &step, &dp, err, sizeof err);
  CHECK_EQ_INT(rc, ZP_E_CORRUPT);
  CHECK_STR_CONTAINS(err, "checksum mismatch in tensor wte.weight (group embed, master, elements 0..2048; piece wte.weight..wpe.weight");
  flip_byte(bin, off + 8);
  /* alignment padding between pieces is covered by the whole-file checksum only */
  off = piece_offset(ck, "rank00000.json", 0, "master", &pb);
  if ((off + pb) % ZP_CKPT_ALIGN) {
    flip_byte(bin, off + pb);
    CHECK_EQ_INT(zp_ckpt_load(&r, ck, &step, &dp, err, sizeof err), 0);
    f = fopen("/dev/null", "w");
    CHECK_EQ_INT(zp_ckpt_info(ck, f, 0, err, sizeof err), ZP_E_CORRUPT);
    fclose(f);
    CHECK_STR_CONTAINS(err, "whole-file checksum mismatch");
    flip_byte(bin, off + pb);
  }
  /* truncated */
  struct stat st;
  CHECK_EQ_INT(stat(bin, &st), 0);
  CHECK_EQ_INT(truncate(bin, st.st_size / 2), 0);
  rc = zp_ckpt_load(&r, ck, &step, &dp, err, sizeof err);
  CHECK(rc != 0);
  CHECK_STR_CONTAINS(err, "ckpt_00000007/rank00000.bin: truncated");
  /* missing */
  unlink(bin);
  rc = zp_ckpt_load(&r, ck, &step, &dp, err, sizeof err);
  CHECK(rc != 0);
  CHECK_STR_CONTAINS(err, "ckpt_00000007/rank00000.bin: missing");
  zp_run_close(&r);
  zp_config_free(&c);
  rm_rf(d);
}

static void test_shape_mismatch(void) {
  char d[256], ck[512], err[2048];
  make_tmpdir(d, sizeof d);
  CHECK_EQ_INT(save_pattern_ckpt(d, "bf16", 2, 32, 1, 1, 2), 0);
  CHECK_EQ_INT(zp_ckpt_find_latest(d, ck, sizeof ck), 0);
  zp_config c;
  zp_run r;
  int64_t step;
  uint64_t dp;
  CHECK_EQ_INT(make_cfg(&c, "bf16", 3, 64, "none"), 0);
  CHECK_EQ_INT(open_run(&r, &c, NULL), 0);
  int rc = zp_ckpt_load(&r, ck, &step, &dp, err, sizeof err);
  CHECK_EQ_INT(rc, ZP_E_INVALID);
  CHECK_STR_CONTAINS(err, "ckpt_00000001/meta.json: checkpoint has n_layer 2 n_head 2 d_model 32");
  CHECK_STR_CONTAINS(err, "config has n_layer 3 n_head 2 d_model 64");
  float* gp[8] = {0};
  CHECK_EQ_INT(zp_ckpt_read_full_params(ck, &r.layout, gp, err, sizeof err), ZP_E_INVALID);
  CHECK(gp[0] == NULL);
  zp_run_close(&r);
  zp_config_free(&c);
  rm_rf(d);
}

/* Training resumes bitwise: 2 real steps, save, 1 more step; versus load + that step. */
static int train_steps(zp_run* r, int from, int to) {
  int N = r->B * r->T;
  int32_t* in = malloc((size_t)N * sizeof(int32_t));
  int32_t* tg = malloc((size_t)N * sizeof(int32_t));
  int rc = 0;
  for (int s = from; s < to && !rc; s++) {
    for (int i = 0; i < N; i++) {
      in[i] = (int32_t)((i * 7 + s * 13) % 64);
      tg[i] = (int32_t)((i * 7 + s * 13 + 5) % 64);
    }
    double loss;
    rc = zp_run_zero_grads(r);
    if (!rc) rc = zp_run_micro_batch(r, in, tg, 1.0f / (float)N, &loss);
    if (!rc) rc = zp_run_step(r, 1e-3f);
    if (rc) fprintf(stderr, "step %d: %s\n", s, r->err);
  }
  free(in);
  free(tg);
  return rc;
}

static void resume(const char* prec) {
  zp_config c;
  zp_run r, r2;
  zp_run_opts o;
  memset(&o, 0, sizeof o);
  o.world = 1;
  char d[256], ck[512], err[2048];
  make_tmpdir(d, sizeof d);
  CHECK_EQ_INT(make_cfg(&c, prec, 2, 32, "none"), 0);
  CHECK_EQ_INT(zp_run_open(&r, &c, &o), 0);
  CHECK_EQ_INT(zp_run_open(&r2, &c, &o), 0);
  CHECK_EQ_INT(zp_run_init_weights(&r), 0);
  CHECK_EQ_INT(train_steps(&r, 0, 2), 0);
  CHECK_EQ_INT(r.opt.step_t, 2);
  int rc = zp_ckpt_save(&r, d, 2, 2, 2, NULL, err, sizeof err);
  CHECK_MSG(rc == 0, "%s", err);
  CHECK_EQ_INT(train_steps(&r, 2, 3), 0);
  CHECK_EQ_INT(zp_ckpt_find_latest(d, ck, sizeof ck), 0);
  int64_t step;
  uint64_t dp;
  fill_garbage(&r2);
  rc = zp_ckpt_load(&r2, ck, &step, &dp, err, sizeof err);
  CHECK_MSG(rc == 0, "%s", err);
  CHECK_EQ_INT(r2.opt.step_t, 2);
  CHECK_EQ_INT(train_steps(&r2, 2, 3), 0);
  CHECK_EQ_INT(compare_runs(&r, &r2), 0);
  zp_run_close(&r2);
  zp_run_close(&r);
  zp_config_free(&c);
  rm_rf(d);
}
static void test_resume_bitwise_fp32(void) { resume("fp32"); }
static void test_resume_bitwise_bf16(void) { resume("bf16"); }

static void test_dry_run_refused(void) {
  zp_config c;
  zp_run r;
  char err[1024];
  CHECK_EQ_INT(make_cfg(&c, "bf16", 2, 32, "none"), 0);
  zp_run_opts o;
  memset(&o, 0, sizeof o);
  o.dry_run = 1;
  o.world = 4;
  CHECK_EQ_INT(zp_run_open(&r, &c, &o), 0);
  CHECK_EQ_INT(zp_ckpt_save(&r, "/tmp/zp_never_written", 1, 0, 1, NULL, err, sizeof err), ZP_E_INVALID);
  CHECK_STR_CONTAINS(err, "dry run");
  zp_run_close(&r);
  zp_config_free(&c);
}

int main(void) {
  setenv("ZP_PLUGIN_PATH", ZP_BUILD_DIR "/plugins", 0);
  if (getenv("ZP_CKPT_TEST_DEVICE")) g_device = getenv("ZP_CKPT_TEST_DEVICE");
  int cpu = strcmp(g_device, "cpu") == 0;
  if (!cpu) { /* manual GPU mode: single-process round trips only */
    fprintf(stderr, "device %s (bf16 only): fork-based, fp32/fp64 and bitwise-resume cases are CPU-only\n", g_device);
    ZT_RUN(test_roundtrip_bf16);
    ZT_RUN(test_cross_precision_gpu);
    ZT_RUN(test_corrupt_and_truncated);
    ZT_RUN(test_shape_mismatch);
    return zt_done();
  }
  ZT_RUN(test_crc32c);
  /* fork-based first: the parent has not started OpenMP yet */
  ZT_RUN(test_crashpoints);
  ZT_RUN(test_reshard);
  ZT_RUN(test_roundtrip_fp32);
  ZT_RUN(test_roundtrip_bf16);
  ZT_RUN(test_roundtrip_fp64);
  ZT_RUN(test_cross_precision);
  ZT_RUN(test_retention);
  ZT_RUN(test_find_latest);
  ZT_RUN(test_corrupt_and_truncated);
  ZT_RUN(test_shape_mismatch);
  ZT_RUN(test_resume_bitwise_fp32);
  ZT_RUN(test_resume_bitwise_bf16);
  ZT_RUN(test_dry_run_refused);
  return zt_done();
}
