/**
 * `--inode-file-handles`: inodes held as file handles (name_to_handle_at)
 * instead of O_PATH fds, so a guest that looks up a million files does not
 * pin a million host fds. A handle is opened again with open_by_handle_at,
 * relative to an fd on the same mount, whenever an operation needs the inode.
 * That needs CAP_DAC_READ_SEARCH, and a file system that can encode handles.
 *
 * - prefer: handles where the file system supports them, O_PATH fds elsewhere
 *   (and everywhere, with a warning, if the process may not open handles).
 * - mandatory: handles everywhere; a share where that is impossible fails at
 *   start-up, a later inode that cannot be encoded fails its lookup.
 */
import {
  AT_EMPTY_PATH,
  O_CLOEXEC,
  O_DIRECTORY,
  O_PATH,
  O_RDONLY,
  closeQuietly,
  nameToHandleAt,
  openat,
  openByHandleAt,
  type FileHandle,
} from '../sys/fs';
import { errnoCode, errnoOf } from '../sys/errno';

export type FileHandleMode = 'never' | 'prefer' | 'mandatory';

const EMPTY = Buffer.from([0]);
const DOT = Buffer.from('.\0');

export class FileHandles {
  /** One fd per mount (by name_to_handle_at's mount id), the directory handles are opened against. */
  private readonly mountFds = new Map<number, number>();
  /** The share root's mount: its fd lives as long as the store. */
  private rootMountId = -1;

  private constructor(readonly mandatory: boolean) {}

  /**
   * Checks that handles work for the share's root: encodes it and opens it
   * back. Returns the handle store, or null (prefer: fall back to fds, after
   * calling `warn`). Mandatory mode throws an Error that says why.
   */
  static open(mode: FileHandleMode, rootFd: number, warn: (msg: string) => void): FileHandles | null {
    if (mode === 'never') return null;
    const store = new FileHandles(mode === 'mandatory');
    try {
      const handle = nameToHandleAt(rootFd, EMPTY, AT_EMPTY_PATH);
      store.noteMount(handle.mountId, rootFd);
      store.rootMountId = handle.mountId;
      closeQuietly(store.open(handle, O_PATH | O_CLOEXEC));
      return store;
    } catch (err) {
      store.close();
      const reason =
        errnoOf(err) === 1 /* EPERM */
          ? 'open_by_handle_at needs CAP_DAC_READ_SEARCH'
          : `the shared directory's file system cannot use file handles (${errnoCode(errnoOf(err))})`;
      if (store.mandatory) throw new Error(`--inode-file-handles=mandatory: ${reason}`);
      warn(`--inode-file-handles=prefer: ${reason}; using O_PATH fds`);
      return null;
    }
  }

  /**
   * The handle of the inode `fd` (O_PATH) refers to, or null when it must be
   * kept as an fd: a file system without handle support (prefer mode only) or
   * a non-directory on a mount we have no fd for (a bind-mounted file: an fd of
   * the file itself would pin it if it were unlinked).
   */
  capture(fd: number, isDir: boolean): FileHandle | null {
    let handle: FileHandle;
    try {
      handle = nameToHandleAt(fd, EMPTY, AT_EMPTY_PATH);
    } catch (err) {
      if (this.mandatory) throw err;
      return null;
    }
    if (!this.mountFds.has(handle.mountId)) {
      if (!isDir) return null;
      this.noteMount(handle.mountId, fd);
    }
    return handle;
  }

  /** open_by_handle_at with `flags`: a new fd the caller owns. */
  open(handle: FileHandle, flags: number): number {
    const mountFd = this.mountFds.get(handle.mountId);
    if (mountFd === undefined) throw new Error(`no fd for mount ${handle.mountId}`);
    return openByHandleAt(mountFd, handle.bytes, flags);
  }

  /** Forgets every mount but the root's (DESTROY: the guest holds no inode on them any more). */
  clear(): void {
    for (const [id, fd] of this.mountFds) {
      if (id === this.rootMountId) continue;
      closeQuietly(fd);
      this.mountFds.delete(id);
    }
  }

  /** Closes every mount fd. */
  close(): void {
    for (const fd of this.mountFds.values()) closeQuietly(fd);
    this.mountFds.clear();
  }

  /** Keeps a real fd of the directory `dirFd` (O_PATH) names: open_by_handle_at refuses O_PATH mount fds. */
  private noteMount(mountId: number, dirFd: number): void {
    this.mountFds.set(mountId, openat(dirFd, DOT, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0));
  }
}
