#!/usr/bin/env bash
# ckpt_crash.sh BUILD SRC SHARED: checkpoints survive crashes (2 CPU ranks, ZeRO stage 3, bf16
# storage with fp32 master weights; tests/configs/equiv.toml).
#  1. Named crash points (ZP_CRASH_AT=name[:n][@rank] makes the process SIGKILL itself the n-th
#     time it reaches the point): mid-step, after a piece (shard) write, after a rank file,
#     before the rename, during asynchronous staging, in the asynchronous writer, before the
#     asynchronous rename. Each time the launcher fails cleanly (non-zero, within a bound),
#     every directory that looks like a checkpoint verifies (`zp ckpt info`: complete, every
#     CRC), and a restart with resume ends with weights and Adam moments bitwise equal to the
#     uninterrupted run's.
#  2. A loop of SIGKILLs at random moments (a random rank, or both, killed by pid) with
#     checkpoints every 3 steps, half the attempts with ckpt.async: every checkpoint left
#     verifies, and after the restarts the final state is bitwise equal to the uninterrupted
#     run's.
#  3. A flipped byte, a truncated and a missing rank file are detected on resume and named
#     (file and tensor); only with ckpt.fallback = true does the resume fall back to the
#     previous complete checkpoint (with a warning), and then it still ends bitwise equal.
# Runs in well under 2 minutes on 2 cores.
set -uo pipefail
build=$1; src=$2
zp=$build/zp
cfg=$src/tests/configs/equiv.toml
[ -f "$src/data/fortunes/train_000.bin" ] || { echo "FAIL: data/fortunes missing (run scripts/setup.sh)"; exit 1; }
work=$(mktemp -d /tmp/zp-crash.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail=0
base=(--set zero.plugin=stage3 --set train.precision=bf16 --set train.resume=auto --set comm.timeout_s=3 --set train.log_every=1000)
run() { # out_dir steps extra... ; runs to completion or failure, output to out_dir.log
  local out=$1 steps=$2; shift 2
  timeout 120 "$zp" launch -n 2 "$cfg" "${base[@]}" --set train.steps="$steps" --set train.out_dir="$out" "$@" >> "$out.log" 2>&1
}
verify_all() { # every ckpt_* directory (not *.tmp) must be a complete, verifying checkpoint
  local d=$1 c ok=0
  for c in "$d"/ckpt_*; do
    case "$c" in *.tmp) continue ;; esac
    [ -d "$c" ] || continue
    if ! "$zp" ckpt info "$c" > "$c.info" 2>&1; then echo "FAIL: $c does not verify after a crash:"; cat "$c.info"; fail=1; ok=1; fi
    rm -f "$c.info"
  done
  return $ok
}
same() { # a b what
  local out
  if out=$("$zp" ckpt compare "$1" "$2" --tol 0 --state 2>&1 | tr '\n' ' '); then echo "ok   $3: $out"; else echo "FAIL: $3: $out"; fail=1; fi
}

# reference: 12 steps uninterrupted, checkpoint every 2 (keep 2)
ck=(--set train.checkpoint_every=2 --set train.keep_checkpoints=2)
run "$work/ref" 12 "${ck[@]}" || { echo "FAIL: reference run"; cat "$work/ref.log"; exit 1; }

# 1. named crash points
i=0
for spec in "mid_step:5" "mid_step:7@1" "after_shard_write:4" "after_rank_file:2@1" "before_rename:3" \
            "async:async_staging:4" "async:async_write:5@1" "async:before_rename:2"; do
  i=$((i + 1))
  extra=("${ck[@]}")
  point=$spec
  if [ "${spec%%:*}" = async ]; then extra+=(--set ckpt.async=true); point=${spec#async:}; fi
  d="$work/cp$i"
  t0=$(date +%s)
  ZP_CRASH_AT=$point run "$d" 12 "${extra[@]}"
  rc=$?
  took=$(( $(date +%s) - t0 ))
  name=${point%%[:@]*}
  if [ $rc = 0 ] || [ $rc = 124 ]; then echo "FAIL: $spec: launcher status $rc"; cat "$d.log"; fail=1; continue; fi
  grep -q "crash point '$name' reached" "$d.log" || { echo "FAIL: $spec: the crash point was not reached"; tail -5 "$d.log"; fail=1; continue; }
  [ $took -le 30 ] || { echo "FAIL: $spec: the launcher took ${took}s to fail"; fail=1; }
  verify_all "$d" || continue
  latest=$(ls -d "$d"/ckpt_???????? 2>/dev/null | tail -1)
  tmps=$(ls -d "$d"/ckpt_*.tmp 2>/dev/null | wc -l)
  run "$d" 12 "${extra[@]}" || { echo "FAIL: $spec: restart failed"; tail -20 "$d.log"; fail=1; continue; }
  same "$work/ref/ckpt_00000012" "$d/ckpt_00000012" \
    "$spec: died (status $rc, ${took}s; newest complete then: ${latest##*/}, $tmps unfinished .tmp), restarted, bitwise"
done

# 2. random SIGKILLs (450 steps, checkpoint every 3; the reference runs uninterrupted). The
#    launcher runs in the background; once the run has saved a checkpoint at least 3 to 27
#    steps (random) past where it started, after a further random 0-49 ms (a random moment of a
#    step, a save or an asynchronous write), one rank or both are killed by pid. Progress-based,
#    so the attempts land mid-run at any machine speed.
ck3=(--set train.checkpoint_every=3 --set train.keep_checkpoints=2)
S=450
run "$work/ref$S" $S "${ck3[@]}" || { echo "FAIL: $S-step reference"; tail "$work/ref$S.log"; exit 1; }
d="$work/loop"
newest() { local n; n=$(ls -d "$1"/ckpt_???????? 2>/dev/null | tail -1); n=${n##*_}; echo $((10#${n:-0})); }
kills=0; attempts=0; finished=0; at=""
for k in 1 2 3 4 5 6; do
  attempts=$((attempts + 1))
  extra=("${ck3[@]}")
  [ $((k % 2)) = 0 ] && extra+=(--set ckpt.async=true)
  target=$(( $(newest "$d") + 3 + RANDOM % 25 ))
  "$zp" launch -n 2 "$cfg" "${base[@]}" --set train.steps=$S --set train.out_dir="$d" "${extra[@]}" >> "$d.log" 2>&1 &
  lp=$!
  while kill -0 $lp 2>/dev/null && [ "$(newest "$d")" -lt $target ]; do sleep 0.01; done
  sleep "0.0$((RANDOM % 5))$((RANDOM % 10))"
  victims=$(pgrep -P $lp)
  if [ -n "$victims" ]; then
    if [ $((RANDOM % 3)) = 0 ]; then for v in $victims; do kill -KILL "$v" 2>/dev/null; done
    else kill -KILL "$(echo "$victims" | shuf -n 1)" 2>/dev/null; fi
  fi
  wait $lp
  rc=$?
  if [ $rc = 0 ]; then finished=1; break; fi
  kills=$((kills + 1))
  at="$at $(newest "$d")"
  verify_all "$d" || break
done
if pgrep -f "$d" > /dev/null; then echo "FAIL: processes of the kill loop left running"; fail=1; fi
if [ $finished = 0 ]; then
  run "$d" $S "${ck3[@]}" || { echo "FAIL: final restart of the kill loop"; tail -20 "$d.log"; fail=1; }
fi
resumes=$(grep -c "resumed from" "$d.log")
same "$work/ref$S/ckpt_00000$S" "$d/ckpt_00000$S" "random SIGKILL loop: $kills runs killed (newest complete checkpoint after each kill:$at), $resumes resumes, bitwise"
[ "$kills" -ge 6 ] || { echo "FAIL: only $kills of $attempts runs were killed mid-run (the loop tests too little)"; fail=1; }

# 3. corruption on resume: the kill-loop run continues to 453 from its ckpt_00000450
flip() { printf '\xff' | dd of="$1" bs=1 seek="$2" conv=notrunc 2>/dev/null; }
cp -r "$work/ref450" "$work/ref453" && run "$work/ref453" 453 "${ck3[@]}" || { echo "FAIL: 453-step reference"; fail=1; }
for what in flip truncate missing; do
  c="$work/c_$what"
  mkdir -p "$c" && cp -r "$d/ckpt_00000447" "$d/ckpt_00000450" "$c/"
  case $what in
    flip) flip "$c/ckpt_00000450/rank00001.bin" 100; want="rank00001.bin: checksum mismatch in tensor wte.weight (group embed, master" ;;
    truncate) truncate -s 5000 "$c/ckpt_00000450/rank00000.bin"; want="rank00000.bin: truncated: 5000 bytes, expected [0-9]*; the data is cut in tensor wte.weight" ;;
    missing) rm "$c/ckpt_00000450/rank00001.bin"; want="rank00001.bin: missing" ;;
  esac
  if run "$c" 453 "${ck3[@]}"; then echo "FAIL: $what: resumed from a damaged checkpoint"; fail=1
  elif grep -q "$want" "$c.log" && grep -q "ckpt.fallback" "$c.log"; then echo "ok   $what: resume refused: $(grep -o "ckpt_00000450/$want[^;]*" "$c.log" | head -1)"
  else echo "FAIL: $what: no /$want/ in the output"; tail -5 "$c.log"; fail=1; fi
  "$zp" ckpt info "$c/ckpt_00000450" > "$c.info" 2>&1 && { echo "FAIL: $what: zp ckpt info did not notice"; fail=1; }
  : > "$c.log"
  if run "$c" 453 "${ck3[@]}" --set ckpt.fallback=true && grep -q "resumed from .*ckpt_00000447 at step 447" "$c.log" \
     && grep -q "warning: ckpt.fallback" "$c.log"; then
    same "$work/ref453/ckpt_00000453" "$c/ckpt_00000453" "$what: ckpt.fallback resumed from step 447 (warning printed), bitwise at 453"
  else echo "FAIL: $what: fallback"; tail -8 "$c.log"; fail=1; fi
done
[ $fail = 0 ] && echo "ckpt_crash: all passed"
exit $fail
