/* model_tp.c: tensor-parallel GPT-2 (see model_tp.h for the invariants).
 *
 * Where the tp all-reduces (sums, fixed rank order) sit, per micro-batch:
 *   embed    forward: masked lookup of this rank's wte rows (+ wpe on tp rank 0)  -> all-reduce
 *            backward: none (dres is whole on every rank; each rank adds to its own wte rows)
 *   block    forward: attention output projection (row-parallel, bias on tp rank 0) -> all-reduce;
 *            MLP projection (row-parallel, bias on tp rank 0) -> all-reduce
 *            backward: input gradient of QKV (column-parallel) -> all-reduce; of fc -> all-reduce
 *   head     forward: local logits [N, Vp/tp]; cross-entropy: row max -> all-reduce (max),
 *            sum of exp and target logit -> all-reduce (2N values)
 *            backward: input gradient of the classifier (its wte slice) -> all-reduce
 * That is Megatron's f (identity forward, all-reduce backward) before each column-parallel
 * layer and g (all-reduce forward, identity backward) after each row-parallel one. */
#include "model_tp.h"

#include <stdio.h>
#include <string.h>

#include "trace.h"

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

uint64_t zp_tp_global_index(const zp_tensor_desc* t, int tp, int tp_rank, uint64_t k) {
  if (!t->tp_split || tp <= 1) return k;
  uint64_t r = k / (uint64_t)t->cols, c = k % (uint64_t)t->cols;
  if (t->tp_split == ZP_TP_ROWS) {
    uint64_t pl = (uint64_t)t->rows / (uint64_t)t->tp_parts; /* local rows per part */
    uint64_t gp = (uint64_t)t->g_rows / (uint64_t)t->tp_parts; /* global rows per part */
    uint64_t part = r / pl, i = r % pl;
    return (part * gp + (uint64_t)tp_rank * pl + i) * (uint64_t)t->g_cols + c;
  }
  return r * (uint64_t)t->g_cols + (uint64_t)tp_rank * (uint64_t)t->cols + c;
}

int zp_model_layout_shard_tp(zp_model_layout* m, int tp, int tp_rank, char* err, size_t errlen) {
  const zp_gpt2_shape* s = &m->s;
  if (tp <= 1) return ZP_OK;
  if (tp_rank < 0 || tp_rank >= tp) {
    snprintf(err, errlen, "tensor parallelism: rank %d outside tp = %d", tp_rank, tp);
    return ZP_E_INVALID;
  }
  if (s->NH % tp) {
    snprintf(err, errlen, "parallel.tp = %d does not divide model.n_head = %d: every tensor-parallel rank must hold "
             "the same number of attention heads (choose tp among the divisors of n_head)", tp, s->NH);
    return ZP_E_INVALID;
  }
  if (s->Vp % tp) {
    snprintf(err, errlen, "parallel.tp = %d does not divide the padded vocabulary %d (model.vocab_size %d padded to a "
             "multiple of model.vocab_pad): choose a vocab_pad that is a multiple of tp", tp, s->Vp, s->V);
    return ZP_E_INVALID;
  }
  m->tp = tp;
  m->tp_rank = tp_rank;
  for (int g = 0; g < m->n_groups; g++) {
    uint64_t off = 0;
    m->group_numel[g] = 0;
    for (int ti = m->group_first_tensor[g]; ti < m->group_first_tensor[g + 1]; ti++) {
      zp_tensor_desc* t = &m->tensors[ti];
      switch (t->kind) {
        case ZP_T_WTE: case ZP_T_QKVW: case ZP_T_QKVB: case ZP_T_FCW: case ZP_T_FCB:
          t->tp_split = ZP_TP_ROWS;
          t->tp_parts = (t->kind == ZP_T_QKVW || t->kind == ZP_T_QKVB) ? 3 : 1;
          t->rows = t->g_rows / tp;
          break;
        case ZP_T_ATTPROJW: case ZP_T_FCPROJW:
          t->tp_split = ZP_TP_COLS;
          t->tp_parts = 1;
          t->cols = t->g_cols / tp;
          break;
        default:
          t->tp_split = ZP_TP_NONE;
          t->tp_parts = 1;
      }
      t->real_rows = t->rows;
      if (t->kind == ZP_T_WTE) { /* rows of this slice below the real vocabulary */
        int lo = tp_rank * t->rows, real = t->g_real_rows - lo;
        t->real_rows = real < 0 ? 0 : real > t->rows ? t->rows : real;
      }
      t->numel = (uint64_t)t->rows * (uint64_t)t->cols;
      off = align_up(off, ZP_TENSOR_ALIGN);
      t->offset = off;
      off += t->numel;
      m->group_numel[g] += (uint64_t)t->real_rows * (uint64_t)t->cols;
    }
    m->group_span[g] = align_up(off, ZP_TENSOR_ALIGN);
  }
  return ZP_OK;
}

int zp_tp_prepare_ids(zp_tp* tp, const zp_backend_ops* ops, zp_backend* b, zp_acts* a, const int32_t* in) {
  size_t N = (size_t)a->B * (size_t)a->T;
  if (!tp->host_ids || tp->host_ids_n < N) {
    snprintf(tp->err, tp->errlen, "internal: tensor-parallel id scratch of %zu < %zu tokens", tp->host_ids_n, N);
    return ZP_E_INTERNAL;
  }
  for (size_t i = 0; i < N; i++) {
    int32_t id = in[i];
    tp->host_ids[i] = (id >= tp->v0 && id < tp->v0 + tp->Vl) ? id - tp->v0 : -1;
  }
  return ops->copy_h2d(b, a->tp_ids, tp->host_ids, N * sizeof(int32_t));
}

static int tp_allreduce(zp_tp* tp, void* buf, size_t n, zp_dtype dt, zp_redop op, const char* what) {
  zp_comm* c = tp->dcomm ? tp->dcomm : tp->comm;
  double t0 = zp_now_us();
  int rc = c->ops->allreduce(c, buf, n, dt, op);
  zp_trace_span(ZP_TR_COMM, "tp allreduce", (int)n, t0);
  if (rc) snprintf(tp->err, tp->errlen, "tensor-parallel all-reduce (%s) failed: %s", what, c->err);
  return rc;
}

static void* P(const zp_model_layout* m, const zp_views* v, int g, int kind, size_t es) {
  const zp_tensor_desc* t = zp_model_tensor(m, g, kind);
  return (char*)v->param[g] + t->offset * es;
}
static void* G(const zp_model_layout* m, const zp_views* v, int g, int kind, size_t es) {
  const zp_tensor_desc* t = zp_model_tensor(m, g, kind);
  return (char*)v->grad[g] + t->offset * es;
}

#define TRY(x) do { int rc_ = (x); if (rc_) return rc_; } while (0)

int zp_model_tp_forward_group(const zp_model_layout* m, const zp_backend_ops* ops, zp_backend* b, zp_acts* a,
                              const zp_views* v, int g, float dloss, zp_tp* tp) {
  const int B = a->B, T = a->T, C = m->s.C, L = m->s.L, N = B * T;
  const int Cl = C / tp->size, C4l = 4 * C / tp->size, NHl = m->s.NH / tp->size;
  const size_t es = zp_dtype_size(a->ct), NC = (size_t)N * C;
  const int first = tp->rank == 0; /* adds the whole biases and wpe, once */
  if (g == 0) {
    TRY(ops->encoder_masked_fwd(b, a->res[0], a->tp_ids, P(m, v, 0, ZP_T_WTE, es), first ? P(m, v, 0, ZP_T_WPE, es) : NULL,
                                B, T, C));
    return tp_allreduce(tp, a->res[0], NC, a->ct, ZP_RED_SUM, "embedding");
  }
  if (g <= L) {
    int l = g - 1;
    TRY(ops->layernorm_fwd(b, a->ln1[l], a->ln1_mean[l], a->ln1_rstd[l], a->res[l], P(m, v, g, ZP_T_LN1W, es),
                           P(m, v, g, ZP_T_LN1B, es), N, C));
    TRY(ops->matmul_fwd(b, a->qkv[l], a->ln1[l], P(m, v, g, ZP_T_QKVW, es), P(m, v, g, ZP_T_QKVB, es), N, C, 3 * Cl));
    TRY(ops->attention_fwd(b, a->atty[l], a->attaux[l], a->qkv[l], B, T, Cl, NHl));
    TRY(ops->matmul_fwd(b, a->d_a, a->atty[l], P(m, v, g, ZP_T_ATTPROJW, es), first ? P(m, v, g, ZP_T_ATTPROJB, es) : NULL,
                        N, Cl, C));
    TRY(tp_allreduce(tp, a->d_a, NC, a->ct, ZP_RED_SUM, "attention projection"));
    TRY(ops->residual_fwd(b, a->res2[l], a->res[l], a->d_a, NC));
    TRY(ops->layernorm_fwd(b, a->ln2[l], a->ln2_mean[l], a->ln2_rstd[l], a->res2[l], P(m, v, g, ZP_T_LN2W, es),
                           P(m, v, g, ZP_T_LN2B, es), N, C));
    TRY(ops->matmul_fwd(b, a->fch[l], a->ln2[l], P(m, v, g, ZP_T_FCW, es), P(m, v, g, ZP_T_FCB, es), N, C, C4l));
    TRY(ops->gelu_fwd(b, a->fchg[l], a->fch[l], (size_t)N * C4l));
    TRY(ops->matmul_fwd(b, a->d_a, a->fchg[l], P(m, v, g, ZP_T_FCPROJW, es), first ? P(m, v, g, ZP_T_FCPROJB, es) : NULL,
                        N, C4l, C));
    TRY(tp_allreduce(tp, a->d_a, NC, a->ct, ZP_RED_SUM, "MLP projection"));
    return ops->residual_fwd(b, a->res[l + 1], a->res2[l], a->d_a, NC);
  }
  /* head: local logits, vocab-parallel cross-entropy */
  TRY(ops->layernorm_fwd(b, a->lnf, a->lnf_mean, a->lnf_rstd, a->res[L], P(m, v, g, ZP_T_LNFW, es),
                         P(m, v, g, ZP_T_LNFB, es), N, C));
  TRY(ops->matmul_fwd(b, a->logits, a->lnf, P(m, v, 0, ZP_T_WTE, es), NULL, N, C, tp->Vl));
  size_t ss = zp_dtype_size(tp->stats_dt);
  char* st = a->tp_stats;
  TRY(ops->softmax_xent_vp(b, 0, a->losses, a->logits, st, a->targets, N, tp->Vl, tp->nreal, tp->v0, dloss));
  TRY(tp_allreduce(tp, st, (size_t)N, tp->stats_dt, ZP_RED_MAX, "cross-entropy max"));
  TRY(ops->softmax_xent_vp(b, 1, a->losses, a->logits, st, a->targets, N, tp->Vl, tp->nreal, tp->v0, dloss));
  TRY(tp_allreduce(tp, st + (size_t)N * ss, 2 * (size_t)N, tp->stats_dt, ZP_RED_SUM, "cross-entropy sums"));
  return ops->softmax_xent_vp(b, 2, a->losses, a->logits, st, a->targets, N, tp->Vl, tp->nreal, tp->v0, dloss);
}

int zp_model_tp_backward_group(const zp_model_layout* m, const zp_backend_ops* ops, zp_backend* b, zp_acts* a,
                               const zp_views* v, int g, zp_tp* tp) {
  const int B = a->B, T = a->T, C = m->s.C, L = m->s.L, N = B * T;
  const int Cl = C / tp->size, C4l = 4 * C / tp->size, NHl = m->s.NH / tp->size;
  const size_t es = zp_dtype_size(a->ct), NC = (size_t)N * C;
  if (g == L + 1) {
    /* dlogits [N, Vl] in a->logits; the classifier's input gradient is a partial sum */
    TRY(ops->matmul_bwd(b, a->d_a, G(m, v, 0, ZP_T_WTE, es), NULL, a->logits, a->lnf, P(m, v, 0, ZP_T_WTE, es), N, C, tp->Vl));
    TRY(tp_allreduce(tp, a->d_a, NC, a->ct, ZP_RED_SUM, "classifier input gradient"));
    TRY(ops->memset0(b, a->dres, NC * es));
    return ops->layernorm_bwd(b, a->dres, G(m, v, g, ZP_T_LNFW, es), G(m, v, g, ZP_T_LNFB, es), a->d_a, a->res[L],
                              P(m, v, g, ZP_T_LNFW, es), a->lnf_mean, a->lnf_rstd, N, C);
  }
  if (g >= 1) {
    int l = g - 1;
    /* MLP projection (row-parallel): its input gradient is local [N, 4C/tp] */
    if (zp_acts_gelu_refill(a, l, m->s.L)) TRY(ops->gelu_fwd(b, a->fchg[l], a->fch[l], (size_t)N * C4l)); /* shared slot */
    TRY(ops->matmul_bwd(b, a->d_b, G(m, v, g, ZP_T_FCPROJW, es), G(m, v, g, ZP_T_FCPROJB, es), a->dres, a->fchg[l],
                        P(m, v, g, ZP_T_FCPROJW, es), N, C4l, C));
    TRY(ops->gelu_bwd(b, a->d_a, a->fch[l], a->d_b, (size_t)N * C4l));
    /* fc (column-parallel): input gradient is a partial sum over ranks */
    TRY(ops->matmul_bwd(b, a->d_b, G(m, v, g, ZP_T_FCW, es), G(m, v, g, ZP_T_FCB, es), a->d_a, a->ln2[l],
                        P(m, v, g, ZP_T_FCW, es), N, C, C4l));
    TRY(tp_allreduce(tp, a->d_b, NC, a->ct, ZP_RED_SUM, "MLP input gradient"));
    TRY(ops->layernorm_bwd(b, a->dres, G(m, v, g, ZP_T_LN2W, es), G(m, v, g, ZP_T_LN2B, es), a->d_b, a->res2[l],
                           P(m, v, g, ZP_T_LN2W, es), a->ln2_mean[l], a->ln2_rstd[l], N, C));
    TRY(ops->matmul_bwd(b, a->d_a, G(m, v, g, ZP_T_ATTPROJW, es), G(m, v, g, ZP_T_ATTPROJB, es), a->dres, a->atty[l],
                        P(m, v, g, ZP_T_ATTPROJW, es), N, Cl, C));
    TRY(zp_model_attention_bwd(ops, b, a, l, a->d_b, a->d_a, Cl, NHl));
    TRY(ops->matmul_bwd(b, a->d_a, G(m, v, g, ZP_T_QKVW, es), G(m, v, g, ZP_T_QKVB, es), a->d_b, a->ln1[l],
                        P(m, v, g, ZP_T_QKVW, es), N, C, 3 * Cl));
    TRY(tp_allreduce(tp, a->d_a, NC, a->ct, ZP_RED_SUM, "attention input gradient"));
    return ops->layernorm_bwd(b, a->dres, G(m, v, g, ZP_T_LN1W, es), G(m, v, g, ZP_T_LN1B, es), a->d_a, a->res[l],
                              P(m, v, g, ZP_T_LN1W, es), a->ln1_mean[l], a->ln1_rstd[l], N, C);
  }
  return ops->encoder_masked_bwd(b, G(m, v, 0, ZP_T_WTE, es), G(m, v, 0, ZP_T_WPE, es), a->dres, a->tp_ids, B, T, C);
}
