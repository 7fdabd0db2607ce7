/**
 * One FUSE connection as the virtqueue code sees it: a descriptor chain in, a
 * used length out (or a promise of it, for requests that wait or run on the
 * thread pool). The session frames requests and replies (in/out headers),
 * gives every request its own immutable context (Request, Reader, Writer),
 * owns the INIT/DESTROY state, tracks waiting requests so FUSE_INTERRUPT can
 * cancel them, and turns every failure into an errno reply, so nothing a
 * guest sends can throw out of handle(). Replies of requests that finish
 * later are matched by their own chain, in whatever order they finish.
 */
import type { DaxMapper } from '../dax-mapper/dax-mapper';
import { metrics } from '../metrics';
import { Reader, Writer } from './chain-io';
import { type Negotiated, OPCODES, Request, type SessionControl } from './dispatcher';
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
  fuse_out_header,
  fuse_write_in,
} from './protocol';
import { ReadOnlyFs } from './read-only';
import { XattrMap } from './xattr-map';

export type { LogLevel } from '../log';
import type { LogLevel } from '../log';

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

const NOT_NEGOTIATED: Negotiated = { secctxFormat: 'none', setxattrExt: false };

export class FuseSession implements SessionControl {
  private readonly passthrough: PassthroughFs;
  private readonly fs: FileSystem;
  private readonly log: (level: LogLevel, msg: string) => void;
  /** Requests that wait (SETLKW ...), by unique, so FUSE_INTERRUPT and DESTROY can cancel them. */
  private readonly waiting = new Map<bigint, AbortController>();
  /**
   * Every waiting request's controller, also those whose unique a later request reused (DESTROY cancels
   * them all), with the queue it came from (a queue being stopped cancels its own).
   */
  private readonly live = new Map<AbortController, number>();
  /** The controller the handler now running asked for (interruptSignal), taken by serve() once it returns. */
  private asked: AbortController | null = null;
  private initialized = false;
  /** What INIT agreed on; replaced (never changed) by the next INIT, so requests in flight keep theirs. */
  private negotiated: Negotiated = NOT_NEGOTIATED;

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
    return { inodes: p.inodeCount, handles: p.handleCount, lockFds: p.lockFdCount, waiting: this.live.size };
  }

  /**
   * Serves one request. `readable`/`writable` are the chain's device-readable and
   * device-writable buffers, in order. Returns the bytes written into `writable`,
   * 0 for requests without a reply or too malformed to answer, or a promise of
   * that for requests that finish later. Never throws; the promise never rejects.
   * `queue` is the request queue it came from (`cancelWaits` names it).
   */
  handle(readable: Buffer[], writable: Buffer[], queue = 1): number | Promise<number> {
    try {
      return this.serve(readable, writable, queue);
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
    this.negotiated = NOT_NEGOTIATED;
  }

  /** Releases everything, the shared directory's fd included; the session is unusable afterwards. */
  close(): void {
    this.cancelWaiting();
    this.initialized = false;
    this.passthrough.close();
  }

  /**
   * The queue `queue` is being stopped (GET_VRING_BASE): its waiting requests
   * answer EINTR now, so that it can drain. Work already running (pool I/O)
   * is left to finish.
   */
  cancelWaits(queue: number): void {
    for (const [controller, q] of this.live) if (q === queue) controller.abort();
  }

  private serve(readable: Buffer[], writable: Buffer[], queue: number): number | Promise<number> {
    const t0 = process.hrtime.bigint();
    const r = new Reader().reset(readable);
    if (r.remaining < fuse_in_header.size) {
      this.log('warn', `FUSE request of ${r.remaining} bytes has no header; dropped`);
      return 0;
    }
    const chainLength = r.remaining;
    const header = r.readStruct(fuse_in_header);
    const entry = OPCODES.get(header.opcode);
    const noReply = entry?.noReply === true;
    const w = new Writer().reset(writable);
    // FORGETs arrive on the high-priority queue without any writable buffer: they still count.
    if (w.remaining < fuse_out_header.size && !noReply) {
      this.log('warn', `FUSE ${opName(header.opcode)} request ${header.unique} has no room for a reply; dropped`);
      return 0;
    }
    if (!noReply) w.skip(fuse_out_header.size);

    let errno = 0;
    let controller: AbortController | null = null;
    try {
      // The header's len, not the chain, delimits the request: a chain whose descriptors all repeat
      // one large block can be gigabytes long, and nothing past a bounded len is ever looked at.
      if (header.len < fuse_in_header.size || header.len > chainLength || header.len > maxRequestLength(header.opcode)) fail(Errno.EINVAL);
      const extLength = header.total_extlen * EXTLEN_UNIT;
      const argsLength = header.len - fuse_in_header.size - extLength;
      if (argsLength < 0) fail(Errno.EINVAL);
      const extensions = extLength > 0 ? r.peekBytes(argsLength, extLength) : null;
      r.limit(argsLength);
      if (!this.initialized && !entry?.beforeInit) {
        if (noReply) return this.noReply(header, t0);
        fail(Errno.EIO);
      }
      if (!entry) fail(Errno.ENOSYS);
      const req = new Request(
        header.opcode,
        header.unique,
        header.nodeid,
        header.uid,
        header.gid,
        header.pid,
        extensions,
        r,
        w,
        this.negotiated,
        this,
      );
      let result: void | Promise<void>;
      try {
        result = entry.handler(this.fs, req);
      } finally {
        controller = this.asked;
        this.asked = null;
      }
      if (result instanceof Promise) {
        // A request that asked for an interrupt signal and waits can be interrupted until it settles.
        if (controller) this.register(header.unique, controller, result, queue);
        return this.answerLater(result, w, writable, header, t0);
      }
      if (noReply) return this.noReply(header, t0);
    } catch (err) {
      if (noReply) return this.noReply(header, t0);
      errno = errnoOf(err);
      if (!isExpectedError(err)) this.log('error', `FUSE ${opName(header.opcode)} failed: ${describe(err)}`);
      // Whatever the handler wrote is discarded: an error reply is the header alone.
      w.reset(writable);
      w.skip(fuse_out_header.size);
    } finally {
      this.fs.endRequest();
    }
    return this.finish(w, header, errno, t0);
  }

  /** Writes the reply header of a request that finished later, into its own chain. */
  private async answerLater(result: Promise<void>, w: Writer, writable: Buffer[], header: InHeader, t0: bigint): Promise<number> {
    let errno = 0;
    try {
      await result;
    } catch (err) {
      errno = errnoOf(err);
      if (!isExpectedError(err)) this.log('error', `FUSE ${opName(header.opcode)} failed: ${describe(err)}`);
      w.reset(writable);
      w.skip(fuse_out_header.size);
    }
    try {
      return this.finish(w, header, errno, t0);
    } catch (err) {
      this.log('error', `FUSE ${opName(header.opcode)} reply lost: ${describe(err)}`);
      return 0;
    }
  }

  private finish(w: Writer, header: InHeader, errno: number, t0: bigint): number {
    const len = w.bytesWritten;
    const out = outHeader;
    fuse_out_header.encode({ len, error: -errno, unique: header.unique }, out, 0);
    w.patch(0, out);
    metrics.request(
      header.opcode,
      header.unique,
      header.nodeid,
      errno,
      Number(process.hrtime.bigint() - t0),
      payloadBytes(header, errno, len),
    );
    return len;
  }

  private noReply(header: InHeader, t0: bigint): number {
    metrics.request(header.opcode, header.unique, header.nodeid, 0, Number(process.hrtime.bigint() - t0), 0);
    return 0;
  }

  /* ---------------- SessionControl: the session's own opcodes ---------------- */

  init(req: Request): void {
    if (this.initialized) {
      // A guest that re-initialises without a device reset starts over: its old references are void.
      this.log('warn', 'FUSE INIT on an initialised session: dropping its state');
      this.reset();
    }
    const offer = req.args.readStructPrefix(fuse_init_in, FUSE_COMPAT_INIT_IN_SIZE);
    if (!(offer.flags & FUSE_INIT_EXT)) offer.flags2 = 0;
    const result = negotiateInit(offer, this.fs.capabilities());
    if (result.kind === 'retry') {
      req.reply.writeStruct(fuse_init_out, result.reply);
      this.log('info', `FUSE INIT offered major ${offer.major}; answered ${result.reply.major}`);
      return;
    }
    // The file system may refuse what was agreed (a required feature missing): then INIT fails.
    this.fs.init({ minor: result.minor, flags: result.flags, flags2: result.flags2 });
    req.reply.writeStruct(fuse_init_out, result.reply);
    this.negotiated = {
      secctxFormat: result.flags2 & FUSE_SECURITY_CTX_FLAGS2 ? (result.minor >= EXTENSIONS_MINOR ? 'extension' : 'after-args') : 'none',
      setxattrExt: (result.flags & FUSE_SETXATTR_EXT) !== 0,
    };
    this.initialized = true;
    this.log(
      'info',
      `FUSE ${offer.major}.${result.minor} initialised, flags 0x${result.flags.toString(16)} flags2 0x${result.flags2.toString(16)}`,
    );
  }

  interrupt(unique: bigint): void {
    this.waiting.get(unique)?.abort();
  }

  destroy(): void {
    this.reset();
  }

  interruptSignal(): AbortSignal {
    this.asked ??= new AbortController();
    return this.asked.signal;
  }

  /**
   * Makes a waiting request interruptible by its unique until it settles. A
   * guest may reuse a unique while a request with it still waits: INTERRUPT
   * then reaches the newest, DESTROY every one, and each removes only itself.
   */
  private register(unique: bigint, controller: AbortController, result: Promise<void>, queue: number): void {
    this.waiting.set(unique, controller);
    this.live.set(controller, queue);
    const forget = (): void => {
      this.live.delete(controller);
      if (this.waiting.get(unique) === controller) this.waiting.delete(unique);
    };
    result.then(forget, forget);
  }

  /** Every waiting request answers EINTR. */
  private cancelWaiting(): void {
    for (const controller of this.live.keys()) controller.abort();
    this.live.clear();
    this.waiting.clear();
  }
}

/** Encoded and patched in one synchronous call: one buffer serves every reply. */
const outHeader = Buffer.alloc(fuse_out_header.size);

/** Payload bytes a request moved, for the metrics: READ data out, WRITE data in (what the guest sent). */
function payloadBytes(header: InHeader, errno: number, replyLen: number): number {
  if (errno !== 0) return 0;
  if (header.opcode === Opcode.FUSE_READ) return replyLen - fuse_out_header.size;
  if (header.opcode === Opcode.FUSE_WRITE)
    return Math.max(0, header.len - fuse_in_header.size - fuse_write_in.size - header.total_extlen * EXTLEN_UNIT);
  return 0;
}

function opName(opcode: number): string {
  return Opcode[opcode] ?? `opcode ${opcode}`;
}

function describe(err: unknown): string {
  return err instanceof Error ? (err.stack ?? err.message) : String(err);
}
