/* wrong_kind.c: a tier plugin named where a strategy is expected. */
#include "zp/zp_plugin.h"
static int plan(const zp_host* h, zp_plan* p) { (void)h; (void)p; return ZP_OK; }
static int open_(const zp_host* h, void** st) { (void)h; (void)st; return ZP_OK; }
static void close_(void* s) { (void)s; }
static const zp_tier_ops ops = {.struct_size = sizeof(zp_tier_ops), .tier = ZP_TIER_CPU, .open = open_, .close = close_, .plan = plan};
static const zp_plugin_desc d = {sizeof(zp_plugin_desc), ZP_ABI_MAJOR, ZP_ABI_MINOR, "wrong_kind", "0.0.1", ZP_KIND_TIER, "test", NULL, &ops, NULL, NULL};
ZP_PLUGIN_EXPORT const zp_plugin_desc* zp_plugin_entry(void) { return &d; }
