/* runtime_tp.c: tensor parallelism in a run (docs/tensor.md): communicators, the tp layout,
 * the `tensor` plugin, the gradient norm with tp, and reassembling global tensors.
 *
 * Invariants:
 * - zp_train hands in the layout's tp and dp communicators (core/layout.h; zp_run_opts.tp_comm;
 *   borrowed, tp_world NULL) and nothing is split here. A caller that opens a run with the
 *   world communicator and parallel.tp > 1 instead gets it split by zp_run_tp_comms in the same
 *   order, rank = dp_i * tp + tp_i. r->comm becomes the data-parallel communicator, so every strategy
 *   (ZeRO stages, replicated) reduces, shards and gathers over dp only, each tp rank over its
 *   own slices; r->rank/r->world are the data-parallel rank and size.
 * - Tensors whole on every tp rank (LayerNorms, wpe, row-parallel biases) have identical
 *   gradients on all tp ranks (model_tp.h), so identical AdamW updates: nothing is reduced
 *   over tp at the step. The gradient norm counts them once (on tp rank 0) and the split
 *   tensors on every rank, summed over tp.
 */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "comm.h"
#include "ledger.h"
#include "runtime.h"

static void tperr(zp_run* r, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
static void tperr(zp_run* r, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->err, sizeof r->err, fmt, ap);
  va_end(ap);
}

int zp_run_tp_comms(zp_run* r, zp_comm* world, int tp) {
  int rank = zp_comm_rank(world), size = zp_comm_size(world);
  if (tp < 1 || size % tp) {
    tperr(r, "parallel.tp = %d does not divide the %d ranks launched", tp, size);
    return ZP_E_INVALID;
  }
  zp_comm *tpc = NULL, *dpc = NULL;
  int rc = zp_comm_split(world, rank / tp, rank % tp, &tpc);
  if (!rc) rc = zp_comm_split(world, rank % tp, rank / tp, &dpc);
  if (rc) {
    tperr(r, "splitting the tensor- and data-parallel communicators: %s", zp_comm_error(world));
    zp_comm_destroy(tpc);
    return rc;
  }
  r->tp_world = world;
  r->tp.comm = tpc;
  r->tp.size = tp;
  r->tp.rank = zp_comm_rank(tpc);
  r->comm = dpc;
  return ZP_OK;
}

int zp_run_tp_layout(zp_run* r) {
  return zp_model_layout_shard_tp(&r->layout, r->tp.size, r->tp.rank, r->err, sizeof r->err);
}

int zp_run_tp_open(zp_run* r) {
  zp_tp* tp = &r->tp;
  tp->err = r->err;
  tp->errlen = sizeof r->err;
  /* the plugin validates the configuration (and says why it refuses) */
  int rc = zp_plugin_open("tensor", ZP_KIND_PARALLEL, r->cfg->dir, &r->tp_plugin, r->err, sizeof r->err);
  if (rc) {
    char e[sizeof r->err];
    snprintf(e, sizeof e, "%s", r->err);
    tperr(r, "parallel.tp = %d needs the tensor plugin: %.1900s", tp->size, e);
    return rc;
  }
  const zp_parallel_ops* po = r->tp_plugin.desc->parallel;
  if (!po || !po->open) {
    tperr(r, "the tensor plugin (%s) has no open method", r->tp_plugin.path);
    return ZP_E_ABI;
  }
  if ((rc = po->open(&r->host, &r->tp_state))) {
    if (!r->err[0]) tperr(r, "the tensor plugin refused to open (status %d)", rc);
    return rc;
  }
  const zp_backend_ops* o = r->ops;
  if (o->struct_size < offsetof(zp_backend_ops, softmax_xent_vp) + sizeof o->softmax_xent_vp || !o->encoder_masked_fwd ||
      !o->encoder_masked_bwd || !o->softmax_xent_vp) {
    tperr(r, "parallel.tp = %d: the %s backend has no tensor-parallel ops (encoder_masked_fwd/bwd, softmax_xent_vp; ABI 0.3)",
          tp->size, r->binfo.device_name ? r->binfo.device_name : "device");
    return ZP_E_NOT_IMPLEMENTED;
  }
  const zp_gpt2_shape* s = &r->layout.s;
  tp->Vl = s->Vp / tp->size;
  tp->v0 = tp->rank * tp->Vl;
  int nreal = s->V - tp->v0;
  tp->nreal = nreal < 0 ? 0 : nreal > tp->Vl ? tp->Vl : nreal;
  tp->stats_dt = r->ct == ZP_F64 ? ZP_F64 : ZP_F32;
  if (r->dry_run) return ZP_OK;
  tp->host_ids_n = (size_t)r->B * (size_t)r->T;
  tp->host_ids = malloc(tp->host_ids_n * sizeof(int32_t) + 1);
  if (!tp->host_ids) {
    tperr(r, "out of host memory");
    return ZP_E_NOMEM;
  }
  /* device communicator of the tp group (NCCL) where the backend has one: id over the host comm */
  if (tp->comm && o->struct_size > offsetof(zp_backend_ops, comm_create) && o->comm_unique_id && o->comm_create) {
    uint32_t msg[1 + 64];
    memset(msg, 0, sizeof msg);
    size_t idlen = 256;
    if (tp->rank == 0) {
      if ((rc = o->comm_unique_id(r->be, msg + 1, &idlen))) {
        if (!r->err[0]) tperr(r, "cannot make a tensor-parallel device communicator id (status %d)", rc);
        return rc;
      }
      msg[0] = (uint32_t)idlen;
    }
    if ((rc = zp_comm_broadcast(tp->comm, msg, sizeof msg / 4, ZP_I32, 0))) {
      tperr(r, "broadcasting the tensor-parallel device communicator id: %s", zp_comm_error(tp->comm));
      return rc;
    }
    if ((rc = o->comm_create(r->be, msg + 1, msg[0], tp->rank, tp->size, zp_cfg_float(r->cfg, "comm.timeout_s"), &tp->dcomm))) {
      if (!r->err[0]) tperr(r, "cannot create the tensor-parallel device communicator (status %d)", rc);
      return rc;
    }
  }
  return ZP_OK;
}

void zp_run_tp_close(zp_run* r) {
  if (r->tp_plugin.desc && r->tp_plugin.desc->parallel && r->tp_plugin.desc->parallel->close && r->tp_state)
    r->tp_plugin.desc->parallel->close(r->tp_state);
  r->tp_state = NULL;
  zp_plugin_close(&r->tp_plugin);
  if (r->tp.dcomm) zp_comm_destroy(r->tp.dcomm);
  if (r->tp.comm && !r->tp_borrowed) zp_comm_destroy(r->tp.comm);
  if (r->tp_world && r->comm && r->comm != r->tp_world) zp_comm_destroy(r->comm);
  free(r->tp.host_ids);
  if (r->tp_world) r->comm = r->tp_world;
  memset(&r->tp, 0, sizeof r->tp);
  r->tp_world = NULL;
  r->tp_borrowed = 0;
}

/* ---------------- gradient norm ---------------- */

int zp_run_tp_sumsq(zp_run* r, const void* x, zp_dtype dt, size_t n, double* out) {
  *out = 0;
  size_t es = zp_dtype_size(dt);
  const zp_model_layout* L = &r->layout;
  for (int g = 0; g < L->n_groups; g++) {
    const zp_group_info* in = &r->groups[g].info;
    const char* base = in->buf[ZP_CAT_GRAD];
    if (!base || (const char*)x < base || (const char*)x >= base + in->bytes[ZP_CAT_GRAD]) continue;
    uint64_t first = (uint64_t)((const char*)x - base) / es + (in->place[ZP_CAT_GRAD].sharded ? in->shard_off : 0);
    uint64_t end = first + n;
    double s = 0;
    for (int ti = L->group_first_tensor[g]; ti < L->group_first_tensor[g + 1]; ti++) {
      const zp_tensor_desc* t = &L->tensors[ti];
      if (!t->tp_split && r->tp.rank != 0) continue; /* whole tensors: counted on tp rank 0 */
      uint64_t a = t->offset > first ? t->offset : first, z = t->offset + t->numel < end ? t->offset + t->numel : end;
      if (a >= z) continue;
      double p;
      int rc = r->ops->sumsq(r->be, &p, (const char*)x + (a - first) * es, dt, (size_t)(z - a));
      if (rc) return rc;
      s += p;
    }
    *out = s;
    return ZP_OK;
  }
  /* not inside a GRAD holding (a strategy's own scratch): tensors unknown, counted as is */
  static int warned;
  if (!warned) {
    warned = 1;
    fprintf(stderr, "zp: warning: tensor parallelism: the strategy takes a gradient norm over a buffer that is not a group's "
                    "GRAD holding; tensors whole on every tp rank are counted tp times in it\n");
  }
  return r->ops->sumsq(r->be, out, x, dt, n);
}

int zp_run_tp_norm_total(zp_run* r, double* sumsq) {
  if (r->tp.size <= 1 || !r->tp.comm) return ZP_OK;
  int rc = zp_comm_allreduce(r->tp.comm, sumsq, 1, ZP_F64, ZP_RED_SUM);
  if (rc) tperr(r, "tensor-parallel all-reduce of the gradient norm failed: %s", zp_comm_error(r->tp.comm));
  return rc;
}

/* ---------------- global tensors ---------------- */

/* This rank's whole local (tp-sliced) buffer of (g, cat) as doubles, dp shards gathered over
 * the (host) data-parallel communicator. sub 1: Adam v (OPTIM holds m then v). */
static int local_full(zp_run* r, int g, zp_category cat, int sub, double* out) {
  const zp_group_info* in = &r->groups[g].info;
  zp_dtype dt = in->dtype[cat];
  size_t es = zp_dtype_size(dt);
  int sh = in->place[cat].sharded;
  uint64_t held = sh ? in->shard_len : in->padded, base = sh ? in->shard_off : 0;
  void* h = malloc((size_t)held * es + 1);
  if (!h) {
    tperr(r, "out of host memory");
    return ZP_E_NOMEM;
  }
  int rc = zp_run_state_get(r, g, cat, (uint64_t)sub * held * es, h, (size_t)held * es);
  for (uint64_t i = 0; !rc && i < held; i++) {
    out[base + i] = dt == ZP_F64 ? ((double*)h)[i]
                  : dt == ZP_BF16 ? (double)zp_bf16_to_f32(((uint16_t*)h)[i]) : (double)((float*)h)[i];
  }
  free(h);
  if (!rc && sh && r->comm && r->world > 1) {
    rc = zp_comm_allgather(r->comm, out, out + base, (size_t)held, ZP_F64);
    if (rc) tperr(r, "gathering group %d over the data-parallel ranks: %s", g, zp_comm_error(r->comm));
  }
  return rc;
}

/* Collective over the world: (g, cat[, sub]) as the global tensors into out (doubles, the
 * global layout gl, zp_group_padded(gl, g, 1) elements; padding zero). */
int zp_run_tp_gather_global(zp_run* r, const zp_model_layout* gl, int g, zp_category cat, int sub, double* out) {
  const zp_model_layout* L = &r->layout;
  int tp = r->tp.size;
  uint64_t pl = r->groups[g].info.padded;
  double* all = calloc((size_t)pl * tp + 1, sizeof(double));
  if (!all) {
    tperr(r, "out of host memory");
    return ZP_E_NOMEM;
  }
  int rc = local_full(r, g, cat, sub, all + (size_t)pl * r->tp.rank);
  if (!rc && r->tp.comm) {
    rc = zp_comm_allgather(r->tp.comm, all, all + (size_t)pl * r->tp.rank, (size_t)pl, ZP_F64);
    if (rc) tperr(r, "gathering group %d over the tensor-parallel ranks: %s", g, zp_comm_error(r->tp.comm));
  }
  if (!rc) {
    memset(out, 0, (size_t)zp_group_padded(gl, g, 1) * sizeof(double));
    for (int q = 0; q < tp; q++)
      for (int ti = L->group_first_tensor[g]; ti < L->group_first_tensor[g + 1]; ti++) {
        const zp_tensor_desc* t = &L->tensors[ti];
        const zp_tensor_desc* gt = &gl->tensors[ti];
        const double* src = all + (size_t)pl * q + t->offset;
        if (!t->tp_split && q != 0) { /* whole on every tp rank: must be the same bits everywhere */
          if (!rc && memcmp(src, all + t->offset, (size_t)t->numel * sizeof(double)) != 0) {
            tperr(r, "internal: %s (whole on every tensor-parallel rank) differs between tp ranks 0 and %d", t->name, q);
            rc = ZP_E_INTERNAL;
          }
          continue;
        }
        for (uint64_t k = 0; k < t->numel; k++) out[gt->offset + zp_tp_global_index(t, tp, q, k)] = src[k];
      }
  }
  free(all);
  return rc;
}

/* The inverse: this rank's local (tp-sliced) buffer of a group, in its layout order, from the
 * global one (floats, global layout gl). */
void zp_run_tp_slice_global(const zp_run* r, const zp_model_layout* gl, int g, const float* global, float* local) {
  const zp_model_layout* L = &r->layout;
  memset(local, 0, (size_t)r->groups[g].info.padded * sizeof(float));
  if (!r->groups[g].info.padded) return; /* held by another pipeline stage */
  for (int ti = L->group_first_tensor[g]; ti < L->group_first_tensor[g + 1]; ti++) {
    const zp_tensor_desc* t = &L->tensors[ti];
    const zp_tensor_desc* gt = &gl->tensors[ti];
    for (uint64_t k = 0; k < t->numel; k++) local[t->offset + k] = global[gt->offset + zp_tp_global_index(t, r->tp.size, r->tp.rank, k)];
  }
}

int zp_run_tp_get_global_params(zp_run* r, const zp_model_layout* gl, int g, float* out) {
  const zp_group_info* in = &r->groups[g].info;
  zp_category c = (in->buf[ZP_CAT_MASTER] || (in->place[ZP_CAT_MASTER].tier == ZP_TIER_NVME && in->bytes[ZP_CAT_MASTER]))
                      ? ZP_CAT_MASTER : ZP_CAT_PARAM;
  uint64_t n = zp_group_padded(gl, g, 1);
  double* d = malloc((size_t)n * sizeof(double) + 1);
  if (!d) {
    tperr(r, "out of host memory");
    return ZP_E_NOMEM;
  }
  int rc = zp_run_tp_gather_global(r, gl, g, c, 0, d);
  for (uint64_t i = 0; !rc && i < n; i++) out[i] = (float)d[i];
  free(d);
  return rc;
}
