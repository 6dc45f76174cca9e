/* zero_common.h: pieces the shipped ZeRO strategy plugins share, compiled into each plugin
 * (header-only, static functions: plugins never link against each other or the core).
 * Invariants: everything goes through the zp_host services; buffers come from the ledger at
 * open and are never allocated inside a step; a released gather buffer is poisoned. */
#ifndef ZP_ZERO_COMMON_H
#define ZP_ZERO_COMMON_H
#include <stdlib.h>
#include <string.h>

#include "zp/zp_plugin.h"

typedef struct {
  const zp_host* h;
  int G;
  zp_group_info* info;
  /* scratch: one shard of the largest group, grad dtype (reduce-scatter destination) */
  void* shard_scratch;
  size_t shard_scratch_bytes;
  /* transient full-size gradient buffers (stage 2/3): one for group 0 (tied embedding, lives
   * from the head's backward to the embedding's), two rotating for the rest */
  void* gfull0;
  void* gfull[2];
  size_t gfull0_bytes, gfull_bytes;
  int gnext;
  int g0_armed;
  void** gview; /* [G] full gradient buffer armed for each group */
  /* (1.9) reduce-scatters started early (zero.overlap_comm and a host with reduce_scatter_start):
   * per full buffer (0: gfull0, 1-2: gfull[0-1]) its own shard scratch and the reduce-scatter
   * still reading it (group, ticket), finished when the buffer is armed again or at the step */
  int async;
  void* rs_scratch[3];
  int rs_group[3]; /* -1: none pending */
  uint64_t rs_ticket[3];
  /* [G] the gradient norm's sumsq_many arguments (ABI 1.8), filled at each step */
  const void** ss_x;
  zp_dtype* ss_dt;
  size_t* ss_n;
  double* ss_out;
} zero_common;

#define ZC_TRY(x) do { int rc_ = (x); if (rc_) return rc_; } while (0)

static inline size_t zc_dsize(zp_dtype t) { return zp_dtype_size(t); }

static inline int zc_open(zero_common* z, const zp_host* h, int need_full_grads) {
  memset(z, 0, sizeof *z);
  z->h = h;
  z->G = h->n_groups;
  size_t G1 = (size_t)(z->G > 0 ? z->G : 1);
  z->info = calloc(G1, sizeof(zp_group_info));
  z->gview = calloc(G1, sizeof(void*));
  z->ss_x = calloc(G1, sizeof(void*));
  z->ss_dt = calloc(G1, sizeof(zp_dtype));
  z->ss_n = calloc(G1, sizeof(size_t));
  z->ss_out = calloc(G1, sizeof(double));
  if (!z->info || !z->gview || !z->ss_x || !z->ss_dt || !z->ss_n || !z->ss_out) return ZP_E_NOMEM;
  uint64_t max_shard = 0, max_full = 0;
  for (int g = 0; g < z->G; g++) {
    ZC_TRY(h->group_info(h->ctx, g, &z->info[g]));
    if (z->info[g].shard_len > max_shard) max_shard = z->info[g].shard_len;
    if (g > 0 && z->info[g].padded > max_full) max_full = z->info[g].padded;
  }
  zp_dtype gdt = z->info[0].dtype[ZP_CAT_GRAD];
  z->shard_scratch_bytes = (size_t)max_shard * zc_dsize(gdt);
  ZC_TRY(h->alloc(h->ctx, ZP_CAT_BUFFER, ZP_TIER_GPU, z->shard_scratch_bytes, "reduce-scatter scratch", &z->shard_scratch));
  for (int k = 0; k < 3; k++) z->rs_group[k] = -1;
  if (need_full_grads) {
    z->gfull0_bytes = (size_t)z->info[0].padded * zc_dsize(gdt);
    z->gfull_bytes = (size_t)max_full * zc_dsize(gdt);
    ZC_TRY(h->alloc(h->ctx, ZP_CAT_BUFFER, ZP_TIER_GPU, z->gfull0_bytes, "full gradient (embed)", &z->gfull0));
    ZC_TRY(h->alloc(h->ctx, ZP_CAT_BUFFER, ZP_TIER_GPU, z->gfull_bytes, "full gradient A", &z->gfull[0]));
    ZC_TRY(h->alloc(h->ctx, ZP_CAT_BUFFER, ZP_TIER_GPU, z->gfull_bytes, "full gradient B", &z->gfull[1]));
    int ov = 1;
    h->config_bool(h->ctx, "zero.overlap_comm", &ov);
    z->async = ov && ZP_TABLE_HAS(h, reduce_scatter_start) && ZP_TABLE_HAS(h, wait_started) && h->world_size > 1;
    if (z->async) { /* buffer 0 reuses the reduce-scatter scratch; 1 and 2 get their own */
      z->rs_scratch[0] = z->shard_scratch;
      ZC_TRY(h->alloc(h->ctx, ZP_CAT_BUFFER, ZP_TIER_GPU, z->shard_scratch_bytes, "reduce-scatter scratch A", &z->rs_scratch[1]));
      ZC_TRY(h->alloc(h->ctx, ZP_CAT_BUFFER, ZP_TIER_GPU, z->shard_scratch_bytes, "reduce-scatter scratch B", &z->rs_scratch[2]));
    }
  }
  return ZP_OK;
}

static inline void zc_close(zero_common* z) {
  const zp_host* h = z->h;
  if (!h) return;
  h->free(h->ctx, ZP_CAT_BUFFER, ZP_TIER_GPU, z->shard_scratch, z->shard_scratch_bytes);
  if (z->async) {
    h->free(h->ctx, ZP_CAT_BUFFER, ZP_TIER_GPU, z->rs_scratch[1], z->shard_scratch_bytes);
    h->free(h->ctx, ZP_CAT_BUFFER, ZP_TIER_GPU, z->rs_scratch[2], z->shard_scratch_bytes);
  }
  if (z->gfull0_bytes) {
    h->free(h->ctx, ZP_CAT_BUFFER, ZP_TIER_GPU, z->gfull0, z->gfull0_bytes);
    h->free(h->ctx, ZP_CAT_BUFFER, ZP_TIER_GPU, z->gfull[0], z->gfull_bytes);
    h->free(h->ctx, ZP_CAT_BUFFER, ZP_TIER_GPU, z->gfull[1], z->gfull_bytes);
  }
  free(z->info);
  free(z->gview);
  free(z->ss_x);
  free(z->ss_dt);
  free(z->ss_n);
  free(z->ss_out);
  memset(z, 0, sizeof *z);
}

/* ABI 1.5: this rank's reduced gradient shard of g, at grad, is final (the core forwards it
 * to an offload tier only on a step's last micro-batch or inside the step) */
static inline int zc_shard_ready(zero_common* z, int g, const void* grad) {
  const zp_host* h = z->h;
  const zp_group_info* in = &z->info[g];
  if (!ZP_TABLE_HAS(h, shard_ready)) return ZP_OK;
  return h->shard_ready(h->ctx, g, in->shard_off, in->shard_len, grad, in->dtype[ZP_CAT_GRAD]);
}

/* which full buffer p is: 0 gfull0, 1 gfull[0], 2 gfull[1] */
static inline int zc_full_slot(const zero_common* z, const void* p) { return p == z->gfull0 ? 0 : p == z->gfull[0] ? 1 : 2; }
static inline void* zc_full_of_slot(zero_common* z, int k) { return k == 0 ? z->gfull0 : z->gfull[k - 1]; }

/* group g's reduced shard is in scratch: accumulate it into the GRAD shard, report it final,
 * poison the full buffer it came from */
static inline int zc_take_shard(zero_common* z, int g, const void* scratch, void* full) {
  const zp_host* h = z->h;
  const zp_group_info* in = &z->info[g];
  zp_dtype gdt = in->dtype[ZP_CAT_GRAD];
  ZC_TRY(h->dev->accumulate(h->devb, in->buf[ZP_CAT_GRAD], gdt, scratch, gdt, (size_t)in->shard_len, 1.0f));
  ZC_TRY(zc_shard_ready(z, g, in->buf[ZP_CAT_GRAD])); /* final on the last micro-batch (the core checks) */
  h->poison(h->ctx, full, gdt, (size_t)in->padded);
  return ZP_OK;
}

/* (1.9) the reduce-scatter started from full buffer k: wait for it, then take the shard */
static inline int zc_finish_slot(zero_common* z, int k) {
  const int g = z->rs_group[k];
  if (g < 0) return ZP_OK;
  z->rs_group[k] = -1;
  ZC_TRY(z->h->wait_started(z->h->ctx, z->rs_ticket[k]));
  return zc_take_shard(z, g, z->rs_scratch[k], zc_full_of_slot(z, k));
}
/* every reduce-scatter still in flight, oldest first (before the step reads the shards) */
static inline int zc_finish_all(zero_common* z) {
  for (;;) {
    int best = -1;
    for (int k = 0; k < 3; k++)
      if (z->rs_group[k] >= 0 && (best < 0 || z->rs_ticket[k] < z->rs_ticket[best])) best = k;
    if (best < 0) return ZP_OK;
    ZC_TRY(zc_finish_slot(z, best));
  }
}

/* Stage 2/3: give group g (and group 0 for the head) a zeroed full-size gradient buffer (a
 * reduce-scatter still reading the buffer is finished first). */
static inline int zc_arm_full_grad(zero_common* z, int g) {
  const zp_host* h = z->h;
  const zp_group_info* in = &z->info[g];
  size_t bytes = (size_t)in->padded * zc_dsize(in->dtype[ZP_CAT_GRAD]);
  void* buf;
  if (g == 0) {
    if (z->g0_armed) return ZP_OK; /* armed by the head already: holds the head's part */
    buf = z->gfull0;
    z->g0_armed = 1;
  } else {
    buf = z->gfull[z->gnext];
    z->gnext ^= 1;
  }
  if (z->async) ZC_TRY(zc_finish_slot(z, zc_full_slot(z, buf)));
  ZC_TRY(h->dev->memset0(h->devb, buf, bytes));
  z->gview[g] = buf;
  ZC_TRY(h->set_view(h->ctx, g, ZP_CAT_GRAD, buf));
  if (in->tied_to >= 0) ZC_TRY(zc_arm_full_grad(z, in->tied_to));
  return ZP_OK;
}

/* Stage 2/3: reduce-scatter group g's full gradient (averaged over ranks) and accumulate this
 * rank's shard into its GRAD shard. */
static inline int zc_reduce_full_grad(zero_common* z, int g) {
  const zp_host* h = z->h;
  const zp_group_info* in = &z->info[g];
  zp_dtype gdt = in->dtype[ZP_CAT_GRAD];
  void* full = z->gview[g];
  if (!full) {
    h->set_error(h->ctx, "internal: gradient of group %d reduced before it was armed", g);
    return ZP_E_INTERNAL;
  }
  z->gview[g] = NULL;
  if (z->async) { /* 1.9: started now, finished when its buffer is armed again or at the step */
    const int k = zc_full_slot(z, full);
    ZC_TRY(h->reduce_scatter_start(h->ctx, z->rs_scratch[k], full, (size_t)in->shard_len, gdt, ZP_RED_AVG, &z->rs_ticket[k]));
    z->rs_group[k] = g;
  } else {
    ZC_TRY(h->reduce_scatter(h->ctx, z->shard_scratch, full, (size_t)in->shard_len, gdt, ZP_RED_AVG));
    ZC_TRY(zc_take_shard(z, g, z->shard_scratch, full));
  }
  ZC_TRY(h->set_view(h->ctx, g, ZP_CAT_GRAD, NULL));
  if (g == 0) z->g0_armed = 0;
  return ZP_OK;
}

/* The optimizer over this rank's shards. grad_of(g) gives the reduced shard gradient,
 * param_of(g) where the updated parameter shard goes. Norm: sum of shard sumsq over ranks
 * (ABI 1.8: every shard's sumsq in one sumsq_many, one device wait; added in group order
 * either way, so the bits do not depend on which path ran). */
typedef void* (*zc_ptr_fn)(zero_common* z, int g);
static inline int zc_allgather_params_inplace(zero_common* z, int g);
static inline void* zc_param_shard_in_full(zero_common* z, int g);
/* gather = 1 (stages 1, 2): each group's parameters are all-gathered in place right after its
 * update, started (1.9 allgather_start) so they travel while the later groups update, all
 * waited for at the end; without the service, one synchronous all-gather per group after it */
static inline int zc_step_shards(zero_common* z, zc_ptr_fn grad_of, zc_ptr_fn param_of, int gather) {
  const zp_host* h = z->h;
  double ss = 0;
  ZC_TRY(zc_finish_all(z)); /* 1.9: reduce-scatters still in flight */
  if (ZP_TABLE_HAS(h, sumsq_many)) {
    for (int g = 0; g < z->G; g++) {
      z->ss_x[g] = grad_of(z, g);
      z->ss_dt[g] = z->info[g].dtype[ZP_CAT_GRAD];
      z->ss_n[g] = (size_t)z->info[g].shard_len;
    }
    ZC_TRY(h->sumsq_many(h->ctx, z->G, z->ss_x, z->ss_dt, z->ss_n, z->ss_out));
    for (int g = 0; g < z->G; g++) ss += z->ss_out[g];
  } else {
    for (int g = 0; g < z->G; g++) {
      double x;
      const zp_group_info* in = &z->info[g];
      ZC_TRY(h->sumsq(h->ctx, grad_of(z, g), in->dtype[ZP_CAT_GRAD], (size_t)in->shard_len, &x));
      ss += x;
    }
  }
  ZC_TRY(h->allreduce(h->ctx, &ss, 1, ZP_F64, ZP_RED_SUM));
  ZC_TRY(h->optim_begin(h->ctx, ss));
  uint64_t last = 0;
  for (int g = 0; g < z->G; g++) {
    const zp_group_info* in = &z->info[g];
    ZC_TRY(h->optim_update(h->ctx, g, in->shard_off, in->shard_len, grad_of(z, g), in->dtype[ZP_CAT_GRAD], param_of(z, g),
                           in->dtype[ZP_CAT_PARAM]));
    if (!gather) continue;
    if (ZP_TABLE_HAS(h, allgather_start) && ZP_TABLE_HAS(h, wait_started)) {
      uint64_t t = 0;
      ZC_TRY(h->allgather_start(h->ctx, in->buf[ZP_CAT_PARAM], zc_param_shard_in_full(z, g), (size_t)in->shard_len,
                                in->dtype[ZP_CAT_PARAM], &t));
      if (t) last = t;
    } else {
      ZC_TRY(zc_allgather_params_inplace(z, g));
    }
  }
  return last ? h->wait_started(h->ctx, last) : ZP_OK;
}

/* Full replicated PARAM buffer of g, at this rank's shard. */
static inline void* zc_param_shard_in_full(zero_common* z, int g) {
  const zp_group_info* in = &z->info[g];
  return (char*)in->buf[ZP_CAT_PARAM] + (size_t)in->shard_off * zc_dsize(in->dtype[ZP_CAT_PARAM]);
}
/* All-gather PARAM shards into the full replicated buffer (in place). */
static inline int zc_allgather_params_inplace(zero_common* z, int g) {
  const zp_host* h = z->h;
  const zp_group_info* in = &z->info[g];
  return h->allgather(h->ctx, in->buf[ZP_CAT_PARAM], zc_param_shard_in_full(z, g), (size_t)in->shard_len, in->dtype[ZP_CAT_PARAM]);
}
#endif
