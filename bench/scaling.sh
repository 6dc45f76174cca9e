#!/usr/bin/env bash
# scaling.sh: the ZeRO scaling curve on however many GPUs the machine has (1, 2, 4, 8), beside
# PyTorch's peers at the same counts, and the 3D-parallel (dp2 x pp2 x tp2) check where 8 ranks
# are available. The same script runs on CPU ranks (DEVICE=cpu: a tiny model, no peers) so that
# the plumbing is known to work before a large machine is.
#
# Run (repo root; on GPUs carry .deps and, for the peers, copy ../shared/peers to .peers):
#   bash bench/scaling.sh [MODEL...]          MODEL: 124m | 1.5b | 7b (default 1.5b) or tiny (CPU)
# Env: DEVICE (cuda | cpu; default cuda when nvidia-smi sees a GPU), COUNTS (default: 1 2 4 8 up
#   to the GPUs visible; CPU: "1 2 4"), STAGES (default "stage1 stage2 stage3"), STEPS (default
#   12; median of steps 4..N), MB (micro-batch per rank; default 8 for 1.5b/7b, 16 for 124m, 2
#   for tiny), PEERS (1 = run the torch peers, default 1 on cuda when .peers exists), OUT (default
#   /tmp/zp-out), ZP_BUILD (default build-gpu, or build on cpu), SKIP_BUILD=1, ZP_RUN_TIMEOUT
#   (default 400 s per run).
# Numbers: tok/s = tokens per step over all ranks / median step time; efficiency = tok/s at N over
#   N x tok/s at 1 in the same mode (stage at 1 rank = the same plugin with one rank); peak GiB
#   per GPU = the ledger's gpu-tier peak of rank 0 (zp) / max_memory_allocated (PyTorch).
# 3D: with >= 8 ranks, dp2 x pp2 x tp2 with ZeRO-1 on a small model against the 1-rank run
#   (losses, relative 1e-3 on GPU / 1e-5 on CPU), then throughput on MODEL; skipped with the
#   reason `zp plan` gives when pipeline/tensor parallelism is not available in this build.
set -u -o pipefail
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-/tmp/zp-out}
WORK=${ZP_WORK:-/tmp/zp-scaling-work}
note() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
NGPU=0
command -v nvidia-smi > /dev/null && NGPU=$(nvidia-smi -L 2> /dev/null | grep -c '^GPU ')
DEVICE=${DEVICE:-$([ "$NGPU" -gt 0 ] && echo cuda || echo cpu)}
MODELS=("$@")
[ ${#MODELS[@]} -eq 0 ] && MODELS=($([ "$DEVICE" = cpu ] && echo tiny || echo 1.5b))
if [ -z "${COUNTS:-}" ]; then
  if [ "$DEVICE" = cpu ]; then COUNTS="1 2 4"; else COUNTS=$(for n in 1 2 4 8; do [ $n -le "$NGPU" ] && printf '%s ' $n; done); fi
fi
STAGES=${STAGES:-stage1 stage2 stage3}
STEPS=${STEPS:-12}
TO=${ZP_RUN_TIMEOUT:-400}
BUILD=${ZP_BUILD:-$SRC/$([ "$DEVICE" = cpu ] && echo build || echo build-gpu)}
PEER_DIR=${ZP_PEER_DIR:-$SRC/.peers}
PEERS=${PEERS:-$([ "$DEVICE" = cuda ] && [ -f "$PEER_DIR/torch_gpt2.py" ] && echo 1 || echo 0)}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORK"
ROWS=$OUT/scaling_rows.jsonl
: > "$ROWS"
FAILED=0
note "scaling: device $DEVICE ($NGPU GPU(s) visible), models ${MODELS[*]}, counts $COUNTS, stages $STAGES, peers $PEERS"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  export PATH=$PATH:/usr/local/cuda/bin
  if [ "$DEVICE" = cuda ]; then
    cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DZP_TEST_POISON=OFF -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" \
      > "$OUT/scaling_build.log" 2>&1 && ninja -C "$BUILD" >> "$OUT/scaling_build.log" 2>&1
  else
    cmake --preset release -G Ninja > "$OUT/scaling_build.log" 2>&1 && cmake --build --preset release >> "$OUT/scaling_build.log" 2>&1
  fi || { tail -20 "$OUT/scaling_build.log"; echo "scaling: build failed"; exit 1; }
fi

# model -> config, --set words, peer model name, micro-batch
model_args() {
  case $1 in
    124m) CFG=$SRC/examples/gpt2-124m.toml; SETS=(); PEER=d12; MBD=16 ;;
    1.5b) CFG=$SRC/examples/gpt2-1.5b.toml; SETS=(); PEER=d48; MBD=8 ;;
    7b) CFG=$SRC/examples/gpt2-1.5b.toml; SETS=(--set model.n_layer=80 --set model.n_head=40 --set model.d_model=2560); PEER=d80; MBD=8 ;;
    tiny) CFG=$SRC/tests/configs/equiv.toml; SETS=(--set model.n_layer=4 --set model.d_model=64 --set model.n_head=4 --set model.seq_len=64); PEER=; MBD=2 ;;
    *) echo "scaling: unknown model $1 (124m, 1.5b, 7b, tiny)"; exit 2 ;;
  esac
  MBR=${MB:-$MBD}
}

SHARD=$WORK/random_train.bin
if [ "$DEVICE" = cuda ]; then
  python3 "$SRC/bench/random_shard.py" "$SHARD" $(((STEPS + 2) * 16 * 1024 * 8 + 1)) || { echo "scaling: cannot write the shard"; exit 1; }
fi

# zp_run MODEL N STAGE [extra sets...]: one row
zp_run() {
  local m=$1 n=$2 st=$3; shift 3
  local dir=$WORK/runs/${m}_${st}_$n log=$OUT/scaling_${m}_${st}_$n.log rc t0
  rm -rf "$dir"
  local data=()
  [ "$DEVICE" = cuda ] && data=(--set "data.train=$SHARD")
  t0=$(date +%s)
  timeout -k 10 "$TO" "$BUILD/zp" launch -n "$n" "$CFG" "${SETS[@]}" "${data[@]}" --set "train.device=$DEVICE" \
    --set "train.micro_batch=$MBR" --set train.grad_accum=1 --set "train.steps=$STEPS" --set "train.out_dir=$dir" \
    --set train.save_final=false --set train.checkpoint_every=0 --set train.resume=never --set train.val_every=0 \
    --set train.log_every=1 --set "zero.plugin=$st" "$@" > "$log" 2>&1
  rc=$?
  note "zp $m $st x$n: exit $rc ($(($(date +%s) - t0)) s)"
  [ $rc -eq 0 ] || { tail -8 "$log"; FAILED=1; }
  python3 - "$dir/metrics.jsonl" "$m" "$st" "$n" "$rc" >> "$ROWS" << 'PYEOF'
import json, statistics, sys
path, m, st, n, rc = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
try: rows = [json.loads(l) for l in open(path) if '"ms"' in l]
except OSError: rows = []
out = dict(system="zp", model=m, mode=st, n=n, rc=rc)
if rows:
    t = [r for r in rows if r["step"] >= 4] or rows
    ms = statistics.median(r["ms"] for r in t)
    tok = rows[-1]["tok_s"] * rows[-1]["ms"] / 1000.0
    out.update(tok_s=tok / ms * 1000.0, peak_GiB=max(r.get("peak_gpu", 0) for r in rows) / 2**30,
               loss=[rows[0]["loss"], rows[-1]["loss"]], losses=[r["loss"] for r in rows])
print(json.dumps(out))
PYEOF
}

peer_run() { # MODEL N MODE
  local m=$1 n=$2 mode=$3 log=$OUT/scaling_peer_${m}_${mode}_$n.log
  local cmd=(python3 "$PEER_DIR/torch_gpt2.py")
  [ "$n" -gt 1 ] && cmd=(torchrun --standalone --nproc_per_node "$n" "$PEER_DIR/torch_gpt2.py")
  timeout -k 10 "$TO" "${cmd[@]}" --mode "$mode" --model "$PEER" --B "$MBR" --steps "$STEPS" --warmup 4 > "$log" 2>&1 ||
    { note "peer $mode x$n failed: $(tail -1 "$log")"; return; }
  grep '^{' "$log" | tail -1 | python3 -c '
import json, sys
r = json.loads(sys.stdin.read()); m, n, mode = sys.argv[1:4]
print(json.dumps(dict(system="torch", model=m, mode=mode, n=int(n), rc=0, tok_s=r.get("tok_s", 0),
                      peak_GiB=r.get("max_mem_GiB", r.get("peak_GiB", 0)))))' "$m" "$n" "$mode" >> "$ROWS"
}

declare -A PEER_MODE=([stage1]=zero1 [stage2]=fsdp2_zero2 [stage3]=fsdp2_zero3)
for m in "${MODELS[@]}"; do
  model_args "$m"
  for n in $COUNTS; do
    for st in $STAGES; do
      zp_run "$m" "$n" "$st"
      [ "$PEERS" = 1 ] && [ -n "$PEER" ] && peer_run "$m" "$n" "${PEER_MODE[$st]}"
    done
  done
done

# ---- 3D: dp2 x pp2 x tp2 with ZeRO-1 (8 ranks) ----
maxn=$(for n in $COUNTS; do echo "$n"; done | sort -n | tail -1)
if [ "${maxn:-0}" -ge 8 ]; then
  model_args tiny
  [ "$DEVICE" = cuda ] && SETS+=(--set train.precision=bf16)
  if why=$("$BUILD/zp" plan "$CFG" "${SETS[@]}" --world 8 --set parallel.dp=2 --set parallel.pp=2 --set parallel.tp=2 \
      --set zero.plugin=stage1 2>&1); then
    # the same global batch: dp 2 x 2 pipeline micro-batches x MB = 1 rank x grad_accum 4 x MB
    zp_run 3d-ref 1 none --set train.grad_accum=4
    zp_run 3d 8 stage1 --set parallel.dp=2 --set parallel.pp=2 --set parallel.tp=2 --set pipeline.micro_batches=2
  else
    note "3D skipped: zp plan refuses dp2 x pp2 x tp2: $(tail -1 <<< "$why")"
    echo "{\"system\": \"zp\", \"model\": \"3d\", \"mode\": \"skipped\", \"n\": 8, \"rc\": 0, \"why\": $(python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$(tail -1 <<< "$why")")}" >> "$ROWS"
  fi
else
  note "3D skipped: needs 8 ranks (counts: $COUNTS)"
fi

python3 - "$ROWS" << 'PYEOF' | tee "$OUT/scaling_summary.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
one = {(r["system"], r["model"], r["mode"]): r["tok_s"] for r in rows if r["n"] == 1 and r.get("tok_s")}
print("| system | model | mode | ranks | tok/s | efficiency vs 1 rank | peak GiB/rank | zp ÷ torch | loss first -> last |")
print("|---|---|---|---|---|---|---|---|---|")
peer = {("zero1", "stage1"), ("fsdp2_zero2", "stage2"), ("fsdp2_zero3", "stage3")}
tor = {(r["model"], r["mode"], r["n"]): r.get("tok_s") for r in rows if r["system"] == "torch"}
ref = next((r for r in rows if r["model"] == "3d-ref" and r.get("losses")), None)
for r in rows:
    if r["model"] == "3d" and ref and r.get("losses"):
        d = max(abs(a - b) / abs(b) for a, b in zip(r["losses"], ref["losses"]))
        print(f"| zp | 3D dp2 x pp2 x tp2 vs 1 rank | losses | 8 | max relative difference {d:.2e} over {len(r['losses'])} steps | | | | |")
    if r["mode"] == "skipped":
        print(f"| zp | 3D | skipped | 8 | | | | | {r['why']} |"); continue
    if not r.get("tok_s"):
        print(f"| {r['system']} | {r['model']} | {r['mode']} | {r['n']} | failed (exit {r['rc']}) | | | | |"); continue
    base = one.get((r["system"], r["model"], r["mode"]))
    eff = f"{r['tok_s'] / (r['n'] * base):.2f}" if base else ""
    ratio = ""
    if r["system"] == "zp":
        pm = [p for p, z in peer if z == r["mode"]]
        t = tor.get((r["model"], pm[0], r["n"])) if pm else None
        ratio = f"{r['tok_s'] / t:.2f}" if t else ""
    loss = f"{r['loss'][0]:.3f} -> {r['loss'][1]:.3f}" if r.get("loss") else ""
    print(f"| {r['system']} | {r['model']} | {r['mode']} | {r['n']} | {r['tok_s']:,.0f} | {eff} | {r['peak_GiB']:.2f} | {ratio} | {loss} |")
PYEOF
exit $FAILED
