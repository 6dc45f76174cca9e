#!/usr/bin/env bash
# tensor.sh BUILD SRC: tensor parallelism (parallel.tp, plugin `tensor`) on CPU ranks, fp32,
# against the single-rank run with the same global batch (tests/configs/equiv.toml: 2 layers,
# d_model 32, vocab 257 padded to 320, 4 AdamW steps at lr 1e-2, no clipping):
#   tp 2 (n_head 2), tp 3 (n_head 3, extra vocabulary padding), tp 4 (n_head 4), dp 2 x tp 2
#   with ZeRO-1, tp 2 with bf16 storage,
#   accumulation and clipping -- and ZeRO-2/3 and ZeRO-1 + offload_cpu at dp 2 x tp 2; model-state bytes per rank vs formula
#   bitwise equal to ZeRO-1 there; a tp run resumed from its checkpoint equals the
#   uninterrupted one bitwise; n_head not divisible by tp is refused with a message.
# Tolerances (the all-reduces add partial sums over heads / MLP columns / vocabulary slices
# in another order than one rank's matmul or softmax, ~1e-7 relative per value):
#   - loss and gradient norm of every step: relative 1e-5 (measured <= 1.4e-6);
#   - final parameters (tp_compare.py, on `zp export`s: max |a-b| / max(1, max|a|) per
#     tensor, the parameters are below 1 so this is absolute): 5e-5. Adam's update
#     m/sqrt(v) does not scale with the gradient, and m nearly cancels for elements whose
#     gradient changes sign between steps, so ~1e-7 gradient differences become up to ~lr x
#     1e-3 in the parameters (the same effect that makes 1 vs 2 data-parallel ranks differ by
#     up to 3e-5 in equivalence.sh). Measured: tp 2 2.9e-6 (wte), tp 3 8.3e-6, tp 4 5.0e-6 (wte), dp2 x
#     tp2 1.3e-6; up to 2.1e-5 in other batch shapes tried (dp2 x tp2 with 2 sequences per rank). The key third of attn.c_attn.bias has an exactly-zero true gradient (softmax
#     shift invariance): pure rounding noise that Adam scales up; it is excluded and held to
#     an absolute 1e-3 (measured up to 2.1e-4, tp 3).
set -euo pipefail
build=$1; src=$2
zp=$build/zp
cfg=$src/tests/configs/equiv.toml
cmp_py=$src/tests/integration/tp_compare.py
[ -f "$src/data/fortunes/train_000.bin" ] || { echo "FAIL: data/fortunes missing (run scripts/setup.sh)"; exit 1; }
work=$(mktemp -d /tmp/zp-tensor.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail=0
. "$src/tests/integration/lib/runs.sh" # run, close, bitwise
# tp 2 and tp 4 (dp 1): the same 2 sequences per step as one rank
run ref 1 && run tp2 2 parallel.tp=2 && close ref tp2 "tp 2 vs 1 rank"
run ref-h4 1 model.n_head=4 && run tp4 4 model.n_head=4 parallel.tp=4 && close ref-h4 tp4 "tp 4 vs 1 rank (n_head 4)"
# dp 2 x tp 2 with ZeRO-1: global batch 8 sequences = 1 rank x 8 = 2 dp ranks x 4
run ref-gb8 1 train.micro_batch=8 &&
  run dp2tp2-s1 4 train.micro_batch=4 parallel.tp=2 zero.plugin=stage1 && close ref-gb8 dp2tp2-s1 "dp 2 x tp 2 (ZeRO-1) vs 1 rank"
# tp 3 (n_head 3, d_model 48): vocabulary 257 padded to 320 (vocab_pad 64) does not split in 3,
# so the run pads it to 384 and says so; the reference uses vocab_pad 192 (also 384)
run ref-h3 1 model.n_head=3 model.d_model=48 model.vocab_pad=192 &&
  run tp3 3 model.n_head=3 model.d_model=48 parallel.tp=3 && {
    grep -q "vocabulary padded to 384 rows" "$work/tp3.log" || { echo "FAIL: tp 3: no note about the vocabulary padding"; fail=1; }
    close ref-h3 tp3 "tp 3 vs 1 rank (n_head 3, vocabulary padded to 384)"
  }
# bf16 storage (fp32 master), 2 micro-batches accumulated, clipping at 0.5 (the norm counts the
# tp-whole tensors once): parameters within 1e-3 and losses/norms within 1e-4 relative, because
# gradients are stored in bf16 and a ~1e-7 difference can flip one rounding (2^-8 relative) of a
# gradient element (measured 7.3e-5 and 7.3e-6)
run ref-bf16 1 train.precision=bf16 train.grad_accum=2 train.grad_clip=0.5 &&
  run tp2-bf16 2 train.precision=bf16 train.grad_accum=2 train.grad_clip=0.5 parallel.tp=2 &&
  close ref-bf16 tp2-bf16 "tp 2 vs 1 rank, bf16 storage, grad_accum 2, clip 0.5" 1e-3 1e-4
# the other strategies over the data-parallel ranks of each slice: bitwise equal to ZeRO-1
run dp2tp2-s2 4 train.micro_batch=4 parallel.tp=2 zero.plugin=stage2 && bitwise dp2tp2-s1 dp2tp2-s2 "dp 2 x tp 2: ZeRO-2 vs ZeRO-1"
run dp2tp2-s3 4 train.micro_batch=4 parallel.tp=2 zero.plugin=stage3 && bitwise dp2tp2-s1 dp2tp2-s3 "dp 2 x tp 2: ZeRO-3 vs ZeRO-1"
run dp2tp2-off 4 train.micro_batch=4 parallel.tp=2 zero.plugin=stage1 offload.optimizer.plugin=offload_cpu &&
  bitwise dp2tp2-s1 dp2tp2-off "dp 2 x tp 2: ZeRO-1 with the optimizer on the CPU tier (offload_cpu) vs on the device"
# resume: 2 steps, then the same run directory to 4 steps == 4 steps straight (tp2 above)
run res 2 parallel.tp=2 train.steps=2 train.resume=auto &&
  run res 2 parallel.tp=2 train.steps=4 train.resume=auto && {
    grep -q "resumed from" "$work/res.log" || { echo "FAIL: tp resume: did not resume"; fail=1; }
    # the resumed run's metrics hold steps 1-4 (appended): compare parameters and state bitwise
    if out=$("$zp" ckpt compare "$(ls -d "$work/tp2"/ckpt_* | tail -1)" "$(ls -d "$work/res"/ckpt_* | tail -1)" --state 2>&1); then
      echo "ok   tp 2 resumed at step 2 vs uninterrupted (bitwise): $(echo "$out" | head -1)"
    else echo "FAIL: tp resume: $out"; fail=1; fi
  }
# memory: model state per rank (rank 0's ledger after step 1, from metrics.jsonl) against
# (P+G)·Ψ_rank + K·Ψ_rank/dp (K over dp only with ZeRO-1), Ψ_rank = Ψ_split/tp + Ψ_rep, within
# 1% (padding: vocabulary rows and the per-group shard padding). bf16: P=2 G=2 K=12. Ψ_rep (whole
# on every tp rank) = 6·C per block (LayerNorms, row-parallel biases) + 2·C (ln_f) + seq_len·C (wpe).
for spec in "1 2 none" "2 2 stage1" "1 4 none"; do
  set -- $spec; dpn=$1; tpn=$2; st=$3; name=mem-dp$dpn-tp$tpn
  run "$name" $((dpn * tpn)) parallel.tp=$tpn zero.plugin=$st train.precision=bf16 model.d_model=512 model.n_head=8 \
    model.seq_len=16 train.steps=1 train.micro_batch=1 || continue
  line=$(grep '"step":1,' "$work/$name/metrics.jsonl")
  got=$(echo "$line" | python3 -c 'import json,sys; m=json.loads(sys.stdin.read())["mem"]; print(m["PARAM"]+m["GRAD"]+m["MASTER"]+m["OPTIM"])')
  psi=$(grep -o '[0-9]* parameters' "$work/$name.log" | head -1 | grep -o '[0-9]*')
  want=$(awk -v p="$psi" -v tp=$tpn -v dp=$dpn -v s=$st 'BEGIN{C=512; L=2; T=16; rep=6*C*L+2*C+T*C; r=(p-rep)/tp+rep;
    w=(s=="stage1") ? 4*r+12*r/dp : 16*r; printf "%.0f", w}')
  if awk -v g="$got" -v w="$want" 'BEGIN{r=(g-w)/w; exit !(r>=0 && r<0.01)}'; then
    echo "ok   memory dp $dpn x tp $tpn ($st): $got bytes of model state per rank vs formula $want"
  else
    echo "FAIL: memory dp $dpn x tp $tpn ($st): $got bytes vs formula $want"; fail=1
  fi
done
# refusal: n_head 3 cannot be split over 2 ranks
if "$zp" launch -n 2 "$cfg" --set train.out_dir="$work/bad" --set model.n_head=3 --set model.d_model=48 --set parallel.tp=2 > "$work/bad.log" 2>&1; then
  echo "FAIL: n_head 3 with tp 2 was accepted"; fail=1
elif grep -q "parallel.tp = 2 does not divide model.n_head = 3" "$work/bad.log" && ! grep -qi "abort\|segmentation\|core dumped" "$work/bad.log"; then
  echo "ok   n_head 3 with tp 2 refused: $(grep -o 'parallel.tp = 2 does not divide[^(]*' "$work/bad.log" | head -1)"
else
  echo "FAIL: n_head 3 with tp 2: unexpected output"; cat "$work/bad.log"; fail=1
fi
[ $fail = 0 ] && echo "tensor: all passed"
exit $fail
