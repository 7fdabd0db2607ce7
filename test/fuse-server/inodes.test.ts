import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import * as P from '../../src/fuse-server/protocol';
import { Opcode } from '../../src/fuse-server/protocol';
import { FuseSession } from '../../src/fuse-server/session';
import { Errno } from '../../src/sys/errno';
import { cstr, encode, openFdCount, parseDirents } from './fuse-driver';
import { Harness, O_RDONLY, O_RDWR } from './harness';

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

function readdirplus(nodeid: number): ReturnType<typeof parseDirents> {
  const fh = P.fuse_open_out.decode(h.fuse.ok(Opcode.FUSE_OPENDIR, nodeid, [encode(P.fuse_open_in, { flags: 0, open_flags: 0 })]), 0).fh;
  const body = h.fuse.ok(Opcode.FUSE_READDIRPLUS, nodeid, [
    encode(P.fuse_readdir_in, { fh, offset: 0n, size: 65536, read_flags: 0, lock_owner: 0n, flags: 0 }),
  ]);
  h.fuse.ok(Opcode.FUSE_RELEASEDIR, nodeid, [encode(P.fuse_release_in, { fh, flags: 0, release_flags: 0, lock_owner: 0n })]);
  return parseDirents(body, true);
}

describe('inode identity', () => {
  it('counts lookups exactly: n lookups need n forgets, then the fd is closed', () => {
    h = Harness.create({}, (d) => fs.writeFileSync(`${d}/f`, ''));
    h.init();
    const fds = openFdCount();
    const id = h.lookup(1, 'f').nodeid;
    expect(h.lookup(1, 'f').nodeid).toBe(id);
    readdirplus(1); // one more lookup of f
    expect(openFdCount()).toBe(fds + 1);
    h.forget(id, 2);
    expect(h.getattr(id).size).toBe(0);
    h.forget(id, 1);
    expect(openFdCount()).toBe(fds);
    expect(h.fuse.request(Opcode.FUSE_GETATTR, id, [encode(P.fuse_getattr_in, { getattr_flags: 0, fh: 0 })]).error).toBe(-Errno.EBADF);
  });

  it.skipIf(!canMount)(`tells one file reached through two mounts apart (st_dev, st_ino, mount id)${mountReason}`, () => {
    h = Harness.create({}, (d) => {
      fs.mkdirSync(`${d}/data`);
      fs.writeFileSync(`${d}/data/f`, 'x');
      fs.mkdirSync(`${d}/bind`);
    });
    expect(mount(h.p('bind'), h.p('data'))).toBe(true);
    h.init();
    const viaData = h.lookup(h.lookup(1, 'data').nodeid, 'f');
    const viaBind = h.lookup(h.lookup(1, 'bind').nodeid, 'f');
    expect(viaBind.attr.ino).toBe(viaData.attr.ino);
    expect(viaBind.nodeid).not.toBe(viaData.nodeid);
  });

  it('leaves no fd behind after DESTROY or close, whatever the guest held', () => {
    const before = openFdCount();
    h = Harness.create({ xattr: true, posixLock: true }, (d) => {
      fs.mkdirSync(`${d}/dir`);
      fs.writeFileSync(`${d}/dir/f`, 'x');
    });
    h.init();
    const afterInit = openFdCount();
    const dir = h.lookup(1, 'dir').nodeid;
    const f = h.lookup(dir, 'f').nodeid;
    const fh = h.open(f, O_RDWR);
    h.fuse.ok(Opcode.FUSE_SETLK, f, [h.lkIn(fh, 3n, 1, 0n, 10n)]);
    h.fuse.ok(Opcode.FUSE_OPENDIR, dir, [encode(P.fuse_open_in, { flags: 0, open_flags: 0 })]);
    h.write(f, fh, 0, 'abc', 0, 0o2002); // opens the O_APPEND twin fd
    readdirplus(1);
    expect(openFdCount()).toBeGreaterThan(afterInit + 4);
    h.fuse.ok(Opcode.FUSE_DESTROY, 0);
    expect(openFdCount()).toBe(afterInit);
    h.close();
    expect(openFdCount()).toBe(before);
  });
});

describe('--announce-submounts', () => {
  it.skipIf(!canMount)(`flags mount points with FUSE_ATTR_SUBMOUNT, and only when announced${mountReason}`, () => {
    h = Harness.create({ announceSubmounts: true }, (d) => {
      fs.mkdirSync(`${d}/mnt`);
      fs.mkdirSync(`${d}/plain`);
    });
    expect(mount(h.p('mnt'))).toBe(true);
    fs.mkdirSync(h.p('mnt/inner'));
    expect(h.init().flags & P.FUSE_SUBMOUNTS).toBeTruthy();
    const mnt = h.lookup(1, 'mnt');
    expect(mnt.attr.flags & P.FUSE_ATTR_SUBMOUNT).toBe(P.FUSE_ATTR_SUBMOUNT);
    expect(h.lookup(1, 'plain').attr.flags & P.FUSE_ATTR_SUBMOUNT).toBe(0);
    expect(h.lookup(mnt.nodeid, 'inner').attr.flags & P.FUSE_ATTR_SUBMOUNT).toBe(0);
    expect(readdirplus(1).find((e) => e.name === 'mnt')?.entry?.attr.flags).toBe(P.FUSE_ATTR_SUBMOUNT);
    h.shutdown();

    h = new Harness(h.dir, {});
    h.init();
    expect(h.lookup(1, 'mnt').attr.flags & P.FUSE_ATTR_SUBMOUNT).toBe(0);
  });
});

describe('--inode-file-handles', () => {
  it('prefer: inodes are held as file handles, not fds, and everything still works', () => {
    h = Harness.create({ inodeFileHandles: 'prefer' }, (d) => {
      fs.mkdirSync(`${d}/dir`);
      for (let i = 0; i < 20; i++) fs.writeFileSync(`${d}/dir/f${i}`, `file ${i}`);
    });
    h.init();
    const fds = openFdCount();
    const dir = h.lookup(1, 'dir').nodeid;
    const nodes = Array.from({ length: 20 }, (_, i) => h.lookup(dir, `f${i}`).nodeid);
    expect(h.session.stats.inodes).toBe(22);
    // 21 inodes, no fd each (the share's mount was known from the start).
    expect(openFdCount()).toBe(fds);
    const fh = h.open(nodes[7], O_RDONLY);
    expect(h.read(nodes[7], fh, 0, 100).toString()).toBe('file 7');
    expect(h.getattr(nodes[3]).size).toBe(6);
    // Unlinked while open: the handle no longer opens, the open file still answers.
    fs.unlinkSync(h.p('dir/f7'));
    expect(h.getattr(nodes[7]).nlink).toBe(0);
    h.release(nodes[7], fh);
    const { entry } = h.create(dir, 'new');
    expect(h.lookup(dir, 'new').nodeid).toBe(entry.nodeid);
    expect(openFdCount()).toBe(fds + 1); // the new file's handle
    h.fuse.ok(Opcode.FUSE_DESTROY, 0);
    expect(openFdCount()).toBe(fds);
  });

  it('mandatory: start-up fails with a clear error where handles cannot work', () => {
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

  it('mandatory works where the host allows it', () => {
    h = Harness.create({ inodeFileHandles: 'mandatory' }, (d) => fs.writeFileSync(`${d}/f`, 'm'));
    h.init();
    const f = h.lookup(1, 'f').nodeid;
    expect(h.read(f, h.open(f, O_RDONLY), 0, 10).toString()).toBe('m');
  });
});

describe('--translate-uid / --translate-gid', () => {
  it('maps guest ids to host ids on create and chown, and back in attributes', () => {
    h = Harness.create(
      { translateUid: ['map:1000:101000:10', 'forbid-guest:5000:1'], translateGid: ['squash-guest:0:4242:65536', 'host:4242:100:1'] },
      (d) => fs.chmodSync(d, 0o777),
    );
    h.init();
    const { entry } = h.create(1, 'mine', { uid: 1003, gid: 7 });
    const st = fs.statSync(h.p('mine'));
    expect([st.uid, st.gid]).toEqual([101003, 4242]);
    expect([entry.attr.uid, entry.attr.gid]).toEqual([1003, 100]);
    expect(h.setattr(entry.nodeid, { valid: P.FATTR_UID, uid: 1009 }).error).toBe(0);
    expect(fs.statSync(h.p('mine')).uid).toBe(101009);
    expect(h.getattr(entry.nodeid).uid).toBe(1009);
    // Unmapped ids pass unchanged; forbidden ones are refused.
    expect(h.setattr(entry.nodeid, { valid: P.FATTR_UID, uid: 77 }).error).toBe(0);
    expect(fs.statSync(h.p('mine')).uid).toBe(77);
    expect(h.setattr(entry.nodeid, { valid: P.FATTR_UID, uid: 5000 }).error).toBe(-Errno.EPERM);
    expect(h.createRaw(1, 'forbidden', { uid: 5000 }).error).toBe(-Errno.EPERM);
    expect(fs.existsSync(h.p('forbidden'))).toBe(false);
  });
});

describe('cache options', () => {
  it('-o timeout overrides the cache mode timeouts', () => {
    h = Harness.create({ cache: 'always', timeout: 2.5 }, (d) => fs.writeFileSync(`${d}/f`, ''));
    h.init();
    const e = h.lookup(1, 'f');
    expect([e.entry_valid, e.entry_valid_nsec, e.attr_valid, e.attr_valid_nsec]).toEqual([2, 500_000_000, 2, 500_000_000]);
  });

  it('READDIRPLUS is offered unless turned off or cache=never', () => {
    const plus = (opts: ConstructorParameters<typeof Harness>[1]) => {
      h = Harness.create(opts);
      const flags = h.init().flags & (P.FUSE_DO_READDIRPLUS | P.FUSE_READDIRPLUS_AUTO);
      h.close();
      return flags;
    };
    expect(plus({})).toBe(P.FUSE_DO_READDIRPLUS | P.FUSE_READDIRPLUS_AUTO);
    expect(plus({ readdirplus: false })).toBe(0);
    expect(plus({ cache: 'never' })).toBe(0);
    expect(plus({ cache: 'never', readdirplus: true })).toBe(P.FUSE_DO_READDIRPLUS | P.FUSE_READDIRPLUS_AUTO);
  });
});

describe('malformed requests of the newer opcodes', () => {
  it('answers short payloads and bad names with EINVAL, never a crash', () => {
    h = Harness.create({}, (d) => fs.writeFileSync(`${d}/f`, ''));
    h.init();
    for (const op of [
      Opcode.FUSE_FALLOCATE,
      Opcode.FUSE_LSEEK,
      Opcode.FUSE_COPY_FILE_RANGE,
      Opcode.FUSE_TMPFILE,
      Opcode.FUSE_STATX,
      Opcode.FUSE_GETLK,
      Opcode.FUSE_SETLKW,
    ]) {
      expect(h.fuse.request(op, 1, [Buffer.alloc(4)]).error).toBe(-Errno.EINVAL);
    }
    // A name with '/' and a name that is '..' where a new name is needed.
    const a = encode(P.fuse_create_in, { flags: O_RDWR | 0o100, mode: 0o100644, umask: 0, open_flags: 0 });
    expect(h.fuse.request(Opcode.FUSE_CREATE, 1, [a, cstr('a/b')]).error).toBe(-Errno.EINVAL);
    // '..' as the new name answers what open("..", O_CREAT) answers on Linux.
    expect(h.fuse.request(Opcode.FUSE_CREATE, 1, [a, cstr('..')]).error).toBe(-Errno.EISDIR);
    // total_extlen larger than the request.
    const raw = h.fuse.build(Opcode.FUSE_STATFS, 1, []);
    raw.writeUInt16LE(100, 36);
    expect(h.fuse.sendRaw(raw).error).toBe(-Errno.EINVAL);
    // Not initialised again by garbage: the session still serves.
    expect(h.lookup(1, 'f').nodeid).toBeGreaterThan(1);
  });
});
