#!/usr/bin/env bash
# gpu_bench.sh: zp training throughput and memory on a GPU machine, against the PyTorch peer
# (../shared/PEERS.md), in one call: build, random-token shard, `zp train` for ~25 steps per
# model, the PyTorch peer on the same machine, then one markdown table.
#
# Run (repo root, with .deps carried and, for the peer, ../shared/peers copied into .peers):
#   bash bench/gpu_bench.sh [124m] [1.5b]          (default: both; one model per call on 2 GPUs)
# Env: OUT (default /tmp/zp-out: at most 7 small files), ZP_WORK (shard, runs; default
#   /tmp/zp-bench-work), ZP_BUILD (default build-gpu), STEPS (zp steps per run, default 25: the
#   median is over steps 6..N), SKIP_BUILD=1,
#   PEERS = auto (default: run_torch.sh's whole matrix when >= 2 GPUs are visible, else the
#   single-GPU modes, eager and torch.compile) | single | compile (torch.compile only) | all | none,
#   ZP_RUN_TIMEOUT (s per zp run, default 420), PEER_TIMEOUT (s per model's peer set, default 540),
#   ZP_MULTI (optional, with >= 2 GPUs: zero.plugin values to also run under `zp launch -n NGPU`,
#   e.g. "none stage1 stage2 stage3"; default empty; each run repeats zp's host-side weight
#   init, so use it with 124m), ZP_NGPU (override the GPU count), ZP_EXTRA_SETS (more
#   "--set k=v" words for zp), ZP_PEER_DIR (default .peers). Without a GPU the plumbing runs with
#   ZP_EXTRA_SETS="--set train.device=cpu ..." and a stub peer directory (done so on the dev machine,
#   with a stub nvidia-smi on PATH for the clock / power columns).
# Rough duration, one H100: build ~1 min; 124M ~20 s; 1.5B ~2 min, most of it zp's weight init
# on the host (single-threaded, ~45 s per pass, PARAM and MASTER each take one); peers: single
# modes ~1 min (124M) and ~2.5 min (1.5B, torch.compile included); the 2-GPU matrix ~3-4 min
# per model.
# Numbers: ms/step = median of steps 6..N of metrics.jsonl "ms" (optimizer step and a device
# synchronize included); tok/s = tokens per step (all ranks) / that median; MFU = zp's own (6N +
# 12·L·d·T FLOPs per token against 989 TFLOP/s, PEERS.md's formula); peak GiB = the ledger's
# gpu-tier peak (metrics.jsonl peak_gpu, rank 0; comparable with PyTorch's max_memory_allocated);
# device GiB: zp does not report cudaMemGetInfo, so this script samples nvidia-smi every 0.5 s
# while zp runs (the process's memory where the container shows it, else GPU 0's used memory
# minus its value before the run). Tokens: uniform random over the 50257-token vocabulary, as the
# peer's torch.randint.
set -u -o pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-/tmp/zp-out}
WORK=${ZP_WORK:-/tmp/zp-bench-work}
BUILD=${ZP_BUILD:-$SRC/build-gpu}
STEPS=${STEPS:-25}
PEERS=${PEERS:-auto}
ZP_RUN_TIMEOUT=${ZP_RUN_TIMEOUT:-420}
PEER_TIMEOUT=${PEER_TIMEOUT:-540}
ZP_MULTI=${ZP_MULTI:-}
EXTRA_SETS=${ZP_EXTRA_SETS:-}
PEER_DIR=${ZP_PEER_DIR:-$SRC/.peers}
MODELS=("$@")
[ ${#MODELS[@]} -eq 0 ] && MODELS=(124m 1.5b)
for m in "${MODELS[@]}"; do
  case $m in 124m | 1.5b) ;; *) echo "gpu_bench: unknown model '$m' (124m or 1.5b)" >&2; exit 2 ;; esac
done
mkdir -p "$OUT" "$WORK/runs" "$WORK/peers" || { echo "gpu_bench: cannot create $OUT or $WORK" >&2; exit 2; }
: > "$OUT/zp_metrics.jsonl"
: > "$OUT/torch.jsonl"
: > "$OUT/torch_err.log"
FAILED=0
T_START=$(date +%s)
note() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
fail() { note "FAILED: $*"; FAILED=1; }

NGPU=0
GPU_NAME="? (no nvidia-smi)"
if command -v nvidia-smi > /dev/null; then
  NGPU=$(nvidia-smi -L 2> /dev/null | grep -c '^GPU ')
  if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then NGPU=$(tr ',' '\n' <<< "$CUDA_VISIBLE_DEVICES" | grep -c .); fi
  GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null | head -1)
fi
NGPU=${ZP_NGPU:-$NGPU}
note "gpu_bench: ${NGPU} GPU(s): $GPU_NAME; models ${MODELS[*]}; $STEPS zp steps each; peers $PEERS${ZP_MULTI:+; zp multi-GPU: $ZP_MULTI}"

# ---- clocks and power of GPU 0 every 250 ms for the whole bench; each run's window in RUNS ----
POWER=$WORK/power.csv RUNS=$WORK/run_windows.txt
: > "$POWER"
: > "$RUNS"
PSPID=
if command -v nvidia-smi > /dev/null; then
  nvidia-smi -i 0 --query-gpu=timestamp,clocks.sm,power.draw,utilization.gpu --format=csv,noheader,nounits -lms 250 \
    > "$POWER" 2> /dev/null &
  PSPID=$!
  trap 'kill "$PSPID" 2> /dev/null' EXIT
fi
stamp() { date '+%Y/%m/%d %H:%M:%S.%N' | cut -c1-23; }

# ---- build (release, no NaN poisoning) ----
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  export PATH=$PATH:/usr/local/cuda/bin
  [ -d "$SRC/.deps" ] || pkg-config --exists lua5.4 jansson 2> /dev/null ||
    note "no .deps/ and no Lua/jansson packages: run scripts/stage_deps.sh on the dev machine and carry .deps"
  t0=$(date +%s)
  if cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DZP_TEST_POISON=OFF \
    -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" > "$OUT/bench_build.log" 2>&1 &&
    ninja -C "$BUILD" zp zp_cuda zp_stage1 zp_stage2 zp_stage3 >> "$OUT/bench_build.log" 2>&1; then
    note "build: ok ($(($(date +%s) - t0)) s) -> $BUILD"
  else
    tail -n 30 "$OUT/bench_build.log"
    fail "build (see $OUT/bench_build.log)"
  fi
fi
ZP_OK=1
if [ ! -x "$BUILD/zp" ] || [ ! -f "$BUILD/plugins/zp_cuda.so" ]; then
  fail "$BUILD/zp or $BUILD/plugins/zp_cuda.so missing: zp is not measured"
  ZP_OK=0
fi

# ---- random-token shard (llm.c layout), enough for STEPS steps of 16 x 1024 ----
SHARD=$WORK/random_train.bin
NTOK=$(((STEPS + 2) * 16 * 1024 * (NGPU > 1 ? NGPU : 1) + 1))
if ! python3 "$SRC/bench/random_shard.py" "$SHARD" "$NTOK"; then
  fail "cannot write the token shard $SHARD"
  ZP_OK=0
fi

# ---- zp ----
# mem_sampler PID FILE: device memory while PID lives: the process's rows when nvidia-smi shows
# them (not in every container), and GPU 0's used memory (baseline first)
mem_sampler() {
  local pid=$1 f=$2 base v
  base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 2> /dev/null | head -1)
  echo "baseline ${base:-0}" > "$f"
  while kill -0 "$pid" 2> /dev/null; do
    v=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2> /dev/null |
      awk -F', *' -v p="$pid" '$1 == p { print $2 }')
    [ -n "$v" ] && echo "proc $v" >> "$f"
    v=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 2> /dev/null | head -1)
    [ -n "$v" ] && echo "gpu $v" >> "$f"
    sleep 0.5
  done
}

# run_zp MODEL WORLD PLUGIN: one zp run (zp train, or zp launch -n WORLD), one row of zp_metrics.jsonl
run_zp() {
  local m=$1 world=$2 plugin=$3
  local cfg=$SRC/examples/gpt2-$m.toml log=$OUT/zp_$m.log tag=${m}_${plugin}_$world
  local run=$WORK/runs/$tag rc t0 zpid child spid=
  local -a cmd=("$BUILD/zp" train "$cfg")
  [ "$world" -gt 1 ] && cmd=("$BUILD/zp" launch -n "$world" "$cfg")
  rm -rf "$run"
  note "zp $m: $world GPU(s), zero.plugin=$plugin, $STEPS steps"
  echo "==== zp $m, world $world, zero.plugin $plugin" >> "$log"
  t0=$(date +%s)
  local w0
  w0=$(stamp)
  # shellcheck disable=SC2086  # EXTRA_SETS is a word list
  timeout -k 10 "$ZP_RUN_TIMEOUT" "${cmd[@]}" --set "data.train=$SHARD" --set "train.steps=$STEPS" \
    --set "train.out_dir=$run" --set train.save_final=false --set train.checkpoint_every=0 --set train.resume=never \
    --set train.metrics=true --set train.log_every=1 --set train.val_every=0 --set train.grad_accum=1 \
    --set "zero.plugin=$plugin" $EXTRA_SETS >> "$log" 2>&1 &
  zpid=$!
  if command -v nvidia-smi > /dev/null; then
    sleep 1 # zp is timeout's child: sample that pid (or timeout's, if not found)
    child=$(pgrep -P "$zpid" 2> /dev/null | head -1)
    mem_sampler "${child:-$zpid}" "$WORK/mem_$tag.txt" &
    spid=$!
  fi
  wait "$zpid"
  rc=$?
  echo "zp|$m|$world|$plugin|$w0|$(stamp)" >> "$RUNS"
  [ -n "$spid" ] && wait "$spid"
  note "zp $tag: exit $rc after $(($(date +%s) - t0)) s"
  if [ "$rc" -ne 0 ]; then
    tail -n 20 "$log"
    fail "zp $tag (exit $rc, see $log)"
  fi
  python3 - "$run/metrics.jsonl" "$m" "$WORK/mem_$tag.txt" "$rc" "$world" "$plugin" >> "$OUT/zp_metrics.jsonl" << 'PYEOF' ||
import json, statistics, sys
path, model, memf, rc, world, plugin = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
rows = []
try:
    with open(path) as f:
        rows = [json.loads(l) for l in f if l.strip()]
except OSError:
    pass
rows = [r for r in rows if "ms" in r]
out = dict(system="zp", model=model, world=world, zero=plugin, rc=rc, steps=len(rows))
timed = [r for r in rows if r["step"] >= 6]
if timed:
    ms = statistics.median(r["ms"] for r in timed)
    tok_step = timed[0]["tok_s"] * timed[0]["ms"] / 1000.0  # all ranks
    out.update(ms_step=round(ms, 2), tok_s=round(tok_step / ms * 1000.0),
               mfu=round(statistics.median(r["mfu"] for r in timed), 4),
               peak_GiB=round(max(r["peak_gpu"] for r in rows) / 2**30, 2),
               loss_first=rows[0]["loss"], loss_last=rows[-1]["loss"], timed_steps=len(timed))
base, proc, gpu = 0.0, [], []
try:
    for l in open(memf):
        k, v = l.split()
        if k == "baseline": base = float(v)
        elif k == "proc": proc.append(float(v))
        elif k == "gpu": gpu.append(float(v))
except OSError:
    pass
if proc:
    out.update(device_GiB=round(max(proc) / 1024, 2), device_src="nvidia-smi, the process")
elif gpu:
    out.update(device_GiB=round((max(gpu) - base) / 1024, 2), device_src="nvidia-smi, GPU 0 used minus baseline")
print(json.dumps(out))
PYEOF
    fail "metrics of $tag"
}

for m in "${MODELS[@]}"; do
  [ "$ZP_OK" = 1 ] || break
  : > "$OUT/zp_$m.log"
  run_zp "$m" 1 none
  if [ -n "$ZP_MULTI" ] && [ "$NGPU" -ge 2 ]; then
    for plugin in $ZP_MULTI; do run_zp "$m" "$NGPU" "$plugin"; done
  fi
done

# ---- the PyTorch peer ----
declare -A PM=([124m]=d12 [1.5b]=d48)
declare -A PB=([124m]=16 [1.5b]=8)
mode=$PEERS
if [ "$mode" = auto ]; then if [ "$NGPU" -ge 2 ]; then mode=all; else mode=single; fi; fi
if [ "$mode" != none ]; then
  if [ ! -f "$PEER_DIR/torch_gpt2.py" ]; then
    fail "peer: $PEER_DIR/torch_gpt2.py missing (copy ../shared/peers to .peers and carry it)"
  elif ! python3 -c 'import torch' 2> /dev/null; then
    fail "peer: python3 cannot import torch"
  else
    for m in "${MODELS[@]}"; do
      pm=${PM[$m]} pb=${PB[$m]}
      t0=$(date +%s)
      if [ "$mode" = all ]; then
        note "peer: run_torch.sh $pm $pb (single, compile, ddp, zero1, fsdp2_zero2, fsdp2_zero3)"
        rm -rf "$WORK/peers/$m" && mkdir -p "$WORK/peers/$m"
        w0=$(stamp)
        OUT=$WORK/peers/$m timeout -k 10 "$PEER_TIMEOUT" bash "$PEER_DIR/run_torch.sh" "$pm" "$pb" > /dev/null 2>&1 ||
          fail "peer $m: run_torch.sh exit $? (timeout ${PEER_TIMEOUT} s?)"
        echo "peer|$pm|all||$w0|$(stamp)" >> "$RUNS"
        cat "$WORK/peers/$m/torch.jsonl" >> "$OUT/torch.jsonl" 2> /dev/null
        { echo "== $m: run_torch.sh $pm $pb"; tail -n 40 "$WORK/peers/$m/err.log" 2> /dev/null; } >> "$OUT/torch_err.log"
      else
        cs=("" --compile)
        [ "$mode" = compile ] && cs=(--compile)
        for c in "${cs[@]}"; do
          note "peer: torch_gpt2.py --mode single --model $pm --B $pb${c:+ $c}"
          w0=$(stamp)
          # shellcheck disable=SC2086  # $c is empty or one flag
          timeout -k 10 "$PEER_TIMEOUT" python3 "$PEER_DIR/torch_gpt2.py" --mode single --model "$pm" --B "$pb" $c \
            >> "$OUT/torch.jsonl" 2> "$WORK/peers/err_$m$c.log" ||
            fail "peer $m single $c: exit $?"
          echo "peer|$pm|single|${c:+compile}|$w0|$(stamp)" >> "$RUNS"
          { echo "== $m single $c"; tail -n 20 "$WORK/peers/err_$m$c.log"; } >> "$OUT/torch_err.log"
        done
      fi
      note "peer $m: $(($(date +%s) - t0)) s"
    done
  fi
fi

# ---- table ----
[ -n "$PSPID" ] && kill "$PSPID" 2> /dev/null
python3 - "$OUT/zp_metrics.jsonl" "$OUT/torch.jsonl" "$GPU_NAME" "$NGPU" "$STEPS" "$POWER" "$RUNS" << 'PYEOF' | tee "$OUT/bench_summary.md"
import datetime, json, statistics, sys
zpf, tf, gpu, ngpu, steps, powf, runsf = sys.argv[1:8]
def parse_t(x):
    return datetime.datetime.strptime(x.strip()[:23], "%Y/%m/%d %H:%M:%S.%f")
samples = []  # (time, sm MHz, W) of GPU 0 while busy (utilization > 50 %)
try:
    for l in open(powf):
        c = [v.strip() for v in l.split(",")]
        try:
            if len(c) >= 4 and float(c[3]) > 50:
                samples.append((parse_t(c[0]), float(c[1]), float(c[2])))
        except ValueError:
            pass
except OSError:
    pass
windows = {}  # (kind, model, a, b) -> (start, end)
try:
    for l in open(runsf):
        k = l.rstrip("\n").split("|")
        if len(k) == 6:
            windows[tuple(k[:4])] = (parse_t(k[4]), parse_t(k[5]))
except (OSError, ValueError):
    pass
def clk_pw(key):
    w = windows.get(key)
    sel = [s for s in samples if w and w[0] <= s[0] <= w[1]]
    if not sel:
        return "—", "—"
    return f"{statistics.median(s[1] for s in sel):.0f}", f"{statistics.median(s[2] for s in sel):.0f}"
def load(p):
    out = []
    try:
        for l in open(p):
            l = l.strip()
            if l.startswith("{"):
                try: out.append(json.loads(l))
                except ValueError: pass
    except OSError:
        pass
    return out
zps, peers = load(zpf), load(tf)
pmap = {"124m": "d12", "1.5b": "d48"}
names = {"single": "PyTorch eager", "ddp": "PyTorch DDP", "zero1": "PyTorch ZeroRedundancyOptimizer",
         "fsdp2_zero2": "PyTorch FSDP2, no reshard", "fsdp2_zero3": "PyTorch FSDP2", "fsdp2_offload": "PyTorch FSDP2 + CPU offload"}
modes = {"single": "single", "ddp": "plain DP", "zero1": "ZeRO-1", "fsdp2_zero2": "ZeRO-2", "fsdp2_zero3": "ZeRO-3",
         "fsdp2_offload": "ZeRO-3 + CPU"}
zmodes = {"none": "plain DP", "stage1": "ZeRO-1", "stage2": "ZeRO-2", "stage3": "ZeRO-3"}
f = lambda v, fmt: ("—" if v is None else format(v, fmt))
zmode_of = lambda z: "single" if z["world"] == 1 else zmodes.get(z["zero"], z["zero"])
print(f"\n## zp vs PyTorch on {ngpu} x {gpu} (seq 1024, bf16, random tokens; zp: median of steps 6..{steps})\n")
for m in ("124m", "1.5b"):
    zr = [z for z in zps if z["model"] == m]
    rows = [p for p in peers if p.get("model") == pmap[m]]
    if not zr and not rows:
        continue
    print(f"### GPT-2 {m.upper()}, micro-batch {'16' if m == '124m' else '8'} per GPU\n")
    print("| system | GPUs | mode | ms/step | tok/s | MFU | peak GiB | device GiB | SM MHz | W | zp ÷ row (tok/s per GPU) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    zper = {zmode_of(z): z["tok_s"] / z["world"] for z in zr if z.get("tok_s")}  # mode -> zp tok/s per GPU
    zsingle = zper.get("single")
    for z in zr:
        clk, pw = clk_pw(("zp", m, str(z["world"]), z["zero"]))
        if z.get("tok_s"):
            print(f"| **zp** | {z['world']} | {zmode_of(z)} | {z['ms_step']:.1f} | {z['tok_s']:,} | {z['mfu']*100:.0f}% | "
                  f"{z['peak_GiB']:.1f} | {f(z.get('device_GiB'), '.1f')} | {clk} | {pw} | {'1.00' if z['world'] == 1 else '—'} |")
        else:
            print(f"| **zp** | {z['world']} | {zmode_of(z)} | failed (exit {z.get('rc')}, {z.get('steps')} steps) | | | | | | | |")
    for p in rows:
        base = p["mode"].split("+")[0]
        mode = modes.get(base, p["mode"])
        sysname = names.get(base, p["mode"]) + (" + torch.compile" if p.get("compile") else "")
        zt = zper.get(mode, zsingle)
        ratio = f(zt / (p["tok_s"] / p["world"]) if zt else None, ".2f")
        if zt and mode not in zper:
            ratio += " (zp single)"
        key = ("peer", pmap[m], "single", "compile" if p.get("compile") else "")
        clk, pw = clk_pw(key if key in windows else ("peer", pmap[m], "all", ""))
        print(f"| {sysname} | {p['world']} | {mode} | {p['ms_step']:.1f} | {p['tok_s']:,} | {p['mfu']*100:.0f}% | "
              f"{p['peak_mem_GiB_rank0']:.1f} | {f(p.get('device_used_GiB_rank0'), '.1f')} | {clk} | {pw} | {ratio} |")
    print()
    for z in zr:
        if z.get("tok_s"):
            print(f"- zp {m}, {z['world']} GPU(s), {zmode_of(z)}: loss {z['loss_first']:.3f} -> {z['loss_last']:.3f} over "
                  f"{z['steps']} steps; device GiB from {z.get('device_src', 'nothing (no nvidia-smi)')}")
    print()
print("zp ÷ row: zp's tok/s per GPU in the row's mode (zp single where zp did not run that mode) over the row's "
      "(> 1: zp faster). peak GiB: zp = ledger gpu-tier peak (rank 0), PyTorch = max_memory_allocated (rank 0); "
      "device GiB: zp = nvidia-smi samples, PyTorch = cudaMemGetInfo used at its end (rank 0). MFU: 6N + 12·L·d·T "
      "FLOPs per token against 989 TFLOP/s. SM MHz, W: GPU 0's median SM clock and board power over the run's samples "
      "with utilization > 50 % (nvidia-smi every 250 ms; with run_torch.sh's matrix, one window for all its modes); "
      "the H100 SXM's power limit is 700 W, at which the clock drops below its 1980 MHz boost.")
PYEOF

echo
echo "gpu_bench: $(($(date +%s) - T_START)) s; files in $OUT: $(find "$OUT" -maxdepth 1 -type f -printf '%f ')"
if [ "$FAILED" = 0 ]; then echo "GPU BENCH DONE"; else echo "GPU BENCH: SOME STEPS FAILED (see above)"; fi
exit "$FAILED"
