/* fuzz_toml.c: libFuzzer target for core/toml.c. Parses the input as a document; if it
 * parses, writes tagged JSON to /dev/null and feeds a prefix of the input to zt_parse_value,
 * setting the result into the tree with zt_table_set. Any crash/leak/UB is a bug. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "toml.h"

static FILE* devnull;

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  char err[256];
  if (!devnull) devnull = fopen("/dev/null", "w");
  /* exact-size heap copy so reads past the end are caught */
  char* buf = (char*)malloc(size ? size : 1);
  if (!buf) return 0;
  if (size) memcpy(buf, data, size);
  zt_value* root = zt_parse(buf, size, "fuzz", err, sizeof err);
  if (root) {
    if (devnull) zt_write_tagged_json(root, devnull);
  }
  /* value API on a NUL-terminated prefix (up to the first newline, max 256 bytes) */
  size_t n = 0;
  while (n < size && n < 256 && data[n] != '\n') n++;
  char* pre = (char*)malloc(n + 1);
  if (pre) {
    memcpy(pre, data, n);
    pre[n] = 0;
    zt_value* v = zt_parse_value(pre, "fuzz-value", err, sizeof err);
    if (v) {
      if (devnull) zt_write_tagged_json(v, devnull);
      if (root) {
        /* use the first key of the document (or a fixed one) as the path */
        const char* path = "fuzz.\"x\"";
        if (zt_table_len(root) && zt_table_key_len(root, 0) == strlen(zt_table_key(root, 0)))
          path = zt_table_key(root, 0);
        char* pc = strdup(path);
        if (pc && zt_table_set(root, pc, v, err, sizeof err) == 0) v = NULL;
        free(pc);
        if (devnull) zt_write_tagged_json(root, devnull);
      }
      zt_free(v);
    }
    free(pre);
  }
  zt_free(root);
  free(buf);
  return 0;
}
