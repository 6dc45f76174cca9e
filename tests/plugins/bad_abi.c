/* bad_abi.c: a test plugin built for a future ABI major (99): must be refused, naming both. */
#include "zp/zp_plugin.h"
static int plan(const zp_host* h, zp_plan* p) { (void)h; (void)p; return ZP_OK; }
static const zp_strategy_ops ops = {sizeof(zp_strategy_ops), plan, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0};
static const zp_plugin_desc d = {sizeof(zp_plugin_desc), 99, 3, "bad_abi", "9.9.9", ZP_KIND_STRATEGY, "test", &ops, NULL, NULL, NULL};
ZP_PLUGIN_EXPORT const zp_plugin_desc* zp_plugin_entry(void) { return &d; }
