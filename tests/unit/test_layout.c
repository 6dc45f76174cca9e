/* test_layout.c: the rank layout over dp x pp x tp (rank = (dp_i*pp + pp_i)*tp + tp_i), its
 * errors, per-dimension communicators of one rank, pipeline chunk activations, and the split
 * backward (BWD_INPUT then BWD_WEIGHT) giving bitwise the full backward's gradients. */
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "config.h"
#include "layout.h"
#include "rng.h"
#include "runtime.h"
#include "zt.h"

static void t_mapping(void) {
  zp_layout l;
  char err[512];
  int n = 0;
  for (int r = 0; r < 12; r++) {
    CHECK_EQ_INT(zp_layout_init(&l, 12, r, 0, 3, 2, err, sizeof err), ZP_OK);
    CHECK_EQ_INT(l.dp, 2);
    CHECK_EQ_INT(zp_layout_rank_of(&l, l.dp_i, l.pp_i, l.tp_i), r);
    CHECK_EQ_INT(r, (l.dp_i * 3 + l.pp_i) * 2 + l.tp_i);
    n++;
  }
  CHECK_EQ_INT(n, 12);
  CHECK_EQ_INT(zp_layout_init(&l, 4, 2, 0, 2, 1, err, sizeof err), ZP_OK); /* dp 2 x pp 2: rank 2 = replica 1 stage 0 */
  CHECK_EQ_INT(l.dp_i, 1);
  CHECK_EQ_INT(l.pp_i, 0);
  CHECK_EQ_INT(zp_layout_rank_of(&l, 2, 0, 0), -1);
}

static void t_errors(void) {
  zp_layout l;
  char err[512];
  CHECK_EQ_INT(zp_layout_init(&l, 4, 0, 3, 2, 1, err, sizeof err), ZP_E_INVALID);
  CHECK_STR_CONTAINS(err, "parallel.dp 3 x pp 2 x tp 1 = 6 does not match the 4 ranks");
  CHECK_EQ_INT(zp_layout_init(&l, 5, 0, 0, 2, 1, err, sizeof err), ZP_E_INVALID);
  CHECK_STR_CONTAINS(err, "does not divide the 5 ranks");
  CHECK_EQ_INT(zp_layout_init(&l, 2, 2, 0, 1, 1, err, sizeof err), ZP_E_INVALID);
}

static void t_single_rank_comms(void) {
  zp_layout l;
  zp_layout_comms c;
  char err[512];
  CHECK_EQ_INT(zp_layout_init(&l, 1, 0, 0, 1, 1, err, sizeof err), ZP_OK);
  CHECK_EQ_INT(zp_layout_split(&l, NULL, &c, err, sizeof err), ZP_OK);
  CHECK(c.dp && c.pp && c.tp);
  CHECK_EQ_INT(zp_comm_size(c.dp), 1);
  double x = 3;
  CHECK_EQ_INT(zp_comm_allreduce(c.pp, &x, 1, ZP_F64, ZP_RED_SUM), ZP_OK);
  CHECK(x == 3);
  zp_layout_comms_free(&c);
}

/* full backward vs input half then weight half, on a whole-model "chunk" with zb buffers */
static void t_split_backward_bitwise(void) {
  const char* sets[] = {"model.n_layer=2", "model.n_head=2", "model.d_model=16", "model.seq_len=8", "model.vocab_size=37",
                        "model.vocab_pad=8", "train.micro_batch=2"};
  zp_config c;
  char err[1024];
  int rc = zp_config_load_text(&c, "", 0, "l.toml", sets, 7, err, sizeof err);
  CHECK_MSG(rc == 0, "%s", err);
  if (rc) return;
  zp_run r;
  zp_run_opts o = {0};
  o.world = 1;
  rc = zp_run_open(&r, &c, &o);
  if (!rc) rc = zp_run_init_weights(&r);
  CHECK_MSG(rc == 0, "%s", r.err);
  if (rc) { zp_config_free(&c); return; }
  const zp_model_layout* m = &r.layout;
  int G = m->n_groups, N = r.B * r.T;
  zp_acts a;
  CHECK_EQ_INT(zp_acts_arrays_alloc(&a, m, r.B, r.T, r.ct, r.acts.attn_aux_bytes), ZP_OK);
  size_t bytes = zp_acts_chunk_layout(&a, m, 0, G, 1, NULL);
  char* base = malloc(bytes);
  zp_acts_chunk_layout(&a, m, 0, G, 1, base);
  a.logits = r.acts.logits, a.d_a = r.acts.d_a, a.d_b = r.acts.d_b, a.dres = r.acts.dres;
  a.inputs = r.acts.inputs, a.targets = r.acts.targets;
  for (int i = 0; i < N; i++) {
    a.inputs[i] = (int32_t)zp_rng_below(5, 1, (uint64_t)i, 37);
    a.targets[i] = (int32_t)zp_rng_below(5, 2, (uint64_t)i, 37);
  }
  float* g1[64] = {0};
  for (int pass = 0; pass < 2; pass++) {
    zp_run_zero_grads(&r);
    zp_run_grads_materialize(&r); /* the model's backward is called directly below */
    for (int g = 0; g < G; g++) {
      zp_run_param_view(&r, g);
      r.vgrad[g] = r.groups[g].info.buf[ZP_CAT_GRAD];
    }
    for (int g = 0; g < G; g++) CHECK_EQ_INT(zp_model_forward_group(m, r.ops, r.be, &a, &r.views, g, 1.0f / N), ZP_OK);
    if (pass == 0) {
      for (int g = G - 1; g >= 0; g--) CHECK_EQ_INT(zp_model_backward_group_phase(m, r.ops, r.be, &a, &r.views, g, ZP_BWD_FULL), ZP_OK);
      for (int g = 0; g < G; g++) {
        g1[g] = malloc(r.groups[g].info.bytes[ZP_CAT_GRAD]);
        memcpy(g1[g], r.groups[g].info.buf[ZP_CAT_GRAD], r.groups[g].info.bytes[ZP_CAT_GRAD]);
      }
    } else {
      for (int g = G - 1; g >= 0; g--) CHECK_EQ_INT(zp_model_backward_group_phase(m, r.ops, r.be, &a, &r.views, g, ZP_BWD_INPUT), ZP_OK);
      for (int g = 0; g < G; g++) CHECK_EQ_INT(zp_model_backward_group_phase(m, r.ops, r.be, &a, &r.views, g, ZP_BWD_WEIGHT), ZP_OK);
      for (int g = 0; g < G; g++)
        CHECK_MSG(memcmp(g1[g], r.groups[g].info.buf[ZP_CAT_GRAD], r.groups[g].info.bytes[ZP_CAT_GRAD]) == 0,
                  "group %d: split backward differs from the full backward", g);
    }
  }
  for (int g = 0; g < G; g++) free(g1[g]);
  free(base);
  zp_acts_arrays_free(&a);
  zp_run_close(&r);
  zp_config_free(&c);
}

int main(void) {
  ZT_RUN(t_mapping);
  ZT_RUN(t_errors);
  ZT_RUN(t_single_rank_comms);
  ZT_RUN(t_split_backward_bitwise);
  return zt_done();
}
