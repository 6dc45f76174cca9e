#!/usr/bin/env bash
# test.sh: the project's test command (README, .ci/run). Runs, in order:
#   1. the release build's full ctest suite (unit + integration, incl. toml-test conformance);
#   2. the unit tests under AddressSanitizer + UndefinedBehaviorSanitizer (preset asan);
#   3. the libFuzzer targets for a bounded time (preset fuzz, clang).
# Needs scripts/setup.sh first. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
echo "== release: build + ctest"
cmake --preset release -G Ninja >/dev/null
cmake --build --preset release
ctest --test-dir build --output-on-failure -j"$jobs" -LE gpu
echo "== asan+ubsan: unit tests"
cmake --preset asan -G Ninja >/dev/null
cmake --build --preset asan
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -L unit -j"$jobs"
echo "== fuzz: bounded libFuzzer runs"
cmake --preset fuzz -G Ninja >/dev/null
cmake --build --preset fuzz
ctest --test-dir build-fuzz --output-on-failure -L fuzz
echo "== all test stages passed"
