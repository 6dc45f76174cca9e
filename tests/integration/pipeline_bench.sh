#!/usr/bin/env bash
# pipeline_bench.sh BUILD SRC SHARED: bench/pipeline_bench.sh (the 2-GPU bubble table of the
# pipeline issue) runs end to end on CPU ranks, so the script is known to work before a GPU
# machine runs it: two schedules at 4 micro-batches on a tiny model; every row has ms/step,
# tok/s and per-stage measured / predicted / ideal bubbles in [0, 1), the textbook column
# matches its closed form, and a bad MODEL is refused with a message.
set -euo pipefail
build=$1; src=$2
work=$(mktemp -d /tmp/zp-pbench.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail=0
tiny="--set train.device=cpu --set train.precision=fp32 --set model.n_layer=2 --set model.d_model=64 --set model.n_head=2 --set model.seq_len=64"
if ! SKIP_BUILD=1 ZP_BUILD="$build" OUT="$work/out" ZP_WORK="$work/w" MODEL=124m MB=2 MICRO=4 STEPS=3 \
  SCHEDULES="1f1b zb_h1" ZP_EXTRA_SETS="$tiny" bash "$src/bench/pipeline_bench.sh" > "$work/log" 2>&1; then
  echo "FAIL: pipeline_bench.sh exited non-zero"; tail -20 "$work/log"; exit 1
fi
if python3 - "$work/out/pipeline_bench.md" <<'PY'; then echo "ok   $(grep -c '^| \(1f1b\|zb_h1\) ' "$work/out/pipeline_bench.md") rows with bubbles in [0, 1) and the textbook column"; else fail=1; fi
import sys
rows = [l.split("|")[1:-1] for l in open(sys.argv[1]) if l.startswith("| 1f1b ") or l.startswith("| zb_h1 ")]
assert len(rows) == 2, rows
for r in rows:
    sc, m, ms, toks, meas, pred, ideal, tb, dev = [c.strip() for c in r]
    assert float(ms) > 0 and float(toks.replace(",", "")) > 0, r
    for col in (meas, pred, ideal):
        v = [float(x) for x in col.split("/")]
        assert len(v) == 2 and all(0 <= x < 1 for x in v), (col, r)
    p, mm = 2, int(m)
    want = (p - 1) / (mm + p - 1) if sc == "1f1b" else ((p - 1) / 3) / (mm + (p - 1) / 3)
    assert abs(float(tb) - want) < 1e-3, (tb, want)
    assert dev.endswith("points"), dev
PY
grep -q "zb_h1 mean bubble" "$work/out/pipeline_bench.md" || { echo "FAIL: no zb_h1 vs 1f1b line"; fail=1; }
if out=$(MODEL=7b SKIP_BUILD=1 ZP_BUILD="$build" OUT="$work/out2" ZP_WORK="$work/w2" bash "$src/bench/pipeline_bench.sh" 2>&1); then
  echo "FAIL: MODEL=7b accepted"; fail=1
elif grep -q "no .*gpt2-7b.toml" <<< "$out"; then echo "ok   bad MODEL refused: $out"
else echo "FAIL: bad MODEL message: $out"; fail=1; fi
[ $fail = 0 ] && echo "pipeline_bench: all passed"
exit $fail
