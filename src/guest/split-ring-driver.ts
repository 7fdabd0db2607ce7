import {
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_USED_F_NO_NOTIFY,
} from '../vhost-user/virtqueue';

/** A guest-physical buffer: where it lives and how long it is. */
export interface GuestBuffer {
  addr: number;
  len: number;
}

export interface RawDescriptor {
  index: number;
  addr: number;
  len: number;
  flags: number;
  next: number;
}

/** Byte sizes of a split ring's three parts for `size` entries (virtio 1.x, 2.7). */
export function splitRingSizes(size: number): { desc: number; avail: number; used: number } {
  return { desc: 16 * size, avail: 6 + 2 * size, used: 6 + 8 * size };
}

/**
 * The driver (guest) side of a split virtqueue, over views of guest memory:
 * adds descriptor chains (direct or through an indirect table), publishes
 * them, collects used elements and decides whether the device needs a kick.
 */
export class SplitRingDriver {
  private readonly freeHeads: number[] = [];
  private readonly chainLength = new Map<number, number>();
  /** Next avail index we publish, next used index we read (free-running, 16 bits). */
  private availIdx = 0;
  private lastUsedIdx = 0;
  private kickedAt = 0;

  /**
   * `desc`, `avail`, `used` are views of the rings in guest memory; `eventIdx`
   * says whether VIRTIO_RING_F_EVENT_IDX was negotiated.
   */
  constructor(
    readonly size: number,
    private readonly desc: Buffer,
    private readonly avail: Buffer,
    private readonly used: Buffer,
    private readonly eventIdx: boolean,
  ) {
    for (let i = size - 1; i >= 0; i--) this.freeHeads.push(i);
    // Free descriptors are linked through `next` when a chain is built, not here.
  }

  get freeCount(): number {
    return this.freeHeads.length;
  }

  /** Starts at a given index (after a reconnect): both rings continue from it. */
  setIndices(availIdx: number, usedIdx: number): void {
    this.availIdx = availIdx & 0xffff;
    this.lastUsedIdx = usedIdx & 0xffff;
    this.kickedAt = this.availIdx;
  }

  /**
   * Adds a chain of device-readable then device-writable buffers and returns
   * its head, or null if the ring has too few free descriptors. With
   * `indirectTable` (guest address and a view of at least 16*n bytes) the chain
   * uses one ring descriptor pointing at that table.
   */
  add(readable: GuestBuffer[], writable: GuestBuffer[], indirectTable?: { addr: number; view: Buffer }): number | null {
    const parts = [...readable.map((b) => [b, 0] as const), ...writable.map((b) => [b, VIRTQ_DESC_F_WRITE] as const)];
    if (parts.length === 0) throw new Error('a chain needs at least one buffer');
    if (indirectTable) {
      if (this.freeHeads.length < 1) return null;
      const head = this.freeHeads.pop()!;
      parts.forEach(([b, flags], i) => {
        const last = i === parts.length - 1;
        writeDesc(indirectTable.view, i, b.addr, b.len, flags | (last ? 0 : VIRTQ_DESC_F_NEXT), last ? 0 : i + 1);
      });
      writeDesc(this.desc, head, indirectTable.addr, parts.length * 16, VIRTQ_DESC_F_INDIRECT, 0);
      this.chainLength.set(head, 1);
      this.publish(head);
      return head;
    }
    if (this.freeHeads.length < parts.length) return null;
    const ids = parts.map(() => this.freeHeads.pop()!);
    parts.forEach(([b, flags], i) => {
      const last = i === parts.length - 1;
      writeDesc(this.desc, ids[i], b.addr, b.len, flags | (last ? 0 : VIRTQ_DESC_F_NEXT), last ? 0 : ids[i + 1]);
    });
    this.chainLength.set(ids[0], ids.length);
    this.publish(ids[0]);
    return ids[0];
  }

  /**
   * Writes raw descriptors and publishes `head` as-is: for tests of malformed
   * chains. The listed descriptors are taken out of the free list.
   */
  addRaw(descriptors: RawDescriptor[], head: number): void {
    for (const d of descriptors) {
      const i = this.freeHeads.indexOf(d.index);
      if (i >= 0) this.freeHeads.splice(i, 1);
      writeDesc(this.desc, d.index, d.addr, d.len, d.flags, d.next);
    }
    this.chainLength.set(head, descriptors.length);
    this.publish(head);
  }

  private publish(head: number): void {
    this.avail.writeUInt16LE(head, 4 + 2 * (this.availIdx % this.size));
    this.availIdx = (this.availIdx + 1) & 0xffff;
    Atomics.store(new Uint16Array(this.avail.buffer, this.avail.byteOffset, 2), 1, this.availIdx);
  }

  /** Whether the device asked to be kicked for what was published since the last kick. */
  needsKick(): boolean {
    const old = this.kickedAt;
    const now = this.availIdx;
    this.kickedAt = now;
    if (!this.eventIdx) return (this.used.readUInt16LE(0) & VIRTQ_USED_F_NO_NOTIFY) === 0;
    const availEvent = this.used.readUInt16LE(4 + 8 * this.size);
    return ((now - availEvent - 1) & 0xffff) < ((now - old) & 0xffff);
  }

  /** Collects one used element, freeing its descriptors; null when none is waiting. */
  popUsed(): { head: number; len: number } | null {
    const usedIdx = Atomics.load(new Uint16Array(this.used.buffer, this.used.byteOffset, 2), 1);
    if (usedIdx === this.lastUsedIdx) return null;
    const slot = 4 + 8 * (this.lastUsedIdx % this.size);
    const head = this.used.readUInt32LE(slot);
    const len = this.used.readUInt32LE(slot + 4);
    this.lastUsedIdx = (this.lastUsedIdx + 1) & 0xffff;
    this.release(head);
    return { head, len };
  }

  /** Asks for an interrupt after the next used element (EVENT_IDX) or for every one. */
  armInterrupt(): void {
    if (this.eventIdx) this.avail.writeUInt16LE(this.lastUsedIdx, 4 + 2 * this.size);
    else this.avail.writeUInt16LE(this.avail.readUInt16LE(0) & ~VIRTQ_AVAIL_F_NO_INTERRUPT, 0);
  }

  /** Asks the device for no interrupts (without EVENT_IDX). */
  suppressInterrupts(): void {
    if (!this.eventIdx) this.avail.writeUInt16LE(this.avail.readUInt16LE(0) | VIRTQ_AVAIL_F_NO_INTERRUPT, 0);
  }

  private release(head: number): void {
    let n = this.chainLength.get(head);
    if (n === undefined) throw new Error(`device returned head ${head} that is not in flight`);
    this.chainLength.delete(head);
    let id = head;
    while (n-- > 0) {
      if (id < this.size && !this.freeHeads.includes(id)) this.freeHeads.push(id);
      id = this.desc.readUInt16LE(16 * id + 14);
    }
  }

  get availIndex(): number {
    return this.availIdx;
  }

  get usedIndex(): number {
    return this.lastUsedIdx;
  }
}

function writeDesc(table: Buffer, index: number, addr: number, len: number, flags: number, next: number): void {
  const at = 16 * index;
  table.writeUInt32LE(addr % 0x100000000, at);
  table.writeUInt32LE(Math.floor(addr / 0x100000000), at + 4);
  table.writeUInt32LE(len, at + 8);
  table.writeUInt16LE(flags, at + 12);
  table.writeUInt16LE(next, at + 14);
}
