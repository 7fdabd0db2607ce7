import * as fs from 'node:fs';
import { MappedRegion, close } from '../sys';
import { MemoryRegionDescription } from './messages';

/** A region of guest RAM shared by the front-end as a file descriptor. */
export interface GuestRegion {
  // Addresses are kept as numbers: they are far below 2^53 on any real machine,
  // and BigInt arithmetic on the per-descriptor path is several times slower.
  guestPhysAddr: number;
  size: number;
  /** The front-end's (VMM's) virtual address of the region: vring addresses use it. */
  userspaceAddr: number;
  mmapOffset: number;
  /** Our mapping of [mmapOffset, mmapOffset + size) of the region's fd. */
  mapping: MappedRegion;
  /** Offset of the region's first byte within `mapping` (= mmapOffset). */
  base: number;
}

export class GuestMemoryError extends Error {
  override name = 'GuestMemoryError';
}

/**
 * The guest's memory table: translates guest-physical addresses (descriptors)
 * and front-end virtual addresses (vring addresses) into Buffer views of our
 * mappings, after checking every byte lies inside a region.
 */
export class GuestMemory {
  private regions: GuestRegion[] = [];

  get regionCount(): number {
    return this.regions.length;
  }

  /** Maps a region described by the front-end; takes ownership of `fd`. */
  addRegion(desc: MemoryRegionDescription, fd: number): void {
    try {
      const size = Number(desc.memorySize);
      const gpa = Number(desc.guestPhysAddr);
      const uva = Number(desc.userspaceAddr);
      const base = Number(desc.mmapOffset);
      if (size <= 0 || ![size, gpa, uva, base, gpa + size, uva + size, base + size].every(Number.isSafeInteger)) {
        throw new GuestMemoryError(`unusable region: gpa 0x${desc.guestPhysAddr.toString(16)} size ${desc.memorySize}`);
      }
      for (const r of this.regions) {
        if (gpa < r.guestPhysAddr + r.size && r.guestPhysAddr < gpa + size) {
          throw new GuestMemoryError(`region at 0x${gpa.toString(16)} overlaps another`);
        }
      }
      // Touching a mapping past the end of its file raises SIGBUS: the file must hold the whole region.
      const fileSize = fs.fstatSync(fd).size;
      if (base + size > fileSize) {
        throw new GuestMemoryError(`region at 0x${gpa.toString(16)} needs ${base + size} bytes of its fd, which has ${fileSize}`);
      }
      // mmap needs a page-aligned file offset: map from 0 and skip mmapOffset, as libvhost-user does.
      const mapping = MappedRegion.mapFd(fd, base + size, 0);
      this.regions.push({ guestPhysAddr: gpa, size, userspaceAddr: uva, mmapOffset: base, mapping, base });
      this.regions.sort((a, b) => a.guestPhysAddr - b.guestPhysAddr);
    } finally {
      close(fd);
    }
  }

  /**
   * Takes the region that starts at `guestPhysAddr` with `size` bytes out of
   * the table, still mapped (the caller unmaps it once nothing uses it), or
   * returns null if there is none.
   */
  detachRegion(guestPhysAddr: bigint, size: bigint): GuestRegion | null {
    const i = this.regions.findIndex((r) => BigInt(r.guestPhysAddr) === guestPhysAddr && BigInt(r.size) === size);
    if (i < 0) return null;
    return this.regions.splice(i, 1)[0];
  }

  /** Puts a detached region back (the change it was detached for was refused). */
  reattachRegion(region: GuestRegion): void {
    this.regions.push(region);
    this.regions.sort((a, b) => a.guestPhysAddr - b.guestPhysAddr);
  }

  /**
   * Replaces this table's regions with `next`'s (which is left empty) and
   * returns the old ones, still mapped: requests in flight may hold views of them.
   */
  replaceWith(next: GuestMemory): GuestRegion[] {
    const old = this.regions;
    this.regions = next.regions;
    next.regions = [];
    return old;
  }

  /** Unmaps and forgets every region. */
  clear(): void {
    unmapRegions(this.regions);
    this.regions = [];
  }

  /**
   * Appends views of guest-physical [addr, addr+len) to `out`. Returns false
   * (appending nothing) if any byte lies outside guest RAM.
   */
  views(addr: number, len: number, out: Buffer[]): boolean {
    const start = out.length;
    while (len > 0) {
      const r = this.findGpa(addr);
      if (!r) {
        out.length = start;
        return false;
      }
      const offset = addr - r.guestPhysAddr;
      const n = Math.min(len, r.size - offset);
      r.mapping.views(r.base + offset, n, out);
      addr += n;
      len -= n;
    }
    return true;
  }

  /** One contiguous view of guest-physical [addr, addr+len), or null if outside RAM or split. */
  slice(addr: number, len: number): Buffer | null {
    const r = this.findGpa(addr);
    if (!r) return null;
    const offset = addr - r.guestPhysAddr;
    if (offset + len > r.size) return null;
    return r.mapping.slice(r.base + offset, len);
  }

  /** One contiguous view of front-end-virtual [uva, uva+len) (vring addresses). */
  sliceUserAddr(uva: number, len: number): Buffer | null {
    for (const r of this.regions) {
      if (uva >= r.userspaceAddr && uva < r.userspaceAddr + r.size) {
        const offset = uva - r.userspaceAddr;
        if (offset + len > r.size) return null;
        return r.mapping.slice(r.base + offset, len);
      }
    }
    return null;
  }

  private findGpa(addr: number): GuestRegion | undefined {
    // Few regions (usually 1-2): a linear scan beats anything cleverer.
    for (const r of this.regions) {
      if (addr >= r.guestPhysAddr && addr < r.guestPhysAddr + r.size) return r;
    }
    return undefined;
  }
}

/** Unmaps regions taken out of a table (see detachRegion, replaceWith). */
export function unmapRegions(regions: GuestRegion[]): void {
  for (const r of regions) r.mapping.unmap();
}
