#!/usr/bin/env bash
# plugin_guide.sh BUILD SRC SHARED: docs/plugin-guide.md cannot rot. Its code blocks marked
# ```c file=NAME and ```toml file=NAME are extracted (concatenated per NAME, in page order);
# the C file is compiled against the source tree's include/ with -Wall -Wextra -Werror
# -Wshadow -Wstrict-prototypes, must export only zp_plugin_entry, and is listed by `zp plugins`;
# then, with the guide's TOML appended to tests/configs/equiv.toml, it trains on 2 CPU ranks
# (fp32, grad_accum 1 and 2) and 3 ranks (bf16), bitwise equal to the replicated reference
# (losses and final parameters), with OPTIM (and MASTER) bytes per rank exactly 1/N of the
# replicated run's; its option is really read (log lines), and a wrong-typed value is refused
# naming the key, as the guide says.
set -euo pipefail
build=$(cd "$1" && pwd); src=$(cd "$2" && pwd)
zp=$build/zp
guide=$src/docs/plugin-guide.md
[ -f "$src/data/fortunes/train_000.bin" ] || { echo "FAIL: data/fortunes missing (run scripts/setup.sh)"; exit 1; }
work=$(mktemp -d /tmp/zp-guide.XXXXXX)
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
fail=0
bad() { echo "FAIL: $*"; fail=1; }

mkdir -p "$work/x" "$work/plugins"
awk -v dir="$work/x" '
  /^```[A-Za-z0-9]+ +file=/ { f = $0; sub(/.*file=/, "", f); sub(/[ \t].*/, "", f); out = dir "/" f; on = 1; n[f]++; next }
  /^```/ && on { on = 0; print "" >> out; next }
  on { print >> out }
  END { for (f in n) printf "%s: %d block(s)\n", f, n[f] > "/dev/stderr" }' "$guide" 2> "$work/blocks.txt"
cat "$work/blocks.txt"
c=$work/x/my_zero1.c
toml=$work/x/my_zero1.toml
[ -f "$c" ] && [ "$(grep -c '^my_zero1.c:' "$work/blocks.txt")" = 1 ] || { bad "no my_zero1.c blocks in the guide"; exit 1; }
[ -f "$toml" ] || { bad "no my_zero1.toml block in the guide"; exit 1; }
[ "$(sed -n 's/^my_zero1.c: \([0-9]*\).*/\1/p' "$work/blocks.txt")" -ge 5 ] || bad "expected the plugin in >= 5 blocks"

so=$work/plugins/zp_my_zero1.so
if cc -std=c11 -O2 -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -fPIC -fvisibility=hidden -shared \
     -I "$src/include" -o "$so" "$c" 2> "$work/cc.log"; then
  echo "ok   the guide's plugin compiles with -Wall -Wextra -Werror ($(wc -l < "$c") lines)"
else
  cat "$work/cc.log"; bad "the guide's code does not compile"; exit 1
fi
syms=$(nm -D --defined-only "$so" | awk '{print $3}' | grep -v -E '^(_init|_fini|__bss_start|_edata|_end)$' || true)
[ "$syms" = "zp_plugin_entry" ] || bad "exports: $(echo $syms)"
ZP_PLUGIN_PATH=$work/plugins "$zp" plugins > "$work/plugins.txt" 2>&1 || true
abi=$("$zp" --version | sed -n 's/.*plugin ABI \([0-9]*\.[0-9]*\).*/\1/p')
if grep -E -q "^my_zero1 +strategy +0\.1\.0 +$abi +$so" "$work/plugins.txt"; then
  echo "ok   zp plugins: $(grep '^my_zero1' "$work/plugins.txt" | tr -s ' ')"
else
  bad "zp plugins does not list my_zero1:"; cat "$work/plugins.txt"
fi

# the run config: equiv.toml + the guide's TOML (zero.plugin and [ext.my_zero1])
cfg=$work/run.toml
{ cat "$src/tests/configs/equiv.toml"; echo; cat "$toml"; } > "$cfg"
data="data.train=$src/data/fortunes/train_*.bin"
run() { # name nranks sets...
  local name=$1 n=$2; shift 2
  local sets=(--set "$data")
  for s in "$@"; do sets+=(--set "$s"); done
  if ! ZP_PLUGIN_PATH=$work/plugins "$zp" launch -n "$n" "$cfg" --set train.out_dir="$work/$name" "${sets[@]}" > "$work/$name.log" 2>&1; then
    bad "run $name"; tail -20 "$work/$name.log"; return 1
  fi
  grep -o '"step":[0-9]*,"loss":[0-9.e+-]*' "$work/$name/metrics.jsonl" > "$work/$name.losses"
}
compare() { # ref mine n what
  local out
  if ! cmp -s "$work/$1.losses" "$work/$2.losses"; then bad "$4: losses differ"; paste "$work/$1.losses" "$work/$2.losses"; return; fi
  if out=$("$zp" ckpt compare "$(ls -d "$work/$1"/ckpt_* | tail -1)" "$(ls -d "$work/$2"/ckpt_* | tail -1)" --tol 0 2>&1); then
    echo "ok   $4: $out"
  else
    bad "$4: $out"; return
  fi
  local m
  m=$(for r in "$1" "$2"; do grep '"step":1,' "$work/$r/metrics.jsonl" | python3 -c 'import json,sys; m=json.loads(sys.stdin.read())["mem"]; print(m["OPTIM"] + m["MASTER"])'; done | tr '\n' ' ')
  read -r rb mb <<< "$m"
  if [ "$rb" -gt 0 ] && [ $((mb * $3)) = "$rb" ]; then
    echo "ok   $4: OPTIM+MASTER $mb B per rank = replicated $rb / $3"
  else
    bad "$4: OPTIM+MASTER per rank $mb B, replicated $rb B: not 1/$3"
  fi
}
run ref-2 2 zero.plugin=none && run mine-2 2 && compare ref-2 mine-2 2 "guide plugin vs replicated, 2 ranks, fp32 (bitwise)"
grep -q "zp\[my_zero1\] info: group 0: " "$work/mine-2.log" && echo "ok   ext.my_zero1.log_groups read from the guide's TOML" ||
  bad "the guide's option log_groups had no effect"
run ref-acc 2 zero.plugin=none train.grad_accum=2 && run mine-acc 2 train.grad_accum=2 && compare ref-acc mine-acc 2 "guide plugin vs replicated, grad_accum 2 (bitwise)"
run ref-bf16 3 zero.plugin=none train.precision=bf16 && run mine-bf16 3 train.precision=bf16 && compare ref-bf16 mine-bf16 3 "guide plugin vs replicated, 3 ranks, bf16 (bitwise)"
if out=$(ZP_PLUGIN_PATH=$work/plugins "$zp" plan "$cfg" --world 2 --set "$data" --set ext.my_zero1.log_groups=1 2>&1); then
  bad "log_groups = 1 (an integer) accepted"
elif grep -q "ext.my_zero1.log_groups is an integer" <<< "$out"; then
  echo "ok   a wrong-typed option is refused: $(grep -o 'plugin option.*' <<< "$out")"
else
  bad "wrong-typed option: $out"
fi
[ $fail = 0 ] && echo "plugin_guide: all passed"
exit $fail
