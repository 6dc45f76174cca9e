# lib/ext4.sh: sourced by integration tests that need a real (non-tmpfs) filesystem of a given
# size: make_ext4 IMG MNT SIZE [MKFS_OPTS] makes an ext4 filesystem in the file IMG (mkfs.ext4,
# 4 KiB blocks) and mounts it at MNT with `mount -o loop` (root), else fuse2fs. On success it
# sets $how to loop|fuse2fs and appends MNT to the caller's $mounts array (unmount them at
# exit); on failure it returns 1 with the reason in $how. Not run in a subshell, so $mounts
# sees the mount point. Needs $work (scratch directory) set by the caller. Not a test itself:
# tests/CMakeLists.txt registers only tests/integration/*.sh.
MKFS=${MKFS:-$(command -v mkfs.ext4 || ls /sbin/mkfs.ext4 /usr/sbin/mkfs.ext4 2> /dev/null | head -1)}
make_ext4() {
  local img=$1 mnt=$2 size=$3 opts=${4:-} why
  how=""
  [ -n "$MKFS" ] || { how="mkfs.ext4 not installed (e2fsprogs)"; return 1; }
  mkdir -p "$mnt"
  # shellcheck disable=SC2086 # opts is a word list
  if ! { truncate -s "$size" "$img" && "$MKFS" -q -F -b 4096 -E nodiscard $opts "$img" > "$work/mkfs.log" 2>&1; }; then
    how="mkfs.ext4 failed: $(tail -1 "$work/mkfs.log")"; return 1
  fi
  if why=$(mount -o loop "$img" "$mnt" 2>&1); then
    mounts+=("$mnt"); how=loop; return 0
  fi
  if command -v fuse2fs > /dev/null && fuse2fs -o fakeroot "$img" "$mnt" > "$work/fuse.log" 2>&1; then
    mounts+=("$mnt"); how=fuse2fs; return 0
  fi
  how="mount -o loop failed ($why) and fuse2fs is $(command -v fuse2fs > /dev/null && echo "failing: $(tail -1 "$work/fuse.log")" || echo "not installed")"
  return 1
}
# unmount_all: what make_ext4 mounted (for the caller's EXIT trap)
unmount_all() {
  for m in "${mounts[@]}"; do
    umount "$m" 2> /dev/null || fusermount -u "$m" 2> /dev/null || umount -l "$m" 2> /dev/null
  done
}
