/**
 * The file-system layer the dispatcher drives: decoded arguments in, plain
 * results out, failures thrown as errors carrying an errno. Every operation
 * defaults to ENOSYS, so a file system implements only what it supports and
 * anything new in the protocol fails closed.
 *
 * Operations that must wait (a blocking lock, a DAX mapping the front-end has
 * to acknowledge) return a Promise. The context and arguments they receive are
 * theirs to keep; the request's buffers are not.
 */
import type { Stat, StatVfs, TimeSpec } from '../sys/fs';
import type { Reader, Writer } from './chain-io';
import { Errno, fail } from './errors';

/** A security context the guest's LSM wants on a new inode (FUSE_SECURITY_CTX). */
export interface SecurityContext {
  /** The xattr name, NUL-terminated (e.g. "security.selinux"). */
  name: Buffer;
  value: Buffer;
}

/** Who asks: the caller's ids from fuse_in_header. */
export interface Context {
  uid: number;
  gid: number;
  pid: number;
  /** For creating operations: the label to put on the new inode, if the guest sent one. */
  secctx?: SecurityContext | null;
}

/** A looked-up name: the guest now holds one more reference to `nodeid`. */
export interface Entry {
  nodeid: number;
  generation: number;
  stat: Stat;
  /** Seconds the guest may cache the name and the attributes. */
  entryTimeout: number;
  attrTimeout: number;
  /** FUSE_ATTR_* flags (submount, DAX). */
  attrFlags: number;
}

export interface AttrReply {
  stat: Stat;
  /** Seconds the guest may cache the attributes. */
  timeout: number;
  /** FUSE_ATTR_* flags. */
  attrFlags: number;
}

export interface Opened {
  fh: number;
  /** FOPEN_* flags. */
  openFlags: number;
}

/** What SETATTR changes; absent fields stay as they are. `'now'` is the host's current time. */
export interface SetattrArgs {
  fh?: number;
  mode?: number;
  uid?: number;
  gid?: number;
  size?: number;
  atime?: TimeSpec | 'now';
  mtime?: TimeSpec | 'now';
  /** FATTR_KILL_SUIDGID: the change must drop set-id bits as an unprivileged caller's would. */
  killSuidgid?: boolean;
}

export interface DirEntry {
  ino: bigint;
  /** Cookie that continues the listing after this entry. */
  offset: bigint;
  /** DT_* type. */
  type: number;
  /** The name's bytes, without a NUL. */
  name: Buffer;
}

/** Receives directory entries for one READDIR(PLUS) reply. */
export interface DirSink {
  /** True for READDIRPLUS: each entry (but `.` and `..`) comes with a lookup. */
  readonly plus: boolean;
  /** Appends an entry; false (and nothing appended) when the reply is full. */
  add(entry: DirEntry, lookup: Entry | null): boolean;
}

/** FUSE_* init flags (bits 0..31 and the flags2 word) a file system can serve. */
export interface Capabilities {
  flags: number;
  flags2: number;
  /** log2 of the DAX mapping alignment, answered with FUSE_MAP_ALIGNMENT. */
  mapAlignment: number;
}

/** What the FUSE INIT exchange agreed on, handed to the file system. */
export interface InitInfo {
  /** Negotiated protocol minor version. */
  minor: number;
  /** FUSE_* flags both sides enabled. */
  flags: number;
  flags2: number;
}

/** A byte-range lock as FUSE carries it: [start, end] inclusive, end OFFSET_MAX for "to EOF". */
export interface LockRange {
  type: number;
  start: bigint;
  end: bigint;
  pid: number;
}

/** How SETLK(W) takes a lock: flock(2) or POSIX, and whether (until what signal) it waits. */
export interface LockHow {
  flock: boolean;
  /** Wait for a conflicting lock to go until this fires (SETLKW); null: fail with EAGAIN at once. */
  wait: AbortSignal | null;
}

/** One FUSE_REMOVEMAPPING range of the DAX window. */
export interface WindowRange {
  moffset: bigint;
  len: bigint;
}

export interface SetupMapping {
  foffset: bigint;
  len: bigint;
  /** FUSE_SETUPMAPPING_FLAG_* */
  flags: bigint;
  moffset: bigint;
}

/* eslint-disable @typescript-eslint/no-unused-vars */
/** WRITE's arguments besides the data: where, how much, and the flags the guest sent. */
export interface WriteArgs {
  size: number;
  offset: number;
  /** FUSE_WRITE_* */
  writeFlags: number;
  /** The guest file's open flags (fuse_write_in.flags). */
  fileFlags: number;
}

/** A position in an open file (COPY_FILE_RANGE's source and destination). */
export interface FileAt {
  nodeid: number;
  fh: number;
  offset: number;
}

export class FileSystem {
  /** FUSE_* init flags this file system can serve (the session adds the transport's own). */
  capabilities(): Capabilities {
    return { flags: 0, flags2: 0, mapAlignment: 0 };
  }
  /** Sees what INIT agreed on; may refuse it by throwing (EPROTO when a required feature is missing). */
  init(info: InitInfo): void {}
  /** DESTROY or device reset: drop every inode and handle. */
  destroy(): void {}
  /** The request is answered: resources it borrowed may go. */
  endRequest(): void {}

  lookup(ctx: Context, parent: number, name: Buffer): Entry | Promise<Entry> {
    return fail(Errno.ENOSYS);
  }
  forget(nodeid: number, nlookup: number): void {}
  getattr(ctx: Context, nodeid: number, fh: number | undefined): AttrReply | Promise<AttrReply> {
    return fail(Errno.ENOSYS);
  }
  /** FUSE_STATX: like getattr, with the statx fields (birth time) and sync `flags` the guest asked for. */
  statx(ctx: Context, nodeid: number, fh: number | undefined, flags: number, mask: number): AttrReply | Promise<AttrReply> {
    return fail(Errno.ENOSYS);
  }
  setattr(ctx: Context, nodeid: number, args: SetattrArgs): AttrReply {
    return fail(Errno.ENOSYS);
  }
  readlink(ctx: Context, nodeid: number): Buffer {
    return fail(Errno.ENOSYS);
  }
  symlink(ctx: Context, target: Buffer, parent: number, name: Buffer): Entry {
    return fail(Errno.ENOSYS);
  }
  mknod(ctx: Context, parent: number, name: Buffer, mode: number, rdev: number, umask: number): Entry {
    return fail(Errno.ENOSYS);
  }
  mkdir(ctx: Context, parent: number, name: Buffer, mode: number, umask: number): Entry {
    return fail(Errno.ENOSYS);
  }
  unlink(ctx: Context, parent: number, name: Buffer): void {
    fail(Errno.ENOSYS);
  }
  rmdir(ctx: Context, parent: number, name: Buffer): void {
    fail(Errno.ENOSYS);
  }
  rename(ctx: Context, parent: number, name: Buffer, newParent: number, newName: Buffer, flags: number): void {
    fail(Errno.ENOSYS);
  }
  link(ctx: Context, nodeid: number, newParent: number, newName: Buffer): Entry {
    return fail(Errno.ENOSYS);
  }
  /** `openFlags` are fuse_open_in.open_flags (FUSE_OPEN_KILL_SUIDGID). */
  open(ctx: Context, nodeid: number, flags: number, openFlags: number): Opened | Promise<Opened> {
    return fail(Errno.ENOSYS);
  }
  /** Reads up to `size` bytes at `offset` straight into the reply; returns the bytes read. */
  read(ctx: Context, nodeid: number, fh: number, into: Writer, size: number, offset: number): number | Promise<number> {
    return fail(Errno.ENOSYS);
  }
  /** Writes `w.size` bytes at `w.offset` straight from the request; returns the bytes written. */
  write(ctx: Context, nodeid: number, fh: number, from: Reader, w: WriteArgs): number | Promise<number> {
    return fail(Errno.ENOSYS);
  }
  statfs(ctx: Context, nodeid: number): StatVfs {
    return fail(Errno.ENOSYS);
  }
  /** `lockOwner` matters with FUSE_RELEASE_FLUSH: the release is also the owner's last close. */
  release(ctx: Context, nodeid: number, fh: number, flags: number, releaseFlags: number, lockOwner: bigint): void {
    fail(Errno.ENOSYS);
  }
  flush(ctx: Context, nodeid: number, fh: number, lockOwner: bigint): void {
    fail(Errno.ENOSYS);
  }
  fsync(ctx: Context, nodeid: number, fh: number, datasync: boolean): void | Promise<void> {
    fail(Errno.ENOSYS);
  }
  opendir(ctx: Context, nodeid: number, flags: number): Opened {
    return fail(Errno.ENOSYS);
  }
  readdir(ctx: Context, nodeid: number, fh: number, offset: bigint, sink: DirSink): void {
    fail(Errno.ENOSYS);
  }
  releasedir(ctx: Context, nodeid: number, fh: number): void {
    fail(Errno.ENOSYS);
  }
  fsyncdir(ctx: Context, nodeid: number, fh: number, datasync: boolean): void | Promise<void> {
    fail(Errno.ENOSYS);
  }
  access(ctx: Context, nodeid: number, mask: number): void {
    fail(Errno.ENOSYS);
  }
  create(ctx: Context, parent: number, name: Buffer, mode: number, flags: number, umask: number, openFlags: number): [Entry, Opened] {
    return fail(Errno.ENOSYS);
  }
  /** O_TMPFILE in directory `parent`: an unnamed file, open, counted as looked up. */
  tmpfile(ctx: Context, parent: number, mode: number, flags: number, umask: number): [Entry, Opened] {
    return fail(Errno.ENOSYS);
  }

  /** `name` is NUL-terminated; `setxattrFlags` are FUSE_SETXATTR_* (0 from older kernels). */
  setxattr(ctx: Context, nodeid: number, name: Buffer, value: Buffer, flags: number, setxattrFlags: number): void {
    fail(Errno.ENOSYS);
  }
  /** size 0: the value's length; otherwise the value (ERANGE when it is longer than `size`). */
  getxattr(ctx: Context, nodeid: number, name: Buffer, size: number): number | Buffer {
    return fail(Errno.ENOSYS);
  }
  /** size 0: the list's length; otherwise the NUL-separated names (ERANGE when longer than `size`). */
  listxattr(ctx: Context, nodeid: number, size: number): number | Buffer {
    return fail(Errno.ENOSYS);
  }
  removexattr(ctx: Context, nodeid: number, name: Buffer): void {
    fail(Errno.ENOSYS);
  }

  /** The first lock that would conflict with `lock` (type F_UNLCK when none). */
  getlk(ctx: Context, nodeid: number, fh: number, owner: bigint, lock: LockRange): LockRange {
    return fail(Errno.ENOSYS);
  }
  /**
   * Takes or releases a POSIX lock (or, with `flock`, a BSD flock on the
   * handle). With a `wait` signal it waits for a conflicting lock to go, and
   * answers EINTR if the signal fires first; without, it fails with EAGAIN.
   */
  setlk(ctx: Context, nodeid: number, fh: number, owner: bigint, lock: LockRange, how: LockHow): void | Promise<void> {
    return fail(Errno.ENOSYS);
  }

  fallocate(ctx: Context, nodeid: number, fh: number, offset: number, length: number, mode: number): void | Promise<void> {
    fail(Errno.ENOSYS);
  }
  lseek(ctx: Context, nodeid: number, fh: number, offset: bigint, whence: number): bigint {
    return fail(Errno.ENOSYS);
  }
  /** Copies up to `len` bytes between two open files; returns the bytes copied. */
  copyFileRange(ctx: Context, from: FileAt, to: FileAt, len: number, flags: number): number | Promise<number> {
    return fail(Errno.ENOSYS);
  }
  syncfs(ctx: Context, nodeid: number): void | Promise<void> {
    fail(Errno.ENOSYS);
  }

  /** FUSE_SETUPMAPPING: maps a range of the file into the DAX window. */
  setupmapping(ctx: Context, nodeid: number, fh: bigint, mapping: SetupMapping): Promise<void> {
    return fail(Errno.ENOSYS);
  }
  /** FUSE_REMOVEMAPPING: unmaps ranges of the DAX window. */
  removemapping(ctx: Context, ranges: WindowRange[]): Promise<void> {
    return fail(Errno.ENOSYS);
  }
}
