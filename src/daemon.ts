import * as fs from 'node:fs';
import { DaemonConfig } from './config';
import { DaxMapper } from './dax-mapper/dax-mapper';
import { FuseSession } from './fuse-server/session';
import { Logger, stderrLogger } from './log';
import { applyNofileLimit } from './limits';
import { UnixListener, UnixStreamSocket } from './sys';
import { VhostUserBackend } from './vhost-user/backend';
import { VirtioFsDevice } from './virtio-fs/device';
import { confineProcess, enterRoot, processCapabilities } from './sandbox';

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
    // The command applied it before confining itself (prepareSandbox); an embedding program gets it here.
    if (config.sandbox === undefined) applyNofileLimit(config.rlimitNofile, this.log);
    if (config.daxWindow !== undefined) this.mapper = new DaxMapper(config.daxWindow, (msg) => this.log('warn', msg));
    const gid = config.socketGroup !== undefined ? groupId(config.socketGroup) : undefined;
    // The socket first: its path lies outside the share, out of reach once the sandbox is entered.
    this.listener = config.fd !== undefined ? UnixListener.fromFd(config.fd) : UnixListener.listen(config.socketPath!, { gid });
    try {
      const root = enterRoot(config.sandbox ?? 'none', config.sharedDir);
      // One session for the one connection, opened now so that a bad share fails at start-up,
      // and opened inside the sandbox so that nothing it holds leads out of it.
      const { socketPath, fd, socketGroup, logLevel, rlimitNofile, daxWindow, daxPolicy, sandbox, sandboxExplicit, seccomp, modcaps, uidMapNs, gidMapNs, ...share } =
        config;
      this.session = new FuseSession({
        ...share,
        sharedDir: root?.sharedDir ?? config.sharedDir,
        procSelfFd: root?.procSelfFd,
        dax: this.mapper ? { mapper: this.mapper, policy: daxPolicy ?? 'always' } : null,
        log: this.log,
      });
      confineProcess({ seccomp: seccomp ?? 'none', capabilities: processCapabilities(config), log: this.log });
    } catch (err) {
      this.listener.close(config.socketPath !== undefined);
      this.listener = null;
      this.session?.close();
      this.session = null;
      throw err;
    }
    this.log('info', `listening on ${config.socketPath ?? `fd ${config.fd}`}, sharing ${config.sharedDir} (sandbox ${config.sandbox ?? 'none'}, seccomp ${config.seccomp ?? 'none'})`);
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

function groupId(group: string): number {
  return /^\d+$/.test(group) ? Number(group) : lookupGroup(group);
}

/** Node has no getgrnam(): read /etc/group. */
function lookupGroup(name: string): number {
  for (const line of fs.readFileSync('/etc/group', 'utf8').split('\n')) {
    const [groupName, , gid] = line.split(':');
    if (groupName === name) return Number(gid);
  }
  throw new Error(`unknown group '${name}'`);
}
