/* trace.h: per-rank timeline of compute, communication and I/O as Chrome trace JSON
 * (chrome://tracing, Perfetto). Invariants: disabled tracing costs one branch per span;
 * events live in a preallocated ring (no allocation while tracing); the file is written once
 * at the end (or on a clean signal exit). Times are host wall-clock microseconds; on a GPU
 * backend spans measure host-side issue unless the caller synchronised. */
#ifndef ZP_TRACE_H
#define ZP_TRACE_H
#include <stddef.h>
#include <stdint.h>

typedef enum { ZP_TR_COMPUTE = 0, ZP_TR_COMM = 1, ZP_TR_IO = 2, ZP_TR_STEP = 3 } zp_trace_cat;

void zp_trace_enable(int rank, size_t max_events);
int zp_trace_enabled(void);
double zp_now_us(void);
/* record a finished span [t0, now) */
void zp_trace_span(zp_trace_cat cat, const char* name, int arg, double t0_us);
int zp_trace_write(const char* path);
void zp_trace_disable(void);
#endif
