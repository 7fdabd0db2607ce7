import { addon } from './native';
import { MAP_SHARED, PROT_READ, PROT_WRITE, fcntl } from './libc';
import { SysError } from './errno';

/** fcntl commands and seals of linux/fcntl.h. */
export const F_GET_SEALS = 1034;
export const F_SEAL_SEAL = 0x0001;
export const F_SEAL_SHRINK = 0x0002;
export const F_SEAL_GROW = 0x0004;
export const F_SEAL_WRITE = 0x0008;

const EINVAL = 22;

/**
 * The seals of `fd` (F_SEAL_* bits), or null if the fd cannot carry seals
 * (not a memfd/shmem/hugetlbfs file: F_GET_SEALS answers EINVAL). An fd
 * without F_SEAL_SHRINK can be shrunk under our mapping by whoever else holds it.
 */
export function fdSeals(fd: number): number | null {
  try {
    return fcntl(fd, F_GET_SEALS, 0);
  } catch (err) {
    if (err instanceof SysError && err.errno === EINVAL) return null;
    throw err;
  }
}

/** Faults absorbed in all guarded mappings since the process started (see MappedRegion.faulted). */
export function guardedFaultTotal(): number {
  return addon.guardFaultTotal();
}

/** Node Buffers stop at 4 GiB; mapped regions are viewed in chunks of this size. */
export const MAX_VIEW_BYTES = 1 << 30;

/**
 * A shared mapping of (part of) a file descriptor, viewed as Buffers of at most
 * MAX_VIEW_BYTES each. `chunks[i]` covers bytes [i*MAX_VIEW_BYTES, ...).
 *
 * Guarded mappings (the default) survive the file shrinking under them: the
 * native fault handler replaces each page touched past the file's new end
 * with a zero page, so the access reads zeros instead of killing the process
 * with SIGBUS, and counts it. The owner polls `faulted()` (or, cheaper,
 * `guardedFaultTotal()` once per batch) and stops trusting the memory: for
 * guest RAM, it drops the front-end.
 */
export class MappedRegion {
  readonly chunks: Buffer[] = [];
  private unmapped = false;

  private constructor(
    readonly address: bigint,
    readonly length: number,
    /** Id of the native guarded range, or -1 when unguarded. */
    private readonly guardId: number,
    /** The fd's seals at map time (F_SEAL_*), or null if it cannot carry seals. */
    readonly seals: number | null,
  ) {
    for (let off = 0; off < length; off += MAX_VIEW_BYTES) {
      const len = Math.min(MAX_VIEW_BYTES, length - off);
      this.chunks.push(Buffer.from(addon.view(address + BigInt(off), len)));
    }
  }

  /**
   * Maps [offset, offset+length) of `fd` shared. `guard` registers the mapping
   * with the native fault handler (see the class comment).
   */
  static mapFd(fd: number, length: number, offset: number | bigint = 0, writable = true, guard = true): MappedRegion {
    const seals = fdSeals(fd);
    const prot = PROT_READ | (writable ? PROT_WRITE : 0);
    const addr = addon.mmap(0n, length, prot, MAP_SHARED, fd, offset);
    let guardId = -1;
    try {
      if (guard) guardId = addon.guardRange(addr, length);
      return new MappedRegion(addr, length, guardId, seals);
    } catch (err) {
      if (guardId >= 0) addon.unguardRange(guardId);
      addon.munmap(addr, length);
      throw err;
    }
  }

  /** Whether the fd was sealed against shrinking when mapped (then it cannot fault that way). */
  get shrinkSealed(): boolean {
    return this.seals !== null && (this.seals & F_SEAL_SHRINK) !== 0;
  }

  /** Pages of this mapping that faulted (file shrunk under it) and now read as zeros. */
  faultCount(): number {
    if (this.guardId < 0 || this.unmapped) return 0;
    return addon.guardFaults(this.guardId);
  }

  /** Whether any page of this mapping faulted: its contents can no longer be trusted. */
  faulted(): boolean {
    return this.faultCount() > 0;
  }

  /** A view of [offset, offset+length) if it lies within one chunk, else null. */
  slice(offset: number, length: number): Buffer | null {
    const index = Math.floor(offset / MAX_VIEW_BYTES);
    const start = offset - index * MAX_VIEW_BYTES;
    const chunk = this.chunks[index];
    if (!chunk || start + length > chunk.length) return null;
    return chunk.subarray(start, start + length);
  }

  /** Views covering [offset, offset+length), split at chunk boundaries. */
  views(offset: number, length: number, out: Buffer[]): void {
    while (length > 0) {
      const index = Math.floor(offset / MAX_VIEW_BYTES);
      const start = offset - index * MAX_VIEW_BYTES;
      const chunk = this.chunks[index];
      const n = Math.min(length, chunk.length - start);
      out.push(chunk.subarray(start, start + n));
      offset += n;
      length -= n;
    }
  }

  unmap(): void {
    if (this.unmapped) return;
    this.unmapped = true;
    this.chunks.length = 0;
    // Unguard first: a later mapping at this address must not be absorbed.
    if (this.guardId >= 0) addon.unguardRange(this.guardId);
    addon.munmap(this.address, this.length);
  }
}
