/* layout.c: rank layout over dp x pp x tp and the per-dimension communicators (layout.h). */
#include "layout.h"
#include "seterr.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "comm.h"


int zp_layout_init(zp_layout* l, int world, int rank, int dp, int pp, int tp, char* err, size_t errlen) {
  memset(l, 0, sizeof *l);
  if (world < 1 || rank < 0 || rank >= world) {
    seterr(err, errlen, "layout: rank %d of %d ranks is out of range", rank, world);
    return ZP_E_INVALID;
  }
  if (pp < 1 || tp < 1 || dp < 0) {
    seterr(err, errlen, "layout: parallel.dp %d, pp %d, tp %d: pp and tp must be >= 1, dp >= 0", dp, pp, tp);
    return ZP_E_INVALID;
  }
  if (dp == 0) {
    if (world % (pp * tp) != 0) {
      seterr(err, errlen, "parallel.pp %d x tp %d = %d does not divide the %d ranks launched (parallel.dp = 0 means "
             "world / (pp x tp))", pp, tp, pp * tp, world);
      return ZP_E_INVALID;
    }
    dp = world / (pp * tp);
  }
  if ((long long)dp * pp * tp != world) {
    seterr(err, errlen, "parallel.dp %d x pp %d x tp %d = %lld does not match the %d ranks launched", dp, pp, tp,
           (long long)dp * pp * tp, world);
    return ZP_E_INVALID;
  }
  l->world = world;
  l->rank = rank;
  l->dp = dp;
  l->pp = pp;
  l->tp = tp;
  zp_layout_coords(l, rank, &l->dp_i, &l->pp_i, &l->tp_i);
  return ZP_OK;
}

int zp_layout_rank_of(const zp_layout* l, int dp_i, int pp_i, int tp_i) {
  if (dp_i < 0 || dp_i >= l->dp || pp_i < 0 || pp_i >= l->pp || tp_i < 0 || tp_i >= l->tp) return -1;
  return (dp_i * l->pp + pp_i) * l->tp + tp_i;
}

int zp_layout_coords(const zp_layout* l, int rank, int* dp_i, int* pp_i, int* tp_i) {
  if (rank < 0 || rank >= l->world) return -1;
  *tp_i = rank % l->tp;
  *pp_i = (rank / l->tp) % l->pp;
  *dp_i = rank / (l->tp * l->pp);
  return 0;
}

/* One dimension: size 1 -> a one-rank communicator; the whole world -> the world itself;
 * otherwise a split (collective over world, so every rank takes the same branch). */
static int split_dim(zp_comm* world, int size, int color, int key, zp_comm** out, int* own, const char* what, char* err,
                     size_t errlen) {
  *out = NULL;
  *own = 0;
  if (size == 1) {
    *own = 1;
    return zp_comm_self_create(out, err, errlen);
  }
  if (world && size == zp_comm_size(world)) {
    *out = world;
    return ZP_OK;
  }
  if (!world) {
    seterr(err, errlen, "layout: the %s dimension has %d ranks but there is no communicator", what, size);
    return ZP_E_INVALID;
  }
  int rc = zp_comm_split(world, color, key, out);
  if (rc) {
    seterr(err, errlen, "creating the %s communicator (split): %s", what, zp_comm_error(world));
    return rc;
  }
  *own = 1;
  return ZP_OK;
}

int zp_layout_split(const zp_layout* l, zp_comm* world, zp_layout_comms* c, char* err, size_t errlen) {
  memset(c, 0, sizeof *c);
  int rc = split_dim(world, l->dp, l->pp_i * l->tp + l->tp_i, l->dp_i, &c->dp, &c->own_dp, "data-parallel", err, errlen);
  if (!rc) rc = split_dim(world, l->pp, l->dp_i * l->tp + l->tp_i, l->pp_i, &c->pp, &c->own_pp, "pipeline", err, errlen);
  if (!rc) rc = split_dim(world, l->tp, l->dp_i * l->pp + l->pp_i, l->tp_i, &c->tp, &c->own_tp, "tensor-parallel", err, errlen);
  if (rc) zp_layout_comms_free(c);
  return rc;
}

void zp_layout_comms_free(zp_layout_comms* c) {
  if (c->own_dp) zp_comm_destroy(c->dp);
  if (c->own_pp) zp_comm_destroy(c->pp);
  if (c->own_tp) zp_comm_destroy(c->tp);
  memset(c, 0, sizeof *c);
}
