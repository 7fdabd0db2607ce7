import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { close } from '../../src/sys';
import {
  O_CLOEXEC,
  O_DIRECTORY,
  O_RDONLY,
  flock_struct,
  getdents,
  linux_dirent64,
  openat,
  AT_FDCWD,
  statvfs_struct,
  statx_struct,
} from '../../src/sys/fs';

const dirs: string[] = [];
afterEach(() => dirs.splice(0).forEach((d) => rmSync(d, { recursive: true, force: true })));

describe('sys ABI structs', () => {
  it('have the sizes and offsets of the x86_64/aarch64 headers', () => {
    expect(statx_struct.size).toBe(256);
    expect(statvfs_struct.size).toBe(112);
    expect(flock_struct.size).toBe(32);
    // offsetof(struct linux_dirent64, d_name)
    expect(linux_dirent64.size).toBe(19);
    const b = Buffer.alloc(256);
    b.writeUInt32LE(0o100644, 28);
    b.writeUInt32LE(7, 128);
    b.writeUInt32LE(9, 140);
    b.writeBigUInt64LE(42n, 144);
    b.writeInt32LE(-1, 68);
    b.writeUInt32LE(0xffff_fffe, 64);
    const st = statx_struct.decode(b, 0);
    expect([st.mode, st.rdevMajor, st.devMinor, st.mntId, st.atimeSec]).toEqual([0o100644, 7, 9, 42, -2]);
    const shifted = Buffer.concat([Buffer.alloc(8), b]);
    expect(statx_struct.decode(shifted, 8)).toEqual(st);
  });

  it('lists a directory with the getdents iterator, names as views with and without the NUL', () => {
    const d = mkdtempSync(join(tmpdir(), 'getdents-'));
    dirs.push(d);
    const names = Array.from({ length: 300 }, (_, i) => `file-${i}-${'x'.repeat(i % 50)}`);
    for (const n of names) writeFileSync(join(d, n), '');
    const fd = openat(AT_FDCWD, d, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    try {
      const seen: string[] = [];
      // A small buffer forces many getdents64 batches.
      for (const e of getdents(fd, Buffer.alloc(1024))) {
        expect(e.cname.length).toBe(e.name.length + 1);
        expect(e.cname[e.name.length]).toBe(0);
        expect(e.ino > 0n).toBe(true);
        seen.push(e.name.toString());
      }
      expect(seen.sort()).toEqual(['.', '..', ...names].sort());
    } finally {
      close(fd);
    }
  });
});
