/* test_comm_async.c: allreduce started now, finished later (core/comm_async.c, ABI 1.9).
 * Claims: over a communicator without allreduce_start, a start only records the op (the
 * buffer is untouched until its wait), a wait runs every op up to its ticket in ticket order
 * and no later one, a flush (what the core does before any other collective) runs the rest,
 * the queue's overflow runs the oldest at the next start (still in order); tickets count up
 * and outstanding() is started minus waited; a wait for a ticket never started is refused; a
 * failing allreduce is reported with its ticket and the communicator's message. Over a
 * communicator with allreduce_start / allreduce_wait the calls go straight through. Real
 * reductions over shared memory are covered by it_equivalence (the replicated strategy starts
 * every bucket and waits one bucket later: bitwise equal to the plain all-reduce). */
#include <stdio.h>
#include <string.h>

#include "comm.h"
#include "comm_async.h"
#include "zt.h"

/* a mock communicator: allreduce adds 1 to buf[0] (an int) and logs the buffer's tag */
typedef struct {
  zp_comm base;
  int log[256];
  int nlog;
  int fail_on; /* tag whose allreduce fails (0: none) */
  int starts, waits;
  uint64_t last_wait;
} mock_comm;

static int m_allreduce(zp_comm* c, void* buf, size_t n, zp_dtype dt, zp_redop op) {
  (void)n, (void)dt, (void)op;
  mock_comm* m = (mock_comm*)c;
  int* p = buf;
  if (p[1] == m->fail_on) {
    snprintf(c->err, sizeof c->err, "rank 0: peer 1 is dead");
    return ZP_E_COMM;
  }
  p[0] += 1;
  m->log[m->nlog++] = p[1];
  return ZP_OK;
}
static int m_start(zp_comm* c, void* buf, size_t n, zp_dtype dt, zp_redop op, uint64_t* t) {
  mock_comm* m = (mock_comm*)c;
  m->starts++;
  *t = (uint64_t)m->starts;
  return m_allreduce(c, buf, n, dt, op);
}
static int m_wait(zp_comm* c, uint64_t t) {
  mock_comm* m = (mock_comm*)c;
  m->waits++;
  m->last_wait = t;
  return ZP_OK;
}
static const zp_comm_ops k_plain = {sizeof(zp_comm_ops), m_allreduce, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
static const zp_comm_ops k_native = {sizeof(zp_comm_ops), m_allreduce, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                                     m_start,             m_wait};

static void t_deferred(void) {
  mock_comm m;
  memset(&m, 0, sizeof m);
  m.base.ops = &k_plain;
  m.base.size = 2;
  zp_ar_queue a;
  memset(&a, 0, sizeof a);
  char err[256] = "";
  int b[5][2];
  for (int i = 0; i < 5; i++) b[i][0] = 0, b[i][1] = i + 1;
  uint64_t t[5];
  for (int i = 0; i < 3; i++) CHECK(zp_ar_start(&a, &m.base, b[i], 1, ZP_I32, ZP_RED_SUM, &t[i], err, sizeof err) == ZP_OK);
  CHECK(t[0] == 1 && t[1] == 2 && t[2] == 3);
  CHECK_EQ_INT(m.nlog, 0);                       /* nothing ran at the starts */
  CHECK(b[0][0] == 0 && b[1][0] == 0);           /* the buffers are untouched until their wait */
  CHECK_EQ_INT((int)zp_ar_outstanding(&a), 3);
  CHECK(zp_ar_wait(&a, &m.base, t[1], err, sizeof err) == ZP_OK); /* runs 1 and 2, in order, not 3 */
  CHECK_EQ_INT(m.nlog, 2);
  CHECK(m.log[0] == 1 && m.log[1] == 2);
  CHECK(b[0][0] == 1 && b[1][0] == 1 && b[2][0] == 0);
  CHECK_EQ_INT((int)zp_ar_outstanding(&a), 1);
  CHECK(zp_ar_wait(&a, &m.base, t[0], err, sizeof err) == ZP_OK); /* already done: nothing runs twice */
  CHECK_EQ_INT(m.nlog, 2);
  CHECK(zp_ar_flush(&a, &m.base, err, sizeof err) == ZP_OK);      /* another collective comes: 3 runs */
  CHECK(m.nlog == 3 && m.log[2] == 3 && b[2][0] == 1);
  CHECK_EQ_INT((int)zp_ar_outstanding(&a), 1);                    /* run, but not yet waited for */
  CHECK(zp_ar_wait(&a, &m.base, t[2], err, sizeof err) == ZP_OK);
  CHECK_EQ_INT(m.nlog, 3);
  CHECK_EQ_INT((int)zp_ar_outstanding(&a), 0);
  CHECK(zp_ar_wait(&a, &m.base, 99, err, sizeof err) == ZP_E_INVALID);
  CHECK_MSG(strstr(err, "ticket 99 was never started") != NULL, "%s", err);
  CHECK(zp_ar_wait(&a, &m.base, 0, err, sizeof err) == ZP_OK);
  /* overflow: ZP_AR_QUEUE + 2 starts run the two oldest at the last two starts, in order */
  static int many[ZP_AR_QUEUE + 2][2];
  m.nlog = 0;
  uint64_t last = 0;
  for (int i = 0; i < ZP_AR_QUEUE + 2; i++) {
    many[i][0] = 0;
    many[i][1] = 100 + i;
    CHECK(zp_ar_start(&a, &m.base, many[i], 1, ZP_I32, ZP_RED_SUM, &last, err, sizeof err) == ZP_OK);
  }
  CHECK(m.nlog == 2 && m.log[0] == 100 && m.log[1] == 101);
  CHECK(zp_ar_wait(&a, &m.base, last, err, sizeof err) == ZP_OK);
  CHECK_EQ_INT(m.nlog, ZP_AR_QUEUE + 2);
  int inorder = 1;
  for (int i = 0; i < m.nlog; i++) inorder &= m.log[i] == 100 + i;
  CHECK_MSG(inorder, "the deferred all-reduces ran out of ticket order");
  /* a failure names the ticket and the communicator's message */
  m.fail_on = 5;
  uint64_t tf = 0;
  CHECK(zp_ar_start(&a, &m.base, b[4], 1, ZP_I32, ZP_RED_SUM, &tf, err, sizeof err) == ZP_OK);
  CHECK(zp_ar_wait(&a, &m.base, tf, err, sizeof err) == ZP_E_COMM);
  char want[64];
  snprintf(want, sizeof want, "allreduce #%llu (started early) failed: rank 0: peer 1 is dead", (unsigned long long)tf);
  CHECK_MSG(strstr(err, want) != NULL, "%s", err);
}

static void t_native(void) {
  mock_comm m;
  memset(&m, 0, sizeof m);
  m.base.ops = &k_native;
  m.base.size = 2;
  zp_ar_queue a;
  memset(&a, 0, sizeof a);
  char err[256] = "";
  int b[2] = {0, 7};
  uint64_t t = 0;
  CHECK(zp_ar_start(&a, &m.base, b, 1, ZP_I32, ZP_RED_SUM, &t, err, sizeof err) == ZP_OK);
  CHECK(t == 1 && m.starts == 1 && b[0] == 1); /* issued by the communicator at once */
  CHECK(zp_ar_flush(&a, &m.base, err, sizeof err) == ZP_OK);
  CHECK_EQ_INT(m.nlog, 1);
  CHECK(zp_ar_wait(&a, &m.base, t, err, sizeof err) == ZP_OK);
  CHECK(m.waits == 1 && m.last_wait == 1);
  CHECK_EQ_INT((int)zp_ar_outstanding(&a), 0);
}

int main(void) {
  ZT_RUN(t_deferred);
  ZT_RUN(t_native);
  return zt_done();
}
