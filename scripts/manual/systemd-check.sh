#!/usr/bin/env bash
# The shipped systemd units under a real systemd as PID 1 (issue 11), end to end;
# docs/checks/systemd.md records a run.
#
# A Debian bookworm root (debootstrap --variant=minbase + systemd, dbus) in
# $SDCHECK_ROOT (default .cache/systemd-root) boots /lib/systemd/systemd as
# PID 1 of its own pid, mount, uts, ipc, net and cgroup namespaces, with
# container=virtiofsd-ts-check set. Nothing it mounts is seen by the host
# (private mount namespace); /proc/sys, /sys and the cgroup tree it may write
# are its own or read-only; its cgroup is a fresh child of the host's cgroup2
# tree, which the teardown kills whole.
#
# Inside: the package from `npm pack` of a clone of this checkout's HEAD,
# installed with `npm install -g --prefix ROOT/usr` (the host's node 20 and npm
# copied in, so that is the root's global prefix), the
# units installed as docs/operations.md says, the socket enabled, then
#   1. a front-end that holds the connection (the package's own
#      VhostUserFrontend) -> systemctl status while served;
#   2. it leaves -> the service is inactive (exit 0), not failed;
#   3. `virtiofsd-ts probe` twice (each connection starts the service again);
#   4. a real QEMU guest (host QEMU, TCG, the e2e kernel+initramfs, mode basic)
#      if .cache/e2e/bookworm exists (SDCHECK_QEMU=0 skips it);
#   5. journalctl -p info / -p warning; 6. systemd-analyze security;
#   6b. a front-end that breaks the protocol (exit 1, Restart=on-failure);
#   7. the start limit: 7 connections in a row, and a daemon failing at start;
#   8. the same with the drop-in docs/checks/systemd.md proposes.
# The container is torn down at the end, also on failure.
#
# Usage (as root): scripts/manual/systemd-check.sh [run|stop]
#   SDCHECK_KEEP=1     leave the container running (prints how to enter it; `stop` ends it)
#   SDCHECK_CHECKS=0   boot only, no checks
#   SDCHECK_TGZ=FILE   install this tarball instead of packing HEAD
#   SDCHECK_SYSTEMD=/lib/systemd/systemd   the init to exec
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ROOTFS=${SDCHECK_ROOT:-$REPO/.cache/systemd-root}
WORK=${SDCHECK_WORK:-/tmp/virtiofsd-ts-systemd-check}
CGROUP=/sys/fs/cgroup/unified/virtiofsd-ts-systemd-check
INIT=${SDCHECK_SYSTEMD:-/lib/systemd/systemd}
UNIT=virtiofsd-ts@share1
SOCK=/run/virtiofsd-ts/share1.sock
export DEBIAN_FRONTEND=noninteractive
log() { echo "== $*" >&2; }
die() { echo "systemd-check: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root"
[ -d /sys/fs/cgroup/unified ] || [ -f /sys/fs/cgroup/cgroup.procs ] || die "no cgroup2 tree"
# A pure cgroup2 host has its tree at /sys/fs/cgroup itself.
[ -d /sys/fs/cgroup/unified ] || CGROUP=/sys/fs/cgroup/virtiofsd-ts-systemd-check

mirror() {
  local src=/etc/apt/sources.list.d/debian.sources uri=
  [ -f "$src" ] && uri=$(awk '$1 == "URIs:" { print $2; exit }' "$src")
  echo "${uri:-http://deb.debian.org/debian}"
}

# --- the root -----------------------------------------------------------------
bootstrap() {
  [ -f "$ROOTFS/.bootstrapped" ] && return
  command -v debootstrap >/dev/null || { apt-get update -qq; apt-get install -y -qq --no-install-recommends debootstrap; }
  log "debootstrap bookworm into $ROOTFS"
  rm -rf "$ROOTFS.tmp"
  mkdir -p "$(dirname "$ROOTFS")"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus bookworm "$ROOTFS.tmp" "$(mirror)" >&2
  touch "$ROOTFS.tmp/.bootstrapped"
  mv "$ROOTFS.tmp" "$ROOTFS"
}

# in_chroot CMD...: CMD in the root before it boots, /proc /dev mounted in a
# private mount namespace (gone when CMD ends).
in_chroot() {
  unshare --mount --propagation private -- sh -c '
    r=$1; shift
    mount -t proc proc "$r/proc"
    mount --rbind /dev "$r/dev"
    exec chroot "$r" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"' \
    sh "$ROOTFS" "$@"
}

# The host's node (Debian 12 ships 18; the host has 20) and npm, copied in.
install_node() {
  local npmdir
  npmdir=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")
  if ! cmp -s "$(command -v node)" "$ROOTFS/usr/bin/node"; then
    log "copying $(command -v node) ($(node --version)) and $npmdir into the root"
    install -m755 "$(command -v node)" "$ROOTFS/usr/bin/node"
    rm -rf "$ROOTFS/usr/lib/node_modules/npm"
    mkdir -p "$ROOTFS/usr/lib/node_modules"
    cp -a "$npmdir" "$ROOTFS/usr/lib/node_modules/npm"
    ln -sfn ../lib/node_modules/npm/bin/npm-cli.js "$ROOTFS/usr/bin/npm"
  fi
}

pack() {
  if [ -n "${SDCHECK_TGZ:-}" ]; then TGZ=$SDCHECK_TGZ; return; fi
  log "npm pack of a clone of $(git -C "$REPO" rev-parse --short HEAD)"
  rm -rf "$WORK/src"
  mkdir -p "$WORK"
  git clone -q "$REPO" "$WORK/src"
  (cd "$WORK/src" && npm ci --no-audit --no-fund && npm pack) > "$WORK/pack.log" 2>&1 ||
    { tail -30 "$WORK/pack.log" >&2; die "npm ci / npm pack failed (log: $WORK/pack.log)"; }
  TGZ=$(ls "$WORK"/src/virtiofsd-ts-*.tgz)
  log "packed $TGZ"
}

install_package() {
  # README's `npm install -g` of the tarball, run by the host's npm (it has the
  # registry's network setup) with the root's /usr as prefix: inside the root
  # that is node's own global prefix, so `npm root -g` there finds the package
  # and its bin is /usr/bin/virtiofsd-ts, the path ExecStart= names.
  log "npm install -g --prefix $ROOTFS/usr $(basename "$TGZ")"
  npm install -g --prefix "$ROOTFS/usr" --no-audit --no-fund "$TGZ" > "$WORK/install.log" 2>&1 ||
    { cat "$WORK/install.log" >&2; die "npm install -g failed"; }
  # npm 11 runs no install script it was not told to allow: the package must
  # work from its prebuilt files then (README); say so when it happens.
  grep -E 'install-scripts +[a-z]' "$WORK/install.log" >&2 || true
  [ -x "$ROOTFS/usr/bin/virtiofsd-ts" ] || die "/usr/bin/virtiofsd-ts missing in the root after npm install -g"
  in_chroot sh -c '
    set -e
    PKG=$(npm root -g)/virtiofsd-ts
    install -m644 $PKG/contrib/systemd/virtiofsd-ts@.* /etc/systemd/system/
    # No drop-in of an earlier run (section 8 adds one and removes it).
    rm -rf /etc/systemd/system/virtiofsd-ts@.service.d
    # A volatile journal: every boot of the container shares the host kernel
    # boot id, so journalctl -b could not tell runs apart in a persistent one.
    rm -rf /var/log/journal
    mkdir -p /srv/virtiofs/share1
    getent group kvm >/dev/null || groupadd --system kvm
    # Units whose effect would reach the host kernel (sysctl, modules, binfmt), or
    # that wait for a terminal nobody watches.
    # The kernel-wide file systems too (debugfs, tracefs, fusectl, configfs).
    for u in systemd-sysctl.service systemd-modules-load.service systemd-binfmt.service \
             proc-sys-fs-binfmt_misc.automount console-getty.service getty@.service \
             systemd-firstboot.service sys-kernel-debug.mount sys-kernel-tracing.mount \
             sys-fs-fuse-connections.mount sys-kernel-config.mount; do
      ln -sfn /dev/null /etc/systemd/system/$u
    done
    echo virtiofsd-ts-check > /etc/hostname
    systemd-machine-id-setup >/dev/null 2>&1 || true' >&2
}

# --- the container ------------------------------------------------------------
# systemd-nspawn's default capability set (systemd-nspawn(1), --capability=; with
# CAP_NET_ADMIN, which it adds for --private-network: our net namespace is private),
# as setpriv names them, less any this machine's root lacks (here the
# firecracker VM's root has no CAP_SYS_RESOURCE: setpriv would refuse it).
NSPAWN_CAPS="chown dac_override dac_read_search fowner fsetid ipc_owner kill lease linux_immutable mknod
  net_admin net_bind_service net_broadcast net_raw setfcap setgid setpcap setuid sys_admin sys_boot sys_chroot
  sys_nice sys_ptrace sys_resource sys_tty_config audit_control audit_write"
container_caps() {
  local bnd c n out=()
  bnd=$((16#$(awk '/^CapBnd:/ {print $2}' /proc/self/status)))
  for c in $NSPAWN_CAPS; do
    n=$(cap_number "$c")
    if (( (bnd >> n) & 1 )); then out+=("+$c"); else echo "note: this machine's root lacks cap_$c; so does the container" >&2; fi
  done
  (IFS=,; echo "${out[*]}")
}
# The capability numbers of linux/capability.h, for the names above.
cap_number() {
  case $1 in
    chown) echo 0 ;; dac_override) echo 1 ;; dac_read_search) echo 2 ;; fowner) echo 3 ;; fsetid) echo 4 ;;
    kill) echo 5 ;; setgid) echo 6 ;; setuid) echo 7 ;; setpcap) echo 8 ;; linux_immutable) echo 9 ;;
    net_bind_service) echo 10 ;; net_broadcast) echo 11 ;; net_admin) echo 12 ;; net_raw) echo 13 ;; ipc_owner) echo 15 ;;
    sys_chroot) echo 18 ;; sys_ptrace) echo 19 ;; sys_admin) echo 21 ;; sys_boot) echo 22 ;;
    sys_nice) echo 23 ;; sys_resource) echo 24 ;; sys_tty_config) echo 26 ;; mknod) echo 27 ;;
    lease) echo 28 ;; audit_write) echo 29 ;; audit_control) echo 30 ;; setfcap) echo 31 ;;
    *) echo "unknown capability $1" >&2; return 1 ;;
  esac
}
# Host pid of the container's PID 1 (systemd), once it runs, and of the unshare above it.
PID1=
UNSHARE_PID=
boot() {
  log "booting $INIT as PID 1"
  mkdir -p "$WORK"
  : > "$WORK/console.log"
  rmdir "$CGROUP" 2>/dev/null || true
  mkdir -p "$CGROUP"
  # The shell moves itself into the fresh cgroup, then unshare: the new cgroup
  # namespace's root is that cgroup; systemd sees a unified cgroup2 tree there.
  sh -c '
    echo $$ > "$1/cgroup.procs"
    exec unshare --cgroup --pid --mount --uts --ipc --net --fork --propagation private -- sh -c "
      set -e
      r=\$1 init=\$2 console=\$3 caps=\$4
      mount --bind \$r \$r
      mount -t proc proc \$r/proc
      # /proc/sys and the trigger read-only: sysctls are mostly not namespaced.
      mount --bind \$r/proc/sys \$r/proc/sys
      mount -o remount,bind,ro \$r/proc/sys
      if [ -e \$r/proc/sysrq-trigger ]; then mount --bind /dev/null \$r/proc/sysrq-trigger; fi
      mount -t sysfs -o ro sysfs \$r/sys
      mount -t cgroup2 cgroup2 \$r/sys/fs/cgroup
      # A /dev of its own, the nodes a container gets (as systemd-nspawn does).
      mount -t tmpfs -o mode=755,nosuid devtmpfs \$r/dev
      for n in null zero full random urandom tty; do
        touch \$r/dev/\$n; mount --bind /dev/\$n \$r/dev/\$n
      done
      mkdir \$r/dev/pts \$r/dev/shm
      mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts \$r/dev/pts
      ln -s pts/ptmx \$r/dev/ptmx
      touch \$r/dev/console; mount --bind \$console \$r/dev/console
      cd \$r
      mkdir -p .oldroot
      pivot_root . .oldroot
      umount -l /.oldroot
      # The capability bounding set systemd-nspawn gives a container (no
      # CAP_SYS_MODULE, CAP_SYS_RAWIO, CAP_SYS_TIME, ...), intersected with ours.
      exec /usr/bin/setpriv --bounding-set -all,\$caps -- /usr/bin/env -i container=virtiofsd-ts-check TERM=dumb \$init
    " sh "$2" "$3" "$4" "$5"' sh "$CGROUP" "$ROOTFS" "$INIT" "$WORK/console.log" "$(container_caps)" \
    > "$WORK/console.log" 2>&1 < /dev/null &
  UNSHARE_PID=$!
  local unshare_pid=$UNSHARE_PID i
  for i in $(seq 1 100); do
    # unshare (the sh's exec) forks the namespace's PID 1, which execs systemd.
    PID1=$(awk '{print $1}' "/proc/$unshare_pid/task/$unshare_pid/children" 2>/dev/null || true)
    [ -n "$PID1" ] && [ "$(cat "/proc/$PID1/comm" 2>/dev/null)" = systemd ] && break
    PID1=
    sleep 0.1
  done
  [ -n "$PID1" ] || { cat "$WORK/console.log" >&2; die "systemd did not start"; }
  echo "$PID1" > "$WORK/pid1"
  log "systemd is host pid $PID1; waiting for the boot to finish"
  for i in $(seq 1 120); do
    state=$(sdc systemctl is-system-running 2>/dev/null || true)
    case "$state" in running | degraded) break ;; esac
    sleep 0.5
  done
  echo "system state: ${state:-unknown}"
}

# sdc CMD...: CMD inside the container (all its namespaces, its root).
sdc() { nsenter -t "$PID1" -a -r -w /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin SYSTEMD_COLORS=0 SYSTEMD_PAGER= "$@"; }
# show CMD...: prints the command, then runs it in the container (never fails the run).
show() { echo; echo "# $*"; sdc "$@" 2>&1 || echo "(exit $?)"; }
# must CMD...: as show, and its status is the command's.
must() {
  local r=0
  echo; echo "# $*"
  sdc "$@" 2>&1 || r=$?
  [ $r = 0 ] || echo "!! exit $r"
  return $r
}

teardown() {
  [ -n "${SDCHECK_KEEP:-}" ] && [ -n "$PID1" ] && {
    log "kept: enter with nsenter -t $PID1 -a -r -w bash; stop with kill -KILL $PID1"
    return
  }
  if [ -n "$PID1" ] && [ -d "/proc/$PID1" ]; then
    log "tearing down (systemctl poweroff, then SIGKILL of pid $PID1)"
    local t0=$SECONDS
    sdc systemctl poweroff >/dev/null 2>&1 || true
    for _ in $(seq 1 300); do [ -d "/proc/$PID1" ] || break; sleep 0.1; done
    if [ -d "/proc/$PID1" ]; then
      echo "systemd still up $((SECONDS - t0)) s after poweroff: SIGKILL" >&2
      kill -KILL "$PID1" 2>/dev/null || true
    else
      log "container gone $((SECONDS - t0)) s after poweroff"
    fi
  fi
  # unshare follows its child (and re-raises a signal that killed it).
  [ -n "$UNSHARE_PID" ] && { wait "$UNSHARE_PID" 2>/dev/null || true; }
  # Whatever is left in the cgroup (nothing should be: PID 1 of a pid namespace
  # takes its namespace with it).
  if [ -d "$CGROUP" ]; then
    [ -f "$CGROUP/cgroup.kill" ] && echo 1 > "$CGROUP/cgroup.kill" 2>/dev/null || true
    for _ in $(seq 1 50); do
      find "$CGROUP" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [ -d "$CGROUP" ] || break
      sleep 0.1
    done
  fi
  [ -d "$CGROUP" ] && echo "warning: $CGROUP still there" >&2 || true
  # What the host sees afterwards: no mount of the container's, no cgroup.
  log "host mounts under $ROOTFS: $(grep -c " $ROOTFS" /proc/self/mountinfo || true); cgroup $CGROUP: $([ -d "$CGROUP" ] && echo present || echo gone)"
}

# --- the checks ---------------------------------------------------------------
# wait_state UNIT STATE: until systemctl is-active says STATE (10 s).
wait_state() {
  for _ in $(seq 1 100); do
    [ "$(sdc systemctl is-active "$1" 2>/dev/null || true)" = "$2" ] && return 0
    sleep 0.1
  done
  echo "!! $1 is $(sdc systemctl is-active "$1" 2>/dev/null || true), not $2"
  return 1
}

# A front-end that connects, negotiates, sends FUSE INIT and holds the
# connection until SIGTERM: the package's own guest (dist/guest).
HOLDER='
const root = require("child_process").execSync("npm root -g").toString().trim() + "/virtiofsd-ts/dist/guest/";
const { VhostUserFrontend } = require(root + "frontend");
const { FuseDriver } = require(root + "fuse-driver");
(async () => {
  const fe = new VhostUserFrontend({ ramRegions: [16 << 20] });
  await fe.attach(process.argv[1]);
  const fuse = new FuseDriver(fe, { timeoutMs: 5000 });
  const init = await fuse.init();
  console.log(`holder: pid ${process.pid} attached, FUSE ${init.major}.${init.minor}, max_write ${init.max_write}`);
  process.on("SIGTERM", () => { fe.close(); console.log("holder: closed"); process.exit(0); });
  setInterval(() => {}, 1 << 30);
})().catch((e) => { console.error("holder:", e); process.exit(1); });
'

checks() {
  local rc=0 sh_pid holder
  echo "## versions"
  show systemctl --version
  sdc sh -c 'echo "node $(node --version), npm $(npm --version), virtiofsd-ts $(virtiofsd-ts --version)"; ls -l /usr/bin/virtiofsd-ts'
  show systemd-detect-virt --container

  echo; echo "## enable the socket"
  show systemctl daemon-reload
  show systemctl enable --now $UNIT.socket
  show systemctl status --no-pager $UNIT.socket
  show ls -l $SOCK
  show systemctl is-active $UNIT.service

  echo; echo "## 1. a front-end holds the connection"
  sdc node -e "$HOLDER" $SOCK > "$WORK/holder.log" 2>&1 &
  sh_pid=$!
  for _ in $(seq 1 100); do grep -q 'holder: pid .* attached' "$WORK/holder.log" && break; sleep 0.1; done
  cat "$WORK/holder.log"
  wait_state $UNIT.service active || rc=1
  show systemctl status --no-pager -l $UNIT.service
  show systemctl show -p Type,NotifyAccess,StatusText,MainPID,ActiveState,SubState,Result $UNIT.service
  # The served daemon's confinement, from its /proc (namespace mode, seccomp on).
  sdc sh -c '
    main=$(systemctl show -p MainPID --value '"$UNIT"'.service)
    for p in $main $(cat /proc/$main/task/*/children 2>/dev/null); do
      printf "pid %s %s: " "$p" "$(tr "\0" " " < /proc/$p/cmdline | cut -c1-60)"
      grep -E "^(Seccomp|CapEff|NoNewPrivs):" /proc/$p/status | tr "\n\t" "  "
      printf "mnt=%s pid=%s net=%s\n" "$(readlink /proc/$p/ns/mnt)" "$(readlink /proc/$p/ns/pid_for_children)" "$(readlink /proc/$p/ns/net)"
    done
    printf "pid 1 (systemd) mnt=%s net=%s\n" "$(readlink /proc/1/ns/mnt)" "$(readlink /proc/1/ns/net)"'

  echo; echo "## 2. the front-end leaves"
  # nsenter passes no signal on: the holder is told by its pid in the container.
  holder=$(sed -n 's/^holder: pid \([0-9]*\) attached.*/\1/p' "$WORK/holder.log")
  [ -n "$holder" ] && sdc sh -c "kill -TERM $holder"
  wait "$sh_pid" 2>/dev/null || true
  tail -1 "$WORK/holder.log"
  wait_state $UNIT.service inactive || rc=1
  show systemctl status --no-pager -n 0 $UNIT.service
  show systemctl show -p ActiveState,SubState,Result,ExecMainStatus,ExecMainCode,NRestarts $UNIT.service
  show systemctl is-failed $UNIT.service
  show systemctl is-active $UNIT.socket

  echo; echo "## 3. virtiofsd-ts probe, twice (each connection starts the service again)"
  for n in 1 2; do
    must virtiofsd-ts probe --socket-path $SOCK || { echo "!! probe $n failed"; rc=1; }
    wait_state $UNIT.service inactive || rc=1
    show systemctl show -p ActiveState,Result,ExecMainStatus,InvocationID $UNIT.service
  done

  if [ "${SDCHECK_QEMU:-1}" != 0 ] && [ -f "$REPO/.cache/e2e/bookworm/vmlinuz" ]; then
    echo; echo "## 4. a real QEMU guest (host QEMU, TCG, e2e kernel, mode basic)"
    qemu_guest || rc=1
  fi

  echo; echo "## 5. the journal"
  show journalctl -b --no-pager -o short-precise -u $UNIT -p info
  show journalctl -b --no-pager -o short-precise -u $UNIT -p warning
  # The priorities the daemon's lines carry (<N> prefixes on the journal stream).
  show journalctl -b --no-pager -o verbose -u $UNIT.service SYSLOG_IDENTIFIER=virtiofsd-ts -p warning -n 1 --output-fields=PRIORITY,MESSAGE
  show journalctl -b --no-pager -o verbose -u $UNIT.service SYSLOG_IDENTIFIER=virtiofsd-ts -p info -n 1 --output-fields=PRIORITY,MESSAGE
  echo; echo "## 6. systemd-analyze security (online, under this manager)"
  show systemd-analyze security --no-pager $UNIT.service
  start_limit || rc=1
  echo; echo "## failed units in the container"
  show systemctl --failed --no-pager
  return $rc
}

# A front-end that breaks the protocol: a vhost-user header whose size is 2^32-1.
BREAKER='const s = require("net").connect(process.argv[1], () => s.end(Buffer.alloc(12, 0xff)));
s.on("close", () => process.exit(0)); s.on("error", () => process.exit(0));'
breaker() {
  sdc node -e "$BREAKER" "$1"
  for _ in $(seq 1 50); do
    case "$(sdc systemctl is-active "$2" || true)" in active | activating | deactivating) sleep 0.1 ;; *) break ;; esac
  done
}

# probes N: N probes in a row; prints each one's exit status.
probes() {
  local n r
  for n in $(seq 1 "$1"); do
    r=0
    sdc virtiofsd-ts probe --socket-path $SOCK > "$WORK/probe.log" 2>&1 || r=$?
    echo "probe $n: exit $r $( [ $r = 0 ] || head -1 "$WORK/probe.log")"
    # The service exits once the front-end left; wait for that before the next.
    for _ in $(seq 1 50); do
      case "$(sdc systemctl is-active $UNIT.service || true)" in active | activating | deactivating) sleep 0.1 ;; *) break ;; esac
    done
  done
}

# Each front-end connection is a start of the service, and systemd's default
# start limit (DefaultStartLimitIntervalSec=10s, DefaultStartLimitBurst=5)
# counts them: the 6th connection within 10 s finds the service refused and
# the socket failed. Then the same with the drop-in this check proposes.
start_limit() {
  local rc=0 d=/etc/systemd/system/virtiofsd-ts@.service.d
  echo; echo "## 6b. a front-end that breaks the protocol, shipped units"
  # A fresh start-limit window (section 7 says why): the starts above would count.
  sleep 11
  breaker $SOCK $UNIT.service
  sleep 1
  show systemctl show -p ActiveState,Result,NRestarts,ExecMainStatus $UNIT.service
  show journalctl -b --no-pager -o short-precise -u $UNIT.service -n 12
  local pr=0
  must virtiofsd-ts probe --socket-path $SOCK > /dev/null || pr=$?
  echo "probe after it: exit $pr"
  [ $pr = 0 ] || rc=1

  echo; echo "## 7. start limit: connections in a row, shipped units"
  show systemctl show -p StartLimitIntervalUSec,StartLimitBurst,Restart,RestartUSec $UNIT.service
  sdc systemctl reset-failed $UNIT.service $UNIT.socket 2>/dev/null || true
  sdc systemctl start $UNIT.socket
  # A fresh StartLimitIntervalSec window.
  sleep 11
  probes 7
  show systemctl show -p ActiveState,Result $UNIT.service
  show systemctl show -p ActiveState,Result $UNIT.socket
  show ls -l $SOCK
  show journalctl -b --no-pager -o short-precise -u $UNIT.service -u $UNIT.socket -p warning -n 4
  echo; echo "## 7b. a daemon that fails at start (its share is missing), shipped units"
  sdc rm -rf /srv/virtiofs/share2
  sdc systemctl start virtiofsd-ts@share2.socket
  sdc sh -c 'virtiofsd-ts probe --socket-path /run/virtiofsd-ts/share2.sock >/dev/null 2>&1' || true
  sleep 3
  show systemctl show -p ActiveState,Result,NRestarts,ExecMainStatus virtiofsd-ts@share2.service
  show systemctl show -p ActiveState,Result virtiofsd-ts@share2.socket
  show journalctl -b --no-pager -o short-precise -u virtiofsd-ts@share2.service -p warning -n 3

  echo; echo "## 8. the same with the proposed drop-in (StartLimitIntervalSec=0, Restart=no)"
  sdc sh -c "mkdir -p $d && printf '[Unit]\nStartLimitIntervalSec=0\n[Service]\nRestart=no\n' > $d/50-start-limit.conf"
  show cat $d/50-start-limit.conf
  sdc systemctl daemon-reload
  sdc systemctl reset-failed $UNIT.service $UNIT.socket virtiofsd-ts@share2.service virtiofsd-ts@share2.socket 2>/dev/null || true
  sdc systemctl start $UNIT.socket virtiofsd-ts@share2.socket
  local out
  out=$(probes 10)
  echo "$out"
  grep -q 'exit [^0]' <<< "$out" && { echo "!! a probe failed with the drop-in"; rc=1; }
  show systemctl show -p ActiveState,Result $UNIT.service
  show systemctl show -p ActiveState,Result $UNIT.socket
  echo "a front-end that breaks the protocol, then a probe:"
  breaker $SOCK $UNIT.service
  show systemctl show -p ActiveState,Result,NRestarts,ExecMainStatus $UNIT.service
  show systemctl show -p ActiveState $UNIT.socket
  must virtiofsd-ts probe --socket-path $SOCK > /dev/null || rc=1
  show systemctl show -p ActiveState,Result,ExecMainStatus $UNIT.service
  echo "a daemon that fails at start (share2 missing):"
  local since
  since=$(sdc date +%s)
  sdc sh -c 'virtiofsd-ts probe --socket-path /run/virtiofsd-ts/share2.sock >/dev/null 2>&1' || true
  sleep 3
  show systemctl show -p ActiveState,Result,NRestarts,ExecMainStatus virtiofsd-ts@share2.service
  show systemctl show -p ActiveState,Result virtiofsd-ts@share2.socket
  sdc sh -c "echo starts of share2.service since the drop-in: \$(journalctl --since @$since -u virtiofsd-ts@share2.service | grep -c 'Starting virtiofsd-ts@share2.service')"
  show journalctl -b --no-pager -o short-precise -u virtiofsd-ts@share2.socket -p warning -n 2
  # Back to the shipped units.
  sdc rm -rf $d
  sdc systemctl stop virtiofsd-ts@share2.socket
  sdc systemctl daemon-reload
  return $rc
}

# The host's QEMU connects through /proc/PID1/root: the socket lives in the
# container's /run.
qemu_guest() {
  local share=$ROOTFS/srv/virtiofs/share1 out=$WORK/qemu-console.log rc=0
  rm -rf "${share:?}"/* "$share"/.virtiofsd-ts-probe-* 2>/dev/null || true
  printf 'hello from the host\n' > "$share/hello.txt"
  head -c $((3 << 20)) /dev/urandom > "$share/host-data.bin"
  (cd "$share" && sha256sum host-data.bin > host-data.sha256)
  echo $((3 << 20)) > "$share/host-data.size"
  mkdir -p "$share/hostdir/sub"
  printf 'deep file\n' > "$share/hostdir/sub/deep.txt"
  ln -s hello.txt "$share/link-to-hello"
  printf 'renamed by the guest\n' > "$share/rename-me.txt"
  printf 'deleted by the guest\n' > "$share/delete-me.txt"
  mkdir "$share/empty-host-dir"
  local k=$REPO/.cache/e2e/bookworm
  echo "# qemu-system-x86_64 ... -chardev socket,id=char0,path=/proc/$PID1/root$SOCK -device vhost-user-fs-pci,chardev=char0,tag=myfs ... e2e.mode=basic"
  timeout 300 qemu-system-x86_64 -accel tcg,thread=single -cpu qemu64,-cx16 -smp 2 -m 512M \
    -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
    -chardev socket,id=char0,path=/proc/$PID1/root$SOCK -device vhost-user-fs-pci,chardev=char0,tag=myfs \
    -kernel "$k/vmlinuz" -initrd "$k/initrd.gz" -append 'console=ttyS0 panic=-1 e2e.mode=basic' \
    -nographic -no-reboot -nic none > "$out" 2>&1 &
  local qpid=$!
  # While the guest runs: the service is active.
  for _ in $(seq 1 600); do grep -q 'E2E-OK mount' "$out" && break; [ -d /proc/$qpid ] || break; sleep 0.5; done
  show systemctl status --no-pager -l -n 0 $UNIT.service
  wait "$qpid" || rc=$?
  echo "qemu exit: $rc"
  grep -aE '^E2E-' "$out" | tr -d '\r' | sort | uniq -c | sort -rn | head -40
  grep -aq '^E2E-DONE' "$out" || { echo "!! no E2E-DONE"; rc=1; }
  grep -aq '^E2E-FAIL' "$out" && { echo "!! E2E-FAIL lines"; rc=1; }
  wait_state $UNIT.service inactive || rc=1
  show systemctl show -p ActiveState,Result,ExecMainStatus $UNIT.service
  [ -f "$share/guest/a/b/c/file.txt" ] && echo "host sees guest/a/b/c/file.txt: $(cat "$share/guest/a/b/c/file.txt")"
  return $rc
}

main() {
  case "${1:-run}" in
    run) ;;
    # stop: tears down a container a kept run (SDCHECK_KEEP=1) left.
    stop) PID1=$(cat "$WORK/pid1" 2>/dev/null || true); SDCHECK_KEEP=; teardown; return ;;
    *) die "usage: $0 [run|stop]" ;;
  esac
  bootstrap
  install_node
  pack
  install_package
  trap teardown EXIT
  boot
  local rc=0
  [ "${SDCHECK_CHECKS:-1}" = 0 ] && return 0
  checks || rc=$?
  echo
  if [ $rc = 0 ]; then echo "RESULT: PASS"; else echo "RESULT: FAIL"; fi
  return $rc
}

main "$@"
