import * as fs from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { MAP_ALIGNMENT_LOG2 } from '../../src/dax-mapper/dax-mapper';
import { DEFAULT_DAX_POLICY, DaxSupport, type DaxPolicy } from '../../src/fuse-server/passthrough-dax';
import { O_ACCMODE, O_RDONLY, O_RDWR } from '../../src/sys/fs';
import { SysError } from '../../src/sys/errno';
import * as P from '../../src/fuse-server/protocol';
import { Opcode } from '../../src/fuse-server/protocol';
import { Errno } from '../../src/sys';
import { daxPair } from '../helpers/dax-pair';
import type { CallOptions } from '../../src/guest/fuse-driver';
import { encode, openFdCount, replyError } from './fuse-driver';
import { Harness, LINUX_FLAGS, LINUX_FLAGS2 } from './harness';

const MiB = 1024 * 1024;
const WINDOW = 8 * MiB;
const NO_FH = 0xffff_ffff_ffff_ffffn;
const READ = BigInt(P.FUSE_SETUPMAPPING_FLAG_READ);
const WRITE = BigInt(P.FUSE_SETUPMAPPING_FLAG_WRITE);

const cleanups: (() => void)[] = [];
afterEach(() =>
  cleanups
    .splice(0)
    .reverse()
    .forEach((f) => f()),
);

/** A session with a DAX window: the daemon's mapper, joined to the guest's window as the front-end would be. */
function daxHarness(policy: DaxPolicy = 'always', options: ConstructorParameters<typeof Harness>[1] = {}) {
  const pair = daxPair(WINDOW);
  const { window, mapper } = pair;
  const content = Buffer.alloc(4 * MiB);
  for (let i = 0; i < content.length; i += 4) content.writeUInt32LE(i, i);
  const h = Harness.create({ dax: { mapper, policy }, ...options }, (d) => {
    fs.writeFileSync(`${d}/big`, content);
    fs.writeFileSync(`${d}/small`, 'tiny');
    fs.mkdirSync(`${d}/dir`);
  });
  cleanups.push(() => {
    h.close();
    pair.close();
  });
  return { h, window, mapper, content };
}

function setupIn(foffset: bigint, len: bigint, moffset: bigint, flags: bigint): Buffer {
  return encode(P.fuse_setupmapping_in, { fh: NO_FH, foffset, len, flags, moffset });
}
/** SETUPMAPPING by nodeid (no handle): the error it answers. */
function setup(
  h: Harness,
  nodeid: number,
  foffset: bigint,
  len: bigint,
  moffset: bigint,
  flags = READ,
  opts?: CallOptions,
): Promise<number> {
  return replyError(h.client.setupMapping(nodeid, NO_FH, { foffset, len, moffset, flags }, opts));
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
const settle = () => new Promise((r) => setTimeout(r, 20));

describe('without --dax-window', () => {
  it('offers no map alignment and answers SETUPMAPPING/REMOVEMAPPING with ENOSYS, like the reference daemon', async () => {
    const h = Harness.create({}, (d) => fs.writeFileSync(`${d}/f`, 'x'));
    cleanups.push(() => h.close());
    const out = await h.start();
    expect(out.flags & P.FUSE_MAP_ALIGNMENT).toBe(0);
    expect(out.flags2 & P.FUSE_HAS_INODE_DAX_FLAGS2).toBe(0);
    const f = (await h.client.lookup(1, 'f')).nodeid;
    expect(await setup(h, f, 0n, 2n * 1024n * 1024n, 0n)).toBe(-Errno.ENOSYS);
    expect(await remove(h, [[0n, 4096n]])).toBe(-Errno.ENOSYS);
    expect((await h.client.lookup(1, 'f')).attr.flags & P.FUSE_ATTR_DAX).toBe(0);
  });
});

describe('--dax-window', () => {
  it('INIT offers FUSE_MAP_ALIGNMENT with the mapper alignment and per-inode DAX', async () => {
    const { h } = daxHarness();
    const out = await h.start();
    expect(out.flags & P.FUSE_MAP_ALIGNMENT).toBe(P.FUSE_MAP_ALIGNMENT);
    expect(out.map_alignment).toBe(MAP_ALIGNMENT_LOG2);
    expect(out.flags2 & P.FUSE_HAS_INODE_DAX_FLAGS2).toBe(P.FUSE_HAS_INODE_DAX_FLAGS2);
  });

  it('maps a file range read-only into the window and unmaps it', async () => {
    const { h, window, mapper, content } = daxHarness();
    await h.start();
    const big = (await h.client.lookup(1, 'big')).nodeid;
    const fds = openFdCount();
    // Raw, with room for a body: the reply must carry none.
    const r = await h.raw(Opcode.FUSE_SETUPMAPPING, big, [setupIn(BigInt(MiB), BigInt(2 * MiB), BigInt(4 * MiB), READ)], {
      replySize: 4096,
    });
    expect(r.error).toBe(0);
    expect(r.body.length).toBe(0);
    expect(window.view(4 * MiB, 64)).toEqual(content.subarray(MiB, MiB + 64));
    expect(mapper.list()).toEqual([
      { moffset: BigInt(4 * MiB), len: BigInt(2 * MiB), foffset: BigInt(MiB), nodeid: BigInt(big), writable: false },
    ]);
    // Only the mapper's own duplicate stays open: ours was closed.
    expect(openFdCount()).toBe(fds + 1);
    expect(await remove(h, [[BigInt(4 * MiB), BigInt(2 * MiB)]])).toBe(0);
    expect(window.mappingCount).toBe(0);
    expect(openFdCount()).toBe(fds);
  });

  it('maps writable ranges: guest stores reach the host file', async () => {
    const { h, window } = daxHarness();
    await h.start();
    const big = (await h.client.lookup(1, 'big')).nodeid;
    expect(await setup(h, big, 0n, BigInt(2 * MiB), 0n, READ | WRITE)).toBe(0);
    window.view(0, 16).write('through the DAX');
    expect(fs.readFileSync(h.p('big')).subarray(0, 15).toString()).toBe('through the DAX');
  });

  it('removes several ranges in one request', async () => {
    const { h, window } = daxHarness();
    await h.start();
    const big = (await h.client.lookup(1, 'big')).nodeid;
    expect(await setup(h, big, 0n, BigInt(2 * MiB), 0n)).toBe(0);
    expect(await setup(h, big, BigInt(2 * MiB), BigInt(2 * MiB), BigInt(2 * MiB))).toBe(0);
    expect(window.mappingCount).toBe(2);
    expect(
      await remove(h, [
        [0n, BigInt(2 * MiB)],
        [BigInt(2 * MiB), BigInt(2 * MiB)],
      ]),
    ).toBe(0);
    expect(window.mappingCount).toBe(0);
  });

  it('refuses bad mappings: alignment, bounds, non-files, unknown inodes, malformed removals', async () => {
    const { h, window } = daxHarness();
    await h.start();
    const big = (await h.client.lookup(1, 'big')).nodeid;
    const dir = (await h.client.lookup(1, 'dir')).nodeid;
    expect(await setup(h, big, 100n, 4096n, 0n)).toBe(-Errno.EINVAL);
    expect(await setup(h, big, 0n, 4096n, BigInt(WINDOW))).toBe(-Errno.EINVAL);
    expect(await setup(h, big, 0n, 0n, 0n)).toBe(-Errno.EINVAL);
    expect(await setup(h, dir, 0n, 4096n, 0n)).toBe(-Errno.EISDIR);
    expect(await setup(h, 999, 0n, 4096n, 0n)).toBe(-Errno.EBADF);
    expect(await remove(h, [[BigInt(WINDOW), 4096n]])).toBe(-Errno.EINVAL);
    // The count must match the ranges present; zero ranges is no request at all.
    expect(await remove(h, [[0n, 4096n]], 2)).toBe(-Errno.EINVAL);
    expect(await remove(h, [], 0)).toBe(-Errno.EINVAL);
    expect((await h.raw(Opcode.FUSE_SETUPMAPPING, big, [Buffer.alloc(16)], { replySize: 0 })).error).toBe(-Errno.EINVAL);
    expect(window.mappingCount).toBe(0);
  });

  it('maps writable only for a caller who may write the file', async () => {
    const { h, window } = daxHarness();
    await h.start();
    fs.chmodSync(h.p('big'), 0o644);
    const big = (await h.client.lookup(1, 'big')).nodeid;
    const as = (uid: number, flags: bigint) => setup(h, big, 0n, BigInt(2 * MiB), 0n, flags, { uid, gid: uid });
    expect(await as(1000, READ | WRITE)).toBe(-Errno.EACCES);
    expect(window.mappingCount).toBe(0);
    expect(await as(1000, READ)).toBe(0);
    expect(await as(0, READ | WRITE)).toBe(0);
  });

  it('on a read-only share, maps for reading only', async () => {
    const { h, window } = daxHarness('always', { readonly: true });
    await h.start();
    const big = (await h.client.lookup(1, 'big')).nodeid;
    expect(await setup(h, big, 0n, BigInt(2 * MiB), 0n, READ | WRITE)).toBe(-Errno.EROFS);
    expect(window.mappingCount).toBe(0);
    expect(await setup(h, big, 0n, BigInt(2 * MiB), 0n, READ)).toBe(0);
    expect(window.mappingCount).toBe(1);
  });

  it('unmaps an inode the guest forgets, and everything at DESTROY', async () => {
    const { h, window } = daxHarness();
    await h.start();
    const big = (await h.client.lookup(1, 'big')).nodeid;
    expect(await setup(h, big, 0n, BigInt(2 * MiB), 0n)).toBe(0);
    await h.client.forget(big, 1);
    await settle();
    expect(window.mappingCount).toBe(0);
    const again = (await h.client.lookup(1, 'big')).nodeid;
    expect(await setup(h, again, 0n, BigInt(2 * MiB), BigInt(2 * MiB))).toBe(0);
    await h.client.destroy();
    await settle();
    expect(window.mappingCount).toBe(0);
  });
});

describe('--dax-policy', () => {
  const flagsOf = async (h: Harness, name: string) => (await h.client.lookup(1, name)).attr.flags & P.FUSE_ATTR_DAX;

  it('always: every regular file carries FUSE_ATTR_DAX', async () => {
    const { h } = daxHarness('always');
    await h.start();
    expect([await flagsOf(h, 'big'), await flagsOf(h, 'small'), await flagsOf(h, 'dir')]).toEqual([P.FUSE_ATTR_DAX, P.FUSE_ATTR_DAX, 0]);
    expect((await h.client.getattr((await h.client.lookup(1, 'small')).nodeid)).attr.flags & P.FUSE_ATTR_DAX).toBe(P.FUSE_ATTR_DAX);
  });

  it('large: only files of at least 32 KiB', async () => {
    const { h } = daxHarness('large');
    await h.start();
    expect([await flagsOf(h, 'big'), await flagsOf(h, 'small')]).toEqual([P.FUSE_ATTR_DAX, 0]);
  });

  it('inode (the default): only files whose every 2 MiB chunk QEMU 11.1 can map, on a writable share', async () => {
    expect(DEFAULT_DAX_POLICY).toBe('inode');
    const { h } = daxHarness('inode');
    fs.writeFileSync(`${h.dir}/tail`, Buffer.alloc(3 * MiB));
    fs.writeFileSync(`${h.dir}/empty`, '');
    await h.start();
    expect(await Promise.all(['big', 'small', 'tail', 'empty', 'dir'].map((n) => flagsOf(h, n)))).toEqual([P.FUSE_ATTR_DAX, 0, 0, 0, 0]);
    // The flag follows the size: once big is no longer whole chunks, its attributes drop it.
    fs.appendFileSync(`${h.dir}/big`, 'x');
    expect((await h.client.getattr((await h.client.lookup(1, 'big')).nodeid)).attr.flags & P.FUSE_ATTR_DAX).toBe(0);
    const ro = daxHarness('inode', { readonly: true }).h;
    await ro.start();
    expect(await flagsOf(ro, 'big')).toBe(0);
  });

  it('never: no per-inode DAX, but the window still serves guests mounted with dax=always', async () => {
    const { h } = daxHarness('never');
    const out = await h.start();
    expect(out.flags2 & P.FUSE_HAS_INODE_DAX_FLAGS2).toBe(0);
    expect(out.flags & P.FUSE_MAP_ALIGNMENT).toBe(P.FUSE_MAP_ALIGNMENT);
    expect(await flagsOf(h, 'big')).toBe(0);
    expect(await setup(h, (await h.client.lookup(1, 'big')).nodeid, 0n, BigInt(2 * MiB), 0n)).toBe(0);
  });

  it('sets no DAX flags for a guest that did not offer FUSE_HAS_INODE_DAX', async () => {
    const { h } = daxHarness('always');
    await h.start(LINUX_FLAGS, LINUX_FLAGS2 & ~P.FUSE_HAS_INODE_DAX_FLAGS2);
    expect(await flagsOf(h, 'big')).toBe(0);
  });
});

describe('the fd of a read mapping (QEMU 11.1 maps every range read-write)', () => {
  const support = (readonlyShare: boolean) => new DaxSupport({ mapper: null as never, policy: 'inode', readonlyShare }, () => undefined);
  /** A reopen that records the access modes asked for, refusing O_RDWR with `refuse` if given. */
  const reopener = (refuse?: number) => {
    const modes: number[] = [];
    const reopen = (flags: number) => {
      modes.push(flags & O_ACCMODE);
      if (refuse && (flags & O_ACCMODE) === O_RDWR) throw new SysError('open', refuse);
      return 100;
    };
    return { modes, reopen };
  };

  it('is O_RDWR on a writable share, O_RDONLY where the file refuses that', () => {
    const ok = reopener();
    expect(support(false).openForMapping(ok.reopen, false)).toBe(100);
    expect(ok.modes).toEqual([O_RDWR]);
    for (const errno of [Errno.EACCES, Errno.EPERM, Errno.EROFS, Errno.ETXTBSY]) {
      const refused = reopener(errno);
      support(false).openForMapping(refused.reopen, false);
      expect(refused.modes).toEqual([O_RDWR, O_RDONLY]);
    }
    // Any other failure is the answer.
    expect(() => support(false).openForMapping(reopener(Errno.ENOENT).reopen, false)).toThrow();
  });

  it('stays O_RDONLY on a read-only share; a write mapping is O_RDWR', () => {
    const ro = reopener();
    support(true).openForMapping(ro.reopen, false);
    expect(ro.modes).toEqual([O_RDONLY]);
    const w = reopener();
    support(false).openForMapping(w.reopen, true);
    expect(w.modes).toEqual([O_RDWR]);
  });
});
