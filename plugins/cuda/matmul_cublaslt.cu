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
 *             dW[OC,IC] += dout[N,OC]^T @ inp[N,IC]       (beta = 1: accumulate, in bf16;
 *                                                          beta = 0 under grad_overwrite, 1.8)
 *             dbias[OC] += column sums of dout: ZP_CUDA_BGRAD=1 (opt-in: slower) in the dW GEMM's
 *               CUBLASLT_EPILOGUE_BGRADB (dout is cuBLASLt's B there, reduced over k = N) into
 *               a bf16 scratch (an fp32 bias type was refused on the H100), then added; 0 (default,
 *               or no BGRADB algorithm offered): a
 *               deterministic two-pass column-sum kernel reading dout once more
 *
 * matmul_res_fwd: matmul_fwd with the residual as cuBLASLt's C (beta = 1, C != D allowed):
 *   out = res + inp @ W^T + bias, rounded to bf16 once (ZP_CUDA_FUSE_RES=1).
 * matmul_gelu_fwd: matmul_fwd through CUBLASLT_EPILOGUE_GELU_AUX(_BIAS): D = gelu(pre), the
 *   aux output = pre (cuBLASLt's GELU is the tanh approximation, as gelu_fwd).
 * matmul_dgelu_bwd: matmul_bwd whose dinp GEMM ends in CUBLASLT_EPILOGUE_DGELU with aux = pre:
 *   dinp = (dout @ W) * gelu'(pre), one pass instead of a GEMM plus gelu_bwd's three.
 * matmul_dgelu_bgrad_bwd (1.9): that, plus dpre_bias += the column sums of dinp (the fc bias
 *   gradient) by the column-sum kernels over dinp just after the GEMM. (cuBLASLt's
 *   CUBLASLT_EPILOGUE_DGELU_BGRAD was tried, session 12 on the H100: dinp wrong at GPT-2 1.5B's
 *   fc shape and the GEMM 1.8x slower; removed, docs/perf.md 26.)
 * Bias gradients by column sums run before the dW GEMM, while dout is likely still in L2
 * (ZP_CUDA_BIAS_SUMS=after: after it, as before).
 *
 * Invariants: fp32 compute and scale type; the 32 MiB workspace made at create; the alignment
 * of every pointer (and batch stride) is told to the heuristic, so unaligned views are legal;
 * heuristic answers are cached per (shape, layout, alignment, epilogue) in b->algo_cache, so
 * every later call with the same key runs the same algorithm.
 *
 * Tuning (ZP_CUDA_GEMM_TUNE=1 or 2, opt-in; default 0 runs the heuristic's first answer). On
 * the first use of a cache key the heuristic is asked for up to ZPC_TUNE_CANDIDATES (8)
 * answers whose workspace fits ZPC_WORKSPACE_BYTES; each is run on the call's own A, B (bias,
 * and DGELU's aux input) but writes to a tuning buffer, never to the caller's D or GELU aux:
 * one warm-up, then 3 runs bracketed by two cudaEvents on b->stream; the stream is then
 * synchronized, the mean of the 3 is the candidate's time, the fastest is cached, and the
 * real call runs with it. An accumulating GEMM (beta != 0) first gets a copy of its C (the real
 * D where C is not separate) in the tuning buffer, so the timed runs read what the real call
 * reads. A candidate that fails
 * to launch is skipped. The tuning buffer is a cudaMalloc of D's extent (plus the GELU aux
 * output), at the same offset modulo 256 bytes as the real pointers (the alignment the
 * heuristic was told), freed when the tuning ends, so tuning keeps no memory afterwards; it
 * is not the op scratch (zpc_scratch), which callers such as attention.cu hold the GEMM's own
 * operands in, and whose growth would free them. If the buffer cannot be allocated, the key
 * keeps the heuristic's first answer (a warning is logged). Tuning synchronizes the stream
 * once per new key. ZP_CUDA_GEMM_TUNE=2 prints one line per tuned key to stderr (shape,
 * epilogue, heuristic-first and best times, the chosen candidate's index).
 * Determinism with tuning on: the choice is made once per backend instance per key, so all
 * later calls of a shape run one algorithm and are bitwise reproducible within the process;
 * but timings differ between runs, so another process (or another rank, or the same shape
 * in another instance) may choose another algorithm and round differently. Bitwise
 * run-to-run and cross-layout comparisons therefore need tuning off, which is why it is
 * opt-in. (More than ZPC_ALGO_CACHE keys would evict and re-tune a key: warned once.)
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cuda_common.cuh"

/* largest power of two (<= 256) dividing the address and, when batched, the stride in bytes */
static uint32_t zpc_alignment(const void* p, int64_t stride_bytes, int batch) {
  uint64_t a = (uint64_t)(uintptr_t)p | 256u;
  if (batch > 1) a |= (uint64_t)stride_bytes;
  return (uint32_t)(a & (~a + 1));
}

static const char* zpc_epi_name(const struct zpc_gemm* g) {
  if (g->epi_gelu == 2) return "dgelu";
  if (g->bgrad) return "bgradb";
  if (g->epi_gelu == 1) return g->bias ? "gelu_aux_bias" : "gelu_aux";
  return g->bias ? "bias" : "none";
}

#define ZPC_TUNE_REPS 3

/* Times heur[0..found) on g's inputs writing to a tuning buffer (see the header) and sets
 * *pick to the fastest's index (0 when none could be timed or the buffer is unavailable).
 * Leaves op's aux pointer at g->aux. Returns ZP_OK, or ZP_E_DEVICE for a CUDA failure outside
 * the candidates themselves (event, copy, synchronize). */
static int zpc_gemm_tune(zp_backend* b, const struct zpc_gemm* g, cublasLtMatmulDesc_t op,
                         cublasLtMatrixLayout_t la, cublasLtMatrixLayout_t lb,
                         cublasLtMatrixLayout_t ld, const cublasLtMatmulHeuristicResult_t* heur,
                         int found, int* pick) {
  *pick = 0;
  if (found > ZPC_TUNE_CANDIDATES) found = ZPC_TUNE_CANDIDATES;
  float ms[ZPC_TUNE_CANDIDATES];
  for (int i = 0; i < ZPC_TUNE_CANDIDATES; i++) ms[i] = NAN;
  int timed = 0;
  int rc = ZP_OK;
  cudaError_t e = cudaSuccess;
  const char* what = "";
  void* buf = NULL;
  int aux_moved = 0;
  cudaEvent_t ev[2 * ZPC_TUNE_CANDIDATES];
  int nev = 0;

  if (found > 1) {
    /* D's extent in elements: column-major m = N rows, n = M columns, ld ldd, per batch item */
    const size_t dsz = g->d_fp32 ? 4 : 2;
    const size_t d_elems = (size_t)(g->batch - 1) * (size_t)g->strideD +
                           (size_t)(g->M - 1) * (size_t)g->ldd + (size_t)g->N;
    const size_t d_off = (uintptr_t)g->D & 255, d_bytes = d_elems * dsz;
    const int aux_out = g->epi_gelu == 1; /* GELU_AUX writes aux; DGELU only reads it */
    const size_t a_off = aux_out ? ((uintptr_t)g->aux & 255) : 0;
    const size_t a_bytes = aux_out ? d_elems * 2 : 0; /* bf16, D's shape and ld, batch 1 */
    const size_t a_base = zpc_round256(d_off + d_bytes);
    e = cudaMalloc(&buf, a_base + a_off + a_bytes);
    if (e != cudaSuccess) {
      buf = NULL;
      (void)cudaGetLastError();
      char msg[256];
      snprintf(msg, sizeof msg,
               "cuda backend: GEMM tuning skipped for M=%d N=%d K=%d (no %zu bytes for its "
               "output buffer: %s); the heuristic's first answer is used",
               g->M, g->N, g->K, a_base + a_off + a_bytes, cudaGetErrorString(e));
      zpc_log(b, ZP_LOG_WARN, msg);
      e = cudaSuccess;
      goto report;
    }
    void* sd = (char*)buf + d_off;
    if (aux_out) {
      void* sa = (char*)buf + a_base + a_off;
      cublasStatus_t st =
          cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &sa,
                                         sizeof sa);
      if (st != CUBLAS_STATUS_SUCCESS) {
        rc = zpc_lt_fail(b, "cublasLtMatmulDescSetAttribute(aux pointer)", st, __FILE__,
                         __LINE__);
        goto out;
      }
      aux_moved = 1;
    }
    if (g->beta != 0.0f) { /* accumulating: time on a copy of what the real call reads (C) */
      what = "cudaMemcpyAsync(tuning copy of C)";
      if ((e = cudaMemcpyAsync(sd, g->C ? g->C : g->D, d_bytes, cudaMemcpyDeviceToDevice,
                               b->stream)))
        goto out;
    }
    what = "cudaEventCreate";
    for (; nev < 2 * found; nev++)
      if ((e = cudaEventCreate(&ev[nev]))) goto out;
    for (int i = 0; i < found; i++) {
      if (heur[i].state != CUBLAS_STATUS_SUCCESS || heur[i].workspaceSize > ZPC_WORKSPACE_BYTES)
        continue;
      int ok = 1;
      for (int r = 0; r <= ZPC_TUNE_REPS && ok; r++) { /* r == 0: warm-up */
        if (r == 1) {
          what = "cudaEventRecord";
          if ((e = cudaEventRecord(ev[2 * i], b->stream))) goto out;
        }
        ok = cublasLtMatmul(b->lt, op, &g->alpha, g->B, la, g->A, lb, &g->beta, sd, ld, sd, ld,
                            &heur[i].algo, b->workspace, ZPC_WORKSPACE_BYTES,
                            b->stream) == CUBLAS_STATUS_SUCCESS;
      }
      if (!ok) { /* not run: skip it (and drop a launch error it may have left) */
        (void)cudaGetLastError();
        continue;
      }
      what = "cudaEventRecord";
      if ((e = cudaEventRecord(ev[2 * i + 1], b->stream))) goto out;
      ms[i] = 0.0f; /* timed; the value comes after the synchronize */
    }
    what = "cudaStreamSynchronize(GEMM tuning)";
    (void)zpc_comm_drain(b); /* 1.9: a failure aborts the communicator; its next call reports it */
    if ((e = cudaStreamSynchronize(b->stream))) goto out;
    for (int i = 0; i < found; i++) {
      if (isnan(ms[i])) continue;
      float t = 0.0f;
      what = "cudaEventElapsedTime";
      if ((e = cudaEventElapsedTime(&t, ev[2 * i], ev[2 * i + 1]))) goto out;
      ms[i] = t / ZPC_TUNE_REPS;
      if (!timed || ms[i] < ms[*pick]) *pick = i;
      timed++;
    }
  }
report:
  if (b->gemm_tune >= 2) {
    const double flop = 2.0 * g->M * (double)g->N * g->K * g->batch;
    char first[32] = "-", best[32] = "-";
    if (!isnan(ms[0])) snprintf(first, sizeof first, "%.1f us", ms[0] * 1e3);
    if (timed) snprintf(best, sizeof best, "%.1f us", ms[*pick] * 1e3);
    fprintf(stderr,
            "zp_cuda: gemm tune M=%d N=%d K=%d batch=%d trans=%d%d beta=%g epilogue=%s: "
            "heuristic-first %s, best %s (%.1f TFLOP/s, x%.3f), index %d of %d timed / %d "
            "offered\n",
            g->M, g->N, g->K, g->batch, g->transa, g->transb, (double)g->beta, zpc_epi_name(g),
            first, best, timed ? flop / (ms[*pick] * 1e-3) / 1e12 : 0.0,
            timed && !isnan(ms[0]) ? (double)ms[0] / ms[*pick] : 1.0, *pick, timed, found);
  }
out:
  if (e != cudaSuccess) rc = zpc_cuda_fail(b, what, e, __FILE__, __LINE__);
  if (aux_moved) { /* the real call writes the caller's aux */
    cublasStatus_t st = cublasLtMatmulDescSetAttribute(
        op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &g->aux, sizeof g->aux);
    if (st != CUBLAS_STATUS_SUCCESS && rc == ZP_OK)
      rc = zpc_lt_fail(b, "cublasLtMatmulDescSetAttribute(aux pointer)", st, __FILE__, __LINE__);
  }
  if (buf) { /* the timed runs must be done before the buffer goes */
    (void)zpc_comm_drain(b);
    cudaError_t e2 = cudaStreamSynchronize(b->stream);
    if (e2 == cudaSuccess) e2 = cudaFree(buf);
    if (e2 != cudaSuccess && rc == ZP_OK)
      rc = zpc_cuda_fail(b, "cudaFree(GEMM tuning buffer)", e2, __FILE__, __LINE__);
  }
  for (int i = 0; i < nev; i++) cudaEventDestroy(ev[i]);
  return rc;
}

int zpc_gemm_run(zp_backend* b, const struct zpc_gemm* g) {
  if (g->M <= 0 || g->N <= 0 || g->K <= 0 || g->batch <= 0)
    return ZPC_INVALID(b, "cuda backend: gemm with empty shape M=%d N=%d K=%d batch=%d", g->M, g->N,
                       g->K, g->batch);
  if (g->bgrad && (g->bias || g->epi_gelu || g->batch != 1))
    return zpc_err(b->host, ZP_E_INTERNAL, "cuda backend: gemm BGRADB needs no bias, no GELU epilogue, batch 1");
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
  const uint32_t al_bias = g->bias ? zpc_alignment(g->bias, 0, 1) : g->bgrad ? zpc_alignment(g->bgrad, 0, 1) : 256;

  int rc = ZP_OK;
  cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
  const char* what = "";
  cublasLtMatmulDesc_t op = NULL;
  cublasLtMatrixLayout_t la = NULL, lb = NULL, ld = NULL;
  cublasLtMatmulPreference_t pref = NULL;
  const cublasLtMatmulAlgo_t* algo = NULL;
  cublasLtMatmulHeuristicResult_t heur[ZPC_TUNE_CANDIDATES];
  memset(heur, 0, sizeof heur);

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
    if (g->bgrad) {
      cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BGRADB;
      cudaDataType_t bdt = CUDA_R_16BF; /* fp32 was refused (CUBLAS_STATUS_INVALID_VALUE, H100) */
      LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
      LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g->bgrad,
                                        sizeof g->bgrad));
      LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bdt, sizeof bdt));
    }
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
                       g->bgrad ? 2 : g->bias != NULL, al_a, al_b, al_d, al_bias, g->beta != 0.0f ? 2 : 1, g->epi_gelu};
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
      st = cublasLtMatmulAlgoGetHeuristic(b->lt, op, la, lb, ld, ld, pref,
                                          b->gemm_tune ? ZPC_TUNE_CANDIDATES : 1, heur, &found);
      if (st != CUBLAS_STATUS_SUCCESS && g->bgrad) { /* this cuBLASLt refuses the epilogue here */
        st = CUBLAS_STATUS_SUCCESS;
        rc = ZP_E_NOT_IMPLEMENTED; /* the caller sums the columns itself (not an error) */
        goto done;
      }
      if (st != CUBLAS_STATUS_SUCCESS) {
        what = "cublasLtMatmulAlgoGetHeuristic";
        goto done;
      }
      if ((found < 1 || heur[0].state != CUBLAS_STATUS_SUCCESS) && g->bgrad) {
        rc = ZP_E_NOT_IMPLEMENTED; /* the caller sums the columns itself (no message: not an error) */
        goto done;
      }
      if (found < 1 || heur[0].state != CUBLAS_STATUS_SUCCESS) {
        rc = zpc_err(b->host, ZP_E_DEVICE,
                     "cublasLt: no algorithm for GEMM M=%d N=%d K=%d batch=%d transa=%d "
                     "transb=%d lda=%lld ldb=%lld ldd=%lld (alignments %u/%u/%u)",
                     g->M, g->N, g->K, g->batch, g->transa, g->transb, (long long)g->lda,
                     (long long)g->ldb, (long long)g->ldd, al_a, al_b, al_d);
        goto done;
      }
      int pick = 0;
      if (b->gemm_tune && (rc = zpc_gemm_tune(b, g, op, la, lb, ld, heur, found, &pick)))
        goto done;
      struct zpc_algo_entry* e = &b->algo_cache[b->algo_next];
      b->algo_next = (b->algo_next + 1) % ZPC_ALGO_CACHE;
      if (b->gemm_tune && e->valid && !b->tune_evict_warned) {
        b->tune_evict_warned = 1;
        zpc_log(b, ZP_LOG_WARN,
                "cuda backend: more GEMM shapes than the algorithm cache holds: an evicted "
                "shape is tuned again on its next use and may get another algorithm");
      }
      memcpy(e->key, key, sizeof key);
      e->algo = heur[pick].algo;
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

/* out[N,OC] = inp[N,IC] @ W[OC,IC]^T + bias (+ res: cuBLASLt's C, beta 1, when not NULL);
 * epi_gelu 1: out = gelu(.), aux = pre-activation */
static int zpc_matmul_fwd_epi(zp_backend* b, void* out, const void* inp, const void* w,
                              const void* bias, int N, int IC, int OC, int epi_gelu, void* aux,
                              const void* res = NULL) {
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
  g.beta = res ? 1.0f : 0.0f;
  g.C = res;
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
  return zpc_matmul_fwd_epi(b, out, inp, w, bias, N, IC, OC, 0, NULL, res);
}

static int zpc_matmul_dinp(zp_backend* b, void* dinp, const void* dout, const void* w, const void* pre,
                           int N, int IC, int OC);

/* dbias[C] (bf16) += the column sums of x[N,C] (stored under grad_overwrite): the deterministic
 * two-pass kernels of kernels_reduce.cu, through the op scratch */
static int zpc_bias_colsum(zp_backend* b, void* dbias, const void* x, int N, int C) {
  int R = zpc_rowchunks(N), rc;
  void* part = NULL;
  if ((rc = zpc_scratch(b, (size_t)R * C * sizeof(float), &part))) return rc;
  if ((rc = zpc_colsum_partials(b, (float*)part, (const bf16*)x, N, C))) return rc;
  return zpc_colsum_add(b, (bf16*)dbias, (const float*)part, R, C);
}

/* dbias[n] += an epilogue's bf16 bias gradient bg[n] (a copy under grad_overwrite) */
static int zpc_bias_from_epi(zp_backend* b, void* dbias, const void* bg, size_t n) {
  if (b->grad_overwrite) {
    ZPC_CUDA(b, cudaMemcpyAsync(dbias, bg, n * sizeof(bf16), cudaMemcpyDeviceToDevice, b->stream));
    return ZP_OK;
  }
  return zpc_accumulate(b, dbias, ZP_BF16, bg, ZP_BF16, n, 1.0f);
}

int zpc_matmul_bwd(zp_backend* b, void* dinp, void* dw, void* dbias, const void* dout,
                   const void* inp, const void* w, int N, int IC, int OC) {
  if (N <= 0 || IC <= 0 || OC <= 0)
    return ZPC_INVALID(b, "cuda backend: matmul_bwd: bad shape N=%d IC=%d OC=%d", N, IC, OC);
  int rc;
  const int epi_bias = dbias && dw && b->bgrad && !b->bgrad_unsupported;
  /* the column sums first: dout was usually just written by the op before (a LayerNorm or
   * GELU backward, attention's), so part of it is still in L2; after the dW GEMM it is not
   * (ZP_CUDA_BIAS_SUMS=after: there, the order before 1.9, for A/B timing) */
  const int sums = dbias && !epi_bias;
  if (sums && !b->bias_after && (rc = zpc_bias_colsum(b, dbias, dout, N, OC))) return rc;
  if (dw) { /* dW[OC,IC] += dout^T[OC,N] @ inp[N,IC] (and dbias from its BGRADB epilogue) */
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
    g.beta = b->grad_overwrite ? 0.0f : 1.0f;
    void* bg = NULL;
    if (epi_bias) {
      if ((rc = zpc_scratch(b, (size_t)OC * sizeof(bf16), &bg))) return rc;
      g.bgrad = bg;
    }
    rc = zpc_gemm_run(b, &g);
    if (rc == ZP_E_NOT_IMPLEMENTED && g.bgrad) { /* no BGRADB algorithm: column sums from now on */
      b->bgrad_unsupported = 1;
      zpc_log(b, ZP_LOG_WARN, "cuda backend: cuBLASLt offers no BGRADB algorithm for a dW GEMM: "
                              "bias gradients by column sums instead");
      g.bgrad = NULL;
      if ((rc = zpc_gemm_run(b, &g)) || (rc = zpc_bias_colsum(b, dbias, dout, N, OC))) return rc;
    }
    if (rc) return rc;
    if (g.bgrad && (rc = zpc_bias_from_epi(b, dbias, bg, (size_t)OC))) return rc;
  }
  if (sums && b->bias_after && (rc = zpc_bias_colsum(b, dbias, dout, N, OC))) return rc;
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
  return zpc_matmul_dgelu_bgrad_bwd(b, dinp, NULL, dw, dbias, dout, inp, w, pre, N, IC, OC);
}

/* 1.9: matmul_dgelu_bwd, and dpre_bias[IC] += the column sums of dinp, by the column-sum kernels
 * right after dinp is written (while it is likely still in L2) */
int zpc_matmul_dgelu_bgrad_bwd(zp_backend* b, void* dinp, void* dpb, void* dw, void* dbias,
                               const void* dout, const void* inp, const void* w, const void* pre,
                               int N, int IC, int OC) {
  if (!dinp || !pre)
    return ZPC_INVALID(b, "cuda backend: matmul_dgelu_bwd: dinp and pre must be set");
  int rc;
  if (!b->fuse_gelu || IC % 8 != 0) { /* as above: dinp = dout @ W, then gelu_bwd in place */
    if ((rc = zpc_matmul_bwd(b, dinp, dw, dbias, dout, inp, w, N, IC, OC)) ||
        (rc = zpc_gelu_bwd(b, dinp, pre, dinp, (size_t)N * IC)))
      return rc;
    return dpb ? zpc_bias_colsum(b, dpb, dinp, N, IC) : ZP_OK;
  }
  if ((rc = zpc_matmul_bwd(b, NULL, dw, dbias, dout, inp, w, N, IC, OC)) ||
      (rc = zpc_matmul_dinp(b, dinp, dout, w, pre, N, IC, OC)))
    return rc;
  return dpb ? zpc_bias_colsum(b, dpb, dinp, N, IC) : ZP_OK;
}

/* dinp[N,IC] = dout[N,OC] @ W[OC,IC], times gelu'(pre) when pre is set */
static int zpc_matmul_dinp(zp_backend* b, void* dinp, const void* dout, const void* w, const void* pre,
                           int N, int IC, int OC) {
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
