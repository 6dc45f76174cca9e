/* replicated.c: the built-in "none" strategy — plain data parallelism, and the reference
 * every ZeRO plugin is compared with. It uses only the public host services, exactly like a
 * plugin would.
 * Invariants: every rank holds full PARAM, GRAD, MASTER and OPTIM; gradients are averaged
 * with one all-reduce per group bucket when the group's backward is done (grads_ready), so
 * the reduction of late groups overlaps the backward of earlier ones where the backend runs
 * communication asynchronously; the optimizer updates the full range on every rank, so
 * parameters stay identical without a gather. */
#include <stdlib.h>
#include <string.h>

#include "zp/zp_plugin.h"

typedef struct {
  const zp_host* h;
  int G;
  zp_group_info* info;
} repl_t;

static int repl_plan(const zp_host* h, zp_plan* p) {
  (void)h;
  for (int g = 0; g < p->n_groups; g++)
    for (int c = 0; c < ZP_CAT_COUNT; c++) p->groups[g].place[c].sharded = 0;
  return ZP_OK;
}

static int repl_open(const zp_host* h, void** state) {
  repl_t* s = calloc(1, sizeof *s);
  if (!s) return ZP_E_NOMEM;
  s->h = h;
  s->G = h->n_groups;
  s->info = calloc((size_t)s->G, sizeof(zp_group_info));
  for (int g = 0; g < s->G; g++) {
    h->group_info(h->ctx, g, &s->info[g]);
    h->set_view(h->ctx, g, ZP_CAT_PARAM, s->info[g].buf[ZP_CAT_PARAM]);
    h->set_view(h->ctx, g, ZP_CAT_GRAD, s->info[g].buf[ZP_CAT_GRAD]);
  }
  *state = s;
  return ZP_OK;
}

static void repl_close(void* st) {
  repl_t* s = st;
  if (!s) return;
  free(s->info);
  free(s);
}

static int repl_grads_ready(void* st, int g) {
  repl_t* s = st;
  const zp_group_info* in = &s->info[g];
  /* the tied wte (group 0) also receives the head's gradient: reduce it when group 0 is done */
  return s->h->allreduce(s->h->ctx, in->buf[ZP_CAT_GRAD], (size_t)in->padded, in->dtype[ZP_CAT_GRAD], ZP_RED_AVG);
}

static int repl_step(void* st) {
  repl_t* s = st;
  const zp_host* h = s->h;
  double ss = 0;
  for (int g = 0; g < s->G; g++) {
    double x;
    int rc = h->sumsq(h->ctx, s->info[g].buf[ZP_CAT_GRAD], s->info[g].dtype[ZP_CAT_GRAD], (size_t)s->info[g].padded, &x);
    if (rc) return rc;
    ss += x;
  }
  int rc = h->optim_begin(h->ctx, ss);
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
};
