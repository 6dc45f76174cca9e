#!/usr/bin/env bash
# equivalence.sh BUILD SRC SHARED: every ZeRO stage against the replicated reference on CPU
# ranks (zp launch, shared-memory collectives), fp32 and bf16 storage, 2, 3 and 4 ranks (3
# forces padding): per-step losses and final parameters must be bitwise identical (same
# arithmetic: fixed-order reductions, grad_accum 1, no clipping). Then 1, 2 and 4 ranks with
# the same global batch agree within 1e-4 after 4 AdamW steps at lr 1e-2 (the gradient sums
# run in another order, ~1e-7 relative; Adam's update m/sqrt(v) is insensitive to gradient
# scale, so near-zero gradients turn those into parameter differences up to ~3e-5 measured),
# and stage 2 with grad_accum 2 agrees with the replicated run within 1e-4 (it reduces every
# micro-batch, the replicated run once per step: another summation order, same Adam effect;
# measured 1.7e-5).
set -euo pipefail
build=$1; src=$2
zp=$build/zp
cfg=$src/tests/configs/equiv.toml
[ -f "$src/data/fortunes/train_000.bin" ] || { echo "FAIL: data/fortunes missing (run scripts/setup.sh)"; exit 1; }
work=$(mktemp -d /tmp/zp-equiv.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail=0
. "$src/tests/integration/lib/runs.sh" # run, close
compare() { # a b tol what
  local a=$1 b=$2 tol=$3 what=$4
  if [ "$tol" = 0 ] && ! cmp -s "$work/$a.losses" "$work/$b.losses"; then
    echo "FAIL: $what: losses differ"; paste "$work/$a.losses" "$work/$b.losses"; fail=1; return
  fi
  local out
  if out=$("$zp" ckpt compare "$(ls -d "$work/$a"/ckpt_* | tail -1)" "$(ls -d "$work/$b"/ckpt_* | tail -1)" --tol "$tol" 2>&1); then
    echo "ok   $what: $out"
  else
    echo "FAIL: $what: $out"; fail=1
  fi
}
for prec in fp32 bf16; do
  for n in 2 3 4; do
    run "ref-$prec-$n" "$n" train.precision=$prec || continue
    for st in stage1 stage2 stage3; do
      run "$st-$prec-$n" "$n" train.precision=$prec zero.plugin=$st || continue
      compare "ref-$prec-$n" "$st-$prec-$n" 0 "$st vs replicated, $prec, $n ranks (bitwise)"
    done
  done
done
# same global batch (8 sequences) on 1, 2, 4 ranks
run gb-1 1 train.micro_batch=8 && run gb-2 2 train.micro_batch=4 && run gb-4 4 train.micro_batch=2 && {
  compare gb-1 gb-2 1e-4 "1 vs 2 ranks, same global batch"
  compare gb-1 gb-4 1e-4 "1 vs 4 ranks, same global batch"
}
# stage 3 with a persistent (resident) small group, and stage 2 with accumulation
run s3-persist 2 zero.plugin=stage3 zero.persist_threshold=20000 && compare ref-fp32-2 s3-persist 0 "stage3 with resident groups vs replicated (bitwise)"
run acc-ref 2 train.grad_accum=2 && run acc-s2 2 train.grad_accum=2 zero.plugin=stage2 && compare acc-ref acc-s2 1e-4 "stage2 vs replicated, grad_accum 2"
# stage 1 all-reduces the gradients in buckets during the backward (zero.stage1_reduce =
# "allreduce"; "auto", the default, picks it only where the communicator overlaps it, not on CPU
# ranks) or reduce-scatters them at the step: the same bits either way, also with grad_accum 2
# (only the last micro-batch reduces) and small buckets
S1A=(zero.plugin=stage1 zero.stage1_reduce=allreduce)
run s1-ar 2 "${S1A[@]}" && compare ref-fp32-2 s1-ar 0 "stage1, all-reduce in the backward vs replicated (bitwise)"
run s1-bk 3 "${S1A[@]}" zero.bucket_mb=0.01 && compare ref-fp32-3 s1-bk 0 "stage1, 10 KiB all-reduce buckets in the backward vs replicated (bitwise)"
run s1-acc 2 "${S1A[@]}" train.grad_accum=2 && compare acc-ref s1-acc 0 "stage1 all-reduce vs replicated, grad_accum 2 (bitwise)"
run s1-rs 2 zero.plugin=stage1 zero.stage1_reduce=allreduce zero.overlap_comm=false && compare ref-fp32-2 s1-rs 0 "stage1, overlap_comm off: reduce-scatter at the step vs replicated (bitwise)"
# stages 2 and 3 start each group's reduce-scatter in the backward and finish it when its buffer
# is armed again (zero.overlap_comm, default) or reduce-scatter synchronously (false): the same
# bits, also with grad_accum 2 (a reduce-scatter per micro-batch, accumulated in order)
for st in stage2 stage3; do
  run "$st-sync" 2 zero.plugin=$st zero.overlap_comm=false && compare ref-fp32-2 "$st-sync" 0 "$st, synchronous reduce-scatters vs replicated (bitwise)"
  run "$st-acc2" 2 zero.plugin=$st train.grad_accum=2 && run "$st-acc2s" 2 zero.plugin=$st train.grad_accum=2 zero.overlap_comm=false &&
    compare "$st-acc2s" "$st-acc2" 0 "$st, grad_accum 2: started vs synchronous reduce-scatters (bitwise)"
done
# ... and which path ran, from the trace: all-reduces started in the backward, no reduce-scatter
# ("allreduce"); reduce-scatters and nothing started ("auto" here: the CPU communicator does not
# overlap)
s1path() { python3 -c 'import json, sys, collections
d = json.load(open(sys.argv[1])); ev = d["traceEvents"] if isinstance(d, dict) else d
c = collections.Counter(e.get("name") for e in ev); print(c["allreduce_start"], c["reduce_scatter"])' "$work/$1/trace_rank0.json"; }
if run s1-tr 2 "${S1A[@]}" train.trace=true && run s1-trn 2 zero.plugin=stage1 train.trace=true; then
  read -r a1 r1 <<< "$(s1path s1-tr)"; read -r a2 r2 <<< "$(s1path s1-trn)"
  if [ "$a1" -gt 0 ] && [ "$r1" = 0 ] && [ "$a2" = 0 ] && [ "$r2" -gt 0 ]; then
    echo "ok   stage1 paths (trace): allreduce: $a1 all-reduces started, 0 reduce-scatters; auto on CPU ranks: 0 started, $r2 reduce-scatters"
  else
    echo "FAIL: stage1 paths (trace): on: $a1 started / $r1 reduce-scatters; off: $a2 / $r2"; fail=1
  fi
fi
rspath() { python3 -c 'import json, sys, collections
d = json.load(open(sys.argv[1])); ev = d["traceEvents"] if isinstance(d, dict) else d
c = collections.Counter(e.get("name") for e in ev); print(c["reduce_scatter_start"], c["reduce_scatter"], c["allgather_start"], c["allgather"])' "$work/$1/trace_rank0.json"; }
if run s2-tr 2 zero.plugin=stage2 train.trace=true && run s2-trn 2 zero.plugin=stage2 zero.overlap_comm=false train.trace=true; then
  read -r a1 r1 g1 p1 <<< "$(rspath s2-tr)"; read -r a2 r2 g2 p2 <<< "$(rspath s2-trn)"
  # the step's parameter all-gathers are started after each group's update, none synchronous
  if [ "$a1" -gt 0 ] && [ "$r1" = 0 ] && [ "$a2" = 0 ] && [ "$r2" -gt 0 ] && [ "$g1" -gt 0 ] && [ "$p1" = 0 ]; then
    echo "ok   stage2 paths (trace): overlap on: $a1 reduce-scatters started, 0 synchronous; off: 0 started, $r2 synchronous; $g1 parameter all-gathers started, 0 synchronous"
  else
    echo "FAIL: stage2 paths (trace): on: $a1 started / $r1 synchronous, all-gathers $g1 started / $p1; off: $a2 / $r2"; fail=1
  fi
fi
# stage 3 starts the next group's parameter all-gather while the current group computes
if run s3-tr 2 zero.plugin=stage3 train.trace=true; then
  read -r a3 r3 g3 p3 <<< "$(rspath s3-tr)"
  if [ "$g3" -gt 0 ] && [ "$a3" -gt 0 ]; then
    echo "ok   stage3 paths (trace): $g3 parameter all-gathers started ahead ($p3 synchronous), $a3 reduce-scatters started"
  else
    echo "FAIL: stage3 paths (trace): $g3 all-gathers started ahead, $a3 reduce-scatters started"; fail=1
  fi
  compare stage3-fp32-2 s3-tr 0 "stage3 traced run vs untraced (bitwise)"
fi
# zero.prefetch_groups = k: the forward starts the next k groups' all-gathers before group 0
# computes (0: none started, every gather synchronous); the same bits at every depth
ahead0() { python3 -c 'import json, sys
d = json.load(open(sys.argv[1])); ev = d["traceEvents"] if isinstance(d, dict) else d
ev = sorted((e for e in ev if "ts" in e), key=lambda e: e["ts"]); n = 0
for e in ev:
    if e.get("name") == "forward": break
    n += e.get("name") == "allgather_start"
print(n)' "$work/$1/trace_rank0.json"; }
for k in 0 3; do
  run "s3-pf$k" 2 zero.plugin=stage3 train.trace=true zero.prefetch_groups=$k || continue
  read -r a r g p <<< "$(rspath "s3-pf$k")"
  n=$(ahead0 "s3-pf$k"); n1=$(ahead0 s3-tr)
  if [ "$n" = "$k" ] && [ "$n1" = 1 ] && { [ "$k" != 0 ] || [ "$g" = 0 ]; }; then
    echo "ok   stage3 prefetch_groups $k: $n all-gathers started before group 0's forward (default 1: $n1); $g started, $p synchronous per run"
  else
    echo "FAIL: stage3 prefetch_groups $k: $n started before group 0's forward (want $k; default gave $n1), $g started, $p synchronous"; fail=1
  fi
  compare stage3-fp32-2 "s3-pf$k" 0 "stage3, prefetch_groups $k vs 1 (bitwise)"
done
# buckets and overlap change when the replicated reduction runs, never its numbers
run bk-small 3 zero.bucket_mb=0.01 && compare ref-fp32-3 bk-small 0 "replicated, 10 KiB buckets (bitwise)"
run bk-large 3 zero.bucket_mb=1000 && compare ref-fp32-3 bk-large 0 "replicated, one bucket (bitwise)"
run bk-nooverlap 3 zero.overlap_comm=false && compare ref-fp32-3 bk-nooverlap 0 "replicated, reduce at the step (bitwise)"
# optimizer overlap (train.overlap_optimizer, default on: the replicated strategy's AdamW on the
# backend's side stream, each group's gradient zeroed at its next forward instead of at the
# step's start): off gives the same bits, at grad_accum 1 and 2 and with validation passes
# between steps (a missing zeroing would add the last step's gradient: the losses would differ)
run ov-off 3 train.overlap_optimizer=false && compare ref-fp32-3 ov-off 0 "replicated, optimizer overlap off vs on (bitwise)"
V=(train.grad_accum=2 train.val_every=2 train.val_batches=2 data.val="$src/data/fortunes/val_000.bin")
run ov-acc-on 2 "${V[@]}" && grep -q "val" "$work/ov-acc-on/metrics.jsonl" && run ov-acc-off 2 "${V[@]}" train.overlap_optimizer=false &&
  compare ov-acc-on ov-acc-off 0 "replicated, grad_accum 2 + validation, optimizer overlap on vs off (bitwise)"
# the gradient norm's sums started during the backward (train.overlap_norm, default off; ABI 1.9
# sumsq_start / sumsq_collect) give the norm of the sums at the step bit for bit: with clipping
# on (grad_clip 0.05 < the norm, so the norm scales every update), per strategy on 2 ranks and
# with grad_accum 2 (only the last micro-batch's reports start sums), on vs off, bitwise
for st in none stage1 stage2 stage3; do
  run "nc-$st-on" 2 zero.plugin=$st train.grad_clip=0.05 train.overlap_norm=true && run "nc-$st-off" 2 zero.plugin=$st train.grad_clip=0.05 train.overlap_norm=false &&
    compare "nc-$st-on" "nc-$st-off" 0 "$st, grad_clip 0.05: norm sums started during the backward vs at the step (bitwise)"
  # every group's sum came from a start (so the comparison above did test them), none when off
  l=$(grep -o "gradient norm: [0-9]* of [0-9]* sums of squares started beside the backward" "$work/nc-$st-on.log" | head -1)
  if [[ "$l" =~ ^gradient\ norm:\ ([0-9]+)\ of\ ([0-9]+) ]] && [ "${BASH_REMATCH[1]}" = "${BASH_REMATCH[2]}" ] && [ "${BASH_REMATCH[1]}" -gt 0 ] &&
    ! grep -q "sums of squares started beside" "$work/nc-$st-off.log"; then
    echo "ok   $st: $l"
  else
    echo "FAIL: $st: the norm's sums were not all started during the backward: '${l:-no summary line}'"; fail=1
  fi
done
run nc-acc-on 2 zero.plugin=stage2 train.grad_clip=0.05 train.grad_accum=2 train.overlap_norm=true &&
  run nc-acc-off 2 zero.plugin=stage2 train.grad_clip=0.05 train.grad_accum=2 train.overlap_norm=false &&
  compare nc-acc-on nc-acc-off 0 "stage2, grad_accum 2, grad_clip 0.05: norm sums started during the backward vs at the step (bitwise)"
# gradients written by each block's first backward (train.grad_overwrite, default on; ABI 1.8)
# instead of zeroed and accumulated: off gives the same bits, with the optimizer overlap on and
# off, at grad_accum 2 with validation (a stale buffer left unwritten, or a second micro-batch
# that overwrote instead of adding, would change the losses), and for stage 3 (its own GRAD
# views: zeroed as before). The log says it is in use, and the op profile counts L (= 2) fewer
# memset0 calls per step, so a run that silently kept zeroing cannot pass.
run go-off 3 train.grad_overwrite=false && compare ref-fp32-3 go-off 0 "replicated, grad_overwrite off vs on (bitwise)"
run go-off-ov 3 train.grad_overwrite=false train.overlap_optimizer=false && compare ref-fp32-3 go-off-ov 0 "replicated, grad_overwrite and optimizer overlap off vs both on (bitwise)"
run go-acc-off 2 "${V[@]}" train.grad_overwrite=false && compare ov-acc-on go-acc-off 0 "replicated, grad_accum 2 + validation, grad_overwrite on vs off (bitwise)"
run go-s3-off 2 zero.plugin=stage3 train.grad_overwrite=false && compare stage3-fp32-2 go-s3-off 0 "stage3, grad_overwrite off vs on (bitwise)"
if grep -q "gradients: 2 of 4 groups written by the step's first backward" "$work/ref-fp32-3.log"; then
  echo "ok   grad_overwrite: in use (log)"
else
  echo "FAIL: grad_overwrite: the default run does not report it in use"; fail=1
fi
if grep -q "gradients: .* groups written" "$work/go-off.log"; then echo "FAIL: grad_overwrite=false still reports it in use"; fail=1; fi
memsets() { grep -E '\| memset0 \|' "$work/$1.log" | head -1 | awk -F'|' '{gsub(/ /, "", $3); print $3}'; }
run go-prof-on 1 train.profile_ops=true && run go-prof-off 1 train.profile_ops=true train.grad_overwrite=false && {
  on=$(memsets go-prof-on); off=$(memsets go-prof-off)
  if [ -n "$on" ] && [ -n "$off" ] && awk -v a="$on" -v b="$off" 'BEGIN{exit !(b - a == 2)}'; then
    echo "ok   grad_overwrite: memset0 calls per step $on (on) vs $off (off)"
  else
    echo "FAIL: grad_overwrite: memset0 calls per step '$on' (on) vs '$off' (off), want 2 fewer"; fail=1
  fi
  compare go-prof-on go-prof-off 0 "1 rank, profiled, grad_overwrite on vs off (bitwise)"
}
# Memory: a real run's ledger (model states after the step, rank 0, from metrics.jsonl) against
# the ZeRO formulas within 1%, at 2, 3 and 4 ranks. A 6.9M-parameter model so that the shard
# padding (at most N x 2048 elements per group) stays far below 1%. bf16: P=2 G=2 K=12.
for n in 2 3 4; do
  for st in none stage1 stage2 stage3; do
    name=mem-$st-$n
    run "$name" "$n" zero.plugin=$st train.precision=bf16 model.d_model=512 model.n_head=8 model.seq_len=16 train.steps=1 train.micro_batch=1 || continue
    line=$(grep '"step":1,' "$work/$name/metrics.jsonl")
    got=$(echo "$line" | python3 -c 'import json,sys; m=json.loads(sys.stdin.read())["mem"]; print(m["PARAM"]+m["GRAD"]+m["MASTER"]+m["OPTIM"])')
    psi=$(grep -o '[0-9]* parameters' "$work/$name.log" | head -1 | grep -o '[0-9]*')
    want=$(awk -v s=$st -v n=$n -v p="$psi" 'BEGIN{P=2;G=2;K=12; if(s=="none")w=(P+G+K)*p; else if(s=="stage1")w=(P+G)*p+K*p/n; else if(s=="stage2")w=P*p+(G+K)*p/n; else w=(P+G+K)*p/n; printf "%.0f", w}')
    if awk -v g="$got" -v w="$want" 'BEGIN{r=(g-w)/w; exit !(r>=0 && r<0.01)}'; then
      echo "ok   memory $st, $n ranks: $got bytes of model state per rank vs formula $want"
    else
      echo "FAIL: memory $st, $n ranks: $got bytes vs formula $want"; fail=1
    fi
  done
done
[ $fail = 0 ] && echo "equivalence: all passed"
exit $fail
