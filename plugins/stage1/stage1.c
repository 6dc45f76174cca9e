/* stage1: ZeRO stage 1 — optimizer state (fp32 master, Adam m and v) sharded over the
 * data-parallel ranks; parameters and gradients replicated.
 * Gradients (zero.stage1_reduce): "allreduce" (with zero.overlap_comm; "auto", the default,
 * chooses it where the communicator runs started collectives beside the compute, ABI 1.9
 * comm_overlaps), as the replicated strategy: on the step's last micro-batch, groups whose
 * gradient buffers are contiguous are all-reduced (averaged) in buckets of zero.bucket_mb as
 * their backward completes, each bucket started and waited for when the next one starts, so
 * the communication runs beside the backward (DeepSpeed's ZeRO-1 does the same); each rank then
 * uses its shard slice of the reduced gradient. Otherwise ("reduce_scatter", or "auto" where
 * the core would run the all-reduces at the wait anyway), at the step: reduce-scatter each
 * group's gradient so each rank holds the reduced shard it owns (half the bytes, none hidden).
 * Either way the shard's values are the same bits (one averaged sum per element).
 * Step: update this rank's shard (AdamW on its MASTER/OPTIM shard, writing the new parameter
 * values into its slice of the full PARAM buffer), then all-gather the parameters.
 * Memory per rank: (P+G)Ψ + KΨ/N. Communication per step: all-reduce (2Ψ, overlapped) or
 * reduce-scatter (Ψ), then all-gather (Ψ). */
#include "../common/grad_buckets.h"
#include "../common/zero_common.h"

typedef struct {
  zero_common z;
  /* the backward's buckets (overlap: plugins/common/grad_buckets.h); reduced[g]: g's gradient
   * was all-reduced this step */
  int overlap;
  zp_grad_buckets bk;
  unsigned char* reduced;
} s1_t;

static int s1_plan(const zp_host* h, zp_plan* p) {
  (void)h;
  for (int g = 0; g < p->n_groups; g++) {
    p->groups[g].place[ZP_CAT_MASTER].sharded = 1;
    p->groups[g].place[ZP_CAT_OPTIM].sharded = 1;
  }
  return ZP_OK;
}

static int s1_final(void* ctx, int g);

static int s1_open(const zp_host* h, void** state) {
  s1_t* s = calloc(1, sizeof *s);
  if (!s) return ZP_E_NOMEM;
  *state = s;
  ZC_TRY(zc_open(&s->z, h, 0));
  for (int g = 0; g < s->z.G; g++) {
    ZC_TRY(h->set_view(h->ctx, g, ZP_CAT_PARAM, s->z.info[g].buf[ZP_CAT_PARAM]));
    ZC_TRY(h->set_view(h->ctx, g, ZP_CAT_GRAD, s->z.info[g].buf[ZP_CAT_GRAD]));
  }
  double mb = 25;
  int ov = 1;
  h->config_float(h->ctx, "zero.bucket_mb", &mb);
  h->config_bool(h->ctx, "zero.overlap_comm", &ov);
  const char* how = "auto";
  h->config_string(h->ctx, "zero.stage1_reduce", &how);
  /* auto: the all-reduce moves twice the bytes, worth it only where it runs beside the backward */
  const int want_ar = !strcmp(how, "allreduce") || (!strcmp(how, "auto") && h->comm_overlaps);
  s->overlap = want_ar && ov && ZP_TABLE_HAS(h, allreduce_start) && ZP_TABLE_HAS(h, wait_started) && h->world_size > 1;
  zp_gb_init(&s->bk, h, s->z.info, (size_t)(mb * 1048576.0), s1_final, s);
  s->reduced = calloc((size_t)(s->z.G > 0 ? s->z.G : 1), 1);
  return s->reduced ? ZP_OK : ZP_E_NOMEM;
}

static void s1_close(void* st) {
  s1_t* s = st;
  if (!s) return;
  zc_close(&s->z);
  free(s->reduced);
  free(s);
}

/* the reduced gradient shard of g sits in the scratch only transiently, so stage 1 reduces
 * into the gradient buffer's own shard slice (a copy from the scratch) */
static void* s1_grad_shard(zero_common* z, int g) {
  const zp_group_info* in = &z->info[g];
  return (char*)in->buf[ZP_CAT_GRAD] + (size_t)in->shard_off * zc_dsize(in->dtype[ZP_CAT_GRAD]);
}

/* group g was all-reduced in the backward: its shard slice is final */
static int s1_final(void* ctx, int g) {
  s1_t* s = ctx;
  s->reduced[g] = 1;
  return zc_shard_ready(&s->z, g, s1_grad_shard(&s->z, g));
}
/* group g's backward is done (called in reverse group order): on the step's last micro-batch,
 * into the pending bucket (the tied group 0 completes last) */
static int s1_grads_ready(void* st, int g) {
  s1_t* s = st;
  const zp_host* h = s->z.h;
  if (!s->overlap || !(h->micro_batches <= 0 || h->micro_batch == h->micro_batches - 1)) return ZP_OK;
  return zp_gb_add(&s->bk, g, g == 0);
}

static int s1_step(void* st) {
  s1_t* s = st;
  zero_common* z = &s->z;
  const zp_host* h = z->h;
  ZC_TRY(zp_gb_flush(&s->bk));
  ZC_TRY(zp_gb_finish(&s->bk));
  for (int g = 0; g < z->G; g++) {
    if (s->reduced[g]) { /* all-reduced during the backward */
      s->reduced[g] = 0;
      continue;
    }
    const zp_group_info* in = &z->info[g];
    zp_dtype gdt = in->dtype[ZP_CAT_GRAD];
    ZC_TRY(h->reduce_scatter(h->ctx, z->shard_scratch, in->buf[ZP_CAT_GRAD], (size_t)in->shard_len, gdt, ZP_RED_AVG));
    ZC_TRY(h->dev->copy_d2d(h->devb, s1_grad_shard(z, g), z->shard_scratch, (size_t)in->shard_len * zc_dsize(gdt)));
    ZC_TRY(zc_shard_ready(z, g, s1_grad_shard(z, g))); /* an offload tier copies it while the next group reduces */
  }
  ZC_TRY(zc_step_shards(z, s1_grad_shard, zc_param_shard_in_full, 1)); /* and the all-gathers */
  return ZP_OK;
}

static const zp_strategy_ops s1_ops = {
  sizeof(zp_strategy_ops), s1_plan, s1_open, s1_close, NULL, NULL, NULL, s1_grads_ready, s1_step,
  0, /* its step all-gathers the updated shards */
};
static const zp_plugin_desc s1_desc = {
  sizeof(zp_plugin_desc), ZP_ABI_MAJOR, ZP_ABI_MINOR, "stage1", "0.1.0", ZP_KIND_STRATEGY,
  "ZeRO-1: optimizer state sharded; all-reduce beside the backward (or reduce-scatter), shard update, all-gather",
  &s1_ops, NULL, NULL, NULL,
};
ZP_PLUGIN_EXPORT const zp_plugin_desc* zp_plugin_entry(void) { return &s1_desc; }
