#!/usr/bin/env bash
# stage_deps.sh: copies the headers and static libraries the build needs from this machine's
# Debian packages (liblua5.4-dev, libjansson-dev, liburing-dev) into .deps/ (git-ignored), so
# a machine without them (the GPU machine) can build: CMake uses .deps/ when present and
# pkg-config does not find the library. Nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .deps && mkdir -p .deps/include .deps/lib
cp /usr/include/lua5.4/{lua.h,luaconf.h,lualib.h,lauxlib.h} .deps/include/
cp /usr/include/x86_64-linux-gnu/lua5.4-deb-multiarch.h .deps/include/ 2>/dev/null || true
cp /usr/include/jansson.h /usr/include/jansson_config.h .deps/include/
cp -r /usr/include/liburing /usr/include/liburing.h .deps/include/
cp /usr/lib/x86_64-linux-gnu/liblua5.4.a .deps/lib/
cp /usr/lib/x86_64-linux-gnu/libjansson.a .deps/lib/
cp /usr/lib/x86_64-linux-gnu/liburing.a .deps/lib/
du -sh .deps
