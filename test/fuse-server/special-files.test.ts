/**
 * Device nodes, FIFOs and sockets are never opened by the daemon, whichever
 * request names them (CREATE of an existing name included), and a handle's
 * access mode is the one it was opened with.
 */
import * as fs from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import * as P from '../../src/fuse-server/protocol';
import type { FuseClient } from '../../src/guest/fuse-driver';
import { Errno } from '../../src/sys/errno';
import { O_NONBLOCK } from '../../src/sys/fs';
import { type DirectTransport, replyError } from './fuse-driver';
import { Harness, O_APPEND, O_CREAT, O_EXCL, O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY } from './harness';

const S_IFCHR = 0o020000;
const S_IFIFO = 0o010000;
const makedev = (major: number, minor: number) => (major << 8) | minor;

let h: Harness;
let client: FuseClient<DirectTransport>;
const hostFds: number[] = [];
afterEach(() => {
  hostFds.splice(0).forEach((fd) => fs.closeSync(fd));
  h?.close();
});

/** A harness as `Harness.create` makes it, INIT done through its client (in `client`) with `flags`/`flags2` or the Linux offer. */
async function setup(populate?: (dir: string) => void, options: Parameters<typeof Harness.create>[0] = {}, ...init: [number?, number?]) {
  h = Harness.create(options, populate);
  client = h.client;
  await h.start(...init);
}

async function mknod(name: string, mode: number, rdev = 0): Promise<{ error: number; nodeid: number }> {
  let nodeid = 0;
  const error = await replyError(client.mknod(1, name, mode, rdev).then((e) => (nodeid = e.nodeid)));
  return { error, nodeid };
}

/** CREATE as the harness sends it (O_CREAT added, mode 0644, umask 022): the error it answers. */
function create(name: string, flags: number, creds: { uid?: number; gid?: number } = {}): Promise<number> {
  return replyError(client.create(1, name, flags | O_CREAT, 0o644, 0o022, creds));
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

const syncfs = (nodeid: number) => replyError(client.syncfs(nodeid));

describe('special files are never opened', async () => {
  it('CREATE of an existing character device answers EINVAL and opens nothing', async (ctx) => {
    await setup();
    // 1:5 is /dev/zero on the host; 0:0 (a whiteout) has no driver, so an open would answer ENXIO.
    const zero = await mknod('zero', S_IFCHR | 0o666, makedev(1, 5));
    if (zero.error === -Errno.EPERM) ctx.skip('MKNOD of a device needs CAP_MKNOD, which this host refuses');
    expect(zero.error).toBe(0);
    expect((await mknod('nodriver', S_IFCHR | 0o666, 0)).error).toBe(0);
    for (const name of ['zero', 'nodriver']) {
      for (const flags of [O_RDWR, O_RDONLY, O_WRONLY, O_RDWR | O_TRUNC]) {
        expect(await create(name, flags), `${name} flags ${flags}`).toBe(-Errno.EINVAL);
      }
      expect(openedFds(h.p(name))).toBe(0);
    }
    // The guest's O_EXCL still says the name exists.
    expect(await create('zero', O_RDWR | O_EXCL)).toBe(-Errno.EEXIST);
    // Every other way in is refused too, or does not open the node.
    expect(await replyError(client.open(zero.nodeid, O_RDWR))).toBe(-Errno.EINVAL);
    expect(await replyError(client.setattr(zero.nodeid, { size: 0 }))).toBe(-Errno.EINVAL);
    expect(await syncfs(zero.nodeid)).toBe(0);
    expect(await syncfs((await client.lookup(1, 'nodriver')).nodeid)).toBe(0);
    expect(openedFds(h.p('zero'))).toBe(0);
    expect(h.session.stats.handles).toBe(0);
  });

  it('CREATE of an existing FIFO answers EINVAL at once, without opening it', async () => {
    await setup();
    const fifo = await mknod('fifo', S_IFIFO | 0o666);
    expect(fifo.error).toBe(0);
    // A reader, so that a regression would make the write-only open succeed rather than hang the test.
    hostFds.push(fs.openSync(h.p('fifo'), fs.constants.O_RDONLY | O_NONBLOCK));
    const start = Date.now();
    for (const flags of [O_WRONLY, O_RDONLY, O_RDWR]) expect(await create('fifo', flags)).toBe(-Errno.EINVAL);
    expect(Date.now() - start).toBeLessThan(1000);
    expect(openedFds(h.p('fifo'))).toBe(1); // ours
    expect(await syncfs(fifo.nodeid)).toBe(0);
    expect(h.session.stats.handles).toBe(0);
  });

  it('CREATE of an existing socket, symlink or directory: EINVAL, ELOOP, EISDIR', async () => {
    await setup((d) => {
      fs.writeFileSync(`${d}/target`, 'keep');
      fs.symlinkSync('target', `${d}/link`);
      fs.mkdirSync(`${d}/dir`);
    });
    expect((await mknod('sock', 0o140000 | 0o666)).error).toBe(0);
    expect(await create('sock', O_RDWR)).toBe(-Errno.EINVAL);
    expect(await create('link', O_RDWR | O_TRUNC)).toBe(-Errno.ELOOP);
    expect(fs.readFileSync(h.p('target'), 'utf8')).toBe('keep');
    expect(await create('dir', O_RDONLY)).toBe(-Errno.EISDIR);
    expect(await syncfs((await client.lookup(1, 'link')).nodeid)).toBe(0);
    expect(h.session.stats.handles).toBe(0);
  });
});

describe('CREATE of an existing regular file', async () => {
  it('opens it as OPEN would (O_TRUNC honoured), as the caller, and never removes it', async () => {
    await setup((d) => {
      fs.chmodSync(d, 0o777);
      fs.writeFileSync(`${d}/f`, 'content');
      fs.writeFileSync(`${d}/private`, 'secret');
      fs.chmodSync(`${d}/private`, 0o600);
    });
    const known = (await client.lookup(1, 'f')).nodeid;
    const c = await client.create(1, 'f', O_RDWR | O_CREAT, 0o644, 0o022);
    expect(c.entry.nodeid).toBe(known);
    expect((await client.read(known, c.open.fh, 0, 100)).toString()).toBe('content');
    expect(await create('f', O_RDWR | O_EXCL)).toBe(-Errno.EEXIST);
    const t = await client.create(1, 'f', O_WRONLY | O_TRUNC | O_CREAT, 0o644, 0o022);
    expect(fs.readFileSync(h.p('f'), 'utf8')).toBe('');
    expect(await replyError(client.write(known, t.open.fh, 0, Buffer.from('new')))).toBe(0);
    expect(fs.readFileSync(h.p('f'), 'utf8')).toBe('new');
    // Another user may not open root's 0600 file by creating it.
    expect(await create('private', O_RDONLY, { uid: 1234, gid: 1234 })).toBe(-Errno.EACCES);
    expect(fs.readFileSync(h.p('private'), 'utf8')).toBe('secret');
    // A new name is still created, owned by the caller.
    const n = await client.create(1, 'new', O_RDWR | O_EXCL | O_CREAT, 0o644, 0o022, { uid: 1234, gid: 1234 });
    expect(n.entry.attr.uid).toBe(1234);
    expect(await replyError(client.write(n.entry.nodeid, n.open.fh, 0, Buffer.from('x')))).toBe(0);
  });
});

describe('a handle keeps the access mode it was opened with', async () => {
  it('WRITE on a read-only handle answers EBADF, write_in.flags O_APPEND notwithstanding', async () => {
    // No write-back cache: appending writes go through the O_APPEND path.
    await setup(
      (d) => {
        fs.writeFileSync(`${d}/ro`, 'abc');
        fs.chmodSync(`${d}/ro`, 0o444);
      },
      {},
      P.FUSE_ASYNC_READ | P.FUSE_INIT_EXT,
      0,
    );
    const node = (await client.lookup(1, 'ro')).nodeid;
    const fh = (await client.open(node, O_RDONLY)).fh;
    expect(await replyError(client.write(node, fh, 0, Buffer.from('X')))).toBe(-Errno.EBADF);
    expect(await replyError(client.write(node, fh, 0, Buffer.from('PWNED'), 0, O_APPEND))).toBe(-Errno.EBADF);
    expect(await replyError(client.write(node, fh, 0, Buffer.from('PWNED'), 0, O_APPEND | O_RDWR))).toBe(-Errno.EBADF);
    expect(fs.readFileSync(h.p('ro'), 'utf8')).toBe('abc');
    // A read-only handle from CREATE is read-only too.
    const c = await client.create(1, 'made', O_RDONLY | O_CREAT, 0o644, 0o022);
    expect(await replyError(client.write(c.entry.nodeid, c.open.fh, 0, Buffer.from('x'), 0, O_APPEND))).toBe(-Errno.EBADF);
    expect(fs.readFileSync(h.p('made'), 'utf8')).toBe('');
    // A writable handle still appends when the guest's file is O_APPEND.
    fs.writeFileSync(h.p('w'), 'abc');
    const w = (await client.lookup(1, 'w')).nodeid;
    const wfh = (await client.open(w, O_WRONLY | O_APPEND)).fh;
    expect(await replyError(client.write(w, wfh, 0, Buffer.from('def'), 0, O_WRONLY | O_APPEND))).toBe(0);
    expect(fs.readFileSync(h.p('w'), 'utf8')).toBe('abcdef');
  });

  it('with the write-back cache too', async () => {
    await setup((d) => fs.writeFileSync(`${d}/f`, 'abc'), { writeback: true });
    const node = (await client.lookup(1, 'f')).nodeid;
    const fh = (await client.open(node, O_RDONLY)).fh;
    expect(await replyError(client.write(node, fh, 0, Buffer.from('X'), P.FUSE_WRITE_CACHE, O_APPEND))).toBe(-Errno.EBADF);
    expect(fs.readFileSync(h.p('f'), 'utf8')).toBe('abc');
  });
});
