#!/usr/bin/env bash
# trace.sh BUILD SRC SHARED: train.trace = true writes one Chrome trace per rank (valid JSON,
# complete "X" events) with compute (forward/backward per group, optimizer), communication
# (the strategy's collectives: its reduce-scatters started in the backward and waited for, ABI
# 1.9) and I/O (data, checkpoint) spans; 2 ranks, stage 3.
set -uo pipefail
build=$1; src=$2
work=$(mktemp -d /tmp/zp-trace.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$build/zp" launch -n 2 "$src/tests/configs/equiv.toml" --set train.trace=true --set zero.plugin=stage3 \
  --set train.out_dir="$work/run" > "$work/log" 2>&1 || { echo "FAIL: run"; cat "$work/log"; exit 1; }
python3 - "$work/run" <<'PY'
import json, sys
ok = True
for r in (0, 1):
    d = json.load(open(f"{sys.argv[1]}/trace_rank{r}.json"))
    names = {}
    for e in d["traceEvents"]:
        if e.get("ph") == "X":
            assert e["dur"] >= 0 and e["ts"] >= 0, e
            names[(e["cat"], e["name"])] = names.get((e["cat"], e["name"]), 0) + 1
    need = [("compute", "forward"), ("compute", "backward"), ("compute", "optimizer step"),
            ("comm", "allgather"), ("comm", "reduce_scatter_start"), ("comm", "wait_started"),
            ("io", "data"), ("io", "checkpoint")]
    miss = [n for n in need if n not in names]
    # 4 steps x 4 groups x (forward + backward)
    if miss or names[("compute", "forward")] != 16 or names[("compute", "backward")] != 16:
        print(f"FAIL rank {r}: missing {miss}, counts {names}"); ok = False
    else:
        print(f"ok   rank {r}: " + ", ".join(f"{c}/{n} {k}" for (c, n), k in sorted(names.items())))
sys.exit(0 if ok else 1)
PY
