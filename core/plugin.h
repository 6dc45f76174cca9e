/* plugin.h: finding, loading and checking plugins (dlopen RTLD_NOW|RTLD_LOCAL).
 * Invariants: a plugin is searched for in (1) an explicit path given in the config (anything
 * with a '/' or ending in ".so"), (2) the directories of ZP_PLUGIN_PATH, (3) the install's
 * plugin directory next to the zp executable (<exe>/plugins in a build tree,
 * <exe>/../lib/zp/plugins when installed: the relative path comes from the install layout, so
 * a relocated install still finds its plugins), (4) the configured install's absolute plugin
 * directory (ZP_PLUGIN_INSTALL_DIR) — never the current directory implicitly. A loaded
 * descriptor has passed every check (entry symbol, struct size, ABI major, kind, method table);
 * otherwise nothing stays loaded and the error names the path and the reason. */
#ifndef ZP_PLUGIN_LOADER_H
#define ZP_PLUGIN_LOADER_H
#include <stddef.h>
#include <stdio.h>

#include "zp/zp_plugin.h"

typedef struct zp_plugin {
  void* handle;
  const zp_plugin_desc* desc;
  char path[1024];
} zp_plugin;

/* name: "stage3" (looked up as zp_stage3.so along the search path) or a path.
 * want_kind: 0 = any. base_dir: directory relative paths resolve against (config's dir). */
int zp_plugin_open(const char* name, zp_plugin_kind want_kind, const char* base_dir,
                   zp_plugin* out, char* err, size_t errlen);
void zp_plugin_close(zp_plugin* p);
const char* zp_plugin_kind_name(zp_plugin_kind k);
/* The search directories, in order, ':'-joined into buf. */
void zp_plugin_search_path(char* buf, size_t n);
/* `zp plugins`: list every zp_*.so found along the search path. Returns the count. */
int zp_plugin_list(FILE* f);
#endif
