/* cmd_data.c: `zp data prepare` (text -> llm.c token shards + tokenizer.json) and `zp data info`.
 * Invariants: prepare is deterministic: inputs are read in command-line order (directories:
 * their regular files sorted by byte order, skipping *.dat, dotfiles and symlinks), document k
 * (global index, 0-based) goes to val iff zp_rng_uniform(SPLIT_SEED, 0, k) < val_fraction, and
 * each document is followed by the tokenizer's EOT. Shards are filled to --shard-tokens in
 * order (a document may straddle two shards) and written atomically; stale shards of an earlier
 * run with higher numbers are removed so DIR/train_*.bin is exactly this run's output.
 * Exit status: 0 ok, 1 runtime error (message names the file), 2 usage error. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cmd.h"
#include "data.h"
#include "rng.h"
#include "tokenizer.h"

#define SPLIT_SEED 0x7a7064617461ULL /* "zpdata" */
#define DEFAULT_SHARD_TOKENS 100000000LL

static void usage(FILE* f) {
  fprintf(f,
          "usage: zp data prepare --out DIR [--val-fraction 0.05] [--bpe ENCODER_JSON VOCAB_BPE]\n"
          "                       [--shard-tokens N (default 100M)] [--split-on-percent] INPUT...\n"
          "       zp data info FILE...\n"
          "prepare: INPUTs are text files or directories (their regular files, sorted; *.dat, dotfiles\n"
          "  and symlinks skipped). Each file is one document, or with --split-on-percent each part\n"
          "  between lines holding only \"%%\" (fortune files). Documents are encoded (byte-level, or\n"
          "  GPT-2 BPE with --bpe), each followed by EOT, split into train/val by a hash of their\n"
          "  index, and written as DIR/train_NNN.bin, DIR/val_NNN.bin plus DIR/tokenizer.json.\n"
          "info: header facts and token counts of llm.c token shards.\n");
}

/* ------------------------------------------------------------------ helpers ---- */

static int parse_count(const char* s, long long* out) {
  char* end;
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || errno) return -1;
  double mul = 1;
  if (*end == 'k' || *end == 'K') mul = 1e3, end++;
  else if (*end == 'm' || *end == 'M') mul = 1e6, end++;
  else if (*end == 'g' || *end == 'G') mul = 1e9, end++;
  if (*end) return -1;
  v *= mul;
  if (v < 1 || v > 9e18 || v != (double)(long long)v) return -1;
  *out = (long long)v;
  return 0;
}

static int mkdir_p(const char* dir, char* err, size_t errlen) {
  char* p = strdup(dir);
  if (!p) {
    snprintf(err, errlen, "%s: out of memory", dir);
    return -1;
  }
  for (char* s = p + 1;; s++) {
    if (*s == '/' || *s == 0) {
      char c = *s;
      *s = 0;
      if (mkdir(p, 0755) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "%s: cannot create directory: %s", p, strerror(errno));
        free(p);
        return -1;
      }
      *s = c;
      if (!c) break;
    }
  }
  free(p);
  struct stat st;
  if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
    snprintf(err, errlen, "%s: not a directory", dir);
    return -1;
  }
  return 0;
}

typedef struct strvec {
  char** v;
  size_t n, cap;
} strvec;

static int sv_push(strvec* sv, const char* s) {
  if (sv->n == sv->cap) {
    size_t nc = sv->cap ? sv->cap * 2 : 16;
    char** nv = (char**)realloc(sv->v, nc * sizeof(char*));
    if (!nv) return -1;
    sv->v = nv;
    sv->cap = nc;
  }
  if (!(sv->v[sv->n] = strdup(s))) return -1;
  sv->n++;
  return 0;
}
static void sv_free(strvec* sv) {
  for (size_t i = 0; i < sv->n; i++) free(sv->v[i]);
  free(sv->v);
  memset(sv, 0, sizeof *sv);
}
static int cmp_str(const void* a, const void* b) {
  return strcmp(*(const char* const*)a, *(const char* const*)b);
}
static int ends_with(const char* s, const char* suf) {
  size_t a = strlen(s), b = strlen(suf);
  return a >= b && strcmp(s + a - b, suf) == 0;
}

/* expands INPUTs into the ordered list of files */
static int collect_inputs(char** inputs, int n, strvec* files, char* err, size_t errlen) {
  for (int i = 0; i < n; i++) {
    struct stat st;
    if (stat(inputs[i], &st) != 0) {
      snprintf(err, errlen, "%s: cannot open: %s", inputs[i], strerror(errno));
      return -1;
    }
    if (S_ISREG(st.st_mode)) {
      if (sv_push(files, inputs[i]) != 0) goto oom;
      continue;
    }
    if (!S_ISDIR(st.st_mode)) {
      snprintf(err, errlen, "%s: not a regular file or directory", inputs[i]);
      return -1;
    }
    DIR* d = opendir(inputs[i]);
    if (!d) {
      snprintf(err, errlen, "%s: cannot list directory: %s", inputs[i], strerror(errno));
      return -1;
    }
    strvec names = {0};
    struct dirent* de;
    while ((de = readdir(d))) {
      if (de->d_name[0] == '.' || ends_with(de->d_name, ".dat")) continue;
      char path[4096];
      if ((size_t)snprintf(path, sizeof path, "%s/%s", inputs[i], de->d_name) >= sizeof path) continue;
      struct stat ls;
      if (lstat(path, &ls) != 0 || !S_ISREG(ls.st_mode)) continue; /* symlinks, subdirs, devices */
      if (sv_push(&names, path) != 0) {
        closedir(d);
        sv_free(&names);
        goto oom;
      }
    }
    closedir(d);
    qsort(names.v, names.n, sizeof(char*), cmp_str);
    for (size_t k = 0; k < names.n; k++)
      if (sv_push(files, names.v[k]) != 0) {
        sv_free(&names);
        goto oom;
      }
    if (names.n == 0) fprintf(stderr, "zp data prepare: warning: %s holds no input file\n", inputs[i]);
    sv_free(&names);
  }
  return 0;
oom:
  snprintf(err, errlen, "zp data prepare: out of memory listing inputs");
  return -1;
}

/* ------------------------------------------------------------------ prepare ---- */

typedef struct split {
  const char* name; /* "train" / "val" */
  uint16_t* buf;
  size_t n, cap;
  int shards;
  long long docs;
} split;

static int flush_shard(split* s, const char* dir, size_t count, char* err, size_t errlen) {
  char path[4096];
  if ((size_t)snprintf(path, sizeof path, "%s/%s_%03d.bin", dir, s->name, s->shards) >= sizeof path) {
    snprintf(err, errlen, "%s: output path too long", dir);
    return -1;
  }
  if (zp_shard_write(path, s->buf, count, err, errlen) != 0) return -1;
  printf("  wrote %s (%zu tokens)\n", path, count);
  s->shards++;
  memmove(s->buf, s->buf + count, (s->n - count) * sizeof(uint16_t));
  s->n -= count;
  return 0;
}

/* removes DIR/{train,val}_NNN.bin with NNN >= the number this run wrote */
static void remove_stale(const char* dir, const split* sp, int nsplit) {
  DIR* d = opendir(dir);
  if (!d) return;
  struct dirent* de;
  while ((de = readdir(d))) {
    for (int k = 0; k < nsplit; k++) {
      size_t nl = strlen(sp[k].name);
      const char* nm = de->d_name;
      if (strncmp(nm, sp[k].name, nl) != 0 || nm[nl] != '_') continue;
      const char* q = nm + nl + 1;
      char* end;
      if (*q < '0' || *q > '9') continue;
      long idx = strtol(q, &end, 10);
      if (strcmp(end, ".bin") != 0 || idx < sp[k].shards) continue;
      char path[4096];
      if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, nm) >= sizeof path) continue;
      if (unlink(path) == 0) printf("  removed stale %s from an earlier run\n", path);
    }
  }
  closedir(d);
}

static int is_blank(const char* s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r' && s[i] != '\f' && s[i] != '\v') return 0;
  return 1;
}

typedef struct prep {
  const char* out;
  double val_fraction;
  long long shard_tokens;
  zp_tokenizer* tok;
  split sp[2]; /* 0 train, 1 val */
  long long docs, skipped;
  char* err;
  size_t errlen;
} prep;

static int add_document(prep* P, const char* text, size_t len) {
  if (is_blank(text, len)) {
    P->skipped++;
    return 0;
  }
  long long k = P->docs++;
  split* s = &P->sp[zp_rng_uniform(SPLIT_SEED, 0, (uint64_t)k) < P->val_fraction ? 1 : 0];
  if (zp_tokenizer_encode(P->tok, text, len, &s->buf, &s->n, &s->cap) < 0) {
    snprintf(P->err, P->errlen, "out of memory encoding document %lld", k);
    return -1;
  }
  uint16_t eot = (uint16_t)zp_tokenizer_eot(P->tok);
  if (s->n == s->cap) {
    size_t nc = s->cap ? s->cap * 2 : 256;
    uint16_t* nb = (uint16_t*)realloc(s->buf, nc * sizeof(uint16_t));
    if (!nb) {
      snprintf(P->err, P->errlen, "out of memory encoding document %lld", k);
      return -1;
    }
    s->buf = nb;
    s->cap = nc;
  }
  s->buf[s->n++] = eot;
  s->docs++;
  while ((long long)s->n >= P->shard_tokens)
    if (flush_shard(s, P->out, (size_t)P->shard_tokens, P->err, P->errlen) != 0) return -1;
  return 0;
}

static int prepare_file(prep* P, const char* path, int split_on_percent) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    snprintf(P->err, P->errlen, "%s: cannot open: %s", path, strerror(errno));
    return -1;
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    snprintf(P->err, P->errlen, "%s: cannot stat: %s", path, strerror(errno));
    close(fd);
    return -1;
  }
  size_t n = (size_t)st.st_size;
  if (n == 0) {
    close(fd);
    P->skipped++;
    return 0;
  }
  const char* text = (const char*)mmap(NULL, n, PROT_READ, MAP_PRIVATE, fd, 0);
  int merr = errno;
  close(fd);
  if (text == MAP_FAILED) {
    snprintf(P->err, P->errlen, "%s: mmap failed: %s", path, strerror(merr));
    return -1;
  }
  int rc = 0;
  if (!split_on_percent) {
    rc = add_document(P, text, n);
  } else {
    size_t doc = 0;
    for (size_t p = 0; p < n && rc == 0;) {
      const char* nl = (const char*)memchr(text + p, '\n', n - p);
      size_t q = nl ? (size_t)(nl - text) : n; /* line is [p, q) */
      size_t e = q;
      if (e > p && text[e - 1] == '\r') e--;
      if (e - p == 1 && text[p] == '%') {
        rc = add_document(P, text + doc, p - doc);
        doc = nl ? q + 1 : n;
      }
      p = nl ? q + 1 : n;
    }
    if (rc == 0 && doc < n) rc = add_document(P, text + doc, n - doc);
  }
  munmap((void*)text, n);
  if (rc != 0 && strncmp(P->err, path, strlen(path)) != 0) {
    /* prefix the input file for context */
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s", P->err);
    snprintf(P->err, P->errlen, "%s: %s", path, tmp);
  }
  return rc;
}

static int cmd_prepare(int argc, char** argv) {
  const char* out = NULL;
  const char *enc = NULL, *bpe = NULL;
  double valf = 0.05;
  long long shard_tokens = DEFAULT_SHARD_TOKENS;
  int split_pct = 0;
  char** inputs = (char**)calloc((size_t)argc + 1, sizeof(char*));
  int ninputs = 0;
  if (!inputs) {
    fprintf(stderr, "zp data prepare: out of memory\n");
    return 1;
  }
  for (int i = 1; i < argc; i++) {
    const char* a = argv[i];
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      usage(stdout);
      free(inputs);
      return 0;
    } else if (strcmp(a, "--out") == 0 || strcmp(a, "-o") == 0) {
      if (i + 1 >= argc) goto missing;
      out = argv[++i];
    } else if (strcmp(a, "--val-fraction") == 0) {
      if (i + 1 >= argc) goto missing;
      char* end;
      valf = strtod(argv[++i], &end);
      if (end == argv[i] || *end || !(valf >= 0 && valf < 1)) {
        fprintf(stderr, "zp data prepare: --val-fraction \"%s\": expected a number in [0, 1)\n", argv[i]);
        free(inputs);
        return 2;
      }
    } else if (strcmp(a, "--bpe") == 0) {
      if (i + 2 >= argc) {
        fprintf(stderr, "zp data prepare: --bpe needs two files: ENCODER_JSON VOCAB_BPE\n");
        free(inputs);
        return 2;
      }
      enc = argv[++i];
      bpe = argv[++i];
    } else if (strcmp(a, "--shard-tokens") == 0) {
      if (i + 1 >= argc) goto missing;
      if (parse_count(argv[++i], &shard_tokens) != 0 || shard_tokens > ZP_SHARD_MAX_TOKENS) {
        fprintf(stderr, "zp data prepare: --shard-tokens \"%s\": expected a count in 1..%lld (e.g. 100M)\n",
                argv[i], ZP_SHARD_MAX_TOKENS);
        free(inputs);
        return 2;
      }
    } else if (strcmp(a, "--split-on-percent") == 0) {
      split_pct = 1;
    } else if (strcmp(a, "--") == 0) {
      while (++i < argc) inputs[ninputs++] = argv[i];
    } else if (a[0] == '-' && a[1]) {
      fprintf(stderr, "zp data prepare: unknown option \"%s\" (see zp data --help)\n", a);
      free(inputs);
      return 2;
    } else {
      inputs[ninputs++] = argv[i];
    }
    continue;
  missing:
    fprintf(stderr, "zp data prepare: %s needs a value\n", a);
    free(inputs);
    return 2;
  }
  if (!out) {
    fprintf(stderr, "zp data prepare: --out DIR is required (see zp data --help)\n");
    free(inputs);
    return 2;
  }
  if (ninputs == 0) {
    fprintf(stderr, "zp data prepare: no INPUT given: text files or directories (see zp data --help)\n");
    free(inputs);
    return 2;
  }

  char err[1024] = {0};
  int rc = 1;
  strvec files = {0};
  prep P;
  memset(&P, 0, sizeof P);
  P.out = out;
  P.val_fraction = valf;
  P.shard_tokens = shard_tokens;
  P.err = err;
  P.errlen = sizeof err;
  P.sp[0].name = "train";
  P.sp[1].name = "val";
  if (collect_inputs(inputs, ninputs, &files, err, sizeof err) != 0) goto done;
  if (files.n == 0) {
    snprintf(err, sizeof err, "no input file found in the given INPUTs");
    goto done;
  }
  P.tok = enc ? zp_tokenizer_gpt2_load(enc, bpe, err, sizeof err) : zp_tokenizer_bytes();
  if (!P.tok) {
    if (!err[0]) snprintf(err, sizeof err, "out of memory creating the tokenizer");
    goto done;
  }
  if (mkdir_p(out, err, sizeof err) != 0) goto done;
  printf("zp data prepare: %zu input file(s) -> %s (tokenizer %s, val fraction %g, %lld tokens per shard%s)\n",
         files.n, out, zp_tokenizer_kind(P.tok), valf, shard_tokens,
         split_pct ? ", documents split on %" : ", one document per file");
  for (size_t i = 0; i < files.n; i++)
    if (prepare_file(&P, files.v[i], split_pct) != 0) goto done;
  for (int k = 0; k < 2; k++)
    if (P.sp[k].n > 0 && flush_shard(&P.sp[k], out, P.sp[k].n, err, sizeof err) != 0) goto done;
  remove_stale(out, P.sp, 2);
  if (zp_tokenizer_save_dir(P.tok, out, err, sizeof err) != 0) goto done;
  printf("  documents: %lld (train %lld, val %lld; %lld empty skipped)\n", P.docs, P.sp[0].docs, P.sp[1].docs,
         P.skipped);
  {
    /* token totals from the shard headers just written */
    long long tot[2] = {0, 0};
    for (int k = 0; k < 2; k++)
      for (int s = 0; s < P.sp[k].shards; s++) {
        char path[4096];
        zp_shard_info info;
        snprintf(path, sizeof path, "%s/%s_%03d.bin", out, P.sp[k].name, s);
        if (zp_shard_stat(path, &info, err, sizeof err) != 0) goto done;
        tot[k] += info.header_tokens;
      }
    printf("  tokens: train %lld in %d shard(s), val %lld in %d shard(s)\n", tot[0], P.sp[0].shards, tot[1],
           P.sp[1].shards);
  }
  printf("  tokenizer: %s, vocab %d, eot %d -> %s/tokenizer.json\n", zp_tokenizer_kind(P.tok),
         zp_tokenizer_vocab_size(P.tok), zp_tokenizer_eot(P.tok), out);
  if (valf > 0 && P.sp[1].docs == 0)
    fprintf(stderr, "zp data prepare: warning: no document went to val (%lld documents, fraction %g)\n", P.docs,
            valf);
  if (P.sp[0].docs == 0) fprintf(stderr, "zp data prepare: warning: no document went to train\n");
  rc = 0;
done:
  if (rc != 0) fprintf(stderr, "zp data prepare: %s\n", err);
  for (int k = 0; k < 2; k++) free(P.sp[k].buf);
  zp_tokenizer_free(P.tok);
  sv_free(&files);
  free(inputs);
  return rc;
}

/* ------------------------------------------------------------------ info ---- */

static int cmd_info(int argc, char** argv) {
  int nfiles = 0, bad = 0;
  long long total = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
      usage(stdout);
      return 0;
    }
    if (argv[i][0] == '-' && argv[i][1]) {
      fprintf(stderr, "zp data info: unknown option \"%s\"\n", argv[i]);
      return 2;
    }
  }
  for (int i = 1; i < argc; i++) {
    char err[1024] = {0};
    zp_shard_info info;
    nfiles++;
    int rc = zp_shard_stat(argv[i], &info, err, sizeof err);
    if (rc != 0) {
      bad++;
      printf("%s: INVALID: %s\n", argv[i], err);
      continue;
    }
    printf("%s: llm.c token shard, magic %d, version %d, %lld tokens, %llu bytes, max token %d\n", argv[i],
           info.magic, info.version, (long long)info.header_tokens, (unsigned long long)info.file_bytes,
           info.max_token);
    total += info.header_tokens;
  }
  if (nfiles == 0) {
    fprintf(stderr, "zp data info: no FILE given (usage: zp data info FILE...)\n");
    return 2;
  }
  if (nfiles > 1) printf("total: %lld tokens in %d valid shard(s)%s\n", total, nfiles - bad, bad ? ", some invalid" : "");
  return bad ? 1 : 0;
}

/* ------------------------------------------------------------------ entry ---- */

int zp_cmd_data(int argc, char** argv) {
  if (argc >= 1 && argv[0] && strcmp(argv[0], "data") == 0) {
    argc--;
    argv++;
  }
  if (argc < 1 || !argv[0]) {
    fprintf(stderr, "zp data: missing subcommand (prepare or info)\n");
    usage(stderr);
    return 2;
  }
  if (strcmp(argv[0], "prepare") == 0) return cmd_prepare(argc, argv);
  if (strcmp(argv[0], "info") == 0) return cmd_info(argc, argv);
  if (strcmp(argv[0], "-h") == 0 || strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "help") == 0) {
    usage(stdout);
    return 0;
  }
  fprintf(stderr, "zp data: unknown subcommand \"%s\" (expected prepare or info; see zp data --help)\n", argv[0]);
  return 2;
}
