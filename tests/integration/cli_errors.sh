#!/usr/bin/env bash
# cli_errors.sh BUILD SRC: every command of the `zp` CLI given bad arguments or bad files exits
# with a usage (2) or input (1) status, never a signal or a crash, and says what is wrong
# (checked against a pattern per case: on stderr; `zp data info`'s report of a bad file is its
# stdout); nothing is written where a command was refused (`zp run` compiles its script before
# it creates the output directory).
# The config keys and values themselves are tested in test_config; this is the command line.
set -uo pipefail
build=$1; src=$2
zp=$build/zp
cfg=$src/examples/tiny.toml
work=$(mktemp -d "${TMPDIR:-/tmp}/zp-cli-errors.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work" || exit 1
fail=0
n=0
# expect RC PATTERN CMD...: the exit status is RC and stderr matches the (extended) PATTERN
expect() {
  local want=$1 pat=$2
  shift 2
  n=$((n + 1))
  timeout 60 "$@" > "$work/out" 2> "$work/err"
  local rc=$?
  local where=$work/err
  [ "${1##*/}" = zp ] && [ "${2:-}" = data ] && [ "${3:-}" = info ] && where=$work/out
  if [ "$rc" -ne "$want" ] || ! grep -Eq -- "$pat" "$where"; then
    echo "FAIL: $* -> exit $rc (wanted $want), output:"; sed 's/^/    /' "$work/err" "$work/out" | head -5
    echo "    (wanted /$pat/)"
    fail=1
  else
    echo "ok   $(echo "$*" | sed "s|$zp|zp|; s|$src/||g"): exit $rc: $(grep -Em1 -- "$pat" "$where" | cut -c1-110)"
  fi
}
printf 'not = [valid toml\n' > bad.toml
printf 'garbage' > junk.bin
head -c 4096 /dev/urandom > rand.safetensors
mkdir -p emptydir

# commands and their arguments
expect 2 "unknown command" "$zp" frobnicate
expect 2 "missing CONFIG.toml" "$zp" train
expect 1 "nonexist.toml: cannot open config: No such file" "$zp" train nonexist.toml
expect 1 "bad.toml" "$zp" train bad.toml
expect 2 "--set needs key=value" "$zp" train "$cfg" --set
expect 1 "expected section.key=value" "$zp" train "$cfg" --set foo
expect 1 "unknown key 'train.batch_size'" "$zp" train "$cfg" --set train.batch_size=0
expect 1 "out of range \[1, 1024\]" "$zp" train "$cfg" --set model.n_layer=-1
expect 2 "--world needs a positive integer, got '0'" "$zp" plan "$cfg" --world 0
expect 2 "--world needs a positive integer, got 'abc'" "$zp" plan "$cfg" --world abc
expect 2 "--device-gb needs a positive number" "$zp" plan "$cfg" --device-gb -1
expect 2 "-n needs a number of ranks in 1..64, got '0'" "$zp" launch -n 0 "$cfg"
expect 2 "-n needs a number of ranks in 1..64, got '100000'" "$zp" launch -n 100000 "$cfg"
expect 2 "zp launch -n N" "$zp" launch "$cfg"
expect 1 "/nonexist/meta.json: cannot read" "$zp" sample "$cfg" --ckpt /nonexist
expect 1 "no checkpoint found in train.out_dir" "$zp" sample "$cfg" --set train.out_dir="$work/norun"
expect 1 "no complete checkpoint" "$zp" ckpt info emptydir
expect 1 "neither a checkpoint .* nor a run directory" "$zp" ckpt compare emptydir emptydir
expect 1 "/nonexist/meta.json: cannot read" "$zp" ckpt logits /nonexist --tokens 1,2
expect 1 "INVALID: .*too short for the 1024-byte header" "$zp" data info junk.bin
expect 1 "INVALID: .*bad magic" "$zp" data info rand.safetensors
expect 2 "no INPUT given" "$zp" data prepare --out "$work/prep"
expect 1 "/nonexist/meta.json: cannot read" "$zp" export /nonexist --out x.safetensors
expect 1 "header length [0-9]+ is impossible" "$zp" import rand.safetensors --config "$cfg"
expect 1 "rejected: junk.bin:1: syntax error" "$zp" schedule check junk.bin --stages 2 --micro-batches 2
expect 1 "schedule 'nosuch': no such file or shipped schedule" "$zp" schedule check nosuch --stages 2 --micro-batches 2
expect 2 "--stages needs an integer in \[1, 1024\], got '0'" "$zp" schedule check "$src/scripts/schedules/1f1b.lua" --stages 0 --micro-batches 2
expect 2 "--micro-batches needs an integer in \[1, 65536\], got '-1'" "$zp" schedule check "$src/scripts/schedules/1f1b.lua" --stages 2 --micro-batches -1
expect 1 "junk.bin:1: syntax error" "$zp" run junk.bin
expect 1 "nosuch.lua" "$zp" run nosuch.lua
expect 1 "nvme-bench: /nonexist: No such file" "$zp" nvme-bench /nonexist
expect 2 "unexpected argument '--bogus'" "$zp" config --doc --bogus
# nothing was written by the refused commands (the scratch files above aside)
left=$(ls -A "$work" | grep -vxE 'bad.toml|junk.bin|rand.safetensors|emptydir|out|err')
[ -z "$left" ] && echo "ok   the refused commands wrote nothing" || { echo "FAIL: left behind: $left"; fail=1; }
echo "$n cases"
exit $fail
