import * as fs from 'node:fs';
import * as nodePath from 'node:path';
import { AT_FDCWD, RENAME_NOREPLACE, renameat2 } from './fs';
import { SysError, Errno } from './errno';
import {
  AF_UNIX,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_STREAM,
  accept4,
  bind,
  close,
  connect,
  fcntl,
  getsockopt,
  SOL_SOCKET,
  SO_ACCEPTCONN,
  F_GETFL,
  F_SETFL,
  O_NONBLOCK,
  listen,
  socket,
  socketpair,
  sockaddrUn,
} from './libc';
import { FdWatcher } from './fd-watcher';
import { addon } from './native';

export interface Received {
  /** Bytes received; 0 means the peer closed the connection. */
  bytes: number;
  fds: number[];
  /**
   * The kernel could not hand over every fd sent with these bytes (MSG_CTRUNC:
   * our fd table is full, or more fds than we make room for): those are lost.
   */
  fdsLost: boolean;
}

/**
 * A connected AF_UNIX stream socket that carries file descriptors (SCM_RIGHTS).
 * Receives never block. Once watched, the fd is non-blocking (uv_poll_init
 * makes it so), so a send the peer has no room for throws EAGAIN instead of
 * stopping the event loop (the back-end then drops the front-end).
 */
export class UnixStreamSocket {
  private watcher: FdWatcher | null = null;
  private closed = false;

  constructor(readonly fd: number) {}

  static connect(path: string): UnixStreamSocket {
    const fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    try {
      const addr = sockaddrUn(path);
      connect(fd, addr, addr.length);
    } catch (err) {
      close(fd);
      throw err;
    }
    return new UnixStreamSocket(fd);
  }

  static pair(): [UnixStreamSocket, UnixStreamSocket] {
    const sv = new Int32Array(2);
    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
    return [new UnixStreamSocket(sv[0]), new UnixStreamSocket(sv[1])];
  }

  /** Receives into `into[offset, offset+length)`. Returns null when nothing is waiting. */
  receive(into: Buffer, offset: number, length: number): Received | null {
    try {
      const got = addon.recvmsg(this.fd, into, offset, length);
      const [bytes, ...fds] = got;
      return { bytes, fds, fdsLost: got.ctrunc === true };
    } catch (err) {
      if ((err as { errno?: number }).errno === Errno.EAGAIN) return null;
      throw err;
    }
  }

  /** Sends the whole buffer (and the fds with its first byte). */
  send(data: Buffer, fds: number[] = []): void {
    let sent = addon.sendmsg(this.fd, data, fds);
    while (sent < data.length) sent += addon.sendmsg(this.fd, data.subarray(sent), []);
  }

  /** Calls `onReadable` whenever data (or EOF) is waiting. */
  watch(onReadable: () => void): void {
    this.unwatch();
    this.watcher = new FdWatcher(this.fd, onReadable);
  }

  unwatch(): void {
    this.watcher?.close();
    this.watcher = null;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.unwatch();
    close(this.fd);
  }
}

/** A listening AF_UNIX stream socket: bound to a path by us, or inherited (--fd). */
export class UnixListener {
  private watcher: FdWatcher | null = null;

  private constructor(
    readonly fd: number,
    readonly path: string | null,
  ) {}

  /**
   * Binds `path`, replacing a stale socket file but never any other kind of
   * file. The socket is born in a private directory beside `path` (mode 0700,
   * ours), given its mode (0600, or 0660 and group `gid`) there, and renamed
   * into place: no chown or chmod ever runs on a path that someone else could
   * swap for a symlink meanwhile.
   */
  static listen(path: string, options: { gid?: number; backlog?: number } = {}): UnixListener {
    try {
      if (fs.lstatSync(path).isSocket()) fs.unlinkSync(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    const privateDir = fs.mkdtempSync(nodePath.join(nodePath.dirname(path), '.virtiofsd-ts-'));
    const dirFd = fs.openSync(privateDir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
    const fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    try {
      // Named through the directory's fd: short enough for sun_path wherever `path` is.
      const bornAt = `/proc/self/fd/${dirFd}/s`;
      const addr = sockaddrUn(bornAt);
      // Owner-only (0600) whatever the process umask is (the passthrough sets it to 0).
      const umask = process.umask(0o177);
      try {
        bind(fd, addr, addr.length);
      } finally {
        process.umask(umask);
      }
      if (options.gid !== undefined) {
        fs.chownSync(bornAt, -1, options.gid);
        fs.chmodSync(bornAt, 0o660);
      }
      listen(fd, options.backlog ?? 1);
      // RENAME_NOREPLACE: whatever appeared at `path` since the stale socket went is left alone.
      renameat2(dirFd, 's', AT_FDCWD, path, RENAME_NOREPLACE);
    } catch (err) {
      close(fd);
      throw err;
    } finally {
      fs.closeSync(dirFd);
      fs.rmSync(privateDir, { recursive: true, force: true });
    }
    return new UnixListener(fd, path);
  }

  /** Whether `fd` is a socket in the listening state (SO_ACCEPTCONN). */
  static isListening(fd: number): boolean {
    const value = Buffer.alloc(4);
    getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, value, Int32Array.of(4));
    return value.readInt32LE(0) !== 0;
  }

  /** Adopts an already-listening socket (as libvirt passes with --fd). */
  static fromFd(fd: number): UnixListener {
    // Accepting must never block the event loop, whatever mode the fd came in.
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) | O_NONBLOCK);
    return new UnixListener(fd, null);
  }

  /** Accepts one pending connection, or returns null if none is waiting. */
  accept(): UnixStreamSocket | null {
    try {
      return new UnixStreamSocket(accept4(this.fd, null, null, SOCK_CLOEXEC));
    } catch (err) {
      if (err instanceof SysError && err.errno === Errno.EAGAIN) return null;
      throw err;
    }
  }

  watch(onConnection: () => void): void {
    this.watcher?.close();
    this.watcher = new FdWatcher(this.fd, onConnection);
  }

  unwatch(): void {
    this.watcher?.close();
    this.watcher = null;
  }

  close(removePath = false): void {
    this.unwatch();
    close(this.fd);
    if (removePath && this.path) fs.rmSync(this.path, { force: true });
  }
}
