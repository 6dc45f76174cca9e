/* seterr.h: the core's one message formatter for `char* err, size_t errlen` out-parameters.
 * Invariant: a NULL or zero-length buffer is left alone (callers may discard messages); the
 * message is truncated, never overflowed, and always NUL-terminated. Header-only so that a
 * fuzz target compiling a single core file needs nothing else. */
#ifndef ZP_SETERR_H
#define ZP_SETERR_H
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

static inline void seterr(char* err, size_t errlen, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
static inline void seterr(char* err, size_t errlen, const char* fmt, ...) {
  if (!err || !errlen) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}
#endif
