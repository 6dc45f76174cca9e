/* cmd_run.c: `zp run SCRIPT.lua [--out DIR] [--set key=value]... [--arg name=value]... [--quiet]`
 * — runs a Lua experiment script (core/experiment.c; docs/lua-api.md, "Experiments: zp run").
 *
 * Invariants: usage errors (unknown option, missing script, a --set that names an unknown key
 * or has a wrong type, a malformed --arg) print one line and return 2 before anything is
 * created; script errors print "zp run: file:line: message" plus the traceback and return 1;
 * success returns 0. The default output directory is runs/<script name without .lua>/. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "config.h"
#include "experiment.h"

#define MAX_ITEMS 256

static void run_usage(FILE* f) {
  fprintf(f,
          "usage: zp run SCRIPT.lua [--out DIR] [--set key=value]... [--arg name=value]... [--quiet]\n"
          "              [--max-instructions N]\n"
          "  --out DIR           output directory (default runs/<script name>/); the script writes only there\n"
          "  --set key=value     config override applied to every zp.config() of the script\n"
          "  --arg name=value    script parameter: zp.args.name == \"value\"\n"
          "  --quiet             no progress lines from zp.train\n"
          "  --max-instructions N  Lua instruction budget of the script (default 2e9; time spent\n"
          "                      waiting for training runs does not count)\n");
}

static int valid_arg(const char* a) {
  const char* eq = strchr(a, '=');
  if (!eq || eq == a) return 0;
  for (const char* p = a; p < eq; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_' || (p > a && *p >= '0' && *p <= '9')))
      return 0;
  return 1;
}

int zp_cmd_run(int argc, char** argv) {
  const char* script = NULL;
  const char* out = NULL;
  const char* sets[MAX_ITEMS];
  const char* args[MAX_ITEMS];
  int n_sets = 0, n_args = 0, quiet = 0;
  long long instr = 0;
  for (int i = 0; i < argc; i++) {
    const char* s = argv[i];
    if (strcmp(s, "--out") == 0 || strcmp(s, "--set") == 0 || strcmp(s, "--arg") == 0) {
      if (i + 1 >= argc) {
        fprintf(stderr, "zp run: %s needs a value\n", s);
        run_usage(stderr);
        return 2;
      }
      const char* v = argv[++i];
      if (s[2] == 'o') out = v;
      else if (s[2] == 's') {
        if (n_sets >= MAX_ITEMS) { fprintf(stderr, "zp run: too many --set\n"); return 2; }
        sets[n_sets++] = v;
      } else {
        if (n_args >= MAX_ITEMS) { fprintf(stderr, "zp run: too many --arg\n"); return 2; }
        if (!valid_arg(v)) {
          fprintf(stderr, "zp run: --arg needs name=value with a name of letters, digits and '_', got '%s'\n", v);
          return 2;
        }
        args[n_args++] = v;
      }
    } else if (strcmp(s, "--max-instructions") == 0) {
      char* end = NULL;
      double v = i + 1 < argc ? strtod(argv[i + 1], &end) : 0;
      if (i + 1 >= argc || !end || *end || !(v >= 1000 && v <= 1e15)) {
        fprintf(stderr, "zp run: --max-instructions needs a number between 1000 and 1e15\n");
        return 2;
      }
      i++;
      instr = (long long)v;
    } else if (strcmp(s, "--quiet") == 0) {
      quiet = 1;
    } else if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0) {
      run_usage(stdout);
      return 0;
    } else if (s[0] == '-' && s[1]) {
      fprintf(stderr, "zp run: unknown option '%s'\n", s);
      run_usage(stderr);
      return 2;
    } else if (!script) {
      script = s;
    } else {
      fprintf(stderr, "zp run: unexpected argument '%s'\n", s);
      run_usage(stderr);
      return 2;
    }
  }
  if (!script) {
    fprintf(stderr, "zp run: missing SCRIPT.lua\n");
    run_usage(stderr);
    return 2;
  }
  /* --set keys and value types are checked now, against the schema's defaults */
  if (n_sets) {
    zp_config c;
    char err[2048];
    int bad = zp_config_defaults(&c) != 0;
    for (int i = 0; !bad && i < n_sets; i++)
      if (zp_config_set(&c, sets[i], err, sizeof err)) {
        fprintf(stderr, "zp run: %s\n", err);
        bad = 1;
      }
    zp_config_free(&c);
    if (bad) return 2;
  }
  char outbuf[1024];
  if (!out) {
    const char* base = strrchr(script, '/');
    base = base ? base + 1 : script;
    size_t bl = strlen(base);
    if (bl > 4 && strcmp(base + bl - 4, ".lua") == 0) bl -= 4;
    if (bl == 0 || bl > 200) {
      fprintf(stderr, "zp run: cannot derive an output directory from '%s': give --out DIR\n", script);
      return 2;
    }
    snprintf(outbuf, sizeof outbuf, "runs/%.*s", (int)bl, base);
    out = outbuf;
  }
  zp_exp_opts o;
  memset(&o, 0, sizeof o);
  o.script = script;
  o.out_dir = out;
  o.sets = sets;
  o.n_sets = n_sets;
  o.args = args;
  o.n_args = n_args;
  o.quiet = quiet;
  o.instr_limit = instr;
  char err[16384];
  if (zp_experiment_run(&o, err, sizeof err) != 0) {
    fprintf(stderr, "zp run: %s\n", err);
    return 1;
  }
  if (!quiet) printf("zp run: %s finished; outputs in %s/\n", script, out);
  return 0;
}
