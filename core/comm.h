/* comm.h: the communicator interface (NCCL-like collectives, rendezvous send/recv, split)
 * and its CPU implementation over POSIX shared memory for ranks (processes) on one host.
 *
 * Invariants:
 * - `struct zp_comm` is the base of every implementation: an implementation's struct starts
 *   with a `struct zp_comm` member, so a zp_comm* can be cast to it and back. ops is first.
 * - All ranks of a communicator call its collectives in the same order with the same
 *   arguments (count, dtype, op, root). Collectives are numbered per communicator (#1, #2,
 *   ...) and error messages name the rank, the operation and that number.
 * - Reductions run in a FIXED rank order (rank 0 + rank 1 + ... in that order; accumulation
 *   in float for F32/BF16, bf16 rounded once at the end, double for F64), so results are
 *   bitwise deterministic, independent of staging size, and identical on every rank.
 *   ZP_RED_AVG divides the sum by size once at the end (floating dtypes only).
 *   Reduction dtypes: F32, F64, BF16 (sum/avg/max) and I32 (sum/max, sum wraps modulo 2^32).
 *   allgather, broadcast, send and recv take any dtype.
 * - Every blocking wait has a deadline (timeout_s, per wait for a peer); a dead, departed or
 *   stopped peer is detected (pid + out-of-band heartbeat) and reported as ZP_E_COMM /
 *   ZP_E_TIMEOUT. After any failure the communicator (and every communicator of the same
 *   shared-memory segment) is aborted: all further calls fail fast with the original message.
 * - Failures return a zp_status; the message is in zp_comm_error(c). Nothing aborts/exits. */
#ifndef ZP_COMM_H
#define ZP_COMM_H
#include <stddef.h>
#include "zp/zp_plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ZP_COMM_ERR_LEN, ZP_COMM_SPLIT_UNDEFINED, zp_comm_ops and struct zp_comm are part of the
 * plugin ABI (zp_plugin.h): a backend plugin may provide a communicator (NCCL). */
typedef struct zp_comm zp_comm_base;

static inline int zp_comm_rank(const zp_comm* c) { return c->rank; }
static inline int zp_comm_size(const zp_comm* c) { return c->size; }
const char* zp_comm_error(const zp_comm* c); /* message of the last failure ("" if none) */

/* Convenience wrappers over c->ops. */
static inline int zp_comm_allreduce(zp_comm* c, void* buf, size_t n, zp_dtype dt, zp_redop op) {
  return c->ops->allreduce(c, buf, n, dt, op);
}
static inline int zp_comm_reduce_scatter(zp_comm* c, void* recv, const void* send, size_t n,
                                         zp_dtype dt, zp_redop op) {
  return c->ops->reduce_scatter(c, recv, send, n, dt, op);
}
static inline int zp_comm_allgather(zp_comm* c, void* recv, const void* send, size_t n,
                                    zp_dtype dt) {
  return c->ops->allgather(c, recv, send, n, dt);
}
static inline int zp_comm_broadcast(zp_comm* c, void* buf, size_t n, zp_dtype dt, int root) {
  return c->ops->broadcast(c, buf, n, dt, root);
}
static inline int zp_comm_send(zp_comm* c, const void* buf, size_t n, zp_dtype dt, int peer) {
  return c->ops->send(c, buf, n, dt, peer);
}
static inline int zp_comm_recv(zp_comm* c, void* buf, size_t n, zp_dtype dt, int peer) {
  return c->ops->recv(c, buf, n, dt, peer);
}
static inline int zp_comm_barrier(zp_comm* c) { return c->ops->barrier(c); }
static inline int zp_comm_split(zp_comm* c, int color, int key, zp_comm** out) {
  return c->ops->split(c, color, key, out);
}
static inline void zp_comm_destroy(zp_comm* c) {
  if (c) c->ops->destroy(c);
}

/* ---- shared-memory implementation (ranks = processes on one host) ----
 * The launcher creates the segment before forking (name "/zp-..."), each rank opens it with
 * its rank; open waits (up to timeout_s) until all `size` ranks have attached. The segment
 * holds the world communicator and room for ZP_SHM_MAX_COMMS-1 live sub-communicators. */
#define ZP_SHM_MAX_RANKS 64
#define ZP_SHM_MAX_COMMS 16 /* dp x pp x tp needs dp*pp + dp*tp + pp*tp groups (13 at 2 x 2 x 2) */
int zp_comm_shm_open(const char* name, int rank, int size, double timeout_s, zp_comm** out,
                     char* err, size_t errlen);
int zp_comm_shm_create_segment(const char* name, int size, char* err, size_t errlen);
/* As above with an explicit per-rank staging size of the world communicator in bytes (0 =
 * default: 16 MiB / size clamped to [256 KiB, 4 MiB], or ZP_SHM_STAGING_KB from the env).
 * Sub-communicators get 1/8 of it (at least 64 KiB). Buffers larger than the staging area are
 * processed in pieces. */
int zp_comm_shm_create_segment_ex(const char* name, int size, size_t stage_bytes, char* err,
                                  size_t errlen);
void zp_comm_shm_unlink(const char* name);

/* A communicator of one rank (every collective is a local copy or a no-op). */
int zp_comm_self_create(zp_comm** out, char* err, size_t errlen);

/* The world communicator of this process from the launcher's environment: a shared-memory
 * communicator when ZP_SHM_NAME is set (ZP_RANK, ZP_WORLD_SIZE, ZP_COMM_TIMEOUT seconds,
 * default 300), a communicator of one rank when no launcher environment is present, and
 * ZP_E_INVALID when an external launcher reports world > 1 without a segment. */
int zp_comm_from_env(zp_comm** out, char* err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
