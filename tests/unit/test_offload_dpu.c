/* test_offload_dpu.c: the delayed parameter update of the offload_cpu tier against its
 * reference recurrence, computed independently with the plain (no offload) runtime.
 * With warm-up W, the device computes step t on
 *   P_{t-1} for t <= W+1 (synchronous steps), P_{t-2} for t >= W+2 (one update behind),
 * and the update is always P_t = AdamW(P_{t-1}, gradient of step t). The reference run swaps
 * the parameters of step t-2 in for the forward/backward of each delayed step and the current
 * ones back before the update. Invariants checked: per-step losses and final parameters equal
 * the reference bit for bit (fp32 and bf16 storage); the delayed run differs from the
 * synchronous one (the flag really changes the schedule); after a flush the device parameters
 * are the last step's (a forward equals the synchronous reference's forward at P_N); the
 * ledger counts the per-group host buffers exactly.
 * Gradient streaming (offload.optimizer.stream_grads, the default): the gradients reach the host
 * during the micro-batch (before the step) exactly once per step, and runs with and without it
 * give the same bits, synchronous and delayed. The CPU backend defers async copies until they
 * are waited for, so a missing wait in the tier shows here as wrong numbers. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "runtime.h"
#include "zt.h"

#define STEPS 7
#define WARMUP 2

static int make_cfg(zp_config* c, const char* prec, int offload, int delayed, int stream) {
  char err[1024];
  int rc = zp_config_defaults(c);
  char p[64], w[80];
  snprintf(p, sizeof p, "train.precision=%s", prec);
  snprintf(w, sizeof w, "offload.optimizer.delayed_update_warmup=%d", WARMUP);
  const char* sets[] = {"model.n_layer=2", "model.n_head=2", "model.d_model=32", "model.seq_len=16", "model.vocab_size=64",
                        "model.vocab_pad=64", "train.micro_batch=2", "train.threads=1", "zero.plugin=none", p,
                        offload ? "offload.optimizer.plugin=offload_cpu" : "offload.optimizer.plugin=none",
                        delayed ? "offload.optimizer.delayed_update=true" : "offload.optimizer.delayed_update=false", w,
                        stream ? "offload.optimizer.stream_grads=true" : "offload.optimizer.stream_grads=false"};
  for (size_t i = 0; i < sizeof sets / sizeof sets[0] && !rc; i++) {
    rc = zp_config_set(c, sets[i], err, sizeof err);
    if (rc) fprintf(stderr, "config %s: %s\n", sets[i], err);
  }
  return rc;
}

static int open_run(zp_run* r, zp_config* c) {
  zp_run_opts o;
  memset(&o, 0, sizeof o);
  o.world = 1;
  int rc = zp_run_open(r, c, &o);
  if (!rc) rc = zp_run_init_weights(r);
  if (rc) fprintf(stderr, "open: %s\n", r->err);
  return rc;
}

static void batch(int N, int s, int32_t* in, int32_t* tg) {
  for (int i = 0; i < N; i++) {
    in[i] = (int32_t)((i * 7 + s * 13) % 64);
    tg[i] = (int32_t)((i * 11 + s * 5 + 3) % 64);
  }
}

/* raw PARAM bytes of every group (what the device computes with) */
static size_t param_bytes(zp_run* r, int g) {
  zp_group_info* in = &r->groups[g].info;
  return (size_t)in->padded * zp_dtype_size(in->dtype[ZP_CAT_PARAM]);
}
static int params_io(zp_run* r, char** buf, int put) {
  for (int g = 0; g < r->layout.n_groups; g++) {
    int rc = put ? zp_run_state_put(r, g, ZP_CAT_PARAM, 0, buf[g], param_bytes(r, g))
                 : zp_run_state_get(r, g, ZP_CAT_PARAM, 0, buf[g], param_bytes(r, g));
    if (rc) return rc;
  }
  return ZP_OK;
}
static char** params_alloc(zp_run* r) {
  char** b = calloc((size_t)r->layout.n_groups, sizeof *b);
  for (int g = 0; g < r->layout.n_groups; g++) b[g] = malloc(param_bytes(r, g));
  return b;
}
static void params_free(zp_run* r, char** b) {
  for (int g = 0; g < r->layout.n_groups; g++) free(b[g]);
  free(b);
}

/* mode 0: plain steps; 1: the reference recurrence (swap in P_{t-2} for delayed steps).
 * *early: gradient bytes that reached the host tier during the micro-batches (streamed). */
static int run_steps(zp_run* r, int mode, double* losses, unsigned long long* early) {
  int N = r->B * r->T, rc = 0;
  int32_t* in = malloc((size_t)N * sizeof *in);
  int32_t* tg = malloc((size_t)N * sizeof *tg);
  char** prev = params_alloc(r);
  char** cur = params_alloc(r);
  for (int t = 1; t <= STEPS && !rc; t++) {
    batch(N, t, in, tg);
    int swap = mode == 1 && t >= WARMUP + 2;
    if (mode == 1) rc = params_io(r, cur, 0);
    if (!rc && swap) rc = params_io(r, prev, 1);
    if (!rc) rc = zp_run_zero_grads(r);
    r->host.micro_batch = 0; /* one micro-batch per step, as the training loop says */
    r->host.micro_batches = 1;
    unsigned long long io0 = r->ledger.io_bytes[ZP_TIER_CPU][1];
    if (!rc) rc = zp_run_micro_batch(r, in, tg, 1.0f / (float)N, &losses[t - 1]);
    if (early) *early += r->ledger.io_bytes[ZP_TIER_CPU][1] - io0;
    if (!rc && swap) rc = params_io(r, cur, 1);
    if (!rc) rc = zp_run_step(r, 3e-3f);
    if (mode == 1) {
      char** x = prev;
      prev = cur;
      cur = x;
    }
    if (rc) fprintf(stderr, "step %d: %s\n", t, r->err);
  }
  params_free(r, prev);
  params_free(r, cur);
  free(in);
  free(tg);
  return rc;
}

/* fp32 parameters of every group (MASTER where held) */
static float** final_params(zp_run* r) {
  float** p = calloc((size_t)r->layout.n_groups, sizeof *p);
  for (int g = 0; g < r->layout.n_groups; g++) {
    p[g] = malloc((size_t)r->groups[g].info.padded * sizeof(float));
    if (zp_run_get_group_params(r, g, p[g])) fprintf(stderr, "get params %d: %s\n", g, r->err);
  }
  return p;
}

static long count_diff(zp_run* r, float** a, float** b, double* maxd) {
  long n = 0;
  *maxd = 0;
  for (int g = 0; g < r->layout.n_groups; g++)
    for (uint64_t i = 0; i < r->groups[g].info.padded; i++) {
      double d = fabs((double)a[g][i] - (double)b[g][i]);
      if (memcmp(&a[g][i], &b[g][i], sizeof(float))) n++;
      if (d > *maxd) *maxd = d;
    }
  return n;
}

static void free_params(zp_run* r, float** p) {
  for (int g = 0; g < r->layout.n_groups; g++) free(p[g]);
  free(p);
}

static void dpu_vs_reference(const char* prec, int stream) {
  zp_config cd, cr, cs;
  zp_run rd, rr, rs;
  double ld[STEPS], lr[STEPS], ls[STEPS];
  CHECK_EQ_INT(make_cfg(&cd, prec, 1, 1, stream), 0);
  CHECK_EQ_INT(make_cfg(&cr, prec, 0, 0, stream), 0);
  CHECK_EQ_INT(make_cfg(&cs, prec, 1, 0, stream), 0);
  CHECK_EQ_INT(open_run(&rd, &cd), 0);
  CHECK_EQ_INT(open_run(&rr, &cr), 0);
  CHECK_EQ_INT(open_run(&rs, &cs), 0);
  /* host buffers per held parameter: the delayed run two gradient buffers and the parameters,
   * the synchronous one a gradient buffer when streaming (the staging slots are the same) */
  uint64_t held = 0;
  for (int g = 0; g < rd.layout.n_groups; g++) held += rd.groups[g].info.padded;
  long long gs = (long long)zp_dtype_size(rd.grad_dt), pz = (long long)zp_dtype_size(rd.param_dt);
  CHECK_EQ_INT(rd.ledger.cur[ZP_CAT_BUFFER][ZP_TIER_CPU] - rs.ledger.cur[ZP_CAT_BUFFER][ZP_TIER_CPU],
               (2 * gs + pz - (stream ? gs : 0)) * (long long)held);
  unsigned long long early_d = 0, early_s = 0;
  CHECK_EQ_INT(run_steps(&rd, 0, ld, &early_d), 0);
  CHECK_EQ_INT(run_steps(&rr, 1, lr, NULL), 0);
  CHECK_EQ_INT(run_steps(&rs, 0, ls, &early_s), 0);
  /* streamed: every step's gradient reached the host during its micro-batch, once */
  unsigned long long want = stream ? (unsigned long long)(STEPS * held * gs) : 0;
  CHECK_MSG(early_d == want && early_s == want, "%s stream %d: gradient bytes to the host during the micro-batches: delayed %llu, "
            "synchronous %llu, want %llu", prec, stream, early_d, early_s, want);
  CHECK_EQ_INT(rd.ledger.io_bytes[ZP_TIER_CPU][1], STEPS * held * gs);
  CHECK_EQ_INT(rs.ledger.io_bytes[ZP_TIER_CPU][1], STEPS * held * gs);
  int same_loss = 1, sync_differs = 0;
  for (int t = 0; t < STEPS; t++) {
    if (memcmp(&ld[t], &lr[t], sizeof(double))) {
      fprintf(stderr, "%s step %d: delayed loss %.9g, reference %.9g\n", prec, t + 1, ld[t], lr[t]);
      same_loss = 0;
    }
    if (t < WARMUP + 1) CHECK(memcmp(&ld[t], &ls[t], sizeof(double)) == 0); /* warm-up: synchronous */
    else if (memcmp(&ld[t], &ls[t], sizeof(double))) sync_differs = 1;
  }
  CHECK(same_loss);
  CHECK_MSG(sync_differs, "the delayed run's losses equal the synchronous run's after the warm-up");
  float** pd = final_params(&rd);
  float** pr = final_params(&rr);
  float** ps = final_params(&rs);
  double md, ms;
  long nd = count_diff(&rd, pd, pr, &md), ns = count_diff(&rd, pd, ps, &ms);
  fprintf(stderr, "%s: delayed vs reference: %ld parameters differ (max %.3g); vs synchronous: %ld differ (max %.3g)\n", prec,
          nd, md, ns, ms);
  CHECK_EQ_INT(nd, 0);
  CHECK(ns > 0);
  /* flush: the device now computes with P_N, as the reference does after its last step */
  CHECK_EQ_INT(zp_run_flush(&rd), 0);
  int N = rd.B * rd.T;
  int32_t* in = malloc((size_t)N * sizeof *in);
  int32_t* tg = malloc((size_t)N * sizeof *tg);
  batch(N, STEPS + 1, in, tg);
  double fd = 0, fr = 1;
  CHECK_EQ_INT(zp_run_forward(&rd, in, tg, &fd), 0);
  CHECK_EQ_INT(zp_run_forward(&rr, in, tg, &fr), 0);
  CHECK_MSG(memcmp(&fd, &fr, sizeof fd) == 0, "after flush: %.9g vs %.9g", fd, fr);
  free(in);
  free(tg);
  free_params(&rd, pd);
  free_params(&rr, pr);
  free_params(&rs, ps);
  zp_run_close(&rd);
  zp_run_close(&rr);
  zp_run_close(&rs);
  zp_config_free(&cd);
  zp_config_free(&cr);
  zp_config_free(&cs);
}

/* grad_accum 2: the core hands final gradients to the tier only on a step's last micro-batch
 * (stage 2 reduces at every micro-batch, replicated only at the last): nothing streams during the
 * first, everything during the second, and the result equals the run without offload bitwise */
static void stream_accum(const char* stage) {
  zp_config co, cr;
  zp_run ro, rr;
  char err[256];
  CHECK_EQ_INT(make_cfg(&co, "bf16", 1, 0, 1), 0);
  CHECK_EQ_INT(make_cfg(&cr, "bf16", 0, 0, 1), 0);
  char zs[64];
  snprintf(zs, sizeof zs, "zero.plugin=%s", stage);
  CHECK_EQ_INT(zp_config_set(&co, zs, err, sizeof err), 0);
  CHECK_EQ_INT(zp_config_set(&cr, zs, err, sizeof err), 0);
  CHECK_EQ_INT(open_run(&ro, &co), 0);
  CHECK_EQ_INT(open_run(&rr, &cr), 0);
  int N = ro.B * ro.T;
  int32_t* in = malloc((size_t)N * sizeof *in);
  int32_t* tg = malloc((size_t)N * sizeof *tg);
  uint64_t held = 0;
  for (int g = 0; g < ro.layout.n_groups; g++) held += ro.groups[g].info.padded;
  unsigned long long first = 0, second = 0;
  int same = 1;
  for (int t = 1; t <= 3; t++) {
    double lo[2], lr[2];
    CHECK_EQ_INT(zp_run_zero_grads(&ro), 0);
    CHECK_EQ_INT(zp_run_zero_grads(&rr), 0);
    for (int m = 0; m < 2; m++) {
      batch(N, 2 * t + m, in, tg);
      ro.host.micro_batch = rr.host.micro_batch = m;
      ro.host.micro_batches = rr.host.micro_batches = 2;
      unsigned long long io0 = ro.ledger.io_bytes[ZP_TIER_CPU][1];
      CHECK_EQ_INT(zp_run_micro_batch(&ro, in, tg, 0.5f / (float)N, &lo[m]), 0);
      CHECK_EQ_INT(zp_run_micro_batch(&rr, in, tg, 0.5f / (float)N, &lr[m]), 0);
      *(m ? &second : &first) += ro.ledger.io_bytes[ZP_TIER_CPU][1] - io0;
      if (memcmp(&lo[m], &lr[m], sizeof lo[m])) same = 0;
    }
    CHECK_EQ_INT(zp_run_step(&ro, 3e-3f), 0);
    CHECK_EQ_INT(zp_run_step(&rr, 3e-3f), 0);
  }
  CHECK_MSG(same, "%s: losses differ from the run without offload", stage);
  CHECK_MSG(first == 0 && second == 3ull * held * zp_dtype_size(ro.grad_dt),
            "%s: gradient bytes to the host during micro-batch 0: %llu (want 0), during micro-batch 1: %llu (want %llu)", stage,
            first, second, (unsigned long long)(3ull * held * zp_dtype_size(ro.grad_dt)));
  float** po = final_params(&ro);
  float** pr = final_params(&rr);
  double md;
  CHECK_EQ_INT(count_diff(&ro, po, pr, &md), 0);
  free_params(&ro, po);
  free_params(&rr, pr);
  free(in);
  free(tg);
  zp_run_close(&ro);
  zp_run_close(&rr);
  zp_config_free(&co);
  zp_config_free(&cr);
}
static void test_stream_accum_none(void) { stream_accum("none"); }
static void test_stream_accum_stage2(void) { stream_accum("stage2"); }

static void test_dpu_fp32(void) { dpu_vs_reference("fp32", 1); }
static void test_dpu_bf16(void) { dpu_vs_reference("bf16", 1); }
static void test_dpu_fp32_nostream(void) { dpu_vs_reference("fp32", 0); }
static void test_dpu_bf16_nostream(void) { dpu_vs_reference("bf16", 0); }

int main(void) {
  setenv("ZP_PLUGIN_PATH", ZP_BUILD_DIR "/plugins", 0);
  ZT_RUN(test_dpu_fp32);
  ZT_RUN(test_dpu_bf16);
  ZT_RUN(test_dpu_fp32_nostream);
  ZT_RUN(test_dpu_bf16_nostream);
  ZT_RUN(test_stream_accum_none);
  ZT_RUN(test_stream_accum_stage2);
  return zt_done();
}
