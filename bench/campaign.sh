#!/usr/bin/env bash
# campaign.sh: the GPU measurements the open issues still need (one GPU and several), cut into parts that each
# fit one device call (under 10 minutes), so that a scarce 2-GPU (or larger) machine is used
# without planning on the spot. One part per call: build if needed, run, print the part's
# summary lines, and pack every log into $OUT/all.tgz (the device tool returns at most 8 files).
#
# Run (repo root, .deps and .peers carried):  bash bench/campaign.sh PART
#   bash bench/campaign.sh list          the parts, their issue, command and expected minutes
#   DRY=1 bash bench/campaign.sh PART    print the part's command only
# Env: OUT (default /tmp/zp-out), PART_TIMEOUT (s, default 570), and every variable of the
#   scripts a part runs (passed through).
# Parts (issue: what the note needs):
#   wg1         (8) the Hopper wgmma attention (docs/perf.md 29, session 13, never run): attn_sweep of
#               fast/wg x kv2/wg against the CPU reference with timings, then a 1.5B step A/B
#   checks1     (8) tests/gpu/run_gpu_checks.sh on one GPU: the whole GPU check at the current
#               defaults (session 10 changed two kernels' defaults without running it)
#   speed1      (8) bench/speed.sh 124m 1.5b with PEERS=compile: op checks, then zp beside
#               torch.compile on one GPU, then both models' op profiles
#   s11         (8) session 11's step changes on one GPU (docs/perf.md 26, 27; measured in session 12:
#               no gain), GPT-2 1.5B steps, each variant twice: the defaults; bias column sums after
#               the dW GEMM (the order before); the norm's sums started during the backward
#               (train.overlap_norm = true). Correctness: checks1
#   checks2     (5, 6, 8) tests/gpu/run_2gpu_checks.sh: NCCL, stages vs replicated, tp 2 and pp 2
#               parity against 1 GPU, a dead rank
#   async2      (8) ABI 1.9 started all-reduces on NCCL: GPT-2 1.5B, 2 GPUs, replicated (plain
#               DP), stage 1 and stage 2, ZP_CUDA_NCCL_ASYNC=0 then 1 (docs/perf.md 28; checks2 first)
#   speed124    (8) GPT-2 124M: zp none/stage1/stage2/stage3 on 2 GPUs and 1, PyTorch's matrix
#               (DDP, FSDP2 modes) beside it; the 2-GPU speed and memory targets
#   speed15zp   (8) GPT-2 1.5B: zp on 1 GPU and stage1/stage2/stage3 on 2 GPUs (no peers)
#   speed15peer (8) GPT-2 1.5B: PyTorch's 2-GPU matrix only (the ratios pair it with speed15zp:
#               same machine only; run both while it is held)
#   offload2    (5) GPT-2 1.5B, 2 GPUs, stage 2: no offload, offload_cpu synchronous and delayed,
#               grad_accum 1 and 4, beside FSDP2 + CPUOffloadPolicy
#   pipeline    (6) gpipe, 1f1b, interleaved, zb_h1 at micro-batches 4 and 8: tok/s and bubble,
#               measured vs predicted
#   scaling     (10) bench/scaling.sh 1.5b at every GPU count the machine has (1, 2, 4, 8)
#   largest2    (5) the largest GPT with stage 3 + CPU offload on 2 GPUs (2 x H200: >= 20B; the
#               candidates 80, 72, 64, 56, 48 layers x d 5120: 25.2B down to 15.1B)
#   largest2nvme (5) the same with CPU + NVMe: the optimizer state on offload_nvme with
#               offload.optimizer.host_ratio of it in RAM (2 x H200: >= 25B; 96, 88, 80, 72 layers x
#               d 5120: 30.2B down to 22.6B)
set -u -o pipefail
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-/tmp/zp-out}
PART=${1:-list}
LOGS=/tmp/zp-campaign/$PART
declare -A CMD MIN
CMD[checks1]="bash tests/gpu/run_gpu_checks.sh";                                       MIN[checks1]=4
CMD[speed1]="PEERS=compile PROFILE=after bash bench/speed.sh 124m 1.5b";                MIN[speed1]=8
CMD[wg1]=". bench/lib.sh && bench_build \$PWD \$PWD/build-gpu \$OUT/build.log zp zp_cuda check_cuda_ops && ZP_BUILD=build-gpu FWDS='fast wg' BWDS='kv2 wg' bash bench/attn_sweep.sh && ZP_BUILD=build-gpu MODELS=1.5b STEPS=20 bash bench/sweep.sh 'base||' 'wg|ZP_CUDA_FA2_FWD=wg,ZP_CUDA_FA2_BWD=wg|' 'wgf|ZP_CUDA_FA2_FWD=wg|' 'base2||' 'wg2|ZP_CUDA_FA2_FWD=wg,ZP_CUDA_FA2_BWD=wg|'"; MIN[wg1]=8
CMD[s11]=". bench/lib.sh && bench_build \$PWD \$PWD/build-gpu \$OUT/build.log zp zp_cuda check_cuda_ops && MODELS=1.5b bash bench/sweep.sh 'base||' 'after|ZP_CUDA_BIAS_SUMS=after|' 'norm|ZP_EXTRA_SETS=--set train.overlap_norm=true|' 'base2||' 'after2|ZP_CUDA_BIAS_SUMS=after|' 'norm2|ZP_EXTRA_SETS=--set train.overlap_norm=true|'"; MIN[s11]=6
CMD[checks2]="bash tests/gpu/run_2gpu_checks.sh";                                      MIN[checks2]=5
CMD[async2]="for a in 0 1; do ZP_CUDA_NCCL_ASYNC=\$a OUT=\$OUT/async\$a ZP_MULTI='none stage1 stage2' PEERS=none bash bench/gpu_bench.sh 1.5b; done"; MIN[async2]=9
CMD[speed124]="ZP_MULTI='none stage1 stage2 stage3' PEERS=auto bash bench/gpu_bench.sh 124m"; MIN[speed124]=8
CMD[speed15zp]="ZP_MULTI='stage1 stage2 stage3' PEERS=none bash bench/gpu_bench.sh 1.5b";    MIN[speed15zp]=9
CMD[speed15peer]="PEERS=auto bash bench/gpu_bench.sh 1.5b";                             MIN[speed15peer]=8
CMD[offload2]="ZP_NGPU=2 PEER=1 bash bench/offload_bench.sh matrix";                    MIN[offload2]=9
CMD[pipeline]="MICRO='4 8' bash bench/pipeline_bench.sh";                               MIN[pipeline]=8
CMD[scaling]="bash bench/scaling.sh 1.5b";                                              MIN[scaling]=9
CMD[largest2]="ZP_NGPU=2 ZP_STAGE=stage3 LARGEST_CANDIDATES='80x5120x40 72x5120x40 64x5120x40 56x5120x40 48x5120x40' bash bench/offload_bench.sh largest"; MIN[largest2]=9
CMD[largest2nvme]="ZP_NGPU=2 ZP_STAGE=stage3 LARGEST_CANDIDATES='96x5120x40 88x5120x40 80x5120x40 72x5120x40' bash bench/offload_bench.sh largest_nvme"; MIN[largest2nvme]=9
# 2-GPU order: checks2 first (parity for 5, 6, 8), then pipeline, which with checks2 is all that issue 6 still
# needs; then the speed parts (8), then offload (5), scaling (10)
ORDER="wg1 checks1 speed1 s11 checks2 pipeline async2 speed124 speed15zp speed15peer offload2 largest2 largest2nvme scaling"
if [ "$PART" = list ]; then
  for p in $ORDER; do printf '%-12s ~%2s min  %s\n' "$p" "${MIN[$p]}" "${CMD[$p]}"; done
  exit 0
fi
[ -n "${CMD[$PART]:-}" ] || { echo "campaign: unknown part '$PART' (bash bench/campaign.sh list)" >&2; exit 2; }
if [ "${DRY:-0}" = 1 ]; then echo "${CMD[$PART]}"; exit 0; fi
NG=$(nvidia-smi -L 2> /dev/null | grep -c '^GPU')
case $PART in checks2|async2|speed124|speed15*|offload2|pipeline|largest2*)
  [ "$NG" -ge 2 ] || { echo "campaign: part $PART needs 2 GPUs; this machine shows $NG"; exit 3; } ;;
esac
mkdir -p "$LOGS" "$OUT"
T0=$(date +%s)
echo "campaign $PART on $NG GPU(s): $(nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null | sort | uniq -c | tr -s ' ')"
(cd "$SRC" && OUT=$LOGS timeout "${PART_TIMEOUT:-570}" bash -c "${CMD[$PART]}") > "$LOGS/part.log" 2>&1
rc=$?
echo "campaign $PART: exit $rc after $(($(date +%s) - T0)) s (124: the part's timeout)"
# the summaries the scripts print: check summaries and markdown tables
grep -hE '^(  (PASS|FAIL|SKIP) |[0-9]-GPU CHECK|GPU CHECK|ALL |SOME |\|)' "$LOGS/part.log" | head -80
for f in "$LOGS"/*.md; do [ -f "$f" ] && { echo "== $(basename "$f")"; head -40 "$f"; }; done
tar czf "$OUT/all.tgz" -C "$LOGS" . 2> /dev/null
exit $rc
