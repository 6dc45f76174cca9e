/* op_profile.c: where a training step's time goes, per backend op (train.profile_ops).
 * A wrapper table around the active backend's ops, timing every compute and copy op in one of
 * two ways:
 * - device timestamps (backends with the ABI 1.3 timer ops, unless train.profile_sync): a
 *   timestamp before and after each op, nothing synchronized, so the step runs as it would
 *   unprofiled (plus two timestamps per op). After the step (the trainer synchronizes) the op
 *   times are the device's, and the gap between one op's end and the next one's start is time
 *   the device waited for the host ("idle before" that op: launches, host work, syncs).
 * - issue + synchronize on the host clock (no timers, or train.profile_sync): ops issued back
 *   to back no longer overlap and each op's time includes its launch; the sum is an upper bound
 *   of the busy time and the run is slower than unprofiled (one synchronize per op). Ops are keyed by name
 * and shape (matmuls by IC x OC, which tells qkv / attproj / fc / fcproj / classifier apart), with
 * FLOPs for matmul and attention so the table shows achieved TFLOP/s against the peak. The
 * batched gradient-norm op sumsq_many (ABI 1.8) counts as one "sumsq" call.
 * Only ops issued while enabled count (the trainer enables it around each step, so validation
 * and checkpoints are not in the table).
 * Invariants: results are unchanged (the same ops in the same order on the same stream); one
 * profile per process (the wrapper keeps the real table in a static); not thread-safe, as the
 * ops themselves are issued from one thread. */
#include "op_profile.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_KEYS 128

typedef struct {
  char name[64];
  long long calls;
  double ms;
  double flops;
  double idle_ms; /* device timestamps: the device's wait before this op started */
} op_stat;

#define MAX_REC (ZP_TIMER_SLOTS / 2) /* ops per step with timestamps (slots 2i, 2i + 1) */

static const zp_backend_ops* g_real;
static zp_backend_ops g_wrap;
static op_stat g_stats[MAX_KEYS];
static int g_n;
static int g_on;
static int g_dev;              /* 1: device timestamps */
static zp_backend* g_b;        /* the backend the ops run on (device mode) */
static int g_rec[MAX_REC];     /* this step's ops, in issue order: their g_stats index */
static int g_nrec;
static long long g_untimed;    /* ops beyond MAX_REC in a step: counted, not timed */
static double g_busy, g_idle;  /* device timestamps, summed over flushed steps */
static int g_err;              /* a timer op failed: the device-mode times are incomplete */

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int add(const char* name, double ms, double flops) {
  if (!g_on) return -1;
  int i = 0;
  for (; i < g_n; i++)
    if (strcmp(g_stats[i].name, name) == 0) break;
  if (i == g_n) {
    if (g_n == MAX_KEYS) i = MAX_KEYS - 1; /* lumped into the last slot */
    else snprintf(g_stats[g_n++].name, sizeof g_stats[0].name, "%s", name);
  }
  g_stats[i].calls++;
  g_stats[i].ms += ms;
  g_stats[i].flops += flops;
  return i;
}

/* device mode: timestamps around the op, its stat recorded for the flush */
static int timed_dev(zp_backend* b, const char* name, double flops, int slot_ok) {
  g_b = b;
  int k = add(name, 0.0, flops);
  if (k < 0) return 0;
  if (!slot_ok) {
    g_untimed++;
    return 0;
  }
  g_rec[g_nrec] = k;
  return 1;
}

/* time one op: device timestamps before and after, or issue and wait for it */
#define TIMED(b, name, flops, call)                                                   \
  do {                                                                              \
    if (g_dev) {                                                                    \
      int rec_ = g_on && timed_dev((b), (name), (flops), g_nrec < MAX_REC);         \
      if (rec_ && g_real->timer_mark(b, 2 * g_nrec)) g_err = 1;                     \
      int rc_ = (call);                                                             \
      if (rec_ && g_real->timer_mark(b, 2 * g_nrec + 1)) g_err = 1;                 \
      if (rec_) g_nrec++;                                                           \
      return rc_;                                                                   \
    }                                                                               \
    double t0_ = now_ms();                                                          \
    int rc_ = (call);                                                               \
    if (!rc_) rc_ = g_real->synchronize(b);                                         \
    add((name), now_ms() - t0_, (flops));                                           \
    return rc_;                                                                     \
  } while (0)

static int w_copy_h2d(zp_backend* b, void* d, const void* s, size_t n) { TIMED(b, "copy_h2d", 0, g_real->copy_h2d(b, d, s, n)); }
static int w_copy_d2h(zp_backend* b, void* d, const void* s, size_t n) { TIMED(b, "copy_d2h", 0, g_real->copy_d2h(b, d, s, n)); }
static int w_copy_d2d(zp_backend* b, void* d, const void* s, size_t n) { TIMED(b, "copy_d2d", 0, g_real->copy_d2d(b, d, s, n)); }
static int w_memset0(zp_backend* b, void* d, size_t n) { TIMED(b, "memset0", 0, g_real->memset0(b, d, n)); }
static int w_cast(zp_backend* b, void* d, zp_dtype dt, const void* s, zp_dtype st, size_t n) {
  TIMED(b, "cast", 0, g_real->cast(b, d, dt, s, st, n));
}
static int w_accumulate(zp_backend* b, void* d, zp_dtype dt, const void* s, zp_dtype st, size_t n, float sc) {
  TIMED(b, "accumulate", 0, g_real->accumulate(b, d, dt, s, st, n, sc));
}
static int w_fill(zp_backend* b, void* d, zp_dtype dt, size_t n, double v) { TIMED(b, "fill", 0, g_real->fill(b, d, dt, n, v)); }
static int w_encoder_fwd(zp_backend* b, void* out, const int32_t* inp, const void* wte, const void* wpe, int B, int T, int C) {
  TIMED(b, "encoder_fwd", 0, g_real->encoder_fwd(b, out, inp, wte, wpe, B, T, C));
}
static int w_encoder_bwd(zp_backend* b, void* dwte, void* dwpe, const void* dout, const int32_t* inp, int B, int T, int C) {
  TIMED(b, "encoder_bwd", 0, g_real->encoder_bwd(b, dwte, dwpe, dout, inp, B, T, C));
}
static int w_layernorm_fwd(zp_backend* b, void* out, float* mean, float* rstd, const void* inp, const void* w, const void* bias,
                           int N, int C) {
  TIMED(b, "layernorm_fwd", 0, g_real->layernorm_fwd(b, out, mean, rstd, inp, w, bias, N, C));
}
static int w_layernorm_bwd(zp_backend* b, void* dinp, void* dw, void* dbias, const void* dout, const void* inp, const void* w,
                           const float* mean, const float* rstd, int N, int C) {
  TIMED(b, "layernorm_bwd", 0, g_real->layernorm_bwd(b, dinp, dw, dbias, dout, inp, w, mean, rstd, N, C));
}
static int w_matmul_fwd(zp_backend* b, void* out, const void* inp, const void* w, const void* bias, int N, int IC, int OC) {
  char k[64];
  snprintf(k, sizeof k, "matmul_fwd %dx%d", IC, OC);
  TIMED(b, k, 2.0 * N * IC * OC, g_real->matmul_fwd(b, out, inp, w, bias, N, IC, OC));
}
static int w_matmul_bwd(zp_backend* b, void* dinp, void* dw, void* dbias, const void* dout, const void* inp, const void* w, int N,
                        int IC, int OC) {
  char k[64];
  snprintf(k, sizeof k, "matmul_bwd %dx%d", IC, OC);
  TIMED(b, k, (dinp ? 4.0 : 2.0) * N * IC * OC, g_real->matmul_bwd(b, dinp, dw, dbias, dout, inp, w, N, IC, OC));
}
/* causal attention: QK^T and PV over the lower triangle, 2 FLOPs per multiply-add */
static double att_flops(int B, int T, int C) { return 2.0 * B * (double)T * T * C; }
static int w_matmul_gelu_fwd(zp_backend* b, void* out, void* pre, const void* inp, const void* w, const void* bias, int N, int IC,
                             int OC) {
  char k[64];
  snprintf(k, sizeof k, "matmul_gelu_fwd %dx%d", IC, OC);
  TIMED(b, k, 2.0 * N * IC * OC, g_real->matmul_gelu_fwd(b, out, pre, inp, w, bias, N, IC, OC));
}
static int w_matmul_res_fwd(zp_backend* b, void* out, const void* inp, const void* w, const void* bias, const void* res, int N,
                            int IC, int OC) {
  char k[64];
  snprintf(k, sizeof k, "matmul_res_fwd %dx%d", IC, OC);
  TIMED(b, k, 2.0 * N * IC * OC, g_real->matmul_res_fwd(b, out, inp, w, bias, res, N, IC, OC));
}
static int w_matmul_dgelu_bwd(zp_backend* b, void* dinp, void* dw, void* dbias, const void* dout, const void* inp, const void* w,
                              const void* pre, int N, int IC, int OC) {
  char k[64];
  snprintf(k, sizeof k, "matmul_dgelu_bwd %dx%d", IC, OC);
  TIMED(b, k, 4.0 * N * IC * OC, g_real->matmul_dgelu_bwd(b, dinp, dw, dbias, dout, inp, w, pre, N, IC, OC));
}
/* ABI 1.9: the same op with the fc bias gradient too, under the same name (its time now includes
 * those column sums, which the fc's matmul_bwd then no longer has) */
static int w_matmul_dgelu_bgrad_bwd(zp_backend* b, void* dinp, void* dpb, void* dw, void* dbias, const void* dout,
                                    const void* inp, const void* w, const void* pre, int N, int IC, int OC) {
  char k[64];
  snprintf(k, sizeof k, "matmul_dgelu_bwd %dx%d", IC, OC);
  TIMED(b, k, 4.0 * N * IC * OC, g_real->matmul_dgelu_bgrad_bwd(b, dinp, dpb, dw, dbias, dout, inp, w, pre, N, IC, OC));
}
static int w_attention_fwd(zp_backend* b, void* out, void* aux, const void* qkv, int B, int T, int C, int NH) {
  TIMED(b, "attention_fwd", att_flops(B, T, C), g_real->attention_fwd(b, out, aux, qkv, B, T, C, NH));
}
static int w_attention_bwd(zp_backend* b, void* dqkv, const void* dout, const void* qkv, const void* out, const void* aux, int B,
                           int T, int C, int NH) {
  TIMED(b, "attention_bwd", 2.5 * att_flops(B, T, C), g_real->attention_bwd(b, dqkv, dout, qkv, out, aux, B, T, C, NH));
}
static int w_attention_bwd_ws(zp_backend* b, void* dqkv, const void* dout, const void* qkv, const void* out, const void* aux,
                              void* ws, int B, int T, int C, int NH) {
  TIMED(b, "attention_bwd", 2.5 * att_flops(B, T, C), g_real->attention_bwd_ws(b, dqkv, dout, qkv, out, aux, ws, B, T, C, NH));
}
static int w_gelu_fwd(zp_backend* b, void* out, const void* inp, size_t n) { TIMED(b, "gelu_fwd", 0, g_real->gelu_fwd(b, out, inp, n)); }
static int w_gelu_bwd(zp_backend* b, void* dinp, const void* inp, const void* dout, size_t n) {
  TIMED(b, "gelu_bwd", 0, g_real->gelu_bwd(b, dinp, inp, dout, n));
}
static int w_residual_fwd(zp_backend* b, void* out, const void* a, const void* c, size_t n) {
  TIMED(b, "residual_fwd", 0, g_real->residual_fwd(b, out, a, c, n));
}
static int w_softmax_xent(zp_backend* b, float* losses, void* logits, const int32_t* targets, int N, int V, int Vp, float dloss) {
  TIMED(b, "softmax_xent", 0, g_real->softmax_xent(b, losses, logits, targets, N, V, Vp, dloss));
}
static int w_adamw(zp_backend* b, void* param, zp_dtype pdt, float* master, const void* grad, zp_dtype gdt, float* m, float* v,
                   size_t n, float lr, float b1, float b2, float eps, float wd, float gs, int t) {
  TIMED(b, "adamw", 0, g_real->adamw(b, param, pdt, master, grad, gdt, m, v, n, lr, b1, b2, eps, wd, gs, t));
}
static int w_adamw_pieces(zp_backend* b, void* param, zp_dtype pdt, float* master, const void* grad, zp_dtype gdt, float* m,
                          float* v, int np, const uint64_t* pe, const float* pw, float lr, float b1, float b2, float eps, float gs,
                          int t) {
  TIMED(b, "adamw", 0, g_real->adamw_pieces(b, param, pdt, master, grad, gdt, m, v, np, pe, pw, lr, b1, b2, eps, gs, t));
}
static int w_sumsq(zp_backend* b, double* out, const void* x, zp_dtype dt, size_t n) { TIMED(b, "sumsq", 0, g_real->sumsq(b, out, x, dt, n)); }
/* ABI 1.8: the gradient norm's sums in one call, under the same name as one sumsq */
static int w_sumsq_many(zp_backend* b, int count, const void* const* xs, const zp_dtype* dts, const size_t* ns, double* out) {
  TIMED(b, "sumsq", 0, g_real->sumsq_many(b, count, xs, dts, ns, out));
}
/* ABI 1.9: the norm's sums started during the backward, under the name of sumsq (one per group),
 * and the one wait for their results */
static int w_sumsq_start(zp_backend* b, int slot, const void* x, zp_dtype dt, size_t n) {
  TIMED(b, "sumsq", 0, g_real->sumsq_start(b, slot, x, dt, n));
}
static int w_sumsq_collect(zp_backend* b, int count, double* out) {
  TIMED(b, "sumsq_collect", 0, g_real->sumsq_collect(b, count, out));
}
static int w_scale(zp_backend* b, void* x, zp_dtype dt, size_t n, float s) { TIMED(b, "scale", 0, g_real->scale(b, x, dt, n, s)); }

const zp_backend_ops* zp_op_profile_wrap(const zp_backend_ops* real, int sync) {
  g_real = real;
  g_dev = !sync && ZP_TABLE_HAS(real, timer_mark) && ZP_TABLE_HAS(real, timer_ms);
  memset(&g_wrap, 0, sizeof g_wrap);
  memcpy(&g_wrap, real, real->struct_size < sizeof g_wrap ? real->struct_size : sizeof g_wrap);
  g_wrap.struct_size = sizeof g_wrap;
#define W(f) if (real->f) g_wrap.f = w_##f
  W(copy_h2d); W(copy_d2h); W(copy_d2d); W(memset0); W(cast); W(accumulate); W(fill);
  W(encoder_fwd); W(encoder_bwd); W(layernorm_fwd); W(layernorm_bwd); W(matmul_fwd); W(matmul_bwd);
  W(attention_fwd); W(attention_bwd); W(gelu_fwd); W(gelu_bwd); W(residual_fwd); W(softmax_xent);
  W(adamw); W(sumsq); W(scale);
#undef W
  if (ZP_TABLE_HAS(real, matmul_gelu_fwd)) g_wrap.matmul_gelu_fwd = w_matmul_gelu_fwd;
  if (ZP_TABLE_HAS(real, matmul_dgelu_bwd)) g_wrap.matmul_dgelu_bwd = w_matmul_dgelu_bwd;
  if (ZP_TABLE_HAS(real, matmul_dgelu_bgrad_bwd)) g_wrap.matmul_dgelu_bgrad_bwd = w_matmul_dgelu_bgrad_bwd;
  if (ZP_TABLE_HAS(real, matmul_res_fwd)) g_wrap.matmul_res_fwd = w_matmul_res_fwd;
  if (ZP_TABLE_HAS(real, adamw_pieces)) g_wrap.adamw_pieces = w_adamw_pieces;
  if (ZP_TABLE_HAS(real, attention_bwd_ws)) g_wrap.attention_bwd_ws = w_attention_bwd_ws;
  if (ZP_TABLE_HAS(real, sumsq_many)) g_wrap.sumsq_many = w_sumsq_many;
  if (ZP_TABLE_HAS(real, sumsq_start)) g_wrap.sumsq_start = w_sumsq_start;
  if (ZP_TABLE_HAS(real, sumsq_collect)) g_wrap.sumsq_collect = w_sumsq_collect;
  zp_op_profile_reset();
  return &g_wrap;
}

/* device mode: read this step's timestamps (the device has finished: synchronize first) */
static void flush(void) {
  if (!g_dev || !g_b || g_nrec == 0) return;
  if (g_real->synchronize(g_b)) g_err = 1;
  for (int i = 0; i < g_nrec && !g_err; i++) {
    double ms = 0, gap = 0;
    if (g_real->timer_ms(g_b, 2 * i, 2 * i + 1, &ms) ||
        (i > 0 && g_real->timer_ms(g_b, 2 * i - 1, 2 * i, &gap))) {
      g_err = 1;
      break;
    }
    if (gap < 0) gap = 0;
    g_stats[g_rec[i]].ms += ms;
    g_stats[g_rec[i]].idle_ms += gap;
    g_busy += ms;
    g_idle += gap;
  }
  g_nrec = 0;
}

void zp_op_profile_enable(int on) {
  if (!on && g_on) flush();
  g_on = on;
}

void zp_op_profile_reset(void) {
  g_n = 0;
  memset(g_stats, 0, sizeof g_stats);
  g_nrec = 0;
  g_untimed = 0;
  g_busy = g_idle = 0;
  g_err = 0;
}

static int by_ms(const void* a, const void* b) {
  double x = ((const op_stat*)a)->ms, y = ((const op_stat*)b)->ms;
  return x < y ? 1 : x > y ? -1 : 0;
}

void zp_op_profile_print(FILE* f, int steps, double step_ms, double peak_flops) {
  if (!g_real || steps < 1) return;
  op_stat s[MAX_KEYS];
  memcpy(s, g_stats, sizeof s);
  qsort(s, (size_t)g_n, sizeof s[0], by_ms);
  double tot = 0;
  for (int i = 0; i < g_n; i++) tot += s[i].ms;
  if (g_dev) {
    fprintf(f, "op profile over %d step(s) (device timestamps before and after each op, nothing synchronized: "
               "op times are device times; 'idle before' is the device waiting for the host before that op; "
               "the profiled step takes %.1f ms):\n", steps, step_ms);
    if (g_err) fprintf(f, "warning: a timer op failed: the times below are incomplete\n");
    if (g_untimed) fprintf(f, "warning: %lld op calls beyond %d per step were counted but not timed\n", g_untimed, MAX_REC);
    fprintf(f, "| op | calls/step | ms/step | %% of ops | TFLOP/s | %% of peak | idle before ms/step |\n"
               "|---|---|---|---|---|---|---|\n");
  } else {
    fprintf(f, "op profile over %d step(s) (each op issued then synchronized: times include launch; "
               "the profiled step takes %.1f ms):\n", steps, step_ms);
    fprintf(f, "| op | calls/step | ms/step | %% of ops | TFLOP/s | %% of peak |\n|---|---|---|---|---|---|\n");
  }
  for (int i = 0; i < g_n; i++) {
    double ms = s[i].ms / steps;
    double tf = s[i].flops > 0 && s[i].ms > 0 ? s[i].flops / (s[i].ms / 1e3) / 1e12 : 0;
    char tfs[32] = "", pk[32] = "", idle[32] = "";
    if (tf > 0) snprintf(tfs, sizeof tfs, "%.3g", tf);
    if (tf > 0 && peak_flops > 0) snprintf(pk, sizeof pk, "%.0f%%", 100.0 * tf * 1e12 / peak_flops);
    if (g_dev) snprintf(idle, sizeof idle, " %.2f |", s[i].idle_ms / steps);
    fprintf(f, "| %s | %.1f | %.2f | %.1f%% | %s | %s |%s\n", s[i].name, (double)s[i].calls / steps, ms,
            tot > 0 ? 100.0 * s[i].ms / tot : 0, tfs, pk, idle);
  }
  if (g_dev)
    fprintf(f, "device: busy %.1f ms/step in ops, idle %.1f ms/step between them (%.0f%% of the span from the step's "
               "first op to its last)\n",
            g_busy / steps, g_idle / steps, g_busy + g_idle > 0 ? 100.0 * g_idle / (g_busy + g_idle) : 0);
  fprintf(f, "ops total %.1f ms/step; the rest of the step (%.1f ms) is host work, communication and waits\n", tot / steps,
          step_ms - tot / steps);
}
