/* trace.c: see trace.h. */
#include "trace.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
  double ts, dur;
  const char* name; /* static strings only */
  int arg;
  unsigned char cat;
} ev_t;

static ev_t* g_ev;
static size_t g_n, g_cap;
static int g_rank, g_on;
static size_t g_dropped;

double zp_now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e6 + (double)t.tv_nsec * 1e-3;
}

void zp_trace_enable(int rank, size_t max_events) {
  free(g_ev);
  g_ev = calloc(max_events ? max_events : 1, sizeof(ev_t));
  g_cap = g_ev ? max_events : 0;
  g_n = 0;
  g_dropped = 0;
  g_rank = rank;
  g_on = g_ev != NULL;
}

int zp_trace_enabled(void) { return g_on; }

void zp_trace_span(zp_trace_cat cat, const char* name, int arg, double t0) {
  if (!g_on) return;
  if (g_n >= g_cap) { g_dropped++; return; }
  ev_t* e = &g_ev[g_n++];
  e->ts = t0;
  e->dur = zp_now_us() - t0;
  e->name = name;
  e->arg = arg;
  e->cat = (unsigned char)cat;
}

int zp_trace_write(const char* path) {
  if (!g_ev) return 0;
  FILE* f = fopen(path, "w");
  if (!f) return -1;
  static const char* cats[] = {"compute", "comm", "io", "step"};
  fprintf(f, "{\"displayTimeUnit\":\"ms\",\"otherData\":{\"rank\":%d,\"dropped_events\":%zu},\"traceEvents\":[\n", g_rank, g_dropped);
  fprintf(f, "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":%d,\"args\":{\"name\":\"rank %d\"}}", g_rank, g_rank);
  double t0 = g_n ? g_ev[0].ts : 0; /* spans are recorded when they end: take the earliest start */
  for (size_t i = 1; i < g_n; i++)
    if (g_ev[i].ts < t0) t0 = g_ev[i].ts;
  for (size_t i = 0; i < g_n; i++) {
    ev_t* e = &g_ev[i];
    fprintf(f, ",\n{\"name\":\"%s\",\"cat\":\"%s\",\"ph\":\"X\",\"pid\":%d,\"tid\":%d,\"ts\":%.3f,\"dur\":%.3f,\"args\":{\"i\":%d}}",
            e->name, cats[e->cat], g_rank, (int)e->cat, e->ts - t0, e->dur, e->arg);
  }
  fprintf(f, "\n]}\n");
  int rc = ferror(f) ? -1 : 0;
  if (fclose(f)) rc = -1;
  return rc;
}

void zp_trace_disable(void) {
  free(g_ev);
  g_ev = NULL;
  g_n = g_cap = 0;
  g_on = 0;
}
