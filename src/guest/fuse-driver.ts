/**
 * The guest kernel's FUSE client with a file-like, promise-based API: one
 * method per FUSE operation, arguments encoded from the layouts of
 * linux/fuse.h, replies decoded, error replies thrown as FuseRequestError (errno and
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
  FUSE_DONT_MASK,
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
  fuseRecAlign,
} from '../fuse-server/protocol';
import * as P from '../fuse-server/protocol';
import { type Fill, type Layout, type ValueOfLayout, encode } from '../layout';
import type { SetattrArgs } from '../fuse-server/filesystem';
import { Errno } from '../sys/errno';
import type { TimeSpec } from '../sys/fs';
import { VIRTIO_RING_F_INDIRECT_DESC, bit } from '../vhost-user/protocol';
import { type FrontendOptions, VhostUserFrontend } from './frontend';
import { type CallOptions, type FuseChannel, FuseRequestError, type FuseReply, FuseTransport } from './fuse-transport';

export { FuseRequestError, type CallOptions, type FuseChannel, type FuseReply } from './fuse-transport';
export type { EntryOut, FuseAttr, InitOut } from '../fuse-server/protocol';
export type { FileLock, TimeSpec };
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

export type AttrOut = ValueOfLayout<typeof P.fuse_attr_out>;
export type OpenOut = ValueOfLayout<typeof P.fuse_open_out>;
export type Kstatfs = ValueOfLayout<typeof P.fuse_kstatfs>;
export type StatxOut = ValueOfLayout<typeof P.fuse_statx_out>;

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

/** Attributes SETATTR changes, as the server's file-system interface takes them, plus the two only the wire carries. */
export interface SetattrChanges extends SetattrArgs {
  ctime?: TimeSpec;
  lockOwner?: bigint;
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

/** CREATE's and TMPFILE's reply: the new entry and its open handle. */
export type CreateOut = ValueOfLayout<typeof P.fuse_create_out>;

/** A file range of an open handle, for copyFileRange(). */
export interface FileRange {
  nodeid: number;
  fh: number;
  offset: number;
}

/** A lock to test, take or release; `pid` defaults to 0, which is what the kernel sends. */
export type LockRequest = Omit<FileLock, 'pid'> & { pid?: number };

/** u64 fields: a number, or a bigint for values beyond 2^53. */
export interface MappingRange {
  moffset: number | bigint;
  len: number | bigint;
}

export type Name = string | Buffer;

/** A NUL-terminated name or path. */
export function cstr(name: Name): Buffer {
  const body = Buffer.isBuffer(name) ? name : Buffer.from(name);
  return Buffer.concat([body, Buffer.alloc(1)]);
}

/** A request argument: `value` encoded as `layout` in a Buffer of its own, absent fields zero. */
export { encode };

/** Decodes a reply struct; a reply shorter than the layout is a protocol error, not a crash. */
function decode<T>(opcode: number, layout: Layout<T>, payload: Buffer, offset = 0): T {
  if (payload.length < offset + layout.size) {
    throw new FuseRequestError(opcode, Errno.EPROTO, 'protocol', `reply of ${payload.length} bytes is shorter than ${layout.name}`);
  }
  return layout.decode(payload, offset);
}

function time(t: TimeSpec | 'now' | undefined): TimeSpec {
  return t === undefined || t === 'now' ? { sec: 0, nsec: 0 } : t;
}

/**
 * One FUSE operation as linux/fuse.h defines it: its opcode, the struct that
 * follows fuse_in_header (null: only names or nothing), and the struct that
 * follows fuse_out_header (null: no body, or raw bytes such as READ data).
 */
export interface FuseOp<I, O extends Layout<unknown> | null> {
  readonly opcode: Opcode;
  readonly in: Layout<I> | null;
  readonly out: O;
}

function op<I, O extends Layout<unknown> | null>(opcode: Opcode, inLayout: Layout<I> | null, out: O): FuseOp<I, O> {
  return { opcode, in: inLayout, out };
}

/** Every operation the driver sends, by method: the one place an opcode meets its argument and reply layouts. */
export const FUSE_OPS = {
  init: op(Opcode.FUSE_INIT, P.fuse_init_in, P.fuse_init_out),
  destroy: op(Opcode.FUSE_DESTROY, null, null),
  lookup: op(Opcode.FUSE_LOOKUP, null, P.fuse_entry_out),
  forget: op(Opcode.FUSE_FORGET, P.fuse_forget_in, null),
  batchForget: op(Opcode.FUSE_BATCH_FORGET, P.fuse_batch_forget_in, null),
  getattr: op(Opcode.FUSE_GETATTR, P.fuse_getattr_in, P.fuse_attr_out),
  statx: op(Opcode.FUSE_STATX, P.fuse_statx_in, P.fuse_statx_out),
  setattr: op(Opcode.FUSE_SETATTR, P.fuse_setattr_in, P.fuse_attr_out),
  access: op(Opcode.FUSE_ACCESS, P.fuse_access_in, null),
  statfs: op(Opcode.FUSE_STATFS, null, P.fuse_statfs_out),
  mkdir: op(Opcode.FUSE_MKDIR, P.fuse_mkdir_in, P.fuse_entry_out),
  mknod: op(Opcode.FUSE_MKNOD, P.fuse_mknod_in, P.fuse_entry_out),
  symlink: op(Opcode.FUSE_SYMLINK, null, P.fuse_entry_out),
  link: op(Opcode.FUSE_LINK, P.fuse_link_in, P.fuse_entry_out),
  readlink: op(Opcode.FUSE_READLINK, null, null),
  unlink: op(Opcode.FUSE_UNLINK, null, null),
  rmdir: op(Opcode.FUSE_RMDIR, null, null),
  rename: op(Opcode.FUSE_RENAME, P.fuse_rename_in, null),
  rename2: op(Opcode.FUSE_RENAME2, P.fuse_rename2_in, null),
  open: op(Opcode.FUSE_OPEN, P.fuse_open_in, P.fuse_open_out),
  create: op(Opcode.FUSE_CREATE, P.fuse_create_in, P.fuse_create_out),
  tmpfile: op(Opcode.FUSE_TMPFILE, P.fuse_create_in, P.fuse_create_out),
  read: op(Opcode.FUSE_READ, P.fuse_read_in, null),
  write: op(Opcode.FUSE_WRITE, P.fuse_write_in, P.fuse_write_out),
  flush: op(Opcode.FUSE_FLUSH, P.fuse_flush_in, null),
  fsync: op(Opcode.FUSE_FSYNC, P.fuse_fsync_in, null),
  release: op(Opcode.FUSE_RELEASE, P.fuse_release_in, null),
  fallocate: op(Opcode.FUSE_FALLOCATE, P.fuse_fallocate_in, null),
  lseek: op(Opcode.FUSE_LSEEK, P.fuse_lseek_in, P.fuse_lseek_out),
  copyFileRange: op(Opcode.FUSE_COPY_FILE_RANGE, P.fuse_copy_file_range_in, P.fuse_write_out),
  opendir: op(Opcode.FUSE_OPENDIR, P.fuse_open_in, P.fuse_open_out),
  releasedir: op(Opcode.FUSE_RELEASEDIR, P.fuse_release_in, null),
  fsyncdir: op(Opcode.FUSE_FSYNCDIR, P.fuse_fsync_in, null),
  syncfs: op(Opcode.FUSE_SYNCFS, P.fuse_syncfs_in, null),
  readdir: op(Opcode.FUSE_READDIR, P.fuse_read_in, null),
  readdirplus: op(Opcode.FUSE_READDIRPLUS, P.fuse_read_in, null),
  setxattr: op(Opcode.FUSE_SETXATTR, P.fuse_setxattr_in, null),
  /** SETXATTR as sent without FUSE_SETXATTR_EXT: the 8-byte compat struct. */
  setxattrCompat: op(Opcode.FUSE_SETXATTR, P.fuse_setxattr_in_compat, null),
  getxattr: op(Opcode.FUSE_GETXATTR, P.fuse_getxattr_in, null),
  /** GETXATTR with size 0: the value's length. */
  getxattrSize: op(Opcode.FUSE_GETXATTR, P.fuse_getxattr_in, P.fuse_getxattr_out),
  listxattr: op(Opcode.FUSE_LISTXATTR, P.fuse_getxattr_in, null),
  /** LISTXATTR with size 0: the list's length. */
  listxattrSize: op(Opcode.FUSE_LISTXATTR, P.fuse_getxattr_in, P.fuse_getxattr_out),
  removexattr: op(Opcode.FUSE_REMOVEXATTR, null, null),
  getlk: op(Opcode.FUSE_GETLK, P.fuse_lk_in, P.fuse_lk_out),
  setlk: op(Opcode.FUSE_SETLK, P.fuse_lk_in, null),
  setlkw: op(Opcode.FUSE_SETLKW, P.fuse_lk_in, null),
  setupMapping: op(Opcode.FUSE_SETUPMAPPING, P.fuse_setupmapping_in, null),
  removeMapping: op(Opcode.FUSE_REMOVEMAPPING, P.fuse_removemapping_in, null),
} as const;

/** How a request of `op` is sent beside its in-struct: names after it, WRITE data, reply room, per-call options. */
interface Send {
  tail?: Buffer[];
  data?: Buffer;
  /** Reply room when the op has no out layout (raw bytes); default 0. */
  replySize?: number;
  opts?: CallOptions;
}

/**
 * The FUSE operations over any FuseChannel: the vhost-user transport (FuseDriver)
 * or a direct one in tests. Call init() first. Methods reject with FuseRequestError
 * when the back-end answers an errno.
 */
export class FuseClient<C extends FuseChannel = FuseChannel> {
  /** The INIT reply, once init() succeeded. */
  initReply: InitOut | null = null;

  constructor(readonly channel: C) {}

  /** Flags both sides agreed on in INIT (0 before init()). */
  get flags(): number {
    return this.initReply?.flags ?? 0;
  }

  /** Largest WRITE payload the back-end accepts. */
  get maxWrite(): number {
    return this.initReply?.max_write ?? 4096;
  }

  /* ---------------- raw requests ---------------- */

  /**
   * Sends any request as-is and returns the raw reply, error replies included:
   * for tests that need malformed input.
   */
  request(opcode: number, nodeid: number, payload: Buffer | Buffer[], replyCapacity: number, opts: CallOptions = {}): Promise<FuseReply> {
    return this.channel.call({ opcode, nodeid, args: Array.isArray(payload) ? payload : [payload], replySize: replyCapacity }, opts);
  }

  /** Sends `o` with its in-struct `value` and returns the reply body (raw); an error reply rejects. */
  private async send<I>(o: FuseOp<I, Layout<unknown> | null>, nodeid: number, value: Fill<I> | null, s: Send = {}): Promise<Buffer> {
    const args = o.in && value !== null ? [encode(o.in, value), ...(s.tail ?? [])] : (s.tail ?? []);
    const replySize = o.out ? o.out.size : (s.replySize ?? 0);
    const reply = await this.channel.call({ opcode: o.opcode, nodeid, args, data: s.data, replySize }, s.opts);
    if (reply.error !== 0) throw new FuseRequestError(o.opcode, -reply.error);
    return reply.payload;
  }

  /** Sends `o` and decodes its reply through the op's out layout. */
  private async reply<I, O>(o: FuseOp<I, Layout<O>>, nodeid: number, value: Fill<I> | null, s: Send = {}): Promise<O> {
    return decode(o.opcode, o.out, await this.send(o, nodeid, value, s));
  }

  /** Sends `o`, which answers no body. */
  private async done<I>(o: FuseOp<I, null>, nodeid: number, value: Fill<I> | null, s: Send = {}): Promise<void> {
    await this.send(o, nodeid, value, s);
  }

  /** Sends `o` on the hiprio queue: the back-end answers nothing. */
  private post<I>(o: FuseOp<I, null>, nodeid: number, value: Fill<I>, tail: Buffer[] = []): Promise<void> {
    return this.channel.post({ opcode: o.opcode, nodeid, args: o.in ? [encode(o.in, value), ...tail] : tail });
  }

  /* ---------------- session ---------------- */

  /** FUSE_INIT: negotiates the protocol; the reply is kept in `initReply`. */
  async init(options: InitOptions = {}): Promise<InitOut> {
    const o = FUSE_OPS.init;
    const body = await this.send(o, 0, {
      major: options.major ?? FUSE_KERNEL_VERSION,
      minor: options.minor ?? FUSE_KERNEL_MINOR_VERSION,
      max_readahead: options.maxReadahead ?? 128 * 1024,
      flags: options.flags ?? DEFAULT_INIT_FLAGS,
      flags2: options.flags2 ?? 0,
    });
    // Older protocols answer a shorter P.fuse_init_out: the missing tail reads as zeros.
    const full = Buffer.alloc(o.out.size);
    body.copy(full);
    const reply = o.out.decode(full, 0);
    if (reply.major === FUSE_KERNEL_VERSION) this.initReply = reply;
    return reply;
  }

  /** FUSE_DESTROY: the session ends; the back-end drops every inode and handle. */
  destroy(): Promise<void> {
    return this.done(FUSE_OPS.destroy, 0, null);
  }

  /* ---------------- names and attributes ---------------- */

  lookup(parent: number, name: Name): Promise<EntryOut> {
    return this.reply(FUSE_OPS.lookup, parent, null, { tail: [cstr(name)] });
  }

  /** Drops `nlookup` references to `nodeid` (hiprio queue, no reply). */
  forget(nodeid: number, nlookup: number): Promise<void> {
    return this.post(FUSE_OPS.forget, nodeid, { nlookup });
  }

  /** Drops references to many inodes in one request (hiprio queue, no reply). */
  batchForget(items: { nodeid: number; nlookup: number }[]): Promise<void> {
    const tail = Buffer.alloc(items.length * P.fuse_forget_one.size);
    items.forEach((it, i) => P.fuse_forget_one.encode(it, tail, i * P.fuse_forget_one.size));
    return this.post(FUSE_OPS.batchForget, 0, { count: items.length }, [tail]);
  }

  getattr(nodeid: number, fh?: number): Promise<AttrOut> {
    return this.reply(FUSE_OPS.getattr, nodeid, fh === undefined ? {} : { getattr_flags: FUSE_GETATTR_FH, fh });
  }

  /** FUSE_STATX: the STATX_* fields of `mask` (through the handle `fh` if given). */
  statx(nodeid: number, mask: number, fh?: number, sxFlags = 0): Promise<StatxOut> {
    const value = { ...(fh === undefined ? {} : { getattr_flags: FUSE_GETATTR_FH, fh }), sx_flags: sxFlags, sx_mask: mask };
    return this.reply(FUSE_OPS.statx, nodeid, value);
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
    return this.reply(FUSE_OPS.setattr, nodeid, {
      valid,
      fh: c.fh,
      size: c.size,
      lock_owner: c.lockOwner,
      atime: atime.sec,
      mtime: mtime.sec,
      ctime: ctime.sec,
      atimensec: atime.nsec,
      mtimensec: mtime.nsec,
      ctimensec: ctime.nsec,
      mode: c.mode,
      uid: c.uid,
      gid: c.gid,
    });
  }

  access(nodeid: number, mask: number): Promise<void> {
    return this.done(FUSE_OPS.access, nodeid, { mask });
  }

  async statfs(nodeid: number = FUSE_ROOT_ID): Promise<Kstatfs> {
    return (await this.reply(FUSE_OPS.statfs, nodeid, null)).st;
  }

  /** FUSE_SYNCFS: syncs the file system `nodeid` lives on. */
  syncfs(nodeid: number): Promise<void> {
    return this.done(FUSE_OPS.syncfs, nodeid, {});
  }

  /* ---------------- directory entries ---------------- */

  /** `mode` with `umask` applied here, as the kernel does unless FUSE_DONT_MASK was agreed (then the server applies it). */
  private masked(mode: number, umask: number): number {
    return this.flags & FUSE_DONT_MASK ? mode : mode & ~umask;
  }

  /** `mode` is the permission bits (and S_IFDIR, optional). */
  mkdir(parent: number, name: Name, mode: number, umask = 0, opts?: CallOptions): Promise<EntryOut> {
    return this.reply(FUSE_OPS.mkdir, parent, { mode: this.masked(mode, umask), umask }, { tail: [cstr(name)], opts });
  }

  /** `mode` includes the file type (S_IFREG, S_IFIFO, ...). */
  mknod(parent: number, name: Name, mode: number, rdev = 0, umask = 0, opts?: CallOptions): Promise<EntryOut> {
    return this.reply(FUSE_OPS.mknod, parent, { mode: this.masked(mode, umask), rdev, umask }, { tail: [cstr(name)], opts });
  }

  symlink(parent: number, name: Name, target: Name, opts?: CallOptions): Promise<EntryOut> {
    return this.reply(FUSE_OPS.symlink, parent, null, { tail: [cstr(name), cstr(target)], opts });
  }

  /** A new name `newName` in `newParent` for the inode `nodeid`. */
  link(nodeid: number, newParent: number, newName: Name): Promise<EntryOut> {
    return this.reply(FUSE_OPS.link, newParent, { oldnodeid: nodeid }, { tail: [cstr(newName)] });
  }

  readlink(nodeid: number): Promise<Buffer> {
    return this.send(FUSE_OPS.readlink, nodeid, null, { replySize: 4096 });
  }

  unlink(parent: number, name: Name): Promise<void> {
    return this.done(FUSE_OPS.unlink, parent, null, { tail: [cstr(name)] });
  }

  rmdir(parent: number, name: Name): Promise<void> {
    return this.done(FUSE_OPS.rmdir, parent, null, { tail: [cstr(name)] });
  }

  /** RENAME without flags, RENAME2 with RENAME_NOREPLACE / RENAME_EXCHANGE / RENAME_WHITEOUT. */
  rename(parent: number, name: Name, newParent: number, newName: Name, flags = 0): Promise<void> {
    const tail = [cstr(name), cstr(newName)];
    return flags === 0
      ? this.done(FUSE_OPS.rename, parent, { newdir: newParent }, { tail })
      : this.done(FUSE_OPS.rename2, parent, { newdir: newParent, flags }, { tail });
  }

  /* ---------------- files ---------------- */

  /** `openFlags` is FUSE_OPEN_KILL_SUIDGID or 0. */
  open(nodeid: number, flags: number, openFlags = 0): Promise<OpenOut> {
    return this.reply(FUSE_OPS.open, nodeid, { flags, open_flags: openFlags });
  }

  /** Creates and opens `name`; `mode` is the permission bits (S_IFREG is added). */
  create(parent: number, name: Name, flags: number, mode: number, umask = 0, opts?: CallOptions): Promise<CreateOut> {
    const S_IFREG = 0o100000;
    const value = { flags, mode: this.masked(S_IFREG | mode, umask), umask };
    return this.reply(FUSE_OPS.create, parent, value, { tail: [cstr(name)], opts });
  }

  /** An unnamed file in the directory `parent` (O_TMPFILE), opened; LINK gives it a name. `mode` as for create(). */
  tmpfile(parent: number, flags: number, mode: number, umask = 0): Promise<CreateOut> {
    const S_IFREG = 0o100000;
    const value = { flags, mode: this.masked(S_IFREG | mode, umask), umask };
    // The kernel names no file: the argument is "/".
    return this.reply(FUSE_OPS.tmpfile, parent, value, { tail: [cstr('/')] });
  }

  /** Reads up to `size` bytes; the device writes them into guest RAM, copied out once into the result. */
  read(nodeid: number, fh: number, offset: number, size: number, opts?: CallOptions): Promise<Buffer> {
    return this.send(FUSE_OPS.read, nodeid, { fh, offset: BigInt(offset), size }, { replySize: size, opts });
  }

  /**
   * Writes `data` at `offset` in one request (at most `maxWrite` bytes); returns the bytes written.
   * `fileFlags` is the open file's O_* flags, which the kernel sends in P.fuse_write_in.flags.
   */
  async write(
    nodeid: number,
    fh: number,
    offset: number,
    data: Buffer,
    writeFlags = 0,
    fileFlags = 0,
    opts?: CallOptions,
  ): Promise<number> {
    const value = { fh, offset, size: data.length, write_flags: writeFlags, flags: fileFlags };
    return (await this.reply(FUSE_OPS.write, nodeid, value, { data, opts })).size;
  }

  flush(nodeid: number, fh: number, lockOwner = 0n): Promise<void> {
    return this.done(FUSE_OPS.flush, nodeid, { fh, lock_owner: lockOwner });
  }

  fsync(nodeid: number, fh: number, datasync = false): Promise<void> {
    return this.done(FUSE_OPS.fsync, nodeid, { fh, fsync_flags: datasync ? FUSE_FSYNC_FDATASYNC : 0 });
  }

  release(nodeid: number, fh: number, flags = 0, releaseFlags = 0, lockOwner = 0n): Promise<void> {
    return this.done(FUSE_OPS.release, nodeid, { fh, flags, release_flags: releaseFlags, lock_owner: lockOwner });
  }

  fallocate(nodeid: number, fh: number, offset: number, length: number, mode = 0): Promise<void> {
    return this.done(FUSE_OPS.fallocate, nodeid, { fh, offset, length, mode });
  }

  /** Offsets are bigint: a u64 file position, exact beyond 2^53. */
  async lseek(nodeid: number, fh: number, offset: bigint, whence: number): Promise<bigint> {
    return (await this.reply(FUSE_OPS.lseek, nodeid, { fh, offset, whence })).offset;
  }

  /** Copies `len` bytes between two open files on the back-end; returns the bytes copied. */
  async copyFileRange(from: FileRange, to: FileRange, len: number, flags = 0): Promise<number> {
    const value = { fh_in: from.fh, off_in: from.offset, nodeid_out: to.nodeid, fh_out: to.fh, off_out: to.offset, len, flags };
    return (await this.reply(FUSE_OPS.copyFileRange, from.nodeid, value)).size;
  }

  /* ---------------- directories ---------------- */

  opendir(nodeid: number, flags = 0): Promise<OpenOut> {
    return this.reply(FUSE_OPS.opendir, nodeid, { flags });
  }

  releasedir(nodeid: number, fh: number): Promise<void> {
    return this.done(FUSE_OPS.releasedir, nodeid, { fh });
  }

  fsyncdir(nodeid: number, fh: number, datasync = false): Promise<void> {
    return this.done(FUSE_OPS.fsyncdir, nodeid, { fh, fsync_flags: datasync ? FUSE_FSYNC_FDATASYNC : 0 });
  }

  /** One READDIR reply of at most `size` bytes from cookie `offset` (0n: the start). Empty at the end. */
  async readdir(nodeid: number, fh: number, offset = 0n, size = 4096): Promise<Dirent[]> {
    const value = { fh, offset, size };
    return parseDirents(await this.send(FUSE_OPS.readdir, nodeid, value, { replySize: size }), false);
  }

  /** One READDIRPLUS reply; every entry with a nodeid holds a lookup reference the caller must forget. */
  async readdirplus(nodeid: number, fh: number, offset = 0n, size = 4096): Promise<DirentPlus[]> {
    const value = { fh, offset, size };
    return parseDirents(await this.send(FUSE_OPS.readdirplus, nodeid, value, { replySize: size }), true);
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
      if (next === cookie)
        throw new FuseRequestError(FUSE_OPS.readdir.opcode, Errno.EPROTO, 'protocol', `cookie ${cookie} does not advance`);
      cookie = next;
    }
  }

  /* ---------------- extended attributes ---------------- */

  /** `setxattrFlags` (FUSE_SETXATTR_ACL_KILL_SGID) needs FUSE_SETXATTR_EXT. */
  setxattr(nodeid: number, name: Name, value: Buffer | string, flags = 0, setxattrFlags = 0): Promise<void> {
    const v = Buffer.isBuffer(value) ? value : Buffer.from(value);
    const tail = [cstr(name), v];
    // Without FUSE_SETXATTR_EXT the back-end expects the 8-byte compat struct.
    return this.flags & FUSE_SETXATTR_EXT
      ? this.done(FUSE_OPS.setxattr, nodeid, { size: v.length, flags, setxattr_flags: setxattrFlags }, { tail })
      : this.done(FUSE_OPS.setxattrCompat, nodeid, { size: v.length, flags }, { tail });
  }

  /** The value of `name`; ERANGE when it is longer than `size`. */
  getxattr(nodeid: number, name: Name, size = DEFAULT_LIST_SIZE): Promise<Buffer> {
    return this.send(FUSE_OPS.getxattr, nodeid, { size }, { tail: [cstr(name)], replySize: size });
  }

  /** The length of the value of `name` (a size-0 probe). */
  async getxattrSize(nodeid: number, name: Name): Promise<number> {
    return (await this.reply(FUSE_OPS.getxattrSize, nodeid, {}, { tail: [cstr(name)] })).size;
  }

  /** The attribute names of `nodeid`; ERANGE when the list is longer than `size`. */
  async listxattr(nodeid: number, size = DEFAULT_LIST_SIZE): Promise<string[]> {
    const body = await this.send(FUSE_OPS.listxattr, nodeid, { size }, { replySize: size });
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
    return (await this.reply(FUSE_OPS.listxattrSize, nodeid, {})).size;
  }

  removexattr(nodeid: number, name: Name): Promise<void> {
    return this.done(FUSE_OPS.removexattr, nodeid, null, { tail: [cstr(name)] });
  }

  /* ---------------- locks ---------------- */

  /** The first lock that would conflict with `lock` (type F_UNLCK when none). */
  async getlk(nodeid: number, fh: number, owner: bigint, lock: LockRequest): Promise<FileLock> {
    return (await this.reply(FUSE_OPS.getlk, nodeid, lkIn(fh, owner, lock, false))).lk;
  }

  /** Takes or releases a POSIX lock (or a BSD flock with `flock`) without waiting: EAGAIN on conflict. */
  setlk(nodeid: number, fh: number, owner: bigint, lock: LockRequest, flock = false): Promise<void> {
    return this.done(FUSE_OPS.setlk, nodeid, lkIn(fh, owner, lock, flock));
  }

  /** Like setlk() but the back-end waits until the lock can be taken. */
  setlkw(nodeid: number, fh: number, owner: bigint, lock: LockRequest, flock = false, opts?: CallOptions): Promise<void> {
    return this.done(FUSE_OPS.setlkw, nodeid, lkIn(fh, owner, lock, flock), { opts });
  }

  /* ---------------- DAX ---------------- */

  /** Maps [foffset, foffset+len) of an open file at `moffset` of the DAX window (FUSE_SETUPMAPPING_FLAG_*); fh -1 is "no handle". */
  setupMapping(
    nodeid: number,
    fh: number | bigint,
    m: { foffset: number | bigint; len: number | bigint; moffset: number | bigint; flags: number | bigint },
    opts?: CallOptions,
  ): Promise<void> {
    return this.done(
      FUSE_OPS.setupMapping,
      nodeid,
      {
        fh: BigInt.asUintN(64, BigInt(fh)), // -1: no handle
        foffset: BigInt(m.foffset),
        len: BigInt(m.len),
        moffset: BigInt(m.moffset),
        flags: BigInt(m.flags),
      },
      { opts },
    );
  }

  removeMapping(nodeid: number, ranges: MappingRange[]): Promise<void> {
    const tail = Buffer.alloc(ranges.length * P.fuse_removemapping_one.size);
    ranges.forEach((r, i) =>
      P.fuse_removemapping_one.encode({ moffset: BigInt(r.moffset), len: BigInt(r.len) }, tail, i * P.fuse_removemapping_one.size),
    );
    return this.done(FUSE_OPS.removeMapping, nodeid, { count: ranges.length }, { tail: [tail] });
  }
}

function lkIn(fh: number, owner: bigint, lock: LockRequest, flock: boolean): ValueOfLayout<typeof P.fuse_lk_in> {
  return { fh, owner, lk: { ...lock, pid: lock.pid ?? 0 }, lk_flags: flock ? FUSE_LK_FLOCK : 0 };
}

/**
 * A FUSE session over a vhost-user-fs front-end: FuseClient on a FuseTransport.
 * Call init() first.
 */
export class FuseDriver extends FuseClient<FuseTransport> {
  private ownsFrontend = false;

  constructor(
    readonly frontend: VhostUserFrontend,
    options: FuseDriverOptions = {},
  ) {
    const indirect = options.indirectRequests ?? false;
    if (indirect && !(frontend.features & bit(VIRTIO_RING_F_INDIRECT_DESC))) {
      throw new Error('indirect descriptors asked for but VIRTIO_RING_F_INDIRECT_DESC was not negotiated');
    }
    super(
      new FuseTransport(frontend, {
        indirect,
        uid: options.uid ?? process.getuid?.() ?? 0,
        gid: options.gid ?? process.getgid?.() ?? 0,
        pid: options.pid ?? process.pid,
        timeoutMs: options.timeoutMs ?? 0,
      }),
    );
  }

  /** The vhost-user transport (in-flight requests, raw calls). */
  get transport(): FuseTransport {
    return this.channel;
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

  /** Closes the front-end if connect() made it (once); a front-end passed in stays the caller's. */
  close(): void {
    if (this.ownsFrontend) this.frontend.close();
    this.ownsFrontend = false;
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
  const header = plus ? P.fuse_direntplus.size : P.fuse_dirent.size;
  for (let pos = 0; pos < body.length;) {
    if (pos + header > body.length) throw new FuseRequestError(opcode, Errno.EPROTO, 'protocol', `truncated dirent at ${pos}`);
    let entry: EntryOut | undefined;
    let d: ValueOfLayout<typeof P.fuse_dirent>;
    if (plus) {
      const dp = P.fuse_direntplus.decode(body, pos);
      entry = dp.entry_out;
      d = dp.dirent;
    } else {
      d = P.fuse_dirent.decode(body, pos);
    }
    if (pos + header + d.namelen > body.length)
      throw new FuseRequestError(opcode, Errno.EPROTO, 'protocol', `dirent name overruns the reply at ${pos}`);
    const name = body.subarray(pos + header, pos + header + d.namelen).toString();
    out.push(entry ? { ino: d.ino, off: d.off, type: d.type, name, entry } : { ino: d.ino, off: d.off, type: d.type, name });
    pos += fuseRecAlign(header + d.namelen);
  }
  return out;
}
