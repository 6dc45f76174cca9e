#!/usr/bin/env bash
# ckpt_interop.sh BUILD SRC SHARED: zp export / zp import / train.init_from / zp ckpt logits on
# the CPU, and bad input through the command line (tests/configs/equiv.toml, vocab 257).
#  1. A 2-rank ZeRO-2 bf16 run (fp32 master weights) exported as safetensors (fp32: a directory
#     with model.safetensors + config.json; bf16: one file) and imported back: the imported
#     checkpoint's weights are bitwise the run's master weights (fp32), or their bf16 rounding
#     within 2^-8 relative (bf16); the logits of `zp ckpt logits` are bitwise equal.
#  2. Starting from the import (`zp import` then `zp train` resuming its step-0 checkpoint) and
#     starting with train.init_from on the same file end bitwise equal (2 ranks, stage 3).
#  3. Clear errors, no crash: import into a directory that already has checkpoints, a
#     safetensors file for another shape, a truncated safetensors file, a header that lies
#     about offsets, resuming a checkpoint with a config of another shape, zp export of
#     something that is not a checkpoint. (The HF transformers comparison itself runs on a
#     machine with transformers: tests/gpu/run_hf_interop.sh.)
set -uo pipefail
build=$1; src=$2
zp=$build/zp
cfg=$src/tests/configs/equiv.toml
[ -f "$src/data/fortunes/train_000.bin" ] || { echo "FAIL: data/fortunes missing (run scripts/setup.sh)"; exit 1; }
work=$(mktemp -d /tmp/zp-interop.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL: $*"; fail=1; }
expect_fail() { # what regex cmd...
  local what=$1 re=$2; shift 2
  if "$@" > "$work/out.log" 2>&1; then bad "$what: succeeded"; cat "$work/out.log"; return; fi
  local rc=$?
  if [ $rc -ge 128 ]; then bad "$what: crashed (status $rc)"; cat "$work/out.log"; return; fi
  if grep -E -q "$re" "$work/out.log"; then ok "$what: $(grep -E -o "$re.{0,60}" "$work/out.log" | head -1)"
  else bad "$what: no /$re/ in:"; cat "$work/out.log"; fi
}
toks=1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16
"$zp" launch -n 2 "$cfg" --set zero.plugin=stage2 --set train.precision=bf16 --set train.steps=6 --set train.out_dir="$work/run" \
  > "$work/run.log" 2>&1 || { echo "FAIL: training run"; cat "$work/run.log"; exit 1; }
# 1. export / import round trip
"$zp" export "$work/run" --out "$work/hf" > "$work/e1.log" 2>&1 || { bad "export fp32"; cat "$work/e1.log"; }
"$zp" export "$work/run/ckpt_00000006" --out "$work/m16.safetensors" --dtype bf16 > "$work/e2.log" 2>&1 || { bad "export bf16"; cat "$work/e2.log"; }
[ -f "$work/hf/model.safetensors" ] && grep -q '"n_embd": 32' "$work/hf/config.json" && grep -q '"activation_function": "gelu_new"' "$work/hf/config.json" \
  && ok "export: $(cat "$work/e1.log")" || bad "export did not write model.safetensors + config.json"
"$zp" import "$work/hf/model.safetensors" --config "$cfg" --out "$work/imp" > "$work/i1.log" 2>&1 || { bad "import"; cat "$work/i1.log"; }
if out=$("$zp" ckpt compare "$work/run" "$work/imp" --tol 0); then ok "import(export(run)) weights bitwise: $out"; else bad "round trip: $out"; fi
"$zp" import "$work/m16.safetensors" --config "$cfg" --out "$work/imp16" > "$work/i2.log" 2>&1 || { bad "import bf16"; cat "$work/i2.log"; }
if out=$("$zp" ckpt compare "$work/run" "$work/imp16" --tol 0.02); then ok "bf16 round trip within bf16 rounding: $out"; else bad "bf16 round trip: $out"; fi
"$zp" ckpt logits "$work/run" --tokens $toks --out "$work/l_run.bin" > "$work/l1.log" 2>&1 || { bad "logits run"; cat "$work/l1.log"; }
"$zp" ckpt logits "$work/imp" --tokens $toks --out "$work/l_imp.bin" > "$work/l2.log" 2>&1 || { bad "logits import"; cat "$work/l2.log"; }
[ "$(stat -c %s "$work/l_run.bin" 2>/dev/null)" = $((16 * 257 * 4)) ] && cmp -s "$work/l_run.bin" "$work/l_imp.bin" \
  && ok "logits of the run and of its import bitwise equal ($(sed 's/.*: 16 tokens/16 tokens/' "$work/l1.log"))" || bad "logits differ"
# 2. import + resume == train.init_from (2 ranks, stage 3, 4 steps)
two=(--set zero.plugin=stage3 --set train.steps=4 --set train.resume=auto)
"$zp" launch -n 2 "$cfg" "${two[@]}" --set train.out_dir="$work/imp" > "$work/t1.log" 2>&1 || { bad "train from the import"; tail "$work/t1.log"; }
grep -q "resumed from .*imp/ckpt_00000000 at step 0" "$work/t1.log" || bad "the import was not resumed from"
"$zp" launch -n 2 "$cfg" "${two[@]}" --set train.out_dir="$work/init" --set train.init_from="$work/hf/model.safetensors" \
  > "$work/t2.log" 2>&1 || { bad "train.init_from"; tail "$work/t2.log"; }
grep -q "initial weights from .*model.safetensors (train.init_from)" "$work/t2.log" || bad "init_from not reported"
if out=$("$zp" ckpt compare "$work/imp/ckpt_00000004" "$work/init/ckpt_00000004" --tol 0 --state | tr '\n' ' '); then
  ok "zp import + resume == train.init_from after 4 steps (weights, m, v bitwise): $out"
else bad "import vs init_from: $out"; fi
# 3. bad input
expect_fail "import into a directory with checkpoints" "already holds a checkpoint" "$zp" import "$work/hf/model.safetensors" --config "$cfg" --out "$work/run"
expect_fail "import for another model shape" "tensor h.2.ln_1.weight is missing" \
  "$zp" import "$work/hf/model.safetensors" --config "$cfg" --set model.n_layer=3 --out "$work/x1"
expect_fail "import with another d_model" "tensor wte.weight has shape \[257, 32\], the config's model .* needs \[257, 64\]" \
  "$zp" import "$work/hf/model.safetensors" --config "$cfg" --set model.d_model=64 --out "$work/x2"
head -c 3000 "$work/hf/model.safetensors" > "$work/trunc.safetensors"
expect_fail "truncated safetensors" "trunc.safetensors: .*(data_offsets|data buffer)" "$zp" import "$work/trunc.safetensors" --config "$cfg" --out "$work/x3"
# a header that lies: the first data_offsets shifted by 4 bytes (same length, so the file stays parseable)
python_free_lie() { # rewrite "data_offsets":[0, as "data_offsets":[4, in place
  local f=$1 n
  n=$(grep -abo '"data_offsets":\[0,' "$f" | head -1 | cut -d: -f1)
  [ -n "$n" ] && printf '4' | dd of="$f" bs=1 seek=$((n + 16)) conv=notrunc 2>/dev/null
}
cp "$work/hf/model.safetensors" "$work/lie.safetensors" && python_free_lie "$work/lie.safetensors"
expect_fail "header lying about offsets" "lie.safetensors: tensor .*(bytes at data_offsets|overlap|belong to no tensor)" \
  "$zp" import "$work/lie.safetensors" --config "$cfg" --out "$work/x4"
expect_fail "resume with a config of another shape" "checkpoint has n_layer 2 n_head 2 d_model 32 .* config has n_layer 2 n_head 2 d_model 64" \
  "$zp" train "$cfg" --set model.d_model=64 --set train.resume=auto --set train.out_dir="$work/run" --set train.steps=8
expect_fail "export of a non-checkpoint" "neither a checkpoint" "$zp" export "$work/hf" --out "$work/x5.safetensors"
expect_fail "logits with a token outside the vocabulary" "token 300 at position 1 is not below vocab_size 257" \
  "$zp" ckpt logits "$work/run" --tokens 1,300
if "$zp" ckpt info "$work/run" > "$work/info.log" 2>&1 && grep -q "complete: step 6, 2 ranks, stage2" "$work/info.log" && grep -q "all checksums match" "$work/info.log"; then
  ok "zp ckpt info of the run directory"
else bad "zp ckpt info"; cat "$work/info.log"; fi
[ $fail = 0 ] && echo "ckpt_interop: all passed"
exit $fail
