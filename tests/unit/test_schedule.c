/* test_schedule.c: pipeline schedules (core/schedule.c) and stage balance
 * (core/pipeline_balance.c).
 *
 * What is asserted: every shipped schedule validates for several (P, M, V), including M not
 * a multiple of P where the schedule allows it and a clear rejection where it does not; the
 * simulated bubbles equal the closed forms for equal op times (GPipe and 1F1B
 * (p-1)/(m+p-1), interleaved (p-1)/(vm+p-1), ZB-H1 (p-1)/(3m+p-1)), with interleaved and
 * ZB-H1 below 1F1B; the bad schedules in tests/schedules (deadlock, missing backward, Lua
 * error, buffer used before filled, buffer overwritten, unmatched receive) and malformed
 * instructions are rejected with the stage, the instruction number and the reason; exact
 * timings of small hand-checked cases (comm latency, per-virtual-stage times); the FLOP
 * balance against exhaustive search and an example where parameter-count balance differs.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "config.h"
#include "schedule.h"
#include "zt.h"

#ifndef ZP_SOURCE_DIR
#define ZP_SOURCE_DIR "."
#endif
#ifndef ZP_BUILD_DIR
#define ZP_BUILD_DIR "."
#endif

static char err[8192];

static zp_schedule* load_shipped(const char* name, int P, int M, int V) {
  char path[1024];
  snprintf(path, sizeof path, "%s/scripts/schedules/%s.lua", ZP_SOURCE_DIR, name);
  zp_schedule* s = NULL;
  err[0] = 0;
  if (zp_schedule_load(path, P, M, V, &s, err, sizeof err)) return NULL;
  return s;
}

static int load_test(const char* name, int P, int M, int V, zp_schedule** s) {
  char path[1024];
  snprintf(path, sizeof path, "%s/tests/schedules/%s.lua", ZP_SOURCE_DIR, name);
  err[0] = 0;
  *s = NULL;
  return zp_schedule_load(path, P, M, V, s, err, sizeof err);
}

/* Loads + validates; returns 0 when valid, and the mean simulated bubble in *bubble. */
static int check_valid(zp_schedule* s, const zp_op_times* t, double* bubble, double* makespan) {
  if (!s) return -1;
  if (zp_schedule_validate(s, err, sizeof err)) return -1;
  zp_sched_sim r;
  int rc = zp_schedule_simulate(s, t, 1, &r, err, sizeof err);
  if (rc == 0) {
    *bubble = r.mean_bubble;
    *makespan = r.makespan;
    /* equal op times on every stage: every stage has the same bubble */
    for (int st = 0; st < r.stages; st++) CHECK_NEAR(r.bubble[st], r.mean_bubble, 1e-9, 0);
  }
  zp_sched_sim_free(&r);
  return rc;
}

static zp_op_times times(double f, double bi, double bw, double b) {
  zp_op_times t;
  zp_op_times_default(&t);
  t.fwd = f;
  t.bwd_input = bi;
  t.bwd_weight = bw;
  t.bwd = b;
  return t;
}

static void test_gpipe_1f1b_exact(void) {
  static const int shapes[][2] = {{1, 1}, {1, 4}, {2, 1}, {2, 3}, {3, 5}, {4, 8}, {4, 6}, {5, 3}, {8, 16}, {4, 4}};
  static const char* const names[] = {"gpipe", "1f1b"};
  zp_op_times t = times(1, 1, 1, 2);
  for (size_t n = 0; n < 2; n++)
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
      int P = shapes[i][0], M = shapes[i][1];
      zp_schedule* s = load_shipped(names[n], P, M, 1);
      CHECK_MSG(s != NULL, "%s P=%d M=%d: %s", names[n], P, M, err);
      double b = -1, mk = -1;
      CHECK_MSG(check_valid(s, &t, &b, &mk) == 0, "%s P=%d M=%d: %s", names[n], P, M, err);
      /* makespan (m + p - 1)(tF + tB); bubble (p-1)/(m+p-1) */
      CHECK_NEAR(mk, (M + P - 1) * 3.0, 1e-9, 0);
      CHECK_NEAR(b, (double)(P - 1) / (M + P - 1), 1e-12, 0);
      CHECK_NEAR(b, zp_bubble_fraction(zp_bubble_textbook(P, M, 1)), 1e-12, 0);
      if (s && n == 1)  /* 1F1B: stage 0 holds min(p, m) micro-batches, the last stage 1 (2 with its send) */
        CHECK_EQ_INT(zp_schedule_peak_buffers(s, 0), P < M ? P : M);
      if (s && n == 0) CHECK_EQ_INT(zp_schedule_peak_buffers(s, P - 1), M);
      zp_schedule_free(s);
    }
  /* other op times: still (p-1)/(m+p-1) for both (t_B = 3 t_F) */
  zp_op_times t3 = times(1, 1.5, 1.5, 3);
  for (size_t n = 0; n < 2; n++) {
    zp_schedule* s = load_shipped(names[n], 4, 7, 1);
    double b = -1, mk = -1;
    CHECK_MSG(check_valid(s, &t3, &b, &mk) == 0, "%s: %s", names[n], err);
    CHECK_NEAR(mk, (7 + 3) * 4.0, 1e-9, 0);
    CHECK_NEAR(b, 3.0 / 10.0, 1e-12, 0);
    zp_schedule_free(s);
  }
}

static void test_interleaved(void) {
  static const int shapes[][3] = {{2, 4, 2}, {4, 8, 2}, {4, 12, 3}, {3, 6, 2}, {2, 2, 2}, {4, 4, 4}, {8, 16, 2}, {2, 6, 3}, {4, 16, 2}};
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
    int P = shapes[i][0], M = shapes[i][1], V = shapes[i][2];
    zp_schedule* s = load_shipped("interleaved_1f1b", P, M, V);
    CHECK_MSG(s != NULL, "P=%d M=%d V=%d: %s", P, M, V, err);
    /* per-chunk op times: a chunk is 1/V of the device's work */
    zp_op_times t = times(1.0 / V, 1.0 / V, 1.0 / V, 2.0 / V);
    double b = -1, mk = -1;
    CHECK_MSG(check_valid(s, &t, &b, &mk) == 0, "P=%d M=%d V=%d: %s", P, M, V, err);
    double want = (double)(P - 1) / (V * M + P - 1);
    CHECK_MSG(fabs(b - want) < 1e-9, "P=%d M=%d V=%d: bubble %.6f, textbook %.6f", P, M, V, b, want);
    CHECK_NEAR(b, zp_bubble_fraction(zp_bubble_textbook(P, M, V)), 1e-9, 0);
    CHECK(b < (double)(P - 1) / (M + P - 1)); /* below 1F1B's */
    zp_schedule_free(s);
  }
  /* the same device count with v = 1 is plain 1F1B's number */
  zp_schedule* s = load_shipped("interleaved_1f1b", 4, 8, 1);
  zp_op_times t = times(1, 1, 1, 2);
  double b = -1, mk = -1;
  CHECK_MSG(check_valid(s, &t, &b, &mk) == 0, "%s", err);
  CHECK_NEAR(b, 3.0 / 11.0, 1e-12, 0);
  zp_schedule_free(s);
  /* rejections with a reason */
  CHECK(load_shipped("interleaved_1f1b", 4, 6, 2) == NULL);
  CHECK_STR_CONTAINS(err, "multiple of stages");
  CHECK_STR_CONTAINS(err, "try 4 or 8");
  CHECK(load_shipped("interleaved_1f1b", 1, 4, 2) == NULL);
  CHECK_STR_CONTAINS(err, "needs stages >= 2");
  CHECK(load_shipped("1f1b", 4, 8, 2) == NULL);
  CHECK_STR_CONTAINS(err, "chunks must be 1");
  CHECK_STR_CONTAINS(err, "stage_id=0");
}

static void test_zb_h1(void) {
  static const int shapes[][2] = {{4, 8}, {4, 4}, {2, 5}, {8, 16}, {3, 7}, {4, 2}, {1, 3}, {5, 3}, {4, 9}};
  zp_op_times eq = times(1, 1, 1, 2);
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
    int P = shapes[i][0], M = shapes[i][1];
    zp_schedule* z = load_shipped("zb_h1", P, M, 1);
    CHECK_MSG(z != NULL, "P=%d M=%d: %s", P, M, err);
    double bz = -1, mz = -1, b1 = -1, m1 = -1;
    CHECK_MSG(check_valid(z, &eq, &bz, &mz) == 0, "P=%d M=%d: %s", P, M, err);
    zp_schedule* o = load_shipped("1f1b", P, M, 1);
    CHECK_MSG(check_valid(o, &eq, &b1, &m1) == 0, "%s", err);
    if (P > 1) CHECK_MSG(bz < b1, "P=%d M=%d: zb_h1 %.4f vs 1f1b %.4f", P, M, bz, b1);
    if (M >= P) {
      /* ZB-H1 with tF = tB = tW: (p-1) idle per stage, (p-1)/(3m+p-1) of the wall */
      CHECK_NEAR(mz, 3.0 * M + P - 1, 1e-9, 0);
      CHECK_NEAR(bz, zp_bubble_fraction(zp_bubble_textbook_zb_h1(P, M, 1, 1, 1)), 1e-12, 0);
      /* 1F1B's peak activation memory (p buffers on every stage) */
      for (int st = 0; st < P; st++) CHECK(zp_schedule_peak_buffers(z, st) <= P);
    }
    zp_schedule_free(z);
    zp_schedule_free(o);
  }
  /* split backward where W is cheaper: still below 1F1B */
  zp_op_times t = times(1, 1.2, 0.8, 2);
  zp_schedule* z = load_shipped("zb_h1", 4, 8, 1);
  zp_schedule* o = load_shipped("1f1b", 4, 8, 1);
  double bz, mz, b1, m1;
  CHECK(check_valid(z, &t, &bz, &mz) == 0);
  CHECK(check_valid(o, &t, &b1, &m1) == 0);
  CHECK(bz < b1);
  zp_schedule_free(z);
  zp_schedule_free(o);
}

static void test_bad_schedules(void) {
  zp_schedule* s;
  /* Lua error: rejected at load, with file, line, stage and the Lua message */
  CHECK(load_test("lua_error", 2, 4, 1, &s) != 0);
  CHECK(s == NULL);
  CHECK_STR_CONTAINS(err, "lua_error.lua:7:");
  CHECK_STR_CONTAINS(err, "stage_id=1");
  CHECK_STR_CONTAINS(err, "FWDD");

  /* deadlock: both neighbours send */
  CHECK(load_test("deadlock", 2, 4, 1, &s) == 0);
  CHECK(zp_schedule_validate(s, err, sizeof err) != 0);
  CHECK_STR_CONTAINS(err, "deadlock: stage 0 instruction #6 (SEND_ACT mb=1 buf=1 to stage 1) waits for stage 1");
  CHECK_STR_CONTAINS(err, "stage 1 instruction #5 (SEND_GRAD mb=0 buf=0 to stage 0) waits for stage 0");
  zp_schedule_free(s);
  /* ... and at 4 stages the cycle is between two middle stages too */
  CHECK(load_test("deadlock", 4, 8, 1, &s) == 0);
  CHECK(zp_schedule_validate(s, err, sizeof err) != 0);
  CHECK_STR_CONTAINS(err, "deadlock: ");
  zp_schedule_free(s);

  /* missing backward */
  CHECK(load_test("missing_backward", 2, 2, 1, &s) == 0);
  CHECK(zp_schedule_validate(s, err, sizeof err) != 0);
  CHECK_STR_CONTAINS(err, "stage 0 instruction #10 (REDUCE_GRADS): micro-batch 1 has no backward");
  zp_schedule_free(s);

  /* buffer used before it is filled */
  CHECK(load_test("buffer_before_fill", 2, 1, 1, &s) == 0);
  CHECK(zp_schedule_validate(s, err, sizeof err) != 0);
  CHECK_STR_CONTAINS(err, "stage 1 instruction #2 (FWD mb=0 buf=0): buffer used before it is filled");
  zp_schedule_free(s);

  /* buffer overwritten while still needed */
  CHECK(load_test("overwrite", 2, 2, 1, &s) == 0);
  CHECK(zp_schedule_validate(s, err, sizeof err) != 0);
  CHECK_STR_CONTAINS(err, "stage 1 instruction #5 (RECV_ACT mb=1 buf=0 from stage 0): buffer 0 is still in use by micro-batch 0");
  zp_schedule_free(s);

  /* unmatched receive: the sender finished without sending */
  CHECK(load_test("unmatched", 2, 2, 1, &s) == 0);
  CHECK(zp_schedule_validate(s, err, sizeof err) != 0);
  CHECK_STR_CONTAINS(err, "stage 0 instruction #9 (RECV_GRAD mb=1 buf=1 from stage 1): unmatched receive: stage 1 finished");
  CHECK_STR_CONTAINS(err, "without the matching SEND_GRAD");
  zp_schedule_free(s);

  /* the same scripts through the simulator fail the same way */
  CHECK(load_test("deadlock", 2, 4, 1, &s) == 0);
  zp_op_times t;
  zp_op_times_default(&t);
  zp_sched_sim r;
  CHECK(zp_schedule_simulate(s, &t, 1, &r, err, sizeof err) != 0);
  CHECK_STR_CONTAINS(err, "deadlock");
  zp_sched_sim_free(&r);
  zp_schedule_free(s);
}

static int load_str(const char* code, int P, int M, int V, zp_schedule** s) {
  err[0] = 0;
  *s = NULL;
  return zp_schedule_load_string(code, "t.lua", P, M, V, s, err, sizeof err);
}

static int validate_str(const char* code, int P, int M, int V) {
  zp_schedule* s;
  if (load_str(code, P, M, V, &s)) return -2;
  int rc = zp_schedule_validate(s, err, sizeof err);
  zp_schedule_free(s);
  return rc ? -1 : 0;
}

static void test_field_errors(void) {
  zp_schedule* s;
  CHECK(load_str("return function(p, m, s) return {{op = 'FWDX', mb = 0}} end", 1, 1, 1, &s) != 0);
  CHECK_STR_CONTAINS(err, "t.lua: stage 0 instruction #1: unknown op \"FWDX\"");
  CHECK(load_str("return function(p, m, s) return {LOAD(0), FWD(3)} end", 1, 2, 1, &s) != 0);
  CHECK_STR_CONTAINS(err, "t.lua: stage 0 instruction #2 (FWD): mb = 3 is out of range [0, 2)");
  CHECK(load_str("return function(p, m, s) return {FWD(0, 2)} end", 2, 2, 2, &s) != 0);
  CHECK_STR_CONTAINS(err, "stage 0 instruction #1 (FWD mb=0): chunk = 2 is out of range [0, 2)");
  CHECK(load_str("return function(p, m, s) return {FWD(0, 0, 9)} end", 2, 2, 1, &s) != 0);
  CHECK_STR_CONTAINS(err, "buf = 9 is out of range [0, 2) (micro_batches x chunks)");
  CHECK(load_str("return function(p, m, s) return {{op = 'FWD', mb = 0, micro = 1}} end", 1, 1, 1, &s) != 0);
  CHECK_STR_CONTAINS(err, "stage 0 instruction #1: unknown field 'micro'");
  CHECK(load_str("return function(p, m, s) return {{op = 'FWD', mb = 0.5}} end", 1, 1, 1, &s) != 0);
  CHECK_STR_CONTAINS(err, "field mb = 0.5 is not an integer");
  CHECK(load_str("return function(p, m, s) return {{op = 'FWD'}} end", 1, 1, 1, &s) != 0);
  CHECK_STR_CONTAINS(err, "(FWD): field mb is missing");
  CHECK(load_str("return function(p, m, s) return {LOAD(0), 7} end", 1, 1, 1, &s) != 0);
  CHECK_STR_CONTAINS(err, "stage 0 instruction #2 is a number");
  CHECK(load_str("return function(p, m, s) return {[1] = LOAD(0), [3] = STEP()} end", 1, 1, 1, &s) != 0);
  CHECK_STR_CONTAINS(err, "is not a list");
  CHECK(load_str("return function(p, m, s) end", 1, 1, 1, &s) != 0);
  CHECK_STR_CONTAINS(err, "returned nil");
  CHECK(load_str("x = 1", 1, 1, 1, &s) != 0);
  CHECK_STR_CONTAINS(err, "neither returns a function nor defines a global function schedule");
  CHECK(load_str("return function(p, m, s) return {LOAD(0)} end", 3, 1, 1, &s) != 0);
  CHECK_STR_CONTAINS(err, "stage 1 instruction #1 (LOAD mb=0): only stage 0");
  CHECK(load_str("return function(p, m, s) if s == 1 then return {SEND_ACT(0)} end return {} end", 2, 1, 1, &s) != 0);
  CHECK_STR_CONTAINS(err, "stage 1 instruction #1 (SEND_ACT mb=0): the last virtual stage (1) has no next stage");
  CHECK(load_str("return function(p, m, s) return {RECV_ACT(0)} end", 2, 1, 1, &s) != 0);
  CHECK_STR_CONTAINS(err, "stage 0 instruction #1 (RECV_ACT mb=0): virtual stage 0 has no previous stage");
  CHECK(load_str("return function(p, m, s) return {{op = 'STEP', mb = 0}} end", 1, 1, 1, &s) != 0);
  CHECK_STR_CONTAINS(err, "STEP takes no mb, chunk or buf");
  CHECK(load_str("return function(p, m, s) return {{op = 'LOAD', mb = 0, buf = 0}} end", 1, 1, 1, &s) != 0);
  CHECK_STR_CONTAINS(err, "LOAD takes only mb");
  CHECK(load_str("return function(p, m, s) while true do end end", 1, 1, 1, &s) != 0);
  CHECK_STR_CONTAINS(err, "instruction limit exceeded");
  CHECK(load_str("return function(p, m, s) return {} end", 2, 1, 3, &s) == 0);
  zp_schedule_free(s);
  CHECK(load_str("return function(p, m, s) return {} end", 0, 1, 1, &s) != 0);
  CHECK_STR_CONTAINS(err, "stages = 0 is out of range");
  CHECK(load_str("syntax error here", 1, 1, 1, &s) != 0);
  CHECK_STR_CONTAINS(err, "t.lua:1:");
}

static void test_rules(void) {
  /* P = 1, V = 1: the smallest valid list; defaults chunk 0, buf = mb */
  const char* ok1 = "return function(p, m, s) return {LOAD(0), FWD(0), BWD(0), REDUCE_GRADS(), STEP()} end";
  CHECK_EQ_INT(validate_str(ok1, 1, 1, 1), 0);
  CHECK_EQ_INT(validate_str("return function(p, m, s) return {FWD(0), BWD(0), REDUCE_GRADS(), STEP()} end", 1, 1, 1), -1);
  CHECK_STR_CONTAINS(err, "stage 0 instruction #1 (FWD mb=0 buf=0): FWD on the first virtual stage before LOAD of micro-batch 0");
  CHECK_EQ_INT(validate_str("return function(p, m, s) return {LOAD(0), FWD(0), BWD(0), STEP(), REDUCE_GRADS()} end", 1, 1, 1), -1);
  CHECK_STR_CONTAINS(err, "instruction #4 (STEP): STEP before REDUCE_GRADS");
  CHECK_EQ_INT(validate_str("return function(p, m, s) return {LOAD(0), FWD(0), BWD(0), REDUCE_GRADS()} end", 1, 1, 1), -1);
  CHECK_STR_CONTAINS(err, "stage 0: the list ends (after instruction #4) without STEP");
  CHECK_EQ_INT(validate_str("return function(p, m, s) return {LOAD(0), FWD(0), BWD(0), REDUCE_GRADS(), STEP(), STEP()} end", 1, 1, 1), -1);
  CHECK_STR_CONTAINS(err, "instruction #5 (STEP): STEP must be the last instruction (1 follow it)");
  CHECK_EQ_INT(validate_str("return function(p, m, s) return {LOAD(0), FWD(0), FWD(0), BWD(0), REDUCE_GRADS(), STEP()} end", 1, 1, 1), -1);
  CHECK_STR_CONTAINS(err, "instruction #3 (FWD mb=0 buf=0): a second FWD of micro-batch 0 (the first is instruction #2)");
  CHECK_EQ_INT(validate_str("return function(p, m, s) return {LOAD(0), FWD(0), BWD(0), BWD_WEIGHT(0), REDUCE_GRADS(), STEP()} end", 1, 1, 1), -1);
  CHECK_STR_CONTAINS(err, "BWD_WEIGHT after a full BWD");
  CHECK_EQ_INT(validate_str("return function(p, m, s) return {LOAD(0), FWD(0), BWD_INPUT(0), REDUCE_GRADS(), STEP()} end", 1, 1, 1), -1);
  CHECK_STR_CONTAINS(err, "instruction #4 (REDUCE_GRADS): micro-batch 0 has no BWD_WEIGHT before REDUCE_GRADS (its BWD_INPUT is instruction #3)");
  CHECK_EQ_INT(validate_str("return function(p, m, s) return {LOAD(0), FWD(0), BWD_WEIGHT(0), BWD_INPUT(0), REDUCE_GRADS(), STEP()} end", 1, 1, 1), -1);
  CHECK_STR_CONTAINS(err, "BWD_WEIGHT of micro-batch 0 before its BWD_INPUT");
  CHECK_EQ_INT(validate_str("return function(p, m, s) return {LOAD(0), BWD(0), FWD(0), REDUCE_GRADS(), STEP()} end", 1, 1, 1), -1);
  CHECK_STR_CONTAINS(err, "backward of micro-batch 0 before its FWD");
  /* two stages: the receiving side posts a different micro-batch first */
  const char* mism =
      "return function(p, m, s)\n"
      "  if s == 0 then return {LOAD(0), FWD(0), LOAD(1), FWD(1), SEND_ACT(1), SEND_ACT(0),\n"
      "    RECV_GRAD(0), BWD(0), RECV_GRAD(1), BWD(1), REDUCE_GRADS(), STEP()} end\n"
      "  return {LOAD(0), RECV_ACT(0), FWD(0), LOAD(1), RECV_ACT(1), FWD(1), BWD(0), SEND_GRAD(0),\n"
      "    BWD(1), SEND_GRAD(1), REDUCE_GRADS(), STEP()}\n"
      "end";
  CHECK_EQ_INT(validate_str(mism, 2, 2, 1), -1);
  CHECK_STR_CONTAINS(err, "stage 0 instruction #5 (SEND_ACT mb=1 buf=1 to stage 1) meets stage 1 instruction #2 (RECV_ACT mb=0 buf=0 from stage 0)");
  /* the buffers can be reused once free: GPipe with 1 buffer per stage and M = 1 is fine */
  const char* one = "return function(p, m, s)\n"
                    "  if s == 0 then return {LOAD(0), FWD(0,0,0), SEND_ACT(0,0,0), RECV_GRAD(0,0,0), BWD(0,0,0), LOAD(1), FWD(1,0,0),\n"
                    "    SEND_ACT(1,0,0), RECV_GRAD(1,0,0), BWD(1,0,0), REDUCE_GRADS(), STEP()} end\n"
                    "  return {LOAD(0), RECV_ACT(0,0,0), FWD(0,0,0), BWD(0,0,0), SEND_GRAD(0,0,0), LOAD(1), RECV_ACT(1,0,0), FWD(1,0,0),\n"
                    "    BWD(1,0,0), SEND_GRAD(1,0,0), REDUCE_GRADS(), STEP()}\n"
                    "end";
  zp_schedule* s;
  CHECK(load_str(one, 2, 2, 1, &s) == 0);
  CHECK_MSG(zp_schedule_validate(s, err, sizeof err) == 0, "%s", err);
  CHECK_EQ_INT(zp_schedule_peak_buffers(s, 0), 1);
  CHECK_EQ_INT(zp_schedule_buffers(s, 1), 1);
  zp_schedule_free(s);
}

/* Hand-checked timings through the C-list path. */
static void test_timing(void) {
  /* GPipe P = 2, M = 1 */
  zp_sched_instr s0[] = {{ZP_SOP_LOAD, 0, -1, -1, 0, 0, 0}, {ZP_SOP_FWD, 0, 0, 0, 0, 0, 0}, {ZP_SOP_SEND_ACT, 0, 0, 0, 0, 0, 0},
                         {ZP_SOP_RECV_GRAD, 0, 0, 0, 0, 0, 0}, {ZP_SOP_BWD, 0, 0, 0, 0, 0, 0},
                         {ZP_SOP_REDUCE_GRADS, -1, -1, -1, 0, 0, 0}, {ZP_SOP_STEP, -1, -1, -1, 0, 0, 0}};
  zp_sched_instr s1[] = {{ZP_SOP_LOAD, 0, -1, -1, 0, 0, 0}, {ZP_SOP_RECV_ACT, 0, 0, 0, 0, 0, 0}, {ZP_SOP_FWD, 0, 0, 0, 0, 0, 0},
                         {ZP_SOP_BWD, 0, 0, 0, 0, 0, 0}, {ZP_SOP_SEND_GRAD, 0, 0, 0, 0, 0, 0},
                         {ZP_SOP_REDUCE_GRADS, -1, -1, -1, 0, 0, 0}, {ZP_SOP_STEP, -1, -1, -1, 0, 0, 0}};
  const zp_sched_instr* lists[] = {s0, s1};
  int n[] = {7, 7};
  zp_schedule* s = NULL;
  CHECK_MSG(zp_schedule_from_lists(2, 1, 1, lists, n, &s, err, sizeof err) == 0, "%s", err);
  if (!s) return;
  CHECK_MSG(zp_schedule_validate(s, err, sizeof err) == 0, "%s", err);
  int nn;
  const zp_sched_instr* l = zp_schedule_stage(s, 0, &nn);
  CHECK_EQ_INT(nn, 7);
  CHECK_EQ_INT(l[2].peer, 1);
  CHECK_EQ_INT(l[2].vstage, 0);
  CHECK_EQ_INT(zp_schedule_stage(s, 1, &nn)[4].peer, 0);
  /* comm 0.5: F0 [0,1], send [1,1.5], F1 [1.5,2.5], B1 [2.5,4.5], grad [4.5,5], B0 [5,7] */
  zp_op_times t;
  zp_op_times_default(&t);
  t.comm = 0.5;
  zp_sched_sim r;
  CHECK(zp_schedule_simulate(s, &t, 1, &r, err, sizeof err) == 0);
  CHECK_NEAR(r.makespan, 7.0, 1e-12, 0);
  CHECK_NEAR(r.busy[0], 3.0, 1e-12, 0);
  CHECK_NEAR(r.bubble[1], 1.0 - 3.0 / 7.0, 1e-12, 0);
  CHECK_NEAR(r.start[1][2], 1.5, 1e-12, 0);
  CHECK_NEAR(r.end[0][3], 5.0, 1e-12, 0);
  zp_sched_sim_free(&r);
  /* per-virtual-stage times: stage 1 twice as slow; no comm: 1 + 2 + 4 + 2 = 9 */
  zp_op_times tv[2];
  zp_op_times_default(&tv[0]);
  zp_op_times_default(&tv[1]);
  tv[1].fwd = 2;
  tv[1].bwd = 4;
  CHECK(zp_schedule_simulate(s, tv, 2, &r, err, sizeof err) == 0);
  CHECK_NEAR(r.makespan, 9.0, 1e-12, 0);
  CHECK_NEAR(r.bubble[0], 1.0 - 3.0 / 9.0, 1e-12, 0);
  CHECK_NEAR(r.bubble[1], 1.0 - 6.0 / 9.0, 1e-12, 0);
  zp_sched_sim_free(&r);
  CHECK(zp_schedule_simulate(s, tv, 3, &r, err, sizeof err) != 0);
  CHECK_STR_CONTAINS(err, "1 or stages x chunks (2) op times, got 3");
  zp_sched_sim_free(&r);
  tv[0].fwd = -1;
  CHECK(zp_schedule_simulate(s, tv, 2, &r, err, sizeof err) != 0);
  CHECK_STR_CONTAINS(err, "times[0].fwd = -1");
  zp_sched_sim_free(&r);
  char d[128];
  zp_sched_instr_describe(s, &l[2], d, sizeof d);
  CHECK_STR_CONTAINS(d, "SEND_ACT mb=0 buf=0 to stage 1");
  zp_sched_instr_token(s, &l[1], d, sizeof d);
  CHECK(strcmp(d, "F0[0]") == 0);
  zp_schedule_free(s);
  /* C lists get the same field checks */
  s0[1].mb = 5;
  CHECK(zp_schedule_from_lists(2, 1, 1, lists, n, &s, err, sizeof err) != 0);
  CHECK_STR_CONTAINS(err, "stage 0 instruction #2 (FWD): mb = 5 is out of range [0, 1)");
  /* rendezvous with comm latency: 1F1B P=4 M=8 predicts more than the comm-free bubble */
  zp_schedule* o = load_shipped("1f1b", 4, 8, 1);
  zp_op_times tc = times(1, 1, 1, 2);
  tc.comm = 0.1;
  CHECK(o && zp_schedule_simulate(o, &tc, 1, &r, err, sizeof err) == 0);
  CHECK(r.makespan > 33.0 && r.mean_bubble > 3.0 / 11.0);
  zp_sched_sim_free(&r);
  zp_schedule_free(o);
}

/* Exhaustive min over contiguous non-empty splits of the max stage cost. */
static double brute(const double* c, int G, int S, int g0) {
  if (S == 1) {
    double t = 0;
    for (int g = g0; g < G; g++) t += c[g];
    return t;
  }
  double best = 1e300, acc = 0;
  for (int e = g0; e <= G - S; e++) {
    acc += c[e];
    double rest = brute(c, G, S - 1, e + 1);
    double m = acc > rest ? acc : rest;
    if (m < best) best = m;
  }
  return best;
}

static void test_balance(void) {
  /* exact against exhaustive search on pseudo-random costs */
  unsigned x = 12345;
  for (int trial = 0; trial < 300; trial++) {
    int G = 1 + (int)(x % 12);
    x = x * 1103515245u + 12345u;
    int S = 1 + (int)(x % (unsigned)G);
    x = x * 1103515245u + 12345u;
    double c[16];
    for (int g = 0; g < G; g++) {
      x = x * 1103515245u + 12345u;
      c[g] = (double)((x >> 8) % 1000) * ((x & 1) ? 1.0 : 0.001);
    }
    int first[17];
    CHECK(zp_pipeline_balance(c, G, S, first, err, sizeof err) == 0);
    CHECK_EQ_INT(first[0], 0);
    CHECK_EQ_INT(first[S], G);
    for (int k = 0; k < S; k++) CHECK(first[k + 1] > first[k]);
    CHECK_NEAR(zp_pipeline_split_max(c, first, S, NULL), brute(c, G, S, 0), 1e-9, 1e-12);
  }
  /* GPT-2 with 6 layers, C 768, T 1024, Vp 50304 on 2 stages. By FLOPs the head (the tied
   * classifier, about 4.5 blocks) shares the last stage with one block. By parameters the
   * embedding (39.4M, almost the 42.5M of all 6 blocks, but no matmul FLOPs) stands alone
   * and the last stage gets nearly all the compute. */
  int L = 6, C = 768, T = 1024, Vp = 50304, G = L + 2;
  double fl[8];
  CHECK(zp_pipeline_group_flops(L, C, T, Vp, fl, G) == 0);
  CHECK_NEAR(fl[0], 0.0, 0, 0);
  CHECK_NEAR(fl[1], 24.0 * C * C + 4.0 * T * C, 0, 0);
  CHECK_NEAR(fl[G - 1], 2.0 * C * Vp, 0, 0);
  int ff[3], fp[3];
  CHECK(zp_pipeline_balance(fl, G, 2, ff, err, sizeof err) == 0);
  CHECK_EQ_INT(ff[1], 6); /* embed + blocks 0-4 | block 5 + head */
  double params[8];
  params[0] = 50257.0 * C + (double)T * C; /* wte (real rows) + wpe */
  for (int l = 1; l <= L; l++) params[l] = 12.0 * C * C + 13.0 * C;
  params[G - 1] = 2.0 * C;
  CHECK(zp_pipeline_balance(params, G, 2, fp, err, sizeof err) == 0);
  CHECK_EQ_INT(fp[1], 1); /* embed | all blocks + head */
  double mf = zp_pipeline_split_max(fl, ff, 2, NULL), mp = zp_pipeline_split_max(fl, fp, 2, NULL);
  CHECK(mf < 0.55 * mp); /* the parameter split leaves stage 1 with almost all the FLOPs */
  double imb;
  zp_pipeline_split_max(fl, ff, 2, &imb);
  CHECK(imb > 1.0 && imb < 1.1); /* uneven (5 blocks vs 1 block + head), reported */
  FILE* f = tmpfile();
  if (f) {
    const char* names[] = {"embed", "block.0", "block.1", "block.2", "block.3", "block.4", "block.5", "head"};
    zp_pipeline_split_print(f, ff, 2, fl, NULL, names);
    rewind(f);
    char buf[2048] = "";
    size_t got = fread(buf, 1, sizeof buf - 1, f);
    buf[got] = 0;
    CHECK_STR_CONTAINS(buf, "embed .. block.4 (6)");
    CHECK_STR_CONTAINS(buf, "block.5 .. head (2)");
    CHECK_STR_CONTAINS(buf, "uneven split: stage 1 carries");
    fclose(f);
  }
  /* rejections */
  CHECK(zp_pipeline_balance(fl, G, 9, ff, err, sizeof err) != 0);
  CHECK_STR_CONTAINS(err, "cannot split 8 groups into 9 pipeline stages");
  int64_t cnt[] = {3, 3, 2};
  int f3[4];
  CHECK(zp_pipeline_split_counts(cnt, 3, 8, 3, "x.toml:3:1: pipeline.stages", f3, err, sizeof err) == 0);
  CHECK(f3[1] == 3 && f3[2] == 6 && f3[3] == 8);
  int64_t short_[] = {3, 3, 1};
  CHECK(zp_pipeline_split_counts(short_, 3, 8, 3, "x.toml:3:1: pipeline.stages", f3, err, sizeof err) != 0);
  CHECK_STR_CONTAINS(err, "x.toml:3:1: pipeline.stages covers 7 groups but the model has 8");
  int64_t zero[] = {4, 0, 4};
  CHECK(zp_pipeline_split_counts(zero, 3, 8, 3, NULL, f3, err, sizeof err) != 0);
  CHECK_STR_CONTAINS(err, "pipeline.stages[1] = 0: every stage needs at least one group");
  CHECK(zp_pipeline_split_counts(cnt, 3, 8, 2, NULL, f3, err, sizeof err) != 0);
  CHECK_STR_CONTAINS(err, "lists 3 stages but the pipeline has 2");
  int a0[] = {0, 1, 2}, a1[] = {3, 4}, a2[] = {5, 6, 7}, b1[] = {4, 3}, c1[] = {3, 5};
  const int* ls[] = {a0, a1, a2};
  int len[] = {3, 2, 3};
  CHECK(zp_pipeline_split_lists(ls, len, 3, 8, f3, err, sizeof err) == 0);
  CHECK(f3[1] == 3 && f3[2] == 5);
  ls[1] = b1;
  CHECK(zp_pipeline_split_lists(ls, len, 3, 8, f3, err, sizeof err) != 0);
  CHECK_STR_CONTAINS(err, "stage 1 lists group 4 but group 3 is on no stage");
  ls[1] = c1;
  CHECK(zp_pipeline_split_lists(ls, len, 3, 8, f3, err, sizeof err) != 0);
  CHECK_STR_CONTAINS(err, "stage 1 lists group 5 but group 4 is on no stage");
  ls[1] = a1;
  len[2] = 2;
  CHECK(zp_pipeline_split_lists(ls, len, 3, 8, f3, err, sizeof err) != 0);
  CHECK_STR_CONTAINS(err, "group 7 is on no stage");
  len[2] = 0;
  CHECK(zp_pipeline_split_lists(ls, len, 3, 8, f3, err, sizeof err) != 0);
  CHECK_STR_CONTAINS(err, "pipeline stage 2 is empty");
}

static int cfg(zp_config* c, const char* text) {
  return zp_config_load_text(c, text, strlen(text), "p.toml", NULL, 0, err, sizeof err);
}

static void test_config(void) {
  zp_config c;
  CHECK_MSG(cfg(&c, "[parallel]\npp = 4\n[pipeline]\nschedule = \"zb_h1\"\nmicro_batches = 6\n") == 0, "%s", err);
  zp_schedule* s = NULL;
  CHECK_MSG(zp_schedule_from_config(&c, &s, err, sizeof err) == 0, "%s", err);
  CHECK(s && zp_schedule_stages(s) == 4 && zp_schedule_micro_batches(s) == 6 && zp_schedule_chunks(s) == 1);
  CHECK(s && zp_schedule_peak_buffers(s, 0) == 4); /* validated */
  zp_schedule_free(s);
  /* 14 groups (12 layers) by FLOPs on 4 stages: the head alone on the last */
  int first[5];
  CHECK_MSG(zp_pipeline_split_for_config(&c, 12, 768, 1024, 50304, first, 5, err, sizeof err) == 0, "%s", err);
  CHECK(first[0] == 0 && first[1] == 5 && first[2] == 9 && first[3] == 13 && first[4] == 14);
  zp_config_free(&c);
  CHECK(cfg(&c, "[parallel]\npp = 4\n[pipeline]\nschedule = \"interleaved_1f1b\"\nchunks = 2\nmicro_batches = 6\n") == 0);
  CHECK(zp_schedule_from_config(&c, &s, err, sizeof err) != 0);
  CHECK_STR_CONTAINS(err, "p.toml:4:1: pipeline.schedule = \"interleaved_1f1b\" (pp 4, micro_batches 6, chunks 2) is rejected");
  CHECK_STR_CONTAINS(err, "multiple of stages");
  CHECK(s == NULL);
  zp_config_free(&c);
  CHECK(cfg(&c, "[parallel]\npp = 3\n[pipeline]\nstages = [5, 5, 3]\n") == 0);
  CHECK(zp_pipeline_split_for_config(&c, 12, 768, 1024, 50304, first, 5, err, sizeof err) != 0);
  CHECK_STR_CONTAINS(err, "p.toml:4:1: pipeline.stages covers 13 groups but the model has 14");
  zp_config_free(&c);
  CHECK(cfg(&c, "[parallel]\npp = 2\n[pipeline]\nschedule = \"nope\"\n") == 0);
  CHECK(zp_schedule_from_config(&c, &s, err, sizeof err) != 0);
  CHECK_STR_CONTAINS(err, "pipeline.schedule = \"nope\": no such schedule");
  zp_config_free(&c);
}

/* `zp schedule check` end to end: exit status and the printed numbers. */
static int run_zp(const char* args, char* out, size_t n) {
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "%s/zp schedule %s 2>&1", ZP_BUILD_DIR, args);
  FILE* p = popen(cmd, "r");
  if (!p) return -1;
  size_t got = fread(out, 1, n - 1, p);
  out[got] = 0;
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_cli(void) {
  static char out[65536];
  CHECK_EQ_INT(run_zp("check 1f1b --stages 4 --micro-batches 8", out, sizeof out), 0);
  CHECK_STR_CONTAINS(out, "stage 3 (42, 2 buffers): L0 ra0[0] F0[0] B0[0] L1 ra1[1] sg0[0]");
  CHECK_STR_CONTAINS(out, "validation: ok; peak buffers in use per stage: 4 4 3 2");
  CHECK_STR_CONTAINS(out, "mean bubble 0.2727");
  CHECK_STR_CONTAINS(out, "textbook (p-1)/m = 0.3750 of ideal compute -> 0.2727 of wall");
  CHECK_EQ_INT(run_zp("check zb_h1 --stages 4 --micro-batches 8 --summary --times fwd=1,bwd_input=1,bwd_weight=1", out, sizeof out), 0);
  CHECK_STR_CONTAINS(out, "mean bubble 0.1111");
  CHECK(strstr(out, "stage 0 (") == NULL);
  CHECK_EQ_INT(run_zp("check interleaved_1f1b --stages 4 --micro-batches 8 --chunks 2 --summary", out, sizeof out), 0);
  CHECK_STR_CONTAINS(out, "mean bubble 0.1579");
  CHECK_STR_CONTAINS(out, "textbook (p-1)/(v*m) = 0.1875 of ideal compute -> 0.1579 of wall");
  CHECK_EQ_INT(run_zp("check " ZP_SOURCE_DIR "/tests/schedules/deadlock.lua --stages 2 --micro-batches 4", out, sizeof out), 1);
  CHECK_STR_CONTAINS(out, "validation: REJECTED");
  CHECK_STR_CONTAINS(out, "zp: rejected: deadlock: stage 0 instruction #6");
  CHECK_EQ_INT(run_zp("check " ZP_SOURCE_DIR "/tests/schedules/lua_error.lua --stages 2 --micro-batches 4", out, sizeof out), 1);
  CHECK_STR_CONTAINS(out, "lua_error.lua:7: attempt to call a nil value (global 'FWDD')");
  CHECK_EQ_INT(run_zp("check interleaved_1f1b --stages 4 --micro-batches 6 --chunks 2", out, sizeof out), 1);
  CHECK_STR_CONTAINS(out, "multiple of stages");
  CHECK_EQ_INT(run_zp("check 1f1b --stages 4", out, sizeof out), 2);
  CHECK_EQ_INT(run_zp("check 1f1b --stages 4 --micro-batches 8 --times fwd=x", out, sizeof out), 2);
  CHECK_EQ_INT(run_zp("check nosuch --stages 4 --micro-batches 8", out, sizeof out), 1);
  CHECK_STR_CONTAINS(out, "no such file or shipped schedule");
}

int main(void) {
  ZT_RUN(test_gpipe_1f1b_exact);
  ZT_RUN(test_interleaved);
  ZT_RUN(test_zb_h1);
  ZT_RUN(test_bad_schedules);
  ZT_RUN(test_field_errors);
  ZT_RUN(test_rules);
  ZT_RUN(test_timing);
  ZT_RUN(test_balance);
  ZT_RUN(test_config);
  ZT_RUN(test_cli);
  return zt_done();
}
