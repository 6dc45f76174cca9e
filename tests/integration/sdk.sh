#!/usr/bin/env bash
# sdk.sh BUILD SRC SHARED: zeroplace as an installed SDK.
#  1. `cmake --install BUILD --prefix P0`, then the tree is MOVED to P (relocation): every file
#     of the documented layout is there, and the installed zp finds its own plugins with no
#     environment (ZP_PLUGIN_PATH unset).
#  2. The out-of-tree plugin in P/share/zp/examples/plugin-skeleton ("shard_big") is built twice
#     against the installed package: CMake find_package(zp) (CMAKE_PREFIX_PATH=P) and plain cc
#     through pkg-config (PKG_CONFIG_PATH=P/lib/pkgconfig, the skeleton's Makefile). Both export
#     only zp_plugin_entry and need no core symbol; `zp plugins` lists it with version and ABI.
#  3. Equivalence, like equivalence.sh: 2 and 3 CPU ranks (`zp launch` of the installed zp),
#     tests/configs/equiv.toml, fp32 and bf16, grad_accum 1 and 2: per-step losses and final
#     parameters (`zp ckpt compare --tol 0`) bitwise equal to the replicated reference.
#  4. Memory: the ledger's OPTIM and MASTER bytes per rank are exactly what the threshold says
#     (groups >= threshold hold 1/N, the others all of it) and less than replicated, and the
#     placement table shows S exactly for the big groups (a plugin that does nothing fails).
#  5. Plugin options: a wrong-typed or out-of-range ext.shard_big.threshold is refused with a
#     message naming it.
#  6. Embedding: a program linked against zp::core (find_package) and against
#     `pkg-config --static --libs zp` trains 2 steps in-process with the skeleton plugin.
set -euo pipefail
build=$(cd "$1" && pwd); src=$(cd "$2" && pwd)
cfg=$src/tests/configs/equiv.toml
[ -f "$src/data/fortunes/train_000.bin" ] || { echo "FAIL: data/fortunes missing (run scripts/setup.sh)"; exit 1; }
work=$(mktemp -d /tmp/zp-sdk.XXXXXX)
trap 'rm -rf "$work"' EXIT
unset ZP_PLUGIN_PATH
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
fail=0
bad() { echo "FAIL: $*"; fail=1; }

# ---- 1. install, relocate, layout ----
cmake --install "$build" --prefix "$work/p0" > "$work/install.log" 2>&1 || { cat "$work/install.log"; echo "FAIL: cmake --install"; exit 1; }
mv "$work/p0" "$work/prefix"
P=$work/prefix
for f in bin/zp lib/libzpcore.a lib/zp/plugins/zp_stage1.so lib/zp/plugins/zp_stage3.so include/zp/zp_plugin.h \
         include/zp/core/train.h include/zp/core/config.h lib/cmake/zp/zp-config.cmake lib/cmake/zp/zp-config-version.cmake \
         lib/cmake/zp/zp-targets.cmake lib/pkgconfig/zp.pc share/zp/scripts/schedules/cosine.lua \
         share/zp/examples/plugin-skeleton/shard_big.c share/zp/examples/plugin-skeleton/CMakeLists.txt; do
  [ -f "$P/$f" ] || bad "installed layout: $f missing"
done
zp=$P/bin/zp
abi=$("$zp" --version | sed -n 's/.*plugin ABI \([0-9]*\.[0-9]*\).*/\1/p')
[ -n "$abi" ] || { bad "zp --version does not name the plugin ABI"; abi=x; }
"$zp" plugins > "$work/plugins-noenv.txt" 2>&1 || true
if grep -q "^stage1 .*$P/lib/zp/plugins/zp_stage1.so" "$work/plugins-noenv.txt" && ! grep -q "error:" "$work/plugins-noenv.txt"; then
  echo "ok   relocated install: zp finds its plugins with no environment ($(grep -c "$P/lib/zp/plugins" "$work/plugins-noenv.txt") found)"
else
  bad "relocated install: zp plugins without ZP_PLUGIN_PATH:"; cat "$work/plugins-noenv.txt"
fi
export PKG_CONFIG_PATH=$P/lib/pkgconfig
pcdir=$(pkg-config --variable=plugindir zp)
[ "$(cd "$pcdir" && pwd)" = "$P/lib/zp/plugins" ] || bad "pkg-config --variable=plugindir zp = $pcdir, want $P/lib/zp/plugins"
[ "$(pkg-config --variable=abi_major zp).$(pkg-config --variable=abi_minor zp)" = "$abi" ] || bad "zp.pc ABI differs from zp --version ($abi)"
ver=$("$zp" --version | awk '{print $2}')
[ "$(pkg-config --modversion zp)" = "$ver" ] || bad "zp.pc version differs from zp --version ($ver)"
grep -q "set(PACKAGE_VERSION \"$ver\")" "$P/lib/cmake/zp/zp-config-version.cmake" || bad "zp-config-version.cmake does not say $ver"

# ---- 2. build the skeleton out of tree, both ways ----
cp -r "$P/share/zp/examples/plugin-skeleton" "$work/skel"
chmod -R u+w "$work/skel"
if cmake -S "$work/skel" -B "$work/skel-cmake" -DCMAKE_PREFIX_PATH="$P" -DCMAKE_BUILD_TYPE=Release > "$work/skel-cmake.log" 2>&1 &&
   cmake --build "$work/skel-cmake" >> "$work/skel-cmake.log" 2>&1; then
  echo "ok   skeleton built with find_package(zp)"
else
  cat "$work/skel-cmake.log"; bad "skeleton: CMake build"
fi
if make -C "$work/skel" > "$work/skel-make.log" 2>&1; then
  echo "ok   skeleton built with pkg-config: $(grep -o 'cc .*' "$work/skel-make.log" | head -1)"
else
  cat "$work/skel-make.log"; bad "skeleton: pkg-config (make) build"
fi
so_cmake=$work/skel-cmake/zp_shard_big.so
so_pc=$work/skel/zp_shard_big.so
for so in "$so_cmake" "$so_pc"; do
  [ -f "$so" ] || { bad "$so not built"; continue; }
  syms=$(nm -D --defined-only "$so" | awk '{print $3}' | grep -v -E '^(_init|_fini|__bss_start|_edata|_end)$' || true)
  [ "$syms" = "zp_plugin_entry" ] || bad "$so exports: $(echo $syms)"
  undef=$(nm -D --undefined-only "$so" | awk '{print $2}' | grep -E '^zp_' || true)
  [ -z "$undef" ] || bad "$so needs core symbols: $undef"
done
[ $fail = 0 ] || exit 1
ZP_PLUGIN_PATH=$work/skel-cmake "$zp" plugins > "$work/plugins.txt" 2>&1 || true
if grep -E -q "^shard_big +strategy +1\.0\.0 +$abi +$work/skel-cmake/zp_shard_big.so" "$work/plugins.txt"; then
  echo "ok   zp plugins: $(grep '^shard_big' "$work/plugins.txt" | tr -s ' ')"
else
  bad "zp plugins does not list shard_big 1.0.0 with ABI $abi:"; cat "$work/plugins.txt"
fi

# ---- 3. equivalence with the replicated reference (installed zp, zp launch) ----
TH=10000   # equiv.toml's groups: embed 8736, blocks 12704, head 64 parameters: blocks sharded
run() { # name nranks plugin_path_or_empty sets...
  local name=$1 n=$2 pp=$3; shift 3
  local sets=()
  for s in "$@"; do sets+=(--set "$s"); done
  if ! ZP_PLUGIN_PATH=$pp "$zp" launch -n "$n" "$cfg" --set train.out_dir="$work/$name" "${sets[@]}" > "$work/$name.log" 2>&1; then
    bad "run $name"; cat "$work/$name.log"; return 1
  fi
  grep -o '"step":[0-9]*,"loss":[0-9.e+-]*' "$work/$name/metrics.jsonl" > "$work/$name.losses"
}
compare() { # a b what
  local a=$1 b=$2 what=$3 out
  if ! cmp -s "$work/$a.losses" "$work/$b.losses"; then bad "$what: losses differ"; paste "$work/$a.losses" "$work/$b.losses"; return; fi
  if out=$("$zp" ckpt compare "$(ls -d "$work/$a"/ckpt_* | tail -1)" "$(ls -d "$work/$b"/ckpt_* | tail -1)" --tol 0 2>&1); then
    echo "ok   $what: $out"
  else
    bad "$what: $out"
  fi
}
# model-state bytes (OPTIM, MASTER) of rank 0 after step 1, from metrics.jsonl
mem() { grep '"step":1,' "$work/$1/metrics.jsonl" | python3 -c 'import json,sys; m=json.loads(sys.stdin.read())["mem"]; print(m["OPTIM"], m["MASTER"])'; }
# exact expectation from the run's placement table: OPTIM 8 B/element, MASTER 4 (bf16 only)
check_mem() { # ref sb n prec
  local ref=$1 sb=$2 n=$3 prec=$4
  read -r ro rm <<< "$(mem "$ref")"; read -r so sm <<< "$(mem "$sb")"
  local want
  want=$(awk -v th=$TH -v n="$n" -v prec="$prec" '
    /^\[rank 0\]   (embed|block\.[0-9]+|head) / { params=$4; padded=$5; opt=$9
      big = params >= th; if ((opt ~ /^S/) != big) { print "PLACEMENT " $3 " " opt; exit }
      o += 8 * (big ? padded / n : padded); if (prec == "bf16") m += 4 * (big ? padded / n : padded) }
    END { printf "%d %d", o, m }' "$work/$sb.log")
  if [[ $want == PLACEMENT* ]]; then bad "$sb: OPTIM placement of group ${want#PLACEMENT } disagrees with threshold $TH"; return; fi
  if [ "$so $sm" = "$want" ] && [ $((so + sm)) -lt $((ro + rm)) ]; then
    echo "ok   memory $sb: OPTIM+MASTER $((so + sm)) B/rank (exactly the threshold's split) < replicated $((ro + rm))"
  else
    bad "memory $sb: OPTIM MASTER = $so $sm B, want $want (replicated: $ro $rm)"
  fi
}
for prec in fp32 bf16; do
  for n in 2 3; do
    [ $prec = bf16 ] && [ $n = 3 ] && continue
    run "ref-$prec-$n" "$n" "" train.precision=$prec || continue
    run "sb-$prec-$n" "$n" "$work/skel-cmake" train.precision=$prec zero.plugin=shard_big ext.shard_big.threshold=$TH || continue
    compare "ref-$prec-$n" "sb-$prec-$n" "shard_big (find_package build) vs replicated, $prec, $n ranks (bitwise)"
    check_mem "ref-$prec-$n" "sb-$prec-$n" "$n" "$prec"
  done
done
# the pkg-config build, loaded by path (no search path at all), and gradient accumulation
run sb-pc-3 3 "" zero.plugin="$so_pc" ext.shard_big.threshold=$TH && compare ref-fp32-3 sb-pc-3 "shard_big (pkg-config build, by path) vs replicated, 3 ranks (bitwise)"
run ref-acc 2 "" train.grad_accum=2 && run sb-acc 2 "$work/skel-cmake" zero.plugin=shard_big ext.shard_big.threshold=$TH train.grad_accum=2 &&
  compare ref-acc sb-acc "shard_big vs replicated, grad_accum 2 (bitwise)"

# ---- 5. plugin options are checked ----
opt_err() { # value expected-substring
  local out
  if out=$(ZP_PLUGIN_PATH=$work/skel-cmake "$zp" plan "$cfg" --world 2 --set zero.plugin=shard_big --set "ext.shard_big.threshold=$1" 2>&1); then
    bad "threshold=$1 accepted"
  elif grep -q -- "$2" <<< "$out"; then
    echo "ok   ext.shard_big.threshold=$1 refused: $(grep -o -- "ext.shard_big.threshold.*" <<< "$out" | head -1)"
  else
    bad "threshold=$1: message lacks '$2': $out"
  fi
}
opt_err big "plugin option ext.shard_big.threshold is a string"
opt_err -5 "must be >= 0"

# ---- 6. embedding the static core ----
mkdir -p "$work/embed"
cat > "$work/embed/embed.c" <<'EOF'
/* trains the config given as argv[1] in-process through libzpcore (single rank) */
#include <stdio.h>
#include <zp/core/config.h>
#include <zp/core/train.h>
int main(int argc, char** argv) {
  zp_config c;
  char err[2048];
  if (argc < 2 || zp_config_load(&c, argv[1], (const char* const*)argv + 2, argc - 2, err, sizeof err)) {
    fprintf(stderr, "embed: %s\n", argc < 2 ? "usage: embed CONFIG [key=value...]" : err);
    return 2;
  }
  int rc = zp_train(&c, NULL, err, sizeof err);
  if (rc) fprintf(stderr, "embed: %s\n", err);
  zp_config_free(&c);
  return rc ? 1 : 0;
}
EOF
cat > "$work/embed/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.22)
project(zp_embed LANGUAGES C)
find_package(zp REQUIRED)
add_executable(embed embed.c)
target_link_libraries(embed PRIVATE zp::core)
EOF
embed_ok() { # binary name
  local out=$work/embed-$2
  if ZP_PLUGIN_PATH=$work/skel-cmake "$1" "$cfg" train.out_dir="$out" train.steps=2 zero.plugin=shard_big \
       ext.shard_big.threshold=$TH > "$out.log" 2>&1 && [ "$(grep -c '"step"' "$out/metrics.jsonl")" = 2 ]; then
    echo "ok   embedding ($2): 2 steps trained in-process with shard_big, $(grep -o "loss [0-9.]* -> [0-9.]*" "$out.log")"
  else
    bad "embedding ($2)"; cat "$out.log"
  fi
}
if cmake -S "$work/embed" -B "$work/embed/b" -DCMAKE_PREFIX_PATH="$P" > "$work/embed.log" 2>&1 && cmake --build "$work/embed/b" >> "$work/embed.log" 2>&1; then
  embed_ok "$work/embed/b/embed" "find_package zp::core"
else
  cat "$work/embed.log"; bad "embedding: CMake build against zp::core"
fi
if cc -std=gnu11 -o "$work/embed/embed-pc" "$work/embed/embed.c" $(pkg-config --cflags zp) $(pkg-config --static --libs zp) > "$work/embed-pc.log" 2>&1; then
  embed_ok "$work/embed/embed-pc" "pkg-config --static"
else
  cat "$work/embed-pc.log"; bad "embedding: cc with pkg-config --static --libs zp"
fi
[ $fail = 0 ] && echo "sdk: all passed"
exit $fail
