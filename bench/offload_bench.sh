#!/usr/bin/env bash
# offload_bench.sh: the host-RAM tier on a GPU machine, in one call: GPT-2 1.5B (micro-batch 8,
# seq 1024, bf16) without offload, with offload_cpu (synchronous update) and with the delayed
# update, at grad_accum 1 and 4, then optionally the largest model run (offload + recompute,
# 2 steps). Prints one markdown table with ratios to the no-offload run of the same grad_accum.
#
# Run (repo root, .deps carried; reuses an existing build):
#   bash bench/offload_bench.sh [matrix] [stream] [params] [nvme] [largest] [largest_nvme]   (default: matrix)
# largest_nvme: as largest, with every group's optimizer state on offload_nvme (files under the
#   nvme part's directory) and offload.optimizer.host_ratio (LARGEST_HOST_RATIOS, default 0.9 down
#   to 0) of it kept in host memory: the CPU + NVMe setting, for models whose state fits neither
#   the RAM nor the disk alone.
# params: stage 3 with optimizer offload, without and with parameter offload (offload.param.plugin).
# nvme: stage 3 on a smaller GPT (NVME_MODEL, default 24 layers x d 1024: 355M; the optimizer
#   state of 1.5B would move 37 GB through the disk per step) without offload, with the optimizer
#   state on offload_nvme, and with the parameters on NVMe too (ABI 1.6 fetch per gather);
#   files under NVME_DIR (default $ZP_WORK/nvme, or $SRC/.nvme-bench when that is in memory),
#   NVME_STEPS steps (default 6).
# stream: grad_accum 1 without offload, and offload synchronous / delayed with and without
#   offload.optimizer.stream_grads (gradients copied to the host during the backward).
# Env: OUT (default /tmp/zp-out), ZP_WORK (default /tmp/zp-offload-work), ZP_BUILD (default
#   build-gpu), SKIP_BUILD=1, STEPS (per matrix run, default 12; median of steps 5..N),
#   ZP_STAGE (zero.plugin for the matrix, default none: one GPU), THREADS (offload.optimizer.threads,
#   default nproc), LARGEST_CANDIDATES (LxDxH list, largest first; default 60x4096x32 (12.3B) down
#   to 40x4096x32 (8.3B)), LARGEST_RATIOS (offload.optimizer.ratio values tried per candidate, highest
#   first; default 1 down to 0.6: the first the plan accepts, with --device-gb from nvidia-smi),
#   LARGEST_MB (micro-batch, default 1), ZP_RUN_TIMEOUT (s per run, default 300),
#   ZP_NGPU (ranks: default 1; > 1 runs `zp launch -n ZP_NGPU` and ZP_STAGE defaults to stage2,
#   the issue's 2-GPU setting), PEER=1 (with ZP_NGPU > 1: the PyTorch peer in the same call,
#   FSDP2 (no reshard: ZeRO-2) and FSDP2 + CPUOffloadPolicy with fused CPU AdamW and
#   PEER_THREADS (default 16) threads per rank, from .peers/torch_gpt2.py via torchrun; its
#   offload ÷ no-offload ratio sits beside ours), ZP_EXTRA_SETS (more "--set k=v" words; with
#   "--set train.device=cpu ..." and a tiny model the plumbing runs on CPU ranks).
# Numbers: ms/step = median of the step times in metrics.jsonl (optimizer step included);
#   tok/s from it; host GiB = the ledger's cpu-tier bytes; peak GiB = the ledger's gpu-tier peak.
set -u -o pipefail
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-/tmp/zp-out}
WORK=${ZP_WORK:-/tmp/zp-offload-work}
BUILD=${ZP_BUILD:-$SRC/build-gpu}
STEPS=${STEPS:-12}
NG=${ZP_NGPU:-1}
STAGE=${ZP_STAGE:-$([ "$NG" -gt 1 ] && echo stage2 || echo none)}
EXTRA=${ZP_EXTRA_SETS:-}
THREADS=${THREADS:-$(nproc)}
LARGEST_CANDIDATES=${LARGEST_CANDIDATES:-60x4096x32 58x4096x32 56x4096x32 54x4096x32 52x4096x32 50x4096x32 48x4096x32 44x4096x32 40x4096x32}
LARGEST_RATIOS=${LARGEST_RATIOS:-1 0.95 0.9 0.85 0.8 0.75 0.7 0.65 0.6}
LMB=${LARGEST_MB:-1}
TO=${ZP_RUN_TIMEOUT:-300}
WHAT=("$@")
[ ${#WHAT[@]} -eq 0 ] && WHAT=(matrix)
mkdir -p "$OUT" "$WORK/runs"
: > "$OUT/offload_rows.jsonl"
note() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
FAILED=0

. "$SRC/bench/lib.sh"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  bench_build "$SRC" "$BUILD" "$OUT/offload_build.log" zp zp_cuda zp_stage1 zp_stage2 zp_stage3 zp_offload_cpu zp_offload_nvme || exit 1
fi

SHARD=$WORK/random_train.bin
python3 "$SRC/bench/random_shard.py" "$SHARD" $(((STEPS + 2) * 4 * 8 * 1024 * NG + 1)) || { echo "offload_bench: cannot write the shard"; exit 1; }

# run TAG STEPS SETS...: one zp train, one row in offload_rows.jsonl
run() {
  local tag=$1 steps=$2; shift 2
  local dir=$WORK/runs/$tag log=$OUT/offload_$tag.log t0 rc
  rm -rf "$dir"
  t0=$(date +%s)
  local -a cmd=("$BUILD/zp" train)
  [ "$NG" -gt 1 ] && cmd=("$BUILD/zp" launch -n "$NG")
  # shellcheck disable=SC2086  # EXTRA is a word list
  timeout -k 10 "$TO" "${cmd[@]}" "$SRC/examples/gpt2-1.5b.toml" --set "data.train=$SHARD" --set "train.steps=$steps" \
    --set "train.out_dir=$dir" --set train.save_final=false --set train.checkpoint_every=0 --set train.resume=never \
    --set train.log_every=1 --set train.val_every=0 --set train.lr_schedule=constant --set "offload.optimizer.threads=$THREADS" \
    "$@" $EXTRA > "$log" 2>&1
  rc=$?
  note "$tag: exit $rc after $(($(date +%s) - t0)) s"
  [ $rc -eq 0 ] || { tail -15 "$log"; FAILED=1; }
  python3 - "$dir/metrics.jsonl" "$tag" "$rc" "$(($(date +%s) - t0))" "$*" >> "$OUT/offload_rows.jsonl" << 'PYEOF'
import json, statistics, sys
path, tag, rc, wall, sets = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
try: rows = [json.loads(l) for l in open(path) if '"ms"' in l]
except OSError: rows = []
out = dict(tag=tag, rc=rc, wall_s=wall, sets=sets, steps=len(rows))
if rows:
    timed = [r for r in rows if r["step"] >= 5] or rows
    ms = statistics.median(r["ms"] for r in timed)
    tok = rows[-1]["tok_s"] * rows[-1]["ms"] / 1000.0
    t = rows[-1].get("tiers", {})
    out.update(ms=round(ms, 1), tok_s=round(tok / ms * 1000), mfu=round(statistics.median(r["mfu"] for r in timed), 4),
               peak_gpu_GiB=round(max(r.get("peak_gpu", 0) for r in rows) / 2**30, 2),
               host_GiB=round(sum(v for k, v in t.get("cpu", {}).items() if k.isupper()) / 2**30, 2),
               nvme_GiB=round(sum(v for k, v in t.get("nvme", {}).items() if k.isupper()) / 2**30, 2),
               nvme_io_GB=round((t.get("nvme", {}).get("io_read", 0) + t.get("nvme", {}).get("io_write", 0)) / 1e9, 2),
               loss=[rows[0]["loss"], rows[-1]["loss"]], step_ms=[round(r["ms"]) for r in rows])
print(json.dumps(out))
PYEOF
}

OFF=(--set offload.optimizer.plugin=offload_cpu)
# the NVMe tier's directory: NVME_DIR, else $ZP_WORK/nvme, else (when that is in memory) $SRC/.nvme-bench
nvme_dir() {
  ND=${NVME_DIR:-$WORK/nvme}
  [ "$(stat -f -c %T "$(dirname "$ND")" 2> /dev/null)" = tmpfs ] && [ -z "${NVME_DIR:-}" ] && ND=$SRC/.nvme-bench
  mkdir -p "$ND"
  note "nvme: files in $ND ($(stat -f -c %T "$ND"), $(df -h --output=avail "$ND" | tail -1 | tr -d ' ') free)"
}
DPU=("${OFF[@]}" --set offload.optimizer.delayed_update=true --set offload.optimizer.delayed_update_warmup=2)
for w in "${WHAT[@]}"; do
  case $w in
    matrix)
      for ga in 1 4; do
        s=$STEPS; [ $ga = 4 ] && s=$((STEPS / 2 + 2))
        run "ga${ga}_none" $s --set train.grad_accum=$ga --set zero.plugin=$STAGE
        run "ga${ga}_offload" $s --set train.grad_accum=$ga --set zero.plugin=$STAGE "${OFF[@]}"
        run "ga${ga}_offload_dpu" $s --set train.grad_accum=$ga --set zero.plugin=$STAGE "${DPU[@]}"
      done ;;
    stream)
      # gradients streamed to the host during the backward (offload.optimizer.stream_grads, the
      # default) against copied at the update, synchronous and delayed, grad_accum 1
      NS=(--set offload.optimizer.stream_grads=false)
      run "ga1_none" "$STEPS" --set zero.plugin=$STAGE
      run "ga1_offload" "$STEPS" --set zero.plugin=$STAGE "${OFF[@]}"
      run "ga1_offload_nostream" "$STEPS" --set zero.plugin=$STAGE "${OFF[@]}" "${NS[@]}"
      run "ga1_offload_dpu" "$STEPS" --set zero.plugin=$STAGE "${DPU[@]}"
      run "ga1_offload_dpu_nostream" "$STEPS" --set zero.plugin=$STAGE "${DPU[@]}" "${NS[@]}" ;;
    params)
      # parameter offload with stage 3: optimizer offload alone against optimizer + parameters
      # (PARAM shards in host memory, copied in for every gather), grad_accum 1
      run "ga1_s3_offload" "$STEPS" --set zero.plugin=stage3 "${OFF[@]}"
      run "ga1_s3_offload_params" "$STEPS" --set zero.plugin=stage3 "${OFF[@]}" --set offload.param.plugin=offload_cpu ;;
    nvme)
      # the NVMe tier at stage 3: no offload, optimizer state in files, + parameter shards in files
      nvme_dir
      NM=(${NVME_MODEL:---set model.n_layer=24 --set model.d_model=1024 --set model.n_head=16})
      NS=${NVME_STEPS:-6}
      NVO=(--set offload.optimizer.plugin=offload_nvme --set "offload.optimizer.path=$ND" --set offload.optimizer.queue_depth=64
        --set offload.optimizer.block_size=8388608)
      run "nv_none" "$NS" --set zero.plugin=stage3 "${NM[@]}"
      run "nv_s3_optim" "$NS" --set zero.plugin=stage3 "${NM[@]}" "${NVO[@]}"
      run "nv_s3_optim_params" "$NS" --set zero.plugin=stage3 "${NM[@]}" "${NVO[@]}" --set offload.param.plugin=offload_nvme \
        --set "offload.param.path=$ND" --set offload.param.queue_depth=64 --set offload.param.block_size=8388608 ;;
    largest|largest_nvme)
      # the largest candidate `zp plan` accepts, both on this host's memory (MemAvailable) and on
      # the GPU's (--device-gb from nvidia-smi), trying offload.optimizer.ratio from 1 (all of the
      # optimizer state on the host) down: a partial offload keeps the first groups' state on the
      # GPU when the host cannot hold all of it; then 2 real steps of it
      # host memory is the limit here: no extra host gradient buffer (stream_grads off)
      LOFF=("${OFF[@]}" --set offload.optimizer.stream_grads=false)
      RKEY=offload.optimizer.ratio RLIST=$LARGEST_RATIOS
      if [ "$w" = largest_nvme ]; then
        # CPU + NVMe: every group's optimizer state on the nvme tier, the first groups' share
        # (offload.optimizer.host_ratio) kept in host memory, the rest in the files: tried from
        # the most in RAM down, the first the plan accepts (disk and RAM both checked)
        nvme_dir
        LOFF=(--set offload.optimizer.plugin=offload_nvme --set "offload.optimizer.path=$ND" --set offload.optimizer.queue_depth=64
          --set offload.optimizer.block_size=8388608)
        RKEY=offload.optimizer.host_ratio RLIST=${LARGEST_HOST_RATIOS:-0.9 0.8 0.7 0.6 0.5 0.4 0.3 0.2 0.1 0}
      fi
      dgb=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1 | awk '{ printf "%.1f", $1 / 1024 }')
      dev=(); [ -n "$dgb" ] && dev=(--device-gb "$dgb")
      note "$w: device memory ${dgb:-unknown} GiB; $RKEY tried: $RLIST"
      pick= pr=
      for c in $LARGEST_CANDIDATES; do
        IFS=x read -r LL LD LH <<< "$c"
        for ra in $RLIST; do
          if "$BUILD/zp" plan "$SRC/examples/gpt2-1.5b.toml" --world "$NG" "${dev[@]}" --set model.n_layer=$LL --set model.d_model=$LD --set model.n_head=$LH \
            --set train.micro_batch=$LMB --set train.recompute=true --set zero.plugin=$STAGE "${LOFF[@]}" \
            --set "$RKEY=$ra" > "$OUT/offload_plan_$c.txt" 2>&1; then
            pick=$c pr=$ra; note "$w: zp plan accepts $c at $RKEY $ra: $(grep -m1 -o '[0-9,]* parameters' "$OUT/offload_plan_$c.txt")"; break 2
          fi
          note "$w: zp plan refuses $c at $RKEY $ra: $(grep -m1 '^zp: ' "$OUT/offload_plan_$c.txt" | cut -c1-200)"
        done
      done
      [ -n "$pick" ] || { echo "offload_bench: no candidate fits"; FAILED=1; continue; }
      grep -E "^  (embed|block|head|\.\.\.)|^  (category|PARAM|GRAD|MASTER|OPTIM|ACT|BUFFER|total)|device memory" "$OUT/offload_plan_$pick.txt"
      IFS=x read -r LL LD LH <<< "$pick"
      free -g | head -2
      run "${w}_L${LL}_d${LD}" 2 --set model.n_layer=$LL --set model.d_model=$LD --set model.n_head=$LH \
        --set train.micro_batch=$LMB --set train.recompute=true --set zero.plugin=$STAGE "${LOFF[@]}" --set "$RKEY=$pr"
      grep -B2 -A12 "memory at end" "$OUT/offload_${w}_L${LL}_d${LD}.log" | head -16 ;;
    *) echo "offload_bench: unknown part '$w' (matrix, stream, params, nvme, largest, largest_nvme)"; exit 2 ;;
  esac
done

# the PyTorch peer (ZP_NGPU > 1, PEER=1): FSDP2 ZeRO-2 and FSDP2 + CPU offload, fused CPU AdamW
: > "$OUT/offload_peer.jsonl"
if [ "${PEER:-0}" = 1 ] && [ "$NG" -gt 1 ]; then
  PD=${ZP_PEER_DIR:-$SRC/.peers}
  for mode in fsdp2_zero2 fsdp2_offload; do
    t0=$(date +%s)
    extra=()
    [ $mode = fsdp2_offload ] && extra=(--cpu_fused --steps 6 --warmup 2)
    OMP_NUM_THREADS=${PEER_THREADS:-16} timeout -k 10 "${PEER_TIMEOUT:-400}" torchrun --standalone --nproc_per_node "$NG" \
      "$PD/torch_gpt2.py" --mode $mode --model d48 --B 8 "${extra[@]}" >> "$OUT/offload_peer.jsonl" 2>> "$OUT/offload_peer_err.log" ||
      { note "peer $mode: exit $?"; FAILED=1; }
    note "peer $mode: $(($(date +%s) - t0)) s"
  done
fi

python3 - "$OUT/offload_rows.jsonl" "$OUT/offload_peer.jsonl" "$NG" "$STAGE" "$EXTRA" << 'PYEOF' | tee "$OUT/offload_summary.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ng, stage, extra = sys.argv[3], sys.argv[4], sys.argv[5]
print(f"examples/gpt2-1.5b.toml{' with ' + extra if extra else ''}, {ng} rank(s), zero.plugin {stage}\n")
base = {r["tag"].split("_")[0]: r for r in rows if r["tag"].endswith("_none") and "tok_s" in r}
print("| run | ms/step | tok/s | MFU | ÷ no offload (same grad_accum) | GPU peak GiB | host GiB | nvme GiB (GB moved) | loss first -> last | wall s | step ms |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    if "tok_s" not in r:
        print(f"| {r['tag']} | failed (exit {r['rc']}) | | | | | | | | {r['wall_s']} | |"); continue
    b = base.get(r["tag"].split("_")[0])
    ratio = f"{r['tok_s'] / b['tok_s']:.2f}" if b and not r["tag"].startswith("largest") else ""
    nvc = f"{r['nvme_GiB']} ({r['nvme_io_GB']})" if r.get("nvme_GiB") else ""
    print(f"| {r['tag']} | {r['ms']} | {r['tok_s']:,} | {r['mfu']:.1%} | {ratio} | {r['peak_gpu_GiB']} | {r['host_GiB']} | {nvc} | "
          f"{r['loss'][0]:.3f} -> {r['loss'][1]:.3f} | {r['wall_s']} | {' '.join(map(str, r['step_ms'][:14]))} |")
peer = {}
try:
    for l in open(sys.argv[2]):
        if l.strip().startswith("{"):
            p = json.loads(l)
            peer[p["mode"].split("+")[0]] = p
except (OSError, ValueError):
    pass
if peer:
    print("\n| PyTorch peer | ms/step | tok/s | ÷ its no-offload | zp's ÷ (synchronous / delayed update, grad_accum 1) |")
    print("|---|---|---|---|---|")
    nb, no = peer.get("fsdp2_zero2"), peer.get("fsdp2_offload")
    ours = {r["tag"]: r for r in rows if "tok_s" in r}
    zb = ours.get("ga1_none")
    zr = " / ".join(f"{ours[t]['tok_s'] / zb['tok_s']:.2f}" for t in ("ga1_offload", "ga1_offload_dpu") if zb and t in ours)
    for name, p in (("FSDP2 (ZeRO-2)", nb), ("FSDP2 + CPUOffloadPolicy, fused CPU AdamW", no)):
        if p:
            r = f"{p['tok_s'] / nb['tok_s']:.2f}" if nb and p is no else "1.00"
            print(f"| {name} | {p['ms_step']:.1f} | {p['tok_s']:,} | {r} | {zr if p is no else ''} |")
PYEOF
exit $FAILED
