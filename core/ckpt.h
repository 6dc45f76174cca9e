/* ckpt.h: checkpoints in one format for every layout (any world size, strategy, precision).
 *
 * On disk, DIR/ckpt_<step, 8+ digits>/ holds
 *   meta.json         format "zeroplace-checkpoint" version 1: model shape, step, data_pos,
 *                     optimizer step_t, dtypes, world size, strategy, every tensor (name, group,
 *                     offset, numel, shape), every group (name, span, which weights were saved),
 *                     and the rank files with their sizes
 *   config.toml       the effective config of the run that saved it (informational)
 *   rankNNNNN.bin     raw little-endian pieces, each starting at a 4 KiB-aligned file offset
 *   rankNNNNN.json    that file's piece index: per piece group, category ("master", "param",
 *                     "m", "v"), global element range [start, end) in the group's buffer,
 *                     file offset, dtype, bytes, CRC-32C; plus the whole file's size and CRC-32C
 * Invariants:
 * - Element ranges are global offsets inside a group's flat buffer clipped to the group's
 *   unpadded span (zp_model_layout.group_span), so the content does not depend on the world
 *   size that wrote it; padding beyond the span is zero by construction and is not stored.
 * - For each group the weights are saved once: MASTER (fp32) when the run has a MASTER buffer,
 *   else PARAM (fp32 or fp64); then OPTIM as "m" and "v" (fp32). A replicated category is
 *   written by rank 0 only, a sharded one by every rank (its shard): every element of
 *   [0, span) of every saved category is in exactly one piece.
 * - Atomic: files go to ckpt_X.tmp/, are fsynced, then rank 0 writes meta.json last, fsyncs
 *   and renames the directory; a directory without a valid meta.json, or ending in .tmp, is
 *   never a checkpoint. Loading verifies every piece it reads against its CRC.
 * - Errors return a zp_status and a message naming the file (and piece); nothing aborts.
 */
#ifndef ZP_CKPT_H
#define ZP_CKPT_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "model.h"
#include "runtime.h"

#define ZP_CKPT_FORMAT "zeroplace-checkpoint"
#define ZP_CKPT_VERSION 1
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

/* Collective. Loads into whatever placement r has now (any world size, any strategy): for
 * each group and each category this rank holds (MASTER or PARAM, OPTIM) reads the overlapping
 * pieces of every rank file, verifying each piece's CRC, sets PARAM = cast(MASTER values) for
 * the range PARAM holds, sets r->opt.step_t and returns step and data_pos. Elements outside
 * the saved span (world padding) are set to zero. GRAD is not touched. The model shape must
 * match meta.json exactly. If any rank fails, every rank returns an error. */
int zp_ckpt_load(zp_run* r, const char* ckpt_dir, int64_t* step, uint64_t* data_pos, char* err,
                 size_t errlen);

/* `zp ckpt info DIR`: prints step, shape, world size, strategy, files with sizes, and verifies
 * every piece's CRC and every whole-file CRC. ZP_E_CORRUPT (naming the first bad file/piece)
 * if anything does not verify. */
int zp_ckpt_info(const char* ckpt_dir, FILE* out, char* err, size_t errlen);

/* Full fp32 weights of the model from a checkpoint (no run needed). group_params[g] receives a
 * malloc'ed array of zp_group_padded(m, g, 1) floats (tensor t at offset t->offset; padding
 * zero); the caller frees each. The layout's shape must match the checkpoint's. On error all
 * entries are NULL. */
int zp_ckpt_read_full_params(const char* ckpt_dir, const zp_model_layout* m, float** group_params,
                             char* err, size_t errlen);

/* Crash-point hook for crash tests: if env ZP_CRASH_AT equals name, raise(SIGKILL).
 * Checkpoint points: "ckpt_after_shard" (a rank file and its index are written and fsynced),
 * "ckpt_before_rename" (meta.json written, directory not yet renamed). */
void zp_crashpoint(const char* name);

#endif
