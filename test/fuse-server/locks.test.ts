import * as fs from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import * as P from '../../src/fuse-server/protocol';
import { OFFSET_MAX, Opcode } from '../../src/fuse-server/protocol';
import { Errno } from '../../src/sys/errno';
import { MAX_LOCK_OWNERS_PER_INODE } from '../../src/fuse-server/passthrough-locks';
import { F_OFD_GETLK, F_OFD_SETLK, fcntlLock } from '../../src/sys/fs';
import { type Outcome, type RawReply, encode, openFdCount, outcome, replyError } from './fuse-driver';
import { F_RDLCK, F_UNLCK, F_WRLCK, Harness, O_RDWR } from './harness';

const harnesses: Harness[] = [];
const hostFds: number[] = [];
afterEach(() => {
  harnesses.splice(0).forEach((x) => x.close());
  hostFds.splice(0).forEach((fd) => fs.closeSync(fd));
});

async function start(options: ConstructorParameters<typeof Harness>[1] = { posixLock: true, flock: true }, dir?: string): Promise<Harness> {
  const h = dir ? new Harness(dir, options) : Harness.create(options, (d) => fs.writeFileSync(`${d}/f`, 'x'.repeat(1000)));
  harnesses.push(h);
  await h.start();
  return h;
}

/** The file `f`, looked up and opened read-write. */
async function openF(h: Harness): Promise<{ node: number; fh: number }> {
  const node = (await h.client.lookup(1, 'f')).nodeid;
  return { node, fh: await await h.open(node, O_RDWR) };
}

/** SETLK: the error it answers. */
function setlk(
  h: Harness,
  node: number,
  fh: number,
  owner: bigint,
  type: number,
  start: bigint,
  end: bigint,
  flock = false,
): Promise<number> {
  return replyError(h.client.setlk(node, fh, owner, { type, start, end }, flock));
}
/** SETLKW, sent now; its outcome when the lock is granted (or the wait ends). */
function setlkw(
  h: Harness,
  node: number,
  fh: number,
  owner: bigint,
  type: number,
  start: bigint,
  end: bigint,
  flock = false,
): Promise<Outcome<void>> {
  return outcome(h.client.setlkw(node, fh, owner, { type, start, end }, flock));
}
function getlk(h: Harness, node: number, fh: number, owner: bigint, type: number, start: bigint, end: bigint): Promise<P.FuseFileLock> {
  return h.client.getlk(node, fh, owner, { type, start, end });
}
/** INTERRUPT (no client method: the kernel sends it only for a request in flight). */
function interrupt(h: Harness, unique: bigint): Promise<RawReply> {
  return h.raw(Opcode.FUSE_INTERRUPT, 0, [encode(P.fuse_interrupt_in, { unique })]);
}
/** The answer the client received for the request `unique`. */
const answerOf = (h: Harness, unique: bigint) => h.transport.answered.find((x) => x.unique === unique);
const tick = (ms = 20) => new Promise((r) => setTimeout(r, ms));

describe('POSIX locks off (the default)', () => {
  it('does not offer FUSE_POSIX_LOCKS or FUSE_FLOCK_LOCKS, and answers lock requests with ENOSYS', async () => {
    const h = await start({});
    expect(h.session).toBeDefined();
    // The Linux offer includes both: the session declines them.
    expect(h.client.initReply!.flags & (P.FUSE_POSIX_LOCKS | P.FUSE_FLOCK_LOCKS)).toBe(0);
    const { node, fh } = await openF(h);
    expect(await setlk(h, node, fh, 1n, F_WRLCK, 0n, 10n)).toBe(-Errno.ENOSYS);
    expect(await replyError(getlk(h, node, fh, 1n, F_WRLCK, 0n, 10n))).toBe(-Errno.ENOSYS);
  });
});

describe('--posix-lock', () => {
  it('takes OFD locks per lock owner: conflicts across owners, not within one', async () => {
    const h = await start();
    const { node, fh } = await openF(h);
    const fh2 = await h.open(node, O_RDWR);
    expect(await setlk(h, node, fh, 1n, F_WRLCK, 0n, 99n)).toBe(0);
    // The same owner (one guest process) through another handle: its own lock, no conflict.
    expect(await setlk(h, node, fh2, 1n, F_WRLCK, 50n, 60n)).toBe(0);
    expect(await setlk(h, node, fh, 2n, F_RDLCK, 50n, 60n)).toBe(-Errno.EAGAIN);
    expect(await getlk(h, node, fh, 2n, F_RDLCK, 50n, 60n)).toEqual({ type: F_WRLCK, start: 0n, end: 99n, pid: 0 });
    expect((await getlk(h, node, fh, 1n, F_WRLCK, 0n, 10n)).type).toBe(F_UNLCK);
    expect(await setlk(h, node, fh, 2n, F_WRLCK, 100n, OFFSET_MAX)).toBe(0);
    expect(await getlk(h, node, fh, 1n, F_RDLCK, 500n, 600n)).toEqual({ type: F_WRLCK, start: 100n, end: OFFSET_MAX, pid: 0 });
    // Unlocking releases the range for others.
    expect(await setlk(h, node, fh, 1n, F_UNLCK, 0n, OFFSET_MAX)).toBe(0);
    expect(await setlk(h, node, fh, 2n, F_RDLCK, 50n, 60n)).toBe(0);
  });

  it('drops an OFD lock when the handle it was taken through is released (no FLUSH names its owner)', async () => {
    const h = await start();
    const { node, fh } = await openF(h);
    const fh2 = await h.open(node, O_RDWR);
    // Linux names an OFD lock's owner after the open file: here owner 7 locks through fh.
    expect(await setlk(h, node, fh, 7n, F_WRLCK, 0n, 10n)).toBe(0);
    expect(await setlk(h, node, fh2, 8n, F_WRLCK, 0n, 10n)).toBe(-Errno.EAGAIN);
    await h.client.release(node, fh); // close(): RELEASE without FUSE_RELEASE_FLUSH
    expect(await setlk(h, node, fh2, 8n, F_WRLCK, 0n, 10n)).toBe(0);
  });

  it('excludes host processes and other guests', async () => {
    const h = await start();
    const other = await start({ posixLock: true }, h.dir);
    const { node, fh } = await openF(h);
    const host = fs.openSync(h.p('f'), 'r+');
    hostFds.push(host);
    fcntlLock(host, F_OFD_SETLK, { type: F_WRLCK, start: 0n, len: 10n });
    expect(await setlk(h, node, fh, 1n, F_RDLCK, 5n, 5n)).toBe(-Errno.EAGAIN);
    expect(await getlk(h, node, fh, 1n, F_RDLCK, 0n, 100n)).toEqual({ type: F_WRLCK, start: 0n, end: 9n, pid: 0 });
    expect(await setlk(h, node, fh, 1n, F_WRLCK, 20n, 29n)).toBe(0);
    expect(fcntlLock(host, F_OFD_GETLK, { type: F_WRLCK, start: 0n, len: 0n })).toMatchObject({ type: F_WRLCK, start: 20n, len: 10n });
    // A second guest on the same directory sees the first one's lock.
    const o = await openF(other);
    expect(await setlk(other, o.node, o.fh, 1n, F_WRLCK, 25n, 25n)).toBe(-Errno.EAGAIN);
  });

  it('FLUSH (the guest close) drops the owner lock, as close(2) does', async () => {
    const h = await start();
    const { node, fh } = await openF(h);
    expect(await setlk(h, node, fh, 7n, F_WRLCK, 0n, OFFSET_MAX)).toBe(0);
    expect(h.session.stats.lockFds).toBe(1);
    expect(await setlk(h, node, fh, 8n, F_WRLCK, 0n, 0n)).toBe(-Errno.EAGAIN);
    expect(h.session.stats.lockFds).toBe(2);
    await h.client.flush(node, fh, 7n);
    expect(h.session.stats.lockFds).toBe(1);
    expect(await setlk(h, node, fh, 8n, F_WRLCK, 0n, 0n)).toBe(0);
    await h.client.flush(node, fh, 8n);
    expect(h.session.stats.lockFds).toBe(0);
  });

  it('SETLKW waits without blocking other requests and is granted when the lock goes', async () => {
    const h = await start();
    const { node, fh } = await openF(h);
    expect(await setlk(h, node, fh, 1n, F_WRLCK, 0n, 99n)).toBe(0);
    const waiting = setlkw(h, node, fh, 2n, F_WRLCK, 10n, 20n);
    expect(h.transport.lastDeferred).toBe(true);
    expect(h.session.stats.waiting).toBe(1);
    // The session keeps serving meanwhile.
    await tick();
    expect((await h.client.read(node, fh, 0, 3)).toString()).toBe('xxx');
    expect(await setlk(h, node, fh, 1n, F_UNLCK, 0n, 99n)).toBe(0);
    const reply = await waiting;
    expect(reply.error).toBe(0);
    expect(h.session.stats.waiting).toBe(0);
    expect(await setlk(h, node, fh, 1n, F_RDLCK, 15n, 15n)).toBe(-Errno.EAGAIN);
    // An uncontended SETLKW answers at once.
    const uncontended = setlkw(h, node, fh, 1n, F_WRLCK, 500n, 600n);
    expect(h.transport.lastDeferred).toBe(false);
    expect(await uncontended).toMatchObject({ error: 0 });
  });

  it('an answer that comes after other requests were served carries its own header', async () => {
    const h = await start();
    const { node, fh } = await openF(h);
    expect(await setlk(h, node, fh, 1n, F_WRLCK, 0n, 99n)).toBe(0);
    const first = setlkw(h, node, fh, 2n, F_WRLCK, 10n, 20n);
    const firstUnique = h.transport.lastUnique;
    const second = setlkw(h, node, fh, 3n, F_WRLCK, 30n, 40n);
    const secondUnique = h.transport.lastUnique;
    await tick();
    // Replies with bodies in between: the waiting ones must not disturb them, nor they the waiting ones.
    expect((await h.client.read(node, fh, 0, 5)).toString()).toBe('xxxxx');
    expect(await setlk(h, node, fh, 1n, F_UNLCK, 0n, 99n)).toBe(0);
    const [a, b] = await Promise.all([first, second]);
    expect([a.error, b.error]).toEqual([0, 0]);
    expect(answerOf(h, firstUnique)).toEqual({ opcode: Opcode.FUSE_SETLKW, unique: firstUnique, error: 0, used: 16 });
    expect(answerOf(h, secondUnique)).toEqual({ opcode: Opcode.FUSE_SETLKW, unique: secondUnique, error: 0, used: 16 });
    expect((await h.client.read(node, fh, 0, 3)).toString()).toBe('xxx');
  });

  it('FUSE_INTERRUPT cancels a waiting SETLKW with EINTR; INTERRUPT itself gets no reply', async () => {
    const h = await start();
    const { node, fh } = await openF(h);
    expect(await setlk(h, node, fh, 1n, F_WRLCK, 0n, 0n)).toBe(0);
    const waiting = setlkw(h, node, fh, 2n, F_WRLCK, 0n, 0n);
    const unique = h.transport.lastUnique;
    await tick();
    expect((await interrupt(h, 12345n)).used).toBe(0); // unknown unique: nothing happens
    expect((await interrupt(h, unique)).used).toBe(0);
    const reply = await waiting;
    expect(reply.error).toBe(-Errno.EINTR);
    expect(answerOf(h, unique)).toEqual({ opcode: Opcode.FUSE_SETLKW, unique, error: -Errno.EINTR, used: 16 });
    // The interrupted owner got nothing.
    expect(await getlk(h, node, fh, 3n, F_WRLCK, 0n, 0n)).toMatchObject({ type: F_WRLCK, start: 0n, end: 0n });
  });

  it('DESTROY cancels waiting requests and leaves no fd behind', async () => {
    const before = openFdCount();
    const h = await start();
    const { node, fh } = await openF(h);
    expect(await setlk(h, node, fh, 1n, F_WRLCK, 0n, 0n)).toBe(0);
    const waiting = setlkw(h, node, fh, 2n, F_WRLCK, 0n, 0n);
    await h.client.destroy();
    expect((await waiting).error).toBe(-Errno.EINTR);
    expect(h.session.stats).toEqual({ inodes: 1, handles: 0, lockFds: 0, waiting: 0 });
    h.close();
    expect(openFdCount()).toBe(before);
  });

  it(`holds at most ${MAX_LOCK_OWNERS_PER_INODE} owners' descriptions per inode: ENOLCK beyond, room again after FLUSH`, async () => {
    const h = await start();
    const { node, fh } = await openF(h);
    const before = openFdCount();
    for (let i = 0; i < MAX_LOCK_OWNERS_PER_INODE; i++) {
      expect(await setlk(h, node, fh, BigInt(i + 1), F_RDLCK, BigInt(i), BigInt(i))).toBe(0);
    }
    expect(h.session.stats.lockFds).toBe(MAX_LOCK_OWNERS_PER_INODE);
    const extra = BigInt(MAX_LOCK_OWNERS_PER_INODE + 1);
    expect(await setlk(h, node, fh, extra, F_RDLCK, 900n, 900n)).toBe(-Errno.ENOLCK);
    expect(await replyError(getlk(h, node, fh, extra, F_WRLCK, 0n, 0n))).toBe(-Errno.ENOLCK);
    // An owner that already has its description keeps working.
    expect(await setlk(h, node, fh, 1n, F_WRLCK, 0n, 0n)).toBe(0);
    expect(h.session.stats.lockFds).toBe(MAX_LOCK_OWNERS_PER_INODE);
    expect(openFdCount()).toBe(before + MAX_LOCK_OWNERS_PER_INODE);
    await h.client.flush(node, fh, 1n);
    expect(await setlk(h, node, fh, extra, F_RDLCK, 900n, 900n)).toBe(0);
    // The limit is per inode.
    fs.writeFileSync(h.p('g'), 'y');
    const g = (await h.client.lookup(1, 'g')).nodeid;
    expect(await setlk(h, g, await h.open(g, O_RDWR), extra + 1n, F_WRLCK, 0n, 0n)).toBe(0);
    expect(h.session.stats.lockFds).toBe(MAX_LOCK_OWNERS_PER_INODE + 1);
    // RELEASE lets go of every owner that locked through the handle: only g's owner remains.
    await h.client.release(node, fh, 0, P.FUSE_RELEASE_FLUSH, 2n);
    expect(h.session.stats.lockFds).toBe(1);
  });

  it('refuses malformed lock ranges and types', async () => {
    const h = await start();
    const { node, fh } = await openF(h);
    expect(await setlk(h, node, fh, 1n, F_WRLCK, 10n, 5n)).toBe(-Errno.EINVAL);
    expect(await setlk(h, node, fh, 1n, 9, 0n, 5n)).toBe(-Errno.EINVAL);
    expect(await setlk(h, node, fh, 1n, F_WRLCK, 0n, OFFSET_MAX + 1n)).toBe(-Errno.EINVAL);
    expect(await setlk(h, node, 999, 1n, F_WRLCK, 0n, 5n)).toBe(-Errno.EBADF);
    // A fuse_lk_in cut short: no client sends one.
    expect((await h.raw(Opcode.FUSE_SETLK, node, [Buffer.alloc(20)])).error).toBe(-Errno.EINVAL);
  });
});

describe('--flock', () => {
  it('takes flock(2) locks per handle, waits for them, and drops them on release', async () => {
    const h = await start();
    const { node, fh } = await openF(h);
    const fh2 = await h.open(node, O_RDWR);
    expect(await setlk(h, node, fh, 1n, F_WRLCK, 0n, OFFSET_MAX, true)).toBe(0);
    expect(await setlk(h, node, fh2, 1n, F_RDLCK, 0n, OFFSET_MAX, true)).toBe(-Errno.EWOULDBLOCK);
    const waiting = setlkw(h, node, fh2, 1n, F_RDLCK, 0n, OFFSET_MAX, true);
    expect(h.transport.lastDeferred).toBe(true);
    await tick();
    await h.client.release(node, fh, 0, P.FUSE_RELEASE_FLOCK_UNLOCK, 1n);
    expect((await waiting).error).toBe(0);
    // A host flock on the same file now conflicts with the guest's shared lock only if exclusive.
    expect(await setlk(h, node, fh2, 1n, F_UNLCK, 0n, OFFSET_MAX, true)).toBe(0);
  });

  it('a waiting flock whose handle is released fails with EBADF instead of locking a reused fd', async () => {
    const h = await start();
    const { node, fh } = await openF(h);
    const fh2 = await h.open(node, O_RDWR);
    expect(await setlk(h, node, fh, 1n, F_WRLCK, 0n, OFFSET_MAX, true)).toBe(0);
    const waiting = setlkw(h, node, fh2, 2n, F_WRLCK, 0n, OFFSET_MAX, true);
    await h.client.release(node, fh2);
    await h.client.release(node, fh);
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
