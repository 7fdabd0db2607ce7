/**
 * Reader and Writer over the buffers of one descriptor chain. They hide where
 * the chain is split: a struct may straddle two descriptors at any byte. File
 * data never passes through here as a copy: `readToFile`/`writeFromFile` hand
 * views of guest memory straight to pwritev/preadv, on this thread or (the
 * `Async` variants) on libuv's thread pool.
 *
 * Each request has its own Reader and Writer (a request that waits keeps
 * them); they are small, and the scratch space for structs split across
 * descriptors is shared, because it is only used inside one synchronous call.
 */
import * as fs from 'node:fs';
import { NOWAIT_UNSUPPORTED, WOULD_BLOCK, preadvNowait } from '../sys/fs';
import { Errno, fail } from './errors';
import type { Layout } from '../layout';
import { PATH_MAX } from './protocol';

/** Linux UIO_MAXIOV: the most iovecs one preadv/pwritev accepts. */
const IOV_MAX = 1024;
/** Larger than any fixed FUSE struct we decode or encode (fuse_statx_out is 288 bytes). */
const SCRATCH_SIZE = 512;
/** Only used within one synchronous call (never across an await), so one suffices for every cursor. */
const scratch = Buffer.alloc(SCRATCH_SIZE);
/** The iovec array of a synchronous preadv/pwritev: the call copies it before returning. */
const syncIov: Buffer[] = [];

type AsyncIo = (fd: number, buffers: Buffer[], position: number, cb: (err: NodeJS.ErrnoException | null, n: number) => void) => void;

abstract class ChainCursor {
  protected bufs: readonly Buffer[] = [];
  /** Current buffer and the offset inside it. */
  protected index = 0;
  protected offset = 0;
  /** Bytes left before the cursor's end (the chain's end or a tighter limit). */
  protected left = 0;
  /** Bytes consumed since the last reset. */
  protected consumed = 0;
  protected readonly scratch = scratch;

  /** Starts over on the buffers of another chain. */
  reset(bufs: readonly Buffer[]): this {
    this.bufs = bufs;
    this.index = 0;
    this.offset = 0;
    this.consumed = 0;
    let total = 0;
    for (const b of bufs) total += b.length;
    this.left = total;
    return this;
  }

  get remaining(): number {
    return this.left;
  }

  /** Skips empty buffers and exhausted ones so bufs[index] has bytes at offset (if any remain). */
  protected settle(): void {
    while (this.index < this.bufs.length && this.offset >= this.bufs[this.index].length) {
      this.index++;
      this.offset = 0;
    }
  }

  protected advance(n: number): void {
    this.left -= n;
    this.consumed += n;
    while (n > 0) {
      const avail = this.bufs[this.index].length - this.offset;
      if (n < avail) {
        this.offset += n;
        return;
      }
      n -= avail;
      this.index++;
      this.offset = 0;
    }
  }

  /** The current buffer if the next `n` bytes lie contiguously inside it, else null. */
  protected contiguous(n: number): Buffer | null {
    this.settle();
    const b = this.bufs[this.index];
    return b && b.length - this.offset >= n ? b : null;
  }

  /**
   * Views of up to `n` bytes from the cursor (at most IOV_MAX of them), not
   * advancing, into `iov` (emptied first).
   */
  protected views(n: number, iov: Buffer[]): Buffer[] {
    iov.length = 0;
    let i = this.index;
    let off = this.offset;
    while (n > 0 && i < this.bufs.length && iov.length < IOV_MAX) {
      const b = this.bufs[i];
      const take = Math.min(n, b.length - off);
      if (take > 0) {
        // The whole buffer as it is: no new view object per iovec on the common path.
        iov.push(off === 0 && take === b.length ? b : b.subarray(off, off + take));
        n -= take;
      }
      i++;
      off = 0;
    }
    return iov;
  }

  /**
   * Moves `count` (<= left) bytes between the chain's buffers at the cursor and
   * `fd` at `position` with `io` (preadv or pwritev), advancing. Stops early on
   * a 0 return (end of file); a failure after partial progress returns the
   * progress, as read(2)/write(2) would.
   */
  protected fileIo(io: typeof fs.readvSync, fd: number, count: number, position: number): number {
    let done = 0;
    while (done < count) {
      this.settle();
      let n: number;
      try {
        n = io(fd, this.views(count - done, syncIov), position + done);
      } catch (err) {
        if (done > 0) break;
        throw err;
      }
      if (n === 0) break;
      this.advance(n);
      done += n;
    }
    return done;
  }

  /**
   * fileIo() on libuv's thread pool: the kernel copies between the file and
   * guest memory on a pool thread while the event loop serves other requests.
   * The caller owns `fd` until the promise settles (it must stay open: see
   * onPool in passthrough.ts, which hands in a private dup). The cursor must not be used
   * meanwhile; it advances as parts complete.
   */
  protected fileIoAsync(io: AsyncIo, fd: number, count: number, position: number): Promise<number> {
    return new Promise((resolve, reject) => {
      let done = 0;
      const step = (): void => {
        this.settle();
        // A fresh array: the pool holds it until the call completes.
        io(fd, this.views(count - done, []), position + done, (err, n) => {
          if (err) {
            if (done > 0) resolve(done);
            else reject(err);
            return;
          }
          if (n === 0) return resolve(done);
          this.advance(n);
          done += n;
          if (done < count) step();
          else resolve(done);
        });
      };
      if (count === 0) resolve(0);
      else step();
    });
  }

  /** Copies the next `n` bytes out into `dst` (n <= left), advancing. */
  protected gather(dst: Buffer, n: number): void {
    let done = 0;
    while (done < n) {
      this.settle();
      const b = this.bufs[this.index];
      const take = Math.min(n - done, b.length - this.offset);
      b.copy(dst, done, this.offset, this.offset + take);
      done += take;
      this.advance(take);
    }
  }

  /** Copies `src[0, n)` in at the cursor (n <= left), advancing. */
  protected scatter(src: Buffer, n: number): void {
    let done = 0;
    while (done < n) {
      this.settle();
      const b = this.bufs[this.index];
      const take = Math.min(n - done, b.length - this.offset);
      src.copy(b, this.offset, done, done + take);
      done += take;
      this.advance(take);
    }
  }
}

/** Reads a request from the device-readable buffers of a chain. */
export class Reader extends ChainCursor {
  /** Bytes read so far. */
  get bytesRead(): number {
    return this.consumed;
  }

  /** Shrinks the readable window to the next `n` bytes (the header's `len` may end before the chain does). */
  limit(n: number): void {
    if (n < this.left) this.left = n;
  }

  /** Decodes one struct; EINVAL if the request is too short to hold it. */
  readStruct<T>(layout: Layout<T>): T {
    const size = layout.size;
    if (this.left < size) fail(Errno.EINVAL);
    const b = this.contiguous(size);
    let value: T;
    if (b) {
      value = layout.decode(b, this.offset);
      this.advance(size);
    } else {
      this.gather(this.scratch, size);
      value = layout.decode(this.scratch, 0);
    }
    return value;
  }

  /**
   * Decodes a struct that older peers send truncated: at least `minSize` bytes
   * must be present; missing trailing fields read as zero.
   */
  readStructPrefix<T>(layout: Layout<T>, minSize: number): T {
    const n = Math.min(layout.size, this.left);
    if (n < minSize) fail(Errno.EINVAL);
    this.gather(this.scratch, n);
    this.scratch.fill(0, n, layout.size);
    return layout.decode(this.scratch, 0);
  }

  /**
   * Reads a NUL-terminated string of at most `max` bytes, its NUL included, and
   * returns a private copy that keeps its NUL (ready for a syscall). A copy,
   * because the guest can rewrite its own memory between our check of a name
   * and the syscall that uses it. The scan stops after `max` bytes: a longer
   * string fails with `tooLong` whatever its length, so a request can never
   * make us scan or copy more than the bound (its descriptors may all repeat
   * one huge block). EINVAL if the request ends before a NUL.
   */
  readCString(max: number = PATH_MAX, tooLong: number = Errno.ENAMETOOLONG): Buffer {
    const window = Math.min(this.left, max);
    let length = -1;
    let scanned = 0;
    for (let i = this.index, off = this.offset; i < this.bufs.length && scanned < window; i++, off = 0) {
      const b = this.bufs[i];
      // Only up to the bound and the request's end: a descriptor may be far longer than the name.
      const end = Math.min(b.length, off + (window - scanned));
      const nul = b.subarray(off, end).indexOf(0);
      if (nul !== -1) {
        length = scanned + nul;
        break;
      }
      scanned += end - off;
    }
    if (length < 0) fail(this.left > max ? tooLong : Errno.EINVAL);
    const out = Buffer.allocUnsafe(length + 1);
    this.gather(out, length + 1);
    // Guest memory is read twice (the scan, then the copy) and another vCPU may write between the
    // two: only a copy that still ends in its one NUL is the name that was bounded. Without this
    // check, a terminator overwritten in between left a copy the syscalls would read past.
    if (out[length] !== 0 || out.indexOf(0) !== length) fail(Errno.EINVAL);
    return out;
  }

  skip(n: number): void {
    if (this.left < n) fail(Errno.EINVAL);
    this.settle();
    this.advance(n);
  }

  /** A private copy of the next `n` bytes (EINVAL if the request is shorter), advancing. */
  readBytes(n: number): Buffer {
    if (this.left < n) fail(Errno.EINVAL);
    const out = Buffer.allocUnsafe(n);
    this.gather(out, n);
    return out;
  }

  /**
   * A private copy of `n` bytes starting `skip` bytes past the cursor, which
   * does not move (request extensions sit at the end of the request).
   */
  peekBytes(skip: number, n: number): Buffer {
    if (this.left < skip + n) fail(Errno.EINVAL);
    const { index, offset, left, consumed } = this;
    this.skip(skip);
    const out = this.readBytes(n);
    this.index = index;
    this.offset = offset;
    this.left = left;
    this.consumed = consumed;
    return out;
  }

  /**
   * pwritev of the next `count` bytes to `fd` at `position`, straight from the
   * chain's buffers. Returns the bytes written; a failure after partial
   * progress returns the progress, as write(2) would.
   */
  readToFile(fd: number, count: number, position: number): number {
    if (count > this.left) fail(Errno.EINVAL);
    return this.fileIo(fs.writevSync, fd, count, position);
  }

  /** readToFile() on the thread pool (see fileIoAsync). */
  readToFileAsync(fd: number, count: number, position: number): Promise<number> {
    if (count > this.left) fail(Errno.EINVAL);
    return this.fileIoAsync(fs.writev as AsyncIo, fd, count, position);
  }
}

/** Writes a reply into the device-writable buffers of a chain. */
export class Writer extends ChainCursor {
  /** Bytes written so far (the used length once the reply is complete). */
  get bytesWritten(): number {
    return this.consumed;
  }

  /** Leaves `n` bytes to be filled later with `patch` (the out header). */
  skip(n: number): void {
    if (this.left < n) fail(Errno.EIO);
    this.settle();
    this.advance(n);
  }

  /** Encodes one struct; EIO if the chain has no room for it. */
  writeStruct<T>(layout: Layout<T>, value: T): void {
    const size = layout.size;
    if (this.left < size) fail(Errno.EIO);
    const b = this.contiguous(size);
    if (b) {
      layout.encode(value, b, this.offset);
      this.advance(size);
    } else {
      layout.encode(value, this.scratch, 0);
      this.scatter(this.scratch, size);
    }
  }

  writeBytes(src: Buffer): void {
    if (this.left < src.length) fail(Errno.EIO);
    this.scatter(src, src.length);
  }

  writeZeros(n: number): void {
    if (this.left < n) fail(Errno.EIO);
    this.scratch.fill(0);
    while (n > 0) {
      const take = Math.min(n, SCRATCH_SIZE);
      this.scatter(this.scratch, take);
      n -= take;
    }
  }

  /** Overwrites bytes at absolute position `pos` of the chain (within what was already skipped or written). */
  patch(pos: number, src: Buffer): void {
    let i = 0;
    while (pos >= this.bufs[i].length) pos -= this.bufs[i++].length;
    let done = 0;
    while (done < src.length) {
      const b = this.bufs[i++];
      const take = Math.min(src.length - done, b.length - pos);
      src.copy(b, pos, done, done + take);
      done += take;
      pos = 0;
    }
  }

  /**
   * preadv of up to `count` bytes from `fd` at `position`, straight into the
   * chain's buffers. Stops at end of file; returns the bytes read.
   */
  writeFromFile(fd: number, count: number, position: number): number {
    return this.fileIo(fs.readvSync, fd, Math.min(count, this.left), position);
  }

  /**
   * writeFromFile() that never waits for the disk (preadv2 with RWF_NOWAIT):
   * what the page cache holds is read now. Returns the bytes read once the
   * read is complete (`count` reached, or end of file), or `{ read }` when the
   * rest would have to wait for the disk: the caller reads that on the pool,
   * from `position + read`, with the cursor already past what was read. A
   * file system that does not take RWF_NOWAIT is read the ordinary way.
   */
  writeFromFileNowait(fd: number, count: number, position: number): number | { read: number } {
    const want = Math.min(count, this.left);
    let done = 0;
    while (done < want) {
      this.settle();
      let n: number;
      try {
        n = preadvNowait(fd, this.views(want - done, syncIov), position + done);
      } catch (err) {
        if (done > 0) break;
        throw err;
      }
      if (n === WOULD_BLOCK) return { read: done };
      if (n === NOWAIT_UNSUPPORTED) return done + this.fileIo(fs.readvSync, fd, want - done, position + done);
      if (n === 0) break;
      this.advance(n);
      done += n;
    }
    return done;
  }

  /** writeFromFile() on the thread pool (see fileIoAsync). */
  writeFromFileAsync(fd: number, count: number, position: number): Promise<number> {
    return this.fileIoAsync(fs.readv as AsyncIo, fd, Math.min(count, this.left), position);
  }
}
