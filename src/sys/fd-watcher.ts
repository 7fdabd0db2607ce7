import { addon } from './native';

/**
 * Calls `onReadable` from the event loop whenever `fd` is readable (libuv
 * uv_poll, level-triggered). The callback must drain the fd.
 */
export class FdWatcher {
  private handle: object | null;

  constructor(
    readonly fd: number,
    onReadable: () => void,
  ) {
    this.handle = addon.watch(fd, (status) => {
      // A negative status is a libuv error on the fd (e.g. EBADF); treat it as readable so the
      // owner's read observes the error and tears down.
      void status;
      onReadable();
    });
  }

  close(): void {
    if (this.handle) {
      addon.unwatch(this.handle);
      this.handle = null;
    }
  }
}
