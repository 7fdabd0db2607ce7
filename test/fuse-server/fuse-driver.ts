/**
 * A minimal FUSE driver for tests: builds requests, cuts them into several
 * buffers at odd offsets (as a descriptor chain may be split), hands them to
 * FuseSession.handle() and decodes the reply.
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
import { cstr, encode } from '../../src/guest/fuse-driver';

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

export interface RequestOptions {
  uid?: number;
  gid?: number;
  /** Room for the reply (default 64 KiB + header). */
  replySize?: number;
  /** Overrides fuse_in_header.len. */
  len?: number;
  /** Request extensions (a multiple of 8 bytes), appended and counted in total_extlen. */
  extensions?: Buffer;
}

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

export class FuseDriver {
  private unique = 1n;
  /** The unique of the request built last. */
  lastUnique = 0n;

  constructor(readonly session: FuseSession) {}

  /** Builds the raw request bytes. */
  build(opcode: number, nodeid: number, parts: Buffer[], opts: RequestOptions = {}): Buffer {
    const ext = opts.extensions ?? Buffer.alloc(0);
    const payload = Buffer.concat([...parts, ext]);
    this.lastUnique = this.unique++;
    const header = encode(fuse_in_header, {
      len: opts.len ?? fuse_in_header.size + payload.length,
      opcode,
      unique: this.lastUnique,
      nodeid,
      uid: opts.uid ?? 0,
      gid: opts.gid ?? 0,
      pid: 4242,
      total_extlen: ext.length / 8,
    });
    return Buffer.concat([header, payload]);
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

/** Open file descriptors of this process. */
export function openFdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}
