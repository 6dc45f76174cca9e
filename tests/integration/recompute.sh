#!/usr/bin/env bash
# recompute.sh BUILD SRC SHARED: activation recompute (train.recompute) on CPU ranks.
# Claims checked:
# - recompute gives the same losses and parameters bit for bit as keeping every activation
#   (the re-run forward is the same arithmetic), for stage none at 1 rank and stage3 at 2
#   ranks (where the block's parameters must be gathered again for the recompute) and with
#   tensor parallelism (tp=2: the recomputed block repeats its all-reduces), bf16;
# - the activation bytes (ledger ACT, device tier) with recompute grow with depth by exactly
#   one residual-stream tensor per block (B*T*d_model*4 bytes: L=4 minus L=2 = 2 tensors),
#   while without recompute they grow by a whole block's saved activations;
# - selective recompute (train.recompute_gelu: one GELU-output slot for every block, refilled
#   before each block's backward) is bitwise equal to keeping every activation (the CPU backend's
#   GELU is the same op both times), at 1 rank and with tp=2 (model_tp.c's backward), and saves
#   exactly (L - 1) GELU outputs of B*T*4*d_model*4 bytes; train.recompute_gelu_blocks = 3 of 4 saves exactly 2 outputs, is
#   bitwise equal too, and more blocks than the model has is refused;
# - train.recompute with pipeline parallelism (pp 2: 1f1b, gpipe, interleaved_1f1b; pp 2 x tp 2) is bitwise
#   equal to pp 2 without it and holds less ACT; with a split-backward schedule (zb_h1) it is
#   refused with the reason; so is the selective GELU recompute in a pipeline (one region per
#   stage: recompute_gelu and recompute_gelu_blocks = 3 bitwise, less ACT, zb refused).
set -euo pipefail
build=$1; src=$2
zp=$build/zp
cfg=$src/tests/configs/equiv.toml
[ -f "$src/data/fortunes/train_000.bin" ] || { echo "FAIL: data/fortunes missing (run scripts/setup.sh)"; exit 1; }
work=$(mktemp -d /tmp/zp-recompute.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail=0
. "$src/tests/integration/lib/runs.sh" # run, close
RUN_SETS=(train.precision=bf16)
act() { python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])["tiers"]["gpu"]["ACT"])' "$work/$1/metrics.jsonl"; }
for spec in "none 1" "stage3 2" "stage1 2 parallel.tp=2"; do
  set -- $spec
  run "full-$1" "$2" zero.plugin=$1 train.recompute=false ${3:-} && run "rc-$1" "$2" zero.plugin=$1 train.recompute=true ${3:-} || continue
  if ! cmp -s "$work/full-$1.losses" "$work/rc-$1.losses"; then
    echo "FAIL: $1: losses differ with recompute"; paste "$work/full-$1.losses" "$work/rc-$1.losses"; fail=1; continue
  fi
  if out=$("$zp" ckpt compare "$(ls -d "$work/full-$1"/ckpt_* | tail -1)" "$(ls -d "$work/rc-$1"/ckpt_* | tail -1)" --tol 0 2>&1); then
    echo "ok   recompute vs full activations, $1 at $2 rank(s)${3:+ ($3)}, bf16 (bitwise): $out"
  else
    echo "FAIL: $1: $out"; fail=1
  fi
done
for L in 2 4; do
  run "act-rc-$L" 1 model.n_layer=$L train.recompute=true train.steps=1
  run "act-full-$L" 1 model.n_layer=$L train.recompute=false train.steps=1
done
res=$((2 * 16 * 32 * 4)) # B*T*d_model*fp32 (CPU compute dtype)
d_rc=$(( $(act act-rc-4) - $(act act-rc-2) )); d_full=$(( $(act act-full-4) - $(act act-full-2) ))
if [ "$d_rc" = $((2 * res)) ] && [ "$d_full" -gt $((8 * res)) ]; then
  echo "ok   ACT per extra block: $((d_rc / 2)) B with recompute (one residual tensor, $res B), $((d_full / 2)) B without"
else
  echo "FAIL: ACT growth L=2 -> 4: recompute $d_rc B (want $((2 * res))), full $d_full B"; fail=1
fi
# selective recompute of the GELU output
for spec in "none 1" "stage1 2 parallel.tp=2"; do
  set -- $spec
  run "gelu-$1" "$2" zero.plugin=$1 train.recompute_gelu=true ${3:-} && bitwise "full-$1" "gelu-$1" "recompute_gelu vs full activations, $1 at $2 rank(s)${3:+ ($3)}"
done
run act-gelu-4 1 model.n_layer=4 train.recompute_gelu=true train.steps=1
fc=$((2 * 16 * 128 * 4)) # B*T*4*d_model*fp32
saved=$(( $(act act-full-4) - $(act act-gelu-4) ))
if [ "$saved" = $((3 * fc)) ]; then echo "ok   recompute_gelu at L=4 saves $saved B of ACT (3 GELU outputs of $fc B)"
else echo "FAIL: recompute_gelu saves $saved B at L=4, want $((3 * fc))"; fail=1; fi
# part of the model: the last 3 of 4 blocks share one slot (2 saved), bitwise; more blocks than
# the model has is refused
run act-gelu3-4 1 model.n_layer=4 train.recompute_gelu_blocks=3 train.steps=1
saved=$(( $(act act-full-4) - $(act act-gelu3-4) ))
if [ "$saved" = $((2 * fc)) ]; then echo "ok   recompute_gelu_blocks=3 at L=4 saves $saved B of ACT (2 GELU outputs of $fc B)"
else echo "FAIL: recompute_gelu_blocks=3 saves $saved B at L=4, want $((2 * fc))"; fail=1; fi
run full4 1 model.n_layer=4 && run gelu3 1 model.n_layer=4 train.recompute_gelu_blocks=3 &&
  bitwise full4 gelu3 "recompute_gelu_blocks=3 of 4 vs full activations"
if out=$("$zp" train "$cfg" --set train.out_dir="$work/gelu-bad" --set train.recompute_gelu_blocks=9 2>&1); then
  echo "FAIL: recompute_gelu_blocks=9 with 2 layers accepted"; fail=1
elif grep -q "train.recompute_gelu_blocks = 9: must be 0 .. model.n_layer (2)" <<< "$out"; then
  echo "ok   recompute_gelu_blocks=9 refused: $(grep -m1 -o 'train.recompute_gelu_blocks = 9[^)]*)' <<< "$out")"
else echo "FAIL: recompute_gelu_blocks=9: $(tail -3 <<< "$out")"; fail=1; fi
# with pipeline parallelism: every slot keeps only its blocks' inputs, one block region per stage
# is refilled before each block's backward; bitwise equal to pp without recompute (1f1b, gpipe,
# interleaved), less ACT, and a split-backward schedule is refused with the reason
PPS=(parallel.pp=2 pipeline.micro_batches=4 model.n_layer=4)
run pp-full 2 "${PPS[@]}" && run pp-rc 2 "${PPS[@]}" train.recompute=true && bitwise pp-full pp-rc "recompute vs full activations, pp 2 1f1b"
for sc in gpipe interleaved_1f1b; do
  run "pp-full-$sc" 2 "${PPS[@]}" pipeline.schedule=$sc pipeline.chunks=$([ $sc = gpipe ] && echo 1 || echo 2) &&
    run "pp-rc-$sc" 2 "${PPS[@]}" pipeline.schedule=$sc pipeline.chunks=$([ $sc = gpipe ] && echo 1 || echo 2) train.recompute=true &&
    bitwise "pp-full-$sc" "pp-rc-$sc" "recompute vs full activations, pp 2 $sc"
done
run pptp-full 4 "${PPS[@]}" parallel.tp=2 && run pptp-rc 4 "${PPS[@]}" parallel.tp=2 train.recompute=true &&
  bitwise pptp-full pptp-rc "recompute vs full activations, pp 2 x tp 2 (the recomputed blocks repeat their all-reduces)"
# the selective GELU recompute in a pipeline: one GELU-output region per stage (every such block
# refills it: other micro-batches' forwards overwrite it in between)
for gs in train.recompute_gelu=true train.recompute_gelu_blocks=3; do
  run "pp-g-${gs#*.}" 2 "${PPS[@]}" "$gs" && bitwise pp-full "pp-g-${gs#*.}" "$gs vs full activations, pp 2 1f1b"
done
# gpipe runs every forward before any backward: the last block's region holds the last
# micro-batch's output when the first one's backward starts (1f1b's last stage would not show it)
run pp-g-gp 2 "${PPS[@]}" pipeline.schedule=gpipe train.recompute_gelu=true &&
  bitwise pp-full-gpipe pp-g-gp "recompute_gelu vs full activations, pp 2 gpipe"
run pp-g-il 2 "${PPS[@]}" pipeline.schedule=interleaved_1f1b pipeline.chunks=2 train.recompute_gelu=true &&
  bitwise pp-full-interleaved_1f1b pp-g-il "recompute_gelu vs full activations, pp 2 interleaved_1f1b"
if [ -f "$work/pp-g-recompute_gelu=true/metrics.jsonl" ]; then
  a_g=$(act "pp-g-recompute_gelu=true"); a_f=$(act pp-full)
  if [ "$a_g" -lt "$a_f" ]; then echo "ok   pp 2 ACT (rank 0): $a_f B -> $a_g B with recompute_gelu"
  else echo "FAIL: pp 2 ACT with recompute_gelu $a_g B, without $a_f B"; fail=1; fi
fi
if out=$("$zp" launch -n 2 "$cfg" --set train.out_dir="$work/g-zb" --set parallel.pp=2 --set pipeline.schedule=zb_h1 --set train.recompute_gelu=true 2>&1); then
  echo "FAIL: recompute_gelu with zb_h1 accepted"; fail=1
elif grep -q "train.recompute_gelu(_blocks) with pipeline.schedule = \"zb_h1\"" <<< "$out"; then
  echo "ok   recompute_gelu with zb_h1 refused"
else echo "FAIL: recompute_gelu with zb_h1: $(tail -3 <<< "$out")"; fail=1; fi
a_full=$(act pp-full); a_rc=$(act pp-rc)
if [ -n "$a_full" ] && [ -n "$a_rc" ] && [ "$a_rc" -lt "$a_full" ]; then echo "ok   pp 2 ACT (rank 0): $a_full B -> $a_rc B with recompute"
else echo "FAIL: pp 2 ACT with recompute $a_rc B, without $a_full B"; fail=1; fi
if out=$("$zp" launch -n 2 "$cfg" --set train.out_dir="$work/rc-zb" --set parallel.pp=2 --set pipeline.schedule=zb_h1 --set train.recompute=true 2>&1); then
  echo "FAIL: recompute with zb_h1 accepted"; fail=1
elif grep -q "train.recompute with pipeline.schedule = \"zb_h1\", which splits the backward" <<< "$out"; then
  echo "ok   recompute with zb_h1 refused: $(grep -m1 -o 'train.recompute with pipeline.schedule[^:]*' <<< "$out")"
else echo "FAIL: recompute with zb_h1: $(tail -3 <<< "$out")"; fail=1; fi
[ $fail = 0 ] && echo "recompute: all passed"
exit $fail
