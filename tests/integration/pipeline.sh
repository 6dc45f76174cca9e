#!/usr/bin/env bash
# pipeline.sh BUILD SRC SHARED: pipeline parallelism on CPU ranks (zp launch, shared-memory
# point-to-point), fp32, the tiny model of equiv.toml with 6 blocks (8 groups), 4 AdamW steps.
#
# Reference: one rank, train.grad_accum = 8 (global batch 16 sequences). Pipelines run the same
# global batch: pipeline.micro_batches = 8 (dp 1) or 4 (dp 2).
#
# Tolerances:
# - Every pipeline run is BITWISE equal (per-step losses and final parameters) to the pp = 2
#   1F1B run: gpipe, 1f1b, zb_h1 (split backward), interleaved_1f1b (chunks 2) at pp 2 and 4, an
#   explicit uneven split, and a resumed run. Each stage accumulates every group's gradient over
#   the micro-batches in micro-batch order whatever the schedule, the tied wte's gradient is
#   (first stage's encoder part) + (last stage's classifier part) in every layout, and the split
#   backward runs the same ops on the same values. dp 2 x pp 2 with zero none, stage1 and stage2
#   are bitwise equal to each other (fixed-order reductions, once per step at REDUCE_GRADS).
# - Against the single-rank reference: the first step's loss is bitwise equal (the forward is
#   the same arithmetic); later losses within 1e-5 relative and final parameters within 1e-4
#   absolute (equivalence.sh's bound for another summation order). The only difference is the
#   order in which the tied wte's gradient is summed: the single rank accumulates encoder and
#   classifier contributions interleaved, micro-batch by micro-batch, into one buffer; the
#   pipeline sums each stage's part separately and adds them at REDUCE_GRADS (about 1e-7
#   relative on that gradient). AdamW's update m/sqrt(v) turns such differences on near-zero
#   gradients into parameter differences of up to ~lr * 1e-3; measured 4.4e-6 (pp) and 4.7e-6
#   (dp 2 x pp 2), losses equal to the 6 printed digits.
# Then: schedules that deadlock, miss a backward or raise a Lua error are rejected by `zp train`
# before any compute (non-zero exit, the validator's message, no output directory); the bubble
# per stage is in metrics.jsonl and equals 1 - busy/wall recomputed from the trace; layout
# errors (zb_h1 with tp > 1 (pp x tp itself: pptp.sh), grad_accum with pp, stage3 with pp, a bad pipeline.stages) are clear errors;
# `zp plan` with pp prints each stage's memory, and stage 0's equals the real rank 0's ledger.
set -euo pipefail
build=$1; src=$2
zp=$build/zp
cfg=$src/tests/configs/equiv.toml
[ -f "$src/data/fortunes/train_000.bin" ] || { echo "FAIL: data/fortunes missing (run scripts/setup.sh)"; exit 1; }
work=$(mktemp -d /tmp/zp-pipe.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail=0
run() { # name nranks sets...
  local name=$1 n=$2; shift 2
  local sets=(--set model.n_layer=6)
  for s in "$@"; do sets+=(--set "$s"); done
  if ! "$zp" launch -n "$n" "$cfg" --set train.out_dir="$work/$name" "${sets[@]}" > "$work/$name.log" 2>&1; then
    echo "FAIL: run $name"; tail -20 "$work/$name.log"; fail=1; return 1
  fi
  grep -o '"step":[0-9]*,"loss":[0-9.e+-]*' "$work/$name/metrics.jsonl" > "$work/$name.losses"
}
ckpt() { ls -d "$work/$1"/ckpt_* | tail -1; }
bitwise() { # a b what
  local out
  if ! cmp -s "$work/$1.losses" "$work/$2.losses"; then
    echo "FAIL: $3: losses differ"; paste "$work/$1.losses" "$work/$2.losses"; fail=1; return
  fi
  if out=$("$zp" ckpt compare "$(ckpt "$1")" "$(ckpt "$2")" --tol 0 2>&1); then echo "ok   $3 (bitwise): $out"
  else echo "FAIL: $3: $out"; fail=1; fi
}
close() { # a b what: step 1 bitwise, losses rel 1e-5, params 1e-4
  local out
  if ! python3 - "$work/$1.losses" "$work/$2.losses" <<'EOF'
import re, sys
a = [float(x) for x in re.findall(r'"loss":([0-9.e+-]+)', open(sys.argv[1]).read())]
b = [float(x) for x in re.findall(r'"loss":([0-9.e+-]+)', open(sys.argv[2]).read())]
ok = len(a) == len(b) == 4 and a[0] == b[0] and all(abs(x - y) <= 1e-5 * abs(x) for x, y in zip(a, b))
sys.exit(0 if ok else 1)
EOF
  then echo "FAIL: $3: losses"; paste "$work/$1.losses" "$work/$2.losses"; fail=1; return; fi
  if out=$("$zp" ckpt compare "$(ckpt "$1")" "$(ckpt "$2")" --tol 1e-4 2>&1); then echo "ok   $3 (losses: step 1 bitwise, rel <= 1e-5; params <= 1e-4): $out"
  else echo "FAIL: $3: $out"; fail=1; fi
}
M=pipeline.micro_batches
run ref 1 train.grad_accum=8
run p2 2 parallel.pp=2 $M=8 pipeline.schedule=1f1b train.trace=true && close ref p2 "pp 2 1f1b vs single rank, same global batch"
for sc in gpipe zb_h1; do run p2-$sc 2 parallel.pp=2 $M=8 pipeline.schedule=$sc && bitwise p2 p2-$sc "pp 2 $sc vs pp 2 1f1b"; done
run p2-il 2 parallel.pp=2 $M=8 pipeline.schedule=interleaved_1f1b pipeline.chunks=2 && bitwise p2 p2-il "pp 2 interleaved_1f1b (chunks 2) vs pp 2 1f1b"
for sc in gpipe 1f1b zb_h1; do run p4-$sc 4 parallel.pp=4 $M=8 pipeline.schedule=$sc && bitwise p2 p4-$sc "pp 4 $sc vs pp 2 1f1b"; done
run p4-il 4 parallel.pp=4 $M=8 pipeline.schedule=interleaved_1f1b pipeline.chunks=2 && bitwise p2 p4-il "pp 4 interleaved_1f1b (chunks 2) vs pp 2 1f1b"
run p2-split 2 parallel.pp=2 $M=8 'pipeline.stages=[3,5]' && bitwise p2 p2-split "pp 2 explicit split [3, 5] vs balanced"
grep -q "split from pipeline.stages" "$work/p2-split.log" && grep -q "uneven split" "$work/p2-split.log" || { echo "FAIL: explicit uneven split not reported"; fail=1; }
# dp 2 x pp 2 with ZeRO over the data-parallel dimension
run d2p2-none 4 parallel.pp=2 $M=4 zero.plugin=none && close ref d2p2-none "dp 2 x pp 2 (replicated) vs single rank"
# zp plan with pp: each stage's memory comes from the same allocation path as the real stage
# (dry run); stage 0's ledger must equal what rank 0 (stage 0) of the real run reports
planmatch() { # run-name world sets...
  local name=$1 n=$2; shift 2
  local sets=(--set model.n_layer=6) planned real
  for s in "$@"; do sets+=(--set "$s"); done
  planned=$("$zp" plan "$cfg" --world "$n" "${sets[@]}" 2>&1 | grep -o 'stage 0: .*' | grep -o 'PARAM .* BUFFER [0-9.]* [KMGT]*i*B' || true)
  real=$(grep -o '| PARAM .* BUFFER [0-9.]* [KMGT]*i*B' "$work/$name.log" | head -1 | sed 's/^| //')
  if [ -n "$planned" ] && [ "$planned" = "$real" ]; then echo "ok   zp plan stage 0 of $name = the run's rank 0: $real"
  else echo "FAIL: zp plan stage 0 of $name: '$planned' vs the run's '$real'"; fail=1; fi
}
planmatch p2 2 parallel.pp=2 $M=8 pipeline.schedule=1f1b train.trace=true
planmatch d2p2-none 4 parallel.pp=2 $M=4 zero.plugin=none
for st in stage1 stage2; do run d2p2-$st 4 parallel.pp=2 $M=4 zero.plugin=$st && bitwise d2p2-none d2p2-$st "dp 2 x pp 2 $st vs replicated"; done
planmatch d2p2-stage2 4 parallel.pp=2 $M=4 zero.plugin=stage2 # sharded GRAD: the executor's accumulators
run p2t2 4 parallel.pp=2 parallel.tp=2 $M=4 train.steps=1 && planmatch p2t2 4 parallel.pp=2 parallel.tp=2 $M=4 # tensor-parallel stages
# resume: 2 steps, then continue to 4 from the checkpoint
run p2-res 2 parallel.pp=2 $M=8 train.steps=2 && \
  run p2-res 2 parallel.pp=2 $M=8 train.resume=auto && {
    grep -q "resumed from" "$work/p2-res.log" || { echo "FAIL: pipeline resume did not resume"; fail=1; }
    out=$("$zp" ckpt compare "$(ckpt p2)" "$(ckpt p2-res)" --tol 0 2>&1) && echo "ok   pp 2 resumed at step 2 vs uninterrupted (bitwise): $out" || { echo "FAIL: resume: $out"; fail=1; }
  }
# rejected before any compute, through zp train
reject() { # name pattern sets...
  local name=$1 pat=$2 n=$3; shift 3
  local sets=()
  for s in "$@"; do sets+=(--set "$s"); done
  if "$zp" launch -n "$n" "$cfg" --set train.out_dir="$work/$name" "${sets[@]}" > "$work/$name.log" 2>&1; then
    echo "FAIL: $name was accepted"; fail=1; return
  fi
  if ! grep -q -- "$pat" "$work/$name.log"; then echo "FAIL: $name: expected '$pat' in:"; head -5 "$work/$name.log"; fail=1; return; fi
  if [ -e "$work/$name" ]; then echo "FAIL: $name: rejected only after the run started ($work/$name exists)"; fail=1; return; fi
  echo "ok   $name rejected: $(grep -m1 -o -- "$pat.*" "$work/$name.log" | cut -c1-150)"
}
S=$(cd "$src" && pwd)/tests/schedules
reject rej-deadlock "rejected: deadlock: stage 0 instruction #6 (SEND_ACT mb=1 buf=1 to stage 1) waits for stage 1" 2 parallel.pp=2 $M=4 pipeline.schedule=$S/deadlock.lua
reject rej-missing "stage 0 instruction #20 (REDUCE_GRADS): micro-batch 1 has no backward" 2 parallel.pp=2 $M=4 pipeline.schedule=$S/missing_backward.lua
reject rej-lua "lua_error.lua:7: attempt to call a nil value (global 'FWDD')" 2 parallel.pp=2 $M=4 pipeline.schedule=$S/lua_error.lua
reject rej-split "pipeline.stages covers 7 groups but the model has 8" 2 parallel.pp=2 $M=4 'pipeline.stages=[3,4]' model.n_layer=6
reject rej-accum "train.grad_accum = 2 with parallel.pp = 2" 2 parallel.pp=2 train.grad_accum=2
reject rej-pptp-zb "which is not implemented with parallel.tp = 2" 4 parallel.pp=2 parallel.tp=2 $M=4 pipeline.schedule=zb_h1
reject rej-stage3 "cannot be combined with pipeline parallelism" 2 parallel.pp=2 zero.plugin=stage3
reject rej-world "parallel.dp 3 x pp 2 x tp 1 = 6 does not match the 4 ranks" 4 parallel.pp=2 parallel.dp=3
# bubble: in metrics.jsonl per stage, and 1 - busy/wall from the trace agrees
if python3 - "$work/p2" <<'EOF'
import json, sys
d = sys.argv[1]
last = [json.loads(l) for l in open(d + "/metrics.jsonl") if '"pipeline"' in l][-1]["pipeline"]
assert len(last["bubble"]) == 2 and len(last["bubble_pred"]) == 2, last
assert all(0 <= b < 1 for b in last["bubble"] + last["bubble_mean"]), last
busy, wall = [], []
for r in range(2):
    ev = [e for e in json.load(open(f"{d}/trace_rank{r}.json"))["traceEvents"] if e.get("ph") == "X"]
    w = [e for e in ev if e["name"] == "pipeline to REDUCE_GRADS"][-1]   # the last step's window
    busy.append(sum(e["dur"] for e in ev if e["cat"] == "compute" and e["name"] != "optimizer step"
                    and e["ts"] >= w["ts"] and e["ts"] + e["dur"] <= w["ts"] + w["dur"] + 1))
    wall.append(w["dur"])
trace = [1 - b / max(wall) for b in busy]
diff = max(abs(a - b) for a, b in zip(trace, last["bubble"]))
print(f"ok   bubble last step: metrics {last['bubble']} trace {[round(x, 4) for x in trace]} (max diff {diff:.4f}); "
      f"mean {last['bubble_mean']}, predicted {last['bubble_pred']}")
sys.exit(0 if diff < 0.02 else 1)
EOF
then :; else echo "FAIL: bubble"; fail=1; fi
grep -q "pipeline bubble" "$work/p2.log" || { echo "FAIL: no bubble report at the end of the run"; fail=1; }
[ $fail = 0 ] && echo "pipeline: all passed"
exit $fail
