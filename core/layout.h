/* layout.h: how the ranks of a run are arranged over data (dp), pipeline (pp) and tensor (tp)
 * parallelism, and the communicator of each dimension.
 *
 * Rank mapping (world = dp * pp * tp; tp varies fastest, then pp, then dp):
 *
 *     rank = (dp_i * pp + pp_i) * tp + tp_i
 *
 * so the tp ranks of one (dp_i, pp_i) are adjacent (on GPUs: one host, NVLink), the pipeline
 * stages of one data-parallel replica follow each other, and replica dp_i occupies the
 * contiguous block of pp * tp ranks starting at dp_i * pp * tp. Examples: dp 2 x pp 2 x tp 1 ->
 * ranks 0, 1 = replica 0 stages 0, 1; ranks 2, 3 = replica 1 stages 0, 1.
 *
 * Communicators (zp_layout_split), each ordered by its own index:
 *   dp: the ranks with the same (pp_i, tp_i)  -- what ZeRO strategies reduce gradients over
 *   pp: the ranks with the same (dp_i, tp_i)  -- pipeline point-to-point traffic (rank = pp_i)
 *   tp: the ranks with the same (dp_i, pp_i)  -- tensor-parallel collectives (rank = tp_i)
 * A dimension of size 1 gets a communicator of one rank (no shared-memory slot, no collective);
 * a dimension equal to the world is the world communicator itself (not owned).
 *
 * Invariants: zp_layout_init never aborts; a layout that does not multiply out to the world
 * size is an error naming the three sizes. zp_layout_split is collective over the world
 * communicator (every rank calls it, in the same order as its other collectives).
 */
#ifndef ZP_LAYOUT_H
#define ZP_LAYOUT_H
#include <stddef.h>

#include "zp/zp_plugin.h"

typedef struct {
  int world, rank;
  int dp, pp, tp;       /* sizes */
  int dp_i, pp_i, tp_i; /* this rank's coordinates */
} zp_layout;

/* dp = 0 means world / (pp * tp). */
int zp_layout_init(zp_layout* l, int world, int rank, int dp, int pp, int tp, char* err, size_t errlen);
/* The world rank of coordinates (dp_i, pp_i, tp_i); -1 when out of range. */
int zp_layout_rank_of(const zp_layout* l, int dp_i, int pp_i, int tp_i);
/* Coordinates of a world rank (returns -1 when out of range). */
int zp_layout_coords(const zp_layout* l, int rank, int* dp_i, int* pp_i, int* tp_i);

typedef struct {
  zp_comm *dp, *pp, *tp;
  int own_dp, own_pp, own_tp; /* 1: created by zp_layout_split (destroy), 0: the world comm */
} zp_layout_comms;

/* Collective over world (NULL world: single rank, every comm a communicator of one rank). */
int zp_layout_split(const zp_layout* l, zp_comm* world, zp_layout_comms* out, char* err, size_t errlen);
void zp_layout_comms_free(zp_layout_comms* c);
#endif
