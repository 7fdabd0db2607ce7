import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { FuseSession, FuseSessionOptions } from '../../src/fuse-server/session';
import * as P from '../../src/fuse-server/protocol';
import { Opcode } from '../../src/fuse-server/protocol';
import { Errno } from '../../src/sys/errno';
import { type FuseDriver, cstr, encode, openFdCount, parseDirents } from './fuse-driver';
import { Harness, O_CREAT, O_EXCL, O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY, S_IFDIR, S_IFLNK, S_IFREG, setattrIn } from './harness';

const S_IFIFO = 0o010000;

let dir: string;
let h: Harness;
let session: FuseSession;
let fuse: FuseDriver;

function start(options: Partial<FuseSessionOptions> = {}): void {
  h = new Harness(dir, options);
  session = h.session;
  fuse = h.fuse;
}

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fuse-session-'));
});

afterEach(() => {
  h?.shutdown();
  fs.rmSync(dir, { recursive: true, force: true });
});

function openIn(flags: number): Buffer {
  return encode(P.fuse_open_in, { flags, open_flags: 0 });
}
function readIn(fh: number, offset: number, size: number): Buffer {
  return encode(P.fuse_read_in, { fh, offset, size, read_flags: 0, lock_owner: 0n, flags: 0 });
}
function readdirIn(fh: number, offset: bigint, size: number): Buffer {
  return encode(P.fuse_readdir_in, { fh, offset, size, read_flags: 0, lock_owner: 0n, flags: 0 });
}
function writeIn(fh: number, offset: number, size: number): Buffer {
  return encode(P.fuse_write_in, { fh, offset, size, write_flags: 0, lock_owner: 0n, flags: 0 });
}
function releaseIn(fh: number): Buffer {
  return encode(P.fuse_release_in, { fh, flags: 0, release_flags: 0, lock_owner: 0n });
}
function open(nodeid: number, flags: number): { fh: number; openFlags: number } {
  const o = P.fuse_open_out.decode(fuse.ok(Opcode.FUSE_OPEN, nodeid, [openIn(flags)]), 0);
  return { fh: o.fh, openFlags: o.open_flags };
}
function opendir(nodeid: number): { fh: number; openFlags: number } {
  const o = P.fuse_open_out.decode(fuse.ok(Opcode.FUSE_OPENDIR, nodeid, [openIn(O_RDONLY)]), 0);
  return { fh: o.fh, openFlags: o.open_flags };
}
function forget(nodeid: number, nlookup: number): void {
  expect(fuse.request(Opcode.FUSE_FORGET, nodeid, [encode(P.fuse_forget_in, { nlookup })]).used).toBe(0);
}
/** Lists a directory fully, in READDIR(PLUS) replies of at most `size` bytes. */
function listAll(nodeid: number, plus: boolean, size: number): ReturnType<typeof parseDirents> {
  const { fh } = opendir(nodeid);
  const all: ReturnType<typeof parseDirents> = [];
  let offset = 0n;
  for (;;) {
    const body = fuse.ok(plus ? Opcode.FUSE_READDIRPLUS : Opcode.FUSE_READDIR, nodeid, [readdirIn(fh, offset, size)]);
    const batch = parseDirents(body, plus);
    if (batch.length === 0) break;
    all.push(...batch);
    offset = batch[batch.length - 1].off;
  }
  fuse.ok(Opcode.FUSE_RELEASEDIR, nodeid, [releaseIn(fh)]);
  return all;
}

describe('INIT', () => {
  beforeEach(() => start());

  it('answers requests before INIT with EIO and drops FORGETs silently', () => {
    expect(fuse.request(Opcode.FUSE_GETATTR, 1, [encode(P.fuse_getattr_in, { getattr_flags: 0, fh: 0 })]).error).toBe(-Errno.EIO);
    expect(fuse.request(Opcode.FUSE_FORGET, 1, [encode(P.fuse_forget_in, { nlookup: 1 })]).used).toBe(0);
  });

  it('negotiates 7.38 with the flags we support and a 1 MiB max_write', () => {
    const out = P.fuse_init_out.decode(fuse.init(), 0);
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

  it('accepts an older kernel with the short init_in and answers its minor', () => {
    const short = encode(P.fuse_init_in, {
      major: 7,
      minor: 31,
      max_readahead: 4096,
      flags: 0xffffffff & ~P.FUSE_INIT_EXT,
      flags2: 0,
    }).subarray(0, 16);
    const out = P.fuse_init_out.decode(fuse.ok(Opcode.FUSE_INIT, 0, [short]), 0);
    expect(out.minor).toBe(31);
    // Never more than we can serve, e.g. no POSIX locks or writeback cache yet.
    expect(out.flags & P.FUSE_POSIX_LOCKS).toBe(0);
    expect(out.flags & P.FUSE_WRITEBACK_CACHE).toBe(0);
    expect(out.flags & P.FUSE_HANDLE_KILLPRIV_V2).toBe(0);
    expect(out.flags & P.FUSE_EXPORT_SUPPORT).toBe(P.FUSE_EXPORT_SUPPORT);
  });

  it('refuses protocol versions no virtio-fs guest speaks', () => {
    const r = fuse.request(Opcode.FUSE_INIT, 0, [encode(P.fuse_init_in, { major: 7, minor: 20, max_readahead: 0, flags: 0, flags2: 0 })]);
    expect(r.error).toBe(-Errno.EPROTO);
    expect(fuse.request(Opcode.FUSE_STATFS, 1).error).toBe(-Errno.EIO);
  });

  it('answers a newer major with its own and stays uninitialised', () => {
    const out = P.fuse_init_out.decode(
      fuse.ok(Opcode.FUSE_INIT, 0, [encode(P.fuse_init_in, { major: 8, minor: 0, max_readahead: 0, flags: 0, flags2: 0 })]),
      0,
    );
    expect(out.major).toBe(7);
    expect(fuse.request(Opcode.FUSE_STATFS, 1).error).toBe(-Errno.EIO);
  });

  it('DESTROY ends the session until the next INIT', () => {
    fuse.init();
    expect(fuse.request(Opcode.FUSE_DESTROY, 0).error).toBe(0);
    expect(fuse.request(Opcode.FUSE_STATFS, 1).error).toBe(-Errno.EIO);
    fuse.init();
    expect(fuse.request(Opcode.FUSE_STATFS, 1).error).toBe(0);
  });
});

describe('passthrough operations', () => {
  beforeEach(() => {
    start();
    fuse.init();
  });

  it('looks up and stats files of the shared directory', () => {
    fs.writeFileSync(path.join(dir, 'hello.txt'), 'hello world');
    const e = fuse.lookup(1, 'hello.txt');
    const st = fs.statSync(path.join(dir, 'hello.txt'), { bigint: true });
    expect(e.nodeid).toBeGreaterThan(1);
    expect(e.attr.ino).toBe(st.ino);
    expect(e.attr.size).toBe(11);
    expect(e.attr.mode).toBe(Number(st.mode));
    expect(e.entry_valid).toBe(1);
    expect(e.attr_valid).toBe(1);
    expect(fuse.lookup(1, 'hello.txt').nodeid).toBe(e.nodeid);
    expect(h.getattr(e.nodeid).size).toBe(11);
    expect(h.getattr(1).mode & S_IFDIR).toBe(S_IFDIR);
  });

  it('gives hard links one nodeid', () => {
    fs.writeFileSync(path.join(dir, 'a'), '');
    fs.linkSync(path.join(dir, 'a'), path.join(dir, 'b'));
    expect(fuse.lookup(1, 'a').nodeid).toBe(fuse.lookup(1, 'b').nodeid);
  });

  it('creates, writes and reads back a file, data split across buffers', async () => {
    const { entry, fh, openFlags } = h.create(1, 'new.bin');
    expect(openFlags).toBe(0); // cache=auto: page cache, not kept across opens
    const data = Buffer.alloc(100_000);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7 + 3) & 0xff;
    // 100 000 bytes: on the thread pool (ASYNC_MIN_BYTES), as the FSYNC below.
    const w = P.fuse_write_out.decode(await fuse.okAsync(Opcode.FUSE_WRITE, entry.nodeid, [writeIn(fh, 10, data.length), data]), 0);
    expect(w.size).toBe(data.length);
    expect(fs.readFileSync(path.join(dir, 'new.bin')).subarray(10).equals(data)).toBe(true);

    const back = await fuse.okAsync(Opcode.FUSE_READ, entry.nodeid, [readIn(fh, 10, 200_000)], { replySize: 16 + 200_000 });
    expect(back.equals(data)).toBe(true);
    const tail = fuse.ok(Opcode.FUSE_READ, entry.nodeid, [readIn(fh, 100_000, 100)]);
    expect(tail.equals(data.subarray(99_990))).toBe(true);
    expect(fuse.ok(Opcode.FUSE_READ, entry.nodeid, [readIn(fh, 1 << 20, 100)]).length).toBe(0);

    fuse.ok(Opcode.FUSE_FLUSH, entry.nodeid, [encode(P.fuse_flush_in, { fh, lock_owner: 1n })]);
    await fuse.okAsync(Opcode.FUSE_FSYNC, entry.nodeid, [encode(P.fuse_fsync_in, { fh, fsync_flags: P.FUSE_FSYNC_FDATASYNC })]);
    fuse.ok(Opcode.FUSE_RELEASE, entry.nodeid, [releaseIn(fh)]);
    expect(fuse.request(Opcode.FUSE_READ, entry.nodeid, [readIn(fh, 0, 1)]).error).toBe(-Errno.EBADF);
    expect(session.stats.handles).toBe(0);
  });

  it('opens existing files, honouring O_TRUNC', () => {
    fs.writeFileSync(path.join(dir, 'f'), 'some content');
    const e = fuse.lookup(1, 'f');
    const { fh } = open(e.nodeid, O_RDONLY);
    expect(fuse.ok(Opcode.FUSE_READ, e.nodeid, [readIn(fh, 5, 100)]).toString()).toBe('content');
    const w = open(e.nodeid, O_WRONLY | O_TRUNC);
    expect(fs.statSync(path.join(dir, 'f')).size).toBe(0);
    fuse.ok(Opcode.FUSE_RELEASE, e.nodeid, [releaseIn(fh)]);
    fuse.ok(Opcode.FUSE_RELEASE, e.nodeid, [releaseIn(w.fh)]);
  });

  it('CREATE with O_EXCL fails on an existing name', () => {
    fs.writeFileSync(path.join(dir, 'x'), '');
    const r = fuse.request(Opcode.FUSE_CREATE, 1, [
      encode(P.fuse_create_in, { flags: O_RDWR | O_CREAT | O_EXCL, mode: 0o644, umask: 0, open_flags: 0 }),
      cstr('x'),
    ]);
    expect(r.error).toBe(-Errno.EEXIST);
  });

  it('lists a directory with READDIR and READDIRPLUS, across several replies', () => {
    const names = Array.from({ length: 40 }, (_, i) => `file-${i}-${'x'.repeat(i)}`);
    for (const n of names) fs.writeFileSync(path.join(dir, n), n);
    fs.mkdirSync(path.join(dir, 'sub'));
    const expected = ['.', '..', 'sub', ...names].sort();

    const plain = listAll(1, false, 512);
    expect(plain.map((d) => d.name).sort()).toEqual(expected);
    expect(plain.find((d) => d.name === 'sub')!.type).toBe(4); // DT_DIR
    expect(plain.find((d) => d.name === names[0])!.ino).toBe(fs.statSync(path.join(dir, names[0]), { bigint: true }).ino);

    const before = session.stats.inodes;
    const plus = listAll(1, true, 1024);
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
    for (const d of plus) if (d.entry!.nodeid) forget(d.entry!.nodeid, 1);
    expect(session.stats.inodes).toBe(before);
  });

  it('makes, renames and removes names', () => {
    const d = h.mkdir(1, 'dir', 0o750);
    expect(d.attr.mode).toBe(S_IFDIR | 0o750);
    expect(fs.statSync(path.join(dir, 'dir')).mode & 0o777).toBe(0o750);
    const f = h.create(d.nodeid, 'a');
    fuse.ok(Opcode.FUSE_RELEASE, f.entry.nodeid, [releaseIn(f.fh)]);

    fuse.ok(Opcode.FUSE_RENAME, d.nodeid, [encode(P.fuse_rename_in, { newdir: 1 }), cstr('a'), cstr('b')]);
    expect(fs.existsSync(path.join(dir, 'b'))).toBe(true);
    expect(fuse.lookup(1, 'b').nodeid).toBe(f.entry.nodeid);

    fs.writeFileSync(path.join(dir, 'dir', 'c'), 'c');
    const noReplace = fuse.request(Opcode.FUSE_RENAME2, 1, [
      encode(P.fuse_rename2_in, { newdir: d.nodeid, flags: 1 /* RENAME_NOREPLACE */ }),
      cstr('b'),
      cstr('c'),
    ]);
    expect(noReplace.error).toBe(-Errno.EEXIST);
    fuse.ok(Opcode.FUSE_RENAME2, 1, [
      encode(P.fuse_rename2_in, { newdir: d.nodeid, flags: 2 /* RENAME_EXCHANGE */ }),
      cstr('b'),
      cstr('c'),
    ]);
    expect(fs.readFileSync(path.join(dir, 'b'), 'utf8')).toBe('c');
    expect(fs.readFileSync(path.join(dir, 'dir', 'c'), 'utf8')).toBe('');

    expect(fuse.request(Opcode.FUSE_RMDIR, 1, [cstr('dir')]).error).toBe(-Errno.ENOTEMPTY);
    fuse.ok(Opcode.FUSE_UNLINK, d.nodeid, [cstr('c')]);
    fuse.ok(Opcode.FUSE_RMDIR, 1, [cstr('dir')]);
    fuse.ok(Opcode.FUSE_UNLINK, 1, [cstr('b')]);
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  it('symlinks, readlink, hard links, mknod and access', () => {
    const link = P.fuse_entry_out.decode(fuse.ok(Opcode.FUSE_SYMLINK, 1, [cstr('ln'), cstr('../outside/target')]), 0);
    expect(link.attr.mode & 0o170000).toBe(S_IFLNK);
    expect(fuse.ok(Opcode.FUSE_READLINK, link.nodeid).toString()).toBe('../outside/target');
    expect(fs.readlinkSync(path.join(dir, 'ln'))).toBe('../outside/target');
    // Lookups never follow a symlink: getattr describes the link itself.
    expect(h.getattr(link.nodeid).mode & 0o170000).toBe(S_IFLNK);

    fs.writeFileSync(path.join(dir, 'orig'), 'x');
    const orig = fuse.lookup(1, 'orig');
    const hard = P.fuse_entry_out.decode(
      fuse.ok(Opcode.FUSE_LINK, 1, [encode(P.fuse_link_in, { oldnodeid: orig.nodeid }), cstr('hard')]),
      0,
    );
    expect(hard.nodeid).toBe(orig.nodeid);
    expect(hard.attr.nlink).toBe(2);

    const fifo = P.fuse_entry_out.decode(
      fuse.ok(Opcode.FUSE_MKNOD, 1, [encode(P.fuse_mknod_in, { mode: S_IFIFO | 0o600, rdev: 0, umask: 0 }), cstr('fifo')]),
      0,
    );
    expect(fifo.attr.mode).toBe(S_IFIFO | 0o600);
    // Opening a FIFO would block the daemon: refused.
    expect(fuse.request(Opcode.FUSE_OPEN, fifo.nodeid, [openIn(O_RDONLY)]).error).toBe(-Errno.EINVAL);

    const access = (nodeid: number, mask: number, uid: number) =>
      fuse.request(Opcode.FUSE_ACCESS, nodeid, [encode(P.fuse_access_in, { mask })], { uid, gid: uid }).error;
    fs.chmodSync(path.join(dir, 'orig'), 0o640);
    expect(access(orig.nodeid, 4, 0)).toBe(0);
    expect(access(orig.nodeid, 1, 0)).toBe(-Errno.EACCES);
    expect(access(orig.nodeid, 4, 1234)).toBe(-Errno.EACCES);
    expect(access(orig.nodeid, 0, 1234)).toBe(0);
  });

  it('SETATTR truncates, chmods, chowns and sets times', () => {
    fs.writeFileSync(path.join(dir, 'f'), 'x'.repeat(1000));
    const e = fuse.lookup(1, 'f');
    let attr = P.fuse_attr_out.decode(fuse.ok(Opcode.FUSE_SETATTR, e.nodeid, [setattrIn({ valid: P.FATTR_SIZE, size: 10 })]), 0).attr;
    expect(attr.size).toBe(10);
    expect(fs.statSync(path.join(dir, 'f')).size).toBe(10);

    const { fh } = open(e.nodeid, O_RDWR);
    attr = P.fuse_attr_out.decode(
      fuse.ok(Opcode.FUSE_SETATTR, e.nodeid, [setattrIn({ valid: P.FATTR_SIZE | P.FATTR_FH, fh, size: 5000 })]),
      0,
    ).attr;
    expect(attr.size).toBe(5000);

    attr = P.fuse_attr_out.decode(
      fuse.ok(Opcode.FUSE_SETATTR, e.nodeid, [
        setattrIn({
          valid: P.FATTR_MODE | P.FATTR_UID | P.FATTR_GID | P.FATTR_ATIME | P.FATTR_MTIME,
          mode: 0o600,
          uid: 123,
          gid: 456,
          atime: 1_000_000_000,
          atimensec: 5,
          mtime: -100,
          mtimensec: 7,
        }),
      ]),
      0,
    ).attr;
    expect(attr.mode).toBe(S_IFREG | 0o600);
    expect([attr.uid, attr.gid]).toEqual([123, 456]);
    expect([attr.atime, attr.atimensec, attr.mtime, attr.mtimensec]).toEqual([1_000_000_000, 5, -100, 7]);

    const before = Date.now() / 1000 - 5;
    attr = P.fuse_attr_out.decode(
      fuse.ok(Opcode.FUSE_SETATTR, e.nodeid, [setattrIn({ valid: P.FATTR_MTIME | P.FATTR_MTIME_NOW })]),
      0,
    ).attr;
    expect(attr.mtime).toBeGreaterThan(before);
    expect(attr.atime).toBe(1_000_000_000);
    fuse.ok(Opcode.FUSE_RELEASE, e.nodeid, [releaseIn(fh)]);
  });

  it('creates files as the calling guest user', () => {
    fs.chmodSync(dir, 0o777);
    const f = h.create(1, 'mine', { mode: 0o600, uid: 1000, gid: 1000 });
    expect([f.entry.attr.uid, f.entry.attr.gid]).toEqual([1000, 1000]);
    expect(fs.statSync(path.join(dir, 'mine')).uid).toBe(1000);
    const d = P.fuse_entry_out.decode(
      fuse.ok(Opcode.FUSE_MKDIR, 1, [encode(P.fuse_mkdir_in, { mode: 0o700, umask: 0 }), cstr('d')], { uid: 1000, gid: 1000 }),
      0,
    );
    expect(d.attr.uid).toBe(1000);
    // The daemon's own credentials are back afterwards.
    fuse.ok(Opcode.FUSE_MKDIR, 1, [encode(P.fuse_mkdir_in, { mode: 0o700, umask: 0 }), cstr('rootdir')]);
    expect(fs.statSync(path.join(dir, 'rootdir')).uid).toBe(process.getuid!());
  });

  it('STATFS reports the host file system', () => {
    const st = P.fuse_statfs_out.decode(fuse.ok(Opcode.FUSE_STATFS, 1), 0).st;
    const host = fs.statfsSync(dir);
    expect(st.blocks).toBe(host.blocks);
    expect(st.bsize).toBe(host.bsize);
    expect(st.namelen).toBe(255);
  });

  it('FORGET frees the inode and closes its fd; BATCH_FORGET too', () => {
    for (const n of ['a', 'b', 'c']) fs.writeFileSync(path.join(dir, n), '');
    const fds = openFdCount();
    const a = fuse.lookup(1, 'a');
    fuse.lookup(1, 'a');
    const b = fuse.lookup(1, 'b');
    const c = fuse.lookup(1, 'c');
    expect(openFdCount()).toBe(fds + 3);
    forget(a.nodeid, 1);
    expect(openFdCount()).toBe(fds + 3); // one lookup of `a` is still held
    forget(a.nodeid, 1);
    expect(openFdCount()).toBe(fds + 2);
    expect(fuse.request(Opcode.FUSE_GETATTR, a.nodeid, [encode(P.fuse_getattr_in, { getattr_flags: 0, fh: 0 })]).error).toBe(-Errno.EBADF);

    const batch = Buffer.concat([
      encode(P.fuse_batch_forget_in, { count: 3 }),
      encode(P.fuse_forget_one, { nodeid: b.nodeid, nlookup: 1 }),
      encode(P.fuse_forget_one, { nodeid: c.nodeid, nlookup: 2 ** 60 }),
      // count says 3, but only two entries are present
    ]);
    expect(fuse.request(Opcode.FUSE_BATCH_FORGET, 0, [batch]).used).toBe(0);
    expect(openFdCount()).toBe(fds);
    expect(session.stats.inodes).toBe(1);
    // FORGET comes on the high-priority queue with no writable buffers at all.
    const d = fuse.lookup(1, 'a');
    expect(openFdCount()).toBe(fds + 1);
    expect(session.handle([fuse.build(Opcode.FUSE_FORGET, d.nodeid, [encode(P.fuse_forget_in, { nlookup: 1 })])], [])).toBe(0);
    expect(openFdCount()).toBe(fds);
    // The root is never forgotten.
    forget(1, 100);
    expect(h.getattr(1).mode & S_IFDIR).toBe(S_IFDIR);
  });

  it('reset() closes every inode and handle fd', () => {
    fs.writeFileSync(path.join(dir, 'a'), 'data');
    const fds = openFdCount();
    const a = fuse.lookup(1, 'a');
    open(a.nodeid, O_RDONLY);
    opendir(1);
    expect(openFdCount()).toBe(fds + 3);
    session.reset();
    expect(openFdCount()).toBe(fds);
    expect(session.stats).toEqual({ inodes: 1, handles: 0, lockFds: 0, waiting: 0 });
    expect(fuse.request(Opcode.FUSE_STATFS, 1).error).toBe(-Errno.EIO);
  });
});

describe('guest input that must be refused', () => {
  beforeEach(() => {
    start();
    fuse.init();
  });

  it('passes host errnos through', () => {
    expect(fuse.request(Opcode.FUSE_LOOKUP, 1, [cstr('missing')]).error).toBe(-Errno.ENOENT);
    fs.writeFileSync(path.join(dir, 'file'), '');
    const f = fuse.lookup(1, 'file');
    expect(fuse.request(Opcode.FUSE_LOOKUP, f.nodeid, [cstr('x')]).error).toBe(-Errno.ENOTDIR);
    expect(fuse.request(Opcode.FUSE_OPENDIR, f.nodeid, [openIn(0)]).error).toBe(-Errno.ENOTDIR);
    expect(fuse.request(Opcode.FUSE_MKDIR, 1, [encode(P.fuse_mkdir_in, { mode: 0o755, umask: 0 }), cstr('file')]).error).toBe(
      -Errno.EEXIST,
    );
  });

  it('refuses names that are not one path component', () => {
    fs.mkdirSync(path.join(dir, 'sub'));
    fs.writeFileSync(path.join(dir, 'sub', 'f'), '');
    expect(fuse.request(Opcode.FUSE_LOOKUP, 1, [cstr('sub/f')]).error).toBe(-Errno.EINVAL);
    expect(fuse.request(Opcode.FUSE_LOOKUP, 1, [cstr('/etc')]).error).toBe(-Errno.EINVAL);
    expect(fuse.request(Opcode.FUSE_LOOKUP, 1, [cstr('')]).error).toBe(-Errno.EINVAL);
    expect(fuse.request(Opcode.FUSE_LOOKUP, 1, [Buffer.from('sub')]).error).toBe(-Errno.EINVAL); // no NUL
    // '.' and '..' answer what Linux answers for mkdir("..") and unlink(".").
    expect(fuse.request(Opcode.FUSE_MKDIR, 1, [encode(P.fuse_mkdir_in, { mode: 0o755, umask: 0 }), cstr('..')]).error).toBe(-Errno.EEXIST);
    expect(fuse.request(Opcode.FUSE_UNLINK, 1, [cstr('.')]).error).toBe(-Errno.EISDIR);
    expect(fuse.request(Opcode.FUSE_RENAME, 1, [encode(P.fuse_rename_in, { newdir: 1 }), cstr('sub'), cstr('a/b')]).error).toBe(
      -Errno.EINVAL,
    );
    expect(
      fuse.request(Opcode.FUSE_CREATE, 1, [
        encode(P.fuse_create_in, { flags: O_RDWR, mode: 0o644, umask: 0, open_flags: 0 }),
        cstr('../escape'),
      ]).error,
    ).toBe(-Errno.EINVAL);
    expect(fs.existsSync(path.join(dir, '..', 'escape'))).toBe(false);
  });

  it('keeps `..` at the root inside the shared directory', () => {
    const up = fuse.lookup(1, '..');
    expect(up.nodeid).toBe(1);
    fs.mkdirSync(path.join(dir, 'sub'));
    const sub = fuse.lookup(1, 'sub');
    expect(fuse.lookup(sub.nodeid, '..').nodeid).toBe(1);
    expect(fuse.lookup(sub.nodeid, '.').nodeid).toBe(sub.nodeid);
  });

  it('answers short payloads with EINVAL', () => {
    expect(fuse.request(Opcode.FUSE_MKDIR, 1, [Buffer.alloc(4)]).error).toBe(-Errno.EINVAL);
    expect(fuse.request(Opcode.FUSE_GETATTR, 1, [Buffer.alloc(15)]).error).toBe(-Errno.EINVAL);
    expect(fuse.request(Opcode.FUSE_READ, 1, []).error).toBe(-Errno.EINVAL);
    // WRITE claiming more data than the request carries.
    const f = h.create(1, 'w');
    expect(fuse.request(Opcode.FUSE_WRITE, f.entry.nodeid, [writeIn(f.fh, 0, 100), Buffer.alloc(99)]).error).toBe(-Errno.EINVAL);
    // A header whose len runs past the chain.
    expect(fuse.request(Opcode.FUSE_STATFS, 1, [], { len: 1000 }).error).toBe(-Errno.EINVAL);
    expect(fuse.request(Opcode.FUSE_STATFS, 1, [], { len: 8 }).error).toBe(-Errno.EINVAL);
    // len cuts off the name's NUL that the chain does carry.
    const r = fuse.request(Opcode.FUSE_LOOKUP, 1, [cstr('w')], { len: 41 });
    expect(r.error).toBe(-Errno.EINVAL);
  });

  it('answers unknown and unimplemented opcodes with ENOSYS, INTERRUPT with nothing', () => {
    expect(fuse.request(99, 1).error).toBe(-Errno.ENOSYS);
    // Not for virtio-fs: block maps, ioctls, poll, notification replies, CUSE (4096).
    for (const op of [Opcode.FUSE_BMAP, Opcode.FUSE_IOCTL, Opcode.FUSE_POLL, Opcode.FUSE_NOTIFY_REPLY, 4096]) {
      expect(fuse.request(op, 1, [Buffer.alloc(64)]).error).toBe(-Errno.ENOSYS);
    }
    // Without --xattr, as in virtiofsd: the guest kernel then stops asking.
    expect(fuse.request(Opcode.FUSE_GETXATTR, 1, [encode(P.fuse_getxattr_in, { size: 0 }), cstr('user.x')]).error).toBe(-Errno.ENOSYS);
    expect(fuse.request(Opcode.FUSE_INTERRUPT, 0, [Buffer.alloc(8)]).used).toBe(0);
  });

  it('answers unknown nodeids and handles with EBADF', () => {
    expect(fuse.request(Opcode.FUSE_GETATTR, 12345, [encode(P.fuse_getattr_in, { getattr_flags: 0, fh: 0 })]).error).toBe(-Errno.EBADF);
    expect(fuse.request(Opcode.FUSE_READ, 1, [readIn(999, 0, 10)]).error).toBe(-Errno.EBADF);
    const big = encode(P.fuse_getattr_in, { getattr_flags: 0, fh: 0 });
    const raw = fuse.build(Opcode.FUSE_GETATTR, 0, [big]);
    raw.writeBigUInt64LE(0xffff_ffff_ffff_ffffn, 16); // nodeid
    expect(fuse.sendRaw(raw).error).toBe(-Errno.EBADF);
  });

  it('drops chains too short for a header or a reply, and survives garbage', () => {
    expect(session.handle([Buffer.alloc(39)], [Buffer.alloc(100)])).toBe(0);
    expect(session.handle([fuse.build(Opcode.FUSE_STATFS, 1, [])], [Buffer.alloc(15)])).toBe(0);
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
    fuse.init();
    expect(fuse.request(Opcode.FUSE_STATFS, 1).error).toBe(0);
  });
});

describe('cache modes', () => {
  it('never: zero timeouts and direct I/O', () => {
    start({ cache: 'never' });
    fuse.init();
    const f = h.create(1, 'f');
    expect([f.entry.entry_valid, f.entry.attr_valid, f.entry.entry_valid_nsec]).toEqual([0, 0, 0]);
    expect(f.openFlags).toBe(P.FOPEN_DIRECT_IO);
  });

  it('metadata: long timeouts, direct I/O for data', () => {
    start({ cache: 'metadata' });
    fuse.init();
    fs.writeFileSync(path.join(dir, 'f'), '');
    const e = fuse.lookup(1, 'f');
    expect(e.entry_valid).toBe(86400);
    expect(open(e.nodeid, O_RDONLY).openFlags).toBe(P.FOPEN_DIRECT_IO);
  });

  it('always: long timeouts, kept page cache and cached directories', () => {
    start({ cache: 'always' });
    fuse.init();
    fs.writeFileSync(path.join(dir, 'f'), '');
    const e = fuse.lookup(1, 'f');
    expect([e.entry_valid, e.attr_valid]).toEqual([86400, 86400]);
    expect(open(e.nodeid, O_RDONLY).openFlags).toBe(P.FOPEN_KEEP_CACHE);
    expect(opendir(1).openFlags).toBe(P.FOPEN_KEEP_CACHE | P.FOPEN_CACHE_DIR);
  });
});

describe('read-only', () => {
  beforeEach(() => {
    fs.writeFileSync(path.join(dir, 'f'), 'read me');
    start({ readonly: true });
    fuse.init();
  });

  it('serves reads', () => {
    const e = fuse.lookup(1, 'f');
    const { fh } = open(e.nodeid, O_RDONLY);
    expect(fuse.ok(Opcode.FUSE_READ, e.nodeid, [readIn(fh, 0, 100)]).toString()).toBe('read me');
    expect(
      listAll(1, true, 4096)
        .map((d) => d.name)
        .sort(),
    ).toEqual(['.', '..', 'f']);
  });

  it('answers every change with EROFS', () => {
    const e = fuse.lookup(1, 'f');
    const erofs = -Errno.EROFS;
    expect(fuse.request(Opcode.FUSE_OPEN, e.nodeid, [openIn(O_RDWR)]).error).toBe(erofs);
    expect(fuse.request(Opcode.FUSE_OPEN, e.nodeid, [openIn(O_RDONLY | O_TRUNC)]).error).toBe(erofs);
    expect(fuse.request(Opcode.FUSE_SETATTR, e.nodeid, [setattrIn({ valid: P.FATTR_SIZE, size: 0 })]).error).toBe(erofs);
    expect(fuse.request(Opcode.FUSE_MKDIR, 1, [encode(P.fuse_mkdir_in, { mode: 0o755, umask: 0 }), cstr('d')]).error).toBe(erofs);
    expect(
      fuse.request(Opcode.FUSE_CREATE, 1, [encode(P.fuse_create_in, { flags: O_RDWR, mode: 0o644, umask: 0, open_flags: 0 }), cstr('n')])
        .error,
    ).toBe(erofs);
    expect(fuse.request(Opcode.FUSE_UNLINK, 1, [cstr('f')]).error).toBe(erofs);
    expect(fuse.request(Opcode.FUSE_RENAME, 1, [encode(P.fuse_rename_in, { newdir: 1 }), cstr('f'), cstr('g')]).error).toBe(erofs);
    expect(fuse.request(Opcode.FUSE_SYMLINK, 1, [cstr('l'), cstr('f')]).error).toBe(erofs);
    expect(fuse.request(Opcode.FUSE_ACCESS, e.nodeid, [encode(P.fuse_access_in, { mask: 2 })]).error).toBe(erofs);
    expect(fs.readdirSync(dir)).toEqual(['f']);
    expect(fs.readFileSync(path.join(dir, 'f'), 'utf8')).toBe('read me');
  });
});
