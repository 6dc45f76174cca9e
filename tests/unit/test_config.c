/* test_config.c: the configuration schema: every kind of error names file:line:col and the
 * key path, near-misses get "did you mean", --set is type-checked the same way, impossible
 * combinations are refused with a reason, and docs/config.md matches the schema. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "zt.h"

static int load(const char* text, const char* const* sets, int n, char* err, size_t errlen, zp_config* c) {
  return zp_config_load_text(c, text, strlen(text), "t.toml", sets, n, err, errlen);
}

static void t_defaults_and_values(void) {
  zp_config c;
  char err[1024] = "";
  int rc = load("[model]\nn_layer = 2\n[train]\nlr = 1e-3\nmicro_batch = 4\ndevice = \"cpu\"\n", NULL, 0, err, sizeof err, &c);
  CHECK_MSG(rc == 0, "%s", err);
  CHECK_EQ_INT(zp_cfg_int(&c, "model.n_layer"), 2);
  CHECK_EQ_INT(zp_cfg_int(&c, "model.n_head"), 12);
  CHECK_NEAR(zp_cfg_float(&c, "train.lr"), 1e-3, 0, 1e-15);
  CHECK(strcmp(zp_cfg_str(&c, "zero.plugin"), "none") == 0);
  CHECK_STR_CONTAINS(zp_cfg_get(&c, "train.micro_batch")->origin, "t.toml:5:1");
  zp_config_free(&c);
}

static void t_unknown_key(void) {
  zp_config c;
  char err[1024] = "";
  int rc = load("[train]\nmicro_bach = 4\n", NULL, 0, err, sizeof err, &c);
  CHECK(rc != 0);
  CHECK_STR_CONTAINS(err, "t.toml:2:1");
  CHECK_STR_CONTAINS(err, "unknown key 'train.micro_bach'");
  CHECK_STR_CONTAINS(err, "did you mean 'train.micro_batch'");
  zp_config_free(&c);
  rc = load("[trian]\nsteps = 4\n", NULL, 0, err, sizeof err, &c);
  CHECK(rc != 0);
  CHECK_STR_CONTAINS(err, "unknown section 'trian'");
  CHECK_STR_CONTAINS(err, "did you mean 'train'");
  zp_config_free(&c);
  rc = load("[model]\nwibble = 1\n", NULL, 0, err, sizeof err, &c);
  CHECK(rc != 0);
  CHECK(strstr(err, "did you mean") == NULL);
  zp_config_free(&c);
  /* dotted keys and inline tables are walked the same way */
  rc = load("zero = { plugin = \"stage3\", prefetch_grups = 2 }\n", NULL, 0, err, sizeof err, &c);
  CHECK(rc != 0);
  CHECK_STR_CONTAINS(err, "zero.prefetch_grups");
  CHECK_STR_CONTAINS(err, "did you mean 'zero.prefetch_groups'");
  zp_config_free(&c);
}

static void t_wrong_type_and_range(void) {
  zp_config c;
  char err[1024] = "";
  int rc = load("[train]\n\nmicro_batch = \"8\"\n", NULL, 0, err, sizeof err, &c);
  CHECK(rc != 0);
  CHECK_STR_CONTAINS(err, "t.toml:3:1: train.micro_batch must be an integer, got string");
  zp_config_free(&c);
  rc = load("[train]\nmicro_batch = 0\n", NULL, 0, err, sizeof err, &c);
  CHECK(rc != 0);
  CHECK_STR_CONTAINS(err, "train.micro_batch = 0 is out of range");
  zp_config_free(&c);
  rc = load("[train]\ndevice = \"tpu\"\n", NULL, 0, err, sizeof err, &c);
  CHECK(rc != 0);
  CHECK_STR_CONTAINS(err, "train.device = \"tpu\" is not one of: cpu,cuda");
  zp_config_free(&c);
  rc = load("model = 3\n", NULL, 0, err, sizeof err, &c);
  CHECK(rc != 0);
  CHECK_STR_CONTAINS(err, "model is a section");
  zp_config_free(&c);
  rc = load("[train]\nlr = nan\n", NULL, 0, err, sizeof err, &c);
  CHECK(rc != 0);
  CHECK_STR_CONTAINS(err, "finite");
  zp_config_free(&c);
}

static void t_syntax_error(void) {
  zp_config c;
  char err[1024] = "";
  int rc = load("[train]\nlr = = 3\n", NULL, 0, err, sizeof err, &c);
  CHECK(rc != 0);
  CHECK_STR_CONTAINS(err, "t.toml:2:");
  zp_config_free(&c);
}

static void t_set_overrides(void) {
  zp_config c;
  char err[1024] = "";
  const char* sets[] = {"train.lr=0.5", "train.device=cuda", "train.precision=bf16", "zero.plugin=stage3"};
  int rc = load("[train]\nlr = 1e-3\n", sets, 4, err, sizeof err, &c);
  CHECK_MSG(rc == 0, "%s", err);
  CHECK_NEAR(zp_cfg_float(&c, "train.lr"), 0.5, 0, 0);
  CHECK(strcmp(zp_cfg_str(&c, "train.device"), "cuda") == 0);
  CHECK_STR_CONTAINS(zp_cfg_get(&c, "train.lr")->origin, "--set");
  zp_config_free(&c);
  const char* bad[] = {"train.micro_batch=abc"};
  rc = load("", bad, 1, err, sizeof err, &c);
  CHECK(rc != 0);
  CHECK_STR_CONTAINS(err, "train.micro_batch");
  zp_config_free(&c);
  const char* bad2[] = {"train.stpes=3"};
  rc = load("", bad2, 1, err, sizeof err, &c);
  CHECK(rc != 0);
  CHECK_STR_CONTAINS(err, "did you mean 'train.steps'");
  zp_config_free(&c);
  const char* bad3[] = {"train.steps"};
  rc = load("", bad3, 1, err, sizeof err, &c);
  CHECK(rc != 0);
  CHECK_STR_CONTAINS(err, "expected section.key=value");
  zp_config_free(&c);
}

static void t_combinations(void) {
  zp_config c;
  char err[1024] = "";
  int rc = load("[zero]\nplugin = \"stage2\"\n[offload.param]\nplugin = \"offload_cpu\"\n", NULL, 0, err, sizeof err, &c);
  CHECK(rc != 0);
  CHECK_STR_CONTAINS(err, "t.toml:4:1: offload.param.plugin = \"offload_cpu\" needs zero.plugin = \"stage3\"");
  zp_config_free(&c);
  rc = load("[zero]\nplugin = \"stage3\"\n[parallel]\npp = 2\n", NULL, 0, err, sizeof err, &c);
  CHECK(rc != 0);
  CHECK_STR_CONTAINS(err, "cannot be combined with pipeline parallelism");
  zp_config_free(&c);
  rc = load("[model]\nd_model = 100\nn_head = 3\n", NULL, 0, err, sizeof err, &c);
  CHECK(rc != 0);
  CHECK_STR_CONTAINS(err, "not divisible");
  zp_config_free(&c);
  rc = load("[offload.optimizer]\nplugin = \"offload_nvme\"\n", NULL, 0, err, sizeof err, &c);
  CHECK(rc != 0);
  CHECK_STR_CONTAINS(err, "needs offload.optimizer.path");
  zp_config_free(&c);
  rc = load("[train]\ndevice = \"cuda\"\n", NULL, 0, err, sizeof err, &c);
  CHECK(rc != 0);
  CHECK_STR_CONTAINS(err, "bf16");
  zp_config_free(&c);
}

static void t_missing_file(void) {
  zp_config c;
  char err[1024] = "";
  int rc = zp_config_load(&c, "/nonexistent/x.toml", NULL, 0, err, sizeof err);
  CHECK(rc != 0);
  CHECK_STR_CONTAINS(err, "/nonexistent/x.toml: cannot open config");
  zp_config_free(&c);
}

static void t_ext_and_paths(void) {
  zp_config c;
  char err[1024] = "";
  int rc;
  const char* t = "[data]\ntrain = \"d/x_*.bin\"\n[ext.myplugin]\nfoo = 1\n";
  rc = zp_config_load_text(&c, t, strlen(t), "/a/b/c.toml", NULL, 0, err, sizeof err);
  CHECK_MSG(rc == 0, "%s", err);
  char p[256];
  zp_cfg_path(&c, "data.train", p, sizeof p);
  CHECK(strcmp(p, "/a/b/d/x_*.bin") == 0);
  zp_config_free(&c);
}

static void t_doc_in_sync(void) {
  char* buf = NULL;
  size_t len = 0;
  FILE* f = open_memstream(&buf, &len);
  zp_config_write_doc(f);
  fclose(f);
  FILE* d = fopen(ZP_SOURCE_DIR "/docs/config.md", "rb");
  CHECK_MSG(d != NULL, "docs/config.md missing: run `zp config --doc > docs/config.md`");
  if (d) {
    char* file = malloc(len + 2);
    size_t n = fread(file, 1, len + 1, d);
    fclose(d);
    CHECK_MSG(n == len && memcmp(file, buf, len) == 0, "docs/config.md is out of date: run `./build/zp config --doc > docs/config.md`");
    free(file);
  }
  free(buf);
}

/* the effective-config dump (written into every checkpoint) loads again, control chars included */
static void t_dump_round_trip(void) {
  zp_config c, d;
  char err[1024] = "";
  const char* text = "[sample]\nprompt = \"a\\nb\\t\\u007f\\\"q\\\\\"\n[train]\nlr = 0.25\n";
  int rc = load(text, NULL, 0, err, sizeof err, &c);
  CHECK_MSG(rc == 0, "%s", err);
  char* buf = NULL;
  size_t len = 0;
  FILE* f = open_memstream(&buf, &len);
  zp_config_dump(&c, f);
  fclose(f);
  rc = zp_config_load_text(&d, buf, len, "dump.toml", NULL, 0, err, sizeof err);
  CHECK_MSG(rc == 0, "%s", err);
  if (rc == 0) {
    CHECK(strcmp(zp_cfg_str(&c, "sample.prompt"), zp_cfg_str(&d, "sample.prompt")) == 0);
    CHECK(zp_cfg_float(&d, "train.lr") == 0.25);
  }
  free(buf);
  zp_config_free(&c);
  zp_config_free(&d);
}

static void t_edit_distance(void) {
  CHECK_EQ_INT(zp_edit_distance("abc", "abc"), 0);
  CHECK_EQ_INT(zp_edit_distance("micro_bach", "micro_batch"), 1);
  CHECK_EQ_INT(zp_edit_distance("stpes", "steps"), 1);
  CHECK_EQ_INT(zp_edit_distance("", "abc"), 3);
}

int main(void) {
  ZT_RUN(t_defaults_and_values);
  ZT_RUN(t_unknown_key);
  ZT_RUN(t_wrong_type_and_range);
  ZT_RUN(t_syntax_error);
  ZT_RUN(t_set_overrides);
  ZT_RUN(t_combinations);
  ZT_RUN(t_missing_file);
  ZT_RUN(t_ext_and_paths);
  ZT_RUN(t_doc_in_sync);
  ZT_RUN(t_dump_round_trip);
  ZT_RUN(t_edit_distance);
  return zt_done();
}
