/* data.h: token shards and the sample stream.
 * Shards use llm.c's layout: a 256 x int32 little-endian header (header[0] = 20240520 magic,
 * header[1] = 1 version, header[2] = number of tokens) followed by that many uint16 tokens.
 * Invariants: a shard is accepted only if magic, version and file size agree exactly; tokens
 * are range-checked against the vocabulary when read. pos -> sample is a pure function of
 * (shard files in name order, seq_len, seed, shuffle, pos): it never depends on ranks, threads
 * or the order of calls, so every data-parallel layout sees the same global stream.
 * Every failure returns a zp_status with a message naming the file (and offset or token index)
 * in the caller's err buffer; nothing here aborts on bad input. */
#ifndef ZP_DATA_H
#define ZP_DATA_H
#include <stddef.h>
#include <stdint.h>

#define ZP_SHARD_MAGIC 20240520
#define ZP_SHARD_VERSION 1
#define ZP_SHARD_HEADER_INTS 256
#define ZP_SHARD_HEADER_BYTES (ZP_SHARD_HEADER_INTS * 4)
#define ZP_SHARD_MAX_TOKENS 2147483647LL /* header[2] is an int32 */

/* Writes toks[0..n) as one shard at path, atomically: path.tmp.PID, fsync, rename, fsync of the
 * directory. n <= ZP_SHARD_MAX_TOKENS. Returns ZP_OK or an error code with err filled. */
int zp_shard_write(const char* path, const uint16_t* toks, size_t n, char* err, size_t errlen);

/* Header facts of one shard (for `zp data info`). Fills info even when the shard is rejected,
 * as far as it could be read; returns ZP_OK only for a valid shard. max_token is the largest
 * token id present (-1 for an empty or rejected shard). */
typedef struct zp_shard_info {
  int32_t magic, version;
  int64_t header_tokens; /* header[2] */
  int64_t file_tokens;   /* (file size - header) / 2 */
  uint64_t file_bytes;
  int32_t max_token;
} zp_shard_info;
int zp_shard_stat(const char* path, zp_shard_info* info, char* err, size_t errlen);

typedef struct zp_dataset zp_dataset;
/* pattern: a glob ("data/fineweb/train_*.bin") or a single path; shards sorted by name (byte
   order); mmap'ed read-only. seq_len T: a sample is T+1 consecutive tokens (inputs = first T,
   targets = last T), samples are the non-overlapping windows [i*T, i*T+T+1) inside each shard.
   vocab_size (1..65536): tokens must be < it. seed: shuffle seed; shuffle=0 keeps file order.
   Error if no file matches (name the pattern) or the data holds no sample. */
zp_dataset* zp_dataset_open(const char* pattern, int seq_len, int vocab_size, uint64_t seed,
                            int shuffle, char* err, size_t errlen);
void zp_dataset_close(zp_dataset*);
uint64_t zp_dataset_num_samples(const zp_dataset*);
uint64_t zp_dataset_num_tokens(const zp_dataset*);
int zp_dataset_num_shards(const zp_dataset*);
/* path of shard i (0 <= i < num_shards), NULL otherwise */
const char* zp_dataset_shard_path(const zp_dataset*, int i);
/* The sample at global position pos of the infinite stream: epoch = pos / N, sample =
   perm_epoch(pos % N), where perm_epoch is a seeded permutation of [0,N) (Fisher-Yates driven by
   zp_rng_below(seed, epoch, i, i+1) for i = N-1 down to 1, computed lazily and cached for the
   current epoch; thread-compatible: callers serialise). Writes T inputs and T targets as int32.
   Validates token range on read (error names file and token index). */
int zp_dataset_get(zp_dataset*, uint64_t pos, int32_t* inputs, int32_t* targets, char* err,
                   size_t errlen);
/* Which sample (global index in file order, 0..N-1) position pos maps to; for tests and logs. */
uint64_t zp_dataset_sample_index(zp_dataset*, uint64_t pos);

#endif
