/**
 * Open files and directories the guest holds a handle (fh) to. The table owns
 * each handle's fds: removing a handle closes them.
 */
import { O_RDONLY, O_RDWR, O_WRONLY, closeQuietly } from '../sys/fs';
import { Errno, fail } from './errors';

export type HandleKind = 'file' | 'dir';

export interface Handle {
  readonly fh: number;
  /** A regular fd (never O_PATH): reads, writes, getdents, fsync go through it. */
  readonly fd: number;
  readonly nodeid: number;
  readonly kind: HandleKind;
  /**
   * The access mode `fd` was opened with (O_RDONLY, O_WRONLY or O_RDWR), fixed
   * at open: no per-request flag of the guest widens it.
   */
  readonly access: number;
  /**
   * For files the guest opened O_APPEND: a second fd with O_APPEND, for the
   * guest's own appending writes. `fd` lacks it, because write-back of mmap'd
   * pages must land at the offsets the guest names. Opened on the first such
   * write (the guest may set O_APPEND later with fcntl); -1 until then.
   */
  appendFd: number;
}

export class HandleTable {
  private readonly handles = new Map<number, Handle>();
  /** fh 0 is left unused so a zeroed field never names a live handle. */
  private nextFh = 1;
  /** Handles' O_APPEND twins currently open. */
  private appendFds = 0;

  get size(): number {
    return this.handles.size;
  }

  /** fds the handles hold: one each, plus their O_APPEND twins. */
  get fdCount(): number {
    return this.handles.size + this.appendFds;
  }

  /** Gives `handle` its O_APPEND twin `fd` (taking ownership). */
  setAppendFd(handle: Handle, fd: number): void {
    if (handle.appendFd >= 0) closeQuietly(handle.appendFd);
    else this.appendFds++;
    handle.appendFd = fd;
  }

  /** Registers `fd` (taking ownership), opened with the access mode `access`, and returns its new handle. */
  insert(fd: number, nodeid: number, kind: HandleKind, access: number = O_RDONLY): Handle {
    const handle: Handle = { fh: this.nextFh++, fd, nodeid, kind, access, appendFd: -1 };
    this.handles.set(handle.fh, handle);
    return handle;
  }

  /** The handle `fh` of `kind` opened on `nodeid`; EBADF for anything else. */
  get(fh: number, nodeid: number, kind: HandleKind): Handle {
    const handle = this.handles.get(fh);
    if (!handle || handle.kind !== kind || handle.nodeid !== nodeid) fail(Errno.EBADF);
    return handle;
  }

  /** The handle `fh` opened on `nodeid`, file or directory (SETATTR names either); EBADF otherwise. */
  getAny(fh: number, nodeid: number): Handle {
    const handle = this.handles.get(fh);
    if (!handle || handle.nodeid !== nodeid) fail(Errno.EBADF);
    return handle;
  }

  /** Whether `fh` is still open (a waiting lock must not outlive its handle). */
  has(fh: number): boolean {
    return this.handles.has(fh);
  }

  /** Whether the handle's fd was opened for writing. */
  static writable(handle: Handle): boolean {
    return handle.access === O_WRONLY || handle.access === O_RDWR;
  }

  /** Any open handle on `nodeid`: an unlinked inode may be reachable through nothing else. */
  anyOf(nodeid: number): Handle | undefined {
    for (const handle of this.handles.values()) if (handle.nodeid === nodeid) return handle;
    return undefined;
  }

  /** Removes the handle and closes its fds; EBADF when it does not exist. */
  release(fh: number, nodeid: number, kind: HandleKind): void {
    const handle = this.get(fh, nodeid, kind);
    this.handles.delete(handle.fh);
    this.close(handle);
  }

  /** Closes every handle. */
  clear(): void {
    for (const handle of this.handles.values()) this.close(handle);
    this.handles.clear();
  }

  private close(handle: Handle): void {
    closeQuietly(handle.fd);
    if (handle.appendFd >= 0) {
      closeQuietly(handle.appendFd);
      this.appendFds--;
    }
  }
}
