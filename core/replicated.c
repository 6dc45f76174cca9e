/* replicated.c: the built-in "none" strategy — plain data parallelism, and the reference
 * every ZeRO plugin is compared with. It uses only the public host services, exactly like a
 * plugin would.
 * Invariants: every rank holds full PARAM, GRAD, MASTER and OPTIM. Gradients are averaged on
 * the last micro-batch of a step only (earlier ones accumulate locally, like DDP's no_sync),
 * in buckets: consecutive groups whose GRAD buffers are contiguous (the core's arenas make
 * them so) are reduced with one all-reduce once they reach zero.bucket_mb, as their backward
 * completes (zero.overlap_comm) or all at once at the step (overlap_comm = false). Each
 * bucket's all-reduce is started (ABI 1.9 allreduce_start) and waited for when the next bucket
 * starts (the last one at the step), so it runs beside the next bucket's backward (the
 * bucketing is plugins/common/grad_buckets.h, shared with stage 1). The
 * optimizer updates the full range on every rank, so parameters stay identical without a
 * gather. Reductions are element-wise, so bucketing never changes the numbers. Each reduced
 * bucket's groups are reported final (shard_ready) once its all-reduce is waited for, so an
 * offload tier can start copying them while the backward goes on. The gradient norm is one sumsq_many over every group (ABI 1.8:
 * one device wait; the per-group results are added in group order, so its bits are those of
 * one sumsq per group). This strategy is built into the core, whose host always has it. */
#include <stdlib.h>
#include <string.h>

#include "zp/zp_plugin.h"
#include "../plugins/common/grad_buckets.h"

typedef struct {
  const zp_host* h;
  int G;
  zp_group_info* info;
  int overlap;
  zp_grad_buckets bk; /* the bucketed all-reduce (plugins/common/grad_buckets.h) */
  /* the gradient norm's sumsq_many arguments, one per group (filled at open) */
  const void** ss_x;
  zp_dtype* ss_dt;
  size_t* ss_n;
  double* ss_out;
} repl_t;

static int repl_plan(const zp_host* h, zp_plan* p) {
  (void)h;
  for (int g = 0; g < p->n_groups; g++)
    for (int c = 0; c < ZP_CAT_COUNT; c++) p->groups[g].place[c].sharded = 0;
  return ZP_OK;
}

static void repl_close(void* st) {
  repl_t* s = st;
  if (!s) return;
  free(s->info);
  free(s->ss_x);
  free(s->ss_dt);
  free(s->ss_n);
  free(s->ss_out);
  free(s);
}

static int repl_final(void* ctx, int g);

static int repl_open(const zp_host* h, void** state) {
  repl_t* s = calloc(1, sizeof *s);
  if (!s) return ZP_E_NOMEM;
  s->h = h;
  s->G = h->n_groups;
  size_t G1 = (size_t)(s->G > 0 ? s->G : 1);
  s->info = calloc(G1, sizeof(zp_group_info));
  s->ss_x = calloc(G1, sizeof(void*));
  s->ss_dt = calloc(G1, sizeof(zp_dtype));
  s->ss_n = calloc(G1, sizeof(size_t));
  s->ss_out = calloc(G1, sizeof(double));
  if (!s->info || !s->ss_x || !s->ss_dt || !s->ss_n || !s->ss_out) {
    repl_close(s);
    return ZP_E_NOMEM;
  }
  double mb = 25;
  int ov = 1;
  h->config_float(h->ctx, "zero.bucket_mb", &mb);
  h->config_bool(h->ctx, "zero.overlap_comm", &ov);
  s->overlap = ov;
  for (int g = 0; g < s->G; g++) {
    h->group_info(h->ctx, g, &s->info[g]);
    h->set_view(h->ctx, g, ZP_CAT_PARAM, s->info[g].buf[ZP_CAT_PARAM]);
    h->set_view(h->ctx, g, ZP_CAT_GRAD, s->info[g].buf[ZP_CAT_GRAD]);
    s->ss_x[g] = s->info[g].buf[ZP_CAT_GRAD];
    s->ss_dt[g] = s->info[g].dtype[ZP_CAT_GRAD];
    s->ss_n[g] = (size_t)s->info[g].padded;
  }
  zp_gb_init(&s->bk, h, s->info, (size_t)(mb * 1048576.0), repl_final, s);
  *state = s;
  return ZP_OK;
}

/* a reduced group is final: a tier holding its optimizer state may copy it, the core starts
 * its norm sum */
static int repl_final(void* ctx, int g) {
  repl_t* s = ctx;
  const zp_host* h = s->h;
  if (!ZP_TABLE_HAS(h, shard_ready)) return ZP_OK;
  return h->shard_ready(h->ctx, g, 0, s->info[g].padded, s->info[g].buf[ZP_CAT_GRAD], s->info[g].dtype[ZP_CAT_GRAD]);
}

/* one rank: nothing to reduce, so no reason to hold a group back from shard_ready; the tied wte
 * (group 0) also receives the head's gradient: it completes at g == 0, the last */
static int add(repl_t* s, int g) { return zp_gb_add(&s->bk, g, g == 0 || s->h->world_size == 1); }

static int repl_grads_ready(void* st, int g) {
  repl_t* s = st;
  const zp_host* h = s->h;
  int last = h->micro_batches <= 0 || h->micro_batch == h->micro_batches - 1;
  if (!last || !s->overlap) return ZP_OK;
  return add(s, g);
}

static int repl_step(void* st) {
  repl_t* s = st;
  const zp_host* h = s->h;
  int rc;
  if (!s->overlap)
    for (int g = s->G - 1; g >= 0; g--)
      if ((rc = add(s, g))) return rc;
  if ((rc = zp_gb_flush(&s->bk)) || (rc = zp_gb_finish(&s->bk))) return rc;
  /* the norm: every group's sumsq in one call (one device wait), added in group order */
  double ss = 0;
  rc = h->sumsq_many(h->ctx, s->G, s->ss_x, s->ss_dt, s->ss_n, s->ss_out); /* the core's host: always there */
  if (rc) return rc;
  for (int g = 0; g < s->G; g++) ss += s->ss_out[g];
  rc = h->optim_begin(h->ctx, ss);
  if (rc) return rc;
  for (int g = 0; g < s->G; g++) {
    const zp_group_info* in = &s->info[g];
    rc = h->optim_update(h->ctx, g, 0, in->padded, in->buf[ZP_CAT_GRAD], in->dtype[ZP_CAT_GRAD], in->buf[ZP_CAT_PARAM],
                         in->dtype[ZP_CAT_PARAM]);
    if (rc) return rc;
  }
  return ZP_OK;
}

const zp_strategy_ops zp_replicated_strategy = {
  sizeof(zp_strategy_ops), repl_plan, repl_open, repl_close, NULL, NULL, NULL, repl_grads_ready, repl_step,
  ZP_STRATEGY_UPDATE_DEFERRABLE, /* after its step nothing touches a group until its next forward */
};
