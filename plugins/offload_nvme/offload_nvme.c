/* offload_nvme: the NVMe tier (io_uring, O_DIRECT). Its plan moves MASTER and OPTIM (and, as
 * the parameter tier with stage 3, PARAM) to the nvme tier, so `zp plan` shows the split.
 * The runtime side (files, io_uring queues, pipelined sub-group updates) is the offload
 * issue's work: until then open() refuses with ZP_E_NOT_IMPLEMENTED and a message. */
#include <string.h>

#include "zp/zp_plugin.h"

static int on_plan(const zp_host* h, zp_plan* p) {
  const char* a = "none";
  const char* b = "none";
  h->config_string(h->ctx, "offload.optimizer.plugin", &a);
  h->config_string(h->ctx, "offload.param.plugin", &b);
  int opt = strcmp(a, "offload_nvme") == 0, par = strcmp(b, "offload_nvme") == 0;
  for (int g = 0; g < p->n_groups; g++) {
    if (opt) {
      p->groups[g].place[ZP_CAT_MASTER].tier = ZP_TIER_NVME;
      p->groups[g].place[ZP_CAT_OPTIM].tier = ZP_TIER_NVME;
    }
    if (par) p->groups[g].place[ZP_CAT_PARAM].tier = ZP_TIER_NVME;
  }
  return ZP_OK;
}

static int on_open(const zp_host* h, void** state) {
  (void)state;
  h->set_error(h->ctx, "the offload_nvme tier is not implemented yet (plan only: `zp plan` shows its memory split)");
  return ZP_E_NOT_IMPLEMENTED;
}
static void on_close(void* s) { (void)s; }

static const zp_tier_ops on_ops = {sizeof(zp_tier_ops), ZP_TIER_NVME, on_open, on_close, on_plan, NULL, NULL, NULL, NULL, NULL};
static const zp_plugin_desc on_desc = {
  sizeof(zp_plugin_desc), ZP_ABI_MAJOR, ZP_ABI_MINOR, "offload_nvme", "0.0.1", ZP_KIND_TIER,
  "NVMe tier via io_uring + O_DIRECT (plan only so far)", NULL, &on_ops, NULL, NULL,
};
ZP_PLUGIN_EXPORT const zp_plugin_desc* zp_plugin_entry(void) { return &on_desc; }
