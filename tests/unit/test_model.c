/* test_model.c: the whole GPT-2 model on the CPU backend against finite differences in fp64
 * (every tensor kind, tied embedding included), fp32 vs fp64 forward, counter-based init
 * that does not depend on how a group is split, bf16 storage path, no allocation inside
 * a step, and the fused-GELU ops' branch of the model (bitwise equal to matmul + gelu). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "rng.h"
#include "runtime.h"
#include "zt.h"
#include "zt_run.h"

#define B_ 2
#define T_ 8

static const char* base_sets[] = {"model.n_layer=2", "model.n_head=2", "model.d_model=16", "model.seq_len=8",
                                  "model.vocab_size=37", "model.vocab_pad=8", "train.micro_batch=2",
                                  "train.weight_decay=0.0", "train.grad_clip=0"};

static int open_run(zp_run* r, zp_config* c, const char* prec) {
  const char* sets[16];
  int n = 0;
  for (size_t i = 0; i < sizeof base_sets / sizeof base_sets[0]; i++) sets[n++] = base_sets[i];
  char p[64];
  snprintf(p, sizeof p, "train.precision=%s", prec);
  sets[n++] = p;
  return zt_open_run(r, c, sets, n, "model.toml");
}

static void batch(int32_t* in, int32_t* tg, int V) {
  for (int i = 0; i < B_ * T_; i++) {
    in[i] = (int32_t)zp_rng_below(7, 1, (uint64_t)i, (uint64_t)V);
    tg[i] = (int32_t)zp_rng_below(7, 2, (uint64_t)i, (uint64_t)V);
  }
}

/* Mean cross-entropy recomputed in double from the fp64 logits the forward left behind (the
 * backend's per-position losses are fp32 by contract, too coarse for finite differences). */
static double loss64(zp_run* r, const int32_t* in, const int32_t* tg) {
  double l;
  zp_run_forward(r, in, tg, &l);
  const double* lg = r->acts.logits;
  int Vp = r->layout.s.Vp, V = r->layout.s.V;
  double sum = 0;
  for (int i = 0; i < B_ * T_; i++) {
    const double* row = lg + (size_t)i * Vp;
    double mx = row[0], z = 0;
    for (int v = 1; v < V; v++) if (row[v] > mx) mx = row[v];
    for (int v = 0; v < V; v++) z += exp(row[v] - mx);
    sum += -(row[tg[i]] - mx - log(z));
  }
  return sum / (B_ * T_);
}

static void t_gradcheck_fp64(void) {
  zp_config c;
  zp_run r;
  if (open_run(&r, &c, "fp64")) return;
  int32_t in[B_ * T_], tg[B_ * T_];
  batch(in, tg, 37);
  /* make the ones/zeros inits generic so every path is exercised */
  for (int g = 0; g < r.layout.n_groups; g++) {
    double* p = r.groups[g].info.buf[ZP_CAT_PARAM];
    for (int ti = r.layout.group_first_tensor[g]; ti < r.layout.group_first_tensor[g + 1]; ti++) {
      const zp_tensor_desc* t = &r.layout.tensors[ti];
      uint64_t real = (uint64_t)t->real_rows * t->cols;
      for (uint64_t e = 0; e < real; e++) p[t->offset + e] += 0.05 * zp_rng_normal(3, (uint64_t)ti, e);
    }
  }
  double loss;
  CHECK(zp_run_zero_grads(&r) == 0);
  int rc = zp_run_micro_batch(&r, in, tg, 1.0f / (B_ * T_), &loss);
  CHECK_MSG(rc == 0, "%s", r.err);
  CHECK(loss > 3.0 && loss < 4.5); /* ~ln 37 = 3.61 */
  double max_rel = 0;
  int checked = 0;
  for (int ti = 0; ti < r.layout.n_tensors; ti++) {
    const zp_tensor_desc* t = &r.layout.tensors[ti];
    double* p = r.groups[t->group].info.buf[ZP_CAT_PARAM];
    double* gr = r.groups[t->group].info.buf[ZP_CAT_GRAD];
    uint64_t real = (uint64_t)t->real_rows * t->cols;
    for (int k = 0; k < 6; k++) {
      uint64_t e = t->offset + zp_rng_below(11, (uint64_t)ti, (uint64_t)k, real);
      double h = 1e-5, save = p[e], lp, lm;
      p[e] = save + h;
      lp = loss64(&r, in, tg);
      p[e] = save - h;
      lm = loss64(&r, in, tg);
      p[e] = save;
      double num = (lp - lm) / (2 * h), ana = gr[e];
      double rel = fabs(num - ana) / fmax(1e-6, fabs(num) + fabs(ana));
      if (rel > max_rel) max_rel = rel;
      CHECK_MSG(rel < 1e-6 || fabs(num - ana) < 1e-10, "%s[%llu]: analytic %.10g numeric %.10g", t->name,
                (unsigned long long)(e - t->offset), ana, num);
      checked++;
    }
  }
  printf("  gradcheck: %d elements over %d tensors, max relative error %.2e\n", checked, r.layout.n_tensors, max_rel);
  /* padded vocab rows get no gradient */
  const zp_tensor_desc* wte = &r.layout.tensors[0];
  double* gr0 = r.groups[0].info.buf[ZP_CAT_GRAD];
  double pad = 0;
  for (uint64_t e = (uint64_t)wte->real_rows * wte->cols; e < wte->numel; e++) pad += fabs(gr0[wte->offset + e]);
  CHECK(pad == 0.0);
  zp_run_close(&r);
  zp_config_free(&c);
}

static void t_fp32_vs_fp64(void) {
  zp_config c32, c64;
  zp_run r32, r64;
  if (open_run(&r32, &c32, "fp32") || open_run(&r64, &c64, "fp64")) return;
  int32_t in[B_ * T_], tg[B_ * T_];
  batch(in, tg, 37);
  double l32, l64;
  CHECK(zp_run_micro_batch(&r32, in, tg, 1.0f / (B_ * T_), &l32) == 0);
  CHECK(zp_run_micro_batch(&r64, in, tg, 1.0f / (B_ * T_), &l64) == 0);
  CHECK_NEAR(l32, l64, 0, 1e-5);
  /* gradients agree too */
  double num = 0, den = 0;
  for (int g = 0; g < r32.layout.n_groups; g++) {
    float* a = r32.groups[g].info.buf[ZP_CAT_GRAD];
    double* b = r64.groups[g].info.buf[ZP_CAT_GRAD];
    for (uint64_t e = 0; e < r32.groups[g].info.padded; e++) { num += (a[e] - b[e]) * (a[e] - b[e]); den += b[e] * b[e]; }
  }
  CHECK_MSG(sqrt(num / den) < 1e-4, "fp32 vs fp64 gradient rel L2 %.3g", sqrt(num / den));
  zp_run_close(&r32);
  zp_run_close(&r64);
  zp_config_free(&c32);
  zp_config_free(&c64);
}

static void t_init_split_invariant(void) {
  zp_config c;
  zp_run r;
  if (open_run(&r, &c, "fp32")) return;
  for (int g = 0; g < r.layout.n_groups; g++) {
    uint64_t n = r.groups[g].info.padded;
    float* whole = malloc(n * sizeof(float));
    float* parts = malloc(n * sizeof(float));
    zp_model_init_range(&r.layout, 1337, g, 0, n, whole, ZP_F32);
    for (uint64_t a = 0; a < n; a += 1000) zp_model_init_range(&r.layout, 1337, g, a, n - a < 1000 ? n - a : 1000, parts + a, ZP_F32);
    CHECK(memcmp(whole, parts, n * sizeof(float)) == 0);
    CHECK(memcmp(whole, r.groups[g].info.buf[ZP_CAT_PARAM], n * sizeof(float)) == 0);
    free(whole);
    free(parts);
  }
  /* layernorm weights are ones, biases zero, wte std ~0.02 */
  const zp_tensor_desc* ln = zp_model_tensor(&r.layout, 1, ZP_T_LN1W);
  CHECK(((float*)r.groups[1].info.buf[ZP_CAT_PARAM])[ln->offset] == 1.0f);
  zp_run_close(&r);
  zp_config_free(&c);
}

static void t_bf16_storage(void) {
  zp_config c32, cb;
  zp_run r32, rb;
  if (open_run(&r32, &c32, "fp32") || open_run(&rb, &cb, "bf16")) return;
  CHECK(rb.param_dt == ZP_BF16 && rb.ct == ZP_F32 && rb.groups[1].info.buf[ZP_CAT_MASTER] != NULL);
  /* init: every bf16 parameter is the rounded fp32 master value */
  for (int g = 0; g < rb.layout.n_groups; g++) {
    const float* ms = rb.groups[g].info.buf[ZP_CAT_MASTER];
    const uint16_t* ps = rb.groups[g].info.buf[ZP_CAT_PARAM];
    int bad = 0;
    for (uint64_t e = 0; e < rb.groups[g].info.padded; e++) {
      float x;
      uint32_t bits = (uint32_t)ps[e] << 16;
      memcpy(&x, &bits, 4);
      if (fabsf(x - ms[e]) > fabsf(ms[e]) * (1.0f / 256)) bad++;
    }
    CHECK_MSG(bad == 0, "group %d: %d bf16 params differ from their master", g, bad);
  }
  int32_t in[B_ * T_], tg[B_ * T_];
  batch(in, tg, 37);
  double a, b;
  CHECK(zp_run_micro_batch(&r32, in, tg, 1.0f / (B_ * T_), &a) == 0);
  CHECK(zp_run_micro_batch(&rb, in, tg, 1.0f / (B_ * T_), &b) == 0);
  CHECK_NEAR(a, b, 0, 1e-2); /* bf16-rounded weights */
  /* a step updates master and the bf16 copy equals the rounded master */
  CHECK(zp_run_step(&rb, 1e-2f) == 0);
  float* master = rb.groups[1].info.buf[ZP_CAT_MASTER];
  uint16_t* p = rb.groups[1].info.buf[ZP_CAT_PARAM];
  float back;
  uint32_t bits = (uint32_t)p[100] << 16;
  memcpy(&back, &bits, 4);
  CHECK(fabsf(back - master[100]) <= fabsf(master[100]) * (1.0f / 128));
  zp_run_close(&r32);
  zp_run_close(&rb);
  zp_config_free(&c32);
  zp_config_free(&cb);
}

static void t_no_alloc_in_step(void) {
  zp_config c;
  zp_run r;
  if (open_run(&r, &c, "fp32")) return;
  int32_t in[B_ * T_], tg[B_ * T_];
  batch(in, tg, 37);
  long long before = r.ledger.n_allocs;
  double l;
  for (int s = 0; s < 3; s++) {
    CHECK(zp_run_zero_grads(&r) == 0);
    CHECK(zp_run_micro_batch(&r, in, tg, 1.0f / (B_ * T_), &l) == 0);
    CHECK(zp_run_step(&r, 1e-3f) == 0);
  }
  CHECK_EQ_INT(r.ledger.n_allocs, before);
  zp_run_close(&r);
  zp_config_free(&c);
}

/* The model's fused branches (ABI 1.1 matmul_gelu_fwd / matmul_dgelu_bwd, ABI 1.2
 * matmul_res_fwd, ABI 1.9 matmul_dgelu_bgrad_bwd, without and with it): a table whose fused ops are the CPU backend's matmul + gelu (+ residual)
 * composed gives the same loss and gradients, bit for bit, as the table without them, and the
 * model really calls them (GELU once per block each way, the residual projection twice per
 * block). */
static const zp_backend_ops* g_base;
static int g_fused_fwd_calls, g_fused_bwd_calls, g_res_calls;
static int res_fwd(zp_backend* b, void* out, const void* inp, const void* w, const void* bias, const void* res, int N, int IC,
                   int OC) {
  g_res_calls++;
  size_t n = (size_t)N * OC;
  float* tmp = malloc(n * sizeof(float));
  if (!tmp) return ZP_E_NOMEM;
  int rc = g_base->matmul_fwd(b, tmp, inp, w, bias, N, IC, OC);
  if (!rc) rc = g_base->residual_fwd(b, out, res, tmp, n);
  free(tmp);
  return rc;
}
static int fused_fwd(zp_backend* b, void* out, void* pre, const void* inp, const void* w, const void* bias, int N, int IC,
                     int OC) {
  g_fused_fwd_calls++;
  int rc = g_base->matmul_fwd(b, pre, inp, w, bias, N, IC, OC);
  return rc ? rc : g_base->gelu_fwd(b, out, pre, (size_t)N * OC);
}
static int fused_bwd(zp_backend* b, void* dinp, void* dw, void* dbias, const void* dout, const void* inp, const void* w,
                     const void* pre, int N, int IC, int OC) {
  g_fused_bwd_calls++;
  size_t n = (size_t)N * IC;
  float* tmp = malloc(n * sizeof(float));
  if (!tmp) return ZP_E_NOMEM;
  int rc = g_base->matmul_bwd(b, tmp, dw, dbias, dout, inp, w, N, IC, OC);
  if (!rc) rc = g_base->gelu_bwd(b, dinp, pre, tmp, n);
  free(tmp);
  return rc;
}

/* ABI 1.9: the GELU backward also gives the fc bias gradient: composed as above, then the
 * column sums of dinp through the CPU's own matmul_bwd (dbias only), the same sums the fc's
 * matmul_bwd took before */
static int g_bgrad_calls;
static int fused_bgrad_bwd(zp_backend* b, void* dinp, void* dpb, void* dw, void* dbias, const void* dout, const void* inp,
                           const void* w, const void* pre, int N, int IC, int OC) {
  g_bgrad_calls++;
  int rc = fused_bwd(b, dinp, dw, dbias, dout, inp, w, pre, N, IC, OC);
  return rc || !dpb ? rc : g_base->matmul_bwd(b, NULL, NULL, dpb, dinp, NULL, NULL, N, OC, IC);
}

static void t_fused_paths(void) {
  zp_config c1, c2;
  zp_run r1, r2;
  if (open_run(&r1, &c1, "fp32") || open_run(&r2, &c2, "fp32")) return;
  static zp_backend_ops fused;
  g_base = r2.ops;
  fused = *r2.ops;
  fused.struct_size = sizeof fused;
  fused.matmul_gelu_fwd = fused_fwd;
  fused.matmul_dgelu_bwd = fused_bwd;
  fused.matmul_res_fwd = res_fwd;
  r2.ops = &fused;
  for (int with_bgrad = 0; with_bgrad < 2; with_bgrad++) {
    fused.matmul_dgelu_bgrad_bwd = with_bgrad ? fused_bgrad_bwd : NULL;
  int32_t in[B_ * T_], tg[B_ * T_];
  batch(in, tg, 37);
  double l1, l2;
  g_fused_fwd_calls = g_fused_bwd_calls = g_res_calls = g_bgrad_calls = 0;
  CHECK(zp_run_zero_grads(&r1) == 0);
  CHECK(zp_run_zero_grads(&r2) == 0);
  CHECK(zp_run_micro_batch(&r1, in, tg, 1.0f / (B_ * T_), &l1) == 0);
  CHECK(zp_run_micro_batch(&r2, in, tg, 1.0f / (B_ * T_), &l2) == 0);
  CHECK_EQ_INT(g_fused_fwd_calls, r2.layout.s.L);
  CHECK_EQ_INT(g_fused_bwd_calls, r2.layout.s.L);
  CHECK_EQ_INT(g_bgrad_calls, with_bgrad ? r2.layout.s.L : 0);
  CHECK_EQ_INT(g_res_calls, 2 * r2.layout.s.L);
  CHECK(l1 == l2);
  size_t differ = 0;
  for (int g = 0; g < r1.layout.n_groups; g++)
    differ += memcmp(r1.groups[g].info.buf[ZP_CAT_GRAD], r2.groups[g].info.buf[ZP_CAT_GRAD],
                     r1.groups[g].info.padded * sizeof(float)) != 0;
  CHECK_MSG(differ == 0, "%zu groups' gradients differ between the fused and the plain paths (bgrad op %d)", differ,
            with_bgrad);
  }
  r2.ops = g_base;
  zp_run_close(&r1);
  zp_run_close(&r2);
  zp_config_free(&c1);
  zp_config_free(&c2);
}

int main(void) {
  ZT_RUN(t_gradcheck_fp64);
  ZT_RUN(t_fp32_vs_fp64);
  ZT_RUN(t_init_split_invariant);
  ZT_RUN(t_bf16_storage);
  ZT_RUN(t_no_alloc_in_step);
  ZT_RUN(t_fused_paths);
  return zt_done();
}
