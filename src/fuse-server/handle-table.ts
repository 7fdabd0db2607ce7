/**
 * Open files and directories the guest holds a handle (fh) to. The table owns
 * each handle's fd: removing a handle closes it.
 */
import { closeQuietly } from '../sys/fs';
import { Errno, fail } from './errors';

export type HandleKind = 'file' | 'dir';

export interface Handle {
  readonly fh: number;
  /** A regular fd (never O_PATH): reads, writes, getdents, fsync go through it. */
  readonly fd: number;
  readonly nodeid: number;
  readonly kind: HandleKind;
}

export class HandleTable {
  private readonly handles = new Map<number, Handle>();
  /** fh 0 is left unused so a zeroed field never names a live handle. */
  private nextFh = 1;

  get size(): number {
    return this.handles.size;
  }

  /** Registers `fd` (taking ownership) and returns its new handle. */
  insert(fd: number, nodeid: number, kind: HandleKind): Handle {
    const handle: Handle = { fh: this.nextFh++, fd, nodeid, kind };
    this.handles.set(handle.fh, handle);
    return handle;
  }

  /** The handle `fh` of `kind` opened on `nodeid`; EBADF for anything else. */
  get(fh: number, nodeid: number, kind: HandleKind): Handle {
    const handle = this.handles.get(fh);
    if (!handle || handle.kind !== kind || handle.nodeid !== nodeid) fail(Errno.EBADF);
    return handle;
  }

  /** Removes the handle and closes its fd; EBADF when it does not exist. */
  release(fh: number, nodeid: number, kind: HandleKind): void {
    const handle = this.get(fh, nodeid, kind);
    this.handles.delete(handle.fh);
    closeQuietly(handle.fd);
  }

  /** Closes every handle. */
  clear(): void {
    for (const handle of this.handles.values()) closeQuietly(handle.fd);
    this.handles.clear();
  }
}
