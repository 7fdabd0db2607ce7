import { MAP_ANONYMOUS, MAP_FIXED, MAP_NORESERVE, MAP_PRIVATE, MAP_SHARED, PROT_NONE, PROT_READ, PROT_WRITE, addon } from '../sys';
import { Message, ShmemMap, decode } from '../vhost-user/messages';
import { BackendRequest, SHMEM_MAP_FLAG_WRITABLE } from '../vhost-user/protocol';

const PAGE = 4096;
/** The virtio-fs DAX cache is shared memory region 0 (virtio 1.2, 5.11.5). */
export const VIRTIO_FS_SHMCAP_ID_CACHE = 0;

interface WindowMapping {
  offset: number;
  len: number;
  writable: boolean;
}

/**
 * The VMM's half of the DAX window: a reserved range of our address space in
 * which the back-end's SHMEM_MAP requests map file ranges (MAP_FIXED) and
 * SHMEM_UNMAP puts back an inaccessible reservation. Reads and writes through
 * `view()` then touch the host file's page cache directly.
 */
export class DaxWindow {
  readonly base: bigint;
  private readonly mappings = new Map<number, WindowMapping>();
  private readonly chunks: Buffer[] = [];
  private static readonly CHUNK = 1 << 30;

  constructor(readonly size: number) {
    if (size <= 0 || size % PAGE !== 0) throw new Error(`DAX window size ${size} is not a multiple of ${PAGE}`);
    this.base = addon.mmap(0n, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    for (let off = 0; off < size; off += DaxWindow.CHUNK) {
      this.chunks.push(Buffer.from(addon.view(this.base + BigInt(off), Math.min(DaxWindow.CHUNK, size - off))));
    }
  }

  /** Number of live mappings. */
  get mappingCount(): number {
    return this.mappings.size;
  }

  /** The mapping that covers [offset, offset+len) entirely, if any. */
  mappingAt(offset: number, len: number): WindowMapping | undefined {
    for (const m of this.mappings.values()) {
      if (offset >= m.offset && offset + len <= m.offset + m.len) return m;
    }
    return undefined;
  }

  /**
   * A view of window [offset, offset+len). Only call it for a range a live
   * mapping covers: touching the reservation itself faults.
   */
  view(offset: number, len: number): Buffer {
    if (!this.mappingAt(offset, len)) throw new Error(`window range 0x${offset.toString(16)}+${len} is not mapped`);
    const i = Math.floor(offset / DaxWindow.CHUNK);
    const start = offset - i * DaxWindow.CHUNK;
    if (start + len > this.chunks[i].length) throw new Error('window view crosses a 1 GiB chunk');
    return this.chunks[i].subarray(start, start + len);
  }

  /**
   * Serves one back-end channel request; returns the status to reply
   * (0 = success). Takes the fd of a SHMEM_MAP out of `msg.fds` only to map it
   * (the caller closes it afterwards: the mapping keeps the file referenced).
   */
  handleBackendRequest(msg: Message): bigint {
    if (msg.request !== BackendRequest.SHMEM_MAP && msg.request !== BackendRequest.SHMEM_UNMAP) return 1n;
    const body = decode(ShmemMap, msg.payload);
    if (body.shmid !== VIRTIO_FS_SHMCAP_ID_CACHE) return 1n;
    const offset = Number(body.shmOffset);
    const len = Number(body.len);
    if (len <= 0 || offset % PAGE !== 0 || len % PAGE !== 0 || offset + len > this.size || !Number.isSafeInteger(offset + len)) return 1n;

    if (msg.request === BackendRequest.SHMEM_MAP) {
      if (msg.fds.length !== 1 || body.fdOffset % BigInt(PAGE) !== 0n) return 1n;
      const writable = (body.flags & SHMEM_MAP_FLAG_WRITABLE) !== 0n;
      for (const m of this.mappings.values()) {
        if (offset < m.offset + m.len && m.offset < offset + len) return 1n; // the back-end must unmap first
      }
      addon.mmap(
        this.base + BigInt(offset),
        len,
        PROT_READ | (writable ? PROT_WRITE : 0),
        MAP_SHARED | MAP_FIXED,
        msg.fds[0],
        body.fdOffset,
      );
      this.mappings.set(offset, { offset, len, writable });
      return 0n;
    }
    // UNMAP must name exactly one earlier mapping.
    const m = this.mappings.get(offset);
    if (!m || m.len !== len) return 1n;
    this.reserve(offset, len);
    this.mappings.delete(offset);
    return 0n;
  }

  private reserve(offset: number, len: number): void {
    addon.mmap(this.base + BigInt(offset), len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
  }

  /** Drops every mapping (device reset, back-end gone). */
  clear(): void {
    for (const m of this.mappings.values()) this.reserve(m.offset, m.len);
    this.mappings.clear();
  }

  close(): void {
    this.mappings.clear();
    this.chunks.length = 0;
    addon.munmap(this.base, this.size);
  }
}
