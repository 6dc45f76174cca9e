/* check_model.c: the whole GPT-2 model on two backends, same weights, same batch: loss,
 * logits and EVERY gradient tensor compared (rel-L2 per tensor), plus a reference dump for
 * tests/gpu/torch_parity.py (PyTorch on the exact same weights and tokens).
 *
 * Usage: check_model [--devices A,B] [--config FILE] [--set key=value]... [--seed N]
 *                    [--tol-loss X] [--tol-logits X] [--tol-grad X] [--ref-dir DIR | --no-ref]
 *   A, B: DEVICE[:PRECISION]; cpu defaults to fp32, cuda to bf16. Default --devices cpu,cuda
 *   (A is the reference, B the backend under test). `--devices cpu,cpu` checks the plumbing on a
 *   machine without a GPU (all errors 0); `--devices cpu,cpu:bf16` a non-trivial comparison.
 *   Model: built-in small GPT-2 (L=4, NH=4, C=256, T=256, V=50257 padded to 50304, B=4) unless
 *   --config gives a file; --set overrides either (e.g. --set model.n_layer=2).
 *   Reference dump (default $OUT/model_ref, OUT defaulting to /tmp/zp-out): manifest.json
 *   (shapes, offsets, losses, hyper-parameters), weights_f32.bin (initial weights, fp32, tensor
 *   by tensor; wte with its padded rows), inputs_i32.bin, targets_i32.bin ([B*T] each),
 *   grads_<label>.bin per run (fp32, same offsets as the weights). All little-endian.
 *   Exit status: 0 all passed, 1 a check failed, 2 harness error, 77 no CUDA device.
 *
 * Method. Both runs come from one config (only train.device/precision differ); the
 * counter-based init gives identical fp32 master weights (checked: bitwise), the bf16 PARAM of
 * a bf16 run must be exactly bf16(master) (checked). Tokens: counter-based random in [0, V).
 * Logits: from a forward-only pass (zp_run_forward; the training pass overwrites logits with
 * dlogits), over the V real columns. Gradients: one micro-batch with dloss = 1/(B*T) as
 * `zp train` uses, read from each group's GRAD buffer (bf16 widened exactly to fp32).
 * Tolerances (defaults; coarse on purpose: they catch a wrong kernel or layout, rel-L2 ~ 1; the
 * measured bf16 tolerances per tensor are applied by torch_parity.py):
 *   --tol-loss   5e-3  |loss_B - loss_A| / |loss_A|
 *   --tol-logits 5e-2  rel-L2 of logits
 *   --tol-grad   3e-1  rel-L2 of each gradient tensor (abs L2 where the reference is all 0); PyTorch's
 *                     own bf16 gradients of this model are 0.1-0.15 off on the LayerNorm biases of the
 *                     first blocks (sums of many terms that nearly cancel), ~1e-2 on the weights
 * When both runs are fp32 (or fp64) the defaults tighten to 1e-5 / 1e-4 / 1e-4 unless given.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bf16.h"
#include "config.h"
#include "model.h"
#include "rng.h"
#include "runtime.h"
#include "trace.h"

static const char* k_default_config =
    "# check_model built-in config: a small GPT-2 with the real vocabulary\n"
    "[model]\n"
    "arch = \"gpt2\"\n"
    "n_layer = 4\n"
    "n_head = 4\n"
    "d_model = 256\n"
    "seq_len = 256\n"
    "vocab_size = 50257\n"
    "vocab_pad = 128\n"
    "[train]\n"
    "micro_batch = 4\n"
    "grad_accum = 1\n";

typedef struct {
  char dev[16], prec[16], label[48];
  zp_config cfg;
  zp_run run;
  int open;
  double fwd_loss, loss;
  float* grads;   /* all tensors, packed as in the reference dump */
  float* logits;  /* [N, V] real columns */
  double ms_open, ms_init, ms_fwd, ms_mb;
} side;

static int g_fail = 0, g_pass = 0;

static void harness(const char* fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void harness(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "check_model: harness error: ");
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(2);
}

static void result(const char* what, const char* shape, double refn, double rel, double maxabs, double tol, int ok) {
  printf("%-34s %-14s %11.4e %11.4e %11.4e %9.1e  %s\n", what, shape, refn, rel, maxabs, tol, ok ? "PASS" : "FAIL");
  if (ok) g_pass++;
  else g_fail++;
}

/* rel-L2 (abs L2 when ||ref|| == 0), max abs diff, ||ref||; NaN anywhere -> rel = NaN */
static void compare(const float* ref, const float* x, size_t n, double* rel, double* maxabs, double* refn) {
  double d2 = 0, r2 = 0, mx = 0;
  int nan = 0;
  for (size_t i = 0; i < n; i++) {
    double a = ref[i], b = x[i], d = b - a;
    if (!isfinite(a) || !isfinite(b)) nan = 1;
    d2 += d * d;
    r2 += a * a;
    if (fabs(d) > mx) mx = fabs(d);
  }
  *refn = sqrt(r2);
  *maxabs = mx;
  *rel = nan ? NAN : (r2 > 0 ? sqrt(d2 / r2) : sqrt(d2));
}

static void to_f32(float* dst, const void* src, zp_dtype dt, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (dt == ZP_BF16) dst[i] = zp_bf16_to_f32(((const uint16_t*)src)[i]);
    else if (dt == ZP_F64) dst[i] = (float)((const double*)src)[i];
    else dst[i] = ((const float*)src)[i];
  }
}

static int mkdir_p(const char* path) {
  char tmp[2048];
  snprintf(tmp, sizeof tmp, "%s", path);
  for (char* p = tmp + 1; *p; p++)
    if (*p == '/') {
      *p = 0;
      if (mkdir(tmp, 0755) && errno != EEXIST) return -1;
      *p = '/';
    }
  if (mkdir(tmp, 0755) && errno != EEXIST) return -1;
  return 0;
}

static void write_file(const char* dir, const char* name, const void* p, size_t bytes) {
  char path[2200];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE* f = fopen(path, "wb");
  if (!f) harness("cannot write %s: %s", path, strerror(errno));
  if (bytes && fwrite(p, 1, bytes, f) != bytes) harness("short write to %s", path);
  if (fclose(f)) harness("cannot close %s: %s", path, strerror(errno));
}

static void json_str(FILE* f, const char* s) {
  fputc('"', f);
  for (; *s; s++) {
    if (*s == '"' || *s == '\\') fprintf(f, "\\%c", *s);
    else if ((unsigned char)*s < 0x20) fprintf(f, "\\u%04x", *s);
    else fputc(*s, f);
  }
  fputc('"', f);
}

/* "cpu", "cuda:bf16" -> dev, prec */
static void parse_dev(const char* s, side* d) {
  const char* c = strchr(s, ':');
  size_t n = c ? (size_t)(c - s) : strlen(s);
  if (n == 0 || n >= sizeof d->dev) harness("bad device '%s' (expected cpu, cuda, cpu:bf16, ...)", s);
  memcpy(d->dev, s, n);
  d->dev[n] = 0;
  if (strcmp(d->dev, "cpu") && strcmp(d->dev, "cuda")) harness("unknown device '%s' (cpu or cuda)", d->dev);
  snprintf(d->prec, sizeof d->prec, "%s", c ? c + 1 : (strcmp(d->dev, "cuda") == 0 ? "bf16" : "fp32"));
  if (strcmp(d->prec, "fp32") && strcmp(d->prec, "bf16") && strcmp(d->prec, "fp64"))
    harness("unknown precision '%s' (fp32, bf16, fp64)", d->prec);
  snprintf(d->label, sizeof d->label, "%s_%s", d->dev, d->prec);
}

static void usage(const char* argv0) {
  fprintf(stderr,
          "usage: %s [--devices A,B] [--config FILE] [--set key=value]... [--seed N]\n"
          "          [--tol-loss X] [--tol-logits X] [--tol-grad X] [--ref-dir DIR | --no-ref]\n"
          "  A, B: cpu | cuda | DEVICE:PRECISION (fp32, bf16, fp64); default cpu,cuda\n",
          argv0);
}

int main(int argc, char** argv) {
  const char* devices = "cpu,cuda";
  const char* config_file = NULL;
  const char* sets[128];
  int n_sets = 0;
  uint64_t tok_seed = 20240520;
  double tol_loss = -1, tol_logits = -1, tol_grad = -1;
  char ref_dir[2048] = "";
  int no_ref = 0;
  for (int i = 1; i < argc; i++) {
    const char* a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (strcmp(a, name) == 0 && v && (i++, 1))
    if (ARG("--devices")) devices = v;
    else if (ARG("--config")) config_file = v;
    else if (ARG("--set")) {
      if (n_sets >= 120) harness("too many --set");
      sets[n_sets++] = v;
    } else if (ARG("--seed")) tok_seed = strtoull(v, NULL, 10);
    else if (ARG("--tol-loss")) tol_loss = atof(v);
    else if (ARG("--tol-logits")) tol_logits = atof(v);
    else if (ARG("--tol-grad")) tol_grad = atof(v);
    else if (ARG("--ref-dir")) snprintf(ref_dir, sizeof ref_dir, "%s", v);
    else if (strcmp(a, "--no-ref") == 0) no_ref = 1;
    else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) { usage(argv[0]); return 0; }
    else { fprintf(stderr, "check_model: unknown or incomplete argument '%s'\n", a); usage(argv[0]); return 2; }
#undef ARG
  }
  if (!ref_dir[0]) {
    const char* out = getenv("OUT");
    snprintf(ref_dir, sizeof ref_dir, "%s/model_ref", out && *out ? out : "/tmp/zp-out");
  }

  side S[2];
  memset(S, 0, sizeof S);
  {
    char tmp[64];
    snprintf(tmp, sizeof tmp, "%s", devices);
    char* comma = strchr(tmp, ',');
    if (!comma) harness("--devices needs two entries, e.g. cpu,cuda");
    *comma = 0;
    parse_dev(tmp, &S[0]);
    parse_dev(comma + 1, &S[1]);
    if (strcmp(S[0].label, S[1].label) == 0) strncat(S[1].label, "_b", sizeof S[1].label - strlen(S[1].label) - 1);
  }
  int both_wide = strcmp(S[0].prec, "bf16") && strcmp(S[1].prec, "bf16");
  if (tol_loss < 0) tol_loss = both_wide ? 1e-5 : 5e-3;
  if (tol_logits < 0) tol_logits = both_wide ? 1e-4 : 5e-2;
  if (tol_grad < 0) tol_grad = both_wide ? 1e-4 : 3e-1;

  /* ---- open both runs ---- */
  for (int s = 0; s < 2; s++) {
    side* d = &S[s];
    const char* all[132];
    int n = 0;
    for (int i = 0; i < n_sets; i++) all[n++] = sets[i];
    char sd[64], sp[64];
    snprintf(sd, sizeof sd, "train.device=\"%.15s\"", d->dev);
    snprintf(sp, sizeof sp, "train.precision=\"%.15s\"", d->prec);
    all[n++] = sd;
    all[n++] = sp;
    char err[2048];
    int rc = config_file ? zp_config_load(&d->cfg, config_file, all, n, err, sizeof err)
                         : zp_config_load_text(&d->cfg, k_default_config, strlen(k_default_config), "(check_model built-in)", all, n,
                                               err, sizeof err);
    if (!rc) rc = zp_config_check(&d->cfg, err, sizeof err);
    if (rc) harness("config (%s): %s", d->label, err);
    zp_run_opts o;
    memset(&o, 0, sizeof o);
    o.world = 1;
    double t0 = zp_now_us();
    rc = zp_run_open(&d->run, &d->cfg, &o);
    d->ms_open = (zp_now_us() - t0) / 1e3;
    if (rc) {
      const char* e = d->run.err;
      fprintf(stderr, "check_model: cannot open the %s run: %s\n", d->label, e);
      if (strcmp(d->dev, "cuda") == 0 &&
          (strstr(e, "cudaGetDeviceCount") || strstr(e, "no CUDA-capable") || strstr(e, "out of range (0 devices)"))) {
        printf("check_model: no CUDA device: nothing checked\n");
        return 77;
      }
      return 2;
    }
    d->open = 1;
    printf("# run %c = %-10s device \"%s\", PARAM %s, GRAD %s, compute %s, micro-batch %d x %d (open %.0f ms)\n", 'A' + s,
           d->label, d->run.binfo.device_name ? d->run.binfo.device_name : "?", zp_dtype_name(d->run.param_dt),
           zp_dtype_name(d->run.grad_dt), zp_dtype_name(d->run.ct), d->run.B, d->run.T, d->ms_open);
  }
  zp_run* ra = &S[0].run;
  const zp_model_layout* L = &ra->layout;
  if (memcmp(&L->s, &S[1].run.layout.s, sizeof L->s) || ra->B != S[1].run.B || ra->T != S[1].run.T)
    harness("the two runs have different shapes");
  const int B = ra->B, T = ra->T, V = L->s.V, Vp = L->s.Vp;
  const size_t N = (size_t)B * T;
  printf("# model: GPT-2 L=%d NH=%d C=%d T=%d (seq_len %d) V=%d (padded %d), B=%d: %llu parameters, %d tensors\n", L->s.L,
         L->s.NH, L->s.C, T, L->s.maxT, V, Vp, B, (unsigned long long)L->total_params, L->n_tensors);

  /* packed tensor offsets (the reference dump's layout) */
  uint64_t* poff = calloc((size_t)L->n_tensors + 1, sizeof(uint64_t));
  for (int t = 0; t < L->n_tensors; t++) poff[t + 1] = poff[t] + L->tensors[t].numel;
  const uint64_t total = poff[L->n_tensors];

  /* ---- weights: init on both, check identical ---- */
  float* wA = malloc(total * sizeof(float));
  float* wB = malloc(total * sizeof(float));
  if (!wA || !wB) harness("out of host memory");
  int init_ok = 1;
  long long param_mismatch = 0, param_checked = 0;
  for (int s = 0; s < 2; s++) {
    side* d = &S[s];
    zp_run* r = &d->run;
    double t0 = zp_now_us();
    if (zp_run_init_weights(r)) harness("init weights (%s): %s", d->label, r->err);
    d->ms_init = (zp_now_us() - t0) / 1e3;
    float* w = s ? wB : wA;
    for (int g = 0; g < L->n_groups; g++) {
      zp_group_info* in = &r->groups[g].info;
      float* full = malloc((size_t)in->padded * sizeof(float));
      if (zp_run_get_group_params(r, g, full)) harness("get params (%s, group %d): %s", d->label, g, r->err);
      for (int t = L->group_first_tensor[g]; t < L->group_first_tensor[g + 1]; t++)
        memcpy(w + poff[t], full + L->tensors[t].offset, L->tensors[t].numel * sizeof(float));
      /* a bf16 PARAM must be exactly bf16(master) */
      if (in->buf[ZP_CAT_MASTER] && in->dtype[ZP_CAT_PARAM] == ZP_BF16) {
        uint16_t* p = malloc((size_t)in->padded * 2);
        if (r->ops->copy_d2h(r->be, p, in->buf[ZP_CAT_PARAM], (size_t)in->padded * 2)) harness("copy PARAM (%s)", d->label);
        for (uint64_t e = 0; e < in->padded; e++)
          if (p[e] != zp_f32_to_bf16(full[e])) param_mismatch++;
        param_checked += (long long)in->padded;
        free(p);
      }
      free(full);
    }
  }
  for (uint64_t e = 0; e < total; e++)
    if (memcmp(&wA[e], &wB[e], sizeof(float)) != 0) { init_ok = 0; break; }
  printf("\n%-34s %-14s %11s %11s %11s %9s  %s\n", "check", "shape", "|ref|", "rel_l2", "max_abs", "tol", "result");
  {
    double rel, mx, rn;
    compare(wA, wB, (size_t)total, &rel, &mx, &rn);
    char shp[32];
    snprintf(shp, sizeof shp, "[%llu]", (unsigned long long)total);
    result("init: fp32 weights A == B", shp, rn, rel, mx, 0.0, init_ok);
    if (param_checked) {
      snprintf(shp, sizeof shp, "%lld diff", param_mismatch);
      result("init: bf16 PARAM == bf16(master)", shp, 0, (double)param_mismatch / (double)param_checked, 0, 0.0,
             param_mismatch == 0);
    }
  }

  /* ---- tokens ---- */
  int32_t* inp = malloc(N * sizeof(int32_t));
  int32_t* tgt = malloc(N * sizeof(int32_t));
  for (int b = 0; b < B; b++)
    for (int t = 0; t <= T; t++) {
      int32_t tok = (int32_t)zp_rng_below(tok_seed, 7, (uint64_t)b * (uint64_t)(T + 1) + (uint64_t)t, (uint64_t)V);
      if (t < T) inp[(size_t)b * T + t] = tok;
      if (t > 0) tgt[(size_t)b * T + t - 1] = tok;
    }

  /* ---- forward (logits) and one micro-batch (grads) on each side ---- */
  const float dloss = 1.0f / (float)N;
  for (int s = 0; s < 2; s++) {
    side* d = &S[s];
    zp_run* r = &d->run;
    double t0 = zp_now_us();
    if (zp_run_forward(r, inp, tgt, &d->fwd_loss)) harness("forward (%s): %s", d->label, r->err);
    r->ops->synchronize(r->be);
    d->ms_fwd = (zp_now_us() - t0) / 1e3;
    size_t es = zp_dtype_size(r->ct);
    void* raw = malloc(N * (size_t)Vp * es);
    d->logits = malloc(N * (size_t)V * sizeof(float));
    if (!raw || !d->logits) harness("out of host memory for logits");
    if (r->ops->copy_d2h(r->be, raw, r->acts.logits, N * (size_t)Vp * es)) harness("copy logits (%s): %s", d->label, r->err);
    for (size_t i = 0; i < N; i++) to_f32(d->logits + i * V, (char*)raw + i * Vp * es, r->ct, (size_t)V);
    free(raw);
    if (zp_run_zero_grads(r)) harness("zero grads (%s): %s", d->label, r->err);
    t0 = zp_now_us();
    if (zp_run_micro_batch(r, inp, tgt, dloss, &d->loss)) harness("micro-batch (%s): %s", d->label, r->err);
    r->ops->synchronize(r->be);
    d->ms_mb = (zp_now_us() - t0) / 1e3;
    d->grads = malloc(total * sizeof(float));
    for (int g = 0; g < L->n_groups; g++) {
      zp_group_info* in = &r->groups[g].info;
      if (!in->buf[ZP_CAT_GRAD] || in->place[ZP_CAT_GRAD].sharded) harness("group %d: no full GRAD buffer (%s)", g, d->label);
      void* gr = malloc(in->bytes[ZP_CAT_GRAD]);
      float* gf = malloc((size_t)in->padded * sizeof(float));
      if (r->ops->copy_d2h(r->be, gr, in->buf[ZP_CAT_GRAD], in->bytes[ZP_CAT_GRAD])) harness("copy grads (%s)", d->label);
      to_f32(gf, gr, in->dtype[ZP_CAT_GRAD], (size_t)in->padded);
      for (int t = L->group_first_tensor[g]; t < L->group_first_tensor[g + 1]; t++)
        memcpy(d->grads + poff[t], gf + L->tensors[t].offset, L->tensors[t].numel * sizeof(float));
      free(gr);
      free(gf);
    }
    printf("# %-10s init %.0f ms, forward %.1f ms, forward+backward %.1f ms, loss %.6f (forward-only %.6f)\n", d->label,
           d->ms_init, d->ms_fwd, d->ms_mb, d->loss, d->fwd_loss);
  }

  /* ---- compare ---- */
  {
    double rel = fabs(S[1].loss - S[0].loss) / fabs(S[0].loss);
    result("loss (micro-batch)", "[1]", fabs(S[0].loss), rel, fabs(S[1].loss - S[0].loss), tol_loss,
           isfinite(S[1].loss) && rel <= tol_loss);
    rel = fabs(S[1].fwd_loss - S[0].fwd_loss) / fabs(S[0].fwd_loss);
    result("loss (forward only)", "[1]", fabs(S[0].fwd_loss), rel, fabs(S[1].fwd_loss - S[0].fwd_loss), tol_loss,
           isfinite(S[1].fwd_loss) && rel <= tol_loss);
    double mx, rn;
    compare(S[0].logits, S[1].logits, N * (size_t)V, &rel, &mx, &rn);
    char shp[32];
    snprintf(shp, sizeof shp, "[%zu,%d]", N, V);
    result("logits", shp, rn, rel, mx, tol_logits, rel <= tol_logits);
  }
  double worst = 0;
  const char* worst_name = "";
  for (int t = 0; t < L->n_tensors; t++) {
    const zp_tensor_desc* d = &L->tensors[t];
    double rel, mx, rn;
    compare(S[0].grads + poff[t], S[1].grads + poff[t], (size_t)d->numel, &rel, &mx, &rn);
    char nm[80], shp[32];
    snprintf(nm, sizeof nm, "grad %s", d->name);
    if (d->cols > 1) snprintf(shp, sizeof shp, "[%d,%d]", d->rows, d->cols);
    else snprintf(shp, sizeof shp, "[%d]", d->rows);
    result(nm, shp, rn, rel, mx, tol_grad, rel <= tol_grad);
    if (!(rel <= worst)) { worst = rel; worst_name = d->name; }
  }

  /* ---- reference dump for torch_parity.py ---- */
  if (!no_ref) {
    if (mkdir_p(ref_dir)) harness("cannot create %s: %s", ref_dir, strerror(errno));
    write_file(ref_dir, "weights_f32.bin", wA, total * sizeof(float));
    write_file(ref_dir, "inputs_i32.bin", inp, N * sizeof(int32_t));
    write_file(ref_dir, "targets_i32.bin", tgt, N * sizeof(int32_t));
    for (int s = 0; s < 2; s++) {
      char nm[96];
      snprintf(nm, sizeof nm, "grads_%s.bin", S[s].label);
      write_file(ref_dir, nm, S[s].grads, total * sizeof(float));
    }
    char path[2200];
    snprintf(path, sizeof path, "%s/manifest.json", ref_dir);
    FILE* f = fopen(path, "w");
    if (!f) harness("cannot write %s: %s", path, strerror(errno));
    const zp_config* c = &S[0].cfg;
    fprintf(f, "{\n  \"format\": \"zp-model-ref-1\",\n  \"byte_order\": \"little\",\n");
    fprintf(f, "  \"model\": {\"arch\": \"gpt2\", \"n_layer\": %d, \"n_head\": %d, \"d_model\": %d, \"seq_len\": %d, "
               "\"vocab_size\": %d, \"vocab_padded\": %d, \"seed\": %lld, \"init_std\": %.9g, \"ln_eps\": 1e-5, "
               "\"gelu\": \"tanh\", \"tied_wte\": true},\n",
            L->s.L, L->s.NH, L->s.C, L->s.maxT, V, Vp, (long long)zp_cfg_int(c, "model.seed"), zp_cfg_float(c, "model.init_std"));
    fprintf(f, "  \"batch\": {\"B\": %d, \"T\": %d, \"token_seed\": %llu, \"inputs\": \"inputs_i32.bin\", "
               "\"targets\": \"targets_i32.bin\", \"dtype\": \"int32\", \"dloss\": %.9g},\n",
            B, T, (unsigned long long)tok_seed, (double)dloss);
    fprintf(f, "  \"optim\": {\"lr\": %.9g, \"beta1\": %.9g, \"beta2\": %.9g, \"eps\": %.9g, \"weight_decay\": %.9g, "
               "\"grad_clip\": %.9g},\n",
            zp_cfg_float(c, "train.lr"), zp_cfg_float(c, "train.beta1"), zp_cfg_float(c, "train.beta2"),
            zp_cfg_float(c, "train.eps"), zp_cfg_float(c, "train.weight_decay"), zp_cfg_float(c, "train.grad_clip"));
    fprintf(f, "  \"weights\": \"weights_f32.bin\",\n  \"dtype\": \"float32\",\n  \"total_elems\": %llu,\n",
            (unsigned long long)total);
    fprintf(f, "  \"tensors\": [\n");
    for (int t = 0; t < L->n_tensors; t++) {
      const zp_tensor_desc* d = &L->tensors[t];
      fprintf(f, "    {\"name\": ");
      json_str(f, d->name);
      if (d->cols > 1) fprintf(f, ", \"shape\": [%d, %d]", d->rows, d->cols);
      else fprintf(f, ", \"shape\": [%d]", d->rows);
      fprintf(f, ", \"offset\": %llu, \"numel\": %llu, \"group\": %d, \"decay\": %d, \"real_rows\": %d}%s\n",
              (unsigned long long)poff[t], (unsigned long long)d->numel, d->group, d->decay, d->real_rows,
              t + 1 < L->n_tensors ? "," : "");
    }
    fprintf(f, "  ],\n  \"runs\": [\n");
    for (int s = 0; s < 2; s++) {
      side* d = &S[s];
      fprintf(f, "    {\"label\": ");
      json_str(f, d->label);
      fprintf(f, ", \"role\": \"%s\", \"device\": \"%s\", \"precision\": \"%s\", \"param_dtype\": \"%s\", "
                 "\"grad_dtype\": \"%s\", \"compute_dtype\": \"%s\", \"device_name\": ",
              s ? "test" : "reference", d->dev, d->prec, zp_dtype_name(d->run.param_dt), zp_dtype_name(d->run.grad_dt),
              zp_dtype_name(d->run.ct));
      json_str(f, d->run.binfo.device_name ? d->run.binfo.device_name : "?");
      fprintf(f, ", \"loss\": %.9g, \"forward_loss\": %.9g, \"grads\": \"grads_%s.bin\"}%s\n", d->loss, d->fwd_loss, d->label,
              s ? "" : ",");
    }
    fprintf(f, "  ]\n}\n");
    if (fclose(f)) harness("cannot close %s", path);
    printf("\n# reference dump: %s (manifest.json, weights_f32.bin, inputs/targets_i32.bin, grads_{%s,%s}.bin)\n", ref_dir,
           S[0].label, S[1].label);
  }

  printf("# tolerances: loss %.1e (relative), logits %.1e, gradients %.1e (rel-L2)\n", tol_loss, tol_logits, tol_grad);
  printf("CHECK_MODEL %s: %d passed, %d failed; %s vs %s: loss %.6f vs %.6f, worst gradient rel-L2 %.3e (%s)\n",
         g_fail ? "FAIL" : "PASS", g_pass, g_fail, S[1].label, S[0].label, S[1].loss, S[0].loss, worst, worst_name);
  for (int s = 1; s >= 0; s--) {
    free(S[s].grads);
    free(S[s].logits);
    zp_run_close(&S[s].run);
    zp_config_free(&S[s].cfg);
  }
  free(poff);
  free(wA);
  free(wB);
  free(inp);
  free(tgt);
  return g_fail ? 1 : 0;
}
