/* svg_plot.c: line and bar charts as SVG 1.1 text (see svg_plot.h for the contract).
 *
 * Layout: title on top, y label rotated on the left, x label below, legend in a column on the
 * right of the plot area. Ticks are "nice" (1/2/5 x 10^k). All text is escaped through
 * zp_svg_escape; every coordinate printed comes from finite arithmetic on finite data (data
 * points that are not finite are skipped before any coordinate is computed).
 *
 * Invariants: output is built in one growing heap buffer (sb_*); on any allocation failure
 * the buffer is marked failed and the function returns NULL with a message; no global state.
 */
#include "svg_plot.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- string buffer */

typedef struct {
  char* p;
  size_t len, cap;
  int failed;
} sb;

static void sb_reserve(sb* b, size_t extra) {
  if (b->failed) return;
  if (b->len + extra + 1 <= b->cap) return;
  size_t nc = b->cap ? b->cap : 4096;
  while (nc < b->len + extra + 1) nc *= 2;
  char* np = realloc(b->p, nc);
  if (!np) {
    b->failed = 1;
    return;
  }
  b->p = np;
  b->cap = nc;
}

static void sb_printf(sb* b, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sb* b, const char* fmt, ...) {
  if (b->failed) return;
  va_list ap;
  va_start(ap, fmt);
  char tmp[512];
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0) {
    b->failed = 1;
    return;
  }
  if ((size_t)n < sizeof tmp) {
    sb_reserve(b, (size_t)n);
    if (b->failed) return;
    memcpy(b->p + b->len, tmp, (size_t)n + 1);
    b->len += (size_t)n;
    return;
  }
  sb_reserve(b, (size_t)n);
  if (b->failed) return;
  va_start(ap, fmt);
  vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

/* Appends the escaped form of s (NULL = ""). */
static void sb_esc(sb* b, const char* s) {
  if (!s || b->failed) return;
  size_t need = zp_svg_escape(NULL, 0, s);
  sb_reserve(b, need);
  if (b->failed) return;
  zp_svg_escape(b->p + b->len, need + 1, s);
  b->len += need;
}

/* ---------------------------------------------------------------- escaping */

/* Length of a valid UTF-8 sequence allowed in XML 1.0 at s (1..4), or 0 if invalid. */
static int utf8_ok(const unsigned char* s) {
  unsigned c = s[0];
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return (s[1] & 0xC0) == 0x80 ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    unsigned lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    if (s[1] < lo || s[1] > hi || (s[2] & 0xC0) != 0x80) return 0;
    if (c == 0xEF && s[1] == 0xBF && (s[2] == 0xBE || s[2] == 0xBF)) return 0; /* U+FFFE/F */
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    unsigned lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    if (s[1] < lo || s[1] > hi || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80) return 0;
    return 4;
  }
  return 0;
}

size_t zp_svg_escape(char* dst, size_t dstlen, const char* src) {
  size_t need = 0, o = 0;
  const unsigned char* s = (const unsigned char*)(src ? src : "");
#define PUT(str, n)                                                \
  do {                                                             \
    if (dst && o + (n) < dstlen) {                                 \
      memcpy(dst + o, (str), (n));                                 \
      o += (n);                                                    \
    } else if (dst) {                                              \
      o = dstlen; /* stop writing: keep output a prefix */        \
    }                                                              \
    need += (n);                                                   \
  } while (0)
  while (*s) {
    unsigned c = *s;
    if (c == '&') PUT("&amp;", 5);
    else if (c == '<') PUT("&lt;", 4);
    else if (c == '>') PUT("&gt;", 4);
    else if (c == '"') PUT("&quot;", 6);
    else if (c == '\'') PUT("&apos;", 6);
    else if (c < 0x20 && c != '\t' && c != '\n') PUT("?", 1);
    else if (c < 0x80) PUT((const char*)s, 1);
    else {
      int k = utf8_ok(s);
      if (k == 0) PUT("?", 1);
      else {
        PUT((const char*)s, (size_t)k);
        s += k;
        continue;
      }
    }
    s++;
  }
#undef PUT
  if (dst && dstlen) dst[o < dstlen ? o : dstlen - 1] = 0;
  return need;
}

/* ---------------------------------------------------------------- ticks and labels */

int zp_svg_nice_ticks(double lo, double hi, int max_ticks, double* first, double* step,
                      int* count) {
  if (!isfinite(lo) || !isfinite(hi)) return -1;
  if (max_ticks < 2) max_ticks = 2;
  if (lo > hi) {
    double t = lo;
    lo = hi;
    hi = t;
  }
  if (hi - lo <= fabs(hi) * 1e-12 || hi == lo) {
    double w = fabs(lo) > 0 ? fabs(lo) * 0.1 : 1.0;
    lo -= w;
    hi += w;
  }
  double rough = (hi - lo) / (max_ticks - 1);
  double mag = pow(10.0, floor(log10(rough)));
  double st = mag;
  int n = 0;
  for (int attempt = 0; attempt < 8; attempt++) {
    double r = rough / mag;
    st = r <= 1 ? mag : r <= 2 ? 2 * mag : r <= 5 ? 5 * mag : 10 * mag;
    double f = floor(lo / st) * st, l = ceil(hi / st) * st;
    n = (int)floor((l - f) / st + 0.5) + 1;
    if (n <= max_ticks) {
      *first = f;
      *step = st;
      *count = n;
      return isfinite(f) && isfinite(st) && st > 0 ? 0 : -1;
    }
    rough *= 1.5; /* floor/ceil widened the range: take a bigger step */
    mag = pow(10.0, floor(log10(rough)));
  }
  *first = floor(lo / st) * st;
  *step = st;
  *count = n;
  return 0;
}

static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};

/* Unit index for bytes given the largest absolute value on the axis. */
static int byte_unit(double maxabs) {
  int u = 0;
  while (u < 5 && maxabs >= 1024.0) {
    maxabs /= 1024.0;
    u++;
  }
  return u;
}

static void fmt_tick(char* buf, size_t n, double v, double step, double maxabs, int bytes) {
  if (fabs(v) < step * 1e-9) v = 0;
  if (bytes) {
    int u = byte_unit(maxabs);
    double s = pow(1024.0, u);
    double vs = v / s, ss = step / s;
    int dec = ss >= 1 ? 0 : (int)ceil(-log10(ss) - 1e-9);
    if (dec > 3) dec = 3;
    snprintf(buf, n, "%.*f %s", dec, vs, kUnits[u]);
    return;
  }
  if (maxabs >= 1e7 || (step < 1e-4 && maxabs > 0)) {
    snprintf(buf, n, "%.3g", v);
    return;
  }
  int dec = step >= 1 ? 0 : (int)ceil(-log10(step) - 1e-9);
  if (dec > 6) dec = 6;
  snprintf(buf, n, "%.*f", dec, v);
}

/* Nice y ticks; for byte axes the ticks are nice in the display unit (KiB, MiB, ...). */
static int y_ticks(double lo, double hi, int bytes, double* first, double* step, int* count) {
  if (!bytes) return zp_svg_nice_ticks(lo, hi, 7, first, step, count);
  double u = pow(1024.0, byte_unit(fmax(fabs(lo), fabs(hi))));
  int rc = zp_svg_nice_ticks(lo / u, hi / u, 7, first, step, count);
  *first *= u;
  *step *= u;
  return rc;
}

static void fmt_value(char* buf, size_t n, double v, int bytes) {
  if (bytes) {
    int u = byte_unit(fabs(v));
    if (u == 0) snprintf(buf, n, "%.0f B", v);
    else snprintf(buf, n, "%.2f %s", v / pow(1024.0, u), kUnits[u]);
  } else {
    snprintf(buf, n, "%.6g", v);
  }
}

/* ---------------------------------------------------------------- common frame */

static const char* const kColors[] = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                                      "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"};
#define NCOLORS 10
static const char* const kDashes[] = {"", "6,3", "2,2", "8,3,2,3"};

typedef struct {
  int W, H;
  double x0, x1, y0, y1; /* plot area: x0 left, x1 right, y0 top, y1 bottom */
} frame;

static void doc_begin(sb* b, const zp_svg_opts* o, const frame* f) {
  sb_printf(b, "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?>\n");
  sb_printf(b,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"%d\" "
            "height=\"%d\" viewBox=\"0 0 %d %d\" font-family=\"Helvetica, Arial, sans-serif\" "
            "font-size=\"12\">\n",
            f->W, f->H, f->W, f->H);
  sb_printf(b, "<title>");
  sb_esc(b, o->title ? o->title : "chart");
  sb_printf(b, "</title>\n");
  sb_printf(b, "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"#ffffff\"/>\n", f->W,
            f->H);
  if (o->title && o->title[0]) {
    sb_printf(b, "<text class=\"title\" x=\"%.1f\" y=\"28\" text-anchor=\"middle\" "
              "font-size=\"16\" font-weight=\"bold\">", (f->x0 + f->x1) / 2);
    sb_esc(b, o->title);
    sb_printf(b, "</text>\n");
  }
  if (o->xlabel && o->xlabel[0]) {
    sb_printf(b, "<text class=\"xlabel\" x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">",
              (f->x0 + f->x1) / 2, f->H - 12);
    sb_esc(b, o->xlabel);
    sb_printf(b, "</text>\n");
  }
  if (o->ylabel && o->ylabel[0]) {
    double cy = (f->y0 + f->y1) / 2;
    sb_printf(b, "<text class=\"ylabel\" x=\"18\" y=\"%.1f\" text-anchor=\"middle\" "
              "transform=\"rotate(-90 18 %.1f)\">", cy, cy);
    sb_esc(b, o->ylabel);
    sb_printf(b, "</text>\n");
  }
}

/* Horizontal grid lines and y tick labels for ticks first + i*step; returns the mapping. */
static void y_axis(sb* b, const frame* f, double first, double step, int count, int bytes,
                   double* ylo, double* yhi) {
  *ylo = first;
  *yhi = first + step * (count - 1);
  double maxabs = fmax(fabs(*ylo), fabs(*yhi));
  sb_printf(b, "<g class=\"yaxis\">\n");
  for (int i = 0; i < count; i++) {
    double v = first + step * i;
    double y = f->y1 - (v - *ylo) / (*yhi - *ylo) * (f->y1 - f->y0);
    char lab[64];
    fmt_tick(lab, sizeof lab, v, step, maxabs, bytes);
    sb_printf(b, "<line x1=\"%.1f\" y1=\"%.2f\" x2=\"%.1f\" y2=\"%.2f\" stroke=\"#e0e0e0\"/>\n",
              f->x0, y, f->x1, y);
    sb_printf(b, "<line x1=\"%.1f\" y1=\"%.2f\" x2=\"%.1f\" y2=\"%.2f\" stroke=\"#000000\"/>\n",
              f->x0 - 5, y, f->x0, y);
    sb_printf(b, "<text x=\"%.1f\" y=\"%.2f\" text-anchor=\"end\">%s</text>\n", f->x0 - 8,
              y + 4, lab);
  }
  sb_printf(b, "</g>\n");
}

static void axes_lines(sb* b, const frame* f) {
  sb_printf(b, "<g class=\"axes\" stroke=\"#000000\">\n");
  sb_printf(b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n", f->x0, f->y0, f->x0,
            f->y1);
  sb_printf(b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n", f->x0, f->y1, f->x1,
            f->y1);
  sb_printf(b, "</g>\n");
}

static void legend_entry(sb* b, const frame* f, int i, const char* label, int as_line) {
  double x = f->x1 + 16, y = f->y0 + 8 + 20.0 * i;
  const char* col = kColors[i % NCOLORS];
  if (as_line) {
    const char* dash = kDashes[(i / NCOLORS) % 4];
    sb_printf(b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
              "stroke-width=\"2\"%s%s%s/>\n", x, y, x + 22, y, col, dash[0] ? " stroke-dasharray=\"" : "",
              dash, dash[0] ? "\"" : "");
  } else {
    sb_printf(b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"14\" height=\"12\" fill=\"%s\"/>\n", x,
              y - 6, col);
  }
  /* the legend column is ~150 px wide: cut long labels at a character boundary (the full
   * label stays in a <title> tooltip) */
  const char* lab = label ? label : "";
  size_t cut = 0, chars = 0, n = strlen(lab);
  while (cut < n && chars < 24) {
    cut++;
    while (cut < n && ((unsigned char)lab[cut] & 0xC0) == 0x80) cut++;
    chars++;
  }
  sb_printf(b, "<text x=\"%.1f\" y=\"%.1f\">", x + 28, y + 4);
  if (cut < n) {
    char* shortl = malloc(cut + 4);
    if (!shortl) {
      b->failed = 1;
      return;
    }
    memcpy(shortl, lab, cut);
    memcpy(shortl + cut, "...", 4);
    sb_esc(b, shortl);
    free(shortl);
    sb_printf(b, "<title>");
    sb_esc(b, lab);
    sb_printf(b, "</title>");
  } else {
    sb_esc(b, lab);
  }
  sb_printf(b, "</text>\n");
}

static char* finish(sb* b, size_t* len_out, char* err, size_t errlen) {
  sb_printf(b, "</svg>\n");
  if (b->failed) {
    free(b->p);
    snprintf(err, errlen, "out of memory building the SVG document");
    return NULL;
  }
  if (len_out) *len_out = b->len;
  return b->p;
}

static void frame_init(frame* f, const zp_svg_opts* o, double extra_bottom) {
  f->W = o->width > 0 ? o->width : 760;
  f->H = o->height > 0 ? o->height : 460;
  if (f->W < 300) f->W = 300;
  if (f->H < 200) f->H = 200;
  if (f->W > 20000) f->W = 20000;
  if (f->H > 20000) f->H = 20000;
  f->x0 = 90;
  f->x1 = f->W - 190;
  f->y0 = 50;
  f->y1 = f->H - 60 - extra_bottom;
  if (f->y1 < f->y0 + 60) f->y1 = f->y0 + 60;
}

static void no_data(sb* b, const frame* f) {
  sb_printf(b, "<text class=\"nodata\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" "
            "fill=\"#888888\">no data</text>\n", (f->x0 + f->x1) / 2, (f->y0 + f->y1) / 2);
}

/* ---------------------------------------------------------------- line chart */

char* zp_svg_lines(const zp_svg_opts* o, const zp_svg_line* s, int ns, size_t* len_out,
                   char* err, size_t errlen) {
  zp_svg_opts dflt;
  memset(&dflt, 0, sizeof dflt);
  if (!o) o = &dflt;
  if (ns < 0 || ns > ZP_SVG_MAX_SERIES || (ns > 0 && !s)) {
    snprintf(err, errlen, "line chart: %d series (at most %d)", ns, ZP_SVG_MAX_SERIES);
    return NULL;
  }
  size_t total = 0;
  double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
  for (int i = 0; i < ns; i++) {
    if (s[i].n && (!s[i].x || !s[i].y)) {
      snprintf(err, errlen, "line chart: series %d has no x or y values", i + 1);
      return NULL;
    }
    total += s[i].n;
    if (total > ZP_SVG_MAX_POINTS) {
      snprintf(err, errlen, "line chart: more than %d points", ZP_SVG_MAX_POINTS);
      return NULL;
    }
    for (size_t k = 0; k < s[i].n; k++) {
      double x = s[i].x[k], y = s[i].y[k];
      if (!isfinite(x) || !isfinite(y)) continue;
      xmin = fmin(xmin, x);
      xmax = fmax(xmax, x);
      ymin = fmin(ymin, y);
      ymax = fmax(ymax, y);
    }
  }
  int have = isfinite(xmin);
  if (!have) xmin = 0, xmax = 1, ymin = 0, ymax = 1;
  frame f;
  frame_init(&f, o, 0);
  sb b = {0};
  doc_begin(&b, o, &f);
  double yf, ys, xf, xs;
  int yc, xc;
  if (y_ticks(ymin, ymax, o->y_bytes, &yf, &ys, &yc) || zp_svg_nice_ticks(xmin, xmax, 9, &xf, &xs, &xc)) {
    free(b.p);
    snprintf(err, errlen, "line chart: cannot compute axis ticks");
    return NULL;
  }
  double ylo, yhi;
  y_axis(&b, &f, yf, ys, yc, o->y_bytes, &ylo, &yhi);
  double xlo = xf, xhi = xf + xs * (xc - 1);
  double xmaxabs = fmax(fabs(xlo), fabs(xhi));
  sb_printf(&b, "<g class=\"xaxis\">\n");
  for (int i = 0; i < xc; i++) {
    double v = xf + xs * i;
    double x = f.x0 + (v - xlo) / (xhi - xlo) * (f.x1 - f.x0);
    char lab[64];
    fmt_tick(lab, sizeof lab, v, xs, xmaxabs, 0);
    sb_printf(&b, "<line x1=\"%.2f\" y1=\"%.1f\" x2=\"%.2f\" y2=\"%.1f\" stroke=\"#000000\"/>\n",
              x, f.y1, x, f.y1 + 5);
    sb_printf(&b, "<text x=\"%.2f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", x, f.y1 + 19,
              lab);
  }
  sb_printf(&b, "</g>\n");
  axes_lines(&b, &f);
  if (!have) no_data(&b, &f);
  for (int i = 0; i < ns; i++) {
    const char* col = kColors[i % NCOLORS];
    const char* dash = kDashes[(i / NCOLORS) % 4];
    sb_printf(&b, "<path class=\"series\" fill=\"none\" stroke=\"%s\" stroke-width=\"1.8\"%s%s%s d=\"",
              col, dash[0] ? " stroke-dasharray=\"" : "", dash, dash[0] ? "\"" : "");
    int pen = 0, drawn = 0;
    for (size_t k = 0; k < s[i].n; k++) {
      double xv = s[i].x[k], yv = s[i].y[k];
      if (!isfinite(xv) || !isfinite(yv)) {
        pen = 0;
        continue;
      }
      double px = f.x0 + (xv - xlo) / (xhi - xlo) * (f.x1 - f.x0);
      double py = f.y1 - (yv - ylo) / (yhi - ylo) * (f.y1 - f.y0);
      sb_printf(&b, "%s%c%.2f %.2f", drawn ? " " : "", pen ? 'L' : 'M', px, py);
      pen = 1;
      drawn = 1;
    }
    if (!drawn) sb_printf(&b, "M %.1f %.1f", f.x0, f.y1); /* valid, empty-looking path */
    sb_printf(&b, "\"><title>");
    sb_esc(&b, s[i].label ? s[i].label : "");
    sb_printf(&b, "</title></path>\n");
    if (s[i].n <= 40) { /* markers for short series */
      for (size_t k = 0; k < s[i].n; k++) {
        double xv = s[i].x[k], yv = s[i].y[k];
        if (!isfinite(xv) || !isfinite(yv)) continue;
        double px = f.x0 + (xv - xlo) / (xhi - xlo) * (f.x1 - f.x0);
        double py = f.y1 - (yv - ylo) / (yhi - ylo) * (f.y1 - f.y0);
        sb_printf(&b, "<circle cx=\"%.2f\" cy=\"%.2f\" r=\"2.5\" fill=\"%s\"/>\n", px, py, col);
      }
    }
  }
  sb_printf(&b, "<g class=\"legend\">\n");
  for (int i = 0; i < ns; i++) legend_entry(&b, &f, i, s[i].label, 1);
  sb_printf(&b, "</g>\n");
  return finish(&b, len_out, err, errlen);
}

/* ---------------------------------------------------------------- bar chart */

char* zp_svg_bars(const zp_svg_opts* o, const char* const* groups, int ng,
                  const zp_svg_bar_series* s, int ns, int stacked, size_t* len_out, char* err,
                  size_t errlen) {
  zp_svg_opts dflt;
  memset(&dflt, 0, sizeof dflt);
  if (!o) o = &dflt;
  if (ng < 0 || ng > ZP_SVG_MAX_GROUPS || (ng > 0 && !groups)) {
    snprintf(err, errlen, "bar chart: %d groups (at most %d)", ng, ZP_SVG_MAX_GROUPS);
    return NULL;
  }
  if (ns < 0 || ns > ZP_SVG_MAX_SERIES || (ns > 0 && !s)) {
    snprintf(err, errlen, "bar chart: %d series (at most %d)", ns, ZP_SVG_MAX_SERIES);
    return NULL;
  }
  double lo = 0, hi = 0;
  int have = 0;
  for (int g = 0; g < ng; g++) {
    double sum = 0;
    for (int i = 0; i < ns; i++) {
      if (!s[i].v) {
        snprintf(err, errlen, "bar chart: series %d has no values", i + 1);
        return NULL;
      }
      double v = s[i].v[g];
      if (!isfinite(v)) continue;
      if (stacked && v < 0) {
        snprintf(err, errlen, "stacked bar chart: value %g (series %d, group %d) is negative", v,
                 i + 1, g + 1);
        return NULL;
      }
      have = 1;
      if (stacked) sum += v;
      else {
        lo = fmin(lo, v);
        hi = fmax(hi, v);
      }
    }
    if (stacked) hi = fmax(hi, sum);
  }
  if (!isfinite(hi)) {
    snprintf(err, errlen, "bar chart: values overflow");
    return NULL;
  }
  if (hi == lo) hi = lo + 1;
  /* group labels: rotate when they would not fit side by side */
  size_t maxlab = 0;
  for (int g = 0; g < ng; g++) {
    size_t l = groups[g] ? strlen(groups[g]) : 0;
    if (l > maxlab) maxlab = l;
  }
  frame f;
  frame_init(&f, o, 0);
  double gw = ng ? (f.x1 - f.x0) / ng : (f.x1 - f.x0);
  int rotate = ng > 0 && 6.5 * (double)maxlab > gw - 4;
  if (rotate) {
    double extra = fmin(120.0, 4.0 * (double)(maxlab > 40 ? 40 : maxlab));
    frame_init(&f, o, extra);
  }
  sb b = {0};
  doc_begin(&b, o, &f);
  double yf, ys;
  int yc;
  if (y_ticks(lo, hi, o->y_bytes, &yf, &ys, &yc)) {
    free(b.p);
    snprintf(err, errlen, "bar chart: cannot compute axis ticks");
    return NULL;
  }
  double ylo, yhi;
  y_axis(&b, &f, yf, ys, yc, o->y_bytes, &ylo, &yhi);
  axes_lines(&b, &f);
  if (!have) no_data(&b, &f);
  double zero_y = f.y1 - (0 - ylo) / (yhi - ylo) * (f.y1 - f.y0);
  double inner = gw * 0.8;
  double bw = stacked ? gw * 0.55 : (ns ? inner / ns : inner);
  for (int g = 0; g < ng; g++) {
    double gx = f.x0 + gw * g;
    sb_printf(&b, "<g class=\"group\"><title>");
    sb_esc(&b, groups[g] ? groups[g] : "");
    sb_printf(&b, "</title>\n");
    double acc = 0;
    for (int i = 0; i < ns; i++) {
      double v = s[i].v[g];
      if (!isfinite(v)) continue;
      double base = stacked ? acc : 0, top = base + v;
      if (stacked) acc = top;
      double ya = f.y1 - (base - ylo) / (yhi - ylo) * (f.y1 - f.y0);
      double yb = f.y1 - (top - ylo) / (yhi - ylo) * (f.y1 - f.y0);
      double x = stacked ? gx + (gw - bw) / 2 : gx + gw * 0.1 + bw * i;
      double y = fmin(ya, yb), h = fabs(ya - yb);
      char val[64];
      fmt_value(val, sizeof val, v, o->y_bytes);
      sb_printf(&b, "<rect class=\"bar\" x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" "
                "fill=\"%s\"><title>", x, y, bw, h, kColors[i % NCOLORS]);
      sb_esc(&b, s[i].label ? s[i].label : "");
      sb_printf(&b, ": %s</title></rect>\n", val);
    }
    double cx = gx + gw / 2, ty = f.y1 + 18;
    if (rotate)
      sb_printf(&b, "<text x=\"%.2f\" y=\"%.1f\" text-anchor=\"end\" transform=\"rotate(-35 %.2f "
                "%.1f)\">", cx, ty, cx, ty);
    else
      sb_printf(&b, "<text x=\"%.2f\" y=\"%.1f\" text-anchor=\"middle\">", cx, ty);
    sb_esc(&b, groups[g] ? groups[g] : "");
    sb_printf(&b, "</text>\n</g>\n");
  }
  if (lo < 0)
    sb_printf(&b, "<line x1=\"%.1f\" y1=\"%.2f\" x2=\"%.1f\" y2=\"%.2f\" stroke=\"#000000\"/>\n",
              f.x0, zero_y, f.x1, zero_y);
  sb_printf(&b, "<g class=\"legend\">\n");
  for (int i = 0; i < ns; i++) legend_entry(&b, &f, i, s[i].label, 0);
  sb_printf(&b, "</g>\n");
  return finish(&b, len_out, err, errlen);
}
