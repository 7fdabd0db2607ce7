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
  /** Our mapping of [mmapOffset rounded down to MAP_OFFSET_ALIGN, mmapOffset + size) of the region's fd. */
  mapping: MappedRegion;
  /** Offset of the region's first byte within `mapping` (mmapOffset less its page-aligned part). */
  base: number;
}

const U64_MAX = (1n << 64n) - 1n;
/**
 * Mappings start at a file offset that is a multiple of this: 64 KiB is a
 * multiple of every page size Linux uses on x86-64 and arm64 (4, 16, 64 KiB).
 */
const MAP_OFFSET_ALIGN = 64 * 1024;

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

  /**
   * Maps a region described by the front-end; takes ownership of `fd`.
   * Every field is the front-end's word and is checked before use: a refused
   * region throws GuestMemoryError and leaves the table as it was.
   */
  addRegion(desc: MemoryRegionDescription, fd: number): void {
    try {
      const what = `region gpa 0x${desc.guestPhysAddr.toString(16)} size 0x${desc.memorySize.toString(16)}`;
      // In u64 first: each end must not wrap past 2^64.
      const ends = [desc.guestPhysAddr, desc.userspaceAddr, desc.mmapOffset].map((start) => start + desc.memorySize);
      if (desc.memorySize === 0n || ends.some((end) => end > U64_MAX + 1n))
        throw new GuestMemoryError(`unusable ${what}: empty or wraps past 2^64`);
      const size = Number(desc.memorySize);
      const gpa = Number(desc.guestPhysAddr);
      const uva = Number(desc.userspaceAddr);
      const offset = Number(desc.mmapOffset);
      // Addresses are kept as numbers (see GuestRegion): anything past 2^53 is refused, never rounded.
      if (![size, gpa, uva, offset, gpa + size, uva + size, offset + size].every(Number.isSafeInteger)) {
        throw new GuestMemoryError(`unusable ${what}: beyond 2^53`);
      }
      for (const r of this.regions) {
        if (gpa < r.guestPhysAddr + r.size && r.guestPhysAddr < gpa + size) {
          throw new GuestMemoryError(`region at 0x${gpa.toString(16)} overlaps another in guest-physical space`);
        }
        // Vring addresses are translated through userspace addresses: two regions there would make them ambiguous.
        if (uva < r.userspaceAddr + r.size && r.userspaceAddr < uva + size) {
          throw new GuestMemoryError(`region at 0x${gpa.toString(16)} overlaps another in the front-end's address space`);
        }
      }
      const stat = fs.fstatSync(fd);
      // Guest RAM is a memfd, a hugetlbfs or tmpfs file: a pipe, a socket or a directory is not.
      if (!stat.isFile()) throw new GuestMemoryError(`region at 0x${gpa.toString(16)}: its fd is not a regular file`);
      // Touching a mapping past the end of its file raises SIGBUS: the file must hold the whole region.
      const fileSize = stat.size;
      if (offset + size > fileSize) {
        throw new GuestMemoryError(`region at 0x${gpa.toString(16)} needs ${offset + size} bytes of its fd, which has ${fileSize}`);
      }
      // mmap needs a page-aligned file offset: map from mmap_offset rounded down and skip the
      // rest. Never from 0: a region at the end of a huge sparse file would map all of it.
      const start = offset - (offset % MAP_OFFSET_ALIGN);
      const mapping = MappedRegion.mapFd(fd, offset + size - start, start);
      const base = offset - start;
      this.regions.push({ guestPhysAddr: gpa, size, userspaceAddr: uva, mmapOffset: offset, mapping, base });
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

  /** Whether a page of some region faulted (its file shrank under us) and now reads as zeros. */
  faulted(): boolean {
    return this.regions.some((r) => r.mapping.faulted());
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
