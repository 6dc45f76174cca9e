/* test_plan.c: `zp plan`'s dry run allocates exactly what the ZeRO formulas say. A GPT-2
 * 1.5B-shaped model (48 blocks, d 1600, vocab 50304) at N = 1, 2, 3, 8, 64 ranks, for plain
 * DP and stages 1, 2, 3: model-state bytes per rank (PARAM+GRAD+MASTER+OPTIM, from the
 * ledger of the real allocation path in dry-run mode) within 1% of
 *   DP (P+G+K)Ψ, stage 1 (P+G)Ψ + KΨ/N, stage 2 PΨ + (G+K)Ψ/N, stage 3 (P+G+K)Ψ/N,
 * with P, G, K the dtype sizes (bf16 params, bf16 or fp32 grads, K = 4 master + 8 moments).
 * Also: every category on its own, and the plan counts without touching memory. */
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "runtime.h"
#include "zt.h"

static double run_plan(const char* stage, int N, const char* gdt, double out[ZP_CAT_COUNT], double* psi) {
  zp_config c;
  char err[2048];
  char s1[64], s2[64];
  snprintf(s1, sizeof s1, "zero.plugin=%s", stage);
  snprintf(s2, sizeof s2, "train.grad_accum_dtype=%s", gdt);
  const char* sets[] = {"model.n_layer=48", "model.n_head=25", "model.d_model=1600", "model.seq_len=1024",
                        "model.vocab_size=50257", "model.vocab_pad=128", "train.precision=bf16", "train.micro_batch=1",
                        s1, s2};
  int rc = zp_config_load_text(&c, "", 0, "plan.toml", sets, 10, err, sizeof err);
  CHECK_MSG(rc == 0, "%s", err);
  zp_run r;
  zp_run_opts o = {0};
  o.dry_run = 1;
  o.world = N;
  o.T = 64; /* activations are not what this test checks; keep the dry run light */
  rc = zp_run_open(&r, &c, &o);
  CHECK_MSG(rc == 0, "%s", r.err);
  double total = 0;
  for (int k = 0; k < ZP_CAT_COUNT; k++) {
    out[k] = (double)(r.ledger.cur[k][ZP_TIER_GPU] + r.ledger.cur[k][ZP_TIER_CPU]);
    if (k <= ZP_CAT_OPTIM) total += out[k];
  }
  *psi = (double)r.layout.total_params;
  zp_run_close(&r);
  zp_config_free(&c);
  return total;
}

static void check_stage(const char* stage, int shardP, int shardG, int shardK, const char* gdt, double G) {
  const int Ns[] = {1, 2, 3, 8, 64};
  for (int i = 0; i < 5; i++) {
    int N = Ns[i];
    double cat[ZP_CAT_COUNT], psi;
    double tot = run_plan(stage, N, gdt, cat, &psi);
    double P = 2, K = 12;
    double want = (shardP ? P / N : P) * psi + (shardG ? G / N : G) * psi + (shardK ? K / N : K) * psi;
    double rel = (tot - want) / want;
    CHECK_MSG(rel >= 0 && rel < 0.01, "%s N=%d grads %s: %.0f bytes vs formula %.0f (%.3f%%)", stage, N, gdt, tot, want, 100 * rel);
    /* each category on its own */
    double wp = (shardP ? P / N : P) * psi, wg = (shardG ? G / N : G) * psi;
    double wm = (shardK ? 4.0 / N : 4.0) * psi, wo = (shardK ? 8.0 / N : 8.0) * psi;
    CHECK_MSG(cat[ZP_CAT_PARAM] >= wp && cat[ZP_CAT_PARAM] < wp * 1.01, "%s N=%d PARAM %.0f vs %.0f", stage, N, cat[ZP_CAT_PARAM], wp);
    CHECK_MSG(cat[ZP_CAT_GRAD] >= wg && cat[ZP_CAT_GRAD] < wg * 1.01, "%s N=%d GRAD %.0f vs %.0f", stage, N, cat[ZP_CAT_GRAD], wg);
    CHECK_MSG(cat[ZP_CAT_MASTER] >= wm && cat[ZP_CAT_MASTER] < wm * 1.01, "%s N=%d MASTER %.0f vs %.0f", stage, N, cat[ZP_CAT_MASTER], wm);
    CHECK_MSG(cat[ZP_CAT_OPTIM] >= wo && cat[ZP_CAT_OPTIM] < wo * 1.01, "%s N=%d OPTIM %.0f vs %.0f", stage, N, cat[ZP_CAT_OPTIM], wo);
    if (i == 4 || N == 1) printf("  %-6s N=%-2d grads %s: %.3f GB per rank, formula %.3f GB (+%.3f%% padding)\n", stage, N, gdt, tot / 1e9, want / 1e9, 100 * rel);
  }
}

static void t_psi(void) {
  double cat[ZP_CAT_COUNT], psi;
  run_plan("none", 1, "param", cat, &psi);
  /* GPT-2 XL with vocab 50257: 1,557,611,200 parameters (Hugging Face's count) */
  CHECK_EQ_INT((long long)psi, 1557611200LL);
}
static void t_dp(void) { check_stage("none", 0, 0, 0, "param", 2); }
static void t_stage1(void) { check_stage("stage1", 0, 0, 1, "param", 2); }
static void t_stage2(void) { check_stage("stage2", 0, 1, 1, "param", 2); }
static void t_stage3(void) { check_stage("stage3", 1, 1, 1, "param", 2); }
static void t_fp32_grads(void) {
  check_stage("none", 0, 0, 0, "fp32", 4);
  check_stage("stage2", 0, 1, 1, "fp32", 4);
}

int main(void) {
  ZT_RUN(t_psi);
  ZT_RUN(t_dp);
  ZT_RUN(t_stage1);
  ZT_RUN(t_stage2);
  ZT_RUN(t_stage3);
  ZT_RUN(t_fp32_grads);
  return zt_done();
}
