/* safetensors.c: the safetensors reader/writer and the GPT-2 <-> Hugging Face mapping (see
 * safetensors.h for the format and the invariants).
 *
 * Implementation invariants:
 * - The header is parsed with jansson (JSON_REJECT_DUPLICATES) from a bounded buffer; all
 *   arithmetic on sizes and offsets is checked for overflow before use.
 * - A tensor's bytes are read with pread at data_off + begin for exactly end - begin bytes,
 *   after zp_st_open has proven that range inside the file.
 * - The GPT-2 import checks every name, shape and dtype of the file against the layout before
 *   it reads any data, so a wrong file fails fast and names what is wrong. */
#define _DEFAULT_SOURCE
#include "safetensors.h"
#include "seterr.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bf16.h"
#include "ckpt.h"
#include "runtime.h"


static const struct {
  const char* name;
  size_t size;
  zp_st_dtype dt;
} st_dtypes[] = {
    {"F64", 8, ZP_ST_F64},   {"F32", 4, ZP_ST_F32},     {"F16", 2, ZP_ST_F16},     {"BF16", 2, ZP_ST_BF16},
    {"I64", 8, ZP_ST_OTHER}, {"I32", 4, ZP_ST_OTHER},   {"I16", 2, ZP_ST_OTHER},   {"I8", 1, ZP_ST_OTHER},
    {"U64", 8, ZP_ST_OTHER}, {"U32", 4, ZP_ST_OTHER},   {"U16", 2, ZP_ST_OTHER},   {"U8", 1, ZP_ST_OTHER},
    {"BOOL", 1, ZP_ST_OTHER}, {"F8_E4M3", 1, ZP_ST_OTHER}, {"F8_E5M2", 1, ZP_ST_OTHER},
};

/* ------------------------------------------------------------------------------------------ */
/* reader                                                                                     */
/* ------------------------------------------------------------------------------------------ */

void zp_st_close(zp_st_file* f) {
  if (!f) return;
  if (f->fd >= 0) close(f->fd);
  free(f->t);
  free(f->meta);
  f->t = NULL;
  f->meta = NULL;
  f->n = f->n_meta = 0;
  f->fd = -1;
}

typedef struct {
  uint64_t begin, end;
  int idx;
} st_span;

static int span_cmp(const void* a, const void* b) {
  const st_span* x = a;
  const st_span* y = b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  return x->end < y->end ? -1 : x->end > y->end ? 1 : 0;
}

/* a JSON number that is a non-negative integer (jansson: integers only; reals are refused) */
static int ju64(json_t* v, uint64_t* out) {
  if (!json_is_integer(v)) return -1;
  json_int_t x = json_integer_value(v);
  if (x < 0) return -1;
  *out = (uint64_t)x;
  return 0;
}

int zp_st_parse_header(zp_st_file* f, const char* json, size_t n, uint64_t file_bytes, const char* path, char* err, size_t errlen) {
  memset(f, 0, sizeof *f);
  f->fd = -1;
  snprintf(f->path, sizeof f->path, "%s", path ? path : "(memory)");
  const char* P = f->path;
  if (file_bytes < 8 + (uint64_t)n) {
    seterr(err, errlen, "%s: header of %zu bytes does not fit a file of %" PRIu64 " bytes", P, n, file_bytes);
    return ZP_E_CORRUPT;
  }
  f->file_bytes = file_bytes;
  f->data_off = 8 + (uint64_t)n;
  f->data_bytes = file_bytes - f->data_off;
  json_error_t je;
  json_t* root = json_loadb(json, n, JSON_REJECT_DUPLICATES, &je);
  if (!root) {
    seterr(err, errlen, "%s: header is not valid JSON (byte %d of the header: %s)", P, je.position, je.text);
    return ZP_E_CORRUPT;
  }
  int rc = ZP_OK;
  st_span* sp = NULL;
  if (!json_is_object(root)) {
    seterr(err, errlen, "%s: header is not a JSON object", P);
    rc = ZP_E_CORRUPT;
    goto out;
  }
  size_t cnt = json_object_size(root);
  f->t = calloc(cnt + 1, sizeof *f->t);
  sp = calloc(cnt + 1, sizeof *sp);
  if (!f->t || !sp) {
    seterr(err, errlen, "%s: out of host memory for %zu header entries", P, cnt);
    rc = ZP_E_NOMEM;
    goto out;
  }
  const char* key;
  json_t* val;
  json_object_foreach(root, key, val) {
    size_t kl = strlen(key);
    if (strcmp(key, "__metadata__") == 0) {
      if (!json_is_object(val)) {
        seterr(err, errlen, "%s: __metadata__ is not an object of strings", P);
        rc = ZP_E_CORRUPT;
        goto out;
      }
      size_t mn = json_object_size(val);
      f->meta = calloc(mn + 1, sizeof *f->meta);
      if (!f->meta) {
        seterr(err, errlen, "%s: out of host memory", P);
        rc = ZP_E_NOMEM;
        goto out;
      }
      const char* mk;
      json_t* mv;
      json_object_foreach(val, mk, mv) {
        if (!json_is_string(mv)) {
          seterr(err, errlen, "%s: __metadata__ value of \"%.100s\" is not a string", P, mk);
          rc = ZP_E_CORRUPT;
          goto out;
        }
        snprintf(f->meta[f->n_meta][0], sizeof f->meta[0][0], "%s", mk);
        snprintf(f->meta[f->n_meta][1], sizeof f->meta[0][1], "%s", json_string_value(mv));
        f->n_meta++;
      }
      continue;
    }
    if (kl == 0 || kl >= ZP_ST_NAME_MAX) {
      seterr(err, errlen, "%s: tensor name \"%.100s\" is empty or longer than %d bytes", P, key, ZP_ST_NAME_MAX - 1);
      rc = ZP_E_CORRUPT;
      goto out;
    }
    zp_st_tensor* t = &f->t[f->n];
    snprintf(t->name, sizeof t->name, "%s", key);
    if (!json_is_object(val)) {
      seterr(err, errlen, "%s: tensor %s: entry is not an object", P, t->name);
      rc = ZP_E_CORRUPT;
      goto out;
    }
    json_t* dt = json_object_get(val, "dtype");
    json_t* sh = json_object_get(val, "shape");
    json_t* of = json_object_get(val, "data_offsets");
    if (!json_is_string(dt)) {
      seterr(err, errlen, "%s: tensor %s: \"dtype\" is missing or not a string", P, t->name);
      rc = ZP_E_CORRUPT;
      goto out;
    }
    const char* dts = json_string_value(dt);
    int found = 0;
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
      if (strcmp(dts, st_dtypes[i].name) == 0) {
        snprintf(t->dtype_name, sizeof t->dtype_name, "%s", st_dtypes[i].name);
        t->dtype = st_dtypes[i].dt;
        t->dtype_size = st_dtypes[i].size;
        found = 1;
      }
    if (!found) {
      seterr(err, errlen, "%s: tensor %s: unknown dtype \"%.40s\"", P, t->name, dts);
      rc = ZP_E_CORRUPT;
      goto out;
    }
    if (!json_is_array(sh) || json_array_size(sh) > ZP_ST_MAX_DIMS) {
      seterr(err, errlen, "%s: tensor %s: \"shape\" is missing, not an array, or has more than %d dimensions", P, t->name, ZP_ST_MAX_DIMS);
      rc = ZP_E_CORRUPT;
      goto out;
    }
    t->ndim = (int)json_array_size(sh);
    t->numel = 1;
    for (int d = 0; d < t->ndim; d++) {
      uint64_t x;
      if (ju64(json_array_get(sh, (size_t)d), &x)) {
        seterr(err, errlen, "%s: tensor %s: shape[%d] is not a non-negative integer", P, t->name, d);
        rc = ZP_E_CORRUPT;
        goto out;
      }
      t->shape[d] = x;
      if (x && t->numel > UINT64_MAX / x) {
        seterr(err, errlen, "%s: tensor %s: shape overflows", P, t->name);
        rc = ZP_E_CORRUPT;
        goto out;
      }
      t->numel *= x;
    }
    uint64_t b, e;
    if (!json_is_array(of) || json_array_size(of) != 2 || ju64(json_array_get(of, 0), &b) || ju64(json_array_get(of, 1), &e)) {
      seterr(err, errlen, "%s: tensor %s: \"data_offsets\" must be [begin, end] of non-negative integers", P, t->name);
      rc = ZP_E_CORRUPT;
      goto out;
    }
    if (b > e || e > f->data_bytes) {
      seterr(err, errlen, "%s: tensor %s: data_offsets [%" PRIu64 ", %" PRIu64 "] are not inside the data buffer of %" PRIu64 " bytes", P,
             t->name, b, e, f->data_bytes);
      rc = ZP_E_CORRUPT;
      goto out;
    }
    if (t->numel > UINT64_MAX / t->dtype_size || e - b != t->numel * t->dtype_size) {
      seterr(err, errlen, "%s: tensor %s: %" PRIu64 " bytes at data_offsets [%" PRIu64 ", %" PRIu64 "], but shape x %s needs %" PRIu64, P,
             t->name, e - b, b, e, t->dtype_name, t->numel > UINT64_MAX / t->dtype_size ? UINT64_MAX : t->numel * t->dtype_size);
      rc = ZP_E_CORRUPT;
      goto out;
    }
    t->begin = b;
    t->end = e;
    sp[f->n] = (st_span){b, e, f->n};
    f->n++;
  }
  qsort(sp, (size_t)f->n, sizeof *sp, span_cmp);
  uint64_t pos = 0;
  for (int i = 0; i < f->n; i++) {
    if (sp[i].begin < pos) {
      seterr(err, errlen, "%s: tensors %s and %s overlap in the data buffer (bytes %" PRIu64 "..%" PRIu64 ")", P,
             f->t[sp[i - 1].idx].name, f->t[sp[i].idx].name, sp[i].begin, pos);
      rc = ZP_E_CORRUPT;
      goto out;
    }
    if (sp[i].begin > pos) {
      seterr(err, errlen, "%s: bytes %" PRIu64 "..%" PRIu64 " of the data buffer belong to no tensor (before %s)", P, pos, sp[i].begin,
             f->t[sp[i].idx].name);
      rc = ZP_E_CORRUPT;
      goto out;
    }
    pos = sp[i].end;
  }
  if (pos != f->data_bytes) {
    seterr(err, errlen, "%s: the data buffer has %" PRIu64 " bytes, the tensors use %" PRIu64 " (trailing bytes or a truncated header)", P,
           f->data_bytes, pos);
    rc = ZP_E_CORRUPT;
    goto out;
  }
out:
  free(sp);
  json_decref(root);
  if (rc) zp_st_close(f);
  return rc;
}

static int pread_all(int fd, void* p, size_t n, uint64_t off) {
  char* c = p;
  while (n) {
    ssize_t got = pread(fd, c, n, (off_t)off);
    if (got < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (got == 0) {
      errno = EIO;
      return -2;
    }
    c += got;
    n -= (size_t)got;
    off += (uint64_t)got;
  }
  return 0;
}

int zp_st_open(zp_st_file* f, const char* path, char* err, size_t errlen) {
  memset(f, 0, sizeof *f);
  f->fd = -1;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    seterr(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    return ZP_E_IO;
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    seterr(err, errlen, "%s: not a regular file", path);
    close(fd);
    return ZP_E_IO;
  }
  uint64_t size = (uint64_t)st.st_size;
  unsigned char lb[8];
  if (size < 8 || pread_all(fd, lb, 8, 0)) {
    seterr(err, errlen, "%s: %" PRIu64 " bytes: too short for a safetensors file (8-byte header length)", path, size);
    close(fd);
    return ZP_E_CORRUPT;
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = n << 8 | lb[i];
  if (n < 2 || n > ZP_ST_MAX_HEADER || n > size - 8) {
    seterr(err, errlen, "%s: header length %" PRIu64 " is impossible (file of %" PRIu64 " bytes, limit %" PRIu64 ")", path, n, size,
           ZP_ST_MAX_HEADER);
    close(fd);
    return ZP_E_CORRUPT;
  }
  char* h = malloc((size_t)n + 1);
  if (!h) {
    seterr(err, errlen, "%s: out of host memory for a %" PRIu64 "-byte header", path, n);
    close(fd);
    return ZP_E_NOMEM;
  }
  if (pread_all(fd, h, (size_t)n, 8)) {
    seterr(err, errlen, "%s: cannot read the header: %s", path, strerror(errno));
    free(h);
    close(fd);
    return ZP_E_IO;
  }
  int rc = zp_st_parse_header(f, h, (size_t)n, size, path, err, errlen);
  free(h);
  if (rc) {
    close(fd);
    return rc;
  }
  f->fd = fd;
  return ZP_OK;
}

const zp_st_tensor* zp_st_find(const zp_st_file* f, const char* name) {
  for (int i = 0; i < f->n; i++)
    if (strcmp(f->t[i].name, name) == 0) return &f->t[i];
  return NULL;
}

const char* zp_st_meta(const zp_st_file* f, const char* key) {
  for (int i = 0; i < f->n_meta; i++)
    if (strcmp(f->meta[i][0], key) == 0) return f->meta[i][1];
  return NULL;
}

static float f16_to_f32(uint16_t h) {
  uint32_t s = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff, bits;
  if (e == 0) {
    if (m == 0) bits = s;
    else { /* subnormal: normalise */
      int sh = 0;
      while (!(m & 0x400)) { m <<= 1; sh++; }
      m &= 0x3ff;
      bits = s | ((uint32_t)(113 - sh) << 23) | (m << 13);
    }
  } else if (e == 31) {
    bits = s | 0x7f800000u | (m << 13);
  } else {
    bits = s | ((e + 112) << 23) | (m << 13);
  }
  float out;
  memcpy(&out, &bits, 4);
  return out;
}

int zp_st_read_f32(const zp_st_file* f, const zp_st_tensor* t, float* out, char* err, size_t errlen) {
  if (f->fd < 0) {
    seterr(err, errlen, "%s: tensor %s: file is not open for reading", f->path, t->name);
    return ZP_E_INVALID;
  }
  if (t->dtype == ZP_ST_OTHER) {
    seterr(err, errlen, "%s: tensor %s: dtype %s cannot be read as floating point (F32, BF16, F16 or F64)", f->path, t->name, t->dtype_name);
    return ZP_E_INVALID;
  }
  uint64_t bytes = t->end - t->begin;
  if (t->dtype == ZP_ST_F32) {
    int e = pread_all(f->fd, out, (size_t)bytes, f->data_off + t->begin);
    if (e) {
      seterr(err, errlen, "%s: tensor %s: %s", f->path, t->name, e == -2 ? "file is shorter than its header says" : strerror(errno));
      return e == -2 ? ZP_E_CORRUPT : ZP_E_IO;
    }
    return ZP_OK;
  }
  void* tmp = malloc(bytes ? (size_t)bytes : 1);
  if (!tmp) {
    seterr(err, errlen, "%s: tensor %s: out of host memory (%" PRIu64 " bytes)", f->path, t->name, bytes);
    return ZP_E_NOMEM;
  }
  int e = pread_all(f->fd, tmp, (size_t)bytes, f->data_off + t->begin);
  if (e) {
    seterr(err, errlen, "%s: tensor %s: %s", f->path, t->name, e == -2 ? "file is shorter than its header says" : strerror(errno));
    free(tmp);
    return e == -2 ? ZP_E_CORRUPT : ZP_E_IO;
  }
  for (uint64_t i = 0; i < t->numel; i++) {
    if (t->dtype == ZP_ST_F64) out[i] = (float)((const double*)tmp)[i];
    else if (t->dtype == ZP_ST_BF16) out[i] = zp_bf16_to_f32(((const uint16_t*)tmp)[i]);
    else out[i] = f16_to_f32(((const uint16_t*)tmp)[i]);
  }
  free(tmp);
  return ZP_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* writer                                                                                     */
/* ------------------------------------------------------------------------------------------ */

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

int zp_st_write(const char* path, const zp_st_out* ts, int n, zp_st_fill_fn fill, void* ctx, const char* const* meta_kv, int n_meta,
                char* err, size_t errlen) {
  json_t* root = json_object();
  json_t* md = json_object();
  int have_format = 0;
  for (int i = 0; i < n_meta; i++) {
    json_object_set_new(md, meta_kv[2 * i], json_string(meta_kv[2 * i + 1]));
    if (strcmp(meta_kv[2 * i], "format") == 0) have_format = 1;
  }
  if (!have_format) json_object_set_new(md, "format", json_string("pt")); /* transformers checks it */
  json_object_set_new(root, "__metadata__", md);
  uint64_t pos = 0, maxb = 0;
  for (int i = 0; i < n; i++) {
    size_t es = strcmp(ts[i].dtype, "F32") == 0 ? 4 : strcmp(ts[i].dtype, "BF16") == 0 ? 2 : 0;
    if (!es) {
      json_decref(root);
      seterr(err, errlen, "%s: tensor %s: the writer supports F32 and BF16, not %s", path, ts[i].name, ts[i].dtype);
      return ZP_E_INVALID;
    }
    uint64_t numel = 1;
    json_t* sh = json_array();
    for (int d = 0; d < ts[i].ndim; d++) {
      numel *= ts[i].shape[d];
      json_array_append_new(sh, json_integer((json_int_t)ts[i].shape[d]));
    }
    json_t* e = json_object();
    json_object_set_new(e, "dtype", json_string(ts[i].dtype));
    json_object_set_new(e, "shape", sh);
    json_t* of = json_array();
    json_array_append_new(of, json_integer((json_int_t)pos));
    json_array_append_new(of, json_integer((json_int_t)(pos + numel * es)));
    json_object_set_new(e, "data_offsets", of);
    json_object_set_new(root, ts[i].name, e);
    pos += numel * es;
    if (numel * es > maxb) maxb = numel * es;
  }
  char* text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(root);
  if (!text) {
    seterr(err, errlen, "%s: cannot encode the header", path);
    return ZP_E_NOMEM;
  }
  size_t hl = strlen(text), padded = (hl + 7) / 8 * 8;
  char tmp[1100];
  if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
    free(text);
    seterr(err, errlen, "%.200s...: path too long", path);
    return ZP_E_INVALID;
  }
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    free(text);
    seterr(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
    return ZP_E_IO;
  }
  unsigned char lb[8];
  for (int i = 0; i < 8; i++) lb[i] = (unsigned char)((uint64_t)padded >> (8 * i));
  int rc = ZP_OK;
  if (write_all(fd, lb, 8) || write_all(fd, text, hl) || write_all(fd, "        ", padded - hl)) rc = ZP_E_IO;
  free(text);
  void* buf = rc ? NULL : malloc(maxb ? (size_t)maxb : 1);
  if (!rc && !buf) {
    seterr(err, errlen, "%s: out of host memory (%" PRIu64 " bytes)", path, maxb);
    rc = ZP_E_NOMEM;
  }
  for (int i = 0; i < n && !rc; i++) {
    size_t es = strcmp(ts[i].dtype, "F32") == 0 ? 4 : 2;
    uint64_t numel = 1;
    for (int d = 0; d < ts[i].ndim; d++) numel *= ts[i].shape[d];
    rc = fill(ctx, i, buf, err, errlen);
    if (rc) break;
    if (write_all(fd, buf, (size_t)(numel * es))) rc = ZP_E_IO;
  }
  free(buf);
  if (rc == ZP_E_IO) seterr(err, errlen, "%s: write failed: %s", tmp, strerror(errno));
  if (!rc && fsync(fd) != 0) {
    seterr(err, errlen, "%s: fsync failed: %s", tmp, strerror(errno));
    rc = ZP_E_IO;
  }
  if (close(fd) != 0 && !rc) {
    seterr(err, errlen, "%s: close failed: %s", tmp, strerror(errno));
    rc = ZP_E_IO;
  }
  if (!rc && rename(tmp, path) != 0) {
    seterr(err, errlen, "%s: cannot rename %s to it: %s", path, tmp, strerror(errno));
    rc = ZP_E_IO;
  }
  if (rc) unlink(tmp);
  return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* GPT-2                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* HF Conv1D layers: stored [in, out], ours [out, in] */
static int is_conv1d(int kind) { return kind == ZP_T_QKVW || kind == ZP_T_ATTPROJW || kind == ZP_T_FCW || kind == ZP_T_FCPROJW; }

/* the HF shape of one of our tensors (rows: wte cut to the real vocabulary) */
static int hf_shape(const zp_tensor_desc* t, uint64_t* shape) {
  if (t->cols == 1) {
    shape[0] = (uint64_t)t->rows;
    return 1;
  }
  if (is_conv1d(t->kind)) {
    shape[0] = (uint64_t)t->cols;
    shape[1] = (uint64_t)t->rows;
  } else {
    shape[0] = (uint64_t)t->real_rows;
    shape[1] = (uint64_t)t->cols;
  }
  return 2;
}

typedef struct {
  const zp_model_layout* L;
  float* const* gp;
  int bf16;
} export_ctx;

static int export_fill(void* vctx, int i, void* dst, char* err, size_t errlen) {
  (void)err;
  (void)errlen;
  export_ctx* x = vctx;
  const zp_tensor_desc* t = &x->L->tensors[i];
  const float* src = x->gp[t->group] + t->offset;
  uint64_t rows = is_conv1d(t->kind) ? (uint64_t)t->rows : (uint64_t)t->real_rows, cols = (uint64_t)t->cols;
  for (uint64_t r = 0; r < rows; r++)
    for (uint64_t c = 0; c < cols; c++) {
      float v = src[r * cols + c];
      uint64_t o = is_conv1d(t->kind) ? c * rows + r : r * cols + c; /* transposed: [cols][rows] */
      if (x->bf16) ((uint16_t*)dst)[o] = zp_f32_to_bf16(v);
      else ((float*)dst)[o] = v;
    }
  return ZP_OK;
}

int zp_st_export_gpt2(const zp_model_layout* L, float* const* gp, const char* path, int bf16, const char* const* meta_kv, int n_meta,
                      char* err, size_t errlen) {
  zp_st_out* ts = calloc((size_t)L->n_tensors + 1, sizeof *ts);
  if (!ts) {
    seterr(err, errlen, "out of host memory");
    return ZP_E_NOMEM;
  }
  for (int i = 0; i < L->n_tensors; i++) {
    ts[i].name = L->tensors[i].name;
    ts[i].dtype = bf16 ? "BF16" : "F32";
    ts[i].ndim = hf_shape(&L->tensors[i], ts[i].shape);
  }
  export_ctx x = {L, gp, bf16};
  int rc = zp_st_write(path, ts, L->n_tensors, export_fill, &x, meta_kv, n_meta, err, errlen);
  free(ts);
  return rc;
}

static void shape_str(const uint64_t* s, int nd, char* out, size_t n) {
  size_t o = 0;
  o += (size_t)snprintf(out + o, n - o, "[");
  for (int d = 0; d < nd && o < n; d++) o += (size_t)snprintf(out + o, n - o, "%s%" PRIu64, d ? ", " : "", s[d]);
  if (o < n) snprintf(out + o, n - o, "]");
}

/* "h.<digits>.attn.bias" or "h.<digits>.attn.masked_bias": HF's causal-mask buffers */
static int is_mask_buffer(const char* n) {
  if (strncmp(n, "h.", 2) != 0) return 0;
  const char* p = n + 2;
  if (*p < '0' || *p > '9') return 0;
  while (*p >= '0' && *p <= '9') p++;
  return strcmp(p, ".attn.bias") == 0 || strcmp(p, ".attn.masked_bias") == 0;
}

int zp_st_import_gpt2_file(const zp_st_file* f, const zp_model_layout* L, float** gp, FILE* notes, char* err, size_t errlen) {
  for (int g = 0; g < L->n_groups; g++) gp[g] = NULL;
  const char* P = f->path;
  int* which = calloc((size_t)L->n_tensors + 1, sizeof(int)); /* file entry + 1 per layout tensor */
  int rc = ZP_OK, lm_head = -1, ignored = 0;
  float* tmp = NULL;
  if (!which) {
    seterr(err, errlen, "out of host memory");
    return ZP_E_NOMEM;
  }
  /* 1: names (each file entry is a known weight, a tied lm_head, or an ignored mask buffer) */
  for (int i = 0; i < f->n && !rc; i++) {
    const char* nm = f->t[i].name;
    if (strncmp(nm, "transformer.", 12) == 0) nm += 12;
    if (strcmp(nm, "lm_head.weight") == 0) {
      lm_head = i;
      continue;
    }
    if (is_mask_buffer(nm)) {
      if (notes && !ignored) fprintf(notes, "note: %s: ignoring %s (and similar): attention-mask buffers of old transformers versions, not weights\n", P, f->t[i].name);
      ignored++;
      continue;
    }
    int k = -1;
    for (int j = 0; j < L->n_tensors; j++)
      if (strcmp(L->tensors[j].name, nm) == 0) k = j;
    if (k < 0) {
      seterr(err, errlen, "%s: tensor %s is not a weight of this GPT-2 (n_layer %d): unknown name", P, f->t[i].name, L->s.L);
      rc = ZP_E_INVALID;
    } else if (which[k]) {
      seterr(err, errlen, "%s: tensor %s appears twice (%s and %s)", P, nm, f->t[which[k] - 1].name, f->t[i].name);
      rc = ZP_E_INVALID;
    } else {
      which[k] = i + 1;
    }
  }
  /* 2: every weight present, with the shape the config implies and a float dtype */
  for (int j = 0; j < L->n_tensors && !rc; j++) {
    const zp_tensor_desc* t = &L->tensors[j];
    if (!which[j]) {
      seterr(err, errlen, "%s: tensor %s is missing (the config's model has n_layer %d)", P, t->name, L->s.L);
      rc = ZP_E_INVALID;
      break;
    }
    const zp_st_tensor* s = &f->t[which[j] - 1];
    uint64_t want[2];
    int nd = hf_shape(t, want);
    int ok = s->ndim == nd;
    for (int d = 0; d < nd && ok; d++) ok = s->shape[d] == want[d];
    if (!ok && t->kind == ZP_T_WTE && s->ndim == 2 && s->shape[0] == (uint64_t)t->rows && s->shape[1] == (uint64_t)t->cols) ok = 1;
    if (!ok) {
      char a[128], b[128];
      shape_str(s->shape, s->ndim, a, sizeof a);
      shape_str(want, nd, b, sizeof b);
      seterr(err, errlen, "%s: tensor %s has shape %s, the config's model (n_layer %d n_head %d d_model %d seq_len %d vocab_size %d) needs %s%s", P,
             s->name, a, L->s.L, L->s.NH, L->s.C, L->s.maxT, L->s.V, b, is_conv1d(t->kind) ? " (Conv1D layout: [in, out])" : "");
      rc = ZP_E_INVALID;
      break;
    }
    if (s->dtype != ZP_ST_F32 && s->dtype != ZP_ST_BF16 && s->dtype != ZP_ST_F16 && s->dtype != ZP_ST_F64) {
      seterr(err, errlen, "%s: tensor %s has dtype %s (F32, BF16, F16 or F64 accepted)", P, s->name, s->dtype_name);
      rc = ZP_E_INVALID;
      break;
    }
  }
  if (!rc && lm_head >= 0) {
    const zp_st_tensor* s = &f->t[lm_head];
    int ok = s->ndim == 2 && s->shape[1] == (uint64_t)L->s.C && (s->shape[0] == (uint64_t)L->s.V || s->shape[0] == (uint64_t)L->s.Vp) &&
             s->dtype != ZP_ST_OTHER;
    if (!ok) {
      seterr(err, errlen, "%s: tensor %s: shape or dtype does not fit the tied classifier [%d, %d]", P, s->name, L->s.V, L->s.C);
      rc = ZP_E_INVALID;
    }
  }
  /* 3: read and place */
  for (int g = 0; g < L->n_groups && !rc; g++) {
    gp[g] = calloc((size_t)zp_group_padded(L, g, 1) + 1, sizeof(float));
    if (!gp[g]) {
      seterr(err, errlen, "out of host memory for group %d", g);
      rc = ZP_E_NOMEM;
    }
  }
  uint64_t maxn = lm_head >= 0 ? f->t[lm_head].numel : 0;
  for (int j = 0; j < L->n_tensors && !rc; j++)
    if (f->t[which[j] - 1].numel > maxn) maxn = f->t[which[j] - 1].numel;
  if (!rc) {
    tmp = malloc((size_t)maxn * sizeof(float) + 4);
    if (!tmp) {
      seterr(err, errlen, "out of host memory (%" PRIu64 " floats)", maxn);
      rc = ZP_E_NOMEM;
    }
  }
  int nonzero_pad = 0;
  for (int j = 0; j < L->n_tensors && !rc; j++) {
    const zp_tensor_desc* t = &L->tensors[j];
    const zp_st_tensor* s = &f->t[which[j] - 1];
    if ((rc = zp_st_read_f32(f, s, tmp, err, errlen))) break;
    float* dst = gp[t->group] + t->offset;
    uint64_t cols = (uint64_t)t->cols;
    if (is_conv1d(t->kind)) {
      uint64_t rows = (uint64_t)t->rows; /* file: [cols][rows] */
      for (uint64_t c = 0; c < cols; c++)
        for (uint64_t r = 0; r < rows; r++) dst[r * cols + c] = tmp[c * rows + r];
    } else {
      uint64_t rows = s->ndim == 2 ? s->shape[0] : (uint64_t)t->rows;
      uint64_t keep = t->kind == ZP_T_WTE ? (uint64_t)t->real_rows : rows;
      memcpy(dst, tmp, (size_t)(keep * cols) * sizeof(float));
      for (uint64_t e = keep * cols; e < rows * cols; e++)
        if (tmp[e] != 0.0f) nonzero_pad = 1;
    }
  }
  if (!rc && nonzero_pad && notes)
    fprintf(notes, "note: %s: wte has %d rows; rows from %d on (vocabulary padding) are not zero and were dropped\n", P, L->s.Vp, L->s.V);
  if (!rc && lm_head >= 0) {
    const zp_st_tensor* s = &f->t[lm_head];
    rc = zp_st_read_f32(f, s, tmp, err, errlen);
    const float* wte = gp[0] + L->tensors[0].offset;
    uint64_t n = (uint64_t)L->s.V * (uint64_t)L->s.C;
    for (uint64_t e = 0; e < n && !rc; e++)
      if (memcmp(&tmp[e], &wte[e], sizeof(float)) != 0) {
        seterr(err, errlen, "%s: %s differs from wte.weight (element %" PRIu64 ": %g vs %g): zp ties the classifier to the embedding", P, s->name, e,
               (double)tmp[e], (double)wte[e]);
        rc = ZP_E_INVALID;
      }
    if (!rc && notes) fprintf(notes, "note: %s: %s equals wte.weight (tied): not stored separately\n", P, s->name);
  }
  free(tmp);
  free(which);
  if (rc)
    for (int g = 0; g < L->n_groups; g++) {
      free(gp[g]);
      gp[g] = NULL;
    }
  return rc;
}

int zp_st_init_run(struct zp_run* r, const char* path, FILE* notes, char* err, size_t errlen) {
  float** gp = calloc((size_t)r->layout.n_groups + 1, sizeof(float*));
  /* tensor parallelism: read the global tensors, keep this rank's slices (runtime_tp.c) */
  zp_model_layout gl;
  memset(&gl, 0, sizeof gl);
  int tp = r->tp.size > 1;
  int rc = tp ? zp_model_layout_init(&gl, &r->layout.s, err, errlen) : ZP_OK;
  if (!rc) rc = gp ? zp_st_import_gpt2(path, tp ? &gl : &r->layout, gp, r->rank == 0 && r->tp.rank == 0 ? notes : NULL, err, errlen)
                   : ZP_E_NOMEM;
  if (!gp) seterr(err, errlen, "out of host memory");
  for (int g = 0; tp && !rc && g < r->layout.n_groups; g++) {
    float* loc = malloc((size_t)r->groups[g].info.padded * sizeof(float) + 1);
    if (!loc) {
      seterr(err, errlen, "out of host memory");
      rc = ZP_E_NOMEM;
      break;
    }
    zp_run_tp_slice_global(r, &gl, g, gp[g], loc);
    free(gp[g]);
    gp[g] = loc;
  }
  if (tp) zp_model_layout_free(&gl);
  rc = zp_ckpt_agree(r, rc, "reading the initial weights (train.init_from)", err, errlen);
  if (!rc) rc = zp_ckpt_set_full_params(r, gp, err, errlen);
  if (gp)
    for (int g = 0; g < r->layout.n_groups; g++) free(gp[g]);
  free(gp);
  return rc;
}

int zp_st_import_gpt2(const char* path, const zp_model_layout* L, float** gp, FILE* notes, char* err, size_t errlen) {
  for (int g = 0; g < L->n_groups; g++) gp[g] = NULL;
  zp_st_file f;
  int rc = zp_st_open(&f, path, err, errlen);
  if (rc) return rc;
  rc = zp_st_import_gpt2_file(&f, L, gp, notes, err, errlen);
  zp_st_close(&f);
  return rc;
}
