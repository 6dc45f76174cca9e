/* fuzz_data.c: libFuzzer target for token shards and the dataset (core/data.c).
 * Each input is used twice, in one temp directory per process (files reused, removed at exit):
 * 1. raw: the bytes are written as one file and given to zp_shard_stat (header/size checks);
 *    if it is accepted, zp_dataset_open + zp_dataset_get read it.
 * 2. built: bytes 0..7 choose seq_len, vocab size, shuffle, seed and a shard count (1-3, plus
 *    an optional empty shard); the rest is split into that many payloads, each written with a
 *    correct llm.c header, opened with zp_dataset_open(glob) and read at several positions.
 * Failures: any crash, leak or undefined behaviour, and abort() when a result disagrees with
 * an independent model of data.h: stat facts (sizes, max token), sample/token counts, the
 * tokens of a sample (or its out-of-vocabulary error), pos -> sample determinism, and each
 * epoch being a permutation of [0, N). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data.h"
#include "zp/zp_plugin.h"

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

#define MAX_SHARDS 4
#define MAX_T 32

static char g_dir[512];
static char g_raw[600], g_pattern[600], g_shard[MAX_SHARDS][600];

static void cleanup(void) {
  if (!g_dir[0]) return;
  unlink(g_raw);
  for (int i = 0; i < MAX_SHARDS; i++) unlink(g_shard[i]);
  rmdir(g_dir);
}

static int setup(void) {
  if (g_dir[0]) return 0;
  const char* tmp = getenv("TMPDIR");
  snprintf(g_dir, sizeof g_dir, "%s/zp_fuzz_data.XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
  if (!mkdtemp(g_dir)) {
    fprintf(stderr, "fuzz_data: mkdtemp(%s): %s\n", g_dir, strerror(errno));
    abort();
  }
  snprintf(g_raw, sizeof g_raw, "%s/raw.dat", g_dir);
  snprintf(g_pattern, sizeof g_pattern, "%s/s*.bin", g_dir);
  for (int i = 0; i < MAX_SHARDS; i++) snprintf(g_shard[i], sizeof g_shard[i], "%s/s%d.bin", g_dir, i);
  atexit(cleanup);
  return 0;
}

static void write_file(const char* path, const void* a, size_t na, const void* b, size_t nb) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    fprintf(stderr, "fuzz_data: open %s: %s\n", path, strerror(errno));
    abort();
  }
  const void* part[2] = {a, b};
  size_t len[2] = {na, nb};
  for (int k = 0; k < 2; k++) {
    const char* p = part[k];
    size_t n = len[k];
    while (n) {
      ssize_t w = write(fd, p, n);
      if (w <= 0) {
        fprintf(stderr, "fuzz_data: write %s: %s\n", path, strerror(errno));
        abort();
      }
      p += w;
      n -= (size_t)w;
    }
  }
  close(fd);
}

#define CHECK(cond, ...)                                              \
  do {                                                                \
    if (!(cond)) {                                                    \
      fprintf(stderr, "fuzz_data: %s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                   \
      fputc('\n', stderr);                                            \
      abort();                                                        \
    }                                                                 \
  } while (0)

static uint16_t tok_at(const uint8_t* p, uint64_t i) { return (uint16_t)(p[2 * i] | (p[2 * i + 1] << 8)); }

/* independent model of one shard */
typedef struct {
  const uint8_t* toks; /* little-endian uint16 */
  uint64_t ntok, nsamples, first;
} mshard;

/* Checks zp_dataset_get / sample_index at pos against the model. */
static void check_pos(zp_dataset* d, const mshard* ms, int ns, int T, int vocab, uint64_t N, uint64_t pos) {
  int32_t in[MAX_T + 1], tg[MAX_T + 1], in2[MAX_T + 1], tg2[MAX_T + 1];
  char err[1024];
  uint64_t s = zp_dataset_sample_index(d, pos);
  CHECK(s < N, "pos %llu -> sample %llu, N %llu", (unsigned long long)pos, (unsigned long long)s,
        (unsigned long long)N);
  int rc = zp_dataset_get(d, pos, in, tg, err, sizeof err);
  /* which shard holds sample s (the last shard with first <= s that has samples) */
  int k = -1;
  for (int i = 0; i < ns; i++)
    if (ms[i].nsamples && ms[i].first <= s) k = i;
  CHECK(k >= 0 && s - ms[k].first < ms[k].nsamples, "no shard for sample %llu", (unsigned long long)s);
  uint64_t off = (s - ms[k].first) * (uint64_t)T;
  int oov = 0;
  for (int i = 0; i <= T; i++)
    if (tok_at(ms[k].toks, off + (uint64_t)i) >= vocab) oov = 1;
  if (oov) {
    CHECK(rc == ZP_E_CORRUPT, "sample %llu has a token >= vocab %d but get returned %d",
          (unsigned long long)s, vocab, rc);
    CHECK(strstr(err, "vocab size") != NULL, "error does not name the vocab: %s", err);
    return;
  }
  CHECK(rc == ZP_OK, "get(pos %llu) failed: %s", (unsigned long long)pos, err);
  for (int i = 0; i < T; i++) {
    CHECK(in[i] == tok_at(ms[k].toks, off + (uint64_t)i), "input %d of sample %llu", i, (unsigned long long)s);
    CHECK(tg[i] == tok_at(ms[k].toks, off + (uint64_t)i + 1), "target %d of sample %llu", i,
          (unsigned long long)s);
  }
  /* pure function of pos: again, after visiting another epoch */
  (void)zp_dataset_sample_index(d, pos + N);
  CHECK(zp_dataset_sample_index(d, pos) == s, "pos %llu maps to two samples", (unsigned long long)pos);
  CHECK(zp_dataset_get(d, pos, in2, tg2, err, sizeof err) == ZP_OK, "second get failed: %s", err);
  CHECK(memcmp(in, in2, (size_t)T * sizeof in[0]) == 0 && memcmp(tg, tg2, (size_t)T * sizeof tg[0]) == 0,
        "get(pos %llu) not repeatable", (unsigned long long)pos);
}

static void fuzz_raw(const uint8_t* data, size_t size) {
  write_file(g_raw, data, size, NULL, 0);
  zp_shard_info info;
  char err[1024];
  int rc = zp_shard_stat(g_raw, &info, err, sizeof err);
  CHECK(info.file_bytes == size, "file_bytes %llu != %zu", (unsigned long long)info.file_bytes, size);
  if (rc != ZP_OK) {
    CHECK(info.max_token == -1, "rejected shard with max_token %d", info.max_token);
    CHECK(err[0] != 0, "rejected without a message");
    return;
  }
  /* accepted: the header must agree exactly */
  CHECK(size >= ZP_SHARD_HEADER_BYTES, "accepted %zu bytes", size);
  int32_t h[3];
  memcpy(h, data, sizeof h);
  uint64_t ntok = (size - ZP_SHARD_HEADER_BYTES) / 2;
  CHECK(h[0] == ZP_SHARD_MAGIC && h[1] == ZP_SHARD_VERSION, "accepted magic %d version %d", h[0], h[1]);
  CHECK((size - ZP_SHARD_HEADER_BYTES) % 2 == 0 && h[2] >= 0 && (uint64_t)h[2] == ntok,
        "accepted header tokens %d for %zu bytes", h[2], size);
  CHECK(info.header_tokens == h[2] && info.file_tokens == (int64_t)ntok, "info token counts");
  const uint8_t* toks = data + ZP_SHARD_HEADER_BYTES;
  int32_t mx = -1;
  for (uint64_t i = 0; i < ntok; i++)
    if (tok_at(toks, i) > mx) mx = tok_at(toks, i);
  CHECK(info.max_token == mx, "max_token %d, expected %d", info.max_token, mx);
  /* read it as a dataset */
  int T = 1 + (int)(size % 7);
  zp_dataset* d = zp_dataset_open(g_raw, T, 65536, size, (int)(size & 1), err, sizeof err);
  uint64_t N = ntok > 0 ? (ntok - 1) / (uint64_t)T : 0;
  if (!d) {
    CHECK(N == 0, "open of a valid shard with %llu samples failed: %s", (unsigned long long)N, err);
    return;
  }
  CHECK(zp_dataset_num_samples(d) == N && zp_dataset_num_tokens(d) == ntok && zp_dataset_num_shards(d) == 1,
        "dataset counts");
  mshard ms = {toks, ntok, N, 0};
  check_pos(d, &ms, 1, T, 65536, N, 0);
  check_pos(d, &ms, 1, T, 65536, N, N - 1);
  check_pos(d, &ms, 1, T, 65536, N, N + (uint64_t)h[2]);
  zp_dataset_close(d);
}

static void fuzz_built(const uint8_t* data, size_t size) {
  if (size < 8) return;
  const uint8_t* p = data;
  int T = 1 + p[0] % MAX_T;
  int vocab = (p[1] & 0x80) ? 65536 : 1 + (int)((p[1] & 0x7f) << 8 | p[2]);
  int shuffle = p[3] & 1;
  int nshards = 1 + (p[3] >> 1) % 3;
  int empty_at = (p[3] & 0x40) ? (p[3] >> 3) % (nshards + 1) : -1; /* insert a 0-token shard */
  uint64_t seed = (uint64_t)p[4] | (uint64_t)p[5] << 8 | (uint64_t)p[6] << 16 | (uint64_t)p[7] << 24;
  const uint8_t* pay = data + 8;
  size_t paylen = size - 8;
  size_t per = paylen / (size_t)nshards;
  per &= ~(size_t)1;

  mshard ms[MAX_SHARDS];
  int nfiles = 0;
  uint64_t N = 0, ntok_total = 0;
  for (int i = 0, src = 0; i < nshards + (empty_at >= 0); i++) {
    size_t bytes = 0;
    const uint8_t* tp = pay;
    if (i != empty_at) {
      tp = pay + (size_t)src * per;
      bytes = src == nshards - 1 ? ((paylen - (size_t)src * per) & ~(size_t)1) : per;
      src++;
    }
    int32_t hdr[ZP_SHARD_HEADER_INTS];
    memset(hdr, 0, sizeof hdr);
    hdr[0] = ZP_SHARD_MAGIC;
    hdr[1] = ZP_SHARD_VERSION;
    hdr[2] = (int32_t)(bytes / 2);
    write_file(g_shard[nfiles], hdr, sizeof hdr, tp, bytes);
    ms[nfiles].toks = tp;
    ms[nfiles].ntok = bytes / 2;
    ms[nfiles].nsamples = ms[nfiles].ntok > 0 ? (ms[nfiles].ntok - 1) / (uint64_t)T : 0;
    ms[nfiles].first = N;
    N += ms[nfiles].nsamples;
    ntok_total += ms[nfiles].ntok;
    nfiles++;
  }
  for (int i = nfiles; i < MAX_SHARDS; i++) unlink(g_shard[i]);

  char err[1024];
  for (int i = 0; i < nfiles; i++) {
    zp_shard_info info;
    int rc = zp_shard_stat(g_shard[i], &info, err, sizeof err);
    CHECK(rc == ZP_OK, "stat of a well-formed shard failed: %s", err);
    CHECK(info.header_tokens == (int64_t)ms[i].ntok && info.file_tokens == (int64_t)ms[i].ntok, "stat counts");
  }
  zp_dataset* d = zp_dataset_open(g_pattern, T, vocab, seed, shuffle, err, sizeof err);
  if (!d) {
    CHECK(N == 0, "open failed with %llu samples: %s", (unsigned long long)N, err);
    return;
  }
  CHECK(N > 0, "open succeeded without samples");
  CHECK(zp_dataset_num_samples(d) == N, "num_samples %llu, expected %llu",
        (unsigned long long)zp_dataset_num_samples(d), (unsigned long long)N);
  CHECK(zp_dataset_num_tokens(d) == ntok_total && zp_dataset_num_shards(d) == nfiles, "dataset counts");
  for (int i = 0; i < nfiles; i++)
    CHECK(strcmp(zp_dataset_shard_path(d, i), g_shard[i]) == 0, "shard %d is %s", i, zp_dataset_shard_path(d, i));
  CHECK(zp_dataset_shard_path(d, nfiles) == NULL && zp_dataset_shard_path(d, -1) == NULL, "shard path out of range");

  uint64_t big = seed * 2654435761ULL ^ ((uint64_t)seed << 40);
  const uint64_t pos[] = {0, 1, N - 1, N, N + 1, 2 * N - 1, 3 * N + seed % N, big, UINT64_MAX, UINT64_MAX - N};
  for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++) check_pos(d, ms, nfiles, T, vocab, N, pos[i]);

  /* each epoch is a permutation of [0, N) (small N only) */
  if (N <= 512) {
    uint8_t seen[512];
    for (uint64_t e = 0; e < 2; e++) {
      memset(seen, 0, sizeof seen);
      for (uint64_t i = 0; i < N; i++) {
        uint64_t s = zp_dataset_sample_index(d, e * N + i);
        CHECK(s < N && !seen[s], "epoch %llu is not a permutation (sample %llu twice)", (unsigned long long)e,
              (unsigned long long)s);
        seen[s] = 1;
        if (!shuffle) CHECK(s == i, "no shuffle but pos %llu -> sample %llu", (unsigned long long)i, (unsigned long long)s);
      }
    }
  }
  zp_dataset_close(d);
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  setup();
  fuzz_raw(data, size);
  fuzz_built(data, size);
  return 0;
}
