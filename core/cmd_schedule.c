/* cmd_schedule.c: `zp schedule check` (print, validate and simulate a pipeline schedule) and
 * `zp schedule split` (which groups each pipeline stage of a config holds).
 *
 * Invariants: exit status 0 = valid / printed, 1 = the schedule (or config) is rejected, with
 * the reason on stderr, 2 = usage error. Nothing is computed on a device; nothing here calls
 * exit().
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "config.h"
#include "model.h"
#include "schedule.h"
#include "train.h"

static void usage(FILE* f) {
  fprintf(f,
          "usage: zp schedule check SCRIPT --stages P --micro-batches M [--chunks V]\n"
          "                         [--times fwd=1,bwd_input=1,bwd_weight=1,comm=0] [--width N] [--summary]\n"
          "       zp schedule split CONFIG.toml [--set key=value]...\n"
          "SCRIPT is a shipped name (gpipe, 1f1b, interleaved_1f1b, zb_h1) or a .lua path.\n"
          "--times are per device stage (its whole slice of the model); with --chunks V each\n"
          "chunk's FWD/BWD takes 1/V of them. Keys: fwd bwd bwd_input bwd_weight comm load reduce\n"
          "step; bwd defaults to bwd_input + bwd_weight. --summary leaves out the instruction lists.\n"
          "Exit status: 0 valid, 1 rejected (the reason names stage and instruction), 2 usage.\n");
}

static int parse_int(const char* opt, const char* s, int lo, int hi, int* out) {
  char* end;
  long v = strtol(s, &end, 10);
  if (!*s || *end || v < lo || v > hi) {
    fprintf(stderr, "zp: %s needs an integer in [%d, %d], got '%s'\n", opt, lo, hi, s);
    return -1;
  }
  *out = (int)v;
  return 0;
}

static int parse_times(const char* s, zp_op_times* t, int* bwd_set) {
  char buf[512];
  snprintf(buf, sizeof buf, "%s", s);
  for (char* tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
    char* eq = strchr(tok, '=');
    if (!eq) {
      fprintf(stderr, "zp: --times: '%s' is not key=value\n", tok);
      return -1;
    }
    *eq = 0;
    char* end;
    double v = strtod(eq + 1, &end);
    if (!eq[1] || *end || !(v >= 0) || v > 1e12) {
      fprintf(stderr, "zp: --times: %s = '%s' must be a number >= 0\n", tok, eq + 1);
      return -1;
    }
    if (!strcmp(tok, "fwd")) t->fwd = v;
    else if (!strcmp(tok, "bwd")) { t->bwd = v; *bwd_set = 1; }
    else if (!strcmp(tok, "bwd_input")) t->bwd_input = v;
    else if (!strcmp(tok, "bwd_weight")) t->bwd_weight = v;
    else if (!strcmp(tok, "comm")) t->comm = v;
    else if (!strcmp(tok, "load")) t->load = v;
    else if (!strcmp(tok, "reduce")) t->reduce = v;
    else if (!strcmp(tok, "step")) t->step = v;
    else {
      fprintf(stderr, "zp: --times: unknown key '%s' (fwd bwd bwd_input bwd_weight comm load reduce step)\n", tok);
      return -1;
    }
  }
  return 0;
}

static int cmd_check(int argc, char** argv) {
  const char* script = NULL;
  int P = 0, M = 0, V = 1, width = 100, bwd_set = 0, summary = 0;
  zp_op_times t;
  zp_op_times_default(&t);
  t.bwd = 0;
  for (int i = 0; i < argc; i++) {
    const char* a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--stages") && v) { if (parse_int(a, v, 1, ZP_SCHED_MAX_STAGES, &P)) return 2; i++; }
    else if (!strcmp(a, "--micro-batches") && v) { if (parse_int(a, v, 1, ZP_SCHED_MAX_MICRO_BATCHES, &M)) return 2; i++; }
    else if (!strcmp(a, "--chunks") && v) { if (parse_int(a, v, 1, ZP_SCHED_MAX_CHUNKS, &V)) return 2; i++; }
    else if (!strcmp(a, "--width") && v) { if (parse_int(a, v, 20, 100000, &width)) return 2; i++; }
    else if (!strcmp(a, "--times") && v) { if (parse_times(v, &t, &bwd_set)) return 2; i++; }
    else if (!strcmp(a, "--summary")) summary = 1;
    else if (a[0] == '-' && a[1]) { fprintf(stderr, "zp: unknown or incomplete option '%s'\n", a); usage(stderr); return 2; }
    else if (!script) script = a;
    else { fprintf(stderr, "zp: unexpected argument '%s'\n", a); return 2; }
  }
  if (!script || !P || !M) {
    fprintf(stderr, "zp: schedule check needs SCRIPT, --stages and --micro-batches\n");
    usage(stderr);
    return 2;
  }
  char path[1024];
  if (zp_find_script(NULL, "schedules", script, path, sizeof path)) {
    fprintf(stderr, "zp: schedule '%s': no such file or shipped schedule (gpipe, 1f1b, interleaved_1f1b, zb_h1)\n", script);
    return 1;
  }
  char err[8192];
  zp_schedule* s = NULL;
  if (zp_schedule_load(path, P, M, V, &s, err, sizeof err)) {
    fprintf(stderr, "zp: rejected: %s\n", err);
    return 1;
  }
  printf("schedule %s: %d stage%s, %d micro-batch%s, %d chunk%s\n", path, P, P > 1 ? "s" : "", M, M > 1 ? "es" : "", V,
         V > 1 ? "s" : "");
  if (!summary) zp_schedule_print(s, stdout, width);
  if (!summary) printf("tokens: L load, F fwd, B bwd, I bwd_input, W bwd_weight, sa/ra send/recv act, sg/rg send/recv grad, "
         "R reduce_grads, S step; mb%s[buffer]\n", V > 1 ? ".chunk" : "");
  if (zp_schedule_validate(s, err, sizeof err)) {
    printf("validation: REJECTED\n");
    fprintf(stderr, "zp: rejected: %s\n", err);
    zp_schedule_free(s);
    return 1;
  }
  printf("validation: ok; peak buffers in use per stage:");
  for (int st = 0; st < P; st++) printf(" %d", zp_schedule_peak_buffers(s, st));
  printf("\n");
  /* per-instruction times: a chunk does 1/V of the device stage's work */
  zp_op_times ti = t;
  double bwd_full = bwd_set ? t.bwd : t.bwd_input + t.bwd_weight;
  ti.fwd /= V;
  ti.bwd_input /= V;
  ti.bwd_weight /= V;
  ti.bwd = bwd_full / V;
  zp_sched_sim sim;
  int rc = zp_schedule_simulate(s, &ti, 1, &sim, err, sizeof err);
  if (rc) {
    fprintf(stderr, "zp: simulation failed: %s\n", err);
    zp_sched_sim_free(&sim);
    zp_schedule_free(s);
    return 1;
  }
  int split = 0;
  for (int st = 0; st < P && !split; st++) {
    int n;
    const zp_sched_instr* l = zp_schedule_stage(s, st, &n);
    for (int i = 0; i < n; i++)
      if (l[i].op == ZP_SOP_BWD_INPUT) split = 1;
  }
  printf("simulated with fwd=%g bwd_input=%g bwd_weight=%g bwd=%g comm=%g per device stage%s, rendezvous sends:\n", t.fwd,
         t.bwd_input, t.bwd_weight, bwd_full, t.comm, V > 1 ? " (per chunk: 1/V of that)" : "");
  printf("%-6s %12s %12s %8s\n", "stage", "busy", "wall", "bubble");
  for (int st = 0; st < P; st++) printf("%-6d %12.6g %12.6g %8.4f\n", st, sim.busy[st], sim.makespan, sim.bubble[st]);
  double tb = zp_bubble_textbook(P, M, V);
  printf("mean bubble %.4f (1 - busy/wall)\n", sim.mean_bubble);
  if (V > 1)
    printf("textbook (p-1)/(v*m) = %.4f of ideal compute -> %.4f of wall\n", tb, zp_bubble_fraction(tb));
  else
    printf("textbook (p-1)/m = %.4f of ideal compute -> %.4f of wall\n", tb, zp_bubble_fraction(tb));
  if (split) {
    double z = zp_bubble_textbook_zb_h1(P, M, t.fwd, t.bwd_input, t.bwd_weight);
    printf("textbook ZB-H1 (p-1)(tF+tB-tW)/(m(tF+tB+tW)) = %.4f of ideal compute -> %.4f of wall\n", z,
           zp_bubble_fraction(z));
  }
  zp_sched_sim_free(&sim);
  zp_schedule_free(s);
  return 0;
}

static int cmd_split(int argc, char** argv) {
  const char* cfgpath = NULL;
  const char* sets[256];
  int ns = 0;
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--set") && i + 1 < argc) {
      if (ns >= 256) { fprintf(stderr, "zp: too many --set\n"); return 2; }
      sets[ns++] = argv[++i];
    } else if (argv[i][0] == '-') {
      fprintf(stderr, "zp: unknown option '%s'\n", argv[i]);
      return 2;
    } else if (!cfgpath) cfgpath = argv[i];
    else { fprintf(stderr, "zp: unexpected argument '%s'\n", argv[i]); return 2; }
  }
  if (!cfgpath) { usage(stderr); return 2; }
  zp_config c;
  char err[4096];
  if (zp_config_load(&c, cfgpath, sets, ns, err, sizeof err)) {
    fprintf(stderr, "zp: %s\n", err);
    zp_config_free(&c);
    return 1;
  }
  zp_gpt2_shape sh;
  sh.L = (int)zp_cfg_int(&c, "model.n_layer");
  sh.NH = (int)zp_cfg_int(&c, "model.n_head");
  sh.C = (int)zp_cfg_int(&c, "model.d_model");
  sh.maxT = (int)zp_cfg_int(&c, "model.seq_len");
  sh.V = (int)zp_cfg_int(&c, "model.vocab_size");
  int pad = (int)zp_cfg_int(&c, "model.vocab_pad");
  sh.Vp = (sh.V + pad - 1) / pad * pad;
  zp_model_layout m;
  if (zp_model_layout_init(&m, &sh, err, sizeof err)) {
    fprintf(stderr, "zp: %s\n", err);
    zp_config_free(&c);
    return 1;
  }
  int pp = (int)zp_cfg_int(&c, "parallel.pp"), ch = (int)zp_cfg_int(&c, "pipeline.chunks");
  int S = pp * ch, G = m.n_groups, rc = 0;
  int* first = malloc((size_t)(S + 1) * sizeof(int));
  double* cost = malloc((size_t)G * sizeof(double));
  char** names = calloc((size_t)G, sizeof(char*));
  if (!first || !cost || !names) {
    fprintf(stderr, "zp: out of memory\n");
    rc = 1;
    goto done;
  }
  for (int g = 0; g < G; g++) {
    names[g] = malloc(32);
    if (!names[g]) { rc = 1; goto done; }
    if (g == 0) snprintf(names[g], 32, "embed");
    else if (g == G - 1) snprintf(names[g], 32, "head");
    else snprintf(names[g], 32, "block.%d", g - 1);
  }
  zp_pipeline_group_flops(sh.L, sh.C, sh.maxT, sh.Vp, cost, G);
  if (zp_pipeline_split_for_config(&c, sh.L, sh.C, sh.maxT, sh.Vp, first, S + 1, err, sizeof err)) {
    fprintf(stderr, "zp: %s\n", err);
    rc = 1;
    goto done;
  }
  printf("%d groups on %d pipeline stage%s (pp %d x chunks %d), %s:\n", G, S, S > 1 ? "s" : "", pp, ch,
         zp_cfg_get(&c, "pipeline.stages")->list_len ? "explicit pipeline.stages" : "balanced by forward FLOPs");
  if (ch > 1) printf("(virtual stage k runs on device k %% %d as its chunk k / %d)\n", pp, pp);
  zp_pipeline_split_print(stdout, first, S, cost, m.group_numel, (const char* const*)names);
done:
  if (names)
    for (int g = 0; g < G; g++) free(names[g]);
  free(names);
  free(cost);
  free(first);
  zp_model_layout_free(&m);
  zp_config_free(&c);
  return rc;
}

int zp_cmd_schedule(int argc, char** argv) {
  if (argc >= 1 && !strcmp(argv[0], "check")) return cmd_check(argc - 1, argv + 1);
  if (argc >= 1 && !strcmp(argv[0], "split")) return cmd_split(argc - 1, argv + 1);
  if (argc >= 1 && (!strcmp(argv[0], "--help") || !strcmp(argv[0], "-h"))) {
    usage(stdout);
    return 0;
  }
  usage(stderr);
  return 2;
}
