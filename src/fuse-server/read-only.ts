/**
 * Read-only mode as a decorator: reads pass through to the wrapped file
 * system, every operation that would change the shared directory answers
 * EROFS, and so does any open (or DAX mapping) that asks for write access or
 * truncation. Locks pass: they change no data.
 */
import type { StatVfs } from '../sys/fs';
import { O_ACCMODE, O_RDONLY, O_TRUNC, W_OK } from '../sys/fs';
import type { Writer } from './chain-io';
import { Errno, fail } from './errors';
import {
  type AttrReply,
  type Capabilities,
  type Context,
  type DirSink,
  type Entry,
  FileSystem,
  type InitInfo,
  type LockRange,
  type Opened,
  type SetupMapping,
  type WindowRange,
} from './filesystem';
import { FUSE_SETUPMAPPING_FLAG_WRITE, FUSE_WRITEBACK_CACHE } from './protocol';

export class ReadOnlyFs extends FileSystem {
  constructor(private readonly inner: FileSystem) {
    super();
  }

  override capabilities(): Capabilities {
    const caps = this.inner.capabilities();
    // Nothing will be written back.
    return { ...caps, flags: caps.flags & ~FUSE_WRITEBACK_CACHE };
  }
  override init(info: InitInfo): void {
    this.inner.init(info);
  }
  override destroy(): void {
    this.inner.destroy();
  }
  override endRequest(): void {
    this.inner.endRequest();
  }

  override lookup(ctx: Context, parent: number, name: Buffer): Entry {
    return this.inner.lookup(ctx, parent, name);
  }
  override forget(nodeid: number, nlookup: number): void {
    this.inner.forget(nodeid, nlookup);
  }
  override getattr(ctx: Context, nodeid: number, fh: number | undefined): AttrReply {
    return this.inner.getattr(ctx, nodeid, fh);
  }
  override statx(ctx: Context, nodeid: number, fh: number | undefined, flags: number, mask: number): AttrReply {
    return this.inner.statx(ctx, nodeid, fh, flags, mask);
  }
  override readlink(ctx: Context, nodeid: number): Buffer {
    return this.inner.readlink(ctx, nodeid);
  }
  override access(ctx: Context, nodeid: number, mask: number): void {
    if (mask & W_OK) fail(Errno.EROFS);
    this.inner.access(ctx, nodeid, mask);
  }
  override statfs(ctx: Context, nodeid: number): StatVfs {
    return this.inner.statfs(ctx, nodeid);
  }

  override open(ctx: Context, nodeid: number, flags: number, openFlags: number): Opened {
    if ((flags & O_ACCMODE) !== O_RDONLY || flags & O_TRUNC) fail(Errno.EROFS);
    return this.inner.open(ctx, nodeid, flags, openFlags);
  }
  override read(ctx: Context, nodeid: number, fh: number, into: Writer, size: number, offset: number): number | Promise<number> {
    return this.inner.read(ctx, nodeid, fh, into, size, offset);
  }
  override flush(ctx: Context, nodeid: number, fh: number, lockOwner: bigint): void {
    this.inner.flush(ctx, nodeid, fh, lockOwner);
  }
  override fsync(ctx: Context, nodeid: number, fh: number, datasync: boolean): void | Promise<void> {
    return this.inner.fsync(ctx, nodeid, fh, datasync);
  }
  override release(ctx: Context, nodeid: number, fh: number, flags: number, releaseFlags: number, lockOwner: bigint): void {
    this.inner.release(ctx, nodeid, fh, flags, releaseFlags, lockOwner);
  }
  override lseek(ctx: Context, nodeid: number, fh: number, offset: bigint, whence: number): bigint {
    return this.inner.lseek(ctx, nodeid, fh, offset, whence);
  }
  override syncfs(ctx: Context, nodeid: number): void | Promise<void> {
    return this.inner.syncfs(ctx, nodeid);
  }

  override opendir(ctx: Context, nodeid: number, flags: number): Opened {
    return this.inner.opendir(ctx, nodeid, flags);
  }
  override readdir(ctx: Context, nodeid: number, fh: number, offset: bigint, sink: DirSink): void {
    this.inner.readdir(ctx, nodeid, fh, offset, sink);
  }
  override releasedir(ctx: Context, nodeid: number, fh: number): void {
    this.inner.releasedir(ctx, nodeid, fh);
  }
  override fsyncdir(ctx: Context, nodeid: number, fh: number, datasync: boolean): void | Promise<void> {
    return this.inner.fsyncdir(ctx, nodeid, fh, datasync);
  }

  override getxattr(ctx: Context, nodeid: number, name: Buffer, size: number): number | Buffer {
    return this.inner.getxattr(ctx, nodeid, name, size);
  }
  override listxattr(ctx: Context, nodeid: number, size: number): number | Buffer {
    return this.inner.listxattr(ctx, nodeid, size);
  }
  override getlk(ctx: Context, nodeid: number, fh: number, owner: bigint, lock: LockRange): LockRange {
    return this.inner.getlk(ctx, nodeid, fh, owner, lock);
  }
  override setlk(
    ctx: Context,
    nodeid: number,
    fh: number,
    owner: bigint,
    lock: LockRange,
    flock: boolean,
    wait: AbortSignal | null,
  ): void | Promise<void> {
    return this.inner.setlk(ctx, nodeid, fh, owner, lock, flock, wait);
  }

  override setupmapping(ctx: Context, nodeid: number, fh: bigint, mapping: SetupMapping): Promise<void> {
    if (mapping.flags & BigInt(FUSE_SETUPMAPPING_FLAG_WRITE)) fail(Errno.EROFS);
    return this.inner.setupmapping(ctx, nodeid, fh, mapping);
  }
  override removemapping(ctx: Context, ranges: WindowRange[]): Promise<void> {
    return this.inner.removemapping(ctx, ranges);
  }

  override setattr(): AttrReply {
    return fail(Errno.EROFS);
  }
  override symlink(): Entry {
    return fail(Errno.EROFS);
  }
  override mknod(): Entry {
    return fail(Errno.EROFS);
  }
  override mkdir(): Entry {
    return fail(Errno.EROFS);
  }
  override unlink(): void {
    fail(Errno.EROFS);
  }
  override rmdir(): void {
    fail(Errno.EROFS);
  }
  override rename(): void {
    fail(Errno.EROFS);
  }
  override link(): Entry {
    return fail(Errno.EROFS);
  }
  override write(): number {
    return fail(Errno.EROFS);
  }
  override create(): [Entry, Opened] {
    return fail(Errno.EROFS);
  }
  override tmpfile(): [Entry, Opened] {
    return fail(Errno.EROFS);
  }
  override setxattr(): void {
    fail(Errno.EROFS);
  }
  override removexattr(): void {
    fail(Errno.EROFS);
  }
  override fallocate(): void {
    fail(Errno.EROFS);
  }
  override copyFileRange(): number {
    return fail(Errno.EROFS);
  }
}
