/* cpu_ops_impl.h: the model ops of the CPU backend, written once over a `real` type.
 * No include guard on purpose: backend_cpu.c includes this file twice, once per compute dtype,
 * after defining
 *   real            float or double
 *   ZR(name)        name with a dtype suffix (name##_f32 / name##_f64)
 *   ZR_IS_F64       0 or 1
 *   ZR_GEMM         zp_gemm_f32 / zp_gemm_f64 (gemm_cpu.h)
 *   ZR_EXP ZR_LOG ZR_TANH  the math functions of that type
 * Arguments were validated by the caller (backend_cpu.c); these bodies only compute.
 * Invariants:
 * - Semantics are those of zp_backend_ops in zp_plugin.h (GPT-2 / llm.c conventions).
 * - Determinism: OpenMP splits only independent outputs (rows, heads, column chunks, tiles);
 *   every sum runs in a fixed order inside one thread, so results are bitwise identical for
 *   any thread count.
 * - Accumulating outputs (dweight, dbias, layernorm/encoder dinp) receive this call's whole
 *   contribution in one addition per element (dw += (full sum)), so calling a backward twice
 *   doubles them exactly. Exception: matmul dweight is accumulated by the GEMM with beta = 1;
 *   the built-in GEMM adds once per element, BLAS may add per K block when N (tokens) exceeds
 *   its K blocking.
 * - Precision: layernorm statistics and layernorm-backward row sums are computed in double;
 *   softmax/cross-entropy and attention run in `real` (float for F32, double for F64); the
 *   attention dot products are `omp simd` reductions (a fixed, compile-time lane order).
 *   F32 GELU uses tanh(u) = (1 - e)/(1 + e), e = exp(-2|u|) (abs. error < 1e-7, several
 *   times faster than tanhf); F64 uses tanh().
 *   In F64 mode layernorm_bwd recomputes mean/rstd in double from inp instead of using the
 *   fp32 statistics, so F64 gradients match finite differences of the forward to ~1e-10.
 * - No per-call allocation except layernorm_bwd in F64 mode, encoder_bwd (token sort) and
 *   the built-in GEMM's packing buffers (one malloc per GEMM call, gemm_cpu.c). */

/* below this many elements of work a loop runs on one thread (fork/join costs more) */
#ifndef ZP_CPU_PAR_MIN
#define ZP_CPU_PAR_MIN 16384
#endif
#ifndef ZP_CPU_COLCHUNK
#define ZP_CPU_COLCHUNK 32 /* columns per task in column-reduction loops */
#endif

/* ---------------- encoder ---------------- */

static int ZR(encoder_fwd)(real* out, const int32_t* inp, const real* wte, const real* wpe,
                           int B, int T, int C) {
  const ptrdiff_t BT = (ptrdiff_t)B * T;
#pragma omp parallel for schedule(static) if (BT * C > ZP_CPU_PAR_MIN)
  for (ptrdiff_t bt = 0; bt < BT; bt++) {
    const int t = (int)(bt % T);
    real* o = out + bt * C;
    const real* we = wte + (size_t)inp[bt] * C;
    const real* pe = wpe + (size_t)t * C;
    for (int c = 0; c < C; c++) o[c] = we[c] + pe[c];
  }
  return ZP_OK;
}

/* dwte rows: tokens sorted by (id, position); each distinct id's rows are summed in token
 * order into a scratch row and added to dwte once. dwpe: per position, summed over b in
 * order. */
static int ZR(encoder_fwd_masked)(real* out, const int32_t* ids, const real* wte, const real* wpe,
                                  int B, int T, int C) {
  const ptrdiff_t BT = (ptrdiff_t)B * T;
#pragma omp parallel for schedule(static) if (BT * C > ZP_CPU_PAR_MIN)
  for (ptrdiff_t bt = 0; bt < BT; bt++) {
    const int t = (int)(bt % T);
    real* o = out + bt * C;
    const real* pe = wpe ? wpe + (size_t)t * C : NULL;
    if (ids[bt] >= 0) {
      const real* we = wte + (size_t)ids[bt] * C;
      if (pe) for (int c = 0; c < C; c++) o[c] = we[c] + pe[c];
      else for (int c = 0; c < C; c++) o[c] = we[c];
    } else {
      if (pe) for (int c = 0; c < C; c++) o[c] = pe[c];
      else for (int c = 0; c < C; c++) o[c] = 0;
    }
  }
  return ZP_OK;
}

/* masked: positions with a negative id add nothing to dwte (tensor-parallel vocabulary) */
static int ZR(encoder_bwd_ids)(real* dwte, real* dwpe, const real* dout, const int32_t* inp, int B,
                               int T, int C, int masked);
static int ZR(encoder_bwd)(real* dwte, real* dwpe, const real* dout, const int32_t* inp, int B,
                           int T, int C) {
  return ZR(encoder_bwd_ids)(dwte, dwpe, dout, inp, B, T, C, 0);
}
static int ZR(encoder_bwd_masked)(real* dwte, real* dwpe, const real* dout, const int32_t* inp,
                                  int B, int T, int C) {
  return ZR(encoder_bwd_ids)(dwte, dwpe, dout, inp, B, T, C, 1);
}
static int ZR(encoder_bwd_ids)(real* dwte, real* dwpe, const real* dout, const int32_t* inp, int B,
                               int T, int C, int masked) {
  const ptrdiff_t BT = (ptrdiff_t)B * T;
  if (dwpe) {
#pragma omp parallel for schedule(static) if (BT * C > ZP_CPU_PAR_MIN)
    for (int t = 0; t < T; t++) {
      real* d = dwpe + (size_t)t * C;
      for (int c = 0; c < C; c++) {
        real s = dout[(size_t)t * C + c];
        for (int bb = 1; bb < B; bb++) s += dout[((size_t)bb * T + t) * C + c];
        d[c] += s;
      }
    }
  }
  if (!dwte || BT == 0) return ZP_OK;
  const int nthr = omp_get_max_threads();
  uint64_t* keys = (uint64_t*)malloc(sizeof(uint64_t) * (size_t)BT + 64);
  real* rows = (real*)malloc(sizeof(real) * (size_t)C * (size_t)nthr + 64);
  if (!keys || !rows) {
    free(keys);
    free(rows);
    return ZP_E_NOMEM;
  }
  ptrdiff_t nk = 0;
  for (ptrdiff_t i = 0; i < BT; i++)
    if (!masked || inp[i] >= 0) keys[nk++] = ((uint64_t)(uint32_t)inp[i] << 32) | (uint64_t)i;
  qsort(keys, (size_t)nk, sizeof(uint64_t), zp_cpu_cmp_u64);
  /* starts[g] = index in keys of the first token of the g-th distinct id */
  ptrdiff_t ngroups = 0;
  for (ptrdiff_t i = 0; i < nk; i++)
    if (i == 0 || (keys[i] >> 32) != (keys[i - 1] >> 32)) ngroups++;
  ptrdiff_t* starts = (ptrdiff_t*)malloc(sizeof(ptrdiff_t) * (size_t)(ngroups + 1));
  if (!starts) {
    free(keys);
    free(rows);
    return ZP_E_NOMEM;
  }
  ngroups = 0;
  for (ptrdiff_t i = 0; i < nk; i++)
    if (i == 0 || (keys[i] >> 32) != (keys[i - 1] >> 32)) starts[ngroups++] = i;
  starts[ngroups] = nk;
#pragma omp parallel for schedule(dynamic, 16) if (BT * C > ZP_CPU_PAR_MIN)
  for (ptrdiff_t g = 0; g < ngroups; g++) {
    real* acc = rows + (size_t)C * (size_t)omp_get_thread_num();
    const ptrdiff_t s0 = starts[g], s1 = starts[g + 1];
    const size_t id = (size_t)(keys[s0] >> 32);
    real* d = dwte + id * C;
    const real* first = dout + (size_t)(keys[s0] & 0xffffffffu) * C;
    if (s1 - s0 == 1) {
      for (int c = 0; c < C; c++) d[c] += first[c];
      continue;
    }
    for (int c = 0; c < C; c++) acc[c] = first[c];
    for (ptrdiff_t k = s0 + 1; k < s1; k++) {
      const real* r = dout + (size_t)(keys[k] & 0xffffffffu) * C;
      for (int c = 0; c < C; c++) acc[c] += r[c];
    }
    for (int c = 0; c < C; c++) d[c] += acc[c];
  }
  free(starts);
  free(keys);
  free(rows);
  return ZP_OK;
}

/* ---------------- layernorm ---------------- */

static void ZR(ln_stats)(const real* x, int C, double* mean, double* rstd) {
  double s = 0;
  for (int c = 0; c < C; c++) s += (double)x[c];
  const double m = s / C;
  double v = 0;
  for (int c = 0; c < C; c++) {
    const double d = (double)x[c] - m;
    v += d * d;
  }
  *mean = m;
  *rstd = 1.0 / sqrt(v / C + 1e-5);
}

static int ZR(layernorm_fwd)(real* out, float* mean, float* rstd, const real* inp, const real* w,
                             const real* bias, int N, int C) {
#pragma omp parallel for schedule(static) if ((ptrdiff_t)N * C > ZP_CPU_PAR_MIN)
  for (int n = 0; n < N; n++) {
    const real* x = inp + (size_t)n * C;
    real* o = out + (size_t)n * C;
    double m, rs;
    ZR(ln_stats)(x, C, &m, &rs);
    const real rm = (real)m, rr = (real)rs;
    if (bias)
      for (int c = 0; c < C; c++) o[c] = (x[c] - rm) * rr * w[c] + bias[c];
    else
      for (int c = 0; c < C; c++) o[c] = (x[c] - rm) * rr * w[c];
    if (mean) mean[n] = (float)m;
    if (rstd) rstd[n] = (float)rs;
  }
  return ZP_OK;
}

static int ZR(layernorm_bwd)(real* dinp, real* dw, real* dbias, const real* dout,
                             const real* inp, const real* w, const float* mean,
                             const float* rstd, int N, int C) {
  const int par = (ptrdiff_t)N * C > ZP_CPU_PAR_MIN;
#if ZR_IS_F64
  /* the fp32 statistics would cap F64 gradient accuracy at ~1e-7: recompute in double */
  double* st = (double*)malloc(sizeof(double) * 2 * (size_t)(N > 0 ? N : 1));
  if (!st) return ZP_E_NOMEM;
  (void)mean;
  (void)rstd;
#pragma omp parallel for schedule(static) if (par)
  for (int n = 0; n < N; n++) ZR(ln_stats)(inp + (size_t)n * C, C, &st[2 * n], &st[2 * n + 1]);
#define ZR_LN_MEAN(n) ((real)st[2 * (n)])
#define ZR_LN_RSTD(n) ((real)st[2 * (n) + 1])
#else
#define ZR_LN_MEAN(n) ((real)mean[n])
#define ZR_LN_RSTD(n) ((real)rstd[n])
#endif
  if (dinp) {
#pragma omp parallel for schedule(static) if (par)
    for (int n = 0; n < N; n++) {
      const real* x = inp + (size_t)n * C;
      const real* dy = dout + (size_t)n * C;
      real* dx = dinp + (size_t)n * C;
      const real rm = ZR_LN_MEAN(n), rr = ZR_LN_RSTD(n);
      double s1 = 0, s2 = 0; /* sum dnorm, sum dnorm*norm */
      for (int c = 0; c < C; c++) {
        const real dn = dy[c] * w[c];
        s1 += (double)dn;
        s2 += (double)dn * (double)((x[c] - rm) * rr);
      }
      const real m1 = (real)(s1 / C), m2 = (real)(s2 / C);
      for (int c = 0; c < C; c++) {
        const real norm = (x[c] - rm) * rr;
        dx[c] += rr * (dy[c] * w[c] - m1 - norm * m2);
      }
    }
  }
  if (dw || dbias) {
    const int nch = (C + ZP_CPU_COLCHUNK - 1) / ZP_CPU_COLCHUNK;
#pragma omp parallel for schedule(static) if (par)
    for (int ch = 0; ch < nch; ch++) {
      const int c0 = ch * ZP_CPU_COLCHUNK;
      const int cn = C - c0 < ZP_CPU_COLCHUNK ? C - c0 : ZP_CPU_COLCHUNK;
      real aw[ZP_CPU_COLCHUNK], ab[ZP_CPU_COLCHUNK];
      for (int j = 0; j < ZP_CPU_COLCHUNK; j++) aw[j] = ab[j] = 0;
      for (int n = 0; n < N; n++) {
        const real* x = inp + (size_t)n * C + c0;
        const real* dy = dout + (size_t)n * C + c0;
        const real rm = ZR_LN_MEAN(n), rr = ZR_LN_RSTD(n);
        for (int j = 0; j < cn; j++) {
          aw[j] += dy[j] * ((x[j] - rm) * rr);
          ab[j] += dy[j];
        }
      }
      if (dw)
        for (int j = 0; j < cn; j++) dw[c0 + j] += aw[j];
      if (dbias)
        for (int j = 0; j < cn; j++) dbias[c0 + j] += ab[j];
    }
  }
#undef ZR_LN_MEAN
#undef ZR_LN_RSTD
#if ZR_IS_F64
  free(st);
#endif
  return ZP_OK;
}

/* ---------------- matmul ---------------- */

static int ZR(matmul_fwd)(real* out, const real* inp, const real* w, const real* bias, int N,
                          int IC, int OC) {
  int st = ZR_GEMM(0, 1, N, OC, IC, (real)1, inp, IC, w, IC, (real)0, out, OC);
  if (st) return st;
  if (bias) {
#pragma omp parallel for schedule(static) if ((ptrdiff_t)N * OC > ZP_CPU_PAR_MIN)
    for (int n = 0; n < N; n++) {
      real* o = out + (size_t)n * OC;
      for (int c = 0; c < OC; c++) o[c] += bias[c];
    }
  }
  return ZP_OK;
}

static int ZR(matmul_bwd)(real* dinp, real* dw, real* dbias, const real* dout, const real* inp,
                          const real* w, int N, int IC, int OC) {
  int st;
  if (dinp && (st = ZR_GEMM(0, 0, N, IC, OC, (real)1, dout, OC, w, IC, (real)0, dinp, IC)))
    return st;
  if (dw && (st = ZR_GEMM(1, 0, OC, IC, N, (real)1, dout, OC, inp, IC, (real)1, dw, IC)))
    return st;
  if (dbias) {
    const int nch = (OC + ZP_CPU_COLCHUNK - 1) / ZP_CPU_COLCHUNK;
#pragma omp parallel for schedule(static) if ((ptrdiff_t)N * OC > ZP_CPU_PAR_MIN)
    for (int ch = 0; ch < nch; ch++) {
      const int c0 = ch * ZP_CPU_COLCHUNK;
      const int cn = OC - c0 < ZP_CPU_COLCHUNK ? OC - c0 : ZP_CPU_COLCHUNK;
      real ab[ZP_CPU_COLCHUNK];
      for (int j = 0; j < ZP_CPU_COLCHUNK; j++) ab[j] = 0;
      for (int n = 0; n < N; n++) {
        const real* dy = dout + (size_t)n * OC + c0;
        for (int j = 0; j < cn; j++) ab[j] += dy[j];
      }
      for (int j = 0; j < cn; j++) dbias[c0 + j] += ab[j];
    }
  }
  return ZP_OK;
}

/* ---------------- attention ---------------- */
/* aux = softmax probabilities P [B, NH, T, T] (row t: keys 0..t, zeros above the diagonal).
 * One task per (b, h, t) row in forward; one per (b, h) in backward, which owns that head's
 * slices of dqkv. Backward uses D_t = dout_t . out_t (= sum_j P_tj dP_tj) from the forward
 * output; when out is NULL D_t is recomputed from P and V instead. */

static int ZR(attention_fwd)(real* out, real* aux, const real* qkv, int B, int T, int C, int NH) {
  const int hs = C / NH;
  const size_t C3 = (size_t)C * 3;
  const real scale = (real)(1.0 / sqrt((double)hs));
  const ptrdiff_t rows = (ptrdiff_t)B * NH * T;
#pragma omp parallel for schedule(dynamic, 8) if (rows * T * hs > ZP_CPU_PAR_MIN)
  for (ptrdiff_t r = 0; r < rows; r++) {
    const int t = (int)(r % T);
    const int h = (int)((r / T) % NH);
    const int bb = (int)(r / ((ptrdiff_t)T * NH));
    const real* base = qkv + (size_t)bb * T * C3;
    const real* q = base + (size_t)t * C3 + (size_t)h * hs;
    real* P = aux + (size_t)r * T;
    real mx = -INFINITY;
    for (int t2 = 0; t2 <= t; t2++) {
      const real* k = base + (size_t)t2 * C3 + C + (size_t)h * hs;
      real s = 0;
#pragma omp simd reduction(+ : s)
      for (int i = 0; i < hs; i++) s += q[i] * k[i];
      s *= scale;
      P[t2] = s;
      if (s > mx) mx = s;
    }
    real sum = 0;
    for (int t2 = 0; t2 <= t; t2++) {
      const real e = ZR_EXP(P[t2] - mx);
      P[t2] = e;
      sum += e;
    }
    const real inv = (real)1 / sum;
    for (int t2 = 0; t2 <= t; t2++) P[t2] *= inv;
    for (int t2 = t + 1; t2 < T; t2++) P[t2] = 0;
    real* o = out + ((size_t)bb * T + t) * C + (size_t)h * hs;
    for (int i = 0; i < hs; i++) o[i] = 0;
    for (int t2 = 0; t2 <= t; t2++) {
      const real* v = base + (size_t)t2 * C3 + 2 * (size_t)C + (size_t)h * hs;
      const real p = P[t2];
      for (int i = 0; i < hs; i++) o[i] += p * v[i];
    }
  }
  return ZP_OK;
}

static int ZR(attention_bwd)(real* dqkv, const real* dout, const real* qkv, const real* out,
                             const real* aux, int B, int T, int C, int NH) {
  const int hs = C / NH;
  const size_t C3 = (size_t)C * 3;
  const real scale = (real)(1.0 / sqrt((double)hs));
  const int units = B * NH;
#pragma omp parallel for schedule(dynamic, 1) if ((ptrdiff_t)units * T * T * hs > ZP_CPU_PAR_MIN)
  for (int u = 0; u < units; u++) {
    const int h = u % NH, bb = u / NH;
    const real* base = qkv + (size_t)bb * T * C3;
    real* dbase = dqkv + (size_t)bb * T * C3;
    const size_t ho = (size_t)h * hs;
    for (int t = 0; t < T; t++)
      for (int part = 0; part < 3; part++) {
        real* d = dbase + (size_t)t * C3 + (size_t)part * C + ho;
        for (int i = 0; i < hs; i++) d[i] = 0;
      }
    for (int t = 0; t < T; t++) {
      const real* P = aux + ((size_t)u * T + t) * T;
      const real* dy = dout + ((size_t)bb * T + t) * C + ho;
      const real* q = base + (size_t)t * C3 + ho;
      real* dq = dbase + (size_t)t * C3 + ho;
      real D = 0;
      if (out) {
        const real* o = out + ((size_t)bb * T + t) * C + ho;
#pragma omp simd reduction(+ : D)
        for (int i = 0; i < hs; i++) D += dy[i] * o[i];
      } else {
        for (int t2 = 0; t2 <= t; t2++) {
          const real* v = base + (size_t)t2 * C3 + 2 * (size_t)C + ho;
          real dp = 0;
#pragma omp simd reduction(+ : dp)
          for (int i = 0; i < hs; i++) dp += dy[i] * v[i];
          D += P[t2] * dp;
        }
      }
      for (int t2 = 0; t2 <= t; t2++) {
        const real* k = base + (size_t)t2 * C3 + C + ho;
        const real* v = base + (size_t)t2 * C3 + 2 * (size_t)C + ho;
        real* dk = dbase + (size_t)t2 * C3 + C + ho;
        real* dv = dbase + (size_t)t2 * C3 + 2 * (size_t)C + ho;
        const real p = P[t2];
        real dp = 0;
#pragma omp simd reduction(+ : dp)
        for (int i = 0; i < hs; i++) dp += dy[i] * v[i];
        const real ds = p * (dp - D) * scale;
        for (int i = 0; i < hs; i++) {
          dq[i] += ds * k[i];
          dk[i] += ds * q[i];
          dv[i] += p * dy[i];
        }
      }
    }
  }
  return ZP_OK;
}

/* ---------------- gelu, residual ---------------- */

#define ZR_GELU_K ((real)0.79788456080286535588) /* sqrt(2/pi) */
#define ZR_GELU_A ((real)0.044715)

static int ZR(gelu_fwd)(real* out, const real* inp, size_t n) {
  const ptrdiff_t nn = (ptrdiff_t)n;
#pragma omp parallel for schedule(static) if (nn > ZP_CPU_PAR_MIN)
  for (ptrdiff_t i = 0; i < nn; i++) {
    const real x = inp[i];
    out[i] = (real)0.5 * x * ((real)1 + ZR_TANH(ZR_GELU_K * (x + ZR_GELU_A * x * x * x)));
  }
  return ZP_OK;
}

static int ZR(gelu_bwd)(real* dinp, const real* inp, const real* dout, size_t n) {
  const ptrdiff_t nn = (ptrdiff_t)n;
#pragma omp parallel for schedule(static) if (nn > ZP_CPU_PAR_MIN)
  for (ptrdiff_t i = 0; i < nn; i++) {
    const real x = inp[i];
    const real th = ZR_TANH(ZR_GELU_K * (x + ZR_GELU_A * x * x * x));
    const real g = (real)0.5 * ((real)1 + th) +
                   (real)0.5 * x * ((real)1 - th * th) * ZR_GELU_K *
                       ((real)1 + (real)3 * ZR_GELU_A * x * x);
    dinp[i] = g * dout[i];
  }
  return ZP_OK;
}

static int ZR(residual_fwd)(real* out, const real* a, const real* c, size_t n) {
  const ptrdiff_t nn = (ptrdiff_t)n;
#pragma omp parallel for schedule(static) if (nn > ZP_CPU_PAR_MIN)
  for (ptrdiff_t i = 0; i < nn; i++) out[i] = a[i] + c[i];
  return ZP_OK;
}

#undef ZR_GELU_K
#undef ZR_GELU_A

/* ---------------- softmax + cross-entropy ---------------- */
/* Per row, in `real` (float for F32, double for F64): mx = max over the V real columns,
 * s = sum exp(x - mx), loss = log(s) - (x[target] - mx), stored as fp32. */

static int ZR(softmax_xent)(float* losses, real* logits, const int32_t* targets, int N, int V,
                            int Vp, float dloss) {
#pragma omp parallel for schedule(static) if ((ptrdiff_t)N * Vp > ZP_CPU_PAR_MIN)
  for (int n = 0; n < N; n++) {
    real* x = logits + (size_t)n * Vp;
    const int tg = targets[n];
    if (tg < 0) {
      if (losses) losses[n] = 0.0f;
      if (dloss != 0.0f)
        for (int j = 0; j < Vp; j++) x[j] = 0;
      continue;
    }
    real mx = x[0];
    for (int j = 1; j < V; j++)
      if (x[j] > mx) mx = x[j];
    const real xt = x[tg];
    real s = 0;
    if (dloss == 0.0f) {
      for (int j = 0; j < V; j++) s += ZR_EXP(x[j] - mx);
    } else {
      for (int j = 0; j < V; j++) { /* keep exp(x - mx) in place for the gradient pass */
        const real e = ZR_EXP(x[j] - mx);
        x[j] = e;
        s += e;
      }
    }
    if (losses) losses[n] = (float)(ZR_LOG(s) - (xt - mx));
    if (dloss != 0.0f) {
      const real inv = (real)1 / s, dl = (real)dloss, pt = x[tg] * inv;
      for (int j = 0; j < V; j++) x[j] = dl * (x[j] * inv);
      x[tg] = dl * (pt - (real)1);
      for (int j = V; j < Vp; j++) x[j] = 0;
    }
  }
  return ZP_OK;
}

/* ---------------- vocab-parallel softmax + cross-entropy (tensor parallelism) ----------------
 * Same arithmetic as softmax_xent per rank, with the row max and the sum of exp combined over
 * ranks by the caller between the phases (zp_plugin.h). Statistics in `real`. */
static int ZR(softmax_xent_vp)(int phase, float* losses, real* logits, real* st,
                               const int32_t* targets, int N, int Vl, int nreal, int v0,
                               float dloss) {
  real* mxs = st;
  real* sums = st + N;
  real* tls = st + 2 * (size_t)N;
#pragma omp parallel for schedule(static) if ((ptrdiff_t)N * Vl > ZP_CPU_PAR_MIN)
  for (int n = 0; n < N; n++) {
    real* x = logits + (size_t)n * Vl;
    const int tg = targets[n];
    const int own = tg >= v0 && tg < v0 + nreal;
    if (phase == 0) {
      real mx = -(real)INFINITY;
      for (int j = 0; j < nreal; j++)
        if (x[j] > mx) mx = x[j];
      mxs[n] = mx;
    } else if (phase == 1) {
      const real mx = mxs[n];
      real s = 0;
      for (int j = 0; j < nreal; j++) s += ZR_EXP(x[j] - mx);
      sums[n] = s;
      tls[n] = own ? x[tg - v0] : (real)0;
    } else {
      if (tg < 0) {
        if (losses) losses[n] = 0.0f;
        if (dloss != 0.0f)
          for (int j = 0; j < Vl; j++) x[j] = 0;
        continue;
      }
      const real mx = mxs[n], s = sums[n];
      if (losses) losses[n] = (float)(ZR_LOG(s) - (tls[n] - mx));
      if (dloss != 0.0f) {
        const real inv = (real)1 / s, dl = (real)dloss;
        for (int j = 0; j < nreal; j++) x[j] = dl * (ZR_EXP(x[j] - mx) * inv);
        if (own) x[tg - v0] = dl * (ZR_EXP(tls[n] - mx) * inv - (real)1);
        for (int j = nreal; j < Vl; j++) x[j] = 0;
      }
    }
  }
  return ZP_OK;
}
