/**
 * systemd integration without libsystemd: socket activation (sd_listen_fds(3)
 * semantics) and the readiness protocol (sd_notify(3): one datagram per state
 * change on the AF_UNIX socket named by NOTIFY_SOCKET).
 *
 * Both must survive the sandbox: the notify socket's path (or abstract name:
 * the network namespace hides those) is unreachable once the daemon has made
 * the share its root. So the command connects it before the relaunch, keeps
 * the fd, and hands it to the relaunched daemon through the environment (the
 * relaunch keeps the fd open). LISTEN_PID names the pid systemd started; the
 * relaunched daemon in namespace mode is the launcher's child (pid 1 of its
 * namespace), so the decision "socket-activated" is handed over the same way.
 */
import * as fs from 'node:fs';
import { close, connect, socket } from './sys/libc';

/** sd_listen_fds(3): the first passed fd. */
export const SD_LISTEN_FDS_START = 3;

/** Our own hand-over to the relaunched daemon (src/sandbox): the fd numbers the first process opened. */
export const HANDOFF_LISTEN_FD = 'VIRTIOFSD_TS_LISTEN_FD';
export const HANDOFF_NOTIFY_FD = 'VIRTIOFSD_TS_NOTIFY_FD';
export const HANDOFF_SYSLOG_FD = 'VIRTIOFSD_TS_SYSLOG_FD';
export const HANDOFF_PIDFILE_FD = 'VIRTIOFSD_TS_PIDFILE_FD';

const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
const AF_UNIX = 1;

/**
 * The socket-activated listening fd, if systemd passed one to this process:
 * LISTEN_PID must be our pid and LISTEN_FDS at least 1 (we serve the first;
 * `extra` counts the ones we ignore). Or, in the relaunched daemon, the fd the
 * first process took over.
 */
export function listenFd(env: NodeJS.ProcessEnv, pid: number): { fd: number; extra: number } | null {
  const handed = env[HANDOFF_LISTEN_FD];
  if (handed !== undefined && /^\d+$/.test(handed)) return { fd: Number(handed), extra: 0 };
  if (env.LISTEN_PID !== String(pid)) return null;
  const n = /^\d+$/.test(env.LISTEN_FDS ?? '') ? Number(env.LISTEN_FDS) : 0;
  if (n < 1) return null;
  return { fd: SD_LISTEN_FDS_START, extra: n - 1 };
}

/** sd_listen_fds(unset_environment=1): what systemd passed is ours now, no child may take it too. */
export function consumeListenEnv(env: NodeJS.ProcessEnv): void {
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
}

/** struct sockaddr_un for a path or, with a leading '@', an abstract name; its used length. */
function sockaddr(name: string): { addr: Buffer; len: number } {
  const abstract = name.startsWith('@');
  const bytes = Buffer.from(abstract ? name.slice(1) : name);
  if (bytes.length + 1 > 108) throw new Error(`socket name too long: ${name}`);
  const addr = Buffer.alloc(2 + 108);
  addr.writeUInt16LE(AF_UNIX, 0);
  // An abstract name starts with a NUL and its length is exact; a path is NUL-terminated.
  bytes.copy(addr, abstract ? 3 : 2);
  return { addr, len: 2 + bytes.length + 1 };
}

/**
 * A datagram socket connected to `name` (a path, or '@abstract'): the
 * notify socket, or /dev/log. Connected now, written to later with write(2),
 * which needs no path and works inside the sandbox.
 */
export function connectDatagram(name: string): number {
  const fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  try {
    const { addr, len } = sockaddr(name);
    connect(fd, addr, len);
  } catch (err) {
    close(fd);
    throw err;
  }
  return fd;
}

/** sd_notify over a connected datagram fd; null when not started by a service manager that listens. */
export class Notifier {
  constructor(private readonly fd: number | null) {}

  get active(): boolean {
    return this.fd !== null;
  }

  /** Sends "KEY=VALUE" lines as one datagram; returns whether it went. Never throws. */
  notify(state: string): boolean {
    if (this.fd === null) return false;
    try {
      return fs.writeSync(this.fd, state) === Buffer.byteLength(state);
    } catch {
      return false;
    }
  }

  ready(status: string): boolean {
    return this.notify(`READY=1\nSTATUS=${status.replace(/\n/g, ' ')}`);
  }

  stopping(): boolean {
    return this.notify('STOPPING=1');
  }
}
