/* ckpt.h: checkpoints in one format for every layout (any world size, strategy, precision).
 *
 * On disk, DIR/ckpt_<step, 8+ digits>/ holds
 *   meta.json         format "zeroplace-checkpoint" version 2: model shape, step, data_pos,
 *                     optimizer step_t, dtypes, world size, strategy, every tensor (name, group,
 *                     offset, numel, global shape), every group (name, span, which weights were
 *                     saved), and every rank file with its size, CRC-32C and its pieces (group,
 *                     category "master"/"param"/"m"/"v", global element range [start, end) in
 *                     the group's buffer, file offset, dtype, bytes, CRC-32C): the one file a
 *                     reader needs besides the data.
 *   config.toml       the effective config of the run that saved it (informational)
 *   rankNNNNN.bin     raw little-endian pieces, each starting at a 4 KiB-aligned file offset
 *   rankNNNNN.json    the writing rank's own record of its pieces (the same as in meta.json;
 *                     during an asynchronous save it is also that rank's "done" marker).
 *                     Version 1 checkpoints (no pieces in meta.json) are read from these.
 * Invariants:
 * - Element ranges are global offsets inside a group's flat buffer clipped to the group's
 *   unpadded span (zp_model_layout.group_span), so the content does not depend on the world
 *   size that wrote it; padding beyond the span is zero by construction and is not stored.
 * - For each group the weights are saved once: MASTER (fp32) when the run has a MASTER buffer,
 *   else PARAM (fp32 or fp64); then OPTIM as "m" and "v" (fp32). A replicated category is
 *   written by rank 0 only, a sharded one by every rank (its shard): every element of
 *   [0, span) of every saved category is in exactly one piece (checked on load).
 * - Atomic: files go to ckpt_X.tmp/, are fsynced, then rank 0 writes meta.json last, fsyncs
 *   and renames the directory; a directory without a valid meta.json, or ending in .tmp, is
 *   never a checkpoint. Retention renames a doomed checkpoint to *.tmp before deleting it.
 *   Loading verifies every piece it reads against its CRC before using a byte of it.
 * - The bytes of a checkpoint do not depend on whether it was written synchronously or
 *   asynchronously (same pieces, offsets, padding).
 * - Errors return a zp_status and a message naming the file (and piece: tensor, group,
 *   category, elements); nothing aborts, nothing reads outside what it allocated.
 */
#ifndef ZP_CKPT_H
#define ZP_CKPT_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "model.h"
#include "runtime.h"

#define ZP_CKPT_FORMAT "zeroplace-checkpoint"
#define ZP_CKPT_VERSION 2 /* written; 1 and 2 are read */
#define ZP_CKPT_ALIGN 4096 /* file offset alignment of each piece */

/* Collective over r->comm (all ranks call). Writes DIR/ckpt_<step 8 digits>/ atomically (see
 * above), then removes the oldest checkpoints so that `keep` remain (keep <= 0: none removed)
 * and removes stale ckpt_*.tmp directories. config_toml (may be NULL) is stored as
 * config.toml. In dry-run runs returns ZP_E_INVALID. An existing checkpoint of the same step is
 * replaced (atomically from a reader's point of view: old or new, never a mixture). */
int zp_ckpt_save(zp_run* r, const char* dir, int64_t step, uint64_t data_pos, int keep,
                 const char* config_toml, char* err, size_t errlen);

/* Newest complete checkpoint directory in dir (ignores *.tmp and directories without a valid
 * meta.json): writes "dir/ckpt_X" into path_out and returns 0; ZP_E_IO if none. */
int zp_ckpt_find_latest(const char* dir, char* path_out, size_t n);
/* The same, among checkpoints with step < before_step (the fallback on a corrupt latest). */
int zp_ckpt_find_before(const char* dir, int64_t before_step, char* path_out, size_t n);

/* Collective. Loads into whatever placement r has now (any world size, any strategy): for
 * each group and each category this rank holds (MASTER or PARAM, OPTIM) reads the overlapping
 * pieces of every rank file, verifying each piece's CRC, sets PARAM = cast(MASTER values) for
 * the range PARAM holds, sets r->opt.step_t and returns step and data_pos. Elements outside
 * the saved span (world padding) are set to zero. GRAD is not touched. The model shape must
 * match meta.json exactly. If any rank fails, every rank returns an error. */
int zp_ckpt_load(zp_run* r, const char* ckpt_dir, int64_t* step, uint64_t* data_pos, char* err,
                 size_t errlen);

/* Collective. Resume: loads the newest complete checkpoint in dir into r. When it does not
 * load because it is corrupt or incomplete (ZP_E_CORRUPT, ZP_E_IO) the error names file and
 * tensor; with fallback set, a warning says so instead and the next older complete checkpoint
 * is tried, and so on. used receives the directory loaded ("" and ZP_OK when dir holds no
 * checkpoint: start from scratch). */
int zp_ckpt_resume(zp_run* r, const char* dir, int fallback, char* used, size_t usedlen, int64_t* step, uint64_t* data_pos, char* err,
                   size_t errlen);

/* `zp ckpt info DIR`: for a checkpoint directory prints step, shape, world size, strategy,
 * how it was written, files with sizes, and verifies every piece's CRC (listed one by one when
 * verbose) and every whole-file CRC: ZP_E_CORRUPT (naming the first bad file and piece) if
 * anything does not verify. For a run directory (no meta.json) it lists every checkpoint and
 * unfinished ckpt_*.tmp (with the ranks that finished), then verifies the newest complete one. */
int zp_ckpt_info(const char* ckpt_dir, FILE* out, int verbose, char* err, size_t errlen);

/* Full fp32 weights of the model from a checkpoint (no run needed). group_params[g] receives a
 * malloc'ed array of zp_group_padded(m, g, 1) floats (tensor t at offset t->offset; padding
 * zero); the caller frees each. The layout's shape must match the checkpoint's. On error all
 * entries are NULL. */
int zp_ckpt_read_full_params(const char* ckpt_dir, const zp_model_layout* m, float** group_params,
                             char* err, size_t errlen);
/* The same for which = 0 (weights, as above), 1 (Adam m) or 2 (Adam v), fp32. */
int zp_ckpt_read_full_state(const char* ckpt_dir, const zp_model_layout* m, int which, float** group_params, char* err,
                            size_t errlen);

/* All ranks call with their local status; returns the same non-zero status on every rank if
 * any failed (the failing rank keeps its message, the others get one naming it). */
int zp_ckpt_agree(zp_run* r, int rc, const char* what, char* err, size_t errlen);

/* As zp_ckpt_set_full_params, also setting Adam's m and v from gm, gv (NULL: zero). */
int zp_ckpt_set_full_state(zp_run* r, float* const* gp, float* const* gm, float* const* gv, char* err, size_t errlen);
/* step, data position and Adam's step count recorded in DIR/meta.json */
int zp_ckpt_read_counters(const char* ckpt_dir, int64_t* step, uint64_t* data_pos, int* step_t, char* err, size_t errlen);

/* ---- tensor parallelism (core/ckpt_tp.c): the same format, global tensors ----
 * Save (collective over the world): every rank's slices (dp shards gathered) are assembled into
 * the global tensors and world rank 0 writes them as one replicated writer (meta.json says
 * world_size 1): any layout, tp or not, loads the result. Synchronous (ckpt.async is ignored
 * with tp). Load (collective): every rank reads the global tensors and keeps its slices. */
int zp_ckpt_tp_save(zp_run* r, const char* dir, int64_t step, uint64_t data_pos, int keep, const char* config_toml, char* err,
                    size_t errlen);
int zp_ckpt_tp_load(zp_run* r, const char* ckpt_dir, int64_t* step, uint64_t* data_pos, char* err, size_t errlen);

/* Model shape, step and world size recorded in DIR/meta.json (validated like a load does). */
int zp_ckpt_read_shape(const char* ckpt_dir, zp_gpt2_shape* s, int64_t* step, char* err, size_t errlen);

/* Collective. Sets the weights of r from full fp32 group buffers (gp[g]: the group's
 * elements in layout order, at least group_span[g] of them; import / init_from): MASTER and
 * PARAM over the ranges this rank holds (PARAM = cast of the values), OPTIM zero, step_t 0. */
int zp_ckpt_set_full_params(zp_run* r, float* const* gp, char* err, size_t errlen);

/* ---- saving during training: synchronous or asynchronous ----
 * A saver owns the checkpoint directory of a run. With async = 1 it allocates, once, a host
 * staging image of this rank's file (BUFFER on the cpu tier, through the run's ledger; pinned
 * where the backend provides it) and a save: (main thread, collective) waits for the previous
 * save, rank 0 prepares ckpt_X.tmp, each rank copies its pieces into the image (a snapshot of
 * this step boundary), then a background thread per rank writes rankNNNNN.bin, fsyncs it and
 * publishes rankNNNNN.json (its done marker, written to a temporary name and renamed). Rank
 * 0's thread waits for every rank's marker (a rank whose writer fails leaves
 * rankNNNNN.failed; the wait gives up after timeout_s), writes meta.json, fsyncs and renames:
 * no collective runs off the main thread. A crash anywhere before the rename leaves the
 * previous checkpoint the newest complete one. Failures of a background save are reported (on
 * every rank) by the next zp_ckpt_saver_save / _wait. With async = 0 a save is zp_ckpt_save. */
typedef struct zp_ckpt_saver zp_ckpt_saver;
int zp_ckpt_saver_open(zp_run* r, const char* dir, int keep, int async, double timeout_s, zp_ckpt_saver** out, char* err,
                       size_t errlen);
/* Collective. blocking = 1: the checkpoint is complete when this returns (also in async mode). */
int zp_ckpt_saver_save(zp_ckpt_saver* s, zp_run* r, int64_t step, uint64_t data_pos, const char* config_toml, int blocking,
                       double* staged_ms, char* err, size_t errlen);
/* Collective. Waits for the save in flight (if any); its status, agreed between ranks. */
int zp_ckpt_saver_wait(zp_ckpt_saver* s, zp_run* r, char* err, size_t errlen);
/* Local. Stops waiting for other ranks (publishing only if every rank file is complete),
 * joins the writer, frees the staging image. Safe on NULL. */
void zp_ckpt_saver_close(zp_ckpt_saver* s, zp_run* r);

/* Crash points for crash tests: if env ZP_CRASH_AT = name[:n][@rank] names this point, the
 * process SIGKILLs itself the n-th time (default 1) it reaches it, on that rank only when
 * @rank is given (rank < 0 here: taken from ZP_RANK / RANK). Points in the checkpoint code:
 *   after_shard_write  a piece was written (synchronous save; counted per piece)
 *   after_rank_file    a rank file and its index are complete and fsynced
 *   before_rename      meta.json is written, the directory not yet renamed
 *   async_staging      a piece was copied into the staging image (main thread)
 *   async_write        a piece was written by the background writer
 * and in core/train.c: mid_step (after the micro-batches, before the optimizer step). */
void zp_crashpoint(const char* name, int rank);

#endif
