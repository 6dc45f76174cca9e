#!/usr/bin/env bash
# sweep.sh: kernel-choice variants of the CUDA backend, each checked for correctness first and
# then timed as whole training steps, in one GPU call; one table at the end.
#
# A variant is "NAME|VAR=value,VAR=value|check filters" (filters: check_cuda_ops --filter
# words; empty: no check). Each variant runs in its own environment: its check_cuda_ops filters
# (any FAIL: the variant is not timed), then `bench/gpu_bench.sh` with PEERS=none for each
# model (zp only, median ms/step of steps 6..STEPS). The first variant is the baseline of the
# ratios; repeating it last shows the run-to-run drift.
#
# Run (repo root, after a build; .deps carried):
#   ZP_BUILD=build-gpu bash bench/sweep.sh "base||" "res0|ZP_CUDA_FUSE_RES=0|matmul_res" "base2||"
# A variant's SWEEP_BUILD=DIR runs that build's zp and plugin instead (e.g. an older commit's
# tree built beside this one, for a before/after row).
# Env: ZP_BUILD (default build-gpu; must hold zp, plugins/zp_cuda.so, check_cuda_ops), OUT
#   (default /tmp/zp-out: sweep.md, sweep.log), MODELS (default "124m 1.5b"), STEPS (default
#   25), ZP_WORK (default /tmp/zp-sweep-work).
set -u -o pipefail
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-/tmp/zp-out}
BUILD=${ZP_BUILD:-$SRC/build-gpu}
case $BUILD in /*) ;; *) BUILD=$SRC/$BUILD ;; esac
WORK=${ZP_WORK:-/tmp/zp-sweep-work}
read -r -a MODELS <<< "${MODELS:-124m 1.5b}"
[ $# -ge 1 ] || { echo "usage: sweep.sh 'NAME|VAR=v,...|filters' ..." >&2; exit 2; }
for f in "$BUILD/zp" "$BUILD/plugins/zp_cuda.so" "$BUILD/check_cuda_ops"; do
  [ -e "$f" ] || { echo "sweep: $f missing: build first (bench/speed.sh or tests/gpu/run_gpu_checks.sh)" >&2; exit 2; }
done
mkdir -p "$OUT" "$WORK" || { echo "sweep: cannot create $OUT or $WORK" >&2; exit 2; }
LOG=$OUT/sweep.log
: > "$LOG"
ROWS=$WORK/rows.tsv
: > "$ROWS"
note() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" | tee -a "$LOG"; }

for spec in "$@"; do
  IFS='|' read -r name vars filters <<< "$spec"
  [ -n "$name" ] || { echo "sweep: variant '$spec' has no name" >&2; exit 2; }
  (
    IFS=',' read -r -a assigns <<< "$vars"
    for a in "${assigns[@]}"; do [ -n "$a" ] && export "${a?}"; done
    VB=${SWEEP_BUILD:-$BUILD} # a variant may name another build (SWEEP_BUILD=dir: an older tree's)
    note "variant $name: ${vars:-(defaults)}"
    pass=0 failc=0
    for f in ${filters//,/ }; do
      "$VB/check_cuda_ops" "$VB/plugins/zp_cuda.so" --filter "$f" > "$WORK/check_${name}_$f.log" 2>&1
      p=$(grep -c ' PASS$' "$WORK/check_${name}_$f.log")
      q=$(grep -c ' FAIL' "$WORK/check_${name}_$f.log")
      pass=$((pass + p)) failc=$((failc + q))
      { echo "---- $name: check_cuda_ops --filter $f: $p PASS, $q FAIL"; grep -E ' FAIL|^# ' "$WORK/check_${name}_$f.log" |
        grep -v '^# (plugin|reference|tolerances)'; } >> "$LOG"
    done
    row="$name	${vars:-defaults}	$pass	$failc"
    if [ "$failc" -gt 0 ]; then
      note "variant $name: $failc checks FAILED: not timed"
      for m in "${MODELS[@]}"; do row="$row	-"; done
    else
      for m in "${MODELS[@]}"; do
        d=$WORK/bench_${name}_$m
        rm -rf "$d"
        OUT=$d ZP_WORK=$WORK/bw SKIP_BUILD=1 PEERS=none ZP_BUILD=$VB bash "$SRC/bench/gpu_bench.sh" "$m" > "$d.log" 2>&1
        ms=$(python3 -c 'import json,sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    if r.get("system") == "zp": print(r.get("ms_step", "-"))' "$d/zp_metrics.jsonl" 2> /dev/null | head -1)
        note "variant $name, $m: ${ms:-failed} ms/step"
        [ -z "$ms" ] && tail -n 15 "$d.log" >> "$LOG"
        row="$row	${ms:--}"
      done
    fi
    echo "$row" >> "$ROWS"
  )
done

python3 - "$ROWS" "${MODELS[@]}" > "$OUT/sweep.md" << 'PYEOF'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
models = sys.argv[2:]
print("| variant | settings | checks | " + " | ".join(f"{m} ms/step | ÷ first" for m in models) + " |")
print("|---|---|---|" + "---|---|" * len(models))
base = rows[0][4:] if rows else []
for r in rows:
    cells = []
    for i, v in enumerate(r[4:]):
        ratio = "-"
        try:
            ratio = f"{float(base[i]) / float(v):.3f}"
        except (ValueError, IndexError, ZeroDivisionError):
            pass
        cells += [v, ratio]
    print(f"| {r[0]} | {r[1]} | {r[2]} pass, {r[3]} fail | " + " | ".join(cells) + " |")
print("\n÷ first: the first variant's ms/step over this one's (> 1: faster).")
PYEOF
cat "$OUT/sweep.md"
