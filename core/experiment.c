/* experiment.c: the `zp` Lua library of experiment scripts and the driver that runs them
 * (`zp run`; contract in experiment.h, user documentation in docs/lua-api.md).
 *
 * Layout: guards (userdata with __gc owning C resources) -> output files -> config objects
 * -> zp.plan -> zp.train (fork/exec, wait, metrics.jsonl, log) -> tables (CSV, Markdown) ->
 * plots (svg_plot.c) -> installation and zp_experiment_run.
 *
 * Invariants (beyond experiment.h):
 * - Every zp.* C function receives the zp_exp as upvalue 1 (light userdata); no global state
 *   except the signal flag zp.train needs while it waits for a child.
 * - No Lua API call that can raise runs while a C resource is held outside a guard: configs
 *   and runs live inside guard userdata, C buffers and file descriptors too; json_t values
 *   are only held across code that makes no Lua calls.
 * - zp.train's child gets the driver's environment and working directory, stdin from
 *   /dev/null and stdout+stderr in OUT/runs/<name>/log.txt; the driver never runs a shell.
 */
#define _GNU_SOURCE
#include "experiment.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <lauxlib.h>
#include <limits.h>
#include <lua.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "comm.h"
#include "config.h"
#include "ledger.h"
#include "lua_host.h"
#include "runtime.h"
#include "svg_plot.h"

typedef struct zp_exp {
  char out_abs[PATH_MAX];    /* resolved output directory */
  int out_fd;                /* O_DIRECTORY descriptor of it */
  char script_dir[PATH_MAX]; /* resolved directory of the script */
  char exe[PATH_MAX];        /* zp binary for children */
  const char* const* sets;
  int n_sets;
  int quiet;
  long long bytes_written;
  int files_written;
} zp_exp;

#define MT_CONFIG "zp.config"
#define MT_CFGGUARD "zp.cfgguard"
#define MT_RUNGUARD "zp.runguard"
#define MT_BUF "zp.buf"
#define MT_FD "zp.fd"

static const char* const kCat[ZP_CAT_COUNT] = {"PARAM", "GRAD", "MASTER", "OPTIM", "ACT", "BUFFER"};
static const char* const kTier[ZP_TIER_COUNT] = {"gpu", "cpu", "nvme"};

static zp_exp* getX(lua_State* L) { return (zp_exp*)lua_touserdata(L, lua_upvalueindex(1)); }

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---------------------------------------------------------------- names */

int zp_exp_check_name(const char* name, size_t len, char* why, size_t whylen) {
  const char* reason = NULL;
  if (!name || len == 0) reason = "empty name";
  else if (len > ZP_EXP_NAME_MAX) reason = "name longer than 100 characters";
  else if (memchr(name, 0, len)) reason = "NUL character in the name";
  else if (memchr(name, '/', len)) reason = "'/' in the name";
  else if (name[0] == '.' || name[0] == '-') reason = "name starts with '.' or '-'";
  else {
    for (size_t i = 0; i < len && !reason; i++) {
      char c = name[i];
      if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '.' || c == '_' || c == '-'))
        reason = "characters other than letters, digits, '.', '_' and '-'";
      else if (c == '.' && i + 1 < len && name[i + 1] == '.')
        reason = "'..' in the name";
    }
  }
  if (reason) {
    if (why && whylen) snprintf(why, whylen, "%s", reason);
    return -1;
  }
  return 0;
}

/* Checks name (string at idx) and raises the documented refusal. Returns the name. */
static const char* check_name_arg(lua_State* L, int idx, const char* fn, const char* ext,
                                  char* out, size_t outlen) {
  size_t len;
  const char* s = luaL_checklstring(L, idx, &len);
  char why[128];
  size_t el = ext ? strlen(ext) : 0;
  int has_ext = !ext || (len >= el && memcmp(s + len - el, ext, el) == 0);
  if (zp_exp_check_name(s, len, why, sizeof why) != 0 || len + (has_ext ? 0 : el) > ZP_EXP_NAME_MAX) {
    /* %q-like quoting of arbitrary bytes: show a safe prefix */
    char shown[64];
    size_t k = 0;
    for (size_t i = 0; i < len && k + 5 < sizeof shown; i++) {
      unsigned char c = (unsigned char)s[i];
      if (c >= 0x20 && c < 0x7f) shown[k++] = (char)c;
      else k += (size_t)snprintf(shown + k, sizeof shown - k, "\\x%02x", c);
    }
    shown[k] = 0;
    if (zp_exp_check_name(s, len, why, sizeof why) == 0) snprintf(why, sizeof why, "name too long");
    luaL_error(L, "%s: refused: '%s' is outside the output directory or not a plain file name "
               "(%s; use letters, digits, '.', '_', '-', no '/' and no '..')", fn, shown, why);
    return NULL;
  }
  snprintf(out, outlen, "%s%s", s, has_ext ? "" : ext);
  return out;
}

/* ---------------------------------------------------------------- guards */

typedef struct {
  int live;
  zp_config c;
} cfg_guard;

static int cfgguard_gc(lua_State* L) {
  cfg_guard* g = (cfg_guard*)luaL_checkudata(L, 1, MT_CFGGUARD);
  if (g->live) zp_config_free(&g->c);
  g->live = 0;
  return 0;
}

static cfg_guard* push_cfg_guard(lua_State* L) {
  cfg_guard* g = (cfg_guard*)lua_newuserdatauv(L, sizeof *g, 1);
  memset(g, 0, sizeof *g);
  luaL_setmetatable(L, MT_CFGGUARD);
  return g;
}

static void cfg_guard_release(cfg_guard* g) {
  if (g->live) zp_config_free(&g->c);
  g->live = 0;
}

typedef struct {
  int live;
  zp_run r;
} run_guard;

static int runguard_gc(lua_State* L) {
  run_guard* g = (run_guard*)luaL_checkudata(L, 1, MT_RUNGUARD);
  if (g->live) zp_run_close(&g->r);
  g->live = 0;
  return 0;
}

/* Growable C byte buffer owned by a userdata (freed by __gc on any error path). */
typedef struct {
  char* p;
  size_t len, cap;
  size_t limit;
} membuf;

static int buf_gc(lua_State* L) {
  membuf* b = (membuf*)luaL_checkudata(L, 1, MT_BUF);
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
  return 0;
}

/* A file descriptor owned by a userdata (closed by __gc, or explicitly by fd_close). */
typedef struct {
  int fd;
} fd_guard;

static int fd_gc(lua_State* L) {
  fd_guard* f = (fd_guard*)luaL_checkudata(L, 1, MT_FD);
  if (f->fd >= 0) close(f->fd);
  f->fd = -1;
  return 0;
}

static fd_guard* push_fd(lua_State* L) {
  fd_guard* f = (fd_guard*)lua_newuserdatauv(L, sizeof *f, 0);
  f->fd = -1;
  luaL_setmetatable(L, MT_FD);
  return f;
}

static membuf* push_buf(lua_State* L, size_t limit) {
  membuf* b = (membuf*)lua_newuserdatauv(L, sizeof *b, 0);
  memset(b, 0, sizeof *b);
  b->limit = limit;
  luaL_setmetatable(L, MT_BUF);
  return b;
}

static void buf_add(lua_State* L, membuf* b, const char* s, size_t n) {
  if (b->len + n + 1 > b->limit) luaL_error(L, "output file larger than %d MiB (the limit per file)", (int)(b->limit >> 20));
  if (b->len + n + 1 > b->cap) {
    size_t nc = b->cap ? b->cap : 4096;
    while (nc < b->len + n + 1) nc *= 2;
    char* np = (char*)realloc(b->p, nc);
    if (!np) luaL_error(L, "out of memory");
    b->p = np;
    b->cap = nc;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = 0;
}

static void buf_str(lua_State* L, membuf* b, const char* s) { buf_add(L, b, s, strlen(s)); }

/* ---------------------------------------------------------------- output files */

/* Writes data to name (already checked) inside the output directory. 0 or -1 + err. */
static int write_out(zp_exp* X, const char* name, const char* data, size_t len, char* err,
                     size_t errlen) {
  if (len > ZP_EXP_MAX_FILE_BYTES) {
    snprintf(err, errlen, "%s: %zu bytes is over the %zu MiB limit per file", name, len,
             ZP_EXP_MAX_FILE_BYTES >> 20);
    return -1;
  }
  if (X->files_written >= ZP_EXP_MAX_FILES || X->bytes_written + (long long)len > ZP_EXP_MAX_TOTAL_BYTES) {
    snprintf(err, errlen, "%s: refused: the experiment already wrote %d files / %lld bytes "
             "(limits %d files, %lld bytes)", name, X->files_written, X->bytes_written,
             ZP_EXP_MAX_FILES, ZP_EXP_MAX_TOTAL_BYTES);
    return -1;
  }
  int fd = openat(X->out_fd, name, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) {
    snprintf(err, errlen, "%.600s/%s: cannot write: %s", X->out_abs, name, strerror(errno));
    return -1;
  }
  size_t off = 0;
  while (off < len) {
    ssize_t k = write(fd, data + off, len - off);
    if (k < 0) {
      if (errno == EINTR) continue;
      snprintf(err, errlen, "%.600s/%s: write failed: %s", X->out_abs, name, strerror(errno));
      close(fd);
      return -1;
    }
    off += (size_t)k;
  }
  if (close(fd) != 0) {
    snprintf(err, errlen, "%.600s/%s: close failed: %s", X->out_abs, name, strerror(errno));
    return -1;
  }
  X->files_written++;
  X->bytes_written += (long long)len;
  return 0;
}

/* ---------------------------------------------------------------- config objects */

typedef struct {
  char path[PATH_MAX]; /* resolved config file */
} exp_cfg;
/* uservalue 1 of a config object: a Lua list of "key=value" override strings */

static exp_cfg* check_cfg(lua_State* L, int idx) {
  return (exp_cfg*)luaL_checkudata(L, idx, MT_CONFIG);
}

/* TOML basic string for s[0..n) (NUL refused by the caller), appended to a luaL_Buffer. */
static void add_toml_string(luaL_Buffer* B, const char* s, size_t n) {
  luaL_addchar(B, '"');
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"' || c == '\\') {
      luaL_addchar(B, '\\');
      luaL_addchar(B, (char)c);
    } else if (c < 0x20 || c == 0x7f) {
      char e[8];
      snprintf(e, sizeof e, "\\u%04x", c);
      luaL_addstring(B, e);
    } else {
      luaL_addchar(B, (char)c);
    }
  }
  luaL_addchar(B, '"');
}

/* Pushes "key=<TOML text of the value at vidx>" or raises naming fn and key. */
static void push_assignment(lua_State* L, const char* fn, const char* key, int vidx) {
  vidx = lua_absindex(L, vidx);
  for (const char* k = key; *k; k++)
    if (*k == '=' || (unsigned char)*k <= ' ' || (unsigned char)*k >= 0x7f)
      luaL_error(L, "%s: invalid key '%s' (keys look like section.key)", fn, key);
  char num[64];
  int t = lua_type(L, vidx);
  if (t == LUA_TBOOLEAN) {
    lua_pushfstring(L, "%s=%s", key, lua_toboolean(L, vidx) ? "true" : "false");
  } else if (t == LUA_TNUMBER) {
    if (lua_isinteger(L, vidx)) {
      snprintf(num, sizeof num, "%lld", (long long)lua_tointeger(L, vidx));
    } else {
      double v = lua_tonumber(L, vidx);
      if (!isfinite(v)) luaL_error(L, "%s: value for '%s' must be finite, got %f", fn, key, v);
      if (v == floor(v) && fabs(v) < 9007199254740992.0) snprintf(num, sizeof num, "%.0f", v);
      else snprintf(num, sizeof num, "%.17g", v);
    }
    lua_pushfstring(L, "%s=%s", key, num);
  } else if (t == LUA_TSTRING) {
    size_t n;
    const char* s = lua_tolstring(L, vidx, &n);
    if (memchr(s, 0, n)) luaL_error(L, "%s: value for '%s' contains a NUL character", fn, key);
    luaL_Buffer B;
    luaL_buffinit(L, &B);
    luaL_addstring(&B, key);
    luaL_addchar(&B, '=');
    add_toml_string(&B, s, n);
    luaL_pushresult(&B);
  } else if (t == LUA_TTABLE) {
    lua_Integer n = luaL_len(L, vidx);
    if (n < 0 || n > 4096) luaL_error(L, "%s: list for '%s' has %d elements (at most 4096)", fn, key, (int)n);
    luaL_Buffer B;
    luaL_buffinit(L, &B);
    luaL_addstring(&B, key);
    luaL_addstring(&B, "=[");
    for (lua_Integer i = 1; i <= n; i++) {
      int et = lua_geti(L, vidx, i);
      int isint = et == LUA_TNUMBER && lua_isinteger(L, -1);
      long long v = isint ? (long long)lua_tointeger(L, -1) : 0;
      lua_pop(L, 1);
      if (!isint) luaL_error(L, "%s: list for '%s' must hold integers (element %d)", fn, key, (int)i);
      snprintf(num, sizeof num, "%s%lld", i > 1 ? ", " : "", v);
      luaL_addstring(&B, num);
    }
    luaL_addchar(&B, ']');
    luaL_pushresult(&B);
  } else {
    luaL_error(L, "%s: value for '%s' must be a boolean, number, string or list of integers, got %s",
               fn, key, luaL_typename(L, vidx));
  }
}

/* Keys zp.train chooses (inside the output directory); scripts may not set them. */
static const char* const kForcedKeys[] = {"train.out_dir", "offload.optimizer.path", "offload.param.path", NULL};

static int is_forced_key(const char* key) {
  for (const char* const* k = kForcedKeys; *k; k++)
    if (strcmp(*k, key) == 0) return 1;
  return 0;
}

/* Pushes a userdata array of the override strings of cfg object idx preceded by the
 * driver's --set list and followed by the extra strings at stack positions extra[0..n).
 * *out = the array, *count = its length. The strings stay alive while cfg / extras do. */
static const char** collect_sets(lua_State* L, zp_exp* X, int idx, const int* extra, int n_extra,
                                 int* count) {
  idx = lua_absindex(L, idx);
  lua_getiuservalue(L, idx, 1);
  lua_Integer no = luaL_len(L, -1);
  int n = X->n_sets + (int)no + n_extra;
  const char** arr = (const char**)lua_newuserdatauv(L, sizeof(char*) * (size_t)(n + 1), 0);
  int k = 0;
  for (int i = 0; i < X->n_sets; i++) arr[k++] = X->sets[i];
  for (lua_Integer i = 1; i <= no; i++) {
    lua_geti(L, -2, i);
    arr[k++] = lua_tostring(L, -1); /* kept alive by the override table */
    lua_pop(L, 1);
  }
  for (int i = 0; i < n_extra; i++) arr[k++] = lua_tostring(L, extra[i]);
  arr[k] = NULL;
  lua_remove(L, -2); /* the override table (the config object keeps it alive) */
  *count = k;
  return arr;
}

/* Loads the effective config of cfg object idx (+ extras) into a guard pushed on the stack.
 * full = 1: zp_config_load (combination checks included); full = 0: the file with the
 * driver's --set list, then each override with zp_config_set (no combination checks).
 * Returns 0, or -1 with the config layer's message in err (guard still pushed, not live). */
static int load_effective(lua_State* L, zp_exp* X, int idx, const int* extra, int n_extra,
                          int full, cfg_guard** gout, char* err, size_t errlen) {
  exp_cfg* ec = check_cfg(L, idx);
  idx = lua_absindex(L, idx);
  int n;
  const char** sets = collect_sets(L, X, idx, extra, n_extra, &n);
  cfg_guard* g = push_cfg_guard(L);
  lua_pushvalue(L, -2);
  lua_setiuservalue(L, -2, 1); /* the guard keeps the sets array alive */
  lua_remove(L, -2);
  *gout = g;
  int rc;
  if (full) {
    rc = zp_config_load(&g->c, ec->path, sets, n, err, errlen);
  } else {
    rc = zp_config_load(&g->c, ec->path, sets, X->n_sets, err, errlen);
    for (int i = X->n_sets; rc == 0 && i < n; i++) rc = zp_config_set(&g->c, sets[i], err, errlen);
  }
  g->live = 1; /* zp_config_free is safe on a failed load (main.c does the same) */
  return rc ? -1 : 0;
}

/* Strips the config layer's "--set ...: " prefix (its origin for overrides). */
static const char* strip_set_prefix(const char* msg) {
  if (strncmp(msg, "--set", 5) == 0) {
    const char* c = strstr(msg, ": ");
    if (c) return c + 2;
  }
  return msg;
}

static void push_config_object(lua_State* L, const char* path) {
  exp_cfg* ec = (exp_cfg*)lua_newuserdatauv(L, sizeof *ec, 1);
  memset(ec, 0, sizeof *ec);
  snprintf(ec->path, sizeof ec->path, "%s", path);
  luaL_setmetatable(L, MT_CONFIG);
  lua_newtable(L);
  lua_setiuservalue(L, -2, 1);
}

/* zp.config(path [, overrides]) */
static int l_config(lua_State* L) {
  zp_exp* X = getX(L);
  lua_settop(L, 2);
  size_t len;
  const char* p = luaL_checklstring(L, 1, &len);
  if (memchr(p, 0, len)) return luaL_error(L, "zp.config: path contains a NUL character");
  if (len < 5 || strcmp(p + len - 5, ".toml") != 0)
    return luaL_error(L, "zp.config: '%s' is not a .toml file", p);
  char full[PATH_MAX * 2], res[PATH_MAX];
  if (p[0] == '/') snprintf(full, sizeof full, "%s", p);
  else snprintf(full, sizeof full, "%s/%s", X->script_dir, p);
  if (!realpath(full, res)) return luaL_error(L, "zp.config: %s: %s", full, strerror(errno));
  struct stat st;
  if (stat(res, &st) != 0 || !S_ISREG(st.st_mode)) return luaL_error(L, "zp.config: %s is not a regular file", res);
  push_config_object(L, res);
  int obj = lua_gettop(L);
  char err[2048];
  cfg_guard* g;
  int rc = load_effective(L, X, obj, NULL, 0, 1, &g, err, sizeof err);
  cfg_guard_release(g);
  lua_pop(L, 1);
  if (rc) return luaL_error(L, "zp.config: %s", err);
  if (!lua_isnoneornil(L, 2)) {
    lua_getfield(L, obj, "with");
    lua_pushvalue(L, obj);
    lua_pushvalue(L, 2);
    lua_call(L, 2, 1);
  }
  return 1;
}

/* Validates and appends one override (value at vidx) to cfg object idx. */
static void cfg_set_one(lua_State* L, zp_exp* X, int idx, const char* key, int vidx) {
  if (is_forced_key(key))
    luaL_error(L, "cfg:set: refused: %s is chosen by zp.train (OUT/runs/<name>, inside the output directory)", key);
  push_assignment(L, "cfg:set", key, vidx);
  int a = lua_gettop(L);
  char err[2048];
  cfg_guard* g;
  int rc = load_effective(L, X, idx, &a, 1, 0, &g, err, sizeof err);
  cfg_guard_release(g);
  lua_pop(L, 1);
  if (rc) luaL_error(L, "cfg:set(\"%s\"): %s", key, strip_set_prefix(err));
  lua_getiuservalue(L, idx, 1);
  lua_pushvalue(L, a);
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
  lua_pop(L, 2);
}

/* cfg:set(key, value) -> cfg */
static int m_set(lua_State* L) {
  zp_exp* X = getX(L);
  check_cfg(L, 1);
  const char* key = luaL_checkstring(L, 2);
  luaL_checkany(L, 3);
  cfg_set_one(L, X, 1, key, 3);
  lua_settop(L, 1);
  return 1;
}

/* cfg:copy() -> new config object with the same file and overrides */
static int m_copy(lua_State* L) {
  exp_cfg* ec = check_cfg(L, 1);
  push_config_object(L, ec->path);
  lua_getiuservalue(L, 1, 1);
  lua_getiuservalue(L, -2, 1);
  lua_Integer n = (lua_Integer)lua_rawlen(L, -2);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, -2, i);
    lua_rawseti(L, -2, i);
  }
  lua_pop(L, 2);
  return 1;
}

static int cmp_strings(const void* a, const void* b) {
  return strcmp(*(const char* const*)a, *(const char* const*)b);
}

/* cfg:with{key = value, ...} -> copy with the overrides applied in sorted key order */
static int m_with(lua_State* L) {
  zp_exp* X = getX(L);
  check_cfg(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  lua_pushcfunction(L, m_copy);
  lua_pushvalue(L, 1);
  lua_call(L, 1, 1); /* 3: the copy */
  int n = 0;
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "cfg:with: keys must be strings like \"train.lr\"");
    n++;
    lua_pop(L, 1);
  }
  const char** keys = (const char**)lua_newuserdatauv(L, sizeof(char*) * (size_t)(n + 1), 0);
  int k = 0;
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    lua_pop(L, 1);
    keys[k++] = lua_tostring(L, -1); /* alive: keys of table 2 */
  }
  qsort(keys, (size_t)k, sizeof *keys, cmp_strings);
  for (int i = 0; i < k; i++) {
    lua_pushstring(L, keys[i]);
    lua_gettable(L, 2);
    cfg_set_one(L, X, 3, keys[i], -1);
    lua_pop(L, 1);
  }
  lua_settop(L, 3);
  return 1;
}

/* cfg:get(key) -> the effective value */
static int m_get(lua_State* L) {
  zp_exp* X = getX(L);
  check_cfg(L, 1);
  const char* key = luaL_checkstring(L, 2);
  char err[2048];
  cfg_guard* g;
  if (load_effective(L, X, 1, NULL, 0, 0, &g, err, sizeof err)) {
    cfg_guard_release(g);
    return luaL_error(L, "cfg:get: %s", err);
  }
  const zc_key* k = zp_cfg_key(key);
  if (!k) {
    /* same message (with "did you mean") as the config layer */
    char a[600];
    snprintf(a, sizeof a, "%s=0", key);
    if (zp_config_set(&g->c, a, err, sizeof err) == 0) snprintf(err, sizeof err, "unknown key '%s'", key);
    cfg_guard_release(g);
    return luaL_error(L, "cfg:get(\"%s\"): %s", key, strip_set_prefix(err));
  }
  const zc_value* v = zp_cfg_get(&g->c, key);
  switch (k->type) {
    case ZC_INT: lua_pushinteger(L, (lua_Integer)v->i); break;
    case ZC_FLOAT: lua_pushnumber(L, v->f); break;
    case ZC_BOOL: lua_pushboolean(L, v->b); break;
    case ZC_STRING: lua_pushstring(L, v->s ? v->s : ""); break;
    case ZC_INT_LIST:
      lua_createtable(L, (int)v->list_len, 0);
      for (size_t i = 0; i < v->list_len; i++) {
        lua_pushinteger(L, (lua_Integer)v->list[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
      }
      break;
  }
  /* the guard is freed by the collector if a push above raised; release it now */
  cfg_guard_release(g);
  return 1;
}

/* cfg:overrides() -> list of "key=value" strings (a copy) */
static int m_overrides(lua_State* L) {
  check_cfg(L, 1);
  lua_getiuservalue(L, 1, 1);
  lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
  lua_createtable(L, (int)n, 0);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, -2, i);
    lua_rawseti(L, -2, i);
  }
  return 1;
}

static int m_path(lua_State* L) {
  lua_pushstring(L, check_cfg(L, 1)->path);
  return 1;
}

static int m_tostring(lua_State* L) {
  exp_cfg* ec = check_cfg(L, 1);
  lua_getiuservalue(L, 1, 1);
  lua_pushfstring(L, "zp.config(%s, %d overrides)", ec->path, (int)lua_rawlen(L, -1));
  return 1;
}

/* ---------------------------------------------------------------- plugin paths */

/* Refuses plugin keys whose value is a file inside the output directory (the script could
 * have written it): any string key named "*.plugin" holding a path. */
static int check_plugins(zp_exp* X, const zp_config* c, char* err, size_t errlen) {
  size_t ol = strlen(X->out_abs);
  for (size_t i = 0; i < zp_config_schema_len; i++) {
    const zc_key* k = &zp_config_schema[i];
    size_t pl = strlen(k->path);
    if (k->type != ZC_STRING || pl < 7 || strcmp(k->path + pl - 7, ".plugin") != 0) continue;
    const char* v = c->v[i].s ? c->v[i].s : "";
    size_t vl = strlen(v);
    if (!strchr(v, '/') && !(vl > 3 && strcmp(v + vl - 3, ".so") == 0)) continue;
    char full[PATH_MAX * 2], res[PATH_MAX];
    if (v[0] == '/') snprintf(full, sizeof full, "%s", v);
    else snprintf(full, sizeof full, "%s/%s", c->dir[0] ? c->dir : ".", v);
    if (!realpath(full, res)) continue; /* does not exist: the plugin loader reports it */
    if (strncmp(res, X->out_abs, ol) == 0 && (res[ol] == '/' || res[ol] == 0)) {
      snprintf(err, errlen, "refused: %s = \"%s\" is a file inside the output directory; "
               "experiment scripts may only load plugins from outside it", k->path, v);
      return -1;
    }
  }
  return 0;
}

/* ---------------------------------------------------------------- zp.plan */

static lua_Integer opt_int(lua_State* L, int t, const char* field, lua_Integer def, lua_Integer lo,
                           lua_Integer hi, const char* fn) {
  int ty = lua_getfield(L, t, field);
  lua_Integer v = def;
  if (ty != LUA_TNIL) {
    int ok = 0;
    v = lua_tointegerx(L, -1, &ok);
    if (!ok || ty != LUA_TNUMBER) luaL_error(L, "%s: %s must be an integer", fn, field);
    if (v < lo || v > hi) luaL_error(L, "%s: %s = %d is outside [%d, %d]", fn, field, (int)v, (int)lo, (int)hi);
  }
  lua_pop(L, 1);
  return v;
}

static void set_int(lua_State* L, const char* k, long long v) {
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, k);
}
static void set_num(lua_State* L, const char* k, double v) {
  lua_pushnumber(L, v);
  lua_setfield(L, -2, k);
}
static void set_str(lua_State* L, const char* k, const char* v) {
  lua_pushstring(L, v);
  lua_setfield(L, -2, k);
}

/* zp.plan(cfg [, {world=N, rank=R}]) */
static int l_plan(lua_State* L) {
  zp_exp* X = getX(L);
  check_cfg(L, 1);
  int world = 1, rank = 0;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    world = (int)opt_int(L, 2, "world", 1, 1, 1000000, "zp.plan");
    rank = (int)opt_int(L, 2, "rank", 0, 0, world - 1, "zp.plan");
  }
  char err[2048];
  cfg_guard* g;
  if (load_effective(L, X, 1, NULL, 0, 1, &g, err, sizeof err)) return luaL_error(L, "zp.plan: %s", err);
  if (check_plugins(X, &g->c, err, sizeof err)) return luaL_error(L, "zp.plan: %s", err);
  run_guard* rg = (run_guard*)lua_newuserdatauv(L, sizeof *rg, 0);
  memset(rg, 0, sizeof *rg);
  luaL_setmetatable(L, MT_RUNGUARD);
  zp_run_opts o;
  memset(&o, 0, sizeof o);
  o.dry_run = 1;
  o.world = world;
  o.rank = rank;
  int rc = zp_run_open(&rg->r, &g->c, &o);
  rg->live = 1;
  if (rc) {
    snprintf(err, sizeof err, "%s", rg->r.err);
    zp_run_close(&rg->r);
    rg->live = 0;
    return luaL_error(L, "zp.plan: %s", err);
  }
  zp_run* r = &rg->r;
  lua_createtable(L, 0, 16);
  set_int(L, "world", r->world);
  set_int(L, "rank", r->rank);
  set_str(L, "strategy", zp_cfg_str(&g->c, "zero.plugin"));
  set_int(L, "params", (long long)r->layout.total_params);
  set_int(L, "micro_batch", r->B);
  set_int(L, "seq_len", r->T);
  long long ms = 0, total = 0;
  lua_createtable(L, 0, ZP_CAT_COUNT); /* mem */
  for (int c = 0; c < ZP_CAT_COUNT; c++) {
    long long v = r->ledger.cur[c][ZP_TIER_GPU] + r->ledger.cur[c][ZP_TIER_CPU];
    set_int(L, kCat[c], v);
    if (c <= ZP_CAT_OPTIM) ms += v;
  }
  lua_setfield(L, -2, "mem");
  set_int(L, "model_states", ms);
  for (int pass = 0; pass < 2; pass++) { /* tiers (current), peak */
    lua_createtable(L, 0, ZP_CAT_COUNT);
    for (int c = 0; c < ZP_CAT_COUNT; c++) {
      lua_createtable(L, 0, ZP_TIER_COUNT);
      for (int t = 0; t < ZP_TIER_COUNT; t++) set_int(L, kTier[t], pass ? r->ledger.peak[c][t] : r->ledger.cur[c][t]);
      lua_setfield(L, -2, kCat[c]);
    }
    lua_setfield(L, -2, pass ? "peak" : "tiers");
  }
  for (int pass = 0; pass < 2; pass++) {
    lua_createtable(L, 0, ZP_TIER_COUNT);
    for (int t = 0; t < ZP_TIER_COUNT; t++) {
      long long v = pass ? r->ledger.tier_peak[t] : r->ledger.tier_cur[t];
      set_int(L, kTier[t], v);
      if (!pass) total += v;
    }
    lua_setfield(L, -2, pass ? "tier_peak" : "tier_total");
  }
  set_int(L, "total", total);
  zp_run_close(&rg->r);
  rg->live = 0;
  cfg_guard_release(g);
  return 1;
}

/* ---------------------------------------------------------------- zp.train */

static volatile sig_atomic_t g_exp_signal; /* SIGINT/SIGTERM received while a run was waited on */
static void exp_on_signal(int s) { g_exp_signal = s; }

static const char* signame(int s) {
  switch (s) {
    case SIGINT: return "SIGINT";
    case SIGTERM: return "SIGTERM";
    case SIGKILL: return "SIGKILL";
    case SIGSEGV: return "SIGSEGV";
    case SIGABRT: return "SIGABRT";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGILL: return "SIGILL";
    case SIGHUP: return "SIGHUP";
    case SIGPIPE: return "SIGPIPE";
    case SIGUSR1: return "SIGUSR1";
    default: return "signal";
  }
}

/* mkdir + open of a directory below dirfd without following symlinks. -1 + errno. */
static int open_subdir(int dirfd, const char* name) {
  if (mkdirat(dirfd, name, 0755) != 0 && errno != EEXIST) return -1;
  return openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

/* Reads up to max bytes of the END of file name in dirfd into a fresh userdata (pushed):
 * returns its length (0 when missing). No Lua call while the fd is open. */
static size_t push_file_tail(lua_State* L, int dirfd, const char* name, size_t max, char** data) {
  struct stat st;
  size_t sz = 0;
  if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode)) sz = (size_t)st.st_size;
  size_t want = sz > max ? max : sz;
  char* p = (char*)lua_newuserdatauv(L, want + 1, 0);
  size_t got = 0;
  if (want) {
    int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0) {
      off_t start = (off_t)(sz - want);
      while (got < want) {
        ssize_t k = pread(fd, p + got, want - got, start + (off_t)got);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        got += (size_t)k;
      }
      close(fd);
    }
  }
  p[got] = 0;
  *data = p;
  return got;
}

/* The error text of a failed run from its log: the lines that zp prints for errors
 * ("zp: ...", "zp launch: ...", optionally after "[rank K] "), ranks' own lines first; else
 * the last lines. Pushes a string. */
static void push_log_error(lua_State* L, const char* log, size_t n) {
  const char* picked[8];
  size_t plen[8];
  int np = 0;
  for (int pass = 0; pass < 2 && np < 6; pass++) {
    const char* p = log;
    while (p < log + n && np < 6) {
      const char* e = memchr(p, '\n', (size_t)(log + n - p));
      size_t l = e ? (size_t)(e - p) : (size_t)(log + n - p);
      const char* q = p;
      if (l > 8 && strncmp(q, "[rank ", 6) == 0) {
        const char* b = memchr(q, ']', l);
        if (b && b + 2 <= p + l) q = b + 2;
      }
      size_t ql = l - (size_t)(q - p);
      int is_launch = ql >= 11 && strncmp(q, "zp launch: ", 11) == 0;
      int is_zp = ql >= 4 && strncmp(q, "zp: ", 4) == 0;
      if ((pass == 0 && is_zp) || (pass == 1 && is_launch)) {
        int dup = 0;
        for (int i = 0; i < np; i++)
          if (plen[i] == ql && memcmp(picked[i], q, ql) == 0) dup = 1;
        if (!dup) {
          picked[np] = q;
          plen[np] = ql;
          np++;
        }
      }
      p = e ? e + 1 : log + n;
    }
  }
  if (np == 0) { /* the last 5 lines */
    const char* end = log + n;
    while (end > log && (end[-1] == '\n' || end[-1] == ' ')) end--;
    const char* s = end;
    int lines = 0;
    while (s > log && lines < 5) {
      s--;
      if (*s == '\n') lines++;
    }
    if (s > log || (s == log && *s == '\n')) s++;
    lua_pushlstring(L, s, (size_t)(end - s));
    return;
  }
  luaL_Buffer B;
  luaL_buffinit(L, &B);
  for (int i = 0; i < np; i++) {
    if (i) luaL_addchar(&B, '\n');
    luaL_addlstring(&B, picked[i], plen[i]);
  }
  luaL_pushresult(&B);
}

typedef struct {
  double step, loss, lr, grad_norm, ms, tok_s, mfu, val_loss, peak_gpu, device_used;
  double mem[ZP_CAT_COUNT];
  int has_val, has_mem;
} mrec;

static double jnum(json_t* o, const char* k, double def) {
  json_t* v = json_object_get(o, k);
  return v && json_is_number(v) ? json_number_value(v) : def;
}

/* Parses one metrics line. 1 = a step record, 2 = a validation-only record, 0 = other. */
static int parse_metrics_line(const char* s, size_t n, mrec* m) {
  json_error_t je;
  json_t* o = json_loadb(s, n, 0, &je);
  if (!o || !json_is_object(o)) {
    json_decref(o);
    return 0;
  }
  memset(m, 0, sizeof *m);
  int kind = 0;
  m->step = jnum(o, "step", NAN);
  m->val_loss = jnum(o, "val_loss", NAN);
  m->has_val = json_object_get(o, "val_loss") != NULL;
  if (json_object_get(o, "loss")) {
    kind = 1;
    m->loss = jnum(o, "loss", NAN);
    m->lr = jnum(o, "lr", NAN);
    m->grad_norm = jnum(o, "grad_norm", NAN);
    m->ms = jnum(o, "ms", NAN);
    m->tok_s = jnum(o, "tok_s", NAN);
    m->mfu = jnum(o, "mfu", NAN);
    m->peak_gpu = jnum(o, "peak_gpu", NAN);
    m->device_used = jnum(o, "device_used", NAN);
    json_t* mem = json_object_get(o, "mem");
    if (json_is_object(mem)) {
      m->has_mem = 1;
      for (int c = 0; c < ZP_CAT_COUNT; c++) m->mem[c] = jnum(mem, kCat[c], 0);
    }
  } else if (m->has_val) {
    kind = 2;
  }
  json_decref(o);
  return kind;
}

static void push_num_or_int(lua_State* L, double v) {
  if (isfinite(v) && v == floor(v) && fabs(v) < 9007199254740992.0) lua_pushinteger(L, (lua_Integer)v);
  else lua_pushnumber(L, v);
}

static void push_mem_table(lua_State* L, const mrec* m) {
  lua_createtable(L, 0, ZP_CAT_COUNT);
  for (int c = 0; c < ZP_CAT_COUNT; c++) set_int(L, kCat[c], (long long)m->mem[c]);
}

/* Reads OUT/runs/<name>/metrics.jsonl into the result table at res. */
static void read_metrics(lua_State* L, int rundir, int res) {
  char* data;
  size_t n = push_file_tail(L, rundir, "metrics.jsonl", (size_t)64 << 20, &data); /* the last 64 MiB */
  int buf = lua_gettop(L);
  static const char* const arrs[] = {"step", "loss", "lr", "grad_norm", "ms", "tok_s"};
  for (int i = 0; i < 6; i++) lua_newtable(L); /* buf+1 .. buf+6: parallel arrays */
  lua_newtable(L);                             /* buf+7: records */
  int k = 0;
  mrec last, first;
  memset(&last, 0, sizeof last);
  memset(&first, 0, sizeof first);
  double min_loss = NAN, val = NAN, sum_ms = 0, sum_tok = 0;
  int timed = 0;
  const char* p = data;
  while (p < data + n) {
    const char* e = memchr(p, '\n', (size_t)(data + n - p));
    size_t l = e ? (size_t)(e - p) : (size_t)(data + n - p);
    mrec m;
    int kind = l ? parse_metrics_line(p, l, &m) : 0;
    p = e ? e + 1 : data + n;
    if (kind == 2) val = m.val_loss;
    if (kind != 1) continue;
    k++;
    double vals[6] = {m.step, m.loss, m.lr, m.grad_norm, m.ms, m.tok_s};
    for (int i = 0; i < 6; i++) {
      if (i == 0) push_num_or_int(L, vals[i]);
      else lua_pushnumber(L, vals[i]);
      lua_rawseti(L, buf + 1 + i, k);
    }
    lua_createtable(L, 0, 12);
    push_num_or_int(L, m.step);
    lua_setfield(L, -2, "step");
    set_num(L, "loss", m.loss);
    set_num(L, "lr", m.lr);
    set_num(L, "grad_norm", m.grad_norm);
    set_num(L, "ms", m.ms);
    set_num(L, "tok_s", m.tok_s);
    set_num(L, "mfu", m.mfu);
    if (m.has_val) set_num(L, "val_loss", m.val_loss);
    if (m.has_mem) {
      push_mem_table(L, &m);
      lua_setfield(L, -2, "mem");
    }
    set_int(L, "peak_gpu", (long long)m.peak_gpu);
    set_int(L, "device_used", (long long)m.device_used);
    lua_rawseti(L, buf + 7, k);
    if (k == 1) first = m;
    if (!(m.loss >= min_loss)) min_loss = m.loss;
    if (m.has_val) val = m.val_loss;
    /* time-weighted means over the steps after the first (the first warms caches) */
    if (k > 1 && m.ms > 0 && isfinite(m.tok_s)) {
      sum_ms += m.ms;
      sum_tok += m.tok_s * m.ms / 1000.0;
      timed++;
    }
    last = m;
  }
  if (k == 1 && first.ms > 0 && isfinite(first.tok_s)) { /* one step: it is the measurement */
    sum_ms = first.ms;
    sum_tok = first.tok_s * first.ms / 1000.0;
    timed = 1;
  }
  for (int i = 0; i < 6; i++) {
    lua_pushvalue(L, buf + 1 + i);
    lua_setfield(L, res, arrs[i]);
  }
  lua_pushvalue(L, buf + 7);
  lua_setfield(L, res, "records");
  lua_pushinteger(L, k);
  lua_setfield(L, res, "n_steps");
  lua_settop(L, buf - 1);
  if (k > 0) {
    lua_pushvalue(L, res);
    set_num(L, "first_loss", first.loss);
    set_num(L, "final_loss", last.loss);
    set_num(L, "min_loss", min_loss);
    if (sum_ms > 0) {
      set_num(L, "mean_tok_s", sum_tok / (sum_ms / 1000.0));
      set_num(L, "mean_ms", sum_ms / timed);
    }
    if (last.has_mem) {
      push_mem_table(L, &last);
      lua_setfield(L, -2, "mem");
      long long ms = 0;
      for (int c = 0; c <= ZP_CAT_OPTIM; c++) ms += (long long)last.mem[c];
      set_int(L, "model_states", ms);
    }
    set_int(L, "peak_gpu", (long long)last.peak_gpu);
    set_int(L, "device_used", (long long)last.device_used);
    lua_pop(L, 1);
  }
  if (isfinite(val)) {
    lua_pushnumber(L, val);
    lua_setfield(L, res, "val_loss");
  }
}

/* Appends "--set" and the assignment string at the top (popped) to the argv list at t. */
static void argv_add(lua_State* L, int t, const char* s) {
  lua_pushstring(L, s);
  lua_rawseti(L, t, (lua_Integer)lua_rawlen(L, t) + 1);
}
static void argv_add_top(lua_State* L, int t) { lua_rawseti(L, t, (lua_Integer)lua_rawlen(L, t) + 1); }

/* Pushes "key=<TOML string of path>". */
static void push_path_assignment(lua_State* L, const char* key, const char* path) {
  luaL_Buffer B;
  luaL_buffinit(L, &B);
  luaL_addstring(&B, key);
  luaL_addchar(&B, '=');
  add_toml_string(&B, path, strlen(path));
  luaL_pushresult(&B);
}

/* zp.train(cfg, {name=, steps=, ranks=, timeout=, set=, quiet=}) -> result table */
static int l_train(lua_State* L) {
  zp_exp* X = getX(L);
  check_cfg(L, 1);
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
  else {
    lua_settop(L, 1);
    lua_newtable(L);
  }
  lua_settop(L, 2);
  /* name */
  char name[ZP_EXP_NAME_MAX + 1];
  if (lua_getfield(L, 2, "name") == LUA_TNIL) {
    lua_pop(L, 1);
    lua_Integer k = (lua_Integer)lua_rawlen(L, lua_upvalueindex(2)) + 1;
    lua_pushfstring(L, "run%d", (int)k);
  } else if (lua_type(L, -1) != LUA_TSTRING) {
    return luaL_error(L, "zp.train: name must be a string");
  }
  check_name_arg(L, -1, "zp.train", NULL, name, sizeof name);
  lua_pop(L, 1);
  /* used names: upvalue 2 is a list, upvalue 3 a set */
  lua_getfield(L, lua_upvalueindex(3), name);
  if (!lua_isnil(L, -1)) return luaL_error(L, "zp.train: run name '%s' was already used by this experiment", name);
  lua_pop(L, 1);
  lua_Integer steps = opt_int(L, 2, "steps", -1, 0, (lua_Integer)1e12, "zp.train");
  int ranks = (int)opt_int(L, 2, "ranks", 1, 1, ZP_SHM_MAX_RANKS, "zp.train");
  lua_getfield(L, 2, "timeout");
  double timeout = lua_isnil(L, -1) ? 0 : luaL_checknumber(L, -1);
  lua_pop(L, 1);
  if (!(timeout >= 0) || timeout > 1e7) return luaL_error(L, "zp.train: timeout must be a number of seconds >= 0");
  lua_getfield(L, 2, "quiet");
  int quiet = X->quiet || lua_toboolean(L, -1);
  lua_pop(L, 1);
  exp_cfg* ec = check_cfg(L, 1);

  /* argv (a Lua list of strings, index 3) */
  lua_newtable(L);
  int av = 3;
  argv_add(L, av, X->exe);
  if (ranks > 1) {
    argv_add(L, av, "launch");
    argv_add(L, av, "-n");
    lua_pushfstring(L, "%d", ranks);
    argv_add_top(L, av);
  } else {
    argv_add(L, av, "train");
  }
  argv_add(L, av, ec->path);
  /* extra overrides from opts.set (not validated here: a bad key fails the run) */
  lua_newtable(L); /* 4: extra assignment strings */
  int ex = 4;
  if (lua_getfield(L, 2, "set") == LUA_TTABLE) {
    int st = lua_gettop(L);
    /* list entries are "key=value" strings; string keys are key = value */
    lua_Integer nl = (lua_Integer)lua_rawlen(L, st);
    for (lua_Integer i = 1; i <= nl; i++) {
      if (lua_rawgeti(L, st, i) != LUA_TSTRING) luaL_error(L, "zp.train: set[%d] must be a \"key=value\" string", (int)i);
      const char* a = lua_tostring(L, -1);
      for (const char* const* fk = kForcedKeys; *fk; fk++) {
        size_t kl = strlen(*fk);
        const char* q = a;
        while (*q == ' ') q++;
        if (strncmp(q, *fk, kl) == 0 && (q[kl] == '=' || q[kl] == ' '))
          luaL_error(L, "zp.train: refused: %s is chosen by zp.train (OUT/runs/<name>, inside the output directory)", *fk);
      }
      argv_add_top(L, ex);
    }
    int nkeys = 0;
    lua_pushnil(L);
    while (lua_next(L, st)) {
      lua_pop(L, 1);
      if (lua_type(L, -1) == LUA_TSTRING) nkeys++;
    }
    const char** keys = (const char**)lua_newuserdatauv(L, sizeof(char*) * (size_t)(nkeys + 1), 0);
    int kk = 0;
    lua_pushnil(L);
    while (lua_next(L, st)) {
      lua_pop(L, 1);
      if (lua_type(L, -1) == LUA_TSTRING) keys[kk++] = lua_tostring(L, -1);
    }
    qsort(keys, (size_t)kk, sizeof *keys, cmp_strings);
    for (int i = 0; i < kk; i++) {
      if (is_forced_key(keys[i]))
        luaL_error(L, "zp.train: refused: %s is chosen by zp.train (OUT/runs/<name>, inside the output directory)", keys[i]);
      lua_getfield(L, st, keys[i]);
      push_assignment(L, "zp.train", keys[i], -1);
      lua_remove(L, -2);
      argv_add_top(L, ex);
    }
    lua_pop(L, 1); /* keys */
  } else if (!lua_isnil(L, -1)) {
    luaL_error(L, "zp.train: set must be a table");
  }
  lua_pop(L, 1);
  /* run directory */
  fd_guard* rdg = push_fd(L); /* 5: closes the run directory on every error path */
  int runs_fd = open_subdir(X->out_fd, "runs");
  if (runs_fd < 0) return luaL_error(L, "zp.train: %s/runs: %s", X->out_abs, strerror(errno));
  rdg->fd = open_subdir(runs_fd, name);
  int e = errno;
  close(runs_fd);
  if (rdg->fd < 0) return luaL_error(L, "zp.train: %s/runs/%s: %s", X->out_abs, name, strerror(e));
  int rundir = rdg->fd;
  char rundir_abs[PATH_MAX + ZP_EXP_NAME_MAX + 16], nvme[PATH_MAX + ZP_EXP_NAME_MAX + 32];
  snprintf(rundir_abs, sizeof rundir_abs, "%s/runs/%s", X->out_abs, name);
  snprintf(nvme, sizeof nvme, "%s/nvme", rundir_abs);
  if (steps >= 0) {
    lua_pushfstring(L, "train.steps=%I", steps);
    argv_add_top(L, ex);
  }
  push_path_assignment(L, "train.out_dir", rundir_abs);
  argv_add_top(L, ex);
  push_path_assignment(L, "offload.optimizer.path", nvme);
  argv_add_top(L, ex);
  push_path_assignment(L, "offload.param.path", nvme);
  argv_add_top(L, ex);
  argv_add(L, ex, "train.resume=\"never\"");
  argv_add(L, ex, "train.metrics=true");
  /* effective config in-process: plugin paths inside the output directory are refused */
  int n_ex = (int)lua_rawlen(L, ex);
  int* exidx = (int*)lua_newuserdatauv(L, sizeof(int) * (size_t)(n_ex + 1), 0);
  int base = lua_gettop(L);
  if (!lua_checkstack(L, n_ex + 8)) {
    return luaL_error(L, "zp.train: too many overrides");
  }
  for (int i = 0; i < n_ex; i++) {
    lua_rawgeti(L, ex, i + 1);
    exidx[i] = base + 1 + i;
  }
  char err[2048];
  cfg_guard* g;
  int uses_nvme = 0, cfg_ok = load_effective(L, X, 1, exidx, n_ex, 1, &g, err, sizeof err) == 0;
  if (cfg_ok) {
    if (check_plugins(X, &g->c, err, sizeof err)) {
      cfg_guard_release(g);
      return luaL_error(L, "zp.train: %s", err);
    }
    uses_nvme = strcmp(zp_cfg_str(&g->c, "offload.optimizer.plugin"), "offload_nvme") == 0 ||
                strcmp(zp_cfg_str(&g->c, "offload.param.plugin"), "offload_nvme") == 0;
  }
  cfg_guard_release(g);
  lua_settop(L, base - 1);
  /* full argv: exe ... config, then --set for the driver's sets, the object's, the extras */
  for (int i = 0; i < X->n_sets; i++) {
    argv_add(L, av, "--set");
    argv_add(L, av, X->sets[i]);
  }
  lua_getiuservalue(L, 1, 1);
  lua_Integer no = (lua_Integer)lua_rawlen(L, -1);
  for (lua_Integer i = 1; i <= no; i++) {
    argv_add(L, av, "--set");
    lua_rawgeti(L, -1, i);
    argv_add_top(L, av);
  }
  lua_pop(L, 1);
  for (int i = 1; i <= n_ex; i++) {
    argv_add(L, av, "--set");
    lua_rawgeti(L, ex, i);
    argv_add_top(L, av);
  }
  int na = (int)lua_rawlen(L, av);
  char** argv = (char**)lua_newuserdatauv(L, sizeof(char*) * (size_t)(na + 1), 0);
  for (int i = 0; i < na; i++) {
    lua_rawgeti(L, av, i + 1);
    argv[i] = (char*)lua_tostring(L, -1); /* alive: the argv list */
    lua_pop(L, 1);
  }
  argv[na] = NULL;
  /* the command line, for the result (shell-quoted where needed) */
  luaL_Buffer B;
  luaL_buffinit(L, &B);
  for (int i = 0; i < na; i++) {
    if (i) luaL_addchar(&B, ' ');
    const char* a = argv[i];
    int plain = a[0] != 0;
    for (const char* c = a; *c; c++)
      if (!(isalnum((unsigned char)*c) || strchr("_-./=:,+@", *c))) plain = 0;
    if (plain) luaL_addstring(&B, a);
    else {
      luaL_addchar(&B, '\'');
      for (const char* c = a; *c; c++) {
        if (*c == '\'') luaL_addstring(&B, "'\\''");
        else luaL_addchar(&B, *c);
      }
      luaL_addchar(&B, '\'');
    }
  }
  luaL_pushresult(&B);
  int cmdline = lua_gettop(L);
  /* record the name as used, prepare the result table (all Lua allocation before the fork) */
  lua_pushboolean(L, 1);
  lua_setfield(L, lua_upvalueindex(3), name);
  lua_pushstring(L, name);
  lua_rawseti(L, lua_upvalueindex(2), (lua_Integer)lua_rawlen(L, lua_upvalueindex(2)) + 1);
  lua_createtable(L, 0, 32);
  int res = lua_gettop(L);
  if (!quiet) {
    printf("zp run: training '%s' (%d rank%s%s) -> %s\n", name, ranks, ranks > 1 ? "s" : "",
           steps >= 0 ? "" : ", steps from the config", rundir_abs);
    fflush(stdout);
  }
  if (uses_nvme && mkdirat(rundir, "nvme", 0755) != 0 && errno != EEXIST) {
    return luaL_error(L, "zp.train: %s: %s", nvme, strerror(errno));
  }
  unlinkat(rundir, "metrics.jsonl", 0); /* never read a previous experiment's metrics */
  int logfd = openat(rundir, "log.txt", O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (logfd < 0) {
    return luaL_error(L, "zp.train: %s/log.txt: %s", rundir_abs, strerror(errno));
  }
  /* ---- fork, exec, wait: no Lua calls until both fds are closed ---- */
  struct sigaction sa, old_int, old_term;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = exp_on_signal;
  sigemptyset(&sa.sa_mask);
  g_exp_signal = 0;
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  fflush(stdout);
  fflush(stderr);
  double t0 = now_s();
  int status = 0, spawn_errno = 0, timed_out = 0, interrupted = 0, wait_errno = 0;
  pid_t pid = fork();
  if (pid == 0) { /* async-signal-safe calls only until exec */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGINT, &dfl, NULL);
    sigaction(SIGTERM, &dfl, NULL);
    sigaction(SIGPIPE, &dfl, NULL);
    int nul = open("/dev/null", O_RDONLY);
    if (nul >= 0) {
      dup2(nul, 0);
      close(nul);
    }
    dup2(logfd, 1);
    dup2(logfd, 2);
    execv(argv[0], argv);
    char m[80] = "zp: zp run: cannot execute the zp binary (errno ";
    size_t ml = strlen(m);
    int en = errno, dig = 1;
    while (en / dig >= 10) dig *= 10;
    for (; dig > 0; dig /= 10) m[ml++] = (char)('0' + en / dig % 10);
    m[ml++] = ')';
    m[ml++] = '\n';
    ssize_t w = write(2, m, ml);
    (void)w;
    _exit(127);
  }
  if (pid < 0) spawn_errno = errno;
  close(logfd);
  if (pid > 0) {
    double term_at = -1;
    int killed = 0;
    for (;;) {
      pid_t w = waitpid(pid, &status, WNOHANG);
      if (w == pid) break;
      if (w < 0 && errno != EINTR) {
        wait_errno = errno;
        break;
      }
      double t = now_s() - t0;
      if (g_exp_signal && !interrupted) {
        interrupted = g_exp_signal;
        kill(pid, SIGTERM);
        term_at = t;
      }
      if (timeout > 0 && t > timeout && term_at < 0) {
        timed_out = 1;
        kill(pid, SIGTERM);
        term_at = t;
      }
      if (term_at >= 0 && !killed && t - term_at > 15) {
        kill(pid, SIGKILL);
        killed = 1;
      }
      struct timespec ts = {0, 20 * 1000 * 1000};
      nanosleep(&ts, NULL);
    }
  }
  double wall = now_s() - t0;
  sigaction(SIGINT, &old_int, NULL);
  sigaction(SIGTERM, &old_term, NULL);
  /* ---- result ---- */
  if (wait_errno) pid = -1, spawn_errno = wait_errno;
  int ok = pid > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0 && !timed_out;
  int code = pid <= 0 ? -1 : WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? 128 + WTERMSIG(status) : -1;
  /* read outputs (rundir stays open: close it before raising) */
  lua_pushboolean(L, ok);
  lua_setfield(L, res, "ok");
  lua_pushinteger(L, code);
  lua_setfield(L, res, "status");
  if (pid > 0 && WIFSIGNALED(status)) {
    lua_pushstring(L, signame(WTERMSIG(status)));
    lua_setfield(L, res, "signal");
  }
  lua_pushboolean(L, timed_out);
  lua_setfield(L, res, "timed_out");
  set_str(L, "name", name);
  lua_pushfstring(L, "runs/%s", name);
  lua_setfield(L, res, "dir");
  lua_pushfstring(L, "runs/%s/log.txt", name);
  lua_setfield(L, res, "log");
  set_int(L, "ranks", ranks);
  set_num(L, "wall_s", wall);
  lua_pushvalue(L, cmdline);
  lua_setfield(L, res, "command");
  read_metrics(L, rundir, res);
  if (!ok) {
    if (pid < 0) {
      lua_pushfstring(L, "cannot start or wait for the training process: %s", strerror(spawn_errno));
    } else if (timed_out) {
      lua_pushfstring(L, "timed out after %f s (zp.train timeout)", timeout);
    } else {
      char* log;
      size_t n = push_file_tail(L, rundir, "log.txt", 65536, &log);
      push_log_error(L, log, n);
      lua_remove(L, -2);
      if (lua_rawlen(L, -1) == 0) {
        lua_pop(L, 1);
        if (WIFSIGNALED(status)) lua_pushfstring(L, "killed by %s", signame(WTERMSIG(status)));
        else lua_pushfstring(L, "exited with status %d", code);
      }
    }
    lua_setfield(L, res, "error");
  }
  close(rdg->fd);
  rdg->fd = -1;
  if (interrupted) return luaL_error(L, "zp.train: interrupted by %s while '%s' was running", signame(interrupted), name);
  if (!quiet) {
    lua_getfield(L, res, "final_loss");
    lua_getfield(L, res, "first_loss");
    lua_getfield(L, res, "mean_tok_s");
    lua_getfield(L, res, "error");
    if (ok)
      printf("zp run: '%s' ok in %.1f s: loss %.4f -> %.4f, %.0f tok/s\n", name, wall,
             lua_isnumber(L, -3) ? lua_tonumber(L, -3) : NAN, lua_isnumber(L, -4) ? lua_tonumber(L, -4) : NAN,
             lua_isnumber(L, -2) ? lua_tonumber(L, -2) : NAN);
    else
      printf("zp run: '%s' FAILED (status %d) in %.1f s: %s\n", name, code, wall,
             lua_isstring(L, -1) ? lua_tostring(L, -1) : "?");
    fflush(stdout);
    lua_pop(L, 4);
  }
  lua_settop(L, res);
  return 1;
}

/* ---------------------------------------------------------------- tables */

/* Column list: argument idx when a table, else the sorted union of the rows' string keys. */
static int get_columns(lua_State* L, int rows, int idx, const char* fn) {
  if (lua_istable(L, idx)) {
    lua_Integer n = luaL_len(L, idx);
    lua_createtable(L, (int)n, 0);
    for (lua_Integer i = 1; i <= n; i++) {
      if (lua_geti(L, idx, i) != LUA_TSTRING) luaL_error(L, "%s: columns[%d] must be a string", fn, (int)i);
      lua_rawseti(L, -2, i);
    }
    return lua_gettop(L);
  }
  if (!lua_isnoneornil(L, idx)) luaL_error(L, "%s: columns must be a list of names", fn);
  lua_newtable(L); /* set */
  int set = lua_gettop(L);
  lua_Integer nr = luaL_len(L, rows);
  int n = 0;
  for (lua_Integer r = 1; r <= nr; r++) {
    if (lua_geti(L, rows, r) != LUA_TTABLE) luaL_error(L, "%s: rows[%d] is not a table", fn, (int)r);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      lua_pop(L, 1);
      if (lua_type(L, -1) == LUA_TSTRING) {
        lua_pushvalue(L, -1);
        if (lua_rawget(L, set) == LUA_TNIL) {
          lua_pushvalue(L, -2);
          lua_pushboolean(L, 1);
          lua_rawset(L, set);
          n++;
        }
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
  }
  const char** names = (const char**)lua_newuserdatauv(L, sizeof(char*) * (size_t)(n + 1), 0);
  int k = 0;
  lua_pushnil(L);
  while (lua_next(L, set)) {
    lua_pop(L, 1);
    names[k++] = lua_tostring(L, -1);
  }
  qsort(names, (size_t)k, sizeof *names, cmp_strings);
  lua_createtable(L, k, 0);
  for (int i = 0; i < k; i++) {
    lua_pushstring(L, names[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_replace(L, set);
  lua_settop(L, set);
  return set;
}

/* Text of a cell value (top of stack, popped) into out. Strings are returned raw. */
static void cell_text(lua_State* L, const char* fn, const char* col, int row, char* num,
                      size_t numlen, const char** s, size_t* sl) {
  int t = lua_type(L, -1);
  *s = num;
  num[0] = 0;
  if (t == LUA_TNIL) {
  } else if (t == LUA_TBOOLEAN) {
    snprintf(num, numlen, "%s", lua_toboolean(L, -1) ? "true" : "false");
  } else if (t == LUA_TNUMBER) {
    if (lua_isinteger(L, -1)) snprintf(num, numlen, "%lld", (long long)lua_tointeger(L, -1));
    else {
      double v = lua_tonumber(L, -1);
      if (isnan(v)) snprintf(num, numlen, "nan");
      else if (isinf(v)) snprintf(num, numlen, v > 0 ? "inf" : "-inf");
      else snprintf(num, numlen, "%.10g", v);
    }
  } else if (t == LUA_TSTRING) {
    *s = lua_tolstring(L, -1, sl);
    return; /* caller pops after use */
  } else {
    luaL_error(L, "%s: rows[%d].%s is a %s (cells are numbers, strings or booleans)", fn, row, col,
               luaL_typename(L, -1));
  }
  *sl = strlen(num);
}

/* zp.write_csv(name, rows [, columns]) -> path relative to the output directory */
static int l_write_csv(lua_State* L) {
  zp_exp* X = getX(L);
  char name[ZP_EXP_NAME_MAX + 8];
  check_name_arg(L, 1, "zp.write_csv", ".csv", name, sizeof name);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 3);
  int cols = get_columns(L, 2, 3, "zp.write_csv");
  membuf* b = push_buf(L, ZP_EXP_MAX_FILE_BYTES);
  int bi = lua_gettop(L);
  lua_Integer nc = (lua_Integer)lua_rawlen(L, cols), nr = luaL_len(L, 2);
  for (lua_Integer r = 0; r <= nr; r++) {
    if (r > 0 && lua_geti(L, 2, r) != LUA_TTABLE) luaL_error(L, "zp.write_csv: rows[%d] is not a table", (int)r);
    for (lua_Integer c = 1; c <= nc; c++) {
      lua_rawgeti(L, cols, c);
      const char* cn = lua_tostring(L, -1);
      const char* s;
      size_t sl;
      char num[64];
      if (r == 0) {
        s = cn;
        sl = strlen(cn);
        lua_pushnil(L); /* keep the stack shape: pop below */
      } else {
        lua_getfield(L, -2, cn);
        cell_text(L, "zp.write_csv", cn, (int)r, num, sizeof num, &s, &sl);
      }
      if (c > 1) buf_add(L, b, ",", 1);
      int quote = 0;
      for (size_t i = 0; i < sl; i++)
        if (s[i] == ',' || s[i] == '"' || s[i] == '\n' || s[i] == '\r') quote = 1;
      if (quote) {
        buf_add(L, b, "\"", 1);
        for (size_t i = 0; i < sl; i++) {
          if (s[i] == '"') buf_add(L, b, "\"\"", 2);
          else buf_add(L, b, s + i, 1);
        }
        buf_add(L, b, "\"", 1);
      } else {
        buf_add(L, b, s, sl);
      }
      lua_pop(L, 2);
    }
    buf_add(L, b, "\n", 1);
    if (r > 0) lua_pop(L, 1);
  }
  char err[1024];
  if (write_out(X, name, b->p ? b->p : "", b->len, err, sizeof err)) return luaL_error(L, "zp.write_csv: %s", err);
  lua_settop(L, bi - 1);
  lua_pushstring(L, name);
  return 1;
}

/* Markdown cell format: "bytes", "MiB", "GiB", or a printf conversion %[.N]{f,g,e,d} */
static int fmt_ok(const char* f) {
  if (strcmp(f, "bytes") == 0 || strcmp(f, "MiB") == 0 || strcmp(f, "GiB") == 0 || strcmp(f, "KiB") == 0) return 1;
  if (f[0] != '%') return 0;
  const char* p = f + 1;
  if (*p == '.') {
    p++;
    if (!(*p >= '0' && *p <= '9')) return 0;
    p++;
    if (*p >= '0' && *p <= '9') p++;
  }
  return (*p == 'f' || *p == 'g' || *p == 'e' || *p == 'd') && p[1] == 0;
}

static void fmt_cell(char* out, size_t n, const char* f, double v) {
  if (strcmp(f, "bytes") == 0) zp_fmt_bytes(v, out, n);
  else if (strcmp(f, "KiB") == 0) snprintf(out, n, "%.1f", v / 1024.0);
  else if (strcmp(f, "MiB") == 0) snprintf(out, n, "%.2f", v / 1048576.0);
  else if (strcmp(f, "GiB") == 0) snprintf(out, n, "%.3f", v / 1073741824.0);
  else if (f[strlen(f) - 1] == 'd') snprintf(out, n, "%lld", (long long)llround(v));
  else {
    /* validated: %[.N]{f,g,e} */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    snprintf(out, n, f, v);
#pragma GCC diagnostic pop
  }
}

/* zp.write_markdown(name, rows [, columns [, {title=, formats={col=fmt}}]]) */
static int l_write_markdown(lua_State* L) {
  zp_exp* X = getX(L);
  char name[ZP_EXP_NAME_MAX + 8];
  check_name_arg(L, 1, "zp.write_markdown", ".md", name, sizeof name);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 4);
  if (!lua_isnil(L, 4)) luaL_checktype(L, 4, LUA_TTABLE);
  else {
    lua_newtable(L);
    lua_replace(L, 4);
  }
  int cols = get_columns(L, 2, 3, "zp.write_markdown");
  lua_getfield(L, 4, "formats");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_newtable(L);
  }
  int fmts = lua_gettop(L);
  luaL_checktype(L, fmts, LUA_TTABLE);
  membuf* b = push_buf(L, ZP_EXP_MAX_FILE_BYTES);
  int bi = lua_gettop(L);
  if (lua_getfield(L, 4, "title") == LUA_TSTRING) {
    buf_str(L, b, "## ");
    buf_str(L, b, lua_tostring(L, -1));
    buf_str(L, b, "\n\n");
  }
  lua_pop(L, 1);
  lua_Integer nc = (lua_Integer)lua_rawlen(L, cols), nr = luaL_len(L, 2);
  for (lua_Integer r = -1; r <= nr; r++) {
    if (r > 0 && lua_geti(L, 2, r) != LUA_TTABLE) luaL_error(L, "zp.write_markdown: rows[%d] is not a table", (int)r);
    buf_add(L, b, "|", 1);
    for (lua_Integer c = 1; c <= nc; c++) {
      lua_rawgeti(L, cols, c);
      const char* cn = lua_tostring(L, -1);
      const char* s = "";
      size_t sl = 0;
      char num[96];
      if (r == -1) {
        s = cn;
        sl = strlen(cn);
        lua_pushnil(L);
      } else if (r == 0) {
        s = "---";
        sl = 3;
        lua_pushnil(L);
      } else {
        lua_getfield(L, -2, cn);
        lua_getfield(L, fmts, cn);
        const char* f = lua_tostring(L, -1);
        if (f && !fmt_ok(f)) luaL_error(L, "zp.write_markdown: formats.%s = '%s' (use bytes, KiB, MiB, GiB or %%.Nf / %%.Ng / %%.Ne / %%d)", cn, f);
        int isnum = lua_type(L, -2) == LUA_TNUMBER;
        if (f && isnum) {
          fmt_cell(num, sizeof num, f, lua_tonumber(L, -2));
          s = num;
          sl = strlen(num);
          lua_pop(L, 1);
        } else {
          lua_pop(L, 1);
          if (isnum && !lua_isinteger(L, -1)) {
            double v = lua_tonumber(L, -1);
            snprintf(num, sizeof num, "%.6g", v);
            s = num;
            sl = strlen(num);
          } else {
            cell_text(L, "zp.write_markdown", cn, (int)r, num, sizeof num, &s, &sl);
          }
        }
      }
      buf_add(L, b, " ", 1);
      for (size_t i = 0; i < sl; i++) {
        char ch = s[i];
        if (ch == '|') buf_add(L, b, "\\|", 2);
        else if (ch == '\n' || ch == '\r') buf_add(L, b, " ", 1);
        else buf_add(L, b, &ch, 1);
      }
      buf_add(L, b, " |", 2);
      lua_pop(L, 2);
    }
    buf_add(L, b, "\n", 1);
    if (r > 0) lua_pop(L, 1);
  }
  char err[1024];
  if (write_out(X, name, b->p ? b->p : "", b->len, err, sizeof err)) return luaL_error(L, "zp.write_markdown: %s", err);
  lua_settop(L, bi - 1);
  lua_pushstring(L, name);
  return 1;
}

/* ---------------------------------------------------------------- plots */

static const char* opt_str(lua_State* L, int t, const char* k) {
  int ty = lua_getfield(L, t, k);
  const char* s = NULL;
  if (ty == LUA_TSTRING) s = lua_tostring(L, -1); /* alive: referenced by the spec table */
  else if (ty != LUA_TNIL) luaL_error(L, "plot: %s must be a string", k);
  lua_pop(L, 1);
  return s;
}

static void plot_opts(lua_State* L, int spec, zp_svg_opts* o) {
  memset(o, 0, sizeof *o);
  o->title = opt_str(L, spec, "title");
  o->xlabel = opt_str(L, spec, "xlabel");
  o->ylabel = opt_str(L, spec, "ylabel");
  o->width = (int)opt_int(L, spec, "width", 0, 0, 20000, "plot");
  o->height = (int)opt_int(L, spec, "height", 0, 0, 20000, "plot");
  const char* yf = opt_str(L, spec, "y_format");
  if (yf && strcmp(yf, "bytes") != 0 && strcmp(yf, "number") != 0)
    luaL_error(L, "plot: y_format must be \"bytes\" or \"number\", got '%s'", yf);
  o->y_bytes = yf && strcmp(yf, "bytes") == 0;
}

/* Reads list at top of stack into a fresh userdata array of n doubles (pushed above it). */
static double* list_to_doubles(lua_State* L, const char* what, int idx, size_t* n_out) {
  idx = lua_absindex(L, idx);
  lua_Integer n = luaL_len(L, idx);
  if (n < 0 || n > ZP_SVG_MAX_POINTS) luaL_error(L, "plot: %s has %d values (at most %d)", what, (int)n, ZP_SVG_MAX_POINTS);
  double* d = (double*)lua_newuserdatauv(L, sizeof(double) * (size_t)(n ? n : 1), 0);
  for (lua_Integer i = 1; i <= n; i++) {
    int t = lua_geti(L, idx, i);
    if (t == LUA_TNUMBER) d[i - 1] = lua_tonumber(L, -1);
    else if (t == LUA_TNIL) d[i - 1] = NAN;
    else luaL_error(L, "plot: %s[%d] is a %s, expected a number", what, (int)i, luaL_typename(L, -1));
    lua_pop(L, 1);
  }
  *n_out = (size_t)n;
  return d;
}

/* zp.plot_lines(name, {title=, xlabel=, ylabel=, y_format=, series={{label=, x=, y=}, ...}}) */
static int l_plot_lines(lua_State* L) {
  zp_exp* X = getX(L);
  char name[ZP_EXP_NAME_MAX + 8];
  check_name_arg(L, 1, "zp.plot_lines", ".svg", name, sizeof name);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  zp_svg_opts o;
  plot_opts(L, 2, &o);
  if (lua_getfield(L, 2, "series") != LUA_TTABLE) luaL_error(L, "zp.plot_lines: series must be a list of {label=, x=, y=}");
  int ser = lua_gettop(L);
  lua_Integer ns = luaL_len(L, ser);
  if (ns > ZP_SVG_MAX_SERIES) luaL_error(L, "zp.plot_lines: %d series (at most %d)", (int)ns, ZP_SVG_MAX_SERIES);
  luaL_checkstack(L, (int)ns * 3 + 10, "too many series");
  zp_svg_line* lines = (zp_svg_line*)lua_newuserdatauv(L, sizeof(zp_svg_line) * (size_t)(ns + 1), 0);
  for (lua_Integer i = 1; i <= ns; i++) {
    if (lua_geti(L, ser, i) != LUA_TTABLE) luaL_error(L, "zp.plot_lines: series[%d] is not a table", (int)i);
    int st = lua_gettop(L);
    zp_svg_line* l = &lines[i - 1];
    l->label = opt_str(L, st, "label");
    if (lua_getfield(L, st, "y") != LUA_TTABLE) luaL_error(L, "zp.plot_lines: series[%d].y must be a list of numbers", (int)i);
    size_t ny, nx;
    double* y = list_to_doubles(L, "y", -1, &ny);
    lua_remove(L, -2);
    double* x;
    if (lua_getfield(L, st, "x") == LUA_TTABLE) {
      x = list_to_doubles(L, "x", -1, &nx);
      lua_remove(L, -2);
      if (nx != ny) luaL_error(L, "zp.plot_lines: series[%d] has %d x values and %d y values", (int)i, (int)nx, (int)ny);
    } else {
      if (!lua_isnil(L, -1)) luaL_error(L, "zp.plot_lines: series[%d].x must be a list of numbers", (int)i);
      lua_pop(L, 1);
      x = (double*)lua_newuserdatauv(L, sizeof(double) * (ny ? ny : 1), 0);
      for (size_t k = 0; k < ny; k++) x[k] = (double)(k + 1);
    }
    /* stack: series[i], y, x: keep y and x (they back the arrays); drop series[i] */
    lua_remove(L, st);
    l->x = x;
    l->y = y;
    l->n = ny;
  }
  char err[512];
  size_t len;
  char* svg = zp_svg_lines(&o, lines, (int)ns, &len, err, sizeof err);
  if (!svg) return luaL_error(L, "zp.plot_lines: %s", err);
  int rc = write_out(X, name, svg, len, err, sizeof err);
  free(svg);
  if (rc) return luaL_error(L, "zp.plot_lines: %s", err);
  lua_pushstring(L, name);
  return 1;
}

/* zp.plot_bars(name, {title=, xlabel=, ylabel=, y_format=, stacked=, groups={...},
 *                     series={{label=, values={...}}, ...}}) */
static int l_plot_bars(lua_State* L) {
  zp_exp* X = getX(L);
  char name[ZP_EXP_NAME_MAX + 8];
  check_name_arg(L, 1, "zp.plot_bars", ".svg", name, sizeof name);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  zp_svg_opts o;
  plot_opts(L, 2, &o);
  lua_getfield(L, 2, "stacked");
  int stacked = lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (lua_getfield(L, 2, "groups") != LUA_TTABLE) luaL_error(L, "zp.plot_bars: groups must be a list of labels");
  int gi = lua_gettop(L);
  lua_Integer ng = luaL_len(L, gi);
  if (ng > ZP_SVG_MAX_GROUPS) luaL_error(L, "zp.plot_bars: %d groups (at most %d)", (int)ng, ZP_SVG_MAX_GROUPS);
  const char** groups = (const char**)lua_newuserdatauv(L, sizeof(char*) * (size_t)(ng + 1), 0);
  lua_createtable(L, (int)ng, 0); /* anchor of the label strings (numbers converted) */
  int anchor = lua_gettop(L);
  for (lua_Integer i = 1; i <= ng; i++) {
    int t = lua_geti(L, gi, i);
    if (t != LUA_TSTRING && t != LUA_TNUMBER) luaL_error(L, "zp.plot_bars: groups[%d] must be a string", (int)i);
    lua_tostring(L, -1); /* converts a number in place (this stack copy only) */
    groups[i - 1] = lua_tostring(L, -1);
    lua_rawseti(L, anchor, i); /* alive: stored in the anchor table */
  }
  if (lua_getfield(L, 2, "series") != LUA_TTABLE) luaL_error(L, "zp.plot_bars: series must be a list of {label=, values=}");
  int ser = lua_gettop(L);
  lua_Integer ns = luaL_len(L, ser);
  if (ns > ZP_SVG_MAX_SERIES) luaL_error(L, "zp.plot_bars: %d series (at most %d)", (int)ns, ZP_SVG_MAX_SERIES);
  luaL_checkstack(L, (int)ns * 2 + 10, "too many series");
  zp_svg_bar_series* s = (zp_svg_bar_series*)lua_newuserdatauv(L, sizeof(zp_svg_bar_series) * (size_t)(ns + 1), 0);
  for (lua_Integer i = 1; i <= ns; i++) {
    if (lua_geti(L, ser, i) != LUA_TTABLE) luaL_error(L, "zp.plot_bars: series[%d] is not a table", (int)i);
    int st = lua_gettop(L);
    s[i - 1].label = opt_str(L, st, "label");
    if (lua_getfield(L, st, "values") != LUA_TTABLE) luaL_error(L, "zp.plot_bars: series[%d].values must be a list of numbers", (int)i);
    size_t nv;
    double* v = list_to_doubles(L, "values", -1, &nv);
    lua_remove(L, -2);
    if ((lua_Integer)nv != ng) luaL_error(L, "zp.plot_bars: series[%d] has %d values for %d groups", (int)i, (int)nv, (int)ng);
    lua_remove(L, st);
    s[i - 1].v = v;
  }
  char err[512];
  size_t len;
  char* svg = zp_svg_bars(&o, groups, (int)ng, s, (int)ns, stacked, &len, err, sizeof err);
  if (!svg) return luaL_error(L, "zp.plot_bars: %s", err);
  int rc = write_out(X, name, svg, len, err, sizeof err);
  free(svg);
  if (rc) return luaL_error(L, "zp.plot_bars: %s", err);
  lua_pushstring(L, name);
  return 1;
}

/* ---------------------------------------------------------------- misc */

/* zp.log(...): the arguments through tostring, space separated, one line on stdout */
static int l_log(lua_State* L) {
  int n = lua_gettop(L);
  luaL_Buffer B;
  luaL_buffinit(L, &B);
  for (int i = 1; i <= n; i++) {
    if (i > 1) luaL_addchar(&B, ' ');
    luaL_tolstring(L, i, NULL);
    luaL_addvalue(&B);
  }
  luaL_pushresult(&B);
  size_t len;
  const char* s = lua_tolstring(L, -1, &len);
  fwrite(s, 1, len, stdout);
  fputc('\n', stdout);
  fflush(stdout);
  return 0;
}

/* ---------------------------------------------------------------- install and run */

static const luaL_Reg kZpFuncs[] = {
    {"config", l_config},         {"plan", l_plan},
    {"write_csv", l_write_csv},   {"write_markdown", l_write_markdown},
    {"plot_lines", l_plot_lines}, {"plot_bars", l_plot_bars},
    {"log", l_log},               {NULL, NULL}};

static const luaL_Reg kCfgMethods[] = {
    {"set", m_set},   {"get", m_get},           {"copy", m_copy}, {"with", m_with},
    {"path", m_path}, {"overrides", m_overrides}, {NULL, NULL}};

typedef struct {
  zp_exp* X;
  const zp_exp_opts* o;
  const char* script_abs;
} install_ctx;

static int install_body(lua_State* L) {
  install_ctx* ic = (install_ctx*)lua_touserdata(L, 1);
  zp_exp* X = ic->X;
  lua_settop(L, 0);
  /* guard metatables */
  luaL_newmetatable(L, MT_CFGGUARD);
  lua_pushcfunction(L, cfgguard_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  luaL_newmetatable(L, MT_RUNGUARD);
  lua_pushcfunction(L, runguard_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  luaL_newmetatable(L, MT_BUF);
  lua_pushcfunction(L, buf_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  luaL_newmetatable(L, MT_FD);
  lua_pushcfunction(L, fd_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  /* config objects */
  luaL_newmetatable(L, MT_CONFIG);
  lua_newtable(L);
  lua_pushlightuserdata(L, X);
  luaL_setfuncs(L, kCfgMethods, 1);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, m_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pushliteral(L, "zp.config");
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);
  /* the zp table */
  lua_newtable(L);
  lua_pushlightuserdata(L, X);
  luaL_setfuncs(L, kZpFuncs, 1);
  lua_pushlightuserdata(L, X);
  lua_newtable(L); /* names used, in order */
  lua_newtable(L); /* names used, as a set */
  lua_pushcclosure(L, l_train, 3);
  lua_setfield(L, -2, "train");
  lua_newtable(L);
  for (int i = 0; i < ic->o->n_args; i++) {
    const char* a = ic->o->args[i];
    const char* eq = strchr(a, '=');
    if (!eq) continue;
    lua_pushlstring(L, a, (size_t)(eq - a));
    lua_pushstring(L, eq + 1);
    lua_rawset(L, -3);
  }
  lua_setfield(L, -2, "args");
  lua_pushstring(L, X->out_abs);
  lua_setfield(L, -2, "out_dir");
  lua_pushstring(L, ic->script_abs);
  lua_setfield(L, -2, "script");
  lua_pushstring(L, ZP_VERSION_STRING);
  lua_setfield(L, -2, "version");
  lua_setglobal(L, "zp");
  return 0;
}

static int mkdir_parents(const char* path) {
  char tmp[PATH_MAX];
  if (snprintf(tmp, sizeof tmp, "%s", path) >= (int)sizeof tmp) {
    errno = ENAMETOOLONG;
    return -1;
  }
  for (char* p = tmp + 1; *p; p++)
    if (*p == '/') {
      *p = 0;
      if (mkdir(tmp, 0755) && errno != EEXIST) return -1;
      *p = '/';
    }
  if (mkdir(tmp, 0755) && errno != EEXIST) return -1;
  return 0;
}

int zp_experiment_run(const zp_exp_opts* o, char* err, size_t errlen) {
  if (!o || !o->script || !o->out_dir) {
    snprintf(err, errlen, "zp_experiment_run: missing script or output directory");
    return -1;
  }
  zp_exp* X = (zp_exp*)calloc(1, sizeof *X);
  if (!X) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  X->out_fd = -1;
  X->sets = o->sets;
  X->n_sets = o->n_sets;
  X->quiet = o->quiet;
  int rc = -1;
  zp_lua* Z = NULL;
  char script_abs[PATH_MAX];
  if (!realpath(o->script, script_abs)) {
    snprintf(err, errlen, "%s: %s", o->script, strerror(errno));
    goto done;
  }
  snprintf(X->script_dir, sizeof X->script_dir, "%s", script_abs);
  {
    char* sl = strrchr(X->script_dir, '/');
    if (sl && sl != X->script_dir) *sl = 0;
    else snprintf(X->script_dir, sizeof X->script_dir, "/");
  }
  if (o->exe) {
    if (!realpath(o->exe, X->exe)) {
      snprintf(err, errlen, "%s: %s", o->exe, strerror(errno));
      goto done;
    }
  } else {
    ssize_t n = readlink("/proc/self/exe", X->exe, sizeof X->exe - 1);
    if (n <= 0) {
      snprintf(err, errlen, "cannot find the zp binary (/proc/self/exe): %s", strerror(errno));
      goto done;
    }
    X->exe[n] = 0;
  }
  /* compile the script before anything is created: a syntax error leaves no output directory
   * behind (the chunk waits on the stack below the install call) */
  zp_lua_limits lim = {ZP_EXP_MEM_LIMIT, o->instr_limit > 0 ? o->instr_limit : ZP_EXP_INSTR_LIMIT, 0};
  Z = zp_lua_new(&lim, err, errlen);
  if (!Z) goto done;
  if (zp_lua_load_file(Z, o->script, err, errlen) != 0) goto done;
  if (mkdir_parents(o->out_dir) != 0) {
    snprintf(err, errlen, "output directory %s: cannot create: %s", o->out_dir, strerror(errno));
    goto done;
  }
  if (!realpath(o->out_dir, X->out_abs)) {
    snprintf(err, errlen, "output directory %s: %s", o->out_dir, strerror(errno));
    goto done;
  }
  X->out_fd = open(X->out_abs, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (X->out_fd < 0) {
    snprintf(err, errlen, "output directory %s: %s", X->out_abs, strerror(errno));
    goto done;
  }
  lua_State* L = zp_lua_state(Z);
  install_ctx ic = {X, o, script_abs};
  if (!lua_checkstack(L, 3)) {
    snprintf(err, errlen, "Lua stack overflow");
    goto done;
  }
  lua_pushcfunction(L, install_body);
  lua_pushlightuserdata(L, &ic);
  if (zp_lua_pcall(Z, 1, 0, err, errlen) != 0) goto done;
  if (zp_lua_pcall(Z, 0, 0, err, errlen) != 0) goto done; /* the compiled script */
  rc = 0;
done:
  if (Z) zp_lua_free(Z); /* collects guards: frees what an error left behind */
  if (X->out_fd >= 0) close(X->out_fd);
  free(X);
  return rc;
}
