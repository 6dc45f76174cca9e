/* toml.c: TOML 1.0.0 parser producing an ordered tree (see toml.h), plus the tagged-JSON
 * writer used by the toml-test decoder contract.
 *
 * Invariants:
 *  - The input is never modified and need not be NUL-terminated; the whole document is
 *    checked to be valid UTF-8 before parsing (a leading UTF-8 BOM is skipped).
 *  - zt_parse returns a complete tree or NULL with "FILE:LINE:COL: message" in err (first
 *    error wins). Line and column are 1-based; columns count code points.
 *  - Every key and value records the line/column where it starts.
 *  - Tables keep keys in document order (entries array) plus a hash index once they grow;
 *    key and string payloads are NUL-terminated copies with their real length.
 *  - Redefinition rules follow TOML 1.0 (and toml-test): a table flag says how a table was
 *    created (implicitly by a header path, by a [header], by dotted keys in a given section,
 *    or as an inline table, which is immutable). Dotted keys may only extend tables they
 *    created in the same section (or implicit ones), headers may define implicit tables once.
 *  - Nesting (header path + dotted key parts + arrays/inline tables) is capped at
 *    ZT_MAX_DEPTH, so recursion (parse, free, JSON writing) is bounded. No abort/exit/assert.
 *  - zt_table_set takes ownership of val only when it returns 0; on error the caller still
 *    owns val. Replacing an existing key frees the old value and keeps the key's position.
 *    Intermediate tables it creates have line/col 0; the final key takes val's line/col.
 *  - Multi-line strings normalise CRLF to LF.
 */
#include "toml.h"

#include <errno.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define ZT_MAX_DEPTH 1000
#define ZT_INDEX_MIN 8 /* build a hash index once a table has this many keys */

enum { ZF_IMPLICIT = 1, ZF_HEADER = 2, ZF_DOTTED = 4, ZF_INLINE = 8, ZF_AOT = 16 };

typedef struct {
  char* key;
  size_t klen;
  int line, col;
  zt_value* val;
} zt_entry;

struct zt_value {
  zt_type type;
  int line, col;
  unsigned flags;
  int section; /* for ZF_DOTTED tables: the section that created them */
  union {
    struct { char* s; size_t len; } str;
    int64_t i;
    double f;
    int b;
    zt_datetime dt;
    struct { zt_entry* e; size_t len, cap; size_t* idx; size_t icap; } tab;
    struct { zt_value** v; size_t len, cap; } arr;
  } u;
};

/* ------------------------------------------------------------------ tree basics */

static zt_value* val_new(zt_type t, int line, int col) {
  zt_value* v = (zt_value*)calloc(1, sizeof *v);
  if (!v) return NULL;
  v->type = t;
  v->line = line;
  v->col = col;
  return v;
}

void zt_free(zt_value* v) {
  if (!v) return;
  switch (v->type) {
    case ZT_TABLE:
      for (size_t i = 0; i < v->u.tab.len; i++) {
        free(v->u.tab.e[i].key);
        zt_free(v->u.tab.e[i].val);
      }
      free(v->u.tab.e);
      free(v->u.tab.idx);
      break;
    case ZT_ARRAY:
      for (size_t i = 0; i < v->u.arr.len; i++) zt_free(v->u.arr.v[i]);
      free(v->u.arr.v);
      break;
    case ZT_STRING:
      free(v->u.str.s);
      break;
    default:
      break;
  }
  free(v);
}

static uint64_t key_hash(const char* k, size_t n) {
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)k[i];
    h *= 1099511628211ULL;
  }
  return h;
}

static void idx_insert(zt_value* t, size_t entry) {
  size_t mask = t->u.tab.icap - 1;
  size_t h = (size_t)key_hash(t->u.tab.e[entry].key, t->u.tab.e[entry].klen) & mask;
  while (t->u.tab.idx[h]) h = (h + 1) & mask;
  t->u.tab.idx[h] = entry + 1;
}

static int tab_reindex(zt_value* t) {
  size_t icap = 16;
  while (icap < (t->u.tab.len + 1) * 2) icap <<= 1;
  size_t* idx = (size_t*)calloc(icap, sizeof *idx);
  if (!idx) return -1;
  free(t->u.tab.idx);
  t->u.tab.idx = idx;
  t->u.tab.icap = icap;
  for (size_t i = 0; i < t->u.tab.len; i++) idx_insert(t, i);
  return 0;
}

static zt_entry* tab_find(const zt_value* t, const char* k, size_t n) {
  if (!t || t->type != ZT_TABLE) return NULL;
  if (t->u.tab.idx) {
    size_t mask = t->u.tab.icap - 1;
    size_t h = (size_t)key_hash(k, n) & mask;
    while (t->u.tab.idx[h]) {
      zt_entry* e = &t->u.tab.e[t->u.tab.idx[h] - 1];
      if (e->klen == n && memcmp(e->key, k, n) == 0) return e;
      h = (h + 1) & mask;
    }
    return NULL;
  }
  for (size_t i = 0; i < t->u.tab.len; i++) {
    zt_entry* e = &t->u.tab.e[i];
    if (e->klen == n && memcmp(e->key, k, n) == 0) return e;
  }
  return NULL;
}

/* Appends a key (caller checked it is absent). Invalidates zt_entry pointers into t. */
static int tab_add(zt_value* t, const char* k, size_t n, int line, int col, zt_value* v) {
  if (t->u.tab.len == t->u.tab.cap) {
    size_t nc = t->u.tab.cap ? t->u.tab.cap * 2 : 4;
    zt_entry* ne = (zt_entry*)realloc(t->u.tab.e, nc * sizeof *ne);
    if (!ne) return -1;
    t->u.tab.e = ne;
    t->u.tab.cap = nc;
  }
  char* kc = (char*)malloc(n + 1);
  if (!kc) return -1;
  if (n) memcpy(kc, k, n);
  kc[n] = 0;
  zt_entry* e = &t->u.tab.e[t->u.tab.len++];
  e->key = kc;
  e->klen = n;
  e->line = line;
  e->col = col;
  e->val = v;
  if (t->u.tab.idx && (t->u.tab.len + 1) * 2 <= t->u.tab.icap) {
    idx_insert(t, t->u.tab.len - 1);
  } else if (t->u.tab.len >= ZT_INDEX_MIN) {
    if (tab_reindex(t) != 0) {
      /* fall back to linear search */
      free(t->u.tab.idx);
      t->u.tab.idx = NULL;
      t->u.tab.icap = 0;
    }
  }
  return 0;
}

static int arr_push(zt_value* a, zt_value* v) {
  if (a->u.arr.len == a->u.arr.cap) {
    size_t nc = a->u.arr.cap ? a->u.arr.cap * 2 : 4;
    zt_value** nv = (zt_value**)realloc(a->u.arr.v, nc * sizeof *nv);
    if (!nv) return -1;
    a->u.arr.v = nv;
    a->u.arr.cap = nc;
  }
  a->u.arr.v[a->u.arr.len++] = v;
  return 0;
}

/* ------------------------------------------------------------------ accessors */

zt_type zt_kind(const zt_value* v) { return v ? v->type : ZT_TABLE; }

const char* zt_type_name(zt_type t) {
  switch (t) {
    case ZT_TABLE: return "table";
    case ZT_ARRAY: return "array";
    case ZT_STRING: return "string";
    case ZT_INTEGER: return "integer";
    case ZT_FLOAT: return "float";
    case ZT_BOOL: return "bool";
    case ZT_DATETIME: return "datetime";
    case ZT_DATETIME_LOCAL: return "datetime-local";
    case ZT_DATE_LOCAL: return "date-local";
    case ZT_TIME_LOCAL: return "time-local";
  }
  return "unknown";
}

int zt_line(const zt_value* v) { return v ? v->line : 0; }
int zt_col(const zt_value* v) { return v ? v->col : 0; }

size_t zt_table_len(const zt_value* t) { return t && t->type == ZT_TABLE ? t->u.tab.len : 0; }

static const zt_entry* tab_entry(const zt_value* t, size_t i) {
  if (!t || t->type != ZT_TABLE || i >= t->u.tab.len) return NULL;
  return &t->u.tab.e[i];
}

const char* zt_table_key(const zt_value* t, size_t i) {
  const zt_entry* e = tab_entry(t, i);
  return e ? e->key : NULL;
}
size_t zt_table_key_len(const zt_value* t, size_t i) {
  const zt_entry* e = tab_entry(t, i);
  return e ? e->klen : 0;
}
int zt_table_key_line(const zt_value* t, size_t i) {
  const zt_entry* e = tab_entry(t, i);
  return e ? e->line : 0;
}
int zt_table_key_col(const zt_value* t, size_t i) {
  const zt_entry* e = tab_entry(t, i);
  return e ? e->col : 0;
}
zt_value* zt_table_at(const zt_value* t, size_t i) {
  const zt_entry* e = tab_entry(t, i);
  return e ? e->val : NULL;
}
zt_value* zt_table_get(const zt_value* t, const char* key) {
  if (!key) return NULL;
  zt_entry* e = tab_find(t, key, strlen(key));
  return e ? e->val : NULL;
}

size_t zt_array_len(const zt_value* a) { return a && a->type == ZT_ARRAY ? a->u.arr.len : 0; }
zt_value* zt_array_at(const zt_value* a, size_t i) {
  if (!a || a->type != ZT_ARRAY || i >= a->u.arr.len) return NULL;
  return a->u.arr.v[i];
}

const char* zt_string(const zt_value* v) { return v && v->type == ZT_STRING ? v->u.str.s : NULL; }
size_t zt_string_len(const zt_value* v) { return v && v->type == ZT_STRING ? v->u.str.len : 0; }
int64_t zt_int(const zt_value* v) { return v && v->type == ZT_INTEGER ? v->u.i : 0; }
double zt_float(const zt_value* v) {
  if (!v) return 0.0;
  if (v->type == ZT_FLOAT) return v->u.f;
  if (v->type == ZT_INTEGER) return (double)v->u.i;
  return 0.0;
}
int zt_bool(const zt_value* v) { return v && v->type == ZT_BOOL ? v->u.b : 0; }
const zt_datetime* zt_dt(const zt_value* v) {
  if (!v) return NULL;
  if (v->type == ZT_DATETIME || v->type == ZT_DATETIME_LOCAL || v->type == ZT_DATE_LOCAL ||
      v->type == ZT_TIME_LOCAL)
    return &v->u.dt;
  return NULL;
}

/* ------------------------------------------------------------------ parser state */

typedef struct {
  const char* s;
  size_t n, i, base;
  const char* file;
  char* err;
  size_t errlen;
  int failed;
  size_t lc_pos; /* line/column cache: position lc_pos is at lc_line:lc_col */
  int lc_line, lc_col;
  int depth;
  int section, nsections;
  zt_value* root;
  zt_value* cur;
} P;

static void linecol(P* p, size_t pos, int* line, int* col) {
  if (pos > p->n) pos = p->n;
  if (pos < p->lc_pos || p->lc_line == 0) {
    p->lc_pos = p->base;
    p->lc_line = 1;
    p->lc_col = 1;
  }
  while (p->lc_pos < pos) {
    unsigned char c = (unsigned char)p->s[p->lc_pos++];
    if (c == '\n') {
      p->lc_line++;
      p->lc_col = 1;
    } else if ((c & 0xC0) != 0x80) {
      p->lc_col++;
    }
  }
  *line = p->lc_line;
  *col = p->lc_col;
}

__attribute__((format(printf, 3, 4))) static void perr(P* p, size_t pos, const char* fmt, ...) {
  if (p->failed) return;
  p->failed = 1;
  if (!p->err || !p->errlen) return;
  int line, col;
  linecol(p, pos, &line, &col);
  int k = snprintf(p->err, p->errlen, "%s:%d:%d: ", p->file ? p->file : "<input>", line, col);
  if (k < 0) k = 0;
  if ((size_t)k < p->errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err + k, p->errlen - (size_t)k, fmt, ap);
    va_end(ap);
  }
}

static void oom(P* p) { perr(p, p->i, "out of memory"); }

static int at(const P* p, size_t k) {
  size_t j = p->i + k;
  return j < p->n ? (unsigned char)p->s[j] : -1;
}
static int ch(const P* p) { return p->i < p->n ? (unsigned char)p->s[p->i] : -1; }

/* Human description of the character at pos, for messages. */
static const char* chdesc(const P* p, size_t pos, char* buf, size_t bn) {
  if (pos >= p->n) return "end of file";
  unsigned char c = (unsigned char)p->s[pos];
  if (c == '\n') return "newline";
  if (c == '\r') return "carriage return";
  if (c == '\t') return "tab";
  if (c > 0x20 && c < 0x7f) {
    snprintf(buf, bn, "'%c'", c);
    return buf;
  }
  if (c < 0x20 || c == 0x7f) {
    snprintf(buf, bn, "control character U+%04X", c);
    return buf;
  }
  if (c == ' ') return "' '";
  /* multi-byte UTF-8 (validated) */
  unsigned cp = 0;
  int len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
  cp = c & (len == 4 ? 0x07 : len == 3 ? 0x0F : 0x1F);
  for (int k = 1; k < len && pos + (size_t)k < p->n; k++)
    cp = (cp << 6) | ((unsigned char)p->s[pos + (size_t)k] & 0x3F);
  snprintf(buf, bn, "character U+%04X", cp);
  return buf;
}

#define DESC(p, pos) chdesc((p), (pos), descbuf_, sizeof descbuf_)

static const char* article(zt_type t) {
  return (t == ZT_INTEGER || t == ZT_ARRAY) ? "an" : "a";
}

/* Returns 0 if the text is valid UTF-8 (no overlongs, surrogates or > U+10FFFF), else sets
 * *bad to the offending byte offset and returns -1. */
static int utf8_check(const char* s, size_t n, size_t from, size_t* bad) {
  size_t i = from;
  while (i < n) {
    unsigned char c = (unsigned char)s[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    int len;
    unsigned cp;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      cp = c & 0x07;
    } else {
      *bad = i;
      return -1;
    }
    if (i + (size_t)len > n) {
      *bad = i;
      return -1;
    }
    for (int k = 1; k < len; k++) {
      unsigned char cc = (unsigned char)s[i + (size_t)k];
      if ((cc & 0xC0) != 0x80) {
        *bad = i;
        return -1;
      }
      cp = (cp << 6) | (cc & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF)) {
      *bad = i;
      return -1;
    }
    i += (size_t)len;
  }
  return 0;
}

/* ------------------------------------------------------------------ lexical helpers */

static void skip_ws(P* p) {
  while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t')) p->i++;
}

static int at_newline(const P* p) {
  int c = ch(p);
  return c == '\n' || (c == '\r' && at(p, 1) == '\n');
}

static void eat_newline(P* p) { p->i += (ch(p) == '\r') ? 2 : 1; }

/* At '#': consumes the comment up to (not including) the line end. */
static int eat_comment(P* p) {
  char descbuf_[48];
  p->i++;
  while (p->i < p->n) {
    unsigned char c = (unsigned char)p->s[p->i];
    if (c == '\n') break;
    if (c == '\r') {
      if (at(p, 1) == '\n') break;
      perr(p, p->i, "carriage return in comment is not followed by a newline");
      return -1;
    }
    if ((c < 0x20 && c != '\t') || c == 0x7f) {
      perr(p, p->i, "%s is not allowed in comments", DESC(p, p->i));
      return -1;
    }
    p->i++;
  }
  return 0;
}

/* Whitespace, newlines and comments (inside arrays). */
static int skip_ws_nl(P* p) {
  for (;;) {
    skip_ws(p);
    int c = ch(p);
    if (c == '#') {
      if (eat_comment(p)) return -1;
    } else if (at_newline(p)) {
      eat_newline(p);
    } else {
      return 0;
    }
  }
}

/* After a header or key/value: ws, optional comment, then newline or EOF. */
static int eat_line_end(P* p, const char* what) {
  char descbuf_[48];
  skip_ws(p);
  if (ch(p) == '#' && eat_comment(p)) return -1;
  if (p->i >= p->n) return 0;
  if (at_newline(p)) {
    eat_newline(p);
    return 0;
  }
  if (ch(p) == '\r') {
    perr(p, p->i, "carriage return is not followed by a newline");
    return -1;
  }
  perr(p, p->i, "expected end of line after %s, found %s", what, DESC(p, p->i));
  return -1;
}

static int is_bare(int c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '-';
}
static int is_digit(int c) { return c >= '0' && c <= '9'; }
static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* ------------------------------------------------------------------ string buffer */

typedef struct {
  char* s;
  size_t len, cap;
} sbuf;

static int sb_put(sbuf* b, const char* d, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t nc = b->cap ? b->cap : 32;
    while (nc < b->len + n + 1) nc *= 2;
    char* ns = (char*)realloc(b->s, nc);
    if (!ns) return -1;
    b->s = ns;
    b->cap = nc;
  }
  if (n) memcpy(b->s + b->len, d, n);
  b->len += n;
  b->s[b->len] = 0;
  return 0;
}
static int sb_putc(sbuf* b, char c) { return sb_put(b, &c, 1); }

static int sb_put_utf8(sbuf* b, uint32_t cp) {
  char u[4];
  size_t n;
  if (cp < 0x80) {
    u[0] = (char)cp;
    n = 1;
  } else if (cp < 0x800) {
    u[0] = (char)(0xC0 | (cp >> 6));
    u[1] = (char)(0x80 | (cp & 0x3F));
    n = 2;
  } else if (cp < 0x10000) {
    u[0] = (char)(0xE0 | (cp >> 12));
    u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    u[2] = (char)(0x80 | (cp & 0x3F));
    n = 3;
  } else {
    u[0] = (char)(0xF0 | (cp >> 18));
    u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    u[3] = (char)(0x80 | (cp & 0x3F));
    n = 4;
  }
  return sb_put(b, u, n);
}

/* ------------------------------------------------------------------ strings */

static int bad_string_char(P* p, const char* kind) {
  char descbuf_[48];
  int c = ch(p);
  if (c < 0) {
    perr(p, p->i, "unterminated %s (reached end of file)", kind);
  } else if (c == '\n' || c == '\r') {
    if (c == '\r' && at(p, 1) != '\n')
      perr(p, p->i, "carriage return in %s is not followed by a newline", kind);
    else
      perr(p, p->i, "unterminated %s: newlines are not allowed (use a multi-line string)", kind);
  } else {
    perr(p, p->i, "%s is not allowed in %s (escape it)", DESC(p, p->i), kind);
  }
  return -1;
}

static int is_ctrl(int c) { return (c >= 0 && c < 0x20 && c != '\t') || c == 0x7f; }

/* At '\\' inside a basic string. */
static int parse_escape(P* p, sbuf* b) {
  size_t start = p->i;
  p->i++;
  int c = ch(p);
  if (c < 0) {
    perr(p, start, "unterminated escape sequence");
    return -1;
  }
  p->i++;
  char out;
  switch (c) {
    case 'b': out = '\b'; break;
    case 't': out = '\t'; break;
    case 'n': out = '\n'; break;
    case 'f': out = '\f'; break;
    case 'r': out = '\r'; break;
    case '"': out = '"'; break;
    case '\\': out = '\\'; break;
    case 'u':
    case 'U': {
      int nd = c == 'u' ? 4 : 8;
      uint32_t cp = 0;
      for (int k = 0; k < nd; k++) {
        int h = hexval(ch(p));
        if (h < 0) {
          perr(p, start, "escape \\%c needs exactly %d hex digits", c, nd);
          return -1;
        }
        cp = (cp << 4) | (uint32_t)h;
        p->i++;
      }
      if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
        perr(p, start, "escape \\%c%0*X is not a Unicode scalar value", c, nd, (unsigned)cp);
        return -1;
      }
      if (sb_put_utf8(b, cp)) {
        oom(p);
        return -1;
      }
      return 0;
    }
    default:
      if (c > 0x20 && c < 0x7f)
        perr(p, start, "invalid escape sequence '\\%c'", c);
      else
        perr(p, start, "invalid escape sequence (backslash followed by %s)",
             c == ' ' ? "a space" : c == '\t' ? "a tab" : "a special character");
      return -1;
  }
  if (sb_putc(b, out)) {
    oom(p);
    return -1;
  }
  return 0;
}

/* At the opening quote of a single-line basic string. */
static int parse_basic(P* p, sbuf* b) {
  size_t start = p->i;
  p->i++;
  for (;;) {
    int c = ch(p);
    if (c == '"') {
      p->i++;
      return 0;
    }
    if (c == '\\') {
      if (parse_escape(p, b)) return -1;
      continue;
    }
    if (c < 0 || c == '\n' || c == '\r' || is_ctrl(c)) {
      if (c < 0) {
        perr(p, start, "unterminated string (no closing '\"' before end of file)");
        return -1;
      }
      return bad_string_char(p, "string");
    }
    size_t j = p->i;
    while (j < p->n) {
      unsigned char d = (unsigned char)p->s[j];
      if (d == '"' || d == '\\' || is_ctrl(d)) break;
      j++;
    }
    if (sb_put(b, p->s + p->i, j - p->i)) {
      oom(p);
      return -1;
    }
    p->i = j;
  }
}

static int parse_literal(P* p, sbuf* b) {
  size_t start = p->i;
  p->i++;
  size_t j = p->i;
  for (;;) {
    int c = j < p->n ? (unsigned char)p->s[j] : -1;
    if (c == '\'') break;
    if (c < 0) {
      perr(p, start, "unterminated literal string (no closing \"'\" before end of file)");
      return -1;
    }
    if (is_ctrl(c)) {
      p->i = j;
      return bad_string_char(p, "literal string");
    }
    j++;
  }
  if (sb_put(b, p->s + p->i, j - p->i)) {
    oom(p);
    return -1;
  }
  p->i = j + 1;
  return 0;
}

/* At the opening delimiter (""" or ''') of a multi-line string. */
static int parse_multiline(P* p, sbuf* b, int q) {
  int basic = q == '"';
  const char* kind = basic ? "multi-line string" : "multi-line literal string";
  size_t start = p->i;
  p->i += 3;
  if (at_newline(p)) eat_newline(p);
  for (;;) {
    int c = ch(p);
    if (c < 0) {
      perr(p, start, "unterminated %s (no closing %c%c%c before end of file)", kind, q, q, q);
      return -1;
    }
    if (c == q) {
      size_t nq = 0;
      while (at(p, nq) == q) nq++;
      if (nq >= 3) {
        if (nq > 5) {
          perr(p, p->i + 5, "too many quotes at the end of %s", kind);
          return -1;
        }
        for (size_t k = 3; k < nq; k++)
          if (sb_putc(b, (char)q)) {
            oom(p);
            return -1;
          }
        p->i += nq;
        return 0;
      }
      for (size_t k = 0; k < nq; k++)
        if (sb_putc(b, (char)q)) {
          oom(p);
          return -1;
        }
      p->i += nq;
      continue;
    }
    if (basic && c == '\\') {
      /* line-ending backslash: '\' ws* newline -> trim ws and newlines */
      size_t j = p->i + 1;
      while (j < p->n && (p->s[j] == ' ' || p->s[j] == '\t')) j++;
      if (j < p->n && (p->s[j] == '\n' || (p->s[j] == '\r' && j + 1 < p->n && p->s[j + 1] == '\n'))) {
        p->i = j;
        for (;;) {
          skip_ws(p);
          if (at_newline(p))
            eat_newline(p);
          else
            break;
        }
        continue;
      }
      if (parse_escape(p, b)) return -1;
      continue;
    }
    if (c == '\n') {
      if (sb_putc(b, '\n')) {
        oom(p);
        return -1;
      }
      p->i++;
      continue;
    }
    if (c == '\r') {
      if (at(p, 1) == '\n') {
        if (sb_putc(b, '\n')) {
          oom(p);
          return -1;
        }
        p->i += 2;
        continue;
      }
      return bad_string_char(p, kind);
    }
    if (is_ctrl(c)) return bad_string_char(p, kind);
    size_t j = p->i;
    while (j < p->n) {
      unsigned char d = (unsigned char)p->s[j];
      if (d == q || (basic && d == '\\') || d == '\n' || d == '\r' || is_ctrl(d)) break;
      j++;
    }
    if (sb_put(b, p->s + p->i, j - p->i)) {
      oom(p);
      return -1;
    }
    p->i = j;
  }
}

/* ------------------------------------------------------------------ keys */

typedef struct {
  char* s;
  size_t len;
  size_t pos;
  int line, col; /* of pos, computed while scanning forward (keeps linecol amortised O(n)) */
} kpart;

typedef struct {
  kpart* v;
  size_t n, cap;
} keypath;

static void kp_free(keypath* k) {
  for (size_t i = 0; i < k->n; i++) free(k->v[i].s);
  free(k->v);
  k->v = NULL;
  k->n = k->cap = 0;
}

/* Writes a printable form of parts [0, n) of k into buf ("a.b.\"c d\""), truncated with "...". */
static void kb_putc(char* buf, size_t bn, size_t* o, int* trunc, char c) {
  if (*o + 1 < bn)
    buf[(*o)++] = c;
  else
    *trunc = 1;
}

static const char* key_str(const keypath* k, size_t n, char* buf, size_t bn) {
  size_t o = 0;
  int trunc = 0;
  for (size_t i = 0; i < n && !trunc; i++) {
    const kpart* kp = &k->v[i];
    int bare = kp->len > 0;
    for (size_t j = 0; j < kp->len; j++)
      if (!is_bare((unsigned char)kp->s[j])) bare = 0;
    if (i) kb_putc(buf, bn, &o, &trunc, '.');
    if (!bare) kb_putc(buf, bn, &o, &trunc, '"');
    for (size_t j = 0; j < kp->len && !trunc; j++) {
      unsigned char c = (unsigned char)kp->s[j];
      if (c < 0x20 || c == 0x7f) {
        char u[8];
        snprintf(u, sizeof u, "\\u%04X", c);
        for (int q = 0; u[q]; q++) kb_putc(buf, bn, &o, &trunc, u[q]);
      } else {
        if (!bare && (c == '"' || c == '\\')) kb_putc(buf, bn, &o, &trunc, '\\');
        kb_putc(buf, bn, &o, &trunc, (char)c);
      }
    }
    if (!bare) kb_putc(buf, bn, &o, &trunc, '"');
  }
  if (trunc && bn > 4) {
    o = bn - 4;
    memcpy(buf + o, "...", 3);
    o += 3;
  }
  buf[o < bn ? o : bn - 1] = 0;
  return buf;
}

static int parse_key(P* p, keypath* k) {
  char descbuf_[48];
  for (;;) {
    skip_ws(p);
    size_t start = p->i;
    if (k->n >= ZT_MAX_DEPTH) {
      perr(p, start, "key has more than %d dotted parts", ZT_MAX_DEPTH);
      return -1;
    }
    sbuf b = {0};
    int c = ch(p);
    if (c == '"' || c == '\'') {
      if (at(p, 1) == c && at(p, 2) == c) {
        perr(p, start, "multi-line strings cannot be used as keys");
        return -1;
      }
      if ((c == '"' ? parse_basic(p, &b) : parse_literal(p, &b)) != 0) {
        free(b.s);
        return -1;
      }
    } else if (is_bare(c)) {
      size_t j = p->i;
      while (j < p->n && is_bare((unsigned char)p->s[j])) j++;
      if (sb_put(&b, p->s + p->i, j - p->i)) {
        free(b.s);
        oom(p);
        return -1;
      }
      p->i = j;
    } else {
      if (k->n)
        perr(p, start, "expected a key after '.', found %s", DESC(p, start));
      else
        perr(p, start, "expected a key, found %s", DESC(p, start));
      return -1;
    }
    if (!b.s && sb_put(&b, "", 0)) {
      oom(p);
      return -1;
    }
    if (k->n == k->cap) {
      size_t nc = k->cap ? k->cap * 2 : 4;
      kpart* nv = (kpart*)realloc(k->v, nc * sizeof *nv);
      if (!nv) {
        free(b.s);
        oom(p);
        return -1;
      }
      k->v = nv;
      k->cap = nc;
    }
    k->v[k->n].s = b.s;
    k->v[k->n].len = b.len;
    k->v[k->n].pos = start;
    linecol(p, start, &k->v[k->n].line, &k->v[k->n].col);
    k->n++;
    skip_ws(p);
    if (ch(p) == '.') {
      p->i++;
      continue;
    }
    return 0;
  }
}

/* ------------------------------------------------------------------ values */

static zt_value* parse_value(P* p);

static zt_value* new_at(P* p, zt_type t, size_t pos) {
  int line, col;
  linecol(p, pos, &line, &col);
  zt_value* v = val_new(t, line, col);
  if (!v) oom(p);
  return v;
}

static int days_in_month(int y, int m) {
  static const int d[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0)) return 29;
  return d[m - 1];
}

/* Reads exactly nd digits at p->i + off; returns -1 if absent. */
static int rd_num(const P* p, size_t off, int nd) {
  int v = 0;
  for (int k = 0; k < nd; k++) {
    int c = at(p, off + (size_t)k);
    if (!is_digit(c)) return -1;
    v = v * 10 + (c - '0');
  }
  return v;
}

static zt_value* parse_datetime(P* p, int has_date) {
  size_t start = p->i;
  zt_datetime dt;
  memset(&dt, 0, sizeof dt);
  zt_type type = ZT_TIME_LOCAL;
  size_t o = 0;
  int has_time = !has_date;
  if (has_date) {
    dt.year = rd_num(p, 0, 4);
    dt.month = rd_num(p, 5, 2);
    dt.day = rd_num(p, 8, 2);
    if (dt.year < 0 || at(p, 4) != '-' || dt.month < 0 || at(p, 7) != '-' || dt.day < 0) {
      perr(p, start, "invalid date: expected YYYY-MM-DD");
      return NULL;
    }
    if (dt.month < 1 || dt.month > 12) {
      perr(p, start + 5, "invalid date: month %02d is out of range 01-12", dt.month);
      return NULL;
    }
    if (dt.day < 1 || dt.day > days_in_month(dt.year, dt.month)) {
      perr(p, start + 8, "invalid date: day %02d is out of range for %04d-%02d", dt.day, dt.year,
           dt.month);
      return NULL;
    }
    o = 10;
    type = ZT_DATE_LOCAL;
    int c = at(p, o);
    if (c == 'T' || c == 't' ||
        (c == ' ' && is_digit(at(p, o + 1)) && is_digit(at(p, o + 2)) && at(p, o + 3) == ':')) {
      o++;
      has_time = 1;
    }
  }
  if (has_time) {
    size_t ts = start + o;
    dt.hour = rd_num(p, o, 2);
    dt.minute = rd_num(p, o + 3, 2);
    if (dt.hour < 0 || at(p, o + 2) != ':' || dt.minute < 0) {
      perr(p, ts, "invalid time: expected HH:MM:SS");
      return NULL;
    }
    if (at(p, o + 5) != ':') {
      perr(p, ts, "invalid time: seconds are required (HH:MM:SS)");
      return NULL;
    }
    dt.second = rd_num(p, o + 6, 2);
    if (dt.second < 0) {
      perr(p, ts, "invalid time: expected HH:MM:SS");
      return NULL;
    }
    if (dt.hour > 23) {
      perr(p, ts, "invalid time: hour %02d is out of range 00-23", dt.hour);
      return NULL;
    }
    if (dt.minute > 59) {
      perr(p, ts + 3, "invalid time: minute %02d is out of range 00-59", dt.minute);
      return NULL;
    }
    if (dt.second > 59) {
      perr(p, ts + 6, "invalid time: second %02d is out of range 00-59", dt.second);
      return NULL;
    }
    o += 8;
    if (at(p, o) == '.') {
      o++;
      if (!is_digit(at(p, o))) {
        perr(p, start + o - 1, "invalid time: '.' must be followed by fractional digits");
        return NULL;
      }
      int32_t ns = 0;
      int nd = 0;
      while (is_digit(at(p, o))) {
        if (nd < 9) ns = ns * 10 + (at(p, o) - '0');
        nd++;
        o++;
      }
      for (int k = nd; k < 9; k++) ns *= 10;
      dt.nanos = ns;
      dt.frac_digits = nd;
    }
    if (has_date) {
      type = ZT_DATETIME_LOCAL;
      int c = at(p, o);
      if (c == 'Z' || c == 'z') {
        type = ZT_DATETIME;
        o++;
      } else if (c == '+' || c == '-') {
        int oh = rd_num(p, o + 1, 2), om = rd_num(p, o + 4, 2);
        if (oh < 0 || at(p, o + 3) != ':' || om < 0) {
          perr(p, start + o, "invalid time offset: expected +HH:MM or -HH:MM");
          return NULL;
        }
        if (oh > 23 || om > 59) {
          perr(p, start + o, "invalid time offset %c%02d:%02d", c, oh, om);
          return NULL;
        }
        dt.offset_min = (c == '-' ? -1 : 1) * (oh * 60 + om);
        type = ZT_DATETIME;
        o += 6;
      }
    } else {
      type = ZT_TIME_LOCAL;
    }
  }
  zt_value* v = new_at(p, type, start);
  if (!v) return NULL;
  v->u.dt = dt;
  p->i = start + o;
  return v;
}

/* Reads digit ( '_'? digit )* in base; returns digit count or -1 on a misplaced '_' or no digit. */
static int scan_digits(const char* t, size_t L, size_t* j, int base) {
  size_t k = *j;
  int nd = 0;
#define ZT_ISD(c) (base == 16 ? hexval(c) >= 0 : ((c) >= '0' && (c) < '0' + base))
  if (k >= L || !ZT_ISD((unsigned char)t[k])) return -1;
  while (k < L) {
    unsigned char c = (unsigned char)t[k];
    if (ZT_ISD(c)) {
      k++;
      nd++;
    } else if (c == '_') {
      if (k + 1 < L && ZT_ISD((unsigned char)t[k + 1]))
        k++;
      else
        return -1;
    } else {
      break;
    }
  }
#undef ZT_ISD
  *j = k;
  return nd;
}

static zt_value* parse_number(P* p) {
  size_t st = p->i, e = p->i;
  while (e < p->n) {
    unsigned char c = (unsigned char)p->s[e];
    if (is_bare(c) || c == '.' || c == '+') e++;
    else break;
  }
  const char* t = p->s + st;
  size_t L = e - st;
  size_t j = 0;
  int neg = 0, sign = 0;
  if (L && (t[0] == '+' || t[0] == '-')) {
    sign = 1;
    neg = t[0] == '-';
    j = 1;
  }
  if (L - j == 3 && (memcmp(t + j, "inf", 3) == 0 || memcmp(t + j, "nan", 3) == 0)) {
    zt_value* v = new_at(p, ZT_FLOAT, st);
    if (!v) return NULL;
    if (t[j] == 'i')
      v->u.f = neg ? -INFINITY : INFINITY;
    else
      v->u.f = neg ? -NAN : NAN;
    p->i = e;
    return v;
  }
  int shown_len = L > 40 ? 40 : (int)L;
  if (L - j >= 2 && t[j] == '0' && (t[j + 1] == 'x' || t[j + 1] == 'o' || t[j + 1] == 'b')) {
    if (sign) {
      perr(p, st, "hex/octal/binary integers cannot have a sign");
      return NULL;
    }
    int base = t[1] == 'x' ? 16 : t[1] == 'o' ? 8 : 2;
    size_t k = 2;
    if (scan_digits(t, L, &k, base) < 0 || k != L) {
      perr(p, st, "invalid %s integer '%.*s'",
           base == 16 ? "hexadecimal" : base == 8 ? "octal" : "binary", shown_len, t);
      return NULL;
    }
    uint64_t v = 0;
    for (size_t q = 2; q < L; q++) {
      if (t[q] == '_') continue;
      uint64_t d = (uint64_t)hexval((unsigned char)t[q]);
      if (v > ((uint64_t)INT64_MAX - d) / (uint64_t)base) {
        perr(p, st, "integer '%.*s' is out of range for a 64-bit signed integer", shown_len, t);
        return NULL;
      }
      v = v * (uint64_t)base + d;
    }
    zt_value* r = new_at(p, ZT_INTEGER, st);
    if (!r) return NULL;
    r->u.i = (int64_t)v;
    p->i = e;
    return r;
  }
  size_t ip = j;
  if (!sign && !(L && is_digit((unsigned char)t[0]))) {
    perr(p, st, "invalid value '%.*s' (strings must be quoted)", shown_len, t);
    return NULL;
  }
  if (scan_digits(t, L, &j, 10) < 0) {
    perr(p, st, "invalid number '%.*s'", shown_len, t);
    return NULL;
  }
  if (t[ip] == '0' && j - ip > 1) {
    perr(p, st, "leading zeros are not allowed in '%.*s'", shown_len, t);
    return NULL;
  }
  int is_float = 0;
  if (j < L && t[j] == '.') {
    j++;
    is_float = 1;
    if (scan_digits(t, L, &j, 10) < 0) {
      perr(p, st, "invalid float '%.*s': '.' must be followed by digits", shown_len, t);
      return NULL;
    }
  }
  if (j < L && (t[j] == 'e' || t[j] == 'E')) {
    j++;
    is_float = 1;
    if (j < L && (t[j] == '+' || t[j] == '-')) j++;
    if (scan_digits(t, L, &j, 10) < 0) {
      perr(p, st, "invalid float '%.*s': bad exponent", shown_len, t);
      return NULL;
    }
  }
  if (j != L) {
    perr(p, st, "invalid number '%.*s'", shown_len, t);
    return NULL;
  }
  if (!is_float) {
    uint64_t lim = neg ? (uint64_t)INT64_MAX + 1u : (uint64_t)INT64_MAX;
    uint64_t v = 0;
    for (size_t q = ip; q < L; q++) {
      if (t[q] == '_') continue;
      uint64_t d = (uint64_t)(t[q] - '0');
      if (v > (lim - d) / 10u) {
        perr(p, st, "integer '%.*s' is out of range for a 64-bit signed integer", shown_len, t);
        return NULL;
      }
      v = v * 10u + d;
    }
    zt_value* r = new_at(p, ZT_INTEGER, st);
    if (!r) return NULL;
    if (neg)
      r->u.i = v == (uint64_t)INT64_MAX + 1u ? INT64_MIN : -(int64_t)v;
    else
      r->u.i = (int64_t)v;
    p->i = e;
    return r;
  }
  /* float: strip underscores, use the locale's decimal point for strtod */
  const char* dp = localeconv()->decimal_point;
  size_t dpl = dp && *dp ? strlen(dp) : 1;
  char* buf = (char*)malloc(L + dpl + 1);
  if (!buf) {
    oom(p);
    return NULL;
  }
  size_t o = 0;
  for (size_t q = 0; q < L; q++) {
    if (t[q] == '_') continue;
    if (t[q] == '.' && dp && *dp) {
      memcpy(buf + o, dp, dpl);
      o += dpl;
    } else {
      buf[o++] = t[q];
    }
  }
  buf[o] = 0;
  errno = 0;
  char* endp = NULL;
  double d = strtod(buf, &endp);
  int bad = endp != buf + o;
  free(buf);
  if (bad) {
    perr(p, st, "invalid number '%.*s'", shown_len, t);
    return NULL;
  }
  if (isinf(d)) {
    perr(p, st, "float '%.*s' is out of range", shown_len, t);
    return NULL;
  }
  zt_value* r = new_at(p, ZT_FLOAT, st);
  if (!r) return NULL;
  r->u.f = d;
  p->i = e;
  return r;
}

static int set_kv(P* p, zt_value* t, keypath* k, zt_value* v, int section);

static zt_value* parse_array(P* p) {
  char descbuf_[48];
  size_t st = p->i;
  if (++p->depth > ZT_MAX_DEPTH) {
    perr(p, st, "arrays/tables nested deeper than %d levels", ZT_MAX_DEPTH);
    return NULL;
  }
  zt_value* a = new_at(p, ZT_ARRAY, st);
  if (!a) return NULL;
  p->i++;
  for (;;) {
    if (skip_ws_nl(p)) goto fail;
    if (ch(p) == ']') {
      p->i++;
      break;
    }
    if (p->i >= p->n) {
      perr(p, st, "unterminated array (no closing ']' before end of file)");
      goto fail;
    }
    zt_value* v = parse_value(p);
    if (!v) goto fail;
    if (arr_push(a, v)) {
      zt_free(v);
      oom(p);
      goto fail;
    }
    if (skip_ws_nl(p)) goto fail;
    int c = ch(p);
    if (c == ',') {
      p->i++;
      continue;
    }
    if (c == ']') {
      p->i++;
      break;
    }
    if (c < 0)
      perr(p, st, "unterminated array (no closing ']' before end of file)");
    else
      perr(p, p->i, "expected ',' or ']' in array, found %s", DESC(p, p->i));
    goto fail;
  }
  p->depth--;
  return a;
fail:
  zt_free(a);
  return NULL;
}

static int parse_kv(P* p, zt_value* t, int section);

static zt_value* parse_inline_table(P* p) {
  char descbuf_[48];
  size_t st = p->i;
  if (++p->depth > ZT_MAX_DEPTH) {
    perr(p, st, "arrays/tables nested deeper than %d levels", ZT_MAX_DEPTH);
    return NULL;
  }
  zt_value* t = new_at(p, ZT_TABLE, st);
  if (!t) return NULL;
  int sec = ++p->nsections;
  p->i++;
  skip_ws(p);
  if (ch(p) == '}') {
    p->i++;
  } else {
    for (;;) {
      skip_ws(p);
      if (at_newline(p) || ch(p) == '#') {
        perr(p, p->i, "inline tables must be on a single line (found %s)",
             ch(p) == '#' ? "a comment" : "a newline");
        goto fail;
      }
      if (ch(p) == '}') {
        perr(p, p->i, "trailing comma is not allowed in an inline table");
        goto fail;
      }
      if (parse_kv(p, t, sec)) goto fail;
      skip_ws(p);
      int c = ch(p);
      if (c == ',') {
        p->i++;
        continue;
      }
      if (c == '}') {
        p->i++;
        break;
      }
      if (c < 0)
        perr(p, st, "unterminated inline table (no closing '}' before end of file)");
      else if (at_newline(p) || c == '#')
        perr(p, p->i, "inline tables must be on a single line (found %s)",
             c == '#' ? "a comment" : "a newline");
      else
        perr(p, p->i, "expected ',' or '}' in inline table, found %s", DESC(p, p->i));
      goto fail;
    }
  }
  t->flags = ZF_INLINE;
  p->depth--;
  return t;
fail:
  zt_free(t);
  return NULL;
}

static zt_value* parse_value(P* p) {
  char descbuf_[48];
  size_t st = p->i;
  int c = ch(p);
  switch (c) {
    case '"':
    case '\'': {
      sbuf b = {0};
      int r;
      if (at(p, 1) == c && at(p, 2) == c)
        r = parse_multiline(p, &b, c);
      else
        r = c == '"' ? parse_basic(p, &b) : parse_literal(p, &b);
      if (r == 0 && !b.s && sb_put(&b, "", 0)) {
        oom(p);
        r = -1;
      }
      if (r) {
        free(b.s);
        return NULL;
      }
      zt_value* v = new_at(p, ZT_STRING, st);
      if (!v) {
        free(b.s);
        return NULL;
      }
      v->u.str.s = b.s;
      v->u.str.len = b.len;
      return v;
    }
    case '[':
      return parse_array(p);
    case '{':
      return parse_inline_table(p);
    default:
      break;
  }
  if (c == 't' || c == 'f') {
    size_t L = c == 't' ? 4 : 5;
    if (p->n - p->i >= L && memcmp(p->s + p->i, c == 't' ? "true" : "false", L) == 0 &&
        !is_bare(at(p, L))) {
      zt_value* v = new_at(p, ZT_BOOL, st);
      if (!v) return NULL;
      v->u.b = c == 't';
      p->i += L;
      return v;
    }
  }
  if (is_digit(c)) {
    if (is_digit(at(p, 1)) && is_digit(at(p, 2)) && is_digit(at(p, 3)) && at(p, 4) == '-')
      return parse_datetime(p, 1);
    if (is_digit(at(p, 1)) && at(p, 2) == ':') return parse_datetime(p, 0);
  }
  if (is_digit(c) || c == '+' || c == '-' || c == 'i' || c == 'n') return parse_number(p);
  if (is_bare(c)) {
    size_t j = p->i;
    while (j < p->n && j - p->i < 40 && (is_bare((unsigned char)p->s[j]) || p->s[j] == '.')) j++;
    perr(p, st, "invalid value '%.*s' (strings must be quoted; booleans are lowercase true/false)",
         (int)(j - p->i), p->s + p->i);
    return NULL;
  }
  perr(p, st, "expected a value, found %s", DESC(p, st));
  return NULL;
}

/* ------------------------------------------------------------------ tables and keys */

static int set_kv(P* p, zt_value* t, keypath* k, zt_value* v, int section) {
  char kb[256];
  for (size_t i = 0; i + 1 < k->n; i++) {
    kpart* kp = &k->v[i];
    zt_entry* e = tab_find(t, kp->s, kp->len);
    if (!e) {
      int line = kp->line, col = kp->col;
      zt_value* nt = val_new(ZT_TABLE, line, col);
      if (!nt) {
        oom(p);
        return -1;
      }
      nt->flags = ZF_DOTTED;
      nt->section = section;
      if (tab_add(t, kp->s, kp->len, line, col, nt)) {
        zt_free(nt);
        oom(p);
        return -1;
      }
      t = nt;
      continue;
    }
    zt_value* c = e->val;
    if (c->type != ZT_TABLE) {
      if (c->type == ZT_ARRAY && (c->flags & ZF_AOT))
        perr(p, kp->pos, "cannot add to '%s' with dotted keys: it is an array of tables (line %d)",
             key_str(k, i + 1, kb, sizeof kb), e->line);
      else
        perr(p, kp->pos, "cannot use '%s' as a table: it is already %s %s (line %d)",
             key_str(k, i + 1, kb, sizeof kb), article(c->type), zt_type_name(c->type), e->line);
      return -1;
    }
    if (c->flags & ZF_INLINE) {
      perr(p, kp->pos, "cannot add keys to inline table '%s' (defined at line %d): inline tables are immutable",
           key_str(k, i + 1, kb, sizeof kb), e->line);
      return -1;
    }
    if (c->flags & ZF_IMPLICIT) {
      c->flags = ZF_DOTTED;
      c->section = section;
    } else if (c->flags & ZF_HEADER) {
      perr(p, kp->pos, "cannot add keys to table '%s' with dotted keys: it was defined by a [header] at line %d",
           key_str(k, i + 1, kb, sizeof kb), e->line);
      return -1;
    } else if ((c->flags & ZF_DOTTED) && c->section != section) {
      perr(p, kp->pos, "cannot add keys to table '%s' from here: it was defined with dotted keys in another table section (line %d)",
           key_str(k, i + 1, kb, sizeof kb), e->line);
      return -1;
    }
    t = c;
  }
  kpart* kp = &k->v[k->n - 1];
  zt_entry* e = tab_find(t, kp->s, kp->len);
  if (e) {
    perr(p, kp->pos, "duplicate key '%s' (first defined at line %d)", key_str(k, k->n, kb, sizeof kb),
         e->line);
    return -1;
  }
  int line = kp->line, col = kp->col;
  if (tab_add(t, kp->s, kp->len, line, col, v)) {
    oom(p);
    return -1;
  }
  return 0;
}

static int parse_kv(P* p, zt_value* t, int section) {
  char descbuf_[48];
  char kb[256];
  keypath k = {0};
  if (parse_key(p, &k)) goto fail;
  skip_ws(p);
  if (ch(p) != '=') {
    perr(p, p->i, "expected '=' after key '%s', found %s", key_str(&k, k.n, kb, sizeof kb),
         DESC(p, p->i));
    goto fail;
  }
  p->i++;
  skip_ws(p);
  int saved = p->depth;
  p->depth += (int)k.n;
  if (p->depth > ZT_MAX_DEPTH) {
    perr(p, k.v[0].pos, "key '%s' nests deeper than %d levels", key_str(&k, k.n, kb, sizeof kb),
         ZT_MAX_DEPTH);
    goto fail;
  }
  zt_value* v = parse_value(p);
  p->depth = saved;
  if (!v) goto fail;
  if (set_kv(p, t, &k, v, section)) {
    zt_free(v);
    goto fail;
  }
  kp_free(&k);
  return 0;
fail:
  kp_free(&k);
  return -1;
}

static int parse_header(P* p) {
  char descbuf_[48];
  char kb[256];
  size_t st = p->i;
  int aot = at(p, 1) == '[';
  p->i += aot ? 2 : 1;
  keypath k = {0};
  if (parse_key(p, &k)) goto fail;
  skip_ws(p);
  if (ch(p) != ']' || (aot && at(p, 1) != ']')) {
    if (aot && ch(p) == ']')
      perr(p, p->i, "expected ']]' to close the array-of-tables header [[%s]]",
           key_str(&k, k.n, kb, sizeof kb));
    else
      perr(p, p->i, "expected '%s' to close table header, found %s", aot ? "]]" : "]",
           DESC(p, p->i));
    goto fail;
  }
  p->i += aot ? 2 : 1;
  if (eat_line_end(p, "table header")) goto fail;

  zt_value* t = p->root;
  int depth = 0;
  for (size_t i = 0; i + 1 < k.n; i++) {
    kpart* kp = &k.v[i];
    zt_entry* e = tab_find(t, kp->s, kp->len);
    if (++depth > ZT_MAX_DEPTH) {
      perr(p, st, "table header nests deeper than %d levels", ZT_MAX_DEPTH);
      goto fail;
    }
    if (!e) {
      int line = kp->line, col = kp->col;
      zt_value* nt = val_new(ZT_TABLE, line, col);
      if (!nt) {
        oom(p);
        goto fail;
      }
      nt->flags = ZF_IMPLICIT;
      if (tab_add(t, kp->s, kp->len, line, col, nt)) {
        zt_free(nt);
        oom(p);
        goto fail;
      }
      t = nt;
      continue;
    }
    zt_value* c = e->val;
    if (c->type == ZT_TABLE) {
      if (c->flags & ZF_INLINE) {
        perr(p, kp->pos, "cannot extend inline table '%s' (defined at line %d): inline tables are immutable",
             key_str(&k, i + 1, kb, sizeof kb), e->line);
        goto fail;
      }
      t = c;
    } else if (c->type == ZT_ARRAY && (c->flags & ZF_AOT) && c->u.arr.len) {
      t = c->u.arr.v[c->u.arr.len - 1];
      depth++;
    } else {
      perr(p, kp->pos, "cannot use '%s' as a table: it is already %s %s (line %d)",
           key_str(&k, i + 1, kb, sizeof kb), article(c->type),
           c->type == ZT_ARRAY ? "array (not an array of tables)" : zt_type_name(c->type), e->line);
      goto fail;
    }
  }
  if (depth + 2 > ZT_MAX_DEPTH) {
    perr(p, st, "table header nests deeper than %d levels", ZT_MAX_DEPTH);
    goto fail;
  }
  kpart* kp = &k.v[k.n - 1];
  zt_entry* e = tab_find(t, kp->s, kp->len);
  int line = kp->line, col = kp->col;
  const char* ks = key_str(&k, k.n, kb, sizeof kb);
  zt_value* target = NULL;
  if (!aot) {
    if (!e) {
      target = val_new(ZT_TABLE, line, col);
      if (!target) {
        oom(p);
        goto fail;
      }
      target->flags = ZF_HEADER;
      if (tab_add(t, kp->s, kp->len, line, col, target)) {
        zt_free(target);
        oom(p);
        goto fail;
      }
    } else {
      zt_value* c = e->val;
      if (c->type == ZT_TABLE && (c->flags & ZF_IMPLICIT)) {
        c->flags = ZF_HEADER;
        c->line = line;
        c->col = col;
        e->line = line;
        e->col = col;
        target = c;
      } else if (c->type == ZT_TABLE && (c->flags & ZF_HEADER)) {
        perr(p, kp->pos, "table [%s] is defined twice (first defined at line %d)", ks, e->line);
        goto fail;
      } else if (c->type == ZT_TABLE && (c->flags & ZF_DOTTED)) {
        perr(p, kp->pos, "table [%s] was already defined with dotted keys (line %d)", ks, e->line);
        goto fail;
      } else if (c->type == ZT_TABLE) {
        perr(p, kp->pos, "table [%s] was already defined as an inline table (line %d)", ks, e->line);
        goto fail;
      } else {
        perr(p, kp->pos, "cannot define table [%s]: key '%s' is already %s %s (line %d)", ks, ks,
             article(c->type), zt_type_name(c->type), e->line);
        goto fail;
      }
    }
  } else {
    zt_value* arr;
    if (!e) {
      arr = val_new(ZT_ARRAY, line, col);
      if (!arr) {
        oom(p);
        goto fail;
      }
      arr->flags = ZF_AOT;
      if (tab_add(t, kp->s, kp->len, line, col, arr)) {
        zt_free(arr);
        oom(p);
        goto fail;
      }
    } else {
      arr = e->val;
      if (arr->type != ZT_ARRAY || !(arr->flags & ZF_AOT)) {
        if (arr->type == ZT_ARRAY)
          perr(p, kp->pos, "cannot append to [[%s]]: '%s' is a static array (line %d)", ks, ks, e->line);
        else
          perr(p, kp->pos, "cannot define array of tables [[%s]]: key '%s' is already %s %s (line %d)",
               ks, ks, article(arr->type), zt_type_name(arr->type), e->line);
        goto fail;
      }
    }
    target = val_new(ZT_TABLE, line, col);
    if (!target) {
      oom(p);
      goto fail;
    }
    target->flags = ZF_HEADER;
    if (arr_push(arr, target)) {
      zt_free(target);
      oom(p);
      goto fail;
    }
    depth++;
  }
  p->cur = target;
  p->section = ++p->nsections;
  p->depth = depth + 1;
  kp_free(&k);
  return 0;
fail:
  kp_free(&k);
  return -1;
}

static int parse_document(P* p) {
  while (p->i < p->n) {
    skip_ws(p);
    int c = ch(p);
    if (c < 0) break;
    if (c == '#') {
      if (eat_comment(p) || eat_line_end(p, "comment")) return -1;
      continue;
    }
    if (at_newline(p)) {
      eat_newline(p);
      continue;
    }
    if (c == '[') {
      if (parse_header(p)) return -1;
      continue;
    }
    if (parse_kv(p, p->cur, p->section)) return -1;
    if (eat_line_end(p, "value")) return -1;
  }
  return 0;
}

static int init_parser(P* p, const char* text, size_t len, const char* file, char* err,
                       size_t errlen) {
  memset(p, 0, sizeof *p);
  p->s = text ? text : "";
  p->n = text ? len : 0;
  p->file = file ? file : "<input>";
  p->err = err;
  p->errlen = errlen;
  if (err && errlen) err[0] = 0;
  if (p->n >= 3 && memcmp(p->s, "\xEF\xBB\xBF", 3) == 0) p->base = 3;
  p->i = p->base;
  size_t bad;
  if (utf8_check(p->s, p->n, p->base, &bad)) {
    perr(p, bad, "invalid UTF-8 (byte 0x%02X)", (unsigned char)p->s[bad]);
    return -1;
  }
  return 0;
}

zt_value* zt_parse(const char* text, size_t len, const char* filename, char* err, size_t errlen) {
  P p;
  if (init_parser(&p, text, len, filename, err, errlen)) return NULL;
  p.root = val_new(ZT_TABLE, 1, 1);
  if (!p.root) {
    oom(&p);
    return NULL;
  }
  p.root->flags = ZF_HEADER;
  p.cur = p.root;
  if (parse_document(&p) || p.failed) {
    zt_free(p.root);
    return NULL;
  }
  return p.root;
}

zt_value* zt_parse_value(const char* text, const char* origin, char* err, size_t errlen) {
  char descbuf_[48];
  P p;
  if (init_parser(&p, text, text ? strlen(text) : 0, origin, err, errlen)) return NULL;
  p.base = 0;
  p.i = 0;
  skip_ws(&p);
  if (p.i >= p.n) {
    perr(&p, p.i, "expected a value, found end of input");
    return NULL;
  }
  zt_value* v = parse_value(&p);
  if (!v) return NULL;
  if (skip_ws_nl(&p) || p.i < p.n) {
    perr(&p, p.i, "unexpected %s after the value", DESC(&p, p.i));
    zt_free(v);
    return NULL;
  }
  return v;
}

int zt_table_set(zt_value* root, const char* dotted_path, zt_value* val, char* err, size_t errlen) {
  char descbuf_[48];
  char kb[256];
  P p;
  if (init_parser(&p, dotted_path, dotted_path ? strlen(dotted_path) : 0, "<key>", err, errlen))
    return -1;
  p.base = 0;
  p.i = 0;
  if (!root || root->type != ZT_TABLE || !val) {
    if (err && errlen) snprintf(err, errlen, "zt_table_set: root must be a table and val non-NULL");
    return -1;
  }
  keypath k = {0};
  if (parse_key(&p, &k)) goto fail;
  skip_ws(&p);
  if (p.i < p.n) {
    perr(&p, p.i, "invalid key path '%s': unexpected %s", dotted_path, DESC(&p, p.i));
    goto fail;
  }
  zt_value* t = root;
  for (size_t i = 0; i + 1 < k.n; i++) {
    kpart* kp = &k.v[i];
    zt_entry* e = tab_find(t, kp->s, kp->len);
    if (!e) {
      zt_value* nt = val_new(ZT_TABLE, 0, 0);
      if (!nt || tab_add(t, kp->s, kp->len, 0, 0, nt)) {
        zt_free(nt);
        if (err && errlen) snprintf(err, errlen, "out of memory");
        goto fail;
      }
      nt->flags = ZF_IMPLICIT;
      t = nt;
      continue;
    }
    zt_value* c = e->val;
    if (c->type == ZT_TABLE) {
      t = c;
    } else if (c->type == ZT_ARRAY && c->u.arr.len && c->u.arr.v[c->u.arr.len - 1]->type == ZT_TABLE &&
               (c->flags & ZF_AOT)) {
      t = c->u.arr.v[c->u.arr.len - 1];
    } else {
      if (err && errlen)
        snprintf(err, errlen, "cannot set '%s': '%s' is %s %s (line %d), not a table", dotted_path,
                 key_str(&k, i + 1, kb, sizeof kb), article(c->type), zt_type_name(c->type), e->line);
      goto fail;
    }
  }
  {
    kpart* kp = &k.v[k.n - 1];
    zt_entry* e = tab_find(t, kp->s, kp->len);
    if (e) {
      if (e->val != val) zt_free(e->val);
      e->val = val;
      e->line = val->line;
      e->col = val->col;
    } else if (tab_add(t, kp->s, kp->len, val->line, val->col, val)) {
      if (err && errlen) snprintf(err, errlen, "out of memory");
      goto fail;
    }
  }
  kp_free(&k);
  return 0;
fail:
  kp_free(&k);
  return -1;
}

/* ------------------------------------------------------------------ tagged JSON */

static void json_str(FILE* f, const char* s, size_t n) {
  fputc('"', f);
  size_t run = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 0x20 && c != '"' && c != '\\' && c != 0x7f) continue;
    if (i > run) fwrite(s + run, 1, i - run, f);
    run = i + 1;
    switch (c) {
      case '"': fputs("\\\"", f); break;
      case '\\': fputs("\\\\", f); break;
      case '\n': fputs("\\n", f); break;
      case '\t': fputs("\\t", f); break;
      case '\r': fputs("\\r", f); break;
      case '\b': fputs("\\b", f); break;
      case '\f': fputs("\\f", f); break;
      default: fprintf(f, "\\u%04x", c); break;
    }
  }
  if (n > run) fwrite(s + run, 1, n - run, f);
  fputc('"', f);
}

static void fmt_float(double d, char* buf, size_t n) {
  if (isnan(d)) {
    snprintf(buf, n, "nan");
    return;
  }
  if (isinf(d)) {
    snprintf(buf, n, d < 0 ? "-inf" : "inf");
    return;
  }
  for (int prec = 15; prec <= 17; prec++) {
    snprintf(buf, n, "%.*g", prec, d);
    if (strtod(buf, NULL) == d) break;
  }
  /* JSON/TOML want '.', whatever the locale says */
  const char* dp = localeconv()->decimal_point;
  if (dp && dp[0] && strcmp(dp, ".") != 0) {
    char* q = strstr(buf, dp);
    if (q) {
      size_t dl = strlen(dp);
      *q = '.';
      memmove(q + 1, q + dl, strlen(q + dl) + 1);
    }
  }
}

static void fmt_dt(const zt_value* v, char* buf, size_t n) {
  const zt_datetime* d = &v->u.dt;
  size_t o = 0;
  if (v->type != ZT_TIME_LOCAL) o += (size_t)snprintf(buf + o, n - o, "%04d-%02d-%02d", d->year, d->month, d->day);
  if (v->type == ZT_DATE_LOCAL) return;
  if (v->type != ZT_TIME_LOCAL) buf[o++] = 'T';
  o += (size_t)snprintf(buf + o, n - o, "%02d:%02d:%02d", d->hour, d->minute, d->second);
  if (d->frac_digits > 0) {
    int nd = d->frac_digits > 9 ? 9 : d->frac_digits;
    char fr[16];
    snprintf(fr, sizeof fr, "%09ld", (long)d->nanos);
    o += (size_t)snprintf(buf + o, n - o, ".%.*s", nd, fr);
  }
  if (v->type == ZT_DATETIME) {
    if (d->offset_min == 0) {
      snprintf(buf + o, n - o, "Z");
    } else {
      int m = d->offset_min < 0 ? -d->offset_min : d->offset_min;
      snprintf(buf + o, n - o, "%c%02d:%02d", d->offset_min < 0 ? '-' : '+', m / 60, m % 60);
    }
  }
}

static void json_val(const zt_value* v, FILE* f) {
  char buf[128];
  const char* tn = zt_type_name(v->type);
  switch (v->type) {
    case ZT_TABLE:
      fputc('{', f);
      for (size_t i = 0; i < v->u.tab.len; i++) {
        if (i) fputc(',', f);
        json_str(f, v->u.tab.e[i].key, v->u.tab.e[i].klen);
        fputc(':', f);
        json_val(v->u.tab.e[i].val, f);
      }
      fputc('}', f);
      return;
    case ZT_ARRAY:
      fputc('[', f);
      for (size_t i = 0; i < v->u.arr.len; i++) {
        if (i) fputc(',', f);
        json_val(v->u.arr.v[i], f);
      }
      fputc(']', f);
      return;
    case ZT_STRING:
      fprintf(f, "{\"type\":\"string\",\"value\":");
      json_str(f, v->u.str.s, v->u.str.len);
      fputc('}', f);
      return;
    case ZT_INTEGER:
      snprintf(buf, sizeof buf, "%lld", (long long)v->u.i);
      break;
    case ZT_FLOAT:
      fmt_float(v->u.f, buf, sizeof buf);
      break;
    case ZT_BOOL:
      snprintf(buf, sizeof buf, "%s", v->u.b ? "true" : "false");
      break;
    default:
      fmt_dt(v, buf, sizeof buf);
      break;
  }
  fprintf(f, "{\"type\":\"%s\",\"value\":\"%s\"}", tn, buf);
}

int zt_write_tagged_json(const zt_value* v, FILE* out) {
  if (!v || !out) return -1;
  json_val(v, out);
  return ferror(out) ? -1 : 0;
}
