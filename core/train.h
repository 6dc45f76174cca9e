/* train.h: the training loop and sampling entry points used by the CLI and embedders. */
#ifndef ZP_TRAIN_H
#define ZP_TRAIN_H
#include <stddef.h>

#include "config.h"
#include "zp/zp_plugin.h"

/* Runs the whole training job described by cfg on this rank (comm NULL = single rank). */
int zp_train(zp_config* cfg, zp_comm* comm, char* err, size_t errlen);
/* Generates text from the newest checkpoint in train.out_dir (or ckpt_dir when given). */
int zp_sample(zp_config* cfg, const char* ckpt_dir, char* err, size_t errlen);
/* Locate a shipped Lua script (sub = "schedules", "hooks", ...) or a path relative to the config. */
int zp_find_script(const zp_config* cfg, const char* sub, const char* name, char* out, size_t n);
#endif
