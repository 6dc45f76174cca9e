/* pipeline_balance.c: which model groups each pipeline (virtual) stage holds.
 *
 * Balance is by forward FLOPs, not parameters: GPT-2's tied embedding (most parameters of a
 * small model) costs almost nothing on the first stage, while the head's classifier matmul
 * over the vocabulary (B*T*C*Vp) is the heaviest single group and sits on the last stage.
 *
 * Invariants:
 * - A split is contiguous and covers every group exactly once, in order, with no empty
 *   stage (first[0] = 0 < first[1] < ... < first[n] = n_groups); explicit splits that are
 *   not are rejected with the reason, never repaired, so no layer is silently dropped.
 * - zp_pipeline_balance returns a split whose largest stage cost is minimal (to float
 *   rounding of the bisection), and among those one whose other stages are close to even;
 *   deterministic for given costs.
 * - No abort/exit; status codes + messages.
 */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "seterr.h"
#include "schedule.h"


int zp_pipeline_group_flops(int L, int C, int T, int Vp, double* out, int n_out) {
  if (L < 1 || C < 1 || T < 1 || Vp < 1 || !out || n_out != L + 2) return ZP_E_INVALID;
  double c = C, t = T;
  out[0] = 0.0;                                /* embed: a lookup and an add */
  for (int l = 0; l < L; l++) out[1 + l] = 24.0 * c * c + 4.0 * t * c; /* qkv 6C^2, proj 2C^2, fc 8C^2, fcproj 8C^2; QK^T and AV 4TC */
  out[L + 1] = 2.0 * c * (double)Vp;           /* tied classifier */
  return ZP_OK;
}

/* Fewest contiguous parts with every part's cost <= X (X >= every single cost). */
static int min_parts(const double* cost, int G, double X) {
  int parts = 1;
  double acc = 0;
  for (int g = 0; g < G; g++) {
    if (acc + cost[g] > X) {
      parts++;
      acc = 0;
    }
    acc += cost[g];
  }
  return parts;
}

int zp_pipeline_balance(const double* cost, int G, int S, int* first, char* err, size_t errlen) {
  if (!cost || !first || G < 1 || S < 1) {
    seterr(err, errlen, "pipeline balance: need at least one group and one stage (groups %d, stages %d)", G, S);
    return ZP_E_INVALID;
  }
  if (S > G) {
    seterr(err, errlen, "cannot split %d groups into %d pipeline stages: every stage needs at least one group "
           "(use fewer stages or chunks, or more layers)", G, S);
    return ZP_E_INVALID;
  }
  double lo = 0, total = 0;
  for (int g = 0; g < G; g++) {
    if (!isfinite(cost[g]) || cost[g] < 0) {
      seterr(err, errlen, "pipeline balance: cost of group %d is %g (must be finite and >= 0)", g, cost[g]);
      return ZP_E_INVALID;
    }
    if (cost[g] > lo) lo = cost[g];
    total += cost[g];
  }
  double hi = total;
  if (min_parts(cost, G, lo) <= S) hi = lo;
  for (int it = 0; it < 200 && hi > lo; it++) {
    double mid = lo + (hi - lo) / 2;
    if (mid <= lo || mid >= hi) break;
    if (min_parts(cost, G, mid) <= S) hi = mid;
    else lo = mid;
  }
  /* Build a split with every stage <= hi. Stage k may end at any cut p that keeps the rest
   * splittable (feasible cuts form an interval: a later cut only leaves less to do); among
   * those, take the one closest to an even share of what is left, so the stages that are
   * not the bottleneck come out even too. */
  int pos = 0;
  for (int k = 0; k < S - 1; k++) {
    first[k] = pos;
    int rest = S - 1 - k; /* stages after this one */
    double acc = cost[pos], remaining = 0;
    for (int g = pos; g < G; g++) remaining += cost[g];
    int pmax = pos + 1;
    while (pmax < G - rest && acc + cost[pmax] <= hi) acc += cost[pmax++];
    int lo_p = pos + 1, hi_p = pmax; /* smallest feasible cut in [pos+1, pmax] */
    while (lo_p < hi_p) {
      int mid = lo_p + (hi_p - lo_p) / 2;
      if (min_parts(cost + mid, G - mid, hi) <= rest) hi_p = mid;
      else lo_p = mid + 1;
    }
    double target = remaining / (rest + 1), best = -1, a = 0;
    int bestp = pmax;
    for (int p = pos; p < pmax; p++) {
      a += cost[p];
      if (p + 1 < lo_p) continue;
      double d = fabs(a - target);
      if (best < 0 || d < best) {
        best = d;
        bestp = p + 1;
      }
    }
    pos = bestp;
  }
  first[S - 1] = pos;
  first[S] = G;
  return ZP_OK;
}

int zp_pipeline_split_counts(const int64_t* counts, int n, int G, int S, const char* what, int* first,
                             char* err, size_t errlen) {
  if (!what) what = "pipeline.stages";
  if (n != S) {
    seterr(err, errlen, "%s lists %d stage%s but the pipeline has %d (parallel.pp x pipeline.chunks)", what, n,
           n == 1 ? "" : "s", S);
    return ZP_E_INVALID;
  }
  long long sum = 0;
  for (int k = 0; k < n; k++) {
    if (counts[k] < 1) {
      seterr(err, errlen, "%s[%d] = %lld: every stage needs at least one group", what, k, (long long)counts[k]);
      return ZP_E_INVALID;
    }
    sum += counts[k];
    if (sum > G) break;
  }
  if (sum != G) {
    seterr(err, errlen, "%s covers %s%lld groups but the model has %d (embed, block.0 .. block.%d, head): every group "
           "must be on exactly one stage", what, sum > G ? "at least " : "", sum, G, G - 3);
    return ZP_E_INVALID;
  }
  int pos = 0;
  for (int k = 0; k < n; k++) {
    first[k] = pos;
    pos += (int)counts[k];
  }
  first[n] = G;
  return ZP_OK;
}

int zp_pipeline_split_lists(const int* const* lists, const int* len, int S, int G, int* first,
                            char* err, size_t errlen) {
  if (!lists || !len || S < 1 || G < 1) {
    seterr(err, errlen, "pipeline stages: need at least one stage and one group");
    return ZP_E_INVALID;
  }
  int next = 0;
  for (int k = 0; k < S; k++) {
    if (len[k] < 1 || !lists[k]) {
      seterr(err, errlen, "pipeline stage %d is empty: every stage needs at least one group", k);
      return ZP_E_INVALID;
    }
    first[k] = next;
    for (int j = 0; j < len[k]; j++) {
      int g = lists[k][j];
      if (g < 0 || g >= G) {
        seterr(err, errlen, "pipeline stage %d lists group %d, but the model's groups are 0 .. %d", k, g, G - 1);
        return ZP_E_INVALID;
      }
      if (g < next) {
        seterr(err, errlen, "pipeline stage %d lists group %d again or out of order (groups go to stages in order, each once)", k, g);
        return ZP_E_INVALID;
      }
      if (g > next) {
        seterr(err, errlen, "pipeline stage %d lists group %d but group %d is on no stage (stages hold contiguous groups, "
               "in order, each once)", k, g, next);
        return ZP_E_INVALID;
      }
      next++;
    }
  }
  if (next != G) {
    if (G - next == 1)
      seterr(err, errlen, "pipeline stages cover groups 0 .. %d but the model has %d: group %d is on no stage", next - 1, G, next);
    else
      seterr(err, errlen, "pipeline stages cover groups 0 .. %d but the model has %d: groups %d .. %d are on no stage",
             next - 1, G, next, G - 1);
    return ZP_E_INVALID;
  }
  first[S] = G;
  return ZP_OK;
}

double zp_pipeline_split_max(const double* cost, const int* first, int S, double* imbalance) {
  double mx = 0, total = 0;
  for (int k = 0; k < S; k++) {
    double c = 0;
    for (int g = first[k]; g < first[k + 1]; g++) c += cost[g];
    if (c > mx) mx = c;
    total += c;
  }
  if (imbalance) *imbalance = total > 0 ? mx / (total / S) : 1.0;
  return mx;
}

void zp_pipeline_split_print(FILE* f, const int* first, int S, const double* cost, const uint64_t* params,
                             const char* const* names) {
  double total = 0;
  for (int g = 0; g < first[S]; g++) total += cost[g];
  fprintf(f, "%-6s %-28s %14s %7s", "stage", "groups", "fwd FLOP/token", "share");
  if (params) fprintf(f, " %14s", "params");
  fputc('\n', f);
  for (int k = 0; k < S; k++) {
    /* names are cut at 39 characters each (precision), so gr always has room:
     * 39 + 4 + 39 + 2 + 11 (an int) + 1 + NUL < 128 */
    char gr[128], a[40], b[40];
    int g0 = first[k], g1 = first[k + 1] - 1;
    if (names) snprintf(a, sizeof a, "%.39s", names[g0]);
    else snprintf(a, sizeof a, "group %d", g0);
    if (names) snprintf(b, sizeof b, "%.39s", names[g1]);
    else snprintf(b, sizeof b, "group %d", g1);
    if (g0 == g1) snprintf(gr, sizeof gr, "%.39s", a);
    else snprintf(gr, sizeof gr, "%.39s .. %.39s (%d)", a, b, g1 - g0 + 1);
    double c = 0;
    uint64_t pr = 0;
    for (int g = g0; g <= g1; g++) {
      c += cost[g];
      if (params) pr += params[g];
    }
    fprintf(f, "%-6d %-28s %14.4g %6.1f%%", k, gr, c, total > 0 ? 100.0 * c / total : 0.0);
    if (params) fprintf(f, " %14llu", (unsigned long long)pr);
    fputc('\n', f);
  }
  double imb;
  double mx = zp_pipeline_split_max(cost, first, S, &imb);
  int worst = 0;
  for (int k = 0; k < S; k++) {
    double c = 0;
    for (int g = first[k]; g < first[k + 1]; g++) c += cost[g];
    if (c == mx) {
      worst = k;
      break;
    }
  }
  if (S > 1 && imb > 1.0 + 1e-9)
    fprintf(f, "uneven split: stage %d carries %.1f%% more than the mean (max/mean = %.3f); the others wait for it\n", worst,
            100.0 * (imb - 1.0), imb);
  else
    fprintf(f, "even split (max/mean = %.3f)\n", imb);
}

int zp_pipeline_split_for_config(const zp_config* c, int L, int C, int T, int Vp, int* first, int n_first,
                                 char* err, size_t errlen) {
  int pp = (int)zp_cfg_int(c, "parallel.pp");
  int ch = (int)zp_cfg_int(c, "pipeline.chunks");
  int S = pp * ch, G = L + 2;
  if (n_first < S + 1) {
    seterr(err, errlen, "internal: split needs %d entries, got %d", S + 1, n_first);
    return ZP_E_INVALID;
  }
  const zc_value* v = zp_cfg_get(c, "pipeline.stages");
  if (v && v->list_len > 0) {
    char what[400];
    snprintf(what, sizeof what, "%s: pipeline.stages", v->origin);
    return zp_pipeline_split_counts(v->list, (int)v->list_len, G, S, what, first, err, errlen);
  }
  double* cost = malloc((size_t)G * sizeof(double));
  if (!cost) {
    seterr(err, errlen, "out of memory");
    return ZP_E_NOMEM;
  }
  int rc = zp_pipeline_group_flops(L, C, T, Vp, cost, G);
  if (rc) seterr(err, errlen, "pipeline balance: invalid model shape (L %d, C %d, T %d, Vp %d)", L, C, T, Vp);
  else rc = zp_pipeline_balance(cost, G, S, first, err, errlen);
  free(cost);
  return rc;
}
