/* ckpt.c: checkpoint save / find / load (resharding) / info / export read (see ckpt.h for the
 * on-disk format and its invariants).
 *
 * Invariants of this implementation:
 * - Every collective step of save/load ends in an "agreement" (an I32 max all-reduce of
 *   (status << 16 | rank)) so all ranks take the same branch and a failure on one rank is
 *   reported on every rank (naming it) instead of leaving the others hanging.
 * - Only rank 0 touches the directory structure (mkdir, meta.json, rename, retention); each
 *   rank writes only its own rankNNNNN.{bin,json}. The file system is shared by the ranks.
 * - Device memory is only read with ops->copy_d2h / written with copy_h2d (after
 *   ops->synchronize); buffers on the cpu tier are plain host memory (memcpy).
 * - A piece is always read whole and CRC-checked before any of its bytes are used.
 * - Nothing here aborts on bad input; every message names the file (and piece). */
#define _DEFAULT_SOURCE
#include "ckpt.h"
#include "seterr.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bf16.h"
#include "comm.h"
#include "crc32c.h"

#define CK_STAGE_BYTES ((size_t)64 << 20) /* host staging chunk for writing */
#define CK_DIR_MAX 3072                   /* longest checkpoint directory path accepted */
#define CK_PATH (CK_DIR_MAX + 512)        /* buffers for paths inside a checkpoint directory */

/* piece kinds, in file order within a group */
enum { PK_MASTER = 0, PK_PARAM = 1, PK_M = 2, PK_V = 3, PK_COUNT = 4 };
static const char* const pk_names[PK_COUNT] = {"master", "param", "m", "v"};


/* ZP_CRASH_AT = name[:n][@rank]; hits of the named point are counted (atomically: the
 * async writer thread has points too). */
static atomic_long g_crash_hits;

void zp_crashpoint(const char* name, int rank) {
  const char* at = getenv("ZP_CRASH_AT");
  if (!at || !name) return;
  size_t nl = strcspn(at, ":@");
  if (nl != strlen(name) || strncmp(at, name, nl) != 0) return;
  long n = 1;
  int want_rank = -1;
  const char* p = at + nl;
  if (*p == ':') {
    n = strtol(p + 1, (char**)&p, 10);
    if (n < 1) n = 1;
  }
  if (*p == '@') want_rank = (int)strtol(p + 1, NULL, 10);
  if (want_rank >= 0) {
    if (rank < 0) {
      const char* e = getenv("ZP_RANK");
      if (!e) e = getenv("RANK");
      rank = e ? atoi(e) : 0;
    }
    if (rank != want_rank) return;
  }
  long hit = atomic_fetch_add(&g_crash_hits, 1) + 1;
  if (hit != n) return;
  fprintf(stderr, "zp: crash point '%s' reached (ZP_CRASH_AT=%s, hit %ld): killing myself\n", name, at, hit);
  fflush(stderr);
  raise(SIGKILL);
}

/* ------------------------------------------------------------------------------------------ */
/* small helpers                                                                              */
/* ------------------------------------------------------------------------------------------ */

/* Host dtype conversion (fp32, fp64, bf16 in any direction), the same roundings as the CPU
 * backend's cast: fp32 -> bf16 and fp64 -> bf16 round to nearest even once; widening exact. */
static void host_cast(void* dst, zp_dtype dt, const void* src, zp_dtype st, size_t n) {
  if (dt == st) {
    if (dst != src) memmove(dst, src, n * zp_dtype_size(dt));
    return;
  }
  for (size_t i = 0; i < n; i++) {
    double v;
    if (st == ZP_F64) v = ((const double*)src)[i];
    else if (st == ZP_BF16) v = (double)zp_bf16_to_f32(((const uint16_t*)src)[i]);
    else v = (double)((const float*)src)[i];
    if (dt == ZP_F64) ((double*)dst)[i] = v;
    else if (dt == ZP_F32) ((float*)dst)[i] = st == ZP_F32 ? ((const float*)src)[i] : (float)v;
    else ((uint16_t*)dst)[i] = st == ZP_F64 ? zp_f64_to_bf16(v) : zp_f32_to_bf16((float)v);
  }
}

static int dtype_parse(const char* s, zp_dtype* out) {
  static const struct { const char* n; zp_dtype t; } tab[] = {{"fp32", ZP_F32}, {"fp64", ZP_F64}, {"bf16", ZP_BF16}};
  for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
    if (strcmp(s, tab[i].n) == 0) { *out = tab[i].t; return 0; }
  return -1;
}

static void group_name(int g, int n_groups, char* out, size_t n) {
  if (g == 0) snprintf(out, n, "embed");
  else if (g == n_groups - 1) snprintf(out, n, "head");
  else snprintf(out, n, "block.%d", g - 1);
}

/* last path component of a directory path (trailing slashes ignored) */
static void dir_label(const char* dir, char* out, size_t n) {
  size_t len = strlen(dir);
  while (len > 1 && dir[len - 1] == '/') len--;
  size_t b = len;
  while (b > 0 && dir[b - 1] != '/') b--;
  size_t k = len - b;
  if (k >= n) k = n - 1;
  memcpy(out, dir + b, k);
  out[k] = 0;
  if (!out[0]) snprintf(out, n, "%s", dir);
}

static int write_all(int fd, const void* p, size_t n) {
  const char* c = p;
  while (n) {
    ssize_t w = write(fd, c, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    c += w;
    n -= (size_t)w;
  }
  return 0;
}

static int pread_all(int fd, void* p, size_t n, uint64_t off) {
  char* c = p;
  while (n) {
    ssize_t got = pread(fd, c, n, (off_t)off);
    if (got < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (got == 0) { errno = EIO; return -2; } /* short file */
    c += got;
    n -= (size_t)got;
    off += (uint64_t)got;
  }
  return 0;
}

static int fsync_path(const char* path, int is_dir) {
  int fd = open(path, is_dir ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) return -1;
  int rc = fsync(fd);
  close(fd);
  return rc;
}

/* Write a whole text file and fsync it. */
static int write_text_file(const char* path, const char* text, size_t len, char* err, size_t errlen) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) {
    seterr(err, errlen, "%s: cannot create: %s", path, strerror(errno));
    return ZP_E_IO;
  }
  if (write_all(fd, text, len) || fsync(fd)) {
    seterr(err, errlen, "%s: write failed: %s", path, strerror(errno));
    close(fd);
    return ZP_E_IO;
  }
  if (close(fd)) {
    seterr(err, errlen, "%s: close failed: %s", path, strerror(errno));
    return ZP_E_IO;
  }
  return ZP_OK;
}

static int mkdir_p(const char* path, char* err, size_t errlen) {
  char tmp[CK_PATH];
  if (snprintf(tmp, sizeof tmp, "%s", path) >= (int)sizeof tmp) {
    seterr(err, errlen, "%s: path too long", path);
    return ZP_E_INVALID;
  }
  size_t len = strlen(tmp);
  for (size_t i = 1; i <= len; i++) {
    if (tmp[i] == '/' || tmp[i] == 0) {
      char c = tmp[i];
      tmp[i] = 0;
      if (mkdir(tmp, 0755) != 0 && errno != EEXIST) {
        seterr(err, errlen, "%s: cannot create directory: %s", tmp, strerror(errno));
        return ZP_E_IO;
      }
      tmp[i] = c;
    }
  }
  struct stat st;
  if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
    seterr(err, errlen, "%s: not a directory", path);
    return ZP_E_IO;
  }
  return ZP_OK;
}

/* Remove a directory tree (a checkpoint directory: plain files; one level of subdirectories
 * is tolerated). Missing is fine. */
static int rm_tree(const char* path, int depth) {
  DIR* d = opendir(path);
  if (!d) return errno == ENOENT ? 0 : -1;
  struct dirent* e;
  int rc = 0;
  char p[4096];
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    snprintf(p, sizeof p, "%s/%s", path, e->d_name);
    struct stat st;
    if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) {
      if (depth < 4 && rm_tree(p, depth + 1)) rc = -1;
    } else if (unlink(p) != 0) {
      rc = -1;
    }
  }
  closedir(d);
  if (rmdir(path) != 0) rc = -1;
  return rc;
}

/* "ckpt_<digits>" exactly (no suffix): returns 1 and the step */
static int parse_ckpt_name(const char* name, int64_t* step) {
  if (strncmp(name, "ckpt_", 5) != 0) return 0;
  const char* p = name + 5;
  if (!*p) return 0;
  int64_t v = 0;
  for (; *p; p++) {
    if (*p < '0' || *p > '9') return 0;
    if (v > (INT64_MAX - 9) / 10) return 0;
    v = v * 10 + (*p - '0');
  }
  *step = v;
  return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* agreement across ranks                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* All ranks call with their local status; returns the same non-zero status on every rank if
 * any failed. The failing rank keeps its own message, the others get one naming it. */
static int ck_agree(zp_run* r, int rc, const char* what, char* err, size_t errlen) {
  if (!r->comm || r->world <= 1) return rc;
  int32_t v = rc ? (int32_t)(((uint32_t)(rc & 0x7fff) << 16) | ((uint32_t)r->rank & 0xffffu)) : 0;
  int crc = zp_comm_allreduce(r->comm, &v, 1, ZP_I32, ZP_RED_MAX);
  if (crc) {
    char prev[1024];
    snprintf(prev, sizeof prev, "%s", rc && err ? err : "");
    seterr(err, errlen, "%s: agreement between ranks failed: %s%s%s", what, zp_comm_error(r->comm), prev[0] ? "; before that: " : "",
           prev);
    return ZP_E_COMM;
  }
  if (rc) return rc;
  if (v == 0) return ZP_OK;
  seterr(err, errlen, "%s failed on rank %d (its message is in its output)", what, (int)(v & 0xffff));
  return (int)((uint32_t)v >> 16);
}

int zp_ckpt_agree(zp_run* r, int rc, const char* what, char* err, size_t errlen) { return ck_agree(r, rc, what, err, errlen); }

/* ------------------------------------------------------------------------------------------ */
/* buffer access (device or host tier)                                                        */
/* ------------------------------------------------------------------------------------------ */

/* bytes at byte offset off of this rank's holding of (g, cat): device and host buffers
 * directly, tier-owned storage (nvme: no buffer) through the tier (zp_run_state_get/put) */
static int buf_get(zp_run* r, int g, int cat, void* host, uint64_t off, size_t bytes) {
  const zp_group_info* in = &r->groups[g].info;
  if (!in->buf[cat]) return zp_run_state_get(r, g, (zp_category)cat, off, host, bytes);
  const char* src = (const char*)in->buf[cat] + off;
  if (in->place[cat].tier == ZP_TIER_GPU) return r->ops->copy_d2h(r->be, host, src, bytes);
  memcpy(host, src, bytes);
  return ZP_OK;
}

static int buf_put(zp_run* r, int g, int cat, uint64_t off, const void* host, size_t bytes) {
  const zp_group_info* in = &r->groups[g].info;
  if (!in->buf[cat]) return zp_run_state_put(r, g, (zp_category)cat, off, host, bytes);
  char* dst = (char*)in->buf[cat] + off;
  if (in->place[cat].tier == ZP_TIER_GPU) return r->ops->copy_h2d(r->be, dst, host, bytes);
  memcpy(dst, host, bytes);
  return ZP_OK;
}

/* does this rank hold (g, cat): a buffer, or storage the nvme tier owns */
static int has_state(const zp_group_info* in, int cat) {
  return in->buf[cat] != NULL || (in->place[cat].tier == ZP_TIER_NVME && in->bytes[cat] > 0);
}

/* held range of a category on this rank: [*base, *base + *held) of the group's padded buffer */
static void held_range(const zp_group_info* in, int cat, uint64_t* base, uint64_t* held) {
  if (in->place[cat].sharded) {
    *base = in->shard_off;
    *held = in->shard_len;
  } else {
    *base = 0;
    *held = in->padded;
  }
}

/* ------------------------------------------------------------------------------------------ */
/* metadata model (parsed meta.json + rank indexes)                                           */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
  uint64_t start, end; /* elements, inside the piece's range */
  uint32_t crc;
} ck_seg;

typedef struct {
  int group, kind;
  uint64_t start, end, offset, bytes;
  zp_dtype dtype;
  uint32_t crc;
  int n_seg;   /* per-tensor CRCs ("segments"; 0 if the writer stored none) */
  ck_seg* seg;
} ck_piece;

typedef struct {
  int rank;
  char file[64], index[64];
  uint64_t bytes;
  uint32_t crc;
  int n_pieces;
  ck_piece* pieces;
} ck_file;

typedef struct {
  char name[64];
  int group;
  uint64_t offset, numel;
} ck_tensor;

typedef struct {
  char dir[CK_DIR_MAX + 16];
  char label[256];
  int64_t step;
  uint64_t data_pos;
  int step_t;
  zp_gpt2_shape s;
  uint64_t total_params;
  int world;
  char strategy[128], precision[32], dt_param[16], dt_master[16], writer[16];
  int version;
  int n_groups;
  uint64_t* span;         /* [n_groups] */
  int* wkind;             /* [n_groups] PK_MASTER or PK_PARAM */
  zp_dtype* wdtype;       /* [n_groups] */
  int n_tensors;
  ck_tensor* tensors;
  int n_files;
  ck_file* files;
  int indexes_loaded;
} ck_meta;

static void meta_free(ck_meta* m) {
  free(m->span);
  free(m->wkind);
  free(m->wdtype);
  free(m->tensors);
  if (m->files)
    for (int i = 0; i < m->n_files; i++) {
      for (int j = 0; m->files[i].pieces && j < m->files[i].n_pieces; j++) free(m->files[i].pieces[j].seg);
      free(m->files[i].pieces);
    }
  free(m->files);
  memset(m, 0, sizeof *m);
}

/* typed JSON field access with messages naming the file */
static int jint(json_t* o, const char* key, int64_t lo, int64_t hi, int64_t* out, const char* where, char* err, size_t errlen) {
  json_t* v = json_object_get(o, key);
  if (!v || !json_is_integer(v)) {
    seterr(err, errlen, "%s: \"%s\" is missing or not an integer", where, key);
    return ZP_E_CORRUPT;
  }
  int64_t x = (int64_t)json_integer_value(v);
  if (x < lo || x > hi) {
    seterr(err, errlen, "%s: \"%s\" = %" PRId64 " is out of range [%" PRId64 ", %" PRId64 "]", where, key, x, lo, hi);
    return ZP_E_CORRUPT;
  }
  *out = x;
  return ZP_OK;
}

static int jstr(json_t* o, const char* key, const char** out, const char* where, char* err, size_t errlen) {
  json_t* v = json_object_get(o, key);
  if (!v || !json_is_string(v)) {
    seterr(err, errlen, "%s: \"%s\" is missing or not a string", where, key);
    return ZP_E_CORRUPT;
  }
  *out = json_string_value(v);
  return ZP_OK;
}

#define JTRY(x) do { int rc_ = (x); if (rc_) { rc = rc_; goto fail; } } while (0)

/* Tensor label of a group element range: the tensor's name when it lies in one tensor,
 * "h.L.*" for a range inside block L spanning several, else "first..last". */
static void piece_label(const ck_meta* m, int g, uint64_t a, uint64_t b, char* out, size_t n) {
  int first = -1, last = -1;
  for (int i = 0; i < m->n_tensors; i++) {
    const ck_tensor* t = &m->tensors[i];
    if (t->group != g) continue;
    if (t->offset < b && t->offset + t->numel > a) {
      if (first < 0) first = i;
      last = i;
    }
  }
  if (first < 0) { snprintf(out, n, "(padding)"); return; }
  if (first == last) { snprintf(out, n, "%s", m->tensors[first].name); return; }
  if (g > 0 && g < m->n_groups - 1) { snprintf(out, n, "h.%d.*", g - 1); return; }
  snprintf(out, n, "%s..%s", m->tensors[first].name, m->tensors[last].name);
}

static void piece_desc(const ck_meta* m, const ck_piece* p, char* out, size_t n) {
  char lab[160], gn[32];
  piece_label(m, p->group, p->start, p->end, lab, sizeof lab);
  group_name(p->group, m->n_groups, gn, sizeof gn);
  snprintf(out, n, "%s (group %s, %s, elements %" PRIu64 "..%" PRIu64 ")", lab, gn, pk_names[p->kind], p->start, p->end);
}

static int pieces_parse(ck_meta* m, ck_file* f, json_t* pa, const char* where, char* err, size_t errlen);

/* Parse DIR/meta.json (with version 2 the pieces of every rank file; version 1 keeps them in
 * the rank indexes, read by meta_load_indexes). */
static int meta_load(const char* dir, ck_meta* m, char* err, size_t errlen) {
  memset(m, 0, sizeof *m);
  if (!dir || strlen(dir) >= sizeof m->dir) {
    seterr(err, errlen, "%.200s...: checkpoint directory path missing or too long", dir ? dir : "(null)");
    return ZP_E_INVALID;
  }
  snprintf(m->dir, sizeof m->dir, "%s", dir);
  dir_label(dir, m->label, sizeof m->label);
  char path[CK_PATH], where[512];
  snprintf(path, sizeof path, "%s/meta.json", dir);
  snprintf(where, sizeof where, "%s/meta.json", m->label);
  json_error_t je;
  json_t* root = json_load_file(path, 0, &je);
  if (!root) {
    struct stat st;
    if (stat(path, &st) != 0) seterr(err, errlen, "%s: cannot read: %s (not a complete checkpoint)", path, strerror(errno));
    else seterr(err, errlen, "%s: invalid JSON at line %d column %d: %s", path, je.line, je.column, je.text);
    return ZP_E_CORRUPT;
  }
  int rc = ZP_OK;
  const char* s;
  int64_t x;
  if (!json_is_object(root)) {
    seterr(err, errlen, "%s: not a JSON object", where);
    rc = ZP_E_CORRUPT;
    goto fail;
  }
  JTRY(jstr(root, "format", &s, where, err, errlen));
  if (strcmp(s, ZP_CKPT_FORMAT) != 0) {
    seterr(err, errlen, "%s: format is \"%s\", expected \"%s\"", where, s, ZP_CKPT_FORMAT);
    rc = ZP_E_CORRUPT;
    goto fail;
  }
  JTRY(jint(root, "version", 0, INT32_MAX, &x, where, err, errlen));
  if (x < 1 || x > ZP_CKPT_VERSION) {
    seterr(err, errlen, "%s: format version %" PRId64 " is not supported (this build reads versions 1 to %d)", where, x, ZP_CKPT_VERSION);
    rc = ZP_E_CORRUPT;
    goto fail;
  }
  m->version = (int)x;
  JTRY(jint(root, "step", 0, INT64_MAX, &m->step, where, err, errlen));
  JTRY(jint(root, "data_pos", 0, INT64_MAX, &x, where, err, errlen));
  m->data_pos = (uint64_t)x;
  JTRY(jint(root, "step_t", 0, INT32_MAX, &x, where, err, errlen));
  m->step_t = (int)x;
  JTRY(jint(root, "world_size", 1, 1 << 20, &x, where, err, errlen));
  m->world = (int)x;
  JTRY(jint(root, "total_params", 0, INT64_MAX, &x, where, err, errlen));
  m->total_params = (uint64_t)x;
  JTRY(jstr(root, "strategy", &s, where, err, errlen));
  snprintf(m->strategy, sizeof m->strategy, "%s", s);
  JTRY(jstr(root, "precision", &s, where, err, errlen));
  snprintf(m->precision, sizeof m->precision, "%s", s);
  json_t* dts = json_object_get(root, "dtypes");
  if (json_is_object(dts)) {
    if (jstr(dts, "param", &s, where, NULL, 0) == 0) snprintf(m->dt_param, sizeof m->dt_param, "%s", s);
    if (jstr(dts, "master", &s, where, NULL, 0) == 0) snprintf(m->dt_master, sizeof m->dt_master, "%s", s);
  }
  json_t* mo = json_object_get(root, "model");
  if (!json_is_object(mo)) {
    seterr(err, errlen, "%s: \"model\" is missing or not an object", where);
    rc = ZP_E_CORRUPT;
    goto fail;
  }
  JTRY(jint(mo, "n_layer", 1, 1 << 20, &x, where, err, errlen));
  m->s.L = (int)x;
  JTRY(jint(mo, "n_head", 1, 1 << 20, &x, where, err, errlen));
  m->s.NH = (int)x;
  JTRY(jint(mo, "d_model", 1, 1 << 24, &x, where, err, errlen));
  m->s.C = (int)x;
  JTRY(jint(mo, "seq_len", 1, 1 << 24, &x, where, err, errlen));
  m->s.maxT = (int)x;
  JTRY(jint(mo, "vocab_size", 1, 1 << 26, &x, where, err, errlen));
  m->s.V = (int)x;
  JTRY(jint(mo, "vocab_padded", 1, 1 << 26, &x, where, err, errlen));
  m->s.Vp = (int)x;
  /* groups */
  json_t* ga = json_object_get(root, "groups");
  if (!json_is_array(ga) || json_array_size(ga) != (size_t)m->s.L + 2) {
    seterr(err, errlen, "%s: \"groups\" must be an array of n_layer + 2 = %d groups", where, m->s.L + 2);
    rc = ZP_E_CORRUPT;
    goto fail;
  }
  m->n_groups = m->s.L + 2;
  m->span = calloc((size_t)m->n_groups, sizeof *m->span);
  m->wkind = calloc((size_t)m->n_groups, sizeof *m->wkind);
  m->wdtype = calloc((size_t)m->n_groups, sizeof *m->wdtype);
  if (!m->span || !m->wkind || !m->wdtype) {
    seterr(err, errlen, "%s: out of host memory", where);
    rc = ZP_E_NOMEM;
    goto fail;
  }
  for (int g = 0; g < m->n_groups; g++) {
    json_t* go = json_array_get(ga, (size_t)g);
    char gw[600];
    snprintf(gw, sizeof gw, "%s: groups[%d]", where, g);
    if (!json_is_object(go)) {
      seterr(err, errlen, "%s: not an object", gw);
      rc = ZP_E_CORRUPT;
      goto fail;
    }
    JTRY(jint(go, "span", 0, INT64_MAX, &x, gw, err, errlen));
    m->span[g] = (uint64_t)x;
    JTRY(jstr(go, "weights", &s, gw, err, errlen));
    if (!strcmp(s, "master")) m->wkind[g] = PK_MASTER;
    else if (!strcmp(s, "param")) m->wkind[g] = PK_PARAM;
    else {
      seterr(err, errlen, "%s: weights = \"%s\" (expected \"master\" or \"param\")", gw, s);
      rc = ZP_E_CORRUPT;
      goto fail;
    }
    JTRY(jstr(go, "weights_dtype", &s, gw, err, errlen));
    if (dtype_parse(s, &m->wdtype[g])) {
      seterr(err, errlen, "%s: weights_dtype = \"%s\" (expected fp32, fp64 or bf16)", gw, s);
      rc = ZP_E_CORRUPT;
      goto fail;
    }
  }
  /* tensors */
  json_t* ta = json_object_get(root, "tensors");
  if (!json_is_array(ta) || json_array_size(ta) == 0) {
    seterr(err, errlen, "%s: \"tensors\" is missing or empty", where);
    rc = ZP_E_CORRUPT;
    goto fail;
  }
  m->n_tensors = (int)json_array_size(ta);
  m->tensors = calloc((size_t)m->n_tensors, sizeof *m->tensors);
  if (!m->tensors) {
    seterr(err, errlen, "%s: out of host memory", where);
    rc = ZP_E_NOMEM;
    goto fail;
  }
  for (int i = 0; i < m->n_tensors; i++) {
    json_t* to = json_array_get(ta, (size_t)i);
    char tw[600];
    snprintf(tw, sizeof tw, "%s: tensors[%d]", where, i);
    if (!json_is_object(to)) {
      seterr(err, errlen, "%s: not an object", tw);
      rc = ZP_E_CORRUPT;
      goto fail;
    }
    ck_tensor* t = &m->tensors[i];
    JTRY(jstr(to, "name", &s, tw, err, errlen));
    snprintf(t->name, sizeof t->name, "%s", s);
    JTRY(jint(to, "group", 0, m->n_groups - 1, &x, tw, err, errlen));
    t->group = (int)x;
    JTRY(jint(to, "offset", 0, INT64_MAX, &x, tw, err, errlen));
    t->offset = (uint64_t)x;
    JTRY(jint(to, "numel", 0, INT64_MAX, &x, tw, err, errlen));
    t->numel = (uint64_t)x;
    if (t->offset + t->numel > m->span[t->group]) {
      seterr(err, errlen, "%s: tensor %s [%" PRIu64 ", +%" PRIu64 ") lies outside its group's span %" PRIu64, tw, t->name,
             t->offset, t->numel, m->span[t->group]);
      rc = ZP_E_CORRUPT;
      goto fail;
    }
  }
  /* files */
  json_t* fa = json_object_get(root, "files");
  if (!json_is_array(fa) || json_array_size(fa) != (size_t)m->world) {
    seterr(err, errlen, "%s: \"files\" must list world_size = %d rank files", where, m->world);
    rc = ZP_E_CORRUPT;
    goto fail;
  }
  m->n_files = m->world;
  m->files = calloc((size_t)m->n_files, sizeof *m->files);
  if (!m->files) {
    seterr(err, errlen, "%s: out of host memory", where);
    rc = ZP_E_NOMEM;
    goto fail;
  }
  for (int i = 0; i < m->n_files; i++) {
    json_t* fo = json_array_get(fa, (size_t)i);
    char fw[600];
    snprintf(fw, sizeof fw, "%s: files[%d]", where, i);
    if (!json_is_object(fo)) {
      seterr(err, errlen, "%s: not an object", fw);
      rc = ZP_E_CORRUPT;
      goto fail;
    }
    ck_file* f = &m->files[i];
    JTRY(jint(fo, "rank", i, i, &x, fw, err, errlen));
    f->rank = (int)x;
    JTRY(jstr(fo, "file", &s, fw, err, errlen));
    if (strchr(s, '/') || strlen(s) >= sizeof f->file || !s[0]) {
      seterr(err, errlen, "%s: bad file name \"%s\"", fw, s);
      rc = ZP_E_CORRUPT;
      goto fail;
    }
    snprintf(f->file, sizeof f->file, "%s", s);
    JTRY(jstr(fo, "index", &s, fw, err, errlen));
    if (strchr(s, '/') || strlen(s) >= sizeof f->index || !s[0]) {
      seterr(err, errlen, "%s: bad index name \"%s\"", fw, s);
      rc = ZP_E_CORRUPT;
      goto fail;
    }
    snprintf(f->index, sizeof f->index, "%s", s);
    JTRY(jint(fo, "bytes", 0, INT64_MAX, &x, fw, err, errlen));
    f->bytes = (uint64_t)x;
    JTRY(jint(fo, "crc32c", 0, UINT32_MAX, &x, fw, err, errlen));
    f->crc = (uint32_t)x;
    if (m->version >= 2) JTRY(pieces_parse(m, f, json_object_get(fo, "pieces"), fw, err, errlen));
  }
  if (jstr(root, "writer", &s, where, NULL, 0) == 0) snprintf(m->writer, sizeof m->writer, "%s", s);
fail:
  json_decref(root);
  if (rc) meta_free(m);
  return rc;
}

typedef struct {
  uint64_t off, end;
  int idx;
} ck_span;

static int span_cmp(const void* a, const void* b) {
  const ck_span* x = a;
  const ck_span* y = b;
  return x->off < y->off ? -1 : x->off > y->off ? 1 : 0;
}

/* Parse a pieces array (meta.json v2: files[i].pieces; v1: the rank index) into f->pieces and
 * check every piece against the file's recorded size: element range inside the group's span,
 * bytes = elements x dtype size, [offset, offset + bytes) inside the file, pieces of one file
 * not overlapping, weights of the kind meta.json names for the group. */
static int pieces_parse(ck_meta* m, ck_file* f, json_t* pa, const char* where, char* err, size_t errlen) {
  int rc = ZP_OK;
  int64_t x;
  const char* s;
  ck_span* sp = NULL;
  if (!json_is_array(pa)) {
    seterr(err, errlen, "%s: \"pieces\" is missing or not an array", where);
    return ZP_E_CORRUPT;
  }
  if (f->pieces)
    for (int j = 0; j < f->n_pieces; j++) free(f->pieces[j].seg);
  free(f->pieces);
  f->n_pieces = (int)json_array_size(pa);
  f->pieces = calloc((size_t)f->n_pieces + 1, sizeof *f->pieces);
  sp = calloc((size_t)f->n_pieces + 1, sizeof *sp);
  if (!f->pieces || !sp) {
    seterr(err, errlen, "%s: out of host memory", where);
    rc = ZP_E_NOMEM;
    goto fail;
  }
  for (int i = 0; i < f->n_pieces; i++) {
    json_t* po = json_array_get(pa, (size_t)i);
    char pw[700];
    snprintf(pw, sizeof pw, "%s: pieces[%d]", where, i);
    if (!json_is_object(po)) {
      seterr(err, errlen, "%s: not an object", pw);
      rc = ZP_E_CORRUPT;
      goto fail;
    }
    ck_piece* p = &f->pieces[i];
    JTRY(jint(po, "group", 0, m->n_groups - 1, &x, pw, err, errlen));
    p->group = (int)x;
    JTRY(jstr(po, "kind", &s, pw, err, errlen));
    p->kind = -1;
    for (int k = 0; k < PK_COUNT; k++)
      if (!strcmp(s, pk_names[k])) p->kind = k;
    if (p->kind < 0) {
      seterr(err, errlen, "%s: kind \"%s\" (expected master, param, m or v)", pw, s);
      rc = ZP_E_CORRUPT;
      goto fail;
    }
    JTRY(jstr(po, "dtype", &s, pw, err, errlen));
    if (dtype_parse(s, &p->dtype)) {
      seterr(err, errlen, "%s: dtype \"%s\" (expected fp32, fp64 or bf16)", pw, s);
      rc = ZP_E_CORRUPT;
      goto fail;
    }
    uint64_t span = m->span[p->group];
    JTRY(jint(po, "start", 0, (int64_t)span, &x, pw, err, errlen));
    p->start = (uint64_t)x;
    JTRY(jint(po, "end", (int64_t)p->start + 1, (int64_t)span, &x, pw, err, errlen));
    p->end = (uint64_t)x;
    JTRY(jint(po, "offset", 0, (int64_t)f->bytes, &x, pw, err, errlen));
    p->offset = (uint64_t)x;
    JTRY(jint(po, "bytes", 0, (int64_t)f->bytes, &x, pw, err, errlen));
    p->bytes = (uint64_t)x;
    JTRY(jint(po, "crc32c", 0, UINT32_MAX, &x, pw, err, errlen));
    p->crc = (uint32_t)x;
    uint64_t ne = p->end - p->start;
    if (ne > UINT64_MAX / 8 || p->bytes != ne * zp_dtype_size(p->dtype) || p->offset + p->bytes > f->bytes) {
      seterr(err, errlen, "%s: inconsistent piece: %" PRIu64 " bytes at offset %" PRIu64 " for elements %" PRIu64 "..%" PRIu64
             " of %s in %s of %" PRIu64 " bytes", pw, p->bytes, p->offset, p->start, p->end, s, f->file, f->bytes);
      rc = ZP_E_CORRUPT;
      goto fail;
    }
    if ((p->kind == PK_MASTER || p->kind == PK_PARAM) && p->kind != m->wkind[p->group]) {
      seterr(err, errlen, "%s: a %s piece, but meta.json says group %d saved its weights as %s", pw, pk_names[p->kind], p->group,
             pk_names[m->wkind[p->group]]);
      rc = ZP_E_CORRUPT;
      goto fail;
    }
    json_t* sa = json_object_get(po, "segments");
    if (sa) {
      /* [[start, end, crc32c], ...]: contiguous, covering [start, end) of the piece */
      size_t ns = json_array_size(sa);
      if (!json_is_array(sa) || ns == 0 || ns > ne) {
        seterr(err, errlen, "%s: \"segments\" must be a non-empty array of at most %" PRIu64 " [start, end, crc32c]", pw, ne);
        rc = ZP_E_CORRUPT;
        goto fail;
      }
      p->seg = calloc(ns, sizeof *p->seg);
      if (!p->seg) {
        seterr(err, errlen, "%s: out of host memory", pw);
        rc = ZP_E_NOMEM;
        goto fail;
      }
      p->n_seg = (int)ns;
      uint64_t at = p->start;
      for (size_t k = 0; k < ns; k++) {
        json_t* e = json_array_get(sa, k);
        json_t *e0 = json_array_get(e, 0), *e1 = json_array_get(e, 1), *e2 = json_array_get(e, 2);
        if (!json_is_array(e) || json_array_size(e) != 3 || !json_is_integer(e0) || !json_is_integer(e1) || !json_is_integer(e2) ||
            json_integer_value(e0) != (json_int_t)at || json_integer_value(e1) <= json_integer_value(e0) ||
            (uint64_t)json_integer_value(e1) > p->end || json_integer_value(e2) < 0 || json_integer_value(e2) > (json_int_t)UINT32_MAX) {
          seterr(err, errlen, "%s: segments[%zu] is not [%" PRIu64 ", end <= %" PRIu64 ", crc32c]", pw, k, at, p->end);
          rc = ZP_E_CORRUPT;
          goto fail;
        }
        p->seg[k] = (ck_seg){at, (uint64_t)json_integer_value(e1), (uint32_t)json_integer_value(e2)};
        at = p->seg[k].end;
      }
      if (at != p->end) {
        seterr(err, errlen, "%s: segments end at element %" PRIu64 ", the piece at %" PRIu64, pw, at, p->end);
        rc = ZP_E_CORRUPT;
        goto fail;
      }
    }
    sp[i] = (ck_span){p->offset, p->offset + p->bytes, i};
  }
  qsort(sp, (size_t)f->n_pieces, sizeof *sp, span_cmp);
  for (int i = 1; i < f->n_pieces; i++)
    if (sp[i].off < sp[i - 1].end) {
      seterr(err, errlen, "%s: pieces[%d] (bytes %" PRIu64 "..%" PRIu64 ") and pieces[%d] (bytes %" PRIu64 "..%" PRIu64
             ") of %s overlap", where, sp[i - 1].idx, sp[i - 1].off, sp[i - 1].end, sp[i].idx, sp[i].off, sp[i].end, f->file);
      rc = ZP_E_CORRUPT;
      goto fail;
    }
fail:
  free(sp);
  return rc;
}

/* Version 1: parse one rank index (the pieces live there). */
static int index_load(ck_meta* m, ck_file* f, char* err, size_t errlen) {
  char path[CK_PATH], where[512];
  snprintf(path, sizeof path, "%s/%s", m->dir, f->index);
  snprintf(where, sizeof where, "%s/%s", m->label, f->index);
  json_error_t je;
  json_t* root = json_load_file(path, 0, &je);
  if (!root) {
    struct stat st;
    if (stat(path, &st) != 0) seterr(err, errlen, "%s: missing: %s", where, strerror(errno));
    else seterr(err, errlen, "%s: invalid JSON at line %d column %d: %s", where, je.line, je.column, je.text);
    return ZP_E_CORRUPT;
  }
  int rc = ZP_OK;
  int64_t x;
  if (!json_is_object(root)) {
    seterr(err, errlen, "%s: not a JSON object", where);
    rc = ZP_E_CORRUPT;
    goto fail;
  }
  JTRY(jint(root, "rank", f->rank, f->rank, &x, where, err, errlen));
  JTRY(jint(root, "bytes", (int64_t)f->bytes, (int64_t)f->bytes, &x, where, err, errlen));
  JTRY(jint(root, "crc32c", f->crc, f->crc, &x, where, err, errlen));
  rc = pieces_parse(m, f, json_object_get(root, "pieces"), where, err, errlen);
fail:
  json_decref(root);
  return rc;
}

/* The rank file exists with the size meta.json records. */
static int file_check(const ck_meta* m, const ck_file* f, char* err, size_t errlen) {
  char bpath[CK_PATH];
  snprintf(bpath, sizeof bpath, "%s/%s", m->dir, f->file);
  struct stat st;
  if (stat(bpath, &st) != 0) {
    seterr(err, errlen, "%s/%s: missing: %s", m->label, f->file, strerror(errno));
    return ZP_E_IO;
  }
  if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != f->bytes) {
    /* name the first piece (tensor) the truncation cuts into */
    char cut[640] = "";
    const ck_piece* first = NULL;
    for (int j = 0; j < f->n_pieces; j++) {
      const ck_piece* p = &f->pieces[j];
      if (p->offset + p->bytes > (uint64_t)st.st_size && (!first || p->offset < first->offset)) first = p;
    }
    if (first && (uint64_t)st.st_size < f->bytes) {
      char d[300];
      uint64_t es = zp_dtype_size(first->dtype);
      uint64_t at = (uint64_t)st.st_size > first->offset ? first->start + ((uint64_t)st.st_size - first->offset) / es : first->start;
      char lab[160];
      piece_label(m, first->group, at, at + 1 <= first->end ? at + 1 : first->end, lab, sizeof lab);
      piece_desc(m, first, d, sizeof d);
      snprintf(cut, sizeof cut, "; the data is cut in tensor %s, piece %s", lab, d);
    }
    seterr(err, errlen, "%s/%s: %s: %lld bytes, expected %" PRIu64 "%s", m->label, f->file,
           (uint64_t)st.st_size < f->bytes ? "truncated" : "wrong size", (long long)st.st_size, f->bytes, cut);
    return ZP_E_CORRUPT;
  }
  return ZP_OK;
}

typedef struct {
  uint64_t start, end;
  int file;
} ck_cov;

static int cov_cmp(const void* a, const void* b) {
  const ck_cov* x = a;
  const ck_cov* y = b;
  return x->start < y->start ? -1 : x->start > y->start ? 1 : 0;
}

/* Load every rank index; check that each (group, kind) is covered exactly once over [0, span). */
static int meta_load_indexes(ck_meta* m, char* err, size_t errlen) {
  int total = 0;
  for (int i = 0; i < m->n_files; i++) {
    int rc = m->version >= 2 ? ZP_OK : index_load(m, &m->files[i], err, errlen);
    if (!rc) rc = file_check(m, &m->files[i], err, errlen);
    if (rc) return rc;
    total += m->files[i].n_pieces;
  }
  ck_cov* cv = calloc((size_t)total + 1, sizeof *cv);
  if (!cv) {
    seterr(err, errlen, "%s: out of host memory", m->label);
    return ZP_E_NOMEM;
  }
  int rc = ZP_OK;
  for (int g = 0; g < m->n_groups && !rc; g++) {
    int kinds[3] = {m->wkind[g], PK_M, PK_V};
    for (int k = 0; k < 3 && !rc; k++) {
      int n = 0;
      for (int i = 0; i < m->n_files; i++)
        for (int j = 0; j < m->files[i].n_pieces; j++) {
          const ck_piece* p = &m->files[i].pieces[j];
          if (p->group == g && p->kind == kinds[k]) cv[n++] = (ck_cov){p->start, p->end, i};
        }
      qsort(cv, (size_t)n, sizeof *cv, cov_cmp);
      uint64_t pos = 0;
      char gn[32];
      group_name(g, m->n_groups, gn, sizeof gn);
      for (int i = 0; i < n && !rc; i++) {
        if (cv[i].start > pos) {
          seterr(err, errlen, "%s: incomplete checkpoint: group %s %s elements %" PRIu64 "..%" PRIu64 " are in no rank file", m->label,
                 gn, pk_names[kinds[k]], pos, cv[i].start);
          rc = ZP_E_CORRUPT;
        } else if (cv[i].start < pos) {
          seterr(err, errlen, "%s: %s: group %s %s elements %" PRIu64 "..%" PRIu64 " are stored twice", m->label, m->files[cv[i].file].file,
                 gn, pk_names[kinds[k]], cv[i].start, pos);
          rc = ZP_E_CORRUPT;
        }
        pos = cv[i].end;
      }
      if (!rc && pos != m->span[g]) {
        seterr(err, errlen, "%s: incomplete checkpoint: group %s %s elements %" PRIu64 "..%" PRIu64 " are in no rank file", m->label, gn,
               pk_names[kinds[k]], pos, m->span[g]);
        rc = ZP_E_CORRUPT;
      }
    }
  }
  free(cv);
  if (!rc) m->indexes_loaded = 1;
  return rc;
}

/* Shape and tensor table of the checkpoint against a layout. */
static int meta_check_layout(const ck_meta* m, const zp_model_layout* L, char* err, size_t errlen) {
  const zp_gpt2_shape* a = &m->s;
  const zp_gpt2_shape* b = &L->s;
  if (a->L != b->L || a->NH != b->NH || a->C != b->C || a->maxT != b->maxT || a->V != b->V || a->Vp != b->Vp) {
    seterr(err, errlen,
           "%s/meta.json: checkpoint has n_layer %d n_head %d d_model %d seq_len %d vocab_size %d (padded %d), "
           "config has n_layer %d n_head %d d_model %d seq_len %d vocab_size %d (padded %d)",
           m->label, a->L, a->NH, a->C, a->maxT, a->V, a->Vp, b->L, b->NH, b->C, b->maxT, b->V, b->Vp);
    return ZP_E_INVALID;
  }
  if (m->n_tensors != L->n_tensors || m->n_groups != L->n_groups) {
    seterr(err, errlen, "%s/meta.json: checkpoint has %d tensors in %d groups, this build's layout has %d in %d", m->label, m->n_tensors,
           m->n_groups, L->n_tensors, L->n_groups);
    return ZP_E_INVALID;
  }
  for (int i = 0; i < m->n_tensors; i++) {
    const ck_tensor* t = &m->tensors[i];
    const zp_tensor_desc* d = &L->tensors[i];
    if (strcmp(t->name, d->name) || t->group != d->group || t->offset != d->offset || t->numel != d->numel) {
      seterr(err, errlen,
             "%s/meta.json: tensor %d is %s (group %d, offset %" PRIu64 ", numel %" PRIu64 "), this build's layout has %s (group %d, "
             "offset %" PRIu64 ", numel %" PRIu64 ")",
             m->label, i, t->name, t->group, t->offset, t->numel, d->name, d->group, d->offset, d->numel);
      return ZP_E_INVALID;
    }
  }
  for (int g = 0; g < m->n_groups; g++)
    if (m->span[g] != L->group_span[g]) {
      seterr(err, errlen, "%s/meta.json: group %d spans %" PRIu64 " elements, this build's layout %" PRIu64, m->label, g, m->span[g],
             L->group_span[g]);
      return ZP_E_INVALID;
    }
  return ZP_OK;
}

/* Read and verify one whole piece into buf (p->bytes). */
static int piece_read(const ck_meta* m, const ck_file* f, int fd, const ck_piece* p, void* buf, char* err, size_t errlen) {
  int e = pread_all(fd, buf, (size_t)p->bytes, p->offset);
  if (e) {
    char d[300];
    piece_desc(m, p, d, sizeof d);
    seterr(err, errlen, "%s/%s: %s reading piece %s", m->label, f->file, e == -2 ? "unexpected end of file" : strerror(errno), d);
    return e == -2 ? ZP_E_CORRUPT : ZP_E_IO;
  }
  uint32_t c = zp_crc32c(0, buf, (size_t)p->bytes);
  if (c != p->crc) {
    char d[300];
    piece_desc(m, p, d, sizeof d);
    /* the per-tensor CRCs say which tensor holds the damage */
    size_t es = zp_dtype_size(p->dtype);
    for (int k = 0; k < p->n_seg; k++) {
      const ck_seg* sg = &p->seg[k];
      if (zp_crc32c(0, (const char*)buf + (size_t)(sg->start - p->start) * es, (size_t)(sg->end - sg->start) * es) == sg->crc) continue;
      char lab[160];
      piece_label(m, p->group, sg->start, sg->end, lab, sizeof lab);
      char gn[32];
      group_name(p->group, m->n_groups, gn, sizeof gn);
      seterr(err, errlen, "%s/%s: checksum mismatch in tensor %s (group %s, %s, elements %" PRIu64 "..%" PRIu64 "; piece %s)", m->label,
             f->file, lab, gn, pk_names[p->kind], sg->start, sg->end, d);
      return ZP_E_CORRUPT;
    }
    seterr(err, errlen, "%s/%s: checksum mismatch in piece %s", m->label, f->file, d);
    return ZP_E_CORRUPT;
  }
  return ZP_OK;
}

/* Fill dst (dtype dt, elements [a, b) of group g) from the pieces of kind k: every overlapping
 * piece is read whole and verified, then converted. Caller zeroes dst beforehand if needed. */
static int fill_range(const ck_meta* m, int g, int k, uint64_t a, uint64_t b, void* dst, zp_dtype dt, char* err, size_t errlen) {
  if (a >= b) return ZP_OK;
  size_t des = zp_dtype_size(dt);
  for (int i = 0; i < m->n_files; i++) {
    const ck_file* f = &m->files[i];
    int fd = -1;
    for (int j = 0; j < f->n_pieces; j++) {
      const ck_piece* p = &f->pieces[j];
      if (p->group != g || p->kind != k || p->end <= a || p->start >= b) continue;
      if (fd < 0) {
        char path[CK_PATH];
        snprintf(path, sizeof path, "%s/%s", m->dir, f->file);
        fd = open(path, O_RDONLY);
        if (fd < 0) {
          seterr(err, errlen, "%s/%s: cannot open: %s", m->label, f->file, strerror(errno));
          return ZP_E_IO;
        }
      }
      void* buf = malloc(p->bytes ? (size_t)p->bytes : 1);
      if (!buf) {
        close(fd);
        seterr(err, errlen, "%s/%s: out of host memory reading a piece of %" PRIu64 " bytes", m->label, f->file, p->bytes);
        return ZP_E_NOMEM;
      }
      int rc = piece_read(m, f, fd, p, buf, err, errlen);
      if (rc) {
        free(buf);
        close(fd);
        return rc;
      }
      uint64_t lo = p->start > a ? p->start : a, hi = p->end < b ? p->end : b;
      size_t pes = zp_dtype_size(p->dtype);
      host_cast((char*)dst + (size_t)(lo - a) * des, dt, (const char*)buf + (size_t)(lo - p->start) * pes, p->dtype, (size_t)(hi - lo));
      free(buf);
    }
    if (fd >= 0) close(fd);
  }
  return ZP_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* save                                                                                       */
/* ------------------------------------------------------------------------------------------ */

/* The pieces this rank writes, in file order, with their file offsets: the same plan for a
 * synchronous and an asynchronous save, so both produce the same bytes. */
typedef struct {
  int g, kind, cat;
  zp_tier tier;
  uint64_t a, b;       /* element range in the group's buffer */
  zp_dtype dt;
  uint64_t src_off;    /* byte offset of element a in this rank's holding of (g, cat) */
  uint64_t off, bytes; /* in the rank file */
  uint32_t crc;        /* filled by the writer */
  char gname[48], label[160];
  int n_seg;           /* per-tensor segments: cut at every tensor boundary inside [a, b) */
  uint64_t* seg_end;   /* [n_seg] element end of each segment */
  uint32_t* seg_crc;   /* [n_seg] filled by the writer */
} ck_wpiece;

typedef struct {
  int n;
  ck_wpiece* p;
  uint64_t file_bytes;
} ck_wplan;

static void wplan_free(ck_wplan* w) {
  for (int i = 0; w->p && i < w->n; i++) {
    free(w->p[i].seg_end);
    free(w->p[i].seg_crc);
  }
  free(w->p);
  memset(w, 0, sizeof *w);
}

/* Label of a group range using the run's layout (same rule as piece_label). */
static void layout_label(const zp_model_layout* L, int g, uint64_t a, uint64_t b, char* out, size_t n) {
  int first = -1, last = -1;
  for (int i = L->group_first_tensor[g]; i < L->group_first_tensor[g + 1]; i++) {
    const zp_tensor_desc* t = &L->tensors[i];
    if (t->offset < b && t->offset + t->numel > a) {
      if (first < 0) first = i;
      last = i;
    }
  }
  if (first < 0) snprintf(out, n, "(padding)");
  else if (first == last) snprintf(out, n, "%s", L->tensors[first].name);
  else if (g > 0 && g < L->n_groups - 1) snprintf(out, n, "h.%d.*", g - 1);
  else snprintf(out, n, "%s..%s", L->tensors[first].name, L->tensors[last].name);
}

static uint64_t align_file(uint64_t x) { return (x + ZP_CKPT_ALIGN - 1) / ZP_CKPT_ALIGN * ZP_CKPT_ALIGN; }

static int wplan_build(zp_run* r, ck_wplan* w, char* err, size_t errlen) {
  memset(w, 0, sizeof *w);
  const zp_model_layout* L = &r->layout;
  w->p = calloc((size_t)L->n_groups * 3 + 1, sizeof *w->p);
  if (!w->p) {
    seterr(err, errlen, "out of host memory planning the checkpoint pieces");
    return ZP_E_NOMEM;
  }
  uint64_t pos = 0;
  for (int g = 0; g < L->n_groups; g++) {
    const zp_group_info* in = &r->groups[g].info;
    uint64_t span = L->group_span[g];
    int wcat = has_state(in, ZP_CAT_MASTER) ? ZP_CAT_MASTER : ZP_CAT_PARAM;
    struct { int cat, kind; uint64_t sub; } ent[3] = {
        {wcat, wcat == ZP_CAT_MASTER ? PK_MASTER : PK_PARAM, 0}, {ZP_CAT_OPTIM, PK_M, 0}, {ZP_CAT_OPTIM, PK_V, 1}};
    for (int e = 0; e < 3; e++) {
      int cat = ent[e].cat;
      uint64_t base, held;
      held_range(in, cat, &base, &held);
      /* a replicated category is written once, by the rank holding shard 0 of the group (rank 0
       * of the data-parallel group; with pipeline stages, one rank per stage: train.c) */
      if (!in->place[cat].sharded && in->shard_off != 0) continue;
      uint64_t a = base, b = base + held < span ? base + held : span;
      if (a >= b) continue;
      if (!has_state(in, cat)) {
        seterr(err, errlen, "internal: group %s has no %s buffer on rank %d", r->gplans[g].name, zp_category_name((zp_category)cat), r->rank);
        wplan_free(w);
        return ZP_E_INTERNAL;
      }
      ck_wpiece* p = &w->p[w->n++];
      p->g = g;
      p->kind = ent[e].kind;
      p->cat = cat;
      p->tier = in->place[cat].tier;
      p->a = a;
      p->b = b;
      p->dt = in->dtype[cat];
      size_t es = zp_dtype_size(p->dt);
      p->src_off = (ent[e].sub * held + (a - base)) * es;
      p->off = align_file(pos);
      p->bytes = (b - a) * es;
      pos = p->off + p->bytes;
      snprintf(p->gname, sizeof p->gname, "%s", r->gplans[g].name);
      layout_label(L, g, a, b, p->label, sizeof p->label);
      int nt = L->group_first_tensor[g + 1] - L->group_first_tensor[g];
      p->seg_end = calloc((size_t)2 * nt + 2, sizeof *p->seg_end);
      p->seg_crc = calloc((size_t)2 * nt + 2, sizeof *p->seg_crc);
      if (!p->seg_end || !p->seg_crc) {
        seterr(err, errlen, "out of host memory planning the checkpoint pieces");
        wplan_free(w);
        return ZP_E_NOMEM;
      }
      for (int ti = L->group_first_tensor[g]; ti < L->group_first_tensor[g + 1]; ti++) {
        uint64_t cut[2] = {L->tensors[ti].offset, L->tensors[ti].offset + L->tensors[ti].numel};
        for (int c = 0; c < 2; c++)
          if (cut[c] > a && cut[c] < b && (p->n_seg == 0 || cut[c] > p->seg_end[p->n_seg - 1])) p->seg_end[p->n_seg++] = cut[c];
      }
      p->seg_end[p->n_seg++] = b;
    }
  }
  w->file_bytes = pos;
  return ZP_OK;
}

/* This rank's record of its file: the same piece entries meta.json carries. */
static json_t* index_json(const ck_wplan* w, int rank, int world, uint64_t bytes, uint32_t crc) {
  json_t* pieces = json_array();
  for (int i = 0; i < w->n; i++) {
    const ck_wpiece* p = &w->p[i];
    json_t* po = json_object();
    json_object_set_new(po, "group", json_integer(p->g));
    json_object_set_new(po, "group_name", json_string(p->gname));
    json_object_set_new(po, "kind", json_string(pk_names[p->kind]));
    json_object_set_new(po, "tensors", json_string(p->label));
    json_object_set_new(po, "start", json_integer((json_int_t)p->a));
    json_object_set_new(po, "end", json_integer((json_int_t)p->b));
    json_object_set_new(po, "offset", json_integer((json_int_t)p->off));
    json_object_set_new(po, "bytes", json_integer((json_int_t)p->bytes));
    json_object_set_new(po, "dtype", json_string(zp_dtype_name(p->dt)));
    json_object_set_new(po, "crc32c", json_integer((json_int_t)p->crc));
    json_t* sa = json_array();
    uint64_t at = p->a;
    for (int k = 0; k < p->n_seg; k++) {
      json_t* e = json_array();
      json_array_append_new(e, json_integer((json_int_t)at));
      json_array_append_new(e, json_integer((json_int_t)p->seg_end[k]));
      json_array_append_new(e, json_integer((json_int_t)p->seg_crc[k]));
      json_array_append_new(sa, e);
      at = p->seg_end[k];
    }
    json_object_set_new(po, "segments", sa);
    json_array_append_new(pieces, po);
  }
  char fname[64];
  snprintf(fname, sizeof fname, "rank%05d.bin", rank);
  json_t* root = json_object();
  json_object_set_new(root, "format", json_string(ZP_CKPT_FORMAT "-rank"));
  json_object_set_new(root, "version", json_integer(ZP_CKPT_VERSION));
  json_object_set_new(root, "rank", json_integer(rank));
  json_object_set_new(root, "world_size", json_integer(world));
  json_object_set_new(root, "file", json_string(fname));
  json_object_set_new(root, "bytes", json_integer((json_int_t)bytes));
  json_object_set_new(root, "crc32c", json_integer((json_int_t)crc));
  json_object_set_new(root, "pieces", pieces);
  return root;
}

/* Write a JSON document to path atomically (path.part, fsync, rename): a reader (rank 0
 * waiting for done markers) sees it whole or not at all. */
static int write_json_atomic(const char* path, json_t* root, const char* where, char* err, size_t errlen) {
  char* text = json_dumps(root, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
  if (!text) {
    seterr(err, errlen, "%s: cannot encode", where);
    return ZP_E_NOMEM;
  }
  char part[CK_PATH + 8];
  snprintf(part, sizeof part, "%s.part", path);
  int rc = write_text_file(part, text, strlen(text), err, errlen);
  free(text);
  if (!rc && rename(part, path) != 0) {
    seterr(err, errlen, "%s: cannot rename %s.part to it: %s", where, where, strerror(errno));
    rc = ZP_E_IO;
  }
  return rc;
}

/* Write this rank's file and index into tmp. Data comes from the run's buffers (image NULL:
 * synchronous save, staged through a bounded host buffer) or from the staging image of an
 * asynchronous save (the file's exact bytes). Fills the pieces' CRCs. */
static int write_rank_file(zp_run* r, ck_wplan* w, const char* image, int rank, int world, const char* tmp, const char* label,
                           char* err, size_t errlen) {
  char bin[CK_PATH], idx[CK_PATH], where[512], fname[64];
  snprintf(fname, sizeof fname, "rank%05d.bin", rank);
  snprintf(bin, sizeof bin, "%s/%s", tmp, fname);
  snprintf(idx, sizeof idx, "%s/rank%05d.json", tmp, rank);
  snprintf(where, sizeof where, "%s/%s", label, fname);
  int fd = open(bin, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    seterr(err, errlen, "%s: cannot create: %s", where, strerror(errno));
    return ZP_E_IO;
  }
  static const char zeros[ZP_CKPT_ALIGN];
  char* stage = NULL;
  size_t stage_cap = 0;
  uint64_t pos = 0;
  uint32_t fcrc = 0;
  int rc = ZP_OK;
  for (int i = 0; i < w->n && !rc; i++) {
    ck_wpiece* p = &w->p[i];
    while (pos < p->off && !rc) { /* alignment padding: zeros */
      size_t n = p->off - pos < sizeof zeros ? (size_t)(p->off - pos) : sizeof zeros;
      if (write_all(fd, zeros, n)) {
        seterr(err, errlen, "%s: write failed at offset %" PRIu64 ": %s", where, pos, strerror(errno));
        rc = ZP_E_IO;
      }
      fcrc = zp_crc32c(fcrc, zeros, n);
      pos += n;
    }
    uint32_t pcrc = 0;
    size_t pes = zp_dtype_size(p->dt);
    int sk = 0;
    uint32_t scrc = 0;
    for (uint64_t done = 0; done < p->bytes && !rc;) {
      const char* chunk;
      size_t n;
      if (image) {
        n = p->bytes - done < CK_STAGE_BYTES ? (size_t)(p->bytes - done) : CK_STAGE_BYTES;
        chunk = image + p->off + done;
      } else {
        if (!stage) {
          stage_cap = p->bytes < CK_STAGE_BYTES ? (size_t)p->bytes : CK_STAGE_BYTES;
          for (int j = i + 1; j < w->n; j++)
            if (w->p[j].bytes > stage_cap) stage_cap = w->p[j].bytes < CK_STAGE_BYTES ? (size_t)w->p[j].bytes : CK_STAGE_BYTES;
          stage = malloc(stage_cap);
          if (!stage) {
            seterr(err, errlen, "%s: out of host memory for a %zu-byte staging buffer", where, stage_cap);
            rc = ZP_E_NOMEM;
            break;
          }
        }
        n = p->bytes - done < stage_cap ? (size_t)(p->bytes - done) : stage_cap;
        int e = buf_get(r, p->g, p->cat, stage, p->src_off + done, n);
        if (e) {
          seterr(err, errlen, "%s: reading group %s %s from the device failed (status %d)%s%s", where, p->gname,
                 zp_category_name((zp_category)p->cat), e, r->err[0] ? ": " : "", r->err);
          rc = e;
          break;
        }
        chunk = stage;
      }
      if (write_all(fd, chunk, n)) {
        seterr(err, errlen, "%s: write failed at offset %" PRIu64 ": %s", where, pos, strerror(errno));
        rc = ZP_E_IO;
        break;
      }
      pcrc = zp_crc32c(pcrc, chunk, n);
      fcrc = zp_crc32c(fcrc, chunk, n);
      for (size_t u = 0; u < n && sk < p->n_seg;) { /* per-tensor CRCs: split the chunk at segment ends */
        uint64_t seg_end_b = (p->seg_end[sk] - p->a) * pes, here = done + u;
        size_t take = seg_end_b - here < n - u ? (size_t)(seg_end_b - here) : n - u;
        scrc = zp_crc32c(scrc, chunk + u, take);
        u += take;
        if (done + u == seg_end_b) {
          p->seg_crc[sk++] = scrc;
          scrc = 0;
        }
      }
      done += n;
      pos += n;
    }
    p->crc = pcrc;
    if (!rc) zp_crashpoint(image ? "async_write" : "after_shard_write", rank);
  }
  free(stage);
  if (!rc && pos != w->file_bytes) {
    seterr(err, errlen, "%s: internal: wrote %" PRIu64 " bytes, planned %" PRIu64, where, pos, w->file_bytes);
    rc = ZP_E_INTERNAL;
  }
  if (!rc && fsync(fd) != 0) {
    seterr(err, errlen, "%s: fsync failed: %s", where, strerror(errno));
    rc = ZP_E_IO;
  }
  if (close(fd) != 0 && !rc) {
    seterr(err, errlen, "%s: close failed: %s", where, strerror(errno));
    rc = ZP_E_IO;
  }
  if (rc) return rc;
  json_t* root = index_json(w, rank, world, pos, fcrc);
  char iw[600];
  snprintf(iw, sizeof iw, "%s/rank%05d.json", label, rank);
  rc = write_json_atomic(idx, root, iw, err, errlen);
  json_decref(root);
  if (!rc) zp_crashpoint("after_rank_file", rank);
  return rc;
}

/* meta.json without its "files" (they are added by meta_finish once every rank file exists):
 * built on the main thread at the step boundary, so it describes that moment. */
static json_t* meta_build(zp_run* r, int64_t step, uint64_t data_pos, const char* writer, int has_config) {
  const zp_model_layout* L = &r->layout;
  json_t* root = json_object();
  json_object_set_new(root, "format", json_string(ZP_CKPT_FORMAT));
  json_object_set_new(root, "version", json_integer(ZP_CKPT_VERSION));
  json_object_set_new(root, "step", json_integer((json_int_t)step));
  json_object_set_new(root, "data_pos", json_integer((json_int_t)data_pos));
  json_object_set_new(root, "step_t", json_integer(r->opt.step_t));
  json_t* mo = json_object();
  json_object_set_new(mo, "arch", json_string("gpt2"));
  json_object_set_new(mo, "n_layer", json_integer(L->s.L));
  json_object_set_new(mo, "n_head", json_integer(L->s.NH));
  json_object_set_new(mo, "d_model", json_integer(L->s.C));
  json_object_set_new(mo, "seq_len", json_integer(L->s.maxT));
  json_object_set_new(mo, "vocab_size", json_integer(L->s.V));
  json_object_set_new(mo, "vocab_padded", json_integer(L->s.Vp));
  json_object_set_new(root, "model", mo);
  json_object_set_new(root, "total_params", json_integer((json_int_t)L->total_params));
  json_object_set_new(root, "precision", json_string(zp_cfg_str(r->cfg, "train.precision")));
  int have_master = has_state(&r->groups[0].info, ZP_CAT_MASTER);
  json_t* dt = json_object();
  json_object_set_new(dt, "param", json_string(zp_dtype_name(r->param_dt)));
  json_object_set_new(dt, "grad", json_string(zp_dtype_name(r->grad_dt)));
  json_object_set_new(dt, "compute", json_string(zp_dtype_name(r->ct)));
  json_object_set_new(dt, "master", json_string(have_master ? "fp32" : "none"));
  json_object_set_new(dt, "optim", json_string("fp32"));
  json_object_set_new(root, "dtypes", dt);
  json_object_set_new(root, "world_size", json_integer(r->world));
  json_object_set_new(root, "strategy", json_string(zp_cfg_str(r->cfg, "zero.plugin")));
  json_object_set_new(root, "writer", json_string(writer));
  json_t* off = json_object();
  json_object_set_new(off, "optimizer", json_string(zp_cfg_str(r->cfg, "offload.optimizer.plugin")));
  json_object_set_new(off, "param", json_string(zp_cfg_str(r->cfg, "offload.param.plugin")));
  json_object_set_new(root, "offload", off);
  json_t* ga = json_array();
  for (int g = 0; g < L->n_groups; g++) {
    const zp_group_info* in = &r->groups[g].info;
    int m = has_state(in, ZP_CAT_MASTER);
    /* a group another pipeline stage holds: whether it has a MASTER buffer there follows the
     * runtime's rule (fp32 parameters on the device are their own master) */
    if (!in->padded) m = !(in->dtype[ZP_CAT_PARAM] == ZP_F32 && in->place[ZP_CAT_MASTER].tier == ZP_TIER_GPU);
    json_t* go = json_object();
    json_object_set_new(go, "index", json_integer(g));
    json_object_set_new(go, "name", json_string(r->gplans[g].name));
    json_object_set_new(go, "numel", json_integer((json_int_t)L->group_numel[g]));
    json_object_set_new(go, "span", json_integer((json_int_t)L->group_span[g]));
    json_object_set_new(go, "weights", json_string(m ? "master" : "param"));
    json_object_set_new(go, "weights_dtype", json_string(zp_dtype_name(m ? ZP_F32 : in->dtype[ZP_CAT_PARAM])));
    json_array_append_new(ga, go);
  }
  json_object_set_new(root, "groups", ga);
  json_t* ta = json_array();
  for (int i = 0; i < L->n_tensors; i++) {
    const zp_tensor_desc* t = &L->tensors[i];
    json_t* to = json_object();
    json_object_set_new(to, "name", json_string(t->name));
    json_object_set_new(to, "group", json_integer(t->group));
    json_object_set_new(to, "offset", json_integer((json_int_t)t->offset));
    json_object_set_new(to, "numel", json_integer((json_int_t)t->numel));
    json_t* sh = json_array();
    json_array_append_new(sh, json_integer(t->rows));
    if (t->cols > 1) json_array_append_new(sh, json_integer(t->cols));
    json_object_set_new(to, "shape", sh);
    if (t->real_rows != t->rows) json_object_set_new(to, "real_rows", json_integer(t->real_rows));
    json_array_append_new(ta, to);
  }
  json_object_set_new(root, "tensors", ta);
  if (has_config) json_object_set_new(root, "config", json_string("config.toml"));
  return root;
}

/* Rank 0: complete meta.json from the rank records in tmp (each must exist, parse, and match
 * its .bin file's size), write config.toml and meta.json, fsync the directory. */
static int meta_finish(json_t* root, int world, const char* tmp, const char* label, const char* config_toml, char* err, size_t errlen) {
  int rc;
  if (config_toml) {
    char cp[CK_PATH];
    snprintf(cp, sizeof cp, "%s/config.toml", tmp);
    if ((rc = write_text_file(cp, config_toml, strlen(config_toml), err, errlen))) return rc;
  }
  json_t* fa = json_array();
  rc = ZP_OK;
  for (int k = 0; k < world && !rc; k++) {
    char ip[CK_PATH], bp[CK_PATH], iname[64], bname[64];
    snprintf(iname, sizeof iname, "rank%05d.json", k);
    snprintf(bname, sizeof bname, "rank%05d.bin", k);
    snprintf(ip, sizeof ip, "%s/%s", tmp, iname);
    snprintf(bp, sizeof bp, "%s/%s", tmp, bname);
    json_error_t je;
    json_t* io = json_load_file(ip, 0, &je);
    json_t* bj = io ? json_object_get(io, "bytes") : NULL;
    json_t* cj = io ? json_object_get(io, "crc32c") : NULL;
    json_t* pj = io ? json_object_get(io, "pieces") : NULL;
    struct stat st;
    if (!io || !json_is_integer(bj) || !json_is_integer(cj) || !json_is_array(pj)) {
      seterr(err, errlen, "%s/%s: missing or unreadable after the rank reported success: %s", label, iname, io ? "bad fields" : je.text);
      rc = ZP_E_IO;
    } else if (stat(bp, &st) != 0 || (json_int_t)st.st_size != json_integer_value(bj)) {
      seterr(err, errlen, "%s/%s: missing or of the wrong size after the rank reported success", label, bname);
      rc = ZP_E_IO;
    } else {
      json_t* fo = json_object();
      json_object_set_new(fo, "rank", json_integer(k));
      json_object_set_new(fo, "file", json_string(bname));
      json_object_set_new(fo, "index", json_string(iname));
      json_object_set_new(fo, "bytes", json_integer(json_integer_value(bj)));
      json_object_set_new(fo, "crc32c", json_integer(json_integer_value(cj)));
      json_object_set(fo, "pieces", pj);
      json_array_append_new(fa, fo);
    }
    if (io) json_decref(io);
  }
  json_object_set_new(root, "files", fa);
  if (rc) return rc;
  char mp[CK_PATH], mw[128];
  snprintf(mp, sizeof mp, "%s/meta.json", tmp);
  snprintf(mw, sizeof mw, "%s/meta.json", label);
  rc = write_json_atomic(mp, root, mw, err, errlen);
  if (!rc && fsync_path(tmp, 1) != 0) {
    seterr(err, errlen, "%s: fsync of the directory failed: %s", tmp, strerror(errno));
    rc = ZP_E_IO;
  }
  return rc;
}

typedef struct {
  int64_t step;
  char name[256];
} ck_entry;

static int entry_cmp(const void* a, const void* b) {
  const ck_entry* x = a;
  const ck_entry* y = b;
  return x->step < y->step ? -1 : x->step > y->step ? 1 : 0;
}

static int is_tmp_name(const char* name) {
  size_t len = strlen(name);
  return strncmp(name, "ckpt_", 5) == 0 && len > 4 && strcmp(name + len - 4, ".tmp") == 0;
}

/* Rank 0, after a successful save of `just`: keep the newest `keep` checkpoints (never the one
 * just written), and drop stale ckpt_*.tmp directories. A doomed checkpoint is first renamed
 * to ckpt_X.del.tmp, so a crash while deleting never leaves a half-deleted directory that
 * looks complete. Failures here are warnings only. */
static void retention(const char* dir, int keep, int64_t just) {
  DIR* d = opendir(dir);
  if (!d) return;
  ck_entry* es = NULL;
  int n = 0, cap = 0;
  struct dirent* e;
  char p[CK_PATH], q[CK_PATH + 16];
  while ((e = readdir(d))) {
    int64_t s;
    if (is_tmp_name(e->d_name)) {
      snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
      if (rm_tree(p, 0)) fprintf(stderr, "zp: warning: cannot remove stale %s\n", p);
      continue;
    }
    if (!parse_ckpt_name(e->d_name, &s)) continue;
    if (n == cap) {
      cap = cap ? 2 * cap : 16;
      ck_entry* ne = realloc(es, (size_t)cap * sizeof *es);
      if (!ne) break;
      es = ne;
    }
    es[n].step = s;
    snprintf(es[n].name, sizeof es[n].name, "%s", e->d_name);
    n++;
  }
  closedir(d);
  if (keep > 0 && n > keep) {
    qsort(es, (size_t)n, sizeof *es, entry_cmp);
    int drop = n - keep;
    for (int i = 0; i < n && drop > 0; i++) {
      if (es[i].step == just) continue;
      snprintf(p, sizeof p, "%s/%s", dir, es[i].name);
      snprintf(q, sizeof q, "%s/%s.del.tmp", dir, es[i].name);
      if (rename(p, q) != 0 || rm_tree(q, 0)) fprintf(stderr, "zp: warning: cannot remove old checkpoint %s\n", p);
      drop--;
    }
  }
  free(es);
  fsync_path(dir, 1);
}

/* Rank 0: finish meta.json (consumes root) and publish tmp as dir/label, then retention. */
static int publish(const char* dir, const char* label, int64_t step, int keep, json_t* root, int world, const char* config_toml,
                   char* err, size_t errlen) {
  char final[CK_DIR_MAX + 80], tmp[CK_DIR_MAX + 96], old[CK_DIR_MAX + 96];
  snprintf(final, sizeof final, "%s/%s", dir, label);
  snprintf(tmp, sizeof tmp, "%s.tmp", final);
  snprintf(old, sizeof old, "%s.old.tmp", final);
  int rc = meta_finish(root, world, tmp, label, config_toml, err, errlen);
  json_decref(root);
  if (rc) return rc;
  zp_crashpoint("before_rename", 0);
  struct stat st;
  int had_old = 0;
  if (stat(final, &st) == 0) {
    rm_tree(old, 0);
    if (rename(final, old) != 0) {
      seterr(err, errlen, "%s: cannot move the existing checkpoint aside: %s", final, strerror(errno));
      return ZP_E_IO;
    }
    had_old = 1;
  }
  if (rename(tmp, final) != 0) {
    seterr(err, errlen, "%s: cannot rename %s.tmp to it: %s", final, label, strerror(errno));
    return ZP_E_IO;
  }
  if (fsync_path(dir, 1) != 0) {
    seterr(err, errlen, "%s: fsync of the directory failed: %s", dir, strerror(errno));
    return ZP_E_IO;
  }
  if (had_old) rm_tree(old, 0);
  retention(dir, keep, step);
  return ZP_OK;
}

static int save_args(zp_run* r, const char* dir, int64_t step, char* label, size_t ln, char* tmp, size_t tn, char* err, size_t errlen) {
  if (r->dry_run) {
    seterr(err, errlen, "%s: cannot save a checkpoint of a dry run (nothing is allocated)", dir ? dir : "(null)");
    return ZP_E_INVALID;
  }
  if (!dir || !dir[0] || step < 0) {
    seterr(err, errlen, "checkpoint save: bad arguments (dir \"%s\", step %lld)", dir ? dir : "(null)", (long long)step);
    return ZP_E_INVALID;
  }
  if (strlen(dir) >= CK_DIR_MAX) {
    seterr(err, errlen, "%.200s...: checkpoint directory path too long", dir);
    return ZP_E_INVALID;
  }
  snprintf(label, ln, "ckpt_%08lld", (long long)step);
  snprintf(tmp, tn, "%s/%s.tmp", dir, label);
  return ZP_OK;
}

/* Rank 0: an empty ckpt_X.tmp (a stale one from a crash is removed first). */
static int prepare_tmp(const char* dir, const char* tmp, char* err, size_t errlen) {
  int rc = mkdir_p(dir, err, errlen);
  if (!rc && rm_tree(tmp, 0) != 0) {
    seterr(err, errlen, "%s: cannot remove a stale temporary directory: %s", tmp, strerror(errno));
    rc = ZP_E_IO;
  }
  if (!rc && mkdir(tmp, 0755) != 0) {
    seterr(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
    rc = ZP_E_IO;
  }
  return rc;
}

int zp_ckpt_save(zp_run* r, const char* dir, int64_t step, uint64_t data_pos, int keep, const char* config_toml, char* err,
                 size_t errlen) {
  if (zp_run_fence_all(r)) { seterr(err, errlen, "%s", r->err); return ZP_E_DEVICE; } /* optimizer overlap: updates done */
  char label[64], tmp[CK_DIR_MAX + 96];
  int rc = save_args(r, dir, step, label, sizeof label, tmp, sizeof tmp, err, errlen);
  if (rc) return rc;
  /* 1: rank 0 prepares the temporary directory */
  if (r->rank == 0) rc = prepare_tmp(dir, tmp, err, errlen);
  if ((rc = ck_agree(r, rc, "checkpoint save (preparing the directory)", err, errlen))) return rc;
  /* 2: every rank writes its file */
  ck_wplan w;
  int lrc = r->ops->synchronize ? r->ops->synchronize(r->be) : ZP_OK;
  if (lrc) seterr(err, errlen, "%s: device synchronize failed before saving (status %d)", label, lrc);
  if (!lrc) {
    char e2[1536];
    lrc = wplan_build(r, &w, e2, sizeof e2);
    if (lrc) seterr(err, errlen, "%s: %s", label, e2);
  }
  if (!lrc) {
    lrc = write_rank_file(r, &w, NULL, r->rank, r->world, tmp, label, err, errlen);
    wplan_free(&w);
  }
  if ((rc = ck_agree(r, lrc, "checkpoint save (writing rank files)", err, errlen))) return rc;
  /* 3: rank 0 writes meta.json and publishes the directory */
  if (r->rank == 0)
    rc = publish(dir, label, step, keep, meta_build(r, step, data_pos, "sync", config_toml != NULL), r->world, config_toml, err, errlen);
  return ck_agree(r, rc, "checkpoint save (publishing)", err, errlen);
}

/* ------------------------------------------------------------------------------------------ */
/* asynchronous saving                                                                        */
/* ------------------------------------------------------------------------------------------ */

struct zp_ckpt_saver {
  char dir[CK_DIR_MAX];
  int keep, async, rank, world;
  double timeout_s;
  /* staging image (async): this rank's file, exactly */
  char* image;
  size_t image_bytes;
  /* the save in flight */
  pthread_t th;
  int pending, threaded; /* a save was started (its status not yet collected); on a thread */
  atomic_int abandon;
  ck_wplan plan;
  int64_t step;
  char label[64], tmp[CK_DIR_MAX + 96];
  json_t* meta; /* rank 0 */
  char* config;
  int rc;
  char err[2048];
};

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int file_exists_at(const char* dir, const char* name) {
  char p[CK_PATH + 64];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  struct stat st;
  return stat(p, &st) == 0;
}

/* Rank 0's writer: wait until every rank's done marker exists (or one failed, or the
 * deadline passes, or the run gives up on the save). */
static int wait_markers(zp_ckpt_saver* s) {
  double t0 = mono_s();
  long sleep_us = 200;
  for (;;) {
    int missing = -1;
    for (int k = 0; k < s->world; k++) {
      char nm[64];
      snprintf(nm, sizeof nm, "rank%05d.failed", k);
      if (file_exists_at(s->tmp, nm)) {
        char p[CK_PATH + 64], why[512] = "";
        snprintf(p, sizeof p, "%s/%s", s->tmp, nm);
        FILE* f = fopen(p, "r");
        if (f) {
          size_t n = fread(why, 1, sizeof why - 1, f);
          why[n] = 0;
          fclose(f);
        }
        seterr(s->err, sizeof s->err, "%s: rank %d's background writer failed: %s", s->label, k, why);
        return ZP_E_IO;
      }
      snprintf(nm, sizeof nm, "rank%05d.json", k);
      if (missing < 0 && !file_exists_at(s->tmp, nm)) missing = k;
    }
    if (missing < 0) return ZP_OK;
    if (atomic_load(&s->abandon)) {
      seterr(s->err, sizeof s->err, "%s: abandoned: the run ended before rank %d finished writing its file", s->label, missing);
      return ZP_E_COMM;
    }
    if (mono_s() - t0 > s->timeout_s) {
      seterr(s->err, sizeof s->err, "%s: rank %d did not finish writing its file within %g s (ckpt.async)", s->label, missing, s->timeout_s);
      return ZP_E_TIMEOUT;
    }
    usleep((useconds_t)sleep_us);
    if (sleep_us < 20000) sleep_us *= 2;
  }
}

static void* saver_thread(void* arg) {
  zp_ckpt_saver* s = arg;
  int rc = write_rank_file(NULL, &s->plan, s->image, s->rank, s->world, s->tmp, s->label, s->err, sizeof s->err);
  if (rc) {
    char p[CK_PATH + 64];
    snprintf(p, sizeof p, "%s/rank%05d.failed", s->tmp, s->rank);
    char e2[2048];
    write_text_file(p, s->err, strlen(s->err), e2, sizeof e2);
  }
  if (!rc && s->rank == 0) {
    rc = wait_markers(s);
    if (!rc) {
      json_t* m = s->meta;
      s->meta = NULL;
      rc = publish(s->dir, s->label, s->step, s->keep, m, s->world, s->config, s->err, sizeof s->err);
    }
  }
  s->rc = rc;
  return NULL;
}

int zp_ckpt_saver_open(zp_run* r, const char* dir, int keep, int async, double timeout_s, zp_ckpt_saver** out, char* err,
                       size_t errlen) {
  *out = NULL;
  if (!dir || !dir[0] || strlen(dir) >= CK_DIR_MAX) {
    seterr(err, errlen, "checkpoint directory \"%.200s\" is empty or too long", dir ? dir : "(null)");
    return ZP_E_INVALID;
  }
  zp_ckpt_saver* s = calloc(1, sizeof *s);
  if (!s) {
    seterr(err, errlen, "out of host memory");
    return ZP_E_NOMEM;
  }
  snprintf(s->dir, sizeof s->dir, "%s", dir);
  s->keep = keep;
  s->async = async && !r->dry_run && r->tp.size <= 1; /* tp: synchronous (ckpt_tp.c) */
  s->rank = r->rank;
  s->world = r->world;
  s->timeout_s = timeout_s > 0 ? timeout_s : 300;
  int rc = ZP_OK;
  if (s->async) {
    ck_wplan w;
    rc = wplan_build(r, &w, err, errlen);
    if (!rc) {
      s->image_bytes = (size_t)w.file_bytes;
      wplan_free(&w);
      void* p = NULL;
      rc = zp_ledger_alloc(&r->ledger, ZP_CAT_BUFFER, ZP_TIER_CPU, s->image_bytes ? s->image_bytes : 1, "checkpoint staging", &p);
      if (rc) seterr(err, errlen, "ckpt.async: cannot allocate the %zu-byte host staging image: %s", s->image_bytes, r->ledger.last_error);
      s->image = p;
    }
  }
  if (rc) {
    free(s);
    return rc;
  }
  *out = s;
  return ZP_OK;
}

/* join the writer (local) and take its status */
static int saver_join(zp_ckpt_saver* s, char* err, size_t errlen) {
  if (!s->pending) return ZP_OK;
  if (s->threaded) pthread_join(s->th, NULL);
  s->pending = s->threaded = 0;
  wplan_free(&s->plan);
  if (s->meta) json_decref(s->meta);
  s->meta = NULL;
  free(s->config);
  s->config = NULL;
  if (s->rc) seterr(err, errlen, "%s", s->err);
  return s->rc;
}

int zp_ckpt_saver_wait(zp_ckpt_saver* s, zp_run* r, char* err, size_t errlen) {
  int rc = s ? saver_join(s, err, errlen) : ZP_OK;
  return ck_agree(r, rc, "asynchronous checkpoint save", err, errlen);
}

void zp_ckpt_saver_close(zp_ckpt_saver* s, zp_run* r) {
  if (!s) return;
  atomic_store(&s->abandon, 1);
  char e[2048];
  if (saver_join(s, e, sizeof e)) fprintf(stderr, "zp: rank %d: checkpoint not completed: %s\n", s->rank, e);
  if (s->image) zp_ledger_free(&r->ledger, ZP_CAT_BUFFER, ZP_TIER_CPU, s->image, s->image_bytes ? s->image_bytes : 1);
  free(s);
}

int zp_ckpt_saver_save(zp_ckpt_saver* s, zp_run* r, int64_t step, uint64_t data_pos, const char* config_toml, int blocking,
                       double* staged_ms, char* err, size_t errlen) {
  if (zp_run_fence_all(r)) { seterr(err, errlen, "%s", r->err); return ZP_E_DEVICE; } /* optimizer overlap: updates done */
  double t0 = mono_s();
  if (staged_ms) *staged_ms = 0;
  if (r->tp.size > 1) { /* tensor parallelism: global tensors gathered, one writer (ckpt_tp.c) */
    int rc = zp_ckpt_tp_save(r, s->dir, step, data_pos, s->keep, config_toml, err, errlen);
    if (staged_ms) *staged_ms = 1e3 * (mono_s() - t0);
    return rc;
  }
  if (!s->async) {
    int rc = zp_ckpt_save(r, s->dir, step, data_pos, s->keep, config_toml, err, errlen);
    if (staged_ms) *staged_ms = 1e3 * (mono_s() - t0);
    return rc;
  }
  int rc = zp_ckpt_saver_wait(s, r, err, errlen); /* one save in flight at a time */
  if (rc) return rc;
  rc = save_args(r, s->dir, step, s->label, sizeof s->label, s->tmp, sizeof s->tmp, err, errlen);
  if (rc) return rc;
  if (r->rank == 0) rc = prepare_tmp(s->dir, s->tmp, err, errlen);
  if ((rc = ck_agree(r, rc, "checkpoint save (preparing the directory)", err, errlen))) return rc;
  /* stage: a snapshot of this step boundary in host memory */
  int lrc = r->ops->synchronize ? r->ops->synchronize(r->be) : ZP_OK;
  if (lrc) seterr(err, errlen, "%s: device synchronize failed before staging (status %d)", s->label, lrc);
  if (!lrc) {
    char e2[1536];
    lrc = wplan_build(r, &s->plan, e2, sizeof e2);
    if (lrc) seterr(err, errlen, "%s: %s", s->label, e2);
    else if (s->plan.file_bytes != s->image_bytes) {
      seterr(err, errlen, "%s: internal: rank file of %" PRIu64 " bytes, staging image of %zu", s->label, s->plan.file_bytes, s->image_bytes);
      lrc = ZP_E_INTERNAL;
    }
  }
  uint64_t pos = 0;
  for (int i = 0; i < s->plan.n && !lrc; i++) {
    ck_wpiece* p = &s->plan.p[i];
    if (p->off > pos) memset(s->image + pos, 0, (size_t)(p->off - pos));
    lrc = buf_get(r, p->g, p->cat, s->image + p->off, p->src_off, (size_t)p->bytes);
    if (lrc) seterr(err, errlen, "%s: staging group %s %s failed (status %d)%s%s", s->label, p->gname, zp_category_name((zp_category)p->cat),
                    lrc, r->err[0] ? ": " : "", r->err);
    pos = p->off + p->bytes;
    if (!lrc) zp_crashpoint("async_staging", r->rank);
  }
  if (!lrc && r->ops->synchronize) lrc = r->ops->synchronize(r->be);
  if (!lrc && config_toml && r->rank == 0) {
    s->config = strdup(config_toml);
    if (!s->config) lrc = ZP_E_NOMEM;
  }
  if (!lrc && r->rank == 0) s->meta = meta_build(r, step, data_pos, "async", config_toml != NULL);
  if ((rc = ck_agree(r, lrc, "checkpoint save (staging)", err, errlen))) {
    wplan_free(&s->plan);
    if (s->meta) json_decref(s->meta);
    s->meta = NULL;
    free(s->config);
    s->config = NULL;
    return rc;
  }
  if (staged_ms) *staged_ms = 1e3 * (mono_s() - t0);
  s->step = step;
  s->rc = 0;
  s->err[0] = 0;
  atomic_store(&s->abandon, 0);
  s->pending = 1;
  s->threaded = pthread_create(&s->th, NULL, saver_thread, s) == 0;
  if (!s->threaded) saver_thread(s); /* no thread: write here (same bytes, same protocol) */
  return blocking ? zp_ckpt_saver_wait(s, r, err, errlen) : ZP_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* find                                                                                       */
/* ------------------------------------------------------------------------------------------ */

/* Complete checkpoints in dir, sorted by step (ascending): names only, meta.json not read. */
static int list_ckpts(const char* dir, ck_entry** out, int* count) {
  *out = NULL;
  *count = 0;
  DIR* d = opendir(dir);
  if (!d) return ZP_E_IO;
  ck_entry* es = NULL;
  int cnt = 0, cap = 0;
  struct dirent* e;
  while ((e = readdir(d))) {
    int64_t s;
    if (!parse_ckpt_name(e->d_name, &s)) continue;
    if (cnt == cap) {
      cap = cap ? 2 * cap : 16;
      ck_entry* ne = realloc(es, (size_t)cap * sizeof *es);
      if (!ne) break;
      es = ne;
    }
    es[cnt].step = s;
    snprintf(es[cnt].name, sizeof es[cnt].name, "%s", e->d_name);
    cnt++;
  }
  closedir(d);
  if (cnt) qsort(es, (size_t)cnt, sizeof *es, entry_cmp);
  *out = es;
  *count = cnt;
  return ZP_OK;
}

int zp_ckpt_find_before(const char* dir, int64_t before, char* path_out, size_t n) {
  if (!dir || !path_out || !n) return ZP_E_INVALID;
  ck_entry* es;
  int cnt;
  if (list_ckpts(dir, &es, &cnt)) return ZP_E_IO;
  int rc = ZP_E_IO;
  for (int i = cnt - 1; i >= 0; i--) {
    if (es[i].step >= before) continue;
    char p[CK_PATH];
    snprintf(p, sizeof p, "%s/%s", dir, es[i].name);
    ck_meta m;
    char e2[256];
    if (meta_load(p, &m, e2, sizeof e2) != ZP_OK) continue;
    int ok = m.step == es[i].step;
    meta_free(&m);
    if (!ok) continue;
    if (snprintf(path_out, n, "%s", p) < (int)n) rc = ZP_OK;
    break;
  }
  free(es);
  return rc;
}

int zp_ckpt_find_latest(const char* dir, char* path_out, size_t n) { return zp_ckpt_find_before(dir, INT64_MAX, path_out, n); }

/* ------------------------------------------------------------------------------------------ */
/* load                                                                                       */
/* ------------------------------------------------------------------------------------------ */

/* Write host values (dtype hdt) for the held range of PARAM of group g. When the run has a
 * MASTER buffer over the same range, PARAM is cast from it on the device instead. */
static int load_param(zp_run* r, int g, const void* host, zp_dtype hdt, uint64_t n, int from_master, char* err, size_t errlen) {
  zp_group_info* in = &r->groups[g].info;
  zp_dtype pdt = in->dtype[ZP_CAT_PARAM];
  void* dst = in->buf[ZP_CAT_PARAM];
  const char* gname = r->gplans[g].name;
  int on_dev = in->place[ZP_CAT_PARAM].tier == ZP_TIER_GPU;
  int rc;
  if (from_master) {
    rc = r->ops->cast(r->be, dst, pdt, in->buf[ZP_CAT_MASTER], ZP_F32, (size_t)n);
    if (rc) seterr(err, errlen, "group %s: casting MASTER to PARAM on the device failed (status %d)", gname, rc);
    return rc;
  }
  if (pdt == hdt) {
    rc = buf_put(r, g, ZP_CAT_PARAM, 0, host, (size_t)n * zp_dtype_size(pdt));
    if (rc) seterr(err, errlen, "group %s: writing PARAM to the device failed (status %d)", gname, rc);
    return rc;
  }
  void* tmpd = NULL;
  if (on_dev && r->ops->alloc(r->be, (size_t)n * zp_dtype_size(hdt), &tmpd) == ZP_OK) {
    rc = r->ops->copy_h2d(r->be, tmpd, host, (size_t)n * zp_dtype_size(hdt));
    if (!rc) rc = r->ops->cast(r->be, dst, pdt, tmpd, hdt, (size_t)n);
    if (!rc && r->ops->synchronize) rc = r->ops->synchronize(r->be);
    r->ops->free(r->be, tmpd);
    if (rc) seterr(err, errlen, "group %s: casting weights to PARAM on the device failed (status %d)", gname, rc);
    return rc;
  }
  /* host cast (cpu tier, or no device memory for a temporary) */
  void* st = malloc((size_t)n * zp_dtype_size(pdt) + 1);
  if (!st) {
    seterr(err, errlen, "group %s: out of host memory casting PARAM", gname);
    return ZP_E_NOMEM;
  }
  host_cast(st, pdt, host, hdt, (size_t)n);
  rc = buf_put(r, g, ZP_CAT_PARAM, 0, st, (size_t)n * zp_dtype_size(pdt));
  free(st);
  if (rc) seterr(err, errlen, "group %s: writing PARAM failed (status %d)", gname, rc);
  return rc;
}

static int load_group(zp_run* r, const ck_meta* m, int g, char* err, size_t errlen) {
  zp_group_info* in = &r->groups[g].info;
  const char* gname = r->gplans[g].name;
  uint64_t span = m->span[g];
  int wk = m->wkind[g];
  zp_dtype wdt = m->wdtype[g];
  size_t wes = zp_dtype_size(wdt);
  int has_master = has_state(in, ZP_CAT_MASTER);
  if (!in->padded) return ZP_OK; /* another pipeline stage's group: nothing of it lives here */
  for (int c = ZP_CAT_PARAM; c <= ZP_CAT_OPTIM; c++) {
    if (c == ZP_CAT_GRAD || (c == ZP_CAT_MASTER && !has_master)) continue;
    if (!has_state(in, c)) {
      seterr(err, errlen, "group %s: internal: no %s buffer on this rank", gname, zp_category_name((zp_category)c));
      return ZP_E_INTERNAL;
    }
  }
  /* weights: one host staging over the hull of the PARAM and MASTER ranges */
  uint64_t pb, ph, mb = 0, mh = 0;
  held_range(in, ZP_CAT_PARAM, &pb, &ph);
  if (has_master) held_range(in, ZP_CAT_MASTER, &mb, &mh);
  uint64_t lo = pb, hi = pb + ph;
  if (has_master) {
    if (mb < lo) lo = mb;
    if (mb + mh > hi) hi = mb + mh;
  }
  void* W = calloc((size_t)(hi - lo) * wes + 1, 1);
  if (!W) {
    seterr(err, errlen, "group %s: out of host memory (%" PRIu64 " elements)", gname, hi - lo);
    return ZP_E_NOMEM;
  }
  uint64_t ra = lo, rb = hi < span ? hi : span;
  int rc = fill_range(m, g, wk, ra, rb, W, wdt, err, errlen);
  int param_from_master = 0;
  if (!rc && has_master) {
    const void* src = (const char*)W + (size_t)(mb - lo) * wes;
    void* conv = NULL;
    if (wdt != ZP_F32) {
      conv = malloc((size_t)mh * 4 + 1);
      if (!conv) {
        seterr(err, errlen, "group %s: out of host memory", gname);
        rc = ZP_E_NOMEM;
      } else {
        host_cast(conv, ZP_F32, src, wdt, (size_t)mh);
        src = conv;
      }
    }
    if (!rc) {
      rc = buf_put(r, g, ZP_CAT_MASTER, 0, src, (size_t)mh * 4);
      if (rc) seterr(err, errlen, "group %s: writing MASTER to the device failed (status %d)", gname, rc);
    }
    free(conv);
    param_from_master = !rc && mb == pb && mh == ph && in->place[ZP_CAT_MASTER].tier == ZP_TIER_GPU &&
                        in->place[ZP_CAT_PARAM].tier == ZP_TIER_GPU;
  }
  if (!rc) rc = load_param(r, g, (const char*)W + (size_t)(pb - lo) * wes, wdt, ph, param_from_master, err, errlen);
  free(W);
  if (rc) return rc;
  /* optimizer moments: m then v over the held range */
  uint64_t ob, oh;
  held_range(in, ZP_CAT_OPTIM, &ob, &oh);
  float* O = calloc((size_t)oh * 2 + 1, sizeof(float));
  if (!O) {
    seterr(err, errlen, "group %s: out of host memory (%" PRIu64 " elements)", gname, 2 * oh);
    return ZP_E_NOMEM;
  }
  uint64_t oa = ob, oe = ob + oh < span ? ob + oh : span;
  rc = fill_range(m, g, PK_M, oa, oe, O, ZP_F32, err, errlen);
  if (!rc) rc = fill_range(m, g, PK_V, oa, oe, O + oh, ZP_F32, err, errlen);
  if (!rc) {
    rc = buf_put(r, g, ZP_CAT_OPTIM, 0, O, (size_t)oh * 2 * sizeof(float));
    if (rc) seterr(err, errlen, "group %s: writing OPTIM to the device failed (status %d)", gname, rc);
  }
  free(O);
  return rc;
}

int zp_ckpt_load(zp_run* r, const char* ckpt_dir, int64_t* step, uint64_t* data_pos, char* err, size_t errlen) {
  if (zp_run_fence_all(r)) { seterr(err, errlen, "%s", r->err); return ZP_E_DEVICE; } /* optimizer overlap: updates done */
  if (r->tp.size > 1 && !r->dry_run) return zp_ckpt_tp_load(r, ckpt_dir, step, data_pos, err, errlen); /* ckpt_tp.c */
  ck_meta m;
  int rc;
  if (r->dry_run) {
    seterr(err, errlen, "%s: cannot load a checkpoint into a dry run", ckpt_dir ? ckpt_dir : "(null)");
    rc = ZP_E_INVALID;
    return ck_agree(r, rc, "checkpoint load", err, errlen);
  }
  rc = meta_load(ckpt_dir, &m, err, errlen);
  if (!rc) {
    rc = meta_check_layout(&m, &r->layout, err, errlen);
    if (!rc) rc = meta_load_indexes(&m, err, errlen);
    if (!rc && r->ops->synchronize) rc = r->ops->synchronize(r->be);
    for (int g = 0; g < r->layout.n_groups && !rc; g++) {
      char e2[1536];
      rc = load_group(r, &m, g, e2, sizeof e2);
      if (rc) {
        /* messages from fill_range name the file; others name the group: add the checkpoint */
        if (strncmp(e2, m.label, strlen(m.label)) == 0) seterr(err, errlen, "%s", e2);
        else seterr(err, errlen, "%s: %s", m.label, e2);
      }
    }
    if (!rc && r->ops->synchronize) rc = r->ops->synchronize(r->be);
    if (!rc) {
      r->opt.step_t = m.step_t;
      if (step) *step = m.step;
      if (data_pos) *data_pos = m.data_pos;
    }
    meta_free(&m);
  }
  return ck_agree(r, rc, "checkpoint load", err, errlen);
}

int zp_ckpt_resume(zp_run* r, const char* dir, int fallback, char* used, size_t usedlen, int64_t* step, uint64_t* data_pos, char* err,
                   size_t errlen) {
  if (used && usedlen) used[0] = 0;
  char ck[CK_PATH];
  int64_t before = INT64_MAX;
  char first_err[2048] = "";
  int first_rc = ZP_OK, tried = 0;
  while (zp_ckpt_find_before(dir, before, ck, sizeof ck) == ZP_OK) {
    tried++;
    int rc = zp_ckpt_load(r, ck, step, data_pos, err, errlen);
    if (rc == ZP_OK) {
      if (used) snprintf(used, usedlen, "%s", ck);
      if (tried > 1 && r->rank == 0)
        fprintf(stderr, "zp: warning: ckpt.fallback: resumed from the older complete checkpoint %s because a newer one did not load: %s\n", ck,
                first_err);
      return ZP_OK;
    }
    if (!first_rc) {
      first_rc = rc;
      snprintf(first_err, sizeof first_err, "%s", err);
    }
    if (!fallback || (rc != ZP_E_CORRUPT && rc != ZP_E_IO)) {
      if (!fallback && (rc == ZP_E_CORRUPT || rc == ZP_E_IO) && strlen(err) + 120 < errlen) {
        size_t l = strlen(err);
        snprintf(err + l, errlen - l, " (set ckpt.fallback = true to resume from the previous complete checkpoint instead)");
      }
      return rc;
    }
    if (r->rank == 0) fprintf(stderr, "zp: warning: ckpt.fallback: %s does not load: %s; trying an older checkpoint\n", ck, err);
    /* the step of the one that failed, from its name */
    const char* b = strrchr(ck, '/');
    int64_t s = -1;
    if (!b || !parse_ckpt_name(b + 1, &s)) return first_rc;
    before = s;
  }
  if (tried) {
    seterr(err, errlen, "%s; and no older complete checkpoint in %s loads either (ckpt.fallback)", first_err, dir);
    return first_rc;
  }
  return ZP_OK; /* nothing to resume from */
}

int zp_ckpt_read_counters(const char* ckpt_dir, int64_t* step, uint64_t* data_pos, int* step_t, char* err, size_t errlen) {
  ck_meta m;
  int rc = meta_load(ckpt_dir, &m, err, errlen);
  if (rc) return rc;
  *step = m.step;
  *data_pos = m.data_pos;
  *step_t = m.step_t;
  meta_free(&m);
  return ZP_OK;
}

int zp_ckpt_read_shape(const char* ckpt_dir, zp_gpt2_shape* s, int64_t* step, char* err, size_t errlen) {
  ck_meta m;
  int rc = meta_load(ckpt_dir, &m, err, errlen);
  if (rc) return rc;
  *s = m.s;
  if (step) *step = m.step;
  meta_free(&m);
  return ZP_OK;
}

int zp_ckpt_set_full_params(zp_run* r, float* const* gp, char* err, size_t errlen) {
  return zp_ckpt_set_full_state(r, gp, NULL, NULL, err, errlen);
}

int zp_ckpt_set_full_state(zp_run* r, float* const* gp, float* const* gm, float* const* gv, char* err, size_t errlen) {
  if (zp_run_fence_all(r)) { seterr(err, errlen, "%s", r->err); return ZP_E_DEVICE; } /* optimizer overlap: updates done */
  int rc = ZP_OK;
  if (r->dry_run) {
    seterr(err, errlen, "cannot set weights in a dry run");
    rc = ZP_E_INVALID;
  }
  if (!rc && r->ops->synchronize) rc = r->ops->synchronize(r->be);
  const zp_model_layout* L = &r->layout;
  for (int g = 0; g < L->n_groups && !rc; g++) {
    zp_group_info* in = &r->groups[g].info;
    const char* gname = r->gplans[g].name;
    uint64_t span = L->group_span[g];
    for (int c = ZP_CAT_PARAM; c <= ZP_CAT_OPTIM && !rc; c++) {
      if (c == ZP_CAT_GRAD || !has_state(in, c)) continue;
      uint64_t base, held;
      held_range(in, c, &base, &held);
      uint64_t n = c == ZP_CAT_OPTIM ? 2 * held : held;
      float* h = calloc((size_t)n + 1, sizeof(float));
      if (!h) {
        seterr(err, errlen, "group %s: out of host memory (%" PRIu64 " floats)", gname, n);
        rc = ZP_E_NOMEM;
        break;
      }
      if (c != ZP_CAT_OPTIM && base < span) memcpy(h, gp[g] + base, (size_t)((base + held < span ? base + held : span) - base) * sizeof(float));
      if (c == ZP_CAT_OPTIM && gm && gv && base < span) { /* Adam moments given (tensor-parallel resume) */
        size_t k = (size_t)((base + held < span ? base + held : span) - base);
        memcpy(h, gm[g] + base, k * sizeof(float));
        memcpy(h + held, gv[g] + base, k * sizeof(float));
      }
      if (c == ZP_CAT_PARAM) rc = load_param(r, g, h, ZP_F32, held, 0, err, errlen);
      else {
        rc = buf_put(r, g, c, 0, h, (size_t)n * sizeof(float));
        if (rc) seterr(err, errlen, "group %s: writing %s failed (status %d)", gname, zp_category_name((zp_category)c), rc);
      }
      free(h);
    }
  }
  if (!rc && r->ops->synchronize) rc = r->ops->synchronize(r->be);
  if (!rc) r->opt.step_t = 0;
  return ck_agree(r, rc, "setting the weights", err, errlen);
}

/* ------------------------------------------------------------------------------------------ */
/* read full params (export), info                                                            */
/* ------------------------------------------------------------------------------------------ */

int zp_ckpt_read_full_state(const char* ckpt_dir, const zp_model_layout* L, int which, float** gp, char* err, size_t errlen) {
  for (int g = 0; g < L->n_groups; g++) gp[g] = NULL;
  if (which < 0 || which > 2) {
    seterr(err, errlen, "internal: zp_ckpt_read_full_state: which = %d", which);
    return ZP_E_INVALID;
  }
  ck_meta m;
  int rc = meta_load(ckpt_dir, &m, err, errlen);
  if (rc) return rc;
  rc = meta_check_layout(&m, L, err, errlen);
  if (!rc) rc = meta_load_indexes(&m, err, errlen);
  for (int g = 0; g < L->n_groups && !rc; g++) {
    uint64_t n = zp_group_padded(L, g, 1);
    gp[g] = calloc((size_t)n + 1, sizeof(float));
    if (!gp[g]) {
      seterr(err, errlen, "%s: out of host memory (%" PRIu64 " floats for group %d)", m.label, n, g);
      rc = ZP_E_NOMEM;
      break;
    }
    rc = fill_range(&m, g, which == 0 ? m.wkind[g] : which == 1 ? PK_M : PK_V, 0, m.span[g], gp[g], ZP_F32, err, errlen);
  }
  if (rc)
    for (int g = 0; g < L->n_groups; g++) {
      free(gp[g]);
      gp[g] = NULL;
    }
  meta_free(&m);
  return rc;
}

int zp_ckpt_read_full_params(const char* ckpt_dir, const zp_model_layout* L, float** gp, char* err, size_t errlen) {
  return zp_ckpt_read_full_state(ckpt_dir, L, 0, gp, err, errlen);
}

/* `zp ckpt info` of a run directory: every checkpoint and unfinished temporary directory. */
static int info_run_dir(const char* dir, FILE* out, int verbose, char* err, size_t errlen) {
  DIR* d = opendir(dir);
  if (!d) {
    seterr(err, errlen, "%s: cannot open: %s", dir, strerror(errno));
    return ZP_E_IO;
  }
  fprintf(out, "run directory %s\n", dir);
  int n_complete = 0, n_tmp = 0;
  struct dirent* e;
  while ((e = readdir(d))) {
    char p[CK_PATH];
    if (!is_tmp_name(e->d_name)) continue;
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    int done = 0, failed = 0, has_meta = file_exists_at(p, "meta.json");
    DIR* t = opendir(p);
    struct dirent* f;
    while (t && (f = readdir(t))) {
      size_t l = strlen(f->d_name);
      if (strncmp(f->d_name, "rank", 4) != 0) continue;
      if (l > 5 && strcmp(f->d_name + l - 5, ".json") == 0) done++;
      if (l > 7 && strcmp(f->d_name + l - 7, ".failed") == 0) failed++;
    }
    if (t) closedir(t);
    n_tmp++;
    fprintf(out, "  %-28s INCOMPLETE (in progress, or left by a crash; never loaded): %d rank file%s finished%s%s%s\n", e->d_name, done,
            done == 1 ? "" : "s", failed ? ", writer failures: " : "", failed ? "yes" : "", has_meta ? ", meta.json written (not renamed)" : "");
  }
  closedir(d);
  ck_entry* es;
  int cnt;
  if (list_ckpts(dir, &es, &cnt)) {
    seterr(err, errlen, "%s: cannot list: %s", dir, strerror(errno));
    return ZP_E_IO;
  }
  for (int i = 0; i < cnt; i++) {
    char p[CK_PATH], e2[1024];
    snprintf(p, sizeof p, "%s/%s", dir, es[i].name);
    ck_meta m;
    if (meta_load(p, &m, e2, sizeof e2)) {
      fprintf(out, "  %-28s NOT A CHECKPOINT: %s\n", es[i].name, e2);
      continue;
    }
    n_complete++;
    fprintf(out, "  %-28s complete: step %lld, %d rank%s, %s, written %s\n", es[i].name, (long long)m.step, m.world, m.world > 1 ? "s" : "",
            m.strategy, m.writer[0] ? (strcmp(m.writer, "async") ? "synchronously" : "asynchronously") : "(unknown)");
    meta_free(&m);
  }
  free(es);
  if (!n_complete) {
    fprintf(out, "  no complete checkpoint%s\n", n_tmp ? " (only unfinished ones)" : "");
    seterr(err, errlen, "%s: no complete checkpoint", dir);
    return ZP_E_IO;
  }
  char latest[CK_PATH];
  if (zp_ckpt_find_latest(dir, latest, sizeof latest)) {
    seterr(err, errlen, "%s: no complete checkpoint with a valid meta.json", dir);
    return ZP_E_CORRUPT;
  }
  fprintf(out, "newest complete (what a resume loads):\n");
  return zp_ckpt_info(latest, out, verbose, err, errlen);
}

int zp_ckpt_info(const char* ckpt_dir, FILE* out, int verbose, char* err, size_t errlen) {
  if (!ckpt_dir) {
    seterr(err, errlen, "zp ckpt info: no directory");
    return ZP_E_INVALID;
  }
  struct stat st;
  if (stat(ckpt_dir, &st) == 0 && S_ISDIR(st.st_mode) && !file_exists_at(ckpt_dir, "meta.json")) {
    char lab[256];
    dir_label(ckpt_dir, lab, sizeof lab);
    int64_t s;
    if (!parse_ckpt_name(lab, &s) && !is_tmp_name(lab)) return info_run_dir(ckpt_dir, out, verbose, err, errlen);
  }
  ck_meta m;
  int rc = meta_load(ckpt_dir, &m, err, errlen);
  if (rc) return rc;
  fprintf(out, "checkpoint %s\n", ckpt_dir);
  fprintf(out, "  step %lld, data position %llu, optimizer step_t %d\n", (long long)m.step, (unsigned long long)m.data_pos, m.step_t);
  fprintf(out, "  model gpt2: n_layer %d n_head %d d_model %d seq_len %d vocab_size %d (padded %d), %llu parameters\n", m.s.L, m.s.NH,
          m.s.C, m.s.maxT, m.s.V, m.s.Vp, (unsigned long long)m.total_params);
  fprintf(out, "  precision %s (param %s, master %s), saved by %d rank%s with strategy %s\n", m.precision, m.dt_param[0] ? m.dt_param : "?",
          m.dt_master[0] ? m.dt_master : "?", m.world, m.world > 1 ? "s" : "", m.strategy);
  fprintf(out, "  format version %d, written %s; complete (meta.json present and renamed into place)\n", m.version,
          m.writer[0] ? (strcmp(m.writer, "async") ? "synchronously" : "asynchronously (staged to host, written in the background)")
                      : "(not recorded)");
  rc = meta_load_indexes(&m, err, errlen);
  if (rc) {
    fprintf(out, "  INCOMPLETE: %s\n", err);
    meta_free(&m);
    return rc;
  }
  fprintf(out, "  files:\n");
  int bad = 0, pieces = 0;
  uint64_t total = 0;
  void* buf = NULL;
  size_t cap = 0;
  char first[1536] = "";
  for (int i = 0; i < m.n_files; i++) {
    ck_file* f = &m.files[i];
    char path[CK_PATH];
    snprintf(path, sizeof path, "%s/%s", m.dir, f->file);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    int fbad = 0;
    if (fd < 0) {
      fprintf(out, "    %-16s MISSING: %s\n", f->file, strerror(errno));
      if (!first[0]) snprintf(first, sizeof first, "%s/%s: cannot open: %s", m.label, f->file, strerror(errno));
      bad++;
      continue;
    }
    for (int j = 0; j < f->n_pieces; j++) {
      const ck_piece* p = &f->pieces[j];
      if (p->bytes > cap) {
        void* nb = realloc(buf, (size_t)p->bytes);
        if (!nb) {
          seterr(err, errlen, "%s/%s: out of host memory", m.label, f->file);
          close(fd);
          free(buf);
          meta_free(&m);
          return ZP_E_NOMEM;
        }
        buf = nb;
        cap = (size_t)p->bytes;
      }
      char e2[1536];
      pieces++;
      int prc = piece_read(&m, f, fd, p, buf, e2, sizeof e2);
      if (prc) {
        fprintf(out, "    BAD: %s\n", e2);
        if (!first[0]) snprintf(first, sizeof first, "%s", e2);
        fbad++;
      } else if (verbose) {
        char dsc[300];
        piece_desc(&m, p, dsc, sizeof dsc);
        fprintf(out, "      %s  %s  offset %llu, %llu bytes %s, crc32c %08x ok\n", f->file, dsc, (unsigned long long)p->offset,
                (unsigned long long)p->bytes, zp_dtype_name(p->dtype), p->crc);
      }
    }
    /* whole-file checksum */
    uint32_t c = 0;
    uint64_t pos = 0;
    char chunk[1 << 16];
    while (pos < f->bytes) {
      size_t n = f->bytes - pos < sizeof chunk ? (size_t)(f->bytes - pos) : sizeof chunk;
      if (pread_all(fd, chunk, n, pos)) break;
      c = zp_crc32c(c, chunk, n);
      pos += n;
    }
    close(fd);
    if (pos != f->bytes || c != f->crc) {
      fprintf(out, "    BAD: %s/%s: whole-file checksum mismatch\n", m.label, f->file);
      if (!first[0]) snprintf(first, sizeof first, "%s/%s: whole-file checksum mismatch", m.label, f->file);
      fbad++;
    }
    fprintf(out, "    %-16s %12llu bytes  %3d pieces  %s\n", f->file, (unsigned long long)f->bytes, f->n_pieces,
            fbad ? "CORRUPT" : "ok (every piece's CRC-32C and the file's match)");
    total += f->bytes;
    bad += fbad;
  }
  free(buf);
  if (bad) {
    fprintf(out, "  %d problem%s found\n", bad, bad > 1 ? "s" : "");
    seterr(err, errlen, "%s", first);
    rc = ZP_E_CORRUPT;
  } else {
    fprintf(out, "  verified: %d pieces in %d file%s, %llu bytes, all checksums match\n", pieces, m.n_files, m.n_files == 1 ? "" : "s",
            (unsigned long long)total);
  }
  meta_free(&m);
  return rc;
}
