/* zt_run.h: a single-rank run opened from --set style assignments (an empty config file), its
 * weights initialised, for the unit tests that drive zp_run directly. Failures are CHECKed
 * (with the config's or the run's message) and returned. Include after zt.h. */
#ifndef ZT_RUN_H
#define ZT_RUN_H
#include "config.h"
#include "runtime.h"

static inline int zt_open_run(zp_run* r, zp_config* c, const char* const* sets, int n, const char* name) {
  char err[1024];
  int rc = zp_config_load_text(c, "", 0, name, sets, n, err, sizeof err);
  CHECK_MSG(rc == 0, "%s", err);
  if (rc) return rc;
  zp_run_opts o = {0};
  o.world = 1;
  rc = zp_run_open(r, c, &o);
  CHECK_MSG(rc == 0, "%s", r->err);
  if (rc) return rc;
  rc = zp_run_init_weights(r);
  CHECK_MSG(rc == 0, "%s", r->err);
  return rc;
}
#endif
