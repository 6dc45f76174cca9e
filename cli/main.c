/* main.c: the `zp` command line. Each subcommand parses its own arguments and returns an exit
 * status; usage errors print a one-line reason and the usage, status 2; run-time errors print
 * "zp: <what failed and why>", status 1. Nothing here calls exit() below main. */
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt.h"
#include "cmd.h"
#include "comm.h"
#include "config.h"
#include "layout.h"
#include "ledger.h"
#include "pipeline_exec.h"
#include "plugin.h"
#include "schedule.h"
#include "runtime.h"
#include "train.h"

static void usage(FILE* f) {
  fprintf(f,
          "zeroplace %s — decides where every byte of training state lives\n"
          "usage:\n"
          "  zp train CONFIG.toml [--set key=value]...      train (one rank, or a rank under zp launch/torchrun/mpirun)\n"
          "  zp launch -n N [--timeout S] CONFIG.toml [--set ...]  N local ranks\n"
          "  zp plan CONFIG.toml [--world N] [--device-gb G] [--set ...]  placement and memory per rank, nothing allocated\n"
          "  zp sample CONFIG.toml [--ckpt DIR] [--prompt TEXT] [--set ...]\n"
          "  zp data prepare --out DIR [--split-on-percent] [--val-fraction F] [--bpe ENC VOCAB] INPUT...\n"
          "  zp data info FILE...\n"
          "  zp ckpt info DIR [-v] | zp ckpt compare A B [--tol T] | zp ckpt logits CKPT --tokens LIST [--out F]\n"
          "  zp export CKPT_DIR|RUN_DIR --out FILE.safetensors|DIR [--dtype fp32|bf16]   Hugging Face GPT-2 weights\n"
          "  zp import FILE.safetensors --config CONFIG.toml [--out RUN_DIR]          start a run from them\n"
          "  zp config CONFIG.toml [--set ...]             the effective configuration, with origins\n"
          "  zp config --doc                               the configuration reference (docs/config.md)\n"
          "  zp run SCRIPT.lua [--out DIR] [--set ...] [--arg name=value]  Lua experiment (docs/lua-api.md)\n"
          "  zp schedule check SCRIPT --stages P --micro-batches M [--chunks V]  validate + simulate a pipeline schedule\n"
          "  zp schedule split CONFIG.toml [--set ...]     groups per pipeline stage (balanced by FLOPs)\n"
          "  zp plugins                                    plugins found on the search path\n"
          "  zp nvme-bench DIR [--size GB] [--seconds S]   NVMe (O_DIRECT) bandwidth grid -> offload settings\n"
          "  zp toml-decode                                TOML on stdin -> toml-test tagged JSON\n"
          "  zp version\n",
          ZP_VERSION_STRING);
}

typedef struct {
  const char* config;
  const char* sets[256];
  int n_sets;
  int world;
  double device_gb; /* zp plan --device-gb: the GPU's memory, checked against the plan (0: not checked) */
  const char* ckpt;
  const char* prompt;
} args_t;

static int parse_args(int argc, char** argv, args_t* a, int allow_world, int allow_sample) {
  memset(a, 0, sizeof *a);
  for (int i = 0; i < argc; i++) {
    const char* s = argv[i];
    if (strcmp(s, "--set") == 0 || strncmp(s, "--set=", 6) == 0) {
      const char* v = s[5] == '=' ? s + 6 : (i + 1 < argc ? argv[++i] : NULL);
      if (!v) { fprintf(stderr, "zp: --set needs key=value\n"); return 2; }
      if (a->n_sets >= 256) { fprintf(stderr, "zp: too many --set\n"); return 2; }
      a->sets[a->n_sets++] = v;
    } else if (allow_world && strcmp(s, "--world") == 0 && i + 1 < argc) {
      char* end;
      long w = strtol(argv[++i], &end, 10);
      if (*end || w < 1 || w > 1000000) { fprintf(stderr, "zp: --world needs a positive integer, got '%s'\n", argv[i]); return 2; }
      a->world = (int)w;
    } else if (allow_world && strcmp(s, "--device-gb") == 0 && i + 1 < argc) {
      char* end;
      double g = strtod(argv[++i], &end);
      if (*end || !(g > 0) || g > 1e6) { fprintf(stderr, "zp: --device-gb needs a positive number (GiB), got '%s'\n", argv[i]); return 2; }
      a->device_gb = g;
    } else if (allow_sample && strcmp(s, "--ckpt") == 0 && i + 1 < argc) {
      a->ckpt = argv[++i];
    } else if (allow_sample && strcmp(s, "--prompt") == 0 && i + 1 < argc) {
      a->prompt = argv[++i];
    } else if (s[0] == '-' && s[1]) {
      fprintf(stderr, "zp: unknown option '%s'\n", s);
      return 2;
    } else if (!a->config) {
      a->config = s;
    } else {
      fprintf(stderr, "zp: unexpected argument '%s'\n", s);
      return 2;
    }
  }
  if (!a->config) { fprintf(stderr, "zp: missing CONFIG.toml\n"); return 2; }
  return 0;
}

static int load_cfg(const args_t* a, zp_config* c) {
  char err[2048];
  int rc = zp_config_load(c, a->config, a->sets, a->n_sets, err, sizeof err);
  if (rc) {
    fprintf(stderr, "zp: %s\n", err);
    zp_config_free(c);
    return 1;
  }
  return 0;
}

static int cmd_train(int argc, char** argv) {
  args_t a;
  int rc = parse_args(argc, argv, &a, 0, 0);
  if (rc) return rc;
  zp_config c;
  if (load_cfg(&a, &c)) return 1;
  char err[4096] = "";
  zp_comm* comm = NULL;
  /* comm.timeout_s, when given, is the deadline of every collective (the launcher's default
   * otherwise) */
  if (zp_cfg_get(&c, "comm.timeout_s")->set) {
    char tb[64];
    snprintf(tb, sizeof tb, "%g", zp_cfg_float(&c, "comm.timeout_s"));
    setenv("ZP_COMM_TIMEOUT", tb, 1);
  }
  if (zp_comm_from_env(&comm, err, sizeof err)) {
    fprintf(stderr, "zp: %s\n", err);
    zp_config_free(&c);
    return 1;
  }
  rc = zp_train(&c, comm, err, sizeof err);
  if (rc) {
    int rank = comm ? zp_comm_rank(comm) : 0;
    if (comm && zp_comm_size(comm) > 1) fprintf(stderr, "zp: rank %d: %s\n", rank, err);
    else fprintf(stderr, "zp: %s\n", err);
  }
  zp_comm_destroy(comm);
  zp_config_free(&c);
  return rc ? 1 : 0;
}

/* zp plan with parallel.pp > 1: each stage's run (its groups) and its pipeline executor
 * (activation slots the schedule keeps in flight, gradient accumulators, the tied
 * embedding's copy), opened dry so the ledger counts exactly what a real stage allocates. */
/* --device-gb: the device tier's peak plus the CUDA context and library workspaces (~0.6 GiB
 * measured beside the ledger on an H100: docs/perf.md) against the GPU's memory */
static int device_fits(double peak, double device_gb) {
  if (device_gb <= 0) return 1;
  const double ctx = 0.75 * 1073741824.0, cap = device_gb * 1073741824.0, need = peak + ctx;
  if (need > cap) {
    fprintf(stderr, "zp: the plan needs %.2f GiB of device memory per GPU (ledger peak %.2f GiB + %.2f GiB for the CUDA "
            "context and library workspaces), more than --device-gb %g: shard more (zero.plugin), offload "
            "(offload.optimizer.plugin, a larger offload.optimizer.ratio), recompute (train.recompute) or a smaller "
            "micro-batch\n", need / 1073741824.0, peak / 1073741824.0, ctx / 1073741824.0, device_gb);
    return 0;
  }
  printf("device memory: %.2f GiB of --device-gb %g per GPU (ledger peak + %.2f GiB context)\n", need / 1073741824.0,
         device_gb, ctx / 1073741824.0);
  return 1;
}

static int plan_stages(zp_config* c, const zp_run_opts* o0, int world, int dp, int pp, int tp, double device_gb) {
  char err[2048] = "";
  zp_schedule* sched = NULL;
  int rc = zp_schedule_from_config(c, &sched, err, sizeof err);
  if (rc) {
    fprintf(stderr, "zp: %s\n", err);
    return rc;
  }
  int L = (int)zp_cfg_int(c, "model.n_layer"), G = L + 2, K = pp * zp_schedule_chunks(sched);
  int* first = calloc((size_t)K + 1, sizeof(int));
  unsigned char* held = calloc((size_t)G, 1);
  long long (*tot)[ZP_CAT_COUNT] = calloc((size_t)pp, sizeof *tot);
  long long* peak = calloc((size_t)pp, sizeof *peak);
  int* slots = calloc((size_t)pp, sizeof *slots);
  if (!first || !held || !tot || !peak || !slots) {
    fprintf(stderr, "zp: out of host memory\n");
    rc = ZP_E_NOMEM;
  }
  printf("layout: %d ranks = dp %d x pp %d x tp %d, schedule %s, %d micro-batches%s; per stage, one %s rank:\n", world, dp, pp,
         tp, zp_cfg_str(c, "pipeline.schedule"), zp_schedule_micro_batches(sched),
         zp_schedule_chunks(sched) > 1 ? " (interleaved chunks)" : "", tp > 1 ? "tensor-parallel" : "data-parallel");
  for (int st = 0; !rc && st < pp; st++) {
    zp_layout lay;
    if ((rc = zp_layout_init(&lay, world, 0, dp, pp, tp, err, sizeof err)) ||
        (rc = zp_layout_init(&lay, world, zp_layout_rank_of(&lay, 0, st, 0), dp, pp, tp, err, sizeof err)) ||
        (rc = zp_pipe_held(c, st, held, first, K + 1, err, sizeof err))) {
      fprintf(stderr, "zp: %s\n", err);
      break;
    }
    zp_run r;
    zp_run_opts o = *o0;
    o.held = held;
    o.no_acts = 1; /* the executor allocates the stage's activation slots */
    if ((rc = zp_run_open(&r, c, &o))) {
      fprintf(stderr, "zp: stage %d: %s\n", st, r.err);
      zp_run_close(&r);
      break;
    }
    zp_pipe* p = NULL;
    if ((rc = zp_pipe_open(&r, c, &lay, NULL, sched, &p, err, sizeof err))) {
      fprintf(stderr, "zp: stage %d: %s\n", st, err);
    } else {
      int nheld = 0, g0 = -1, g1 = -1;
      for (int g = 0; g < G; g++)
        if (held[g]) {
          nheld++;
          if (g0 < 0) g0 = g;
          g1 = g;
        }
      char line[1024];
      zp_ledger_line(&r.ledger, line, sizeof line);
      printf("  stage %d: %d group(s) %d..%d; %s\n", st, nheld, g0, g1, line);
      for (int k = 0; k < ZP_CAT_COUNT; k++) tot[st][k] = r.ledger.cur[k][ZP_TIER_GPU];
      peak[st] = zp_ledger_total_peak(&r.ledger, ZP_TIER_GPU);
      slots[st] = zp_schedule_buffers(sched, st);
      if (st == pp - 1) {
        printf("\n");
        zp_run_print_plan(&r, stdout);
      }
    }
    zp_pipe_close(p);
    zp_run_close(&r);
  }
  if (!rc) {
    char b[32];
    printf("\ngpu memory per stage (the stage's own groups, its activation slots and pipeline buffers):\n");
    printf("  %-6s", "stage");
    for (int k = 0; k < ZP_CAT_COUNT; k++) printf(" %11s", zp_category_name((zp_category)k));
    printf(" %11s %6s\n", "peak", "slots");
    int worst = 0;
    for (int st = 0; st < pp; st++) {
      printf("  %-6d", st);
      for (int k = 0; k < ZP_CAT_COUNT; k++) printf(" %11s", zp_fmt_bytes((double)tot[st][k], b, sizeof b));
      printf(" %11s %6d\n", zp_fmt_bytes((double)peak[st], b, sizeof b), slots[st]);
      if (peak[st] > peak[worst]) worst = st;
    }
    printf("largest: stage %d, %s per GPU\n", worst, zp_fmt_bytes((double)peak[worst], b, sizeof b));
    if (!device_fits((double)peak[worst], device_gb)) rc = ZP_E_NOMEM;
  }
  free(first);
  free(held);
  free(tot);
  free(peak);
  free(slots);
  zp_schedule_free(sched);
  return rc;
}

static int cmd_plan(int argc, char** argv) {
  args_t a;
  int rc = parse_args(argc, argv, &a, 1, 0);
  if (rc) return rc;
  zp_config c;
  if (load_cfg(&a, &c)) return 1;
  zp_run r;
  zp_run_opts o = {0};
  o.dry_run = 1;
  /* --world counts every rank; the run (and its sharding) spans the data-parallel ones */
  int world = a.world ? a.world : 1, pp = (int)zp_cfg_int(&c, "parallel.pp"), tp = (int)zp_cfg_int(&c, "parallel.tp");
  int dp = (int)zp_cfg_int(&c, "parallel.dp");
  if (dp == 0) dp = world / (pp * tp);
  if (dp < 1 || dp * pp * tp != world) {
    fprintf(stderr, "zp: parallel.dp %d x pp %d x tp %d does not match --world %d\n", dp, pp, tp, world);
    zp_config_free(&c);
    return 1;
  }
  o.world = dp;
  if (pp > 1) {
    rc = plan_stages(&c, &o, world, dp, pp, tp, a.device_gb);
    zp_config_free(&c);
    return rc ? 1 : 0;
  }
  rc = zp_run_open(&r, &c, &o);
  if (rc) fprintf(stderr, "zp: %s\n", r.err);
  else {
    if (tp > 1)
      printf("layout: %d ranks = dp %d x pp %d x tp %d; the plan below is one tensor-parallel rank\n", world, dp, pp, tp);
    if (strcmp(zp_cfg_str(&c, "train.device"), "cuda") == 0)
      printf("note: train.device = \"cuda\": activations sized with the CUDA backend's attention storage (the logsumexp "
             "for head sizes 32/64/128, as its flash / fa2 kernels keep), without loading the plugin\n");
    zp_run_print_plan(&r, stdout);
    if (!device_fits((double)zp_ledger_total_peak(&r.ledger, ZP_TIER_GPU), a.device_gb)) rc = ZP_E_NOMEM;
  }
  zp_run_close(&r);
  zp_config_free(&c);
  return rc ? 1 : 0;
}

static int cmd_sample(int argc, char** argv) {
  args_t a;
  int rc = parse_args(argc, argv, &a, 0, 1);
  if (rc) return rc;
  zp_config c;
  if (load_cfg(&a, &c)) return 1;
  char err[4096] = "";
  if (a.prompt) {
    char* s = malloc(strlen(a.prompt) * 2 + 32);
    char* o = s + sprintf(s, "sample.prompt=\"");
    for (const char* p = a.prompt; *p; p++) {
      if (*p == '"' || *p == '\\') *o++ = '\\';
      if (*p == '\n') { *o++ = '\\'; *o++ = 'n'; continue; }
      *o++ = *p;
    }
    strcpy(o, "\"");
    rc = zp_config_set(&c, s, err, sizeof err);
    free(s);
    if (rc) { fprintf(stderr, "zp: %s\n", err); zp_config_free(&c); return 1; }
  }
  rc = zp_sample(&c, a.ckpt, err, sizeof err);
  if (rc) fprintf(stderr, "zp: %s\n", err);
  zp_config_free(&c);
  return rc ? 1 : 0;
}

static int cmd_config(int argc, char** argv) {
  if (argc >= 1 && strcmp(argv[0], "--doc") == 0) {
    if (argc > 1) {
      fprintf(stderr, "zp config --doc: unexpected argument '%s' (it takes none)\n", argv[1]);
      return 2;
    }
    zp_config_write_doc(stdout);
    return 0;
  }
  args_t a;
  int rc = parse_args(argc, argv, &a, 0, 0);
  if (rc) return rc;
  zp_config c;
  if (load_cfg(&a, &c)) return 1;
  zp_config_dump(&c, stdout);
  zp_config_free(&c);
  return 0;
}

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  if (getenv("ZP_RANK")) setvbuf(stdout, NULL, _IOLBF, 0); /* under zp launch stdout is a pipe */
  if (argc < 2 || strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const char* cmd = argv[1];
  int n = argc - 2;
  char** v = argv + 2;
  if (strcmp(cmd, "train") == 0) return cmd_train(n, v);
  if (strcmp(cmd, "plan") == 0) return cmd_plan(n, v);
  if (strcmp(cmd, "sample") == 0) return cmd_sample(n, v);
  if (strcmp(cmd, "launch") == 0) return zp_cmd_launch(n, v);
  if (strcmp(cmd, "run") == 0) return zp_cmd_run(n, v);
  if (strcmp(cmd, "data") == 0) return zp_cmd_data(n, v);
  if (strcmp(cmd, "ckpt") == 0) return zp_cmd_ckpt(n, v);
  if (strcmp(cmd, "export") == 0) return zp_cmd_export(n, v);
  if (strcmp(cmd, "import") == 0) return zp_cmd_import(n, v);
  if (strcmp(cmd, "config") == 0) return cmd_config(n, v);
  if (strcmp(cmd, "toml-decode") == 0) return zp_cmd_toml_decode(n, v);
  if (strcmp(cmd, "nvme-bench") == 0) return zp_cmd_nvme_bench(n, v);
  if (strcmp(cmd, "schedule") == 0) return zp_cmd_schedule(n, v);
  if (strcmp(cmd, "plugins") == 0) return zp_plugin_list(stdout) >= 0 ? 0 : 1;
  if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
    printf("zp %s (plugin ABI %d.%d)\n", ZP_VERSION_STRING, ZP_ABI_MAJOR, ZP_ABI_MINOR);
    return 0;
  }
  fprintf(stderr, "zp: unknown command '%s'\n", cmd);
  usage(stderr);
  return 2;
}
