/* pipeline_exec.h: the pipeline-parallel executor. One device stage (a zp_run holding only
 * its groups) runs its instruction list of a validated schedule (core/schedule.h) each step:
 * LOAD, FWD, BWD / BWD_INPUT / BWD_WEIGHT, SEND_/RECV_ ACT/GRAD over the pipeline
 * communicator, REDUCE_GRADS, STEP. docs/schedules.md "Running a schedule" has the long form.
 *
 * Why in the core and not in plugins/pipeline: the executor drives the model's per-group
 * forward and backward with per-micro-batch activation slots and the runtime's parameter and
 * gradient views; none of that is (or should be) part of the plugin ABI. The `pipeline` plugin
 * stays a registration entry; parallel.pp > 1 runs this executor.
 *
 * Invariants:
 * - Stage k holds only its groups: the zp_run was opened with held[] (zp_pipe_held), so the
 *   strategy (none, stage1, stage2 over the data-parallel communicator) sees the other groups
 *   as empty. The head's tied wte is a copy on the last stage: its gradient is reduced into
 *   the first stage's at REDUCE_GRADS (the last stage sends its part, the first adds it: the
 *   sum first + last, as a two-rank all-reduce in rank order), only the first stage's
 *   optimizer updates wte, and after STEP the first stage sends the new values to the last, so
 *   both copies are identical by construction.
 * - Gradients accumulate over the step's micro-batches in each group's full (unsharded)
 *   accumulator in the order the schedule runs the backwards; the strategy's hooks run once per
 *   step at REDUCE_GRADS (pre_backward, the accumulated gradient into its view, grads_ready),
 *   so stages 1 and 2 reduce over dp once per step.
 * - Loss: every micro-batch's backward is seeded with 1 / (B T M), and the step's loss is
 *   sum over micro-batches (in order) of mean-loss / M: the arithmetic of a single-rank run with
 *   grad_accum = M.
 * - Activation memory: zp_schedule_buffers(stage) slots, each as large as the largest chunk's
 *   saved activations plus the residual gradient (ledger ACT); no allocation inside a step.
 * - Tensor parallelism (r->tp.size > 1): the held groups are tp-sliced and run through the tp
 *   forward/backward (model_tp.h); the residual stream, its gradient and the loss are whole and
 *   identical on a stage's tp ranks, and every transfer (activations, the tied wte slice and
 *   its gradient) pairs the same tp rank of two stages (pp is the communicator of one (dp_i,
 *   tp_i)). Split-backward schedules are refused with tp.
 * - Nothing aborts; errors name the stage and instruction.
 */
#ifndef ZP_PIPELINE_EXEC_H
#define ZP_PIPELINE_EXEC_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "layout.h"
#include "runtime.h"
#include "schedule.h"

typedef struct zp_pipe zp_pipe;

/* Which groups device stage pp_i holds (held[n_groups]) and the split (first[pp*chunks + 1]:
 * virtual stage k holds groups first[k] .. first[k+1]-1), from pipeline.stages or balanced by
 * FLOPs. */
int zp_pipe_held(const zp_config* cfg, int pp_i, unsigned char* held, int* first, int n_first, char* err, size_t errlen);

/* Reads micro-batch mb of the current step into host arrays [B*T]. */
typedef int (*zp_pipe_load_fn)(void* ctx, int mb, int32_t* inputs, int32_t* targets, char* err, size_t errlen);

/* r: this stage's run (opened with held from zp_pipe_held, communicator = the dp one);
 * pp: the pipeline communicator (rank = device stage); s: the validated schedule (borrowed,
 * must outlive the executor). Allocates slots and accumulators through r's ledger. On a dry
 * run pp may be NULL (zp plan): the ledger then counts what the stage would allocate. */
int zp_pipe_open(zp_run* r, const zp_config* cfg, const zp_layout* lay, zp_comm* pp, const zp_schedule* s,
                 zp_pipe** out, char* err, size_t errlen);
void zp_pipe_close(zp_pipe* p);

/* After the weights are initialised or loaded: the last stage's wte copy from the first. */
int zp_pipe_sync_tied(zp_pipe* p, char* err, size_t errlen);

/* One training step. loss_out: the step's loss (the same value on every stage of the pipe). */
int zp_pipe_step(zp_pipe* p, float lr, zp_pipe_load_fn load, void* ctx, double* loss_out, char* err, size_t errlen);

/* Forward only (validation): inputs are read on the first stage, targets on the last; the mean
 * loss comes back on every stage. */
int zp_pipe_forward(zp_pipe* p, const int32_t* inputs, const int32_t* targets, double* loss_out, char* err, size_t errlen);

/* Bubble of the last step and of all steps so far (except the first, the warm-up), per device
 * stage (arrays of pp entries, valid on every stage): measured 1 - busy / wall, where busy is
 * the stage's time in FWD/BWD/BWD_INPUT/BWD_WEIGHT and wall the pipeline's span (the slowest
 * stage's time from the step's start to its REDUCE_GRADS); and the simulator's prediction for
 * the same schedule with the measured mean op times per virtual stage. Collective over pp. */
typedef struct {
  int stages;
  double* step_bubble;  /* [stages] last step */
  double* mean_bubble;  /* [stages] over steps 2.. (the last step when only one) */
  double* pred_bubble;  /* [stages] simulator, measured op times (mean over steps 2..) */
  double* ideal_bubble; /* [stages] simulator, unit op times (fwd 1, bwd_input 1, bwd_weight 1) */
  double step_wall_ms, mean_wall_ms;
} zp_pipe_bubble;
int zp_pipe_bubble_get(zp_pipe* p, const zp_pipe_bubble** out, char* err, size_t errlen);

/* "stage 0: groups embed .. block.1, 3 buffers (peak 2) ..." lines for the run's start. */
void zp_pipe_print(const zp_pipe* p, FILE* f);
#endif
