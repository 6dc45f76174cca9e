#!/usr/bin/env bash
# run_gpu_checks.sh: the one entry point for correctness on a GPU machine. In order:
#   1. build (CMake + Ninja, Release, ZP_TEST_POISON=ON) into build-gpu-check: zp, the CUDA
#      plugin, check_cuda_ops, check_model;
#   2. check_cuda_ops: every op of the CUDA backend against the CPU backend;
#   3. check_model: the whole GPT-2 (L4 C256 T256 V50257, B4), CUDA bf16 vs CPU fp32 (loss,
#      logits, every gradient) + its reference dump;
#   4. zp train, 10 AdamW steps (lr 1e-3 constant, wd 0.1, no clipping, no shuffle) of the same
#      model on a structured token shard, on cuda (bf16) and on cpu (fp32);
#   5. torch_parity.py: PyTorch on the same weights/tokens; the measured PyTorch bf16-vs-fp32
#      error sets the bf16 tolerances; compares the gradients of step 3 and the losses of step 4;
# then prints "GPU CHECK SUMMARY", one line per check with its numbers. A failing check does not
# stop the others (except a failed build); the exit status is non-zero if anything failed.
#
# Run (repo root, .deps carried, ~3-5 minutes on one H100/H200):
#   bash tests/gpu/run_gpu_checks.sh
# Env: OUT (logs, default /tmp/zp-out), ZP_WORK (bulk data: reference dump, shard, runs;
#   default /tmp/zp-gpu-work), ZP_BUILD (default build-gpu-check), SKIP_BUILD=1,
#   CHECK_CUDA_OPS_ARGS (e.g. "--quick --no-time"), ZP_THREADS (CPU threads for the CPU side),
#   SKIP_CUDA_OPS=1; and, to exercise this script without a GPU (tested so on the dev machine):
#   ZP_CHECK_DEVICES=cpu,cpu:bf16 ZP_TRAIN_RUNS="cpu:bf16 cpu:fp32" SKIP_CUDA_OPS=1.
# Only 8 small files go to $OUT (01_build.log ... 06_torch_parity.log, torch_parity.json,
# summary.txt): the device tool returns at most 8 files of 16 MiB, so the 190 MiB reference
# dump that check_model would write to $OUT/model_ref goes to $ZP_WORK/model_ref instead.
set -u -o pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${OUT:-/tmp/zp-out}
WORK=${ZP_WORK:-/tmp/zp-gpu-work}
BUILD=${ZP_BUILD:-$SRC/build-gpu-check}
CHECK_CUDA_OPS_ARGS=${CHECK_CUDA_OPS_ARGS:-}
CHECK_DEVICES=${ZP_CHECK_DEVICES:-cpu,cuda}           # check_model --devices (reference,test)
TRAIN_RUNS=${ZP_TRAIN_RUNS:-cuda:bf16 cpu:fp32}      # zp train runs compared with PyTorch
mkdir -p "$OUT" "$WORK" || { echo "run_gpu_checks: cannot create $OUT or $WORK" >&2; exit 2; }
rm -rf "$WORK/model_ref" "$WORK/parity"
mkdir -p "$WORK/parity"
[ -n "${ZP_THREADS:-}" ] && export OMP_NUM_THREADS=$ZP_THREADS

SUMMARY=()
METRICS=()
FAILED=0
T_START=$(date +%s)

note() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
add() { # add STATUS NAME DETAILS
  SUMMARY+=("$(printf '%-7s %-18s %s' "$1" "$2" "$3")")
  [ "$1" = PASS ] || [ "$1" = SKIP ] || FAILED=1
}
# run_step LOG TIMEOUT CMD...: runs CMD with a deadline, output to $OUT/LOG; sets RC and SECS
run_step() {
  local name=$1 log=$OUT/$1 to=$2
  shift 2
  local t0
  t0=$(date +%s.%N)
  { echo "\$ $*"; echo; } > "$log"
  timeout -k 10 "$to" "$@" >> "$log" 2>&1
  RC=$?
  SECS=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  if [ "$RC" -eq 124 ] || [ "$RC" -eq 137 ]; then echo "*** timed out after ${to} s" >> "$log"; fi
  if [ "$RC" -ne 0 ]; then
    note "$name: exit $RC after ${SECS} s; last lines:"
    tail -n 25 "$log" | sed 's/^/    /'
  else
    note "$name: ok (${SECS} s)"
  fi
}
lastline() { # the last non-blank line of a log, for a failure's summary
  grep -v '^[[:space:]]*$' "$OUT/$1" | tail -n 1 | cut -c1-160
}
status_of() { # status_of RC -> PASS / FAIL / TIMEOUT
  case $1 in 0) echo PASS ;; 124 | 137) echo TIMEOUT ;; *) echo FAIL ;; esac
}

# ---- machine facts ----
{
  echo "run_gpu_checks on $(hostname) at $(date -u +%Y-%m-%dT%H:%M:%SZ), source $SRC ($(git -C "$SRC" rev-parse --short HEAD 2>/dev/null || echo '?'))"
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
  else
    echo "gpu: nvidia-smi not found"
  fi
  echo "nvcc: $(nvcc --version 2>/dev/null | tail -1 || echo 'not on PATH')"
  echo "python: $(python3 -c 'import torch, numpy; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "numpy", numpy.__version__)' 2>&1 | tail -1)"
  echo "cpu: $(nproc) cores; OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}; NCCL_NVLS_ENABLE=$NCCL_NVLS_ENABLE"
} > "$OUT/summary.txt"
cat "$OUT/summary.txt"

# ---- 1. build ----
if [ "${SKIP_BUILD:-0}" = 1 ]; then
  note "build: skipped (SKIP_BUILD=1), using $BUILD"
  add PASS build "skipped, using $BUILD"
else
  if [ ! -d "$SRC/.deps" ] && ! pkg-config --exists lua5.4 jansson 2>/dev/null; then
    note "build: no .deps/ and no Lua/jansson packages: run scripts/stage_deps.sh on the dev machine and carry .deps"
  fi
  command -v nvcc > /dev/null || [ -x /usr/local/cuda/bin/nvcc ] || note "build: nvcc not on PATH (looking in /usr/local/cuda/bin too)"
  export PATH=$PATH:/usr/local/cuda/bin
  # shellcheck disable=SC2016  # $1..$3 expand inside the child shell
  run_step 01_build.log 480 bash -c 'cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release -DZP_TEST_POISON=ON \
      -DCMAKE_CUDA_ARCHITECTURES="$3" && ninja -C "$2" zp zp_cuda zp_offload_cpu zp_offload_nvme zp_stage3 check_cuda_ops check_model' _ "$SRC" "$BUILD" "${CUDA_ARCH:-90}"
  if [ "$RC" -ne 0 ]; then
    add "$(status_of $RC)" build "exit $RC after ${SECS} s: see $OUT/01_build.log (no CUDA plugin target means nvcc was not found)"
  else
    add PASS build "${SECS} s, $(grep -c 'warning:' "$OUT/01_build.log") compiler warnings -> $BUILD"
  fi
fi
if [ ! -x "$BUILD/check_model" ] || [ ! -x "$BUILD/zp" ] || [ ! -f "$BUILD/plugins/zp_cuda.so" ]; then
  add FAIL prerequisites "missing $BUILD/{zp,check_model,plugins/zp_cuda.so}: nothing else can run"
  SKIP_REST=1
else
  SKIP_REST=0
fi

if [ "$SKIP_REST" = 0 ]; then
  # ---- 2. check_cuda_ops ----
  if [ "${SKIP_CUDA_OPS:-0}" = 1 ]; then
    add SKIP check_cuda_ops "skipped (SKIP_CUDA_OPS=1)"
  else
    # shellcheck disable=SC2086  # CHECK_CUDA_OPS_ARGS is a word list
    run_step 02_check_cuda_ops.log 300 "$BUILD/check_cuda_ops" "$BUILD/plugins/zp_cuda.so" $CHECK_CUDA_OPS_ARGS
    counts=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$OUT/02_check_cuda_ops.log" | tail -1)
    fails=$(grep -E '  FAIL( |$)' "$OUT/02_check_cuda_ops.log" | awk '{print $1}' | head -4 | tr '\n' ' ')
    if [ "$RC" -eq 77 ]; then
      add FAIL check_cuda_ops "no CUDA device visible"
    else
      add "$(status_of $RC)" check_cuda_ops "${counts:-no result line, exit $RC: $(lastline 02_check_cuda_ops.log)}${fails:+ | failed: $fails}, ${SECS} s"
    fi
  fi

  # ---- 2b. the Hopper wgmma attention (ZP_CUDA_FA2_FWD=wg, ZP_CUDA_FA2_BWD=wg): its own
  # check_cuda_ops run, the attention checks of the fa2 instances against the CPU reference and
  # against the previous kernels; on a device other than compute capability 9.0 the variant
  # falls back to fast / kv2, so the row is skipped there ----
  cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2> /dev/null | head -1)
  if [ "${SKIP_CUDA_OPS:-0}" = 1 ] || [ "$cc" != 9.0 ]; then
    add SKIP check_cuda_ops_wg "skipped (SKIP_CUDA_OPS=1 or compute capability '${cc}' is not 9.0)"
  else
    run_step 02b_check_cuda_ops_wg.log 300 env ZP_CUDA_FA2_FWD=wg ZP_CUDA_FA2_BWD=wg \
      "$BUILD/check_cuda_ops" "$BUILD/plugins/zp_cuda.so" --filter attention
    counts=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$OUT/02b_check_cuda_ops_wg.log" | tail -1)
    fails=$(grep -E '  FAIL( |$)' "$OUT/02b_check_cuda_ops_wg.log" | awk '{print $1}' | head -4 | tr '\n' ' ')
    add "$(status_of $RC)" check_cuda_ops_wg "${counts:-no result line, exit $RC: $(lastline 02b_check_cuda_ops_wg.log)}${fails:+ | failed: $fails}, ${SECS} s"
  fi

  # ---- 3. check_model ----
  run_step 03_check_model.log 300 "$BUILD/check_model" --devices "$CHECK_DEVICES" --ref-dir "$WORK/model_ref"
  line=$(grep -E '^CHECK_MODEL ' "$OUT/03_check_model.log" | tail -1)
  fails=$(grep -E ' FAIL$' "$OUT/03_check_model.log" | awk '{print $1" "$2}' | head -3 | tr '\n' ';')
  [ -n "$line" ] || line="exit $RC: $(lastline 03_check_model.log)"
  add "$(status_of $RC)" check_model "${line#CHECK_MODEL }${fails:+ | failed: $fails}, ${SECS} s"

  # ---- 4. zp train, 10 steps, cuda bf16 and cpu fp32 ----
  if python3 "$SRC/tests/gpu/torch_parity.py" --make-shard "$WORK/parity/train.bin" --shard-tokens 65536 > /dev/null 2>"$WORK/parity/shard.err"; then
    cat > "$WORK/parity/train.toml" << EOF
# written by tests/gpu/run_gpu_checks.sh: check_model's model (same init) trained 10 steps
[model]
n_layer = 4
n_head = 4
d_model = 256
seq_len = 256
vocab_size = 50257
vocab_pad = 128
[data]
train = "$WORK/parity/train.bin"
shuffle = false
[train]
micro_batch = 4
grad_accum = 1
steps = 10
lr = 1e-3
lr_schedule = "constant"
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
eps = 1e-8
grad_clip = 0.0
log_every = 1
metrics = true
save_final = false
checkpoint_every = 0
resume = "never"
EOF
    n=4
    METRICS=()
    for run in $TRAIN_RUNS; do
      IFS=: read -r dev prec <<< "$run"
      lab=${dev}_${prec}
      run_step "0${n}_zp_train_${lab}.log" 240 "$BUILD/zp" train "$WORK/parity/train.toml" --set "train.device=$dev" \
        --set "train.precision=$prec" --set "train.out_dir=$WORK/parity/run_$lab"
      s=$(grep -E '^summary:' "$OUT/0${n}_zp_train_${lab}.log" | tail -1)
      [ -n "$s" ] || s="exit $RC: $(lastline "0${n}_zp_train_${lab}.log")"
      add "$(status_of $RC)" "zp_train_$lab" "${s#summary: } (${SECS} s)"
      METRICS+=(--train-metrics "$lab=$WORK/parity/run_$lab/metrics.jsonl")
      n=$((n + 1))
    done
  else
    add FAIL zp_train "cannot write the shard: $(tail -1 "$WORK/parity/shard.err")"
  fi

  # ---- 5b. recompute and the host-RAM tier on the CUDA backend (the same 10-step run) ----
  # train.overlap_optimizer = false (the AdamW on the compute stream, gradients zeroed at the
  # step's start) must give the default run's losses (AdamW on the side stream, each group's
  # forward waiting for its update) bit for bit: a missing wait would race.
  # train.overlap_norm = true (the norm's sums of squares started on the side stream during the
  # backward, ABI 1.9, instead of at the step) must give the same losses and norms bit for bit.
  # ZP_CUDA_BIAS_SUMS=after (bias column sums after the dW GEMM, the order before ABI 1.9) must
  # give the same losses bit for bit.
  # train.recompute must give the no-recompute losses (same kernels re-run: bitwise unless a
  # kernel is non-deterministic); offload_cpu (pinned staging, CPU AdamW) must track the CUDA
  # AdamW run (rounding differs: rel 2e-3 over 10 steps), also with stage3; the delayed update
  # (warm-up 3) must equal it through step 4 and then train (loss falls) with the transfers counted;
  # with offload.optimizer.stream_grads = false (gradients copied at the update instead of on the
  # copy stream during the backward) both must give the streamed runs' losses bit for bit; with
  # parameter offload (stage 3: PARAM shards in host memory, copied in for each gather) the
  # optimizer-only stage-3 offload run's losses bit for bit, and no PARAM bytes on the device.
  # The same two for the NVMe tier (files in NVDIR: $WORK unless that is in memory): stage 3 with
  # the optimizer state in O_DIRECT files tracks the CUDA AdamW; adding parameter offload to NVMe
  # (ABI 1.6 fetch_state per gather) gives its losses bit for bit, no PARAM on the device.
  NVDIR=$WORK/nvme
  [ "$(stat -f -c %T "$WORK" 2> /dev/null)" = tmpfs ] && NVDIR=$SRC/.nvme-check
  mkdir -p "$NVDIR"
  NVO="offload.optimizer.plugin=offload_nvme offload.optimizer.path=$NVDIR zero.plugin=stage3"
  if [ -f "$WORK/parity/run_cuda_bf16/metrics.jsonl" ]; then
    n=10
    for v in "recompute:train.recompute=true" "no_overlap:train.overlap_optimizer=false" \
      "no_grad_overwrite:train.grad_overwrite=false" "offload_cpu:offload.optimizer.plugin=offload_cpu" \
      "offload_cpu_stage3:offload.optimizer.plugin=offload_cpu zero.plugin=stage3" \
      "offload_dpu:offload.optimizer.plugin=offload_cpu offload.optimizer.delayed_update=true offload.optimizer.delayed_update_warmup=3" \
      "offload_cpu_nostream:offload.optimizer.plugin=offload_cpu offload.optimizer.stream_grads=false" \
      "offload_dpu_nostream:offload.optimizer.plugin=offload_cpu offload.optimizer.delayed_update=true offload.optimizer.delayed_update_warmup=3 offload.optimizer.stream_grads=false" \
      "offload_cpu_stage3_params:offload.optimizer.plugin=offload_cpu offload.param.plugin=offload_cpu zero.plugin=stage3" \
      "offload_nvme_stage3:$NVO" "offload_nvme_stage3_params:$NVO offload.param.plugin=offload_nvme offload.param.path=$NVDIR" \
      "bias_after:ZP_CUDA_BIAS_SUMS=after" "overlap_norm:train.overlap_norm=true" \
      "attn_wg:ZP_CUDA_FA2_FWD=wg ZP_CUDA_FA2_BWD=wg"; do
      lab=${v%%:*}
      sets=()
      envs=() # ZP_CUDA_* switches go to the environment, the rest are --set
      for kv in ${v#*:}; do case $kv in ZP_CUDA_*) envs+=("$kv") ;; *) sets+=(--set "$kv") ;; esac; done
      run_step "${n}_zp_train_${lab}.log" 240 env "${envs[@]}" "$BUILD/zp" train "$WORK/parity/train.toml" --set train.device=cuda \
        --set train.precision=bf16 --set "train.out_dir=$WORK/parity/run_$lab" "${sets[@]}"
      if [ "$RC" -ne 0 ]; then add "$(status_of $RC)" "cuda_$lab" "exit $RC: $(lastline "${n}_zp_train_${lab}.log")"; n=$((n + 1)); continue; fi
      # *_nostream (gradients copied at the update, not streamed during the backward, ABI 1.5):
      # the same arithmetic as the streamed run, so the same losses bit for bit
      refrun=$WORK/parity/run_cuda_bf16
      case $lab in *_nostream) refrun=$WORK/parity/run_${lab%_nostream} ;; *_params) refrun=$WORK/parity/run_${lab%_params} ;; esac
      verdict=$(python3 - "$refrun/metrics.jsonl" "$WORK/parity/run_$lab/metrics.jsonl" "$lab" << 'PYEOF'
import json, sys
def rows(p): return [json.loads(l) for l in open(p) if '"loss"' in l]
ref, run, lab = rows(sys.argv[1]), rows(sys.argv[2]), sys.argv[3]
rel = [abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(ref, run)]
cpu = run[-1].get("tiers", {}).get("cpu", {})
nv = run[-1].get("tiers", {}).get("nvme", {})
io = f"; cpu tier MASTER {cpu.get('MASTER', 0)} OPTIM {cpu.get('OPTIM', 0)} B, {cpu.get('io_write', 0)} B in, {cpu.get('io_read', 0)} B out" if cpu else ""
ok = len(run) == len(ref)
if lab.endswith("_params"):
    gp = run[-1].get("tiers", {}).get("gpu", {})
    tier, tp = ("nvme", nv) if "nvme" in lab else ("host", cpu)
    ok = ok and max(rel) == 0 and tp.get("PARAM", 0) > 0 and gp.get("PARAM", 1) == 0
    what = f"max rel loss diff vs optimizer-only offload {max(rel):.2e} (bitwise wanted); PARAM {tier} {tp.get('PARAM', 0)} B, device {gp.get('PARAM')} B"
    if nv: what += f"; nvme {nv.get('io_read', 0)} B read / {nv.get('io_write', 0)} B written"
elif lab.endswith("_nostream"): ok = ok and max(rel) == 0 and cpu.get("io_write", 0) > 0; what = f"max rel loss diff vs the streamed run {max(rel):.2e} (bitwise wanted)"
elif lab == "no_overlap": ok = ok and max(rel) == 0; what = f"max rel loss diff vs the side-stream AdamW (default) {max(rel):.2e} (bitwise wanted)"
elif lab == "no_grad_overwrite": ok = ok and max(rel) == 0; what = f"max rel loss diff vs gradients written by the first backward (default) {max(rel):.2e} (bitwise wanted)"
elif lab == "overlap_norm":
    gnd = max(abs(a.get("grad_norm", 0) - b.get("grad_norm", 1)) for a, b in zip(ref, run))
    ok = ok and max(rel) == 0 and gnd == 0
    what = f"max rel loss diff vs the norm's sums at the step (default) {max(rel):.2e}, grad_norm diff {gnd:.2e} (both 0 wanted)"
elif lab == "bias_after": ok = ok and max(rel) == 0; what = f"max rel loss diff vs the bias column sums before the dW GEMM (default) {max(rel):.2e} (bitwise wanted)"
elif lab == "attn_wg": ok = ok and max(rel) <= 2e-3; what = f"max rel loss diff vs the mma.sync attention (default) {max(rel):.2e}"
elif lab == "recompute": ok = ok and max(rel) <= 1e-3; what = f"max rel loss diff vs no recompute {max(rel):.2e} ({'bitwise' if max(rel) == 0 else 'not bitwise'})"
elif lab == "offload_dpu":
    ok = ok and max(rel[:4]) <= 2e-3 and run[-1]["loss"] < run[0]["loss"] - 0.5 and cpu.get("io_write", 0) > 0
    what = f"steps 1-4 max rel diff {max(rel[:4]):.2e}; loss {run[0]['loss']:.4f} -> {run[-1]['loss']:.4f} (synchronous: {ref[-1]['loss']:.4f})"
else: ok = ok and max(rel) <= 2e-3 and cpu.get("io_write", 0) > 0; what = f"max rel loss diff vs CUDA AdamW {max(rel):.2e}"
print(("PASS " if ok else "FAIL ") + what + io)
PYEOF
)
      add "${verdict%% *}" "cuda_$lab" "${verdict#* } (${SECS} s)"
      n=$((n + 1))
    done
  fi

  # ---- 5. torch_parity ----
  if python3 -c 'import torch, numpy' > /dev/null 2>&1; then
    run_step 06_torch_parity.log 360 python3 "$SRC/tests/gpu/torch_parity.py" --ref "$WORK/model_ref" --device auto \
      --train-shard "$WORK/parity/train.bin" \
      "${METRICS[@]}" \
      --json "$OUT/torch_parity.json"
    verdict=$(grep -E '^TORCH_PARITY ' "$OUT/06_torch_parity.log" | tail -1)
    [ -n "$verdict" ] || verdict="exit $RC: $(lastline 06_torch_parity.log)"
    add "$(status_of $RC)" torch_parity "${verdict#TORCH_PARITY }, ${SECS} s"
    while IFS= read -r l; do SUMMARY+=("                           $l"); done < <(sed -n '/^TORCH PARITY SUMMARY/,/^TORCH_PARITY /p' "$OUT/06_torch_parity.log" | grep -E '^  \([abcd]\)' | sed 's/^  //')
  else
    add FAIL torch_parity "python3 cannot import torch and numpy"
  fi
fi

# ---- summary ----
T_ALL=$(($(date +%s) - T_START))
{
  echo
  echo "GPU CHECK SUMMARY ($T_ALL s; logs in $OUT, data in $WORK)"
  for l in "${SUMMARY[@]}"; do echo "  $l"; done
  if [ "$FAILED" = 0 ]; then echo "ALL GPU CHECKS PASSED"; else echo "SOME GPU CHECKS FAILED"; fi
} | tee -a "$OUT/summary.txt"
exit "$FAILED"
