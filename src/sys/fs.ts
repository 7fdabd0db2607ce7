import { close, libc, syscall } from './libc';

/**
 * File-system syscalls Node lacks: the *at family relative to directory fds,
 * statx, getdents64 and the per-thread fs credentials. Paths are `string`
 * (UTF-8) or a NUL-terminated Buffer, so names that are not UTF-8 pass through
 * byte for byte.
 */
export type PathArg = string | Buffer;

export const AT_FDCWD = -100;
export const AT_SYMLINK_NOFOLLOW = 0x100;
export const AT_REMOVEDIR = 0x200;
export const AT_SYMLINK_FOLLOW = 0x400;
export const AT_EMPTY_PATH = 0x1000;

export const O_RDONLY = 0;
export const O_WRONLY = 1;
export const O_RDWR = 2;
export const O_ACCMODE = 3;
export const O_CREAT = 0o100;
export const O_EXCL = 0o200;
export const O_NOCTTY = 0o400;
export const O_TRUNC = 0o1000;
export const O_APPEND = 0o2000;
export const O_DSYNC = 0o10000;
export const O_DIRECT = 0o40000;
export const O_LARGEFILE = 0o100000;
export const O_DIRECTORY = 0o200000;
export const O_NOFOLLOW = 0o400000;
export const O_NOATIME = 0o1000000;
export const O_CLOEXEC = 0o2000000;
export const O_SYNC = 0o4010000;
export const O_PATH = 0o10000000;

export const S_IFMT = 0o170000;
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;

export const SEEK_SET = 0;

export const RENAME_NOREPLACE = 1 << 0;
export const RENAME_EXCHANGE = 1 << 1;
export const RENAME_WHITEOUT = 1 << 2;

/** utimensat's special tv_nsec values. */
export const UTIME_NOW = (1 << 30) - 1;
export const UTIME_OMIT = (1 << 30) - 2;

const STATX_BASIC_STATS = 0x7ff;
const STATX_SIZE = 256;
const STATVFS_SIZE = 112;

export const openat = syscall<(dirfd: number, path: PathArg, flags: number, mode: number) => number>(
  'openat',
  'int openat(int, const char *, int, uint32_t)',
);
export const mkdirat = syscall<(dirfd: number, path: PathArg, mode: number) => number>(
  'mkdirat',
  'int mkdirat(int, const char *, uint32_t)',
);
export const mknodat = syscall<(dirfd: number, path: PathArg, mode: number, dev: number) => number>(
  'mknodat',
  'int mknodat(int, const char *, uint32_t, uint64_t)',
);
export const symlinkat = syscall<(target: PathArg, dirfd: number, path: PathArg) => number>(
  'symlinkat',
  'int symlinkat(const char *, int, const char *)',
);
export const readlinkat = syscall<(dirfd: number, path: PathArg, buf: Buffer, size: number) => number>(
  'readlinkat',
  'intptr_t readlinkat(int, const char *, _Out_ uint8_t *, size_t)',
);
export const linkat = syscall<(olddirfd: number, oldpath: PathArg, newdirfd: number, newpath: PathArg, flags: number) => number>(
  'linkat',
  'int linkat(int, const char *, int, const char *, int)',
);
export const unlinkat = syscall<(dirfd: number, path: PathArg, flags: number) => number>(
  'unlinkat',
  'int unlinkat(int, const char *, int)',
);
export const renameat2 = syscall<(olddirfd: number, oldpath: PathArg, newdirfd: number, newpath: PathArg, flags: number) => number>(
  'renameat2',
  'int renameat2(int, const char *, int, const char *, unsigned int)',
);
export const fchmodat = syscall<(dirfd: number, path: PathArg, mode: number, flags: number) => number>(
  'fchmodat',
  'int fchmodat(int, const char *, uint32_t, int)',
);
export const fchownat = syscall<(dirfd: number, path: PathArg, uid: number, gid: number, flags: number) => number>(
  'fchownat',
  'int fchownat(int, const char *, uint32_t, uint32_t, int)',
);
const rawUtimensat = syscall<(dirfd: number, path: PathArg | null, times: Buffer, flags: number) => number>(
  'utimensat',
  'int utimensat(int, const char *, const uint8_t *, int)',
);
export const getdents64 = syscall<(fd: number, buf: Buffer, size: number) => number>(
  'getdents64',
  'intptr_t getdents64(int, _Out_ uint8_t *, size_t)',
);
const rawLseek = syscall<(fd: number, offset: number | bigint, whence: number) => number | bigint>(
  'lseek',
  'int64_t lseek(int, int64_t, int)',
);
const rawStatx = syscall<(dirfd: number, path: PathArg, flags: number, mask: number, buf: Buffer) => number>(
  'statx',
  'int statx(int, const char *, int, unsigned int, _Out_ uint8_t *)',
);
const rawFstatvfs = syscall<(fd: number, buf: Buffer) => number>('fstatvfs', 'int fstatvfs(int, _Out_ uint8_t *)');

// setfsuid/setfsgid cannot fail in the -1/errno way: they return the previous id.
const rawSetfsuid = libc.func('int setfsuid(uint32_t)') as unknown as (uid: number) => number;
const rawSetfsgid = libc.func('int setfsgid(uint32_t)') as unknown as (gid: number) => number;
const rawGeteuid = libc.func('uint32_t geteuid()') as unknown as () => number;

/** struct statx, reduced to what a file server needs. */
export interface Stat {
  devMajor: number;
  devMinor: number;
  /** Exact: inode numbers may use all 64 bits (e.g. overlayfs xino). */
  ino: bigint;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  /** Device number in the kernel's 32-bit new_encode_dev() form (as fuse_attr.rdev wants). */
  rdev: number;
  size: number;
  blocks: number;
  blksize: number;
  atimeSec: number;
  atimeNsec: number;
  mtimeSec: number;
  mtimeNsec: number;
  ctimeSec: number;
  ctimeNsec: number;
}

/** struct statvfs (64-bit Linux layout, identical on x86_64 and aarch64). */
export interface StatVfs {
  bsize: number;
  frsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  namemax: number;
}

// One scratch buffer per call kind: every call decodes its result before returning.
const statxBuf = Buffer.alloc(STATX_SIZE);
const statvfsBuf = Buffer.alloc(STATVFS_SIZE);
const timesBuf = Buffer.alloc(32);

function u64(buf: Buffer, off: number): number {
  return buf.readUInt32LE(off + 4) * 0x1_0000_0000 + buf.readUInt32LE(off);
}
function s64(buf: Buffer, off: number): number {
  return buf.readInt32LE(off + 4) * 0x1_0000_0000 + buf.readUInt32LE(off);
}
function encodeDev(major: number, minor: number): number {
  return ((minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)) >>> 0;
}

/** statx(dirfd, path, flags) decoded; use AT_EMPTY_PATH with "" to stat the fd itself (O_PATH fds too). */
export function statx(dirfd: number, path: PathArg, flags: number): Stat {
  const b = statxBuf;
  rawStatx(dirfd, path, flags, STATX_BASIC_STATS, b);
  return {
    devMajor: b.readUInt32LE(136),
    devMinor: b.readUInt32LE(140),
    ino: b.readBigUInt64LE(32),
    mode: b.readUInt16LE(28),
    nlink: b.readUInt32LE(16),
    uid: b.readUInt32LE(20),
    gid: b.readUInt32LE(24),
    rdev: encodeDev(b.readUInt32LE(128), b.readUInt32LE(132)),
    size: u64(b, 40),
    blocks: u64(b, 48),
    blksize: b.readUInt32LE(4),
    atimeSec: s64(b, 64),
    atimeNsec: b.readUInt32LE(72),
    ctimeSec: s64(b, 96),
    ctimeNsec: b.readUInt32LE(104),
    mtimeSec: s64(b, 112),
    mtimeNsec: b.readUInt32LE(120),
  };
}

export function fstatvfs(fd: number): StatVfs {
  const b = statvfsBuf;
  rawFstatvfs(fd, b);
  return {
    bsize: u64(b, 0),
    frsize: u64(b, 8),
    blocks: u64(b, 16),
    bfree: u64(b, 24),
    bavail: u64(b, 32),
    files: u64(b, 40),
    ffree: u64(b, 48),
    namemax: u64(b, 80),
  };
}

/** A timestamp for utimensat: seconds and nanoseconds, or UTIME_NOW / UTIME_OMIT in `nsec`. */
export interface TimeSpec {
  sec: number;
  nsec: number;
}

export function utimensat(dirfd: number, path: PathArg | null, atime: TimeSpec, mtime: TimeSpec, flags: number): void {
  const b = timesBuf;
  b.writeBigInt64LE(BigInt(Math.trunc(atime.sec)), 0);
  b.writeBigInt64LE(BigInt(atime.nsec), 8);
  b.writeBigInt64LE(BigInt(Math.trunc(mtime.sec)), 16);
  b.writeBigInt64LE(BigInt(mtime.nsec), 24);
  rawUtimensat(dirfd, path, b, flags);
}

/** lseek; offsets are bigint so directory cookies (63-bit hashes on ext4) stay exact. */
export function lseek(fd: number, offset: bigint, whence: number): bigint {
  return BigInt(rawLseek(fd, offset, whence));
}

/** The effective uid of the process: only root may switch fs credentials. */
export function geteuid(): number {
  return rawGeteuid();
}

/**
 * Sets this thread's fs uid/gid (the ids new files are owned by and permissions
 * are checked against). Returns the previous values.
 */
export function setfsuid(uid: number): number {
  return rawSetfsuid(uid);
}
export function setfsgid(gid: number): number {
  return rawSetfsgid(gid);
}

/**
 * close(2) for fds being dropped: Linux releases the descriptor even when close
 * reports an error (EINTR, EIO from a network file system), so there is nothing
 * to retry and nothing the caller could do.
 */
export function closeQuietly(fd: number): void {
  try {
    close(fd);
  } catch {
    // Already released; see above.
  }
}
