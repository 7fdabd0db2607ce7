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
 * This class is the FileSystem face: INIT negotiation, names, attributes and
 * directories. The rest lives by concern: passthrough-core (inodes, handles,
 * credentials), passthrough-files (open files), passthrough-xattr,
 * passthrough-locks and passthrough-dax.
 */
import {
  AT_EMPTY_PATH,
  AT_REMOVEDIR,
  AT_STATX_SYNC_TYPE,
  AT_SYMLINK_FOLLOW,
  AT_SYMLINK_NOFOLLOW,
  O_CLOEXEC,
  O_DIRECTORY,
  O_NONBLOCK,
  O_RDONLY,
  O_RDWR,
  S_IFDIR,
  S_IFMT,
  SEEK_SET,
  UTIME_NOW,
  UTIME_OMIT,
  fchmod,
  fchmodat,
  fchownat,
  fstatvfs,
  futimens,
  getdents,
  linkat,
  lseek,
  mkdirat,
  mknodat,
  readlinkat,
  renameat2,
  statx,
  symlinkat,
  unlinkat,
  utimensat,
  type StatVfs,
  type TimeSpec,
  R_OK,
  W_OK,
  X_OK,
} from '../sys/fs';
import type { Reader, Writer } from './chain-io';
import { Errno, errnoOf, fail } from './errors';
import {
  type AttrReply,
  type Capabilities,
  type Context,
  type DirSink,
  type Entry,
  FileSystem,
  type InitInfo,
  type LockRange,
  type Opened,
  type SetattrArgs,
  type SetupMapping,
  type WindowRange,
} from './filesystem';
import type { Inode } from './inode-table';
import { isDot, isDotDot } from './names';
import { EMPTY, PassthroughCore } from './passthrough-core';
import { DaxSupport, SETUPMAPPING_NO_FH } from './passthrough-dax';
import { FileOps } from './passthrough-files';
import { LockTable } from './passthrough-locks';
import type { PassthroughOptions } from './passthrough-options';
import type { Xattrs } from './passthrough-xattr';
import {
  FUSE_ASYNC_DIO,
  FUSE_ASYNC_READ,
  FUSE_ATOMIC_O_TRUNC,
  FUSE_AUTO_INVAL_DATA,
  FUSE_BIG_WRITES,
  FUSE_DO_READDIRPLUS,
  FUSE_DONT_MASK,
  FUSE_EXPORT_SUPPORT,
  FUSE_FLOCK_LOCKS,
  FUSE_HANDLE_KILLPRIV_V2,
  FUSE_PARALLEL_DIROPS,
  FUSE_POSIX_ACL,
  FUSE_POSIX_LOCKS,
  FUSE_READDIRPLUS_AUTO,
  FUSE_SECURITY_CTX_FLAGS2,
  FUSE_SETXATTR_ACL_KILL_SGID,
  FUSE_SETXATTR_EXT,
  FUSE_SUBMOUNTS,
  FUSE_WRITEBACK_CACHE,
  PATH_MAX,
} from './protocol';

export type { PassthroughOptions } from './passthrough-options';

/** getdents64 batch: enough for a full READDIR page of long names. */
const DIRENT_BUFFER_SIZE = 32 * 1024;
/** chown's "leave unchanged". */
const NO_ID = 0xffffffff;

export class PassthroughFs extends FileSystem {
  private readonly core: PassthroughCore;
  private readonly files: FileOps;
  private readonly locks: LockTable;
  private readonly dax: DaxSupport | null;
  private readonly dirents = Buffer.alloc(DIRENT_BUFFER_SIZE);
  private readonly linkTarget = Buffer.alloc(PATH_MAX);

  /** Opens the shared directory; throws if it cannot be served. */
  constructor(private readonly options: PassthroughOptions) {
    super();
    // The guest kernel has applied the guest's umask to every mode it sends; the host's must not
    // apply a second time (virtiofsd clears it at start-up too).
    process.umask(0);
    this.core = new PassthroughCore(options, (inode) => this.dropped(inode));
    this.locks = new LockTable((nodeid) => this.openForLocks(nodeid));
    this.files = new FileOps(this.core, this.locks);
    this.core.extraFds = () => this.locks.fdCount;
    this.dax = options.dax
      ? new DaxSupport({ ...options.dax, readonlyShare: options.readonly === true }, (msg) => this.core.log('warn', msg))
      : null;
    if (this.dax) this.core.daxFlags = (st) => this.dax!.attrFlags(st);
  }

  /** Inodes currently held (the root included). */
  get inodeCount(): number {
    return this.core.inodes.size;
  }

  /** Handles currently open. */
  get handleCount(): number {
    return this.core.handles.size;
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
    if (this.core.xattrs) flags |= FUSE_SETXATTR_EXT;
    if (o.posixAcl) flags |= FUSE_POSIX_ACL | FUSE_DONT_MASK;
    if (o.securityLabel) flags2 |= FUSE_SECURITY_CTX_FLAGS2;
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
      this.core.log('error', '--posix-acl: the guest kernel does not offer FUSE_POSIX_ACL');
      fail(Errno.EPROTO);
    }
    if (o.securityLabel && !(info.flags2 & FUSE_SECURITY_CTX_FLAGS2)) {
      this.core.log('error', '--security-label: the guest kernel does not offer FUSE_SECURITY_CTX');
      fail(Errno.EPROTO);
    }
    const optional: [boolean | undefined, number, string][] = [
      [o.writeback, FUSE_WRITEBACK_CACHE, '--writeback'],
      [o.killprivV2, FUSE_HANDLE_KILLPRIV_V2, '--killpriv-v2'],
      [o.announceSubmounts, FUSE_SUBMOUNTS, '--announce-submounts'],
    ];
    for (const [wanted, flag, option] of optional) {
      if (wanted && !(info.flags & flag)) this.core.log('warn', `${option}: the guest kernel does not support it; off`);
    }
    this.core.negotiated = info.flags;
    if (this.core.xattrs) this.core.xattrs.posixAcl = (info.flags & FUSE_POSIX_ACL) !== 0;
    this.dax?.init(info.flags2);
  }

  override destroy(): void {
    this.locks.clear();
    this.core.clear();
    this.dax?.destroy();
  }

  override endRequest(): void {
    this.core.endRequest();
  }

  /** Releases everything, the root and /proc/self/fd included. The object is unusable afterwards. */
  close(): void {
    this.locks.clear();
    this.core.close();
  }

  /* ---------------- names and attributes ---------------- */

  override lookup(ctx: Context, parent: number, name: Buffer): Entry {
    const { core } = this;
    const dir = core.inodes.get(parent);
    if (isDotDot(name)) return core.lookupParent(dir);
    return core.lookupAt(dir, name);
  }

  override forget(nodeid: number, nlookup: number): void {
    this.core.inodes.forget(nodeid, nlookup);
  }

  override getattr(ctx: Context, nodeid: number, fh: number | undefined): AttrReply {
    return this.core.attrReply(this.core.hostStat(this.statFd(nodeid, fh)));
  }

  override statx(ctx: Context, nodeid: number, fh: number | undefined, flags: number): AttrReply {
    return this.core.attrReply(statx(this.statFd(nodeid, fh), EMPTY, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW | (flags & AT_STATX_SYNC_TYPE)));
  }

  override setattr(ctx: Context, nodeid: number, args: SetattrArgs): AttrReply {
    const { core } = this;
    const inode = core.inodes.get(nodeid);
    // With an open handle (FATTR_FH) the change goes through it: it still works once the name is gone.
    const handle = args.fh !== undefined ? core.handles.getAny(args.fh, nodeid) : undefined;
    if (args.mode !== undefined) {
      if (handle) fchmod(handle.fd, args.mode & 0o7777);
      else fchmodat(core.procSelfFd, core.procName(inode), args.mode & 0o7777, 0);
    }
    if (args.uid !== undefined || args.gid !== undefined) {
      const uid = args.uid === undefined ? NO_ID : core.uidMap.toHost(args.uid);
      const gid = args.gid === undefined ? NO_ID : core.gidMap.toHost(args.gid);
      fchownat(handle?.fd ?? core.fdOf(inode), EMPTY, uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
    }
    if (args.size !== undefined) this.files.truncate(inode, handle, args.size, args.killSuidgid ?? false);
    if (args.atime !== undefined || args.mtime !== undefined) {
      const [atime, mtime] = [timeSpec(args.atime), timeSpec(args.mtime)];
      if (handle) futimens(handle.fd, atime, mtime);
      else utimensat(core.procSelfFd, core.procName(inode), atime, mtime, 0);
    }
    return this.getattr(ctx, nodeid, handle?.fh);
  }

  override readlink(ctx: Context, nodeid: number): Buffer {
    const n = readlinkat(this.core.fdOf(this.core.inodes.get(nodeid)), EMPTY, this.linkTarget, this.linkTarget.length);
    return Buffer.from(this.linkTarget.subarray(0, n));
  }

  override access(ctx: Context, nodeid: number, mask: number): void {
    const st = this.core.guestStat(this.core.hostStat(this.core.fdOf(this.core.inodes.get(nodeid))));
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
    return fstatvfs(this.core.fdOf(this.core.inodes.get(nodeid)));
  }

  /* ---------------- creating and removing names ---------------- */

  override mkdir(ctx: Context, parent: number, name: Buffer, mode: number, umask: number): Entry {
    return this.created(ctx, parent, name, AT_REMOVEDIR, (dirFd) => this.core.asCaller(ctx, umask, () => mkdirat(dirFd, name, mode)));
  }

  override mknod(ctx: Context, parent: number, name: Buffer, mode: number, rdev: number, umask: number): Entry {
    // fuse_mknod_in.rdev is the kernel's 32-bit device encoding, which glibc's makedev()
    // produces bit for bit for every 12-bit major / 20-bit minor.
    return this.created(ctx, parent, name, 0, (dirFd) => this.core.asCaller(ctx, umask, () => mknodat(dirFd, name, mode, rdev)));
  }

  override symlink(ctx: Context, target: Buffer, parent: number, name: Buffer): Entry {
    return this.created(ctx, parent, name, 0, (dirFd) => this.core.asCaller(ctx, 0, () => symlinkat(target, dirFd, name)));
  }

  override link(ctx: Context, nodeid: number, newParent: number, newName: Buffer): Entry {
    const { core } = this;
    const inode = core.inodes.get(nodeid);
    const dir = core.inodes.get(newParent);
    core.requireInside(dir);
    // The new name's lookup keeps an fd: refused before the name is made.
    core.reserveFds();
    // Through /proc rather than AT_EMPTY_PATH, which would need CAP_DAC_READ_SEARCH.
    linkat(core.procSelfFd, core.procName(inode), core.fdOf(dir), newName, AT_SYMLINK_FOLLOW);
    return core.lookupAt(dir, newName);
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

  override open(ctx: Context, nodeid: number, flags: number, openFlags: number): Opened {
    return this.files.open(nodeid, flags, openFlags);
  }
  override create(
    ctx: Context,
    parent: number,
    name: Buffer,
    mode: number,
    flags: number,
    umask: number,
    openFlags: number,
  ): [Entry, Opened] {
    return this.files.create(ctx, this.core.inodes.get(parent), name, mode, flags, umask, openFlags);
  }
  override tmpfile(ctx: Context, parent: number, mode: number, flags: number, umask: number): [Entry, Opened] {
    return this.files.tmpfile(ctx, this.core.inodes.get(parent), mode, flags, umask);
  }
  override read(ctx: Context, nodeid: number, fh: number, into: Writer, size: number, offset: number): number | Promise<number> {
    return this.files.read(nodeid, fh, into, size, offset);
  }
  override write(
    ctx: Context,
    nodeid: number,
    fh: number,
    from: Reader,
    size: number,
    offset: number,
    writeFlags: number,
    fileFlags: number,
  ): number | Promise<number> {
    return this.files.write(nodeid, fh, from, size, offset, writeFlags, fileFlags);
  }
  override flush(ctx: Context, nodeid: number, fh: number, lockOwner: bigint): void {
    this.files.flush(nodeid, fh, lockOwner);
  }
  override fsync(ctx: Context, nodeid: number, fh: number, datasync: boolean): void | Promise<void> {
    return this.files.fsync(nodeid, fh, datasync, 'file');
  }
  override release(ctx: Context, nodeid: number, fh: number, flags: number, releaseFlags: number, lockOwner: bigint): void {
    this.files.release(nodeid, fh, releaseFlags, lockOwner);
  }
  override fallocate(ctx: Context, nodeid: number, fh: number, offset: number, length: number, mode: number): void | Promise<void> {
    return this.files.fallocate(nodeid, fh, offset, length, mode);
  }
  override lseek(ctx: Context, nodeid: number, fh: number, offset: bigint, whence: number): bigint {
    return this.files.lseek(nodeid, fh, offset, whence);
  }
  override copyFileRange(
    ctx: Context,
    nodeidIn: number,
    fhIn: number,
    offIn: number,
    nodeidOut: number,
    fhOut: number,
    offOut: number,
    len: number,
    flags: number,
  ): number | Promise<number> {
    return this.files.copyFileRange(nodeidIn, fhIn, offIn, nodeidOut, fhOut, offOut, len, flags);
  }
  override syncfs(ctx: Context, nodeid: number): void | Promise<void> {
    return this.files.syncfs(this.core.inodes.get(nodeid));
  }

  /* ---------------- directories ---------------- */

  override opendir(ctx: Context, nodeid: number): Opened {
    const { core } = this;
    const inode = core.inodes.get(nodeid);
    if (inode.type !== S_IFDIR) fail(Errno.ENOTDIR);
    const fd = core.reopen(inode, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    return { fh: core.handles.insert(fd, nodeid, 'dir').fh, openFlags: core.policy.dirOpenFlags };
  }

  override readdir(ctx: Context, nodeid: number, fh: number, offset: bigint, sink: DirSink): void {
    const { core } = this;
    const dir = core.inodes.get(nodeid);
    const fd = core.handles.get(fh, nodeid, 'dir').fd;
    let added = 0;
    // The cookie is an off_t the host gave us earlier; it went to the guest as a u64.
    lseek(fd, BigInt.asIntN(64, offset), SEEK_SET);
    for (const entry of getdents(fd, this.dirents)) {
      let looked: Entry | null = null;
      if (sink.plus && !isDot(entry.cname) && !isDotDot(entry.cname)) {
        try {
          looked = core.lookupAt(dir, entry.cname);
        } catch (err) {
          // Removed since getdents: leave it out. Any other failure ends the listing here,
          // or fails it when nothing was listed yet.
          if (errnoOf(err) === Errno.ENOENT) continue;
          if (added > 0) return;
          throw err;
        }
      }
      if (!sink.add(entry, looked)) {
        if (looked) core.inodes.forget(looked.nodeid, 1);
        return;
      }
      added++;
    }
  }

  override releasedir(ctx: Context, nodeid: number, fh: number): void {
    this.core.handles.release(fh, nodeid, 'dir');
  }

  override fsyncdir(ctx: Context, nodeid: number, fh: number, datasync: boolean): void | Promise<void> {
    return this.files.fsync(nodeid, fh, datasync, 'dir');
  }

  /* ---------------- extended attributes ---------------- */

  override setxattr(ctx: Context, nodeid: number, name: Buffer, value: Buffer, flags: number, setxattrFlags: number): void {
    this.xattrs().set(this.inodeFd(nodeid), name, value, flags, (setxattrFlags & FUSE_SETXATTR_ACL_KILL_SGID) !== 0);
  }
  override getxattr(ctx: Context, nodeid: number, name: Buffer, size: number): number | Buffer {
    return this.xattrs().get(this.inodeFd(nodeid), name, size);
  }
  override listxattr(ctx: Context, nodeid: number, size: number): number | Buffer {
    return this.xattrs().list(this.inodeFd(nodeid), size);
  }
  override removexattr(ctx: Context, nodeid: number, name: Buffer): void {
    this.xattrs().remove(this.inodeFd(nodeid), name);
  }

  /* ---------------- locks ---------------- */

  override getlk(ctx: Context, nodeid: number, fh: number, owner: bigint, lock: LockRange): LockRange {
    if (!this.core.has(FUSE_POSIX_LOCKS)) fail(Errno.ENOSYS);
    this.core.handles.get(fh, nodeid, 'file');
    return this.locks.getlk(nodeid, owner, lock);
  }

  override setlk(
    ctx: Context,
    nodeid: number,
    fh: number,
    owner: bigint,
    lock: LockRange,
    flock: boolean,
    wait: AbortSignal | null,
  ): void | Promise<void> {
    const { handles } = this.core;
    if (!this.core.has(flock ? FUSE_FLOCK_LOCKS : FUSE_POSIX_LOCKS)) fail(Errno.ENOSYS);
    const handle = handles.get(fh, nodeid, 'file');
    if (!flock) return this.locks.setlk(nodeid, fh, owner, lock, wait);
    // A waiting flock re-checks its handle on each try: once released, its fd number may be reused.
    return this.locks.flock(() => (handles.has(handle.fh) ? handle.fd : fail(Errno.EBADF)), lock.type, wait);
  }

  /* ---------------- DAX ---------------- */

  override setupmapping(ctx: Context, nodeid: number, fh: bigint, mapping: SetupMapping): Promise<void> {
    if (!this.dax) fail(Errno.ENOSYS);
    const inode = this.core.inodes.get(nodeid);
    this.core.requireRegular(inode);
    const writable = DaxSupport.writable(mapping);
    if (fh !== SETUPMAPPING_NO_FH) {
      // A named handle must be a file open on this inode, with the access the mapping needs.
      const handle = this.core.handles.get(fh <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(fh) : 0, nodeid, 'file');
      return this.dax.setup(nodeid, DaxSupport.handleFd(handle, writable), mapping);
    }
    // The daemon opens as root: a writable mapping is checked against the caller like ACCESS(W_OK).
    if (writable) this.access(ctx, nodeid, W_OK);
    // Linux names the file by nodeid (fh is -1): open it as the mapping needs.
    const fd = this.dax.openForMapping((flags) => this.core.reopen(inode, flags), writable);
    return this.dax.setup(nodeid, fd, mapping);
  }

  override removemapping(ctx: Context, ranges: WindowRange[]): Promise<void> {
    if (!this.dax) fail(Errno.ENOSYS);
    return this.dax.remove(ranges);
  }

  /* ---------------- helpers ---------------- */

  private xattrs(): Xattrs {
    return this.core.xattrs ?? fail(Errno.ENOSYS);
  }

  private inodeFd(nodeid: number): number {
    return this.core.fdOf(this.core.inodes.get(nodeid));
  }

  /** The fd of directory `nodeid`, once checked to be inside the share (ENOENT otherwise). */
  private insideDirFd(nodeid: number): number {
    const dir = this.core.inodes.get(nodeid);
    this.core.requireInside(dir);
    return this.core.fdOf(dir);
  }

  /** What GETATTR/STATX stat: the open handle when the guest names one, else the inode. */
  private statFd(nodeid: number, fh: number | undefined): number {
    const inode = this.core.inodes.get(nodeid);
    return fh !== undefined ? this.core.handles.getAny(fh, nodeid).fd : this.core.fdOf(inode);
  }

  /**
   * A name just made in `parent` by `make(dirFd)`: looked up and labelled.
   * `removeFlags` are unlinkat's for taking it away if the label fails.
   */
  private created(ctx: Context, parent: number, name: Buffer, removeFlags: number, make: (dirFd: number) => void): Entry {
    const { core } = this;
    const dir = core.inodes.get(parent);
    core.requireInside(dir);
    core.reserveFds();
    make(core.fdOf(dir));
    return core.labelled(ctx, core.lookupAt(dir, name), () => unlinkat(core.fdOf(dir), name, removeFlags));
  }

  /** A description of the inode for one lock owner: writable if it can be, so write locks work. */
  private openForLocks(nodeid: number): number {
    const inode = this.core.inodes.get(nodeid);
    try {
      return this.core.reopen(inode, O_RDWR | O_CLOEXEC | O_NONBLOCK);
    } catch (err) {
      const e = errnoOf(err);
      if (e !== Errno.EACCES && e !== Errno.EROFS && e !== Errno.ETXTBSY && e !== Errno.EPERM) throw err;
      return this.core.reopen(inode, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
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
