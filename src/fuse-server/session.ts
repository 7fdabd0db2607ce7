/**
 * One FUSE connection as the virtqueue code sees it: a descriptor chain in, a
 * used length out. The session frames requests and replies (in/out headers),
 * owns the INIT/DESTROY state and turns every failure into an errno reply, so
 * nothing a guest sends can throw out of handle().
 */
import { Reader, Writer } from './chain-io';
import type { CacheMode } from './cache-policy';
import { NO_REPLY, Request, dispatch, expectsNoReply } from './dispatcher';
import { Errno, errnoOf, fail, isExpectedError } from './errors';
import type { FileSystem } from './filesystem';
import { negotiateInit } from './init';
import { PassthroughFs } from './passthrough';
import {
  FUSE_COMPAT_INIT_IN_SIZE,
  FUSE_INIT_EXT,
  type InHeader,
  Opcode,
  fuse_in_header,
  fuse_init_in,
  fuse_init_out,
  fuse_out_header,
} from './protocol';
import { ReadOnlyFs } from './read-only';

export type LogLevel = 'error' | 'warn' | 'info' | 'debug';

export interface FuseSessionOptions {
  /** Host directory to pass through. */
  sharedDir: string;
  cache: CacheMode;
  readonly: boolean;
  log?: (level: LogLevel, msg: string) => void;
}

export class FuseSession {
  private readonly passthrough: PassthroughFs;
  private readonly fs: FileSystem;
  private readonly log: (level: LogLevel, msg: string) => void;
  // Reused for every request: handle() runs to completion before the next one starts.
  private readonly reader = new Reader();
  private readonly writer = new Writer();
  private readonly request = new Request(this.reader, this.writer);
  private readonly outHeader = Buffer.alloc(fuse_out_header.size);
  private initialized = false;

  /** Opens the shared directory; throws if it cannot be served. */
  constructor(options: FuseSessionOptions) {
    this.log = options.log ?? (() => {});
    this.passthrough = new PassthroughFs({ sharedDir: options.sharedDir, cache: options.cache });
    this.fs = options.readonly ? new ReadOnlyFs(this.passthrough) : this.passthrough;
  }

  /** Inodes the guest holds (the root included) and open handles: for tests and diagnostics. */
  get stats(): { inodes: number; handles: number } {
    return { inodes: this.passthrough.inodeCount, handles: this.passthrough.handleCount };
  }

  /**
   * Serves one request. `readable`/`writable` are the chain's device-readable and
   * device-writable buffers, in order. Returns the bytes written into `writable`,
   * 0 for requests without a reply or too malformed to answer. Never throws.
   */
  handle(readable: Buffer[], writable: Buffer[]): number | Promise<number> {
    try {
      return this.serve(readable, writable);
    } catch (err) {
      // Only a bug gets here (serve() answers every guest error itself): drop the request, keep the daemon.
      this.log('error', `FUSE request dropped: ${describe(err)}`);
      return 0;
    }
  }

  /** Device reset or front-end disconnect: every inode and handle of the guest is dropped. */
  reset(): void {
    this.fs.destroy();
    this.initialized = false;
  }

  /** Releases everything, the shared directory's fd included; the session is unusable afterwards. */
  close(): void {
    this.initialized = false;
    this.passthrough.close();
  }

  private serve(readable: Buffer[], writable: Buffer[]): number {
    const r = this.reader.reset(readable);
    if (r.remaining < fuse_in_header.size) {
      this.log('warn', `FUSE request of ${r.remaining} bytes has no header; dropped`);
      return 0;
    }
    const chainLength = r.remaining;
    const header = r.readStruct(fuse_in_header);
    const w = this.writer.reset(writable);
    // FORGETs arrive on the high-priority queue without any writable buffer: they still count.
    if (w.remaining < fuse_out_header.size && !expectsNoReply(header.opcode)) {
      this.log('warn', `FUSE ${opName(header.opcode)} request ${header.unique} has no room for a reply; dropped`);
      return 0;
    }
    if (!expectsNoReply(header.opcode)) w.skip(fuse_out_header.size);

    let errno = 0;
    try {
      if (header.len < fuse_in_header.size || header.len > chainLength) fail(Errno.EINVAL);
      r.limit(header.len - fuse_in_header.size);
      if (this.run(header) === NO_REPLY) return 0;
    } catch (err) {
      if (expectsNoReply(header.opcode)) return 0;
      errno = errnoOf(err);
      if (!isExpectedError(err)) this.log('error', `FUSE ${opName(header.opcode)} failed: ${describe(err)}`);
      // Whatever the handler wrote is discarded: an error reply is the header alone.
      w.reset(writable);
      w.skip(fuse_out_header.size);
    }
    fuse_out_header.encode({ len: w.bytesWritten, error: -errno, unique: header.unique }, this.outHeader, 0);
    w.patch(0, this.outHeader);
    return w.bytesWritten;
  }

  private run(header: InHeader): void | typeof NO_REPLY {
    switch (header.opcode) {
      case Opcode.FUSE_INIT:
        return this.init();
      case Opcode.FUSE_INTERRUPT:
        // Every request completes synchronously, so there is never anything left to interrupt.
        return NO_REPLY;
    }
    if (!this.initialized) {
      if (expectsNoReply(header.opcode)) return NO_REPLY;
      fail(Errno.EIO);
    }
    if (header.opcode === Opcode.FUSE_DESTROY) {
      this.reset();
      return;
    }
    const req = this.request;
    req.opcode = header.opcode;
    req.nodeid = header.nodeid;
    req.uid = header.uid;
    req.gid = header.gid;
    req.pid = header.pid;
    return dispatch(this.fs, req);
  }

  private init(): void {
    if (this.initialized) {
      // A guest that re-initialises without a device reset starts over: its old references are void.
      this.log('warn', 'FUSE INIT on an initialised session: dropping its state');
      this.reset();
    }
    const offer = this.reader.readStructPrefix(fuse_init_in, FUSE_COMPAT_INIT_IN_SIZE);
    if (!(offer.flags & FUSE_INIT_EXT)) offer.flags2 = 0;
    const result = negotiateInit(offer, this.fs.capabilities());
    this.writer.writeStruct(fuse_init_out, result.reply);
    if (result.kind === 'retry') {
      this.log('info', `FUSE INIT offered major ${offer.major}; answered ${result.reply.major}`);
      return;
    }
    this.fs.init({ minor: result.minor, flags: result.flags });
    this.initialized = true;
    this.log('info', `FUSE ${offer.major}.${result.minor} initialised, flags 0x${result.flags.toString(16)}`);
  }
}

function opName(opcode: number): string {
  return Opcode[opcode] ?? `opcode ${opcode}`;
}

function describe(err: unknown): string {
  return err instanceof Error ? (err.stack ?? err.message) : String(err);
}
