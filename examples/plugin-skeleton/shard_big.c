/* shard_big.c: an out-of-tree zeroplace strategy plugin, "shard_big", built only against the
 * installed SDK header <zp/zp_plugin.h> (it never links against the core or includes anything
 * from the zeroplace source tree).
 *
 * What it does: optimizer state (fp32 MASTER weights and Adam m, v) is sharded over the
 * data-parallel ranks only for groups with at least `ext.shard_big.threshold` parameters;
 * smaller groups stay fully replicated. Sharding a small group saves little memory but costs a
 * reduce-scatter + all-gather pair of tiny messages, so this keeps most of ZeRO-1's saving
 * (the big groups hold almost all parameters) without the small collectives.
 *
 * Per step (gradients accumulate locally over micro-batches; on the last micro-batch each
 * group is reduced as soon as its backward is done, in grads_ready):
 *   big group:   reduce-scatter the gradient (averaged) into this rank's shard, AdamW on the
 *                shard (MASTER/OPTIM shard), all-gather the parameters;
 *   small group: all-reduce the gradient (averaged), AdamW on the whole group on every rank.
 * Both paths do the same element-wise arithmetic as the replicated reference, so the final
 * parameters are bitwise identical to it (tests/integration/sdk.sh checks that).
 *
 * Invariants: the plan is decided once, in plan(), from the threshold; open() reads it back
 * from group_info (place[OPTIM].sharded) so plan and run can never disagree. Every buffer comes
 * from the ledger in open(); nothing is allocated inside a step. Errors are status codes with
 * a message (host->set_error); nothing exits or aborts.
 *
 * Options (TOML):   [ext.shard_big]
 *                   threshold = 1000000   # parameters; groups at least this big are sharded
 *                   verbose = false       # log each group's decision at open (rank 0)
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <zp/zp_plugin.h>

#define SB_DEFAULT_THRESHOLD 1000000

typedef struct {
  const zp_host* h;
  int G;
  zp_group_info* info;  /* [G] sizes, dtypes, placements and this rank's buffers */
  unsigned char* big;   /* [G] 1: optimizer state sharded (reduce-scatter path) */
  unsigned char* done;  /* [G] 1: gradient already reduced this step */
  void* scratch;        /* reduce-scatter destination: one shard of the largest big group */
  size_t scratch_bytes;
} sb_state;

/* Read and check the options. Absent keys keep their defaults; a value of the wrong TOML
 * type is reported by the host (message set, ZP_E_INVALID returned). */
static int sb_options(const zp_host* h, int64_t* threshold, int* verbose) {
  *threshold = SB_DEFAULT_THRESHOLD;
  *verbose = 0;
  int rc = h->config_int(h->ctx, "ext.shard_big.threshold", threshold);
  if (rc) return rc;
  if (*threshold < 0) {
    h->set_error(h->ctx, "ext.shard_big.threshold = %lld: must be >= 0 (parameters per group)", (long long)*threshold);
    return ZP_E_INVALID;
  }
  return h->config_bool(h->ctx, "ext.shard_big.verbose", verbose);
}

/* plan(): pure; also runs in `zp plan` (nothing allocated). ACT/BUFFER are ignored. */
static int sb_plan(const zp_host* h, zp_plan* p) {
  int64_t threshold;
  int verbose;
  int rc = sb_options(h, &threshold, &verbose);
  if (rc) return rc;
  for (int g = 0; g < p->n_groups; g++) {
    int shard = p->groups[g].numel >= (uint64_t)threshold;
    p->groups[g].place[ZP_CAT_MASTER].sharded = shard;
    p->groups[g].place[ZP_CAT_OPTIM].sharded = shard;
  }
  return ZP_OK;
}

static void sb_close(void* st) {
  sb_state* s = st;
  if (!s) return;
  if (s->scratch_bytes) s->h->free(s->h->ctx, ZP_CAT_BUFFER, ZP_TIER_GPU, s->scratch, s->scratch_bytes);
  free(s->info);
  free(s->big);
  free(s->done);
  free(s);
}

static int sb_open(const zp_host* h, void** state) {
  sb_state* s = calloc(1, sizeof *s);
  if (!s) return ZP_E_NOMEM;
  *state = s; /* the core calls close() on a failed open's state too */
  s->h = h;
  s->G = h->n_groups;
  s->info = calloc((size_t)s->G, sizeof *s->info);
  s->big = calloc((size_t)s->G, 1);
  s->done = calloc((size_t)s->G, 1);
  if (!s->info || !s->big || !s->done) return ZP_E_NOMEM;
  int64_t threshold;
  int verbose, rc;
  if ((rc = sb_options(h, &threshold, &verbose))) return rc;
  uint64_t max_shard = 0;
  int n_big = 0;
  for (int g = 0; g < s->G; g++) {
    zp_group_info* in = &s->info[g];
    if ((rc = h->group_info(h->ctx, g, in))) return rc;
    s->big[g] = (unsigned char)in->place[ZP_CAT_OPTIM].sharded;
    if (s->big[g]) {
      n_big++;
      if (in->shard_len > max_shard) max_shard = in->shard_len;
    }
    /* parameters and gradients are replicated: the model reads and accumulates in place */
    if ((rc = h->set_view(h->ctx, g, ZP_CAT_PARAM, in->buf[ZP_CAT_PARAM]))) return rc;
    if ((rc = h->set_view(h->ctx, g, ZP_CAT_GRAD, in->buf[ZP_CAT_GRAD]))) return rc;
    if (verbose && h->rank == 0)
      h->log(h->ctx, ZP_LOG_INFO, "group %d: %llu parameters: %s", g, (unsigned long long)in->numel,
             s->big[g] ? "optimizer state sharded" : "replicated");
  }
  if (n_big) {
    s->scratch_bytes = (size_t)max_shard * zp_dtype_size(s->info[0].dtype[ZP_CAT_GRAD]);
    if ((rc = h->alloc(h->ctx, ZP_CAT_BUFFER, ZP_TIER_GPU, s->scratch_bytes, "shard_big reduce-scatter", &s->scratch))) {
      s->scratch_bytes = 0;
      return rc;
    }
  }
  if (h->rank == 0)
    h->log(h->ctx, ZP_LOG_INFO, "%d of %d groups have >= %lld parameters: their optimizer state is sharded over %d ranks",
           n_big, s->G, (long long)threshold, h->world_size);
  return ZP_OK;
}

static void* at(void* base, uint64_t elems, zp_dtype dt) { return (char*)base + (size_t)elems * zp_dtype_size(dt); }

/* Average group g's gradient over the ranks: the shard this rank owns (big) or all of it. */
static int sb_reduce(sb_state* s, int g) {
  const zp_host* h = s->h;
  const zp_group_info* in = &s->info[g];
  zp_dtype gdt = in->dtype[ZP_CAT_GRAD];
  s->done[g] = 1;
  if (!s->big[g]) return h->allreduce(h->ctx, in->buf[ZP_CAT_GRAD], (size_t)in->padded, gdt, ZP_RED_AVG);
  int rc = h->reduce_scatter(h->ctx, s->scratch, in->buf[ZP_CAT_GRAD], (size_t)in->shard_len, gdt, ZP_RED_AVG);
  if (rc) return rc;
  rc = h->dev->copy_d2d(h->devb, at(in->buf[ZP_CAT_GRAD], in->shard_off, gdt), s->scratch, (size_t)in->shard_len * zp_dtype_size(gdt));
  h->poison(h->ctx, s->scratch, gdt, (size_t)in->shard_len); /* stale scratch must never be read */
  return rc;
}

/* grads_ready(g): g's gradient for this micro-batch is complete (for the tied embedding,
 * group 0, that includes the head's part). Reduce on the last micro-batch only: earlier ones
 * accumulate locally. */
static int sb_grads_ready(void* st, int g) {
  sb_state* s = st;
  const zp_host* h = s->h;
  int last = h->micro_batches <= 0 || h->micro_batch == h->micro_batches - 1;
  return last ? sb_reduce(s, g) : ZP_OK;
}

static int sb_step(void* st) {
  sb_state* s = st;
  const zp_host* h = s->h;
  int rc;
  for (int g = s->G - 1; g >= 0; g--) /* anything grads_ready did not reduce (same order on every rank) */
    if (!s->done[g] && (rc = sb_reduce(s, g))) return rc;
  /* global gradient norm: shards summed over ranks, replicated groups counted once */
  double ss_shards = 0, ss_repl = 0, x;
  for (int g = 0; g < s->G; g++) {
    const zp_group_info* in = &s->info[g];
    zp_dtype gdt = in->dtype[ZP_CAT_GRAD];
    if (s->big[g]) rc = h->sumsq(h->ctx, at(in->buf[ZP_CAT_GRAD], in->shard_off, gdt), gdt, (size_t)in->shard_len, &x);
    else rc = h->sumsq(h->ctx, in->buf[ZP_CAT_GRAD], gdt, (size_t)in->padded, &x);
    if (rc) return rc;
    if (s->big[g]) ss_shards += x; else ss_repl += x;
  }
  if ((rc = h->allreduce(h->ctx, &ss_shards, 1, ZP_F64, ZP_RED_SUM))) return rc;
  if ((rc = h->optim_begin(h->ctx, ss_shards + ss_repl))) return rc;
  for (int g = 0; g < s->G; g++) {
    const zp_group_info* in = &s->info[g];
    zp_dtype gdt = in->dtype[ZP_CAT_GRAD], pdt = in->dtype[ZP_CAT_PARAM];
    s->done[g] = 0;
    if (!s->big[g]) {
      rc = h->optim_update(h->ctx, g, 0, in->padded, in->buf[ZP_CAT_GRAD], gdt, in->buf[ZP_CAT_PARAM], pdt);
      if (rc) return rc;
      continue;
    }
    void* pshard = at(in->buf[ZP_CAT_PARAM], in->shard_off, pdt);
    rc = h->optim_update(h->ctx, g, in->shard_off, in->shard_len, at(in->buf[ZP_CAT_GRAD], in->shard_off, gdt), gdt, pshard, pdt);
    if (rc) return rc;
    /* in place: this rank's slice is already where the gathered buffer wants it */
    if ((rc = h->allgather(h->ctx, in->buf[ZP_CAT_PARAM], pshard, (size_t)in->shard_len, pdt))) return rc;
  }
  return ZP_OK;
}

static const zp_strategy_ops sb_ops = {
  .struct_size = sizeof(zp_strategy_ops),
  .plan = sb_plan,
  .open = sb_open,
  .close = sb_close,
  .grads_ready = sb_grads_ready,
  .step = sb_step,
};

static const zp_plugin_desc sb_desc = {
  .struct_size = sizeof(zp_plugin_desc),
  .abi_major = ZP_ABI_MAJOR,
  .abi_minor = ZP_ABI_MINOR,
  .name = "shard_big",
  .version = "1.0.0",
  .kind = ZP_KIND_STRATEGY,
  .summary = "optimizer state sharded only for groups >= ext.shard_big.threshold parameters (skeleton)",
  .strategy = &sb_ops,
};

ZP_PLUGIN_EXPORT const zp_plugin_desc* zp_plugin_entry(void) { return &sb_desc; }
