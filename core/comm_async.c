/* comm_async.c: all-reduces and reduce-scatters started now, finished later (host services
 * allreduce_start / reduce_scatter_start / wait_started, ABI 1.9), over the data-parallel
 * communicator.
 *
 * Where the communicator has allreduce_start, reduce_scatter_start and wait_started (the CUDA
 * plugin's NCCL communicator with ZP_CUDA_NCCL_ASYNC=1) the calls go through: the op runs on the
 * communicator's stream beside the backward and the wait orders the compute stream after it.
 * Elsewhere (CPU ranks' shared memory, a synchronous NCCL communicator) the start only records
 * the op and the wait runs it, with the plain collective, in ticket order: the result is the
 * same bits, and a strategy that reads the buffer before waiting sees the unreduced values
 * (so tests catch a missing wait). Any other collective first runs what is deferred
 * (zp_ar_flush), so every rank issues one order of collectives. The queue holds ZP_AR_QUEUE
 * ops; one more runs the oldest at its start (still in order).
 * Invariants: tickets count up from 1 per queue; waits cover every earlier ticket; deferred
 * ops run exactly once, in ticket order; nothing is allocated.
 */
#include "comm_async.h"

#include <stdio.h>
#include <string.h>

#include "comm.h"

/* one ticket sequence per communicator: it runs them only if it has every start op */
int zp_ar_native(const zp_comm* c) {
  return c && ZP_TABLE_HAS(c->ops, allreduce_start) && ZP_TABLE_HAS(c->ops, wait_started) &&
         ZP_TABLE_HAS(c->ops, reduce_scatter_start) && ZP_TABLE_HAS(c->ops, allgather_start);
}
static int native(const zp_comm* c) { return zp_ar_native(c); }

static int fail(zp_comm* c, uint64_t t, int rc, char* err, size_t errlen) {
  snprintf(err, errlen, "collective #%llu (started early) failed: %s", (unsigned long long)t, zp_comm_error(c));
  return rc;
}

/* run deferred ops with ticket <= upto, oldest first */
static int run_upto(zp_ar_queue* a, zp_comm* c, uint64_t upto, char* err, size_t errlen) {
  int k = 0, rc = ZP_OK;
  for (; k < a->len && a->q[k].ticket <= upto; k++) {
    const zp_ar_op* o = &a->q[k];
    if ((rc = o->rs == 2 ? c->ops->allgather(c, o->buf, o->send, o->n, o->dt)
              : o->rs == 1 ? c->ops->reduce_scatter(c, o->buf, o->send, o->n, o->dt, o->op)
                           : c->ops->allreduce(c, o->buf, o->n, o->dt, o->op))) {
      rc = fail(c, o->ticket, rc, err, errlen);
      k++;
      break;
    }
  }
  memmove(a->q, a->q + k, (size_t)(a->len - k) * sizeof a->q[0]);
  a->len -= k;
  return rc;
}

/* a start the communicator ran itself: its status, or its ticket */
static int took(zp_ar_queue* a, zp_comm* c, int rc, uint64_t t, uint64_t* ticket, char* err, size_t errlen) {
  if (rc) return fail(c, a->started + 1, rc, err, errlen);
  a->started = *ticket = t;
  return ZP_OK;
}

/* a deferred op into the queue (the oldest runs first when it is full) */
static int defer(zp_ar_queue* a, zp_comm* c, const zp_ar_op* op, uint64_t* ticket, char* err, size_t errlen) {
  if (a->len == ZP_AR_QUEUE) {
    int rc = run_upto(a, c, a->q[0].ticket, err, errlen);
    if (rc) return rc;
  }
  zp_ar_op* o = &a->q[a->len++];
  *o = *op;
  o->ticket = *ticket = ++a->started;
  return ZP_OK;
}

/* one op started: issued by the communicator where it has every start op, else deferred */
static int start(zp_ar_queue* a, zp_comm* c, const zp_ar_op* o, uint64_t* ticket, char* err, size_t errlen) {
  *ticket = 0;
  if (!native(c)) return defer(a, c, o, ticket, err, errlen);
  uint64_t t = 0;
  int rc = o->rs == 2 ? c->ops->allgather_start(c, o->buf, o->send, o->n, o->dt, &t)
           : o->rs == 1 ? c->ops->reduce_scatter_start(c, o->buf, o->send, o->n, o->dt, o->op, &t)
                        : c->ops->allreduce_start(c, o->buf, o->n, o->dt, o->op, &t);
  return took(a, c, rc, t, ticket, err, errlen);
}

int zp_ar_start(zp_ar_queue* a, zp_comm* c, void* buf, size_t n, zp_dtype dt, zp_redop op, uint64_t* ticket, char* err,
                size_t errlen) {
  zp_ar_op o = {0, buf, NULL, n, dt, op, 0};
  return start(a, c, &o, ticket, err, errlen);
}

int zp_rs_start(zp_ar_queue* a, zp_comm* c, void* recv, const void* send, size_t n, zp_dtype dt, zp_redop op,
                uint64_t* ticket, char* err, size_t errlen) {
  zp_ar_op o = {1, recv, send, n, dt, op, 0};
  return start(a, c, &o, ticket, err, errlen);
}

int zp_ag_start(zp_ar_queue* a, zp_comm* c, void* recv, const void* send, size_t n, zp_dtype dt, uint64_t* ticket,
                char* err, size_t errlen) {
  zp_ar_op o = {2, recv, send, n, dt, ZP_RED_SUM, 0};
  return start(a, c, &o, ticket, err, errlen);
}

int zp_ar_wait(zp_ar_queue* a, zp_comm* c, uint64_t ticket, char* err, size_t errlen) {
  if (ticket == 0) return ZP_OK;
  if (ticket > a->started) {
    snprintf(err, errlen, "wait_started: ticket %llu was never started (last %llu)", (unsigned long long)ticket,
             (unsigned long long)a->started);
    return ZP_E_INVALID;
  }
  int rc = native(c) ? c->ops->wait_started(c, ticket) : run_upto(a, c, ticket, err, errlen);
  if (rc && native(c)) rc = fail(c, ticket, rc, err, errlen);
  if (!rc && ticket > a->waited) a->waited = ticket;
  return rc;
}

int zp_ar_flush(zp_ar_queue* a, zp_comm* c, char* err, size_t errlen) {
  return a->len ? run_upto(a, c, UINT64_MAX, err, errlen) : ZP_OK;
}
