/* pipeline: registration entry for pipeline parallelism, so that `zp plugins` lists it and a
 * config naming it (pipeline.plugin = "pipeline") resolves. The executor itself lives in the
 * core (core/pipeline_exec.c): it drives the model's per-group forward and backward with
 * per-micro-batch activation slots and the runtime's parameter and gradient views, none of
 * which is part of the plugin ABI. parallel.pp > 1 runs it whatever pipeline.plugin says.
 * open() succeeds only where a pipeline runs (parallel.pp > 1) and refuses otherwise with a
 * message, never a crash. */
#include "zp/zp_plugin.h"

static int p_open(const zp_host* h, void** state) {
  *state = NULL;
  int64_t pp = 1;
  if (h->config_int(h->ctx, "parallel.pp", &pp) != ZP_OK || pp < 2) {
    h->set_error(h->ctx, "the pipeline plugin needs parallel.pp > 1 (got %lld): with one stage there is no pipeline",
                 (long long)pp);
    return ZP_E_INVALID;
  }
  return ZP_OK;
}
static void p_close(void* s) { (void)s; }

static const zp_parallel_ops p_ops = {sizeof(zp_parallel_ops), p_open, p_close};
static const zp_plugin_desc p_desc = {
  sizeof(zp_plugin_desc), ZP_ABI_MAJOR, ZP_ABI_MINOR, "pipeline", "0.1.0", ZP_KIND_PARALLEL,
  "pipeline parallelism (Lua schedules, point-to-point activations; executor in the core: core/pipeline_exec.c)", NULL, NULL, &p_ops, NULL,
};
ZP_PLUGIN_EXPORT const zp_plugin_desc* zp_plugin_entry(void) { return &p_desc; }
