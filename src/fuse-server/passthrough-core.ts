/**
 * What every passthrough operation stands on: the inode and handle tables,
 * the way an inode is reached (its O_PATH fd, or its file handle reopened for
 * the request), the guest's view of attributes (id translation, submount and
 * DAX flags), the caller's credentials, and what INIT agreed on.
 */
import {
  AT_EMPTY_PATH,
  AT_FDCWD,
  AT_SYMLINK_NOFOLLOW,
  O_CLOEXEC,
  O_DIRECTORY,
  O_NOFOLLOW,
  O_PATH,
  S_IFDIR,
  S_IFLNK,
  S_IFREG,
  STATX_INO,
  closeQuietly,
  getNofileLimit,
  openat,
  statx,
  type Stat,
} from '../sys/fs';
import { cachePolicy, type CachePolicy } from './cache-policy';
import { Credentials, type HostIds } from './credentials';
import { Errno, errnoOf, fail } from './errors';
import { FileHandles } from './file-handles';
import type { AttrReply, Context, Entry } from './filesystem';
import { HandleTable } from './handle-table';
import { IdMap } from './id-map';
import { type Inode, InodeTable } from './inode-table';
import type { PassthroughOptions } from './passthrough-options';
import { Xattrs } from './passthrough-xattr';
import { FUSE_ATTR_SUBMOUNT, FUSE_DONT_MASK, FUSE_SUBMOUNTS } from './protocol';

/** The empty path that, with AT_EMPTY_PATH, makes an *at call act on the dirfd itself. */
export const EMPTY = Buffer.from([0]);
const DOTDOT = Buffer.from('..\0');

/**
 * fds below RLIMIT_NOFILE kept for the daemon itself (sockets, eventfds,
 * memory regions, transient fds of a request), as the Rust virtiofsd keeps
 * about 512 in reserve: the guest may hold the rest.
 */
export const FD_RESERVE = 512;

/** The fds a guest may hold when the soft RLIMIT_NOFILE is `soft`: the reserve off, and never more than half of a small limit. */
export function fdBudgetFor(soft: number): number {
  return Math.max(soft - FD_RESERVE, Math.floor(soft / 2));
}

/**
 * Upward steps taken to see whether a directory is still inside the share
 * before answering that it is not: a bound on the work one request can cause.
 */
export const MAX_CLIMB = 4096;
/** The climb stats "..", "../..", ... from one fd, and moves that fd up every this many levels (PATH_MAX). */
const CLIMB_STRIDE = 256;

export class PassthroughCore {
  readonly policy: CachePolicy;
  readonly credentials = new Credentials();
  /** /proc/self/fd, through which an inode's O_PATH fd is reopened for I/O. */
  readonly procSelfFd: number;
  readonly inodes: InodeTable;
  readonly handles = new HandleTable();
  readonly fileHandles: FileHandles | null = null;
  /** Extended attributes, when enabled (--xattr, or implied by xattrmap, posix-acl, security-label). */
  readonly xattrs: Xattrs | null = null;
  readonly uidMap: IdMap;
  readonly gidMap: IdMap;
  readonly log: NonNullable<PassthroughOptions['log']>;
  /** FUSE_* flags INIT agreed on (bits 0..31). */
  negotiated = 0;
  /** FUSE_ATTR_* flags the DAX policy adds to a file's attributes. */
  daxFlags: (st: Stat) => number = () => 0;
  /** fds opened from file handles for the request being served; closed by endRequest(). */
  private readonly scratchFds: number[] = [];
  /** How many fds the guest's inodes, handles and lock descriptions may hold together (see reserveFds). */
  readonly fdBudget: number;
  /** fds held for the guest outside the inode and handle tables (lock descriptions); set by the owner of those. */
  extraFds: () => number = () => 0;
  /** The share root's (st_dev, st_ino): what a climb through `..` must meet to stay inside. */
  private readonly rootId: string;

  /** Opens the shared directory; throws if it cannot be served. */
  constructor(
    readonly options: PassthroughOptions,
    onDrop: (inode: Inode) => void,
  ) {
    this.log = options.log ?? (() => undefined);
    this.policy = cachePolicy(options.cache, options.timeout);
    this.uidMap = options.uidMap ?? new IdMap();
    this.gidMap = options.gidMap ?? new IdMap();
    this.fdBudget = options.fdBudget ?? fdBudgetFor(getNofileLimit().soft);
    // Inside the sandbox /proc is out of reach: the sandbox hands over the fd it kept (ours from now on).
    this.procSelfFd = options.procSelfFd ?? openat(AT_FDCWD, '/proc/self/fd', O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
    let rootFd = -1;
    try {
      rootFd = openat(AT_FDCWD, options.sharedDir, O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
      this.fileHandles = FileHandles.open(options.inodeFileHandles ?? 'never', rootFd, (msg) => this.log('warn', msg));
      const rootStat = this.hostStat(rootFd);
      this.rootId = devIno(rootStat);
      this.inodes = new InodeTable(rootFd, rootStat, this.fileHandles, onDrop);
      const o = options;
      if (o.xattr || o.xattrmap || o.posixAcl || o.securityLabel) this.xattrs = new Xattrs(this.procSelfFd, o.xattrmap ?? null);
    } catch (err) {
      this.fileHandles?.close();
      if (rootFd >= 0) closeQuietly(rootFd);
      closeQuietly(this.procSelfFd);
      throw err;
    }
  }

  has(flag: number): boolean {
    return (this.negotiated & flag) !== 0;
  }

  /** DESTROY: every inode and handle of the guest goes. */
  clear(): void {
    this.endRequest();
    this.handles.clear();
    this.inodes.clear();
    this.fileHandles?.clear();
    this.negotiated = 0;
  }

  endRequest(): void {
    for (const fd of this.scratchFds) closeQuietly(fd);
    this.scratchFds.length = 0;
  }

  close(): void {
    this.clear();
    this.xattrs?.close();
    this.fileHandles?.close();
    closeQuietly(this.inodes.root.fd);
    closeQuietly(this.procSelfFd);
  }

  /* ---------------- reaching inodes ---------------- */

  /**
   * An O_PATH fd of the inode, valid until the request ends: its own, or one
   * opened from its file handle. An unlinked file can no longer be opened by
   * handle; an open handle of it still reaches it.
   */
  fdOf(inode: Inode): number {
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
  heldFds(): number {
    return this.inodes.fdCount + this.handles.fdCount + this.extraFds();
  }

  /**
   * EMFILE, before anything is opened, when `n` more fds held for the guest
   * would go past the budget: a guest that opens or looks up without end runs
   * out of its own allowance, never of the daemon's descriptors (which the
   * front-end's next message carrying an fd would need).
   */
  reserveFds(n = 1): void {
    if (this.heldFds() + n > this.fdBudget) fail(Errno.EMFILE);
  }

  /* ---------------- staying inside the share ---------------- */

  /**
   * Whether the directory `fd` is the share's root or below it, now: a host
   * process (or another VM sharing a directory above ours) may have moved a
   * directory the guest holds out of the share. Climbs with `..` until it
   * meets the root's (st_dev, st_ino) (inside), or a directory that is its own
   * parent, or one the kernel will not climb from (ENOENT: disconnected under a
   * bind mount) (outside). This is checked in our own code because there may
   * be no mount namespace around the daemon (--sandbox none).
   */
  isInside(fd: number): boolean {
    let prev = devIno(statx(fd, EMPTY, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_INO));
    if (prev === this.rootId) return true;
    // One statx per level ("..", "../..", ...: the kernel walks the dcache), no fd opened per level.
    let anchor = fd;
    try {
      for (let depth = 1; depth <= MAX_CLIMB; depth++) {
        const k = ((depth - 1) % CLIMB_STRIDE) + 1;
        const up = climbPath(k);
        let id: string;
        try {
          id = devIno(statx(anchor, up, AT_SYMLINK_NOFOLLOW, STATX_INO));
          if (k === CLIMB_STRIDE) {
            const next = openat(anchor, up, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0);
            if (anchor !== fd) closeQuietly(anchor);
            anchor = next;
          }
        } catch (err) {
          // A path disconnected from its bind mount: the kernel will not climb it.
          if (errnoOf(err) === Errno.ENOENT) return false;
          throw err;
        }
        if (id === this.rootId) return true;
        // The top of our file-system tree is its own parent: the climb never met the root.
        if (id === prev) return false;
        prev = id;
      }
      // Deeper than any share we serve sensibly: not proven inside, so treated as outside.
      return false;
    } finally {
      if (anchor !== fd) closeQuietly(anchor);
    }
  }

  /**
   * ENOENT unless the directory inode is still inside the share: the check
   * before a name is made, removed or moved in it (a directory moved out by
   * the host is no longer part of this file system, as if it were removed).
   */
  requireInside(dir: Inode): void {
    if (dir !== this.inodes.root && !this.isInside(this.fdOf(dir))) fail(Errno.ENOENT);
  }

  /**
   * LOOKUP of `..` in `dir`: the parent, only if it is inside the share. At the
   * root it is the root (the guest cannot climb out by name); a parent outside
   * answers ENOENT, as the kernel does for a path disconnected from a bind mount.
   */
  lookupParent(dir: Inode): Entry {
    if (dir === this.inodes.root) {
      dir.refcount++;
      return this.entry(dir, this.hostStat(dir.fd), 0);
    }
    this.reserveFds();
    const fd = openat(this.fdOf(dir), DOTDOT, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0);
    let inside: boolean;
    try {
      inside = this.isInside(fd);
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
  reopen(inode: Inode, flags: number): number {
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
  procName(inode: Inode): string {
    return String(this.fdOf(inode));
  }

  /**
   * Only regular files are opened for I/O: opening a FIFO would block the whole
   * daemon and opening a device node would hand the guest a host device.
   */
  requireRegular(inode: Inode): void {
    requireRegularType(inode.type);
  }

  /* ---------------- attributes and lookups ---------------- */

  /** The host's view of an inode: identity (dev, ino, mount) and ids as stored. */
  hostStat(fd: number): Stat {
    return statx(fd, EMPTY, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
  }

  /** The guest's view: owner and group translated by --translate-uid/gid. */
  guestStat(st: Stat): Stat {
    if (this.uidMap.identity && this.gidMap.identity) return st;
    return { ...st, uid: this.uidMap.toGuest(st.uid), gid: this.gidMap.toGuest(st.gid) };
  }

  attrReply(hostStat: Stat): AttrReply {
    const stat = this.guestStat(hostStat);
    return { stat, timeout: this.policy.timeout, attrFlags: this.daxFlags(stat) };
  }

  entry(inode: Inode, hostStat: Stat, attrFlags: number): Entry {
    const stat = this.guestStat(hostStat);
    const t = this.policy.timeout;
    return { nodeid: inode.nodeid, generation: 0, stat, entryTimeout: t, attrTimeout: t, attrFlags: attrFlags | this.daxFlags(stat) };
  }

  /** Looks `name` (one component, not `..`: see lookupParent) up in `dir` and counts the lookup. */
  lookupAt(dir: Inode, name: Buffer): Entry {
    this.reserveFds();
    return this.adopt(openat(this.fdOf(dir), name, O_PATH | O_NOFOLLOW | O_CLOEXEC, 0), dir);
  }

  /**
   * Registers the O_PATH `fd` (taking ownership) as a looked-up inode, found in
   * `parent`. `stat` is the host's stat of `fd` when the caller already has it.
   */
  adopt(fd: number, parent: Inode | null, stat?: Stat): Entry {
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
  labelled(ctx: Context, entry: Entry, remove: () => void): Entry {
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
  asCaller<T>(ctx: Context, umask: number, fn: () => T): T {
    const ids: HostIds = { uid: this.uidMap.toHost(ctx.uid), gid: this.gidMap.toHost(ctx.gid) };
    return this.credentials.asCaller(ids, this.has(FUSE_DONT_MASK) ? umask : 0, fn);
  }
}

const climbPaths: Buffer[] = [];
/** "..", "../..", ... `k` levels up, NUL-terminated. */
function climbPath(k: number): Buffer {
  return (climbPaths[k] ??= Buffer.from(`${Array(k).fill('..').join('/')}\0`));
}

/** A directory's identity for the climb: the file system and the inode, whatever mount it is reached through. */
function devIno(st: Stat): string {
  return `${st.devMajor}:${st.devMinor}:${st.ino}`;
}

/** requireRegular() for an S_IFMT type: EISDIR for a directory, EINVAL for anything else not regular. */
export function requireRegularType(type: number): void {
  if (type === S_IFDIR) fail(Errno.EISDIR);
  if (type !== S_IFREG) fail(Errno.EINVAL);
}
