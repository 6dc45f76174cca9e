#!/usr/bin/env bash
# run_hf_interop.sh: Hugging Face interop check of `zp export` / `zp import` (tests/gpu/hf_interop.py)
# on a machine with Python, numpy and (for the real check) torch + transformers, e.g. the GPU
# machine (PyTorch 2.11, transformers 5.17 per ../shared/DEVICE.md). Everything runs on the CPU
# in fp32: zp's CPU backend against transformers' GPT2LMHeadModel, both directions, tolerance
# max |dlogit| <= 1e-4 x max(1, max |logit|) with equal argmax (see hf_interop.py).
#
# It builds nothing: it uses an existing zp binary, found as $ZP (a path), else the first of
# $ZP_BUILD/zp, build-cuda/zp, build/zp, build-gpu-check/zp under the repository root. No GPU,
# no plugins and no network are needed.
#
# Run (repository root, after the normal build):
#   bash tests/gpu/run_hf_interop.sh
# Env: OUT (logs and the summary, default /tmp/zp-out), ZP_WORK (scratch, default
#   /tmp/zp-hf-interop), PYTHON (default python3), HF_REFERENCE (auto | transformers | numpy;
#   auto uses transformers when it imports and says loudly when it falls back to GPT-2 written
#   out with plain torch ops, or float64 numpy without torch; transformers makes its absence a
#   failure).
# Output: $OUT/hf_interop.log (everything) and $OUT/hf_interop_summary.txt (the summary block);
# the summary is printed last. Exit status 0 iff every check passed.
set -u -o pipefail
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${OUT:-/tmp/zp-out}
WORK=${ZP_WORK:-/tmp/zp-hf-interop}
PY=${PYTHON:-python3}
REF=${HF_REFERENCE:-auto}
mkdir -p "$OUT" || { echo "run_hf_interop: cannot create $OUT" >&2; exit 2; }
rm -rf "$WORK" && mkdir -p "$WORK" || { echo "run_hf_interop: cannot create $WORK" >&2; exit 2; }
LOG=$OUT/hf_interop.log
: > "$LOG"

zp=${ZP:-}
if [ -z "$zp" ]; then
  for cand in ${ZP_BUILD:+"$ZP_BUILD/zp"} "$SRC/build-cuda/zp" "$SRC/build/zp" "$SRC/build-gpu-check/zp"; do
    if [ -x "$cand" ]; then zp=$cand; break; fi
  done
fi
if [ -z "$zp" ] || [ ! -x "$zp" ]; then
  echo "run_hf_interop: FAIL: no zp binary (set ZP=/path/to/zp or build first: cmake --build build)" | tee -a "$LOG"
  exit 2
fi
usage=$("$zp" ckpt logits 2>&1)
if ! grep -q "usage: zp ckpt logits" <<< "$usage"; then
  echo "run_hf_interop: FAIL: $zp has no 'zp ckpt logits' (an older build? rebuild it)" | tee -a "$LOG"
  exit 2
fi
{
  echo "zp: $zp ($("$zp" version 2>&1))"
  echo "python: $($PY --version 2>&1) at $(command -v "$PY")"
  $PY - <<'EOF'
import importlib
for m in ("numpy", "torch", "transformers", "safetensors"):
    try:
        mod = importlib.import_module(m)
        print(f"  {m} {getattr(mod, '__version__', '?')}")
    except Exception as e:  # noqa: BLE001
        print(f"  {m}: NOT AVAILABLE ({type(e).__name__}: {e})")
EOF
} 2>&1 | tee -a "$LOG"
if ! $PY -c "import numpy" 2>/dev/null; then
  echo "run_hf_interop: FAIL: $PY has no numpy (needed in every mode)" | tee -a "$LOG"
  exit 2
fi
if ! $PY -c "import torch, transformers" 2>/dev/null; then
  echo "run_hf_interop: NOTE: transformers does not import with $PY: the reference is GPT-2 written out with plain torch" \
       "ops (or numpy without torch), not transformers (set PYTHON=... to a python with transformers for the full check)" | tee -a "$LOG"
fi
# fp32 on the CPU, a handful of threads; deterministic on both sides
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-}
$PY "$SRC/tests/gpu/hf_interop.py" --zp "$zp" --work "$WORK" --reference "$REF" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
sed -n '/^HF INTEROP SUMMARY/,$p' "$LOG" > "$OUT/hf_interop_summary.txt"
cp "$WORK/zp.log" "$OUT/hf_interop_zp.log" 2>/dev/null
exit $rc
