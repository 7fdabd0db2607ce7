/**
 * The passthrough file system: serves a host directory to the guest. Every
 * inode is reached through its own O_PATH fd (lookups are openat relative to
 * the parent's fd with O_NOFOLLOW) or a file handle, and data is reached by
 * reopening it through /proc/self/fd (or open_by_handle_at), as virtiofsd
 * does; host paths are never rebuilt from guest names. `..` looked up at the
 * root answers the root, and elsewhere only a parent still inside the share
 * (a directory may have been moved out by the host), so the guest cannot climb
 * out of the shared directory by name; names are made, removed or moved only
 * in directories still inside it.
 *
 * Every operation of the FileSystem interface is implemented here, in one
 * class, as in the Rust virtiofsd's passthrough; what it stands on are data
 * structures with their own modules, each given what it needs at
 * construction: the inode and handle tables, file handles, credentials, the
 * share boundary (the climb through `..`), the fd budget, extended
 * attributes (passthrough-xattr), lock descriptions (passthrough-locks) and
 * the DAX window's policy and mappings (passthrough-dax).
 */
import * as nodefs from 'node:fs';
import {
  AT_EMPTY_PATH,
  AT_FDCWD,
  AT_REMOVEDIR,
  AT_STATX_SYNC_TYPE,
  AT_SYMLINK_FOLLOW,
  AT_SYMLINK_NOFOLLOW,
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
  S_IFREG,
  SEEK_SET,
  UTIME_NOW,
  UTIME_OMIT,
  closeQuietly,
  copyFileRangeAsync,
  fallocateAsync,
  fchmod,
  fchmodat,
  fchownat,
  fstatvfs,
  futimens,
  getdents,
  getNofileLimit,
  linkat,
  lseek,
  mkdirat,
  mknodat,
  openat,
  openatAsync,
  readlinkat,
  renameat2,
  statx,
  statxAsync,
  symlinkat,
  syncfsAsync,
  unlinkat,
  utimensat,
  type Stat,
  type StatVfs,
  type TimeSpec,
  R_OK,
  W_OK,
  X_OK,
} from '../sys/fs';
import { close, dup } from '../sys/libc';
import { cachePolicy, type CachePolicy } from './cache-policy';
import type { Reader, Writer } from './chain-io';
import { Credentials, type HostIds } from './credentials';
import { Errno, errnoOf, fail } from './errors';
import { fdBudgetFor } from './fd-budget';
import { FileHandles } from './file-handles';
import {
  type AttrReply,
  type Capabilities,
  type Context,
  type DirSink,
  type Entry,
  type FileAt,
  FileSystem,
  type InitInfo,
  type LockHow,
  type LockRange,
  type Opened,
  type SetattrArgs,
  type SetupMapping,
  type WindowRange,
  type WriteArgs,
} from './filesystem';
import { type Handle, HandleTable } from './handle-table';
import { IdMap } from './id-map';
import { type Inode, InodeTable } from './inode-table';
import { isDot, isDotDot } from './names';
import { DaxSupport, SETUPMAPPING_NO_FH } from './passthrough-dax';
import { LockTable } from './passthrough-locks';
import type { PassthroughOptions } from './passthrough-options';
import { Xattrs } from './passthrough-xattr';
import {
  FUSE_ASYNC_DIO,
  FUSE_ASYNC_READ,
  FUSE_ATOMIC_O_TRUNC,
  FUSE_ATTR_SUBMOUNT,
  FUSE_AUTO_INVAL_DATA,
  FUSE_BIG_WRITES,
  FUSE_DO_READDIRPLUS,
  FUSE_DIRECT_IO_ALLOW_MMAP_FLAGS2,
  FUSE_DONT_MASK,
  FUSE_EXPORT_SUPPORT,
  FUSE_FLOCK_LOCKS,
  FUSE_HANDLE_KILLPRIV_V2,
  FUSE_OPEN_KILL_SUIDGID,
  FUSE_PARALLEL_DIROPS,
  FUSE_POSIX_ACL,
  FUSE_POSIX_LOCKS,
  FUSE_READDIRPLUS_AUTO,
  FUSE_RELEASE_FLUSH,
  FUSE_SECURITY_CTX_FLAGS2,
  FUSE_SETXATTR_ACL_KILL_SGID,
  FUSE_SETXATTR_EXT,
  FUSE_SUBMOUNTS,
  FUSE_WRITE_CACHE,
  FUSE_WRITE_KILL_SUIDGID,
  FUSE_WRITEBACK_CACHE,
  PATH_MAX,
} from './protocol';
import { ShareBoundary } from './share-boundary';

export type { PassthroughOptions } from './passthrough-options';

/** getdents64 batch: enough for a full READDIR page of long names. */
const DIRENT_BUFFER_SIZE = 32 * 1024;
/** chown's "leave unchanged". */
const NO_ID = 0xffffffff;
/** The empty path that, with AT_EMPTY_PATH, makes an *at call act on the dirfd itself. */
const EMPTY = Buffer.from([0]);
const DOTDOT = Buffer.from('..\0');
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
const ASYNC_MIN_BYTES = 64 * 1024;
/** CREATE retries when the name it found existing is gone again by the time it is looked up. */
const MAX_CREATE_ATTEMPTS = 3;

/**
 * Open flags passed through to the host. Everything else is dropped: creation
 * flags are the op's business, O_NOFOLLOW would break the /proc reopen,
 * O_PATH and O_DIRECTORY are ours to choose; O_DIRECT, O_NOATIME and O_APPEND
 * are adjusted by hostFlags().
 */
const PASSED_OPEN_FLAGS = O_ACCMODE | O_APPEND | O_TRUNC | O_DSYNC | O_SYNC | O_NOATIME | O_DIRECT | O_LARGEFILE;

export class PassthroughFs extends FileSystem {
  private readonly policy: CachePolicy;
  private readonly credentials = new Credentials();
  /** /proc/self/fd, through which an inode's O_PATH fd is reopened for I/O. */
  private readonly procSelfFd: number;
  private readonly inodes: InodeTable;
  private readonly handles = new HandleTable();
  private readonly fileHandles: FileHandles | null = null;
  /** Extended attributes, when enabled (--xattr, or implied by xattrmap, posix-acl, security-label). */
  private readonly xattrs: Xattrs | null = null;
  private readonly locks: LockTable;
  private readonly dax: DaxSupport | null;
  private readonly boundary: ShareBoundary;
  private readonly uidMap: IdMap;
  private readonly gidMap: IdMap;
  private readonly log: NonNullable<PassthroughOptions['log']>;
  /** How many fds the guest's inodes, handles and lock descriptions may hold together (see reserveFds). */
  private readonly fdBudget: number;
  /** READ/WRITE on the thread pool (see PassthroughOptions.threadPoolSize). */
  private readonly poolIo: boolean;
  /** The share root's host inode number: what its `..` entry shows (its real parent is outside). */
  private readonly rootIno: bigint;
  /** FUSE_* flags INIT agreed on (bits 0..31). */
  private negotiated = 0;
  /** Bumped by DESTROY: a pool lookup or stat that finishes after it belongs to no session. */
  private generation = 0;
  /** LOOKUPs and OPENs on the pool, each about to hold an fd (counted against the budget before they do). */
  private poolFdsInFlight = 0;
  /** fds opened from file handles for the request being served; closed by endRequest(). */
  private readonly scratchFds: number[] = [];
  private readonly dirents = Buffer.alloc(DIRENT_BUFFER_SIZE);
  private readonly linkTarget = Buffer.alloc(PATH_MAX);

  /** Opens the shared directory; throws if it cannot be served. */
  constructor(private readonly options: PassthroughOptions) {
    super();
    // The guest kernel has applied the guest's umask to every mode it sends; the host's must not
    // apply a second time (virtiofsd clears it at start-up too).
    process.umask(0);
    this.log = options.log ?? (() => undefined);
    this.policy = cachePolicy(options.cache, options.timeout);
    this.uidMap = options.uidMap ?? new IdMap();
    this.gidMap = options.gidMap ?? new IdMap();
    this.fdBudget = options.fdBudget ?? fdBudgetFor(getNofileLimit().soft);
    this.poolIo = (options.threadPoolSize ?? 0) > 0;
    this.locks = new LockTable((nodeid) => this.openForLocks(nodeid));
    this.dax = options.dax
      ? new DaxSupport({ ...options.dax, readonlyShare: options.readonly === true }, (msg) => this.log('warn', msg))
      : null;
    // Inside the sandbox /proc is out of reach: the sandbox hands over the fd it kept (ours from now on).
    this.procSelfFd = options.procSelfFd ?? openat(AT_FDCWD, '/proc/self/fd', O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
    let rootFd = -1;
    try {
      rootFd = openat(AT_FDCWD, options.sharedDir, O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
      this.fileHandles = FileHandles.open(options.inodeFileHandles ?? 'never', rootFd, (msg) => this.log('warn', msg));
      const rootStat = this.hostStat(rootFd);
      this.boundary = new ShareBoundary(rootStat);
      this.rootIno = rootStat.ino;
      this.inodes = new InodeTable(rootFd, rootStat, this.fileHandles, (inode) => this.dropped(inode));
      const o = options;
      if (o.xattr || o.xattrmap || o.posixAcl || o.securityLabel) this.xattrs = new Xattrs(this.procSelfFd, o.xattrmap ?? null);
    } catch (err) {
      this.fileHandles?.close();
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

  /** Descriptions held for lock owners. */
  get lockFdCount(): number {
    return this.locks.fdCount;
  }

  override capabilities(): Capabilities {
    const o = this.options;
    let flags =
      FUSE_ASYNC_READ |
      FUSE_ATOMIC_O_TRUNC |
      FUSE_EXPORT_SUPPORT |
      FUSE_BIG_WRITES |
      FUSE_AUTO_INVAL_DATA |
      FUSE_ASYNC_DIO |
      FUSE_PARALLEL_DIROPS;
    let flags2 = 0;
    if (o.readdirplus ?? o.cache !== 'never') flags |= FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO;
    if (o.posixLock) flags |= FUSE_POSIX_LOCKS;
    if (o.flock) flags |= FUSE_FLOCK_LOCKS;
    if (o.writeback) flags |= FUSE_WRITEBACK_CACHE;
    if (o.killprivV2) flags |= FUSE_HANDLE_KILLPRIV_V2;
    if (o.announceSubmounts) flags |= FUSE_SUBMOUNTS;
    if (this.xattrs) flags |= FUSE_SETXATTR_EXT;
    if (o.posixAcl) flags |= FUSE_POSIX_ACL | FUSE_DONT_MASK;
    if (o.securityLabel) flags2 |= FUSE_SECURITY_CTX_FLAGS2;
    if (o.allowMmap) flags2 |= FUSE_DIRECT_IO_ALLOW_MMAP_FLAGS2;
    if (this.dax) {
      flags |= this.dax.initFlags;
      flags2 |= this.dax.initFlags2;
    }
    return { flags, flags2, mapAlignment: this.dax?.mapAlignment ?? 0 };
  }

  override init(info: InitInfo): void {
    const o = this.options;
    // Without these the guest would silently get another file system than the one configured.
    if (o.posixAcl && (info.flags & (FUSE_POSIX_ACL | FUSE_DONT_MASK)) !== (FUSE_POSIX_ACL | FUSE_DONT_MASK)) {
      this.log('error', '--posix-acl: the guest kernel does not offer FUSE_POSIX_ACL');
      fail(Errno.EPROTO);
    }
    if (o.securityLabel && !(info.flags2 & FUSE_SECURITY_CTX_FLAGS2)) {
      this.log('error', '--security-label: the guest kernel does not offer FUSE_SECURITY_CTX');
      fail(Errno.EPROTO);
    }
    const optional: [boolean | undefined, number, string][] = [
      [o.writeback, FUSE_WRITEBACK_CACHE, '--writeback'],
      [o.killprivV2, FUSE_HANDLE_KILLPRIV_V2, '--killpriv-v2'],
      [o.announceSubmounts, FUSE_SUBMOUNTS, '--announce-submounts'],
    ];
    for (const [wanted, flag, option] of optional) {
      if (wanted && !(info.flags & flag)) this.log('warn', `${option}: the guest kernel does not support it; off`);
    }
    if (o.allowMmap && !(info.flags2 & FUSE_DIRECT_IO_ALLOW_MMAP_FLAGS2)) {
      this.log('warn', '--allow-mmap: the guest kernel does not support it (FUSE_DIRECT_IO_ALLOW_MMAP, Linux 6.6 and later); off');
    }
    this.negotiated = info.flags;
    if (this.xattrs) this.xattrs.posixAcl = (info.flags & FUSE_POSIX_ACL) !== 0;
    this.dax?.init(info.flags2);
  }

  /** DESTROY: every inode, handle, lock description and DAX mapping of the guest goes. */
  override destroy(): void {
    this.generation++;
    this.locks.clear();
    this.endRequest();
    this.handles.clear();
    this.inodes.clear();
    this.fileHandles?.clear();
    this.negotiated = 0;
    this.dax?.destroy();
  }

  override endRequest(): void {
    for (const fd of this.scratchFds) closeQuietly(fd);
    this.scratchFds.length = 0;
  }

  /** Releases everything, the root and /proc/self/fd included. The object is unusable afterwards. */
  close(): void {
    this.locks.clear();
    this.endRequest();
    this.handles.clear();
    this.inodes.clear();
    this.fileHandles?.clear();
    this.xattrs?.close();
    this.fileHandles?.close();
    closeQuietly(this.inodes.root.fd);
    closeQuietly(this.procSelfFd);
  }

  /* ---------------- names and attributes ---------------- */

  override lookup(ctx: Context, parent: number, name: Buffer): Entry | Promise<Entry> {
    const dir = this.inodes.get(parent);
    if (isDotDot(name)) return this.lookupParent(dir);
    return this.poolIo ? this.lookupAtOnPool(dir, name) : this.lookupAt(dir, name);
  }

  override forget(nodeid: number, nlookup: number): void {
    this.inodes.forget(nodeid, nlookup);
  }

  override getattr(ctx: Context, nodeid: number, fh: number | undefined): AttrReply | Promise<AttrReply> {
    if (!this.poolIo) return this.attrOf(nodeid, fh);
    // A stat may wait for a slow file system's server (NFS): on the pool, over a private dup.
    return this.statx(ctx, nodeid, fh, 0);
  }

  /** GETATTR's answer, here and now. */
  private attrOf(nodeid: number, fh: number | undefined): AttrReply {
    return this.attrReply(this.hostStat(this.statFd(nodeid, fh)));
  }

  override statx(ctx: Context, nodeid: number, fh: number | undefined, flags: number): AttrReply | Promise<AttrReply> {
    const how = AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW | (flags & AT_STATX_SYNC_TYPE);
    if (!this.poolIo) return this.attrReply(statx(this.statFd(nodeid, fh), EMPTY, how));
    const generation = this.generation;
    // The fd is an inode's O_PATH fd, or an open handle's (whose last close may flush).
    const pathOnly = fh === undefined;
    return onPool(this.statFd(nodeid, fh), (own) => statxAsync(own, EMPTY, how), pathOnly).then((st) => {
      if (generation !== this.generation) fail(Errno.EIO);
      return this.attrReply(st);
    });
  }

  override setattr(ctx: Context, nodeid: number, args: SetattrArgs): AttrReply {
    const inode = this.inodes.get(nodeid);
    // With an open handle (FATTR_FH) the change goes through it: it still works once the name is gone.
    const handle = args.fh !== undefined ? this.handles.getAny(args.fh, nodeid) : undefined;
    if (args.mode !== undefined) {
      if (handle) fchmod(handle.fd, args.mode & 0o7777);
      else fchmodat(this.procSelfFd, this.procName(inode), args.mode & 0o7777, 0);
    }
    if (args.uid !== undefined || args.gid !== undefined) {
      const uid = args.uid === undefined ? NO_ID : this.uidMap.toHost(args.uid);
      const gid = args.gid === undefined ? NO_ID : this.gidMap.toHost(args.gid);
      fchownat(handle?.fd ?? this.fdOf(inode), EMPTY, uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
    }
    if (args.size !== undefined) this.truncate(inode, handle, args.size, args.killSuidgid ?? false);
    if (args.atime !== undefined || args.mtime !== undefined) {
      const [atime, mtime] = [timeSpec(args.atime), timeSpec(args.mtime)];
      if (handle) futimens(handle.fd, atime, mtime);
      else utimensat(this.procSelfFd, this.procName(inode), atime, mtime, 0);
    }
    return this.attrOf(nodeid, handle?.fh);
  }

  override readlink(ctx: Context, nodeid: number): Buffer {
    const n = readlinkat(this.fdOf(this.inodes.get(nodeid)), EMPTY, this.linkTarget, this.linkTarget.length);
    return Buffer.from(this.linkTarget.subarray(0, n));
  }

  override access(ctx: Context, nodeid: number, mask: number): void {
    const st = this.guestStat(this.hostStat(this.fdOf(this.inodes.get(nodeid))));
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
    return fstatvfs(this.fdOf(this.inodes.get(nodeid)));
  }

  /* ---------------- creating and removing names ---------------- */

  override mkdir(ctx: Context, parent: number, name: Buffer, mode: number, umask: number): Entry {
    return this.created(ctx, parent, name, AT_REMOVEDIR, (dirFd) => this.asCaller(ctx, umask, () => mkdirat(dirFd, name, mode)));
  }

  override mknod(ctx: Context, parent: number, name: Buffer, mode: number, rdev: number, umask: number): Entry {
    // fuse_mknod_in.rdev is the kernel's 32-bit device encoding, which glibc's makedev()
    // produces bit for bit for every 12-bit major / 20-bit minor.
    return this.created(ctx, parent, name, 0, (dirFd) => this.asCaller(ctx, umask, () => mknodat(dirFd, name, mode, rdev)));
  }

  override symlink(ctx: Context, target: Buffer, parent: number, name: Buffer): Entry {
    return this.created(ctx, parent, name, 0, (dirFd) => this.asCaller(ctx, 0, () => symlinkat(target, dirFd, name)));
  }

  override link(ctx: Context, nodeid: number, newParent: number, newName: Buffer): Entry {
    const inode = this.inodes.get(nodeid);
    const dir = this.inodes.get(newParent);
    this.requireInside(dir);
    // The new name's lookup keeps an fd: refused before the name is made.
    this.reserveFds();
    // Through /proc rather than AT_EMPTY_PATH, which would need CAP_DAC_READ_SEARCH.
    linkat(this.procSelfFd, this.procName(inode), this.fdOf(dir), newName, AT_SYMLINK_FOLLOW);
    return this.lookupAt(dir, newName);
  }

  override unlink(ctx: Context, parent: number, name: Buffer): void {
    unlinkat(this.insideDirFd(parent), name, 0);
  }

  override rmdir(ctx: Context, parent: number, name: Buffer): void {
    unlinkat(this.insideDirFd(parent), name, AT_REMOVEDIR);
  }

  override rename(ctx: Context, parent: number, name: Buffer, newParent: number, newName: Buffer, flags: number): void {
    const from = this.insideDirFd(parent);
    renameat2(from, name, parent === newParent ? from : this.insideDirFd(newParent), newName, flags);
  }

  /* ---------------- files ---------------- */

  override open(ctx: Context, nodeid: number, flags: number, openFlags: number): Opened | Promise<Opened> {
    const inode = this.inodes.get(nodeid);
    this.requireRegular(inode);
    const hostFlags = this.hostFlags(flags) | O_CLOEXEC;
    const opened = (fd: number): Opened => ({
      fh: this.handles.insert(fd, nodeid, 'file', hostFlags & O_ACCMODE).fh,
      openFlags: this.policy.fileOpenFlags,
    });
    // An open may wait for a slow file system's server (NFS): on the pool with --thread-pool-size,
    // unless it must drop CAP_FSETID (a per-thread credential) or reopen a file handle.
    if (this.poolIo && inode.fd >= 0 && !this.killsPrivs(openFlags, hostFlags)) return this.reopenOnPool(inode, hostFlags).then(opened);
    return opened(this.killingPrivs(openFlags, hostFlags, () => this.reopen(inode, hostFlags)));
  }

  /**
   * reopen() on the pool, through /proc/self/fd/N of a private dup of the
   * inode's fd (a FORGET meanwhile may close its own). Counted against the fd
   * budget while it runs; a DESTROY in between answers EIO.
   */
  private reopenOnPool(inode: Inode, flags: number): Promise<number> {
    this.reserveFds();
    this.poolFdsInFlight++;
    const generation = this.generation;
    const fd = onPool(inode.fd, (own) => openatAsync(this.procSelfFd, Buffer.from(`${own}\0`), flags, 0), true).then((fd) => {
      if (generation === this.generation) return fd;
      closeQuietly(fd);
      return fail(Errno.EIO);
    });
    const done = (): void => {
      this.poolFdsInFlight--;
    };
    fd.then(done, done);
    return fd;
  }

  /**
   * CREATE. The name is created with O_EXCL, so the fd opened is always a new
   * regular file. When the name exists and the guest did not ask for O_EXCL
   * (a stale negative dentry in the guest, or a host process creating it
   * meanwhile), the existing inode is looked up (O_PATH), checked to be a
   * regular file, and only then opened: a device node or FIFO under the name
   * is never opened by the daemon.
   */
  override create(
    ctx: Context,
    parent: number,
    name: Buffer,
    mode: number,
    flags: number,
    umask: number,
    openFlags: number,
  ): [Entry, Opened] {
    const dir = this.inodes.get(parent);
    this.requireInside(dir);
    // The handle's fd and the new inode's O_PATH fd.
    this.reserveFds(2);
    const hostFlags = this.hostFlags(flags) | O_CLOEXEC;
    const exclusive = hostFlags | O_CREAT | O_EXCL | O_NOFOLLOW;
    for (let attempt = 1; ; attempt++) {
      let fd = -1;
      try {
        fd = this.killingPrivs(openFlags, hostFlags, () =>
          this.asCaller(ctx, umask, () => openat(this.fdOf(dir), name, exclusive, mode & 0o7777)),
        );
      } catch (err) {
        if (flags & O_EXCL || errnoOf(err) !== Errno.EEXIST) throw err;
      }
      if (fd >= 0) return this.openedNew(ctx, fd, hostFlags & O_ACCMODE, () => unlinkat(this.fdOf(dir), name, 0));
      try {
        return this.openExisting(ctx, dir, name, hostFlags, openFlags);
      } catch (err) {
        // Removed again between the two: create it after all (a bounded number of times).
        if (errnoOf(err) !== Errno.ENOENT || attempt >= MAX_CREATE_ATTEMPTS) throw err;
      }
    }
  }

  override tmpfile(ctx: Context, parent: number, mode: number, flags: number, umask: number): [Entry, Opened] {
    const dir = this.inodes.get(parent);
    this.requireInside(dir);
    this.reserveFds(2);
    const hostFlags = this.hostFlags(flags) | O_TMPFILE | O_CLOEXEC;
    const fd = this.asCaller(ctx, umask, () => openat(this.fdOf(dir), DOT, hostFlags, mode & 0o7777));
    // Nameless: a failed label leaves nothing to remove.
    return this.openedNew(ctx, fd, hostFlags & O_ACCMODE, () => undefined);
  }

  override read(ctx: Context, nodeid: number, fh: number, into: Writer, size: number, offset: number): number | Promise<number> {
    const fd = this.handles.get(fh, nodeid, 'file').fd;
    if (this.poolIo && size >= ASYNC_MIN_BYTES) return onPool(fd, (own) => into.writeFromFileAsync(own, size, offset));
    // What the page cache holds is copied here, at once; what would wait for the disk (a cold
    // file, a slow file system) is read on the pool, so the other queues are not held up by it.
    const now = into.writeFromFileNowait(fd, size, offset);
    if (typeof now === 'number') return now;
    return onPool(fd, (own) => into.writeFromFileAsync(own, size - now.read, offset + now.read)).then((n) => now.read + n);
  }

  override write(ctx: Context, nodeid: number, fh: number, from: Reader, w: WriteArgs): number | Promise<number> {
    const { size, offset, writeFlags, fileFlags } = w;
    const handle = this.handles.get(fh, nodeid, 'file');
    // The handle's access mode was fixed at open; write_in.flags is the guest's word and never widens it.
    if (!HandleTable.writable(handle)) fail(Errno.EBADF);
    // The guest's own appending writes append on the host too (another guest or a host process
    // may have grown the file); write-back of cached pages carries exact offsets (FUSE_WRITE_CACHE).
    const append = fileFlags & O_APPEND && !(writeFlags & FUSE_WRITE_CACHE) && !this.has(FUSE_WRITEBACK_CACHE);
    const fd = append ? this.appendFd(handle) : handle.fd;
    const write = (): number => from.readToFile(fd, size, offset);
    // Dropping CAP_FSETID is per thread: such a write stays on this one.
    if (writeFlags & FUSE_WRITE_KILL_SUIDGID && this.has(FUSE_HANDLE_KILLPRIV_V2)) return this.credentials.withoutFsetid(write);
    if (!this.poolIo || size < ASYNC_MIN_BYTES) return write();
    return onPool(fd, (own) => from.readToFileAsync(own, size, offset));
  }

  override flush(ctx: Context, nodeid: number, fh: number, lockOwner: bigint): void {
    // Closing a duplicate runs the file system's close-time work (NFS write-back)
    // while the guest's handle stays open.
    close(dup(this.handles.get(fh, nodeid, 'file').fd));
    // close(2) drops the process's POSIX locks on the file; FLUSH is the guest's close.
    this.locks.releaseOwner(nodeid, lockOwner);
  }

  override fsync(ctx: Context, nodeid: number, fh: number, datasync: boolean): Promise<void> {
    return this.syncHandle(nodeid, fh, datasync, 'file');
  }

  /** fsync(2) may wait for the disk: always on the pool. */
  private syncHandle(nodeid: number, fh: number, datasync: boolean, kind: 'file' | 'dir'): Promise<void> {
    return onPool(this.handles.get(fh, nodeid, kind).fd, (own) => syncFdAsync(own, datasync));
  }

  override release(ctx: Context, nodeid: number, fh: number, flags: number, releaseFlags: number, lockOwner: bigint): void {
    this.handles.release(fh, nodeid, 'file');
    if (releaseFlags & FUSE_RELEASE_FLUSH) this.locks.releaseOwner(nodeid, lockOwner);
    this.locks.releaseHandle(fh);
  }

  /** SETATTR's size change: through the open handle if there is one, else a write-only reopen. */
  private truncate(inode: Inode, handle: Handle | undefined, size: number, killSuidgid: boolean): void {
    const truncate = (): void => {
      if (handle) return nodefs.ftruncateSync(handle.fd, size);
      this.requireRegular(inode);
      const fd = this.reopen(inode, O_WRONLY | O_CLOEXEC);
      try {
        nodefs.ftruncateSync(fd, size);
      } finally {
        closeQuietly(fd);
      }
    };
    if (killSuidgid && this.has(FUSE_HANDLE_KILLPRIV_V2)) this.credentials.withoutFsetid(truncate);
    else truncate();
  }

  /** fallocate(2) may wait for the disk (zeroing a range, a slow file system): on the pool. */
  override fallocate(ctx: Context, nodeid: number, fh: number, offset: number, length: number, mode: number): Promise<void> {
    return onPool(this.handles.get(fh, nodeid, 'file').fd, (own) => fallocateAsync(own, mode, offset, length));
  }

  override lseek(ctx: Context, nodeid: number, fh: number, offset: bigint, whence: number): bigint {
    // The handle's file position is never used for I/O (pread/pwrite), so moving it is harmless.
    return lseek(this.handles.get(fh, nodeid, 'file').fd, offset, whence);
  }

  override copyFileRange(ctx: Context, from: FileAt, to: FileAt, len: number, flags: number): Promise<number> {
    const src = this.handles.get(from.fh, from.nodeid, 'file');
    const dst = this.handles.get(to.fh, to.nodeid, 'file');
    // Up to 64 MiB of copying: on the pool, over dups of both handles' fds.
    return onPool(src.fd, (ownIn) =>
      onPool(dst.fd, (ownOut) => copyFileRangeAsync(ownIn, from.offset, ownOut, to.offset, Math.min(len, MAX_COPY_CHUNK), flags)),
    );
  }

  override syncfs(ctx: Context, nodeid: number): Promise<void> {
    const inode = this.inodes.get(nodeid);
    // syncfs(2) wants a real fd (not O_PATH). Only directories are opened for it: the guest names
    // the root of the file system it syncs, and for anything else the share's root stands in, so a
    // device node or FIFO is never opened.
    const dir = inode.type === S_IFDIR ? inode : this.inodes.root;
    const fd = this.reopen(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NONBLOCK);
    // A whole file system's writeback: on the pool, and the fd closed there once it is done.
    const done = syncfsAsync(fd);
    const release = (): void => nodefs.close(fd, () => undefined);
    done.then(release, release);
    return done;
  }

  /** Guest open flags -> host open flags, per the options (see PASSED_OPEN_FLAGS). */
  private hostFlags(flags: number): number {
    const { options } = this;
    let f = flags & PASSED_OPEN_FLAGS;
    if (!options.allowDirectIo) f &= ~O_DIRECT;
    if (!options.preserveNoatime) f &= ~O_NOATIME;
    // Appending is done per write (see write()); the handle's fd writes at the offsets given.
    f &= ~O_APPEND;
    // With a write-back cache the guest reads pages around partial writes from write-only files.
    if (this.has(FUSE_WRITEBACK_CACHE) && (f & O_ACCMODE) === O_WRONLY) f = (f & ~O_ACCMODE) | O_RDWR;
    return f;
  }

  /** Runs an open that truncates without CAP_FSETID when the guest asks for set-id bits to go. */
  private killingPrivs(openFlags: number, hostFlags: number, open: () => number): number {
    return this.killsPrivs(openFlags, hostFlags) ? this.credentials.withoutFsetid(open) : open();
  }

  /** Whether the open truncates with the guest asking for set-id bits to go (FUSE_OPEN_KILL_SUIDGID). */
  private killsPrivs(openFlags: number, hostFlags: number): boolean {
    return (openFlags & FUSE_OPEN_KILL_SUIDGID) !== 0 && (hostFlags & O_TRUNC) !== 0 && this.has(FUSE_HANDLE_KILLPRIV_V2);
  }

  /** The handle's O_APPEND twin; only for a handle opened for writing (write() checks). */
  private appendFd(handle: Handle): number {
    if (handle.appendFd < 0) {
      this.reserveFds();
      this.handles.setAppendFd(handle, openat(this.procSelfFd, String(handle.fd), O_WRONLY | O_APPEND | O_CLOEXEC, 0));
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
    let entry: Entry;
    try {
      // The inode fd comes from the open file itself, so a rename racing the create cannot swap it.
      const pathFd = openat(this.procSelfFd, String(fd), O_PATH | O_CLOEXEC, 0);
      const stat = this.regularStat(pathFd);
      entry = this.labelled(ctx, this.adopt(pathFd, null, stat), remove);
    } catch (err) {
      closeQuietly(fd);
      throw err;
    }
    const fh = this.handles.insert(fd, entry.nodeid, 'file', access).fh;
    return [entry, { fh, openFlags: this.policy.fileOpenFlags }];
  }

  /**
   * CREATE of a name that exists, without O_EXCL: the inode is looked up
   * (O_PATH | O_NOFOLLOW, which opens nothing), and opened through that fd
   * only if it is a regular file, as the caller (whose permissions an open of
   * an existing file must obey). An existing file keeps its label.
   */
  private openExisting(ctx: Context, dir: Inode, name: Buffer, hostFlags: number, openFlags: number): [Entry, Opened] {
    const pathFd = openat(this.fdOf(dir), name, O_PATH | O_NOFOLLOW | O_CLOEXEC, 0);
    let stat: Stat;
    let fd: number;
    try {
      stat = this.regularStat(pathFd);
      // The same inode, reached through its O_PATH fd: a rename racing us cannot swap it.
      fd = this.killingPrivs(openFlags, hostFlags, () =>
        this.asCaller(ctx, 0, () => openat(this.procSelfFd, String(pathFd), hostFlags, 0)),
      );
    } catch (err) {
      closeQuietly(pathFd);
      throw err;
    }
    let entry: Entry;
    try {
      entry = this.adopt(pathFd, dir, stat);
    } catch (err) {
      closeQuietly(fd);
      throw err;
    }
    const fh = this.handles.insert(fd, entry.nodeid, 'file', hostFlags & O_ACCMODE).fh;
    return [entry, { fh, openFlags: this.policy.fileOpenFlags }];
  }

  /**
   * The stat of the O_PATH `pathFd`, which must be a regular file: ELOOP for a
   * symlink (as open(O_NOFOLLOW) answers), EISDIR for a directory, EINVAL for
   * a device node, FIFO or socket. Does not close `pathFd`.
   */
  private regularStat(pathFd: number): Stat {
    const stat = this.hostStat(pathFd);
    const type = stat.mode & S_IFMT;
    if (type === S_IFLNK) fail(Errno.ELOOP);
    requireRegularType(type);
    return stat;
  }

  /* ---------------- directories ---------------- */

  override opendir(ctx: Context, nodeid: number): Opened {
    const inode = this.inodes.get(nodeid);
    if (inode.type !== S_IFDIR) fail(Errno.ENOTDIR);
    const fd = this.reopen(inode, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    return { fh: this.handles.insert(fd, nodeid, 'dir').fh, openFlags: this.policy.dirOpenFlags };
  }

  override readdir(ctx: Context, nodeid: number, fh: number, offset: bigint, sink: DirSink): void {
    const dir = this.inodes.get(nodeid);
    const fd = this.handles.get(fh, nodeid, 'dir').fd;
    let added = 0;
    // The cookie is an off_t the host gave us earlier; it went to the guest as a u64.
    lseek(fd, BigInt.asIntN(64, offset), SEEK_SET);
    for (let entry of getdents(fd, this.dirents)) {
      // The root's `..` is the root, as LOOKUP answers it: its host parent's inode number stays outside.
      if (dir === this.inodes.root && isDotDot(entry.cname)) entry = { ...entry, ino: this.rootIno };
      let looked: Entry | null = null;
      if (sink.plus && !isDot(entry.cname) && !isDotDot(entry.cname)) {
        try {
          looked = this.lookupAt(dir, entry.cname);
        } catch (err) {
          // Removed since getdents: leave it out. Any other failure ends the listing here,
          // or fails it when nothing was listed yet.
          if (errnoOf(err) === Errno.ENOENT) continue;
          if (added > 0) return;
          throw err;
        }
      }
      if (!sink.add(entry, looked)) {
        if (looked) this.inodes.forget(looked.nodeid, 1);
        return;
      }
      added++;
    }
  }

  override releasedir(ctx: Context, nodeid: number, fh: number): void {
    this.handles.release(fh, nodeid, 'dir');
  }

  override fsyncdir(ctx: Context, nodeid: number, fh: number, datasync: boolean): void | Promise<void> {
    return this.syncHandle(nodeid, fh, datasync, 'dir');
  }

  /* ---------------- extended attributes ---------------- */

  override setxattr(ctx: Context, nodeid: number, name: Buffer, value: Buffer, flags: number, setxattrFlags: number): void {
    this.requireXattrs().set(this.inodeFd(nodeid), name, value, flags, (setxattrFlags & FUSE_SETXATTR_ACL_KILL_SGID) !== 0);
  }
  override getxattr(ctx: Context, nodeid: number, name: Buffer, size: number): number | Buffer {
    return this.requireXattrs().get(this.inodeFd(nodeid), name, size);
  }
  override listxattr(ctx: Context, nodeid: number, size: number): number | Buffer {
    return this.requireXattrs().list(this.inodeFd(nodeid), size);
  }
  override removexattr(ctx: Context, nodeid: number, name: Buffer): void {
    this.requireXattrs().remove(this.inodeFd(nodeid), name);
  }

  /* ---------------- locks ---------------- */

  override getlk(ctx: Context, nodeid: number, fh: number, owner: bigint, lock: LockRange): LockRange {
    if (!this.has(FUSE_POSIX_LOCKS)) fail(Errno.ENOSYS);
    this.handles.get(fh, nodeid, 'file');
    return this.locks.getlk(nodeid, owner, lock);
  }

  override setlk(ctx: Context, nodeid: number, fh: number, owner: bigint, lock: LockRange, how: LockHow): void | Promise<void> {
    const { flock, wait } = how;
    const { handles } = this;
    if (!this.has(flock ? FUSE_FLOCK_LOCKS : FUSE_POSIX_LOCKS)) fail(Errno.ENOSYS);
    const handle = handles.get(fh, nodeid, 'file');
    if (!flock) return this.locks.setlk(nodeid, fh, owner, lock, wait);
    // A waiting flock re-checks its handle on each try: once released, its fd number may be reused.
    return this.locks.flock(() => (handles.has(handle.fh) ? handle.fd : fail(Errno.EBADF)), lock.type, wait);
  }

  /* ---------------- DAX ---------------- */

  override setupmapping(ctx: Context, nodeid: number, fh: bigint, mapping: SetupMapping): Promise<void> {
    if (!this.dax) fail(Errno.ENOSYS);
    const inode = this.inodes.get(nodeid);
    this.requireRegular(inode);
    const writable = DaxSupport.writable(mapping);
    if (fh !== SETUPMAPPING_NO_FH) {
      // A named handle must be a file open on this inode, with the access the mapping needs.
      const handle = this.handles.get(fh <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(fh) : 0, nodeid, 'file');
      return this.dax.setup(nodeid, DaxSupport.handleFd(handle, writable), mapping);
    }
    // The daemon opens as root: a writable mapping is checked against the caller like ACCESS(W_OK).
    if (writable) this.access(ctx, nodeid, W_OK);
    // Linux names the file by nodeid (fh is -1): open it as the mapping needs.
    const fd = this.dax.openForMapping((flags) => this.reopen(inode, flags), writable);
    return this.dax.setup(nodeid, fd, mapping);
  }

  override removemapping(ctx: Context, ranges: WindowRange[]): Promise<void> {
    if (!this.dax) fail(Errno.ENOSYS);
    return this.dax.remove(ranges);
  }

  /** Whether INIT agreed on FUSE_* flag `flag`. */
  private has(flag: number): boolean {
    return (this.negotiated & flag) !== 0;
  }

  /* ---------------- reaching inodes ---------------- */

  /**
   * An O_PATH fd of the inode, valid until the request ends: its own, or one
   * opened from its file handle. An unlinked file can no longer be opened by
   * handle; an open handle of it still reaches it.
   */
  private fdOf(inode: Inode): number {
    if (inode.fd >= 0) return inode.fd;
    try {
      const fd = this.fileHandles!.open(inode.handle!, O_PATH | O_CLOEXEC);
      this.scratchFds.push(fd);
      return fd;
    } catch (err) {
      const open = errnoOf(err) === Errno.ESTALE ? this.handles.anyOf(inode.nodeid) : undefined;
      if (open) return open.fd;
      throw err;
    }
  }

  /* ---------------- the fd budget ---------------- */

  /** fds held for the guest now: inodes' O_PATH fds, open handles, lock descriptions. */
  private heldFds(): number {
    return this.inodes.fdCount + this.handles.fdCount + this.locks.fdCount + this.poolFdsInFlight;
  }

  /**
   * EMFILE, before anything is opened, when `n` more fds held for the guest
   * would go past the budget: a guest that opens or looks up without end runs
   * out of its own allowance, never of the daemon's descriptors (which the
   * front-end's next message carrying an fd would need).
   */
  private reserveFds(n = 1): void {
    if (this.heldFds() + n > this.fdBudget) fail(Errno.EMFILE);
  }

  /* ---------------- staying inside the share ---------------- */

  /**
   * ENOENT unless the directory inode is still inside the share: the check
   * before a name is made, removed or moved in it (a directory moved out by
   * the host is no longer part of this file system, as if it were removed).
   */
  private requireInside(dir: Inode): void {
    if (dir !== this.inodes.root && !this.boundary.isInside(this.fdOf(dir))) fail(Errno.ENOENT);
  }

  /**
   * LOOKUP of `..` in `dir`: the parent, only if it is inside the share. At the
   * root it is the root (the guest cannot climb out by name); a parent outside
   * answers ENOENT, as the kernel does for a path disconnected from a bind mount.
   */
  private lookupParent(dir: Inode): Entry {
    if (dir === this.inodes.root) {
      dir.refcount++;
      return this.entry(dir, this.hostStat(dir.fd), 0);
    }
    this.reserveFds();
    const fd = openat(this.fdOf(dir), DOTDOT, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0);
    let inside: boolean;
    try {
      inside = this.boundary.isInside(fd);
    } catch (err) {
      closeQuietly(fd);
      throw err;
    }
    if (!inside) {
      closeQuietly(fd);
      this.log('warn', `LOOKUP ".." of inode ${dir.nodeid}: its parent is outside the shared directory; refused`);
      fail(Errno.ENOENT);
    }
    return this.adopt(fd, dir);
  }

  /**
   * A new fd of the inode opened with `flags` (never O_PATH), owned by the
   * caller. Only regular files and directories are ever opened: opening a
   * FIFO would block the whole daemon and opening a device node would hand
   * the guest a host device (the type of an inode never changes, so this
   * check holds for the fd opened below).
   */
  private reopen(inode: Inode, flags: number): number {
    if (inode.type !== S_IFREG && inode.type !== S_IFDIR) fail(inode.type === S_IFLNK ? Errno.ELOOP : Errno.EINVAL);
    this.reserveFds();
    if (inode.fd >= 0) return openat(this.procSelfFd, String(inode.fd), flags, 0);
    try {
      return this.fileHandles!.open(inode.handle!, flags);
    } catch (err) {
      const open = errnoOf(err) === Errno.ESTALE ? this.handles.anyOf(inode.nodeid) : undefined;
      if (open) return openat(this.procSelfFd, String(open.fd), flags, 0);
      throw err;
    }
  }

  /** The inode's name under /proc/self/fd (valid until the request ends). */
  private procName(inode: Inode): string {
    return String(this.fdOf(inode));
  }

  /**
   * Only regular files are opened for I/O: opening a FIFO would block the whole
   * daemon and opening a device node would hand the guest a host device.
   */
  private requireRegular(inode: Inode): void {
    requireRegularType(inode.type);
  }

  /* ---------------- attributes and lookups ---------------- */

  /** The host's view of an inode: identity (dev, ino, mount) and ids as stored. */
  private hostStat(fd: number): Stat {
    return statx(fd, EMPTY, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
  }

  /** The guest's view: owner and group translated by --translate-uid/gid. */
  private guestStat(st: Stat): Stat {
    if (this.uidMap.identity && this.gidMap.identity) return st;
    return { ...st, uid: this.uidMap.toGuest(st.uid), gid: this.gidMap.toGuest(st.gid) };
  }

  private attrReply(hostStat: Stat): AttrReply {
    const stat = this.guestStat(hostStat);
    return { stat, timeout: this.policy.timeout, attrFlags: this.dax?.attrFlags(stat) ?? 0 };
  }

  private entry(inode: Inode, hostStat: Stat, attrFlags: number): Entry {
    const stat = this.guestStat(hostStat);
    const t = this.policy.timeout;
    return {
      nodeid: inode.nodeid,
      generation: 0,
      stat,
      entryTimeout: t,
      attrTimeout: t,
      attrFlags: attrFlags | (this.dax?.attrFlags(stat) ?? 0),
    };
  }

  /** Looks `name` (one component, not `..`: see lookupParent) up in `dir` and counts the lookup. */
  private lookupAt(dir: Inode, name: Buffer): Entry {
    this.reserveFds();
    return this.adopt(openat(this.fdOf(dir), name, O_PATH | O_NOFOLLOW | O_CLOEXEC, 0), dir);
  }

  /**
   * lookupAt() on libuv's pool (--thread-pool-size): the openat and the stat
   * of a slow file system (NFS) wait there, not on the event loop. The
   * directory is reached through a private dup (a FORGET meanwhile may close
   * its own fd); the inode is registered back on the loop, unless a DESTROY
   * came in between.
   */
  private lookupAtOnPool(dir: Inode, name: Buffer): Promise<Entry> {
    this.reserveFds();
    this.poolFdsInFlight++;
    const generation = this.generation;
    const opened = onPool(this.fdOf(dir), (dirFd) => openatAsync(dirFd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC, 0), true);
    const entry = opened.then(async (fd) => {
      let st: Stat;
      try {
        st = await statxAsync(fd, EMPTY, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
        if (generation !== this.generation) fail(Errno.EIO);
      } catch (err) {
        closeQuietly(fd);
        throw err;
      }
      // From here the fd is the inode table's.
      return this.adopt(fd, dir, st);
    });
    const done = (): void => {
      this.poolFdsInFlight--;
    };
    entry.then(done, done);
    return entry;
  }

  /**
   * Registers the O_PATH `fd` (taking ownership) as a looked-up inode, found in
   * `parent`. `stat` is the host's stat of `fd` when the caller already has it.
   */
  private adopt(fd: number, parent: Inode | null, stat?: Stat): Entry {
    if (!stat) {
      try {
        stat = this.hostStat(fd);
      } catch (err) {
        closeQuietly(fd);
        throw err;
      }
    }
    const inode = this.inodes.adopt(fd, stat);
    let flags = 0;
    // A directory on another mount or device than its parent is a mount point: with
    // FUSE_SUBMOUNTS the guest mounts it separately, so inode numbers of the two never mix.
    if (parent && inode.type === S_IFDIR && this.has(FUSE_SUBMOUNTS) && (inode.mntId !== parent.mntId || inode.dev !== parent.dev)) {
      flags |= FUSE_ATTR_SUBMOUNT;
    }
    return this.entry(inode, stat, flags);
  }

  /**
   * Applies the guest's security context (FUSE_SECURITY_CTX) to a new inode.
   * If that fails, the new name is removed and the lookup undone: the guest
   * must not get an unlabelled file it believes labelled.
   */
  private labelled(ctx: Context, entry: Entry, remove: () => void): Entry {
    if (!ctx.secctx || !this.xattrs) return entry;
    try {
      this.xattrs.label(this.fdOf(this.inodes.get(entry.nodeid)), ctx.secctx);
    } catch (err) {
      try {
        remove();
      } catch (cleanup) {
        this.log('warn', `could not remove a new name after its security label failed: ${String(cleanup)}`);
      }
      this.inodes.forget(entry.nodeid, 1);
      throw err;
    }
    return entry;
  }

  /** Runs a creating call as the guest caller, with the umask when the guest left it to us. */
  private asCaller<T>(ctx: Context, umask: number, fn: () => T): T {
    const ids: HostIds = { uid: this.uidMap.toHost(ctx.uid), gid: this.gidMap.toHost(ctx.gid) };
    return this.credentials.asCaller(ids, this.has(FUSE_DONT_MASK) ? umask : 0, fn);
  }

  /* ---------------- helpers ---------------- */

  private requireXattrs(): Xattrs {
    return this.xattrs ?? fail(Errno.ENOSYS);
  }

  private inodeFd(nodeid: number): number {
    return this.fdOf(this.inodes.get(nodeid));
  }

  /** The fd of directory `nodeid`, once checked to be inside the share (ENOENT otherwise). */
  private insideDirFd(nodeid: number): number {
    const dir = this.inodes.get(nodeid);
    this.requireInside(dir);
    return this.fdOf(dir);
  }

  /** What GETATTR/STATX stat: the open handle when the guest names one, else the inode. */
  private statFd(nodeid: number, fh: number | undefined): number {
    const inode = this.inodes.get(nodeid);
    return fh !== undefined ? this.handles.getAny(fh, nodeid).fd : this.fdOf(inode);
  }

  /**
   * A name just made in `parent` by `make(dirFd)`: looked up and labelled.
   * `removeFlags` are unlinkat's for taking it away if the label fails.
   */
  private created(ctx: Context, parent: number, name: Buffer, removeFlags: number, make: (dirFd: number) => void): Entry {
    const dir = this.inodes.get(parent);
    this.requireInside(dir);
    this.reserveFds();
    make(this.fdOf(dir));
    return this.labelled(ctx, this.lookupAt(dir, name), () => unlinkat(this.fdOf(dir), name, removeFlags));
  }

  /** A description of the inode for one lock owner: writable if it can be, so write locks work. */
  private openForLocks(nodeid: number): number {
    const inode = this.inodes.get(nodeid);
    try {
      return this.reopen(inode, O_RDWR | O_CLOEXEC | O_NONBLOCK);
    } catch (err) {
      const e = errnoOf(err);
      if (e !== Errno.EACCES && e !== Errno.EROFS && e !== Errno.ETXTBSY && e !== Errno.EPERM) throw err;
      return this.reopen(inode, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    }
  }

  /** The guest forgot the inode for good: its locks and DAX mappings go with it. */
  private dropped(inode: Inode): void {
    this.locks.forgetInode(inode.nodeid);
    this.dax?.forgetInode(inode.nodeid);
  }
}

function timeSpec(t: TimeSpec | 'now' | undefined): TimeSpec {
  if (t === undefined) return { sec: 0, nsec: UTIME_OMIT };
  if (t === 'now') return { sec: 0, nsec: UTIME_NOW };
  return t;
}

/** requireRegular() for an S_IFMT type: EISDIR for a directory, EINVAL for anything else not regular. */
export function requireRegularType(type: number): void {
  if (type === S_IFDIR) fail(Errno.EISDIR);
  if (type !== S_IFREG) fail(Errno.EINVAL);
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
function onPool<T>(fd: number, io: (own: number) => Promise<T>, pathOnly = false): Promise<T> {
  const own = dup(fd);
  let result: Promise<T>;
  try {
    result = io(own);
  } catch (err) {
    close(own);
    throw err;
  }
  // Closed on the pool as well: the last close of a released file may flush (NFS) and wait.
  // Closing an O_PATH fd flushes nothing: that one is closed here, at once.
  const release = pathOnly ? (): void => closeQuietly(own) : (): void => nodefs.close(own, () => undefined);
  result.then(release, release);
  return result;
}
