/* tokenizer.c: byte-level and GPT-2 BPE tokenizers (see tokenizer.h).
 * Invariants: the GPT-2 tokenizer works on raw bytes throughout; encoder.json keys are mapped
 * back to bytes through GPT-2's byte<->unicode table at load, so every token id has its exact
 * byte string, all 256 single bytes must have ids, and every merge (a, b) of vocab.bpe must
 * produce a token a+b present in encoder.json (true of GPT-2's files, whose merge i is id 256+i).
 * BPE follows GPT-2's encoder.py: repeatedly take the adjacent pair of lowest merge rank and
 * merge all its non-overlapping occurrences left to right. Results per pre-token are cached.
 *
 * Pre-tokenizer: a hand-written matcher for GPT-2's pattern
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * over UTF-8, alternatives tried in order as the regex engine would. Character classes: ASCII is
 * exact (letters A-Z a-z, numbers 0-9, whitespace \t \n \v \f \r and space, everything else
 * "other"); so are Unicode White_Space (U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029,
 * U+202F, U+205F, U+3000) and a few blocks common in English web text (cls_nonascii: Latin-1,
 * combining diacritics, general punctuation such as U+2019 and U+2014, super/subscripts,
 * currency, arrows/math/box/dingbats, CJK punctuation, fullwidth ASCII, emoji).
 * APPROXIMATION: any other non-ASCII code point counts as a letter (no Unicode tables), so e.g.
 * Devanagari vowel signs (Mc/Mn) or Arabic punctuation join letter runs where Python's `regex`
 * would split them. That changes some token boundaries, never the decoded bytes.
 * Invalid UTF-8 bytes are single "letters". */
#define _GNU_SOURCE /* realpath */
#include "tokenizer.h"
#include "seterr.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "zp/zp_plugin.h"

enum { TOK_BYTES = 0, TOK_GPT2 = 1 };
#define EOT_TEXT "<|endoftext|>"
#define CACHE_MAX_ENTRIES (1u << 17)
#define CACHE_MAX_WORD 256


/* ---------------------------------------------------- string -> value hash map ---- */

typedef struct sment {
  char* key; /* NULL = empty slot */
  uint32_t klen;
  int32_t val;       /* token id (bytes map) */
  uint16_t* toks;    /* cached BPE result (cache map) */
  int32_t ntoks;
  uint64_t h;
} sment;
typedef struct smap {
  sment* e;
  size_t cap, n; /* cap is a power of two */
} smap;

static uint64_t hash_bytes(const char* s, size_t n) {
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)s[i];
    h *= 1099511628211ULL;
  }
  return h ^ (h >> 29);
}

static sment* smap_slot(const smap* m, const char* k, size_t n, uint64_t h) {
  size_t mask = m->cap - 1;
  for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
    sment* e = &m->e[i];
    if (!e->key || (e->h == h && e->klen == n && memcmp(e->key, k, n) == 0)) return e;
  }
}

static const sment* smap_get(const smap* m, const char* k, size_t n) {
  if (!m->cap) return NULL;
  const sment* e = smap_slot(m, k, n, hash_bytes(k, n));
  return e->key ? e : NULL;
}

static int smap_grow(smap* m) {
  size_t ncap = m->cap ? m->cap * 2 : 64;
  sment* ne = (sment*)calloc(ncap, sizeof(sment));
  if (!ne) return -1;
  smap old = *m;
  m->e = ne;
  m->cap = ncap;
  for (size_t i = 0; i < old.cap; i++)
    if (old.e[i].key) *smap_slot(m, old.e[i].key, old.e[i].klen, old.e[i].h) = old.e[i];
  free(old.e);
  return 0;
}

/* Returns the entry for k, inserting a copy of the key if absent (*fresh = 1). NULL on OOM. */
static sment* smap_put(smap* m, const char* k, size_t n, int* fresh) {
  if ((m->n + 1) * 2 > m->cap && smap_grow(m) != 0) return NULL;
  uint64_t h = hash_bytes(k, n);
  sment* e = smap_slot(m, k, n, h);
  *fresh = 0;
  if (e->key) return e;
  char* kc = (char*)malloc(n ? n : 1);
  if (!kc) return NULL;
  if (n) memcpy(kc, k, n);
  e->key = kc;
  e->klen = (uint32_t)n;
  e->h = h;
  e->val = -1;
  e->toks = NULL;
  e->ntoks = 0;
  m->n++;
  *fresh = 1;
  return e;
}

static void smap_clear(smap* m) {
  for (size_t i = 0; i < m->cap; i++) {
    free(m->e[i].key);
    free(m->e[i].toks);
  }
  free(m->e);
  m->e = NULL;
  m->cap = m->n = 0;
}

/* ---------------------------------------------------- (a, b) -> merge hash map ---- */

typedef struct ment {
  uint64_t key; /* 0 = empty; else (1<<63) | a<<32 | b */
  int32_t rank, result;
} ment;
typedef struct mmap_ {
  ment* e;
  size_t cap, n;
} mmap_;

static uint64_t pair_key(int a, int b) { return (1ULL << 63) | ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }
static uint64_t mix_key(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdULL;
  k ^= k >> 33;
  return k;
}
static ment* mmap_slot(const mmap_* m, uint64_t key) {
  size_t mask = m->cap - 1;
  for (size_t i = (size_t)mix_key(key) & mask;; i = (i + 1) & mask)
    if (m->e[i].key == 0 || m->e[i].key == key) return &m->e[i];
}
static int mmap_grow(mmap_* m) {
  size_t ncap = m->cap ? m->cap * 2 : 1024;
  ment* ne = (ment*)calloc(ncap, sizeof(ment));
  if (!ne) return -1;
  mmap_ old = *m;
  m->e = ne;
  m->cap = ncap;
  for (size_t i = 0; i < old.cap; i++)
    if (old.e[i].key) *mmap_slot(m, old.e[i].key) = old.e[i];
  free(old.e);
  return 0;
}
static const ment* mmap_get(const mmap_* m, int a, int b) {
  if (!m->cap) return NULL;
  const ment* e = mmap_slot(m, pair_key(a, b));
  return e->key ? e : NULL;
}

/* ---------------------------------------------------------------- tokenizer ---- */

struct zp_tokenizer {
  int kind;
  int vocab, eot;
  int max_token_bytes;
  /* gpt2 */
  char** tokb; /* id -> bytes (NULL for ids absent from encoder.json) */
  int* tokl;
  int byte_id[256];
  smap bytes2id;
  mmap_ merges;
  smap* cache; /* pre-token -> tokens; behind a pointer so const encode can fill it */
  char* encoder_path;
  char* bpe_path;
};

zp_tokenizer* zp_tokenizer_bytes(void) {
  zp_tokenizer* t = (zp_tokenizer*)calloc(1, sizeof *t);
  if (!t) return NULL;
  t->kind = TOK_BYTES;
  t->vocab = 257;
  t->eot = 256;
  t->max_token_bytes = (int)strlen(EOT_TEXT);
  return t;
}

void zp_tokenizer_free(zp_tokenizer* t) {
  if (!t) return;
  if (t->tokb) {
    for (int i = 0; i < t->vocab; i++) free(t->tokb[i]);
    free(t->tokb);
  }
  free(t->tokl);
  smap_clear(&t->bytes2id);
  free(t->merges.e);
  if (t->cache) {
    smap_clear(t->cache);
    free(t->cache);
  }
  free(t->encoder_path);
  free(t->bpe_path);
  free(t);
}

int zp_tokenizer_vocab_size(const zp_tokenizer* t) { return t ? t->vocab : 0; }
int zp_tokenizer_eot(const zp_tokenizer* t) { return t ? t->eot : -1; }
const char* zp_tokenizer_kind(const zp_tokenizer* t) { return t && t->kind == TOK_GPT2 ? "gpt2" : "bytes"; }
int zp_tokenizer_max_token_bytes(const zp_tokenizer* t) { return t ? t->max_token_bytes : 0; }

/* ---- GPT-2 byte <-> unicode ---- */

/* byte b is written as code point b2u[b]; u2b[cp] = byte or -1 (cp < 512) */
static void gpt2_byte_tables(int b2u[256], int u2b[512]) {
  for (int i = 0; i < 512; i++) u2b[i] = -1;
  int n = 0;
  for (int b = 0; b < 256; b++) {
    int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    b2u[b] = printable ? b : 256 + n++;
    u2b[b2u[b]] = b;
  }
}

/* decodes one UTF-8 code point at s[i]; returns its length (1 for an invalid byte, *cp = -1) */
static int utf8_next(const unsigned char* s, size_t n, size_t i, int32_t* cp) {
  unsigned c = s[i];
  if (c < 0x80) {
    *cp = (int32_t)c;
    return 1;
  }
  int len;
  uint32_t v, lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) { len = 2; v = c & 0x1F; }
  else if (c >= 0xE0 && c <= 0xEF) { len = 3; v = c & 0x0F; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
  else if (c >= 0xF0 && c <= 0xF4) { len = 4; v = c & 0x07; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
  else { *cp = -1; return 1; }
  if (i + (size_t)len > n) { *cp = -1; return 1; }
  for (int k = 1; k < len; k++) {
    unsigned d = s[i + (size_t)k];
    if (d < (k == 1 ? lo : 0x80) || d > (k == 1 ? hi : 0xBF)) { *cp = -1; return 1; }
    v = (v << 6) | (d & 0x3F);
  }
  *cp = (int32_t)v;
  return len;
}

/* unicode string (GPT-2 byte alphabet) -> bytes; returns byte count or -1 (bad char at *bad) */
static long gpt2_unicode_to_bytes(const int u2b[512], const char* s, size_t n, char* out, int32_t* bad) {
  long o = 0;
  for (size_t i = 0; i < n;) {
    int32_t cp;
    int l = utf8_next((const unsigned char*)s, n, i, &cp);
    if (cp < 0 || cp >= 512 || u2b[cp] < 0) {
      *bad = cp < 0 ? (int32_t)(unsigned char)s[i] : cp;
      return -1;
    }
    out[o++] = (char)u2b[cp];
    i += (size_t)l;
  }
  return o;
}

static char* read_file(const char* path, size_t* len, char* err, size_t errlen) {
  FILE* f = fopen(path, "rb");
  if (!f) {
    seterr(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    return NULL;
  }
  size_t cap = 1 << 16, n = 0;
  char* buf = (char*)malloc(cap + 1);
  while (buf) {
    if (n == cap) {
      char* nb = (char*)realloc(buf, cap * 2 + 1);
      if (!nb) { free(buf); buf = NULL; break; }
      buf = nb;
      cap *= 2;
    }
    size_t r = fread(buf + n, 1, cap - n, f);
    n += r;
    if (r == 0) break;
  }
  if (!buf) {
    seterr(err, errlen, "%s: out of memory", path);
    fclose(f);
    return NULL;
  }
  if (ferror(f)) {
    seterr(err, errlen, "%s: read error: %s", path, strerror(errno));
    free(buf);
    fclose(f);
    return NULL;
  }
  fclose(f);
  buf[n] = 0;
  *len = n;
  return buf;
}

static char* abs_path(const char* p) {
  char* r = realpath(p, NULL);
  return r ? r : strdup(p);
}

zp_tokenizer* zp_tokenizer_gpt2_load(const char* encoder_json, const char* vocab_bpe, char* err, size_t errlen) {
  if (!encoder_json || !vocab_bpe) {
    seterr(err, errlen, "gpt2 tokenizer: encoder.json and vocab.bpe paths are both required");
    return NULL;
  }
  int b2u[256], u2b[512];
  gpt2_byte_tables(b2u, u2b);
  zp_tokenizer* t = (zp_tokenizer*)calloc(1, sizeof *t);
  char* bpe = NULL;
  json_t* root = NULL;
  if (!t) goto oom;
  t->kind = TOK_GPT2;
  t->eot = -1;
  t->cache = (smap*)calloc(1, sizeof(smap));
  t->encoder_path = abs_path(encoder_json);
  t->bpe_path = abs_path(vocab_bpe);
  if (!t->cache || !t->encoder_path || !t->bpe_path) goto oom;

  /* ---- encoder.json ---- */
  json_error_t jerr;
  root = json_load_file(encoder_json, 0, &jerr);
  if (!root) {
    if (jerr.line <= 0)
      seterr(err, errlen, "%s: %s", encoder_json, jerr.text);
    else
      seterr(err, errlen, "%s:%d:%d: %s", encoder_json, jerr.line, jerr.column, jerr.text);
    goto fail;
  }
  if (!json_is_object(root) || json_object_size(root) == 0) {
    seterr(err, errlen, "%s: expected a non-empty JSON object mapping token strings to ids", encoder_json);
    goto fail;
  }
  const char* key;
  json_t* val;
  int maxid = -1;
  json_object_foreach(root, key, val) {
    if (!json_is_integer(val) || json_integer_value(val) < 0 || json_integer_value(val) > 65535) {
      seterr(err, errlen, "%s: token \"%s\": id must be an integer in 0..65535 (uint16 shards)", encoder_json, key);
      goto fail;
    }
    if ((int)json_integer_value(val) > maxid) maxid = (int)json_integer_value(val);
  }
  t->vocab = maxid + 1;
  t->tokb = (char**)calloc((size_t)t->vocab, sizeof(char*));
  t->tokl = (int*)calloc((size_t)t->vocab, sizeof(int));
  if (!t->tokb || !t->tokl) goto oom;
  json_object_foreach(root, key, val) {
    int id = (int)json_integer_value(val);
    size_t klen = strlen(key);
    char* b = (char*)malloc(klen + 1);
    if (!b) goto oom;
    int32_t bad = 0;
    long bl = gpt2_unicode_to_bytes(u2b, key, klen, b, &bad);
    if (bl < 0) {
      free(b);
      seterr(err, errlen, "%s: token \"%s\" (id %d) has character U+%04X outside GPT-2's byte alphabet",
             encoder_json, key, id, (unsigned)bad);
      goto fail;
    }
    if (t->tokb[id]) {
      free(b);
      seterr(err, errlen, "%s: id %d is used by two tokens (\"%s\" and another)", encoder_json, id, key);
      goto fail;
    }
    t->tokb[id] = b;
    t->tokl[id] = (int)bl;
    if ((int)bl > t->max_token_bytes) t->max_token_bytes = (int)bl;
    int fresh;
    sment* e = smap_put(&t->bytes2id, b, (size_t)bl, &fresh);
    if (!e) goto oom;
    e->val = id;
    if (strcmp(key, EOT_TEXT) == 0) t->eot = id;
  }
  json_decref(root);
  root = NULL;
  if (t->eot < 0) {
    seterr(err, errlen, "%s: no \"%s\" token (GPT-2's end-of-text, id 50256)", encoder_json, EOT_TEXT);
    goto fail;
  }
  for (int b = 0; b < 256; b++) {
    char c = (char)b;
    const sment* e = smap_get(&t->bytes2id, &c, 1);
    if (!e) {
      seterr(err, errlen, "%s: byte 0x%02x (U+%04X) has no token: a GPT-2 byte-level vocabulary maps all 256 bytes",
             encoder_json, b, (unsigned)b2u[b]);
      goto fail;
    }
    t->byte_id[b] = e->val;
  }

  /* ---- vocab.bpe ---- */
  size_t blen;
  bpe = read_file(vocab_bpe, &blen, err, errlen);
  if (!bpe) goto fail;
  int rank = 0;
  size_t lineno = 0;
  char* abuf = (char*)malloc(blen + 1);
  char* bbuf = (char*)malloc(blen + 1);
  char* cat = (char*)malloc(2 * blen + 2);
  if (!abuf || !bbuf || !cat) {
    free(abuf); free(bbuf); free(cat);
    goto oom;
  }
  for (size_t p = 0; p < blen;) {
    size_t q = p;
    while (q < blen && bpe[q] != '\n') q++;
    lineno++;
    size_t e = q;
    if (e > p && bpe[e - 1] == '\r') e--;
    const char* line = bpe + p;
    size_t ll = e - p;
    p = q + 1;
    if (ll == 0) continue;
    if (lineno == 1 && ll >= 8 && memcmp(line, "#version", 8) == 0) continue;
    const char* sp = memchr(line, ' ', ll);
    if (!sp || sp == line || sp == line + ll - 1 || memchr(sp + 1, ' ', (size_t)(line + ll - sp - 1))) {
      seterr(err, errlen, "%s:%zu: expected a merge \"A B\" (two tokens separated by one space)", vocab_bpe, lineno);
      free(abuf); free(bbuf); free(cat);
      goto fail;
    }
    int32_t bad = 0;
    long al = gpt2_unicode_to_bytes(u2b, line, (size_t)(sp - line), abuf, &bad);
    long bl = al < 0 ? -1 : gpt2_unicode_to_bytes(u2b, sp + 1, (size_t)(line + ll - sp - 1), bbuf, &bad);
    if (al < 0 || bl < 0) {
      seterr(err, errlen, "%s:%zu: character U+%04X outside GPT-2's byte alphabet", vocab_bpe, lineno, (unsigned)bad);
      free(abuf); free(bbuf); free(cat);
      goto fail;
    }
    memcpy(cat, abuf, (size_t)al);
    memcpy(cat + al, bbuf, (size_t)bl);
    const sment* ea = smap_get(&t->bytes2id, abuf, (size_t)al);
    const sment* eb = smap_get(&t->bytes2id, bbuf, (size_t)bl);
    const sment* ec = smap_get(&t->bytes2id, cat, (size_t)(al + bl));
    if (!ea || !eb || !ec) {
      seterr(err, errlen, "%s:%zu: merge \"%.*s\": %s is not a token of %s", vocab_bpe, lineno, (int)ll, line,
             !ea ? "the left part" : !eb ? "the right part" : "the merged result", encoder_json);
      free(abuf); free(bbuf); free(cat);
      goto fail;
    }
    if ((t->merges.n + 1) * 2 > t->merges.cap && mmap_grow(&t->merges) != 0) {
      free(abuf); free(bbuf); free(cat);
      goto oom;
    }
    ment* m = mmap_slot(&t->merges, pair_key(ea->val, eb->val));
    if (!m->key) { /* a repeated pair keeps its first (lowest) rank */
      m->key = pair_key(ea->val, eb->val);
      m->rank = rank;
      m->result = ec->val;
      t->merges.n++;
    }
    rank++;
  }
  free(abuf); free(bbuf); free(cat);
  free(bpe);
  return t;
oom:
  seterr(err, errlen, "%s: out of memory loading the GPT-2 tokenizer", encoder_json);
fail:
  if (root) json_decref(root);
  free(bpe);
  zp_tokenizer_free(t);
  return NULL;
}

/* ---------------------------------------------------------------- load/save dir ---- */

zp_tokenizer* zp_tokenizer_load_dir(const char* dir, char* err, size_t errlen) {
  if (!dir) {
    seterr(err, errlen, "tokenizer: NULL directory");
    return NULL;
  }
  size_t dl = strlen(dir);
  char* path = (char*)malloc(dl + 32);
  if (!path) {
    seterr(err, errlen, "%s: out of memory", dir);
    return NULL;
  }
  snprintf(path, dl + 32, "%s/tokenizer.json", dir);
  json_error_t jerr;
  json_t* root = json_load_file(path, 0, &jerr);
  zp_tokenizer* t = NULL;
  char *enc = NULL, *bpe = NULL;
  if (!root) {
    if (jerr.line <= 0) seterr(err, errlen, "%s: %s", path, jerr.text);
    else seterr(err, errlen, "%s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
    goto done;
  }
  const char* kind = json_string_value(json_object_get(root, "kind"));
  if (!json_is_object(root) || !kind) {
    seterr(err, errlen, "%s: expected an object with a string \"kind\" (\"bytes\" or \"gpt2\")", path);
    goto done;
  }
  if (strcmp(kind, "bytes") == 0) {
    t = zp_tokenizer_bytes();
    if (!t) seterr(err, errlen, "%s: out of memory", path);
  } else if (strcmp(kind, "gpt2") == 0) {
    const char* e = json_string_value(json_object_get(root, "encoder"));
    const char* b = json_string_value(json_object_get(root, "bpe"));
    if (!e || !b) {
      seterr(err, errlen, "%s: kind \"gpt2\" needs string fields \"encoder\" and \"bpe\"", path);
      goto done;
    }
    /* relative paths are relative to dir */
    enc = (char*)malloc(dl + strlen(e) + 2);
    bpe = (char*)malloc(dl + strlen(b) + 2);
    if (!enc || !bpe) {
      seterr(err, errlen, "%s: out of memory", path);
      goto done;
    }
    if (e[0] == '/') strcpy(enc, e); else sprintf(enc, "%s/%s", dir, e);
    if (b[0] == '/') strcpy(bpe, b); else sprintf(bpe, "%s/%s", dir, b);
    t = zp_tokenizer_gpt2_load(enc, bpe, err, errlen);
  } else {
    seterr(err, errlen, "%s: unknown tokenizer kind \"%s\" (expected \"bytes\" or \"gpt2\")", path, kind);
    goto done;
  }
  if (t) {
    json_t* v = json_object_get(root, "vocab_size");
    json_t* eo = json_object_get(root, "eot");
    if ((v && (!json_is_integer(v) || json_integer_value(v) != t->vocab)) ||
        (eo && (!json_is_integer(eo) || json_integer_value(eo) != t->eot))) {
      seterr(err, errlen, "%s: says vocab_size %lld, eot %lld but the tokenizer has vocab_size %d, eot %d", path,
             v ? (long long)json_integer_value(v) : -1LL, eo ? (long long)json_integer_value(eo) : -1LL,
             t->vocab, t->eot);
      zp_tokenizer_free(t);
      t = NULL;
    }
  }
done:
  if (root) json_decref(root);
  free(enc);
  free(bpe);
  free(path);
  return t;
}

int zp_tokenizer_save_dir(const zp_tokenizer* t, const char* dir, char* err, size_t errlen) {
  if (!t || !dir) {
    seterr(err, errlen, "zp_tokenizer_save_dir: NULL argument");
    return ZP_E_INVALID;
  }
  json_t* o = json_object();
  if (!o) goto oom;
  json_object_set_new(o, "kind", json_string(zp_tokenizer_kind(t)));
  json_object_set_new(o, "vocab_size", json_integer(t->vocab));
  json_object_set_new(o, "eot", json_integer(t->eot));
  if (t->kind == TOK_GPT2) {
    json_object_set_new(o, "encoder", json_string(t->encoder_path));
    json_object_set_new(o, "bpe", json_string(t->bpe_path));
  }
  char* text = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  json_decref(o);
  if (!text) goto oom;
  size_t dl = strlen(dir);
  char* path = (char*)malloc(dl + 32);
  char* tmp = (char*)malloc(dl + 64);
  if (!path || !tmp) {
    free(path); free(tmp); free(text);
    goto oom;
  }
  snprintf(path, dl + 32, "%s/tokenizer.json", dir);
  snprintf(tmp, dl + 64, "%s/tokenizer.json.tmp.%ld", dir, (long)getpid());
  int rc = ZP_OK;
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    seterr(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
    rc = ZP_E_IO;
  } else {
    size_t n = strlen(text), off = 0;
    while (off < n) {
      ssize_t w = write(fd, text + off, n - off);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) break;
      off += (size_t)w;
    }
    int ok = off == n && write(fd, "\n", 1) == 1 && fsync(fd) == 0;
    if (close(fd) != 0) ok = 0;
    if (!ok || rename(tmp, path) != 0) {
      seterr(err, errlen, "%s: cannot write: %s", path, strerror(errno));
      unlink(tmp);
      rc = ZP_E_IO;
    }
  }
  free(text);
  free(path);
  free(tmp);
  return rc;
oom:
  seterr(err, errlen, "%s/tokenizer.json: out of memory", dir);
  return ZP_E_NOMEM;
}

/* ---------------------------------------------------------------- pre-tokenizer ---- */

enum { C_L = 0, C_N = 1, C_S = 2, C_O = 3 };

static int is_unicode_space(int32_t cp) {
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
         cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/* Class of a non-ASCII code point: exact for the blocks listed, "letter" elsewhere (see top). */
static int cls_nonascii(int32_t cp) {
  if (cp < 0) return C_L; /* invalid UTF-8 byte */
  if (is_unicode_space(cp)) return C_S;
  if (cp <= 0xFF) { /* Latin-1 Supplement, exact */
    if (cp == 0xAA || cp == 0xB5 || cp == 0xBA || (cp >= 0xC0 && cp != 0xD7 && cp != 0xF7)) return C_L;
    if (cp == 0xB2 || cp == 0xB3 || cp == 0xB9 || (cp >= 0xBC && cp <= 0xBE)) return C_N;
    return C_O; /* C1 controls, punctuation, symbols, soft hyphen */
  }
  if (cp >= 0x0300 && cp <= 0x036F) return C_O; /* combining diacritical marks (Mn) */
  if (cp >= 0x2000 && cp <= 0x206F) return C_O; /* general punctuation: ' " - ... ZWJ (spaces above) */
  if (cp >= 0x2070 && cp <= 0x209F) /* superscripts and subscripts */
    return (cp == 0x2071 || cp == 0x207F || (cp >= 0x2090 && cp <= 0x209C)) ? C_L
           : (cp == 0x2070 || (cp >= 0x2074 && cp <= 0x2079) || (cp >= 0x2080 && cp <= 0x2089)) ? C_N : C_O;
  if (cp >= 0x20A0 && cp <= 0x20CF) return C_O; /* currency symbols */
  if (cp >= 0x2190 && cp <= 0x245F) return C_O; /* arrows, math operators, technical, control pictures */
  if (cp >= 0x2500 && cp <= 0x27BF) /* box drawing .. dingbats; dingbat digits are numbers */
    return (cp >= 0x2776 && cp <= 0x2793) ? C_N : C_O;
  if (cp >= 0x3001 && cp <= 0x303F) { /* CJK symbols and punctuation */
    if (cp == 0x3007 || (cp >= 0x3021 && cp <= 0x3029) || (cp >= 0x3038 && cp <= 0x303A)) return C_N;
    if (cp == 0x3005 || cp == 0x3006 || (cp >= 0x3031 && cp <= 0x3035) || cp == 0x303B || cp == 0x303C) return C_L;
    return C_O;
  }
  if (cp >= 0xFE00 && cp <= 0xFE0F) return C_O;   /* variation selectors (Mn) */
  if (cp >= 0xFF01 && cp <= 0xFF5E) {              /* fullwidth ASCII, mirrors ASCII */
    if (cp >= 0xFF10 && cp <= 0xFF19) return C_N;
    if ((cp >= 0xFF21 && cp <= 0xFF3A) || (cp >= 0xFF41 && cp <= 0xFF5A)) return C_L;
    return C_O;
  }
  if (cp >= 0x1F300 && cp <= 0x1FAFF) return C_O; /* emoji, pictographs, symbols */
  return C_L;
}

/* class and byte length of the code point at s[i] */
static int cls_at(const unsigned char* s, size_t n, size_t i, int* len) {
  unsigned c = s[i];
  if (c < 0x80) {
    *len = 1;
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return C_L;
    if (c >= '0' && c <= '9') return C_N;
    if (c == ' ' || (c >= 9 && c <= 13)) return C_S;
    return C_O;
  }
  int32_t cp;
  *len = utf8_next(s, n, i, &cp);
  return cls_nonascii(cp);
}

/* end (exclusive) of the pre-token starting at i < n */
static size_t pretok_next(const unsigned char* s, size_t n, size_t i) {
  if (s[i] == '\'' && i + 1 < n) {
    unsigned c = s[i + 1];
    if (c == 's' || c == 't' || c == 'm' || c == 'd') return i + 2;
    if (i + 2 < n && ((c == 'r' && s[i + 2] == 'e') || (c == 'v' && s[i + 2] == 'e') || (c == 'l' && s[i + 2] == 'l')))
      return i + 3;
  }
  int l;
  int cls = cls_at(s, n, i, &l);
  size_t j = i;
  if (s[i] == ' ' && i + 1 < n) {
    int l1, c1 = cls_at(s, n, i + 1, &l1);
    if (c1 != C_S) { /* " ?X+" with the optional space taken */
      cls = c1;
      j = i + 1;
    }
  }
  if (cls != C_S) {
    while (j < n) {
      int lj, cj = cls_at(s, n, j, &lj);
      if (cj != cls) break;
      j += (size_t)lj;
    }
    return j;
  }
  /* \s+(?!\S) else \s+ */
  size_t q = i, last = i;
  while (q < n) {
    int lq, cq = cls_at(s, n, q, &lq);
    if (cq != C_S) break;
    last = q;
    q += (size_t)lq;
  }
  if (q == n) return q;
  return last > i ? last : q;
}

/* ---------------------------------------------------------------- encode / decode ---- */

static int reserve(uint16_t** toks, size_t* n, size_t* cap, size_t more) {
  if (*n + more <= *cap) return 0;
  size_t nc = *cap ? *cap : 256;
  while (nc < *n + more) nc *= 2;
  uint16_t* nt = (uint16_t*)realloc(*toks, nc * sizeof(uint16_t));
  if (!nt) return -1;
  *toks = nt;
  *cap = nc;
  return 0;
}

/* BPE of one pre-token; writes ids into out (capacity len), returns count */
static int bpe_word(const zp_tokenizer* t, const unsigned char* w, size_t len, int* out, int* scratch) {
  int n = (int)len;
  for (int k = 0; k < n; k++) out[k] = t->byte_id[w[k]];
  while (n > 1) {
    int best = INT_MAX, ba = -1, bb = -1, res = -1;
    for (int k = 0; k + 1 < n; k++) {
      const ment* m = mmap_get(&t->merges, out[k], out[k + 1]);
      if (m && m->rank < best) {
        best = m->rank;
        ba = out[k];
        bb = out[k + 1];
        res = m->result;
      }
    }
    if (ba < 0) break;
    int o = 0;
    for (int k = 0; k < n;) {
      if (k + 1 < n && out[k] == ba && out[k + 1] == bb) {
        scratch[o++] = res;
        k += 2;
      } else {
        scratch[o++] = out[k++];
      }
    }
    memcpy(out, scratch, (size_t)o * sizeof(int));
    n = o;
  }
  return n;
}

long zp_tokenizer_encode(const zp_tokenizer* t, const char* text, size_t len, uint16_t** toks, size_t* n,
                         size_t* cap) {
  if (!t || !toks || !n || !cap || (!text && len)) return -1;
  size_t n0 = *n;
  if (t->kind == TOK_BYTES) {
    if (reserve(toks, n, cap, len) != 0) return -1;
    for (size_t i = 0; i < len; i++) (*toks)[(*n)++] = (unsigned char)text[i];
    return (long)(*n - n0);
  }
  const unsigned char* s = (const unsigned char*)text;
  int stack_a[CACHE_MAX_WORD], stack_b[CACHE_MAX_WORD];
  for (size_t i = 0; i < len;) {
    size_t e = pretok_next(s, len, i);
    size_t wl = e - i;
    const sment* c = wl <= CACHE_MAX_WORD ? smap_get(t->cache, text + i, wl) : NULL;
    if (c) {
      if (reserve(toks, n, cap, (size_t)c->ntoks) != 0) return -1;
      for (int k = 0; k < c->ntoks; k++) (*toks)[(*n)++] = c->toks[k];
    } else {
      int *a = stack_a, *b = stack_b;
      if (wl > CACHE_MAX_WORD) {
        if (wl > (size_t)INT_MAX / 2) return -1;
        a = (int*)malloc(wl * sizeof(int));
        b = (int*)malloc(wl * sizeof(int));
        if (!a || !b) {
          free(a); free(b);
          return -1;
        }
      }
      int m = bpe_word(t, s + i, wl, a, b);
      if (reserve(toks, n, cap, (size_t)m) != 0) {
        if (a != stack_a) { free(a); free(b); }
        return -1;
      }
      for (int k = 0; k < m; k++) (*toks)[(*n)++] = (uint16_t)a[k];
      if (wl <= CACHE_MAX_WORD) {
        if (t->cache->n >= CACHE_MAX_ENTRIES) smap_clear(t->cache);
        uint16_t* ct = (uint16_t*)malloc((size_t)m * sizeof(uint16_t) + 1);
        int fresh = 0;
        sment* ce = ct ? smap_put(t->cache, text + i, wl, &fresh) : NULL;
        if (ce && fresh) { /* a failed cache insert is harmless: the word is encoded again */
          for (int k = 0; k < m; k++) ct[k] = (uint16_t)a[k];
          ce->toks = ct;
          ce->ntoks = m;
        } else {
          free(ct);
        }
      } else {
        free(a);
        free(b);
      }
    }
    i = e;
  }
  return (long)(*n - n0);
}

int zp_tokenizer_decode(const zp_tokenizer* t, int token, char* buf, size_t buflen) {
  if (!t || token < 0 || token >= t->vocab) return -1;
  if (t->kind == TOK_BYTES) {
    if (token == t->eot) {
      size_t l = strlen(EOT_TEXT);
      if (buflen < l) return -1;
      memcpy(buf, EOT_TEXT, l);
      return (int)l;
    }
    if (buflen < 1) return -1;
    buf[0] = (char)token;
    return 1;
  }
  if (!t->tokb[token]) return -1;
  if (buflen < (size_t)t->tokl[token]) return -1;
  memcpy(buf, t->tokb[token], (size_t)t->tokl[token]);
  return t->tokl[token];
}
