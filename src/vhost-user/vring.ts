import * as fs from 'node:fs';
import { FdWatcher, close } from '../sys';
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
  private kickWatcher: FdWatcher | null = null;

  constructor(readonly index: number) {}

  get started(): boolean {
    return this.queue !== null;
  }

  /** Watches the kick eventfd; `onKick` runs after the counter is drained. */
  watchKick(onKick: () => void): void {
    this.kickWatcher?.close();
    const fd = this.kickFd;
    this.kickWatcher = new FdWatcher(fd, () => {
      try {
        fs.readSync(fd, drain, 0, 8, null);
      } catch {
        // EAGAIN: a spurious wake-up; the ring is checked anyway.
      }
      onKick();
    });
  }

  /**
   * Signals the driver through the call eventfd (if it gave one). A call fd that
   * cannot be written (the front-end sent something else) is dropped, with the
   * error returned for the owner to log: signals stop, the daemon does not.
   */
  signal(): Error | null {
    if (this.callFd < 0) return null;
    try {
      fs.writeSync(this.callFd, ONE, 0, 8, null);
      return null;
    } catch (err) {
      this.replaceFd('callFd', -1);
      return err as Error;
    }
  }

  /** Signals if the driver asked to be told about what was used since the last signal. */
  signalIfNeeded(): Error | null {
    return this.queue && this.queue.needsSignal() ? this.signal() : null;
  }

  /** Stops processing (GET_VRING_BASE): returns the next available index to resume from. */
  stop(): number {
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
