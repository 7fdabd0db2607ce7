import { Errno, SysError, errnoOf } from '../sys/errno';

/**
 * An error the file-system layer answers with: carries the positive errno that
 * becomes -errno in fuse_out_header.error. Like SysError it skips the stack
 * trace: it is a reply, not a bug report.
 */
export class FuseError extends Error {
  readonly errno: number;
  constructor(errno: number) {
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(`FUSE error ${errno}`);
    Error.stackTraceLimit = limit;
    this.errno = errno;
    this.name = 'FuseError';
  }
}

export function fail(errno: number): never {
  throw new FuseError(errno);
}

/** True for errors a syscall or a FUSE op raised on purpose; false for bugs (TypeError, RangeError ...). */
export function isExpectedError(err: unknown): boolean {
  if (err instanceof FuseError || err instanceof SysError) return true;
  return typeof (err as { errno?: unknown } | null)?.errno === 'number';
}

export { Errno, errnoOf };
