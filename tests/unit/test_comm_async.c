/* test_comm_async.c: collectives started now, finished later (core/comm_async.c, ABI 1.9).
 * Claims: over a communicator without allreduce_start, a start only records the op (the
 * buffer is untouched until its wait), a wait runs every op up to its ticket in ticket order
 * and no later one, a flush (what the core does before any other collective) runs the rest,
 * the queue's overflow runs the oldest at the next start (still in order); tickets count up
 * and outstanding() is started minus waited; a wait for a ticket never started is refused; a
 * failing allreduce is reported with its ticket and the communicator's message; reduce-scatters
 * and all-gathers share the queue and its order (also over a communicator that starts all-reduces but not
 * reduce-scatters: one ticket sequence, so both are deferred). Over a communicator with every
 * start op the calls go straight through. Real
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
/* reduce_scatter: recv[0] = send[0] + 10, and logs send's tag (negated, to tell it apart) */
static int m_reduce_scatter(zp_comm* c, void* recv, const void* send, size_t n, zp_dtype dt, zp_redop op) {
  (void)n, (void)dt, (void)op;
  mock_comm* m = (mock_comm*)c;
  const int* s = send;
  int* r = recv;
  r[0] = s[0] + 10;
  m->log[m->nlog++] = -s[1];
  return ZP_OK;
}
static int m_rs_start(zp_comm* c, void* recv, const void* send, size_t n, zp_dtype dt, zp_redop op, uint64_t* t) {
  mock_comm* m = (mock_comm*)c;
  m->starts++;
  *t = (uint64_t)m->starts;
  return m_reduce_scatter(c, recv, send, n, dt, op);
}
/* allgather: recv[0] = send[0] + 100, logs send's tag + 1000 */
static int m_allgather(zp_comm* c, void* recv, const void* send, size_t n, zp_dtype dt) {
  (void)n, (void)dt;
  mock_comm* m = (mock_comm*)c;
  const int* s = send;
  int* r = recv;
  r[0] = s[0] + 100;
  m->log[m->nlog++] = 1000 + s[1];
  return ZP_OK;
}
static int m_ag_start(zp_comm* c, void* recv, const void* send, size_t n, zp_dtype dt, uint64_t* t) {
  mock_comm* m = (mock_comm*)c;
  m->starts++;
  *t = (uint64_t)m->starts;
  return m_allgather(c, recv, send, n, dt);
}
static int m_wait(zp_comm* c, uint64_t t) {
  mock_comm* m = (mock_comm*)c;
  m->waits++;
  m->last_wait = t;
  return ZP_OK;
}
static const zp_comm_ops k_plain = {sizeof(zp_comm_ops), m_allreduce, m_reduce_scatter, m_allgather, NULL, NULL,
                                    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
static const zp_comm_ops k_native = {sizeof(zp_comm_ops), m_allreduce, m_reduce_scatter, m_allgather, NULL, NULL,
                                     NULL, NULL, NULL, NULL, m_start, m_wait, m_rs_start, m_ag_start};
/* a communicator with allreduce_start but not every start op: one ticket sequence, so the core
 * defers them all */
static const zp_comm_ops k_half = {sizeof(zp_comm_ops), m_allreduce, m_reduce_scatter, m_allgather, NULL, NULL,
                                   NULL, NULL, NULL, NULL, m_start, m_wait, NULL, NULL};

/* a 2-rank mock communicator with the given ops and an empty queue */
static void setup(mock_comm* m, const zp_comm_ops* ops, zp_ar_queue* a) {
  memset(m, 0, sizeof *m);
  m->base.ops = ops;
  m->base.size = 2;
  memset(a, 0, sizeof *a);
}

static void t_deferred(void) {
  mock_comm m;
  zp_ar_queue a;
  setup(&m, &k_plain, &a);
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
  snprintf(want, sizeof want, "collective #%llu (started early) failed: rank 0: peer 1 is dead", (unsigned long long)tf);
  CHECK_MSG(strstr(err, want) != NULL, "%s", err);
}

/* reduce-scatters and all-reduces share the queue and its order; a reduce-scatter's recv is
 * untouched until its wait */
static void t_deferred_rs(void) {
  const zp_comm_ops* tables[2] = {&k_plain, &k_half};
  for (int k = 0; k < 2; k++) {
    mock_comm m;
    zp_ar_queue a;
    setup(&m, tables[k], &a);
    char err[256] = "";
    int send[2] = {5, 9}, recv[2] = {0, 0}, ar[2] = {0, 4};
    uint64_t t1 = 0, t2 = 0;
    CHECK(zp_rs_start(&a, &m.base, recv, send, 1, ZP_I32, ZP_RED_SUM, &t1, err, sizeof err) == ZP_OK);
    CHECK(zp_ar_start(&a, &m.base, ar, 1, ZP_I32, ZP_RED_SUM, &t2, err, sizeof err) == ZP_OK);
    CHECK(t1 == 1 && t2 == 2);
    CHECK(m.nlog == 0 && recv[0] == 0 && m.starts == 0); /* deferred, also with allreduce_start (k_half) */
    int gs[2] = {7, 2}, gr[2] = {0, 0};
    uint64_t t3 = 0;
    CHECK(zp_ag_start(&a, &m.base, gr, gs, 1, ZP_I32, &t3, err, sizeof err) == ZP_OK);
    CHECK(t3 == 3 && gr[0] == 0);
    CHECK(zp_ar_wait(&a, &m.base, t3, err, sizeof err) == ZP_OK);
    CHECK(m.nlog == 3 && m.log[0] == -9 && m.log[1] == 4 && m.log[2] == 1002); /* in ticket order */
    CHECK(recv[0] == 15 && ar[0] == 1 && gr[0] == 107);
    CHECK_EQ_INT((int)zp_ar_outstanding(&a), 0);
  }
}

static void t_native(void) {
  mock_comm m;
  zp_ar_queue a;
  setup(&m, &k_native, &a);
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
  int send[2] = {1, 3}, recv[2] = {0, 0};
  CHECK(zp_rs_start(&a, &m.base, recv, send, 1, ZP_I32, ZP_RED_SUM, &t, err, sizeof err) == ZP_OK);
  CHECK(t == 2 && m.starts == 2 && recv[0] == 11); /* issued by the communicator at once */
  CHECK_EQ_INT((int)zp_ar_outstanding(&a), 1);
  CHECK(zp_ar_wait(&a, &m.base, t, err, sizeof err) == ZP_OK);
  CHECK(m.waits == 2 && m.last_wait == 2);
  int gs[2] = {1, 5}, gr[2] = {0, 0};
  CHECK(zp_ag_start(&a, &m.base, gr, gs, 1, ZP_I32, &t, err, sizeof err) == ZP_OK);
  CHECK(t == 3 && m.starts == 3 && gr[0] == 101);
  CHECK(zp_ar_wait(&a, &m.base, t, err, sizeof err) == ZP_OK);
}

int main(void) {
  ZT_RUN(t_deferred);
  ZT_RUN(t_deferred_rs);
  ZT_RUN(t_native);
  return zt_done();
}
