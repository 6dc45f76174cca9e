/* zp_plugin.h: the zeroplace plugin ABI. This is the only header a plugin includes.
 *
 * Invariants (ABI rules, see docs/plugin-guide.md):
 * - A plugin exports exactly one symbol, ZP_PLUGIN_ENTRY_NAME, returning a const descriptor.
 *   Everything else in the plugin has hidden visibility.
 * - Plugins never link against the core: every host service comes through zp_host, a table
 *   handed to the plugin at open. Tables only grow at the end; each starts with struct_size so
 *   both sides can tell which members exist. A NULL optional method means "core default".
 * - A descriptor whose abi_major differs from ZP_ABI_MAJOR is refused with both versions named.
 * - Errors are status codes plus a message (host->set_error); never exit() or abort().
 * - ABI 1.0 is frozen (tests/abi/zp_plugin_1_0.h): within major 1, tables only grow at the end
 *   (readers check struct_size: ZP_TABLE_HAS), fixed structs never change size (their
 *   `reserved` members are zero and may gain a meaning in a later 1.x), enumerators keep their
 *   values. Every member present in 1.0 is part of the 1.0 table of its kind; members marked
 *   "optional" may be NULL.
 */
#ifndef ZP_PLUGIN_H
#define ZP_PLUGIN_H
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ZP_ABI_MAJOR 1
#define ZP_ABI_MINOR 9
#define ZP_PLUGIN_ENTRY_NAME "zp_plugin_entry"
/* does table t (whose first member is size_t struct_size) have member m, and is it set? */
#define ZP_TABLE_HAS(t, m) \
  ((t)->struct_size >= offsetof(__typeof__(*(t)), m) + sizeof((t)->m) && (t)->m != NULL)
#if defined(__GNUC__)
#define ZP_PLUGIN_EXPORT __attribute__((visibility("default")))
#else
#define ZP_PLUGIN_EXPORT
#endif

/* ---- status codes ---- */
typedef enum {
  ZP_OK = 0,
  ZP_E_INVALID = 1,        /* bad argument or user input */
  ZP_E_NOMEM = 2,          /* an allocation failed (ledger dumped) */
  ZP_E_IO = 3,             /* file or device I/O failed */
  ZP_E_NOT_IMPLEMENTED = 4,/* the plugin does not (yet) provide this */
  ZP_E_ABI = 5,            /* ABI mismatch */
  ZP_E_COMM = 6,           /* a collective failed: peer died, deadline passed */
  ZP_E_TIMEOUT = 7,
  ZP_E_DEVICE = 8,         /* CUDA / device error */
  ZP_E_CORRUPT = 9,        /* checksum or format mismatch */
  ZP_E_INTERNAL = 10
} zp_status;

/* ---- data types, state categories, tiers ---- */
typedef enum { ZP_F32 = 0, ZP_F64 = 1, ZP_BF16 = 2, ZP_I32 = 3, ZP_U16 = 4 } zp_dtype;
static inline size_t zp_dtype_size(zp_dtype t) {
  switch (t) { case ZP_F64: return 8; case ZP_BF16: case ZP_U16: return 2; default: return 4; }
}

typedef enum {
  ZP_CAT_PARAM = 0,  /* working weights in the compute/storage dtype */
  ZP_CAT_GRAD = 1,   /* gradients */
  ZP_CAT_MASTER = 2, /* fp32 master weights (only when PARAM is not fp32) */
  ZP_CAT_OPTIM = 3,  /* optimizer moments (Adam m and v) */
  ZP_CAT_ACT = 4,    /* activations kept for backward */
  ZP_CAT_BUFFER = 5, /* communication, staging, gather, scratch */
  ZP_CAT_COUNT = 6
} zp_category;

typedef enum { ZP_TIER_GPU = 0, ZP_TIER_CPU = 1, ZP_TIER_NVME = 2, ZP_TIER_COUNT = 3 } zp_tier;
/* "gpu" tier means "device memory of the active backend" (host RAM for the CPU backend, but
 * still accounted as the device tier so plans read the same on every backend). */

typedef enum { ZP_LOG_ERROR = 0, ZP_LOG_WARN = 1, ZP_LOG_INFO = 2, ZP_LOG_DEBUG = 3 } zp_log_level;

typedef enum {
  ZP_KIND_STRATEGY = 1, /* decides sharding of each (group, category) and runs the hooks */
  ZP_KIND_TIER = 2,     /* owns storage and movement for a tier (offload) */
  ZP_KIND_PARALLEL = 3, /* pipeline / tensor parallelism */
  ZP_KIND_BACKEND = 4   /* a device backend (cuda) */
} zp_plugin_kind;

/* ---- reduction ops for collectives ---- */
typedef enum { ZP_RED_SUM = 0, ZP_RED_AVG = 1, ZP_RED_MAX = 2 } zp_redop;

typedef struct zp_host_ctx zp_host_ctx; /* opaque: the core's per-plugin context */
struct zp_group_info;
struct zp_backend_ops;
struct zp_backend;
typedef struct zp_comm zp_comm;         /* opaque: a communicator (world or sub-group) */

/* ---- communicators (core shared memory, or a backend plugin's, e.g. NCCL) ----
 * NCCL-like semantics: every rank calls the same collectives in the same order. Buffers are
 * device memory of the active backend; a communicator provided by a device backend must also
 * accept host pointers for small control messages (it stages them). */
#define ZP_COMM_ERR_LEN 512
#define ZP_COMM_SPLIT_UNDEFINED (-1) /* split color: this rank joins no sub-communicator */

typedef struct zp_comm_ops {
  size_t struct_size;
  /* in place: buf holds count elements on every rank; on return, the reduction of all */
  int (*allreduce)(zp_comm* c, void* buf, size_t count, zp_dtype dt, zp_redop op);
  /* send holds size*recv_count; rank r gets (the reduction of) block r */
  int (*reduce_scatter)(zp_comm* c, void* recv, const void* send, size_t recv_count, zp_dtype dt,
                        zp_redop op);
  /* recv holds size*send_count; in-place allowed when send == recv + rank*send_count */
  int (*allgather)(zp_comm* c, void* recv, const void* send, size_t send_count, zp_dtype dt);
  int (*broadcast)(zp_comm* c, void* buf, size_t count, zp_dtype dt, int root);
  /* rendezvous: returns only when the peer's matching recv has taken the data */
  int (*send)(zp_comm* c, const void* buf, size_t count, zp_dtype dt, int peer);
  int (*recv)(zp_comm* c, void* buf, size_t count, zp_dtype dt, int peer);
  int (*barrier)(zp_comm* c);
  /* MPI_Comm_split semantics; collective over c. Ranks of the new communicator are ordered by
   * (key, rank in c). color ZP_COMM_SPLIT_UNDEFINED (< 0): *out = NULL. */
  int (*split)(zp_comm* c, int color, int key, zp_comm** out);
  void (*destroy)(zp_comm* c);
  /* ---- optional (1.9): an allreduce issued now and finished later (NULL: the core defers a
   * plain allreduce to the wait instead) ----
   * allreduce_start: as allreduce on a device buffer, returning once the op is issued, with a
   *   ticket (> 0) in *ticket. Until it is waited for, nothing may read or write buf.
   * wait_started: every ticket up to `ticket` (tickets count up per communicator) is done
   *   for the work issued after this call on the backend's compute stream (device
   *   communicators: the stream waits, the host need not). Other calls on the communicator
   *   may come between a start and its wait; every rank starts and waits in the same order.
   *   A failure (dead peer, deadline) is reported by the wait or by any later call. */
  int (*allreduce_start)(zp_comm* c, void* buf, size_t count, zp_dtype dt, zp_redop op,
                         uint64_t* ticket);
  int (*wait_started)(zp_comm* c, uint64_t ticket);
  /* reduce_scatter_start: as reduce_scatter on device buffers, started like allreduce_start
   *   (one ticket sequence with it, wait_started covers both); until waited for, nothing may
   *   read recv or write send. NULL: the core defers it to the wait too. */
  int (*reduce_scatter_start)(zp_comm* c, void* recv, const void* send, size_t recv_count,
                              zp_dtype dt, zp_redop op, uint64_t* ticket);
  /* allgather_start: as allgather on device buffers (in place allowed), started the same way */
  int (*allgather_start)(zp_comm* c, void* recv, const void* send, size_t send_count, zp_dtype dt,
                         uint64_t* ticket);
} zp_comm_ops;

/* The base struct (zp_plugin.h declares `typedef struct zp_comm zp_comm;`). */
struct zp_comm {
  const zp_comm_ops* ops;
  int rank, size;
  char err[ZP_COMM_ERR_LEN];
};

/* ---- placement plan: the data a strategy fills in ---- */
typedef struct {
  int sharded;  /* 1: each rank holds 1/N of the group's padded buffer; 0: replicated */
  zp_tier tier; /* where the bytes live */
} zp_placement;

typedef struct {
  int index;          /* group index in forward order */
  const char* name;   /* "embed", "block.3", "head" */
  uint64_t numel;     /* real parameter count */
  uint64_t padded;    /* padded count: divisible by world_size * ZP_SHARD_ALIGN_ELEMS */
  int decay;          /* unused by strategies; the optimizer's business */
  zp_placement place[ZP_CAT_COUNT]; /* filled by the strategy's plan() (ACT/BUFFER ignored) */
  uint64_t reserved[4]; /* zero; a later 1.x may give these a meaning */
} zp_group_plan;

#define ZP_SHARD_ALIGN_ELEMS 2048 /* shard offsets are multiples of this many elements (4 KiB in bf16) */

typedef struct {
  int world_size;
  int n_groups;
  zp_group_plan* groups;
  uint64_t reserved[4]; /* zero; a later 1.x may give these a meaning */
} zp_plan;

/* What a strategy may know about a group at run time. */
typedef struct zp_group_info {
  uint64_t numel;       /* real parameters */
  uint64_t padded;      /* padded element count (divisible by world_size * ZP_SHARD_ALIGN_ELEMS) */
  uint64_t shard_len;   /* padded / world_size */
  uint64_t shard_off;   /* rank * shard_len */
  int tied_to;          /* another group whose PARAM/GRAD this group's compute also uses, or -1 */
  zp_dtype dtype[ZP_CAT_COUNT];    /* PARAM, GRAD, MASTER (F32), OPTIM (F32) */
  zp_placement place[ZP_CAT_COUNT];
  void* buf[ZP_CAT_COUNT];  /* this rank's resident buffer (full if replicated, shard if sharded; NULL if none) */
  size_t bytes[ZP_CAT_COUNT];
  uint64_t reserved[4]; /* zero; a later 1.x may give these a meaning */
} zp_group_info;

/* ---- host services, handed to a plugin at open ---- */
typedef struct zp_host {
  size_t struct_size;
  uint32_t abi_major, abi_minor;
  zp_host_ctx* ctx;
  /* logging and errors: set_error stores the message returned with the status */
  void (*log)(zp_host_ctx* ctx, zp_log_level lvl, const char* fmt, ...)
      __attribute__((format(printf, 3, 4)));
  void (*set_error)(zp_host_ctx* ctx, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
  /* config access, by dotted key path ("zero.prefetch_groups"); ZP_E_INVALID if absent or
   * of another type. Keys were validated against the schema before any plugin opened. */
  int (*config_int)(zp_host_ctx* ctx, const char* path, int64_t* out);
  int (*config_float)(zp_host_ctx* ctx, const char* path, double* out);
  int (*config_bool)(zp_host_ctx* ctx, const char* path, int* out);
  int (*config_string)(zp_host_ctx* ctx, const char* path, const char** out);
  /* allocation through the ledger (counted per category and tier; dry-run aware: in a plan
   * dry run the bytes are counted and *out is NULL) */
  int (*alloc)(zp_host_ctx* ctx, zp_category cat, zp_tier tier, size_t bytes, const char* tag,
               void** out);
  void (*free)(zp_host_ctx* ctx, zp_category cat, zp_tier tier, void* p, size_t bytes);
  /* rank facts (of the data-parallel group the strategy works over) */
  int rank, world_size;

  /* ---- training runtime services (valid for strategy/tier plugins after open) ---- */
  /* the active device backend, for casts, fills and copies on device buffers */
  const struct zp_backend_ops* dev;
  struct zp_backend* devb;
  int n_groups;
  int (*group_info)(zp_host_ctx* ctx, int group, struct zp_group_info* out);
  /* Point the model's view of a group's PARAM or GRAD at ptr (dtype as group_info says, full
   * padded size). PARAM views are read by forward/backward; GRAD views are accumulated into by
   * backward. NULL marks the view absent (using it is a bug the core reports). */
  int (*set_view)(zp_host_ctx* ctx, int group, zp_category cat, void* ptr);
  /* collectives over the data-parallel group (ordered, deadline-checked, traced) */
  int (*allreduce)(zp_host_ctx* ctx, void* buf, size_t count, zp_dtype dt, zp_redop op);
  int (*reduce_scatter)(zp_host_ctx* ctx, void* recv, const void* send, size_t recv_count,
                        zp_dtype dt, zp_redop op);
  int (*allgather)(zp_host_ctx* ctx, void* recv, const void* send, size_t send_count, zp_dtype dt);
  /* optimizer service: AdamW over elements [first, first+count) of a group's padded buffer,
   * reading the gradient at grad (gdt, already reduced and averaged), updating MASTER/OPTIM
   * where the plan put them, and writing the new parameter values to param_out (pdt; NULL
   * when MASTER is itself the parameter). The range must lie inside what this rank holds of
   * MASTER/OPTIM. Call after optim_begin. */
  int (*optim_begin)(zp_host_ctx* ctx, double grad_sumsq_global);
  int (*optim_update)(zp_host_ctx* ctx, int group, uint64_t first, uint64_t count,
                      const void* grad, zp_dtype gdt, void* param_out, zp_dtype pdt);
  /* sum of squares of a device buffer (fp64 on the host) */
  int (*sumsq)(zp_host_ctx* ctx, const void* x, zp_dtype dt, size_t n, double* out);
  /* poison a released buffer (NaN in test builds, no-op otherwise) */
  void (*poison)(zp_host_ctx* ctx, void* p, zp_dtype dt, size_t n);
  /* the micro-batch being run (0-based) and how many make this step; micro_batches == 0
   * when unknown (callers outside the training loop): treat every micro-batch as the last */
  int micro_batch, micro_batches;
  /* count bytes moved to (write = 1) or from (write = 0) a tier (offload transfers, file I/O);
   * the ledger reports them per step so tests can tell state really moved */
  void (*note_io)(zp_host_ctx* ctx, zp_tier tier, int write, uint64_t bytes);
  /* change the ledger's count for a category on a tier by delta bytes without allocating
   * (storage a tier owns outside memory, e.g. nvme files) */
  void (*note_bytes)(zp_host_ctx* ctx, zp_category cat, zp_tier tier, long long delta);
  /* ---- (1.5) a strategy reports a final gradient range: elements [first, first+count) of
   * group's padded buffer, at grad (device memory, gdt, reduced and averaged), will not change
   * until this step's optimizer update of that range has run. The core hands it to the tier
   * holding the group's optimizer state (zp_tier_ops.grad_ready), which may start moving it now
   * (overlapping the rest of the backward); elsewhere it is a no-op. The core ignores calls
   * before the last micro-batch of a step. Optional for strategies: a range never reported is
   * moved at update time. */
  int (*shard_ready)(zp_host_ctx* ctx, int group, uint64_t first, uint64_t count, const void* grad,
                     zp_dtype gdt);
  /* ---- (1.6) read this rank's whole holding of (group, cat) into host memory, in the
   * background where the storage allows: host must be page-locked (cpu-tier BUFFER from
   * alloc), ZP_FETCH_ALIGN-aligned, and hold bytes[cat] rounded up to ZP_FETCH_ALIGN. For
   * storage a tier owns (parameter offload to NVMe) the tier's fetch op starts the reads and
   * *ticket names them; elsewhere the copy is done when the call returns (*ticket = 0).
   * fetch_wait blocks until the bytes are in host memory and retires the ticket (0: no-op).
   * Every ticket must be waited for, and before this step's optimizer update (the update
   * rewrites the storage). */
  int (*fetch_state)(zp_host_ctx* ctx, int group, zp_category cat, void* host, uint64_t* ticket);
  int (*fetch_wait)(zp_host_ctx* ctx, int group, zp_category cat, uint64_t ticket);
  /* ---- (1.8) sumsq of count device buffers in one call: out[i] (host) = what
   * sumsq(ctx, xs[i], dts[i], ns[i], &out[i]) gives, bit for bit (ns[i] == 0: 0.0; count 0 is
   * valid). The host arrays are read before the call returns. Where the backend has sumsq_many
   * the device is waited for once, not once per buffer. Check ZP_TABLE_HAS(h, sumsq_many). */
  int (*sumsq_many)(zp_host_ctx* ctx, int count, const void* const* xs, const zp_dtype* dts,
                    const size_t* ns, double* out);
  /* ---- (1.9) an allreduce over the data-parallel group started now, finished later, so the
   * backward goes on while it runs: allreduce_start issues it (*ticket > 0, or 0 when there
   * is nothing to do: one rank, count 0); until wait_started(ticket) (which also covers
   * every earlier ticket) nothing may read or write buf, and the result is there for work
   * issued after the wait. Every ticket must be waited for before the strategy's step
   * returns (the core checks). Where the communicator cannot run it in the background the
   * core runs it at the wait (CPU ranks: a consumer that reads early sees the unreduced
   * values, so tests catch a missing wait). Check ZP_TABLE_HAS(h, allreduce_start). */
  int (*allreduce_start)(zp_host_ctx* ctx, void* buf, size_t count, zp_dtype dt, zp_redop op,
                         uint64_t* ticket);
  int (*wait_started)(zp_host_ctx* ctx, uint64_t ticket);
  /* ---- (1.9) a reduce-scatter started the same way (one ticket sequence with
   * allreduce_start; wait_started covers both): until waited for, nothing may read recv or
   * write send. Check ZP_TABLE_HAS(h, reduce_scatter_start). */
  int (*reduce_scatter_start)(zp_host_ctx* ctx, void* recv, const void* send, size_t recv_count,
                              zp_dtype dt, zp_redop op, uint64_t* ticket);
  /* (1.9) 1 when started collectives really run beside the compute (the data-parallel
   * communicator has the start ops: NCCL with ZP_CUDA_NCCL_ASYNC=1); 0 when the core runs them
   * at the wait. A strategy may choose its algorithm by it (stage 1: all-reduce in the backward
   * only where that overlaps). Valid after open. */
  int comm_overlaps;
  /* (1.9) an all-gather started the same way (in place allowed: send == recv + rank *
   * send_count); until waited for, nothing may read recv or write send */
  int (*allgather_start)(zp_host_ctx* ctx, void* recv, const void* send, size_t send_count,
                         zp_dtype dt, uint64_t* ticket);
} zp_host;
#define ZP_FETCH_ALIGN 4096


/* ---- strategy plugins (ZeRO stages): the placement interface ----
 * The core owns the loop and calls these hooks (see DESIGN.md "The step and its hook points").
 * plan() is pure: it only fills placements. The hooks run during training. */
typedef struct zp_strategy_ops {
  size_t struct_size;
  int (*plan)(const zp_host* host, zp_plan* plan);
  int (*open)(const zp_host* host, void** state);
  void (*close)(void* state);
  int (*pre_forward)(void* state, int group);
  int (*post_forward)(void* state, int group);
  int (*pre_backward)(void* state, int group);
  int (*grads_ready)(void* state, int group);
  int (*step)(void* state);
  /* (1.7) ZP_STRATEGY_* bits (0: none; check struct_size first) */
  uint64_t flags;
} zp_strategy_ops;
/* (1.7) After step() returns, the strategy touches no group's PARAM, GRAD, MASTER or OPTIM
 * buffer before the core's next hook for that group, and its pre_forward touches none of them
 * either: the core may then finish the step's device optimizer work beside the next forward
 * (train.overlap_optimizer), making the forward of each group wait for that group's update. */
#define ZP_STRATEGY_UPDATE_DEFERRABLE 1ull

/* ---- tier plugins (offload) ----
 * A tier plugin moves categories to its tier in plan() (placements only). For every group
 * whose OPTIM the plan puts on the plugin's tier, the core's optimizer service hands the
 * update to the plugin (update()): the plugin moves the gradient range from the device,
 * runs AdamW where its state lives and writes the new parameters back to the device.
 * Storage: for the cpu tier the core allocates MASTER/OPTIM in host memory (the group's
 * buf[] pointers); a tier that owns its storage (nvme: files) gets NULL buffers and serves
 * the core's reads and writes (initialisation, checkpoints) through read()/write(). */
typedef struct {
  float lr, beta1, beta2, eps;
  float weight_decay;  /* applied only to pieces whose decay flag is set */
  float grad_scale;    /* multiply gradients by this first (clipping) */
  int step_t;          /* >= 1: Adam bias correction */
} zp_optim_hparams;

typedef struct zp_optim_range {
  size_t struct_size;
  int group;
  uint64_t first, count;      /* elements [first, first+count) of the group's padded buffer */
  uint64_t state_off;         /* offset of `first` inside this rank's MASTER/OPTIM holding */
  const void* grad;           /* device memory: count gradients (reduced, averaged) */
  zp_dtype gdt;
  void* param_out;            /* device memory: receives count updated parameters (pdt), or NULL */
  zp_dtype pdt;
  float *master, *m, *v;      /* the tier's host memory at state_off (NULL: the tier owns storage) */
  int n_pieces;               /* tensor pieces covering the range in order */
  const uint64_t* piece_end;  /* end element (exclusive, same numbering as first) of each piece */
  const unsigned char* piece_decay; /* 1: weight decay applies to that piece */
  zp_optim_hparams hp;
  /* (1.5) 1: param_out is host memory (PARAM itself lives on this tier: parameter offload with
   * stage 3), written by the tier directly; 0: device memory (check struct_size first) */
  int param_host;
} zp_optim_range;

/* (1.5) a final gradient range, reported by a strategy (zp_host.shard_ready) */
typedef struct zp_grad_range {
  size_t struct_size;
  int group;
  uint64_t first, count;      /* elements [first, first+count) of the group's padded buffer */
  uint64_t state_off;         /* offset of `first` inside this rank's MASTER/OPTIM holding */
  const void* grad;           /* device memory: count gradients (reduced, averaged) */
  zp_dtype gdt;
  int step_t;                 /* the optimizer step (hp.step_t of its update) this gradient is for */
} zp_grad_range;

typedef struct zp_tier_ops {
  size_t struct_size;
  zp_tier tier;
  int (*open)(const zp_host* host, void** state);
  void (*close)(void* state);
  int (*plan)(const zp_host* host, zp_plan* plan); /* move categories to this tier */
  /* ---- the runtime side (NULL update: plan-only plugin, refused at open by the core) */
  /* AdamW over a range; param_out holds the new values when the call returns, in the device's
   * issue order: work issued after the call sees them (since 1.5 a tier may still be copying
   * them, having made later device work wait: copy_wait device 1). A delayed update may return
   * the previous step's values: see the plugin's documentation. */
  int (*update)(void* state, const zp_optim_range* u);
  /* every update of the step has been issued: finish outstanding work (may be NULL) */
  int (*step_end)(void* state);
  /* storage this tier owns (NULL buf[] pointers): bytes at byte offset off of this rank's
   * holding of (group, cat) to/from host memory (may be NULL for the cpu tier) */
  int (*read)(void* state, int group, zp_category cat, uint64_t off, void* host, size_t bytes);
  int (*write)(void* state, int group, zp_category cat, uint64_t off, const void* host, size_t bytes);
  /* A tier that works in the background (a delayed parameter update) settles it (may be NULL):
   * flush 0: wait for in-flight work, so the state read() / the core's host buffers see is
   *          final for the last step (device parameters may still be one update behind);
   * flush 1: also write every pending parameter update to its param_out and set *wrote = 1 if
   *          any was written (the core then re-gathers replicated parameters of which this
   *          rank updated only its shard). Called by the core before checkpoints, validation,
   *          reads of the state and at the end of training; collective where flush is 1. */
  int (*sync)(void* state, int flush, int* wrote);
  /* (1.5, optional) a final gradient range of a group this tier updates (see
   * zp_host.shard_ready): the tier may start its device -> host copy now (the backend's
   * copy_async). The matching update() gets the same grad pointer and may then skip its copy.
   * A range reported and then not updated (a skipped step) must be harmless. */
  int (*grad_ready)(void* state, const zp_grad_range* r);
  /* (1.6, optional) zp_host.fetch_state / fetch_wait for storage this tier owns: start reading
   * this rank's whole holding of (group, cat) into host (ZP_FETCH_ALIGN-aligned, page-locked),
   * and wait for it. The core calls update() only after every fetch was waited for. NULL:
   * the core reads synchronously through read(). */
  int (*fetch)(void* state, int group, zp_category cat, void* host, uint64_t* ticket);
  int (*fetch_wait)(void* state, uint64_t ticket);
} zp_tier_ops;

/* ---- parallel plugins (pipeline, tensor) ---- */
typedef struct zp_parallel_ops {
  size_t struct_size;
  int (*open)(const zp_host* host, void** state);
  void (*close)(void* state);
} zp_parallel_ops;

/* ---- device backend: one model code, two implementations (core cpu, plugin cuda) ----
 * Conventions for every op:
 * - Pointers are device pointers of this backend. Float tensors are in the backend's compute
 *   dtype `ct` (zp_backend_info.compute_dtype) unless the op says otherwise; statistics
 *   (layernorm mean/rstd, losses) are fp32; token ids are int32.
 * - Row-major. A weight of a linear layer is [OC, IC] (out_features, in_features), as in
 *   PyTorch nn.Linear: out[N, OC] = inp[N, IC] @ W^T + bias.
 * - Backward ops ACCUMULATE into parameter gradients (dweight += ..., dbias += ...) so that
 *   micro-batches accumulate (unless grad_overwrite (1.8) is on: then they overwrite them). Input gradients are OVERWRITTEN (dinp = ...) except where an op
 *   says "accumulates dinp" (layernorm_bwd and encoder_bwd, which sit on the residual stream).
 * - A NULL bias / dbias means "no bias".
 * - Ops are issued on the backend's compute stream and are ordered; synchronize() waits.
 */
typedef struct zp_backend zp_backend;

typedef struct {
  size_t struct_size;
  zp_dtype compute_dtype;   /* dtype of activations and op inputs/outputs */
  const char* device_name;  /* "cpu (2 threads, OpenBLAS)" / "NVIDIA H100 80GB HBM3" */
  double peak_flops;        /* dense peak for MFU (0 = unknown) */
  size_t mem_total, mem_free; /* device memory; 0 where not meaningful */
} zp_backend_info;

typedef struct {
  size_t struct_size;
  zp_dtype compute_dtype;   /* requested: F32/F64 (cpu), BF16 (cuda) */
  int device_index;         /* local device ordinal */
  int num_threads;          /* cpu: OpenMP threads (0 = default) */
} zp_backend_config;

typedef struct zp_backend_ops {
  size_t struct_size;
  /* lifecycle */
  int (*create)(const zp_host* host, const zp_backend_config* cfg, zp_backend** out);
  void (*destroy)(zp_backend* b);
  int (*info)(zp_backend* b, zp_backend_info* out);
  /* memory: raw device memory; the core does the ledger accounting */
  int (*alloc)(zp_backend* b, size_t bytes, void** out);
  void (*free)(zp_backend* b, void* p);
  int (*copy_h2d)(zp_backend* b, void* dst, const void* src, size_t bytes);
  int (*copy_d2h)(zp_backend* b, void* dst, const void* src, size_t bytes);
  int (*copy_d2d)(zp_backend* b, void* dst, const void* src, size_t bytes);
  int (*memset0)(zp_backend* b, void* dst, size_t bytes);
  int (*synchronize)(zp_backend* b);
  /* dtype conversion: dst[i] = (dt) src[i]; accumulate: dst[i] += scale * src[i] */
  int (*cast)(zp_backend* b, void* dst, zp_dtype dt, const void* src, zp_dtype st, size_t n);
  int (*accumulate)(zp_backend* b, void* dst, zp_dtype dt, const void* src, zp_dtype st,
                    size_t n, float scale);
  /* fill with a value (used to poison released buffers with NaN in test builds) */
  int (*fill)(zp_backend* b, void* dst, zp_dtype dt, size_t n, double value);

  /* out[b,t,:] = wte[inp[b,t],:] + wpe[t,:]   (out [B*T, C]) */
  int (*encoder_fwd)(zp_backend* b, void* out, const int32_t* inp, const void* wte,
                     const void* wpe, int B, int T, int C);
  /* dwte[inp[b,t],:] += dout[b,t,:]; dwpe[t,:] += dout[b,t,:] (deterministic order) */
  int (*encoder_bwd)(zp_backend* b, void* dwte, void* dwpe, const void* dout,
                     const int32_t* inp, int B, int T, int C);
  /* out = (inp - mean) * rstd * w + bias over rows of C; mean, rstd: fp32 [N], eps 1e-5 */
  int (*layernorm_fwd)(zp_backend* b, void* out, float* mean, float* rstd, const void* inp,
                       const void* w, const void* bias, int N, int C);
  /* accumulates dinp, dw, dbias */
  int (*layernorm_bwd)(zp_backend* b, void* dinp, void* dw, void* dbias, const void* dout,
                       const void* inp, const void* w, const float* mean, const float* rstd,
                       int N, int C);
  /* out[N,OC] = inp[N,IC] @ w[OC,IC]^T (+ bias[OC]) */
  int (*matmul_fwd)(zp_backend* b, void* out, const void* inp, const void* w, const void* bias,
                    int N, int IC, int OC);
  /* dinp = dout @ w (overwrite; skipped if dinp NULL); dw += dout^T @ inp; dbias += sum dout */
  int (*matmul_bwd)(zp_backend* b, void* dinp, void* dw, void* dbias, const void* dout,
                    const void* inp, const void* w, int N, int IC, int OC);
  /* causal multi-head self-attention. qkv [B,T,3C] (q | k | v, heads of C/NH inside each);
   * out [B,T,C]; aux: backend-specific saved state of attention_aux_bytes() bytes. */
  size_t (*attention_aux_bytes)(zp_backend* b, int B, int T, int C, int NH);
  int (*attention_fwd)(zp_backend* b, void* out, void* aux, const void* qkv, int B, int T,
                       int C, int NH);
  /* dqkv overwritten; `out` is the forward output (flash-style backward needs it) */
  int (*attention_bwd)(zp_backend* b, void* dqkv, const void* dout, const void* qkv,
                       const void* out, const void* aux, int B, int T, int C, int NH);
  /* tanh-approximated GELU */
  int (*gelu_fwd)(zp_backend* b, void* out, const void* inp, size_t n);
  int (*gelu_bwd)(zp_backend* b, void* dinp, const void* inp, const void* dout, size_t n);
  /* out = a + c */
  int (*residual_fwd)(zp_backend* b, void* out, const void* a, const void* c, size_t n);
  /* Fused softmax + cross-entropy over logits [N, Vp] of which the first V columns are real.
   * losses[i] (fp32) = -log softmax(logits[i])[targets[i]]. If dloss != 0, logits is
   * overwritten in place with dlogits = dloss * (softmax - onehot) (padded columns 0). A
   * target < 0 is ignored (loss 0, grad 0). */
  int (*softmax_xent)(zp_backend* b, float* losses, void* logits, const int32_t* targets,
                      int N, int V, int Vp, float dloss);
  /* AdamW on n elements (decoupled weight decay). master/m/v fp32; grad in gdt (scaled by
   * grad_scale first); param (pdt) receives the updated value (cast), may be NULL when
   * master is the parameter itself (fp32 training: pass master = param, pdt = F32).
   * step_t >= 1 (bias correction). */
  int (*adamw)(zp_backend* b, void* param, zp_dtype pdt, float* master, const void* grad,
               zp_dtype gdt, float* m, float* v, size_t n, float lr, float beta1, float beta2,
               float eps, float weight_decay, float grad_scale, int step_t);
  /* *out_host (fp64 on the host) = sum(x^2) over n elements of dtype dt; synchronous */
  int (*sumsq)(zp_backend* b, double* out_host, const void* x, zp_dtype dt, size_t n);
  /* x *= s */
  int (*scale)(zp_backend* b, void* x, zp_dtype dt, size_t n, float s);
  /* ---- optional: a device communicator (NULL: the core's shared-memory one is used) ----
   * comm_unique_id: on rank 0, writes an opaque id of *len <= 256 bytes, which the core
   * broadcasts over its host communicator; comm_create: every rank builds the communicator
   * (collective). Its collectives run on the backend's stream(s), ordered after the ops issued
   * before them; every call has the deadline timeout_s, after which the communicator is
   * aborted and the call fails naming the operation. */
  int (*comm_unique_id)(zp_backend* b, void* id, size_t* len);
  int (*comm_create)(zp_backend* b, const void* id, size_t len, int rank, int size,
                     double timeout_s, zp_comm** out);
  /* ---- optional: page-locked host memory for fast transfers (NULL: aligned malloc) */
  int (*host_alloc)(zp_backend* b, size_t bytes, void** out);
  void (*host_free)(zp_backend* b, void* p);
  /* ---- optional: tensor parallelism (NULL: the core refuses parallel.tp > 1) ----
   * Vocab-parallel embedding: each tensor-parallel rank holds a slice of wte's rows; ids[p] is
   * the row of this rank's slice holding token p, or < 0 where another rank owns the token
   * (the row then contributes zero). out[b,t,:] = (ids >= 0 ? wte[ids,:] : 0) + (wpe ? wpe[t,:] : 0) */
  int (*encoder_masked_fwd)(zp_backend* b, void* out, const int32_t* ids, const void* wte,
                            const void* wpe, int B, int T, int C);
  /* as encoder_bwd (accumulates, deterministic order); positions with ids < 0 add nothing to
   * dwte; dwte or dwpe may be NULL */
  int (*encoder_masked_bwd)(zp_backend* b, void* dwte, void* dwpe, const void* dout,
                            const int32_t* ids, int B, int T, int C);
  /* Vocab-parallel softmax + cross-entropy in three phases, the caller all-reducing between
   * them over the tensor-parallel ranks. logits [N, Vl] hold this rank's columns
   * [v0, v0 + Vl) of the full logits, the first nreal of them real vocabulary (0 <= nreal <=
   * Vl); targets are global token ids (< 0: ignored row). stats [3N]: max | sum of exp |
   * target logit, fp32 (fp64 when the compute dtype is F64).
   * phase 0: stats[0,N) = max of the real local columns (-inf if none); caller: MAX over ranks.
   * phase 1: stats[N,2N) = sum over real local columns of exp(x - max); stats[2N,3N) = the
   *          target's logit where v0 <= target < v0 + nreal, else 0; caller: SUM over ranks.
   * phase 2: losses[i] (fp32) = log(sum) - (target logit - max) (0 for ignored rows); if
   *          dloss != 0, logits are overwritten with dloss * (softmax - onehot) (padded and
   *          ignored rows' columns 0). */
  int (*softmax_xent_vp)(zp_backend* b, int phase, float* losses, void* logits, void* stats,
                         const int32_t* targets, int N, int Vl, int nreal, int v0, float dloss);
  /* ---- optional (1.1): the MLP's GELU fused into its GEMMs (NULL: matmul + gelu ops) ----
   * matmul_gelu_fwd: pre[N,OC] = inp[N,IC] @ w[OC,IC]^T (+ bias[OC]); out[N,OC] = gelu(pre)
   *   (tanh approximation, as gelu_fwd).
   * matmul_dgelu_bwd: as matmul_bwd, except that dinp = (dout @ w) * gelu'(pre), where
   *   pre[N,IC] is the pre-activation whose GELU is inp; dinp must not be NULL. */
  int (*matmul_gelu_fwd)(zp_backend* b, void* out, void* pre, const void* inp, const void* w,
                         const void* bias, int N, int IC, int OC);
  int (*matmul_dgelu_bwd)(zp_backend* b, void* dinp, void* dw, void* dbias, const void* dout,
                          const void* inp, const void* w, const void* pre, int N, int IC,
                          int OC);
  /* ---- optional (1.2): the residual add fused into the projection GEMM (NULL: matmul_fwd
   * then residual_fwd) ----
   * matmul_res_fwd: out[N,OC] = res[N,OC] + inp[N,IC] @ w[OC,IC]^T (+ bias[OC]); out may be res,
   *   never inp or w. The backward is matmul_bwd's (the residual's gradient passes through). */
  int (*matmul_res_fwd)(zp_backend* b, void* out, const void* inp, const void* w,
                        const void* bias, const void* res, int N, int IC, int OC);
  /* ---- optional (1.3): device timestamps, for the op profile (NULL: the profile
   * synchronizes after every op instead) ----
   * timer_mark: take a timestamp in slot (0 <= slot < ZP_TIMER_SLOTS) when the device reaches
   *   this point of the issue order: asynchronous, like an op; a slot may be marked again.
   * timer_ms: after synchronize, the milliseconds from slot a's latest mark to slot c's (both
   *   marked; negative if c was reached first). */
  int (*timer_mark)(zp_backend* b, int slot);
  int (*timer_ms)(zp_backend* b, int a, int c, double* ms);
  /* ---- optional (1.4): AdamW over several pieces in one call (NULL: one adamw() per piece) ----
   * adamw_pieces: as n_pieces adamw() calls over consecutive pieces of one range, bit for bit:
   *   piece i covers elements [piece_end[i-1], piece_end[i]) of the range (piece_end[-1] = 0,
   *   piece_end increasing, piece_end[n_pieces-1] the range's length) with weight decay
   *   piece_wd[i]. piece_end and piece_wd are host arrays, read before the call returns. */
  int (*adamw_pieces)(zp_backend* b, void* param, zp_dtype pdt, float* master, const void* grad,
                      zp_dtype gdt, float* m, float* v, int n_pieces, const uint64_t* piece_end,
                      const float* piece_wd, float lr, float beta1, float beta2, float eps,
                      float grad_scale, int step_t);
  /* ---- optional (1.4): attention backward with a caller-provided workspace (NULL, or 0 bytes
   * for the shape: attention_bwd) ----
   * attention_bwd_ws_bytes: device bytes of workspace attention_bwd_ws needs for this shape.
   * attention_bwd_ws: as attention_bwd; ws (that many bytes, 256-byte aligned) is scratch whose
   *   contents on entry do not matter and are not needed after the call (one buffer serves every
   *   layer). Results are deterministic (the same inputs give the same bits). */
  size_t (*attention_bwd_ws_bytes)(zp_backend* b, int B, int T, int C, int NH);
  int (*attention_bwd_ws)(zp_backend* b, void* dqkv, const void* dout, const void* qkv,
                          const void* out, const void* aux, void* ws, int B, int T, int C, int NH);
  /* ---- optional (1.5): copies beside the compute (NULL: copy_d2h / copy_h2d, synchronous) ----
   * copy_async: copy bytes between device memory and page-locked host memory (host_alloc; h2d 1:
   *   host -> device, 0: device -> host) on a copy engine, after all work issued so far; returns at
   *   once with a ticket (> 0) in *ticket. Until the copy is waited for, its source must not
   *   change and its destination must not be read (host or device).
   * copy_wait: device 0: the calling thread blocks until copy `ticket` is done (any thread may
   *   call this); device 1: work issued after this call runs after the copy (returns at once).
   *   Copies in one direction complete in issue order; ticket 0 is always done. */
  int (*copy_async)(zp_backend* b, void* dst, const void* src, size_t bytes, int h2d,
                    uint64_t* ticket);
  int (*copy_wait)(zp_backend* b, uint64_t ticket, int device);
  /* ---- optional (1.7): a second compute stream (NULL: everything on the one stream) ----
   * side_begin: ops issued from now until side_end run on a side stream, after all work issued
   *   so far (on the CUDA backend: a second stream of lower or equal priority). Not nested.
   * side_end: back to the compute stream; *ticket (> 0) names the side work issued since
   *   side_begin, for copy_wait (device 1: later compute-stream work waits for it; device 0:
   *   the calling thread waits). synchronize() and copy_h2d wait for the compute stream only
   *   (a caller that writes memory the side stream uses waits for its ticket first); copy_d2h
   *   also waits for all side work first, so a host read never sees memory the side stream is
   *   still writing. */
  int (*side_begin)(zp_backend* b);
  int (*side_end)(zp_backend* b, uint64_t* ticket);
  /* ---- optional (1.8): parameter gradients written instead of accumulated (NULL: always
   * accumulated; the core then zeroes gradient buffers before a step's first backward) ----
   * grad_overwrite: on != 0: from now until called with 0, the parameter-gradient outputs of
   *   matmul_bwd, matmul_dgelu_bwd and layernorm_bwd (dw and dbias) are OVERWRITTEN (dw = ...)
   *   instead of accumulated, with the value accumulating into zeros gives (bit for bit, up
   *   to the sign of a zero). Input gradients keep their rules (layernorm_bwd still accumulates
   *   dinp), and encoder_bwd / encoder_masked_bwd always accumulate. Ordered like an op. */
  int (*grad_overwrite)(zp_backend* b, int on);
  /* ---- optional (1.8): several sums of squares with one host synchronization (NULL: one
   * sumsq() per tensor) ----
   * sumsq_many: out_host[i] = exactly what sumsq(b, &out_host[i], xs[i], dts[i], ns[i]) gives,
   *   bit for bit, for i < count (count 0 is valid; ns[i] == 0 gives 0.0). Synchronous like
   *   sumsq (returns when every result is in out_host), but the backend waits for the device
   *   at most once per call where it can (CUDA: once per batch of up to 1024 tensors). xs, dts,
   *   ns and out_host are host arrays. */
  int (*sumsq_many)(zp_backend* b, int count, const void* const* xs, const zp_dtype* dts,
                    const size_t* ns, double* out_host);
  /* ---- optional (1.9): the GELU backward also gives its pre-activation's bias gradient
   * (NULL: matmul_dgelu_bwd, and that bias gradient from the next matmul_bwd's column sums) ----
   * matmul_dgelu_bgrad_bwd: exactly matmul_dgelu_bwd, and in addition dpre_bias[IC] += the
   *   column sums of dinp, i.e. the bias gradient of the linear layer whose output is `pre`
   *   (stored instead of added under grad_overwrite, like dbias). The sums may be taken before
   *   dinp is rounded to the compute dtype. dpre_bias may be NULL: then it is matmul_dgelu_bwd. */
  int (*matmul_dgelu_bgrad_bwd)(zp_backend* b, void* dinp, void* dpre_bias, void* dw, void* dbias,
                                const void* dout, const void* inp, const void* w, const void* pre,
                                int N, int IC, int OC);
  /* ---- optional (1.9): sums of squares started early, collected later (NULL: sumsq_many at
   * the step; both or neither) ----
   * sumsq_start: issue, like an op (asynchronous), the sum of squares of x (n elements of dt,
   *   n == 0 gives 0.0) into result slot `slot` (0 <= slot < ZP_SUMSQ_START_SLOTS); the value
   *   will be exactly what sumsq(b, &out, x, dt, n) gives. x must not change until collected.
   *   All starts between two collects are issued on one stream (the side stream, or the compute
   *   stream); a slot started twice holds the later value.
   * sumsq_collect: out_host[i] = slot i's result for i < count, once the compute stream gets
   *   here (synchronous: returns with the values; the caller first makes the compute stream
   *   wait for side-stream starts, copy_wait(ticket, 1)); slots not started since the last
   *   collect are unspecified. */
  int (*sumsq_start)(zp_backend* b, int slot, const void* x, zp_dtype dt, size_t n);
  int (*sumsq_collect)(zp_backend* b, int count, double* out_host);
} zp_backend_ops;
#define ZP_SUMSQ_START_SLOTS 1024
#define ZP_TIMER_SLOTS 65536

/* ---- the descriptor: what the entry function returns ---- */
typedef struct zp_plugin_desc {
  size_t struct_size;
  uint32_t abi_major, abi_minor;
  const char* name;     /* "stage3" */
  const char* version;  /* plugin's own version "0.1.0" */
  zp_plugin_kind kind;
  const char* summary;  /* one line for `zp plugins` */
  /* exactly one of these, by kind */
  const zp_strategy_ops* strategy;
  const zp_tier_ops* tier;
  const zp_parallel_ops* parallel;
  const zp_backend_ops* backend;
} zp_plugin_desc;

typedef const zp_plugin_desc* (*zp_plugin_entry_fn)(void);

/* Plugin authors write:  ZP_PLUGIN_EXPORT const zp_plugin_desc* zp_plugin_entry(void) {...} */

#ifdef __cplusplus
}
#endif
#endif
