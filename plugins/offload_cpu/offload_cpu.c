/* offload_cpu: the host-RAM tier. Its plan moves MASTER and OPTIM (and, configured as the
 * parameter tier with stage 3, PARAM) to the cpu tier, so `zp plan` shows the real split.
 * The runtime side (pinned buffers, vectorised CPU AdamW, gradient/parameter streaming) is
 * the offload issue's work: until then open() refuses with ZP_E_NOT_IMPLEMENTED and a
 * message, so a run never silently keeps the state on the device. */
#include <string.h>

#include "zp/zp_plugin.h"

static int which(const zp_host* h, int* opt, int* par) {
  const char* a = "none";
  const char* b = "none";
  h->config_string(h->ctx, "offload.optimizer.plugin", &a);
  h->config_string(h->ctx, "offload.param.plugin", &b);
  *opt = strcmp(a, "offload_cpu") == 0;
  *par = strcmp(b, "offload_cpu") == 0;
  return ZP_OK;
}

static int oc_plan(const zp_host* h, zp_plan* p) {
  int opt, par;
  which(h, &opt, &par);
  for (int g = 0; g < p->n_groups; g++) {
    if (opt) {
      p->groups[g].place[ZP_CAT_MASTER].tier = ZP_TIER_CPU;
      p->groups[g].place[ZP_CAT_OPTIM].tier = ZP_TIER_CPU;
    }
    if (par) p->groups[g].place[ZP_CAT_PARAM].tier = ZP_TIER_CPU;
  }
  return ZP_OK;
}

static int oc_open(const zp_host* h, void** state) {
  (void)state;
  h->set_error(h->ctx, "the offload_cpu tier is not implemented yet (plan only: `zp plan` shows its memory split)");
  return ZP_E_NOT_IMPLEMENTED;
}
static void oc_close(void* s) { (void)s; }

static const zp_tier_ops oc_ops = {sizeof(zp_tier_ops), ZP_TIER_CPU, oc_open, oc_close, oc_plan};
static const zp_plugin_desc oc_desc = {
  sizeof(zp_plugin_desc), ZP_ABI_MAJOR, ZP_ABI_MINOR, "offload_cpu", "0.0.1", ZP_KIND_TIER,
  "host-RAM tier for optimizer state / parameters (plan only so far)", NULL, &oc_ops, NULL, NULL,
};
ZP_PLUGIN_EXPORT const zp_plugin_desc* zp_plugin_entry(void) { return &oc_desc; }
