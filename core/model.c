/* model.c: GPT-2 layout, counter-based init, activation memory, and forward/backward per
 * group over the backend ops (see model.h for the invariants). */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ledger.h"
#include "rng.h"

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

static uint64_t fnv1a(const char* s) {
  uint64_t h = 1469598103934665603ULL;
  for (; *s; s++) { h ^= (unsigned char)*s; h *= 1099511628211ULL; }
  return h;
}

int zp_model_layout_init(zp_model_layout* m, const zp_gpt2_shape* s, char* err, size_t errlen) {
  memset(m, 0, sizeof *m);
  if (s->L < 1 || s->NH < 1 || s->C < 1 || s->C % s->NH || s->V < 2 || s->Vp < s->V || s->maxT < 1) {
    snprintf(err, errlen, "invalid GPT-2 shape: n_layer %d n_head %d d_model %d vocab %d (padded %d) seq_len %d",
             s->L, s->NH, s->C, s->V, s->Vp, s->maxT);
    return ZP_E_INVALID;
  }
  m->s = *s;
  int L = s->L, C = s->C;
  m->n_groups = L + 2;
  m->n_tensors = 2 + L * ZP_BLOCK_TENSORS + 2;
  m->tensors = calloc((size_t)m->n_tensors, sizeof(zp_tensor_desc));
  m->group_first_tensor = calloc((size_t)m->n_groups + 1, sizeof(int));
  m->group_numel = calloc((size_t)m->n_groups, sizeof(uint64_t));
  m->group_span = calloc((size_t)m->n_groups, sizeof(uint64_t));
  if (!m->tensors || !m->group_first_tensor || !m->group_numel || !m->group_span) {
    zp_model_layout_free(m);
    snprintf(err, errlen, "out of host memory for the model layout");
    return ZP_E_NOMEM;
  }
  double std = 0.02, proj_std = 0.02 / sqrt(2.0 * L);
  int ti = 0;
  uint64_t off = 0;
  int g = 0;
#define ADD(KIND, NAME, LAYER, R, COLS, DECAY, INIT, STD)                       \
  do {                                                                           \
    zp_tensor_desc* t = &m->tensors[ti++];                                       \
    snprintf(t->name, sizeof t->name, "%s", NAME);                               \
    t->kind = KIND; t->group = g; t->layer = LAYER; t->rows = R; t->cols = COLS; \
    t->real_rows = R; t->numel = (uint64_t)(R) * (uint64_t)(COLS);               \
    off = align_up(off, ZP_TENSOR_ALIGN); t->offset = off; off += t->numel;      \
    t->decay = DECAY; t->init = INIT; t->std = STD;                              \
    t->g_rows = R; t->g_cols = COLS; t->g_real_rows = R;                         \
    m->group_numel[g] += t->numel;                                               \
  } while (0)
  m->group_first_tensor[0] = 0;
  ADD(ZP_T_WTE, "wte.weight", -1, s->Vp, C, 1, ZP_INIT_NORMAL, std);
  m->tensors[ti - 1].real_rows = s->V;
  m->tensors[ti - 1].g_real_rows = s->V;
  m->group_numel[0] -= (uint64_t)(s->Vp - s->V) * (uint64_t)C; /* padding rows are not parameters */
  ADD(ZP_T_WPE, "wpe.weight", -1, s->maxT, C, 1, ZP_INIT_NORMAL, 0.01);
  m->group_span[0] = align_up(off, ZP_TENSOR_ALIGN);
  for (int l = 0; l < L; l++) {
    g = 1 + l;
    off = 0;
    m->group_first_tensor[g] = ti;
    char nm[64];
#define NAMED(suffix) (snprintf(nm, sizeof nm, "h.%d.%s", l, suffix), nm)
    ADD(ZP_T_LN1W, NAMED("ln_1.weight"), l, C, 1, 0, ZP_INIT_ONES, 0);
    ADD(ZP_T_LN1B, NAMED("ln_1.bias"), l, C, 1, 0, ZP_INIT_ZEROS, 0);
    ADD(ZP_T_QKVW, NAMED("attn.c_attn.weight"), l, 3 * C, C, 1, ZP_INIT_NORMAL, std);
    ADD(ZP_T_QKVB, NAMED("attn.c_attn.bias"), l, 3 * C, 1, 0, ZP_INIT_ZEROS, 0);
    ADD(ZP_T_ATTPROJW, NAMED("attn.c_proj.weight"), l, C, C, 1, ZP_INIT_NORMAL, proj_std);
    ADD(ZP_T_ATTPROJB, NAMED("attn.c_proj.bias"), l, C, 1, 0, ZP_INIT_ZEROS, 0);
    ADD(ZP_T_LN2W, NAMED("ln_2.weight"), l, C, 1, 0, ZP_INIT_ONES, 0);
    ADD(ZP_T_LN2B, NAMED("ln_2.bias"), l, C, 1, 0, ZP_INIT_ZEROS, 0);
    ADD(ZP_T_FCW, NAMED("mlp.c_fc.weight"), l, 4 * C, C, 1, ZP_INIT_NORMAL, std);
    ADD(ZP_T_FCB, NAMED("mlp.c_fc.bias"), l, 4 * C, 1, 0, ZP_INIT_ZEROS, 0);
    ADD(ZP_T_FCPROJW, NAMED("mlp.c_proj.weight"), l, C, 4 * C, 1, ZP_INIT_NORMAL, proj_std);
    ADD(ZP_T_FCPROJB, NAMED("mlp.c_proj.bias"), l, C, 1, 0, ZP_INIT_ZEROS, 0);
#undef NAMED
    m->group_span[g] = align_up(off, ZP_TENSOR_ALIGN);
  }
  g = L + 1;
  off = 0;
  m->group_first_tensor[g] = ti;
  ADD(ZP_T_LNFW, "ln_f.weight", -1, C, 1, 0, ZP_INIT_ONES, 0);
  ADD(ZP_T_LNFB, "ln_f.bias", -1, C, 1, 0, ZP_INIT_ZEROS, 0);
  m->group_span[g] = align_up(off, ZP_TENSOR_ALIGN);
  m->group_first_tensor[m->n_groups] = ti;
#undef ADD
  m->uses_head_wte = 1;
  m->tp = 1;
  for (int i = 0; i < m->n_groups; i++) m->total_params += m->group_numel[i];
  return ZP_OK;
}

void zp_model_layout_free(zp_model_layout* m) {
  free(m->tensors);
  free(m->group_first_tensor);
  free(m->group_numel);
  free(m->group_span);
  memset(m, 0, sizeof *m);
}

uint64_t zp_group_padded(const zp_model_layout* m, int g, int world) {
  uint64_t unit = (uint64_t)(world < 1 ? 1 : world) * ZP_SHARD_ALIGN_ELEMS;
  return align_up(m->group_span[g], unit);
}

const zp_tensor_desc* zp_model_tensor(const zp_model_layout* m, int g, int kind) {
  for (int i = m->group_first_tensor[g]; i < m->group_first_tensor[g + 1]; i++)
    if (m->tensors[i].kind == kind) return &m->tensors[i];
  return NULL;
}

void zp_model_init_range(const zp_model_layout* m, uint64_t seed, int g, uint64_t first,
                         uint64_t count, void* dst, zp_dtype dt) {
  for (uint64_t i = 0; i < count; i++) {
    if (dt == ZP_F64) ((double*)dst)[i] = 0.0;
    else ((float*)dst)[i] = 0.0f;
  }
  for (int ti = m->group_first_tensor[g]; ti < m->group_first_tensor[g + 1]; ti++) {
    const zp_tensor_desc* t = &m->tensors[ti];
    uint64_t lo = t->offset, hi = t->offset + t->numel;
    if (hi <= first || lo >= first + count) continue;
    uint64_t a = lo > first ? lo : first, z = hi < first + count ? hi : first + count;
    uint64_t stream = fnv1a(t->name);
    uint64_t real_end = (uint64_t)t->real_rows * (uint64_t)t->cols;
    /* each element is a pure function of (seed, tensor, index): parallel and thread-count-free */
#pragma omp parallel for schedule(static) if (z - a > 65536)
    for (uint64_t e = a; e < z; e++) {
      uint64_t k = e - lo;
      int real = k < real_end;
      if (t->tp_split) { /* a tensor-parallel slice: the value of its global element */
        k = zp_tp_global_index(t, m->tp, m->tp_rank, k);
        real = k / (uint64_t)t->g_cols < (uint64_t)t->g_real_rows;
      }
      double v;
      if (!real) v = 0.0;
      else if (t->init == ZP_INIT_ONES) v = 1.0;
      else if (t->init == ZP_INIT_ZEROS) v = 0.0;
      else v = t->std * zp_rng_normal(seed, stream, k);
      if (dt == ZP_F64) ((double*)dst)[e - first] = v;
      else ((float*)dst)[e - first] = (float)v;
    }
  }
}

double zp_model_flops_per_token(const zp_model_layout* m, int T) {
  /* N counts the parameters that take part in matmuls per token, incl. the tied classifier */
  double N = (double)m->total_params;
  return 6.0 * N + 12.0 * m->s.L * (double)m->s.C * (double)T;
}

/* ---------------- activations ---------------- */

typedef struct {
  size_t off;
  int dry;
} carve_t;

static void* carve(char* base, carve_t* c, size_t bytes) {
  size_t o = (c->off + 255) & ~(size_t)255;
  c->off = o + bytes;
  return base ? base + o : NULL;
}

/* one block's saved activations (l), C the residual width, Cl / C4l this rank's attention and
 * MLP widths (tensor parallelism; C and 4C otherwise) */
static void carve_block(zp_acts* a, int l, char* base, carve_t* ca, size_t N, size_t es, size_t C, size_t Cl, size_t C4l) {
  a->ln1[l] = carve(base, ca, N * C * es);
  a->ln1_mean[l] = carve(base, ca, N * sizeof(float));
  a->ln1_rstd[l] = carve(base, ca, N * sizeof(float));
  a->qkv[l] = carve(base, ca, N * 3 * Cl * es);
  a->atty[l] = carve(base, ca, N * Cl * es);
  a->attaux[l] = carve(base, ca, a->attn_aux_bytes);
  a->res2[l] = carve(base, ca, N * C * es);
  a->ln2[l] = carve(base, ca, N * C * es);
  a->ln2_mean[l] = carve(base, ca, N * sizeof(float));
  a->ln2_rstd[l] = carve(base, ca, N * sizeof(float));
  a->fch[l] = carve(base, ca, N * C4l * es);
  if (a->recompute_gelu && l >= a->gelu_from && a->gelu_shared) a->fchg[l] = a->gelu_shared; /* pipeline: per stage */
  else if (a->recompute_gelu && l > a->gelu_from) a->fchg[l] = a->fchg[a->gelu_from]; /* one slot, refilled per block */
  else a->fchg[l] = carve(base, ca, N * C4l * es);
}

static int acts_layout(zp_acts* a, const zp_model_layout* m, char* act, char* buf) {
  int L = m->s.L, C = m->s.C, Vp = m->s.Vp;
  size_t N = (size_t)a->B * (size_t)a->T, es = zp_dtype_size(a->ct);
  /* tensor parallelism: this rank's heads, MLP columns and vocabulary rows (tp = 1: all) */
  const int tp = m->tp > 1 ? m->tp : 1;
  const size_t Cl = (size_t)C / tp, C4l = (size_t)4 * C / tp, Vl = (size_t)Vp / tp;
  const size_t Dw = C4l > (size_t)C ? C4l : (size_t)C; /* backward scratch width */
  carve_t ca = {0, 0}, cb = {0, 0};
  for (int l = 0; l <= L; l++) a->res[l] = carve(act, &ca, N * C * es);
  for (int l = 0; l < L; l++) {
    if (a->recompute && l > 0) { /* one slot shared by every block */
      a->ln1[l] = a->ln1[0], a->ln1_mean[l] = a->ln1_mean[0], a->ln1_rstd[l] = a->ln1_rstd[0];
      a->qkv[l] = a->qkv[0], a->atty[l] = a->atty[0], a->attaux[l] = a->attaux[0], a->res2[l] = a->res2[0];
      a->ln2[l] = a->ln2[0], a->ln2_mean[l] = a->ln2_mean[0], a->ln2_rstd[l] = a->ln2_rstd[0];
      a->fch[l] = a->fch[0], a->fchg[l] = a->fchg[0];
      continue;
    }
    carve_block(a, l, act, &ca, N, es, (size_t)C, Cl, C4l);
  }
  a->lnf = carve(act, &ca, N * C * es);
  a->lnf_mean = carve(act, &ca, N * sizeof(float));
  a->lnf_rstd = carve(act, &ca, N * sizeof(float));
  a->losses = carve(act, &ca, N * sizeof(float));
  /* BUFFER: logits (recomputed each micro-batch, dlogits in place), scratch, token ids */
  a->logits = carve(buf, &cb, N * Vl * es);
  a->dres = carve(buf, &cb, N * C * es);
  a->d_a = carve(buf, &cb, N * Dw * es);
  a->d_b = carve(buf, &cb, N * Dw * es);
  if (a->attn_ws_bytes) a->attn_ws = carve(buf, &cb, a->attn_ws_bytes);
  a->inputs = carve(buf, &cb, N * sizeof(int32_t));
  a->targets = carve(buf, &cb, N * sizeof(int32_t));
  if (tp > 1) { /* vocab-parallel embedding ids and cross-entropy statistics */
    a->tp_ids = carve(buf, &cb, N * sizeof(int32_t));
    a->tp_stats = carve(buf, &cb, 3 * N * sizeof(double));
  }
  a->act_bytes = ca.off;
  a->buf_bytes = cb.off;
  return ZP_OK;
}

int zp_acts_alloc(zp_acts* a, const zp_model_layout* m, const zp_backend_ops* ops, zp_backend* b,
                  struct zp_ledger* led, int B, int T, zp_dtype ct, char* err, size_t errlen) {
  return zp_acts_alloc_ex(a, m, ops, b, led, B, T, ct, 0, 0, err, errlen);
}

int zp_acts_alloc_ex(zp_acts* a, const zp_model_layout* m, const zp_backend_ops* ops, zp_backend* b,
                     struct zp_ledger* led, int B, int T, zp_dtype ct, int block_recompute, int gelu_blocks,
                     char* err, size_t errlen) {
  memset(a, 0, sizeof *a);
  int L = m->s.L;
  if (gelu_blocks < 0 || gelu_blocks > L) {
    snprintf(err, errlen, "train.recompute_gelu_blocks = %d: must be 0 .. model.n_layer (%d)", gelu_blocks, L);
    return ZP_E_INVALID;
  }
  a->recompute = block_recompute != 0;
  a->recompute_gelu = gelu_blocks > 1 && !a->recompute; /* BLOCK recomputes it anyway; one block alone saves nothing */
  a->gelu_from = a->recompute_gelu ? L - gelu_blocks : L;
  if (T > m->s.maxT) {
    snprintf(err, errlen, "sequence length %d exceeds model.seq_len %d", T, m->s.maxT);
    return ZP_E_INVALID;
  }
  a->B = B;
  a->T = T;
  a->ct = ct;
  const int tp = m->tp > 1 ? m->tp : 1;
  a->attn_aux_bytes = ops->attention_aux_bytes(b, B, T, m->s.C / tp, m->s.NH / tp);
  if (ZP_TABLE_HAS(ops, attention_bwd_ws_bytes) && ZP_TABLE_HAS(ops, attention_bwd_ws))
    a->attn_ws_bytes = ops->attention_bwd_ws_bytes(b, B, T, m->s.C / tp, m->s.NH / tp);
  void*** lists[] = {&a->ln1, &a->qkv, &a->atty, &a->attaux, &a->res2, &a->ln2, &a->fch, &a->fchg};
  for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) *lists[i] = calloc((size_t)L, sizeof(void*));
  a->res = calloc((size_t)L + 1, sizeof(void*));
  float*** fl[] = {&a->ln1_mean, &a->ln1_rstd, &a->ln2_mean, &a->ln2_rstd};
  for (size_t i = 0; i < 4; i++) *fl[i] = calloc((size_t)L, sizeof(float*));
  acts_layout(a, m, NULL, NULL);
  int rc = zp_ledger_alloc(led, ZP_CAT_ACT, ZP_TIER_GPU, a->act_bytes,
                           a->recompute        ? "activations (block inputs + one block, recompute)"
                           : a->recompute_gelu ? "activations (GELU output recomputed)"
                                               : "activations",
                           &a->block);
  if (rc == ZP_OK) rc = zp_ledger_alloc(led, ZP_CAT_BUFFER, ZP_TIER_GPU, a->buf_bytes, "logits+scratch", &a->buf_block);
  if (rc) {
    snprintf(err, errlen, "%s", led->last_error);
    return rc;
  }
  if (a->block || a->buf_block) acts_layout(a, m, a->block, a->buf_block);
  return ZP_OK;
}

void zp_acts_free(zp_acts* a, struct zp_ledger* led) {
  if (a->act_bytes) zp_ledger_free(led, ZP_CAT_ACT, ZP_TIER_GPU, a->block, a->act_bytes);
  if (a->buf_bytes) zp_ledger_free(led, ZP_CAT_BUFFER, ZP_TIER_GPU, a->buf_block, a->buf_bytes);
  void** lists[] = {(void*)a->ln1, (void*)a->qkv, (void*)a->atty, (void*)a->attaux, (void*)a->res2,
                    (void*)a->ln2, (void*)a->fch, (void*)a->fchg, (void*)a->res, (void*)a->ln1_mean,
                    (void*)a->ln1_rstd, (void*)a->ln2_mean, (void*)a->ln2_rstd};
  for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) free(lists[i]);
  memset(a, 0, sizeof *a);
}

/* ---------------- forward / backward ---------------- */

static void* P(const zp_model_layout* m, const zp_views* v, int g, int kind, size_t es) {
  const zp_tensor_desc* t = zp_model_tensor(m, g, kind);
  return (char*)v->param[g] + t->offset * es;
}
static void* G(const zp_model_layout* m, const zp_views* v, int g, int kind, size_t es) {
  const zp_tensor_desc* t = zp_model_tensor(m, g, kind);
  return (char*)v->grad[g] + t->offset * es;
}

#define TRY(x) do { int rc_ = (x); if (rc_) return rc_; } while (0)

/* out = res + inp @ w^T + bias: the backend's fused op (ABI 1.2) where it has one, else the
 * projection into scratch, then the residual */
static int proj_res(const zp_backend_ops* ops, zp_backend* b, void* out, const void* inp, const void* w, const void* bias,
                    const void* res, void* scratch, int N, int IC, int OC) {
  if (ZP_TABLE_HAS(ops, matmul_res_fwd)) return ops->matmul_res_fwd(b, out, inp, w, bias, res, N, IC, OC);
  TRY(ops->matmul_fwd(b, scratch, inp, w, bias, N, IC, OC));
  return ops->residual_fwd(b, out, res, scratch, (size_t)N * OC);
}

int zp_model_forward_group(const zp_model_layout* m, const zp_backend_ops* ops, zp_backend* b,
                           zp_acts* a, const zp_views* v, int g, float dloss) {
  int B = a->B, T = a->T, C = m->s.C, NH = m->s.NH, L = m->s.L;
  int N = B * T;
  size_t es = zp_dtype_size(a->ct);
  if (g == 0) {
    return ops->encoder_fwd(b, a->res[0], a->inputs, P(m, v, 0, ZP_T_WTE, es), P(m, v, 0, ZP_T_WPE, es), B, T, C);
  }
  if (g <= L) {
    int l = g - 1;
    TRY(ops->layernorm_fwd(b, a->ln1[l], a->ln1_mean[l], a->ln1_rstd[l], a->res[l], P(m, v, g, ZP_T_LN1W, es),
                           P(m, v, g, ZP_T_LN1B, es), N, C));
    TRY(ops->matmul_fwd(b, a->qkv[l], a->ln1[l], P(m, v, g, ZP_T_QKVW, es), P(m, v, g, ZP_T_QKVB, es), N, C, 3 * C));
    TRY(ops->attention_fwd(b, a->atty[l], a->attaux[l], a->qkv[l], B, T, C, NH));
    /* res2 = res + attproj(atty): one op where the backend fuses it, else attproj's output
     * goes to d_a as scratch, then the residual */
    TRY(proj_res(ops, b, a->res2[l], a->atty[l], P(m, v, g, ZP_T_ATTPROJW, es), P(m, v, g, ZP_T_ATTPROJB, es), a->res[l],
                 a->d_a, N, C, C));
    TRY(ops->layernorm_fwd(b, a->ln2[l], a->ln2_mean[l], a->ln2_rstd[l], a->res2[l], P(m, v, g, ZP_T_LN2W, es),
                           P(m, v, g, ZP_T_LN2B, es), N, C));
    if (ZP_TABLE_HAS(ops, matmul_gelu_fwd)) {
      TRY(ops->matmul_gelu_fwd(b, a->fchg[l], a->fch[l], a->ln2[l], P(m, v, g, ZP_T_FCW, es), P(m, v, g, ZP_T_FCB, es), N, C,
                               4 * C));
    } else {
      TRY(ops->matmul_fwd(b, a->fch[l], a->ln2[l], P(m, v, g, ZP_T_FCW, es), P(m, v, g, ZP_T_FCB, es), N, C, 4 * C));
      TRY(ops->gelu_fwd(b, a->fchg[l], a->fch[l], (size_t)N * 4 * C));
    }
    return proj_res(ops, b, a->res[l + 1], a->fchg[l], P(m, v, g, ZP_T_FCPROJW, es), P(m, v, g, ZP_T_FCPROJB, es),
                    a->res2[l], a->d_a, N, 4 * C, C);
  }
  /* head */
  TRY(ops->layernorm_fwd(b, a->lnf, a->lnf_mean, a->lnf_rstd, a->res[L], P(m, v, g, ZP_T_LNFW, es),
                         P(m, v, g, ZP_T_LNFB, es), N, C));
  TRY(ops->matmul_fwd(b, a->logits, a->lnf, P(m, v, 0, ZP_T_WTE, es), NULL, N, C, m->s.Vp));
  return ops->softmax_xent(b, a->losses, a->logits, a->targets, N, m->s.V, m->s.Vp, dloss);
}

int zp_model_attention_bwd(const zp_backend_ops* ops, zp_backend* b, const zp_acts* a, int l, void* dqkv,
                           const void* dout, int C, int NH) {
  if (a->attn_ws) return ops->attention_bwd_ws(b, dqkv, dout, a->qkv[l], a->atty[l], a->attaux[l], a->attn_ws, a->B, a->T, C, NH);
  return ops->attention_bwd(b, dqkv, dout, a->qkv[l], a->atty[l], a->attaux[l], a->B, a->T, C, NH);
}

int zp_model_backward_group(const zp_model_layout* m, const zp_backend_ops* ops, zp_backend* b,
                            zp_acts* a, const zp_views* v, int g) {
  int B = a->B, T = a->T, C = m->s.C, NH = m->s.NH, L = m->s.L;
  int N = B * T;
  size_t es = zp_dtype_size(a->ct);
  if (g == L + 1) {
    /* dlogits are in a->logits (fused loss). dlnf -> d_a; dres = 0 then accumulate ln_f's dinp */
    TRY(ops->matmul_bwd(b, a->d_a, G(m, v, 0, ZP_T_WTE, es), NULL, a->logits, a->lnf, P(m, v, 0, ZP_T_WTE, es), N, C, m->s.Vp));
    TRY(ops->memset0(b, a->dres, (size_t)N * C * es));
    return ops->layernorm_bwd(b, a->dres, G(m, v, g, ZP_T_LNFW, es), G(m, v, g, ZP_T_LNFB, es), a->d_a, a->res[L],
                              P(m, v, g, ZP_T_LNFW, es), a->lnf_mean, a->lnf_rstd, N, C);
  }
  if (g >= 1) {
    int l = g - 1;
    /* train.recompute_gelu(_blocks): the shared slot holds another block's GELU output: refill it */
    if (zp_acts_gelu_refill(a, l, L)) TRY(ops->gelu_fwd(b, a->fchg[l], a->fch[l], (size_t)N * 4 * C));
    /* fcproj: dfchg -> d_b, then GELU's backward -> d_a (one op when the backend fuses them;
     * with 1.9's matmul_dgelu_bgrad_bwd that op also gives the fc bias gradient, the column sums
     * of d_a, so the fc backward below skips them) */
    void* dfcb = G(m, v, g, ZP_T_FCB, es);
    if (ZP_TABLE_HAS(ops, matmul_dgelu_bgrad_bwd)) {
      TRY(ops->matmul_dgelu_bgrad_bwd(b, a->d_a, dfcb, G(m, v, g, ZP_T_FCPROJW, es), G(m, v, g, ZP_T_FCPROJB, es),
                                      a->dres, a->fchg[l], P(m, v, g, ZP_T_FCPROJW, es), a->fch[l], N, 4 * C, C));
      dfcb = NULL;
    } else if (ZP_TABLE_HAS(ops, matmul_dgelu_bwd)) {
      TRY(ops->matmul_dgelu_bwd(b, a->d_a, G(m, v, g, ZP_T_FCPROJW, es), G(m, v, g, ZP_T_FCPROJB, es), a->dres, a->fchg[l],
                                P(m, v, g, ZP_T_FCPROJW, es), a->fch[l], N, 4 * C, C));
    } else {
      TRY(ops->matmul_bwd(b, a->d_b, G(m, v, g, ZP_T_FCPROJW, es), G(m, v, g, ZP_T_FCPROJB, es), a->dres, a->fchg[l],
                          P(m, v, g, ZP_T_FCPROJW, es), N, 4 * C, C));
      TRY(ops->gelu_bwd(b, a->d_a, a->fch[l], a->d_b, (size_t)N * 4 * C));
    }
    TRY(ops->matmul_bwd(b, a->d_b, G(m, v, g, ZP_T_FCW, es), dfcb, a->d_a, a->ln2[l], P(m, v, g, ZP_T_FCW, es), N, C,
                        4 * C));
    TRY(ops->layernorm_bwd(b, a->dres, G(m, v, g, ZP_T_LN2W, es), G(m, v, g, ZP_T_LN2B, es), a->d_b, a->res2[l],
                           P(m, v, g, ZP_T_LN2W, es), a->ln2_mean[l], a->ln2_rstd[l], N, C));
    TRY(ops->matmul_bwd(b, a->d_a, G(m, v, g, ZP_T_ATTPROJW, es), G(m, v, g, ZP_T_ATTPROJB, es), a->dres, a->atty[l],
                        P(m, v, g, ZP_T_ATTPROJW, es), N, C, C));
    TRY(zp_model_attention_bwd(ops, b, a, l, a->d_b, a->d_a, C, NH));
    TRY(ops->matmul_bwd(b, a->d_a, G(m, v, g, ZP_T_QKVW, es), G(m, v, g, ZP_T_QKVB, es), a->d_b, a->ln1[l],
                        P(m, v, g, ZP_T_QKVW, es), N, C, 3 * C));
    return ops->layernorm_bwd(b, a->dres, G(m, v, g, ZP_T_LN1W, es), G(m, v, g, ZP_T_LN1B, es), a->d_a, a->res[l],
                              P(m, v, g, ZP_T_LN1W, es), a->ln1_mean[l], a->ln1_rstd[l], N, C);
  }
  return ops->encoder_bwd(b, G(m, v, 0, ZP_T_WTE, es), G(m, v, 0, ZP_T_WPE, es), a->dres, a->inputs, B, T, C);
}

int zp_model_group_grads_written_once(const zp_model_layout* m, int g) { return g >= 1 && g <= m->s.L; }

/* ---------------- pipeline chunks ---------------- */

int zp_acts_arrays_alloc(zp_acts* a, const zp_model_layout* m, int B, int T, zp_dtype ct, size_t attn_aux_bytes) {
  memset(a, 0, sizeof *a);
  int L = m->s.L;
  a->B = B;
  a->T = T;
  a->ct = ct;
  a->attn_aux_bytes = attn_aux_bytes;
  void*** lists[] = {&a->ln1, &a->qkv, &a->atty, &a->attaux, &a->res2, &a->ln2, &a->fch, &a->fchg,
                     &a->zb_dfcproj, &a->zb_dfc, &a->zb_dattproj, &a->zb_dqkv};
  int bad = 0;
  for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) bad |= !(*lists[i] = calloc((size_t)L, sizeof(void*)));
  bad |= !(a->res = calloc((size_t)L + 1, sizeof(void*)));
  float*** fl[] = {&a->ln1_mean, &a->ln1_rstd, &a->ln2_mean, &a->ln2_rstd};
  for (size_t i = 0; i < 4; i++) bad |= !(*fl[i] = calloc((size_t)L, sizeof(float*)));
  if (bad) {
    zp_acts_arrays_free(a);
    return ZP_E_NOMEM;
  }
  return ZP_OK;
}

void zp_acts_arrays_free(zp_acts* a) {
  void** lists[] = {(void*)a->ln1, (void*)a->qkv, (void*)a->atty, (void*)a->attaux, (void*)a->res2,
                    (void*)a->ln2, (void*)a->fch, (void*)a->fchg, (void*)a->res, (void*)a->ln1_mean,
                    (void*)a->ln1_rstd, (void*)a->ln2_mean, (void*)a->ln2_rstd, (void*)a->zb_dfcproj,
                    (void*)a->zb_dfc, (void*)a->zb_dattproj, (void*)a->zb_dqkv};
  for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) free(lists[i]);
  memset(a, 0, sizeof *a);
}

/* One chunk's slot layout. shared == NULL and !recompute: every tensor of the chunk's blocks is
 * carved from base. recompute: base holds the block inputs res[] (and the head's tensors), every
 * block's other tensors alias the region shared from offset 0; *shared_bytes gets its size. */
static size_t chunk_layout(zp_acts* a, const zp_model_layout* m, int g0, int g1, int zb, char* base, int recompute,
                           char* shared, size_t* shared_bytes) {
  int L = m->s.L, C = m->s.C;
  size_t N = (size_t)a->B * (size_t)a->T, es = zp_dtype_size(a->ct);
  carve_t ca = {0, 0};
  size_t mx = 0;
  int r0 = g0 - 1 < 0 ? 0 : g0 - 1, r1 = g1 - 1 > L ? L : g1 - 1;
  for (int i = r0; i <= r1; i++) a->res[i] = carve(base, &ca, N * C * es);
  for (int g = g0; g < g1; g++) {
    if (g < 1 || g > L) continue;
    int l = g - 1;
    if (recompute) {
      carve_t cs = {0, 0}; /* every block of the chunk from offset 0 of the shared region */
      carve_block(a, l, shared, &cs, N, es, (size_t)C, (size_t)C, (size_t)4 * C);
      if (cs.off > mx) mx = cs.off;
      continue;
    }
    carve_block(a, l, base, &ca, N, es, (size_t)C, (size_t)C, (size_t)4 * C);
    if (zb) {
      a->zb_dfcproj[l] = carve(base, &ca, N * C * es);
      a->zb_dfc[l] = carve(base, &ca, N * 4 * C * es);
      a->zb_dattproj[l] = carve(base, &ca, N * C * es);
      a->zb_dqkv[l] = carve(base, &ca, N * 3 * C * es);
    }
  }
  if (g1 == L + 2) {
    a->lnf = carve(base, &ca, N * C * es);
    a->lnf_mean = carve(base, &ca, N * sizeof(float));
    a->lnf_rstd = carve(base, &ca, N * sizeof(float));
    a->losses = carve(base, &ca, N * sizeof(float));
  }
  if (recompute) a->recompute = 1;
  if (shared_bytes) *shared_bytes = mx;
  return ca.off;
}

size_t zp_acts_chunk_layout(zp_acts* a, const zp_model_layout* m, int g0, int g1, int zb, char* base) {
  return chunk_layout(a, m, g0, g1, zb, base, 0, NULL, NULL);
}

size_t zp_acts_chunk_layout_recompute(zp_acts* a, const zp_model_layout* m, int g0, int g1, char* base, char* shared,
                                       size_t* shared_bytes) {
  return chunk_layout(a, m, g0, g1, 0, base, 1, shared, shared_bytes);
}

int zp_model_backward_group_phase(const zp_model_layout* m, const zp_backend_ops* ops, zp_backend* b,
                                  zp_acts* a, const zp_views* v, int g, int phase) {
  int B = a->B, T = a->T, C = m->s.C, NH = m->s.NH, L = m->s.L;
  int N = B * T;
  size_t es = zp_dtype_size(a->ct);
  if (phase == ZP_BWD_FULL) return zp_model_backward_group(m, ops, b, a, v, g);
  if (g < 1 || g > L) return phase == ZP_BWD_INPUT ? zp_model_backward_group(m, ops, b, a, v, g) : ZP_OK;
  int l = g - 1;
  if (!a->zb_dfcproj[l]) return ZP_E_INVALID; /* the chunk was laid out without zb buffers */
  if (phase == ZP_BWD_INPUT) {
    /* as zp_model_backward_group, with each matmul's weight half left out and its output
     * gradient kept for ZP_BWD_WEIGHT */
    TRY(ops->copy_d2d(b, a->zb_dfcproj[l], a->dres, (size_t)N * C * es));
    TRY(ops->matmul_bwd(b, a->d_b, NULL, NULL, a->dres, a->fchg[l], P(m, v, g, ZP_T_FCPROJW, es), N, 4 * C, C));
    TRY(ops->gelu_bwd(b, a->zb_dfc[l], a->fch[l], a->d_b, (size_t)N * 4 * C));
    TRY(ops->matmul_bwd(b, a->d_b, NULL, NULL, a->zb_dfc[l], a->ln2[l], P(m, v, g, ZP_T_FCW, es), N, C, 4 * C));
    TRY(ops->layernorm_bwd(b, a->dres, G(m, v, g, ZP_T_LN2W, es), G(m, v, g, ZP_T_LN2B, es), a->d_b, a->res2[l],
                           P(m, v, g, ZP_T_LN2W, es), a->ln2_mean[l], a->ln2_rstd[l], N, C));
    TRY(ops->copy_d2d(b, a->zb_dattproj[l], a->dres, (size_t)N * C * es));
    TRY(ops->matmul_bwd(b, a->d_a, NULL, NULL, a->dres, a->atty[l], P(m, v, g, ZP_T_ATTPROJW, es), N, C, C));
    TRY(zp_model_attention_bwd(ops, b, a, l, a->zb_dqkv[l], a->d_a, C, NH));
    TRY(ops->matmul_bwd(b, a->d_a, NULL, NULL, a->zb_dqkv[l], a->ln1[l], P(m, v, g, ZP_T_QKVW, es), N, C, 3 * C));
    return ops->layernorm_bwd(b, a->dres, G(m, v, g, ZP_T_LN1W, es), G(m, v, g, ZP_T_LN1B, es), a->d_a, a->res[l],
                              P(m, v, g, ZP_T_LN1W, es), a->ln1_mean[l], a->ln1_rstd[l], N, C);
  }
  TRY(ops->matmul_bwd(b, NULL, G(m, v, g, ZP_T_FCPROJW, es), G(m, v, g, ZP_T_FCPROJB, es), a->zb_dfcproj[l], a->fchg[l],
                      NULL, N, 4 * C, C));
  TRY(ops->matmul_bwd(b, NULL, G(m, v, g, ZP_T_FCW, es), G(m, v, g, ZP_T_FCB, es), a->zb_dfc[l], a->ln2[l], NULL, N, C,
                      4 * C));
  TRY(ops->matmul_bwd(b, NULL, G(m, v, g, ZP_T_ATTPROJW, es), G(m, v, g, ZP_T_ATTPROJB, es), a->zb_dattproj[l], a->atty[l],
                      NULL, N, C, C));
  return ops->matmul_bwd(b, NULL, G(m, v, g, ZP_T_QKVW, es), G(m, v, g, ZP_T_QKVB, es), a->zb_dqkv[l], a->ln1[l], NULL, N,
                         C, 3 * C);
}
