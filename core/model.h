/* model.h: the GPT-2 family as groups of flat parameter buffers, and its forward/backward per
 * group on any device backend (one model code; the backend supplies the ops).
 *
 * Invariants:
 * - Groups in forward order: 0 = "embed" (wte, wpe), 1..L = "block.i", L+1 = "head" (ln_f).
 *   The head also uses wte of group 0 (tied): layout.uses records it so placements can make
 *   group 0's parameters present for the head too.
 * - Inside a group, tensors sit at offsets aligned to ZP_TENSOR_ALIGN elements; the group's
 *   padded size is a multiple of world_size * ZP_SHARD_ALIGN_ELEMS so that shards split evenly
 *   and every shard starts 4 KiB-aligned.
 * - Weight init is a pure function of (seed, tensor name, element index): any layout and any
 *   world size starts from identical weights. Padded vocab rows and alignment gaps are zero.
 * - The model reads parameters and accumulates gradients through per-group pointers the
 *   runtime sets (param_ptr / grad_ptr, compute dtype): where they point is the placement's
 *   business, never the model's.
 */
#ifndef ZP_MODEL_H
#define ZP_MODEL_H
#include <stddef.h>
#include <stdint.h>

#include "zp/zp_plugin.h"

#define ZP_TENSOR_ALIGN 64 /* elements */

typedef struct {
  int L, NH, C, maxT, V, Vp;
} zp_gpt2_shape;

enum {
  /* embed */
  ZP_T_WTE = 0, ZP_T_WPE,
  /* block (order inside each block group) */
  ZP_T_LN1W, ZP_T_LN1B, ZP_T_QKVW, ZP_T_QKVB, ZP_T_ATTPROJW, ZP_T_ATTPROJB,
  ZP_T_LN2W, ZP_T_LN2B, ZP_T_FCW, ZP_T_FCB, ZP_T_FCPROJW, ZP_T_FCPROJB,
  /* head */
  ZP_T_LNFW, ZP_T_LNFB
};
#define ZP_BLOCK_TENSORS 12

typedef enum { ZP_INIT_NORMAL = 0, ZP_INIT_ONES = 1, ZP_INIT_ZEROS = 2 } zp_init_kind;

typedef struct {
  char name[64];       /* Hugging Face GPT-2 style: "h.3.attn.c_attn.weight" */
  int kind;            /* ZP_T_* */
  int group;
  int layer;           /* block index or -1 */
  uint64_t offset;     /* element offset inside the group's buffer */
  uint64_t numel;      /* rows * cols */
  int rows, cols;      /* cols = 1 for vectors */
  int real_rows;       /* wte: V (rows beyond are vocab padding, kept zero) */
  int decay;           /* weight decay applies (2-D weights) */
  zp_init_kind init;
  double std;
  /* tensor parallelism (core/model_tp.c): how this tensor is a slice of the global one.
   * tp_split 0: whole (replicated over tp ranks); ZP_TP_ROWS: rows split, in tp_parts blocks
   * of equal size (q|k|v: 3) each cut into tp equal pieces, this rank's pieces stacked;
   * ZP_TP_COLS: columns split into tp equal pieces. g_rows/g_cols/g_real_rows: the global
   * shape (equal to rows/cols/real_rows when tp_split is 0). */
  int tp_split, tp_parts;
  int g_rows, g_cols, g_real_rows;
} zp_tensor_desc;
enum { ZP_TP_NONE = 0, ZP_TP_ROWS = 1, ZP_TP_COLS = 2 };

typedef struct {
  zp_gpt2_shape s;
  int n_groups;
  int n_tensors;
  zp_tensor_desc* tensors;
  int* group_first_tensor; /* [n_groups + 1] */
  uint64_t* group_numel;   /* real parameters per group */
  uint64_t* group_span;    /* elements incl. alignment gaps (before world padding) */
  int uses_head_wte;       /* head group uses group 0's wte */
  uint64_t total_params;   /* real parameters (wte counted once) */
  /* tensor parallelism: this layout holds tp rank tp_rank's slices (tp <= 1: the whole
   * model; zp_model_layout_shard_tp in core/model_tp.c). total_params stays the global count. */
  int tp, tp_rank;
} zp_model_layout;

int zp_model_layout_init(zp_model_layout* m, const zp_gpt2_shape* s, char* err, size_t errlen);
void zp_model_layout_free(zp_model_layout* m);
/* Padded element count of a group for world size N. */
uint64_t zp_group_padded(const zp_model_layout* m, int g, int world);
const zp_tensor_desc* zp_model_tensor(const zp_model_layout* m, int g, int kind);
/* Fill dst (host memory, fp32 or fp64, whole group buffer of `count` elements starting at
 * element `first` of group g) with the initial values. */
void zp_model_init_range(const zp_model_layout* m, uint64_t seed, int g, uint64_t first,
                         uint64_t count, void* dst, zp_dtype dt);
/* Tensor parallelism: the global element index (row-major in the global shape) of element k
 * of tensor slice t held by tp rank tp_rank (k itself for a whole tensor). core/model_tp.c. */
uint64_t zp_tp_global_index(const zp_tensor_desc* t, int tp, int tp_rank, uint64_t k);
/* FLOPs per token for training (6N + 12 L C T, as PEERS.md) */
double zp_model_flops_per_token(const zp_model_layout* m, int T);

/* ---- activations ---- */
typedef struct {
  int B, T;             /* micro-batch and sequence length */
  zp_dtype ct;          /* compute dtype */
  size_t attn_aux_bytes;
  size_t attn_ws_bytes; /* attention_bwd_ws's workspace (ABI 1.4; 0: plain attention_bwd) */
  void* attn_ws;        /* one buffer (BUFFER) for every layer's attention backward */
  int recompute;        /* train.recompute: blocks keep only their input res[l]; the per-layer
                         * pointers below all alias one slot, refilled by re-running the
                         * block's forward just before its backward */
  int recompute_gelu;   /* blocks l >= gelu_from recompute their GELU output (fchg[l], all
                         * aliasing one slot) from fch[l] just before their backward; block L-1
                         * wrote the slot last in the forward and needs no refill */
  int gelu_from;        /* L - (train.recompute_gelu ? L : train.recompute_gelu_blocks) */
  void* gelu_shared;    /* pipeline slots: the one GELU-output region of the stage (set before
                         * zp_acts_chunk_layout); other micro-batches overwrite it between a
                         * block's forward and backward, so every such block refills it */
  /* per layer l (saved for backward) */
  void** res;           /* [L+1] residual stream inputs: res[0] = embed output, res[l+1] = block l output */
  void **ln1, **qkv, **atty, **attaux, **res2, **ln2, **fch, **fchg;
  float **ln1_mean, **ln1_rstd, **ln2_mean, **ln2_rstd;
  /* head */
  void* lnf;
  float *lnf_mean, *lnf_rstd;
  void* logits;         /* [B*T, Vp]: dlogits after the fused loss */
  float* losses;        /* [B*T] */
  /* scratch for backward (BUFFER) */
  void *dres, *d_a, *d_b;
  int32_t *inputs, *targets; /* device copies [B*T] */
  /* tensor parallelism only (NULL otherwise): token ids of this rank's vocabulary rows
   * (local row, or -1 where another rank owns the token) and cross-entropy statistics */
  int32_t* tp_ids;
  void* tp_stats;       /* [3 * B*T] fp32 (fp64 for an F64 compute dtype) */
  /* one allocation each, recorded for free */
  void* block;
  size_t act_bytes, buf_bytes;
  void* buf_block;
  /* pipeline, split backward (BWD_INPUT then BWD_WEIGHT): per layer, the output gradients the
   * weight half needs, saved by the input half (NULL unless zp_acts_chunk_layout(zb = 1)) */
  void **zb_dfcproj, **zb_dfc, **zb_dattproj, **zb_dqkv;
} zp_acts;

struct zp_ledger;
/* Sizes only (for plans); then allocate through the ledger (dry-run aware). */
int zp_acts_alloc(zp_acts* a, const zp_model_layout* m, const zp_backend_ops* ops, zp_backend* b,
                  struct zp_ledger* led, int B, int T, zp_dtype ct, char* err, size_t errlen);
/* the same with activation recompute: block_recompute: ACT holds res[0..L] + one block's slot;
 * else gelu_blocks (0..L): the last gelu_blocks blocks share one GELU-output slot */
int zp_acts_alloc_ex(zp_acts* a, const zp_model_layout* m, const zp_backend_ops* ops, zp_backend* b,
                     struct zp_ledger* led, int B, int T, zp_dtype ct, int block_recompute, int gelu_blocks,
                     char* err, size_t errlen);
/* block l's GELU output must be recomputed before its backward (its slot holds another block's) */
static inline int zp_acts_gelu_refill(const zp_acts* a, int l, int L) {
  return a->recompute_gelu && l >= a->gelu_from && (a->gelu_shared || l < L - 1);
}
void zp_acts_free(zp_acts* a, struct zp_ledger* led);

/* The parameter and gradient views the model computes with (compute dtype, per group). */
typedef struct {
  void** param;  /* [n_groups] */
  void** grad;   /* [n_groups] */
} zp_views;

/* Forward of one group for the current micro-batch. For the head this also computes the loss
 * and, when dloss != 0, dlogits in place (fused). */
int zp_model_forward_group(const zp_model_layout* m, const zp_backend_ops* ops, zp_backend* b,
                           zp_acts* a, const zp_views* v, int g, float dloss);
/* Backward of one group (head first). Accumulates into v->grad[g] (and v->grad[0] for the
 * head's tied wte). */
int zp_model_backward_group(const zp_model_layout* m, const zp_backend_ops* ops, zp_backend* b,
                            zp_acts* a, const zp_views* v, int g);
/* 1 if zp_model_backward_group(g) writes every parameter gradient of group g exactly once,
 * each through matmul_bwd, matmul_dgelu_bwd or layernorm_bwd, and no other group's (the
 * blocks); 0 otherwise (the embedding: encoder_bwd; the head: the tied wte). With the backend's
 * grad_overwrite (ABI 1.8) on, such a group's backward needs no zeroed gradient buffer. */
int zp_model_group_grads_written_once(const zp_model_layout* m, int g);

/* ---- pipeline chunks (core/pipeline_exec.c) ----
 * A chunk holds groups [g0, g1). Its saved activations: the residual stream tensors it reads
 * and writes (res[max(g0-1,0)] .. res[min(g1-1,L)]: the input it receives is res[g0-1], the
 * output it sends res[g1-1]), every block's saved tensors, and for the head lnf, its stats and
 * the losses; with zb the split-backward gradients too. */
/* The attention backward of block l into dqkv: attention_bwd_ws with a->attn_ws where the
 * backend asked for a workspace, else attention_bwd. */
int zp_model_attention_bwd(const zp_backend_ops* ops, zp_backend* b, const zp_acts* a, int l, void* dqkv,
                           const void* dout, int C, int NH);
/* Allocates the pointer arrays of a (no tensor memory); sets B, T, ct, attn_aux_bytes. */
int zp_acts_arrays_alloc(zp_acts* a, const zp_model_layout* m, int B, int T, zp_dtype ct, size_t attn_aux_bytes);
void zp_acts_arrays_free(zp_acts* a);
/* Points a's chunk tensors into base (NULL: sizing only); returns the bytes the chunk needs. */
size_t zp_acts_chunk_layout(zp_acts* a, const zp_model_layout* m, int g0, int g1, int zb, char* base);
/* train.recompute in a pipeline slot: the chunk's block inputs res[] (and the head's tensors)
 * are carved from base; every block's other tensors alias one region, shared (the backward
 * refills it by re-running the block's forward from res[l] just before the block's backward).
 * Returns the slot's bytes; *shared_bytes: the shared region's (one block's tensors). */
size_t zp_acts_chunk_layout_recompute(zp_acts* a, const zp_model_layout* m, int g0, int g1, char* base, char* shared,
                                       size_t* shared_bytes);

/* Backward of one group in phases: ZP_BWD_FULL is zp_model_backward_group. ZP_BWD_INPUT
 * computes the input gradient (and the LayerNorm weight gradients) of a block, saving the
 * output gradients of its four matmuls in a->zb_*; ZP_BWD_WEIGHT then accumulates the matmul
 * weight and bias gradients from them. Same ops on the same values as the full backward, so
 * the results are bitwise identical. The embedding and the head have no split: their INPUT
 * phase is the full backward and their WEIGHT phase does nothing. */
enum { ZP_BWD_FULL = 0, ZP_BWD_INPUT = 1, ZP_BWD_WEIGHT = 2 };
int zp_model_backward_group_phase(const zp_model_layout* m, const zp_backend_ops* ops, zp_backend* b,
                                  zp_acts* a, const zp_views* v, int g, int phase);
#endif
