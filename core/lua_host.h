/* lua_host.h: the sandboxed Lua 5.4 host (LR schedules, pipeline schedules, hooks, sweeps).
 *
 * Purpose: one opaque handle (zp_lua) owning one lua_State that runs untrusted-ish user
 * scripts with bounded memory and bounded instructions, and reports every failure as a
 * "file:line: message" string (plus a traceback for runtime errors) instead of crashing.
 *
 * Invariants:
 * - Only base, table, string, math and utf8 are opened. Removed from base: dofile, loadfile
 *   (require is never opened). `load` is replaced by a wrapper that always uses mode "t" and
 *   refuses binary chunks, from a string or from a reader function. string.dump is removed.
 *   collectgarbage only accepts "collect", "count", "step" and "isrunning" (scripts cannot
 *   stop the collector or retune it). setmetatable refuses metatables with a __gc field
 *   (Lua runs finalizers with hooks off, so the instruction budget could not stop them).
 *   xpcall skips the script's message handler once the instruction budget is exhausted
 *   (Lua calls it with hooks off for errors raised from the hook).
 *   io, os, package, debug and coroutine are never opened.
 *   math.random is seeded with 0 at creation, so runs are reproducible (scripts may reseed).
 * - Memory: every byte Lua allocates goes through a counting allocator that refuses growth
 *   past mem_limit_bytes; Lua turns that into a normal "not enough memory" error, which comes
 *   back as -1 + message, and the state stays usable once the garbage is collected.
 * - Instructions: a count hook (every 1000 VM instructions) raises "instruction limit
 *   exceeded (N)" once the outermost zp_lua_pcall has run more than instr_limit
 *   instructions. Once exceeded the error is sticky until that outermost call returns (a
 *   script's own pcall cannot swallow it and keep looping). Nested zp_lua_pcall calls (a
 *   C function calling back into Lua) share the outer call's budget. The hook cannot stop a
 *   single long-running C library call (e.g. a pathological string.find pattern); the
 *   memory cap bounds their size, not their time.
 * - Every entry point that runs Lua code, or that can allocate inside Lua, runs in protected
 *   mode. Callers that use zp_lua_state() directly must do the same: any raising Lua API call
 *   (anything that may allocate or call a metamethod) belongs inside a C function invoked
 *   through zp_lua_pcall. An unprotected error is a host bug: it is reported on stderr by the
 *   panic handler and Lua then aborts.
 * - Nothing here calls abort, exit or assert; no global or static mutable state (the
 *   allocator's userdata is the zp_lua, which is how the hook and handlers find it).
 * - Functions returning int return 0 on success and -1 on failure with a NUL-terminated
 *   message in err (err may be NULL / errlen 0 to discard it).
 */
#ifndef ZP_LUA_HOST_H
#define ZP_LUA_HOST_H
#include <stddef.h>

struct lua_State;
typedef struct zp_lua zp_lua;

typedef struct {
  size_t mem_limit_bytes; /* 0 = 64 MiB */
  long long instr_limit;  /* per (outermost) protected call, 0 = 100M; negative is refused */
  double time_limit_s;    /* wall clock per (outermost) protected call, 0 = none. Checked
                           * every 1000 instructions and every MiB allocated, so a library
                           * call that neither runs Lua nor allocates (a pattern match) can
                           * overrun it; instructions and memory are bounded anyway */
} zp_lua_limits;

#define ZP_LUA_DEFAULT_MEM_LIMIT ((size_t)64 << 20)
#define ZP_LUA_DEFAULT_INSTR_LIMIT 100000000LL

/* lim may be NULL (defaults). NULL + err on failure. */
zp_lua* zp_lua_new(const zp_lua_limits* lim, char* err, size_t errlen);
void zp_lua_free(zp_lua* L);
struct lua_State* zp_lua_state(zp_lua* L);

/* Load and run a chunk from a file / a string (text only: bytecode refused with a clear
 * message). chunkname is used in messages ("scripts/x.lua:12: ..."); NULL = "(string)".
 * A leading UTF-8 BOM is skipped; in files, a first line starting with '#' (shebang) too. */
int zp_lua_run_file(zp_lua* L, const char* path, char* err, size_t errlen);
int zp_lua_run_string(zp_lua* L, const char* code, const char* chunkname, char* err, size_t errlen);

/* Like the run functions, but only compile: on success the chunk (a function) is pushed on
 * the stack, ready for zp_lua_pcall; on failure nothing is pushed. */
int zp_lua_load_file(zp_lua* L, const char* path, char* err, size_t errlen);
int zp_lua_load_string(zp_lua* L, const char* code, size_t len, const char* chunkname,
                       char* err, size_t errlen);

/* Protected call of the value at stack top-nargs-1 with a traceback handler and a fresh
 * instruction budget; on error returns -1 and err holds "file:line: message" + traceback
 * (function and arguments are popped in every case, like lua_pcall; on success nresults
 * results are left, LUA_MULTRET allowed). */
int zp_lua_pcall(zp_lua* L, int nargs, int nresults, char* err, size_t errlen);

/* Convenience for LR schedules: calls global function `fn` with numeric args, expects one
 * finite number (exactly one return value, of Lua type number, not nan/inf). */
int zp_lua_call_numbers(zp_lua* L, const char* fn, const double* args, int nargs, double* out,
                        char* err, size_t errlen);
/* 1 when global `name` is a function, else 0 (also 0 on any error). */
int zp_lua_has_function(zp_lua* L, const char* name);

/* Sets global `name` to a fresh table {keys[i] = vals[i]} (e.g. the `config` table read by
 * the scripts in scripts/schedules). Integral values within 2^53 are stored as Lua integers. */
int zp_lua_set_global_numbers(zp_lua* L, const char* name, const char* const* keys,
                              const double* vals, int n, char* err, size_t errlen);

/* Bytes currently allocated by the state, and its cap. */
size_t zp_lua_mem_used(const zp_lua* L);
size_t zp_lua_mem_limit(const zp_lua* L);

#endif
