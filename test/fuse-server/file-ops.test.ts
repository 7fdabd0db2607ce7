import * as fs from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import * as P from '../../src/fuse-server/protocol';
import { Opcode } from '../../src/fuse-server/protocol';
import { Errno } from '../../src/sys/errno';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE } from '../../src/guest/fuse-driver';
import { O_DIRECT, RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT, SEEK_DATA, SEEK_HOLE, STATX_BTIME } from '../../src/sys/fs';
import { replyError } from './fuse-driver';
import { Harness, LINUX_FLAGS, O_APPEND, O_CREAT, O_NOATIME, O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY } from './harness';

let h: Harness;
afterEach(() => h?.close());

const MiB = 1024 * 1024;

/** open(2) flags of this process's fds on `file` (from /proc/self/fdinfo). */
function hostOpenFlags(file: string): number[] {
  const out: number[] = [];
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    let target: string;
    try {
      target = fs.readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue;
    }
    if (target !== file) continue;
    const info = fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
    const m = /flags:\s+([0-7]+)/.exec(info);
    // O_PATH fds (the inode's own) are not the ones we look for.
    if (m && !(parseInt(m[1], 8) & 0o10000000)) out.push(parseInt(m[1], 8));
  }
  return out;
}

async function fileNode(name: string, content: string | Buffer = ''): Promise<{ node: number }> {
  fs.writeFileSync(h.p(name), content);
  return { node: (await h.client.lookup(1, name)).nodeid };
}

describe('file operations', () => {
  it('FALLOCATE allocates, keeps the size, and punches holes', async () => {
    h = Harness.create();
    await h.start();
    const { node } = await fileNode('f', Buffer.alloc(64 * 1024, 0x61));
    const fh = (await h.client.open(node, O_RDWR)).fh;
    const fallocate = (offset: number, length: number, mode: number) => replyError(h.client.fallocate(node, fh, offset, length, mode));
    expect(await fallocate(0, MiB, FALLOC_FL_KEEP_SIZE)).toBe(0);
    expect(fs.statSync(h.p('f')).size).toBe(64 * 1024);
    expect(await fallocate(0, 2 * MiB, 0)).toBe(0);
    expect(fs.statSync(h.p('f')).size).toBe(2 * MiB);
    expect(await fallocate(4096, 8192, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)).toBe(0);
    expect((await h.client.read(node, fh, 4096, 8192)).equals(Buffer.alloc(8192))).toBe(true);
    expect((await h.client.read(node, fh, 0, 4)).toString()).toBe('aaaa');
    // PUNCH_HOLE without KEEP_SIZE is refused by the host, and the errno passes through.
    expect(await fallocate(0, 4096, FALLOC_FL_PUNCH_HOLE)).toBe(-Errno.EOPNOTSUPP);
    expect(await fallocate(0, 4096, 0)).toBe(0);
  });

  it('LSEEK finds data and holes', async () => {
    h = Harness.create();
    await h.start();
    const fd = fs.openSync(h.p('sparse'), 'w');
    fs.writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, 0);
    fs.writeSync(fd, Buffer.alloc(4096, 2), 0, 4096, 4 * MiB);
    fs.closeSync(fd);
    const node = (await h.client.lookup(1, 'sparse')).nodeid;
    const fh = (await h.client.open(node, O_RDONLY)).fh;
    const lseek = (offset: bigint, whence: number) => h.client.lseek(node, fh, offset, whence);
    expect(await lseek(0n, SEEK_HOLE)).toBe(4096n);
    expect(await lseek(8192n, SEEK_DATA)).toBe(BigInt(4 * MiB));
    expect(await replyError(lseek(BigInt(8 * MiB), SEEK_DATA))).toBe(-Errno.ENXIO);
  });

  it('COPY_FILE_RANGE copies between two open files', async () => {
    h = Harness.create();
    await h.start();
    const a = (await fileNode('a', '0123456789abcdef')).node;
    const b = (await fileNode('b', '----------------')).node;
    const fa = (await h.client.open(a, O_RDONLY)).fh;
    const fb = (await h.client.open(b, O_RDWR)).fh;
    const copy = (fhIn: number, fhOut: number, len: number) =>
      h.client.copyFileRange({ nodeid: a, fh: fhIn, offset: 4 }, { nodeid: b, fh: fhOut, offset: 2 }, len);
    let copied = 0;
    expect(await replyError(copy(fa, fb, 6).then((n) => (copied = n)))).toBe(0);
    expect(copied).toBe(6);
    expect(fs.readFileSync(h.p('b'), 'utf8')).toBe('--456789--------');
    expect(await replyError(copy(fa, 999, 6))).toBe(-Errno.EBADF);
  });

  it('SYNCFS syncs the file system of the root', async () => {
    h = Harness.create();
    await h.start();
    expect(await replyError(h.client.syncfs(1))).toBe(0);
    expect((await h.raw(Opcode.FUSE_SYNCFS, 1, [], { replySize: 0 })).error).toBe(-Errno.EINVAL);
  });

  it('TMPFILE makes an unnamed open file that LINK can name', async () => {
    h = Harness.create();
    await h.start();
    const {
      entry,
      open: { fh },
    } = await h.client.tmpfile(1, O_RDWR, 0o600);
    expect(entry.attr.nlink).toBe(0);
    expect(fs.readdirSync(h.dir)).toEqual([]);
    expect(await replyError(h.client.write(entry.nodeid, fh, 0, Buffer.from('temporary')))).toBe(0);
    await h.client.link(entry.nodeid, 1, 'named');
    expect(fs.readFileSync(h.p('named'), 'utf8')).toBe('temporary');
    expect((await h.client.getattr(entry.nodeid)).attr.nlink).toBe(1);
  });

  it('RENAME2 honours NOREPLACE, EXCHANGE and WHITEOUT', async () => {
    h = Harness.create({}, (d) => {
      fs.writeFileSync(`${d}/a`, 'A');
      fs.writeFileSync(`${d}/b`, 'B');
    });
    await h.start();
    await h.client.lookup(1, 'a');
    await h.client.lookup(1, 'b');
    // Non-zero flags: the client sends RENAME2.
    const rename2 = (from: string, to: string, flags: number) => replyError(h.client.rename(1, from, 1, to, flags));
    expect(await rename2('a', 'b', RENAME_NOREPLACE)).toBe(-Errno.EEXIST);
    expect(await rename2('a', 'b', RENAME_EXCHANGE)).toBe(0);
    expect(fs.readFileSync(h.p('a'), 'utf8')).toBe('B');
    expect(await rename2('a', 'c', RENAME_WHITEOUT)).toBe(0);
    // The whiteout is a 0:0 character device left at the old name.
    const st = fs.statSync(h.p('a'));
    expect(st.isCharacterDevice() && st.rdev === 0).toBe(true);
    expect(await rename2('b', 'd', RENAME_NOREPLACE | RENAME_EXCHANGE)).toBe(-Errno.EINVAL);
  });

  it('STATX reports the birth time along with the basic stats', async () => {
    h = Harness.create({}, (d) => fs.writeFileSync(`${d}/f`, 'hello'));
    await h.start();
    const node = (await h.client.lookup(1, 'f')).nodeid;
    const out = await h.client.statx(node, 0xfff);
    const st = fs.statSync(h.p('f'), { bigint: true });
    expect(out.stat.mask & 0x7ff).toBe(0x7ff);
    expect(out.stat.mask & STATX_BTIME).toBe(STATX_BTIME);
    expect(BigInt(out.stat.btime.tv_sec)).toBe(st.birthtimeNs / 1_000_000_000n);
    expect(out.stat.size).toBe(5);
    expect(out.stat.ino).toBe(st.ino);
    expect(out.stat.mode).toBe(Number(st.mode));
    expect([P.fuse_statx.size, P.fuse_statx_out.size]).toEqual([256, 288]);
  });
});

describe('open files whose names change', () => {
  it('keep working after unlink: I/O, SETATTR and GETATTR through the handle', async () => {
    h = Harness.create();
    await h.start();
    const {
      entry,
      open: { fh },
    } = await h.client.create(1, 'gone', O_RDWR | O_CREAT, 0o644, 0o022);
    await h.client.unlink(1, 'gone');
    expect(await replyError(h.client.write(entry.nodeid, fh, 0, Buffer.from('still here')))).toBe(0);
    expect((await h.client.read(entry.nodeid, fh, 0, 100)).toString()).toBe('still here');
    // What ftruncate(2) sends with a write-back cache: size and times, through the handle.
    // FATTR_FH | FATTR_SIZE | FATTR_MODE | FATTR_MTIME | FATTR_CTIME | FATTR_LOCKOWNER, ctime and lock owner 0.
    const changes = { fh, size: 5, mode: 0o600, mtime: { sec: 1_700_000_000, nsec: 42 }, ctime: { sec: 0, nsec: 0 }, lockOwner: 0n };
    expect(await replyError(h.client.setattr(entry.nodeid, changes))).toBe(0);
    const { attr } = await h.client.getattr(entry.nodeid, fh);
    expect([attr.size, attr.mode & 0o777, attr.nlink, attr.mtime, attr.mtimensec]).toEqual([5, 0o600, 0, 1_700_000_000, 42]);
  });

  it('survive renames on the host', async () => {
    h = Harness.create({}, (d) => {
      fs.mkdirSync(`${d}/dir`);
      fs.writeFileSync(`${d}/dir/f`, 'content');
    });
    await h.start();
    const dir = (await h.client.lookup(1, 'dir')).nodeid;
    const f = (await h.client.lookup(dir, 'f')).nodeid;
    const fh = (await h.client.open(f, O_RDONLY)).fh;
    fs.renameSync(h.p('dir'), h.p('moved'));
    fs.renameSync(h.p('moved/f'), h.p('moved/g'));
    expect((await h.client.read(f, fh, 0, 100)).toString()).toBe('content');
    expect((await h.client.getattr(f)).attr.size).toBe(7);
    // The directory's nodeid still reaches it: lookups in it see the new name.
    expect((await h.client.lookup(dir, 'g')).nodeid).toBe(f);
    expect(await replyError(h.client.lookup(dir, 'f'))).toBe(-Errno.ENOENT);
  });
});

describe('--killpriv-v2', () => {
  async function suidFile(): Promise<number> {
    fs.writeFileSync(h.p('prog'), 'binary');
    fs.chmodSync(h.p('prog'), 0o6755);
    return (await h.client.lookup(1, 'prog')).nodeid;
  }
  const isSetId = () => (fs.statSync(h.p('prog')).mode & 0o6000) !== 0;

  it('is offered only when enabled', async () => {
    h = Harness.create();
    expect((await h.start()).flags & P.FUSE_HANDLE_KILLPRIV_V2).toBe(0);
    h.close();
    h = Harness.create({ killprivV2: true });
    expect((await h.start()).flags & P.FUSE_HANDLE_KILLPRIV_V2).toBeTruthy();
  });

  it('drops set-id bits on WRITE, truncating SETATTR and truncating OPEN when the guest asks', async () => {
    h = Harness.create({ killprivV2: true });
    await h.start();
    let node = await suidFile();
    let fh = (await h.client.open(node, O_RDWR)).fh;
    expect(await replyError(h.client.write(node, fh, 0, Buffer.from('x')))).toBe(0);
    expect(isSetId()).toBe(true); // no FUSE_WRITE_KILL_SUIDGID: a privileged writer
    expect(await replyError(h.client.write(node, fh, 0, Buffer.from('x'), P.FUSE_WRITE_KILL_SUIDGID))).toBe(0);
    expect(isSetId()).toBe(false);

    fs.chmodSync(h.p('prog'), 0o6755);
    expect(await replyError(h.client.setattr(node, { size: 2, killSuidgid: true }))).toBe(0);
    expect(isSetId()).toBe(false);

    fs.chmodSync(h.p('prog'), 0o6755);
    fh = (await h.client.open(node, O_RDWR | O_TRUNC, P.FUSE_OPEN_KILL_SUIDGID)).fh;
    expect(isSetId()).toBe(false);
    node = 0;
  });

  it('leaves set-id bits alone when not negotiated, whatever the request says', async () => {
    h = Harness.create();
    await h.start();
    const node = await suidFile();
    const fh = (await h.client.open(node, O_RDWR)).fh;
    expect(await replyError(h.client.write(node, fh, 0, Buffer.from('x'), P.FUSE_WRITE_KILL_SUIDGID))).toBe(0);
    expect(isSetId()).toBe(true);
  });
});

describe('open flags', () => {
  it('--writeback: negotiated on request; write-only opens widened to read-write', async () => {
    h = Harness.create();
    expect((await h.start()).flags & P.FUSE_WRITEBACK_CACHE).toBe(0);
    let node = (await fileNode('f', 'data')).node;
    let fh = (await h.client.open(node, O_WRONLY)).fh;
    expect(await replyError(h.client.read(node, fh, 0, 4))).toBe(-Errno.EBADF);
    h.close();

    h = Harness.create({ writeback: true });
    expect((await h.start()).flags & P.FUSE_WRITEBACK_CACHE).toBeTruthy();
    node = (await fileNode('f', 'data')).node;
    fh = (await h.client.open(node, O_WRONLY | O_APPEND)).fh;
    expect((await h.client.read(node, fh, 0, 4)).toString()).toBe('data');
    // The kernel owns append positions: the write lands where it says.
    expect(await replyError(h.client.write(node, fh, 1, Buffer.from('X'), 0, O_WRONLY | O_APPEND))).toBe(0);
    expect(fs.readFileSync(h.p('f'), 'utf8')).toBe('dXta');
    expect(hostOpenFlags(h.p('f')).every((f) => (f & 3) === O_RDWR && !(f & O_APPEND))).toBe(true);
  });

  it('--allow-mmap: FUSE_DIRECT_IO_ALLOW_MMAP agreed when the guest offers it, never otherwise', async () => {
    h = Harness.create({ cache: 'never' });
    expect((await h.start()).flags2 & P.FUSE_DIRECT_IO_ALLOW_MMAP_FLAGS2).toBe(0);
    h.close();
    // The harness offers what a Linux 6.x guest does, this bit included (6.6 and later).
    const logged: string[] = [];
    h = Harness.create({ cache: 'never', allowMmap: true, log: (_level, msg) => logged.push(msg) });
    expect((await h.start()).flags2 & P.FUSE_DIRECT_IO_ALLOW_MMAP_FLAGS2).toBeTruthy();
    expect(logged.filter((m) => m.includes('--allow-mmap'))).toEqual([]);
  });

  it('O_APPEND: the guest appends at the host end of file; cached write-back keeps its offsets', async () => {
    h = Harness.create();
    await h.start();
    const node = (await fileNode('log', 'one\n')).node;
    const fh = (await h.client.open(node, O_WRONLY | O_APPEND)).fh;
    fs.appendFileSync(h.p('log'), 'host\n');
    expect(await replyError(h.client.write(node, fh, 4, Buffer.from('two\n'), 0, O_WRONLY | O_APPEND))).toBe(0);
    expect(fs.readFileSync(h.p('log'), 'utf8')).toBe('one\nhost\ntwo\n');
    expect(await replyError(h.client.write(node, fh, 0, Buffer.from('ONE'), P.FUSE_WRITE_CACHE, O_WRONLY | O_APPEND))).toBe(0);
    expect(fs.readFileSync(h.p('log'), 'utf8')).toBe('ONE\nhost\ntwo\n');
  });

  it('drops O_NOATIME unless --preserve-noatime, and O_DIRECT unless --allow-direct-io', async () => {
    h = Harness.create();
    await h.start();
    let node = (await fileNode('f', 'x')).node;
    await h.client.open(node, O_RDONLY | O_NOATIME | O_DIRECT);
    expect(hostOpenFlags(h.p('f')).map((f) => f & (O_NOATIME | O_DIRECT))).toEqual([0]);
    h.close();

    h = Harness.create({ preserveNoatime: true, allowDirectIo: true });
    await h.start();
    node = (await fileNode('f', 'x')).node;
    await h.client.open(node, O_RDONLY | O_NOATIME | O_DIRECT);
    expect(hostOpenFlags(h.p('f')).map((f) => f & (O_NOATIME | O_DIRECT))).toEqual([O_NOATIME | O_DIRECT]);
  });

  it('INIT with everything a Linux guest offers grants only what is configured', async () => {
    h = Harness.create();
    const out = await h.start(LINUX_FLAGS);
    const optional =
      P.FUSE_WRITEBACK_CACHE |
      P.FUSE_POSIX_LOCKS |
      P.FUSE_FLOCK_LOCKS |
      P.FUSE_POSIX_ACL |
      P.FUSE_HANDLE_KILLPRIV_V2 |
      P.FUSE_SUBMOUNTS |
      P.FUSE_MAP_ALIGNMENT |
      P.FUSE_SETXATTR_EXT;
    expect(out.flags & optional).toBe(0);
    expect(out.flags2).toBe(0);
    expect(out.map_alignment).toBe(0);
  });
});
