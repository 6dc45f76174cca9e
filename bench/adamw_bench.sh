#!/usr/bin/env bash
# adamw_bench.sh: zp's CPU AdamW kernel (bench/adamw_cpu_bench.c) against torch.optim.AdamW on the
# CPU (bench/adamw_torch.py), same N and thread counts, one Markdown table at the end.
#
# Run (repo root; needs a C compiler with OpenMP and, for the torch rows, python3 with torch):
#   bash bench/adamw_bench.sh [N]        (N parameters, default 268435456 = 256M)
# Env: THREADS (default "16 32"), ITERS (timed steps, default 5; ms = median), OUT (default
#   /tmp/zp-out: adamw_zp.jsonl, adamw_torch.jsonl, adamw_build.log, adamw_summary.md),
#   ZP_BUILD (CMake build dir, default build-adamw-bench), PYTHON (default python3, as
#   bench/gpu_bench.sh uses), SKIP_TORCH=1, ISAS (default "scalar,avx2,avx512").
# Build: CMake target adamw_cpu_bench in ZP_BUILD (Release flags); if configuring fails (no
#   Lua/jansson and no .deps on the machine), the same two sources are compiled directly with
#   the Release flags (-O3 -march=x86-64-v2 -fopenmp -ffp-contract=off -fno-math-errno).
# Checks: the zp bench compares every ISA with the scalar path bitwise before timing, the torch
#   script compares fused/foreach with default; a failed check or run makes the exit status 1.
# Memory: about 4.3 GB per run at 256M (both sides allocate 16 B/param of arrays).
# Numbers: G params/s and GB/s from the median; ratios of medians. On a loaded machine compare
#   the best column too.
# Ratios: zp fp32 vs torch fp32 (default, fused); zp mixed (bf16 grad in, bf16 param out,
#   fp32 master/m/v) vs torch fused-mixed (the same dtypes done with torch: cast, fused step,
#   cast back) and vs torch default fp32. params/s over params/s at the same thread count.
set -u -o pipefail
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${1:-${N:-268435456}}
THREADS=${THREADS:-16 32}
ITERS=${ITERS:-5}
OUT=${OUT:-/tmp/zp-out}
BUILD=${ZP_BUILD:-$SRC/build-adamw-bench}
PY=${PYTHON:-python3}
ISAS=${ISAS:-scalar,avx2,avx512}
mkdir -p "$OUT" || { echo "adamw_bench: cannot create $OUT" >&2; exit 2; }
: > "$OUT/adamw_zp.jsonl"
: > "$OUT/adamw_torch.jsonl"
FAILED=0
note() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
fail() { note "FAILED: $*"; FAILED=1; }

NPROC=$(nproc)
CPU=$(grep -m1 'model name' /proc/cpuinfo 2> /dev/null | sed 's/.*: //')
FLAGS=$(grep -m1 '^flags' /proc/cpuinfo 2> /dev/null)
HAS=""
for f in avx2 avx512f avx512_bf16 amx_tile; do [[ " $FLAGS " == *" $f "* ]] && HAS="$HAS $f"; done
note "adamw_bench: n=$N threads {$THREADS} iters=$ITERS; nproc=$NPROC; cpu: ${CPU:-?};${HAS:- no avx2}"
for t in $THREADS; do
  [ "$t" -gt "$NPROC" ] && note "NOTE: $t threads > nproc=$NPROC: runs oversubscribed (still run)"
done

# ---- build ----
BIN=$BUILD/adamw_cpu_bench
if cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DZP_WITH_CUDA=OFF -DZP_TEST_POISON=OFF \
  > "$OUT/adamw_build.log" 2>&1 && cmake --build "$BUILD" --target adamw_cpu_bench >> "$OUT/adamw_build.log" 2>&1; then
  note "build: CMake target adamw_cpu_bench in $BUILD"
else
  BIN=/tmp/zp-adamw-bench/adamw_cpu_bench
  mkdir -p "$(dirname "$BIN")"
  if ${CC:-cc} -O3 -march=x86-64-v2 -fopenmp -ffp-contract=off -fno-math-errno -Wall -Wextra -I"$SRC/include" -I"$SRC/core" \
    "$SRC/bench/adamw_cpu_bench.c" "$SRC/core/adamw_cpu.c" -lm -o "$BIN" >> "$OUT/adamw_build.log" 2>&1; then
    note "build: CMake failed (see $OUT/adamw_build.log), compiled directly -> $BIN"
  else
    tail -n 20 "$OUT/adamw_build.log"
    fail "build (see $OUT/adamw_build.log)"
    exit 1
  fi
fi

TORCH=1
if [ "${SKIP_TORCH:-0}" = 1 ]; then
  TORCH=0
elif ! "$PY" -c 'import torch' 2> /dev/null; then
  fail "$PY cannot import torch: torch rows missing (set PYTHON=...)"
  TORCH=0
fi

# ---- runs ----
for t in $THREADS; do
  note "zp: adamw_cpu_bench --n $N --threads $t"
  "$BIN" --n "$N" --threads "$t" --iters "$ITERS" --isa "$ISAS" --json >> "$OUT/adamw_zp.jsonl" ||
    fail "adamw_cpu_bench at $t threads: exit $?"
  if [ $TORCH = 1 ]; then
    note "torch: adamw_torch.py --n $N --threads $t"
    "$PY" "$SRC/bench/adamw_torch.py" --n "$N" --threads "$t" --iters "$ITERS" --json >> "$OUT/adamw_torch.jsonl" ||
      fail "adamw_torch.py at $t threads: exit $?"
  fi
done

# ---- table ----
python3 - "$OUT/adamw_zp.jsonl" "$OUT/adamw_torch.jsonl" "$N" "$NPROC" "${CPU:-?}" "$ITERS" << 'PYEOF' | tee "$OUT/adamw_summary.md"
import json, sys
zpf, tf, n, nproc, cpu, iters = sys.argv[1:7]
def load(f):
    out = []
    for line in open(f):
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out
zp, tr = load(zpf), load(tf)
tv = next((r.get("torch") for r in tr if r.get("torch")), "?")
print(f"\n### CPU AdamW, n = {int(n):,} parameters ({cpu}; nproc = {nproc}; torch {tv}; median of {iters} steps)\n")
print("| threads | impl | dtypes | path | ms/step (median / best) | G params/s | GB/s (28 B/param) | zp / torch-fused | zp / torch-default |")
print("|---:|---|---|---|---:|---:|---:|---:|---:|")
def find(t, impl):
    return next((r for r in tr if r["threads"] == t and r["impl"] == impl), None)
dt = {"fp32": "fp32 grad, fp32 param = master", "mixed": "bf16 grad, bf16 param, fp32 master"}
for t in sorted({r["threads"] for r in zp + tr}):
    over = " (oversubscribed)" if t > int(nproc) else ""
    for r in [r for r in zp if r["threads"] == t]:
        if "skipped" in r:
            print(f"| {t}{over} | zp | {dt[r['mode']]} | {r['isa']} | skipped: {r['skipped']} | | | | |")
            continue
        fu = find(t, "torch-fused-mixed" if r["mode"] == "mixed" else "torch-fused")
        de = find(t, "torch-default")
        rf = f"{r['params_per_s'] / fu['params_per_s']:.2f}x" + (" (vs fused-mixed)" if r["mode"] == "mixed" else "") if fu else "-"
        rd = f"{r['params_per_s'] / de['params_per_s']:.2f}x" if de else "-"
        print(f"| {t}{over} | zp | {dt[r['mode']]} | {r['isa']} | {r['ms']:.2f} / {r['ms_best']:.2f} | {r['params_per_s'] / 1e9:.3f} | {r['gb_per_s']:.1f} | {rf} | {rd} |")
    for r in [r for r in tr if r["threads"] == t]:
        d = "bf16 grad, bf16 param, fp32 master (casts)" if r["mode"] == "mixed" else "fp32"
        print(f"| {t}{over} | {r['impl']} | {d} | {r['isa']} | {r['ms']:.2f} / {r['ms_best']:.2f} | {r['params_per_s'] / 1e9:.3f} | {r['gb_per_s']:.1f} | | |")
# targets: the default path (best ISA measured), fp32, per thread count
print()
for t in sorted({r["threads"] for r in zp if "skipped" not in r}):
    rows = [r for r in zp if r["threads"] == t and r["mode"] == "fp32" and "skipped" not in r]
    if not rows:
        continue
    order = {"avx512": 3, "avx2": 2, "scalar": 1}
    best = max(rows, key=lambda r: order.get(r["isa"], 0))
    fu, de = find(t, "torch-fused"), find(t, "torch-default")
    if fu and de:
        a, b = best["params_per_s"] / fu["params_per_s"], best["params_per_s"] / de["params_per_s"]
        print(f"- {t} threads, zp fp32 ({best['isa']}, the default path): {a:.2f}x torch fused (target >= 1.0: "
              f"{'met' if a >= 1.0 else 'NOT met'}), {b:.2f}x torch default (target >= 4: {'met' if b >= 4 else 'NOT met'})")
PYEOF
[ $FAILED = 0 ] && note "adamw_bench: all checks passed" || note "adamw_bench: FAILURES above"
exit $FAILED
