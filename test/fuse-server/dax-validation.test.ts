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
import type { Reply } from './fuse-driver';
import { encode, openFdCount } from './fuse-driver';
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
function daxHarness() {
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
  h.init();
  const maps = () => sent.filter((r) => r === BackendRequest.SHMEM_MAP).length;
  const unmaps = () => sent.filter((r) => r === BackendRequest.SHMEM_UNMAP).length;
  return { h, window, mapper, maps, unmaps };
}

function setup(h: Harness, nodeid: number, fh: bigint, flags: bigint, moffset = 0n): Promise<Reply> {
  const arg = encode(P.fuse_setupmapping_in, { fh, foffset: 0n, len: RANGE, flags, moffset });
  return h.fuse.requestAsync(Opcode.FUSE_SETUPMAPPING, nodeid, [arg]);
}

function remove(h: Harness, ranges: [bigint, bigint][], count = ranges.length): Promise<Reply> {
  const head = encode(P.fuse_removemapping_in, { count });
  return h.fuse.requestAsync(Opcode.FUSE_REMOVEMAPPING, 1, [
    head,
    ...ranges.map(([moffset, len]) => encode(P.fuse_removemapping_one, { moffset, len })),
  ]);
}

describe('SETUPMAPPING with a file handle', () => {
  it('refuses an fh that names no open file of the inode (EBADF): nothing is mapped', async () => {
    const { h, window, maps } = daxHarness();
    const big = h.lookup(1, 'big').nodeid;
    const other = h.lookup(1, 'other').nodeid;
    const onOther = h.open(other, O_RDWR);
    const dir = P.fuse_open_out.decode(
      h.fuse.ok(Opcode.FUSE_OPENDIR, 1, [encode(P.fuse_open_in, { flags: O_RDONLY, open_flags: 0 })]),
      0,
    ).fh;
    const fds = openFdCount();
    for (const fh of [12345n, 0n, BigInt(onOther), BigInt(dir), 1n << 60n]) {
      expect((await setup(h, big, fh, READ)).error, `fh ${fh}`).toBe(-Errno.EBADF);
      expect((await setup(h, big, fh, READ | WRITE)).error, `fh ${fh}`).toBe(-Errno.EBADF);
    }
    expect(maps()).toBe(0);
    expect(window.mappingCount).toBe(0);
    expect(openFdCount()).toBe(fds);
  });

  it('refuses a writable mapping through an O_RDONLY handle and any mapping through an O_WRONLY one (EACCES)', async () => {
    const { h, window, mapper, maps } = daxHarness();
    const big = h.lookup(1, 'big').nodeid;
    const ro = h.open(big, O_RDONLY);
    const wo = h.open(big, O_WRONLY);
    const fds = openFdCount();
    expect((await setup(h, big, BigInt(ro), READ | WRITE)).error).toBe(-Errno.EACCES);
    expect((await setup(h, big, BigInt(wo), READ)).error).toBe(-Errno.EACCES);
    expect((await setup(h, big, BigInt(wo), READ | WRITE)).error).toBe(-Errno.EACCES);
    expect(maps()).toBe(0);
    expect(window.mappingCount).toBe(0);
    expect(mapper.list()).toEqual([]);
    expect(openFdCount()).toBe(fds);
  });

  it('maps through a handle opened for what the mapping does, and by nodeid when fh is -1', async () => {
    const { h, window, mapper, maps } = daxHarness();
    const big = h.lookup(1, 'big').nodeid;
    const ro = h.open(big, O_RDONLY);
    const rw = h.open(big, O_RDWR);
    expect((await setup(h, big, BigInt(ro), READ, 0n)).error).toBe(0);
    expect((await setup(h, big, BigInt(rw), READ | WRITE, RANGE)).error).toBe(0);
    expect((await setup(h, big, NO_FH, READ, 2n * RANGE)).error).toBe(0);
    expect(maps()).toBe(3);
    expect(mapper.list().map((m) => m.writable)).toEqual([false, true, false]);
    window.view(Number(RANGE), 5).write('dax!!');
    expect(fs.readFileSync(h.p('big')).subarray(0, 5).toString()).toBe('dax!!');
    // The mapping holds its own descriptor: releasing the handle leaves it mapped.
    h.release(big, rw);
    expect(window.mappingCount).toBe(3);
  });
});

describe('REMOVEMAPPING bounds', () => {
  async function mapped() {
    const s = daxHarness();
    const big = s.h.lookup(1, 'big').nodeid;
    expect((await setup(s.h, big, NO_FH, READ, 0n)).error).toBe(0);
    return s;
  }

  it('refuses more entries than Linux ever sends (a page of them), even when all are present', async () => {
    const { h, window, unmaps } = await mapped();
    const ranges = Array.from({ length: MAX_ENTRIES + 1 }, (): [bigint, bigint] => [0n, RANGE]);
    expect((await remove(h, ranges)).error).toBe(-Errno.EINVAL);
    expect(unmaps()).toBe(0);
    expect(window.mappingCount).toBe(1);
    // A count of 2^32 - 1 with one entry present.
    expect((await remove(h, [[0n, RANGE]], 0xffff_ffff)).error).toBe(-Errno.EINVAL);
    expect(window.mappingCount).toBe(1);
    // A full page of entries is fine.
    expect((await remove(h, ranges.slice(1))).error).toBe(0);
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
      expect((await remove(h, [[0n, RANGE], range])).error, `${range}`).toBe(-Errno.EINVAL);
    }
    expect(unmaps()).toBe(0);
    expect(window.mappingCount).toBe(1);
  });
});
