# lib.sh: sourced by the bench scripts. bench_build SRC BUILD LOG TARGET...: a Release build
# without NaN poisoning for sm_${CUDA_ARCH:-90} (CUDA on PATH where installed) of the given
# targets into BUILD, output in LOG; prints one line and returns non-zero (with the log's tail)
# on failure. A target named "?name" is optional: built if the tree defines it (zp_cuda on a
# machine without CUDA is skipped).
bench_build() {
  local src=$1 build=$2 log=$3 t0 t
  shift 3
  export PATH=$PATH:/usr/local/cuda/bin
  t0=$(date +%s)
  if ! cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DZP_TEST_POISON=OFF \
    -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" > "$log" 2>&1; then
    tail -n 20 "$log"; echo "build FAILED (cmake; see $log)"; return 1
  fi
  for t in "$@"; do
    if [ "${t#\?}" != "$t" ]; then
      cmake --build "$build" --target "${t#\?}" >> "$log" 2>&1 || echo "build: optional target ${t#\?} not built" >> "$log"
    elif ! cmake --build "$build" --target "$t" >> "$log" 2>&1; then
      tail -n 20 "$log"; echo "build FAILED ($t; see $log)"; return 1
    fi
  done
  echo "build: ok ($(($(date +%s) - t0)) s) -> $build"
}
