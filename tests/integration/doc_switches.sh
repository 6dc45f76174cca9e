#!/usr/bin/env bash
# doc_switches.sh BUILD SRC SHARED: the CUDA backend's environment switches (zpc_switches in
# plugins/cuda/cuda_backend.cu) and their table in docs/architecture.md ("values (default
# first)") cannot drift apart: the same names, for each the same set of values, and the value
# listed first is the code's default (a ZPC_DEFAULT_* define or a number, an index into the
# values). Runs without CUDA: it reads both files as text.
set -euo pipefail
src=$(cd "$2" && pwd)
python3 - "$src/plugins/cuda/cuda_backend.cu" "$src/docs/architecture.md" <<'EOF'
import re, sys
code, doc = open(sys.argv[1]).read(), open(sys.argv[2]).read()
defines = {m.group(1): int(m.group(2)) for m in re.finditer(r"#define\s+(ZPC_DEFAULT_\w+)\s+(\d+)", code)}
table = code[code.index("zpc_switches[]"):]
table = table[:table.index("};")]
sw = {}
for m in re.finditer(r'\{"(ZP_CUDA_\w+)",\s*offsetof\([^)]*\),\s*(\w+),\s*\{([^}]*)\}\}', table):
    name, dflt, vals = m.group(1), m.group(2), re.findall(r'"([^"]*)"', m.group(3))
    idx = int(dflt) if dflt.isdigit() else defines.get(dflt)
    if idx is None or not 0 <= idx < len(vals):
        print(f"FAIL: {name}: default {dflt} is not an index into {vals}"); sys.exit(1)
    sw[name] = (vals, vals[idx])
if len(sw) < 10:
    print(f"FAIL: read only {len(sw)} switches from zpc_switches (did its format change?)"); sys.exit(1)
rows = {}
for line in doc.splitlines():
    if not line.startswith("| `ZP_CUDA_"):
        continue
    cells = [c.strip() for c in line.strip("|").split("|")]
    names = re.findall(r"`(ZP_CUDA_\w+)`", cells[0])
    lists = cells[1].split(";")  # `a`, `b`; `c`, `d`: one list per name
    if len(lists) != len(names):
        print(f"FAIL: docs row {names}: {len(lists)} value lists for {len(names)} names"); sys.exit(1)
    for n, l in zip(names, lists):
        rows[n] = re.findall(r"`([^`]*)`", l)
fail = 0
for n in sorted(set(sw) | set(rows)):
    if n not in rows:
        print(f"FAIL: {n} is a switch in cuda_backend.cu but has no row in docs/architecture.md"); fail = 1; continue
    if n not in sw:
        print(f"FAIL: docs/architecture.md documents {n}, which cuda_backend.cu does not read"); fail = 1; continue
    vals, dflt = sw[n]
    if sorted(rows[n]) != sorted(vals):
        print(f"FAIL: {n}: docs list {rows[n]}, the code accepts {vals}"); fail = 1
    elif rows[n][0] != dflt:
        print(f"FAIL: {n}: docs list `{rows[n][0]}` first (the default), the code's default is `{dflt}`"); fail = 1
    else:
        print(f"ok   {n}: {', '.join(rows[n])} (default {dflt})")
sys.exit(fail)
EOF
echo "doc_switches: all passed"
