/* tensor: Megatron-style tensor parallelism. Registers as a parallel plugin so that `zp plugins` lists it and a config
 * naming it resolves; the runtime is the pipeline/tensor issue's work: until then open()
 * refuses with ZP_E_NOT_IMPLEMENTED and a message, never a crash. */
#include "zp/zp_plugin.h"

static int p_open(const zp_host* h, void** state) {
  (void)state;
  h->set_error(h->ctx, "the tensor plugin is not implemented yet");
  return ZP_E_NOT_IMPLEMENTED;
}
static void p_close(void* s) { (void)s; }

static const zp_parallel_ops p_ops = {sizeof(zp_parallel_ops), p_open, p_close};
static const zp_plugin_desc p_desc = {
  sizeof(zp_plugin_desc), ZP_ABI_MAJOR, ZP_ABI_MINOR, "tensor", "0.0.1", ZP_KIND_PARALLEL,
  "Megatron-style tensor parallelism (not implemented yet)", NULL, NULL, &p_ops, NULL,
};
ZP_PLUGIN_EXPORT const zp_plugin_desc* zp_plugin_entry(void) { return &p_desc; }
