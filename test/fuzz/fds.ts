/**
 * Real file descriptors of every kind a hostile front-end might hand over,
 * and an fd count for leak checks.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  AF_UNIX,
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  MFD_CLOEXEC,
  SOCK_CLOEXEC,
  SOCK_STREAM,
  close,
  eventfd,
  ftruncate,
  memfdCreate,
  socketpair,
  syscall,
} from '../../src/sys';
import type { Prng } from './prng';

const O_CLOEXEC = 0o2000000;
const pipe2 = syscall<(fds: Int32Array, flags: number) => number>('pipe2', 'int pipe2(_Out_ int32_t *fds, int)');

/** Open fds of this process. */
export function fdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

export type FdKind = 'eventfd' | 'memfd' | 'pipe' | 'file' | 'dir' | 'socket' | 'devnull';
export const FD_KINDS: readonly FdKind[] = ['eventfd', 'memfd', 'pipe', 'file', 'dir', 'socket', 'devnull'];

/**
 * Opens fds and remembers every one it opened, so a case can close them all
 * whatever happened (they are dup'ed into the receiver by sendmsg).
 */
export class FdPool {
  private readonly open: number[] = [];

  constructor(private readonly scratchDir: string) {}

  private keep(fd: number): number {
    this.open.push(fd);
    return fd;
  }

  eventfd(): number {
    return this.keep(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  }

  memfd(size: number): number {
    const fd = this.keep(memfdCreate('fuzz-ram', MFD_CLOEXEC));
    ftruncate(fd, size);
    return fd;
  }

  make(kind: FdKind, rng: Prng): number {
    switch (kind) {
      case 'eventfd':
        return this.eventfd();
      case 'memfd':
        return this.memfd(rng.pick([0, 4096, 65536, 1 << 20, rng.below(1 << 20)]));
      case 'pipe': {
        const p = new Int32Array(2);
        pipe2(p, O_CLOEXEC);
        this.keep(p[0]);
        this.keep(p[1]);
        return rng.chance(0.5) ? p[0] : p[1];
      }
      case 'file': {
        const fd = this.keep(fs.openSync(path.join(this.scratchDir, `f${rng.below(4)}`), 'a+'));
        if (rng.chance(0.5)) fs.ftruncateSync(fd, rng.pick([0, 4096, 1 << 20]));
        return fd;
      }
      case 'dir':
        return this.keep(fs.openSync(this.scratchDir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY));
      case 'socket': {
        const sv = new Int32Array(2);
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
        this.keep(sv[0]);
        this.keep(sv[1]);
        return sv[0];
      }
      default:
        return this.keep(fs.openSync('/dev/null', 'r+'));
    }
  }

  random(rng: Prng): number {
    return this.make(rng.pick(FD_KINDS), rng);
  }

  closeAll(): void {
    for (const fd of this.open.splice(0)) close(fd);
  }
}
