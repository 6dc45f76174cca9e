/* zt.h: the unit-test harness (header only). Each test binary calls ZT_RUN for its cases and
 * returns zt_done(), which prints "N passed, N failed" and exits non-zero on any failure.
 * Checks compare real results; CHECK_NEAR takes an absolute+relative tolerance. */
#ifndef ZT_H
#define ZT_H
#include <math.h>
#include <stdio.h>
#include <string.h>
static int zt_pass_, zt_fail_, zt_cur_fail_;
#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c); zt_cur_fail_++; } } while (0)
#define CHECK_MSG(c, ...) do { if (!(c)) { fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #c); fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); zt_cur_fail_++; } } while (0)
#define CHECK_EQ_INT(a, b) do { long long a_ = (long long)(a), b_ = (long long)(b); if (a_ != b_) { fprintf(stderr, "%s:%d: %s == %s failed: %lld vs %lld\n", __FILE__, __LINE__, #a, #b, a_, b_); zt_cur_fail_++; } } while (0)
#define CHECK_NEAR(a, b, atol, rtol) do { double a_ = (double)(a), b_ = (double)(b); if (!(fabs(a_ - b_) <= (atol) + (rtol) * fabs(b_))) { fprintf(stderr, "%s:%d: %s ~ %s failed: %.9g vs %.9g\n", __FILE__, __LINE__, #a, #b, a_, b_); zt_cur_fail_++; } } while (0)
#define CHECK_STR_CONTAINS(hay, needle) do { const char* h_ = (hay); if (!h_ || !strstr(h_, (needle))) { fprintf(stderr, "%s:%d: expected \"%s\" to contain \"%s\"\n", __FILE__, __LINE__, h_ ? h_ : "(null)", needle); zt_cur_fail_++; } } while (0)
#define ZT_RUN(fn) do { zt_cur_fail_ = 0; fn(); if (zt_cur_fail_) { zt_fail_++; fprintf(stderr, "FAIL %s\n", #fn); } else { zt_pass_++; fprintf(stderr, "ok   %s\n", #fn); } } while (0)
static inline int zt_done(void) { printf("%d passed, %d failed\n", zt_pass_, zt_fail_); return zt_fail_ ? 1 : 0; }
#endif
