/**
 * Extended attributes of passthrough inodes (`--xattr`). Inodes are held as
 * O_PATH fds, which the f*xattr calls refuse, so an inode is named by its
 * /proc/self/fd/N magic link: the path calls resolve it to the inode itself,
 * symlinks and special files included, without opening it. The path is
 * resolved relative to the /proc/self/fd directory fd (the cwd is switched
 * there for the one call and back), never through an absolute /proc path a
 * sandbox might have hidden or replaced.
 *
 * Names pass through the `--xattrmap` rules. POSIX ACL xattrs are refused
 * unless `--posix-acl` was negotiated: without FUSE_POSIX_ACL the guest kernel
 * neither enforces nor expects them.
 */
import {
  AT_EMPTY_PATH,
  AT_FDCWD,
  O_CLOEXEC,
  O_DIRECTORY,
  O_PATH,
  S_ISGID,
  closeQuietly,
  fchdir,
  fchmodat,
  getxattr,
  listxattr,
  openat,
  removexattr,
  setxattr,
  statx,
} from '../sys/fs';
import { Errno, errnoOf, fail } from './errors';
import type { SecurityContext } from './filesystem';
import { XATTR_LIST_MAX, XATTR_SIZE_MAX } from './protocol';
import type { XattrMap } from './xattr-map';

const ACL_ACCESS = 'system.posix_acl_access';
const ACL_DEFAULT = 'system.posix_acl_default';
const NUL = Buffer.from([0]);
const EMPTY = NUL;

function withoutNul(name: Buffer): Buffer {
  return name[name.length - 1] === 0 ? name.subarray(0, name.length - 1) : name;
}

function withNul(name: Buffer): Buffer {
  return Buffer.concat([name, NUL]);
}

export class Xattrs {
  /** FUSE_POSIX_ACL was agreed at INIT. */
  posixAcl = false;
  /** The daemon's cwd, restored after each call. */
  private readonly cwdFd: number;

  constructor(
    private readonly procSelfFd: number,
    private readonly map: XattrMap | null,
  ) {
    this.cwdFd = openat(AT_FDCWD, '.', O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
  }

  close(): void {
    closeQuietly(this.cwdFd);
  }

  /** The value of `name` (NUL-terminated), or its length when `size` is 0. */
  get(fd: number, name: Buffer, size: number): number | Buffer {
    const hostName = this.hostName(name);
    if (size === 0) return this.at(fd, (path) => getxattr(path, hostName, null, 0));
    const value = Buffer.alloc(Math.min(size, XATTR_SIZE_MAX));
    const n = this.at(fd, (path) => getxattr(path, hostName, value, value.length));
    return value.subarray(0, n);
  }

  /** The NUL-separated names the guest may see, or the list's length when `size` is 0. */
  list(fd: number, size: number): number | Buffer {
    if (!this.map) {
      if (size === 0) return this.at(fd, (path) => listxattr(path, null, 0));
      const list = Buffer.alloc(Math.min(size, XATTR_LIST_MAX));
      return list.subarray(
        0,
        this.at(fd, (path) => listxattr(path, list, list.length)),
      );
    }
    // Mapped names have other lengths: read the host's whole list, then map it.
    const mapped: Buffer[] = [];
    for (const hostName of splitNames(this.hostList(fd))) {
      const guestName = this.map.toGuest(hostName);
      if (guestName) mapped.push(guestName, NUL);
    }
    const out = Buffer.concat(mapped);
    if (size === 0) return out.length;
    if (out.length > size) fail(Errno.ERANGE);
    return out;
  }

  /**
   * Sets `name` to `value`. `killSgid` (FUSE_SETXATTR_ACL_KILL_SGID): the guest
   * kernel found the caller may not keep the set-group-id bit when changing
   * the access ACL; the host cannot tell, since the daemon runs privileged.
   */
  set(fd: number, name: Buffer, value: Buffer, flags: number, killSgid: boolean): void {
    if (value.length > XATTR_SIZE_MAX) fail(Errno.E2BIG);
    const hostName = this.hostName(name);
    this.at(fd, (path) => setxattr(path, hostName, value, value.length, flags));
    if (killSgid && withoutNul(name).toString('latin1') === ACL_ACCESS) {
      const st = statx(fd, EMPTY, AT_EMPTY_PATH);
      if (st.mode & S_ISGID) fchmodat(this.procSelfFd, String(fd), st.mode & 0o7777 & ~S_ISGID, 0);
    }
  }

  remove(fd: number, name: Buffer): void {
    const hostName = this.hostName(name);
    this.at(fd, (path) => removexattr(path, hostName));
  }

  /** Puts the guest LSM's label on a new inode (FUSE_SECURITY_CTX), under its mapped name. */
  label(fd: number, secctx: SecurityContext): void {
    const hostName = this.map ? withNul(this.map.toHost(withoutNul(secctx.name))) : secctx.name;
    this.at(fd, (path) => setxattr(path, hostName, secctx.value, secctx.value.length, 0));
  }

  /** The host name for a guest name (NUL-terminated in and out); EPERM/ENOTSUP as the rules say. */
  private hostName(name: Buffer): Buffer {
    const bare = withoutNul(name);
    if (!this.posixAcl) {
      const s = bare.toString('latin1');
      if (s === ACL_ACCESS || s === ACL_DEFAULT) fail(Errno.EOPNOTSUPP);
    }
    return this.map ? withNul(this.map.toHost(bare)) : name;
  }

  /** The host's full list of names of the inode (it may grow between the size probe and the read). */
  private hostList(fd: number): Buffer {
    for (;;) {
      const size = this.at(fd, (path) => listxattr(path, null, 0));
      const list = Buffer.alloc(size);
      try {
        return list.subarray(0, size === 0 ? 0 : this.at(fd, (path) => listxattr(path, list, size)));
      } catch (err) {
        if (errnoOf(err) !== Errno.ERANGE) throw err;
      }
    }
  }

  /** Runs `fn` with the inode's name in /proc/self/fd, from inside that directory. */
  private at<T>(fd: number, fn: (path: string) => T): T {
    fchdir(this.procSelfFd);
    try {
      return fn(String(fd));
    } finally {
      fchdir(this.cwdFd);
    }
  }
}

function splitNames(list: Buffer): Buffer[] {
  const names: Buffer[] = [];
  for (let start = 0; start < list.length;) {
    let end = list.indexOf(0, start);
    if (end < 0) end = list.length;
    if (end > start) names.push(list.subarray(start, end));
    start = end + 1;
  }
  return names;
}
