/**
 * POSIX record locks and BSD flocks for the guest, taken on the host so that
 * two guests sharing a directory, or a guest and a host process, exclude each
 * other.
 *
 * POSIX locks become OFD locks (F_OFD_SETLK): they belong to an open file
 * description, not to the daemon's process, so each guest lock owner gets a
 * description of its own per inode. The owner is the guest process's files
 * table, so two handles a process holds on one file share their locks, as
 * POSIX wants; FLUSH (sent on every close) closes the owner's description,
 * which drops its locks, as close(2) does. An OFD lock's owner is the guest's
 * open file itself, which no FLUSH names: its locks go when the handle it
 * locked through is released (by then every POSIX owner's FLUSH has come).
 *
 * flock(2) locks belong to the open file, so they are taken on the handle's own
 * fd; releasing the handle closes it and drops them.
 *
 * Waiting (SETLKW) never blocks the event loop: the lock is tried without
 * waiting and tried again on a backoff timer until it is granted or the wait
 * is cancelled (FUSE_INTERRUPT, DESTROY), which answers EINTR.
 */
import {
  F_OFD_GETLK,
  F_OFD_SETLK,
  F_RDLCK,
  F_UNLCK,
  F_WRLCK,
  LOCK_EX,
  LOCK_NB,
  LOCK_SH,
  LOCK_UN,
  closeQuietly,
  fcntlLock,
  flock,
  type FileLock,
} from '../sys/fs';
import { Errno, errnoOf, fail, FuseError } from './errors';
import type { LockRange } from './filesystem';
import { OFFSET_MAX } from './protocol';

/**
 * Lock owners holding a description of one inode at a time. Each costs the
 * daemon an fd until the owner's FLUSH/RELEASE (or the inode's FORGET); a
 * guest inventing owners beyond this is answered ENOLCK, as a host kernel out
 * of lock records would.
 */
export const MAX_LOCK_OWNERS_PER_INODE = 256;

/** First retry of a waiting lock, and the longest pause between retries. */
const FIRST_RETRY_MS = 1;
const MAX_RETRY_MS = 50;

/** The guest's range as struct flock: [start, end] inclusive becomes start + length (0: to EOF). */
function toFileLock(lock: LockRange): FileLock {
  if (lock.type !== F_RDLCK && lock.type !== F_WRLCK && lock.type !== F_UNLCK) fail(Errno.EINVAL);
  if (lock.start > OFFSET_MAX || lock.end > OFFSET_MAX || lock.end < lock.start) fail(Errno.EINVAL);
  return { type: lock.type, start: lock.start, len: lock.end === OFFSET_MAX ? 0n : lock.end - lock.start + 1n };
}

/** A conflict can only be reported by range; the holder may be in another guest or on the host, so no pid. */
function toLockRange(fl: FileLock, asked: LockRange): LockRange {
  if (fl.type === F_UNLCK) return { ...asked, type: F_UNLCK, pid: 0 };
  return { type: fl.type, start: fl.start, end: fl.len === 0n ? OFFSET_MAX : fl.start + fl.len - 1n, pid: 0 };
}

function isConflict(err: unknown): boolean {
  const e = errnoOf(err);
  return e === Errno.EAGAIN || e === Errno.EACCES;
}

/**
 * Calls `attempt` until it returns true, pausing with exponential backoff;
 * rejects with EINTR when `signal` fires, or with whatever `attempt` throws.
 */
function retryUntil(attempt: () => boolean, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    let delay = FIRST_RETRY_MS;
    let timer: NodeJS.Timeout | undefined;
    const finish = (err?: unknown): void => {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      if (err === undefined) resolve();
      else reject(err);
    };
    const onAbort = (): void => finish(new FuseError(Errno.EINTR));
    const tick = (): void => {
      try {
        if (attempt()) return finish();
      } catch (err) {
        return finish(err);
      }
      delay = Math.min(delay * 2, MAX_RETRY_MS);
      timer = setTimeout(tick, delay);
    };
    if (signal.aborted) return onAbort();
    signal.addEventListener('abort', onAbort);
    timer = setTimeout(tick, delay);
  });
}

export class LockTable {
  /** nodeid -> lock owner -> the owner's own open file description of the inode. */
  private readonly owners = new Map<number, Map<bigint, number>>();
  /** Guest handle -> the owners that took locks through it (released with the handle). */
  private readonly ownersByHandle = new Map<number, { nodeid: number; owners: Set<bigint> }>();

  /** `openForLocks` opens a new description of the inode (readable, and writable if possible). */
  constructor(private readonly openForLocks: (nodeid: number) => number) {}

  /** Descriptions held for lock owners, for tests and diagnostics. */
  get fdCount(): number {
    let n = 0;
    for (const byOwner of this.owners.values()) n += byOwner.size;
    return n;
  }

  /** F_OFD_GETLK as `owner`: the first lock of anyone else that conflicts with `lock`. */
  getlk(nodeid: number, owner: bigint, lock: LockRange): LockRange {
    const fl = toFileLock(lock);
    if (fl.type === F_UNLCK) fail(Errno.EINVAL);
    return toLockRange(fcntlLock(this.ownerFd(nodeid, owner), F_OFD_GETLK, fl), lock);
  }

  /** F_OFD_SETLK as `owner`; with `wait`, retried until granted (see the module comment). */
  setlk(nodeid: number, fh: number, owner: bigint, lock: LockRange, wait: AbortSignal | null): void | Promise<void> {
    const fl = toFileLock(lock);
    if (fl.type === F_UNLCK) {
      // An owner without a description holds no locks: nothing to release.
      const fd = this.owners.get(nodeid)?.get(owner);
      if (fd !== undefined) fcntlLock(fd, F_OFD_SETLK, fl);
      return;
    }
    const attempt = (): boolean => {
      try {
        fcntlLock(this.ownerFd(nodeid, owner), F_OFD_SETLK, fl);
        this.noteHandle(nodeid, fh, owner);
        return true;
      } catch (err) {
        if (isConflict(err)) return false;
        throw err;
      }
    };
    if (attempt()) return;
    if (!wait) fail(Errno.EAGAIN);
    return retryUntil(attempt, wait);
  }

  /** flock(2) on a handle's fd (`fdOf` fails once the handle is gone); `type` is F_RDLCK/F_WRLCK/F_UNLCK. */
  flock(fdOf: () => number, type: number, wait: AbortSignal | null): void | Promise<void> {
    const op = type === F_RDLCK ? LOCK_SH : type === F_WRLCK ? LOCK_EX : type === F_UNLCK ? LOCK_UN : fail(Errno.EINVAL);
    const attempt = (): boolean => {
      try {
        flock(fdOf(), op | LOCK_NB);
        return true;
      } catch (err) {
        if (errnoOf(err) === Errno.EWOULDBLOCK) return false;
        throw err;
      }
    };
    if (attempt()) return;
    if (!wait) fail(Errno.EWOULDBLOCK);
    return retryUntil(attempt, wait);
  }

  /** The owner closed a file (FLUSH): its POSIX locks on the inode go, as with close(2). */
  releaseOwner(nodeid: number, owner: bigint): void {
    const byOwner = this.owners.get(nodeid);
    const fd = byOwner?.get(owner);
    if (fd === undefined) return;
    closeQuietly(fd);
    byOwner!.delete(owner);
    if (byOwner!.size === 0) this.owners.delete(nodeid);
  }

  /** A handle was released: the owners that locked through it lose their locks (see the module comment). */
  releaseHandle(fh: number): void {
    const entry = this.ownersByHandle.get(fh);
    if (!entry) return;
    this.ownersByHandle.delete(fh);
    for (const owner of entry.owners) this.releaseOwner(entry.nodeid, owner);
  }

  private noteHandle(nodeid: number, fh: number, owner: bigint): void {
    let entry = this.ownersByHandle.get(fh);
    if (!entry) this.ownersByHandle.set(fh, (entry = { nodeid, owners: new Set() }));
    entry.owners.add(owner);
  }

  /** The inode is forgotten: every owner's description of it is closed. */
  forgetInode(nodeid: number): void {
    for (const fd of this.owners.get(nodeid)?.values() ?? []) closeQuietly(fd);
    this.owners.delete(nodeid);
  }

  clear(): void {
    for (const nodeid of [...this.owners.keys()]) this.forgetInode(nodeid);
    this.ownersByHandle.clear();
  }

  private ownerFd(nodeid: number, owner: bigint): number {
    let byOwner = this.owners.get(nodeid);
    let fd = byOwner?.get(owner);
    if (fd !== undefined) return fd;
    if (byOwner && byOwner.size >= MAX_LOCK_OWNERS_PER_INODE) fail(Errno.ENOLCK);
    fd = this.openForLocks(nodeid);
    if (!byOwner) this.owners.set(nodeid, (byOwner = new Map()));
    byOwner.set(owner, fd);
    return fd;
  }
}
