#!/usr/bin/env bash
# plan_cuda.sh BUILD SRC SHARED: `zp plan` for train.device = "cuda" (a dry run on this machine,
# no GPU, no plugin loaded) against what the CUDA runs measured.
# Claims checked:
# - the plan's gpu-tier total equals the ledger peak measured on an H100 (bench/gpu_bench.sh,
#   2026-12-07, docs/perf.md): GPT-2 1.5B micro-batch 8: 43.0 GiB; 124M micro-batch 16: 8.2 GiB
#   (within the table's rounding, 0.05 GiB): the attention keeps the logsumexp only;
# - train.recompute_gelu takes exactly (L - 1) GELU outputs (B*T*4*d_model bf16) off ACT;
# - ZP_CUDA_ATTN=naive (the T x T path) adds L * B*NH*T*(2T - 4) bytes to ACT.
set -euo pipefail
build=$1; src=$2
zp=$build/zp
fail=0
gib() { awk -v c="$2" '$1 == c { v = $2; u = $3; if (u == "GiB") v *= 1024^3; else if (u == "MiB") v *= 1024^2; else if (u == "KiB") v *= 1024; printf "%.0f\n", v }' <<< "$1"; }
p15=$("$zp" plan "$src/examples/gpt2-1.5b.toml" 2>&1)
p124=$("$zp" plan "$src/examples/gpt2-124m.toml" 2>&1)
for spec in "1.5B:$(gib "$p15" total):43.0" "124M:$(gib "$p124" total):8.2"; do
  IFS=: read -r name bytes want <<< "$spec"
  if python3 -c "import sys; b = int(sys.argv[1]) / 2**30; sys.exit(0 if abs(b - float(sys.argv[2])) <= 0.05 else 1)" "$bytes" "$want"; then
    echo "ok   $name: plan total $(python3 -c "print(round($bytes / 2**30, 2))") GiB, measured ledger peak $want GiB"
  else echo "FAIL: $name: plan total $bytes B, measured $want GiB"; fail=1; fi
done
pg=$("$zp" plan "$src/examples/gpt2-1.5b.toml" --set train.recompute_gelu=true 2>&1)
d=$(( $(gib "$p15" ACT) - $(gib "$pg" ACT) ))
want=$((47 * 8 * 1024 * 6400 * 2))
# the table prints 2 decimals of GiB: compare within that rounding
if python3 -c "import sys; sys.exit(0 if abs(int(sys.argv[1]) - int(sys.argv[2])) <= 0.01 * 2**30 else 1)" "$d" "$want"; then
  echo "ok   recompute_gelu: ACT $((d / 1048576)) MiB less (47 x 8192 x 6400 bf16 = $((want / 1048576)) MiB)"
else echo "FAIL: recompute_gelu: ACT $d B less, want $want"; fail=1; fi
pn=$(ZP_CUDA_ATTN=naive "$zp" plan "$src/examples/gpt2-124m.toml" 2>&1)
d=$(( $(gib "$pn" ACT) - $(gib "$p124" ACT) ))
want=$((12 * 16 * 12 * 1024 * (2 * 1024 - 4)))
if python3 -c "import sys; sys.exit(0 if abs(int(sys.argv[1]) - int(sys.argv[2])) <= 0.01 * 2**30 else 1)" "$d" "$want"; then
  echo "ok   ZP_CUDA_ATTN=naive: ACT $((d / 1048576)) MiB more (the T x T probabilities)"
else echo "FAIL: naive attention: ACT $d B more, want $want"; fail=1; fi
grep -q "sized with the CUDA backend's attention storage" <<< "$p15" || { echo "FAIL: the plan's note"; fail=1; }
[ $fail = 0 ] && echo "plan_cuda: all passed"
exit $fail
