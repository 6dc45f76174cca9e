/* stage2: ZeRO stage 2 — gradients and optimizer state sharded; parameters replicated.
 * Backward writes each group's gradient into a transient full-size buffer; as soon as the
 * group is done (grads_ready) it is reduce-scattered (averaged) and this rank's shard is
 * accumulated into its persistent GRAD shard; the full buffer is released (poisoned) and
 * reused. The tied embedding's buffer lives from the head's backward to the embedding's.
 * Step: AdamW on the owned shard, then all-gather parameters.
 * Memory per rank: PΨ + (G+K)Ψ/N + two full-group gradient buffers (+ the embedding's). */
#include "../common/zero_common.h"

typedef struct {
  zero_common z;
} s2_t;

static int s2_plan(const zp_host* h, zp_plan* p) {
  (void)h;
  for (int g = 0; g < p->n_groups; g++) {
    p->groups[g].place[ZP_CAT_GRAD].sharded = 1;
    p->groups[g].place[ZP_CAT_MASTER].sharded = 1;
    p->groups[g].place[ZP_CAT_OPTIM].sharded = 1;
  }
  return ZP_OK;
}

static int s2_open(const zp_host* h, void** state) {
  s2_t* s = calloc(1, sizeof *s);
  if (!s) return ZP_E_NOMEM;
  *state = s;
  ZC_TRY(zc_open(&s->z, h, 1));
  for (int g = 0; g < s->z.G; g++) {
    ZC_TRY(h->set_view(h->ctx, g, ZP_CAT_PARAM, s->z.info[g].buf[ZP_CAT_PARAM]));
    ZC_TRY(h->set_view(h->ctx, g, ZP_CAT_GRAD, NULL));
  }
  return ZP_OK;
}

static void s2_close(void* st) {
  s2_t* s = st;
  if (!s) return;
  zc_close(&s->z);
  free(s);
}

static int s2_pre_backward(void* st, int g) { return zc_arm_full_grad(&((s2_t*)st)->z, g); }
static int s2_grads_ready(void* st, int g) { return zc_reduce_full_grad(&((s2_t*)st)->z, g); }
static void* s2_grad_shard(zero_common* z, int g) { return z->info[g].buf[ZP_CAT_GRAD]; }

static int s2_step(void* st) {
  zero_common* z = &((s2_t*)st)->z;
  ZC_TRY(zc_step_shards(z, s2_grad_shard, zc_param_shard_in_full, 1)); /* and the all-gathers */
  return ZP_OK;
}

static const zp_strategy_ops s2_ops = {
  sizeof(zp_strategy_ops), s2_plan, s2_open, s2_close, NULL, NULL, s2_pre_backward, s2_grads_ready, s2_step,
  0, /* its step all-gathers the updated shards */
};
static const zp_plugin_desc s2_desc = {
  sizeof(zp_plugin_desc), ZP_ABI_MAJOR, ZP_ABI_MINOR, "stage2", "0.1.0", ZP_KIND_STRATEGY,
  "ZeRO-2: gradients and optimizer state sharded; reduce-scatter as each group's backward ends",
  &s2_ops, NULL, NULL, NULL,
};
ZP_PLUGIN_EXPORT const zp_plugin_desc* zp_plugin_entry(void) { return &s2_desc; }
