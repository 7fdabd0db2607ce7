/**
 * Opcode -> handler. Each handler decodes its arguments from the request,
 * calls one FileSystem operation and encodes the reply body; the session
 * frames the reply and turns thrown errors into error replies. Guest names are
 * checked here, where they enter, before any file-system code sees them.
 */
import type { Stat, StatVfs } from '../sys/fs';
import type { Reader, Writer } from './chain-io';
import { Errno, fail } from './errors';
import type { AttrReply, Context, DirEntry, DirSink, Entry, FileSystem, Opened, SetattrArgs } from './filesystem';
import { checkComponent } from './names';
import {
  FATTR_ATIME,
  FATTR_ATIME_NOW,
  FATTR_FH,
  FATTR_GID,
  FATTR_MODE,
  FATTR_MTIME,
  FATTR_MTIME_NOW,
  FATTR_SIZE,
  FATTR_UID,
  FUSE_FSYNC_FDATASYNC,
  FUSE_GETATTR_FH,
  type EntryOut,
  type FuseAttr,
  Opcode,
  type SetattrIn,
  fuse_access_in,
  fuse_attr_out,
  fuse_batch_forget_in,
  fuse_create_in,
  fuse_dirent,
  fuse_direntplus,
  fuse_entry_out,
  fuse_flush_in,
  fuse_forget_in,
  fuse_forget_one,
  fuse_fsync_in,
  fuse_getattr_in,
  fuse_link_in,
  fuse_mkdir_in,
  fuse_mknod_in,
  fuse_open_in,
  fuse_open_out,
  fuse_read_in,
  fuse_readdir_in,
  fuse_release_in,
  fuse_rename2_in,
  fuse_rename_in,
  fuse_setattr_in,
  fuse_statfs_out,
  fuse_write_in,
  fuse_write_out,
  fuseRecAlign,
} from './protocol';

/** One decoded request as handlers see it; it is also the caller's Context. */
export class Request implements Context {
  opcode = 0;
  nodeid = 0;
  uid = 0;
  gid = 0;
  pid = 0;
  constructor(
    /** The request's arguments, after fuse_in_header. */
    readonly args: Reader,
    /** The reply body, after the space left for fuse_out_header. */
    readonly reply: Writer,
  ) {}
}

/** Returned by handlers of requests that get no reply (FORGET, BATCH_FORGET). */
export const NO_REPLY = Symbol('no reply');

type Handler = (fs: FileSystem, req: Request) => void | typeof NO_REPLY;

/* ---------------- argument helpers ---------------- */

/** A name that must be one component, not `.` or `..`. */
function newName(req: Request): Buffer {
  return checkComponent(req.args.readCString(), false);
}

/** A file range the host can address exactly; beyond 2^53 we answer EINVAL rather than guess. */
function fileRange(offset: number, size: number): number {
  if (!Number.isSafeInteger(offset + size)) fail(Errno.EINVAL);
  return offset;
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
  return args;
}

/* ---------------- reply encoders ---------------- */

function seconds(t: number): number {
  return Math.floor(t);
}
function nanos(t: number): number {
  return Math.floor((t - Math.floor(t)) * 1e9);
}

export function attrOf(st: Stat): FuseAttr {
  return {
    ino: st.ino,
    size: st.size,
    blocks: st.blocks,
    atime: st.atimeSec,
    mtime: st.mtimeSec,
    ctime: st.ctimeSec,
    atimensec: st.atimeNsec,
    mtimensec: st.mtimeNsec,
    ctimensec: st.ctimeNsec,
    mode: st.mode,
    nlink: st.nlink,
    uid: st.uid,
    gid: st.gid,
    rdev: st.rdev,
    blksize: st.blksize,
    flags: 0,
  };
}

function entryOut(e: Entry): EntryOut {
  return {
    nodeid: e.nodeid,
    generation: e.generation,
    entry_valid: seconds(e.entryTimeout),
    attr_valid: seconds(e.attrTimeout),
    entry_valid_nsec: nanos(e.entryTimeout),
    attr_valid_nsec: nanos(e.attrTimeout),
    attr: attrOf(e.stat),
  };
}

/** READDIRPLUS entries for `.` and `..` carry nodeid 0: the kernel then uses only the dirent. */
const NO_ENTRY: EntryOut = fuse_entry_out.decode(Buffer.alloc(fuse_entry_out.size), 0);

function replyEntry(req: Request, e: Entry): void {
  req.reply.writeStruct(fuse_entry_out, entryOut(e));
}

function replyAttr(req: Request, a: AttrReply): void {
  req.reply.writeStruct(fuse_attr_out, { attr_valid: seconds(a.timeout), attr_valid_nsec: nanos(a.timeout), attr: attrOf(a.stat) });
}

function replyOpen(req: Request, o: Opened): void {
  req.reply.writeStruct(fuse_open_out, { fh: o.fh, open_flags: o.openFlags });
}

function replyStatfs(req: Request, s: StatVfs): void {
  req.reply.writeStruct(fuse_statfs_out, {
    st: {
      blocks: s.blocks,
      bfree: s.bfree,
      bavail: s.bavail,
      files: s.files,
      ffree: s.ffree,
      bsize: s.bsize,
      namelen: s.namemax,
      frsize: s.frsize,
    },
  });
}

/** Packs directory entries into a READDIR(PLUS) reply of at most `budget` bytes. */
class DirReply implements DirSink {
  constructor(
    private readonly out: Writer,
    private budget: number,
    readonly plus: boolean,
  ) {}

  add(entry: DirEntry, lookup: Entry | null): boolean {
    const header = this.plus ? fuse_direntplus.size : fuse_dirent.size;
    const size = fuseRecAlign(header + entry.name.length);
    if (size > this.budget) return false;
    this.budget -= size;
    const dirent = { ino: entry.ino, off: entry.offset, namelen: entry.name.length, type: entry.type };
    if (this.plus) this.out.writeStruct(fuse_direntplus, { entry_out: lookup ? entryOut(lookup) : NO_ENTRY, dirent });
    else this.out.writeStruct(fuse_dirent, dirent);
    this.out.writeBytes(entry.name);
    this.out.writeZeros(size - header - entry.name.length);
    return true;
  }
}

/* ---------------- handlers ---------------- */

function readdir(fs: FileSystem, req: Request, plus: boolean): void {
  const a = req.args.readStruct(fuse_readdir_in);
  const sink = new DirReply(req.reply, Math.min(a.size, req.reply.remaining), plus);
  fs.readdir(req, req.nodeid, a.fh, a.offset, sink);
}

function rename(fs: FileSystem, req: Request, newdir: number, flags: number): void {
  const name = newName(req);
  fs.rename(req, req.nodeid, name, newdir, newName(req), flags);
}

const handlers: Partial<Record<Opcode, Handler>> = {
  [Opcode.FUSE_LOOKUP]: (fs, req) => {
    // LOOKUP may name `.` and `..` (FUSE_EXPORT_SUPPORT); the file system keeps `..` inside the share.
    replyEntry(req, fs.lookup(req, req.nodeid, checkComponent(req.args.readCString(), true)));
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
    replyAttr(req, fs.getattr(req, req.nodeid, a.getattr_flags & FUSE_GETATTR_FH ? a.fh : undefined));
  },
  [Opcode.FUSE_SETATTR]: (fs, req) => {
    replyAttr(req, fs.setattr(req, req.nodeid, setattrArgs(req.args.readStruct(fuse_setattr_in))));
  },
  [Opcode.FUSE_READLINK]: (fs, req) => {
    req.reply.writeBytes(fs.readlink(req, req.nodeid));
  },
  [Opcode.FUSE_SYMLINK]: (fs, req) => {
    const name = newName(req);
    // The target is a path stored in the link, not a name we resolve: any bytes but NUL.
    const target = req.args.readCString();
    replyEntry(req, fs.symlink(req, target, req.nodeid, name));
  },
  [Opcode.FUSE_MKNOD]: (fs, req) => {
    const a = req.args.readStruct(fuse_mknod_in);
    replyEntry(req, fs.mknod(req, req.nodeid, newName(req), a.mode, a.rdev, a.umask));
  },
  [Opcode.FUSE_MKDIR]: (fs, req) => {
    const a = req.args.readStruct(fuse_mkdir_in);
    replyEntry(req, fs.mkdir(req, req.nodeid, newName(req), a.mode, a.umask));
  },
  [Opcode.FUSE_UNLINK]: (fs, req) => fs.unlink(req, req.nodeid, newName(req)),
  [Opcode.FUSE_RMDIR]: (fs, req) => fs.rmdir(req, req.nodeid, newName(req)),
  [Opcode.FUSE_RENAME]: (fs, req) => rename(fs, req, req.args.readStruct(fuse_rename_in).newdir, 0),
  [Opcode.FUSE_RENAME2]: (fs, req) => {
    const a = req.args.readStruct(fuse_rename2_in);
    rename(fs, req, a.newdir, a.flags);
  },
  [Opcode.FUSE_LINK]: (fs, req) => {
    // The header names the directory that gets the new name; link_in the existing inode.
    const a = req.args.readStruct(fuse_link_in);
    replyEntry(req, fs.link(req, a.oldnodeid, req.nodeid, newName(req)));
  },
  [Opcode.FUSE_OPEN]: (fs, req) => {
    replyOpen(req, fs.open(req, req.nodeid, req.args.readStruct(fuse_open_in).flags));
  },
  [Opcode.FUSE_READ]: (fs, req) => {
    const a = req.args.readStruct(fuse_read_in);
    const size = Math.min(a.size, req.reply.remaining);
    fs.read(req, req.nodeid, a.fh, req.reply, size, fileRange(a.offset, size));
  },
  [Opcode.FUSE_WRITE]: (fs, req) => {
    const a = req.args.readStruct(fuse_write_in);
    if (a.size > req.args.remaining) fail(Errno.EINVAL);
    const written = fs.write(req, req.nodeid, a.fh, req.args, a.size, fileRange(a.offset, a.size), a.write_flags);
    req.reply.writeStruct(fuse_write_out, { size: written });
  },
  [Opcode.FUSE_STATFS]: (fs, req) => replyStatfs(req, fs.statfs(req, req.nodeid)),
  [Opcode.FUSE_RELEASE]: (fs, req) => {
    const a = req.args.readStruct(fuse_release_in);
    fs.release(req, req.nodeid, a.fh, a.flags, a.release_flags);
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
    replyOpen(req, fs.opendir(req, req.nodeid, req.args.readStruct(fuse_open_in).flags));
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
    const [entry, opened] = fs.create(req, req.nodeid, newName(req), a.mode, a.flags, a.umask);
    replyEntry(req, entry);
    replyOpen(req, opened);
  },
};

/**
 * Runs the handler for `req.opcode` against `fs`: the reply body is left in
 * `req.reply`. Throws an errno-carrying error (ENOSYS for opcodes without a
 * handler) or returns NO_REPLY.
 */
export function dispatch(fs: FileSystem, req: Request): void | typeof NO_REPLY {
  const handler = handlers[req.opcode as Opcode];
  if (!handler) fail(Errno.ENOSYS);
  return handler(fs, req);
}

/** Requests the kernel never waits on: no reply, not even an error. */
export function expectsNoReply(opcode: number): boolean {
  return opcode === Opcode.FUSE_FORGET || opcode === Opcode.FUSE_BATCH_FORGET || opcode === Opcode.FUSE_INTERRUPT;
}
