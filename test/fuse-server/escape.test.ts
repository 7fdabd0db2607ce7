/**
 * Escape attempts: a guest (or a host process moving things under it) trying
 * to reach, create or change anything outside the shared directory. Every
 * case checks on the host afterwards that nothing outside the share was read,
 * created or changed. Run as root, the outside files are root-only (0600):
 * reading one would be a real leak.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import * as P from '../../src/fuse-server/protocol';
import { Opcode } from '../../src/fuse-server/protocol';
import { Errno } from '../../src/sys/errno';
import { O_CREAT, O_TRUNC, getxattr } from '../../src/sys/fs';
import type { CreateOut, DirentPlus, OpenOut } from '../../src/guest/fuse-driver';
import { type Outcome, cstr, encode, outcome, replyError } from './fuse-driver';
import { Harness, O_RDONLY, O_RDWR, S_IFDIR, S_IFLNK, S_IFREG } from './harness';

const S_IFIFO = 0o010000;
const S_IFCHR = 0o020000;
const SECRET = 'root-only secret outside the share\n';

let h: Harness | undefined;
let base = '';
const mounts: string[] = [];
afterEach(() => {
  h?.shutdown();
  for (const m of mounts.splice(0).reverse()) execFileSync('umount', [m]);
  h?.close();
  h = undefined;
  if (base) fs.rmSync(base, { recursive: true, force: true });
  base = '';
});

/**
 * base/
 *   outside/secret   (0600, root's)
 *   share/           (served)
 */
async function setup(options: ConstructorParameters<typeof Harness>[1] = {}, populate?: (share: string) => void): Promise<Harness> {
  base = fs.mkdtempSync(path.join(os.tmpdir(), 'escape-'));
  fs.mkdirSync(path.join(base, 'outside'));
  fs.writeFileSync(path.join(base, 'outside', 'secret'), SECRET, { mode: 0o600 });
  const share = path.join(base, 'share');
  fs.mkdirSync(share);
  populate?.(share);
  h = new Harness(share, options);
  await h.start();
  return h;
}

const outside = (...names: string[]): string => path.join(base, 'outside', ...names);

/**
 * Everything under `dir` but `skip` (no symlinks followed): type, mode, owner,
 * size, times, link count. Contents are not read, so the secret's atime still
 * tells whether anyone read it (relatime updates an atime not newer than mtime).
 */
function snapshot(dir: string, skip: string[] = []): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (p: string): void => {
    const st = fs.lstatSync(p, { bigint: true });
    let what = `${st.mode}:${st.uid}:${st.gid}:${st.size}:${st.mtimeNs}:${st.ctimeNs}:${st.nlink}`;
    if (st.isSymbolicLink()) what += ':' + fs.readlinkSync(p);
    out.set(p, what);
    if (st.isDirectory()) for (const name of fs.readdirSync(p)) if (!skip.includes(path.join(p, name))) walk(path.join(p, name));
  };
  walk(dir);
  return out;
}

/** The host outside the share: base itself (its entries but the share) and the outside tree, plus the atime of the secret. */
function outsideState(): { tree: Map<string, string>; secretAtime: bigint } {
  return { tree: snapshot(base, [path.join(base, 'share')]), secretAtime: fs.statSync(outside('secret'), { bigint: true }).atimeNs };
}

function expectUnchanged(before: ReturnType<typeof outsideState>): void {
  const after = outsideState();
  expect(after.tree).toEqual(before.tree);
  // Nothing read it either: its atime is still its creation's (see snapshot()).
  expect(after.secretAtime).toBe(before.secretAtime);
  expect(noXattr(outside('secret'))).toBe(true);
}

/** Whether the host file has no user.escape attribute. */
function noXattr(file: string): boolean {
  try {
    getxattr(file, 'user.escape', null, 0);
    return false;
  } catch (err) {
    return (err as { errno?: number }).errno === Errno.ENODATA;
  }
}

function lookupRaw(parent: number, name: string | Buffer): Promise<Outcome<P.EntryOut>> {
  return outcome(h!.client.lookup(parent, name));
}

function entryOf(r: Outcome<unknown>): P.EntryOut {
  expect(r.error).toBe(0);
  return r.value as P.EntryOut;
}

function typeOf(e: P.EntryOut): number {
  return e.attr.mode & 0o170000;
}

function openRaw(nodeid: number, flags: number): Promise<Outcome<OpenOut>> {
  return outcome(h!.client.open(nodeid, flags));
}

function opendirRaw(nodeid: number): Promise<Outcome<OpenOut>> {
  return outcome(h!.client.opendir(nodeid));
}

function mkdirRaw(parent: number, name: string | Buffer): Promise<Outcome<P.EntryOut>> {
  return outcome(h!.client.mkdir(parent, name, 0o755));
}

function mknodRaw(parent: number, name: string | Buffer, mode = S_IFREG | 0o4755, rdev = 0): Promise<Outcome<P.EntryOut>> {
  return outcome(h!.client.mknod(parent, name, mode, rdev));
}

function symlinkRaw(parent: number, name: string | Buffer, target: string): Promise<Outcome<P.EntryOut>> {
  return outcome(h!.client.symlink(parent, name, target));
}

function createRaw(parent: number, name: string | Buffer, flags = O_RDWR): Promise<Outcome<CreateOut>> {
  return outcome(h!.client.create(parent, name, flags | O_CREAT, 0o4755));
}

function tmpfileRaw(parent: number): Promise<Outcome<CreateOut>> {
  return outcome(h!.client.tmpfile(parent, O_RDWR, 0o4755));
}

function unlinkRaw(parent: number, name: string | Buffer): Promise<Outcome<void>> {
  return outcome(h!.client.unlink(parent, name));
}

function rmdirRaw(parent: number, name: string | Buffer): Promise<Outcome<void>> {
  return outcome(h!.client.rmdir(parent, name));
}

function renameRaw(parent: number, name: string | Buffer, newdir: number, newName: string | Buffer): Promise<Outcome<void>> {
  return outcome(h!.client.rename(parent, name, newdir, newName));
}

/** RENAME2 even without flags (the client sends RENAME for those, as Linux does): raw. */
async function rename2Raw(
  parent: number,
  name: string | Buffer,
  newdir: number,
  newName: string | Buffer,
  flags = 0,
): Promise<Outcome<void>> {
  const r = await h!.raw(Opcode.FUSE_RENAME2, parent, [encode(P.fuse_rename2_in, { newdir, flags }), cstr(name), cstr(newName)]);
  return r.error === 0 ? { error: 0, value: undefined } : { error: r.error };
}

function linkRaw(oldnodeid: number, newParent: number, newName: string | Buffer): Promise<Outcome<P.EntryOut>> {
  return outcome(h!.client.link(oldnodeid, newParent, newName));
}

async function readdirplus(nodeid: number): Promise<DirentPlus[]> {
  const { fh } = await h!.client.opendir(nodeid);
  const entries = await h!.client.readdirplus(nodeid, fh, 0n, 65536);
  await h!.client.releasedir(nodeid, fh);
  return entries;
}

/** Reads the whole file `nodeid` through the guest's OPEN/READ; null if it cannot be opened. */
async function guestRead(nodeid: number): Promise<string | null> {
  const r = await openRaw(nodeid, O_RDONLY);
  if (r.error) return null;
  const fh = r.value!.fh;
  const data = (await h!.client.read(nodeid, fh, 0, 4096)).toString();
  await h!.client.release(nodeid, fh);
  return data;
}

const canMount = (() => {
  const probe = fs.mkdtempSync(path.join(os.tmpdir(), 'mount-probe-'));
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

const fileHandleModes = ['never', 'mandatory'] as const;
const mandatoryWorks = (() => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'escape-probe-'));
  try {
    new Harness(dir, { inodeFileHandles: 'mandatory' }).close();
    return true;
  } catch {
    fs.rmSync(dir, { recursive: true, force: true });
    return false;
  }
})();

describe('`..`', () => {
  it('at the root answers the root', async () => {
    await setup();
    const before = outsideState();
    const e = entryOf(await lookupRaw(1, '..'));
    expect(e.nodeid).toBe(1);
    // And again from what it answered: still the root, never base/.
    expect(entryOf(await lookupRaw(e.nodeid, '..')).nodeid).toBe(1);
    expect((await lookupRaw(1, '../outside')).error).toBe(-Errno.EINVAL);
    expect((await lookupRaw(1, 'outside')).error).toBe(-Errno.ENOENT);
    expectUnchanged(before);
  });

  it("at the root is listed with the root's own inode number, never the host parent's (READDIR, READDIRPLUS)", async () => {
    await setup();
    const rootIno = BigInt(fs.statSync(h!.dir).ino);
    const parentIno = BigInt(fs.statSync(path.dirname(h!.dir)).ino);
    expect(parentIno).not.toBe(rootIno);
    const { fh } = await h!.client.opendir(1);
    for (const list of [await h!.client.readdir(1, fh), await h!.client.readdirplus(1, fh)]) {
      const dotdot = list.find((d) => d.name === '..');
      expect(dotdot?.ino).toBe(rootIno);
    }
  });

  it('of a directory moved within the share answers its new parent', async () => {
    await setup({}, (d) => {
      fs.mkdirSync(`${d}/x`);
      fs.mkdirSync(`${d}/z`);
    });
    const x = (await h!.client.lookup(1, 'x')).nodeid;
    const z = (await h!.client.lookup(1, 'z')).nodeid;
    expect(entryOf(await lookupRaw(x, '..')).nodeid).toBe(1);
    fs.renameSync(h!.p('x'), h!.p('z/x'));
    expect(entryOf(await lookupRaw(x, '..')).nodeid).toBe(z);
    expect(entryOf(await lookupRaw(z, '..')).nodeid).toBe(1);
  });

  for (const mode of fileHandleModes) {
    const skip = mode === 'mandatory' && !mandatoryWorks;
    it.skipIf(skip)(
      `of a directory the host moved out of the share never reaches the host (--inode-file-handles=${mode})${skip ? ' [skipped: file handles unavailable here]' : ''}`,
      async () => {
        await setup({ inodeFileHandles: mode }, (d) => {
          fs.mkdirSync(`${d}/a/b`, { recursive: true });
          fs.writeFileSync(`${d}/a/keep`, 'k');
          fs.writeFileSync(`${d}/inside`, 'i');
        });
        const a = (await h!.client.lookup(1, 'a')).nodeid;
        const b = (await h!.client.lookup(a, 'b')).nodeid;
        const inside = (await h!.client.lookup(1, 'inside')).nodeid;
        // The host (or another VM whose share holds this one) moves a/ next to outside/.
        fs.renameSync(h!.p('a'), path.join(base, 'moved'));
        const before = outsideState();

        expect((await lookupRaw(a, '..')).error).toBe(-Errno.ENOENT);
        expect((await lookupRaw(b, '..')).error).toBe(-Errno.ENOENT);
        // (The attack this closes: `..` to base/, then outside/secret, then a set-uid file beside it.)

        // Nothing is made, removed or moved in a directory that is no longer inside.
        expect((await createRaw(a, 'suid')).error).toBe(-Errno.ENOENT);
        expect((await mkdirRaw(a, 'dir')).error).toBe(-Errno.ENOENT);
        expect((await mknodRaw(a, 'node')).error).toBe(-Errno.ENOENT);
        expect((await symlinkRaw(a, 'link', '/etc/hostname')).error).toBe(-Errno.ENOENT);
        expect((await tmpfileRaw(a)).error).toBe(-Errno.ENOENT);
        expect((await linkRaw(inside, a, 'hard')).error).toBe(-Errno.ENOENT);
        expect((await renameRaw(1, 'inside', a, 'taken')).error).toBe(-Errno.ENOENT);
        expect((await rename2Raw(a, 'keep', 1, 'stolen')).error).toBe(-Errno.ENOENT);
        expect((await unlinkRaw(a, 'keep')).error).toBe(-Errno.ENOENT);
        expect((await rmdirRaw(a, 'b')).error).toBe(-Errno.ENOENT);
        expect((await mkdirRaw(b, 'deeper')).error).toBe(-Errno.ENOENT);

        // READDIRPLUS never hands out a nodeid for `..` (nor `.`), here or anywhere.
        for (const dir of [a, b, 1]) {
          for (const e of await readdirplus(dir)) {
            if (e.name === '.' || e.name === '..') expect(e.entry?.nodeid ?? 0).toBe(0);
          }
        }

        expectUnchanged(before);
        expect(fs.existsSync(h!.p('stolen'))).toBe(false);
        expect(fs.readFileSync(h!.p('inside'), 'utf8')).toBe('i');
        // The daemon is fine, and `..` inside the share still works.
        const c = (await h!.client.mkdir(1, 'c', 0o755)).nodeid;
        expect(entryOf(await lookupRaw(c, '..')).nodeid).toBe(1);
      },
    );
  }

  it('is checked however deep the directory is (the climb moves its anchor every 256 levels)', async () => {
    const depth = 300;
    const chain = Array.from({ length: depth }, () => 'd').join('/');
    await setup({}, (d) => fs.mkdirSync(`${d}/top/${chain}`, { recursive: true }));
    let dir = (await h!.client.lookup(1, 'top')).nodeid;
    const ids = [dir];
    for (let i = 0; i < depth; i++) ids.push((dir = (await h!.client.lookup(dir, 'd')).nodeid));
    expect(entryOf(await lookupRaw(ids[depth], '..')).nodeid).toBe(ids[depth - 1]);
    expect((await h!.client.mkdir(ids[depth], 'leaf', 0o755)).nodeid).toBeGreaterThan(1);
    fs.renameSync(h!.p('top'), path.join(base, 'moved'));
    const before = outsideState();
    expect((await lookupRaw(ids[depth], '..')).error).toBe(-Errno.ENOENT);
    expect((await mkdirRaw(ids[depth], 'leaf2')).error).toBe(-Errno.ENOENT);
    expectUnchanged(before);
  });

  it.skipIf(!canMount)(
    `climbs out of a submount to its mount point inside the share${canMount ? '' : ' [skipped: mount(2) is not permitted here]'}`,
    async () => {
      await setup({}, (d) => fs.mkdirSync(`${d}/m`));
      execFileSync('mount', ['-t', 'tmpfs', 'tmpfs', h!.p('m')]);
      mounts.push(h!.p('m'));
      fs.mkdirSync(h!.p('m/x'));
      const m = (await h!.client.lookup(1, 'm')).nodeid;
      const x = (await h!.client.lookup(m, 'x')).nodeid;
      expect(entryOf(await lookupRaw(x, '..')).nodeid).toBe(m);
      expect(entryOf(await lookupRaw(m, '..')).nodeid).toBe(1);
      expect((await h!.client.mkdir(x, 'y', 0o755)).nodeid).toBeGreaterThan(1);
    },
  );

  it.skipIf(!canMount)(
    `of a directory moved out from under a bind-mounted share (the sandbox's layout) is refused${canMount ? '' : ' [skipped: mount(2) is not permitted here]'}`,
    async () => {
      // share/ is a bind mount of src/: a directory moved out of src/ is disconnected from the mount.
      await setup();
      const src = path.join(base, 'src');
      fs.mkdirSync(`${src}/a/b`, { recursive: true });
      h!.shutdown();
      execFileSync('mount', ['--bind', src, h!.dir]);
      mounts.push(h!.dir);
      h = new Harness(h!.dir);
      await h.start();
      const a = (await h.client.lookup(1, 'a')).nodeid;
      const b = (await h.client.lookup(a, 'b')).nodeid;
      expect(entryOf(await lookupRaw(b, '..')).nodeid).toBe(a);
      fs.renameSync(`${src}/a`, path.join(base, 'moved'));
      const before = outsideState();
      expect((await lookupRaw(a, '..')).error).toBe(-Errno.ENOENT);
      expect((await lookupRaw(b, '..')).error).toBe(-Errno.ENOENT);
      expect((await createRaw(a, 'suid')).error).toBe(-Errno.ENOENT);
      expectUnchanged(before);
    },
  );

  it('of a directory moved back into the share works again', async () => {
    await setup({}, (d) => fs.mkdirSync(`${d}/a`));
    const a = (await h!.client.lookup(1, 'a')).nodeid;
    fs.renameSync(h!.p('a'), path.join(base, 'moved'));
    expect((await lookupRaw(a, '..')).error).toBe(-Errno.ENOENT);
    fs.renameSync(path.join(base, 'moved'), h!.p('a'));
    expect(entryOf(await lookupRaw(a, '..')).nodeid).toBe(1);
    expect((await h!.client.mkdir(a, 'ok', 0o755)).nodeid).toBeGreaterThan(1);
  });
});

describe('symlinks in the share pointing outside', () => {
  const links = (): Record<string, string> => ({
    abs: outside('secret'),
    absDir: outside(),
    rel: '../outside/secret',
    relDir: '../outside',
    dotdot: '..',
    procRoot: '/proc/self/root',
    procFd: '/proc/self/fd/0',
    procCwd: '/proc/self/cwd',
  });

  it('are never followed: LOOKUP, OPEN, OPENDIR, CREATE, SETATTR, LINK and xattrs act on the link itself', async () => {
    await setup({ xattr: true }, (d) => {
      for (const [name, target] of Object.entries(links())) fs.symlinkSync(target, `${d}/${name}`);
    });
    const before = outsideState();
    for (const name of Object.keys(links())) {
      const e = entryOf(await lookupRaw(1, name));
      expect(typeOf(e), name).toBe(S_IFLNK);
      const node = e.nodeid;
      // Through the link as a directory: ENOTDIR, nothing resolved.
      expect((await lookupRaw(node, 'secret')).error, name).toBe(-Errno.ENOTDIR);
      expect((await lookupRaw(node, 'etc')).error, name).toBe(-Errno.ENOTDIR);
      expect((await lookupRaw(node, '..')).error, name).toBe(-Errno.ENOTDIR);
      expect((await createRaw(node, 'new')).error, name).toBe(-Errno.ENOTDIR);
      expect((await mkdirRaw(node, 'new')).error, name).toBe(-Errno.ENOTDIR);
      // The link's own inode is never opened through to its target.
      // (The guest kernel follows symlinks itself and never OPENs one; refused either way.)
      expect([-Errno.EINVAL, -Errno.ELOOP], name).toContain((await openRaw(node, O_RDONLY)).error);
      expect([-Errno.EINVAL, -Errno.ELOOP], name).toContain((await openRaw(node, O_RDWR | O_TRUNC)).error);
      expect((await opendirRaw(node)).error, name).toBe(-Errno.ENOTDIR);
      // CREATE of the link's name without O_EXCL: the existing name is a symlink, refused.
      expect((await createRaw(1, name, O_RDWR | O_TRUNC)).error, name).toBe(-Errno.ELOOP);
      // SETATTR of the link: its target's mode, size and times stay.
      // (Whatever each answers: what counts is the host afterwards.)
      await outcome(h!.client.setattr(node, { mode: 0o777 }));
      await outcome(h!.client.setattr(node, { size: 0 }));
      await outcome(h!.client.setattr(node, { mtime: { sec: 1, nsec: 0 }, atime: { sec: 1, nsec: 0 } }));
      // xattrs through /proc/self/fd reach the link, never its target.
      await outcome(h!.client.setxattr(node, 'user.escape', 'x'));
      // LINK of the link makes a second name for the link, not for its target.
      expect((await linkRaw(node, 1, `${name}-hard`)).error, name).toBe(0);
      expect(fs.lstatSync(h!.p(`${name}-hard`)).isSymbolicLink(), name).toBe(true);
      expect(fs.readlinkSync(h!.p(`${name}-hard`))).toBe(links()[name]);
      // READLINK answers the stored text; the guest resolves it in its own namespace.
      expect((await h!.client.readlink(node)).toString()).toBe(links()[name]);
    }
    expectUnchanged(before);
    expect(fs.readFileSync(outside('secret'), 'utf8')).toBe(SECRET);
    expect(fs.statSync(outside('secret')).mode & 0o7777).toBe(0o600);
  });

  it('a directory swapped for a symlink to the outside: the held nodeid stays on the old directory, the new name is a link', async () => {
    await setup({}, (d) => {
      fs.mkdirSync(`${d}/d`);
      fs.writeFileSync(`${d}/d/inner`, 'in');
    });
    const d = (await h!.client.lookup(1, 'd')).nodeid;
    // Swapped on the host between two steps of the guest's walk.
    fs.renameSync(h!.p('d'), h!.p('d.old'));
    fs.symlinkSync(outside(), h!.p('d'));
    // The held nodeid is the directory itself, wherever it now is (still inside the share).
    const inner = entryOf(await lookupRaw(d, 'inner'));
    expect(await guestRead(inner.nodeid)).toBe('in');
    expect((await lookupRaw(d, 'secret')).error).toBe(-Errno.ENOENT);
    expect(entryOf(await lookupRaw(d, '..')).nodeid).toBe(1);
    // The new name is the symlink, and nothing resolves through it.
    const link = entryOf(await lookupRaw(1, 'd'));
    expect(typeOf(link)).toBe(S_IFLNK);
    expect((await lookupRaw(link.nodeid, 'secret')).error).toBe(-Errno.ENOTDIR);
    expect((await createRaw(link.nodeid, 'planted')).error).toBe(-Errno.ENOTDIR);
    expect((await renameRaw(1, 'd.old', link.nodeid, 'x')).error).toBe(-Errno.ENOTDIR);
    expect((await mknodRaw(link.nodeid, 'suid')).error).toBe(-Errno.ENOTDIR);
    // Swapped for a symlink to the outside while the guest holds it, then the directory moved out: no `..` leak.
    fs.renameSync(h!.p('d.old'), path.join(base, 'moved'));
    const moved = outsideState();
    expect((await lookupRaw(d, '..')).error).toBe(-Errno.ENOENT);
    expect((await createRaw(d, 'planted')).error).toBe(-Errno.ENOENT);
    expectUnchanged(moved);
    expect(fs.readFileSync(outside('secret'), 'utf8')).toBe(SECRET);
    expect(fs.readdirSync(outside())).toEqual(['secret']);
  });
});

describe('names that are not one component', () => {
  /** Every name-taking opcode, with `name` in each of its name slots (the other one ordinary). */
  function attempts(dir: number, file: number, name: Buffer): [string, () => Promise<Outcome<unknown>>][] {
    return [
      ['LOOKUP', () => lookupRaw(dir, name)],
      ['MKNOD', () => mknodRaw(dir, name)],
      ['MKNOD fifo', () => mknodRaw(dir, name, S_IFIFO | 0o644)],
      ['MKNOD chr', () => mknodRaw(dir, name, S_IFCHR | 0o666, 0x0103)],
      ['MKDIR', () => mkdirRaw(dir, name)],
      ['SYMLINK', () => symlinkRaw(dir, name, '/etc/hostname')],
      ['UNLINK', () => unlinkRaw(dir, name)],
      ['RMDIR', () => rmdirRaw(dir, name)],
      ['RENAME old', () => renameRaw(dir, name, dir, 'renamed')],
      ['RENAME new', () => renameRaw(dir, 'victim', dir, name)],
      ['RENAME2 old', () => rename2Raw(dir, name, dir, 'renamed')],
      ['RENAME2 new', () => rename2Raw(dir, 'victim', dir, name)],
      ['RENAME2 exchange', () => rename2Raw(dir, 'victim', dir, name, 2 /* RENAME_EXCHANGE */)],
      ['LINK', () => linkRaw(file, dir, name)],
      ['CREATE', () => createRaw(dir, name, O_RDWR | O_TRUNC)],
    ];
  }

  it("'/', '.', '..' and embedded NUL never name anything outside", async () => {
    await setup({}, (d) => {
      fs.mkdirSync(`${d}/sub`);
      fs.writeFileSync(`${d}/sub/victim`, 'v');
      fs.writeFileSync(`${d}/victim`, 'v');
    });
    const sub = (await h!.client.lookup(1, 'sub')).nodeid;
    const file = (await h!.client.lookup(1, 'victim')).nodeid;
    const before = outsideState();
    const bad = [
      '../outside/secret',
      '../escaped',
      '../../escaped',
      'sub/../../escaped',
      '/escaped',
      `${base}/escaped`,
      '../outside',
      '..',
      '.',
      '/',
      '//',
    ].map((s) => Buffer.from(s));
    // Embedded NUL: the name ends at the first NUL; whatever follows is never a path.
    const nul = [Buffer.from('\0../escaped'), Buffer.from('..\0/escaped'), Buffer.from('x\0/../../escaped')];
    for (const dir of [1, sub]) {
      for (const name of [...bad, ...nul]) {
        for (const [op, run] of attempts(dir, file, name)) {
          const r = await run();
          const label = `${op} ${JSON.stringify(name.toString())} in ${dir === 1 ? 'root' : 'sub'}`;
          // Answered (a reply carrying this request's unique), never dropped.
          expect(h!.transport.answered.at(-1)?.unique, label).toBe(h!.transport.lastUnique);
          // LOOKUP of `..` and `.` is allowed (inside the share); an embedded NUL cuts the name short.
          if (r.error === 0) {
            expect(op === 'LOOKUP' || nul.includes(name), label).toBe(true);
            if (op === 'LOOKUP') {
              const e = entryOf(r);
              expect([1, sub, file]).toContain(e.nodeid);
            }
            // Put the share back as it was for the next attempt.
            for (const n of ['x', 'renamed']) fs.rmSync(path.join(dir === 1 ? h!.dir : h!.p('sub'), n), { recursive: true, force: true });
            if (!fs.existsSync(h!.p('victim'))) fs.writeFileSync(h!.p('victim'), 'v');
            if (!fs.existsSync(h!.p('sub/victim'))) fs.writeFileSync(h!.p('sub/victim'), 'v');
          }
        }
      }
    }
    expectUnchanged(before);
    expect(fs.readdirSync(base).sort()).toEqual(['outside', 'share']);
    expect(fs.existsSync('/escaped')).toBe(false);
    expect(fs.readFileSync(outside('secret'), 'utf8')).toBe(SECRET);
    // The share's own root is where it was, and the daemon answers.
    expect((await h!.client.getattr(1)).attr.mode & 0o170000).toBe(S_IFDIR);
  });
});

describe('file handles', () => {
  it.skipIf(!mandatoryWorks)(
    `no guest bytes reach open_by_handle_at: a nodeid the guest was not given is EBADF${mandatoryWorks ? '' : ' [skipped: file handles unavailable here]'}`,
    async () => {
      await setup({ inodeFileHandles: 'mandatory' }, (d) => fs.writeFileSync(`${d}/f`, 'f'));
      const f = (await h!.client.lookup(1, 'f')).nodeid;
      const before = outsideState();
      for (const nodeid of [f + 1, f + 1000, 0x7fffffff, 0]) {
        expect(await replyError(h!.client.getattr(nodeid))).toBe(-Errno.EBADF);
        expect((await openRaw(nodeid, O_RDONLY)).error).toBe(-Errno.EBADF);
      }
      expect(await guestRead(f)).toBe('f');
      expectUnchanged(before);
    },
  );
});
