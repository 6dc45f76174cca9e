/* no_entry.c: a shared object without the entry symbol: must be refused as "not a plugin". */
#include "zp/zp_plugin.h"
ZP_PLUGIN_EXPORT int zp_something_else(void) { return 42; }
