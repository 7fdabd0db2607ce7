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
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { OPCODES } from '../../src/fuse-server/dispatcher';
import { Errno } from '../../src/fuse-server/errors';
import * as P from '../../src/fuse-server/protocol';
import { Opcode } from '../../src/fuse-server/protocol';
import { encode } from './fuse-driver';
import { Harness } from './harness';

const MiB = 1 << 20;
/** More blockers than any pool size libuv would start with here (UV_THREADPOOL_SIZE, default 4). */
const BLOCKERS = 32;

let h: Harness;
let unblock: (() => Promise<void>) | null = null;
afterEach(async () => {
  await unblock?.();
  unblock = null;
  h?.close();
});

/** Occupies every thread of the pool until the returned function is called (and awaited). */
function blockPool(dir: string): () => Promise<void> {
  const fds: number[] = [];
  const reads: Promise<void>[] = [];
  for (let i = 0; i < BLOCKERS; i++) {
    const fifo = path.join(dir, `.fifo-${i}`);
    execFileSync('mkfifo', [fifo]);
    // O_RDWR: the open does not wait for a writer, and the read blocks its pool thread.
    const fd = fs.openSync(fifo, fs.constants.O_RDWR);
    fds.push(fd);
    reads.push(new Promise((resolve) => fs.read(fd, Buffer.alloc(1), 0, 1, null, () => resolve())));
  }
  return async () => {
    for (const fd of fds) fs.writeSync(fd, Buffer.from([1]));
    await Promise.all(reads);
    for (const fd of fds) fs.closeSync(fd);
  };
}

const readIn = (fh: number, offset: number, size: number) =>
  encode(P.fuse_read_in, { fh, offset, size, read_flags: 0, lock_owner: 0n, flags: 0 });
const writeIn = (fh: number, offset: number, size: number) =>
  encode(P.fuse_write_in, { fh, offset, size, write_flags: 0, lock_owner: 0n, flags: 0 });
const releaseIn = (fh: number) => encode(P.fuse_release_in, { fh, flags: 0, release_flags: 0, lock_owner: 0n });

function pooled(files: Record<string, Buffer>): Harness {
  const harness = Harness.create({ threadPoolSize: 4 }, (dir) => {
    for (const [name, data] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), data);
  });
  harness.init();
  return harness;
}

describe('blocking file calls off the event loop', () => {
  it('COPY_FILE_RANGE, FALLOCATE and SYNCFS wait on the thread pool while other requests are answered', async () => {
    h = pooled({ a: Buffer.alloc(MiB, 0xaa), b: Buffer.alloc(0) });
    const a = h.lookup(1, 'a');
    const b = h.lookup(1, 'b');
    const fhA = h.open(a.nodeid, fs.constants.O_RDONLY);
    const fhB = h.open(b.nodeid, fs.constants.O_RDWR);
    unblock = blockPool(h.dir);
    // Each is queued behind the blocked pool: none may be answered on the event loop now.
    const copy = h.fuse.start(Opcode.FUSE_COPY_FILE_RANGE, a.nodeid, [
      encode(P.fuse_copy_file_range_in, { fh_in: fhA, off_in: 0, nodeid_out: b.nodeid, fh_out: fhB, off_out: 0, len: MiB, flags: 0 }),
    ]);
    expect(copy).toBeInstanceOf(Promise);
    const falloc = h.fuse.start(Opcode.FUSE_FALLOCATE, b.nodeid, [
      encode(P.fuse_fallocate_in, { fh: fhB, offset: 0, length: 2 * MiB, mode: 0 }),
    ]);
    expect(falloc).toBeInstanceOf(Promise);
    const sync = h.fuse.start(Opcode.FUSE_SYNCFS, 1, [encode(P.fuse_syncfs_in, {})]);
    expect(sync).toBeInstanceOf(Promise);
    // The event loop is free meanwhile.
    expect(h.fuse.request(Opcode.FUSE_GETATTR, a.nodeid, [encode(P.fuse_getattr_in, { getattr_flags: 0, fh: 0 })]).error).toBe(0);
    await unblock();
    unblock = null;
    const [c, f, y] = await Promise.all([copy, falloc, sync]);
    expect([c.error, f.error, y.error]).toEqual([0, 0, 0]);
    expect(c.body.readUInt32LE(0)).toBe(MiB);
    expect(fs.readFileSync(path.join(h.dir, 'b')).subarray(0, MiB).equals(Buffer.alloc(MiB, 0xaa))).toBe(true);
    expect(fs.statSync(path.join(h.dir, 'b')).size).toBe(2 * MiB);
  });
});

describe('requests that finish later', () => {
  it('answer into their own chains, in the order they finish, while later requests are answered at once', async () => {
    h = pooled({ a: Buffer.alloc(MiB, 0xaa) });
    const a = h.lookup(1, 'a');
    const fh = h.open(a.nodeid, fs.constants.O_RDWR);
    unblock = blockPool(h.dir);
    const read = h.fuse.start(Opcode.FUSE_READ, a.nodeid, [readIn(fh, 0, MiB)], { replySize: 16 + MiB });
    const readUnique = h.fuse.lastUnique;
    expect(read).toBeInstanceOf(Promise);
    const fsync = h.fuse.start(Opcode.FUSE_FSYNC, a.nodeid, [encode(P.fuse_fsync_in, { fh, fsync_flags: 0 })]);
    const fsyncUnique = h.fuse.lastUnique;
    expect(fsync).toBeInstanceOf(Promise);
    // Served meanwhile, on the event loop: its reply is complete before the READ's.
    const attr = h.fuse.request(Opcode.FUSE_GETATTR, a.nodeid, [encode(P.fuse_getattr_in, { getattr_flags: 0, fh: 0 })]);
    expect(attr.error).toBe(0);
    expect(attr.unique).toBe(h.fuse.lastUnique);
    await unblock();
    unblock = null;
    const [r, f] = await Promise.all([read, fsync]);
    expect(r.unique).toBe(readUnique);
    expect(r.error).toBe(0);
    expect(r.body.equals(Buffer.alloc(MiB, 0xaa))).toBe(true);
    expect(f.unique).toBe(fsyncUnique);
    expect(f.error).toBe(0);
  });

  it('RELEASE while a READ of the handle is in flight: the READ still reads the file it named, though the fd number was reused', async () => {
    h = pooled({ a: Buffer.alloc(MiB, 0xaa), b: Buffer.alloc(MiB, 0xbb) });
    const a = h.lookup(1, 'a');
    const fh = h.open(a.nodeid, fs.constants.O_RDONLY);
    unblock = blockPool(h.dir);
    const read = h.fuse.start(Opcode.FUSE_READ, a.nodeid, [readIn(fh, 0, MiB)], { replySize: 16 + MiB });
    expect(read).toBeInstanceOf(Promise);
    // The guest closes the file: RELEASE is answered at once and the handle is gone...
    expect(h.fuse.request(Opcode.FUSE_RELEASE, a.nodeid, [releaseIn(fh)]).error).toBe(0);
    expect(h.fuse.request(Opcode.FUSE_READ, a.nodeid, [readIn(fh, 0, 1)]).error).toBe(-Errno.EBADF);
    // ...and the next open takes the fd numbers it freed.
    const b = h.lookup(1, 'b');
    h.open(b.nodeid, fs.constants.O_RDONLY);
    await unblock();
    unblock = null;
    const r = await read;
    expect(r.error).toBe(0);
    expect(r.body.length).toBe(MiB);
    expect(r.body.equals(Buffer.alloc(MiB, 0xaa))).toBe(true);
  });

  it('DESTROY while a WRITE is in flight: the write lands in the file it named and is still answered', async () => {
    h = pooled({ a: Buffer.alloc(0), b: Buffer.alloc(0) });
    const a = h.lookup(1, 'a');
    const fh = h.open(a.nodeid, fs.constants.O_WRONLY);
    const data = Buffer.alloc(256 * 1024, 0x5c);
    unblock = blockPool(h.dir);
    const write = h.fuse.start(Opcode.FUSE_WRITE, a.nodeid, [writeIn(fh, 0, data.length), data]);
    expect(write).toBeInstanceOf(Promise);
    expect(h.fuse.request(Opcode.FUSE_DESTROY, 0, []).error).toBe(0);
    expect(h.session.stats.handles).toBe(0);
    // A new session reuses the fd numbers for another file.
    h.init();
    const b = h.lookup(1, 'b');
    h.open(b.nodeid, fs.constants.O_WRONLY);
    await unblock();
    unblock = null;
    const w = await write;
    expect(w.error).toBe(0);
    expect(P.fuse_write_out.decode(w.body, 0).size).toBe(data.length);
    expect(fs.readFileSync(h.p('a')).equals(data)).toBe(true);
    expect(fs.statSync(h.p('b')).size).toBe(0);
  });

  it('FORGET of the inode while a READ through its handle is in flight: the READ completes', async () => {
    h = pooled({ a: Buffer.alloc(MiB, 0x11) });
    const a = h.lookup(1, 'a');
    const fh = h.open(a.nodeid, fs.constants.O_RDONLY);
    unblock = blockPool(h.dir);
    const read = h.fuse.start(Opcode.FUSE_READ, a.nodeid, [readIn(fh, 0, MiB)], { replySize: 16 + MiB });
    h.forget(a.nodeid, 1);
    await unblock();
    unblock = null;
    const r = await read;
    expect(r.error).toBe(0);
    expect(r.body.equals(Buffer.alloc(MiB, 0x11))).toBe(true);
    h.release(a.nodeid, fh);
  });

  it('without --thread-pool-size READ and WRITE answer at once, and FSYNC later', async () => {
    h = Harness.create({}, (dir) => fs.writeFileSync(path.join(dir, 'a'), Buffer.alloc(MiB, 1)));
    h.init();
    const a = h.lookup(1, 'a');
    const fh = h.open(a.nodeid, fs.constants.O_RDWR);
    expect(h.fuse.start(Opcode.FUSE_READ, a.nodeid, [readIn(fh, 0, MiB)], { replySize: 16 + MiB })).not.toBeInstanceOf(Promise);
    const fsync = h.fuse.start(Opcode.FUSE_FSYNC, a.nodeid, [encode(P.fuse_fsync_in, { fh, fsync_flags: P.FUSE_FSYNC_FDATASYNC })]);
    expect(fsync).toBeInstanceOf(Promise);
    expect((await fsync).error).toBe(0);
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

  it('frames by the table: before INIT, INTERRUPT is taken silently, FORGET dropped silently, the rest EIO; unknown opcodes ENOSYS', () => {
    h = Harness.create();
    expect(h.fuse.request(Opcode.FUSE_INTERRUPT, 0, [encode(P.fuse_interrupt_in, { unique: 99n })]).used).toBe(0);
    expect(h.fuse.request(Opcode.FUSE_FORGET, 1, [encode(P.fuse_forget_in, { nlookup: 1 })]).used).toBe(0);
    expect(h.fuse.request(Opcode.FUSE_GETATTR, 1, [encode(P.fuse_getattr_in, { getattr_flags: 0, fh: 0 })]).error).toBe(-Errno.EIO);
    h.init();
    expect(h.fuse.request(Opcode.FUSE_NOTIFY_REPLY, 1, []).error).toBe(-Errno.ENOSYS);
    expect(h.fuse.request(Opcode.FUSE_GETATTR, 1, [encode(P.fuse_getattr_in, { getattr_flags: 0, fh: 0 })]).error).toBe(0);
  });
});

describe('waiting requests and reused uniques', () => {
  it('a guest reusing the unique of a waiting SETLKW cannot make it uncancellable: INTERRUPT reaches it, DESTROY cancels every waiter', async () => {
    h = Harness.create({ posixLock: true }, (dir) => fs.writeFileSync(path.join(dir, 'f'), 'x'));
    h.init();
    const node = h.lookup(1, 'f').nodeid;
    const fh = h.open(node, fs.constants.O_RDWR);
    const F_WRLCK = 1;
    const lk = (owner: bigint) => h.lkIn(fh, owner, F_WRLCK, 0n, 0n);
    /** A request with the unique the test chooses. */
    const raw = (opcode: number, nodeid: number, parts: Buffer[], unique: bigint) => {
      const body = Buffer.concat(parts);
      const header = encode(P.fuse_in_header, {
        len: P.fuse_in_header.size + body.length,
        opcode,
        unique,
        nodeid,
        uid: 0,
        gid: 0,
        pid: 1,
        total_extlen: 0,
      });
      return h.fuse.sendRawAsync(Buffer.concat([header, body]));
    };
    expect(h.fuse.request(Opcode.FUSE_SETLK, node, [lk(1n)]).error).toBe(0);
    const first = raw(Opcode.FUSE_SETLKW, node, [lk(2n)], 500n);
    const second = raw(Opcode.FUSE_SETLKW, node, [lk(3n)], 500n);
    expect(first).toBeInstanceOf(Promise);
    expect(second).toBeInstanceOf(Promise);
    // Requests answered at once with the same unique leave the waiters registered.
    const attr = raw(Opcode.FUSE_GETATTR, node, [encode(P.fuse_getattr_in, { getattr_flags: 0, fh: 0 })], 500n) as { error: number };
    expect(attr.error).toBe(0);
    expect(h.session.stats.waiting).toBe(2);
    // INTERRUPT reaches the newest request with that unique...
    expect(h.fuse.request(Opcode.FUSE_INTERRUPT, 0, [encode(P.fuse_interrupt_in, { unique: 500n })]).used).toBe(0);
    expect((await second).error).toBe(-Errno.EINTR);
    expect(h.session.stats.waiting).toBe(1);
    // ...and DESTROY every one still waiting.
    h.fuse.ok(Opcode.FUSE_DESTROY, 0);
    expect((await first).error).toBe(-Errno.EINTR);
    expect(h.session.stats.waiting).toBe(0);
  });
});
