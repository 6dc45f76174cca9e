/* fuzz_tokenizer.c: libFuzzer target for the tokenizer file parsers (core/tokenizer.c).
 * One temp directory per process (files reused, removed at exit) holds:
 *   encoder.json, vocab.bpe   the input split at its first NUL byte (no NUL: vocab.bpe empty),
 *                             loaded with zp_tokenizer_gpt2_load;
 *   tokenizer.json            the whole input, loaded with zp_tokenizer_load_dir(dir);
 *   ref_encoder.json, ref_vocab.bpe   a fixed valid tiny GPT-2 vocabulary (256 byte tokens, a
 *                             few merges, <|endoftext|>) that a fuzzed tokenizer.json can name.
 * tokenizer.json naming a file outside the directory (absolute or "..") is skipped: reading
 * any file the user names is by design, and /dev/zero or a FIFO would only measure the disk.
 * Every tokenizer that loads encodes a fixed string and a slice of the input and must satisfy
 * tokenizer.h: tokens < vocab, and decode(encode(x)) == x byte for byte.
 * Failures: any crash, leak or undefined behaviour, and abort() on a broken round trip. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

static char g_dir[512];
static char g_enc[600], g_bpe[600], g_tokjson[600], g_ref_enc[600], g_ref_bpe[600];

static void cleanup(void) {
  if (!g_dir[0]) return;
  unlink(g_enc);
  unlink(g_bpe);
  unlink(g_tokjson);
  unlink(g_ref_enc);
  unlink(g_ref_bpe);
  rmdir(g_dir);
}

static void write_file(const char* path, const void* buf, size_t n) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    fprintf(stderr, "fuzz_tokenizer: open %s: %s\n", path, strerror(errno));
    abort();
  }
  const char* p = buf;
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w <= 0) {
      fprintf(stderr, "fuzz_tokenizer: write %s: %s\n", path, strerror(errno));
      abort();
    }
    p += w;
    n -= (size_t)w;
  }
  close(fd);
}

static void put_utf8(char** o, int cp) {
  if (cp < 0x80) {
    *(*o)++ = (char)cp;
  } else {
    *(*o)++ = (char)(0xC0 | (cp >> 6));
    *(*o)++ = (char)(0x80 | (cp & 0x3F));
  }
}

/* the tiny GPT-2 vocabulary of tests/unit/test_tokenizer.c: byte tokens in GPT-2's order,
 * GPT-2's first merges as ids 256.., "<|endoftext|>" = 50256 */
static void write_ref_vocab(void) {
  static const char* merges[] = {"Ġ t", "Ġ a", "h e", "i n", "r e", "o n", "Ġt he", "e r", "Ġ s", "a t", "' s"};
  const int nm = (int)(sizeof merges / sizeof merges[0]);
  int order[256], b2u[256], k = 0, n = 0;
  for (int pass = 0; pass < 2; pass++)
    for (int b = 0; b < 256; b++) {
      int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      if (printable == !pass) {
        order[k++] = b;
        b2u[b] = printable ? b : 256 + n++;
      }
    }
  json_t* o = json_object();
  for (int id = 0; id < 256; id++) {
    char key[8], *p = key;
    put_utf8(&p, b2u[order[id]]);
    *p = 0;
    json_object_set_new(o, key, json_integer(id));
  }
  for (int m = 0; m < nm; m++) {
    char key[32];
    const char* sp = strchr(merges[m], ' ');
    snprintf(key, sizeof key, "%.*s%s", (int)(sp - merges[m]), merges[m], sp + 1);
    json_object_set_new(o, key, json_integer(256 + m));
  }
  json_object_set_new(o, "<|endoftext|>", json_integer(50256));
  if (json_dump_file(o, g_ref_enc, 0) != 0) {
    fprintf(stderr, "fuzz_tokenizer: cannot write %s\n", g_ref_enc);
    abort();
  }
  json_decref(o);
  char bpe[512];
  size_t bl = (size_t)snprintf(bpe, sizeof bpe, "#version: 0.2\n");
  for (int m = 0; m < nm; m++) bl += (size_t)snprintf(bpe + bl, sizeof bpe - bl, "%s\n", merges[m]);
  write_file(g_ref_bpe, bpe, bl);
}

static void setup(void) {
  if (g_dir[0]) return;
  const char* tmp = getenv("TMPDIR");
  snprintf(g_dir, sizeof g_dir, "%s/zp_fuzz_tok.XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
  if (!mkdtemp(g_dir)) {
    fprintf(stderr, "fuzz_tokenizer: mkdtemp(%s): %s\n", g_dir, strerror(errno));
    abort();
  }
  snprintf(g_enc, sizeof g_enc, "%s/encoder.json", g_dir);
  snprintf(g_bpe, sizeof g_bpe, "%s/vocab.bpe", g_dir);
  snprintf(g_tokjson, sizeof g_tokjson, "%s/tokenizer.json", g_dir);
  snprintf(g_ref_enc, sizeof g_ref_enc, "%s/ref_encoder.json", g_dir);
  snprintf(g_ref_bpe, sizeof g_ref_bpe, "%s/ref_vocab.bpe", g_dir);
  atexit(cleanup);
  write_ref_vocab();
}

#define CHECK(cond, ...)                                                                  \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      fprintf(stderr, "fuzz_tokenizer: %s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                                       \
      fputc('\n', stderr);                                                                \
      abort();                                                                            \
    }                                                                                     \
  } while (0)

static void round_trip(const zp_tokenizer* t, const char* x, size_t len) {
  uint16_t* toks = NULL;
  size_t n = 0, cap = 0;
  long r = zp_tokenizer_encode(t, x, len, &toks, &n, &cap);
  CHECK(r >= 0 && (size_t)r == n, "encode returned %ld for %zu bytes", r, len);
  int vocab = zp_tokenizer_vocab_size(t);
  size_t mtb = (size_t)zp_tokenizer_max_token_bytes(t);
  char* out = malloc(n * mtb + 1);
  CHECK(out != NULL, "out of memory");
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    CHECK(toks[i] < vocab, "token %u >= vocab %d", toks[i], vocab);
    int l = zp_tokenizer_decode(t, toks[i], out + o, mtb);
    CHECK(l >= 0, "token %u (emitted by encode) does not decode", toks[i]);
    o += (size_t)l;
  }
  CHECK(o == len && (len == 0 || memcmp(out, x, len) == 0), "decode(encode(x)) != x (%zu bytes in, %zu out)", len, o);
  free(out);
  free(toks);
}

static void exercise(const zp_tokenizer* t, const uint8_t* data, size_t size) {
  int vocab = zp_tokenizer_vocab_size(t), eot = zp_tokenizer_eot(t);
  CHECK(vocab >= 1 && vocab <= 65536, "vocab %d", vocab);
  CHECK(eot >= 0 && eot < vocab, "eot %d, vocab %d", eot, vocab);
  const char* kind = zp_tokenizer_kind(t);
  CHECK(strcmp(kind, "gpt2") == 0 || strcmp(kind, "bytes") == 0, "kind %s", kind);
  static const char fixed[] = "Hello world, the cat's 123 m\xc3\xa9ow!\n\n  <|endoftext|> \xe2\x80\x99s \xff\xfe";
  round_trip(t, fixed, sizeof fixed - 1);
  round_trip(t, fixed, sizeof fixed - 1); /* second time through the word cache */
  round_trip(t, (const char*)data, size < 512 ? size : 512);
  int mtb = zp_tokenizer_max_token_bytes(t);
  CHECK(mtb >= 1, "max_token_bytes %d", mtb);
  char* buf = malloc((size_t)mtb);
  CHECK(buf != NULL, "out of memory");
  int ids[] = {-1, 0, 1, 255, 256, eot, vocab - 1, vocab, 65535, 65536};
  for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
    int l = zp_tokenizer_decode(t, ids[i], buf, (size_t)mtb);
    CHECK(l <= mtb, "decode wrote %d > max_token_bytes %d", l, mtb);
    if (ids[i] < 0 || ids[i] >= vocab) CHECK(l == -1, "id %d outside the vocab decodes", ids[i]);
    if (l > 0) CHECK(zp_tokenizer_decode(t, ids[i], buf, (size_t)l - 1) == -1, "id %d decodes into a too-small buffer", ids[i]);
  }
  free(buf);
}

/* tokenizer.json names only files inside the directory */
static int paths_confined(const uint8_t* data, size_t size) {
  json_error_t je;
  json_t* root = json_loadb((const char*)data, size, 0, &je);
  if (!root) return 1; /* the tokenizer's own parse fails too */
  int ok = 1;
  const char* keys[] = {"encoder", "bpe"};
  for (int i = 0; i < 2; i++) {
    const char* s = json_string_value(json_object_get(root, keys[i]));
    if (s && (s[0] == '/' || strstr(s, ".."))) ok = 0;
  }
  json_decref(root);
  return ok;
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  setup();
  char err[1024] = "";
  const uint8_t* nul = memchr(data, 0, size);
  size_t elen = nul ? (size_t)(nul - data) : size;
  write_file(g_enc, data, elen);
  write_file(g_bpe, nul ? nul + 1 : data, nul ? size - elen - 1 : 0);
  zp_tokenizer* t = zp_tokenizer_gpt2_load(g_enc, g_bpe, err, sizeof err);
  if (t) {
    CHECK(strcmp(zp_tokenizer_kind(t), "gpt2") == 0, "gpt2_load gave kind %s", zp_tokenizer_kind(t));
    exercise(t, data, size);
    zp_tokenizer_free(t);
  } else {
    CHECK(err[0] != 0, "gpt2_load failed without a message");
  }

  write_file(g_tokjson, data, size);
  if (paths_confined(data, size)) {
    t = zp_tokenizer_load_dir(g_dir, err, sizeof err);
    if (t) {
      exercise(t, data, size);
      zp_tokenizer_free(t);
    }
  }
  return 0;
}
