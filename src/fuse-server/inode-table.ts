/**
 * The inodes the guest holds references to. Each is identified by the host's
 * (st_dev, st_ino, mount id), as virtiofsd does: hard links share one nodeid,
 * while the same file reached through two mounts (a bind mount inside the
 * share) gets two, so submounts can be announced per mount. An inode is
 * reached through its own O_PATH fd, or through a file handle when
 * `--inode-file-handles` is on (no host paths are kept either way). The
 * guest's lookup count is kept exactly: FORGET brings it to zero and the fd
 * is closed. Node ids are never reused within a session, so the generation is
 * always 0.
 */
import type { FileHandle, Stat } from '../sys/fs';
import { S_IFDIR, S_IFMT, closeQuietly } from '../sys/fs';
import { Errno, fail } from './errors';
import type { FileHandles } from './file-handles';
import { FUSE_ROOT_ID } from './protocol';

export interface Inode {
  readonly nodeid: number;
  /** O_PATH | O_NOFOLLOW fd of the inode itself; -1 when the inode is held by `handle`. */
  readonly fd: number;
  readonly handle: FileHandle | null;
  /** S_IFMT bits: an inode's type never changes. */
  readonly type: number;
  readonly key: string;
  /** st_dev as "major:minor" and the mount: a change of either below a directory is a submount. */
  readonly dev: string;
  readonly mntId: number;
  /** Lookups the guest has not yet forgotten. */
  refcount: number;
}

function devOf(st: Stat): string {
  return `${st.devMajor}:${st.devMinor}`;
}

function keyOf(st: Stat): string {
  return `${devOf(st)}:${st.ino}:${st.mntId}`;
}

export class InodeTable {
  private readonly byId = new Map<number, Inode>();
  private readonly byKey = new Map<string, Inode>();
  private nextId = FUSE_ROOT_ID + 1;
  /** O_PATH fds held by inodes, kept as a count so the fd budget costs nothing to check. */
  private fds = 0;
  readonly root: Inode;

  /**
   * `rootFd` stays owned by the caller: the root is pinned and survives
   * clear(). `handles` (optional) turns new inodes into file handles;
   * `onDrop` hears of every inode the guest forgets for good.
   */
  constructor(
    rootFd: number,
    rootStat: Stat,
    private readonly handles: FileHandles | null = null,
    private readonly onDrop: (inode: Inode) => void = () => undefined,
  ) {
    this.root = {
      nodeid: FUSE_ROOT_ID,
      fd: rootFd,
      handle: null,
      type: rootStat.mode & S_IFMT,
      key: keyOf(rootStat),
      dev: devOf(rootStat),
      mntId: rootStat.mntId,
      refcount: 1,
    };
    this.insert(this.root);
  }

  get size(): number {
    return this.byId.size;
  }

  /** O_PATH fds held by inodes (the root included). */
  get fdCount(): number {
    return this.fds;
  }

  /** The inode for `nodeid`; EBADF when the guest names one it does not hold. */
  get(nodeid: number): Inode {
    return this.byId.get(nodeid) ?? fail(Errno.EBADF);
  }

  /** The inode for `nodeid`, if the guest holds it. */
  find(nodeid: number): Inode | undefined {
    return this.byId.get(nodeid);
  }

  /**
   * Counts one more lookup of the inode that `fd` (O_PATH, described by `st`)
   * refers to. Takes ownership of `fd`: it becomes the new inode's fd, or is
   * closed when the inode is already known or is kept as a file handle.
   */
  adopt(fd: number, st: Stat): Inode {
    const key = keyOf(st);
    const known = this.byKey.get(key);
    if (known) {
      closeQuietly(fd);
      known.refcount++;
      return known;
    }
    const type = st.mode & S_IFMT;
    let handle: FileHandle | null = null;
    // An unlinked inode (O_TMPFILE, or removed meanwhile) cannot be opened by handle: keep its fd.
    if (this.handles && st.nlink > 0) {
      try {
        handle = this.handles.capture(fd, type === S_IFDIR);
      } catch (err) {
        closeQuietly(fd);
        throw err;
      }
    }
    if (handle) {
      closeQuietly(fd);
      fd = -1;
    }
    const inode: Inode = { nodeid: this.nextId++, fd, handle, type, key, dev: devOf(st), mntId: st.mntId, refcount: 1 };
    this.insert(inode);
    return inode;
  }

  /** Drops `nlookup` references; at zero the inode is gone and its fd closed. The root is never dropped. */
  forget(nodeid: number, nlookup: number): void {
    const inode = this.byId.get(nodeid);
    if (!inode || inode === this.root) return;
    inode.refcount -= Math.min(nlookup, inode.refcount);
    if (inode.refcount === 0) {
      this.remove(inode);
      this.onDrop(inode);
    }
  }

  /** Drops every inode but the root and closes their fds. */
  clear(): void {
    for (const inode of this.byId.values()) {
      if (inode !== this.root && inode.fd >= 0) closeQuietly(inode.fd);
    }
    this.byId.clear();
    this.byKey.clear();
    this.fds = 0;
    this.root.refcount = 1;
    this.insert(this.root);
  }

  private insert(inode: Inode): void {
    this.byId.set(inode.nodeid, inode);
    this.byKey.set(inode.key, inode);
    if (inode.fd >= 0) this.fds++;
  }

  private remove(inode: Inode): void {
    this.byId.delete(inode.nodeid);
    this.byKey.delete(inode.key);
    if (inode.fd >= 0) {
      closeQuietly(inode.fd);
      this.fds--;
    }
  }
}
