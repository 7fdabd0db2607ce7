/**
 * Opcode -> handler. Each handler decodes its arguments from the request,
 * calls one FileSystem operation and encodes the reply body; the session
 * frames the reply and turns thrown errors into error replies. Guest names are
 * checked here, where they enter, before any file-system code sees them.
 *
 * A handler whose operation must wait returns a Promise. It decodes all its
 * arguments first and hands the operation a copy of the caller's context: the
 * Request, Reader and Writer are reused by the next request as soon as the
 * handler returns. Such replies carry no body (SETLKW, SETUPMAPPING,
 * REMOVEMAPPING): the session writes the header when the promise settles.
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
  fuse_link_in,
  fuse_lk_in,
  fuse_lk_out,
  fuse_lseek_in,
  fuse_lseek_out,
  fuse_mkdir_in,
  fuse_mknod_in,
  fuse_open_in,
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
  fuse_statx_in,
  fuse_syncfs_in,
  fuse_write_in,
  fuse_write_out,
} from './protocol';
import { DirReply, replyAttr, replyEntry, replyOpen, replyStatfs, replyStatx } from './reply';

/** Where security contexts arrive, once INIT agreed on FUSE_SECURITY_CTX. */
export type SecctxFormat = 'none' | 'after-args' | 'extension';

/** One decoded request as handlers see it; it is also the caller's Context. */
export class Request implements Context {
  opcode = 0;
  unique = 0n;
  nodeid = 0;
  uid = 0;
  gid = 0;
  pid = 0;
  secctx: SecurityContext | null = null;
  /** The request's extension area (fuse_in_header.total_extlen), if any. */
  extensions: Buffer | null = null;
  /** Set by the session at INIT. */
  secctxFormat: SecctxFormat = 'none';
  setxattrExt = false;
  private controller: AbortController | null = null;

  constructor(
    /** The request's arguments, after fuse_in_header (and before any extensions). */
    readonly args: Reader,
    /** The reply body, after the space left for fuse_out_header. */
    readonly reply: Writer,
  ) {}

  /** Starts a new request. */
  reset(opcode: number, unique: bigint, nodeid: number, uid: number, gid: number, pid: number, extensions: Buffer | null): void {
    this.opcode = opcode;
    this.unique = unique;
    this.nodeid = nodeid;
    this.uid = uid;
    this.gid = gid;
    this.pid = pid;
    this.extensions = extensions;
    this.secctx = null;
    this.controller = null;
  }

  /** A signal that fires if the guest interrupts this request (FUSE_INTERRUPT) or the session ends. */
  interruptSignal(): AbortSignal {
    this.controller ??= new AbortController();
    return this.controller.signal;
  }

  /** The controller behind interruptSignal(), if a handler asked for one. */
  takeController(): AbortController | null {
    const c = this.controller;
    this.controller = null;
    return c;
  }

  /** The caller's ids, detached from this reused object (for operations that wait). */
  snapshot(): Context {
    return { uid: this.uid, gid: this.gid, pid: this.pid };
  }
}

/** Returned by handlers of requests that get no reply (FORGET, BATCH_FORGET). */
export const NO_REPLY = Symbol('no reply');

type Handler = (fs: FileSystem, req: Request) => void | typeof NO_REPLY | Promise<void>;

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
function fileRange(offset: number, size: number): number {
  if (!Number.isSafeInteger(offset + size)) fail(Errno.EINVAL);
  return offset;
}

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

/* ---------------- handlers ---------------- */

function readdir(fs: FileSystem, req: Request, plus: boolean): void {
  const a = req.args.readStruct(fuse_readdir_in);
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
  if (!wait) return fs.setlk(req, req.nodeid, a.fh, a.owner, lockRange(a.lk), flock, null);
  return fs.setlk(req.snapshot(), req.nodeid, a.fh, a.owner, lockRange(a.lk), flock, req.interruptSignal());
}

const handlers: Partial<Record<Opcode, Handler>> = {
  [Opcode.FUSE_LOOKUP]: (fs, req) => {
    // LOOKUP may name `.` and `..` (FUSE_EXPORT_SUPPORT); the file system keeps `..` inside the share.
    const name = readName(req, DOTS.lookup);
    endOfArgs(req);
    replyEntry(req.reply, fs.lookup(req, req.nodeid, name));
  },
  [Opcode.FUSE_FORGET]: (fs, req) => {
    fs.forget(req.nodeid, req.args.readStruct(fuse_forget_in).nlookup);
    return NO_REPLY;
  },
  [Opcode.FUSE_BATCH_FORGET]: (fs, req) => {
    const { count } = req.args.readStruct(fuse_batch_forget_in);
    // A count larger than the payload is cut to the entries actually present.
    const n = Math.min(count, Math.floor(req.args.remaining / fuse_forget_one.size));
    for (let i = 0; i < n; i++) {
      const one = req.args.readStruct(fuse_forget_one);
      fs.forget(one.nodeid, one.nlookup);
    }
    return NO_REPLY;
  },
  [Opcode.FUSE_GETATTR]: (fs, req) => {
    const a = req.args.readStruct(fuse_getattr_in);
    replyAttr(req.reply, fs.getattr(req, req.nodeid, a.getattr_flags & FUSE_GETATTR_FH ? a.fh : undefined));
  },
  [Opcode.FUSE_STATX]: (fs, req) => {
    const a = req.args.readStruct(fuse_statx_in);
    replyStatx(req.reply, fs.statx(req, req.nodeid, a.getattr_flags & FUSE_GETATTR_FH ? a.fh : undefined, a.sx_flags, a.sx_mask));
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
    req.secctx = securityContext(req);
    replyEntry(req.reply, fs.symlink(req, target, req.nodeid, name));
  },
  [Opcode.FUSE_MKNOD]: (fs, req) => {
    const a = req.args.readStruct(fuse_mknod_in);
    const name = readName(req, DOTS.create);
    endOfCreate(req);
    req.secctx = securityContext(req);
    replyEntry(req.reply, fs.mknod(req, req.nodeid, name, a.mode, a.rdev, a.umask));
  },
  [Opcode.FUSE_MKDIR]: (fs, req) => {
    const a = req.args.readStruct(fuse_mkdir_in);
    const name = readName(req, DOTS.create);
    endOfCreate(req);
    req.secctx = securityContext(req);
    replyEntry(req.reply, fs.mkdir(req, req.nodeid, name, a.mode, a.umask));
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
    replyOpen(req.reply, fs.open(req, req.nodeid, a.flags, a.open_flags));
  },
  [Opcode.FUSE_READ]: (fs, req) => {
    const a = req.args.readStruct(fuse_read_in);
    const size = Math.min(ioSize(a.size), req.reply.remaining);
    fs.read(req, req.nodeid, a.fh, req.reply, size, fileRange(a.offset, size));
  },
  [Opcode.FUSE_WRITE]: (fs, req) => {
    const a = req.args.readStruct(fuse_write_in);
    if (ioSize(a.size) > req.args.remaining) fail(Errno.EINVAL);
    const written = fs.write(req, req.nodeid, a.fh, req.args, a.size, fileRange(a.offset, a.size), a.write_flags, a.flags);
    req.reply.writeStruct(fuse_write_out, { size: written });
  },
  [Opcode.FUSE_STATFS]: (fs, req) => replyStatfs(req.reply, fs.statfs(req, req.nodeid)),
  [Opcode.FUSE_RELEASE]: (fs, req) => {
    const a = req.args.readStruct(fuse_release_in);
    fs.release(req, req.nodeid, a.fh, a.flags, a.release_flags, a.lock_owner);
  },
  [Opcode.FUSE_FSYNC]: (fs, req) => {
    const a = req.args.readStruct(fuse_fsync_in);
    fs.fsync(req, req.nodeid, a.fh, (a.fsync_flags & FUSE_FSYNC_FDATASYNC) !== 0);
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
    fs.fsyncdir(req, req.nodeid, a.fh, (a.fsync_flags & FUSE_FSYNC_FDATASYNC) !== 0);
  },
  [Opcode.FUSE_ACCESS]: (fs, req) => fs.access(req, req.nodeid, req.args.readStruct(fuse_access_in).mask),
  [Opcode.FUSE_CREATE]: (fs, req) => {
    const a = req.args.readStruct(fuse_create_in);
    const name = readName(req, DOTS.open);
    endOfCreate(req);
    req.secctx = securityContext(req);
    const [entry, opened] = fs.create(req, req.nodeid, name, a.mode, a.flags, a.umask, a.open_flags);
    replyEntry(req.reply, entry);
    replyOpen(req.reply, opened);
  },
  [Opcode.FUSE_TMPFILE]: (fs, req) => {
    const a = req.args.readStruct(fuse_create_in);
    // The kernel sends the unnamed dentry's placeholder name ("/"): read past it (bounded like any
    // name), never use it.
    req.args.readCString(NAME_MAX + 1, Errno.ENAMETOOLONG);
    endOfCreate(req);
    req.secctx = securityContext(req);
    const [entry, opened] = fs.tmpfile(req, req.nodeid, a.mode, a.flags, a.umask);
    replyEntry(req.reply, entry);
    replyOpen(req.reply, opened);
  },

  [Opcode.FUSE_SETXATTR]: (fs, req) => {
    const a = req.setxattrExt ? req.args.readStruct(fuse_setxattr_in) : { ...req.args.readStruct(fuse_setxattr_in_compat), setxattr_flags: 0 };
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
    fs.fallocate(req, req.nodeid, a.fh, fileRange(a.offset, a.length), a.length, a.mode);
  },
  [Opcode.FUSE_LSEEK]: (fs, req) => {
    const a = req.args.readStruct(fuse_lseek_in);
    if (a.offset > 0x7fff_ffff_ffff_ffffn) fail(Errno.EINVAL);
    req.reply.writeStruct(fuse_lseek_out, { offset: fs.lseek(req, req.nodeid, a.fh, a.offset, a.whence) });
  },
  [Opcode.FUSE_COPY_FILE_RANGE]: (fs, req) => {
    const a = req.args.readStruct(fuse_copy_file_range_in);
    const len = Math.min(a.len, Number.MAX_SAFE_INTEGER);
    const copied = fs.copyFileRange(req, req.nodeid, a.fh_in, fileRange(a.off_in, 0), a.nodeid_out, a.fh_out, fileRange(a.off_out, 0), len, a.flags);
    req.reply.writeStruct(fuse_write_out, { size: copied });
  },
  [Opcode.FUSE_SYNCFS]: (fs, req) => {
    req.args.readStruct(fuse_syncfs_in);
    fs.syncfs(req, req.nodeid);
  },

  [Opcode.FUSE_SETUPMAPPING]: (fs, req) => {
    const a = req.args.readStruct(fuse_setupmapping_in);
    return fs.setupmapping(req.snapshot(), req.nodeid, a.fh, { foffset: a.foffset, len: a.len, flags: a.flags, moffset: a.moffset });
  },
  [Opcode.FUSE_REMOVEMAPPING]: (fs, req) => {
    const { count } = req.args.readStruct(fuse_removemapping_in);
    // Every range the count announces must be in the request, and no more than Linux ever sends.
    if (count === 0 || count > FUSE_REMOVEMAPPING_MAX_ENTRY || count > Math.floor(req.args.remaining / fuse_removemapping_one.size)) fail(Errno.EINVAL);
    const ranges: WindowRange[] = [];
    for (let i = 0; i < count; i++) ranges.push(req.args.readStruct(fuse_removemapping_one));
    return fs.removemapping(req.snapshot(), ranges);
  },
};

/**
 * Runs the handler for `req.opcode` against `fs`: the reply body is left in
 * `req.reply`. Throws an errno-carrying error (ENOSYS for opcodes without a
 * handler), returns NO_REPLY, or a Promise for requests that wait.
 */
export function dispatch(fs: FileSystem, req: Request): void | typeof NO_REPLY | Promise<void> {
  const handler = handlers[req.opcode as Opcode];
  if (!handler) fail(Errno.ENOSYS);
  return handler(fs, req);
}

/** Requests the kernel never waits on: no reply, not even an error. */
export function expectsNoReply(opcode: number): boolean {
  return opcode === Opcode.FUSE_FORGET || opcode === Opcode.FUSE_BATCH_FORGET || opcode === Opcode.FUSE_INTERRUPT;
}
