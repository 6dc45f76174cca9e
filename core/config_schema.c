/* config_schema.c: every configuration key zeroplace knows, with type, default, range and doc.
 * Invariant: this table is the single source of truth; docs/config.md is generated from it
 * (`zp config --doc`) and a test checks that the two agree. Add keys at the end of a section. */
#include "config.h"

#define NR 1.0, 0.0 /* no numeric range */
const zc_key zp_config_schema[] = {
  /* model */
  {"model.arch", ZC_STRING, "\"gpt2\"", NR, "gpt2", "Model family. GPT-2: learned positions, LayerNorm, tanh-GELU, tied embeddings."},
  {"model.n_layer", ZC_INT, "12", 1, 1024, NULL, "Transformer blocks."},
  {"model.n_head", ZC_INT, "12", 1, 1024, NULL, "Attention heads; must divide d_model."},
  {"model.d_model", ZC_INT, "768", 8, 65536, NULL, "Hidden size."},
  {"model.seq_len", ZC_INT, "1024", 2, 131072, NULL, "Context length (learned positions)."},
  {"model.vocab_size", ZC_INT, "50257", 2, 1048576, NULL, "Real vocabulary size (tokens must be below it)."},
  {"model.vocab_pad", ZC_INT, "128", 1, 4096, NULL, "Embedding rows are padded up to a multiple of this for speed (50257 -> 50304)."},
  {"model.init_std", ZC_FLOAT, "0.02", 0, 10, NULL, "Std of the normal weight init (residual projections scaled by 1/sqrt(2*n_layer))."},
  {"model.seed", ZC_INT, "1337", 0, 9.2e18, NULL, "Seed of the counter-based weight init (same weights in every layout)."},
  /* data */
  {"data.train", ZC_STRING, "\"\"", NR, NULL, "Training token shards (llm.c .bin layout); a glob, relative to the config file."},
  {"data.val", ZC_STRING, "\"\"", NR, NULL, "Validation shards (glob); empty = no validation."},
  {"data.tokenizer", ZC_STRING, "\"\"", NR, NULL, "Directory holding tokenizer.json (from `zp data prepare`); default: the train shards' directory."},
  {"data.shuffle", ZC_BOOL, "true", NR, NULL, "Seeded shuffle of samples each epoch."},
  {"data.seed", ZC_INT, "42", 0, 9.2e18, NULL, "Shuffle seed."},
  /* train */
  {"train.device", ZC_STRING, "\"cpu\"", NR, "cpu|cuda", "Device backend."},
  {"train.precision", ZC_STRING, "\"fp32\"", NR, "fp32|bf16|fp64", "fp32: all fp32. bf16: PARAM and GRAD stored in bf16 with fp32 master weights (the CPU computes in fp32). fp64: CPU checks only."},
  {"train.grad_accum_dtype", ZC_STRING, "\"param\"", NR, "param|fp32", "Gradient accumulation dtype: as the parameters, or fp32 (18 bytes/param with bf16)."},
  {"train.micro_batch", ZC_INT, "8", 1, 65536, NULL, "Sequences per micro-batch per data-parallel rank."},
  {"train.grad_accum", ZC_INT, "1", 1, 65536, NULL, "Micro-batches per optimizer step."},
  {"train.steps", ZC_INT, "100", 0, 1e12, NULL, "Optimizer steps."},
  {"train.lr", ZC_FLOAT, "6e-4", 0, 10, NULL, "Peak learning rate."},
  {"train.lr_schedule", ZC_STRING, "\"cosine\"", NR, NULL, "\"cosine\", \"constant\", or a Lua file defining lr(step, total_steps)."},
  {"train.warmup_steps", ZC_INT, "0", 0, 1e12, NULL, "Linear warm-up steps (shipped schedules)."},
  {"train.min_lr_ratio", ZC_FLOAT, "0.1", 0, 1, NULL, "Final lr as a fraction of lr (cosine)."},
  {"train.weight_decay", ZC_FLOAT, "0.1", 0, 10, NULL, "AdamW decoupled weight decay on 2-D weights (wte, wpe, linear weights); not on biases and norms."},
  {"train.beta1", ZC_FLOAT, "0.9", 0, 0.999999, NULL, "Adam beta1."},
  {"train.beta2", ZC_FLOAT, "0.95", 0, 0.9999999, NULL, "Adam beta2."},
  {"train.eps", ZC_FLOAT, "1e-8", 0, 1, NULL, "Adam epsilon."},
  {"train.grad_clip", ZC_FLOAT, "1.0", 0, 1e9, NULL, "Global gradient-norm clip (0 = off)."},
  {"train.seed", ZC_INT, "1", 0, 9.2e18, NULL, "Run seed (sampling, dropout-free training uses it only for sampling)."},
  {"train.threads", ZC_INT, "0", 0, 4096, NULL, "CPU threads per rank (0 = OpenMP default)."},
  {"train.log_every", ZC_INT, "1", 1, 1e9, NULL, "Print a step line every N steps."},
  {"train.val_every", ZC_INT, "0", 0, 1e9, NULL, "Validation every N steps (0 = only at the end when data.val is set)."},
  {"train.val_batches", ZC_INT, "4", 1, 1e9, NULL, "Micro-batches per validation."},
  {"train.out_dir", ZC_STRING, "\"runs/default\"", NR, NULL, "Run directory: metrics.jsonl, checkpoints, traces (relative to the current directory)."},
  {"train.metrics", ZC_BOOL, "true", NR, NULL, "Write out_dir/metrics.jsonl."},
  {"train.trace", ZC_BOOL, "false", NR, NULL, "Write a per-rank Chrome trace (out_dir/trace_rankN.json)."},
  {"train.checkpoint_every", ZC_INT, "0", 0, 1e12, NULL, "Save a checkpoint every N steps (0 = only at the end and on SIGTERM/SIGUSR1)."},
  {"train.keep_checkpoints", ZC_INT, "2", 1, 1e6, NULL, "Keep the last K checkpoints."},
  {"train.resume", ZC_STRING, "\"auto\"", NR, "auto|never", "auto: continue from the newest complete checkpoint in out_dir."},
  {"train.save_final", ZC_BOOL, "true", NR, NULL, "Save a checkpoint at the end of the run."},
  {"train.hooks", ZC_STRING, "\"\"", NR, NULL, "Lua file defining on_step(metrics) (log, change lr, save, stop)."},
  {"train.init_from", ZC_STRING, "\"\"", NR, NULL, "Start from these weights instead of the random init when there is no checkpoint to resume from: a safetensors file with Hugging Face GPT-2 names (`zp export`'s output, or a model saved by transformers); relative to the config file. Optimizer state starts at zero."},
  /* parallel */
  {"parallel.dp", ZC_INT, "0", 0, 65536, NULL, "Data-parallel ranks (0 = world size / (pp*tp))."},
  {"parallel.pp", ZC_INT, "1", 1, 1024, NULL, "Pipeline stages."},
  {"parallel.tp", ZC_INT, "1", 1, 1024, NULL, "Tensor-parallel ranks (Megatron-style, plugin `tensor`): each holds n_head/tp heads, 4*d_model/tp MLP columns and padded_vocab/tp embedding rows; tp must divide model.n_head; ranks are numbered dp_rank * tp + tp_rank. See docs/tensor.md."},
  /* zero */
  {"zero.plugin", ZC_STRING, "\"none\"", NR, NULL, "\"none\" (replicated, plain data parallel), \"stage1\", \"stage2\", \"stage3\", or a plugin path."},
  {"zero.prefetch_groups", ZC_INT, "1", 0, 64, NULL, "stage3: groups gathered ahead of use."},
  {"zero.bucket_mb", ZC_FLOAT, "25", 0.001, 1e6, NULL, "Gradient bucket size for reduction (MiB)."},
  {"zero.overlap_comm", ZC_BOOL, "true", NR, NULL, "Reduce gradient buckets while backward continues."},
  {"zero.persist_threshold", ZC_INT, "0", 0, 1e12, NULL, "stage3: groups with fewer parameters stay resident (replicated)."},
  /* offload */
  {"offload.optimizer.plugin", ZC_STRING, "\"none\"", NR, NULL, "\"none\", \"offload_cpu\" or \"offload_nvme\": where MASTER and OPTIM live."},
  {"offload.optimizer.max_host_gb", ZC_FLOAT, "0", 0, 1e6, NULL, "Cap on host memory for offloaded state (0 = no cap)."},
  {"offload.optimizer.threads", ZC_INT, "0", 0, 4096, NULL, "Host threads for the offloaded optimizer step (0 = OpenMP default)."},
  {"offload.optimizer.path", ZC_STRING, "\"\"", NR, NULL, "Directory for offload_nvme files."},
  {"offload.optimizer.queue_depth", ZC_INT, "32", 1, 4096, NULL, "offload_nvme: I/O operations in flight on the MASTER/OPTIM files (io_uring queue; thread-pool workers where io_uring is unavailable, at most 128). `zp nvme-bench DIR` measures the best value."},
  {"offload.optimizer.block_size", ZC_INT, "1048576", 4096, 1073741824, NULL, "offload_nvme: largest single I/O operation in bytes (multiple of 4096, O_DIRECT); longer requests are split."},
  {"offload.optimizer.buffer_count", ZC_INT, "4", 1, 1024, NULL, "offload_nvme: staging buffers, each block_size * ceil(queue_depth / buffer_count) bytes, so that together they fill the queue."},
  {"offload.param.plugin", ZC_STRING, "\"none\"", NR, NULL, "\"none\", \"offload_cpu\" or \"offload_nvme\" (needs zero.plugin = stage3)."},
  {"offload.param.path", ZC_STRING, "\"\"", NR, NULL, "Directory for offload_nvme parameter files."},
  {"offload.param.queue_depth", ZC_INT, "32", 1, 4096, NULL, "io_uring queue depth."},
  {"offload.param.block_size", ZC_INT, "1048576", 4096, 1073741824, NULL, "I/O block size in bytes (multiple of 4096)."},
  {"offload.param.buffer_count", ZC_INT, "4", 1, 1024, NULL, "Pinned staging buffers."},
  /* pipeline */
  {"pipeline.plugin", ZC_STRING, "\"none\"", NR, NULL, "\"none\" or \"pipeline\"."},
  {"pipeline.schedule", ZC_STRING, "\"1f1b\"", NR, NULL, "gpipe, 1f1b, interleaved_1f1b, zb_h1, or a Lua file."},
  {"pipeline.micro_batches", ZC_INT, "4", 1, 65536, NULL, "Micro-batches per step through the pipeline."},
  {"pipeline.stages", ZC_INT_LIST, "[]", NR, NULL, "Explicit split: number of groups per (virtual) stage, in order, e.g. [5, 4, 5] for 14 groups on 3 stages (embed is group 0, head the last); must add up to n_layer + 2. Empty = balance by forward FLOPs."},
  {"pipeline.chunks", ZC_INT, "1", 1, 64, NULL, "Model chunks per device (virtual stages, interleaved_1f1b): virtual stage chunk * pp + stage holds that slice of the groups."},
  /* comm */
  {"comm.timeout_s", ZC_FLOAT, "300", 0.1, 1e6, NULL, "Deadline on every collective; a dead or hung rank is reported after it."},
  /* ckpt */
  {"ckpt.async", ZC_BOOL, "false", NR, NULL, "Periodic checkpoints are staged into host memory at the step boundary (one image of each rank's file, counted as BUFFER on the cpu tier) and written by a background thread while training goes on; at most one in flight. The final and signal-triggered saves complete before the run ends. Same bytes as a synchronous save."},
  {"ckpt.fallback", ZC_BOOL, "false", NR, NULL, "On resume, when the newest complete checkpoint is corrupt or incomplete (a checksum or size mismatch), warn and resume from the previous complete one instead of stopping with an error that names the file and tensor."},
  /* sample */
  {"sample.prompt", ZC_STRING, "\"\"", NR, NULL, "Prompt for `zp sample` (and end-of-run samples)."},
  {"sample.max_tokens", ZC_INT, "200", 0, 1e9, NULL, "Tokens to generate."},
  {"sample.temperature", ZC_FLOAT, "0.8", 0, 100, NULL, "Sampling temperature (0 = greedy)."},
  {"sample.top_k", ZC_INT, "40", 0, 1e9, NULL, "Top-k filter (0 = off)."},
  {"sample.at_end", ZC_BOOL, "false", NR, NULL, "Print a sample when training ends."},
};
const size_t zp_config_schema_len = sizeof zp_config_schema / sizeof zp_config_schema[0];
