/* test_lua.c: the sandboxed Lua host (core/lua_host.c) and the shipped LR schedules.
 * Checks: errors carry chunk name + line (+ traceback for runtime errors), the instruction
 * budget and the memory cap stop runaway scripts and leave the state usable, the sandbox
 * has no io/os/package/debug/dofile/loadfile/require/string.dump, bytecode is refused on
 * every path, and scripts/schedules/{cosine,constant}.lua match math computed here. */
#include "zt.h"

#include <lauxlib.h>
#include <lua.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lua_host.h"

#ifndef ZP_SOURCE_DIR
#define ZP_SOURCE_DIR "."
#endif

static char err[4096];

static zp_lua* new_state(size_t mem, long long instr) {
  zp_lua_limits lim = {mem, instr, 0};
  zp_lua* L = zp_lua_new(&lim, err, sizeof err);
  CHECK_MSG(L != NULL, "zp_lua_new: %s", err);
  return L;
}

/* Runs `return <expr>` and returns it as a number (nan on failure). */
static double eval_num(zp_lua* L, const char* code) {
  if (zp_lua_load_string(L, code, strlen(code), "eval", err, sizeof err) != 0) return NAN;
  if (zp_lua_pcall(L, 0, 1, err, sizeof err) != 0) return NAN;
  lua_State* S = zp_lua_state(L);
  double v = lua_type(S, -1) == LUA_TNUMBER ? lua_tonumber(S, -1) : NAN;
  lua_pop(S, 1);
  return v;
}

static void test_new_defaults_and_limits(void) {
  zp_lua* L = zp_lua_new(NULL, err, sizeof err);
  CHECK_MSG(L != NULL, "%s", err);
  CHECK_EQ_INT(zp_lua_mem_limit(L), 64u << 20);
  CHECK(zp_lua_mem_used(L) > 0 && zp_lua_mem_used(L) < (1u << 20));
  zp_lua_free(L);
  zp_lua_free(NULL);

  zp_lua_limits tiny = {1024, 0, 0};
  L = zp_lua_new(&tiny, err, sizeof err);
  CHECK(L == NULL);
  CHECK_STR_CONTAINS(err, "memory limit of 1024 bytes");
  zp_lua_free(L);

  zp_lua_limits neg = {0, -5, 0};
  L = zp_lua_new(&neg, err, sizeof err);
  CHECK(L == NULL);
  CHECK_STR_CONTAINS(err, "instruction limit must be >= 0");
}

static void test_syntax_error_has_chunk_and_line(void) {
  zp_lua* L = new_state(0, 0);
  if (!L) return;
  CHECK_EQ_INT(zp_lua_run_string(L, "local a = 1\nlocal b = 2\nx = = 3\n", "scripts/x.lua", err,
                                 sizeof err), -1);
  CHECK_STR_CONTAINS(err, "scripts/x.lua:3:");
  /* runtime error raised at top level of a chunk */
  CHECK_EQ_INT(zp_lua_run_string(L, "local a = 1\n\nerror('boom here')\n", "scripts/y.lua", err,
                                 sizeof err), -1);
  CHECK_STR_CONTAINS(err, "scripts/y.lua:3: boom here");
  CHECK_STR_CONTAINS(err, "stack traceback:");

  /* the same from a file, with a shebang line that must not shift line numbers */
  char path[] = "/tmp/zp_test_lua_XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0);
  if (fd >= 0) {
    const char* src = "#!/usr/bin/env lua\nlocal t = {}\nlocal v = t.a.b\n";
    CHECK_EQ_INT(write(fd, src, strlen(src)), (long long)strlen(src));
    close(fd);
    CHECK_EQ_INT(zp_lua_run_file(L, path, err, sizeof err), -1);
    char want[128];
    snprintf(want, sizeof want, "%s:3: attempt to index a nil value", path);
    CHECK_STR_CONTAINS(err, want);
    unlink(path);
  }
  CHECK_EQ_INT(zp_lua_run_file(L, "/nonexistent/zp.lua", err, sizeof err), -1);
  CHECK_STR_CONTAINS(err, "/nonexistent/zp.lua: cannot open");
  CHECK_EQ_INT(lua_gettop(zp_lua_state(L)), 0);
  zp_lua_free(L);
}

static void test_runtime_error_traceback(void) {
  zp_lua* L = new_state(0, 0);
  if (!L) return;
  const char* src =
      "function inner(t)\n"
      "  return t.field + 1\n"
      "end\n"
      "function outer()\n"
      "  local v = inner(nil)\n"
      "  return v\n"
      "end\n";
  CHECK_MSG(zp_lua_run_string(L, src, "scripts/tb.lua", err, sizeof err) == 0, "%s", err);
  CHECK(zp_lua_has_function(L, "outer"));
  CHECK(!zp_lua_has_function(L, "nope"));
  CHECK(!zp_lua_has_function(L, "math"));
  lua_State* S = zp_lua_state(L);
  lua_getglobal(S, "outer");
  CHECK_EQ_INT(zp_lua_pcall(L, 0, 0, err, sizeof err), -1);
  CHECK_STR_CONTAINS(err, "scripts/tb.lua:2: attempt to index a nil value");
  CHECK_STR_CONTAINS(err, "stack traceback:");
  CHECK_STR_CONTAINS(err, "scripts/tb.lua:2: in function 'inner'");
  CHECK_STR_CONTAINS(err, "scripts/tb.lua:5: in function 'outer'");
  CHECK_EQ_INT(lua_gettop(S), 0);

  /* non-string error objects */
  CHECK_EQ_INT(zp_lua_run_string(L, "error({})", "t", err, sizeof err), -1);
  CHECK_STR_CONTAINS(err, "(error object is a table value)");
  CHECK_EQ_INT(zp_lua_run_string(L,
      "error(setmetatable({}, {__tostring = function() return 'custom err' end}))", "t", err,
      sizeof err), -1);
  CHECK_STR_CONTAINS(err, "custom err");

  /* pcall with bad stack */
  CHECK_EQ_INT(zp_lua_pcall(L, 2, 0, err, sizeof err), -1);
  CHECK_STR_CONTAINS(err, "need a function");
  zp_lua_free(L);
}

static void test_instruction_budget(void) {
  zp_lua* L = new_state(0, 1000000);
  if (!L) return;
  CHECK_EQ_INT(zp_lua_run_string(L, "local n = 0\nwhile true do end\n", "loop.lua", err,
                                 sizeof err), -1);
  CHECK_STR_CONTAINS(err, "loop.lua:2: instruction limit exceeded (1000000)");
  /* a script's own pcall cannot swallow the error and keep going */
  CHECK_EQ_INT(zp_lua_run_string(L,
      "while true do pcall(function() while true do end end) end", "catch.lua", err,
      sizeof err), -1);
  CHECK_STR_CONTAINS(err, "instruction limit exceeded");
  CHECK_EQ_INT(zp_lua_run_string(L,
      "local function h() while true do end end\n"
      "while true do xpcall(h, function() while true do end end) end", "xcatch.lua", err,
      sizeof err), -1);
  CHECK_STR_CONTAINS(err, "instruction limit exceeded");
  /* recursion is bounded too (by Lua's stack limit or the memory cap) */
  CHECK_EQ_INT(zp_lua_run_string(L, "local function f() return 1 + f() end f()", "rec.lua", err,
                                 sizeof err), -1);
  /* the budget is fresh for each call: 10 calls of ~half the budget each all succeed */
  CHECK_MSG(zp_lua_run_string(L,
      "function work() local s = 0 for i = 1, 100000 do s = s + i end return s end", "w.lua",
      err, sizeof err) == 0, "%s", err);
  for (int i = 0; i < 10; i++) {
    double out = 0;
    CHECK_MSG(zp_lua_call_numbers(L, "work", NULL, 0, &out, err, sizeof err) == 0, "%s", err);
    CHECK_NEAR(out, 5000050000.0, 0, 0);
  }
  zp_lua_free(L);
}

static int drop_keep(lua_State* S) {
  lua_pushnil(S);
  lua_setglobal(S, "keep");
  lua_gc(S, LUA_GCCOLLECT);
  return 0;
}

static void test_memory_cap(void) {
  zp_lua* L = new_state(16u << 20, 0);
  if (!L) return;
  size_t base = zp_lua_mem_used(L);
  CHECK_EQ_INT(zp_lua_run_string(L, "local s = string.rep('x', 1e9)", "rep.lua", err,
                                 sizeof err), -1);
  CHECK_STR_CONTAINS(err, "not enough memory");
  CHECK_STR_CONTAINS(err, "16 MiB");
  CHECK(zp_lua_mem_used(L) <= 16u << 20);

  CHECK_EQ_INT(zp_lua_run_string(L,
      "local t = {}\nlocal i = 0\nwhile true do i = i + 1; t[i] = {i, tostring(i)} end",
      "grow.lua", err, sizeof err), -1);
  CHECK_STR_CONTAINS(err, "not enough memory");
  CHECK(zp_lua_mem_used(L) <= 16u << 20);

  CHECK_EQ_INT(zp_lua_run_string(L, "local s = 'ab' while true do s = s .. s end", "cat.lua",
                                 err, sizeof err), -1);
  CHECK_STR_CONTAINS(err, "not enough memory");

  /* a memory error caught inside the script is an ordinary value */
  CHECK_EQ_INT(eval_num(L, "local ok, e = pcall(string.rep, 'x', 1e9) "
                           "return (not ok and e:find('not enough memory')) and 1 or 0"), 1);

  /* memory filled with reachable data (a global), then an ordinary error: the traceback
   * handler still gets its message out (error level 0 allocates nothing before it) */
  CHECK_EQ_INT(zp_lua_run_string(L,
      "keep = {}\n"
      "pcall(function() local i = 0 while true do i = i + 1; keep[i] = {i} end end)\n"
      "error('after full', 0)\n", "full.lua", err, sizeof err), -1);
  CHECK_STR_CONTAINS(err, "after full\nstack traceback:");
  /* while it stays full, later calls fail cleanly ... */
  CHECK_EQ_INT(zp_lua_run_string(L, "local t = {} for i = 1, 1e6 do t[i] = {} end", "more.lua",
                                 err, sizeof err), -1);
  CHECK_STR_CONTAINS(err, "not enough memory");
  /* ... until the host drops the global from a protected C function */
  lua_State* S = zp_lua_state(L);
  lua_pushcfunction(S, drop_keep);
  CHECK_MSG(zp_lua_pcall(L, 0, 0, err, sizeof err) == 0, "%s", err);

  /* the state is usable afterwards */
  CHECK(zp_lua_mem_used(L) < base + (1u << 20));
  CHECK_MSG(zp_lua_run_string(L,
      "function h(n) local t = {} for i = 1, n do t[i] = i end return #t end", "h.lua", err,
      sizeof err) == 0, "%s", err);
  double arg = 1000, out = 0;
  CHECK_MSG(zp_lua_call_numbers(L, "h", &arg, 1, &out, err, sizeof err) == 0, "%s", err);
  CHECK_NEAR(out, 1000, 0, 0);
  CHECK_EQ_INT(lua_gettop(zp_lua_state(L)), 0);
  zp_lua_free(L);
}

static void test_sandbox_globals(void) {
  zp_lua* L = new_state(0, 0);
  if (!L) return;
  const char* names[] = {"os", "io", "dofile", "loadfile", "package", "debug", "require",
                         "string.dump", "coroutine", "(''):dump", NULL};
  for (const char** n = names; *n; n++) {
    char code[256];
    if (strcmp(*n, "(''):dump") == 0)
      snprintf(code, sizeof code, "return ('').dump == nil and 1 or 0");
    else
      snprintf(code, sizeof code, "return %s == nil and 1 or 0", *n);
    double v = eval_num(L, code);
    CHECK_MSG(v == 1, "%s is present in the sandbox (%s)", *n, isnan(v) ? err : "not nil");
  }
  const char* present[] = {"print", "pairs", "pcall", "load", "table.concat", "string.format",
                           "math.cos", "utf8.char", "collectgarbage", NULL};
  for (const char** n = present; *n; n++) {
    char code[256];
    snprintf(code, sizeof code, "return type(%s) == 'function' and 1 or 0", *n);
    CHECK_MSG(eval_num(L, code) == 1, "%s missing", *n);
  }
  /* collectgarbage: count/collect allowed, stop refused */
  CHECK(eval_num(L, "return collectgarbage('count')") > 0);
  CHECK_NEAR(eval_num(L, "return collectgarbage()"), 0, 0, 0);
  CHECK_EQ_INT(zp_lua_run_string(L, "collectgarbage('stop')", "gc.lua", err, sizeof err), -1);
  CHECK_STR_CONTAINS(err, "not allowed");
  /* __gc finalizers refused (they would run with the budget hook off) */
  CHECK_EQ_INT(zp_lua_run_string(L,
      "setmetatable({}, {__gc = function() while true do end end})", "gc2.lua", err,
      sizeof err), -1);
  CHECK_STR_CONTAINS(err, "__gc metamethods are not allowed");
  CHECK_EQ_INT(eval_num(L, "local t = setmetatable({}, {__index = function() return 7 end}) "
                           "return t.x"), 7);
  CHECK_EQ_INT(zp_lua_run_string(L,
      "local t = setmetatable({}, {__metatable = 1}) setmetatable(t, {})", "mt.lua", err,
      sizeof err), -1);
  CHECK_STR_CONTAINS(err, "protected metatable");
  /* math.random is reproducible */
  zp_lua* L2 = new_state(0, 0);
  if (L2) {
    CHECK_NEAR(eval_num(L, "return math.random(1, 1000000)"),
               eval_num(L2, "return math.random(1, 1000000)"), 0, 0);
    zp_lua_free(L2);
  }
  zp_lua_free(L);
}

static void test_load_text_only(void) {
  zp_lua* L = new_state(0, 0);
  if (!L) return;
  CHECK_NEAR(eval_num(L, "return load('return 1+1')()"), 2, 0, 0);
  CHECK_NEAR(eval_num(L, "local e = {y = 5} return load('return y', 'c', 't', e)()"), 5, 0, 0);
  CHECK_NEAR(eval_num(L,
      "local parts, i = {'return ', '4', '0+2'}, 0 "
      "return load(function() i = i + 1 return parts[i] end)()"), 42, 0, 0);
  /* syntax errors in load come back as nil, msg with the chunk name */
  CHECK_NEAR(eval_num(L, "local f, e = load('x = = 1', '=inner') "
                         "return (f == nil and e:find('inner:1:')) and 1 or 0"), 1, 0, 0);
  /* bytecode from a string, with any mode */
  const char* cases[] = {
      "local f, e = load('\\27LuaT\\0\\25\\147\\r\\n\\26\\n') "
      "return (f == nil and e:find('binary')) and 1 or 0",
      "local f, e = load('\\27LuaT\\0', 'x', 'b') "
      "return (f == nil and e:find('binary')) and 1 or 0",
      "local f, e = load('\\27LuaT\\0', 'x', 'bt') "
      "return (f == nil and e:find('binary')) and 1 or 0",
      /* ... and from a reader function */
      "local parts, i = {'\\27Lua', 'T\\0\\25\\147'}, 0 "
      "local f, e = load(function() i = i + 1 return parts[i] end, 'rd', 'b') "
      "return (f == nil and e:find('binary')) and 1 or 0",
      NULL};
  for (const char** c = cases; *c; c++) {
    double v = eval_num(L, *c);
    CHECK_MSG(v == 1, "bytecode accepted by load: %s (%s)", *c, isnan(v) ? err : "");
  }
  /* reader returning a non-string */
  CHECK_NEAR(eval_num(L, "local f, e = load(function() return {} end) "
                         "return (f == nil and e:find('must return a string')) and 1 or 0"),
             1, 0, 0);
  /* run_string / run_file refuse bytecode with a clear message */
  CHECK_EQ_INT(zp_lua_run_string(L, "\x1bLuaT\x00\x19\x93\r\n", "bc.luac", err, sizeof err), -1);
  CHECK_STR_CONTAINS(err, "bc.luac: binary (precompiled) Lua chunks are refused");
  char path[] = "/tmp/zp_test_luac_XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0);
  if (fd >= 0) {
    CHECK_EQ_INT(write(fd, "\x1bLuaT\x00\x19\x93", 8), 8);
    close(fd);
    CHECK_EQ_INT(zp_lua_run_file(L, path, err, sizeof err), -1);
    CHECK_STR_CONTAINS(err, "binary (precompiled) Lua chunks are refused");
    unlink(path);
  }
  CHECK_EQ_INT(lua_gettop(zp_lua_state(L)), 0);
  zp_lua_free(L);
}

/* ---- schedules ---- */

static double cosine_ref(double peak, double warm, double ratio, double step, double total) {
  double minlr = peak * ratio;
  if (step < warm) return peak * (step + 1) / warm;
  double p = (step - warm) / fmax(1.0, total - warm);
  if (p < 0) p = 0;
  if (p > 1) p = 1;
  return minlr + 0.5 * (1 + cos(M_PI * p)) * (peak - minlr);
}

static int load_schedule(zp_lua* L, const char* name) {
  char path[1024];
  snprintf(path, sizeof path, "%s/scripts/schedules/%s", ZP_SOURCE_DIR, name);
  int rc = zp_lua_run_file(L, path, err, sizeof err);
  CHECK_MSG(rc == 0, "%s", err);
  return rc;
}

static double lr_at(zp_lua* L, double step, double total) {
  double a[2] = {step, total}, out = NAN;
  CHECK_MSG(zp_lua_call_numbers(L, "lr", a, 2, &out, err, sizeof err) == 0, "%s", err);
  return out;
}

static void test_cosine_schedule(void) {
  zp_lua* L = new_state(0, 0);
  if (!L) return;
  if (load_schedule(L, "cosine.lua") != 0) { zp_lua_free(L); return; }
  CHECK(zp_lua_has_function(L, "lr"));
  const char* keys[] = {"lr", "warmup_steps", "min_lr_ratio"};
  double vals[] = {3e-4, 100, 0.1};
  CHECK_MSG(zp_lua_set_global_numbers(L, "config", keys, vals, 3, err, sizeof err) == 0, "%s",
            err);
  const double total = 1000;
  /* step 0: first warm-up step */
  CHECK_NEAR(lr_at(L, 0, total), 3e-4 * 1 / 100, 1e-15, 1e-12);
  CHECK_NEAR(lr_at(L, 49, total), 3e-4 * 0.5, 1e-15, 1e-12);
  /* end of warm-up: peak */
  CHECK_NEAR(lr_at(L, 99, total), 3e-4, 1e-15, 1e-12);
  CHECK_NEAR(lr_at(L, 100, total), 3e-4, 1e-15, 1e-12);
  /* mid decay: halfway between peak and min */
  CHECK_NEAR(lr_at(L, 550, total), 0.5 * (3e-4 + 3e-5), 1e-15, 1e-12);
  /* end: min; last step just above it */
  CHECK_NEAR(lr_at(L, 1000, total), 3e-5, 1e-15, 1e-12);
  CHECK_NEAR(lr_at(L, 5000, total), 3e-5, 1e-15, 1e-12);
  CHECK_NEAR(lr_at(L, 999, total), cosine_ref(3e-4, 100, 0.1, 999, total), 1e-15, 1e-12);
  CHECK(lr_at(L, 999, total) > 3e-5);
  for (int s = 0; s <= 1000; s += 37)
    CHECK_NEAR(lr_at(L, s, total), cosine_ref(3e-4, 100, 0.1, s, total), 1e-15, 1e-12);

  /* defaults: no warm-up, min_lr_ratio 0.1 */
  const char* k1[] = {"lr"};
  double v1[] = {1.0};
  CHECK(zp_lua_set_global_numbers(L, "config", k1, v1, 1, err, sizeof err) == 0);
  CHECK_NEAR(lr_at(L, 0, 10), 1.0, 0, 1e-12);
  CHECK_NEAR(lr_at(L, 5, 10), 0.55, 0, 1e-12);
  CHECK_NEAR(lr_at(L, 10, 10), 0.1, 0, 1e-12);

  /* missing config.lr: clear error */
  CHECK(zp_lua_set_global_numbers(L, "config", NULL, NULL, 0, err, sizeof err) == 0);
  double a[2] = {0, 10}, out = -1;
  CHECK_EQ_INT(zp_lua_call_numbers(L, "lr", a, 2, &out, err, sizeof err), -1);
  CHECK_STR_CONTAINS(err, "config.lr must be a finite number, got nil");
  CHECK_STR_CONTAINS(err, "cosine.lua:");
  CHECK_NEAR(out, -1, 0, 0);
  zp_lua_free(L);
}

static void test_constant_schedule(void) {
  zp_lua* L = new_state(0, 0);
  if (!L) return;
  if (load_schedule(L, "constant.lua") != 0) { zp_lua_free(L); return; }
  const char* keys[] = {"lr"};
  double vals[] = {0.0125};
  CHECK(zp_lua_set_global_numbers(L, "config", keys, vals, 1, err, sizeof err) == 0);
  CHECK_NEAR(lr_at(L, 0, 100), 0.0125, 0, 0);
  CHECK_NEAR(lr_at(L, 99, 100), 0.0125, 0, 0);
  zp_lua_free(L);
}

static void test_call_numbers_refuses_bad_results(void) {
  zp_lua* L = new_state(0, 0);
  if (!L) return;
  CHECK_MSG(zp_lua_run_string(L,
      "function s() return 'abc' end\n"
      "function n() return 0/0 end\n"
      "function i() return math.huge end\n"
      "function z() end\n"
      "function two() return 1, 2 end\n"
      "function t() return {} end\n"
      "function ok(a, b) return a * b end\n"
      "notfn = 3\n", "bad.lua", err, sizeof err) == 0, "%s", err);
  double out = 123, args[2] = {6, 7};
  struct { const char* fn; const char* want; } cases[] = {
      {"s", "Lua function 's' (defined at bad.lua:1) returned a string; expected one finite number"},
      {"n", "'n' (defined at bad.lua:2) returned nan; expected one finite number"},
      {"i", "returned inf"},
      {"z", "returned no value"},
      {"two", "returned 2 values"},
      {"t", "returned a table"},
      {"missing", "no global function 'missing' (it is nil)"},
      {"notfn", "no global function 'notfn' (it is number)"},
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    CHECK_EQ_INT(zp_lua_call_numbers(L, cases[k].fn, args, 2, &out, err, sizeof err), -1);
    CHECK_STR_CONTAINS(err, cases[k].want);
    CHECK_NEAR(out, 123, 0, 0);
  }
  CHECK_MSG(zp_lua_call_numbers(L, "ok", args, 2, &out, err, sizeof err) == 0, "%s", err);
  CHECK_NEAR(out, 42, 0, 0);
  CHECK_EQ_INT(zp_lua_call_numbers(L, "ok", NULL, 2, &out, err, sizeof err), -1);
  CHECK_EQ_INT(lua_gettop(zp_lua_state(L)), 0);
  /* a tiny err buffer is truncated, never overrun */
  char small[8];
  CHECK_EQ_INT(zp_lua_call_numbers(L, "s", args, 2, &out, small, sizeof small), -1);
  CHECK_EQ_INT(strlen(small), 7);
  zp_lua_free(L);
}


/* the wall-clock limit: a Lua loop, and library calls that only allocate (string.rep of 4 MiB
 * per iteration: few instructions, much work), stop near the limit with a clear message; the
 * state stays usable for the next call, which gets a fresh budget */
static void test_time_limit(void) {
  zp_lua_limits lim = {(size_t)16 << 20, (long long)1 << 60, 0.3};
  zp_lua* L = zp_lua_new(&lim, err, sizeof err);
  CHECK_MSG(L != NULL, "%s", err);
  if (!L) return;
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  CHECK_EQ_INT(zp_lua_run_string(L, "local x = 0\nwhile true do x = x + 1 end\n", "spin.lua", err, sizeof err), -1);
  clock_gettime(CLOCK_MONOTONIC, &b);
  double s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) * 1e-9;
  CHECK_STR_CONTAINS(err, "spin.lua:2: time limit exceeded");
  CHECK_MSG(s >= 0.3 && s < 2.0, "loop stopped after %.3f s", s);
  clock_gettime(CLOCK_MONOTONIC, &a);
  CHECK_EQ_INT(zp_lua_run_string(L, "for i = 1, 1e9 do local s = string.rep('a', 4 << 20) end\n", "rep.lua", err, sizeof err), -1);
  clock_gettime(CLOCK_MONOTONIC, &b);
  s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) * 1e-9;
  CHECK_STR_CONTAINS(err, "time limit exceeded");
  CHECK_MSG(s >= 0.3 && s < 2.0, "string.rep loop stopped after %.3f s", s);
  CHECK(eval_num(L, "return 40 + 2") == 42.0);
  zp_lua_free(L);
}

int main(void) {
  ZT_RUN(test_new_defaults_and_limits);
  ZT_RUN(test_time_limit);
  ZT_RUN(test_syntax_error_has_chunk_and_line);
  ZT_RUN(test_runtime_error_traceback);
  ZT_RUN(test_instruction_budget);
  ZT_RUN(test_memory_cap);
  ZT_RUN(test_sandbox_globals);
  ZT_RUN(test_load_text_only);
  ZT_RUN(test_cosine_schedule);
  ZT_RUN(test_constant_schedule);
  ZT_RUN(test_call_numbers_refuses_bad_results);
  return zt_done();
}
