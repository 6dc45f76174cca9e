/* safetensors.h: reading and writing the safetensors format, and GPT-2 weights in Hugging
 * Face's names and layout (zp export / zp import / train.init_from).
 *
 * Format: 8-byte little-endian header length N, N bytes of a JSON object
 *   {"NAME": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
 *    "__metadata__": {"key": "string value", ...}}
 * then the data buffer; offsets are relative to the buffer's start.
 * Invariants of the reader (zp_st_open): everything is validated before any tensor byte is
 * read: N fits the file and a cap, the header is a JSON object without duplicate keys, every
 * entry has a known dtype, a shape of non-negative integers (at most 8 dimensions, product
 * without overflow), data_offsets with begin <= end inside the buffer and end - begin =
 * prod(shape) x dtype size; the entries, sorted by offset, do not overlap and leave no hole
 * (as the format requires); __metadata__ holds strings only. Every error names the file and,
 * where there is one, the tensor. Nothing aborts, nothing reads outside the file.
 * Invariants of the writer: entries are laid out in the given order without gaps, the header
 * is padded with spaces to a multiple of 8 bytes, the file is written to PATH.tmp, fsynced
 * and renamed (a reader never sees half a file).
 * GPT-2 mapping (zp_st_export_gpt2 / zp_st_import_gpt2): our tensor names are Hugging Face's
 * (wte.weight, wpe.weight, h.{i}.ln_1.weight, ...). HF's Conv1D layers store weights as
 * [in, out]: attn.c_attn [C, 3C], attn.c_proj [C, C], mlp.c_fc [C, 4C], mlp.c_proj [4C, C],
 * i.e. transposed against our [out, in]. wte is cut to the real vocabulary (model.vocab_size,
 * 50257 for GPT-2) on export and zero-padded to the padded vocabulary on import. lm_head is
 * tied to wte (not exported; on import accepted only if equal to wte). A "transformer."
 * prefix is accepted on import; the attention-mask buffers h.{i}.attn.bias/masked_bias that
 * old transformers versions saved are ignored (with a note).
 */
#ifndef ZP_SAFETENSORS_H
#define ZP_SAFETENSORS_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "model.h"

#define ZP_ST_MAX_HEADER ((uint64_t)100 << 20) /* the reference implementation's cap */
#define ZP_ST_MAX_DIMS 8
#define ZP_ST_NAME_MAX 256

typedef enum { ZP_ST_F64, ZP_ST_F32, ZP_ST_F16, ZP_ST_BF16, ZP_ST_OTHER } zp_st_dtype;

typedef struct {
  char name[ZP_ST_NAME_MAX];
  char dtype_name[16];
  zp_st_dtype dtype; /* ZP_ST_OTHER: a valid safetensors dtype this reader does not convert */
  size_t dtype_size;
  int ndim;
  uint64_t shape[ZP_ST_MAX_DIMS];
  uint64_t numel;
  uint64_t begin, end; /* in the data buffer */
} zp_st_tensor;

typedef struct {
  char path[1024];
  int fd;
  uint64_t file_bytes, data_off, data_bytes;
  int n;
  zp_st_tensor* t;
  int n_meta;
  char (*meta)[2][256]; /* __metadata__ key/value pairs (values cut at 255 bytes) */
} zp_st_file;

/* Open and validate (see the invariants above). On error f is left closed. */
int zp_st_open(zp_st_file* f, const char* path, char* err, size_t errlen);
/* Validate a header (the N bytes after the length) for a file of file_bytes bytes; fills f's
 * tensor table (f->fd = -1). Used by zp_st_open and the fuzz target. */
int zp_st_parse_header(zp_st_file* f, const char* json, size_t n, uint64_t file_bytes, const char* path, char* err, size_t errlen);
void zp_st_close(zp_st_file* f);
const zp_st_tensor* zp_st_find(const zp_st_file* f, const char* name);
const char* zp_st_meta(const zp_st_file* f, const char* key); /* NULL if absent */
/* Read a tensor (F32, F64, F16 or BF16) converted to fp32 into out[numel]. */
int zp_st_read_f32(const zp_st_file* f, const zp_st_tensor* t, float* out, char* err, size_t errlen);

/* Writer: n tensors (dtype "F32" or "BF16"); fill(ctx, i, dst) writes tensor i's bytes. */
typedef struct {
  const char* name;
  const char* dtype;
  int ndim;
  uint64_t shape[ZP_ST_MAX_DIMS];
} zp_st_out;
typedef int (*zp_st_fill_fn)(void* ctx, int i, void* dst, char* err, size_t errlen);
int zp_st_write(const char* path, const zp_st_out* ts, int n, zp_st_fill_fn fill, void* ctx, const char* const* meta_kv, int n_meta,
                char* err, size_t errlen);

/* GPT-2: gp[g] holds group g's fp32 values in our layout (tensor t at t->offset). */
int zp_st_export_gpt2(const zp_model_layout* L, float* const* gp, const char* path, int bf16, const char* const* meta_kv, int n_meta,
                      char* err, size_t errlen);
/* gp[g] receives a calloc'ed array of zp_group_padded(L, g, 1) floats (free each; all NULL on
 * error). Notes about ignored entries go to notes (may be NULL). Names, shapes and dtypes are
 * checked against L (the config's model) before anything is read. */
int zp_st_import_gpt2(const char* path, const zp_model_layout* L, float** gp, FILE* notes, char* err, size_t errlen);
/* The same on an opened file (the fuzz target uses it on a parsed header without data). */
int zp_st_import_gpt2_file(const zp_st_file* f, const zp_model_layout* L, float** gp, FILE* notes, char* err, size_t errlen);

/* Collective: every rank reads path (zp_st_import_gpt2 against r's layout), the ranks agree,
 * then zp_ckpt_set_full_params (OPTIM zero, step_t 0). train.init_from. */
struct zp_run;
int zp_st_init_run(struct zp_run* r, const char* path, FILE* notes, char* err, size_t errlen);

#endif
