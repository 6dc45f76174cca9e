/* offload_cpu: the host-RAM tier (ZeRO-Offload). Its plan moves MASTER and OPTIM (and, as
 * the parameter tier with stage 3, PARAM) to the cpu tier; the core then allocates them in host
 * memory and hands every optimizer update of those groups to update() here:
 *   gradient range device -> page-locked staging (chunks of `chunk_elems`), vectorised AdamW
 *   on the host (core/adamw_cpu.c compiled into this plugin: AVX-512 / AVX2 / scalar, OpenMP,
 *   bf16 conversions fused), new parameters staging -> device.
 * Invariants:
 * - The arithmetic is the CPU backend's AdamW bit for bit, so an offloaded run on the CPU
 *   backend equals the run without offload exactly (tests/integration/offload.sh).
 * - Host memory is capped by offload.optimizer.max_host_gb: plan() refuses a placement whose
 *   host bytes (state + staging) exceed it, with the numbers, before anything is allocated.
 * - Every transfer is reported to the ledger (note_io), so a tier that leaves state in place
 *   cannot pass the tests.
 * - update() is synchronous: param_out holds the new values when it returns. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adamw_cpu.h"
#include "zp/zp_plugin.h"

#define CHUNK_ELEMS ((uint64_t)16 << 20) /* 16M elements per staged transfer */

typedef struct {
  const zp_host* h;
  int threads;
  void* gstage;    /* page-locked staging: gradients (gdt), then parameters (pdt) */
  void* pstage;
  size_t stage_bytes;
} oc_t;

static int which(const zp_host* h, int* opt, int* par) {
  const char* a = "none";
  const char* b = "none";
  h->config_string(h->ctx, "offload.optimizer.plugin", &a);
  h->config_string(h->ctx, "offload.param.plugin", &b);
  *opt = strcmp(a, "offload_cpu") == 0;
  *par = strcmp(b, "offload_cpu") == 0;
  return ZP_OK;
}

static size_t stage_elems(const zp_plan* p) {
  uint64_t mx = 0;
  for (int g = 0; g < p->n_groups; g++) {
    uint64_t n = p->groups[g].place[ZP_CAT_OPTIM].sharded ? p->groups[g].padded / (uint64_t)p->world_size : p->groups[g].padded;
    if (n > mx) mx = n;
  }
  return (size_t)(mx < CHUNK_ELEMS ? mx : CHUNK_ELEMS);
}

static int oc_plan(const zp_host* h, zp_plan* p) {
  int opt, par;
  which(h, &opt, &par);
  if (par) {
    h->set_error(h->ctx, "parameter offload to host memory (offload.param.plugin = \"offload_cpu\") is not implemented yet; "
                 "offload.optimizer.plugin = \"offload_cpu\" is");
    return ZP_E_NOT_IMPLEMENTED;
  }
  double host = 0;
  for (int g = 0; g < p->n_groups; g++) {
    zp_group_plan* gp = &p->groups[g];
    if (opt) {
      gp->place[ZP_CAT_MASTER].tier = ZP_TIER_CPU;
      gp->place[ZP_CAT_OPTIM].tier = ZP_TIER_CPU;
      double n = gp->place[ZP_CAT_OPTIM].sharded ? (double)gp->padded / p->world_size : (double)gp->padded;
      host += 12.0 * n; /* fp32 master + m + v */
    }
  }
  host += 2.0 * 4.0 * (double)stage_elems(p); /* staging, at most fp32 each */
  double cap = 0;
  h->config_float(h->ctx, "offload.optimizer.max_host_gb", &cap);
  if (cap > 0 && host > cap * 1e9) {
    h->set_error(h->ctx, "the optimizer state needs %.3g GB of host memory per rank (fp32 master + Adam m, v: 12 bytes x "
                 "parameters held, plus %.3g GB staging), more than offload.optimizer.max_host_gb = %g",
                 host / 1e9, 8.0 * (double)stage_elems(p) / 1e9, cap);
    return ZP_E_NOMEM;
  }
  return ZP_OK;
}

static void oc_close(void* st) {
  oc_t* s = st;
  if (!s) return;
  if (s->gstage) s->h->free(s->h->ctx, ZP_CAT_BUFFER, ZP_TIER_CPU, s->gstage, s->stage_bytes);
  if (s->pstage) s->h->free(s->h->ctx, ZP_CAT_BUFFER, ZP_TIER_CPU, s->pstage, s->stage_bytes);
  free(s);
}

static int oc_open(const zp_host* h, void** state) {
  oc_t* s = calloc(1, sizeof *s);
  if (!s) return ZP_E_NOMEM;
  s->h = h;
  *state = s;
  int64_t th = 0;
  h->config_int(h->ctx, "offload.optimizer.threads", &th);
  s->threads = (int)th;
  /* staging sized for the largest range one update can get, capped at one chunk */
  uint64_t mx = 0;
  for (int g = 0; g < h->n_groups; g++) {
    zp_group_info in;
    int rc = h->group_info(h->ctx, g, &in);
    if (rc) return rc;
    uint64_t n = in.place[ZP_CAT_OPTIM].sharded ? in.shard_len : in.padded;
    if (n > mx) mx = n;
  }
  if (mx > CHUNK_ELEMS) mx = CHUNK_ELEMS;
  s->stage_bytes = (size_t)mx * 4;
  int rc = h->alloc(h->ctx, ZP_CAT_BUFFER, ZP_TIER_CPU, s->stage_bytes, "offload_cpu gradient staging", &s->gstage);
  if (!rc) rc = h->alloc(h->ctx, ZP_CAT_BUFFER, ZP_TIER_CPU, s->stage_bytes, "offload_cpu parameter staging", &s->pstage);
  return rc;
}

static int oc_update(void* st, const zp_optim_range* u) {
  oc_t* s = st;
  const zp_host* h = s->h;
  if (!u->master || !u->m || !u->v) {
    h->set_error(h->ctx, "group %d: optimizer state is not in host memory", u->group);
    return ZP_E_INTERNAL;
  }
  size_t gs = zp_dtype_size(u->gdt), ps = zp_dtype_size(u->pdt);
  uint64_t chunk = s->stage_bytes / 4;
  int piece = 0;
  for (uint64_t c0 = 0; c0 < u->count; c0 += chunk) {
    uint64_t n = u->count - c0 < chunk ? u->count - c0 : chunk;
    int rc = h->dev->copy_d2h(h->devb, s->gstage, (const char*)u->grad + c0 * gs, (size_t)n * gs);
    if (rc) return rc;
    h->note_io(h->ctx, ZP_TIER_CPU, 1, (uint64_t)n * gs);
    /* AdamW per tensor piece inside this chunk (decay differs per piece) */
    uint64_t pos = u->first + c0, end = pos + n;
    while (pos < end) {
      while (piece < u->n_pieces && u->piece_end[piece] <= pos) piece++;
      uint64_t pe = piece < u->n_pieces && u->piece_end[piece] < end ? u->piece_end[piece] : end;
      int decay = piece < u->n_pieces ? u->piece_decay[piece] : 0;
      zp_adamw_hparams hp = {u->hp.lr, u->hp.beta1, u->hp.beta2, u->hp.eps, decay ? u->hp.weight_decay : 0.0f,
                             u->hp.grad_scale, u->hp.step_t};
      uint64_t k = pos - u->first; /* offset in the range */
      uint64_t kc = k - c0;         /* offset in the chunk */
      rc = zp_adamw_cpu(u->param_out ? (char*)s->pstage + kc * ps : NULL, u->param_out ? u->pdt : ZP_F32, u->master + k,
                        (const char*)s->gstage + kc * gs, u->gdt, u->m + k, u->v + k, (size_t)(pe - pos), &hp, s->threads);
      if (rc) {
        h->set_error(h->ctx, "%s", zp_adamw_isa_error(ZP_ISA_AUTO) ? zp_adamw_isa_error(ZP_ISA_AUTO) : "CPU AdamW failed");
        return rc;
      }
      pos = pe;
    }
    if (u->param_out) {
      rc = h->dev->copy_h2d(h->devb, (char*)u->param_out + c0 * ps, s->pstage, (size_t)n * ps);
      if (rc) return rc;
      h->note_io(h->ctx, ZP_TIER_CPU, 0, (uint64_t)n * ps);
    }
  }
  return ZP_OK;
}

static const zp_tier_ops oc_ops = {
  sizeof(zp_tier_ops), ZP_TIER_CPU, oc_open, oc_close, oc_plan, oc_update, NULL, NULL, NULL,
};
static const zp_plugin_desc oc_desc = {
  sizeof(zp_plugin_desc), ZP_ABI_MAJOR, ZP_ABI_MINOR, "offload_cpu", "0.2.0", ZP_KIND_TIER,
  "host-RAM tier: fp32 master + Adam moments in host memory, vectorised CPU AdamW",
  NULL, &oc_ops, NULL, NULL,
};
ZP_PLUGIN_EXPORT const zp_plugin_desc* zp_plugin_entry(void) { return &oc_desc; }
