import { addon } from './native';

/**
 * Calls `onReadable` from the event loop whenever `fd` is readable (libuv
 * uv_poll, level-triggered). The callback must drain the fd, or close the
 * watcher: an fd that stays readable (EOF, an error) calls it again at once.
 * Throws if the fd cannot be polled at all (a regular file, a directory).
 */
export class FdWatcher {
  private handle: object | null;

  constructor(
    readonly fd: number,
    onReadable: (status: number) => void,
  ) {
    // A negative status is a libuv error on the fd (e.g. EBADF): passed on so the owner
    // can stop watching; owners that only read see the same error from their read.
    this.handle = addon.watch(fd, (status) => onReadable(status));
  }

  close(): void {
    if (this.handle) {
      addon.unwatch(this.handle);
      this.handle = null;
    }
  }
}
