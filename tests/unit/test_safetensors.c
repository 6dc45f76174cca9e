/* test_safetensors.c: the safetensors reader/writer and the GPT-2 <-> Hugging Face mapping
 * (core/safetensors.c).
 * Invariants checked: export writes HF names, Conv1D-transposed shapes, wte cut to the real
 * vocabulary, metadata format=pt, an 8-aligned header; import inverts it exactly (fp32) or to
 * bf16 rounding; F16/BF16/F64 convert exactly; a "transformer." prefix, a tied lm_head and the
 * old attn.bias/masked_bias buffers are accepted (with notes), while an unknown, missing or
 * duplicated name, a wrong shape (e.g. not transposed), a non-float dtype or an lm_head that
 * differs from wte is refused naming file and tensor; and every lie a header can tell
 * (length, JSON, offsets, sizes, overlaps, holes, trailing bytes, shapes, dtypes, metadata) is
 * ZP_E_CORRUPT with the file (and tensor) named, never a crash. */
#define _GNU_SOURCE
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bf16.h"
#include "safetensors.h"
#include "zt.h"

static char g_dir[256];

static int rm_cb(const char* p, const struct stat* sb, int flag, struct FTW* f) {
  (void)sb; (void)flag; (void)f;
  return remove(p);
}

static void path_of(char* out, size_t n, const char* name) { snprintf(out, n, "%s/%s", g_dir, name); }

/* a file: 8-byte length of `header` (as given, lies included), the header, then data */
static void write_raw(const char* path, const char* header, uint64_t claimed_len, const void* data, size_t dn) {
  FILE* f = fopen(path, "wb");
  unsigned char lb[8];
  for (int i = 0; i < 8; i++) lb[i] = (unsigned char)(claimed_len >> (8 * i));
  fwrite(lb, 1, 8, f);
  fwrite(header, 1, strlen(header), f);
  if (dn) fwrite(data, 1, dn, f);
  fclose(f);
}

static int open_raw(const char* header, const void* data, size_t dn, char* err, size_t errlen) {
  char p[512];
  path_of(p, sizeof p, "raw.safetensors");
  write_raw(p, header, strlen(header), data, dn);
  zp_st_file f;
  int rc = zp_st_open(&f, p, err, errlen);
  if (!rc) zp_st_close(&f);
  return rc;
}

static void test_header_lies(void) {
  char err[2048], p[512];
  float d[16] = {0};
  /* valid baseline */
  CHECK_EQ_INT(open_raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", d, 16, err, sizeof err), 0);
  struct {
    const char* header;
    size_t dn;
    const char* want;
  } cases[] = {
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,32]}}", 32, "tensor a: 32 bytes at data_offsets [0, 32], but shape x F32 needs 16"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", 8, "tensor a: data_offsets [0, 16] are not inside the data buffer of 8 bytes"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[8,0]}}", 16, "tensor a: data_offsets [8, 0] are not inside"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12,
       "overlap in the data buffer"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12,
       "bytes 4..8 of the data buffer belong to no tensor (before b)"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", 20, "the data buffer has 20 bytes, the tensors use 16"},
      {"[1,2,3]", 0, "header is not a JSON object"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],", 0, "header is not valid JSON"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
       "header is not valid JSON"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "tensor a: shape[0] is not a non-negative integer"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 8, "tensor a: shape[0] is not a non-negative integer"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,8]}}", 8, "tensor a: shape overflows"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, "more than 8 dimensions"},
      {"{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "tensor a: unknown dtype \"Q4\""},
      {"{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "tensor a: \"dtype\" is missing"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8, "tensor a: \"data_offsets\" must be [begin, end]"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,18446744073709551615]}}", 8, "header is not valid JSON"},
      {"{\"a\":7}", 0, "tensor a: entry is not an object"},
      {"{\"__metadata__\":{\"k\":1},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "__metadata__ value of \"k\" is not a string"},
      {"{\"__metadata__\":[],\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "__metadata__ is not an object"},
      {"{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor name \"\" is empty"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    err[0] = 0;
    int rc = open_raw(cases[i].header, d, cases[i].dn, err, sizeof err);
    CHECK_MSG(rc == ZP_E_CORRUPT, "case %zu: rc %d (%s)", i, rc, err);
    CHECK_STR_CONTAINS(err, cases[i].want);
    CHECK_STR_CONTAINS(err, "raw.safetensors");
  }
  /* the length field lies */
  path_of(p, sizeof p, "len.safetensors");
  zp_st_file f;
  const char* h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
  write_raw(p, h, 1000, d, 4);
  CHECK_EQ_INT(zp_st_open(&f, p, err, sizeof err), ZP_E_CORRUPT);
  CHECK_STR_CONTAINS(err, "header length 1000 is impossible");
  write_raw(p, h, (uint64_t)1 << 62, d, 4);
  CHECK_EQ_INT(zp_st_open(&f, p, err, sizeof err), ZP_E_CORRUPT);
  CHECK_STR_CONTAINS(err, "is impossible");
  write_raw(p, h, 0, d, 4);
  CHECK_EQ_INT(zp_st_open(&f, p, err, sizeof err), ZP_E_CORRUPT);
  FILE* t = fopen(p, "wb");
  fwrite("abc", 1, 3, t);
  fclose(t);
  CHECK_EQ_INT(zp_st_open(&f, p, err, sizeof err), ZP_E_CORRUPT);
  CHECK_STR_CONTAINS(err, "too short");
  CHECK_EQ_INT(zp_st_open(&f, "/nonexistent/x.safetensors", err, sizeof err), ZP_E_IO);
  CHECK_STR_CONTAINS(err, "/nonexistent/x.safetensors: cannot open");
  /* header padded with spaces (as the format allows) and zero-size tensors are fine */
  char hp[256];
  snprintf(hp, sizeof hp, "%s   ", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"z\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[4,4]}}");
  CHECK_EQ_INT(open_raw(hp, d, 4, err, sizeof err), 0);
}

static void test_dtypes(void) {
  char err[2048], p[512];
  /* F16: 1.0, -2.5, 65504 (max), 2^-24 (smallest subnormal), inf, 0.5 */
  uint16_t h16[6] = {0x3C00, 0xC100, 0x7BFF, 0x0001, 0x7C00, 0x3800};
  float want16[6] = {1.0f, -2.5f, 65504.0f, 5.9604645e-08f, INFINITY, 0.5f};
  uint16_t b16[3] = {zp_f32_to_bf16(1.5f), zp_f32_to_bf16(-3.0f), zp_f32_to_bf16(0.0078125f)};
  double f64[2] = {0.25, -1e10};
  unsigned char data[12 + 6 + 16];
  memcpy(data, h16, 12);
  memcpy(data + 12, b16, 6);
  memcpy(data + 18, f64, 16);
  path_of(p, sizeof p, "dt.safetensors");
  const char* h = "{\"h\":{\"dtype\":\"F16\",\"shape\":[6],\"data_offsets\":[0,12]},\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[12,18]},"
                  "\"d\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[18,34]},\"__metadata__\":{\"format\":\"pt\",\"who\":\"test\"}}";
  write_raw(p, h, strlen(h), data, sizeof data);
  zp_st_file f;
  CHECK_EQ_INT(zp_st_open(&f, p, err, sizeof err), 0);
  CHECK_EQ_INT(f.n, 3);
  CHECK(zp_st_meta(&f, "who") && !strcmp(zp_st_meta(&f, "who"), "test"));
  CHECK(zp_st_meta(&f, "nope") == NULL);
  float out[6];
  CHECK_EQ_INT(zp_st_read_f32(&f, zp_st_find(&f, "h"), out, err, sizeof err), 0);
  for (int i = 0; i < 6; i++) CHECK_MSG(out[i] == want16[i], "F16 %d: %g vs %g", i, (double)out[i], (double)want16[i]);
  CHECK_EQ_INT(zp_st_read_f32(&f, zp_st_find(&f, "b"), out, err, sizeof err), 0);
  CHECK(out[0] == 1.5f && out[1] == -3.0f && out[2] == 0.0078125f);
  CHECK_EQ_INT(zp_st_read_f32(&f, zp_st_find(&f, "d"), out, err, sizeof err), 0);
  CHECK(out[0] == 0.25f && out[1] == -1e10f);
  zp_st_close(&f);
}

/* ---------------- GPT-2 ---------------- */

static zp_model_layout g_L;

static float val(int t, uint64_t e) { return (float)((int)((t * 131 + e * 7) % 2001) - 1000) / 512.0f; }

static float** make_params(const zp_model_layout* L) {
  float** gp = calloc((size_t)L->n_groups, sizeof(float*));
  for (int g = 0; g < L->n_groups; g++) gp[g] = calloc((size_t)zp_group_padded(L, g, 1), sizeof(float));
  for (int t = 0; t < L->n_tensors; t++) {
    const zp_tensor_desc* d = &L->tensors[t];
    uint64_t real = (uint64_t)d->real_rows * (uint64_t)d->cols;
    for (uint64_t e = 0; e < real; e++) gp[d->group][d->offset + e] = val(t, e);
  }
  return gp;
}

static void free_params(float** gp) {
  for (int g = 0; gp && g < g_L.n_groups; g++) free(gp[g]);
  free(gp);
}

static void test_gpt2_roundtrip(void) {
  char err[2048], p[512], p16[512];
  float** gp = make_params(&g_L);
  path_of(p, sizeof p, "gpt2.safetensors");
  path_of(p16, sizeof p16, "gpt2_bf16.safetensors");
  const char* meta[] = {"zp_n_head", "2"};
  CHECK_EQ_INT(zp_st_export_gpt2(&g_L, gp, p, 0, meta, 1, err, sizeof err), 0);
  CHECK_EQ_INT(zp_st_export_gpt2(&g_L, gp, p16, 1, NULL, 0, err, sizeof err), 0);
  /* the file as Hugging Face sees it */
  zp_st_file f;
  CHECK_EQ_INT(zp_st_open(&f, p, err, sizeof err), 0);
  CHECK_EQ_INT(f.n, g_L.n_tensors);
  CHECK_EQ_INT(f.data_off % 8, 0);
  CHECK(zp_st_meta(&f, "format") && !strcmp(zp_st_meta(&f, "format"), "pt"));
  CHECK(zp_st_meta(&f, "zp_n_head") && !strcmp(zp_st_meta(&f, "zp_n_head"), "2"));
  const zp_st_tensor* wte = zp_st_find(&f, "wte.weight");
  const zp_st_tensor* qkv = zp_st_find(&f, "h.1.attn.c_attn.weight");
  const zp_st_tensor* fcp = zp_st_find(&f, "h.0.mlp.c_proj.weight");
  const zp_st_tensor* lnb = zp_st_find(&f, "h.1.ln_2.bias");
  CHECK(wte && qkv && fcp && lnb && !zp_st_find(&f, "lm_head.weight"));
  if (wte && qkv && fcp && lnb) {
    int C = g_L.s.C;
    CHECK(wte->ndim == 2 && wte->shape[0] == (uint64_t)g_L.s.V && wte->shape[1] == (uint64_t)C); /* cut to V */
    CHECK(qkv->ndim == 2 && qkv->shape[0] == (uint64_t)C && qkv->shape[1] == (uint64_t)3 * C);  /* Conv1D [in, out] */
    CHECK(fcp->ndim == 2 && fcp->shape[0] == (uint64_t)4 * C && fcp->shape[1] == (uint64_t)C);
    CHECK(lnb->ndim == 1 && lnb->shape[0] == (uint64_t)C);
    /* element [i][j] of the HF c_attn weight is ours [j][i] */
    float* q = malloc(qkv->numel * sizeof(float));
    CHECK_EQ_INT(zp_st_read_f32(&f, qkv, q, err, sizeof err), 0);
    const zp_tensor_desc* d = zp_model_tensor(&g_L, 2, ZP_T_QKVW);
    int bad = 0;
    for (int i = 0; i < C; i++)
      for (int j = 0; j < 3 * C; j++)
        if (q[(size_t)i * 3 * C + j] != gp[2][d->offset + (size_t)j * C + i]) bad++;
    CHECK_EQ_INT(bad, 0);
    free(q);
  }
  zp_st_close(&f);
  /* import inverts export: fp32 bitwise, padded rows zero */
  float* back[8] = {0};
  CHECK_EQ_INT(zp_st_import_gpt2(p, &g_L, back, NULL, err, sizeof err), 0);
  int bad = 0;
  for (int g = 0; g < g_L.n_groups && back[0]; g++)
    for (uint64_t e = 0; e < zp_group_padded(&g_L, g, 1); e++)
      if (memcmp(&back[g][e], &gp[g][e], 4)) bad++;
  CHECK_EQ_INT(bad, 0);
  for (int g = 0; g < g_L.n_groups; g++) free(back[g]);
  /* bf16: equal to the bf16 rounding of every value */
  CHECK_EQ_INT(zp_st_import_gpt2(p16, &g_L, back, NULL, err, sizeof err), 0);
  bad = 0;
  for (int g = 0; g < g_L.n_groups && back[0]; g++)
    for (uint64_t e = 0; e < zp_group_padded(&g_L, g, 1); e++)
      if (back[g][e] != zp_bf16_to_f32(zp_f32_to_bf16(gp[g][e]))) bad++;
  CHECK_EQ_INT(bad, 0);
  for (int g = 0; g < g_L.n_groups; g++) free(back[g]);
  free_params(gp);
}

/* A hand-built GPT-2 file: our export's tensors, renamed / reshaped / extended per `mode`. */
typedef struct {
  char name[ZP_ST_NAME_MAX], dtype[8];
  int ndim;
  uint64_t shape[4];
  unsigned char* data;
  size_t bytes;
} ht;

static int n_ht;
static ht hts[64];

static void load_export(const char* p) {
  char err[1024];
  zp_st_file f;
  n_ht = 0;
  if (zp_st_open(&f, p, err, sizeof err)) return;
  for (int i = 0; i < f.n; i++) {
    ht* h = &hts[n_ht++];
    snprintf(h->name, sizeof h->name, "%s", f.t[i].name);
    snprintf(h->dtype, sizeof h->dtype, "F32");
    h->ndim = f.t[i].ndim;
    memcpy(h->shape, f.t[i].shape, sizeof h->shape);
    h->bytes = (size_t)f.t[i].numel * 4;
    h->data = malloc(h->bytes + 1);
    zp_st_read_f32(&f, &f.t[i], (float*)h->data, err, sizeof err);
  }
  zp_st_close(&f);
}

static void write_hts(const char* p) {
  char* hdr = malloc(65536);
  size_t o = (size_t)sprintf(hdr, "{");
  uint64_t pos = 0;
  for (int i = 0; i < n_ht; i++) {
    o += (size_t)sprintf(hdr + o, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", i ? "," : "", hts[i].name, hts[i].dtype);
    for (int d = 0; d < hts[i].ndim; d++) o += (size_t)sprintf(hdr + o, "%s%llu", d ? "," : "", (unsigned long long)hts[i].shape[d]);
    o += (size_t)sprintf(hdr + o, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)pos, (unsigned long long)(pos + hts[i].bytes));
    pos += hts[i].bytes;
  }
  sprintf(hdr + o, "}");
  FILE* f = fopen(p, "wb");
  uint64_t n = strlen(hdr);
  unsigned char lb[8];
  for (int i = 0; i < 8; i++) lb[i] = (unsigned char)(n >> (8 * i));
  fwrite(lb, 1, 8, f);
  fwrite(hdr, 1, n, f);
  for (int i = 0; i < n_ht; i++) fwrite(hts[i].data, 1, hts[i].bytes, f);
  fclose(f);
  free(hdr);
}

static void free_hts(void) {
  for (int i = 0; i < n_ht; i++) free(hts[i].data);
  n_ht = 0;
}

static ht* find_ht(const char* name) {
  for (int i = 0; i < n_ht; i++)
    if (!strcmp(hts[i].name, name)) return &hts[i];
  return NULL;
}

static int import_hts(char* err, size_t errlen, char** notes) {
  char p[512];
  path_of(p, sizeof p, "hand.safetensors");
  write_hts(p);
  float* back[8] = {0};
  size_t nl = 0;
  FILE* nf = open_memstream(notes, &nl);
  int rc = zp_st_import_gpt2(p, &g_L, back, nf, err, errlen);
  fclose(nf);
  for (int g = 0; g < g_L.n_groups; g++) free(back[g]);
  return rc;
}

static void test_gpt2_names_and_refusals(void) {
  char err[2048], p[512];
  char* notes = NULL;
  float** gp = make_params(&g_L);
  path_of(p, sizeof p, "base.safetensors");
  CHECK_EQ_INT(zp_st_export_gpt2(&g_L, gp, p, 0, NULL, 0, err, sizeof err), 0);
  free_params(gp);
  /* 1: transformers' names: "transformer." prefix, tied lm_head, old mask buffers */
  load_export(p);
  for (int i = 0; i < n_ht; i++) { /* prefix "transformer." */
    size_t l = strlen(hts[i].name);
    memmove(hts[i].name + 12, hts[i].name, l + 1);
    memcpy(hts[i].name, "transformer.", 12);
  }
  ht* w = find_ht("transformer.wte.weight");
  ht* lm = &hts[n_ht++];
  *lm = *w;
  snprintf(lm->name, sizeof lm->name, "lm_head.weight");
  lm->data = malloc(w->bytes);
  memcpy(lm->data, w->data, w->bytes);
  ht* mb = &hts[n_ht++];
  memset(mb, 0, sizeof *mb);
  snprintf(mb->name, sizeof mb->name, "transformer.h.0.attn.bias");
  snprintf(mb->dtype, sizeof mb->dtype, "U8");
  mb->ndim = 4;
  mb->shape[0] = mb->shape[1] = 1;
  mb->shape[2] = mb->shape[3] = 4;
  mb->bytes = 16;
  mb->data = calloc(1, 16);
  ht* mm = &hts[n_ht++];
  *mm = *mb;
  snprintf(mm->name, sizeof mm->name, "h.1.attn.masked_bias");
  mm->data = calloc(1, 16);
  int rc = import_hts(err, sizeof err, &notes);
  CHECK_MSG(rc == 0, "%s", err);
  CHECK_STR_CONTAINS(notes, "ignoring transformer.h.0.attn.bias");
  CHECK_STR_CONTAINS(notes, "lm_head.weight equals wte.weight (tied)");
  free(notes);
  /* 2: lm_head not tied */
  ((float*)lm->data)[5] += 1.0f;
  CHECK_EQ_INT(import_hts(err, sizeof err, &notes), ZP_E_INVALID);
  CHECK_STR_CONTAINS(err, "lm_head.weight differs from wte.weight (element 5");
  free(notes);
  free_hts();
  /* 3: refusals, each naming the file and tensor */
  struct {
    const char* what;
    const char* want;
  } cases[] = {
      {"unknown", "tensor h.7.attn.c_attn.weight is not a weight of this GPT-2 (n_layer 2): unknown name"},
      {"missing", "tensor h.1.mlp.c_fc.bias is missing"},
      {"duplicate", "tensor wpe.weight appears twice (wpe.weight and transformer.wpe.weight)"},
      {"not_transposed", "tensor h.0.attn.c_attn.weight has shape [24, 8]"},
      {"dtype", "tensor h.0.ln_1.weight has dtype I32"},
      {"shape_config", "tensor wpe.weight has shape [5, 8], the config's model (n_layer 2 n_head 2 d_model 8 seq_len 4 vocab_size 10) needs [4, 8]"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    load_export(p);
    ht* t;
    if (!strcmp(cases[i].what, "unknown")) {
      t = find_ht("h.1.attn.c_attn.weight");
      snprintf(t->name, sizeof t->name, "h.7.attn.c_attn.weight");
    } else if (!strcmp(cases[i].what, "missing")) {
      t = find_ht("h.1.mlp.c_fc.bias");
      free(t->data);
      *t = hts[--n_ht];
    } else if (!strcmp(cases[i].what, "duplicate")) {
      t = find_ht("wpe.weight");
      hts[n_ht] = *t;
      hts[n_ht].data = malloc(t->bytes);
      memcpy(hts[n_ht].data, t->data, t->bytes);
      snprintf(hts[n_ht].name, sizeof hts[n_ht].name, "transformer.wpe.weight");
      n_ht++;
    } else if (!strcmp(cases[i].what, "not_transposed")) {
      t = find_ht("h.0.attn.c_attn.weight");
      uint64_t a = t->shape[0];
      t->shape[0] = t->shape[1];
      t->shape[1] = a;
    } else if (!strcmp(cases[i].what, "dtype")) {
      t = find_ht("h.0.ln_1.weight");
      snprintf(t->dtype, sizeof t->dtype, "I32");
    } else {
      t = find_ht("wpe.weight");
      t->shape[0] = 5;
      t->bytes = 5 * 8 * 4;
      t->data = realloc(t->data, t->bytes);
    }
    rc = import_hts(err, sizeof err, &notes);
    CHECK_MSG(rc == ZP_E_INVALID, "%s: rc %d (%s)", cases[i].what, rc, err);
    CHECK_STR_CONTAINS(err, cases[i].want);
    CHECK_STR_CONTAINS(err, "hand.safetensors");
    free(notes);
    free_hts();
  }
  /* 4: wte with the padded vocabulary: accepted; non-zero padding rows dropped with a note */
  load_export(p);
  ht* t = find_ht("wte.weight");
  t->shape[0] = (uint64_t)g_L.s.Vp;
  t->bytes = (size_t)g_L.s.Vp * (size_t)g_L.s.C * 4;
  t->data = realloc(t->data, t->bytes);
  for (size_t e = (size_t)g_L.s.V * g_L.s.C; e < (size_t)g_L.s.Vp * g_L.s.C; e++) ((float*)t->data)[e] = 9.0f;
  rc = import_hts(err, sizeof err, &notes);
  CHECK_MSG(rc == 0, "%s", err);
  CHECK_STR_CONTAINS(notes, "rows from 10 on (vocabulary padding) are not zero and were dropped");
  free(notes);
  free_hts();
}

int main(void) {
  snprintf(g_dir, sizeof g_dir, "/tmp/zp_st_test_XXXXXX");
  if (!mkdtemp(g_dir)) return 1;
  zp_gpt2_shape s = {2, 2, 8, 4, 10, 16};
  char err[256];
  if (zp_model_layout_init(&g_L, &s, err, sizeof err)) return 1;
  ZT_RUN(test_header_lies);
  ZT_RUN(test_dtypes);
  ZT_RUN(test_gpt2_roundtrip);
  ZT_RUN(test_gpt2_names_and_refusals);
  zp_model_layout_free(&g_L);
  nftw(g_dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
  return zt_done();
}
