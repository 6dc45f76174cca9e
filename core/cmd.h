/* cmd.h: entry points of the zp subcommands (argc/argv start at the subcommand name's
 * arguments as passed by cli/main.c). Each returns the process exit status. */
#ifndef ZP_CMD_H
#define ZP_CMD_H

int zp_cmd_toml_decode(int argc, char** argv);   /* toml-test decoder: stdin TOML -> tagged JSON */
int zp_cmd_data(int argc, char** argv);         /* zp data prepare|info: text -> token shards (cmd_data.c) */

/* zp launch -n N [--timeout S] [--] CONFIG.toml|SUBCOMMAND|/path ARGS... (launch.c) */
int zp_cmd_launch(int argc, char** argv);

/* zp run SCRIPT.lua [--out DIR] [--set k=v]... [--arg n=v]...: Lua experiment (cmd_run.c) */
int zp_cmd_run(int argc, char** argv);

/* zp nvme-bench DIR [--size GB] [--seconds S]: NVMe engine bandwidth grid (cmd_nvme_bench.c) */
int zp_cmd_nvme_bench(int argc, char** argv);

/* zp schedule check SCRIPT --stages P --micro-batches M [--chunks V] [--times ...] |
 * zp schedule split CONFIG.toml: pipeline schedules and stage splits (cmd_schedule.c) */
int zp_cmd_schedule(int argc, char** argv);

/* zp ckpt info|compare|logits, zp export, zp import (cmd_ckpt.c) */
int zp_cmd_ckpt(int argc, char** argv);
int zp_cmd_export(int argc, char** argv);
int zp_cmd_import(int argc, char** argv);

#endif
