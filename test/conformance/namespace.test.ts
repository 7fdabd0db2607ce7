/**
 * Conformance: names and directories — lookup/getattr, mkdir/rmdir, unlink,
 * rename, link/symlink/readlink, mknod, readdir/readdirplus, and guest names
 * that try to leave their directory.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { RENAME_EXCHANGE, RENAME_NOREPLACE } from '../../src/guest/fuse-driver';
import { BACKENDS } from '../helpers/backends';
import { itIfCan } from '../helpers/fuse-session';
import { O_RDWR, ROOT, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, expectErrno, sessions } from './conformance';

const DT_DIR = 4;
const DT_REG = 8;

describe.each(BACKENDS)('namespace on $name', (backend) => {
  const open = sessions(backend);

  it('looks up files and directories with the host attributes', async () => {
    const { fuse, dir } = await open({
      populate: (d) => {
        fs.writeFileSync(path.join(d, 'file'), 'twelve bytes');
        fs.mkdirSync(path.join(d, 'sub'));
        fs.writeFileSync(path.join(d, 'sub', 'inner'), 'x');
      },
    });
    const file = await fuse.lookup(ROOT, 'file');
    const st = fs.statSync(path.join(dir, 'file'));
    expect(file.nodeid).toBeGreaterThan(ROOT);
    expect(file.attr.ino).toBe(BigInt(st.ino));
    expect(file.attr.size).toBe(12);
    expect(file.attr.mode).toBe(st.mode);
    expect(file.attr.nlink).toBe(1);

    const sub = await fuse.lookup(ROOT, 'sub');
    expect(sub.attr.mode & S_IFMT).toBe(S_IFDIR);
    const inner = await fuse.lookup(sub.nodeid, 'inner');
    expect(inner.attr.ino).toBe(BigInt(fs.statSync(path.join(dir, 'sub', 'inner')).ino));

    const attr = await fuse.getattr(file.nodeid);
    expect(attr.attr.ino).toBe(file.attr.ino);
    expect(attr.attr.mtime).toBe(Math.floor(st.mtimeMs / 1000));
    const root = await fuse.getattr(ROOT);
    expect(root.attr.mode & S_IFMT).toBe(S_IFDIR);
    expect(root.attr.ino).toBe(BigInt(fs.statSync(dir).ino));
  });

  it('looks the same name up twice to the same nodeid', async () => {
    const { fuse } = await open({ populate: (d) => fs.writeFileSync(path.join(d, 'f'), '') });
    const a = await fuse.lookup(ROOT, 'f');
    const b = await fuse.lookup(ROOT, 'f');
    expect(b.nodeid).toBe(a.nodeid);
    expect(b.generation).toBe(a.generation);
  });

  it('answers ENOENT for a missing name and ENOTDIR below a file', async () => {
    const { fuse } = await open({ populate: (d) => fs.writeFileSync(path.join(d, 'f'), '') });
    await expectErrno(fuse.lookup(ROOT, 'missing'), 'ENOENT');
    const f = await fuse.lookup(ROOT, 'f');
    await expectErrno(fuse.lookup(f.nodeid, 'x'), 'ENOTDIR');
  });

  it('makes and removes directories: EEXIST, ENOTEMPTY, ENOTDIR, EISDIR', async () => {
    const { fuse, dir } = await open();
    const d = await fuse.mkdir(ROOT, 'd', 0o750);
    expect(d.attr.mode).toBe(S_IFDIR | 0o750);
    expect(fs.statSync(path.join(dir, 'd')).isDirectory()).toBe(true);
    await expectErrno(fuse.mkdir(ROOT, 'd', 0o755), 'EEXIST');

    const { entry } = await fuse.create(d.nodeid, 'f', O_RDWR, 0o644);
    await expectErrno(fuse.rmdir(ROOT, 'd'), 'ENOTEMPTY');
    await expectErrno(fuse.rmdir(d.nodeid, 'f'), 'ENOTDIR');
    await expectErrno(fuse.unlink(ROOT, 'd'), 'EISDIR');
    await fuse.unlink(d.nodeid, 'f');
    await fuse.rmdir(ROOT, 'd');
    expect(fs.existsSync(path.join(dir, 'd'))).toBe(false);
    await expectErrno(fuse.lookup(ROOT, 'd'), 'ENOENT');
    expect(entry.nodeid).toBeGreaterThan(ROOT);
  });

  it('unlinks a name while an open handle keeps the data readable', async () => {
    const { fuse, dir } = await open({ populate: (d) => fs.writeFileSync(path.join(d, 'f'), 'still here') });
    const f = await fuse.lookup(ROOT, 'f');
    const h = await fuse.open(f.nodeid, O_RDWR);
    await fuse.unlink(ROOT, 'f');
    expect(fs.existsSync(path.join(dir, 'f'))).toBe(false);
    await expectErrno(fuse.lookup(ROOT, 'f'), 'ENOENT');
    expect((await fuse.read(f.nodeid, h.fh, 0, 100)).toString()).toBe('still here');
    expect((await fuse.getattr(f.nodeid)).attr.nlink).toBe(0);
    await fuse.release(f.nodeid, h.fh);
  });

  it('renames within and across directories, and over an existing file', async () => {
    const { fuse, dir } = await open({
      populate: (d) => {
        fs.writeFileSync(path.join(d, 'a'), 'A');
        fs.writeFileSync(path.join(d, 'b'), 'B');
        fs.mkdirSync(path.join(d, 'sub'));
      },
    });
    const a = await fuse.lookup(ROOT, 'a');
    const b = await fuse.lookup(ROOT, 'b');
    const sub = await fuse.lookup(ROOT, 'sub');

    await fuse.rename(ROOT, 'a', ROOT, 'a2');
    expect(fs.readFileSync(path.join(dir, 'a2'), 'utf8')).toBe('A');
    expect((await fuse.lookup(ROOT, 'a2')).nodeid).toBe(a.nodeid);

    await fuse.rename(ROOT, 'a2', sub.nodeid, 'a3');
    expect(fs.readFileSync(path.join(dir, 'sub', 'a3'), 'utf8')).toBe('A');

    // Over an existing file: the target name now means the moved inode.
    await fuse.lookup(sub.nodeid, 'a3');
    await fuse.rename(sub.nodeid, 'a3', ROOT, 'b');
    expect(fs.readFileSync(path.join(dir, 'b'), 'utf8')).toBe('A');
    expect((await fuse.lookup(ROOT, 'b')).attr.ino).toBe(a.attr.ino);
    expect((await fuse.getattr(b.nodeid)).attr.nlink).toBe(0);
  });

  it('renames a directory over an empty one but not over a non-empty one', async () => {
    const { fuse, dir } = await open({
      populate: (d) => {
        fs.mkdirSync(path.join(d, 'src'));
        fs.mkdirSync(path.join(d, 'empty'));
        fs.mkdirSync(path.join(d, 'full'));
        fs.writeFileSync(path.join(d, 'full', 'x'), '');
      },
    });
    for (const n of ['src', 'empty', 'full']) await fuse.lookup(ROOT, n);
    await expectErrno(fuse.rename(ROOT, 'src', ROOT, 'full'), 'ENOTEMPTY');
    await fuse.rename(ROOT, 'src', ROOT, 'empty');
    expect(fs.existsSync(path.join(dir, 'src'))).toBe(false);
    expect(fs.statSync(path.join(dir, 'empty')).isDirectory()).toBe(true);
  });

  it('honours RENAME_NOREPLACE and RENAME_EXCHANGE', async () => {
    const { fuse, dir } = await open({
      populate: (d) => {
        fs.writeFileSync(path.join(d, 'a'), 'A');
        fs.writeFileSync(path.join(d, 'b'), 'B');
      },
    });
    await fuse.lookup(ROOT, 'a');
    await fuse.lookup(ROOT, 'b');
    await expectErrno(fuse.rename(ROOT, 'a', ROOT, 'b', RENAME_NOREPLACE), 'EEXIST');
    await fuse.rename(ROOT, 'a', ROOT, 'b', RENAME_EXCHANGE);
    expect(fs.readFileSync(path.join(dir, 'a'), 'utf8')).toBe('B');
    expect(fs.readFileSync(path.join(dir, 'b'), 'utf8')).toBe('A');
    await fuse.rename(ROOT, 'a', ROOT, 'c', RENAME_NOREPLACE);
    expect(fs.readFileSync(path.join(dir, 'c'), 'utf8')).toBe('B');
  });

  it('hard-links a file: same inode, nlink 2; refuses to link a directory', async () => {
    const { fuse, dir } = await open({
      populate: (d) => {
        fs.writeFileSync(path.join(d, 'f'), 'data');
        fs.mkdirSync(path.join(d, 'sub'));
      },
    });
    const f = await fuse.lookup(ROOT, 'f');
    const sub = await fuse.lookup(ROOT, 'sub');
    const l = await fuse.link(f.nodeid, sub.nodeid, 'hard');
    expect(l.nodeid).toBe(f.nodeid);
    expect(l.attr.ino).toBe(f.attr.ino);
    expect(l.attr.nlink).toBe(2);
    expect(fs.statSync(path.join(dir, 'sub', 'hard')).ino).toBe(Number(f.attr.ino));
    await expectErrno(fuse.link(f.nodeid, ROOT, 'f'), 'EEXIST');
    await expectErrno(fuse.link(sub.nodeid, ROOT, 'dirlink'), 'EPERM');
  });

  it('creates symlinks and reads them back without following them', async () => {
    const { fuse, dir } = await open();
    const target = '../outside/of/the/share';
    const l = await fuse.symlink(ROOT, 'link', target);
    expect(l.attr.mode & S_IFMT).toBe(S_IFLNK);
    expect(l.attr.size).toBe(target.length);
    expect(fs.readlinkSync(path.join(dir, 'link'))).toBe(target);
    expect((await fuse.readlink(l.nodeid)).toString()).toBe(target);
    expect((await fuse.lookup(ROOT, 'link')).attr.mode & S_IFMT).toBe(S_IFLNK);
    await expectErrno(fuse.symlink(ROOT, 'link', 'x'), 'EEXIST');
  });

  it('makes a FIFO with mknod', async () => {
    const { fuse, dir } = await open();
    const e = await fuse.mknod(ROOT, 'fifo', S_IFIFO | 0o640);
    expect(e.attr.mode).toBe(S_IFIFO | 0o640);
    expect(fs.statSync(path.join(dir, 'fifo')).isFIFO()).toBe(true);
    const r = await fuse.mknod(ROOT, 'reg', S_IFREG | 0o600);
    expect(r.attr.mode).toBe(S_IFREG | 0o600);
  });

  it('lists a directory of more than 100 entries across several READDIR replies', async () => {
    const names = Array.from({ length: 150 }, (_, i) => `entry-${String(i).padStart(3, '0')}-${'x'.repeat(i % 40)}`);
    const { fuse } = await open({
      populate: (d) => {
        fs.mkdirSync(path.join(d, 'big'));
        for (const n of names) fs.writeFileSync(path.join(d, 'big', n), '');
      },
    });
    const big = await fuse.lookup(ROOT, 'big');
    const h = await fuse.opendir(big.nodeid);
    // 512-byte replies force many round trips, each resumed from the last cookie.
    let batches = 0;
    const seen: string[] = [];
    for (
      let batch = await fuse.readdir(big.nodeid, h.fh, 0n, 512);
      batch.length > 0;
      batch = await fuse.readdir(big.nodeid, h.fh, batch[batch.length - 1].off, 512)
    ) {
      batches++;
      seen.push(...batch.map((d) => d.name));
    }
    expect(batches).toBeGreaterThan(5);
    expect(seen.filter((n) => n !== '.' && n !== '..').sort()).toEqual([...names].sort());
    expect(new Set(seen).size).toBe(seen.length);
    expect(seen).toContain('.');
    expect(seen).toContain('..');
    await fuse.releasedir(big.nodeid, h.fh);
  });

  it('resumes a listing from any cookie it handed out', async () => {
    const names = Array.from({ length: 120 }, (_, i) => `n${i}`);
    const { fuse } = await open({ populate: (d) => names.forEach((n) => fs.writeFileSync(path.join(d, n), '')) });
    const h = await fuse.opendir(ROOT);
    const all = await fuse.readdirAll(ROOT, h.fh, 65536);
    expect(all.length).toBe(names.length + 2);
    const types = new Map(all.map((d) => [d.name, d.type]));
    expect(types.get('n7')).toBe(DT_REG);
    expect(types.get('.')).toBe(DT_DIR);
    // A second handle resumes from the 60th cookie: it sees exactly the rest.
    const h2 = await fuse.opendir(ROOT);
    const rest = await fuse.readdir(ROOT, h2.fh, all[59].off, 65536);
    expect(rest.map((d) => d.name)).toEqual(all.slice(60).map((d) => d.name));
    await fuse.releasedir(ROOT, h.fh);
    await fuse.releasedir(ROOT, h2.fh);
  });

  it('lists with READDIRPLUS: entries carry the same lookup as LOOKUP', async () => {
    const names = Array.from({ length: 110 }, (_, i) => `p${i}`);
    const { fuse, dir } = await open({ populate: (d) => names.forEach((n, i) => fs.writeFileSync(path.join(d, n), 'x'.repeat(i))) });
    const h = await fuse.opendir(ROOT);
    const entries = [];
    for (
      let batch = await fuse.readdirplus(ROOT, h.fh, 0n, 4096);
      batch.length > 0;
      batch = await fuse.readdirplus(ROOT, h.fh, batch[batch.length - 1].off, 4096)
    ) {
      entries.push(...batch);
    }
    const files = entries.filter((e) => e.name !== '.' && e.name !== '..');
    expect(files.map((e) => e.name).sort()).toEqual([...names].sort());
    for (const e of files) {
      expect(e.entry.nodeid).toBeGreaterThan(ROOT);
      expect(e.entry.attr.size).toBe(Number(e.name.slice(1)));
      expect(e.entry.attr.ino).toBe(BigInt(fs.statSync(path.join(dir, e.name)).ino));
    }
    const p5 = files.find((e) => e.name === 'p5')!;
    expect((await fuse.lookup(ROOT, 'p5')).nodeid).toBe(p5.entry.nodeid);
    await fuse.batchForget(files.map((e) => ({ nodeid: e.entry.nodeid, nlookup: 1 })));
    await fuse.releasedir(ROOT, h.fh);
  });

  itIfCan(backend, 'refusesSlashNames', 'refuses names containing a slash and creating `.` or `..`', async () => {
    const { fuse, dir } = await open({
      populate: (d) => {
        fs.mkdirSync(path.join(d, 'sub'));
        fs.writeFileSync(path.join(d, 'sub', 'f'), '');
      },
    });
    await expectErrno(fuse.lookup(ROOT, 'sub/f'), 'EINVAL');
    await expectErrno(fuse.mkdir(ROOT, 'a/b', 0o755), 'EINVAL');
    await expectErrno(fuse.create(ROOT, '../escape', O_RDWR, 0o644), 'EINVAL');
    // mkdir(2) answers EEXIST for both (ours, as Linux); the C daemon refuses them as invalid names.
    await expectErrno(fuse.mkdir(ROOT, '..', 0o755), 'EEXIST', 'EINVAL');
    await expectErrno(fuse.mkdir(ROOT, '.', 0o755), 'EEXIST', 'EINVAL');
    await expectErrno(fuse.symlink(ROOT, 'x/y', 'target'), 'EINVAL');
    // Nothing appeared beside the share (its parent holds only the share and the socket).
    expect(fs.readdirSync(path.dirname(dir)).filter((n) => n !== 'sock')).toEqual(['share']);
    expect(fs.readdirSync(dir)).toEqual(['sub']);
  });

  itIfCan(backend, 'dotdotLookup', 'keeps `..` of the root inside the share', async () => {
    const { fuse, dir } = await open({ populate: (d) => fs.mkdirSync(path.join(d, 'sub')) });
    const rootIno = BigInt(fs.statSync(dir).ino);
    // The reference answers another nodeid for the root itself: compare inode numbers.
    expect((await fuse.lookup(ROOT, '..')).attr.ino).toBe(rootIno);
    expect((await fuse.lookup(ROOT, '.')).attr.ino).toBe(rootIno);
    const sub = await fuse.lookup(ROOT, 'sub');
    expect((await fuse.lookup(sub.nodeid, '..')).attr.ino).toBe(rootIno);
  });
});
