/* copy_async.h: device <-> page-locked host copies beside the compute for plugins, through the
 * backend's ABI 1.5 copy_async / copy_wait where it has them, else its synchronous copy_h2d /
 * copy_d2h (the copy is then done when zp_copy_start returns, and its ticket is 0).
 * Invariants: a ticket of 0 is always done; zp_copy_wait with device 0 clears the ticket once the
 * copy is done (nothing is left to wait for), with device 1 it keeps it (the host has not
 * waited). Header-only (plugins never link against the core or each other). */
#ifndef ZP_COPY_ASYNC_H
#define ZP_COPY_ASYNC_H
#include "zp/zp_plugin.h"

static inline int zp_copy_async_ok(const zp_host* h) {
  return ZP_TABLE_HAS(h->dev, copy_async) && ZP_TABLE_HAS(h->dev, copy_wait);
}

/* start copying bytes (h2d 1: host -> device, 0: device -> host) after the work issued so far */
static inline int zp_copy_start(const zp_host* h, void* dst, const void* src, size_t bytes, int h2d,
                                uint64_t* ticket) {
  *ticket = 0;
  if (zp_copy_async_ok(h)) return h->dev->copy_async(h->devb, dst, src, bytes, h2d, ticket);
  return h2d ? h->dev->copy_h2d(h->devb, dst, src, bytes) : h->dev->copy_d2h(h->devb, dst, src, bytes);
}

/* device 0: block until *ticket's copy is done (then *ticket = 0); device 1: later device work
 * runs after it */
static inline int zp_copy_wait(const zp_host* h, uint64_t* ticket, int device) {
  if (!*ticket || !zp_copy_async_ok(h)) return ZP_OK;
  int rc = h->dev->copy_wait(h->devb, *ticket, device);
  if (!device && !rc) *ticket = 0;
  return rc;
}
#endif
