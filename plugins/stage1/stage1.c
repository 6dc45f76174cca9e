/* stage1: ZeRO stage 1 — optimizer state (fp32 master, Adam m and v) sharded over the
 * data-parallel ranks; parameters and gradients replicated.
 * Step: reduce-scatter each group's gradient (averaged) so each rank holds the reduced shard
 * it owns, update that shard (AdamW on this rank's MASTER/OPTIM shard, writing the new
 * parameter values into its slice of the full PARAM buffer), then all-gather the parameters.
 * Memory per rank: (P+G)Ψ + KΨ/N. Communication per step: reduce-scatter + all-gather = the
 * same 2Ψ as plain data parallelism's all-reduce. */
#include "../common/zero_common.h"

typedef struct {
  zero_common z;
} s1_t;

static int s1_plan(const zp_host* h, zp_plan* p) {
  (void)h;
  for (int g = 0; g < p->n_groups; g++) {
    p->groups[g].place[ZP_CAT_MASTER].sharded = 1;
    p->groups[g].place[ZP_CAT_OPTIM].sharded = 1;
  }
  return ZP_OK;
}

static int s1_open(const zp_host* h, void** state) {
  s1_t* s = calloc(1, sizeof *s);
  if (!s) return ZP_E_NOMEM;
  *state = s;
  ZC_TRY(zc_open(&s->z, h, 0));
  for (int g = 0; g < s->z.G; g++) {
    ZC_TRY(h->set_view(h->ctx, g, ZP_CAT_PARAM, s->z.info[g].buf[ZP_CAT_PARAM]));
    ZC_TRY(h->set_view(h->ctx, g, ZP_CAT_GRAD, s->z.info[g].buf[ZP_CAT_GRAD]));
  }
  return ZP_OK;
}

static void s1_close(void* st) {
  s1_t* s = st;
  if (!s) return;
  zc_close(&s->z);
  free(s);
}

/* the reduced gradient shard of g sits in the scratch only transiently, so stage 1 reduces
 * into the gradient buffer's own shard slice (a copy from the scratch) */
static void* s1_grad_shard(zero_common* z, int g) {
  const zp_group_info* in = &z->info[g];
  return (char*)in->buf[ZP_CAT_GRAD] + (size_t)in->shard_off * zc_dsize(in->dtype[ZP_CAT_GRAD]);
}

static int s1_step(void* st) {
  s1_t* s = st;
  zero_common* z = &s->z;
  const zp_host* h = z->h;
  for (int g = 0; g < z->G; g++) {
    const zp_group_info* in = &z->info[g];
    zp_dtype gdt = in->dtype[ZP_CAT_GRAD];
    ZC_TRY(h->reduce_scatter(h->ctx, z->shard_scratch, in->buf[ZP_CAT_GRAD], (size_t)in->shard_len, gdt, ZP_RED_AVG));
    ZC_TRY(h->dev->copy_d2d(h->devb, s1_grad_shard(z, g), z->shard_scratch, (size_t)in->shard_len * zc_dsize(gdt)));
    ZC_TRY(zc_shard_ready(z, g, s1_grad_shard(z, g))); /* an offload tier copies it while the next group reduces */
  }
  ZC_TRY(zc_step_shards(z, s1_grad_shard, zc_param_shard_in_full));
  for (int g = 0; g < z->G; g++) ZC_TRY(zc_allgather_params_inplace(z, g));
  return ZP_OK;
}

static const zp_strategy_ops s1_ops = {
  sizeof(zp_strategy_ops), s1_plan, s1_open, s1_close, NULL, NULL, NULL, NULL, s1_step,
  0, /* its step all-gathers the updated shards */
};
static const zp_plugin_desc s1_desc = {
  sizeof(zp_plugin_desc), ZP_ABI_MAJOR, ZP_ABI_MINOR, "stage1", "0.1.0", ZP_KIND_STRATEGY,
  "ZeRO-1: optimizer state sharded; reduce-scatter, shard update, all-gather",
  &s1_ops, NULL, NULL, NULL,
};
ZP_PLUGIN_EXPORT const zp_plugin_desc* zp_plugin_entry(void) { return &s1_desc; }
