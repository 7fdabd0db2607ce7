import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { FuseSession, FuseSessionOptions } from '../../src/fuse-server/session';
import * as P from '../../src/fuse-server/protocol';
import { Opcode } from '../../src/fuse-server/protocol';
import { Errno } from '../../src/sys/errno';
import { type FuseClient, RENAME_EXCHANGE, RENAME_NOREPLACE } from '../../src/guest/fuse-driver';
import { type DirectTransport, type RawReply, cstr, encode, openFdCount, replyError } from './fuse-driver';
import { Harness, O_CREAT, O_EXCL, O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY, S_IFDIR, S_IFLNK, S_IFREG } from './harness';

const S_IFIFO = 0o010000;
/** The INIT offer of a minimal client (no DONT_MASK, no SETXATTR_EXT, no locks): what the session then agrees to is checked below. */
const OFFER = P.FUSE_ASYNC_READ | P.FUSE_BIG_WRITES | P.FUSE_DO_READDIRPLUS | P.FUSE_READDIRPLUS_AUTO | P.FUSE_MAX_PAGES | P.FUSE_INIT_EXT;

let dir: string;
let h: Harness;
let session: FuseSession;
let c: FuseClient<DirectTransport>;

function start(options: Partial<FuseSessionOptions> = {}): void {
  h = new Harness(dir, options);
  session = h.session;
  c = h.client;
}

/** INIT with OFFER. */
function init(): Promise<P.InitOut> {
  return h.start(OFFER, 0);
}

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fuse-session-'));
});

afterEach(() => {
  h?.shutdown();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** A request framed as the client would, with arguments it would not send; the raw reply. */
function raw(opcode: number, nodeid: number, args: Buffer[] = [], opts: Parameters<Harness['raw']>[3] = {}): Promise<RawReply> {
  return h.raw(opcode, nodeid, args, opts);
}
async function open(nodeid: number, flags: number): Promise<{ fh: number; openFlags: number }> {
  const o = await c.open(nodeid, flags);
  return { fh: o.fh, openFlags: o.open_flags };
}
async function opendir(nodeid: number): Promise<{ fh: number; openFlags: number }> {
  const o = await c.opendir(nodeid, O_RDONLY);
  return { fh: o.fh, openFlags: o.open_flags };
}
/** FORGET with room for a reply (as if on a request queue): none is written. */
async function forget(nodeid: number, nlookup: number): Promise<void> {
  expect((await raw(Opcode.FUSE_FORGET, nodeid, [encode(P.fuse_forget_in, { nlookup })])).used).toBe(0);
}
/** Lists a directory fully, in READDIR(PLUS) replies of at most `size` bytes. */
async function listAll(
  nodeid: number,
  plus: boolean,
  size: number,
): Promise<{ name: string; ino: bigint; type: number; entry?: P.EntryOut }[]> {
  const { fh } = await opendir(nodeid);
  const all: { name: string; ino: bigint; type: number; entry?: P.EntryOut }[] = [];
  let offset = 0n;
  for (;;) {
    const batch = plus ? await c.readdirplus(nodeid, fh, offset, size) : await c.readdir(nodeid, fh, offset, size);
    if (batch.length === 0) break;
    all.push(...batch);
    offset = batch[batch.length - 1].off;
  }
  await c.releasedir(nodeid, fh);
  return all;
}

describe('INIT', () => {
  beforeEach(() => start());

  it('answers requests before INIT with EIO and drops FORGETs silently', async () => {
    expect(await replyError(c.getattr(1))).toBe(-Errno.EIO);
    await forget(1, 1);
  });

  it('negotiates 7.38 with the flags we support and a 1 MiB max_write', async () => {
    const out = await init();
    expect(out.major).toBe(7);
    expect(out.minor).toBe(38);
    expect(out.max_readahead).toBe(131072);
    expect(out.max_write).toBe(1024 * 1024);
    expect(out.max_pages).toBe(256);
    const offered =
      P.FUSE_ASYNC_READ | P.FUSE_BIG_WRITES | P.FUSE_DO_READDIRPLUS | P.FUSE_READDIRPLUS_AUTO | P.FUSE_MAX_PAGES | P.FUSE_INIT_EXT;
    expect(out.flags).toBe(offered);
    expect(out.flags2).toBe(0);
  });

  it('accepts an older kernel with the short init_in and answers its minor', async () => {
    // The 16-byte fuse_init_in of protocols before 7.36: the client sends only the long one.
    const short = encode(P.fuse_init_in, {
      major: 7,
      minor: 31,
      max_readahead: 4096,
      flags: 0xffffffff & ~P.FUSE_INIT_EXT,
      flags2: 0,
    }).subarray(0, 16);
    const r = await raw(Opcode.FUSE_INIT, 0, [short]);
    expect(r.error).toBe(0);
    const out = P.fuse_init_out.decode(r.body, 0);
    expect(out.minor).toBe(31);
    // Never more than we can serve, e.g. no POSIX locks or writeback cache yet.
    expect(out.flags & P.FUSE_POSIX_LOCKS).toBe(0);
    expect(out.flags & P.FUSE_WRITEBACK_CACHE).toBe(0);
    expect(out.flags & P.FUSE_HANDLE_KILLPRIV_V2).toBe(0);
    expect(out.flags & P.FUSE_EXPORT_SUPPORT).toBe(P.FUSE_EXPORT_SUPPORT);
  });

  it('refuses protocol versions no virtio-fs guest speaks', async () => {
    expect(await replyError(c.init({ major: 7, minor: 20, maxReadahead: 0, flags: 0, flags2: 0 }))).toBe(-Errno.EPROTO);
    expect(await replyError(c.statfs(1))).toBe(-Errno.EIO);
  });

  it('answers a newer major with its own and stays uninitialised', async () => {
    const out = await c.init({ major: 8, minor: 0, maxReadahead: 0, flags: 0, flags2: 0 });
    expect(out.major).toBe(7);
    expect(await replyError(c.statfs(1))).toBe(-Errno.EIO);
  });

  it('DESTROY ends the session until the next INIT', async () => {
    await init();
    expect(await replyError(c.destroy())).toBe(0);
    expect(await replyError(c.statfs(1))).toBe(-Errno.EIO);
    await init();
    expect(await replyError(c.statfs(1))).toBe(0);
  });
});

describe('passthrough operations', () => {
  beforeEach(async () => {
    start();
    await init();
  });

  it('looks up and stats files of the shared directory', async () => {
    fs.writeFileSync(path.join(dir, 'hello.txt'), 'hello world');
    const e = await c.lookup(1, 'hello.txt');
    const st = fs.statSync(path.join(dir, 'hello.txt'), { bigint: true });
    expect(e.nodeid).toBeGreaterThan(1);
    expect(e.attr.ino).toBe(st.ino);
    expect(e.attr.size).toBe(11);
    expect(e.attr.mode).toBe(Number(st.mode));
    expect(e.entry_valid).toBe(1);
    expect(e.attr_valid).toBe(1);
    expect((await c.lookup(1, 'hello.txt')).nodeid).toBe(e.nodeid);
    expect((await c.getattr(e.nodeid)).attr.size).toBe(11);
    expect((await c.getattr(1)).attr.mode & S_IFDIR).toBe(S_IFDIR);
  });

  it('gives hard links one nodeid', async () => {
    fs.writeFileSync(path.join(dir, 'a'), '');
    fs.linkSync(path.join(dir, 'a'), path.join(dir, 'b'));
    expect((await c.lookup(1, 'a')).nodeid).toBe((await c.lookup(1, 'b')).nodeid);
  });

  it('creates, writes and reads back a file, data split across buffers', async () => {
    const { entry, fh, openFlags } = await h.create(1, 'new.bin');
    expect(openFlags).toBe(0); // cache=auto: page cache, not kept across opens
    const data = Buffer.alloc(100_000);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7 + 3) & 0xff;
    // 100 000 bytes: on the thread pool (ASYNC_MIN_BYTES), as the FSYNC below.
    expect(await c.write(entry.nodeid, fh, 10, data)).toBe(data.length);
    expect(fs.readFileSync(path.join(dir, 'new.bin')).subarray(10).equals(data)).toBe(true);

    const back = await c.read(entry.nodeid, fh, 10, 200_000);
    expect(back.equals(data)).toBe(true);
    const tail = await c.read(entry.nodeid, fh, 100_000, 100);
    expect(tail.equals(data.subarray(99_990))).toBe(true);
    expect((await c.read(entry.nodeid, fh, 1 << 20, 100)).length).toBe(0);

    await c.flush(entry.nodeid, fh, 1n);
    await c.fsync(entry.nodeid, fh, true);
    await c.release(entry.nodeid, fh);
    expect(await replyError(c.read(entry.nodeid, fh, 0, 1))).toBe(-Errno.EBADF);
    expect(session.stats.handles).toBe(0);
  });

  it('opens existing files, honouring O_TRUNC', async () => {
    fs.writeFileSync(path.join(dir, 'f'), 'some content');
    const e = await c.lookup(1, 'f');
    const { fh } = await open(e.nodeid, O_RDONLY);
    expect((await c.read(e.nodeid, fh, 5, 100)).toString()).toBe('content');
    const w = await open(e.nodeid, O_WRONLY | O_TRUNC);
    expect(fs.statSync(path.join(dir, 'f')).size).toBe(0);
    await c.release(e.nodeid, fh);
    await c.release(e.nodeid, w.fh);
  });

  it('CREATE with O_EXCL fails on an existing name', async () => {
    fs.writeFileSync(path.join(dir, 'x'), '');
    expect(await replyError(c.create(1, 'x', O_RDWR | O_CREAT | O_EXCL, 0o644))).toBe(-Errno.EEXIST);
  });

  it('lists a directory with READDIR and READDIRPLUS, across several replies', async () => {
    const names = Array.from({ length: 40 }, (_, i) => `file-${i}-${'x'.repeat(i)}`);
    for (const n of names) fs.writeFileSync(path.join(dir, n), n);
    fs.mkdirSync(path.join(dir, 'sub'));
    const expected = ['.', '..', 'sub', ...names].sort();

    const plain = await listAll(1, false, 512);
    expect(plain.map((d) => d.name).sort()).toEqual(expected);
    expect(plain.find((d) => d.name === 'sub')!.type).toBe(4); // DT_DIR
    expect(plain.find((d) => d.name === names[0])!.ino).toBe(fs.statSync(path.join(dir, names[0]), { bigint: true }).ino);

    const before = session.stats.inodes;
    const plus = await listAll(1, true, 1024);
    expect(plus.map((d) => d.name).sort()).toEqual(expected);
    for (const d of plus) {
      if (d.name === '.' || d.name === '..') {
        expect(d.entry!.nodeid).toBe(0);
      } else {
        expect(d.entry!.nodeid).toBeGreaterThan(1);
        expect(d.entry!.attr.ino).toBe(d.ino);
      }
    }
    // Each listed entry counts one lookup; entries that did not fit were not left counted.
    expect(session.stats.inodes).toBe(before + names.length + 1);
    for (const d of plus) if (d.entry!.nodeid) await forget(d.entry!.nodeid, 1);
    expect(session.stats.inodes).toBe(before);
  });

  it('makes, renames and removes names', async () => {
    const d = await c.mkdir(1, 'dir', 0o750);
    expect(d.attr.mode).toBe(S_IFDIR | 0o750);
    expect(fs.statSync(path.join(dir, 'dir')).mode & 0o777).toBe(0o750);
    const f = await h.create(d.nodeid, 'a');
    await c.release(f.entry.nodeid, f.fh);

    await c.rename(d.nodeid, 'a', 1, 'b');
    expect(fs.existsSync(path.join(dir, 'b'))).toBe(true);
    expect((await c.lookup(1, 'b')).nodeid).toBe(f.entry.nodeid);

    fs.writeFileSync(path.join(dir, 'dir', 'c'), 'c');
    expect(await replyError(c.rename(1, 'b', d.nodeid, 'c', RENAME_NOREPLACE))).toBe(-Errno.EEXIST);
    await c.rename(1, 'b', d.nodeid, 'c', RENAME_EXCHANGE);
    expect(fs.readFileSync(path.join(dir, 'b'), 'utf8')).toBe('c');
    expect(fs.readFileSync(path.join(dir, 'dir', 'c'), 'utf8')).toBe('');

    expect(await replyError(c.rmdir(1, 'dir'))).toBe(-Errno.ENOTEMPTY);
    await c.unlink(d.nodeid, 'c');
    await c.rmdir(1, 'dir');
    await c.unlink(1, 'b');
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  it('symlinks, readlink, hard links, mknod and access', async () => {
    const link = await c.symlink(1, 'ln', '../outside/target');
    expect(link.attr.mode & 0o170000).toBe(S_IFLNK);
    expect((await c.readlink(link.nodeid)).toString()).toBe('../outside/target');
    expect(fs.readlinkSync(path.join(dir, 'ln'))).toBe('../outside/target');
    // Lookups never follow a symlink: getattr describes the link itself.
    expect((await c.getattr(link.nodeid)).attr.mode & 0o170000).toBe(S_IFLNK);

    fs.writeFileSync(path.join(dir, 'orig'), 'x');
    const orig = await c.lookup(1, 'orig');
    const hard = await c.link(orig.nodeid, 1, 'hard');
    expect(hard.nodeid).toBe(orig.nodeid);
    expect(hard.attr.nlink).toBe(2);

    const fifo = await c.mknod(1, 'fifo', S_IFIFO | 0o600);
    expect(fifo.attr.mode).toBe(S_IFIFO | 0o600);
    // Opening a FIFO would block the daemon: refused.
    expect(await replyError(c.open(fifo.nodeid, O_RDONLY))).toBe(-Errno.EINVAL);

    // Raw: the client's access() takes no credentials of its own.
    const access = async (nodeid: number, mask: number, uid: number) =>
      (await raw(Opcode.FUSE_ACCESS, nodeid, [encode(P.fuse_access_in, { mask })], { uid, gid: uid })).error;
    fs.chmodSync(path.join(dir, 'orig'), 0o640);
    expect(await access(orig.nodeid, 4, 0)).toBe(0);
    expect(await access(orig.nodeid, 1, 0)).toBe(-Errno.EACCES);
    expect(await access(orig.nodeid, 4, 1234)).toBe(-Errno.EACCES);
    expect(await access(orig.nodeid, 0, 1234)).toBe(0);
  });

  it('SETATTR truncates, chmods, chowns and sets times', async () => {
    fs.writeFileSync(path.join(dir, 'f'), 'x'.repeat(1000));
    const e = await c.lookup(1, 'f');
    let attr = (await c.setattr(e.nodeid, { size: 10 })).attr;
    expect(attr.size).toBe(10);
    expect(fs.statSync(path.join(dir, 'f')).size).toBe(10);

    const { fh } = await open(e.nodeid, O_RDWR);
    attr = (await c.setattr(e.nodeid, { fh, size: 5000 })).attr;
    expect(attr.size).toBe(5000);

    attr = (
      await c.setattr(e.nodeid, {
        mode: 0o600,
        uid: 123,
        gid: 456,
        atime: { sec: 1_000_000_000, nsec: 5 },
        mtime: { sec: -100, nsec: 7 },
      })
    ).attr;
    expect(attr.mode).toBe(S_IFREG | 0o600);
    expect([attr.uid, attr.gid]).toEqual([123, 456]);
    expect([attr.atime, attr.atimensec, attr.mtime, attr.mtimensec]).toEqual([1_000_000_000, 5, -100, 7]);

    const before = Date.now() / 1000 - 5;
    attr = (await c.setattr(e.nodeid, { mtime: 'now' })).attr;
    expect(attr.mtime).toBeGreaterThan(before);
    expect(attr.atime).toBe(1_000_000_000);
    await c.release(e.nodeid, fh);
  });

  it('creates files as the calling guest user', async () => {
    fs.chmodSync(dir, 0o777);
    const f = await h.create(1, 'mine', { mode: 0o600, uid: 1000, gid: 1000 });
    expect([f.entry.attr.uid, f.entry.attr.gid]).toEqual([1000, 1000]);
    expect(fs.statSync(path.join(dir, 'mine')).uid).toBe(1000);
    const d = await c.mkdir(1, 'd', 0o700, 0, { uid: 1000, gid: 1000 });
    expect(d.attr.uid).toBe(1000);
    // The daemon's own credentials are back afterwards.
    await c.mkdir(1, 'rootdir', 0o700);
    expect(fs.statSync(path.join(dir, 'rootdir')).uid).toBe(process.getuid!());
  });

  it('STATFS reports the host file system', async () => {
    const st = await c.statfs(1);
    const host = fs.statfsSync(dir);
    expect(st.blocks).toBe(host.blocks);
    expect(st.bsize).toBe(host.bsize);
    expect(st.namelen).toBe(255);
  });

  it('FORGET frees the inode and closes its fd; BATCH_FORGET too', async () => {
    for (const n of ['a', 'b', 'c']) fs.writeFileSync(path.join(dir, n), '');
    const fds = openFdCount();
    const a = await c.lookup(1, 'a');
    await c.lookup(1, 'a');
    const b = await c.lookup(1, 'b');
    const cc = await c.lookup(1, 'c');
    expect(openFdCount()).toBe(fds + 3);
    await forget(a.nodeid, 1);
    expect(openFdCount()).toBe(fds + 3); // one lookup of `a` is still held
    await forget(a.nodeid, 1);
    expect(openFdCount()).toBe(fds + 2);
    expect(await replyError(c.getattr(a.nodeid))).toBe(-Errno.EBADF);

    const batch = Buffer.concat([
      encode(P.fuse_batch_forget_in, { count: 3 }),
      encode(P.fuse_forget_one, { nodeid: b.nodeid, nlookup: 1 }),
      encode(P.fuse_forget_one, { nodeid: cc.nodeid, nlookup: 2 ** 60 }),
      // count says 3, but only two entries are present
    ]);
    expect((await raw(Opcode.FUSE_BATCH_FORGET, 0, [batch])).used).toBe(0);
    expect(openFdCount()).toBe(fds);
    expect(session.stats.inodes).toBe(1);
    // FORGET comes on the high-priority queue with no writable buffers at all (the client posts it so; it rejects on any used length but 0).
    const d = await c.lookup(1, 'a');
    expect(openFdCount()).toBe(fds + 1);
    await expect(c.forget(d.nodeid, 1)).resolves.toBeUndefined();
    expect(openFdCount()).toBe(fds);
    // The root is never forgotten.
    await forget(1, 100);
    expect((await c.getattr(1)).attr.mode & S_IFDIR).toBe(S_IFDIR);
  });

  it('reset() closes every inode and handle fd', async () => {
    fs.writeFileSync(path.join(dir, 'a'), 'data');
    const fds = openFdCount();
    const a = await c.lookup(1, 'a');
    await open(a.nodeid, O_RDONLY);
    await opendir(1);
    expect(openFdCount()).toBe(fds + 3);
    session.reset();
    expect(openFdCount()).toBe(fds);
    expect(session.stats).toEqual({ inodes: 1, handles: 0, lockFds: 0, waiting: 0 });
    expect(await replyError(c.statfs(1))).toBe(-Errno.EIO);
  });
});

describe('guest input that must be refused', () => {
  beforeEach(async () => {
    start();
    await init();
  });

  it('passes host errnos through', async () => {
    expect(await replyError(c.lookup(1, 'missing'))).toBe(-Errno.ENOENT);
    fs.writeFileSync(path.join(dir, 'file'), '');
    const f = await c.lookup(1, 'file');
    expect(await replyError(c.lookup(f.nodeid, 'x'))).toBe(-Errno.ENOTDIR);
    expect(await replyError(c.opendir(f.nodeid))).toBe(-Errno.ENOTDIR);
    expect(await replyError(c.mkdir(1, 'file', 0o755))).toBe(-Errno.EEXIST);
  });

  it('refuses names that are not one path component', async () => {
    fs.mkdirSync(path.join(dir, 'sub'));
    fs.writeFileSync(path.join(dir, 'sub', 'f'), '');
    expect(await replyError(c.lookup(1, 'sub/f'))).toBe(-Errno.EINVAL);
    expect(await replyError(c.lookup(1, '/etc'))).toBe(-Errno.EINVAL);
    expect(await replyError(c.lookup(1, ''))).toBe(-Errno.EINVAL);
    expect((await raw(Opcode.FUSE_LOOKUP, 1, [Buffer.from('sub')])).error).toBe(-Errno.EINVAL); // no NUL
    // '.' and '..' answer what Linux answers for mkdir("..") and unlink(".").
    expect(await replyError(c.mkdir(1, '..', 0o755))).toBe(-Errno.EEXIST);
    expect(await replyError(c.unlink(1, '.'))).toBe(-Errno.EISDIR);
    expect(await replyError(c.rename(1, 'sub', 1, 'a/b'))).toBe(-Errno.EINVAL);
    expect(await replyError(c.create(1, '../escape', O_RDWR, 0o644))).toBe(-Errno.EINVAL);
    expect(fs.existsSync(path.join(dir, '..', 'escape'))).toBe(false);
  });

  it('keeps `..` at the root inside the shared directory', async () => {
    const up = await c.lookup(1, '..');
    expect(up.nodeid).toBe(1);
    fs.mkdirSync(path.join(dir, 'sub'));
    const sub = await c.lookup(1, 'sub');
    expect((await c.lookup(sub.nodeid, '..')).nodeid).toBe(1);
    expect((await c.lookup(sub.nodeid, '.')).nodeid).toBe(sub.nodeid);
  });

  it('answers short payloads with EINVAL', async () => {
    expect((await raw(Opcode.FUSE_MKDIR, 1, [Buffer.alloc(4)])).error).toBe(-Errno.EINVAL);
    expect((await raw(Opcode.FUSE_GETATTR, 1, [Buffer.alloc(15)])).error).toBe(-Errno.EINVAL);
    expect((await raw(Opcode.FUSE_READ, 1, [])).error).toBe(-Errno.EINVAL);
    // WRITE claiming more data than the request carries.
    const f = await h.create(1, 'w');
    const writeIn = encode(P.fuse_write_in, { fh: f.fh, offset: 0, size: 100 });
    expect((await raw(Opcode.FUSE_WRITE, f.entry.nodeid, [writeIn, Buffer.alloc(99)])).error).toBe(-Errno.EINVAL);
    // A header whose len runs past the chain.
    expect((await raw(Opcode.FUSE_STATFS, 1, [], { len: 1000 })).error).toBe(-Errno.EINVAL);
    expect((await raw(Opcode.FUSE_STATFS, 1, [], { len: 8 })).error).toBe(-Errno.EINVAL);
    // len cuts off the name's NUL that the chain does carry.
    const r = await raw(Opcode.FUSE_LOOKUP, 1, [cstr('w')], { len: 41 });
    expect(r.error).toBe(-Errno.EINVAL);
  });

  it('answers unknown and unimplemented opcodes with ENOSYS, INTERRUPT with nothing', async () => {
    expect((await raw(99, 1)).error).toBe(-Errno.ENOSYS);
    // Not for virtio-fs: block maps, ioctls, poll, notification replies, CUSE (4096).
    for (const op of [Opcode.FUSE_BMAP, Opcode.FUSE_IOCTL, Opcode.FUSE_POLL, Opcode.FUSE_NOTIFY_REPLY, 4096]) {
      expect((await raw(op, 1, [Buffer.alloc(64)])).error).toBe(-Errno.ENOSYS);
    }
    // Without --xattr, as in virtiofsd: the guest kernel then stops asking.
    expect(await replyError(c.getxattrSize(1, 'user.x'))).toBe(-Errno.ENOSYS);
    expect((await raw(Opcode.FUSE_INTERRUPT, 0, [Buffer.alloc(8)])).used).toBe(0);
  });

  it('answers unknown nodeids and handles with EBADF', async () => {
    expect(await replyError(c.getattr(12345))).toBe(-Errno.EBADF);
    expect(await replyError(c.read(1, 999, 0, 10))).toBe(-Errno.EBADF);
    // A nodeid no number the client holds can spell: raw bytes.
    const bytes = h.transport.frame({ opcode: Opcode.FUSE_GETATTR, nodeid: 0, args: [encode(P.fuse_getattr_in, {})] });
    bytes.writeBigUInt64LE(0xffff_ffff_ffff_ffffn, 16); // nodeid
    expect((await h.transport.raw(bytes)).error).toBe(-Errno.EBADF);
  });

  it('drops chains too short for a header or a reply, and survives garbage', async () => {
    expect(session.handle([Buffer.alloc(39)], [Buffer.alloc(100)])).toBe(0);
    expect(session.handle([h.transport.frame({ opcode: Opcode.FUSE_STATFS, nodeid: 1 })], [Buffer.alloc(15)])).toBe(0);
    expect(session.handle([], [])).toBe(0);
    // Whatever comes in, a header-sized request gets a well-formed reply or none, and never a throw.
    let seed = 1;
    const rand = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
    for (let i = 0; i < 2000; i++) {
      const req = Buffer.alloc(40 + Math.floor(rand() * 200));
      for (let j = 0; j < req.length; j++) req[j] = Math.floor(rand() * 256);
      req.writeUInt32LE(req.length, 0);
      req.writeUInt32LE(1 + Math.floor(rand() * 52), 4);
      req.writeBigUInt64LE(BigInt(Math.floor(rand() * 4)), 16);
      const used = session.handle([req], [Buffer.alloc(4096)]);
      expect(typeof used).toBe('number');
    }
    await init();
    expect(await replyError(c.statfs(1))).toBe(0);
  });
});

describe('cache modes', () => {
  it('never: zero timeouts and direct I/O', async () => {
    start({ cache: 'never' });
    await init();
    const f = await h.create(1, 'f');
    expect([f.entry.entry_valid, f.entry.attr_valid, f.entry.entry_valid_nsec]).toEqual([0, 0, 0]);
    expect(f.openFlags).toBe(P.FOPEN_DIRECT_IO);
  });

  it('metadata: long timeouts, direct I/O for data', async () => {
    start({ cache: 'metadata' });
    await init();
    fs.writeFileSync(path.join(dir, 'f'), '');
    const e = await c.lookup(1, 'f');
    expect(e.entry_valid).toBe(86400);
    expect((await open(e.nodeid, O_RDONLY)).openFlags).toBe(P.FOPEN_DIRECT_IO);
  });

  it('always: long timeouts, kept page cache and cached directories', async () => {
    start({ cache: 'always' });
    await init();
    fs.writeFileSync(path.join(dir, 'f'), '');
    const e = await c.lookup(1, 'f');
    expect([e.entry_valid, e.attr_valid]).toEqual([86400, 86400]);
    expect((await open(e.nodeid, O_RDONLY)).openFlags).toBe(P.FOPEN_KEEP_CACHE);
    expect((await opendir(1)).openFlags).toBe(P.FOPEN_KEEP_CACHE | P.FOPEN_CACHE_DIR);
  });
});

describe('read-only', () => {
  beforeEach(async () => {
    fs.writeFileSync(path.join(dir, 'f'), 'read me');
    start({ readonly: true });
    await init();
  });

  it('serves reads', async () => {
    const e = await c.lookup(1, 'f');
    const { fh } = await open(e.nodeid, O_RDONLY);
    expect((await c.read(e.nodeid, fh, 0, 100)).toString()).toBe('read me');
    expect((await listAll(1, true, 4096)).map((d) => d.name).sort()).toEqual(['.', '..', 'f']);
  });

  it('answers every change with EROFS', async () => {
    const e = await c.lookup(1, 'f');
    const erofs = -Errno.EROFS;
    expect(await replyError(c.open(e.nodeid, O_RDWR))).toBe(erofs);
    expect(await replyError(c.open(e.nodeid, O_RDONLY | O_TRUNC))).toBe(erofs);
    expect(await replyError(c.setattr(e.nodeid, { size: 0 }))).toBe(erofs);
    expect(await replyError(c.mkdir(1, 'd', 0o755))).toBe(erofs);
    expect(await replyError(c.create(1, 'n', O_RDWR, 0o644))).toBe(erofs);
    expect(await replyError(c.unlink(1, 'f'))).toBe(erofs);
    expect(await replyError(c.rename(1, 'f', 1, 'g'))).toBe(erofs);
    expect(await replyError(c.symlink(1, 'l', 'f'))).toBe(erofs);
    expect(await replyError(c.access(e.nodeid, 2))).toBe(erofs);
    expect(fs.readdirSync(dir)).toEqual(['f']);
    expect(fs.readFileSync(path.join(dir, 'f'), 'utf8')).toBe('read me');
  });
});
