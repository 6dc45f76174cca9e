/* data.c: llm.c token shards (read via mmap, written atomically) and the seeded sample stream.
 * Invariants: see data.h. Shards are validated (magic, version, size) when opened, tokens when
 * read. The permutation of an epoch is a pure function of (seed, epoch, N); only the current
 * epoch's permutation is cached. Byte order is little-endian (as llm.c writes it). */
#include "data.h"
#include "seterr.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rng.h"
#include "zp/zp_plugin.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "zp data shards are little-endian; this build targets a big-endian machine"
#endif


/* ---------------------------------------------------------------- writing ---- */

static int write_all(int fd, const void* buf, size_t n) {
  const char* p = (const char*)buf;
  while (n > 0) {
    ssize_t w = write(fd, p, n > (1u << 30) ? (1u << 30) : n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static void fsync_parent_dir(const char* path) {
  char dir[4096];
  const char* slash = strrchr(path, '/');
  if (!slash) {
    strcpy(dir, ".");
  } else if (slash == path) {
    strcpy(dir, "/");
  } else {
    size_t len = (size_t)(slash - path);
    if (len >= sizeof dir) return;
    memcpy(dir, path, len);
    dir[len] = 0;
  }
  int fd = open(dir, O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    (void)fsync(fd); /* best effort: some file systems refuse fsync on directories */
    close(fd);
  }
}

int zp_shard_write(const char* path, const uint16_t* toks, size_t n, char* err, size_t errlen) {
  if (!path || (!toks && n)) {
    seterr(err, errlen, "zp_shard_write: NULL path or tokens");
    return ZP_E_INVALID;
  }
  if ((unsigned long long)n > (unsigned long long)ZP_SHARD_MAX_TOKENS) {
    seterr(err, errlen, "%s: %zu tokens do not fit one shard (at most %lld: header[2] is int32)",
           path, n, ZP_SHARD_MAX_TOKENS);
    return ZP_E_INVALID;
  }
  size_t plen = strlen(path);
  char* tmp = (char*)malloc(plen + 32);
  if (!tmp) {
    seterr(err, errlen, "%s: out of memory", path);
    return ZP_E_NOMEM;
  }
  snprintf(tmp, plen + 32, "%s.tmp.%ld", path, (long)getpid());
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    seterr(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
    free(tmp);
    return ZP_E_IO;
  }
  int32_t header[ZP_SHARD_HEADER_INTS];
  memset(header, 0, sizeof header);
  header[0] = ZP_SHARD_MAGIC;
  header[1] = ZP_SHARD_VERSION;
  header[2] = (int32_t)n;
  const char* what = "write";
  if (write_all(fd, header, sizeof header) != 0 || (n && write_all(fd, toks, n * sizeof(uint16_t)) != 0))
    goto fail;
  what = "fsync";
  if (fsync(fd) != 0) goto fail;
  what = "close";
  if (close(fd) != 0) {
    fd = -1;
    goto fail;
  }
  fd = -1;
  if (rename(tmp, path) != 0) {
    seterr(err, errlen, "%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
    unlink(tmp);
    free(tmp);
    return ZP_E_IO;
  }
  fsync_parent_dir(path);
  free(tmp);
  return ZP_OK;
fail:
  seterr(err, errlen, "%s: %s failed: %s", tmp, what, strerror(errno));
  if (fd >= 0) close(fd);
  unlink(tmp);
  free(tmp);
  return ZP_E_IO;
}

/* ---------------------------------------------------------------- reading ---- */

typedef struct shard {
  char* path;
  void* map; /* whole file, read-only */
  size_t map_bytes;
  const uint16_t* toks;
  uint64_t ntok;
  uint64_t nsamples;
  uint64_t first_sample; /* global index of this shard's sample 0 */
} shard;

/* Opens, maps and validates one shard. On success s->map/toks/ntok are set. */
static int shard_open(shard* s, const char* path, zp_shard_info* info, char* err, size_t errlen) {
  if (info) {
    memset(info, 0, sizeof *info);
    info->max_token = -1;
  }
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    seterr(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    return ZP_E_IO;
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    seterr(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
    close(fd);
    return ZP_E_IO;
  }
  if (!S_ISREG(st.st_mode)) {
    seterr(err, errlen, "%s: not a regular file (llm.c token shard expected)", path);
    close(fd);
    return ZP_E_INVALID;
  }
  uint64_t bytes = (uint64_t)st.st_size;
  if (info) info->file_bytes = bytes;
  if (bytes < ZP_SHARD_HEADER_BYTES) {
    seterr(err, errlen, "%s: %llu bytes, too short for the %d-byte header of an llm.c token shard",
           path, (unsigned long long)bytes, ZP_SHARD_HEADER_BYTES);
    close(fd);
    return ZP_E_CORRUPT;
  }
  void* map = mmap(NULL, (size_t)bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  int mmap_errno = errno;
  close(fd);
  if (map == MAP_FAILED) {
    seterr(err, errlen, "%s: mmap of %llu bytes failed: %s", path, (unsigned long long)bytes,
           strerror(mmap_errno));
    return ZP_E_IO;
  }
  int32_t h[3];
  memcpy(h, map, sizeof h);
  uint64_t payload = bytes - ZP_SHARD_HEADER_BYTES;
  if (info) {
    info->magic = h[0];
    info->version = h[1];
    info->header_tokens = h[2];
    info->file_tokens = (int64_t)(payload / 2);
  }
  int rc = ZP_E_CORRUPT;
  if (h[0] != ZP_SHARD_MAGIC) {
    seterr(err, errlen, "%s: bad magic %d (expected %d: llm.c token shard)", path, h[0], ZP_SHARD_MAGIC);
    goto bad;
  }
  if (h[1] != ZP_SHARD_VERSION) {
    seterr(err, errlen, "%s: version %d unsupported (this reader knows version %d)", path, h[1],
           ZP_SHARD_VERSION);
    goto bad;
  }
  if (h[2] < 0 || (uint64_t)h[2] * 2 != payload) {
    if (payload % 2)
      seterr(err, errlen, "%s: header says %d tokens but file holds %llu (plus 1 stray byte)", path,
             h[2], (unsigned long long)(payload / 2));
    else
      seterr(err, errlen, "%s: header says %d tokens but file holds %llu", path, h[2],
             (unsigned long long)(payload / 2));
    goto bad;
  }
  s->map = map;
  s->map_bytes = (size_t)bytes;
  s->toks = (const uint16_t*)((const char*)map + ZP_SHARD_HEADER_BYTES);
  s->ntok = (uint64_t)h[2];
  return ZP_OK;
bad:
  munmap(map, (size_t)bytes);
  return rc;
}

int zp_shard_stat(const char* path, zp_shard_info* info, char* err, size_t errlen) {
  zp_shard_info dummy;
  if (!info) info = &dummy;
  shard s;
  memset(&s, 0, sizeof s);
  int rc = shard_open(&s, path, info, err, errlen);
  if (rc != ZP_OK) return rc;
  int32_t mx = -1;
  for (uint64_t i = 0; i < s.ntok; i++)
    if ((int32_t)s.toks[i] > mx) mx = s.toks[i];
  info->max_token = mx;
  munmap(s.map, s.map_bytes);
  return ZP_OK;
}

/* ---------------------------------------------------------------- dataset ---- */

struct zp_dataset {
  shard* shards;
  int nshards;
  int T;
  int vocab;
  uint64_t seed;
  int shuffle;
  uint64_t nsamples, ntokens;
  /* permutation cache for one epoch (shuffle only) */
  uint64_t perm_epoch;
  int perm_valid;
  uint32_t* perm32; /* used when N <= 2^32 */
  uint64_t* perm64; /* otherwise */
};

static int cmp_str(const void* a, const void* b) {
  return strcmp(*(const char* const*)a, *(const char* const*)b);
}

void zp_dataset_close(zp_dataset* d) {
  if (!d) return;
  for (int i = 0; i < d->nshards; i++) {
    if (d->shards[i].map) munmap(d->shards[i].map, d->shards[i].map_bytes);
    free(d->shards[i].path);
  }
  free(d->shards);
  free(d->perm32);
  free(d->perm64);
  free(d);
}

zp_dataset* zp_dataset_open(const char* pattern, int seq_len, int vocab_size, uint64_t seed,
                            int shuffle, char* err, size_t errlen) {
  if (!pattern || !*pattern) {
    seterr(err, errlen, "data: empty file pattern");
    return NULL;
  }
  if (seq_len < 1) {
    seterr(err, errlen, "%s: seq_len %d must be >= 1", pattern, seq_len);
    return NULL;
  }
  if (vocab_size < 1 || vocab_size > 65536) {
    seterr(err, errlen, "%s: vocab size %d out of range 1..65536 (uint16 tokens)", pattern, vocab_size);
    return NULL;
  }
  glob_t g;
  memset(&g, 0, sizeof g);
  int grc = glob(pattern, GLOB_NOSORT, NULL, &g);
  if (grc == GLOB_NOMATCH || (grc == 0 && g.gl_pathc == 0)) {
    seterr(err, errlen, "no file matches \"%s\"", pattern);
    globfree(&g);
    return NULL;
  }
  if (grc != 0) {
    seterr(err, errlen, "\"%s\": glob failed (%s)", pattern,
           grc == GLOB_NOSPACE ? "out of memory" : "read error");
    globfree(&g);
    return NULL;
  }
  /* byte-order sort: independent of the locale */
  qsort(g.gl_pathv, g.gl_pathc, sizeof(char*), cmp_str);

  zp_dataset* d = (zp_dataset*)calloc(1, sizeof *d);
  if (!d || g.gl_pathc > 1000000) {
    seterr(err, errlen, "%s: %s", pattern, d ? "more than 1000000 shards" : "out of memory");
    free(d);
    globfree(&g);
    return NULL;
  }
  d->T = seq_len;
  d->vocab = vocab_size;
  d->seed = seed;
  d->shuffle = shuffle ? 1 : 0;
  d->shards = (shard*)calloc(g.gl_pathc, sizeof(shard));
  if (!d->shards) {
    seterr(err, errlen, "%s: out of memory", pattern);
    free(d);
    globfree(&g);
    return NULL;
  }
  for (size_t i = 0; i < g.gl_pathc; i++) {
    shard* s = &d->shards[i];
    s->path = strdup(g.gl_pathv[i]);
    if (!s->path) {
      seterr(err, errlen, "%s: out of memory", g.gl_pathv[i]);
      goto fail;
    }
    d->nshards = (int)i + 1;
    if (shard_open(s, s->path, NULL, err, errlen) != ZP_OK) goto fail;
    s->nsamples = s->ntok > 0 ? (s->ntok - 1) / (uint64_t)seq_len : 0;
    s->first_sample = d->nsamples;
    d->nsamples += s->nsamples;
    d->ntokens += s->ntok;
  }
  if (d->nsamples == 0) {
    seterr(err, errlen,
           "\"%s\": the data holds no sample: %llu tokens in %d shard(s); seq_len %d needs at least "
           "%d tokens in one shard",
           pattern, (unsigned long long)d->ntokens, d->nshards, seq_len, seq_len + 1);
    goto fail;
  }
  globfree(&g);
  return d;
fail:
  globfree(&g);
  zp_dataset_close(d);
  return NULL;
}

uint64_t zp_dataset_num_samples(const zp_dataset* d) { return d ? d->nsamples : 0; }
uint64_t zp_dataset_num_tokens(const zp_dataset* d) { return d ? d->ntokens : 0; }
int zp_dataset_num_shards(const zp_dataset* d) { return d ? d->nshards : 0; }
const char* zp_dataset_shard_path(const zp_dataset* d, int i) {
  return (d && i >= 0 && i < d->nshards) ? d->shards[i].path : NULL;
}

/* Builds the permutation of epoch e: Fisher-Yates, j = zp_rng_below(seed, e, i, i+1). */
static int build_perm(zp_dataset* d, uint64_t epoch) {
  uint64_t n = d->nsamples;
  if (n <= 0xFFFFFFFFull) {
    if (!d->perm32) {
      d->perm32 = (uint32_t*)malloc((size_t)n * sizeof(uint32_t));
      if (!d->perm32) return -1;
    }
    uint32_t* p = d->perm32;
    for (uint64_t i = 0; i < n; i++) p[i] = (uint32_t)i;
    for (uint64_t i = n - 1; i > 0; i--) {
      uint64_t j = zp_rng_below(d->seed, epoch, i, i + 1);
      uint32_t t = p[i];
      p[i] = p[j];
      p[j] = t;
    }
  } else {
    if (!d->perm64) {
      if (n > SIZE_MAX / sizeof(uint64_t)) return -1;
      d->perm64 = (uint64_t*)malloc((size_t)n * sizeof(uint64_t));
      if (!d->perm64) return -1;
    }
    uint64_t* p = d->perm64;
    for (uint64_t i = 0; i < n; i++) p[i] = i;
    for (uint64_t i = n - 1; i > 0; i--) {
      uint64_t j = zp_rng_below(d->seed, epoch, i, i + 1);
      uint64_t t = p[i];
      p[i] = p[j];
      p[j] = t;
    }
  }
  d->perm_epoch = epoch;
  d->perm_valid = 1;
  return 0;
}

static int map_pos(zp_dataset* d, uint64_t pos, uint64_t* sample) {
  uint64_t epoch = pos / d->nsamples, idx = pos % d->nsamples;
  if (!d->shuffle) {
    *sample = idx;
    return 0;
  }
  if (!d->perm_valid || d->perm_epoch != epoch) {
    d->perm_valid = 0;
    if (build_perm(d, epoch) != 0) return -1;
  }
  *sample = d->perm32 ? d->perm32[idx] : d->perm64[idx];
  return 0;
}

uint64_t zp_dataset_sample_index(zp_dataset* d, uint64_t pos) {
  uint64_t s;
  if (!d || map_pos(d, pos, &s) != 0) return UINT64_MAX;
  return s;
}

int zp_dataset_get(zp_dataset* d, uint64_t pos, int32_t* inputs, int32_t* targets, char* err,
                   size_t errlen) {
  if (!d || !inputs || !targets) {
    seterr(err, errlen, "zp_dataset_get: NULL argument");
    return ZP_E_INVALID;
  }
  uint64_t sample;
  if (map_pos(d, pos, &sample) != 0) {
    seterr(err, errlen, "data: out of memory for the permutation of %llu samples",
           (unsigned long long)d->nsamples);
    return ZP_E_NOMEM;
  }
  /* binary search: last shard with first_sample <= sample (shards with 0 samples are skipped
     naturally because the next shard has the same first_sample) */
  int lo = 0, hi = d->nshards - 1;
  while (lo < hi) {
    int mid = lo + (hi - lo + 1) / 2;
    if (d->shards[mid].first_sample <= sample) lo = mid;
    else hi = mid - 1;
  }
  while (lo < d->nshards && d->shards[lo].nsamples == 0) lo++; /* cannot run past: sample < N */
  const shard* s = &d->shards[lo];
  uint64_t off = (sample - s->first_sample) * (uint64_t)d->T;
  const uint16_t* t = s->toks + off;
  const int T = d->T;
  for (int i = 0; i <= T; i++) {
    if (t[i] >= d->vocab) {
      seterr(err, errlen, "%s: token %u at index %llu >= vocab size %d", s->path, (unsigned)t[i],
             (unsigned long long)(off + (uint64_t)i), d->vocab);
      return ZP_E_CORRUPT;
    }
  }
  for (int i = 0; i < T; i++) {
    inputs[i] = t[i];
    targets[i] = t[i + 1];
  }
  return ZP_OK;
}
