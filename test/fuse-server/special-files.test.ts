/**
 * Device nodes, FIFOs and sockets are never opened by the daemon, whichever
 * request names them (CREATE of an existing name included), and a handle's
 * access mode is the one it was opened with.
 */
import * as fs from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import * as P from '../../src/fuse-server/protocol';
import { FATTR_SIZE, Opcode } from '../../src/fuse-server/protocol';
import { Errno } from '../../src/sys/errno';
import { O_NONBLOCK } from '../../src/sys/fs';
import { cstr, encode } from './fuse-driver';
import { Harness, O_APPEND, O_CREAT, O_EXCL, O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY } from './harness';

const S_IFCHR = 0o020000;
const S_IFIFO = 0o010000;
const makedev = (major: number, minor: number) => (major << 8) | minor;

let h: Harness;
const hostFds: number[] = [];
afterEach(() => {
  hostFds.splice(0).forEach((fd) => fs.closeSync(fd));
  h?.close();
});

function mknod(name: string, mode: number, rdev = 0): { error: number; nodeid: number } {
  const r = h.fuse.request(Opcode.FUSE_MKNOD, 1, [encode(P.fuse_mknod_in, { mode, rdev, umask: 0 }), cstr(name)]);
  return { error: r.error, nodeid: r.error ? 0 : P.fuse_entry_out.decode(r.body, 0).nodeid };
}

/** This process's fds (O_PATH ones aside) open on `file`. */
function openedFds(file: string): number {
  let n = 0;
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    try {
      if (fs.readlinkSync(`/proc/self/fd/${fd}`) !== file) continue;
      const flags = parseInt(/flags:\s+([0-7]+)/.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1], 8);
      if (!(flags & 0o10000000)) n++;
    } catch {
      // Closed meanwhile (readdir's own fd).
    }
  }
  return n;
}

const syncfs = (nodeid: number) => h.fuse.request(Opcode.FUSE_SYNCFS, nodeid, [encode(P.fuse_syncfs_in, {})]).error;
const openIn = (flags: number) => [encode(P.fuse_open_in, { flags, open_flags: 0 })];

describe('special files are never opened', () => {
  it('CREATE of an existing character device answers EINVAL and opens nothing', (ctx) => {
    h = Harness.create();
    h.init();
    // 1:5 is /dev/zero on the host; 0:0 (a whiteout) has no driver, so an open would answer ENXIO.
    const zero = mknod('zero', S_IFCHR | 0o666, makedev(1, 5));
    if (zero.error === -Errno.EPERM) ctx.skip('MKNOD of a device needs CAP_MKNOD, which this host refuses');
    expect(zero.error).toBe(0);
    expect(mknod('nodriver', S_IFCHR | 0o666, 0).error).toBe(0);
    for (const name of ['zero', 'nodriver']) {
      for (const flags of [O_RDWR, O_RDONLY, O_WRONLY, O_RDWR | O_TRUNC]) {
        expect(h.createRaw(1, name, { flags }).error, `${name} flags ${flags}`).toBe(-Errno.EINVAL);
      }
      expect(openedFds(h.p(name))).toBe(0);
    }
    // The guest's O_EXCL still says the name exists.
    expect(h.createRaw(1, 'zero', { flags: O_RDWR | O_EXCL }).error).toBe(-Errno.EEXIST);
    // Every other way in is refused too, or does not open the node.
    expect(h.fuse.request(Opcode.FUSE_OPEN, zero.nodeid, openIn(O_RDWR)).error).toBe(-Errno.EINVAL);
    expect(h.setattr(zero.nodeid, { valid: FATTR_SIZE, size: 0 }).error).toBe(-Errno.EINVAL);
    expect(syncfs(zero.nodeid)).toBe(0);
    expect(syncfs(h.lookup(1, 'nodriver').nodeid)).toBe(0);
    expect(openedFds(h.p('zero'))).toBe(0);
    expect(h.session.stats.handles).toBe(0);
  });

  it('CREATE of an existing FIFO answers EINVAL at once, without opening it', () => {
    h = Harness.create();
    h.init();
    const fifo = mknod('fifo', S_IFIFO | 0o666);
    expect(fifo.error).toBe(0);
    // A reader, so that a regression would make the write-only open succeed rather than hang the test.
    hostFds.push(fs.openSync(h.p('fifo'), fs.constants.O_RDONLY | O_NONBLOCK));
    const start = Date.now();
    for (const flags of [O_WRONLY, O_RDONLY, O_RDWR]) expect(h.createRaw(1, 'fifo', { flags }).error).toBe(-Errno.EINVAL);
    expect(Date.now() - start).toBeLessThan(1000);
    expect(openedFds(h.p('fifo'))).toBe(1); // ours
    expect(syncfs(fifo.nodeid)).toBe(0);
    expect(h.session.stats.handles).toBe(0);
  });

  it('CREATE of an existing socket, symlink or directory: EINVAL, ELOOP, EISDIR', () => {
    h = Harness.create({}, (d) => {
      fs.writeFileSync(`${d}/target`, 'keep');
      fs.symlinkSync('target', `${d}/link`);
      fs.mkdirSync(`${d}/dir`);
    });
    h.init();
    expect(mknod('sock', 0o140000 | 0o666).error).toBe(0);
    expect(h.createRaw(1, 'sock', { flags: O_RDWR }).error).toBe(-Errno.EINVAL);
    expect(h.createRaw(1, 'link', { flags: O_RDWR | O_TRUNC }).error).toBe(-Errno.ELOOP);
    expect(fs.readFileSync(h.p('target'), 'utf8')).toBe('keep');
    expect(h.createRaw(1, 'dir', { flags: O_RDONLY }).error).toBe(-Errno.EISDIR);
    expect(syncfs(h.lookup(1, 'link').nodeid)).toBe(0);
    expect(h.session.stats.handles).toBe(0);
  });
});

describe('CREATE of an existing regular file', () => {
  it('opens it as OPEN would (O_TRUNC honoured), as the caller, and never removes it', () => {
    h = Harness.create({}, (d) => {
      fs.chmodSync(d, 0o777);
      fs.writeFileSync(`${d}/f`, 'content');
      fs.writeFileSync(`${d}/private`, 'secret');
      fs.chmodSync(`${d}/private`, 0o600);
    });
    h.init();
    const known = h.lookup(1, 'f').nodeid;
    const c = h.create(1, 'f', { flags: O_RDWR });
    expect(c.entry.nodeid).toBe(known);
    expect(h.read(known, c.fh, 0, 100).toString()).toBe('content');
    expect(h.createRaw(1, 'f', { flags: O_RDWR | O_EXCL }).error).toBe(-Errno.EEXIST);
    const t = h.create(1, 'f', { flags: O_WRONLY | O_TRUNC });
    expect(fs.readFileSync(h.p('f'), 'utf8')).toBe('');
    expect(h.write(known, t.fh, 0, 'new').error).toBe(0);
    expect(fs.readFileSync(h.p('f'), 'utf8')).toBe('new');
    // Another user may not open root's 0600 file by creating it.
    expect(h.createRaw(1, 'private', { flags: O_RDONLY, uid: 1234, gid: 1234 }).error).toBe(-Errno.EACCES);
    expect(fs.readFileSync(h.p('private'), 'utf8')).toBe('secret');
    // A new name is still created, owned by the caller.
    const n = h.create(1, 'new', { flags: O_RDWR | O_EXCL, uid: 1234, gid: 1234 });
    expect(n.entry.attr.uid).toBe(1234);
    expect(h.write(n.entry.nodeid, n.fh, 0, 'x').error).toBe(0);
  });
});

describe('a handle keeps the access mode it was opened with', () => {
  it('WRITE on a read-only handle answers EBADF, write_in.flags O_APPEND notwithstanding', () => {
    h = Harness.create({}, (d) => {
      fs.writeFileSync(`${d}/ro`, 'abc');
      fs.chmodSync(`${d}/ro`, 0o444);
    });
    // No write-back cache: appending writes go through the O_APPEND path.
    h.init(P.FUSE_ASYNC_READ | P.FUSE_INIT_EXT, 0);
    const node = h.lookup(1, 'ro').nodeid;
    const fh = h.open(node, O_RDONLY);
    expect(h.write(node, fh, 0, 'X').error).toBe(-Errno.EBADF);
    expect(h.write(node, fh, 0, 'PWNED', 0, O_APPEND).error).toBe(-Errno.EBADF);
    expect(h.write(node, fh, 0, 'PWNED', 0, O_APPEND | O_RDWR).error).toBe(-Errno.EBADF);
    expect(fs.readFileSync(h.p('ro'), 'utf8')).toBe('abc');
    // A read-only handle from CREATE is read-only too.
    const c = h.create(1, 'made', { flags: O_RDONLY | O_CREAT });
    expect(h.write(c.entry.nodeid, c.fh, 0, 'x', 0, O_APPEND).error).toBe(-Errno.EBADF);
    expect(fs.readFileSync(h.p('made'), 'utf8')).toBe('');
    // A writable handle still appends when the guest's file is O_APPEND.
    fs.writeFileSync(h.p('w'), 'abc');
    const w = h.lookup(1, 'w').nodeid;
    const wfh = h.open(w, O_WRONLY | O_APPEND);
    expect(h.write(w, wfh, 0, 'def', 0, O_WRONLY | O_APPEND).error).toBe(0);
    expect(fs.readFileSync(h.p('w'), 'utf8')).toBe('abcdef');
  });

  it('with the write-back cache too', () => {
    h = Harness.create({ writeback: true }, (d) => fs.writeFileSync(`${d}/f`, 'abc'));
    h.init();
    const node = h.lookup(1, 'f').nodeid;
    const fh = h.open(node, O_RDONLY);
    expect(h.write(node, fh, 0, 'X', P.FUSE_WRITE_CACHE, O_APPEND).error).toBe(-Errno.EBADF);
    expect(fs.readFileSync(h.p('f'), 'utf8')).toBe('abc');
  });
});
