/* grad_buckets.h: gradient all-reduce in buckets during the backward, shared by the replicated
 * strategy (core/replicated.c) and stage 1 (header-only: compiled into each; only host services).
 * Groups arrive in reverse order as their backward ends (zp_gb_add); consecutive groups whose
 * GRAD buffers are contiguous (the core's arenas make them so) form a bucket, all-reduced
 * (averaged) as one once it reaches bucket_bytes, a non-contiguous group arrives, or the caller
 * says so (the last group). Each bucket's all-reduce is started (ABI 1.9 allreduce_start, else
 * the plain all-reduce) and finished when the next one starts (zp_gb_flush) or at the step
 * (zp_gb_finish): the wait, then on_final(ctx, g) for each of its groups. A bucket with nothing
 * in flight (ticket 0: one rank, or a plain all-reduce) is finished at once. Reductions are
 * element-wise, so the bucketing never changes the numbers. */
#ifndef ZP_GRAD_BUCKETS_H
#define ZP_GRAD_BUCKETS_H
#include <stddef.h>
#include <stdint.h>

#include "zp/zp_plugin.h"

typedef int (*zp_gb_final_fn)(void* ctx, int group); /* the group's gradient is reduced */

typedef struct {
  const zp_host* h;
  const zp_group_info* info; /* [groups] */
  size_t bucket_bytes;
  zp_gb_final_fn on_final;
  void* ctx;
  int lo, hi;       /* pending bucket: groups lo..hi (lo <= hi), or lo = -1 */
  size_t pending;   /* its bytes */
  int flo, fhi;     /* the bucket started last (flo = -1: none) and its ticket */
  uint64_t fticket;
} zp_grad_buckets;

static inline void zp_gb_init(zp_grad_buckets* b, const zp_host* h, const zp_group_info* info, size_t bucket_bytes,
                              zp_gb_final_fn on_final, void* ctx) {
  b->h = h;
  b->info = info;
  b->bucket_bytes = bucket_bytes;
  b->on_final = on_final;
  b->ctx = ctx;
  b->lo = b->hi = b->flo = b->fhi = -1;
  b->pending = 0;
  b->fticket = 0;
}

/* the bucket started last: wait for its all-reduce, then its groups are final */
static inline int zp_gb_finish(zp_grad_buckets* b) {
  if (b->flo < 0) return ZP_OK;
  const zp_host* h = b->h;
  const int lo = b->flo, hi = b->fhi;
  b->flo = b->fhi = -1;
  int rc = ZP_TABLE_HAS(h, wait_started) ? h->wait_started(h->ctx, b->fticket) : ZP_OK;
  for (int g = lo; !rc && g <= hi; g++) rc = b->on_final(b->ctx, g);
  return rc;
}

/* start the pending bucket's all-reduce, then finish the one started before it */
static inline int zp_gb_flush(zp_grad_buckets* b) {
  if (b->lo < 0) return ZP_OK;
  const zp_host* h = b->h;
  const zp_group_info* first = &b->info[b->lo];
  const zp_dtype gdt = first->dtype[ZP_CAT_GRAD];
  const size_t elems = b->pending / zp_dtype_size(gdt);
  uint64_t t = 0;
  int rc = ZP_TABLE_HAS(h, allreduce_start)
               ? h->allreduce_start(h->ctx, first->buf[ZP_CAT_GRAD], elems, gdt, ZP_RED_AVG, &t)
               : h->allreduce(h->ctx, first->buf[ZP_CAT_GRAD], elems, gdt, ZP_RED_AVG);
  if (!rc) rc = zp_gb_finish(b);
  b->flo = b->lo;
  b->fhi = b->hi;
  b->fticket = t;
  b->lo = b->hi = -1;
  b->pending = 0;
  if (!rc && t == 0) rc = zp_gb_finish(b); /* nothing in flight: final now */
  return rc;
}

/* group g's backward is done (groups arrive in reverse order); last != 0: flush after it */
static inline int zp_gb_add(zp_grad_buckets* b, int g, int last) {
  const zp_group_info* in = &b->info[g];
  const size_t bytes = in->bytes[ZP_CAT_GRAD];
  if (b->lo >= 0 && (const char*)in->buf[ZP_CAT_GRAD] + bytes != (const char*)b->info[b->lo].buf[ZP_CAT_GRAD]) {
    int rc = zp_gb_flush(b); /* not contiguous with the bucket: reduce what is pending first */
    if (rc) return rc;
  }
  if (b->lo < 0) b->hi = g;
  b->lo = g;
  b->pending += bytes;
  return b->pending >= b->bucket_bytes || last ? zp_gb_flush(b) : ZP_OK;
}
#endif
