/**
 * The inodes the guest holds references to. Each is identified by the host's
 * (st_dev, st_ino), so hard links and bind-mount loops share one nodeid, and
 * owns an O_PATH fd through which every later operation reaches it (no host
 * paths are kept). The guest's lookup count is kept exactly: FORGET brings it
 * to zero and the fd is closed. Node ids are never reused within a session,
 * so the generation is always 0.
 */
import type { Stat } from '../sys/fs';
import { S_IFMT, closeQuietly } from '../sys/fs';
import { Errno, fail } from './errors';
import { FUSE_ROOT_ID } from './protocol';

export interface Inode {
  readonly nodeid: number;
  /** O_PATH | O_NOFOLLOW fd of the inode itself. */
  readonly fd: number;
  /** S_IFMT bits: an inode's type never changes. */
  readonly type: number;
  readonly key: string;
  /** Lookups the guest has not yet forgotten. */
  refcount: number;
}

function keyOf(st: Stat): string {
  return `${st.devMajor}:${st.devMinor}:${st.ino}`;
}

export class InodeTable {
  private readonly byId = new Map<number, Inode>();
  private readonly byKey = new Map<string, Inode>();
  private nextId = FUSE_ROOT_ID + 1;
  readonly root: Inode;

  /** `rootFd` stays owned by the caller: the root is pinned and survives clear(). */
  constructor(rootFd: number, rootStat: Stat) {
    this.root = { nodeid: FUSE_ROOT_ID, fd: rootFd, type: rootStat.mode & S_IFMT, key: keyOf(rootStat), refcount: 1 };
    this.insert(this.root);
  }

  get size(): number {
    return this.byId.size;
  }

  /** The inode for `nodeid`; EBADF when the guest names one it does not hold. */
  get(nodeid: number): Inode {
    return this.byId.get(nodeid) ?? fail(Errno.EBADF);
  }

  /**
   * Counts one more lookup of the inode that `fd` (O_PATH, described by `st`)
   * refers to. Takes ownership of `fd`: it becomes the new inode's fd, or is
   * closed when the inode is already known.
   */
  adopt(fd: number, st: Stat): Inode {
    const key = keyOf(st);
    const known = this.byKey.get(key);
    if (known) {
      closeQuietly(fd);
      known.refcount++;
      return known;
    }
    const inode: Inode = { nodeid: this.nextId++, fd, type: st.mode & S_IFMT, key, refcount: 1 };
    this.insert(inode);
    return inode;
  }

  /** Drops `nlookup` references; at zero the inode is gone and its fd closed. The root is never dropped. */
  forget(nodeid: number, nlookup: number): void {
    const inode = this.byId.get(nodeid);
    if (!inode || inode === this.root) return;
    inode.refcount -= Math.min(nlookup, inode.refcount);
    if (inode.refcount === 0) this.remove(inode);
  }

  /** Drops every inode but the root and closes their fds. */
  clear(): void {
    for (const inode of this.byId.values()) {
      if (inode !== this.root) closeQuietly(inode.fd);
    }
    this.byId.clear();
    this.byKey.clear();
    this.root.refcount = 1;
    this.insert(this.root);
  }

  private insert(inode: Inode): void {
    this.byId.set(inode.nodeid, inode);
    this.byKey.set(inode.key, inode);
  }

  private remove(inode: Inode): void {
    this.byId.delete(inode.nodeid);
    this.byKey.delete(inode.key);
    closeQuietly(inode.fd);
  }
}
