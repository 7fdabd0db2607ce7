import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { DaxChunkManager, DaxFaultError } from '../../src/guest/dax-chunks';
import { errnoCode } from '../../src/sys';
import { daxPair } from '../helpers/dax-pair';

const MiB = 1024 * 1024;
const cleanups: (() => void)[] = [];
afterEach(() =>
  cleanups
    .splice(0)
    .reverse()
    .forEach((f) => f()),
);

/** A chunk manager over a 3-chunk window whose requests go straight to a DaxMapper. */
function setup(fileSize = 10 * MiB) {
  const pair = daxPair(6 * MiB);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dax-chunks-'));
  const file = path.join(dir, 'data');
  const content = Buffer.alloc(fileSize);
  for (let i = 0; i + 4 <= fileSize; i += 4) content.writeUInt32LE(i, i);
  fs.writeFileSync(file, content);
  const fd = fs.openSync(file, 'r+');
  const calls: string[] = [];
  const manager = new DaxChunkManager(pair.window, {
    async setupMapping(nodeid, foffset, len, moffset, writable) {
      calls.push(`map ${foffset / MiB}->${moffset / MiB}${writable ? ' rw' : ''}`);
      const err = await pair.mapper.setup({
        nodeid: BigInt(nodeid),
        fd,
        foffset: BigInt(foffset),
        len: BigInt(len),
        moffset: BigInt(moffset),
        writable,
      });
      if (err) throw new Error(errnoCode(err));
    },
    async removeMapping(ranges) {
      for (const r of ranges) {
        calls.push(`unmap ${r.moffset / MiB}`);
        const err = await pair.mapper.remove(BigInt(r.moffset), BigInt(r.len));
        if (err) throw new Error(errnoCode(err));
      }
    },
  });
  cleanups.push(() => {
    pair.close();
    fs.closeSync(fd);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { manager, content, file, fd, calls, window: pair.window };
}

describe('DaxChunkManager', () => {
  it('reads across chunk boundaries through the window', async () => {
    const { manager, content } = setup();
    const dst = Buffer.alloc(3 * MiB);
    expect(await manager.read(2, MiB, dst, content.length)).toBe(3 * MiB);
    expect(dst.equals(content.subarray(MiB, 4 * MiB))).toBe(true);
    expect(manager.mappedChunks).toBe(2);
    // Same chunks again: no new mappings.
    await manager.read(2, MiB + 5, Buffer.alloc(100), content.length);
    expect(manager.stats.maps).toBe(2);
  });

  it('never reads past the end of the file', async () => {
    const { manager } = setup(MiB + 10);
    const dst = Buffer.alloc(64);
    expect(await manager.read(2, MiB, dst, MiB + 10)).toBe(10);
  });

  it('reuses freed chunks last-in first-out and reclaims the least recently used', async () => {
    const { manager, calls, content } = setup();
    const size = content.length;
    const one = Buffer.alloc(4);
    await manager.read(2, 0, one, size); // file chunk 0 -> window chunk 0
    await manager.read(2, 2 * MiB, one, size); // 1 -> 2 MiB
    await manager.read(2, 4 * MiB, one, size); // 2 -> 4 MiB
    await manager.read(2, 0, one, size); // touch chunk 0: chunk 1 is now least recently used
    await manager.read(2, 6 * MiB, one, size); // window full: reclaims file chunk 1 at 2 MiB
    expect(one.readUInt32LE(0)).toBe(6 * MiB);
    expect(calls).toEqual(['map 0->0', 'map 2->2', 'map 4->4', 'unmap 2', 'map 6->2']);
    expect(manager.stats.reclaims).toBe(1);
    await manager.dropInode(2);
    expect(manager.mappedChunks).toBe(0);
    await manager.read(3, 0, one, size);
    // dropInode frees in LRU order (4, 0, 2 MiB): the last one freed is the first reused.
    expect(calls.at(-1)).toMatch(/->2$/);
  });

  it('writes through the window and remaps read-only chunks writable', async () => {
    const { manager, file, content, calls } = setup();
    await manager.read(2, 0, Buffer.alloc(8), content.length);
    expect(await manager.write(2, 100, Buffer.from('through the window'), content.length)).toBe(18);
    expect(calls).toEqual(['map 0->0', 'map 0->0 rw']);
    expect(fs.readFileSync(file).subarray(100, 118).toString()).toBe('through the window');
    await expect(manager.write(2, content.length - 2, Buffer.alloc(4), content.length)).rejects.toThrow(RangeError);
  });

  it('reports a file truncated on the host as a fault instead of crashing', async () => {
    const { manager, fd, content } = setup();
    await manager.read(2, 0, Buffer.alloc(8), content.length);
    fs.ftruncateSync(fd, 4096);
    await expect(manager.read(2, 0, Buffer.alloc(MiB), content.length)).rejects.toThrow(DaxFaultError);
    // Within the new size, reads still work.
    expect(await manager.read(2, 0, Buffer.alloc(4096), 4096)).toBe(4096);
  });
});
