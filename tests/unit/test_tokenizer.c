/* test_tokenizer.c: byte-level and GPT-2 BPE tokenizers. The GPT-2 case uses a tiny hand-made
 * vocabulary written to a mkdtemp directory: the 256 byte tokens in GPT-2's own order (so byte
 * ids equal real GPT-2 ids: "!" = 0, "a" = 64, space "Ġ" = 220, "\n" = 198), GPT-2's first ten
 * merges (ids 256..265, as in the real vocab.bpe), one more ("' s" = 266) and "<|endoftext|>" = 50256. Expected token
 * sequences below are derived by hand from the pre-tokenizer pattern and the merge ranks. */
#define _GNU_SOURCE
#include <dirent.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tokenizer.h"
#include "zt.h"

static char g_dir[256];
static char g_enc[512], g_bpe[512];

static const char* k_merges[] = {"Ġ t", "Ġ a", "h e", "i n", "r e", "o n", "Ġt he", "e r", "Ġ s", "a t", "' s"};
enum { N_MERGES = 11 };

static void put_utf8(char** o, int cp) {
  if (cp < 0x80) {
    *(*o)++ = (char)cp;
  } else {
    *(*o)++ = (char)(0xC0 | (cp >> 6));
    *(*o)++ = (char)(0x80 | (cp & 0x3F));
  }
}

/* GPT-2's bytes_to_unicode, written independently of the tokenizer's */
static void byte_order(int order[256], int b2u[256]) {
  int n = 0, k = 0;
  for (int b = 0; b < 256; b++) {
    int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    if (printable) order[k++] = b, b2u[b] = b;
  }
  for (int b = 0; b < 256; b++) {
    int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    if (!printable) order[k++] = b, b2u[b] = 256 + n++;
  }
}

static void write_vocab(const char* enc, const char* bpe, int with_eot, int skip_byte, const char* extra_merge) {
  int order[256], b2u[256];
  byte_order(order, b2u);
  json_t* o = json_object();
  for (int id = 0; id < 256; id++) {
    if (order[id] == skip_byte) continue;
    char key[8], *p = key;
    put_utf8(&p, b2u[order[id]]);
    *p = 0;
    json_object_set_new(o, key, json_integer(id));
  }
  for (int m = 0; m < N_MERGES; m++) {
    char key[32];
    const char* s = k_merges[m];
    const char* sp = strchr(s, ' ');
    snprintf(key, sizeof key, "%.*s%s", (int)(sp - s), s, sp + 1);
    json_object_set_new(o, key, json_integer(256 + m));
  }
  if (with_eot) json_object_set_new(o, "<|endoftext|>", json_integer(50256));
  json_dump_file(o, enc, 0);
  json_decref(o);
  FILE* f = fopen(bpe, "wb");
  fputs("#version: 0.2\n", f);
  for (int m = 0; m < N_MERGES; m++) fprintf(f, "%s\n", k_merges[m]);
  if (extra_merge) fprintf(f, "%s\n", extra_merge);
  fclose(f);
}

static int encode_eq(const zp_tokenizer* t, const char* text, const int* want, int nwant) {
  uint16_t* toks = NULL;
  size_t n = 0, cap = 0;
  long r = zp_tokenizer_encode(t, text, strlen(text), &toks, &n, &cap);
  int ok = r == nwant && (int)n == nwant;
  for (int i = 0; ok && i < nwant; i++) ok = toks[i] == want[i];
  if (!ok) {
    fprintf(stderr, "encode(\"%s\") = [", text);
    for (size_t i = 0; i < n; i++) fprintf(stderr, "%s%d", i ? "," : "", toks[i]);
    fprintf(stderr, "], want [");
    for (int i = 0; i < nwant; i++) fprintf(stderr, "%s%d", i ? "," : "", want[i]);
    fprintf(stderr, "]\n");
  }
  free(toks);
  return ok;
}
#define ENC_EQ(t, text, ...) do { static const int w_[] = {__VA_ARGS__}; CHECK(encode_eq(t, text, w_, (int)(sizeof w_ / sizeof w_[0]))); } while (0)

/* decode(encode(x)) == x, token by token */
static int round_trip(const zp_tokenizer* t, const char* x, size_t len) {
  uint16_t* toks = NULL;
  size_t n = 0, cap = 0;
  if (zp_tokenizer_encode(t, x, len, &toks, &n, &cap) < 0) return 0;
  size_t mtb = (size_t)zp_tokenizer_max_token_bytes(t);
  char* out = (char*)malloc(n * mtb + 1);
  size_t o = 0;
  int ok = 1;
  for (size_t i = 0; i < n && ok; i++) {
    if (toks[i] == zp_tokenizer_eot(t)) ok = 0; /* encode never emits eot */
    int l = zp_tokenizer_decode(t, toks[i], out + o, mtb);
    if (l < 0) ok = 0;
    else o += (size_t)l;
  }
  ok = ok && o == len && memcmp(out, x, len) == 0;
  free(out);
  free(toks);
  return ok;
}

static const char k_utf8[] =
    "Hello, world! It's 2024: naïve café, Ünïcödé — \"quotes\" ‘single’ and emoji 🎉🚀.\n"
    "Ελληνικά κείμενα, русский текст, 中文文本，日本語のテキスト、한국어 텍스트.\n"
    "\tTabs\t\tand   spaces   \r\n\r\n  trailing   \n"
    "Numbers 3.14159 and 1,000,000; symbols @#$%^&*()_+-=[]{}|;':\",./<>?`~\n"
    "Ideographic\u3000space and no-break\u00a0space; we're they'll I'd you've she's it'm\n";

static void test_bytes(void) {
  zp_tokenizer* t = zp_tokenizer_bytes();
  CHECK(t != NULL);
  if (!t) return;
  CHECK_EQ_INT(zp_tokenizer_vocab_size(t), 257);
  CHECK_EQ_INT(zp_tokenizer_eot(t), 256);
  CHECK(strcmp(zp_tokenizer_kind(t), "bytes") == 0);
  ENC_EQ(t, "Hi \xff", 'H', 'i', ' ', 255);
  CHECK(round_trip(t, k_utf8, strlen(k_utf8)));
  const char bin[] = "a\0b\xff\x80\xc3(\n";
  CHECK(round_trip(t, bin, sizeof bin - 1));
  char buf[32];
  CHECK_EQ_INT(zp_tokenizer_decode(t, 256, buf, sizeof buf), 13);
  CHECK(memcmp(buf, "<|endoftext|>", 13) == 0);
  CHECK_EQ_INT(zp_tokenizer_decode(t, 257, buf, sizeof buf), -1);
  CHECK_EQ_INT(zp_tokenizer_decode(t, -1, buf, sizeof buf), -1);
  CHECK_EQ_INT(zp_tokenizer_decode(t, 256, buf, 4), -1);
  CHECK_EQ_INT(zp_tokenizer_decode(t, 'x', buf, 1), 1);
  /* appends to an existing array */
  uint16_t* toks = NULL;
  size_t n = 0, cap = 0;
  CHECK_EQ_INT(zp_tokenizer_encode(t, "ab", 2, &toks, &n, &cap), 2);
  CHECK_EQ_INT(zp_tokenizer_encode(t, "c", 1, &toks, &n, &cap), 1);
  CHECK(n == 3 && toks[2] == 'c');
  CHECK_EQ_INT(zp_tokenizer_encode(t, "", 0, &toks, &n, &cap), 0);
  free(toks);
  zp_tokenizer_free(t);
}

static void test_gpt2_sequences(void) {
  char err[512] = {0};
  write_vocab(g_enc, g_bpe, 1, -1, NULL);
  zp_tokenizer* t = zp_tokenizer_gpt2_load(g_enc, g_bpe, err, sizeof err);
  CHECK_MSG(t != NULL, "%s", err);
  if (!t) return;
  CHECK_EQ_INT(zp_tokenizer_vocab_size(t), 50257);
  CHECK_EQ_INT(zp_tokenizer_eot(t), 50256);
  CHECK(strcmp(zp_tokenizer_kind(t), "gpt2") == 0);
  CHECK_EQ_INT(zp_tokenizer_max_token_bytes(t), 13);
  /* Pre-tokens: "the" " cat" "'s" " in" " the" " hat" "\n" "\n" "there" "!!".
     "the": (h,e) rank 2 -> [t, he]; " cat": (a,t) -> [Ġ, c, at]; "'s" -> 266; " the": Ġt (0), he (2),
     Ġt+he (6) -> [Ġthe]; "\n\n" before a letter is "\n","\n" (\s+(?!\S) then \s+);
     "there": he (2) beats re (4) and er (7), then re -> [t, he, re]. */
  ENC_EQ(t, "the cat's in the hat\n\nthere!!", 83, 258, 220, 66, 265, 266, 220, 259, 262, 220, 71, 265, 198, 198,
         83, 258, 260, 0, 0);
  /* repeat: served from the cache */
  ENC_EQ(t, "the cat's in the hat\n\nthere!!", 83, 258, 220, 66, 265, 266, 220, 259, 262, 220, 71, 265, 198, 198,
         83, 258, 260, 0, 0);
  /* two spaces before a word: the last one joins the word (" ", " the"); at the end, all stay together */
  ENC_EQ(t, "x  the", 87, 220, 262);
  ENC_EQ(t, "x the", 87, 262);
  ENC_EQ(t, "\n the", 198, 262);
  ENC_EQ(t, "the  ", 83, 258, 220, 220);
  /* numbers: " ?\p{N}+"; a run of spaces before a number */
  ENC_EQ(t, "a  12 x", 64, 220, 220, 16, 17, 220, 87);
  /* all occurrences of the best pair merge in one pass */
  ENC_EQ(t, "inin", 259, 259);
  /* contractions and " ?[^\s\p{L}\p{N}]+" */
  ENC_EQ(t, "he's", 258, 266);
  ENC_EQ(t, "!'s", 0, 6, 82); /* "!'" is one [^\s\p{L}\p{N}]+ run, then "s" */
  /* class tables: U+2019 is punctuation (joins the "'" run), U+00BD a number, U+00E9 a letter */
  ENC_EQ(t, "x\u2019's", 87, 158, 222, 247, 6, 82);
  ENC_EQ(t, "\u00bd's", 126, 121, 266);
  ENC_EQ(t, "\u00e9's", 127, 102, 266);
  ENC_EQ(t, "we're", 86, 68, 6, 260);
  ENC_EQ(t, " !?", 220, 0, 30);
  /* non-ASCII: é = C3 A9 -> ids 127, 102; ’ = E2 80 99 -> 158, 222, 247 */
  ENC_EQ(t, "café’s", 66, 64, 69, 127, 102, 158, 222, 247, 82);
  /* "<|endoftext|>" in text is ordinary text, never the eot id */
  uint16_t* toks = NULL;
  size_t n = 0, cap = 0;
  zp_tokenizer_encode(t, "<|endoftext|>", 13, &toks, &n, &cap);
  for (size_t i = 0; i < n; i++) CHECK(toks[i] != 50256);
  free(toks);
  char buf[64];
  CHECK_EQ_INT(zp_tokenizer_decode(t, 262, buf, sizeof buf), 4);
  CHECK(memcmp(buf, " the", 4) == 0);
  CHECK_EQ_INT(zp_tokenizer_decode(t, 198, buf, sizeof buf), 1);
  CHECK(buf[0] == '\n');
  CHECK_EQ_INT(zp_tokenizer_decode(t, 50256, buf, sizeof buf), 13);
  CHECK(memcmp(buf, "<|endoftext|>", 13) == 0);
  CHECK_EQ_INT(zp_tokenizer_decode(t, 5000, buf, sizeof buf), -1); /* id absent from encoder.json */
  CHECK_EQ_INT(zp_tokenizer_decode(t, 50257, buf, sizeof buf), -1);
  CHECK_EQ_INT(zp_tokenizer_decode(t, 262, buf, 3), -1);
  zp_tokenizer_free(t);
}

static void test_gpt2_round_trip(void) {
  char err[512] = {0};
  write_vocab(g_enc, g_bpe, 1, -1, NULL);
  zp_tokenizer* t = zp_tokenizer_gpt2_load(g_enc, g_bpe, err, sizeof err);
  CHECK_MSG(t != NULL, "%s", err);
  if (!t) return;
  CHECK(round_trip(t, k_utf8, strlen(k_utf8)));
  const char bin[] = "inval\xff\xfe id \x80\xc3( utf8 \xed\xa0\x80 \xf4\x90\x80\x80 \xe2\x82 end\0nul";
  CHECK(round_trip(t, bin, sizeof bin - 1));
  /* words and whitespace runs longer than the cache's word limit */
  char big[3000];
  memset(big, ' ', 1000);
  memset(big + 1000, 'e', 1000);
  memcpy(big + 2000, " there the\n\n\n", 13);
  CHECK(round_trip(t, big, 2013));
  /* every single byte */
  char all[256];
  for (int i = 0; i < 256; i++) all[i] = (char)i;
  CHECK(round_trip(t, all, 256));
  zp_tokenizer_free(t);
}

static void test_gpt2_errors(void) {
  char err[512];
  char enc2[600], bpe2[600];
  snprintf(enc2, sizeof enc2, "%s/bad_encoder.json", g_dir);
  snprintf(bpe2, sizeof bpe2, "%s/bad_vocab.bpe", g_dir);

  err[0] = 0;
  CHECK(zp_tokenizer_gpt2_load("/nonexistent/encoder.json", g_bpe, err, sizeof err) == NULL);
  CHECK_STR_CONTAINS(err, "/nonexistent/encoder.json");

  FILE* f = fopen(enc2, "wb");
  fputs("{\"a\": 1,\n \"b\": }\n", f);
  fclose(f);
  err[0] = 0;
  CHECK(zp_tokenizer_gpt2_load(enc2, g_bpe, err, sizeof err) == NULL);
  CHECK_STR_CONTAINS(err, "bad_encoder.json:2:");

  f = fopen(enc2, "wb");
  fputs("{\"a\": 70000}", f);
  fclose(f);
  err[0] = 0;
  CHECK(zp_tokenizer_gpt2_load(enc2, g_bpe, err, sizeof err) == NULL);
  CHECK_STR_CONTAINS(err, "0..65535");

  write_vocab(enc2, bpe2, 0, -1, NULL);
  err[0] = 0;
  CHECK(zp_tokenizer_gpt2_load(enc2, bpe2, err, sizeof err) == NULL);
  CHECK_STR_CONTAINS(err, "<|endoftext|>");

  write_vocab(enc2, bpe2, 1, '\n', NULL);
  err[0] = 0;
  CHECK(zp_tokenizer_gpt2_load(enc2, bpe2, err, sizeof err) == NULL);
  CHECK_STR_CONTAINS(err, "byte 0x0a");

  write_vocab(enc2, bpe2, 1, -1, "t he");
  err[0] = 0;
  CHECK(zp_tokenizer_gpt2_load(enc2, bpe2, err, sizeof err) == NULL);
  CHECK_STR_CONTAINS(err, "bad_vocab.bpe:13: merge \"t he\"");

  write_vocab(enc2, bpe2, 1, -1, "nospace");
  err[0] = 0;
  CHECK(zp_tokenizer_gpt2_load(enc2, bpe2, err, sizeof err) == NULL);
  CHECK_STR_CONTAINS(err, "bad_vocab.bpe:13:");

  write_vocab(enc2, bpe2, 1, -1, "a \xe4\xb8\xad");
  err[0] = 0;
  CHECK(zp_tokenizer_gpt2_load(enc2, bpe2, err, sizeof err) == NULL);
  CHECK_STR_CONTAINS(err, "U+4E2D");
}

static void test_dir_round_trip(void) {
  char err[512] = {0};
  char d1[600], d2[600];
  snprintf(d1, sizeof d1, "%s/tok_bytes", g_dir);
  snprintf(d2, sizeof d2, "%s/tok_gpt2", g_dir);
  mkdir(d1, 0755);
  mkdir(d2, 0755);
  zp_tokenizer* t = zp_tokenizer_bytes();
  CHECK_EQ_INT(zp_tokenizer_save_dir(t, d1, err, sizeof err), 0);
  zp_tokenizer_free(t);
  t = zp_tokenizer_load_dir(d1, err, sizeof err);
  CHECK_MSG(t != NULL, "%s", err);
  if (t) CHECK(strcmp(zp_tokenizer_kind(t), "bytes") == 0 && zp_tokenizer_eot(t) == 256);
  zp_tokenizer_free(t);

  write_vocab(g_enc, g_bpe, 1, -1, NULL);
  t = zp_tokenizer_gpt2_load(g_enc, g_bpe, err, sizeof err);
  CHECK_EQ_INT(zp_tokenizer_save_dir(t, d2, err, sizeof err), 0);
  zp_tokenizer_free(t);
  t = zp_tokenizer_load_dir(d2, err, sizeof err);
  CHECK_MSG(t != NULL, "%s", err);
  if (t) {
    CHECK_EQ_INT(zp_tokenizer_vocab_size(t), 50257);
    ENC_EQ(t, "x the", 87, 262);
  }
  zp_tokenizer_free(t);

  /* errors name the file */
  char p[700];
  snprintf(p, sizeof p, "%s/tokenizer.json", d1);
  FILE* f = fopen(p, "wb");
  fputs("{\"kind\": \"sentencepiece\"}", f);
  fclose(f);
  err[0] = 0;
  CHECK(zp_tokenizer_load_dir(d1, err, sizeof err) == NULL);
  CHECK_STR_CONTAINS(err, "tok_bytes/tokenizer.json: unknown tokenizer kind \"sentencepiece\"");
  f = fopen(p, "wb");
  fputs("{\"kind\": \"bytes\", \"vocab_size\": 300}", f);
  fclose(f);
  err[0] = 0;
  CHECK(zp_tokenizer_load_dir(d1, err, sizeof err) == NULL);
  CHECK_STR_CONTAINS(err, "vocab_size 300");
  err[0] = 0;
  CHECK(zp_tokenizer_load_dir("/nonexistent_dir", err, sizeof err) == NULL);
  CHECK_STR_CONTAINS(err, "/nonexistent_dir/tokenizer.json");
}

static void rm_rf(const char* dir) {
  DIR* d = opendir(dir);
  if (!d) return;
  struct dirent* de;
  while ((de = readdir(d))) {
    if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
    struct stat st;
    if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) rm_rf(p);
    else unlink(p);
  }
  closedir(d);
  rmdir(dir);
}

int main(void) {
  strcpy(g_dir, "/tmp/zp_test_tok_XXXXXX");
  if (!mkdtemp(g_dir)) {
    perror("mkdtemp");
    return 1;
  }
  snprintf(g_enc, sizeof g_enc, "%s/encoder.json", g_dir);
  snprintf(g_bpe, sizeof g_bpe, "%s/vocab.bpe", g_dir);
  ZT_RUN(test_bytes);
  ZT_RUN(test_gpt2_sequences);
  ZT_RUN(test_gpt2_round_trip);
  ZT_RUN(test_gpt2_errors);
  ZT_RUN(test_dir_round_trip);
  rm_rf(g_dir);
  return zt_done();
}
