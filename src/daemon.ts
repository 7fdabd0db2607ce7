import * as fs from 'node:fs';
import { DaemonConfig } from './config';
import { FuseSession } from './fuse-server/session';
import { Logger, stderrLogger } from './log';
import { UnixListener, UnixStreamSocket } from './sys';
import { VhostUserBackend } from './vhost-user/backend';
import { VirtioFsDevice } from './virtio-fs/device';

/**
 * Wires the pieces: listener -> vhost-user back-end -> virtio-fs device ->
 * FUSE server. Like virtiofsd, it serves one front-end connection and exits
 * when that front-end disconnects.
 */
export class Daemon {
  private listener: UnixListener | null = null;
  private backend: VhostUserBackend | null = null;
  private finished!: (code: number) => void;
  readonly done: Promise<number> = new Promise((resolve) => (this.finished = resolve));

  constructor(
    private readonly config: DaemonConfig,
    private readonly log: Logger = stderrLogger(config.logLevel),
  ) {}

  /** Starts listening; `done` resolves with the exit code. */
  start(): void {
    const { config } = this;
    this.listener = config.fd !== undefined ? UnixListener.fromFd(config.fd) : UnixListener.listen(config.socketPath!);
    if (config.socketPath && config.socketGroup !== undefined) setSocketGroup(config.socketPath, config.socketGroup);
    this.log('info', `listening on ${config.socketPath ?? `fd ${config.fd}`}, sharing ${config.sharedDir}`);
    this.listener.watch(() => this.accept());
  }

  private accept(): void {
    const socket = this.listener?.accept();
    if (!socket) return;
    // One front-end at a time, as QEMU expects of a vhost-user-fs back-end.
    this.listener!.unwatch();
    this.serve(socket);
  }

  private serve(socket: UnixStreamSocket): void {
    const session = new FuseSession({
      sharedDir: this.config.sharedDir,
      cache: this.config.cache,
      readonly: this.config.readonly,
      log: this.log,
    });
    const device = new VirtioFsDevice(session, this.log);
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
    this.finished(code);
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
