#!/usr/bin/env bash
# Manual check (docs/checks/libvirt.md): a real libvirt starts virtiofsd-ts
# for a TCG guest, the guest mounts the share, writes a file, lists the share
# and powers off; the host sees the file; the daemon leaves nothing behind.
#
# Run as root on a Debian 12 machine without systemd as PID 1 (no KVM needed):
#   scripts/manual/libvirt-check.sh            # bookworm's libvirt 9.0 (machine's apt)
#   LV_TRIXIE=1 LV_NODE=host scripts/manual/libvirt-check.sh
#       trixie's libvirt 11.x in a private root (.cache/libvirt-root), incl.
#       session mode; LV_NODE=host runs the daemon on this machine's Node,
#       since trixie's own nodejs gets the daemon killed by its seccomp
#       filter (io_uring_enter; docs/checks/libvirt.md, problem 1)
# It installs what it needs, starts virtlogd + libvirtd by hand if they are
# not running (Debian ships no virtqemud, even in trixie), installs virtiofsd-ts
# as README.md says (npm ci && npm pack && npm install -g) from a clone of
# this checkout, and runs these domains one after another:
#   ns        <binary path=/usr/bin/virtiofsd-ts>, <sandbox mode='namespace'/>, guest powers off
#   chroot    same with <sandbox mode='chroot'/>, guest stays up, `virsh destroy`
#   desc      no <binary>: found through contrib/qemu/60-virtiofsd-ts.json
#             installed as /etc/qemu/vhost-user/40-virtiofsd-ts.json
#   session   (trixie only) qemu:///session as user lvcheck with /etc/subuid entries
# LV_RUNS="ns chroot" picks runs. Every line starting with "==" or "  " is evidence.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LV_DIR=${LV_DIR:-$ROOT/.cache/libvirt}
TROOT=${LV_TROOT:-$ROOT/.cache/libvirt-root}
TRIXIE=${LV_TRIXIE:-0}
SRC=/tmp/lv-src
E2E=$ROOT/.cache/e2e/bookworm
MIRROR=${LV_MIRROR:-http://deb.debian.org/debian}
export DEBIAN_FRONTEND=noninteractive
say() { echo "== $*"; }
indent() { sed 's/^/  /'; }

# Where libvirt and the daemon live: / (bookworm) or the trixie root. $IN
# prefixes a command to run there; paths libvirt sees are $P (inside).
if [ "$TRIXIE" = 1 ] && [ -z "${LV_IN_NS:-}" ]; then
  # Everything of the trixie run happens in a private mount namespace; the
  # daemons it starts are stopped at the end (stop_trixie_daemons).
  exec unshare --mount --propagation private -- env LV_IN_NS=1 "$0" "$@"
fi
if [ "$TRIXIE" = 1 ]; then
  RUNS=${LV_RUNS:-ns chroot desc session}
  SYS=$TROOT
  IN=(chroot "$TROOT")
  P=/lvcheck            # $LV_DIR bind-mounted here inside the root
else
  RUNS=${LV_RUNS:-ns chroot desc}
  SYS=
  IN=()
  P=$LV_DIR
fi
virsh_() { "${IN[@]}" virsh -c qemu:///system "$@"; }

# ---- 1. libvirt ---------------------------------------------------------
setup_bookworm() {
  local p missing=()
  for p in libvirt-daemon-driver-qemu libvirt-daemon libvirt-clients qemu-system-x86 busybox-static cpio; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# trixie: a minbase root with libvirt, QEMU and Node 20 (scripts/peers/setup.sh
# builds its root the same way); the daemons run chrooted into it.
setup_trixie() {
  if [ ! -f "$TROOT/.bootstrapped" ]; then
    command -v debootstrap >/dev/null || { apt-get update -qq; apt-get install -y -qq debootstrap >/dev/null; }
    rm -rf "$TROOT" "$TROOT.tmp"
    debootstrap --variant=minbase trixie "$TROOT.tmp" "$MIRROR" >/dev/null
    echo "deb $MIRROR trixie main" > "$TROOT.tmp/etc/apt/sources.list"
    printf '#!/bin/sh\nexit 101\n' > "$TROOT.tmp/usr/sbin/policy-rc.d"
    chmod 0755 "$TROOT.tmp/usr/sbin/policy-rc.d"
    touch "$TROOT.tmp/.bootstrapped"
    mv "$TROOT.tmp" "$TROOT"
  fi
  # We run in a private mount namespace (re-exec below): the root is bound on
  # itself (libvirt's per-QEMU mount namespace and the daemon's own sandbox
  # need "/" to be a mount point), with /proc, /dev, /sys and a /run, /tmp of
  # its own; all of it goes away with the namespace.
  mount --bind "$TROOT" "$TROOT"
  mount -t proc proc "$TROOT/proc"
  mount --rbind /dev "$TROOT/dev"
  mount --rbind /sys "$TROOT/sys"
  mount -t tmpfs tmpfs "$TROOT/run"
  mount -t tmpfs tmpfs "$TROOT/tmp"
  mkdir -p "$TROOT$P" "$LV_DIR"
  mount --bind "$LV_DIR" "$TROOT$P"
  if [ ! -x "$TROOT/usr/sbin/libvirtd" ] || [ ! -x "$TROOT/usr/bin/node" ] || [ ! -f "$TROOT/etc/ssl/certs/ca-certificates.crt" ]; then
    cp -L /etc/resolv.conf "$TROOT/etc/resolv.conf"
    chroot "$TROOT" apt-get update -qq
    chroot "$TROOT" apt-get install -y -qq --no-install-recommends \
      libvirt-daemon-driver-qemu libvirt-daemon libvirt-clients qemu-system-x86 nodejs ca-certificates uidmap passwd >/dev/null
    chroot "$TROOT" apt-get clean
  fi
}

# qemu.conf: QEMU as root (no libvirt-qemu user needed for the guest's files);
# Debian's build resolves libvirt-qemu:libvirt-qemu (and swtpm's) before it
# reads the file, so the user and group must exist anyway.
configure_libvirt() {
  chroot "${SYS:-/}" sh -c 'getent group kvm >/dev/null || groupadd --system kvm
    getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
    id libvirt-qemu >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /var/lib/libvirt --shell /usr/sbin/nologin --gid kvm libvirt-qemu'
  mkdir -p "$SYS/etc/libvirt" "$SYS/var/log/libvirt"
  # util.command at debug level: the log names every command libvirt runs.
  cat > "$SYS/etc/libvirt/libvirtd.conf" <<'EOF'
log_filters = "1:util.command 4:*"
log_outputs = "1:file:/var/log/libvirt/libvirtd.log"
EOF
  cat > "$SYS/etc/libvirt/qemu.conf" <<'EOF'
# scripts/manual/libvirt-check.sh: no systemd, QEMU runs as root
user = "root"
group = "root"
swtpm_user = "root"
swtpm_group = "root"
EOF
}

start_daemons() {
  if [ "$TRIXIE" = 1 ]; then
    [ -S "$TROOT/run/libvirt/virtlogd-sock" ] || "${IN[@]}" virtlogd -d
    [ -S "$TROOT/run/libvirt/libvirt-sock" ] || "${IN[@]}" libvirtd -d
  else
    [ -S /run/libvirt/virtlogd-sock ] || virtlogd -d
    [ -S /run/libvirt/libvirt-sock ] || libvirtd -d
  fi
  local i
  for i in $(seq 50); do virsh_ version >/dev/null 2>&1 && break; sleep 0.2; done
  say "libvirt"
  virsh_ version | indent
}

# ---- 2. virtiofsd-ts as README.md installs it ---------------------------
install_virtiofsd_ts() {
  if [ ! -x /usr/bin/virtiofsd-ts ] || [ "${LV_REINSTALL:-0}" = 1 ]; then
    rm -rf "$SRC"
    git clone -q "$ROOT" "$SRC"
    (cd "$SRC" && npm ci --no-audit --no-fund >/dev/null && npm pack >/dev/null && npm install -g ./virtiofsd-ts-*.tgz >/dev/null)
  fi
  if [ "$TRIXIE" = 1 ]; then
    # The same installed package inside the root, run by trixie's Node 20.
    rm -rf "$TROOT/usr/lib/node_modules/virtiofsd-ts"
    mkdir -p "$TROOT/usr/lib/node_modules"
    cp -a "$(npm root -g)/virtiofsd-ts" "$TROOT/usr/lib/node_modules/"
    ln -sf ../lib/node_modules/virtiofsd-ts/bin/virtiofsd-ts.js "$TROOT/usr/bin/virtiofsd-ts"
    # LV_NODE=host: this machine's Node (nodejs.org build, bundled libuv) in
    # /usr/local/bin, ahead of trixie's /usr/bin/node on PATH; see
    # docs/checks/libvirt.md for why trixie's own Node fails.
    if [ "${LV_NODE:-debian}" = host ]; then
      install -m 0755 "$(command -v node)" "$TROOT/usr/local/bin/node"
    else
      rm -f "$TROOT/usr/local/bin/node"
    fi
  fi
  say "virtiofsd-ts"
  "${IN[@]}" sh -c 'ls -l /usr/bin/virtiofsd-ts; command -v node; node -p "process.version + \" libuv \" + process.versions.uv"; virtiofsd-ts --version; virtiofsd-ts --print-capabilities' | indent
}

# ---- 3. the guest -------------------------------------------------------
# The e2e bookworm kernel (6.1) and the modules of its initramfs
# (scripts/e2e/setup.sh), with an /init of our own.
build_guest() {
  [ -f "$E2E/initrd.gz" ] || "$ROOT/scripts/e2e/setup.sh" >/dev/null
  local stage=$LV_DIR/initramfs
  rm -rf "$stage"
  mkdir -p "$stage"
  (cd "$stage" && zcat "$E2E/initrd.gz" | cpio -idm --quiet && rm -f workload.sh bin/battery)
  cat > "$stage/init" <<'EOF'
#!/bin/sh
# PID 1 of the libvirt check guest: mount the tag myfs, write, list, power off
# (or, with lvcheck.hold on the command line, wait for `virsh destroy`).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
while read -r ko; do insmod "/modules/$ko" || echo "LVCHECK-FAIL insmod $ko"; done < /modules/load-order
read -r cmdline < /proc/cmdline
if mount -t virtiofs myfs /mnt; then
  echo "LVCHECK-OK mount: $(grep virtiofs /proc/mounts)"
  echo "written by the guest, kernel $(uname -r), $cmdline" > /mnt/from-guest.txt && sync &&
    echo "LVCHECK-OK write /mnt/from-guest.txt"
  echo "LVCHECK-LS"; ls -ln /mnt
  echo "LVCHECK-CAT host-file.txt: $(cat /mnt/host-file.txt)"
  case "$cmdline" in
    *lvcheck.hold*) echo "LVCHECK-HOLD"; while :; do sleep 60; done ;;
  esac
  umount /mnt && echo "LVCHECK-OK umount"
else
  echo "LVCHECK-FAIL mount -t virtiofs myfs /mnt"
fi
echo "LVCHECK-DONE"
sync
poweroff -f
EOF
  chmod 0755 "$stage/init"
  (cd "$stage" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -9 > "$LV_DIR/initrd.gz"
  rm -rf "$stage"
  cp "$E2E/vmlinuz" "$LV_DIR/vmlinuz"
}

# domain_xml NAME SANDBOX BINARY(yes|no) HOLD(yes|no) DIR(inside path)
domain_xml() {
  local name=$1 sandbox=$2 binary=$3 hold=$4 d=$5 bin='' extra=''
  [ "$binary" = yes ] && bin=" path='/usr/bin/virtiofsd-ts'"
  [ "$hold" = yes ] && extra=' lvcheck.hold'
  cat <<EOF
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$d/vmlinuz</kernel>
    <initrd>$d/initrd.gz</initrd>
    <cmdline>console=ttyS0 panic=-1$extra</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <filesystem type='mount' accessmode='passthrough'>
      <driver type='virtiofs' queue='1024'/>
      <binary$bin xattr='on'>
        <cache mode='always'/>
        <sandbox mode='$sandbox'/>
        <thread_pool size='4'/>
      </binary>
      <source dir='$d/share-$name'/>
      <target dir='myfs'/>
    </filesystem>
    <serial type='file'>
      <source path='$d/console-$name.log'/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path='$d/console-$name.log'/>
      <target type='serial' port='0'/>
    </console>
  </devices>
</domain>
EOF
}

# The daemons libvirt started for domain $1 (their share's path holds its name).
vfsd_procs() { ps -eo pid,ppid,user,args | awk -v n="share-$1" 'index($0, n) && /[\/]usr[\/]bin[\/]virtiofsd-ts/ && !/awk/'; }

# run NAME SANDBOX BINARY HOLD URI [USER]
run() {
  local name=$1 sandbox=$2 binary=$3 hold=$4 uri=$5 user=${6:-root} d=$P host=$LV_DIR home=
  local v=("${IN[@]}")
  if [ "$user" != root ]; then
    # The user's own directory with the guest's files: session QEMU runs as the user.
    home=$(chroot "${SYS:-/}" sh -c "echo ~$user")
    # Not chroot: unshare(CLONE_NEWUSER) fails with EPERM in a chroot (user_namespaces(7)),
    # so the session's libvirtd (and the daemon it starts) run in a mount
    # namespace whose root *is* the trixie root (pivot_root).
    v=(unshare --mount --propagation private -- sh -c 'cd "$0" && mkdir -p .oldroot && pivot_root . .oldroot && umount -l /.oldroot && exec "$@"'
       "$TROOT" runuser -u "$user" -- env HOME="$home")
    mkdir -p "$SYS$home/.config/libvirt" "$SYS$home/.cache/libvirt"
    printf 'log_filters = "1:util.command 4:*"\nlog_outputs = "1:file:%s/.cache/libvirt/libvirtd.log"\n' "$home" > "$SYS$home/.config/libvirt/libvirtd.conf"
    chroot "$TROOT" chown -R "$user:" "$home/.config" "$home/.cache"
    d=$P/$user host=$LV_DIR/$user
    mkdir -p "$host"
    cp "$LV_DIR/vmlinuz" "$LV_DIR/initrd.gz" "$host/"
  fi
  local vsh=("${v[@]}" virsh -c "$uri")
  local share=$host/share-$name console=$host/console-$name.log i state
  say "run $name: $uri, sandbox $sandbox, binary path: $binary, guest ${hold/yes/waits for virsh destroy}"
  "${vsh[@]}" destroy "$name" >/dev/null 2>&1 || true
  "${vsh[@]}" undefine "$name" >/dev/null 2>&1 || true
  rm -rf "$share" "$console"
  mkdir -p "$share"
  echo "written by the host" > "$share/host-file.txt"
  [ "$user" != root ] && chown -R "$(chroot "${SYS:-/}" id -u "$user"):$(chroot "${SYS:-/}" id -g "$user")" "$host"
  domain_xml "$name" "$sandbox" "$binary" "$hold" "$d" > "$host/$name.xml"
  local t0
  t0=$(cut -d' ' -f1 /proc/uptime)
  local llog=$SYS/var/log/libvirt/libvirtd.log
  [ "$user" != root ] && llog=$SYS$home/.cache/libvirt/libvirtd.log
  rm -f "$SYS/var/log/libvirt/qemu/$name-fs0-virtiofsd.log" "$SYS$home/.cache/libvirt/qemu/log/$name-fs0-virtiofsd.log"
  [ -f "$llog" ] && : > "$llog"
  say "virsh define + start"
  "${vsh[@]}" define "$d/$name.xml" 2>&1 | indent || true
  if ! "${vsh[@]}" start "$name" 2>&1 | indent; then say "start FAILED"; fi
  say "the daemon's command line as libvirt ran it (libvirtd.log, util.command)"
  grep -a -o 'About to run .*virtiofsd-ts.*' "$llog" 2>/dev/null | indent || true
  say "virtiofsd-ts processes (ps -o pid,ppid,user,args)"
  vfsd_procs "$name" | indent
  for i in $(seq 120); do
    grep -q 'LVCHECK-DONE\|LVCHECK-HOLD' "$console" 2>/dev/null && break
    sleep 1
  done
  say "guest console"
  grep -a 'LVCHECK\|^[-d]r\|^total\|virtiofs\|fuse' "$console" | indent || true
  if [ "$hold" = yes ]; then
    say "virsh destroy (guest still running)"
    "${vsh[@]}" destroy "$name" 2>&1 | indent || true
  fi
  for i in $(seq 60); do
    state=$("${vsh[@]}" domstate "$name" 2>/dev/null || true)
    [ "$state" = "shut off" ] && break
    sleep 1
  done
  say "domstate: $state"
  sleep 1
  local logdir=$SYS/var/log/libvirt/qemu
  [ "$user" != root ] && logdir=$SYS$home/.cache/libvirt/qemu/log
  say "daemon log ($logdir/$name-fs0-virtiofsd.log)"
  indent < "$logdir/$name-fs0-virtiofsd.log" 2>&1 || true
  say "seccomp kills since start (kernel audit, type=1326 sig=31)"
  dmesg 2>/dev/null | awk -v t0="$t0" '/type=1326/ && /sig=31/ { ts = $0; sub(/^\[ */, "", ts); sub(/\].*/, "", ts); if (ts + 0 >= t0 + 0) print }' | indent || true
  say "host: $share"
  ls -ln "$share" | indent
  indent < "$share/from-guest.txt" 2>&1 || true
  say "left behind (virtiofsd-ts processes, *-fs.pid, *-fs.sock; nothing below means nothing)"
  vfsd_procs "$name" | indent
  find "$SYS/run" /run "$SYS/var/lib/libvirt" "$logdir/.." -path "*$name*" \( -name '*-fs.pid' -o -name '*-fs.sock' \) 2>/dev/null | sort -u | indent
  "${vsh[@]}" undefine "$name" >/dev/null 2>&1 || true
}

# session mode: user lvcheck with subordinate ids, its own virtqemud
# (autostarted by virsh -c qemu:///session).
setup_session_user() {
  chroot "$TROOT" sh -c 'id lvcheck >/dev/null 2>&1 || useradd --create-home --shell /bin/sh lvcheck
    grep -q "^lvcheck:" /etc/subuid || echo "lvcheck:200000:65536" >> /etc/subuid
    grep -q "^lvcheck:" /etc/subgid || echo "lvcheck:200000:65536" >> /etc/subgid'
  say "session user"
  chroot "$TROOT" sh -c 'id lvcheck; grep lvcheck /etc/subuid /etc/subgid; ls -l /usr/bin/newuidmap /usr/bin/newgidmap' | indent
}

if [ "$TRIXIE" = 1 ]; then setup_trixie; else setup_bookworm; fi
configure_libvirt
start_daemons
install_virtiofsd_ts
mkdir -p "$LV_DIR"
build_guest
for r in $RUNS; do
  case $r in
    ns) run lvcheck-ns namespace yes no qemu:///system ;;
    chroot) run lvcheck-chroot chroot yes yes qemu:///system ;;
    desc)
      install -Dm644 "$(npm root -g)/virtiofsd-ts/contrib/qemu/60-virtiofsd-ts.json" "$SYS/etc/qemu/vhost-user/40-virtiofsd-ts.json"
      say "descriptors"; ls "$SYS/usr/share/qemu/vhost-user/" "$SYS/etc/qemu/vhost-user/" 2>&1 | indent || true
      run lvcheck-desc namespace no no qemu:///system
      rm -f "$SYS/etc/qemu/vhost-user/40-virtiofsd-ts.json" ;;
    session)
      setup_session_user
      chmod 0755 "$LV_DIR"
      run lvcheck-session namespace yes no qemu:///session lvcheck ;;
    *) echo "unknown run $r" >&2; exit 2 ;;
  esac
done
if [ "$TRIXIE" = 1 ]; then
  # The namespace ends with its last process: stop the daemons we started.
  for f in "$TROOT"/run/libvirtd.pid "$TROOT"/run/virtlogd.pid "$TROOT"/home/*/.cache/libvirt/libvirtd.pid "$TROOT"/home/*/.cache/libvirt/virtlogd.pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
fi
