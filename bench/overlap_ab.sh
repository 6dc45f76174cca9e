#!/usr/bin/env bash
# overlap_ab.sh: train.overlap_optimizer (perf.md 19) A/B on one GPU, in one call: GPT-2 1.5B
# (bench/gpu_bench.sh 1.5b, STEPS steps, median of 6..N) with the AdamW on the compute stream
# (off), on the side stream (on, the default), on the side stream with the compute stream at the
# greatest priority (ZP_CUDA_PRIO=1), then torch.compile beside the default, then off again
# (the spread between the two off runs is the run-to-run noise). One table of ms/step and ratios,
# and whether every run's per-step losses equal the first off run's bit for bit (they must).
# Env: OUT (default /tmp/zp-out), ZP_BUILD (an existing build with zp and zp_cuda; default
#   build-gpu, built by gpu_bench.sh when missing), STEPS (default 20), SKIP_PEER=1, VARIANTS
#   (default "off on on_prio on_compile off2"; also on_full, on_full_prio, off_full: the AdamW
#   with ZP_CUDA_ADAMW_GRID=full), BASE_SETS
#   (more "--set k=v" words for every run; with train.device=cpu and a tiny model the plumbing
#   runs without a GPU, given a stub nvidia-smi on PATH).
set -u -o pipefail
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-/tmp/zp-out}
export STEPS=${STEPS:-20} ZP_BUILD=${ZP_BUILD:-$SRC/build-gpu}
mkdir -p "$OUT"
[ -x "$ZP_BUILD/zp" ] && export SKIP_BUILD=1
ab() { # tag peers env-assignments... -- extra sets
  local tag=$1 peers=$2; shift 2
  local envs=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  mkdir -p "$OUT/$tag"
  env "${envs[@]}" OUT="$OUT/$tag" PEERS="$peers" ZP_EXTRA_SETS="${BASE_SETS:-} $*" timeout 400 bash "$SRC/bench/gpu_bench.sh" 1.5b > "$OUT/$tag/bench.txt" 2>&1
  echo "[$tag] exit $?"
  cp "${ZP_WORK:-/tmp/zp-bench-work}/runs/1.5b_none_1/metrics.jsonl" "$OUT/$tag/metrics.jsonl" 2> /dev/null
  export SKIP_BUILD=1
}
for v in ${VARIANTS:-off on on_prio on_compile off2}; do
  case $v in
    off|off2) ab "$v" none -- --set train.overlap_optimizer=false ;;
    on) ab on none ;;
    on_prio) ab on_prio none ZP_CUDA_PRIO=1 ;;
    on_full) ab on_full none ZP_CUDA_ADAMW_GRID=full ;;
    on_full_prio) ab on_full_prio none ZP_CUDA_ADAMW_GRID=full ZP_CUDA_PRIO=1 ;;
    off_full) ab off_full none ZP_CUDA_ADAMW_GRID=full -- --set train.overlap_optimizer=false ;;
    on_compile) [ "${SKIP_PEER:-0}" = 1 ] || ab on_compile compile ;;
    on_full_prio_compile) [ "${SKIP_PEER:-0}" = 1 ] || ab on_full_prio_compile compile ZP_CUDA_ADAMW_GRID=full ZP_CUDA_PRIO=1 ;;
    *) echo "overlap_ab: unknown variant $v"; exit 2 ;;
  esac
done
python3 - "$OUT" <<'PYEOF'
import json, os, sys
out = sys.argv[1]
rows = {}
for tag in ("off", "on", "on_prio", "on_full", "on_full_prio", "off_full", "on_compile", "on_full_prio_compile", "off2"):
    p = os.path.join(out, tag, "zp_metrics.jsonl")
    if not os.path.exists(p): continue
    for l in open(p):
        if l.strip().startswith("{"):
            r = json.loads(l)
            if r.get("model") == "1.5b": rows[tag] = r
peer = None
pp = next((q for q in (os.path.join(out, t, "torch.jsonl") for t in ("on_compile", "on_full_prio_compile")) if os.path.exists(q)), "")
if os.path.exists(pp):
    for l in open(pp):
        if l.strip().startswith("{"):
            r = json.loads(l)
            if r.get("compile") and r.get("ms_step"): peer = r
print("| run | ms/step | ÷ off | torch.compile ms / ours |")
print("|---|---|---|---|")
off = rows.get("off", {}).get("ms_step")
for tag, r in rows.items():
    ms = r.get("ms_step")
    ratio = f"{off / ms:.3f}" if off and ms else ""
    pr = f"{peer['ms_step'] / ms:.3f}" if peer and ms and peer.get("ms_step") else ""
    print(f"| {tag} | {ms} | {ratio} | {pr} |")
def losses(tag):
    try: return [json.loads(l)["loss"] for l in open(os.path.join(out, tag, "metrics.jsonl")) if '"loss"' in l]
    except OSError: return []
ref = losses("off")
for tag in rows:
    if tag != "off" and ref:
        l = losses(tag)
        print(f"{tag}: {len(l)} step losses {'bitwise equal to' if l == ref else 'DIFFER from'} off's")
if peer: print(f"\ntorch.compile: {peer.get('ms_step')} ms/step ({peer.get('mode')}, {peer.get('peer')})")
PYEOF
