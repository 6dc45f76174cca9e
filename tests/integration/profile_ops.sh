#!/usr/bin/env bash
# profile_ops.sh BUILD SRC SHARED: train.profile_ops (core/op_profile.c) on the CPU backend.
# Claims checked: profiling does not change the results (losses and parameters bitwise); the
# table counts exactly the step's ops (per step: one qkv matmul forward and backward per block,
# one classifier matmul each way, two layernorm forwards per block plus the final one, the
# gradient norm's sums: one sumsq_start per group during the backward ("sumsq") and one
# "sumsq_collect", or with train.overlap_norm = false one sumsq_many, also listed as "sumsq", and
# the same losses, grad_norm and parameters) and not validation's; the ops' total is within the measured step time. Both timing modes: device
# timestamps (the CPU backend has the ABI 1.3 timer ops: the default) with the device's idle
# time, and issue + synchronize (train.profile_sync), which must count the same calls.
set -euo pipefail
build=$1; src=$2
zp=$build/zp
cfg=$src/tests/configs/equiv.toml
[ -f "$src/data/fortunes/train_000.bin" ] || { echo "FAIL: data/fortunes missing (run scripts/setup.sh)"; exit 1; }
work=$(mktemp -d /tmp/zp-profile.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail=0
common=(--set data.val="$(cd "$src" && pwd)/data/fortunes/val_*.bin" --set train.val_every=2 --set train.val_batches=3)
"$zp" train "$cfg" --set train.out_dir="$work/plain" "${common[@]}" > "$work/plain.log" 2>&1 || { echo "FAIL: plain run"; tail "$work/plain.log"; exit 1; }
"$zp" train "$cfg" --set train.out_dir="$work/prof" --set train.profile_ops=true --set train.overlap_norm=true "${common[@]}" > "$work/prof.log" 2>&1 || { echo "FAIL: profiled run"; tail "$work/prof.log"; exit 1; }
"$zp" train "$cfg" --set train.out_dir="$work/profs" --set train.profile_ops=true --set train.profile_sync=true --set train.overlap_norm=true "${common[@]}" > "$work/profs.log" 2>&1 || { echo "FAIL: profiled run (sync)"; tail "$work/profs.log"; exit 1; }
a=$(grep -o '"step":[0-9]*,"loss":[0-9.e+-]*' "$work/plain/metrics.jsonl"); b=$(grep -o '"step":[0-9]*,"loss":[0-9.e+-]*' "$work/prof/metrics.jsonl")
if [ "$a" = "$b" ] && out=$("$zp" ckpt compare "$work/plain/ckpt_00000004" "$work/prof/ckpt_00000004" --tol 0 2>&1); then
  echo "ok   profiling leaves the results unchanged (bitwise): $out"
else
  echo "FAIL: profiled run differs: $a vs $b ${out:-}"; fail=1
fi
row() { grep -E "^\| $1 \|" "${2:-$work/prof.log}" | awk -F'|' '{gsub(/ /, "", $3); print $3}'; }
# equiv.toml: 2 blocks, d_model 32 (qkv 32x96), vocab padded 320
# sumsq (the two runs above set train.overlap_norm = true, off by default): the gradient norm's
# sums of the 4 groups are started during the backward (ABI 1.9 sumsq_start, timed as "sumsq"
# each) and collected with one wait ("sumsq_collect")
want=("matmul_fwd 32x96:2.0" "matmul_bwd 32x96:2.0" "matmul_fwd 32x320:1.0" "matmul_bwd 32x320:1.0" "layernorm_fwd:5.0" "attention_bwd:2.0" "sumsq:4.0" "sumsq_collect:1.0")
for w in "${want[@]}"; do
  got=$(row "${w%:*}")
  gots=$(row "${w%:*}" "$work/profs.log")
  if [ "$got" = "${w#*:}" ] && [ "$gots" = "$got" ]; then echo "ok   ${w%:*}: $got calls/step (both modes)"; else echo "FAIL: ${w%:*}: '$got' / '$gots' (sync) calls/step, want ${w#*:}"; fail=1; fi
done
if grep -q "device timestamps before and after each op" "$work/prof.log" && grep -q "each op issued then synchronized" "$work/profs.log" &&
  grep -qE "^device: busy [0-9.]+ ms/step in ops, idle [0-9.]+ ms/step" "$work/prof.log" && ! grep -q "^device: busy" "$work/profs.log" &&
  ! grep -q "^warning:" "$work/prof.log"; then
  echo "ok   $(grep '^device: busy' "$work/prof.log")"
else
  echo "FAIL: timing-mode headers or the device line"; grep -E "op profile|^device|^warning" "$work/prof.log" "$work/profs.log"; fail=1
fi
# train.overlap_norm = false (the default): the norm's sums at the step, one sumsq_many; the same bits
"$zp" train "$cfg" --set train.out_dir="$work/profn" --set train.profile_ops=true --set train.overlap_norm=false "${common[@]}" > "$work/profn.log" 2>&1 || { echo "FAIL: profiled run (overlap_norm false)"; tail "$work/profn.log"; fail=1; }
gn() { grep -o '"step":[0-9]*,"loss":[0-9.e+-]*,"lr":[0-9.e+-]*,"grad_norm":[0-9.e+-]*' "$1/metrics.jsonl"; }
if [ "$(row sumsq "$work/profn.log")" = 1.0 ] && [ -z "$(row sumsq_collect "$work/profn.log")" ] && [ "$(gn "$work/prof")" = "$(gn "$work/profn")" ] &&
  out=$("$zp" ckpt compare "$work/prof/ckpt_00000004" "$work/profn/ckpt_00000004" --tol 0 2>&1); then
  echo "ok   train.overlap_norm=false: one sumsq_many per step, the same losses and grad_norm, $out"
else
  echo "FAIL: overlap_norm=false: sumsq '$(row sumsq "$work/profn.log")' collect '$(row sumsq_collect "$work/profn.log")'"; paste <(gn "$work/prof") <(gn "$work/profn"); fail=1
fi
for log in "$work/prof.log" "$work/profs.log"; do
if python3 - "$log" <<'EOF'; then echo "ok   $(grep '^ops total' "$log")"; else fail=1; fi
import re, sys
t = open(sys.argv[1]).read()
m = re.search(r"the profiled step takes ([0-9.]+) ms", t); o = re.search(r"ops total ([0-9.]+) ms/step", t)
if not (m and o and float(o.group(1)) <= float(m.group(1)) * 1.001 + 0.05):
    print("FAIL: ops total above the step time:", m and m.group(0), o and o.group(0)); sys.exit(1)
EOF
done
[ $fail = 0 ] && echo "profile_ops: all passed"
exit $fail
