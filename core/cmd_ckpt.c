/* cmd_ckpt.c: the checkpoint command line: `zp ckpt info|compare|logits`, `zp export`,
 * `zp import` (see docs/checkpoints.md).
 *
 * Invariants: every subcommand validates its arguments and returns 2 on usage errors, 1 on
 * run-time errors (after printing "zp: <what and why>"), 0 on success; nothing exits below
 * main. Weights travel as full fp32 group buffers in our layout (zp_ckpt_read_full_params /
 * zp_st_import_gpt2); the Hugging Face mapping lives in safetensors.c only. Runs these
 * commands open are single-rank, replicated, fp32 (CPU unless --set train.device=...). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bf16.h"
#include "ckpt.h"
#include "cmd.h"
#include "config.h"
#include "runtime.h"
#include "safetensors.h"

#define MAX_SETS 64

static int is_dir(const char* p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int has_meta(const char* dir) {
  char p[2100];
  snprintf(p, sizeof p, "%s/meta.json", dir);
  struct stat st;
  return stat(p, &st) == 0;
}

/* A checkpoint directory, or the newest complete one in a run directory. */
static int resolve_ckpt(const char* arg, char* out, size_t n) {
  if (has_meta(arg) || !is_dir(arg)) {
    snprintf(out, n, "%s", arg);
    return 0;
  }
  if (zp_ckpt_find_latest(arg, out, n) == 0) return 0;
  fprintf(stderr, "zp: %s: neither a checkpoint (no meta.json) nor a run directory with a complete checkpoint\n", arg);
  return 1;
}

/* A config for a single-rank, replicated, fp32 run of a checkpoint's model shape. */
static int shape_config(zp_config* c, const zp_gpt2_shape* s, const char* const* sets, int n_sets, char* err, size_t errlen) {
  if (zp_config_defaults(c)) {
    snprintf(err, errlen, "cannot build the default configuration");
    return ZP_E_INVALID;
  }
  int pad = 0;
  for (int p = 4096; p >= 1 && !pad; p--)
    if ((s->V + p - 1) / p * p == s->Vp) pad = p;
  if (!pad) {
    snprintf(err, errlen, "vocab_size %d padded to %d: no model.vocab_pad in 1..4096 gives that", s->V, s->Vp);
    zp_config_free(c);
    return ZP_E_INVALID;
  }
  char a[10][96];
  snprintf(a[0], sizeof a[0], "model.n_layer=%d", s->L);
  snprintf(a[1], sizeof a[1], "model.n_head=%d", s->NH);
  snprintf(a[2], sizeof a[2], "model.d_model=%d", s->C);
  snprintf(a[3], sizeof a[3], "model.seq_len=%d", s->maxT);
  snprintf(a[4], sizeof a[4], "model.vocab_size=%d", s->V);
  snprintf(a[5], sizeof a[5], "model.vocab_pad=%d", pad);
  snprintf(a[6], sizeof a[6], "train.precision=\"fp32\"");
  snprintf(a[7], sizeof a[7], "zero.plugin=\"none\"");
  snprintf(a[8], sizeof a[8], "train.micro_batch=1");
  snprintf(a[9], sizeof a[9], "train.threads=0");
  for (int i = 0; i < 10; i++)
    if (zp_config_set(c, a[i], err, errlen)) {
      zp_config_free(c);
      return ZP_E_INVALID;
    }
  for (int i = 0; i < n_sets; i++)
    if (zp_config_set(c, sets[i], err, errlen)) {
      zp_config_free(c);
      return ZP_E_INVALID;
    }
  return zp_config_check(c, err, errlen);
}

/* ---------------- zp ckpt compare ---------------- */

static int read_ckpt_state(const char* dir, int which, zp_model_layout* L, float*** gp, char* err, size_t errlen) {
  zp_gpt2_shape s;
  *gp = NULL;
  int rc = zp_ckpt_read_shape(dir, &s, NULL, err, errlen);
  if (!rc) rc = zp_model_layout_init(L, &s, err, errlen);
  if (rc) return rc;
  *gp = calloc((size_t)L->n_groups, sizeof(float*));
  if (!*gp) {
    zp_model_layout_free(L);
    snprintf(err, errlen, "out of host memory");
    return ZP_E_NOMEM;
  }
  rc = zp_ckpt_read_full_state(dir, L, which, *gp, err, errlen);
  if (rc) {
    free(*gp);
    *gp = NULL;
    zp_model_layout_free(L);
  }
  return rc;
}

static int read_ckpt_params(const char* dir, zp_model_layout* L, float*** gp, char* err, size_t errlen) {
  return read_ckpt_state(dir, 0, L, gp, err, errlen);
}

static void free_params(zp_model_layout* L, float** gp) {
  if (gp)
    for (int g = 0; g < L->n_groups; g++) free(gp[g]);
  free(gp);
  zp_model_layout_free(L);
}

/* one of weights / m / v of two checkpoints: prints a line, returns 0 if within tol (0 =
 * bitwise), 1 if not, -1 on error */
static int compare_one(const char* da, const char* db, int which, double tol) {
  static const char* what[] = {"weights", "Adam m", "Adam v"};
  char err[2048];
  zp_model_layout la, lb;
  float **a = NULL, **b = NULL;
  if (read_ckpt_state(da, which, &la, &a, err, sizeof err)) {
    fprintf(stderr, "zp: %s\n", err);
    return -1;
  }
  if (read_ckpt_state(db, which, &lb, &b, err, sizeof err)) {
    fprintf(stderr, "zp: %s\n", err);
    free_params(&la, a);
    return -1;
  }
  int rc = 0;
  if (memcmp(&la.s, &lb.s, sizeof la.s) != 0) {
    fprintf(stderr, "zp: %s and %s have different model shapes\n", da, db);
    rc = -1;
  } else {
    double maxd = 0, maxv = 0;
    long long ndiff = 0;
    const char* worst = "-";
    for (int t = 0; t < la.n_tensors; t++) {
      const zp_tensor_desc* d = &la.tensors[t];
      for (uint64_t e = 0; e < d->numel; e++) {
        float x = a[d->group][d->offset + e], y = b[d->group][d->offset + e];
        double df = fabs((double)x - (double)y);
        if (memcmp(&x, &y, sizeof x) != 0) ndiff++;
        if (df > maxd || (df != df)) {
          maxd = df;
          worst = d->name;
        }
        if (fabs(x) > maxv) maxv = fabs(x);
      }
    }
    printf("%s%s%llu %s, %lld differ, max |a-b| = %.3g (in %s), max |a| = %.3g\n", which ? what[which] : "", which ? ": " : "",
           (unsigned long long)la.total_params, which ? "values" : "parameters", ndiff, maxd, worst, maxv);
    if (!(maxd <= tol) || (tol == 0 && ndiff)) rc = 1;
  }
  free_params(&la, a);
  free_params(&lb, b);
  return rc;
}

/* zp ckpt compare A B [--tol T] [--state]: max abs difference of the full fp32 weights (0 =
 * bitwise); with --state also of Adam's m and v. A and B may be run directories (newest). */
static int cmd_compare(int argc, char** argv) {
  double tol = 0;
  int state = 0;
  const char* d[2] = {NULL, NULL};
  int nd = 0;
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--tol") && i + 1 < argc) {
      char* end;
      tol = strtod(argv[++i], &end);
      if (*end || !(tol >= 0)) {
        fprintf(stderr, "zp: --tol needs a non-negative number, got '%s'\n", argv[i]);
        return 2;
      }
    } else if (!strcmp(argv[i], "--state")) {
      state = 1;
    } else if (argv[i][0] != '-' && nd < 2) {
      d[nd++] = argv[i];
    } else {
      nd = 3;
      break;
    }
  }
  if (nd != 2) {
    fprintf(stderr, "zp: usage: zp ckpt compare A B [--tol T] [--state]\n");
    return 2;
  }
  char da[2048], db[2048];
  if (resolve_ckpt(d[0], da, sizeof da) || resolve_ckpt(d[1], db, sizeof db)) return 1;
  int rc = compare_one(da, db, 0, tol);
  for (int w = 1; w <= 2 && state && rc >= 0; w++) {
    int r2 = compare_one(da, db, w, tol);
    if (r2) rc = r2;
  }
  return rc ? 1 : 0;
}

/* ---------------- zp ckpt logits ---------------- */

static int parse_tokens(const char* arg, int32_t** out, int* n) {
  char* text = NULL;
  if (arg[0] == '@') {
    FILE* f = fopen(arg + 1, "r");
    if (!f) {
      fprintf(stderr, "zp: %s: cannot open\n", arg + 1);
      return 1;
    }
    size_t cap = 0, len = 0;
    int ch;
    while ((ch = fgetc(f)) != EOF) {
      if (len + 2 > cap) {
        cap = cap ? 2 * cap : 4096;
        char* nt = realloc(text, cap);
        if (!nt) break;
        text = nt;
      }
      text[len++] = (char)ch;
    }
    fclose(f);
    if (!text) text = calloc(1, 1);
    else text[len] = 0;
  } else {
    text = strdup(arg);
  }
  if (!text) return 1;
  int cap = 64;
  *out = malloc((size_t)cap * sizeof(int32_t));
  *n = 0;
  char* p = text;
  for (;;) {
    while (*p == ',' || *p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') p++;
    if (!*p) break;
    char* end;
    long v = strtol(p, &end, 10);
    if (end == p || v < 0 || v > INT32_MAX) {
      fprintf(stderr, "zp: --tokens: not a token id at \"%.20s\"\n", p);
      free(text);
      free(*out);
      *out = NULL;
      return 1;
    }
    if (*n == cap) {
      cap *= 2;
      int32_t* no = realloc(*out, (size_t)cap * sizeof(int32_t));
      if (!no) break;
      *out = no;
    }
    (*out)[(*n)++] = (int32_t)v;
    p = end;
  }
  free(text);
  return 0;
}

/* zp ckpt logits CKPT --tokens LIST|@FILE [--out FILE] [--set k=v]...: the model's logits
 * [T, vocab_size] (fp32, row-major, little-endian) for one sequence, from a single-rank fp32
 * run; prints a summary. Used by the Hugging Face interop check. */
static int cmd_logits(int argc, char** argv) {
  const char *ck = NULL, *toks = NULL, *outp = NULL;
  const char* sets[MAX_SETS];
  int n_sets = 0;
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--tokens") && i + 1 < argc) toks = argv[++i];
    else if (!strcmp(argv[i], "--out") && i + 1 < argc) outp = argv[++i];
    else if (!strcmp(argv[i], "--set") && i + 1 < argc && n_sets < MAX_SETS) sets[n_sets++] = argv[++i];
    else if (argv[i][0] != '-' && !ck) ck = argv[i];
    else {
      fprintf(stderr, "zp: ckpt logits: unexpected argument '%s'\n", argv[i]);
      return 2;
    }
  }
  if (!ck || !toks) {
    fprintf(stderr, "zp: usage: zp ckpt logits CKPT_DIR --tokens 1,2,3|@FILE [--out FILE] [--set key=value]...\n");
    return 2;
  }
  char dir[2048], err[4096];
  if (resolve_ckpt(ck, dir, sizeof dir)) return 1;
  int32_t* tk = NULL;
  int T = 0;
  if (parse_tokens(toks, &tk, &T)) return 2;
  zp_gpt2_shape s;
  int rc = zp_ckpt_read_shape(dir, &s, NULL, err, sizeof err);
  if (!rc && (T < 1 || T > s.maxT)) {
    snprintf(err, sizeof err, "--tokens: %d tokens; the model takes 1 to seq_len = %d", T, s.maxT);
    rc = ZP_E_INVALID;
  }
  for (int i = 0; i < T && !rc; i++)
    if (tk[i] >= s.V) {
      snprintf(err, sizeof err, "--tokens: token %d at position %d is not below vocab_size %d", tk[i], i, s.V);
      rc = ZP_E_INVALID;
    }
  if (rc) {
    fprintf(stderr, "zp: %s\n", err);
    free(tk);
    return 1;
  }
  zp_config c;
  if ((rc = shape_config(&c, &s, sets, n_sets, err, sizeof err))) {
    fprintf(stderr, "zp: %s\n", err);
    free(tk);
    return 1;
  }
  zp_run r;
  zp_run_opts o = {0};
  o.world = 1;
  o.B = 1;
  o.T = T;
  rc = zp_run_open(&r, &c, &o);
  if (rc) snprintf(err, sizeof err, "%s", r.err);
  int64_t step;
  uint64_t dpos;
  if (!rc) rc = zp_ckpt_load(&r, dir, &step, &dpos, err, sizeof err);
  int32_t* tg = malloc((size_t)T * sizeof(int32_t));
  float* lg = malloc((size_t)T * (size_t)s.V * sizeof(float));
  size_t es = zp_dtype_size(r.ct);
  void* row = malloc((size_t)s.Vp * es + 8);
  for (int i = 0; i < T; i++) tg[i] = -1;
  double loss;
  if (!rc && (rc = zp_run_forward(&r, tk, tg, &loss))) snprintf(err, sizeof err, "%s", r.err);
  for (int t = 0; t < T && !rc; t++) {
    if ((rc = r.ops->copy_d2h(r.be, row, (char*)r.acts.logits + (size_t)t * s.Vp * es, (size_t)s.Vp * es))) {
      snprintf(err, sizeof err, "reading logits from the device failed (status %d)", rc);
      break;
    }
    for (int v = 0; v < s.V; v++)
      lg[(size_t)t * s.V + v] = r.ct == ZP_F64 ? (float)((double*)row)[v] : r.ct == ZP_BF16 ? zp_bf16_to_f32(((uint16_t*)row)[v]) : ((float*)row)[v];
  }
  if (!rc) {
    double sum = 0, mx = 0;
    for (size_t i = 0; i < (size_t)T * s.V; i++) {
      sum += lg[i];
      if (fabs(lg[i]) > mx) mx = fabs(lg[i]);
    }
    printf("logits of %s (step %lld): %d tokens x %d, sum %.9g, max |logit| %.6g, [0][0..2] = %.7g %.7g %.7g\n", dir, (long long)step, T,
           s.V, sum, mx, (double)lg[0], (double)lg[1 % s.V], (double)lg[2 % s.V]);
    if (outp) {
      FILE* f = fopen(outp, "wb");
      if (!f || fwrite(lg, sizeof(float), (size_t)T * s.V, f) != (size_t)T * s.V) {
        snprintf(err, sizeof err, "%s: cannot write", outp);
        rc = ZP_E_IO;
      }
      if (f && fclose(f) && !rc) {
        snprintf(err, sizeof err, "%s: cannot write", outp);
        rc = ZP_E_IO;
      }
    }
  }
  if (rc) fprintf(stderr, "zp: %s\n", err);
  free(tg);
  free(lg);
  free(row);
  free(tk);
  zp_run_close(&r);
  zp_config_free(&c);
  return rc ? 1 : 0;
}

/* ---------------- zp ckpt ---------------- */

int zp_cmd_ckpt(int argc, char** argv) {
  const char* usage = "zp: usage: zp ckpt info DIR [-v] | zp ckpt compare A B [--tol T] | zp ckpt logits CKPT --tokens LIST|@FILE [--out FILE]\n";
  if (argc < 1) {
    fputs(usage, stderr);
    return 2;
  }
  if (!strcmp(argv[0], "compare")) return cmd_compare(argc - 1, argv + 1);
  if (!strcmp(argv[0], "logits")) return cmd_logits(argc - 1, argv + 1);
  if (!strcmp(argv[0], "info")) {
    const char* dir = NULL;
    int verbose = 0;
    for (int i = 1; i < argc; i++) {
      if (!strcmp(argv[i], "-v") || !strcmp(argv[i], "--verbose")) verbose = 1;
      else if (!dir && argv[i][0] != '-') dir = argv[i];
      else {
        fputs(usage, stderr);
        return 2;
      }
    }
    if (!dir) {
      fputs(usage, stderr);
      return 2;
    }
    char err[2048];
    int rc = zp_ckpt_info(dir, stdout, verbose, err, sizeof err);
    if (rc) fprintf(stderr, "zp: %s\n", err);
    return rc ? 1 : 0;
  }
  fputs(usage, stderr);
  return 2;
}

/* ---------------- zp export ---------------- */

/* config.json for transformers' GPT2LMHeadModel (GPT-2: tanh GELU = gelu_new, LayerNorm eps
 * 1e-5, no dropout at export, tied embeddings). */
static int write_hf_config(const char* path, const zp_gpt2_shape* s, int bf16) {
  FILE* f = fopen(path, "w");
  if (!f) return -1;
  fprintf(f,
          "{\n  \"architectures\": [\"GPT2LMHeadModel\"],\n  \"model_type\": \"gpt2\",\n  \"n_layer\": %d,\n  \"n_head\": %d,\n"
          "  \"n_embd\": %d,\n  \"n_positions\": %d,\n  \"n_ctx\": %d,\n  \"vocab_size\": %d,\n  \"n_inner\": null,\n"
          "  \"activation_function\": \"gelu_new\",\n  \"layer_norm_epsilon\": 1e-05,\n  \"resid_pdrop\": 0.0,\n  \"embd_pdrop\": 0.0,\n"
          "  \"attn_pdrop\": 0.0,\n  \"scale_attn_weights\": true,\n  \"scale_attn_by_inverse_layer_idx\": false,\n"
          "  \"reorder_and_upcast_attn\": false,\n  \"tie_word_embeddings\": true,\n  \"bos_token_id\": %d,\n  \"eos_token_id\": %d,\n"
          "  \"torch_dtype\": \"%s\"\n}\n",
          s->L, s->NH, s->C, s->maxT, s->maxT, s->V, s->V - 1, s->V - 1, bf16 ? "bfloat16" : "float32");
  return fclose(f);
}

int zp_cmd_export(int argc, char** argv) {
  const char *src = NULL, *out = NULL, *fmt = "safetensors", *dt = "fp32";
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--out") && i + 1 < argc) out = argv[++i];
    else if (!strcmp(argv[i], "--format") && i + 1 < argc) fmt = argv[++i];
    else if (!strcmp(argv[i], "--dtype") && i + 1 < argc) dt = argv[++i];
    else if (argv[i][0] != '-' && !src) src = argv[i];
    else {
      fprintf(stderr, "zp: export: unexpected argument '%s'\n", argv[i]);
      return 2;
    }
  }
  if (!src || !out) {
    fprintf(stderr, "zp: usage: zp export CKPT_DIR|RUN_DIR --out FILE.safetensors|DIR [--format safetensors] [--dtype fp32|bf16]\n");
    return 2;
  }
  if (strcmp(fmt, "safetensors") != 0) {
    fprintf(stderr, "zp: export: --format %s: only safetensors is supported\n", fmt);
    return 2;
  }
  if (strcmp(dt, "fp32") && strcmp(dt, "bf16")) {
    fprintf(stderr, "zp: export: --dtype %s: fp32 or bf16\n", dt);
    return 2;
  }
  int bf16 = !strcmp(dt, "bf16");
  char dir[2048], err[4096], file[2300], cfgp[2300];
  if (resolve_ckpt(src, dir, sizeof dir)) return 1;
  size_t ol = strlen(out);
  int single = ol > 12 && !strcmp(out + ol - 12, ".safetensors");
  if (single) {
    snprintf(file, sizeof file, "%s", out);
  } else {
    if (!is_dir(out) && mkdir(out, 0755) != 0) {
      fprintf(stderr, "zp: %s: cannot create the output directory\n", out);
      return 1;
    }
    snprintf(file, sizeof file, "%s/model.safetensors", out);
    snprintf(cfgp, sizeof cfgp, "%s/config.json", out);
  }
  zp_model_layout L;
  float** gp = NULL;
  int64_t step = 0;
  zp_gpt2_shape s;
  int rc = zp_ckpt_read_shape(dir, &s, &step, err, sizeof err);
  if (!rc) rc = read_ckpt_params(dir, &L, &gp, err, sizeof err);
  if (rc) {
    fprintf(stderr, "zp: %s\n", err);
    return 1;
  }
  char nh[16], st[32];
  snprintf(nh, sizeof nh, "%d", s.NH);
  snprintf(st, sizeof st, "%lld", (long long)step);
  const char* meta[] = {"format", "pt", "zp_source", dir, "zp_step", st, "zp_n_head", nh, "zp_layout", "huggingface-gpt2"};
  rc = zp_st_export_gpt2(&L, gp, file, bf16, meta, 5, err, sizeof err);
  if (!rc && !single && write_hf_config(cfgp, &s, bf16) != 0) {
    snprintf(err, sizeof err, "%s: cannot write", cfgp);
    rc = ZP_E_IO;
  }
  if (rc) fprintf(stderr, "zp: %s\n", err);
  else
    printf("exported %s (step %lld) to %s: %d tensors, %s, vocab %d (padded %d in training), Hugging Face GPT-2 names and Conv1D layout%s\n", dir,
           (long long)step, file, L.n_tensors, bf16 ? "bf16" : "fp32", s.V, s.Vp, single ? "" : " (+ config.json)");
  free_params(&L, gp);
  return rc ? 1 : 0;
}

/* ---------------- zp import ---------------- */

int zp_cmd_import(int argc, char** argv) {
  const char *src = NULL, *cfgp = NULL, *out = NULL;
  const char* sets[MAX_SETS];
  int n_sets = 0;
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--config") && i + 1 < argc) cfgp = argv[++i];
    else if (!strcmp(argv[i], "--out") && i + 1 < argc) out = argv[++i];
    else if (!strcmp(argv[i], "--set") && i + 1 < argc && n_sets < MAX_SETS - 8) sets[n_sets++] = argv[++i];
    else if (argv[i][0] != '-' && !src) src = argv[i];
    else {
      fprintf(stderr, "zp: import: unexpected argument '%s'\n", argv[i]);
      return 2;
    }
  }
  if (!src || !cfgp) {
    fprintf(stderr, "zp: usage: zp import FILE.safetensors --config CONFIG.toml [--out RUN_DIR] [--set key=value]...\n");
    return 2;
  }
  char err[4096];
  zp_config c;
  if (zp_config_load(&c, cfgp, sets, n_sets, err, sizeof err)) {
    fprintf(stderr, "zp: %s\n", err);
    return 1;
  }
  char outdir[1200];
  snprintf(outdir, sizeof outdir, "%s", out ? out : zp_cfg_str(&c, "train.out_dir"));
  char found[2048];
  if (zp_ckpt_find_latest(outdir, found, sizeof found) == 0) {
    fprintf(stderr, "zp: %s already holds a checkpoint (%s): a resume would continue from the newest one, not from the import; use an "
                    "empty directory (--out) or remove it\n", outdir, found);
    zp_config_free(&c);
    return 1;
  }
  /* a single-rank replicated fp32 run on the CPU holds the weights for the save */
  const char* force[] = {"zero.plugin=\"none\"", "offload.optimizer.plugin=\"none\"", "offload.param.plugin=\"none\"",
                         "train.precision=\"fp32\"", "train.device=\"cpu\""};
  for (int i = 0; i < 5; i++)
    if (zp_config_set(&c, force[i], err, sizeof err)) {
      fprintf(stderr, "zp: %s\n", err);
      zp_config_free(&c);
      return 1;
    }
  zp_run r;
  zp_run_opts o = {0};
  o.world = 1;
  o.no_acts = 1;
  int rc = zp_run_open(&r, &c, &o);
  if (rc) snprintf(err, sizeof err, "%s", r.err);
  if (!rc) rc = zp_st_init_run(&r, src, stderr, err, sizeof err);
  if (!rc) {
    char* dump = NULL;
    size_t dl = 0;
    FILE* mf = open_memstream(&dump, &dl);
    if (mf) {
      fprintf(mf, "# imported from %s by zp import\n", src);
      zp_config_dump(&c, mf);
      fclose(mf);
    }
    rc = zp_ckpt_save(&r, outdir, 0, 0, 0, dump, err, sizeof err);
    free(dump);
  }
  if (rc) fprintf(stderr, "zp: %s\n", err);
  else
    printf("imported %s into %s/ckpt_00000000 (step 0, optimizer state zero): `zp train` with train.out_dir = \"%s\" and "
           "train.resume = \"auto\" starts from it\n", src, outdir, outdir);
  zp_run_close(&r);
  zp_config_free(&c);
  return rc ? 1 : 0;
}
