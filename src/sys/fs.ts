import { type ValueOfLayout, pad, struct } from '../layout';
import { Errno, SysError } from './errno';
import { close, libc, syscall } from './libc';
import { addon } from './native';
export { O_NONBLOCK } from './libc';

/**
 * File-system syscalls Node lacks: the *at family relative to directory fds,
 * statx, getdents64, xattrs, OFD locks, file handles and the per-thread fs
 * credentials and capabilities a file server juggles. Paths are `string`
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
export const O_TMPFILE = 0o20000000 | O_DIRECTORY;

export const S_IFMT = 0o170000;
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;
export const S_ISUID = 0o4000;
export const S_ISGID = 0o2000;
export const S_IXGRP = 0o010;

/** access(2) modes. */
export const R_OK = 4;
export const W_OK = 2;
export const X_OK = 1;

export const SEEK_SET = 0;
export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;

export const RENAME_NOREPLACE = 1 << 0;
export const RENAME_EXCHANGE = 1 << 1;
export const RENAME_WHITEOUT = 1 << 2;

/** utimensat's special tv_nsec values. */
export const UTIME_NOW = (1 << 30) - 1;
export const UTIME_OMIT = (1 << 30) - 2;

export const STATX_INO = 0x100;
export const STATX_BASIC_STATS = 0x7ff;
export const STATX_BTIME = 0x800;
export const STATX_MNT_ID = 0x1000;
/** statx flags choosing how hard a network file system must sync the answer. */
export const AT_STATX_SYNC_TYPE = 0x6000;

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
const rawUtimensat = syscall<(dirfd: number, path: PathArg, times: Buffer, flags: number) => number>(
  'utimensat',
  'int utimensat(int, const char *, const uint8_t *, int)',
);
// glibc's utimensat refuses a NULL path (EINVAL); futimens is its way to set an fd's times.
const rawFutimens = syscall<(fd: number, times: Buffer) => number>('futimens', 'int futimens(int, const uint8_t *)');
const rawGetdents64 = syscall<(fd: number, buf: Buffer, size: number) => number>(
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
export const fchdir = syscall<(fd: number) => number>('fchdir', 'int fchdir(int)');
export const fchmod = syscall<(fd: number, mode: number) => number>('fchmod', 'int fchmod(int, uint32_t)');
export const syncfs = syscall<(fd: number) => number>('syncfs', 'int syncfs(int)');
export const flock = syscall<(fd: number, operation: number) => number>('flock', 'int flock(int, int)');
export const fallocate = syscall<(fd: number, mode: number, offset: number, len: number) => number>(
  'fallocate',
  'int fallocate(int, int, int64_t, int64_t)',
);
const rawCopyFileRange = syscall<(fdIn: number, offIn: Buffer, fdOut: number, offOut: Buffer, len: number, flags: number) => number>(
  'copy_file_range',
  'intptr_t copy_file_range(int, _Inout_ int64_t *, int, _Inout_ int64_t *, size_t, unsigned int)',
);
const rawFcntlLock = syscall<(fd: number, cmd: number, lock: Buffer) => number>('fcntl', 'int fcntl(int, int, _Inout_ uint8_t *)');

// setfsuid/setfsgid cannot fail in the -1/errno way: they return the previous id.
const rawSetfsuid = libc.func('int setfsuid(uint32_t)') as unknown as (uid: number) => number;
const rawSetfsgid = libc.func('int setfsgid(uint32_t)') as unknown as (gid: number) => number;
const rawGeteuid = libc.func('uint32_t geteuid()') as unknown as () => number;

/**
 * struct statx (linux/stat.h), with each struct statx_timestamp { s64 tv_sec;
 * u32 tv_nsec; s32 __reserved; } spelled out in place so a decode is one flat
 * object. The kernel writes all 256 bytes (zeros where it filled nothing).
 */
export const statx_struct = struct('statx', {
  /** STATX_* bits of the fields the kernel filled in. */
  mask: 'u32',
  blksize: 'u32',
  /** STATX_ATTR_* flags. */
  attributes: 'u64n',
  nlink: 'u32',
  uid: 'u32',
  gid: 'u32',
  mode: 'u16',
  spare0: pad(2),
  /** Exact: inode numbers may use all 64 bits (e.g. overlayfs xino). */
  ino: 'u64',
  size: 'u64n',
  blocks: 'u64n',
  /** Which STATX_ATTR_* flags the file system supports. */
  attributesMask: 'u64n',
  atimeSec: 'i64n',
  atimeNsec: 'u32',
  atimeReserved: pad(4),
  btimeSec: 'i64n',
  btimeNsec: 'u32',
  btimeReserved: pad(4),
  ctimeSec: 'i64n',
  ctimeNsec: 'u32',
  ctimeReserved: pad(4),
  mtimeSec: 'i64n',
  mtimeNsec: 'u32',
  mtimeReserved: pad(4),
  /** The device a special file is. */
  rdevMajor: 'u32',
  rdevMinor: 'u32',
  /** The device the file lives on. */
  devMajor: 'u32',
  devMinor: 'u32',
  /** The mount the file was reached through (0 if the kernel predates STATX_MNT_ID). */
  mntId: 'u64n',
  /** stx_dio_mem_align, stx_dio_offset_align: not needed here, so not decoded. */
  dioAlign: pad(8),
  spare3: pad(8 * 12),
});
export type Stat = ValueOfLayout<typeof statx_struct>;

/** struct statvfs (64-bit Linux layout, identical on x86_64 and aarch64). */
export const statvfs_struct = struct('statvfs', {
  bsize: 'u64n',
  frsize: 'u64n',
  blocks: 'u64n',
  bfree: 'u64n',
  bavail: 'u64n',
  files: 'u64n',
  ffree: 'u64n',
  favail: 'u64n',
  fsid: 'u64n',
  flag: 'u64n',
  namemax: 'u64n',
  spare: pad(4 * 6),
});
export type StatVfs = ValueOfLayout<typeof statvfs_struct>;

// One scratch buffer per call kind: every call decodes its result before returning.
const statxBuf = Buffer.alloc(statx_struct.size);
const statvfsBuf = Buffer.alloc(statvfs_struct.size);
const timesBuf = Buffer.alloc(32);

function u64(buf: Buffer, off: number): number {
  return buf.readUInt32LE(off + 4) * 0x1_0000_0000 + buf.readUInt32LE(off);
}

/** The kernel's new_encode_dev(): the 32-bit device number fuse_attr.rdev carries. */
export function newEncodeDev(major: number, minor: number): number {
  return ((minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)) >>> 0;
}

/**
 * statx(dirfd, path, flags) decoded; use AT_EMPTY_PATH with "" to stat the fd
 * itself (O_PATH fds too). Asks for the basic stats, the birth time and the
 * mount id unless told otherwise; `mask` says which the kernel filled in.
 */
export function statx(dirfd: number, path: PathArg, flags: number, want = STATX_BASIC_STATS | STATX_BTIME | STATX_MNT_ID): Stat {
  rawStatx(dirfd, path, flags, want, statxBuf);
  return statx_struct.decode(statxBuf, 0);
}

export function fstatvfs(fd: number): StatVfs {
  rawFstatvfs(fd, statvfsBuf);
  return statvfs_struct.decode(statvfsBuf, 0);
}

/** struct linux_dirent64's fixed part; d_name (NUL-terminated) follows it, the record is d_reclen bytes. */
export const linux_dirent64 = struct('linux_dirent64', { ino: 'u64', offset: 'i64', reclen: 'u16', type: 'u8' }, { flexibleTail: true });

/** One directory entry getdents64 returned. */
export interface Dirent64 {
  ino: bigint;
  /** The off_t cookie that continues the listing after this entry. */
  offset: bigint;
  /** DT_* type. */
  type: number;
  /** The name without its NUL: a view of the batch buffer, valid until the iterator moves on. */
  name: Buffer;
  /** The same bytes with the NUL, as the *at calls take them. */
  cname: Buffer;
}

/**
 * The entries of directory `fd` from its current position on, read with
 * getdents64 in batches of `buf.length` bytes; ends at the end of the
 * directory. Stopping early leaves the position after the last batch read:
 * lseek to an entry's `offset` to continue from it.
 */
export function* getdents(fd: number, buf: Buffer): Generator<Dirent64, void, undefined> {
  for (;;) {
    const n = rawGetdents64(fd, buf, buf.length);
    if (n === 0) return;
    for (let pos = 0; pos < n;) {
      const d = linux_dirent64.decode(buf, pos);
      const nameStart = pos + linux_dirent64.size;
      const nameEnd = buf.indexOf(0, nameStart);
      pos += d.reclen;
      yield {
        ino: d.ino,
        offset: d.offset,
        type: d.type,
        name: buf.subarray(nameStart, nameEnd),
        cname: buf.subarray(nameStart, nameEnd + 1),
      };
    }
  }
}

/** A timestamp for utimensat: seconds and nanoseconds, or UTIME_NOW / UTIME_OMIT in `nsec`. */
export interface TimeSpec {
  sec: number;
  nsec: number;
}

function encodeTimes(atime: TimeSpec, mtime: TimeSpec): Buffer {
  const b = timesBuf;
  b.writeBigInt64LE(BigInt(Math.trunc(atime.sec)), 0);
  b.writeBigInt64LE(BigInt(atime.nsec), 8);
  b.writeBigInt64LE(BigInt(Math.trunc(mtime.sec)), 16);
  b.writeBigInt64LE(BigInt(mtime.nsec), 24);
  return b;
}

export function utimensat(dirfd: number, path: PathArg, atime: TimeSpec, mtime: TimeSpec, flags: number): void {
  rawUtimensat(dirfd, path, encodeTimes(atime, mtime), flags);
}

/** Sets the times of an open (non-O_PATH) fd. */
export function futimens(fd: number, atime: TimeSpec, mtime: TimeSpec): void {
  rawFutimens(fd, encodeTimes(atime, mtime));
}

/** copy_file_range(2) between explicit offsets; returns the bytes copied (0 at end of file). */
export function copyFileRange(fdIn: number, offIn: number, fdOut: number, offOut: number, len: number, flags: number): number {
  const a = Buffer.alloc(8);
  const b = Buffer.alloc(8);
  a.writeBigInt64LE(BigInt(offIn));
  b.writeBigInt64LE(BigInt(offOut));
  return rawCopyFileRange(fdIn, a, fdOut, b, len, flags);
}

/** The addon's operation numbers (native/sys_addon.c, "blocking file calls on libuv's thread pool"). */
const IO_COPY_FILE_RANGE = 0;
const IO_FALLOCATE = 1;
const IO_SYNCFS = 2;
const IO_STATX = 3;
const IO_OPENAT = 4;

function onThreadPool(
  name: string,
  op: number,
  args: [number, number, number, number, number, number],
  ...buffers: Buffer[]
): Promise<number> {
  return new Promise((resolve, reject) =>
    addon.asyncIo(op, ...args, (errno, result) => (errno ? reject(new SysError(name, errno)) : resolve(result)), ...buffers),
  );
}

/** statx() on libuv's pool (a slow file system's stat must not stop the loop); `dirfd` stays open until it settles. */
export function statxAsync(
  dirfd: number,
  path: Buffer,
  flags: number,
  want = STATX_BASIC_STATS | STATX_BTIME | STATX_MNT_ID,
): Promise<Stat> {
  const out = Buffer.allocUnsafe(statx_struct.size);
  return onThreadPool('statx', IO_STATX, [dirfd, flags, want, 0, 0, 0], path, out).then(() => statx_struct.decode(out, 0));
}

/** openat() on libuv's pool (a lookup on a slow file system); returns the new fd; `dirfd` stays open until it settles. */
export function openatAsync(dirfd: number, path: Buffer, flags: number, mode: number): Promise<number> {
  return onThreadPool('openat', IO_OPENAT, [dirfd, flags, mode, 0, 0, 0], path);
}

/** linux/fs.h: fail with EAGAIN rather than wait (for the disk, a lock, a slow file system). */
export const RWF_NOWAIT = 0x00000008;

/**
 * preadv2 with RWF_NOWAIT: reads what the page cache holds now, never waiting
 * for the disk. Returns the bytes read (0 at end of file), or WOULD_BLOCK when
 * nothing could be read without waiting, or NOWAIT_UNSUPPORTED when the file
 * system does not take the flag (the caller then reads the ordinary way).
 * Throws SysError for any other failure.
 */
export function preadvNowait(fd: number, buffers: Buffer[], position: number): number {
  const n = addon.preadv2(fd, buffers, position, RWF_NOWAIT);
  if (n >= 0) return n;
  if (n === -Errno.EAGAIN) return WOULD_BLOCK;
  if (n === -Errno.EOPNOTSUPP) return NOWAIT_UNSUPPORTED;
  throw new SysError('preadv2', -n);
}
export const WOULD_BLOCK = -1;
export const NOWAIT_UNSUPPORTED = -2;

/**
 * The calls that may wait for a disk or a slow file system, on libuv's thread
 * pool: the event loop goes on meanwhile. The fds must stay open until the
 * promise settles (pass private dups).
 */
export function copyFileRangeAsync(
  fdIn: number,
  offIn: number,
  fdOut: number,
  offOut: number,
  len: number,
  flags: number,
): Promise<number> {
  return onThreadPool('copy_file_range', IO_COPY_FILE_RANGE, [fdIn, offIn, fdOut, offOut, len, flags]);
}
export function fallocateAsync(fd: number, mode: number, offset: number, len: number): Promise<void> {
  return onThreadPool('fallocate', IO_FALLOCATE, [fd, mode, offset, len, 0, 0]).then(() => undefined);
}
export function syncfsAsync(fd: number): Promise<void> {
  return onThreadPool('syncfs', IO_SYNCFS, [fd, 0, 0, 0, 0, 0]).then(() => undefined);
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

/* ---------------- record locks ---------------- */

export const F_RDLCK = 0;
export const F_WRLCK = 1;
export const F_UNLCK = 2;
/** Open-file-description locks: owned by the open file, not the process (Linux 3.15). */
export const F_OFD_GETLK = 36;
export const F_OFD_SETLK = 37;
export const F_OFD_SETLKW = 38;

export const LOCK_SH = 1;
export const LOCK_EX = 2;
export const LOCK_NB = 4;
export const LOCK_UN = 8;

/** struct flock with l_whence SEEK_SET; `len` 0 means "to the end of the file", as in fcntl(2). */
export interface FileLock {
  type: number;
  start: bigint;
  len: bigint;
}

/** struct flock on x86_64 and aarch64. */
export const flock_struct = struct('flock', {
  type: 'i16',
  whence: 'i16',
  padding0: pad(4),
  start: 'i64',
  len: 'i64',
  pid: 'i32',
  padding1: pad(4),
});
const flockBuf = Buffer.alloc(flock_struct.size);

/**
 * fcntl(fd, F_OFD_GETLK | F_OFD_SETLK, lock). GETLK returns the first
 * conflicting lock (type F_UNLCK when there is none); SETLK returns `lock`.
 */
export function fcntlLock(fd: number, cmd: number, lock: FileLock): FileLock {
  // OFD locks insist on l_pid 0 (left out, so zero).
  flock_struct.encode({ type: lock.type, whence: SEEK_SET, start: lock.start, len: lock.len }, flockBuf, 0);
  rawFcntlLock(fd, cmd, flockBuf);
  const { type, start, len } = flock_struct.decode(flockBuf, 0);
  return { type, start, len };
}

/* ---------------- extended attributes ---------------- */

// Path calls, because the f*xattr calls refuse O_PATH fds: callers reach an inode through its
// /proc/self/fd/N magic link, which resolves to the inode itself, symlinks included.
export const getxattr = syscall<(path: PathArg, name: PathArg, value: Buffer | null, size: number) => number>(
  'getxattr',
  'intptr_t getxattr(const char *, const char *, _Out_ uint8_t *, size_t)',
);
export const listxattr = syscall<(path: PathArg, list: Buffer | null, size: number) => number>(
  'listxattr',
  'intptr_t listxattr(const char *, _Out_ uint8_t *, size_t)',
);
export const setxattr = syscall<(path: PathArg, name: PathArg, value: Buffer, size: number, flags: number) => number>(
  'setxattr',
  'int setxattr(const char *, const char *, const uint8_t *, size_t, int)',
);
export const removexattr = syscall<(path: PathArg, name: PathArg) => number>('removexattr', 'int removexattr(const char *, const char *)');

/* ---------------- file handles ---------------- */

/** MAX_HANDLE_SZ: the largest f_handle the kernel produces. */
const MAX_HANDLE_SZ = 128;
const FILE_HANDLE_HEADER = 8;

export interface FileHandle {
  /** struct file_handle as open_by_handle_at takes it: handle_bytes, handle_type, f_handle. */
  readonly bytes: Buffer;
  /** The (non-unique) mount id name_to_handle_at reports: which mount fd opens it. */
  readonly mountId: number;
}

const rawNameToHandleAt = syscall<(dirfd: number, path: PathArg, handle: Buffer, mountId: Int32Array, flags: number) => number>(
  'name_to_handle_at',
  'int name_to_handle_at(int, const char *, _Inout_ uint8_t *, _Out_ int32_t *, int)',
);
export const openByHandleAt = syscall<(mountFd: number, handle: Buffer, flags: number) => number>(
  'open_by_handle_at',
  'int open_by_handle_at(int, const uint8_t *, int)',
);

/** name_to_handle_at(dirfd, path, flags): a handle that names the inode for as long as it exists. */
export function nameToHandleAt(dirfd: number, path: PathArg, flags: number): FileHandle {
  const buf = Buffer.alloc(FILE_HANDLE_HEADER + MAX_HANDLE_SZ);
  buf.writeUInt32LE(MAX_HANDLE_SZ, 0);
  const mountId = new Int32Array(1);
  rawNameToHandleAt(dirfd, path, buf, mountId, flags);
  return { bytes: buf.subarray(0, FILE_HANDLE_HEADER + buf.readUInt32LE(0)), mountId: mountId[0] };
}

/* ---------------- capabilities ---------------- */

export const CAP_FSETID = 4;
const LINUX_CAPABILITY_VERSION_3 = 0x20080522;
const rawCapget = syscall<(header: Buffer, data: Buffer) => number>('capget', 'int capget(_Inout_ uint8_t *, _Out_ uint8_t *)');
const rawCapset = syscall<(header: Buffer, data: Buffer) => number>('capset', 'int capset(_Inout_ uint8_t *, const uint8_t *)');
const capHeader = Buffer.alloc(8);
const capData = Buffer.alloc(24);

/**
 * Runs `fn` with capability `cap` dropped from this thread's effective set
 * (and restores it): the kernel then treats the calling syscalls as an
 * unprivileged caller's, e.g. a write by a process without CAP_FSETID clears
 * the file's set-id bits. Without the capability there is nothing to drop.
 */
export function withoutEffectiveCapability<T>(cap: number, fn: () => T): T {
  capHeader.writeUInt32LE(LINUX_CAPABILITY_VERSION_3, 0);
  capHeader.writeInt32LE(0, 4);
  rawCapget(capHeader, capData);
  const word = cap >> 5;
  const bit = 1 << (cap & 31);
  const effective = capData.readUInt32LE(word * 12);
  if (!(effective & bit)) return fn();
  const saved = Buffer.from(capData);
  capData.writeUInt32LE((effective & ~bit) >>> 0, word * 12);
  rawCapset(capHeader, capData);
  try {
    return fn();
  } finally {
    rawCapset(capHeader, saved);
  }
}

/* ---------------- resource limits ---------------- */

const RLIMIT_NOFILE = 7;
const rawPrlimit = syscall<(pid: number, resource: number, newLimit: Buffer | null, oldLimit: Buffer | null) => number>(
  'prlimit',
  'int prlimit(int, int, const uint8_t *, _Out_ uint8_t *)',
);

export interface RLimit {
  soft: number;
  hard: number;
}

/** This process's RLIMIT_NOFILE. */
export function getNofileLimit(): RLimit {
  const old = Buffer.alloc(16);
  rawPrlimit(0, RLIMIT_NOFILE, null, old);
  return { soft: u64(old, 0), hard: u64(old, 8) };
}

/** Sets this process's RLIMIT_NOFILE (raising the hard limit needs CAP_SYS_RESOURCE). */
export function setNofileLimit(limit: RLimit): void {
  const b = Buffer.alloc(16);
  b.writeBigUInt64LE(BigInt(limit.soft), 0);
  b.writeBigUInt64LE(BigInt(limit.hard), 8);
  rawPrlimit(0, RLIMIT_NOFILE, b, null);
}
