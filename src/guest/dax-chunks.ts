import { addon } from '../sys';
import { DaxWindow } from './dax-window';

/** What the chunk manager needs from the FUSE driver: the two DAX requests. */
export interface DaxMappingOps {
  setupMapping(nodeid: number, foffset: number, len: number, moffset: number, writable: boolean): Promise<void>;
  removeMapping(ranges: { moffset: number; len: number }[]): Promise<void>;
}

/** Linux and OSv map the DAX window in 2 MiB chunks at 2 MiB-aligned file offsets. */
export const DAX_CHUNK_SIZE = 2 * 1024 * 1024;

interface Chunk {
  key: string;
  nodeid: number;
  fileChunk: number;
  windowOffset: number;
  writable: boolean;
  /** The chunk's bytes in the window, made once when mapped (not per copy). */
  view: Buffer;
}

export class DaxFaultError extends Error {
  override name = 'DaxFaultError';
}

/**
 * Manages the DAX window as the OSv driver does: the window is cut into fixed
 * chunks, free chunks wait on a LIFO stack (the most recently freed, still
 * warm in the TLB and cache, is reused first), and when none is free the
 * least-recently-used mapping is removed and its chunk reused. Reads and writes
 * copy through the window with SIGBUS-guarded copies, so a file truncated
 * behind our back is reported instead of killing the process.
 */
export class DaxChunkManager {
  private readonly free: number[] = [];
  /** Mapped chunks by "nodeid:fileChunk", in least- to most-recently-used order. */
  private readonly mapped = new Map<string, Chunk>();
  private readonly pending = new Map<string, Promise<Chunk>>();
  stats = { hits: 0, maps: 0, reclaims: 0 };

  constructor(
    private readonly window: DaxWindow,
    private readonly ops: DaxMappingOps,
    readonly chunkSize = DAX_CHUNK_SIZE,
  ) {
    const count = Math.floor(window.size / chunkSize);
    if (count === 0) throw new Error(`DAX window of ${window.size} bytes holds no ${chunkSize}-byte chunk`);
    for (let i = count - 1; i >= 0; i--) this.free.push(i * chunkSize);
  }

  get mappedChunks(): number {
    return this.mapped.size;
  }

  /**
   * Reads up to `dst.length` bytes at `offset`, never past `fileSize` (pages
   * past the end of a file fault). Resolves with the bytes read.
   */
  async read(nodeid: number, offset: number, dst: Buffer, fileSize: number): Promise<number> {
    const end = Math.min(offset + dst.length, fileSize);
    let done = 0;
    while (offset + done < end) {
      const pos = offset + done;
      const fileChunk = Math.floor(pos / this.chunkSize);
      const chunk = this.mappedChunk(nodeid, fileChunk, false) ?? (await this.chunkFor(nodeid, fileChunk, false));
      const within = pos % this.chunkSize;
      const n = Math.min(end - pos, this.chunkSize - within);
      if (addon.copyGuarded(dst.subarray(done, done + n), chunk.view.subarray(within, within + n)) < 0) {
        throw new DaxFaultError(`DAX read of nodeid ${nodeid} at ${pos} faulted (file shrunk on the host?)`);
      }
      done += n;
    }
    return done;
  }

  /**
   * Writes `src` at `offset` through the window. The range must lie within
   * the file (a write that extends a file goes through FUSE_WRITE, as in Linux).
   */
  async write(nodeid: number, offset: number, src: Buffer, fileSize: number): Promise<number> {
    if (offset + src.length > fileSize) throw new RangeError('DAX writes cannot extend a file');
    let done = 0;
    while (done < src.length) {
      const pos = offset + done;
      const fileChunk = Math.floor(pos / this.chunkSize);
      const chunk = this.mappedChunk(nodeid, fileChunk, true) ?? (await this.chunkFor(nodeid, fileChunk, true));
      const within = pos % this.chunkSize;
      const n = Math.min(src.length - done, this.chunkSize - within);
      if (addon.copyGuarded(chunk.view.subarray(within, within + n), src.subarray(done, done + n)) < 0) {
        throw new DaxFaultError(`DAX write of nodeid ${nodeid} at ${pos} faulted (file shrunk on the host?)`);
      }
      done += n;
    }
    return done;
  }

  /** Removes every mapping of an inode (before FORGET, or when the file is truncated). */
  async dropInode(nodeid: number): Promise<void> {
    const victims = [...this.mapped.values()].filter((c) => c.nodeid === nodeid);
    if (victims.length === 0) return;
    for (const c of victims) this.mapped.delete(c.key);
    await this.ops.removeMapping(victims.map((c) => ({ moffset: c.windowOffset, len: this.chunkSize })));
    for (const c of victims) this.free.push(c.windowOffset);
  }

  /** The chunk if it is mapped with the access needed (marking it most recently used), without waiting. */
  private mappedChunk(nodeid: number, fileChunk: number, writable: boolean): Chunk | null {
    const key = `${nodeid}:${fileChunk}`;
    const hit = this.mapped.get(key);
    if (!hit || (writable && !hit.writable)) return null;
    this.mapped.delete(key);
    this.mapped.set(key, hit);
    this.stats.hits++;
    return hit;
  }

  private async chunkFor(nodeid: number, fileChunk: number, writable: boolean): Promise<Chunk> {
    const key = `${nodeid}:${fileChunk}`;
    const mapped = this.mappedChunk(nodeid, fileChunk, writable);
    if (mapped) return mapped;
    const hit = this.mapped.get(key);
    const inFlight = this.pending.get(key);
    if (inFlight) {
      const c = await inFlight;
      return c.writable || !writable ? c : this.chunkFor(nodeid, fileChunk, writable);
    }
    const job = this.map(key, nodeid, fileChunk, writable, hit);
    this.pending.set(key, job);
    try {
      return await job;
    } finally {
      this.pending.delete(key);
    }
  }

  private async map(key: string, nodeid: number, fileChunk: number, writable: boolean, upgrade?: Chunk): Promise<Chunk> {
    // A read-only chunk needing write access is mapped again in place (the daemon replaces it).
    const windowOffset = upgrade ? upgrade.windowOffset : await this.takeFreeChunk();
    if (upgrade) this.mapped.delete(key);
    try {
      await this.ops.setupMapping(nodeid, fileChunk * this.chunkSize, this.chunkSize, windowOffset, writable);
    } catch (err) {
      this.free.push(windowOffset);
      throw err;
    }
    const chunk: Chunk = { key, nodeid, fileChunk, windowOffset, writable, view: this.window.view(windowOffset, this.chunkSize) };
    this.mapped.set(key, chunk);
    this.stats.maps++;
    return chunk;
  }

  private async takeFreeChunk(): Promise<number> {
    const free = this.free.pop();
    if (free !== undefined) return free;
    // Reclaim the least-recently-used mapping.
    const victim = this.mapped.values().next().value as Chunk | undefined;
    if (!victim) throw new Error('DAX window exhausted by mappings in progress');
    this.mapped.delete(victim.key);
    this.stats.reclaims++;
    await this.ops.removeMapping([{ moffset: victim.windowOffset, len: this.chunkSize }]);
    return victim.windowOffset;
  }
}
