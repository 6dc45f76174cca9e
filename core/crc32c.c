/* crc32c.c: software CRC-32C, slice-by-8 (see crc32c.h). Eight 256-entry tables are built
 * once (pthread_once); the main loop folds 8 input bytes per iteration with 8 lookups, the
 * head and tail are done a byte at a time. Byte order independent: input is read bytewise. */
#include "crc32c.h"

#include <pthread.h>

#define ZP_CRC32C_POLY 0x82F63B78u

static uint32_t crc_tab[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c & 1u) ? (c >> 1) ^ ZP_CRC32C_POLY : c >> 1;
    crc_tab[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = crc_tab[0][i];
    for (int t = 1; t < 8; t++) {
      c = crc_tab[0][c & 0xffu] ^ (c >> 8);
      crc_tab[t][i] = c;
    }
  }
}

uint32_t zp_crc32c(uint32_t crc, const void* data, size_t n) {
  pthread_once(&crc_once, crc_init);
  const unsigned char* p = (const unsigned char*)data;
  uint32_t c = ~crc;
  while (n && ((uintptr_t)p & 7u)) {
    c = crc_tab[0][(c ^ *p++) & 0xffu] ^ (c >> 8);
    n--;
  }
  while (n >= 8) {
    uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
    uint32_t hi = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
    c = crc_tab[7][lo & 0xffu] ^ crc_tab[6][(lo >> 8) & 0xffu] ^ crc_tab[5][(lo >> 16) & 0xffu] ^
        crc_tab[4][lo >> 24] ^ crc_tab[3][hi & 0xffu] ^ crc_tab[2][(hi >> 8) & 0xffu] ^
        crc_tab[1][(hi >> 16) & 0xffu] ^ crc_tab[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n--) c = crc_tab[0][(c ^ *p++) & 0xffu] ^ (c >> 8);
  return ~c;
}
