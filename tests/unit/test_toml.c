/* test_toml.c: unit tests for core/toml.c (TOML 1.0 parser, tree API, overrides, JSON). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "toml.h"
#include "zt.h"

static char err[512];

static zt_value* P(const char* s) { return zt_parse(s, strlen(s), "t.toml", err, sizeof err); }

/* Expects a parse error whose message contains both `where` ("t.toml:L:C:") and `what`. */
static void expect_err(const char* doc, const char* where, const char* what) {
  zt_value* r = P(doc);
  CHECK_MSG(r == NULL, "expected an error for: %s", doc);
  zt_free(r);
  CHECK_STR_CONTAINS(err, where);
  CHECK_STR_CONTAINS(err, what);
}

static void test_strings(void) {
  zt_value* r = P("a = \"tab\\there \\\"q\\\" \\\\ \\u00e9 \\U0001F600\"\n"
                  "b = 'C:\\path'\n"
                  "c = \"\"\"\nline1\nline2\\\n    cont\"\"\"\n"
                  "d = '''\n raw \\n '''\n"
                  "e = \"\"\"two quotes\"\"\"\"\"\n"
                  "f = \"nul\\u0000byte\"\n"
                  "g = \"\"\"crlf\r\nend\"\"\"\n");
  CHECK(r != NULL);
  if (!r) { fprintf(stderr, "%s\n", err); return; }
  CHECK(strcmp(zt_string(zt_table_get(r, "a")), "tab\there \"q\" \\ \xc3\xa9 \xf0\x9f\x98\x80") == 0);
  CHECK(strcmp(zt_string(zt_table_get(r, "b")), "C:\\path") == 0);
  CHECK(strcmp(zt_string(zt_table_get(r, "c")), "line1\nline2cont") == 0);
  CHECK(strcmp(zt_string(zt_table_get(r, "d")), " raw \\n ") == 0);
  CHECK(strcmp(zt_string(zt_table_get(r, "e")), "two quotes\"\"") == 0);
  CHECK_EQ_INT(zt_string_len(zt_table_get(r, "f")), 8);
  CHECK(memcmp(zt_string(zt_table_get(r, "f")), "nul\0byte", 8) == 0);
  CHECK(strcmp(zt_string(zt_table_get(r, "g")), "crlf\nend") == 0);
  CHECK_EQ_INT(zt_kind(zt_table_get(r, "a")), ZT_STRING);
  CHECK(zt_int(zt_table_get(r, "a")) == 0); /* wrong-type accessors are harmless */
  zt_free(r);
}

static void test_numbers(void) {
  zt_value* r = P("a = 1_000\nb = -17\nc = +0\nd = 0xDEAD_beef\ne = 0o755\nf = 0b1101\n"
                  "g = 9223372036854775807\nh = -9223372036854775808\n"
                  "i = 3.14\nj = -1e-3\nk = 6.626e+34\nl = 1_0.0_1e1_0\nm = inf\nn = -inf\no = nan\n"
                  "p = -0.0\n");
  CHECK(r != NULL);
  if (!r) { fprintf(stderr, "%s\n", err); return; }
  CHECK_EQ_INT(zt_int(zt_table_get(r, "a")), 1000);
  CHECK_EQ_INT(zt_int(zt_table_get(r, "b")), -17);
  CHECK_EQ_INT(zt_int(zt_table_get(r, "c")), 0);
  CHECK_EQ_INT(zt_int(zt_table_get(r, "d")), 0xDEADBEEF);
  CHECK_EQ_INT(zt_int(zt_table_get(r, "e")), 0755);
  CHECK_EQ_INT(zt_int(zt_table_get(r, "f")), 13);
  CHECK(zt_int(zt_table_get(r, "g")) == INT64_MAX);
  CHECK(zt_int(zt_table_get(r, "h")) == INT64_MIN);
  CHECK_EQ_INT(zt_kind(zt_table_get(r, "i")), ZT_FLOAT);
  CHECK(zt_float(zt_table_get(r, "i")) == 3.14);
  CHECK(zt_float(zt_table_get(r, "j")) == -1e-3);
  CHECK(zt_float(zt_table_get(r, "k")) == 6.626e34);
  CHECK(zt_float(zt_table_get(r, "l")) == 10.01e10);
  CHECK(isinf(zt_float(zt_table_get(r, "m"))) && zt_float(zt_table_get(r, "m")) > 0);
  CHECK(isinf(zt_float(zt_table_get(r, "n"))) && zt_float(zt_table_get(r, "n")) < 0);
  CHECK(isnan(zt_float(zt_table_get(r, "o"))));
  CHECK(signbit(zt_float(zt_table_get(r, "p"))));
  CHECK(zt_float(zt_table_get(r, "a")) == 1000.0); /* integers read as floats */
  zt_free(r);
}

static void test_bool_and_datetimes(void) {
  zt_value* r = P("t = true\nf = false\n"
                  "odt = 1979-05-27T07:32:00.999999-07:30\nz = 1979-05-27 07:32:00z\n"
                  "ldt = 1979-05-27t07:32:00.1234567891\nld = 2000-02-29\nlt = 23:59:59.5\n");
  CHECK(r != NULL);
  if (!r) { fprintf(stderr, "%s\n", err); return; }
  CHECK_EQ_INT(zt_bool(zt_table_get(r, "t")), 1);
  CHECK_EQ_INT(zt_bool(zt_table_get(r, "f")), 0);
  CHECK_EQ_INT(zt_kind(zt_table_get(r, "t")), ZT_BOOL);
  const zt_datetime* d = zt_dt(zt_table_get(r, "odt"));
  CHECK_EQ_INT(zt_kind(zt_table_get(r, "odt")), ZT_DATETIME);
  CHECK(d && d->year == 1979 && d->month == 5 && d->day == 27 && d->hour == 7 && d->minute == 32);
  CHECK(d && d->nanos == 999999000 && d->frac_digits == 6 && d->offset_min == -450);
  d = zt_dt(zt_table_get(r, "z"));
  CHECK(d && d->offset_min == 0 && zt_kind(zt_table_get(r, "z")) == ZT_DATETIME);
  d = zt_dt(zt_table_get(r, "ldt"));
  CHECK_EQ_INT(zt_kind(zt_table_get(r, "ldt")), ZT_DATETIME_LOCAL);
  CHECK(d && d->nanos == 123456789 && d->frac_digits == 10);
  CHECK_EQ_INT(zt_kind(zt_table_get(r, "ld")), ZT_DATE_LOCAL);
  CHECK_EQ_INT(zt_kind(zt_table_get(r, "lt")), ZT_TIME_LOCAL);
  d = zt_dt(zt_table_get(r, "lt"));
  CHECK(d && d->hour == 23 && d->second == 59 && d->nanos == 500000000);
  CHECK(zt_dt(zt_table_get(r, "t")) == NULL);
  CHECK(strcmp(zt_type_name(ZT_DATETIME_LOCAL), "datetime-local") == 0);
  zt_free(r);
}

static void test_tables_and_order(void) {
  zt_value* r = P("zeta = 1\nalpha = 2\n\"quoted key\" = 3\nsite.\"google.com\" = true\n"
                  "[server]\n  host = 'h'\n  port = 80\n"
                  "[[bin]]\nname = 'a'\n[[bin]]\nname = 'b'\n[bin.sub]\nx = 1\n"
                  "[inline]\npt = { x = 1, y.z = 2 }\narr = [1, 'two', [3.0], {a = 4}, ]\n");
  CHECK(r != NULL);
  if (!r) { fprintf(stderr, "%s\n", err); return; }
  CHECK_EQ_INT(zt_table_len(r), 7);
  const char* want[] = {"zeta", "alpha", "quoted key", "site", "server", "bin", "inline"};
  for (size_t i = 0; i < 7 && i < zt_table_len(r); i++) CHECK(strcmp(zt_table_key(r, i), want[i]) == 0);
  zt_value* site = zt_table_get(r, "site");
  CHECK(zt_bool(zt_table_get(site, "google.com")) == 1);
  zt_value* bin = zt_table_get(r, "bin");
  CHECK_EQ_INT(zt_kind(bin), ZT_ARRAY);
  CHECK_EQ_INT(zt_array_len(bin), 2);
  CHECK(strcmp(zt_string(zt_table_get(zt_array_at(bin, 1), "name")), "b") == 0);
  CHECK_EQ_INT(zt_int(zt_table_get(zt_table_get(zt_array_at(bin, 1), "sub"), "x")), 1);
  zt_value* in = zt_table_get(r, "inline");
  zt_value* pt = zt_table_get(in, "pt");
  CHECK_EQ_INT(zt_int(zt_table_get(zt_table_get(pt, "y"), "z")), 2);
  zt_value* arr = zt_table_get(in, "arr");
  CHECK_EQ_INT(zt_array_len(arr), 4);
  CHECK_EQ_INT(zt_kind(zt_array_at(arr, 1)), ZT_STRING);
  CHECK_EQ_INT(zt_kind(zt_array_at(arr, 2)), ZT_ARRAY);
  CHECK_EQ_INT(zt_kind(zt_array_at(arr, 3)), ZT_TABLE);
  CHECK(zt_array_at(arr, 4) == NULL);
  /* line/col of keys and values */
  zt_value* srv = zt_table_get(r, "server");
  CHECK_EQ_INT(zt_table_key_line(srv, 1), 7);
  CHECK_EQ_INT(zt_table_key_col(srv, 1), 3);
  CHECK_EQ_INT(zt_line(zt_table_get(srv, "port")), 7);
  CHECK_EQ_INT(zt_col(zt_table_get(srv, "port")), 10);
  CHECK_EQ_INT(zt_line(srv), 5);
  CHECK_EQ_INT(zt_table_key_len(r, 2), 10);
  zt_free(r);

  /* many keys (hash index), lookups still right */
  char* big = malloc(200000);
  size_t o = 0;
  for (int i = 0; i < 5000; i++) o += (size_t)sprintf(big + o, "k%d = %d\n", i, i);
  r = zt_parse(big, o, "big", err, sizeof err);
  CHECK(r != NULL);
  CHECK_EQ_INT(zt_table_len(r), 5000);
  CHECK_EQ_INT(zt_int(zt_table_get(r, "k4321")), 4321);
  CHECK(strcmp(zt_table_key(r, 4999), "k4999") == 0);
  zt_free(r);
  /* a duplicate far down is still found */
  o += (size_t)sprintf(big + o, "k17 = 1\n");
  r = zt_parse(big, o, "big", err, sizeof err);
  CHECK(r == NULL);
  CHECK_STR_CONTAINS(err, "big:5001:1: duplicate key 'k17' (first defined at line 18)");
  free(big);
}

static void test_unicode_and_bom(void) {
  zt_value* r = P("\xEF\xBB\xBF" "k = \"\xE2\x82\xAC\" # comment \xF0\x9F\x98\x80\n\"\xC3\xA9\" = 1\r\n");
  CHECK(r != NULL);
  if (!r) { fprintf(stderr, "%s\n", err); return; }
  CHECK(strcmp(zt_string(zt_table_get(r, "k")), "\xE2\x82\xAC") == 0);
  CHECK_EQ_INT(zt_int(zt_table_get(r, "\xC3\xA9")), 1);
  CHECK_EQ_INT(zt_table_key_col(r, 0), 1); /* BOM does not count */
  zt_free(r);
  /* empty documents */
  r = zt_parse("", 0, "e", err, sizeof err);
  CHECK(r && zt_table_len(r) == 0);
  zt_free(r);
  r = zt_parse(NULL, 0, "e", err, sizeof err);
  CHECK(r && zt_table_len(r) == 0);
  zt_free(r);
}

static void test_errors(void) {
  expect_err("a = 1\nb = 2\na = 3\n", "t.toml:3:1:", "duplicate key 'a' (first defined at line 1)");
  expect_err("x = 1\n[t]\nk = \"open\n", "t.toml:3:10:", "unterminated string");
  expect_err("a = \"\\q\"", "t.toml:1:6:", "invalid escape sequence '\\q'");
  expect_err("a = \"\\uD800\"", "t.toml:1:6:", "not a Unicode scalar value");
  expect_err("a = 0x_1", "t.toml:1:5:", "invalid hexadecimal integer");
  expect_err("a = 9223372036854775808", "t.toml:1:5:", "out of range");
  expect_err("a = -9223372036854775809", "t.toml:1:5:", "out of range");
  expect_err("a = 0xFFFFFFFFFFFFFFFF", "t.toml:1:5:", "out of range");
  expect_err("a = 012", "t.toml:1:5:", "leading zeros");
  expect_err("a = 1__2", "t.toml:1:5:", "invalid number");
  expect_err("a = 1.", "t.toml:1:5:", "must be followed by digits");
  expect_err("a = .5", "t.toml:1:5:", "expected a value");
  expect_err("a = 1e", "t.toml:1:5:", "bad exponent");
  expect_err("a = 1e400", "t.toml:1:5:", "out of range");
  expect_err("a = +0x1", "t.toml:1:5:", "cannot have a sign");
  expect_err("a = hello", "t.toml:1:5:", "strings must be quoted");
  expect_err("a = True", "t.toml:1:5:", "invalid value 'True'");
  expect_err("a = 2021-02-29", "t.toml:1:13:", "day 29 is out of range");
  expect_err("a = 2021-13-01", "t.toml:1:10:", "month 13");
  expect_err("a = 24:00:00", "t.toml:1:5:", "hour 24");
  expect_err("a = 12:60:00", "t.toml:1:8:", "minute 60");
  expect_err("a = 12:00:61", "t.toml:1:11:", "second 61");
  expect_err("a = 12:00", "t.toml:1:5:", "seconds are required");
  expect_err("a = 1979-05-27T00:00:00+24:00", "t.toml:1:24:", "invalid time offset");
  expect_err("a = 1\n\n  b = [1, 2", "t.toml:3:7:", "unterminated array");
  expect_err("a = [1 2]", "t.toml:1:8:", "expected ',' or ']'");
  expect_err("a = {x = 1,}", "t.toml:1:12:", "trailing comma");
  expect_err("a = {x = 1,\n y = 2}", "t.toml:1:12:", "single line");
  expect_err("a = {x = 1}\na.y = 2", "t.toml:2:1:", "inline tables are immutable");
  expect_err("a = {x = 1}\n[a.b]", "t.toml:2:2:", "inline tables are immutable");
  expect_err("[a]\n[a]", "t.toml:2:2:", "table [a] is defined twice (first defined at line 1)");
  expect_err("[a]\nb.c = 1\n[a.b]", "t.toml:3:4:", "already defined with dotted keys");
  expect_err("[a.b.c]\nz = 9\n[a]\nb.c.t = 1", "t.toml:4:3:", "defined by a [header] at line 1");
  expect_err("[x]\ny.z = 1\n[x.w]\n[x]", "t.toml:4:2:", "defined twice");
  expect_err("[a.b.c]\n[a]\nb.d = 1\n[a.b]", "t.toml:4:4:", "already defined with dotted keys");
  expect_err("a = [1]\n[[a]]", "t.toml:2:3:", "static array");
  expect_err("a = 1\n[a]", "t.toml:2:2:", "already an integer");
  expect_err("a = 1\na.b = 2", "t.toml:2:1:", "already an integer");
  expect_err("[[a]]\n[a]", "t.toml:2:2:", "already an array");
  expect_err("[[a.b]]\n[a]\nb.y = 2", "t.toml:3:1:", "array of tables");
  expect_err("[a] x = 1", "t.toml:1:5:", "expected end of line after table header");
  expect_err("[[a] ]", "t.toml:1:4:", "expected ']]'");
  expect_err("a = 1 b = 2", "t.toml:1:7:", "expected end of line after value");
  expect_err("a = 1\r", "t.toml:1:6:", "carriage return");
  expect_err("a = \"x\x01\"", "t.toml:1:7:", "control character U+0001");
  expect_err("# c\x7f\n", "t.toml:1:4:", "not allowed in comments");
  expect_err("a = 'x'\n\xff = 1", "t.toml:2:1:", "invalid UTF-8");
  expect_err("a = \"\xed\xa0\x80\"", "t.toml:1:6:", "invalid UTF-8");
  expect_err("a = \"\xc0\x80\"", "t.toml:1:6:", "invalid UTF-8");
  expect_err("\xEF\xBB\xBF\xEF\xBB\xBF" "a = 1", "t.toml:1:1:", "expected a key");
  expect_err("a = \"\xC3\xA9\" x", "t.toml:1:9:", "expected end of line"); /* col in code points */
  expect_err("= 1", "t.toml:1:1:", "expected a key");
  expect_err("a.\"\"\"b\"\"\" = 1", "t.toml:1:3:", "multi-line strings cannot be used as keys");
  expect_err("a = ", "t.toml:1:5:", "expected a value, found end of file");
  expect_err("a = '''x''''''", "t.toml:1:", "too many quotes");
  expect_err("a = \"\"\"x\\ y\"\"\"", "t.toml:1:9:", "invalid escape");
  /* error buffer too small: truncated, no overflow */
  char small[8];
  zt_value* r = zt_parse("a = ?", 5, "t.toml", small, sizeof small);
  CHECK(r == NULL);
  CHECK(strlen(small) == 7);
  /* NULL error buffer is allowed */
  CHECK(zt_parse("a = ?", 5, "t.toml", NULL, 0) == NULL);
}

static void test_truncated(void) {
  const char* doc =
      "title = \"TOML\"\n[owner]\nname = \"Tom\"\ndob = 1979-05-27T07:32:00-08:00\n"
      "[database]\nports = [ 8000, 8001, 8002 ]\ndata = [ [\"delta\", \"phi\"], [3.14] ]\n"
      "temp = { cpu = 79.5, case = 72.0 }\ns = '''\nml\n'''\nb = \"\"\"x\\\n  y\"\"\"\n"
      "[[products]]\nname = \"Hammer\"\nsku = 738594937\nf = -1.5e-3\nu = \"\\U0001F600\"\n";
  size_t n = strlen(doc);
  zt_value* full = zt_parse(doc, n, "t.toml", err, sizeof err);
  CHECK(full != NULL);
  zt_free(full);
  int ok = 0, bad = 0;
  for (size_t k = 0; k < n; k++) {
    /* heap copy of exactly k bytes so ASan catches any read past the end */
    char* c = malloc(k ? k : 1);
    memcpy(c, doc, k);
    zt_value* r = zt_parse(c, k, "t.toml", err, sizeof err);
    if (r) ok++;
    else {
      bad++;
      CHECK_STR_CONTAINS(err, "t.toml:");
    }
    zt_free(r);
    free(c);
  }
  CHECK(ok > 0 && bad > 0);
}

static void test_deep_nesting(void) {
  size_t n = 5000;
  char* s = malloc(2 * n + 16);
  strcpy(s, "a = ");
  memset(s + 4, '[', n);
  memset(s + 4 + n, ']', n);
  s[4 + 2 * n] = 0;
  zt_value* r = P(s);
  CHECK(r == NULL);
  CHECK_STR_CONTAINS(err, "t.toml:1:1004:");
  CHECK_STR_CONTAINS(err, "nested deeper than 1000");
  free(s);
  /* 500 levels is fine */
  s = malloc(2000);
  strcpy(s, "a = ");
  memset(s + 4, '[', 500);
  memset(s + 504, ']', 500);
  s[1004] = 0;
  r = P(s);
  CHECK(r != NULL);
  zt_free(r);
  free(s);
  /* inline tables with dotted keys nest too */
  size_t m = 800, o = 0;
  s = malloc(m * 10 + 16);
  o += (size_t)sprintf(s, "x = ");
  for (size_t i = 0; i < m; i++) o += (size_t)sprintf(s + o, "{a.b=");
  s[o++] = '1';
  for (size_t i = 0; i < m; i++) s[o++] = '}';
  s[o] = 0;
  r = P(s);
  CHECK(r == NULL);
  CHECK_STR_CONTAINS(err, "deeper than 1000");
  free(s);
  /* very long dotted header */
  s = malloc(3 * 3000 + 8);
  o = 0;
  s[o++] = '[';
  for (int i = 0; i < 3000; i++) o += (size_t)sprintf(s + o, i ? ".a" : "a");
  s[o++] = ']';
  s[o] = 0;
  r = P(s);
  CHECK(r == NULL);
  CHECK_STR_CONTAINS(err, "more than 1000");
  free(s);
}

static void test_parse_value_and_set(void) {
  zt_value* root = P("[optim]\nlr = 0.1\nname = 'adam'\n[[stage]]\nid = 1\n");
  CHECK(root != NULL);
  if (!root) return;
  zt_value* v = zt_parse_value("1e-3", "--set", err, sizeof err);
  CHECK(v && zt_kind(v) == ZT_FLOAT && zt_float(v) == 1e-3);
  CHECK(zt_table_set(root, "optim.lr", v, err, sizeof err) == 0);
  zt_value* optim = zt_table_get(root, "optim");
  CHECK(zt_float(zt_table_get(optim, "lr")) == 1e-3);
  CHECK(strcmp(zt_table_key(optim, 0), "lr") == 0); /* replaced in place, order kept */
  CHECK_EQ_INT(zt_table_len(optim), 2);

  v = zt_parse_value("  \"x y\"  ", "--set", err, sizeof err);
  CHECK(v && strcmp(zt_string(v), "x y") == 0);
  CHECK(zt_table_set(root, "new.deep.\"q.k\"", v, err, sizeof err) == 0);
  zt_value* deep = zt_table_get(zt_table_get(root, "new"), "deep");
  CHECK(deep && zt_kind(deep) == ZT_TABLE);
  CHECK(strcmp(zt_string(zt_table_get(deep, "q.k")), "x y") == 0);

  v = zt_parse_value("[1, {a = 2}]", "--set", err, sizeof err);
  CHECK(v && zt_array_len(v) == 2);
  CHECK(zt_table_set(root, "optim", v, err, sizeof err) == 0); /* replace a whole table */
  CHECK_EQ_INT(zt_kind(zt_table_get(root, "optim")), ZT_ARRAY);

  v = zt_parse_value("7", "--set", err, sizeof err);
  CHECK(zt_table_set(root, "stage.id", v, err, sizeof err) == 0); /* last [[stage]] element */
  CHECK_EQ_INT(zt_int(zt_table_get(zt_array_at(zt_table_get(root, "stage"), 0), "id")), 7);

  v = zt_parse_value("true", "--set", err, sizeof err);
  CHECK(zt_table_set(root, "new.deep.\"q.k\".x", v, err, sizeof err) == -1);
  CHECK_STR_CONTAINS(err, "is a string");
  CHECK(zt_table_set(root, "bad..key", v, err, sizeof err) == -1);
  CHECK_STR_CONTAINS(err, "expected a key");
  zt_free(v); /* not consumed on error */

  CHECK(zt_parse_value("", "--set", err, sizeof err) == NULL);
  CHECK_STR_CONTAINS(err, "--set:1:1:");
  CHECK(zt_parse_value("1 2", "--set", err, sizeof err) == NULL);
  CHECK_STR_CONTAINS(err, "--set:1:3: unexpected");
  CHECK(zt_parse_value("'unterminated", "--set", err, sizeof err) == NULL);
  CHECK_STR_CONTAINS(err, "unterminated");
  v = zt_parse_value("1979-05-27", "--set", err, sizeof err);
  CHECK(v && zt_kind(v) == ZT_DATE_LOCAL);
  zt_free(v);
  zt_free(root);
}

static void test_json(void) {
  zt_value* r = P("a = 1\nb = [1.5, \"q\\\"\\n\\u0001\"]\n[t]\nd = 1979-05-27T07:32:00.5+01:00\n"
                  "e = inf\nf = 0.1\ng = 07:32:00\nh = 1e300\n");
  CHECK(r != NULL);
  if (!r) return;
  char* buf = NULL;
  size_t len = 0;
  FILE* f = open_memstream(&buf, &len);
  CHECK(zt_write_tagged_json(r, f) == 0);
  fclose(f);
  CHECK_STR_CONTAINS(buf, "\"a\":{\"type\":\"integer\",\"value\":\"1\"}");
  CHECK_STR_CONTAINS(buf, "{\"type\":\"float\",\"value\":\"1.5\"}");
  CHECK_STR_CONTAINS(buf, "\"value\":\"q\\\"\\n\\u0001\"");
  CHECK_STR_CONTAINS(buf, "\"value\":\"1979-05-27T07:32:00.5+01:00\"");
  CHECK_STR_CONTAINS(buf, "\"value\":\"inf\"");
  CHECK_STR_CONTAINS(buf, "\"value\":\"0.1\"");
  CHECK_STR_CONTAINS(buf, "{\"type\":\"time-local\",\"value\":\"07:32:00\"}");
  CHECK_STR_CONTAINS(buf, "\"value\":\"1e+300\"");
  free(buf);
  zt_free(r);
}

int main(void) {
  ZT_RUN(test_strings);
  ZT_RUN(test_numbers);
  ZT_RUN(test_bool_and_datetimes);
  ZT_RUN(test_tables_and_order);
  ZT_RUN(test_unicode_and_bom);
  ZT_RUN(test_errors);
  ZT_RUN(test_truncated);
  ZT_RUN(test_deep_nesting);
  ZT_RUN(test_parse_value_and_set);
  ZT_RUN(test_json);
  return zt_done();
}
