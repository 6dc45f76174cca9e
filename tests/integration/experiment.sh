#!/usr/bin/env bash
# experiment.sh BUILD SRC SHARED: `zp run` (the Lua experiment driver, docs/lua-api.md).
#  1. the shipped stage sweep, reduced (2 steps, micro-batches 1 and 2, seq_len 64), on 2 CPU
#     ranks: its CSV has one row per stage x micro-batch, every run ok; model-state bytes per
#     rank fall none > stage1 > stage2 > stage3; zp.plan equals the runs' ledger within 1% for
#     every category; the SVGs are well-formed XML with one bar group per stage; the Markdown
#     table has every row.
#  2. the learning-rate sweep, reduced: one loss curve per learning rate, final losses finite.
#  3. scripts that try to leave the sandbox or the output directory are refused with the
#     expected message, exit 1, and create nothing outside the output directory.
#  4. syntax and runtime errors exit non-zero with file:line; a runaway loop hits the
#     instruction budget; a failing training run is a result (with its error text); waiting
#     for a run costs no Lua instructions.
set -uo pipefail
build=$1; src=$2
zp="$build/zp"
work=$(mktemp -d /tmp/zp-experiment.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail=0
[ -f "$src/data/fortunes/train_000.bin" ] || { echo "FAIL: data/fortunes missing (run scripts/setup.sh)"; exit 1; }
small=(--set model.seq_len=64 --set train.threads=1 --set train.val_batches=1)

# ---- 1. stage sweep
if "$zp" run "$src/examples/experiments/stage_sweep.lua" --out "$work/sweep" --arg steps=2 \
     --arg micro_batches=1,2 "${small[@]}" > "$work/sweep.log" 2>&1; then
  python3 - "$work/sweep" <<'PY' || fail=1
import csv, sys, xml.dom.minidom as minidom
d = sys.argv[1]
ok = True
def bad(msg):
    global ok
    ok = False
    print("FAIL stage sweep:", msg)
rows = list(csv.DictReader(open(f"{d}/stage_sweep.csv")))
stages = ["none", "stage1", "stage2", "stage3"]
cats = ["PARAM", "GRAD", "MASTER", "OPTIM", "ACT", "BUFFER"]
got = [(r["stage"], r["micro_batch"]) for r in rows]
want = [(s, m) for s in stages for m in ("1", "2")]
if got != want: bad(f"rows {got}, want {want}")
for r in rows:
    if r["ok"] != "true" or r["steps"] != "2": bad(f"run {r['stage']} mb {r['micro_batch']}: ok={r['ok']} steps={r['steps']} {r['error']}")
    if not float(r["tok_s"]) > 0: bad(f"tok_s {r['tok_s']}")
    for c in cats + ["model_states"]:
        a, p = float(r[c]), float(r["plan_" + c])
        if abs(a - p) > 0.01 * max(abs(p), 1): bad(f"{r['stage']} mb {r['micro_batch']} {c}: ledger {a} vs plan {p}")
    ms = sum(float(r[c]) for c in ["PARAM", "GRAD", "MASTER", "OPTIM"])
    if ms != float(r["model_states"]): bad(f"model_states {r['model_states']} != sum {ms}")
for mb in ("1", "2"):
    m = [float(r["model_states"]) for r in rows if r["micro_batch"] == mb]
    if not (m[0] > m[1] > m[2] > m[3] > 0): bad(f"model states (mb {mb}) not none > stage1 > stage2 > stage3: {m}")
    print(f"ok   model-state bytes per rank, mb {mb}: " + ", ".join(f"{s} {int(v)}" for s, v in zip(stages, m)))
act = {mb: [float(r["ACT"]) for r in rows if r["micro_batch"] == mb] for mb in ("1", "2")}
if not all(a2 > a1 for a1, a2 in zip(act["1"], act["2"])): bad(f"ACT does not grow with the micro-batch: {act}")
doc = minidom.parse(f"{d}/memory_by_category.svg")
groups = [g for g in doc.getElementsByTagName("g") if g.getAttribute("class") == "group"]
titles = [g.getElementsByTagName("title")[0].firstChild.data for g in groups]
if titles != stages: bad(f"memory chart groups {titles}")
for g in groups:
    bars = [e for e in g.getElementsByTagName("rect") if e.getAttribute("class") == "bar"]
    if len(bars) != len(cats): bad(f"group {g.getElementsByTagName('title')[0].firstChild.data}: {len(bars)} bars")
tdoc = minidom.parse(f"{d}/tok_s.svg")
tg = [g for g in tdoc.getElementsByTagName("g") if g.getAttribute("class") == "group"]
if len(tg) != 4 or any(len([e for e in g.getElementsByTagName("rect") if e.getAttribute("class") == "bar"]) != 2 for g in tg):
    bad("tok_s chart: want 4 groups of 2 bars")
md = open(f"{d}/stage_sweep.md").read().splitlines()
table = [l for l in md if l.startswith("|")]
if len(table) != 2 + 8: bad(f"markdown table has {len(table)} lines")
extra = sorted(set(__import__("os").listdir(d)) - {"stage_sweep.csv", "stage_sweep.md", "memory_by_category.svg", "tok_s.svg", "runs"})
if extra: bad(f"unexpected files in the output directory: {extra}")
print("ok   stage sweep: 8 runs, plan == ledger, SVGs well-formed" if ok else "FAIL stage sweep")
sys.exit(0 if ok else 1)
PY
else
  echo "FAIL: stage sweep exited non-zero"; tail -30 "$work/sweep.log"; fail=1
fi

# ---- 2. learning-rate sweep
if "$zp" run "$src/examples/experiments/lr_sweep.lua" --out "$work/lr" --arg steps=3 --arg lrs=1e-3,1e-2 \
     "${small[@]}" > "$work/lr.log" 2>&1; then
  python3 - "$work/lr" <<'PY' || fail=1
import csv, math, sys, xml.dom.minidom as minidom
d = sys.argv[1]
rows = list(csv.DictReader(open(f"{d}/lr_sweep.csv")))
doc = minidom.parse(f"{d}/loss_curves.svg")
paths = [p for p in doc.getElementsByTagName("path") if p.getAttribute("class") == "series"]
ok = [r["lr"] for r in rows] == ["0.001", "0.01"] and all(r["ok"] == "true" and r["steps"] == "3" and math.isfinite(float(r["final_loss"])) for r in rows) \
     and len(paths) == 2 and all(p.getAttribute("d").count("L") == 2 for p in paths)
print(("ok   lr sweep: " if ok else "FAIL lr sweep: ") + ", ".join(f"lr {r['lr']} loss {r['final_loss']}" for r in rows))
sys.exit(0 if ok else 1)
PY
else
  echo "FAIL: lr sweep exited non-zero"; tail -30 "$work/lr.log"; fail=1
fi

# ---- 3. escapes: script, expected message
t="$src/tests/experiments"
check_refused() { # name message [extra zp run args]; each script gets its own empty box
  local name=$1 msg=$2; shift 2
  local box="$work/box/$name" log="$work/logs/$name.log"
  mkdir -p "$box" "$work/logs"
  "$zp" run "$t/$name.lua" --out "$box/out" --arg target="$box/escaped" "$@" > "$log" 2>&1
  local rc=$?
  # nothing may appear in the box but the output directory; in it only runs/ and *.csv
  local stray
  stray=$(find "$box" -mindepth 1 ! -path "$box/out" ! -path "$box/out/runs" ! -path "$box/out/runs/*" \
          ! -path "$box/out/*.csv" 2>/dev/null)
  if [ $rc -ne 1 ] || ! grep -qF -- "$msg" "$log" || [ -n "$stray" ]; then
    echo "FAIL $name: rc $rc (want 1), want message: $msg; stray files: $stray"; cat "$log"; fail=1
  else
    echo "ok   $name: $(grep -F -- "$msg" "$log" | head -1 | cut -c1-160)"
  fi
}
check_refused escape_io "attempt to index a nil value (global 'io')"
check_refused escape_os "attempt to index a nil value (global 'os')"
check_refused escape_require "attempt to call a nil value (global 'require')"
check_refused escape_bytecode "binary (precompiled) Lua chunks are refused"
check_refused escape_dump "attempt to call a nil value (field 'dump')"
check_refused escape_dotdot "zp.write_csv: refused: '../escape_dotdot' is outside the output directory"
check_refused escape_abs "zp.write_markdown: refused: '$work/box/escape_abs/escaped' is outside the output directory"
check_refused escape_subdir "zp.plot_lines: refused: 'a/b' is outside the output directory"
check_refused escape_runname "zp.train: refused: '../../escape_run' is outside the output directory"
check_refused escape_outdir_key "cfg:set: refused: train.out_dir is chosen by zp.train"
check_refused escape_plugin "zp.plan: refused: zero.plugin = \"$work/box/escape_plugin/out/evil.so.csv\" is a file inside the output directory"
check_refused runaway_loop "instruction limit exceeded (1000000)" --max-instructions 1e6
check_refused syntax_error "syntax_error.lua:4: unexpected symbol near '='"
check_refused runtime_error "runtime_error.lua:4: boom"
grep -q "stack traceback" "$work/logs/runtime_error.log" || { echo "FAIL runtime_error: no traceback"; fail=1; }
[ -z "$(ls -A "$work/box/escape_dotdot/out")" ] || { echo "FAIL: escape_dotdot left files"; fail=1; }

# ---- 4. results: a failed run is a result; waiting costs no instructions
if "$zp" run "$t/results.lua" --out "$work/results" --max-instructions 200000 "${small[@]}" > "$work/results.log" 2>&1; then
  python3 - "$work/results/results.csv" <<'PY' || fail=1
import csv, sys
r = {x["run"]: x for x in csv.DictReader(open(sys.argv[1]))}
ok = (r["bad"]["ok"] == "false" and r["bad"]["status"] == "1" and r["bad"]["n_steps"] == "0"
      and "unknown key 'train.stpes' (did you mean 'train.steps'?)" in r["bad"]["error"]
      and r["good"]["ok"] == "true" and r["good"]["n_steps"] == "2" and float(r["good"]["final_loss"]) > 0
      and r["cfg:set"]["ok"] == "false"
      and "cfg:set(\"train.micro_bach\"): unknown key 'train.micro_bach' (did you mean 'train.micro_batch'?)" in r["cfg:set"]["error"])
print(("ok   results: " if ok else "FAIL results: ") + " | ".join(f"{k}: ok={v['ok']} {v['error']}" for k, v in r.items()))
sys.exit(0 if ok else 1)
PY
else
  echo "FAIL: results.lua exited non-zero"; cat "$work/results.log"; fail=1
fi
[ $fail -eq 0 ] && echo "experiment: all checks passed"
exit $fail
