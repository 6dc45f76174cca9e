#!/usr/bin/env bash
# recompute.sh BUILD SRC SHARED: activation recompute (train.recompute) on CPU ranks.
# Claims checked:
# - recompute gives the same losses and parameters bit for bit as keeping every activation
#   (the re-run forward is the same arithmetic), for stage none at 1 rank and stage3 at 2
#   ranks (where the block's parameters must be gathered again for the recompute) and with
#   tensor parallelism (tp=2: the recomputed block repeats its all-reduces), bf16;
# - the activation bytes (ledger ACT, device tier) with recompute grow with depth by exactly
#   one residual-stream tensor per block (B*T*d_model*4 bytes: L=4 minus L=2 = 2 tensors),
#   while without recompute they grow by a whole block's saved activations.
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
[ $fail = 0 ] && echo "recompute: all passed"
exit $fail
