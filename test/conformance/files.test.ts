/**
 * Conformance: file contents and attributes — create/open/read/write,
 * truncation, setattr, statfs, xattrs, POSIX locks and flock, fallocate,
 * lseek, copy_file_range.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  F_RDLCK,
  F_UNLCK,
  F_WRLCK,
  SEEK_DATA,
  SEEK_HOLE,
  XATTR_CREATE,
  XATTR_REPLACE,
} from '../../src/guest/fuse-driver';
import { BACKENDS } from '../helpers/backends';
import { itIfCan } from '../helpers/fuse-session';
import { O_CREAT, O_EXCL, O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY, ROOT, S_IFREG, expectErrno, sessions } from './conformance';

const MiB = 1 << 20;
const WHOLE_FILE = BigInt(Number.MAX_SAFE_INTEGER);

function pattern(len: number, seed: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

describe.each(BACKENDS)('files on $name', (backend) => {
  const open = sessions(backend);

  it('creates, writes and reads back a file', async () => {
    const { fuse, dir } = await open();
    const { entry, open: h } = await fuse.create(ROOT, 'f', O_RDWR, 0o640);
    expect(entry.attr.mode).toBe(S_IFREG | 0o640);
    expect(entry.attr.size).toBe(0);
    expect(await fuse.write(entry.nodeid, h.fh, 0, Buffer.from('hello '))).toBe(6);
    expect(await fuse.write(entry.nodeid, h.fh, 6, Buffer.from('world'))).toBe(5);
    expect((await fuse.read(entry.nodeid, h.fh, 0, 100)).toString()).toBe('hello world');
    expect((await fuse.read(entry.nodeid, h.fh, 6, 3)).toString()).toBe('wor');
    expect((await fuse.read(entry.nodeid, h.fh, 11, 100)).length).toBe(0);
    await fuse.flush(entry.nodeid, h.fh);
    await fuse.fsync(entry.nodeid, h.fh, false);
    await fuse.fsync(entry.nodeid, h.fh, true);
    await fuse.release(entry.nodeid, h.fh);
    expect(fs.readFileSync(path.join(dir, 'f'), 'utf8')).toBe('hello world');
    expect((await fuse.getattr(entry.nodeid)).attr.size).toBe(11);
  });

  it('moves max_write-sized and odd-sized data intact', async () => {
    const { fuse, dir } = await open();
    const { entry, open: h } = await fuse.create(ROOT, 'big', O_RDWR, 0o644);
    const size = Math.min(fuse.maxWrite, MiB);
    const data = pattern(size, 7);
    expect(await fuse.write(entry.nodeid, h.fh, 0, data)).toBe(size);
    const odd = pattern(4097, 99);
    expect(await fuse.write(entry.nodeid, h.fh, size + 13, odd)).toBe(odd.length);
    expect((await fuse.read(entry.nodeid, h.fh, 0, size)).equals(data)).toBe(true);
    const tail = await fuse.read(entry.nodeid, h.fh, size, 13 + odd.length);
    expect(tail.subarray(0, 13).equals(Buffer.alloc(13))).toBe(true);
    expect(tail.subarray(13).equals(odd)).toBe(true);
    expect(fs.statSync(path.join(dir, 'big')).size).toBe(size + 13 + odd.length);
  });

  it('opens existing files read-only, write-only, with O_TRUNC; O_EXCL refuses an existing name', async () => {
    const { fuse, dir } = await open({ populate: (d) => fs.writeFileSync(path.join(d, 'f'), 'original') });
    const f = await fuse.lookup(ROOT, 'f');
    const ro = await fuse.open(f.nodeid, O_RDONLY);
    expect((await fuse.read(f.nodeid, ro.fh, 0, 64)).toString()).toBe('original');
    await expectErrno(fuse.write(f.nodeid, ro.fh, 0, Buffer.from('x')), 'EBADF');
    const wo = await fuse.open(f.nodeid, O_WRONLY | O_TRUNC);
    expect(fs.readFileSync(path.join(dir, 'f'), 'utf8')).toBe('');
    await fuse.write(f.nodeid, wo.fh, 0, Buffer.from('new'));
    expect(fs.readFileSync(path.join(dir, 'f'), 'utf8')).toBe('new');
    await expectErrno(fuse.create(ROOT, 'f', O_RDWR | O_CREAT | O_EXCL, 0o644), 'EEXIST');
    await fuse.release(f.nodeid, ro.fh);
    await fuse.release(f.nodeid, wo.fh);
  });

  it('truncates and extends with SETATTR size', async () => {
    const { fuse, dir } = await open({ populate: (d) => fs.writeFileSync(path.join(d, 'f'), '0123456789') });
    const f = await fuse.lookup(ROOT, 'f');
    expect((await fuse.setattr(f.nodeid, { size: 4 })).attr.size).toBe(4);
    expect(fs.readFileSync(path.join(dir, 'f'), 'utf8')).toBe('0123');
    const h = await fuse.open(f.nodeid, O_RDWR);
    expect((await fuse.setattr(f.nodeid, { size: 8, fh: h.fh })).attr.size).toBe(8);
    expect(fs.readFileSync(path.join(dir, 'f'))).toEqual(Buffer.from('0123\0\0\0\0'));
    expect((await fuse.read(f.nodeid, h.fh, 0, 100)).length).toBe(8);
  });

  it('changes mode, owner and times with SETATTR', async () => {
    const { fuse, dir } = await open({ populate: (d) => fs.writeFileSync(path.join(d, 'f'), '') });
    const f = await fuse.lookup(ROOT, 'f');
    expect((await fuse.setattr(f.nodeid, { mode: 0o604 })).attr.mode).toBe(S_IFREG | 0o604);
    expect(fs.statSync(path.join(dir, 'f')).mode & 0o7777).toBe(0o604);

    const t = await fuse.setattr(f.nodeid, { atime: { sec: 1_000_000_000, nsec: 123_456_789 }, mtime: { sec: 1_500_000_000, nsec: 5 } });
    expect(t.attr.atime).toBe(1_000_000_000);
    expect(t.attr.atimensec).toBe(123_456_789);
    expect(t.attr.mtime).toBe(1_500_000_000);
    expect(t.attr.mtimensec).toBe(5);
    expect(fs.statSync(path.join(dir, 'f')).mtimeMs).toBe(1_500_000_000_000);

    const before = Math.floor(Date.now() / 1000) - 2;
    const now = await fuse.setattr(f.nodeid, { mtime: 'now' });
    expect(now.attr.mtime).toBeGreaterThanOrEqual(before);
    expect(now.attr.atime).toBe(1_000_000_000);

    // The tests run as root: chown to another owner is allowed.
    const owned = await fuse.setattr(f.nodeid, { uid: 4321, gid: 8765 });
    expect([owned.attr.uid, owned.attr.gid]).toEqual([4321, 8765]);
    expect(fs.statSync(path.join(dir, 'f')).uid).toBe(4321);
  });

  it('reports file-system statistics', async () => {
    const { fuse, dir } = await open();
    const st = await fuse.statfs(ROOT);
    const host = fs.statfsSync(dir);
    expect(st.bsize).toBe(host.bsize);
    expect(st.blocks).toBe(host.blocks);
    expect(st.files).toBe(host.files);
    expect(st.namelen).toBe(255);
    expect(st.frsize).toBeGreaterThan(0);
  });

  itIfCan(backend, 'access', 'checks access', async () => {
    const { fuse } = await open({ populate: (d) => fs.writeFileSync(path.join(d, 'f'), '') });
    const f = await fuse.lookup(ROOT, 'f');
    await fuse.access(f.nodeid, 0);
    await fuse.access(f.nodeid, fs.constants.R_OK | fs.constants.W_OK);
    await fuse.setattr(f.nodeid, { mode: 0o644 });
    // Even root may not execute a file without any x bit.
    await expectErrno(fuse.access(f.nodeid, fs.constants.X_OK), 'EACCES');
  });

  it('sets, gets, lists and removes extended attributes', async () => {
    const { fuse, dir } = await open({ populate: (d) => fs.writeFileSync(path.join(d, 'f'), '') });
    const f = await fuse.lookup(ROOT, 'f');
    await fuse.setxattr(f.nodeid, 'user.colour', 'blue');
    await fuse.setxattr(f.nodeid, 'user.empty', Buffer.alloc(0));
    expect((await fuse.getxattr(f.nodeid, 'user.colour')).toString()).toBe('blue');
    expect(await fuse.getxattrSize(f.nodeid, 'user.colour')).toBe(4);
    expect((await fuse.getxattr(f.nodeid, 'user.empty')).length).toBe(0);
    await expectErrno(fuse.getxattr(f.nodeid, 'user.colour', 2), 'ERANGE');
    await expectErrno(fuse.getxattr(f.nodeid, 'user.missing'), 'ENODATA');

    const names = await fuse.listxattr(f.nodeid);
    expect(names).toEqual(expect.arrayContaining(['user.colour', 'user.empty']));
    expect(await fuse.listxattrSize(f.nodeid)).toBe(names.reduce((n, s) => n + Buffer.byteLength(s) + 1, 0));

    await expectErrno(fuse.setxattr(f.nodeid, 'user.colour', 'red', XATTR_CREATE), 'EEXIST');
    await expectErrno(fuse.setxattr(f.nodeid, 'user.nothing', 'red', XATTR_REPLACE), 'ENODATA');
    await fuse.setxattr(f.nodeid, 'user.colour', 'green', XATTR_REPLACE);
    expect((await fuse.getxattr(f.nodeid, 'user.colour')).toString()).toBe('green');

    await fuse.removexattr(f.nodeid, 'user.colour');
    await expectErrno(fuse.getxattr(f.nodeid, 'user.colour'), 'ENODATA');
    await expectErrno(fuse.removexattr(f.nodeid, 'user.colour'), 'ENODATA');
    expect(await fuse.listxattr(f.nodeid)).not.toContain('user.colour');
    // The host file carries what the guest set.
    expect(fs.readdirSync(dir)).toEqual(['f']);
  });

  itIfCan(backend, 'locks', 'sets, tests and releases POSIX record locks between lock owners', async () => {
    const { fuse } = await open({ populate: (d) => fs.writeFileSync(path.join(d, 'f'), 'x'.repeat(1000)) });
    const f = await fuse.lookup(ROOT, 'f');
    const ha = await fuse.open(f.nodeid, O_RDWR);
    const hb = await fuse.open(f.nodeid, O_RDWR);
    const A = 0xa1n;
    const B = 0xb2n;

    expect((await fuse.getlk(f.nodeid, hb.fh, B, { start: 0n, end: 99n, type: F_WRLCK })).type).toBe(F_UNLCK);
    await fuse.setlk(f.nodeid, ha.fh, A, { start: 0n, end: 99n, type: F_WRLCK });
    const conflict = await fuse.getlk(f.nodeid, hb.fh, B, { start: 50n, end: 60n, type: F_RDLCK });
    expect(conflict.type).toBe(F_WRLCK);
    expect([conflict.start, conflict.end]).toEqual([0n, 99n]);
    // Outside the locked range nothing conflicts.
    expect((await fuse.getlk(f.nodeid, hb.fh, B, { start: 100n, end: 200n, type: F_WRLCK })).type).toBe(F_UNLCK);
    await expectErrno(fuse.setlk(f.nodeid, hb.fh, B, { start: 10n, end: 20n, type: F_WRLCK }), 'EAGAIN', 'EACCES');

    await fuse.setlk(f.nodeid, ha.fh, A, { start: 0n, end: 99n, type: F_UNLCK });
    await fuse.setlk(f.nodeid, hb.fh, B, { start: 10n, end: 20n, type: F_WRLCK });
    expect((await fuse.getlk(f.nodeid, ha.fh, A, { start: 0n, end: WHOLE_FILE, type: F_WRLCK })).type).toBe(F_WRLCK);
    // Shared locks coexist.
    await fuse.setlk(f.nodeid, hb.fh, B, { start: 10n, end: 20n, type: F_RDLCK });
    await fuse.setlk(f.nodeid, ha.fh, A, { start: 0n, end: 50n, type: F_RDLCK });
  });

  itIfCan(backend, 'setlkw', 'waits in SETLKW until a conflicting lock is released', async () => {
    const { fuse } = await open({ populate: (d) => fs.writeFileSync(path.join(d, 'f'), 'x') });
    const f = await fuse.lookup(ROOT, 'f');
    const ha = await fuse.open(f.nodeid, O_RDWR);
    const hb = await fuse.open(f.nodeid, O_RDWR);
    await fuse.setlk(f.nodeid, ha.fh, 1n, { start: 0n, end: WHOLE_FILE, type: F_WRLCK });
    let granted = false;
    const waiting = fuse.setlkw(f.nodeid, hb.fh, 2n, { start: 0n, end: WHOLE_FILE, type: F_WRLCK }).then(() => (granted = true));
    await new Promise((r) => setTimeout(r, 100));
    expect(granted).toBe(false);
    // Other requests are still served while SETLKW waits.
    expect((await fuse.getattr(f.nodeid)).attr.size).toBe(1);
    await fuse.setlk(f.nodeid, ha.fh, 1n, { start: 0n, end: WHOLE_FILE, type: F_UNLCK });
    await waiting;
    expect(granted).toBe(true);
  });

  itIfCan(backend, 'locks', 'takes BSD flock locks per open file', async () => {
    const { fuse } = await open({ populate: (d) => fs.writeFileSync(path.join(d, 'f'), '') });
    const f = await fuse.lookup(ROOT, 'f');
    const h1 = await fuse.open(f.nodeid, O_RDWR);
    const h2 = await fuse.open(f.nodeid, O_RDWR);
    await fuse.setlk(f.nodeid, h1.fh, 1n, { start: 0n, end: WHOLE_FILE, type: F_WRLCK }, true);
    await expectErrno(fuse.setlk(f.nodeid, h2.fh, 2n, { start: 0n, end: WHOLE_FILE, type: F_RDLCK }, true), 'EAGAIN', 'EWOULDBLOCK');
    await fuse.setlk(f.nodeid, h1.fh, 1n, { start: 0n, end: WHOLE_FILE, type: F_UNLCK }, true);
    await fuse.setlk(f.nodeid, h2.fh, 2n, { start: 0n, end: WHOLE_FILE, type: F_RDLCK }, true);
    await fuse.setlk(f.nodeid, h1.fh, 1n, { start: 0n, end: WHOLE_FILE, type: F_RDLCK }, true);
  });

  it('allocates, keeps size and punches holes with FALLOCATE', async () => {
    const { fuse, dir } = await open({ populate: (d) => fs.writeFileSync(path.join(d, 'f'), pattern(64 * 1024, 1)) });
    const f = await fuse.lookup(ROOT, 'f');
    const h = await fuse.open(f.nodeid, O_RDWR);
    await fuse.fallocate(f.nodeid, h.fh, 0, MiB);
    expect(fs.statSync(path.join(dir, 'f')).size).toBe(MiB);
    await fuse.fallocate(f.nodeid, h.fh, MiB, MiB, FALLOC_FL_KEEP_SIZE);
    const st = fs.statSync(path.join(dir, 'f'));
    expect(st.size).toBe(MiB);
    expect(st.blocks * 512).toBeGreaterThanOrEqual(2 * MiB);
    await fuse.fallocate(f.nodeid, h.fh, 4096, 8192, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE);
    const back = await fuse.read(f.nodeid, h.fh, 0, 16384);
    expect(back.subarray(4096, 12288).equals(Buffer.alloc(8192))).toBe(true);
    expect(back.subarray(12288).equals(pattern(64 * 1024, 1).subarray(12288, 16384))).toBe(true);
  });

  it('finds data and holes with LSEEK', async () => {
    const { fuse } = await open({
      populate: (d) => {
        const fd = fs.openSync(path.join(d, 'sparse'), 'w');
        fs.writeSync(fd, pattern(4096, 3), 0, 4096, 0);
        fs.writeSync(fd, pattern(4096, 4), 0, 4096, MiB);
        fs.closeSync(fd);
      },
    });
    const f = await fuse.lookup(ROOT, 'sparse');
    const h = await fuse.open(f.nodeid, O_RDONLY);
    expect(await fuse.lseek(f.nodeid, h.fh, 0n, SEEK_DATA)).toBe(0n);
    expect(await fuse.lseek(f.nodeid, h.fh, 0n, SEEK_HOLE)).toBe(4096n);
    expect(await fuse.lseek(f.nodeid, h.fh, 8192n, SEEK_DATA)).toBe(BigInt(MiB));
    expect(await fuse.lseek(f.nodeid, h.fh, BigInt(MiB), SEEK_HOLE)).toBe(BigInt(MiB + 4096));
    await expectErrno(fuse.lseek(f.nodeid, h.fh, BigInt(MiB + 4096), SEEK_DATA), 'ENXIO');
  });

  it('copies between files with COPY_FILE_RANGE', async () => {
    const { fuse, dir } = await open({ populate: (d) => fs.writeFileSync(path.join(d, 'src'), 'abcdefghijklmnopqrstuvwxyz') });
    const src = await fuse.lookup(ROOT, 'src');
    const hs = await fuse.open(src.nodeid, O_RDONLY);
    const dst = await fuse.create(ROOT, 'dst', O_RDWR, 0o644);
    const n = await fuse.copyFileRange(
      { nodeid: src.nodeid, fh: hs.fh, offset: 10 },
      { nodeid: dst.entry.nodeid, fh: dst.open.fh, offset: 2 },
      5,
    );
    expect(n).toBe(5);
    expect(fs.readFileSync(path.join(dir, 'dst'))).toEqual(Buffer.from('\0\0klmno'));
  });
});
