import { addon } from './native';

/**
 * Calls `onReadable` from the event loop whenever `fd` is readable (libuv
 * uv_poll, level-triggered). The callback must drain the fd, or close the
 * watcher: an fd that stays readable (EOF, an error) calls it again at once.
 * Throws if the fd cannot be polled at all (a regular file, a directory).
 */
export class FdWatcher {
  private handle: object | null;

  /**
   * `onError` receives whatever `onReadable` throws: an exception must never
   * leave a libuv callback (N-API would make it fatal). By default it is
   * written to stderr and the loop goes on.
   */
  constructor(
    readonly fd: number,
    onReadable: (status: number) => void,
    onError: (err: unknown) => void = reportWatcherError,
  ) {
    // A negative status is a libuv error on the fd (e.g. EBADF): passed on so the owner
    // can stop watching; owners that only read see the same error from their read.
    this.handle = addon.watch(fd, (status) => {
      try {
        onReadable(status);
      } catch (err) {
        try {
          onError(err);
        } catch {
          // The error path itself failed: nothing sensible is left to tell.
        }
      }
    });
  }

  close(): void {
    if (this.handle) {
      addon.unwatch(this.handle);
      this.handle = null;
    }
  }
}

function reportWatcherError(err: unknown): void {
  process.stderr.write(`[virtiofsd-ts] error: fd watcher callback: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
}
