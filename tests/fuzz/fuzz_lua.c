/* fuzz_lua.c: libFuzzer target for the Lua sandbox (core/lua_host.c, Lua 5.4).
 * The input is a chunk run in a fresh zp_lua with small limits (8 MiB, 1M instructions):
 * with zp_lua_run_string when it has no NUL byte, else zp_lua_load_string (full length) +
 * zp_lua_pcall. Before it runs, the global table `config` is set as for LR schedules; after
 * it, a global function `lr` (if any) is called through zp_lua_call_numbers with a few
 * argument lists, and a fixed chunk runs in the same state.
 * Failures: any crash, leak or undefined behaviour; Lua's panic (an unprotected error is a
 * host bug; Lua aborts); a timeout (-timeout=10: the instruction budget must stop Lua code,
 * though lua_host.h documents that one long C library call, e.g. a pathological string.find
 * pattern, cannot be interrupted); and abort() when an invariant of lua_host.h breaks:
 * memory above the cap (+ the 1 MiB traceback slack), a failure without a message, an
 * accepted lr() result that is not one finite number, or a library outside the sandbox
 * (anything but _G, string, table, math, utf8 in the registry's loaded table: io, os,
 * package, debug or coroutine reachable = escape). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "lua_host.h"

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

#define MEM_LIMIT ((size_t)8 << 20)
#define INSTR_LIMIT 1000000LL
#define SLACK ((size_t)1 << 20) /* ZP_LUA_HANDLER_SLACK in lua_host.c */

#define CHECK(cond, ...)                                                              \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      fprintf(stderr, "fuzz_lua: %s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                                   \
      fputc('\n', stderr);                                                            \
      abort();                                                                        \
    }                                                                                 \
  } while (0)

static void check_mem(zp_lua* L, const char* when) {
  size_t used = zp_lua_mem_used(L);
  CHECK(used <= MEM_LIMIT + SLACK, "%s: %zu bytes in use, cap %zu", when, used, MEM_LIMIT);
}

/* Runs protected (via zp_lua_pcall): every key of registry._LOADED must be an opened library. */
static int loaded_body(lua_State* L) {
  int* bad = (int*)lua_touserdata(L, 1);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_type(L, -1) != LUA_TTABLE) return 0;
  static const char* const ok[] = {LUA_GNAME, LUA_STRLIBNAME, LUA_TABLIBNAME, LUA_MATHLIBNAME, LUA_UTF8LIBNAME, NULL};
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    lua_pop(L, 1);
    int good = 0;
    if (lua_type(L, -1) == LUA_TSTRING) {
      const char* k = lua_tostring(L, -1);
      for (const char* const* o = ok; *o; o++)
        if (strcmp(k, *o) == 0) good = 1;
      if (!good) fprintf(stderr, "fuzz_lua: library '%s' is loaded in the sandbox\n", k);
    }
    if (!good) *bad = 1;
  }
  return 0;
}

static void check_sandbox(zp_lua* L) {
  lua_State* S = zp_lua_state(L);
  if (!lua_checkstack(S, 3)) return;
  int bad = 0;
  char err[512];
  lua_pushcfunction(S, loaded_body);
  lua_pushlightuserdata(S, &bad);
  if (zp_lua_pcall(L, 1, 0, err, sizeof err) != 0) return; /* out of memory / budget: no verdict */
  CHECK(!bad, "a library outside the sandbox is loaded");
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  char err[4096];
  zp_lua_limits lim = {MEM_LIMIT, INSTR_LIMIT, 2.0};
  zp_lua* L = zp_lua_new(&lim, err, sizeof err);
  CHECK(L != NULL, "zp_lua_new: %s", err);
  CHECK(zp_lua_mem_limit(L) == MEM_LIMIT, "limit %zu", zp_lua_mem_limit(L));

  static const char* const keys[] = {"lr", "warmup_steps", "min_lr_ratio"};
  static const double vals[] = {6e-4, 10, 0.1};
  CHECK(zp_lua_set_global_numbers(L, "config", keys, vals, 3, err, sizeof err) == 0, "set config: %s", err);

  /* exact-size heap copy (NUL-terminated for run_string) so overreads are caught */
  char* code = (char*)malloc(size + 1);
  if (!code) {
    zp_lua_free(L);
    return 0;
  }
  memcpy(code, data, size);
  code[size] = 0;
  int rc;
  err[0] = 0;
  if (memchr(data, 0, size) == NULL) {
    rc = zp_lua_run_string(L, code, "fuzz.lua", err, sizeof err);
  } else {
    rc = zp_lua_load_string(L, code, size, "fuzz.lua", err, sizeof err);
    if (rc == 0) rc = zp_lua_pcall(L, 0, 0, err, sizeof err);
  }
  if (rc != 0) CHECK(err[0] != 0, "chunk failed without a message");
  CHECK(lua_gettop(zp_lua_state(L)) == 0, "stack holds %d values after the chunk", lua_gettop(zp_lua_state(L)));
  check_mem(L, "after the chunk");

  if (zp_lua_has_function(L, "lr")) {
    static const double argv[][3] = {{0, 100, 0}, {50, 100, 0}, {99, 100, 0}, {1e9, 1, 0}, {-1, 0, 0}};
    static const int argc[] = {2, 2, 2, 2, 2};
    for (size_t i = 0; i < sizeof argc / sizeof argc[0]; i++) {
      double out = NAN;
      err[0] = 0;
      rc = zp_lua_call_numbers(L, "lr", argv[i], argc[i], &out, err, sizeof err);
      if (rc == 0) CHECK(isfinite(out), "lr() accepted a non-finite %g", out);
      else CHECK(err[0] != 0, "lr() failed without a message");
      check_mem(L, "after lr()");
    }
    double out;
    (void)zp_lua_call_numbers(L, "lr", NULL, 0, &out, err, sizeof err);
    (void)zp_lua_call_numbers(L, "lr", vals, 3, &out, err, sizeof err);
  }
  /* the state is still usable (may fail if the script keeps the memory alive: no verdict) */
  (void)zp_lua_run_string(L, "local t = {} for i = 1, 10 do t[i] = i end return #t", "after", err, sizeof err);
  check_sandbox(L);
  check_mem(L, "at the end");
  CHECK(lua_gettop(zp_lua_state(L)) == 0, "stack holds %d values at the end", lua_gettop(zp_lua_state(L)));
  zp_lua_free(L);
  free(code);
  return 0;
}
