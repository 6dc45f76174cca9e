#!/usr/bin/env bash
# campaign.sh BUILD SRC: bench/campaign.sh (the multi-GPU parts, one device call each) without a
# GPU: `list` names every part, every script a part runs exists, DRY=1 prints a part's command,
# an unknown part is refused (exit 2), and a 2-GPU part on a machine without 2 GPUs stops
# with the reason (exit 3) before running anything.
set -u
src=$2
c=$src/bench/campaign.sh
fail=0
parts=$(bash "$c" list | awk '{print $1}')
n=$(echo "$parts" | wc -w)
[ "$n" -eq 14 ] && echo "ok   list: $n parts" || { echo "FAIL: list gave $n parts"; fail=1; }
for p in $parts; do
  cmd=$(DRY=1 bash "$c" "$p") || { echo "FAIL: DRY=1 $p"; fail=1; continue; }
  script=$(echo "$cmd" | grep -oE '(bench|tests/gpu)/[a-z0-9_]+\.sh' | head -1)
  if [ -n "$script" ] && [ -f "$src/$script" ]; then echo "ok   $p runs $script"; else echo "FAIL: $p: no script in '$cmd'"; fail=1; fi
done
out=$(bash "$c" nosuchpart 2>&1); rc=$?
[ $rc -eq 2 ] && echo "$out" | grep -q "unknown part" && echo "ok   unknown part refused" || { echo "FAIL: unknown part: rc $rc: $out"; fail=1; }
if ! nvidia-smi -L > /dev/null 2>&1; then
  out=$(OUT=$(mktemp -d) bash "$c" checks2 2>&1); rc=$?
  [ $rc -eq 3 ] && echo "$out" | grep -q "needs 2 GPUs" && echo "ok   checks2 refused without 2 GPUs" ||
    { echo "FAIL: checks2 without GPUs: rc $rc: $out"; fail=1; }
fi
[ $fail = 0 ] && echo "campaign: all passed"
exit $fail
