/* fuzz_config.c: libFuzzer target for the configuration layer (core/config.c, config_schema.c,
 * toml.c). Input: TOML text, optionally followed by a NUL byte and a "--set" assignment
 * ("section.key=value"). The text goes through zp_config_load_text; the assignment through
 * zp_config_set (on the loaded config, else on the defaults), then zp_config_check, the typed
 * getters and zp_config_dump. Property: a config that loaded and passed zp_config_check dumps
 * to TOML that loads again with the same values.
 * Failure: any crash, leak, undefined behaviour, or abort() from the dump round-trip check. */
#define _GNU_SOURCE /* open_memstream */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

static FILE* devnull;

/* Same schema values (not origins) in a and b. */
static int same_values(const zp_config* a, const zp_config* b, size_t* bad) {
  for (size_t i = 0; i < zp_config_schema_len; i++) {
    const zc_value *x = &a->v[i], *y = &b->v[i];
    int eq = 1;
    switch (zp_config_schema[i].type) {
      case ZC_INT: eq = x->i == y->i; break;
      case ZC_FLOAT: eq = x->f == y->f || (x->f != x->f && y->f != y->f); break;
      case ZC_BOOL: eq = !x->b == !y->b; break;
      case ZC_STRING: eq = strcmp(x->s ? x->s : "", y->s ? y->s : "") == 0; break;
      case ZC_INT_LIST:
        eq = x->list_len == y->list_len &&
             (!x->list_len || memcmp(x->list, y->list, x->list_len * sizeof(int64_t)) == 0);
        break;
    }
    if (!eq) {
      *bad = i;
      return 0;
    }
  }
  return 1;
}

static void round_trip(const zp_config* c) {
  char* text = NULL;
  size_t len = 0;
  FILE* m = open_memstream(&text, &len);
  if (!m) return;
  zp_config_dump(c, m);
  fclose(m);
  zp_config c2;
  char err[1024] = "";
  int rc = zp_config_load_text(&c2, text, len, "dump.toml", NULL, 0, err, sizeof err);
  size_t bad = 0;
  if (rc != 0) {
    fprintf(stderr, "fuzz_config: zp_config_dump output does not load again: %s\n--- dump ---\n%s", err, text);
    abort();
  }
  if (!same_values(c, &c2, &bad)) {
    fprintf(stderr, "fuzz_config: dump round trip changed %s\n--- dump ---\n%s", zp_config_schema[bad].path, text);
    abort();
  }
  zp_config_free(&c2);
  free(text);
}

static void exercise(const zp_config* c) {
  for (size_t i = 0; i < zp_config_schema_len; i++) {
    const char* p = zp_config_schema[i].path;
    switch (zp_config_schema[i].type) {
      case ZC_INT: (void)zp_cfg_int(c, p); break;
      case ZC_FLOAT: (void)zp_cfg_float(c, p); break;
      case ZC_BOOL: (void)zp_cfg_bool(c, p); break;
      case ZC_STRING: {
        char out[2300];
        (void)zp_cfg_str(c, p);
        zp_cfg_path(c, p, out, sizeof out);
        break;
      }
      case ZC_INT_LIST: (void)zp_cfg_get(c, p); break;
    }
  }
  if (devnull) zp_config_dump(c, devnull);
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (!devnull) devnull = fopen("/dev/null", "w");
  const uint8_t* nul = memchr(data, 0, size);
  size_t tlen = nul ? (size_t)(nul - data) : size;
  /* exact-size heap copies so reads past the end are caught */
  char* text = malloc(tlen ? tlen : 1);
  if (!text) return 0;
  if (tlen) memcpy(text, data, tlen);
  char* set = NULL;
  if (nul) {
    size_t sl = size - tlen - 1;
    set = malloc(sl + 1);
    if (!set) {
      free(text);
      return 0;
    }
    memcpy(set, nul + 1, sl);
    set[sl] = 0; /* strlen may stop earlier at a later NUL: fine */
  }
  char err[1024];
  zp_config c;
  int rc = zp_config_load_text(&c, text, tlen, "fuzz.toml", NULL, 0, err, sizeof err);
  if (rc != 0) {
    /* a failed load still owns its defaults; free them, then try --set on fresh defaults */
    zp_config_free(&c);
    if (zp_config_defaults(&c) != 0) {
      zp_config_free(&c);
      free(text);
      free(set);
      return 0;
    }
  }
  if (set) (void)zp_config_set(&c, set, err, sizeof err);
  if (zp_config_check(&c, err, sizeof err) == 0) round_trip(&c);
  exercise(&c);
  zp_config_free(&c);
  /* the same assignment through the load_text path */
  if (set) {
    const char* sets[1] = {set};
    rc = zp_config_load_text(&c, text, tlen, "dir/fuzz.toml", sets, 1, err, sizeof err);
    zp_config_free(&c);
  }
  free(text);
  free(set);
  return 0;
}
