#!/bin/sh
# Guest side of the e2e tests (test/e2e/*.test.ts), run by /init with the
# share (virtio-fs tag "myfs") mounted on /mnt. Usage: workload.sh MODE.
# Modes basic, reboot and parallel serve guest-linux.test.ts; battery
# (posix-battery.test.ts) and coherence (cache-coherence.test.ts) run
# /bin/battery, built from battery.c.
# Console protocol, one line each, read by the test:
#   E2E-OK <check>             a check passed
#   E2E-FAIL <check> <reason>  a check failed
#   E2E-SUM <path> <sha256>    checksum of a file the guest wrote or read
#   E2E-INFO <key> <value...>  anything else worth reporting
# /init prints E2E-DONE when this script returns, then powers off.
M=/mnt

ok() { echo "E2E-OK $1"; }
fail() { echo "E2E-FAIL $*"; }
# check NAME COMMAND...: E2E-OK or E2E-FAIL NAME depending on COMMAND.
check() {
  name=$1; shift
  if "$@"; then ok "$name"; else fail "$name" "command failed: $*"; fi
}
sha() { sha256sum "$1" | cut -d' ' -f1; }
# Forget cached pages so the next read really goes to the back-end.
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# The files the host put into the share (see the test's prepareShare).
check_host_files() {
  check list-share sh -c "ls -la $M && ls $M | grep -qx hello.txt && ls $M | grep -qx hostdir"
  # shellcheck disable=SC2012 # listing the share with ls is the point
  echo "E2E-INFO ls $(ls -A $M | tr '\n' ' ')"
  check read-small-file test "$(cat $M/hello.txt)" = "hello from the host"
  check read-host-file sh -c "cd $M && sha256sum -c -s host-data.sha256"
  echo "E2E-SUM host-data.bin $(sha $M/host-data.bin)"
  check read-nested-file test "$(cat $M/hostdir/sub/deep.txt)" = "deep file"
  check read-symlink test "$(readlink $M/link-to-hello)" = "hello.txt"
  check stat-size test "$(stat -c %s $M/host-data.bin)" = "$(cat $M/host-data.size)"
}

# Files and directories for the host to check byte for byte afterwards.
write_guest_files() {
  check mkdir-nested mkdir -p $M/guest/a/b/c
  check write-small sh -c "printf 'written by the guest\n' > $M/guest/a/b/c/file.txt"
  check write-many sh -c "i=0; while [ \$i -lt 50 ]; do echo \"file \$i\" > $M/guest/many-\$i.txt || exit 1; i=\$((i+1)); done"
  check append sh -c "echo line1 > $M/guest/append.txt && echo line2 >> $M/guest/append.txt"
  check truncate sh -c "dd if=/dev/zero of=$M/guest/trunc.bin bs=4096 count=3 2>/dev/null && truncate -s 5000 $M/guest/trunc.bin"
  check chmod chmod 640 $M/guest/a/b/c/file.txt
  check symlink ln -s a/b/c/file.txt $M/guest/link
}

rename_and_remove() {
  check rename-file sh -c "echo moving > $M/guest/old-name.txt && mv $M/guest/old-name.txt $M/guest/new-name.txt"
  check rename-dir sh -c "mkdir -p $M/guest/dir-old/inner && echo inside > $M/guest/dir-old/inner/f.txt && mv $M/guest/dir-old $M/guest/dir-new"
  check rename-host-file mv $M/rename-me.txt $M/renamed-by-guest.txt
  check remove-file sh -c "echo bye > $M/guest/gone.txt && rm $M/guest/gone.txt && test ! -e $M/guest/gone.txt"
  check remove-tree sh -c "mkdir -p $M/guest/tree/x/y && touch $M/guest/tree/x/y/z && rm -r $M/guest/tree && test ! -e $M/guest/tree"
  check remove-host-file rm $M/delete-me.txt
  check remove-host-dir rmdir $M/empty-host-dir
}

# big_file PATH MIB: write MIB MiB of random data, print its checksum, then
# read it back past the page cache and compare.
big_file() {
  path=$1 mib=$2
  if ! dd if=/dev/urandom of="$path" bs=1M count="$mib" 2>/dev/null; then
    fail "big-file" "dd to $path failed"; return
  fi
  written=$(sha "$path")
  echo "E2E-SUM ${path#"$M"/} $written"
  drop_caches
  read_back=$(sha "$path")
  if [ "$written" = "$read_back" ]; then ok "big-file $mib MiB"; else fail big-file "read back $read_back"; fi
}

# Boot 1: write data, umount + mount, check, then reboot. Boot 2 (found the
# marker): check the data once more. The host checks boot-marker says 2.
reboot_mode() {
  if [ ! -e $M/boot-marker ]; then
    echo "E2E-INFO boot 1"
    check persist-write sh -c "echo 'survives remounts' > $M/persist.txt && dd if=/dev/urandom of=$M/persist.bin bs=1M count=4 2>/dev/null && sha256sum $M/persist.bin > $M/persist.sha256"
    check umount umount $M
    check remount mount -t virtiofs myfs $M
    check after-remount sh -c "test \"\$(cat $M/persist.txt)\" = 'survives remounts' && sha256sum -c -s $M/persist.sha256"
    echo 1 > $M/boot-marker
    sync
    umount $M
    echo "E2E-INFO rebooting"
    reboot -f
    sleep 60 # reboot -f does not return; keep /init from powering off
  fi
  echo "E2E-INFO boot $(($(cat $M/boot-marker) + 1))"
  check after-reboot sh -c "test \"\$(cat $M/persist.txt)\" = 'survives remounts' && sha256sum -c -s $M/persist.sha256"
  echo 2 > $M/boot-marker
}

# Two workers pinned to different CPUs write, re-read and checksum files at
# once, so a kernel with several request queues uses more than one of them.
parallel_mode() {
  mkdir -p $M/par
  for cpu in 0 1; do
    taskset -c $cpu sh -c "
      i=0
      while [ \$i -lt 4 ]; do
        f=$M/par/cpu$cpu-\$i.bin
        dd if=/dev/urandom of=\$f bs=1M count=8 2>/dev/null || exit 1
        sum=\$(sha256sum \$f | cut -d' ' -f1)
        echo \"E2E-SUM par/cpu$cpu-\$i.bin \$sum\"
        cat $M/host-data.bin > /dev/null || exit 1
        i=\$((i+1))
      done" > /tmp/worker$cpu.out 2>&1 &
  done
  wait
  cat /tmp/worker0.out /tmp/worker1.out
  drop_caches
  # Read everything back in parallel, past the page cache, and compare.
  for cpu in 0 1; do
    taskset -c $cpu sh -c "grep '^E2E-SUM' /tmp/worker$cpu.out | while read -r _ f sum; do
        test \"\$(sha256sum $M/\$f | cut -d' ' -f1)\" = \"\$sum\" || echo \"E2E-FAIL parallel-read \$f\"
      done" &
  done
  wait
  n=$(grep -c '^E2E-SUM' /tmp/worker0.out /tmp/worker1.out | cut -d: -f2 | tr '\n' ' ')
  check parallel-io test "$n" = "4 4 "
  # Interrupts per request queue, e.g. "virtio0-requests.1 123".
  grep 'requests' /proc/interrupts | while read -r line; do
    total=0
    for w in $line; do case "$w" in *[!0-9]*) ;; *) total=$((total + w)) ;; esac; done
    echo "E2E-INFO irq ${line##* } $total"
  done
}

case "$1" in
  basic)
    check_host_files
    write_guest_files
    rename_and_remove
    big_file $M/big.bin 64
    ;;
  reboot) reboot_mode ;;
  parallel) parallel_mode ;;
  # The numbered POSIX checks, each in /mnt/battery/<check>.
  battery) battery run $M/battery ;;
  # Host/guest coherence observations on /mnt/coh, prepared by the host.
  coherence) battery coherence $M/coh ;;
  *) fail workload "unknown mode '$1'" ;;
esac
