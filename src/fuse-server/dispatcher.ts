/**
 * Opcode -> handler. Each handler decodes its arguments from the request,
 * calls one FileSystem operation and encodes the reply body; the session
 * frames the reply and turns thrown errors into error replies. Guest names are
 * checked here, where they enter, before any file-system code sees them.
 *
 * A handler whose operation waits (SETLKW, SETUPMAPPING) or runs on libuv's
 * thread pool (large READ/WRITE, FSYNC, COPY_FILE_RANGE, ...) returns a
 * Promise; its Request, Reader and Writer are its own for as long as it runs
 * (one of each per request, never reused), and the session writes the reply
 * header when the promise settles. One table (OPCODES) carries every opcode's
 * handler and framing flags, the session's own INIT, INTERRUPT and DESTROY
 * included.
 */
import { RENAME_NOREPLACE } from '../sys/fs';
import type { Reader, Writer } from './chain-io';
import { Errno, fail } from './errors';
import { findSecctxExtension, parseSecctx } from './extensions';
import type { Context, FileSystem, LockRange, SecurityContext, SetattrArgs, WindowRange } from './filesystem';
import { MAX_WRITE } from './init';
import { DOTS, type DotErrnos, checkName } from './names';
import {
  FATTR_ATIME,
  FATTR_ATIME_NOW,
  FATTR_FH,
  FATTR_GID,
  FATTR_KILL_SUIDGID,
  FATTR_MODE,
  FATTR_MTIME,
  FATTR_MTIME_NOW,
  FATTR_SIZE,
  FATTR_UID,
  FUSE_FSYNC_FDATASYNC,
  FUSE_GETATTR_FH,
  FUSE_LK_FLOCK,
  FUSE_REMOVEMAPPING_MAX_ENTRY,
  NAME_MAX,
  Opcode,
  PATH_MAX,
  XATTR_LIST_MAX,
  XATTR_NAME_MAX,
  XATTR_SIZE_MAX,
  type SetattrIn,
  fuse_access_in,
  fuse_batch_forget_in,
  fuse_copy_file_range_in,
  fuse_create_in,
  fuse_fallocate_in,
  fuse_flush_in,
  fuse_forget_in,
  fuse_forget_one,
  fuse_fsync_in,
  fuse_getattr_in,
  fuse_getxattr_in,
  fuse_getxattr_out,
  fuse_interrupt_in,
  fuse_link_in,
  fuse_lk_in,
  fuse_lk_out,
  fuse_lseek_in,
  fuse_lseek_out,
  fuse_mkdir_in,
  fuse_mknod_in,
  fuse_open_in,
  fuse_read_in,
  fuse_release_in,
  fuse_removemapping_in,
  fuse_removemapping_one,
  fuse_rename2_in,
  fuse_rename_in,
  fuse_setattr_in,
  fuse_setupmapping_in,
  fuse_setxattr_in,
  fuse_setxattr_in_compat,
  fuse_statx_in,
  fuse_syncfs_in,
  fuse_write_in,
  fuse_write_out,
} from './protocol';
import { DirReply, replyAttr, replyEntry, replyOpen, replyStatfs, replyStatx } from './reply';

/** Where security contexts arrive, once INIT agreed on FUSE_SECURITY_CTX. */
export type SecctxFormat = 'none' | 'after-args' | 'extension';

/** What INIT agreed on that changes how later requests are decoded. */
export interface Negotiated {
  readonly secctxFormat: SecctxFormat;
  readonly setxattrExt: boolean;
}

/** The session's own opcodes (INIT, INTERRUPT, DESTROY) and the interrupt registry. */
export interface SessionControl {
  init(req: Request): void;
  interrupt(unique: bigint): void;
  destroy(): void;
  /** A signal that fires if the guest interrupts the request now being served (FUSE_INTERRUPT) or the session ends. */
  interruptSignal(): AbortSignal;
}

/**
 * One decoded request as handlers see it; it is also the caller's Context.
 * One object per request, never reused: a handler that waits may keep it (and
 * its Reader and Writer) for as long as it likes.
 */
export class Request implements Context {
  constructor(
    readonly opcode: number,
    readonly unique: bigint,
    readonly nodeid: number,
    readonly uid: number,
    readonly gid: number,
    readonly pid: number,
    /** The request's extension area (fuse_in_header.total_extlen), if any. */
    readonly extensions: Buffer | null,
    /** The request's arguments, after fuse_in_header (and before any extensions). */
    readonly args: Reader,
    /** The reply body, after the space left for fuse_out_header. */
    readonly reply: Writer,
    readonly negotiated: Negotiated,
    readonly session: SessionControl,
  ) {}

  get secctxFormat(): SecctxFormat {
    return this.negotiated.secctxFormat;
  }

  /** A signal that fires if the guest interrupts this request (FUSE_INTERRUPT) or the session ends. Only while the handler runs synchronously. */
  interruptSignal(): AbortSignal {
    return this.session.interruptSignal();
  }
}

/** The caller's ids with the label a creating request carries. */
function labelled(req: Request, secctx: SecurityContext | null): Context {
  return { uid: req.uid, gid: req.gid, pid: req.pid, secctx };
}

type Handler = (fs: FileSystem, req: Request) => void | Promise<void>;

/** One opcode's row: its handler and how the session frames it. */
export interface OpcodeEntry {
  readonly handler: Handler;
  /** The kernel never waits for an answer (FORGET, BATCH_FORGET, INTERRUPT): none is sent, not even an error. */
  readonly noReply?: boolean;
  /** Served before INIT (INIT itself, INTERRUPT); everything else answers EIO until then (or nothing, if noReply). */
  readonly beforeInit?: boolean;
}

/* ---------------- argument helpers ---------------- */

/*
 * Every string a guest sends is read with its bound (the scan stops there):
 * names NAME_MAX, paths PATH_MAX, xattr names XATTR_NAME_MAX. A name is the
 * last argument of its request (a security context may follow on 7.36/7.37
 * kernels): bytes after its NUL mean the guest's name held a NUL, and the
 * request is refused rather than cut short at it.
 */

/** A path component of 1..NAME_MAX bytes; '.' and '..' answered with `dots`' errno. */
function readName(req: Request, dots: DotErrnos): Buffer {
  return checkName(req.args.readCString(NAME_MAX + 1, Errno.ENAMETOOLONG), dots);
}

/** EINVAL if anything is left after the last argument: a name with a NUL inside it. */
function endOfArgs(req: Request): void {
  if (req.args.remaining > 0) fail(Errno.EINVAL);
}

/** The end of a creating request: its security context (7.36/7.37 append it after the name), or nothing. */
function endOfCreate(req: Request): void {
  if (req.secctxFormat !== 'after-args') endOfArgs(req);
}

/** An xattr name of 1..XATTR_NAME_MAX bytes: ERANGE otherwise, as setxattr(2) and getxattr(2) answer. */
function readXattrName(req: Request): Buffer {
  const name = req.args.readCString(XATTR_NAME_MAX + 1, Errno.ERANGE);
  if (name.length === 1) fail(Errno.ERANGE);
  return name;
}

/** READ and WRITE move at most what INIT announced (max_write, max_pages pages). */
function ioSize(size: number): number {
  if (size > MAX_WRITE) fail(Errno.EINVAL);
  return size;
}

/** A file range the host can address exactly; beyond 2^53 we answer EINVAL rather than guess. */
function fileRange(offset: number | bigint, size: number): number {
  const at = typeof offset === 'bigint' ? (offset <= MAX_SAFE_OFFSET ? Number(offset) : -1) : offset;
  if (at < 0 || !Number.isSafeInteger(at + size)) fail(Errno.EINVAL);
  return at;
}
const MAX_SAFE_OFFSET = BigInt(Number.MAX_SAFE_INTEGER);

/** The security context of a creating request, after its fixed arguments and name were read. */
function securityContext(req: Request): SecurityContext | null {
  switch (req.secctxFormat) {
    case 'none':
      return null;
    case 'extension': {
      const block = req.extensions ? findSecctxExtension(req.extensions) : null;
      return block ? parseSecctx(block) : null;
    }
    case 'after-args':
      return req.args.remaining > 0 ? parseSecctx(req.args.readBytes(req.args.remaining)) : null;
  }
}

function setattrArgs(a: SetattrIn): SetattrArgs {
  const v = a.valid;
  const args: SetattrArgs = {};
  if (v & FATTR_FH) args.fh = a.fh;
  if (v & FATTR_MODE) args.mode = a.mode;
  if (v & FATTR_UID) args.uid = a.uid;
  if (v & FATTR_GID) args.gid = a.gid;
  if (v & FATTR_SIZE) {
    if (!Number.isSafeInteger(a.size)) fail(Errno.EFBIG);
    args.size = a.size;
  }
  // The kernel sets *_NOW together with the plain bit; NOW alone means the same.
  if (v & FATTR_ATIME_NOW) args.atime = 'now';
  else if (v & FATTR_ATIME) args.atime = { sec: a.atime, nsec: a.atimensec };
  if (v & FATTR_MTIME_NOW) args.mtime = 'now';
  else if (v & FATTR_MTIME) args.mtime = { sec: a.mtime, nsec: a.mtimensec };
  if (v & FATTR_KILL_SUIDGID) args.killSuidgid = true;
  return args;
}

function lockRange(lk: { start: bigint; end: bigint; type: number; pid: number }): LockRange {
  return { type: lk.type, start: lk.start, end: lk.end, pid: lk.pid };
}

/** size 0 asks how big the answer is (fuse_getxattr_out); otherwise the answer itself. */
function replyXattr(req: Request, size: number, result: number | Buffer): void {
  if (size === 0) req.reply.writeStruct(fuse_getxattr_out, { size: result as number });
  else req.reply.writeBytes(result as Buffer);
}

/** Runs `then` on the operation's result, now or once its promise settles (operations on the thread pool). */
function settled<T>(result: T | Promise<T>, then: (value: T) => void): void | Promise<void> {
  return result instanceof Promise ? result.then(then) : then(result);
}

/* ---------------- handlers ---------------- */

function readdir(fs: FileSystem, req: Request, plus: boolean): void {
  const a = req.args.readStruct(fuse_read_in);
  // Linux asks for at most max_pages pages.
  const sink = new DirReply(req.reply, Math.min(a.size, MAX_WRITE, req.reply.remaining), plus);
  fs.readdir(req, req.nodeid, a.fh, a.offset, sink);
}

function rename(fs: FileSystem, req: Request, newdir: number, flags: number): void {
  const name = readName(req, DOTS.rename);
  const newname = readName(req, flags & RENAME_NOREPLACE ? DOTS.renameNoReplace : DOTS.rename);
  endOfArgs(req);
  fs.rename(req, req.nodeid, name, newdir, newname, flags);
}

function setlk(fs: FileSystem, req: Request, wait: boolean): void | Promise<void> {
  const a = req.args.readStruct(fuse_lk_in);
  const flock = (a.lk_flags & FUSE_LK_FLOCK) !== 0;
  return fs.setlk(req, req.nodeid, a.fh, a.owner, lockRange(a.lk), { flock, wait: wait ? req.interruptSignal() : null });
}

const handlers: Partial<Record<Opcode, Handler>> = {
  [Opcode.FUSE_INIT]: (fs, req) => req.session.init(req),
  // The interrupted request answers EINTR; one that already finished (or never waited) has nothing left to interrupt.
  [Opcode.FUSE_INTERRUPT]: (fs, req) => req.session.interrupt(req.args.readStruct(fuse_interrupt_in).unique),
  [Opcode.FUSE_DESTROY]: (fs, req) => req.session.destroy(),
  [Opcode.FUSE_LOOKUP]: (fs, req) => {
    // LOOKUP may name `.` and `..` (FUSE_EXPORT_SUPPORT); the file system keeps `..` inside the share.
    const name = readName(req, DOTS.lookup);
    endOfArgs(req);
    return settled(fs.lookup(req, req.nodeid, name), (entry) => replyEntry(req.reply, entry));
  },
  [Opcode.FUSE_FORGET]: (fs, req) => {
    fs.forget(req.nodeid, req.args.readStruct(fuse_forget_in).nlookup);
  },
  [Opcode.FUSE_BATCH_FORGET]: (fs, req) => {
    const { count } = req.args.readStruct(fuse_batch_forget_in);
    // A count larger than the payload is cut to the entries actually present.
    const n = Math.min(count, Math.floor(req.args.remaining / fuse_forget_one.size));
    for (let i = 0; i < n; i++) {
      const one = req.args.readStruct(fuse_forget_one);
      fs.forget(one.nodeid, one.nlookup);
    }
  },
  [Opcode.FUSE_GETATTR]: (fs, req) => {
    const a = req.args.readStruct(fuse_getattr_in);
    return settled(fs.getattr(req, req.nodeid, a.getattr_flags & FUSE_GETATTR_FH ? a.fh : undefined), (attr) => replyAttr(req.reply, attr));
  },
  [Opcode.FUSE_STATX]: (fs, req) => {
    const a = req.args.readStruct(fuse_statx_in);
    const attr = fs.statx(req, req.nodeid, a.getattr_flags & FUSE_GETATTR_FH ? a.fh : undefined, a.sx_flags, a.sx_mask);
    return settled(attr, (reply) => replyStatx(req.reply, reply));
  },
  [Opcode.FUSE_SETATTR]: (fs, req) => {
    replyAttr(req.reply, fs.setattr(req, req.nodeid, setattrArgs(req.args.readStruct(fuse_setattr_in))));
  },
  [Opcode.FUSE_READLINK]: (fs, req) => {
    req.reply.writeBytes(fs.readlink(req, req.nodeid));
  },
  [Opcode.FUSE_SYMLINK]: (fs, req) => {
    const name = readName(req, DOTS.create);
    // The target is a path stored in the link, not a name we resolve: any bytes but NUL, up to
    // PATH_MAX with its NUL; empty is ENOENT, as symlink(2) answers.
    const target = req.args.readCString(PATH_MAX, Errno.ENAMETOOLONG);
    endOfCreate(req);
    if (target.length === 1) fail(Errno.ENOENT);
    replyEntry(req.reply, fs.symlink(labelled(req, securityContext(req)), target, req.nodeid, name));
  },
  [Opcode.FUSE_MKNOD]: (fs, req) => {
    const a = req.args.readStruct(fuse_mknod_in);
    const name = readName(req, DOTS.create);
    endOfCreate(req);
    replyEntry(req.reply, fs.mknod(labelled(req, securityContext(req)), req.nodeid, name, a.mode, a.rdev, a.umask));
  },
  [Opcode.FUSE_MKDIR]: (fs, req) => {
    const a = req.args.readStruct(fuse_mkdir_in);
    const name = readName(req, DOTS.create);
    endOfCreate(req);
    replyEntry(req.reply, fs.mkdir(labelled(req, securityContext(req)), req.nodeid, name, a.mode, a.umask));
  },
  [Opcode.FUSE_UNLINK]: (fs, req) => {
    const name = readName(req, DOTS.unlink);
    endOfArgs(req);
    fs.unlink(req, req.nodeid, name);
  },
  [Opcode.FUSE_RMDIR]: (fs, req) => {
    const name = readName(req, DOTS.rmdir);
    endOfArgs(req);
    fs.rmdir(req, req.nodeid, name);
  },
  [Opcode.FUSE_RENAME]: (fs, req) => rename(fs, req, req.args.readStruct(fuse_rename_in).newdir, 0),
  [Opcode.FUSE_RENAME2]: (fs, req) => {
    const a = req.args.readStruct(fuse_rename2_in);
    rename(fs, req, a.newdir, a.flags);
  },
  [Opcode.FUSE_LINK]: (fs, req) => {
    // The header names the directory that gets the new name; link_in the existing inode.
    const a = req.args.readStruct(fuse_link_in);
    const name = readName(req, DOTS.create);
    endOfArgs(req);
    replyEntry(req.reply, fs.link(req, a.oldnodeid, req.nodeid, name));
  },
  [Opcode.FUSE_OPEN]: (fs, req) => {
    const a = req.args.readStruct(fuse_open_in);
    return settled(fs.open(req, req.nodeid, a.flags, a.open_flags), (opened) => replyOpen(req.reply, opened));
  },
  [Opcode.FUSE_READ]: (fs, req) => {
    const a = req.args.readStruct(fuse_read_in);
    const size = Math.min(ioSize(a.size), req.reply.remaining);
    return settled(fs.read(req, req.nodeid, a.fh, req.reply, size, fileRange(a.offset, size)), () => undefined);
  },
  [Opcode.FUSE_WRITE]: (fs, req) => {
    const a = req.args.readStruct(fuse_write_in);
    if (ioSize(a.size) > req.args.remaining) fail(Errno.EINVAL);
    const offset = fileRange(a.offset, a.size);
    const written = fs.write(req, req.nodeid, a.fh, req.args, { size: a.size, offset, writeFlags: a.write_flags, fileFlags: a.flags });
    return settled(written, (size) => req.reply.writeStruct(fuse_write_out, { size }));
  },
  [Opcode.FUSE_STATFS]: (fs, req) => replyStatfs(req.reply, fs.statfs(req, req.nodeid)),
  [Opcode.FUSE_RELEASE]: (fs, req) => {
    const a = req.args.readStruct(fuse_release_in);
    fs.release(req, req.nodeid, a.fh, a.flags, a.release_flags, a.lock_owner);
  },
  [Opcode.FUSE_FSYNC]: (fs, req) => {
    const a = req.args.readStruct(fuse_fsync_in);
    return fs.fsync(req, req.nodeid, a.fh, (a.fsync_flags & FUSE_FSYNC_FDATASYNC) !== 0);
  },
  [Opcode.FUSE_FLUSH]: (fs, req) => {
    const a = req.args.readStruct(fuse_flush_in);
    fs.flush(req, req.nodeid, a.fh, a.lock_owner);
  },
  [Opcode.FUSE_OPENDIR]: (fs, req) => {
    replyOpen(req.reply, fs.opendir(req, req.nodeid, req.args.readStruct(fuse_open_in).flags));
  },
  [Opcode.FUSE_READDIR]: (fs, req) => readdir(fs, req, false),
  [Opcode.FUSE_READDIRPLUS]: (fs, req) => readdir(fs, req, true),
  [Opcode.FUSE_RELEASEDIR]: (fs, req) => {
    fs.releasedir(req, req.nodeid, req.args.readStruct(fuse_release_in).fh);
  },
  [Opcode.FUSE_FSYNCDIR]: (fs, req) => {
    const a = req.args.readStruct(fuse_fsync_in);
    return fs.fsyncdir(req, req.nodeid, a.fh, (a.fsync_flags & FUSE_FSYNC_FDATASYNC) !== 0);
  },
  [Opcode.FUSE_ACCESS]: (fs, req) => fs.access(req, req.nodeid, req.args.readStruct(fuse_access_in).mask),
  [Opcode.FUSE_CREATE]: (fs, req) => {
    const a = req.args.readStruct(fuse_create_in);
    const name = readName(req, DOTS.open);
    endOfCreate(req);
    const [entry, opened] = fs.create(labelled(req, securityContext(req)), req.nodeid, name, a.mode, a.flags, a.umask, a.open_flags);
    replyEntry(req.reply, entry);
    replyOpen(req.reply, opened);
  },
  [Opcode.FUSE_TMPFILE]: (fs, req) => {
    const a = req.args.readStruct(fuse_create_in);
    // The kernel sends the unnamed dentry's placeholder name ("/"): read past it (bounded like any
    // name), never use it.
    req.args.readCString(NAME_MAX + 1, Errno.ENAMETOOLONG);
    endOfCreate(req);
    const [entry, opened] = fs.tmpfile(labelled(req, securityContext(req)), req.nodeid, a.mode, a.flags, a.umask);
    replyEntry(req.reply, entry);
    replyOpen(req.reply, opened);
  },

  [Opcode.FUSE_SETXATTR]: (fs, req) => {
    const a = req.negotiated.setxattrExt
      ? req.args.readStruct(fuse_setxattr_in)
      : { ...req.args.readStruct(fuse_setxattr_in_compat), setxattr_flags: 0 };
    const name = readXattrName(req);
    // As setxattr(2): a value past XATTR_SIZE_MAX is E2BIG, refused before anything is copied.
    if (a.size > XATTR_SIZE_MAX) fail(Errno.E2BIG);
    const value = req.args.readBytes(a.size);
    fs.setxattr(req, req.nodeid, name, value, a.flags, a.setxattr_flags);
  },
  [Opcode.FUSE_GETXATTR]: (fs, req) => {
    // As getxattr(2), a larger buffer is cut to XATTR_SIZE_MAX: no value is longer.
    const size = Math.min(req.args.readStruct(fuse_getxattr_in).size, XATTR_SIZE_MAX);
    const name = readXattrName(req);
    endOfArgs(req);
    replyXattr(req, size, fs.getxattr(req, req.nodeid, name, size));
  },
  [Opcode.FUSE_LISTXATTR]: (fs, req) => {
    const size = Math.min(req.args.readStruct(fuse_getxattr_in).size, XATTR_LIST_MAX);
    replyXattr(req, size, fs.listxattr(req, req.nodeid, size));
  },
  [Opcode.FUSE_REMOVEXATTR]: (fs, req) => {
    const name = readXattrName(req);
    endOfArgs(req);
    fs.removexattr(req, req.nodeid, name);
  },

  [Opcode.FUSE_GETLK]: (fs, req) => {
    const a = req.args.readStruct(fuse_lk_in);
    const lk = fs.getlk(req, req.nodeid, a.fh, a.owner, lockRange(a.lk));
    req.reply.writeStruct(fuse_lk_out, { lk });
  },
  [Opcode.FUSE_SETLK]: (fs, req) => setlk(fs, req, false),
  [Opcode.FUSE_SETLKW]: (fs, req) => setlk(fs, req, true),

  [Opcode.FUSE_FALLOCATE]: (fs, req) => {
    const a = req.args.readStruct(fuse_fallocate_in);
    return fs.fallocate(req, req.nodeid, a.fh, fileRange(a.offset, a.length), a.length, a.mode);
  },
  [Opcode.FUSE_LSEEK]: (fs, req) => {
    const a = req.args.readStruct(fuse_lseek_in);
    if (a.offset > 0x7fff_ffff_ffff_ffffn) fail(Errno.EINVAL);
    req.reply.writeStruct(fuse_lseek_out, { offset: fs.lseek(req, req.nodeid, a.fh, a.offset, a.whence) });
  },
  [Opcode.FUSE_COPY_FILE_RANGE]: (fs, req) => {
    const a = req.args.readStruct(fuse_copy_file_range_in);
    const len = Math.min(a.len, Number.MAX_SAFE_INTEGER);
    const from = { nodeid: req.nodeid, fh: a.fh_in, offset: fileRange(a.off_in, 0) };
    const to = { nodeid: a.nodeid_out, fh: a.fh_out, offset: fileRange(a.off_out, 0) };
    const copied = fs.copyFileRange(req, from, to, len, a.flags);
    return settled(copied, (size) => req.reply.writeStruct(fuse_write_out, { size }));
  },
  [Opcode.FUSE_SYNCFS]: (fs, req) => {
    req.args.readStruct(fuse_syncfs_in);
    return fs.syncfs(req, req.nodeid);
  },

  [Opcode.FUSE_SETUPMAPPING]: (fs, req) => {
    const a = req.args.readStruct(fuse_setupmapping_in);
    return fs.setupmapping(req, req.nodeid, a.fh, { foffset: a.foffset, len: a.len, flags: a.flags, moffset: a.moffset });
  },
  [Opcode.FUSE_REMOVEMAPPING]: (fs, req) => {
    const { count } = req.args.readStruct(fuse_removemapping_in);
    // Every range the count announces must be in the request, and no more than Linux ever sends.
    if (count === 0 || count > FUSE_REMOVEMAPPING_MAX_ENTRY || count > Math.floor(req.args.remaining / fuse_removemapping_one.size))
      fail(Errno.EINVAL);
    const ranges: WindowRange[] = [];
    for (let i = 0; i < count; i++) ranges.push(req.args.readStruct(fuse_removemapping_one));
    return fs.removemapping(req, ranges);
  },
};

/** Every opcode we serve: its handler and framing flags. Opcodes not here answer ENOSYS. */
export const OPCODES: ReadonlyMap<number, OpcodeEntry> = new Map(
  (Object.entries(handlers) as [string, Handler][]).map(([opcode, handler]) => {
    const op = Number(opcode);
    const noReply = op === Opcode.FUSE_FORGET || op === Opcode.FUSE_BATCH_FORGET || op === Opcode.FUSE_INTERRUPT;
    const beforeInit = op === Opcode.FUSE_INIT || op === Opcode.FUSE_INTERRUPT;
    return [op, { handler, noReply, beforeInit }];
  }),
);

/** Requests the kernel never waits on: no reply, not even an error (unknown opcodes get ENOSYS). */
export function expectsNoReply(opcode: number): boolean {
  return OPCODES.get(opcode)?.noReply === true;
}
