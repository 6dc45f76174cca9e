/* offload_nvme: the NVMe tier (ZeRO-Infinity style). Its plan moves MASTER and OPTIM to the nvme
 * tier; each rank then keeps its fp32 master weights and Adam moments in one file under
 * offload.optimizer.path, read and written with O_DIRECT through core/aio.c (io_uring, or a
 * pread/pwrite thread pool where io_uring is unavailable: the engine says so), and runs the
 * CPU AdamW (core/adamw_cpu.c, the CPU backend's arithmetic bit for bit) on it every step.
 *
 * File layout (per rank; docs/nvme.md): groups in forward order; each group's holding of H
 * elements is cut into sub-groups of S elements (the last one shorter), and sub-group k is one
 * contiguous block [master | m | v] of 12*L bytes (L = its length), so a sub-group is read
 * with ONE request and written back with ONE request. S is a multiple of 1024 and H a multiple
 * of 2048, so every offset, length and staging buffer is 4 KiB-aligned (O_DIRECT).
 *
 * The update is pipelined per sub-group over `buffer_count` page-locked slots (host->alloc of
 * cpu-tier BUFFER, counted in the ledger): the read of sub-group k+1.. is in flight while the
 * gradient of k is copied to the host and AdamW runs on it, while the write-back of k-1 is in
 * flight. After the last sub-group of group g the first ones of group g+1 are prefetched (the
 * strategies update groups in order); step_end() waits for every write.
 *
 * Invariants:
 * - One read request and one write request per sub-group per step; every request is reported
 *   to the ledger (note_io on the nvme tier: bytes and count), and the file's bytes are noted
 *   as MASTER/OPTIM on the nvme tier, so a tier that keeps the state elsewhere cannot pass the
 *   tests (tests/integration/offload_nvme.sh checks both exactly).
 * - A sub-group is never read while its own write-back is in flight (read-after-write through
 *   the disk): a pending write of the same sub-group is waited for and its slot reused.
 * - read()/write() (init, checkpoints, get_group_params) first wait for all pipeline I/O and
 *   drop prefetches; a sub-group never written reads as zeros without touching the disk.
 * - Any I/O error fails the call with the engine's message (operation, offset, length, file,
 *   errno) and latches the tier as failed: later calls repeat the error instead of using state
 *   that may be half written. Checkpoints are separate files written atomically by the core,
 *   so the last one stays intact.
 * - plan() refuses, before anything is allocated: a missing, non-directory, unwritable or
 *   memory-backed path; less free disk than the world's files need (statvfs); host staging
 *   above offload.optimizer.max_host_gb or physical RAM; parameter offload (not implemented);
 *   fp64 training. Numbers are in the messages.
 * - open() runs a collective before it creates any file (so every rank's plan() free-space
 *   check happened before any rank allocated) and another after, so a rank that cannot open
 *   its file makes every rank fail with a message instead of a hang.
 * - The file is unlinked right after it is opened (ZP_AIO_REMOVE_AT_OPEN): its space returns
 *   when the run ends, also when it is killed; it is scratch, checkpoints are the durable copy.
 * - Dry runs (`zp plan`): host->alloc hands out NULL; then no file is created and only the
 *   ledger is told (nvme bytes, staging). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "adamw_cpu.h"
#include "aio.h"
#include "../common/offload_ratio.h"
#include "zp/zp_plugin.h"

#define NV_SUB_ALIGN 1024u /* sub-group lengths are multiples of this many elements (4 KiB fp32) */
#define NV_TMPFS 0x01021994
#define NV_RAMFS 0x858458f6

enum { SL_FREE = 0, SL_READING, SL_READY, SL_WRITING };

typedef struct {
  int state;
  int g;
  uint64_t k;
  uint64_t ticket;
  uint64_t seq; /* submission order of the write (oldest is reused first) */
  char* buf;    /* 4 KiB-aligned, 12*S bytes */
} nv_slot;

typedef struct {
  uint64_t held;      /* elements of MASTER (and of m, of v) this rank holds; 0: not on this tier */
  uint64_t file_off;  /* byte offset of the group's first sub-group */
  uint64_t nsub;
  unsigned char* fresh; /* [nsub] 1: never written (reads as zeros) */
} nv_group;

typedef struct {
  const zp_host* h;
  int dry;
  zp_aio* aio;
  char path[4200];
  int G;
  nv_group* grp;
  uint64_t S;           /* sub-group elements */
  int nslots, lookahead;
  nv_slot* slots;
  void* slot_raw;       /* host->alloc'd */
  size_t slot_raw_bytes;
  void* gstage;         /* gradients of one sub-group (gdt), 64-byte aligned from host->alloc */
  void* pstage;         /* new parameters of one sub-group (pdt) */
  size_t stage_bytes;
  int threads;
  uint64_t seq;
  uint64_t file_bytes;
  long long noted_master, noted_optim;
  int failed;
  char ferr[1400];
} nv_t;

/* ---------------- configuration shared by plan() and open() ---------------- */

typedef struct {
  const char* path;
  int64_t qd, bs, bc;
  uint64_t S;
  int nslots;
} nv_cfg;

static void read_cfg(const zp_host* h, nv_cfg* c) {
  memset(c, 0, sizeof *c);
  c->path = "";
  c->qd = 32;
  c->bs = 1 << 20;
  c->bc = 4;
  h->config_string(h->ctx, "offload.optimizer.path", &c->path);
  h->config_int(h->ctx, "offload.optimizer.queue_depth", &c->qd);
  h->config_int(h->ctx, "offload.optimizer.block_size", &c->bs);
  h->config_int(h->ctx, "offload.optimizer.buffer_count", &c->bc);
  if (c->qd < 1) c->qd = 1;
  if (c->bc < 1) c->bc = 1;
  if (c->bs < 4096) c->bs = 4096;
  /* a slot holds one sub-group (12 bytes per element) and is as large as the engine's staging
   * buffer would be: block_size * ceil(queue_depth / buffer_count), so the slots in flight
   * together fill the queue */
  uint64_t buf = (uint64_t)c->bs * (uint64_t)((c->qd + c->bc - 1) / c->bc);
  uint64_t S = buf / 12 / NV_SUB_ALIGN * NV_SUB_ALIGN;
  c->S = S < NV_SUB_ALIGN ? NV_SUB_ALIGN : S;
  c->nslots = (int)c->bc;
}

/* host bytes of staging per rank: slots + gradient + parameter staging (+ alignment) */
static double staging_bytes(const nv_cfg* c, uint64_t max_held) {
  uint64_t S = c->S < max_held ? c->S : max_held;
  if (S < NV_SUB_ALIGN) S = NV_SUB_ALIGN;
  return (double)c->nslots * 12.0 * (double)S + 4096.0 + 2.0 * (4.0 * (double)S + 64.0);
}

static int which(const zp_host* h, int* opt, int* par) {
  const char* a = "none";
  const char* b = "none";
  h->config_string(h->ctx, "offload.optimizer.plugin", &a);
  h->config_string(h->ctx, "offload.param.plugin", &b);
  *opt = strcmp(a, "offload_nvme") == 0;
  *par = strcmp(b, "offload_nvme") == 0;
  return ZP_OK;
}

/* "16700.7 GB", "2.1 GB", "0.000516 GB" */
static const char* gbs(char* buf, size_t n, double bytes) {
  double v = bytes / 1e9;
  if (v >= 1) snprintf(buf, n, "%.1f GB", v);
  else snprintf(buf, n, "%.3g GB", v);
  return buf;
}

/* ---------------- plan ---------------- */

static int nv_plan(const zp_host* h, zp_plan* p) {
  int opt, par;
  which(h, &opt, &par);
  if (par) {
    h->set_error(h->ctx, "parameter offload to NVMe (offload.param.plugin = \"offload_nvme\") is not implemented yet; "
                 "offload.optimizer.plugin = \"offload_nvme\" (fp32 master + Adam moments on NVMe) is, with every stage");
    return ZP_E_NOT_IMPLEMENTED;
  }
  if (!opt) return ZP_OK;
  const char* prec = "fp32";
  h->config_string(h->ctx, "train.precision", &prec);
  if (strcmp(prec, "fp64") == 0) {
    h->set_error(h->ctx, "offload.optimizer.plugin = \"offload_nvme\" runs the fp32 CPU AdamW: train.precision = \"fp64\" "
                 "(a CPU check mode) cannot be offloaded; use fp32 or bf16");
    return ZP_E_INVALID;
  }
  nv_cfg c;
  read_cfg(h, &c);
  double per_rank = 0;
  uint64_t max_held = 0;
  unsigned char* take = calloc((size_t)(p->n_groups > 0 ? p->n_groups : 1), 1);
  if (!take) return ZP_E_NOMEM;
  int prc = zp_offload_pick(h, p, take, NULL);
  for (int g = 0; g < p->n_groups && prc == ZP_OK; g++) {
    zp_group_plan* gp = &p->groups[g];
    if (!take[g]) continue; /* offload.optimizer.ratio < 1: this group stays on the device */
    gp->place[ZP_CAT_MASTER].tier = ZP_TIER_NVME;
    gp->place[ZP_CAT_OPTIM].tier = ZP_TIER_NVME;
    if (gp->place[ZP_CAT_MASTER].sharded != gp->place[ZP_CAT_OPTIM].sharded) {
      h->set_error(h->ctx, "group %s: the strategy shards OPTIM but not MASTER (or the reverse); the nvme tier keeps both "
                   "in one file per rank and needs them placed alike", gp->name);
      prc = ZP_E_INVALID;
      break;
    }
    uint64_t held = gp->place[ZP_CAT_OPTIM].sharded ? gp->padded / (uint64_t)p->world_size : gp->padded;
    per_rank += 12.0 * (double)held; /* fp32 master + m + v */
    if (held > max_held) max_held = held;
  }
  free(take);
  if (prc) return prc;
  int world = p->world_size > 0 ? p->world_size : 1;
  double disk = per_rank * world;
  char b1[48], b2[48], b3[48];
  /* the directory: exists, is a writable directory on a real disk, has the space */
  const char* path = c.path;
  struct stat st;
  if (!path[0]) {
    h->set_error(h->ctx, "offload.optimizer.path is empty: the nvme tier needs a directory on a fast local disk");
    return ZP_E_INVALID;
  }
  if (stat(path, &st) != 0) {
    h->set_error(h->ctx, "offload.optimizer.path = \"%s\": %s: create the directory on a fast local disk (the tier needs %s "
                 "there: %d rank%s x %s)", path, strerror(errno), gbs(b1, sizeof b1, disk), world, world > 1 ? "s" : "",
                 gbs(b2, sizeof b2, per_rank));
    return ZP_E_INVALID;
  }
  if (!S_ISDIR(st.st_mode)) {
    h->set_error(h->ctx, "offload.optimizer.path = \"%s\" is not a directory", path);
    return ZP_E_INVALID;
  }
  if (access(path, W_OK | X_OK) != 0) {
    h->set_error(h->ctx, "offload.optimizer.path = \"%s\": not writable by this user (%s)", path, strerror(errno));
    return ZP_E_INVALID;
  }
  struct statfs sf;
  if (statfs(path, &sf) == 0 && ((unsigned long)sf.f_type == NV_TMPFS || (unsigned long)sf.f_type == NV_RAMFS)) {
    h->set_error(h->ctx, "offload.optimizer.path = \"%s\" is on %s, which keeps files in memory: O_DIRECT bypasses "
                 "nothing there; use a directory on a real disk (ext4/xfs on NVMe)", path,
                 (unsigned long)sf.f_type == NV_TMPFS ? "tmpfs" : "ramfs");
    return ZP_E_INVALID;
  }
  struct statvfs vf;
  const char* skip = getenv("ZP_NVME_NO_SPACE_CHECK");
  if (!(skip && skip[0] == '1') && statvfs(path, &vf) == 0) {
    double avail = (double)vf.f_bavail * (double)vf.f_frsize;
    if (avail < disk) {
      h->set_error(h->ctx, "offload.optimizer.path = \"%s\": the nvme tier needs %s (%.0f bytes) on that filesystem, "
                   "%d rank%s x %s (fp32 master + Adam m, v: 12 bytes x parameters held per rank), but it has %s "
                   "(%.0f bytes) free (statvfs): free space, or use a larger disk", path, gbs(b1, sizeof b1, disk), disk,
                   world, world > 1 ? "s" : "", gbs(b2, sizeof b2, per_rank), gbs(b3, sizeof b3, avail), avail);
      return ZP_E_NOMEM;
    }
  }
  /* host memory: the staging slots */
  uint64_t S = c.S < max_held ? c.S : max_held;
  double host = staging_bytes(&c, max_held);
  double cap = 0;
  h->config_float(h->ctx, "offload.optimizer.max_host_gb", &cap);
  if (cap > 0 && host > cap * 1e9) {
    h->set_error(h->ctx, "the nvme tier's page-locked staging needs %s of host memory per rank (buffer_count %d x 12 bytes "
                 "x %llu-element sub-groups + gradient/parameter staging), more than offload.optimizer.max_host_gb = %g: "
                 "lower offload.optimizer.buffer_count, block_size or queue_depth", gbs(b1, sizeof b1, host), c.nslots,
                 (unsigned long long)S, cap);
    return ZP_E_NOMEM;
  }
  long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
  if (pages > 0 && psz > 0 && host * world > (double)pages * (double)psz) {
    h->set_error(h->ctx, "the nvme tier's staging needs %s of host memory (%d rank%s x %s), more than this machine's %s: "
                 "lower offload.optimizer.buffer_count, block_size or queue_depth", gbs(b1, sizeof b1, host * world), world,
                 world > 1 ? "s" : "", gbs(b2, sizeof b2, host), gbs(b3, sizeof b3, (double)pages * (double)psz));
    return ZP_E_NOMEM;
  }
  return ZP_OK;
}

/* ---------------- helpers ---------------- */

static void nv_log(void* ctx, const char* msg) {
  const zp_host* h = ctx;
  h->log(h->ctx, ZP_LOG_WARN, "%s", msg);
}

static int fail(nv_t* s, int rc, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(nv_t* s, int rc, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(s->ferr, sizeof s->ferr, fmt, ap);
  va_end(ap);
  s->failed = 1;
  s->h->set_error(s->h->ctx, "%s", s->ferr);
  return rc;
}

static int check_failed(nv_t* s) {
  if (!s->failed) return ZP_OK;
  s->h->set_error(s->h->ctx, "the nvme tier failed earlier and its state may be half written: %s", s->ferr);
  return ZP_E_IO;
}

static uint64_t sub_len(const nv_t* s, int g, uint64_t k) {
  uint64_t a = k * s->S, H = s->grp[g].held;
  return H - a < s->S ? H - a : s->S;
}
static uint64_t sub_off(const nv_t* s, int g, uint64_t k) { return s->grp[g].file_off + k * 12 * s->S; }

/* After an I/O error: wait for everything still in flight (ignoring further errors: the first
 * one is reported), free every slot. */
static void drain_all(nv_t* s) {
  char e[256];
  zp_aio_drain(s->aio, e, sizeof e);
  for (int i = 0; i < s->nslots; i++) s->slots[i].state = SL_FREE;
}

static int wait_slot(nv_t* s, nv_slot* sl) {
  char e[1024];
  int rc = zp_aio_wait(s->aio, sl->ticket, e, sizeof e);
  if (rc) {
    int g = sl->g;
    unsigned long long k = (unsigned long long)sl->k;
    drain_all(s);
    return fail(s, ZP_E_IO, "optimizer state of group %d, sub-group %llu: %s", g, k, e);
  }
  sl->state = sl->state == SL_WRITING ? SL_FREE : SL_READY;
  return ZP_OK;
}

static int submit_read(nv_t* s, nv_slot* sl, int g, uint64_t k) {
  nv_group* G = &s->grp[g];
  uint64_t len = sub_len(s, g, k), bytes = 12 * len;
  sl->g = g;
  sl->k = k;
  if (G->fresh[k]) { /* never written: zeros, no I/O */
    memset(sl->buf, 0, (size_t)bytes);
    sl->state = SL_READY;
    return ZP_OK;
  }
  char e[1024];
  int rc = zp_aio_submit_read(s->aio, sl->buf, sub_off(s, g, k), (size_t)bytes, &sl->ticket, e, sizeof e);
  if (rc) {
    drain_all(s);
    return fail(s, ZP_E_IO, "optimizer state of group %d, sub-group %llu: %s", g, (unsigned long long)k, e);
  }
  sl->state = SL_READING;
  s->h->note_io(s->h->ctx, ZP_TIER_NVME, 0, bytes);
  return ZP_OK;
}

static int submit_write(nv_t* s, nv_slot* sl) {
  uint64_t bytes = 12 * sub_len(s, sl->g, sl->k);
  char e[1024];
  int rc = zp_aio_submit_write(s->aio, sl->buf, sub_off(s, sl->g, sl->k), (size_t)bytes, &sl->ticket, e, sizeof e);
  if (rc) {
    drain_all(s);
    return fail(s, ZP_E_IO, "optimizer state of group %d, sub-group %llu: %s", sl->g, (unsigned long long)sl->k, e);
  }
  s->grp[sl->g].fresh[sl->k] = 0;
  sl->state = SL_WRITING;
  sl->seq = ++s->seq;
  s->h->note_io(s->h->ctx, ZP_TIER_NVME, 1, bytes);
  return ZP_OK;
}

static nv_slot* find_slot(nv_t* s, int g, uint64_t k) {
  for (int i = 0; i < s->nslots; i++)
    if (s->slots[i].state != SL_FREE && s->slots[i].g == g && s->slots[i].k == k) return &s->slots[i];
  return NULL;
}

/* A slot to read into: a free one, else the one with the oldest write-back (waited for). */
static int take_slot(nv_t* s, nv_slot** out) {
  nv_slot* best = NULL;
  for (int i = 0; i < s->nslots; i++) {
    nv_slot* sl = &s->slots[i];
    if (sl->state == SL_FREE) { *out = sl; return ZP_OK; }
    if (sl->state == SL_WRITING && (!best || sl->seq < best->seq)) best = sl;
  }
  if (!best) return fail(s, ZP_E_INTERNAL, "internal: no staging slot free (buffer_count %d)", s->nslots);
  int rc = wait_slot(s, best);
  if (rc) return rc;
  *out = best;
  return ZP_OK;
}

/* Make sure sub-group (g, k) is in a slot or on its way: reuses a slot that holds it (also one
 * whose write-back is in flight: waited, then its bytes are the newest), else reads it. */
static int ensure(nv_t* s, int g, uint64_t k, nv_slot** out) {
  nv_slot* sl = find_slot(s, g, k);
  int rc;
  if (sl) {
    if (sl->state == SL_WRITING && (rc = wait_slot(s, sl))) return rc;
    if (sl->state == SL_FREE) sl->state = SL_READY; /* bytes still in the buffer are the newest */
    if (out) *out = sl;
    return ZP_OK;
  }
  if ((rc = take_slot(s, &sl))) return rc;
  if ((rc = submit_read(s, sl, g, k))) return rc;
  if (out) *out = sl;
  return ZP_OK;
}

/* Drop prefetched sub-groups outside [k0, k1] of group g (g < 0: all of them). */
static int drop_prefetch(nv_t* s, int g, uint64_t k0, uint64_t k1) {
  for (int i = 0; i < s->nslots; i++) {
    nv_slot* sl = &s->slots[i];
    if (sl->state != SL_READING && sl->state != SL_READY) continue;
    if (g >= 0 && sl->g == g && sl->k >= k0 && sl->k <= k1) continue;
    if (sl->state == SL_READING) {
      int rc = wait_slot(s, sl);
      if (rc) return rc;
    }
    sl->state = SL_FREE;
  }
  return ZP_OK;
}

/* Everything in flight done, nothing held: before read()/write() and at step_end(). */
static int quiesce(nv_t* s) {
  int rc = drop_prefetch(s, -1, 0, 0);
  for (int i = 0; !rc && i < s->nslots; i++)
    if (s->slots[i].state == SL_WRITING) rc = wait_slot(s, &s->slots[i]);
  for (int i = 0; !rc && i < s->nslots; i++) s->slots[i].state = SL_FREE;
  return rc;
}

/* ---------------- open / close ---------------- */

static void nv_close(void* st) {
  nv_t* s = st;
  if (!s) return;
  const zp_host* h = s->h;
  if (s->aio) {
    char e[1024];
    if (zp_aio_close(s->aio, e, sizeof e)) h->log(h->ctx, ZP_LOG_WARN, "closing the nvme state file: %s", e);
  }
  if (s->noted_master) h->note_bytes(h->ctx, ZP_CAT_MASTER, ZP_TIER_NVME, -s->noted_master);
  if (s->noted_optim) h->note_bytes(h->ctx, ZP_CAT_OPTIM, ZP_TIER_NVME, -s->noted_optim);
  if (s->slot_raw_bytes) h->free(h->ctx, ZP_CAT_BUFFER, ZP_TIER_CPU, s->slot_raw, s->slot_raw_bytes);
  if (s->stage_bytes) {
    h->free(h->ctx, ZP_CAT_BUFFER, ZP_TIER_CPU, s->gstage, s->stage_bytes);
    h->free(h->ctx, ZP_CAT_BUFFER, ZP_TIER_CPU, s->pstage, s->stage_bytes);
  }
  if (s->grp)
    for (int g = 0; g < s->G; g++) free(s->grp[g].fresh);
  free(s->grp);
  free(s->slots);
  free(s);
}

/* every rank learns whether any rank failed (host pointer: a small control message) */
static int agree(const zp_host* h, int failed, int* any) {
  double f = failed ? 1.0 : 0.0;
  int rc = h->allreduce(h->ctx, &f, 1, ZP_F64, ZP_RED_MAX);
  *any = f > 0;
  return rc;
}

static int nv_open(const zp_host* h, void** state) {
  nv_t* s = calloc(1, sizeof *s);
  if (!s) return ZP_E_NOMEM;
  s->h = h;
  *state = s;
  nv_cfg c;
  read_cfg(h, &c);
  int64_t th = 0;
  h->config_int(h->ctx, "offload.optimizer.threads", &th);
  s->threads = (int)th;
  s->G = h->n_groups;
  s->grp = calloc((size_t)s->G, sizeof *s->grp);
  if (!s->grp) return ZP_E_NOMEM;
  uint64_t off = 0, max_held = 0;
  long long mbytes = 0, obytes = 0;
  for (int g = 0; g < s->G; g++) {
    zp_group_info in;
    int rc = h->group_info(h->ctx, g, &in);
    if (rc) return rc;
    if (in.place[ZP_CAT_OPTIM].tier != ZP_TIER_NVME) continue;
    if (in.place[ZP_CAT_MASTER].tier != ZP_TIER_NVME || in.bytes[ZP_CAT_MASTER] * 2 != in.bytes[ZP_CAT_OPTIM]) {
      h->set_error(h->ctx, "group %d: MASTER and OPTIM must both be on the nvme tier and placed alike (MASTER %zu bytes on "
                   "tier %d, OPTIM %zu bytes)", g, in.bytes[ZP_CAT_MASTER], (int)in.place[ZP_CAT_MASTER].tier,
                   in.bytes[ZP_CAT_OPTIM]);
      return ZP_E_INVALID;
    }
    uint64_t held = in.bytes[ZP_CAT_MASTER] / 4;
    if (held % NV_SUB_ALIGN) {
      h->set_error(h->ctx, "internal: group %d holds %llu elements, not a multiple of %u", g, (unsigned long long)held, NV_SUB_ALIGN);
      return ZP_E_INTERNAL;
    }
    nv_group* G = &s->grp[g];
    G->held = held;
    G->file_off = off;
    G->nsub = (held + c.S - 1) / c.S;
    G->fresh = malloc((size_t)G->nsub + 1);
    if (!G->fresh) return ZP_E_NOMEM;
    memset(G->fresh, 1, (size_t)G->nsub + 1);
    off += 12 * held;
    if (held > max_held) max_held = held;
    mbytes += (long long)in.bytes[ZP_CAT_MASTER];
    obytes += (long long)in.bytes[ZP_CAT_OPTIM];
  }
  s->file_bytes = off;
  if (!off) return ZP_OK; /* nothing on this tier */
  s->S = c.S < max_held ? c.S : max_held;
  s->nslots = c.nslots;
  s->lookahead = s->nslots >= 3 ? s->nslots - 2 : s->nslots - 1;
  snprintf(s->path, sizeof s->path, "%s", c.path);
  /* staging (page-locked where the backend can: cpu-tier BUFFER) */
  s->slot_raw_bytes = (size_t)s->nslots * 12 * (size_t)s->S + ZP_AIO_ALIGN;
  s->stage_bytes = (size_t)s->S * 4 + 64;
  int rc = h->alloc(h->ctx, ZP_CAT_BUFFER, ZP_TIER_CPU, s->slot_raw_bytes, "offload_nvme staging slots", &s->slot_raw);
  if (rc) { s->slot_raw_bytes = 0; return rc; }
  if (!s->slot_raw) s->dry = 1;
  if ((rc = h->alloc(h->ctx, ZP_CAT_BUFFER, ZP_TIER_CPU, s->stage_bytes, "offload_nvme gradient staging", &s->gstage))) {
    s->stage_bytes = 0;
    return rc;
  }
  if ((rc = h->alloc(h->ctx, ZP_CAT_BUFFER, ZP_TIER_CPU, s->stage_bytes, "offload_nvme parameter staging", &s->pstage))) {
    h->free(h->ctx, ZP_CAT_BUFFER, ZP_TIER_CPU, s->gstage, s->stage_bytes);
    s->stage_bytes = 0;
    return rc;
  }
  h->note_bytes(h->ctx, ZP_CAT_MASTER, ZP_TIER_NVME, mbytes);
  h->note_bytes(h->ctx, ZP_CAT_OPTIM, ZP_TIER_NVME, obytes);
  s->noted_master = mbytes;
  s->noted_optim = obytes;
  if (s->dry) return ZP_OK; /* zp plan: counted, nothing created */
  s->slots = calloc((size_t)s->nslots, sizeof *s->slots);
  if (!s->slots) return ZP_E_NOMEM;
  char* base = (char*)(((uintptr_t)s->slot_raw + ZP_AIO_ALIGN - 1) & ~(uintptr_t)(ZP_AIO_ALIGN - 1));
  for (int i = 0; i < s->nslots; i++) s->slots[i].buf = base + (size_t)i * 12 * (size_t)s->S;
  /* every rank has passed plan()'s free-space check before any rank allocates its file */
  int any = 0;
  if ((rc = agree(h, 0, &any))) return rc;
  /* the file: one per rank, named after the launch (zp launch's segment) or the process */
  const char* shm = getenv("ZP_SHM_NAME");
  char tag[96];
  if (shm && shm[0]) {
    const char* t = shm[0] == '/' ? shm + 1 : shm;
    snprintf(tag, sizeof tag, "%s%s", strncmp(t, "zp-", 3) == 0 ? "" : "zp-", t);
    for (char* q = tag; *q; q++)
      if (*q == '/') *q = '_';
  } else {
    snprintf(tag, sizeof tag, "zp-pid%ld", (long)getpid());
  }
  char file[4400];
  snprintf(file, sizeof file, "%s/%s-rank%d.optim", s->path, tag, h->rank);
  zp_aio_opts o;
  zp_aio_opts_default(&o);
  o.queue_depth = (int)c.qd;
  o.block_size = (size_t)c.bs;
  o.buffer_count = -1; /* the slots above are the staging (page-locked through the host) */
  o.remove = ZP_AIO_REMOVE_AT_OPEN;
  o.direct = ZP_AIO_DIRECT_REQUIRE;
  o.log = nv_log;
  o.log_ctx = (void*)h;
  char e[1400];
  int orc = zp_aio_open(&s->aio, file, s->file_bytes, &o, e, sizeof e);
  if ((rc = agree(h, orc != 0, &any))) return rc;
  if (orc) {
    h->set_error(h->ctx, "rank %d cannot open its optimizer-state file: %s", h->rank, e);
    return ZP_E_IO;
  }
  if (any) {
    h->set_error(h->ctx, "another rank could not open its optimizer-state file under \"%s\" (its message names the reason)", s->path);
    return ZP_E_IO;
  }
  if (h->rank == 0)
    h->log(h->ctx, ZP_LOG_INFO, "optimizer state in %s (per rank %.1f MiB, unlinked while open): %s, queue_depth %d, "
           "block_size %lld, %d staging slots of %llu-element sub-groups (%.1f MiB each)", file,
           (double)s->file_bytes / (1 << 20), zp_aio_backend(s->aio), (int)c.qd, (long long)c.bs, s->nslots,
           (unsigned long long)s->S, 12.0 * (double)s->S / (1 << 20));
  return ZP_OK;
}

/* ---------------- update ---------------- */

static int compute(nv_t* s, const zp_optim_range* u, nv_slot* sl, int* piece) {
  const zp_host* h = s->h;
  uint64_t L = sub_len(s, sl->g, sl->k), k0 = sl->k * s->S;
  uint64_t so = u->state_off, a = k0 > so ? k0 : so, b = k0 + L < so + u->count ? k0 + L : so + u->count;
  size_t gs = zp_dtype_size(u->gdt), ps = zp_dtype_size(u->pdt);
  uint64_t n = b - a;
  float* master = (float*)sl->buf + (a - k0);
  float* m = (float*)sl->buf + L + (a - k0);
  float* v = (float*)sl->buf + 2 * L + (a - k0);
  int rc = h->dev->copy_d2h(h->devb, s->gstage, (const char*)u->grad + (a - so) * gs, (size_t)n * gs);
  if (rc) return rc;
  h->note_io(h->ctx, ZP_TIER_CPU, 1, (uint64_t)n * gs);
  uint64_t pos = u->first + (a - so), end = pos + n, p0 = pos;
  while (pos < end) {
    while (*piece < u->n_pieces && u->piece_end[*piece] <= pos) (*piece)++;
    uint64_t pe = *piece < u->n_pieces && u->piece_end[*piece] < end ? u->piece_end[*piece] : end;
    int decay = *piece < u->n_pieces ? u->piece_decay[*piece] : 0;
    zp_adamw_hparams hp = {u->hp.lr, u->hp.beta1, u->hp.beta2, u->hp.eps, decay ? u->hp.weight_decay : 0.0f,
                           u->hp.grad_scale, u->hp.step_t};
    uint64_t kc = pos - p0;
    rc = zp_adamw_cpu(u->param_out ? (char*)s->pstage + kc * ps : NULL, u->param_out ? u->pdt : ZP_F32, master + kc,
                      (const char*)s->gstage + kc * gs, u->gdt, m + kc, v + kc, (size_t)(pe - pos), &hp, s->threads);
    if (rc) {
      const char* ie = zp_adamw_isa_error(ZP_ISA_AUTO);
      h->set_error(h->ctx, "%s", ie ? ie : "CPU AdamW failed (bad dtype or step)");
      return rc;
    }
    pos = pe;
  }
  if (u->param_out) {
    rc = h->dev->copy_h2d(h->devb, (char*)u->param_out + (a - so) * ps, s->pstage, (size_t)n * ps);
    if (rc) return rc;
    h->note_io(h->ctx, ZP_TIER_CPU, 0, (uint64_t)n * ps);
  }
  return ZP_OK;
}

static int nv_update(void* st, const zp_optim_range* u) {
  nv_t* s = st;
  const zp_host* h = s->h;
  int rc = check_failed(s);
  if (rc) return rc;
  if (u->group < 0 || u->group >= s->G || !s->grp[u->group].held || !s->aio) {
    h->set_error(h->ctx, "group %d: its optimizer state is not on the nvme tier", u->group);
    return ZP_E_INTERNAL;
  }
  int g = u->group;
  nv_group* G = &s->grp[g];
  if (u->count == 0) return ZP_OK;
  if (u->state_off + u->count > G->held) {
    h->set_error(h->ctx, "group %d: range [%llu, +%llu) outside the %llu elements this rank holds", g,
                 (unsigned long long)u->state_off, (unsigned long long)u->count, (unsigned long long)G->held);
    return ZP_E_INVALID;
  }
  if ((u->gdt != ZP_F32 && u->gdt != ZP_BF16) || (u->param_out && u->pdt != ZP_F32 && u->pdt != ZP_BF16)) {
    h->set_error(h->ctx, "group %d: the nvme tier's AdamW takes fp32/bf16 gradients and parameters", g);
    return ZP_E_INVALID;
  }
  uint64_t k0 = u->state_off / s->S, k1 = (u->state_off + u->count - 1) / s->S;
  if ((rc = drop_prefetch(s, g, k0, k1))) return rc;
  int piece = 0;
  for (uint64_t k = k0; k <= k1; k++) {
    nv_slot* cur;
    if ((rc = ensure(s, g, k, &cur))) return rc;
    for (uint64_t j = k + 1; j <= k1 && j <= k + (uint64_t)s->lookahead; j++)
      if ((rc = ensure(s, g, j, NULL))) return rc;
    /* the next group's first sub-groups, when this range ends the group (stream order) */
    if (k + (uint64_t)s->lookahead > k1 && k1 == G->nsub - 1 && u->state_off + u->count == G->held) {
      int gn = g + 1;
      while (gn < s->G && !s->grp[gn].held) gn++;
      for (uint64_t j = 0; gn < s->G && j < k + (uint64_t)s->lookahead - k1 && j < s->grp[gn].nsub; j++)
        if ((rc = ensure(s, gn, j, NULL))) return rc;
    }
    if (cur->state == SL_READING && (rc = wait_slot(s, cur))) return rc;
    if ((rc = compute(s, u, cur, &piece))) {
      drain_all(s);
      s->failed = 1;
      snprintf(s->ferr, sizeof s->ferr, "the update of group %d failed (status %d)", g, rc);
      return rc;
    }
    if ((rc = submit_write(s, cur))) return rc;
  }
  return ZP_OK;
}

static int nv_step_end(void* st) {
  nv_t* s = st;
  if (!s->aio) return ZP_OK;
  int rc = check_failed(s);
  return rc ? rc : quiesce(s);
}

/* ---------------- read / write: init, checkpoints, get_group_params ---------------- */

/* One synchronous aligned request (read()/write() path), counted like the pipeline's. */
static int sync_io(nv_t* s, int g, uint64_t k, char* buf, uint64_t off, size_t bytes, int put) {
  char e[1024];
  uint64_t t;
  int rc = put ? zp_aio_submit_write(s->aio, buf, off, bytes, &t, e, sizeof e)
               : zp_aio_submit_read(s->aio, buf, off, bytes, &t, e, sizeof e);
  if (!rc) {
    s->h->note_io(s->h->ctx, ZP_TIER_NVME, put, bytes);
    rc = zp_aio_wait(s->aio, t, e, sizeof e);
  }
  if (rc) {
    drain_all(s);
    return fail(s, ZP_E_IO, "optimizer state of group %d, sub-group %llu: %s", g, (unsigned long long)k, e);
  }
  return ZP_OK;
}

/* Bytes [off, off+bytes) of this rank's MASTER (fp32) or OPTIM (m then v, fp32) of group g.
 * Each piece that falls in one region (master, m or v) of one sub-group is moved with one
 * request over its 4 KiB-aligned window: a write covering whole 4 KiB blocks is written
 * directly, a partial one reads the window first; a never-written sub-group reads as zeros. */
static int state_io(nv_t* s, int g, zp_category cat, uint64_t off, char* host, size_t bytes, int put) {
  const zp_host* h = s->h;
  int rc = check_failed(s);
  if (rc) return rc;
  if (g < 0 || g >= s->G || !s->grp[g].held || !s->aio || (cat != ZP_CAT_MASTER && cat != ZP_CAT_OPTIM)) {
    h->set_error(h->ctx, "group %d %s: not held on the nvme tier", g,
                 cat == ZP_CAT_PARAM ? "PARAM" : cat == ZP_CAT_MASTER ? "MASTER" : cat == ZP_CAT_OPTIM ? "OPTIM" : "?");
    return ZP_E_INVALID;
  }
  nv_group* G = &s->grp[g];
  uint64_t H = G->held, total = (cat == ZP_CAT_MASTER ? 4 : 8) * H;
  if (off % 4 || bytes % 4 || off > total || bytes > total - off) {
    h->set_error(h->ctx, "group %d: %s of %zu bytes at offset %llu: outside the %llu bytes held or not whole fp32 elements", g,
                 put ? "write" : "read", bytes, (unsigned long long)off, (unsigned long long)total);
    return ZP_E_INVALID;
  }
  if (!bytes) return ZP_OK;
  if ((rc = quiesce(s))) return rc;
  /* element range [e0, e1) of the category: MASTER -> region 0; OPTIM -> m (region 1), v (2) */
  uint64_t e0 = off / 4, e1 = (off + bytes) / 4;
  char* buf = s->slots[0].buf;
  for (int r = 0; r < (cat == ZP_CAT_MASTER ? 1 : 2); r++) {
    int region = cat == ZP_CAT_MASTER ? 0 : 1 + r;
    uint64_t ra = e0 > r * H ? e0 - r * H : 0, rb = e1 - r * H; /* range inside this region's H elements */
    if (e1 <= r * H || ra >= H) continue;
    if (rb > H) rb = H;
    for (uint64_t k = ra / s->S; k * s->S < rb; k++) {
      uint64_t L = sub_len(s, g, k), kb = k * s->S;
      uint64_t a = (ra > kb ? ra : kb) - kb, b = (rb < kb + L ? rb : kb + L) - kb; /* inside the sub-group */
      uint64_t wa = a / NV_SUB_ALIGN * NV_SUB_ALIGN, wb = (b + NV_SUB_ALIGN - 1) / NV_SUB_ALIGN * NV_SUB_ALIGN;
      uint64_t foff = sub_off(s, g, k) + ((uint64_t)region * L + wa) * 4;
      size_t wbytes = (size_t)(wb - wa) * 4;
      char* sp = buf + (a - wa) * 4;
      char* hp = host + (r * H + kb + a - e0) * 4;
      size_t n = (size_t)(b - a) * 4;
      int whole = put && a == wa && b == wb;
      if (!whole) {
        if (G->fresh[k]) memset(buf, 0, wbytes);
        else if ((rc = sync_io(s, g, k, buf, foff, wbytes, 0))) return rc;
      }
      if (!put) {
        memcpy(hp, sp, n);
        continue;
      }
      memcpy(sp, hp, n);
      if ((rc = sync_io(s, g, k, buf, foff, wbytes, 1))) return rc;
      G->fresh[k] = 0;
    }
  }
  return ZP_OK;
}

static int nv_read(void* st, int g, zp_category cat, uint64_t off, void* host, size_t bytes) {
  return state_io(st, g, cat, off, host, bytes, 0);
}
static int nv_write(void* st, int g, zp_category cat, uint64_t off, const void* host, size_t bytes) {
  return state_io(st, g, cat, off, (char*)host, bytes, 1);
}

static const zp_tier_ops nv_ops = {
  sizeof(zp_tier_ops), ZP_TIER_NVME, nv_open, nv_close, nv_plan, nv_update, nv_step_end, nv_read, nv_write, NULL,
  NULL, /* grad_ready: gradients are read at update time */ 
};
static const zp_plugin_desc nv_desc = {
  sizeof(zp_plugin_desc), ZP_ABI_MAJOR, ZP_ABI_MINOR, "offload_nvme", "0.2.0", ZP_KIND_TIER,
  "NVMe tier: fp32 master + Adam moments in O_DIRECT files (io_uring), pipelined CPU AdamW",
  NULL, &nv_ops, NULL, NULL,
};
ZP_PLUGIN_EXPORT const zp_plugin_desc* zp_plugin_entry(void) { return &nv_desc; }
