/* comm_async.h: the host services allreduce_start / reduce_scatter_start / wait_started (ABI
 * 1.9) over one communicator (see comm_async.c). */
#ifndef ZP_COMM_ASYNC_H
#define ZP_COMM_ASYNC_H
#include <stddef.h>
#include <stdint.h>

#include "zp/zp_plugin.h"

#define ZP_AR_QUEUE 64 /* deferred collectives held at once (more: the oldest runs at its start) */

typedef struct zp_ar_op {
  int rs;          /* 0: allreduce of buf, 1: reduce_scatter of send into buf (n per rank),
                      2: allgather of send (n per rank) into buf */
  void* buf;
  const void* send;
  size_t n;
  zp_dtype dt;
  zp_redop op;
  uint64_t ticket;
} zp_ar_op;

typedef struct zp_ar_queue {
  uint64_t started, waited; /* last ticket started, last waited for */
  int len;                  /* deferred ops (communicators without the start ops) */
  zp_ar_op q[ZP_AR_QUEUE];
} zp_ar_queue;

/* On failure the status is returned and err (errlen) holds "allreduce #ticket failed: ..." */
int zp_ar_start(zp_ar_queue* a, zp_comm* c, void* buf, size_t n, zp_dtype dt, zp_redop op, uint64_t* ticket, char* err,
                size_t errlen);
int zp_rs_start(zp_ar_queue* a, zp_comm* c, void* recv, const void* send, size_t n, zp_dtype dt, zp_redop op,
                uint64_t* ticket, char* err, size_t errlen);
int zp_ag_start(zp_ar_queue* a, zp_comm* c, void* recv, const void* send, size_t n, zp_dtype dt, uint64_t* ticket,
                char* err, size_t errlen);
int zp_ar_wait(zp_ar_queue* a, zp_comm* c, uint64_t ticket, char* err, size_t errlen);
/* 1: c runs started collectives itself (every start op); 0: they are deferred to the wait */
int zp_ar_native(const zp_comm* c);
/* run every deferred op now (before any other collective on c, so every rank keeps one order) */
int zp_ar_flush(zp_ar_queue* a, zp_comm* c, char* err, size_t errlen);
/* started tickets not waited for yet */
static inline uint64_t zp_ar_outstanding(const zp_ar_queue* a) { return a->started - a->waited; }
#endif
