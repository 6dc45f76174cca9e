#!/usr/bin/env bash
# toml_test.sh BUILD_DIR SOURCE_DIR SHARED_DIR: runs the toml-test 1.0.0 corpus (709 cases)
# against `zp toml-decode` (strict mode: invalid -> exit 1, valid -> silent stderr); fails
# unless every case passes. A missing corpus fails under CI=true and is skipped otherwise.
set -u
BUILD_DIR=${1:?usage: toml_test.sh BUILD_DIR SOURCE_DIR SHARED_DIR}
SOURCE_DIR=${2:-}
SHARED_DIR=${3:?usage: toml_test.sh BUILD_DIR SOURCE_DIR SHARED_DIR}
CORPUS="$SHARED_DIR/toml-test"
if [ ! -f "$CORPUS/check.py" ]; then
  if [ "${CI:-}" = "true" ]; then
    echo "FAIL: toml-test corpus missing at $CORPUS (required when CI=true)" >&2
    exit 1
  fi
  echo "skipped: corpus missing ($CORPUS)"
  exit 0
fi
ZP="$BUILD_DIR/zp"
if [ ! -x "$ZP" ]; then
  echo "FAIL: $ZP not found or not executable" >&2
  exit 1
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
python3 "$CORPUS/check.py" --strict --failures "$TMP/failures.txt" --details "$TMP/details.txt" \
  -- "$ZP" toml-decode | tee "$TMP/summary.txt"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ] || ! grep -q '^709 passed, 0 failed' "$TMP/summary.txt"; then
  echo "FAIL: toml-test did not pass 709/709 (check.py exit $rc); failures:" >&2
  head -n 50 "$TMP/details.txt" >&2 2>/dev/null
  exit 1
fi
echo "toml-test: 709/709 passed"
