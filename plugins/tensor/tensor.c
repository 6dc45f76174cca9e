/* tensor: Megatron-style tensor parallelism (docs/tensor.md).
 * The core holds the split model (core/model_tp.c: which slice of each tensor a tp rank
 * holds, the forward/backward on those slices and the all-reduces between them) and the
 * run-level glue (core/runtime_tp.c: communicators, gradient norm, checkpoints). This plugin
 * is what `parallel.tp > 1` opens: it checks that the configuration can be split and says why
 * not when it cannot, before anything runs.
 * Invariants: open() only reads the configuration through the host table; it refuses with
 * ZP_E_INVALID and a message naming the keys, never exits. */
#include <stdlib.h>

#include "zp/zp_plugin.h"

typedef struct {
  int64_t tp;
} tp_state;

static int p_open(const zp_host* h, void** state) {
  int64_t tp = 1, nh = 1, c = 1, pp = 1;
  const char* zero = "none";
  h->config_int(h->ctx, "parallel.tp", &tp);
  h->config_int(h->ctx, "parallel.pp", &pp);
  h->config_int(h->ctx, "model.n_head", &nh);
  h->config_int(h->ctx, "model.d_model", &c);
  h->config_string(h->ctx, "zero.plugin", &zero);
  if (tp < 1) {
    h->set_error(h->ctx, "parallel.tp = %lld: must be at least 1", (long long)tp);
    return ZP_E_INVALID;
  }
  if (nh % tp) {
    h->set_error(h->ctx,
                 "parallel.tp = %lld does not divide model.n_head = %lld: each tensor-parallel rank holds n_head/tp "
                 "attention heads (divisors of %lld are allowed)",
                 (long long)tp, (long long)nh, (long long)nh);
    return ZP_E_INVALID;
  }
  if (c % nh) {
    h->set_error(h->ctx, "model.n_head = %lld does not divide model.d_model = %lld", (long long)nh, (long long)c);
    return ZP_E_INVALID;
  }
  /* pp > 1: each pipeline stage's groups are tp-sliced (core/pipeline_exec.c); the split
   * backward (zb schedules) is refused by the core with tp, the other schedules run */
  (void)pp;
  (void)zero; /* every strategy works over the data-parallel ranks of its tp slice (docs/tensor.md) */
  tp_state* s = calloc(1, sizeof *s);
  if (!s) return ZP_E_NOMEM;
  s->tp = tp;
  *state = s;
  return ZP_OK;
}
static void p_close(void* s) { free(s); }

static const zp_parallel_ops p_ops = {sizeof(zp_parallel_ops), p_open, p_close};
static const zp_plugin_desc p_desc = {
  sizeof(zp_plugin_desc), ZP_ABI_MAJOR, ZP_ABI_MINOR, "tensor", "0.1.0", ZP_KIND_PARALLEL,
  "Megatron-style tensor parallelism: column/row-parallel attention and MLP, vocab-parallel embedding and loss",
  NULL, NULL, &p_ops, NULL,
};
ZP_PLUGIN_EXPORT const zp_plugin_desc* zp_plugin_entry(void) { return &p_desc; }
