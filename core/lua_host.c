/* lua_host.c: the sandboxed Lua 5.4 host (see lua_host.h for the API contract).
 *
 * Purpose: own one lua_State per zp_lua with a counting allocator (memory cap), a count hook
 * (instruction budget), a restricted standard library, and protected entry points that turn
 * every Lua failure into "file:line: message" (+ traceback) in a caller buffer.
 *
 * Invariants:
 * - The allocator's userdata is the zp_lua; hooks and handlers recover it with
 *   lua_getallocf, so there is no global state and states are independent.
 * - mem_used is exactly the sum of live block sizes Lua holds. Growth past mem_limit is
 *   refused (NULL); shrinking and freeing never fail. While our traceback handler runs, a
 *   small slack (ZP_LUA_HANDLER_SLACK) is allowed so that a traceback can still be built
 *   when a script filled memory right up to the cap.
 * - Memory errors skip the message handler (Lua raises them directly), so they come back as
 *   "not enough memory" without a traceback; we add which cap was hit.
 * - The budget counters are reset only when the outermost zp_lua_pcall starts (depth 0).
 *   After the limit is hit, the hook runs on every instruction and raises each time, so no
 *   Lua-level pcall/xpcall can absorb the error. Finalizers run with hooks off in Lua, so
 *   the sandbox's setmetatable refuses __gc (no other way to set a table's metatable is
 *   open); zp_lua_free still arms the exceeded state before lua_close as a second guard.
 * - No Lua API call that can raise runs outside lua_pcall/lua_load (the only exceptions
 *   are stack-only calls: push of light C functions / light userdata / numbers after
 *   lua_checkstack, lua_insert/remove/pop, lua_type, lua_tolstring on actual strings).
 * - No abort, exit or assert.
 */
#include "lua_host.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#define ZP_LUA_HOOK_EVERY 1000
#define ZP_LUA_HANDLER_SLACK ((size_t)1 << 20)
#define ZP_LUA_MAX_NUM_ARGS 200
#define ZP_LUA_RESERVED_SLOT 5 /* stack slot holding the reader's last piece (as lbaselib) */

struct zp_lua {
  lua_State* L;
  size_t mem_used, mem_limit, mem_peak;
  int in_handler;       /* traceback handler running: allow ZP_LUA_HANDLER_SLACK more */
  long long instr_limit;
  long long instr_used; /* instructions counted in the current outermost call */
  int instr_exceeded;   /* sticky until the outermost call returns */
  int depth;            /* nesting of zp_lua_pcall */
  double time_limit;    /* seconds per outermost call, 0 = none */
  double deadline;      /* CLOCK_MONOTONIC seconds of the current outermost call */
  size_t alloc_since;   /* bytes allocated since the clock was last read */
  int time_exceeded;    /* sticky until the outermost call returns */
};

static double zl_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---------------------------------------------------------------- small helpers */

static void zl_seterr(char* err, size_t errlen, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void zl_seterr(char* err, size_t errlen, const char* fmt, ...) {
  if (!err || errlen == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

static zp_lua* zl_host(lua_State* L) {
  void* ud = NULL;
  (void)lua_getallocf(L, &ud);
  return (zp_lua*)ud;
}

static void zl_fmt_bytes(char* buf, size_t n, size_t bytes) {
  if (bytes >= ((size_t)1 << 20) && bytes % ((size_t)1 << 20) == 0)
    snprintf(buf, n, "%zu MiB", bytes >> 20);
  else
    snprintf(buf, n, "%zu bytes", bytes);
}

/* ---------------------------------------------------------------- allocator */

static void* zl_alloc(void* ud, void* ptr, size_t osize, size_t nsize) {
  zp_lua* Z = (zp_lua*)ud;
  size_t old = ptr ? osize : 0; /* with ptr == NULL, osize is a type tag */
  if (nsize == 0) {
    free(ptr);
    Z->mem_used -= old;
    return NULL;
  }
  if (nsize > old) {
    size_t cap = Z->mem_limit + (Z->in_handler ? ZP_LUA_HANDLER_SLACK : 0);
    if (Z->mem_used > cap || nsize - old > cap - Z->mem_used) return NULL;
  }
  if (nsize > old && Z->time_limit > 0 && Z->depth > 0) {
    /* library calls that allocate (string.rep, concatenation, table growth) run no
     * instructions: the clock is read here too, once per MiB */
    Z->alloc_since += nsize - old;
    if (Z->alloc_since >= ((size_t)1 << 20)) {
      Z->alloc_since = 0;
      if (Z->time_exceeded || zl_now() > Z->deadline) {
        Z->time_exceeded = 1;
        return NULL; /* a memory error, reported as the time limit by zl_take_error */
      }
    }
  }
  void* p = realloc(ptr, nsize);
  if (!p) return NULL;
  Z->mem_used = Z->mem_used - old + nsize;
  if (Z->mem_used > Z->mem_peak) Z->mem_peak = Z->mem_used;
  return p;
}

static int zl_panic(lua_State* L) {
  const char* msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "(non-string error)";
  fprintf(stderr,
          "zp: unprotected Lua error (host bug: raising Lua API call outside zp_lua_pcall): %s\n",
          msg);
  fflush(stderr);
  return 0; /* Lua aborts after this; reaching here is a bug in the host, not the script */
}

/* ---------------------------------------------------------------- instruction budget */

static void zl_count_hook(lua_State* L, lua_Debug* ar) {
  (void)ar;
  zp_lua* Z = zl_host(L);
  Z->instr_used += Z->instr_exceeded ? 1 : ZP_LUA_HOOK_EVERY;
  if (Z->time_limit > 0 && (Z->time_exceeded || zl_now() > Z->deadline)) {
    if (!Z->time_exceeded) {
      Z->time_exceeded = 1;
      lua_sethook(L, zl_count_hook, LUA_MASKCOUNT, 1); /* sticky: raise on every instruction */
    }
    luaL_where(L, 0);
    lua_pushfstring(L, "time limit exceeded (%f s)", Z->time_limit);
    lua_concat(L, 2);
    lua_error(L);
  }
  if (!Z->instr_exceeded && Z->instr_used <= Z->instr_limit) return;
  if (!Z->instr_exceeded) {
    Z->instr_exceeded = 1;
    lua_sethook(L, zl_count_hook, LUA_MASKCOUNT, 1); /* sticky: raise on every instruction */
  }
  /* In a hook no CallInfo is pushed for us: level 0 is the running Lua function. */
  luaL_where(L, 0);
  lua_pushfstring(L, "instruction limit exceeded (%I)", (lua_Integer)Z->instr_limit);
  lua_concat(L, 2);
  lua_error(L);
}

static void zl_budget_enter(zp_lua* Z) {
  if (Z->depth++ == 0) {
    Z->instr_used = 0;
    Z->instr_exceeded = 0;
    Z->time_exceeded = 0;
    Z->alloc_since = 0;
    if (Z->time_limit > 0) Z->deadline = zl_now() + Z->time_limit;
    lua_sethook(Z->L, zl_count_hook, LUA_MASKCOUNT, ZP_LUA_HOOK_EVERY); /* resets the count */
  }
}

static void zl_budget_leave(zp_lua* Z) {
  if (Z->depth > 0) Z->depth--;
}

/* ---------------------------------------------------------------- protected call */

/* Message handler: message (or __tostring of the error object) + traceback. */
static int zl_msgh(lua_State* L) {
  zp_lua* Z = zl_host(L);
  Z->in_handler = 1;
  const char* msg = lua_type(L, 1) == LUA_TSTRING || lua_type(L, 1) == LUA_TNUMBER
                        ? lua_tostring(L, 1) : NULL;
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      msg = lua_tostring(L, -1);
    else
      msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  Z->in_handler = 0;
  return 1;
}

/* Copies the error at the top of the stack into err (without allocating) and pops it. */
static void zl_take_error(zp_lua* Z, int status, char* err, size_t errlen) {
  lua_State* L = Z->L;
  const char* msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
  if (status == LUA_ERRMEM && Z->time_exceeded) {
    zl_seterr(err, errlen, "time limit exceeded (%g s) inside a library call", Z->time_limit);
  } else if (status == LUA_ERRMEM) {
    char lim[64];
    zl_fmt_bytes(lim, sizeof lim, Z->mem_limit);
    zl_seterr(err, errlen, "%s (Lua memory limit of %s reached)",
              msg ? msg : "not enough memory", lim);
  } else if (status == LUA_ERRERR) {
    zl_seterr(err, errlen, "%s (the traceback handler failed: out of memory, instruction "
              "limit, or a failing __tostring)", msg ? msg : "error in error handling");
  } else if (msg) {
    zl_seterr(err, errlen, "%s", msg);
  } else {
    zl_seterr(err, errlen, "(error object is a %s value)", luaL_typename(L, -1));
  }
  lua_pop(L, 1);
}

int zp_lua_pcall(zp_lua* Z, int nargs, int nresults, char* err, size_t errlen) {
  if (!Z) {
    zl_seterr(err, errlen, "zp_lua_pcall: no Lua state");
    return -1;
  }
  lua_State* L = Z->L;
  int top = lua_gettop(L);
  if (nargs < 0 || top < nargs + 1) {
    zl_seterr(err, errlen, "zp_lua_pcall: stack holds %d values, need a function and %d "
              "arguments", top, nargs);
    return -1;
  }
  int base = top - nargs; /* index of the function */
  if (!lua_checkstack(L, 2 + (nresults > 0 ? nresults : 0))) {
    lua_settop(L, base - 1);
    zl_seterr(err, errlen, "zp_lua_pcall: Lua stack overflow");
    return -1;
  }
  lua_pushcfunction(L, zl_msgh);
  lua_insert(L, base);
  int saved_handler = Z->in_handler;
  zl_budget_enter(Z);
  int st = lua_pcall(L, nargs, nresults, base);
  zl_budget_leave(Z);
  Z->in_handler = saved_handler;
  lua_remove(L, base);
  if (st != LUA_OK) {
    zl_take_error(Z, st, err, errlen);
    return -1;
  }
  return 0;
}

/* Runs a light C function f(ud) protected (nresults results left on success). */
static int zl_protected(zp_lua* Z, lua_CFunction f, void* ud, int nresults, char* err,
                        size_t errlen) {
  if (!lua_checkstack(Z->L, 3)) {
    zl_seterr(err, errlen, "Lua stack overflow");
    return -1;
  }
  lua_pushcfunction(Z->L, f);
  lua_pushlightuserdata(Z->L, ud);
  return zp_lua_pcall(Z, 1, nresults, err, errlen);
}

/* ---------------------------------------------------------------- sandboxed library */

static int zl_is_binary(const char* s, size_t n) {
  return n > 0 && s[0] == LUA_SIGNATURE[0];
}

static const char zl_binary_msg[] =
    "binary (precompiled) Lua chunks are refused by the zp sandbox; load Lua source text";

typedef struct {
  int seen_first; /* a non-empty piece was returned */
  int binary;     /* the first piece starts with the bytecode signature */
} zl_reader_state;

static const char* zl_fn_reader(lua_State* L, void* ud, size_t* size) {
  zl_reader_state* rs = (zl_reader_state*)ud;
  luaL_checkstack(L, 2, "too many nested functions");
  lua_pushvalue(L, 1);
  lua_call(L, 0, 1);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    *size = 0;
    return NULL;
  }
  if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "reader function must return a string");
  lua_replace(L, ZP_LUA_RESERVED_SLOT);
  const char* s = lua_tolstring(L, ZP_LUA_RESERVED_SLOT, size);
  if (!rs->seen_first && *size > 0) {
    rs->seen_first = 1;
    rs->binary = zl_is_binary(s, *size);
  }
  return s;
}

/* load(chunk [, chunkname [, mode [, env]]]): as the standard one, but mode is always "t". */
static int zl_load(lua_State* L) {
  int status;
  size_t len;
  int env = !lua_isnone(L, 4) ? 4 : 0;
  (void)luaL_optstring(L, 3, "t"); /* accepted for compatibility, ignored: always text */
  if (lua_type(L, 1) == LUA_TSTRING) {
    const char* s = lua_tolstring(L, 1, &len);
    const char* name = luaL_optstring(L, 2, s);
    if (zl_is_binary(s, len)) {
      luaL_pushfail(L);
      lua_pushstring(L, zl_binary_msg);
      return 2;
    }
    status = luaL_loadbufferx(L, s, len, name, "t");
  } else {
    const char* name = luaL_optstring(L, 2, "=(load)");
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_settop(L, ZP_LUA_RESERVED_SLOT);
    zl_reader_state rs = {0, 0};
    status = lua_load(L, zl_fn_reader, &rs, name, "t");
    if (status != LUA_OK && rs.binary) {
      lua_pop(L, 1);
      lua_pushstring(L, zl_binary_msg);
    }
  }
  if (status != LUA_OK) {
    luaL_pushfail(L);
    lua_insert(L, -2);
    return 2;
  }
  if (env != 0) {
    lua_pushvalue(L, env);
    if (!lua_setupvalue(L, -2, 1)) lua_pop(L, 1);
  }
  return 1;
}

/* collectgarbage([opt [, arg]]) restricted to options that cannot disable or retune the GC. */
static int zl_collectgarbage(lua_State* L) {
  const char* opt = luaL_optstring(L, 1, "collect");
  if (strcmp(opt, "collect") == 0) {
    lua_gc(L, LUA_GCCOLLECT);
    lua_pushinteger(L, 0);
  } else if (strcmp(opt, "count") == 0) {
    int kb = lua_gc(L, LUA_GCCOUNT), b = lua_gc(L, LUA_GCCOUNTB);
    lua_pushnumber(L, (lua_Number)kb + ((lua_Number)b / 1024));
  } else if (strcmp(opt, "step") == 0) {
    int n = (int)luaL_optinteger(L, 2, 0);
    lua_pushboolean(L, lua_gc(L, LUA_GCSTEP, n) == 1);
  } else if (strcmp(opt, "isrunning") == 0) {
    lua_pushboolean(L, lua_gc(L, LUA_GCISRUNNING) == 1);
  } else {
    return luaL_error(L, "collectgarbage: option '%s' is not allowed in the zp sandbox "
                      "(allowed: collect, count, step, isrunning)", opt);
  }
  return 1;
}

/* setmetatable(t, mt) as the standard one, but refusing __gc: finalizers run with hooks
 * disabled (Lua's GCTM), so a looping finalizer could not be stopped by the budget. */
static int zl_setmetatable(lua_State* L) {
  int t = lua_type(L, 2);
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_argexpected(L, t == LUA_TNIL || t == LUA_TTABLE, 2, "nil or table");
  if (t == LUA_TTABLE) {
    lua_pushliteral(L, "__gc");
    int has_gc = lua_rawget(L, 2) != LUA_TNIL;
    lua_pop(L, 1);
    if (has_gc) return luaL_error(L, "__gc metamethods are not allowed in the zp sandbox");
  }
  if (luaL_getmetafield(L, 1, "__metatable") != LUA_TNIL)
    return luaL_error(L, "cannot change a protected metatable");
  lua_settop(L, 2);
  lua_setmetatable(L, 1);
  return 1;
}

/* xpcall(f, msgh, ...) as the standard one, but the user's handler is skipped once the
 * instruction budget is exhausted: an error raised from the count hook calls the handler
 * while Lua still has hooks disabled, so a looping handler could never be stopped. */
static int zl_xpcall_handler(lua_State* L) {
  if (zl_host(L)->instr_exceeded) return 1; /* pass the error object through */
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

static int zl_finish_pcall(lua_State* L, int status, lua_KContext extra) {
  if (status != LUA_OK && status != LUA_YIELD) {
    lua_pushboolean(L, 0);
    lua_pushvalue(L, -2);
    return 2;
  }
  return lua_gettop(L) - (int)extra;
}

static int zl_xpcall(lua_State* L) {
  int n = lua_gettop(L);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_pushvalue(L, 2);
  lua_pushcclosure(L, zl_xpcall_handler, 1);
  lua_replace(L, 2);
  lua_pushboolean(L, 1);
  lua_pushvalue(L, 1);
  lua_rotate(L, 3, 2); /* true, f below f's arguments */
  int status = lua_pcallk(L, n - 2, LUA_MULTRET, 2, 2, zl_finish_pcall);
  return zl_finish_pcall(L, status, 2);
}

static int zl_open_sandbox(lua_State* L) {
  luaL_requiref(L, LUA_GNAME, luaopen_base, 1);
  luaL_requiref(L, LUA_TABLIBNAME, luaopen_table, 1);
  luaL_requiref(L, LUA_STRLIBNAME, luaopen_string, 1);
  luaL_requiref(L, LUA_MATHLIBNAME, luaopen_math, 1);
  luaL_requiref(L, LUA_UTF8LIBNAME, luaopen_utf8, 1);
  lua_settop(L, 0);
  static const char* const removed[] = {"dofile", "loadfile", "require", "loadstring", NULL};
  for (const char* const* r = removed; *r; r++) {
    lua_pushnil(L);
    lua_setglobal(L, *r);
  }
  lua_pushcfunction(L, zl_load);
  lua_setglobal(L, "load");
  lua_pushcfunction(L, zl_collectgarbage);
  lua_setglobal(L, "collectgarbage");
  lua_pushcfunction(L, zl_setmetatable);
  lua_setglobal(L, "setmetatable");
  lua_pushcfunction(L, zl_xpcall);
  lua_setglobal(L, "xpcall");
  lua_getglobal(L, LUA_STRLIBNAME);
  lua_pushnil(L);
  lua_setfield(L, -2, "dump");
  lua_pop(L, 1);
  /* reproducible math.random (lua 5.4 seeds it from time and addresses by default) */
  lua_getglobal(L, LUA_MATHLIBNAME);
  lua_getfield(L, -1, "randomseed");
  lua_pushinteger(L, 0);
  lua_call(L, 1, 0);
  lua_pop(L, 1);
  return 0;
}

/* ---------------------------------------------------------------- lifetime */

zp_lua* zp_lua_new(const zp_lua_limits* lim, char* err, size_t errlen) {
  zl_seterr(err, errlen, "%s", "");
  if (lim && lim->instr_limit < 0) {
    zl_seterr(err, errlen, "Lua instruction limit must be >= 0 (0 = default %lld), got %lld",
              ZP_LUA_DEFAULT_INSTR_LIMIT, lim->instr_limit);
    return NULL;
  }
  zp_lua* Z = (zp_lua*)calloc(1, sizeof *Z);
  if (!Z) {
    zl_seterr(err, errlen, "out of memory allocating the Lua host");
    return NULL;
  }
  Z->mem_limit = lim && lim->mem_limit_bytes ? lim->mem_limit_bytes : ZP_LUA_DEFAULT_MEM_LIMIT;
  Z->instr_limit = lim && lim->instr_limit ? lim->instr_limit : ZP_LUA_DEFAULT_INSTR_LIMIT;
  Z->time_limit = lim && lim->time_limit_s > 0 ? lim->time_limit_s : 0;
  char limtxt[64];
  zl_fmt_bytes(limtxt, sizeof limtxt, Z->mem_limit);
  Z->L = lua_newstate(zl_alloc, Z);
  if (!Z->L) {
    zl_seterr(err, errlen, "cannot create a Lua state within the memory limit of %s", limtxt);
    free(Z);
    return NULL;
  }
  lua_atpanic(Z->L, zl_panic);
  lua_sethook(Z->L, zl_count_hook, LUA_MASKCOUNT, ZP_LUA_HOOK_EVERY);
  char msg[256];
  if (zl_protected(Z, zl_open_sandbox, NULL, 0, msg, sizeof msg) != 0) {
    zl_seterr(err, errlen, "cannot open the Lua libraries (memory limit %s): %s", limtxt, msg);
    zp_lua_free(Z);
    return NULL;
  }
  return Z;
}

void zp_lua_free(zp_lua* Z) {
  if (!Z) return;
  if (Z->L) {
    /* __gc finalizers run inside lua_close: give them no instruction budget at all. */
    Z->instr_exceeded = 1;
    Z->depth = 1;
    lua_sethook(Z->L, zl_count_hook, LUA_MASKCOUNT, 1);
    lua_close(Z->L);
  }
  free(Z);
}

struct lua_State* zp_lua_state(zp_lua* Z) { return Z ? Z->L : NULL; }
size_t zp_lua_mem_used(const zp_lua* Z) { return Z ? Z->mem_used : 0; }
size_t zp_lua_mem_limit(const zp_lua* Z) { return Z ? Z->mem_limit : 0; }

/* ---------------------------------------------------------------- loading */

/* Compiles text (already stripped of BOM/shebang) under "@name"; pushes the chunk. */
static int zl_load_text(zp_lua* Z, const char* code, size_t len, const char* name, char* err,
                        size_t errlen) {
  if (zl_is_binary(code, len)) {
    zl_seterr(err, errlen, "%s: %s", name, zl_binary_msg);
    return -1;
  }
  if (!lua_checkstack(Z->L, 2)) {
    zl_seterr(err, errlen, "%s: Lua stack overflow", name);
    return -1;
  }
  size_t nlen = strlen(name);
  char* chunkname = (char*)malloc(nlen + 2);
  if (!chunkname) {
    zl_seterr(err, errlen, "%s: out of memory", name);
    return -1;
  }
  if (name[0] == '@' || name[0] == '=') {
    memcpy(chunkname, name, nlen + 1);
  } else {
    chunkname[0] = '@';
    memcpy(chunkname + 1, name, nlen + 1);
  }
  /* lua_load is protected; the name is copied into a Lua string inside it */
  int st = luaL_loadbufferx(Z->L, code, len, chunkname, "t");
  free(chunkname);
  if (st != LUA_OK) {
    zl_take_error(Z, st, err, errlen);
    return -1;
  }
  return 0;
}

static size_t zl_skip_bom(const char* s, size_t n) {
  return n >= 3 && (unsigned char)s[0] == 0xEF && (unsigned char)s[1] == 0xBB &&
                 (unsigned char)s[2] == 0xBF ? 3 : 0;
}

int zp_lua_load_string(zp_lua* Z, const char* code, size_t len, const char* chunkname,
                       char* err, size_t errlen) {
  if (!Z || !code) {
    zl_seterr(err, errlen, "zp_lua_load_string: %s", !Z ? "no Lua state" : "no code");
    return -1;
  }
  size_t off = zl_skip_bom(code, len);
  return zl_load_text(Z, code + off, len - off, chunkname ? chunkname : "=(string)", err,
                      errlen);
}

int zp_lua_load_file(zp_lua* Z, const char* path, char* err, size_t errlen) {
  if (!Z || !path) {
    zl_seterr(err, errlen, "zp_lua_load_file: %s", !Z ? "no Lua state" : "no path");
    return -1;
  }
  FILE* f = fopen(path, "rb");
  if (!f) {
    zl_seterr(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    return -1;
  }
  size_t cap = 4096, n = 0;
  char* buf = (char*)malloc(cap);
  int rc = -1;
  if (!buf) {
    zl_seterr(err, errlen, "%s: out of memory", path);
    goto done;
  }
  for (;;) {
    if (n == cap) {
      if (cap >= Z->mem_limit) {
        zl_seterr(err, errlen, "%s: file larger than the Lua memory limit", path);
        goto done;
      }
      char* nb = (char*)realloc(buf, cap * 2);
      if (!nb) {
        zl_seterr(err, errlen, "%s: out of memory", path);
        goto done;
      }
      buf = nb;
      cap *= 2;
    }
    size_t got = fread(buf + n, 1, cap - n, f);
    n += got;
    if (got == 0) {
      if (ferror(f)) {
        zl_seterr(err, errlen, "%s: read error: %s", path, strerror(errno));
        goto done;
      }
      break;
    }
  }
  {
    size_t off = zl_skip_bom(buf, n);
    if (off < n && buf[off] == '#') { /* shebang line: skip it but keep its newline */
      while (off < n && buf[off] != '\n') off++;
    }
    rc = zl_load_text(Z, buf + off, n - off, path, err, errlen);
  }
done:
  free(buf);
  fclose(f);
  return rc;
}

int zp_lua_run_file(zp_lua* Z, const char* path, char* err, size_t errlen) {
  if (zp_lua_load_file(Z, path, err, errlen) != 0) return -1;
  return zp_lua_pcall(Z, 0, 0, err, errlen);
}

int zp_lua_run_string(zp_lua* Z, const char* code, const char* chunkname, char* err,
                      size_t errlen) {
  if (zp_lua_load_string(Z, code, code ? strlen(code) : 0, chunkname, err, errlen) != 0)
    return -1;
  return zp_lua_pcall(Z, 0, 0, err, errlen);
}

/* ---------------------------------------------------------------- conveniences */

typedef struct {
  const char* fn;
  const double* args;
  int nargs;
  int nret;
  int rtype;
  double out;
  char where[128];
} zl_callnum;

static int zl_callnum_body(lua_State* L) {
  zl_callnum* c = (zl_callnum*)lua_touserdata(L, 1);
  lua_settop(L, 0);
  luaL_checkstack(L, c->nargs + 2, "too many arguments");
  int t = lua_getglobal(L, c->fn);
  if (t != LUA_TFUNCTION)
    return luaL_error(L, "no global function '%s' (it is %s)", c->fn,
                      t == LUA_TNIL ? "nil" : lua_typename(L, t));
  lua_Debug ar;
  lua_pushvalue(L, 1);
  if (lua_getinfo(L, ">S", &ar))
    snprintf(c->where, sizeof c->where, "%s:%d", ar.short_src, ar.linedefined);
  for (int i = 0; i < c->nargs; i++) lua_pushnumber(L, (lua_Number)c->args[i]);
  lua_call(L, c->nargs, LUA_MULTRET);
  c->nret = lua_gettop(L);
  if (c->nret >= 1) {
    c->rtype = lua_type(L, 1);
    if (c->rtype == LUA_TNUMBER) c->out = (double)lua_tonumber(L, 1);
  }
  lua_settop(L, 0);
  return 0;
}

int zp_lua_call_numbers(zp_lua* Z, const char* fn, const double* args, int nargs, double* out,
                        char* err, size_t errlen) {
  if (!Z || !fn || !out || nargs < 0 || nargs > ZP_LUA_MAX_NUM_ARGS || (nargs > 0 && !args)) {
    zl_seterr(err, errlen, "zp_lua_call_numbers: invalid arguments");
    return -1;
  }
  zl_callnum c;
  memset(&c, 0, sizeof c);
  c.fn = fn;
  c.args = args;
  c.nargs = nargs;
  snprintf(c.where, sizeof c.where, "?");
  if (zl_protected(Z, zl_callnum_body, &c, 0, err, errlen) != 0) return -1;
  const char* what = NULL;
  char got[64];
  if (c.nret == 0) {
    what = "returned no value";
  } else if (c.nret > 1) {
    snprintf(got, sizeof got, "returned %d values", c.nret);
    what = got;
  } else if (c.rtype != LUA_TNUMBER) {
    snprintf(got, sizeof got, "returned a %s", lua_typename(Z->L, c.rtype));
    what = got;
  } else if (isnan(c.out)) {
    what = "returned nan";
  } else if (isinf(c.out)) {
    what = c.out > 0 ? "returned inf" : "returned -inf";
  }
  if (what) {
    zl_seterr(err, errlen, "Lua function '%s' (defined at %s) %s; expected one finite number",
              fn, c.where, what);
    return -1;
  }
  *out = c.out;
  return 0;
}

typedef struct {
  const char* name;
  int is_fn;
} zl_hasfn;

static int zl_hasfn_body(lua_State* L) {
  zl_hasfn* h = (zl_hasfn*)lua_touserdata(L, 1);
  h->is_fn = lua_getglobal(L, h->name) == LUA_TFUNCTION;
  return 0;
}

int zp_lua_has_function(zp_lua* Z, const char* name) {
  if (!Z || !name) return 0;
  zl_hasfn h = {name, 0};
  char err[8];
  if (zl_protected(Z, zl_hasfn_body, &h, 0, err, sizeof err) != 0) return 0;
  return h.is_fn;
}

typedef struct {
  const char* name;
  const char* const* keys;
  const double* vals;
  int n;
} zl_setnums;

static int zl_setnums_body(lua_State* L) {
  zl_setnums* s = (zl_setnums*)lua_touserdata(L, 1);
  lua_createtable(L, 0, s->n);
  for (int i = 0; i < s->n; i++) {
    double v = s->vals[i];
    if (v == floor(v) && fabs(v) <= 9007199254740992.0)
      lua_pushinteger(L, (lua_Integer)v);
    else
      lua_pushnumber(L, (lua_Number)v);
    lua_setfield(L, -2, s->keys[i]);
  }
  lua_setglobal(L, s->name);
  return 0;
}

int zp_lua_set_global_numbers(zp_lua* Z, const char* name, const char* const* keys,
                              const double* vals, int n, char* err, size_t errlen) {
  if (!Z || !name || n < 0 || (n > 0 && (!keys || !vals))) {
    zl_seterr(err, errlen, "zp_lua_set_global_numbers: invalid arguments");
    return -1;
  }
  for (int i = 0; i < n; i++)
    if (!keys[i]) {
      zl_seterr(err, errlen, "zp_lua_set_global_numbers: key %d is NULL", i);
      return -1;
    }
  zl_setnums s = {name, keys, vals, n};
  return zl_protected(Z, zl_setnums_body, &s, 0, err, errlen);
}
