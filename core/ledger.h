/* ledger.h: byte accounting of all training state, per category x tier, current and peak.
 * Invariants: every allocation of training state goes through zp_ledger_alloc/free (the core,
 * and plugins through zp_host.alloc); in dry-run mode nothing is allocated and only the counts
 * move, so `zp plan` runs the exact allocation path of a real run. The ledger never frees what
 * it did not allocate; freeing more than allocated is reported, not crashed on. */
#ifndef ZP_LEDGER_H
#define ZP_LEDGER_H
#include <stdio.h>
#include "zp/zp_plugin.h"

typedef struct zp_ledger {
  long long cur[ZP_CAT_COUNT][ZP_TIER_COUNT];
  long long peak[ZP_CAT_COUNT][ZP_TIER_COUNT];
  long long tier_cur[ZP_TIER_COUNT], tier_peak[ZP_TIER_COUNT]; /* sum over categories */
  long long n_allocs, n_frees;
  /* transfers to/from a tier (offload traffic, file I/O): [tier][0 = read, 1 = write] */
  unsigned long long io_bytes[ZP_TIER_COUNT][2], io_ops[ZP_TIER_COUNT][2];
  int dry_run;
  int rank;
  /* device allocator for the gpu tier (the active backend); NULL = host malloc */
  const zp_backend_ops* dev;
  zp_backend* devb;
  char last_error[512];
} zp_ledger;

void zp_ledger_init(zp_ledger* l, int rank, int dry_run);
void zp_ledger_set_device(zp_ledger* l, const zp_backend_ops* ops, zp_backend* b);
/* Allocates `bytes` for (cat, tier). In dry run *out = NULL and ZP_OK. On failure returns
 * ZP_E_NOMEM, fills last_error and dumps the ledger to stderr. */
int zp_ledger_alloc(zp_ledger* l, zp_category cat, zp_tier tier, size_t bytes, const char* tag,
                    void** out);
void zp_ledger_free(zp_ledger* l, zp_category cat, zp_tier tier, void* p, size_t bytes);
/* Count bytes that exist elsewhere (e.g. the backend's workspace) without allocating. */
void zp_ledger_note(zp_ledger* l, zp_category cat, zp_tier tier, long long delta);
void zp_ledger_reset_peak(zp_ledger* l);
const char* zp_category_name(zp_category c);
const char* zp_tier_name(zp_tier t);
/* "1.23 GiB" style */
const char* zp_fmt_bytes(double bytes, char* buf, size_t n);
/* Table: rows = categories, columns = tiers, current and peak. */
void zp_ledger_print(const zp_ledger* l, FILE* f, const char* title);
/* One line: "PARAM 1.2M GRAD 1.2M ..." (current, gpu tier + others if non-zero) */
void zp_ledger_line(const zp_ledger* l, char* buf, size_t n);
long long zp_ledger_total_peak(const zp_ledger* l, zp_tier t);
#endif
