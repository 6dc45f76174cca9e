/* offload_ratio.h: which groups an optimizer tier (offload_cpu, offload_nvme) takes under
 * offload.optimizer.ratio, the fraction of the held optimizer state to offload (partial
 * offload, as DeepSpeed's offload_optimizer.ratio).
 * Rule: groups in the optimizer's update order (ascending index: every strategy updates group
 * 0 first) stay on the device while the device's share of the held elements stays within
 * (1 - ratio) x total; every later group goes to the tier. The device groups' AdamW is issued
 * first and runs on the device while the host works through the tier's groups.
 * Invariants: the choice depends only on the plan (group sizes, world size) and the ratio, so
 * every rank picks the same groups; ratio 1 (the default) offloads every group; ratio <= 0 is
 * an error (offloading nothing is offload.optimizer.plugin = "none"). Header-only (plugins
 * never link against the core). */
#ifndef ZP_OFFLOAD_RATIO_H
#define ZP_OFFLOAD_RATIO_H
#include "zp/zp_plugin.h"

static inline uint64_t zp_offload_held(const zp_plan* p, int g) {
  const zp_group_plan* gp = &p->groups[g];
  return gp->place[ZP_CAT_OPTIM].sharded ? gp->padded / (uint64_t)(p->world_size > 0 ? p->world_size : 1) : gp->padded;
}

/* take[g] = 1 for the groups the tier takes; returns ZP_OK or ZP_E_INVALID (message set) */
static inline int zp_offload_pick(const zp_host* h, const zp_plan* p, unsigned char* take, double* ratio_out) {
  double ratio = 1.0;
  h->config_float(h->ctx, "offload.optimizer.ratio", &ratio);
  if (!(ratio > 0.0) || ratio > 1.0) {
    h->set_error(h->ctx, "offload.optimizer.ratio = %g: the fraction of the optimizer state to offload must be in (0, 1] "
                 "(to offload nothing, set offload.optimizer.plugin = \"none\")", ratio);
    return ZP_E_INVALID;
  }
  double total = 0, dev = 0;
  for (int g = 0; g < p->n_groups; g++) total += (double)zp_offload_held(p, g);
  const double dev_cap = (1.0 - ratio) * total;
  int on_dev = 1;
  for (int g = 0; g < p->n_groups; g++) {
    double n = (double)zp_offload_held(p, g);
    if (on_dev && dev + n <= dev_cap) dev += n;
    else on_dev = 0;
    take[g] = (unsigned char)!on_dev;
  }
  if (ratio_out) *ratio_out = ratio;
  return ZP_OK;
}
#endif
