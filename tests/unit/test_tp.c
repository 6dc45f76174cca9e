/* test_tp.c: tensor parallelism pieces on the CPU backend, without processes:
 * - the vocab-parallel cross-entropy (softmax_xent_vp, three phases; the all-reduces between
 *   them done here, in rank order) equals the full one: losses and dlogits against a float64
 *   reference (and the fp32 softmax_xent), at tp 1, 2, 4, with a rank holding only padding
 *   columns and an ignored row; the F64 backend to 1e-12;
 * - the masked embedding summed over ranks is the full embedding, bitwise, and its backward
 *   gives each rank exactly its rows of the full gradient;
 * - a tp layout's initial values are the single-rank model's (every element of every slice
 *   is the global element it maps to, and the slices cover each global element once);
 * - refusals: n_head or the padded vocabulary not divisible by tp. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cpu.h"
#include "model.h"
#include "model_tp.h"
#include "rng.h"
#include "zt.h"

static const zp_backend_ops* O;
static zp_backend *b32, *b64;
static zp_host host;
static char last_err[1024];
static void t_set_error(zp_host_ctx* c, const char* fmt, ...) {
  (void)c;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_err, sizeof last_err, fmt, ap);
  va_end(ap);
}

#define N_ 7
#define V_ 37
#define VP_ 64

static double urand(uint64_t s, uint64_t i) { return (double)zp_rng_below(99, s, i, 1u << 30) / (double)(1u << 30); }

/* float64 reference: loss and dloss * (softmax - onehot) over the V real columns */
static void xent_ref(const double* x, const int32_t* tg, double dloss, double* loss, double* dl) {
  for (int n = 0; n < N_; n++) {
    const double* r = x + (size_t)n * VP_;
    double mx = r[0], s = 0;
    for (int j = 1; j < V_; j++) mx = r[j] > mx ? r[j] : mx;
    for (int j = 0; j < V_; j++) s += exp(r[j] - mx);
    loss[n] = tg[n] < 0 ? 0 : log(s) - (r[tg[n]] - mx);
    for (int j = 0; j < VP_; j++)
      dl[(size_t)n * VP_ + j] = (tg[n] < 0 || j >= V_) ? 0 : dloss * (exp(r[j] - mx) / s - (j == tg[n] ? 1.0 : 0.0));
  }
}

/* run the three phases on tp slices of full [N, VP] logits (dtype by f64), reduce between them */
static void xent_vp(int tp, int f64, const double* x, const int32_t* tg, float dloss, float* loss, double* dl) {
  zp_backend* b = f64 ? b64 : b32;
  size_t es = f64 ? 8 : 4;
  int Vl = VP_ / tp;
  char* lg[8];
  char* st[8];
  float* ls[8];
  for (int q = 0; q < tp; q++) {
    lg[q] = malloc((size_t)N_ * Vl * es);
    st[q] = calloc(3 * N_, es);
    ls[q] = calloc(N_, sizeof(float));
    for (int n = 0; n < N_; n++)
      for (int j = 0; j < Vl; j++) {
        double v = x[(size_t)n * VP_ + q * Vl + j];
        if (f64) ((double*)lg[q])[(size_t)n * Vl + j] = v;
        else ((float*)lg[q])[(size_t)n * Vl + j] = (float)v;
      }
  }
#define NREAL(q) (V_ - (q) * Vl < 0 ? 0 : V_ - (q) * Vl > Vl ? Vl : V_ - (q) * Vl)
#define ST(q, i) (f64 ? ((double*)st[q])[i] : (double)((float*)st[q])[i])
#define SETST(q, i, v) do { if (f64) ((double*)st[q])[i] = (v); else ((float*)st[q])[i] = (float)(v); } while (0)
  for (int ph = 0; ph < 3; ph++) {
    for (int q = 0; q < tp; q++)
      CHECK_EQ_INT(O->softmax_xent_vp(b, ph, ls[q], lg[q], st[q], tg, N_, Vl, NREAL(q), q * Vl, dloss), 0);
    if (ph == 0) /* all-reduce MAX */
      for (int i = 0; i < N_; i++) {
        double m = ST(0, i);
        for (int q = 1; q < tp; q++) m = ST(q, i) > m ? ST(q, i) : m;
        for (int q = 0; q < tp; q++) SETST(q, i, m);
      }
    if (ph == 1) /* all-reduce SUM, rank order, in the stats dtype */
      for (int i = N_; i < 3 * N_; i++) {
        if (f64) {
          double s = 0;
          for (int q = 0; q < tp; q++) s += ((double*)st[q])[i];
          for (int q = 0; q < tp; q++) ((double*)st[q])[i] = s;
        } else {
          float s = 0;
          for (int q = 0; q < tp; q++) s += ((float*)st[q])[i];
          for (int q = 0; q < tp; q++) ((float*)st[q])[i] = s;
        }
      }
  }
  for (int n = 0; n < N_; n++) {
    loss[n] = ls[0][n];
    for (int q = 1; q < tp; q++) CHECK_MSG(memcmp(&ls[q][n], &ls[0][n], 4) == 0, "tp %d: rank %d's loss differs at row %d", tp, q, n);
    for (int q = 0; q < tp; q++)
      for (int j = 0; j < Vl; j++)
        dl[(size_t)n * VP_ + q * Vl + j] = f64 ? ((double*)lg[q])[(size_t)n * Vl + j] : (double)((float*)lg[q])[(size_t)n * Vl + j];
  }
  for (int q = 0; q < tp; q++) free(lg[q]), free(st[q]), free(ls[q]);
#undef NREAL
#undef ST
#undef SETST
}

static void test_xent_vp(void) {
  double x[N_ * VP_], dref[N_ * VP_], dl[N_ * VP_], lref[N_];
  int32_t tg[N_];
  for (int i = 0; i < N_ * VP_; i++) x[i] = (double)(float)(8.0 * urand(1, (uint64_t)i) - 4.0); /* fp32-exact */
  for (int n = 0; n < N_; n++) tg[n] = (int32_t)zp_rng_below(99, 2, (uint64_t)n, V_);
  tg[3] = -1;     /* ignored row */
  tg[5] = V_ - 1; /* the last real token: on tp rank 2 of 4 (rank 3 holds only padding) */
  const float dloss = 1.0f / N_;
  xent_ref(x, tg, dloss, lref, dref);
  /* the existing full fp32 op, for scale */
  float full[N_ * VP_], lfull[N_];
  for (int i = 0; i < N_ * VP_; i++) full[i] = (float)x[i];
  CHECK_EQ_INT(O->softmax_xent(b32, lfull, full, tg, N_, V_, VP_, dloss), 0);
  double worst_l = 0, worst_d = 0;
  for (int tp = 1; tp <= 4; tp *= 2) {
    float loss[N_];
    xent_vp(tp, 0, x, tg, dloss, loss, dl);
    for (int n = 0; n < N_; n++) {
      CHECK_NEAR(loss[n], lref[n], 1e-6, 1e-6);
      CHECK_NEAR(loss[n], lfull[n], 1e-6, 1e-6);
      double e = fabs(loss[n] - lref[n]) / (fabs(lref[n]) + 1e-30);
      if (tg[n] >= 0 && e > worst_l) worst_l = e;
    }
    for (int i = 0; i < N_ * VP_; i++) {
      CHECK_NEAR(dl[i], dref[i], 1e-8, 1e-5);
      if (fabs(dl[i] - dref[i]) > worst_d) worst_d = fabs(dl[i] - dref[i]);
    }
    CHECK(loss[3] == 0.0f);
    for (int j = 0; j < VP_; j++) CHECK(dl[3 * VP_ + j] == 0.0);
    /* fp64 backend: statistics in double */
    xent_vp(tp, 1, x, tg, dloss, loss, dl);
    for (int n = 0; n < N_; n++) CHECK_NEAR(loss[n], lref[n], 1e-6, 1e-6); /* losses are fp32 by contract */
    for (int i = 0; i < N_ * VP_; i++) CHECK_NEAR(dl[i], dref[i], 1e-14, 1e-12);
  }
  printf("vocab-parallel cross-entropy (fp32, tp 1/2/4) vs float64: max relative loss error %.3g, max |dlogits error| %.3g\n", worst_l,
         worst_d);
  /* bad arguments are refused, not crashed on */
  float l1[N_];
  CHECK_EQ_INT(O->softmax_xent_vp(b32, 3, l1, full, full, tg, N_, VP_, V_, 0, 0.0f), ZP_E_INVALID);
  CHECK_EQ_INT(O->softmax_xent_vp(b32, 0, l1, full, full, tg, N_, 8, 9, 0, 0.0f), ZP_E_INVALID);
}

static void test_encoder_masked(void) {
  enum { B = 2, T = 3, C = 5, V = 12 };
  float wte[V * C], wpe[T * C], dout[B * T * C], ref[B * T * C], dwte[V * C], dwpe[T * C];
  int32_t in[B * T] = {0, 5, 11, 5, 7, 3};
  for (int i = 0; i < V * C; i++) wte[i] = (float)(urand(3, (uint64_t)i) - 0.5);
  for (int i = 0; i < T * C; i++) wpe[i] = (float)(urand(4, (uint64_t)i) - 0.5);
  for (int i = 0; i < B * T * C; i++) dout[i] = (float)(urand(5, (uint64_t)i) - 0.5);
  CHECK_EQ_INT(O->encoder_fwd(b32, ref, in, wte, wpe, B, T, C), 0);
  memset(dwte, 0, sizeof dwte);
  memset(dwpe, 0, sizeof dwpe);
  CHECK_EQ_INT(O->encoder_bwd(b32, dwte, dwpe, dout, in, B, T, C), 0);
  for (int tp = 2; tp <= 4; tp += 2) {
    int Vl = V / tp;
    float sum[B * T * C];
    memset(sum, 0, sizeof sum);
    for (int q = 0; q < tp; q++) {
      int32_t ids[B * T];
      for (int i = 0; i < B * T; i++) ids[i] = in[i] >= q * Vl && in[i] < (q + 1) * Vl ? in[i] - q * Vl : -1;
      float out[B * T * C], lw[V * C], lp[T * C];
      CHECK_EQ_INT(O->encoder_masked_fwd(b32, out, ids, wte + (size_t)q * Vl * C, q == 0 ? wpe : NULL, B, T, C), 0);
      for (int i = 0; i < B * T * C; i++) sum[i] += out[i]; /* the all-reduce, rank order */
      memset(lw, 0, sizeof lw);
      memset(lp, 0, sizeof lp);
      CHECK_EQ_INT(O->encoder_masked_bwd(b32, lw, lp, dout, ids, B, T, C), 0);
      CHECK(memcmp(lw, dwte + (size_t)q * Vl * C, (size_t)Vl * C * sizeof(float)) == 0);
      CHECK(memcmp(lp, dwpe, sizeof lp) == 0);
    }
    CHECK_MSG(memcmp(sum, ref, sizeof ref) == 0, "tp %d: masked embedding summed over ranks is not bitwise the full one", tp);
  }
}

static void test_layout_init(void) {
  char err[512];
  zp_gpt2_shape s = {2, 4, 16, 8, 37, 40};
  zp_model_layout gl;
  CHECK_EQ_INT(zp_model_layout_init(&gl, &s, err, sizeof err), 0);
  for (int tp = 2; tp <= 4; tp *= 2) {
    for (int g = 0; g < gl.n_groups; g++) {
      uint64_t gn = zp_group_padded(&gl, g, 1);
      float* gv = malloc(gn * sizeof(float));
      int* seen = calloc(gn, sizeof(int));
      zp_model_init_range(&gl, 1337, g, 0, gn, gv, ZP_F32);
      uint64_t numel_sum = 0;
      for (int q = 0; q < tp; q++) {
        zp_model_layout l;
        CHECK_EQ_INT(zp_model_layout_init(&l, &s, err, sizeof err), 0);
        CHECK_EQ_INT(zp_model_layout_shard_tp(&l, tp, q, err, sizeof err), 0);
        uint64_t ln = zp_group_padded(&l, g, 1);
        float* lv = malloc(ln * sizeof(float));
        zp_model_init_range(&l, 1337, g, 0, ln, lv, ZP_F32);
        for (int ti = l.group_first_tensor[g]; ti < l.group_first_tensor[g + 1]; ti++) {
          const zp_tensor_desc* t = &l.tensors[ti];
          const zp_tensor_desc* u = &gl.tensors[ti];
          if (!t->tp_split && q) continue;
          for (uint64_t k = 0; k < t->numel; k++) {
            uint64_t gk = zp_tp_global_index(t, tp, q, k);
            CHECK(gk < u->numel);
            if (gk >= u->numel) break;
            seen[u->offset + gk]++;
            if (memcmp(&lv[t->offset + k], &gv[u->offset + gk], 4) != 0) {
              CHECK_MSG(0, "tp %d rank %d %s element %llu: %g vs global %g", tp, q, t->name, (unsigned long long)k,
                        (double)lv[t->offset + k], (double)gv[u->offset + gk]);
              break;
            }
          }
        }
        numel_sum += l.group_numel[g];
        free(lv);
        zp_model_layout_free(&l);
      }
      for (int ti = gl.group_first_tensor[g]; ti < gl.group_first_tensor[g + 1]; ti++) {
        const zp_tensor_desc* u = &gl.tensors[ti];
        for (uint64_t k = 0; k < u->numel; k++)
          if (seen[u->offset + k] != 1) {
            CHECK_MSG(0, "tp %d: global %s element %llu held %d times", tp, u->name, (unsigned long long)k, seen[u->offset + k]);
            break;
          }
      }
      (void)numel_sum;
      free(gv);
      free(seen);
    }
  }
  zp_model_layout_free(&gl);
}

static void test_refusals(void) {
  char err[512];
  zp_gpt2_shape s = {2, 4, 16, 8, 37, 40};
  zp_model_layout l;
  CHECK_EQ_INT(zp_model_layout_init(&l, &s, err, sizeof err), 0);
  err[0] = 0;
  CHECK_EQ_INT(zp_model_layout_shard_tp(&l, 3, 0, err, sizeof err), ZP_E_INVALID);
  CHECK_STR_CONTAINS(err, "model.n_head = 4");
  zp_model_layout_free(&l);
  zp_gpt2_shape s2 = {2, 4, 16, 8, 37, 42};
  CHECK_EQ_INT(zp_model_layout_init(&l, &s2, err, sizeof err), 0);
  CHECK_EQ_INT(zp_model_layout_shard_tp(&l, 4, 0, err, sizeof err), ZP_E_INVALID);
  CHECK_STR_CONTAINS(err, "padded vocabulary 42");
  zp_model_layout_free(&l);
}

int main(void) {
  O = zp_cpu_backend_ops();
  memset(&host, 0, sizeof host);
  host.struct_size = sizeof host;
  host.abi_major = ZP_ABI_MAJOR;
  host.abi_minor = ZP_ABI_MINOR;
  host.set_error = t_set_error;
  host.world_size = 1;
  zp_backend_config c32 = {sizeof c32, ZP_F32, 0, 1}, c64 = {sizeof c64, ZP_F64, 0, 1};
  if (O->create(&host, &c32, &b32) || O->create(&host, &c64, &b64)) {
    fprintf(stderr, "cannot create the cpu backend: %s\n", last_err);
    return 1;
  }
  ZT_RUN(test_xent_vp);
  ZT_RUN(test_encoder_masked);
  ZT_RUN(test_layout_init);
  ZT_RUN(test_refusals);
  O->destroy(b32);
  O->destroy(b64);
  return zt_done();
}
