#!/usr/bin/env bash
# plugin_symbols.sh BUILD SRC SHARED: every shipped plugin exports exactly one dynamic symbol,
# zp_plugin_entry (hidden visibility for everything else), and none needs the core's symbols.
set -euo pipefail
build=$1
fail=0
n=0
for so in "$build"/plugins/zp_*.so; do
  n=$((n+1))
  syms=$(nm -D --defined-only "$so" | awk '{print $3}' | grep -v -E '^(_init|_fini|__bss_start|_edata|_end)$' || true)
  if [ "$syms" != "zp_plugin_entry" ]; then
    echo "FAIL $so exports: $(echo $syms)"; fail=1
  fi
  undef=$(nm -D --undefined-only "$so" | awk '{print $2}' | grep -E '^zp_' || true)
  if [ -n "$undef" ]; then echo "FAIL $so needs core symbols: $undef"; fail=1; fi
done
[ "$n" -ge 7 ] || { echo "FAIL only $n plugins found in $build/plugins"; fail=1; }
echo "$n plugins checked"
exit $fail
