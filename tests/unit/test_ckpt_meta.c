/* test_ckpt_meta.c: checkpoint metadata that lies, and what is built on the metadata (core/ckpt.c).
 * Invariants checked: every lie meta.json can tell about the data (a piece's offset, size or
 * element range, overlapping pieces, a piece missing or stored twice, a rank file's size, the
 * tensor table, the world size, per-tensor segments, the format version, the weights' kind)
 * is refused with ZP_E_CORRUPT or ZP_E_INVALID and a message naming meta.json or the rank
 * file, never read past; version-1 checkpoints (pieces in the rank indexes) still load;
 * zp_ckpt_resume names the damaged file and tensor and falls back to the previous complete
 * checkpoint only when asked; zp ckpt info lists unfinished directories of a run; and
 * zp_ckpt_set_full_params sets weights, zeroes the optimizer state and step_t. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bf16.h"
#include "ckpt.h"
#include "config.h"
#include "runtime.h"
#include "zt.h"

static int rm_cb(const char* p, const struct stat* sb, int flag, struct FTW* f) {
  (void)sb; (void)flag; (void)f;
  return remove(p);
}
static void rm_rf(const char* p) { nftw(p, rm_cb, 16, FTW_DEPTH | FTW_PHYS); }

static int make_cfg(zp_config* c, const char* prec) {
  char err[1024];
  int rc = zp_config_defaults(c);
  char a[64];
  snprintf(a, sizeof a, "train.precision=%s", prec);
  const char* sets[] = {"model.n_layer=2", "model.n_head=2", "model.d_model=32", "model.seq_len=16", "model.vocab_size=64",
                        "model.vocab_pad=64", "train.micro_batch=2", "train.threads=1", a};
  for (size_t i = 0; i < sizeof sets / sizeof sets[0] && !rc; i++) rc = zp_config_set(c, sets[i], err, sizeof err);
  return rc;
}

static int open_run(zp_run* r, zp_config* c) {
  zp_run_opts o;
  memset(&o, 0, sizeof o);
  o.world = 1;
  o.no_acts = 1;
  int rc = zp_run_open(r, c, &o);
  if (rc) fprintf(stderr, "zp_run_open: %s\n", r->err);
  return rc;
}

static float pv(int g, uint64_t e, int k) { return (float)((int)((g * 977 + e * 13 + (uint64_t)k * 31) % 1999) - 999) / 1024.0f; }

/* weights pv(g, e, 0), m pv(.., 1), v |pv(.., 2)| into a world-1 run (fp32 or bf16 + master) */
static void fill(zp_run* r) {
  for (int g = 0; g < r->layout.n_groups; g++) {
    zp_group_info* in = &r->groups[g].info;
    uint64_t n = in->padded, span = r->layout.group_span[g];
    float* h = calloc((size_t)n * 2 + 1, sizeof(float));
    for (uint64_t e = 0; e < span; e++) h[e] = pv(g, e, 0);
    if (in->buf[ZP_CAT_MASTER]) r->ops->copy_h2d(r->be, in->buf[ZP_CAT_MASTER], h, (size_t)n * 4);
    if (in->dtype[ZP_CAT_PARAM] == ZP_F32) r->ops->copy_h2d(r->be, in->buf[ZP_CAT_PARAM], h, (size_t)n * 4);
    else {
      uint16_t* b = calloc((size_t)n + 1, 2);
      for (uint64_t e = 0; e < n; e++) b[e] = zp_f32_to_bf16(h[e]);
      r->ops->copy_h2d(r->be, in->buf[ZP_CAT_PARAM], b, (size_t)n * 2);
      free(b);
    }
    memset(h, 0, (size_t)n * 2 * sizeof(float));
    for (uint64_t e = 0; e < span; e++) {
      h[e] = pv(g, e, 1);
      h[n + e] = pv(g, e, 2) * pv(g, e, 2);
    }
    r->ops->copy_h2d(r->be, in->buf[ZP_CAT_OPTIM], h, (size_t)n * 8);
    free(h);
  }
}

/* number of elements of weights/m/v that differ from fill()'s values (or from zero m/v when
 * zero_optim) */
static int check(zp_run* r, int zero_optim) {
  int bad = 0;
  for (int g = 0; g < r->layout.n_groups; g++) {
    zp_group_info* in = &r->groups[g].info;
    uint64_t n = in->padded, span = r->layout.group_span[g];
    float* h = malloc((size_t)n * 8 + 8);
    int c = in->buf[ZP_CAT_MASTER] ? ZP_CAT_MASTER : ZP_CAT_PARAM;
    r->ops->copy_d2h(r->be, h, in->buf[c], (size_t)n * 4);
    for (uint64_t e = 0; e < n; e++) bad += h[e] != (e < span ? pv(g, e, 0) : 0.0f);
    r->ops->copy_d2h(r->be, h, in->buf[ZP_CAT_OPTIM], (size_t)n * 8);
    for (uint64_t e = 0; e < n; e++) {
      float m = zero_optim || e >= span ? 0.0f : pv(g, e, 1), v = zero_optim || e >= span ? 0.0f : pv(g, e, 2) * pv(g, e, 2);
      bad += h[e] != m;
      bad += h[n + e] != v;
    }
    free(h);
  }
  return bad;
}

static char g_dir[256];
static zp_config g_c;
static zp_run g_r;

static int save(const char* dir, int64_t step) {
  char err[2048];
  fill(&g_r);
  g_r.opt.step_t = (int)step;
  int rc = zp_ckpt_save(&g_r, dir, step, (uint64_t)step * 10, 10, "# t\n", err, sizeof err);
  if (rc) fprintf(stderr, "save: %s\n", err);
  return rc;
}

static json_t* load_meta(const char* ck) {
  char p[700];
  snprintf(p, sizeof p, "%s/meta.json", ck);
  json_error_t je;
  return json_load_file(p, 0, &je);
}
static void store_meta(const char* ck, json_t* root) {
  char p[700];
  snprintf(p, sizeof p, "%s/meta.json", ck);
  json_dump_file(root, p, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
}
static json_t* piece(json_t* root, int i) { return json_array_get(json_object_get(json_array_get(json_object_get(root, "files"), 0), "pieces"), (size_t)i); }
static void set_int(json_t* o, const char* k, long long v) { json_object_set_new(o, k, json_integer(v)); }
static long long get_int(json_t* o, const char* k) { return (long long)json_integer_value(json_object_get(o, k)); }

static void test_lies(void) {
  char ck[600], err[2048];
  snprintf(ck, sizeof ck, "%s/ckpt_00000003", g_dir);
  CHECK_EQ_INT(save(g_dir, 3), 0);
  json_t* orig = load_meta(ck);
  CHECK(orig != NULL);
  if (!orig) return;
  long long fbytes = get_int(json_array_get(json_object_get(orig, "files"), 0), "bytes");
  struct {
    const char* what;
    int rc;
    const char* want;
  } cases[] = {
      {"offset beyond the file", ZP_E_CORRUPT, "out of range"},
      {"offset + bytes beyond the file", ZP_E_CORRUPT, "inconsistent piece"},
      {"bytes lie", ZP_E_CORRUPT, "inconsistent piece"},
      {"end beyond the span", ZP_E_CORRUPT, "\"end\" ="},
      {"overlapping pieces", ZP_E_CORRUPT, "overlap"},
      {"piece missing", ZP_E_CORRUPT, "incomplete checkpoint: group embed master elements 0.."},
      {"piece twice", ZP_E_CORRUPT, "stored twice"},
      {"file size lies", ZP_E_CORRUPT, "rank00000.bin: truncated"},
      {"tensor outside the span", ZP_E_CORRUPT, "lies outside its group's span"},
      {"tensor table differs", ZP_E_INVALID, "this build's layout has h.0.ln_1.weight"},
      {"world size lies", ZP_E_CORRUPT, "\"files\" must list world_size = 2 rank files"},
      {"segments not contiguous", ZP_E_CORRUPT, "segments[1] is not"},
      {"segments short", ZP_E_CORRUPT, "segments end at element"},
      {"version", ZP_E_CORRUPT, "format version 3 is not supported"},
      {"weights kind", ZP_E_CORRUPT, "a master piece, but meta.json says group 0 saved its weights as param"},
      {"negative crc", ZP_E_CORRUPT, "\"crc32c\" = -1 is out of range"},
      {"piece not an object", ZP_E_CORRUPT, "pieces[0]: not an object"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    json_t* m = json_deep_copy(orig);
    json_t* p0 = piece(m, 0);
    json_t* pa = json_object_get(json_array_get(json_object_get(m, "files"), 0), "pieces");
    switch (i) {
      case 0: set_int(p0, "offset", fbytes + 1); break;
      case 1: set_int(p0, "offset", fbytes - get_int(p0, "bytes") / 2); break;
      case 2: set_int(p0, "bytes", get_int(p0, "bytes") + 4); break;
      case 3: set_int(p0, "end", get_int(p0, "end") + 100000); break;
      case 4: set_int(piece(m, 1), "offset", get_int(p0, "offset") + 8); break;
      case 5: json_array_remove(pa, 0); break;
      case 6: { /* piece 0's elements again, in the place of piece 1 (the same size) */
        json_t* c = json_deep_copy(p0);
        set_int(c, "offset", get_int(piece(m, 1), "offset"));
        json_array_set_new(pa, 1, c);
        break;
      }
      case 7: set_int(json_array_get(json_object_get(m, "files"), 0), "bytes", fbytes + 4096); break;
      case 8: set_int(json_array_get(json_object_get(m, "tensors"), 2), "numel", 1000000); break;
      case 9: json_object_set_new(json_array_get(json_object_get(m, "tensors"), 2), "name", json_string("h.0.ln_9.weight")); break;
      case 10: set_int(m, "world_size", 2); break;
      case 11: {
        json_t* sg = json_object_get(p0, "segments");
        json_t* e = json_array_get(sg, 1);
        json_array_set_new(e, 0, json_integer(json_integer_value(json_array_get(e, 0)) + 1));
        break;
      }
      case 12: {
        json_t* sg = json_object_get(p0, "segments");
        json_array_remove(sg, json_array_size(sg) - 1);
        break;
      }
      case 13: set_int(m, "version", 3); break;
      case 14: json_object_set_new(json_array_get(json_object_get(m, "groups"), 0), "weights", json_string("param")); break;
      case 15: set_int(p0, "crc32c", -1); break;
      case 16: json_array_set_new(pa, 0, json_integer(7)); break;
    }
    store_meta(ck, m);
    json_decref(m);
    int64_t step;
    uint64_t dp;
    err[0] = 0;
    int rc = zp_ckpt_load(&g_r, ck, &step, &dp, err, sizeof err);
    CHECK_MSG(rc == cases[i].rc, "%s: rc %d, expected %d (%s)", cases[i].what, rc, cases[i].rc, err);
    CHECK_MSG(strstr(err, cases[i].want) != NULL, "%s: \"%s\" does not contain \"%s\"", cases[i].what, err, cases[i].want);
    CHECK_MSG(strstr(err, "ckpt_00000003") != NULL, "%s: \"%s\" does not name the checkpoint", cases[i].what, err);
    /* info reads the same metadata: refused as well */
    FILE* nul = fopen("/dev/null", "w");
    CHECK_MSG(zp_ckpt_info(ck, nul, 1, err, sizeof err) != 0 || cases[i].rc == ZP_E_INVALID, "%s: info accepted it", cases[i].what);
    fclose(nul);
  }
  /* the original still loads, exactly */
  store_meta(ck, orig);
  int64_t step;
  uint64_t dp;
  memset(&step, 0, sizeof step);
  CHECK_EQ_INT(zp_ckpt_load(&g_r, ck, &step, &dp, err, sizeof err), 0);
  CHECK_EQ_INT(step, 3);
  CHECK_EQ_INT(check(&g_r, 0), 0);
  /* version 1: pieces only in the rank index */
  json_t* v1 = json_deep_copy(orig);
  set_int(v1, "version", 1);
  json_object_del(json_array_get(json_object_get(v1, "files"), 0), "pieces");
  store_meta(ck, v1);
  json_decref(v1);
  CHECK_EQ_INT(zp_ckpt_load(&g_r, ck, &step, &dp, err, sizeof err), 0);
  CHECK_EQ_INT(check(&g_r, 0), 0);
  char ix[700];
  snprintf(ix, sizeof ix, "%s/rank00000.json", ck);
  unlink(ix);
  CHECK_EQ_INT(zp_ckpt_load(&g_r, ck, &step, &dp, err, sizeof err), ZP_E_CORRUPT);
  CHECK_STR_CONTAINS(err, "ckpt_00000003/rank00000.json: missing");
  json_decref(orig);
}

static void flip(const char* path, long off) {
  int fd = open(path, O_RDWR);
  unsigned char b = 0;
  if (pread(fd, &b, 1, off) == 1) {
    b ^= 0x40;
    if (pwrite(fd, &b, 1, off) != 1) perror("pwrite");
  }
  close(fd);
}

static void test_resume_fallback(void) {
  char d[300], err[2048], used[1024], bin[700];
  snprintf(d, sizeof d, "%s/fb", g_dir);
  int64_t step = -1;
  uint64_t dp = 0;
  /* nothing to resume from: OK, used "" */
  CHECK_EQ_INT(zp_ckpt_resume(&g_r, d, 1, used, sizeof used, &step, &dp, err, sizeof err), 0);
  CHECK_EQ_INT(used[0], 0);
  CHECK_EQ_INT(save(d, 1), 0);
  CHECK_EQ_INT(save(d, 2), 0);
  snprintf(bin, sizeof bin, "%s/ckpt_00000002/rank00000.bin", d);
  flip(bin, 4096 * 3 + 5); /* inside the embed group's m piece (after the weights) or later */
  err[0] = 0;
  int rc = zp_ckpt_resume(&g_r, d, 0, used, sizeof used, &step, &dp, err, sizeof err);
  CHECK_EQ_INT(rc, ZP_E_CORRUPT);
  CHECK_STR_CONTAINS(err, "ckpt_00000002/rank00000.bin: checksum mismatch in tensor ");
  CHECK_STR_CONTAINS(err, "set ckpt.fallback = true");
  CHECK_EQ_INT(used[0], 0);
  rc = zp_ckpt_resume(&g_r, d, 1, used, sizeof used, &step, &dp, err, sizeof err);
  CHECK_MSG(rc == 0, "%s", err);
  CHECK_STR_CONTAINS(used, "ckpt_00000001");
  CHECK_EQ_INT(step, 1);
  CHECK_EQ_INT(dp, 10);
  CHECK_EQ_INT(g_r.opt.step_t, 1);
  CHECK_EQ_INT(check(&g_r, 0), 0);
  /* both damaged: an error that says so */
  snprintf(bin, sizeof bin, "%s/ckpt_00000001/rank00000.bin", d);
  truncate(bin, 100);
  rc = zp_ckpt_resume(&g_r, d, 1, used, sizeof used, &step, &dp, err, sizeof err);
  CHECK_EQ_INT(rc, ZP_E_CORRUPT);
  CHECK_STR_CONTAINS(err, "no older complete checkpoint");
  /* info of the run directory lists an unfinished directory too */
  char tmp[400];
  snprintf(tmp, sizeof tmp, "%s/ckpt_00000005.tmp", d);
  mkdir(tmp, 0755);
  char* txt = NULL;
  size_t tl = 0;
  FILE* f = open_memstream(&txt, &tl);
  rc = zp_ckpt_info(d, f, 0, err, sizeof err);
  fclose(f);
  CHECK(rc != 0); /* the newest complete one is damaged */
  CHECK_STR_CONTAINS(txt, "ckpt_00000005.tmp");
  CHECK_STR_CONTAINS(txt, "INCOMPLETE");
  CHECK_STR_CONTAINS(txt, "ckpt_00000002                complete: step 2, 1 rank, none, written synchronously");
  CHECK_STR_CONTAINS(txt, "CORRUPT");
  free(txt);
}

static void test_set_full_params(void) {
  const char* precs[] = {"fp32", "bf16"};
  for (int pi = 0; pi < 2; pi++) {
    zp_config c;
    zp_run r;
    char err[1024];
    CHECK_EQ_INT(make_cfg(&c, precs[pi]), 0);
    if (open_run(&r, &c)) { CHECK(0); zp_config_free(&c); continue; }
    fill(&r);
    r.opt.step_t = 9;
    float* gp[8];
    for (int g = 0; g < r.layout.n_groups; g++) {
      gp[g] = calloc((size_t)r.layout.group_span[g], sizeof(float));
      for (uint64_t e = 0; e < r.layout.group_span[g]; e++) gp[g][e] = pv(g, e, 0);
    }
    /* garbage first, then set: weights exact (PARAM = bf16 of them), m = v = 0, step_t 0 */
    for (int g = 0; g < r.layout.n_groups; g++) {
      zp_group_info* in = &r.groups[g].info;
      void* junk = malloc(in->bytes[ZP_CAT_OPTIM]);
      memset(junk, 0x5a, in->bytes[ZP_CAT_OPTIM]);
      r.ops->copy_h2d(r.be, in->buf[ZP_CAT_OPTIM], junk, in->bytes[ZP_CAT_OPTIM]);
      free(junk);
    }
    int rc = zp_ckpt_set_full_params(&r, gp, err, sizeof err);
    CHECK_MSG(rc == 0, "%s", err);
    CHECK_EQ_INT(r.opt.step_t, 0);
    CHECK_EQ_INT(check(&r, 1), 0);
    if (r.groups[1].info.dtype[ZP_CAT_PARAM] == ZP_BF16) {
      uint16_t b[4];
      r.ops->copy_d2h(r.be, b, r.groups[1].info.buf[ZP_CAT_PARAM], sizeof b);
      CHECK(b[3] == zp_f32_to_bf16(pv(1, 3, 0)));
    }
    for (int g = 0; g < r.layout.n_groups; g++) free(gp[g]);
    zp_run_close(&r);
    zp_config_free(&c);
  }
}

int main(void) {
  snprintf(g_dir, sizeof g_dir, "/tmp/zp_ckpt_meta_XXXXXX");
  if (!mkdtemp(g_dir)) return 1;
  if (make_cfg(&g_c, "bf16") || open_run(&g_r, &g_c)) return 1;
  ZT_RUN(test_lies);
  ZT_RUN(test_resume_fallback);
  ZT_RUN(test_set_full_params);
  zp_run_close(&g_r);
  zp_config_free(&g_c);
  rm_rf(g_dir);
  return zt_done();
}
