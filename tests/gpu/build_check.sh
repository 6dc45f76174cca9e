#!/usr/bin/env bash
# build_check.sh: build the CUDA plugin and check_cuda_ops with nothing but nvcc and gcc, for a
# GPU machine that lacks the core's dependencies (Lua, jansson, OpenBLAS). The check then uses
# its built-in fp32 reference (-DZP_CHECK_OWN_REF) instead of the core's CPU backend; the CMake
# target check_cuda_ops (tests/gpu/CMakeLists.txt) is the variant that uses zpcore.
# Usage: tests/gpu/build_check.sh [BUILD_DIR]     (default: build-gpu; CUDA_HOME, CUDA_ARCH)
# Then:  BUILD_DIR/check_cuda_ops [--filter OP] [--no-time] [--quick]
set -euo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${1:-$SRC/build-gpu}
CUDA=${CUDA_HOME:-/usr/local/cuda}
ARCH=${CUDA_ARCH:-90}
NVCC=$CUDA/bin/nvcc
mkdir -p "$BUILD/plugins" "$BUILD/obj"
pids=()
objs=()
# the Hopper-only files (attention_wgmma*.cu) as in plugins/cuda/CMakeLists.txt: sm_90a alone,
# built and enabled (ZPC_HAVE_WGMMA) only when ARCH is 90
WG=0
[ "$ARCH" = 90 ] && WG=1
for f in "$SRC"/plugins/cuda/*.cu; do
  o="$BUILD/obj/$(basename "$f" .cu).o"
  gen="arch=compute_$ARCH,code=sm_$ARCH"
  case $(basename "$f") in attention_wgmma*)
    [ "$WG" = 1 ] || continue
    gen="arch=compute_90a,code=sm_90a" ;;
  esac
  objs+=("$o")
  "$NVCC" -O3 -std=c++17 -gencode "$gen" $([ "$WG" = 1 ] && echo -DZPC_HAVE_WGMMA=1) \
    -Xcompiler=-fPIC,-fvisibility=hidden,-Wall,-Wextra,-Wno-unused-parameter \
    -I"$SRC/include" -c "$f" -o "$o" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
"$NVCC" -shared -cudart shared -o "$BUILD/plugins/zp_cuda.so" "${objs[@]}" -lcublasLt
gcc -O2 -std=gnu11 -fopenmp -Wall -Wextra -Wshadow -Wstrict-prototypes -DZP_CHECK_OWN_REF \
  -DZP_CUDA_PLUGIN_PATH="\"$BUILD/plugins/zp_cuda.so\"" -I"$SRC/include" -I"$CUDA/include" \
  "$SRC/tests/gpu/check_cuda_ops.c" -o "$BUILD/check_cuda_ops" \
  -L"$CUDA/lib64" -Wl,-rpath,"$CUDA/lib64" -lcudart -ldl -lm
echo "built $BUILD/plugins/zp_cuda.so and $BUILD/check_cuda_ops"
