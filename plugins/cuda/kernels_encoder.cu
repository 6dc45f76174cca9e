/* kernels_encoder.cu: token + position embedding forward and its deterministic backward.
 *
 * Forward: out[b,t,:] = wte[inp[b,t],:] + wpe[t,:] (bf16, one fp32 add, one rounding).
 * Backward (accumulates): dwpe[t,:] += sum_b dout[b,t,:] summed over b in increasing order;
 * dwte[v,:] += sum of dout[b,t,:] over the positions p = b*T+t with inp[p] == v, summed in
 * increasing p. To get that fixed order without float atomics, the token ids are copied to the
 * host (this op waits for the stream), stably radix-sorted there into buckets of positions per
 * distinct token, and the buckets uploaded; then one block row per distinct token sums its
 * positions in order in fp32 and adds the sum into dwte once. Negative token ids are skipped.
 * Token ids are not checked against the vocabulary size (the op does not receive it).
 */
#include <stdlib.h>
#include <string.h>

#include "cuda_common.cuh"

__global__ void zpc_encoder_fwd_kernel(bf16* out, const int32_t* inp, const bf16* wte,
                                       const bf16* wpe, int BT, int T, int C) {
  size_t n = (size_t)BT * C;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    size_t p = i / C;
    int c = (int)(i - p * C);
    int t = (int)(p % T);
    int tok = inp[p];
    out[i] = f2bf(bf2f(wte[(size_t)tok * C + c]) + bf2f(wpe[(size_t)t * C + c]));
  }
}

int zpc_encoder_fwd(zp_backend* b, void* out, const int32_t* inp, const void* wte, const void* wpe,
                    int B, int T, int C) {
  if (B <= 0 || T <= 0 || C <= 0)
    return ZPC_INVALID(b, "cuda backend: encoder_fwd: bad shape B=%d T=%d C=%d", B, T, C);
  size_t n = (size_t)B * T * C;
  zpc_encoder_fwd_kernel<<<zpc_grid(b, n, 256), 256, 0, b->stream>>>(
      (bf16*)out, inp, (const bf16*)wte, (const bf16*)wpe, B * T, T, C);
  ZPC_LAUNCHED(b, "encoder_fwd");
  return ZP_OK;
}

/* dwpe[t,c] += sum_b dout[b,t,c], b in order */
__global__ void zpc_encoder_bwd_wpe_kernel(bf16* dwpe, const bf16* dout, int B, int T, int C) {
  size_t n = (size_t)T * C;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    float s = 0.0f;
    for (int bb = 0; bb < B; bb++) s += bf2f(dout[(size_t)bb * n + i]);
    dwpe[i] = f2bf(bf2f(dwpe[i]) + s);
  }
}

/* grid (U, column tiles): bucket u holds positions pos[start[u] .. start[u+1]) of token tok[u] */
__global__ void zpc_encoder_bwd_wte_kernel(bf16* dwte, const bf16* dout, const int32_t* pos,
                                           const int32_t* start, const int32_t* tok, int C) {
  int u = blockIdx.x;
  int c = blockIdx.y * blockDim.x + threadIdx.x;
  if (c >= C) return;
  int s0 = start[u], s1 = start[u + 1];
  float s = 0.0f;
  for (int k = s0; k < s1; k++) s += bf2f(dout[(size_t)pos[k] * C + c]);
  size_t o = (size_t)tok[u] * C + c;
  dwte[o] = f2bf(bf2f(dwte[o]) + s);
}

/* Stable LSD radix sort of positions by token id (two 16-bit passes), then buckets.
 * h: BT token ids; writes pos[BT'], start[U+1], tok[U] into out (capacity 3*BT+1), returns U
 * and *npos (positions with a non-negative token). */
static int zpc_bucket_tokens(const int32_t* h, int BT, int32_t* pos, int32_t* start,
                             int32_t* tok, int32_t* tmp, int* npos) {
  static const int R = 1 << 16;
  int n = 0;
  for (int p = 0; p < BT; p++)
    if (h[p] >= 0) tmp[n++] = p;
  /* counting sort tmp -> pos by low 16 bits, then pos -> tmp by high bits */
  int32_t* cnt = (int32_t*)calloc(R + 1, sizeof(int32_t));
  if (!cnt) return -1;
  for (int pass = 0; pass < 2; pass++) {
    int shift = 16 * pass;
    const int32_t* src = pass == 0 ? tmp : pos;
    int32_t* dst = pass == 0 ? pos : tmp;
    memset(cnt, 0, (R + 1) * sizeof(int32_t));
    for (int i = 0; i < n; i++) cnt[(((uint32_t)h[src[i]]) >> shift & 0xffffu) + 1]++;
    for (int r = 0; r < R; r++) cnt[r + 1] += cnt[r];
    for (int i = 0; i < n; i++) dst[cnt[((uint32_t)h[src[i]]) >> shift & 0xffffu]++] = src[i];
  }
  free(cnt);
  /* sorted positions are in tmp; copy into pos and cut buckets */
  int U = 0;
  for (int i = 0; i < n; i++) {
    pos[i] = tmp[i];
    if (i == 0 || h[tmp[i]] != h[tmp[i - 1]]) {
      start[U] = i;
      tok[U] = h[tmp[i]];
      U++;
    }
  }
  start[U] = n;
  *npos = n;
  return U;
}

int zpc_encoder_bwd(zp_backend* b, void* dwte, void* dwpe, const void* dout, const int32_t* inp,
                    int B, int T, int C) {
  if (B <= 0 || T <= 0 || C <= 0)
    return ZPC_INVALID(b, "cuda backend: encoder_bwd: bad shape B=%d T=%d C=%d", B, T, C);
  if (dwpe) {
    size_t n = (size_t)T * C;
    zpc_encoder_bwd_wpe_kernel<<<zpc_grid(b, n, 256), 256, 0, b->stream>>>((bf16*)dwpe,
                                                                          (const bf16*)dout, B, T, C);
    ZPC_LAUNCHED(b, "encoder_bwd_wpe");
  }
  if (!dwte) return ZP_OK;
  int BT = B * T;
  /* pinned staging: [ids BT | pos BT | start BT+1 | tok BT], plus a host temp of BT */
  size_t need = (size_t)4 * BT + 1;
  if (need > b->h_tok_cap) {
    if (b->h_tok) {
      ZPC_SYNC(b, b->stream);
      ZPC_CUDA(b, cudaFreeHost(b->h_tok));
      b->h_tok = NULL;
      b->h_tok_cap = 0;
    }
    ZPC_CUDA(b, cudaMallocHost((void**)&b->h_tok, need * sizeof(int32_t)));
    b->h_tok_cap = need;
  }
  int32_t* ids = b->h_tok;
  int32_t* pos = ids + BT;
  int32_t* start = pos + BT;
  int32_t* tok = start + BT + 1;
  ZPC_CUDA(b, cudaMemcpyAsync(ids, inp, (size_t)BT * sizeof(int32_t), cudaMemcpyDeviceToHost,
                              b->stream));
  ZPC_SYNC(b, b->stream); /* also: earlier uploads from h_tok are done */
  int32_t* tmp = (int32_t*)malloc((size_t)BT * sizeof(int32_t));
  if (!tmp) return zpc_err(b->host, ZP_E_NOMEM, "cuda backend: encoder_bwd: out of host memory");
  int npos = 0;
  int U = zpc_bucket_tokens(ids, BT, pos, start, tok, tmp, &npos);
  free(tmp);
  if (U < 0) return zpc_err(b->host, ZP_E_NOMEM, "cuda backend: encoder_bwd: out of host memory");
  if (U == 0) return ZP_OK;
  /* device copy of pos | start | tok, contiguous as on the host */
  size_t dev_elems = (size_t)BT + BT + 1 + BT;
  void* d = NULL;
  int rc = zpc_scratch(b, dev_elems * sizeof(int32_t), &d);
  if (rc) return rc;
  ZPC_CUDA(b, cudaMemcpyAsync(d, pos, dev_elems * sizeof(int32_t), cudaMemcpyHostToDevice,
                              b->stream));
  const int32_t* dpos = (const int32_t*)d;
  const int32_t* dstart = dpos + BT;
  const int32_t* dtok = dstart + BT + 1;
  int threads = C < 256 ? ((C + 31) / 32) * 32 : 256;
  dim3 grid((unsigned)U, (unsigned)((C + threads - 1) / threads));
  zpc_encoder_bwd_wte_kernel<<<grid, threads, 0, b->stream>>>((bf16*)dwte, (const bf16*)dout, dpos,
                                                               dstart, dtok, C);
  ZPC_LAUNCHED(b, "encoder_bwd_wte");
  return ZP_OK;
}

/* ---- tensor parallelism: masked embedding (vocab-parallel) ----
 * out[b,t,:] = (ids >= 0 ? wte[ids,:] : 0) + (wpe ? wpe[t,:] : 0), one fp32 add, one rounding.
 * Backward: encoder_bwd already skips negative ids (this rank does not own the token). */
__global__ void zpc_encoder_masked_fwd_kernel(bf16* out, const int32_t* ids, const bf16* wte,
                                              const bf16* wpe, int BT, int T, int C) {
  size_t n = (size_t)BT * C;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    size_t p = i / C;
    int c = (int)(i - p * C);
    int t = (int)(p % T);
    int tok = ids[p];
    float v = tok >= 0 ? bf2f(wte[(size_t)tok * C + c]) : 0.0f;
    if (wpe) v += bf2f(wpe[(size_t)t * C + c]);
    out[i] = f2bf(v);
  }
}

int zpc_encoder_masked_fwd(zp_backend* b, void* out, const int32_t* ids, const void* wte,
                           const void* wpe, int B, int T, int C) {
  if (B <= 0 || T <= 0 || C <= 0)
    return ZPC_INVALID(b, "cuda backend: encoder_masked_fwd: bad shape B=%d T=%d C=%d", B, T, C);
  size_t n = (size_t)B * T * C;
  zpc_encoder_masked_fwd_kernel<<<zpc_grid(b, n, 256), 256, 0, b->stream>>>(
      (bf16*)out, ids, (const bf16*)wte, (const bf16*)wpe, B * T, T, C);
  ZPC_LAUNCHED(b, "encoder_masked_fwd");
  return ZP_OK;
}

int zpc_encoder_masked_bwd(zp_backend* b, void* dwte, void* dwpe, const void* dout,
                           const int32_t* ids, int B, int T, int C) {
  return zpc_encoder_bwd(b, dwte, dwpe, dout, ids, B, T, C);
}
