#!/usr/bin/env bash
# plan_cuda.sh BUILD SRC SHARED: `zp plan` for train.device = "cuda" (a dry run on this machine,
# no GPU, no plugin loaded) against what the CUDA runs measured.
# Claims checked:
# - the plan's gpu-tier total equals the ledger peak measured on an H100 (bench/gpu_bench.sh,
#   2026-12-07, docs/perf.md): GPT-2 1.5B micro-batch 8: 43.0 GiB; 124M micro-batch 16: 8.2 GiB
#   (within the table's rounding, 0.05 GiB): the attention keeps the logsumexp only;
# - train.recompute_gelu takes exactly (L - 1) GELU outputs (B*T*4*d_model bf16) off ACT;
# - ZP_CUDA_ATTN=naive (the T x T path) adds L * B*NH*T*(2T - 4) bytes to ACT;
# - --device-gb refuses a plan above the GPU's memory with the numbers (pp 1 and pp 2);
# - offload.optimizer.ratio 0.5 splits MASTER/OPTIM at the group boundary the rule gives.
set -euo pipefail
build=$1; src=$2
zp=$build/zp
fail=0
gib() { awk -v c="$2" '$1 == c { v = $2; u = $3; if (u == "GiB") v *= 1024^3; else if (u == "MiB") v *= 1024^2; else if (u == "KiB") v *= 1024; printf "%.0f\n", v }' <<< "$1"; }
# delta WHAT CAT BASE OTHER WANT: plan OTHER's CAT row minus plan BASE's is WANT bytes, within the
# table's rounding (2 decimals of GiB on each row)
delta() {
  local d=$(( $(gib "$4" "$2") - $(gib "$3" "$2") ))
  if python3 -c "import sys; sys.exit(0 if abs(int(sys.argv[1]) - int(sys.argv[2])) <= 0.01 * 2**30 else 1)" "$d" "$5"; then
    echo "ok   $1: $2 $((d / 1048576)) MiB (want $(($5 / 1048576)) MiB)"
  else echo "FAIL: $1: $2 changes by $d B, want $5"; fail=1; fi
}
p15=$("$zp" plan "$src/examples/gpt2-1.5b.toml" --set train.recompute_gelu_blocks=0 2>&1) # the measured baseline
p124=$("$zp" plan "$src/examples/gpt2-124m.toml" 2>&1)
for spec in "1.5B:$(gib "$p15" total):43.0" "124M:$(gib "$p124" total):8.2"; do
  IFS=: read -r name bytes want <<< "$spec"
  if python3 -c "import sys; b = int(sys.argv[1]) / 2**30; sys.exit(0 if abs(b - float(sys.argv[2])) <= 0.05 else 1)" "$bytes" "$want"; then
    echo "ok   $name: plan total $(python3 -c "print(round($bytes / 2**30, 2))") GiB, measured ledger peak $want GiB"
  else echo "FAIL: $name: plan total $bytes B, measured $want GiB"; fail=1; fi
done
pg=$("$zp" plan "$src/examples/gpt2-1.5b.toml" --set train.recompute_gelu_blocks=0 --set train.recompute_gelu=true 2>&1)
delta "recompute_gelu (47 x 8192 x 6400 bf16 less)" ACT "$p15" "$pg" $((-47 * 8 * 1024 * 6400 * 2))
# ZP_CUDA_FA2_BWD=fused: the attention backward's workspace (fp32 dQ partials + semaphores, one
# buffer for all layers) in BUFFER, as the plugin sizes it
pf=$(ZP_CUDA_FA2_BWD=fused "$zp" plan "$src/examples/gpt2-1.5b.toml" --set train.recompute_gelu_blocks=0 2>&1)
delta "ZP_CUDA_FA2_BWD=fused (the workspace)" BUFFER "$p15" "$pf" $((8 * 25 * 32 * 32 * 64 * 4 + 8 * 25 * 32 * 4 * 4))
# ZP_CUDA_FA2_BWD=atomic (diagnostic): the same workspace as fused
pa=$(ZP_CUDA_FA2_BWD=atomic "$zp" plan "$src/examples/gpt2-1.5b.toml" --set train.recompute_gelu_blocks=0 2>&1)
if [ "$(gib "$pa" BUFFER)" = "$(gib "$pf" BUFFER)" ]; then
  echo "ok   ZP_CUDA_FA2_BWD=atomic: BUFFER as fused"
else echo "FAIL: atomic workspace: BUFFER $(gib "$pa" BUFFER) B, fused $(gib "$pf" BUFFER) B"; fail=1; fi
pb=$("$zp" plan "$src/examples/gpt2-1.5b.toml" --set train.recompute_gelu_blocks=6 2>&1)
delta "recompute_gelu_blocks=6 (5 x 8192 x 6400 bf16 less)" ACT "$p15" "$pb" $((-5 * 8 * 1024 * 6400 * 2))
pn=$(ZP_CUDA_ATTN=naive "$zp" plan "$src/examples/gpt2-124m.toml" 2>&1)
delta "ZP_CUDA_ATTN=naive (the T x T probabilities)" ACT "$p124" "$pn" $((12 * 16 * 12 * 1024 * (2 * 1024 - 4)))
grep -q "sized with the CUDA backend's attention storage" <<< "$p15" || { echo "FAIL: the plan's note"; fail=1; }
# --device-gb: the plan refuses what the GPU cannot hold (ledger peak + 0.75 GiB context), with
# the numbers, and accepts what fits; so does a pipeline plan (its largest stage)
if out=$("$zp" plan "$src/examples/gpt2-1.5b.toml" --set train.recompute_gelu_blocks=0 --device-gb 40 2>&1); then
  echo "FAIL: --device-gb 40 accepted a 43 GiB plan"; fail=1
elif grep -q "needs 43.79 GiB of device memory per GPU (ledger peak 43.04 GiB + 0.75 GiB.*more than --device-gb 40" <<< "$out"; then
  echo "ok   --device-gb 40 refused: $(grep -o "needs 43.79 GiB[^:]*" <<< "$out")"
else echo "FAIL: --device-gb message: $out"; fail=1; fi
"$zp" plan "$src/examples/gpt2-1.5b.toml" --set train.recompute_gelu_blocks=0 --device-gb 80 2>&1 | grep -q "device memory: 43.79 GiB of --device-gb 80" &&
  echo "ok   --device-gb 80 accepted" || { echo "FAIL: --device-gb 80"; fail=1; }
if out=$("$zp" plan "$src/examples/gpt2-1.5b.toml" --world 2 --set parallel.pp=2 --device-gb 20 2>&1); then
  echo "FAIL: pp 2 plan with --device-gb 20 accepted"; fail=1
elif grep -q "of device memory per GPU (ledger peak .* more than --device-gb 20" <<< "$out"; then
  echo "ok   pp 2: --device-gb 20 refused (largest stage): $(grep -o 'needs [0-9.]* GiB' <<< "$out")"
else echo "FAIL: pp 2 --device-gb 20 message: $(tail -2 <<< "$out")"; fail=1; fi
# partial offload: offload.optimizer.ratio 0.5 keeps the first groups' MASTER/OPTIM on the
# device (the placement table shows the boundary) and moves at least half to the host
pr=$("$zp" plan "$src/examples/gpt2-1.5b.toml" --set offload.optimizer.plugin=offload_cpu --set offload.optimizer.ratio=0.5 2>&1)
if grep -q "block.21 .* R/gpu *R/gpu *$" <<< "$pr" && grep -q "block.22 .* R/cpu *R/cpu *$" <<< "$pr"; then
  python3 - "$(gib "$pr" OPTIM)" "$(awk '$1 == "OPTIM" { print $4, $5 }' <<< "$pr")" <<'PY' || fail=1
import sys
dev = int(sys.argv[1]); v, u = sys.argv[2].split()
host = float(v) * {"GiB": 2**30, "MiB": 2**20}[u]
share = host / (host + dev)
assert 0.49 <= share < 0.55, f"host share {share:.3f}"  # the table rounds to 0.01 GiB
print(f"ok   ratio 0.5: block.0-21 on the device, block.22+ on the host; host share of OPTIM {share:.3f}")
PY
else echo "FAIL: ratio 0.5 placement: $(grep -E 'block.2[12] ' <<< "$pr")"; fail=1; fi
[ $fail = 0 ] && echo "plan_cuda: all passed"
exit $fail
