#!/usr/bin/env bash
# abi_frozen.sh BUILD SRC SHARED: plugins built against a frozen copy of the plugin ABI header
# keep working (tests/abi/README.md states the rule). For every tests/abi/zp_plugin_<M>_<m>.h:
#  - its ZP_ABI_MAJOR/MINOR match its name;
#  - tests/abi/abi_plugin.c compiles against it with -Wall -Wextra -Werror (as zp_abi_<M>_<m>.so);
#  - same major as this zp: the static check (tests/abi/abi_check.py: tables only grew at the
#    end, fixed structs, enumerators and constants unchanged) passes; `zp plugins` lists the
#    plugin with its ABI; 2 CPU ranks train bitwise like the replicated reference (grad_accum 1
#    and 2), through every host service of the frozen header;
#  - another major: the plugin is refused, naming both versions, by `zp plugins` and by a run.
# Also: once the ABI is >= 1.0, the frozen copy of <major>.0 must exist; and abi_check.py is
# shown to catch a moved member, a grown fixed struct and a changed enumerator (so it cannot
# pass by checking nothing).
set -euo pipefail
build=$(cd "$1" && pwd); src=$(cd "$2" && pwd)
zp=$build/zp
cfg=$src/tests/configs/equiv.toml
[ -f "$src/data/fortunes/train_000.bin" ] || { echo "FAIL: data/fortunes missing (run scripts/setup.sh)"; exit 1; }
work=$(mktemp -d /tmp/zp-abi.XXXXXX)
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
fail=0
bad() { echo "FAIL: $*"; fail=1; }
hdr=$src/include/zp/zp_plugin.h
abi_of() { echo "$(sed -n 's/^#define ZP_ABI_MAJOR \([0-9]*\).*/\1/p' "$1").$(sed -n 's/^#define ZP_ABI_MINOR \([0-9]*\).*/\1/p' "$1")"; }
cur=$(abi_of "$hdr")
cur_major=${cur%.*}
echo "current plugin ABI $cur"

# the static checker catches what it must
sed 's/  int rank, world_size;/  int rank, inserted, world_size;/' "$hdr" > "$work/moved.h"
sed 's/^  int tied_to; /  int tied_to, grown; /' "$hdr" > "$work/grown.h"
sed 's/ZP_E_IO = 3,/ZP_E_IO = 33,/' "$hdr" > "$work/renum.h"
for m in moved grown renum; do
  if cmp -s "$work/$m.h" "$hdr"; then bad "self-test: could not make the '$m' mutation (header text changed?)"; continue; fi
  if python3 "$src/tests/abi/abi_check.py" "$hdr" "$work/$m.h" > "$work/$m.out" 2>&1; then
    bad "self-test: abi_check.py accepted a header with a $m member/value"; cat "$work/$m.out"
  fi
done
python3 "$src/tests/abi/abi_check.py" "$hdr" "$hdr" > /dev/null || bad "self-test: abi_check.py rejects the header against itself"

if [ "$cur_major" -ge 1 ] && [ ! -f "$src/tests/abi/zp_plugin_${cur_major}_0.h" ]; then
  bad "ABI $cur: the frozen copy tests/abi/zp_plugin_${cur_major}_0.h is missing (see tests/abi/README.md)"
fi

run() { # name plugin sets...
  local name=$1 plugin=$2; shift 2
  local sets=()
  for s in "$@"; do sets+=(--set "$s"); done
  if ! ZP_PLUGIN_PATH=$work/plugins "$zp" launch -n 2 "$cfg" --set train.out_dir="$work/$name" --set zero.plugin="$plugin" \
       "${sets[@]}" > "$work/$name.log" 2>&1; then
    bad "run $name"; tail -20 "$work/$name.log"; return 1
  fi
  grep -o '"step":[0-9]*,"loss":[0-9.e+-]*' "$work/$name/metrics.jsonl" > "$work/$name.losses"
}
compare() { # a b what
  local out
  if ! cmp -s "$work/$1.losses" "$work/$2.losses"; then bad "$3: losses differ"; paste "$work/$1.losses" "$work/$2.losses"; return; fi
  if out=$("$zp" ckpt compare "$(ls -d "$work/$1"/ckpt_* | tail -1)" "$(ls -d "$work/$2"/ckpt_* | tail -1)" --tol 0 2>&1); then
    echo "ok   $3: $out"
  else
    bad "$3: $out"
  fi
}

mkdir -p "$work/plugins"
n=0
refs=0
for h in "$src"/tests/abi/zp_plugin_*_*.h; do
  [ -f "$h" ] || continue
  n=$((n + 1))
  base=$(basename "$h" .h)
  tag=${base#zp_plugin_}
  want=${tag/_/.}
  have=$(abi_of "$h")
  [ "$have" = "$want" ] || { bad "$base.h defines ABI $have, its name says $want"; continue; }
  mkdir -p "$work/inc-$tag/zp"
  cp "$h" "$work/inc-$tag/zp/zp_plugin.h"
  so=$work/plugins/zp_abi_$tag.so
  if ! cc -std=c11 -O2 -Wall -Wextra -Werror -fPIC -fvisibility=hidden -shared -I "$work/inc-$tag" \
       -DZP_ABI_PLUGIN_NAME="\"abi_$tag\"" -o "$so" "$src/tests/abi/abi_plugin.c" 2> "$work/cc-$tag.log"; then
    cat "$work/cc-$tag.log"; bad "abi_plugin.c does not compile against $base.h"; continue
  fi
  ZP_PLUGIN_PATH=$work/plugins "$zp" plugins > "$work/plugins-$tag.txt" 2>&1 || true
  if [ "${have%.*}" = "$cur_major" ]; then
    if python3 "$src/tests/abi/abi_check.py" "$h" "$hdr" > "$work/check-$tag.txt" 2>&1; then
      echo "ok   $(tail -1 "$work/check-$tag.txt")"
    else
      cat "$work/check-$tag.txt"; bad "the current header broke the frozen ABI $have"
    fi
    if grep -E -q "^abi_$tag +strategy +1\.0\.0 +$have " "$work/plugins-$tag.txt"; then
      echo "ok   zp plugins loads the plugin built against frozen ABI $have (zp provides $cur)"
    else
      bad "zp plugins does not load abi_$tag:"; cat "$work/plugins-$tag.txt"; continue
    fi
    if [ $refs = 0 ]; then
      run ref none && run ref-acc none train.grad_accum=2 && refs=1
    fi
    run "abi-$tag" "abi_$tag" && compare ref "abi-$tag" "frozen ABI $have plugin vs replicated, 2 ranks (bitwise)"
    run "abi-acc-$tag" "abi_$tag" train.grad_accum=2 && compare ref-acc "abi-acc-$tag" "frozen ABI $have plugin vs replicated, grad_accum 2 (bitwise)"
  else
    msg="built for plugin ABI $have, but this zp provides ABI $cur"
    if grep -q "$msg" "$work/plugins-$tag.txt"; then
      echo "ok   zp plugins refuses the plugin built against ABI $have: $msg"
    else
      bad "zp plugins did not refuse abi_$tag (ABI $have) with '$msg':"; cat "$work/plugins-$tag.txt"
    fi
    if ZP_PLUGIN_PATH=$work/plugins "$zp" plan "$cfg" --world 2 --set zero.plugin="abi_$tag" > "$work/plan-$tag.txt" 2>&1; then
      bad "zp plan accepted a plugin of ABI $have"
    elif grep -q "$msg" "$work/plan-$tag.txt"; then
      echo "ok   a run refuses it too"
    else
      bad "zp plan's refusal lacks '$msg':"; cat "$work/plan-$tag.txt"
    fi
  fi
done
[ $n -ge 1 ] || bad "no frozen header in tests/abi"
[ $fail = 0 ] && echo "abi_frozen: all passed ($n frozen header(s))"
exit $fail
