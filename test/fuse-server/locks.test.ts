import * as fs from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import * as P from '../../src/fuse-server/protocol';
import { OFFSET_MAX, Opcode } from '../../src/fuse-server/protocol';
import { Errno } from '../../src/sys/errno';
import { MAX_LOCK_OWNERS_PER_INODE } from '../../src/fuse-server/passthrough-locks';
import { F_OFD_GETLK, F_OFD_SETLK, fcntlLock } from '../../src/sys/fs';
import type { Reply } from './fuse-driver';
import { encode, openFdCount } from './fuse-driver';
import { F_RDLCK, F_UNLCK, F_WRLCK, Harness, O_RDWR } from './harness';

const harnesses: Harness[] = [];
const hostFds: number[] = [];
afterEach(() => {
  harnesses.splice(0).forEach((x) => x.close());
  hostFds.splice(0).forEach((fd) => fs.closeSync(fd));
});

function start(options: ConstructorParameters<typeof Harness>[1] = { posixLock: true, flock: true }, dir?: string): Harness {
  const h = dir ? new Harness(dir, options) : Harness.create(options, (d) => fs.writeFileSync(`${d}/f`, 'x'.repeat(1000)));
  harnesses.push(h);
  h.init();
  return h;
}

/** The file `f`, looked up and opened read-write. */
function openF(h: Harness): { node: number; fh: number } {
  const node = h.lookup(1, 'f').nodeid;
  return { node, fh: h.open(node, O_RDWR) };
}

function setlk(h: Harness, node: number, fh: number, owner: bigint, type: number, start: bigint, end: bigint, flock = false): Reply {
  return h.fuse.request(Opcode.FUSE_SETLK, node, [h.lkIn(fh, owner, type, start, end, flock)]);
}
function setlkw(
  h: Harness,
  node: number,
  fh: number,
  owner: bigint,
  type: number,
  start: bigint,
  end: bigint,
  flock = false,
): Reply | Promise<Reply> {
  return h.fuse.start(Opcode.FUSE_SETLKW, node, [h.lkIn(fh, owner, type, start, end, flock)]);
}
function getlk(h: Harness, node: number, fh: number, owner: bigint, type: number, start: bigint, end: bigint): P.FuseFileLock {
  return P.fuse_lk_out.decode(h.fuse.ok(Opcode.FUSE_GETLK, node, [h.lkIn(fh, owner, type, start, end)]), 0).lk;
}
function interrupt(h: Harness, unique: bigint): Reply {
  return h.fuse.request(Opcode.FUSE_INTERRUPT, 0, [encode(P.fuse_interrupt_in, { unique })]);
}
const tick = (ms = 20) => new Promise((r) => setTimeout(r, ms));

describe('POSIX locks off (the default)', () => {
  it('does not offer FUSE_POSIX_LOCKS or FUSE_FLOCK_LOCKS, and answers lock requests with ENOSYS', () => {
    const h = start({});
    expect(h.session).toBeDefined();
    const init = P.fuse_init_out.decode(h.fuse.init(), 0);
    expect(init.flags & (P.FUSE_POSIX_LOCKS | P.FUSE_FLOCK_LOCKS)).toBe(0);
    const { node, fh } = openF(h);
    expect(setlk(h, node, fh, 1n, F_WRLCK, 0n, 10n).error).toBe(-Errno.ENOSYS);
    expect(h.fuse.request(Opcode.FUSE_GETLK, node, [h.lkIn(fh, 1n, F_WRLCK, 0n, 10n)]).error).toBe(-Errno.ENOSYS);
  });
});

describe('--posix-lock', () => {
  it('takes OFD locks per lock owner: conflicts across owners, not within one', () => {
    const h = start();
    const { node, fh } = openF(h);
    const fh2 = h.open(node, O_RDWR);
    expect(setlk(h, node, fh, 1n, F_WRLCK, 0n, 99n).error).toBe(0);
    // The same owner (one guest process) through another handle: its own lock, no conflict.
    expect(setlk(h, node, fh2, 1n, F_WRLCK, 50n, 60n).error).toBe(0);
    expect(setlk(h, node, fh, 2n, F_RDLCK, 50n, 60n).error).toBe(-Errno.EAGAIN);
    expect(getlk(h, node, fh, 2n, F_RDLCK, 50n, 60n)).toEqual({ type: F_WRLCK, start: 0n, end: 99n, pid: 0 });
    expect(getlk(h, node, fh, 1n, F_WRLCK, 0n, 10n).type).toBe(F_UNLCK);
    expect(setlk(h, node, fh, 2n, F_WRLCK, 100n, OFFSET_MAX).error).toBe(0);
    expect(getlk(h, node, fh, 1n, F_RDLCK, 500n, 600n)).toEqual({ type: F_WRLCK, start: 100n, end: OFFSET_MAX, pid: 0 });
    // Unlocking releases the range for others.
    expect(setlk(h, node, fh, 1n, F_UNLCK, 0n, OFFSET_MAX).error).toBe(0);
    expect(setlk(h, node, fh, 2n, F_RDLCK, 50n, 60n).error).toBe(0);
  });

  it('drops an OFD lock when the handle it was taken through is released (no FLUSH names its owner)', () => {
    const h = start();
    const { node, fh } = openF(h);
    const fh2 = h.open(node, O_RDWR);
    // Linux names an OFD lock's owner after the open file: here owner 7 locks through fh.
    expect(setlk(h, node, fh, 7n, F_WRLCK, 0n, 10n).error).toBe(0);
    expect(setlk(h, node, fh2, 8n, F_WRLCK, 0n, 10n).error).toBe(-Errno.EAGAIN);
    h.release(node, fh); // close(): RELEASE without FUSE_RELEASE_FLUSH
    expect(setlk(h, node, fh2, 8n, F_WRLCK, 0n, 10n).error).toBe(0);
  });

  it('excludes host processes and other guests', () => {
    const h = start();
    const other = start({ posixLock: true }, h.dir);
    const { node, fh } = openF(h);
    const host = fs.openSync(h.p('f'), 'r+');
    hostFds.push(host);
    fcntlLock(host, F_OFD_SETLK, { type: F_WRLCK, start: 0n, len: 10n });
    expect(setlk(h, node, fh, 1n, F_RDLCK, 5n, 5n).error).toBe(-Errno.EAGAIN);
    expect(getlk(h, node, fh, 1n, F_RDLCK, 0n, 100n)).toEqual({ type: F_WRLCK, start: 0n, end: 9n, pid: 0 });
    expect(setlk(h, node, fh, 1n, F_WRLCK, 20n, 29n).error).toBe(0);
    expect(fcntlLock(host, F_OFD_GETLK, { type: F_WRLCK, start: 0n, len: 0n })).toMatchObject({ type: F_WRLCK, start: 20n, len: 10n });
    // A second guest on the same directory sees the first one's lock.
    const o = openF(other);
    expect(setlk(other, o.node, o.fh, 1n, F_WRLCK, 25n, 25n).error).toBe(-Errno.EAGAIN);
  });

  it('FLUSH (the guest close) drops the owner lock, as close(2) does', () => {
    const h = start();
    const { node, fh } = openF(h);
    expect(setlk(h, node, fh, 7n, F_WRLCK, 0n, OFFSET_MAX).error).toBe(0);
    expect(h.session.stats.lockFds).toBe(1);
    expect(setlk(h, node, fh, 8n, F_WRLCK, 0n, 0n).error).toBe(-Errno.EAGAIN);
    expect(h.session.stats.lockFds).toBe(2);
    h.flush(node, fh, 7n);
    expect(h.session.stats.lockFds).toBe(1);
    expect(setlk(h, node, fh, 8n, F_WRLCK, 0n, 0n).error).toBe(0);
    h.flush(node, fh, 8n);
    expect(h.session.stats.lockFds).toBe(0);
  });

  it('SETLKW waits without blocking other requests and is granted when the lock goes', async () => {
    const h = start();
    const { node, fh } = openF(h);
    expect(setlk(h, node, fh, 1n, F_WRLCK, 0n, 99n).error).toBe(0);
    const waiting = setlkw(h, node, fh, 2n, F_WRLCK, 10n, 20n);
    expect(waiting).toBeInstanceOf(Promise);
    expect(h.session.stats.waiting).toBe(1);
    // The session keeps serving meanwhile.
    await tick();
    expect(h.read(node, fh, 0, 3).toString()).toBe('xxx');
    expect(setlk(h, node, fh, 1n, F_UNLCK, 0n, 99n).error).toBe(0);
    const reply = await waiting;
    expect(reply.error).toBe(0);
    expect(h.session.stats.waiting).toBe(0);
    expect(setlk(h, node, fh, 1n, F_RDLCK, 15n, 15n).error).toBe(-Errno.EAGAIN);
    // An uncontended SETLKW answers at once.
    expect(setlkw(h, node, fh, 1n, F_WRLCK, 500n, 600n)).toMatchObject({ error: 0 });
  });

  it('an answer that comes after other requests were served carries its own header', async () => {
    const h = start();
    const { node, fh } = openF(h);
    expect(setlk(h, node, fh, 1n, F_WRLCK, 0n, 99n).error).toBe(0);
    const first = setlkw(h, node, fh, 2n, F_WRLCK, 10n, 20n);
    const firstUnique = h.fuse.lastUnique;
    const second = setlkw(h, node, fh, 3n, F_WRLCK, 30n, 40n);
    const secondUnique = h.fuse.lastUnique;
    await tick();
    // Replies with bodies in between: the waiting ones must not disturb them, nor they the waiting ones.
    expect(h.read(node, fh, 0, 5).toString()).toBe('xxxxx');
    expect(setlk(h, node, fh, 1n, F_UNLCK, 0n, 99n).error).toBe(0);
    const [a, b] = await Promise.all([first, second]);
    expect(a).toMatchObject({ error: 0, unique: firstUnique, used: 16 });
    expect(b).toMatchObject({ error: 0, unique: secondUnique, used: 16 });
    expect(h.read(node, fh, 0, 3).toString()).toBe('xxx');
  });

  it('FUSE_INTERRUPT cancels a waiting SETLKW with EINTR; INTERRUPT itself gets no reply', async () => {
    const h = start();
    const { node, fh } = openF(h);
    expect(setlk(h, node, fh, 1n, F_WRLCK, 0n, 0n).error).toBe(0);
    const waiting = setlkw(h, node, fh, 2n, F_WRLCK, 0n, 0n);
    const unique = h.fuse.lastUnique;
    await tick();
    expect(interrupt(h, 12345n).used).toBe(0); // unknown unique: nothing happens
    expect(interrupt(h, unique).used).toBe(0);
    const reply = await waiting;
    expect(reply.error).toBe(-Errno.EINTR);
    expect(reply.unique).toBe(unique);
    // The interrupted owner got nothing.
    expect(getlk(h, node, fh, 3n, F_WRLCK, 0n, 0n)).toMatchObject({ type: F_WRLCK, start: 0n, end: 0n });
  });

  it('DESTROY cancels waiting requests and leaves no fd behind', async () => {
    const before = openFdCount();
    const h = start();
    const { node, fh } = openF(h);
    expect(setlk(h, node, fh, 1n, F_WRLCK, 0n, 0n).error).toBe(0);
    const waiting = setlkw(h, node, fh, 2n, F_WRLCK, 0n, 0n);
    h.fuse.ok(Opcode.FUSE_DESTROY, 0);
    expect((await waiting).error).toBe(-Errno.EINTR);
    expect(h.session.stats).toEqual({ inodes: 1, handles: 0, lockFds: 0, waiting: 0 });
    h.close();
    expect(openFdCount()).toBe(before);
  });

  it(`holds at most ${MAX_LOCK_OWNERS_PER_INODE} owners' descriptions per inode: ENOLCK beyond, room again after FLUSH`, () => {
    const h = start();
    const { node, fh } = openF(h);
    const before = openFdCount();
    for (let i = 0; i < MAX_LOCK_OWNERS_PER_INODE; i++) {
      expect(setlk(h, node, fh, BigInt(i + 1), F_RDLCK, BigInt(i), BigInt(i)).error).toBe(0);
    }
    expect(h.session.stats.lockFds).toBe(MAX_LOCK_OWNERS_PER_INODE);
    const extra = BigInt(MAX_LOCK_OWNERS_PER_INODE + 1);
    expect(setlk(h, node, fh, extra, F_RDLCK, 900n, 900n).error).toBe(-Errno.ENOLCK);
    expect(h.fuse.request(Opcode.FUSE_GETLK, node, [h.lkIn(fh, extra, F_WRLCK, 0n, 0n)]).error).toBe(-Errno.ENOLCK);
    // An owner that already has its description keeps working.
    expect(setlk(h, node, fh, 1n, F_WRLCK, 0n, 0n).error).toBe(0);
    expect(h.session.stats.lockFds).toBe(MAX_LOCK_OWNERS_PER_INODE);
    expect(openFdCount()).toBe(before + MAX_LOCK_OWNERS_PER_INODE);
    h.flush(node, fh, 1n);
    expect(setlk(h, node, fh, extra, F_RDLCK, 900n, 900n).error).toBe(0);
    // The limit is per inode.
    fs.writeFileSync(h.p('g'), 'y');
    const g = h.lookup(1, 'g').nodeid;
    expect(setlk(h, g, h.open(g, O_RDWR), extra + 1n, F_WRLCK, 0n, 0n).error).toBe(0);
    expect(h.session.stats.lockFds).toBe(MAX_LOCK_OWNERS_PER_INODE + 1);
    // RELEASE lets go of every owner that locked through the handle: only g's owner remains.
    h.release(node, fh, 2n, P.FUSE_RELEASE_FLUSH);
    expect(h.session.stats.lockFds).toBe(1);
  });

  it('refuses malformed lock ranges and types', () => {
    const h = start();
    const { node, fh } = openF(h);
    expect(setlk(h, node, fh, 1n, F_WRLCK, 10n, 5n).error).toBe(-Errno.EINVAL);
    expect(setlk(h, node, fh, 1n, 9, 0n, 5n).error).toBe(-Errno.EINVAL);
    expect(setlk(h, node, fh, 1n, F_WRLCK, 0n, OFFSET_MAX + 1n).error).toBe(-Errno.EINVAL);
    expect(setlk(h, node, 999, 1n, F_WRLCK, 0n, 5n).error).toBe(-Errno.EBADF);
    expect(h.fuse.request(Opcode.FUSE_SETLK, node, [Buffer.alloc(20)]).error).toBe(-Errno.EINVAL);
  });
});

describe('--flock', () => {
  it('takes flock(2) locks per handle, waits for them, and drops them on release', async () => {
    const h = start();
    const { node, fh } = openF(h);
    const fh2 = h.open(node, O_RDWR);
    expect(setlk(h, node, fh, 1n, F_WRLCK, 0n, OFFSET_MAX, true).error).toBe(0);
    expect(setlk(h, node, fh2, 1n, F_RDLCK, 0n, OFFSET_MAX, true).error).toBe(-Errno.EWOULDBLOCK);
    const waiting = setlkw(h, node, fh2, 1n, F_RDLCK, 0n, OFFSET_MAX, true);
    expect(waiting).toBeInstanceOf(Promise);
    await tick();
    h.release(node, fh, 1n, P.FUSE_RELEASE_FLOCK_UNLOCK);
    expect((await waiting).error).toBe(0);
    // A host flock on the same file now conflicts with the guest's shared lock only if exclusive.
    expect(setlk(h, node, fh2, 1n, F_UNLCK, 0n, OFFSET_MAX, true).error).toBe(0);
  });

  it('a waiting flock whose handle is released fails with EBADF instead of locking a reused fd', async () => {
    const h = start();
    const { node, fh } = openF(h);
    const fh2 = h.open(node, O_RDWR);
    expect(setlk(h, node, fh, 1n, F_WRLCK, 0n, OFFSET_MAX, true).error).toBe(0);
    const waiting = setlkw(h, node, fh2, 2n, F_WRLCK, 0n, OFFSET_MAX, true);
    h.release(node, fh2);
    h.release(node, fh);
    expect((await waiting).error).toBe(-Errno.EBADF);
  });
});

describe('fuse_lk layouts', () => {
  it('match fuse.h', () => {
    expect(P.fuse_file_lock.size).toBe(24);
    expect(P.fuse_lk_in.size).toBe(48);
    expect(P.fuse_lk_out.size).toBe(24);
    expect(encode(P.fuse_lk_in, { fh: 1, owner: 2n, lk: { start: 3n, end: 4n, type: 5, pid: 6 }, lk_flags: 7 }).readUInt32LE(40)).toBe(7);
  });
});
