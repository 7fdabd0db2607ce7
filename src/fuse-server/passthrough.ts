/**
 * The passthrough file system: serves a host directory to the guest. Every
 * inode is reached through its own O_PATH fd (lookups are openat relative to
 * the parent's fd with O_NOFOLLOW), and data is reached by reopening that fd
 * through /proc/self/fd, as virtiofsd does; host paths are never rebuilt from
 * guest names. `..` looked up at the root answers the root, so the guest
 * cannot climb out of the shared directory by name.
 */
import * as nodefs from 'node:fs';
import {
  AT_EMPTY_PATH,
  AT_FDCWD,
  AT_REMOVEDIR,
  AT_SYMLINK_FOLLOW,
  AT_SYMLINK_NOFOLLOW,
  O_ACCMODE,
  O_APPEND,
  O_CLOEXEC,
  O_CREAT,
  O_DIRECTORY,
  O_DSYNC,
  O_EXCL,
  O_LARGEFILE,
  O_NOATIME,
  O_NOFOLLOW,
  O_PATH,
  O_RDONLY,
  O_SYNC,
  O_TRUNC,
  O_WRONLY,
  S_IFDIR,
  S_IFMT,
  S_IFREG,
  SEEK_SET,
  UTIME_NOW,
  UTIME_OMIT,
  closeQuietly,
  fchmodat,
  fchownat,
  fstatvfs,
  getdents64,
  linkat,
  lseek,
  mkdirat,
  mknodat,
  openat,
  readlinkat,
  renameat2,
  statx,
  symlinkat,
  unlinkat,
  utimensat,
  type Stat,
  type StatVfs,
  type TimeSpec,
} from '../sys/fs';
import { close, dup } from '../sys/libc';
import type { Reader, Writer } from './chain-io';
import { cachePolicy, type CacheMode, type CachePolicy } from './cache-policy';
import { Credentials } from './credentials';
import { Errno, errnoOf, fail } from './errors';
import { type AttrReply, type Context, type DirSink, type Entry, FileSystem, type Opened, type SetattrArgs } from './filesystem';
import { HandleTable } from './handle-table';
import { type Inode, InodeTable } from './inode-table';
import { isDot, isDotDot } from './names';
import {
  FUSE_ASYNC_DIO,
  FUSE_ASYNC_READ,
  FUSE_ATOMIC_O_TRUNC,
  FUSE_AUTO_INVAL_DATA,
  FUSE_BIG_WRITES,
  FUSE_DO_READDIRPLUS,
  FUSE_EXPORT_SUPPORT,
  FUSE_PARALLEL_DIROPS,
  FUSE_READDIRPLUS_AUTO,
} from './protocol';

export interface PassthroughOptions {
  sharedDir: string;
  cache: CacheMode;
}

/** The empty path that, with AT_EMPTY_PATH, makes an *at call act on the dirfd itself. */
const EMPTY = Buffer.from([0]);
const PATH_MAX = 4096;
/** getdents64 batch: enough for a full READDIR page of long names. */
const DIRENT_BUFFER_SIZE = 32 * 1024;
/** struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]; } */
const DIRENT64_NAME_OFFSET = 19;

const R_OK = 4;
const W_OK = 2;
const X_OK = 1;

/**
 * Open flags passed through to the host. Everything else is dropped: creation
 * flags are the op's business, O_NOFOLLOW would break the /proc reopen,
 * O_DIRECT would impose host alignment rules on guest buffers, O_PATH and
 * O_DIRECTORY are ours to choose.
 */
const PASSED_OPEN_FLAGS = O_ACCMODE | O_APPEND | O_TRUNC | O_DSYNC | O_SYNC | O_NOATIME | O_LARGEFILE;

export class PassthroughFs extends FileSystem {
  private readonly policy: CachePolicy;
  private readonly credentials = new Credentials();
  /** /proc/self/fd, through which an inode's O_PATH fd is reopened for I/O. */
  private readonly procSelfFd: number;
  private readonly inodes: InodeTable;
  private readonly handles = new HandleTable();
  private readonly dirents = Buffer.alloc(DIRENT_BUFFER_SIZE);
  private readonly linkTarget = Buffer.alloc(PATH_MAX);

  constructor(options: PassthroughOptions) {
    super();
    this.policy = cachePolicy(options.cache);
    // The guest kernel has applied the guest's umask to every mode it sends; the host's must not
    // apply a second time (virtiofsd clears it at start-up too).
    process.umask(0);
    this.procSelfFd = openat(AT_FDCWD, '/proc/self/fd', O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
    let rootFd = -1;
    try {
      rootFd = openat(AT_FDCWD, options.sharedDir, O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
      this.inodes = new InodeTable(rootFd, this.stat(rootFd));
    } catch (err) {
      if (rootFd >= 0) closeQuietly(rootFd);
      closeQuietly(this.procSelfFd);
      throw err;
    }
  }

  /** Inodes currently held (the root included). */
  get inodeCount(): number {
    return this.inodes.size;
  }

  /** Handles currently open. */
  get handleCount(): number {
    return this.handles.size;
  }

  override capabilities(): number {
    return (
      FUSE_ASYNC_READ |
      FUSE_ATOMIC_O_TRUNC |
      FUSE_EXPORT_SUPPORT |
      FUSE_BIG_WRITES |
      FUSE_AUTO_INVAL_DATA |
      FUSE_DO_READDIRPLUS |
      FUSE_READDIRPLUS_AUTO |
      FUSE_ASYNC_DIO |
      FUSE_PARALLEL_DIROPS
    );
  }

  override destroy(): void {
    this.handles.clear();
    this.inodes.clear();
  }

  /** Releases everything, the root and /proc/self/fd included. The object is unusable afterwards. */
  close(): void {
    this.destroy();
    closeQuietly(this.inodes.root.fd);
    closeQuietly(this.procSelfFd);
  }

  /* ---------------- names and attributes ---------------- */

  override lookup(ctx: Context, parent: number, name: Buffer): Entry {
    const dir = this.inodes.get(parent);
    if (isDotDot(name) && dir === this.inodes.root) {
      const root = this.inodes.root;
      root.refcount++;
      return this.entry(root, this.stat(root.fd));
    }
    return this.lookupAt(dir, name);
  }

  override forget(nodeid: number, nlookup: number): void {
    this.inodes.forget(nodeid, nlookup);
  }

  override getattr(ctx: Context, nodeid: number): AttrReply {
    return { stat: this.stat(this.inodes.get(nodeid).fd), timeout: this.policy.timeout };
  }

  override setattr(ctx: Context, nodeid: number, args: SetattrArgs): AttrReply {
    const inode = this.inodes.get(nodeid);
    if (args.mode !== undefined) fchmodat(this.procSelfFd, this.procName(inode), args.mode & 0o7777, 0);
    if (args.uid !== undefined || args.gid !== undefined) {
      // -1 leaves an id unchanged.
      fchownat(inode.fd, EMPTY, args.uid ?? 0xffffffff, args.gid ?? 0xffffffff, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
    }
    if (args.size !== undefined) this.truncate(inode, args.fh, args.size);
    if (args.atime !== undefined || args.mtime !== undefined) {
      utimensat(this.procSelfFd, this.procName(inode), timeSpec(args.atime), timeSpec(args.mtime), 0);
    }
    return this.getattr(ctx, nodeid);
  }

  override readlink(ctx: Context, nodeid: number): Buffer {
    const n = readlinkat(this.inodes.get(nodeid).fd, EMPTY, this.linkTarget, this.linkTarget.length);
    return Buffer.from(this.linkTarget.subarray(0, n));
  }

  override access(ctx: Context, nodeid: number, mask: number): void {
    const st = this.stat(this.inodes.get(nodeid).fd);
    if (mask === 0) return; // F_OK: it exists.
    // The daemon runs privileged, so the check is done by hand against the caller's ids.
    if (ctx.uid === 0) {
      const isDir = (st.mode & S_IFMT) === S_IFDIR;
      if (mask & X_OK && !isDir && (st.mode & 0o111) === 0) fail(Errno.EACCES);
      return;
    }
    const bits = ctx.uid === st.uid ? st.mode >> 6 : ctx.gid === st.gid ? st.mode >> 3 : st.mode;
    if ((bits & (R_OK | W_OK | X_OK) & mask) !== mask) fail(Errno.EACCES);
  }

  override statfs(ctx: Context, nodeid: number): StatVfs {
    return fstatvfs(this.inodes.get(nodeid).fd);
  }

  /* ---------------- creating and removing names ---------------- */

  override mkdir(ctx: Context, parent: number, name: Buffer, mode: number): Entry {
    const dir = this.inodes.get(parent);
    this.credentials.asCaller(ctx, () => mkdirat(dir.fd, name, mode));
    return this.lookupAt(dir, name);
  }

  override mknod(ctx: Context, parent: number, name: Buffer, mode: number, rdev: number): Entry {
    const dir = this.inodes.get(parent);
    // fuse_mknod_in.rdev is the kernel's 32-bit device encoding, which glibc's makedev()
    // produces bit for bit for every 12-bit major / 20-bit minor.
    this.credentials.asCaller(ctx, () => mknodat(dir.fd, name, mode, rdev));
    return this.lookupAt(dir, name);
  }

  override symlink(ctx: Context, target: Buffer, parent: number, name: Buffer): Entry {
    const dir = this.inodes.get(parent);
    this.credentials.asCaller(ctx, () => symlinkat(target, dir.fd, name));
    return this.lookupAt(dir, name);
  }

  override link(ctx: Context, nodeid: number, newParent: number, newName: Buffer): Entry {
    const inode = this.inodes.get(nodeid);
    const dir = this.inodes.get(newParent);
    // Through /proc rather than AT_EMPTY_PATH, which would need CAP_DAC_READ_SEARCH.
    linkat(this.procSelfFd, this.procName(inode), dir.fd, newName, AT_SYMLINK_FOLLOW);
    return this.lookupAt(dir, newName);
  }

  override unlink(ctx: Context, parent: number, name: Buffer): void {
    unlinkat(this.inodes.get(parent).fd, name, 0);
  }

  override rmdir(ctx: Context, parent: number, name: Buffer): void {
    unlinkat(this.inodes.get(parent).fd, name, AT_REMOVEDIR);
  }

  override rename(ctx: Context, parent: number, name: Buffer, newParent: number, newName: Buffer, flags: number): void {
    renameat2(this.inodes.get(parent).fd, name, this.inodes.get(newParent).fd, newName, flags);
  }

  /* ---------------- files ---------------- */

  override open(ctx: Context, nodeid: number, flags: number): Opened {
    const inode = this.inodes.get(nodeid);
    this.requireRegular(inode);
    const fd = openat(this.procSelfFd, this.procName(inode), (flags & PASSED_OPEN_FLAGS) | O_CLOEXEC, 0);
    return { fh: this.handles.insert(fd, nodeid, 'file').fh, openFlags: this.policy.fileOpenFlags };
  }

  override create(ctx: Context, parent: number, name: Buffer, mode: number, flags: number): [Entry, Opened] {
    const dir = this.inodes.get(parent);
    const openFlags = (flags & (PASSED_OPEN_FLAGS | O_EXCL)) | O_CREAT | O_NOFOLLOW | O_CLOEXEC;
    const fd = this.credentials.asCaller(ctx, () => openat(dir.fd, name, openFlags, mode & 0o7777));
    let entry: Entry;
    try {
      // The inode fd comes from the open file itself, so a rename racing the create cannot swap it.
      entry = this.adopt(openat(this.procSelfFd, String(fd), O_PATH | O_CLOEXEC, 0));
    } catch (err) {
      closeQuietly(fd);
      throw err;
    }
    const fh = this.handles.insert(fd, entry.nodeid, 'file').fh;
    return [entry, { fh, openFlags: this.policy.fileOpenFlags }];
  }

  override read(ctx: Context, nodeid: number, fh: number, into: Writer, size: number, offset: number): number {
    return into.writeFromFile(this.handles.get(fh, nodeid, 'file').fd, size, offset);
  }

  override write(ctx: Context, nodeid: number, fh: number, from: Reader, size: number, offset: number): number {
    return from.readToFile(this.handles.get(fh, nodeid, 'file').fd, size, offset);
  }

  override flush(ctx: Context, nodeid: number, fh: number): void {
    // Closing a duplicate runs the file system's close-time work (NFS write-back, lock release)
    // while the guest's handle stays open.
    close(dup(this.handles.get(fh, nodeid, 'file').fd));
  }

  override fsync(ctx: Context, nodeid: number, fh: number, datasync: boolean): void {
    syncFd(this.handles.get(fh, nodeid, 'file').fd, datasync);
  }

  override release(ctx: Context, nodeid: number, fh: number): void {
    this.handles.release(fh, nodeid, 'file');
  }

  /* ---------------- directories ---------------- */

  override opendir(ctx: Context, nodeid: number): Opened {
    const inode = this.inodes.get(nodeid);
    if (inode.type !== S_IFDIR) fail(Errno.ENOTDIR);
    const fd = openat(this.procSelfFd, this.procName(inode), O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    return { fh: this.handles.insert(fd, nodeid, 'dir').fh, openFlags: this.policy.dirOpenFlags };
  }

  override readdir(ctx: Context, nodeid: number, fh: number, offset: bigint, sink: DirSink): void {
    const dir = this.inodes.get(nodeid);
    const fd = this.handles.get(fh, nodeid, 'dir').fd;
    const buf = this.dirents;
    let added = 0;
    // The cookie is an off_t the host gave us earlier; it went to the guest as a u64.
    lseek(fd, BigInt.asIntN(64, offset), SEEK_SET);
    for (;;) {
      const n = getdents64(fd, buf, buf.length);
      if (n === 0) return;
      for (let pos = 0; pos < n; ) {
        const reclen = buf.readUInt16LE(pos + 16);
        const nameStart = pos + DIRENT64_NAME_OFFSET;
        const nameEnd = buf.indexOf(0, nameStart);
        const entry = {
          ino: buf.readBigUInt64LE(pos),
          offset: buf.readBigInt64LE(pos + 8),
          type: buf[pos + 18],
          name: buf.subarray(nameStart, nameEnd),
        };
        pos += reclen;
        let looked: Entry | null = null;
        if (sink.plus) {
          const name = buf.subarray(nameStart, nameEnd + 1);
          if (!isDot(name) && !isDotDot(name)) {
            try {
              looked = this.lookupAt(dir, name);
            } catch (err) {
              // Removed since getdents: leave it out. Any other failure ends the listing here,
              // or fails it when nothing was listed yet.
              if (errnoOf(err) === Errno.ENOENT) continue;
              if (added > 0) return;
              throw err;
            }
          }
        }
        if (!sink.add(entry, looked)) {
          if (looked) this.inodes.forget(looked.nodeid, 1);
          return;
        }
        added++;
      }
    }
  }

  override releasedir(ctx: Context, nodeid: number, fh: number): void {
    this.handles.release(fh, nodeid, 'dir');
  }

  override fsyncdir(ctx: Context, nodeid: number, fh: number, datasync: boolean): void {
    syncFd(this.handles.get(fh, nodeid, 'dir').fd, datasync);
  }

  /* ---------------- helpers ---------------- */

  private stat(fd: number): Stat {
    return statx(fd, EMPTY, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
  }

  private entry(inode: Inode, stat: Stat): Entry {
    const t = this.policy.timeout;
    return { nodeid: inode.nodeid, generation: 0, stat, entryTimeout: t, attrTimeout: t };
  }

  /** Looks `name` (one component) up in `dir` and counts the lookup. */
  private lookupAt(dir: Inode, name: Buffer): Entry {
    return this.adopt(openat(dir.fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC, 0));
  }

  /** Registers the O_PATH `fd` (taking ownership) as a looked-up inode. */
  private adopt(fd: number): Entry {
    let stat: Stat;
    try {
      stat = this.stat(fd);
    } catch (err) {
      closeQuietly(fd);
      throw err;
    }
    return this.entry(this.inodes.adopt(fd, stat), stat);
  }

  /** The inode's name under /proc/self/fd. */
  private procName(inode: Inode): string {
    return String(inode.fd);
  }

  /**
   * Only regular files are opened for I/O: opening a FIFO would block the whole
   * daemon and opening a device node would hand the guest a host device.
   */
  private requireRegular(inode: Inode): void {
    if (inode.type === S_IFDIR) fail(Errno.EISDIR);
    if (inode.type !== S_IFREG) fail(Errno.EINVAL);
  }

  private truncate(inode: Inode, fh: number | undefined, size: number): void {
    if (fh !== undefined) {
      nodefs.ftruncateSync(this.handles.get(fh, inode.nodeid, 'file').fd, size);
      return;
    }
    this.requireRegular(inode);
    const fd = openat(this.procSelfFd, this.procName(inode), O_WRONLY | O_CLOEXEC, 0);
    try {
      nodefs.ftruncateSync(fd, size);
    } finally {
      closeQuietly(fd);
    }
  }
}

function timeSpec(t: TimeSpec | 'now' | undefined): TimeSpec {
  if (t === undefined) return { sec: 0, nsec: UTIME_OMIT };
  if (t === 'now') return { sec: 0, nsec: UTIME_NOW };
  return t;
}

function syncFd(fd: number, datasync: boolean): void {
  if (datasync) nodefs.fdatasyncSync(fd);
  else nodefs.fsyncSync(fd);
}
