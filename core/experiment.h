/* experiment.h: the Lua experiment driver behind `zp run SCRIPT.lua` (docs/lua-api.md,
 * "Experiments: zp run").
 *
 * Purpose: run one experiment script in the lua_host sandbox with a `zp` table that loads and
 * overrides configs, plans memory in-process (the `zp plan` code path), trains in child
 * processes (`zp train` / `zp launch -n R` of the running binary), reads back metrics.jsonl,
 * and writes CSV, Markdown and SVG files.
 *
 * Invariants:
 * - Everything the script causes to be written lands inside the output directory: file names
 *   from the script are plain names (checked by zp_exp_check_name) opened relative to the
 *   directory's descriptor with O_NOFOLLOW; training runs get OUT/runs/<name> as train.out_dir
 *   (and as offload.*.path), forced after every other override.
 * - The sandbox of lua_host stays as it is (no io/os/package/debug/require/dofile/loadfile,
 *   text-only load, no string.dump); plugin paths that point into the output directory are
 *   refused, so a script cannot load code it wrote itself.
 * - A training run that fails is a result ({ok=false, status=, error=}), not an error of the
 *   driver; refusals, bad arguments and invalid keys in cfg:set are Lua errors.
 * - The instruction budget counts Lua VM instructions only (lua_host's count hook): time spent
 *   in C (waiting for a training run) costs nothing.
 * - Every resource a zp.* function holds while it may raise a Lua error (configs, runs, C
 *   buffers) lives in a userdata with a __gc that frees it, so errors never leak.
 */
#ifndef ZP_EXPERIMENT_H
#define ZP_EXPERIMENT_H
#include <stddef.h>

#define ZP_EXP_INSTR_LIMIT 2000000000LL      /* Lua instructions for the whole script */
#define ZP_EXP_MEM_LIMIT ((size_t)256 << 20) /* bytes of Lua memory */
#define ZP_EXP_MAX_FILE_BYTES ((size_t)64 << 20)
#define ZP_EXP_MAX_TOTAL_BYTES ((long long)1 << 30)
#define ZP_EXP_MAX_FILES 10000
#define ZP_EXP_NAME_MAX 100

typedef struct {
  const char* script;          /* the Lua file; zp.config paths resolve against its directory */
  const char* out_dir;         /* output directory, created with its parents when missing */
  const char* const* sets;     /* "section.key=value" applied to every zp.config, first */
  int n_sets;
  const char* const* args;     /* "name=value": zp.args.name = "value" */
  int n_args;
  const char* exe;             /* zp binary for training runs; NULL = this process's binary */
  int quiet;                   /* 1: zp.train prints no progress lines */
  long long instr_limit;       /* Lua instructions for the whole script; 0 = ZP_EXP_INSTR_LIMIT */
} zp_exp_opts;

/* Runs the script. 0 on success; -1 with "file:line: message" (+ traceback) or the reason
 * (output directory, script file) in err. */
int zp_experiment_run(const zp_exp_opts* o, char* err, size_t errlen);

/* 0 when name is a plain file name allowed in the output directory (1..ZP_EXP_NAME_MAX
 * characters from [A-Za-z0-9._-], not starting with '.' or '-', no ".."); else -1 and why. */
int zp_exp_check_name(const char* name, size_t len, char* why, size_t whylen);

#endif
