/* config.h: the typed configuration schema and the validated configuration.
 * Invariants: every key a run reads is in the schema (core/config_schema.c) with a type, a
 * default, a range or choice list and a doc line; a zp_config is only ever produced by
 * validation against it, so code that reads a key never sees a wrong type. Errors name the
 * file, line, column and key path ("did you mean" for near-misses). `[ext.*]` tables are free
 * form for out-of-tree plugins and are kept as given. */
#ifndef ZP_CONFIG_H
#define ZP_CONFIG_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "zp/zp_plugin.h"

typedef enum { ZC_INT, ZC_FLOAT, ZC_BOOL, ZC_STRING, ZC_INT_LIST } zc_type;

typedef struct {
  const char* path;     /* "train.micro_batch" */
  zc_type type;
  const char* def;      /* default as TOML text ("8", "6e-4", "\"cpu\"", "true", "[]") */
  double min, max;      /* numeric range (inclusive) when min <= max */
  const char* choices;  /* "|"-separated allowed strings, or NULL */
  const char* doc;
} zc_key;

extern const zc_key zp_config_schema[];
extern const size_t zp_config_schema_len;

typedef struct {
  zc_type type;
  int64_t i;
  double f;
  int b;
  char* s;
  int64_t* list;
  size_t list_len;
  int set;              /* 1 if given in the file or --set (else the default) */
  char origin[256];     /* "examples/tiny.toml:12:1" or "--set" or "default" */
} zc_value;

typedef struct zp_config {
  zc_value* v;          /* parallel to zp_config_schema */
  char path[1024];      /* the config file ("" when built from defaults only) */
  char dir[1024];       /* its directory: relative paths in the file resolve against it */
  struct zt_value* ext; /* [ext] table (may be NULL) */
  struct zt_value* ext_set; /* ext.* values given with --set (looked up first; may be NULL) */
} zp_config;

/* Load and validate a file, then apply "--set" overrides ("section.key=value"). */
int zp_config_load(zp_config* c, const char* path, const char* const* sets, int n_sets,
                   char* err, size_t errlen);
/* Validate a TOML text (path used in messages only). */
int zp_config_load_text(zp_config* c, const char* text, size_t len, const char* path,
                        const char* const* sets, int n_sets, char* err, size_t errlen);
int zp_config_defaults(zp_config* c);
int zp_config_set(zp_config* c, const char* assignment, char* err, size_t errlen);
/* After all values are in: checks combinations (offload.param needs stage3, ...). */
int zp_config_check(const zp_config* c, char* err, size_t errlen);
void zp_config_free(zp_config* c);

/* Typed access; the path must be in the schema (programming error otherwise: returns 0/""). */
int64_t zp_cfg_int(const zp_config* c, const char* path);
double zp_cfg_float(const zp_config* c, const char* path);
int zp_cfg_bool(const zp_config* c, const char* path);
const char* zp_cfg_str(const zp_config* c, const char* path);
const zc_value* zp_cfg_get(const zp_config* c, const char* path);
const zc_key* zp_cfg_key(const char* path);
/* Plugin options: values under [ext] (and --set ext.*=...), read by plugins through the host's
 * config_* calls with paths "ext.<table>.<key>". The core checks only TOML syntax there; the
 * plugin owns the meaning. Returns ZP_OK with *out set; ZP_OK with *out untouched when the key
 * is absent (so the caller's default stands); ZP_E_INVALID when it is present with another
 * type, with err naming the path, where it was given and both types. float accepts integers;
 * a string stays valid as long as the config. */
int zp_cfg_ext_int(const zp_config* c, const char* path, int64_t* out, char* err, size_t errlen);
int zp_cfg_ext_float(const zp_config* c, const char* path, double* out, char* err, size_t errlen);
int zp_cfg_ext_bool(const zp_config* c, const char* path, int* out, char* err, size_t errlen);
int zp_cfg_ext_string(const zp_config* c, const char* path, const char** out, char* err, size_t errlen);
/* 1 if path is "ext" or below it. */
int zp_cfg_is_ext(const char* path);
/* Resolve a path value relative to the config file's directory ("" stays ""). */
void zp_cfg_path(const zp_config* c, const char* key, char* out, size_t n);
/* Markdown reference generated from the schema (docs/config.md is this output). */
void zp_config_write_doc(FILE* f);
/* Print the effective config as TOML (with origins as comments). */
void zp_config_dump(const zp_config* c, FILE* f);
/* Levenshtein distance, exposed for tests. */
int zp_edit_distance(const char* a, const char* b);
#endif
