/* train.c: `zp train` — the training loop around a zp_run: data positions, LR schedule (Lua),
 * step lines, validation, metrics JSONL, traces, checkpoints, resume, pre-emption signals.
 *
 * Invariants:
 * - The global sample order does not depend on the number of data-parallel ranks: step s
 *   consumes positions [s*GB, (s+1)*GB) of the dataset stream, GB = micro_batch*grad_accum*dp;
 *   rank r, micro-batch m, row b reads position s*GB + (m*dp + r)*B + b.
 * - Decisions that change the run (stop on a signal, lr from a hook) are taken on rank 0 and
 *   broadcast (or agreed by a max-reduction), so ranks never diverge.
 * - Resume continues exactly: optimizer state, step counter and data position come from the
 *   checkpoint; nothing else carries state between steps.
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt.h"
#include "comm.h"
#include "config.h"
#include "data.h"
#include "layout.h"
#include "lua_host.h"
#include "pipeline_exec.h"
#include "norm_overlap.h"
#include "runtime.h"
#include "safetensors.h"
#include "trace.h"
#include "train.h"
#include "op_profile.h"

static volatile sig_atomic_t g_signal;
static void on_signal(int s) { g_signal = s; }

/* Fault injection for tests: ZP_FAULT="kill:STEP:RANK" or "stop:STEP:RANK" makes that rank
 * SIGKILL or SIGSTOP itself at the start of that step (1-based), while the others proceed
 * into the step's collectives: they must fail with a message naming the rank and operation. */
static void maybe_fault(int64_t step1, int rank) {
  const char* f = getenv("ZP_FAULT");
  if (!f) return;
  char kind[16];
  long long st;
  int rk;
  if (sscanf(f, "%15[a-z]:%lld:%d", kind, &st, &rk) != 3 || st != step1 || rk != rank) return;
  fprintf(stderr, "zp: ZP_FAULT: rank %d %s at step %lld\n", rank, kind, st);
  fflush(stderr);
  if (strcmp(kind, "kill") == 0) raise(SIGKILL);
  if (strcmp(kind, "stop") == 0) raise(SIGSTOP);
}

static int mkdir_p(const char* path) {
  char tmp[2048];
  snprintf(tmp, sizeof tmp, "%s", path);
  for (char* p = tmp + 1; *p; p++)
    if (*p == '/') {
      *p = 0;
      if (mkdir(tmp, 0755) && errno != EEXIST) return -1;
      *p = '/';
    }
  if (mkdir(tmp, 0755) && errno != EEXIST) return -1;
  return 0;
}

static int file_exists(const char* p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* Shipped scripts: <exe>/../share/zp/scripts, the source tree, then relative to the config. */
int zp_find_script(const zp_config* cfg, const char* sub, const char* name, char* out, size_t n) {
  /* without a config (a command-line argument) a path is taken as given, and so is a name
   * without '/' or ".lua" that is an existing file */
  if (strchr(name, '/') || strstr(name, ".lua") || (!cfg && file_exists(name))) {
    if (name[0] == '/' || !cfg || !cfg->dir[0]) snprintf(out, n, "%s", name);
    else snprintf(out, n, "%s/%s", cfg->dir, name);
    return file_exists(out) ? 0 : -1;
  }
  char exe[1024];
  ssize_t r = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (r > 0) {
    exe[r] = 0;
    char* s = strrchr(exe, '/');
    if (s) *s = 0;
    snprintf(out, n, "%s/../share/zp/scripts/%s/%s.lua", exe, sub, name);
    if (file_exists(out)) return 0;
  }
  snprintf(out, n, "%s/scripts/%s/%s.lua", ZP_SOURCE_DIR, sub, name);
  return file_exists(out) ? 0 : -1;
}

typedef struct {
  zp_lua* L;
  int has_hook;
} lua_ctx;

static int setup_lua(const zp_config* cfg, lua_ctx* lc, char* err, size_t errlen) {
  memset(lc, 0, sizeof *lc);
  zp_lua_limits lim = {0, 0, 60.0};
  lc->L = zp_lua_new(&lim, err, errlen);
  if (!lc->L) return ZP_E_INVALID;
  char path[1024];
  const char* sched = zp_cfg_str(cfg, "train.lr_schedule");
  if (zp_find_script(cfg, "schedules", sched, path, sizeof path)) {
    snprintf(err, errlen, "%s: train.lr_schedule = \"%s\": no such schedule (shipped: cosine, constant; or a .lua path)",
             zp_cfg_get(cfg, "train.lr_schedule")->origin, sched);
    return ZP_E_INVALID;
  }
  if (zp_lua_run_file(lc->L, path, err, errlen)) return ZP_E_INVALID;
  if (!zp_lua_has_function(lc->L, "lr")) {
    snprintf(err, errlen, "%s: does not define function lr(step, total_steps)", path);
    return ZP_E_INVALID;
  }
  const char* keys[] = {"lr", "warmup_steps", "min_lr_ratio", "total_steps"};
  double vals[] = {zp_cfg_float(cfg, "train.lr"), (double)zp_cfg_int(cfg, "train.warmup_steps"),
                   zp_cfg_float(cfg, "train.min_lr_ratio"), (double)zp_cfg_int(cfg, "train.steps")};
  if (zp_lua_set_global_numbers(lc->L, "config", keys, vals, 4, err, errlen)) return ZP_E_INVALID;
  const char* hooks = zp_cfg_str(cfg, "train.hooks");
  if (hooks[0]) {
    if (zp_find_script(cfg, "hooks", hooks, path, sizeof path)) {
      snprintf(err, errlen, "train.hooks = \"%s\": file not found", hooks);
      return ZP_E_IO;
    }
    if (zp_lua_run_file(lc->L, path, err, errlen)) return ZP_E_INVALID;
    lc->has_hook = zp_lua_has_function(lc->L, "on_step");
    if (!lc->has_hook) {
      snprintf(err, errlen, "%s: does not define function on_step(metrics)", path);
      return ZP_E_INVALID;
    }
  }
  return ZP_OK;
}

static int lr_at(lua_ctx* lc, int64_t step, int64_t total, double* out, char* err, size_t errlen) {
  double args[2] = {(double)step, (double)total};
  if (zp_lua_call_numbers(lc->L, "lr", args, 2, out, err, errlen)) return ZP_E_INVALID;
  if (*out < 0) {
    snprintf(err, errlen, "lr schedule returned a negative learning rate %g at step %lld", *out, (long long)step);
    return ZP_E_INVALID;
  }
  return ZP_OK;
}

#include <lauxlib.h>
#include <lua.h>
/* Hook: on_step(metrics) may return a table {stop=bool, lr=number, save=bool}. */
typedef struct {
  int stop, save;
  double lr_override; /* < 0: none */
} hook_result;

typedef struct {
  int64_t step;
  double loss, lr, gnorm, ms;
  hook_result* hr;
  char bad[128];
} hook_call;

/* Runs inside zp_lua_pcall (everything that may allocate must: a Lua memory error outside a
 * protected call would abort the process). Builds the metrics table, calls on_step, reads the
 * returned table. */
static int hook_trampoline(lua_State* L) {
  hook_call* hc = lua_touserdata(L, 1);
  lua_settop(L, 0);
  lua_getglobal(L, "on_step");
  lua_createtable(L, 0, 5);
  lua_pushinteger(L, (lua_Integer)hc->step); lua_setfield(L, -2, "step");
  lua_pushnumber(L, hc->loss); lua_setfield(L, -2, "loss");
  lua_pushnumber(L, hc->lr); lua_setfield(L, -2, "lr");
  lua_pushnumber(L, hc->gnorm); lua_setfield(L, -2, "grad_norm");
  lua_pushnumber(L, hc->ms); lua_setfield(L, -2, "ms");
  lua_call(L, 1, 1);
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "stop"); hc->hr->stop = lua_toboolean(L, -1); lua_pop(L, 1);
    lua_getfield(L, -1, "save"); hc->hr->save = lua_toboolean(L, -1); lua_pop(L, 1);
    lua_getfield(L, -1, "lr");
    if (lua_isnumber(L, -1)) {
      double v = lua_tonumber(L, -1);
      if (!(v >= 0) || !isfinite(v)) return luaL_error(L, "on_step returned an invalid lr %f", v);
      hc->hr->lr_override = v;
    }
    lua_pop(L, 1);
  } else if (!lua_isnil(L, -1)) {
    return luaL_error(L, "on_step must return nil or a table {stop=, save=, lr=}, got %s", luaL_typename(L, -1));
  }
  return 0;
}

static int call_hook(lua_ctx* lc, int64_t step, double loss, double lr, double gnorm, double ms, hook_result* hr,
                     char* err, size_t errlen) {
  hr->stop = hr->save = 0;
  hr->lr_override = -1;
  hook_call hc = {step, loss, lr, gnorm, ms, hr, ""};
  lua_State* L = zp_lua_state(lc->L);
  lua_pushcfunction(L, hook_trampoline);
  lua_pushlightuserdata(L, &hc);
  if (zp_lua_pcall(lc->L, 1, 0, err, errlen)) return ZP_E_INVALID;
  return ZP_OK;
}

typedef struct {
  zp_config* cfg;
  zp_run run;
  zp_comm* comm;
  zp_dataset *train, *val;
  lua_ctx lua;
  FILE* metrics;
  int rank, dp;
  int dpr;              /* data-parallel rank (= rank without pipeline/tensor parallelism) */
  zp_comm* dpc;         /* data-parallel communicator (loss means) */
  zp_pipe* pipe;        /* pipeline executor (parallel.pp > 1), else NULL */
  uint64_t step_pos;    /* pipeline: data position of the step being run */
  char out_dir[1024];
  int32_t *inp, *tgt;
  zp_ckpt_saver* saver; /* checkpoints: synchronous or ckpt.async (core/ckpt.c) */
} trainer;

static void tlog(trainer* t, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
static void tlog(trainer* t, const char* fmt, ...) {
  if (t->rank != 0) return;
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  fflush(stdout);
}

static int fetch(trainer* t, zp_dataset* ds, uint64_t first_pos, char* err, size_t errlen) {
  int B = t->run.B, T = t->run.T;
  for (int b = 0; b < B; b++) {
    int rc = zp_dataset_get(ds, first_pos + (uint64_t)b, t->inp + (size_t)b * T, t->tgt + (size_t)b * T, err, errlen);
    if (rc) return rc;
  }
  return ZP_OK;
}

static double allreduce_mean(trainer* t, double x) {
  if (!t->dpc || t->dp == 1) return x;
  double v = x;
  if (zp_comm_allreduce(t->dpc, &v, 1, ZP_F64, ZP_RED_AVG)) return NAN;
  return v;
}

static int validate(trainer* t, double* out, char* err, size_t errlen) {
  int nb = (int)zp_cfg_int(t->cfg, "train.val_batches");
  int B = t->run.B;
  double sum = 0;
  /* a delayed parameter update is applied first: validation sees the parameters of the last step */
  if (zp_run_flush(&t->run)) { snprintf(err, errlen, "validation: %s", t->run.err); return ZP_E_INTERNAL; }
  for (int i = 0; i < nb; i++) {
    uint64_t pos = ((uint64_t)i * (uint64_t)t->dp + (uint64_t)t->dpr) * (uint64_t)B;
    int rc = fetch(t, t->val, pos, err, errlen);
    if (rc) return rc;
    double l;
    if (t->pipe) {
      if ((rc = zp_pipe_forward(t->pipe, t->inp, t->tgt, &l, err, errlen))) return rc;
    } else
    rc = zp_run_forward(&t->run, t->inp, t->tgt, &l);
    if (rc) { snprintf(err, errlen, "validation: %s", t->run.err); return rc; }
    sum += l;
  }
  *out = allreduce_mean(t, sum / nb);
  return ZP_OK;
}

/* Checkpoint scope. A checkpoint is one directory for the whole job: its collectives and file
 * numbering run over every rank. Without pipeline parallelism that is the run's (data-parallel)
 * communicator; with it, each stage's run holds only its groups and its communicator is the
 * data-parallel one, so around checkpoint calls the run's communicator, rank and size are the
 * world's (each rank writes the pieces of the groups it holds; a replicated category is written
 * by the holder of shard 0 of the group: one writer per stage; the last stage's tied-wte copy is
 * not a group of its run and is not written). */
typedef struct {
  zp_comm* comm;
  int rank, world;
} ck_scope;
static void ck_enter(trainer* t, ck_scope* s) {
  zp_run* r = &t->run;
  s->comm = r->comm, s->rank = r->rank, s->world = r->world;
  /* (with tensor parallelism the checkpoint code uses the run's own communicators: ckpt_tp.c) */
  if (t->pipe && r->tp.size <= 1) r->comm = t->comm, r->rank = t->rank, r->world = zp_comm_size(t->comm);
}
static void ck_leave(trainer* t, const ck_scope* s) {
  zp_run* r = &t->run;
  r->comm = s->comm, r->rank = s->rank, r->world = s->world;
}

/* blocking: the checkpoint is complete on return (final and signal saves); otherwise with
 * ckpt.async it is only staged here and written in the background. */
static int save_ckpt(trainer* t, int64_t step, uint64_t data_pos, int blocking, char* err, size_t errlen) {
  char* dump = NULL;
  size_t dl = 0;
  FILE* mf = open_memstream(&dump, &dl);
  if (mf) {
    zp_config_dump(t->cfg, mf);
    fclose(mf);
  }
  double t0 = zp_now_us(), staged_ms = 0;
  /* pending delayed updates are applied before saving, so a resumed run starts from exactly the
   * state the uninterrupted run continues from */
  int rc = zp_run_flush(&t->run);
  if (rc) {
    free(dump);
    snprintf(err, errlen, "checkpoint at step %lld: %s", (long long)step, t->run.err);
    return rc;
  }
  ck_scope cs;
  ck_enter(t, &cs);
  rc = zp_ckpt_saver_save(t->saver, &t->run, step, data_pos, dump ? dump : "", blocking, &staged_ms, err, errlen);
  ck_leave(t, &cs);
  zp_trace_span(ZP_TR_IO, "checkpoint", (int)step, t0);
  free(dump);
  if (rc == ZP_OK) {
    if (zp_cfg_bool(t->cfg, "ckpt.async") && !blocking)
      tlog(t, "checkpoint at step %lld staged (training paused %.0f ms), writing to %s in the background\n", (long long)step, staged_ms,
           t->out_dir);
    else
      tlog(t, "saved checkpoint at step %lld to %s (%.0f ms)\n", (long long)step, t->out_dir, (zp_now_us() - t0) / 1000);
  }
  return rc;
}

/* ---- parallel layout and pipeline (core/layout.h, core/pipeline_exec.h) ---- */

/* The rank layout, its communicators and, with parallel.pp > 1, the schedule (loaded and
 * validated here, before any compute: a rejected schedule names stage, instruction and
 * reason) and the groups this stage holds. */
static int pipeline_setup(trainer* t, const zp_config* cfg, zp_comm* comm, int world, zp_layout* lay, zp_layout_comms* lc,
                          zp_schedule** sched, unsigned char** held, char* err, size_t errlen) {
  int pp = (int)zp_cfg_int(cfg, "parallel.pp"), tp = (int)zp_cfg_int(cfg, "parallel.tp");
  int rc = zp_layout_init(lay, world, t->rank, (int)zp_cfg_int(cfg, "parallel.dp"), pp, tp, err, errlen);
  if (rc) return rc;
  t->dpr = lay->dp_i;
  if (pp > 1) {
    if (zp_cfg_int(cfg, "train.grad_accum") != 1) {
      snprintf(err, errlen, "%s: train.grad_accum = %lld with parallel.pp = %d: a pipeline step runs pipeline.micro_batches "
               "micro-batches (the accumulation); set train.grad_accum = 1 and pipeline.micro_batches instead",
               zp_cfg_get(cfg, "train.grad_accum")->origin, (long long)zp_cfg_int(cfg, "train.grad_accum"), pp);
      return ZP_E_INVALID;
    }
    if ((rc = zp_schedule_from_config(cfg, sched, err, errlen))) return rc;
    for (int d = 0; tp > 1 && d < pp; d++) { /* before any compute (the executor checks again) */
      int n = 0;
      const zp_sched_instr* si = zp_schedule_stage(*sched, d, &n);
      for (int i = 0; i < n; i++)
        if (si[i].op == ZP_SOP_BWD_INPUT || si[i].op == ZP_SOP_BWD_WEIGHT) {
          snprintf(err, errlen, "%s: pipeline.schedule = \"%s\" splits the backward (BWD_INPUT / BWD_WEIGHT), which is not "
                   "implemented with parallel.tp = %d (the tensor-parallel backward runs whole): use gpipe, 1f1b or "
                   "interleaved_1f1b with tensor parallelism", zp_cfg_get(cfg, "pipeline.schedule")->origin,
                   zp_cfg_str(cfg, "pipeline.schedule"), tp);
          return ZP_E_NOT_IMPLEMENTED;
        }
    }
    int K = pp * (int)zp_cfg_int(cfg, "pipeline.chunks"), G = (int)zp_cfg_int(cfg, "model.n_layer") + 2;
    int* first = calloc((size_t)K + 1, sizeof(int));
    *held = calloc((size_t)G, 1);
    if (!first || !*held) {
      free(first);
      snprintf(err, errlen, "out of host memory");
      return ZP_E_NOMEM;
    }
    rc = zp_pipe_held(cfg, lay->pp_i, *held, first, K + 1, err, errlen);
    free(first);
    if (rc) return rc;
  } else if (zp_cfg_int(cfg, "pipeline.chunks") > 1) {
    snprintf(err, errlen, "%s: pipeline.chunks = %lld needs parallel.pp > 1", zp_cfg_get(cfg, "pipeline.chunks")->origin,
             (long long)zp_cfg_int(cfg, "pipeline.chunks"));
    return ZP_E_INVALID;
  }
  if ((rc = zp_layout_split(lay, comm, lc, err, errlen))) return rc;
  t->dpc = lc->dp;
  return ZP_OK;
}

/* LOAD mb: micro-batch mb of the step: rank dp_i reads position step_pos + (mb*dp + dp_i)*B */
static int pipe_load(void* ctx, int mb, int32_t* inputs, int32_t* targets, char* err, size_t errlen) {
  trainer* t = ctx;
  int B = t->run.B, T = t->run.T;
  uint64_t pos = t->step_pos + ((uint64_t)mb * (uint64_t)t->dp + (uint64_t)t->dpr) * (uint64_t)B;
  for (int b = 0; b < B; b++) {
    int rc = zp_dataset_get(t->train, pos + (uint64_t)b, inputs + (size_t)b * T, targets + (size_t)b * T, err, errlen);
    if (rc) return rc;
  }
  return ZP_OK;
}

/* Rank 0 prints the split (balanced or explicit, unevenness stated) and each stage's line,
 * gathered over its pipeline communicator (every replica gathers its own: same code path). */
static int pipeline_print(trainer* t, const zp_config* cfg, const zp_layout* lay, char* err, size_t errlen) {
  enum { LINE = 512 };
  char line[LINE];
  memset(line, 0, sizeof line);
  FILE* m = fmemopen(line, sizeof line - 1, "w");
  if (m) {
    zp_pipe_print(t->pipe, m);
    fclose(m);
  }
  int P = lay->pp;
  char* all = calloc((size_t)P, LINE);
  if (!all) {
    snprintf(err, errlen, "out of host memory");
    return ZP_E_NOMEM;
  }
  if (zp_comm_allgather(t->run.pp_comm, all, line, LINE / 4, ZP_I32)) {
    snprintf(err, errlen, "gathering the pipeline stages' descriptions: %s", zp_comm_error(t->run.pp_comm));
    free(all);
    return ZP_E_COMM;
  }
  if (t->rank == 0) {
    const zp_model_layout* L = &t->run.layout;
    int K = P * (int)zp_cfg_int(cfg, "pipeline.chunks"), G = L->n_groups;
    int* first = calloc((size_t)K + 1, sizeof(int));
    double* cost = calloc((size_t)G, sizeof(double));
    char** names = calloc((size_t)G, sizeof(char*));
    char* nb = calloc((size_t)G, 32);
    unsigned char* h = calloc((size_t)G, 1);
    if (first && cost && names && nb && h && !zp_pipe_held(cfg, 0, h, first, K + 1, err, errlen) &&
        !zp_pipeline_group_flops(L->s.L, L->s.C, t->run.T, L->s.Vp, cost, G)) {
      for (int g = 0; g < G; g++) {
        names[g] = nb + 32 * g;
        if (g == 0) snprintf(names[g], 32, "embed");
        else if (g == G - 1) snprintf(names[g], 32, "head");
        else snprintf(names[g], 32, "block.%d", g - 1);
      }
      const zc_value* v = zp_cfg_get(cfg, "pipeline.stages");
      printf("pipeline: %d stages x %d chunk(s), schedule %s, %lld micro-batches per step; split %s:\n", P,
             (int)zp_cfg_int(cfg, "pipeline.chunks"), zp_cfg_str(cfg, "pipeline.schedule"),
             (long long)zp_cfg_int(cfg, "pipeline.micro_batches"),
             v && v->list_len ? "from pipeline.stages" : "balanced by forward FLOPs");
      zp_pipeline_split_print(stdout, first, K, cost, L->group_numel, (const char* const*)names);
    }
    free(first);
    free(cost);
    free(names);
    free(nb);
    free(h);
    for (int d = 0; d < P; d++) fputs(all + (size_t)d * LINE, stdout);
    fflush(stdout);
  }
  free(all);
  return ZP_OK;
}

/* End of a pipeline run (rank 0): per stage the measured bubble over the timed steps (1 -
 * busy / wall from the executor's compute spans, the same spans the trace records), the
 * simulator's prediction with the measured op times, and the ideal (unit op times). */
static void pipeline_bubble_report(trainer* t) {
  const zp_pipe_bubble* pb = NULL;
  char e[256];
  if (t->rank != 0 || zp_pipe_bubble_get(t->pipe, &pb, e, sizeof e) || !pb) return;
  printf("pipeline bubble (1 - busy/wall per stage, mean over steps after the first; wall %.2f ms to REDUCE_GRADS):\n", pb->mean_wall_ms);
  printf("  %-6s %10s %10s %10s\n", "stage", "measured", "predicted", "ideal");
  for (int d = 0; d < pb->stages; d++)
    printf("  %-6d %10.4f %10.4f %10.4f\n", d, pb->mean_bubble[d], pb->pred_bubble[d], pb->ideal_bubble[d]);
  printf("  (predicted: the schedule simulated with the measured mean op times per virtual stage; ideal: unit op times)\n");
  fflush(stdout);
}

int zp_train(zp_config* cfg, zp_comm* comm, char* err, size_t errlen) {
  trainer tt;
  trainer* t = &tt;
  memset(t, 0, sizeof *t);
  t->cfg = cfg;
  t->comm = comm;
  int world = comm ? zp_comm_size(comm) : 1;
  t->rank = comm ? zp_comm_rank(comm) : 0;
  int pp = (int)zp_cfg_int(cfg, "parallel.pp"), tp = (int)zp_cfg_int(cfg, "parallel.tp");
  zp_layout lay;
  zp_layout_comms lc;
  memset(&lc, 0, sizeof lc);
  zp_schedule* sched = NULL;
  unsigned char* held = NULL;
  int rc = pipeline_setup(t, cfg, comm, world, &lay, &lc, &sched, &held, err, errlen);
  if (rc) return rc;
  int dp = lay.dp;
  t->dp = dp;
  /* SIGTERM/SIGUSR1 only set a flag from here on (also while resuming and after an error):
   * the launcher stops the other ranks with SIGTERM when one fails, and a rank must still get
   * to print its own message (e.g. which tensor of its checkpoint shard is damaged). The step
   * loop checks the flag; the handler stays installed until the process exits. */
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGUSR1, &sa, NULL);
  g_signal = 0;
  int T = (int)zp_cfg_int(cfg, "model.seq_len");
  int V = (int)zp_cfg_int(cfg, "model.vocab_size");
  char path[1024];
  zp_cfg_path(cfg, "data.train", path, sizeof path);
  if (!path[0]) {
    snprintf(err, errlen, "%s: data.train is empty: set it to token shards (see `zp data prepare`)", cfg->path);
    rc = ZP_E_INVALID;
    goto done;
  }
  uint64_t dseed = (uint64_t)zp_cfg_int(cfg, "data.seed");
  int shuffle = zp_cfg_bool(cfg, "data.shuffle");
  t->train = zp_dataset_open(path, T, V > 65536 ? 65536 : V, dseed, shuffle, err, errlen);
  if (!t->train) { rc = ZP_E_INVALID; goto done; }
  zp_cfg_path(cfg, "data.val", path, sizeof path);
  if (path[0]) {
    t->val = zp_dataset_open(path, T, V > 65536 ? 65536 : V, dseed + 1, 0, err, errlen);
    if (!t->val) { rc = ZP_E_INVALID; goto done; }
  }
  if ((rc = setup_lua(cfg, &t->lua, err, errlen))) goto done;
  snprintf(t->out_dir, sizeof t->out_dir, "%s", zp_cfg_str(cfg, "train.out_dir"));
  if (mkdir_p(t->out_dir)) {
    snprintf(err, errlen, "train.out_dir = \"%s\": cannot create: %s", t->out_dir, strerror(errno));
    rc = ZP_E_IO;
    goto done;
  }
  zp_run_opts ro = {0};
  /* the layout's dp and tp communicators (layout.h) go to the run as they are (it does not
   * split again) */
  ro.comm = t->dpc;
  ro.world = dp;
  ro.rank = t->dpr;
  ro.tp_comm = tp > 1 ? lc.tp : NULL;
  ro.held = held;
  ro.pp_comm = pp > 1 ? lc.pp : NULL;
  ro.no_acts = pp > 1; /* the pipeline executor allocates activations per in-flight micro-batch */
  if ((rc = zp_run_open(&t->run, cfg, &ro))) {
    snprintf(err, errlen, "%s", t->run.err);
    goto done;
  }
  zp_run* r = &t->run;
  t->dpr = r->rank; /* the run's comm is the layout's data-parallel one */
  t->dpc = r->comm;
  int B = r->B, accum = r->accum;
  if (pp > 1) {
    if ((rc = zp_pipe_open(r, cfg, &lay, lc.pp, sched, &t->pipe, err, errlen))) goto done;
    accum = zp_schedule_micro_batches(sched);
  }
  t->inp = malloc((size_t)B * T * sizeof(int32_t));
  t->tgt = malloc((size_t)B * T * sizeof(int32_t));
  int64_t steps = zp_cfg_int(cfg, "train.steps");
  uint64_t gb = (uint64_t)B * (uint64_t)accum * (uint64_t)dp;
  if (t->rank == 0) {
    printf("zp train: %s on %s, %d rank%s (dp %d", cfg->path[0] ? cfg->path : "(defaults)", r->binfo.device_name ? r->binfo.device_name : "?",
           world, world > 1 ? "s" : "", dp);
    if (pp > 1) printf(" x pp %d", pp);
    if (tp > 1) printf(" x tp %d", tp);
    printf("), strategy %s\n", zp_cfg_str(cfg, "zero.plugin"));
    printf("data: %llu tokens in %d shard(s), %llu samples of %d tokens; global batch %llu sequences (%llu tokens) per step\n",
           (unsigned long long)zp_dataset_num_tokens(t->train), zp_dataset_num_shards(t->train),
           (unsigned long long)zp_dataset_num_samples(t->train), T, (unsigned long long)gb, (unsigned long long)gb * T);
    zp_run_print_plan(r, stdout);
    if (r->overlap && strcmp(zp_cfg_str(cfg, "train.device"), "cpu") != 0) /* (the cpu backend's side work is deferred, not concurrent) */
      printf("optimizer: AdamW on the backend's side stream, finishing beside the next forward (train.overlap_optimizer)\n");
    if (r->grad_overwrite) {
      int n = 0;
      for (int g = 0; g < r->layout.n_groups; g++) n += r->groups[g].grad_once;
      printf("gradients: %d of %d groups written by the step's first backward, not zeroed first (train.grad_overwrite)\n", n,
             r->layout.n_groups);
    }
  }
  if (t->pipe && (rc = pipeline_print(t, cfg, &lay, err, errlen))) goto done;
  /* weights: resume (ckpt.fallback: an older complete checkpoint when the newest is
   * corrupt), else train.init_from (safetensors), else the counter-based init */
  int64_t start = 0;
  uint64_t data0 = 0; /* data position of step `start` (the checkpoint's: the global batch may differ) */
  char ck[1024] = "";
  ck_scope cs;
  ck_enter(t, &cs);
  if (strcmp(zp_cfg_str(cfg, "train.resume"), "auto") == 0 &&
      (rc = zp_ckpt_resume(r, t->out_dir, zp_cfg_bool(cfg, "ckpt.fallback"), ck, sizeof ck, &start, &data0, err, errlen))) {
    ck_leave(t, &cs);
    goto done;
  }
  ck_leave(t, &cs);
  if (ck[0]) {
    tlog(t, "resumed from %s at step %lld\n", ck, (long long)start);
    if (data0 != (uint64_t)start * gb)
      tlog(t, "note: the checkpoint's data position %llu is not step %lld x global batch %llu: the data continues from the checkpoint's position\n",
           (unsigned long long)data0, (long long)start, (unsigned long long)gb);
    if ((rc = zp_run_zero_grads(r))) goto done;
  } else {
    if ((rc = zp_run_init_weights(r))) { snprintf(err, errlen, "%s", r->err); goto done; }
    char ip[1024];
    zp_cfg_path(cfg, "train.init_from", ip, sizeof ip);
    if (ip[0]) {
      ck_enter(t, &cs);
      rc = zp_st_init_run(r, ip, stdout, err, errlen);
      ck_leave(t, &cs);
      if (rc) goto done;
      tlog(t, "initial weights from %s (train.init_from)\n", ip);
    }
  }
  if (t->pipe && (rc = zp_pipe_sync_tied(t->pipe, err, errlen))) goto done; /* the last stage's wte copy */
  ck_enter(t, &cs);
  rc = zp_ckpt_saver_open(r, t->out_dir, (int)zp_cfg_int(cfg, "train.keep_checkpoints"), zp_cfg_bool(cfg, "ckpt.async"),
                          zp_cfg_float(cfg, "comm.timeout_s"), &t->saver, err, errlen);
  ck_leave(t, &cs);
  if (rc) goto done;
  if (zp_cfg_bool(cfg, "train.metrics") && t->rank == 0) {
    char mp[1100];
    snprintf(mp, sizeof mp, "%s/metrics.jsonl", t->out_dir);
    t->metrics = fopen(mp, start > 0 ? "a" : "w");
    if (!t->metrics) {
      snprintf(err, errlen, "%s: cannot write metrics: %s", mp, strerror(errno));
      rc = ZP_E_IO;
      goto done;
    }
  }
  if (zp_cfg_bool(cfg, "train.trace")) zp_trace_enable(t->rank, 1u << 20);
  double fpt = zp_model_flops_per_token(&r->layout, T);
  int log_every = (int)zp_cfg_int(cfg, "train.log_every"), val_every = (int)zp_cfg_int(cfg, "train.val_every");
  int64_t ck_every = zp_cfg_int(cfg, "train.checkpoint_every");
  double first_loss = NAN, last_loss = NAN, sum_ms = 0;
  int timed = 0;
  long long allocs_before = -1;
  int stopped_by = 0;
  double lr_override = -1;
  int64_t step;
  const int profile = zp_cfg_bool(cfg, "train.profile_ops");
  for (step = start; step < steps; step++) {
    double t0 = zp_now_us();
    zp_op_profile_enable(1); /* (no-op without train.profile_ops) only the step's ops count */
    double lr;
    if ((rc = lr_at(&t->lua, step, steps, &lr, err, errlen))) goto done;
    if (lr_override >= 0) lr = lr_override;
    maybe_fault(step + 1, t->rank);
    if ((rc = zp_run_zero_grads(r))) goto fail_run;
    double loss = 0;
    if (t->pipe) {
      t->step_pos = data0 + (uint64_t)(step - start) * gb;
      if ((rc = zp_pipe_step(t->pipe, (float)lr, pipe_load, t, &loss, err, errlen))) goto done;
    }
    for (int m = 0; !t->pipe && m < accum; m++) {
      uint64_t pos = data0 + (uint64_t)(step - start) * gb + ((uint64_t)m * dp + (uint64_t)t->dpr) * (uint64_t)B;
      double td = zp_now_us();
      if ((rc = fetch(t, t->train, pos, err, errlen))) goto done;
      zp_trace_span(ZP_TR_IO, "data", m, td);
      double l;
      r->host.micro_batch = m;
      r->host.micro_batches = accum;
      if ((rc = zp_run_micro_batch(r, t->inp, t->tgt, 1.0f / ((float)B * (float)T * (float)accum), &l))) goto fail_run;
      loss += l / accum;
    }
    zp_crashpoint("mid_step", t->rank); /* crash tests: ZP_CRASH_AT=mid_step[:n][@rank] */
    double ts = zp_now_us();
    if (!t->pipe && (rc = zp_run_step(r, (float)lr))) goto fail_run; /* the pipeline ran its STEP */
    /* the op profile reads every op's timestamps here, so the optimizer update on the side
     * stream (train.overlap_optimizer) must be done too: a profiled step ends with its update,
     * as without the overlap (the update is then timed whole, not hidden) */
    if (profile && (rc = zp_run_wait_updates(r))) goto fail_run;
    r->ops->synchronize(r->be);
    zp_op_profile_enable(0);
    if (!t->pipe) zp_trace_span(ZP_TR_COMPUTE, "optimizer step", (int)step, ts);
    loss = allreduce_mean(t, loss);
    const zp_pipe_bubble* pb = NULL; /* pipeline: measured and predicted bubble per stage */
    if (t->pipe && (rc = zp_pipe_bubble_get(t->pipe, &pb, err, errlen))) goto done;
    double ms = (zp_now_us() - t0) / 1000.0;
    zp_trace_span(ZP_TR_STEP, "step", (int)step, t0);
    if (step == start) first_loss = loss;
    last_loss = loss;
    if (step > start) { sum_ms += ms; timed++; }
    if (step == start && zp_cfg_bool(cfg, "train.profile_ops")) zp_op_profile_reset(); /* the first step warms up */
    if (allocs_before < 0) allocs_before = r->ledger.n_allocs;
    double tok_s = (double)gb * T / (ms / 1000.0);
    double mfu = r->binfo.peak_flops > 0 ? fpt * tok_s / (r->binfo.peak_flops * world) : 0;
    if (!isfinite(loss)) {
      snprintf(err, errlen, "loss is %g at step %lld: the run diverged", loss, (long long)step + 1);
      rc = ZP_E_INVALID;
      goto done;
    }
    double vl = NAN;
    int do_val = t->val && val_every > 0 && ((step + 1) % val_every == 0);
    if (do_val && (rc = validate(t, &vl, err, errlen))) goto done;
    if (t->rank == 0 && ((step + 1) % log_every == 0 || step + 1 == steps || do_val)) {
      char mem[256];
      zp_ledger_line(&r->ledger, mem, sizeof mem);
      printf("step %5lld/%lld | loss %.4f | lr %.3e | norm %.3f | %.1f ms | %.0f tok/s", (long long)step + 1, (long long)steps, loss,
             lr, r->opt.grad_norm, ms, tok_s);
      if (mfu > 0) printf(" | MFU %.1f%%", 100 * mfu);
      if (do_val) printf(" | val %.4f", vl);
      if (r->binfo.mem_total) {
        zp_backend_info bi;
        memset(&bi, 0, sizeof bi);
        bi.struct_size = sizeof bi;
        r->ops->info(r->be, &bi);
        printf(" | %s | device used %.2f GiB\n", mem, (double)(bi.mem_total - bi.mem_free) / (1u << 30));
      } else printf(" | %s\n", mem);
      fflush(stdout);
    }
    if (t->metrics) {
      fprintf(t->metrics, "{\"step\":%lld,\"loss\":%.6f,\"lr\":%.6e,\"grad_norm\":%.6f,\"ms\":%.3f,\"tok_s\":%.1f,\"mfu\":%.4f",
              (long long)step + 1, loss, lr, r->opt.grad_norm, ms, tok_s, mfu);
      if (do_val) fprintf(t->metrics, ",\"val_loss\":%.6f", vl);
      if (pb) {
        fprintf(t->metrics, ",\"pipeline\":{\"wall_ms\":%.3f", pb->step_wall_ms);
        const char* keys[3] = {"bubble", "bubble_mean", "bubble_pred"};
        const double* vals[3] = {pb->step_bubble, pb->mean_bubble, pb->pred_bubble};
        for (int k = 0; k < 3; k++) {
          fprintf(t->metrics, ",\"%s\":[", keys[k]);
          for (int d = 0; d < pb->stages; d++) fprintf(t->metrics, "%s%.4f", d ? "," : "", vals[k][d]);
          fprintf(t->metrics, "]");
        }
        fprintf(t->metrics, "}");
      }
      fprintf(t->metrics, ",\"mem\":{");
      for (int c = 0; c < ZP_CAT_COUNT; c++)
        fprintf(t->metrics, "%s\"%s\":%lld", c ? "," : "", zp_category_name((zp_category)c), r->ledger.cur[c][0] + r->ledger.cur[c][1]);
      long long dev_used = 0;
      if (r->binfo.mem_total) {
        zp_backend_info bi;
        memset(&bi, 0, sizeof bi);
        bi.struct_size = sizeof bi;
        r->ops->info(r->be, &bi);
        dev_used = (long long)(bi.mem_total - bi.mem_free);
      }
      fprintf(t->metrics, "},\"tiers\":{");
      for (int ti = 0; ti < ZP_TIER_COUNT; ti++) {
        fprintf(t->metrics, "%s\"%s\":{", ti ? "," : "", zp_tier_name((zp_tier)ti));
        for (int c = 0; c < ZP_CAT_COUNT; c++)
          fprintf(t->metrics, "%s\"%s\":%lld", c ? "," : "", zp_category_name((zp_category)c), r->ledger.cur[c][ti]);
        fprintf(t->metrics, ",\"io_read\":%llu,\"io_write\":%llu,\"io_ops\":%llu}", r->ledger.io_bytes[ti][0],
                r->ledger.io_bytes[ti][1], r->ledger.io_ops[ti][0] + r->ledger.io_ops[ti][1]);
      }
      fprintf(t->metrics, "},\"peak_gpu\":%lld,\"device_used\":%lld}\n", r->ledger.tier_peak[ZP_TIER_GPU], dev_used);
      fflush(t->metrics);
    }
    /* hooks and signals: rank 0 decides, everyone follows */
    double flags[3] = {0, 0, -1}; /* stop, save, lr */
    if (t->lua.has_hook && t->rank == 0) {
      hook_result hr;
      if ((rc = call_hook(&t->lua, step + 1, loss, lr, r->opt.grad_norm, ms, &hr, err, errlen))) goto done;
      flags[0] = hr.stop;
      flags[1] = hr.save;
      flags[2] = hr.lr_override;
    }
    double sig = g_signal ? 1 : 0;
    if (t->comm && world > 1) {
      if (zp_comm_broadcast(t->comm, flags, 3, ZP_F64, 0) || zp_comm_allreduce(t->comm, &sig, 1, ZP_F64, ZP_RED_MAX)) {
        snprintf(err, errlen, "%s", zp_comm_error(t->comm));
        rc = ZP_E_COMM;
        goto done;
      }
    }
    if (flags[2] >= 0) lr_override = flags[2];
    int final = step + 1 == steps;
    int want_save = (ck_every > 0 && (step + 1) % ck_every == 0) || flags[1] > 0 || sig > 0 || flags[0] > 0;
    if (want_save && !(final && zp_cfg_bool(cfg, "train.save_final"))) {
      if ((rc = save_ckpt(t, step + 1, data0 + (uint64_t)(step + 1 - start) * gb, sig > 0 || flags[0] > 0 || final, err, errlen))) goto done;
    }
    if (sig > 0) { stopped_by = 1; step++; break; }
    if (flags[0] > 0) { stopped_by = 2; step++; break; }
  }
  if (step == steps && steps > start && zp_cfg_bool(cfg, "train.save_final")) {
    if ((rc = save_ckpt(t, step, data0 + (uint64_t)(step - start) * gb, 1, err, errlen))) goto done;
  }
  ck_enter(t, &cs);
  rc = zp_ckpt_saver_wait(t->saver, r, err, errlen); /* an asynchronous save still in flight */
  ck_leave(t, &cs);
  if (rc) goto done;
  if (t->val && steps > start && !stopped_by) {
    double vl;
    if ((rc = validate(t, &vl, err, errlen))) goto done;
    tlog(t, "val loss %.4f\n", vl);
    if (t->metrics) fprintf(t->metrics, "{\"step\":%lld,\"val_loss\":%.6f}\n", (long long)step, vl);
  }
  if (t->rank == 0) {
    if (stopped_by == 1) printf("stopped by signal %d after step %lld (checkpoint saved; run again to resume)\n", (int)g_signal, (long long)step);
    if (stopped_by == 2) printf("stopped by on_step hook after step %lld\n", (long long)step);
    if (steps > start)
      printf("summary: steps %lld..%lld, loss %.4f -> %.4f, mean %.1f ms/step, %.0f tok/s, allocations inside steps: %lld\n",
             (long long)start + 1, (long long)step, first_loss, last_loss, timed ? sum_ms / timed : 0,
             timed ? (double)gb * T / (sum_ms / timed / 1000.0) : 0, r->ledger.n_allocs - (allocs_before < 0 ? r->ledger.n_allocs : allocs_before));
    if (r->norm && zp_norm_asked(r))
      printf("gradient norm: %llu of %llu sums of squares started beside the backward (train.overlap_norm)\n",
             (unsigned long long)zp_norm_hits(r), (unsigned long long)zp_norm_asked(r));
    zp_ledger_print(&r->ledger, stdout, "memory at end");
    if (zp_cfg_bool(cfg, "train.profile_ops") && timed) zp_op_profile_print(stdout, timed, sum_ms / timed, r->binfo.peak_flops);
  }
  if (t->pipe && steps > start) pipeline_bubble_report(t);
  if (zp_trace_enabled()) {
    char tp_[1100];
    snprintf(tp_, sizeof tp_, "%s/trace_rank%d.json", t->out_dir, t->rank);
    if (zp_trace_write(tp_)) fprintf(stderr, "zp: cannot write %s\n", tp_);
    else tlog(t, "trace: %s\n", tp_);
    zp_trace_disable();
  }
  rc = ZP_OK;
  goto done;
fail_run:
  snprintf(err, errlen, "%s", t->run.err[0] ? t->run.err : "training step failed");
done:
  {
    ck_scope cs2;
    ck_enter(t, &cs2);
    zp_ckpt_saver_close(t->saver, &t->run);
    ck_leave(t, &cs2);
  }
  if (t->metrics) fclose(t->metrics);
  free(t->inp);
  free(t->tgt);
  zp_run_close(&t->run);
  if (t->lua.L) zp_lua_free(t->lua.L);
  if (t->train) zp_dataset_close(t->train);
  if (t->val) zp_dataset_close(t->val);
  zp_pipe_close(t->pipe);
  zp_schedule_free(sched);
  free(held);
  zp_layout_comms_free(&lc);
  return rc;
}
