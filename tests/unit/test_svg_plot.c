/* test_svg_plot.c: the SVG chart writer behind zp.plot_lines / zp.plot_bars (core/svg_plot.c).
 * Checks: XML escaping (entities, control characters, invalid and non-XML UTF-8), nice ticks
 * (1/2/5 steps covering the range, degenerate ranges), documents are balanced and contain
 * exactly one path per series / one group per bar group / one rect per bar, non-finite data
 * is never printed, byte axes use binary units, limits and bad input are refused. */
#include "zt.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svg_plot.h"

static int count(const char* hay, const char* needle) {
  int n = 0;
  for (const char* p = strstr(hay, needle); p; p = strstr(p + 1, needle)) n++;
  return n;
}

/* Every "<x" opens and is closed by "</x>" or "/>": a cheap well-formedness check for this
 * writer's output (the integration test parses documents with a real XML parser). */
static int balanced(const char* s) {
  int depth = 0;
  for (const char* p = s; *p; p++) {
    if (p[0] != '<') continue;
    if (p[1] == '?') continue;
    if (p[1] == '/') {
      depth--;
      if (depth < 0) return 0;
      continue;
    }
    const char* e = strchr(p, '>');
    if (!e) return 0;
    if (e[-1] != '/') depth++;
  }
  return depth == 0;
}

static void test_escape(void) {
  char b[256];
  size_t n = zp_svg_escape(b, sizeof b, "a<b & \"c\" 'd'>");
  CHECK(strcmp(b, "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;") == 0);
  CHECK_EQ_INT(n, strlen(b));
  zp_svg_escape(b, sizeof b, "x\x01y\x1fz\tw\n");
  CHECK(strcmp(b, "x?y?z\tw\n") == 0);
  zp_svg_escape(b, sizeof b, "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"); /* valid UTF-8 kept */
  CHECK(strcmp(b, "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80") == 0);
  zp_svg_escape(b, sizeof b, "\xff\xc3(\xed\xa0\x80\xef\xbf\xbe\xc0\xaf"); /* invalid, surrogate, U+FFFE, overlong */
  for (char* p = b; *p; p++) CHECK((unsigned char)*p < 0x80);
  CHECK(strchr(b, '(') != NULL);
  /* truncation keeps a NUL-terminated prefix and reports the full length */
  char small[6];
  n = zp_svg_escape(small, sizeof small, "<<<<");
  CHECK_EQ_INT(n, 16);
  CHECK(strlen(small) < sizeof small);
  CHECK_EQ_INT(zp_svg_escape(NULL, 0, "&"), 5);
}

static void test_ticks(void) {
  double f, s;
  int c;
  CHECK(zp_svg_nice_ticks(0, 9.3, 7, &f, &s, &c) == 0);
  CHECK(f <= 0 && f + s * (c - 1) >= 9.3 && c <= 7);
  CHECK_NEAR(s, 2, 0, 1e-12);
  CHECK(zp_svg_nice_ticks(5.31, 5.57, 7, &f, &s, &c) == 0);
  CHECK(f <= 5.31 && f + s * (c - 1) >= 5.57 - 1e-9 && c <= 7 && c >= 3);
  CHECK_NEAR(s, 0.05, 0, 1e-9);
  CHECK(zp_svg_nice_ticks(3, 3, 7, &f, &s, &c) == 0); /* degenerate range is widened */
  CHECK(f < 3 && f + s * (c - 1) > 3);
  CHECK(zp_svg_nice_ticks(0, 0, 7, &f, &s, &c) == 0);
  CHECK(s > 0 && c >= 2);
  CHECK(zp_svg_nice_ticks(-7, 13, 5, &f, &s, &c) == 0);
  CHECK(f <= -7 && f + s * (c - 1) >= 13 && c <= 5);
  CHECK(zp_svg_nice_ticks(NAN, 1, 7, &f, &s, &c) == -1);
  CHECK(zp_svg_nice_ticks(0, INFINITY, 7, &f, &s, &c) == -1);
  for (double hi = 1e-6; hi < 1e12; hi *= 3.7) {
    CHECK(zp_svg_nice_ticks(0, hi, 7, &f, &s, &c) == 0);
    double r = s / pow(10, floor(log10(s)));
    CHECK(fabs(r - 1) < 1e-9 || fabs(r - 2) < 1e-9 || fabs(r - 5) < 1e-9);
    CHECK(f + s * (c - 1) >= hi * (1 - 1e-12) && c <= 7);
  }
}

static void test_lines(void) {
  double x[5] = {1, 2, 3, 4, 5}, y1[5] = {5.6, 5.1, NAN, 4.2, 4.0}, y2[5] = {5.6, 4.9, 4.5, 4.1, INFINITY};
  zp_svg_line s[2] = {{"lr <1e-3> & co", x, y1, 5}, {"lr 3e-3", x, y2, 5}};
  zp_svg_opts o = {"loss \"curves\"", "step", "loss", 0, 0, 0};
  char err[256];
  size_t len = 0;
  char* svg = zp_svg_lines(&o, s, 2, &len, err, sizeof err);
  CHECK_MSG(svg != NULL, "%s", err);
  if (!svg) return;
  CHECK_EQ_INT(len, strlen(svg));
  CHECK(strncmp(svg, "<?xml version=\"1.0\" encoding=\"UTF-8\"", 36) == 0);
  CHECK(strstr(svg, "xmlns=\"http://www.w3.org/2000/svg\"") != NULL);
  CHECK(balanced(svg));
  CHECK_EQ_INT(count(svg, "class=\"series\""), 2);
  CHECK_STR_CONTAINS(svg, "lr &lt;1e-3&gt; &amp; co");
  CHECK_STR_CONTAINS(svg, "loss &quot;curves&quot;");
  CHECK(strstr(svg, "nan") == NULL && strstr(svg, "inf") == NULL);
  /* series 1 breaks at the nan: two "M" pen-downs; series 2 drops the inf point: 4 points */
  const char* p1 = strstr(svg, "class=\"series\"");
  const char* d1 = strstr(p1, " d=\"");
  const char* e1 = strchr(d1 + 4, '"');
  int m = 0, l = 0;
  for (const char* q = d1 + 4; q < e1; q++) m += *q == 'M', l += *q == 'L';
  CHECK_EQ_INT(m, 2);
  CHECK_EQ_INT(l, 2);
  free(svg);
  /* no data at all is still a valid chart */
  svg = zp_svg_lines(NULL, NULL, 0, NULL, err, sizeof err);
  CHECK(svg && balanced(svg) && strstr(svg, "no data"));
  free(svg);
  double nanv[2] = {NAN, NAN};
  zp_svg_line sn = {"empty", nanv, nanv, 2};
  svg = zp_svg_lines(NULL, &sn, 1, NULL, err, sizeof err);
  CHECK(svg && balanced(svg) && count(svg, "class=\"series\"") == 1 && !strstr(svg, "nan"));
  free(svg);
  zp_svg_line bad = {"x", NULL, NULL, 3};
  CHECK(zp_svg_lines(NULL, &bad, 1, NULL, err, sizeof err) == NULL);
  CHECK(zp_svg_lines(NULL, s, ZP_SVG_MAX_SERIES + 1, NULL, err, sizeof err) == NULL);
}

static void test_bars(void) {
  const char* groups[4] = {"none", "stage1", "stage2", "stage3"};
  double param[4] = {3.3e6, 3.3e6, 3.3e6, 1.65e6}, optim[4] = {6.6e6, 3.3e6, 3.3e6, 3.3e6};
  double act[4] = {20e6, 20e6, NAN, 20e6};
  zp_svg_bar_series s[3] = {{"PARAM", param}, {"OPTIM", optim}, {"ACT", act}};
  zp_svg_opts o = {"memory", "stage", "bytes", 0, 0, 1};
  char err[256];
  char* svg = zp_svg_bars(&o, groups, 4, s, 3, 1, NULL, err, sizeof err);
  CHECK_MSG(svg != NULL, "%s", err);
  if (!svg) return;
  CHECK(balanced(svg));
  CHECK_EQ_INT(count(svg, "<g class=\"group\"><title>"), 4);
  CHECK_EQ_INT(count(svg, "class=\"bar\""), 11); /* 12 minus the nan */
  CHECK_STR_CONTAINS(svg, "<g class=\"group\"><title>stage2</title>");
  CHECK_STR_CONTAINS(svg, " MiB</text>");             /* byte axis in binary units */
  CHECK_STR_CONTAINS(svg, "<title>PARAM: 3.15 MiB</title>");
  CHECK(strstr(svg, "nan") == NULL);
  free(svg);
  /* grouped, with a negative value: drawn below a zero line */
  double neg[4] = {1, -2, 3, 4};
  zp_svg_bar_series sg[1] = {{"delta", neg}};
  svg = zp_svg_bars(NULL, groups, 4, sg, 1, 0, NULL, err, sizeof err);
  CHECK(svg && balanced(svg) && count(svg, "class=\"bar\"") == 4);
  free(svg);
  /* stacked bars refuse negative values */
  CHECK(zp_svg_bars(NULL, groups, 4, sg, 1, 1, NULL, err, sizeof err) == NULL);
  CHECK_STR_CONTAINS(err, "negative");
  /* long labels are rotated; nothing breaks with zero groups */
  const char* longg[4] = {"stage1 micro-batch 16 (long)", "stage2 micro-batch 16 (long)",
                          "stage3 micro-batch 16 (long)", "none micro-batch 16 (long)"};
  double v2[4] = {1, 2, 3, 4};
  zp_svg_bar_series sl[1] = {{"v", v2}};
  svg = zp_svg_bars(NULL, longg, 4, sl, 1, 0, NULL, err, sizeof err);
  CHECK(svg && balanced(svg) && strstr(svg, "rotate(-35"));
  free(svg);
  /* a long legend label is cut (at a UTF-8 boundary) and kept whole in a tooltip */
  const char* lbl = "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9 a very long legend label";
  zp_svg_bar_series sll[1] = {{lbl, v2}};
  svg = zp_svg_bars(NULL, groups, 4, sll, 1, 0, NULL, err, sizeof err);
  CHECK(svg && balanced(svg));
  if (svg) {
    char want[128];
    snprintf(want, sizeof want, "<title>%s</title></text>", lbl);
    CHECK_STR_CONTAINS(svg, want);
    CHECK_STR_CONTAINS(svg, "\xc3\xa9 a very long...<title>");
  }
  free(svg);
  svg = zp_svg_bars(NULL, NULL, 0, NULL, 0, 1, NULL, err, sizeof err);
  CHECK(svg && balanced(svg) && strstr(svg, "no data"));
  free(svg);
  CHECK(zp_svg_bars(NULL, groups, ZP_SVG_MAX_GROUPS + 1, s, 3, 0, NULL, err, sizeof err) == NULL);
}

int main(void) {
  ZT_RUN(test_escape);
  ZT_RUN(test_ticks);
  ZT_RUN(test_lines);
  ZT_RUN(test_bars);
  return zt_done();
}
