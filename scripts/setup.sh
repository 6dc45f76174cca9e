#!/usr/bin/env bash
# setup.sh: installs every dependency from Debian packages, builds zeroplace (release), and
# prepares the embedded default corpus (Debian's `fortunes`) into data/fortunes/.
# Idempotent; nothing is downloaded at build time. Run from anywhere: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
PKGS="build-essential cmake ninja-build pkg-config clang libclang-rt-14-dev python3 python3-numpy
      liblua5.4-dev liburing-dev libjansson-dev libopenblas-openmp-dev fortunes fortunes-min"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "setup: installing$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
fi
cmake --preset release -G Ninja >/dev/null
cmake --build --preset release
if [ ! -f data/fortunes/train_000.bin ]; then
  ./build/zp data prepare --split-on-percent --val-fraction 0.05 --out data/fortunes /usr/share/games/fortunes
fi
echo "setup: done. Main command: ./build/zp train examples/tiny.toml && ./build/zp sample examples/tiny.toml"
