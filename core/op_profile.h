/* op_profile.h: per-op timing of the active backend (train.profile_ops); see op_profile.c. */
#ifndef ZP_OP_PROFILE_H
#define ZP_OP_PROFILE_H
#include <stdio.h>

#include "zp/zp_plugin.h"

/* a table that times every op of `real` and forwards to it: by device timestamps where `real`
 * has the timer ops (ABI 1.3) and sync is 0, else by issue + synchronize */
const zp_backend_ops* zp_op_profile_wrap(const zp_backend_ops* real, int sync);
void zp_op_profile_reset(void);
/* count ops issued from now (1) or stop counting (0); off until enabled. Stopping reads the
 * step's device timestamps (it synchronizes the backend). */
void zp_op_profile_enable(int on);
/* markdown table: per op (and matmul shape) calls and ms per step, share, TFLOP/s vs peak */
void zp_op_profile_print(FILE* f, int steps, double step_ms, double peak_flops);
#endif
