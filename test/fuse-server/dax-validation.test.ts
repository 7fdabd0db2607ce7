/**
 * SETUPMAPPING through a named handle and REMOVEMAPPING bounds: what the guest
 * may not map, and what it may not unmap, with nothing sent to the front-end.
 */
import * as fs from 'node:fs';
import { afterEach, describe, expect, it, vi } from 'vitest';
import * as P from '../../src/fuse-server/protocol';
import { Opcode } from '../../src/fuse-server/protocol';
import { Errno } from '../../src/sys';
import { BackendRequest } from '../../src/vhost-user/protocol';
import { daxPair } from '../helpers/dax-pair';
import { encode, openFdCount, replyError } from './fuse-driver';
import { Harness, O_RDONLY, O_RDWR, O_WRONLY } from './harness';

const MiB = 1024 * 1024;
const WINDOW = 8 * MiB;
const NO_FH = 0xffff_ffff_ffff_ffffn;
const READ = BigInt(P.FUSE_SETUPMAPPING_FLAG_READ);
const WRITE = BigInt(P.FUSE_SETUPMAPPING_FLAG_WRITE);
const RANGE = BigInt(2 * MiB);
/** FUSE_REMOVEMAPPING_MAX_ENTRY: Linux sends at most a page of fuse_removemapping_one. */
const MAX_ENTRIES = 4096 / 16;

const cleanups: (() => void)[] = [];
afterEach(() =>
  cleanups
    .splice(0)
    .reverse()
    .forEach((f) => f()),
);

/** A session with a DAX window; `sent` lists the SHMEM_MAP/UNMAP requests that reached the front-end. */
async function daxHarness() {
  const pair = daxPair(WINDOW);
  const { window, mapper } = pair;
  const handle = window.handleBackendRequest.bind(window);
  const sent: number[] = [];
  vi.spyOn(window, 'handleBackendRequest').mockImplementation((msg) => {
    sent.push(msg.request);
    return handle(msg);
  });
  const h = Harness.create({ dax: { mapper, policy: 'always' } }, (d) => {
    fs.writeFileSync(`${d}/big`, Buffer.alloc(4 * MiB, 7));
    fs.writeFileSync(`${d}/other`, Buffer.alloc(4 * MiB, 8));
  });
  cleanups.push(() => {
    h.close();
    pair.close();
  });
  await h.start();
  const maps = () => sent.filter((r) => r === BackendRequest.SHMEM_MAP).length;
  const unmaps = () => sent.filter((r) => r === BackendRequest.SHMEM_UNMAP).length;
  return { h, window, mapper, maps, unmaps };
}

/** SETUPMAPPING of RANGE bytes from the file's start: the error it answers. */
function setup(h: Harness, nodeid: number, fh: bigint, flags: bigint, moffset = 0n): Promise<number> {
  return replyError(h.client.setupMapping(nodeid, fh, { foffset: 0n, len: RANGE, flags, moffset }));
}

/** REMOVEMAPPING of `ranges` (with `count` in its header, which may lie): the error it answers. */
async function remove(h: Harness, ranges: [bigint, bigint][], count = ranges.length): Promise<number> {
  if (count === ranges.length)
    return replyError(
      h.client.removeMapping(
        1,
        ranges.map(([moffset, len]) => ({ moffset, len })),
      ),
    );
  const head = encode(P.fuse_removemapping_in, { count });
  const entries = ranges.map(([moffset, len]) => encode(P.fuse_removemapping_one, { moffset, len }));
  return (await h.raw(Opcode.FUSE_REMOVEMAPPING, 1, [head, ...entries], { replySize: 0 })).error;
}

describe('SETUPMAPPING with a file handle', () => {
  it('refuses an fh that names no open file of the inode (EBADF): nothing is mapped', async () => {
    const { h, window, maps } = await daxHarness();
    const big = (await h.client.lookup(1, 'big')).nodeid;
    const other = (await h.client.lookup(1, 'other')).nodeid;
    const onOther = (await h.client.open(other, O_RDWR)).fh;
    const dir = (await h.client.opendir(1, O_RDONLY)).fh;
    const fds = openFdCount();
    for (const fh of [12345n, 0n, BigInt(onOther), BigInt(dir), 1n << 60n]) {
      expect(await setup(h, big, fh, READ), `fh ${fh}`).toBe(-Errno.EBADF);
      expect(await setup(h, big, fh, READ | WRITE), `fh ${fh}`).toBe(-Errno.EBADF);
    }
    expect(maps()).toBe(0);
    expect(window.mappingCount).toBe(0);
    expect(openFdCount()).toBe(fds);
  });

  it('refuses a writable mapping through an O_RDONLY handle and any mapping through an O_WRONLY one (EACCES)', async () => {
    const { h, window, mapper, maps } = await daxHarness();
    const big = (await h.client.lookup(1, 'big')).nodeid;
    const ro = (await h.client.open(big, O_RDONLY)).fh;
    const wo = (await h.client.open(big, O_WRONLY)).fh;
    const fds = openFdCount();
    expect(await setup(h, big, BigInt(ro), READ | WRITE)).toBe(-Errno.EACCES);
    expect(await setup(h, big, BigInt(wo), READ)).toBe(-Errno.EACCES);
    expect(await setup(h, big, BigInt(wo), READ | WRITE)).toBe(-Errno.EACCES);
    expect(maps()).toBe(0);
    expect(window.mappingCount).toBe(0);
    expect(mapper.list()).toEqual([]);
    expect(openFdCount()).toBe(fds);
  });

  it('maps through a handle opened for what the mapping does, and by nodeid when fh is -1', async () => {
    const { h, window, mapper, maps } = await daxHarness();
    const big = (await h.client.lookup(1, 'big')).nodeid;
    const ro = (await h.client.open(big, O_RDONLY)).fh;
    const rw = (await h.client.open(big, O_RDWR)).fh;
    expect(await setup(h, big, BigInt(ro), READ, 0n)).toBe(0);
    expect(await setup(h, big, BigInt(rw), READ | WRITE, RANGE)).toBe(0);
    expect(await setup(h, big, NO_FH, READ, 2n * RANGE)).toBe(0);
    expect(maps()).toBe(3);
    expect(mapper.list().map((m) => m.writable)).toEqual([false, true, false]);
    window.view(Number(RANGE), 5).write('dax!!');
    expect(fs.readFileSync(h.p('big')).subarray(0, 5).toString()).toBe('dax!!');
    // The mapping holds its own descriptor: releasing the handle leaves it mapped.
    await h.client.release(big, rw);
    expect(window.mappingCount).toBe(3);
  });
});

describe('REMOVEMAPPING bounds', () => {
  async function mapped() {
    const s = await daxHarness();
    const big = (await s.h.client.lookup(1, 'big')).nodeid;
    expect(await setup(s.h, big, NO_FH, READ, 0n)).toBe(0);
    return s;
  }

  it('refuses more entries than Linux ever sends (a page of them), even when all are present', async () => {
    const { h, window, unmaps } = await mapped();
    const ranges = Array.from({ length: MAX_ENTRIES + 1 }, (): [bigint, bigint] => [0n, RANGE]);
    expect(await remove(h, ranges)).toBe(-Errno.EINVAL);
    expect(unmaps()).toBe(0);
    expect(window.mappingCount).toBe(1);
    // A count of 2^32 - 1 with one entry present.
    expect(await remove(h, [[0n, RANGE]], 0xffff_ffff)).toBe(-Errno.EINVAL);
    expect(window.mappingCount).toBe(1);
    // A full page of entries is fine.
    expect(await remove(h, ranges.slice(1))).toBe(0);
    expect(window.mappingCount).toBe(0);
    expect(P.FUSE_REMOVEMAPPING_MAX_ENTRY).toBe(MAX_ENTRIES);
  });

  it('refuses misaligned or out-of-window entries before unmapping anything', async () => {
    const { h, window, unmaps } = await mapped();
    const bad: [bigint, bigint][] = [
      [100n, RANGE], // misaligned offset
      [0n, 100n], // misaligned length
      [BigInt(WINDOW) - 4096n, 8192n], // past the window's end
      [(1n << 64n) - 4096n, 8192n], // wraps
      [0n, 0n], // empty
    ];
    for (const range of bad) {
      // The good range first: it must not be unmapped either.
      expect(await remove(h, [[0n, RANGE], range]), `${range}`).toBe(-Errno.EINVAL);
    }
    expect(unmaps()).toBe(0);
    expect(window.mappingCount).toBe(1);
  });
});
