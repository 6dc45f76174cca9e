/* abi_plugin.c: the ABI test plugin. tests/integration/abi_frozen.sh compiles it against each
 * frozen header tests/abi/zp_plugin_<major>_<minor>.h (copied to <dir>/zp/zp_plugin.h) as
 * zp_abi_<major>_<minor>.so, and checks that the current zp loads it (same major) or refuses it
 * naming both versions (other major) — and that, when loaded, it trains bitwise like the
 * replicated reference.
 *
 * It is plain data parallelism written to touch every host service of the OLDEST frozen ABI
 * (0.1) so that a layout change anywhere in zp_host, zp_group_info, zp_strategy_ops or
 * zp_plugin_desc makes it misbehave: log, set_error, the four config getters, alloc/free,
 * rank/world_size, dev/devb (copy_d2d), n_groups, group_info, set_view, allreduce,
 * reduce_scatter + allgather (odd groups are averaged that way: the same element-wise sums as
 * an all-reduce), optim_begin/optim_update, sumsq, poison, micro_batch/micro_batches, and the
 * hooks pre_forward/post_forward/pre_backward/grads_ready/step (each checks its call order).
 * Invariant: never edit it to use something newer than the oldest frozen header still kept.
 */
#include <stdlib.h>
#include <string.h>

#include "zp/zp_plugin.h"

#ifndef ZP_ABI_PLUGIN_NAME
#define ZP_ABI_PLUGIN_NAME "abi"
#endif

typedef struct {
  const zp_host* h;
  int G;
  zp_group_info* info;
  void* scratch;        /* one shard of the largest group (reduce-scatter destination) */
  size_t scratch_bytes;
  int expect;           /* next group a forward/backward hook must see */
  int last_mb;          /* grads_ready saw the last micro-batch of the step */
} abi_t;

#define TRY(x) do { int rc_ = (x); if (rc_) return rc_; } while (0)

static int abi_plan(const zp_host* h, zp_plan* p) {
  if (h->struct_size < offsetof(zp_host, micro_batches) + sizeof(int) || h->abi_major != ZP_ABI_MAJOR) {
    h->set_error(h->ctx, "host table of %zu bytes, ABI %u.%u: older than this plugin's header (%d.%d)", h->struct_size,
                 h->abi_major, h->abi_minor, ZP_ABI_MAJOR, ZP_ABI_MINOR);
    return ZP_E_ABI;
  }
  if (p->world_size != h->world_size || p->n_groups < 3) {
    h->set_error(h->ctx, "plan: world %d vs host %d, %d groups", p->world_size, h->world_size, p->n_groups);
    return ZP_E_INTERNAL;
  }
  for (int g = 0; g < p->n_groups; g++) {
    zp_group_plan* gp = &p->groups[g];
    if (gp->index != g || gp->padded % ((uint64_t)p->world_size * ZP_SHARD_ALIGN_ELEMS) != 0 || gp->numel > gp->padded) {
      h->set_error(h->ctx, "plan: group %d (%s) has index %d, %llu of %llu elements", g, gp->name, gp->index,
                   (unsigned long long)gp->numel, (unsigned long long)gp->padded);
      return ZP_E_INTERNAL;
    }
    for (int c = 0; c < ZP_CAT_COUNT; c++) gp->place[c].sharded = 0;
  }
  return ZP_OK;
}

static void abi_close(void* st) {
  abi_t* s = st;
  if (!s) return;
  if (s->scratch_bytes) s->h->free(s->h->ctx, ZP_CAT_BUFFER, ZP_TIER_GPU, s->scratch, s->scratch_bytes);
  free(s->info);
  free(s);
}

static int abi_open(const zp_host* h, void** state) {
  abi_t* s = calloc(1, sizeof *s);
  if (!s) return ZP_E_NOMEM;
  *state = s;
  s->h = h;
  s->G = h->n_groups;
  s->info = calloc((size_t)s->G, sizeof *s->info);
  if (!s->info) return ZP_E_NOMEM;
  /* config getters: values the test's config fixes */
  int64_t mb = 0;
  double lr = 0;
  int ov = -1;
  const char* plugin = NULL;
  TRY(h->config_int(h->ctx, "train.micro_batch", &mb));
  TRY(h->config_float(h->ctx, "train.lr", &lr));
  TRY(h->config_bool(h->ctx, "zero.overlap_comm", &ov));
  TRY(h->config_string(h->ctx, "zero.plugin", &plugin));
  if (mb != 2 || lr != 1e-2 || ov != 1 || !plugin || !strstr(plugin, ZP_ABI_PLUGIN_NAME)) {
    h->set_error(h->ctx, "config through the host: micro_batch %lld lr %g overlap %d plugin %s", (long long)mb, lr, ov,
                 plugin ? plugin : "(null)");
    return ZP_E_INTERNAL;
  }
  uint64_t max_shard = 0;
  for (int g = 0; g < s->G; g++) {
    zp_group_info* in = &s->info[g];
    TRY(h->group_info(h->ctx, g, in));
    if (in->shard_len * (uint64_t)h->world_size != in->padded || in->shard_off != in->shard_len * (uint64_t)h->rank ||
        in->place[ZP_CAT_OPTIM].sharded || !in->buf[ZP_CAT_PARAM] || !in->buf[ZP_CAT_GRAD] || !in->buf[ZP_CAT_OPTIM] ||
        in->bytes[ZP_CAT_GRAD] < in->padded * zp_dtype_size(in->dtype[ZP_CAT_GRAD]) || in->tied_to >= s->G) {
      h->set_error(h->ctx, "group_info(%d): inconsistent (padded %llu shard %llu at %llu)", g, (unsigned long long)in->padded,
                   (unsigned long long)in->shard_len, (unsigned long long)in->shard_off);
      return ZP_E_INTERNAL;
    }
    if (in->shard_len > max_shard) max_shard = in->shard_len;
    TRY(h->set_view(h->ctx, g, ZP_CAT_PARAM, in->buf[ZP_CAT_PARAM]));
    TRY(h->set_view(h->ctx, g, ZP_CAT_GRAD, in->buf[ZP_CAT_GRAD]));
  }
  s->scratch_bytes = (size_t)max_shard * zp_dtype_size(s->info[0].dtype[ZP_CAT_GRAD]);
  if (h->alloc(h->ctx, ZP_CAT_BUFFER, ZP_TIER_GPU, s->scratch_bytes, "abi scratch", &s->scratch)) {
    s->scratch_bytes = 0;
    return ZP_E_NOMEM;
  }
  if (h->rank == 0) h->log(h->ctx, ZP_LOG_INFO, "built against plugin ABI %d.%d, running on %u.%u", ZP_ABI_MAJOR, ZP_ABI_MINOR,
                           h->abi_major, h->abi_minor);
  return ZP_OK;
}

static int order(abi_t* s, int g, int want, const char* hook) {
  if (g != want) {
    s->h->set_error(s->h->ctx, "%s(%d) called where group %d was due", hook, g, want);
    return ZP_E_INTERNAL;
  }
  return ZP_OK;
}
static int abi_pre_forward(void* st, int g) {
  abi_t* s = st;
  if (g == 0) s->expect = 0;
  return order(s, g, s->expect, "pre_forward");
}
static int abi_post_forward(void* st, int g) {
  abi_t* s = st;
  TRY(order(s, g, s->expect, "post_forward"));
  s->expect = g + 1 == s->G ? s->G - 1 : g + 1;
  return ZP_OK;
}
static int abi_pre_backward(void* st, int g) { abi_t* s = st; return order(s, g, s->expect, "pre_backward"); }
static int abi_grads_ready(void* st, int g) {
  abi_t* s = st;
  const zp_host* h = s->h;
  TRY(order(s, g, s->expect, "grads_ready"));
  s->expect = g - 1;
  if (h->micro_batches > 0 && (h->micro_batch < 0 || h->micro_batch >= h->micro_batches)) {
    h->set_error(h->ctx, "micro_batch %d of %d", h->micro_batch, h->micro_batches);
    return ZP_E_INTERNAL;
  }
  if (g == 0) s->last_mb = h->micro_batches <= 0 || h->micro_batch == h->micro_batches - 1;
  return ZP_OK;
}

static int abi_step(void* st) {
  abi_t* s = st;
  const zp_host* h = s->h;
  if (!s->last_mb) {
    h->set_error(h->ctx, "step before the last micro-batch's backward");
    return ZP_E_INTERNAL;
  }
  s->last_mb = 0;
  double ss = 0, x;
  for (int g = 0; g < s->G; g++) {
    const zp_group_info* in = &s->info[g];
    zp_dtype gdt = in->dtype[ZP_CAT_GRAD];
    if (g % 2 == 0) {
      TRY(h->allreduce(h->ctx, in->buf[ZP_CAT_GRAD], (size_t)in->padded, gdt, ZP_RED_AVG));
    } else {
      TRY(h->reduce_scatter(h->ctx, s->scratch, in->buf[ZP_CAT_GRAD], (size_t)in->shard_len, gdt, ZP_RED_AVG));
      TRY(h->allgather(h->ctx, in->buf[ZP_CAT_GRAD], s->scratch, (size_t)in->shard_len, gdt));
      h->poison(h->ctx, s->scratch, gdt, (size_t)in->shard_len);
    }
    TRY(h->sumsq(h->ctx, in->buf[ZP_CAT_GRAD], gdt, (size_t)in->padded, &x));
    ss += x;
  }
  TRY(h->optim_begin(h->ctx, ss));
  for (int g = 0; g < s->G; g++) {
    const zp_group_info* in = &s->info[g];
    /* two ranges per group: the split must not change the numbers */
    uint64_t half = in->padded / 2;
    size_t gs = zp_dtype_size(in->dtype[ZP_CAT_GRAD]), ps = zp_dtype_size(in->dtype[ZP_CAT_PARAM]);
    TRY(h->optim_update(h->ctx, g, 0, half, in->buf[ZP_CAT_GRAD], in->dtype[ZP_CAT_GRAD], in->buf[ZP_CAT_PARAM],
                        in->dtype[ZP_CAT_PARAM]));
    TRY(h->optim_update(h->ctx, g, half, in->padded - half, (char*)in->buf[ZP_CAT_GRAD] + half * gs, in->dtype[ZP_CAT_GRAD],
                        (char*)in->buf[ZP_CAT_PARAM] + half * ps, in->dtype[ZP_CAT_PARAM]));
  }
  /* the device table: a round trip through copy_d2d must leave the gradients as they were */
  const zp_group_info* in = &s->info[s->G - 1];
  size_t n = (size_t)in->shard_len * zp_dtype_size(in->dtype[ZP_CAT_GRAD]);
  TRY(h->dev->copy_d2d(h->devb, s->scratch, in->buf[ZP_CAT_GRAD], n));
  TRY(h->dev->copy_d2d(h->devb, in->buf[ZP_CAT_GRAD], s->scratch, n));
  return ZP_OK;
}

static const zp_strategy_ops abi_ops = {
  sizeof(zp_strategy_ops), abi_plan, abi_open, abi_close, abi_pre_forward, abi_post_forward, abi_pre_backward,
  abi_grads_ready, abi_step,
};
static const zp_plugin_desc abi_desc = {
  sizeof(zp_plugin_desc), ZP_ABI_MAJOR, ZP_ABI_MINOR, ZP_ABI_PLUGIN_NAME, "1.0.0", ZP_KIND_STRATEGY,
  "ABI test: replicated data parallelism through every host service of the frozen header", &abi_ops, NULL, NULL, NULL,
};
ZP_PLUGIN_EXPORT const zp_plugin_desc* zp_plugin_entry(void) { return &abi_desc; }
