/**
 * The guest kernel's FUSE transport over virtio-fs: turns one request into a
 * descriptor chain in guest RAM, hands it to a queue, and turns the used chain
 * back into a reply. It knows framing (in/out headers, `unique` ids) but not
 * what any opcode means; fuse-driver.ts does.
 */
import type { ValueOfLayout } from '../layout';
import { Opcode, fuse_in_header, fuse_out_header } from '../fuse-server/protocol';
import { Errno, errnoCode } from '../sys/errno';
import type { VhostUserFrontend } from './frontend';
import type { GuestQueue } from './guest-queue';
import type { RamBlock } from './guest-ram';
import type { GuestBuffer } from './split-ring-driver';

const IN_HEADER = fuse_in_header.size;
const OUT_HEADER = fuse_out_header.size;

/** Why a request failed: the back-end answered an errno, sent no (sensible) reply, or none in time. */
export type FuseErrorKind = 'reply' | 'protocol' | 'timeout';

/**
 * A failed FUSE request as the client sees it: the opcode, why (an errno reply,
 * a broken reply, none in time), `errno` positive and `code` its name
 * ('ENOENT'). Not src/fuse-server/errors.ts FuseError, the errno a server
 * handler throws to become its reply: that one has no opcode and no failure kind.
 */
export class FuseRequestError extends Error {
  override name = 'FuseRequestError';
  readonly code: string;
  constructor(
    readonly opcode: number,
    readonly errno: number,
    readonly kind: FuseErrorKind = 'reply',
    detail?: string,
  ) {
    super(`${opcodeName(opcode)}: ${detail ?? errnoCode(errno)}`);
    this.code = errnoCode(errno);
  }
}

export function opcodeName(opcode: number): string {
  return Opcode[opcode] ?? `opcode ${opcode}`;
}

/** Per-request choices; every field has a transport-wide default. */
export interface CallOptions {
  /** Index into the request queues (default: round-robin over all of them). */
  queue?: number;
  /** Send the chain through an indirect descriptor table (needs VIRTIO_RING_F_INDIRECT_DESC). */
  indirect?: boolean;
  uid?: number;
  gid?: number;
  pid?: number;
  /** Overrides fuse_in_header.len (tests of malformed input). */
  len?: number;
  /** Request extensions (a multiple of 8 bytes, linux/fuse.h fuse_ext_header), appended and counted in total_extlen. */
  extensions?: Buffer;
  /** Rejects with a 'timeout' FuseRequestError when no reply came in this many ms (0: wait forever). */
  timeoutMs?: number;
}

export interface TransportDefaults {
  indirect: boolean;
  uid: number;
  gid: number;
  pid: number;
  timeoutMs: number;
}

/** What a used chain held: its used length and, when long enough, the out header and body. */
type Collected = { len: number; out?: undefined } | { len: number; out: ValueOfLayout<typeof fuse_out_header>; payload: Buffer };

/** One request as the transport sends it. */
export interface FuseCall {
  opcode: number;
  nodeid: number;
  /** Arguments after the in header: each becomes its own descriptor. */
  args?: Buffer[];
  /** Bulk data after the arguments (WRITE): copied once into its own block of guest RAM. */
  data?: Buffer;
  /** Bytes of reply the caller can take after fuse_out_header (the body's own descriptor). */
  replySize: number;
}

export interface FuseReply {
  /** fuse_out_header.error: 0 or a negative errno. */
  error: number;
  /** The reply after fuse_out_header, copied out of guest RAM. */
  payload: Buffer;
  unique: bigint;
}

/** What carries requests to a FUSE server: the vhost-user FuseTransport, or a direct one in tests. */
export interface FuseChannel {
  /** Sends a request and waits for its reply; an error reply resolves too (see FuseReply.error). */
  call(req: FuseCall, opts?: CallOptions): Promise<FuseReply>;
  /** Sends a request the server does not answer (FORGET, BATCH_FORGET). */
  post(req: Omit<FuseCall, 'replySize'>, opts?: CallOptions): Promise<void>;
}

/**
 * Builds and completes FUSE requests on a front-end's queues. Many requests may
 * be in flight at once: each owns its blocks of guest RAM until the device
 * returns its chain (even past a timeout, since the device may still write).
 */
export class FuseTransport implements FuseChannel {
  private nextUnique = 1n;
  private nextQueue = 0;
  private readonly pending = new Map<bigint, number>();

  constructor(
    readonly frontend: VhostUserFrontend,
    readonly defaults: TransportDefaults,
  ) {}

  /** Requests sent and not yet answered, by unique id -> opcode. */
  get inflight(): ReadonlyMap<bigint, number> {
    return this.pending;
  }

  /** Sends a request and waits for its reply; an error reply resolves too (see FuseReply.error). */
  async call(req: FuseCall, opts: CallOptions = {}): Promise<FuseReply> {
    const queue = this.requestQueue(opts.queue);
    const { unique, readable, blocks } = this.buildRequest(req, opts);
    const { ram } = this.frontend;
    // The out header and the body get blocks of their own, so a READ body is a
    // power-of-two block the size of the data, not one size class above it.
    const header = ram.alloc(OUT_HEADER);
    blocks.push(header);
    const writable: GuestBuffer[] = [{ addr: header.addr, len: OUT_HEADER }];
    let body: RamBlock | null = null;
    if (req.replySize > 0) {
      body = ram.alloc(req.replySize);
      blocks.push(body);
      writable.push({ addr: body.addr, len: req.replySize });
    }

    const used = await this.complete<Collected>(
      req.opcode,
      unique,
      queue.submit(readable, writable, this.indirect(opts)),
      blocks,
      opts,
      (len) => {
        // Copy out before the blocks go back to the allocator: the one copy of READ data.
        if (len < OUT_HEADER) return { len };
        const out = fuse_out_header.decode(header.view, 0);
        const bodyLen = Math.max(0, Math.min(out.len, OUT_HEADER + req.replySize) - OUT_HEADER);
        return { len, out, payload: body ? Buffer.from(body.view.subarray(0, bodyLen)) : Buffer.alloc(0) };
      },
    );
    const fail = (detail: string): never => {
      throw new FuseRequestError(req.opcode, Errno.EPROTO, 'protocol', detail);
    };
    if (!used.out) return fail(`no reply (used length ${used.len})`);
    if (used.out.unique !== unique) fail(`reply carries unique ${used.out.unique}, request had ${unique}`);
    if (used.out.len !== used.len) fail(`out header len ${used.out.len} != used length ${used.len}`);
    if (used.out.len > OUT_HEADER + req.replySize) fail(`reply of ${used.out.len} bytes overflows ${OUT_HEADER + req.replySize}`);
    if (used.out.error > 0) fail(`positive error ${used.out.error}`);
    return { error: used.out.error, payload: used.payload, unique };
  }

  /**
   * Sends a request the back-end does not answer (FORGET, BATCH_FORGET) on the
   * hiprio queue, as the Linux driver does; resolves when the chain is used.
   */
  async post(req: Omit<FuseCall, 'replySize'>, opts: CallOptions = {}): Promise<void> {
    const { unique, readable, blocks } = this.buildRequest(req, opts);
    await this.complete(
      req.opcode,
      unique,
      this.frontend.hiprioQueue.submit(readable, [], this.indirect(opts)),
      blocks,
      opts,
      () => undefined,
    );
  }

  private buildRequest(
    req: Omit<FuseCall, 'replySize'>,
    opts: CallOptions,
  ): { unique: bigint; readable: GuestBuffer[]; blocks: RamBlock[] } {
    const { ram } = this.frontend;
    const ext = opts.extensions ?? Buffer.alloc(0);
    const args = (req.args ?? []).filter((a) => a.length > 0);
    const argsLen = args.reduce((n, a) => n + a.length, 0);
    const dataLen = req.data?.length ?? 0;
    const unique = this.nextUnique++;

    const head = ram.alloc(IN_HEADER + argsLen);
    fuse_in_header.encode(
      {
        len: opts.len ?? IN_HEADER + argsLen + dataLen + ext.length,
        opcode: req.opcode,
        unique,
        nodeid: req.nodeid,
        uid: opts.uid ?? this.defaults.uid,
        gid: opts.gid ?? this.defaults.gid,
        pid: opts.pid ?? this.defaults.pid,
        total_extlen: ext.length / 8,
      },
      head.view,
      0,
    );
    // Header and each argument get their own descriptor, as the kernel's sg list does.
    const readable: GuestBuffer[] = [{ addr: head.addr, len: IN_HEADER }];
    let pos = IN_HEADER;
    for (const a of args) {
      a.copy(head.view, pos);
      readable.push({ addr: head.addr + pos, len: a.length });
      pos += a.length;
    }
    const blocks = [head];
    if (req.data && dataLen > 0) {
      // The one copy of WRITE data: caller's Buffer -> guest RAM the device reads in place.
      const data = ram.alloc(dataLen);
      req.data.copy(data.view);
      readable.push({ addr: data.addr, len: dataLen });
      blocks.push(data);
    }
    if (ext.length > 0) {
      // Extensions close the request, after any data (the kernel appends them last).
      const block = ram.alloc(ext.length);
      ext.copy(block.view);
      readable.push({ addr: block.addr, len: ext.length });
      blocks.push(block);
    }
    return { unique, readable, blocks };
  }

  /** Waits for a submitted chain, frees its RAM once used, and applies the timeout. */
  private complete<T>(
    opcode: number,
    unique: bigint,
    submitted: Promise<number>,
    blocks: RamBlock[],
    opts: CallOptions,
    collect: (usedLen: number) => T,
  ): Promise<T> {
    this.pending.set(unique, opcode);
    const done = submitted.then((len) => {
      this.pending.delete(unique);
      try {
        return collect(len);
      } finally {
        for (const b of blocks) this.frontend.ram.free(b);
      }
    });
    const timeoutMs = opts.timeoutMs ?? this.defaults.timeoutMs;
    if (timeoutMs <= 0) return done;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new FuseRequestError(opcode, Errno.ETIMEDOUT, 'timeout', `no reply within ${timeoutMs} ms`)),
        timeoutMs,
      );
      done.then(
        (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        (err: unknown) => {
          clearTimeout(timer);
          reject(err);
        },
      );
    });
  }

  private requestQueue(index: number | undefined): GuestQueue {
    const queues = this.frontend.requestQueues;
    if (queues.length === 0) throw new Error('the front-end has no request queue');
    if (index !== undefined) {
      if (!Number.isInteger(index) || index < 0 || index >= queues.length)
        throw new RangeError(`request queue ${index} of ${queues.length}`);
      return queues[index];
    }
    this.nextQueue = (this.nextQueue + 1) % queues.length;
    return queues[this.nextQueue];
  }

  private indirect(opts: CallOptions): boolean {
    return opts.indirect ?? this.defaults.indirect;
  }
}
