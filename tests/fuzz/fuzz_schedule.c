/* fuzz_schedule.c: libFuzzer target for pipeline schedules (core/schedule.c).
 *
 * Two input kinds, chosen by the first byte:
 * - 'L' P M V <Lua text>: the text is a schedule script loaded with zp_schedule_load_string
 *   for stages 1 + P % 4, micro-batches 1 + M % 6, chunks 1 + V % 3 (exercises the Lua
 *   conversion and every field check, in a sandbox with the host's caps);
 * - anything else: byte 0..2 give the shape the same way, then every 4 bytes are one
 *   instruction (stage, op, mb, chunk|buf nibbles, with -1 and out-of-range values
 *   reachable) handed to zp_schedule_from_lists (the engine on arbitrary lists).
 * A loaded schedule is validated and simulated (with comm latency, so pairs take time).
 * Failures: crashes, leaks, UB, and abort() when an invariant of schedule.h breaks: a failure
 * without a message; validate and simulate disagreeing; a simulated bubble outside [0, 1] or
 * a busy time above the makespan; a validated schedule whose last instruction on a stage is
 * not STEP, or that uses a buffer id >= zp_schedule_buffers. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "schedule.h"

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

#define CHECK(cond, ...)                                                                     \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      fprintf(stderr, "fuzz_schedule: %s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                                          \
      fputc('\n', stderr);                                                                   \
      abort();                                                                               \
    }                                                                                        \
  } while (0)

static void exercise(zp_schedule* s) {
  char err[8192] = "";
  int v = zp_schedule_validate(s, err, sizeof err);
  if (v) CHECK(err[0], "validate failed without a message");
  zp_op_times t;
  zp_op_times_default(&t);
  t.comm = 0.25;
  zp_sched_sim r;
  char err2[8192] = "";
  int sr = zp_schedule_simulate(s, &t, 1, &r, err2, sizeof err2);
  CHECK((v == 0) == (sr == 0), "validate %d vs simulate %d (%s | %s)", v, sr, err, err2);
  if (sr == 0) {
    for (int st = 0; st < r.stages; st++) {
      CHECK(r.bubble[st] >= -1e-12 && r.bubble[st] <= 1.0 + 1e-12, "bubble %g", r.bubble[st]);
      CHECK(r.busy[st] <= r.makespan + 1e-9, "busy %g > makespan %g", r.busy[st], r.makespan);
      int n;
      const zp_sched_instr* l = zp_schedule_stage(s, st, &n);
      CHECK(n > 0 && l[n - 1].op == ZP_SOP_STEP, "stage %d does not end with STEP", st);
      for (int i = 0; i < n; i++) CHECK(l[i].buf < zp_schedule_buffers(s, st), "buf %d", l[i].buf);
      CHECK(zp_schedule_peak_buffers(s, st) <= zp_schedule_buffers(s, st), "peak above buffers");
    }
  } else {
    CHECK(err2[0], "simulate failed without a message");
  }
  zp_sched_sim_free(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 4) return 0;
  char err[8192];
  zp_schedule* s = NULL;
  if (data[0] == 'L') {
    int P = 1 + data[1] % 4, M = 1 + data[2] % 6, V = 1 + data[3] % 3;
    char* code = (char*)malloc(size - 4 + 1);
    if (!code) return 0;
    memcpy(code, data + 4, size - 4);
    code[size - 4] = 0;
    err[0] = 0;
    int rc = zp_schedule_load_string(code, "fuzz.lua", P, M, V, &s, err, sizeof err);
    free(code);
    if (rc) {
      CHECK(err[0], "load failed without a message");
      CHECK(s == NULL, "failed load returned a schedule");
      return 0;
    }
  } else {
    int P = 1 + data[0] % 4, M = 1 + data[1] % 6, V = 1 + data[2] % 3;
    size_t n = (size - 3) / 4;
    if (n > 4096) n = 4096;
    zp_sched_instr* lists[4];
    int cnt[4] = {0, 0, 0, 0};
    for (int i = 0; i < 4; i++) {
      lists[i] = (zp_sched_instr*)calloc(n ? n : 1, sizeof(zp_sched_instr));
      if (!lists[i]) {
        for (int j = 0; j < i; j++) free(lists[j]);
        return 0;
      }
    }
    for (size_t i = 0; i < n; i++) {
      const uint8_t* b = data + 3 + 4 * i;
      int st = b[0] % P;
      zp_sched_instr in = {b[1] % (ZP_SOP_COUNT + 1), (int)(int8_t)b[2], (b[3] & 15) - 1, (b[3] >> 4) - 1, 0, 0, 0};
      lists[st][cnt[st]++] = in;
    }
    err[0] = 0;
    int rc = zp_schedule_from_lists(P, M, V, (const zp_sched_instr* const*)lists, cnt, &s, err, sizeof err);
    for (int i = 0; i < 4; i++) free(lists[i]);
    if (rc) {
      CHECK(err[0], "from_lists failed without a message");
      return 0;
    }
  }
  exercise(s);
  zp_schedule_free(s);
  return 0;
}
