/* offload_cpu: the host-RAM tier (ZeRO-Offload). Its plan moves MASTER and OPTIM (and, as
 * the parameter tier with stage 3, PARAM) to the cpu tier; the core then allocates them in host
 * memory and hands every optimizer update of those groups to update() here:
 *   gradient range device -> page-locked staging (chunks of `chunk_elems`), vectorised AdamW
 *   on the host (core/adamw_cpu.c compiled into this plugin: AVX-512 / AVX2 / scalar, OpenMP,
 *   bf16 conversions fused), new parameters staging -> device.
 * Gradient streaming (offload.optimizer.stream_grads, ABI 1.5): when a strategy reports a
 * group's final gradient (grad_ready), its device -> host copy starts at once on the backend's
 * copy stream (copy_async) into a per-group host buffer, overlapping the rest of the backward;
 * update() then runs AdamW straight from that buffer. Unreported ranges are copied at update.
 * Parameter offload (offload.param.plugin = "offload_cpu", stage 3 only, with the optimizer here
 * at ratio 1): the plan puts the sharded PARAM shards in host memory too; the AdamW writes them
 * in place (param_host ranges) and stage 3 copies each shard to the device for its gathers.
 * Delayed parameter update (offload.optimizer.delayed_update, after delayed_update_warmup
 * steps): update(g) of step t first waits for group g's host AdamW of step t-1 and copies its
 * parameters to the device, then copies step t's gradient to per-group host staging and queues
 * its AdamW on a worker thread, which runs while step t+1 computes (on parameters one update
 * behind: P_t = AdamW(P_t-1, g(P_t-2))). The parameters go to the device on the copy stream,
 * the compute stream waiting for them (copy_wait device 1), the worker for the copy before it
 * reuses their buffer. Each group has two host gradient buffers: the one its queued job reads
 * and the one the next step's gradient streams into. sync() waits (flush 0) or also applies the
 * pending parameters (flush 1: checkpoints, validation).
 * Invariants:
 * - The arithmetic is the CPU backend's AdamW bit for bit, so an offloaded run on the CPU
 *   backend equals the run without offload exactly (tests/integration/offload.sh), and a
 *   delayed run equals the reference recurrence above exactly (tests/unit/test_offload_dpu.c).
 * - Host memory is capped by offload.optimizer.max_host_gb: plan() refuses a placement whose
 *   host bytes (state + staging) exceed it, with the numbers, before anything is allocated.
 * - Every transfer is reported to the ledger (note_io), so a tier that leaves state in place
 *   cannot pass the tests.
 * - Only the worker thread touches a queued group's master/m/v; the core reads them only after
 *   sync() (state reads, checkpoints go through it). The host table is used from the calling
 *   thread only (errors of the worker are reported at the next update/sync); the worker calls
 *   only the backend's copy_wait, which any thread may call.
 * - A host buffer is never written while a copy reads it or the worker uses it, nor read before
 *   its copy was waited for (the CPU backend defers copies until waited for, so a missing wait
 *   fails the CPU tests); close() waits for every copy this tier issued. */
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adamw_cpu.h"
#include "../common/copy_async.h"
#include "../common/offload_ratio.h"
#include "zp/zp_plugin.h"


enum { J_IDLE, J_QUEUED, J_PENDING }; /* PENDING: parameters computed, not yet on the device */

typedef struct {
  int state;
  zp_optim_range u;      /* copy of the update (pieces point at the arrays below) */
  uint64_t* piece_end;
  unsigned char* piece_decay;
  int piece_cap;
  void* pbuf;            /* host parameters out (held elements, pdt) */
  size_t pbuf_bytes;
  uint64_t h2d;          /* ticket of the copy of pbuf to the device (0: none) */
} oc_job;

/* a group's host gradients: held elements (gdt), indexed by offset in this rank's holding */
typedef struct {
  void* buf[2];
  size_t bytes;          /* of each */
  int nbuf;              /* 1 (synchronous update) or 2 (delayed: a queued job may read one) */
  int busy;              /* delayed: the buffer the group's last job reads (-1: none) */
  /* the last range streamed in (grad_ready) */
  int valid, idx, step_t;
  uint64_t state_off, count, ticket;
  const void* src;
  zp_dtype gdt;
} oc_grads;

/* one AdamW for the worker: elements [c0, c0+n) of range u, gradient at g, parameters to p;
 * group >= 0: a delayed update (the group's job becomes PENDING), else a pipeline chunk;
 * wait: a copy to wait for first (its parameter buffer still on its way to the device) */
typedef struct {
  int group;
  const zp_optim_range* u;
  uint64_t c0, n;
  const void* g;
  void* p;
  uint64_t wait;
} oc_task;

typedef struct {
  const zp_host* h;
  int threads;
  int overlap;     /* synchronous update: transfers of chunk k+-1 run while the worker updates chunk k */
  void* gstage[2]; /* page-locked staging slots: gradients (gdt) */
  void* pstage[2]; /* and parameters (pdt) */
  size_t stage_bytes;
  /* delayed update */
  int dpu;
  int64_t warmup;
  int n_groups;
  oc_job* jobs;
  /* host gradient buffers (stream_grads or the delayed update), per group */
  int stream;
  oc_grads* grads;
  /* the worker thread and its task queue */
  oc_task* queue;  /* ring, capacity qcap */
  int qcap, qhead, qlen;
  long long chunks_done;
  pthread_t worker;
  int worker_on, stop;
  pthread_mutex_t mu;
  pthread_cond_t cv_work, cv_done;
  int werr;        /* first worker failure (status) and its message */
  char werr_msg[600];
} oc_t;

static int which(const zp_host* h, int* opt, int* par) {
  const char* a = "none";
  const char* b = "none";
  h->config_string(h->ctx, "offload.optimizer.plugin", &a);
  h->config_string(h->ctx, "offload.param.plugin", &b);
  *opt = strcmp(a, "offload_cpu") == 0;
  *par = strcmp(b, "offload_cpu") == 0;
  return ZP_OK;
}

/* elements per staged transfer (offload.optimizer.chunk_elems; two slots each way) */
static uint64_t chunk_elems(const zp_host* h) {
  int64_t c = 4 << 20;
  h->config_int(h->ctx, "offload.optimizer.chunk_elems", &c);
  return c > 0 ? (uint64_t)c : 1;
}

/* bytes per gradient and per parameter element (the core's rule: train.precision and
 * train.grad_accum_dtype) */
static void elem_bytes(const zp_host* h, double* gs, double* ps) {
  const char* prec = "fp32";
  const char* acc = "param";
  h->config_string(h->ctx, "train.precision", &prec);
  h->config_string(h->ctx, "train.grad_accum_dtype", &acc);
  *ps = strcmp(prec, "fp64") == 0 ? 8 : strcmp(prec, "bf16") == 0 ? 2 : 4;
  *gs = *ps == 8 ? 8 : strcmp(acc, "fp32") == 0 ? 4 : *ps;
}

/* host gradient buffers per group: two with the delayed update, one when streaming, else none */
static int grad_buffers(const zp_host* h) {
  int dpu = 0, stream = 1;
  h->config_bool(h->ctx, "offload.optimizer.delayed_update", &dpu);
  h->config_bool(h->ctx, "offload.optimizer.stream_grads", &stream);
  return dpu ? 2 : stream ? 1 : 0;
}

static size_t stage_elems(const zp_host* h, const zp_plan* p) {
  uint64_t mx = 0, ch = chunk_elems(h);
  for (int g = 0; g < p->n_groups; g++) {
    uint64_t n = p->groups[g].place[ZP_CAT_OPTIM].sharded ? p->groups[g].padded / (uint64_t)p->world_size : p->groups[g].padded;
    if (n > mx) mx = n;
  }
  return (size_t)(mx < ch ? mx : ch);
}

/* MemAvailable from /proc/meminfo in bytes (0 if unknown) */
static double mem_available(void) {
  FILE* f = fopen("/proc/meminfo", "r");
  if (!f) return 0;
  char line[256];
  double kb = 0;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "MemAvailable: %lf kB", &kb) == 1) break;
  fclose(f);
  return kb * 1024.0;
}

static int oc_plan(const zp_host* h, zp_plan* p) {
  int opt, par;
  which(h, &opt, &par);
  if (par && !opt) {
    h->set_error(h->ctx, "offload.param.plugin = \"offload_cpu\" needs offload.optimizer.plugin = \"offload_cpu\" too: the "
                 "host AdamW writes the offloaded parameter shards in place (the device optimizer cannot reach them)");
    return ZP_E_INVALID;
  }
  unsigned char* take = calloc((size_t)(p->n_groups > 0 ? p->n_groups : 1), 1);
  if (!take) return ZP_E_NOMEM;
  double ratio = 1.0;
  if (opt && zp_offload_pick(h, p, take, &ratio)) {
    free(take);
    return ZP_E_INVALID;
  }
  if (par && ratio < 1.0) {
    free(take);
    h->set_error(h->ctx, "offload.param.plugin = \"offload_cpu\" with offload.optimizer.ratio = %g: a group whose parameters "
                 "are on the host needs its optimizer state there too; use ratio = 1 with parameter offload", ratio);
    return ZP_E_INVALID;
  }
  int dpu_on = 0;
  h->config_bool(h->ctx, "offload.optimizer.delayed_update", &dpu_on);
  if (opt && dpu_on && ratio < 1.0) {
    free(take);
    h->set_error(h->ctx, "offload.optimizer.delayed_update with offload.optimizer.ratio = %g: the groups kept on the device would "
                 "update without delay while the host's lag one step (mixed staleness); use ratio = 1 with the delayed "
                 "update, or the synchronous update with a partial offload", ratio);
    return ZP_E_INVALID;
  }
  double host = 0;
  for (int g = 0; g < p->n_groups; g++) {
    zp_group_plan* gp = &p->groups[g];
    if (opt && take[g]) {
      gp->place[ZP_CAT_MASTER].tier = ZP_TIER_CPU;
      gp->place[ZP_CAT_OPTIM].tier = ZP_TIER_CPU;
      double n = gp->place[ZP_CAT_OPTIM].sharded ? (double)gp->padded / p->world_size : (double)gp->padded;
      host += 12.0 * n; /* fp32 master + m + v */
    }
  }
  host += 4.0 * 4.0 * (double)stage_elems(h, p); /* staging: two slots each way, at most fp32 */
  int dpu = 0;
  h->config_bool(h->ctx, "offload.optimizer.delayed_update", &dpu);
  double gs, ps;
  elem_bytes(h, &gs, &ps);
  /* per held element: the host gradient buffers, and the delayed update's parameter buffer */
  double per = grad_buffers(h) * gs + (dpu ? ps : 0);
  double buf_bytes = 0;
  for (int g = 0; opt && g < p->n_groups; g++)
    if (take[g]) buf_bytes += per * (p->groups[g].place[ZP_CAT_OPTIM].sharded ? (double)p->groups[g].padded / p->world_size
                                                                             : (double)p->groups[g].padded);
  host += buf_bytes;
  /* parameter offload (stage 3): the sharded PARAM shards live here; the strategy copies each to
   * the device for its gathers. Groups it keeps replicated (zero.persist_threshold) stay. */
  double par_bytes = 0;
  for (int g = 0; par && g < p->n_groups; g++) {
    zp_group_plan* gp = &p->groups[g];
    if (!gp->place[ZP_CAT_PARAM].sharded) continue;
    gp->place[ZP_CAT_PARAM].tier = ZP_TIER_CPU;
    par_bytes += ps * (double)gp->padded / p->world_size;
  }
  host += par_bytes;
  free(take);
  /* every rank of a run lives on this host (the launcher is single-host): all of them together
   * must fit in the memory available now */
  double avail = mem_available();
  if (avail > 0 && host * p->world_size > avail) {
    h->set_error(h->ctx, "the optimizer state needs %.3g GB of host memory per rank x %d rank%s = %.3g GB (fp32 master + "
                 "Adam m, v: 12 bytes x parameters held, plus staging%s), but this machine has %.3g GB available "
                 "(MemAvailable in /proc/meminfo): use more ranks with a sharding stage, a smaller model, "
                 "offload.optimizer.ratio < 1, offload.optimizer.stream_grads = false, or offload_nvme",
                 host / 1e9, p->world_size, p->world_size == 1 ? "" : "s", host * p->world_size / 1e9,
                 par ? " and the offloaded parameter shards" : "", avail / 1e9);
    return ZP_E_NOMEM;
  }
  double cap = 0;
  h->config_float(h->ctx, "offload.optimizer.max_host_gb", &cap);
  if (cap > 0 && host > cap * 1e9) {
    h->set_error(h->ctx, "the optimizer state needs %.3g GB of host memory per rank (fp32 master + Adam m, v: 12 bytes x "
                 "parameters held, plus %.3g GB staging and host gradient buffers%s%s), more than "
                 "offload.optimizer.max_host_gb = %g",
                 host / 1e9, (16.0 * (double)stage_elems(h, p) + buf_bytes) / 1e9, par ? " and the parameter shards" : "",
                 dpu ? ": the delayed update keeps two gradient buffers and the parameters per group"
                     : grad_buffers(h) ? ": offload.optimizer.stream_grads = false saves one gradient buffer" : "",
                 cap);
    return ZP_E_NOMEM;
  }
  return ZP_OK;
}

/* ---------------- the AdamW over staged data ---------------- */

/* AdamW over elements [c0, c0+n) of range u: grad at g (gdt), new parameters to pout (pdt) */
static int adam_span(const oc_t* s, const zp_optim_range* u, uint64_t c0, uint64_t n, const void* g, void* pout,
                     char* msg, size_t msglen) {
  size_t gs = zp_dtype_size(u->gdt), ps = zp_dtype_size(u->pdt);
  uint64_t pos = u->first + c0, end = pos + n;
  int piece = 0;
  while (pos < end) {
    while (piece < u->n_pieces && u->piece_end[piece] <= pos) piece++;
    uint64_t pe = piece < u->n_pieces && u->piece_end[piece] < end ? u->piece_end[piece] : end;
    int decay = piece < u->n_pieces ? u->piece_decay[piece] : 0;
    zp_adamw_hparams hp = {u->hp.lr, u->hp.beta1, u->hp.beta2, u->hp.eps, decay ? u->hp.weight_decay : 0.0f,
                           u->hp.grad_scale, u->hp.step_t};
    uint64_t k = pos - u->first; /* offset in the range */
    uint64_t kc = k - c0;         /* offset in the span */
    int rc = zp_adamw_cpu(pout ? (char*)pout + kc * ps : NULL, pout ? u->pdt : ZP_F32, u->master + k,
                          (const char*)g + kc * gs, u->gdt, u->m + k, u->v + k, (size_t)(pe - pos), &hp, s->threads);
    if (rc) {
      const char* e = zp_adamw_isa_error(ZP_ISA_AUTO);
      snprintf(msg, msglen, "%s", e ? e : "CPU AdamW failed");
      return rc;
    }
    pos = pe;
  }
  return ZP_OK;
}

/* ---------------- the worker: AdamW off the calling thread ---------------- */

static void* worker_main(void* arg) {
  oc_t* s = arg;
  pthread_mutex_lock(&s->mu);
  for (;;) {
    while (!s->stop && s->qlen == 0) pthread_cond_wait(&s->cv_work, &s->mu);
    if (s->qlen == 0) break; /* stop, nothing left */
    oc_task t = s->queue[s->qhead];
    s->qhead = (s->qhead + 1) % s->qcap;
    s->qlen--;
    pthread_mutex_unlock(&s->mu);
    char msg[512] = "";
    int rc = ZP_OK;
    if ((rc = zp_copy_wait(s->h, &t.wait, 0))) /* the parameter buffer is free once copied out */
      snprintf(msg, sizeof msg, "waiting for the parameter copy to the device failed");
    if (!rc) rc = adam_span(s, t.u, t.c0, t.n, t.g, t.p, msg, sizeof msg);
    pthread_mutex_lock(&s->mu);
    if (rc && !s->werr) {
      s->werr = rc;
      snprintf(s->werr_msg, sizeof s->werr_msg, "%s update of group %d: %s", t.group >= 0 ? "delayed" : "host", t.u->group, msg);
    }
    if (t.group >= 0) s->jobs[t.group].state = J_PENDING;
    else s->chunks_done++;
    pthread_cond_broadcast(&s->cv_done);
  }
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

/* queue a task (the queue holds at most one delayed job per group plus one pipeline chunk) */
static void push_task(oc_t* s, oc_task t) {
  pthread_mutex_lock(&s->mu);
  s->queue[(s->qhead + s->qlen) % s->qcap] = t;
  s->qlen++;
  pthread_cond_signal(&s->cv_work);
  pthread_mutex_unlock(&s->mu);
}

/* wait until `want` pipeline chunks are done in total; report a worker failure */
static int wait_chunks(oc_t* s, long long want) {
  pthread_mutex_lock(&s->mu);
  while (s->chunks_done < want && !s->werr) pthread_cond_wait(&s->cv_done, &s->mu);
  int rc = s->werr;
  pthread_mutex_unlock(&s->mu);
  if (rc) s->h->set_error(s->h->ctx, "%s", s->werr_msg);
  return rc;
}

/* wait until group g (or every group, g < 0) has no queued work; report a worker failure */
static int wait_jobs(oc_t* s, int g) {
  pthread_mutex_lock(&s->mu);
  for (;;) {
    int busy = 0;
    for (int i = g < 0 ? 0 : g; i < (g < 0 ? s->n_groups : g + 1); i++) busy |= s->jobs[i].state == J_QUEUED;
    if (!busy) break;
    pthread_cond_wait(&s->cv_done, &s->mu);
  }
  int rc = s->werr;
  pthread_mutex_unlock(&s->mu);
  if (rc) s->h->set_error(s->h->ctx, "%s", s->werr_msg);
  return rc;
}

/* does update u write its parameters to host memory (parameter offload, ABI 1.5)? */
static int param_host(const zp_optim_range* u) {
  return u->struct_size >= offsetof(zp_optim_range, param_host) + sizeof u->param_host && u->param_host;
}

/* the pending parameters of group g go to the device, on the copy stream; the compute stream
 * waits for them, the worker before it writes pbuf again (the task's wait). With parameter
 * offload they go into the host PARAM shard instead (the strategy copies it for its gathers,
 * none of which is in flight during the step). */
static int apply_pending(oc_t* s, oc_job* j) {
  if (j->state != J_PENDING) return ZP_OK;
  j->state = J_IDLE;
  if (!j->u.param_out) return ZP_OK;
  size_t bytes = (size_t)j->u.count * zp_dtype_size(j->u.pdt);
  if (param_host(&j->u)) {
    memcpy(j->u.param_out, j->pbuf, bytes);
    return ZP_OK;
  }
  int rc = zp_copy_start(s->h, j->u.param_out, j->pbuf, bytes, 1, &j->h2d);
  if (!rc) rc = zp_copy_wait(s->h, &j->h2d, 1);
  if (!rc) s->h->note_io(s->h->ctx, ZP_TIER_CPU, 0, bytes);
  return rc;
}

/* wait for every copy this tier started (before its buffers are reused or freed) */
static int wait_copies(oc_t* s) {
  int rc = ZP_OK;
  for (int g = 0; g < s->n_groups; g++) {
    int r1 = s->grads ? zp_copy_wait(s->h, &s->grads[g].ticket, 0) : ZP_OK;
    int r2 = s->jobs ? zp_copy_wait(s->h, &s->jobs[g].h2d, 0) : ZP_OK;
    if (!rc) rc = r1 ? r1 : r2;
  }
  return rc;
}

static void oc_close(void* st) {
  oc_t* s = st;
  if (!s) return;
  (void)wait_copies(s);
  if (s->worker_on) {
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_broadcast(&s->cv_work);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->worker, NULL);
  }
  if (s->worker_on) {
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv_work);
    pthread_cond_destroy(&s->cv_done);
  }
  for (int g = 0; s->jobs && g < s->n_groups; g++) {
    oc_job* j = &s->jobs[g];
    if (j->pbuf) s->h->free(s->h->ctx, ZP_CAT_BUFFER, ZP_TIER_CPU, j->pbuf, j->pbuf_bytes);
    free(j->piece_end);
    free(j->piece_decay);
  }
  for (int g = 0; s->grads && g < s->n_groups; g++)
    for (int i = 0; i < 2; i++)
      if (s->grads[g].buf[i]) s->h->free(s->h->ctx, ZP_CAT_BUFFER, ZP_TIER_CPU, s->grads[g].buf[i], s->grads[g].bytes);
  free(s->grads);
  free(s->jobs);
  free(s->queue);
  for (int i = 0; i < 2; i++) {
    if (s->gstage[i]) s->h->free(s->h->ctx, ZP_CAT_BUFFER, ZP_TIER_CPU, s->gstage[i], s->stage_bytes);
    if (s->pstage[i]) s->h->free(s->h->ctx, ZP_CAT_BUFFER, ZP_TIER_CPU, s->pstage[i], s->stage_bytes);
  }
  free(s);
}

static int oc_open(const zp_host* h, void** state) {
  oc_t* s = calloc(1, sizeof *s);
  if (!s) return ZP_E_NOMEM;
  s->h = h;
  *state = s;
  int64_t th = 0;
  h->config_int(h->ctx, "offload.optimizer.threads", &th);
  s->threads = (int)th;
  h->config_bool(h->ctx, "offload.optimizer.delayed_update", &s->dpu);
  h->config_int(h->ctx, "offload.optimizer.delayed_update_warmup", &s->warmup);
  s->n_groups = h->n_groups;
  /* staging sized for the largest range one update can get, capped at one chunk */
  uint64_t mx = 0;
  s->overlap = 1;
  h->config_bool(h->ctx, "offload.optimizer.overlap", &s->overlap);
  s->qcap = s->n_groups + 2;
  if (!(s->queue = calloc((size_t)s->qcap, sizeof *s->queue))) return ZP_E_NOMEM;
  s->stream = 1;
  h->config_bool(h->ctx, "offload.optimizer.stream_grads", &s->stream);
  int nbuf = grad_buffers(h);
  if (s->dpu && !(s->jobs = calloc((size_t)s->n_groups, sizeof *s->jobs))) return ZP_E_NOMEM;
  if (nbuf && !(s->grads = calloc((size_t)s->n_groups, sizeof *s->grads))) return ZP_E_NOMEM;
  for (int g = 0; g < h->n_groups; g++) {
    zp_group_info in;
    int rc = h->group_info(h->ctx, g, &in);
    if (rc) return rc;
    uint64_t n = in.place[ZP_CAT_OPTIM].sharded ? in.shard_len : in.padded;
    if (n > mx) mx = n;
    if (in.place[ZP_CAT_OPTIM].tier != ZP_TIER_CPU || n == 0) continue;
    if (nbuf) {
      oc_grads* gr = &s->grads[g];
      gr->nbuf = nbuf;
      gr->busy = -1;
      gr->bytes = (size_t)n * zp_dtype_size(in.dtype[ZP_CAT_GRAD]);
      for (int i = 0; i < nbuf && !rc; i++)
        rc = h->alloc(h->ctx, ZP_CAT_BUFFER, ZP_TIER_CPU, gr->bytes, "offload_cpu host gradients", &gr->buf[i]);
    }
    if (s->dpu && !rc) {
      oc_job* j = &s->jobs[g];
      j->pbuf_bytes = (size_t)n * zp_dtype_size(in.dtype[ZP_CAT_PARAM]);
      rc = h->alloc(h->ctx, ZP_CAT_BUFFER, ZP_TIER_CPU, j->pbuf_bytes, "offload_cpu delayed-update parameters", &j->pbuf);
    }
    if (rc) return rc;
  }
  if (mx > chunk_elems(h)) mx = chunk_elems(h);
  s->stage_bytes = (size_t)mx * 4;
  int rc = ZP_OK;
  for (int i = 0; i < 2 && !rc; i++) {
    rc = h->alloc(h->ctx, ZP_CAT_BUFFER, ZP_TIER_CPU, s->stage_bytes, "offload_cpu gradient staging", &s->gstage[i]);
    if (!rc) rc = h->alloc(h->ctx, ZP_CAT_BUFFER, ZP_TIER_CPU, s->stage_bytes, "offload_cpu parameter staging", &s->pstage[i]);
  }
  if (rc) return rc;
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv_work, NULL);
  pthread_cond_init(&s->cv_done, NULL);
  if (pthread_create(&s->worker, NULL, worker_main, s)) {
    h->set_error(h->ctx, "cannot start the host AdamW thread");
    return ZP_E_NOMEM;
  }
  s->worker_on = 1;
  return ZP_OK;
}

/* ---------------- gradients streamed in during the backward ---------------- */

/* a strategy's final gradient range: start its copy into the group's free host buffer */
static int oc_grad_ready(void* st, const zp_grad_range* r) {
  oc_t* s = st;
  const zp_host* h = s->h;
  if (!s->stream || !s->grads || r->group < 0 || r->group >= s->n_groups || !s->grads[r->group].nbuf) return ZP_OK;
  oc_grads* gr = &s->grads[r->group];
  size_t gs = zp_dtype_size(r->gdt);
  if ((size_t)(r->state_off + r->count) * gs > gr->bytes) {
    h->set_error(h->ctx, "group %d: gradient range [%llu,+%llu) does not fit its host buffer (%zu bytes)", r->group,
                 (unsigned long long)r->state_off, (unsigned long long)r->count, gr->bytes);
    return ZP_E_INTERNAL;
  }
  int idx = gr->nbuf == 2 && gr->busy == 0 ? 1 : 0; /* never the buffer a queued job reads */
  size_t bytes = (size_t)r->count * gs;
  int rc = zp_copy_start(h, (char*)gr->buf[idx] + (size_t)r->state_off * gs, r->grad, bytes, 0, &gr->ticket);
  if (rc) return rc;
  h->note_io(h->ctx, ZP_TIER_CPU, 1, bytes);
  gr->valid = 1;
  gr->idx = idx;
  gr->step_t = r->step_t;
  gr->state_off = r->state_off;
  gr->count = r->count;
  gr->src = r->grad;
  gr->gdt = r->gdt;
  return ZP_OK;
}

/* the host copy of u's gradient if it was streamed in for this step (waited for), else NULL;
 * *idx (if idx): its buffer */
static const void* take_streamed(oc_t* s, const zp_optim_range* u, int* idx, int* rc) {
  *rc = ZP_OK;
  oc_grads* gr = s->grads ? &s->grads[u->group] : NULL;
  if (!gr || !gr->valid) return NULL;
  gr->valid = 0; /* used now, or stale */
  size_t gs = zp_dtype_size(u->gdt);
  if (gr->step_t != u->hp.step_t || gr->gdt != u->gdt || u->state_off < gr->state_off ||
      u->state_off + u->count > gr->state_off + gr->count ||
      (const char*)u->grad != (const char*)gr->src + (size_t)(u->state_off - gr->state_off) * gs)
    return NULL;
  if ((*rc = zp_copy_wait(s->h, &gr->ticket, 0))) return NULL;
  if (idx) *idx = gr->idx;
  return (const char*)gr->buf[gr->idx] + (size_t)u->state_off * gs;
}

/* queue the AdamW of range u on the worker; the device keeps its parameters until the next call */
static int update_delayed(oc_t* s, const zp_optim_range* u) {
  const zp_host* h = s->h;
  oc_job* j = &s->jobs[u->group];
  oc_grads* gr = s->grads ? &s->grads[u->group] : NULL;
  size_t gs = zp_dtype_size(u->gdt);
  if (!j->pbuf || !gr || gr->nbuf != 2 || (size_t)(u->state_off + u->count) * gs > gr->bytes ||
      (size_t)u->count * zp_dtype_size(u->pdt) > j->pbuf_bytes) {
    h->set_error(h->ctx, "group %d: delayed update of %llu elements does not fit its host buffers", u->group,
                 (unsigned long long)u->count);
    return ZP_E_INTERNAL;
  }
  int rc = wait_jobs(s, u->group); /* step t-1's AdamW of this group: its gradient buffer is free after */
  if (!rc) rc = apply_pending(s, j); /* step t-1's parameters go to the device now */
  if (rc) return rc;
  int idx = 0;
  const void* hg = take_streamed(s, u, &idx, &rc);
  if (rc) return rc;
  if (!hg) { /* not streamed in: copy it now */
    idx = gr->busy == 0 ? 1 : 0;
    hg = (const char*)gr->buf[idx] + (size_t)u->state_off * gs;
    size_t gb = (size_t)u->count * gs;
    if ((rc = h->dev->copy_d2h(h->devb, (void*)hg, u->grad, gb))) return rc;
    h->note_io(h->ctx, ZP_TIER_CPU, 1, gb);
  }
  gr->busy = idx;
  if (u->n_pieces > j->piece_cap) {
    uint64_t* pe = realloc(j->piece_end, (size_t)u->n_pieces * sizeof *pe);
    if (pe) j->piece_end = pe;
    unsigned char* pd = realloc(j->piece_decay, (size_t)u->n_pieces);
    if (pd) j->piece_decay = pd;
    if (!pe || !pd) return ZP_E_NOMEM;
    j->piece_cap = u->n_pieces;
  }
  memcpy(j->piece_end, u->piece_end, (size_t)u->n_pieces * sizeof *j->piece_end);
  memcpy(j->piece_decay, u->piece_decay, (size_t)u->n_pieces);
  j->u = *u;
  j->u.piece_end = j->piece_end;
  j->u.piece_decay = j->piece_decay;
  j->u.grad = NULL; /* device pointer: the worker uses the host buffer */
  j->state = J_QUEUED;
  oc_task t = {u->group, &j->u, 0, u->count, hg, u->param_out ? j->pbuf : NULL, j->h2d};
  push_task(s, t);
  return ZP_OK;
}

static int oc_sync(void* st, int flush, int* wrote) {
  oc_t* s = st;
  if (!s->dpu) return ZP_OK;
  int rc = wait_jobs(s, -1);
  for (int g = 0; !rc && flush && g < s->n_groups; g++) {
    if (s->jobs[g].state == J_PENDING && s->jobs[g].u.param_out) *wrote = 1;
    rc = apply_pending(s, &s->jobs[g]);
  }
  return rc;
}

static int oc_step_end(void* st) {
  oc_t* s = st;
  if (!s->dpu) return ZP_OK;
  pthread_mutex_lock(&s->mu);
  int rc = s->werr;
  pthread_mutex_unlock(&s->mu);
  if (rc) s->h->set_error(s->h->ctx, "%s", s->werr_msg);
  return rc;
}

static int oc_update(void* st, const zp_optim_range* u) {
  oc_t* s = st;
  const zp_host* h = s->h;
  if (!u->master || !u->m || !u->v) {
    h->set_error(h->ctx, "group %d: optimizer state is not in host memory", u->group);
    return ZP_E_INTERNAL;
  }
  if (s->dpu && (int64_t)u->hp.step_t > s->warmup) return update_delayed(s, u);
  if (s->dpu) { /* warm-up step: nothing may be pending, but make sure */
    int rc = wait_jobs(s, u->group);
    if (!rc) rc = apply_pending(s, &s->jobs[u->group]);
    if (rc) return rc;
  }
  /* chunk k: gradient D2H into slot k%2, AdamW on the worker into parameter slot k%2, H2D.
   * While the worker updates chunk k this thread copies chunk k+1's gradient in and chunk k-1's
   * parameters out (overlap 0: strictly one after the other). */
  size_t gs = zp_dtype_size(u->gdt), ps = zp_dtype_size(u->pdt);
  uint64_t chunk = s->stage_bytes / 4;
  uint64_t nch = (u->count + chunk - 1) / chunk;
  long long base = s->chunks_done; /* no other chunk is in flight between updates */
  long long pushed = 0;
  int rc = ZP_OK;
  int phost = param_host(u);
  /* streamed in during the backward: AdamW reads the host copy, no gradient copies here */
  const char* hg = take_streamed(s, u, NULL, &rc);
  if (rc) return rc;
#define CH_N(k) (u->count - (k) * chunk < chunk ? u->count - (k) * chunk : chunk)
#define GRAD(k) (hg ? (const void*)(hg + (k) * chunk * gs) : (const void*)s->gstage[(k) % 2])
#define D2H(k) (hg ? 0 : (rc = h->dev->copy_d2h(h->devb, s->gstage[(k) % 2], (const char*)u->grad + (k) * chunk * gs, (size_t)CH_N(k) * gs), \
                rc ? 0 : (h->note_io(h->ctx, ZP_TIER_CPU, 1, (uint64_t)CH_N(k) * gs), 0)))
#define H2D(k) (u->param_out && !phost ? (rc = h->dev->copy_h2d(h->devb, (char*)u->param_out + (k) * chunk * ps, s->pstage[(k) % 2], (size_t)CH_N(k) * ps), \
                rc ? 0 : (h->note_io(h->ctx, ZP_TIER_CPU, 0, (uint64_t)CH_N(k) * ps), 0)) : 0)
  if (nch) D2H(0);
  for (uint64_t k = 0; k < nch && !rc; k++) {
    /* parameter offload: AdamW writes the host PARAM shard in place, nothing goes to the device */
    void* pk = !u->param_out ? NULL : phost ? (void*)((char*)u->param_out + k * chunk * ps) : s->pstage[k % 2];
    oc_task t = {-1, u, k * chunk, CH_N(k), GRAD(k), pk, 0};
    push_task(s, t);
    pushed++;
    if (!s->overlap && (rc = wait_chunks(s, base + (long long)k + 1))) break;
    if (k + 1 < nch) D2H(k + 1);    /* slot (k+1)%2: chunk k-1's AdamW is done */
    if (!rc && k >= 1) H2D(k - 1); /* before chunk k+1's AdamW reuses its slot */
    int wrc = wait_chunks(s, base + (long long)k + 1);
    if (!rc) rc = wrc;
  }
  if (!rc && nch) H2D(nch - 1);
#undef CH_N
#undef GRAD
#undef D2H
#undef H2D
  if (rc) {
    wait_chunks(s, base + pushed); /* nothing may stay queued on staging we reuse */
    return rc;
  }
  return ZP_OK;
}

static const zp_tier_ops oc_ops = {
  sizeof(zp_tier_ops), ZP_TIER_CPU, oc_open, oc_close, oc_plan, oc_update, oc_step_end, NULL, NULL, oc_sync,
  oc_grad_ready,
  NULL, NULL, /* fetch: the shards are host buffers the core and stage 3 read directly */
};
static const zp_plugin_desc oc_desc = {
  sizeof(zp_plugin_desc), ZP_ABI_MAJOR, ZP_ABI_MINOR, "offload_cpu", "0.4.0", ZP_KIND_TIER,
  "host-RAM tier: fp32 master + Adam moments in host memory, vectorised CPU AdamW",
  NULL, &oc_ops, NULL, NULL,
};
ZP_PLUGIN_EXPORT const zp_plugin_desc* zp_plugin_entry(void) { return &oc_desc; }
