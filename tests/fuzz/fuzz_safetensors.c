/* fuzz_safetensors.c: libFuzzer target for the safetensors reader and the GPT-2 import
 * (core/safetensors.c). The input is written as a file (one temp directory per process,
 * removed at exit), then zp_st_open validates it; when it opens, every floating-point tensor
 * is read (bounded: the reader proved it lies inside the file) and zp_st_import_gpt2_file
 * maps it onto a fixed small GPT-2 layout (n_layer 1, n_head 1, d_model 4, seq_len 2,
 * vocab 3 padded to 4), so seeds can be complete, valid models.
 * Failures: any crash, leak or undefined behaviour; abort() when a failure comes without a
 * message, or when an opened file's tensor table breaks the reader's invariants (offsets
 * outside the data, size not shape x dtype, overlap). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

static char g_dir[512], g_file[600];
static FILE* g_null;
static zp_model_layout g_L;

static void cleanup(void) {
  if (!g_dir[0]) return;
  unlink(g_file);
  rmdir(g_dir);
  zp_model_layout_free(&g_L);
}

static void setup(void) {
  if (g_dir[0]) return;
  const char* tmp = getenv("TMPDIR");
  snprintf(g_dir, sizeof g_dir, "%s/zp_fuzz_st.XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
  if (!mkdtemp(g_dir)) {
    fprintf(stderr, "fuzz_safetensors: mkdtemp(%s): %s\n", g_dir, strerror(errno));
    abort();
  }
  snprintf(g_file, sizeof g_file, "%s/model.safetensors", g_dir);
  g_null = fopen("/dev/null", "w");
  zp_gpt2_shape s = {1, 1, 4, 2, 3, 4};
  char err[256];
  if (!g_null || zp_model_layout_init(&g_L, &s, err, sizeof err)) abort();
  atexit(cleanup);
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  setup();
  int fd = open(g_file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) abort();
  for (size_t off = 0; off < size;) {
    ssize_t w = write(fd, data + off, size - off);
    if (w <= 0) abort();
    off += (size_t)w;
  }
  close(fd);
  char err[2048] = "";
  zp_st_file f;
  int rc = zp_st_open(&f, g_file, err, sizeof err);
  if (rc) {
    if (!err[0]) {
      fprintf(stderr, "fuzz_safetensors: zp_st_open failed (%d) without a message\n", rc);
      abort();
    }
    return 0;
  }
  /* invariants of an accepted file */
  for (int i = 0; i < f.n; i++) {
    const zp_st_tensor* t = &f.t[i];
    if (t->begin > t->end || t->end > f.data_bytes || t->end - t->begin != t->numel * t->dtype_size || f.data_off + f.data_bytes != size) {
      fprintf(stderr, "fuzz_safetensors: accepted tensor %s breaks the invariants\n", t->name);
      abort();
    }
    for (int j = 0; j < i; j++)
      if (f.t[j].begin < t->end && t->begin < f.t[j].end) {
        fprintf(stderr, "fuzz_safetensors: accepted overlapping tensors %s and %s\n", f.t[j].name, t->name);
        abort();
      }
    if (t->dtype != ZP_ST_OTHER && t->numel <= (1u << 20)) {
      float* out = malloc((size_t)t->numel * sizeof(float) + 4);
      if (out && zp_st_read_f32(&f, t, out, err, sizeof err) && !err[0]) abort();
      free(out);
    }
  }
  float* gp[4] = {0};
  err[0] = 0;
  rc = zp_st_import_gpt2_file(&f, &g_L, gp, g_null, err, sizeof err);
  if (rc && !err[0]) {
    fprintf(stderr, "fuzz_safetensors: import failed (%d) without a message\n", rc);
    abort();
  }
  for (int g = 0; g < g_L.n_groups; g++) free(gp[g]);
  zp_st_close(&f);
  return 0;
}
