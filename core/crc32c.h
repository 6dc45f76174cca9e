/* crc32c.h: CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), software, slice-by-8.
 * Invariants: the value is the standard CRC-32C (init and final xor 0xFFFFFFFF; check value of
 * "123456789" is 0xE3069283), independent of how the input is split: feeding the previous
 * result back in as `crc` continues the same checksum (start with 0). Pure and thread-safe
 * (the tables are built once, on first use, under pthread_once). */
#ifndef ZP_CRC32C_H
#define ZP_CRC32C_H
#include <stddef.h>
#include <stdint.h>

/* crc of data[0..n) continuing from `crc` (0 for a fresh checksum). */
uint32_t zp_crc32c(uint32_t crc, const void* data, size_t n);

#endif
