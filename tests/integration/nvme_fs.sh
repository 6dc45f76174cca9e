#!/usr/bin/env bash
# nvme_fs.sh BUILD SRC SHARED: the NVMe engine (core/aio.c) and `zp nvme-bench` on ext4 file
# systems made here in loop files (mkfs.ext4 on a file, `mount -o loop`; fuse2fs where mounting
# is forbidden; where neither works, that part is skipped with the reason printed and the rest
# runs on the build directory's filesystem, never on tmpfs):
#  (a) test_aio's round-trips, splits, faults and page-cache checks on a 256 MiB ext4;
#  (b) disk full on an 8 MiB ext4: a file larger than the disk fails at open with ENOSPC and the
#      numbers; a preallocated file survives the disk filling up; a sparse file whose writes run
#      out of space mid-way reports ENOSPC with file and offset (test_aio's smallfs case);
#  (c) `zp nvme-bench DIR --size 0.06 --seconds 1`: the table, O_DIRECT shown in use and storage
#      reads equal to the bytes read, the test file removed, and the TOML snippet accepted by
#      `zp config` (values and origins checked); usage and runtime errors (missing directory,
#      bad --size, tmpfs) give the documented exit status and a message.
set -uo pipefail
build=$1; src=$2
T=$build/tests/test_aio
work=$(mktemp -d "${TMPDIR:-/tmp}/zp-nvme-fs.XXXXXX")
mounts=()
cleanup() {
  unmount_all
  rm -rf "$work"
}
trap cleanup EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
ok() { echo "ok   $*"; }
[ -x "$T" ] || { echo "FAIL: $T missing (build the tests)"; exit 1; }
[ -x "$build/zp" ] || { echo "FAIL: $build/zp missing"; exit 1; }

# make_ext4 IMG MNT SIZE (shared with offload_nvme.sh)
. "$src/tests/integration/lib/ext4.sh"
if [ -z "$MKFS" ] && [ "${CI:-}" = true ]; then fail "mkfs.ext4 missing under CI=true"; fi

# ---- (a) round-trips on ext4 in a loop file ----
big=$work/big
if make_ext4 "$work/big.img" "$big" 256M; then
  echo "ext4 (256 MiB) mounted with $how at $big"
  chmod 1777 "$big"
  if ZP_AIO_TEST_DIR=$big "$T" > "$work/a.log" 2>&1; then ok "(a) test_aio on the loop ext4: $(tail -1 "$work/a.log")"
  else fail "(a) test_aio on the loop ext4"; cat "$work/a.log"; fi
  grep -E "O_DIRECT  :|page cache:" "$work/a.log" | sed 's/^ */     /'
  bench_dir=$big/bench
else
  echo "SKIP (a) on a loop ext4: $how; round-trips run in the build directory's filesystem instead"
  big=""
  bench_dir=$work/bench
  if ZP_AIO_TEST_DIR=$build "$T" > "$work/a.log" 2>&1; then ok "(a) test_aio in $build: $(tail -1 "$work/a.log")"
  else fail "(a) test_aio in $build"; cat "$work/a.log"; fi
fi

# ---- (b) disk full on an 8 MiB ext4 ----
small=$work/small
if make_ext4 "$work/small.img" "$small" 8M; then
  echo "ext4 (8 MiB) mounted with $how at $small: $(df -B1 --output=size,avail "$small" | tail -1 | awk '{print $1" bytes, "$2" available"}')"
  if ZP_AIO_SMALLFS=$small "$T" smallfs > "$work/b.log" 2>&1 && grep -q "^ok   test_smallfs_disk_full" "$work/b.log"; then
    ok "(b) disk full: ENOSPC at open, preallocation survives a full disk, sparse writes report ENOSPC"
    grep -E "open of|io_uring:|threads:" "$work/b.log" | sed 's/^ */     /'
  else
    fail "(b) disk full"; cat "$work/b.log"
  fi
  left=$(ls -A "$small" | grep -v lost+found)
  [ -z "$left" ] || fail "(b) files left on the small filesystem: $left"
else
  echo "SKIP (b) disk full: $how"
fi

# ---- (c) zp nvme-bench smoke ----
mkdir -p "$bench_dir"
out=$work/bench.out
t0=$(date +%s)
if "$build/zp" nvme-bench "$bench_dir" --size 0.06 --seconds 1 > "$out" 2> "$work/bench.err"; then
  ok "(c) zp nvme-bench ran in $(($(date +%s) - t0)) s on $bench_dir"
else
  fail "(c) zp nvme-bench exit status $?"; cat "$out" "$work/bench.err"
fi
grep -q "queue   block   bufs   buffer  write GB/s  read GB/s" "$out" || fail "(c) no table header"
rows=$(grep -cE '^ +[0-9]+ +[0-9]+[KM] +[0-9]+ +[0-9]+[KM]? +[0-9.]+ +[0-9.]+$' "$out")
[ "$rows" -eq 33 ] && ok "(c) 33 table rows (5 queue depths x 6 block sizes + 3 buffer counts)" || fail "(c) $rows table rows, expected 33"
grep -q "O_DIRECT: yes, the file descriptor has O_DIRECT" "$out" || fail "(c) O_DIRECT not reported in use"
grep -q "page cache: bypassed on 34 of 34 opens" "$out" && grep -q "every read reached the disk" "$out" &&
  ok "(c) $(grep -o 'the reads moved.*(/proc/self/io read_bytes) rose by [0-9.]* GB ([0-9]*%)' "$out")" ||
  fail "(c) page-cache evidence missing: $(grep 'page cache' "$out")"
left=$(ls -A "$bench_dir")
[ -z "$left" ] && ok "(c) test file removed" || fail "(c) left in $bench_dir: $left"
awk '/^\[offload.optimizer\]/{p=1} /^summary:/{p=0} p' "$out" > "$work/snippet.toml"
qd=$(awk -F' = ' '/^queue_depth/{print $2; exit}' "$work/snippet.toml")
bs=$(awk -F' = ' '/^block_size/{print $2; exit}' "$work/snippet.toml")
bc=$(awk -F' = ' '/^buffer_count/{print $2; exit}' "$work/snippet.toml")
sq=$(grep -oE 'queue_depth=[0-9]+' "$out" | cut -d= -f2)
if [ -n "$qd" ] && [ -n "$bs" ] && [ -n "$bc" ] && [ "$qd" = "$sq" ] &&
  "$build/zp" config "$work/snippet.toml" > "$work/cfg.out" 2>&1; then
  n=$(grep -cE "^(queue_depth = $qd|block_size = $bs|buffer_count = $bc)  # $work/snippet.toml" "$work/cfg.out")
  [ "$n" -eq 6 ] && ok "(c) the TOML snippet is accepted by zp config (queue_depth $qd, block_size $bs, buffer_count $bc in both sections)" ||
    { fail "(c) zp config shows $n of 6 snippet values"; cat "$work/snippet.toml" "$work/cfg.out"; }
else
  fail "(c) snippet not accepted (qd=$qd bs=$bs bc=$bc summary qd=$sq)"; cat "$work/snippet.toml" "$work/cfg.out" 2> /dev/null
fi

# errors: status and message
"$build/zp" nvme-bench "$work/nope" > /dev/null 2> "$work/e1"; rc=$?
[ $rc -eq 1 ] && grep -q "nope: No such file or directory" "$work/e1" && ok "(c) missing directory: status 1, named" || fail "(c) missing dir: rc $rc $(cat "$work/e1")"
"$build/zp" nvme-bench "$bench_dir" --size abc > /dev/null 2> "$work/e2"; rc=$?
[ $rc -eq 2 ] && grep -q "\-\-size needs a positive number, got 'abc'" "$work/e2" && ok "(c) bad --size: status 2" || fail "(c) bad --size: rc $rc $(cat "$work/e2")"
if [ "$(stat -f -c %T /dev/shm 2> /dev/null)" = tmpfs ]; then
  "$build/zp" nvme-bench /dev/shm --size 0.01 > /dev/null 2> "$work/e3"; rc=$?
  [ $rc -eq 1 ] && grep -q "on tmpfs, which keeps files in memory" "$work/e3" && ok "(c) tmpfs refused: $(head -c 160 "$work/e3")..." ||
    fail "(c) tmpfs: rc $rc $(cat "$work/e3")"
  ls /dev/shm/.zp-nvme-bench.* > /dev/null 2>&1 && fail "(c) test file left in /dev/shm"
fi
if [ -n "$big" ]; then
  "$build/zp" nvme-bench "$big" --size 1000 > /dev/null 2> "$work/e4"; rc=$?
  [ $rc -eq 1 ] && grep -q "(ENOSPC)" "$work/e4" && ok "(c) --size larger than the disk: $(cut -c1-200 "$work/e4")" || fail "(c) too large: rc $rc $(cat "$work/e4")"
fi

[ $fails -eq 0 ] && echo "nvme_fs: all passed" || echo "nvme_fs: $fails failed"
[ $fails -eq 0 ]
