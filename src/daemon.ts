import * as fs from 'node:fs';
import { LOCK_EX, LOCK_NB, O_CLOEXEC, flock } from './sys/fs';
import { groupIdOf } from './sys/process';
import { DaemonConfig } from './config';
import { DaxMapper } from './dax-mapper/dax-mapper';
import { FuseSession } from './fuse-server/session';
import { enabled, Logger, makeLogger, stderrIsJournal } from './log';
import { metrics } from './metrics';
import {
  connectDatagram,
  consumeListenEnv,
  HANDOFF_LISTEN_FD,
  HANDOFF_NOTIFY_FD,
  HANDOFF_PIDFILE_FD,
  HANDOFF_SYSLOG_FD,
  Notifier,
} from './systemd';
import { applyNofileLimit } from './limits';
import { UnixListener, UnixStreamSocket } from './sys';
import { VhostUserBackend } from './vhost-user/backend';
import { encodeVirtioFsConfig } from './vhost-user/messages';
import { DEFAULT_DAX_POLICY } from './fuse-server/dax-policy';

/**
 * num_request_queues in the config --tag serves: one, as the Rust virtiofsd
 * answers, since the guest asks for that many queues and a generic device
 * (`vhost-user-test-device-pci,num_vqs=2`) has no more.
 */
const TAGGED_REQUEST_QUEUES = 1;
import { VirtioFsDevice } from './virtio-fs/device';
import { confineProcess, enterRoot, processCapabilities } from './sandbox';
import { ioUringInstances } from './sandbox/seccomp';

/**
 * Wires the pieces: listener -> vhost-user back-end -> virtio-fs device ->
 * FUSE server. Like virtiofsd, it serves one front-end connection and exits
 * when that front-end disconnects.
 */
export class Daemon {
  private listener: UnixListener | null = null;
  private backend: VhostUserBackend | null = null;
  private session: FuseSession | null = null;
  private mapper: DaxMapper | null = null;
  private metricsListener: UnixListener | null = null;
  private readonly notifier: Notifier;
  private readonly dumpMetrics = (): void => this.log('info', `metrics ${JSON.stringify(metrics.snapshot())}`);
  private stopped = false;
  private finished!: (code: number) => void;
  readonly done: Promise<number> = new Promise((resolve) => (this.finished = resolve));

  constructor(
    private readonly config: DaemonConfig,
    private readonly log: Logger = makeLogger(config.logLevel, { journal: stderrIsJournal(), syslogFd: config.syslogFd }),
  ) {
    this.notifier = new Notifier(config.notifyFd ?? null);
  }

  /**
   * Opens the share with its options and starts listening; `done` resolves
   * with the exit code. Throws (with a message for the user) when the share
   * cannot be served as configured.
   */
  start(): void {
    const { config } = this;
    // The command applied it before confining itself (prepareSandbox); an embedding program gets it here.
    if (config.sandbox === undefined) applyNofileLimit(config.rlimitNofile, this.log);
    if (config.daxWindow !== undefined) {
      this.mapper = new DaxMapper(config.daxWindow, (msg) => this.log('warn', msg));
      // The window becomes a PCI BAR, whose size must be a power of two (QEMU 11.1 asserts it and aborts).
      if ((config.daxWindow & (config.daxWindow - 1n)) !== 0n) {
        this.log('warn', `--dax-window ${config.daxWindow} is not a power of two: QEMU cannot expose it as a PCI BAR (QEMU 11.1 aborts)`);
      }
    }
    // Checked while /proc is in reach: the filter would kill this process at its next io_uring call.
    if ((config.seccomp ?? 'none') !== 'none' && ioUringInstances() > 0) {
      throw new Error(
        "seccomp: this Node's libuv uses io_uring (a Node built with a system libuv, e.g. Debian's nodejs), which the filter does not allow; start the daemon through its command, whose launcher turns io_uring off, or use --seccomp none",
      );
    }
    const gid = config.socketGroup !== undefined ? groupId(config.socketGroup) : undefined;
    // The sockets first: their paths lie outside the share, out of reach once the sandbox is entered.
    this.listener = config.fd !== undefined ? UnixListener.fromFd(config.fd) : UnixListener.listen(config.socketPath!, { gid });
    try {
      if (config.metricsSocket !== undefined) this.metricsListener = UnixListener.listen(config.metricsSocket, { gid });
      const root = enterRoot(config.sandbox ?? 'none', config.sharedDir);
      // One session for the one connection, opened now so that a bad share fails at start-up,
      // and opened inside the sandbox so that nothing it holds leads out of it.
      const {
        socketPath,
        fd,
        socketGroup,
        logLevel,
        rlimitNofile,
        daxWindow,
        daxPolicy,
        tag,
        sandbox,
        sandboxExplicit,
        seccomp,
        modcaps,
        uidMapNs,
        gidMapNs,
        syslog,
        metricsSocket,
        pidFile,
        inheritFds,
        notifyFd,
        syslogFd,
        notices,
        pidFileFd,
        ...share
      } = config;
      this.session = new FuseSession({
        ...share,
        sharedDir: root?.sharedDir ?? config.sharedDir,
        procSelfFd: root?.procSelfFd,
        dax: this.mapper ? { mapper: this.mapper, policy: daxPolicy ?? DEFAULT_DAX_POLICY } : null,
        log: this.log,
      });
      confineProcess({ seccomp: seccomp ?? 'none', capabilities: processCapabilities(config), log: this.log });
    } catch (err) {
      this.listener.close(config.socketPath !== undefined && this.pathsReachable());
      this.listener = null;
      this.metricsListener?.close(this.pathsReachable());
      this.metricsListener = null;
      this.session?.close();
      this.session = null;
      throw err;
    }
    for (const notice of config.notices ?? []) this.log('info', notice);
    const session = this.session!;
    metrics.gauge('inodes', () => session.stats.inodes);
    metrics.gauge('handles', () => session.stats.handles);
    metrics.gauge('lockFds', () => session.stats.lockFds);
    metrics.gauge('waitingRequests', () => session.stats.waiting);
    // Each inode holds one O_PATH fd unless it is held as a file handle: an upper bound.
    metrics.gauge('fdsHeld', () => session.stats.inodes + session.stats.handles + session.stats.lockFds);
    if (this.mapper) {
      const mapper = this.mapper;
      metrics.gauge('daxMappings', () => mapper.list().length);
    }
    if (enabled(config.logLevel, 'debug')) metrics.setRequestLog((line) => this.log('debug', line));
    // bin/virtiofsd-ts.js installed a listener first thing (so SIGUSR1 never opens the inspector); this one dumps.
    process.on('SIGUSR1', this.dumpMetrics);
    const where = config.socketPath ?? `fd ${config.fd}`;
    this.log(
      'info',
      `listening on ${where}, sharing ${config.sharedDir} (sandbox ${config.sandbox ?? 'none'}, seccomp ${config.seccomp ?? 'none'})`,
    );
    this.listener.watch(() => this.accept());
    this.metricsListener?.watch(() => this.answerMetrics());
    // Ready once the sandbox is in place and the socket accepts: systemd's Type=notify.
    this.notifier.ready(`serving ${config.sharedDir} on ${where}`);
  }

  /**
   * Whether paths outside the share still lead where they did: not inside
   * --sandbox namespace or chroot once the share is the root (there a path
   * names a file of the share, and the launcher removes our files instead).
   */
  private pathsReachable(): boolean {
    return (this.config.sandbox ?? 'none') === 'none';
  }

  /** One connection to --metrics-socket: the snapshot as one JSON document, then close. */
  private answerMetrics(): void {
    for (;;) {
      let client: UnixStreamSocket | null;
      try {
        client = this.metricsListener?.accept() ?? null;
      } catch (err) {
        this.log('warn', `metrics socket: ${(err as Error).message}`);
        return;
      }
      if (!client) return;
      try {
        client.send(Buffer.from(JSON.stringify(metrics.snapshot()) + '\n'));
      } catch (err) {
        // A reader that does not read (EAGAIN on a full buffer) or left gets nothing more.
        this.log('debug', `metrics socket: ${(err as Error).message}`);
      } finally {
        client.close();
      }
    }
  }

  private accept(): void {
    let socket: UnixStreamSocket | null | undefined;
    try {
      socket = this.listener?.accept();
    } catch (err) {
      this.log('error', `cannot accept a front-end: ${(err as Error).message}`);
      this.stop(1);
      return;
    }
    if (!socket) return;
    // One front-end at a time, as QEMU expects of a vhost-user-fs back-end.
    this.listener!.unwatch();
    this.serve(socket);
  }

  private serve(socket: UnixStreamSocket): void {
    const device = new VirtioFsDevice(this.session!, this.log, this.mapper);
    // With --tag the back-end serves the virtio-fs config (a generic vhost-user device needs it).
    const deviceConfig = this.config.tag !== undefined ? encodeVirtioFsConfig(this.config.tag, TAGGED_REQUEST_QUEUES) : undefined;
    this.backend = new VhostUserBackend(
      socket,
      device,
      this.log,
      (err) => {
        if (err) {
          // A front-end that broke the protocol: say what it did and exit non-zero, so that
          // libvirt or systemd (Restart=on-failure) see a failure, not a guest shutting down.
          this.log('error', `front-end misbehaved, connection closed: ${err.message}`);
          this.stop(1);
          return;
        }
        this.log('info', 'front-end disconnected');
        this.stop(0);
      },
      { deviceConfig },
    );
    this.log('info', 'front-end connected');
    this.backend.start();
  }

  /**
   * Stops serving and listening: in-flight requests that wait are failed,
   * DAX mappings removed, our socket files and pid file removed (by the
   * launcher when the sandbox hides their paths). Idempotent.
   */
  stop(code = 0): void {
    if (this.stopped) return;
    this.stopped = true;
    this.notifier.stopping();
    process.off('SIGUSR1', this.dumpMetrics);
    metrics.setRequestLog(null);
    metrics.clearGauges();
    const backend = this.backend;
    this.backend = null;
    backend?.close();
    const reachable = this.pathsReachable();
    if (this.listener) {
      this.listener.close(this.config.socketPath !== undefined && reachable);
      this.listener = null;
    }
    this.metricsListener?.close(reachable);
    this.metricsListener = null;
    if (this.config.pidFile !== undefined && this.config.pidFileFd !== undefined) {
      if (reachable) fs.rmSync(this.config.pidFile, { force: true });
      fs.closeSync(this.config.pidFileFd);
    }
    this.mapper?.reset();
    this.session?.close();
    this.session = null;
    this.finished(code);
  }
}

function groupId(group: string): number {
  if (/^\d+$/.test(group)) return Number(group);
  // Before the sandbox: NSS modules (sssd, LDAP, systemd's dynamic users) may open files and sockets anywhere.
  const gid = groupIdOf(group);
  if (gid === null) throw new Error(`unknown group '${group}'`);
  return gid;
}

/**
 * Opens and locks the pid file (SOCKET.pid, as both reference daemons do) and
 * writes our pid: the process libvirt or systemd started, which the launcher
 * keeps being. A second daemon on the same socket path fails here, before it
 * could replace the first one's socket. Returns the fd; the lock lasts as
 * long as it (or a copy across the relaunch) is open.
 */
export function lockPidFile(pidFile: string): number {
  const fd = fs.openSync(pidFile, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW | O_CLOEXEC, 0o644);
  try {
    flock(fd, LOCK_EX | LOCK_NB);
  } catch {
    let holder = '';
    try {
      holder = fs.readFileSync(pidFile, 'utf8').trim();
    } catch {
      // Unreadable: the message just names no pid.
    }
    fs.closeSync(fd);
    throw new Error(
      `another daemon${/^\d+$/.test(holder) ? ` (pid ${holder})` : ''} holds ${pidFile}: two daemons cannot share one socket path`,
    );
  }
  fs.ftruncateSync(fd, 0);
  fs.writeSync(fd, `${process.pid}\n`, 0);
  return fd;
}

/**
 * What the command opens before the sandbox hides its paths (common to the
 * first process and the relaunched daemon, which takes the first one's fds
 * from the environment): the pid file, the notify socket (NOTIFY_SOCKET),
 * /dev/log for --syslog, and the socket-activated listener's number. The fds
 * go into `config.inheritFds` so that the relaunch keeps them open.
 */
export function openOutside(config: DaemonConfig, env: NodeJS.ProcessEnv, socketActivated: boolean, warn: (msg: string) => void): void {
  const inherit = (config.inheritFds ??= []);
  const handed = (name: string): number | undefined => (/^\d+$/.test(env[name] ?? '') ? Number(env[name]) : undefined);
  if (socketActivated && config.fd !== undefined) {
    env[HANDOFF_LISTEN_FD] = String(config.fd);
    consumeListenEnv(env);
  }
  if (config.pidFile !== undefined) {
    config.pidFileFd = handed(HANDOFF_PIDFILE_FD) ?? lockPidFile(config.pidFile);
    env[HANDOFF_PIDFILE_FD] = String(config.pidFileFd);
    inherit.push(config.pidFileFd);
  }
  let notifyFd = handed(HANDOFF_NOTIFY_FD);
  if (notifyFd === undefined && env.NOTIFY_SOCKET) {
    try {
      notifyFd = connectDatagram(env.NOTIFY_SOCKET);
    } catch (err) {
      warn(`NOTIFY_SOCKET ${env.NOTIFY_SOCKET}: ${(err as Error).message}; no readiness notification`);
    }
  }
  // Ours alone from now on: no child of ours may notify in our name.
  delete env.NOTIFY_SOCKET;
  if (notifyFd !== undefined) {
    config.notifyFd = notifyFd;
    env[HANDOFF_NOTIFY_FD] = String(notifyFd);
    inherit.push(notifyFd);
  }
  if (config.syslog) {
    let syslogFd = handed(HANDOFF_SYSLOG_FD);
    if (syslogFd === undefined) {
      try {
        syslogFd = connectDatagram('/dev/log');
      } catch (err) {
        throw new Error(`--syslog: /dev/log: ${(err as Error).message}`);
      }
    }
    config.syslogFd = syslogFd;
    env[HANDOFF_SYSLOG_FD] = String(syslogFd);
    inherit.push(syslogFd);
  }
}

/** After a start-up failure: the pid file goes, unless the sandbox already hides its path (the launcher removes it then). */
export function releasePidFile(config: DaemonConfig, pathReachable: boolean): void {
  if (config.pidFileFd === undefined || config.pidFile === undefined) return;
  if (pathReachable) fs.rmSync(config.pidFile, { force: true });
  fs.closeSync(config.pidFileFd);
  config.pidFileFd = undefined;
}
