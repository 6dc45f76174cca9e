#!/usr/bin/env bash
# offload.sh BUILD SRC SHARED: the offload tiers against the runs without offload, on CPU ranks.
# Claims checked:
# - offload_cpu with stages none/1/2/3, fp32 and bf16 storage, 2 ranks: per-step losses and
#   final parameters bitwise equal to the same run without offload (the host AdamW is the CPU
#   backend's arithmetic), also with the scalar AdamW path forced (ZP_ADAMW_ISA=scalar);
# - the state really moved: MASTER and OPTIM bytes are on the cpu tier (equal to what the
#   reference holds on the device tier; fp32 runs get a separate fp32 master), none left on
#   the device tier, and the cpu tier saw exactly one gradient transfer in and one parameter
#   transfer out per step (bytes = elements held x dtype size);
# - with pipeline parallelism (pp=2) too;
# - the chunked transfer pipeline (1000-element chunks, with and without overlap) bitwise too;
# - gradients streamed to the host during the backward (the default) or copied at the update
#   (stream_grads false): the same bits, the same transfers;
# - the delayed parameter update: stages 1-3 equal stage none bitwise, the same transfers, a
#   different schedule than the synchronous update, and bitwise resume (its reference
#   recurrence is checked in tests/unit/test_offload_dpu.c);
# - partial offload (offload.optimizer.ratio 0.5, stages none and 2): bitwise equal, MASTER/OPTIM
#   split between device and host as the rule says, gradients to the host only for the host's
#   groups; ratios outside (0, 1] refused;
# - parameter offload with stage 3: bitwise (fp32, bf16, delayed update, resume), PARAM bytes on
#   the host, shard copies counted; without optimizer offload, with ratio < 1, or without stage 3
#   refused with a reason;
# - offload.optimizer.max_host_gb below the need is refused before allocation, with numbers;
#   so is a plan needing more host memory than the machine has available.
set -euo pipefail
build=$1; src=$2
zp=$build/zp
cfg=$src/tests/configs/equiv.toml
[ -f "$src/data/fortunes/train_000.bin" ] || { echo "FAIL: data/fortunes missing (run scripts/setup.sh)"; exit 1; }
work=$(mktemp -d /tmp/zp-offload.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail=0
. "$src/tests/integration/lib/runs.sh" # run, close
compare() { # a b what
  local a=$1 b=$2 what=$3 out
  if ! cmp -s "$work/$a.losses" "$work/$b.losses"; then
    echo "FAIL: $what: losses differ"; paste "$work/$a.losses" "$work/$b.losses"; fail=1; return
  fi
  if out=$("$zp" ckpt compare "$(ls -d "$work/$a"/ckpt_* | tail -1)" "$(ls -d "$work/$b"/ckpt_* | tail -1)" --tol 0 2>&1); then
    echo "ok   $what: $out"
  else
    echo "FAIL: $what: $out"; fail=1
  fi
}
# tiers: the offloaded run's ledger and I/O counters against the reference's (last metrics line)
tiers() { # ref off prec steps [parameter transfers seen at the last metrics line]
  python3 - "$work/$1/metrics.jsonl" "$work/$2/metrics.jsonl" "$3" "$4" "${5:-$4}" <<'EOF' || fail=1
import json, sys
ref = json.loads(open(sys.argv[1]).read().splitlines()[-1])["tiers"]
off = json.loads(open(sys.argv[2]).read().splitlines()[-1])["tiers"]
prec, steps, psteps = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
g, c = off["gpu"], off["cpu"]
held = c["OPTIM"] // 8                      # elements of m (and v) this rank holds
gs = ps = 2 if prec == "bf16" else 4         # gradient and parameter dtype size
want_master = ref["gpu"]["MASTER"] if prec == "bf16" else held * 4
errs = []
if g["MASTER"] or g["OPTIM"]: errs.append(f"device tier still holds MASTER {g['MASTER']} / OPTIM {g['OPTIM']} bytes")
if c["OPTIM"] != ref["gpu"]["OPTIM"]: errs.append(f"cpu OPTIM {c['OPTIM']} != reference device OPTIM {ref['gpu']['OPTIM']}")
if c["MASTER"] != want_master: errs.append(f"cpu MASTER {c['MASTER']} != {want_master}")
if c["io_write"] != steps * held * gs: errs.append(f"gradient bytes to host {c['io_write']} != {steps} x {held} x {gs}")
if c["io_read"] != psteps * held * ps: errs.append(f"parameter bytes from host {c['io_read']} != {psteps} x {held} x {ps}")
if g["PARAM"] != ref["gpu"]["PARAM"]: errs.append(f"device PARAM {g['PARAM']} != reference {ref['gpu']['PARAM']}")
if errs:
    print("FAIL: " + sys.argv[2] + ": " + "; ".join(errs)); sys.exit(1)
print(f"ok   tiers: cpu MASTER {c['MASTER']} OPTIM {c['OPTIM']} B, device MASTER/OPTIM 0; "
      f"{c['io_write']} B in / {c['io_read']} B out over {steps} steps ({c['io_ops']} transfers)")
EOF
}
steps=4
for prec in fp32 bf16; do
  run "ref-$prec" 2 train.precision=$prec || continue
  for st in none stage1 stage2 stage3; do
    run "cpu-$st-$prec" 2 train.precision=$prec zero.plugin=$st offload.optimizer.plugin=offload_cpu || continue
    compare "ref-$prec" "cpu-$st-$prec" "offload_cpu + $st vs no offload, $prec, 2 ranks (bitwise)"
    if [ "$st" = none ]; then tiers "ref-$prec" "cpu-$st-$prec" $prec $steps; else
      run "ref-$st-$prec" 2 train.precision=$prec zero.plugin=$st && tiers "ref-$st-$prec" "cpu-$st-$prec" $prec $steps
    fi
  done
done
# gradients copied at the update instead of streamed in during the backward (stream_grads
# false; the default streams): the same bits and the same transfers
for st in none stage1 stage3; do
  run "cpu-nostream-$st" 2 train.precision=bf16 zero.plugin=$st offload.optimizer.plugin=offload_cpu \
    offload.optimizer.stream_grads=false || continue
  compare ref-bf16 "cpu-nostream-$st" "offload_cpu + $st, stream_grads false vs no offload, bf16 (bitwise)"
  if [ "$st" = none ]; then tiers ref-bf16 "cpu-nostream-$st" bf16 $steps; else tiers "ref-$st-bf16" "cpu-nostream-$st" bf16 $steps; fi
done
# the scalar AdamW path gives the same bits as the vectorised default
ZP_ADAMW_ISA=scalar run cpu-scalar 2 train.precision=bf16 zero.plugin=stage2 offload.optimizer.plugin=offload_cpu &&
  compare ref-bf16 cpu-scalar "offload_cpu, ZP_ADAMW_ISA=scalar vs no offload (bitwise)"
# the chunked pipeline (many odd-sized chunks per update), overlapped and not: the same bits
for ov in true false; do
  run "cpu-chunks-$ov" 2 train.precision=bf16 zero.plugin=stage1 offload.optimizer.plugin=offload_cpu \
    offload.optimizer.chunk_elems=1000 offload.optimizer.overlap=$ov &&
    compare ref-bf16 "cpu-chunks-$ov" "offload_cpu, 1000-element chunks, overlap $ov vs no offload (bitwise)"
done
# with pipeline parallelism (2 stages, 1f1b): the tier serves each stage's groups
run pp-ref 2 train.precision=bf16 parallel.pp=2 pipeline.micro_batches=2 &&
  run pp-cpu 2 train.precision=bf16 parallel.pp=2 pipeline.micro_batches=2 offload.optimizer.plugin=offload_cpu &&
  compare pp-ref pp-cpu "offload_cpu with pp=2 vs pp=2 without offload, bf16 (bitwise)"
# delayed parameter update (warm-up 1 step, so steps 3.. compute on parameters one update behind):
# every stage gives the same bits as stage none (the flush re-gathers shards of replicated
# parameters), the transfers are still one in and one out per step, the schedule really
# changed (losses differ from the synchronous run), and a resume from a checkpoint (taken
# after a flush) continues exactly as the uninterrupted run with the same checkpoint.
dpu=(offload.optimizer.plugin=offload_cpu offload.optimizer.delayed_update=true offload.optimizer.delayed_update_warmup=1)
if run dpu-none 2 train.precision=bf16 zero.plugin=none "${dpu[@]}"; then
  # at the last step's metrics one update is still pending (it reaches the device at the flush)
  tiers ref-bf16 dpu-none bf16 $steps $((steps - 1))
  if cmp -s "$work/dpu-none.losses" "$work/cpu-none-bf16.losses"; then
    echo "FAIL: delayed update: losses equal the synchronous run's"; fail=1
  else
    echo "ok   delayed update changes the schedule: step 3+ losses $(tail -2 "$work/dpu-none.losses" | tr '\n' ' ')vs synchronous $(tail -2 "$work/cpu-none-bf16.losses" | tr '\n' ' ')"
  fi
  for st in stage1 stage2 stage3; do
    run "dpu-$st" 2 train.precision=bf16 zero.plugin=$st "${dpu[@]}" &&
      compare dpu-none "dpu-$st" "delayed update: $st vs none, bf16, 2 ranks (bitwise)"
  done
  run dpu-nostream 2 train.precision=bf16 zero.plugin=stage2 offload.optimizer.stream_grads=false "${dpu[@]}" &&
    compare dpu-none dpu-nostream "delayed update: stage2 with stream_grads false vs none (bitwise)"
fi
run dpu-full 2 train.precision=bf16 zero.plugin=stage2 train.steps=6 train.checkpoint_every=3 "${dpu[@]}" &&
  run dpu-res 2 train.precision=bf16 zero.plugin=stage2 train.steps=3 "${dpu[@]}" &&
  run dpu-res 2 train.precision=bf16 zero.plugin=stage2 train.steps=6 train.resume=auto "${dpu[@]}" &&
  compare dpu-full dpu-res "delayed update: resumed at step 3 vs uninterrupted, stage2 (bitwise)"
# parameter offload with stage 3 (offload.param.plugin): the sharded PARAM shards live in host
# memory, copied to the device for each gather; the same bits as without offload (fp32, bf16),
# with the delayed update too, and a bitwise resume; the device holds no PARAM shard (only groups
# kept replicated by zero.persist_threshold), the host exactly the reference's device shards, and
# every step copies each shard to the device at least once (forward) and at most twice (backward)
par=(zero.plugin=stage3 offload.optimizer.plugin=offload_cpu offload.param.plugin=offload_cpu)
for prec in fp32 bf16; do
  run "par-$prec" 2 train.precision=$prec "${par[@]}" || continue
  compare "ref-$prec" "par-$prec" "offload_cpu parameters + optimizer, stage3 vs no offload, $prec (bitwise)"
  [ -d "$work/ref-stage3-$prec" ] || run "ref-stage3-$prec" 2 train.precision=$prec zero.plugin=stage3 || continue
  python3 - "$work/ref-stage3-$prec/metrics.jsonl" "$work/par-$prec/metrics.jsonl" $steps <<'EOF3' || fail=1
import json, sys
ref = json.loads(open(sys.argv[1]).read().splitlines()[-1])["tiers"]
off = json.loads(open(sys.argv[2]).read().splitlines()[-1])["tiers"]
steps = int(sys.argv[3])
g, c = off["gpu"], off["cpu"]
errs = []
if g["PARAM"] != 0: errs.append(f"device PARAM {g['PARAM']} B, want 0 (every group sharded at persist_threshold 0)")
if c["PARAM"] != ref["gpu"]["PARAM"]: errs.append(f"host PARAM {c['PARAM']} != reference device shards {ref['gpu']['PARAM']}")
if not (steps * c["PARAM"] <= c["io_read"] <= 2 * steps * c["PARAM"]):
    errs.append(f"parameter bytes to the device {c['io_read']} outside [{steps} x {c['PARAM']}, 2 x that]")
if errs: print("FAIL: parameter offload tiers: " + "; ".join(errs)); sys.exit(1)
print(f"ok   parameter offload tiers: host PARAM {c['PARAM']} B (= reference device shards), device PARAM 0; "
      f"{c['io_read']} B of shards to the device over {steps} steps")
EOF3
done
run par-dpu 2 train.precision=bf16 "${par[@]}" "${dpu[@]:1}" &&
  compare dpu-none par-dpu "parameter offload + delayed update, stage3 vs none (bitwise)"
run par-full 2 train.precision=bf16 train.steps=6 train.checkpoint_every=3 "${par[@]}" &&
  run par-res 2 train.precision=bf16 train.steps=3 "${par[@]}" &&
  run par-res 2 train.precision=bf16 train.steps=6 train.resume=auto "${par[@]}" &&
  compare par-full par-res "parameter offload: resumed at step 3 vs uninterrupted (bitwise)"
# a persistent group (zero.persist_threshold) keeps its PARAM replicated on the device
run par-persist 2 train.precision=bf16 "${par[@]}" zero.persist_threshold=3000 &&
  compare ref-bf16 par-persist "parameter offload with persistent small groups (bitwise)" &&
  python3 - "$work/par-persist/metrics.jsonl" <<'EOF4' || fail=1
import json, sys
t = json.loads(open(sys.argv[1]).read().splitlines()[-1])["tiers"]
if not (t["gpu"]["PARAM"] > 0 and t["cpu"]["PARAM"] > 0):
    print(f"FAIL: persist_threshold: device PARAM {t['gpu']['PARAM']} B, host PARAM {t['cpu']['PARAM']} B: want both > 0"); sys.exit(1)
print(f"ok   persist_threshold 3000: device PARAM {t['gpu']['PARAM']} B (replicated small groups), host PARAM {t['cpu']['PARAM']} B")
EOF4
for bad in "offload.optimizer.plugin=none:needs offload.optimizer.plugin" "offload.optimizer.ratio=0.5:use ratio = 1 with parameter offload"; do
  kv=${bad%%:*} want=${bad#*:}
  if out=$("$zp" plan "$cfg" --set zero.plugin=stage3 --set offload.optimizer.plugin=offload_cpu --set offload.param.plugin=offload_cpu \
      --set "$kv" 2>&1); then
    echo "FAIL: parameter offload with $kv accepted"; fail=1
  elif grep -q "$want" <<<"$out"; then echo "ok   parameter offload with $kv refused: $(grep -m1 -o 'offload.param.plugin.*' <<<"$out" | cut -c1-140)"
  else echo "FAIL: parameter offload with $kv: $out"; fail=1; fi
done
if out=$("$zp" plan "$cfg" --set zero.plugin=stage2 --set offload.optimizer.plugin=offload_cpu --set offload.param.plugin=offload_cpu 2>&1); then
  echo "FAIL: parameter offload with stage2 accepted"; fail=1
elif grep -q 'needs zero.plugin = "stage3"' <<<"$out"; then echo "ok   parameter offload with stage2 refused"
else echo "FAIL: parameter offload with stage2: $out"; fail=1; fi
# partial offload (offload.optimizer.ratio): the first groups in update order keep MASTER/OPTIM
# on the device, the rest move; the same bits as no offload, and the bytes split as the rule says
for st in none stage2; do
  run "ratio-$st" 2 train.precision=bf16 zero.plugin=$st offload.optimizer.plugin=offload_cpu offload.optimizer.ratio=0.5 ||
    continue
  ref=ref-bf16; [ $st = none ] || ref=ref-$st-bf16
  compare "$ref" "ratio-$st" "offload_cpu ratio 0.5 + $st vs no offload, bf16 (bitwise)"
  python3 - "$work/$ref/metrics.jsonl" "$work/ratio-$st/metrics.jsonl" $steps <<'EOF2' || fail=1
import json, sys
ref = json.loads(open(sys.argv[1]).read().splitlines()[-1])["tiers"]
off = json.loads(open(sys.argv[2]).read().splitlines()[-1])["tiers"]
steps = int(sys.argv[3])
g, c, want = off["gpu"], off["cpu"], ref["gpu"]
errs = []
if g["OPTIM"] + c["OPTIM"] != want["OPTIM"]: errs.append(f"OPTIM device {g['OPTIM']} + host {c['OPTIM']} != reference {want['OPTIM']}")
if g["MASTER"] + c["MASTER"] != want["MASTER"]: errs.append(f"MASTER device {g['MASTER']} + host {c['MASTER']} != reference {want['MASTER']}")
share = c["OPTIM"] / want["OPTIM"]
# the device keeps at most half; groups are whole, so the host share is at least 0.5 and below 1
if not (0.5 <= share < 1.0): errs.append(f"host share of OPTIM {share:.3f}, want in [0.5, 1)")
held = c["OPTIM"] // 8
if c["io_write"] != steps * held * 2: errs.append(f"gradient bytes to host {c['io_write']} != {steps} x {held} x 2 (only the host's groups)")
if errs: print("FAIL: ratio: " + "; ".join(errs)); sys.exit(1)
print(f"ok   ratio 0.5 tiers: host OPTIM {c['OPTIM']} B ({share:.3f} of {want['OPTIM']}), device OPTIM {g['OPTIM']} B; {c['io_write']} B of gradients to the host over {steps} steps")
EOF2
done
if out=$("$zp" plan "$cfg" --set offload.optimizer.plugin=offload_cpu --set offload.optimizer.ratio=0.5 \
    --set offload.optimizer.delayed_update=true 2>&1); then
  echo "FAIL: ratio 0.5 with the delayed update accepted"; fail=1
elif grep -q "delayed_update with offload.optimizer.ratio = 0.5: .*mixed staleness" <<<"$out"; then
  echo "ok   ratio 0.5 with the delayed update refused (mixed staleness)"
else echo "FAIL: ratio + delayed update message: $out"; fail=1; fi
for bad in 0 1.5; do
  if out=$("$zp" plan "$cfg" --set offload.optimizer.plugin=offload_cpu --set offload.optimizer.ratio=$bad 2>&1); then
    echo "FAIL: offload.optimizer.ratio = $bad accepted"; fail=1
  elif grep -q "offload.optimizer.ratio" <<<"$out"; then
    echo "ok   ratio $bad refused: $(grep -m1 -o 'offload.optimizer.ratio.*' <<<"$out" | cut -c1-150)"
  else
    echo "FAIL: ratio $bad message: $out"; fail=1
  fi
done
# a host-memory cap below the need: refused at plan time with the numbers
if out=$("$zp" plan "$cfg" --set offload.optimizer.plugin=offload_cpu --set offload.optimizer.max_host_gb=0.0001 2>&1); then
  echo "FAIL: max_host_gb below the need was accepted"; fail=1
elif grep -q "GB of host memory per rank.*max_host_gb = 0.0001" <<<"$out"; then
  echo "ok   max_host_gb: $(grep -o 'offload_cpu.*' <<<"$out" | head -1)"
else
  echo "FAIL: max_host_gb message: $out"; fail=1
fi
# more than this machine has (MemAvailable): refused by the plan with the numbers (a ~820B model, 9.8 TB)
if out=$("$zp" plan "$cfg" --set offload.optimizer.plugin=offload_cpu --set model.n_layer=1024 --set model.d_model=8192 \
    --set model.n_head=64 2>&1); then
  echo "FAIL: a plan needing ~10 TB of host memory was accepted"; fail=1
elif grep -q "GB of host memory per rank x 1 rank = .* GB available (MemAvailable" <<<"$out"; then
  echo "ok   host memory: $(grep -o 'the optimizer state.*' <<<"$out" | head -1)"
else
  echo "FAIL: host memory message: $out"; fail=1
fi
# zp plan shows the split
if "$zp" plan "$cfg" --set offload.optimizer.plugin=offload_cpu --set zero.plugin=stage2 --world 2 2>&1 | grep -q "S/cpu"; then
  echo "ok   zp plan shows MASTER/OPTIM sharded on the cpu tier"
else
  echo "FAIL: zp plan does not show the cpu tier"; fail=1
fi
[ $fail = 0 ] && echo "offload: all passed"
exit $fail
