/* norm_overlap.c: the gradient norm's sums of squares, started while the backward goes on.
 *
 * A strategy computes the norm at its step with one sumsq_many over its groups' final gradient
 * buffers (ABI 1.8). Those buffers are final earlier: the strategy says so per group with
 * shard_ready (ABI 1.5) during the backward. Where the backend has sumsq_start / sumsq_collect
 * and a side stream (ABI 1.9, 1.7), the core starts each reported group's sum of squares on the
 * side stream at that moment, so it runs beside the backward's remaining work instead of after
 * it; the strategy's later sumsq_many is answered from those results (one copy_wait on the last
 * start's ticket, one collect) for every tensor that matches a start (the same pointer, dtype
 * and length), and by the backend's sumsq_many for the others. No strategy changes.
 *
 * Invariants: the results are bit for bit what sumsq_many gives (the backend contract says a
 * start equals sumsq); a group's slot is its index (groups >= ZP_SUMSQ_START_SLOTS are not
 * started); a start reported twice in a step is issued twice (the later one wins: the side
 * stream runs in order); every answer forgets all starts, and so does each step's beginning
 * (zp_norm_reset), so a start can never answer another step; nothing is allocated after open.
 * train.overlap_norm = true turns it on (off by default: no gain measured at GPT-2 1.5B on an
 * H100, docs/perf.md 27; the same bits either way).
 */
#include "norm_overlap.h"

#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "runtime.h"

struct zp_norm_pre {
  int G;        /* groups with a slot: min(n_groups, ZP_SUMSQ_START_SLOTS) */
  int any;      /* some start since the last answer */
  uint64_t ticket; /* the last start's side_end ticket */
  uint64_t hits;   /* tensors answered from starts since open */
  uint64_t asked;  /* tensors asked for since open */
  const void** x;  /* [G] the started buffer, or NULL */
  zp_dtype* dt;
  size_t* n;
  double* res;           /* [G] collect's results */
  int* slot;             /* [count <= G] per requested tensor: its slot, or -1 */
  const void** mx;       /* [G] the requested tensors no start matched ... */
  zp_dtype* mdt;
  size_t* mn;
  double* mout;
};

int zp_norm_open(zp_run* r) {
  r->norm = NULL;
  const zp_backend_ops* o = r->ops;
  if (r->dry_run || r->tp.size > 1 || !zp_cfg_bool(r->cfg, "train.overlap_norm") || !ZP_TABLE_HAS(o, sumsq_start) ||
      !ZP_TABLE_HAS(o, sumsq_collect) || !ZP_TABLE_HAS(o, side_begin) || !ZP_TABLE_HAS(o, side_end) ||
      !ZP_TABLE_HAS(o, copy_wait) || !ZP_TABLE_HAS(o, sumsq_many) || r->layout.n_groups <= 0)
    return ZP_OK;
  zp_norm_pre* p = calloc(1, sizeof *p);
  if (!p) return ZP_E_NOMEM;
  p->G = r->layout.n_groups < ZP_SUMSQ_START_SLOTS ? r->layout.n_groups : ZP_SUMSQ_START_SLOTS;
  size_t G = (size_t)p->G;
  p->x = calloc(G, sizeof *p->x);
  p->dt = calloc(G, sizeof *p->dt);
  p->n = calloc(G, sizeof *p->n);
  p->res = calloc(G, sizeof *p->res);
  p->slot = calloc(G, sizeof *p->slot);
  p->mx = calloc(G, sizeof *p->mx);
  p->mdt = calloc(G, sizeof *p->mdt);
  p->mn = calloc(G, sizeof *p->mn);
  p->mout = calloc(G, sizeof *p->mout);
  r->norm = p;
  if (!p->x || !p->dt || !p->n || !p->res || !p->slot || !p->mx || !p->mdt || !p->mn || !p->mout) {
    zp_norm_close(r);
    return ZP_E_NOMEM;
  }
  return ZP_OK;
}

void zp_norm_close(zp_run* r) {
  zp_norm_pre* p = r->norm;
  if (!p) return;
  free(p->x);
  free(p->dt);
  free(p->n);
  free(p->res);
  free(p->slot);
  free(p->mx);
  free(p->mdt);
  free(p->mn);
  free(p->mout);
  free(p);
  r->norm = NULL;
}

void zp_norm_reset(zp_run* r) {
  zp_norm_pre* p = r->norm;
  if (!p || !p->any) return;
  memset(p->x, 0, (size_t)p->G * sizeof *p->x);
  p->any = 0;
}

uint64_t zp_norm_hits(const zp_run* r) { return r->norm ? r->norm->hits : 0; }
uint64_t zp_norm_asked(const zp_run* r) { return r->norm ? r->norm->asked : 0; }

int zp_norm_start(zp_run* r, int g, const void* grad, zp_dtype dt, uint64_t count) {
  zp_norm_pre* p = r->norm;
  if (!p || g < 0 || g >= p->G || !grad) return ZP_OK;
  int rc = r->ops->side_begin(r->be);
  if (rc) return rc;
  rc = r->ops->sumsq_start(r->be, g, grad, dt, (size_t)count);
  uint64_t t = 0;
  int rc2 = r->ops->side_end(r->be, &t);
  if (rc) return rc;
  if (rc2) return rc2;
  p->x[g] = grad;
  p->dt[g] = dt;
  p->n[g] = (size_t)count;
  p->ticket = t;
  p->any = 1;
  return ZP_OK;
}

int zp_norm_sumsq_many(zp_run* r, int count, const void* const* xs, const zp_dtype* dts, const size_t* ns, double* out) {
  zp_norm_pre* p = r->norm;
  const zp_backend_ops* o = r->ops;
  if (p && count > 0) p->asked += (uint64_t)count;
  if (!p || !p->any || count > p->G) {
    zp_norm_reset(r);
    return o->sumsq_many(r->be, count, xs, dts, ns, out);
  }
  int hits = 0, miss = 0, top = 0;
  for (int i = 0; i < count; i++) {
    p->slot[i] = -1;
    for (int g = 0; g < p->G; g++) /* G is small (groups); the strategies ask in group order */
      if (p->x[(i + g) % p->G] == xs[i] && xs[i] && p->dt[(i + g) % p->G] == dts[i] && p->n[(i + g) % p->G] == ns[i]) {
        p->slot[i] = (i + g) % p->G;
        break;
      }
    if (p->slot[i] >= 0) {
      hits++;
      if (p->slot[i] + 1 > top) top = p->slot[i] + 1;
    } else {
      p->mx[miss] = xs[i];
      p->mdt[miss] = dts[i];
      p->mn[miss] = ns[i];
      miss++;
    }
  }
  zp_norm_reset(r); /* whatever happens below, these starts are used up */
  int rc = ZP_OK;
  if (hits) {
    if ((rc = o->copy_wait(r->be, p->ticket, 1))) return rc;
    if ((rc = o->sumsq_collect(r->be, top, p->res))) return rc;
  }
  if (miss && (rc = o->sumsq_many(r->be, miss, p->mx, p->mdt, p->mn, p->mout))) return rc;
  for (int i = 0, k = 0; i < count; i++) out[i] = p->slot[i] >= 0 ? p->res[p->slot[i]] : p->mout[k++];
  p->hits += (uint64_t)hits;
  return ZP_OK;
}
