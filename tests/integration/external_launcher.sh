#!/usr/bin/env bash
# external_launcher.sh BUILD SRC SHARED: ranks started the way torchrun starts them (RANK,
# WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1, MASTER_PORT) find each
# other (TCP rendezvous on loopback for the shared-memory segment's name) and train exactly
# like `zp launch -n 2` (bitwise equal final weights, stage 2). A host count mismatch
# (LOCAL_WORLD_SIZE != WORLD_SIZE) is refused with a message.
set -uo pipefail
build=$1; src=$2
zp=$build/zp
cfg=$src/tests/configs/equiv.toml
work=$(mktemp -d /tmp/zp-ext.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail=0
port=$((20000 + RANDOM % 20000))
"$zp" launch -n 2 "$cfg" --set zero.plugin=stage2 --set train.out_dir="$work/ref" > "$work/ref.log" 2>&1 || { echo "FAIL ref"; cat "$work/ref.log"; exit 1; }
for r in 0 1; do
  RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port OMP_NUM_THREADS=1 \
    timeout 60 "$zp" train "$cfg" --set zero.plugin=stage2 --set train.out_dir="$work/ext" > "$work/ext$r.log" 2>&1 &
done
wait
if out=$("$zp" ckpt compare "$work/ref/ckpt_00000004" "$work/ext/ckpt_00000004" --tol 0 2>&1); then
  echo "ok   torchrun-style environment, 2 ranks, stage2, bitwise equal to zp launch: $out"
else
  echo "FAIL: $out"; cat "$work/ext0.log" "$work/ext1.log"; fail=1
fi
RANK=0 WORLD_SIZE=4 LOCAL_RANK=0 LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port "$zp" train "$cfg" > "$work/multi.log" 2>&1
if [ $? = 1 ] && grep -q "one host only" "$work/multi.log"; then echo "ok   multi-host refused: $(cat "$work/multi.log")"; else echo "FAIL multi-host"; cat "$work/multi.log"; fail=1; fi
exit $fail
