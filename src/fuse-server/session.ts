/**
 * One FUSE connection as the virtqueue code sees it: a descriptor chain in, a
 * used length out (or a promise of it, for requests that wait). The session
 * frames requests and replies (in/out headers), owns the INIT/DESTROY state,
 * tracks waiting requests so FUSE_INTERRUPT can cancel them, and turns every
 * failure into an errno reply, so nothing a guest sends can throw out of
 * handle().
 */
import type { DaxMapper } from '../dax-mapper/dax-mapper';
import { Reader, Writer } from './chain-io';
import { NO_REPLY, Request, dispatch, expectsNoReply } from './dispatcher';
import { Errno, errnoOf, fail, isExpectedError } from './errors';
import type { FileSystem } from './filesystem';
import { IdMap } from './id-map';
import { MAX_WRITE, PAGE_SIZE, negotiateInit } from './init';
import { PassthroughFs } from './passthrough';
import type { DaxPolicy } from './passthrough-dax';
import type { PassthroughOptions } from './passthrough-options';
import {
  FUSE_COMPAT_INIT_IN_SIZE,
  FUSE_INIT_EXT,
  FUSE_SECURITY_CTX_FLAGS2,
  FUSE_SETXATTR_EXT,
  type InHeader,
  Opcode,
  XATTR_SIZE_MAX,
  fuse_in_header,
  fuse_init_in,
  fuse_init_out,
  fuse_interrupt_in,
  fuse_out_header,
  fuse_write_in,
} from './protocol';
import { ReadOnlyFs } from './read-only';
import { XattrMap } from './xattr-map';

export type LogLevel = 'error' | 'warn' | 'info' | 'debug';

/** The share's settings; every field but the first three is optional and off by default. */
export interface FuseSessionOptions extends Omit<PassthroughOptions, 'xattrmap' | 'uidMap' | 'gidMap' | 'dax' | 'log'> {
  readonly: boolean;
  /** `--xattrmap` rules (virtiofsd(1) syntax). */
  xattrmap?: string;
  /** `--translate-uid` / `--translate-gid` rules (see id-map.ts). */
  translateUid?: string[];
  translateGid?: string[];
  /** The DAX window's mapper (`--dax-window`) and which files to offer for DAX. */
  dax?: { mapper: DaxMapper; policy: DaxPolicy } | null;
  log?: (level: LogLevel, msg: string) => void;
}

/** Bytes per unit of fuse_in_header.total_extlen. */
const EXTLEN_UNIT = 8;
/** FUSE 7.38 moved security contexts into request extensions. */
const EXTENSIONS_MINOR = 38;
/** The longest WRITE: its fixed arguments and max_write bytes of data (what INIT tells the guest). */
const MAX_WRITE_REQUEST_LEN = fuse_in_header.size + fuse_write_in.size + MAX_WRITE;
/**
 * The longest request of any other opcode: the largest variable part Linux
 * sends (an xattr value of XATTR_SIZE_MAX after its name, or a PATH_MAX symlink
 * target after a NAME_MAX name) plus pages for fixed arguments and extensions
 * (security context, supplementary group).
 */
const MAX_REQUEST_LEN = fuse_in_header.size + XATTR_SIZE_MAX + 4 * PAGE_SIZE;

/** Bound on fuse_in_header.len: nothing past it is ever scanned or copied, whatever the chain holds. */
function maxRequestLength(opcode: number): number {
  return opcode === Opcode.FUSE_WRITE ? MAX_WRITE_REQUEST_LEN : MAX_REQUEST_LEN;
}

export class FuseSession {
  private readonly passthrough: PassthroughFs;
  private readonly fs: FileSystem;
  private readonly log: (level: LogLevel, msg: string) => void;
  // Reused for every request: handle() decodes everything it needs before it returns.
  private readonly reader = new Reader();
  private readonly writer = new Writer();
  private readonly request = new Request(this.reader, this.writer);
  private readonly outHeader = Buffer.alloc(fuse_out_header.size);
  /** Requests that wait (SETLKW ...), by unique, so FUSE_INTERRUPT and DESTROY can cancel them. */
  private readonly waiting = new Map<bigint, AbortController>();
  private initialized = false;

  /** Opens the shared directory; throws if it cannot be served (bad xattrmap or id map, mandatory file handles ...). */
  constructor(options: FuseSessionOptions) {
    this.log = options.log ?? (() => {});
    this.passthrough = new PassthroughFs({
      ...options,
      xattrmap: options.xattrmap !== undefined ? new XattrMap(options.xattrmap) : null,
      uidMap: new IdMap(options.translateUid),
      gidMap: new IdMap(options.translateGid),
      log: this.log,
    });
    this.fs = options.readonly ? new ReadOnlyFs(this.passthrough) : this.passthrough;
  }

  /** Inodes the guest holds (the root included), open handles, lock descriptions and waiting requests. */
  get stats(): { inodes: number; handles: number; lockFds: number; waiting: number } {
    const p = this.passthrough;
    return { inodes: p.inodeCount, handles: p.handleCount, lockFds: p.lockFdCount, waiting: this.waiting.size };
  }

  /**
   * Serves one request. `readable`/`writable` are the chain's device-readable and
   * device-writable buffers, in order. Returns the bytes written into `writable`,
   * 0 for requests without a reply or too malformed to answer, or a promise of
   * that for requests that wait. Never throws; the promise never rejects.
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
    this.cancelWaiting();
    this.fs.destroy();
    this.initialized = false;
    this.request.secctxFormat = 'none';
    this.request.setxattrExt = false;
  }

  /** Releases everything, the shared directory's fd included; the session is unusable afterwards. */
  close(): void {
    this.cancelWaiting();
    this.initialized = false;
    this.passthrough.close();
  }

  private serve(readable: Buffer[], writable: Buffer[]): number | Promise<number> {
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
      // The header's len, not the chain, delimits the request: a chain whose descriptors all repeat
      // one large block can be gigabytes long, and nothing past a bounded len is ever looked at.
      if (header.len < fuse_in_header.size || header.len > chainLength || header.len > maxRequestLength(header.opcode)) fail(Errno.EINVAL);
      const extLength = header.total_extlen * EXTLEN_UNIT;
      const argsLength = header.len - fuse_in_header.size - extLength;
      if (argsLength < 0) fail(Errno.EINVAL);
      const extensions = extLength > 0 ? r.peekBytes(argsLength, extLength) : null;
      r.limit(argsLength);
      const result = this.run(header, extensions);
      if (result === NO_REPLY) return 0;
      if (result instanceof Promise) return this.answerLater(result, writable, header);
    } catch (err) {
      if (expectsNoReply(header.opcode)) return 0;
      errno = errnoOf(err);
      if (!isExpectedError(err)) this.log('error', `FUSE ${opName(header.opcode)} failed: ${describe(err)}`);
      // Whatever the handler wrote is discarded: an error reply is the header alone.
      w.reset(writable);
      w.skip(fuse_out_header.size);
    } finally {
      this.fs.endRequest();
    }
    return this.finish(w, header.unique, errno);
  }

  private run(header: InHeader, extensions: Buffer | null): void | typeof NO_REPLY | Promise<void> {
    switch (header.opcode) {
      case Opcode.FUSE_INIT:
        return this.init();
      case Opcode.FUSE_INTERRUPT:
        // The interrupted request answers EINTR; INTERRUPT itself gets no reply. One that already
        // finished (or never waited) has nothing left to interrupt.
        this.waiting.get(this.reader.readStruct(fuse_interrupt_in).unique)?.abort();
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
    req.reset(header.opcode, header.unique, header.nodeid, header.uid, header.gid, header.pid, extensions);
    const result = dispatch(this.fs, req);
    const controller = req.takeController();
    if (result instanceof Promise && controller) {
      this.waiting.set(header.unique, controller);
      const forget = (): void => void this.waiting.delete(header.unique);
      result.then(forget, forget);
    }
    return result;
  }

  /** Writes the reply header of a waiting request once it settles. The writable buffers stay the chain's until then. */
  private async answerLater(result: Promise<void>, writable: Buffer[], header: InHeader): Promise<number> {
    let errno = 0;
    try {
      await result;
    } catch (err) {
      errno = errnoOf(err);
      if (!isExpectedError(err)) this.log('error', `FUSE ${opName(header.opcode)} failed: ${describe(err)}`);
    }
    try {
      // The session's own Writer is free here: serve() is synchronous and never holds it across an
      // await, and this continuation only runs once the stack has unwound.
      const w = this.writer.reset(writable);
      w.skip(fuse_out_header.size);
      return this.finish(w, header.unique, errno);
    } catch (err) {
      this.log('error', `FUSE ${opName(header.opcode)} reply lost: ${describe(err)}`);
      return 0;
    }
  }

  private finish(w: Writer, unique: bigint, errno: number): number {
    fuse_out_header.encode({ len: w.bytesWritten, error: -errno, unique }, this.outHeader, 0);
    w.patch(0, this.outHeader);
    return w.bytesWritten;
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
    if (result.kind === 'retry') {
      this.writer.writeStruct(fuse_init_out, result.reply);
      this.log('info', `FUSE INIT offered major ${offer.major}; answered ${result.reply.major}`);
      return;
    }
    // The file system may refuse what was agreed (a required feature missing): then INIT fails.
    this.fs.init({ minor: result.minor, flags: result.flags, flags2: result.flags2 });
    this.writer.writeStruct(fuse_init_out, result.reply);
    const req = this.request;
    req.secctxFormat = result.flags2 & FUSE_SECURITY_CTX_FLAGS2 ? (result.minor >= EXTENSIONS_MINOR ? 'extension' : 'after-args') : 'none';
    req.setxattrExt = (result.flags & FUSE_SETXATTR_EXT) !== 0;
    this.initialized = true;
    this.log('info', `FUSE ${offer.major}.${result.minor} initialised, flags 0x${result.flags.toString(16)} flags2 0x${result.flags2.toString(16)}`);
  }

  /** Every waiting request answers EINTR. */
  private cancelWaiting(): void {
    for (const controller of this.waiting.values()) controller.abort();
    this.waiting.clear();
  }
}

function opName(opcode: number): string {
  return Opcode[opcode] ?? `opcode ${opcode}`;
}

function describe(err: unknown): string {
  return err instanceof Error ? (err.stack ?? err.message) : String(err);
}
