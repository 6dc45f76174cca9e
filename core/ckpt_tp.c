/* ckpt_tp.c: checkpoints of tensor-parallel runs, in the one checkpoint format (ckpt.h).
 *
 * Invariants:
 * - What is written is the global model: every tensor at its global shape, exactly what a
 *   tp = 1 run of the same model writes (weights from MASTER where the run has one, else PARAM;
 *   Adam m and v), so a checkpoint saved at any tp loads at any other tp, dp or strategy.
 * - Save is a collective over the world: each group is gathered over the data-parallel ranks
 *   (ZeRO shards) and then over the tensor-parallel ranks, and world rank 0 writes it with the
 *   ordinary writer as a replicated, one-rank checkpoint. That costs one whole copy of the
 *   model state (weights, m, v in fp64 staging per group, fp32 on disk) in world rank 0's host
 *   memory: fine at the scale tp is tested on here, a limit at large scale (docs/tensor.md).
 * - Errors are agreed over the world: every rank returns the same status.
 */
#include <stdlib.h>
#include <string.h>

#include "ckpt.h"
#include "comm.h"

/* Over r->tp_world, or (pipeline x tensor parallelism: no tp_world) over the tp, dp and
 * pipeline communicators in turn, so every rank of the job returns the same status (the rank
 * named is then the rank within the first communicator that differs). */
static int agree_over(zp_comm* c, int32_t* v, const char* what, char* err, size_t errlen) {
  if (!c || zp_comm_size(c) <= 1) return ZP_OK;
  if (zp_comm_allreduce(c, v, 1, ZP_I32, ZP_RED_MAX)) {
    snprintf(err, errlen, "%s: agreement between ranks failed: %s", what, zp_comm_error(c));
    return ZP_E_COMM;
  }
  return ZP_OK;
}
static int world_agree(zp_run* r, int rc, const char* what, char* err, size_t errlen) {
  zp_comm* w = r->tp_world;
  zp_comm* cs[3] = {w, NULL, NULL};
  if (!w) cs[0] = r->tp.comm, cs[1] = r->comm, cs[2] = r->pp_comm;
  int me = w ? zp_comm_rank(w) : r->tp.comm ? zp_comm_rank(r->tp.comm) : 0;
  int32_t v = rc ? (int32_t)(((uint32_t)(rc & 0x7fff) << 16) | ((uint32_t)me & 0xffffu)) : 0;
  for (int i = 0; i < 3; i++)
    if (agree_over(cs[i], &v, what, err, errlen)) return ZP_E_COMM;
  if (rc) return rc;
  if (v == 0) return ZP_OK;
  snprintf(err, errlen, "%s failed on rank %d (its message is in its output)", what, (int)(v & 0xffff));
  return (int)((uint32_t)v >> 16);
}

int zp_ckpt_tp_save(zp_run* r, const char* dir, int64_t step, uint64_t data_pos, int keep, const char* config_toml, char* err,
                    size_t errlen) {
  zp_model_layout gl;
  int rc = zp_model_layout_init(&gl, &r->layout.s, err, errlen);
  if (rc) return world_agree(r, rc, "checkpoint save", err, errlen);
  const int G = gl.n_groups;
  /* pipeline stages (r->pp_comm): each stage gathers the groups it holds to its (dp 0, tp 0)
   * rank, which sends them to stage 0's, the one writer */
  zp_comm* pc = r->pp_comm && zp_comm_size(r->pp_comm) > 1 ? r->pp_comm : NULL;
  const int stage = pc ? zp_comm_rank(pc) : 0;
  const int gatherer = r->rank == 0 && r->tp.rank == 0;
  const int writer = gatherer && stage == 0;
  int32_t* holder = calloc((size_t)G * (pc ? (size_t)zp_comm_size(pc) : 1) + 1, sizeof(int32_t));
  int32_t* mine = calloc((size_t)G + 1, sizeof(int32_t));
  /* a separate fp32 master exists (bf16 training, or offloaded fp32) on every rank alike: read it
   * off any group this rank holds (a later pipeline stage does not hold group 0) */
  int have_master = 0;
  for (int g = 0; g < r->layout.n_groups; g++)
    if (r->groups[g].info.padded > 0) {
      have_master = r->groups[g].info.bytes[ZP_CAT_MASTER] > 0;
      break;
    }
  const zp_category wcat = have_master ? ZP_CAT_MASTER : ZP_CAT_PARAM;
  const zp_dtype wdt = have_master ? ZP_F32 : r->param_dt; /* F32, or F64 (fp64 runs) */
  zp_run* P = writer ? calloc(1, sizeof *P) : NULL;
  void** W = calloc((size_t)G, sizeof(void*));
  float** O = calloc((size_t)G, sizeof(float*));
  double* tmp = NULL;
  uint64_t maxp = 0;
  for (int g = 0; g < G; g++)
    if (zp_group_padded(&gl, g, 1) > maxp) maxp = zp_group_padded(&gl, g, 1);
  tmp = malloc((size_t)maxp * sizeof(double) + 1);
  if (!W || !O || !tmp || (writer && !P) || !holder || !mine) {
    snprintf(err, errlen, "checkpoint save: out of host memory");
    rc = ZP_E_NOMEM;
  }
  for (int g = 0; g < G && !rc; g++) mine[g] = r->groups[g].info.padded > 0;
  if (!rc && pc && zp_comm_allgather(pc, holder, mine, (size_t)G, ZP_I32)) {
    snprintf(err, errlen, "checkpoint save: gathering which stage holds which group: %s", zp_comm_error(pc));
    rc = ZP_E_COMM;
  }
  if (!rc && r->ops->synchronize) rc = r->ops->synchronize(r->be);
  /* gather (collective: every rank takes part in every group, error or not, in the same order) */
  for (int g = 0; g < G && !rc; g++) {
    uint64_t n = zp_group_padded(&gl, g, 1);
    if (pc && !mine[g]) { /* another stage's group: stage 0's writer receives it below */
      if (writer) {
        W[g] = calloc((size_t)n + 1, zp_dtype_size(wdt));
        O[g] = calloc((size_t)n * 2 + 1, sizeof(float));
        if (!W[g] || !O[g]) {
          snprintf(err, errlen, "checkpoint save: out of host memory (group %d)", g);
          rc = ZP_E_NOMEM;
        }
      }
      continue;
    }
    if (gatherer) {
      W[g] = calloc((size_t)n + 1, zp_dtype_size(wdt));
      O[g] = calloc((size_t)n * 2 + 1, sizeof(float));
      if (!W[g] || !O[g]) {
        snprintf(err, errlen, "checkpoint save: out of host memory (group %d)", g);
        rc = ZP_E_NOMEM;
        break;
      }
    }
    for (int part = 0; part < 3 && !rc; part++) {
      rc = zp_run_tp_gather_global(r, &gl, g, part == 0 ? wcat : ZP_CAT_OPTIM, part == 2, tmp);
      if (rc) {
        snprintf(err, errlen, "checkpoint save: %s", r->err);
        break;
      }
      if (!gatherer) continue;
      for (uint64_t i = 0; i < n; i++) {
        if (part == 0 && wdt == ZP_F64) ((double*)W[g])[i] = tmp[i];
        else if (part == 0) ((float*)W[g])[i] = (float)tmp[i];
        else O[g][(part == 2 ? n : 0) + i] = (float)tmp[i];
      }
    }
  }
  rc = world_agree(r, rc, "checkpoint save (gathering the tensor-parallel slices)", err, errlen);
  /* pipeline: every group not on stage 0 from its stage's gatherer to the writer, in group order */
  for (int g = 0; pc && g < G && !rc; g++) {
    int src = -1;
    for (int d = 0; d < zp_comm_size(pc) && src < 0; d++)
      if (holder[(size_t)d * G + g]) src = d;
    if (src <= 0 || !gatherer || (stage != 0 && stage != src)) continue;
    uint64_t n = zp_group_padded(&gl, g, 1);
    int crc = stage == 0 ? zp_comm_recv(pc, W[g], (size_t)n, wdt, src) : zp_comm_send(pc, W[g], (size_t)n, wdt, 0);
    if (!crc) crc = stage == 0 ? zp_comm_recv(pc, O[g], (size_t)n * 2, ZP_F32, src) : zp_comm_send(pc, O[g], (size_t)n * 2, ZP_F32, 0);
    if (crc) {
      snprintf(err, errlen, "checkpoint save: group %d from pipeline stage %d to stage 0: %s", g, src, zp_comm_error(pc));
      rc = ZP_E_COMM;
    }
  }
  rc = world_agree(r, rc, "checkpoint save (collecting the pipeline stages' groups)", err, errlen);
  if (!rc && writer) {
    /* a one-rank, replicated, host-tier view of the global model for the ordinary writer */
    P->cfg = r->cfg;
    P->rank = 0;
    P->world = 1;
    P->layout = gl;
    P->ops = r->ops;
    P->be = r->be;
    P->opt = r->opt;
    P->param_dt = r->param_dt;
    P->grad_dt = r->grad_dt;
    P->ct = r->ct;
    P->gplans = r->gplans; /* names */
    P->groups = calloc((size_t)G, sizeof(zp_group_rt));
    if (!P->groups) {
      snprintf(err, errlen, "checkpoint save: out of host memory");
      rc = ZP_E_NOMEM;
    }
    for (int g = 0; g < G && !rc; g++) {
      zp_group_info* in = &P->groups[g].info;
      uint64_t n = zp_group_padded(&gl, g, 1);
      in->numel = gl.group_numel[g];
      in->padded = in->shard_len = n;
      in->shard_off = 0;
      in->tied_to = -1;
      for (int c = 0; c < ZP_CAT_COUNT; c++) {
        in->place[c].sharded = 0;
        in->place[c].tier = ZP_TIER_CPU;
      }
      in->dtype[ZP_CAT_PARAM] = have_master ? r->param_dt : wdt;
      in->dtype[ZP_CAT_GRAD] = r->grad_dt;
      in->dtype[ZP_CAT_MASTER] = ZP_F32;
      in->dtype[ZP_CAT_OPTIM] = ZP_F32;
      in->buf[wcat] = W[g];
      in->bytes[wcat] = (size_t)n * zp_dtype_size(wdt);
      in->buf[ZP_CAT_OPTIM] = O[g];
      in->bytes[ZP_CAT_OPTIM] = (size_t)n * 2 * sizeof(float);
    }
    if (!rc) rc = zp_ckpt_save(P, dir, step, data_pos, keep, config_toml, err, errlen);
  }
  rc = world_agree(r, rc, "checkpoint save", err, errlen);
  if (P) free(P->groups);
  free(P);
  for (int g = 0; g < G; g++) {
    if (W) free(W[g]);
    if (O) free(O[g]);
  }
  free(W);
  free(O);
  free(tmp);
  free(holder);
  free(mine);
  zp_model_layout_free(&gl);
  return rc;
}

int zp_ckpt_tp_load(zp_run* r, const char* ckpt_dir, int64_t* step, uint64_t* data_pos, char* err, size_t errlen) {
  zp_model_layout gl;
  int rc = zp_model_layout_init(&gl, &r->layout.s, err, errlen);
  if (rc) return world_agree(r, rc, "checkpoint load", err, errlen);
  const int G = gl.n_groups;
  float** full[3];
  float** loc[3];
  for (int k = 0; k < 3; k++) {
    full[k] = calloc((size_t)G, sizeof(float*));
    loc[k] = calloc((size_t)G, sizeof(float*));
    if (!full[k] || !loc[k]) rc = ZP_E_NOMEM;
  }
  if (rc) snprintf(err, errlen, "checkpoint load: out of host memory");
  int64_t st = 0;
  uint64_t dpos = 0;
  int step_t = 0;
  if (!rc) rc = zp_ckpt_read_counters(ckpt_dir, &st, &dpos, &step_t, err, errlen);
  for (int k = 0; k < 3 && !rc; k++) rc = zp_ckpt_read_full_state(ckpt_dir, &gl, k, full[k], err, errlen);
  for (int k = 0; k < 3 && !rc; k++)
    for (int g = 0; g < G && !rc; g++) {
      loc[k][g] = malloc((size_t)r->groups[g].info.padded * sizeof(float) + 1);
      if (!loc[k][g]) {
        snprintf(err, errlen, "checkpoint load: out of host memory");
        rc = ZP_E_NOMEM;
        break;
      }
      zp_run_tp_slice_global(r, &gl, g, full[k][g], loc[k][g]);
    }
  rc = world_agree(r, rc, "checkpoint load (reading the global tensors)", err, errlen);
  if (!rc) rc = zp_ckpt_set_full_state(r, loc[0], loc[1], loc[2], err, errlen);
  if (!rc) {
    r->opt.step_t = step_t;
    if (step) *step = st;
    if (data_pos) *data_pos = dpos;
  }
  rc = world_agree(r, rc, "checkpoint load", err, errlen);
  for (int k = 0; k < 3; k++) {
    for (int g = 0; g < G; g++) {
      if (full[k]) free(full[k][g]);
      if (loc[k]) free(loc[k][g]);
    }
    free(full[k]);
    free(loc[k]);
  }
  zp_model_layout_free(&gl);
  return rc;
}
