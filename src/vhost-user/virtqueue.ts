import { dataViewOf } from '../layout';
import { GuestMemory } from './guest-memory';

/** Descriptor flags (virtio 1.x, 2.7.5). */
export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
/** Ring flags. */
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
export const VIRTQ_USED_F_NO_NOTIFY = 1;

const DESC_SIZE = 16;
export const MAX_QUEUE_SIZE = 32768;

/** A descriptor chain, as views of guest memory in chain order. */
export interface DescriptorChain {
  head: number;
  readable: Buffer[];
  writable: Buffer[];
  readableBytes: number;
  writableBytes: number;
}

/** A chain the guest built wrongly; it is returned to the guest unused (used length 0). */
export interface BrokenChain {
  head: number;
  error: string;
}

export class VirtqueueError extends Error {
  override name = 'VirtqueueError';
}

/** Alignment of each ring (virtio 1.x, 2.7: Descriptor Table 16, Available Ring 2, Used Ring 4). */
export const DESC_ALIGN = 16;
export const AVAIL_ALIGN = 2;
export const USED_ALIGN = 4;

/** The three rings of a queue as views of guest memory (see locateRings). */
export interface RingViews {
  size: number;
  desc: Buffer;
  avail: Buffer;
  used: Buffer;
}

/** Throws unless the rings' front-end addresses are aligned as the spec requires. */
export function checkRingAlignment(descUserAddr: number, availUserAddr: number, usedUserAddr: number): void {
  if (descUserAddr % DESC_ALIGN !== 0 || availUserAddr % AVAIL_ALIGN !== 0 || usedUserAddr % USED_ALIGN !== 0) {
    throw new VirtqueueError(
      `misaligned vring address (desc 0x${descUserAddr.toString(16)}, avail 0x${availUserAddr.toString(16)}, used 0x${usedUserAddr.toString(16)})`,
    );
  }
}

/**
 * Finds a queue's rings in `memory`: every byte of all three areas, for a
 * queue of `size` entries, must lie in one region, and each area must be
 * aligned as the spec says, both in the front-end's address space and in our
 * mapping (a region's mmap_offset can shift one against the other; our
 * 16- and 32-bit atomic views need the latter). Throws VirtqueueError.
 */
export function locateRings(
  memory: GuestMemory,
  size: number,
  descUserAddr: number,
  availUserAddr: number,
  usedUserAddr: number,
): RingViews {
  if (size === 0 || size > MAX_QUEUE_SIZE || (size & (size - 1)) !== 0) {
    throw new VirtqueueError(`queue size ${size} is not a power of two up to ${MAX_QUEUE_SIZE}`);
  }
  checkRingAlignment(descUserAddr, availUserAddr, usedUserAddr);
  const desc = memory.sliceUserAddr(descUserAddr, size * DESC_SIZE);
  const avail = memory.sliceUserAddr(availUserAddr, 4 + 2 * size + 2);
  const used = memory.sliceUserAddr(usedUserAddr, 4 + 8 * size + 2);
  if (!desc || !avail || !used) throw new VirtqueueError('vring address outside guest memory');
  if (avail.byteOffset % AVAIL_ALIGN !== 0 || used.byteOffset % USED_ALIGN !== 0) {
    throw new VirtqueueError("vring misaligned in our mapping (the region's mmap_offset shifts it)");
  }
  return { size, desc, avail, used };
}

/**
 * The device side of a split virtqueue (virtio 1.x, 2.7): pops descriptor
 * chains from the available ring, validates every address against guest
 * memory, pushes used elements and decides when the driver needs a signal
 * (VIRTIO_RING_F_EVENT_IDX or the NO_INTERRUPT flag).
 */
export class SplitVirtqueue {
  private desc!: Buffer;
  private availFlagsIdx!: Uint16Array; // [flags, idx]
  private availRing!: Buffer;
  private usedHeader!: Uint16Array; // [flags, idx]
  private usedRing!: Buffer;
  private usedEvent!: Buffer; // in the avail ring: used_event
  private availEvent!: Uint16Array; // in the used ring: avail_event
  /** Next available-ring index we will read (free-running, 16 bits). */
  lastAvailIdx = 0;
  /** Next used-ring index we will write (free-running, 16 bits). */
  usedIdx = 0;
  /** Used index when the driver was last signalled (for EVENT_IDX). */
  private signalledUsedIdx = 0;
  private signalledValid = false;

  constructor(
    private readonly memory: GuestMemory,
    readonly size: number,
    private readonly eventIdx: boolean,
    private readonly indirect: boolean,
  ) {
    if (size === 0 || size > MAX_QUEUE_SIZE || (size & (size - 1)) !== 0) {
      throw new VirtqueueError(`queue size ${size} is not a power of two up to ${MAX_QUEUE_SIZE}`);
    }
  }

  /** Locates the three rings from front-end virtual addresses; throws if any lies outside guest RAM or is misaligned. */
  setAddresses(descUserAddr: number, availUserAddr: number, usedUserAddr: number): void {
    this.useRings(locateRings(this.memory, this.size, descUserAddr, availUserAddr, usedUserAddr));
  }

  /**
   * Points the queue at rings located beforehand for its size (see
   * locateRings): memory-table changes locate every ring first and switch
   * only once all of them were found.
   */
  useRings(r: RingViews): void {
    const n = this.size;
    if (r.size !== n) throw new VirtqueueError(`rings located for ${r.size} entries, queue has ${n}`);
    this.desc = r.desc;
    this.availFlagsIdx = new Uint16Array(r.avail.buffer, r.avail.byteOffset, 2);
    this.availRing = r.avail.subarray(4, 4 + 2 * n);
    this.usedEvent = r.avail.subarray(4 + 2 * n, 4 + 2 * n + 2);
    this.usedHeader = new Uint16Array(r.used.buffer, r.used.byteOffset, 2);
    this.usedRing = r.used.subarray(4, 4 + 8 * n);
    this.availEvent = new Uint16Array(r.used.buffer, r.used.byteOffset + 4 + 8 * n, 1);
  }

  /** Sets where processing resumes (SET_VRING_BASE); the used index follows it. */
  setBase(index: number): void {
    this.lastAvailIdx = index & 0xffff;
    this.usedIdx = index & 0xffff;
    this.signalledValid = false;
  }

  /** The available ring's index as the driver last published it. */
  availIdx(): number {
    // Atomics give the ordering the driver relies on (a load after our avail_event store).
    return Atomics.load(this.availFlagsIdx, 1);
  }

  /** Pending chains: how far the driver is ahead of us. Throws if the driver claims more than the ring holds. */
  pending(): number {
    const ahead = (this.availIdx() - this.lastAvailIdx) & 0xffff;
    if (ahead > this.size) throw new VirtqueueError(`available index ${this.availIdx()} is ${ahead} ahead of ${this.lastAvailIdx}`);
    return ahead;
  }

  /** Pops the next chain, or null when the ring is empty. */
  pop(): DescriptorChain | BrokenChain | null {
    if (this.pending() === 0) return null;
    const ring = this.availRing;
    const head = dataViewOf(ring).getUint16(ring.byteOffset + 2 * (this.lastAvailIdx % this.size), true);
    this.lastAvailIdx = (this.lastAvailIdx + 1) & 0xffff;
    if (head >= this.size) return { head, error: `head index ${head} out of range` };
    return this.walk(head);
  }

  private walk(head: number): DescriptorChain | BrokenChain {
    const chain: DescriptorChain = { head, readable: [], writable: [], readableBytes: 0, writableBytes: 0 };
    let table = this.desc;
    let view = dataViewOf(table);
    let tableSize = this.size;
    let index = head;
    let budget = this.size; // a chain can never be longer than its table: anything more is a loop
    let inIndirect = false;
    for (;;) {
      if (budget-- === 0) return { head, error: 'descriptor chain loops or is too long' };
      // index < tableSize: the 16 bytes lie inside `table`.
      const at = table.byteOffset + index * DESC_SIZE;
      const lo = view.getUint32(at, true);
      const hi = view.getUint32(at + 4, true);
      const len = view.getUint32(at + 8, true);
      const flags = view.getUint16(at + 12, true);
      const next = view.getUint16(at + 14, true);
      if (hi >= 0x200000) return { head, error: 'descriptor address beyond 2^53' };
      const addr = hi * 0x100000000 + lo;

      if (flags & VIRTQ_DESC_F_INDIRECT) {
        if (!this.indirect) return { head, error: 'indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC' };
        if (inIndirect) return { head, error: 'nested indirect descriptor' };
        if (flags & VIRTQ_DESC_F_NEXT) return { head, error: 'indirect descriptor with NEXT' };
        if (len === 0 || len % DESC_SIZE !== 0) return { head, error: `indirect table of ${len} bytes` };
        // A chain may not be longer than the queue (virtio 1.x, 2.7.5.3.1), indirect or not.
        if (len / DESC_SIZE > this.size)
          return { head, error: `indirect table of ${len / DESC_SIZE} descriptors for a queue of ${this.size}` };
        const t = this.memory.slice(addr, len);
        if (!t) return { head, error: 'indirect table outside guest memory' };
        table = t;
        view = dataViewOf(table);
        tableSize = len / DESC_SIZE;
        budget = tableSize;
        index = 0;
        inIndirect = true;
        continue;
      }

      if (flags & VIRTQ_DESC_F_WRITE) {
        if (!this.memory.views(addr, len, chain.writable)) return { head, error: 'descriptor outside guest memory' };
        chain.writableBytes += len;
      } else {
        if (chain.writable.length > 0) return { head, error: 'readable descriptor after a writable one' };
        if (!this.memory.views(addr, len, chain.readable)) return { head, error: 'descriptor outside guest memory' };
        chain.readableBytes += len;
      }

      if (!(flags & VIRTQ_DESC_F_NEXT)) return chain;
      if (next >= tableSize) return { head, error: `next index ${next} out of range` };
      index = next;
    }
  }

  /** Returns a chain to the driver with `len` bytes written. */
  pushUsed(head: number, len: number): void {
    const ring = this.usedRing;
    const slot = ring.byteOffset + 8 * (this.usedIdx % this.size);
    const view = dataViewOf(ring);
    view.setUint32(slot, head, true);
    view.setUint32(slot + 4, len, true);
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
    // Publish the element before the index (a store-release for the driver).
    Atomics.store(this.usedHeader, 1, this.usedIdx);
  }

  /** Whether the driver wants a signal for what was used since the last signal. */
  needsSignal(): boolean {
    if (!this.eventIdx) return (Atomics.load(this.availFlagsIdx, 0) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
    const newIdx = this.usedIdx;
    const oldIdx = this.signalledUsedIdx;
    const wasValid = this.signalledValid;
    this.signalledUsedIdx = newIdx;
    this.signalledValid = true;
    if (!wasValid) return true;
    const usedEvent = this.usedEvent.readUInt16LE(0);
    // vring_need_event(): signal if used_event lies in (old, new].
    return ((newIdx - usedEvent - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
  }

  /**
   * Tells the driver from which available index on it must kick us (EVENT_IDX),
   * and returns whether more chains arrived meanwhile (then keep processing).
   */
  armKick(): boolean {
    if (!this.eventIdx) return this.pending() > 0;
    Atomics.store(this.availEvent, 0, this.lastAvailIdx);
    return this.pending() > 0;
  }
}
