import * as path from 'node:path';

/**
 * The in-repo N-API addon (native/sys_addon.c): fd readiness through libuv,
 * SCM_RIGHTS messages and mmap'd memory as ArrayBuffers. See docs/architecture.md
 * for why these are native rather than koffi calls.
 */
export interface SysAddon {
  watch(fd: number, onReadable: (status: number, events: number) => void): object;
  unwatch(handle: object): void;
  sendmsg(fd: number, data: Buffer, fds: number[]): number;
  /** Returns [bytes, ...fds]; bytes 0 means the peer closed. Throws EAGAIN when empty. */
  recvmsg(fd: number, into: Buffer, offset: number, length: number): number[] & { ctrunc?: boolean };
  mmap(addr: bigint, length: bigint | number, prot: number, flags: number, fd: number, offset: bigint | number): bigint;
  munmap(addr: bigint, length: bigint | number): void;
  view(addr: bigint, length: number): ArrayBuffer;
  /** memcpy(dst, src, min(len)) that returns -1 instead of dying if the memory raises SIGBUS. */
  copyGuarded(dst: Buffer, src: Buffer): number;
  /**
   * Runs a blocking file call (copy_file_range 0, fallocate 1, syncfs 2, statx 3, openat 4) on libuv's
   * pool; calls back (errno, result). statx and openat take the NUL-terminated path as the first Buffer,
   * statx its result buffer as the second; both stay referenced until the callback.
   */
  asyncIo(
    op: number,
    a0: number,
    a1: number,
    a2: number,
    a3: number,
    a4: number,
    a5: number,
    done: (errno: number, result: number) => void,
    ...buffers: Buffer[]
  ): void;
  /** preadv2(2) into `buffers` (1..1024 of them) with RWF_* `flags`: bytes read, or -errno (never throws for a failed read). */
  preadv2(fd: number, buffers: Buffer[], position: number, flags: number): number;
  /**
   * Registers [addr, addr+length) of a mapping made by mmap as guarded: a
   * SIGBUS/SIGSEGV inside it replaces the page with a zero page and is counted
   * instead of killing the process. Returns the range's id.
   */
  guardRange(addr: bigint, length: bigint | number): number;
  /** Forgets a guarded range (before munmap). */
  unguardRange(id: number): void;
  /** Faults absorbed in guarded range `id` so far. */
  guardFaults(id: number): number;
  /** Faults absorbed in every guarded range, ever. */
  guardFaultTotal(): number;
}

function load(): SysAddon {
  const root = path.resolve(__dirname, '..', '..');
  const candidates = [
    path.join(root, 'build', 'Release', 'sys_addon.node'),
    path.join(root, 'build', 'Debug', 'sys_addon.node'),
    // Shipped in the package (scripts/prebuild.js): used where no local build exists, e.g. scripts blocked.
    path.join(root, 'prebuilds', `${process.platform}-${process.arch}`, 'sys_addon.node'),
  ];
  let lastError: unknown;
  for (const file of candidates) {
    try {
      // A .node file can only be loaded with require().
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      return require(file) as SysAddon;
    } catch (err) {
      lastError = err;
    }
  }
  throw new Error(`native addon not built (run npm install): ${String(lastError)}`);
}

export const addon: SysAddon = load();
