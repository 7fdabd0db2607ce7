import { addon } from './native';
import { MAP_SHARED, PROT_READ, PROT_WRITE } from './libc';

/** Node Buffers stop at 4 GiB; mapped regions are viewed in chunks of this size. */
export const MAX_VIEW_BYTES = 1 << 30;

/**
 * A shared mapping of (part of) a file descriptor, viewed as Buffers of at most
 * MAX_VIEW_BYTES each. `chunks[i]` covers bytes [i*MAX_VIEW_BYTES, ...).
 */
export class MappedRegion {
  readonly chunks: Buffer[] = [];
  private unmapped = false;

  private constructor(
    readonly address: bigint,
    readonly length: number,
  ) {
    for (let off = 0; off < length; off += MAX_VIEW_BYTES) {
      const len = Math.min(MAX_VIEW_BYTES, length - off);
      this.chunks.push(Buffer.from(addon.view(address + BigInt(off), len)));
    }
  }

  static mapFd(fd: number, length: number, offset: number | bigint = 0, writable = true): MappedRegion {
    const prot = PROT_READ | (writable ? PROT_WRITE : 0);
    const addr = addon.mmap(0n, length, prot, MAP_SHARED, fd, offset);
    return new MappedRegion(addr, length);
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
    addon.munmap(this.address, this.length);
  }
}
