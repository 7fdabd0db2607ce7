/**
 * Open files of the passthrough file system: opening and creating them (with
 * the guest's flags translated for the host), reading and writing through the
 * handle's fd, and the operations on an open file (truncate, allocate, seek
 * for data, copy ranges, sync).
 */
import * as nodefs from 'node:fs';
import {
  O_ACCMODE,
  O_APPEND,
  O_CLOEXEC,
  O_CREAT,
  O_DIRECT,
  O_DIRECTORY,
  O_DSYNC,
  O_EXCL,
  O_LARGEFILE,
  O_NOATIME,
  O_NOFOLLOW,
  O_NONBLOCK,
  O_PATH,
  O_RDONLY,
  O_RDWR,
  O_SYNC,
  O_TMPFILE,
  O_TRUNC,
  O_WRONLY,
  S_IFDIR,
  S_IFLNK,
  S_IFMT,
  closeQuietly,
  copyFileRangeAsync,
  fallocateAsync,
  lseek,
  openat,
  syncfsAsync,
  unlinkat,
  type Stat,
} from '../sys/fs';
import { close, dup } from '../sys/libc';
import type { Reader, Writer } from './chain-io';
import { Errno, errnoOf, fail } from './errors';
import type { Context, Entry, Opened } from './filesystem';
import { type Handle, HandleTable } from './handle-table';
import type { Inode } from './inode-table';
import { type PassthroughCore, requireRegularType } from './passthrough-core';
import type { LockTable } from './passthrough-locks';
import {
  FUSE_HANDLE_KILLPRIV_V2,
  FUSE_OPEN_KILL_SUIDGID,
  FUSE_RELEASE_FLUSH,
  FUSE_WRITE_CACHE,
  FUSE_WRITE_KILL_SUIDGID,
  FUSE_WRITEBACK_CACHE,
} from './protocol';

const DOT = Buffer.from('.\0');
/**
 * One COPY_FILE_RANGE copies at most this much (on the thread pool): the
 * reply's size is a u32, and one request should not hold a pool thread for
 * long. The guest's copy_file_range(2) caller sees a short copy and
 * continues, as the call allows.
 */
const MAX_COPY_CHUNK = 64 * 1024 * 1024;
/**
 * With --thread-pool-size, READ and WRITE of at least this many bytes run on
 * libuv's thread pool; smaller ones always on the event loop, where a
 * page-cache copy of a few KiB costs less than the hop to a pool thread and
 * back (docs/benchmarks.md measures both).
 */
export const ASYNC_MIN_BYTES = 64 * 1024;
/** CREATE retries when the name it found existing is gone again by the time it is looked up. */
const MAX_CREATE_ATTEMPTS = 3;

/**
 * Open flags passed through to the host. Everything else is dropped: creation
 * flags are the op's business, O_NOFOLLOW would break the /proc reopen,
 * O_PATH and O_DIRECTORY are ours to choose; O_DIRECT, O_NOATIME and O_APPEND
 * are adjusted by hostFlags().
 */
const PASSED_OPEN_FLAGS = O_ACCMODE | O_APPEND | O_TRUNC | O_DSYNC | O_SYNC | O_NOATIME | O_DIRECT | O_LARGEFILE;

export class FileOps {
  /** READ/WRITE on the thread pool (see PassthroughOptions.threadPoolSize). */
  private readonly poolIo: boolean;

  constructor(
    private readonly core: PassthroughCore,
    private readonly locks: LockTable,
  ) {
    this.poolIo = (core.options.threadPoolSize ?? 0) > 0;
  }

  open(nodeid: number, flags: number, openFlags: number): Opened {
    const { core } = this;
    const inode = core.inodes.get(nodeid);
    core.requireRegular(inode);
    const hostFlags = this.hostFlags(flags) | O_CLOEXEC;
    const fd = this.killingPrivs(openFlags, hostFlags, () => core.reopen(inode, hostFlags));
    return { fh: core.handles.insert(fd, nodeid, 'file', hostFlags & O_ACCMODE).fh, openFlags: core.policy.fileOpenFlags };
  }

  /**
   * CREATE. The name is created with O_EXCL, so the fd opened is always a new
   * regular file. When the name exists and the guest did not ask for O_EXCL
   * (a stale negative dentry in the guest, or a host process creating it
   * meanwhile), the existing inode is looked up (O_PATH), checked to be a
   * regular file, and only then opened: a device node or FIFO under the name
   * is never opened by the daemon.
   */
  create(ctx: Context, dir: Inode, name: Buffer, mode: number, flags: number, umask: number, openFlags: number): [Entry, Opened] {
    const { core } = this;
    core.requireInside(dir);
    // The handle's fd and the new inode's O_PATH fd.
    core.reserveFds(2);
    const hostFlags = this.hostFlags(flags) | O_CLOEXEC;
    const exclusive = hostFlags | O_CREAT | O_EXCL | O_NOFOLLOW;
    for (let attempt = 1; ; attempt++) {
      let fd = -1;
      try {
        fd = this.killingPrivs(openFlags, hostFlags, () =>
          core.asCaller(ctx, umask, () => openat(core.fdOf(dir), name, exclusive, mode & 0o7777)),
        );
      } catch (err) {
        if (flags & O_EXCL || errnoOf(err) !== Errno.EEXIST) throw err;
      }
      if (fd >= 0) return this.openedNew(ctx, fd, hostFlags & O_ACCMODE, () => unlinkat(core.fdOf(dir), name, 0));
      try {
        return this.openExisting(ctx, dir, name, hostFlags, openFlags);
      } catch (err) {
        // Removed again between the two: create it after all (a bounded number of times).
        if (errnoOf(err) !== Errno.ENOENT || attempt >= MAX_CREATE_ATTEMPTS) throw err;
      }
    }
  }

  tmpfile(ctx: Context, dir: Inode, mode: number, flags: number, umask: number): [Entry, Opened] {
    const { core } = this;
    core.requireInside(dir);
    core.reserveFds(2);
    const hostFlags = this.hostFlags(flags) | O_TMPFILE | O_CLOEXEC;
    const fd = core.asCaller(ctx, umask, () => openat(core.fdOf(dir), DOT, hostFlags, mode & 0o7777));
    // Nameless: a failed label leaves nothing to remove.
    return this.openedNew(ctx, fd, hostFlags & O_ACCMODE, () => undefined);
  }

  read(nodeid: number, fh: number, into: Writer, size: number, offset: number): number | Promise<number> {
    const fd = this.core.handles.get(fh, nodeid, 'file').fd;
    if (!this.poolIo || size < ASYNC_MIN_BYTES) return into.writeFromFile(fd, size, offset);
    return onPool(fd, (own) => into.writeFromFileAsync(own, size, offset));
  }

  write(
    nodeid: number,
    fh: number,
    from: Reader,
    size: number,
    offset: number,
    writeFlags: number,
    fileFlags: number,
  ): number | Promise<number> {
    const { core } = this;
    const handle = core.handles.get(fh, nodeid, 'file');
    // The handle's access mode was fixed at open; write_in.flags is the guest's word and never widens it.
    if (!HandleTable.writable(handle)) fail(Errno.EBADF);
    // The guest's own appending writes append on the host too (another guest or a host process
    // may have grown the file); write-back of cached pages carries exact offsets (FUSE_WRITE_CACHE).
    const append = fileFlags & O_APPEND && !(writeFlags & FUSE_WRITE_CACHE) && !core.has(FUSE_WRITEBACK_CACHE);
    const fd = append ? this.appendFd(handle) : handle.fd;
    const write = (): number => from.readToFile(fd, size, offset);
    // Dropping CAP_FSETID is per thread: such a write stays on this one.
    if (writeFlags & FUSE_WRITE_KILL_SUIDGID && core.has(FUSE_HANDLE_KILLPRIV_V2)) return core.credentials.withoutFsetid(write);
    if (!this.poolIo || size < ASYNC_MIN_BYTES) return write();
    return onPool(fd, (own) => from.readToFileAsync(own, size, offset));
  }

  flush(nodeid: number, fh: number, lockOwner: bigint): void {
    // Closing a duplicate runs the file system's close-time work (NFS write-back)
    // while the guest's handle stays open.
    close(dup(this.core.handles.get(fh, nodeid, 'file').fd));
    // close(2) drops the process's POSIX locks on the file; FLUSH is the guest's close.
    this.locks.releaseOwner(nodeid, lockOwner);
  }

  /** fsync(2) may wait for the disk: always on the pool. */
  fsync(nodeid: number, fh: number, datasync: boolean, kind: 'file' | 'dir'): Promise<void> {
    return onPool(this.core.handles.get(fh, nodeid, kind).fd, (own) => syncFdAsync(own, datasync));
  }

  release(nodeid: number, fh: number, releaseFlags: number, lockOwner: bigint): void {
    this.core.handles.release(fh, nodeid, 'file');
    if (releaseFlags & FUSE_RELEASE_FLUSH) this.locks.releaseOwner(nodeid, lockOwner);
    this.locks.releaseHandle(fh);
  }

  /** SETATTR's size change: through the open handle if there is one, else a write-only reopen. */
  truncate(inode: Inode, handle: Handle | undefined, size: number, killSuidgid: boolean): void {
    const { core } = this;
    const truncate = (): void => {
      if (handle) return nodefs.ftruncateSync(handle.fd, size);
      core.requireRegular(inode);
      const fd = core.reopen(inode, O_WRONLY | O_CLOEXEC);
      try {
        nodefs.ftruncateSync(fd, size);
      } finally {
        closeQuietly(fd);
      }
    };
    if (killSuidgid && core.has(FUSE_HANDLE_KILLPRIV_V2)) core.credentials.withoutFsetid(truncate);
    else truncate();
  }

  /** fallocate(2) may wait for the disk (zeroing a range, a slow file system): on the pool. */
  fallocate(nodeid: number, fh: number, offset: number, length: number, mode: number): Promise<void> {
    return onPool(this.core.handles.get(fh, nodeid, 'file').fd, (own) => fallocateAsync(own, mode, offset, length));
  }

  lseek(nodeid: number, fh: number, offset: bigint, whence: number): bigint {
    // The handle's file position is never used for I/O (pread/pwrite), so moving it is harmless.
    return lseek(this.core.handles.get(fh, nodeid, 'file').fd, offset, whence);
  }

  copyFileRange(
    nodeidIn: number,
    fhIn: number,
    offIn: number,
    nodeidOut: number,
    fhOut: number,
    offOut: number,
    len: number,
    flags: number,
  ): Promise<number> {
    const from = this.core.handles.get(fhIn, nodeidIn, 'file');
    const to = this.core.handles.get(fhOut, nodeidOut, 'file');
    // Up to 64 MiB of copying: on the pool, over dups of both handles' fds.
    return onPool(from.fd, (ownIn) =>
      onPool(to.fd, (ownOut) => copyFileRangeAsync(ownIn, offIn, ownOut, offOut, Math.min(len, MAX_COPY_CHUNK), flags)),
    );
  }

  syncfs(inode: Inode): Promise<void> {
    // syncfs(2) wants a real fd (not O_PATH). Only directories are opened for it: the guest names
    // the root of the file system it syncs, and for anything else the share's root stands in, so a
    // device node or FIFO is never opened.
    const dir = inode.type === S_IFDIR ? inode : this.core.inodes.root;
    const fd = this.core.reopen(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NONBLOCK);
    // A whole file system's writeback: on the pool, and the fd closed there once it is done.
    const done = syncfsAsync(fd);
    const release = (): void => nodefs.close(fd, () => undefined);
    done.then(release, release);
    return done;
  }

  /** Guest open flags -> host open flags, per the options (see PASSED_OPEN_FLAGS). */
  private hostFlags(flags: number): number {
    const { options } = this.core;
    let f = flags & PASSED_OPEN_FLAGS;
    if (!options.allowDirectIo) f &= ~O_DIRECT;
    if (!options.preserveNoatime) f &= ~O_NOATIME;
    // Appending is done per write (see write()); the handle's fd writes at the offsets given.
    f &= ~O_APPEND;
    // With a write-back cache the guest reads pages around partial writes from write-only files.
    if (this.core.has(FUSE_WRITEBACK_CACHE) && (f & O_ACCMODE) === O_WRONLY) f = (f & ~O_ACCMODE) | O_RDWR;
    return f;
  }

  /** Runs an open that truncates without CAP_FSETID when the guest asks for set-id bits to go. */
  private killingPrivs(openFlags: number, hostFlags: number, open: () => number): number {
    if (openFlags & FUSE_OPEN_KILL_SUIDGID && hostFlags & O_TRUNC && this.core.has(FUSE_HANDLE_KILLPRIV_V2)) {
      return this.core.credentials.withoutFsetid(open);
    }
    return open();
  }

  /** The handle's O_APPEND twin; only for a handle opened for writing (write() checks). */
  private appendFd(handle: Handle): number {
    if (handle.appendFd < 0) {
      this.core.reserveFds();
      this.core.handles.setAppendFd(handle, openat(this.core.procSelfFd, String(handle.fd), O_WRONLY | O_APPEND | O_CLOEXEC, 0));
    }
    return handle.appendFd;
  }

  /**
   * A file just created and opened as `fd` (owned, opened with the access mode
   * `access`): checked to be a regular file, registered as looked up,
   * labelled, and given a handle. `remove` takes the name away again if the
   * label cannot be set.
   */
  private openedNew(ctx: Context, fd: number, access: number, remove: () => void): [Entry, Opened] {
    const { core } = this;
    let entry: Entry;
    try {
      // The inode fd comes from the open file itself, so a rename racing the create cannot swap it.
      const pathFd = openat(core.procSelfFd, String(fd), O_PATH | O_CLOEXEC, 0);
      const stat = this.regularStat(pathFd);
      entry = core.labelled(ctx, core.adopt(pathFd, null, stat), remove);
    } catch (err) {
      closeQuietly(fd);
      throw err;
    }
    const fh = core.handles.insert(fd, entry.nodeid, 'file', access).fh;
    return [entry, { fh, openFlags: core.policy.fileOpenFlags }];
  }

  /**
   * CREATE of a name that exists, without O_EXCL: the inode is looked up
   * (O_PATH | O_NOFOLLOW, which opens nothing), and opened through that fd
   * only if it is a regular file, as the caller (whose permissions an open of
   * an existing file must obey). An existing file keeps its label.
   */
  private openExisting(ctx: Context, dir: Inode, name: Buffer, hostFlags: number, openFlags: number): [Entry, Opened] {
    const { core } = this;
    const pathFd = openat(core.fdOf(dir), name, O_PATH | O_NOFOLLOW | O_CLOEXEC, 0);
    let stat: Stat;
    let fd: number;
    try {
      stat = this.regularStat(pathFd);
      // The same inode, reached through its O_PATH fd: a rename racing us cannot swap it.
      fd = this.killingPrivs(openFlags, hostFlags, () =>
        core.asCaller(ctx, 0, () => openat(core.procSelfFd, String(pathFd), hostFlags, 0)),
      );
    } catch (err) {
      closeQuietly(pathFd);
      throw err;
    }
    let entry: Entry;
    try {
      entry = core.adopt(pathFd, dir, stat);
    } catch (err) {
      closeQuietly(fd);
      throw err;
    }
    const fh = core.handles.insert(fd, entry.nodeid, 'file', hostFlags & O_ACCMODE).fh;
    return [entry, { fh, openFlags: core.policy.fileOpenFlags }];
  }

  /**
   * The stat of the O_PATH `pathFd`, which must be a regular file: ELOOP for a
   * symlink (as open(O_NOFOLLOW) answers), EISDIR for a directory, EINVAL for
   * a device node, FIFO or socket. Does not close `pathFd`.
   */
  private regularStat(pathFd: number): Stat {
    const stat = this.core.hostStat(pathFd);
    const type = stat.mode & S_IFMT;
    if (type === S_IFLNK) fail(Errno.ELOOP);
    requireRegularType(type);
    return stat;
  }
}

function syncFdAsync(fd: number, datasync: boolean): Promise<void> {
  return new Promise((resolve, reject) => (datasync ? nodefs.fdatasync : nodefs.fsync)(fd, (err) => (err ? reject(err) : resolve())));
}

/**
 * Runs `io` on libuv's thread pool over a private duplicate of `fd`, closed
 * once `io` settles. The guest may RELEASE the handle (or the session may be
 * reset) while the pool still works on it: the handle's own fd is then closed
 * at once, and its number may be reused by the next open, but the duplicate
 * keeps this operation on the file it was asked for. A dup shares the open
 * file description, so OFD and flock locks are untouched by its close.
 */
function onPool<T>(fd: number, io: (own: number) => Promise<T>): Promise<T> {
  const own = dup(fd);
  let result: Promise<T>;
  try {
    result = io(own);
  } catch (err) {
    close(own);
    throw err;
  }
  // Closed on the pool as well: the last close of a released file may flush (NFS) and wait.
  const release = (): void => nodefs.close(own, () => undefined);
  result.then(release, release);
  return result;
}
