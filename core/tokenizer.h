/* tokenizer.h: text <-> uint16 tokens. Two kinds:
 * - bytes: token = byte value (0..255), eot = 256, vocab 257.
 * - gpt2:  GPT-2 byte-level BPE from encoder.json + vocab.bpe (eot = id of "<|endoftext|>",
 *          50256 for the real files; vocab = largest id + 1, 50257 for the real files).
 * Invariants: every byte sequence encodes (byte-level alphabet: all 256 bytes have a token), and
 * decode(encode(x)) == x byte for byte, for any input including invalid UTF-8. encode never
 * emits eot by itself: "<|endoftext|>" in text is ordinary text; callers append eot.
 * Pre-tokenizer approximation (details in tokenizer.c): ASCII, Unicode White_Space and common
 * punctuation/symbol/emoji blocks are classed exactly as Python's `regex` does; any other
 * non-ASCII code point counts as a letter (no full Unicode tables), which can move some token
 * boundaries in other scripts (e.g. at Devanagari vowel signs) but never changes decoded bytes.
 * Thread-compatible: encode updates a per-tokenizer word cache, so callers serialise encode on
 * one tokenizer (or use one tokenizer per thread). Load failures fill err (file, line/offset). */
#ifndef ZP_TOKENIZER_H
#define ZP_TOKENIZER_H
#include <stddef.h>
#include <stdint.h>

typedef struct zp_tokenizer zp_tokenizer;
zp_tokenizer* zp_tokenizer_bytes(void); /* byte-level: token = byte value (0..255), eot = 256, vocab 257 */
zp_tokenizer* zp_tokenizer_gpt2_load(const char* encoder_json, const char* vocab_bpe, char* err,
                                     size_t errlen); /* GPT-2 BPE: eot = 50256, vocab 50257 */
zp_tokenizer* zp_tokenizer_load_dir(const char* dir, char* err, size_t errlen); /* reads DIR/tokenizer.json written by prepare */
/* writes DIR/tokenizer.json atomically: {"kind":"bytes"|"gpt2","vocab_size":..,"eot":..
   [,"encoder":abs path,"bpe":abs path]} */
int zp_tokenizer_save_dir(const zp_tokenizer*, const char* dir, char* err, size_t errlen);
void zp_tokenizer_free(zp_tokenizer*);
int zp_tokenizer_vocab_size(const zp_tokenizer*);
int zp_tokenizer_eot(const zp_tokenizer*);
const char* zp_tokenizer_kind(const zp_tokenizer*); /* "bytes" or "gpt2" */
/* longest decoded token in bytes: a decode buffer of this size always suffices */
int zp_tokenizer_max_token_bytes(const zp_tokenizer*);
/* encode: appends to a growable array (*toks, *n, *cap; may start NULL/0/0); returns count
   appended or -1 (out of memory) */
long zp_tokenizer_encode(const zp_tokenizer*, const char* text, size_t len, uint16_t** toks,
                         size_t* n, size_t* cap);
/* decode one token to bytes (for streaming sample output); returns length, writes into buf
   (not NUL-terminated). eot decodes as "<|endoftext|>". Returns -1 for an unknown token or a
   buffer too small for it. */
int zp_tokenizer_decode(const zp_tokenizer*, int token, char* buf, size_t buflen);

#endif
