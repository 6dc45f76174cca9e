#!/usr/bin/env bash
# dead_rank.sh BUILD SRC SHARED: a rank that dies (SIGKILL) or hangs (SIGSTOP) mid-run makes
# every other rank exit with a message naming the rank and the operation, within the
# configured timeout (comm.timeout_s = 3), and the launcher tears everything down; nothing is
# left running. Then: a config with a wrong key, a missing data file, and a corrupt shard
# each fail fast with a clear message and a non-zero status.
set -uo pipefail
build=$1; src=$2
zp=$build/zp
cfg=$src/tests/configs/equiv.toml
work=$(mktemp -d /tmp/zp-dead.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail=0
expect() { # name regex file
  if grep -E -q "$2" "$3"; then echo "ok   $1"; else echo "FAIL: $1: no /$2/ in output:"; cat "$3"; fail=1; fi
}
for kind in kill stop; do
  start=$(date +%s)
  ZP_FAULT="$kind:3:1" timeout 60 "$zp" launch -n 3 "$cfg" --set train.steps=6 --set comm.timeout_s=3 \
    --set train.out_dir="$work/$kind" > "$work/$kind.log" 2>&1
  rc=$?
  took=$(( $(date +%s) - start ))
  [ $rc -ne 0 ] && [ $rc -ne 124 ] || { echo "FAIL: $kind: launcher status $rc"; fail=1; }
  [ $took -lt 30 ] || { echo "FAIL: $kind: took ${took}s"; fail=1; }
  expect "$kind: a surviving rank names rank 1" "\[rank [02]\].*rank 1" "$work/$kind.log"
  expect "$kind: the message names the operation" "(allreduce|reduce_scatter|allgather|broadcast|barrier)" "$work/$kind.log"
  if pgrep -f "$work/$kind" >/dev/null; then echo "FAIL: $kind: processes left behind"; pkill -9 -f "$work/$kind"; fail=1; fi
  echo "     ($kind: exit $rc after ${took}s)"
done
# bad input: clear error, no crash
printf '[train]\nmicro_bach = 4\n' > "$work/bad.toml"
"$zp" train "$work/bad.toml" > "$work/bad.log" 2>&1; [ $? = 1 ] || { echo "FAIL: bad key status"; fail=1; }
expect "wrong key named with file:line:col" "bad.toml:2:1: unknown key 'train.micro_bach' \(did you mean 'train.micro_batch'\?\)" "$work/bad.log"
"$zp" train "$cfg" --set data.train="$work/nothing_*.bin" > "$work/nodata.log" 2>&1; [ $? = 1 ] || { echo "FAIL: missing data status"; fail=1; }
expect "missing data named" "nothing_\*\.bin" "$work/nodata.log"
head -c 2000 "$src/data/fortunes/train_000.bin" > "$work/trunc.bin"
"$zp" train "$cfg" --set data.train="$work/trunc.bin" > "$work/trunc.log" 2>&1; [ $? = 1 ] || { echo "FAIL: truncated shard status"; fail=1; }
expect "truncated shard named" "trunc.bin" "$work/trunc.log"
"$zp" train "$src/nonexistent.toml" > "$work/nocfg.log" 2>&1; [ $? = 1 ] || { echo "FAIL: missing config status"; fail=1; }
expect "missing config named" "nonexistent.toml: cannot open config" "$work/nocfg.log"
printf 'function lr(s, n) return error("boom") end\n' > "$work/bad.lua"
"$zp" train "$cfg" --set train.lr_schedule="$work/bad.lua" --set train.out_dir="$work/lua" > "$work/lua.log" 2>&1; [ $? = 1 ] || { echo "FAIL: lua error status"; fail=1; }
expect "Lua error with file and line" "bad.lua:1: boom" "$work/lua.log"
[ $fail = 0 ] && echo "dead_rank: all passed"
exit $fail
