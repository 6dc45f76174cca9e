/* svg_plot.h: small, dependency-free SVG 1.1 charts for experiment outputs (`zp run`):
 * line charts (loss curves) and grouped or stacked bar charts (memory by category per stage).
 *
 * Invariants:
 * - The output is a complete, well-formed XML document (SVG 1.1, UTF-8): every label goes
 *   through zp_svg_escape (XML special characters escaped, control characters and invalid
 *   UTF-8 replaced), every number written is finite.
 * - Non-finite data (nan, inf) is never drawn: a line breaks at such a point, a bar is left
 *   out. Empty inputs still give a valid chart (axes and a "no data" note).
 * - Each line series is one <path class="series">, each bar group one <g class="group"> whose
 *   first child is <title>LABEL</title>, each bar one <rect class="bar">, so tools and tests
 *   can count them.
 * - Nothing here touches files or global state; results are malloc'd strings the caller frees.
 */
#ifndef ZP_SVG_PLOT_H
#define ZP_SVG_PLOT_H
#include <stddef.h>

typedef struct {
  const char* title;  /* may be NULL */
  const char* xlabel; /* may be NULL */
  const char* ylabel; /* may be NULL */
  int width, height;  /* pixels; 0 = 760 x 460 */
  int y_bytes;        /* 1: y tick labels as B / KiB / MiB / GiB */
} zp_svg_opts;

typedef struct {
  const char* label;
  const double* x;
  const double* y;
  size_t n;
} zp_svg_line;

typedef struct {
  const char* label;
  const double* v; /* one value per group */
} zp_svg_bar_series;

/* Limits (refused beyond): series per chart, points per chart, groups per bar chart. */
#define ZP_SVG_MAX_SERIES 64
#define ZP_SVG_MAX_POINTS 2000000
#define ZP_SVG_MAX_GROUPS 1000

/* Line chart. Returns a malloc'd NUL-terminated document (*len_out = its length when
 * len_out is not NULL), or NULL with a message in err. */
char* zp_svg_lines(const zp_svg_opts* o, const zp_svg_line* s, int ns, size_t* len_out,
                   char* err, size_t errlen);

/* Bar chart: ng groups along x, ns series per group; stacked = 1 stacks the series of a group
 * in one bar (values must then be >= 0), else they stand side by side. */
char* zp_svg_bars(const zp_svg_opts* o, const char* const* groups, int ng,
                  const zp_svg_bar_series* s, int ns, int stacked, size_t* len_out, char* err,
                  size_t errlen);

/* XML-escapes src (up to NUL) into dst (always NUL-terminated when dstlen > 0): & < > " '
 * become entities, control characters other than tab/newline and bytes that are not valid
 * UTF-8 become '?'. Returns the length the full escape needs (excluding the NUL). */
size_t zp_svg_escape(char* dst, size_t dstlen, const char* src);

/* "Nice" axis ticks covering [lo, hi] with at most max_ticks ticks (>= 2): first tick, step
 * and count such that first <= lo and first + (count-1)*step >= hi; step is 1, 2 or 5 times a
 * power of ten. lo == hi is widened. Returns 0, or -1 for non-finite input. */
int zp_svg_nice_ticks(double lo, double hi, int max_ticks, double* first, double* step,
                      int* count);

#endif
