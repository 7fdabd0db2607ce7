/**
 * The FUSE session tests' way in: DirectTransport carries the guest driver's
 * requests (src/guest/fuse-driver.ts FuseClient) straight to
 * FuseSession.handle(), cut into several buffers at odd offsets as a
 * descriptor chain may be split. Requests no client would frame (broken
 * headers, chosen uniques, no reply expected) go through its one raw entry,
 * raw(): bytes in, the reply's bytes back.
 */
import * as fs from 'node:fs';
import type { FuseSession } from '../../src/fuse-server/session';
import { fuse_in_header, fuse_out_header } from '../../src/fuse-server/protocol';
import { type CallOptions, type FuseChannel, FuseClient, FuseRequestError, type FuseReply, encode } from '../../src/guest/fuse-driver';
import type { FuseCall } from '../../src/guest/fuse-transport';
import { Errno } from '../../src/sys/errno';

/** The guest's encoders and READDIR parser serve the test client as well. */
export { cstr, encode, parseDirents } from '../../src/guest/fuse-driver';

/** What came back for raw bytes. */
export interface RawReply {
  /** Bytes the session reported as written (0: no reply). */
  used: number;
  /** Negative errno from the out header, 0 on success (and when there was no reply). */
  error: number;
  unique: bigint;
  /** The reply after the out header. */
  body: Buffer;
}

/** One reply the client received: which request it answered and how. */
export interface Answer {
  opcode: number;
  unique: bigint;
  error: number;
  /** Bytes the session wrote: the out header and the body. */
  used: number;
}

export type RawOptions = Pick<CallOptions, 'uid' | 'gid' | 'pid' | 'len' | 'extensions'> & {
  /** Room for the reply after the out header (default 64 KiB). */
  replySize?: number;
  /** Sizes the request is cut into, cycling (default READ_CUTS). */
  readCuts?: number[];
};

/** Sizes the readable side is cut into, cycling: every header field boundary gets crossed somewhere. */
const READ_CUTS = [7, 1, 13, 33, 3, 64, 5, 120];
/** Sizes the writable side is cut into, cycling. */
const WRITE_CUTS = [5, 19, 1, 100, 37, 4096];
/** Reply room of a raw request when the caller gives none. */
const RAW_REPLY_SIZE = 64 * 1024;

export function cut(data: Buffer, sizes: number[]): Buffer[] {
  const out: Buffer[] = [];
  let pos = 0;
  for (let i = 0; pos < data.length; i++) {
    const n = Math.min(sizes[i % sizes.length], data.length - pos);
    // Separate allocations, like separate descriptors.
    const piece = Buffer.alloc(n);
    data.copy(piece, 0, pos, pos + n);
    out.push(piece);
    pos += n;
  }
  return out;
}

export function writableChain(total: number, sizes = WRITE_CUTS): Buffer[] {
  return cut(Buffer.alloc(total), sizes);
}

/** The in-header fields a test client puts in every request unless a call overrides them. */
const DEFAULT_CREDS = { uid: 0, gid: 0, pid: 4242 };

/**
 * A FuseChannel with no virtqueue: each request is framed, cut at odd offsets
 * and handed to FuseSession.handle(); the reply is checked as FuseTransport
 * checks a used chain (unique, length, error sign). It also records what a
 * test of timing needs: whether the session answered a request at once, how
 * many it holds unanswered, and the order replies came in.
 */
export class DirectTransport implements FuseChannel {
  private nextUnique = 1n;
  /** The unique of the request framed last (to INTERRUPT it, or to find its answer). */
  lastUnique = 0n;
  /** Whether the session took the request sent last without answering it at once (its reply comes when it settles). */
  lastDeferred = false;
  /** Requests the session took without answering at once and has not answered yet. */
  pending = 0;
  /** Every reply to a request framed here (call(), raw() of a request description), in the order they came. */
  readonly answered: Answer[] = [];

  constructor(
    readonly session: FuseSession,
    readonly readCuts = READ_CUTS,
  ) {}

  /** The request bytes of `req` as FuseTransport would lay them out (args, data, extensions). */
  frame(req: Omit<FuseCall, 'replySize'>, opts: CallOptions = {}): Buffer {
    const ext = opts.extensions ?? Buffer.alloc(0);
    const body = Buffer.concat([...(req.args ?? []), req.data ?? Buffer.alloc(0), ext]);
    this.lastUnique = this.nextUnique++;
    const header = encode(fuse_in_header, {
      len: opts.len ?? fuse_in_header.size + body.length,
      opcode: req.opcode,
      unique: this.lastUnique,
      nodeid: req.nodeid,
      uid: opts.uid ?? DEFAULT_CREDS.uid,
      gid: opts.gid ?? DEFAULT_CREDS.gid,
      pid: opts.pid ?? DEFAULT_CREDS.pid,
      total_extlen: ext.length / 8,
    });
    return Buffer.concat([header, body]);
  }

  /** Hands one chain to the session (synchronously, as the device does), noting whether it answered at once. */
  private serve(readable: Buffer[], writable: Buffer[]): Promise<number> {
    const used = this.session.handle(readable, writable);
    this.lastDeferred = typeof used !== 'number';
    if (typeof used === 'number') return Promise.resolve(used);
    this.pending++;
    return used.finally(() => this.pending--);
  }

  async call(req: FuseCall, opts: CallOptions = {}): Promise<FuseReply> {
    const request = this.frame(req, opts);
    const unique = this.lastUnique;
    const writable = writableChain(fuse_out_header.size + req.replySize);
    const used = await this.serve(cut(request, this.readCuts), writable);
    const fail = (detail: string): never => {
      throw new FuseRequestError(req.opcode, Errno.EPROTO, 'protocol', detail);
    };
    if (used < fuse_out_header.size) return fail(`no reply (used length ${used})`);
    const all = Buffer.concat(writable);
    const out = fuse_out_header.decode(all, 0);
    if (out.unique !== unique) fail(`reply carries unique ${out.unique}, request had ${unique}`);
    if (out.len !== used) fail(`out header len ${out.len} != used length ${used}`);
    if (out.error > 0) fail(`positive error ${out.error}`);
    this.answered.push({ opcode: req.opcode, unique, error: out.error, used });
    return { error: out.error, payload: Buffer.from(all.subarray(fuse_out_header.size, used)), unique };
  }

  async post(req: Omit<FuseCall, 'replySize'>, opts: CallOptions = {}): Promise<void> {
    const used = await this.serve(cut(this.frame(req, opts), this.readCuts), []);
    if (used !== 0) throw new FuseRequestError(req.opcode, Errno.EPROTO, 'protocol', `a request without reply used ${used} bytes`);
  }

  /**
   * The raw entry, for what no client method would send: `request` as bytes
   * (sent as-is), or opcode, nodeid and argument bytes framed here with a
   * fresh unique (and `opts` credentials, len, extensions). Cut at odd
   * offsets; whatever the session writes back comes back, no reply included.
   * The out header's len must match the used length; for a request framed
   * here, the reply must also carry its unique and no positive error.
   */
  async raw(request: Buffer | Omit<FuseCall, 'replySize'>, opts: RawOptions = {}): Promise<RawReply> {
    const framed = Buffer.isBuffer(request) ? null : request;
    const bytes = framed ? this.frame(framed, opts) : (request as Buffer);
    const unique = this.lastUnique;
    const writable = writableChain(fuse_out_header.size + (opts.replySize ?? RAW_REPLY_SIZE));
    const used = await this.serve(cut(bytes, opts.readCuts ?? this.readCuts), writable);
    if (used === 0) return { used, error: 0, unique: 0n, body: Buffer.alloc(0) };
    const all = Buffer.concat(writable);
    const out = fuse_out_header.decode(all, 0);
    if (out.len !== used) throw new Error(`out header len ${out.len} != used ${used}`);
    if (framed) {
      if (out.unique !== unique) throw new Error(`reply carries unique ${out.unique}, request had ${unique}`);
      if (out.error > 0) throw new Error(`positive error ${out.error}`);
      this.answered.push({ opcode: framed.opcode, unique, error: out.error, used });
    }
    return { used, error: out.error, unique: out.unique, body: all.subarray(fuse_out_header.size, used) };
  }
}

/** The guest driver's API on `session`, over a DirectTransport. */
export function directClient(session: FuseSession): FuseClient<DirectTransport> {
  return new FuseClient(new DirectTransport(session));
}

/** How a client call ended: 0 and its value, or the negative errno of its error reply. */
export type Outcome<T> = { error: 0; value: T } | { error: number; value?: undefined };

/** The outcome of `call`; anything but an errno reply (no reply, a broken one) is rethrown. */
export async function outcome<T>(call: Promise<T>): Promise<Outcome<T>> {
  try {
    return { error: 0, value: await call };
  } catch (err) {
    if (err instanceof FuseRequestError && err.kind === 'reply') return { error: -err.errno };
    throw err;
  }
}

/** What an error reply would carry for `call`: 0 when it succeeds, the negative errno of its FuseRequestError otherwise. */
export async function replyError(call: Promise<unknown>): Promise<number> {
  return (await outcome(call)).error;
}

/** Open file descriptors of this process. */
export function openFdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}
