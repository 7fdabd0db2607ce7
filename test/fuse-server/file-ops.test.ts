import * as fs from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import * as P from '../../src/fuse-server/protocol';
import { Opcode } from '../../src/fuse-server/protocol';
import { Errno } from '../../src/sys/errno';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE } from '../../src/guest/fuse-driver';
import { O_DIRECT, RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT, SEEK_DATA, SEEK_HOLE, STATX_BTIME } from '../../src/sys/fs';
import { cstr, encode } from './fuse-driver';
import { Harness, LINUX_FLAGS, O_APPEND, O_NOATIME, O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY } from './harness';

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

function fileNode(name: string, content: string | Buffer = ''): { node: number } {
  fs.writeFileSync(h.p(name), content);
  return { node: h.lookup(1, name).nodeid };
}

describe('file operations', () => {
  it('FALLOCATE allocates, keeps the size, and punches holes', () => {
    h = Harness.create();
    h.init();
    const { node } = fileNode('f', Buffer.alloc(64 * 1024, 0x61));
    const fh = h.open(node, O_RDWR);
    const fallocate = (offset: number, length: number, mode: number) =>
      h.fuse.request(Opcode.FUSE_FALLOCATE, node, [encode(P.fuse_fallocate_in, { fh, offset, length, mode })]);
    expect(fallocate(0, MiB, FALLOC_FL_KEEP_SIZE).error).toBe(0);
    expect(fs.statSync(h.p('f')).size).toBe(64 * 1024);
    expect(fallocate(0, 2 * MiB, 0).error).toBe(0);
    expect(fs.statSync(h.p('f')).size).toBe(2 * MiB);
    expect(fallocate(4096, 8192, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE).error).toBe(0);
    expect(h.read(node, fh, 4096, 8192).equals(Buffer.alloc(8192))).toBe(true);
    expect(h.read(node, fh, 0, 4).toString()).toBe('aaaa');
    // PUNCH_HOLE without KEEP_SIZE is refused by the host, and the errno passes through.
    expect(fallocate(0, 4096, FALLOC_FL_PUNCH_HOLE).error).toBe(-Errno.EOPNOTSUPP);
    expect(fallocate(0, 4096, 0).error).toBe(0);
  });

  it('LSEEK finds data and holes', () => {
    h = Harness.create();
    h.init();
    const fd = fs.openSync(h.p('sparse'), 'w');
    fs.writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, 0);
    fs.writeSync(fd, Buffer.alloc(4096, 2), 0, 4096, 4 * MiB);
    fs.closeSync(fd);
    const node = h.lookup(1, 'sparse').nodeid;
    const fh = h.open(node, O_RDONLY);
    const lseek = (offset: bigint, whence: number) =>
      h.fuse.request(Opcode.FUSE_LSEEK, node, [encode(P.fuse_lseek_in, { fh, offset, whence })]);
    const at = (offset: bigint, whence: number) => P.fuse_lseek_out.decode(lseek(offset, whence).body, 0).offset;
    expect(at(0n, SEEK_HOLE)).toBe(4096n);
    expect(at(8192n, SEEK_DATA)).toBe(BigInt(4 * MiB));
    expect(lseek(BigInt(8 * MiB), SEEK_DATA).error).toBe(-Errno.ENXIO);
  });

  it('COPY_FILE_RANGE copies between two open files', () => {
    h = Harness.create();
    h.init();
    const a = fileNode('a', '0123456789abcdef').node;
    const b = fileNode('b', '----------------').node;
    const fa = h.open(a, O_RDONLY);
    const fb = h.open(b, O_RDWR);
    const copy = (fhIn: number, fhOut: number, len: number) =>
      h.fuse.request(Opcode.FUSE_COPY_FILE_RANGE, a, [
        encode(P.fuse_copy_file_range_in, { fh_in: fhIn, off_in: 4, nodeid_out: b, fh_out: fhOut, off_out: 2, len, flags: 0 }),
      ]);
    const r = copy(fa, fb, 6);
    expect(r.error).toBe(0);
    expect(P.fuse_write_out.decode(r.body, 0).size).toBe(6);
    expect(fs.readFileSync(h.p('b'), 'utf8')).toBe('--456789--------');
    expect(copy(fa, 999, 6).error).toBe(-Errno.EBADF);
  });

  it('SYNCFS syncs the file system of the root', () => {
    h = Harness.create();
    h.init();
    expect(h.fuse.request(Opcode.FUSE_SYNCFS, 1, [encode(P.fuse_syncfs_in, {})]).error).toBe(0);
    expect(h.fuse.request(Opcode.FUSE_SYNCFS, 1, []).error).toBe(-Errno.EINVAL);
  });

  it('TMPFILE makes an unnamed open file that LINK can name', () => {
    h = Harness.create();
    h.init();
    const a = encode(P.fuse_create_in, { flags: O_RDWR, mode: 0o100600, umask: 0, open_flags: 0 });
    const body = h.fuse.ok(Opcode.FUSE_TMPFILE, 1, [a, cstr('/')]);
    const entry = P.fuse_entry_out.decode(body, 0);
    const fh = P.fuse_open_out.decode(body, P.fuse_entry_out.size).fh;
    expect(entry.attr.nlink).toBe(0);
    expect(fs.readdirSync(h.dir)).toEqual([]);
    expect(h.write(entry.nodeid, fh, 0, 'temporary').error).toBe(0);
    h.fuse.ok(Opcode.FUSE_LINK, 1, [encode(P.fuse_link_in, { oldnodeid: entry.nodeid }), cstr('named')]);
    expect(fs.readFileSync(h.p('named'), 'utf8')).toBe('temporary');
    expect(h.getattr(entry.nodeid).nlink).toBe(1);
  });

  it('RENAME2 honours NOREPLACE, EXCHANGE and WHITEOUT', () => {
    h = Harness.create({}, (d) => {
      fs.writeFileSync(`${d}/a`, 'A');
      fs.writeFileSync(`${d}/b`, 'B');
    });
    h.init();
    h.lookup(1, 'a');
    h.lookup(1, 'b');
    const rename2 = (from: string, to: string, flags: number) =>
      h.fuse.request(Opcode.FUSE_RENAME2, 1, [encode(P.fuse_rename2_in, { newdir: 1, flags }), cstr(from), cstr(to)]);
    expect(rename2('a', 'b', RENAME_NOREPLACE).error).toBe(-Errno.EEXIST);
    expect(rename2('a', 'b', RENAME_EXCHANGE).error).toBe(0);
    expect(fs.readFileSync(h.p('a'), 'utf8')).toBe('B');
    expect(rename2('a', 'c', RENAME_WHITEOUT).error).toBe(0);
    // The whiteout is a 0:0 character device left at the old name.
    const st = fs.statSync(h.p('a'));
    expect(st.isCharacterDevice() && st.rdev === 0).toBe(true);
    expect(rename2('b', 'd', RENAME_NOREPLACE | RENAME_EXCHANGE).error).toBe(-Errno.EINVAL);
  });

  it('STATX reports the birth time along with the basic stats', () => {
    h = Harness.create({}, (d) => fs.writeFileSync(`${d}/f`, 'hello'));
    h.init();
    const node = h.lookup(1, 'f').nodeid;
    const body = h.fuse.ok(Opcode.FUSE_STATX, node, [encode(P.fuse_statx_in, { getattr_flags: 0, fh: 0, sx_flags: 0, sx_mask: 0xfff })]);
    const out = P.fuse_statx_out.decode(body, 0);
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
  it('keep working after unlink: I/O, SETATTR and GETATTR through the handle', () => {
    h = Harness.create();
    h.init();
    const { entry, fh } = h.create(1, 'gone');
    h.fuse.ok(Opcode.FUSE_UNLINK, 1, [cstr('gone')]);
    expect(h.write(entry.nodeid, fh, 0, 'still here').error).toBe(0);
    expect(h.read(entry.nodeid, fh, 0, 100).toString()).toBe('still here');
    // What ftruncate(2) sends with a write-back cache: size and times, through the handle.
    const valid = P.FATTR_FH | P.FATTR_SIZE | P.FATTR_MODE | P.FATTR_MTIME | P.FATTR_CTIME | P.FATTR_LOCKOWNER;
    expect(h.setattr(entry.nodeid, { valid, fh, size: 5, mode: 0o600, mtime: 1_700_000_000, mtimensec: 42 }).error).toBe(0);
    const attr = h.getattr(entry.nodeid, fh);
    expect([attr.size, attr.mode & 0o777, attr.nlink, attr.mtime, attr.mtimensec]).toEqual([5, 0o600, 0, 1_700_000_000, 42]);
  });

  it('survive renames on the host', () => {
    h = Harness.create({}, (d) => {
      fs.mkdirSync(`${d}/dir`);
      fs.writeFileSync(`${d}/dir/f`, 'content');
    });
    h.init();
    const dir = h.lookup(1, 'dir').nodeid;
    const f = h.lookup(dir, 'f').nodeid;
    const fh = h.open(f, O_RDONLY);
    fs.renameSync(h.p('dir'), h.p('moved'));
    fs.renameSync(h.p('moved/f'), h.p('moved/g'));
    expect(h.read(f, fh, 0, 100).toString()).toBe('content');
    expect(h.getattr(f).size).toBe(7);
    // The directory's nodeid still reaches it: lookups in it see the new name.
    expect(h.lookup(dir, 'g').nodeid).toBe(f);
    expect(h.fuse.request(Opcode.FUSE_LOOKUP, dir, [cstr('f')]).error).toBe(-Errno.ENOENT);
  });
});

describe('--killpriv-v2', () => {
  function suidFile(): number {
    fs.writeFileSync(h.p('prog'), 'binary');
    fs.chmodSync(h.p('prog'), 0o6755);
    return h.lookup(1, 'prog').nodeid;
  }
  const isSetId = () => (fs.statSync(h.p('prog')).mode & 0o6000) !== 0;

  it('is offered only when enabled', () => {
    h = Harness.create();
    expect(h.init().flags & P.FUSE_HANDLE_KILLPRIV_V2).toBe(0);
    h.close();
    h = Harness.create({ killprivV2: true });
    expect(h.init().flags & P.FUSE_HANDLE_KILLPRIV_V2).toBeTruthy();
  });

  it('drops set-id bits on WRITE, truncating SETATTR and truncating OPEN when the guest asks', () => {
    h = Harness.create({ killprivV2: true });
    h.init();
    let node = suidFile();
    let fh = h.open(node, O_RDWR);
    expect(h.write(node, fh, 0, 'x').error).toBe(0);
    expect(isSetId()).toBe(true); // no FUSE_WRITE_KILL_SUIDGID: a privileged writer
    expect(h.write(node, fh, 0, 'x', P.FUSE_WRITE_KILL_SUIDGID).error).toBe(0);
    expect(isSetId()).toBe(false);

    fs.chmodSync(h.p('prog'), 0o6755);
    expect(h.setattr(node, { valid: P.FATTR_SIZE | P.FATTR_KILL_SUIDGID, size: 2 }).error).toBe(0);
    expect(isSetId()).toBe(false);

    fs.chmodSync(h.p('prog'), 0o6755);
    fh = h.open(node, O_RDWR | O_TRUNC, P.FUSE_OPEN_KILL_SUIDGID);
    expect(isSetId()).toBe(false);
    node = 0;
  });

  it('leaves set-id bits alone when not negotiated, whatever the request says', () => {
    h = Harness.create();
    h.init();
    const node = suidFile();
    const fh = h.open(node, O_RDWR);
    expect(h.write(node, fh, 0, 'x', P.FUSE_WRITE_KILL_SUIDGID).error).toBe(0);
    expect(isSetId()).toBe(true);
  });
});

describe('open flags', () => {
  it('--writeback: negotiated on request; write-only opens widened to read-write', () => {
    h = Harness.create();
    expect(h.init().flags & P.FUSE_WRITEBACK_CACHE).toBe(0);
    let node = fileNode('f', 'data').node;
    let fh = h.open(node, O_WRONLY);
    expect(
      h.fuse.request(Opcode.FUSE_READ, node, [encode(P.fuse_read_in, { fh, offset: 0, size: 4, read_flags: 0, lock_owner: 0n, flags: 0 })])
        .error,
    ).toBe(-Errno.EBADF);
    h.close();

    h = Harness.create({ writeback: true });
    expect(h.init().flags & P.FUSE_WRITEBACK_CACHE).toBeTruthy();
    node = fileNode('f', 'data').node;
    fh = h.open(node, O_WRONLY | O_APPEND);
    expect(h.read(node, fh, 0, 4).toString()).toBe('data');
    // The kernel owns append positions: the write lands where it says.
    expect(h.write(node, fh, 1, 'X', 0, O_WRONLY | O_APPEND).error).toBe(0);
    expect(fs.readFileSync(h.p('f'), 'utf8')).toBe('dXta');
    expect(hostOpenFlags(h.p('f')).every((f) => (f & 3) === O_RDWR && !(f & O_APPEND))).toBe(true);
  });

  it('O_APPEND: the guest appends at the host end of file; cached write-back keeps its offsets', () => {
    h = Harness.create();
    h.init();
    const node = fileNode('log', 'one\n').node;
    const fh = h.open(node, O_WRONLY | O_APPEND);
    fs.appendFileSync(h.p('log'), 'host\n');
    expect(h.write(node, fh, 4, 'two\n', 0, O_WRONLY | O_APPEND).error).toBe(0);
    expect(fs.readFileSync(h.p('log'), 'utf8')).toBe('one\nhost\ntwo\n');
    expect(h.write(node, fh, 0, 'ONE', P.FUSE_WRITE_CACHE, O_WRONLY | O_APPEND).error).toBe(0);
    expect(fs.readFileSync(h.p('log'), 'utf8')).toBe('ONE\nhost\ntwo\n');
  });

  it('drops O_NOATIME unless --preserve-noatime, and O_DIRECT unless --allow-direct-io', () => {
    h = Harness.create();
    h.init();
    let node = fileNode('f', 'x').node;
    h.open(node, O_RDONLY | O_NOATIME | O_DIRECT);
    expect(hostOpenFlags(h.p('f')).map((f) => f & (O_NOATIME | O_DIRECT))).toEqual([0]);
    h.close();

    h = Harness.create({ preserveNoatime: true, allowDirectIo: true });
    h.init();
    node = fileNode('f', 'x').node;
    h.open(node, O_RDONLY | O_NOATIME | O_DIRECT);
    expect(hostOpenFlags(h.p('f')).map((f) => f & (O_NOATIME | O_DIRECT))).toEqual([O_NOATIME | O_DIRECT]);
  });

  it('INIT with everything a Linux guest offers grants only what is configured', () => {
    h = Harness.create();
    const out = h.init(LINUX_FLAGS);
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
