/* test_plugin.c: the plugin loader refuses what it must (wrong ABI major with both versions
 * named, a missing entry symbol, a nonexistent path, a bare file name, the wrong kind), every
 * shipped plugin loads with its kind and a clear "not implemented" where it is a
 * placeholder, and an error from a plugin's open() reaches the user with its message. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "plugin.h"
#include "runtime.h"
#include "zt.h"

#define TP ZP_BUILD_DIR "/tests/plugins/"

static void t_bad_abi(void) {
  zp_plugin p;
  char err[1024];
  int rc = zp_plugin_open(TP "zp_bad_abi.so", 0, NULL, &p, err, sizeof err);
  CHECK_EQ_INT(rc, ZP_E_ABI);
  CHECK_STR_CONTAINS(err, "built for plugin ABI 99.3");
  CHECK_STR_CONTAINS(err, "this zp provides ABI 1.");
  CHECK(p.handle == NULL);
}

static void t_no_entry(void) {
  zp_plugin p;
  char err[1024];
  int rc = zp_plugin_open(TP "zp_no_entry.so", 0, NULL, &p, err, sizeof err);
  CHECK_EQ_INT(rc, ZP_E_ABI);
  CHECK_STR_CONTAINS(err, "missing entry symbol 'zp_plugin_entry'");
}

static void t_missing(void) {
  zp_plugin p;
  char err[1024];
  int rc = zp_plugin_open(TP "zp_nonexistent.so", 0, NULL, &p, err, sizeof err);
  CHECK_EQ_INT(rc, ZP_E_IO);
  CHECK_STR_CONTAINS(err, "no such file");
  rc = zp_plugin_open("no_such_plugin", 0, NULL, &p, err, sizeof err);
  CHECK_EQ_INT(rc, ZP_E_IO);
  CHECK_STR_CONTAINS(err, "plugin 'no_such_plugin' not found");
  rc = zp_plugin_open("zp_stage1.so", 0, NULL, &p, err, sizeof err);
  CHECK(rc != 0);
  CHECK_STR_CONTAINS(err, "current directory is never searched");
  rc = zp_plugin_open("../evil", 0, NULL, &p, err, sizeof err);
  CHECK(rc != 0);
}

static void t_wrong_kind(void) {
  zp_plugin p;
  char err[1024];
  int rc = zp_plugin_open(TP "zp_wrong_kind.so", ZP_KIND_STRATEGY, NULL, &p, err, sizeof err);
  CHECK_EQ_INT(rc, ZP_E_INVALID);
  CHECK_STR_CONTAINS(err, "is a tier plugin, but a strategy plugin is needed");
}

static void t_shipped(void) {
  const char* names[] = {"stage1", "stage2", "stage3", "offload_cpu", "offload_nvme", "pipeline", "tensor"};
  zp_plugin_kind kinds[] = {ZP_KIND_STRATEGY, ZP_KIND_STRATEGY, ZP_KIND_STRATEGY, ZP_KIND_TIER, ZP_KIND_TIER,
                            ZP_KIND_PARALLEL, ZP_KIND_PARALLEL};
  for (int i = 0; i < 7; i++) {
    zp_plugin p;
    char err[1024];
    int rc = zp_plugin_open(names[i], kinds[i], NULL, &p, err, sizeof err);
    CHECK_MSG(rc == 0, "%s: %s", names[i], err);
    if (rc) continue;
    CHECK(strcmp(p.desc->name, names[i]) == 0);
    CHECK_EQ_INT(p.desc->abi_major, ZP_ABI_MAJOR);
    zp_plugin_close(&p);
  }
}

static int open_with(const char* key_value, const char* key2, char* msg, size_t n) {
  zp_config c;
  char err[1024];
  const char* sets[] = {"model.n_layer=1", "model.n_head=2", "model.d_model=16", "model.seq_len=8", "model.vocab_size=32",
                        "train.micro_batch=1", key_value, key2 ? key2 : "train.steps=1"};
  int rc = zp_config_load_text(&c, "", 0, "p.toml", sets, 8, err, sizeof err);
  if (rc) { snprintf(msg, n, "%s", err); return rc; }
  zp_run r;
  zp_run_opts o = {0};
  o.world = 1;
  rc = zp_run_open(&r, &c, &o);
  snprintf(msg, n, "%s", r.err);
  zp_run_close(&r);
  zp_config_free(&c);
  return rc;
}

static void t_open_error_reaches_user(void) {
  char msg[2048];
  int rc = open_with("zero.plugin=" TP "zp_open_fails.so", NULL, msg, sizeof msg);
  CHECK_EQ_INT(rc, ZP_E_IO);
  CHECK_STR_CONTAINS(msg, "cannot reach the frobnicator (test)");
  rc = open_with("zero.plugin=" TP "zp_bad_abi.so", NULL, msg, sizeof msg);
  CHECK_EQ_INT(rc, ZP_E_ABI);
  CHECK_STR_CONTAINS(msg, "zero.plugin");
  /* a tier's plan refusal (host cap) reaches the user with its numbers */
  rc = open_with("offload.optimizer.plugin=offload_cpu", "offload.optimizer.max_host_gb=1e-9", msg, sizeof msg);
  CHECK_EQ_INT(rc, ZP_E_NOMEM);
  CHECK_STR_CONTAINS(msg, "more than offload.optimizer.max_host_gb = 1e-09");
}

static void t_list(void) {
  char* buf = NULL;
  size_t len = 0;
  FILE* f = open_memstream(&buf, &len);
  int n = zp_plugin_list(f);
  fclose(f);
  CHECK(n >= 7);
  CHECK_STR_CONTAINS(buf, "stage3");
  CHECK_STR_CONTAINS(buf, "strategy");
  CHECK_STR_CONTAINS(buf, "offload_nvme");
  free(buf);
}

int main(void) {
  ZT_RUN(t_bad_abi);
  ZT_RUN(t_no_entry);
  ZT_RUN(t_missing);
  ZT_RUN(t_wrong_kind);
  ZT_RUN(t_shipped);
  ZT_RUN(t_open_error_reaches_user);
  ZT_RUN(t_list);
  return zt_done();
}
