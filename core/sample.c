/* sample.c: `zp sample` — text generation from a checkpoint with temperature and top-k.
 * Invariants: sampling is a pure function of (checkpoint, prompt, settings, train.seed):
 * random draws come from the counter-based RNG keyed by the token position. Runs on one rank
 * with the replicated placement, whatever layout the checkpoint was saved from (resharding). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "ckpt.h"
#include "rng.h"
#include "runtime.h"
#include "tokenizer.h"
#include "train.h"

static int cmp_desc(const void* a, const void* b) {
  float x = *(const float*)a, y = *(const float*)b;
  return (x < y) - (x > y);
}

int zp_sample(zp_config* cfg, const char* ckpt_dir, char* err, size_t errlen) {
  char ck[1024];
  if (ckpt_dir && ckpt_dir[0]) snprintf(ck, sizeof ck, "%s", ckpt_dir);
  else if (zp_ckpt_find_latest(zp_cfg_str(cfg, "train.out_dir"), ck, sizeof ck)) {
    snprintf(err, errlen, "no checkpoint found in train.out_dir = \"%s\" (train first, or pass --ckpt DIR)", zp_cfg_str(cfg, "train.out_dir"));
    return ZP_E_IO;
  }
  /* tokenizer: data.tokenizer, else the train shards' directory */
  char tdir[1024];
  zp_cfg_path(cfg, "data.tokenizer", tdir, sizeof tdir);
  if (!tdir[0]) {
    zp_cfg_path(cfg, "data.train", tdir, sizeof tdir);
    char* s = strrchr(tdir, '/');
    if (s) *s = 0;
    else snprintf(tdir, sizeof tdir, ".");
  }
  zp_tokenizer* tok = zp_tokenizer_load_dir(tdir, err, errlen);
  if (!tok) return ZP_E_IO;
  /* single-rank replicated run, fp32 compute on the CPU unless configured otherwise */
  char e2[512];
  zp_config_set(cfg, "zero.plugin=none", e2, sizeof e2);
  zp_config_set(cfg, "offload.optimizer.plugin=none", e2, sizeof e2);
  zp_config_set(cfg, "offload.param.plugin=none", e2, sizeof e2);
  zp_run r;
  zp_run_opts o = {0};
  o.world = 1;
  o.B = 1;
  int rc = zp_run_open(&r, cfg, &o);
  if (rc) {
    snprintf(err, errlen, "%s", r.err);
    zp_run_close(&r);
    zp_tokenizer_free(tok);
    return rc;
  }
  int64_t step;
  uint64_t dpos;
  rc = zp_ckpt_load(&r, ck, &step, &dpos, err, errlen);
  if (rc) goto out;
  int T = r.T, Vp = r.layout.s.Vp, V = r.layout.s.V;
  int32_t* ctx = calloc((size_t)T, sizeof(int32_t));
  int32_t* tg = malloc((size_t)T * sizeof(int32_t));
  float* logits = malloc((size_t)Vp * sizeof(float));
  void* row = malloc((size_t)Vp * 8);
  for (int i = 0; i < T; i++) tg[i] = -1;
  int n = 0;
  const char* prompt = zp_cfg_str(cfg, "sample.prompt");
  int eot = zp_tokenizer_eot(tok);
  if (!prompt[0]) ctx[n++] = eot;
  else {
    uint16_t* tk = NULL;
    size_t tn = 0, tc = 0;
    if (zp_tokenizer_encode(tok, prompt, strlen(prompt), &tk, &tn, &tc) < 0) {
      snprintf(err, errlen, "cannot encode the prompt");
      rc = ZP_E_INVALID;
      free(tk);
      goto out2;
    }
    for (size_t i = 0; i < tn && n < T; i++) ctx[n++] = tk[i];
    free(tk);
  }
  printf("sample from %s (step %lld), temperature %g, top-k %d:\n---\n%s", ck, (long long)step,
         zp_cfg_float(cfg, "sample.temperature"), (int)zp_cfg_int(cfg, "sample.top_k"), prompt);
  int maxtok = (int)zp_cfg_int(cfg, "sample.max_tokens");
  double temp = zp_cfg_float(cfg, "sample.temperature");
  int topk = (int)zp_cfg_int(cfg, "sample.top_k");
  uint64_t seed = (uint64_t)zp_cfg_int(cfg, "train.seed");
  float* sorted = malloc((size_t)V * sizeof(float));
  size_t tokbuf_len = (size_t)zp_tokenizer_max_token_bytes(tok) + 16;
  char* tokbuf = malloc(tokbuf_len);
  size_t es = zp_dtype_size(r.ct);
  for (int k = 0; k < maxtok; k++) {
    int len = n; /* ctx holds the last n <= T tokens */
    double l;
    if ((rc = zp_run_forward(&r, ctx, tg, &l))) { snprintf(err, errlen, "%s", r.err); break; }
    if ((rc = r.ops->copy_d2h(r.be, row, (char*)r.acts.logits + (size_t)(len - 1) * Vp * es, (size_t)Vp * es))) break;
    for (int v = 0; v < V; v++)
      logits[v] = r.ct == ZP_F64 ? (float)((double*)row)[v] : r.ct == ZP_BF16 ? zp_bf16_to_f32(((uint16_t*)row)[v]) : ((float*)row)[v];
    int next = 0;
    if (temp <= 0) {
      for (int v = 1; v < V; v++) if (logits[v] > logits[next]) next = v;
    } else {
      float thr = -INFINITY;
      if (topk > 0 && topk < V) {
        memcpy(sorted, logits, (size_t)V * sizeof(float));
        qsort(sorted, (size_t)V, sizeof(float), cmp_desc);
        thr = sorted[topk - 1];
      }
      double mx = -INFINITY, sum = 0;
      for (int v = 0; v < V; v++) if (logits[v] >= thr && logits[v] > mx) mx = logits[v];
      for (int v = 0; v < V; v++) sum += logits[v] >= thr ? exp((logits[v] - mx) / temp) : 0;
      double u = zp_rng_uniform(seed, 0x5a4d706c65ULL, (uint64_t)k) * sum, acc = 0;
      next = -1;
      for (int v = 0; v < V; v++) {
        if (logits[v] < thr) continue;
        acc += exp((logits[v] - mx) / temp);
        next = v;
        if (acc >= u) break;
      }
      if (next < 0) next = 0;
    }
    if (next == eot) break;
    int bl = zp_tokenizer_decode(tok, next, tokbuf, tokbuf_len);
    if (bl > 0) fwrite(tokbuf, 1, (size_t)bl, stdout);
    fflush(stdout);
    if (n == T) {
      memmove(ctx, ctx + 1, (size_t)(T - 1) * sizeof(int32_t));
      n = T - 1;
    }
    ctx[n++] = next;
  }
  printf("\n---\n");
  free(sorted);
  free(tokbuf);
out2:
  free(ctx);
  free(tg);
  free(logits);
  free(row);
out:
  zp_run_close(&r);
  zp_tokenizer_free(tok);
  return rc;
}
