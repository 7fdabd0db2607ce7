import {
  HEADER_SIZE,
  MAX_PAYLOAD_SIZE,
  VIRTIO_FS_CONFIG_SIZE,
  VIRTIO_FS_TAG_SIZE,
  VHOST_USER_NEED_REPLY_MASK,
  VHOST_USER_REPLY_MASK,
  VHOST_USER_VERSION,
  VHOST_USER_VERSION_MASK,
} from './protocol';

/**
 * vhost-user message codec: the 12-byte header and every payload layout the
 * back-end and the TypeScript front-end exchange. Layouts are declared once
 * here, both directions derive from them.
 */

export interface Message {
  request: number;
  flags: number;
  payload: Buffer;
  /** File descriptors that travelled with the message (SCM_RIGHTS). */
  fds: number[];
}

export class ProtocolError extends Error {
  override name = 'ProtocolError';
}

export function encodeHeader(request: number, flags: number, size: number): Buffer {
  const header = Buffer.alloc(HEADER_SIZE);
  header.writeUInt32LE(request, 0);
  header.writeUInt32LE(flags, 4);
  header.writeUInt32LE(size, 8);
  return header;
}

export function decodeHeader(buf: Buffer): { request: number; flags: number; size: number } {
  const request = buf.readUInt32LE(0);
  const flags = buf.readUInt32LE(4);
  const size = buf.readUInt32LE(8);
  if ((flags & VHOST_USER_VERSION_MASK) !== VHOST_USER_VERSION) {
    throw new ProtocolError(`unsupported vhost-user version ${flags & VHOST_USER_VERSION_MASK} (request ${request})`);
  }
  if (size > MAX_PAYLOAD_SIZE) throw new ProtocolError(`payload of ${size} bytes is too large (request ${request})`);
  return { request, flags, size };
}

export function encodeMessage(request: number, flags: number, payload: Buffer): Buffer {
  return Buffer.concat([encodeHeader(request, flags | VHOST_USER_VERSION, payload.length), payload]);
}

export const isReply = (flags: number): boolean => (flags & VHOST_USER_REPLY_MASK) !== 0;
export const needsReply = (flags: number): boolean => (flags & VHOST_USER_NEED_REPLY_MASK) !== 0;

/** A little-endian field layout: field names with their byte width (4 = u32, 8 = u64 as bigint). */
type Layout = readonly (readonly [string, 4 | 8])[];
type Decoded<L extends Layout> = { [K in L[number] as K[0]]: K[1] extends 8 ? bigint : number };

function layoutSize(layout: Layout): number {
  return layout.reduce((n, [, w]) => n + w, 0);
}

/** A fixed-size struct codec derived from its layout. */
export class Struct<L extends Layout> {
  readonly size: number;
  constructor(
    readonly name: string,
    readonly layout: L,
  ) {
    this.size = layoutSize(layout);
  }

  decode(buf: Buffer, offset = 0): Decoded<L> {
    if (buf.length - offset < this.size) {
      throw new ProtocolError(`${this.name}: payload of ${buf.length - offset} bytes, need ${this.size}`);
    }
    const out: Record<string, number | bigint> = {};
    for (const [name, width] of this.layout) {
      out[name] = width === 4 ? buf.readUInt32LE(offset) : buf.readBigUInt64LE(offset);
      offset += width;
    }
    return out as Decoded<L>;
  }

  encode(value: Decoded<L>, into: Buffer = Buffer.alloc(this.size), offset = 0): Buffer {
    const v = value as Record<string, number | bigint>;
    for (const [name, width] of this.layout) {
      if (width === 4) into.writeUInt32LE(Number(v[name]), offset);
      else into.writeBigUInt64LE(BigInt(v[name]), offset);
      offset += width;
    }
    return into;
  }
}

export const U64 = new Struct('u64', [['value', 8]] as const);
export const VringState = new Struct('vring state', [
  ['index', 4],
  ['num', 4],
] as const);
export const VringAddr = new Struct('vring address', [
  ['index', 4],
  ['flags', 4],
  ['descUserAddr', 8],
  ['usedUserAddr', 8],
  ['availUserAddr', 8],
  ['logGuestAddr', 8],
] as const);
export const MemoryRegionDesc = new Struct('memory region', [
  ['guestPhysAddr', 8],
  ['memorySize', 8],
  ['userspaceAddr', 8],
  ['mmapOffset', 8],
] as const);
export type MemoryRegionDescription = ReturnType<typeof MemoryRegionDesc.decode>;
/** SET_MEM_TABLE: u32 nregions, u32 padding, regions[nregions]. */
export const MemoryTableHeader = new Struct('memory table', [
  ['nregions', 4],
  ['padding', 4],
] as const);
/** ADD_MEM_REG / REM_MEM_REG: u64 padding, one region. */
export const SingleMemoryRegion = new Struct('single memory region', [
  ['padding', 8],
  ['guestPhysAddr', 8],
  ['memorySize', 8],
  ['userspaceAddr', 8],
  ['mmapOffset', 8],
] as const);
/** GET_CONFIG / SET_CONFIG header, followed by `size` bytes of device config. */
export const ConfigHeader = new Struct('device config', [
  ['offset', 4],
  ['size', 4],
  ['flags', 4],
] as const);
/**
 * The virtio-fs device config a back-end serves through GET_CONFIG: the tag
 * NUL-padded to 36 bytes (no NUL needed when it fills them), then
 * num_request_queues. Throws for a tag that is empty or longer than 36 bytes.
 */
export function encodeVirtioFsConfig(tag: string, numRequestQueues: number): Buffer {
  const bytes = Buffer.from(tag, 'utf8');
  if (bytes.length === 0 || bytes.length > VIRTIO_FS_TAG_SIZE)
    throw new RangeError(`virtio-fs tag must be 1 to ${VIRTIO_FS_TAG_SIZE} bytes, not ${bytes.length}`);
  if (bytes.includes(0)) throw new RangeError('virtio-fs tag must not contain NUL');
  const out = Buffer.alloc(VIRTIO_FS_CONFIG_SIZE);
  bytes.copy(out, 0);
  out.writeUInt32LE(numRequestQueues, VIRTIO_FS_TAG_SIZE);
  return out;
}
/** SHMEM_MAP / SHMEM_UNMAP body: u8 shmid, u8 padding[7], then these u64s. */
export const SHMEM_MAP_SIZE = 40;
export interface ShmemMapBody {
  shmid: number;
  fdOffset: bigint;
  shmOffset: bigint;
  len: bigint;
  flags: bigint;
}
export function encodeShmemMap(body: ShmemMapBody): Buffer {
  const buf = Buffer.alloc(SHMEM_MAP_SIZE);
  buf.writeUInt8(body.shmid, 0);
  buf.writeBigUInt64LE(body.fdOffset, 8);
  buf.writeBigUInt64LE(body.shmOffset, 16);
  buf.writeBigUInt64LE(body.len, 24);
  buf.writeBigUInt64LE(body.flags, 32);
  return buf;
}
export function decodeShmemMap(buf: Buffer): ShmemMapBody {
  if (buf.length < SHMEM_MAP_SIZE) throw new ProtocolError(`SHMEM map body of ${buf.length} bytes, need ${SHMEM_MAP_SIZE}`);
  return {
    shmid: buf.readUInt8(0),
    fdOffset: buf.readBigUInt64LE(8),
    shmOffset: buf.readBigUInt64LE(16),
    len: buf.readBigUInt64LE(24),
    flags: buf.readBigUInt64LE(32),
  };
}
