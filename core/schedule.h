/* schedule.h: pipeline schedules (Lua scripts -> per-stage instruction lists), the validator
 * that simulates every stage together before any compute, the timing simulator that predicts
 * per-stage bubbles, and stage balancing by FLOPs (pipeline_balance.c).
 *
 * Vocabulary (docs/schedules.md has the long form):
 * - P device stages (parallel.pp), V chunks per device (pipeline.chunks, interleaved
 *   schedules), M micro-batches per step. Virtual stage k = chunk * P + stage hosts the k-th
 *   contiguous slice of the model's groups; K = P * V virtual stages. Activations flow from
 *   virtual stage k to k + 1 (so the last device's chunk c feeds device 0's chunk c + 1),
 *   gradients from k + 1 to k. A "unit" is one (micro-batch, chunk) on one device.
 * - Each device runs its own ordered instruction list. Buffers (`buf`) are the device's
 *   activation slots: a slot holds one unit from its RECV_ACT (or its FWD on virtual stage 0)
 *   until that unit's backward is complete and its input gradient is sent. The executor
 *   allocates zp_schedule_buffers(s) slots per device.
 *
 * Invariants:
 * - A zp_schedule only exists with every field of every instruction checked (op known,
 *   mb / chunk / buf in range, sends and receives with a peer on both sides), so consumers
 *   never re-check fields. Semantic checks (pairing, deadlock, order, buffers) are
 *   zp_schedule_validate's; zp_schedule_simulate applies the same checks.
 * - Instruction numbers in messages are 1-based ("instruction #4" is the list's 4th entry,
 *   as the Lua list index); arrays in C are 0-based.
 * - Nothing here aborts or exits; every function returning int returns ZP_OK (0) or a
 *   ZP_E_* status with a NUL-terminated message in err (err may be NULL / errlen 0).
 * - No global mutable state: each load uses its own sandboxed Lua state (core/lua_host.h).
 */
#ifndef ZP_SCHEDULE_H
#define ZP_SCHEDULE_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum {
  ZP_SOP_LOAD = 0,     /* mb: load micro-batch mb's tokens and targets (devices 0 and P-1 only) */
  ZP_SOP_FWD,          /* mb, chunk, buf: forward of the chunk; reads buf's input (RECV_ACT or LOAD) */
  ZP_SOP_BWD,          /* mb, chunk, buf: full backward (input and weight gradients) */
  ZP_SOP_BWD_INPUT,    /* mb, chunk, buf: input-gradient half of the backward ("B" of ZB) */
  ZP_SOP_BWD_WEIGHT,   /* mb, chunk, buf: weight-gradient half, after BWD_INPUT ("W" of ZB) */
  ZP_SOP_SEND_ACT,     /* mb, chunk, buf: send the forward output to virtual stage k + 1 */
  ZP_SOP_RECV_ACT,     /* mb, chunk, buf: receive the input from virtual stage k - 1 into buf */
  ZP_SOP_SEND_GRAD,    /* mb, chunk, buf: send the input gradient to virtual stage k - 1 */
  ZP_SOP_RECV_GRAD,    /* mb, chunk, buf: receive the output gradient from virtual stage k + 1 */
  ZP_SOP_REDUCE_GRADS, /* reduce gradients (data parallel; tied weights across stages) */
  ZP_SOP_STEP,         /* optimizer step; the last instruction */
  ZP_SOP_COUNT
} zp_sched_op;

/* "FWD", ... ; NULL when out of range. */
const char* zp_sched_op_name(int op);
/* op id for a name, -1 when unknown */
int zp_sched_op_parse(const char* name);
/* 1 for SEND_ACT, RECV_ACT, SEND_GRAD, RECV_GRAD */
int zp_sched_op_is_comm(int op);

typedef struct {
  int op;         /* zp_sched_op */
  int mb;         /* micro-batch 0..M-1; -1 for REDUCE_GRADS and STEP */
  int chunk;      /* local chunk 0..V-1; -1 for LOAD, REDUCE_GRADS, STEP */
  int buf;        /* slot 0..M*V-1; -1 for LOAD, REDUCE_GRADS, STEP */
  int vstage;     /* chunk * P + stage; -1 where chunk is -1 */
  int peer;       /* SEND_* / RECV_*: the device on the other side; else -1 */
  int peer_chunk; /* and its chunk; else -1 */
} zp_sched_instr;

#define ZP_SCHED_MAX_STAGES 1024
#define ZP_SCHED_MAX_CHUNKS 64
#define ZP_SCHED_MAX_MICRO_BATCHES 65536
#define ZP_SCHED_MAX_UNITS (1 << 20) /* stages * micro_batches * chunks */

typedef struct zp_schedule zp_schedule;

/* Runs the Lua script (a path) in a fresh sandbox and calls its schedule function once per
 * stage: schedule(stages, micro_batches, stage_id, chunks) -> list of instructions. The
 * script either returns that function or defines a global `schedule`. Each instruction is a
 * table {op = "FWD", mb = 3, chunk = 0, buf = 1}; `chunk` defaults to 0 and `buf` to
 * chunk * micro_batches + mb (a slot of its own per unit). The sandbox predefines
 * constructors (FWD(mb, chunk, buf), LOAD(mb), STEP(), ...) and the helper table `pipeline`
 * (docs/schedules.md). Errors name the script, the stage, the instruction number and the
 * field. On success *out owns the lists (zp_schedule_free). */
int zp_schedule_load(const char* path, int stages, int micro_batches, int chunks,
                     zp_schedule** out, char* err, size_t errlen);
/* Same from a string (chunkname is used in messages; NULL = "(schedule)"). */
int zp_schedule_load_string(const char* code, const char* chunkname, int stages,
                            int micro_batches, int chunks, zp_schedule** out, char* err,
                            size_t errlen);
/* From C arrays (lists[s][0..n[s]-1]; only op, mb, chunk, buf are read; fields an op does
 * not use must be -1). Same field checks as the Lua path. */
int zp_schedule_from_lists(int stages, int micro_batches, int chunks,
                           const zp_sched_instr* const* lists, const int* n, zp_schedule** out,
                           char* err, size_t errlen);
void zp_schedule_free(zp_schedule* s);

int zp_schedule_stages(const zp_schedule* s);
int zp_schedule_micro_batches(const zp_schedule* s);
int zp_schedule_chunks(const zp_schedule* s);
/* The instruction list of device `stage` (NULL when out of range); *n gets its length. */
const zp_sched_instr* zp_schedule_stage(const zp_schedule* s, int stage, int* n);
/* Buffer ids used by the stage: max buf + 1 (0 when it uses none). */
int zp_schedule_buffers(const zp_schedule* s, int stage);
/* Most buffers holding a unit at once on the stage (the activation footprint in units of
 * one chunk's saved activations); -1 until zp_schedule_validate succeeded. */
int zp_schedule_peak_buffers(const zp_schedule* s, int stage);

/* The schedule a run uses: pipeline.schedule (a shipped name or a .lua path relative to the
 * config file) for parallel.pp stages, pipeline.micro_batches and pipeline.chunks, loaded
 * and validated (zp_schedule_validate). Messages name the key's origin. */
struct zp_config;
int zp_schedule_from_config(const struct zp_config* c, zp_schedule** out, char* err, size_t errlen);

/* Simulates all stages together with rendezvous (unbuffered) sends: a SEND completes only
 * together with the peer's matching RECV. Rejects, naming stage, instruction and reason:
 * deadlocks (the cycle of waiting stages), unmatched sends/receives (the peer finished),
 * send/receive pairs that disagree (kind, micro-batch, chunk), a unit without exactly one
 * FWD and one backward (BWD, or BWD_INPUT then BWD_WEIGHT), a buffer used before it is
 * filled or refilled while still holding a unit, LOAD missing before a first/last-stage
 * FWD, REDUCE_GRADS not after all backward work, STEP not once and last. */
int zp_schedule_validate(zp_schedule* s, char* err, size_t errlen);

/* Op durations for the timing simulation, per instruction (one chunk), in any unit. */
typedef struct {
  double fwd;
  double bwd;        /* full BWD; <= 0 means bwd_input + bwd_weight */
  double bwd_input;
  double bwd_weight;
  double comm;       /* one send/receive pair, from both sides' rendezvous to completion */
  double load;
  double reduce;     /* REDUCE_GRADS */
  double step;       /* STEP */
} zp_op_times;
/* fwd = 1, bwd_input = 1, bwd_weight = 1, bwd = 2, everything else 0. */
void zp_op_times_default(zp_op_times* t);

typedef struct {
  int stages;
  double makespan;  /* end of the last instruction of any stage (all start at 0) */
  double* busy;     /* [stages] time in FWD, BWD, BWD_INPUT, BWD_WEIGHT */
  double* bubble;   /* [stages] 1 - busy / makespan */
  double mean_bubble;
  int* n;           /* [stages] instruction counts */
  double** start;   /* [stages][n] start of each instruction (a comm: when the pair began) */
  double** end;     /* [stages][n] */
} zp_sched_sim;

/* Timing simulation with the validator's semantics (an invalid schedule fails the same
 * way). t holds n_times entries: 1 (every virtual stage alike) or stages * chunks (indexed
 * by virtual stage, for unbalanced or measured op times). out is filled (free with
 * zp_sched_sim_free, also after a failure). */
int zp_schedule_simulate(const zp_schedule* s, const zp_op_times* t, int n_times,
                         zp_sched_sim* out, char* err, size_t errlen);
void zp_sched_sim_free(zp_sched_sim* r);

/* Textbook bubble ratios (idle time over ideal compute time): (p-1)/m for GPipe and 1F1B,
 * (p-1)/(v*m) for interleaved 1F1B (v = 1 gives the former). */
double zp_bubble_textbook(int p, int m, int v);
/* ZB-H1 (Qi et al. 2023): (p-1)(tF + tB - tW) / (m (tF + tB + tW)), tB the input half. */
double zp_bubble_textbook_zb_h1(int p, int m, double tf, double tb, double tw);
/* A ratio r as a fraction of wall time, comparable with zp_sched_sim.bubble: r / (1 + r). */
double zp_bubble_fraction(double ratio);

/* "FWD mb=3 chunk=1 buf=2 (to stage 2)"; chunk shown when the schedule has chunks > 1. */
void zp_sched_instr_describe(const zp_schedule* s, const zp_sched_instr* in, char* buf,
                             size_t n);
/* Compact token for listings: L3 F3 B3 I3 (BWD_INPUT) W3 sa3 ra3 sg3 rg3 R S, with ".c"
 * (chunk) when chunks > 1 and "[b]" (buffer). */
void zp_sched_instr_token(const zp_schedule* s, const zp_sched_instr* in, char* buf, size_t n);
/* Prints each stage's list in compact tokens, wrapped at `width` columns (0 = 100). */
void zp_schedule_print(const zp_schedule* s, FILE* f, int width);

/* ---------------------------------------------------------------- stage balance
 * (pipeline_balance.c) Groups are the model's (core/model.h): 0 = embed, 1..L = blocks,
 * L+1 = head. A split assigns contiguous, non-empty ranges of groups to the n_stages
 * virtual stages in order: virtual stage k holds groups first[k] .. first[k+1]-1,
 * first[0] = 0, first[n_stages] = n_groups. */

/* Forward FLOPs per token of each group (n_groups = L + 2 entries) for sequence length T:
 * embed 0 (a lookup); block 24 C^2 + 4 T C (the four matmuls + attention scores and
 * values); head 2 C Vp (the tied classifier over the padded vocabulary; ln_f is noise).
 * Backward is about twice the forward for every group, so balancing by forward FLOPs
 * balances the whole step. L, C, Vp as in zp_gpt2_shape. */
int zp_pipeline_group_flops(int L, int C, int T, int Vp, double* out, int n_out);

/* The contiguous split of n_groups costs into n_stages non-empty stages that minimises the
 * largest stage cost (exact up to float rounding: bisection on the bound), and among such
 * splits cuts each stage near an even share of what is left, so stages other than the
 * bottleneck are even too. first has n_stages + 1 entries. */
int zp_pipeline_balance(const double* cost, int n_groups, int n_stages, int* first,
                        char* err, size_t errlen);
/* An explicit split given as group counts per stage (the config key pipeline.stages):
 * every count >= 1 and the counts add up to n_groups. `what` names the source in messages
 * ("pipeline.stages" + origin). */
int zp_pipeline_split_counts(const int64_t* counts, int n_counts, int n_groups, int n_stages,
                             const char* what, int* first, char* err, size_t errlen);
/* An explicit split given as group lists per stage (lists[k][0..len[k]-1]): every group
 * exactly once, in order, contiguous, no empty stage. */
int zp_pipeline_split_lists(const int* const* lists, const int* len, int n_stages,
                            int n_groups, int* first, char* err, size_t errlen);
/* Largest stage cost of a split, and its ratio to the mean (1 = perfectly even). */
double zp_pipeline_split_max(const double* cost, const int* first, int n_stages,
                             double* imbalance);
/* Table of the split: per stage its groups, cost (and share), params when given (may be
 * NULL), and a line naming the heaviest stage when the split is uneven. names may be NULL
 * ("group i"). */
void zp_pipeline_split_print(FILE* f, const int* first, int n_stages, const double* cost,
                             const uint64_t* params, const char* const* names);

/* The split a run uses: parallel.pp x pipeline.chunks virtual stages, from pipeline.stages
 * (counts) when set, else balanced by forward FLOPs (zp_pipeline_group_flops at
 * model.seq_len). first needs pp * chunks + 1 entries (n_first says how many it has). */
int zp_pipeline_split_for_config(const struct zp_config* c, int L, int C, int T, int Vp,
                                 int* first, int n_first, char* err, size_t errlen);
#endif
