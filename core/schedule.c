/* schedule.c: pipeline schedules: loading per-stage instruction lists from a Lua script,
 * checking every field, the rendezvous simulator that validates a schedule (and, with op
 * durations, predicts each stage's busy time and bubble), textbook bubble numbers, and
 * printing. See schedule.h for the API contract and docs/schedules.md for the rules.
 *
 * Invariants:
 * - A zp_schedule is built only through check_instr, so every instruction's op, mb, chunk,
 *   buf, vstage and peer are in range; the engine relies on it (array indexing).
 * - Validation and timing are one engine (engine_run): the same rules decide both, so a
 *   schedule that simulates is a schedule that validates.
 * - The engine is a worklist over stages: a stage runs its local instructions until it
 *   reaches a send or receive; a pair completes when both sides are at matching
 *   instructions, which re-queues the peer. Every instruction is executed once, so the
 *   engine is O(total instructions + stages). Times are a pure function of the lists and
 *   the op durations, independent of the processing order.
 * - Lua runs in a fresh sandbox per load (lua_host.h), the script first, after a prelude
 *   (constructors and the `pipeline` helpers). Every Lua API call that may raise runs
 *   inside a C function called through zp_lua_pcall.
 */
#include "schedule.h"
#include "seterr.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "config.h"
#include "lua_host.h"
#include "train.h"
#include "zp/zp_plugin.h"

static const char* const op_names[ZP_SOP_COUNT] = {
  "LOAD", "FWD", "BWD", "BWD_INPUT", "BWD_WEIGHT", "SEND_ACT", "RECV_ACT",
  "SEND_GRAD", "RECV_GRAD", "REDUCE_GRADS", "STEP"};

const char* zp_sched_op_name(int op) {
  return op >= 0 && op < ZP_SOP_COUNT ? op_names[op] : NULL;
}

int zp_sched_op_parse(const char* name) {
  if (!name) return -1;
  for (int i = 0; i < ZP_SOP_COUNT; i++)
    if (strcmp(name, op_names[i]) == 0) return i;
  return -1;
}

int zp_sched_op_is_comm(int op) {
  return op == ZP_SOP_SEND_ACT || op == ZP_SOP_RECV_ACT || op == ZP_SOP_SEND_GRAD ||
         op == ZP_SOP_RECV_GRAD;
}

static int op_uses_unit(int op) {
  return op != ZP_SOP_LOAD && op != ZP_SOP_REDUCE_GRADS && op != ZP_SOP_STEP;
}


struct zp_schedule {
  int P, M, V;
  int* n;                /* [P] */
  zp_sched_instr** list; /* [P] */
  int* nbuf;             /* [P] max buf + 1 */
  int* peak;             /* [P] peak buffers in use; -1 before validation */
};

void zp_schedule_free(zp_schedule* s) {
  if (!s) return;
  if (s->list)
    for (int i = 0; i < s->P; i++) free(s->list[i]);
  free(s->list);
  free(s->n);
  free(s->nbuf);
  free(s->peak);
  free(s);
}

int zp_schedule_stages(const zp_schedule* s) { return s ? s->P : 0; }
int zp_schedule_micro_batches(const zp_schedule* s) { return s ? s->M : 0; }
int zp_schedule_chunks(const zp_schedule* s) { return s ? s->V : 0; }

const zp_sched_instr* zp_schedule_stage(const zp_schedule* s, int stage, int* n) {
  if (!s || stage < 0 || stage >= s->P) {
    if (n) *n = 0;
    return NULL;
  }
  if (n) *n = s->n[stage];
  return s->list[stage];
}

int zp_schedule_buffers(const zp_schedule* s, int stage) {
  return s && stage >= 0 && stage < s->P ? s->nbuf[stage] : 0;
}

int zp_schedule_peak_buffers(const zp_schedule* s, int stage) {
  return s && stage >= 0 && stage < s->P ? s->peak[stage] : -1;
}

static int check_shape(int P, int M, int V, char* err, size_t errlen) {
  if (P < 1 || P > ZP_SCHED_MAX_STAGES) {
    seterr(err, errlen, "stages = %d is out of range [1, %d]", P, ZP_SCHED_MAX_STAGES);
    return ZP_E_INVALID;
  }
  if (M < 1 || M > ZP_SCHED_MAX_MICRO_BATCHES) {
    seterr(err, errlen, "micro_batches = %d is out of range [1, %d]", M, ZP_SCHED_MAX_MICRO_BATCHES);
    return ZP_E_INVALID;
  }
  if (V < 1 || V > ZP_SCHED_MAX_CHUNKS) {
    seterr(err, errlen, "chunks = %d is out of range [1, %d]", V, ZP_SCHED_MAX_CHUNKS);
    return ZP_E_INVALID;
  }
  if (P == 1 && V > 1) {
    seterr(err, errlen, "chunks = %d needs stages >= 2 (with one stage every chunk would send to itself)", V);
    return ZP_E_INVALID;
  }
  if ((long long)P * M * V > ZP_SCHED_MAX_UNITS) {
    seterr(err, errlen, "stages %d x micro_batches %d x chunks %d = %lld units is more than the %d the simulator handles",
           P, M, V, (long long)P * M * V, ZP_SCHED_MAX_UNITS);
    return ZP_E_INVALID;
  }
  return ZP_OK;
}

/* Most instructions a valid list can hold: per unit at most RECV_ACT FWD SEND_ACT RECV_GRAD
 * BWD_INPUT BWD_WEIGHT SEND_GRAD, plus one LOAD per micro-batch, REDUCE_GRADS and STEP. */
static long long max_list_len(int M, int V) { return 7LL * M * V + M + 2; }

static zp_schedule* sched_alloc(int P, int M, int V) {
  zp_schedule* s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->P = P;
  s->M = M;
  s->V = V;
  s->n = calloc((size_t)P, sizeof(int));
  s->list = calloc((size_t)P, sizeof(zp_sched_instr*));
  s->nbuf = calloc((size_t)P, sizeof(int));
  s->peak = malloc((size_t)P * sizeof(int));
  if (!s->n || !s->list || !s->nbuf || !s->peak) {
    zp_schedule_free(s);
    return NULL;
  }
  for (int i = 0; i < P; i++) s->peak[i] = -1;
  return s;
}

/* Field checks shared by the Lua and C paths; fills vstage / peer / peer_chunk. `where` is
 * the message prefix ("x.lua: stage 1 instruction #4"). Fields an op does not use must be
 * -1 (the Lua path maps absent fields to -1 and applies the defaults before). */
static int check_instr(int P, int M, int V, int stage, zp_sched_instr* in, const char* where,
                       char* err, size_t errlen) {
  const char* name = zp_sched_op_name(in->op);
  if (!name) {
    seterr(err, errlen, "%s: unknown op %d", where, in->op);
    return ZP_E_INVALID;
  }
  in->vstage = in->peer = in->peer_chunk = -1;
  if (in->op == ZP_SOP_REDUCE_GRADS || in->op == ZP_SOP_STEP) {
    if (in->mb != -1 || in->chunk != -1 || in->buf != -1) {
      seterr(err, errlen, "%s (%s): %s takes no mb, chunk or buf", where, name, name);
      return ZP_E_INVALID;
    }
    return ZP_OK;
  }
  if (in->mb < 0 || in->mb >= M) {
    seterr(err, errlen, "%s (%s): mb = %d is out of range [0, %d)", where, name, in->mb, M);
    return ZP_E_INVALID;
  }
  if (in->op == ZP_SOP_LOAD) {
    if (in->chunk != -1 || in->buf != -1) {
      seterr(err, errlen, "%s (LOAD mb=%d): LOAD takes only mb (no chunk, no buf)", where, in->mb);
      return ZP_E_INVALID;
    }
    if (stage != 0 && stage != P - 1) {
      seterr(err, errlen, "%s (LOAD mb=%d): only stage 0 (first virtual stage) and stage %d (last) load data",
             where, in->mb, P - 1);
      return ZP_E_INVALID;
    }
    return ZP_OK;
  }
  if (in->chunk < 0 || in->chunk >= V) {
    seterr(err, errlen, "%s (%s mb=%d): chunk = %d is out of range [0, %d)", where, name, in->mb, in->chunk, V);
    return ZP_E_INVALID;
  }
  if (in->buf < 0 || (long long)in->buf >= (long long)M * V) {
    seterr(err, errlen, "%s (%s mb=%d): buf = %d is out of range [0, %d) (micro_batches x chunks)",
           where, name, in->mb, in->buf, M * V);
    return ZP_E_INVALID;
  }
  int K = P * V, k = in->chunk * P + stage;
  in->vstage = k;
  int to = -1;
  switch (in->op) {
    case ZP_SOP_SEND_ACT:
      if (k == K - 1) {
        seterr(err, errlen, "%s (SEND_ACT mb=%d): the last virtual stage (%d) has no next stage to send activations to",
               where, in->mb, k);
        return ZP_E_INVALID;
      }
      to = k + 1;
      break;
    case ZP_SOP_RECV_ACT:
      if (k == 0) {
        seterr(err, errlen, "%s (RECV_ACT mb=%d): virtual stage 0 has no previous stage (its input comes from LOAD)",
               where, in->mb);
        return ZP_E_INVALID;
      }
      to = k - 1;
      break;
    case ZP_SOP_SEND_GRAD:
      if (k == 0) {
        seterr(err, errlen, "%s (SEND_GRAD mb=%d): virtual stage 0 has no previous stage to send gradients to",
               where, in->mb);
        return ZP_E_INVALID;
      }
      to = k - 1;
      break;
    case ZP_SOP_RECV_GRAD:
      if (k == K - 1) {
        seterr(err, errlen, "%s (RECV_GRAD mb=%d): the last virtual stage (%d) gets its gradient from the loss, not a peer",
               where, in->mb, k);
        return ZP_E_INVALID;
      }
      to = k + 1;
      break;
    default: break;
  }
  if (to >= 0) {
    in->peer = to % P;
    in->peer_chunk = to / P;
  }
  return ZP_OK;
}

static void finish_sched(zp_schedule* s) {
  for (int st = 0; st < s->P; st++) {
    int nb = 0;
    for (int i = 0; i < s->n[st]; i++)
      if (s->list[st][i].buf + 1 > nb) nb = s->list[st][i].buf + 1;
    s->nbuf[st] = nb;
  }
}

int zp_schedule_from_lists(int P, int M, int V, const zp_sched_instr* const* lists,
                           const int* n, zp_schedule** out, char* err, size_t errlen) {
  if (!out || !lists || !n) {
    seterr(err, errlen, "zp_schedule_from_lists: invalid arguments");
    return ZP_E_INVALID;
  }
  *out = NULL;
  int rc = check_shape(P, M, V, err, errlen);
  if (rc) return rc;
  zp_schedule* s = sched_alloc(P, M, V);
  if (!s) {
    seterr(err, errlen, "out of memory");
    return ZP_E_NOMEM;
  }
  for (int st = 0; st < P; st++) {
    if (n[st] < 0 || (n[st] > 0 && !lists[st]) || n[st] > max_list_len(M, V)) {
      seterr(err, errlen, "stage %d: %d instructions (at most %lld fit %d micro-batches x %d chunks)", st, n[st],
             max_list_len(M, V), M, V);
      zp_schedule_free(s);
      return ZP_E_INVALID;
    }
    s->list[st] = malloc((size_t)(n[st] ? n[st] : 1) * sizeof(zp_sched_instr));
    if (!s->list[st]) {
      zp_schedule_free(s);
      seterr(err, errlen, "out of memory");
      return ZP_E_NOMEM;
    }
    s->n[st] = n[st];
    for (int i = 0; i < n[st]; i++) {
      s->list[st][i] = lists[st][i];
      char where[64];
      snprintf(where, sizeof where, "stage %d instruction #%d", st, i + 1);
      rc = check_instr(P, M, V, st, &s->list[st][i], where, err, errlen);
      if (rc) {
        zp_schedule_free(s);
        return rc;
      }
    }
  }
  finish_sched(s);
  *out = s;
  return ZP_OK;
}

/* ---------------------------------------------------------------- Lua loading */

/* The prelude every schedule script runs after: constructors and the `pipeline` helpers.
 * pipeline.with_comms turns per-device compute orders into full lists by planning them in
 * time with unit op durations: an op starts once its input has arrived, and a transfer
 * happens at the first moment both devices are between ops (senders never wait; a receiver
 * waits only when its next op needs the data). Each device's list is what it does in that
 * plan, in time order (transfers at one moment in creation order), so every list posts its
 * transfers in one global order and rendezvous sends cannot deadlock; with the plan's op
 * durations the lists reproduce the plan's timing. Buffers are then numbered (lowest free
 * slot), LOAD goes before the first FWD that needs it, REDUCE_GRADS and STEP at the end. */
static const char prelude[] =
  "local function unit_op(op)\n"
  "  return function(mb, chunk, buf) return {op = op, mb = mb, chunk = chunk, buf = buf} end\n"
  "end\n"
  "FWD, BWD, BWD_INPUT, BWD_WEIGHT = unit_op('FWD'), unit_op('BWD'), unit_op('BWD_INPUT'), unit_op('BWD_WEIGHT')\n"
  "SEND_ACT, RECV_ACT = unit_op('SEND_ACT'), unit_op('RECV_ACT')\n"
  "SEND_GRAD, RECV_GRAD = unit_op('SEND_GRAD'), unit_op('RECV_GRAD')\n"
  "function LOAD(mb) return {op = 'LOAD', mb = mb} end\n"
  "function REDUCE_GRADS() return {op = 'REDUCE_GRADS'} end\n"
  "function STEP() return {op = 'STEP'} end\n"
  "pipeline = {}\n"
  "function pipeline.vstage(stage, chunk, stages) return chunk * stages + stage end\n"
  "local KIND = {FWD = 0, BWD = 1, BWD_INPUT = 1, BWD_WEIGHT = 2}\n"
  "local function build(P, M, V, compute, times)\n"
  "  local K = P * V\n"
  "  local dur = {FWD = 1, BWD = 2, BWD_INPUT = 1, BWD_WEIGHT = 1}\n"
  "  for k, v in pairs(times or {}) do\n"
  "    if dur[k] == nil or type(v) ~= 'number' or not (v > 0 and v < math.huge) then\n"
  "      error(('pipeline.with_comms: times.%s must be a positive number'):format(tostring(k)), 3)\n"
  "    end\n"
  "    dur[k] = v\n"
  "  end\n"
  "  local function id(kd, mb, k) return (kd * M + mb) * K + k end\n"
  "  local orders, pc, busy, cur, out, loaded = {}, {}, {}, {}, {}, {}\n"
  "  for s = 0, P - 1 do\n"
  "    local o = compute(s, P, M, V)\n"
  "    if type(o) ~= 'table' then\n"
  "      error(('pipeline.with_comms: compute(%d) returned %s, expected a list'):format(s, type(o)), 3)\n"
  "    end\n"
  "    for i, ins in ipairs(o) do\n"
  "      local c = type(ins) == 'table' and (ins.chunk or 0)\n"
  "      if not c or KIND[ins.op] == nil or math.type(ins.mb) ~= 'integer' or ins.mb < 0\n"
  "         or ins.mb >= M or math.type(c) ~= 'integer' or c < 0 or c >= V then\n"
  "        error(('pipeline.with_comms: compute(%d) entry %d is not FWD, BWD, BWD_INPUT or BWD_WEIGHT '\n"
  "          .. 'with mb in [0, %d) and chunk in [0, %d)'):format(s, i, M, V), 3)\n"
  "      end\n"
  "    end\n"
  "    orders[s], pc[s], out[s], loaded[s] = o, 1, {}, {}\n"
  "  end\n"
  "  -- Plan in time: every device runs its order; an op starts when its input has arrived; a\n"
  "  -- transfer happens at the first moment both devices are between ops (senders never wait,\n"
  "  -- a receiver waits only when its next op needs the data). Each device's list is what it\n"
  "  -- does in time order, so all lists post their transfers in one global order.\n"
  "  local done, recvd, pending = {}, {}, {}\n"
  "  local t = 0\n"
  "  while true do\n"
  "    for s = 0, P - 1 do\n"
  "      if busy[s] and busy[s] <= t then\n"
  "        local ins = cur[s]\n"
  "        local c = ins.chunk or 0\n"
  "        local k = c * P + s\n"
  "        local kd = KIND[ins.op]\n"
  "        done[id(kd, ins.mb, k)] = true\n"
  "        busy[s], cur[s] = nil, nil\n"
  "        if kd == 0 and k < K - 1 then\n"
  "          pending[#pending + 1] = {s, (k + 1) % P, 'ACT', ins.mb, c, (k + 1) // P, id(0, ins.mb, k + 1)}\n"
  "        elseif kd == 1 and k > 0 then\n"
  "          pending[#pending + 1] = {s, (k - 1) % P, 'GRAD', ins.mb, c, (k - 1) // P, id(1, ins.mb, k - 1)}\n"
  "        end\n"
  "      end\n"
  "    end\n"
  "    local keep = {}\n"
  "    for _, x in ipairs(pending) do\n"
  "      local a, b = x[1], x[2]\n"
  "      if busy[a] == nil and busy[b] == nil then\n"
  "        local oa, ob = out[a], out[b]\n"
  "        oa[#oa + 1] = {op = 'SEND_' .. x[3], mb = x[4], chunk = x[5]}\n"
  "        ob[#ob + 1] = {op = 'RECV_' .. x[3], mb = x[4], chunk = x[6]}\n"
  "        recvd[x[7]] = true\n"
  "      else\n"
  "        keep[#keep + 1] = x\n"
  "      end\n"
  "    end\n"
  "    pending = keep\n"
  "    local nxt, left = nil, false\n"
  "    for s = 0, P - 1 do\n"
  "      local o = orders[s]\n"
  "      if busy[s] == nil and pc[s] <= #o then\n"
  "        local ins = o[pc[s]]\n"
  "        local c = ins.chunk or 0\n"
  "        local k = c * P + s\n"
  "        local kd = KIND[ins.op]\n"
  "        local me = id(kd, ins.mb, k)\n"
  "        local own = (kd == 1 and id(0, ins.mb, k)) or (kd == 2 and id(1, ins.mb, k)) or nil\n"
  "        if done[me] then\n"
  "          error(('pipeline.with_comms: stage %d entry %d repeats %s of mb=%d chunk=%d'):format(\n"
  "            s, pc[s], ins.op, ins.mb, c), 3)\n"
  "        end\n"
  "        if own and not done[own] then\n"
  "          error(('pipeline.with_comms: stage %d entry %d (%s mb=%d chunk=%d) comes before the %s it needs'):format(\n"
  "            s, pc[s], ins.op, ins.mb, c, kd == 1 and 'FWD' or 'BWD_INPUT'), 3)\n"
  "        end\n"
  "        if kd == 2 or (kd == 0 and k == 0) or (kd == 1 and k == K - 1) or recvd[me] then\n"
  "          local os = out[s]\n"
  "          if kd == 0 and (k == 0 or k == K - 1) and not loaded[s][ins.mb] then\n"
  "            loaded[s][ins.mb] = true\n"
  "            os[#os + 1] = LOAD(ins.mb)\n"
  "          end\n"
  "          os[#os + 1] = {op = ins.op, mb = ins.mb, chunk = c}\n"
  "          busy[s], cur[s], pc[s] = t + dur[ins.op], ins, pc[s] + 1\n"
  "        end\n"
  "      end\n"
  "      if busy[s] and (nxt == nil or busy[s] < nxt) then nxt = busy[s] end\n"
  "      if pc[s] <= #o then left = true end\n"
  "    end\n"
  "    if nxt == nil then\n"
  "      if left or #pending > 0 then\n"
  "        for s = 0, P - 1 do\n"
  "          local ins = orders[s][pc[s]]\n"
  "          if ins then\n"
  "            error(('pipeline.with_comms: the compute orders deadlock: stage %d waits at entry %d '\n"
  "              .. '(%s mb=%d chunk=%d) for input that never comes'):format(s, pc[s], ins.op, ins.mb,\n"
  "              ins.chunk or 0), 3)\n"
  "          end\n"
  "        end\n"
  "      end\n"
  "      break\n"
  "    end\n"
  "    t = nxt\n"
  "  end\n"
  "  local lists = {}\n"
  "  for s = 0, P - 1 do\n"
  "    local used, slot, bdone, sgdone = {}, {}, {}, {}\n"
  "    for _, ins in ipairs(out[s]) do\n"
  "      if ins.op ~= 'LOAD' then\n"
  "        local k = ins.chunk * P + s\n"
  "        local u = ins.chunk * M + ins.mb\n"
  "        if ins.op == 'RECV_ACT' or (ins.op == 'FWD' and k == 0) then\n"
  "          local b = 0\n"
  "          while used[b] do b = b + 1 end\n"
  "          used[b], slot[u] = true, b\n"
  "        end\n"
  "        ins.buf = slot[u]\n"
  "        if ins.op == 'BWD' or ins.op == 'BWD_WEIGHT' then bdone[u] = true end\n"
  "        if ins.op == 'SEND_GRAD' then sgdone[u] = true end\n"
  "        if slot[u] ~= nil and bdone[u] and (k == 0 or sgdone[u]) then\n"
  "          used[slot[u]], slot[u] = nil, nil\n"
  "        end\n"
  "      end\n"
  "    end\n"
  "    local o = out[s]\n"
  "    o[#o + 1] = REDUCE_GRADS()\n"
  "    o[#o + 1] = STEP()\n"
  "    lists[s] = o\n"
  "  end\n"
  "  return lists\n"
  "end\n"
  "local cache = {}\n"
  "function pipeline.with_comms(stages, micro_batches, chunks, stage_id, compute, times)\n"
  "  local key = tostring(compute) .. ':' .. stages .. ':' .. micro_batches .. ':' .. chunks\n"
  "  for _, k in ipairs({'FWD', 'BWD', 'BWD_INPUT', 'BWD_WEIGHT'}) do\n"
  "    key = key .. ':' .. tostring(times and times[k])\n"
  "  end\n"
  "  local lists = cache[key]\n"
  "  if not lists then\n"
  "    lists = build(stages, micro_batches, chunks, compute, times)\n"
  "    cache[key] = lists\n"
  "  end\n"
  "  return lists[stage_id]\n"
  "end\n";

#define SCHED_FN_KEY "zp.schedule.fn"

typedef struct {
  int nret;
  int type;
} pick_ctx;

/* Stack: the chunk's return values (light userdata ctx first). Stores the schedule function
 * (first return value when it is a function, else global `schedule`) in the registry. */
static int pick_body(lua_State* L) {
  pick_ctx* c = (pick_ctx*)lua_touserdata(L, 1);
  if (lua_gettop(L) >= 2 && lua_type(L, 2) == LUA_TFUNCTION) {
    lua_pushvalue(L, 2);
  } else {
    lua_getglobal(L, "schedule");
  }
  c->type = lua_type(L, -1);
  if (c->type == LUA_TFUNCTION) lua_setfield(L, LUA_REGISTRYINDEX, SCHED_FN_KEY);
  lua_settop(L, 0);
  return 0;
}

typedef struct {
  int P, M, V, stage;
  const char* chunk;
  zp_sched_instr* out;
  int n;
  int bad;
  char msg[1024];
} stage_ctx;

static int get_int_field(lua_State* L, int t, const char* key, int* out, int* present,
                         stage_ctx* c, int idx, const char* opname) {
  lua_pushstring(L, key);
  int ty = lua_rawget(L, t);
  *present = ty != LUA_TNIL;
  if (!*present) {
    lua_pop(L, 1);
    return 0;
  }
  int ok = 0;
  lua_Integer v = 0;
  if (ty == LUA_TNUMBER) v = lua_tointegerx(L, -1, &ok);
  if (!ok || v < -1000000000LL || v > 1000000000LL) {
    if (ty == LUA_TNUMBER)
      snprintf(c->msg, sizeof c->msg, "%s: stage %d instruction #%d (%s): field %s = %s is not an integer",
               c->chunk, c->stage, idx, opname, key, lua_tostring(L, -1));
    else
      snprintf(c->msg, sizeof c->msg, "%s: stage %d instruction #%d (%s): field %s must be an integer, got %s",
               c->chunk, c->stage, idx, opname, key, lua_typename(L, ty));
    lua_pop(L, 1);
    return -1;
  }
  *out = (int)v;
  lua_pop(L, 1);
  return 0;
}

/* Calls the stored schedule function for one stage and converts its list (protected). */
static int stage_body(lua_State* L) {
  stage_ctx* c = (stage_ctx*)lua_touserdata(L, 1);
  lua_settop(L, 0);
  luaL_checkstack(L, 12, "schedule stack");
  lua_getfield(L, LUA_REGISTRYINDEX, SCHED_FN_KEY);
  lua_pushinteger(L, c->P);
  lua_pushinteger(L, c->M);
  lua_pushinteger(L, c->stage);
  lua_pushinteger(L, c->V);
  lua_call(L, 4, 1);
  int ty = lua_type(L, 1);
  if (ty != LUA_TTABLE) {
    snprintf(c->msg, sizeof c->msg,
             "%s: schedule(stages=%d, micro_batches=%d, stage_id=%d, chunks=%d) returned %s; expected a list of instructions",
             c->chunk, c->P, c->M, c->stage, c->V, lua_typename(L, ty));
    c->bad = 1;
    return 0;
  }
  lua_Unsigned len = lua_rawlen(L, 1);
  /* count all keys: a list has exactly 1..len */
  lua_Unsigned keys = 0;
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    keys++;
    lua_pop(L, 1);
  }
  if (keys != len) {
    snprintf(c->msg, sizeof c->msg,
             "%s: stage %d: the returned table is not a list (%llu keys, length %llu: holes or non-integer keys)",
             c->chunk, c->stage, (unsigned long long)keys, (unsigned long long)len);
    c->bad = 1;
    return 0;
  }
  if ((long long)len > max_list_len(c->M, c->V)) {
    snprintf(c->msg, sizeof c->msg,
             "%s: stage %d: %llu instructions; a valid list for %d micro-batches x %d chunks has at most %lld",
             c->chunk, c->stage, (unsigned long long)len, c->M, c->V, max_list_len(c->M, c->V));
    c->bad = 1;
    return 0;
  }
  c->out = malloc((size_t)(len ? len : 1) * sizeof(zp_sched_instr));
  if (!c->out) {
    snprintf(c->msg, sizeof c->msg, "out of memory");
    c->bad = 1;
    return 0;
  }
  for (lua_Unsigned i = 1; i <= len; i++) {
    int idx = (int)i;
    int et = lua_rawgeti(L, 1, (lua_Integer)i);
    if (et != LUA_TTABLE) {
      snprintf(c->msg, sizeof c->msg, "%s: stage %d instruction #%d is a %s, expected a table like {op = \"FWD\", mb = 0}",
               c->chunk, c->stage, idx, lua_typename(L, et));
      c->bad = 1;
      return 0;
    }
    int t = lua_gettop(L);
    /* unknown fields */
    lua_pushnil(L);
    while (lua_next(L, t)) {
      lua_pop(L, 1);
      const char* k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
      if (!k || (strcmp(k, "op") && strcmp(k, "mb") && strcmp(k, "chunk") && strcmp(k, "buf"))) {
        if (k)
          snprintf(c->msg, sizeof c->msg, "%s: stage %d instruction #%d: unknown field '%s' (fields: op, mb, chunk, buf)",
                   c->chunk, c->stage, idx, k);
        else
          snprintf(c->msg, sizeof c->msg, "%s: stage %d instruction #%d: a %s key (fields: op, mb, chunk, buf)",
                   c->chunk, c->stage, idx, luaL_typename(L, -1));
        c->bad = 1;
        return 0;
      }
    }
    lua_pushstring(L, "op");
    int ot = lua_rawget(L, t);
    const char* opname = ot == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    int op = zp_sched_op_parse(opname);
    if (op < 0) {
      if (opname)
        snprintf(c->msg, sizeof c->msg,
                 "%s: stage %d instruction #%d: unknown op \"%.64s\" (ops: LOAD FWD BWD BWD_INPUT BWD_WEIGHT SEND_ACT "
                 "RECV_ACT SEND_GRAD RECV_GRAD REDUCE_GRADS STEP)",
                 c->chunk, c->stage, idx, opname);
      else
        snprintf(c->msg, sizeof c->msg, "%s: stage %d instruction #%d: field op must be a string, got %s",
                 c->chunk, c->stage, idx, lua_typename(L, ot));
      c->bad = 1;
      return 0;
    }
    lua_pop(L, 1);
    const char* name = op_names[op];
    zp_sched_instr in = {op, -1, -1, -1, -1, -1, -1};
    int pm, pc, pb;
    if (get_int_field(L, t, "mb", &in.mb, &pm, c, idx, name) || get_int_field(L, t, "chunk", &in.chunk, &pc, c, idx, name) ||
        get_int_field(L, t, "buf", &in.buf, &pb, c, idx, name)) {
      c->bad = 1;
      return 0;
    }
    if (op_uses_unit(op) || op == ZP_SOP_LOAD) {
      if (!pm) {
        snprintf(c->msg, sizeof c->msg, "%s: stage %d instruction #%d (%s): field mb is missing", c->chunk, c->stage,
                 idx, name);
        c->bad = 1;
        return 0;
      }
    }
    if (op_uses_unit(op)) {
      if (!pc) in.chunk = 0;
      if (!pb && in.chunk >= 0 && in.chunk < c->V && in.mb >= 0 && in.mb < c->M) in.buf = in.chunk * c->M + in.mb;
    }
    char where[1200];
    snprintf(where, sizeof where, "%s: stage %d instruction #%d", c->chunk, c->stage, idx);
    if (check_instr(c->P, c->M, c->V, c->stage, &in, where, c->msg, sizeof c->msg)) {
      c->bad = 1;
      return 0;
    }
    c->out[c->n++] = in;
    lua_settop(L, 1);
  }
  lua_settop(L, 0);
  return 0;
}

static int load_common(zp_lua* Z, int from_file, const char* src, const char* chunkname, int P,
                       int M, int V, zp_schedule** out, char* err, size_t errlen) {
  char e[4096];
  lua_State* L = zp_lua_state(Z);
  int rc = from_file ? zp_lua_load_file(Z, src, e, sizeof e)
                     : zp_lua_load_string(Z, src, strlen(src), chunkname, e, sizeof e);
  if (rc) {
    seterr(err, errlen, "%s", e);
    return ZP_E_INVALID;
  }
  /* chunk is on the stack: insert the pick body below it, run it, pass its results */
  if (!lua_checkstack(L, 4)) {
    seterr(err, errlen, "Lua stack overflow");
    return ZP_E_INTERNAL;
  }
  int base = lua_gettop(L); /* the chunk */
  if (zp_lua_pcall(Z, 0, LUA_MULTRET, e, sizeof e)) {
    seterr(err, errlen, "%s", e);
    return ZP_E_INVALID;
  }
  int nres = lua_gettop(L) - (base - 1);
  pick_ctx pk = {nres, LUA_TNIL};
  if (!lua_checkstack(L, 3)) {
    seterr(err, errlen, "Lua stack overflow");
    return ZP_E_INTERNAL;
  }
  lua_pushcfunction(L, pick_body);
  lua_insert(L, base);
  lua_pushlightuserdata(L, &pk);
  lua_insert(L, base + 1);
  if (zp_lua_pcall(Z, 1 + nres, 0, e, sizeof e)) {
    seterr(err, errlen, "%s", e);
    return ZP_E_INVALID;
  }
  if (pk.type != LUA_TFUNCTION) {
    seterr(err, errlen,
           "%s: neither returns a function nor defines a global function schedule(stages, micro_batches, stage_id, chunks)",
           chunkname);
    return ZP_E_INVALID;
  }
  zp_schedule* s = sched_alloc(P, M, V);
  if (!s) {
    seterr(err, errlen, "out of memory");
    return ZP_E_NOMEM;
  }
  for (int st = 0; st < P; st++) {
    stage_ctx* c = calloc(1, sizeof *c);
    if (!c) {
      zp_schedule_free(s);
      seterr(err, errlen, "out of memory");
      return ZP_E_NOMEM;
    }
    c->P = P;
    c->M = M;
    c->V = V;
    c->stage = st;
    c->chunk = chunkname;
    lua_pushcfunction(L, stage_body);
    lua_pushlightuserdata(L, c);
    if (zp_lua_pcall(Z, 1, 0, e, sizeof e)) {
      seterr(err, errlen, "%s: schedule(stages=%d, micro_batches=%d, stage_id=%d, chunks=%d) failed: %s", chunkname, P,
             M, st, V, e);
      free(c->out);
      free(c);
      zp_schedule_free(s);
      return ZP_E_INVALID;
    }
    if (c->bad) {
      seterr(err, errlen, "%s", c->msg);
      free(c->out);
      free(c);
      zp_schedule_free(s);
      return ZP_E_INVALID;
    }
    s->list[st] = c->out;
    s->n[st] = c->n;
    free(c);
  }
  finish_sched(s);
  *out = s;
  return ZP_OK;
}

static int load_any(int from_file, const char* src, const char* chunkname, int P, int M, int V,
                    zp_schedule** out, char* err, size_t errlen) {
  if (!out || !src) {
    seterr(err, errlen, "zp_schedule_load: invalid arguments");
    return ZP_E_INVALID;
  }
  *out = NULL;
  int rc = check_shape(P, M, V, err, errlen);
  if (rc) return rc;
  zp_lua_limits lim = {(size_t)256 << 20, 0, 120.0};
  char e[1024];
  zp_lua* Z = zp_lua_new(&lim, e, sizeof e);
  if (!Z) {
    seterr(err, errlen, "Lua: %s", e);
    return ZP_E_INTERNAL;
  }
  if (zp_lua_run_string(Z, prelude, "(schedule prelude)", e, sizeof e)) {
    seterr(err, errlen, "internal: schedule prelude failed: %s", e);
    zp_lua_free(Z);
    return ZP_E_INTERNAL;
  }
  rc = load_common(Z, from_file, src, chunkname, P, M, V, out, err, errlen);
  zp_lua_free(Z);
  return rc;
}

int zp_schedule_load(const char* path, int P, int M, int V, zp_schedule** out, char* err,
                     size_t errlen) {
  return load_any(1, path, path ? path : "(null)", P, M, V, out, err, errlen);
}

int zp_schedule_load_string(const char* code, const char* chunkname, int P, int M, int V,
                            zp_schedule** out, char* err, size_t errlen) {
  return load_any(0, code, chunkname ? chunkname : "(schedule)", P, M, V, out, err, errlen);
}

int zp_schedule_from_config(const zp_config* c, zp_schedule** out, char* err, size_t errlen) {
  if (!c || !out) {
    seterr(err, errlen, "zp_schedule_from_config: invalid arguments");
    return ZP_E_INVALID;
  }
  *out = NULL;
  const char* name = zp_cfg_str(c, "pipeline.schedule");
  const char* origin = zp_cfg_get(c, "pipeline.schedule")->origin;
  char path[1024];
  if (zp_find_script(c, "schedules", name, path, sizeof path)) {
    seterr(err, errlen, "%s: pipeline.schedule = \"%s\": no such schedule (shipped: gpipe, 1f1b, interleaved_1f1b, zb_h1; "
           "or a .lua path relative to the config file)", origin, name);
    return ZP_E_INVALID;
  }
  int P = (int)zp_cfg_int(c, "parallel.pp"), M = (int)zp_cfg_int(c, "pipeline.micro_batches");
  int V = (int)zp_cfg_int(c, "pipeline.chunks");
  char e[4096];
  zp_schedule* s = NULL;
  int rc = zp_schedule_load(path, P, M, V, &s, e, sizeof e);
  if (rc == ZP_OK) rc = zp_schedule_validate(s, e, sizeof e);
  if (rc) {
    seterr(err, errlen, "%s: pipeline.schedule = \"%s\" (pp %d, micro_batches %d, chunks %d) is rejected: %s", origin, name,
           P, M, V, e);
    zp_schedule_free(s);
    return rc;
  }
  *out = s;
  return ZP_OK;
}

/* ---------------------------------------------------------------- formatting */

void zp_sched_instr_describe(const zp_schedule* s, const zp_sched_instr* in, char* buf, size_t n) {
  const char* name = zp_sched_op_name(in->op);
  if (!name) {
    snprintf(buf, n, "op %d", in->op);
    return;
  }
  if (in->op == ZP_SOP_REDUCE_GRADS || in->op == ZP_SOP_STEP) {
    snprintf(buf, n, "%s", name);
  } else if (in->op == ZP_SOP_LOAD) {
    snprintf(buf, n, "LOAD mb=%d", in->mb);
  } else {
    char ch[32] = "", peer[48] = "";
    if (s && s->V > 1) snprintf(ch, sizeof ch, " chunk=%d", in->chunk);
    if (in->peer >= 0) {
      int to = in->op == ZP_SOP_SEND_ACT || in->op == ZP_SOP_SEND_GRAD;
      if (s && s->V > 1)
        snprintf(peer, sizeof peer, " %s stage %d chunk %d", to ? "to" : "from", in->peer, in->peer_chunk);
      else
        snprintf(peer, sizeof peer, " %s stage %d", to ? "to" : "from", in->peer);
    }
    snprintf(buf, n, "%s mb=%d%s buf=%d%s", name, in->mb, ch, in->buf, peer);
  }
}

void zp_sched_instr_token(const zp_schedule* s, const zp_sched_instr* in, char* buf, size_t n) {
  static const char* const tok[ZP_SOP_COUNT] = {"L", "F", "B", "I", "W", "sa", "ra", "sg", "rg", "R", "S"};
  if (in->op < 0 || in->op >= ZP_SOP_COUNT) {
    snprintf(buf, n, "?");
    return;
  }
  if (in->op == ZP_SOP_REDUCE_GRADS || in->op == ZP_SOP_STEP) snprintf(buf, n, "%s", tok[in->op]);
  else if (in->op == ZP_SOP_LOAD) snprintf(buf, n, "L%d", in->mb);
  else if (s && s->V > 1) snprintf(buf, n, "%s%d.%d[%d]", tok[in->op], in->mb, in->chunk, in->buf);
  else snprintf(buf, n, "%s%d[%d]", tok[in->op], in->mb, in->buf);
}

void zp_schedule_print(const zp_schedule* s, FILE* f, int width) {
  if (width <= 0) width = 100;
  for (int st = 0; st < s->P; st++) {
    char head[64];
    int hl = snprintf(head, sizeof head, "stage %d (%d, %d buffers):", st, s->n[st], s->nbuf[st]);
    fputs(head, f);
    int col = hl;
    for (int i = 0; i < s->n[st]; i++) {
      char t[48];
      zp_sched_instr_token(s, &s->list[st][i], t, sizeof t);
      int tl = (int)strlen(t) + 1;
      if (col + tl > width) {
        fputs("\n   ", f);
        col = 3;
      }
      fprintf(f, " %s", t);
      col += tl;
    }
    fputc('\n', f);
  }
}

/* ---------------------------------------------------------------- the engine */

enum { U_F, U_BI, U_BW, U_FULL, U_SA, U_RA, U_SG, U_RG, U_NF };

typedef struct {
  const zp_schedule* s;
  const zp_op_times* t;
  int nt;
  zp_sched_sim* sim;
  int P, M, V, K, U;
  int* pc;
  double* clock;
  double* busy;
  int* unit;      /* [P][U][U_NF]: 1-based instruction numbers, 0 = not yet */
  int* slot;      /* [P][U]: unit held by each buffer, -1 */
  int* loaded;    /* [P][M]: instruction number of LOAD */
  int* reduce_at; /* [P] */
  int* step_at;
  int* live;
  int* peak;
  int* queue;
  char* inq;
  int qhead, qlen;
  char* err;
  size_t errlen;
} engine;

#define UF(e, st, u, f) ((e)->unit[(((size_t)(st) * (e)->U) + (u)) * U_NF + (f)])
#define SLOT(e, st, b) ((e)->slot[(size_t)(st) * (e)->U + (b)])

static const zp_op_times* times_for(const engine* e, int vstage) {
  if (e->nt == 1 || vstage < 0) return &e->t[0];
  return &e->t[vstage];
}

static double op_dur(const engine* e, const zp_sched_instr* in) {
  if (!e->t) return 0;
  const zp_op_times* t = times_for(e, in->vstage);
  switch (in->op) {
    case ZP_SOP_LOAD: return t->load;
    case ZP_SOP_FWD: return t->fwd;
    case ZP_SOP_BWD: return t->bwd > 0 ? t->bwd : t->bwd_input + t->bwd_weight;
    case ZP_SOP_BWD_INPUT: return t->bwd_input;
    case ZP_SOP_BWD_WEIGHT: return t->bwd_weight;
    case ZP_SOP_REDUCE_GRADS: return t->reduce;
    case ZP_SOP_STEP: return t->step;
    default: return t->comm;
  }
}

static int is_compute(int op) {
  return op == ZP_SOP_FWD || op == ZP_SOP_BWD || op == ZP_SOP_BWD_INPUT || op == ZP_SOP_BWD_WEIGHT;
}

static void push(engine* e, int st) {
  if (e->inq[st]) return;
  e->inq[st] = 1;
  e->queue[(e->qhead + e->qlen) % e->P] = st;
  e->qlen++;
}

static int fail(engine* e, int st, int i, const char* fmt, ...) __attribute__((format(printf, 4, 5)));
static int fail(engine* e, int st, int i, const char* fmt, ...) {
  char d[160], r[1024];
  zp_sched_instr_describe(e->s, &e->s->list[st][i], d, sizeof d);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r, sizeof r, fmt, ap);
  va_end(ap);
  seterr(e->err, e->errlen, "stage %d instruction #%d (%s): %s", st, i + 1, d, r);
  return ZP_E_INVALID;
}

static void unit_name(const engine* e, int u, char* b, size_t n) {
  int mb = u % e->M, c = u / e->M;
  if (e->V > 1) snprintf(b, n, "micro-batch %d chunk %d", mb, c);
  else snprintf(b, n, "micro-batch %d", mb);
}

/* The unit's slot is released once its backward is complete and (above virtual stage 0)
 * its input gradient has been sent. */
static void maybe_release(engine* e, int st, int u, int k, int b) {
  if (UF(e, st, u, U_BI) && UF(e, st, u, U_BW) && (k == 0 || UF(e, st, u, U_SG)) && SLOT(e, st, b) == u) {
    SLOT(e, st, b) = -1;
    e->live[st]--;
  }
}

static int bind_slot(engine* e, int st, int i, int u, int b) {
  int h = SLOT(e, st, b);
  if (h >= 0) {
    char un[64];
    unit_name(e, h, un, sizeof un);
    return fail(e, st, i, "buffer %d is still in use by %s (a buffer is free again after that unit's backward is "
                "complete and its input gradient is sent)", b, un);
  }
  SLOT(e, st, b) = u;
  if (++e->live[st] > e->peak[st]) e->peak[st] = e->live[st];
  return ZP_OK;
}

static int need_slot(engine* e, int st, int i, int u, int b, const char* what) {
  int h = SLOT(e, st, b);
  if (h == u) return ZP_OK;
  char un[64], hn[64];
  unit_name(e, u, un, sizeof un);
  if (h < 0)
    return fail(e, st, i, "buffer used before it is filled: buffer %d holds nothing (%s)", b, what);
  unit_name(e, h, hn, sizeof hn);
  return fail(e, st, i, "buffer %d holds %s, not %s", b, hn, un);
}

/* Checks (and, when apply, records) one instruction that is not a send/receive. */
static int exec_local(engine* e, int st, int i) {
  const zp_sched_instr* in = &e->s->list[st][i];
  int n = e->s->n[st];
  char un[64];
  if (in->op == ZP_SOP_LOAD) {
    int* l = &e->loaded[(size_t)st * e->M + in->mb];
    if (*l) return fail(e, st, i, "micro-batch %d was already loaded at instruction #%d", in->mb, *l);
    *l = i + 1;
    return ZP_OK;
  }
  if (in->op == ZP_SOP_REDUCE_GRADS) {
    if (e->reduce_at[st]) return fail(e, st, i, "a second REDUCE_GRADS (the first is instruction #%d)", e->reduce_at[st]);
    for (int c = 0; c < e->V; c++)
      for (int mb = 0; mb < e->M; mb++) {
        int u = c * e->M + mb;
        unit_name(e, u, un, sizeof un);
        if (!UF(e, st, u, U_F)) return fail(e, st, i, "%s has no FWD before REDUCE_GRADS (every unit needs exactly one FWD)", un);
        if (!UF(e, st, u, U_BI)) return fail(e, st, i, "%s has no backward before REDUCE_GRADS (missing BWD, or BWD_INPUT + BWD_WEIGHT)", un);
        if (!UF(e, st, u, U_BW))
          return fail(e, st, i, "%s has no BWD_WEIGHT before REDUCE_GRADS (its BWD_INPUT is instruction #%d)", un, UF(e, st, u, U_BI));
      }
    e->reduce_at[st] = i + 1;
    return ZP_OK;
  }
  if (in->op == ZP_SOP_STEP) {
    if (e->step_at[st]) return fail(e, st, i, "a second STEP (the first is instruction #%d)", e->step_at[st]);
    if (!e->reduce_at[st]) return fail(e, st, i, "STEP before REDUCE_GRADS");
    if (i != n - 1) return fail(e, st, i, "STEP must be the last instruction (%d follow it)", n - 1 - i);
    e->step_at[st] = i + 1;
    return ZP_OK;
  }
  if (e->reduce_at[st]) return fail(e, st, i, "%s after REDUCE_GRADS (instruction #%d): all backward work comes before it",
                                    zp_sched_op_name(in->op), e->reduce_at[st]);
  int u = in->chunk * e->M + in->mb, k = in->vstage, b = in->buf;
  unit_name(e, u, un, sizeof un);
  switch (in->op) {
    case ZP_SOP_FWD: {
      if (UF(e, st, u, U_F)) return fail(e, st, i, "a second FWD of %s (the first is instruction #%d)", un, UF(e, st, u, U_F));
      if ((k == 0 || k == e->K - 1) && !e->loaded[(size_t)st * e->M + in->mb])
        return fail(e, st, i, "FWD on the %s virtual stage before LOAD of micro-batch %d", k == 0 ? "first" : "last", in->mb);
      if (k == 0) {
        int rc = bind_slot(e, st, i, u, b);
        if (rc) return rc;
      } else {
        int rc = need_slot(e, st, i, u, b, "RECV_ACT into it first");
        if (rc) return rc;
        if (!UF(e, st, u, U_RA)) return fail(e, st, i, "buffer used before it is filled: no RECV_ACT of %s yet", un);
      }
      UF(e, st, u, U_F) = i + 1;
      return ZP_OK;
    }
    case ZP_SOP_BWD:
    case ZP_SOP_BWD_INPUT: {
      if (UF(e, st, u, U_BI))
        return fail(e, st, i, "a second backward of %s (the first is instruction #%d)", un, UF(e, st, u, U_BI));
      if (!UF(e, st, u, U_F)) return fail(e, st, i, "backward of %s before its FWD", un);
      int rc = need_slot(e, st, i, u, b, "its FWD binds it");
      if (rc) return rc;
      if (k < e->K - 1 && !UF(e, st, u, U_RG))
        return fail(e, st, i, "buffer used before it is filled: the output gradient of %s has not been received (RECV_GRAD first)", un);
      UF(e, st, u, U_BI) = i + 1;
      if (in->op == ZP_SOP_BWD) {
        UF(e, st, u, U_BW) = i + 1;
        UF(e, st, u, U_FULL) = 1;
      }
      maybe_release(e, st, u, k, b);
      return ZP_OK;
    }
    case ZP_SOP_BWD_WEIGHT: {
      if (UF(e, st, u, U_FULL)) return fail(e, st, i, "BWD_WEIGHT after a full BWD of %s (instruction #%d already computed the weight gradient)", un, UF(e, st, u, U_BI));
      if (UF(e, st, u, U_BW)) return fail(e, st, i, "a second BWD_WEIGHT of %s (the first is instruction #%d)", un, UF(e, st, u, U_BW));
      if (!UF(e, st, u, U_BI)) return fail(e, st, i, "BWD_WEIGHT of %s before its BWD_INPUT", un);
      int rc = need_slot(e, st, i, u, b, "its FWD binds it");
      if (rc) return rc;
      UF(e, st, u, U_BW) = i + 1;
      maybe_release(e, st, u, k, b);
      return ZP_OK;
    }
    default: return fail(e, st, i, "internal: not a local instruction");
  }
}

/* Checks a send/receive when its stage reaches it (no state change). */
static int precheck_comm(engine* e, int st, int i) {
  const zp_sched_instr* in = &e->s->list[st][i];
  if (e->reduce_at[st]) return fail(e, st, i, "%s after REDUCE_GRADS (instruction #%d): all pipeline traffic comes before it",
                                    zp_sched_op_name(in->op), e->reduce_at[st]);
  int u = in->chunk * e->M + in->mb, b = in->buf;
  char un[64];
  unit_name(e, u, un, sizeof un);
  switch (in->op) {
    case ZP_SOP_SEND_ACT:
      if (UF(e, st, u, U_SA)) return fail(e, st, i, "a second SEND_ACT of %s (the first is instruction #%d)", un, UF(e, st, u, U_SA));
      if (!UF(e, st, u, U_F)) return fail(e, st, i, "SEND_ACT of %s before its FWD", un);
      return need_slot(e, st, i, u, b, "its FWD binds it");
    case ZP_SOP_SEND_GRAD:
      if (UF(e, st, u, U_SG)) return fail(e, st, i, "a second SEND_GRAD of %s (the first is instruction #%d)", un, UF(e, st, u, U_SG));
      if (!UF(e, st, u, U_BI)) return fail(e, st, i, "SEND_GRAD of %s before its backward (BWD or BWD_INPUT)", un);
      return need_slot(e, st, i, u, b, "its FWD binds it");
    case ZP_SOP_RECV_ACT: {
      if (UF(e, st, u, U_RA)) return fail(e, st, i, "a second RECV_ACT of %s (the first is instruction #%d)", un, UF(e, st, u, U_RA));
      int h = SLOT(e, st, b);
      if (h >= 0) {
        char hn[64];
        unit_name(e, h, hn, sizeof hn);
        return fail(e, st, i, "buffer %d is still in use by %s (a buffer is free again after that unit's backward is "
                    "complete and its input gradient is sent)", b, hn);
      }
      return ZP_OK;
    }
    case ZP_SOP_RECV_GRAD:
      if (UF(e, st, u, U_RG)) return fail(e, st, i, "a second RECV_GRAD of %s (the first is instruction #%d)", un, UF(e, st, u, U_RG));
      if (!UF(e, st, u, U_F)) return fail(e, st, i, "RECV_GRAD of %s before its FWD", un);
      return need_slot(e, st, i, u, b, "its FWD binds it");
    default: return fail(e, st, i, "internal: not a send/receive");
  }
}

static void apply_comm(engine* e, int st, int i) {
  const zp_sched_instr* in = &e->s->list[st][i];
  int u = in->chunk * e->M + in->mb, b = in->buf;
  switch (in->op) {
    case ZP_SOP_SEND_ACT: UF(e, st, u, U_SA) = i + 1; break;
    case ZP_SOP_SEND_GRAD:
      UF(e, st, u, U_SG) = i + 1;
      maybe_release(e, st, u, in->vstage, b);
      break;
    case ZP_SOP_RECV_ACT:
      SLOT(e, st, b) = u;
      if (++e->live[st] > e->peak[st]) e->peak[st] = e->live[st];
      UF(e, st, u, U_RA) = i + 1;
      break;
    case ZP_SOP_RECV_GRAD: UF(e, st, u, U_RG) = i + 1; break;
    default: break;
  }
}

static void record(engine* e, int st, int i, double t0, double t1) {
  if (e->sim) {
    e->sim->start[st][i] = t0;
    e->sim->end[st][i] = t1;
  }
}

static int is_send(int op) { return op == ZP_SOP_SEND_ACT || op == ZP_SOP_SEND_GRAD; }

/* Stage st is at a send/receive: pair it with the peer when the peer is at the counterpart. */
static int try_pair(engine* e, int st, int* paired) {
  *paired = 0;
  int i = e->pc[st];
  const zp_sched_instr* a = &e->s->list[st][i];
  int d = a->peer;
  if (e->pc[d] >= e->s->n[d]) return ZP_OK;
  int j = e->pc[d];
  const zp_sched_instr* b = &e->s->list[d][j];
  if (!zp_sched_op_is_comm(b->op) || b->peer != st || is_send(a->op) == is_send(b->op)) return ZP_OK;
  int rc = precheck_comm(e, d, j);
  if (rc) return rc;
  const zp_sched_instr* snd = is_send(a->op) ? a : b;
  const zp_sched_instr* rcv = is_send(a->op) ? b : a;
  int ok = ((snd->op == ZP_SOP_SEND_ACT && rcv->op == ZP_SOP_RECV_ACT) ||
            (snd->op == ZP_SOP_SEND_GRAD && rcv->op == ZP_SOP_RECV_GRAD)) &&
           snd->mb == rcv->mb && snd->peer_chunk == rcv->chunk && rcv->peer_chunk == snd->chunk;
  if (!ok) {
    /* sender first, whichever side arrived last */
    int ss = is_send(a->op) ? st : d, si = is_send(a->op) ? i : j;
    int rs = is_send(a->op) ? d : st, ri = is_send(a->op) ? j : i;
    char da[160], db[160];
    zp_sched_instr_describe(e->s, snd, da, sizeof da);
    zp_sched_instr_describe(e->s, rcv, db, sizeof db);
    seterr(e->err, e->errlen,
           "stage %d instruction #%d (%s) meets stage %d instruction #%d (%s): transfers between two stages pair in "
           "the order they are posted, so these two would pair although they do not match",
           ss, si + 1, da, rs, ri + 1, db);
    return ZP_E_INVALID;
  }
  double t0 = e->clock[st] > e->clock[d] ? e->clock[st] : e->clock[d];
  double t1 = t0 + op_dur(e, snd);
  record(e, st, i, t0, t1);
  record(e, d, j, t0, t1);
  apply_comm(e, st, i);
  apply_comm(e, d, j);
  e->clock[st] = e->clock[d] = t1;
  e->pc[st]++;
  e->pc[d]++;
  *paired = 1;
  return ZP_OK;
}

static int end_of_list(engine* e, int st) {
  int n = e->s->n[st];
  if (!e->reduce_at[st]) {
    seterr(e->err, e->errlen, "stage %d: the list ends (after instruction #%d) without REDUCE_GRADS", st, n);
    return ZP_E_INVALID;
  }
  if (!e->step_at[st]) {
    seterr(e->err, e->errlen, "stage %d: the list ends (after instruction #%d) without STEP", st, n);
    return ZP_E_INVALID;
  }
  return ZP_OK;
}

static int run_stage(engine* e, int st) {
  for (;;) {
    int i = e->pc[st];
    if (i >= e->s->n[st]) return end_of_list(e, st);
    const zp_sched_instr* in = &e->s->list[st][i];
    if (!zp_sched_op_is_comm(in->op)) {
      int rc = exec_local(e, st, i);
      if (rc) return rc;
      double d = op_dur(e, in);
      record(e, st, i, e->clock[st], e->clock[st] + d);
      e->clock[st] += d;
      if (is_compute(in->op)) e->busy[st] += d;
      e->pc[st]++;
      continue;
    }
    int rc = precheck_comm(e, st, i);
    if (rc) return rc;
    int paired;
    rc = try_pair(e, st, &paired);
    if (rc) return rc;
    if (!paired) return ZP_OK; /* blocked until the peer arrives */
    push(e, in->peer);
  }
}

/* Nobody can move: explain why, starting from the lowest blocked stage. */
static int explain_stall(engine* e) {
  int s0 = -1;
  for (int st = 0; st < e->P; st++)
    if (e->pc[st] < e->s->n[st]) {
      s0 = st;
      break;
    }
  if (s0 < 0) return ZP_OK;
  int* seen = calloc((size_t)e->P, sizeof(int)); /* position in the chain + 1 */
  int* chain = malloc((size_t)e->P * sizeof(int));
  if (!seen || !chain) {
    free(seen);
    free(chain);
    seterr(e->err, e->errlen, "stage %d is blocked (out of memory while explaining)", s0);
    return ZP_E_INVALID;
  }
  int len = 0, st = s0;
  while (!seen[st] && e->pc[st] < e->s->n[st]) {
    seen[st] = ++len;
    chain[len - 1] = st;
    st = e->s->list[st][e->pc[st]].peer;
  }
  char msg[4096];
  size_t o = 0;
  if (e->pc[st] >= e->s->n[st]) {
    int w = chain[len - 1];
    const zp_sched_instr* in = &e->s->list[w][e->pc[w]];
    char d[160];
    zp_sched_instr_describe(e->s, in, d, sizeof d);
    static const int counterpart[ZP_SOP_COUNT] = {[ZP_SOP_SEND_ACT] = ZP_SOP_RECV_ACT, [ZP_SOP_RECV_ACT] = ZP_SOP_SEND_ACT,
                                                  [ZP_SOP_SEND_GRAD] = ZP_SOP_RECV_GRAD, [ZP_SOP_RECV_GRAD] = ZP_SOP_SEND_GRAD};
    seterr(e->err, e->errlen,
           "stage %d instruction #%d (%s): unmatched %s: stage %d finished its %d instructions without the matching %s",
           w, e->pc[w] + 1, d, is_send(in->op) ? "send" : "receive", st, e->s->n[st], zp_sched_op_name(counterpart[in->op]));
  } else {
    o += (size_t)snprintf(msg + o, sizeof msg - o, "deadlock: ");
    for (int c = seen[st] - 1; c < len && o < sizeof msg; c++) {
      int w = chain[c];
      const zp_sched_instr* in = &e->s->list[w][e->pc[w]];
      char d[160];
      zp_sched_instr_describe(e->s, in, d, sizeof d);
      o += (size_t)snprintf(msg + o, sizeof msg - o, "%sstage %d instruction #%d (%s) waits for stage %d",
                            c > seen[st] - 1 ? "; " : "", w, e->pc[w] + 1, d, in->peer);
    }
    if (o < sizeof msg)
      snprintf(msg + o, sizeof msg - o, " (a send completes only when its peer is at the matching receive)");
    seterr(e->err, e->errlen, "%s", msg);
  }
  free(seen);
  free(chain);
  return ZP_E_INVALID;
}

static void engine_free(engine* e) {
  free(e->pc);
  free(e->clock);
  free(e->busy);
  free(e->unit);
  free(e->slot);
  free(e->loaded);
  free(e->reduce_at);
  free(e->step_at);
  free(e->live);
  free(e->peak);
  free(e->queue);
  free(e->inq);
}

static int engine_run(engine* e, const zp_schedule* s, const zp_op_times* t, int nt, zp_sched_sim* sim,
                      char* err, size_t errlen) {
  memset(e, 0, sizeof *e);
  e->s = s;
  e->t = t;
  e->nt = nt;
  e->sim = sim;
  e->P = s->P;
  e->M = s->M;
  e->V = s->V;
  e->K = s->P * s->V;
  e->U = s->M * s->V;
  e->err = err;
  e->errlen = errlen;
  size_t P = (size_t)e->P, PU = P * (size_t)e->U;
  e->pc = calloc(P, sizeof(int));
  e->clock = calloc(P, sizeof(double));
  e->busy = calloc(P, sizeof(double));
  e->unit = calloc(PU * U_NF, sizeof(int));
  e->slot = malloc(PU * sizeof(int));
  e->loaded = calloc(P * (size_t)e->M, sizeof(int));
  e->reduce_at = calloc(P, sizeof(int));
  e->step_at = calloc(P, sizeof(int));
  e->live = calloc(P, sizeof(int));
  e->peak = calloc(P, sizeof(int));
  e->queue = malloc(P * sizeof(int));
  e->inq = calloc(P, 1);
  if (!e->pc || !e->clock || !e->busy || !e->unit || !e->slot || !e->loaded || !e->reduce_at || !e->step_at ||
      !e->live || !e->peak || !e->queue || !e->inq) {
    seterr(err, errlen, "out of memory simulating %d stages x %d units", e->P, e->U);
    return ZP_E_NOMEM;
  }
  for (size_t i = 0; i < PU; i++) e->slot[i] = -1;
  for (int st = 0; st < e->P; st++) push(e, st);
  while (e->qlen) {
    int st = e->queue[e->qhead];
    e->qhead = (e->qhead + 1) % e->P;
    e->qlen--;
    e->inq[st] = 0;
    int rc = run_stage(e, st);
    if (rc) return rc;
  }
  return explain_stall(e);
}

int zp_schedule_validate(zp_schedule* s, char* err, size_t errlen) {
  if (!s) {
    seterr(err, errlen, "zp_schedule_validate: no schedule");
    return ZP_E_INVALID;
  }
  engine e;
  int rc = engine_run(&e, s, NULL, 0, NULL, err, errlen);
  if (rc == ZP_OK)
    for (int st = 0; st < s->P; st++) s->peak[st] = e.peak[st];
  engine_free(&e);
  return rc;
}

void zp_op_times_default(zp_op_times* t) {
  memset(t, 0, sizeof *t);
  t->fwd = 1;
  t->bwd_input = 1;
  t->bwd_weight = 1;
  t->bwd = 2;
}

void zp_sched_sim_free(zp_sched_sim* r) {
  if (!r) return;
  if (r->start)
    for (int i = 0; i < r->stages; i++) free(r->start[i]);
  if (r->end)
    for (int i = 0; i < r->stages; i++) free(r->end[i]);
  free(r->start);
  free(r->end);
  free(r->busy);
  free(r->bubble);
  free(r->n);
  memset(r, 0, sizeof *r);
}

static int times_ok(const zp_op_times* t, int idx, char* err, size_t errlen) {
  const double v[] = {t->fwd, t->bwd, t->bwd_input, t->bwd_weight, t->comm, t->load, t->reduce, t->step};
  static const char* const nm[] = {"fwd", "bwd", "bwd_input", "bwd_weight", "comm", "load", "reduce", "step"};
  for (int i = 0; i < 8; i++)
    if (!isfinite(v[i]) || (v[i] < 0 && i != 1)) {
      seterr(err, errlen, "op times[%d].%s = %g must be a finite number >= 0", idx, nm[i], v[i]);
      return ZP_E_INVALID;
    }
  return ZP_OK;
}

int zp_schedule_simulate(const zp_schedule* s, const zp_op_times* t, int nt, zp_sched_sim* out,
                         char* err, size_t errlen) {
  if (!out) {
    seterr(err, errlen, "zp_schedule_simulate: no result struct");
    return ZP_E_INVALID;
  }
  memset(out, 0, sizeof *out);
  if (!s || !t || (nt != 1 && nt != s->P * s->V)) {
    seterr(err, errlen, "zp_schedule_simulate: need a schedule and 1 or stages x chunks (%d) op times, got %d",
           s ? s->P * s->V : 0, nt);
    return ZP_E_INVALID;
  }
  for (int i = 0; i < nt; i++)
    if (times_ok(&t[i], i, err, errlen)) return ZP_E_INVALID;
  int P = s->P;
  out->stages = P;
  out->busy = calloc((size_t)P, sizeof(double));
  out->bubble = calloc((size_t)P, sizeof(double));
  out->n = calloc((size_t)P, sizeof(int));
  out->start = calloc((size_t)P, sizeof(double*));
  out->end = calloc((size_t)P, sizeof(double*));
  int oom = !out->busy || !out->bubble || !out->n || !out->start || !out->end;
  for (int st = 0; !oom && st < P; st++) {
    out->n[st] = s->n[st];
    out->start[st] = calloc((size_t)(s->n[st] ? s->n[st] : 1), sizeof(double));
    out->end[st] = calloc((size_t)(s->n[st] ? s->n[st] : 1), sizeof(double));
    oom = !out->start[st] || !out->end[st];
  }
  if (oom) {
    seterr(err, errlen, "out of memory");
    return ZP_E_NOMEM;
  }
  engine e;
  int rc = engine_run(&e, s, t, nt, out, err, errlen);
  if (rc == ZP_OK) {
    double mk = 0;
    for (int st = 0; st < P; st++)
      if (e.clock[st] > mk) mk = e.clock[st];
    out->makespan = mk;
    double sum = 0;
    for (int st = 0; st < P; st++) {
      out->busy[st] = e.busy[st];
      out->bubble[st] = mk > 0 ? 1.0 - e.busy[st] / mk : 0.0;
      sum += out->bubble[st];
    }
    out->mean_bubble = sum / P;
  }
  engine_free(&e);
  return rc;
}

double zp_bubble_textbook(int p, int m, int v) {
  if (p < 1 || m < 1 || v < 1) return 0;
  return (double)(p - 1) / ((double)v * m);
}

double zp_bubble_textbook_zb_h1(int p, int m, double tf, double tb, double tw) {
  if (p < 1 || m < 1 || !(tf + tb + tw > 0)) return 0;
  double r = (p - 1) * (tf + tb - tw) / (m * (tf + tb + tw));
  return r > 0 ? r : 0;
}

double zp_bubble_fraction(double r) { return r / (1.0 + r); }
