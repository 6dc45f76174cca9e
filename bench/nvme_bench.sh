#!/usr/bin/env bash
# nvme_bench.sh: the NVMe engine (core/aio.c, `zp nvme-bench`) against dd with O_DIRECT on the
# same disk, in one call, for the GPU machine (its local disk) or any Linux box:
#   1. build zp (release, no CUDA) unless SKIP_BUILD=1;
#   2. pick the directory (NVME_DIR, else $TMPDIR, else $SRC/.nvme-bench) and a size: 16 GiB,
#      or less when `df` shows less than twice that free (at least 1 GiB; SIZE_GIB overrides);
#   3. dd if=/dev/zero of=F bs=8M count=N oflag=direct conv=fsync, then dd if=F bs=8M
#      iflag=direct: GB/s (10^9 bytes/s, as dd prints);
#   4. zp nvme-bench DIR --size <same> --seconds ${SECONDS_PER:-2};
#   5. one table: dd write/read GB/s, zp best write/read GB/s and ratios (target >= 90 %), and
#      the page-cache evidence: device sectors read (/proc/diskstats) against bytes read for dd
#      and zp, zp's own /proc/self/io read_bytes ratio, and the kernel's page cache size
#      (Cached in /proc/meminfo) before/after, which O_DIRECT must leave unchanged.
# Run (repo root; carry .deps where Lua/jansson/liburing are not installed):
#   bash bench/nvme_bench.sh
# Env: OUT (default /tmp/zp-out: nvme_bench.md, zp_nvme_bench.log, dd.log, build.log),
#   ZP_BUILD (default $SRC/build-nvme), SKIP_BUILD=1, NVME_DIR (never tmpfs: a $TMPDIR in
#   memory is replaced by $SRC/.nvme-bench), SIZE_GIB, SECONDS_PER, GRID (full|quick, default
#   full), ZP_TIMEOUT (s for zp nvme-bench, default 420).
# Exit status: 0 = measured, ratios >= 90 % and the page cache bypassed; 3 = measured but a
#   ratio below target or the evidence missing; 1 = something failed (message says what).
# Rough duration on a 64 GiB NVMe disk: build ~1 min, dd ~10-20 s, zp ~2-3 min (33 settings x
# write+read x <= 2 s, plus one fill pass).
set -u -o pipefail
export LC_ALL=C
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-/tmp/zp-out}
BUILD=${ZP_BUILD:-$SRC/build-nvme}
SECONDS_PER=${SECONDS_PER:-2}
GRID=${GRID:-full}
mkdir -p "$OUT" || { echo "nvme_bench: cannot create $OUT" >&2; exit 1; }
note() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { note "FAILED: $*"; exit 1; }

# ---- build ----
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  t0=$(date +%s)
  if cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DZP_WITH_CUDA=OFF -DZP_TEST_POISON=OFF > "$OUT/build.log" 2>&1 &&
    cmake --build "$BUILD" --target zp >> "$OUT/build.log" 2>&1; then
    note "build: ok ($(($(date +%s) - t0)) s) -> $BUILD"
  else
    tail -n 20 "$OUT/build.log"
    die "build (see $OUT/build.log; carry .deps where Lua/jansson are not installed)"
  fi
fi
ZP=$BUILD/zp
[ -x "$ZP" ] || die "$ZP missing"
grep -q "ZP_HAVE_URING=1" "$BUILD/build.ninja" 2> /dev/null && URING="built with liburing" || URING="built WITHOUT liburing (thread pool only: carry .deps or install liburing-dev)"
note "zp: $URING"

# ---- directory and size ----
DIR=${NVME_DIR:-${TMPDIR:-$SRC/.nvme-bench}}
mkdir -p "$DIR" || die "cannot create $DIR"
case $(stat -f -c %T "$DIR") in
  tmpfs | ramfs)
    [ -n "${NVME_DIR:-}" ] && die "NVME_DIR=$NVME_DIR is on $(stat -f -c %T "$DIR") (memory): give a directory on the disk"
    note "$DIR is in memory ($(stat -f -c %T "$DIR")): using $SRC/.nvme-bench instead"
    DIR=$SRC/.nvme-bench ;;
esac
DIR=$DIR/zp-nvme-bench.$$
mkdir -p "$DIR" || die "cannot create $DIR"
trap 'rm -rf "$DIR"; rmdir "$SRC/.nvme-bench" 2> /dev/null' EXIT
FS=$(stat -f -c %T "$DIR")
SRCDEV=$(df --output=source "$DIR" | tail -1)
AVAIL=$(df -B1 --output=avail "$DIR" | tail -1 | tr -d ' ')
GIB=$((1 << 30))
if [ -n "${SIZE_GIB:-}" ]; then SIZE=$SIZE_GIB
else
  SIZE=$((AVAIL / 2 / GIB))
  [ $SIZE -gt 16 ] && SIZE=16
fi
[ "$SIZE" -ge 1 ] || die "only $AVAIL bytes free in $DIR: need at least 2 GiB"
[ -z "${SIZE_GIB:-}" ] && [ "$SIZE" -lt 8 ] && note "note: only $((AVAIL / GIB)) GiB free: using $SIZE GiB (8-16 GiB wanted)"
BYTES=$((SIZE * GIB))
COUNT=$((BYTES / (8 << 20)))
note "directory $DIR: $FS on $SRCDEV, $((AVAIL / GIB)) GiB free; test size $SIZE GiB ($BYTES bytes)"

# ---- device counters: the block device holding DIR (by st_dev), else all whole disks ----
DEVNUM=$(stat -c %d "$DIR")
MAJ=$((DEVNUM >> 8 & 0xfff)); MIN=$(((DEVNUM & 0xff) | (DEVNUM >> 12 & 0xfff00)))
DEVNAME=$(awk -v a=$MAJ -v b=$MIN '$1 == a && $2 == b { print $3 }' /proc/diskstats)
if [ -n "$DEVNAME" ]; then DEVDESC="$DEVNAME ($MAJ:$MIN)"
else DEVDESC="all whole disks (DIR's device $MAJ:$MIN is not in /proc/diskstats: overlay?)"; fi
# sectors read (field 6) and written (field 10), in bytes
disk_bytes() {
  awk -v d="$DEVNAME" '
    (d != "" && $3 == d) || (d == "" && $3 ~ /^(nvme[0-9]+n[0-9]+|sd[a-z]+|vd[a-z]+|xvd[a-z]+)$/) { r += $6; w += $10 }
    END { printf "%.0f %.0f\n", r * 512, w * 512 }' /proc/diskstats
}
cached() { awk '/^Cached:/ { printf "%.0f\n", $2 * 1024 }' /proc/meminfo; }
note "device counters: $DEVDESC"

# ---- dd ----
F=$DIR/dd.bin
secs_of() { awk '/copied/ { for (i = 1; i <= NF; i++) if ($i ~ /^s,?$/) print $(i - 1) }' "$1" | tail -1; }
read r0 w0 < <(disk_bytes)
if ! timeout 300 dd if=/dev/zero of="$F" bs=8M count=$COUNT oflag=direct conv=fsync 2> "$OUT/dd_write.log"; then
  cat "$OUT/dd_write.log"; die "dd write with oflag=direct on $FS failed"
fi
read r1 w1 < <(disk_bytes)
DDW_S=$(secs_of "$OUT/dd_write.log")
c0=$(cached)
if ! timeout 300 dd if="$F" of=/dev/null bs=8M iflag=direct 2> "$OUT/dd_read.log"; then
  cat "$OUT/dd_read.log"; die "dd read with iflag=direct failed"
fi
c1=$(cached)
read r2 w2 < <(disk_bytes)
DDR_S=$(secs_of "$OUT/dd_read.log")
rm -f "$F"
cat "$OUT/dd_write.log" "$OUT/dd_read.log" > "$OUT/dd.log"
DDW=$(awk -v b=$BYTES -v s="$DDW_S" 'BEGIN { printf "%.3f", b / s / 1e9 }')
DDR=$(awk -v b=$BYTES -v s="$DDR_S" 'BEGIN { printf "%.3f", b / s / 1e9 }')
DD_RD=$((r2 - r1)); DD_WR=$((w1 - w0)); DD_CACHE=$((c1 - c0))
note "dd: write $DDW GB/s ($DDW_S s), read $DDR GB/s ($DDR_S s); device read $DD_RD bytes for $BYTES read"

# ---- zp nvme-bench ----
read r3 w3 < <(disk_bytes)
c2=$(cached)
t0=$(date +%s)
if ! timeout "${ZP_TIMEOUT:-420}" "$ZP" nvme-bench "$DIR" --size "$(awk -v b=$BYTES 'BEGIN { printf "%.6f", b / 1e9 }')" \
  --seconds "$SECONDS_PER" --grid "$GRID" > "$OUT/zp_nvme_bench.log" 2>&1; then
  tail -n 30 "$OUT/zp_nvme_bench.log"; die "zp nvme-bench (see $OUT/zp_nvme_bench.log)"
fi
c3=$(cached)
read r4 w4 < <(disk_bytes)
note "zp nvme-bench: $(($(date +%s) - t0)) s"
cat "$OUT/zp_nvme_bench.log"
S=$(grep '^summary:' "$OUT/zp_nvme_bench.log")
kv() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<< " $S"; }
ZW=$(kv best_write_gbs); ZR=$(kv best_read_gbs); ZRATIO=$(kv storage_read_ratio)
ZREAD=$(sed -n 's/.*the reads moved \([0-9.]*\) GB.*/\1/p' "$OUT/zp_nvme_bench.log")
ZWRITE=$(sed -n 's/.*the writes moved \([0-9.]*\) GB.*/\1/p' "$OUT/zp_nvme_bench.log")
ENGINE=$(sed -n 's/^engine: //p' "$OUT/zp_nvme_bench.log")
ZP_RD=$((r4 - r3)); ZP_CACHE=$((c3 - c2))
[ -n "$ZW" ] && [ -n "$ZR" ] || die "no summary line from zp nvme-bench"

# ---- table ----
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
verdict() { awk -v r="$1" 'BEGIN { print (r >= 0.90 ? "ok" : "BELOW TARGET") }'; }
RW=$(ratio "$ZW" "$DDW"); RR=$(ratio "$ZR" "$DDR")
DD_DEV=$(ratio "$DD_RD" "$BYTES")
ZP_DEV=$(awk -v d=$ZP_RD -v g="$ZREAD" 'BEGIN { if (g > 0) printf "%.2f", d / (g * 1e9); else print "n/a" }')
GB() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1e9 }'; }
{
  echo "## NVMe engine vs dd ($(hostname), $(date -u +%Y-%m-%dT%H:%MZ))"
  echo
  echo "Directory \`$DIR\` ($FS on $SRCDEV; counters: $DEVDESC); test size $SIZE GiB; zp: $URING; engine: $ENGINE."
  echo
  echo "| | dd bs=8M O_DIRECT | zp nvme-bench best | zp / dd | target >= 0.90 |"
  echo "|---|---|---|---|---|"
  echo "| write GB/s | $DDW | $ZW | $RW | $(verdict "$RW") |"
  echo "| read GB/s | $DDR | $ZR | $RR | $(verdict "$RR") |"
  echo
  echo "| page-cache evidence | dd | zp |"
  echo "|---|---|---|"
  echo "| bytes read by the program | $(GB $BYTES) GB | ${ZREAD:-?} GB |"
  echo "| device reads (/proc/diskstats) | $(GB $DD_RD) GB ($DD_DEV x) | $(GB $ZP_RD) GB (${ZP_DEV} x) |"
  echo "| /proc/self/io read_bytes / bytes read | - | ${ZRATIO} |"
  echo "| page cache (Cached) change while reading | $(GB $DD_CACHE) GB | $(GB $ZP_CACHE) GB (whole run, ${ZWRITE:-?} GB written too) |"
  echo
  echo "zp's best setting for read+write (paste into the config):"
  echo
  echo '```toml'
  awk '/^\[offload.optimizer\]/{p=1} /^summary:/{p=0} p' "$OUT/zp_nvme_bench.log" |
    awk 'NF { for (; n > 0; n--) print ""; print; next } { n++ }'  # without trailing blank lines
  echo '```'
} > "$OUT/nvme_bench.md"
echo
cat "$OUT/nvme_bench.md"

status=0
[ "$(verdict "$RW")" = ok ] && [ "$(verdict "$RR")" = ok ] || { note "zp below 90 % of dd"; status=3; }
awk -v r="$ZRATIO" 'BEGIN { exit !(r >= 0.95) }' || { note "zp: /proc/self/io read_bytes ratio $ZRATIO < 0.95"; status=3; }
awk -v r="$ZP_DEV" 'BEGIN { exit !(r >= 0.90) }' || { note "zp: device reads $ZP_DEV x the bytes read (< 0.90)"; status=3; }
awk -v r="$DD_DEV" 'BEGIN { exit !(r >= 0.90) }' || note "dd: device reads $DD_DEV x the bytes read (< 0.90): counters of another device?"
note "done: status $status; table in $OUT/nvme_bench.md"
exit $status
