/**
 * The guest kernel's FUSE client with a file-like, promise-based API: one
 * method per FUSE operation, arguments encoded from the layouts of
 * linux/fuse.h, replies decoded, error replies thrown as FuseError (errno and
 * code). Framing and queues live in fuse-transport.ts.
 */
import {
  FATTR_ATIME,
  FATTR_ATIME_NOW,
  FATTR_CTIME,
  FATTR_FH,
  FATTR_GID,
  FATTR_KILL_SUIDGID,
  FATTR_LOCKOWNER,
  FATTR_MODE,
  FATTR_MTIME,
  FATTR_MTIME_NOW,
  FATTR_SIZE,
  FATTR_UID,
  FUSE_ABORT_ERROR,
  FUSE_ASYNC_DIO,
  FUSE_ASYNC_READ,
  FUSE_ATOMIC_O_TRUNC,
  FUSE_AUTO_INVAL_DATA,
  FUSE_BIG_WRITES,
  FUSE_CACHE_SYMLINKS,
  FUSE_DO_READDIRPLUS,
  FUSE_EXPLICIT_INVAL_DATA,
  FUSE_EXPORT_SUPPORT,
  FUSE_FLOCK_LOCKS,
  FUSE_FSYNC_FDATASYNC,
  FUSE_GETATTR_FH,
  FUSE_INIT_EXT,
  FUSE_KERNEL_MINOR_VERSION,
  FUSE_KERNEL_VERSION,
  FUSE_LK_FLOCK,
  FUSE_MAP_ALIGNMENT,
  FUSE_MAX_PAGES,
  FUSE_PARALLEL_DIROPS,
  FUSE_POSIX_LOCKS,
  FUSE_READDIRPLUS_AUTO,
  FUSE_ROOT_ID,
  FUSE_SETXATTR_EXT,
  type EntryOut,
  type FuseFileLock as FileLock,
  type InitOut,
  Opcode,
  fuse_access_in,
  fuse_attr_out,
  fuse_batch_forget_in,
  fuse_copy_file_range_in,
  fuse_create_in,
  fuse_dirent,
  fuse_direntplus,
  fuse_entry_out,
  fuse_fallocate_in,
  fuse_flush_in,
  fuse_forget_in,
  fuse_forget_one,
  fuse_fsync_in,
  fuse_getattr_in,
  fuse_getxattr_in,
  fuse_getxattr_out,
  fuse_init_in,
  fuse_init_out,
  fuse_kstatfs,
  fuse_link_in,
  fuse_lk_in,
  fuse_lk_out,
  fuse_lseek_in,
  fuse_lseek_out,
  fuse_mkdir_in,
  fuse_mknod_in,
  fuse_open_in,
  fuse_open_out,
  fuse_read_in,
  fuse_readdir_in,
  fuse_release_in,
  fuse_removemapping_in,
  fuse_removemapping_one,
  fuse_rename2_in,
  fuse_rename_in,
  fuse_setattr_in,
  fuse_setupmapping_in,
  fuse_setxattr_in,
  fuse_setxattr_in_compat,
  fuse_statfs_out,
  fuse_write_in,
  fuse_write_out,
  fuseRecAlign,
} from '../fuse-server/protocol';
import type { Layout, ValueOfLayout } from '../fuse-server/layout';
import { Errno } from '../sys/errno';
import { VIRTIO_RING_F_INDIRECT_DESC, bit } from '../vhost-user/protocol';
import { type FrontendOptions, VhostUserFrontend } from './frontend';
import { type CallOptions, FuseError, type FuseReply, FuseTransport } from './fuse-transport';

export { FuseError, type CallOptions, type FuseReply } from './fuse-transport';
export type { EntryOut, FuseAttr, InitOut } from '../fuse-server/protocol';
export type { FileLock };
export { FUSE_ROOT_ID };

/* Flags and modes the methods take, beside the FUSE_* ones of src/fuse-server/protocol.ts. */

/** Lock types (getlk/setlk), renameat2() flags (rename), lseek() whence values (lseek): the host's syscall values. */
export { F_RDLCK, F_UNLCK, F_WRLCK, RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT, SEEK_DATA, SEEK_HOLE, SEEK_SET } from '../sys/fs';
export const SEEK_CUR = 1;
export const SEEK_END = 2;

/** fallocate() modes (linux/falloc.h). */
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;

/** setxattr() flags (linux/xattr.h). */
export const XATTR_CREATE = 1;
export const XATTR_REPLACE = 2;

export type AttrOut = ValueOfLayout<typeof fuse_attr_out>;
export type OpenOut = ValueOfLayout<typeof fuse_open_out>;
export type Kstatfs = ValueOfLayout<typeof fuse_kstatfs>;

/** What a Linux virtio-fs guest offers in INIT, minus features that change request formats or caching duties. */
export const DEFAULT_INIT_FLAGS =
  FUSE_ASYNC_READ |
  FUSE_POSIX_LOCKS |
  FUSE_ATOMIC_O_TRUNC |
  FUSE_EXPORT_SUPPORT |
  FUSE_BIG_WRITES |
  FUSE_FLOCK_LOCKS |
  FUSE_AUTO_INVAL_DATA |
  FUSE_DO_READDIRPLUS |
  FUSE_READDIRPLUS_AUTO |
  FUSE_ASYNC_DIO |
  FUSE_PARALLEL_DIROPS |
  FUSE_ABORT_ERROR |
  FUSE_MAX_PAGES |
  FUSE_CACHE_SYMLINKS |
  FUSE_EXPLICIT_INVAL_DATA |
  FUSE_MAP_ALIGNMENT |
  FUSE_INIT_EXT;

/** Reply room for xattr values and name lists when the caller gives none. */
const DEFAULT_LIST_SIZE = 64 * 1024;

export interface FuseDriverOptions {
  /**
   * Send every request through an indirect descriptor table (default false;
   * needs VIRTIO_RING_F_INDIRECT_DESC negotiated). Per request: CallOptions.indirect.
   */
  indirectRequests?: boolean;
  /** Credentials put in every fuse_in_header (default: this process's uid/gid/pid). */
  uid?: number;
  gid?: number;
  pid?: number;
  /** Per-request timeout in ms (default 0: wait forever, as the kernel does). */
  timeoutMs?: number;
}

export interface InitOptions {
  major?: number;
  minor?: number;
  maxReadahead?: number;
  /** FUSE_* flags offered (default DEFAULT_INIT_FLAGS). */
  flags?: number;
  /** Bits 32..63 of the offer, sent when flags has FUSE_INIT_EXT. */
  flags2?: number;
}

export interface TimeSpec {
  sec: number;
  nsec: number;
}

/** Attributes SETATTR changes; absent fields are left alone. */
export interface SetattrChanges {
  fh?: number;
  mode?: number;
  uid?: number;
  gid?: number;
  size?: number;
  atime?: TimeSpec | 'now';
  mtime?: TimeSpec | 'now';
  ctime?: TimeSpec;
  lockOwner?: bigint;
  killSuidgid?: boolean;
}

export interface Dirent {
  ino: bigint;
  /** Cookie that resumes the listing after this entry. */
  off: bigint;
  /** DT_* type. */
  type: number;
  name: string;
}

export interface DirentPlus extends Dirent {
  /** The entry's lookup (nodeid 0 for `.`/`..`: no reference taken). */
  entry: EntryOut;
}

export interface CreateOut {
  entry: EntryOut;
  open: OpenOut;
}

/** A file range of an open handle, for copyFileRange(). */
export interface FileRange {
  nodeid: number;
  fh: number;
  offset: number;
}

/** A lock to test, take or release; `pid` defaults to 0, which is what the kernel sends. */
export type LockRequest = Omit<FileLock, 'pid'> & { pid?: number };

export interface MappingRange {
  moffset: number;
  len: number;
}

export type Name = string | Buffer;

/** A NUL-terminated name or path. */
export function cstr(name: Name): Buffer {
  const body = Buffer.isBuffer(name) ? name : Buffer.from(name);
  return Buffer.concat([body, Buffer.alloc(1)]);
}

/** A request argument: `value` encoded as `layout` in a Buffer of its own. */
export function encode<T>(layout: Layout<T>, value: T): Buffer {
  const b = Buffer.alloc(layout.size);
  layout.encode(value, b, 0);
  return b;
}

/** Decodes a reply struct; a reply shorter than the layout is a protocol error, not a crash. */
function decode<T>(opcode: number, layout: Layout<T>, payload: Buffer, offset = 0): T {
  if (payload.length < offset + layout.size) {
    throw new FuseError(opcode, Errno.EPROTO, 'protocol', `reply of ${payload.length} bytes is shorter than ${layout.name}`);
  }
  return layout.decode(payload, offset);
}

function time(t: TimeSpec | 'now' | undefined): TimeSpec {
  return t === undefined || t === 'now' ? { sec: 0, nsec: 0 } : t;
}

/**
 * A FUSE session over a vhost-user-fs front-end. Call init() first. Methods
 * reject with FuseError when the back-end answers an errno.
 */
export class FuseDriver {
  readonly transport: FuseTransport;
  /** The INIT reply, once init() succeeded. */
  initReply: InitOut | null = null;
  private ownsFrontend = false;

  constructor(
    readonly frontend: VhostUserFrontend,
    options: FuseDriverOptions = {},
  ) {
    const indirect = options.indirectRequests ?? false;
    if (indirect && !(frontend.features & bit(VIRTIO_RING_F_INDIRECT_DESC))) {
      throw new Error('indirect descriptors asked for but VIRTIO_RING_F_INDIRECT_DESC was not negotiated');
    }
    this.transport = new FuseTransport(frontend, {
      indirect,
      uid: options.uid ?? process.getuid?.() ?? 0,
      gid: options.gid ?? process.getgid?.() ?? 0,
      pid: options.pid ?? process.pid,
      timeoutMs: options.timeoutMs ?? 0,
    });
  }

  /** Connects a front-end to `socketPath` and wraps it; close() then closes the front-end too. */
  static async connect(socketPath: string, options: FuseDriverOptions & FrontendOptions = {}): Promise<FuseDriver> {
    const frontend = await VhostUserFrontend.connect(socketPath, options);
    try {
      const driver = new FuseDriver(frontend, options);
      driver.ownsFrontend = true;
      return driver;
    } catch (err) {
      frontend.close();
      throw err;
    }
  }

  /** Flags both sides agreed on in INIT (0 before init()). */
  get flags(): number {
    return this.initReply?.flags ?? 0;
  }

  /** Largest WRITE payload the back-end accepts. */
  get maxWrite(): number {
    return this.initReply?.max_write ?? 4096;
  }

  /** Closes the front-end if connect() made it (once); a front-end passed in stays the caller's. */
  close(): void {
    if (this.ownsFrontend) this.frontend.close();
    this.ownsFrontend = false;
  }

  /* ---------------- raw requests ---------------- */

  /**
   * Sends any request as-is and returns the raw reply, error replies included:
   * for tests that need malformed input.
   */
  request(opcode: number, nodeid: number, payload: Buffer | Buffer[], replyCapacity: number, opts: CallOptions = {}): Promise<FuseReply> {
    return this.transport.call({ opcode, nodeid, args: Array.isArray(payload) ? payload : [payload], replySize: replyCapacity }, opts);
  }

  /** Sends a request and returns its reply body; an error reply rejects. */
  private async call(
    opcode: number,
    nodeid: number,
    args: Buffer[],
    replySize: number,
    data?: Buffer,
    opts?: CallOptions,
  ): Promise<Buffer> {
    const reply = await this.transport.call({ opcode, nodeid, args, data, replySize }, opts);
    if (reply.error !== 0) throw new FuseError(opcode, -reply.error);
    return reply.payload;
  }

  private async entry(opcode: number, nodeid: number, args: Buffer[]): Promise<EntryOut> {
    return decode(opcode, fuse_entry_out, await this.call(opcode, nodeid, args, fuse_entry_out.size));
  }

  private async attr(opcode: number, nodeid: number, args: Buffer[]): Promise<AttrOut> {
    return decode(opcode, fuse_attr_out, await this.call(opcode, nodeid, args, fuse_attr_out.size));
  }

  /* ---------------- session ---------------- */

  /** FUSE_INIT: negotiates the protocol; the reply is kept in `initReply`. */
  async init(options: InitOptions = {}): Promise<InitOut> {
    const body = await this.call(
      Opcode.FUSE_INIT,
      0,
      [
        encode(fuse_init_in, {
          major: options.major ?? FUSE_KERNEL_VERSION,
          minor: options.minor ?? FUSE_KERNEL_MINOR_VERSION,
          max_readahead: options.maxReadahead ?? 128 * 1024,
          flags: options.flags ?? DEFAULT_INIT_FLAGS,
          flags2: options.flags2 ?? 0,
        }),
      ],
      fuse_init_out.size,
    );
    // Older protocols answer a shorter fuse_init_out: the missing tail reads as zeros.
    const full = Buffer.alloc(fuse_init_out.size);
    body.copy(full);
    const reply = fuse_init_out.decode(full, 0);
    if (reply.major === FUSE_KERNEL_VERSION) this.initReply = reply;
    return reply;
  }

  /** FUSE_DESTROY: the session ends; the back-end drops every inode and handle. */
  async destroy(): Promise<void> {
    await this.call(Opcode.FUSE_DESTROY, 0, [], 0);
  }

  /* ---------------- names and attributes ---------------- */

  lookup(parent: number, name: Name): Promise<EntryOut> {
    return this.entry(Opcode.FUSE_LOOKUP, parent, [cstr(name)]);
  }

  /** Drops `nlookup` references to `nodeid` (hiprio queue, no reply). */
  forget(nodeid: number, nlookup: number): Promise<void> {
    return this.transport.post({ opcode: Opcode.FUSE_FORGET, nodeid, args: [encode(fuse_forget_in, { nlookup })] });
  }

  /** Drops references to many inodes in one request (hiprio queue, no reply). */
  batchForget(items: { nodeid: number; nlookup: number }[]): Promise<void> {
    const body = Buffer.alloc(fuse_batch_forget_in.size + items.length * fuse_forget_one.size);
    fuse_batch_forget_in.encode({ count: items.length }, body, 0);
    items.forEach((it, i) => fuse_forget_one.encode(it, body, fuse_batch_forget_in.size + i * fuse_forget_one.size));
    return this.transport.post({ opcode: Opcode.FUSE_BATCH_FORGET, nodeid: 0, args: [body] });
  }

  getattr(nodeid: number, fh?: number): Promise<AttrOut> {
    return this.attr(Opcode.FUSE_GETATTR, nodeid, [
      encode(fuse_getattr_in, { getattr_flags: fh === undefined ? 0 : FUSE_GETATTR_FH, fh: fh ?? 0 }),
    ]);
  }

  setattr(nodeid: number, c: SetattrChanges): Promise<AttrOut> {
    let valid = 0;
    if (c.fh !== undefined) valid |= FATTR_FH;
    if (c.mode !== undefined) valid |= FATTR_MODE;
    if (c.uid !== undefined) valid |= FATTR_UID;
    if (c.gid !== undefined) valid |= FATTR_GID;
    if (c.size !== undefined) valid |= FATTR_SIZE;
    // The kernel sets the *_NOW bit together with the plain one.
    if (c.atime !== undefined) valid |= FATTR_ATIME | (c.atime === 'now' ? FATTR_ATIME_NOW : 0);
    if (c.mtime !== undefined) valid |= FATTR_MTIME | (c.mtime === 'now' ? FATTR_MTIME_NOW : 0);
    if (c.ctime !== undefined) valid |= FATTR_CTIME;
    if (c.lockOwner !== undefined) valid |= FATTR_LOCKOWNER;
    if (c.killSuidgid) valid |= FATTR_KILL_SUIDGID;
    const atime = time(c.atime);
    const mtime = time(c.mtime);
    const ctime = time(c.ctime);
    const args = encode(fuse_setattr_in, {
      valid,
      fh: c.fh ?? 0,
      size: c.size ?? 0,
      lock_owner: c.lockOwner ?? 0n,
      atime: atime.sec,
      mtime: mtime.sec,
      ctime: ctime.sec,
      atimensec: atime.nsec,
      mtimensec: mtime.nsec,
      ctimensec: ctime.nsec,
      mode: c.mode ?? 0,
      uid: c.uid ?? 0,
      gid: c.gid ?? 0,
    });
    return this.attr(Opcode.FUSE_SETATTR, nodeid, [args]);
  }

  access(nodeid: number, mask: number): Promise<void> {
    return this.call(Opcode.FUSE_ACCESS, nodeid, [encode(fuse_access_in, { mask })], 0).then(() => undefined);
  }

  async statfs(nodeid: number = FUSE_ROOT_ID): Promise<Kstatfs> {
    return decode(Opcode.FUSE_STATFS, fuse_statfs_out, await this.call(Opcode.FUSE_STATFS, nodeid, [], fuse_statfs_out.size)).st;
  }

  /* ---------------- directory entries ---------------- */

  /** `mode` is the permission bits (and S_IFDIR, optional); `umask` is applied here, as the kernel does without FUSE_DONT_MASK. */
  mkdir(parent: number, name: Name, mode: number, umask = 0): Promise<EntryOut> {
    return this.entry(Opcode.FUSE_MKDIR, parent, [encode(fuse_mkdir_in, { mode: mode & ~umask, umask }), cstr(name)]);
  }

  /** `mode` includes the file type (S_IFREG, S_IFIFO, ...). */
  mknod(parent: number, name: Name, mode: number, rdev = 0, umask = 0): Promise<EntryOut> {
    return this.entry(Opcode.FUSE_MKNOD, parent, [encode(fuse_mknod_in, { mode: mode & ~umask, rdev, umask }), cstr(name)]);
  }

  symlink(parent: number, name: Name, target: Name): Promise<EntryOut> {
    return this.entry(Opcode.FUSE_SYMLINK, parent, [cstr(name), cstr(target)]);
  }

  /** A new name `newName` in `newParent` for the inode `nodeid`. */
  link(nodeid: number, newParent: number, newName: Name): Promise<EntryOut> {
    return this.entry(Opcode.FUSE_LINK, newParent, [encode(fuse_link_in, { oldnodeid: nodeid }), cstr(newName)]);
  }

  async readlink(nodeid: number): Promise<Buffer> {
    return this.call(Opcode.FUSE_READLINK, nodeid, [], 4096);
  }

  async unlink(parent: number, name: Name): Promise<void> {
    await this.call(Opcode.FUSE_UNLINK, parent, [cstr(name)], 0);
  }

  async rmdir(parent: number, name: Name): Promise<void> {
    await this.call(Opcode.FUSE_RMDIR, parent, [cstr(name)], 0);
  }

  /** RENAME without flags, RENAME2 with RENAME_NOREPLACE / RENAME_EXCHANGE / RENAME_WHITEOUT. */
  async rename(parent: number, name: Name, newParent: number, newName: Name, flags = 0): Promise<void> {
    if (flags === 0) {
      await this.call(Opcode.FUSE_RENAME, parent, [encode(fuse_rename_in, { newdir: newParent }), cstr(name), cstr(newName)], 0);
    } else {
      await this.call(Opcode.FUSE_RENAME2, parent, [encode(fuse_rename2_in, { newdir: newParent, flags }), cstr(name), cstr(newName)], 0);
    }
  }

  /* ---------------- files ---------------- */

  async open(nodeid: number, flags: number): Promise<OpenOut> {
    return decode(
      Opcode.FUSE_OPEN,
      fuse_open_out,
      await this.call(Opcode.FUSE_OPEN, nodeid, [encode(fuse_open_in, { flags, open_flags: 0 })], fuse_open_out.size),
    );
  }

  /** Creates and opens `name`; `mode` is the permission bits (S_IFREG is added). */
  async create(parent: number, name: Name, flags: number, mode: number, umask = 0): Promise<CreateOut> {
    const S_IFREG = 0o100000;
    const body = await this.call(
      Opcode.FUSE_CREATE,
      parent,
      [encode(fuse_create_in, { flags, mode: (S_IFREG | mode) & ~umask, umask, open_flags: 0 }), cstr(name)],
      fuse_entry_out.size + fuse_open_out.size,
    );
    return {
      entry: decode(Opcode.FUSE_CREATE, fuse_entry_out, body),
      open: decode(Opcode.FUSE_CREATE, fuse_open_out, body, fuse_entry_out.size),
    };
  }

  /** Reads up to `size` bytes; the device writes them into guest RAM, copied out once into the result. */
  read(nodeid: number, fh: number, offset: number, size: number, opts?: CallOptions): Promise<Buffer> {
    return this.call(
      Opcode.FUSE_READ,
      nodeid,
      [encode(fuse_read_in, { fh, offset, size, read_flags: 0, lock_owner: 0n, flags: 0 })],
      size,
      undefined,
      opts,
    );
  }

  /** Writes `data` at `offset` in one request (at most `maxWrite` bytes); returns the bytes written. */
  async write(nodeid: number, fh: number, offset: number, data: Buffer, writeFlags = 0, opts?: CallOptions): Promise<number> {
    const body = await this.call(
      Opcode.FUSE_WRITE,
      nodeid,
      [encode(fuse_write_in, { fh, offset, size: data.length, write_flags: writeFlags, lock_owner: 0n, flags: 0 })],
      fuse_write_out.size,
      data,
      opts,
    );
    return decode(Opcode.FUSE_WRITE, fuse_write_out, body).size;
  }

  async flush(nodeid: number, fh: number, lockOwner = 0n): Promise<void> {
    await this.call(Opcode.FUSE_FLUSH, nodeid, [encode(fuse_flush_in, { fh, lock_owner: lockOwner })], 0);
  }

  async fsync(nodeid: number, fh: number, datasync = false): Promise<void> {
    await this.call(Opcode.FUSE_FSYNC, nodeid, [encode(fuse_fsync_in, { fh, fsync_flags: datasync ? FUSE_FSYNC_FDATASYNC : 0 })], 0);
  }

  async release(nodeid: number, fh: number, flags = 0, releaseFlags = 0, lockOwner = 0n): Promise<void> {
    await this.call(
      Opcode.FUSE_RELEASE,
      nodeid,
      [encode(fuse_release_in, { fh, flags, release_flags: releaseFlags, lock_owner: lockOwner })],
      0,
    );
  }

  async fallocate(nodeid: number, fh: number, offset: number, length: number, mode = 0): Promise<void> {
    await this.call(Opcode.FUSE_FALLOCATE, nodeid, [encode(fuse_fallocate_in, { fh, offset, length, mode })], 0);
  }

  /** Offsets are bigint: a u64 file position, exact beyond 2^53. */
  async lseek(nodeid: number, fh: number, offset: bigint, whence: number): Promise<bigint> {
    const body = await this.call(Opcode.FUSE_LSEEK, nodeid, [encode(fuse_lseek_in, { fh, offset, whence })], fuse_lseek_out.size);
    return decode(Opcode.FUSE_LSEEK, fuse_lseek_out, body).offset;
  }

  /** Copies `len` bytes between two open files on the back-end; returns the bytes copied. */
  async copyFileRange(from: FileRange, to: FileRange, len: number, flags = 0): Promise<number> {
    const args = encode(fuse_copy_file_range_in, {
      fh_in: from.fh,
      off_in: from.offset,
      nodeid_out: to.nodeid,
      fh_out: to.fh,
      off_out: to.offset,
      len,
      flags,
    });
    return decode(
      Opcode.FUSE_COPY_FILE_RANGE,
      fuse_write_out,
      await this.call(Opcode.FUSE_COPY_FILE_RANGE, from.nodeid, [args], fuse_write_out.size),
    ).size;
  }

  /* ---------------- directories ---------------- */

  async opendir(nodeid: number, flags = 0): Promise<OpenOut> {
    return decode(
      Opcode.FUSE_OPENDIR,
      fuse_open_out,
      await this.call(Opcode.FUSE_OPENDIR, nodeid, [encode(fuse_open_in, { flags, open_flags: 0 })], fuse_open_out.size),
    );
  }

  async releasedir(nodeid: number, fh: number): Promise<void> {
    await this.call(Opcode.FUSE_RELEASEDIR, nodeid, [encode(fuse_release_in, { fh, flags: 0, release_flags: 0, lock_owner: 0n })], 0);
  }

  async fsyncdir(nodeid: number, fh: number, datasync = false): Promise<void> {
    await this.call(Opcode.FUSE_FSYNCDIR, nodeid, [encode(fuse_fsync_in, { fh, fsync_flags: datasync ? FUSE_FSYNC_FDATASYNC : 0 })], 0);
  }

  /** One READDIR reply of at most `size` bytes from cookie `offset` (0n: the start). Empty at the end. */
  async readdir(nodeid: number, fh: number, offset = 0n, size = 4096): Promise<Dirent[]> {
    const body = await this.call(
      Opcode.FUSE_READDIR,
      nodeid,
      [encode(fuse_readdir_in, { fh, offset, size, read_flags: 0, lock_owner: 0n, flags: 0 })],
      size,
    );
    return parseDirents(body, false);
  }

  /** One READDIRPLUS reply; every entry with a nodeid holds a lookup reference the caller must forget. */
  async readdirplus(nodeid: number, fh: number, offset = 0n, size = 4096): Promise<DirentPlus[]> {
    const body = await this.call(
      Opcode.FUSE_READDIRPLUS,
      nodeid,
      [encode(fuse_readdir_in, { fh, offset, size, read_flags: 0, lock_owner: 0n, flags: 0 })],
      size,
    );
    return parseDirents(body, true);
  }

  /** Lists a whole open directory, resuming from each reply's last cookie, until an empty reply. */
  async readdirAll(nodeid: number, fh: number, size = 4096): Promise<Dirent[]> {
    const all: Dirent[] = [];
    let cookie = 0n;
    for (;;) {
      const batch = await this.readdir(nodeid, fh, cookie, size);
      if (batch.length === 0) return all;
      all.push(...batch);
      const next = batch[batch.length - 1].off;
      // A back-end that hands back the cookie it was given would list forever.
      if (next === cookie) throw new FuseError(Opcode.FUSE_READDIR, Errno.EPROTO, 'protocol', `cookie ${cookie} does not advance`);
      cookie = next;
    }
  }

  /* ---------------- extended attributes ---------------- */

  async setxattr(nodeid: number, name: Name, value: Buffer | string, flags = 0): Promise<void> {
    const v = Buffer.isBuffer(value) ? value : Buffer.from(value);
    // Without FUSE_SETXATTR_EXT the back-end expects the 8-byte compat struct.
    const args =
      this.flags & FUSE_SETXATTR_EXT
        ? encode(fuse_setxattr_in, { size: v.length, flags, setxattr_flags: 0 })
        : encode(fuse_setxattr_in_compat, { size: v.length, flags });
    await this.call(Opcode.FUSE_SETXATTR, nodeid, [args, cstr(name), v], 0);
  }

  /** The value of `name`; ERANGE when it is longer than `size`. */
  getxattr(nodeid: number, name: Name, size = DEFAULT_LIST_SIZE): Promise<Buffer> {
    return this.call(Opcode.FUSE_GETXATTR, nodeid, [encode(fuse_getxattr_in, { size }), cstr(name)], size);
  }

  /** The length of the value of `name` (a size-0 probe). */
  async getxattrSize(nodeid: number, name: Name): Promise<number> {
    const body = await this.call(Opcode.FUSE_GETXATTR, nodeid, [encode(fuse_getxattr_in, { size: 0 }), cstr(name)], fuse_getxattr_out.size);
    return decode(Opcode.FUSE_GETXATTR, fuse_getxattr_out, body).size;
  }

  /** The attribute names of `nodeid`; ERANGE when the list is longer than `size`. */
  async listxattr(nodeid: number, size = DEFAULT_LIST_SIZE): Promise<string[]> {
    const body = await this.call(Opcode.FUSE_LISTXATTR, nodeid, [encode(fuse_getxattr_in, { size })], size);
    const names: string[] = [];
    for (let start = 0; start < body.length;) {
      const nul = body.indexOf(0, start);
      const end = nul < 0 ? body.length : nul;
      if (end > start) names.push(body.toString('utf8', start, end));
      start = end + 1;
    }
    return names;
  }

  /** The byte length of the name list (a size-0 probe). */
  async listxattrSize(nodeid: number): Promise<number> {
    const body = await this.call(Opcode.FUSE_LISTXATTR, nodeid, [encode(fuse_getxattr_in, { size: 0 })], fuse_getxattr_out.size);
    return decode(Opcode.FUSE_LISTXATTR, fuse_getxattr_out, body).size;
  }

  async removexattr(nodeid: number, name: Name): Promise<void> {
    await this.call(Opcode.FUSE_REMOVEXATTR, nodeid, [cstr(name)], 0);
  }

  /* ---------------- locks ---------------- */

  /** The first lock that would conflict with `lock` (type F_UNLCK when none). */
  async getlk(nodeid: number, fh: number, owner: bigint, lock: LockRequest): Promise<FileLock> {
    const body = await this.call(Opcode.FUSE_GETLK, nodeid, [this.lkIn(fh, owner, lock, false)], fuse_lk_out.size);
    return decode(Opcode.FUSE_GETLK, fuse_lk_out, body).lk;
  }

  /** Takes or releases a POSIX lock (or a BSD flock with `flock`) without waiting: EAGAIN on conflict. */
  async setlk(nodeid: number, fh: number, owner: bigint, lock: LockRequest, flock = false): Promise<void> {
    await this.call(Opcode.FUSE_SETLK, nodeid, [this.lkIn(fh, owner, lock, flock)], 0);
  }

  /** Like setlk() but the back-end waits until the lock can be taken. */
  async setlkw(nodeid: number, fh: number, owner: bigint, lock: LockRequest, flock = false, opts?: CallOptions): Promise<void> {
    await this.call(Opcode.FUSE_SETLKW, nodeid, [this.lkIn(fh, owner, lock, flock)], 0, undefined, opts);
  }

  private lkIn(fh: number, owner: bigint, lock: LockRequest, flock: boolean): Buffer {
    return encode(fuse_lk_in, { fh, owner, lk: { ...lock, pid: lock.pid ?? 0 }, lk_flags: flock ? FUSE_LK_FLOCK : 0 });
  }

  /* ---------------- DAX ---------------- */

  /** Maps [foffset, foffset+len) of an open file at `moffset` of the DAX window (FUSE_SETUPMAPPING_FLAG_*); fh -1 is "no handle". */
  async setupMapping(nodeid: number, fh: number, m: { foffset: number; len: number; moffset: number; flags: number }): Promise<void> {
    const args = encode(fuse_setupmapping_in, {
      fh: BigInt(fh),
      foffset: BigInt(m.foffset),
      len: BigInt(m.len),
      moffset: BigInt(m.moffset),
      flags: BigInt(m.flags),
    });
    await this.call(Opcode.FUSE_SETUPMAPPING, nodeid, [args], 0);
  }

  async removeMapping(nodeid: number, ranges: MappingRange[]): Promise<void> {
    const body = Buffer.alloc(fuse_removemapping_in.size + ranges.length * fuse_removemapping_one.size);
    fuse_removemapping_in.encode({ count: ranges.length }, body, 0);
    ranges.forEach((r, i) =>
      fuse_removemapping_one.encode(
        { moffset: BigInt(r.moffset), len: BigInt(r.len) },
        body,
        fuse_removemapping_in.size + i * fuse_removemapping_one.size,
      ),
    );
    await this.call(Opcode.FUSE_REMOVEMAPPING, nodeid, [body], 0);
  }
}

/**
 * Parses the packed, 8-byte aligned records of a READDIR (`plus` false) or
 * READDIRPLUS reply; a record that overruns the reply is a protocol error.
 */
export function parseDirents(body: Buffer, plus: false): Dirent[];
export function parseDirents(body: Buffer, plus: true): DirentPlus[];
export function parseDirents(body: Buffer, plus: boolean): (Dirent & { entry?: EntryOut })[];
export function parseDirents(body: Buffer, plus: boolean): (Dirent & { entry?: EntryOut })[] {
  const opcode = plus ? Opcode.FUSE_READDIRPLUS : Opcode.FUSE_READDIR;
  const out: (Dirent & { entry?: EntryOut })[] = [];
  const header = plus ? fuse_direntplus.size : fuse_dirent.size;
  for (let pos = 0; pos < body.length;) {
    if (pos + header > body.length) throw new FuseError(opcode, Errno.EPROTO, 'protocol', `truncated dirent at ${pos}`);
    let entry: EntryOut | undefined;
    let d: ValueOfLayout<typeof fuse_dirent>;
    if (plus) {
      const dp = fuse_direntplus.decode(body, pos);
      entry = dp.entry_out;
      d = dp.dirent;
    } else {
      d = fuse_dirent.decode(body, pos);
    }
    if (pos + header + d.namelen > body.length)
      throw new FuseError(opcode, Errno.EPROTO, 'protocol', `dirent name overruns the reply at ${pos}`);
    const name = body.subarray(pos + header, pos + header + d.namelen).toString();
    out.push(entry ? { ino: d.ino, off: d.off, type: d.type, name, entry } : { ino: d.ino, off: d.off, type: d.type, name });
    pos += fuseRecAlign(header + d.namelen);
  }
  return out;
}
