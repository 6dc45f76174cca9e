/* open_fails.c: a strategy plugin whose open() fails with a message: the run must report it. */
#include "zp/zp_plugin.h"
static int plan(const zp_host* h, zp_plan* p) { (void)h; (void)p; return ZP_OK; }
static int open_(const zp_host* h, void** st) {
  (void)st;
  h->set_error(h->ctx, "cannot reach the frobnicator (test)");
  return ZP_E_IO;
}
static const zp_strategy_ops ops = {sizeof(zp_strategy_ops), plan, open_, NULL, NULL, NULL, NULL, NULL, NULL, 0};
static const zp_plugin_desc d = {sizeof(zp_plugin_desc), ZP_ABI_MAJOR, ZP_ABI_MINOR, "open_fails", "0.0.1", ZP_KIND_STRATEGY, "test", &ops, NULL, NULL, NULL};
ZP_PLUGIN_EXPORT const zp_plugin_desc* zp_plugin_entry(void) { return &d; }
