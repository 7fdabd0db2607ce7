/**
 * FUSE argument layouts the guest sends that src/fuse-server/protocol.ts does
 * not declare (xattrs, locks, fallocate, lseek, copy_file_range, DAX mappings),
 * declared the same way from /usr/include/linux/fuse.h, plus the guest-side
 * constants that go with them.
 */
import { pad, struct, type ValueOfLayout } from '../fuse-server/layout';

export const fuse_getxattr_in = struct('fuse_getxattr_in', { size: 'u32', padding: pad(4) });
export const fuse_getxattr_out = struct('fuse_getxattr_out', { size: 'u32', padding: pad(4) });

/** With FUSE_SETXATTR_EXT negotiated the full struct travels, else its first FUSE_COMPAT_SETXATTR_IN_SIZE bytes. */
export const fuse_setxattr_in = struct('fuse_setxattr_in', { size: 'u32', flags: 'u32', setxattr_flags: 'u32', padding: pad(4) });
export const FUSE_COMPAT_SETXATTR_IN_SIZE = 8;

export const fuse_file_lock = struct('fuse_file_lock', { start: 'u64n', end: 'u64n', type: 'u32', pid: 'u32' });
export const fuse_lk_in = struct('fuse_lk_in', { fh: 'u64n', owner: 'u64', lk: fuse_file_lock, lk_flags: 'u32', padding: pad(4) });
export const fuse_lk_out = struct('fuse_lk_out', { lk: fuse_file_lock });
/** fuse_lk_in.lk_flags: the lock is a BSD flock(), not a POSIX record lock. */
export const FUSE_LK_FLOCK = 1 << 0;

export const fuse_fallocate_in = struct('fuse_fallocate_in', { fh: 'u64n', offset: 'u64n', length: 'u64n', mode: 'u32', padding: pad(4) });
export const fuse_lseek_in = struct('fuse_lseek_in', { fh: 'u64n', offset: 'u64n', whence: 'u32', padding: pad(4) });
export const fuse_lseek_out = struct('fuse_lseek_out', { offset: 'u64n' });

export const fuse_copy_file_range_in = struct('fuse_copy_file_range_in', {
  fh_in: 'u64n',
  off_in: 'u64n',
  nodeid_out: 'u64n',
  fh_out: 'u64n',
  off_out: 'u64n',
  len: 'u64n',
  flags: 'u64n',
});

export const fuse_setupmapping_in = struct('fuse_setupmapping_in', { fh: 'u64n', foffset: 'u64n', len: 'u64n', flags: 'u64n', moffset: 'u64n' });
export const FUSE_SETUPMAPPING_FLAG_WRITE = 1 << 0;
export const FUSE_SETUPMAPPING_FLAG_READ = 1 << 1;
/** Only a u32 count: the fuse_removemapping_one entries follow at offset 4, unaligned, as the kernel sends them. */
export const fuse_removemapping_in = struct('fuse_removemapping_in', { count: 'u32' });
export const fuse_removemapping_one = struct('fuse_removemapping_one', { moffset: 'u64n', len: 'u64n' });

/** Lock types of struct flock (asm-generic/fcntl.h). */
export const F_RDLCK = 0;
export const F_WRLCK = 1;
export const F_UNLCK = 2;

/** renameat2() flags (linux/fs.h). */
export const RENAME_NOREPLACE = 1 << 0;
export const RENAME_EXCHANGE = 1 << 1;
export const RENAME_WHITEOUT = 1 << 2;

/** lseek() whence values, SEEK_DATA/SEEK_HOLE included. */
export const SEEK_SET = 0;
export const SEEK_CUR = 1;
export const SEEK_END = 2;
export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;

/** fallocate() modes (linux/falloc.h). */
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;

/** setxattr() flags. */
export const XATTR_CREATE = 1;
export const XATTR_REPLACE = 2;

export type FileLock = ValueOfLayout<typeof fuse_file_lock>;
