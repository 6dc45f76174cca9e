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
 * Host share (offload.optimizer.host_ratio = f): the first groups of that layout, while their
 * held elements stay within f x the tier's total (per rank; resident_groups(), the same rule in
 * plan() and open()), stay in one zeroed host buffer (host->alloc, cpu tier): the layout's
 * offsets are kept as a virtual file whose bytes [0, R) are that buffer and [R, end) the real
 * file at offset - R (R = the first non-resident group's offset, so no request straddles it).
 * The update of a resident group runs the AdamW in place on that buffer (no slot,
 * no copy, no I/O; no prefetch reaches it); checkpoint and init requests below R are memcpys (no
 * note_io); the ledger counts those groups as cpu-tier MASTER (4 bytes) and OPTIM (8 bytes)
 * per element, the rest as nvme. With f = 1 no file is opened. Not with parameter offload.
 *
 * The update is pipelined per sub-group over `buffer_count` page-locked slots (host->alloc of
 * cpu-tier BUFFER, counted in the ledger): the read of sub-group k+1.. is in flight while the
 * gradient of k is copied to the host and AdamW runs on it, while the write-back of k-1 is in
 * flight. After the last sub-group of group g the first ones of group g+1 are prefetched (the
 * strategies update groups in order); step_end() waits for every write.
 *
 * Parameter offload (offload.param.plugin = "offload_nvme", stage 3, with the optimizer here at
 * ratio 1): the sharded PARAM shards live in a second file under offload.param.path, each
 * group's shard contiguous (pdt). The AdamW writes a sub-group's new parameters into its slot
 * (after master | m | v) and the write-back sends them to that file with a second request;
 * stage 3 reads a whole shard for each gather through fetch() (one request, in the background:
 * ABI 1.6 zp_host.fetch_state), so the device holds no parameter shard. With parameters here
 * the sub-group length is a multiple of 2048 elements, so bf16 pieces stay 4 KiB-aligned.
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
 *   memory-backed path; less free disk than the world's files need (statvfs, the file part
 *   only); host staging plus the host_ratio part above offload.optimizer.max_host_gb or
 *   physical RAM; host_ratio > 0 with parameter offload; parameter offload without the optimizer
 *   here or with ratio < 1; fp64 training. Numbers are in the messages.
 * - fetch() reads only between steps' updates: the core waits for every fetch before update()
 *   (stage 3 does, at its step), and step_end() has waited for every write, so a fetch never
 *   reads a shard being rewritten.
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
  char* buf;    /* 4 KiB-aligned, 12*S bytes [master | m | v] (+ ps*S: new parameters, pbuf) */
  char* pbuf;
  int pw;           /* a parameter write-back (pticket, on the parameter file) is in flight */
  uint64_t pticket;
  int pvalid;       /* pbuf holds the current parameters of (g, k) */
} nv_slot;

typedef struct {
  uint64_t held;      /* elements of MASTER (and of m, of v) this rank holds; 0: not on this tier */
  uint64_t file_off;  /* byte offset of the group's first sub-group */
  uint64_t nsub;
  unsigned char* fresh; /* [nsub] 1: never written (reads as zeros) */
  int par;              /* PARAM (the shard: held elements, pdt) is on this tier too */
  uint64_t poff;        /* its byte offset in the parameter file */
  int pfresh;           /* never written: reads as zeros */
} nv_group;

typedef struct {
  const zp_host* h;
  int dry;
  zp_aio* aio;
  zp_aio* paio;         /* the parameter file (parameter offload), else NULL */
  size_t ps;            /* bytes per parameter element */
  uint64_t pfile_bytes;
  long long noted_param;
  uint64_t fq_ticket[8]; /* recent fetches (for the group in an error message) */
  int fq_group[8], fq_next;
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
  uint64_t file_bytes;   /* the virtual file: every group's sub-groups, resident ones included */
  long long noted_master, noted_optim;
  /* offload.optimizer.host_ratio: bytes [0, res_bytes) of the virtual file (the first res_groups
   * groups) live in res (host memory); the real file holds [res_bytes, file_bytes) at offset
   * - res_bytes */
  uint64_t res_bytes;
  int res_groups;
  char* res;
  long long noted_rmaster, noted_roptim; /* cpu-tier MASTER / OPTIM of the resident groups */
  int live;             /* opened with state on this tier (not a dry run) */
  int failed;
  char ferr[1400];
} nv_t;

/* ---------------- configuration shared by plan() and open() ---------------- */

typedef struct {
  const char* path;
  int64_t qd, bs, bc;
  uint64_t S;
  uint64_t align; /* sub-group lengths are multiples of this (NV_SUB_ALIGN, 2 x with parameters) */
  int nslots;
  int par;        /* parameter offload here */
  size_t ps;      /* bytes per parameter element (train.precision) */
  const char* ppath;
  int64_t pqd, pbs;
  double host_ratio; /* offload.optimizer.host_ratio */
} nv_cfg;

static int which(const zp_host* h, int* opt, int* par);

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
  h->config_float(h->ctx, "offload.optimizer.host_ratio", &c->host_ratio);
  int opt = 0;
  which(h, &opt, &c->par);
  const char* prec = "fp32";
  h->config_string(h->ctx, "train.precision", &prec);
  c->ps = strcmp(prec, "bf16") == 0 ? 2 : 4;
  c->ppath = "";
  c->pqd = 32;
  c->pbs = 1 << 20;
  h->config_string(h->ctx, "offload.param.path", &c->ppath);
  h->config_int(h->ctx, "offload.param.queue_depth", &c->pqd);
  h->config_int(h->ctx, "offload.param.block_size", &c->pbs);
  if (c->pqd < 1) c->pqd = 1;
  if (c->pbs < 4096) c->pbs = 4096;
  if (c->qd < 1) c->qd = 1;
  if (c->bc < 1) c->bc = 1;
  if (c->bs < 4096) c->bs = 4096;
  /* a slot holds one sub-group (12 bytes per element) and is as large as the engine's staging
   * buffer would be: block_size * ceil(queue_depth / buffer_count), so the slots in flight
   * together fill the queue */
  uint64_t buf = (uint64_t)c->bs * (uint64_t)((c->qd + c->bc - 1) / c->bc);
  c->align = c->par ? 2 * NV_SUB_ALIGN : NV_SUB_ALIGN;
  uint64_t S = buf / 12 / c->align * c->align;
  c->S = S < c->align ? c->align : S;
  c->nslots = (int)c->bc;
}

/* offload.optimizer.host_ratio: how many of the tier's groups (held[0..n), in file order) stay in
 * host memory: the longest prefix whose held elements stay within host_ratio x the total. The
 * same rule in plan() and open(), on the same numbers, so every rank and the plan agree. */
static int resident_groups(const uint64_t* held, int n, double host_ratio) {
  double total = 0, cum = 0;
  for (int i = 0; i < n; i++) total += (double)held[i];
  const double cap = host_ratio * total;
  int r = 0;
  while (r < n && cum + (double)held[r] <= cap) cum += (double)held[r++];
  return r;
}

/* bytes of one slot per element: master + m + v (+ the new parameters) */
static double slot_elem_bytes(const nv_cfg* c) { return 12.0 + (c->par ? (double)c->ps : 0.0); }

/* host bytes of staging per rank: slots + gradient + parameter staging (+ alignment) */
static double staging_bytes(const nv_cfg* c, uint64_t max_held) {
  uint64_t S = c->S < max_held ? c->S : max_held;
  if (S < c->align) S = c->align;
  return (double)c->nslots * slot_elem_bytes(c) * (double)S + 4096.0 + 2.0 * (4.0 * (double)S + 64.0);
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

/* The directory `key` = path: exists, is a writable directory on a real disk (not tmpfs/ramfs),
 * and its filesystem has `need` bytes free (what: the bytes, for the message). */
static int check_dir(const zp_host* h, const char* key, const char* path, double need, const char* what) {
  char b1[48], b3[48];
  struct stat st;
  if (!path[0]) {
    h->set_error(h->ctx, "%s is empty: the nvme tier needs a directory on a fast local disk", key);
    return ZP_E_INVALID;
  }
  if (stat(path, &st) != 0) {
    h->set_error(h->ctx, "%s = \"%s\": %s: create the directory on a fast local disk (the tier needs %s there: %s)", key,
                 path, strerror(errno), gbs(b1, sizeof b1, need), what);
    return ZP_E_INVALID;
  }
  if (!S_ISDIR(st.st_mode)) {
    h->set_error(h->ctx, "%s = \"%s\" is not a directory", key, path);
    return ZP_E_INVALID;
  }
  if (access(path, W_OK | X_OK) != 0) {
    h->set_error(h->ctx, "%s = \"%s\": not writable by this user (%s)", key, path, strerror(errno));
    return ZP_E_INVALID;
  }
  struct statfs sf;
  if (statfs(path, &sf) == 0 && ((unsigned long)sf.f_type == NV_TMPFS || (unsigned long)sf.f_type == NV_RAMFS)) {
    h->set_error(h->ctx, "%s = \"%s\" is on %s, which keeps files in memory: O_DIRECT bypasses nothing there; use a "
                 "directory on a real disk (ext4/xfs on NVMe)", key, path,
                 (unsigned long)sf.f_type == NV_TMPFS ? "tmpfs" : "ramfs");
    return ZP_E_INVALID;
  }
  struct statvfs vf;
  const char* skip = getenv("ZP_NVME_NO_SPACE_CHECK");
  if (!(skip && skip[0] == '1') && statvfs(path, &vf) == 0) {
    double avail = (double)vf.f_bavail * (double)vf.f_frsize;
    if (avail < need) {
      h->set_error(h->ctx, "%s = \"%s\": the nvme tier needs %s (%.0f bytes) on that filesystem, %s, but it has %s "
                   "(%.0f bytes) free (statvfs): free space, or use a larger disk", key, path, gbs(b1, sizeof b1, need),
                   need, what, gbs(b3, sizeof b3, avail), avail);
      return ZP_E_NOMEM;
    }
  }
  return ZP_OK;
}

static int same_fs(const char* a, const char* b) {
  struct stat x, y;
  return stat(a, &x) == 0 && stat(b, &y) == 0 && x.st_dev == y.st_dev;
}

static int nv_plan(const zp_host* h, zp_plan* p) {
  int opt, par;
  which(h, &opt, &par);
  if (par && !opt) {
    h->set_error(h->ctx, "offload.param.plugin = \"offload_nvme\" needs offload.optimizer.plugin = \"offload_nvme\" too: the "
                 "tier's AdamW writes the offloaded parameter shards with the optimizer state (the device optimizer cannot "
                 "reach them)");
    return ZP_E_INVALID;
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
  double per_rank = 0, pper_rank = 0, ratio = 1.0;
  uint64_t max_held = 0;
  unsigned char* take = calloc((size_t)(p->n_groups > 0 ? p->n_groups : 1), 1);
  uint64_t* hv = calloc((size_t)(p->n_groups > 0 ? p->n_groups : 1), sizeof *hv); /* held of the tier's groups, in order */
  int nhv = 0;
  if (!take || !hv) {
    free(take);
    free(hv);
    return ZP_E_NOMEM;
  }
  int prc = zp_offload_pick(h, p, take, &ratio);
  if (!prc && par && c.host_ratio > 0) {
    h->set_error(h->ctx, "offload.optimizer.host_ratio = %g with offload.param.plugin = \"offload_nvme\": keeping part of "
                 "the optimizer state in host memory is not supported together with parameter offload; use host_ratio = 0 "
                 "(or offload.param.plugin = \"none\")", c.host_ratio);
    prc = ZP_E_INVALID;
  }
  if (!prc && par && ratio < 1.0) {
    h->set_error(h->ctx, "offload.param.plugin = \"offload_nvme\" with offload.optimizer.ratio = %g: a group whose parameters "
                 "are on NVMe needs its optimizer state there too; use ratio = 1 with parameter offload", ratio);
    prc = ZP_E_INVALID;
  }
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
    hv[nhv++] = held;
    if (held > max_held) max_held = held;
    /* parameter offload: the sharded PARAM (stage 3) goes to the parameter file; parameters
     * stage 3 keeps replicated (zero.persist_threshold) stay on the device */
    if (par && gp->place[ZP_CAT_PARAM].sharded && gp->place[ZP_CAT_OPTIM].sharded) {
      gp->place[ZP_CAT_PARAM].tier = ZP_TIER_NVME;
      pper_rank += (double)c.ps * (double)held;
    }
  }
  free(take);
  /* offload.optimizer.host_ratio: the first groups stay in host memory, the file holds the rest */
  int nres = prc ? 0 : resident_groups(hv, nhv, c.host_ratio);
  double res_rank = 0;
  for (int i = 0; i < nres; i++) res_rank += 12.0 * (double)hv[i];
  free(hv);
  if (prc) return prc;
  const double all_rank = per_rank;
  per_rank -= res_rank; /* the file's part */
  int world = p->world_size > 0 ? p->world_size : 1;
  char what[768], b2[48], b4[48];
  double pneed = pper_rank * world;
  int shared = par && same_fs(c.path, c.ppath);
  char b5[48], b6[48], resw[256] = "";
  if (nres)
    snprintf(resw, sizeof resw, "; of the %s held per rank, %s (%d group%s) stay in host memory (host_ratio %g)",
             gbs(b5, sizeof b5, all_rank), gbs(b6, sizeof b6, res_rank), nres, nres > 1 ? "s" : "", c.host_ratio);
  snprintf(what, sizeof what, "%d rank%s x %s (fp32 master + Adam m, v: 12 bytes x parameters held per rank%s)%s%s", world,
           world > 1 ? "s" : "", gbs(b2, sizeof b2, per_rank), resw, shared ? " + the parameter files, " : "",
           shared ? gbs(b4, sizeof b4, pneed) : "");
  if ((prc = check_dir(h, "offload.optimizer.path", c.path, per_rank * world + (shared ? pneed : 0), what))) return prc;
  if (par) {
    snprintf(what, sizeof what, "%d rank%s x %s (the parameter shards: %zu bytes x parameters held per rank)", world,
             world > 1 ? "s" : "", gbs(b2, sizeof b2, pper_rank), c.ps);
    if ((prc = check_dir(h, "offload.param.path", c.ppath, shared ? per_rank * world + pneed : pneed, what))) return prc;
  }
  char b1[48], b3[48];
  /* host memory: the staging slots (+ the resident groups' state, host_ratio) */
  uint64_t S = c.S < max_held ? c.S : max_held;
  double host = staging_bytes(&c, max_held) + res_rank;
  double cap = 0;
  h->config_float(h->ctx, "offload.optimizer.max_host_gb", &cap);
  if (cap > 0 && host > cap * 1e9 && res_rank > 0) {
    h->set_error(h->ctx, "the nvme tier needs %s of host memory per rank: %s of optimizer state kept in host memory "
                 "(offload.optimizer.host_ratio = %g: %d group%s, 12 bytes x %.0f elements) + %s of page-locked staging, more "
                 "than offload.optimizer.max_host_gb = %g: lower host_ratio (the file then holds more)",
                 gbs(b1, sizeof b1, host), gbs(b2, sizeof b2, res_rank), c.host_ratio, nres, nres > 1 ? "s" : "",
                 res_rank / 12.0, gbs(b3, sizeof b3, host - res_rank), cap);
    return ZP_E_NOMEM;
  }
  if (cap > 0 && host > cap * 1e9) {
    h->set_error(h->ctx, "the nvme tier's page-locked staging needs %s of host memory per rank (buffer_count %d x %g bytes "
                 "x %llu-element sub-groups + gradient/parameter staging), more than offload.optimizer.max_host_gb = %g: "
                 "lower offload.optimizer.buffer_count, block_size or queue_depth", gbs(b1, sizeof b1, host), c.nslots,
                 slot_elem_bytes(&c), (unsigned long long)S, cap);
    return ZP_E_NOMEM;
  }
  long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
  if (pages > 0 && psz > 0 && host * world > (double)pages * (double)psz && res_rank > 0) {
    h->set_error(h->ctx, "the nvme tier needs %s of host memory (%d rank%s x %s: %s of optimizer state kept in host memory, "
                 "offload.optimizer.host_ratio = %g, + %s of staging), more than this machine's %s: lower host_ratio",
                 gbs(b1, sizeof b1, host * world), world, world > 1 ? "s" : "", gbs(b2, sizeof b2, host),
                 gbs(b3, sizeof b3, res_rank), c.host_ratio, gbs(b4, sizeof b4, host - res_rank),
                 gbs(b5, sizeof b5, (double)pages * (double)psz));
    return ZP_E_NOMEM;
  }
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

/* host_ratio: a request at virtual file offset off (bytes long) on the state file is served from
 * host memory (1: memcpy, at once, not counted as I/O) or by the file at off - res_bytes (0).
 * res_bytes is a group boundary and no request spans two groups, so none straddles it. */
static int resident(const nv_t* s, uint64_t off) { return off < s->res_bytes; }
static void res_copy(nv_t* s, char* buf, uint64_t off, size_t bytes, int put) {
  if (put) memcpy(s->res + off, buf, bytes);
  else memcpy(buf, s->res + off, bytes);
}

/* After an I/O error: wait for everything still in flight (ignoring further errors: the first
 * one is reported), free every slot. */
static void drain_all(nv_t* s) {
  char e[256];
  zp_aio_drain(s->aio, e, sizeof e);
  if (s->paio) zp_aio_drain(s->paio, e, sizeof e);
  for (int i = 0; i < s->nslots; i++) s->slots[i].state = SL_FREE, s->slots[i].pw = 0;
}

static int wait_slot(nv_t* s, nv_slot* sl) {
  char e[1024];
  int rc = zp_aio_wait(s->aio, sl->ticket, e, sizeof e), prc = 0;
  if (!rc && sl->state == SL_WRITING && sl->pw) prc = rc = zp_aio_wait(s->paio, sl->pticket, e, sizeof e);
  sl->pw = 0;
  if (rc) {
    int g = sl->g;
    unsigned long long k = (unsigned long long)sl->k;
    drain_all(s);
    return fail(s, ZP_E_IO, "%s of group %d, sub-group %llu: %s", prc ? "parameters" : "optimizer state", g, k, e);
  }
  sl->state = sl->state == SL_WRITING ? SL_FREE : SL_READY;
  return ZP_OK;
}

static int submit_read(nv_t* s, nv_slot* sl, int g, uint64_t k) {
  nv_group* G = &s->grp[g];
  uint64_t len = sub_len(s, g, k), bytes = 12 * len;
  sl->g = g;
  sl->k = k;
  sl->pvalid = 0;
  if (G->fresh[k]) { /* never written: zeros, no I/O */
    memset(sl->buf, 0, (size_t)bytes);
    sl->state = SL_READY;
    return ZP_OK;
  }
  char e[1024];
  int rc = zp_aio_submit_read(s->aio, sl->buf, sub_off(s, g, k) - s->res_bytes, (size_t)bytes, &sl->ticket, e, sizeof e);
  if (rc) {
    drain_all(s);
    return fail(s, ZP_E_IO, "optimizer state of group %d, sub-group %llu: %s", g, (unsigned long long)k, e);
  }
  sl->state = SL_READING;
  s->h->note_io(s->h->ctx, ZP_TIER_NVME, 0, bytes);
  return ZP_OK;
}

/* byte offset of sub-group k's parameters in the parameter file */
static uint64_t psub_off(const nv_t* s, int g, uint64_t k) { return s->grp[g].poff + k * s->S * s->ps; }

/* the write-back of a slot: [master | m | v] to the state file, and with parameter offload its
 * parameters (pbuf) to the parameter file */
static int submit_write(nv_t* s, nv_slot* sl) {
  nv_group* G = &s->grp[sl->g];
  uint64_t L = sub_len(s, sl->g, sl->k), bytes = 12 * L;
  char e[1024];
  int rc = zp_aio_submit_write(s->aio, sl->buf, sub_off(s, sl->g, sl->k) - s->res_bytes, (size_t)bytes, &sl->ticket, e, sizeof e);
  if (rc) {
    drain_all(s);
    return fail(s, ZP_E_IO, "optimizer state of group %d, sub-group %llu: %s", sl->g, (unsigned long long)sl->k, e);
  }
  G->fresh[sl->k] = 0;
  sl->state = SL_WRITING;
  sl->seq = ++s->seq;
  s->h->note_io(s->h->ctx, ZP_TIER_NVME, 1, bytes);
  if (G->par) {
    uint64_t pb = L * s->ps;
    if ((rc = zp_aio_submit_write(s->paio, sl->pbuf, psub_off(s, sl->g, sl->k), (size_t)pb, &sl->pticket, e, sizeof e))) {
      drain_all(s);
      return fail(s, ZP_E_IO, "parameters of group %d, sub-group %llu: %s", sl->g, (unsigned long long)sl->k, e);
    }
    sl->pw = 1;
    G->pfresh = 0;
    s->h->note_io(s->h->ctx, ZP_TIER_NVME, 1, pb);
  }
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
  if (s->paio) {
    char e[1024];
    if (zp_aio_close(s->paio, e, sizeof e)) h->log(h->ctx, ZP_LOG_WARN, "closing the nvme parameter file: %s", e);
  }
  if (s->noted_param) h->note_bytes(h->ctx, ZP_CAT_PARAM, ZP_TIER_NVME, -s->noted_param);
  if (s->noted_master) h->note_bytes(h->ctx, ZP_CAT_MASTER, ZP_TIER_NVME, -s->noted_master);
  if (s->noted_optim) h->note_bytes(h->ctx, ZP_CAT_OPTIM, ZP_TIER_NVME, -s->noted_optim);
  if (s->noted_rmaster || s->noted_roptim) { /* the resident buffer (see open): its memory, then its two counts */
    h->free(h->ctx, ZP_CAT_MASTER, ZP_TIER_CPU, s->res, 0);
    h->note_bytes(h->ctx, ZP_CAT_MASTER, ZP_TIER_CPU, -s->noted_rmaster);
    h->note_bytes(h->ctx, ZP_CAT_OPTIM, ZP_TIER_CPU, -s->noted_roptim);
  }
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
  uint64_t off = 0, poff = 0, max_held = 0;
  long long mbytes = 0, obytes = 0;
  s->ps = c.ps;
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
    if (held % c.align) {
      h->set_error(h->ctx, "internal: group %d holds %llu elements, not a multiple of %llu", g, (unsigned long long)held,
                   (unsigned long long)c.align);
      return ZP_E_INTERNAL;
    }
    nv_group* G = &s->grp[g];
    if (in.place[ZP_CAT_PARAM].tier == ZP_TIER_NVME) {
      if (in.bytes[ZP_CAT_PARAM] != held * c.ps || zp_dtype_size(in.dtype[ZP_CAT_PARAM]) != c.ps) {
        h->set_error(h->ctx, "group %d: PARAM on the nvme tier holds %zu bytes of %zu-byte elements; the tier expected the "
                     "optimizer's %llu elements of %zu bytes", g, in.bytes[ZP_CAT_PARAM], zp_dtype_size(in.dtype[ZP_CAT_PARAM]),
                     (unsigned long long)held, c.ps);
        return ZP_E_INVALID;
      }
      G->par = 1;
      G->pfresh = 1;
      G->poff = poff;
      poff += held * c.ps;
    }
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
  s->pfile_bytes = poff;
  if (!off) return ZP_OK; /* nothing on this tier */
  /* host_ratio: the first groups in file order stay in host memory (plan() made the same choice) */
  long long rmaster = 0, roptim = 0;
  {
    uint64_t* hv = malloc((size_t)s->G * sizeof *hv);
    int* gi = malloc((size_t)s->G * sizeof *gi);
    int n = 0;
    if (!hv || !gi) {
      free(hv);
      free(gi);
      return ZP_E_NOMEM;
    }
    for (int g = 0; g < s->G; g++)
      if (s->grp[g].held) hv[n] = s->grp[g].held, gi[n++] = g;
    s->res_groups = resident_groups(hv, n, c.host_ratio);
    s->res_bytes = s->res_groups < n ? s->grp[gi[s->res_groups]].file_off : off;
    for (int i = 0; i < s->res_groups; i++) rmaster += 4 * (long long)hv[i], roptim += 8 * (long long)hv[i];
    free(hv);
    free(gi);
  }
  if (s->res_groups && poff) {
    h->set_error(h->ctx, "offload.optimizer.host_ratio = %g is not supported with parameter offload", c.host_ratio);
    return ZP_E_INVALID;
  }
  s->S = c.S < max_held ? c.S : max_held;
  s->nslots = c.nslots;
  s->lookahead = s->nslots >= 3 ? s->nslots - 2 : s->nslots - 1;
  snprintf(s->path, sizeof s->path, "%s", c.path);
  /* staging (page-locked where the backend can: cpu-tier BUFFER) */
  size_t slot_bytes = (12 + (poff ? s->ps : 0)) * (size_t)s->S;
  s->slot_raw_bytes = (size_t)s->nslots * slot_bytes + ZP_AIO_ALIGN;
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
  if (s->res_bytes) {
    /* host_ratio: one zeroed buffer for bytes [0, res_bytes) of the file layout ([master | m | v]
     * per sub-group). alloc counts it all under one category, so the ledger is told the split:
     * MASTER is lowered by the OPTIM share first (so no count or peak ever passes its final
     * value), the buffer counted as MASTER, then the OPTIM share added: net 4 bytes MASTER and
     * 8 bytes OPTIM per resident element on the cpu tier. close() frees it counting 0 bytes and
     * takes back both notes. */
    h->note_bytes(h->ctx, ZP_CAT_MASTER, ZP_TIER_CPU, -roptim);
    void* r = NULL;
    if ((rc = h->alloc(h->ctx, ZP_CAT_MASTER, ZP_TIER_CPU, (size_t)s->res_bytes,
                       "offload_nvme resident optimizer state (host_ratio)", &r))) {
      h->note_bytes(h->ctx, ZP_CAT_MASTER, ZP_TIER_CPU, roptim);
      return rc;
    }
    h->note_bytes(h->ctx, ZP_CAT_OPTIM, ZP_TIER_CPU, roptim);
    s->res = r;
    s->noted_rmaster = rmaster;
    s->noted_roptim = roptim;
    if (s->res) memset(s->res, 0, (size_t)s->res_bytes);
  }
  h->note_bytes(h->ctx, ZP_CAT_MASTER, ZP_TIER_NVME, mbytes - rmaster);
  h->note_bytes(h->ctx, ZP_CAT_OPTIM, ZP_TIER_NVME, obytes - roptim);
  s->noted_master = mbytes - rmaster;
  s->noted_optim = obytes - roptim;
  if (poff) {
    h->note_bytes(h->ctx, ZP_CAT_PARAM, ZP_TIER_NVME, (long long)poff);
    s->noted_param = (long long)poff;
  }
  if (s->dry) return ZP_OK; /* zp plan: counted, nothing created */
  s->slots = calloc((size_t)s->nslots, sizeof *s->slots);
  if (!s->slots) return ZP_E_NOMEM;
  char* base = (char*)(((uintptr_t)s->slot_raw + ZP_AIO_ALIGN - 1) & ~(uintptr_t)(ZP_AIO_ALIGN - 1));
  for (int i = 0; i < s->nslots; i++) {
    s->slots[i].buf = base + (size_t)i * slot_bytes;
    s->slots[i].pbuf = s->slots[i].buf + 12 * (size_t)s->S;
  }
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
  char file[4400], pfile[4400];
  snprintf(file, sizeof file, "%s/%s-rank%d.optim", s->path, tag, h->rank);
  snprintf(pfile, sizeof pfile, "%s/%s-rank%d.param", c.ppath, tag, h->rank);
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
  /* the file holds [res_bytes, file_bytes) of the layout (host_ratio); none when all is resident */
  int orc = s->file_bytes > s->res_bytes ? zp_aio_open(&s->aio, file, s->file_bytes - s->res_bytes, &o, e, sizeof e) : 0;
  const char* which_file = "optimizer-state";
  if (!orc && poff) { /* the parameter file: its own queue depth and block size */
    o.queue_depth = (int)c.pqd;
    o.block_size = (size_t)c.pbs;
    which_file = "parameter";
    orc = zp_aio_open(&s->paio, pfile, s->pfile_bytes, &o, e, sizeof e);
  }
  if ((rc = agree(h, orc != 0, &any))) return rc;
  if (orc) {
    h->set_error(h->ctx, "rank %d cannot open its %s file: %s", h->rank, which_file, e);
    return ZP_E_IO;
  }
  if (any) {
    h->set_error(h->ctx, "another rank could not open its optimizer-state or parameter file under \"%s\"%s%s%s (its message "
                 "names the reason)", s->path, poff ? " or \"" : "", poff ? c.ppath : "", poff ? "\"" : "");
    return ZP_E_IO;
  }
  if (h->rank == 0 && s->aio)
    h->log(h->ctx, ZP_LOG_INFO, "optimizer state in %s (per rank %.1f MiB, unlinked while open): %s, queue_depth %d, "
           "block_size %lld, %d staging slots of %llu-element sub-groups (%.1f MiB each)", file,
           (double)(s->file_bytes - s->res_bytes) / (1 << 20), zp_aio_backend(s->aio), (int)c.qd, (long long)c.bs, s->nslots,
           (unsigned long long)s->S, 12.0 * (double)s->S / (1 << 20));
  if (h->rank == 0 && s->res_groups) {
    int n = 0;
    for (int g = 0; g < s->G; g++) n += s->grp[g].held != 0;
    h->log(h->ctx, ZP_LOG_INFO, "host_ratio %g: %d of %d groups (%llu of %llu elements, %llu bytes per rank) kept in host "
           "memory; %s", c.host_ratio, s->res_groups, n, (unsigned long long)(s->res_bytes / 12),
           (unsigned long long)(s->file_bytes / 12), (unsigned long long)s->res_bytes,
           s->aio ? "the file holds the rest" : "no file (all resident)");
  }
  s->live = 1; /* update/read/write serve this tier's groups from here on */
  if (h->rank == 0 && poff)
    h->log(h->ctx, ZP_LOG_INFO, "parameter shards in %s (per rank %.1f MiB, unlinked while open): %s", pfile,
           (double)s->pfile_bytes / (1 << 20), zp_aio_backend(s->paio));
  return ZP_OK;
}

/* ---------------- update ---------------- */

/* One synchronous aligned request on engine a (the read()/write() path, and a partial update's
 * parameters), counted like the pipeline's. */
static int sync_io(nv_t* s, zp_aio* a, int g, uint64_t k, char* buf, uint64_t off, size_t bytes, int put) {
  char e[1024];
  uint64_t t;
  if (!s->paio || a != s->paio) { /* the state file: host_ratio's resident part, or the file at off - res_bytes */
    if (resident(s, off)) {
      res_copy(s, buf, off, bytes, put);
      return ZP_OK;
    }
    off -= s->res_bytes;
  }
  int rc = put ? zp_aio_submit_write(a, buf, off, bytes, &t, e, sizeof e) : zp_aio_submit_read(a, buf, off, bytes, &t, e, sizeof e);
  if (!rc) {
    s->h->note_io(s->h->ctx, ZP_TIER_NVME, put, bytes);
    rc = zp_aio_wait(a, t, e, sizeof e);
  }
  if (rc) {
    drain_all(s);
    return fail(s, ZP_E_IO, "%s of group %d, sub-group %llu: %s", a == s->paio ? "parameters" : "optimizer state", g,
                (unsigned long long)k, e);
  }
  return ZP_OK;
}

static int compute(nv_t* s, const zp_optim_range* u, nv_slot* sl, int* piece) {
  const zp_host* h = s->h;
  uint64_t L = sub_len(s, sl->g, sl->k), k0 = sl->k * s->S;
  uint64_t so = u->state_off, a = k0 > so ? k0 : so, b = k0 + L < so + u->count ? k0 + L : so + u->count;
  size_t gs = zp_dtype_size(u->gdt), ps = zp_dtype_size(u->pdt);
  uint64_t n = b - a;
  float* master = (float*)sl->buf + (a - k0);
  float* m = (float*)sl->buf + L + (a - k0);
  float* v = (float*)sl->buf + 2 * L + (a - k0);
  nv_group* G = &s->grp[sl->g];
  char* pdst = NULL; /* where the AdamW writes the new parameters */
  int rc;
  if (G->par) { /* parameter offload: into the slot, written back with it */
    if ((a != k0 || b != k0 + L) && !sl->pvalid) { /* a partial update keeps the rest of the sub-group's parameters */
      if (G->pfresh) memset(sl->pbuf, 0, (size_t)L * ps);
      else if ((rc = sync_io(s, s->paio, sl->g, sl->k, sl->pbuf, psub_off(s, sl->g, sl->k), (size_t)L * ps, 0))) return rc;
    }
    pdst = sl->pbuf + (a - k0) * ps;
  } else if (u->param_out) {
    pdst = s->pstage;
  }
  rc = h->dev->copy_d2h(h->devb, s->gstage, (const char*)u->grad + (a - so) * gs, (size_t)n * gs);
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
    rc = zp_adamw_cpu(pdst ? pdst + kc * ps : NULL, pdst ? u->pdt : ZP_F32, master + kc,
                      (const char*)s->gstage + kc * gs, u->gdt, m + kc, v + kc, (size_t)(pe - pos), &hp, s->threads);
    if (rc) {
      const char* ie = zp_adamw_isa_error(ZP_ISA_AUTO);
      h->set_error(h->ctx, "%s", ie ? ie : "CPU AdamW failed (bad dtype or step)");
      return rc;
    }
    pos = pe;
  }
  if (G->par) {
    sl->pvalid = 1;
  } else if (u->param_out) {
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
  if (u->group < 0 || u->group >= s->G || !s->grp[u->group].held || !s->live) {
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
  if ((u->gdt != ZP_F32 && u->gdt != ZP_BF16) || ((u->param_out || G->par) && u->pdt != ZP_F32 && u->pdt != ZP_BF16)) {
    h->set_error(h->ctx, "group %d: the nvme tier's AdamW takes fp32/bf16 gradients and parameters", g);
    return ZP_E_INVALID;
  }
  if (G->par && zp_dtype_size(u->pdt) != s->ps) {
    h->set_error(h->ctx, "group %d: parameters of %zu bytes per element, but the parameter file holds %zu", g,
                 zp_dtype_size(u->pdt), s->ps);
    return ZP_E_INVALID;
  }
  uint64_t k0 = u->state_off / s->S, k1 = (u->state_off + u->count - 1) / s->S;
  int piece = 0;
  if (resident(s, G->file_off)) { /* host_ratio: the AdamW works in place on the host copy, no slot, no I/O */
    if ((rc = drop_prefetch(s, -1, 0, 0))) return rc;
    for (uint64_t k = k0; k <= k1; k++) {
      nv_slot in_place = {.state = SL_READY, .g = g, .k = k, .buf = s->res + sub_off(s, g, k)};
      if ((rc = compute(s, u, &in_place, &piece))) {
        s->failed = 1; /* the state may be half updated: later calls repeat the error */
        snprintf(s->ferr, sizeof s->ferr, "the update of group %d failed (status %d)", g, rc);
        return rc;
      }
      G->fresh[k] = 0;
    }
    return ZP_OK;
  }
  if ((rc = drop_prefetch(s, g, k0, k1))) return rc;
  for (uint64_t k = k0; k <= k1; k++) {
    nv_slot* cur;
    if ((rc = ensure(s, g, k, &cur))) return rc;
    for (uint64_t j = k + 1; j <= k1 && j <= k + (uint64_t)s->lookahead; j++)
      if ((rc = ensure(s, g, j, NULL))) return rc;
    /* the next group's first sub-groups, when this range ends the group (stream order) */
    if (k + (uint64_t)s->lookahead > k1 && k1 == G->nsub - 1 && u->state_off + u->count == G->held) {
      int gn = g + 1;
      while (gn < s->G && !s->grp[gn].held) gn++;
      for (uint64_t j = 0; gn < s->G && !resident(s, s->grp[gn].file_off) && j < k + (uint64_t)s->lookahead - k1 && j < s->grp[gn].nsub; j++)
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
  if (!s->live) return ZP_OK;
  int rc = check_failed(s);
  return rc ? rc : quiesce(s);
}

/* ---------------- read / write: init, checkpoints, get_group_params ---------------- */

/* Bytes [off, off+bytes) of this rank's MASTER (fp32) or OPTIM (m then v, fp32) of group g.
 * Each piece that falls in one region (master, m or v) of one sub-group is moved with one
 * request over its 4 KiB-aligned window: a write covering whole 4 KiB blocks is written
 * directly, a partial one reads the window first; a never-written sub-group reads as zeros. */
/* One 4 KiB-aligned window of a file (engine a, wbytes at foff, staged in buf) for the piece of n
 * bytes at buf + skip: read: the window is read (or zeros when never written: fresh) and the
 * piece copied to host; write: the piece is copied in and the window written back, read first
 * unless the piece covers it whole. */
static int window_io(nv_t* s, zp_aio* a, int g, uint64_t k, char* buf, uint64_t foff, size_t wbytes, size_t skip, char* host,
                     size_t n, int fresh, int put) {
  int rc;
  if (!(put && skip == 0 && n == wbytes)) {
    if (fresh) memset(buf, 0, wbytes);
    else if ((rc = sync_io(s, a, g, k, buf, foff, wbytes, 0))) return rc;
  }
  if (!put) {
    memcpy(host, buf + skip, n);
    return ZP_OK;
  }
  memcpy(buf + skip, host, n);
  return sync_io(s, a, g, k, buf, foff, wbytes, 1);
}

/* Bytes [off, off+bytes) of this rank's PARAM shard of g (parameter offload): the group's
 * contiguous region of the parameter file, moved through slot 0 in pieces of at most S
 * elements, each over its 4 KiB-aligned window (a partial write reads the window first). */
static int param_io(nv_t* s, int g, uint64_t off, char* host, size_t bytes, int put) {
  const zp_host* h = s->h;
  nv_group* G = &s->grp[g];
  size_t es = s->ps;
  uint64_t H = G->held, A = ZP_AIO_ALIGN / es;
  if (off % es || bytes % es || off > H * es || bytes > H * es - off) {
    h->set_error(h->ctx, "group %d: PARAM %s of %zu bytes at offset %llu: outside the %llu bytes held or not whole elements", g,
                 put ? "write" : "read", bytes, (unsigned long long)off, (unsigned long long)(H * es));
    return ZP_E_INVALID;
  }
  if (!bytes) return ZP_OK;
  int rc = quiesce(s);
  if (rc) return rc;
  char* buf = s->slots[0].buf;
  uint64_t e0 = off / es, e1 = (off + bytes) / es;
  for (uint64_t c0 = e0 / s->S * s->S; c0 < e1; c0 += s->S) {
    uint64_t a = e0 > c0 ? e0 : c0, b = e1 < c0 + s->S ? e1 : c0 + s->S;
    uint64_t wa = a / A * A, wb = (b + A - 1) / A * A;
    if (wb > H) wb = H;
    if ((rc = window_io(s, s->paio, g, c0 / s->S, buf, G->poff + wa * es, (size_t)(wb - wa) * es, (size_t)(a - wa) * es,
                        host + (a - e0) * es, (size_t)(b - a) * es, G->pfresh, put)))
      return rc;
  }
  if (put) G->pfresh = 0; /* bytes never written read as zeros from the (preallocated) file */
  return ZP_OK;
}

static int state_io(nv_t* s, int g, zp_category cat, uint64_t off, char* host, size_t bytes, int put) {
  const zp_host* h = s->h;
  int rc = check_failed(s);
  if (rc) return rc;
  if (cat == ZP_CAT_PARAM && g >= 0 && g < s->G && s->grp[g].par && s->paio) return param_io(s, g, off, host, bytes, put);
  if (g < 0 || g >= s->G || !s->grp[g].held || !s->live || (cat != ZP_CAT_MASTER && cat != ZP_CAT_OPTIM)) {
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
      if ((rc = window_io(s, s->aio, g, k, buf, sub_off(s, g, k) + ((uint64_t)region * L + wa) * 4, (size_t)(wb - wa) * 4,
                          (size_t)(a - wa) * 4, host + (r * H + kb + a - e0) * 4, (size_t)(b - a) * 4, G->fresh[k], put)))
        return rc;
      if (put) G->fresh[k] = 0;
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

/* ---------------- fetch (ABI 1.6): a PARAM shard for a stage-3 gather ---------------- */

/* One request for the group's whole shard (the engine splits it into block_size operations);
 * the ticket is the engine's. Never-written parameters are zeros, without I/O (ticket 0). */
static int nv_fetch(void* st, int g, zp_category cat, void* host, uint64_t* ticket) {
  nv_t* s = st;
  const zp_host* h = s->h;
  *ticket = 0;
  int rc = check_failed(s);
  if (rc) return rc;
  if (cat != ZP_CAT_PARAM || g < 0 || g >= s->G || !s->grp[g].par || !s->paio) {
    h->set_error(h->ctx, "fetch: group %d %s is not held on the nvme tier's parameter file", g, cat == ZP_CAT_PARAM ? "PARAM" : "(not PARAM)");
    return ZP_E_INVALID;
  }
  nv_group* G = &s->grp[g];
  size_t bytes = (size_t)(G->held * s->ps);
  if (G->pfresh) {
    memset(host, 0, bytes);
    return ZP_OK;
  }
  char e[1024];
  if ((rc = zp_aio_submit_read(s->paio, host, G->poff, bytes, ticket, e, sizeof e))) {
    drain_all(s);
    return fail(s, ZP_E_IO, "parameters of group %d (fetch for a gather): %s", g, e);
  }
  h->note_io(h->ctx, ZP_TIER_NVME, 0, bytes);
  s->fq_ticket[s->fq_next] = *ticket;
  s->fq_group[s->fq_next] = g;
  s->fq_next = (s->fq_next + 1) % 8;
  return ZP_OK;
}

static int nv_fetch_wait(void* st, uint64_t ticket) {
  nv_t* s = st;
  if (!ticket) return ZP_OK;
  if (!s->paio) return check_failed(s);
  char e[1024], grp[32] = "";
  if (zp_aio_wait(s->paio, ticket, e, sizeof e)) {
    for (int i = 0; i < 8; i++)
      if (s->fq_ticket[i] == ticket) snprintf(grp, sizeof grp, " of group %d", s->fq_group[i]);
    drain_all(s);
    return fail(s, ZP_E_IO, "parameters%s (fetch for a gather): %s", grp, e);
  }
  return ZP_OK;
}

static const zp_tier_ops nv_ops = {
  sizeof(zp_tier_ops), ZP_TIER_NVME, nv_open, nv_close, nv_plan, nv_update, nv_step_end, nv_read, nv_write, NULL,
  NULL, /* grad_ready: gradients are read at update time */
  nv_fetch, nv_fetch_wait,
};
static const zp_plugin_desc nv_desc = {
  sizeof(zp_plugin_desc), ZP_ABI_MAJOR, ZP_ABI_MINOR, "offload_nvme", "0.3.0", ZP_KIND_TIER,
  "NVMe tier: fp32 master + Adam moments (and stage-3 parameter shards) in O_DIRECT files (io_uring), pipelined CPU AdamW",
  NULL, &nv_ops, NULL, NULL,
};
ZP_PLUGIN_EXPORT const zp_plugin_desc* zp_plugin_entry(void) { return &nv_desc; }
