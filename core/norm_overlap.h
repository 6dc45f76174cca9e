/* norm_overlap.h: the gradient norm's sums of squares started during the backward (see
 * norm_overlap.c). */
#ifndef ZP_NORM_OVERLAP_H
#define ZP_NORM_OVERLAP_H
#include <stddef.h>
#include <stdint.h>

#include "zp/zp_plugin.h"

struct zp_run;
typedef struct zp_norm_pre zp_norm_pre;

/* r->norm = the state, or NULL where it does not apply (train.overlap_norm off, a backend
 * without sumsq_start / sumsq_collect / a side stream, tensor parallelism, a dry run) */
int zp_norm_open(struct zp_run* r);
void zp_norm_close(struct zp_run* r);
/* a strategy reported group g's final gradient at grad (count elements of dt): start its sum of
 * squares on the side stream (nothing when r->norm is NULL or g has no slot) */
int zp_norm_start(struct zp_run* r, int g, const void* grad, zp_dtype dt, uint64_t count);
/* the host's sumsq_many: out[i] for every i, bit for bit what the backend's sumsq_many gives;
 * tensors started above (the same pointer, dtype and length) are collected with one wait, the
 * rest computed now. Forgets every start. */
int zp_norm_sumsq_many(struct zp_run* r, int count, const void* const* xs, const zp_dtype* dts, const size_t* ns,
                       double* out);
/* forget every start (a step begins: a start an earlier, failed step left must not match) */
void zp_norm_reset(struct zp_run* r);
/* tensors answered from starts, and asked for, since open (the run's summary, tests) */
uint64_t zp_norm_hits(const struct zp_run* r);
uint64_t zp_norm_asked(const struct zp_run* r);
#endif
