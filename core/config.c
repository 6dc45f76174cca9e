/* config.c: loading, validation and typed access for the configuration (see config.h).
 * Invariants: nothing is allocated for training before zp_config_load + zp_config_check have
 * succeeded; every error message names where the bad value came from (file:line:col or
 * "--set") and the full key path; values keep their origin for `zp config` dumps. */
#include "config.h"
#include "seterr.h"

#include <ctype.h>
#include <errno.h>
#include <libgen.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "toml.h"


int zp_edit_distance(const char* a, const char* b) {
  size_t la = strlen(a), lb = strlen(b);
  if (la > 64 || lb > 64) return 99;
  int d[65][65];
  for (size_t i = 0; i <= la; i++) d[i][0] = (int)i;
  for (size_t j = 0; j <= lb; j++) d[0][j] = (int)j;
  for (size_t i = 1; i <= la; i++)
    for (size_t j = 1; j <= lb; j++) {
      int c = a[i - 1] == b[j - 1] ? 0 : 1;
      int m = d[i - 1][j] + 1;
      if (d[i][j - 1] + 1 < m) m = d[i][j - 1] + 1;
      if (d[i - 1][j - 1] + c < m) m = d[i - 1][j - 1] + c;
      /* transposition */
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1 < m)
        m = d[i - 2][j - 2] + 1;
      d[i][j] = m;
    }
  return d[la][lb];
}

static long find_key(const char* path) {
  for (size_t i = 0; i < zp_config_schema_len; i++)
    if (strcmp(zp_config_schema[i].path, path) == 0) return (long)i;
  return -1;
}

const zc_key* zp_cfg_key(const char* path) {
  long i = find_key(path);
  return i < 0 ? NULL : &zp_config_schema[i];
}

/* Is `prefix` a section (a proper prefix of some key followed by '.')? */
static int is_section(const char* prefix) {
  size_t n = strlen(prefix);
  for (size_t i = 0; i < zp_config_schema_len; i++)
    if (strncmp(zp_config_schema[i].path, prefix, n) == 0 && zp_config_schema[i].path[n] == '.') return 1;
  return 0;
}

/* " (did you mean 'train.micro_batch'?)" or "" */
static void suggest(const char* path, int want_section, char* out, size_t n) {
  out[0] = 0;
  int best = 99;
  char bestp[256] = "";
  for (size_t i = 0; i < zp_config_schema_len; i++) {
    char cand[256];
    snprintf(cand, sizeof cand, "%s", zp_config_schema[i].path);
    if (want_section) {
      /* candidate sections: every prefix of the key */
      for (char* dot = strchr(cand, '.'); dot; dot = strchr(dot + 1, '.')) {
        char sec[256];
        size_t k = (size_t)(dot - cand);
        memcpy(sec, cand, k);
        sec[k] = 0;
        int d = zp_edit_distance(path, sec);
        if (d < best) { best = d; snprintf(bestp, sizeof bestp, "%s", sec); }
      }
    } else {
      int d = zp_edit_distance(path, cand);
      /* also compare the last component within the same section */
      const char* pl = strrchr(path, '.');
      const char* cl = strrchr(cand, '.');
      if (pl && cl) {
        int d2 = zp_edit_distance(pl + 1, cl + 1);
        if ((size_t)(pl - path) == (size_t)(cl - cand) && strncmp(path, cand, (size_t)(pl - path)) == 0 && d2 < d) d = d2;
        if (d2 == 0 && d > 0) d = 1; /* right key, wrong section */
      }
      if (d < best) { best = d; snprintf(bestp, sizeof bestp, "%s", cand); }
    }
  }
  size_t len = strlen(path);
  int limit = len < 6 ? 2 : (int)(len / 3);
  if (limit > 4) limit = 4;
  if (best <= limit && bestp[0]) snprintf(out, n, " (did you mean '%s'?)", bestp);
}

static const char* type_name(zc_type t) {
  switch (t) {
    case ZC_INT: return "integer";
    case ZC_FLOAT: return "float";
    case ZC_BOOL: return "boolean";
    case ZC_STRING: return "string";
    case ZC_INT_LIST: return "array of integers";
  }
  return "?";
}

static void value_clear(zc_value* v) {
  free(v->s);
  free(v->list);
  v->s = NULL;
  v->list = NULL;
  v->list_len = 0;
}

/* Convert a parsed TOML value into schema key k. origin names where it came from. */
static int assign(zc_value* dst, const zc_key* k, const zt_value* tv, const char* origin,
                  char* err, size_t errlen) {
  zt_type t = zt_kind(tv);
  zc_value nv;
  memset(&nv, 0, sizeof nv);
  nv.type = k->type;
  switch (k->type) {
    case ZC_INT:
      if (t != ZT_INTEGER) {
        seterr(err, errlen, "%s: %s must be an integer, got %s", origin, k->path, zt_type_name(t));
        return ZP_E_INVALID;
      }
      nv.i = zt_int(tv);
      nv.f = (double)nv.i;
      break;
    case ZC_FLOAT:
      if (t == ZT_INTEGER) nv.f = (double)zt_int(tv);
      else if (t == ZT_FLOAT) nv.f = zt_float(tv);
      else {
        seterr(err, errlen, "%s: %s must be a number, got %s", origin, k->path, zt_type_name(t));
        return ZP_E_INVALID;
      }
      if (nv.f != nv.f) {
        seterr(err, errlen, "%s: %s must be a finite number, got nan", origin, k->path);
        return ZP_E_INVALID;
      }
      break;
    case ZC_BOOL:
      if (t != ZT_BOOL) {
        seterr(err, errlen, "%s: %s must be true or false, got %s", origin, k->path, zt_type_name(t));
        return ZP_E_INVALID;
      }
      nv.b = zt_bool(tv);
      break;
    case ZC_STRING:
      if (t != ZT_STRING) {
        seterr(err, errlen, "%s: %s must be a string, got %s", origin, k->path, zt_type_name(t));
        return ZP_E_INVALID;
      }
      if (strlen(zt_string(tv)) != zt_string_len(tv)) {
        seterr(err, errlen, "%s: %s must not contain NUL characters", origin, k->path);
        return ZP_E_INVALID;
      }
      nv.s = strdup(zt_string(tv));
      if (k->choices) {
        int ok = 0;
        const char* c = k->choices;
        size_t sl = strlen(nv.s);
        while (*c) {
          const char* e = strchr(c, '|');
          size_t cl = e ? (size_t)(e - c) : strlen(c);
          if (cl == sl && strncmp(c, nv.s, cl) == 0) ok = 1;
          c += cl + (e ? 1 : 0);
        }
        if (!ok) {
          char choices[256];
          snprintf(choices, sizeof choices, "%s", k->choices);
          for (char* p = choices; *p; p++) if (*p == '|') *p = ',';
          seterr(err, errlen, "%s: %s = \"%s\" is not one of: %s", origin, k->path, nv.s, choices);
          free(nv.s);
          return ZP_E_INVALID;
        }
      }
      break;
    case ZC_INT_LIST: {
      if (t != ZT_ARRAY) {
        seterr(err, errlen, "%s: %s must be an array of integers, got %s", origin, k->path, zt_type_name(t));
        return ZP_E_INVALID;
      }
      size_t n = zt_array_len(tv);
      nv.list = calloc(n ? n : 1, sizeof(int64_t));
      nv.list_len = n;
      for (size_t i = 0; i < n; i++) {
        const zt_value* e = zt_array_at(tv, i);
        if (zt_kind(e) != ZT_INTEGER) {
          seterr(err, errlen, "%s: %s[%zu] must be an integer, got %s", origin, k->path, i, zt_type_name(zt_kind(e)));
          free(nv.list);
          return ZP_E_INVALID;
        }
        nv.list[i] = zt_int(e);
      }
      break;
    }
  }
  if ((k->type == ZC_INT || k->type == ZC_FLOAT) && k->min <= k->max) {
    double x = k->type == ZC_INT ? (double)nv.i : nv.f;
    if (x < k->min || x > k->max) {
      seterr(err, errlen, "%s: %s = %g is out of range [%g, %g]", origin, k->path, x, k->min, k->max);
      value_clear(&nv);
      return ZP_E_INVALID;
    }
  }
  value_clear(dst);
  nv.set = 1;
  snprintf(nv.origin, sizeof nv.origin, "%s", origin);
  *dst = nv;
  return ZP_OK;
}

int zp_config_defaults(zp_config* c) {
  memset(c, 0, sizeof *c);
  c->v = calloc(zp_config_schema_len, sizeof(zc_value));
  if (!c->v) return ZP_E_NOMEM;
  for (size_t i = 0; i < zp_config_schema_len; i++) {
    char e[256];
    zt_value* tv = zt_parse_value(zp_config_schema[i].def, "default", e, sizeof e);
    if (!tv || assign(&c->v[i], &zp_config_schema[i], tv, "default", e, sizeof e) != ZP_OK) {
      fprintf(stderr, "zp: internal: bad default for %s: %s\n", zp_config_schema[i].path, e);
      zt_free(tv);
      return ZP_E_INTERNAL;
    }
    c->v[i].set = 0;
    zt_free(tv);
  }
  return ZP_OK;
}

/* Walk a table; prefix is the dotted path so far. */
static int walk(zp_config* c, const zt_value* t, const char* prefix, const char* file, char* err,
                size_t errlen) {
  size_t n = zt_table_len(t);
  for (size_t i = 0; i < n; i++) {
    const char* key = zt_table_key(t, i);
    const zt_value* v = zt_table_at(t, i);
    char path[512];
    if (prefix[0]) snprintf(path, sizeof path, "%s.%s", prefix, key);
    else snprintf(path, sizeof path, "%s", key);
    char origin[600];
    snprintf(origin, sizeof origin, "%s:%d:%d", file, zt_table_key_line(t, i), zt_table_key_col(t, i));
    if (strcmp(path, "ext") == 0) {
      if (zt_kind(v) != ZT_TABLE) {
        seterr(err, errlen, "%s: [ext] must be a table", origin);
        return ZP_E_INVALID;
      }
      continue; /* free form, kept in the tree */
    }
    long ki = find_key(path);
    if (ki >= 0) {
      int rc = assign(&c->v[ki], &zp_config_schema[ki], v, origin, err, errlen);
      if (rc) return rc;
      continue;
    }
    if (is_section(path)) {
      if (zt_kind(v) != ZT_TABLE) {
        seterr(err, errlen, "%s: %s is a section; expected a table, got %s", origin, path,
               zt_type_name(zt_kind(v)));
        return ZP_E_INVALID;
      }
      int rc = walk(c, v, path, file, err, errlen);
      if (rc) return rc;
      continue;
    }
    char sug[300];
    int sec = zt_kind(v) == ZT_TABLE;
    suggest(path, sec, sug, sizeof sug);
    seterr(err, errlen, "%s: unknown %s '%s'%s", origin, sec ? "section" : "key", path, sug);
    return ZP_E_INVALID;
  }
  return ZP_OK;
}

static int apply_sets(zp_config* c, const char* const* sets, int n_sets, char* err, size_t errlen) {
  for (int i = 0; i < n_sets; i++) {
    int rc = zp_config_set(c, sets[i], err, errlen);
    if (rc) return rc;
  }
  return zp_config_check(c, err, errlen);
}

int zp_config_load_text(zp_config* c, const char* text, size_t len, const char* path,
                        const char* const* sets, int n_sets, char* err, size_t errlen) {
  int rc = zp_config_defaults(c);
  if (rc) return rc;
  snprintf(c->path, sizeof c->path, "%s", path ? path : "");
  char tmp[1024];
  snprintf(tmp, sizeof tmp, "%s", path ? path : ".");
  snprintf(c->dir, sizeof c->dir, "%s", dirname(tmp));
  char perr[1024];
  zt_value* root = zt_parse(text, len, path, perr, sizeof perr);
  if (!root) {
    seterr(err, errlen, "%s", perr);
    return ZP_E_INVALID;
  }
  rc = walk(c, root, "", path, err, errlen);
  if (rc == ZP_OK) {
    zt_value* ext = zt_table_get(root, "ext");
    if (ext) {
      /* keep the tree alive for plugins: the root owns everything */
      c->ext = root;
      root = NULL;
    }
  }
  zt_free(root);
  if (rc) return rc;
  return apply_sets(c, sets, n_sets, err, errlen);
}

int zp_config_load(zp_config* c, const char* path, const char* const* sets, int n_sets,
                   char* err, size_t errlen) {
  FILE* f = fopen(path, "rb");
  if (!f) {
    seterr(err, errlen, "%s: cannot open config: %s", path, strerror(errno));
    memset(c, 0, sizeof *c);
    return ZP_E_IO;
  }
  size_t cap = 1 << 16, len = 0;
  char* buf = malloc(cap);
  for (;;) {
    if (len == cap) {
      cap *= 2;
      if (cap > (64u << 20)) {
        fclose(f);
        free(buf);
        seterr(err, errlen, "%s: config larger than 64 MiB", path);
        memset(c, 0, sizeof *c);
        return ZP_E_INVALID;
      }
      buf = realloc(buf, cap);
    }
    size_t r = fread(buf + len, 1, cap - len, f);
    len += r;
    if (r == 0) break;
  }
  int ioerr = ferror(f);
  fclose(f);
  if (ioerr) {
    free(buf);
    seterr(err, errlen, "%s: read error", path);
    memset(c, 0, sizeof *c);
    return ZP_E_IO;
  }
  int rc = zp_config_load_text(c, buf, len, path, sets, n_sets, err, errlen);
  free(buf);
  return rc;
}

/* ---- plugin options: [ext] ---- */

int zp_cfg_is_ext(const char* path) { return strncmp(path, "ext", 3) == 0 && (path[3] == 0 || path[3] == '.'); }

/* Parse a TOML value; a bare word that is not one is a string (--set ext.p.mode=fast). */
static zt_value* parse_set_value(const char* val, char* perr, size_t n) {
  zt_value* tv = zt_parse_value(val, "--set", perr, n);
  if (tv) return tv;
  size_t len = strlen(val);
  char* q = malloc(len * 2 + 3);
  if (!q) return NULL;
  size_t o = 0;
  q[o++] = '"';
  for (size_t i = 0; i < len; i++) {
    if (val[i] == '"' || val[i] == '\\') q[o++] = '\\';
    q[o++] = val[i];
  }
  q[o++] = '"';
  q[o] = 0;
  tv = zt_parse_value(q, "--set", perr, n);
  free(q);
  return tv;
}

/* --set ext.<table>.<key>=value: kept in its own tree (looked up before the file's) so that
 * messages can say the value came from --set. The core does not interpret it. */
static int set_ext(zp_config* c, const char* path, const char* val, char* err, size_t errlen) {
  if (strlen(path) < 5 || path[strlen(path) - 1] == '.') {
    seterr(err, errlen, "--set %s: give a key under ext (ext.<plugin>.<key>=value)", path);
    return ZP_E_INVALID;
  }
  char perr[512];
  zt_value* tv = parse_set_value(val, perr, sizeof perr);
  if (!tv) {
    seterr(err, errlen, "--set %s: cannot parse value '%s': %s", path, val, perr);
    return ZP_E_INVALID;
  }
  if (!c->ext_set) {
    c->ext_set = zt_parse("", 0, "--set", perr, sizeof perr);
    if (!c->ext_set) {
      zt_free(tv);
      seterr(err, errlen, "--set %s: %s", path, perr);
      return ZP_E_NOMEM;
    }
  }
  if (zt_table_set(c->ext_set, path, tv, perr, sizeof perr)) {
    zt_free(tv);
    seterr(err, errlen, "--set %s: %s", path, perr);
    return ZP_E_INVALID;
  }
  return ZP_OK;
}

/* Walk a dotted path (plain segments) from a root table; NULL if any part is absent. */
static const zt_value* tree_get(const zt_value* root, const char* path) {
  const zt_value* t = root;
  char seg[256];
  const char* p = path;
  while (t) {
    const char* dot = strchr(p, '.');
    size_t n = dot ? (size_t)(dot - p) : strlen(p);
    if (n == 0 || n >= sizeof seg || zt_kind(t) != ZT_TABLE) return NULL;
    memcpy(seg, p, n);
    seg[n] = 0;
    t = zt_table_get(t, seg);
    if (!dot) return t;
    p = dot + 1;
  }
  return NULL;
}

static const char* zt_article_name(zt_type t) {
  return t == ZT_ARRAY || t == ZT_INTEGER ? "an" : "a";
}

/* The value at path (ext_set first) and where it came from; NULL when absent or not ext. */
static const zt_value* ext_lookup(const zp_config* c, const char* path, char* origin, size_t n) {
  if (!zp_cfg_is_ext(path)) return NULL;
  const zt_value* v = c->ext_set ? tree_get(c->ext_set, path) : NULL;
  if (v) {
    snprintf(origin, n, "--set %s", path);
    return v;
  }
  v = c->ext ? tree_get(c->ext, path) : NULL;
  if (v) snprintf(origin, n, "%s:%d:%d", c->path[0] ? c->path : "<config>", zt_line(v), zt_col(v));
  return v;
}

static int ext_typed(const zp_config* c, const char* path, zt_type want, int allow_int, const zt_value** out, char* err,
                     size_t errlen) {
  char origin[1300];
  const zt_value* v = ext_lookup(c, path, origin, sizeof origin);
  *out = NULL;
  if (!v) return ZP_OK;
  zt_type k = zt_kind(v);
  if (k != want && !(allow_int && k == ZT_INTEGER)) {
    seterr(err, errlen, "%s: plugin option %s is %s %s; the plugin reads it as %s %s", origin, path,
           zt_article_name(k), zt_type_name(k), zt_article_name(want), zt_type_name(want));
    return ZP_E_INVALID;
  }
  *out = v;
  return ZP_OK;
}

int zp_cfg_ext_int(const zp_config* c, const char* path, int64_t* out, char* err, size_t errlen) {
  const zt_value* v;
  int rc = ext_typed(c, path, ZT_INTEGER, 0, &v, err, errlen);
  if (!rc && v) *out = zt_int(v);
  return rc;
}
int zp_cfg_ext_float(const zp_config* c, const char* path, double* out, char* err, size_t errlen) {
  const zt_value* v;
  int rc = ext_typed(c, path, ZT_FLOAT, 1, &v, err, errlen);
  if (!rc && v) *out = zt_kind(v) == ZT_INTEGER ? (double)zt_int(v) : zt_float(v);
  return rc;
}
int zp_cfg_ext_bool(const zp_config* c, const char* path, int* out, char* err, size_t errlen) {
  const zt_value* v;
  int rc = ext_typed(c, path, ZT_BOOL, 0, &v, err, errlen);
  if (!rc && v) *out = zt_bool(v);
  return rc;
}
int zp_cfg_ext_string(const zp_config* c, const char* path, const char** out, char* err, size_t errlen) {
  const zt_value* v;
  int rc = ext_typed(c, path, ZT_STRING, 0, &v, err, errlen);
  if (!rc && v) *out = zt_string(v);
  return rc;
}

int zp_config_set(zp_config* c, const char* assignment, char* err, size_t errlen) {
  const char* eq = strchr(assignment, '=');
  if (!eq || eq == assignment) {
    seterr(err, errlen, "--set %s: expected section.key=value", assignment);
    return ZP_E_INVALID;
  }
  char path[512];
  size_t kl = (size_t)(eq - assignment);
  if (kl >= sizeof path) kl = sizeof path - 1;
  memcpy(path, assignment, kl);
  path[kl] = 0;
  /* trim spaces */
  while (kl && isspace((unsigned char)path[kl - 1])) path[--kl] = 0;
  const char* val = eq + 1;
  while (isspace((unsigned char)*val)) val++;
  if (zp_cfg_is_ext(path)) return set_ext(c, path, val, err, errlen);
  long ki = find_key(path);
  if (ki < 0) {
    char sug[300];
    suggest(path, 0, sug, sizeof sug);
    seterr(err, errlen, "--set: unknown key '%s'%s", path, sug);
    return ZP_E_INVALID;
  }
  const zc_key* k = &zp_config_schema[ki];
  char origin[600];
  snprintf(origin, sizeof origin, "--set %s", path);
  char perr[512];
  zt_value* tv = zt_parse_value(val, "--set", perr, sizeof perr);
  if (!tv && k->type == ZC_STRING) {
    /* bare words are strings: --set train.device=cuda */
    size_t n = strlen(val);
    char* q = malloc(n * 2 + 3);
    size_t o = 0;
    q[o++] = '"';
    for (size_t i = 0; i < n; i++) {
      if (val[i] == '"' || val[i] == '\\') q[o++] = '\\';
      q[o++] = val[i];
    }
    q[o++] = '"';
    q[o] = 0;
    tv = zt_parse_value(q, "--set", perr, sizeof perr);
    free(q);
  }
  if (!tv) {
    seterr(err, errlen, "%s: cannot parse value '%s' as %s: %s", origin, val, type_name(k->type), perr);
    return ZP_E_INVALID;
  }
  int rc = assign(&c->v[ki], k, tv, origin, err, errlen);
  zt_free(tv);
  return rc;
}

static int plugin_is(const zp_config* c, const char* key, const char* name) {
  return strcmp(zp_cfg_str(c, key), name) == 0;
}

int zp_config_check(const zp_config* c, char* err, size_t errlen) {
  int64_t d = zp_cfg_int(c, "model.d_model"), h = zp_cfg_int(c, "model.n_head");
  if (d % h != 0) {
    seterr(err, errlen, "%s: model.d_model = %lld is not divisible by model.n_head = %lld",
           zp_cfg_get(c, "model.d_model")->origin, (long long)d, (long long)h);
    return ZP_E_INVALID;
  }
  { /* tensor parallelism splits the attention heads (docs/tensor.md) */
    int64_t tp = zp_cfg_int(c, "parallel.tp"), nh = zp_cfg_int(c, "model.n_head");
    if (tp > 1 && nh % tp) {
      seterr(err, errlen, "%s: parallel.tp = %lld does not divide model.n_head = %lld: each tensor-parallel rank holds n_head/tp attention heads",
             zp_cfg_get(c, "parallel.tp")->origin, (long long)tp, (long long)nh);
      return ZP_E_INVALID;
    }
  }
  if (strcmp(zp_cfg_str(c, "offload.param.plugin"), "none") != 0 &&
      !plugin_is(c, "zero.plugin", "stage3")) {
    seterr(err, errlen,
           "%s: offload.param.plugin = \"%s\" needs zero.plugin = \"stage3\" (parameters can only be "
           "offloaded when they are sharded; zero.plugin is \"%s\")",
           zp_cfg_get(c, "offload.param.plugin")->origin, zp_cfg_str(c, "offload.param.plugin"),
           zp_cfg_str(c, "zero.plugin"));
    return ZP_E_INVALID;
  }
  if (zp_cfg_int(c, "parallel.pp") > 1 && plugin_is(c, "zero.plugin", "stage3")) {
    seterr(err, errlen,
           "%s: zero.plugin = \"stage3\" cannot be combined with pipeline parallelism (parallel.pp = %lld): "
           "stage 3 would gather every stage's parameters once per micro-batch; use stage1 or stage2",
           zp_cfg_get(c, "zero.plugin")->origin, (long long)zp_cfg_int(c, "parallel.pp"));
    return ZP_E_INVALID;
  }
  /* every recompute key works with pipeline parallelism (pipeline_exec.c: shared per-stage regions) */
  const char* nv[] = {"offload.optimizer.plugin", "offload.param.plugin"};
  for (int i = 0; i < 2; i++) {
    const char* p = zp_cfg_str(c, nv[i]);
    if (strcmp(p, "offload_nvme") == 0) {
      const char* pathkey = i == 0 ? "offload.optimizer.path" : "offload.param.path";
      if (!zp_cfg_str(c, pathkey)[0]) {
        seterr(err, errlen, "%s: %s = \"offload_nvme\" needs %s (a directory on a fast disk)",
               zp_cfg_get(c, nv[i])->origin, nv[i], pathkey);
        return ZP_E_INVALID;
      }
    }
  }
  const char* bsk[] = {"offload.optimizer.block_size", "offload.param.block_size"};
  for (int i = 0; i < 2; i++)
    if (zp_cfg_int(c, bsk[i]) % 4096 != 0) {
      seterr(err, errlen, "%s: %s = %lld must be a multiple of 4096 (O_DIRECT)", zp_cfg_get(c, bsk[i])->origin, bsk[i],
             (long long)zp_cfg_int(c, bsk[i]));
      return ZP_E_INVALID;
    }
  if (strcmp(zp_cfg_str(c, "train.precision"), "fp64") == 0 && strcmp(zp_cfg_str(c, "train.device"), "cpu") != 0) {
    seterr(err, errlen, "%s: train.precision = \"fp64\" is for CPU checks only (train.device = \"%s\")",
           zp_cfg_get(c, "train.precision")->origin, zp_cfg_str(c, "train.device"));
    return ZP_E_INVALID;
  }
  if (strcmp(zp_cfg_str(c, "train.precision"), "fp32") == 0 && strcmp(zp_cfg_str(c, "train.device"), "cuda") == 0) {
    seterr(err, errlen, "%s: the cuda backend computes in bf16: set train.precision = \"bf16\"",
           zp_cfg_get(c, "train.precision")->origin);
    return ZP_E_INVALID;
  }
  return ZP_OK;
}

void zp_config_free(zp_config* c) {
  if (c->v)
    for (size_t i = 0; i < zp_config_schema_len; i++) value_clear(&c->v[i]);
  free(c->v);
  c->v = NULL;
  zt_free(c->ext);
  c->ext = NULL;
  zt_free(c->ext_set);
  c->ext_set = NULL;
}

const zc_value* zp_cfg_get(const zp_config* c, const char* path) {
  long i = find_key(path);
  if (i < 0 || !c->v) {
    fprintf(stderr, "zp: internal: config key '%s' is not in the schema\n", path);
    return NULL;
  }
  return &c->v[i];
}

int64_t zp_cfg_int(const zp_config* c, const char* path) {
  const zc_value* v = zp_cfg_get(c, path);
  return v ? v->i : 0;
}
double zp_cfg_float(const zp_config* c, const char* path) {
  const zc_value* v = zp_cfg_get(c, path);
  return v ? v->f : 0.0;
}
int zp_cfg_bool(const zp_config* c, const char* path) {
  const zc_value* v = zp_cfg_get(c, path);
  return v ? v->b : 0;
}
const char* zp_cfg_str(const zp_config* c, const char* path) {
  const zc_value* v = zp_cfg_get(c, path);
  return v && v->s ? v->s : "";
}

void zp_cfg_path(const zp_config* c, const char* key, char* out, size_t n) {
  const char* s = zp_cfg_str(c, key);
  const zc_value* v = zp_cfg_get(c, key);
  if (!s[0] || s[0] == '/' || !v || !v->set || strncmp(v->origin, "--set", 5) == 0 || !c->dir[0])
    snprintf(out, n, "%s", s);
  else
    snprintf(out, n, "%s/%s", c->dir, s);
}

void zp_config_write_doc(FILE* f) {
  fprintf(f, "# Configuration reference\n\n");
  fprintf(f, "Generated from `core/config_schema.c` by `zp config --doc`; a test keeps this file "
             "in step with the code.\n\n");
  fprintf(f, "A run is one TOML file. Unknown keys, wrong types, out-of-range values and impossible "
             "combinations are errors naming the file, line, column and key path. Any key can be "
             "overridden with `--set section.key=value` (checked the same way; bare words are "
             "strings). Relative paths in the file resolve against the file's directory. Tables "
             "under `[ext]` are free-form plugin options: a plugin reads and checks its `[ext.<plugin>]` "
             "keys itself (docs/plugin-guide.md), and `--set ext.<plugin>.<key>=value` works for them "
             "too.\n\n");
  const char* sec = "";
  size_t seclen = 0;
  for (size_t i = 0; i < zp_config_schema_len; i++) {
    const zc_key* k = &zp_config_schema[i];
    const char* dot = strrchr(k->path, '.');
    size_t sl = (size_t)(dot - k->path);
    if (sl != seclen || strncmp(sec, k->path, sl) != 0) {
      sec = k->path;
      seclen = sl;
      fprintf(f, "\n## [%.*s]\n\n| key | type | default | allowed | meaning |\n|---|---|---|---|---|\n", (int)sl, k->path);
    }
    char allowed[256] = "";
    if (k->choices) {
      snprintf(allowed, sizeof allowed, "%s", k->choices);
      for (char* p = allowed; *p; p++) if (*p == '|') *p = ',';
    } else if ((k->type == ZC_INT || k->type == ZC_FLOAT) && k->min <= k->max)
      snprintf(allowed, sizeof allowed, "%g .. %g", k->min, k->max);
    fprintf(f, "| `%s` | %s | `%s` | %s | %s |\n", dot + 1, type_name(k->type), k->def, allowed, k->doc);
  }
  fprintf(f, "\n## Combinations that are refused\n\n"
             "- `offload.param.plugin` other than \"none\" needs `zero.plugin = \"stage3\"`.\n"
             "- `zero.plugin = \"stage3\"` with `parallel.pp > 1`.\n"
             "- `offload_nvme` without its `path`.\n"
             "- `offload.optimizer.block_size` or `offload.param.block_size` not a multiple of 4096.\n"
             "- `train.precision = \"fp64\"` on a device other than cpu; `fp32` on cuda.\n"
             "- `model.d_model` not divisible by `model.n_head`.\n"
             "- `parallel.tp` not dividing `model.n_head` (tensor parallelism splits the heads).\n");
}

/* ---- [ext] in the dump: the plugin options as given (file, then --set), so the effective
 * config (and the copy in every checkpoint) keeps them. Leaves are written as dotted keys
 * under one [ext] header; arrays and tables inside arrays as inline values. A --set value
 * replaces the file's at its path (and everything below it). */
static void dump_tstr(FILE* f, const char* s, size_t n) {
  fputc('"', f);
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
    else if (ch == '\n') fputs("\\n", f);
    else if (ch == '\t') fputs("\\t", f);
    else if (ch < 0x20 || ch == 0x7f) fprintf(f, "\\u%04X", ch);
    else fputc(ch, f);
  }
  fputc('"', f);
}

static void dump_tkey(FILE* f, const char* k, size_t n) {
  int bare = n > 0;
  for (size_t i = 0; i < n && bare; i++)
    bare = isalnum((unsigned char)k[i]) || k[i] == '_' || k[i] == '-';
  if (bare) fwrite(k, 1, n, f);
  else dump_tstr(f, k, n);
}

static void dump_tval(FILE* f, const zt_value* v) {
  switch (zt_kind(v)) {
    case ZT_STRING: dump_tstr(f, zt_string(v), zt_string_len(v)); break;
    case ZT_INTEGER: fprintf(f, "%lld", (long long)zt_int(v)); break;
    case ZT_BOOL: fputs(zt_bool(v) ? "true" : "false", f); break;
    case ZT_FLOAT: {
      double x = zt_float(v);
      char b[64];
      if (isnan(x)) snprintf(b, sizeof b, "nan");
      else if (isinf(x)) snprintf(b, sizeof b, x > 0 ? "inf" : "-inf");
      else {
        snprintf(b, sizeof b, "%.17g", x);
        if (!strpbrk(b, ".eEn")) strcat(b, ".0"); /* stays a float */
      }
      fputs(b, f);
      break;
    }
    case ZT_DATETIME:
    case ZT_DATETIME_LOCAL:
    case ZT_DATE_LOCAL:
    case ZT_TIME_LOCAL: {
      const zt_datetime* d = zt_dt(v);
      zt_type k = zt_kind(v);
      if (k != ZT_TIME_LOCAL) fprintf(f, "%04d-%02d-%02d", d->year, d->month, d->day);
      if (k == ZT_DATE_LOCAL) break;
      if (k != ZT_TIME_LOCAL) fputc('T', f);
      fprintf(f, "%02d:%02d:%02d", d->hour, d->minute, d->second);
      if (d->frac_digits > 0) {
        char fr[16];
        snprintf(fr, sizeof fr, "%09ld", (long)d->nanos);
        fprintf(f, ".%.*s", d->frac_digits > 9 ? 9 : d->frac_digits, fr);
      }
      if (k == ZT_DATETIME) {
        int m = d->offset_min < 0 ? -d->offset_min : d->offset_min;
        if (d->offset_min == 0) fputc('Z', f);
        else fprintf(f, "%c%02d:%02d", d->offset_min < 0 ? '-' : '+', m / 60, m % 60);
      }
      break;
    }
    case ZT_ARRAY:
      fputc('[', f);
      for (size_t i = 0; i < zt_array_len(v); i++) {
        if (i) fputs(", ", f);
        dump_tval(f, zt_array_at(v, i));
      }
      fputc(']', f);
      break;
    case ZT_TABLE:
      fputc('{', f);
      for (size_t i = 0; i < zt_table_len(v); i++) {
        fputs(i ? ", " : " ", f);
        dump_tkey(f, zt_table_key(v, i), zt_table_key_len(v, i));
        fputs(" = ", f);
        dump_tval(f, zt_table_at(v, i));
      }
      fputs(zt_table_len(v) ? " }" : "}", f);
      break;
  }
}

typedef struct ext_seg {
  const char* k;
  size_t n;
  const struct ext_seg* up;
} ext_seg;

static void dump_tpath(FILE* f, const ext_seg* s) {
  if (s->up) {
    dump_tpath(f, s->up);
    fputc('.', f);
  }
  dump_tkey(f, s->k, s->n);
}

/* the entry of table t with key (k, n), comparing whole keys (they may hold NUL bytes) */
static const zt_value* tget(const zt_value* t, const char* k, size_t n) {
  if (!t || zt_kind(t) != ZT_TABLE) return NULL;
  for (size_t i = 0; i < zt_table_len(t); i++)
    if (zt_table_key_len(t, i) == n && memcmp(zt_table_key(t, i), k, n) == 0) return zt_table_at(t, i);
  return NULL;
}

/* Leaves of table t (at path up); over: the --set tree at the same path (NULL: none), whose
 * values win. file: the config's path for origins, NULL for the --set tree itself. */
static void dump_ext_tree(FILE* f, const zt_value* t, const zt_value* over, const ext_seg* up, const char* file) {
  for (size_t i = 0; i < zt_table_len(t); i++) {
    ext_seg me = {zt_table_key(t, i), zt_table_key_len(t, i), up};
    const zt_value* v = zt_table_at(t, i);
    const zt_value* o = tget(over, me.k, me.n);
    if (o && zt_kind(o) != ZT_TABLE) continue; /* replaced by --set */
    if (zt_kind(v) == ZT_TABLE && zt_table_len(v) > 0) {
      dump_ext_tree(f, v, o, &me, file);
      continue;
    }
    if (o) continue; /* --set made a table here */
    dump_tpath(f, &me);
    fputs(" = ", f);
    dump_tval(f, v);
    if (file) fprintf(f, "  # %s:%d:%d\n", file, zt_line(v), zt_col(v));
    else fputs("  # --set\n", f);
  }
}

static void dump_ext(const zp_config* c, FILE* f) {
  const zt_value* fe = c->ext ? zt_table_get(c->ext, "ext") : NULL;
  const zt_value* se = c->ext_set ? zt_table_get(c->ext_set, "ext") : NULL;
  if (fe && zt_kind(fe) != ZT_TABLE) fe = NULL;
  if (se && zt_kind(se) != ZT_TABLE) se = NULL;
  if (!fe && !se) return;
  fprintf(f, "\n[ext]\n");
  if (fe) dump_ext_tree(f, fe, se, NULL, c->path[0] ? c->path : "<config>");
  if (se) dump_ext_tree(f, se, NULL, NULL, NULL);
}

void zp_config_dump(const zp_config* c, FILE* f) {
  const char* sec = "";
  size_t seclen = 0;
  for (size_t i = 0; i < zp_config_schema_len; i++) {
    const zc_key* k = &zp_config_schema[i];
    const zc_value* v = &c->v[i];
    const char* dot = strrchr(k->path, '.');
    size_t sl = (size_t)(dot - k->path);
    if (sl != seclen || strncmp(sec, k->path, sl) != 0) {
      sec = k->path;
      seclen = sl;
      fprintf(f, "%s[%.*s]\n", i ? "\n" : "", (int)sl, k->path);
    }
    fprintf(f, "%s = ", dot + 1);
    switch (k->type) {
      case ZC_INT: fprintf(f, "%lld", (long long)v->i); break;
      case ZC_FLOAT: fprintf(f, "%.17g", v->f); break;
      case ZC_BOOL: fprintf(f, "%s", v->b ? "true" : "false"); break;
      case ZC_STRING: {
        fputc('"', f);
        for (const char* p = v->s ? v->s : ""; *p; p++) {
          unsigned char ch = (unsigned char)*p;
          if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
          else if (ch == '\n') fputs("\\n", f);
          else if (ch == '\t') fputs("\\t", f);
          else if (ch < 0x20 || ch == 0x7f) fprintf(f, "\\u%04X", ch);
          else fputc(ch, f);
        }
        fputc('"', f);
        break;
      }
      case ZC_INT_LIST:
        fputc('[', f);
        for (size_t j = 0; j < v->list_len; j++) fprintf(f, "%s%lld", j ? ", " : "", (long long)v->list[j]);
        fputc(']', f);
        break;
    }
    fprintf(f, "%s%s\n", v->set ? "  # " : "", v->set ? v->origin : "");
  }
  dump_ext(c, f);
}
