#!/usr/bin/env bash
# offload_nvme.sh BUILD SRC SHARED: the NVMe tier (plugins/offload_nvme) on CPU ranks, on a real
# filesystem: ext4 in a loop file when we may mount (root), else the scratch directory's
# filesystem (checked not to be tmpfs, which hides O_DIRECT bugs); the skip is printed.
# Claims checked:
#  1. offload_nvme with stages none/1/2/3, fp32 and bf16, 2 ranks, 4 steps, 1024-element
#     sub-groups (block_size 4096: many sub-groups, the pipeline runs) and 3 staging slots:
#     per-step losses and final parameters + optimizer state bitwise equal to the run without
#     offload (same CPU AdamW arithmetic). The state really lives in the files: the device tier
#     holds no MASTER/OPTIM; the nvme tier holds 4 bytes (MASTER) and 8 bytes (OPTIM) per element
#     held, equal to what the reference holds on the device; file traffic exact from metrics:
#     reads = steps x 12 bytes x elements held, writes = (steps + 1 init) x 12 x held, and
#     request counts = sub-groups x (2 x steps + 3) (one read + one write per sub-group per step;
#     init writes master, m, v); host traffic = one gradient in and one parameter out per element
#     per step (sub-group counts from `zp plan`'s table, not from the plugin).
#  1b. Parameter offload (offload.param.plugin = "offload_nvme", stage 3, 2 ranks, fp32 and bf16):
#     bitwise equal to the run without offload; PARAM lives only in the parameter file (device
#     PARAM 0, nvme PARAM = the reference's device shards); file traffic exact: the optimizer's
#     as above (2048-element sub-groups with parameters) plus, per step, one shard read per
#     gather (forward: every group; backward: all but the embedding, still gathered) and the
#     new parameters written with each sub-group; persistent small groups (zero.persist_threshold)
#     stay on the device, bitwise; stop at 4 + resume to 8 equals the uninterrupted run, and a
#     checkpoint without offload resumes with parameter offload, bitwise; that checkpoint
#     resumed at 3 ranks with and without parameter offload: the same bits; io_uring off
#     (thread pool): the same bits.
#  1c. offload.optimizer.host_ratio 0.5 and 1.0, stage 2 and 3, fp32, 2 ranks: bitwise equal to
#     no offload; the resident prefix of groups (recomputed here from `zp plan`'s table by the
#     same rule, and checked against the plugin's log line) is cpu MASTER/OPTIM (4 + 8 bytes per
#     element), the rest nvme; file bytes and requests exact for the non-resident sub-groups only
#     (zero with 1.0, and no file is opened); stop at 4 + resume to 8 with 0.5 equals the
#     uninterrupted run; bf16 + stage 3, and with offload.optimizer.ratio 0.5 (stage 2, bf16):
#     bitwise, the state split between device (by ratio), host and file adding up to the
#     reference's. Errors: 1.5 (schema), above max_host_gb, with parameter offload.
#  2. ZP_AIO_NO_URING=1: the thread-pool fallback says so and gives the same bits; injected short
#     transfers and EINTR (ZP_AIO_FAULT=short|eintr) are resumed: same bits.
#     Partial offload (offload.optimizer.ratio 0.5, stage 2) is bitwise equal too.
#  3. Checkpoints: a run stopped at step 4 (async periodic saves every 2 steps) and resumed to 8
#     equals the uninterrupted 8-step run bitwise (params, state, losses); a checkpoint saved
#     without offload resumes with offload_nvme to the same bits; a 2-rank stage2 nvme checkpoint
#     resumed at 3 ranks (stage1, reshard) with and without nvme offload gives the same bits.
#  4. Errors, each with a message: missing path, a file as path, tmpfs, a disk too small for the
#     world's files (plan-time, with GB and bytes), host staging above max_host_gb, parameter
#     offload without the optimizer on NVMe, with ratio < 1, a missing offload.param.path, with
#     stage 2, injected EIO on a read and on a write (file, offset, errno), and on a parameter
#     read of a gather (names the parameters and the .param file).
#  5. On small loop filesystems (when mountable): plan refuses a disk that is too small; with the
#     plan check bypassed (ZP_NVME_NO_SPACE_CHECK=1) the file's preallocation fails with ENOSPC
#     naming the file and nothing is left behind; the same two for parameter files that do not
#     fit offload.param.path; a disk that fills up while checkpointing
#     (nvme files and checkpoints on the same small ext4) fails with ENOSPC naming the file, the
#     previous checkpoint stays complete, equal to the uninterrupted run's, and resumes to the
#     same final bits.
set -uo pipefail
build=$1; src=$2
zp=$build/zp
cfg=$src/tests/configs/equiv.toml
[ -f "$src/data/fortunes/train_000.bin" ] || { echo "FAIL: data/fortunes missing (run scripts/setup.sh)"; exit 1; }
base=${TMPDIR:-/tmp}
[ "$(stat -f -c %T "$base" 2> /dev/null)" = tmpfs ] && base=$build
work=$(mktemp -d "$base/zp-offload-nvme.XXXXXX")
mounts=()
. "$src/tests/integration/lib/ext4.sh"
cleanup() {
  unmount_all
  rm -rf "$work"
}
trap cleanup EXIT
fail=0
bad() { echo "FAIL: $*"; fail=1; }
ok() { echo "ok   $*"; }

# the directory for the state files
nvdir=$work/nvfs
if make_ext4 "$work/nv.img" "$nvdir" 256M; then
  echo "state files on ext4 (256 MiB) in a loop file, mounted with $how at $nvdir"
else
  echo "SKIP ext4 in a loop file: $how; the state files go to $work ($(stat -f -c %T "$work"))"
  nvdir=$work/nvme
  mkdir -p "$nvdir"
fi
fstype=$(stat -f -c %T "$nvdir")
[ "$fstype" != tmpfs ] || { echo "FAIL: $nvdir is on tmpfs"; exit 1; }
echo "filesystem of $nvdir: $fstype"
NV=(offload.optimizer.plugin=offload_nvme offload.optimizer.path="$nvdir" offload.optimizer.block_size=4096
  offload.optimizer.queue_depth=4 offload.optimizer.buffer_count=3)
NVS=()
for s in "${NV[@]}"; do NVS+=(--set "$s"); done
SUB=1024 # sub-group elements for these settings: 4096 x ceil(4/3) / 12 bytes < 1024 -> 1024

run() { # name nranks sets...   (environment passes through)
  local name=$1 n=$2; shift 2
  local sets=()
  for s in "$@"; do sets+=(--set "$s"); done
  if ! "$zp" launch -n "$n" "$cfg" --set train.out_dir="$work/$name" "${sets[@]}" > "$work/$name.log" 2>&1; then
    bad "run $name"; tail -20 "$work/$name.log"; return 1
  fi
  grep -o '"step":[0-9]*,"loss":[0-9.e+-]*' "$work/$name/metrics.jsonl" | sort -u -t, -k1,1 > "$work/$name.losses"
}
compare() { # a b what [ckpt name]
  local a=$1 b=$2 what=$3 ck=${4:-} out ca cb
  # a resumed run logs only the steps after its checkpoint: those must be the reference's lines
  if [ -n "$ck" ] && [ -s "$work/$b.losses" ] && ! grep -vxFqf "$work/$a.losses" "$work/$b.losses"; then :
  elif ! cmp -s "$work/$a.losses" "$work/$b.losses"; then
    bad "$what: losses differ"; paste "$work/$a.losses" "$work/$b.losses"; return
  fi
  if [ -n "$ck" ]; then ca=$work/$a/$ck; cb=$work/$b/$ck; else ca=$(ls -d "$work/$a"/ckpt_* | tail -1); cb=$(ls -d "$work/$b"/ckpt_* | tail -1); fi
  if out=$("$zp" ckpt compare "$ca" "$cb" --tol 0 2>&1); then ok "$what: $out"; else bad "$what: $out"; fi
}

printf 'function on_step(m) if m.step == 4 then return {stop = true} end end\n' > "$work/stop4.lua"

# ---- 1. equivalence, bytes per tier, I/O counts ----
tiers() { # ref off prec steps plan-output
  python3 - "$work/$1/metrics.jsonl" "$work/$2/metrics.jsonl" "$3" "$4" "$5" "$SUB" <<'EOF' || fail=1
import json, math, re, sys
ref = json.loads(open(sys.argv[1]).read().splitlines()[-1])["tiers"]
off = json.loads(open(sys.argv[2]).read().splitlines()[-1])["tiers"]
prec, steps, sub = sys.argv[3], int(sys.argv[4]), int(sys.argv[6])
held = nsub = 0
for line in open(sys.argv[5]):
    m = re.match(r"\s+(embed|block\.\d+|head)\s+(\d+)\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$", line)
    if not m: continue
    padded, optim = int(m.group(3)), m.group(7)
    if not optim.endswith("/nvme"): print("FAIL: plan puts OPTIM of", m.group(1), "on", optim); sys.exit(1)
    h = padded // 2 if optim.startswith("S/") else padded   # 2 ranks
    held += h; nsub += math.ceil(h / sub)
g, c, n = off["gpu"], off["cpu"], off["nvme"]
gs = ps = 2 if prec == "bf16" else 4
errs = []
def want(what, got, exp):
    if got != exp: errs.append(f"{what} = {got}, expected {exp}")
want("device MASTER", g["MASTER"], 0); want("device OPTIM", g["OPTIM"], 0)
want("nvme OPTIM", n["OPTIM"], 8 * held); want("nvme OPTIM vs reference device OPTIM", n["OPTIM"], ref["gpu"]["OPTIM"])
want("nvme MASTER", n["MASTER"], 4 * held)
if prec == "bf16": want("nvme MASTER vs reference device MASTER", n["MASTER"], ref["gpu"]["MASTER"])
want("nvme bytes read", n["io_read"], steps * 12 * held)
want("nvme bytes written", n["io_write"], (steps + 1) * 12 * held)
want("nvme requests", n["io_ops"], nsub * (2 * steps + 3))
want("gradient bytes to host", c["io_write"], steps * held * gs)
want("parameter bytes from host", c["io_read"], steps * held * ps)
want("host transfers", c["io_ops"], 2 * steps * nsub)
want("device PARAM", g["PARAM"], ref["gpu"]["PARAM"])
if c["BUFFER"] < 3 * 12 * sub: errs.append(f"cpu BUFFER {c['BUFFER']} < the staging slots {3 * 12 * sub}")
if errs: print("FAIL: " + sys.argv[2] + ": " + "; ".join(errs)); sys.exit(1)
print(f"ok   tiers: nvme MASTER {n['MASTER']} OPTIM {n['OPTIM']} B ({held} elements held), device 0; "
      f"file {n['io_read']} B read / {n['io_write']} B written in {n['io_ops']} requests ({nsub} sub-groups); "
      f"host {c['io_write']} B in / {c['io_read']} B out; staging {c['BUFFER']} B")
EOF
}
steps=4
for prec in fp32 bf16; do
  run "ref-$prec" 2 train.precision=$prec || continue
  for st in none stage1 stage2 stage3; do
    run "nv-$st-$prec" 2 train.precision=$prec zero.plugin=$st "${NV[@]}" || continue
    compare "ref-$prec" "nv-$st-$prec" "offload_nvme + $st vs no offload, $prec, 2 ranks (bitwise)"
    r=ref-$prec
    [ "$st" = none ] || { run "ref-$st-$prec" 2 train.precision=$prec zero.plugin=$st && r=ref-$st-$prec; }
    psets=()
    for s in train.precision=$prec zero.plugin=$st "${NV[@]}"; do psets+=(--set "$s"); done
    "$zp" plan "$cfg" --world 2 "${psets[@]}" > "$work/plan-$st-$prec.txt" 2>&1 || { bad "zp plan $st $prec"; cat "$work/plan-$st-$prec.txt"; }
    tiers "$r" "nv-$st-$prec" $prec $steps "$work/plan-$st-$prec.txt"
  done
done
grep -q "S/nvme" "$work/plan-stage2-bf16.txt" && grep -qE "^  (MASTER|OPTIM) .* [1-9][0-9.]* KiB +[1-9][0-9.]* KiB$" "$work/plan-stage2-bf16.txt" &&
  ok "zp plan shows MASTER/OPTIM sharded on the nvme tier with their bytes" || { bad "zp plan does not show the nvme tier"; cat "$work/plan-stage2-bf16.txt"; }
grep -q "optimizer state in $nvdir/zp-.*-rank0.optim .*(O_DIRECT)" "$work/nv-none-bf16.log" &&
  ok "$(grep -o 'optimizer state in .*' "$work/nv-none-bf16.log" | head -1 | cut -c1-200)" || { bad "no O_DIRECT state-file line"; grep offload_nvme "$work/nv-none-bf16.log"; }
left=$(ls -A "$nvdir" | grep -v lost+found)
[ -z "$left" ] && ok "no state file left in $nvdir" || bad "left in $nvdir: $left"

# ---- 1b. parameter offload (stage 3) ----
ptiers() { # ref off prec steps plan-output
  python3 - "$work/$1/metrics.jsonl" "$work/$2/metrics.jsonl" "$3" "$4" "$5" <<'EOF' || fail=1
import json, math, re, sys
ref = json.loads(open(sys.argv[1]).read().splitlines()[-1])["tiers"]
off = json.loads(open(sys.argv[2]).read().splitlines()[-1])["tiers"]
prec, steps, sub = sys.argv[3], int(sys.argv[4]), 2048   # sub-groups of 2048 elements with parameters
held = nsub = 0
shards = []   # held elements of each group, in order
for line in open(sys.argv[5]):
    m = re.match(r"\s+(embed|block\.\d+|head)\s+(\d+)\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$", line)
    if not m: continue
    padded, param = int(m.group(3)), m.group(4)
    if param != "S/nvme": print("FAIL: plan puts PARAM of", m.group(1), "on", param); sys.exit(1)
    h = padded // 2
    held += h; nsub += math.ceil(h / sub); shards.append(h)
g, c, n = off["gpu"], off["cpu"], off["nvme"]
ps = 2 if prec == "bf16" else 4
fetch = sum(shards) + sum(shards[1:])   # forward gathers every group, backward all but the embedding
errs = []
def want(what, got, exp):
    if got != exp: errs.append(f"{what} = {got}, expected {exp}")
want("device PARAM", g["PARAM"], 0); want("cpu PARAM", c["PARAM"], 0)
want("nvme PARAM", n["PARAM"], ps * held); want("nvme PARAM vs reference device PARAM", n["PARAM"], ref["gpu"]["PARAM"])
want("device MASTER", g["MASTER"], 0); want("nvme OPTIM", n["OPTIM"], 8 * held)
want("nvme bytes read", n["io_read"], steps * 12 * held + steps * fetch * ps)
want("nvme bytes written", n["io_write"], (steps + 1) * (12 + ps) * held)
want("nvme requests", n["io_ops"], nsub * (2 * steps + 3) + steps * (nsub + 2 * len(shards) - 1) + nsub)
want("host parameter bytes (none: the update writes the file)", c["io_read"], 0)
if errs: print("FAIL: " + sys.argv[2] + ": " + "; ".join(errs)); sys.exit(1)
print(f"ok   parameter tiers: nvme PARAM {n['PARAM']} B (= reference device shards), device PARAM 0; file {n['io_read']} B read "
      f"({steps * fetch * ps} B of them by {steps * (2 * len(shards) - 1)} gathers) / {n['io_write']} B written in {n['io_ops']} requests")
EOF
}
PV=(zero.plugin=stage3 "${NV[@]}" offload.param.plugin=offload_nvme offload.param.path="$nvdir" offload.param.block_size=4096
  offload.param.queue_depth=4)
for prec in fp32 bf16; do
  run "par-$prec" 2 train.precision=$prec "${PV[@]}" || continue
  compare "ref-$prec" "par-$prec" "offload_nvme parameters + optimizer, stage3 vs no offload, $prec, 2 ranks (bitwise)"
  psets=()
  for s in train.precision=$prec "${PV[@]}"; do psets+=(--set "$s"); done
  "$zp" plan "$cfg" --world 2 "${psets[@]}" > "$work/plan-par-$prec.txt" 2>&1 || { bad "zp plan par $prec"; cat "$work/plan-par-$prec.txt"; }
  ptiers "ref-stage3-$prec" "par-$prec" $prec $steps "$work/plan-par-$prec.txt"
done
grep -q "parameter shards in $nvdir/zp-.*-rank0.param .*(O_DIRECT)" "$work/par-bf16.log" &&
  ok "$(grep -o 'parameter shards in .*' "$work/par-bf16.log" | head -1 | cut -c1-200)" || { bad "no O_DIRECT parameter-file line"; grep offload_nvme "$work/par-bf16.log"; }
run par-persist 2 train.precision=bf16 "${PV[@]}" zero.persist_threshold=5000 &&
  { grep -qE "^\[rank 0\]   head .* R/gpu " "$work/par-persist.log" && grep -qE "^\[rank 0\]   block.0 .* S/nvme " "$work/par-persist.log" ||
    bad "persist_threshold 5000: head not R/gpu or block.0 not S/nvme"; } &&
  compare ref-bf16 par-persist "parameter offload with persistent small groups on the device (bitwise)"
ZP_AIO_NO_URING=1 run par-threads 2 train.precision=bf16 "${PV[@]}" && compare ref-bf16 par-threads "parameter offload, thread-pool fallback (bitwise)"
P8=(train.precision=bf16 train.steps=8 "${PV[@]}")
run par-full 2 "${P8[@]}"
run par-part 2 "${P8[@]}" train.hooks="$work/stop4.lua" ckpt.async=true train.checkpoint_every=2
run par-part 2 "${P8[@]}" train.resume=auto && grep -q "resumed from .*ckpt_00000004 at step 4" "$work/par-part.log" &&
  compare par-full par-part "parameter offload: stopped at 4 (async saves) + resumed to 8 vs uninterrupted (bitwise)" ckpt_00000008
run par-noff 2 train.precision=bf16 train.steps=8 zero.plugin=stage3 train.hooks="$work/stop4.lua"
run par-noff 2 "${P8[@]}" train.resume=auto && grep -q "resumed from .*ckpt_00000004 at step 4" "$work/par-noff.log" &&
  compare par-full par-noff "stage3 checkpoint without offload resumed with parameter offload to 8 vs uninterrupted (bitwise)" ckpt_00000008
# the 2-rank parameter-offload checkpoint at step 4, resumed at 3 ranks (reshard) with and without
# parameter offload: the same bits
for v in dev par; do mkdir -p "$work/prs-$v" && cp -r "$work/par-part/ckpt_00000004" "$work/prs-$v/"; done
PRS=(train.precision=bf16 zero.plugin=stage3 train.steps=6 train.resume=auto)
if run prs-dev 3 "${PRS[@]}" && run prs-par 3 "${PRS[@]}" "${PV[@]}" && grep -q "resumed from .*ckpt_00000004 at step 4" "$work/prs-par.log"; then
  compare prs-dev prs-par "2-rank parameter-offload checkpoint resumed at 3 ranks: parameter offload vs device (bitwise)" ckpt_00000006
fi
left=$(ls -A "$nvdir" | grep -v lost+found)
[ -z "$left" ] && ok "no state or parameter file left in $nvdir" || bad "left in $nvdir: $left"

# ---- 1c. offload.optimizer.host_ratio: the first groups' state in host memory, the rest in the file ----
hrtiers() { # ref off steps plan-output host_ratio log
  python3 - "$work/$1/metrics.jsonl" "$work/$2/metrics.jsonl" "$3" "$4" "$5" "$work/$6" "$SUB" <<'EOF' || fail=1
import json, math, re, sys
ref = json.loads(open(sys.argv[1]).read().splitlines()[-1])["tiers"]
off = json.loads(open(sys.argv[2]).read().splitlines()[-1])["tiers"]
steps, hr, sub = int(sys.argv[3]), float(sys.argv[5]), int(sys.argv[7])
hs = []   # held elements per group, in file (forward) order
for line in open(sys.argv[4]):
    m = re.match(r"\s+(embed|block\.\d+|head)\s+(\d+)\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$", line)
    if not m: continue
    padded, optim = int(m.group(3)), m.group(7)
    if not optim.endswith("/nvme"): print("FAIL: plan puts OPTIM of", m.group(1), "on", optim); sys.exit(1)
    hs.append(padded // 2 if optim.startswith("S/") else padded)   # 2 ranks
# the resident prefix: groups in file order while their cumulative held stays <= host_ratio x total
cap, res, nres = hr * sum(hs), 0, 0
while nres < len(hs) and res + hs[nres] <= cap: res += hs[nres]; nres += 1
held = sum(hs); fh = held - res
nsub = sum(math.ceil(h / sub) for h in hs); fsub = sum(math.ceil(h / sub) for h in hs[nres:])
g, c, n = off["gpu"], off["cpu"], off["nvme"]
errs = []
def want(what, got, exp):
    if got != exp: errs.append(f"{what} = {got}, expected {exp}")
log = open(sys.argv[6]).read()
lm = re.search(r"host_ratio [0-9.e+-]+: (\d+) of (\d+) groups \((\d+) of (\d+) elements", log)
if nres:
    if not lm: errs.append("no host_ratio line in the log")
    else: want("plugin's resident groups / elements", tuple(map(int, lm.groups())), (nres, len(hs), res, held))
want("device MASTER", g["MASTER"], 0); want("device OPTIM", g["OPTIM"], 0)
want("cpu MASTER", c["MASTER"], 4 * res); want("cpu OPTIM", c["OPTIM"], 8 * res)
want("nvme MASTER", n["MASTER"], 4 * fh); want("nvme OPTIM", n["OPTIM"], 8 * fh)
want("cpu + nvme OPTIM vs reference device OPTIM", c["OPTIM"] + n["OPTIM"], ref["gpu"]["OPTIM"])
want("nvme bytes read", n["io_read"], steps * 12 * fh)
want("nvme bytes written", n["io_write"], (steps + 1) * 12 * fh)
want("nvme requests", n["io_ops"], fsub * (2 * steps + 3))
want("gradient bytes to host", c["io_write"], steps * held * 4)
want("host transfers", c["io_ops"], 2 * steps * nsub)
if errs: print("FAIL: " + sys.argv[2] + ": " + "; ".join(errs)); sys.exit(1)
print(f"ok   host_ratio {hr}: {nres} of {len(hs)} groups resident: cpu MASTER {c['MASTER']} OPTIM {c['OPTIM']} B ({res} elements), "
      f"nvme MASTER {n['MASTER']} OPTIM {n['OPTIM']} B ({fh} elements); file {n['io_read']} B read / {n['io_write']} B written "
      f"in {n['io_ops']} requests ({fsub} of {nsub} sub-groups in the file)")
EOF
}
for hr in 0.5 1.0; do
  for st in stage2 stage3; do
    run "hr$hr-$st" 2 train.precision=fp32 zero.plugin=$st "${NV[@]}" offload.optimizer.host_ratio=$hr || continue
    compare "ref-fp32" "hr$hr-$st" "offload_nvme host_ratio $hr + $st vs no offload, fp32, 2 ranks (bitwise)"
    psets=()
    for s in train.precision=fp32 zero.plugin=$st "${NV[@]}" offload.optimizer.host_ratio=$hr; do psets+=(--set "$s"); done
    "$zp" plan "$cfg" --world 2 "${psets[@]}" > "$work/plan-hr$hr-$st.txt" 2>&1 || { bad "zp plan host_ratio $hr $st"; cat "$work/plan-hr$hr-$st.txt"; }
    hrtiers "ref-$st-fp32" "hr$hr-$st" $steps "$work/plan-hr$hr-$st.txt" $hr "hr$hr-$st.log"
  done
done
grep -q "optimizer state in " "$work/hr1.0-stage2.log" && bad "host_ratio 1: a state file was opened" || ok "host_ratio 1: no state file opened"
# checkpoints through the resident part: stop at 4 + resume to 8 equals the uninterrupted run
H8=(train.precision=fp32 zero.plugin=stage2 train.steps=8 "${NV[@]}" offload.optimizer.host_ratio=0.5)
run hr-full 2 "${H8[@]}"
run hr-part 2 "${H8[@]}" train.hooks="$work/stop4.lua" train.checkpoint_every=2
run hr-part 2 "${H8[@]}" train.resume=auto && grep -q "resumed from .*ckpt_00000004 at step 4" "$work/hr-part.log" &&
  compare hr-full hr-part "host_ratio 0.5: stopped at 4 + resumed to 8 vs uninterrupted (bitwise)" ckpt_00000008
# bf16 (stage 3), and host_ratio under partial offload (offload.optimizer.ratio 0.5, stage 2,
# bf16): the same bits as no offload, and the state split three ways where both apply (the
# device keeps the first groups by ratio, the host the first of the tier's by host_ratio)
hrsplit() { # ref run want-gpu-state(0|1)
  python3 - "$work/$1/metrics.jsonl" "$work/$2/metrics.jsonl" "$3" <<'EOF2' || fail=1
import json, sys
ref = json.loads(open(sys.argv[1]).read().splitlines()[-1])["tiers"]
off = json.loads(open(sys.argv[2]).read().splitlines()[-1])["tiers"]
errs = []
for cat in ("MASTER", "OPTIM"):
    parts = {t: off.get(t, {}).get(cat, 0) for t in ("gpu", "cpu", "nvme")}
    if sum(parts.values()) != ref["gpu"][cat]: errs.append(f"{cat} {parts} does not add up to the reference's {ref['gpu'][cat]}")
    if not parts["cpu"] or not parts["nvme"]: errs.append(f"{cat} {parts}: host and file should both hold some")
    if (parts["gpu"] > 0) != (sys.argv[3] == "1"): errs.append(f"{cat} {parts}: device part {'missing' if sys.argv[3] == '1' else 'unexpected'}")
if errs: print("FAIL: " + sys.argv[2] + ": " + "; ".join(errs)); sys.exit(1)
print("ok   " + sys.argv[2].split("/")[-2] + ": " + ", ".join(f"{t} {off.get(t, {}).get('OPTIM', 0)}" for t in ("gpu", "cpu", "nvme")) + " OPTIM bytes")
EOF2
}
run hr-bf16-stage3 2 train.precision=bf16 zero.plugin=stage3 "${NV[@]}" offload.optimizer.host_ratio=0.5 &&
  compare ref-stage3-bf16 hr-bf16-stage3 "offload_nvme host_ratio 0.5 + stage3 vs no offload, bf16, 2 ranks (bitwise)" &&
  hrsplit ref-stage3-bf16 hr-bf16-stage3 0
run hr-ratio 2 train.precision=bf16 zero.plugin=stage2 "${NV[@]}" offload.optimizer.ratio=0.5 offload.optimizer.host_ratio=0.5 &&
  compare ref-bf16 hr-ratio "offload_nvme ratio 0.5 + host_ratio 0.5 + stage2 vs no offload, bf16 (bitwise)" &&
  hrsplit ref-stage2-bf16 hr-ratio 1
left=$(ls -A "$nvdir" | grep -v lost+found)
[ -z "$left" ] && ok "no state file left in $nvdir (host_ratio)" || bad "left in $nvdir: $left"

# ---- 2. thread-pool fallback, resumed short transfers / EINTR ----
# partial offload: the first groups keep MASTER/OPTIM on the device, the rest live in the file
run nv-ratio 2 train.precision=bf16 zero.plugin=stage2 "${NV[@]}" offload.optimizer.ratio=0.5 &&
  compare ref-bf16 nv-ratio "offload_nvme ratio 0.5 + stage2 vs no offload (bitwise)"
if ZP_AIO_NO_URING=1 run nv-threads 2 train.precision=bf16 zero.plugin=stage2 "${NV[@]}"; then
  grep -q "io_uring unavailable.*using a pread/pwrite thread pool" "$work/nv-threads.log" && grep -q "threads pread/pwrite (O_DIRECT)" "$work/nv-threads.log" &&
    ok "ZP_AIO_NO_URING=1: $(grep -o 'io_uring unavailable[^:]*' "$work/nv-threads.log" | head -1)" || { bad "fallback not reported"; grep offload_nvme "$work/nv-threads.log"; }
  compare ref-bf16 nv-threads "thread-pool fallback vs no offload (bitwise)"
fi
for f in short eintr; do
  ZP_AIO_FAULT=$f run "nv-$f" 2 train.precision=bf16 zero.plugin=stage1 "${NV[@]}" && compare ref-bf16 "nv-$f" "ZP_AIO_FAULT=$f (resumed) vs no offload (bitwise)"
done

# ---- 3. checkpoints: resume, from a no-offload checkpoint, reshard ----
R=(train.precision=bf16 zero.plugin=stage2 train.steps=8)
run full 2 "${R[@]}" "${NV[@]}"
run part 2 "${R[@]}" "${NV[@]}" train.hooks="$work/stop4.lua" ckpt.async=true train.checkpoint_every=2
grep -q "stopped by on_step hook after step 4" "$work/part.log" || bad "the hook did not stop the nvme run at step 4"
run part 2 "${R[@]}" "${NV[@]}" train.resume=auto && grep -q "resumed from .*ckpt_00000004 at step 4" "$work/part.log" &&
  compare full part "nvme: stopped at 4 (async saves) + resumed to 8 vs uninterrupted (bitwise)" ckpt_00000008
run noff 2 "${R[@]}" train.hooks="$work/stop4.lua"
run noff 2 "${R[@]}" "${NV[@]}" train.resume=auto && grep -q "resumed from .*ckpt_00000004 at step 4" "$work/noff.log" &&
  compare full noff "no-offload checkpoint at 4 resumed with offload_nvme to 8 vs uninterrupted (bitwise)" ckpt_00000008
for v in dev nv; do
  mkdir -p "$work/rs-$v" && cp -r "$work/part/ckpt_00000004" "$work/rs-$v/"
done
RS=(train.precision=bf16 zero.plugin=stage1 train.steps=6 train.resume=auto)
if run rs-dev 3 "${RS[@]}" && run rs-nv 3 "${RS[@]}" "${NV[@]}"; then
  compare rs-dev rs-nv "2-rank stage2 nvme checkpoint resumed at 3 ranks stage1: nvme vs device (bitwise)" ckpt_00000006
fi

# ---- 4. errors ----
expect() { # what pattern cmd...   (must fail, with the pattern in its output)
  local what=$1 pat=$2 out; shift 2
  if out=$("$@" 2>&1); then bad "$what: accepted"; return; fi
  if grep -qE -- "$pat" <<<"$out"; then ok "$what: $(grep -E -- "$pat" <<<"$out" | head -1 | sed 's/^\[rank [0-9]\] //' | cut -c1-230)"
  else bad "$what: message does not match /$pat/:"; tail -5 <<<"$out"; fi
}
T=("$zp" train "$cfg" --set train.out_dir="$work/err" --set offload.optimizer.plugin=offload_nvme)
expect "missing path" "offload.optimizer.path = \"$work/nope\": No such file or directory: create the directory" "${T[@]}" --set offload.optimizer.path="$work/nope"
touch "$work/afile"
expect "a file as path" "offload.optimizer.path = \"$work/afile\" is not a directory" "${T[@]}" --set offload.optimizer.path="$work/afile"
if [ "$(stat -f -c %T /dev/shm 2> /dev/null)" = tmpfs ]; then
  expect "tmpfs" "is on tmpfs, which keeps files in memory" "${T[@]}" --set offload.optimizer.path=/dev/shm
fi
expect "disk too small (plan)" "the nvme tier needs [0-9.]+ GB \([0-9]+ bytes\) on that filesystem, 8 ranks x [0-9.]+ GB .* but it has [0-9.e+-]+ GB \([0-9]+ bytes\) free" \
  "$zp" plan "$cfg" --world 8 --set offload.optimizer.plugin=offload_nvme --set offload.optimizer.path="$nvdir" \
  --set model.n_layer=96 --set model.d_model=12288 --set model.n_head=96
expect "host staging cap" "staging needs [0-9.e-]+ GB of host memory per rank .*max_host_gb = 1e-05" \
  "$zp" plan "$cfg" --set offload.optimizer.plugin=offload_nvme --set offload.optimizer.path="$nvdir" --set offload.optimizer.max_host_gb=0.00001
expect "host_ratio 1.5 (schema)" "offload.optimizer.host_ratio = 1.5 is out of range \\[0, 1\\]" \
  "$zp" plan "$cfg" "${NVS[@]}" --set offload.optimizer.host_ratio=1.5
expect "host_ratio above max_host_gb" "needs [0-9.e-]+ GB of host memory per rank: [0-9.e-]+ GB of optimizer state kept in host memory \\(offload.optimizer.host_ratio = 0.5: 1 group, 12 bytes x [0-9]+ elements\\) .*max_host_gb = 0.0001" \
  "$zp" plan "$cfg" "${NVS[@]}" --set offload.optimizer.host_ratio=0.5 --set offload.optimizer.max_host_gb=0.0001
expect "host_ratio with parameter offload" "offload.optimizer.host_ratio = 0.5 with offload.param.plugin = \"offload_nvme\": .*not supported" \
  "$zp" plan "$cfg" --set zero.plugin=stage3 "${NVS[@]}" --set offload.param.plugin=offload_nvme --set offload.param.path="$nvdir" \
  --set offload.optimizer.host_ratio=0.5
expect "parameter offload without the optimizer" "offload.param.plugin = \"offload_nvme\" needs offload.optimizer.plugin = \"offload_nvme\" too" \
  "$zp" plan "$cfg" --set zero.plugin=stage3 --set offload.param.plugin=offload_nvme --set offload.param.path="$nvdir"
expect "parameter offload with ratio 0.5" "with offload.optimizer.ratio = 0.5: .*use ratio = 1 with parameter offload" \
  "$zp" plan "$cfg" --set zero.plugin=stage3 "${NVS[@]}" --set offload.param.plugin=offload_nvme --set offload.param.path="$nvdir" \
  --set offload.optimizer.ratio=0.5
expect "parameter offload without offload.param.path" "offload.param.plugin = \"offload_nvme\" needs offload.param.path" \
  "$zp" plan "$cfg" --set zero.plugin=stage3 "${NVS[@]}" --set offload.param.plugin=offload_nvme
expect "parameter offload with stage2" 'needs zero.plugin = "stage3"' \
  "$zp" plan "$cfg" --set zero.plugin=stage2 "${NVS[@]}" --set offload.param.plugin=offload_nvme --set offload.param.path="$nvdir"
expect "injected EIO on a parameter read (gather)" "offload_nvme: parameters of group 0 \(fetch for a gather\): read of [0-9]+ bytes at offset 0 of $nvdir/zp-.*-rank[01].param .*failed: Input/output error \(EIO\)" \
  env ZP_AIO_FAULT=eio_read@0 "$zp" launch -n 2 "$cfg" --set train.out_dir="$work/eio-par" --set zero.plugin=stage3 "${NVS[@]}" \
  --set offload.param.plugin=offload_nvme --set offload.param.path="$nvdir"
for d in read write; do
  expect "injected EIO on a $d" "offload_nvme: optimizer state of group [0-9]+, sub-group [0-9]+: $d of [0-9]+ bytes at offset [0-9]+ of $nvdir/zp-.*-rank[01].optim .*failed: Input/output error \(EIO\)" \
    env ZP_AIO_FAULT=eio_$d@20480 "$zp" launch -n 2 "$cfg" --set train.out_dir="$work/eio-$d" "${NVS[@]}"
done

# ---- 5. small filesystems: plan refusal, ENOSPC at preallocation, disk full while checkpointing ----
if make_ext4 "$work/small.img" "$work/small" 8M "-m 0"; then
  sm=$work/small
  echo "small ext4 (8 MiB) mounted with $how at $sm: $(df -B1 --output=avail "$sm" | tail -1 | tr -d ' ') bytes available"
  BIG=(--set model.d_model=128 --set model.n_head=2) # ~5 MB of state per rank: two ranks do not fit
  S=(--set offload.optimizer.plugin=offload_nvme --set offload.optimizer.path="$sm")
  expect "small disk (plan)" "offload.optimizer.path = \"$sm\": the nvme tier needs [0-9.e-]+ GB \([0-9]+ bytes\) on that filesystem, 2 ranks" \
    "$zp" launch -n 2 "$cfg" --set train.out_dir="$work/sm1" "${BIG[@]}" "${S[@]}"
  expect "small disk (ENOSPC at preallocation, plan check bypassed)" "cannot open its optimizer-state file: $sm/zp-.*-rank[01].optim: not enough space for a [0-9]+-byte file \(ENOSPC\)" \
    env ZP_NVME_NO_SPACE_CHECK=1 "$zp" launch -n 2 "$cfg" --set train.out_dir="$work/sm2" "${BIG[@]}" "${S[@]}"
  # parameter offload: the parameter files alone do not fit the small disk (the optimizer's do
  # fit the large one): refused at plan time naming offload.param.path; with the check bypassed,
  # ENOSPC at preallocation naming the .param file
  PBIG=(--set model.d_model=512 --set model.n_head=2 --set zero.plugin=stage3 --set offload.optimizer.plugin=offload_nvme
    --set offload.optimizer.path="$nvdir" --set offload.param.plugin=offload_nvme --set offload.param.path="$sm")
  expect "small disk for the parameter files (plan)" "offload.param.path = \"$sm\": the nvme tier needs [0-9.e-]+ GB \([0-9]+ bytes\) on that filesystem, 2 ranks x [0-9.e-]+ GB \(the parameter shards: 4 bytes x parameters held per rank\), but it has" \
    "$zp" launch -n 2 "$cfg" --set train.out_dir="$work/sm3" "${PBIG[@]}"
  expect "small disk for the parameter files (ENOSPC at preallocation)" "cannot open its parameter file: $sm/zp-.*-rank[01].param: not enough space for a [0-9]+-byte file \(ENOSPC\)" \
    env ZP_NVME_NO_SPACE_CHECK=1 "$zp" launch -n 2 "$cfg" --set train.out_dir="$work/sm4" "${PBIG[@]}"
  left=$(ls -A "$sm" | grep -v lost+found)
  [ -z "$left" ] && ok "nothing left on the small filesystem" || bad "left on $sm: $left"
  # disk full while checkpointing: state files and checkpoints share the small disk
  C=(train.precision=bf16 train.steps=4 train.checkpoint_every=1 train.keep_checkpoints=2)
  run ck-ref 1 "${C[@]}" "${NV[@]}" train.keep_checkpoints=10
  ckb=$(du -sb "$work/ck-ref/ckpt_00000001" | cut -f1)
  stb=$(python3 -c "import json; print(json.loads(open('$work/ck-ref/metrics.jsonl').read().splitlines()[-1])['tiers']['nvme']['OPTIM'] * 3 // 2)")
  freeb=$(( $(stat -f -c '%a * %S' "$sm") ))
  keep=$((stb + ckb * 3 / 2 + 256 * 1024)) # the state file, one checkpoint and a half, logs
  fallocate -l $((freeb - keep)) "$sm/filler" || bad "fallocate filler"
  echo "     state file $stb B, one checkpoint $ckb B; $(( $(stat -f -c '%a * %S' "$sm") )) B left free on $sm"
  CS=()
  for s in "${C[@]}"; do CS+=(--set "$s"); done
  if out=$("$zp" train "$cfg" --set train.out_dir="$sm/run" "${CS[@]}" "${S[@]}" --set offload.optimizer.block_size=4096 \
    --set offload.optimizer.queue_depth=4 --set offload.optimizer.buffer_count=3 2>&1); then
    bad "disk full while checkpointing: the run succeeded"
  elif grep -qE "ckpt_[0-9]+[^ ]*: .*(No space left on device|ENOSPC)" <<<"$out"; then
    ok "disk full while checkpointing: $(grep -E "No space left on device|ENOSPC" <<<"$out" | head -1 | cut -c1-200)"
    last=$(ls -d "$sm/run"/ckpt_* 2> /dev/null | grep -E '/ckpt_[0-9]+$' | tail -1) # not the failed save's .tmp
    if [ -n "$last" ] && o2=$("$zp" ckpt compare "$work/ck-ref/$(basename "$last")" "$last" --tol 0 2>&1); then
      ok "the previous checkpoint $(basename "$last") is complete and equal to the uninterrupted run's: $o2"
      rm -f "$sm/filler"
      mkdir -p "$work/ck-res" && cp -r "$last" "$work/ck-res/"
      run ck-res 1 "${C[@]}" "${NV[@]}" train.resume=auto && compare ck-ref ck-res "resumed from $(basename "$last") after the disk-full failure vs uninterrupted (bitwise)" ckpt_00000004
    else
      bad "previous checkpoint after disk full: ${last:-none}: ${o2:-}"
    fi
  else
    bad "disk full while checkpointing: no ENOSPC naming a file under $sm/run"; tail -5 <<<"$out"
  fi
else
  echo "SKIP small-filesystem checks (plan refusal on a small disk, ENOSPC, disk full while checkpointing): $how"
fi

[ $fail = 0 ] && echo "offload_nvme: all passed"
exit $fail
