#!/usr/bin/env bash
# resume.sh BUILD SRC SHARED: checkpoints resume exactly, and the embedded default trains.
#  1. A run stopped at step 4 (on_step hook: save + stop) and resumed to step 8 ends with
#     parameters bitwise equal to an uninterrupted 8-step run, and the same losses.
#  2. The same with SIGTERM at a random moment (pre-emption), on 2 ranks with stage 3.
#  3. The README's embedded default (examples/tiny.toml) reaches loss < 3.2 within 150 steps
#     (it starts at ln(257) = 5.55) and `zp sample` produces text from its checkpoint.
set -uo pipefail
build=$1; src=$2
zp=$build/zp
cfg=$src/tests/configs/equiv.toml
work=$(mktemp -d /tmp/zp-resume.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail=0
losses() { grep -o '"step":[0-9]*,"loss":[0-9.e+-]*' "$1/metrics.jsonl" | sort -u -t, -k1,1; }
# 1. hook stop + resume
"$zp" train "$cfg" --set train.steps=8 --set train.out_dir="$work/full" > "$work/full.log" 2>&1 || { echo "FAIL full run"; cat "$work/full.log"; fail=1; }
printf 'function on_step(m) if m.step == 4 then return {stop = true} end end\n' > "$work/stop4.lua"
"$zp" train "$cfg" --set train.steps=8 --set train.out_dir="$work/part" --set train.hooks="$work/stop4.lua" > "$work/p1.log" 2>&1
grep -q "stopped by on_step hook after step 4" "$work/p1.log" || { echo "FAIL: hook did not stop at 4"; cat "$work/p1.log"; fail=1; }
"$zp" train "$cfg" --set train.steps=8 --set train.out_dir="$work/part" --set train.resume=auto > "$work/p2.log" 2>&1
grep -q "resumed from .*ckpt_00000004 at step 4" "$work/p2.log" || { echo "FAIL: did not resume at 4"; cat "$work/p2.log"; fail=1; }
if out=$("$zp" ckpt compare "$work/full/ckpt_00000008" "$work/part/ckpt_00000008" --tol 0); then echo "ok   hook stop+resume bitwise: $out"; else echo "FAIL: resume differs: $out"; fail=1; fi
if diff <(losses "$work/full") <(losses "$work/part") > /dev/null; then echo "ok   losses identical"; else echo "FAIL: losses differ"; diff <(losses "$work/full") <(losses "$work/part"); fail=1; fi
# 2. SIGTERM pre-emption on 2 ranks, stage 3, bf16
common=(--set train.steps=8000 --set zero.plugin=stage3 --set train.precision=bf16 --set train.log_every=1000)
"$zp" launch -n 2 "$cfg" "${common[@]}" --set train.out_dir="$work/full2" > "$work/full2.log" 2>&1 || { echo "FAIL full2"; tail "$work/full2.log"; fail=1; }
"$zp" launch -n 2 "$cfg" "${common[@]}" --set train.out_dir="$work/term" > "$work/term1.log" 2>&1 &
lp=$!
sleep 1.$((RANDOM % 9))
kill -TERM $lp 2>/dev/null
wait $lp
if grep -q "stopped by signal" "$work/term1.log"; then
  "$zp" launch -n 2 "$cfg" "${common[@]}" --set train.out_dir="$work/term" > "$work/term2.log" 2>&1 || { echo "FAIL resume after TERM"; tail "$work/term2.log"; fail=1; }
  echo "     (SIGTERM: $(grep -o 'stopped by signal.*' "$work/term1.log" | head -1))"
else
  echo "     (SIGTERM arrived before training started or after it ended; comparing the finished run)"
  "$zp" launch -n 2 "$cfg" "${common[@]}" --set train.out_dir="$work/term" > "$work/term2.log" 2>&1
fi
if out=$("$zp" ckpt compare "$work/full2/ckpt_00008000" "$work/term/ckpt_00008000" --tol 0); then echo "ok   SIGTERM+resume bitwise (2 ranks, stage3, bf16): $out"; else echo "FAIL: SIGTERM resume differs: $out"; fail=1; fi
# 3. embedded default
if [ -f "$src/data/fortunes/train_000.bin" ]; then
  "$zp" train "$src/examples/tiny.toml" --set train.steps=150 --set train.out_dir="$work/tiny" --set train.val_every=0 --set train.checkpoint_every=0 > "$work/tiny.log" 2>&1 || { echo "FAIL tiny"; tail "$work/tiny.log"; fail=1; }
  last=$(grep -o '"step":150,"loss":[0-9.]*' "$work/tiny/metrics.jsonl" | sed 's/.*://')
  if awk -v l="$last" 'BEGIN{exit !(l < 3.2)}'; then echo "ok   tiny: loss at step 150 = $last (< 3.2)"; else echo "FAIL: tiny loss at 150 = $last"; fail=1; fi
  "$zp" sample "$src/examples/tiny.toml" --set train.out_dir="$work/tiny" --set sample.max_tokens=40 > "$work/sample.log" 2>&1 || { echo "FAIL sample"; cat "$work/sample.log"; fail=1; }
  [ "$(sed -n '3p' "$work/sample.log" | wc -c)" -gt 5 ] && echo "ok   sample: $(sed -n '3p' "$work/sample.log" | head -c 60)" || { echo "FAIL: empty sample"; cat "$work/sample.log"; fail=1; }
else
  echo "FAIL: data/fortunes missing (run scripts/setup.sh)"; fail=1
fi
[ $fail = 0 ] && echo "resume: all passed"
exit $fail
