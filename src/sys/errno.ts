import { constants } from 'node:os';

/** errno number -> symbolic code ("ENOENT"), built from Node's own table. */
const codeByErrno = new Map<number, string>();
for (const [code, num] of Object.entries(constants.errno)) {
  if (!codeByErrno.has(num)) codeByErrno.set(num, code);
}

export function errnoCode(errno: number): string {
  return codeByErrno.get(errno) ?? `E${errno}`;
}

/**
 * An Error from a syscall: `errno` is the positive Linux errno, `code` its name.
 * It carries no stack trace: guests make syscalls fail all the time (a lookup
 * of a missing name is an ENOENT), the errno is the whole story, and capturing
 * a stack would cost more than the syscall itself.
 */
export class SysError extends Error {
  readonly syscall: string;
  readonly errno: number;
  constructor(syscall: string, errno: number) {
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(`${syscall}: ${errnoCode(errno)}`);
    Error.stackTraceLimit = limit;
    this.syscall = syscall;
    this.errno = errno;
    this.name = 'SysError';
  }
  get code(): string {
    return errnoCode(this.errno);
  }
}

/**
 * The positive errno carried by any error thrown by a syscall wrapper, Node's fs
 * (whose `errno` is negative) or the native addon; EIO for anything else.
 */
export function errnoOf(err: unknown): number {
  if (err && typeof err === 'object') {
    const e = err as { errno?: unknown; code?: unknown };
    if (typeof e.errno === 'number' && e.errno !== 0) return Math.abs(e.errno);
    if (typeof e.code === 'string') {
      const n = (constants.errno as Record<string, number>)[e.code];
      if (n) return n;
    }
  }
  return constants.errno.EIO;
}

export const Errno = constants.errno;
