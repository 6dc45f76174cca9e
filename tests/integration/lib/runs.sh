# runs.sh: sourced by the integration tests that train on CPU ranks and compare runs
# (equivalence.sh, offload.sh, recompute.sh, tensor.sh, pptp.sh). The caller sets zp, cfg,
# work (a scratch directory) and fail=0, and for close() cmp_py (tp_compare.py); RUN_SETS
# (optional array) holds `k=v` settings every run gets first.
# run NAME NRANKS k=v...: `zp launch` into $work/NAME; on failure prints the log's tail, sets
#   fail=1 and returns 1; else writes $work/NAME.losses (step, loss) and $work/NAME.steps
#   (step, loss, lr, grad_norm) from metrics.jsonl.
run() {
  local name=$1 n=$2; shift 2
  local sets=() s
  for s in ${RUN_SETS[@]+"${RUN_SETS[@]}"} "$@"; do sets+=(--set "$s"); done
  if ! "$zp" launch -n "$n" "$cfg" --set train.out_dir="$work/$name" "${sets[@]}" > "$work/$name.log" 2>&1; then
    echo "FAIL: run $name"; tail -40 "$work/$name.log"; fail=1; return 1
  fi
  grep -o '"step":[0-9]*,"loss":[0-9.e+-]*' "$work/$name/metrics.jsonl" > "$work/$name.losses"
  grep -o '"step":[0-9]*,"loss":[0-9.e+-]*,"lr":[0-9.e+-]*,"grad_norm":[0-9.e+-]*' "$work/$name/metrics.jsonl" > "$work/$name.steps"
}
# bitwise A B WHAT: per-step losses, lrs and gradient norms identical and the last checkpoints'
#   whole state equal (zp ckpt compare --state).
bitwise() { # a b what
  local a=$1 b=$2 what=$3 out
  if cmp -s "$work/$a.steps" "$work/$b.steps" &&
     out=$("$zp" ckpt compare "$(ls -d "$work/$a"/ckpt_* | tail -1)" "$(ls -d "$work/$b"/ckpt_* | tail -1)" --state 2>&1); then
    echo "ok   $what (bitwise): $(echo "$out" | head -1)"
  else
    echo "FAIL: $what: not bitwise: ${out:-losses differ}"; paste "$work/$a.steps" "$work/$b.steps"; fail=1
  fi
}
# close A B WHAT [param tolerance, default 5e-5] [loss/norm tolerance, default 1e-5] [steps]:
#   per-step losses and gradient norms within the relative tolerance (and, given STEPS, exactly
#   that many steps), then both runs exported and their global parameters compared by cmp_py.
close() {
  local a=$1 b=$2 what=$3 ptol=${4:-5e-5} ltol=${5:-1e-5} steps=${6:-0} out
  if ! out=$(python3 - "$work/$a.steps" "$work/$b.steps" "$ltol" "$steps" <<'PY'
import re, sys
def rd(p): return [tuple(float(x) for x in re.findall(r':([0-9.e+-]+)', l)) for l in open(p)]
a, b, tol, want = rd(sys.argv[1]), rd(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
assert len(a) == len(b) and len(a) > 0 and (want == 0 or len(a) == want), "step counts differ: %d vs %d" % (len(a), len(b))
worst = max(max(abs(x[1] - y[1]) / abs(x[1]), abs(x[3] - y[3]) / abs(x[3])) for x, y in zip(a, b))
print("losses/grad norms of %d steps: max relative difference %.2g (tolerance %g)" % (len(a), worst, tol))
sys.exit(0 if worst <= tol else 1)
PY
  ); then echo "FAIL: $what: $out"; paste "$work/$a.steps" "$work/$b.steps"; fail=1; return; fi
  local pout
  "$zp" export "$work/$a" --out "$work/$a.safetensors" > /dev/null && "$zp" export "$work/$b" --out "$work/$b.safetensors" > /dev/null || {
    echo "FAIL: $what: export"; fail=1; return; }
  if pout=$(python3 "$cmp_py" "$work/$a.safetensors" "$work/$b.safetensors" "$ptol"); then
    echo "ok   $what: $out; parameters: $pout"
  else
    echo "FAIL: $what: $out; parameters: $pout"; fail=1
  fi
}
