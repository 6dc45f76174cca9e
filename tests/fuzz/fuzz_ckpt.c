/* fuzz_ckpt.c: libFuzzer target for checkpoint metadata (core/ckpt.c: meta.json, the rank
 * index rankNNNNN.json, piece/whole-file checks). Linked against zpcore_fuzz (the core built
 * with the fuzz flags) because ckpt.c pulls in the runtime.
 * The input is split at its first two NUL bytes into meta.json, rank00000.json and
 * rank00000.bin, written into TMP/ckpt_00000001/ (one temp directory per process, files
 * reused, removed at exit). Then zp_ckpt_info(dir) parses and verifies it (output to
 * /dev/null) and zp_ckpt_find_latest(TMP) scans the parent.
 * Failures: any crash, leak or undefined behaviour, and abort() when a failure comes without
 * a message or find_latest names another directory than the only one there. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt.h"

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

static char g_top[512], g_dir[600];
static char g_meta[700], g_index[700], g_bin[700];
static FILE* g_null;

static void cleanup(void) {
  if (!g_top[0]) return;
  unlink(g_meta);
  unlink(g_index);
  unlink(g_bin);
  rmdir(g_dir);
  rmdir(g_top);
}

static void setup(void) {
  if (g_top[0]) return;
  const char* tmp = getenv("TMPDIR");
  snprintf(g_top, sizeof g_top, "%s/zp_fuzz_ckpt.XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
  if (!mkdtemp(g_top)) {
    fprintf(stderr, "fuzz_ckpt: mkdtemp(%s): %s\n", g_top, strerror(errno));
    abort();
  }
  snprintf(g_dir, sizeof g_dir, "%s/ckpt_00000001", g_top);
  if (mkdir(g_dir, 0700) != 0) {
    fprintf(stderr, "fuzz_ckpt: mkdir(%s): %s\n", g_dir, strerror(errno));
    abort();
  }
  snprintf(g_meta, sizeof g_meta, "%s/meta.json", g_dir);
  snprintf(g_index, sizeof g_index, "%s/rank00000.json", g_dir);
  snprintf(g_bin, sizeof g_bin, "%s/rank00000.bin", g_dir);
  g_null = fopen("/dev/null", "w");
  if (!g_null) abort();
  atexit(cleanup);
}

static void write_file(const char* path, const void* buf, size_t n) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    fprintf(stderr, "fuzz_ckpt: open %s: %s\n", path, strerror(errno));
    abort();
  }
  const char* p = buf;
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w <= 0) {
      fprintf(stderr, "fuzz_ckpt: write %s: %s\n", path, strerror(errno));
      abort();
    }
    p += w;
    n -= (size_t)w;
  }
  close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  setup();
  /* split: meta.json \0 rank00000.json \0 rank00000.bin (missing parts are empty files) */
  const uint8_t* part[3] = {data, data + size, data + size};
  size_t len[3] = {size, 0, 0};
  const uint8_t* z1 = memchr(data, 0, size);
  if (z1) {
    len[0] = (size_t)(z1 - data);
    part[1] = z1 + 1;
    len[1] = size - len[0] - 1;
    const uint8_t* z2 = memchr(part[1], 0, len[1]);
    if (z2) {
      len[1] = (size_t)(z2 - part[1]);
      part[2] = z2 + 1;
      len[2] = size - len[0] - len[1] - 2;
    }
  }
  write_file(g_meta, part[0], len[0]);
  write_file(g_index, part[1], len[1]);
  write_file(g_bin, part[2], len[2]);

  char err[2048] = "";
  int rc = zp_ckpt_info(g_dir, g_null, 0, err, sizeof err);
  if (rc != 0 && !err[0]) {
    fprintf(stderr, "fuzz_ckpt: zp_ckpt_info failed (%d) without a message\n", rc);
    abort();
  }
  char found[1024] = "";
  rc = zp_ckpt_find_latest(g_top, found, sizeof found);
  if (rc == 0 && strcmp(found, g_dir) != 0) {
    fprintf(stderr, "fuzz_ckpt: zp_ckpt_find_latest found %s, only %s exists\n", found, g_dir);
    abort();
  }
  return 0;
}
