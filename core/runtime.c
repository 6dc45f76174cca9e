/* runtime.c: opening a run (plan -> allocation -> views -> activations), the micro-batch
 * (forward/backward through the strategy hooks) and the optimizer service. See runtime.h.
 * Invariants of the optimizer overlap (train.overlap_optimizer, ABI 1.7): a group's device
 * AdamW may still run on the backend's side stream after the step returns; nothing reads or
 * writes that group's PARAM/GRAD/MASTER/OPTIM on the compute stream before zp_run_fence(g)
 * (in param_view, which every forward and backward of the group and of a group tied to it
 * calls before touching PARAM) or zp_run_fence_all (state reads and writes,
 * checkpoints, the pipeline's tied-wte send); the gradient the update read is zeroed at the
 * fence, never by the step-start zero_grads.
 * Invariants of train.grad_overwrite (ABI 1.8): "zeroing" a grad_once group's GRAD buffer only
 * marks it stale (its padding was zeroed once and nothing writes padding); the group's first
 * backward of a step then runs with the backend's grad_overwrite on, which writes every
 * gradient of the group; any other first access (a strategy's own GRAD view, zp_run_step)
 * zeroes it for real first (zp_run_grads_materialize). So a stale buffer is never read. */
#include "runtime.h"
#include "op_profile.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cpu.h"
#include "bf16.h"
#include "comm.h"
#include "norm_overlap.h"
#include "trace.h"

extern const zp_strategy_ops zp_replicated_strategy; /* replicated.c */

struct zp_host_ctx {
  zp_run* r;
  char name[64];
};

const char* zp_dtype_name(zp_dtype t) {
  switch (t) {
    case ZP_F32: return "fp32";
    case ZP_F64: return "fp64";
    case ZP_BF16: return "bf16";
    case ZP_I32: return "int32";
    case ZP_U16: return "uint16";
  }
  return "?";
}

static void rerr(zp_run* r, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
static void rerr(zp_run* r, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->err, sizeof r->err, fmt, ap);
  va_end(ap);
}

/* Prefix r->err with pre (truncating the tail). */
static void rprefix(zp_run* r, const char* pre) {
  size_t pl = strlen(pre), n = sizeof r->err;
  if (pl >= n - 1) pl = n - 2;
  size_t el = strnlen(r->err, n - 1);
  if (pl + el > n - 1) el = n - 1 - pl;
  memmove(r->err + pl, r->err, el);
  memcpy(r->err, pre, pl);
  r->err[pl + el] = 0;
}

/* ---------------- host services ---------------- */

static void h_log(zp_host_ctx* c, zp_log_level lvl, const char* fmt, ...) {
  if (lvl == ZP_LOG_DEBUG && !getenv("ZP_DEBUG")) return;
  static const char* lv[] = {"error", "warning", "info", "debug"};
  fprintf(stderr, "zp[%s] %s: ", c->name, lv[lvl]);
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

static void h_set_error(zp_host_ctx* c, const char* fmt, ...) {
  char buf[1536];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  snprintf(c->r->err, sizeof c->r->err, "%s: %s", c->name, buf);
}

static int h_cfg_int(zp_host_ctx* c, const char* path, int64_t* out) {
  if (zp_cfg_is_ext(path)) return zp_cfg_ext_int(c->r->cfg, path, out, c->r->err, sizeof c->r->err); /* plugin options */
  const zc_key* k = zp_cfg_key(path);
  if (!k || k->type != ZC_INT) return ZP_E_INVALID;
  *out = zp_cfg_int(c->r->cfg, path);
  return ZP_OK;
}
static int h_cfg_float(zp_host_ctx* c, const char* path, double* out) {
  if (zp_cfg_is_ext(path)) return zp_cfg_ext_float(c->r->cfg, path, out, c->r->err, sizeof c->r->err);
  const zc_key* k = zp_cfg_key(path);
  if (!k || (k->type != ZC_FLOAT && k->type != ZC_INT)) return ZP_E_INVALID;
  *out = zp_cfg_float(c->r->cfg, path);
  return ZP_OK;
}
static int h_cfg_bool(zp_host_ctx* c, const char* path, int* out) {
  if (zp_cfg_is_ext(path)) return zp_cfg_ext_bool(c->r->cfg, path, out, c->r->err, sizeof c->r->err);
  const zc_key* k = zp_cfg_key(path);
  if (!k || k->type != ZC_BOOL) return ZP_E_INVALID;
  *out = zp_cfg_bool(c->r->cfg, path);
  return ZP_OK;
}
static int h_cfg_string(zp_host_ctx* c, const char* path, const char** out) {
  if (zp_cfg_is_ext(path)) return zp_cfg_ext_string(c->r->cfg, path, out, c->r->err, sizeof c->r->err);
  const zc_key* k = zp_cfg_key(path);
  if (!k || k->type != ZC_STRING) return ZP_E_INVALID;
  *out = zp_cfg_str(c->r->cfg, path);
  return ZP_OK;
}
static int h_alloc(zp_host_ctx* c, zp_category cat, zp_tier tier, size_t bytes, const char* tag, void** out) {
  int rc = zp_ledger_alloc(&c->r->ledger, cat, tier, bytes, tag, out);
  if (rc) snprintf(c->r->err, sizeof c->r->err, "%s", c->r->ledger.last_error);
  return rc;
}
static void h_free(zp_host_ctx* c, zp_category cat, zp_tier tier, void* p, size_t bytes) {
  zp_ledger_free(&c->r->ledger, cat, tier, p, bytes);
}
static int h_group_info(zp_host_ctx* c, int g, zp_group_info* out) {
  if (g < 0 || g >= c->r->layout.n_groups) return ZP_E_INVALID;
  *out = c->r->groups[g].info;
  return ZP_OK;
}
static int h_set_view(zp_host_ctx* c, int g, zp_category cat, void* p) {
  if (g < 0 || g >= c->r->layout.n_groups || (cat != ZP_CAT_PARAM && cat != ZP_CAT_GRAD)) return ZP_E_INVALID;
  c->r->groups[g].view[cat == ZP_CAT_PARAM ? 0 : 1] = p;
  return ZP_OK;
}
static zp_comm* data_comm(zp_run* r) { return r->dcomm ? r->dcomm : r->comm; }
static int comm_fail(zp_run* r, const char* op, int rc) {
  snprintf(r->err, sizeof r->err, "%s failed: %s", op, data_comm(r) ? zp_comm_error(data_comm(r)) : "no communicator");
  return rc;
}
static int h_allreduce(zp_host_ctx* c, void* buf, size_t n, zp_dtype dt, zp_redop op) {
  zp_run* r = c->r;
  if (r->world == 1 || !r->comm || n == 0) return ZP_OK; /* n == 0: a group another pipeline stage holds */
  zp_comm* dc = data_comm(r);
  if (zp_ar_flush(&r->arq, dc, r->err, sizeof r->err)) return ZP_E_COMM; /* started ones first: one order */
  double t0 = zp_now_us();
  int rc = dc->ops->allreduce(dc, buf, n, dt, op);
  zp_trace_span(ZP_TR_COMM, "allreduce", (int)n, t0);
  return rc ? comm_fail(r, "allreduce", rc) : ZP_OK;
}
static int h_reduce_scatter(zp_host_ctx* c, void* recv, const void* send, size_t n, zp_dtype dt, zp_redop op);
static int h_allgather(zp_host_ctx* c, void* recv, const void* send, size_t n, zp_dtype dt);
/* 1.9: a collective started now, finished at its wait (comm_async.c); one rank or count 0:
 * nothing to start (the synchronous service does what there is), ticket 0 */
static int no_ticket(zp_host_ctx* c, const char* what, uint64_t* ticket) {
  if (ticket) {
    *ticket = 0;
    return ZP_OK;
  }
  h_set_error(c, "%s: ticket is NULL", what);
  return ZP_E_INVALID;
}
static int h_allreduce_start(zp_host_ctx* c, void* buf, size_t n, zp_dtype dt, zp_redop op, uint64_t* ticket) {
  zp_run* r = c->r;
  if (no_ticket(c, "allreduce_start", ticket)) return ZP_E_INVALID;
  if (r->world == 1 || !r->comm || n == 0) return ZP_OK;
  double t0 = zp_now_us();
  int rc = zp_ar_start(&r->arq, data_comm(r), buf, n, dt, op, ticket, r->err, sizeof r->err);
  zp_trace_span(ZP_TR_COMM, "allreduce_start", (int)n, t0);
  return rc;
}
static int h_reduce_scatter_start(zp_host_ctx* c, void* recv, const void* send, size_t n, zp_dtype dt, zp_redop op,
                                  uint64_t* ticket) {
  zp_run* r = c->r;
  if (no_ticket(c, "reduce_scatter_start", ticket)) return ZP_E_INVALID;
  if (n == 0 || r->world == 1 || !r->comm) return h_reduce_scatter(c, recv, send, n, dt, op); /* nothing to start */
  double t0 = zp_now_us();
  int rc = zp_rs_start(&r->arq, data_comm(r), recv, send, n, dt, op, ticket, r->err, sizeof r->err);
  zp_trace_span(ZP_TR_COMM, "reduce_scatter_start", (int)n, t0);
  return rc;
}
static int h_allgather_start(zp_host_ctx* c, void* recv, const void* send, size_t n, zp_dtype dt, uint64_t* ticket) {
  zp_run* r = c->r;
  if (no_ticket(c, "allgather_start", ticket)) return ZP_E_INVALID;
  if (n == 0 || r->world == 1 || !r->comm) return h_allgather(c, recv, send, n, dt); /* nothing to start */
  double t0 = zp_now_us();
  int rc = zp_ag_start(&r->arq, data_comm(r), recv, send, n, dt, ticket, r->err, sizeof r->err);
  zp_trace_span(ZP_TR_COMM, "allgather_start", (int)n, t0);
  return rc;
}
static int h_wait_started(zp_host_ctx* c, uint64_t ticket) {
  zp_run* r = c->r;
  if (ticket == 0) return ZP_OK;
  if (r->world == 1 || !r->comm) {
    h_set_error(c, "wait_started: ticket %llu on a run without a communicator", (unsigned long long)ticket);
    return ZP_E_INVALID;
  }
  double t0 = zp_now_us();
  int rc = zp_ar_wait(&r->arq, data_comm(r), ticket, r->err, sizeof r->err);
  zp_trace_span(ZP_TR_COMM, "wait_started", 0, t0);
  return rc;
}
static int h_reduce_scatter(zp_host_ctx* c, void* recv, const void* send, size_t n, zp_dtype dt, zp_redop op) {
  zp_run* r = c->r;
  if (n == 0) return ZP_OK;
  if (r->world == 1 || !r->comm) {
    if (recv != send) return r->ops->copy_d2d(r->be, recv, send, n * zp_dtype_size(dt));
    return ZP_OK;
  }
  zp_comm* dc = data_comm(r);
  if (zp_ar_flush(&r->arq, dc, r->err, sizeof r->err)) return ZP_E_COMM;
  double t0 = zp_now_us();
  int rc = dc->ops->reduce_scatter(dc, recv, send, n, dt, op);
  zp_trace_span(ZP_TR_COMM, "reduce_scatter", (int)n, t0);
  return rc ? comm_fail(r, "reduce_scatter", rc) : ZP_OK;
}
static int h_allgather(zp_host_ctx* c, void* recv, const void* send, size_t n, zp_dtype dt) {
  zp_run* r = c->r;
  if (n == 0) return ZP_OK;
  if (r->world == 1 || !r->comm) {
    if (recv != send) return r->ops->copy_d2d(r->be, recv, send, n * zp_dtype_size(dt));
    return ZP_OK;
  }
  zp_comm* dc = data_comm(r);
  if (zp_ar_flush(&r->arq, dc, r->err, sizeof r->err)) return ZP_E_COMM;
  double t0 = zp_now_us();
  int rc = dc->ops->allgather(dc, recv, send, n, dt);
  zp_trace_span(ZP_TR_COMM, "allgather", (int)n, t0);
  return rc ? comm_fail(r, "allgather", rc) : ZP_OK;
}
static int h_sumsq(zp_host_ctx* c, const void* x, zp_dtype dt, size_t n, double* out) {
  if (n == 0) { *out = 0; return ZP_OK; }
  if (c->r->tp.size > 1) return zp_run_tp_sumsq(c->r, x, dt, n, out); /* whole tensors counted once */
  return c->r->ops->sumsq(c->r->be, out, x, dt, n);
}
/* ABI 1.8: out[i] = h_sumsq(xs[i], ...) bit for bit. Tensor parallelism: h_sumsq per buffer
 * (it splits each buffer at tensor boundaries); else the backend's sumsq_many (one device wait)
 * where it has one, else its sumsq per buffer. */
static int h_sumsq_many(zp_host_ctx* c, int count, const void* const* xs, const zp_dtype* dts, const size_t* ns,
                        double* out) {
  zp_run* r = c->r;
  if (count < 0 || (count > 0 && (!xs || !dts || !ns || !out))) {
    h_set_error(c, "sumsq_many: %d buffers without their tables (or out NULL)", count);
    return ZP_E_INVALID;
  }
  if (r->norm) return zp_norm_sumsq_many(r, count, xs, dts, ns, out); /* 1.9: some were started early */
  if (r->tp.size <= 1 && ZP_TABLE_HAS(r->ops, sumsq_many)) return r->ops->sumsq_many(r->be, count, xs, dts, ns, out);
  for (int i = 0; i < count; i++) {
    int rc = h_sumsq(c, xs[i], dts[i], ns[i], &out[i]);
    if (rc) return rc;
  }
  return ZP_OK;
}
static void h_poison(zp_host_ctx* c, void* p, zp_dtype dt, size_t n) {
#ifdef ZP_TEST_POISON
  if (p && n) c->r->ops->fill(c->r->be, p, dt, n, NAN);
#else
  (void)c; (void)p; (void)dt; (void)n;
#endif
}

static int h_optim_begin(zp_host_ctx* c, double sumsq) {
  zp_run* r = c->r;
  /* pipeline: each stage's strategy summed its own groups; the norm is over all stages */
  if (r->pp_comm && zp_comm_size(r->pp_comm) > 1 && zp_comm_allreduce(r->pp_comm, &sumsq, 1, ZP_F64, ZP_RED_SUM)) {
    snprintf(r->err, sizeof r->err, "gradient norm over the pipeline stages: %s", zp_comm_error(r->pp_comm));
    return ZP_E_COMM;
  }
  if (r->tp.size > 1) { /* tensor parallelism: sliced tensors summed over the tp ranks */
    int rc = zp_run_tp_norm_total(r, &sumsq);
    if (rc) return rc;
  }
  double norm = sqrt(sumsq);
  r->opt.grad_norm = norm;
  double clip = zp_cfg_float(r->cfg, "train.grad_clip");
  r->opt.clip_scale = (clip > 0 && norm > clip) ? (float)(clip / norm) : 1.0f;
  if (!isfinite(norm)) {
    snprintf(r->err, sizeof r->err, "gradient norm is %g at step %d: the run diverged (lower train.lr?)", norm, r->opt.step_t + 1);
    return ZP_E_INVALID;
  }
  r->opt.step_t++;
  r->opt.began = 1;
  return ZP_OK;
}

/* the tier plugin serving tier t (its state and, if tname, its name), or NULL */
static const zp_tier_ops* tier_for(zp_run* r, zp_tier t, void** ts, const char** tname) {
  for (int i = 0; i < 2; i++)
    if (r->tier_ops[i] && r->tier_ops[i]->tier == t) {
      *ts = r->tier_state[i];
      if (tname) *tname = r->tier_plugins[i].desc ? r->tier_plugins[i].desc->name : NULL;
      return r->tier_ops[i];
    }
  return NULL;
}

/* [first, first+count) must lie in this rank's MASTER/OPTIM holding of g: *base is where that
 * holding starts, *held its length (what says who asked, for the message) */
static int held_range(zp_run* r, const zp_group_info* in, int g, uint64_t first, uint64_t count, const char* what,
                      uint64_t* base, uint64_t* held) {
  *base = in->place[ZP_CAT_OPTIM].sharded ? in->shard_off : 0;
  *held = in->place[ZP_CAT_OPTIM].sharded ? in->shard_len : in->padded;
  if (first >= *base && first + count <= *base + *held) return ZP_OK;
  snprintf(r->err, sizeof r->err, "%s: group %d range [%llu,+%llu) outside this rank's optimizer state [%llu,+%llu)", what, g,
           (unsigned long long)first, (unsigned long long)count, (unsigned long long)*base, (unsigned long long)*held);
  return ZP_E_INVALID;
}

/* messages set while a tier plugin runs carry its name: name_as() switches the context's name,
 * name_back() restores the caller's */
typedef struct { char name[sizeof ((struct zp_host_ctx*)0)->name]; } saved_name;
static saved_name name_as(struct zp_host_ctx* c, const char* tname) {
  saved_name s;
  memcpy(s.name, c->name, sizeof s.name);
  if (tname) snprintf(c->name, sizeof c->name, "%s", tname);
  return s;
}
static void name_back(struct zp_host_ctx* c, const saved_name* s) { memcpy(c->name, s->name, sizeof s->name); }

/* ABI 1.5: a strategy's final gradient range goes to the tier that will update it, if that
 * tier takes it early (grad_ready). Only on the last micro-batch of a step (or inside the
 * step): before that the gradient still changes. */
static int h_shard_ready(zp_host_ctx* c, int g, uint64_t first, uint64_t count, const void* grad, zp_dtype gdt) {
  zp_run* r = c->r;
  if (g < 0 || g >= r->layout.n_groups) {
    snprintf(r->err, sizeof r->err, "shard_ready: group %d does not exist (%d groups)", g, r->layout.n_groups);
    return ZP_E_INVALID;
  }
  if (count == 0 || r->dry_run) return ZP_OK;
  if (!r->in_step && !(r->host.micro_batches > 0 && r->host.micro_batch == r->host.micro_batches - 1)) return ZP_OK;
  int rc = zp_norm_start(r, g, grad, gdt, count); /* the norm's sum of squares, beside the backward */
  if (rc) return rc;
  const zp_group_info* in = &r->groups[g].info;
  zp_tier ot = in->place[ZP_CAT_OPTIM].tier;
  if (ot == ZP_TIER_GPU) return ZP_OK;
  void* ts = NULL;
  const char* tname = NULL;
  const zp_tier_ops* to = tier_for(r, ot, &ts, &tname);
  if (!to || !ZP_TABLE_HAS(to, grad_ready)) return ZP_OK;
  uint64_t base, held;
  rc = held_range(r, in, g, first, count, "shard_ready", &base, &held);
  if (rc) return rc;
  zp_grad_range gr;
  memset(&gr, 0, sizeof gr);
  gr.struct_size = sizeof gr;
  gr.group = g;
  gr.first = first;
  gr.count = count;
  gr.state_off = first - base;
  gr.grad = grad;
  gr.gdt = gdt;
  gr.step_t = r->opt.step_t + (r->in_step && r->opt.began ? 0 : 1);
  double t0 = zp_now_us();
  saved_name caller = name_as(c, tname);
  rc = to->grad_ready(ts, &gr);
  name_back(c, &caller);
  zp_trace_span(ZP_TR_COMM, "grad_to_tier", g, t0);
  if (rc && !r->err[0]) snprintf(r->err, sizeof r->err, "tier %s: grad_ready of group %d failed (status %d)", zp_tier_name(ot), g, rc);
  return rc;
}

static int state_io(zp_run* r, int g, zp_category cat, uint64_t off, void* host, size_t bytes, int put);

/* (1.6) fetch_state / fetch_wait: this rank's whole holding of (g, cat) into host memory. Storage
 * a tier owns goes through the tier's fetch op (reads in the background, a ticket) where it has
 * one; everything else is copied before the call returns (state_io: buffers, or tier read()). */
static int fetch_check(zp_run* r, int g, zp_category cat, const void* host, const char* what) {
  if (g < 0 || g >= r->layout.n_groups || (int)cat < 0 || cat >= ZP_CAT_COUNT) {
    snprintf(r->err, sizeof r->err, "%s: group %d / category %d does not exist", what, g, (int)cat);
    return ZP_E_INVALID;
  }
  if (host && ((uintptr_t)host % ZP_FETCH_ALIGN)) {
    snprintf(r->err, sizeof r->err, "%s: host buffer %p is not %u-byte aligned", what, host, ZP_FETCH_ALIGN);
    return ZP_E_INVALID;
  }
  return ZP_OK;
}
static const zp_tier_ops* fetch_tier(zp_run* r, const zp_group_info* in, zp_category cat, void** ts, const char** tname) {
  if (in->buf[cat] || in->place[cat].tier == ZP_TIER_GPU) return NULL;
  const zp_tier_ops* to = tier_for(r, in->place[cat].tier, ts, tname);
  return to && ZP_TABLE_HAS(to, fetch) && ZP_TABLE_HAS(to, fetch_wait) ? to : NULL;
}
static int h_fetch_state(zp_host_ctx* c, int g, zp_category cat, void* host, uint64_t* ticket) {
  zp_run* r = c->r;
  *ticket = 0;
  int rc = fetch_check(r, g, cat, host, "fetch_state");
  if (rc || r->dry_run) return rc;
  const zp_group_info* in = &r->groups[g].info;
  if (!in->bytes[cat]) return ZP_OK;
  void* ts = NULL;
  const char* tname = NULL;
  const zp_tier_ops* to = fetch_tier(r, in, cat, &ts, &tname);
  if (!to) return state_io(r, g, cat, 0, host, in->bytes[cat], 0);
  double t0 = zp_now_us();
  saved_name caller = name_as(c, tname);
  rc = to->fetch(ts, g, cat, host, ticket);
  name_back(c, &caller);
  zp_trace_span(ZP_TR_IO, "fetch_state", g, t0);
  if (rc && !r->err[0]) snprintf(r->err, sizeof r->err, "tier %s: fetch of group %d %s failed (status %d)",
                                 zp_tier_name(in->place[cat].tier), g, zp_category_name(cat), rc);
  return rc;
}
static int h_fetch_wait(zp_host_ctx* c, int g, zp_category cat, uint64_t ticket) {
  zp_run* r = c->r;
  int rc = fetch_check(r, g, cat, NULL, "fetch_wait");
  if (rc || !ticket) return rc;
  const zp_group_info* in = &r->groups[g].info;
  void* ts = NULL;
  const char* tname = NULL;
  const zp_tier_ops* to = fetch_tier(r, in, cat, &ts, &tname);
  if (!to) {
    snprintf(r->err, sizeof r->err, "fetch_wait: ticket %llu of group %d %s, whose storage has no background fetch",
             (unsigned long long)ticket, g, zp_category_name(cat));
    return ZP_E_INVALID;
  }
  double t0 = zp_now_us();
  saved_name caller = name_as(c, tname);
  rc = to->fetch_wait(ts, ticket);
  name_back(c, &caller);
  zp_trace_span(ZP_TR_IO, "fetch_wait", g, t0);
  if (rc && !r->err[0]) snprintf(r->err, sizeof r->err, "tier %s: waiting for the fetch of group %d %s failed (status %d)",
                                 zp_tier_name(in->place[cat].tier), g, zp_category_name(cat), rc);
  return rc;
}

static int adamw_device(zp_run* r, uint64_t first, int np, const void* grad, zp_dtype gdt, void* param_out, zp_dtype pdt,
                        float* master, float* m, float* v, const zp_optim_hparams* hpp);

static int h_optim_update(zp_host_ctx* c, int g, uint64_t first, uint64_t count, const void* grad, zp_dtype gdt,
                          void* param_out, zp_dtype pdt) {
  zp_run* r = c->r;
  if (count == 0) return ZP_OK; /* an empty group (held by another pipeline stage) */
  zp_group_rt* G = &r->groups[g];
  const zp_group_info* in = &G->info;
  uint64_t base, held;
  if (held_range(r, in, g, first, count, "optim_update", &base, &held)) return ZP_E_INVALID;
  double wd = zp_cfg_float(r->cfg, "train.weight_decay");
  zp_optim_hparams hp = {r->opt.lr, (float)zp_cfg_float(r->cfg, "train.beta1"), (float)zp_cfg_float(r->cfg, "train.beta2"),
                         (float)zp_cfg_float(r->cfg, "train.eps"), (float)wd, r->opt.clip_scale, r->opt.step_t};
  /* split [first, first+count) where the decay changes: decay only inside decayed tensors
   * (AdamW is elementwise, so merging neighbours of equal decay changes no bit and saves
   * launches: a GPT-2 block's 13 tensors are 9 pieces) */
  int np = 0;
  {
    uint64_t pos = first, end = first + count;
    const zp_model_layout* L = &r->layout;
    int ti = L->group_first_tensor[g], te = L->group_first_tensor[g + 1];
    while (pos < end) {
      uint64_t seg_end = end;
      int decay = 0;
      for (int t = ti; t < te; t++) {
        const zp_tensor_desc* d = &L->tensors[t];
        if (pos >= d->offset && pos < d->offset + d->numel) {
          decay = d->decay;
          if (d->offset + d->numel < seg_end) seg_end = d->offset + d->numel;
          break;
        }
        if (d->offset > pos && d->offset < seg_end) seg_end = d->offset;
      }
      if (np > 0 && r->piece_decay[np - 1] == (unsigned char)decay) {
        r->piece_end[np - 1] = seg_end; /* same decay as the piece before: one piece, one launch */
      } else {
        r->piece_end[np] = seg_end;
        r->piece_decay[np] = (unsigned char)decay;
        np++;
      }
      pos = seg_end;
    }
  }
  zp_tier ot = in->place[ZP_CAT_OPTIM].tier;
  if (ot != ZP_TIER_GPU) {
    /* the tier holding this group's optimizer state runs the update */
    void* ts = NULL;
    const char* tname = NULL;
    const zp_tier_ops* to = tier_for(r, ot, &ts, &tname);
    if (!to) {
      snprintf(r->err, sizeof r->err, "optim_update: group %d's optimizer state is on tier %s but no tier plugin serves it", g, zp_tier_name(ot));
      return ZP_E_INTERNAL;
    }
    zp_optim_range u;
    memset(&u, 0, sizeof u);
    u.struct_size = sizeof u;
    u.group = g;
    u.first = first;
    u.count = count;
    u.state_off = first - base;
    u.grad = grad;
    u.gdt = gdt;
    u.param_out = param_out;
    u.pdt = pdt;
    u.param_host = in->place[ZP_CAT_PARAM].tier != ZP_TIER_GPU; /* parameter offload: the shard is host memory */
    if (in->buf[ZP_CAT_OPTIM]) {
      u.m = (float*)in->buf[ZP_CAT_OPTIM] + (first - base);
      u.v = (float*)in->buf[ZP_CAT_OPTIM] + held + (first - base);
    }
    if (in->buf[ZP_CAT_MASTER]) u.master = (float*)in->buf[ZP_CAT_MASTER] + (first - (in->place[ZP_CAT_MASTER].sharded ? in->shard_off : 0));
    u.n_pieces = np;
    u.piece_end = r->piece_end;
    u.piece_decay = r->piece_decay;
    u.hp = hp;
    double t0 = zp_now_us();
    saved_name caller = name_as(c, tname); /* the tier's own name on its messages */
    int rc = to->update(ts, &u);
    name_back(c, &caller);
    zp_trace_span(ZP_TR_COMPUTE, "tier_update", g, t0);
    if (rc && !r->err[0]) snprintf(r->err, sizeof r->err, "tier %s: update of group %d failed (status %d)", zp_tier_name(ot), g, rc);
    return rc;
  }
  if (in->place[ZP_CAT_PARAM].tier != ZP_TIER_GPU) {
    snprintf(r->err, sizeof r->err, "optim_update: group %d's parameters are on tier %s but its optimizer state on the device "
             "(parameter offload needs the optimizer state on the same tier)", g, zp_tier_name(in->place[ZP_CAT_PARAM].tier));
    return ZP_E_INVALID;
  }
  float* m = (float*)in->buf[ZP_CAT_OPTIM] + (first - base);
  float* v = (float*)in->buf[ZP_CAT_OPTIM] + held + (first - base);
  float* master;
  if (in->buf[ZP_CAT_MASTER]) {
    uint64_t mb = in->place[ZP_CAT_MASTER].sharded ? in->shard_off : 0;
    master = (float*)in->buf[ZP_CAT_MASTER] + (first - mb);
  } else {
    if (pdt != ZP_F32 || !param_out) {
      snprintf(r->err, sizeof r->err, "optim_update: no MASTER buffer and parameters are not fp32");
      return ZP_E_INVALID;
    }
    master = param_out;
    param_out = NULL;
  }
  if (!r->overlap) return adamw_device(r, first, np, grad, gdt, param_out, pdt, master, m, v, &hp);
  /* optimizer overlap: on the side stream; the group's next forward waits for it (zp_run_fence) */
  int rc = r->ops->side_begin(r->be);
  if (rc) return rc;
  rc = adamw_device(r, first, np, grad, gdt, param_out, pdt, master, m, v, &hp);
  uint64_t t = 0;
  int rc2 = r->ops->side_end(r->be, &t);
  if (rc) return rc;
  if (rc2) return rc2;
  G->opt_ticket = t;
  G->zero_pending = 1;
  return ZP_OK;
}

/* the device AdamW of one range (core optimizer service), on the backend's current stream */
static int adamw_device(zp_run* r, uint64_t first, int np, const void* grad, zp_dtype gdt, void* param_out, zp_dtype pdt,
                        float* master, float* m, float* v, const zp_optim_hparams* hpp) {
  zp_optim_hparams hp = *hpp;
  size_t gs = zp_dtype_size(gdt), ps = zp_dtype_size(pdt);
  if (ZP_TABLE_HAS(r->ops, adamw_pieces)) { /* ABI 1.4: the range's pieces in one call */
    for (int i = 0; i < np; i++) {
      r->piece_rel[i] = r->piece_end[i] - first;
      r->piece_wd[i] = r->piece_decay[i] ? hp.weight_decay : 0.0f;
    }
    return r->ops->adamw_pieces(r->be, param_out, pdt, master, grad, gdt, m, v, np, r->piece_rel, r->piece_wd, hp.lr,
                                hp.beta1, hp.beta2, hp.eps, hp.grad_scale, hp.step_t);
  }
  uint64_t pos = first;
  for (int i = 0; i < np; i++) {
    uint64_t k = pos - first;
    int rc = r->ops->adamw(r->be, param_out ? (char*)param_out + k * ps : NULL, pdt, master + k, (const char*)grad + k * gs,
                           gdt, m + k, v + k, (size_t)(r->piece_end[i] - pos), hp.lr, hp.beta1, hp.beta2, hp.eps,
                           r->piece_decay[i] ? hp.weight_decay : 0.0f, hp.grad_scale, hp.step_t);
    if (rc) return rc;
    pos = r->piece_end[i];
  }
  return ZP_OK;
}

static void h_note_io(zp_host_ctx* c, zp_tier tier, int write, uint64_t bytes) {
  if ((unsigned)tier >= ZP_TIER_COUNT) return;
  c->r->ledger.io_bytes[tier][write ? 1 : 0] += bytes;
  c->r->ledger.io_ops[tier][write ? 1 : 0]++;
}
static void h_note_bytes(zp_host_ctx* c, zp_category cat, zp_tier tier, long long delta) {
  if ((unsigned)cat < ZP_CAT_COUNT && (unsigned)tier < ZP_TIER_COUNT) zp_ledger_note(&c->r->ledger, cat, tier, delta);
}

static void host_init(zp_run* r, const char* name) {
  zp_host* h = &r->host;
  memset(h, 0, sizeof *h);
  r->hctx = calloc(1, sizeof *r->hctx);
  r->hctx->r = r;
  snprintf(r->hctx->name, sizeof r->hctx->name, "%s", name);
  h->struct_size = sizeof *h;
  h->abi_major = ZP_ABI_MAJOR;
  h->abi_minor = ZP_ABI_MINOR;
  h->ctx = r->hctx;
  h->log = h_log;
  h->set_error = h_set_error;
  h->config_int = h_cfg_int;
  h->config_float = h_cfg_float;
  h->config_bool = h_cfg_bool;
  h->config_string = h_cfg_string;
  h->alloc = h_alloc;
  h->free = h_free;
  h->rank = r->rank;
  h->world_size = r->world;
  h->dev = r->ops;
  h->devb = r->be;
  h->n_groups = r->layout.n_groups;
  h->group_info = h_group_info;
  h->set_view = h_set_view;
  h->allreduce = h_allreduce;
  h->reduce_scatter = h_reduce_scatter;
  h->allgather = h_allgather;
  h->optim_begin = h_optim_begin;
  h->optim_update = h_optim_update;
  h->sumsq = h_sumsq;
  h->sumsq_many = h_sumsq_many;
  h->allreduce_start = h_allreduce_start;
  h->wait_started = h_wait_started;
  h->reduce_scatter_start = h_reduce_scatter_start;
  h->allgather_start = h_allgather_start;
  h->poison = h_poison;
  h->note_io = h_note_io;
  h->note_bytes = h_note_bytes;
  h->shard_ready = h_shard_ready;
  h->fetch_state = h_fetch_state;
  h->fetch_wait = h_fetch_wait;
}

/* ---------------- opening a run ---------------- */

/* Dry runs for train.device = "cuda" size activations with the CPU backend's op table, whose
 * attention keeps the T x T probabilities. The CUDA plugin keeps less (plugins/cuda, its
 * attention_aux_bytes): the logsumexp, B*NH*T fp32, wherever its flash / fa2 kernels serve the
 * head size (32, 64, 128) and ZP_CUDA_ATTN is not "naive"; else B*NH*T*T bf16. The plan uses
 * that rule without loading the plugin (plans are made on machines without a GPU too). */
static size_t cuda_aux_estimate(zp_backend* b, int B, int T, int C, int NH) {
  (void)b;
  const char* a = getenv("ZP_CUDA_ATTN");
  int hs = NH > 0 && C % NH == 0 ? C / NH : 0;
  if ((hs == 32 || hs == 64 || hs == 128) && !(a && strcmp(a, "naive") == 0)) return (size_t)B * NH * T * sizeof(float);
  return (size_t)B * NH * T * T * 2;
}
/* ... and its attention-backward workspace (ABI 1.4), which only ZP_CUDA_FA2_BWD=fused and
 * =atomic ask for (fa2 attention, head sizes 32 and 64; both the same size): fp32 dQ partials
 * per 32-query tile plus 4 semaphores per tile (unused by atomic), each rounded to 256 bytes
 * (plugins/cuda/attention_fa2.cu, zpc_fa2_bwd_ws_bytes) */
static size_t cuda_ws_estimate(zp_backend* b, int B, int T, int C, int NH) {
  (void)b;
  const char* a = getenv("ZP_CUDA_ATTN");
  const char* v = getenv("ZP_CUDA_FA2_BWD");
  int hs = NH > 0 && C % NH == 0 ? C / NH : 0;
  if (!v || (strcmp(v, "fused") != 0 && strcmp(v, "atomic") != 0) || (a && strcmp(a, "fa2") != 0) || (hs != 32 && hs != 64) || C % 8) return 0;
  size_t tiles = (size_t)B * NH * (size_t)((T + 31) / 32);
  return ((tiles * 32 * hs * sizeof(float) + 255) & ~(size_t)255) + ((tiles * 4 * sizeof(int) + 255) & ~(size_t)255);
}
static int cuda_ws_sizing_only(zp_backend* b, void* dqkv, const void* dout, const void* qkv, const void* out,
                               const void* aux, void* ws, int B, int T, int C, int NH) {
  (void)b; (void)dqkv; (void)dout; (void)qkv; (void)out; (void)aux; (void)ws; (void)B; (void)T; (void)C; (void)NH;
  return ZP_E_INTERNAL; /* a dry run sizes, it never computes */
}
static zp_backend_ops g_cuda_sizing;

/* Open the runtime side of the tier plugins (after the group buffers exist). A plugin named by
 * both offload keys is opened once. Dry runs open them too, so their staging is counted
 * (host->alloc hands out NULL there; plugins must not touch memory then). */
static int open_tiers(zp_run* r, int dry_run) {
  static const char* tkeys[2] = {"offload.optimizer.plugin", "offload.param.plugin"};
  for (int i = 0; i < 2; i++) {
    if (!r->tier_plugins[i].desc) continue;
    if (i == 1 && r->tier_plugins[0].desc && strcmp(r->tier_plugins[0].desc->name, r->tier_plugins[1].desc->name) == 0) continue;
    const zp_tier_ops* t = r->tier_plugins[i].desc->tier;
    if (t->struct_size < offsetof(zp_tier_ops, update) + sizeof t->update || !t->update || !t->open) {
      if (dry_run) continue; /* plan-only plugins still plan */
      rerr(r, "%s = \"%s\": this tier plugin only plans (it has no update method): it cannot run training", tkeys[i],
           r->tier_plugins[i].desc->name);
      return ZP_E_NOT_IMPLEMENTED;
    }
    snprintf(r->hctx->name, sizeof r->hctx->name, "%s", r->tier_plugins[i].desc->name);
    int rc = t->open(&r->host, &r->tier_state[i]);
    if (rc == ZP_E_NOT_IMPLEMENTED && dry_run) { r->err[0] = 0; continue; }
    if (rc) {
      char pre[256];
      if (!r->err[0]) rerr(r, "open failed (status %d)", rc);
      snprintf(pre, sizeof pre, "%s = \"%s\": ", tkeys[i], r->tier_plugins[i].desc->name);
      rprefix(r, pre);
      return rc;
    }
    r->tier_ops[i] = t;
  }
  return ZP_OK;
}

static int open_named_plugin(zp_run* r, const char* key, zp_plugin_kind kind, zp_plugin* out) {
  const char* name = zp_cfg_str(r->cfg, key);
  char err[1536];
  int rc = zp_plugin_open(name, kind, r->cfg->dir, out, err, sizeof err);
  if (rc) rerr(r, "%s = \"%s\": %s", key, name, err);
  return rc;
}

/* Model-state buffers come from one arena per (category, tier), groups in forward order at
 * 4 KiB-multiple offsets: consecutive groups are contiguous, so a bucket of groups is one
 * collective, and the allocation count does not grow with the number of layers. */
/* fp32 parameters on the device serve as their own master copy unless an offload tier keeps a
 * separate fp32 master (ZeRO-Offload: the update runs where the master lives). */
static int master_aliased(const zp_run* r, const zp_group_info* in) {
  return r->param_dt == ZP_F32 && in->place[ZP_CAT_MASTER].tier == ZP_TIER_GPU;
}

static int alloc_groups(zp_run* r) {
  int G = r->layout.n_groups;
  char tag[96];
  for (int c = ZP_CAT_PARAM; c <= ZP_CAT_OPTIM; c++) {
    for (int t = 0; t < ZP_TIER_COUNT; t++) {
      size_t total = 0;
      for (int g = 0; g < G; g++) {
        zp_group_info* in = &r->groups[g].info;
        if ((int)in->place[c].tier != t || !in->padded) continue; /* !padded: another pipeline stage's group */
        if (c == ZP_CAT_MASTER && master_aliased(r, in)) continue; /* fp32 params are their own master */
        uint64_t elems = in->place[c].sharded ? in->shard_len : in->padded;
        in->bytes[c] = (size_t)elems * zp_dtype_size(in->dtype[c]) * (c == ZP_CAT_OPTIM ? 2 : 1);
        total += in->bytes[c];
      }
      if (!total) continue;
      if (t == ZP_TIER_NVME) continue; /* the nvme tier plugin owns (and counts) this storage */
      snprintf(tag, sizeof tag, "%s arena (%d groups)", zp_category_name((zp_category)c), G);
      int rc = zp_ledger_alloc(&r->ledger, (zp_category)c, (zp_tier)t, total, tag, &r->arena[c][t]);
      if (rc) {
        rerr(r, "%s", r->ledger.last_error);
        return rc;
      }
      r->arena_bytes[c][t] = total;
      size_t off = 0;
      for (int g = 0; g < G; g++) {
        zp_group_info* in = &r->groups[g].info;
        if ((int)in->place[c].tier != t || !in->padded || (c == ZP_CAT_MASTER && master_aliased(r, in))) continue;
        in->buf[c] = r->arena[c][t] ? (char*)r->arena[c][t] + off : NULL;
        off += in->bytes[c];
      }
    }
  }
  for (int g = 0; g < G; g++) {
    zp_group_rt* gr = &r->groups[g];
    zp_group_info* in = &gr->info;
    if (!in->padded) continue; /* another pipeline stage's group */
    /* compute copies when storage dtype differs from the compute dtype */
    size_t cbytes = (size_t)in->padded * zp_dtype_size(r->ct);
    if (r->param_dt != r->ct) {
      snprintf(tag, sizeof tag, "%s compute copy of PARAM", r->gplans[g].name);
      if (zp_ledger_alloc(&r->ledger, ZP_CAT_BUFFER, ZP_TIER_GPU, cbytes, tag, &gr->ccopy_param)) {
        rerr(r, "%s", r->ledger.last_error);
        return ZP_E_NOMEM;
      }
      gr->ccopy_bytes[0] = cbytes;
    }
    if (r->grad_dt != r->ct) {
      snprintf(tag, sizeof tag, "%s compute grad scratch", r->gplans[g].name);
      if (zp_ledger_alloc(&r->ledger, ZP_CAT_BUFFER, ZP_TIER_GPU, cbytes, tag, &gr->ccopy_grad)) {
        rerr(r, "%s", r->ledger.last_error);
        return ZP_E_NOMEM;
      }
      gr->ccopy_bytes[1] = cbytes;
    }
  }
  return ZP_OK;
}

int zp_run_open(zp_run* r, zp_config* cfg, const zp_run_opts* o) {
  memset(r, 0, sizeof *r);
  r->cfg = cfg;
  r->dry_run = o->dry_run;
  r->comm = o->comm;
  r->pp_comm = o->pp_comm;
  int rc;
  { /* tensor parallelism: data- and tensor-parallel communicators (core/runtime_tp.c) */
    int tpn = (int)zp_cfg_int(cfg, "parallel.tp");
    if (tpn > 1 && o->dry_run) r->tp.size = tpn;
    else if (tpn > 1 && o->tp_comm) {
      if (zp_comm_size(o->tp_comm) != tpn) {
        rerr(r, "internal: tensor-parallel communicator of %d ranks for parallel.tp = %d", zp_comm_size(o->tp_comm), tpn);
        return ZP_E_INTERNAL;
      }
      r->tp.comm = o->tp_comm;
      r->tp.size = tpn;
      r->tp.rank = zp_comm_rank(o->tp_comm);
      r->tp_borrowed = 1;
    } else if (tpn > 1 && o->comm && (rc = zp_run_tp_comms(r, o->comm, tpn))) return rc;
  }
  if (r->comm) {
    r->rank = zp_comm_rank(r->comm);
    r->world = zp_comm_size(r->comm);
  } else {
    r->rank = o->rank;
    r->world = o->world > 0 ? o->world : 1;
  }
  zp_ledger_init(&r->ledger, r->rank, o->dry_run);
  /* model shape */
  zp_gpt2_shape s;
  s.L = (int)zp_cfg_int(cfg, "model.n_layer");
  s.NH = (int)zp_cfg_int(cfg, "model.n_head");
  s.C = (int)zp_cfg_int(cfg, "model.d_model");
  s.maxT = (int)zp_cfg_int(cfg, "model.seq_len");
  s.V = (int)zp_cfg_int(cfg, "model.vocab_size");
  int pad = (int)zp_cfg_int(cfg, "model.vocab_pad");
  s.Vp = (s.V + pad - 1) / pad * pad;
  if (r->tp.size > 1 && s.Vp % r->tp.size) { /* vocab-parallel: every tp rank holds Vp/tp rows */
    int unit = pad, a = pad, b = r->tp.size;
    while (b) { int t = a % b; a = b; b = t; }
    unit = pad / a * r->tp.size;
    int vp = (s.V + unit - 1) / unit * unit;
    if (r->rank == 0 && r->tp.rank == 0)
      fprintf(stderr, "zp: note: parallel.tp = %d: vocabulary padded to %d rows (not %d) so that it splits evenly; "
              "checkpoints then differ in wte's padding from tp = 1 runs: a model.vocab_pad that is a multiple of tp avoids it\n",
              r->tp.size, vp, s.Vp);
    s.Vp = vp;
  }
  rc = zp_model_layout_init(&r->layout, &s, r->err, sizeof r->err);
  if (rc) return rc;
  if (r->tp.size > 1 && (rc = zp_run_tp_layout(r))) return rc;
  {
    int maxt = 0;
    for (int g = 0; g < r->layout.n_groups; g++) {
      int nt = r->layout.group_first_tensor[g + 1] - r->layout.group_first_tensor[g];
      if (nt > maxt) maxt = nt;
    }
    r->piece_end = calloc((size_t)maxt * 2 + 2, sizeof(uint64_t));
    r->piece_decay = calloc((size_t)maxt * 2 + 2, 1);
    r->piece_rel = calloc((size_t)maxt * 2 + 2, sizeof(uint64_t));
    r->piece_wd = calloc((size_t)maxt * 2 + 2, sizeof(float));
    if (!r->piece_end || !r->piece_decay || !r->piece_rel || !r->piece_wd) { rerr(r, "out of host memory"); return ZP_E_NOMEM; }
  }
  /* dtypes */
  const char* prec = zp_cfg_str(cfg, "train.precision");
  const char* dev = zp_cfg_str(cfg, "train.device");
  int cuda = strcmp(dev, "cuda") == 0;
  if (strcmp(prec, "fp64") == 0) { r->ct = ZP_F64; r->param_dt = ZP_F64; }
  else if (strcmp(prec, "bf16") == 0) { r->ct = cuda ? ZP_BF16 : ZP_F32; r->param_dt = ZP_BF16; }
  else { r->ct = ZP_F32; r->param_dt = ZP_F32; }
  r->grad_dt = strcmp(zp_cfg_str(cfg, "train.grad_accum_dtype"), "fp32") == 0 && r->param_dt != ZP_F64 ? ZP_F32 : r->param_dt;
  if (r->param_dt == ZP_F64) r->grad_dt = ZP_F64;
  /* backend */
  if (cuda && !o->dry_run) {
    rc = zp_plugin_open("cuda", ZP_KIND_BACKEND, cfg->dir, &r->backend_plugin, r->err, sizeof r->err);
    if (rc) {
      rprefix(r, "train.device = \"cuda\": ");
      return rc;
    }
    r->ops = r->backend_plugin.desc->backend;
  } else if (cuda) { /* dry run: the CPU ops, with the CUDA backend's attention storage */
    g_cuda_sizing = *zp_cpu_backend_ops();
    g_cuda_sizing.attention_aux_bytes = cuda_aux_estimate;
    g_cuda_sizing.attention_bwd_ws_bytes = cuda_ws_estimate;
    g_cuda_sizing.attention_bwd_ws = cuda_ws_sizing_only;
    r->ops = &g_cuda_sizing;
  } else {
    r->ops = zp_cpu_backend_ops();
  }
  if (zp_cfg_bool(cfg, "train.profile_ops") && !o->dry_run)
    r->ops = zp_op_profile_wrap(r->ops, zp_cfg_bool(cfg, "train.profile_sync"));
  zp_backend_config bc = {sizeof bc, r->ct == ZP_BF16 && !cuda ? ZP_F32 : r->ct, 0, (int)zp_cfg_int(cfg, "train.threads")};
  if (cuda && o->dry_run) bc.compute_dtype = ZP_F32; /* sizing only */
  {
    const char* lr = getenv("ZP_LOCAL_RANK");
    if (lr) bc.device_index = atoi(lr);
  }
  host_init(r, "core");
  rc = r->ops->create(&r->host, &bc, &r->be);
  if (rc) {
    if (!r->err[0]) rerr(r, "cannot create the %s backend", dev);
    return rc;
  }
  r->host.devb = r->be;
  r->host.dev = r->ops;
  memset(&r->binfo, 0, sizeof r->binfo);
  r->binfo.struct_size = sizeof r->binfo;
  r->ops->info(r->be, &r->binfo);
  if (!o->dry_run) zp_ledger_set_device(&r->ledger, r->ops, r->be);
  /* device communicator (NCCL) where the backend has one: id from rank 0 over the host comm */
  if (!o->dry_run && r->comm && r->world > 1 && r->ops->struct_size > offsetof(zp_backend_ops, comm_create) &&
      r->ops->comm_unique_id && r->ops->comm_create) {
    uint32_t msg[1 + 64]; /* [0] = id length, then the id */
    memset(msg, 0, sizeof msg);
    size_t idlen = 256;
    if (r->rank == 0) {
      if ((rc = r->ops->comm_unique_id(r->be, msg + 1, &idlen))) {
        if (!r->err[0]) rerr(r, "cannot make a device communicator id (status %d)", rc);
        return rc;
      }
      msg[0] = (uint32_t)idlen;
    }
    if ((rc = zp_comm_broadcast(r->comm, msg, sizeof msg / 4, ZP_I32, 0))) {
      rerr(r, "broadcasting the device communicator id: %s", zp_comm_error(r->comm));
      return rc;
    }
    idlen = msg[0];
    const void* id = msg + 1;
    if ((rc = r->ops->comm_create(r->be, id, idlen, r->rank, r->world, zp_cfg_float(cfg, "comm.timeout_s"), &r->dcomm))) {
      if (!r->err[0]) rerr(r, "cannot create the device communicator (status %d)", rc);
      return rc;
    }
  }
  /* plan: default replicated on the device tier */
  int G = r->layout.n_groups;
  if (o->held) {
    r->held = malloc((size_t)G);
    if (!r->held) { rerr(r, "out of host memory"); return ZP_E_NOMEM; }
    memcpy(r->held, o->held, (size_t)G);
  }
  r->gplans = calloc((size_t)G, sizeof(zp_group_plan));
  r->groups = calloc((size_t)G, sizeof(zp_group_rt));
  r->vparam = calloc((size_t)G, sizeof(void*));
  r->vgrad = calloc((size_t)G, sizeof(void*));
  char* names = calloc((size_t)G, 32);
  for (int g = 0; g < G; g++) {
    zp_group_plan* gp = &r->gplans[g];
    gp->index = g;
    char* nm = names + 32 * g;
    if (g == 0) snprintf(nm, 32, "embed");
    else if (g == G - 1) snprintf(nm, 32, "head");
    else snprintf(nm, 32, "block.%d", g - 1);
    gp->name = nm;
    gp->numel = r->layout.group_numel[g];
    gp->padded = zp_group_padded(&r->layout, g, r->world);
    if (o->held && !o->held[g]) gp->numel = gp->padded = 0; /* another pipeline stage holds it */
    for (int c = 0; c < ZP_CAT_COUNT; c++) { gp->place[c].sharded = 0; gp->place[c].tier = ZP_TIER_GPU; }
  }
  r->plan.world_size = r->world;
  r->plan.n_groups = G;
  r->plan.groups = r->gplans;
  /* strategy */
  const char* zname = zp_cfg_str(cfg, "zero.plugin");
  if (strcmp(zname, "none") == 0 || !zname[0]) {
    r->strategy = &zp_replicated_strategy;
  } else {
    rc = open_named_plugin(r, "zero.plugin", ZP_KIND_STRATEGY, &r->strategy_plugin);
    if (rc) return rc;
    r->strategy = r->strategy_plugin.desc->strategy;
    snprintf(r->hctx->name, sizeof r->hctx->name, "%s", r->strategy_plugin.desc->name);
  }
  if (!r->strategy->plan) {
    rerr(r, "strategy has no plan method");
    return ZP_E_ABI;
  }
  rc = r->strategy->plan(&r->host, &r->plan);
  if (rc) {
    if (!r->err[0]) rerr(r, "strategy plan failed (status %d)", rc);
    return rc;
  }
  /* tiers (offload) */
  const char* tkeys[2] = {"offload.optimizer.plugin", "offload.param.plugin"};
  for (int i = 0; i < 2; i++) {
    if (strcmp(zp_cfg_str(cfg, tkeys[i]), "none") == 0) continue;
    rc = open_named_plugin(r, tkeys[i], ZP_KIND_TIER, &r->tier_plugins[i]);
    if (rc) return rc;
    const zp_tier_ops* t = r->tier_plugins[i].desc->tier;
    if (!t->plan) {
      rerr(r, "%s: tier plugin has no plan method", tkeys[i]);
      return ZP_E_ABI;
    }
    snprintf(r->hctx->name, sizeof r->hctx->name, "%s", r->tier_plugins[i].desc->name);
    rc = t->plan(&r->host, &r->plan);
    if (rc) {
      if (!r->err[0]) rerr(r, "%s: plan failed (status %d)", tkeys[i], rc);
      return rc;
    }
  }
  /* group infos */
  for (int g = 0; g < G; g++) {
    zp_group_info* in = &r->groups[g].info;
    in->numel = r->gplans[g].numel;
    in->padded = r->gplans[g].padded;
    in->shard_len = in->padded / (uint64_t)r->world;
    in->shard_off = in->shard_len * (uint64_t)r->rank;
    in->tied_to = (g == G - 1 && r->layout.uses_head_wte) ? 0 : -1;
    /* pipeline: the last stage's copy of the tied wte is the executor's, not the strategy's */
    if (o->held && in->tied_to >= 0 && !o->held[in->tied_to]) in->tied_to = -1;
    in->dtype[ZP_CAT_PARAM] = r->param_dt;
    in->dtype[ZP_CAT_GRAD] = r->grad_dt;
    in->dtype[ZP_CAT_MASTER] = ZP_F32;
    in->dtype[ZP_CAT_OPTIM] = ZP_F32;
    in->dtype[ZP_CAT_ACT] = r->ct;
    in->dtype[ZP_CAT_BUFFER] = r->ct;
    memcpy(in->place, r->gplans[g].place, sizeof in->place);
    if (master_aliased(r, in)) in->place[ZP_CAT_MASTER] = in->place[ZP_CAT_PARAM];
  }
  rc = alloc_groups(r);
  if (rc) return rc;
  if ((rc = open_tiers(r, o->dry_run))) return rc;
  /* activations */
  r->B = o->B ? o->B : (int)zp_cfg_int(cfg, "train.micro_batch");
  r->T = o->T ? o->T : (int)zp_cfg_int(cfg, "model.seq_len");
  r->accum = (int)zp_cfg_int(cfg, "train.grad_accum");
  if (!o->no_acts) {
    const int gelu_blocks = zp_cfg_bool(cfg, "train.recompute_gelu") ? r->layout.s.L
                                                                      : (int)zp_cfg_int(cfg, "train.recompute_gelu_blocks");
    rc = zp_acts_alloc_ex(&r->acts, &r->layout, r->ops, r->be, &r->ledger, r->B, r->T, r->ct,
                          zp_cfg_bool(cfg, "train.recompute"), gelu_blocks, r->err, sizeof r->err);
    if (rc) return rc;
  }
  r->views.param = r->vparam;
  r->views.grad = r->vgrad;
  if (r->tp.size > 1) { /* the tensor plugin validates; tp device communicator, scratch */
    snprintf(r->hctx->name, sizeof r->hctx->name, "tensor");
    if ((rc = zp_run_tp_open(r))) return rc;
  }
  /* strategy runtime */
  snprintf(r->hctx->name, sizeof r->hctx->name, "%s", r->strategy_plugin.desc ? r->strategy_plugin.desc->name : "none");
  if (!o->dry_run) {
    if (!r->strategy->open) {
      rerr(r, "strategy has no open method");
      return ZP_E_ABI;
    }
    r->host.comm_overlaps = r->world > 1 && r->comm && zp_ar_native(data_comm(r)); /* 1.9 */
    rc = r->strategy->open(&r->host, &r->strategy_state);
    if (rc) {
      if (!r->err[0]) rerr(r, "strategy open failed (status %d)", rc);
      return rc;
    }
    /* optimizer overlap: the strategy allows it (1.7 flag), the backend has a side stream */
    const zp_strategy_ops* so = r->strategy;
    int deferrable = so->struct_size >= offsetof(zp_strategy_ops, flags) + sizeof so->flags &&
                     (so->flags & ZP_STRATEGY_UPDATE_DEFERRABLE);
    r->overlap = deferrable && zp_cfg_bool(cfg, "train.overlap_optimizer") && ZP_TABLE_HAS(r->ops, side_begin) &&
                 ZP_TABLE_HAS(r->ops, side_end) && ZP_TABLE_HAS(r->ops, copy_wait);
    /* gradients overwritten by the step's first backward (ABI 1.8): the backend has it, the
     * gradient is written in the compute dtype (no copy to accumulate from), no tensor
     * parallelism (its layout writes shards) and no pipeline (its split backward and per-chunk
     * accumulators write gradients outside zp_run_micro_batch); per group, only where the
     * model's backward writes each gradient once and no tie makes two groups write one buffer */
    r->grad_overwrite = zp_cfg_bool(cfg, "train.grad_overwrite") && ZP_TABLE_HAS(r->ops, grad_overwrite) &&
                        r->grad_dt == r->ct && r->tp.size <= 1 && !r->pp_comm;
    for (int g = 0; g < r->layout.n_groups; g++)
      r->groups[g].grad_once = r->groups[g].info.tied_to < 0 && zp_model_group_grads_written_once(&r->layout, g);
    for (int g = 0; g < r->layout.n_groups; g++) /* a group another is tied to has two writers */
      if (r->groups[g].info.tied_to >= 0) r->groups[r->groups[g].info.tied_to].grad_once = 0;
    if ((rc = zp_norm_open(r))) {
      if (!r->err[0]) rerr(r, "out of memory (gradient-norm starts)");
      return rc;
    }
  } else if (r->strategy->open && r->strategy_plugin.desc) {
    /* dry run: let the strategy allocate its buffers (counted, nothing touched) */
    rc = r->strategy->open(&r->host, &r->strategy_state);
    if (rc == ZP_E_NOT_IMPLEMENTED) { r->err[0] = 0; rc = ZP_OK; }
    if (rc) return rc;
  }
  return ZP_OK;
}

void zp_run_close(zp_run* r) {
  zp_norm_close(r);
  if (r->strategy && r->strategy->close && r->strategy_state) r->strategy->close(r->strategy_state);
  r->strategy_state = NULL;
  for (int i = 0; i < 2; i++) {
    if (r->tier_ops[i] && r->tier_ops[i]->close) r->tier_ops[i]->close(r->tier_state[i]);
    r->tier_ops[i] = NULL;
    r->tier_state[i] = NULL;
  }
  free(r->piece_end);
  free(r->piece_decay);
  free(r->piece_rel);
  free(r->piece_wd);
  r->piece_end = NULL;
  r->piece_decay = NULL;
  r->piece_rel = NULL;
  r->piece_wd = NULL;
  if (r->groups) {
    zp_acts_free(&r->acts, &r->ledger);
    for (int g = 0; g < r->layout.n_groups; g++) {
      zp_group_rt* gr = &r->groups[g];
      if (gr->ccopy_bytes[0]) zp_ledger_free(&r->ledger, ZP_CAT_BUFFER, ZP_TIER_GPU, gr->ccopy_param, gr->ccopy_bytes[0]);
      if (gr->ccopy_bytes[1]) zp_ledger_free(&r->ledger, ZP_CAT_BUFFER, ZP_TIER_GPU, gr->ccopy_grad, gr->ccopy_bytes[1]);
    }
  }
  for (int c = 0; c < ZP_CAT_COUNT; c++)
    for (int t = 0; t < ZP_TIER_COUNT; t++)
      if (r->arena_bytes[c][t]) zp_ledger_free(&r->ledger, (zp_category)c, (zp_tier)t, r->arena[c][t], r->arena_bytes[c][t]);
  if (r->dcomm) zp_comm_destroy(r->dcomm);
  r->dcomm = NULL;
  zp_run_tp_close(r);
  if (r->be) r->ops->destroy(r->be);
  r->be = NULL;
  if (r->gplans) free((void*)r->gplans[0].name);
  free(r->gplans);
  free(r->groups);
  free(r->vparam);
  free(r->vgrad);
  free(r->hctx);
  free(r->held);
  r->held = NULL;
  zp_plugin_close(&r->strategy_plugin);
  zp_plugin_close(&r->tier_plugins[0]);
  zp_plugin_close(&r->tier_plugins[1]);
  zp_plugin_close(&r->backend_plugin);
  zp_model_layout_free(&r->layout);
  r->groups = NULL;
}

/* ---------------- tier-aware state access ---------------- */


static int tier_sync(zp_run* r, int flush, int* wrote) {
  for (int i = 0; i < 2; i++) {
    const zp_tier_ops* t = r->tier_ops[i];
    if (!t || t->struct_size < offsetof(zp_tier_ops, sync) + sizeof t->sync || !t->sync) continue;
    int w = 0;
    int rc = t->sync(r->tier_state[i], flush, &w);
    if (rc) {
      if (!r->err[0]) rerr(r, "tier %s: sync failed (status %d)", zp_tier_name(t->tier), rc);
      return rc;
    }
    if (w) *wrote = 1;
  }
  return ZP_OK;
}

int zp_run_flush(zp_run* r) {
  int wrote = 0;
  int rc = tier_sync(r, 1, &wrote);
  if (rc) return rc;
  if (r->world > 1 && r->comm) {
    int32_t v = wrote;
    if ((rc = zp_comm_allreduce(r->comm, &v, 1, ZP_I32, ZP_RED_MAX))) {
      rerr(r, "flush: %s", zp_comm_error(r->comm));
      return rc;
    }
    wrote = v;
  }
  if (!wrote) return ZP_OK;
  /* a rank that updated only its shard of a replicated parameter buffer: re-gather it */
  for (int g = 0; g < r->layout.n_groups && !rc; g++) {
    zp_group_info* in = &r->groups[g].info;
    if (in->place[ZP_CAT_PARAM].sharded || !in->place[ZP_CAT_OPTIM].sharded || !in->buf[ZP_CAT_PARAM]) continue;
    size_t es = zp_dtype_size(in->dtype[ZP_CAT_PARAM]);
    rc = h_allgather(r->hctx, in->buf[ZP_CAT_PARAM], (char*)in->buf[ZP_CAT_PARAM] + (size_t)in->shard_off * es,
                     (size_t)in->shard_len, in->dtype[ZP_CAT_PARAM]);
  }
  return rc;
}

static int state_io(zp_run* r, int g, zp_category cat, uint64_t off, void* host, size_t bytes, int put) {
  int frc = zp_run_fence_all(r); /* no pending side-stream update of what is read or written */
  if (frc) return frc;
  int quiet = 0;
  int src = tier_sync(r, 0, &quiet);
  if (src) return src;
  zp_group_info* in = &r->groups[g].info;
  zp_tier t = in->place[cat].tier;
  if (in->buf[cat]) {
    char* p = (char*)in->buf[cat] + off;
    if (t == ZP_TIER_GPU) return put ? r->ops->copy_h2d(r->be, p, host, bytes) : r->ops->copy_d2h(r->be, host, p, bytes);
    if (put) memcpy(p, host, bytes);
    else memcpy(host, p, bytes);
    return ZP_OK;
  }
  void* ts = NULL;
  const char* tname = NULL;
  const zp_tier_ops* to = tier_for(r, t, &ts, &tname);
  if (!to || (put ? to->write == NULL : to->read == NULL)) {
    rerr(r, "group %d %s: no buffer and no tier plugin to %s it on tier %s", g, zp_category_name(cat), put ? "write" : "read",
         zp_tier_name(t));
    return ZP_E_INTERNAL;
  }
  saved_name caller = name_as(r->hctx, tname); /* the tier's own name on its messages */
  int rc = put ? to->write(ts, g, cat, off, host, bytes) : to->read(ts, g, cat, off, host, bytes);
  name_back(r->hctx, &caller);
  if (rc && !r->err[0]) rerr(r, "tier %s: %s of group %d %s failed (status %d)", zp_tier_name(t), put ? "write" : "read", g,
                             zp_category_name(cat), rc);
  return rc;
}
int zp_run_state_get(zp_run* r, int g, zp_category cat, uint64_t off, void* host, size_t bytes) {
  return state_io(r, g, cat, off, host, bytes, 0);
}
int zp_run_state_put(zp_run* r, int g, zp_category cat, uint64_t off, const void* host, size_t bytes) {
  return state_io(r, g, cat, off, (void*)host, bytes, 1);
}
/* does this rank hold (g, cat) at all (a buffer, or tier-owned storage)? */
static int holds(zp_run* r, zp_group_info* in, zp_category cat) {
  if (in->buf[cat]) return 1;
  return in->place[cat].tier == ZP_TIER_NVME && in->bytes[cat] > 0;
}

/* ---------------- weights ---------------- */

/* Host-side dtype conversion (init, export): f32/f64/bf16 in any direction. */
static void host_cast(void* dst, zp_dtype dt, const void* src, zp_dtype st, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (size_t i = 0; i < n; i++) {
    double v = st == ZP_F64 ? ((const double*)src)[i]
             : st == ZP_BF16 ? (double)zp_bf16_to_f32(((const uint16_t*)src)[i]) : (double)((const float*)src)[i];
    if (dt == ZP_F64) ((double*)dst)[i] = v;
    else if (dt == ZP_BF16) ((uint16_t*)dst)[i] = zp_f32_to_bf16((float)v);
    else ((float*)dst)[i] = (float)v;
  }
}

int zp_run_init_weights(zp_run* r) {
  uint64_t seed = (uint64_t)zp_cfg_int(r->cfg, "model.seed");
  for (int g = 0; g < r->layout.n_groups; g++) {
    zp_group_info* in = &r->groups[g].info;
    /* PARAM, then MASTER: whatever this rank holds (full or shard). The initial values of the
     * PARAM range are generated once; MASTER takes its range from them when it lies inside
     * (the usual case: the same range, or a shard of replicated parameters). */
    float* pvals = NULL; /* fp32 values of PARAM's range [pfirst, pfirst + pn) */
    uint64_t pfirst = 0, pn = 0;
    int rc = ZP_OK;
    for (int c = ZP_CAT_PARAM; c <= ZP_CAT_MASTER && !rc; c += 2) {
      if (!holds(r, in, (zp_category)c)) continue;
      uint64_t first = in->place[c].sharded ? in->shard_off : 0;
      uint64_t n = in->place[c].sharded ? in->shard_len : in->padded;
      int f64 = r->param_dt == ZP_F64 && c == ZP_CAT_PARAM;
      void* host = NULL;
      int reuse = c == ZP_CAT_MASTER && pvals && first >= pfirst && first + n <= pfirst + pn;
      if (reuse) {
        host = pvals + (first - pfirst);
      } else {
        host = malloc((size_t)n * (f64 ? 8 : 4));
        if (!host) { free(pvals); rerr(r, "out of host memory initialising weights"); return ZP_E_NOMEM; }
        zp_model_init_range(&r->layout, seed, g, first, n, host, f64 ? ZP_F64 : ZP_F32);
      }
      zp_dtype dt = in->dtype[c];
      if (dt == (f64 ? ZP_F64 : ZP_F32)) rc = zp_run_state_put(r, g, (zp_category)c, 0, host, (size_t)n * zp_dtype_size(dt));
      else {
        /* cast on the host into a staging buffer: bf16 */
        void* st = malloc((size_t)n * zp_dtype_size(dt));
        if (!st) rc = ZP_E_NOMEM, rerr(r, "out of host memory initialising weights");
        else {
          host_cast(st, dt, host, ZP_F32, (size_t)n);
          rc = zp_run_state_put(r, g, (zp_category)c, 0, st, (size_t)n * zp_dtype_size(dt));
          free(st);
        }
      }
      if (c == ZP_CAT_PARAM && !f64) pvals = host, pfirst = first, pn = n;
      else if (!reuse) free(host);
    }
    free(pvals);
    if (rc) return rc;
    if (in->buf[ZP_CAT_OPTIM] && in->place[ZP_CAT_OPTIM].tier == ZP_TIER_GPU) {
      uint64_t n = in->place[ZP_CAT_OPTIM].sharded ? in->shard_len : in->padded;
      if ((rc = r->ops->memset0(r->be, in->buf[ZP_CAT_OPTIM], (size_t)n * 8))) return rc;
    } else if (in->buf[ZP_CAT_OPTIM]) {
      /* host memory: zeroed in place by all threads (the first touch of its pages, too) */
      char* o = in->buf[ZP_CAT_OPTIM];
      size_t total = in->bytes[ZP_CAT_OPTIM], piece = (size_t)4 << 20;
      long np = (long)((total + piece - 1) / piece);
#pragma omp parallel for schedule(static)
      for (long k = 0; k < np; k++) memset(o + (size_t)k * piece, 0, total - (size_t)k * piece < piece ? total - (size_t)k * piece : piece);
    } else if (holds(r, in, ZP_CAT_OPTIM)) {
      /* host or tier-owned moments: zero in chunks through the tier-aware path */
      size_t total = in->bytes[ZP_CAT_OPTIM], chunk = total < (8u << 20) ? total : (8u << 20);
      void* z = calloc(1, chunk);
      if (!z) { rerr(r, "out of host memory initialising optimizer state"); return ZP_E_NOMEM; }
      for (size_t off = 0; !rc && off < total; off += chunk)
        rc = zp_run_state_put(r, g, ZP_CAT_OPTIM, off, z, total - off < chunk ? total - off : chunk);
      free(z);
      if (rc) return rc;
    }
  }
  r->opt.step_t = 0;
  return zp_run_zero_grads(r);
}

/* The GRAD buffer of group g, zeroed for the next backward: with train.grad_overwrite, a
 * grad_once group whose view is its own buffer is only marked stale (its backward overwrites
 * it); anything else is zeroed now. */
static int zero_group_grad(zp_run* r, int g) {
  zp_group_rt* G = &r->groups[g];
  void* buf = G->info.buf[ZP_CAT_GRAD];
  if (!buf) return ZP_OK;
  if (r->grad_overwrite && G->grad_once && G->grad_zeroed && G->view[1] == buf) {
    G->grad_stale = 1;
    return ZP_OK;
  }
  G->grad_stale = 0;
  int rc = r->ops->memset0(r->be, buf, G->info.bytes[ZP_CAT_GRAD]);
  if (!rc) G->grad_zeroed = 1;
  return rc;
}

/* a stale GRAD buffer zeroed for real (nothing to do for any other) */
static int grad_materialize(zp_run* r, zp_group_rt* G) {
  if (!G->grad_stale) return ZP_OK;
  G->grad_stale = 0;
  return r->ops->memset0(r->be, G->info.buf[ZP_CAT_GRAD], G->info.bytes[ZP_CAT_GRAD]);
}
int zp_run_grads_materialize(zp_run* r) {
  int rc = ZP_OK;
  for (int g = 0; g < r->layout.n_groups && !rc; g++) rc = grad_materialize(r, &r->groups[g]);
  return rc;
}

/* Optimizer overlap: the compute stream waits for group g's side-stream AdamW, then zeroes the
 * group's GRAD buffer for the coming backward (zero_grads skipped it: on the compute stream
 * at the step's start it would have run before the side stream had read the gradients). */
static int wait_update(zp_run* r, zp_group_rt* G) {
  if (!G->opt_ticket) return ZP_OK;
  int rc = r->ops->copy_wait(r->be, G->opt_ticket, 1);
  G->opt_ticket = 0;
  return rc;
}
int zp_run_fence(zp_run* r, int g) {
  if (g < 0 || g >= r->layout.n_groups) return ZP_OK;
  zp_group_rt* G = &r->groups[g];
  int rc = wait_update(r, G);
  if (!rc && G->zero_pending) {
    G->zero_pending = 0;
    rc = zero_group_grad(r, g);
  }
  return rc;
}
int zp_run_wait_updates(zp_run* r) {
  int rc = ZP_OK;
  for (int g = 0; g < r->layout.n_groups && !rc; g++) rc = wait_update(r, &r->groups[g]);
  return rc;
}
int zp_run_fence_all(zp_run* r) {
  if (!r->overlap) return ZP_OK;
  int rc = ZP_OK;
  for (int g = 0; g < r->layout.n_groups && !rc; g++) rc = zp_run_fence(r, g);
  return rc;
}

int zp_run_forward_group(zp_run* r, zp_acts* a, int g, float dloss) {
  /* (the group's and its tied group's updates were waited for by their param_view calls) */
  return r->tp.size > 1 ? zp_model_tp_forward_group(&r->layout, r->ops, r->be, a, &r->views, g, dloss, &r->tp)
                        : zp_model_forward_group(&r->layout, r->ops, r->be, a, &r->views, g, dloss);
}

int zp_run_zero_grads(zp_run* r) {
  zp_norm_reset(r); /* a step begins: no earlier start may answer its norm */
  for (int g = 0; g < r->layout.n_groups; g++) {
    if (r->groups[g].zero_pending) continue; /* zeroed at the group's fence (optimizer overlap) */
    int rc = zero_group_grad(r, g);
    if (rc) return rc;
  }
  return ZP_OK;
}

/* ---------------- micro-batch ---------------- */

static int hook(zp_run* r, int (*fn)(void*, int), int g, const char* what) {
  if (!fn) return ZP_OK;
  int rc = fn(r->strategy_state, g);
  if (rc && !r->err[0]) rerr(r, "%s(%d) failed with status %d", what, g, rc);
  return rc;
}

static int param_view(zp_run* r, int g) {
  zp_group_rt* G = &r->groups[g];
  if (r->overlap) { /* the one fence point of the compute: the group's update of the last step first */
    int rc = zp_run_fence(r, g);
    if (rc) return rc;
  }
  if (!G->view[0]) {
    rerr(r, "internal: group %d has no PARAM view at compute time (the strategy did not gather it)", g);
    return ZP_E_INTERNAL;
  }
  if (r->param_dt != r->ct) {
    int rc = r->ops->cast(r->be, G->ccopy_param, r->ct, G->view[0], r->param_dt, (size_t)G->info.padded);
    if (rc) return rc;
    r->vparam[g] = G->ccopy_param;
  } else {
    r->vparam[g] = G->view[0];
  }
  return ZP_OK;
}

static int grad_view(zp_run* r, int g) {
  zp_group_rt* G = &r->groups[g];
  if (r->grad_dt != r->ct) { r->vgrad[g] = G->ccopy_grad; return ZP_OK; }
  if (!G->view[1]) {
    rerr(r, "internal: group %d has no GRAD view at backward time", g);
    return ZP_E_INTERNAL;
  }
  r->vgrad[g] = G->view[1];
  return ZP_OK;
}

static int run_forward(zp_run* r, const int32_t* inputs, const int32_t* targets, float dloss, double* loss_out) {
  size_t N = (size_t)r->B * r->T;
  int rc = r->ops->copy_h2d(r->be, r->acts.inputs, inputs, N * sizeof(int32_t));
  if (!rc) rc = r->ops->copy_h2d(r->be, r->acts.targets, targets, N * sizeof(int32_t));
  if (rc) return rc;
  int G = r->layout.n_groups;
  if (r->tp.size > 1 && (rc = zp_tp_prepare_ids(&r->tp, r->ops, r->be, &r->acts, inputs))) return rc;
  for (int g = 0; g < G; g++) {
    if ((rc = hook(r, r->strategy->pre_forward, g, "pre_forward"))) return rc;
    if ((rc = param_view(r, g))) return rc;
    if (r->groups[g].info.tied_to >= 0 && (rc = param_view(r, r->groups[g].info.tied_to))) return rc;
    double t0 = zp_now_us();
    if ((rc = zp_run_forward_group(r, &r->acts, g, dloss))) return rc;
    zp_trace_span(ZP_TR_COMPUTE, "forward", g, t0);
    if ((rc = hook(r, r->strategy->post_forward, g, "post_forward"))) return rc;
  }
  float* losses = malloc(N * sizeof(float));
  rc = r->ops->copy_d2h(r->be, losses, r->acts.losses, N * sizeof(float));
  double sum = 0;
  int cnt = 0;
  for (size_t i = 0; i < N; i++)
    if (targets[i] >= 0) { sum += losses[i]; cnt++; }
  free(losses);
  *loss_out = cnt ? sum / cnt : 0.0;
  return rc;
}

int zp_run_param_view(zp_run* r, int g) { return param_view(r, g); }

int zp_run_forward(zp_run* r, const int32_t* inputs, const int32_t* targets, double* loss_out) {
  return run_forward(r, inputs, targets, 0.0f, loss_out);
}

int zp_run_micro_batch(zp_run* r, const int32_t* inputs, const int32_t* targets, float dloss, double* loss_out) {
  int G = r->layout.n_groups;
  int rc;
  if (r->grad_dt != r->ct)
    for (int g = 0; g < G; g++)
      if ((rc = r->ops->memset0(r->be, r->groups[g].ccopy_grad, (size_t)r->groups[g].info.padded * zp_dtype_size(r->ct)))) return rc;
  if ((rc = run_forward(r, inputs, targets, dloss, loss_out))) return rc;
  for (int g = G - 1; g >= 0; g--) {
    if ((rc = hook(r, r->strategy->pre_backward, g, "pre_backward"))) return rc;
    if ((rc = param_view(r, g))) return rc;
    if ((rc = grad_view(r, g))) return rc;
    int t = r->groups[g].info.tied_to;
    if (t >= 0 && ((rc = param_view(r, t)) || (rc = grad_view(r, t)))) return rc;
    double t0 = zp_now_us();
    if (r->acts.recompute && g >= 1 && g <= r->layout.s.L) { /* refill the block's slot from its saved input */
      if ((rc = zp_run_forward_group(r, &r->acts, g, 0.0f))) return rc;
      zp_trace_span(ZP_TR_COMPUTE, "recompute", g, t0);
      t0 = zp_now_us();
    }
    /* train.grad_overwrite: the step's first backward of a stale group writes its gradients
     * instead of adding to zeros; a strategy that gave another GRAD view gets it zeroed */
    zp_group_rt* Gs = &r->groups[g];
    const int ow = Gs->grad_stale && r->vgrad[g] == Gs->info.buf[ZP_CAT_GRAD];
    if (ow) Gs->grad_stale = 0;
    else if ((rc = grad_materialize(r, Gs))) return rc;
    if (ow && (rc = r->ops->grad_overwrite(r->be, 1))) return rc;
    rc = r->tp.size > 1 ? zp_model_tp_backward_group(&r->layout, r->ops, r->be, &r->acts, &r->views, g, &r->tp)
                        : zp_model_backward_group(&r->layout, r->ops, r->be, &r->acts, &r->views, g);
    if (ow) {
      int rc2 = r->ops->grad_overwrite(r->be, 0);
      if (!rc) rc = rc2;
    }
    if (rc) return rc;
    zp_trace_span(ZP_TR_COMPUTE, "backward", g, t0);
    if (r->grad_dt != r->ct) {
      zp_group_rt* Gr = &r->groups[g];
      if (!Gr->view[1]) {
        rerr(r, "internal: group %d has no GRAD view after backward", g);
        return ZP_E_INTERNAL;
      }
      rc = r->ops->accumulate(r->be, Gr->view[1], r->grad_dt, Gr->ccopy_grad, r->ct, (size_t)Gr->info.padded, 1.0f);
      if (rc) return rc;
    }
    if ((rc = hook(r, r->strategy->grads_ready, g, "grads_ready"))) return rc;
  }
  return ZP_OK;
}

int zp_run_step(zp_run* r, float lr) {
  r->opt.lr = lr;
  if (!r->strategy->step) {
    rerr(r, "strategy has no step method");
    return ZP_E_ABI;
  }
  int rc = zp_run_grads_materialize(r); /* a group with no backward this step adds zeros */
  if (rc) return rc;
  r->in_step = 1;
  r->opt.began = 0;
  rc = r->strategy->step(r->strategy_state);
  r->in_step = 0;
  if (rc && !r->err[0]) rerr(r, "step failed with status %d", rc);
  if (!rc && zp_ar_outstanding(&r->arq)) { /* 1.9: a started allreduce must be waited for in the step */
    rerr(r, "strategy %s: its step returned with %llu started collective(s) not waited for (wait_started)",
         zp_cfg_str(r->cfg, "zero.plugin"), (unsigned long long)zp_ar_outstanding(&r->arq));
    rc = ZP_E_INVALID;
  }
  for (int i = 0; !rc && i < 2; i++)
    if (r->tier_ops[i] && r->tier_ops[i]->step_end && (rc = r->tier_ops[i]->step_end(r->tier_state[i])) && !r->err[0])
      rerr(r, "tier step_end failed with status %d", rc);
  return rc;
}

int zp_run_get_group_params(zp_run* r, int g, float* out) {
  int frc = zp_run_fence_all(r);
  if (frc) return frc;
  zp_group_info* in = &r->groups[g].info;
  int c = holds(r, in, ZP_CAT_MASTER) ? ZP_CAT_MASTER : ZP_CAT_PARAM;
  zp_dtype dt = in->dtype[c];
  uint64_t n = in->place[c].sharded ? in->shard_len : in->padded;
  size_t es = zp_dtype_size(dt);
  void* full = malloc((size_t)in->padded * es);
  void* dev_full = NULL;
  int rc = full ? ZP_OK : ZP_E_NOMEM;
  if (!rc && in->place[c].sharded) {
    /* gather through device memory (collectives take device buffers) */
    rc = r->ops->alloc(r->be, (size_t)in->padded * es, &dev_full);
    void* mine = dev_full ? (char*)dev_full + (size_t)in->shard_off * es : NULL;
    if (!rc && in->place[c].tier == ZP_TIER_GPU) rc = r->ops->copy_d2d(r->be, mine, in->buf[c], (size_t)n * es);
    else if (!rc) {
      rc = zp_run_state_get(r, g, (zp_category)c, 0, full, (size_t)n * es);
      if (!rc) rc = r->ops->copy_h2d(r->be, mine, full, (size_t)n * es);
    }
    if (!rc) rc = h_allgather(r->hctx, dev_full, mine, (size_t)n, dt);
    if (!rc) rc = r->ops->copy_d2h(r->be, full, dev_full, (size_t)in->padded * es);
    if (dev_full) r->ops->free(r->be, dev_full);
  } else if (!rc) {
    rc = zp_run_state_get(r, g, (zp_category)c, 0, full, (size_t)in->padded * es);
  }
  if (!rc) host_cast(out, ZP_F32, full, dt, (size_t)in->padded);
  free(full);
  return rc;
}

/* groups a and b are placed alike (every category's sharding and tier) */
static int same_place(const zp_run* r, int a, int b) {
  for (int c = 0; c < 4; c++) {
    const zp_placement* x = &r->groups[a].info.place[c];
    const zp_placement* y = &r->groups[b].info.place[c];
    if (x->sharded != y->sharded || x->tier != y->tier) return 0;
  }
  return 1;
}

void zp_run_print_plan(zp_run* r, FILE* f) {
  char b[64];
  fprintf(f, "model: GPT-2 L=%d heads=%d d=%d seq=%d vocab=%d (padded %d): %llu parameters (%s)\n", r->layout.s.L,
          r->layout.s.NH, r->layout.s.C, r->layout.s.maxT, r->layout.s.V, r->layout.s.Vp,
          (unsigned long long)r->layout.total_params, zp_fmt_bytes((double)r->layout.total_params, b, sizeof b));
  fprintf(f, "world %d, rank %d, strategy %s, dtypes PARAM %s GRAD %s compute %s, micro-batch %d x %d\n", r->world, r->rank,
          zp_cfg_str(r->cfg, "zero.plugin"), zp_dtype_name(r->param_dt), zp_dtype_name(r->grad_dt), zp_dtype_name(r->ct),
          r->B, r->T);
  if (r->tp.size > 1)
    fprintf(f, "tensor parallel: tp %d (this is tp rank %d): %d of %d heads, %d of %d MLP columns, vocabulary rows [%d, %d) of %d; "
            "group sizes below are this rank's slices\n", r->tp.size, r->tp.rank, r->layout.s.NH / r->tp.size, r->layout.s.NH,
            4 * r->layout.s.C / r->tp.size, 4 * r->layout.s.C, r->tp.v0, r->tp.v0 + r->tp.Vl, r->layout.s.Vp);
  fprintf(f, "placement (S = sharded over %d ranks, R = replicated; tier):\n", r->world);
  fprintf(f, "  %-10s %12s %12s  %-10s %-10s %-10s %-10s\n", "group", "params", "padded", "PARAM", "GRAD", "MASTER", "OPTIM");
  int G = r->layout.n_groups;
  int skipping = 0;
  for (int g = 0; g < G; g++) {
    /* long models: the first and last groups, and both sides of every change of placement
     * (a partial offload's boundary), with "..." for each run of identical rows left out */
    if (G > 8 && g > 2 && g < G - 2 && same_place(r, g, g - 1) && same_place(r, g, g + 1)) {
      if (!skipping) fprintf(f, "  %-10s\n", "...");
      skipping = 1;
      continue;
    }
    skipping = 0;
    zp_group_info* in = &r->groups[g].info;
    char cell[4][16];
    for (int c = 0; c < 4; c++) {
      if (c == ZP_CAT_MASTER && !in->bytes[c]) snprintf(cell[c], 16, "-");
      else snprintf(cell[c], 16, "%s/%s", in->place[c].sharded ? "S" : "R", zp_tier_name(in->place[c].tier));
    }
    fprintf(f, "  %-10s %12llu %12llu  %-10s %-10s %-10s %-10s\n", r->gplans[g].name, (unsigned long long)in->numel,
            (unsigned long long)in->padded, cell[0], cell[1], cell[2], cell[3]);
  }
  zp_ledger_print(&r->ledger, f, "memory per rank");
}
