#!/usr/bin/env bash
# attn_sweep.sh: the fa2 attention kernel variants (ZP_CUDA_FA2_FWD x ZP_CUDA_FA2_BWD, see
# plugins/cuda/attention_fa2.cu) checked and timed in one GPU session: for each combination,
# check_cuda_ops --filter attention (every attention shape against the CPU reference, fa2 against
# flash, the backward's determinism, and the timing shapes), one table line per combination.
# Builds nothing: run tests/gpu/run_gpu_checks.sh (or tests/gpu/build_check.sh DIR) first.
#
# Run (repo root):  bash bench/attn_sweep.sh
# Env: ZP_BUILD (build dir holding check_cuda_ops and plugins/zp_cuda.so; default
#   build-gpu-check), OUT (logs: attn_sweep_<fwd>_<bwd>.log and attn_sweep.txt; default
#   /tmp/zp-out), FWDS (default "fast w8"), BWDS (default "base kv2").
# Columns: pass / fail counts of the run (all attention checks of the five variants: naive,
#   flash, fa2, fa2-fused, fa2-atomic), then the fa2 TFLOP/s (causal FLOPs; bwd counted as 2.5x fwd) at
#   the last two shapes of check_cuda_ops.c that print timings: GPT-2 124M (B8 T1024 C768
#   NH12), then GPT-2 1.5B (B4 T1024 C1600 NH25); then the fa2-fused variant's backward TFLOP/s at the same two
#   shapes (its instances set ZP_CUDA_FA2_BWD=fused themselves, so it is the same in every row;
#   its forward is the row's fwd); then the same for fa2-atomic (ZP_CUDA_FA2_BWD=atomic, the
#   diagnostic: fused without the dQ ordering). Exit status 1 if any combination failed or did not finish.
set -u -o pipefail
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${ZP_BUILD:-$SRC/build-gpu-check}
case $BUILD in /*) ;; *) BUILD=$PWD/$BUILD ;; esac
OUT=${OUT:-/tmp/zp-out}
FWDS=${FWDS:-fast w8}
BWDS=${BWDS:-base kv2}
CHECK=$BUILD/check_cuda_ops
PLUGIN=$BUILD/plugins/zp_cuda.so
if [ ! -x "$CHECK" ] || [ ! -f "$PLUGIN" ]; then
  echo "attn_sweep: no $CHECK or $PLUGIN (build first)" >&2
  exit 2
fi
mkdir -p "$OUT"
SUM=$OUT/attn_sweep.txt
BAD=0
{
  printf '# attn_sweep %s, %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
  printf '%-6s %-5s %5s %5s  %-9s %-9s  %-9s %-9s  %-9s %-9s  %-9s %-9s  %s\n' fwd bwd pass fail \
    124m_fwd 124m_bwd 1.5b_fwd 1.5b_bwd 124m_fus 1.5b_fus 124m_atm 1.5b_atm note
} | tee "$SUM"
for f in $FWDS; do
  for b in $BWDS; do
    log=$OUT/attn_sweep_${f}_${b}.log
    ZP_CUDA_FA2_FWD=$f ZP_CUDA_FA2_BWD=$b timeout -k 10 900 "$CHECK" "$PLUGIN" --filter attention \
      > "$log" 2>&1
    rc=$?
    counts=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -1)
    pass=$(echo "$counts" | awk '{print $1}')
    fail=$(echo "$counts" | awk '{print $3}')
    # the fa2 timing lines, one per timed shape: "# attention[fa2] fwd X, bwd Y TFLOP/s ..."
    mapfile -t tl < <(grep -E '^# attention\[fa2\] fwd' "$log" | tail -2 |
      sed -E 's/^# attention\[fa2\] fwd ([0-9.]+), bwd ([0-9.]+).*/\1 \2/')
    read -r a1 b1 <<< "${tl[0]:-- -}"
    read -r a2 b2 <<< "${tl[1]:-- -}"
    mapfile -t fl < <(grep -E '^# attention\[fa2-fused\] fwd' "$log" | tail -2 |
      sed -E 's/^# attention\[fa2-fused\] fwd ([0-9.]+), bwd ([0-9.]+).*/\2/')
    mapfile -t al < <(grep -E '^# attention\[fa2-atomic\] fwd' "$log" | tail -2 |
      sed -E 's/^# attention\[fa2-atomic\] fwd ([0-9.]+), bwd ([0-9.]+).*/\2/')
    note="exit $rc"
    variants=$(grep -oE 'attention fa2 \(fwd [a-z0-9]+, bwd [a-z0-9]+\)' "$log" | head -1)
    [ -n "$variants" ] && note="$note; $variants"
    fails=$(grep -E '  FAIL( |$)' "$log" | awk '{print $1}' | sort -u | head -4 | tr '\n' ' ')
    [ -n "$fails" ] && note="$note; failed: $fails"
    [ "$rc" -ne 0 ] && BAD=1
    printf '%-6s %-5s %5s %5s  %-9s %-9s  %-9s %-9s  %-9s %-9s  %-9s %-9s  %s\n' "$f" "$b" \
      "${pass:--}" "${fail:--}" "$a1" "$b1" "$a2" "$b2" "${fl[0]:--}" "${fl[1]:--}" \
      "${al[0]:--}" "${al[1]:--}" "$note" | tee -a "$SUM"
  done
done
exit $BAD
