/**
 * The FUSE wire protocol as /usr/include/linux/fuse.h (7.38) spells it: opcodes,
 * flags and struct layouts. Names follow the header so it can be grepped side by side.
 */
import { pad, struct, type ValueOfLayout } from '../layout';

export const FUSE_KERNEL_VERSION = 7;
export const FUSE_KERNEL_MINOR_VERSION = 38;
/** virtio-fs arrived in Linux 5.4 with protocol 7.31; no virtio-fs guest speaks anything older. */
export const FUSE_MIN_SUPPORTED_MINOR = 31;
export const FUSE_ROOT_ID = 1;

export enum Opcode {
  FUSE_LOOKUP = 1,
  FUSE_FORGET = 2,
  FUSE_GETATTR = 3,
  FUSE_SETATTR = 4,
  FUSE_READLINK = 5,
  FUSE_SYMLINK = 6,
  FUSE_MKNOD = 8,
  FUSE_MKDIR = 9,
  FUSE_UNLINK = 10,
  FUSE_RMDIR = 11,
  FUSE_RENAME = 12,
  FUSE_LINK = 13,
  FUSE_OPEN = 14,
  FUSE_READ = 15,
  FUSE_WRITE = 16,
  FUSE_STATFS = 17,
  FUSE_RELEASE = 18,
  FUSE_FSYNC = 20,
  FUSE_SETXATTR = 21,
  FUSE_GETXATTR = 22,
  FUSE_LISTXATTR = 23,
  FUSE_REMOVEXATTR = 24,
  FUSE_FLUSH = 25,
  FUSE_INIT = 26,
  FUSE_OPENDIR = 27,
  FUSE_READDIR = 28,
  FUSE_RELEASEDIR = 29,
  FUSE_FSYNCDIR = 30,
  FUSE_GETLK = 31,
  FUSE_SETLK = 32,
  FUSE_SETLKW = 33,
  FUSE_ACCESS = 34,
  FUSE_CREATE = 35,
  FUSE_INTERRUPT = 36,
  FUSE_BMAP = 37,
  FUSE_DESTROY = 38,
  FUSE_IOCTL = 39,
  FUSE_POLL = 40,
  FUSE_NOTIFY_REPLY = 41,
  FUSE_BATCH_FORGET = 42,
  FUSE_FALLOCATE = 43,
  FUSE_READDIRPLUS = 44,
  FUSE_RENAME2 = 45,
  FUSE_LSEEK = 46,
  FUSE_COPY_FILE_RANGE = 47,
  FUSE_SETUPMAPPING = 48,
  FUSE_REMOVEMAPPING = 49,
  FUSE_SYNCFS = 50,
  FUSE_TMPFILE = 51,
  /** Protocol 7.39; Linux >= 6.6 sends it whatever minor was agreed, to learn the birth time. */
  FUSE_STATX = 52,
}

/** fuse_setattr_in.valid */
export const FATTR_MODE = 1 << 0;
export const FATTR_UID = 1 << 1;
export const FATTR_GID = 1 << 2;
export const FATTR_SIZE = 1 << 3;
export const FATTR_ATIME = 1 << 4;
export const FATTR_MTIME = 1 << 5;
export const FATTR_FH = 1 << 6;
export const FATTR_ATIME_NOW = 1 << 7;
export const FATTR_MTIME_NOW = 1 << 8;
export const FATTR_LOCKOWNER = 1 << 9;
export const FATTR_CTIME = 1 << 10;
export const FATTR_KILL_SUIDGID = 1 << 11;

/** fuse_open_out.open_flags */
export const FOPEN_DIRECT_IO = 1 << 0;
export const FOPEN_KEEP_CACHE = 1 << 1;
export const FOPEN_NONSEEKABLE = 1 << 2;
export const FOPEN_CACHE_DIR = 1 << 3;
export const FOPEN_STREAM = 1 << 4;
export const FOPEN_NOFLUSH = 1 << 5;
export const FOPEN_PARALLEL_DIRECT_WRITES = 1 << 6;

/** fuse_init_in/out.flags (bits 0..31; bits 32..63 travel in flags2). */
export const FUSE_ASYNC_READ = 1 << 0;
export const FUSE_POSIX_LOCKS = 1 << 1;
export const FUSE_FILE_OPS = 1 << 2;
export const FUSE_ATOMIC_O_TRUNC = 1 << 3;
export const FUSE_EXPORT_SUPPORT = 1 << 4;
export const FUSE_BIG_WRITES = 1 << 5;
export const FUSE_DONT_MASK = 1 << 6;
export const FUSE_SPLICE_WRITE = 1 << 7;
export const FUSE_SPLICE_MOVE = 1 << 8;
export const FUSE_SPLICE_READ = 1 << 9;
export const FUSE_FLOCK_LOCKS = 1 << 10;
export const FUSE_HAS_IOCTL_DIR = 1 << 11;
export const FUSE_AUTO_INVAL_DATA = 1 << 12;
export const FUSE_DO_READDIRPLUS = 1 << 13;
export const FUSE_READDIRPLUS_AUTO = 1 << 14;
export const FUSE_ASYNC_DIO = 1 << 15;
export const FUSE_WRITEBACK_CACHE = 1 << 16;
export const FUSE_NO_OPEN_SUPPORT = 1 << 17;
export const FUSE_PARALLEL_DIROPS = 1 << 18;
export const FUSE_HANDLE_KILLPRIV = 1 << 19;
export const FUSE_POSIX_ACL = 1 << 20;
export const FUSE_ABORT_ERROR = 1 << 21;
export const FUSE_MAX_PAGES = 1 << 22;
export const FUSE_CACHE_SYMLINKS = 1 << 23;
export const FUSE_NO_OPENDIR_SUPPORT = 1 << 24;
export const FUSE_EXPLICIT_INVAL_DATA = 1 << 25;
export const FUSE_MAP_ALIGNMENT = 1 << 26;
export const FUSE_SUBMOUNTS = 1 << 27;
export const FUSE_HANDLE_KILLPRIV_V2 = 1 << 28;
export const FUSE_SETXATTR_EXT = 1 << 29;
export const FUSE_INIT_EXT = 1 << 30;
export const FUSE_INIT_RESERVED = 0x8000_0000;
/** flags2 bits: FUSE_SECURITY_CTX is 1ULL << 32, i.e. bit 0 of flags2. */
export const FUSE_SECURITY_CTX_FLAGS2 = 1 << 0;
export const FUSE_HAS_INODE_DAX_FLAGS2 = 1 << 1;
export const FUSE_CREATE_SUPP_GROUP_FLAGS2 = 1 << 2;
export const FUSE_HAS_EXPIRE_ONLY_FLAGS2 = 1 << 3;
/** FUSE_DIRECT_IO_ALLOW_MMAP (1ULL << 36, 7.39): files opened with FOPEN_DIRECT_IO may be mmap'd shared. */
export const FUSE_DIRECT_IO_ALLOW_MMAP_FLAGS2 = 1 << 4;

/** fuse_attr.flags */
export const FUSE_ATTR_SUBMOUNT = 1 << 0;
export const FUSE_ATTR_DAX = 1 << 1;

export const FUSE_RELEASE_FLUSH = 1 << 0;
export const FUSE_RELEASE_FLOCK_UNLOCK = 1 << 1;
export const FUSE_GETATTR_FH = 1 << 0;
export const FUSE_WRITE_CACHE = 1 << 0;
export const FUSE_WRITE_LOCKOWNER = 1 << 1;
export const FUSE_WRITE_KILL_SUIDGID = 1 << 2;
export const FUSE_READ_LOCKOWNER = 1 << 1;
export const FUSE_FSYNC_FDATASYNC = 1 << 0;
export const FUSE_OPEN_KILL_SUIDGID = 1 << 0;
export const FUSE_LK_FLOCK = 1 << 0;
export const FUSE_SETXATTR_ACL_KILL_SGID = 1 << 0;
export const FUSE_SETUPMAPPING_FLAG_WRITE = 1 << 0;
export const FUSE_SETUPMAPPING_FLAG_READ = 1 << 1;
/** Lock ranges end at OFFSET_MAX when they run to the end of the file. */
export const OFFSET_MAX = 0x7fff_ffff_ffff_ffffn;
/** Extension types 0..31 are security contexts: the type is their count (fuse_secctx_header). */
export const FUSE_MAX_NR_SECCTX = 31;
/** Linux sends at most a page of fuse_removemapping_one per REMOVEMAPPING (fs/fuse/dax.c). */
export const FUSE_REMOVEMAPPING_MAX_ENTRY = 4096 / 16;

/* Linux limits (linux/limits.h) on what a guest can name, as the guest's own VFS enforces them. */
/** Bytes in one path component, without its NUL. */
export const NAME_MAX = 255;
/** Bytes in a path (a symlink target), its NUL included. */
export const PATH_MAX = 4096;
/** Bytes in an xattr name, without its NUL. */
export const XATTR_NAME_MAX = 255;
/** Bytes in an xattr value. */
export const XATTR_SIZE_MAX = 65536;
/** Bytes in an xattr name list. */
export const XATTR_LIST_MAX = 65536;

/* ---------------- layouts ---------------- */

export const fuse_in_header = struct('fuse_in_header', {
  len: 'u32',
  opcode: 'u32',
  unique: 'u64',
  nodeid: 'u64n',
  uid: 'u32',
  gid: 'u32',
  pid: 'u32',
  total_extlen: 'u16',
  padding: pad(2),
});

export const fuse_out_header = struct('fuse_out_header', {
  len: 'u32',
  error: 'i32',
  unique: 'u64',
});

export const fuse_attr = struct('fuse_attr', {
  ino: 'u64',
  size: 'u64n',
  blocks: 'u64n',
  atime: 'i64n',
  mtime: 'i64n',
  ctime: 'i64n',
  atimensec: 'u32',
  mtimensec: 'u32',
  ctimensec: 'u32',
  mode: 'u32',
  nlink: 'u32',
  uid: 'u32',
  gid: 'u32',
  rdev: 'u32',
  blksize: 'u32',
  flags: 'u32',
});

export const fuse_kstatfs = struct('fuse_kstatfs', {
  blocks: 'u64n',
  bfree: 'u64n',
  bavail: 'u64n',
  files: 'u64n',
  ffree: 'u64n',
  bsize: 'u32',
  namelen: 'u32',
  frsize: 'u32',
  padding: pad(4),
  spare: pad(24),
});

export const fuse_entry_out = struct('fuse_entry_out', {
  nodeid: 'u64n',
  generation: 'u64n',
  entry_valid: 'u64n',
  attr_valid: 'u64n',
  entry_valid_nsec: 'u32',
  attr_valid_nsec: 'u32',
  attr: fuse_attr,
});

export const fuse_forget_in = struct('fuse_forget_in', { nlookup: 'u64n' });
export const fuse_forget_one = struct('fuse_forget_one', { nodeid: 'u64n', nlookup: 'u64n' });
export const fuse_batch_forget_in = struct('fuse_batch_forget_in', { count: 'u32', dummy: pad(4) });

export const fuse_getattr_in = struct('fuse_getattr_in', {
  getattr_flags: 'u32',
  dummy: pad(4),
  fh: 'u64n',
});

export const fuse_attr_out = struct('fuse_attr_out', {
  attr_valid: 'u64n',
  attr_valid_nsec: 'u32',
  dummy: pad(4),
  attr: fuse_attr,
});

export const fuse_mknod_in = struct('fuse_mknod_in', { mode: 'u32', rdev: 'u32', umask: 'u32', padding: pad(4) });
export const fuse_mkdir_in = struct('fuse_mkdir_in', { mode: 'u32', umask: 'u32' });
export const fuse_rename_in = struct('fuse_rename_in', { newdir: 'u64n' });
export const fuse_rename2_in = struct('fuse_rename2_in', { newdir: 'u64n', flags: 'u32', padding: pad(4) });
export const fuse_link_in = struct('fuse_link_in', { oldnodeid: 'u64n' });

export const fuse_setattr_in = struct('fuse_setattr_in', {
  valid: 'u32',
  padding: pad(4),
  fh: 'u64n',
  size: 'u64n',
  lock_owner: 'u64',
  atime: 'i64n',
  mtime: 'i64n',
  ctime: 'i64n',
  atimensec: 'u32',
  mtimensec: 'u32',
  ctimensec: 'u32',
  mode: 'u32',
  unused4: pad(4),
  uid: 'u32',
  gid: 'u32',
  unused5: pad(4),
});

export const fuse_open_in = struct('fuse_open_in', { flags: 'u32', open_flags: 'u32' });
export const fuse_create_in = struct('fuse_create_in', { flags: 'u32', mode: 'u32', umask: 'u32', open_flags: 'u32' });
export const fuse_open_out = struct('fuse_open_out', { fh: 'u64n', open_flags: 'u32', padding: pad(4) });

/** CREATE (and TMPFILE) answer a fuse_entry_out followed by a fuse_open_out (linux/fuse.h has no name for the pair). */
export const fuse_create_out = struct('fuse_create_out', { entry: fuse_entry_out, open: fuse_open_out });

export const fuse_release_in = struct('fuse_release_in', {
  fh: 'u64n',
  flags: 'u32',
  release_flags: 'u32',
  lock_owner: 'u64',
});

export const fuse_flush_in = struct('fuse_flush_in', {
  fh: 'u64n',
  unused: pad(4),
  padding: pad(4),
  lock_owner: 'u64',
});

/**
 * READ, READDIR and READDIRPLUS. The offset is kept exact: for READDIR it is
 * an opaque directory cookie the host gave out (any 64 bits); READ bounds it
 * before use.
 */
export const fuse_read_in = struct('fuse_read_in', {
  fh: 'u64n',
  offset: 'u64',
  size: 'u32',
  read_flags: 'u32',
  lock_owner: 'u64',
  flags: 'u32',
  padding: pad(4),
});

export const fuse_write_in = struct('fuse_write_in', {
  fh: 'u64n',
  offset: 'u64n',
  size: 'u32',
  write_flags: 'u32',
  lock_owner: 'u64',
  flags: 'u32',
  padding: pad(4),
});

export const fuse_write_out = struct('fuse_write_out', { size: 'u32', padding: pad(4) });
export const fuse_statfs_out = struct('fuse_statfs_out', { st: fuse_kstatfs });
export const fuse_fsync_in = struct('fuse_fsync_in', { fh: 'u64n', fsync_flags: 'u32', padding: pad(4) });
export const fuse_access_in = struct('fuse_access_in', { mask: 'u32', padding: pad(4) });
export const fuse_interrupt_in = struct('fuse_interrupt_in', { unique: 'u64' });

export const fuse_setxattr_in = struct('fuse_setxattr_in', { size: 'u32', flags: 'u32', setxattr_flags: 'u32', padding: pad(4) });
/** Without FUSE_SETXATTR_EXT the kernel sends only size and flags (FUSE_COMPAT_SETXATTR_IN_SIZE). */
export const fuse_setxattr_in_compat = struct('fuse_setxattr_in', { size: 'u32', flags: 'u32' });
export const fuse_getxattr_in = struct('fuse_getxattr_in', { size: 'u32', padding: pad(4) });
export const fuse_getxattr_out = struct('fuse_getxattr_out', { size: 'u32', padding: pad(4) });

export const fuse_file_lock = struct('fuse_file_lock', { start: 'u64', end: 'u64', type: 'u32', pid: 'u32' });
export const fuse_lk_in = struct('fuse_lk_in', { fh: 'u64n', owner: 'u64', lk: fuse_file_lock, lk_flags: 'u32', padding: pad(4) });
export const fuse_lk_out = struct('fuse_lk_out', { lk: fuse_file_lock });

export const fuse_fallocate_in = struct('fuse_fallocate_in', {
  fh: 'u64n',
  offset: 'u64n',
  length: 'u64n',
  mode: 'u32',
  padding: pad(4),
});
export const fuse_lseek_in = struct('fuse_lseek_in', { fh: 'u64n', offset: 'u64', whence: 'u32', padding: pad(4) });
export const fuse_lseek_out = struct('fuse_lseek_out', { offset: 'u64' });
export const fuse_copy_file_range_in = struct('fuse_copy_file_range_in', {
  fh_in: 'u64n',
  off_in: 'u64n',
  nodeid_out: 'u64n',
  fh_out: 'u64n',
  off_out: 'u64n',
  len: 'u64n',
  flags: 'u64n',
});
export const fuse_syncfs_in = struct('fuse_syncfs_in', { padding: pad(8) });

export const fuse_setupmapping_in = struct('fuse_setupmapping_in', {
  fh: 'u64',
  foffset: 'u64',
  len: 'u64',
  flags: 'u64',
  moffset: 'u64',
});
export const fuse_removemapping_in = struct('fuse_removemapping_in', { count: 'u32' });
export const fuse_removemapping_one = struct('fuse_removemapping_one', { moffset: 'u64', len: 'u64' });

/** Request extensions (7.38): each starts with this header; the type says what follows. */
export const fuse_ext_header = struct('fuse_ext_header', { size: 'u32', type: 'u32' });
/** The security-context extension: its fuse_ext_header is read as this (size, number of contexts). */
export const fuse_secctx_header = struct('fuse_secctx_header', { size: 'u32', nr_secctx: 'u32' });
/** One context: `size` bytes of value after the NUL-terminated xattr name that follows this struct. */
export const fuse_secctx = struct('fuse_secctx', { size: 'u32', padding: pad(4) });

export const fuse_statx_in = struct('fuse_statx_in', {
  getattr_flags: 'u32',
  reserved: pad(4),
  fh: 'u64n',
  sx_flags: 'u32',
  sx_mask: 'u32',
});
export const fuse_sx_time = struct('fuse_sx_time', { tv_sec: 'i64n', tv_nsec: 'u32', reserved: pad(4) });
export const fuse_statx = struct('fuse_statx', {
  mask: 'u32',
  blksize: 'u32',
  attributes: 'u64n',
  nlink: 'u32',
  uid: 'u32',
  gid: 'u32',
  mode: 'u16',
  spare0: pad(2),
  ino: 'u64',
  size: 'u64n',
  blocks: 'u64n',
  attributes_mask: 'u64n',
  atime: fuse_sx_time,
  btime: fuse_sx_time,
  ctime: fuse_sx_time,
  mtime: fuse_sx_time,
  rdev_major: 'u32',
  rdev_minor: 'u32',
  dev_major: 'u32',
  dev_minor: 'u32',
  spare2: pad(14 * 8),
});
export const fuse_statx_out = struct('fuse_statx_out', {
  attr_valid: 'u64n',
  attr_valid_nsec: 'u32',
  flags: 'u32',
  spare: pad(16),
  stat: fuse_statx,
});

export const fuse_init_in = struct('fuse_init_in', {
  major: 'u32',
  minor: 'u32',
  max_readahead: 'u32',
  flags: 'u32',
  flags2: 'u32',
  unused: pad(44),
});
/** Kernels before 7.36 send only major, minor, max_readahead and flags. */
export const FUSE_COMPAT_INIT_IN_SIZE = 16;

export const fuse_init_out = struct('fuse_init_out', {
  major: 'u32',
  minor: 'u32',
  max_readahead: 'u32',
  flags: 'u32',
  max_background: 'u16',
  congestion_threshold: 'u16',
  max_write: 'u32',
  time_gran: 'u32',
  max_pages: 'u16',
  map_alignment: 'u16',
  flags2: 'u32',
  unused: pad(28),
});

/** struct fuse_dirent without its trailing name[]. */
export const fuse_dirent = struct('fuse_dirent', {
  ino: 'u64',
  off: 'u64',
  namelen: 'u32',
  type: 'u32',
});

/** struct fuse_direntplus without the dirent's trailing name[]. */
export const fuse_direntplus = struct('fuse_direntplus', {
  entry_out: fuse_entry_out,
  dirent: fuse_dirent,
});

/** FUSE_REC_ALIGN: variable-length records are padded to 8 bytes. */
export function fuseRecAlign(n: number): number {
  return (n + 7) & ~7;
}

export type InHeader = ValueOfLayout<typeof fuse_in_header>;
export type FuseAttr = ValueOfLayout<typeof fuse_attr>;
export type EntryOut = ValueOfLayout<typeof fuse_entry_out>;
export type InitIn = ValueOfLayout<typeof fuse_init_in>;
export type InitOut = ValueOfLayout<typeof fuse_init_out>;
export type SetattrIn = ValueOfLayout<typeof fuse_setattr_in>;
export type FuseFileLock = ValueOfLayout<typeof fuse_file_lock>;
