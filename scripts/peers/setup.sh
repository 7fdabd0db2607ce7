#!/usr/bin/env bash
# Newer peers for the tests and benchmarks that need them (see
# docs/dax.md "A real Linux guest with DAX"):
#   - QEMU 11.1 (trixie-backports): the first QEMU whose vhost-user devices
#     carry the shared-memory messages, so a real Linux guest gets a DAX
#     window through `vhost-user-test-device-pci`
#   - the Rust virtiofsd (trixie): the daemon users deploy today, a second
#     reference beside QEMU 7.2's C virtiofsd
# Both need a newer glibc than Debian 12's, so they live in a trixie root
# (debootstrap --variant=minbase) under $CACHE/trixie and run on the host
# through trixie's own dynamic loader, by the wrappers this script writes to
# $CACHE/bin/{qemu-system-x86_64,virtiofsd}. Apt inside that root uses the
# root's own configuration: the machine's apt sources are never touched.
#
# Idempotent: a re-run with everything in place takes well under a second.
# Run as root (debootstrap, chroot). PEERS_CACHE_DIR overrides the cache,
# PEERS_MIRROR the Debian mirror (default: the machine's bookworm mirror).
# Prints `KEY=VALUE` lines (PEERS_QEMU, PEERS_VIRTIOFSD, PEERS_ROOT) at the
# end; `eval "$(scripts/peers/setup.sh)"` exports them.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${PEERS_CACHE_DIR:-$ROOT/.cache/peers}
TROOT=$CACHE/trixie
BIN=$CACHE/bin
export DEBIAN_FRONTEND=noninteractive
log() { echo "peers-setup: $*" >&2; }

# The machine's Debian mirror: first URI of the deb822 stanza naming bookworm.
mirror() {
  if [ -n "${PEERS_MIRROR:-}" ]; then echo "$PEERS_MIRROR"; return; fi
  local src=/etc/apt/sources.list.d/debian.sources uri=
  [ -f "$src" ] && uri=$(awk 'BEGIN { RS = ""; FS = "\n" }
    { uri = ""; hit = 0
      for (i = 1; i <= NF; i++) {
        split($i, w, /[ \t]+/)
        if (w[1] == "URIs:") uri = w[2]
        if (w[1] == "Suites:") for (j = 2; j in w; j++) if (w[j] == "bookworm") hit = 1
      }
      if (hit && uri != "") { print uri; exit } }' "$src")
  echo "${uri:-http://deb.debian.org/debian}"
}

# in_root CMD...: CMD chrooted into the trixie root, with /proc and /dev
# mounted in a private mount namespace (nothing stays mounted afterwards).
in_root() {
  unshare --mount --propagation private -- sh -c '
    root=$1; shift
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    exec chroot "$root" "$@"' sh "$TROOT" "$@"
}

ensure_debootstrap() {
  command -v debootstrap >/dev/null && return
  log "installing debootstrap (machine's apt)"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends debootstrap
}

# bootstrap: the minbase trixie root, built in $TROOT.tmp and renamed at the
# end, so $TROOT is complete or absent.
bootstrap() {
  [ -f "$TROOT/.bootstrapped" ] && return
  ensure_debootstrap
  local uri
  uri=$(mirror)
  log "debootstrap --variant=minbase trixie from $uri"
  rm -rf "$TROOT" "$TROOT.tmp"
  mkdir -p "$CACHE"
  debootstrap --variant=minbase trixie "$TROOT.tmp" "$uri" >&2
  cat > "$TROOT.tmp/etc/apt/sources.list" <<EOF
deb $uri trixie main
deb $uri trixie-backports main
EOF
  # No daemons start inside the root.
  printf '#!/bin/sh\nexit 101\n' > "$TROOT.tmp/usr/sbin/policy-rc.d"
  chmod 0755 "$TROOT.tmp/usr/sbin/policy-rc.d"
  touch "$TROOT.tmp/.bootstrapped"
  mv "$TROOT.tmp" "$TROOT"
}

# install_peers: qemu-system-x86 from trixie-backports, virtiofsd from trixie.
install_peers() {
  if [ -x "$TROOT/usr/bin/qemu-system-x86_64" ] && [ -x "$TROOT/usr/libexec/virtiofsd" ]; then
    return
  fi
  cp -L /etc/resolv.conf "$TROOT/etc/resolv.conf"
  log "apt-get install qemu-system-x86 (trixie-backports), virtiofsd (trixie) in $TROOT"
  in_root apt-get update -qq
  in_root apt-get install -y -qq --no-install-recommends -t trixie-backports qemu-system-x86 >&2
  in_root apt-get install -y -qq --no-install-recommends virtiofsd >&2
  in_root apt-get clean
}

# write_wrappers: $BIN/qemu-system-x86_64 and $BIN/virtiofsd run the root's
# binaries through the root's loader and libraries.
write_wrappers() {
  local libs=$TROOT/lib/x86_64-linux-gnu:$TROOT/usr/lib/x86_64-linux-gnu
  mkdir -p "$BIN"
  cat > "$BIN/qemu-system-x86_64.tmp" <<EOF
#!/bin/sh
# QEMU from the trixie root (scripts/peers/setup.sh), through trixie's loader.
export QEMU_MODULE_DIR=$TROOT/usr/lib/x86_64-linux-gnu/qemu
exec $TROOT/lib64/ld-linux-x86-64.so.2 --library-path $libs $TROOT/usr/bin/qemu-system-x86_64 -L $TROOT/usr/share/qemu -L $TROOT/usr/share/seabios "\$@"
EOF
  cat > "$BIN/virtiofsd.tmp" <<EOF
#!/bin/sh
# The Rust virtiofsd from the trixie root (scripts/peers/setup.sh), through trixie's loader.
exec $TROOT/lib64/ld-linux-x86-64.so.2 --library-path $libs $TROOT/usr/libexec/virtiofsd "\$@"
EOF
  chmod 0755 "$BIN/qemu-system-x86_64.tmp" "$BIN/virtiofsd.tmp"
  mv "$BIN/qemu-system-x86_64.tmp" "$BIN/qemu-system-x86_64"
  mv "$BIN/virtiofsd.tmp" "$BIN/virtiofsd"
}

bootstrap
install_peers
write_wrappers
log "qemu: $("$BIN/qemu-system-x86_64" --version | head -n 1)"
log "virtiofsd: $("$BIN/virtiofsd" --version 2>&1 | head -n 1)"
echo "PEERS_ROOT=$TROOT"
echo "PEERS_QEMU=$BIN/qemu-system-x86_64"
echo "PEERS_VIRTIOFSD=$BIN/virtiofsd"
