/* stage3: ZeRO stage 3 — parameters, gradients and optimizer state all sharded.
 * Each rank keeps only its shard of every group's PARAM. pre_forward/pre_backward all-gather
 * the group into a gather buffer from a fixed pool (sized at open from the plan: no
 * allocation inside a step) and point the model's view at it; post_forward/grads_ready drop
 * it (the buffer is poisoned with NaN in test builds, so a missing gather cannot go
 * unnoticed). The tied embedding (group 0) has its own gather buffer, valid from the first
 * use in forward through the head's forward and backward to the embedding's backward.
 * Groups under zero.persist_threshold parameters keep PARAM replicated (resident).
 * Gradients follow stage 2 (reduce-scatter per group as its backward ends).
 * Parameter offload (offload.param.plugin: the tier's plan put sharded PARAM on the host): each
 * gather all-gathers from a device staging shard, into which the host shard was copied (the
 * backend's copy_async, the compute stream waiting for it). Having issued group g's gather, the
 * next group of the pass (g+1 forward, g-1 backward) is prefetched into the same staging shard:
 * a copy starts only after the work issued before it (g's gather, which read the shard), and
 * then runs beside g's compute. The tier's AdamW writes the host shards in place;
 * the step first drops any prefetch and waits for the last copy (copies in one direction
 * complete in issue order), so no shard is rewritten while being read, and no stale one is used.
 * (The tier's other writer, a flush of the delayed update, runs between steps, with no pass and
 * so no copy in flight.)
 * Shards a tier keeps in its own storage (offload_nvme: no host buffer) are first read into one
 * of two page-locked host staging buffers (ABI 1.6 fetch_state, in the background): the
 * prefetch of the next group starts its read, the gather waits for it and copies it on. A host
 * staging buffer is refetched only after its copy to the device is done (the two alternate),
 * every fetch is waited for before the step's update rewrites the shards.
 * Gathers started ahead (ABI 1.9 allgather_start): having gathered group g, the next
 * zero.prefetch_groups groups of the pass (device-resident shards) are all-gathered into free
 * pool slots at once, beside g's compute; each one's ensure() waits for it (wait_started), and
 * a release waits before poisoning.
 * Memory per rank: (P+G+K)Ψ/N + gather pool + gradient buffers.
 * Communication per step: all-gather in forward and backward + reduce-scatter = 3Ψ. */
#include "../common/copy_async.h"
#include "../common/zero_common.h"

#define S3_MAX_POOL 66

typedef struct {
  zero_common z;
  int64_t persist;
  void* g0buf;
  size_t g0bytes;
  int g0_valid;
  void* pool[S3_MAX_POOL];
  int pool_used[S3_MAX_POOL];
  int npool;
  int ahead;          /* zero.prefetch_groups: how many groups of the pass are gathered ahead (0: none) */
  size_t pool_bytes;
  int* owner; /* [G] pool slot holding group g, or -1 */
  uint64_t* gticket; /* [G] (1.9) the started all-gather filling owner[g]'s slot, 0 when done */
  /* parameter offload: the device shard the host shards are copied into for gathers */
  void* pstage;
  size_t pstage_bytes;
  int async;          /* the backend has copy_async / copy_wait (else synchronous, no prefetch) */
  uint64_t h2d;       /* ticket of the last copy issued (0: none outstanding) */
  int pf_group;       /* group whose shard was prefetched into pstage (ticket pf_ticket), or -1 */
  uint64_t pf_ticket;
  /* shards in tier-owned storage (nvme): host staging for fetch_state, two alternating */
  void* hraw[2];
  char* hstage[2];
  size_t hraw_bytes;
  uint64_t hcopy[2]; /* copy ticket of the last device copy from hstage[i] */
  int hnext;
  int pf_buf;        /* prefetch of a tier-owned shard: its staging buffer and fetch ticket */
  uint64_t pf_fetch;
} s3_t;

static int persistent(s3_t* s, int g) { return !s->z.info[g].place[ZP_CAT_PARAM].sharded; }

static int s3_plan(const zp_host* h, zp_plan* p) {
  int64_t thr = 0;
  if (h->config_int) h->config_int(h->ctx, "zero.persist_threshold", &thr);
  for (int g = 0; g < p->n_groups; g++) {
    p->groups[g].place[ZP_CAT_PARAM].sharded = (int64_t)p->groups[g].numel >= thr;
    p->groups[g].place[ZP_CAT_GRAD].sharded = 1;
    p->groups[g].place[ZP_CAT_MASTER].sharded = 1;
    p->groups[g].place[ZP_CAT_OPTIM].sharded = 1;
  }
  return ZP_OK;
}

static int s3_open(const zp_host* h, void** state) {
  s3_t* s = calloc(1, sizeof *s);
  if (!s) return ZP_E_NOMEM;
  *state = s;
  ZC_TRY(zc_open(&s->z, h, 1));
  zero_common* z = &s->z;
  s->owner = malloc((size_t)z->G * sizeof(int));
  s->gticket = calloc((size_t)(z->G > 0 ? z->G : 1), sizeof(uint64_t));
  if (!s->owner || !s->gticket) return ZP_E_NOMEM;
  int64_t prefetch = 1;
  h->config_int(h->ctx, "zero.prefetch_groups", &prefetch);
  /* one buffer for the group in use and one per group gathered ahead */
  s->ahead = prefetch < 0 ? 0 : prefetch > S3_MAX_POOL - 1 ? S3_MAX_POOL - 1 : (int)prefetch;
  s->npool = 1 + s->ahead;
  zp_dtype pdt = z->info[0].dtype[ZP_CAT_PARAM];
  uint64_t maxp = 0;
  for (int g = 1; g < z->G; g++)
    if (!persistent(s, g) && z->info[g].padded > maxp) maxp = z->info[g].padded;
  s->pool_bytes = (size_t)maxp * zc_dsize(pdt);
  for (int i = 0; i < s->npool && s->pool_bytes; i++)
    ZC_TRY(h->alloc(h->ctx, ZP_CAT_BUFFER, ZP_TIER_GPU, s->pool_bytes, "stage3 gather buffer", &s->pool[i]));
  if (!persistent(s, 0)) {
    s->g0bytes = (size_t)z->info[0].padded * zc_dsize(pdt);
    ZC_TRY(h->alloc(h->ctx, ZP_CAT_BUFFER, ZP_TIER_GPU, s->g0bytes, "stage3 gather buffer (embed)", &s->g0buf));
  }
  size_t hb = 0; /* host staging for shards a tier keeps in its own storage */
  for (int g = 0; g < z->G; g++) {
    const zp_group_info* in = &z->info[g];
    size_t sb = (size_t)in->shard_len * zc_dsize(pdt);
    if (persistent(s, g) || in->place[ZP_CAT_PARAM].tier == ZP_TIER_GPU) continue;
    if (sb > s->pstage_bytes) s->pstage_bytes = sb;
    if (!in->buf[ZP_CAT_PARAM] && sb > hb) hb = sb;
  }
  s->async = zp_copy_async_ok(h);
  s->pf_group = -1;
  if (hb) {
    if (!ZP_TABLE_HAS(h, fetch_state) || !ZP_TABLE_HAS(h, fetch_wait)) {
      h->set_error(h->ctx, "stage3: the parameter tier keeps the shards in its own storage, but this zp has no fetch_state "
                   "(plugin ABI 1.6)");
      return ZP_E_ABI;
    }
    s->hraw_bytes = (hb + ZP_FETCH_ALIGN - 1) / ZP_FETCH_ALIGN * ZP_FETCH_ALIGN + ZP_FETCH_ALIGN;
    for (int i = 0; i < 2; i++) {
      ZC_TRY(h->alloc(h->ctx, ZP_CAT_BUFFER, ZP_TIER_CPU, s->hraw_bytes, "stage3 offloaded-parameter host staging", &s->hraw[i]));
      s->hstage[i] = (char*)(((uintptr_t)s->hraw[i] + ZP_FETCH_ALIGN - 1) & ~(uintptr_t)(ZP_FETCH_ALIGN - 1));
    }
  }
  if (s->pstage_bytes)
    ZC_TRY(h->alloc(h->ctx, ZP_CAT_BUFFER, ZP_TIER_GPU, s->pstage_bytes, "stage3 offloaded-parameter shard staging", &s->pstage));
  for (int g = 0; g < z->G; g++) {
    s->owner[g] = -1;
    ZC_TRY(h->set_view(h->ctx, g, ZP_CAT_PARAM, persistent(s, g) ? z->info[g].buf[ZP_CAT_PARAM] : NULL));
    ZC_TRY(h->set_view(h->ctx, g, ZP_CAT_GRAD, NULL));
  }
  return ZP_OK;
}

static void s3_close(void* st) {
  s3_t* s = st;
  if (!s) return;
  const zp_host* h = s->z.h;
  if (h) {
    for (int i = 0; i < s->npool; i++)
      if (s->pool[i]) h->free(h->ctx, ZP_CAT_BUFFER, ZP_TIER_GPU, s->pool[i], s->pool_bytes);
    if (s->g0buf) h->free(h->ctx, ZP_CAT_BUFFER, ZP_TIER_GPU, s->g0buf, s->g0bytes);
    (void)zp_copy_wait(h, &s->h2d, 0);
    if (s->pf_fetch) (void)h->fetch_wait(h->ctx, s->pf_group, ZP_CAT_PARAM, s->pf_fetch);
    if (s->pstage) h->free(h->ctx, ZP_CAT_BUFFER, ZP_TIER_GPU, s->pstage, s->pstage_bytes);
    for (int i = 0; i < 2; i++)
      if (s->hraw[i]) h->free(h->ctx, ZP_CAT_BUFFER, ZP_TIER_CPU, s->hraw[i], s->hraw_bytes);
  }
  free(s->owner);
  free(s->gticket);
  zc_close(&s->z);
  free(s);
}

static int offloaded(const s3_t* s, int g) { return s->z.info[g].place[ZP_CAT_PARAM].tier != ZP_TIER_GPU; }
/* the shard is in storage a tier owns (nvme), not in a host buffer */
/* a free gather-pool buffer, or -1 */
static int free_slot(const s3_t* s) {
  for (int i = 0; i < s->npool; i++)
    if (!s->pool_used[i]) return i;
  return -1;
}

static int tier_owned(const s3_t* s, int g) { return offloaded(s, g) && !s->z.info[g].buf[ZP_CAT_PARAM]; }

/* start copying g's shard from host memory src into the staging shard (after all work issued so far) */
static int stage_shard(s3_t* s, int g, const void* src, uint64_t* ticket) {
  const zp_host* h = s->z.h;
  const zp_group_info* in = &s->z.info[g];
  size_t bytes = (size_t)in->shard_len * zc_dsize(in->dtype[ZP_CAT_PARAM]);
  ZC_TRY(zp_copy_start(h, s->pstage, src, bytes, 1, ticket));
  if (*ticket) s->h2d = *ticket;
  if (in->buf[ZP_CAT_PARAM]) h->note_io(h->ctx, in->place[ZP_CAT_PARAM].tier, 0, bytes); /* (a tier's fetch counts its own) */
  return ZP_OK;
}

/* start reading g's tier-owned shard into the next host staging buffer (*buf), once that
 * buffer's previous copy to the device is done */
static int start_fetch(s3_t* s, int g, int* buf, uint64_t* ticket) {
  const zp_host* h = s->z.h;
  int i = s->hnext;
  s->hnext ^= 1;
  ZC_TRY(zp_copy_wait(h, &s->hcopy[i], 0));
  *buf = i;
  return h->fetch_state(h->ctx, g, ZP_CAT_PARAM, s->hstage[i], ticket);
}

/* retire a pending fetch (of a group other than keep) */
static int drop_fetch(s3_t* s, int keep) {
  const zp_host* h = s->z.h;
  if (s->pf_group < 0 || s->pf_group == keep || !tier_owned(s, s->pf_group)) return ZP_OK;
  int g = s->pf_group;
  uint64_t t = s->pf_fetch;
  s->pf_group = -1;
  s->pf_fetch = 0;
  return h->fetch_wait(h->ctx, g, ZP_CAT_PARAM, t);
}

static int gather_into(s3_t* s, int g, void* dst) {
  const zp_host* h = s->z.h;
  const zp_group_info* in = &s->z.info[g];
  const void* src = in->buf[ZP_CAT_PARAM];
  if (tier_owned(s, g)) { /* tier storage -> host staging -> device staging shard */
    ZC_TRY(drop_fetch(s, g));
    int i;
    uint64_t f = s->pf_fetch, t = 0;
    if (s->pf_group == g) i = s->pf_buf;
    else ZC_TRY(start_fetch(s, g, &i, &f));
    s->pf_group = -1;
    s->pf_fetch = 0;
    ZC_TRY(h->fetch_wait(h->ctx, g, ZP_CAT_PARAM, f));
    ZC_TRY(stage_shard(s, g, s->hstage[i], &t));
    s->hcopy[i] = t;
    ZC_TRY(zp_copy_wait(h, &t, 1)); /* the gather runs after the copy */
    src = s->pstage;
  } else if (offloaded(s, g)) { /* the host shard goes to a device staging shard first */
    uint64_t t = s->pf_ticket;
    if (s->pf_group != g) ZC_TRY(stage_shard(s, g, src, &t)); /* not prefetched (a prefetch of another group is overwritten) */
    s->pf_group = -1;
    ZC_TRY(zp_copy_wait(h, &t, 1)); /* the gather runs after the copy */
    src = s->pstage;
  }
  return h->allgather(h->ctx, dst, src, (size_t)in->shard_len, in->dtype[ZP_CAT_PARAM]);
}

/* (1.9) start g's all-gather into a free pool slot now, so it travels beside the current
 * group's compute; ensure(g) waits for it. Device-resident shards only (offloaded ones are
 * prefetched by copy, below), not the embedding (its own buffer), and only with a slot to spare. */
static int gather_ahead(s3_t* s, int g) {
  const zp_host* h = s->z.h;
  if (g <= 0 || g >= s->z.G || persistent(s, g) || offloaded(s, g) || s->owner[g] >= 0) return ZP_OK;
  if (!ZP_TABLE_HAS(h, allgather_start) || !ZP_TABLE_HAS(h, wait_started)) return ZP_OK;
  int slot = free_slot(s);
  if (slot < 0) return ZP_OK;
  const zp_group_info* in = &s->z.info[g];
  uint64_t t = 0;
  ZC_TRY(h->allgather_start(h->ctx, s->pool[slot], in->buf[ZP_CAT_PARAM], (size_t)in->shard_len, in->dtype[ZP_CAT_PARAM], &t));
  s->pool_used[slot] = 1;
  s->owner[g] = slot;
  s->gticket[g] = t;
  return ZP_OK;
}

/* prefetch for the pass that has just ensured group g and runs on in direction dir (+1 forward,
 * -1 backward). Device-resident shards: the next `ahead` groups' all-gathers are started (each
 * while a pool slot is free; already gathered ones are skipped). An offloaded next group: its
 * shard's copy into the staging shard (which waits for the work issued so far, including every
 * gather that read the shard before) or, from tier storage, its read into host staging. */
static int prefetch(s3_t* s, int g0, int dir) {
  int g = g0 + dir;
  if (g >= 0 && g < s->z.G && !offloaded(s, g)) {
    for (int i = 1; i <= s->ahead; i++) {
      int gi = g0 + i * dir;
      if (gi < 0 || gi >= s->z.G || offloaded(s, gi)) break;
      ZC_TRY(gather_ahead(s, gi));
    }
    return ZP_OK;
  }
  if (s->ahead < 1) return ZP_OK;
  if (!s->async || g < 0 || g >= s->z.G || !offloaded(s, g) || persistent(s, g) || s->pf_group >= 0) return ZP_OK;
  if (g == 0 ? s->g0_valid : s->owner[g] >= 0) return ZP_OK; /* still gathered */
  if (tier_owned(s, g)) ZC_TRY(start_fetch(s, g, &s->pf_buf, &s->pf_fetch));
  else ZC_TRY(stage_shard(s, g, s->z.info[g].buf[ZP_CAT_PARAM], &s->pf_ticket));
  s->pf_group = g;
  return ZP_OK;
}

static int ensure_g0(s3_t* s) {
  if (persistent(s, 0) || s->g0_valid) return ZP_OK;
  ZC_TRY(gather_into(s, 0, s->g0buf));
  s->g0_valid = 1;
  return s->z.h->set_view(s->z.h->ctx, 0, ZP_CAT_PARAM, s->g0buf);
}

/* a gather started ahead (gather_ahead) is complete for the work issued from now on */
static int gather_done(s3_t* s, int g) {
  if (!s->gticket[g]) return ZP_OK;
  uint64_t t = s->gticket[g];
  s->gticket[g] = 0;
  return s->z.h->wait_started(s->z.h->ctx, t);
}

static int ensure(s3_t* s, int g) {
  const zp_host* h = s->z.h;
  if (g == 0) return ensure_g0(s);
  if (persistent(s, g)) return ZP_OK;
  if (s->owner[g] >= 0) { /* gathered, or started ahead: wait for it, then the model may read it */
    ZC_TRY(gather_done(s, g));
    return h->set_view(h->ctx, g, ZP_CAT_PARAM, s->pool[s->owner[g]]);
  }
  int slot = free_slot(s);
  if (slot < 0) {
    h->set_error(h->ctx, "gather pool exhausted (%d buffers) at group %d", s->npool, g);
    return ZP_E_INTERNAL;
  }
  ZC_TRY(gather_into(s, g, s->pool[slot]));
  s->pool_used[slot] = 1;
  s->owner[g] = slot;
  return h->set_view(h->ctx, g, ZP_CAT_PARAM, s->pool[slot]);
}

static int release(s3_t* s, int g) {
  const zp_host* h = s->z.h;
  const zp_group_info* in = &s->z.info[g];
  if (persistent(s, g)) return ZP_OK;
  if (g == 0) {
    if (!s->g0_valid) return ZP_OK;
    h->poison(h->ctx, s->g0buf, in->dtype[ZP_CAT_PARAM], (size_t)in->padded);
    s->g0_valid = 0;
    return h->set_view(h->ctx, 0, ZP_CAT_PARAM, NULL);
  }
  int slot = s->owner[g];
  if (slot < 0) return ZP_OK;
  ZC_TRY(gather_done(s, g)); /* started ahead and never used: it still writes the buffer */
  h->poison(h->ctx, s->pool[slot], in->dtype[ZP_CAT_PARAM], (size_t)in->padded);
  s->pool_used[slot] = 0;
  s->owner[g] = -1;
  return h->set_view(h->ctx, g, ZP_CAT_PARAM, NULL);
}

static int ensure_with_tied(s3_t* s, int g) {
  ZC_TRY(ensure(s, g));
  if (s->z.info[g].tied_to >= 0) ZC_TRY(ensure(s, s->z.info[g].tied_to));
  return ZP_OK;
}
static int s3_pre_forward(void* st, int g) {
  s3_t* s = st;
  ZC_TRY(ensure_with_tied(s, g));
  return prefetch(s, g, +1); /* forward runs groups upwards */
}
/* group 0 stays gathered: the head uses it next, then backward ends with it */
static int s3_post_forward(void* st, int g) { return g == 0 ? ZP_OK : release((s3_t*)st, g); }
static int s3_pre_backward(void* st, int g) {
  s3_t* s = st;
  ZC_TRY(ensure_with_tied(s, g));
  ZC_TRY(prefetch(s, g, -1)); /* backward runs them downwards */
  return zc_arm_full_grad(&s->z, g);
}
static int s3_grads_ready(void* st, int g) {
  s3_t* s = st;
  ZC_TRY(zc_reduce_full_grad(&s->z, g));
  return release(s, g);
}

static void* s3_grad_shard(zero_common* z, int g) { return z->info[g].buf[ZP_CAT_GRAD]; }
static void* s3_param_shard(zero_common* z, int g) {
  const zp_group_info* in = &z->info[g];
  return in->place[ZP_CAT_PARAM].sharded ? in->buf[ZP_CAT_PARAM] : zc_param_shard_in_full(z, g);
}

static int s3_step(void* st) {
  s3_t* s = st;
  zero_common* z = &s->z;
  /* parameters change: nothing gathered may outlive the step */
  for (int g = 0; g < z->G; g++) ZC_TRY(release(s, g));
  ZC_TRY(drop_fetch(s, -1)); /* a fetch still reading tier storage is waited for: the update rewrites it */
  s->pf_group = -1; /* a prefetched shard would hold the old values */
  ZC_TRY(zp_copy_wait(z->h, &s->h2d, 0)); /* offloaded shards are rewritten by the update: no copy may still read them */
  ZC_TRY(zc_step_shards(z, s3_grad_shard, s3_param_shard, 0));
  for (int g = 0; g < z->G; g++)
    if (persistent(s, g)) ZC_TRY(zc_allgather_params_inplace(z, g));
  return ZP_OK;
}

static const zp_strategy_ops s3_ops = {
  sizeof(zp_strategy_ops), s3_plan, s3_open, s3_close, s3_pre_forward, s3_post_forward, s3_pre_backward, s3_grads_ready, s3_step,
  0, /* its step all-gathers persistent groups after their update */
};
static const zp_plugin_desc s3_desc = {
  sizeof(zp_plugin_desc), ZP_ABI_MAJOR, ZP_ABI_MINOR, "stage3", "0.1.0", ZP_KIND_STRATEGY,
  "ZeRO-3: parameters, gradients and optimizer state sharded; gather per group, drop after use",
  &s3_ops, NULL, NULL, NULL,
};
ZP_PLUGIN_EXPORT const zp_plugin_desc* zp_plugin_entry(void) { return &s3_desc; }
