import * as fs from 'node:fs';
import { DaemonConfig } from './config';
import { DaxMapper } from './dax-mapper/dax-mapper';
import { FuseSession } from './fuse-server/session';
import { Logger, stderrLogger } from './log';
import { UnixListener, UnixStreamSocket, getNofileLimit, setNofileLimit } from './sys';
import { VhostUserBackend } from './vhost-user/backend';
import { VirtioFsDevice } from './virtio-fs/device';

/** The fd limit the daemon raises itself to by default, as virtiofsd does: min(this, fs.nr_open). */
const DEFAULT_NOFILE = 1_000_000;

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
  private finished!: (code: number) => void;
  readonly done: Promise<number> = new Promise((resolve) => (this.finished = resolve));

  constructor(
    private readonly config: DaemonConfig,
    private readonly log: Logger = stderrLogger(config.logLevel),
  ) {}

  /**
   * Opens the share with its options and starts listening; `done` resolves
   * with the exit code. Throws (with a message for the user) when the share
   * cannot be served as configured.
   */
  start(): void {
    const { config } = this;
    applyNofileLimit(config.rlimitNofile, this.log);
    if (config.daxWindow !== undefined) this.mapper = new DaxMapper(config.daxWindow, (msg) => this.log('warn', msg));
    // One session for the one connection, opened now so that a bad share fails at start-up.
    const { socketPath, fd, socketGroup, logLevel, rlimitNofile, daxWindow, daxPolicy, ...share } = config;
    this.session = new FuseSession({
      ...share,
      dax: this.mapper ? { mapper: this.mapper, policy: daxPolicy ?? 'always' } : null,
      log: this.log,
    });
    this.listener = config.fd !== undefined ? UnixListener.fromFd(config.fd) : UnixListener.listen(config.socketPath!);
    if (config.socketPath && config.socketGroup !== undefined) setSocketGroup(config.socketPath, config.socketGroup);
    this.log('info', `listening on ${config.socketPath ?? `fd ${config.fd}`}, sharing ${config.sharedDir}`);
    this.listener.watch(() => this.accept());
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
    this.backend = new VhostUserBackend(socket, device, this.log, (err) => {
      this.log('info', err ? `front-end connection ended: ${err.message}` : 'front-end disconnected');
      this.stop(0);
    });
    this.log('info', 'front-end connected');
    this.backend.start();
  }

  /** Stops serving and listening; removes the socket file we created. */
  stop(code = 0): void {
    const backend = this.backend;
    this.backend = null;
    backend?.close();
    if (this.listener) {
      this.listener.close(this.config.socketPath !== undefined);
      this.listener = null;
    }
    this.mapper?.reset();
    this.session?.close();
    this.session = null;
    this.finished(code);
  }
}

/**
 * RLIMIT_NOFILE as `--rlimit-nofile` asks: 0 leaves it, a number sets it
 * (failing start-up if not allowed), absent raises it to min(1000000,
 * fs.nr_open) as far as the process may (each inode the guest holds costs an fd).
 */
export function applyNofileLimit(requested: number | undefined, log: Logger): void {
  if (requested === 0) return;
  const current = getNofileLimit();
  if (requested !== undefined) {
    try {
      setNofileLimit({ soft: requested, hard: requested });
    } catch (err) {
      throw new Error(`--rlimit-nofile ${requested}: ${(err as Error).message} (the hard limit is ${current.hard})`);
    }
    return;
  }
  const target = Math.min(DEFAULT_NOFILE, readNrOpen());
  if (current.soft >= target) return;
  try {
    setNofileLimit({ soft: target, hard: Math.max(target, current.hard) });
  } catch {
    // Unprivileged: the soft limit can still go up to the hard one.
    if (current.soft < current.hard) setNofileLimit({ soft: current.hard, hard: current.hard });
    log('warn', `open-file limit is ${Math.max(current.soft, current.hard)}; could not raise it to ${target}`);
  }
}

function readNrOpen(): number {
  try {
    return Number(fs.readFileSync('/proc/sys/fs/nr_open', 'utf8').trim()) || DEFAULT_NOFILE;
  } catch {
    return DEFAULT_NOFILE;
  }
}

function setSocketGroup(path: string, group: string): void {
  const gid = /^\d+$/.test(group) ? Number(group) : lookupGroup(group);
  fs.chownSync(path, -1, gid);
  fs.chmodSync(path, 0o660);
}

/** Node has no getgrnam(): read /etc/group. */
function lookupGroup(name: string): number {
  for (const line of fs.readFileSync('/etc/group', 'utf8').split('\n')) {
    const [groupName, , gid] = line.split(':');
    if (groupName === name) return Number(gid);
  }
  throw new Error(`unknown group '${name}'`);
}
