/* runtime.h: one training (or planning) run on one rank: backend, plugins, placement plan,
 * group buffers, views, activations, optimizer state, communicator.
 *
 * Invariants:
 * - zp_run_open performs every allocation a run makes, in the same order, whether dry_run is
 *   set (`zp plan`: counted by the ledger, nothing touched) or not. No allocation happens
 *   inside a step (the ledger's n_allocs does not move; tests check it).
 * - The training loop never asks which ZeRO stage it runs: it calls the strategy's hooks
 *   (the built-in "none" strategy, plain data parallelism, goes through the same table).
 * - Parameters the model reads and gradients it writes go through views (zp_views) that the
 *   strategy sets; when PARAM/GRAD dtype differs from the compute dtype (bf16 storage on the
 *   CPU backend) the runtime casts into per-group compute copies around each group.
 */
#ifndef ZP_RUNTIME_H
#define ZP_RUNTIME_H
#include "comm_async.h"
#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "ledger.h"
#include "model.h"
#include "model_tp.h"
#include "plugin.h"
#include "zp/zp_plugin.h"

struct zp_lua;
struct zp_dataset;

typedef struct zp_group_rt {
  zp_group_info info;
  void* view[2];          /* PARAM, GRAD as set by the strategy (storage dtype) */
  void* ccopy_param;      /* compute-dtype copy when PARAM dtype != compute dtype */
  void* ccopy_grad;       /* compute-dtype grad scratch when GRAD dtype != compute dtype */
  size_t ccopy_bytes[2];  /* what the ledger counted for the two above (0 = none) */
  /* optimizer overlap (train.overlap_optimizer): the side-stream ticket of this group's last
   * device AdamW, not yet waited for by the compute stream (0: none), and whether its GRAD
   * buffer still has to be zeroed for the next step (done at the fence, not by zero_grads) */
  uint64_t opt_ticket;
  int zero_pending;
  /* train.grad_overwrite (ABI 1.8 grad_overwrite): grad_once: the model's backward of this group
   * writes each of its parameter gradients exactly once and no other group's, and no group is
   * tied to it (fixed at open); grad_zeroed: its GRAD buffer was zeroed once, so its padding is
   * zero for good; grad_stale: the buffer is logically zero but still holds old values, which
   * the group's first backward of the step overwrites (zp_run_grads_materialize zeroes it
   * instead for anything else that reads or accumulates into it first) */
  int grad_once, grad_zeroed, grad_stale;
} zp_group_rt;

typedef struct zp_optim_state {
  int step_t;             /* optimizer steps taken (Adam bias correction) */
  float lr;               /* lr of the current step */
  float clip_scale;       /* grad scale applied this step (1/accum folded into dloss) */
  double grad_norm;
  int began;              /* optim_begin ran in the current step (step_t counts it) */
} zp_optim_state;

typedef struct zp_run {
  zp_config* cfg;
  int dry_run;
  int rank, world;        /* data-parallel rank and size */
  zp_model_layout layout;
  zp_plan plan;
  zp_group_plan* gplans;
  zp_group_rt* groups;
  void* arena[ZP_CAT_COUNT][ZP_TIER_COUNT]; /* model-state arenas (groups at offsets) */
  size_t arena_bytes[ZP_CAT_COUNT][ZP_TIER_COUNT];
  zp_ledger ledger;
  /* backend */
  const zp_backend_ops* ops;
  zp_backend* be;
  zp_plugin backend_plugin;
  zp_backend_info binfo;
  zp_dtype ct, param_dt, grad_dt;
  /* strategy */
  zp_plugin strategy_plugin;     /* empty for the built-in "none" */
  const zp_strategy_ops* strategy;
  void* strategy_state;
  zp_plugin tier_plugins[2];     /* optimizer, param offload */
  const zp_tier_ops* tier_ops[2];
  void* tier_state[2];
  uint64_t* piece_end;           /* optimizer-service scratch: tensor pieces of a range */
  unsigned char* piece_decay;
  uint64_t* piece_rel;           /* the same pieces' ends relative to the range (adamw_pieces) */
  float* piece_wd;               /* and their weight decay */
  zp_host host;                  /* the table handed to plugins */
  struct zp_host_ctx* hctx;
  /* communication (NULL for world 1): comm is the host (control) communicator; dcomm the
   * device one where the backend provides it (NCCL), else comm carries the data too */
  zp_comm* comm;
  zp_comm* dcomm;
  /* compute */
  zp_views views;
  void** vparam;
  void** vgrad;
  zp_acts acts;
  int B, T, accum;
  zp_optim_state opt;
  int in_step;            /* inside zp_run_step (gradients final: shard_ready is forwarded) */
  int overlap;            /* device AdamW on the backend's side stream (optimizer overlap) */
  int grad_overwrite;     /* train.grad_overwrite and a backend with grad_overwrite (1.8) */
  struct zp_norm_pre* norm; /* train.overlap_norm: norm sums started during the backward (norm_overlap.c) */
  zp_ar_queue arq;        /* allreduce_start / wait_started (1.9) on the data communicator (comm_async.c) */
  char err[2048];
  /* pipeline parallelism (core/pipeline_exec.c): held[g] = 0 for groups another stage holds
   * (no buffers, zero sizes in group_info: strategies see empty groups); pp_comm sums the
   * gradient norm over the stages. Both NULL without pipeline parallelism. */
  unsigned char* held;
  zp_comm* pp_comm;
  /* tensor parallelism (core/runtime_tp.c; tp.size <= 1: off). With tp, comm is the
   * data-parallel communicator split from tp_world, and rank/world are data-parallel. */
  zp_tp tp;
  zp_comm* tp_world;             /* the world communicator handed to zp_run_open (NULL when
                                  * the tp and dp communicators were handed in: opts.tp_comm) */
  int tp_borrowed;               /* tp.comm and comm belong to the caller (opts.tp_comm) */
  zp_plugin tp_plugin;           /* the `tensor` parallel plugin (validates the split) */
  void* tp_state;
} zp_run;

typedef struct {
  int dry_run;
  int world;              /* dry run: pretend world size; else from the communicator */
  int rank;
  zp_comm* comm;          /* NULL = single rank */
  int B, T;               /* activation shape; 0 = from config */
  int no_acts;            /* skip activations (checkpoint tools) */
  /* pipeline stage: held[g] != 0 for the groups this rank holds (NULL = all); copied */
  const unsigned char* held;
  zp_comm* pp_comm;       /* pipeline communicator (norm over stages), or NULL */
  /* tensor parallelism with communicators made by the caller (pipeline x tensor parallelism:
   * core/layout.h): comm is then the data-parallel one and tp_comm the tensor-parallel one
   * (rank = tp_i); both borrowed. NULL: zp_run_open splits comm itself (runtime_tp.c). */
  zp_comm* tp_comm;
} zp_run_opts;

int zp_run_open(zp_run* r, zp_config* cfg, const zp_run_opts* o);
void zp_run_close(zp_run* r);
/* Initialise weights (counter-based) into the placement's PARAM and MASTER buffers. */
int zp_run_init_weights(zp_run* r);
/* One micro-batch: forward + backward of all groups through the hooks. inputs/targets are
 * host arrays [B*T]. loss_out: mean loss of this micro-batch on this rank. */
int zp_run_micro_batch(zp_run* r, const int32_t* inputs, const int32_t* targets, float dloss,
                       double* loss_out);
/* Forward only (validation / sampling): loss over the batch (targets may contain -1). */
int zp_run_forward(zp_run* r, const int32_t* inputs, const int32_t* targets, double* loss_out);
/* Point the model's PARAM view of group g at the compute-dtype parameters (casting from the
 * storage dtype where they differ), as the micro-batch does before a group's compute. */
int zp_run_param_view(zp_run* r, int g);
/* The optimizer step through the strategy (reduction, clipping, AdamW, gathers, zero grads). */
int zp_run_step(zp_run* r, float lr);
/* Zero the gradient accumulators (start of a step). */
int zp_run_zero_grads(zp_run* r);
/* train.grad_overwrite: zero every GRAD buffer that is still stale (logically zero, physically
 * old values) now; anything other than the micro-batch's backward that reads or accumulates
 * into gradients calls this first (zp_run_step does) */
int zp_run_grads_materialize(zp_run* r);
/* optimizer overlap: later compute-stream work waits for every group's side-stream update (the
 * gradients stay pending: zeroed at each group's fence as usual); for the op profile */
int zp_run_wait_updates(zp_run* r);
/* optimizer overlap (train.overlap_optimizer): make later compute-stream work wait for group g's
 * side-stream update (and zero its gradient for the next step); _all: every group. No-ops when
 * the overlap is off. param_view (every compute access to a group) and the state reads call them. */
int zp_run_fence(zp_run* r, int g);
int zp_run_fence_all(zp_run* r);
/* the model's forward of group g on activations a: the tensor-parallel form when parallel.tp > 1
 * (the training step, its recompute, and the pipeline executor all go through here) */
int zp_run_forward_group(zp_run* r, zp_acts* a, int g, float dloss);
/* Copy a full group parameter (fp32 values of the master copy where present, else PARAM) to
 * host fp32 memory: used by tests and checkpoint export. Gathers shards (collective). */
int zp_run_get_group_params(zp_run* r, int g, float* host_out);
/* Tier-aware access to this rank's holding of (group, cat): device memory through the
 * backend, host memory directly, tier-owned storage (nvme) through the tier plugin.
 * off and bytes are byte offsets inside the holding. */
/* Settle tiers that update in the background (offload.optimizer.delayed_update): pending
 * parameter updates reach the device and replicated parameters are re-gathered. Collective.
 * Called before checkpoints, validation and at the end of training. */
int zp_run_flush(zp_run* r);
int zp_run_state_get(zp_run* r, int g, zp_category cat, uint64_t off, void* host, size_t bytes);
int zp_run_state_put(zp_run* r, int g, zp_category cat, uint64_t off, const void* host, size_t bytes);
/* Print the plan table: per group placements and the ledger. */
void zp_run_print_plan(zp_run* r, FILE* f);

/* ---- tensor parallelism (core/runtime_tp.c), called by runtime.c ---- */
/* Split the world into data-parallel and tensor-parallel communicators (rank = dp_i * tp +
 * tp_i; collective over world) and make the data-parallel one the run's comm. The layout
 * module of pipeline parallelism is expected to replace this split. */
int zp_run_tp_comms(zp_run* r, zp_comm* world, int tp);
/* Re-lay r->layout as this tp rank's slices (after zp_model_layout_init). */
int zp_run_tp_layout(zp_run* r);
/* After the backend exists: check its tp ops, open the `tensor` plugin (validation), make the
 * tp device communicator, vocabulary slice, scratch. */
int zp_run_tp_open(zp_run* r);
void zp_run_tp_close(zp_run* r);
/* Gradient-norm pieces with tp: sum of squares of n gradient elements at x (inside a group's
 * GRAD holding) counting the tp-whole tensors on tp rank 0 only; the total over tp ranks. */
int zp_run_tp_sumsq(zp_run* r, const void* x, zp_dtype dt, size_t n, double* out);
int zp_run_tp_norm_total(zp_run* r, double* sumsq);
/* Collective over the world: group g's parameters as the global tensors (fp32, the
 * single-rank layout zp_model_layout_init gives, zp_group_padded(global, g, 1) elements). */
int zp_run_tp_get_global_params(zp_run* r, const zp_model_layout* global, int g, float* out);
/* Collective over the world: (g, cat) (sub 1: Adam v of OPTIM) as global tensors, doubles. */
int zp_run_tp_gather_global(zp_run* r, const zp_model_layout* global, int g, zp_category cat, int sub, double* out);
/* Local: this tp rank's slices of group g (its layout order, info.padded floats) from the
 * global group buffer. */
void zp_run_tp_slice_global(const zp_run* r, const zp_model_layout* global, int g, const float* gbuf, float* local);
const char* zp_dtype_name(zp_dtype t);
#endif
