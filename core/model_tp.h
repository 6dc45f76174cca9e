/* model_tp.h: Megatron-style tensor parallelism of the GPT-2 model: which slice of every tensor
 * a tensor-parallel rank holds, and the forward/backward of one group on those slices with the
 * collectives between them (docs/tensor.md).
 *
 * Invariants:
 * - A tp layout (zp_model_layout_shard_tp) is the global layout with every split tensor
 *   replaced by this rank's slice, re-laid at ZP_TENSOR_ALIGN offsets: every tp rank has the
 *   same offsets and group sizes. Each slice records its global shape and how it was cut
 *   (zp_tensor_desc.tp_split), so zp_tp_global_index maps a local element to the global one:
 *   initial weights are those of the single-rank model, and checkpoints hold global tensors.
 * - Split: QKV weight and bias by rows inside each of q, k, v (NH/tp heads per rank); the
 *   attention output projection's weight by columns; MLP fc weight and bias by rows (4C/tp);
 *   the MLP projection's weight by columns; wte by rows (Vp/tp vocabulary rows per rank, the
 *   tied classifier uses the same slice). Everything else (wpe, LayerNorms, the biases of
 *   the two row-parallel projections) is whole on every tp rank.
 * - The residual stream and everything computed from it alone are bitwise identical on all
 *   tp ranks: every all-reduce sums in a fixed rank order and hands every rank the same
 *   result; row-parallel biases and wpe are added by tp rank 0 only, before the all-reduce.
 *   Hence the gradients of the whole tensors are identical on all tp ranks too.
 * - Never materialises full logits: [B*T, Vp/tp] per rank (vocab-parallel cross-entropy).
 */
#ifndef ZP_MODEL_TP_H
#define ZP_MODEL_TP_H
#include "model.h"
#include "zp/zp_plugin.h"

typedef struct zp_tp {
  int size, rank;     /* tensor-parallel group; size <= 1: tensor parallelism is off */
  zp_comm* comm;      /* host communicator of the tp group (shared memory on CPU ranks) */
  zp_comm* dcomm;     /* device communicator of the tp group where the backend provides one */
  int v0, Vl, nreal;  /* this rank's vocabulary rows [v0, v0 + Vl), the first nreal real */
  zp_dtype stats_dt;  /* cross-entropy statistics: F32, or F64 for an F64 compute dtype */
  int32_t* host_ids;  /* [B*T] host scratch for the masked token ids */
  size_t host_ids_n;
  char* err;          /* where a failed collective's message goes (the run's error buffer) */
  size_t errlen;
} zp_tp;

/* Re-lay m (a global layout from zp_model_layout_init) as tp rank tp_rank's slices.
 * Refuses (ZP_E_INVALID with a message) unless n_head % tp == 0 and Vp % tp == 0. */
int zp_model_layout_shard_tp(zp_model_layout* m, int tp, int tp_rank, char* err, size_t errlen);

/* Upload this micro-batch's token ids as rows of this rank's vocabulary slice (a->tp_ids). */
int zp_tp_prepare_ids(zp_tp* tp, const zp_backend_ops* ops, zp_backend* b, zp_acts* a,
                      const int32_t* host_inputs);

/* zp_model_forward_group / zp_model_backward_group on a tp layout (m->tp > 1), with the
 * all-reduces over tp->comm (see the header comment of model_tp.c for where). */
int zp_model_tp_forward_group(const zp_model_layout* m, const zp_backend_ops* ops, zp_backend* b,
                              zp_acts* a, const zp_views* v, int g, float dloss, zp_tp* tp);
int zp_model_tp_backward_group(const zp_model_layout* m, const zp_backend_ops* ops,
                               zp_backend* b, zp_acts* a, const zp_views* v, int g, zp_tp* tp);
#endif
