import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import * as P from '../../src/fuse-server/protocol';
import { Opcode } from '../../src/fuse-server/protocol';
import { FuseSession } from '../../src/fuse-server/session';
import { Errno } from '../../src/sys/errno';
import type { DirentPlus } from '../../src/guest/fuse-driver';
import { openFdCount, replyError } from './fuse-driver';
import { Harness, O_CREAT, O_RDONLY, O_RDWR } from './harness';

let h: Harness;
const mounts: string[] = [];
afterEach(() => {
  h?.shutdown();
  for (const m of mounts.splice(0).reverse()) execFileSync('umount', [m]);
  h?.close();
});

/** Mounts a tmpfs (or bind-mounts `source`) at `target`; false if this machine does not let us. */
function mount(target: string, source?: string): boolean {
  try {
    if (source) execFileSync('mount', ['--bind', source, target], { stdio: 'ignore' });
    else execFileSync('mount', ['-t', 'tmpfs', 'tmpfs', target], { stdio: 'ignore' });
    mounts.push(target);
    return true;
  } catch {
    return false;
  }
}
const canMount = (() => {
  const probe = fs.mkdtempSync('/tmp/mount-probe-');
  try {
    execFileSync('mount', ['-t', 'tmpfs', 'tmpfs', probe], { stdio: 'ignore' });
    execFileSync('umount', [probe]);
    return true;
  } catch {
    return false;
  } finally {
    fs.rmdirSync(probe);
  }
})();
const mountReason = canMount ? '' : ' [skipped: mount(2) is not permitted here]';

/** One READDIRPLUS of up to 64 KiB from the start of `nodeid`, between OPENDIR and RELEASEDIR. */
async function readdirplus(nodeid: number): Promise<DirentPlus[]> {
  const { fh } = await h.client.opendir(nodeid);
  const entries = await h.client.readdirplus(nodeid, fh, 0n, 65536);
  await h.client.releasedir(nodeid, fh);
  return entries;
}

/** CREATE as the harness sends it: O_RDWR | O_CREAT, mode 0644, umask 022, as `creds`. */
function create(parent: number, name: string, creds: { uid?: number; gid?: number } = {}) {
  return h.client.create(parent, name, O_RDWR | O_CREAT, 0o644, 0o022, creds);
}

describe('inode identity', () => {
  it('counts lookups exactly: n lookups need n forgets, then the fd is closed', async () => {
    h = Harness.create({}, (d) => fs.writeFileSync(`${d}/f`, ''));
    await h.start();
    const fds = openFdCount();
    const id = (await h.client.lookup(1, 'f')).nodeid;
    expect((await h.client.lookup(1, 'f')).nodeid).toBe(id);
    await readdirplus(1); // one more lookup of f
    expect(openFdCount()).toBe(fds + 1);
    await h.client.forget(id, 2);
    expect((await h.client.getattr(id)).attr.size).toBe(0);
    await h.client.forget(id, 1);
    expect(openFdCount()).toBe(fds);
    expect(await replyError(h.client.getattr(id))).toBe(-Errno.EBADF);
  });

  it.skipIf(!canMount)(`tells one file reached through two mounts apart (st_dev, st_ino, mount id)${mountReason}`, async () => {
    h = Harness.create({}, (d) => {
      fs.mkdirSync(`${d}/data`);
      fs.writeFileSync(`${d}/data/f`, 'x');
      fs.mkdirSync(`${d}/bind`);
    });
    expect(mount(h.p('bind'), h.p('data'))).toBe(true);
    await h.start();
    const viaData = await h.client.lookup((await h.client.lookup(1, 'data')).nodeid, 'f');
    const viaBind = await h.client.lookup((await h.client.lookup(1, 'bind')).nodeid, 'f');
    expect(viaBind.attr.ino).toBe(viaData.attr.ino);
    expect(viaBind.nodeid).not.toBe(viaData.nodeid);
  });

  it('leaves no fd behind after DESTROY or close, whatever the guest held', async () => {
    const before = openFdCount();
    h = Harness.create({ xattr: true, posixLock: true }, (d) => {
      fs.mkdirSync(`${d}/dir`);
      fs.writeFileSync(`${d}/dir/f`, 'x');
    });
    await h.start();
    const afterInit = openFdCount();
    const dir = (await h.client.lookup(1, 'dir')).nodeid;
    const f = (await h.client.lookup(dir, 'f')).nodeid;
    const fh = (await h.client.open(f, O_RDWR)).fh;
    await h.client.setlk(f, fh, 3n, { type: 1, start: 0n, end: 10n });
    await h.client.opendir(dir);
    await h.client.write(f, fh, 0, Buffer.from('abc'), 0, 0o2002); // opens the O_APPEND twin fd
    await readdirplus(1);
    expect(openFdCount()).toBeGreaterThan(afterInit + 4);
    await h.client.destroy();
    expect(openFdCount()).toBe(afterInit);
    h.close();
    expect(openFdCount()).toBe(before);
  });
});

describe('--announce-submounts', () => {
  it.skipIf(!canMount)(`flags mount points with FUSE_ATTR_SUBMOUNT, and only when announced${mountReason}`, async () => {
    h = Harness.create({ announceSubmounts: true }, (d) => {
      fs.mkdirSync(`${d}/mnt`);
      fs.mkdirSync(`${d}/plain`);
    });
    expect(mount(h.p('mnt'))).toBe(true);
    fs.mkdirSync(h.p('mnt/inner'));
    expect((await h.start()).flags & P.FUSE_SUBMOUNTS).toBeTruthy();
    const mnt = await h.client.lookup(1, 'mnt');
    expect(mnt.attr.flags & P.FUSE_ATTR_SUBMOUNT).toBe(P.FUSE_ATTR_SUBMOUNT);
    expect((await h.client.lookup(1, 'plain')).attr.flags & P.FUSE_ATTR_SUBMOUNT).toBe(0);
    expect((await h.client.lookup(mnt.nodeid, 'inner')).attr.flags & P.FUSE_ATTR_SUBMOUNT).toBe(0);
    expect((await readdirplus(1)).find((e) => e.name === 'mnt')?.entry?.attr.flags).toBe(P.FUSE_ATTR_SUBMOUNT);
    h.shutdown();

    h = new Harness(h.dir, {});
    await h.start();
    expect((await h.client.lookup(1, 'mnt')).attr.flags & P.FUSE_ATTR_SUBMOUNT).toBe(0);
  });
});

describe('--inode-file-handles', () => {
  it('prefer: inodes are held as file handles, not fds, and everything still works', async () => {
    h = Harness.create({ inodeFileHandles: 'prefer' }, (d) => {
      fs.mkdirSync(`${d}/dir`);
      for (let i = 0; i < 20; i++) fs.writeFileSync(`${d}/dir/f${i}`, `file ${i}`);
    });
    await h.start();
    const fds = openFdCount();
    const dir = (await h.client.lookup(1, 'dir')).nodeid;
    const nodes: number[] = [];
    for (let i = 0; i < 20; i++) nodes.push((await h.client.lookup(dir, `f${i}`)).nodeid);
    expect(h.session.stats.inodes).toBe(22);
    // 21 inodes, no fd each (the share's mount was known from the start).
    expect(openFdCount()).toBe(fds);
    const fh = (await h.client.open(nodes[7], O_RDONLY)).fh;
    expect((await h.client.read(nodes[7], fh, 0, 100)).toString()).toBe('file 7');
    expect((await h.client.getattr(nodes[3])).attr.size).toBe(6);
    // Unlinked while open: the handle no longer opens, the open file still answers.
    fs.unlinkSync(h.p('dir/f7'));
    expect((await h.client.getattr(nodes[7])).attr.nlink).toBe(0);
    await h.client.release(nodes[7], fh);
    const { entry } = await create(dir, 'new');
    expect((await h.client.lookup(dir, 'new')).nodeid).toBe(entry.nodeid);
    expect(openFdCount()).toBe(fds + 1); // the new file's handle
    await h.client.destroy();
    expect(openFdCount()).toBe(fds);
  });

  it('mandatory: start-up fails with a clear error where handles cannot work', async () => {
    // procfs cannot encode file handles.
    expect(() => new FuseSession({ sharedDir: '/proc/sys', cache: 'auto', readonly: false, inodeFileHandles: 'mandatory' })).toThrow(
      /--inode-file-handles=mandatory: the shared directory's file system cannot use file handles/,
    );
    // prefer falls back to fds there, with a warning.
    const warnings: string[] = [];
    const s = new FuseSession({
      sharedDir: '/proc/sys',
      cache: 'auto',
      readonly: false,
      inodeFileHandles: 'prefer',
      log: (l, m) => l === 'warn' && warnings.push(m),
    });
    s.close();
    expect(warnings.join()).toMatch(/using O_PATH fds/);
  });

  it('mandatory works where the host allows it', async () => {
    h = Harness.create({ inodeFileHandles: 'mandatory' }, (d) => fs.writeFileSync(`${d}/f`, 'm'));
    await h.start();
    const f = (await h.client.lookup(1, 'f')).nodeid;
    expect((await h.client.read(f, (await h.client.open(f, O_RDONLY)).fh, 0, 10)).toString()).toBe('m');
  });
});

describe('--translate-uid / --translate-gid', () => {
  it('maps guest ids to host ids on create and chown, and back in attributes', async () => {
    h = Harness.create(
      { translateUid: ['map:1000:101000:10', 'forbid-guest:5000:1'], translateGid: ['squash-guest:0:4242:65536', 'host:4242:100:1'] },
      (d) => fs.chmodSync(d, 0o777),
    );
    await h.start();
    const { entry } = await create(1, 'mine', { uid: 1003, gid: 7 });
    const st = fs.statSync(h.p('mine'));
    expect([st.uid, st.gid]).toEqual([101003, 4242]);
    expect([entry.attr.uid, entry.attr.gid]).toEqual([1003, 100]);
    expect(await replyError(h.client.setattr(entry.nodeid, { uid: 1009 }))).toBe(0);
    expect(fs.statSync(h.p('mine')).uid).toBe(101009);
    expect((await h.client.getattr(entry.nodeid)).attr.uid).toBe(1009);
    // Unmapped ids pass unchanged; forbidden ones are refused.
    expect(await replyError(h.client.setattr(entry.nodeid, { uid: 77 }))).toBe(0);
    expect(fs.statSync(h.p('mine')).uid).toBe(77);
    expect(await replyError(h.client.setattr(entry.nodeid, { uid: 5000 }))).toBe(-Errno.EPERM);
    expect(await replyError(create(1, 'forbidden', { uid: 5000 }))).toBe(-Errno.EPERM);
    expect(fs.existsSync(h.p('forbidden'))).toBe(false);
  });
});

describe('cache options', () => {
  it('-o timeout overrides the cache mode timeouts', async () => {
    h = Harness.create({ cache: 'always', timeout: 2.5 }, (d) => fs.writeFileSync(`${d}/f`, ''));
    await h.start();
    const e = await h.client.lookup(1, 'f');
    expect([e.entry_valid, e.entry_valid_nsec, e.attr_valid, e.attr_valid_nsec]).toEqual([2, 500_000_000, 2, 500_000_000]);
  });

  it('READDIRPLUS is offered unless turned off or cache=never', async () => {
    const plus = async (opts: ConstructorParameters<typeof Harness>[1]) => {
      h = Harness.create(opts);
      const flags = (await h.start()).flags & (P.FUSE_DO_READDIRPLUS | P.FUSE_READDIRPLUS_AUTO);
      h.close();
      return flags;
    };
    expect(await plus({})).toBe(P.FUSE_DO_READDIRPLUS | P.FUSE_READDIRPLUS_AUTO);
    expect(await plus({ readdirplus: false })).toBe(0);
    expect(await plus({ cache: 'never' })).toBe(0);
    expect(await plus({ cache: 'never', readdirplus: true })).toBe(P.FUSE_DO_READDIRPLUS | P.FUSE_READDIRPLUS_AUTO);
  });
});

describe('malformed requests of the newer opcodes', () => {
  it('answers short payloads and bad names with EINVAL, never a crash', async () => {
    h = Harness.create({}, (d) => fs.writeFileSync(`${d}/f`, ''));
    await h.start();
    for (const op of [
      Opcode.FUSE_FALLOCATE,
      Opcode.FUSE_LSEEK,
      Opcode.FUSE_COPY_FILE_RANGE,
      Opcode.FUSE_TMPFILE,
      Opcode.FUSE_STATX,
      Opcode.FUSE_GETLK,
      Opcode.FUSE_SETLKW,
    ]) {
      expect((await h.raw(op, 1, [Buffer.alloc(4)], { replySize: 4096 })).error).toBe(-Errno.EINVAL);
    }
    // A name with '/' and a name that is '..' where a new name is needed.
    expect(await replyError(h.client.create(1, 'a/b', O_RDWR | O_CREAT, 0o644))).toBe(-Errno.EINVAL);
    // '..' as the new name answers what open("..", O_CREAT) answers on Linux.
    expect(await replyError(h.client.create(1, '..', O_RDWR | O_CREAT, 0o644))).toBe(-Errno.EISDIR);
    // total_extlen larger than the request: a header the driver would not build, sent through the raw entry.
    const raw = h.transport.frame({ opcode: Opcode.FUSE_STATFS, nodeid: 1 });
    raw.writeUInt16LE(100, 36);
    expect((await h.transport.raw(raw)).error).toBe(-Errno.EINVAL);
    // Not initialised again by garbage: the session still serves.
    expect((await h.client.lookup(1, 'f')).nodeid).toBeGreaterThan(1);
  });
});
