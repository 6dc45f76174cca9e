/* cmd_toml.c: `zp toml-decode`, the toml-test decoder contract. Reads all of stdin as raw
 * bytes; valid TOML -> tagged JSON on stdout and return 0; invalid -> "<stdin>:L:C: msg" on
 * stderr and return 1. Nothing is written to stderr on success. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "toml.h"

int zp_cmd_toml_decode(int argc, char** argv) {
  (void)argc;
  (void)argv;
  size_t cap = 1 << 16, len = 0;
  char* buf = (char*)malloc(cap);
  if (!buf) {
    fprintf(stderr, "toml-decode: out of memory\n");
    return 1;
  }
  for (;;) {
    if (len == cap) {
      size_t nc = cap * 2;
      char* nb = (char*)realloc(buf, nc);
      if (!nb) {
        free(buf);
        fprintf(stderr, "toml-decode: out of memory\n");
        return 1;
      }
      buf = nb;
      cap = nc;
    }
    size_t got = fread(buf + len, 1, cap - len, stdin);
    len += got;
    if (got == 0) break;
  }
  if (ferror(stdin)) {
    free(buf);
    fprintf(stderr, "toml-decode: error reading stdin\n");
    return 1;
  }
  char err[512];
  zt_value* root = zt_parse(buf, len, "<stdin>", err, sizeof err);
  free(buf);
  if (!root) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  int rc = zt_write_tagged_json(root, stdout);
  fputc('\n', stdout);
  zt_free(root);
  if (rc != 0 || fflush(stdout) != 0 || ferror(stdout)) {
    fprintf(stderr, "toml-decode: error writing stdout\n");
    return 1;
  }
  return 0;
}
