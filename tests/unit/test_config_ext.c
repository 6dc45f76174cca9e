/* test_config_ext.c: plugin options. Keys under [ext] are not validated by the core's schema;
 * plugins read them through the host's config_* calls with "ext.<table>.<key>" paths:
 * present with the asked type -> ZP_OK and the value; absent -> ZP_OK with the caller's
 * default untouched; present with another type -> ZP_E_INVALID and a message naming the path,
 * file:line:col (or --set) and both types. --set ext.*=... works for any such key and wins
 * over the file; a bare word is a string. Checked on the config layer and through the real
 * host table of a (dry-run) zp_run, the path plugins use. The effective-config dump keeps them
 * (types, odd keys, datetimes, nested arrays/tables; --set replacing the file's values) and
 * loads again. */
#define _GNU_SOURCE /* open_memstream */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "runtime.h"
#include "zt.h"

static const char* kText =
    "[train]\nlr = 1e-3\n"
    "[ext.shard_big]\nthreshold = 12000\nratio = 0.5\nwhole = 3\nverbose = true\nname = \"big\"\n"
    "[ext.shard_big.sub]\ndepth = 2\n";

static void t_ext_values(void) {
  zp_config c;
  char err[1024] = "";
  int rc = zp_config_load_text(&c, kText, strlen(kText), "/d/run.toml", NULL, 0, err, sizeof err);
  CHECK_MSG(rc == 0, "%s", err);
  int64_t i = -1;
  double f = -1;
  int b = -1;
  const char* s = NULL;
  CHECK_EQ_INT(zp_cfg_ext_int(&c, "ext.shard_big.threshold", &i, err, sizeof err), ZP_OK);
  CHECK_EQ_INT(i, 12000);
  CHECK_EQ_INT(zp_cfg_ext_float(&c, "ext.shard_big.ratio", &f, err, sizeof err), ZP_OK);
  CHECK_NEAR(f, 0.5, 0, 0);
  CHECK_EQ_INT(zp_cfg_ext_float(&c, "ext.shard_big.whole", &f, err, sizeof err), ZP_OK); /* int as float */
  CHECK_NEAR(f, 3.0, 0, 0);
  CHECK_EQ_INT(zp_cfg_ext_bool(&c, "ext.shard_big.verbose", &b, err, sizeof err), ZP_OK);
  CHECK_EQ_INT(b, 1);
  CHECK_EQ_INT(zp_cfg_ext_string(&c, "ext.shard_big.name", &s, err, sizeof err), ZP_OK);
  CHECK(s && strcmp(s, "big") == 0);
  CHECK_EQ_INT(zp_cfg_ext_int(&c, "ext.shard_big.sub.depth", &i, err, sizeof err), ZP_OK);
  CHECK_EQ_INT(i, 2);
  /* absent: default untouched, no error */
  i = 77;
  err[0] = 0;
  CHECK_EQ_INT(zp_cfg_ext_int(&c, "ext.shard_big.missing", &i, err, sizeof err), ZP_OK);
  CHECK_EQ_INT(zp_cfg_ext_int(&c, "ext.other.threshold", &i, err, sizeof err), ZP_OK);
  CHECK_EQ_INT(zp_cfg_ext_int(&c, "ext.shard_big.threshold.deeper", &i, err, sizeof err), ZP_OK);
  CHECK_EQ_INT(i, 77);
  CHECK(err[0] == 0);
  /* wrong type: named with its place */
  CHECK_EQ_INT(zp_cfg_ext_int(&c, "ext.shard_big.ratio", &i, err, sizeof err), ZP_E_INVALID);
  CHECK_EQ_INT(i, 77);
  CHECK_STR_CONTAINS(err, "/d/run.toml:5:9");
  CHECK_STR_CONTAINS(err, "ext.shard_big.ratio is a float");
  CHECK_STR_CONTAINS(err, "reads it as an integer");
  CHECK_EQ_INT(zp_cfg_ext_string(&c, "ext.shard_big.sub", &s, err, sizeof err), ZP_E_INVALID);
  CHECK_STR_CONTAINS(err, "is a table");
  CHECK_EQ_INT(zp_cfg_ext_bool(&c, "ext.shard_big.name", &b, err, sizeof err), ZP_E_INVALID);
  /* not an ext path: the schema is the only place for those */
  CHECK(zp_cfg_is_ext("ext.a.b") && zp_cfg_is_ext("ext") && !zp_cfg_is_ext("extra.a") && !zp_cfg_is_ext("train.lr"));
  zp_config_free(&c);
}

static void t_ext_set(void) {
  zp_config c;
  char err[1024] = "";
  const char* sets[] = {"ext.shard_big.threshold=5", "ext.new.mode=fast", "ext.new.k = 2.5", "train.lr=2e-3"};
  int rc = zp_config_load_text(&c, kText, strlen(kText), "run.toml", sets, 4, err, sizeof err);
  CHECK_MSG(rc == 0, "%s", err);
  int64_t i = 0;
  const char* s = NULL;
  double f = 0;
  CHECK_EQ_INT(zp_cfg_ext_int(&c, "ext.shard_big.threshold", &i, err, sizeof err), ZP_OK);
  CHECK_EQ_INT(i, 5); /* --set wins over the file */
  CHECK_EQ_INT(zp_cfg_ext_string(&c, "ext.new.mode", &s, err, sizeof err), ZP_OK);
  CHECK(s && strcmp(s, "fast") == 0); /* bare word: string */
  CHECK_EQ_INT(zp_cfg_ext_float(&c, "ext.new.k", &f, err, sizeof err), ZP_OK);
  CHECK_NEAR(f, 2.5, 0, 0);
  CHECK_EQ_INT(zp_cfg_ext_float(&c, "ext.shard_big.ratio", &f, err, sizeof err), ZP_OK); /* the file's still there */
  CHECK_NEAR(f, 0.5, 0, 0);
  CHECK_EQ_INT(zp_cfg_ext_string(&c, "ext.shard_big.threshold", &s, err, sizeof err), ZP_E_INVALID);
  CHECK_STR_CONTAINS(err, "--set ext.shard_big.threshold");
  CHECK_NEAR(zp_cfg_float(&c, "train.lr"), 2e-3, 0, 1e-15);
  zp_config_free(&c);
  /* bad --set forms */
  const char* bad1[] = {"ext.=1"};
  rc = zp_config_load_text(&c, "", 0, "x.toml", bad1, 1, err, sizeof err);
  CHECK(rc != 0);
  CHECK_STR_CONTAINS(err, "ext.<plugin>.<key>");
  zp_config_free(&c);
  const char* bad2[] = {"ext.a=1", "ext.a.b=2"};
  rc = zp_config_load_text(&c, "", 0, "x.toml", bad2, 2, err, sizeof err);
  CHECK(rc != 0);
  CHECK_STR_CONTAINS(err, "not a table");
  zp_config_free(&c);
  /* ext in the file must still be a table; unknown keys elsewhere still refused */
  rc = zp_config_load_text(&c, "ext = 1\n", 8, "x.toml", NULL, 0, err, sizeof err);
  CHECK(rc != 0);
  zp_config_free(&c);
  const char* bad3[] = {"zero.threshold=1"};
  rc = zp_config_load_text(&c, "", 0, "x.toml", bad3, 1, err, sizeof err);
  CHECK(rc != 0);
  CHECK_STR_CONTAINS(err, "unknown key 'zero.threshold'");
  zp_config_free(&c);
}

/* the effective-config dump (zp config, checkpoints) keeps the plugin options, --set ones
 * replacing the file's, and loads again with the same values and types */
static void t_ext_dump(void) {
  zp_config c, d;
  char err[1024] = "";
  const char* text =
      "[ext.p]\nn = -7\nx = 1.0\ny = 2.5e-300\nz = inf\nb = false\ns = \"a\\\"b\\u0001\\n\"\n"
      "when = 1979-05-27T07:32:00.25-07:00\nday = 1979-05-27\nlist = [1, [\"x\", {k = 2}], {}]\n"
      "\"odd key\" = 3\nempty = {}\n[ext.p.sub]\ndeep = true\nrepl = 1\n[[ext.q]]\nv = 1\n[[ext.q]]\nv = 2\n";
  const char* sets[] = {"ext.p.n=5", "ext.p.sub=word", "ext.r.t=1.5"};
  int rc = zp_config_load_text(&c, text, strlen(text), "d.toml", sets, 3, err, sizeof err);
  CHECK_MSG(rc == 0, "%s", err);
  char* buf = NULL;
  size_t len = 0;
  FILE* m = open_memstream(&buf, &len);
  zp_config_dump(&c, m);
  fclose(m);
  CHECK_STR_CONTAINS(buf, "\n[ext]\n");
  CHECK_STR_CONTAINS(buf, "p.x = 1.0  # d.toml:3:5");
  CHECK_STR_CONTAINS(buf, "p.n = 5  # --set");
  rc = zp_config_load_text(&d, buf, len, "dump.toml", NULL, 0, err, sizeof err);
  CHECK_MSG(rc == 0, "%s\n%s", err, buf);
  if (rc == 0) {
    int64_t i = 0;
    double f = 0;
    const char* s = NULL;
    int b = 1;
    CHECK_EQ_INT(zp_cfg_ext_int(&d, "ext.p.n", &i, err, sizeof err), ZP_OK);
    CHECK_EQ_INT(i, 5);
    CHECK_EQ_INT(zp_cfg_ext_int(&d, "ext.p.x", &i, err, sizeof err), ZP_E_INVALID); /* still a float */
    CHECK_EQ_INT(zp_cfg_ext_float(&d, "ext.p.y", &f, err, sizeof err), ZP_OK);
    CHECK(f == 2.5e-300);
    CHECK_EQ_INT(zp_cfg_ext_float(&d, "ext.p.z", &f, err, sizeof err), ZP_OK);
    CHECK(isinf(f) && f > 0);
    CHECK_EQ_INT(zp_cfg_ext_bool(&d, "ext.p.b", &b, err, sizeof err), ZP_OK);
    CHECK_EQ_INT(b, 0);
    CHECK_EQ_INT(zp_cfg_ext_string(&d, "ext.p.s", &s, err, sizeof err), ZP_OK);
    CHECK(s && strcmp(s, "a\"b\001\n") == 0);
    CHECK_EQ_INT(zp_cfg_ext_string(&d, "ext.p.sub", &s, err, sizeof err), ZP_OK); /* --set replaced the table */
    CHECK(s && strcmp(s, "word") == 0);
    CHECK_EQ_INT(zp_cfg_ext_float(&d, "ext.r.t", &f, err, sizeof err), ZP_OK);
    CHECK(f == 1.5);
    /* a second dump of the reloaded config is identical apart from origins */
    char* buf2 = NULL;
    size_t len2 = 0;
    m = open_memstream(&buf2, &len2);
    zp_config_dump(&d, m);
    fclose(m);
    CHECK_STR_CONTAINS(buf2, "p.when = 1979-05-27T07:32:00.25-07:00");
    CHECK_STR_CONTAINS(buf2, "p.day = 1979-05-27");
    CHECK_STR_CONTAINS(buf2, "p.list = [1, [\"x\", { k = 2 }], {}]");
    CHECK_STR_CONTAINS(buf2, "p.\"odd key\" = 3");
    CHECK_STR_CONTAINS(buf2, "p.empty = {}");
    CHECK_STR_CONTAINS(buf2, "q = [{ v = 1 }, { v = 2 }]");
    free(buf2);
    zp_config_free(&d);
  }
  free(buf);
  zp_config_free(&c);
}

/* through the host table a plugin gets: the same answers, and the error lands in the run */
static void t_host_table(void) {
  zp_config c;
  char err[2048] = "";
  const char* sets[] = {"model.n_layer=1", "model.n_head=2", "model.d_model=32", "model.seq_len=16", "model.vocab_size=257",
                        "model.vocab_pad=64", "ext.shard_big.extra=7"};
  int rc = zp_config_load_text(&c, kText, strlen(kText), "h.toml", sets, 7, err, sizeof err);
  CHECK_MSG(rc == 0, "%s", err);
  zp_run r;
  zp_run_opts o = {0};
  o.dry_run = 1;
  o.world = 2;
  o.no_acts = 1;
  rc = zp_run_open(&r, &c, &o);
  CHECK_MSG(rc == 0, "%s", r.err);
  if (rc == 0) {
    const zp_host* h = &r.host;
    int64_t i = 0;
    double f = 0;
    const char* s = NULL;
    CHECK_EQ_INT(h->config_int(h->ctx, "ext.shard_big.threshold", &i), ZP_OK);
    CHECK_EQ_INT(i, 12000);
    CHECK_EQ_INT(h->config_int(h->ctx, "ext.shard_big.extra", &i), ZP_OK);
    CHECK_EQ_INT(i, 7);
    i = 42;
    CHECK_EQ_INT(h->config_int(h->ctx, "ext.shard_big.absent", &i), ZP_OK);
    CHECK_EQ_INT(i, 42);
    CHECK_EQ_INT(h->config_float(h->ctx, "ext.shard_big.ratio", &f), ZP_OK);
    CHECK_NEAR(f, 0.5, 0, 0);
    CHECK_EQ_INT(h->config_string(h->ctx, "ext.shard_big.name", &s), ZP_OK);
    CHECK(s && strcmp(s, "big") == 0);
    r.err[0] = 0;
    int b = 0;
    CHECK_EQ_INT(h->config_bool(h->ctx, "ext.shard_big.threshold", &b), ZP_E_INVALID);
    CHECK_STR_CONTAINS(r.err, "h.toml:4:13: plugin option ext.shard_big.threshold is an integer");
    /* schema keys behave as before: unknown ones are ZP_E_INVALID */
    CHECK_EQ_INT(h->config_int(h->ctx, "zero.no_such_key", &i), ZP_E_INVALID);
    CHECK_EQ_INT(h->config_int(h->ctx, "train.micro_batch", &i), ZP_OK);
    zp_run_close(&r);
  }
  zp_config_free(&c);
}

int main(void) {
  ZT_RUN(t_ext_values);
  ZT_RUN(t_ext_set);
  ZT_RUN(t_ext_dump);
  ZT_RUN(t_host_table);
  return zt_done();
}
