/**
 * The file-system layer the dispatcher drives: decoded arguments in, plain
 * results out, failures thrown as errors carrying an errno. Every operation
 * defaults to ENOSYS, so a file system implements only what it supports and
 * anything new in the protocol fails closed.
 */
import type { Stat, StatVfs, TimeSpec } from '../sys/fs';
import type { Reader, Writer } from './chain-io';
import { Errno, fail } from './errors';

/** Who asks: the caller's ids from fuse_in_header. */
export interface Context {
  uid: number;
  gid: number;
  pid: number;
}

/** A looked-up name: the guest now holds one more reference to `nodeid`. */
export interface Entry {
  nodeid: number;
  generation: number;
  stat: Stat;
  /** Seconds the guest may cache the name and the attributes. */
  entryTimeout: number;
  attrTimeout: number;
}

export interface AttrReply {
  stat: Stat;
  /** Seconds the guest may cache the attributes. */
  timeout: number;
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

/** What the FUSE INIT exchange agreed on, handed to the file system. */
export interface InitInfo {
  /** Negotiated protocol minor version. */
  minor: number;
  /** FUSE_* flags both sides enabled. */
  flags: number;
}

/* eslint-disable @typescript-eslint/no-unused-vars */
export class FileSystem {
  /** FUSE_* init flags this file system can serve (the session adds the transport's own). */
  capabilities(): number {
    return 0;
  }
  init(info: InitInfo): void {}
  /** DESTROY or device reset: drop every inode and handle. */
  destroy(): void {}

  lookup(ctx: Context, parent: number, name: Buffer): Entry {
    return fail(Errno.ENOSYS);
  }
  forget(nodeid: number, nlookup: number): void {}
  getattr(ctx: Context, nodeid: number, fh: number | undefined): AttrReply {
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
  open(ctx: Context, nodeid: number, flags: number): Opened {
    return fail(Errno.ENOSYS);
  }
  /** Reads up to `size` bytes at `offset` straight into the reply; returns the bytes read. */
  read(ctx: Context, nodeid: number, fh: number, into: Writer, size: number, offset: number): number {
    return fail(Errno.ENOSYS);
  }
  /** Writes `size` bytes at `offset` straight from the request; returns the bytes written. */
  write(ctx: Context, nodeid: number, fh: number, from: Reader, size: number, offset: number, writeFlags: number): number {
    return fail(Errno.ENOSYS);
  }
  statfs(ctx: Context, nodeid: number): StatVfs {
    return fail(Errno.ENOSYS);
  }
  release(ctx: Context, nodeid: number, fh: number, flags: number, releaseFlags: number): void {
    fail(Errno.ENOSYS);
  }
  flush(ctx: Context, nodeid: number, fh: number, lockOwner: bigint): void {
    fail(Errno.ENOSYS);
  }
  fsync(ctx: Context, nodeid: number, fh: number, datasync: boolean): void {
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
  fsyncdir(ctx: Context, nodeid: number, fh: number, datasync: boolean): void {
    fail(Errno.ENOSYS);
  }
  access(ctx: Context, nodeid: number, mask: number): void {
    fail(Errno.ENOSYS);
  }
  create(ctx: Context, parent: number, name: Buffer, mode: number, flags: number, umask: number): [Entry, Opened] {
    return fail(Errno.ENOSYS);
  }
}
