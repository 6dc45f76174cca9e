/* plugin.c: see plugin.h. */
#include "plugin.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char* zp_plugin_kind_name(zp_plugin_kind k) {
  switch (k) {
    case ZP_KIND_STRATEGY: return "strategy";
    case ZP_KIND_TIER: return "tier";
    case ZP_KIND_PARALLEL: return "parallel";
    case ZP_KIND_BACKEND: return "backend";
  }
  return "unknown";
}

static void exe_dir(char* buf, size_t n) {
  char p[PATH_MAX];
  ssize_t r = readlink("/proc/self/exe", p, sizeof p - 1);
  if (r <= 0) { buf[0] = 0; return; }
  p[r] = 0;
  char* s = strrchr(p, '/');
  if (s) *s = 0;
  snprintf(buf, n, "%s", p);
}

/* The install's plugin directory relative to the directory of the zp executable (set by the
 * build from the install layout; "../lib/zp/plugins" for the default one). */
#ifndef ZP_PLUGIN_REL_DIR
#define ZP_PLUGIN_REL_DIR "../lib/zp/plugins"
#endif

void zp_plugin_search_path(char* buf, size_t n) {
  size_t off = 0;
  buf[0] = 0;
  const char* env = getenv("ZP_PLUGIN_PATH");
  if (env && *env) off += (size_t)snprintf(buf + off, n - off, "%s", env);
  char d[PATH_MAX];
  exe_dir(d, sizeof d);
  if (d[0] && off < n) off += (size_t)snprintf(buf + off, n - off, "%s%s/plugins:%s/" ZP_PLUGIN_REL_DIR, off ? ":" : "", d, d);
  if (off < n) snprintf(buf + off, n - off, "%s%s", off ? ":" : "", ZP_PLUGIN_INSTALL_DIR);
}

static int is_file(const char* p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static int resolve(const char* name, const char* base_dir, char* out, size_t n, char* err, size_t errlen) {
  if (strchr(name, '/') || (strlen(name) > 3 && strcmp(name + strlen(name) - 3, ".so") == 0)) {
    if (name[0] != '/' && base_dir && base_dir[0] && strchr(name, '/')) snprintf(out, n, "%s/%s", base_dir, name);
    else snprintf(out, n, "%s", name);
    if (!strchr(out, '/')) {
      /* "foo.so" without a directory: refuse rather than let dlopen search the cwd/ld path */
      snprintf(err, errlen, "plugin '%s': give a path with a directory (e.g. ./%s); the current directory is never searched implicitly", name, name);
      return ZP_E_INVALID;
    }
    if (!is_file(out)) {
      snprintf(err, errlen, "plugin '%s': no such file (%s)", name, out);
      return ZP_E_IO;
    }
    return ZP_OK;
  }
  for (const char* c = name; *c; c++)
    if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '_' || *c == '-')) {
      snprintf(err, errlen, "plugin name '%s' has invalid characters (use a name like stage3 or a path)", name);
      return ZP_E_INVALID;
    }
  char sp[8192];
  zp_plugin_search_path(sp, sizeof sp);
  char* save = NULL;
  for (char* d = strtok_r(sp, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
    if (!*d) continue;
    snprintf(out, n, "%s/zp_%s.so", d, name);
    if (is_file(out)) return ZP_OK;
  }
  zp_plugin_search_path(sp, sizeof sp);
  snprintf(err, errlen, "plugin '%s' not found (looked for zp_%s.so in %s)", name, name, sp);
  return ZP_E_IO;
}

int zp_plugin_open(const char* name, zp_plugin_kind want_kind, const char* base_dir,
                   zp_plugin* out, char* err, size_t errlen) {
  memset(out, 0, sizeof *out);
  int rc = resolve(name, base_dir, out->path, sizeof out->path, err, errlen);
  if (rc) return rc;
  void* h = dlopen(out->path, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    snprintf(err, errlen, "plugin %s: cannot load: %s", out->path, dlerror());
    return ZP_E_IO;
  }
  dlerror();
  void* sym = dlsym(h, ZP_PLUGIN_ENTRY_NAME);
  if (!sym) {
    snprintf(err, errlen, "plugin %s: not a zeroplace plugin: missing entry symbol '%s'", out->path, ZP_PLUGIN_ENTRY_NAME);
    dlclose(h);
    return ZP_E_ABI;
  }
  zp_plugin_entry_fn fn;
  memcpy(&fn, &sym, sizeof fn);
  const zp_plugin_desc* d = fn();
  if (!d) {
    snprintf(err, errlen, "plugin %s: entry function returned no descriptor", out->path);
    dlclose(h);
    return ZP_E_ABI;
  }
  if (d->abi_major != ZP_ABI_MAJOR) {
    snprintf(err, errlen,
             "plugin %s: built for plugin ABI %u.%u, but this zp provides ABI %d.%d; rebuild it against this zp's zp_plugin.h",
             out->path, d->abi_major, d->abi_minor, ZP_ABI_MAJOR, ZP_ABI_MINOR);
    dlclose(h);
    return ZP_E_ABI;
  }
  if (d->struct_size < offsetof(zp_plugin_desc, backend) + sizeof(void*)) {
    snprintf(err, errlen, "plugin %s: descriptor too small (%zu bytes)", out->path, d->struct_size);
    dlclose(h);
    return ZP_E_ABI;
  }
  if (d->abi_major == ZP_ABI_MAJOR && d->abi_minor > ZP_ABI_MINOR) {
    snprintf(err, errlen, "plugin %s: needs plugin ABI %u.%u, newer than this zp's %d.%d; upgrade zp",
             out->path, d->abi_major, d->abi_minor, ZP_ABI_MAJOR, ZP_ABI_MINOR);
    dlclose(h);
    return ZP_E_ABI;
  }
  if (!d->name || !d->version) {
    snprintf(err, errlen, "plugin %s: descriptor has no name or version", out->path);
    dlclose(h);
    return ZP_E_ABI;
  }
  const void* table = NULL;
  size_t tsize = 0;
  switch (d->kind) {
    case ZP_KIND_STRATEGY: table = d->strategy; tsize = d->strategy ? d->strategy->struct_size : 0; break;
    case ZP_KIND_TIER: table = d->tier; tsize = d->tier ? d->tier->struct_size : 0; break;
    case ZP_KIND_PARALLEL: table = d->parallel; tsize = d->parallel ? d->parallel->struct_size : 0; break;
    case ZP_KIND_BACKEND: table = d->backend; tsize = d->backend ? d->backend->struct_size : 0; break;
    default:
      snprintf(err, errlen, "plugin %s: unknown kind %d", out->path, (int)d->kind);
      dlclose(h);
      return ZP_E_ABI;
  }
  if (!table || tsize < 2 * sizeof(void*)) {
    snprintf(err, errlen, "plugin %s: kind %s but no %s method table", out->path, zp_plugin_kind_name(d->kind), zp_plugin_kind_name(d->kind));
    dlclose(h);
    return ZP_E_ABI;
  }
  /* a table of major 1 holds at least the 1.0 members (later 1.x members are checked where used) */
  size_t min1 = d->kind == ZP_KIND_STRATEGY ? offsetof(zp_strategy_ops, step) + sizeof(void*)
              : d->kind == ZP_KIND_TIER     ? offsetof(zp_tier_ops, sync) + sizeof(void*)
              : d->kind == ZP_KIND_PARALLEL ? offsetof(zp_parallel_ops, close) + sizeof(void*)
                                            : offsetof(zp_backend_ops, softmax_xent_vp) + sizeof(void*);
  if (tsize < min1) {
    snprintf(err, errlen, "plugin %s: its %s table is %zu bytes, smaller than the ABI 1.0 table (%zu bytes): it was not built "
             "against a 1.x zp_plugin.h", out->path, zp_plugin_kind_name(d->kind), tsize, min1);
    dlclose(h);
    return ZP_E_ABI;
  }
  if (want_kind && d->kind != want_kind) {
    snprintf(err, errlen, "plugin %s ('%s') is a %s plugin, but a %s plugin is needed here", out->path, d->name,
             zp_plugin_kind_name(d->kind), zp_plugin_kind_name(want_kind));
    dlclose(h);
    return ZP_E_INVALID;
  }
  out->handle = h;
  out->desc = d;
  return ZP_OK;
}

void zp_plugin_close(zp_plugin* p) {
  if (p->handle) dlclose(p->handle);
  memset(p, 0, sizeof *p);
}

static int cmp_str(const void* a, const void* b) { return strcmp(*(char* const*)a, *(char* const*)b); }

int zp_plugin_list(FILE* f) {
  char sp[8192];
  zp_plugin_search_path(sp, sizeof sp);
  fprintf(f, "search path: %s\n", sp);
  fprintf(f, "%-14s %-9s %-8s %-6s %s\n", "name", "kind", "version", "abi", "path");
  int count = 0;
  char* seen[256];
  int nseen = 0;
  char* save = NULL;
  for (char* d = strtok_r(sp, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
    DIR* dir = opendir(d);
    if (!dir) continue;
    char* names[256];
    int nn = 0;
    struct dirent* e;
    while ((e = readdir(dir)) && nn < 256) {
      size_t l = strlen(e->d_name);
      if (strncmp(e->d_name, "zp_", 3) == 0 && l > 3 && strcmp(e->d_name + l - 3, ".so") == 0)
        names[nn++] = strdup(e->d_name);
    }
    closedir(dir);
    qsort(names, (size_t)nn, sizeof names[0], cmp_str);
    for (int i = 0; i < nn; i++) {
      int dup = 0;
      for (int j = 0; j < nseen; j++) if (strcmp(seen[j], names[i]) == 0) dup = 1;
      char path[PATH_MAX];
      snprintf(path, sizeof path, "%s/%s", d, names[i]);
      char real[PATH_MAX];
      if (!realpath(path, real)) snprintf(real, sizeof real, "%s", path);
      if (dup) { free(names[i]); continue; }
      if (nseen < 256) seen[nseen++] = names[i]; else free(names[i]);
      zp_plugin p;
      char err[1024];
      if (zp_plugin_open(real, 0, NULL, &p, err, sizeof err) == ZP_OK) {
        char abi[16];
        snprintf(abi, sizeof abi, "%u.%u", p.desc->abi_major, p.desc->abi_minor);
        fprintf(f, "%-14s %-9s %-8s %-6s %s\n", p.desc->name, zp_plugin_kind_name(p.desc->kind), p.desc->version, abi, real);
        if (p.desc->summary) fprintf(f, "%-14s   %s\n", "", p.desc->summary);
        zp_plugin_close(&p);
      } else {
        fprintf(f, "%-14s %-9s %-8s %-6s %s\n  error: %s\n", "?", "?", "?", "?", real, err);
      }
      count++;
    }
  }
  for (int j = 0; j < nseen; j++) free(seen[j]);
  return count;
}
