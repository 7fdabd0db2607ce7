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
import { FileSystem } from './filesystem';
import type * as F from './filesystem';
import { FUSE_SETUPMAPPING_FLAG_WRITE, FUSE_WRITEBACK_CACHE } from './protocol';

export class ReadOnlyFs extends FileSystem {
  constructor(private readonly inner: FileSystem) {
    super();
  }

  override capabilities(): F.Capabilities {
    const caps = this.inner.capabilities();
    // Nothing will be written back.
    return { ...caps, flags: caps.flags & ~FUSE_WRITEBACK_CACHE };
  }
  override init(info: F.InitInfo): void {
    this.inner.init(info);
  }
  override destroy(): void {
    this.inner.destroy();
  }
  override endRequest(): void {
    this.inner.endRequest();
  }

  override lookup(ctx: F.Context, parent: number, name: Buffer): F.Entry | Promise<F.Entry> {
    return this.inner.lookup(ctx, parent, name);
  }
  override forget(nodeid: number, nlookup: number): void {
    this.inner.forget(nodeid, nlookup);
  }
  override getattr(ctx: F.Context, nodeid: number, fh: number | undefined): F.AttrReply | Promise<F.AttrReply> {
    return this.inner.getattr(ctx, nodeid, fh);
  }
  override statx(ctx: F.Context, nodeid: number, fh: number | undefined, flags: number, mask: number): F.AttrReply | Promise<F.AttrReply> {
    return this.inner.statx(ctx, nodeid, fh, flags, mask);
  }
  override readlink(ctx: F.Context, nodeid: number): Buffer {
    return this.inner.readlink(ctx, nodeid);
  }
  override access(ctx: F.Context, nodeid: number, mask: number): void {
    if (mask & W_OK) fail(Errno.EROFS);
    this.inner.access(ctx, nodeid, mask);
  }
  override statfs(ctx: F.Context, nodeid: number): StatVfs {
    return this.inner.statfs(ctx, nodeid);
  }

  override open(ctx: F.Context, nodeid: number, flags: number, openFlags: number): F.Opened | Promise<F.Opened> {
    if ((flags & O_ACCMODE) !== O_RDONLY || flags & O_TRUNC) fail(Errno.EROFS);
    return this.inner.open(ctx, nodeid, flags, openFlags);
  }
  override read(ctx: F.Context, nodeid: number, fh: number, into: Writer, size: number, offset: number): number | Promise<number> {
    return this.inner.read(ctx, nodeid, fh, into, size, offset);
  }
  override flush(ctx: F.Context, nodeid: number, fh: number, lockOwner: bigint): void {
    this.inner.flush(ctx, nodeid, fh, lockOwner);
  }
  override fsync(ctx: F.Context, nodeid: number, fh: number, datasync: boolean): void | Promise<void> {
    return this.inner.fsync(ctx, nodeid, fh, datasync);
  }
  override release(ctx: F.Context, nodeid: number, fh: number, flags: number, releaseFlags: number, lockOwner: bigint): void {
    this.inner.release(ctx, nodeid, fh, flags, releaseFlags, lockOwner);
  }
  override lseek(ctx: F.Context, nodeid: number, fh: number, offset: bigint, whence: number): bigint {
    return this.inner.lseek(ctx, nodeid, fh, offset, whence);
  }
  override syncfs(ctx: F.Context, nodeid: number): void | Promise<void> {
    return this.inner.syncfs(ctx, nodeid);
  }

  override opendir(ctx: F.Context, nodeid: number, flags: number): F.Opened {
    return this.inner.opendir(ctx, nodeid, flags);
  }
  override readdir(ctx: F.Context, nodeid: number, fh: number, offset: bigint, sink: F.DirSink): void {
    this.inner.readdir(ctx, nodeid, fh, offset, sink);
  }
  override releasedir(ctx: F.Context, nodeid: number, fh: number): void {
    this.inner.releasedir(ctx, nodeid, fh);
  }
  override fsyncdir(ctx: F.Context, nodeid: number, fh: number, datasync: boolean): void | Promise<void> {
    return this.inner.fsyncdir(ctx, nodeid, fh, datasync);
  }

  override getxattr(ctx: F.Context, nodeid: number, name: Buffer, size: number): number | Buffer {
    return this.inner.getxattr(ctx, nodeid, name, size);
  }
  override listxattr(ctx: F.Context, nodeid: number, size: number): number | Buffer {
    return this.inner.listxattr(ctx, nodeid, size);
  }
  override getlk(ctx: F.Context, nodeid: number, fh: number, owner: bigint, lock: F.LockRange): F.LockRange {
    return this.inner.getlk(ctx, nodeid, fh, owner, lock);
  }
  override setlk(ctx: F.Context, nodeid: number, fh: number, owner: bigint, lock: F.LockRange, how: F.LockHow): void | Promise<void> {
    return this.inner.setlk(ctx, nodeid, fh, owner, lock, how);
  }

  override setupmapping(ctx: F.Context, nodeid: number, fh: bigint, mapping: F.SetupMapping): Promise<void> {
    if (mapping.flags & BigInt(FUSE_SETUPMAPPING_FLAG_WRITE)) fail(Errno.EROFS);
    return this.inner.setupmapping(ctx, nodeid, fh, mapping);
  }
  override removemapping(ctx: F.Context, ranges: F.WindowRange[]): Promise<void> {
    return this.inner.removemapping(ctx, ranges);
  }

  override setattr(): F.AttrReply {
    return fail(Errno.EROFS);
  }
  override symlink(): F.Entry {
    return fail(Errno.EROFS);
  }
  override mknod(): F.Entry {
    return fail(Errno.EROFS);
  }
  override mkdir(): F.Entry {
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
  override link(): F.Entry {
    return fail(Errno.EROFS);
  }
  override write(): number {
    return fail(Errno.EROFS);
  }
  override create(): [F.Entry, F.Opened] {
    return fail(Errno.EROFS);
  }
  override tmpfile(): [F.Entry, F.Opened] {
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
