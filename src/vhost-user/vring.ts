import * as fs from 'node:fs';
import { Errno, F_GETFL, F_SETFL, FdWatcher, O_NONBLOCK, SysError, close, errnoCode, fcntl, readOrErrno, writeOrErrno } from '../sys';
import { SplitVirtqueue } from './virtqueue';

const ONE = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);
const drain = Buffer.alloc(8);

/**
 * One queue's vhost-user state: size, addresses and base as the front-end set
 * them, its kick/call/err eventfds, and the running split virtqueue once the
 * ring is started (kick fd received) and enabled.
 */
export class Vring {
  size = 0;
  descUserAddr = 0;
  availUserAddr = 0;
  usedUserAddr = 0;
  addressed = false;
  base = 0;
  enabled = false;
  kickFd = -1;
  callFd = -1;
  errFd = -1;
  queue: SplitVirtqueue | null = null;
  /** Being stopped (GET_VRING_BASE waits for its requests): no chain is taken from it any more. */
  draining = false;
  private kickWatcher: FdWatcher | null = null;

  constructor(readonly index: number) {}

  get started(): boolean {
    return this.queue !== null;
  }

  /**
   * Watches the kick fd; `onKick` runs after it is drained. An fd that can
   * never give a kick (EOF: the read end of a pipe whose writer left; a read
   * error: e.g. a pipe's write end) stays readable forever under a
   * level-triggered poll, so it is no longer watched and `onDead` says why.
   */
  watchKick(onKick: () => void, onDead: (why: string) => void): void {
    this.kickWatcher?.close();
    this.kickWatcher = null;
    const fd = this.kickFd;
    const watcher: FdWatcher = new FdWatcher(fd, (status) => {
      let why: string | null = status < 0 ? `poll error ${status}` : null;
      if (why === null) {
        const n = readOrErrno(fd, drain);
        if (n === 0) why = 'end of file';
        // EAGAIN: a spurious wake-up; the ring is checked anyway.
        else if (n < 0 && n !== -Errno.EAGAIN && n !== -Errno.EINTR) why = `read: ${errnoCode(-n)}`;
      }
      if (why !== null) {
        watcher.close();
        if (this.kickWatcher === watcher) this.kickWatcher = null;
        onDead(why);
        return;
      }
      onKick();
    });
    this.kickWatcher = watcher;
  }

  /** Whether the kick fd is being watched (false once it turned out unusable). */
  get watchingKick(): boolean {
    return this.kickWatcher !== null;
  }

  /**
   * Takes an fd the front-end handed over for `which`. It may be anything (a
   * pipe nobody reads, a socket): it is made non-blocking first, so no read or
   * write of ours can ever stop the event loop. Closes it if that fails.
   * O_NONBLOCK means nothing to a regular file, a directory or a block device,
   * whose writes may wait for their file system or disk: such a call fd is
   * closed and the queue goes without signals; the returned line says so.
   */
  adoptFd(which: 'kickFd' | 'callFd' | 'errFd', fd: number): string | null {
    try {
      fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) | O_NONBLOCK);
    } catch (err) {
      close(fd);
      throw err;
    }
    if (which === 'callFd') {
      const kind = unsignallable(fd);
      if (kind) {
        close(fd);
        this.replaceFd('callFd', -1);
        return `call fd is ${kind} (its writes may wait for a file system or disk): no signals on this queue`;
      }
    }
    this.replaceFd(which, fd);
    return null;
  }

  /**
   * Signals the driver through the call fd (if it gave one). A full fd
   * (EAGAIN: a pipe nobody reads, a saturated eventfd) is fine: a signal is
   * pending already. A call fd that cannot be written at all (the front-end
   * sent something else) is dropped, with the error returned for the owner to
   * log once: signals stop, the daemon does not.
   */
  signal(): Error | null {
    if (this.callFd < 0) return null;
    const n = writeOrErrno(this.callFd, ONE);
    if (n >= 0 || n === -Errno.EAGAIN) return null;
    this.replaceFd('callFd', -1);
    return new SysError('write', -n);
  }

  /** Signals if the driver asked to be told about what was used since the last signal. */
  signalIfNeeded(): Error | null {
    return this.queue && this.queue.needsSignal() ? this.signal() : null;
  }

  /** Stops processing (GET_VRING_BASE): returns the next available index to resume from. */
  stop(): number {
    this.draining = false;
    this.kickWatcher?.close();
    this.kickWatcher = null;
    const next = this.queue ? this.queue.lastAvailIdx : this.base;
    this.queue = null;
    this.replaceFd('kickFd', -1);
    return next;
  }

  replaceFd(which: 'kickFd' | 'callFd' | 'errFd', fd: number): void {
    const old = this[which];
    if (old >= 0 && old !== fd) close(old);
    this[which] = fd;
  }

  /** Back to the state of a new connection. */
  reset(): void {
    this.stop();
    this.replaceFd('callFd', -1);
    this.replaceFd('errFd', -1);
    this.size = 0;
    this.addressed = false;
    this.base = 0;
    this.enabled = false;
  }
}

/** What kind of fd `fd` is when a write to it could block despite O_NONBLOCK, else null. */
function unsignallable(fd: number): string | null {
  let st: fs.Stats;
  try {
    st = fs.fstatSync(fd);
  } catch {
    return null;
  }
  if (st.isFile()) return 'a regular file';
  if (st.isDirectory()) return 'a directory';
  if (st.isBlockDevice()) return 'a block device';
  return null;
}
