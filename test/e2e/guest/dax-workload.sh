#!/bin/sh
# Guest side of test/e2e/dax-guest.test.ts and bench/in-guest-dax.ts, run by
# /init (dax-init) with the share mounted on /mnt. Usage:
#   dax-workload.sh MODE DAX
# MODE always: the DAX window battery under -o dax=always (files prepared by
#   the test: see prepareShare there); after it the guest reboots and the
#   second boot (the share holds .boot1) checks the share again.
# MODE inode: -o dax=inode with the daemon's --dax-policy inode (DAX none:
#   the same reads and writes through the queues, e.g. the Rust virtiofsd).
# MODE bench: dd sequential and random reads and writes, then the metadata
#   workload (bench/in-guest-dax.ts).
# MODE mmap: a shared mmap store into $M/mm, which a daemon run with
#   --cache never opens with direct I/O: Linux allows that mapping only with
#   FUSE_DIRECT_IO_ALLOW_MMAP (--allow-mmap), else mmap answers ENODEV.
# Console protocol: test/e2e/guest/workload.sh.
M=/mnt
ok() { echo "E2E-OK $1"; }
fail() { echo "E2E-FAIL $*"; }
check() {
  name=$1; shift
  if "$@"; then ok "$name"; else fail "$name" "command failed: $*"; fi
}
sha() { sha256sum "$1" | cut -d' ' -f1; }
sum() { echo "E2E-SUM $1 $(sha "$2")"; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# readerr FILE: "ok", or the error cat reported reading FILE.
readerr() {
  if err=$(cat "$1" 2>&1 >/dev/null); then echo ok; else echo "${err##*: }" | tr ' ' '_'; fi
}
now_us() { awk '{ printf "%d\n", $1 * 1000000 }' /proc/uptime; }

# wait_for FILE: polls the share for FILE (the host writes it), up to 60 s.
wait_for() {
  i=0
  while [ ! -e "$1" ]; do
    i=$((i + 1))
    [ $i -gt 300 ] && return 1
    sleep 0.2
  done
}

after_reboot() {
  ok reboot
  sum reboot/f6m $M/f6m
  sum reboot/w4m $M/w4m
  check isdax-after-reboot test "$(daxtool isdax $M/f4m)" = 1
  rm -f $M/.boot1
}

always() {
  if [ -e $M/.boot1 ]; then after_reboot; return; fi
  check mount-options grep -q 'virtiofs.*dax=always' /proc/mounts
  check isdax test "$(daxtool isdax $M/f4m)" = 1
  # Reads through the window, sizes in whole chunks.
  for f in f2m f4m f6m; do sum read/$f $M/$f; done
  # What QEMU 11.1 cannot map (docs/dax.md): a file under 2 MiB, the last partial chunk.
  echo "E2E-INFO always-small $(readerr $M/small)"
  echo "E2E-INFO always-tail $(readerr $M/tail)"
  echo "E2E-INFO always-tail-head $(dd if=$M/tail bs=1M count=2 2>/dev/null | sha256sum | cut -d' ' -f1)"
  # Stores through the window: in place (not extending, so they are not FUSE_WRITEs).
  check write-window dd if=$M/f4m of=$M/w4m bs=65536 count=64 conv=notrunc 2>/dev/null
  sync
  drop_caches
  sum write/w4m $M/w4m
  # Stores through a guest mmap of a DAX file.
  check mmap-store-1 daxtool store $M/m4m 1048576 4096 171
  check mmap-store-2 daxtool store $M/m4m 3145828 50 85
  # Host changes seen through the window: map it, ask the host to change it in place, read again.
  sum host-before/h2m $M/h2m
  echo request > $M/.req-host-change
  if wait_for $M/.host-changed; then sum host-after/h2m $M/h2m; else fail host-change "the host never answered"; fi
  # More files than the window has chunks: mappings are reclaimed (REMOVEMAPPING).
  for f in $M/many/*; do sum "many/${f##*/}" "$f"; done
  for f in $M/many/*; do sum "many-again/${f##*/}" "$f"; done
  # Unmount (DESTROY clears the window), mount again, read again.
  cd /
  check umount umount $M
  check remount mount -t virtiofs -o dax=always myfs $M
  sum remount/f4m $M/f4m
  echo booted > $M/.boot1
  # A clean reboot unmounts first (QEMU 11.1 crashes resetting a device whose
  # window still has mappings: docs/dax.md).
  cd /
  check umount-before-reboot umount $M
  echo "E2E-REBOOT"
}

inode() {
  if [ "$1" = inode ]; then check mount-options grep -q 'virtiofs.*dax=inode' /proc/mounts; fi
  for f in f2m f4m f6m small tail; do
    echo "E2E-INFO isdax $f $(daxtool isdax $M/$f)"
    echo "E2E-INFO read $f $(readerr $M/$f)"
    sum read/$f $M/$f
  done
  # An in-place write through the window of a DAX file, and a write of a non-DAX one.
  check write-window dd if=$M/f2m of=$M/w4m bs=65536 count=32 conv=notrunc 2>/dev/null
  check write-queue dd if=$M/f2m of=$M/small bs=4096 count=4 conv=notrunc 2>/dev/null
  sync
  drop_caches
  sum write/w4m $M/w4m
  sum write/small $M/small
}

# bench: one line per case, "E2E-INFO bench OP BS BYTES MICROSECONDS", for
# the host's $M/bench (a multiple of 2 MiB) and the BS:COUNT pairs of
# "e2e.bench=" on the kernel command line (not a file of the share: under
# dax=always a small file is not mappable): dd for sequential I/O, daxtool
# for random offsets. Then, with "e2e.meta=N", meta.
bench() {
  f=$M/bench
  sizes= files=
  for arg in $(cat /proc/cmdline); do
    case "$arg" in
      e2e.bench=*) sizes=$(echo "${arg#e2e.bench=}" | tr ',:' '\n ') ;;
      e2e.meta=*) files=${arg#e2e.meta=} ;;
    esac
  done
  [ -n "$sizes" ] || { fail bench "no e2e.bench= sizes on the kernel command line"; return; }
  echo "$sizes" | while read -r bs count; do
    for op in seqread directread randread seqwrite randwrite; do
      drop_caches
      t0=$(daxtool now)
      case $op in
        seqread) dd if=$f of=/dev/null bs="$bs" count="$count" 2>/dev/null ;;
        # O_DIRECT: no guest page cache and no readahead, one request per read (as in a unikernel).
        directread) dd if=$f of=/dev/null bs="$bs" count="$count" iflag=direct 2>/dev/null ;;
        seqwrite) dd if=/dev/zero of=$f bs="$bs" count="$count" conv=notrunc 2>/dev/null ;;
        randread) daxtool rand read $f "$bs" "$count" ;;
        randwrite) daxtool rand write $f "$bs" "$count" ;;
      esac || fail "bench-$op-$bs" "$op failed"
      t1=$(daxtool now)
      echo "E2E-INFO bench $op $bs $((count * bs)) $((t1 - t0))"
    done
  done
  sync
  [ -z "$files" ] || meta "$files"
}

# meta N: "E2E-INFO meta PHASE OPS MICROSECONDS" for create, stat, list and
# unlink of N empty files in a fresh directory of the share (daxtool meta:
# one syscall per file and pass, the guest's caches dropped before each pass).
meta() {
  if out=$(daxtool meta $M/meta "$1"); then
    echo "$out" | sed 's/^/E2E-INFO /'
  else
    fail meta "daxtool meta $1 failed"
  fi
}

mmap_store() {
  if out=$(daxtool store $M/mm 4096 100 65 2>&1); then
    echo "E2E-INFO mmap-store ok"
  else
    echo "E2E-INFO mmap-store $(echo "${out##*: }" | tr ' ' '_')"
  fi
  sync
}

case "$1" in
  always) always ;;
  mmap) mmap_store ;;
  inode) inode "$2" ;;
  bench) bench ;;
  *) fail mode "unknown mode '$1'" ;;
esac
