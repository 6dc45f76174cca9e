/* test_cpu_ops.c: the CPU backend (core/backend_cpu.c) against references.
 * Invariants checked: every backward op matches central finite differences of its forward in
 * F64; backward ops accumulate (dweight twice = 2x, exactly) or overwrite (dinp) as the
 * contract says; F32 forwards match F64 within ~1e-5; built-in GEMM matches a naive loop and
 * BLAS; AdamW matches a double-precision scalar reference; bf16 rounding is round-to-nearest-
 * even, once; results are bitwise identical with 1 and 2 OpenMP threads; sumsq_many (ABI 1.8)
 * equals per-tensor sumsq bit for bit. */
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cpu.h"
#include "bf16.h"
#include "gemm_cpu.h"
#include "zt.h"

static const zp_backend_ops* O;
static zp_backend* b32;
static zp_backend* b64;

/* ---- host with set_error capture ---- */
static char last_err[512];
static void t_set_error(zp_host_ctx* ctx, const char* fmt, ...) {
  (void)ctx;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_err, sizeof last_err, fmt, ap);
  va_end(ap);
}
static zp_host host;

/* ---- deterministic random numbers ---- */
static uint64_t rs = 0x1234567887654321ull;
static double urand(void) { /* [0,1) */
  uint64_t z = (rs += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}
static void rand_fill(double* x, size_t n, double lo, double hi) {
  for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * urand();
}
static double* dalloc(size_t n) { return (double*)calloc(n ? n : 1, sizeof(double)); }
static float* falloc(size_t n) { return (float*)calloc(n ? n : 1, sizeof(float)); }
static double* drand(size_t n, double lo, double hi) {
  double* x = dalloc(n);
  rand_fill(x, n, lo, hi);
  return x;
}
static double dot(const double* a, const double* b, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++) s += a[i] * b[i];
  return s;
}
/* round doubles to float values, in place (so F32 and F64 runs see identical inputs) */
static void round_to_f32(double* x, size_t n) {
  for (size_t i = 0; i < n; i++) x[i] = (double)(float)x[i];
}
static float* to_f32(const double* x, size_t n) {
  float* f = falloc(n);
  for (size_t i = 0; i < n; i++) f[i] = (float)x[i];
  return f;
}

/* ---- finite differences ----
 * Central differences with h = 1e-5 (relative) are good to ~1e-10 here; the check uses
 * rel 1e-7 + abs 1e-9, tight enough to notice F64 layernorm backward using fp32 statistics. */
typedef double (*loss_fn)(void* ctx);
static void fd_check(const char* what, loss_fn f, void* ctx, double* x, size_t n,
                     const double* ana) {
  int bad = 0;
  for (size_t i = 0; i < n; i++) {
    const double s = x[i], h = 1e-5 * (fabs(s) > 1 ? fabs(s) : 1);
    x[i] = s + h;
    const double xp = x[i], lp = f(ctx);
    x[i] = s - h;
    const double xm = x[i], lm = f(ctx);
    x[i] = s;
    const double num = (lp - lm) / (xp - xm);
    if (!(fabs(ana[i] - num) <= 1e-9 + 1e-7 * fabs(num))) {
      if (bad < 5)
        fprintf(stderr, "  %s[%zu]: analytic %.12g numeric %.12g\n", what, i, ana[i], num);
      bad++;
    }
  }
  CHECK_MSG(bad == 0, "%s: %d of %zu gradients off", what, bad, n);
}

static int all_equal(const void* a, const void* b, size_t bytes) { return memcmp(a, b, bytes) == 0; }

/* ===================== setup / info / errors ===================== */

static void test_create_info_errors(void) {
  zp_backend_config cfg = {sizeof cfg, ZP_BF16, 0, 0};
  zp_backend* bad = (zp_backend*)&cfg;
  last_err[0] = 0;
  CHECK_EQ_INT(O->create(&host, &cfg, &bad), ZP_E_INVALID);
  CHECK(bad == NULL);
  CHECK_STR_CONTAINS(last_err, "compute dtype");
  CHECK_EQ_INT(O->create(NULL, &cfg, &bad), ZP_E_INVALID); /* no host: no crash */

  zp_backend_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  CHECK_EQ_INT(O->info(b64, &info), ZP_OK);
  CHECK_EQ_INT(info.compute_dtype, ZP_F64);
  CHECK_STR_CONTAINS(info.device_name, "cpu (");
  CHECK_STR_CONTAINS(info.device_name, "thread");
  CHECK(info.peak_flops == 0);
  if (zp_gemm_blas_compiled()) CHECK_STR_CONTAINS(info.device_name, "OpenBLAS");
  setenv("ZP_CPU_GEMM", "builtin", 1);
  CHECK_EQ_INT(O->info(b64, &info), ZP_OK);
  CHECK_STR_CONTAINS(info.device_name, "built-in GEMM");
  unsetenv("ZP_CPU_GEMM");

  void* p = NULL;
  CHECK_EQ_INT(O->alloc(b32, 100, &p), ZP_OK);
  CHECK(p != NULL && ((uintptr_t)p % 64) == 0);
  memset(p, 1, 100);
  CHECK_EQ_INT(O->memset0(b32, p, 100), ZP_OK);
  CHECK(((unsigned char*)p)[99] == 0);
  O->free(b32, p);

  /* argument errors come back as ZP_E_INVALID with a message */
  double qkv[3 * 6], out[6], aux[4];
  last_err[0] = 0;
  CHECK_EQ_INT(O->attention_fwd(b64, out, aux, qkv, 1, 1, 6, 4), ZP_E_INVALID);
  CHECK_STR_CONTAINS(last_err, "attention_fwd");
  double logits[4] = {0, 1, 2, 3};
  float loss[1];
  int32_t tg[1] = {3};
  last_err[0] = 0;
  CHECK_EQ_INT(O->softmax_xent(b64, loss, logits, tg, 1, 3, 4, 1.0f), ZP_E_INVALID);
  CHECK_STR_CONTAINS(last_err, "target");
  CHECK(logits[0] == 0 && logits[3] == 3); /* untouched */
  int32_t neg[2] = {0, -1};
  double wte[4] = {0}, wpe[4] = {0}, eo[4];
  CHECK_EQ_INT(O->encoder_fwd(b64, eo, neg, wte, wpe, 1, 2, 2), ZP_E_INVALID);
  CHECK_EQ_INT(O->cast(b64, eo, ZP_F32, wte, ZP_I32, 2), ZP_E_INVALID);
  CHECK_EQ_INT(O->adamw(b64, NULL, ZP_F32, (float*)eo, wte, ZP_F32, (float*)eo, (float*)eo, 1,
                        1e-3f, 0.9f, 0.999f, 1e-8f, 0, 1, 0),
               ZP_E_INVALID);
}

/* ===================== finite-difference checks (F64) ===================== */

enum { FB = 2, FT = 5, FC = 8, FNH = 2, FV = 7 };

typedef struct {
  int B, T, C;
  int32_t* inp;
  double *wte, *wpe, *R, *out;
} enc_ctx;
static double enc_loss(void* p) {
  enc_ctx* c = (enc_ctx*)p;
  O->encoder_fwd(b64, c->out, c->inp, c->wte, c->wpe, c->B, c->T, c->C);
  return dot(c->out, c->R, (size_t)c->B * c->T * c->C);
}
static void test_fd_encoder(void) {
  const size_t n = (size_t)FB * FT * FC;
  int32_t inp[FB * FT] = {1, 3, 1, 0, 6, 3, 3, 2, 1, 5}; /* duplicates on purpose */
  enc_ctx c = {FB, FT, FC, inp, drand((size_t)FV * FC, -1, 1), drand((size_t)FT * FC, -1, 1),
               drand(n, -1, 1), dalloc(n)};
  double* dwte = dalloc((size_t)FV * FC);
  double* dwpe = dalloc((size_t)FT * FC);
  CHECK_EQ_INT(O->encoder_bwd(b64, dwte, dwpe, c.R, inp, FB, FT, FC), ZP_OK);
  fd_check("encoder dwte", enc_loss, &c, c.wte, (size_t)FV * FC, dwte);
  fd_check("encoder dwpe", enc_loss, &c, c.wpe, (size_t)FT * FC, dwpe);
  /* accumulate: a second call doubles exactly */
  double* w2 = dalloc((size_t)FV * FC);
  double* p2 = dalloc((size_t)FT * FC);
  memcpy(w2, dwte, sizeof(double) * FV * FC);
  memcpy(p2, dwpe, sizeof(double) * FT * FC);
  O->encoder_bwd(b64, dwte, dwpe, c.R, inp, FB, FT, FC);
  int ok = 1;
  for (int i = 0; i < FV * FC; i++) ok &= dwte[i] == 2 * w2[i];
  for (int i = 0; i < FT * FC; i++) ok &= dwpe[i] == 2 * p2[i];
  CHECK_MSG(ok, "encoder_bwd twice is not exactly 2x");
  free(c.wte), free(c.wpe), free(c.R), free(c.out), free(dwte), free(dwpe), free(w2), free(p2);
}

typedef struct {
  int N, C;
  double *inp, *w, *bias, *R, *out;
  float *mean, *rstd;
} ln_ctx;
static double ln_loss(void* p) {
  ln_ctx* c = (ln_ctx*)p;
  O->layernorm_fwd(b64, c->out, c->mean, c->rstd, c->inp, c->w, c->bias, c->N, c->C);
  return dot(c->out, c->R, (size_t)c->N * c->C);
}
static void test_fd_layernorm(void) {
  const int N = FB * FT, C = FC;
  const size_t n = (size_t)N * C;
  ln_ctx c = {N, C, drand(n, -2, 2), drand(C, 0.5, 1.5), drand(C, -0.5, 0.5), drand(n, -1, 1),
              dalloc(n), falloc(N), falloc(N)};
  for (int i = 0; i < C; i++) c.inp[i] += 3.0; /* a row with a non-zero mean */
  double *dinp = dalloc(n), *dw = dalloc(C), *db = dalloc(C);
  ln_loss(&c);
  CHECK_EQ_INT(O->layernorm_bwd(b64, dinp, dw, db, c.R, c.inp, c.w, c.mean, c.rstd, N, C), ZP_OK);
  fd_check("layernorm dinp", ln_loss, &c, c.inp, n, dinp);
  fd_check("layernorm dw", ln_loss, &c, c.w, C, dw);
  fd_check("layernorm dbias", ln_loss, &c, c.bias, C, db);
  /* statistics are fp32 and right */
  double m0 = 0;
  for (int i = 0; i < C; i++) m0 += c.inp[i] / C;
  CHECK_NEAR(c.mean[0], m0, 1e-6, 1e-6);
  /* accumulate: dinp, dw, dbias all double exactly */
  double *i2 = dalloc(n), *w2 = dalloc(C), *b2 = dalloc(C);
  memcpy(i2, dinp, n * 8), memcpy(w2, dw, C * 8), memcpy(b2, db, C * 8);
  ln_loss(&c);
  O->layernorm_bwd(b64, dinp, dw, db, c.R, c.inp, c.w, c.mean, c.rstd, N, C);
  int ok = 1;
  for (size_t i = 0; i < n; i++) ok &= dinp[i] == 2 * i2[i];
  for (int i = 0; i < C; i++) ok &= dw[i] == 2 * w2[i] && db[i] == 2 * b2[i];
  CHECK_MSG(ok, "layernorm_bwd twice is not exactly 2x");
  /* no bias */
  double* bias0 = c.bias;
  c.bias = NULL;
  memset(dinp, 0, n * 8), memset(dw, 0, C * 8);
  ln_loss(&c);
  CHECK_EQ_INT(O->layernorm_bwd(b64, dinp, dw, NULL, c.R, c.inp, c.w, c.mean, c.rstd, N, C),
               ZP_OK);
  fd_check("layernorm(no bias) dw", ln_loss, &c, c.w, C, dw);
  free(c.inp), free(c.w), free(bias0), free(b2), free(c.R), free(c.out), free(c.mean), free(c.rstd);
  free(dinp), free(dw), free(db), free(i2), free(w2);
}

typedef struct {
  int N, IC, OC;
  double *inp, *w, *bias, *R, *out;
} mm_ctx;
static double mm_loss(void* p) {
  mm_ctx* c = (mm_ctx*)p;
  O->matmul_fwd(b64, c->out, c->inp, c->w, c->bias, c->N, c->IC, c->OC);
  return dot(c->out, c->R, (size_t)c->N * c->OC);
}
static void matmul_fd_case(int with_bias) {
  const int N = FB * FT, IC = FC, OC = 6;
  mm_ctx c = {N, IC, OC, drand((size_t)N * IC, -1, 1), drand((size_t)OC * IC, -1, 1),
              with_bias ? drand(OC, -1, 1) : NULL, drand((size_t)N * OC, -1, 1),
              dalloc((size_t)N * OC)};
  double *dinp = dalloc((size_t)N * IC), *dw = dalloc((size_t)OC * IC), *db = dalloc(OC);
  for (size_t i = 0; i < (size_t)N * IC; i++) dinp[i] = NAN; /* overwritten, never read */
  CHECK_EQ_INT(O->matmul_bwd(b64, dinp, dw, with_bias ? db : NULL, c.R, c.inp, c.w, N, IC, OC),
               ZP_OK);
  fd_check(with_bias ? "matmul dinp" : "matmul(nobias) dinp", mm_loss, &c, c.inp,
           (size_t)N * IC, dinp);
  fd_check(with_bias ? "matmul dw" : "matmul(nobias) dw", mm_loss, &c, c.w, (size_t)OC * IC, dw);
  if (with_bias) fd_check("matmul dbias", mm_loss, &c, c.bias, OC, db);
  /* dinp NULL path: dw/dbias accumulate exactly 2x, dinp untouched elsewhere */
  double *w2 = dalloc((size_t)OC * IC), *b2 = dalloc(OC);
  memcpy(w2, dw, sizeof(double) * OC * IC), memcpy(b2, db, sizeof(double) * OC);
  CHECK_EQ_INT(O->matmul_bwd(b64, NULL, dw, with_bias ? db : NULL, c.R, c.inp, NULL, N, IC, OC),
               ZP_OK);
  int ok = 1;
  for (int i = 0; i < OC * IC; i++) ok &= dw[i] == 2 * w2[i];
  for (int i = 0; i < OC; i++) ok &= db[i] == (with_bias ? 2 * b2[i] : 0.0);
  CHECK_MSG(ok, "matmul_bwd twice is not exactly 2x");
  /* dinp is overwritten: a second call gives the same dinp */
  double* d2 = dalloc((size_t)N * IC);
  O->matmul_bwd(b64, d2, NULL, NULL, c.R, c.inp, c.w, N, IC, OC);
  O->matmul_bwd(b64, d2, NULL, NULL, c.R, c.inp, c.w, N, IC, OC);
  CHECK(all_equal(d2, dinp, sizeof(double) * N * IC));
  free(c.inp), free(c.w), free(c.bias), free(c.R), free(c.out), free(dinp), free(dw), free(db);
  free(w2), free(b2), free(d2);
}
static void test_fd_matmul(void) {
  matmul_fd_case(1);
  matmul_fd_case(0);
}

typedef struct {
  int B, T, C, NH;
  double *qkv, *R, *out, *aux;
} att_ctx;
static double att_loss(void* p) {
  att_ctx* c = (att_ctx*)p;
  O->attention_fwd(b64, c->out, c->aux, c->qkv, c->B, c->T, c->C, c->NH);
  return dot(c->out, c->R, (size_t)c->B * c->T * c->C);
}
static void test_fd_attention(void) {
  const size_t nq = (size_t)FB * FT * 3 * FC, no = (size_t)FB * FT * FC;
  const size_t auxb = O->attention_aux_bytes(b64, FB, FT, FC, FNH);
  CHECK_EQ_INT(auxb, (size_t)FB * FNH * FT * FT * sizeof(double));
  att_ctx c = {FB, FT, FC, FNH, drand(nq, -1.5, 1.5), drand(no, -1, 1), dalloc(no),
               (double*)malloc(auxb)};
  double* dqkv = dalloc(nq);
  for (size_t i = 0; i < nq; i++) dqkv[i] = NAN; /* overwritten */
  att_loss(&c);
  /* aux rows are probabilities: sum to 1, zero above the diagonal */
  int ok = 1;
  for (int r = 0; r < FB * FNH * FT; r++) {
    const int t = r % FT;
    double s = 0;
    for (int j = 0; j < FT; j++) {
      s += c.aux[(size_t)r * FT + j];
      if (j > t) ok &= c.aux[(size_t)r * FT + j] == 0;
    }
    ok &= fabs(s - 1) < 1e-12;
  }
  CHECK_MSG(ok, "attention aux is not causal softmax probabilities");
  CHECK_EQ_INT(O->attention_bwd(b64, dqkv, c.R, c.qkv, c.out, c.aux, FB, FT, FC, FNH), ZP_OK);
  fd_check("attention dqkv", att_loss, &c, c.qkv, nq, dqkv);
  /* out == NULL path (D recomputed from P and V) agrees */
  double* d2 = dalloc(nq);
  att_loss(&c);
  CHECK_EQ_INT(O->attention_bwd(b64, d2, c.R, c.qkv, NULL, c.aux, FB, FT, FC, FNH), ZP_OK);
  int close = 1;
  for (size_t i = 0; i < nq; i++) close &= fabs(d2[i] - dqkv[i]) <= 1e-12 + 1e-10 * fabs(dqkv[i]);
  CHECK_MSG(close, "attention_bwd without out disagrees");
  free(c.qkv), free(c.R), free(c.out), free(c.aux), free(dqkv), free(d2);
}

typedef struct {
  size_t n;
  double *inp, *R, *out;
} gelu_ctx;
static double gelu_loss(void* p) {
  gelu_ctx* c = (gelu_ctx*)p;
  O->gelu_fwd(b64, c->out, c->inp, c->n);
  return dot(c->out, c->R, c->n);
}
static void test_fd_gelu_residual(void) {
  const size_t n = 40;
  gelu_ctx c = {n, drand(n, -4, 4), drand(n, -1, 1), dalloc(n)};
  c.inp[0] = 0.0;
  double* d = dalloc(n);
  CHECK_EQ_INT(O->gelu_bwd(b64, d, c.inp, c.R, n), ZP_OK);
  fd_check("gelu dinp", gelu_loss, &c, c.inp, n, d);
  /* formula spot check */
  gelu_loss(&c);
  const double x = c.inp[3];
  CHECK_NEAR(c.out[3], 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))), 1e-15,
             1e-14);
  /* residual: out = a + c, exactly; its gradient is the identity (d/da = d/dc = dout) */
  double *a = drand(n, -1, 1), *r = dalloc(n);
  CHECK_EQ_INT(O->residual_fwd(b64, r, a, c.inp, n), ZP_OK);
  int ok = 1;
  for (size_t i = 0; i < n; i++) ok &= r[i] == a[i] + c.inp[i];
  CHECK(ok);
  free(c.inp), free(c.R), free(c.out), free(d), free(a), free(r);
}

/* softmax_xent: losses are fp32 by contract, too coarse for finite differences, so the
 * numeric gradient is taken of a double-precision reference of the same loss, and the op's
 * losses are checked against that reference separately. */
typedef struct {
  int N, V, Vp;
  double* logits;
  const int32_t* tg;
} sx_ctx;
static double sx_ref_loss(void* p) {
  sx_ctx* c = (sx_ctx*)p;
  double L = 0;
  for (int n = 0; n < c->N; n++) {
    if (c->tg[n] < 0) continue;
    const double* x = c->logits + (size_t)n * c->Vp;
    double mx = x[0], s = 0;
    for (int j = 1; j < c->V; j++) mx = x[j] > mx ? x[j] : mx;
    for (int j = 0; j < c->V; j++) s += exp(x[j] - mx);
    L += log(s) - (x[c->tg[n]] - mx);
  }
  return L;
}
static void test_fd_softmax_xent(void) {
  enum { N = 6, V = 7, Vp = 9 };
  const int32_t tg[N] = {0, 6, -1, 3, 3, 2};
  double* x = drand((size_t)N * Vp, -3, 3);
  for (int n = 0; n < N; n++) x[(size_t)n * Vp + 7] = x[(size_t)n * Vp + 8] = 100.0; /* pad */
  sx_ctx c = {N, V, Vp, x, tg};
  double* g = dalloc((size_t)N * Vp);
  memcpy(g, x, sizeof(double) * N * Vp);
  float losses[N];
  /* dloss = 0: losses only, logits untouched */
  double* keep = dalloc((size_t)N * Vp);
  memcpy(keep, x, sizeof(double) * N * Vp);
  CHECK_EQ_INT(O->softmax_xent(b64, losses, keep, tg, N, V, Vp, 0.0f), ZP_OK);
  CHECK(all_equal(keep, x, sizeof(double) * N * Vp));
  CHECK_EQ_INT(O->softmax_xent(b64, losses, g, tg, N, V, Vp, 1.0f), ZP_OK);
  /* per-row losses against the double reference */
  for (int n = 0; n < N; n++) {
    sx_ctx one = {1, V, Vp, x + (size_t)n * Vp, tg + n};
    CHECK_NEAR(losses[n], sx_ref_loss(&one), 1e-6, 1e-6);
  }
  CHECK(losses[2] == 0.0f);
  fd_check("softmax_xent dlogits", sx_ref_loss, &c, x, (size_t)N * Vp, g);
  int ok = 1;
  for (int n = 0; n < N; n++)
    for (int j = V; j < Vp; j++) ok &= g[(size_t)n * Vp + j] == 0.0;
  for (int j = 0; j < Vp; j++) ok &= g[2 * Vp + j] == 0.0; /* ignored row */
  CHECK_MSG(ok, "padded columns / ignored row must have zero gradient");
  /* dloss scales the gradient */
  double* h = dalloc((size_t)N * Vp);
  memcpy(h, x, sizeof(double) * N * Vp);
  O->softmax_xent(b64, losses, h, tg, N, V, Vp, 0.25f);
  ok = 1;
  for (int i = 0; i < N * Vp; i++) ok &= fabs(h[i] - 0.25 * g[i]) <= 1e-15;
  CHECK(ok);
  free(x), free(g), free(keep), free(h);
}

/* ===================== F32 vs F64 forwards ===================== */

static int close_arrays(const char* what, const float* a, const double* ref, size_t n,
                        double rtol) {
  double mx = 0;
  for (size_t i = 0; i < n; i++) mx = fabs(ref[i]) > mx ? fabs(ref[i]) : mx;
  int bad = 0;
  for (size_t i = 0; i < n; i++)
    if (!(fabs((double)a[i] - ref[i]) <= rtol * (fabs(ref[i]) + 1e-2 * mx))) {
      if (bad < 3) fprintf(stderr, "  %s[%zu]: f32 %.9g f64 %.12g\n", what, i, a[i], ref[i]);
      bad++;
    }
  CHECK_MSG(bad == 0, "%s: %d of %zu off", what, bad, n);
  return bad == 0;
}

static void test_f32_vs_f64(void) {
  enum { B = 2, T = 16, C = 32, NH = 4, V = 50, Vp = 64, N = B * T };
  int32_t inp[N], tg[N];
  for (int i = 0; i < N; i++) inp[i] = (int32_t)(urand() * V), tg[i] = (int32_t)(urand() * V);
  tg[5] = -1;
  double *wte = drand((size_t)V * C, -1, 1), *wpe = drand((size_t)T * C, -1, 1);
  double *lw = drand(C, 0.5, 1.5), *lb = drand(C, -0.5, 0.5);
  double *mw = drand((size_t)3 * C * C, -0.3, 0.3), *mb = drand(3 * C, -0.3, 0.3);
  double* logits = drand((size_t)N * Vp, -4, 4);
  round_to_f32(wte, (size_t)V * C), round_to_f32(wpe, (size_t)T * C), round_to_f32(lw, C);
  round_to_f32(lb, C), round_to_f32(mw, (size_t)3 * C * C), round_to_f32(mb, 3 * C);
  round_to_f32(logits, (size_t)N * Vp);
  /* F64 chain */
  double *e = dalloc((size_t)N * C), *ln = dalloc((size_t)N * C), *qkv = dalloc((size_t)N * 3 * C);
  double *att = dalloc((size_t)N * C), *ge = dalloc((size_t)N * C), *res = dalloc((size_t)N * C);
  double* aux = (double*)malloc(O->attention_aux_bytes(b64, B, T, C, NH));
  float *m64 = falloc(N), *r64 = falloc(N);
  O->encoder_fwd(b64, e, inp, wte, wpe, B, T, C);
  O->layernorm_fwd(b64, ln, m64, r64, e, lw, lb, N, C);
  O->matmul_fwd(b64, qkv, ln, mw, mb, N, C, 3 * C);
  O->attention_fwd(b64, att, aux, qkv, B, T, C, NH);
  O->gelu_fwd(b64, ge, att, (size_t)N * C);
  O->residual_fwd(b64, res, ge, e, (size_t)N * C);
  float l64[N];
  double* g64 = dalloc((size_t)N * Vp);
  memcpy(g64, logits, sizeof(double) * N * Vp);
  O->softmax_xent(b64, l64, g64, tg, N, V, Vp, 1.0f / N);
  /* F32, each op fed the F64 chain's inputs (rounded) so errors do not compound */
  float *fwte = to_f32(wte, (size_t)V * C), *fwpe = to_f32(wpe, (size_t)T * C);
  float *flw = to_f32(lw, C), *flb = to_f32(lb, C), *fmw = to_f32(mw, (size_t)3 * C * C);
  float *fmb = to_f32(mb, 3 * C), *o = falloc((size_t)N * (Vp > 3 * C ? Vp : 3 * C)), *m32 = falloc(N), *r32 = falloc(N);
  float* faux = (float*)malloc(O->attention_aux_bytes(b32, B, T, C, NH));
  O->encoder_fwd(b32, o, inp, fwte, fwpe, B, T, C);
  close_arrays("encoder", o, e, (size_t)N * C, 1e-6);
  float* fe = to_f32(e, (size_t)N * C);
  O->layernorm_fwd(b32, o, m32, r32, fe, flw, flb, N, C);
  close_arrays("layernorm", o, ln, (size_t)N * C, 1e-5);
  int ok = 1;
  for (int i = 0; i < N; i++)
    ok &= fabsf(m32[i] - m64[i]) <= 1e-6f && fabsf(r32[i] - r64[i]) <= 1e-6f * r64[i];
  CHECK_MSG(ok, "layernorm statistics F32 vs F64");
  float* fln = to_f32(ln, (size_t)N * C);
  O->matmul_fwd(b32, o, fln, fmw, fmb, N, C, 3 * C);
  close_arrays("matmul", o, qkv, (size_t)N * 3 * C, 1e-5);
  float* fq = to_f32(qkv, (size_t)N * 3 * C);
  O->attention_fwd(b32, o, faux, fq, B, T, C, NH);
  close_arrays("attention", o, att, (size_t)N * C, 1e-5);
  double* a64 = aux;
  float* a32 = faux;
  close_arrays("attention probs", a32, a64, (size_t)B * NH * T * T, 1e-5);
  float* fa = to_f32(att, (size_t)N * C);
  O->gelu_fwd(b32, o, fa, (size_t)N * C);
  close_arrays("gelu", o, ge, (size_t)N * C, 1e-5);
  float* fg = to_f32(ge, (size_t)N * C);
  O->residual_fwd(b32, o, fg, fe, (size_t)N * C);
  close_arrays("residual", o, res, (size_t)N * C, 1e-6);
  float l32[N];
  float* fl = to_f32(logits, (size_t)N * Vp);
  O->softmax_xent(b32, l32, fl, tg, N, V, Vp, 1.0f / N);
  double dl[N];
  for (int i = 0; i < N; i++) dl[i] = l64[i];
  close_arrays("xent loss", l32, dl, N, 1e-5);
  close_arrays("xent dlogits", fl, g64, (size_t)N * Vp, 1e-5);
  free(wte), free(wpe), free(lw), free(lb), free(mw), free(mb), free(logits), free(e), free(ln);
  free(qkv), free(att), free(ge), free(res), free(aux), free(m64), free(r64), free(g64);
  free(fwte), free(fwpe), free(flw), free(flb), free(fmw), free(fmb), free(o), free(m32);
  free(r32), free(faux), free(fe), free(fln), free(fq), free(fa), free(fg), free(fl);
}

/* ===================== GEMM ===================== */

/* C = alpha op(A) op(B) + beta C in double, and sum |a||b| for the tolerance */
static void naive_gemm(int ta, int tb, int M, int N, int K, double alpha, const double* A,
                       const double* B, double beta, const double* C0, double* C, double* mag) {
  for (int i = 0; i < M; i++)
    for (int j = 0; j < N; j++) {
      double s = 0, m = 0;
      for (int k = 0; k < K; k++) {
        const double a = ta ? A[(size_t)k * M + i] : A[(size_t)i * K + k];
        const double b = tb ? B[(size_t)j * K + k] : B[(size_t)k * N + j];
        s += a * b;
        m += fabs(a * b);
      }
      C[(size_t)i * N + j] = alpha * s + (beta != 0 ? beta * C0[(size_t)i * N + j] : 0);
      mag[(size_t)i * N + j] = fabs(alpha) * m + fabs(beta * C0[(size_t)i * N + j]);
    }
}

static void gemm_case(int M, int N, int K, int ta, int tb, double alpha, double beta) {
  const size_t na = (size_t)M * K, nb = (size_t)K * N, nc = (size_t)M * N;
  double *A = drand(na, -1, 1), *B = drand(nb, -1, 1), *C0 = drand(nc, -1, 1);
  round_to_f32(A, na), round_to_f32(B, nb), round_to_f32(C0, nc);
  double *R = dalloc(nc), *mag = dalloc(nc);
  naive_gemm(ta, tb, M, N, K, alpha, A, B, beta, C0, R, mag);
  float *fA = to_f32(A, na), *fB = to_f32(B, nb), *fC = falloc(nc), *fC2 = falloc(nc);
  double *dC = dalloc(nc), *dC2 = dalloc(nc);
  const int lda = ta ? M : K, ldb = tb ? K : N;
  for (int impl = 0; impl < 2; impl++) { /* 0: built-in, 1: zp_gemm_* (BLAS when present) */
    for (size_t i = 0; i < nc; i++) {
      fC[i] = beta == 0 ? NAN : (float)C0[i]; /* beta 0 must not read C */
      dC[i] = beta == 0 ? NAN : C0[i];
    }
    int s1 = impl ? zp_gemm_f32(ta, tb, M, N, K, (float)alpha, fA, lda, fB, ldb, (float)beta, fC, N)
                  : zp_gemm_builtin_f32(ta, tb, M, N, K, (float)alpha, fA, lda, fB, ldb,
                                        (float)beta, fC, N);
    int s2 = impl ? zp_gemm_f64(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, dC, N)
                  : zp_gemm_builtin_f64(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, dC, N);
    CHECK_EQ_INT(s1, ZP_OK);
    CHECK_EQ_INT(s2, ZP_OK);
    int bad32 = 0, bad64 = 0;
    for (size_t i = 0; i < nc; i++) {
      if (!(fabs(fC[i] - R[i]) <= 2e-6 * mag[i] + 1e-30)) bad32++;
      if (!(fabs(dC[i] - R[i]) <= 1e-14 * mag[i] + 1e-300)) bad64++;
    }
    CHECK_MSG(bad32 == 0 && bad64 == 0,
              "%s gemm M=%d N=%d K=%d ta=%d tb=%d alpha=%g beta=%g: f32 bad %d, f64 bad %d",
              impl ? "dispatch" : "built-in", M, N, K, ta, tb, alpha, beta, bad32, bad64);
    if (impl == 0) memcpy(fC2, fC, nc * 4), memcpy(dC2, dC, nc * 8);
  }
  /* built-in vs the dispatch (BLAS when compiled in), directly */
  int badx = 0;
  for (size_t i = 0; i < nc; i++) {
    if (!(fabs((double)fC[i] - fC2[i]) <= 4e-6 * mag[i] + 1e-30)) badx++;
    if (!(fabs(dC[i] - dC2[i]) <= 2e-14 * mag[i] + 1e-300)) badx++;
  }
  CHECK_MSG(badx == 0, "built-in vs %s differ: M=%d N=%d K=%d ta=%d tb=%d", zp_gemm_name(), M, N,
            K, ta, tb);
  /* ZP_CPU_GEMM=builtin forces the built-in GEMM (bitwise the same as calling it) */
  setenv("ZP_CPU_GEMM", "builtin", 1);
  CHECK(!zp_gemm_uses_blas());
  for (size_t i = 0; i < nc; i++) fC[i] = (float)C0[i];
  zp_gemm_f32(ta, tb, M, N, K, (float)alpha, fA, lda, fB, ldb, (float)beta, fC, N);
  unsetenv("ZP_CPU_GEMM");
  CHECK(all_equal(fC, fC2, nc * 4));
  CHECK(zp_gemm_uses_blas() == zp_gemm_blas_compiled());
  free(A), free(B), free(C0), free(R), free(mag), free(fA), free(fB), free(fC), free(fC2);
  free(dC), free(dC2);
}

static void test_gemm(void) {
  static const int shapes[][3] = {{1, 1, 1}, {7, 13, 5}, {64, 96, 130}, {131, 263, 600},
                                  {5, 300, 3}};
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
    for (int ta = 0; ta < 2; ta++)
      for (int tb = 0; tb < 2; tb++) {
        gemm_case(shapes[s][0], shapes[s][1], shapes[s][2], ta, tb, 1.0, 0.0);
        if (s < 3) gemm_case(shapes[s][0], shapes[s][1], shapes[s][2], ta, tb, 0.5, 1.0);
      }
  gemm_case(33, 17, 9, 0, 1, -1.5, 0.25);
  /* argument checks */
  float x = 0;
  CHECK_EQ_INT(zp_gemm_builtin_f32(0, 0, -1, 1, 1, 1, &x, 1, &x, 1, 0, &x, 1), ZP_E_INVALID);
  CHECK_EQ_INT(zp_gemm_builtin_f32(0, 0, 2, 2, 2, 1, &x, 1, &x, 2, 0, &x, 2), ZP_E_INVALID);
  /* the BLAS path's per-thread ICV change does not leak to the caller */
  const int mt = omp_get_max_threads();
  float big[64 * 64] = {0};
  zp_gemm_f32(0, 0, 64, 64, 64, 1, big, 64, big, 64, 0, big, 64);
  CHECK_EQ_INT(omp_get_max_threads(), mt);
  /* K == 0: C = beta C */
  float c2[2] = {NAN, NAN};
  CHECK_EQ_INT(zp_gemm_f32(0, 0, 1, 2, 0, 1, &x, 1, &x, 2, 0, c2, 2), ZP_OK);
  CHECK(c2[0] == 0 && c2[1] == 0);
}

/* ===================== AdamW ===================== */

static void adamw_case(zp_dtype pdt, zp_dtype gdt, int param_is_master) {
  const size_t n = 1000;
  const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, gs = 0.5f;
  float *master = falloc(n), *m = falloc(n), *v = falloc(n);
  double *rm = dalloc(n), *rmo = dalloc(n), *rv = dalloc(n), *mmag = dalloc(n);
  void* grad = calloc(n, 4);
  void* param = param_is_master ? (void*)master : calloc(n, 4);
  for (size_t i = 0; i < n; i++) rm[i] = master[i] = (float)(urand() * 2 - 1);
  rm[0] = master[0] = 0.0f;
  for (int t = 1; t <= 3; t++) {
    double g[1000];
    for (size_t i = 0; i < n; i++) {
      float gv = (float)((urand() * 2 - 1) * (i % 7 == 0 ? 1e-4 : 1.0));
      if (i == 1) gv = 0;
      if (gdt == ZP_BF16) {
        ((uint16_t*)grad)[i] = zp_f32_to_bf16(gv);
        g[i] = zp_bf16_to_f32(((uint16_t*)grad)[i]);
      } else {
        ((float*)grad)[i] = gv;
        g[i] = gv;
      }
    }
    CHECK_EQ_INT(O->adamw(b32, param, pdt, master, grad, gdt, m, v, n, lr, b1, b2, eps, wd, gs, t),
                 ZP_OK);
    for (size_t i = 0; i < n; i++) {
      const double gg = g[i] * (double)gs;
      rmo[i] = (double)b1 * rmo[i] + (1 - (double)b1) * gg;
      mmag[i] = (double)b1 * mmag[i] + (1 - (double)b1) * fabs(gg);
      rv[i] = (double)b2 * rv[i] + (1 - (double)b2) * gg * gg;
      const double mh = rmo[i] / (1 - pow(b1, t)), vh = rv[i] / (1 - pow(b2, t));
      rm[i] -= (double)lr * (mh / (sqrt(vh) + (double)eps) + (double)wd * rm[i]);
    }
  }
  int bad = 0, badp = 0;
  for (size_t i = 0; i < n; i++) {
    if (!(fabs(master[i] - rm[i]) <= 1e-6 + 1e-5 * fabs(rm[i]))) bad++;
    if (!(fabs(m[i] - rmo[i]) <= 1e-6 * mmag[i] + 1e-30)) bad++; /* m may cancel to ~0 */
    if (!(fabs(v[i] - rv[i]) <= 1e-12 + 1e-5 * fabs(rv[i]))) bad++;
    if (!param_is_master) {
      if (pdt == ZP_BF16) badp += ((uint16_t*)param)[i] != zp_f32_to_bf16(master[i]);
      else badp += ((float*)param)[i] != master[i];
    }
  }
  CHECK_MSG(bad == 0 && badp == 0, "adamw pdt=%d gdt=%d same=%d: %d state off, %d param off",
            (int)pdt, (int)gdt, param_is_master, bad, badp);
  free(master), free(m), free(v), free(rm), free(rmo), free(rv), free(mmag), free(grad);
  if (!param_is_master) free(param);
}

static void test_adamw(void) {
  adamw_case(ZP_F32, ZP_F32, 1);
  adamw_case(ZP_F32, ZP_BF16, 1);
  adamw_case(ZP_F32, ZP_F32, 0);
  adamw_case(ZP_BF16, ZP_F32, 0);
  adamw_case(ZP_BF16, ZP_BF16, 0);
}

/* ===================== bf16 / cast / accumulate / fill / scale / sumsq ===================== */

static float from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static void test_bf16_cast_accumulate(void) {
  /* round to nearest even on exact ties, up above a tie */
  CHECK_EQ_INT(zp_f32_to_bf16(1.00390625f), 0x3f80);   /* 1 + 2^-8: tie -> even (1.0) */
  CHECK_EQ_INT(zp_f32_to_bf16(1.01171875f), 0x3f82);   /* 1 + 3*2^-8: tie -> even (up) */
  CHECK_EQ_INT(zp_f32_to_bf16(1.0078125f), 0x3f81);    /* exact */
  CHECK_EQ_INT(zp_f32_to_bf16(1.00390625f + 1.0f / (1 << 20)), 0x3f81); /* above tie */
  CHECK_EQ_INT(zp_f32_to_bf16(-1.00390625f), 0xbf80);
  /* NaN stays NaN, also a signalling NaN whose payload is only in the low bits */
  uint16_t h = zp_f32_to_bf16(NAN);
  CHECK((h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0);
  h = zp_f32_to_bf16(from_bits(0x7f800001u));
  CHECK(isnan(zp_bf16_to_f32(h)));
  h = zp_f32_to_bf16(from_bits(0xff800001u));
  CHECK(isnan(zp_bf16_to_f32(h)) && (h & 0x8000));
  /* infinities and large values */
  CHECK_EQ_INT(zp_f32_to_bf16(INFINITY), 0x7f80);
  CHECK_EQ_INT(zp_f32_to_bf16(-INFINITY), 0xff80);
  CHECK_EQ_INT(zp_f32_to_bf16(FLT_MAX), 0x7f80); /* above bf16 max + half ulp: overflows */
  CHECK_EQ_INT(zp_f32_to_bf16(3.0e38f), 0x7f62);
  CHECK_EQ_INT(zp_f32_to_bf16(from_bits(0x7f7f7fffu)), 0x7f7f); /* just below the tie: max */
  CHECK_NEAR(zp_bf16_to_f32(zp_f32_to_bf16(1e30f)), 1e30, 0, 1.0 / 256);
  CHECK(zp_bf16_to_f32(zp_f32_to_bf16(0x1p-130f)) == 0x1p-130f); /* subnormal, exact */
  CHECK(zp_bf16_to_f32(0x3f81) == 1.0078125f);
  /* f64 -> bf16 rounds once: 1 + 2^-8 + 2^-40 is above the tie (via fp32 it would look like
   * an exact tie and round down) */
  CHECK_EQ_INT(zp_f64_to_bf16(1.0 + 0x1p-8 + 0x1p-40), 0x3f81);
  CHECK_EQ_INT(zp_f64_to_bf16(1.0 + 0x1p-8), 0x3f80);
  CHECK_EQ_INT(zp_f64_to_bf16(1e300), 0x7f80);
  CHECK_EQ_INT(zp_f64_to_bf16(-1e-300), 0x8000);
  CHECK(isnan(zp_bf16_to_f32(zp_f64_to_bf16(NAN))));

  /* backend cast, every float combination, through the F32 backend (dtype-independent) */
  const double vals[] = {1.00390625, 1.01171875, -2.5, 0.0, 3.0e38, 1.0 + 0x1p-8 + 0x1p-40,
                         NAN, INFINITY, 1e-3};
  enum { NV = sizeof vals / sizeof vals[0] };
  double d[NV], d2[NV];
  float f[NV], f2[NV];
  uint16_t hb[NV], hb2[NV];
  memcpy(d, vals, sizeof d);
  CHECK_EQ_INT(O->cast(b32, hb, ZP_BF16, d, ZP_F64, NV), ZP_OK);
  CHECK_EQ_INT(O->cast(b32, f, ZP_F32, d, ZP_F64, NV), ZP_OK);
  CHECK_EQ_INT(O->cast(b32, hb2, ZP_BF16, f, ZP_F32, NV), ZP_OK);
  CHECK_EQ_INT(hb[0], 0x3f80);
  CHECK_EQ_INT(hb[1], 0x3f82);
  CHECK_EQ_INT(hb[5], 0x3f81); /* single rounding from f64 */
  CHECK_EQ_INT(hb2[5], 0x3f80); /* from the fp32 value (1 + 2^-8 exactly): tie to even */
  CHECK(isnan(zp_bf16_to_f32(hb[6])) && isnan(zp_bf16_to_f32(hb2[6])));
  CHECK_EQ_INT(hb[7], 0x7f80);
  CHECK_EQ_INT(O->cast(b32, f2, ZP_F32, hb, ZP_BF16, NV), ZP_OK);
  CHECK_EQ_INT(O->cast(b32, d2, ZP_F64, hb, ZP_BF16, NV), ZP_OK);
  int ok = 1;
  for (int i = 0; i < NV; i++)
    ok &= (isnan(f2[i]) && isnan(d2[i])) || (f2[i] == zp_bf16_to_f32(hb[i]) && d2[i] == f2[i]);
  CHECK_MSG(ok, "bf16 widening is not exact");
  CHECK_EQ_INT(O->cast(b32, d2, ZP_F64, f, ZP_F32, NV), ZP_OK);
  ok = 1;
  for (int i = 0; i < NV; i++) ok &= isnan(f[i]) || d2[i] == (double)f[i];
  CHECK(ok);

  /* accumulate into bf16 rounds once: 1 + (2^-8 + 2^-28) is above the tie */
  uint16_t acc = 0x3f80;
  float src = 0x1p-8f + 0x1p-28f;
  CHECK_EQ_INT(O->accumulate(b32, &acc, ZP_BF16, &src, ZP_F32, 1, 1.0f), ZP_OK);
  CHECK_EQ_INT(acc, 0x3f81);
  acc = 0x3f80;
  src = 0x1p-8f; /* exact tie: stays at the even 1.0 */
  O->accumulate(b32, &acc, ZP_BF16, &src, ZP_F32, 1, 1.0f);
  CHECK_EQ_INT(acc, 0x3f80);
  acc = zp_f32_to_bf16(NAN);
  src = 1.0f;
  O->accumulate(b32, &acc, ZP_BF16, &src, ZP_F32, 1, 1.0f);
  CHECK(isnan(zp_bf16_to_f32(acc)));

  /* every combination against a double reference */
  const zp_dtype dts[3] = {ZP_F32, ZP_F64, ZP_BF16};
  enum { NA = 257 };
  double base[NA], add[NA];
  rand_fill(base, NA, -3, 3);
  rand_fill(add, NA, -3, 3);
  for (int a = 0; a < 3; a++)
    for (int s = 0; s < 3; s++) {
      double dst[NA], sb[NA]; /* raw storage for any of the three dtypes */
      O->cast(b32, dst, dts[a], base, ZP_F64, NA);
      O->cast(b32, sb, dts[s], add, ZP_F64, NA);
      double dv[NA], sv[NA], out[NA];
      O->cast(b32, dv, ZP_F64, dst, dts[a], NA);
      O->cast(b32, sv, ZP_F64, sb, dts[s], NA);
      CHECK_EQ_INT(O->accumulate(b32, dst, dts[a], sb, dts[s], NA, -0.75f), ZP_OK);
      O->cast(b32, out, ZP_F64, dst, dts[a], NA);
      /* relative to the terms' magnitude: the sum may cancel */
      const double tol = dts[a] == ZP_BF16 ? 1.0 / 256 : dts[a] == ZP_F32 ? 2.5e-7 : 1e-15;
      int bad = 0;
      for (int i = 0; i < NA; i++) {
        const double ref = dv[i] - 0.75 * sv[i];
        if (!(fabs(out[i] - ref) <= tol * (fabs(dv[i]) + 0.75 * fabs(sv[i])))) bad++;
        if (dts[a] == ZP_BF16 && ((uint16_t*)dst)[i] != zp_f64_to_bf16(ref)) bad++;
      }
      CHECK_MSG(bad == 0, "accumulate %d += %d: %d off", (int)dts[a], (int)dts[s], bad);
    }

  /* fill, scale */
  uint16_t hf[5];
  float ff[5];
  double df[5];
  int32_t ifl[3];
  CHECK_EQ_INT(O->fill(b32, hf, ZP_BF16, 5, NAN), ZP_OK);
  CHECK_EQ_INT(O->fill(b32, ff, ZP_F32, 5, NAN), ZP_OK);
  CHECK_EQ_INT(O->fill(b32, df, ZP_F64, 5, 1.00390625), ZP_OK);
  CHECK_EQ_INT(O->fill(b32, ifl, ZP_I32, 3, NAN), ZP_OK);
  CHECK(isnan(zp_bf16_to_f32(hf[4])) && isnan(ff[4]) && df[4] == 1.00390625 && ifl[2] == -1);
  CHECK_EQ_INT(O->fill(b32, hf, ZP_BF16, 5, 1.00390625), ZP_OK);
  CHECK_EQ_INT(hf[0], 0x3f80);
  CHECK_EQ_INT(O->scale(b32, hf, ZP_BF16, 5, 1.5f), ZP_OK);
  CHECK_EQ_INT(hf[1], 0x3fc0);
  ff[0] = 2.0f;
  df[0] = 3.0;
  O->scale(b32, ff, ZP_F32, 1, 0.5f);
  O->scale(b32, df, ZP_F64, 1, 0.25f);
  CHECK(ff[0] == 1.0f && df[0] == 0.75);

  /* sumsq: fp64 result for every dtype */
  const size_t n = 100003;
  double* x = drand(n, -1, 1);
  float* xf = to_f32(x, n);
  uint16_t* xh = (uint16_t*)malloc(n * 2);
  O->cast(b32, xh, ZP_BF16, x, ZP_F64, n);
  double r64 = 0, r32 = 0, r16 = 0, s;
  for (size_t i = 0; i < n; i++) {
    r64 += x[i] * x[i];
    r32 += (double)xf[i] * xf[i];
    const double hv = zp_bf16_to_f32(xh[i]);
    r16 += hv * hv;
  }
  CHECK_EQ_INT(O->sumsq(b32, &s, x, ZP_F64, n), ZP_OK);
  CHECK_NEAR(s, r64, 0, 1e-12);
  O->sumsq(b32, &s, xf, ZP_F32, n);
  CHECK_NEAR(s, r32, 0, 1e-12);
  O->sumsq(b32, &s, xh, ZP_BF16, n);
  CHECK_NEAR(s, r16, 0, 1e-12);
  O->sumsq(b32, &s, xf, ZP_F32, 3);
  CHECK_NEAR(s, r32 - r32 + (double)xf[0] * xf[0] + (double)xf[1] * xf[1] + (double)xf[2] * xf[2],
             0, 1e-15);
  free(x), free(xf), free(xh);
}

/* ===================== thread-count independence ===================== */

typedef struct {
  float *mm_out, *mm_dinp, *mm_dw, *mm_db, *ln_out, *ln_dinp, *ln_dw, *ln_db, *att_out, *att_aux,
      *att_d, *enc_dwte, *enc_dwpe, *gelu, *gelu_d, *sx, *sx_loss, *acc, *master, *mom;
  uint16_t* bf;
  double sumsq;
} det_out;

enum { DB = 4, DT = 64, DC = 96, DNH = 4, DN = DB * DT, DOC = 200, DV = 300, DVp = 320 };

static void det_run(det_out* r, const float* x, const float* w, const float* dy, const int32_t* ids,
                    const int32_t* tg, const float* qkv, const float* big, size_t nbig) {
  const size_t nx = (size_t)DN * DC;
  O->matmul_fwd(b32, r->mm_out, x, w, w, DN, DC, DOC);
  memset(r->mm_dw, 0, sizeof(float) * DOC * DC);
  memset(r->mm_db, 0, sizeof(float) * DOC);
  O->matmul_bwd(b32, r->mm_dinp, r->mm_dw, r->mm_db, dy, x, w, DN, DC, DOC);
  float *mean = falloc(DN), *rstd = falloc(DN);
  O->layernorm_fwd(b32, r->ln_out, mean, rstd, x, w, w + DC, DN, DC);
  memset(r->ln_dinp, 0, sizeof(float) * nx);
  memset(r->ln_dw, 0, sizeof(float) * DC);
  memset(r->ln_db, 0, sizeof(float) * DC);
  O->layernorm_bwd(b32, r->ln_dinp, r->ln_dw, r->ln_db, dy, x, w, mean, rstd, DN, DC);
  O->attention_fwd(b32, r->att_out, r->att_aux, qkv, DB, DT, DC, DNH);
  O->attention_bwd(b32, r->att_d, dy, qkv, r->att_out, r->att_aux, DB, DT, DC, DNH);
  memset(r->enc_dwte, 0, sizeof(float) * 32 * DC);
  memset(r->enc_dwpe, 0, sizeof(float) * DT * DC);
  O->encoder_bwd(b32, r->enc_dwte, r->enc_dwpe, dy, ids, DB, DT, DC);
  O->gelu_fwd(b32, r->gelu, big, nbig);
  O->gelu_bwd(b32, r->gelu_d, big, big + 1, nbig - 1);
  memcpy(r->sx, big, sizeof(float) * DN * DVp);
  O->softmax_xent(b32, r->sx_loss, r->sx, tg, DN, DV, DVp, 0.5f);
  memcpy(r->acc, big, sizeof(float) * nbig);
  O->accumulate(b32, r->acc, ZP_F32, big + 7, ZP_F32, nbig - 7, 0.3f);
  O->cast(b32, r->bf, ZP_BF16, big, ZP_F32, nbig);
  memcpy(r->master, big, sizeof(float) * nbig);
  memset(r->mom, 0, sizeof(float) * 2 * nbig);
  O->adamw(b32, r->bf, ZP_BF16, r->master, big + 1, ZP_F32, r->mom, r->mom + nbig, nbig - 1,
           1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f, 1.0f, 1);
  O->sumsq(b32, &r->sumsq, big, ZP_F32, nbig);
  free(mean), free(rstd);
}

static void det_alloc(det_out* r, size_t nbig) {
  const size_t nx = (size_t)DN * DC;
  r->mm_out = falloc((size_t)DN * DOC), r->mm_dinp = falloc(nx), r->mm_dw = falloc((size_t)DOC * DC);
  r->mm_db = falloc(DOC), r->ln_out = falloc(nx), r->ln_dinp = falloc(nx), r->ln_dw = falloc(DC);
  r->ln_db = falloc(DC), r->att_out = falloc(nx), r->att_aux = falloc((size_t)DB * DNH * DT * DT);
  r->att_d = falloc(3 * nx), r->enc_dwte = falloc((size_t)32 * DC), r->enc_dwpe = falloc((size_t)DT * DC);
  r->gelu = falloc(nbig), r->gelu_d = falloc(nbig), r->sx = falloc((size_t)DN * DVp);
  r->sx_loss = falloc(DN), r->acc = falloc(nbig), r->master = falloc(nbig);
  r->mom = falloc(2 * nbig), r->bf = (uint16_t*)calloc(nbig, 2);
}
static void det_free(det_out* r) {
  float* p[] = {r->mm_out, r->mm_dinp, r->mm_dw, r->mm_db, r->ln_out, r->ln_dinp, r->ln_dw,
                r->ln_db, r->att_out, r->att_aux, r->att_d, r->enc_dwte, r->enc_dwpe, r->gelu,
                r->gelu_d, r->sx, r->sx_loss, r->acc, r->master, r->mom};
  for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) free(p[i]);
  free(r->bf);
}
static int det_same(const det_out* a, const det_out* b, size_t nbig) {
  const size_t nx = (size_t)DN * DC;
#define SAME(f, cnt)                                                                      \
  do {                                                                                    \
    if (!all_equal(a->f, b->f, sizeof(*a->f) * (cnt))) {                                  \
      fprintf(stderr, "  thread-count dependence in %s\n", #f);                           \
      ok = 0;                                                                             \
    }                                                                                     \
  } while (0)
  int ok = 1;
  SAME(mm_out, (size_t)DN * DOC);
  SAME(mm_dinp, nx);
  SAME(mm_dw, (size_t)DOC * DC);
  SAME(mm_db, DOC);
  SAME(ln_out, nx);
  SAME(ln_dinp, nx);
  SAME(ln_dw, DC);
  SAME(ln_db, DC);
  SAME(att_out, nx);
  SAME(att_aux, (size_t)DB * DNH * DT * DT);
  SAME(att_d, 3 * nx);
  SAME(enc_dwte, (size_t)32 * DC);
  SAME(enc_dwpe, (size_t)DT * DC);
  SAME(gelu, nbig);
  SAME(gelu_d, nbig - 1);
  SAME(sx, (size_t)DN * DVp);
  SAME(sx_loss, DN);
  SAME(acc, nbig);
  SAME(master, nbig);
  SAME(mom, 2 * nbig);
  SAME(bf, nbig);
  if (memcmp(&a->sumsq, &b->sumsq, sizeof(double)) != 0) {
    fprintf(stderr, "  thread-count dependence in sumsq\n");
    ok = 0;
  }
#undef SAME
  return ok;
}

static void test_thread_independence(void) {
  const size_t nbig = 300000;
  const size_t nx = (size_t)DN * DC;
  float* x = falloc(nx);
  float* w = falloc((size_t)DOC * DC);
  float* dy = falloc(3 * nx + (size_t)DN * DOC);
  float* qkv = falloc(3 * nx);
  float* big = falloc(nbig);
  int32_t ids[DN], tg[DN];
  for (size_t i = 0; i < nx; i++) x[i] = (float)(urand() * 4 - 2);
  for (size_t i = 0; i < (size_t)DOC * DC; i++) w[i] = (float)(urand() - 0.5);
  for (size_t i = 0; i < 3 * nx + (size_t)DN * DOC; i++) dy[i] = (float)(urand() * 2 - 1);
  for (size_t i = 0; i < 3 * nx; i++) qkv[i] = (float)(urand() * 2 - 1);
  for (size_t i = 0; i < nbig; i++) big[i] = (float)(urand() * 8 - 4);
  for (int i = 0; i < DN; i++) ids[i] = (int32_t)(urand() * 32); /* many repeats */
  memcpy(tg, ids, sizeof tg);
  tg[3] = -1; /* an ignored cross-entropy row */
  const int saved = omp_get_max_threads();
  for (int builtin = 0; builtin < 2; builtin++) {
    if (builtin) setenv("ZP_CPU_GEMM", "builtin", 1);
    det_out r1, r2;
    det_alloc(&r1, nbig), det_alloc(&r2, nbig);
    omp_set_num_threads(1);
    det_run(&r1, x, w, dy, ids, tg, qkv, big, nbig);
    omp_set_num_threads(2);
    det_run(&r2, x, w, dy, ids, tg, qkv, big, nbig);
    CHECK_MSG(det_same(&r1, &r2, nbig), "results depend on the thread count (%s GEMM)",
              builtin ? "built-in" : "default");
    omp_set_num_threads(3); /* more threads than cores: still the same */
    det_run(&r2, x, w, dy, ids, tg, qkv, big, nbig);
    CHECK_MSG(det_same(&r1, &r2, nbig), "results depend on the thread count (3 threads)");
    det_free(&r1), det_free(&r2);
    if (builtin) unsetenv("ZP_CPU_GEMM");
  }
  omp_set_num_threads(saved);
  free(x), free(w), free(dy), free(qkv), free(big);
}

/* ABI 1.3 timers: a later mark reads a non-negative interval (and its negation the other way);
 * slots outside 0..ZP_TIMER_SLOTS-1 and never-marked slots are clear errors. */
static void test_timers(void) {
  CHECK(O->timer_mark && O->timer_ms);
  CHECK_EQ_INT(O->timer_mark(b32, 3), ZP_OK);
  volatile double x = 0;
  for (int i = 0; i < 100000; i++) x += i;
  CHECK_EQ_INT(O->timer_mark(b32, 1000), ZP_OK); /* grows the slot array */
  double ms = -1, back = 1;
  CHECK_EQ_INT(O->timer_ms(b32, 3, 1000, &ms), ZP_OK);
  CHECK_EQ_INT(O->timer_ms(b32, 1000, 3, &back), ZP_OK);
  CHECK(ms >= 0 && back == -ms);
  CHECK_EQ_INT(O->timer_mark(b32, -1), ZP_E_INVALID);
  CHECK(strstr(last_err, "outside") != NULL);
  CHECK_EQ_INT(O->timer_mark(b32, ZP_TIMER_SLOTS), ZP_E_INVALID);
  CHECK_EQ_INT(O->timer_ms(b32, 3, 4, &ms), ZP_E_INVALID); /* 4 never marked */
  CHECK(strstr(last_err, "never marked") != NULL);
  CHECK_EQ_INT(O->timer_ms(b32, 3, 1000, NULL), ZP_E_INVALID);
}

/* ABI 1.7 side stream on the cpu backend: side work runs in order; side_end's ticket is a
 * deferred zero-byte copy, so waiting for it also runs a copy issued before it (and not one
 * issued after); nesting, ending twice and a NULL ticket are clear errors. */
static void test_side_stream(void) {
  CHECK(O->side_begin && O->side_end && O->copy_async && O->copy_wait);
  float src[4] = {1, 2, 3, 4}, dst[4] = {0}, late[4] = {0};
  uint64_t tc = 0, ts = 0, tl = 0;
  CHECK_EQ_INT(O->copy_async(b32, dst, src, sizeof src, 0, &tc), ZP_OK);
  CHECK_EQ_INT(O->side_begin(b32), ZP_OK);
  float x[4] = {0};
  CHECK_EQ_INT(O->fill(b32, x, ZP_F32, 4, 7.0), ZP_OK);
  CHECK(x[0] == 7.0f && x[3] == 7.0f); /* in order: done when issued */
  CHECK_EQ_INT(O->side_end(b32, &ts), ZP_OK);
  CHECK(ts > tc);
  CHECK_EQ_INT(O->copy_async(b32, late, src, sizeof src, 0, &tl), ZP_OK);
  CHECK(dst[0] == 0.0f); /* deferred until waited for */
  CHECK_EQ_INT(O->copy_wait(b32, ts, 1), ZP_OK);
  CHECK(dst[0] == 1.0f && dst[3] == 4.0f);
  CHECK(late[0] == 0.0f); /* issued after the side ticket: still pending */
  CHECK_EQ_INT(O->copy_wait(b32, tl, 0), ZP_OK);
  CHECK(late[3] == 4.0f);
  CHECK_EQ_INT(O->side_end(b32, &ts), ZP_E_INVALID);
  CHECK(strstr(last_err, "side_end without side_begin") != NULL);
  CHECK_EQ_INT(O->side_begin(b32), ZP_OK);
  CHECK_EQ_INT(O->side_begin(b32), ZP_E_INVALID);
  CHECK(strstr(last_err, "not nested") != NULL);
  CHECK_EQ_INT(O->side_end(b32, NULL), ZP_E_INVALID);
  CHECK_EQ_INT(O->side_end(b32, &ts), ZP_OK);
  CHECK_EQ_INT(O->copy_wait(b32, ts, 0), ZP_OK);
  /* side AdamW and timer marks are deferred until their ticket is waited for (so a missing
   * wait shows as stale values here); a copy_d2h runs all side work first; another op issued
   * on the side stream runs the work queued before it first */
  float p[4] = {1, 1, 1, 1}, g[4] = {1, 1, 1, 1}, mm[4] = {0}, vv[4] = {0};
  uint64_t t1 = 0, t2 = 0;
  CHECK_EQ_INT(O->side_begin(b32), ZP_OK);
  CHECK_EQ_INT(O->timer_mark(b32, 7), ZP_OK);
  CHECK_EQ_INT(O->adamw(b32, p, ZP_F32, p, g, ZP_F32, mm, vv, 4, 0.1f, 0.9f, 0.999f, 1e-8f, 0.0f, 1.0f, 1), ZP_OK);
  CHECK_EQ_INT(O->side_end(b32, &t1), ZP_OK);
  CHECK(p[0] == 1.0f && mm[0] == 0.0f); /* not run yet */
  double ms = 0;
  CHECK_EQ_INT(O->timer_mark(b32, 8), ZP_OK);
  CHECK_EQ_INT(O->timer_ms(b32, 7, 8, &ms), ZP_E_INVALID); /* slot 7 not reached */
  CHECK(strstr(last_err, "side-stream work not yet waited for") != NULL);
  CHECK_EQ_INT(O->copy_wait(b32, t1, 1), ZP_OK);
  CHECK(p[0] < 1.0f && mm[0] > 0.0f);
  CHECK_EQ_INT(O->timer_ms(b32, 7, 8, &ms), ZP_OK);
  float p0 = p[0], seen = 0;
  CHECK_EQ_INT(O->side_begin(b32), ZP_OK);
  CHECK_EQ_INT(O->adamw(b32, p, ZP_F32, p, g, ZP_F32, mm, vv, 4, 0.1f, 0.9f, 0.999f, 1e-8f, 0.0f, 1.0f, 2), ZP_OK);
  CHECK_EQ_INT(O->side_end(b32, &t2), ZP_OK);
  CHECK(p[0] == p0);
  CHECK_EQ_INT(O->copy_d2h(b32, &seen, p, sizeof seen), ZP_OK);
  CHECK(seen < p0 && p[0] == seen); /* the read waited for the side update */
  CHECK_EQ_INT(O->side_begin(b32), ZP_OK);
  CHECK_EQ_INT(O->adamw(b32, p, ZP_F32, p, g, ZP_F32, mm, vv, 4, 0.1f, 0.9f, 0.999f, 1e-8f, 0.0f, 1.0f, 3), ZP_OK);
  float before = p[0];
  CHECK_EQ_INT(O->scale(b32, g, ZP_F32, 4, 1.0f), ZP_OK); /* issued on the side: runs the update first */
  CHECK(p[0] < before);
  CHECK_EQ_INT(O->side_end(b32, &t2), ZP_OK);
  CHECK_EQ_INT(O->copy_wait(b32, t2, 0), ZP_OK);
}

/* ABI 1.8 grad_overwrite on the cpu backend: with it on, matmul_bwd and layernorm_bwd write dw
 * and dbias (from NaN) with the bits accumulating into zeros gives; layernorm's dinp still
 * accumulates; off again, they accumulate (the second call adds to the first). */
static void test_grad_overwrite(void) {
  CHECK(O->grad_overwrite != NULL);
  enum { N = 5, IC = 3, OC = 4 };
  float inp[N * IC], dout[N * OC], w[OC * IC], mean[N], rstd[N], lnw[OC], x[N * OC];
  for (int i = 0; i < N * IC; i++) inp[i] = 0.1f * (float)((i * 7) % 11) - 0.5f;
  for (int i = 0; i < N * OC; i++) dout[i] = 0.05f * (float)((i * 5) % 13) - 0.3f, x[i] = 0.2f * (float)((i * 3) % 7) - 0.6f;
  for (int i = 0; i < OC * IC; i++) w[i] = 0.03f * (float)(i % 9) - 0.1f;
  for (int i = 0; i < OC; i++) lnw[i] = 1.0f + 0.1f * (float)i;
  float lno[N * OC];
  CHECK_EQ_INT(O->layernorm_fwd(b32, lno, mean, rstd, x, lnw, NULL, N, OC), ZP_OK);
  for (int op = 0; op < 2; op++) {
    int nw = op ? OC : OC * IC;
    float dw0[OC * IC] = {0}, db0[OC] = {0}, dx0[N * OC], dw1[OC * IC], db1[OC], dx1[N * OC];
    for (int i = 0; i < N * OC; i++) dx0[i] = dx1[i] = 0.01f * (float)i;
    for (int i = 0; i < nw; i++) dw1[i] = NAN;
    for (int i = 0; i < OC; i++) db1[i] = NAN;
    if (op == 0) {
      CHECK_EQ_INT(O->matmul_bwd(b32, NULL, dw0, db0, dout, inp, w, N, IC, OC), ZP_OK);
      CHECK_EQ_INT(O->grad_overwrite(b32, 1), ZP_OK);
      CHECK_EQ_INT(O->matmul_bwd(b32, NULL, dw1, db1, dout, inp, w, N, IC, OC), ZP_OK);
    } else {
      CHECK_EQ_INT(O->layernorm_bwd(b32, dx0, dw0, db0, dout, x, lnw, mean, rstd, N, OC), ZP_OK);
      CHECK_EQ_INT(O->grad_overwrite(b32, 1), ZP_OK);
      CHECK_EQ_INT(O->layernorm_bwd(b32, dx1, dw1, db1, dout, x, lnw, mean, rstd, N, OC), ZP_OK);
      CHECK(memcmp(dx0, dx1, sizeof dx0) == 0); /* dinp still accumulated */
    }
    CHECK_EQ_INT(O->grad_overwrite(b32, 0), ZP_OK);
    CHECK(memcmp(dw0, dw1, (size_t)nw * sizeof(float)) == 0);
    CHECK(memcmp(db0, db1, sizeof db0) == 0);
    /* off again: accumulates onto the first result */
    if (op == 0) CHECK_EQ_INT(O->matmul_bwd(b32, NULL, dw1, db1, dout, inp, w, N, IC, OC), ZP_OK);
    else CHECK_EQ_INT(O->layernorm_bwd(b32, NULL, dw1, db1, dout, x, lnw, mean, rstd, N, OC), ZP_OK);
    for (int i = 0; i < nw; i++) CHECK(dw1[i] == dw0[i] + dw0[i]);
    for (int i = 0; i < OC; i++) CHECK(db1[i] == db0[i] + db0[i]);
  }
}

/* ABI 1.8 sumsq_many: each result is per-tensor sumsq's, bit for bit (mixed dtypes, odd lengths,
 * a tensor long enough for several chunks, an empty one; count 0 writes nothing); bad arguments
 * are ZP_E_INVALID with a message. */
static void test_sumsq_many(void) {
  CHECK(O->sumsq_many != NULL);
  enum { K = 7 };
  const size_t ns[K] = {1, 3, 0, 100003, 8193, 257, 5};
  const zp_dtype dts[K] = {ZP_F32, ZP_BF16, ZP_F64, ZP_F32, ZP_BF16, ZP_F64, ZP_F32};
  void* bufs[K];
  const void* xs[K];
  for (int i = 0; i < K; i++) {
    double* v = drand(ns[i], -2, 2);
    bufs[i] = malloc((ns[i] ? ns[i] : 1) * zp_dtype_size(dts[i]));
    CHECK_EQ_INT(O->cast(b32, bufs[i], dts[i], v, ZP_F64, ns[i]), ZP_OK);
    free(v);
    xs[i] = bufs[i];
  }
  xs[2] = NULL; /* empty: never read */
  double one[K], many[K];
  for (int i = 0; i < K; i++) {
    CHECK_EQ_INT(O->sumsq(b32, &one[i], xs[i], dts[i], ns[i]), ZP_OK);
    many[i] = -1;
  }
  CHECK_EQ_INT(O->sumsq_many(b32, K, xs, dts, ns, many), ZP_OK);
  CHECK(memcmp(one, many, sizeof one) == 0);
  CHECK(many[2] == 0.0 && one[3] > 0);
  /* on the F64 backend and over a sub-range (the op does not depend on the compute dtype) */
  for (int i = 0; i < K; i++) many[i] = -1;
  CHECK_EQ_INT(O->sumsq_many(b64, K - 2, xs + 2, dts + 2, ns + 2, many), ZP_OK);
  CHECK(memcmp(one + 2, many, (K - 2) * sizeof(double)) == 0);
  CHECK(many[K - 2] == -1); /* nothing written past count */
  /* count 0: valid, writes nothing (tables may be NULL) */
  many[0] = -1;
  CHECK_EQ_INT(O->sumsq_many(b32, 0, xs, dts, ns, many), ZP_OK);
  CHECK_EQ_INT(O->sumsq_many(b32, 0, NULL, NULL, NULL, NULL), ZP_OK);
  CHECK(many[0] == -1);
  /* errors */
  last_err[0] = 0;
  CHECK_EQ_INT(O->sumsq_many(b32, K, xs, dts, ns, NULL), ZP_E_INVALID);
  CHECK_STR_CONTAINS(last_err, "sumsq_many");
  last_err[0] = 0;
  CHECK_EQ_INT(O->sumsq_many(b32, 2, NULL, dts, ns, many), ZP_E_INVALID);
  CHECK_STR_CONTAINS(last_err, "sumsq_many");
  last_err[0] = 0;
  CHECK_EQ_INT(O->sumsq_many(b32, -1, xs, dts, ns, many), ZP_E_INVALID);
  CHECK_STR_CONTAINS(last_err, "negative count");
  last_err[0] = 0;
  const zp_dtype bad_dt[2] = {ZP_F32, ZP_I32};
  CHECK_EQ_INT(O->sumsq_many(b32, 2, xs, bad_dt, ns, many), ZP_E_INVALID); /* per-tensor sumsq's check */
  CHECK_STR_CONTAINS(last_err, "sumsq");
  for (int i = 0; i < K; i++) free(bufs[i]);
}

int main(void) {
  unsetenv("ZP_CPU_GEMM"); /* the cases below set it themselves to cover both GEMMs */
  O = zp_cpu_backend_ops();
  memset(&host, 0, sizeof host);
  host.struct_size = sizeof host;
  host.abi_major = ZP_ABI_MAJOR;
  host.abi_minor = ZP_ABI_MINOR;
  host.set_error = t_set_error;
  host.world_size = 1;
  zp_backend_config c32 = {sizeof c32, ZP_F32, 0, 0}, c64 = {sizeof c64, ZP_F64, 0, 0};
  if (O->create(&host, &c32, &b32) || O->create(&host, &c64, &b64)) {
    fprintf(stderr, "cannot create the cpu backend: %s\n", last_err);
    return 1;
  }
  ZT_RUN(test_create_info_errors);
  ZT_RUN(test_fd_encoder);
  ZT_RUN(test_fd_layernorm);
  ZT_RUN(test_fd_matmul);
  ZT_RUN(test_fd_attention);
  ZT_RUN(test_fd_gelu_residual);
  ZT_RUN(test_fd_softmax_xent);
  ZT_RUN(test_f32_vs_f64);
  ZT_RUN(test_gemm);
  ZT_RUN(test_adamw);
  ZT_RUN(test_bf16_cast_accumulate);
  ZT_RUN(test_thread_independence);
  ZT_RUN(test_timers);
  ZT_RUN(test_side_stream);
  ZT_RUN(test_grad_overwrite);
  ZT_RUN(test_sumsq_many);
  O->destroy(b32);
  O->destroy(b64);
  return zt_done();
}
