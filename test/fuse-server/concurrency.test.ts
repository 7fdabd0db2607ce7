/**
 * Requests that finish later (READ/WRITE on libuv's thread pool with
 * --thread-pool-size, FSYNC always) against requests served meanwhile: replies
 * matched by their own chain in any order, RELEASE/FORGET/DESTROY of what an
 * operation in flight still uses, and per-request contexts.
 *
 * The pool is held busy with blocking reads of FIFOs, so "in flight" is
 * deterministic: the operation under test is queued behind them until the
 * test lets them go.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { blockPool } from '../helpers/block-pool';
import { afterEach, describe, expect, it } from 'vitest';
import { OPCODES } from '../../src/fuse-server/dispatcher';
import { Errno } from '../../src/fuse-server/errors';
import * as P from '../../src/fuse-server/protocol';
import { Opcode } from '../../src/fuse-server/protocol';
import { libc } from '../../src/sys/libc';
import { encode, outcome, replyError } from './fuse-driver';
import { Harness } from './harness';

const MiB = 1 << 20;
const POSIX_FADV_DONTNEED = 4;
const posixFadvise = libc.func('int posix_fadvise(int, int64_t, int64_t, int)') as (
  fd: number,
  o: number,
  l: number,
  advice: number,
) => number;

/** Writes the range back and drops it from the page cache: reading it then has to wait for the disk. */
function dropFromPageCache(file: string): void {
  const fd = fs.openSync(file, 'r+');
  try {
    fs.fsyncSync(fd);
    expect(posixFadvise(fd, 0, 0, POSIX_FADV_DONTNEED)).toBe(0);
  } finally {
    fs.closeSync(fd);
  }
}

let h: Harness;
let unblock: (() => Promise<void>) | null = null;
afterEach(async () => {
  await unblock?.();
  unblock = null;
  h?.close();
});

async function pooled(files: Record<string, Buffer>): Promise<Harness> {
  const harness = Harness.create({ threadPoolSize: 4 }, (dir) => {
    for (const [name, data] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), data);
  });
  await harness.start();
  return harness;
}

/** The answer the client received for the request `unique`. */
const answerOf = (unique: bigint) => h.transport.answered.find((x) => x.unique === unique);
/** Where among the client's answers the one to `unique` came. */
const answerIndex = (unique: bigint) => h.transport.answered.findIndex((x) => x.unique === unique);

describe('blocking file calls off the event loop', () => {
  it('COPY_FILE_RANGE, FALLOCATE and SYNCFS wait on the thread pool while other requests are answered', async () => {
    h = await pooled({ a: Buffer.alloc(MiB, 0xaa), b: Buffer.alloc(0) });
    const c = h.client;
    const a = await c.lookup(1, 'a');
    const b = await c.lookup(1, 'b');
    const fhA = await h.open(a.nodeid, fs.constants.O_RDONLY);
    const fhB = await h.open(b.nodeid, fs.constants.O_RDWR);
    unblock = blockPool(h.dir);
    // Each is queued behind the blocked pool: none may be answered on the event loop now.
    const copy = outcome(c.copyFileRange({ nodeid: a.nodeid, fh: fhA, offset: 0 }, { nodeid: b.nodeid, fh: fhB, offset: 0 }, MiB));
    expect(h.transport.lastDeferred).toBe(true);
    const falloc = outcome(c.fallocate(b.nodeid, fhB, 0, 2 * MiB));
    expect(h.transport.lastDeferred).toBe(true);
    const sync = outcome(c.syncfs(1));
    expect(h.transport.lastDeferred).toBe(true);
    // The event loop is free meanwhile: STATFS is answered at once, and settles while all three still wait.
    const attr = c.statfs(1);
    expect(h.transport.lastDeferred).toBe(false);
    expect(await replyError(attr)).toBe(0);
    expect(h.transport.pending).toBe(3);
    await unblock();
    unblock = null;
    const [cr, f, y] = await Promise.all([copy, falloc, sync]);
    expect([cr.error, f.error, y.error]).toEqual([0, 0, 0]);
    expect(cr.value).toBe(MiB);
    expect(fs.readFileSync(path.join(h.dir, 'b')).subarray(0, MiB).equals(Buffer.alloc(MiB, 0xaa))).toBe(true);
    expect(fs.statSync(path.join(h.dir, 'b')).size).toBe(2 * MiB);
  });
});

describe('with --thread-pool-size, LOOKUP, GETATTR and OPEN (what a slow network file system makes wait)', () => {
  it('wait on the pool while other requests are answered on the loop, and answer right once it frees', async () => {
    h = await pooled({ a: Buffer.from('abc') });
    const a = await h.client.lookup(1, 'a');
    unblock = blockPool(h.dir);
    const again = outcome(h.client.lookup(1, 'a'));
    expect(h.transport.lastDeferred).toBe(true);
    const missing = outcome(h.client.lookup(1, 'nope'));
    expect(h.transport.lastDeferred).toBe(true);
    const attr = outcome(h.client.getattr(a.nodeid));
    expect(h.transport.lastDeferred).toBe(true);
    const opened = outcome(h.client.open(a.nodeid, fs.constants.O_RDONLY));
    expect(h.transport.lastDeferred).toBe(true);
    // Meanwhile the event loop answers what does not wait.
    expect(await replyError(h.client.statfs(1))).toBe(0);
    expect(h.transport.pending).toBe(4);
    await unblock();
    unblock = null;
    expect((await again).value!.nodeid).toBe(a.nodeid);
    expect((await missing).error).toBe(-Errno.ENOENT);
    expect((await attr).value!.attr.size).toBe(3);
    const { fh } = (await opened).value!;
    expect((await h.client.read(a.nodeid, fh, 0, 10)).toString()).toBe('abc');
    expect(await replyError(h.client.release(a.nodeid, fh))).toBe(0);
    // The root and `a`, looked up twice: one inode, and no fd left over from the missing name.
    expect(h.session.stats.inodes).toBe(2);
    expect(await replyError(h.client.forget(a.nodeid, 2))).toBe(0);
    expect(h.session.stats.inodes).toBe(1);
  });

  it('a DESTROY while a LOOKUP and an OPEN wait: both answer EIO and leave no inode or handle in the new session', async () => {
    h = await pooled({ a: Buffer.from('abc') });
    const a = await h.client.lookup(1, 'a');
    unblock = blockPool(h.dir);
    const late = outcome(h.client.lookup(1, 'a'));
    expect(h.transport.lastDeferred).toBe(true);
    const lateOpen = outcome(h.client.open(a.nodeid, fs.constants.O_RDONLY));
    expect(h.transport.lastDeferred).toBe(true);
    expect(await replyError(h.client.destroy())).toBe(0);
    await h.start();
    await unblock();
    unblock = null;
    expect((await late).error).toBe(-Errno.EIO);
    expect((await lateOpen).error).toBe(-Errno.EIO);
    expect(h.session.stats.inodes).toBe(1);
    expect(h.session.stats.handles).toBe(0);
  });
});

describe('requests that finish later', () => {
  it('answer into their own chains, in the order they finish, while later requests are answered at once', async () => {
    h = await pooled({ a: Buffer.alloc(MiB, 0xaa) });
    const a = await h.client.lookup(1, 'a');
    const fh = await h.open(a.nodeid, fs.constants.O_RDWR);
    unblock = blockPool(h.dir);
    const read = outcome(h.client.read(a.nodeid, fh, 0, MiB));
    const readUnique = h.transport.lastUnique;
    expect(h.transport.lastDeferred).toBe(true);
    const fsync = outcome(h.client.fsync(a.nodeid, fh));
    const fsyncUnique = h.transport.lastUnique;
    expect(h.transport.lastDeferred).toBe(true);
    // Served meanwhile, on the event loop (with --thread-pool-size GETATTR goes to the pool too): its reply is complete before the READ's.
    const attr = h.client.statfs(1);
    const attrUnique = h.transport.lastUnique;
    expect(await replyError(attr)).toBe(0);
    expect(answerOf(attrUnique)).toEqual({ opcode: Opcode.FUSE_STATFS, unique: attrUnique, error: 0, used: 16 + P.fuse_statfs_out.size });
    expect(h.transport.pending).toBe(2);
    await unblock();
    unblock = null;
    const [r, f] = await Promise.all([read, fsync]);
    expect(answerOf(readUnique)).toEqual({ opcode: Opcode.FUSE_READ, unique: readUnique, error: 0, used: 16 + MiB });
    expect(r.error).toBe(0);
    expect(r.value!.equals(Buffer.alloc(MiB, 0xaa))).toBe(true);
    expect(answerOf(fsyncUnique)).toEqual({ opcode: Opcode.FUSE_FSYNC, unique: fsyncUnique, error: 0, used: 16 });
    expect(f.error).toBe(0);
    // The STATFS sent after them was answered before either.
    expect(answerIndex(attrUnique)).toBeLessThan(Math.min(answerIndex(readUnique), answerIndex(fsyncUnique)));
  });

  it('RELEASE while a READ of the handle is in flight: the READ still reads the file it named, though the fd number was reused', async () => {
    h = await pooled({ a: Buffer.alloc(MiB, 0xaa), b: Buffer.alloc(MiB, 0xbb) });
    const a = await h.client.lookup(1, 'a');
    const fh = await h.open(a.nodeid, fs.constants.O_RDONLY);
    unblock = blockPool(h.dir);
    const read = outcome(h.client.read(a.nodeid, fh, 0, MiB));
    expect(h.transport.lastDeferred).toBe(true);
    // The guest closes the file: RELEASE is answered at once and the handle is gone...
    expect(await replyError(h.client.release(a.nodeid, fh))).toBe(0);
    expect(await replyError(h.client.read(a.nodeid, fh, 0, 1))).toBe(-Errno.EBADF);
    // ...and the next open takes the fd numbers it freed (CREATE: with --thread-pool-size LOOKUP and OPEN wait on the pool too).
    await h.client.create(1, 'c', fs.constants.O_RDWR, 0o100644);
    expect(h.transport.pending).toBe(1);
    await unblock();
    unblock = null;
    const r = await read;
    expect(r.error).toBe(0);
    expect(r.value!.length).toBe(MiB);
    expect(r.value!.equals(Buffer.alloc(MiB, 0xaa))).toBe(true);
  });

  it('DESTROY while a WRITE is in flight: the write lands in the file it named and is still answered', async () => {
    h = await pooled({ a: Buffer.alloc(0), b: Buffer.alloc(0) });
    const a = await h.client.lookup(1, 'a');
    const fh = await h.open(a.nodeid, fs.constants.O_WRONLY);
    const data = Buffer.alloc(256 * 1024, 0x5c);
    unblock = blockPool(h.dir);
    const write = outcome(h.client.write(a.nodeid, fh, 0, data));
    expect(h.transport.lastDeferred).toBe(true);
    expect(await replyError(h.client.destroy())).toBe(0);
    expect(h.session.stats.handles).toBe(0);
    // A new session reuses the fd numbers for another file (CREATE: a LOOKUP would wait on the held pool).
    await h.start();
    await h.client.create(1, 'c', fs.constants.O_WRONLY, 0o100644);
    expect(h.transport.pending).toBe(1);
    await unblock();
    unblock = null;
    const w = await write;
    expect(w.error).toBe(0);
    expect(w.value).toBe(data.length);
    expect(fs.readFileSync(h.p('a')).equals(data)).toBe(true);
    expect(fs.statSync(h.p('b')).size).toBe(0);
    expect(fs.statSync(h.p('c')).size).toBe(0);
  });

  it('FORGET of the inode while a READ through its handle is in flight: the READ completes', async () => {
    h = await pooled({ a: Buffer.alloc(MiB, 0x11) });
    const a = await h.client.lookup(1, 'a');
    const fh = await h.open(a.nodeid, fs.constants.O_RDONLY);
    unblock = blockPool(h.dir);
    const read = outcome(h.client.read(a.nodeid, fh, 0, MiB));
    await h.client.forget(a.nodeid, 1);
    await unblock();
    unblock = null;
    const r = await read;
    expect(r.error).toBe(0);
    expect(r.value!.equals(Buffer.alloc(MiB, 0x11))).toBe(true);
    await h.client.release(a.nodeid, fh);
  });

  it('without --thread-pool-size READ and WRITE answer at once, and FSYNC later', async () => {
    h = Harness.create({}, (dir) => fs.writeFileSync(path.join(dir, 'a'), Buffer.alloc(MiB, 1)));
    await h.start();
    const a = await h.client.lookup(1, 'a');
    const fh = await h.open(a.nodeid, fs.constants.O_RDWR);
    const read = h.client.read(a.nodeid, fh, 0, MiB);
    expect(h.transport.lastDeferred).toBe(false);
    expect((await read).equals(Buffer.alloc(MiB, 1))).toBe(true);
    const write = h.client.write(a.nodeid, fh, 0, Buffer.alloc(MiB, 2));
    expect(h.transport.lastDeferred).toBe(false);
    expect(await write).toBe(MiB);
    const fsync = outcome(h.client.fsync(a.nodeid, fh, true));
    expect(h.transport.lastDeferred).toBe(true);
    expect((await fsync).error).toBe(0);
  });

  it('without --thread-pool-size a READ that would wait for the disk goes to the pool (RWF_NOWAIT); GETATTR is answered meanwhile', async () => {
    h = Harness.create({}, (dir) => fs.writeFileSync(path.join(dir, 'a'), Buffer.alloc(MiB, 3)));
    await h.start();
    const a = await h.client.lookup(1, 'a');
    const fh = await h.open(a.nodeid, fs.constants.O_RDONLY);
    dropFromPageCache(path.join(h.dir, 'a'));
    unblock = blockPool(h.dir);
    const read = h.client.read(a.nodeid, fh, 0, MiB);
    expect(h.transport.lastDeferred).toBe(true);
    const attr = h.client.getattr(a.nodeid);
    expect(h.transport.lastDeferred).toBe(false);
    expect(await replyError(attr)).toBe(0);
    expect(h.transport.pending).toBe(1);
    await unblock();
    unblock = null;
    expect((await read).equals(Buffer.alloc(MiB, 3))).toBe(true);
  });
});

describe('one table carries every opcode with its framing', () => {
  it('has rows for the session opcodes and the flags the session frames by', () => {
    expect(OPCODES.get(Opcode.FUSE_INIT)).toMatchObject({ beforeInit: true, noReply: false });
    expect(OPCODES.get(Opcode.FUSE_INTERRUPT)).toMatchObject({ beforeInit: true, noReply: true });
    expect(OPCODES.get(Opcode.FUSE_DESTROY)).toMatchObject({ beforeInit: false, noReply: false });
    for (const op of [Opcode.FUSE_FORGET, Opcode.FUSE_BATCH_FORGET])
      expect(OPCODES.get(op)).toMatchObject({ beforeInit: false, noReply: true });
    expect(OPCODES.get(Opcode.FUSE_READ)).toMatchObject({ beforeInit: false, noReply: false });
    expect(OPCODES.has(Opcode.FUSE_NOTIFY_REPLY)).toBe(false);
  });

  it('frames by the table: before INIT, INTERRUPT is taken silently, FORGET dropped silently, the rest EIO; unknown opcodes ENOSYS', async () => {
    h = Harness.create();
    // INTERRUPT has no client method: the kernel sends it only for a request in flight.
    expect((await h.raw(Opcode.FUSE_INTERRUPT, 0, [encode(P.fuse_interrupt_in, { unique: 99n })])).used).toBe(0);
    // FORGET with room for a reply, as on a request queue: still none.
    expect((await h.raw(Opcode.FUSE_FORGET, 1, [encode(P.fuse_forget_in, { nlookup: 1 })])).used).toBe(0);
    expect(await replyError(h.client.getattr(1))).toBe(-Errno.EIO);
    await h.start();
    expect((await h.raw(Opcode.FUSE_NOTIFY_REPLY, 1)).error).toBe(-Errno.ENOSYS);
    expect(await replyError(h.client.getattr(1))).toBe(0);
  });
});

describe('waiting requests and reused uniques', () => {
  it('a guest reusing the unique of a waiting SETLKW cannot make it uncancellable: INTERRUPT reaches it, DESTROY cancels every waiter', async () => {
    h = Harness.create({ posixLock: true }, (dir) => fs.writeFileSync(path.join(dir, 'f'), 'x'));
    await h.start();
    const node = (await h.client.lookup(1, 'f')).nodeid;
    const fh = await h.open(node, fs.constants.O_RDWR);
    const F_WRLCK = 1;
    const lk = (owner: bigint) => encode(P.fuse_lk_in, { fh, owner, lk: { start: 0n, end: 0n, type: F_WRLCK } });
    /** A request with the unique the test chooses: the one thing no client does. */
    const raw = (opcode: number, nodeid: number, parts: Buffer[], unique: bigint) => {
      const body = Buffer.concat(parts);
      const header = encode(P.fuse_in_header, { len: P.fuse_in_header.size + body.length, opcode, unique, nodeid, pid: 1 });
      return h.transport.raw(Buffer.concat([header, body]));
    };
    expect(await replyError(h.client.setlk(node, fh, 1n, { type: F_WRLCK, start: 0n, end: 0n }))).toBe(0);
    const first = raw(Opcode.FUSE_SETLKW, node, [lk(2n)], 500n);
    expect(h.transport.lastDeferred).toBe(true);
    const second = raw(Opcode.FUSE_SETLKW, node, [lk(3n)], 500n);
    expect(h.transport.lastDeferred).toBe(true);
    // Requests answered at once with the same unique leave the waiters registered.
    const attr = raw(Opcode.FUSE_GETATTR, node, [encode(P.fuse_getattr_in, {})], 500n);
    expect(h.transport.lastDeferred).toBe(false);
    expect((await attr).error).toBe(0);
    expect(h.session.stats.waiting).toBe(2);
    // INTERRUPT reaches the newest request with that unique...
    expect((await h.raw(Opcode.FUSE_INTERRUPT, 0, [encode(P.fuse_interrupt_in, { unique: 500n })])).used).toBe(0);
    expect((await second).error).toBe(-Errno.EINTR);
    expect(h.session.stats.waiting).toBe(1);
    // ...and DESTROY every one still waiting.
    await h.client.destroy();
    expect((await first).error).toBe(-Errno.EINTR);
    expect(h.session.stats.waiting).toBe(0);
  });
});
