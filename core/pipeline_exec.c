/* pipeline_exec.c: the pipeline executor (see pipeline_exec.h for the invariants). */
#include "pipeline_exec.h"
#include "seterr.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "ledger.h"
#include "model.h"
#include "model_tp.h"
#include "trace.h"

typedef struct {
  int g0, g1; /* groups [g0, g1) */
  int vstage;
} pchunk;

struct zp_pipe {
  zp_run* r;
  const zp_schedule* s;
  zp_comm* pp;              /* host pipeline communicator: control (loss, bubble), and data on the CPU */
  zp_comm* dpp;             /* data: activations, gradients, the tied wte (device comm where the
                             * backend has one, e.g. NCCL; else pp) */
  zp_comm* dpp_own;
  int P, V, M, stage, G, L;
  int B, T;
  size_t N;                 /* B * T */
  pchunk* ch;               /* [V] */
  const zp_sched_instr* ins;
  int n_ins;
  int nbuf, zb;
  int recompute;            /* train.recompute: slots keep block inputs; one shared block region */
  int gelu_from;            /* train.recompute_gelu(_blocks): blocks l >= gelu_from share gelu_block */
  void* gelu_block;
  size_t gelu_bytes;
  void* rc_block;           /* that region (ACT), rc_bytes */
  size_t rc_bytes;
  /* activation slots: one ACT block, nbuf slots of slot_bytes; acts[buf * V + chunk] */
  void* act_block;
  size_t act_bytes, slot_bytes;
  zp_acts* acts;
  /* shared scratch (BUFFER): logits (head stage), d_a, d_b, device token ids */
  void* buf_block;
  size_t buf_bytes;
  /* host token ids per micro-batch [M][N] */
  int32_t *h_inp, *h_tgt;
  double* mb_loss;
  int logits_owner;         /* acts index whose dlogits sit in the logits buffer, or -1 */
  /* gradients: full accumulators per held group (the strategy's GRAD buffer when replicated) */
  void** acc;
  size_t* acc_own_bytes;    /* bytes allocated here (0: borrowed) */
  /* tied wte: copy on the last stage (PARAM, its GRAD accumulator, compute copies), receive
   * scratch on the first */
  int has_copy, is_first_tied;
  uint64_t wte_n, g0_padded;
  void *copy_param, *copy_grad, *copy_cparam, *copy_cgrad, *tie_scratch;
  size_t copy_param_bytes, copy_grad_bytes, copy_cparam_bytes, copy_cgrad_bytes, tie_scratch_bytes;
  float dloss;
  /* timing: this step, and sums over the timed steps */
  int steps_done, timed_steps;
  double t_step0, busy_ms, wall_ms;
  double* op_ms;            /* [V * 4] this step: fwd, bwd, bwd_input, bwd_weight sums */
  int* op_n;                /* [V * 4] counts */
  double comm_min_ms, load_ms;
  int load_n;
  double* op_sum;           /* [P * gather_per] sums of the gathered measurements over timed steps */
  double comm_sum, load_sum;
  zp_pipe_bubble bub;
  double *busy_sum, wall_sum; /* [P] */
  double* gather;           /* allgather scratch [P * per] */
  int gather_per;
  int bubble_ready;
};


static void group_label(int g, int G, char* out, size_t n) {
  if (g == 0) snprintf(out, n, "embed");
  else if (g == G - 1) snprintf(out, n, "head");
  else snprintf(out, n, "block.%d", g - 1);
}

int zp_pipe_held(const zp_config* cfg, int pp_i, unsigned char* held, int* first, int n_first, char* err, size_t errlen) {
  int L = (int)zp_cfg_int(cfg, "model.n_layer"), C = (int)zp_cfg_int(cfg, "model.d_model");
  int T = (int)zp_cfg_int(cfg, "model.seq_len"), V = (int)zp_cfg_int(cfg, "model.vocab_size");
  int pad = (int)zp_cfg_int(cfg, "model.vocab_pad");
  int Vp = (V + pad - 1) / pad * pad;
  int P = (int)zp_cfg_int(cfg, "parallel.pp"), ch = (int)zp_cfg_int(cfg, "pipeline.chunks");
  int rc = zp_pipeline_split_for_config(cfg, L, C, T, Vp, first, n_first, err, errlen);
  if (rc) return rc;
  memset(held, 0, (size_t)L + 2);
  for (int c = 0; c < ch; c++) {
    int k = c * P + pp_i;
    for (int g = first[k]; g < first[k + 1]; g++) held[g] = 1;
  }
  return ZP_OK;
}

/* ---------------------------------------------------------------- open / close */

static int lalloc(zp_pipe* p, zp_category cat, size_t bytes, const char* tag, void** out, char* err, size_t errlen) {
  int rc = zp_ledger_alloc(&p->r->ledger, cat, ZP_TIER_GPU, bytes, tag, out);
  if (rc) seterr(err, errlen, "%s", p->r->ledger.last_error);
  return rc;
}

/* A device communicator over the pipeline ranks where the backend provides one (NCCL): the id
 * from stage 0 over the host pipeline communicator, as the runtime does for the dp one.
 * Not exercised on this CPU-only CI (see docs/schedules.md, limits). */
static int device_comm(zp_pipe* p, const zp_config* cfg, char* err, size_t errlen) {
  zp_run* r = p->r;
  p->dpp = p->pp;
  if (r->dry_run || r->ops->struct_size <= offsetof(zp_backend_ops, comm_create) || !r->ops->comm_unique_id ||
      !r->ops->comm_create)
    return ZP_OK;
  uint32_t msg[1 + 64];
  memset(msg, 0, sizeof msg);
  size_t idlen = 256;
  int rc;
  if (p->stage == 0) {
    if ((rc = r->ops->comm_unique_id(r->be, msg + 1, &idlen))) {
      seterr(err, errlen, "pipeline: cannot make a device communicator id (status %d)", rc);
      return rc;
    }
    msg[0] = (uint32_t)idlen;
  }
  if ((rc = zp_comm_broadcast(p->pp, msg, sizeof msg / 4, ZP_I32, 0))) {
    seterr(err, errlen, "pipeline: broadcasting the device communicator id: %s", zp_comm_error(p->pp));
    return rc;
  }
  if ((rc = r->ops->comm_create(r->be, msg + 1, msg[0], p->stage, p->P, zp_cfg_float(cfg, "comm.timeout_s"), &p->dpp_own))) {
    seterr(err, errlen, "pipeline: cannot create the device communicator (status %d)%s%s", rc, r->err[0] ? ": " : "", r->err);
    return rc;
  }
  p->dpp = p->dpp_own;
  return ZP_OK;
}

static int chunk_of_group(const zp_pipe* p, int g) {
  for (int c = 0; c < p->V; c++)
    if (g >= p->ch[c].g0 && g < p->ch[c].g1) return c;
  return -1;
}

int zp_pipe_open(zp_run* r, const zp_config* cfg, const zp_layout* lay, zp_comm* pp, const zp_schedule* s, zp_pipe** out,
                 char* err, size_t errlen) {
  *out = NULL;
  zp_pipe* p = calloc(1, sizeof *p);
  if (!p) {
    seterr(err, errlen, "out of host memory");
    return ZP_E_NOMEM;
  }
  p->r = r;
  p->s = s;
  p->pp = pp;
  p->P = zp_schedule_stages(s);
  p->V = zp_schedule_chunks(s);
  p->M = zp_schedule_micro_batches(s);
  p->stage = lay->pp_i;
  p->G = r->layout.n_groups;
  p->L = r->layout.s.L;
  p->B = r->B;
  p->T = r->T;
  p->N = (size_t)r->B * (size_t)r->T;
  p->logits_owner = -1;
  p->dloss = 1.0f / ((float)r->B * (float)r->T * (float)p->M);
  int rc = ZP_OK;
  /* zp plan opens the executor of each stage on a dry run without a communicator: every
   * allocation goes through the ledger, which only counts */
  if (p->P != lay->pp || (pp ? zp_comm_size(pp) != p->P || zp_comm_rank(pp) != p->stage : !r->dry_run)) {
    seterr(err, errlen, "internal: schedule for %d stages, layout pp %d, pipeline communicator %d ranks (rank %d, stage %d)", p->P,
           lay->pp, pp ? zp_comm_size(pp) : 0, pp ? zp_comm_rank(pp) : -1, p->stage);
    rc = ZP_E_INTERNAL;
    goto fail;
  }
  int K = p->P * p->V;
  int* first = calloc((size_t)K + 1, sizeof(int));
  unsigned char* held = calloc((size_t)p->G, 1);
  p->ch = calloc((size_t)p->V, sizeof(pchunk));
  if (!first || !held || !p->ch) {
    free(first);
    free(held);
    seterr(err, errlen, "out of host memory");
    rc = ZP_E_NOMEM;
    goto fail;
  }
  rc = zp_pipe_held(cfg, p->stage, held, first, K + 1, err, errlen);
  for (int c = 0; !rc && c < p->V; c++) {
    int k = c * p->P + p->stage;
    p->ch[c].g0 = first[k];
    p->ch[c].g1 = first[k + 1];
    p->ch[c].vstage = k;
  }
  for (int g = 0; !rc && g < p->G; g++)
    if (!!held[g] != !!(r->held ? r->held[g] : 1)) {
      seterr(err, errlen, "internal: the run holds other groups than the pipeline split gives stage %d", p->stage);
      rc = ZP_E_INTERNAL;
    }
  free(first);
  free(held);
  if (rc) goto fail;
  if ((rc = device_comm(p, cfg, err, errlen))) goto fail;
  p->ins = zp_schedule_stage(s, p->stage, &p->n_ins);
  p->nbuf = zp_schedule_buffers(s, p->stage);
  for (int i = 0; i < p->n_ins; i++)
    if (p->ins[i].op == ZP_SOP_BWD_INPUT) p->zb = 1;
  p->recompute = zp_cfg_bool(cfg, "train.recompute");
  {
    int gb = zp_cfg_bool(cfg, "train.recompute_gelu") ? p->L : (int)zp_cfg_int(cfg, "train.recompute_gelu_blocks");
    if (gb < 0 || gb > p->L) {
      seterr(err, errlen, "train.recompute_gelu_blocks = %d: must be 0 .. model.n_layer (%d)", gb, p->L);
      rc = ZP_E_INVALID;
      goto fail;
    }
    p->gelu_from = p->recompute ? p->L : p->L - gb; /* block recompute covers the GELU output anyway */
  }
  if ((p->recompute || p->gelu_from < p->L) && p->zb) {
    seterr(err, errlen, "%s with pipeline.schedule = \"%s\", which splits the backward (BWD_INPUT / BWD_WEIGHT), "
           "is not implemented: the weight half would need a block's activations after later recomputes have overwritten "
           "them; use gpipe, 1f1b or interleaved_1f1b, or turn the recompute off",
           p->recompute ? "train.recompute" : "train.recompute_gelu(_blocks)", zp_cfg_str(cfg, "pipeline.schedule"));
    rc = ZP_E_NOT_IMPLEMENTED;
    goto fail;
  }
  {
    /* the split backward (BWD_INPUT / BWD_WEIGHT) has no tensor-parallel form yet: refused on
     * every stage alike (any stage of a zb schedule has a BWD_INPUT) */
    int zb_any = 0;
    for (int d = 0; d < p->P && !zb_any; d++) {
      int n = 0;
      const zp_sched_instr* si = zp_schedule_stage(s, d, &n);
      for (int i = 0; i < n; i++)
        if (si[i].op == ZP_SOP_BWD_INPUT || si[i].op == ZP_SOP_BWD_WEIGHT) zb_any = 1;
    }
    if (zb_any && r->tp.size > 1) {
      seterr(err, errlen, "pipeline.schedule = \"%s\" splits the backward (BWD_INPUT / BWD_WEIGHT), which is not implemented with "
             "parallel.tp = %d (the tensor-parallel backward runs whole): use gpipe, 1f1b or interleaved_1f1b with tensor parallelism",
             zp_cfg_str(cfg, "pipeline.schedule"), r->tp.size);
      rc = ZP_E_NOT_IMPLEMENTED;
      goto fail;
    }
  }
  /* activation slots */
  {
    size_t aux = r->ops->attention_aux_bytes(r->be, p->B, p->T, r->layout.s.C, r->layout.s.NH);
    p->acts = calloc((size_t)(p->nbuf ? p->nbuf : 1) * (size_t)p->V, sizeof(zp_acts));
    if (!p->acts) {
      seterr(err, errlen, "out of host memory");
      rc = ZP_E_NOMEM;
      goto fail;
    }
    size_t es = zp_dtype_size(r->ct), dres_bytes = (p->N * (size_t)r->layout.s.C * es + 255) & ~(size_t)255;
    size_t mx = 0;
    zp_acts tmp;
    if ((rc = zp_acts_arrays_alloc(&tmp, &r->layout, p->B, p->T, r->ct, aux))) {
      seterr(err, errlen, "out of host memory");
      goto fail;
    }
    tmp.recompute_gelu = p->gelu_from < p->L;
    tmp.gelu_from = p->gelu_from;
    tmp.gelu_shared = tmp.recompute_gelu ? (void*)&tmp : NULL; /* non-NULL: layout without the slot copies */
    for (int c = 0; c < p->V; c++) {
      size_t sh = 0;
      size_t b = p->recompute ? zp_acts_chunk_layout_recompute(&tmp, &r->layout, p->ch[c].g0, p->ch[c].g1, NULL, NULL, &sh)
                              : zp_acts_chunk_layout(&tmp, &r->layout, p->ch[c].g0, p->ch[c].g1, p->zb, NULL);
      if (b > mx) mx = b;
      if (sh > p->rc_bytes) p->rc_bytes = sh;
    }
    zp_acts_arrays_free(&tmp);
    p->slot_bytes = ((mx + 255) & ~(size_t)255) + dres_bytes;
    p->act_bytes = p->slot_bytes * (size_t)p->nbuf;
    char tag[96];
    snprintf(tag, sizeof tag, "pipeline activations (%d slots)", p->nbuf);
    if ((rc = lalloc(p, ZP_CAT_ACT, p->act_bytes, tag, &p->act_block, err, errlen))) goto fail;
    if (p->rc_bytes &&
        (rc = lalloc(p, ZP_CAT_ACT, p->rc_bytes, "pipeline recompute block (one, shared by the slots)", &p->rc_block, err, errlen)))
      goto fail;
    if (p->gelu_from < p->L) { /* one GELU-output region for the stage, refilled before each such block's backward */
      p->gelu_bytes = p->N * 4 * (size_t)r->layout.s.C / (size_t)(r->tp.size > 1 ? r->tp.size : 1) * es;
      if ((rc = lalloc(p, ZP_CAT_ACT, p->gelu_bytes, "pipeline GELU outputs (one, shared by the slots)", &p->gelu_block, err,
                       errlen)))
        goto fail;
    }
    /* shared scratch: logits only where the head is */
    int has_head = chunk_of_group(p, p->G - 1) >= 0;
    size_t C = (size_t)r->layout.s.C, Vp = (size_t)r->layout.s.Vp;
    size_t o_logits = 0, o_da = has_head ? (p->N * Vp * es + 255) & ~(size_t)255 : 0;
    size_t o_db = o_da + ((p->N * 4 * C * es + 255) & ~(size_t)255);
    size_t o_in = o_db + ((p->N * 4 * C * es + 255) & ~(size_t)255);
    size_t o_tg = o_in + ((p->N * 4 + 255) & ~(size_t)255);
    size_t o_ti = o_tg + ((p->N * 4 + 255) & ~(size_t)255); /* tensor parallelism: ids, xent stats */
    size_t o_ts = o_ti + ((p->N * 4 + 255) & ~(size_t)255);
    p->buf_bytes = r->tp.size > 1 ? o_ts + 3 * p->N * sizeof(double) : o_tg + p->N * 4;
    /* the attention backward's workspace where the backend asks for one (ABI 1.4), one per stage */
    const int tpn = r->tp.size > 1 ? r->tp.size : 1;
    size_t ws = ZP_TABLE_HAS(r->ops, attention_bwd_ws_bytes) && ZP_TABLE_HAS(r->ops, attention_bwd_ws)
                    ? r->ops->attention_bwd_ws_bytes(r->be, p->B, p->T, r->layout.s.C / tpn, r->layout.s.NH / tpn)
                    : 0;
    size_t o_ws = (p->buf_bytes + 255) & ~(size_t)255;
    if (ws) p->buf_bytes = o_ws + ws;
    if ((rc = lalloc(p, ZP_CAT_BUFFER, p->buf_bytes, "pipeline logits+scratch", &p->buf_block, err, errlen))) goto fail;
    char* bb = p->buf_block;
    for (int b = 0; b < p->nbuf; b++) {
      char* slot = p->act_block ? (char*)p->act_block + (size_t)b * p->slot_bytes : NULL;
      for (int c = 0; c < p->V; c++) {
        zp_acts* a = &p->acts[b * p->V + c];
        if ((rc = zp_acts_arrays_alloc(a, &r->layout, p->B, p->T, r->ct, aux))) {
          seterr(err, errlen, "out of host memory");
          goto fail;
        }
        a->recompute_gelu = p->gelu_from < p->L;
        a->gelu_from = p->gelu_from;
        a->gelu_shared = a->recompute_gelu ? (p->gelu_block ? p->gelu_block : (void*)a) : NULL; /* dry run: a marker */
        if (p->recompute) zp_acts_chunk_layout_recompute(a, &r->layout, p->ch[c].g0, p->ch[c].g1, slot, p->rc_block, NULL);
        else zp_acts_chunk_layout(a, &r->layout, p->ch[c].g0, p->ch[c].g1, p->zb, slot);
        a->dres = slot ? slot + p->slot_bytes - dres_bytes : NULL;
        a->logits = has_head && bb ? bb + o_logits : NULL;
        a->d_a = bb ? bb + o_da : NULL;
        a->d_b = bb ? bb + o_db : NULL;
        a->inputs = bb ? (int32_t*)(bb + o_in) : NULL;
        a->targets = bb ? (int32_t*)(bb + o_tg) : NULL;
        a->attn_ws_bytes = ws;
        a->attn_ws = ws && bb ? bb + o_ws : NULL;
        if (r->tp.size > 1) {
          a->tp_ids = bb ? (int32_t*)(bb + o_ti) : NULL;
          a->tp_stats = bb ? bb + o_ts : NULL;
        }
      }
    }
  }
  p->h_inp = calloc((size_t)p->M * p->N, sizeof(int32_t));
  p->h_tgt = calloc((size_t)p->M * p->N, sizeof(int32_t));
  p->mb_loss = calloc((size_t)p->M, sizeof(double));
  p->acc = calloc((size_t)p->G, sizeof(void*));
  p->acc_own_bytes = calloc((size_t)p->G, sizeof(size_t));
  p->op_ms = calloc((size_t)p->V * 4, sizeof(double));
  p->op_n = calloc((size_t)p->V * 4, sizeof(int));
  p->op_sum = calloc((size_t)p->P * (size_t)(4 + 4 * p->V), sizeof(double));
  p->gather_per = 4 + 4 * p->V;
  p->gather = calloc((size_t)p->P * (size_t)p->gather_per, sizeof(double));
  p->busy_sum = calloc((size_t)p->P, sizeof(double));
  p->bub.stages = p->P;
  p->bub.step_bubble = calloc((size_t)p->P, sizeof(double));
  p->bub.mean_bubble = calloc((size_t)p->P, sizeof(double));
  p->bub.pred_bubble = calloc((size_t)p->P, sizeof(double));
  p->bub.ideal_bubble = calloc((size_t)p->P, sizeof(double));
  if (!p->h_inp || !p->h_tgt || !p->mb_loss || !p->acc || !p->acc_own_bytes || !p->op_ms || !p->op_n || !p->op_sum ||
      !p->gather || !p->busy_sum || !p->bub.step_bubble || !p->bub.mean_bubble || !p->bub.pred_bubble || !p->bub.ideal_bubble) {
    seterr(err, errlen, "out of host memory");
    rc = ZP_E_NOMEM;
    goto fail;
  }
  /* gradient accumulators: the strategy's own buffer when it is full (replicated GRAD) */
  for (int g = 0; g < p->G; g++) {
    zp_group_info* in = &r->groups[g].info;
    if (!in->padded) continue;
    if (!in->place[ZP_CAT_GRAD].sharded && in->place[ZP_CAT_GRAD].tier == ZP_TIER_GPU && (in->buf[ZP_CAT_GRAD] || r->dry_run)) {
      p->acc[g] = in->buf[ZP_CAT_GRAD];
      continue;
    }
    size_t bytes = (size_t)in->padded * zp_dtype_size(r->grad_dt);
    char tag[96];
    snprintf(tag, sizeof tag, "pipeline gradient accumulator (group %d)", g);
    if ((rc = lalloc(p, ZP_CAT_GRAD, bytes, tag, &p->acc[g], err, errlen))) goto fail;
    p->acc_own_bytes[g] = bytes;
  }
  /* tied wte */
  {
    const zp_tensor_desc* wte = zp_model_tensor(&r->layout, 0, ZP_T_WTE);
    p->wte_n = wte->offset + wte->numel;
    p->g0_padded = zp_group_padded(&r->layout, 0, r->world);
    int head_here = chunk_of_group(p, p->G - 1) >= 0, g0_here = chunk_of_group(p, 0) >= 0;
    if (r->layout.uses_head_wte && head_here && !g0_here) {
      p->has_copy = 1;
      p->copy_param_bytes = (size_t)p->g0_padded * zp_dtype_size(r->param_dt);
      p->copy_grad_bytes = (size_t)p->g0_padded * zp_dtype_size(r->grad_dt);
      if ((rc = lalloc(p, ZP_CAT_PARAM, p->copy_param_bytes, "tied wte copy (last stage)", &p->copy_param, err, errlen))) goto fail;
      if ((rc = lalloc(p, ZP_CAT_GRAD, p->copy_grad_bytes, "tied wte copy gradient", &p->copy_grad, err, errlen))) goto fail;
      size_t cb = (size_t)p->g0_padded * zp_dtype_size(r->ct);
      if (r->param_dt != r->ct) {
        p->copy_cparam_bytes = cb;
        if ((rc = lalloc(p, ZP_CAT_BUFFER, cb, "tied wte compute copy", &p->copy_cparam, err, errlen))) goto fail;
      }
      if (r->grad_dt != r->ct) {
        p->copy_cgrad_bytes = cb;
        if ((rc = lalloc(p, ZP_CAT_BUFFER, cb, "tied wte compute grad", &p->copy_cgrad, err, errlen))) goto fail;
      }
    }
    if (r->layout.uses_head_wte && g0_here && !head_here) {
      p->is_first_tied = 1;
      p->tie_scratch_bytes = (size_t)p->wte_n * zp_dtype_size(r->grad_dt);
      if ((rc = lalloc(p, ZP_CAT_BUFFER, p->tie_scratch_bytes, "tied wte gradient receive", &p->tie_scratch, err, errlen))) goto fail;
    }
  }
  *out = p;
  return ZP_OK;
fail:
  zp_pipe_close(p);
  return rc;
}

void zp_pipe_close(zp_pipe* p) {
  if (!p) return;
  zp_ledger* led = &p->r->ledger;
  if (p->dpp_own) zp_comm_destroy(p->dpp_own);
  if (p->acts) {
    for (int i = 0; i < (p->nbuf ? p->nbuf : 1) * p->V; i++) zp_acts_arrays_free(&p->acts[i]);
    free(p->acts);
  }
  if (p->act_bytes) zp_ledger_free(led, ZP_CAT_ACT, ZP_TIER_GPU, p->act_block, p->act_bytes);
  if (p->rc_bytes && p->rc_block) zp_ledger_free(led, ZP_CAT_ACT, ZP_TIER_GPU, p->rc_block, p->rc_bytes);
  if (p->gelu_bytes && p->gelu_block) zp_ledger_free(led, ZP_CAT_ACT, ZP_TIER_GPU, p->gelu_block, p->gelu_bytes);
  if (p->buf_bytes) zp_ledger_free(led, ZP_CAT_BUFFER, ZP_TIER_GPU, p->buf_block, p->buf_bytes);
  if (p->acc && p->acc_own_bytes)
    for (int g = 0; g < p->G; g++)
      if (p->acc_own_bytes[g]) zp_ledger_free(led, ZP_CAT_GRAD, ZP_TIER_GPU, p->acc[g], p->acc_own_bytes[g]);
  if (p->copy_param_bytes) zp_ledger_free(led, ZP_CAT_PARAM, ZP_TIER_GPU, p->copy_param, p->copy_param_bytes);
  if (p->copy_grad_bytes) zp_ledger_free(led, ZP_CAT_GRAD, ZP_TIER_GPU, p->copy_grad, p->copy_grad_bytes);
  if (p->copy_cparam_bytes) zp_ledger_free(led, ZP_CAT_BUFFER, ZP_TIER_GPU, p->copy_cparam, p->copy_cparam_bytes);
  if (p->copy_cgrad_bytes) zp_ledger_free(led, ZP_CAT_BUFFER, ZP_TIER_GPU, p->copy_cgrad, p->copy_cgrad_bytes);
  if (p->tie_scratch_bytes) zp_ledger_free(led, ZP_CAT_BUFFER, ZP_TIER_GPU, p->tie_scratch, p->tie_scratch_bytes);
  free(p->ch);
  free(p->h_inp);
  free(p->h_tgt);
  free(p->mb_loss);
  free(p->acc);
  free(p->acc_own_bytes);
  free(p->op_ms);
  free(p->op_n);
  free(p->op_sum);
  free(p->gather);
  free(p->busy_sum);
  free(p->bub.step_bubble);
  free(p->bub.mean_bubble);
  free(p->bub.pred_bubble);
  free(p->bub.ideal_bubble);
  free(p);
}

/* ---------------------------------------------------------------- views */

static int run_err(zp_pipe* p, int rc, char* err, size_t errlen, const char* what) {
  if (p->r->err[0]) seterr(err, errlen, "%s: %s", what, p->r->err);
  else seterr(err, errlen, "%s failed (status %d)", what, rc);
  return rc;
}

/* compute-dtype parameters of g (the tied wte copy for group 0 on the last stage) */
static int pview(zp_pipe* p, int g) {
  zp_run* r = p->r;
  if (g == 0 && p->has_copy) {
    if (r->param_dt != r->ct) {
      int rc = r->ops->cast(r->be, p->copy_cparam, r->ct, p->copy_param, r->param_dt, (size_t)p->g0_padded);
      if (rc) return rc;
      r->vparam[0] = p->copy_cparam;
    } else {
      r->vparam[0] = p->copy_param;
    }
    return ZP_OK;
  }
  return zp_run_param_view(r, g);
}

static void* gacc(zp_pipe* p, int g) { return g == 0 && p->has_copy ? p->copy_grad : p->acc[g]; }
static uint64_t gpadded(zp_pipe* p, int g) { return g == 0 && p->has_copy ? p->g0_padded : p->r->groups[g].info.padded; }

/* The gradient view of g for one backward phase: the accumulator itself, or (storage dtype !=
 * compute dtype) a zeroed compute-dtype scratch that gflush adds into it afterwards. */
static int gview(zp_pipe* p, int g) {
  zp_run* r = p->r;
  if (r->grad_dt == r->ct) {
    r->vgrad[g] = gacc(p, g);
    return r->vgrad[g] ? ZP_OK : ZP_E_INTERNAL;
  }
  void* sc = g == 0 && p->has_copy ? p->copy_cgrad : r->groups[g].ccopy_grad;
  r->vgrad[g] = sc;
  return r->ops->memset0(r->be, sc, (size_t)gpadded(p, g) * zp_dtype_size(r->ct));
}
static int gflush(zp_pipe* p, int g) {
  zp_run* r = p->r;
  if (r->grad_dt == r->ct) return ZP_OK;
  return r->ops->accumulate(r->be, gacc(p, g), r->grad_dt, r->vgrad[g], r->ct, (size_t)gpadded(p, g), 1.0f);
}

/* ---------------------------------------------------------------- compute */

static int h2d_tokens(zp_pipe* p, zp_acts* a, int mb, int inputs) {
  zp_run* r = p->r;
  if (inputs && r->tp.size > 1) { /* this rank's vocabulary rows of the ids (shared scratch) */
    int rc = zp_tp_prepare_ids(&r->tp, r->ops, r->be, a, p->h_inp + (size_t)mb * p->N);
    if (rc) return rc;
  }
  if (inputs) return r->ops->copy_h2d(r->be, a->inputs, p->h_inp + (size_t)mb * p->N, p->N * sizeof(int32_t));
  return r->ops->copy_h2d(r->be, a->targets, p->h_tgt + (size_t)mb * p->N, p->N * sizeof(int32_t));
}

static int fwd_group(zp_pipe* p, zp_acts* a, int g, float dloss) {
  zp_run* r = p->r;
  int rc;
  if (r->strategy->pre_forward && (rc = r->strategy->pre_forward(r->strategy_state, g))) return rc;
  if ((rc = pview(p, g))) return rc;
  if (g == p->G - 1 && r->layout.uses_head_wte && (rc = pview(p, 0))) return rc;
  double t0 = zp_now_us();
  if ((rc = zp_run_forward_group(r, a, g, dloss))) return rc;
  zp_trace_span(ZP_TR_COMPUTE, "forward", g, t0);
  p->busy_ms += (zp_now_us() - t0) / 1000; /* busy = the compute spans the trace records */
  if (r->strategy->post_forward && (rc = r->strategy->post_forward(r->strategy_state, g))) return rc;
  return ZP_OK;
}

/* mean loss over the micro-batch's real targets, as zp_run_forward computes it */
static int read_loss(zp_pipe* p, zp_acts* a, const int32_t* tgt, double* out) {
  zp_run* r = p->r;
  float* losses = malloc(p->N * sizeof(float));
  if (!losses) return ZP_E_NOMEM;
  int rc = r->ops->copy_d2h(r->be, losses, a->losses, p->N * sizeof(float));
  double sum = 0;
  int cnt = 0;
  for (size_t i = 0; i < p->N; i++)
    if (tgt[i] >= 0) {
      sum += losses[i];
      cnt++;
    }
  free(losses);
  *out = cnt ? sum / cnt : 0.0;
  return rc;
}

static int do_fwd(zp_pipe* p, const zp_sched_instr* in) {
  int ai = in->buf * p->V + in->chunk;
  zp_acts* a = &p->acts[ai];
  const pchunk* c = &p->ch[in->chunk];
  int rc;
  if (c->g0 == 0 && (rc = h2d_tokens(p, a, in->mb, 1))) return rc;
  int head = c->g1 == p->G;
  if (head && (rc = h2d_tokens(p, a, in->mb, 0))) return rc;
  for (int g = c->g0; g < c->g1; g++)
    if ((rc = fwd_group(p, a, g, p->dloss))) return rc;
  if (head) {
    p->logits_owner = ai;
    if ((rc = read_loss(p, a, p->h_tgt + (size_t)in->mb * p->N, &p->mb_loss[in->mb]))) return rc;
  }
  return ZP_OK;
}

static int do_bwd(zp_pipe* p, const zp_sched_instr* in, int phase) {
  zp_run* r = p->r;
  int ai = in->buf * p->V + in->chunk;
  zp_acts* a = &p->acts[ai];
  const pchunk* c = &p->ch[in->chunk];
  int rc;
  int head = c->g1 == p->G;
  if (phase != ZP_BWD_WEIGHT) {
    if (head && p->logits_owner != ai) {
      /* dlogits of this micro-batch were overwritten by a later forward: recompute the head's
       * forward (same ops on the same saved input: the same values) */
      if ((rc = h2d_tokens(p, a, in->mb, 0))) return rc;
      if ((rc = fwd_group(p, a, p->G - 1, p->dloss))) return rc;
      p->logits_owner = ai;
    }
    if (c->g0 == 0 && (rc = h2d_tokens(p, a, in->mb, 1))) return rc;
  }
  for (int g = c->g1 - 1; g >= c->g0; g--) {
    int tied = g == p->G - 1 && r->layout.uses_head_wte;
    int noop = phase == ZP_BWD_WEIGHT && (g == 0 || g == p->G - 1);
    if (noop) continue;
    if ((rc = pview(p, g)) || (rc = gview(p, g))) return rc;
    if (tied && ((rc = pview(p, 0)) || (rc = gview(p, 0)))) return rc;
    double t0 = zp_now_us();
    if (p->recompute && g >= 1 && g <= p->L) { /* refill the shared block region from the saved input */
      if ((rc = zp_run_forward_group(r, a, g, 0.0f))) return rc;
      zp_trace_span(ZP_TR_COMPUTE, "recompute", g, t0);
      p->busy_ms += (zp_now_us() - t0) / 1000;
      t0 = zp_now_us();
    }
    if (r->tp.size > 1 && phase != ZP_BWD_FULL) return ZP_E_NOT_IMPLEMENTED; /* refused at open */
    if ((rc = r->tp.size > 1 ? zp_model_tp_backward_group(&r->layout, r->ops, r->be, a, &r->views, g, &r->tp)
                             : zp_model_backward_group_phase(&r->layout, r->ops, r->be, a, &r->views, g, phase)))
      return rc;
    zp_trace_span(ZP_TR_COMPUTE, phase == ZP_BWD_FULL ? "backward" : phase == ZP_BWD_INPUT ? "backward input" : "backward weight",
                  g, t0);
    p->busy_ms += (zp_now_us() - t0) / 1000;
    if ((rc = gflush(p, g))) return rc;
    if (tied && (rc = gflush(p, 0))) return rc;
  }
  if (head && phase != ZP_BWD_WEIGHT) p->logits_owner = -1;
  return ZP_OK;
}

static int comm_err(zp_pipe* p, const zp_sched_instr* in, int idx, char* err, size_t errlen, int rc) {
  char d[160];
  zp_sched_instr_describe(p->s, in, d, sizeof d);
  seterr(err, errlen, "pipeline stage %d instruction #%d (%s): %s", p->stage, idx + 1, d, zp_comm_error(p->dpp));
  return rc;
}

static int do_comm(zp_pipe* p, const zp_sched_instr* in) {
  zp_run* r = p->r;
  zp_acts* a = &p->acts[in->buf * p->V + in->chunk];
  const pchunk* c = &p->ch[in->chunk];
  size_t n = p->N * (size_t)r->layout.s.C;
  switch (in->op) {
    case ZP_SOP_SEND_ACT: return zp_comm_send(p->dpp, a->res[c->g1 - 1], n, r->ct, in->peer);
    case ZP_SOP_RECV_ACT: return zp_comm_recv(p->dpp, a->res[c->g0 - 1], n, r->ct, in->peer);
    case ZP_SOP_SEND_GRAD: return zp_comm_send(p->dpp, a->dres, n, r->ct, in->peer);
    case ZP_SOP_RECV_GRAD: return zp_comm_recv(p->dpp, a->dres, n, r->ct, in->peer);
  }
  return ZP_E_INTERNAL;
}

/* REDUCE_GRADS: the tied wte's gradient into the first stage, then the strategy's hooks once */
static int reduce_grads(zp_pipe* p, char* err, size_t errlen) {
  zp_run* r = p->r;
  int rc;
  if (p->is_first_tied) {
    if ((rc = zp_comm_recv(p->dpp, p->tie_scratch, (size_t)p->wte_n, r->grad_dt, p->P - 1))) {
      seterr(err, errlen, "pipeline stage %d: receiving the tied wte gradient from stage %d: %s", p->stage, p->P - 1,
             zp_comm_error(p->dpp));
      return rc;
    }
    if ((rc = r->ops->accumulate(r->be, p->acc[0], r->grad_dt, p->tie_scratch, r->grad_dt, (size_t)p->wte_n, 1.0f)))
      return run_err(p, rc, err, errlen, "tied wte gradient");
  } else if (p->has_copy) {
    if ((rc = zp_comm_send(p->dpp, p->copy_grad, (size_t)p->wte_n, r->grad_dt, 0))) {
      seterr(err, errlen, "pipeline stage %d: sending the tied wte gradient to stage 0: %s", p->stage, zp_comm_error(p->dpp));
      return rc;
    }
  }
  r->host.micro_batch = 0;
  r->host.micro_batches = 1; /* one reduction per step: every hook sees "the last micro-batch" */
  for (int g = p->G - 1; g >= 0; g--) {
    zp_group_info* in = &r->groups[g].info;
    if (!in->padded) continue;
    if (r->strategy->pre_backward && (rc = r->strategy->pre_backward(r->strategy_state, g)))
      return run_err(p, rc, err, errlen, "pre_backward");
    void* view = r->groups[g].view[1];
    if (view != p->acc[g]) {
      if (!view) {
        seterr(err, errlen, "internal: group %d has no GRAD view at REDUCE_GRADS", g);
        return ZP_E_INTERNAL;
      }
      if ((rc = r->ops->accumulate(r->be, view, r->grad_dt, p->acc[g], r->grad_dt, (size_t)in->padded, 1.0f)))
        return run_err(p, rc, err, errlen, "gradient accumulation");
    }
    if (r->strategy->grads_ready && (rc = r->strategy->grads_ready(r->strategy_state, g)))
      return run_err(p, rc, err, errlen, "grads_ready");
  }
  return ZP_OK;
}

int zp_pipe_sync_tied(zp_pipe* p, char* err, size_t errlen) {
  zp_run* r = p->r;
  int rc = ZP_OK;
  if (p->is_first_tied) {
    if ((rc = zp_run_fence(r, 0))) {
      seterr(err, errlen, "pipeline stage %d: waiting for the wte update: %s", p->stage, r->err);
      return rc;
    }
    if ((rc = zp_comm_send(p->dpp, r->groups[0].info.buf[ZP_CAT_PARAM], (size_t)p->wte_n, r->param_dt, p->P - 1)))
      seterr(err, errlen, "pipeline stage %d: sending the tied wte to stage %d: %s", p->stage, p->P - 1, zp_comm_error(p->dpp));
  } else if (p->has_copy) {
    if ((rc = zp_comm_recv(p->dpp, p->copy_param, (size_t)p->wte_n, r->param_dt, 0)))
      seterr(err, errlen, "pipeline stage %d: receiving the tied wte from stage 0: %s", p->stage, zp_comm_error(p->dpp));
  }
  return rc;
}

static int zero_grads(zp_pipe* p) {
  zp_run* r = p->r;
  int rc = zp_run_zero_grads(r);
  for (int g = 0; !rc && g < p->G; g++)
    if (p->acc_own_bytes[g]) rc = r->ops->memset0(r->be, p->acc[g], p->acc_own_bytes[g]);
  if (!rc && p->has_copy) rc = r->ops->memset0(r->be, p->copy_grad, p->copy_grad_bytes);
  return rc;
}

static int op_slot(int op) {
  switch (op) {
    case ZP_SOP_FWD: return 0;
    case ZP_SOP_BWD: return 1;
    case ZP_SOP_BWD_INPUT: return 2;
    case ZP_SOP_BWD_WEIGHT: return 3;
  }
  return -1;
}

int zp_pipe_step(zp_pipe* p, float lr, zp_pipe_load_fn load, void* ctx, double* loss_out, char* err, size_t errlen) {
  zp_run* r = p->r;
  int rc = zero_grads(p);
  if (rc) return run_err(p, rc, err, errlen, "zeroing gradients");
  p->t_step0 = zp_now_us();
  p->busy_ms = 0;
  p->wall_ms = -1;
  memset(p->op_ms, 0, (size_t)p->V * 4 * sizeof(double));
  memset(p->op_n, 0, (size_t)p->V * 4 * sizeof(int));
  p->comm_min_ms = -1;
  p->load_ms = 0;
  p->load_n = 0;
  p->logits_owner = -1;
  for (int i = 0; i < p->n_ins; i++) {
    const zp_sched_instr* in = &p->ins[i];
    double t0 = zp_now_us();
    const char* what = zp_sched_op_name(in->op);
    switch (in->op) {
      case ZP_SOP_LOAD:
        rc = load(ctx, in->mb, p->h_inp + (size_t)in->mb * p->N, p->h_tgt + (size_t)in->mb * p->N, err, errlen);
        if (rc) return rc;
        zp_trace_span(ZP_TR_IO, "data", in->mb, t0);
        p->load_ms += (zp_now_us() - t0) / 1000;
        p->load_n++;
        continue;
      case ZP_SOP_FWD: rc = do_fwd(p, in); break;
      case ZP_SOP_BWD: rc = do_bwd(p, in, ZP_BWD_FULL); break;
      case ZP_SOP_BWD_INPUT: rc = do_bwd(p, in, ZP_BWD_INPUT); break;
      case ZP_SOP_BWD_WEIGHT: rc = do_bwd(p, in, ZP_BWD_WEIGHT); break;
      case ZP_SOP_SEND_ACT:
      case ZP_SOP_RECV_ACT:
      case ZP_SOP_SEND_GRAD:
      case ZP_SOP_RECV_GRAD: {
        rc = do_comm(p, in);
        if (rc) return comm_err(p, in, i, err, errlen, rc);
        double ms = (zp_now_us() - t0) / 1000;
        if (p->comm_min_ms < 0 || ms < p->comm_min_ms) p->comm_min_ms = ms;
        zp_trace_span(ZP_TR_COMM, what, in->mb, t0);
        continue;
      }
      case ZP_SOP_REDUCE_GRADS:
        p->wall_ms = (t0 - p->t_step0) / 1000;
        zp_trace_span(ZP_TR_STEP, "pipeline to REDUCE_GRADS", p->stage, p->t_step0); /* the bubble's wall */
        rc = reduce_grads(p, err, errlen);
        if (rc) return rc;
        zp_trace_span(ZP_TR_COMM, "REDUCE_GRADS", 0, t0);
        continue;
      case ZP_SOP_STEP:
        if ((rc = zp_run_step(r, lr))) return run_err(p, rc, err, errlen, "optimizer step");
        if ((rc = zp_pipe_sync_tied(p, err, errlen))) return rc;
        zp_trace_span(ZP_TR_COMPUTE, "optimizer step", p->stage, t0);
        continue;
      default:
        seterr(err, errlen, "internal: pipeline stage %d instruction #%d: unknown op %d", p->stage, i + 1, in->op);
        return ZP_E_INTERNAL;
    }
    if (rc) {
      char d[160];
      zp_sched_instr_describe(p->s, in, d, sizeof d);
      if (r->err[0]) seterr(err, errlen, "pipeline stage %d instruction #%d (%s): %s", p->stage, i + 1, d, r->err);
      else seterr(err, errlen, "pipeline stage %d instruction #%d (%s) failed (status %d)", p->stage, i + 1, d, rc);
      return rc;
    }
    double ms = (zp_now_us() - t0) / 1000;
    int k = op_slot(in->op);
    p->op_ms[in->chunk * 4 + k] += ms;
    p->op_n[in->chunk * 4 + k]++;
  }
  if (p->wall_ms < 0) p->wall_ms = (zp_now_us() - p->t_step0) / 1000;
  /* the loss lives on the last stage: sum over micro-batches as the single-rank loop does,
   * then to every stage (others contribute 0) */
  double loss = 0;
  if (p->stage == p->P - 1)
    for (int m = 0; m < p->M; m++) loss += p->mb_loss[m] / p->M;
  if ((rc = zp_comm_allreduce(p->pp, &loss, 1, ZP_F64, ZP_RED_SUM))) {
    seterr(err, errlen, "pipeline stage %d: sharing the loss: %s", p->stage, zp_comm_error(p->pp));
    return rc;
  }
  *loss_out = loss;
  p->steps_done++;
  p->bubble_ready = 0;
  return ZP_OK;
}

int zp_pipe_forward(zp_pipe* p, const int32_t* inputs, const int32_t* targets, double* loss_out, char* err, size_t errlen) {
  zp_run* r = p->r;
  int rc = ZP_OK;
  size_t n = p->N * (size_t)r->layout.s.C;
  memcpy(p->h_inp, inputs, p->N * sizeof(int32_t));
  memcpy(p->h_tgt, targets, p->N * sizeof(int32_t));
  double loss = 0;
  int K = p->P * p->V;
  for (int c = 0; c < p->V; c++) {
    zp_acts* a = &p->acts[c]; /* slot 0: no step is in flight */
    const pchunk* ch = &p->ch[c];
    int k = ch->vstage;
    if (k > 0 && (rc = zp_comm_recv(p->dpp, a->res[ch->g0 - 1], n, r->ct, (k - 1) % p->P))) break;
    if (ch->g0 == 0 && (rc = h2d_tokens(p, a, 0, 1))) goto run_fail;
    if (ch->g1 == p->G && (rc = h2d_tokens(p, a, 0, 0))) goto run_fail;
    for (int g = ch->g0; g < ch->g1; g++)
      if ((rc = fwd_group(p, a, g, 0.0f))) goto run_fail;
    if (ch->g1 == p->G && (rc = read_loss(p, a, targets, &loss))) goto run_fail;
    if (k < K - 1 && (rc = zp_comm_send(p->dpp, a->res[ch->g1 - 1], n, r->ct, (k + 1) % p->P))) break;
  }
  if (!rc) rc = zp_comm_allreduce(p->pp, &loss, 1, ZP_F64, ZP_RED_SUM);
  if (rc) {
    seterr(err, errlen, "pipeline stage %d, forward only: %s", p->stage, zp_comm_error(p->dpp)[0] ? zp_comm_error(p->dpp) : zp_comm_error(p->pp));
    return rc;
  }
  p->logits_owner = -1;
  *loss_out = loss;
  return ZP_OK;
run_fail:
  return run_err(p, rc, err, errlen, "pipeline forward");
}

/* ---------------------------------------------------------------- bubble */

int zp_pipe_bubble_get(zp_pipe* p, const zp_pipe_bubble** out, char* err, size_t errlen) {
  *out = &p->bub;
  if (p->bubble_ready) return ZP_OK;
  int P = p->P, V = p->V, per = p->gather_per;
  double mine[4 + 4 * ZP_SCHED_MAX_CHUNKS];
  mine[0] = p->busy_ms;
  mine[1] = p->wall_ms;
  mine[2] = p->comm_min_ms < 0 ? 0 : p->comm_min_ms;
  mine[3] = p->load_n ? p->load_ms / p->load_n : 0;
  for (int i = 0; i < 4 * V; i++) mine[4 + i] = p->op_n[i] ? p->op_ms[i] / p->op_n[i] : 0;
  int rc = zp_comm_allgather(p->pp, p->gather, mine, (size_t)per, ZP_F64);
  if (rc) {
    seterr(err, errlen, "pipeline stage %d: gathering the bubble measurements: %s", p->stage, zp_comm_error(p->pp));
    return rc;
  }
  double wall = 0;
  for (int d = 0; d < P; d++)
    if (p->gather[d * per + 1] > wall) wall = p->gather[d * per + 1];
  for (int d = 0; d < P; d++) p->bub.step_bubble[d] = wall > 0 ? 1.0 - p->gather[d * per] / wall : 0;
  p->bub.step_wall_ms = wall;
  /* means over the timed steps: all but the first (warm-up) once there are two or more */
  if (p->steps_done == 1 || p->steps_done == 2) {
    p->timed_steps = 0;
    p->wall_sum = 0;
    p->comm_sum = p->load_sum = 0;
    memset(p->busy_sum, 0, (size_t)P * sizeof(double));
  }
  p->timed_steps++;
  p->wall_sum += wall;
  double comm_min = -1;
  for (int d = 0; d < P; d++) {
    p->busy_sum[d] += p->gather[d * per];
    if (comm_min < 0 || p->gather[d * per + 2] < comm_min) comm_min = p->gather[d * per + 2];
  }
  p->comm_sum += comm_min;
  for (int d = 0; d < P; d++) p->bub.mean_bubble[d] = p->wall_sum > 0 ? 1.0 - p->busy_sum[d] / p->wall_sum : 0;
  p->bub.mean_wall_ms = p->wall_sum / p->timed_steps;
  /* prediction: the simulator with each virtual stage's mean op times over the timed steps
   * (k = c * P + d), the fastest transfer seen as the transfer cost (one where the peer was
   * already waiting: rendezvous time without the wait), reduce and step 0 (wall ends at
   * REDUCE_GRADS) */
  if (p->timed_steps == 1) {
    memset(p->op_sum, 0, (size_t)P * per * sizeof(double));
    p->load_sum = 0;
  }
  for (int i = 0; i < P * per; i++) p->op_sum[i] += p->gather[i];
  zp_op_times* t = calloc((size_t)P * V, sizeof(zp_op_times));
  if (!t) {
    seterr(err, errlen, "out of host memory");
    return ZP_E_NOMEM;
  }
  double nt = p->timed_steps;
  for (int d = 0; d < P; d++)
    for (int c = 0; c < V; c++) {
      zp_op_times* o = &t[c * P + d];
      zp_op_times_default(o);
      const double* m = &p->op_sum[d * per + 4 + c * 4];
      o->fwd = m[0] / nt;
      o->bwd = m[1] > 0 ? m[1] / nt : -1;
      o->bwd_input = m[2] / nt;
      o->bwd_weight = m[3] / nt;
      o->comm = p->comm_sum / nt;
      o->load = p->op_sum[d * per + 3] / nt;
      o->reduce = 0;
      o->step = 0;
    }
  zp_sched_sim sim;
  memset(&sim, 0, sizeof sim);
  rc = zp_schedule_simulate(p->s, t, P * V, &sim, err, errlen);
  if (!rc)
    for (int d = 0; d < P; d++) p->bub.pred_bubble[d] = sim.bubble[d];
  zp_sched_sim_free(&sim);
  free(t);
  if (rc) return rc;
  if (p->steps_done == 1) {
    zp_op_times u;
    zp_op_times_default(&u);
    memset(&sim, 0, sizeof sim);
    rc = zp_schedule_simulate(p->s, &u, 1, &sim, err, errlen);
    if (!rc)
      for (int d = 0; d < P; d++) p->bub.ideal_bubble[d] = sim.bubble[d];
    zp_sched_sim_free(&sim);
    if (rc) return rc;
  }
  p->bubble_ready = 1;
  return ZP_OK;
}

void zp_pipe_print(const zp_pipe* p, FILE* f) {
  char a[32], b[32], m[32];
  fprintf(f, "pipeline stage %d of %d:", p->stage, p->P);
  for (int c = 0; c < p->V; c++) {
    group_label(p->ch[c].g0, p->G, a, sizeof a);
    group_label(p->ch[c].g1 - 1, p->G, b, sizeof b);
    if (p->ch[c].g0 == p->ch[c].g1 - 1) fprintf(f, "%s virtual stage %d = %s", c ? ";" : "", p->ch[c].vstage, a);
    else fprintf(f, "%s virtual stage %d = %s .. %s (%d groups)", c ? ";" : "", p->ch[c].vstage, a, b, p->ch[c].g1 - p->ch[c].g0);
  }
  fprintf(f, "; %d instructions, %d activation slots of %s (peak %d in use)%s%s\n", p->n_ins, p->nbuf,
          zp_fmt_bytes((double)p->slot_bytes, m, sizeof m), zp_schedule_peak_buffers(p->s, p->stage),
          p->zb ? ", split backward (BWD_INPUT/BWD_WEIGHT)" : "", p->has_copy ? ", tied wte copy" : "");
}
