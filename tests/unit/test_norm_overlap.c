/* test_norm_overlap.c: the gradient norm's sums started during the backward (ABI 1.9
 * sumsq_start / sumsq_collect, core/norm_overlap.c).
 * Claims: on the CPU backend a start equals sumsq bit for bit (fp32 and bf16 tensors, n == 0
 * gives 0), on the compute stream at once and on the side stream once its ticket is waited for;
 * a side-stream start whose ticket was not waited for reads NaN at collect (so a missing wait
 * fails here instead of racing on a GPU); bad slots and counts are refused. In a training run
 * (1 rank, replicated, grad_clip below the norm so the norm scales every update) the norm is the
 * same double with train.overlap_norm on and off at every step, the parameters end bitwise
 * equal, and every group's sum came from a start (hits = groups x steps), none with it off. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cpu.h"
#include "bf16.h"
#include "config.h"
#include "norm_overlap.h"
#include "rng.h"
#include "runtime.h"
#include "zt.h"
#include "zt_run.h"

static void t_backend_contract(void) {
  const zp_backend_ops* o = zp_cpu_backend_ops();
  CHECK(ZP_TABLE_HAS(o, sumsq_start) && ZP_TABLE_HAS(o, sumsq_collect));
  zp_backend_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.struct_size = sizeof cfg;
  cfg.compute_dtype = ZP_F32;
  zp_backend* b = NULL;
  CHECK(o->create(NULL, &cfg, &b) == ZP_OK);
  if (!b) return;
  enum { N = 100003 };
  float* x = malloc(N * sizeof(float));
  uint16_t* h = malloc(N * sizeof(uint16_t));
  for (int i = 0; i < N; i++) {
    x[i] = (float)zp_rng_uniform(3, 0, (uint64_t)i) * 2.0f - 1.0f;
    h[i] = zp_f32_to_bf16(x[i]);
  }
  double ref = 0, refh = 0, out[8];
  CHECK(o->sumsq(b, &ref, x, ZP_F32, N) == ZP_OK);
  CHECK(o->sumsq(b, &refh, h, ZP_BF16, N) == ZP_OK);
  /* side stream, not waited for: NaN */
  uint64_t t = 0;
  CHECK(o->side_begin(b) == ZP_OK);
  CHECK(o->sumsq_start(b, 3, x, ZP_F32, N) == ZP_OK);
  CHECK(o->side_end(b, &t) == ZP_OK);
  CHECK(o->sumsq_collect(b, 4, out) == ZP_OK);
  CHECK_MSG(isnan(out[3]), "a start whose ticket was not waited for read %g, not NaN", out[3]);
  CHECK(o->copy_wait(b, t, 1) == ZP_OK); /* runs it now; the next collect must not see it */
  /* side stream, waited for: the same bits as sumsq; a slot started twice holds the later */
  CHECK(o->side_begin(b) == ZP_OK);
  CHECK(o->sumsq_start(b, 0, h, ZP_BF16, N) == ZP_OK);
  CHECK(o->sumsq_start(b, 3, h, ZP_BF16, 5) == ZP_OK);
  CHECK(o->sumsq_start(b, 3, x, ZP_F32, N) == ZP_OK);
  CHECK(o->sumsq_start(b, 5, x, ZP_F32, 0) == ZP_OK);
  CHECK(o->side_end(b, &t) == ZP_OK);
  CHECK(o->copy_wait(b, t, 1) == ZP_OK);
  CHECK(o->sumsq_collect(b, 6, out) == ZP_OK);
  CHECK_MSG(memcmp(&out[3], &ref, sizeof ref) == 0, "side start %.17g vs sumsq %.17g", out[3], ref);
  CHECK_MSG(memcmp(&out[0], &refh, sizeof refh) == 0, "bf16 side start %.17g vs sumsq %.17g", out[0], refh);
  CHECK(out[5] == 0.0);
  CHECK_MSG(isnan(out[1]), "a slot never started read %g, not NaN", out[1]);
  /* compute stream: at once */
  CHECK(o->sumsq_start(b, 7, x, ZP_F32, N) == ZP_OK);
  CHECK(o->sumsq_collect(b, 8, out) == ZP_OK);
  CHECK(memcmp(&out[7], &ref, sizeof ref) == 0);
  /* refusals */
  CHECK(o->sumsq_start(b, -1, x, ZP_F32, N) == ZP_E_INVALID);
  CHECK(o->sumsq_start(b, ZP_SUMSQ_START_SLOTS, x, ZP_F32, N) == ZP_E_INVALID);
  CHECK(o->sumsq_start(b, 0, NULL, ZP_F32, N) == ZP_E_INVALID);
  CHECK(o->sumsq_start(b, 0, x, ZP_I32, N) == ZP_E_INVALID);
  CHECK(o->sumsq_collect(b, ZP_SUMSQ_START_SLOTS + 1, out) == ZP_E_INVALID);
  CHECK(o->sumsq_collect(b, -1, out) == ZP_E_INVALID);
  o->destroy(b);
  free(x);
  free(h);
}

static int open_run(zp_run* r, zp_config* c, const char* overlap) {
  const char* sets[] = {"model.n_layer=2",       "model.n_head=2",   "model.d_model=16",      "model.seq_len=8",
                        "model.vocab_size=37",   "model.vocab_pad=8", "train.micro_batch=2",  "train.grad_clip=0.05",
                        "train.precision=fp32", overlap};
  return zt_open_run(r, c, sets, (int)(sizeof sets / sizeof sets[0]), "norm.toml");
}

static void t_runtime(void) {
  zp_config c1, c2;
  zp_run r1, r2;
  if (open_run(&r1, &c1, "train.overlap_norm=true") || open_run(&r2, &c2, "train.overlap_norm=false")) return;
  CHECK(r1.norm != NULL);
  CHECK(r2.norm == NULL);
  enum { S = 3, BT = 16 };
  for (int step = 0; step < S; step++) {
    int32_t in[BT], tg[BT];
    for (int i = 0; i < BT; i++) {
      in[i] = (int32_t)zp_rng_below(11, (uint64_t)step, (uint64_t)i, 37);
      tg[i] = (int32_t)zp_rng_below(12, (uint64_t)step, (uint64_t)i, 37);
    }
    zp_run* rs[2] = {&r1, &r2};
    for (int k = 0; k < 2; k++) { /* as the training loop: one micro-batch, the last */
      double l;
      rs[k]->host.micro_batch = 0;
      rs[k]->host.micro_batches = 1;
      CHECK(zp_run_zero_grads(rs[k]) == 0);
      CHECK(zp_run_micro_batch(rs[k], in, tg, 1.0f / BT, &l) == 0);
      CHECK_MSG(zp_run_step(rs[k], 1e-2f) == 0, "%s", rs[k]->err);
    }
    CHECK_MSG(memcmp(&r1.opt.grad_norm, &r2.opt.grad_norm, sizeof(double)) == 0, "step %d: norm %.17g vs %.17g", step,
              r1.opt.grad_norm, r2.opt.grad_norm);
    CHECK_MSG(r1.opt.grad_norm > 0.05, "step %d: norm %g does not reach grad_clip (the test needs clipping)", step,
              r1.opt.grad_norm);
  }
  CHECK_EQ_INT((int)zp_norm_hits(&r1), S * r1.layout.n_groups);
  CHECK_EQ_INT((int)zp_norm_hits(&r2), 0);
  size_t differ = 0;
  for (int g = 0; g < r1.layout.n_groups; g++)
    differ += memcmp(r1.groups[g].info.buf[ZP_CAT_PARAM], r2.groups[g].info.buf[ZP_CAT_PARAM],
                     r1.groups[g].info.bytes[ZP_CAT_PARAM]) != 0;
  CHECK_MSG(differ == 0, "%zu groups' parameters differ between overlap_norm on and off", differ);
  zp_run_close(&r1);
  zp_run_close(&r2);
  zp_config_free(&c1);
  zp_config_free(&c2);
}

int main(void) {
  ZT_RUN(t_backend_contract);
  ZT_RUN(t_runtime);
  return zt_done();
}
