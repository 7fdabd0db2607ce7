/**
 * The FUSE session tests' way in: DirectTransport carries the guest driver's
 * requests (src/guest/fuse-driver.ts FuseClient) straight to
 * FuseSession.handle(), cut into several buffers at odd offsets as a
 * descriptor chain may be split. RawFuse (below) is the compatibility shim for
 * tests that still build raw, synchronous requests.
 */
import * as fs from 'node:fs';
import type { FuseSession } from '../../src/fuse-server/session';
import {
  FUSE_ASYNC_READ,
  FUSE_BIG_WRITES,
  FUSE_DO_READDIRPLUS,
  FUSE_INIT_EXT,
  FUSE_MAX_PAGES,
  FUSE_READDIRPLUS_AUTO,
  Opcode,
  fuse_entry_out,
  fuse_in_header,
  fuse_init_in,
  fuse_out_header,
  type EntryOut,
} from '../../src/fuse-server/protocol';
import {
  type CallOptions,
  type FuseChannel,
  FuseClient,
  FuseRequestError,
  type FuseReply,
  cstr,
  encode,
} from '../../src/guest/fuse-driver';
import type { FuseCall } from '../../src/guest/fuse-transport';
import { Errno } from '../../src/sys/errno';

/** The guest's encoders and READDIR parser serve the test client as well. */
export { cstr, encode, parseDirents } from '../../src/guest/fuse-driver';

export interface Reply {
  /** Bytes the session reported as written (0: no reply). */
  used: number;
  /** Negative errno from the out header, 0 on success. */
  error: number;
  unique: bigint;
  /** The reply after the out header. */
  body: Buffer;
}

/** The shim's per-request options: the driver's CallOptions a direct request can honour, and the reply room. */
export type RequestOptions = Pick<CallOptions, 'uid' | 'gid' | 'len' | 'extensions'> & {
  /** Room for the reply (default 64 KiB + header). */
  replySize?: number;
};

/** Sizes the readable side is cut into, cycling: every header field boundary gets crossed somewhere. */
const READ_CUTS = [7, 1, 13, 33, 3, 64, 5, 120];
/** Sizes the writable side is cut into, cycling. */
const WRITE_CUTS = [5, 19, 1, 100, 37, 4096];

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
 * checks a used chain (unique, length, error sign).
 */
export class DirectTransport implements FuseChannel {
  private nextUnique = 1n;
  /** The unique of the request sent last (to INTERRUPT it). */
  lastUnique = 0n;

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

  async call(req: FuseCall, opts: CallOptions = {}): Promise<FuseReply> {
    const request = this.frame(req, opts);
    const unique = this.lastUnique;
    const writable = writableChain(fuse_out_header.size + req.replySize);
    const used = await this.session.handle(cut(request, this.readCuts), writable);
    const fail = (detail: string): never => {
      throw new FuseRequestError(req.opcode, Errno.EPROTO, 'protocol', detail);
    };
    if (used < fuse_out_header.size) return fail(`no reply (used length ${used})`);
    const all = Buffer.concat(writable);
    const out = fuse_out_header.decode(all, 0);
    if (out.unique !== unique) fail(`reply carries unique ${out.unique}, request had ${unique}`);
    if (out.len !== used) fail(`out header len ${out.len} != used length ${used}`);
    if (out.error > 0) fail(`positive error ${out.error}`);
    return { error: out.error, payload: Buffer.from(all.subarray(fuse_out_header.size, used)), unique };
  }

  async post(req: Omit<FuseCall, 'replySize'>, opts: CallOptions = {}): Promise<void> {
    const used = await this.session.handle(cut(this.frame(req, opts), this.readCuts), []);
    if (used !== 0) throw new FuseRequestError(req.opcode, Errno.EPROTO, 'protocol', `a request without reply used ${used} bytes`);
  }
}

/** The guest driver's API on `session`, over a DirectTransport. */
export function directClient(session: FuseSession): FuseClient<DirectTransport> {
  return new FuseClient(new DirectTransport(session));
}

/**
 * Compatibility shim for tests not yet on FuseClient: raw requests whose reply
 * comes back synchronously when the session answers at once.
 */
export class FuseDriver {
  constructor(
    readonly session: FuseSession,
    /** Shared with the harness's FuseClient, so the two number their requests as one. */
    readonly transport = new DirectTransport(session),
  ) {}

  /** The unique of the request built last. */
  get lastUnique(): bigint {
    return this.transport.lastUnique;
  }

  /** Builds the raw request bytes. */
  build(opcode: number, nodeid: number, parts: Buffer[], opts: RequestOptions = {}): Buffer {
    return this.transport.frame({ opcode, nodeid, args: parts }, opts);
  }

  /** Sends raw request bytes split at odd offsets; decodes whatever comes back. */
  sendRaw(request: Buffer, replySize = 65536 + 16, readCuts = READ_CUTS): Reply {
    const result = this.sendRawAsync(request, replySize, readCuts);
    if (result instanceof Promise) throw new Error('unexpected asynchronous reply');
    return result;
  }

  /** Like sendRaw, for requests that may wait: a Reply, or a promise of one. */
  sendRawAsync(request: Buffer, replySize = 65536 + 16, readCuts = READ_CUTS): Reply | Promise<Reply> {
    const writable = writableChain(replySize);
    const used = this.session.handle(cut(request, readCuts), writable);
    return typeof used === 'number' ? decodeReply(writable, used) : used.then((n) => decodeReply(writable, n));
  }

  /** A request that may wait: the reply, or a promise of it (see lastUnique to interrupt it). */
  start(opcode: number, nodeid: number, parts: Buffer[] = [], opts: RequestOptions = {}): Reply | Promise<Reply> {
    return this.sendRawAsync(this.build(opcode, nodeid, parts, opts), opts.replySize);
  }

  /** Awaits a request that may wait; the reply either way. */
  async requestAsync(opcode: number, nodeid: number, parts: Buffer[] = [], opts: RequestOptions = {}): Promise<Reply> {
    return this.start(opcode, nodeid, parts, opts);
  }

  request(opcode: number, nodeid: number, parts: Buffer[] = [], opts: RequestOptions = {}): Reply {
    return this.sendRaw(this.build(opcode, nodeid, parts, opts), opts.replySize);
  }

  /** Like ok(), for requests that may finish later (thread-pool READ/WRITE, FSYNC). */
  async okAsync(opcode: number, nodeid: number, parts: Buffer[] = [], opts: RequestOptions = {}): Promise<Buffer> {
    const r = await this.requestAsync(opcode, nodeid, parts, opts);
    if (r.used === 0) throw new Error(`${Opcode[opcode]}: no reply`);
    if (r.error !== 0) throw new Error(`${Opcode[opcode]}: error ${r.error}`);
    return r.body;
  }

  /** Like request() but throws on an error reply. */
  ok(opcode: number, nodeid: number, parts: Buffer[] = [], opts: RequestOptions = {}): Buffer {
    const r = this.request(opcode, nodeid, parts, opts);
    if (r.used === 0) throw new Error(`${Opcode[opcode]}: no reply`);
    if (r.error !== 0) throw new Error(`${Opcode[opcode]}: error ${r.error}`);
    return r.body;
  }

  init(
    minor = 38,
    flags = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO | FUSE_MAX_PAGES | FUSE_INIT_EXT,
    flags2 = 0,
  ): Buffer {
    return this.ok(Opcode.FUSE_INIT, 0, [encode(fuse_init_in, { major: 7, minor, max_readahead: 131072, flags, flags2 })]);
  }

  lookup(parent: number, name: string): EntryOut {
    return fuse_entry_out.decode(this.ok(Opcode.FUSE_LOOKUP, parent, [cstr(name)]), 0);
  }
}

function decodeReply(writable: Buffer[], used: number): Reply {
  const all = Buffer.concat(writable);
  if (used === 0) return { used, error: 0, unique: 0n, body: Buffer.alloc(0) };
  const h = fuse_out_header.decode(all, 0);
  if (h.len !== used) throw new Error(`out header len ${h.len} != used ${used}`);
  return { used, error: h.error, unique: h.unique, body: all.subarray(fuse_out_header.size, used) };
}

/** What an error reply would carry for `call`: 0 when it succeeds, the negative errno of its FuseRequestError otherwise. */
export async function replyError(call: Promise<unknown>): Promise<number> {
  try {
    await call;
    return 0;
  } catch (err) {
    if (err instanceof FuseRequestError && err.kind === 'reply') return -err.errno;
    throw err;
  }
}

/** Open file descriptors of this process. */
export function openFdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}
