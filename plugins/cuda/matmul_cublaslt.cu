/* matmul_cublaslt.cu: GEMMs through cuBLASLt (bf16 in, fp32 accumulate) and matmul_fwd/bwd.
 *
 * Row-major to column-major. cuBLASLt is column-major; a row-major matrix X[r, c] with leading
 * dimension ld is, byte for byte, the column-major matrix X^T (c rows, r columns, same ld). So
 * the row-major product D[M,N] = op(A)[M,K] @ op(B)[K,N] is computed as the column-major
 *     D^T[N,M] = op(B)^T[N,K] @ op(A)^T[K,M]
 * i.e. cuBLASLt's "A" is our B and its "B" is our A, m = N, n = M, k = K, and each keeps its
 * transpose flag (B stored [K,N] row-major is already B^T in column-major: OP_N; B stored [N,K]
 * row-major (transb) is B in column-major and needs OP_T).
 *
 * matmul_fwd: out[N,OC] = inp[N,IC] @ W[OC,IC]^T + bias[OC]
 *   -> column-major out^T[OC,N] = op_T(W_cm: IC x OC, ld IC) * inp_cm (IC x N, ld IC),
 *      m = OC, n = N, k = IC: the "TN" GEMM; bias (length m = OC) through CUBLASLT_EPILOGUE_BIAS.
 * matmul_bwd: dinp[N,IC] = dout[N,OC] @ W[OC,IC]          (beta = 0: overwrite)
 *             dW[OC,IC] += dout[N,OC]^T @ inp[N,IC]       (beta = 1: accumulate, in bf16)
 *             dbias[OC] += column sums of dout             (deterministic two-pass kernel)
 *
 * matmul_res_fwd: matmul_fwd with the residual as cuBLASLt's C (beta = 1, C != D allowed):
 *   out = res + inp @ W^T + bias, rounded to bf16 once (ZP_CUDA_FUSE_RES=1).
 * matmul_gelu_fwd: matmul_fwd through CUBLASLT_EPILOGUE_GELU_AUX(_BIAS): D = gelu(pre), the
 *   aux output = pre (cuBLASLt's GELU is the tanh approximation, as gelu_fwd).
 * matmul_dgelu_bwd: matmul_bwd whose dinp GEMM ends in CUBLASLT_EPILOGUE_DGELU with aux = pre:
 *   dinp = (dout @ W) * gelu'(pre), one pass instead of a GEMM plus gelu_bwd's three.
 *
 * Invariants: fp32 compute and scale type; the 32 MiB workspace made at create; the alignment
 * of every pointer (and batch stride) is told to the heuristic, so unaligned views are legal;
 * heuristic answers are cached per (shape, layout, alignment, epilogue).
 */
#include <string.h>

#include "cuda_common.cuh"

/* largest power of two (<= 256) dividing the address and, when batched, the stride in bytes */
static uint32_t zpc_alignment(const void* p, int64_t stride_bytes, int batch) {
  uint64_t a = (uint64_t)(uintptr_t)p | 256u;
  if (batch > 1) a |= (uint64_t)stride_bytes;
  return (uint32_t)(a & (~a + 1));
}

int zpc_gemm_run(zp_backend* b, const struct zpc_gemm* g) {
  if (g->M <= 0 || g->N <= 0 || g->K <= 0 || g->batch <= 0)
    return ZPC_INVALID(b, "cuda backend: gemm with empty shape M=%d N=%d K=%d batch=%d", g->M, g->N,
                       g->K, g->batch);
  if (g->bias && (g->d_fp32 || g->batch != 1))
    return zpc_err(b->host, ZP_E_INTERNAL, "cuda backend: gemm bias needs bf16 D and batch 1");
  if (g->epi_gelu && (g->d_fp32 || g->batch != 1 || !g->aux || (g->epi_gelu == 2 && g->bias)))
    return zpc_err(b->host, ZP_E_INTERNAL,
                   "cuda backend: gemm GELU epilogue needs bf16 D, batch 1 and aux (no bias "
                   "with dgelu)");

  const uint64_t m = (uint64_t)g->N, n = (uint64_t)g->M, k = (uint64_t)g->K;
  const cublasOperation_t opA = g->transb ? CUBLAS_OP_T : CUBLAS_OP_N; /* ours B */
  const cublasOperation_t opB = g->transa ? CUBLAS_OP_T : CUBLAS_OP_N; /* ours A */
  const uint64_t a_rows = g->transb ? k : m, a_cols = g->transb ? m : k;
  const uint64_t b_rows = g->transa ? n : k, b_cols = g->transa ? k : n;
  const cudaDataType_t dt_d = g->d_fp32 ? CUDA_R_32F : CUDA_R_16BF;
  const size_t dsz = g->d_fp32 ? 4 : 2;
  const uint32_t al_a = zpc_alignment(g->B, g->strideB * 2, g->batch);
  const uint32_t al_b = zpc_alignment(g->A, g->strideA * 2, g->batch);
  uint32_t al_d = zpc_alignment(g->D, g->strideD * (int64_t)dsz, g->batch);
  if (g->C) { /* C shares D's layout: one alignment for both, the smaller */
    const uint32_t al_c = zpc_alignment(g->C, g->strideD * (int64_t)dsz, g->batch);
    if (al_c < al_d) al_d = al_c;
  }
  const uint32_t al_bias = g->bias ? zpc_alignment(g->bias, 0, 1) : 256;

  int rc = ZP_OK;
  cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
  const char* what = "";
  cublasLtMatmulDesc_t op = NULL;
  cublasLtMatrixLayout_t la = NULL, lb = NULL, ld = NULL;
  cublasLtMatmulPreference_t pref = NULL;
  const cublasLtMatmulAlgo_t* algo = NULL;
  cublasLtMatmulHeuristicResult_t heur;
  memset(&heur, 0, sizeof heur);

#define LT(call)                           \
  do {                                     \
    st = (call);                           \
    if (st != CUBLAS_STATUS_SUCCESS) {     \
      what = #call;                        \
      goto done;                           \
    }                                      \
  } while (0)
  {
    LT(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof opA));
    LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &opB, sizeof opB));
    if (g->bias || g->epi_gelu) {
      cublasLtEpilogue_t epi = g->epi_gelu == 1 ? (g->bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS
                                                           : CUBLASLT_EPILOGUE_GELU_AUX)
                               : g->epi_gelu == 2 ? CUBLASLT_EPILOGUE_DGELU
                                                  : CUBLASLT_EPILOGUE_BIAS;
      LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
      if (g->bias) {
        cudaDataType_t bdt = CUDA_R_16BF;
        LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g->bias,
                                          sizeof g->bias));
        LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bdt,
                                          sizeof bdt));
      }
      if (g->epi_gelu) {
        /* the aux type is left unset: it defaults to D's (bf16); setting it is meant for fp8 */
        int64_t ald = g->ldd;
        LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &g->aux,
                                          sizeof g->aux));
        LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ald,
                                          sizeof ald));
      }
    }
    LT(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, a_rows, a_cols, g->ldb));
    LT(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, b_rows, b_cols, g->lda));
    LT(cublasLtMatrixLayoutCreate(&ld, dt_d, m, n, g->ldd));
    if (g->batch > 1) {
      int32_t bc = g->batch;
      LT(cublasLtMatrixLayoutSetAttribute(la, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc));
      LT(cublasLtMatrixLayoutSetAttribute(lb, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc));
      LT(cublasLtMatrixLayoutSetAttribute(ld, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc));
      int64_t sa = g->strideB, sb = g->strideA, sd = g->strideD;
      LT(cublasLtMatrixLayoutSetAttribute(la, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &sa,
                                          sizeof sa));
      LT(cublasLtMatrixLayoutSetAttribute(lb, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &sb,
                                          sizeof sb));
      LT(cublasLtMatrixLayoutSetAttribute(ld, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &sd,
                                          sizeof sd));
    }

    /* heuristic, cached */
    int64_t key[20] = {g->transa,  g->transb, g->M,      g->N,    g->K,     g->lda, g->ldb,
                       g->ldd,     g->strideA, g->strideB, g->strideD, g->batch, g->d_fp32,
                       g->bias != NULL, al_a, al_b,     al_d,   al_bias,  g->beta != 0.0f ? 2 : 1, g->epi_gelu};
    for (int i = 0; i < ZPC_ALGO_CACHE; i++) {
      struct zpc_algo_entry* e = &b->algo_cache[i];
      if (e->valid && memcmp(e->key, key, sizeof key) == 0) {
        algo = &e->algo;
        break;
      }
    }
    if (!algo) {
      uint64_t wsb = ZPC_WORKSPACE_BYTES;
      LT(cublasLtMatmulPreferenceCreate(&pref));
      LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb,
                                              sizeof wsb));
      LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                              &al_a, sizeof al_a));
      LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                              &al_b, sizeof al_b));
      LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                              &al_d, sizeof al_d));
      LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                              &al_d, sizeof al_d));
      int found = 0;
      LT(cublasLtMatmulAlgoGetHeuristic(b->lt, op, la, lb, ld, ld, pref, 1, &heur, &found));
      if (found < 1 || heur.state != CUBLAS_STATUS_SUCCESS) {
        rc = zpc_err(b->host, ZP_E_DEVICE,
                     "cublasLt: no algorithm for GEMM M=%d N=%d K=%d batch=%d transa=%d "
                     "transb=%d lda=%lld ldb=%lld ldd=%lld (alignments %u/%u/%u)",
                     g->M, g->N, g->K, g->batch, g->transa, g->transb, (long long)g->lda,
                     (long long)g->ldb, (long long)g->ldd, al_a, al_b, al_d);
        goto done;
      }
      struct zpc_algo_entry* e = &b->algo_cache[b->algo_next];
      b->algo_next = (b->algo_next + 1) % ZPC_ALGO_CACHE;
      memcpy(e->key, key, sizeof key);
      e->algo = heur.algo;
      e->valid = 1;
      algo = &e->algo;
    }
    LT(cublasLtMatmul(b->lt, op, &g->alpha, g->B, la, g->A, lb, &g->beta, g->C ? g->C : g->D, ld,
                      g->D, ld, algo,
                      b->workspace, ZPC_WORKSPACE_BYTES, b->stream));
  }
#undef LT
done:
  if (st != CUBLAS_STATUS_SUCCESS) rc = zpc_lt_fail(b, what, st, __FILE__, __LINE__);
  if (pref) cublasLtMatmulPreferenceDestroy(pref);
  if (ld) cublasLtMatrixLayoutDestroy(ld);
  if (lb) cublasLtMatrixLayoutDestroy(lb);
  if (la) cublasLtMatrixLayoutDestroy(la);
  if (op) cublasLtMatmulDescDestroy(op);
  return rc;
}

/* out[N,OC] = inp[N,IC] @ W[OC,IC]^T + bias; epi_gelu 1: out = gelu(.), aux = pre-activation */
static int zpc_matmul_fwd_epi(zp_backend* b, void* out, const void* inp, const void* w,
                              const void* bias, int N, int IC, int OC, int epi_gelu, void* aux) {
  struct zpc_gemm g;
  memset(&g, 0, sizeof g);
  g.transa = 0;
  g.transb = 1;
  g.M = N;
  g.N = OC;
  g.K = IC;
  g.A = inp;
  g.lda = IC;
  g.B = w;
  g.ldb = IC;
  g.D = out;
  g.ldd = OC;
  g.batch = 1;
  g.alpha = 1.0f;
  g.beta = 0.0f;
  g.bias = bias;
  g.epi_gelu = epi_gelu;
  g.aux = aux;
  return zpc_gemm_run(b, &g);
}

int zpc_matmul_fwd(zp_backend* b, void* out, const void* inp, const void* w, const void* bias,
                   int N, int IC, int OC) {
  if (N <= 0 || IC <= 0 || OC <= 0)
    return ZPC_INVALID(b, "cuda backend: matmul_fwd: bad shape N=%d IC=%d OC=%d", N, IC, OC);
  return zpc_matmul_fwd_epi(b, out, inp, w, bias, N, IC, OC, 0, NULL);
}

/* out = res + inp @ W^T + bias: res is the GEMM's C with beta = 1 (one rounding to bf16), or,
 * with ZP_CUDA_FUSE_RES=0, matmul_fwd into scratch and the residual kernel */
int zpc_matmul_res_fwd(zp_backend* b, void* out, const void* inp, const void* w,
                       const void* bias, const void* res, int N, int IC, int OC) {
  if (N <= 0 || IC <= 0 || OC <= 0 || !out || !res)
    return ZPC_INVALID(b, "cuda backend: matmul_res_fwd: bad arguments N=%d IC=%d OC=%d", N, IC,
                       OC);
  if (!b->fuse_res) {
    void* tmp = NULL;
    int rc = zpc_scratch(b, (size_t)N * OC * 2, &tmp);
    if (!rc) rc = zpc_matmul_fwd_epi(b, tmp, inp, w, bias, N, IC, OC, 0, NULL);
    return rc ? rc : zpc_residual_fwd(b, out, res, tmp, (size_t)N * OC);
  }
  struct zpc_gemm g;
  memset(&g, 0, sizeof g);
  g.transa = 0;
  g.transb = 1;
  g.M = N;
  g.N = OC;
  g.K = IC;
  g.A = inp;
  g.lda = IC;
  g.B = w;
  g.ldb = IC;
  g.D = out;
  g.ldd = OC;
  g.batch = 1;
  g.alpha = 1.0f;
  g.beta = 1.0f;
  g.C = res;
  g.bias = bias;
  return zpc_gemm_run(b, &g);
}

static int zpc_matmul_dinp(zp_backend* b, void* dinp, const void* dout, const void* w,
                           const void* pre, int N, int IC, int OC);

int zpc_matmul_bwd(zp_backend* b, void* dinp, void* dw, void* dbias, const void* dout,
                   const void* inp, const void* w, int N, int IC, int OC) {
  if (N <= 0 || IC <= 0 || OC <= 0)
    return ZPC_INVALID(b, "cuda backend: matmul_bwd: bad shape N=%d IC=%d OC=%d", N, IC, OC);
  int rc;
  if (dbias) {
    int R = zpc_rowchunks(N);
    void* part = NULL;
    if ((rc = zpc_scratch(b, (size_t)R * OC * sizeof(float), &part))) return rc;
    if ((rc = zpc_colsum_partials(b, (float*)part, (const bf16*)dout, N, OC))) return rc;
    if ((rc = zpc_colsum_add(b, (bf16*)dbias, (const float*)part, R, OC))) return rc;
  }
  if (dw) { /* dW[OC,IC] += dout^T[OC,N] @ inp[N,IC] */
    struct zpc_gemm g;
    memset(&g, 0, sizeof g);
    g.transa = 1;
    g.transb = 0;
    g.M = OC;
    g.N = IC;
    g.K = N;
    g.A = dout;
    g.lda = OC;
    g.B = inp;
    g.ldb = IC;
    g.D = dw;
    g.ldd = IC;
    g.batch = 1;
    g.alpha = 1.0f;
    g.beta = 1.0f;
    if ((rc = zpc_gemm_run(b, &g))) return rc;
  }
  return zpc_matmul_dinp(b, dinp, dout, w, NULL, N, IC, OC);
}

int zpc_matmul_gelu_fwd(zp_backend* b, void* out, void* pre, const void* inp, const void* w,
                        const void* bias, int N, int IC, int OC) {
  if (N <= 0 || IC <= 0 || OC <= 0 || !out || !pre)
    return ZPC_INVALID(b, "cuda backend: matmul_gelu_fwd: bad arguments N=%d IC=%d OC=%d", N, IC,
                       OC);
  /* ZP_CUDA_FUSE_GELU=0, or an aux leading dimension cuBLASLt refuses (a multiple of 8): the
   * same contract in two passes */
  if (!b->fuse_gelu || OC % 8 != 0) {
    int rc = zpc_matmul_fwd(b, pre, inp, w, bias, N, IC, OC);
    return rc ? rc : zpc_gelu_fwd(b, out, pre, (size_t)N * OC);
  }
  return zpc_matmul_fwd_epi(b, out, inp, w, bias, N, IC, OC, 1, pre);
}

int zpc_matmul_dgelu_bwd(zp_backend* b, void* dinp, void* dw, void* dbias, const void* dout,
                         const void* inp, const void* w, const void* pre, int N, int IC, int OC) {
  if (!dinp || !pre)
    return ZPC_INVALID(b, "cuda backend: matmul_dgelu_bwd: dinp and pre must be set");
  if (!b->fuse_gelu || IC % 8 != 0) { /* as above: dinp = dout @ W, then gelu_bwd in place */
    int rc = zpc_matmul_bwd(b, dinp, dw, dbias, dout, inp, w, N, IC, OC);
    return rc ? rc : zpc_gelu_bwd(b, dinp, pre, dinp, (size_t)N * IC);
  }
  int rc = zpc_matmul_bwd(b, NULL, dw, dbias, dout, inp, w, N, IC, OC);
  if (rc) return rc;
  return zpc_matmul_dinp(b, dinp, dout, w, pre, N, IC, OC);
}

/* dinp[N,IC] = dout[N,OC] @ W[OC,IC], times gelu'(pre) when pre is set */
static int zpc_matmul_dinp(zp_backend* b, void* dinp, const void* dout, const void* w,
                           const void* pre, int N, int IC, int OC) {
  int rc;
  if (dinp) {
    struct zpc_gemm g;
    memset(&g, 0, sizeof g);
    g.transa = 0;
    g.transb = 0;
    g.M = N;
    g.N = IC;
    g.K = OC;
    g.A = dout;
    g.lda = OC;
    g.B = w;
    g.ldb = IC;
    g.D = dinp;
    g.ldd = IC;
    g.batch = 1;
    g.alpha = 1.0f;
    g.beta = 0.0f;
    g.epi_gelu = pre ? 2 : 0;
    g.aux = (void*)pre;
    if ((rc = zpc_gemm_run(b, &g))) return rc;
  }
  return ZP_OK;
}
