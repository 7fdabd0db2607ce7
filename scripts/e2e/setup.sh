#!/usr/bin/env bash
# Prepares what the end-to-end tests (test/e2e/) need to boot a real Linux
# guest under QEMU against a virtio-fs back-end:
#   - Debian packages: qemu-system-x86, busybox-static, cpio, kmod, and
#     gcc + libc6-dev for the battery program
#   - two guest kernels, unpacked under .cache/e2e/ (the machine's apt setup
#     is left alone):
#       bookworm/   the bookworm cloud kernel (6.1: virtio and fuse are modules)
#       backports/  the bookworm-backports cloud kernel (6.12: all built in,
#                   spreads requests over several request queues)
#   - $CACHE/battery: test/e2e/guest/battery.c built with `gcc -static`; the
#     guest runs it as /bin/battery, the host tests run it for their probes
#   - one busybox initramfs per kernel holding test/e2e/guest/init,
#     test/e2e/guest/workload.sh and the battery (see those files for what
#     the guest does).
#   - backports/dax-initrd.gz: the DAX guest (test/e2e/guest/dax-init,
#     dax-workload.sh and daxtool.c, built like the battery) for
#     test/e2e/dax-guest.test.ts and bench/in-guest-dax.ts
#   - QEMU 11.1 and the Rust virtiofsd in a trixie root: scripts/peers/setup.sh
# Idempotent: work already done is skipped, so a re-run takes well under a
# second. Run as root (installs packages). E2E_CACHE_DIR overrides the cache.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${E2E_CACHE_DIR:-$ROOT/.cache/e2e}
GUEST_SRC=$ROOT/test/e2e/guest
PACKAGES=(qemu-system-x86 busybox-static cpio kmod gcc libc6-dev)
# Modules the guest needs; the 6.1 kernel has them as .ko files, 6.12 built in.
GUEST_MODULES=(virtio_pci virtiofs)

export DEBIAN_FRONTEND=noninteractive
log() { echo "e2e-setup: $*" >&2; }

# `apt-get update` of the machine's own lists, at most once per run.
APT_UPDATED=0
apt_update_once() {
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    apt-get update -qq
    APT_UPDATED=1
  fi
}

install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    apt_update_once
    log "installing ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

# Private apt options for bookworm-backports: own sources file, lists and
# cache dirs under $CACHE/apt-backports, naming the machine's Debian mirror.
BACKPORTS_APT=()
prepare_backports_apt() {
  local dir=$CACHE/apt-backports src=/etc/apt/sources.list.d/debian.sources mirror uri key
  # deb822 stanza whose Suites list "bookworm": its first URI and keyring.
  mirror=$(awk 'BEGIN { RS = ""; FS = "\n" }
    { uri = ""; key = ""; hit = 0
      for (i = 1; i <= NF; i++) {
        split($i, w, /[ \t]+/)
        if (w[1] == "URIs:") uri = w[2]
        if (w[1] == "Signed-By:") key = w[2]
        if (w[1] == "Suites:") for (j = 2; j in w; j++) if (w[j] == "bookworm") hit = 1
      }
      if (hit && uri != "") { print uri, key; exit } }' "$src")
  [ -n "$mirror" ] || { log "no bookworm mirror found in $src"; exit 1; }
  read -r uri key <<< "$mirror"
  mkdir -p "$dir/lists/partial" "$dir/cache"
  echo "deb ${key:+[signed-by=$key] }$uri bookworm-backports main" > "$dir/sources.list"
  BACKPORTS_APT=(-o "Dir::Etc::sourcelist=$dir/sources.list" -o Dir::Etc::sourceparts=/dev/null
                 -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache")
  log "apt-get update (bookworm-backports from $uri, private lists)"
  apt-get "${BACKPORTS_APT[@]}" update -qq
}

# kernel_present NAME: fetch_kernel NAME has completed once.
kernel_present() {
  if [ -f "$CACHE/$1/kernel-release" ]; then
    log "$1 kernel $(cat "$CACHE/$1/kernel-release") already present"
  else
    return 1
  fi
}

# fetch_kernel NAME [APT OPTIONS...]: download the linux-image package that
# linux-image-cloud-amd64 names (as seen with the given apt options) and
# unpack it into $CACHE/NAME/root; vmlinuz and kernel-release land beside it.
fetch_kernel() {
  local name=$1; shift
  local dir=$CACHE/$name pkg release deb
  pkg=$(apt-cache "$@" depends linux-image-cloud-amd64 | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
  [ -n "$pkg" ] || { log "apt-cache does not know linux-image-cloud-amd64 ($name)"; exit 1; }
  release=${pkg#linux-image-}
  log "downloading $pkg"
  # Built in $dir.tmp and renamed at the end: $dir is complete or absent.
  rm -rf "$dir" "$dir.tmp"
  mkdir -p "$dir.tmp/deb"
  # Sandbox::User=root: _apt may not write into this directory.
  (cd "$dir.tmp/deb" && apt-get "$@" -o APT::Sandbox::User=root download -qq "$pkg")
  deb=$(echo "$dir.tmp/deb/"*.deb)
  dpkg-deb -x "$deb" "$dir.tmp/root"
  rm -rf "$dir.tmp/deb"
  cp "$dir.tmp/root/boot/vmlinuz-$release" "$dir.tmp/vmlinuz"
  echo "$release" > "$dir.tmp/kernel-release"
  mv "$dir.tmp" "$dir"
}

# module_order MODDIR MODULE...: the .ko paths (relative to MODDIR) to insmod,
# dependencies first, as `modinfo -F depends` tells; built-in ones are left out.
module_order() {
  local moddir=$1; shift
  local -A seen=()
  local order=()
  visit() {
    local m=${1//-/_} ko dep
    [ -z "${seen[$m]:-}" ] || return 0
    seen[$m]=1
    ko=$(cd "$moddir" && find kernel -name "$m.ko*" -o -name "${m//_/-}.ko*" | head -n 1)
    if [ -z "$ko" ]; then
      grep -Eq "/($m|${m//_/-})\.ko$" "$moddir/modules.builtin" && return 0
      log "module $m is neither a .ko nor built in"; exit 1
    fi
    for dep in $(modinfo -F depends "$moddir/$ko" | tr ',' ' '); do visit "$dep"; done
    order+=("$ko")
  }
  local m
  for m in "$@"; do visit "$m"; done
  printf '%s\n' "${order[@]}"
}

# build_battery: $CACHE/battery from test/e2e/guest/battery.c, statically
# linked (the initramfs has no libc); skipped when newer than its source.
build_battery() {
  local src=$GUEST_SRC/battery.c bin=$CACHE/battery
  if [ "$bin" -nt "$src" ] && [ "$bin" -nt "${BASH_SOURCE[0]}" ]; then
    log "battery up to date"
    return
  fi
  log "compiling $src"
  gcc -static -O2 -Wall -Wextra -Werror -o "$bin.tmp" "$src"
  mv "$bin.tmp" "$bin"
}

# build_static SRC BIN: a static binary from a C file, skipped when newer than it.
build_static() {
  local src=$1 bin=$2
  if [ "$bin" -nt "$src" ] && [ "$bin" -nt "${BASH_SOURCE[0]}" ]; then
    log "$(basename "$bin") up to date"
    return
  fi
  log "compiling $src"
  gcc -static -O2 -Wall -Wextra -Werror -o "$bin.tmp" "$src"
  mv "$bin.tmp" "$bin"
}

# build_dax_initramfs: $CACHE/backports/dax-initrd.gz, busybox with the DAX
# guest's init, workload and daxtool (the 6.12 kernel has virtio-fs and DAX
# built in: no modules).
build_dax_initramfs() {
  local dir=$CACHE/backports stage f fresh=1
  local inputs=("$GUEST_SRC/dax-init" "$GUEST_SRC/dax-workload.sh" "$CACHE/daxtool" /bin/busybox "${BASH_SOURCE[0]}")
  for f in "${inputs[@]}"; do [ "$dir/dax-initrd.gz" -nt "$f" ] || fresh=0; done
  if [ "$fresh" = 1 ]; then
    log "DAX initramfs up to date"
    return
  fi
  stage=$dir/dax-initramfs
  rm -rf "$stage"
  mkdir -p "$stage"/{bin,dev,proc,sys,mnt,tmp}
  cp /bin/busybox "$stage/bin/busybox"
  ln -s busybox "$stage/bin/sh"
  install -m 0755 "$GUEST_SRC/dax-init" "$stage/init"
  install -m 0755 "$GUEST_SRC/dax-workload.sh" "$stage/dax-workload.sh"
  install -m 0755 "$CACHE/daxtool" "$stage/bin/daxtool"
  (cd "$stage" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -9 > "$dir/dax-initrd.gz.tmp"
  mv "$dir/dax-initrd.gz.tmp" "$dir/dax-initrd.gz"
  rm -rf "$stage"
}

# build_initramfs NAME: $CACHE/NAME/initrd.gz from busybox, the guest scripts
# and the kernel's modules (if any); skipped when newer than all its inputs.
build_initramfs() {
  local name=$1
  local dir=$CACHE/$name release stage kos ko inputs=("$GUEST_SRC/init" "$GUEST_SRC/workload.sh" "$CACHE/battery" /bin/busybox "${BASH_SOURCE[0]}") f fresh=1
  release=$(cat "$dir/kernel-release")
  for f in "${inputs[@]}"; do [ "$dir/initrd.gz" -nt "$f" ] || fresh=0; done
  if [ "$fresh" = 1 ]; then
    log "$name initramfs up to date"
    return
  fi
  stage=$dir/initramfs
  rm -rf "$stage"
  mkdir -p "$stage"/{bin,dev,proc,sys,mnt,tmp,modules}
  cp /bin/busybox "$stage/bin/busybox"
  ln -s busybox "$stage/bin/sh"
  install -m 0755 "$GUEST_SRC/init" "$stage/init"
  install -m 0755 "$GUEST_SRC/workload.sh" "$stage/workload.sh"
  install -m 0755 "$CACHE/battery" "$stage/bin/battery"
  # /modules/load-order lists the files for init to insmod, in order.
  kos=$(module_order "$dir/root/lib/modules/$release" "${GUEST_MODULES[@]}")
  : > "$stage/modules/load-order"
  for ko in $kos; do
    cp "$dir/root/lib/modules/$release/$ko" "$stage/modules/"
    basename "$ko" >> "$stage/modules/load-order"
  done
  kos=$(tr '\n' ' ' < "$stage/modules/load-order")
  log "$name initramfs: modules to insmod: ${kos:-none, all built in}"
  (cd "$stage" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -9 > "$dir/initrd.gz.tmp"
  mv "$dir/initrd.gz.tmp" "$dir/initrd.gz"
  rm -rf "$stage"
}

install_packages
mkdir -p "$CACHE"
if ! kernel_present bookworm; then
  apt_update_once # the version linux-image-cloud-amd64 names may be gone from older lists
  fetch_kernel bookworm
fi
if ! kernel_present backports; then
  prepare_backports_apt
  fetch_kernel backports "${BACKPORTS_APT[@]}"
fi
build_battery
build_static "$GUEST_SRC/daxtool.c" "$CACHE/daxtool"
build_initramfs bookworm
build_initramfs backports
build_dax_initramfs
# QEMU 11.1 (the DAX guest) and the Rust virtiofsd (second reference daemon).
PEERS=$(bash "$ROOT/scripts/peers/setup.sh")

for name in bookworm backports; do
  echo "$name: kernel $(cat "$CACHE/$name/kernel-release")"
  echo "  kernel:    $CACHE/$name/vmlinuz"
  echo "  initramfs: $CACHE/$name/initrd.gz"
done
echo "qemu: $(command -v qemu-system-x86_64) ($(qemu-system-x86_64 --version | head -n 1))"
echo "reference daemon: /usr/lib/qemu/virtiofsd"
echo "battery: $CACHE/battery"
echo "DAX initramfs: $CACHE/backports/dax-initrd.gz"
echo "$PEERS"
