/**
 * Whether a directory is still inside the shared directory: a host process
 * (or another VM sharing a directory above ours) may have moved a directory
 * the guest holds out of the share. Checked in our own code because there may
 * be no mount namespace around the daemon (--sandbox none).
 */
import {
  AT_EMPTY_PATH,
  AT_SYMLINK_NOFOLLOW,
  O_CLOEXEC,
  O_DIRECTORY,
  O_NOFOLLOW,
  O_PATH,
  STATX_INO,
  closeQuietly,
  openat,
  statx,
  type Stat,
} from '../sys/fs';
import { Errno, errnoOf } from './errors';

/**
 * Upward steps taken to see whether a directory is still inside the share
 * before answering that it is not: a bound on the work one request can cause.
 */
export const MAX_CLIMB = 4096;
/** The climb stats "..", "../..", ... from one fd, and moves that fd up every this many levels (PATH_MAX). */
const CLIMB_STRIDE = 256;
/** The empty path that, with AT_EMPTY_PATH, makes an *at call act on the dirfd itself. */
const EMPTY = Buffer.from([0]);

export class ShareBoundary {
  /** The share root's (st_dev, st_ino): what a climb through `..` must meet to stay inside. */
  private readonly rootId: string;

  constructor(rootStat: Stat) {
    this.rootId = devIno(rootStat);
  }

  /**
   * Whether the directory `fd` is the share's root or below it, now. Climbs
   * with `..` until it meets the root's (st_dev, st_ino) (inside), or a
   * directory that is its own parent, or one the kernel will not climb from
   * (ENOENT: disconnected under a bind mount) (outside).
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
