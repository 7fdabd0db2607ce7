import { describe, expect, it } from 'vitest';
import { pad, struct } from '../../src/layout';
import * as P from '../../src/fuse-server/protocol';

describe('FUSE struct layouts', () => {
  it('have the sizes of linux/fuse.h 7.38 (as reported by gcc)', () => {
    const expected: Record<string, [{ size: number }, number]> = {
      fuse_in_header: [P.fuse_in_header, 40],
      fuse_out_header: [P.fuse_out_header, 16],
      fuse_attr: [P.fuse_attr, 88],
      fuse_entry_out: [P.fuse_entry_out, 128],
      fuse_attr_out: [P.fuse_attr_out, 104],
      fuse_init_in: [P.fuse_init_in, 64],
      fuse_init_out: [P.fuse_init_out, 64],
      fuse_setattr_in: [P.fuse_setattr_in, 88],
      fuse_read_in: [P.fuse_read_in, 40],
      fuse_write_in: [P.fuse_write_in, 40],
      fuse_open_in: [P.fuse_open_in, 8],
      fuse_open_out: [P.fuse_open_out, 16],
      fuse_create_in: [P.fuse_create_in, 16],
      fuse_mkdir_in: [P.fuse_mkdir_in, 8],
      fuse_mknod_in: [P.fuse_mknod_in, 16],
      fuse_rename_in: [P.fuse_rename_in, 8],
      fuse_rename2_in: [P.fuse_rename2_in, 16],
      fuse_kstatfs: [P.fuse_kstatfs, 80],
      fuse_statfs_out: [P.fuse_statfs_out, 80],
      fuse_dirent: [P.fuse_dirent, 24],
      fuse_direntplus: [P.fuse_direntplus, 152],
      fuse_forget_in: [P.fuse_forget_in, 8],
      fuse_batch_forget_in: [P.fuse_batch_forget_in, 8],
      fuse_forget_one: [P.fuse_forget_one, 16],
      fuse_getattr_in: [P.fuse_getattr_in, 16],
      fuse_release_in: [P.fuse_release_in, 24],
      fuse_flush_in: [P.fuse_flush_in, 24],
      fuse_fsync_in: [P.fuse_fsync_in, 16],
      fuse_access_in: [P.fuse_access_in, 8],
      fuse_write_out: [P.fuse_write_out, 8],
      fuse_link_in: [P.fuse_link_in, 8],
    };
    for (const [name, [layout, size]] of Object.entries(expected)) expect([name, layout.size]).toEqual([name, size]);
  });

  it('places fields at the C offsets', () => {
    const b = Buffer.alloc(P.fuse_setattr_in.size);
    P.fuse_setattr_in.encode(
      {
        valid: 1,
        fh: 2,
        size: 0x1_0000_0003,
        lock_owner: 4n,
        atime: -5,
        mtime: 6,
        ctime: 7,
        atimensec: 8,
        mtimensec: 9,
        ctimensec: 10,
        mode: 0o100644,
        uid: 1000,
        gid: 1001,
      },
      b,
      0,
    );
    expect(b.readBigUInt64LE(16)).toBe(0x1_0000_0003n);
    expect(b.readBigInt64LE(32)).toBe(-5n);
    expect(b.readUInt32LE(68)).toBe(0o100644);
    expect(b.readUInt32LE(76)).toBe(1000);
    expect(b.readUInt32LE(80)).toBe(1001);
    const out = Buffer.alloc(64);
    P.fuse_init_out.encode(
      {
        major: 7,
        minor: 38,
        max_readahead: 0,
        flags: 0,
        max_background: 0,
        congestion_threshold: 0,
        max_write: 0,
        time_gran: 0,
        max_pages: 256,
        map_alignment: 0,
        flags2: 9,
      },
      out,
      0,
    );
    expect(out.readUInt16LE(28)).toBe(256);
    expect(out.readUInt32LE(32)).toBe(9);
  });

  it('round-trips nested structs, bigints and signed 64-bit numbers', () => {
    const value = {
      entry_out: {
        nodeid: 2 ** 40 + 7,
        generation: 0,
        entry_valid: 86400,
        attr_valid: 1,
        entry_valid_nsec: 500,
        attr_valid_nsec: 0,
        attr: {
          ino: 0xffff_ffff_ffff_fffen,
          size: 2 ** 52,
          blocks: 8,
          atime: -1,
          mtime: 1_700_000_000,
          ctime: 0,
          atimensec: 999_999_999,
          mtimensec: 1,
          ctimensec: 2,
          mode: 0o40755,
          nlink: 2,
          uid: 0xffff_fffe,
          gid: 3,
          rdev: 0,
          blksize: 4096,
          flags: 0,
        },
      },
      dirent: { ino: 1n << 63n, off: 0x7fff_ffff_ffff_ffffn, namelen: 3, type: 4 },
    };
    const b = Buffer.alloc(P.fuse_direntplus.size + 8);
    P.fuse_direntplus.encode(value, b, 8);
    expect(P.fuse_direntplus.decode(b, 8)).toEqual(value);
  });

  it('decodes u64n above 2^53 to a value that can never equal an id we issue', () => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(0xffff_ffff_ffff_ffffn);
    const v = struct('t', { x: 'u64n' }).decode(b, 0).x;
    expect(v).toBeGreaterThan(Number.MAX_SAFE_INTEGER);
  });

  it('rejects declarations that disagree with C alignment', () => {
    expect(() => struct('bad', { a: 'u32', b: 'u64' })).toThrow(/misaligned/);
    expect(() => struct('bad', { a: 'u64', b: 'u32' })).toThrow(/multiple/);
    expect(struct('ok', { a: 'u32', p: pad(4), b: 'u64' }).size).toBe(16);
  });
});
