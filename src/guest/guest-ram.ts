import { MFD_CLOEXEC, MappedRegion, close, ftruncate, memfdCreate } from '../sys';

/** One region of the guest's RAM: a memfd mapped here, announced to the back-end. */
export interface RamRegion {
  guestPhysAddr: number;
  size: number;
  /** The address we tell the back-end we (the VMM) map it at; vring addresses use it. */
  userspaceAddr: number;
  fd: number;
  mapping: MappedRegion;
  /** Bump pointer of never-allocated space. */
  next: number;
}

/** A block of guest RAM: its guest-physical address and a view of its bytes. */
export interface RamBlock {
  addr: number;
  view: Buffer;
  /** Size class the block came from (for free()). */
  readonly capacity: number;
}

const MIN_CLASS = 64;
const PAGE = 4096;
/** A pretend VMM address space base for the regions (only needs to be consistent). */
const USERSPACE_BASE = 0x7e0000000000;

/**
 * The TypeScript guest's RAM: memfd regions at distinct guest-physical
 * addresses (several, so the back-end's translation across regions is
 * exercised), and a small power-of-two allocator for rings and request buffers.
 */
export class GuestRam {
  readonly regions: RamRegion[] = [];
  private readonly freeLists = new Map<number, RamBlock[]>();

  /** `regionSizes[i]` bytes at guest-physical address i * 4 GiB (page multiples). */
  constructor(regionSizes: number[]) {
    regionSizes.forEach((size, i) => {
      if (size % PAGE !== 0 || size <= 0) throw new Error(`region size ${size} is not a positive multiple of ${PAGE}`);
      const fd = memfdCreate(`virtiofsd-ts-guest-ram-${i}`, MFD_CLOEXEC);
      ftruncate(fd, size);
      const gpa = i * 0x100000000;
      this.regions.push({
        guestPhysAddr: gpa,
        size,
        userspaceAddr: USERSPACE_BASE + gpa,
        fd,
        mapping: MappedRegion.mapFd(fd, size),
        next: i === 0 ? PAGE : 0, // keep guest-physical 0 unused, as a null pointer
      });
    });
  }

  /**
   * Allocates `len` bytes (rounded up to a power of two, at least 64, aligned to
   * their own size up to a page). `region` pins the allocation to one region.
   */
  alloc(len: number, region?: number): RamBlock {
    const capacity = Math.max(MIN_CLASS, 2 ** Math.ceil(Math.log2(Math.max(1, len))));
    const list = this.freeLists.get(capacity);
    if (list && list.length > 0 && region === undefined) {
      const block = list.pop()!;
      return { addr: block.addr, view: block.view.subarray(0, len), capacity };
    }
    const align = Math.min(capacity, PAGE);
    const candidates = region === undefined ? this.regions : [this.regions[region]];
    for (const r of candidates) {
      const start = Math.ceil(r.next / align) * align;
      if (start + capacity <= r.size) {
        r.next = start + capacity;
        const view = r.mapping.slice(start, capacity);
        if (!view) continue; // would straddle a 1 GiB view chunk: try elsewhere
        return { addr: r.guestPhysAddr + start, view: view.subarray(0, len), capacity };
      }
    }
    throw new Error(`guest RAM exhausted allocating ${len} bytes`);
  }

  free(block: RamBlock): void {
    let list = this.freeLists.get(block.capacity);
    if (!list) this.freeLists.set(block.capacity, (list = []));
    const full = this.view(block.addr, block.capacity);
    list.push({ addr: block.addr, view: full, capacity: block.capacity });
  }

  /** A view of guest-physical [addr, addr+len); throws outside RAM. */
  view(addr: number, len: number): Buffer {
    for (const r of this.regions) {
      if (addr >= r.guestPhysAddr && addr + len <= r.guestPhysAddr + r.size) {
        const v = r.mapping.slice(addr - r.guestPhysAddr, len);
        if (v) return v;
      }
    }
    throw new Error(`guest-physical 0x${addr.toString(16)}+${len} is not in guest RAM`);
  }

  /** The userspace address the back-end knows for a guest-physical address. */
  userAddr(addr: number): number {
    for (const r of this.regions) {
      if (addr >= r.guestPhysAddr && addr < r.guestPhysAddr + r.size) return r.userspaceAddr + (addr - r.guestPhysAddr);
    }
    throw new Error(`guest-physical 0x${addr.toString(16)} is not in guest RAM`);
  }

  close(): void {
    for (const r of this.regions) {
      r.mapping.unmap();
      close(r.fd);
    }
    this.regions.length = 0;
  }
}
